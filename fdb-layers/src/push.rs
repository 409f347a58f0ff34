//! The push registration layer: where a region keeps, for each device homed here that asked to
//! be woken while it has no connection, its push registration (a browser's WebPush
//! subscription, an APNs device token or an FCM registration token), as the bytes the region's
//! push crate encodes. This layer does not read them: the region parses them before it stores
//! them and again when it reads them.
//!
//! **Key layout** (subspace `("push",)`): `(account, device)` → the registration's bytes. One
//! subspace for every device of the region, ordered by account then device, so a region that
//! starts reads which devices registered in pages ([`registered_page`]).
//!
//! **Conflicts.** A registration is written blind by its own device (one request at a time)
//! and read with snapshot reads by the push sender; a removal (the device unregistered, was
//! removed, or the push service answered that the registration is gone) clears the key.
//! The push sender clears only the registration it sent to ([`clear_if`]): one the device
//! replaced meanwhile stays.
//!
//! **Idempotence.** By nature: writing or clearing the same key again.
//!
//! **Limits.** At most [`PUSH_REGISTRATION_BYTES_MAX`] bytes per device.
//!
//! **Evolution.** A new kind of registration is the push crate's business (its bytes carry a
//! version); this layout does not change.

use relay_proto::{AccountId, DeviceAddress, DeviceId};

use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::limits::PUSH_REGISTRATION_BYTES_MAX;
use crate::tuple::Subspace;

/// Stores `device`'s push registration (replacing any).
pub fn set(
    transaction: &Transaction,
    device: DeviceAddress,
    registration: &[u8],
) -> Result<(), StoreError> {
    // The region parsed it first; a registration out of bounds is a bug, refused all the same.
    if registration.is_empty() || registration.len() > PUSH_REGISTRATION_BYTES_MAX {
        return Err(StoreError::ValueTooLarge {
            value_bytes: registration.len(),
        });
    }
    transaction.set(&key(device), registration)
}

/// Removes `device`'s push registration, if any.
pub fn clear(transaction: &Transaction, device: DeviceAddress) {
    transaction.clear(&key(device));
}

/// Removes `device`'s push registration if it is still `registration` (the push service said
/// it is gone); one the device replaced meanwhile stays. Returns whether it was removed.
pub async fn clear_if(
    transaction: &Transaction,
    device: DeviceAddress,
    registration: &[u8],
) -> Result<bool, StoreError> {
    let key = key(device);
    if transaction.get(&key).await?.as_deref() == Some(registration) {
        transaction.clear(&key);
        return Ok(true);
    }
    Ok(false)
}

/// `device`'s push registration (snapshot read).
pub async fn read(
    transaction: &Transaction,
    device: DeviceAddress,
) -> Result<Option<Vec<u8>>, StoreError> {
    transaction.snapshot_get(&key(device)).await
}

/// Up to `limit` devices with a registration, after `after` (from the first when `None`), in
/// order (snapshot reads): a region reads them all in pages when it starts.
pub async fn registered_page(
    transaction: &Transaction,
    after: Option<DeviceAddress>,
    limit: usize,
) -> Result<Vec<DeviceAddress>, StoreError> {
    let root = root();
    let (begin, end) = root.range();
    let begin = match after {
        // The first key past `after`'s: its key with a zero byte appended.
        Some(after) => {
            let mut key = key(after);
            key.push(0);
            key
        }
        None => begin,
    };
    let options = RangeOptions {
        limit: Some(limit),
        reverse: false,
        snapshot: true,
    };
    let mut devices = Vec::new();
    for (key, _) in transaction.get_range(&begin, &end, options).await? {
        let (account, device): (u64, u32) = root
            .unpack(&key)
            .map_err(|error| StoreError::corrupt("push registration key", error))?;
        devices.push(DeviceAddress {
            account: AccountId(account),
            device: DeviceId(device),
        });
    }
    Ok(devices)
}

fn root() -> Subspace {
    Subspace::new(&("push",))
}

fn key(device: DeviceAddress) -> Vec<u8> {
    root().pack(&(device.account.0, device.device.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{device_address as device, temporary_database};

    #[tokio::test]
    async fn registrations_are_kept_per_device_listed_in_pages_and_cleared_only_if_unchanged() {
        let (_folder, database) = temporary_database(None);
        let devices = [device(1, 1), device(1, 2), device(2, 1), device(300, 7)];
        for (index, address) in devices.iter().enumerate() {
            let bytes = vec![index as u8 + 1; 10];
            database
                .transact(|tx| {
                    let bytes = bytes.clone();
                    async move { set(&tx, *address, &bytes) }
                })
                .await
                .expect("set");
        }
        let mut listed = Vec::new();
        let mut after = None;
        loop {
            let page = database
                .transact(|tx| async move { registered_page(&tx, after, 3).await })
                .await
                .expect("page");
            if page.is_empty() {
                break;
            }
            after = page.last().copied();
            listed.extend(page);
        }
        assert_eq!(listed, devices);
        let read_one = async |address| {
            database
                .transact(|tx| async move { read(&tx, address).await })
                .await
                .expect("read")
        };
        assert_eq!(read_one(device(1, 2)).await, Some(vec![2; 10]));
        // A stale registration is not cleared; the current one is.
        let cleared = database
            .transact(|tx| async move { clear_if(&tx, device(1, 2), &[9; 10]).await })
            .await
            .expect("clear_if");
        assert!(!cleared);
        let cleared = database
            .transact(|tx| async move { clear_if(&tx, device(1, 2), &[2; 10]).await })
            .await
            .expect("clear_if");
        assert!(cleared);
        assert_eq!(read_one(device(1, 2)).await, None);
        database
            .transact(|tx| async move {
                clear(&tx, device(2, 1));
                Ok(())
            })
            .await
            .expect("clear");
        assert_eq!(read_one(device(2, 1)).await, None);
        assert_eq!(read_one(device(300, 7)).await, Some(vec![4; 10]));
        // Nothing empty or oversized is stored.
        for bytes in [Vec::new(), vec![0; PUSH_REGISTRATION_BYTES_MAX + 1]] {
            let refused = database
                .transact(|tx| {
                    let bytes = bytes.clone();
                    async move { set(&tx, device(5, 5), &bytes) }
                })
                .await;
            assert!(refused.is_err());
        }
    }
}
