//! The pairing layer: codes an account's devices open to link a new device, and the request a
//! new device makes with one, until a device of the account approves it.
//!
//! **Challenge.** Linking spans three requests from two devices (an existing device opens a
//! pairing, the new device asks with its keys, an existing device approves) over minutes; the
//! region must remember each step, find a pairing by the code the new device typed, list an
//! account's waiting requests, and forget codes once used or expired, with no clock of its own.
//!
//! **Key layout.**
//! - `("pairing", secret)` → the pairing record (prost): account, opening device, expiry, the
//!   new device's request once made, and the device number it got once approved;
//! - `("pairing_of", account, secret)` → empty: the account's open pairings, one range read.
//!
//! The secret is the code's canonical text without the region (see `relay_proto::PairingCode`),
//! so the new device's lookup is one point read.
//!
//! **Conflicts.** Every step reads the pairing record with a conflict and writes it, so two
//! approvals of one request, or a request racing an approval, serialize: one wins, the other
//! reads the result. Pairings of different accounts never conflict; opening a pairing reads its
//! account's index (to bound it), so two pairings opened at once by one account serialize.
//!
//! **Idempotence.** By nature: the decisions (is the code expired, used, are these the keys
//! that asked) belong to the caller, which reads the record before writing it, so a step
//! retried after `CommitUnknownResult` finds its own result and writes the same record again.
//!
//! **Limits.** At most `PAIRINGS_PER_ACCOUNT_MAX` pairings per account (the one expiring first
//! is dropped to open another); a record holds one request (two keys, at most
//! `ONE_TIME_KEYS_PER_UPLOAD_MAX` one-time keys), well under a value's 100 kB.
//!
//! **Evolution.** A new field of the record is a new prost tag; expired pairings are removed
//! when their account opens another (a sweep over `("pairing",)` is the extension for
//! accounts that never do).

use prost::Message;
use relay_proto::limits::PAIRINGS_PER_ACCOUNT_MAX;
use relay_proto::wire::RequestLink;
use relay_proto::{AccountId, DeviceAddress, DeviceId};

use crate::codec::{decode_key, decode_record};
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::tuple::Subspace;

/// A pairing as the region keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingRecord {
    /// The code's secret (canonical text, no region).
    pub secret: String,
    /// The device that opened it.
    pub opened_by: DeviceAddress,
    /// When it stops being usable, in ms since the Unix epoch (the region's clock).
    pub expires_at_ms: u64,
    /// The new device's request, once made, and when, in ms since the Unix epoch.
    pub request: Option<(RequestLink, u64)>,
    /// The device number the request got once approved.
    pub linked: Option<DeviceId>,
}

/// Opens a pairing for `record.opened_by`'s account (dropping the pairings of that account that
/// expired before `now_ms`, and the one expiring first when `PAIRINGS_PER_ACCOUNT_MAX` are
/// open). The caller draws the secret; one already in use (by any account) is refused with
/// `false` and nothing changes.
pub async fn open(
    transaction: &Transaction,
    record: &PairingRecord,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let layout = Layout::new();
    if transaction
        .get(&layout.pairing(&record.secret))
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let account = record.opened_by.account;
    let mut open = of_account(transaction, account).await?;
    open.sort_by_key(|pairing| pairing.expires_at_ms);
    let mut kept = Vec::new();
    for pairing in open {
        if pairing.expires_at_ms <= now_ms {
            remove(transaction, account, &pairing.secret);
        } else {
            kept.push(pairing);
        }
    }
    while kept.len() >= PAIRINGS_PER_ACCOUNT_MAX {
        let dropped = kept.remove(0);
        remove(transaction, account, &dropped.secret);
    }
    put(transaction, record)?;
    Ok(true)
}

/// The pairing with `secret`, if there is one.
pub async fn pairing(
    transaction: &Transaction,
    secret: &str,
) -> Result<Option<PairingRecord>, StoreError> {
    let layout = Layout::new();
    match transaction.get(&layout.pairing(secret)).await? {
        Some(bytes) => decode(secret, &bytes).map(Some),
        None => Ok(None),
    }
}

/// Every pairing `account` has open (expired ones included), in secret order.
pub async fn of_account(
    transaction: &Transaction,
    account: AccountId,
) -> Result<Vec<PairingRecord>, StoreError> {
    let layout = Layout::new();
    let (begin, end) = layout.index.subspace(&(account,)).range();
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::default())
        .await?;
    let mut pairings = Vec::with_capacity(rows.len());
    for (key, _) in rows {
        let (_, secret): (AccountId, String) = decode_key(&layout.index, &key, "pairing index")?;
        if let Some(record) = pairing(transaction, &secret).await? {
            pairings.push(record);
        }
    }
    Ok(pairings)
}

