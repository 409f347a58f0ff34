//! Devices: each account's devices, numbered from 1 and never reused, with their public keys.
//!
//! **Key layout** (under `("directory",)`):
//! - `("device", account, device)` → the device record (prost): identity and signing keys;
//! - `("device_counter", account)` → the last device number given to the account.
//!
//! An account's devices share a key prefix and sort by number: the list is one range read.
//!
//! **Conflicts.** Device changes of one account serialize on its device counter and its version
//! (every change bumps it: [`super::account_version`]); changes of different accounts never
//! conflict.
//!
//! **Idempotence.** [`add_device`] and [`add_first_device`] take an [`IdempotencyKey`]: retried
//! after `CommitUnknownResult` they answer with the device they added and change nothing.
//! [`remove_device`] is idempotent by nature.
//!
//! **Limits.** An account's device list is read whole, so the region bounds devices per
//! account; records are small (two public keys).
//!
//! **Evolution.** A new device field is a new prost tag of the device record.

use prost::Message;
use relay_proto::{AccountId, DeviceAddress, DeviceId};

use super::Directory;
use crate::codec::{
    IdempotencyKey, decode_key, decode_record, decode_u64, encode_u64, increment, read_u64, recall,
    remember,
};
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;

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

/// [`add_first_device`] found the account already has devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountHasDevices;

/// Adds a device to `account` under the account's next device number (from 1, never reused,
/// even after [`remove_device`]). The caller checks that the account exists. Retried with the
/// same `idempotency` key after its commit, it returns the device it added.
pub async fn add_device(
    transaction: &Transaction,
    account: AccountId,
    identity_key: &[u8],
    signing_key: &[u8],
    idempotency: &IdempotencyKey,
) -> Result<DeviceId, StoreError> {
    if let Some(device) = recalled_device(transaction, account, idempotency).await? {
        return Ok(device);
    }
    insert_device(transaction, account, identity_key, signing_key, idempotency).await
}

/// Adds the first device of `account` (registration), unless the account already has a
/// device. Retried with the same `idempotency` key after its commit, it returns the device it
/// added rather than refusing.
pub async fn add_first_device(
    transaction: &Transaction,
    account: AccountId,
    identity_key: &[u8],
    signing_key: &[u8],
    idempotency: &IdempotencyKey,
) -> Result<Result<DeviceId, AccountHasDevices>, StoreError> {
    if let Some(device) = recalled_device(transaction, account, idempotency).await? {
        return Ok(Ok(device));
    }
    let directory = Directory::get();
    let (begin, end) = directory.devices.subspace(&(account,)).range();
    let any = transaction
        .get_range(&begin, &end, RangeOptions::limit(1))
        .await?;
    if !any.is_empty() {
        return Ok(Err(AccountHasDevices));
    }
    insert_device(transaction, account, identity_key, signing_key, idempotency)
        .await
        .map(Ok)
}

/// Removes the device at `address`; its number is never given again. Returns whether it was
/// there (removing a removed device does nothing). The caller clears the device's keys and
/// queue.
pub async fn remove_device(
    transaction: &Transaction,
    address: DeviceAddress,
) -> Result<bool, StoreError> {
    let directory = Directory::get();
    let key = directory.device_key(address);
    if transaction.get(&key).await?.is_none() {
        return Ok(false);
    }
    transaction.clear(&key);
    directory
        .account_changed(transaction, address.account)
        .await?;
    Ok(true)
}

/// The last device number given to `account` (0: none): every number up to it was a device
/// of the account, current or removed.
pub async fn last_device_number(
    transaction: &Transaction,
    account: AccountId,
) -> Result<u32, StoreError> {
    let key = Directory::get().device_counter_key(account);
    device_number(read_u64(transaction, &key, "device counter").await?)
}

/// A device number as the counter holds it: every number fits a `u32`.
fn device_number(counter: u64) -> Result<u32, StoreError> {
    u32::try_from(counter)
        .map_err(|_| StoreError::corrupt("device counter", format!("{counter} is past u32")))
}

/// Every device of `account`, in device order.
pub async fn devices(
    transaction: &Transaction,
    account: AccountId,
) -> Result<Vec<DeviceRecord>, StoreError> {
    let directory = Directory::get();
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
    let directory = Directory::get();
    match transaction.get(&directory.device_key(address)).await? {
        Some(value) => device_record(address, &value).map(Some),
        None => Ok(None),
    }
}

/// The stored form of a device (its address is in the key).
#[derive(Clone, PartialEq, Message)]
struct StoredDevice {
    #[prost(bytes = "vec", tag = "1")]
    identity_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    signing_key: Vec<u8>,
}

