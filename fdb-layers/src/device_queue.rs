//! The device queue layer: what each device has yet to fetch, under the device's own gapless
//! queue sequence, deleted when the device acks it or when it expires undelivered.
//!
//! **Challenge.** Give every device an ordered queue of references to chat log entries and of
//! receipts, numbered without gaps so the device can prove it missed nothing, readable from a
//! cursor, with idempotent acks that delete entries, bounded in depth, and swept after the
//! retention window ([`QUEUE_RETENTION_MS_DEFAULT`], 30 days) so that an entry that was never
//! delivered is reported (the region turns it into an "expired" receipt) instead of lingering.
//!
//! **Key layout.** Per device, subspace `("device_queue", account, device)`:
//! - `("entry", queue_seq)` → the item and its enqueue time (prost);
//! - `("latest",)` → the last queue sequence given (8 bytes LE), kept after acks;
//! - `("depth",)` → the number of entries waiting (8 bytes LE, atomic add).
//!
//! And one index for the retention sweep, subspace `("device_queue_expiry",)`:
//! - `(bucket, enqueued_at_ms, account, device, queue_seq)` → empty, where `bucket` is a hash
//!   of the device into [`EXPIRY_INDEX_BUCKETS`].
//!
//! A device's entries are contiguous and in queue order, so a fetch after a cursor is one range
//! read, and entries are small enough to need no splitting. The expiry index sorts by time
//! within a bucket, so the expired entries of a bucket are one range read from its start up to
//! the cutoff, whichever devices they belong to. The bucket comes first so that appends, which
//! all write index keys with "now" in them, spread over [`EXPIRY_INDEX_BUCKETS`] places in the
//! keyspace instead of all landing at the end of one range (on FoundationDB, one storage
//! team would take every index write).
//!
//! **Compared with Signal-Server's FoundationDB message store.** Signal keys each queue entry
//! by the commit's versionstamp under `messages/{account}/{device}/queue`, writes it with
//! `SET_VERSIONSTAMPED_KEY` (no read, so concurrent inserts never conflict), bumps a
//! versionstamped "messages available" key per account that readers `watch`, inserts a
//! multi-recipient message in transactions of about 1 MB, and spreads accounts over several
//! clusters by a consistent hash of the account, with the configuration epoch and shard packed
//! into the versionstamp's user byte. Relay keeps the per-device layout and the range-read
//! fetch, but numbers entries with a gapless queue sequence instead: versionstamps are unique
//! and increasing but have gaps, so a device could not tell a lost entry from a number never
//! used. Relay pays for that with a read-modify-write counter (`latest`), whose hot-key story is
//! below; it replaces the "messages available" watch with the region's push of the new `latest`
//! to the edge holding the device (the engine's watches can carry it once they exist).
//!
//! **Conflicts.** An append reads `latest` with a read conflict (a read-modify-write counter,
//! not an atomic add): two appends to one device in one commit window conflict and one retries
//! and takes the next number, which keeps the queue gapless. That counter is a hot key only if
//! one device receives appends from many concurrent writers. Two things keep it cool: there is
//! one writer per device shard (a device's queue is written only by its home region, and
//! within the region the appends for one device come from the transactions of that device's
//! chats, a handful per second at most), and group commit resolves a whole batch of waiting
//! transactions at once, so a retry waits one batch (about one fsync), not a backoff storm.
//! When a device's fan-in grows hot (a device in many busy groups), the region funnels its
//! appends through one task per device shard (hash of the device onto a fixed set of lanes)
//! that reads `latest` once and appends a whole batch in one transaction: a single writer per
//! key never conflicts, and the batch costs one group commit. The depth is changed with atomic
//! adds and read by appends with a snapshot read, so acks never conflict with appends; the
//! depth an append sees can only be too high (a concurrent ack), never too low (a concurrent
//! append also wrote `latest`), so the cap holds. A fetch reads the entries after its cursor
//! and `latest` with snapshot reads ([`read_after_snapshot`], [`latest_snapshot`]): it returns
//! what was committed at its read version, and an append landing meanwhile is announced by the
//! push that follows its commit, so appends never refuse a fetch (with conflicting reads a
//! sender and its receiver kept invalidating each other: half of all write transactions retried
//! under load). An ack or a sweep reads each entry it deletes, so an ack and a sweep of one
//! entry (or two acks) conflict and only one of them reports it: an entry is delivered or
//! expired, never both. The conformance suite counts the conflicts of concurrent appends and
//! fetch-and-acks on one queue: zero.
//!
//! **Sharding across clusters.** A region outgrowing one FoundationDB cluster maps each
//! account to one of N clusters by a consistent hash of the account id over the cluster list
//! of the current configuration epoch (as Signal does), so all of an account's devices, their
//! counters and their entries live in one cluster and no transaction spans two. Raising N
//! bumps the configuration epoch; only the accounts whose shard changed move, each under the
//! directory's epoch fence: the new cluster's `latest` starts from the old cluster's value and
//! the remaining entries are copied (or read from the old cluster first, lower sequences
//! before higher), so the sequence stays gapless across the move.
//!
//! **Depth cap policy: refuse-new.** A queue holding [`DEVICE_QUEUE_DEPTH_MAX`] entries refuses
//! further appends ([`QueueAppend::Full`]); nothing queued is ever trimmed to make room. The
//! sender's region answers "throttled" and the sender keeps the envelope in its durable outbox
//! and retries, so nothing is lost silently (I1); dropping the oldest entries, the usual
//! alternative, would lose messages nobody is told about.
//!
//! **Idempotence.** [`append`] is not idempotent on its own: call it only under a guard checked
//! in the same transaction (a chat log append that reported a new entry, a receipt that moved
//! forward, entries an ack or a sweep removed). [`append_once`] takes an [`IdempotencyKey`] for
//! callers without such a guard: retried after `CommitUnknownResult`, it returns the queue
//! sequence of its first attempt. [`ack`] is idempotent by nature: acking a missing entry does
//! nothing. An ack or a sweep retried after `CommitUnknownResult` reports nothing removed, so
//! whatever the caller derives from removed entries (delivered or expired receipts) must be
//! written in the same transaction.
//!
//! **Retention.** [`sweep_expired`] removes entries enqueued more than `retention_ms` ago and
//! reports each (device, queue sequence, item), at most [`SWEEP_ENTRIES_MAX`] per transaction,
//! with `more` set when another round may find more. For one device it reads the head of its
//! queue (the oldest entries); for all devices it reads the expiry index bucket by bucket.
//!
//! **Limits.** [`DEVICE_QUEUE_DEPTH_MAX`] entries per device; a fetch returns at most
//! [`LAYER_READ_ENTRIES_MAX`] entries; a sweep removes at most [`SWEEP_ENTRIES_MAX`] entries
//! (each a few dozen bytes of item plus two keys, far below 10 MB, and one range read per
//! bucket plus one point read per entry, far below 5 s).
//!
//! **Evolution.** The enqueue time is field 3 of the stored item; entries written before it
//! existed read as enqueued at 0, have no index key, and expire at the first sweep of their
//! device. Next: a record of expired queue ranges, so that a device can tell an expiry from a
//! loss, and a versionstamped per-account "available" key for watches.