/// Writes `record` (a step of its pairing: the request made, or approved).
pub fn put(transaction: &Transaction, record: &PairingRecord) -> Result<(), StoreError> {
    let layout = Layout::new();
    let (request, requested_at_ms) = match &record.request {
        Some((request, at)) => (Some(request.clone()), *at),
        None => (None, 0),
    };
    let stored = StoredPairing {
        account: record.opened_by.account.0,
        opened_by: record.opened_by.device.0,
        expires_at_ms: record.expires_at_ms,
        request,
        requested_at_ms,
        linked_device: record.linked.map_or(0, |device| device.0),
    };
    transaction.set(&layout.pairing(&record.secret), &stored.encode_to_vec())?;
    transaction.set(
        &layout
            .index
            .pack(&(record.opened_by.account, record.secret.as_str())),
        &[],
    )
}

/// Forgets a pairing.
pub fn remove(transaction: &Transaction, account: AccountId, secret: &str) {
    let layout = Layout::new();
    transaction.clear(&layout.pairing(secret));
    transaction.clear(&layout.index.pack(&(account, secret)));
}

fn decode(secret: &str, bytes: &[u8]) -> Result<PairingRecord, StoreError> {
    let stored: StoredPairing = decode_record(bytes, "pairing record")?;
    if stored.account == 0 || stored.opened_by == 0 {
        return Err(StoreError::corrupt(
            "pairing record",
            "names no account or device",
        ));
    }
    Ok(PairingRecord {
        secret: secret.to_owned(),
        opened_by: DeviceAddress {
            account: AccountId(stored.account),
            device: DeviceId(stored.opened_by),
        },
        expires_at_ms: stored.expires_at_ms,
        request: stored
            .request
            .map(|request| (request, stored.requested_at_ms)),
        linked: (stored.linked_device != 0).then_some(DeviceId(stored.linked_device)),
    })
}

/// The stored form of a pairing (its secret is in the key).
#[derive(Clone, PartialEq, Message)]
struct StoredPairing {
    #[prost(uint64, tag = "1")]
    account: u64,
    #[prost(uint32, tag = "2")]
    opened_by: u32,
    #[prost(uint64, tag = "3")]
    expires_at_ms: u64,
    #[prost(message, optional, tag = "4")]
    request: Option<RequestLink>,
    #[prost(uint64, tag = "5")]
    requested_at_ms: u64,
    #[prost(uint32, tag = "6")]
    linked_device: u32,
}

struct Layout {
    pairings: Subspace,
    index: Subspace,
}

impl Layout {
    fn new() -> Self {
        Layout {
            pairings: Subspace::new(&("pairing",)),
            index: Subspace::new(&("pairing_of",)),
        }
    }

    fn pairing(&self, secret: &str) -> Vec<u8> {
        self.pairings.pack(&(secret,))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temporary_database;

    const PHONE: DeviceAddress = DeviceAddress {
        account: AccountId(7),
        device: DeviceId(1),
    };

    fn record(secret: &str, expires_at_ms: u64) -> PairingRecord {
        PairingRecord {
            secret: secret.into(),
            opened_by: PHONE,
            expires_at_ms,
            request: None,
            linked: None,
        }
    }

    #[tokio::test]
    async fn pairings_round_trip_and_stay_bounded_per_account() {
        let (_folder, database) = temporary_database(None);
        let first = record("AAAAAAAA", 1_000);
        let opened = database
            .transact(|tx| {
                let first = first.clone();
                async move { open(&tx, &first, 0).await }
            })
            .await
            .expect("open");
        assert!(opened);
        let again = database
            .transact(|tx| {
                let first = first.clone();
                async move { open(&tx, &first, 0).await }
            })
            .await
            .expect("open");
        assert!(!again, "a secret in use is refused");

        let mut requested = first.clone();
        requested.request = Some((
            RequestLink {
                code: "1-AAAA-AAAA".into(),
                identity_key: vec![1; 32],
                signing_key: vec![2; 32],
                ..RequestLink::default()
            },
            500,
        ));
        requested.linked = Some(DeviceId(2));
        database
            .transact(|tx| {
                let requested = requested.clone();
                async move { put(&tx, &requested) }
            })
            .await
            .expect("put");
        let read = database
            .transact(|tx| async move { pairing(&tx, "AAAAAAAA").await })
            .await
            .expect("read");
        assert_eq!(read, Some(requested));

        // Past its expiry the first pairing goes when another opens; beyond the bound, the one
        // expiring first goes.
        for index in 0..PAIRINGS_PER_ACCOUNT_MAX + 2 {
            let next = record(&format!("B{index:07}"), 10_000 + index as u64);
            database
                .transact(|tx| {
                    let next = next.clone();
                    async move { open(&tx, &next, 2_000).await }
                })
                .await
                .expect("open");
        }
        let open_now = database
            .transact(|tx| async move { of_account(&tx, PHONE.account).await })
            .await
            .expect("list");
        assert_eq!(open_now.len(), PAIRINGS_PER_ACCOUNT_MAX);
        assert!(open_now.iter().all(|pairing| pairing.secret != "AAAAAAAA"));
        assert!(open_now.iter().all(|pairing| pairing.secret != "B0000000"));
    }
}
