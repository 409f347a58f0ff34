//! The key directory layer: one-time keys, each claimed exactly once, and a signed fallback
//! key per device for when they run out.
//!
//! **Challenge.** A device uploads one-time public keys; whoever starts an Olm session with it
//! claims one. No key may ever be handed out twice, even when many senders claim at once and
//! claims are retried after an unknown commit result; when none is left a claim gets the
//! device's signed fallback key (reusable, so never removed by a claim) rather than nothing;
//! and the device must learn when it runs low, and when its fallback key has been handed out
//! (so that it replaces it).
//!
//! **Key layout** (subspace `("keys",)`):
//! - `("one_time", account, device, key_id)` → the public key;
//! - `("one_time_count", account, device)` → the number of unclaimed keys (8 bytes LE,
//!   maintained with atomic add);
//! - `("fallback", account, device)` → the fallback key: id, public key, signature (prost);
//! - `("fallback_used", account, device)` → the id of the fallback key last handed out.
//!
//! A device's keys are contiguous, so a claim is a range read of the first key (lowest key id).
//!
//! **Conflicts.** A claim reads the first key of the device with a read conflict and clears it:
//! two concurrent claims read the same key, so one of them conflicts and retries, and sees the
//! next key. That is what makes claims exactly-once. It also serializes claims per device (one
//! per group commit), which is fine because claims are rate-limited per device. The count is
//! kept with atomic add and read by claims with a snapshot read, so uploads and claims never
//! conflict on it; uploads read each key id they add, so a duplicate id is ignored even in a
//! concurrent upload. A claim that falls back reads the fallback key, so it conflicts only with
//! a concurrent replacement of that key; it marks the key used with a blind write (no read),
//! so concurrent fallback claims never conflict with each other. The mark names the key id:
//! a replacement committed after it is unused (it clears the mark), one committed before it
//! makes the claim retry and hand out (and mark) the new key.
//!
//! **Idempotence.** [`claim_one_time_key`] and [`add_one_time_keys`] take an
//! [`IdempotencyKey`]. A claim retried after `CommitUnknownResult` finds the record of its
//! first attempt and returns the same key (without it, the retry would claim a second key and
//! waste the first); an upload retried finds its record and adds nothing, so a key claimed in
//! between is not put back to be claimed twice. A claim that falls back needs no record: it
//! hands out the same key again and writes the same used mark. [`set_fallback_key`] is
//! idempotent by nature: a retry writes the same value, and the device uploads its next
//! fallback key only after this one was answered.
//!
//! **Low-count signal.** Every claim reports the remaining one-time keys and whether they are
//! below [`ONE_TIME_KEYS_LOW_WATERMARK`], so the region can tell the device to upload more
//! (the count is a snapshot read: it can lag a concurrent upload by one commit, never more);
//! [`fallback_key_state`] tells whether the fallback key is missing, unused or used.
//!
//! **Limits.** Uploads are bounded by the protocol (`ONE_TIME_KEYS_PER_UPLOAD_MAX`); keys are
//! small, so an upload is far below the transaction size.
//!
//! **Evolution.** To spread concurrent claims, a claim can snapshot-read the first N keys and
//! conflict only on a randomly chosen one (FoundationDB's queue recipe). Signatures of one-time
//! keys would be a new field of their value (the bare public key today, so a prost record with
//! the key as field 1 then).

use prost::Message;
use relay_proto::DeviceAddress;
pub use relay_proto::limits::ONE_TIME_KEYS_LOW_WATERMARK;
pub use relay_proto::wire::FallbackKeyState;

pub use crate::codec::IdempotencyKey;
use crate::codec::{decode_key, decode_record, read_count, recall, remember};
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::tuple::Subspace;

/// A public key handed out by a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKey {
    /// The key's id as the device's Olm account names it.
    pub key_id: String,
    /// The public key.
    pub public_key: Vec<u8>,
    /// The device's signature of the key (fallback keys; empty for one-time keys).
    pub signature: Vec<u8>,
    /// Whether this is the device's fallback key (one-time keys ran out).
    pub fallback: bool,
}