impl Directory {
    fn device_key(&self, device: DeviceAddress) -> Vec<u8> {
        self.devices.pack(&device)
    }

    /// The key of the last device number given to `account`.
    fn device_counter_key(&self, account: AccountId) -> Vec<u8> {
        self.root.pack(&("device_counter", account))
    }
}

async fn recalled_device(
    transaction: &Transaction,
    account: AccountId,
    idempotency: &IdempotencyKey,
) -> Result<Option<DeviceId>, StoreError> {
    let Some(stored) = recall(transaction, "add_device", &(account,), idempotency).await? else {
        return Ok(None);
    };
    let number = decode_u64(&stored, "add_device result")?;
    let number = u32::try_from(number)
        .map_err(|_| StoreError::corrupt("add_device result", format!("{number} is past u32")))?;
    Ok(Some(DeviceId(number)))
}

async fn insert_device(
    transaction: &Transaction,
    account: AccountId,
    identity_key: &[u8],
    signing_key: &[u8],
    idempotency: &IdempotencyKey,
) -> Result<DeviceId, StoreError> {
    let directory = Directory::get();
    let counter_key = directory.device_counter_key(account);
    let number = device_number(increment(transaction, &counter_key, "device counter").await?)?;
    let device = DeviceAddress {
        account,
        device: DeviceId(number),
    };
    let stored = StoredDevice {
        identity_key: identity_key.to_vec(),
        signing_key: signing_key.to_vec(),
    };
    transaction.set(&directory.device_key(device), &stored.encode_to_vec())?;
    directory.account_changed(transaction, account).await?;
    remember(
        transaction,
        "add_device",
        &(account,),
        idempotency,
        &encode_u64(u64::from(number)),
    )?;
    Ok(device.device)
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
    use relay_proto::{AccountId, DeviceAddress, DeviceId};

    use crate::directory::*;
    use crate::test_support::{idempotency_key, temporary_database};

    #[tokio::test]
    async fn devices_are_numbered_from_one_per_account_and_never_reused() {
        let (_folder, database) = temporary_database(None);
        let numbers = database
            .transact(|tx| async move {
                Ok([
                    add_device(&tx, AccountId(1), b"id-1", b"sig-1", &idempotency_key(1)).await?,
                    add_device(&tx, AccountId(1), b"id-2", b"sig-2", &idempotency_key(2)).await?,
                    add_device(&tx, AccountId(2), b"id-3", b"sig-3", &idempotency_key(3)).await?,
                    // A retry of the second add.
                    add_device(&tx, AccountId(1), b"id-2", b"sig-2", &idempotency_key(2)).await?,
                ])
            })
            .await
            .expect("adds");
        assert_eq!(
            numbers,
            [DeviceId(1), DeviceId(2), DeviceId(1), DeviceId(2)]
        );

        let second = DeviceAddress {
            account: AccountId(1),
            device: DeviceId(2),
        };
        let (listed, found, missing) = database
            .transact(|tx| async move {
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
            found.map(|record| record.signing_key),
            Some(b"sig-2".to_vec())
        );
        assert_eq!(missing, None);

        let (removed, removed_again, next, remaining, version) = database
            .transact(|tx| async move {
                Ok((
                    remove_device(&tx, second).await?,
                    remove_device(&tx, second).await?,
                    add_device(&tx, AccountId(1), b"id-4", b"sig-4", &idempotency_key(4)).await?,
                    devices(&tx, AccountId(1)).await?,
                    account_version(&tx, AccountId(1)).await?,
                ))
            })
            .await
            .expect("removal");
        assert!(removed && !removed_again);
        assert_eq!(next, DeviceId(3), "device numbers are never reused");
        let numbers: Vec<_> = remaining
            .iter()
            .map(|record| record.device.device)
            .collect();
        assert_eq!(numbers, [DeviceId(1), DeviceId(3)]);
        assert_eq!(version, 4, "two adds, one removal, one add");
    }

    #[tokio::test]
    async fn the_first_device_is_added_once() {
        let (_folder, database) = temporary_database(None);
        let first = |key: u64| {
            let database = database.clone();
            async move {
                database
                    .transact(|tx| async move {
                        add_first_device(&tx, AccountId(5), b"id", b"sig", &idempotency_key(key))
                            .await
                    })
                    .await
                    .expect("transaction")
            }
        };
        assert_eq!(first(1).await, Ok(DeviceId(1)));
        assert_eq!(first(1).await, Ok(DeviceId(1)), "a retry gets its device");
        assert_eq!(first(2).await, Err(AccountHasDevices));
    }
}
