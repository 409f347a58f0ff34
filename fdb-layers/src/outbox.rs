//! The outbox layer: what this region must deliver to other regions, in order per destination,
//! and the receiving side's record of what it already applied.
//!
//! **Challenge.** A region commits a change that another region must also see (a receipt for a
//! sender homed there, later a directory change for the writer or a message for a remote
//! member). The change is pushed to the outbox in the same transaction, so it is sent if and
//! only if it committed; a sender task peeks the oldest entries of each destination, delivers
//! them, and removes them once acknowledged. The receiver applies each entry once although
//! delivery is at least once. Every acknowledgement of a message in a region can push one, so
//! pushes to one destination must never conflict with each other.
//!
//! **Key layout** (subspace `("outbox",)`):
//! - `("entry", destination, stamp, index, count)` → the payload, split across keys when large.
//!   `stamp` is a tuple versionstamp ([`OutboxSeq`]): the pushing transaction's commit
//!   versionstamp, written by the engine at commit (`SET_VERSIONSTAMPED_KEY`), then the push's
//!   order among that transaction's pushes to the destination (the user version);
//! - `("applied", origin)` → the [`OutboxSeq`] of the last entry of `origin` applied here.
//!
//! Entries of one destination are contiguous and in commit order (versionstamps increase with
//! commits), so peeking is one range read and removal is one range clear. [`destinations`] skips
//! from one destination to the next with one-key range reads instead of scanning entries.
//!
//! **Conflicts.** None between pushes: a push reads nothing and writes keys that no other
//! transaction can write (its own versionstamp), so pushes to one destination from any number
//! of concurrent acknowledgements never retry (a `("last_seq", destination)` counter read and
//! written by every push serialized them and made half of them retry under load). Removal is a
//! blind range clear below what was delivered: it never conflicts with pushes, which land above.
//! Marking an origin entry applied reads the origin's watermark, so two deliveries of one entry
//! conflict and only one applies it; one pump per origin delivers, so that is rare.
//!
//! **Ordering.** Sequences are increasing, not gapless: a destination applies an origin's
//! entries in order (the sender delivers from the head of the outbox) and keeps the highest one
//! applied, so a retried delivery is recognized whatever gaps the versionstamps leave.
//!
//! **Idempotence.** A push is not idempotent: callers push in the transaction whose change it
//! carries, under a guard checked in that transaction (the ack that removed the entry the
//! receipt is about). [`push_once`] takes an [`IdempotencyKey`] for callers without such a
//! guard: retried after `CommitUnknownResult`, it pushes nothing. [`remove_through`] is
//! idempotent by nature. Delivery is at least once, and [`mark_applied`] is the receiver's
//! guard: apply an entry in the same transaction only when it returns `true`.
//!
//! **Limits.** Payloads up to `RECORD_CHUNKS_MAX * CHUNK_BYTES` (700 kB); at most
//! [`PUSHES_PER_TRANSACTION_MAX`] pushes to one destination in one transaction (the user version
//! is 2 bytes); a peek returns at most [`LAYER_READ_ENTRIES_MAX`] entries.
//!
//! **Evolution.** A depth bound per destination (a region unreachable for long fails over
//! instead), and the standby's replication stream as one more destination.

use std::collections::BTreeMap;
use std::fmt;

use relay_proto::RegionId;

pub use crate::codec::IdempotencyKey;
use crate::codec::{decode_key, recall, remember};
use crate::engine::{RangeOptions, Transaction, Versionstamp};
use crate::error::StoreError;
use crate::limits::{CHUNK_BYTES, LAYER_READ_ENTRIES_MAX, RECORD_CHUNKS_MAX, VERSIONSTAMP_BYTES};
use crate::tuple::{Subspace, TupleVersionstamp, pack};

/// Most pushes to one destination in one transaction (the user version of the key's
/// versionstamp numbers them).
pub const PUSHES_PER_TRANSACTION_MAX: usize = u16::MAX as usize;

/// An entry's place in its destination's outbox: the versionstamp of the transaction that
/// pushed it, then its order among that transaction's pushes. Increasing in commit order, with
/// gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboxSeq(TupleVersionstamp);