/// What [`claim_one_time_key`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The claimed one-time key, else the fallback key, else nothing.
    pub key: Option<ClaimedKey>,
    /// Unclaimed one-time keys left.
    pub one_time_keys_remaining: u32,
    /// Whether fewer than [`ONE_TIME_KEYS_LOW_WATERMARK`] are left: the device should upload.
    pub low: bool,
}

/// Adds one-time keys to `device`, ignoring key ids it already has. Returns how many were added;
/// retried with the same `idempotency` key after its commit, it returns that number again and
/// adds nothing.
pub async fn add_one_time_keys(
    transaction: &Transaction,
    device: DeviceAddress,
    keys: &[(String, Vec<u8>)],
    idempotency: &IdempotencyKey,
) -> Result<u32, StoreError> {
    if let Some(stored) = recall(transaction, "add_one_time_keys", &device, idempotency).await? {
        let stored: StoredUpload = decode_record(&stored, "one-time key upload result")?;
        return Ok(stored.added);
    }
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
    // Remembered even when nothing was added: a retry must not add a key that was present at
    // the first attempt and claimed since.
    let stored = StoredUpload { added };
    remember(
        transaction,
        "add_one_time_keys",
        &device,
        idempotency,
        &stored.encode_to_vec(),
    )?;
    Ok(added)
}

/// Claims (removes and returns) one one-time key of `device`, the lowest key id first; when
/// none is left, returns the fallback key (not removed). Retried with the same `idempotency`
/// key after its commit, it returns the key it claimed.
pub async fn claim_one_time_key(
    transaction: &Transaction,
    device: DeviceAddress,
    idempotency: &IdempotencyKey,
) -> Result<Claim, StoreError> {
    let layer = KeyDirectory::new();
    let key = match recall(transaction, "claim_one_time_key", &device, idempotency).await? {
        Some(stored) => {
            let stored: StoredKey = decode_record(&stored, "one-time key claim result")?;
            Some(stored.claimed(false))
        }
        None => match take_first_one_time_key(transaction, &layer, device).await? {
            Some(claimed) => {
                let stored = StoredKey {
                    key_id: claimed.key_id.clone(),
                    public_key: claimed.public_key.clone(),
                    signature: Vec::new(),
                };
                remember(
                    transaction,
                    "claim_one_time_key",
                    &device,
                    idempotency,
                    &stored.encode_to_vec(),
                )?;
                Some(claimed)
            }
            None => {
                let fallback = fallback_key(transaction, device).await?;
                if let Some(key) = &fallback {
                    transaction.set(&layer.fallback_used_key(device), key.key_id.as_bytes())?;
                }
                fallback
            }
        },
    };
    let remaining = count(transaction, &layer, device, true).await?;
    Ok(Claim {
        key,
        one_time_keys_remaining: remaining,
        low: remaining < ONE_TIME_KEYS_LOW_WATERMARK,
    })
}

/// Sets (replacing any earlier one) the signed fallback key of `device`.
pub fn set_fallback_key(
    transaction: &Transaction,
    device: DeviceAddress,
    key_id: &str,
    public_key: &[u8],
    signature: &[u8],
) -> Result<(), StoreError> {
    let stored = StoredKey {
        key_id: key_id.to_owned(),
        public_key: public_key.to_vec(),
        signature: signature.to_vec(),
    };
    let layer = KeyDirectory::new();
    transaction.clear(&layer.fallback_used_key(device));
    transaction.set(&layer.fallback_key(device), &stored.encode_to_vec())
}

/// The fallback key of `device`, if it set one.
pub async fn fallback_key(
    transaction: &Transaction,
    device: DeviceAddress,
) -> Result<Option<ClaimedKey>, StoreError> {
    let layer = KeyDirectory::new();
    match transaction.get(&layer.fallback_key(device)).await? {
        Some(value) => {
            let stored: StoredKey = decode_record(&value, "fallback key")?;
            Ok(Some(stored.claimed(true)))
        }
        None => Ok(None),
    }
}

/// Whether `device` has a fallback key and whether it has been handed out since it was set.
/// Snapshot reads: a report for the device, never a reason to conflict with claims.
pub async fn fallback_key_state(
    transaction: &Transaction,
    device: DeviceAddress,
) -> Result<FallbackKeyState, StoreError> {
    let layer = KeyDirectory::new();
    let Some(value) = transaction
        .snapshot_get(&layer.fallback_key(device))
        .await?
    else {
        return Ok(FallbackKeyState::Missing);
    };
    let stored: StoredKey = decode_record(&value, "fallback key")?;
    let used = transaction
        .snapshot_get(&layer.fallback_used_key(device))
        .await?;
    Ok(match used {
        Some(key_id) if key_id == stored.key_id.as_bytes() => FallbackKeyState::Used,
        _ => FallbackKeyState::Unused,
    })
}