use prost::Message;
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId, RegionId};

pub use crate::codec::IdempotencyKey;
use crate::codec::{decode_key, decode_record, encode_u64, read_count, read_u64, recall, remember};
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
pub use crate::limits::QUEUE_RETENTION_MS_DEFAULT;
pub use crate::limits::SWEEP_ENTRIES_MAX;
use crate::limits::{DEVICE_QUEUE_DEPTH_MAX, LAYER_READ_ENTRIES_MAX};
use crate::tuple::{Subspace, TupleDecode};

/// Buckets of the expiry index, spreading its writes over the keyspace.
pub const EXPIRY_INDEX_BUCKETS: u8 = 16;

/// One entry of a device queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueItem {
    /// A chat log entry for the device to fetch.
    MessageRef {
        /// The chat.
        chat: ChatId,
        /// The entry's chat sequence number.
        chat_seq: u64,
        /// Who sent it, kept with the reference so that the receipt of its delivery needs no
        /// read of the chat log entry (`None` in entries written before it was kept).
        origin: Option<MessageOrigin>,
        /// The number the device is shown the entry under, where its account's view numbers
        /// the chat apart from the log (`chat_log::views`; `None`: `chat_seq`).
        shown_seq: Option<u64>,
    },
    /// Several chat log entries of one chat, in chat order, committed in one transaction: a
    /// device gets the envelopes one lane commits together as one entry, so a group's fan-out
    /// writes (and its members fetch and acknowledge) one entry per member device per commit
    /// instead of one per message. Never empty; one message is a [`QueueItem::MessageRef`].
    MessageRefs {
        /// The chat.
        chat: ChatId,
        /// The entries, in increasing chat sequence.
        messages: Vec<MessageInQueue>,
    },
    /// A receipt for the device, opaque to the queue.
    Receipt(Vec<u8>),
    /// Several receipts for the device as one entry, opaque to the queue.
    Receipts(Vec<u8>),
}

/// One message of a [`QueueItem::MessageRefs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageInQueue {
    /// The entry's chat sequence number.
    pub chat_seq: u64,
    /// Who sent it (see [`QueueItem::MessageRef`]).
    pub origin: Option<MessageOrigin>,
    /// The number the device is shown it under (see [`QueueItem::MessageRef`]).
    pub shown_seq: Option<u64>,
}

impl MessageInQueue {
    /// The number the device is shown the entry under.
    pub fn shown(&self) -> u64 {
        self.shown_seq.unwrap_or(self.chat_seq)
    }
}

impl QueueItem {
    /// The chat log entries the item references, in order: none for receipts.
    pub fn messages(&self) -> (Option<ChatId>, Vec<MessageInQueue>) {
        match self {
            QueueItem::MessageRef {
                chat,
                chat_seq,
                origin,
                shown_seq,
            } => (
                Some(*chat),
                vec![MessageInQueue {
                    chat_seq: *chat_seq,
                    origin: *origin,
                    shown_seq: *shown_seq,
                }],
            ),
            QueueItem::MessageRefs { chat, messages } => (Some(*chat), messages.clone()),
            QueueItem::Receipt(_) | QueueItem::Receipts(_) => (None, Vec::new()),
        }
    }
}

/// The sender of a queued message, as its delivered or expired receipt names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageOrigin {
    /// The sending device.
    pub sender: DeviceAddress,
    /// The sender's id of the message.
    pub client_message_id: ClientMessageId,
    /// The sender's home region.
    pub sender_region: RegionId,
    /// Whether it is a group message.
    pub group: bool,
}

/// What [`append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueAppend {
    /// Enqueued under a new queue sequence number.
    Appended {
        /// The entry's queue sequence number.
        queue_seq: u64,
    },
    /// Refused under the refuse-new policy: the queue holds [`DEVICE_QUEUE_DEPTH_MAX`] entries
    /// or more.
    Full {
        /// The entries waiting.
        depth: u64,
    },
}

/// Which queues [`sweep_expired`] sweeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepScope {
    /// One device's queue.
    Device(DeviceAddress),
    /// Every queue in the store.
    All,
}

/// What [`sweep_expired`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// The expired entries: device, queue sequence, item.
    pub expired: Vec<(DeviceAddress, u64, QueueItem)>,
    /// Whether another sweep may find more expired entries (this one stopped at its limit).
    pub more: bool,
}

/// Appends `item`, enqueued at `enqueued_at_ms`, to the queue of `device` under its next queue
/// sequence (from 1). Not idempotent: call it under a guard checked in the same transaction.
pub async fn append(
    transaction: &Transaction,
    device: DeviceAddress,
    item: &QueueItem,
    enqueued_at_ms: u64,
) -> Result<QueueAppend, StoreError> {
    let queue = DeviceQueue::new(device);
    let depth = depth_snapshot(transaction, device).await?;
    if depth >= DEVICE_QUEUE_DEPTH_MAX {
        return Ok(QueueAppend::Full { depth });
    }
    let latest_key = queue.latest_key();
    let queue_seq = read_u64(transaction, &latest_key, "device queue latest").await? + 1;
    transaction.set(&latest_key, &encode_u64(queue_seq))?;
    transaction.set(
        &queue.entries.pack(&(queue_seq,)),
        &stored_item(item, enqueued_at_ms).encode_to_vec(),
    )?;
    transaction.set(&expiry_key(device, enqueued_at_ms, queue_seq), &[])?;
    transaction.atomic_add(&queue.depth_key(), 1)?;
    Ok(QueueAppend::Appended { queue_seq })
}

