//! The quarantine layer: devices whose queue could not be read, so that nothing is
//! acknowledged for them until an operator repairs the store.
//!
//! **Challenge.** When a device's queue (its entries, the chat log entries they reference) does
//! not decode, the region must stop acknowledging envelopes for that device (they would be
//! acknowledged but undeliverable), and must still know it after a restart. The record must be
//! writable while the queue itself is damaged, so it lives in its own key range, away from the
//! queue's keys.
//!
//! **Key layout** (subspace `("quarantine",)`):
//! - `(account, device)` → why and since when (prost).
//!
//! Devices sort by address, so listing every quarantined device is one range read (read at
//! start, and by the operator's check).
//!
//! **Conflicts.** A device's key is read and written only when its queue is found damaged and
//! by the repair, both rare, and never by the message path (the region keeps the set in memory
//! and loads it with [`list`] at start), so these keys are never hot.
//!
//! **Idempotence.** [`put`] keeps the first record (the oldest reason and time), so a retried or
//! repeated quarantine changes nothing; [`lift`] of a device not quarantined does nothing.
//!
//! **Limits.** One small record per damaged device; [`list`] returns at most
//! [`LAYER_READ_ENTRIES_MAX`] records per call and pages with a cursor.
//!
//! **Evolution.** A reason code next to the text once tools act on it.

use prost::Message;
use relay_proto::DeviceAddress;

use crate::codec::{decode_key, decode_record};
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::limits::LAYER_READ_ENTRIES_MAX;
pub use crate::limits::QUARANTINE_REASON_BYTES_MAX;
use crate::tuple::Subspace;

/// Why and since when a device is quarantined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRecord {
    /// When the damage was found, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// What could not be read.
    pub reason: String,
}

/// Quarantines `device`, unless it already is (the first record stays). Returns whether it
/// was new.
pub async fn put(
    transaction: &Transaction,
    device: DeviceAddress,
    record: &QuarantineRecord,
) -> Result<bool, StoreError> {
    let key = subspace().pack(&device);
    if transaction.get(&key).await?.is_some() {
        return Ok(false);
    }
    let mut reason = record.reason.clone();
    if reason.len() > QUARANTINE_REASON_BYTES_MAX {
        let mut cut = QUARANTINE_REASON_BYTES_MAX;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    let stored = StoredQuarantine {
        since_ms: record.since_ms,
        reason,
    };
    transaction.set(&key, &stored.encode_to_vec())?;
    Ok(true)
}

/// The quarantine record of `device`, if it is quarantined.
pub async fn get(
    transaction: &Transaction,
    device: DeviceAddress,
) -> Result<Option<QuarantineRecord>, StoreError> {
    match transaction.get(&subspace().pack(&device)).await? {
        Some(bytes) => decode(&bytes).map(Some),
        None => Ok(None),
    }
}

/// Lifts the quarantine of `device`. Returns whether it was quarantined.
pub async fn lift(transaction: &Transaction, device: DeviceAddress) -> Result<bool, StoreError> {
    let key = subspace().pack(&device);
    let was = transaction.get(&key).await?.is_some();
    transaction.clear(&key);
    Ok(was)
}

/// Up to `limit` quarantined devices after `after` (from the first with `None`), in address
/// order (at most [`LAYER_READ_ENTRIES_MAX`]).
pub async fn list(
    transaction: &Transaction,
    after: Option<DeviceAddress>,
    limit: usize,
) -> Result<Vec<(DeviceAddress, QuarantineRecord)>, StoreError> {
    let quarantine = subspace();
    let (mut begin, end) = quarantine.range();
    if let Some(after) = after {
        (_, begin) = quarantine.subspace(&after).range();
    }
    let limit = limit.clamp(1, LAYER_READ_ENTRIES_MAX);
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::limit(limit))
        .await?;
    rows.iter()
        .map(|(key, value)| {
            let device: DeviceAddress = decode_key(&quarantine, key, "quarantine key")?;
            Ok((device, decode(value)?))
        })
        .collect()
}

/// The stored form of a quarantine record (the device is in the key).
#[derive(Clone, PartialEq, Message)]
struct StoredQuarantine {
    #[prost(uint64, tag = "1")]
    since_ms: u64,
    #[prost(string, tag = "2")]
    reason: String,
}

fn subspace() -> Subspace {
    Subspace::new(&("quarantine",))
}

fn decode(bytes: &[u8]) -> Result<QuarantineRecord, StoreError> {
    let stored: StoredQuarantine = decode_record(bytes, "quarantine record")?;
    Ok(QuarantineRecord {
        since_ms: stored.since_ms,
        reason: stored.reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{device_address as device, temporary_database};

    #[tokio::test]
    async fn quarantine_keeps_the_first_record_lists_in_order_and_lifts() {
        let (_folder, database) = temporary_database(None);
        let first = QuarantineRecord {
            since_ms: 5,
            reason: "corrupt record (stored envelope)".into(),
        };
        let later = QuarantineRecord {
            since_ms: 9,
            reason: "x".repeat(QUARANTINE_REASON_BYTES_MAX + 10),
        };
        let news = database
            .transact(|tx| {
                let (first, later) = (first.clone(), later.clone());
                async move {
                    Ok([
                        put(&tx, device(2, 1), &first).await?,
                        put(&tx, device(2, 1), &later).await?,
                        put(&tx, device(1, 3), &later).await?,
                    ])
                }
            })
            .await
            .expect("put");
        assert_eq!(news, [true, false, true]);
        let (all, after_first) = database
            .transact(|tx| async move {
                Ok((
                    list(&tx, None, 10).await?,
                    list(&tx, Some(device(1, 3)), 10).await?,
                ))
            })
            .await
            .expect("list");
        assert_eq!(
            all.iter().map(|(device, _)| *device).collect::<Vec<_>>(),
            vec![device(1, 3), device(2, 1)]
        );
        assert_eq!(all[1].1, first, "the first record stays");
        assert_eq!(all[0].1.reason.len(), QUARANTINE_REASON_BYTES_MAX);
        assert_eq!(after_first.len(), 1);
        assert_eq!(after_first[0].0, device(2, 1));

        let lifted = database
            .transact(|tx| async move {
                Ok((
                    lift(&tx, device(2, 1)).await?,
                    lift(&tx, device(7, 7)).await?,
                ))
            })
            .await
            .expect("lift");
        assert_eq!(lifted, (true, false));
        let left = database
            .transact(|tx| async move { get(&tx, device(2, 1)).await })
            .await
            .expect("get");
        assert_eq!(left, None);
    }
}