/// The number of unclaimed one-time keys of `device`.
pub async fn one_time_key_count(
    transaction: &Transaction,
    device: DeviceAddress,
) -> Result<u32, StoreError> {
    count(transaction, &KeyDirectory::new(), device, false).await
}

/// Removes every key of `device` (when the device is removed from the directory).
pub fn remove_device_keys(transaction: &Transaction, device: DeviceAddress) {
    let layer = KeyDirectory::new();
    let (begin, end) = layer.one_time.subspace(&device).range();
    transaction.clear_range(&begin, &end);
    transaction.clear(&layer.count_key(device));
    transaction.clear(&layer.fallback_key(device));
    transaction.clear(&layer.fallback_used_key(device));
}

/// A stored key: a claimed one-time key (as a claim's result) or a fallback key.
#[derive(Clone, PartialEq, Message)]
struct StoredKey {
    #[prost(string, tag = "1")]
    key_id: String,
    #[prost(bytes = "vec", tag = "2")]
    public_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    signature: Vec<u8>,
}

impl StoredKey {
    fn claimed(self, fallback: bool) -> ClaimedKey {
        ClaimedKey {
            key_id: self.key_id,
            public_key: self.public_key,
            signature: self.signature,
            fallback,
        }
    }
}

/// The stored result of an upload, for answering retries.
#[derive(Clone, PartialEq, Message)]
struct StoredUpload {
    #[prost(uint32, tag = "1")]
    added: u32,
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

    fn fallback_key(&self, device: DeviceAddress) -> Vec<u8> {
        self.root.pack(&("fallback", device))
    }

    fn fallback_used_key(&self, device: DeviceAddress) -> Vec<u8> {
        self.root.pack(&("fallback_used", device))
    }
}

async fn take_first_one_time_key(
    transaction: &Transaction,
    layer: &KeyDirectory,
    device: DeviceAddress,
) -> Result<Option<ClaimedKey>, StoreError> {
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
    Ok(Some(ClaimedKey {
        key_id,
        public_key,
        signature: Vec::new(),
        fallback: false,
    }))
}