/// The keys [`append`] writes for entry `queue_seq` of `device` enqueued at `enqueued_at_ms`, in
/// the order it writes them: the latest sequence, the entry, its expiry index key, the depth.
/// For baselines that write what the layer writes without the layer (`relayd bench storage`).
pub fn append_keys(device: DeviceAddress, queue_seq: u64, enqueued_at_ms: u64) -> [Vec<u8>; 4] {
    let queue = DeviceQueue::new(device);
    [
        queue.latest_key(),
        queue.entries.pack(&(queue_seq,)),
        expiry_key(device, enqueued_at_ms, queue_seq),
        queue.depth_key(),
    ]
}

/// Appends like [`append`], once per `idempotency` key: retried after its commit, it returns
/// the queue sequence it was given and appends nothing.
pub async fn append_once(
    transaction: &Transaction,
    device: DeviceAddress,
    item: &QueueItem,
    enqueued_at_ms: u64,
    idempotency: &IdempotencyKey,
) -> Result<QueueAppend, StoreError> {
    if let Some(stored) = recall(transaction, "device_queue_append", &device, idempotency).await? {
        let queue_seq = crate::codec::decode_u64(&stored, "device queue append result")?;
        return Ok(QueueAppend::Appended { queue_seq });
    }
    let outcome = append(transaction, device, item, enqueued_at_ms).await?;
    if let QueueAppend::Appended { queue_seq } = outcome {
        remember(
            transaction,
            "device_queue_append",
            &device,
            idempotency,
            &encode_u64(queue_seq),
        )?;
    }
    Ok(outcome)
}

/// Up to `limit` entries of the queue of `device` after `after_queue_seq`, in order (at most
/// [`LAYER_READ_ENTRIES_MAX`]), with a read conflict on the range read: a concurrent append
/// into it refuses this transaction.
pub async fn read_after(
    transaction: &Transaction,
    device: DeviceAddress,
    after_queue_seq: u64,
    limit: usize,
) -> Result<Vec<(u64, QueueItem)>, StoreError> {
    read_entries(transaction, device, after_queue_seq, limit, false).await
}

/// [`read_after`] as a snapshot read: what was committed at the transaction's read version,
/// without a read conflict, so a fetch never conflicts with appends landing after it (the
/// device learns of those from the push that follows their commit).
pub async fn read_after_snapshot(
    transaction: &Transaction,
    device: DeviceAddress,
    after_queue_seq: u64,
    limit: usize,
) -> Result<Vec<(u64, QueueItem)>, StoreError> {
    read_entries(transaction, device, after_queue_seq, limit, true).await
}

async fn read_entries(
    transaction: &Transaction,
    device: DeviceAddress,
    after_queue_seq: u64,
    limit: usize,
    snapshot: bool,
) -> Result<Vec<(u64, QueueItem)>, StoreError> {
    let Some(first) = after_queue_seq.checked_add(1) else {
        return Ok(Vec::new());
    };
    let queue = DeviceQueue::new(device);
    let begin = queue.entries.pack(&(first,));
    let (_, end) = queue.entries.range();
    let options = RangeOptions {
        limit: Some(limit.min(LAYER_READ_ENTRIES_MAX)),
        snapshot,
        ..RangeOptions::default()
    };
    let rows = transaction.get_range(&begin, &end, options).await?;
    rows.iter()
        .map(|(key, value)| {
            let queue_seq = queue.queue_seq(key)?;
            let (item, _) = queue_item(value)?;
            Ok((queue_seq, item))
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
            let (item, enqueued_at_ms) = queue_item(&value)?;
            remove_entry(transaction, &queue, device, queue_seq, enqueued_at_ms);
            removed.push((queue_seq, item));
        }
    }
    lower_depth(transaction, &queue, removed.len())?;
    Ok(removed)
}

/// Removes entries enqueued before `now_ms - retention_ms` from the queues of `scope`, at most
/// `limit` (clamped to `1..=`[`SWEEP_ENTRIES_MAX`]) in this transaction, and reports them.
pub async fn sweep_expired(
    transaction: &Transaction,
    scope: SweepScope,
    now_ms: u64,
    retention_ms: u64,
    limit: usize,
) -> Result<SweepReport, StoreError> {
    let cutoff_ms = now_ms.saturating_sub(retention_ms);
    let limit = limit.clamp(1, SWEEP_ENTRIES_MAX);
    match scope {
        SweepScope::Device(device) => sweep_device(transaction, device, cutoff_ms, limit).await,
        SweepScope::All => sweep_index(transaction, cutoff_ms, limit).await,
    }
}

/// The last queue sequence given to `device` (0 before the first entry); acks do not lower it.
/// A read conflict: a concurrent append refuses this transaction.
pub async fn latest(transaction: &Transaction, device: DeviceAddress) -> Result<u64, StoreError> {
    let queue = DeviceQueue::new(device);
    read_u64(transaction, &queue.latest_key(), "device queue latest").await
}

/// [`latest`] as a snapshot read, without a read conflict: a hint for the device (a fetch's
/// answer), never a basis for a write.
pub async fn latest_snapshot(
    transaction: &Transaction,
    device: DeviceAddress,
) -> Result<u64, StoreError> {
    let queue = DeviceQueue::new(device);
    match transaction.snapshot_get(&queue.latest_key()).await? {
        Some(bytes) => crate::codec::decode_u64(&bytes, "device queue latest"),
        None => Ok(0),
    }
}

/// The number of entries waiting in the queue of `device`, with a read conflict.
pub async fn depth(transaction: &Transaction, device: DeviceAddress) -> Result<u64, StoreError> {
    let queue = DeviceQueue::new(device);
    read_count(transaction, &queue.depth_key(), false, "device queue depth").await
}

/// [`depth`] as a snapshot read, without a read conflict, as [`append`] reads it for its cap:
/// it can only be too high (a concurrent ack lowered it), never too low, so a check against
/// the cap still holds, and acks never refuse the transaction.
pub async fn depth_snapshot(
    transaction: &Transaction,
    device: DeviceAddress,
) -> Result<u64, StoreError> {
    let queue = DeviceQueue::new(device);
    read_count(transaction, &queue.depth_key(), true, "device queue depth").await
}

