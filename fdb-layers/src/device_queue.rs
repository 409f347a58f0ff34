//! The device queue layer: what each device has yet to fetch, under the device's own gapless
//! queue sequence, deleted when the device acks it.
//!
//! **Challenge.** Give every device an ordered queue of references to chat log entries and of
//! receipts, numbered without gaps so the device can prove it missed nothing, readable from a
//! cursor, with idempotent acks that delete entries, and bounded in depth.
//!
//! **Key layout** (subspace `("device_queue", account, device)`):
//! - `("entry", queue_seq)` → the item (prost);
//! - `("latest",)` → the last queue sequence given (8 bytes LE), kept after acks;
//! - `("depth",)` → the number of entries waiting (8 bytes LE, atomic add).
//!
//! A device's entries are contiguous and in queue order, so a fetch after a cursor is one range
//! read, and entries are small enough to need no splitting.
//!
//! **Conflicts.** An append reads `latest` with a read conflict (a read-modify-write counter,
//! not an atomic add): two appends to one device conflict and one retries, which keeps the
//! queue gapless. Appends to one device serialize, at most one per group commit, which a
//! device's incoming traffic does not approach. The depth is changed with atomic adds and read
//! by appends with a snapshot read, so acks never conflict with appends; the depth an append
//! sees can only be too high (a concurrent ack), never too low, so the cap holds. An ack reads
//! each entry it deletes, so two concurrent acks of one entry conflict and only one reports it.
//!
//! **Idempotence.** [`append`] is not idempotent: callers append only when the chat log
//! reported a new entry, in the same transaction. [`ack`] is: acking a missing entry does
//! nothing. An ack retried after `CommitUnknownResult` reports nothing removed, so whatever the
//! caller derives from removed entries (delivered receipts) must be written in the same
//! transaction as the ack.
//!
//! **Limits.** [`DEVICE_QUEUE_DEPTH_MAX`] entries per device; a fetch returns at most
//! [`LAYER_READ_ENTRIES_MAX`] entries.
//!
//! **Evolution.** The 30-day retention sweep will turn expired entries into expired receipts;
//! it needs the entry's enqueue time, a new field of the stored item (never a reused one).

use prost::Message;
use relay_proto::{ChatId, DeviceAddress};

use crate::codec::{decode_key, decode_record, encode_u64, read_u64};
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::limits::{DEVICE_QUEUE_DEPTH_MAX, LAYER_READ_ENTRIES_MAX};
use crate::tuple::Subspace;

/// One entry of a device queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueItem {
    /// A chat log entry for the device to fetch.
    MessageRef {
        /// The chat.
        chat: ChatId,
        /// The entry's chat sequence number.
        chat_seq: u64,
    },
    /// A receipt for the device, opaque to the queue.
    Receipt(Vec<u8>),
}

/// What [`append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueAppend {
    /// Enqueued under a new queue sequence number.
    Appended {
        /// The entry's queue sequence number.
        queue_seq: u64,
    },
    /// Refused: the queue holds [`DEVICE_QUEUE_DEPTH_MAX`] entries or more.
    Full {
        /// The entries waiting.
        depth: u64,
    },
}

/// Appends `item` to the queue of `device` under its next queue sequence (from 1).
pub async fn append(
    transaction: &Transaction,
    device: DeviceAddress,
    item: &QueueItem,
) -> Result<QueueAppend, StoreError> {
    let queue = DeviceQueue::new(device);
    let depth = match transaction.snapshot_get(&queue.depth_key()).await? {
        Some(bytes) => decode_depth(&bytes)?,
        None => 0,
    };
    if depth >= DEVICE_QUEUE_DEPTH_MAX {
        return Ok(QueueAppend::Full { depth });
    }
    let latest_key = queue.latest_key();
    let queue_seq = read_u64(transaction, &latest_key, "device queue latest").await? + 1;
    transaction.set(&latest_key, &encode_u64(queue_seq))?;
    transaction.set(
        &queue.entries.pack(&(queue_seq,)),
        &stored_item(item).encode_to_vec(),
    )?;
    transaction.atomic_add(&queue.depth_key(), 1)?;
    Ok(QueueAppend::Appended { queue_seq })
}