impl OutboxSeq {
    /// Bytes of [`OutboxSeq::to_bytes`].
    pub const BYTES: usize = VERSIONSTAMP_BYTES + 2;

    /// The sequence as sent between regions: the versionstamp, then the user version.
    pub fn to_bytes(self) -> [u8; Self::BYTES] {
        let mut bytes = [0u8; Self::BYTES];
        bytes[..VERSIONSTAMP_BYTES].copy_from_slice(self.0.stamp.as_bytes());
        bytes[VERSIONSTAMP_BYTES..].copy_from_slice(&self.0.user_version.to_be_bytes());
        bytes
    }

    /// The store version of the commit that pushed the entry (its versionstamp's commit
    /// version).
    pub fn commit_version(&self) -> u64 {
        self.0.stamp.commit_version()
    }

    /// Reads [`OutboxSeq::to_bytes`]; `None` unless it is exactly that long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::BYTES {
            return None;
        }
        let stamp = Versionstamp::read_at(bytes, 0)?;
        let user_version = u16::from_be_bytes([bytes[VERSIONSTAMP_BYTES], bytes[Self::BYTES - 1]]);
        Some(OutboxSeq(TupleVersionstamp {
            stamp,
            user_version,
        }))
    }
}

impl fmt::Display for OutboxSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.0.stamp.commit_version(),
            self.0.stamp.batch_order(),
            self.0.user_version
        )
    }
}

/// The pushes of one transaction: it numbers them per destination. Make one per transaction
/// attempt (a retried body starts again from zero).
#[derive(Debug, Default)]
pub struct Pushes {
    next_user_version: BTreeMap<RegionId, usize>,
}

impl Pushes {
    /// No pushes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `payload` to the outbox of `destination`, after everything committed before
    /// this transaction and after this transaction's earlier pushes there. Reads nothing.
    pub fn push(
        &mut self,
        transaction: &Transaction,
        destination: RegionId,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        let next = self.next_user_version.entry(destination).or_insert(0);
        let user_version = u16::try_from(*next).map_err(|_| {
            StoreError::InvalidOptions(format!(
                "more than {PUSHES_PER_TRANSACTION_MAX} outbox pushes to region {destination} in one transaction"
            ))
        })?;
        *next += 1;
        write_entry(transaction, destination, user_version, payload)
    }
}

/// Pushes like [`Pushes::push`] (as the first push of its transaction to `destination`), once
/// per `idempotency` key: retried after its commit, it pushes nothing.
pub async fn push_once(
    transaction: &Transaction,
    destination: RegionId,
    payload: &[u8],
    idempotency: &IdempotencyKey,
) -> Result<(), StoreError> {
    if recall(transaction, "outbox_push", &destination, idempotency)
        .await?
        .is_some()
    {
        return Ok(());
    }
    Pushes::new().push(transaction, destination, payload)?;
    remember(transaction, "outbox_push", &destination, idempotency, &[])
}

/// The oldest `limit` entries waiting for `destination`, in order (at most
/// [`LAYER_READ_ENTRIES_MAX`]).
pub async fn peek(
    transaction: &Transaction,
    destination: RegionId,
    limit: usize,
) -> Result<Vec<(OutboxSeq, Vec<u8>)>, StoreError> {
    peek_entries(transaction, destination, None, limit, false).await
}

/// [`peek`] as a snapshot read, for a transaction that applies the entries and removes them
/// ([`remove_through`]) itself: pushes committing meanwhile do not conflict with it (they are
/// numbered after its read version, so after every entry it read, and stay).
pub async fn peek_snapshot(
    transaction: &Transaction,
    destination: RegionId,
    limit: usize,
) -> Result<Vec<(OutboxSeq, Vec<u8>)>, StoreError> {
    peek_entries(transaction, destination, None, limit, true).await
}