/// One entry of a queue as [`inspect`] found it: its item and enqueue time, or why they do not
/// decode.
#[derive(Debug, Clone)]
pub struct InspectedEntry {
    /// The entry's queue sequence number.
    pub queue_seq: u64,
    /// The item and its enqueue time (ms since the Unix epoch), or the decoding error.
    pub item: Result<(QueueItem, u64), StoreError>,
}

/// Up to `limit` devices that have queue keys, after `after` (from the first with `None`), in
/// address order (at most [`LAYER_READ_ENTRIES_MAX`]). One single-key range read per device:
/// the read skips from one device's keys to the next.
pub async fn queued_devices(
    transaction: &Transaction,
    after: Option<DeviceAddress>,
    limit: usize,
) -> Result<Vec<DeviceAddress>, StoreError> {
    let (begin, end) = Subspace::new(&("device_queue",)).range();
    queued_devices_between(transaction, (begin, end), after, limit).await
}

/// [`queued_devices`] of one account's devices.
pub async fn queued_devices_of(
    transaction: &Transaction,
    account: AccountId,
    after: Option<DeviceAddress>,
    limit: usize,
) -> Result<Vec<DeviceAddress>, StoreError> {
    let range = Subspace::new(&("device_queue", account)).range();
    queued_devices_between(transaction, range, after, limit).await
}

/// The devices with queue keys in `range` of the queues' keys, after `after`.
async fn queued_devices_between(
    transaction: &Transaction,
    (mut begin, end): (Vec<u8>, Vec<u8>),
    after: Option<DeviceAddress>,
    limit: usize,
) -> Result<Vec<DeviceAddress>, StoreError> {
    let queues = Subspace::new(&("device_queue",));
    if let Some(after) = after {
        begin = begin.max(queues.subspace(&after).range().1);
    }
    let limit = limit.clamp(1, LAYER_READ_ENTRIES_MAX);
    let mut found = Vec::new();
    while found.len() < limit {
        let first = transaction
            .get_range(&begin, &end, RangeOptions::limit(1))
            .await?;
        let Some((key, _)) = first.first() else {
            break;
        };
        let mut rest = key.get(queues.bytes().len()..).unwrap_or_default();
        let device = DeviceAddress::decode_from(&mut rest)
            .map_err(|error| StoreError::corrupt("device queue key", error))?;
        found.push(device);
        (_, begin) = queues.subspace(&device).range();
    }
    Ok(found)
}

/// Up to `limit` entries of the queue of `device` after `after_queue_seq`, each decoded on its
/// own (at most [`LAYER_READ_ENTRIES_MAX`]), so that one damaged entry does not hide the others:
/// for checks and repairs. A key that does not decode fails the whole read.
pub async fn inspect(
    transaction: &Transaction,
    device: DeviceAddress,
    after_queue_seq: u64,
    limit: usize,
) -> Result<Vec<InspectedEntry>, StoreError> {
    let Some(first) = after_queue_seq.checked_add(1) else {
        return Ok(Vec::new());
    };
    let queue = DeviceQueue::new(device);
    let begin = queue.entries.pack(&(first,));
    let (_, end) = queue.entries.range();
    let rows = transaction
        .get_range(
            &begin,
            &end,
            RangeOptions::limit(limit.clamp(1, LAYER_READ_ENTRIES_MAX)),
        )
        .await?;
    rows.iter()
        .map(|(key, value)| {
            Ok(InspectedEntry {
                queue_seq: queue.queue_seq(key)?,
                item: queue_item(value),
            })
        })
        .collect()
}

/// Removes entry `queue_seq` of the queue of `device` if it is there and does not decode,
/// lowering the depth. Returns whether it removed it; a readable entry is left (remove it with
/// [`ack`], which reports its item). The entry's expiry index key cannot be found without its
/// enqueue time; the retention sweep drops such orphaned index keys when it meets them.
pub async fn remove_unreadable(
    transaction: &Transaction,
    device: DeviceAddress,
    queue_seq: u64,
) -> Result<bool, StoreError> {
    let queue = DeviceQueue::new(device);
    let key = queue.entries.pack(&(queue_seq,));
    let Some(value) = transaction.get(&key).await? else {
        return Ok(false);
    };
    if queue_item(&value).is_ok() {
        return Ok(false);
    }
    transaction.clear(&key);
    // A damaged depth counter is rewritten by the repair with `set_depth`.
    if depth(transaction, device).await.is_ok() {
        lower_depth(transaction, &queue, 1)?;
    }
    Ok(true)
}

/// Sets the depth counter of the queue of `device` to `entries` (a repair that counted them).
pub fn set_depth(
    transaction: &Transaction,
    device: DeviceAddress,
    entries: u64,
) -> Result<(), StoreError> {
    transaction.set(&DeviceQueue::new(device).depth_key(), &encode_u64(entries))
}

/// An entry of a device's queue as a home move carries it: the item (its chat sequences are the
/// old home's) and when it was enqueued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedEntry {
    /// The entry's queue sequence number (the same at the new home).
    pub queue_seq: u64,
    /// The item.
    pub item: QueueItem,
    /// When it was enqueued, in milliseconds since the Unix epoch (the retention clock keeps
    /// running across the move).
    pub enqueued_at_ms: u64,
}

/// Up to `limit` entries of the queue of `device` after `after_queue_seq` with their enqueue
/// times (at most [`LAYER_READ_ENTRIES_MAX`]), for a home move. A record that does not decode
/// fails the read: a damaged queue is repaired before its account moves.
pub async fn moved_entries(
    transaction: &Transaction,
    device: DeviceAddress,
    after_queue_seq: u64,
    limit: usize,
) -> Result<Vec<MovedEntry>, StoreError> {
    inspect(transaction, device, after_queue_seq, limit)
        .await?
        .into_iter()
        .map(|inspected| {
            let (item, enqueued_at_ms) = inspected.item?;
            Ok(MovedEntry {
                queue_seq: inspected.queue_seq,
                item,
                enqueued_at_ms,
            })
        })
        .collect()
}

/// The bytes of a moved entry's item and enqueue time (the stored form, which evolves with
/// prost's rules, so regions of neighbouring builds read each other's).
pub fn moved_item_bytes(entry: &MovedEntry) -> Vec<u8> {
    stored_item(&entry.item, entry.enqueued_at_ms).encode_to_vec()
}