async fn count(
    transaction: &Transaction,
    layer: &KeyDirectory,
    device: DeviceAddress,
    snapshot: bool,
) -> Result<u32, StoreError> {
    let count = read_count(
        transaction,
        &layer.count_key(device),
        snapshot,
        "one-time key count",
    )
    .await?;
    u32::try_from(count).map_err(|_| StoreError::corrupt("one-time key count", count))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use relay_proto::{AccountId, DeviceId};

    use super::*;
    use crate::engine::FaultConfig;
    use crate::test_support::{
        fault_seed, idempotency_key, temporary_database, transact_through_outages,
    };

    const DEVICE: DeviceAddress = DeviceAddress {
        account: AccountId(1),
        device: DeviceId(1),
    };

    fn generated_keys(count: usize) -> Vec<(String, Vec<u8>)> {
        (0..count)
            .map(|index| (format!("key-{index:03}"), vec![index as u8; 32]))
            .collect()
    }

    fn one_time(key_id: &str, public_key: &[u8]) -> Option<ClaimedKey> {
        Some(ClaimedKey {
            key_id: key_id.to_owned(),
            public_key: public_key.to_vec(),
            signature: Vec::new(),
            fallback: false,
        })
    }

    #[tokio::test]
    async fn uploads_ignore_duplicates_and_claims_take_the_lowest_id() {
        let (_folder, database) = temporary_database(None);
        let keys = generated_keys(3);
        let added = transact_through_outages(&database, |tx| {
            let keys = keys.clone();
            async move {
                let first = add_one_time_keys(&tx, DEVICE, &keys, &idempotency_key(1)).await?;
                let again = add_one_time_keys(&tx, DEVICE, &keys[1..], &idempotency_key(2)).await?;
                Ok((first, again, one_time_key_count(&tx, DEVICE).await?))
            }
        })
        .await
        .expect("upload");
        assert_eq!(added, (3, 0, 3));

        let claimed = transact_through_outages(&database, |tx| async move {
            claim_one_time_key(&tx, DEVICE, &idempotency_key(3)).await
        })
        .await
        .expect("claim");
        assert_eq!(
            claimed,
            Claim {
                key: one_time(&keys[0].0, &keys[0].1),
                one_time_keys_remaining: 2,
                low: true,
            }
        );
        let other_device = DeviceAddress {
            device: DeviceId(2),
            ..DEVICE
        };
        let (count, other) = transact_through_outages(&database, |tx| async move {
            Ok((
                one_time_key_count(&tx, DEVICE).await?,
                claim_one_time_key(&tx, other_device, &idempotency_key(4)).await?,
            ))
        })
        .await
        .expect("reads");
        assert_eq!(count, 2);
        assert_eq!(
            other,
            Claim {
                key: None,
                one_time_keys_remaining: 0,
                low: true
            }
        );
    }

    #[tokio::test]
    async fn retries_return_the_first_result() {
        let (_folder, database) = temporary_database(None);
        let keys = generated_keys(2);
        let upload = |idempotency: u64, keys: Vec<(String, Vec<u8>)>| {
            let database = database.clone();
            async move {
                transact_through_outages(&database, |tx| {
                    let keys = keys.clone();
                    async move {
                        add_one_time_keys(&tx, DEVICE, &keys, &idempotency_key(idempotency)).await
                    }
                })
                .await
                .expect("upload")
            }
        };
        let claim = |idempotency: u64| {
            let database = database.clone();
            async move {
                transact_through_outages(&database, |tx| async move {
                    claim_one_time_key(&tx, DEVICE, &idempotency_key(idempotency)).await
                })
                .await
                .expect("claim")
                .key
            }
        };
        assert_eq!(upload(1, keys.clone()).await, 2);
        let first = claim(2).await;
        assert_eq!(first, one_time(&keys[0].0, &keys[0].1));
        assert_eq!(claim(2).await, first, "a retried claim gets the same key");
        // A retried upload does not put the claimed key back.
        assert_eq!(upload(1, keys.clone()).await, 2);
        let count = transact_through_outages(&database, |tx| async move {
            one_time_key_count(&tx, DEVICE).await
        })
        .await
        .expect("count");
        assert_eq!(count, 1);
        assert_eq!(claim(3).await, one_time(&keys[1].0, &keys[1].1));
        assert_eq!(claim(4).await, None);
    }

    #[tokio::test]
    async fn the_fallback_key_is_handed_out_when_one_time_keys_run_out() {
        let (_folder, database) = temporary_database(None);
        let claims = transact_through_outages(&database, |tx| async move {
            add_one_time_keys(&tx, DEVICE, &generated_keys(1), &idempotency_key(1)).await?;
            set_fallback_key(&tx, DEVICE, "old", b"old-public", b"old-signature")?;
            set_fallback_key(&tx, DEVICE, "fallback", b"public", b"signature")?;
            Ok([
                claim_one_time_key(&tx, DEVICE, &idempotency_key(2)).await?,
                claim_one_time_key(&tx, DEVICE, &idempotency_key(3)).await?,
                claim_one_time_key(&tx, DEVICE, &idempotency_key(4)).await?,
            ])
        })
        .await
        .expect("claims");
        let fallback = Some(ClaimedKey {
            key_id: "fallback".to_owned(),
            public_key: b"public".to_vec(),
            signature: b"signature".to_vec(),
            fallback: true,
        });
        let keys: Vec<_> = claims.iter().map(|claim| claim.key.clone()).collect();
        assert_eq!(keys[0].as_ref().map(|key| key.fallback), Some(false));
        assert_eq!(keys[1..], [fallback.clone(), fallback]);
        let (remaining, left) = transact_through_outages(&database, |tx| async move {
            remove_device_keys(&tx, DEVICE);
            Ok((
                one_time_key_count(&tx, DEVICE).await?,
                fallback_key(&tx, DEVICE).await?,
            ))
        })
        .await
        .expect("removal");
        assert_eq!((remaining, left), (0, None));
    }

    #[tokio::test]
    async fn the_fallback_key_state_says_missing_unused_then_used_until_replaced() {
        let (_folder, database) = temporary_database(None);
        let state = |database: &crate::Database| {
            let database = database.clone();
            async move {
                database
                    .transact(|tx| async move { fallback_key_state(&tx, DEVICE).await })
                    .await
                    .expect("state")
            }
        };
        let claim = |idempotency: u64| {
            let database = database.clone();
            async move {
                database
                    .transact(|tx| async move {
                        claim_one_time_key(&tx, DEVICE, &idempotency_key(idempotency)).await
                    })
                    .await
                    .expect("claim")
                    .key
            }
        };
        let set = |key_id: &'static str| {
            let database = database.clone();
            async move {
                database
                    .transact(|tx| async move {
                        set_fallback_key(&tx, DEVICE, key_id, &[7; 32], &[8; 64])
                    })
                    .await
                    .expect("set")
            }
        };
        assert_eq!(state(&database).await, FallbackKeyState::Missing);
        assert_eq!(claim(1).await, None, "nothing to hand out");
        set("f1").await;
        assert_eq!(state(&database).await, FallbackKeyState::Unused);
        let handed = claim(2).await.expect("the fallback key");
        assert!(handed.fallback);
        assert_eq!(
            (handed.key_id.as_str(), handed.signature.as_slice()),
            ("f1", &[8; 64][..]),
            "handed out with its id and signature"
        );
        assert_eq!(state(&database).await, FallbackKeyState::Used);
        // A second claim hands out the same key; it stays used.
        assert_eq!(claim(3).await, Some(handed));
        assert_eq!(state(&database).await, FallbackKeyState::Used);
        // A replacement is unused until it is handed out in turn.
        set("f2").await;
        assert_eq!(state(&database).await, FallbackKeyState::Unused);
        assert_eq!(claim(4).await.map(|key| key.key_id), Some("f2".to_owned()));
        assert_eq!(state(&database).await, FallbackKeyState::Used);
        database
            .transact(|tx| async move {
                remove_device_keys(&tx, DEVICE);
                Ok(())
            })
            .await
            .expect("removal");
        assert_eq!(state(&database).await, FallbackKeyState::Missing);
    }

    #[tokio::test]
    async fn the_low_flag_follows_the_watermark() {
        let (_folder, database) = temporary_database(None);
        let count = ONE_TIME_KEYS_LOW_WATERMARK as usize + 1;
        let claims = transact_through_outages(&database, |tx| async move {
            add_one_time_keys(&tx, DEVICE, &generated_keys(count), &idempotency_key(1)).await?;
            Ok([
                claim_one_time_key(&tx, DEVICE, &idempotency_key(2)).await?,
                claim_one_time_key(&tx, DEVICE, &idempotency_key(3)).await?,
            ])
        })
        .await
        .expect("claims");
        let signals: Vec<_> = claims
            .iter()
            .map(|claim| (claim.one_time_keys_remaining, claim.low))
            .collect();
        assert_eq!(
            signals,
            [
                (ONE_TIME_KEYS_LOW_WATERMARK, false),
                (ONE_TIME_KEYS_LOW_WATERMARK - 1, true)
            ]
        );
    }

    /// Many tasks claim from one device at once while the engine injects conflicts and
    /// unknown commit results: each key goes to exactly one claimer, every claimer that got a
    /// one-time key got a distinct one, and the rest get the fallback key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_take_each_key_exactly_once() {
        let seed = fault_seed();
        eprintln!("concurrent claims: seed={seed} (reproduce with FDB_LAYERS_SEED={seed})");
        let (_folder, database) = temporary_database(Some(FaultConfig::frequent(seed)));
        let keys = generated_keys(20);
        transact_through_outages(&database, |tx| {
            let keys = keys.clone();
            async move {
                set_fallback_key(&tx, DEVICE, "fallback", b"public", b"signature")?;
                add_one_time_keys(&tx, DEVICE, &keys, &idempotency_key(0)).await
            }
        })
        .await
        .expect("upload");

        let claims: Vec<_> = (1..=50u64)
            .map(|claimer| {
                let database = database.clone();
                tokio::spawn(async move {
                    transact_through_outages(&database, |tx| async move {
                        claim_one_time_key(&tx, DEVICE, &idempotency_key(claimer)).await
                    })
                    .await
                })
            })
            .collect();
        let mut claimed = Vec::new();
        let mut fallbacks = 0;
        for claim in claims {
            match claim.await.expect("task").expect("claim commits").key {
                Some(key) if key.fallback => fallbacks += 1,
                Some(key) => claimed.push(key.key_id),
                None => panic!("seed={seed}: a claim got no key although a fallback is set"),
            }
        }
        let distinct: BTreeSet<_> = claimed.iter().cloned().collect();
        assert_eq!(
            (claimed.len(), distinct.len(), fallbacks),
            (20, 20, 30),
            "seed={seed}"
        );
        let count = transact_through_outages(&database, |tx| async move {
            one_time_key_count(&tx, DEVICE).await
        })
        .await
        .expect("count");
        assert_eq!(count, 0, "seed={seed}");
        assert!(
            database.stats().retries > 0,
            "seed={seed}: faults must cause retries"
        );
    }
}