/// [`peek_snapshot`] from the entry after `after`: the next page of a transaction that reads
/// the outbox a few entries at a time.
pub async fn peek_snapshot_after(
    transaction: &Transaction,
    destination: RegionId,
    after: OutboxSeq,
    limit: usize,
) -> Result<Vec<(OutboxSeq, Vec<u8>)>, StoreError> {
    peek_entries(transaction, destination, Some(after), limit, true).await
}

async fn peek_entries(
    transaction: &Transaction,
    destination: RegionId,
    after: Option<OutboxSeq>,
    limit: usize,
    snapshot: bool,
) -> Result<Vec<(OutboxSeq, Vec<u8>)>, StoreError> {
    let pending = Outbox::new().pending(destination);
    let limit = limit.min(LAYER_READ_ENTRIES_MAX);
    let (mut begin, end) = pending.range();
    if let Some(after) = after {
        begin = pending.subspace(&(after.0,)).range().1;
    }
    let mut entries: Vec<(OutboxSeq, Vec<u8>)> = Vec::new();
    // One page of chunks at a time, no more keys than the entries asked for (an entry of one
    // chunk is one key): an entry's chunks are contiguous, so a page may end inside one, whose
    // remaining chunks the next page brings.
    let page_keys = limit.clamp(1, LAYER_READ_ENTRIES_MAX);
    // Whether the last key read ended its entry (a page that ends inside an entry is followed
    // by the next, even once `limit` entries have started).
    let mut entry_complete = true;
    while entries.len() < limit || !entry_complete {
        let options = RangeOptions {
            snapshot,
            ..RangeOptions::limit(page_keys)
        };
        let page = transaction.get_range(&begin, &end, options).await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        begin = crate::engine::key_after(last);
        let full_page = page.len() == page_keys;
        for (key, value) in page {
            let (stamp, index, count): (TupleVersionstamp, u32, u32) =
                decode_key(&pending, &key, "outbox entry key")?;
            if count == 0 || count as usize > RECORD_CHUNKS_MAX || index >= count {
                return Err(StoreError::corrupt(
                    "outbox entry key",
                    format!("chunk {index} of {count}"),
                ));
            }
            let seq = OutboxSeq(stamp);
            entry_complete = index + 1 == count;
            match entries.last_mut() {
                Some((last_seq, bytes)) if *last_seq == seq => bytes.extend_from_slice(&value),
                _ if index != 0 => {
                    return Err(StoreError::corrupt(
                        "outbox entry",
                        format!("entry {seq} starts at chunk {index}"),
                    ));
                }
                _ => {
                    if entries.len() == limit {
                        return Ok(entries);
                    }
                    entries.push((seq, value));
                }
            }
        }
        if !full_page {
            break;
        }
    }
    Ok(entries)
}

/// Removes every entry of `destination` up to and including `seq`.
pub fn remove_through(transaction: &Transaction, destination: RegionId, seq: OutboxSeq) {
    let pending = Outbox::new().pending(destination);
    let (begin, _) = pending.range();
    let (_, through) = pending.subspace(&(seq.0,)).range();
    transaction.clear_range(&begin, &through);
}

/// The destinations with entries waiting, in region order.
pub async fn destinations(transaction: &Transaction) -> Result<Vec<RegionId>, StoreError> {
    let outbox = Outbox::new();
    let (mut begin, end) = outbox.entries.range();
    let mut found = Vec::new();
    loop {
        let first = transaction
            .get_range(&begin, &end, RangeOptions::limit(1))
            .await?;
        let Some((key, _)) = first.first() else {
            return Ok(found);
        };
        let (destination, _, _, _): (RegionId, TupleVersionstamp, u32, u32) =
            decode_key(&outbox.entries, key, "outbox entry key")?;
        found.push(destination);
        // Skip the rest of this destination's entries.
        (_, begin) = outbox.pending(destination).range();
    }
}