/// The entry [`moved_item_bytes`] made, under `queue_seq`.
pub fn moved_entry_from(queue_seq: u64, bytes: &[u8]) -> Result<MovedEntry, StoreError> {
    let (item, enqueued_at_ms) = queue_item(bytes)?;
    Ok(MovedEntry {
        queue_seq,
        item,
        enqueued_at_ms,
    })
}

/// Writes a moved entry into the queue of `device` under its own queue sequence (its chat
/// sequences already this region's), with its expiry index key and one more in the depth, and
/// raises the queue's latest sequence to it. Idempotent: an entry already there is left and
/// `false` returned (reads the entry's key, so a concurrent import of it conflicts).
pub async fn import_entry(
    transaction: &Transaction,
    device: DeviceAddress,
    entry: &MovedEntry,
) -> Result<bool, StoreError> {
    let queue = DeviceQueue::new(device);
    let key = queue.entries.pack(&(entry.queue_seq,));
    if transaction.get(&key).await?.is_some() {
        return Ok(false);
    }
    transaction.set(&key, &moved_item_bytes(entry))?;
    transaction.set(
        &expiry_key(device, entry.enqueued_at_ms, entry.queue_seq),
        &[],
    )?;
    transaction.atomic_add(&queue.depth_key(), 1)?;
    raise_latest(transaction, device, entry.queue_seq)?;
    Ok(true)
}

/// Raises the latest queue sequence of `device` to `latest` if below (an atomic max): a moved
/// queue goes on numbering after the old home's last entry, acknowledged or not.
pub fn raise_latest(
    transaction: &Transaction,
    device: DeviceAddress,
    latest: u64,
) -> Result<(), StoreError> {
    transaction.atomic_max(&DeviceQueue::new(device).latest_key(), &encode_u64(latest))
}

/// Removes up to `limit` entries of the queue of `device` with their expiry index keys, and the
/// whole queue (counters included) once no more are left. Returns whether it is gone: the old
/// home of a moved account clears its queues page by page.
pub async fn clear_queue(
    transaction: &Transaction,
    device: DeviceAddress,
    limit: usize,
) -> Result<bool, StoreError> {
    let queue = DeviceQueue::new(device);
    let limit = limit.clamp(1, LAYER_READ_ENTRIES_MAX);
    let (begin, end) = queue.entries.range();
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::limit(limit))
        .await?;
    for (key, value) in &rows {
        let queue_seq = queue.queue_seq(key)?;
        transaction.clear(key);
        // An entry that does not decode has no findable index key; the sweep drops such keys.
        if let Ok((_, enqueued_at_ms)) = queue_item(value) {
            transaction.clear(&expiry_key(device, enqueued_at_ms, queue_seq));
        }
    }
    if rows.len() < limit {
        let (begin, end) = queue.root.range();
        transaction.clear_range(&begin, &end);
        return Ok(true);
    }
    lower_depth(transaction, &queue, rows.len())?;
    Ok(false)
}

/// The stored form of a queue item.
#[derive(Clone, PartialEq, Message)]
struct StoredItem {
    #[prost(oneof = "stored_item::Kind", tags = "1, 2, 4, 5")]
    kind: Option<stored_item::Kind>,
    /// When the entry was enqueued, in milliseconds since the Unix epoch (0: before the field).
    #[prost(uint64, tag = "3")]
    enqueued_at_ms: u64,
}

mod stored_item {
    /// The kinds of queue items.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(super) enum Kind {
        #[prost(message, tag = "1")]
        MessageRef(super::StoredMessageRef),
        #[prost(bytes = "vec", tag = "2")]
        Receipt(Vec<u8>),
        // Tag 3 is the entry's enqueue time.
        #[prost(bytes = "vec", tag = "4")]
        Receipts(Vec<u8>),
        #[prost(message, tag = "5")]
        MessageRefs(super::StoredMessageRefs),
    }
}

