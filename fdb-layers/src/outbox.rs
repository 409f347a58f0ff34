//! The outbox layer: what this region must deliver to other regions, in order per destination,
//! and the receiving side's record of what it already applied.
//!
//! **Challenge.** A region commits a change that another region must also see (a directory
//! change for the writer, a message for a remote member). The change is pushed to the outbox
//! in the same transaction, so it is sent if and only if it committed; a sender task peeks the
//! oldest entries of each destination, delivers them, and removes them once acknowledged. The
//! receiver applies each entry once although delivery is at least once.
//!
//! **Key layout** (subspace `("outbox",)`):
//! - `("entry", destination, seq, index, count)` → the payload, split across keys when large;
//! - `("last_seq", destination)` → the last sequence given for the destination (8 bytes LE);
//! - `("applied", origin)` → the highest sequence of `origin` applied here (8 bytes LE).
//!
//! Entries of one destination are contiguous and in sequence order, so peeking is one range
//! read and removal is one range clear. [`destinations`] skips from one destination to the next
//! with one-key range reads instead of scanning entries.
//!
//! **Conflicts.** A push reads `last_seq` (a read-modify-write counter, so sequences are gapless
//! and ordered): pushes to one destination serialize, pushes to different destinations do not
//! conflict. Removal is a blind range clear: it never conflicts with pushes. Marking an origin
//! sequence applied reads the origin's watermark, so two deliveries of one entry conflict and
//! only one applies it.
//!
//! **Idempotence.** [`push`] is not idempotent: callers push in the transaction whose change it
//! carries, under a guard checked in that transaction (the ack that removed the entry the
//! receipt is about, the chat log append that reported a new entry). [`push_once`] takes an
//! [`IdempotencyKey`] for callers without such a guard: retried after `CommitUnknownResult`, it
//! returns its first sequence and pushes nothing. [`remove_through`] is idempotent by nature.
//! Delivery is at least once, and [`mark_applied`] is the receiver's guard: apply an entry in
//! the same transaction only when it returns `true`, so each entry is applied exactly once.
//!
//! **Limits.** Payloads up to `RECORD_CHUNKS_MAX * CHUNK_BYTES` (400 kB); a peek returns at most
//! [`LAYER_READ_ENTRIES_MAX`] entries. The watermark
//! assumes a destination applies an origin's entries in order, which the sender guarantees by
//! delivering from the head of the outbox.
//!
//! **Evolution.** A depth bound per destination (a region unreachable for long fails over
//! instead), and the standby's replication stream as one more destination.

use relay_proto::RegionId;

pub use crate::codec::IdempotencyKey;
use crate::codec::{
    decode_key, decode_u64, encode_u64, read_chunked_range, read_u64, recall, remember, set_chunked,
};
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::limits::LAYER_READ_ENTRIES_MAX;
use crate::tuple::Subspace;

/// Appends `payload` to the outbox of `destination` and returns its sequence number (from 1).
pub async fn push(
    transaction: &Transaction,
    destination: RegionId,
    payload: &[u8],
) -> Result<u64, StoreError> {
    let outbox = Outbox::new();
    let last_key = outbox.root.pack(&("last_seq", destination));
    let seq = read_u64(transaction, &last_key, "outbox last_seq").await? + 1;
    transaction.set(&last_key, &encode_u64(seq))?;
    set_chunked(
        transaction,
        &outbox.entries.subspace(&(destination,)),
        seq,
        payload,
    )?;
    Ok(seq)
}

/// Pushes like [`push`], once per `idempotency` key: retried after its commit, it returns the
/// sequence it was given and pushes nothing.
pub async fn push_once(
    transaction: &Transaction,
    destination: RegionId,
    payload: &[u8],
    idempotency: &IdempotencyKey,
) -> Result<u64, StoreError> {
    if let Some(stored) = recall(transaction, "outbox_push", &destination, idempotency).await? {
        return decode_u64(&stored, "outbox push result");
    }
    let seq = push(transaction, destination, payload).await?;
    remember(
        transaction,
        "outbox_push",
        &destination,
        idempotency,
        &encode_u64(seq),
    )?;
    Ok(seq)
}

/// The oldest `limit` entries waiting for `destination`, in order (at most
/// [`LAYER_READ_ENTRIES_MAX`]).
pub async fn peek(
    transaction: &Transaction,
    destination: RegionId,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let outbox = Outbox::new();
    let pending = outbox.entries.subspace(&(destination,));
    let (begin, _) = pending.range();
    let limit = limit.min(LAYER_READ_ENTRIES_MAX);
    read_chunked_range(transaction, &pending, &begin, limit, "outbox entry").await
}

