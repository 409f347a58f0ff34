//! The directory layer: accounts (unique names, home region with epoch) and their devices.
//!
//! **Challenge.** Give every account a unique name and a numeric id, record which region is its
//! home (with the epoch that fences old primaries), and list an account's devices with their
//! identity keys, so regions and edges can check envelopes and route them.
//!
//! **Key layout** (subspace `("directory",)`):
//! - `("account_counter",)` → the last account id given (8 bytes LE);
//! - `("account", account)` → the account record (prost);
//! - `("name", name)` → the account id owning the name (8 bytes LE);
//! - `("device", account, device)` → the device record (prost): identity and signing keys;
//! - `("device_counter", account)` → the last device number given to the account.
//!
//! Every lookup is a point read, except [`devices`], which is one range read: an account's
//! devices sit next to each other in device order.
//!
//! **Conflicts.** Account creation reads the name key (two creations of one name conflict, and
//! the retry sees [`NameTaken`]) and the account counter, so creations serialize: ids are dense
//! and never reused, and the directory is written rarely (registration only), so the hot
//! counter is acceptable here. Device creation reads its account's device counter, so only
//! device creations of one account serialize. Reads of other accounts never conflict.
//!
//! **Idempotence.** [`create_account`] is not idempotent on its own: retried after
//! `CommitUnknownResult` it finds the name taken by its own first attempt. A caller creates the
//! account and its first device in one transaction and recognises its own earlier attempt by
//! that device's identity key. [`put_account`] and reads are idempotent.
//!
//! **Limits.** Names are bounded by the protocol (64 bytes), records are small; an account's
//! device list is read whole, so the region bounds devices per account.
//!
//! **Evolution.** One region writes the directory and others keep replicas through
//! [`put_account`], which refuses older epochs. Groups, device removal (a tombstone, so device
//! numbers are never reused), and a change log for replicas (versionstamped keys) come next.

use prost::Message;
use relay_proto::{AccountId, DeviceAddress, DeviceId, RegionId};

use crate::codec::{decode_key, decode_record, decode_u64, encode_u64, read_u64};
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::tuple::Subspace;

/// An account as the directory stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// The account's id.
    pub id: AccountId,
    /// The account's unique name.
    pub name: String,
    /// The region that is the account's home.
    pub home_region: RegionId,
    /// Bumped whenever the home moves; fences a returning old primary.
    pub epoch: u64,
}

/// A device of an account and its public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device's address.
    pub device: DeviceAddress,
    /// The device's identity key (Curve25519).
    pub identity_key: Vec<u8>,
    /// The device's signing key (Ed25519).
    pub signing_key: Vec<u8>,
}

/// The name asked for already belongs to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameTaken {
    /// The account owning the name.
    pub owner: AccountId,
}

/// The epoch of a newly created account.
pub const FIRST_EPOCH: u64 = 1;

/// Creates an account with the next account id, unless `name` is taken.
pub async fn create_account(
    transaction: &Transaction,
    name: &str,
    home_region: RegionId,
) -> Result<Result<AccountRecord, NameTaken>, StoreError> {
    let directory = Directory::new();
    if let Some(owner) = account_id_by_name(transaction, &directory, name).await? {
        return Ok(Err(NameTaken { owner }));
    }
    let counter_key = directory.root.pack(&("account_counter",));
    let last = read_u64(transaction, &counter_key, "account counter").await?;
    let id = AccountId(last + 1);
    transaction.set(&counter_key, &encode_u64(id.0))?;
    let record = AccountRecord {
        id,
        name: name.to_owned(),
        home_region,
        epoch: FIRST_EPOCH,
    };
    write_account(transaction, &directory, &record)?;
    Ok(Ok(record))
}

/// Stores an account created elsewhere (a replica of the directory writer). Returns `false`
/// and changes nothing when the stored copy has a newer epoch.
pub async fn put_account(
    transaction: &Transaction,
    record: &AccountRecord,
) -> Result<bool, StoreError> {
    let directory = Directory::new();
    if let Some(stored) = read_account(transaction, &directory, record.id).await? {
        if stored.epoch > record.epoch {
            return Ok(false);
        }
        if stored.name != record.name {
            let old_name_key = directory.name_key(&stored.name);
            if account_id_by_name(transaction, &directory, &stored.name).await? == Some(record.id) {
                transaction.clear(&old_name_key);
            }
        }
    }
    write_account(transaction, &directory, record)?;
    Ok(true)
}