/// Records that entry `seq` of the outbox of `origin` was applied here. Returns `true` the
/// first time only (for entries applied in order); apply the entry in the same transaction
/// when it does.
pub async fn mark_applied(
    transaction: &Transaction,
    origin: RegionId,
    seq: OutboxSeq,
) -> Result<bool, StoreError> {
    let key = Outbox::new().root.pack(&("applied", origin));
    let applied = match transaction.get(&key).await? {
        Some(bytes) => Some(
            OutboxSeq::from_bytes(&bytes)
                .ok_or_else(|| StoreError::corrupt("outbox applied", "not a sequence"))?,
        ),
        None => None,
    };
    if applied.is_some_and(|applied| seq <= applied) {
        return Ok(false);
    }
    transaction.set(&key, &seq.to_bytes())?;
    Ok(true)
}

/// Writes the chunks of one entry under an incomplete versionstamp with `user_version`.
fn write_entry(
    transaction: &Transaction,
    destination: RegionId,
    user_version: u16,
    payload: &[u8],
) -> Result<(), StoreError> {
    let count = payload.len().div_ceil(CHUNK_BYTES).max(1);
    if count > RECORD_CHUNKS_MAX {
        return Err(StoreError::ValueTooLarge {
            value_bytes: payload.len(),
        });
    }
    let pending = Outbox::new().pending(destination);
    let offset = TupleVersionstamp::stamp_offset(pending.bytes().len());
    let offset = u32::try_from(offset)
        .map_err(|_| StoreError::corrupt("outbox key", "prefix longer than 4 GB"))?;
    let stamp = TupleVersionstamp::incomplete(user_version);
    // `count <= RECORD_CHUNKS_MAX`, so it fits a u32.
    let count = count as u32;
    let chunks: Box<dyn Iterator<Item = &[u8]>> = if payload.is_empty() {
        Box::new(std::iter::once(payload))
    } else {
        Box::new(payload.chunks(CHUNK_BYTES))
    };
    for (index, chunk) in (0u32..).zip(chunks) {
        let mut key = pending.bytes().to_vec();
        key.extend_from_slice(&pack(&(stamp, index, count)));
        transaction.set_versionstamped_key(&key, offset, chunk)?;
    }
    Ok(())
}

struct Outbox {
    root: Subspace,
    entries: Subspace,
}

impl Outbox {
    fn new() -> Self {
        let root = Subspace::new(&("outbox",));
        let entries = root.subspace(&("entry",));
        Outbox { root, entries }
    }

    fn pending(&self, destination: RegionId) -> Subspace {
        self.entries.subspace(&(destination,))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temporary_database;

    #[tokio::test]
    async fn entries_are_ordered_per_destination_and_removed_through_a_sequence() {
        let (_folder, database) = temporary_database(None);
        let large = vec![7u8; 250_000];
        database
            .transact(|tx| {
                let large = large.clone();
                async move {
                    let mut pushes = Pushes::new();
                    pushes.push(&tx, RegionId(2), b"a")?;
                    pushes.push(&tx, RegionId(3), b"b")?;
                    pushes.push(&tx, RegionId(2), &large)?;
                    pushes.push(&tx, RegionId(2), b"c")?;
                    Ok(())
                }
            })
            .await
            .expect("push");

        let (waiting, head) = database
            .transact(|tx| async move {
                Ok((destinations(&tx).await?, peek(&tx, RegionId(2), 2).await?))
            })
            .await
            .expect("peek");
        assert_eq!(waiting, [RegionId(2), RegionId(3)]);
        let payloads: Vec<&[u8]> = head.iter().map(|(_, bytes)| bytes.as_slice()).collect();
        assert_eq!(payloads, [b"a".as_slice(), large.as_slice()]);
        assert!(head[0].0 < head[1].0, "in push order");

        let second = head[1].0;
        let (waiting, rest) = database
            .transact(|tx| async move {
                remove_through(&tx, RegionId(2), second);
                let b = peek(&tx, RegionId(3), 1).await?;
                remove_through(&tx, RegionId(3), b[0].0);
                Ok((destinations(&tx).await?, peek(&tx, RegionId(2), 10).await?))
            })
            .await
            .expect("remove");
        assert_eq!(waiting, [RegionId(2)]);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1, b"c");
        let c = rest[0].0;
        database
            .transact(|tx| async move {
                remove_through(&tx, RegionId(2), c);
                Pushes::new().push(&tx, RegionId(2), b"d")
            })
            .await
            .expect("push after removal");
        let after = database
            .transact(|tx| async move { peek(&tx, RegionId(2), 10).await })
            .await
            .expect("peek");
        assert_eq!(after.len(), 1);
        assert!(after[0].0 > c, "a later transaction's entry comes after");
        assert_eq!(
            OutboxSeq::from_bytes(&after[0].0.to_bytes()),
            Some(after[0].0)
        );
    }

