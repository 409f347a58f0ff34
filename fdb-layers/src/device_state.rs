//! The device state layer: the high-water marks a region has seen of each device's own
//! counters, so that a device whose state went back (its data directory restored from a copy)
//! is told so instead of sending and acknowledging with stale Olm ratchets.
//!
//! **Challenge.** A device keeps two counters that only move forward while it is honest: its
//! queue cursor (the highest queue sequence it processed and stored, always at or above every
//! entry it acknowledged, because it stores an entry before it acks it) and the `device_seq`
//! of its envelopes (taken from a durable counter before each envelope leaves). Remember the
//! highest of each the region has seen, cheaply, on the hot paths (every ack, every envelope),
//! so the region can refuse a device that presents lower ones.
//!
//! **Key layout** (subspace `("device_state", account, device)`):
//! - `("acked_queue_seq",)` → the highest queue sequence the device acknowledged (8 bytes LE);
//! - `("device_seq",)` → the highest `device_seq` of its envelopes stored here (8 bytes LE).
//!
//! **Conflicts.** Both marks are raised with atomic max (no read, so concurrent acks and sends
//! never conflict on them) and read with snapshot reads: a check may see a mark one commit
//! old, which can only let a rolled-back device through once more, never refuse an honest one.
//!
//! **Idempotence.** By nature: raising a maximum to a value it already reached changes nothing,
//! so a commit retried after `CommitUnknownResult` writes the same marks.
//!
//! **Limits.** Two 8-byte values per device.
//!
//! **Evolution.** Device removal clears the subspace; a device re-linked under the same number
//! must start from cleared marks. A region failover copies the marks with the queues (they are
//! ordinary keys of the device's shard).

use relay_proto::DeviceAddress;

use crate::codec::{decode_u64, encode_u64};
use crate::engine::Transaction;
use crate::error::StoreError;
use crate::tuple::Subspace;

/// The marks of one device, as the region has seen them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceMarks {
    /// The highest queue sequence the device acknowledged (0: none).
    pub acked_queue_seq: u64,
    /// The highest `device_seq` of the device's envelopes stored here (0: none).
    pub device_seq: u64,
}

/// Records that `device` acknowledged the entry `queue_seq` of its queue.
pub fn record_ack(
    transaction: &Transaction,
    device: DeviceAddress,
    queue_seq: u64,
) -> Result<(), StoreError> {
    let marks = Marks::new(device);
    transaction.atomic_max(&marks.acked_queue_seq(), &encode_u64(queue_seq))
}

/// Records that an envelope of `device` numbered `device_seq` was stored (0 records nothing).
pub fn record_envelope(
    transaction: &Transaction,
    device: DeviceAddress,
    device_seq: u64,
) -> Result<(), StoreError> {
    if device_seq == 0 {
        return Ok(());
    }
    let marks = Marks::new(device);
    transaction.atomic_max(&marks.device_seq(), &encode_u64(device_seq))
}

/// The marks of `device` (snapshot reads, see the module doc).
pub async fn marks(
    transaction: &Transaction,
    device: DeviceAddress,
) -> Result<DeviceMarks, StoreError> {
    let keys = Marks::new(device);
    let read = async |key: Vec<u8>, what: &'static str| -> Result<u64, StoreError> {
        match transaction.snapshot_get(&key).await? {
            Some(bytes) => decode_u64(&bytes, what),
            None => Ok(0),
        }
    };
    Ok(DeviceMarks {
        acked_queue_seq: read(keys.acked_queue_seq(), "device acked queue sequence").await?,
        device_seq: read(keys.device_seq(), "device envelope counter").await?,
    })
}

/// Clears the marks of `device` (when the device is removed from the directory).
pub fn remove_device(transaction: &Transaction, device: DeviceAddress) {
    let (begin, end) = Marks::new(device).root.range();
    transaction.clear_range(&begin, &end);
}

struct Marks {
    root: Subspace,
}

impl Marks {
    fn new(device: DeviceAddress) -> Self {
        Marks {
            root: Subspace::new(&("device_state", device)),
        }
    }

    fn acked_queue_seq(&self) -> Vec<u8> {
        self.root.pack(&("acked_queue_seq",))
    }

    fn device_seq(&self) -> Vec<u8> {
        self.root.pack(&("device_seq",))
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::{AccountId, DeviceId};

    use super::*;
    use crate::engine::FaultConfig;
    use crate::test_support::{fault_seed, temporary_database};

    const DEVICE: DeviceAddress = DeviceAddress {
        account: AccountId(3),
        device: DeviceId(1),
    };

    #[tokio::test]
    async fn marks_only_move_forward_and_are_per_device() {
        let (_folder, database) = temporary_database(None);
        let other = DeviceAddress {
            device: DeviceId(2),
            ..DEVICE
        };
        let read = async |device| {
            database
                .transact(|tx| async move { marks(&tx, device).await })
                .await
                .expect("marks")
        };
        assert_eq!(read(DEVICE).await, DeviceMarks::default());
        for (queue_seq, device_seq) in [(4, 7), (2, 3), (9, 0), (9, 8)] {
            database
                .transact(|tx| async move {
                    record_ack(&tx, DEVICE, queue_seq)?;
                    record_envelope(&tx, DEVICE, device_seq)
                })
                .await
                .expect("record");
        }
        assert_eq!(
            read(DEVICE).await,
            DeviceMarks {
                acked_queue_seq: 9,
                device_seq: 8
            }
        );
        assert_eq!(read(other).await, DeviceMarks::default());
        database
            .transact(|tx| async move {
                remove_device(&tx, DEVICE);
                Ok(())
            })
            .await
            .expect("removal");
        assert_eq!(read(DEVICE).await, DeviceMarks::default());
    }

    /// Concurrent acks and sends of one device never conflict on the marks, and under injected
    /// faults (retries after unknown commit results and failed group commits) the marks end at
    /// the maxima.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_reach_the_maxima() {
        let seed = fault_seed();
        eprintln!("device marks: seed={seed} (reproduce with FDB_LAYERS_SEED={seed})");
        let (_folder, database) = temporary_database(Some(FaultConfig::frequent(seed)));
        let tasks: Vec<_> = (1..=40u64)
            .map(|n| {
                let database = database.clone();
                tokio::spawn(async move {
                    // The faults include failed group commits (`Unavailable`), which a caller
                    // retries as a client does; the body is idempotent (marks only rise).
                    crate::test_support::transact_through_outages(&database, |tx| async move {
                        record_ack(&tx, DEVICE, n)?;
                        record_envelope(&tx, DEVICE, 100 - n)
                    })
                    .await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("commits");
        }
        let read = database
            .transact(|tx| async move { marks(&tx, DEVICE).await })
            .await
            .expect("marks");
        assert_eq!(
            read,
            DeviceMarks {
                acked_queue_seq: 40,
                device_seq: 99
            },
            "seed={seed}"
        );
    }
}