/// Up to `limit` entries of the queue of `device` after `after_queue_seq`, in order (at most
/// [`LAYER_READ_ENTRIES_MAX`]).
pub async fn read_after(
    transaction: &Transaction,
    device: DeviceAddress,
    after_queue_seq: u64,
    limit: usize,
) -> Result<Vec<(u64, QueueItem)>, StoreError> {
    let Some(first) = after_queue_seq.checked_add(1) else {
        return Ok(Vec::new());
    };
    let queue = DeviceQueue::new(device);
    let begin = queue.entries.pack(&(first,));
    let (_, end) = queue.entries.range();
    let limit = limit.min(LAYER_READ_ENTRIES_MAX);
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::limit(limit))
        .await?;
    rows.iter()
        .map(|(key, value)| {
            let (queue_seq,): (u64,) = decode_key(&queue.entries, key, "device queue key")?;
            Ok((queue_seq, queue_item(value)?))
        })
        .collect()
}

/// Deletes the entries `queue_seqs` of the queue of `device` and returns those that were there.
/// Acking a missing entry does nothing, so acks are idempotent.
pub async fn ack(
    transaction: &Transaction,
    device: DeviceAddress,
    queue_seqs: &[u64],
) -> Result<Vec<(u64, QueueItem)>, StoreError> {
    let queue = DeviceQueue::new(device);
    let mut queue_seqs = queue_seqs.to_vec();
    queue_seqs.sort_unstable();
    queue_seqs.dedup();
    let mut removed = Vec::new();
    for queue_seq in queue_seqs {
        let key = queue.entries.pack(&(queue_seq,));
        if let Some(value) = transaction.get(&key).await? {
            removed.push((queue_seq, queue_item(&value)?));
            transaction.clear(&key);
        }
    }
    if !removed.is_empty() {
        // `removed.len()` is bounded by the transaction size, far below i64::MAX.
        transaction.atomic_add(&queue.depth_key(), -(removed.len() as i64))?;
    }
    Ok(removed)
}

/// The last queue sequence given to `device` (0 before the first entry); acks do not lower it.
pub async fn latest(transaction: &Transaction, device: DeviceAddress) -> Result<u64, StoreError> {
    let queue = DeviceQueue::new(device);
    read_u64(transaction, &queue.latest_key(), "device queue latest").await
}

/// The number of entries waiting in the queue of `device`.
pub async fn depth(transaction: &Transaction, device: DeviceAddress) -> Result<u64, StoreError> {
    let queue = DeviceQueue::new(device);
    match transaction.get(&queue.depth_key()).await? {
        Some(bytes) => decode_depth(&bytes),
        None => Ok(0),
    }
}

/// The stored form of a queue item.
#[derive(Clone, PartialEq, Message)]
struct StoredItem {
    #[prost(oneof = "stored_item::Kind", tags = "1, 2")]
    kind: Option<stored_item::Kind>,
}

mod stored_item {
    /// The kinds of queue items.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(super) enum Kind {
        #[prost(message, tag = "1")]
        MessageRef(super::StoredMessageRef),
        #[prost(bytes = "vec", tag = "2")]
        Receipt(Vec<u8>),
    }
}

#[derive(Clone, PartialEq, Message)]
struct StoredMessageRef {
    #[prost(bytes = "vec", tag = "1")]
    chat: Vec<u8>,
    #[prost(uint64, tag = "2")]
    chat_seq: u64,
}

struct DeviceQueue {
    root: Subspace,
    entries: Subspace,
}

impl DeviceQueue {
    fn new(device: DeviceAddress) -> Self {
        let root = Subspace::new(&("device_queue", device));
        let entries = root.subspace(&("entry",));
        DeviceQueue { root, entries }
    }

    fn latest_key(&self) -> Vec<u8> {
        self.root.pack(&("latest",))
    }

    fn depth_key(&self) -> Vec<u8> {
        self.root.pack(&("depth",))
    }
}

fn stored_item(item: &QueueItem) -> StoredItem {
    let kind = match item {
        QueueItem::MessageRef { chat, chat_seq } => {
            stored_item::Kind::MessageRef(StoredMessageRef {
                chat: chat.0.to_vec(),
                chat_seq: *chat_seq,
            })
        }
        QueueItem::Receipt(bytes) => stored_item::Kind::Receipt(bytes.clone()),
    };
    StoredItem { kind: Some(kind) }
}

fn queue_item(value: &[u8]) -> Result<QueueItem, StoreError> {
    let stored: StoredItem = decode_record(value, "device queue entry")?;
    match stored.kind {
        Some(stored_item::Kind::MessageRef(reference)) => Ok(QueueItem::MessageRef {
            chat: ChatId::from_bytes(&reference.chat)
                .map_err(|error| StoreError::corrupt("device queue entry", error))?,
            chat_seq: reference.chat_seq,
        }),
        Some(stored_item::Kind::Receipt(bytes)) => Ok(QueueItem::Receipt(bytes)),
        None => Err(StoreError::corrupt("device queue entry", "no item")),
    }
}