/// Several references into one chat: the chat once, each reference without it.
#[derive(Clone, PartialEq, Message)]
struct StoredMessageRefs {
    #[prost(bytes = "vec", tag = "1")]
    chat: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    messages: Vec<StoredMessageRef>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredMessageRef {
    #[prost(bytes = "vec", tag = "1")]
    chat: Vec<u8>,
    #[prost(uint64, tag = "2")]
    chat_seq: u64,
    /// The origin (tags 3 to 7), absent in entries written before it was kept.
    #[prost(uint64, tag = "3")]
    sender_account: u64,
    #[prost(uint32, tag = "4")]
    sender_device: u32,
    #[prost(bytes = "vec", tag = "5")]
    client_message_id: Vec<u8>,
    #[prost(uint32, tag = "6")]
    sender_region: u32,
    #[prost(bool, tag = "7")]
    group: bool,
    /// The number the device is shown the entry under (0: `chat_seq`).
    #[prost(uint64, tag = "8")]
    shown_seq: u64,
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

    fn queue_seq(&self, key: &[u8]) -> Result<u64, StoreError> {
        let (queue_seq,): (u64,) = decode_key(&self.entries, key, "device queue key")?;
        Ok(queue_seq)
    }
}

fn expiry_index() -> Subspace {
    Subspace::new(&("device_queue_expiry",))
}

/// The bucket of the expiry index holding `device`'s entries.
fn expiry_bucket(device: DeviceAddress) -> u8 {
    // A 64-bit finalizer (MurmurHash3's), so that dense ids spread over the buckets.
    let mut mixed = device.account.0 ^ (u64::from(device.device.0) << 40);
    mixed = (mixed ^ (mixed >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    mixed = (mixed ^ (mixed >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    mixed ^= mixed >> 33;
    // The remainder is below EXPIRY_INDEX_BUCKETS, so it fits a u8.
    (mixed % u64::from(EXPIRY_INDEX_BUCKETS)) as u8
}

fn expiry_key(device: DeviceAddress, enqueued_at_ms: u64, queue_seq: u64) -> Vec<u8> {
    expiry_index().pack(&(expiry_bucket(device), enqueued_at_ms, device, queue_seq))
}

/// Clears an entry and its index key (the caller lowers the depth).
fn remove_entry(
    transaction: &Transaction,
    queue: &DeviceQueue,
    device: DeviceAddress,
    queue_seq: u64,
    enqueued_at_ms: u64,
) {
    transaction.clear(&queue.entries.pack(&(queue_seq,)));
    transaction.clear(&expiry_key(device, enqueued_at_ms, queue_seq));
}

fn lower_depth(
    transaction: &Transaction,
    queue: &DeviceQueue,
    removed: usize,
) -> Result<(), StoreError> {
    if removed == 0 {
        return Ok(());
    }
    // `removed` is bounded by the transaction size, far below i64::MAX.
    transaction.atomic_add(&queue.depth_key(), -(removed as i64))
}

async fn sweep_device(
    transaction: &Transaction,
    device: DeviceAddress,
    cutoff_ms: u64,
    limit: usize,
) -> Result<SweepReport, StoreError> {
    let queue = DeviceQueue::new(device);
    let (begin, end) = queue.entries.range();
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::limit(limit))
        .await?;
    let mut report = SweepReport::default();
    let mut stopped = false;
    for (key, value) in &rows {
        let queue_seq = queue.queue_seq(key)?;
        let (item, enqueued_at_ms) = queue_item(value)?;
        // Entries are enqueued in time order, so the first one still young ends the sweep (a
        // clock stepping back can only delay an expiry, never hasten one).
        if enqueued_at_ms >= cutoff_ms {
            stopped = true;
            break;
        }
        remove_entry(transaction, &queue, device, queue_seq, enqueued_at_ms);
        report.expired.push((device, queue_seq, item));
    }
    lower_depth(transaction, &queue, report.expired.len())?;
    report.more = !stopped && rows.len() == limit;
    Ok(report)
}

async fn sweep_index(
    transaction: &Transaction,
    cutoff_ms: u64,
    limit: usize,
) -> Result<SweepReport, StoreError> {
    let index = expiry_index();
    let mut report = SweepReport::default();
    let mut removed_per_device: Vec<(DeviceAddress, usize)> = Vec::new();
    for bucket in 0..EXPIRY_INDEX_BUCKETS {
        let remaining = limit - report.expired.len();
        let bucket_space = index.subspace(&(bucket,));
        let (begin, _) = bucket_space.range();
        let end = bucket_space.pack(&(cutoff_ms,));
        let rows = transaction
            .get_range(&begin, &end, RangeOptions::limit(remaining))
            .await?;
        for (key, _) in &rows {
            let (enqueued_at_ms, account, device_id, queue_seq): (u64, AccountId, DeviceId, u64) =
                decode_key(&bucket_space, key, "device queue expiry key")?;
            let device = DeviceAddress {
                account,
                device: device_id,
            };
            let queue = DeviceQueue::new(device);
            let Some(value) = transaction.get(&queue.entries.pack(&(queue_seq,))).await? else {
                // An index key whose entry is gone: only a bug leaves one; drop it.
                tracing::warn!(%device, queue_seq, "expiry index key without its entry");
                transaction.clear(key);
                continue;
            };
            let (item, stored_at_ms) = queue_item(&value)?;
            if stored_at_ms != enqueued_at_ms {
                return Err(StoreError::corrupt(
                    "device queue expiry key",
                    format!(
                        "{device}#{queue_seq} indexed at {enqueued_at_ms} but enqueued at {stored_at_ms}"
                    ),
                ));
            }
            remove_entry(transaction, &queue, device, queue_seq, enqueued_at_ms);
            report.expired.push((device, queue_seq, item));
            match removed_per_device.iter_mut().find(|(d, _)| *d == device) {
                Some((_, removed)) => *removed += 1,
                None => removed_per_device.push((device, 1)),
            }
        }
        if rows.len() == remaining {
            report.more = true;
            break;
        }
    }
    for (device, removed) in removed_per_device {
        lower_depth(transaction, &DeviceQueue::new(device), removed)?;
    }
    Ok(report)
}

fn stored_item(item: &QueueItem, enqueued_at_ms: u64) -> StoredItem {
    let kind = match item {
        QueueItem::MessageRef {
            chat,
            chat_seq,
            origin,
            shown_seq,
        } => {
            let message = MessageInQueue {
                chat_seq: *chat_seq,
                origin: *origin,
                shown_seq: *shown_seq,
            };
            let mut reference = stored_reference(&message);
            reference.chat = chat.0.to_vec();
            stored_item::Kind::MessageRef(reference)
        }
        QueueItem::MessageRefs { chat, messages } => {
            stored_item::Kind::MessageRefs(StoredMessageRefs {
                chat: chat.0.to_vec(),
                messages: messages.iter().map(stored_reference).collect(),
            })
        }
        QueueItem::Receipt(bytes) => stored_item::Kind::Receipt(bytes.clone()),
        QueueItem::Receipts(bytes) => stored_item::Kind::Receipts(bytes.clone()),
    };
    StoredItem {
        kind: Some(kind),
        enqueued_at_ms,
    }
}

/// A stored reference without its chat.
fn stored_reference(message: &MessageInQueue) -> StoredMessageRef {
    let mut reference = StoredMessageRef {
        chat_seq: message.chat_seq,
        shown_seq: message.shown_seq.unwrap_or(0),
        ..StoredMessageRef::default()
    };
    if let Some(origin) = message.origin {
        reference.sender_account = origin.sender.account.0;
        reference.sender_device = origin.sender.device.0;
        reference.client_message_id = origin.client_message_id.0.to_vec();
        reference.sender_region = origin.sender_region.0;
        reference.group = origin.group;
    }
    reference
}

/// The origin a stored reference names, if it names one.
fn stored_origin(reference: &StoredMessageRef) -> Result<Option<MessageOrigin>, StoreError> {
    Ok(match reference.client_message_id.as_slice() {
        [] => None,
        id => Some(MessageOrigin {
            sender: DeviceAddress {
                account: AccountId(reference.sender_account),
                device: DeviceId(reference.sender_device),
            },
            client_message_id: ClientMessageId::from_bytes(id)
                .map_err(|error| StoreError::corrupt("device queue entry", error))?,
            sender_region: RegionId(reference.sender_region),
            group: reference.group,
        }),
    })
}

/// The number a stored reference is shown under, if it is not its chat sequence.
fn stored_shown(reference: &StoredMessageRef) -> Option<u64> {
    (reference.shown_seq != 0).then_some(reference.shown_seq)
}

/// Decodes a stored entry into its item and enqueue time.
fn queue_item(value: &[u8]) -> Result<(QueueItem, u64), StoreError> {
    let stored: StoredItem = decode_record(value, "device queue entry")?;
    let chat_of = |bytes: &[u8]| {
        ChatId::from_bytes(bytes).map_err(|error| StoreError::corrupt("device queue entry", error))
    };
    let item = match stored.kind {
        Some(stored_item::Kind::MessageRef(reference)) => QueueItem::MessageRef {
            chat: chat_of(&reference.chat)?,
            chat_seq: reference.chat_seq,
            origin: stored_origin(&reference)?,
            shown_seq: stored_shown(&reference),
        },
        Some(stored_item::Kind::MessageRefs(references)) => {
            if references.messages.is_empty() {
                return Err(StoreError::corrupt(
                    "device queue entry",
                    "a group of message references holds none",
                ));
            }
            QueueItem::MessageRefs {
                chat: chat_of(&references.chat)?,
                messages: references
                    .messages
                    .iter()
                    .map(|reference| {
                        Ok(MessageInQueue {
                            chat_seq: reference.chat_seq,
                            origin: stored_origin(reference)?,
                            shown_seq: stored_shown(reference),
                        })
                    })
                    .collect::<Result<_, StoreError>>()?,
            }
        }
        Some(stored_item::Kind::Receipt(bytes)) => QueueItem::Receipt(bytes),
        Some(stored_item::Kind::Receipts(bytes)) => QueueItem::Receipts(bytes),
        None => return Err(StoreError::corrupt("device queue entry", "no item")),
    };
    Ok((item, stored.enqueued_at_ms))
}

#[cfg(test)]
mod tests;

/// The device queue against a model (a counter and a map of entries per device), driven by
/// random operation sequences: appends (plain and keyed), reads, acks and sweeps.
#[cfg(test)]
mod properties {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::test_support::{block_on, idempotency_key, temporary_database};

    const DEVICES: [DeviceAddress; 3] = [
        DeviceAddress {
            account: AccountId(1),
            device: DeviceId(1),
        },
        DeviceAddress {
            account: AccountId(1),
            device: DeviceId(2),
        },
        DeviceAddress {
            account: AccountId(7),
            device: DeviceId(1),
        },
    ];

    #[derive(Debug, Clone)]
    enum Operation {
        Append {
            device: usize,
            item: QueueItem,
            enqueued_at_ms: u64,
            /// Appended with [`append_once`] and this key, else with [`append`].
            key: Option<u64>,
        },
        ReadAfter {
            device: usize,
            after: u64,
            limit: usize,
        },
        Ack {
            device: usize,
            queue_seqs: Vec<u64>,
        },
        Counters {
            device: usize,
        },
        Sweep {
            device: Option<usize>,
            now_ms: u64,
            retention_ms: u64,
            limit: usize,
        },
    }

    fn item() -> impl Strategy<Value = QueueItem> {
        prop_oneof![
            (0..3u8, 1..100u64).prop_map(|(chat, chat_seq)| QueueItem::MessageRef {
                chat: ChatId([chat; 16]),
                chat_seq,
                origin: None,
                shown_seq: None,
            }),
            (0..3u8, 1..100u64, any::<bool>()).prop_map(|(chat, chat_seq, group)| {
                QueueItem::MessageRef {
                    chat: ChatId([chat; 16]),
                    chat_seq,
                    origin: Some(MessageOrigin {
                        sender: DeviceAddress {
                            account: AccountId(u64::from(chat) + 1),
                            device: DeviceId(2),
                        },
                        client_message_id: ClientMessageId([chat; 16]),
                        sender_region: RegionId(3),
                        group,
                    }),
                    // A view's number where the entry is not a group's.
                    shown_seq: (!group).then_some(chat_seq + 1_000),
                }
            }),
            (
                0..3u8,
                prop::collection::vec((1..100u64, any::<bool>()), 1..5)
            )
                .prop_map(|(chat, messages)| QueueItem::MessageRefs {
                    chat: ChatId([chat; 16]),
                    messages: messages
                        .into_iter()
                        .map(|(chat_seq, with_origin)| MessageInQueue {
                            chat_seq,
                            origin: with_origin.then_some(MessageOrigin {
                                sender: DeviceAddress {
                                    account: AccountId(chat_seq),
                                    device: DeviceId(1),
                                },
                                client_message_id: ClientMessageId([chat; 16]),
                                sender_region: RegionId(2),
                                group: true,
                            }),
                            shown_seq: with_origin.then_some(chat_seq * 3),
                        })
                        .collect(),
                }),
            prop::collection::vec(any::<u8>(), 0..8).prop_map(QueueItem::Receipt),
            prop::collection::vec(any::<u8>(), 0..8).prop_map(QueueItem::Receipts),
        ]
    }

    fn operation() -> impl Strategy<Value = Operation> {
        prop_oneof![
            6 => (0..3usize, item(), 0..40u64, prop::option::weighted(0.3, 0..4u64)).prop_map(
                |(device, item, enqueued_at_ms, key)| Operation::Append {
                    device,
                    item,
                    enqueued_at_ms,
                    key,
                }
            ),
            2 => (0..3usize, 0..16u64, 0..6usize)
                .prop_map(|(device, after, limit)| Operation::ReadAfter { device, after, limit }),
            2 => (0..3usize, prop::collection::vec(0..16u64, 0..4))
                .prop_map(|(device, queue_seqs)| Operation::Ack { device, queue_seqs }),
            1 => (0..3usize).prop_map(|device| Operation::Counters { device }),
            2 => (prop::option::of(0..3usize), 0..60u64, 0..30u64, 0..5usize).prop_map(
                |(device, now_ms, retention_ms, limit)| Operation::Sweep {
                    device,
                    now_ms,
                    retention_ms,
                    limit,
                }
            ),
        ]
    }

    #[derive(Default)]
    struct ModelQueue {
        latest: u64,
        entries: BTreeMap<u64, (QueueItem, u64)>,
    }

    #[derive(Default)]
    struct Model {
        queues: [ModelQueue; 3],
        /// (device, key) → the queue sequence its keyed append got.
        keyed: BTreeMap<(usize, u64), u64>,
    }

    impl Model {
        /// The expected report of a sweep, emulating its order: one device's queue from the
        /// head, or the expiry index bucket by bucket, oldest first within a bucket.
        fn sweep(
            &mut self,
            device: Option<usize>,
            cutoff_ms: u64,
            limit: usize,
        ) -> (Vec<(usize, u64)>, bool) {
            let limit = limit.clamp(1, SWEEP_ENTRIES_MAX);
            let (expired, more) = match device {
                Some(device) => {
                    let rows: Vec<(u64, u64)> = self.queues[device]
                        .entries
                        .iter()
                        .take(limit)
                        .map(|(queue_seq, (_, at))| (*queue_seq, *at))
                        .collect();
                    let expired: Vec<(usize, u64)> = rows
                        .iter()
                        .take_while(|(_, at)| *at < cutoff_ms)
                        .map(|(queue_seq, _)| (device, *queue_seq))
                        .collect();
                    let more = expired.len() == rows.len() && rows.len() == limit;
                    (expired, more)
                }
                None => {
                    let mut candidates: Vec<(u8, u64, DeviceAddress, u64, usize)> = Vec::new();
                    for (index, queue) in self.queues.iter().enumerate() {
                        for (queue_seq, (_, at)) in &queue.entries {
                            if *at < cutoff_ms {
                                let address = DEVICES[index];
                                let bucket = expiry_bucket(address);
                                candidates.push((bucket, *at, address, *queue_seq, index));
                            }
                        }
                    }
                    candidates.sort();
                    let mut expired = Vec::new();
                    let mut more = false;
                    for bucket in 0..EXPIRY_INDEX_BUCKETS {
                        let remaining = limit - expired.len();
                        let in_bucket: Vec<_> = candidates
                            .iter()
                            .filter(|candidate| candidate.0 == bucket)
                            .take(remaining)
                            .map(|candidate| (candidate.4, candidate.3))
                            .collect();
                        let full = in_bucket.len() == remaining;
                        expired.extend(in_bucket);
                        if full {
                            more = true;
                            break;
                        }
                    }
                    (expired, more)
                }
            };
            for (device, queue_seq) in &expired {
                self.queues[*device].entries.remove(queue_seq);
            }
            (expired, more)
        }
    }

    async fn check(operations: Vec<Operation>) -> Result<(), TestCaseError> {
        let (_folder, database) = temporary_database(None);
        let mut model = Model::default();
        let fail = |error: StoreError| TestCaseError::fail(error.to_string());
        for operation in operations {
            match operation {
                Operation::Append {
                    device,
                    item,
                    enqueued_at_ms,
                    key,
                } => {
                    let address = DEVICES[device];
                    let outcome = database
                        .transact(|tx| {
                            let item = item.clone();
                            async move {
                                match key {
                                    Some(key) => {
                                        let key = idempotency_key(key);
                                        append_once(&tx, address, &item, enqueued_at_ms, &key).await
                                    }
                                    None => append(&tx, address, &item, enqueued_at_ms).await,
                                }
                            }
                        })
                        .await
                        .map_err(fail)?;
                    let recalled = key.and_then(|key| model.keyed.get(&(device, key)).copied());
                    let queue_seq = match recalled {
                        Some(queue_seq) => queue_seq,
                        None => {
                            let queue = &mut model.queues[device];
                            queue.latest += 1;
                            queue.entries.insert(queue.latest, (item, enqueued_at_ms));
                            if let Some(key) = key {
                                model.keyed.insert((device, key), queue.latest);
                            }
                            queue.latest
                        }
                    };
                    prop_assert_eq!(outcome, QueueAppend::Appended { queue_seq });
                }
                Operation::ReadAfter {
                    device,
                    after,
                    limit,
                } => {
                    let address = DEVICES[device];
                    let read = database
                        .transact(|tx| async move { read_after(&tx, address, after, limit).await })
                        .await
                        .map_err(fail)?;
                    let expected: Vec<(u64, QueueItem)> = model.queues[device]
                        .entries
                        .range(after + 1..)
                        .take(limit)
                        .map(|(queue_seq, (item, _))| (*queue_seq, item.clone()))
                        .collect();
                    prop_assert_eq!(read, expected);
                }
                Operation::Ack { device, queue_seqs } => {
                    let address = DEVICES[device];
                    let removed = database
                        .transact(|tx| {
                            let queue_seqs = queue_seqs.clone();
                            async move { ack(&tx, address, &queue_seqs).await }
                        })
                        .await
                        .map_err(fail)?;
                    let mut wanted = queue_seqs.clone();
                    wanted.sort_unstable();
                    wanted.dedup();
                    let expected: Vec<(u64, QueueItem)> = wanted
                        .into_iter()
                        .filter_map(|queue_seq| {
                            model.queues[device]
                                .entries
                                .remove(&queue_seq)
                                .map(|(item, _)| (queue_seq, item))
                        })
                        .collect();
                    prop_assert_eq!(removed, expected);
                }
                Operation::Counters { device } => {
                    let address = DEVICES[device];
                    let counters = database
                        .transact(|tx| async move {
                            Ok((latest(&tx, address).await?, depth(&tx, address).await?))
                        })
                        .await
                        .map_err(fail)?;
                    let queue = &model.queues[device];
                    prop_assert_eq!(counters, (queue.latest, queue.entries.len() as u64));
                }
                Operation::Sweep {
                    device,
                    now_ms,
                    retention_ms,
                    limit,
                } => {
                    let scope = match device {
                        Some(device) => SweepScope::Device(DEVICES[device]),
                        None => SweepScope::All,
                    };
                    let report = database
                        .transact(|tx| async move {
                            sweep_expired(&tx, scope, now_ms, retention_ms, limit).await
                        })
                        .await
                        .map_err(fail)?;
                    let before: Vec<BTreeMap<u64, (QueueItem, u64)>> = model
                        .queues
                        .iter()
                        .map(|queue| queue.entries.clone())
                        .collect();
                    let cutoff_ms = now_ms.saturating_sub(retention_ms);
                    let (expired, more) = model.sweep(device, cutoff_ms, limit);
                    let expected: Vec<(DeviceAddress, u64, QueueItem)> = expired
                        .iter()
                        .map(|(device, queue_seq)| {
                            let item = before[*device][queue_seq].0.clone();
                            (DEVICES[*device], *queue_seq, item)
                        })
                        .collect();
                    prop_assert_eq!(
                        report,
                        SweepReport {
                            expired: expected,
                            more
                        }
                    );
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn the_device_queue_matches_its_model(
            operations in prop::collection::vec(operation(), 1..48),
        ) {
            block_on(check(operations))?;
        }
    }
}
