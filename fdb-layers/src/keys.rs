//! The key directory layer: one-time keys, each claimed exactly once.
//!
//! **Challenge.** A device uploads one-time public keys; whoever starts an Olm session with it
//! claims one. No key may ever be handed out twice, even when many senders claim at once, and
//! the device must learn when it runs low.
//!
//! **Key layout** (subspace `("keys",)`):
//! - `("one_time", account, device, key_id)` → the public key;
//! - `("one_time_count", account, device)` → the number of unclaimed keys (8 bytes LE,
//!   maintained with atomic add).
//!
//! A device's keys are contiguous, so a claim is a range read of the first key (lowest key id).
//!
//! **Conflicts.** A claim reads the first key of the device with a read conflict and clears it:
//! two concurrent claims read the same key, so one of them conflicts and retries, and sees the
//! next key. That is what makes claims exactly-once. It also serializes claims per device (one
//! per group commit), which is fine because claims are rate-limited per device. The count is
//! kept with atomic add, so uploads and claims never conflict on it; uploads read each key id
//! they add, so a duplicate id is ignored even in a concurrent upload.
//!
//! **Idempotence.** A claim retried after `CommitUnknownResult` claims another key; the first
//! one is then used by nobody, which wastes a key but never reuses one. Uploads are idempotent.
//!
//! **Limits.** Uploads are bounded by the protocol (`ONE_TIME_KEYS_PER_UPLOAD_MAX`); keys are
//! small, so an upload is far below the transaction size.
//!
//! **Evolution.** The signed fallback key (handed out when no one-time key is left) goes next
//! to the one-time keys. To spread concurrent claims, a claim can snapshot-read the first N
//! keys and conflict only on a randomly chosen one (FoundationDB's queue recipe).

use relay_proto::DeviceAddress;

use crate::codec::decode_key;
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::tuple::Subspace;

/// Adds one-time keys to `device`, ignoring key ids it already has. Returns how many were added.
pub async fn add_one_time_keys(
    transaction: &Transaction,
    device: DeviceAddress,
    keys: &[(String, Vec<u8>)],
) -> Result<u32, StoreError> {
    let layer = KeyDirectory::new();
    let mut added: u32 = 0;
    for (key_id, public_key) in keys {
        let key = layer.one_time_key(device, key_id);
        if transaction.get(&key).await?.is_none() {
            transaction.set(&key, public_key)?;
            added += 1;
        }
    }
    if added > 0 {
        transaction.atomic_add(&layer.count_key(device), i64::from(added))?;
    }
    Ok(added)
}

/// Claims (removes and returns) one one-time key of `device`, the lowest key id first.
pub async fn claim_one_time_key(
    transaction: &Transaction,
    device: DeviceAddress,
) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    let layer = KeyDirectory::new();
    let keys = layer.one_time.subspace(&device);
    let (begin, end) = keys.range();
    let first = transaction
        .get_range(&begin, &end, RangeOptions::limit(1))
        .await?;
    let Some((key, public_key)) = first.into_iter().next() else {
        return Ok(None);
    };
    let (key_id,): (String,) = decode_key(&keys, &key, "one-time key")?;
    transaction.clear(&key);
    transaction.atomic_add(&layer.count_key(device), -1)?;
    Ok(Some((key_id, public_key)))
}

/// The number of unclaimed one-time keys of `device`.
pub async fn one_time_key_count(
    transaction: &Transaction,
    device: DeviceAddress,
) -> Result<u32, StoreError> {
    let layer = KeyDirectory::new();
    let Some(bytes) = transaction.get(&layer.count_key(device)).await? else {
        return Ok(0);
    };
    let bytes = <[u8; 8]>::try_from(bytes.as_slice())
        .map_err(|_| StoreError::corrupt("one-time key count", "not 8 bytes"))?;
    let count = i64::from_le_bytes(bytes);
    u32::try_from(count).map_err(|_| StoreError::corrupt("one-time key count", count))
}

struct KeyDirectory {
    root: Subspace,
    one_time: Subspace,
}

impl KeyDirectory {
    fn new() -> Self {
        let root = Subspace::new(&("keys",));
        let one_time = root.subspace(&("one_time",));
        KeyDirectory { root, one_time }
    }

    fn one_time_key(&self, device: DeviceAddress, key_id: &str) -> Vec<u8> {
        self.one_time.pack(&(device, key_id))
    }

    fn count_key(&self, device: DeviceAddress) -> Vec<u8> {
        self.root.pack(&("one_time_count", device))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use relay_proto::{AccountId, DeviceId};

    use super::*;
    use crate::test_support::temporary_database;

    const DEVICE: DeviceAddress = DeviceAddress {
        account: AccountId(1),
        device: DeviceId(1),
    };

    fn generated_keys(count: usize) -> Vec<(String, Vec<u8>)> {
        (0..count)
            .map(|index| (format!("key-{index:03}"), vec![index as u8; 32]))
            .collect()
    }

    #[tokio::test]
    async fn uploads_ignore_duplicates_and_claims_take_the_lowest_id() {
        let (_folder, database) = temporary_database(None);
        let keys = generated_keys(3);
        let added = database
            .transact(|tx| {
                let keys = keys.clone();
                async move {
                    let first = add_one_time_keys(&tx, DEVICE, &keys).await?;
                    let again = add_one_time_keys(&tx, DEVICE, &keys[1..]).await?;
                    Ok((first, again, one_time_key_count(&tx, DEVICE).await?))
                }
            })
            .await
            .expect("upload");
        assert_eq!(added, (3, 0, 3));

        let claimed = database
            .transact(|tx| async move { claim_one_time_key(&tx, DEVICE).await })
            .await
            .expect("claim");
        assert_eq!(claimed, Some(keys[0].clone()));
        let other_device = DeviceAddress {
            device: DeviceId(2),
            ..DEVICE
        };
        let (count, other) = database
            .transact(|tx| async move {
                Ok((
                    one_time_key_count(&tx, DEVICE).await?,
                    claim_one_time_key(&tx, other_device).await?,
                ))
            })
            .await
            .expect("reads");
        assert_eq!((count, other), (2, None));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_take_each_key_exactly_once() {
        let (_folder, database) = temporary_database(None);
        let keys = generated_keys(20);
        database
            .transact(|tx| {
                let keys = keys.clone();
                async move { add_one_time_keys(&tx, DEVICE, &keys).await }
            })
            .await
            .expect("upload");

        let claims: Vec<_> = (0..50)
            .map(|_| {
                let database = database.clone();
                tokio::spawn(async move {
                    database
                        .transact(|tx| async move { claim_one_time_key(&tx, DEVICE).await })
                        .await
                })
            })
            .collect();
        let mut claimed = Vec::new();
        let mut empty = 0;
        for claim in claims {
            match claim.await.expect("task").expect("claim commits") {
                Some((key_id, _)) => claimed.push(key_id),
                None => empty += 1,
            }
        }
        let distinct: BTreeSet<_> = claimed.iter().cloned().collect();
        assert_eq!((claimed.len(), distinct.len(), empty), (20, 20, 30));
        let count = database
            .transact(|tx| async move { one_time_key_count(&tx, DEVICE).await })
            .await
            .expect("count");
        assert_eq!(count, 0);
    }
}