/// The key directory against a model (a sorted map of keys per device, a fallback key, and
/// the first result of every idempotency key), driven by random operation sequences that reuse
/// idempotency keys on purpose, with and without injected faults: results are exact either way.
#[cfg(test)]
mod properties {
    use std::collections::BTreeMap;
    use std::collections::btree_map::Entry;

    use proptest::prelude::*;
    use relay_proto::{AccountId, DeviceId};

    use super::*;
    use crate::engine::FaultConfig;
    use crate::test_support::{
        block_on, idempotency_key, temporary_database, transact_through_outages,
    };

    const DEVICES: [DeviceAddress; 2] = [
        DeviceAddress {
            account: AccountId(1),
            device: DeviceId(1),
        },
        DeviceAddress {
            account: AccountId(2),
            device: DeviceId(1),
        },
    ];

    #[derive(Debug, Clone)]
    enum Operation {
        Upload {
            device: usize,
            key_ids: Vec<u8>,
            key: u64,
        },
        Claim {
            device: usize,
            key: u64,
        },
        SetFallback {
            device: usize,
            version: u8,
        },
        Count {
            device: usize,
        },
        RemoveDevice {
            device: usize,
        },
    }

    fn operation() -> impl Strategy<Value = Operation> {
        prop_oneof![
            3 => (0..2usize, prop::collection::vec(0..12u8, 0..5), 0..6u64)
                .prop_map(|(device, key_ids, key)| Operation::Upload { device, key_ids, key }),
            5 => (0..2usize, 0..8u64).prop_map(|(device, key)| Operation::Claim { device, key }),
            1 => (0..2usize, 0..3u8)
                .prop_map(|(device, version)| Operation::SetFallback { device, version }),
            1 => (0..2usize).prop_map(|device| Operation::Count { device }),
            1 => (0..2usize).prop_map(|device| Operation::RemoveDevice { device }),
        ]
    }