    #[tokio::test]
    async fn a_few_entries_at_a_time_come_whole_and_in_order() {
        let (_folder, database) = temporary_database(None);
        // Entries of one, three and one chunks: pages of one or two keys end inside the large.
        let large = vec![7u8; 2 * CHUNK_BYTES + 10];
        database
            .transact(|tx| {
                let large = large.clone();
                async move {
                    let mut pushes = Pushes::new();
                    pushes.push(&tx, RegionId(2), b"a")?;
                    pushes.push(&tx, RegionId(2), &large)?;
                    pushes.push(&tx, RegionId(2), b"c")?;
                    Ok(())
                }
            })
            .await
            .expect("push");
        for page in 1..=3 {
            let read = database
                .transact(|tx| async move {
                    let mut read: Vec<(OutboxSeq, Vec<u8>)> = Vec::new();
                    loop {
                        let next = match read.last() {
                            None => peek_snapshot(&tx, RegionId(2), page).await?,
                            Some((after, _)) => {
                                peek_snapshot_after(&tx, RegionId(2), *after, page).await?
                            }
                        };
                        assert!(next.len() <= page);
                        if next.is_empty() {
                            return Ok(read);
                        }
                        read.extend(next);
                    }
                })
                .await
                .expect("peek");
            let payloads: Vec<&[u8]> = read.iter().map(|(_, bytes)| bytes.as_slice()).collect();
            assert_eq!(
                payloads,
                [b"a".as_slice(), large.as_slice(), b"c".as_slice()],
                "pages of {page}"
            );
        }
    }

    #[tokio::test]
    async fn a_keyed_push_happens_once() {
        let (_folder, database) = temporary_database(None);
        database
            .transact(|tx| async move {
                let key = crate::test_support::idempotency_key(1);
                push_once(&tx, RegionId(2), b"a", &key).await?;
                push_once(&tx, RegionId(2), b"a", &key).await?;
                push_once(&tx, RegionId(3), b"a", &key).await
            })
            .await
            .expect("pushes");
        database
            .transact(|tx| async move { Pushes::new().push(&tx, RegionId(2), b"b") })
            .await
            .expect("push");
        let pending = database
            .transact(|tx| async move { peek(&tx, RegionId(2), 10).await })
            .await
            .expect("peek");
        let payloads: Vec<&[u8]> = pending.iter().map(|(_, bytes)| bytes.as_slice()).collect();
        assert_eq!(payloads, [b"a".as_slice(), b"b".as_slice()]);
    }

    #[tokio::test]
    async fn an_origin_sequence_is_applied_once() {
        let (_folder, database) = temporary_database(None);
        let seq = |version: u64, user: u16| {
            OutboxSeq(TupleVersionstamp {
                stamp: Versionstamp::new(version, 0),
                user_version: user,
            })
        };
        let marks = database
            .transact(|tx| async move {
                Ok([
                    mark_applied(&tx, RegionId(5), seq(3, 0)).await?,
                    mark_applied(&tx, RegionId(5), seq(3, 0)).await?,
                    mark_applied(&tx, RegionId(5), seq(3, 1)).await?,
                    mark_applied(&tx, RegionId(6), seq(1, 0)).await?,
                    mark_applied(&tx, RegionId(5), seq(2, 9)).await?,
                    mark_applied(&tx, RegionId(5), seq(9, 0)).await?,
                ])
            })
            .await
            .expect("marks");
        assert_eq!(marks, [true, false, true, true, false, true]);
        assert_eq!(OutboxSeq::from_bytes(&[0; 3]), None);
    }
}