fn decode_depth(bytes: &[u8]) -> Result<u64, StoreError> {
    let bytes = <[u8; 8]>::try_from(bytes)
        .map_err(|_| StoreError::corrupt("device queue depth", "not 8 bytes"))?;
    let depth = i64::from_le_bytes(bytes);
    u64::try_from(depth).map_err(|_| StoreError::corrupt("device queue depth", depth))
}

#[cfg(test)]
mod tests {
    use relay_proto::{AccountId, DeviceId};

    use super::*;
    use crate::test_support::temporary_database;

    const DEVICE: DeviceAddress = DeviceAddress {
        account: AccountId(3),
        device: DeviceId(2),
    };

    fn message(chat_seq: u64) -> QueueItem {
        QueueItem::MessageRef {
            chat: ChatId([1; 16]),
            chat_seq,
        }
    }

    #[tokio::test]
    async fn entries_are_gapless_readable_after_a_cursor_and_acked_once() {
        let (_folder, database) = temporary_database(None);
        let appended = database
            .transact(|tx| async move {
                Ok([
                    append(&tx, DEVICE, &message(10)).await?,
                    append(&tx, DEVICE, &QueueItem::Receipt(b"r".to_vec())).await?,
                    append(&tx, DEVICE, &message(11)).await?,
                ])
            })
            .await
            .expect("appends");
        assert_eq!(
            appended.map(|outcome| match outcome {
                QueueAppend::Appended { queue_seq } => queue_seq,
                QueueAppend::Full { .. } => 0,
            }),
            [1, 2, 3]
        );

        let (all, after_one) = database
            .transact(|tx| async move {
                Ok((
                    read_after(&tx, DEVICE, 0, 10).await?,
                    read_after(&tx, DEVICE, 1, 1).await?,
                ))
            })
            .await
            .expect("reads");
        assert_eq!(all.len(), 3);
        assert_eq!(all[1], (2, QueueItem::Receipt(b"r".to_vec())));
        assert_eq!(after_one, [(2, QueueItem::Receipt(b"r".to_vec()))]);

        let first_ack = database
            .transact(|tx| async move { ack(&tx, DEVICE, &[1, 3, 3, 99]).await })
            .await
            .expect("ack");
        assert_eq!(first_ack, [(1, message(10)), (3, message(11))]);
        let second_ack = database
            .transact(|tx| async move { ack(&tx, DEVICE, &[1, 3]).await })
            .await
            .expect("ack again");
        assert!(second_ack.is_empty());

        let (remaining, latest_seq, waiting, next) = database
            .transact(|tx| async move {
                let remaining = read_after(&tx, DEVICE, 0, 10).await?;
                let latest_seq = latest(&tx, DEVICE).await?;
                let waiting = depth(&tx, DEVICE).await?;
                let next = append(&tx, DEVICE, &message(12)).await?;
                Ok((remaining, latest_seq, waiting, next))
            })
            .await
            .expect("reads");
        assert_eq!(
            remaining.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            [2]
        );
        assert_eq!((latest_seq, waiting), (3, 1));
        assert_eq!(
            next,
            QueueAppend::Appended { queue_seq: 4 },
            "acks never lower the sequence"
        );
    }

    #[tokio::test]
    async fn a_full_queue_refuses_appends() {
        let (_folder, database) = temporary_database(None);
        let outcome = database
            .transact(|tx| async move {
                // Stand in for DEVICE_QUEUE_DEPTH_MAX entries without writing them all.
                let queue = DeviceQueue::new(DEVICE);
                tx.atomic_add(&queue.depth_key(), DEVICE_QUEUE_DEPTH_MAX as i64)?;
                append(&tx, DEVICE, &message(1)).await
            })
            .await
            .expect("append");
        assert_eq!(
            outcome,
            QueueAppend::Full {
                depth: DEVICE_QUEUE_DEPTH_MAX
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_acks_of_one_entry_report_it_once() {
        let (_folder, database) = temporary_database(None);
        database
            .transact(|tx| async move { append(&tx, DEVICE, &message(1)).await })
            .await
            .expect("append");
        let acks: Vec<_> = (0..6)
            .map(|_| {
                let database = database.clone();
                tokio::spawn(async move {
                    database
                        .transact(|tx| async move { ack(&tx, DEVICE, &[1]).await })
                        .await
                })
            })
            .collect();
        let mut reported = 0;
        for task in acks {
            reported += task.await.expect("task").expect("ack").len();
        }
        assert_eq!(reported, 1);
        let waiting = database
            .transact(|tx| async move { depth(&tx, DEVICE).await })
            .await
            .expect("depth");
        assert_eq!(waiting, 0);
    }
}