    #[derive(Default)]
    struct Model {
        keys: [BTreeMap<String, Vec<u8>>; 2],
        fallbacks: [Option<ClaimedKey>; 2],
        /// Whether each device's fallback key was handed out since it was set.
        fallback_used: [bool; 2],
        uploads: BTreeMap<(usize, u64), u32>,
        claims: BTreeMap<(usize, u64), ClaimedKey>,
    }

    fn key_id(id: u8) -> String {
        format!("k{id:02}")
    }

    fn public_key(id: u8) -> Vec<u8> {
        vec![id; 32]
    }

    /// Upload and claim keys live in separate ranges, as they would in a region.
    fn upload_key(key: u64) -> IdempotencyKey {
        idempotency_key(key)
    }

    fn claim_key(key: u64) -> IdempotencyKey {
        idempotency_key(1_000 + key)
    }

    async fn check(operations: Vec<Operation>, faults: Option<u64>) -> Result<(), TestCaseError> {
        let (_folder, database) = temporary_database(faults.map(FaultConfig::frequent));
        let mut model = Model::default();
        let fail = |error: StoreError| TestCaseError::fail(error.to_string());
        for operation in operations {
            match operation {
                Operation::Upload {
                    device,
                    key_ids,
                    key,
                } => {
                    let address = DEVICES[device];
                    let keys: Vec<(String, Vec<u8>)> = key_ids
                        .iter()
                        .map(|&id| (key_id(id), public_key(id)))
                        .collect();
                    let added =
                        transact_through_outages(&database, |tx| {
                                let keys = keys.clone();
                                async move {
                                    add_one_time_keys(&tx, address, &keys, &upload_key(key)).await
                                }
                            })
                            .await
                            .map_err(fail)?;
                    let expected = match model.uploads.get(&(device, key)) {
                        Some(&added) => added,
                        None => {
                            let mut added = 0;
                            for (id, public_key) in keys {
                                if let Entry::Vacant(vacant) = model.keys[device].entry(id) {
                                    vacant.insert(public_key);
                                    added += 1;
                                }
                            }
                            model.uploads.insert((device, key), added);
                            added
                        }
                    };
                    prop_assert_eq!(added, expected);
                }
                Operation::Claim { device, key } => {
                    let address = DEVICES[device];
                    let claim = transact_through_outages(&database, |tx| async move {
                        claim_one_time_key(&tx, address, &claim_key(key)).await
                    })
                    .await
                    .map_err(fail)?;
                    let expected_key = match model.claims.get(&(device, key)) {
                        Some(claimed) => Some(claimed.clone()),
                        None => match model.keys[device].pop_first() {
                            Some((key_id, public_key)) => {
                                let claimed = ClaimedKey {
                                    key_id,
                                    public_key,
                                    signature: Vec::new(),
                                    fallback: false,
                                };
                                model.claims.insert((device, key), claimed.clone());
                                Some(claimed)
                            }
                            None => {
                                if model.fallbacks[device].is_some() {
                                    model.fallback_used[device] = true;
                                }
                                model.fallbacks[device].clone()
                            }
                        },
                    };
                    let remaining = model.keys[device].len() as u32;
                    let expected = Claim {
                        key: expected_key,
                        one_time_keys_remaining: remaining,
                        low: remaining < ONE_TIME_KEYS_LOW_WATERMARK,
                    };
                    prop_assert_eq!(claim, expected);
                }
                Operation::SetFallback { device, version } => {
                    let address = DEVICES[device];
                    let fallback = ClaimedKey {
                        key_id: format!("fallback-{version}"),
                        public_key: vec![0xf0 | version; 32],
                        signature: vec![version; 64],
                        fallback: true,
                    };
                    transact_through_outages(&database, |tx| {
                        let fallback = fallback.clone();
                        async move {
                            set_fallback_key(
                                &tx,
                                address,
                                &fallback.key_id,
                                &fallback.public_key,
                                &fallback.signature,
                            )
                        }
                    })
                    .await
                    .map_err(fail)?;
                    model.fallbacks[device] = Some(fallback);
                    model.fallback_used[device] = false;
                }
                Operation::Count { device } => {
                    let address = DEVICES[device];
                    let (count, fallback, state) =
                        transact_through_outages(&database, |tx| async move {
                            Ok((
                                one_time_key_count(&tx, address).await?,
                                fallback_key(&tx, address).await?,
                                fallback_key_state(&tx, address).await?,
                            ))
                        })
                        .await
                        .map_err(fail)?;
                    prop_assert_eq!(count, model.keys[device].len() as u32);
                    prop_assert_eq!(fallback, model.fallbacks[device].clone());
                    let expected_state =
                        match (&model.fallbacks[device], model.fallback_used[device]) {
                            (None, _) => FallbackKeyState::Missing,
                            (Some(_), false) => FallbackKeyState::Unused,
                            (Some(_), true) => FallbackKeyState::Used,
                        };
                    prop_assert_eq!(state, expected_state);
                }
                Operation::RemoveDevice { device } => {
                    let address = DEVICES[device];
                    transact_through_outages(&database, |tx| async move {
                        remove_device_keys(&tx, address);
                        Ok(())
                    })
                    .await
                    .map_err(fail)?;
                    model.keys[device].clear();
                    model.fallbacks[device] = None;
                    model.fallback_used[device] = false;
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn the_key_directory_matches_its_model(
            operations in prop::collection::vec(operation(), 1..40),
            faults in prop::option::of(any::<u64>()),
        ) {
            block_on(check(operations, faults))?;
        }
    }
}