/// The account owning `name`.
pub async fn account_by_name(
    transaction: &Transaction,
    name: &str,
) -> Result<Option<AccountRecord>, StoreError> {
    let directory = Directory::new();
    match account_id_by_name(transaction, &directory, name).await? {
        Some(id) => read_account(transaction, &directory, id).await,
        None => Ok(None),
    }
}

/// The account with id `id`.
pub async fn account_by_id(
    transaction: &Transaction,
    id: AccountId,
) -> Result<Option<AccountRecord>, StoreError> {
    read_account(transaction, &Directory::new(), id).await
}

/// Adds a device to `account` under the account's next device number (from 1, never reused).
/// The caller checks that the account exists.
pub async fn add_device(
    transaction: &Transaction,
    account: AccountId,
    identity_key: &[u8],
    signing_key: &[u8],
) -> Result<DeviceId, StoreError> {
    let directory = Directory::new();
    let counter_key = directory.root.pack(&("device_counter", account));
    let last = read_u64(transaction, &counter_key, "device counter").await?;
    let number = u32::try_from(last + 1)
        .map_err(|_| StoreError::corrupt("device counter", format!("{last} is past u32")))?;
    transaction.set(&counter_key, &encode_u64(u64::from(number)))?;
    let device = DeviceAddress {
        account,
        device: DeviceId(number),
    };
    let stored = StoredDevice {
        identity_key: identity_key.to_vec(),
        signing_key: signing_key.to_vec(),
    };
    transaction.set(&directory.device_key(device), &stored.encode_to_vec())?;
    Ok(device.device)
}

/// Every device of `account`, in device order.
pub async fn devices(
    transaction: &Transaction,
    account: AccountId,
) -> Result<Vec<DeviceRecord>, StoreError> {
    let directory = Directory::new();
    let (begin, end) = directory.devices.subspace(&(account,)).range();
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::default())
        .await?;
    rows.iter()
        .map(|(key, value)| {
            let device: DeviceAddress = decode_key(&directory.devices, key, "device key")?;
            device_record(device, value)
        })
        .collect()
}

/// The device at `address`.
pub async fn device(
    transaction: &Transaction,
    address: DeviceAddress,
) -> Result<Option<DeviceRecord>, StoreError> {
    let directory = Directory::new();
    match transaction.get(&directory.device_key(address)).await? {
        Some(value) => device_record(address, &value).map(Some),
        None => Ok(None),
    }
}

/// The stored form of an account (its id is in the key).
#[derive(Clone, PartialEq, Message)]
struct StoredAccount {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(uint32, tag = "2")]
    home_region: u32,
    #[prost(uint64, tag = "3")]
    epoch: u64,
}

/// The stored form of a device (its address is in the key).
#[derive(Clone, PartialEq, Message)]
struct StoredDevice {
    #[prost(bytes = "vec", tag = "1")]
    identity_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    signing_key: Vec<u8>,
}

struct Directory {
    root: Subspace,
    devices: Subspace,
}

impl Directory {
    fn new() -> Self {
        let root = Subspace::new(&("directory",));
        let devices = root.subspace(&("device",));
        Directory { root, devices }
    }

    fn account_key(&self, id: AccountId) -> Vec<u8> {
        self.root.pack(&("account", id))
    }

    fn name_key(&self, name: &str) -> Vec<u8> {
        self.root.pack(&("name", name))
    }

    fn device_key(&self, device: DeviceAddress) -> Vec<u8> {
        self.devices.pack(&device)
    }
}

async fn account_id_by_name(
    transaction: &Transaction,
    directory: &Directory,
    name: &str,
) -> Result<Option<AccountId>, StoreError> {
    match transaction.get(&directory.name_key(name)).await? {
        Some(value) => Ok(Some(AccountId(decode_u64(&value, "name index")?))),
        None => Ok(None),
    }
}

async fn read_account(
    transaction: &Transaction,
    directory: &Directory,
    id: AccountId,
) -> Result<Option<AccountRecord>, StoreError> {
    let Some(value) = transaction.get(&directory.account_key(id)).await? else {
        return Ok(None);
    };
    let stored: StoredAccount = decode_record(&value, "account record")?;
    Ok(Some(AccountRecord {
        id,
        name: stored.name,
        home_region: RegionId(stored.home_region),
        epoch: stored.epoch,
    }))
}

fn write_account(
    transaction: &Transaction,
    directory: &Directory,
    record: &AccountRecord,
) -> Result<(), StoreError> {
    let stored = StoredAccount {
        name: record.name.clone(),
        home_region: record.home_region.0,
        epoch: record.epoch,
    };
    transaction.set(&directory.account_key(record.id), &stored.encode_to_vec())?;
    transaction.set(&directory.name_key(&record.name), &encode_u64(record.id.0))
}