/// Removes every entry of `destination` up to and including `seq`.
pub fn remove_through(transaction: &Transaction, destination: RegionId, seq: u64) {
    let outbox = Outbox::new();
    let pending = outbox.entries.subspace(&(destination,));
    let (begin, end) = pending.range();
    match seq.checked_add(1) {
        Some(next) => transaction.clear_range(&begin, &pending.pack(&(next,))),
        None => transaction.clear_range(&begin, &end),
    }
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
        let (destination, _, _, _): (RegionId, u64, u32, u32) =
            decode_key(&outbox.entries, key, "outbox entry key")?;
        found.push(destination);
        // Skip the rest of this destination's entries.
        (_, begin) = outbox.entries.subspace(&(destination,)).range();
    }
}

/// Records that entry `origin_seq` of the outbox of `origin` was applied here. Returns `true`
/// the first time only; apply the entry in the same transaction when it does.
pub async fn mark_applied(
    transaction: &Transaction,
    origin: RegionId,
    origin_seq: u64,
) -> Result<bool, StoreError> {
    let outbox = Outbox::new();
    let key = outbox.root.pack(&("applied", origin));
    let applied = read_u64(transaction, &key, "outbox applied").await?;
    if origin_seq <= applied {
        return Ok(false);
    }
    if origin_seq != applied + 1 {
        tracing::warn!(%origin, origin_seq, applied, "outbox entries applied out of order");
    }
    transaction.set(&key, &encode_u64(origin_seq))?;
    Ok(true)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temporary_database;

    #[tokio::test]
    async fn entries_are_ordered_per_destination_and_removed_through_a_sequence() {
        let (_folder, database) = temporary_database(None);
        let large = vec![7u8; 250_000];
        let seqs = database
            .transact(|tx| {
                let large = large.clone();
                async move {
                    Ok([
                        push(&tx, RegionId(2), b"a").await?,
                        push(&tx, RegionId(3), b"b").await?,
                        push(&tx, RegionId(2), &large).await?,
                        push(&tx, RegionId(2), b"c").await?,
                    ])
                }
            })
            .await
            .expect("push");
        assert_eq!(seqs, [1, 1, 2, 3]);

        let (waiting, head) = database
            .transact(|tx| async move {
                Ok((destinations(&tx).await?, peek(&tx, RegionId(2), 2).await?))
            })
            .await
            .expect("peek");
        assert_eq!(waiting, [RegionId(2), RegionId(3)]);
        assert_eq!(head, [(1, b"a".to_vec()), (2, large)]);

        let (waiting, rest) = database
            .transact(|tx| async move {
                remove_through(&tx, RegionId(2), 2);
                remove_through(&tx, RegionId(3), 1);
                Ok((destinations(&tx).await?, peek(&tx, RegionId(2), 10).await?))
            })
            .await
            .expect("remove");
        assert_eq!(waiting, [RegionId(2)]);
        assert_eq!(rest, [(3, b"c".to_vec())]);
        let next = database
            .transact(|tx| async move {
                remove_through(&tx, RegionId(2), u64::MAX);
                push(&tx, RegionId(2), b"d").await
            })
            .await
            .expect("push after removal");
        assert_eq!(next, 4, "sequences continue after removal");
    }

    #[tokio::test]
    async fn a_keyed_push_happens_once() {
        let (_folder, database) = temporary_database(None);
        let seqs = database
            .transact(|tx| async move {
                let key = crate::test_support::idempotency_key(1);
                Ok([
                    push_once(&tx, RegionId(2), b"a", &key).await?,
                    push_once(&tx, RegionId(2), b"a", &key).await?,
                    push_once(&tx, RegionId(3), b"a", &key).await?,
                    push(&tx, RegionId(2), b"b").await?,
                ])
            })
            .await
            .expect("pushes");
        assert_eq!(seqs, [1, 1, 1, 2]);
        let pending = database
            .transact(|tx| async move { peek(&tx, RegionId(2), 10).await })
            .await
            .expect("peek");
        assert_eq!(pending, [(1, b"a".to_vec()), (2, b"b".to_vec())]);
    }

    #[tokio::test]
    async fn an_origin_sequence_is_applied_once() {
        let (_folder, database) = temporary_database(None);
        let marks = database
            .transact(|tx| async move {
                Ok([
                    mark_applied(&tx, RegionId(5), 1).await?,
                    mark_applied(&tx, RegionId(5), 1).await?,
                    mark_applied(&tx, RegionId(5), 2).await?,
                    mark_applied(&tx, RegionId(6), 1).await?,
                    mark_applied(&tx, RegionId(5), 2).await?,
                ])
            })
            .await
            .expect("marks");
        assert_eq!(marks, [true, false, true, true, false]);
    }
}