fn device_record(device: DeviceAddress, value: &[u8]) -> Result<DeviceRecord, StoreError> {
    let stored: StoredDevice = decode_record(value, "device record")?;
    Ok(DeviceRecord {
        device,
        identity_key: stored.identity_key,
        signing_key: stored.signing_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temporary_database;

    #[tokio::test]
    async fn accounts_get_dense_ids_and_unique_names() {
        let (_folder, database) = temporary_database(None);
        let alice = database
            .transact(|tx| async move { create_account(&tx, "alice", RegionId(1)).await })
            .await
            .expect("transaction")
            .expect("name free");
        let bob = database
            .transact(|tx| async move { create_account(&tx, "bob", RegionId(2)).await })
            .await
            .expect("transaction")
            .expect("name free");
        assert_eq!((alice.id, bob.id), (AccountId(1), AccountId(2)));
        assert_eq!(alice.epoch, FIRST_EPOCH);
        let again = database
            .transact(|tx| async move { create_account(&tx, "alice", RegionId(3)).await })
            .await
            .expect("transaction");
        assert_eq!(again, Err(NameTaken { owner: alice.id }));

        let (by_name, by_id, missing) = database
            .transact(|tx| async move {
                Ok((
                    account_by_name(&tx, "bob").await?,
                    account_by_id(&tx, AccountId(1)).await?,
                    account_by_name(&tx, "carol").await?,
                ))
            })
            .await
            .expect("reads");
        assert_eq!(by_name, Some(bob));
        assert_eq!(by_id, Some(alice));
        assert_eq!(missing, None);
    }

    #[tokio::test]
    async fn concurrent_creations_of_one_name_give_it_once() {
        let (_folder, database) = temporary_database(None);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let database = database.clone();
                tokio::spawn(async move {
                    database
                        .transact(|tx| async move { create_account(&tx, "dup", RegionId(1)).await })
                        .await
                })
            })
            .collect();
        let mut created = 0;
        for task in tasks {
            if task.await.expect("task").expect("transaction").is_ok() {
                created += 1;
            }
        }
        assert_eq!(created, 1);
    }

    #[tokio::test]
    async fn a_replica_keeps_the_newest_epoch_and_follows_renames() {
        let (_folder, database) = temporary_database(None);
        let first = AccountRecord {
            id: AccountId(7),
            name: "dora".to_owned(),
            home_region: RegionId(1),
            epoch: 2,
        };
        let moved = AccountRecord {
            name: "dora2".to_owned(),
            epoch: 3,
            ..first.clone()
        };
        let (applied_first, applied_moved, applied_stale) = database
            .transact(|tx| {
                let (first, moved) = (first.clone(), moved.clone());
                async move {
                    Ok((
                        put_account(&tx, &first).await?,
                        put_account(&tx, &moved).await?,
                        put_account(&tx, &first).await?,
                    ))
                }
            })
            .await
            .expect("puts");
        assert!(applied_first && applied_moved && !applied_stale);
        let (by_old_name, by_new_name) = database
            .transact(|tx| async move {
                Ok((
                    account_by_name(&tx, "dora").await?,
                    account_by_name(&tx, "dora2").await?,
                ))
            })
            .await
            .expect("reads");
        assert_eq!(by_old_name, None);
        assert_eq!(by_new_name, Some(moved));
    }

    #[tokio::test]
    async fn devices_are_numbered_from_one_per_account() {
        let (_folder, database) = temporary_database(None);
        let numbers = database
            .transact(|tx| async move {
                Ok([
                    add_device(&tx, AccountId(1), b"id-1", b"sig-1").await?,
                    add_device(&tx, AccountId(1), b"id-2", b"sig-2").await?,
                    add_device(&tx, AccountId(2), b"id-3", b"sig-3").await?,
                ])
            })
            .await
            .expect("adds");
        assert_eq!(numbers, [DeviceId(1), DeviceId(2), DeviceId(1)]);

        let (listed, second, missing) = database
            .transact(|tx| async move {
                let second = DeviceAddress {
                    account: AccountId(1),
                    device: DeviceId(2),
                };
                let missing = DeviceAddress {
                    account: AccountId(1),
                    device: DeviceId(3),
                };
                Ok((
                    devices(&tx, AccountId(1)).await?,
                    device(&tx, second).await?,
                    device(&tx, missing).await?,
                ))
            })
            .await
            .expect("reads");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].device.device, DeviceId(1));
        assert_eq!(listed[0].identity_key, b"id-1");
        assert_eq!(
            second.map(|record| record.signing_key),
            Some(b"sig-2".to_vec())
        );
        assert_eq!(missing, None);
    }
}
