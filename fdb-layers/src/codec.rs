//! Encodings the layers share: fixed-width counters, prost records, keys read back from the
//! store, records larger than one value split across consecutive keys, and idempotency records.
//!
//! **Idempotency records.** [`crate::Database::transact`] runs a transaction again after
//! `CommitUnknownResult`, although the first attempt may have committed. A layer call that is
//! not idempotent by nature takes an [`IdempotencyKey`]: before changing anything it looks up
//! `("idempotency", issued_at_ms, nonce, operation, scope…)`, and if a record is there it
//! answers with the stored result and writes nothing; otherwise it does its work and writes the
//! result under that key in the same transaction. The lookup is a read with a conflict, so two
//! concurrent attempts with one key conflict and the second sees the first's record. Calls that
//! are idempotent by nature (a chat log append deduplicated by client message id, an ack of a
//! missing entry, a receipt that only moves forward) take no key.
//!
//! Records expire: keys sort by their issue time first, so every write of a record also clears,
//! with one blind range clear, the records issued more than [`IDEMPOTENCY_RECORD_MS_MAX`] before
//! its own key. The clear touches only keys no live attempt reads, so it conflicts with nothing.
//! Issue times must come from the region's clock (never from a peer), so that one skewed key
//! cannot clear live records; a key is good for [`IDEMPOTENCY_RECORD_MS_MAX`] after its issue,
//! far longer than a transaction's retries (seconds).

use prost::Message;

use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
pub use crate::limits::IDEMPOTENCY_RECORD_MS_MAX;
use crate::limits::{CHUNK_BYTES, RECORD_CHUNKS_MAX};
use crate::tuple::{Subspace, TupleDecode, TupleEncode, TupleError};

/// The caller's name for one logical request, so that a transaction retried after
/// `CommitUnknownResult` applies it once. Issue one per request, outside the transaction
/// closure, with the region's clock and a nonce unique within the issuing process's lifetime
/// and beyond (a boot nonce and a counter, or random bytes). A layer keeps the result of a
/// keyed call for `IDEMPOTENCY_RECORD_MS_MAX` (24 hours) after the key's issue time; later
/// keyed writes clear it then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdempotencyKey {
    issued_at_ms: u64,
    nonce: [u8; 16],
}

impl IdempotencyKey {
    /// A key issued at `issued_at_ms` (milliseconds since the Unix epoch) with a unique `nonce`.
    pub const fn new(issued_at_ms: u64, nonce: [u8; 16]) -> Self {
        IdempotencyKey {
            issued_at_ms,
            nonce,
        }
    }

    /// When the key was issued, in milliseconds since the Unix epoch.
    pub const fn issued_at_ms(&self) -> u64 {
        self.issued_at_ms
    }

    /// The key's unique part.
    pub const fn nonce(&self) -> [u8; 16] {
        self.nonce
    }
}

/// An idempotency key packs as its issue time then its nonce, so records sort by age.
impl TupleEncode for IdempotencyKey {
    fn encode_into(&self, out: &mut Vec<u8>) {
        self.issued_at_ms.encode_into(out);
        self.nonce.encode_into(out);
    }
}

impl TupleDecode for IdempotencyKey {
    fn decode_from(input: &mut &[u8]) -> Result<Self, TupleError> {
        Ok(IdempotencyKey {
            issued_at_ms: u64::decode_from(input)?,
            nonce: <[u8; 16]>::decode_from(input)?,
        })
    }
}

/// The stored result of the call `operation` on `scope` made with `key`, if an earlier attempt
/// committed one. Reads with a conflict, so concurrent attempts with one key serialize.
pub(crate) async fn recall<S: TupleEncode + ?Sized>(
    transaction: &Transaction,
    operation: &str,
    scope: &S,
    key: &IdempotencyKey,
) -> Result<Option<Vec<u8>>, StoreError> {
    transaction
        .get(&idempotency_record_key(operation, scope, key))
        .await
}

/// Stores `result` as the outcome of the call `operation` on `scope` made with `key`, and
/// clears the records that have expired relative to `key`'s issue time.
pub(crate) fn remember<S: TupleEncode + ?Sized>(
    transaction: &Transaction,
    operation: &str,
    scope: &S,
    key: &IdempotencyKey,
    result: &[u8],
) -> Result<(), StoreError> {
    transaction.set(&idempotency_record_key(operation, scope, key), result)?;
    let cutoff_ms = key.issued_at_ms.saturating_sub(IDEMPOTENCY_RECORD_MS_MAX);
    if cutoff_ms > 0 {
        let records = idempotency_subspace();
        let (begin, _) = records.range();
        transaction.clear_range(&begin, &records.pack(&(cutoff_ms,)));
    }
    Ok(())
}

fn idempotency_subspace() -> Subspace {
    Subspace::new(&("idempotency",))
}

fn idempotency_record_key<S: TupleEncode + ?Sized>(
    operation: &str,
    scope: &S,
    key: &IdempotencyKey,
) -> Vec<u8> {
    let mut record = idempotency_subspace().pack(&(key, operation));
    scope.encode_into(&mut record);
    record
}

/// A counter or sequence number as stored: 8 bytes little-endian, like FDB's atomic `ADD`.
pub(crate) fn encode_u64(value: u64) -> [u8; 8] {
    value.to_le_bytes()
}

/// Decodes a value written by [`encode_u64`].
pub(crate) fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64, StoreError> {
    let bytes = <[u8; 8]>::try_from(bytes)
        .map_err(|_| StoreError::corrupt(what, format!("{} bytes, not 8", bytes.len())))?;
    Ok(u64::from_le_bytes(bytes))
}

/// Reads a counter with a read conflict; a missing counter is 0.
pub(crate) async fn read_u64(
    transaction: &Transaction,
    key: &[u8],
    what: &'static str,
) -> Result<u64, StoreError> {
    match transaction.get(key).await? {
        Some(bytes) => decode_u64(&bytes, what),
        None => Ok(0),
    }
}

/// Decodes a counter kept with atomic adds (8 bytes, signed little-endian), which is never
/// negative.
pub(crate) fn decode_count(bytes: &[u8], what: &'static str) -> Result<u64, StoreError> {
    let bytes = <[u8; 8]>::try_from(bytes)
        .map_err(|_| StoreError::corrupt(what, format!("{} bytes, not 8", bytes.len())))?;
    let count = i64::from_le_bytes(bytes);
    u64::try_from(count).map_err(|_| StoreError::corrupt(what, format!("negative count {count}")))
}

/// Reads a counter kept with atomic adds; a missing counter is 0. A `snapshot` read adds no
/// read conflict, so concurrent adds do not make this transaction retry.
pub(crate) async fn read_count(
    transaction: &Transaction,
    key: &[u8],
    snapshot: bool,
    what: &'static str,
) -> Result<u64, StoreError> {
    let value = if snapshot {
        transaction.snapshot_get(key).await?
    } else {
        transaction.get(key).await?
    };
    match value {
        Some(bytes) => decode_count(&bytes, what),
        None => Ok(0),
    }
}

/// Adds one to the counter at `key` (read with a conflict) and returns the new value.
pub(crate) async fn increment(
    transaction: &Transaction,
    key: &[u8],
    what: &'static str,
) -> Result<u64, StoreError> {
    let next = read_u64(transaction, key, what)
        .await?
        .checked_add(1)
        .ok_or_else(|| StoreError::corrupt(what, "counter at u64::MAX"))?;
    transaction.set(key, &encode_u64(next))?;
    Ok(next)
}

/// Decodes a prost record read from the store.
pub(crate) fn decode_record<M: Message + Default>(
    bytes: &[u8],
    what: &'static str,
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|error| StoreError::corrupt(what, error))
}

/// Decodes the tuple of a key read from `subspace`.
pub(crate) fn decode_key<T: TupleDecode>(
    subspace: &Subspace,
    key: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    subspace
        .unpack(key)
        .map_err(|error| StoreError::corrupt(what, error))
}

/// Writes `bytes` as a new record `id` of `parent`, split across keys `(id, index, count)` of at
/// most [`CHUNK_BYTES`] each, without a range clear of what record `id` held (which would cost a
/// range deletion in the store and a remembered clear in the conflict history on every write).
///
/// Only for an id that has no keys at the transaction's read version and that no concurrent
/// transaction can write without conflicting with this one: typically one past a counter the
/// transaction read with a conflict (not a snapshot read), where every writer of a record also
/// raises the counter to its id in the same transaction. Then nothing is there to replace, and
/// a concurrent writer of the same id also wrote the counter, so one of the two commits is
/// refused. A record that may be overwritten needs a range clear of `(id,)` first: an older
/// record may have more chunks, or another count in its keys.
pub(crate) fn insert_chunked(
    transaction: &Transaction,
    parent: &Subspace,
    id: u64,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let count = chunk_count(bytes)?;
    write_chunks(transaction, parent, id, count, bytes)
}

/// Writes `bytes` as record `id` of `parent` in place of what the record held: a range clear
/// of `(id,)` first (the older record may have more chunks, or another count in its keys), then
/// [`insert_chunked`]'s keys. For the rare rewrite of a stored record; a new record is cheaper
/// with [`insert_chunked`].
pub(crate) fn replace_chunked(
    transaction: &Transaction,
    parent: &Subspace,
    id: u64,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let (begin, end) = parent.subspace(&(id,)).range();
    transaction.clear_range(&begin, &end);
    insert_chunked(transaction, parent, id, bytes)
}

/// The chunks `bytes` takes, at most [`RECORD_CHUNKS_MAX`].
fn chunk_count(bytes: &[u8]) -> Result<u32, StoreError> {
    let count = bytes.len().div_ceil(CHUNK_BYTES).max(1);
    if count > RECORD_CHUNKS_MAX {
        return Err(StoreError::ValueTooLarge {
            value_bytes: bytes.len(),
        });
    }
    // `count <= RECORD_CHUNKS_MAX`, so the cast is lossless.
    Ok(count as u32)
}

/// Sets the `count` chunk keys of record `id` of `parent`.
fn write_chunks(
    transaction: &Transaction,
    parent: &Subspace,
    id: u64,
    count: u32,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let record = parent.subspace(&(id,));
    if bytes.is_empty() {
        return transaction.set(&record.pack(&(0u32, count)), &[]);
    }
    for (index, chunk) in (0u32..).zip(bytes.chunks(CHUNK_BYTES)) {
        transaction.set(&record.pack(&(index, count)), chunk)?;
    }
    Ok(())
}

/// Reads record `id` of `parent` written by [`insert_chunked`].
pub(crate) async fn read_chunked(
    transaction: &Transaction,
    parent: &Subspace,
    id: u64,
    what: &'static str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let (begin, end) = parent.subspace(&(id,)).range();
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::limit(RECORD_CHUNKS_MAX))
        .await?;
    let mut records = group_chunks(parent, rows, what)?;
    match (records.pop(), records.is_empty()) {
        (None, _) => Ok(None),
        (Some((found, bytes)), true) if found == id => Ok(Some(bytes)),
        (Some((found, _)), _) => Err(StoreError::corrupt(
            what,
            format!("record {found} under the key of record {id}"),
        )),
    }
}

/// Reads up to `limit` whole records of `parent` from `begin` (a key of `parent`) to the end of
/// `parent`, in id order.
pub(crate) async fn read_chunked_range(
    transaction: &Transaction,
    parent: &Subspace,
    begin: &[u8],
    limit: usize,
    what: &'static str,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let (_, end) = parent.range();
    // Every record has at most RECORD_CHUNKS_MAX keys, so this many keys hold the first
    // `limit` records whole; only a record after them can be cut by the limit.
    let keys_limit = limit.saturating_mul(RECORD_CHUNKS_MAX);
    let rows = transaction
        .get_range(begin, &end, RangeOptions::limit(keys_limit))
        .await?;
    let cut = rows.len() == keys_limit;
    let mut records = group_chunks_allowing_cut(parent, rows, cut, what)?;
    records.truncate(limit);
    Ok(records)
}

/// The whole records of `parent` with ids from `first` to `last` (both included), in id order:
/// a range read bounded by the ids, so it reads (and conflicts on) no record after `last`.
pub(crate) async fn read_chunked_between(
    transaction: &Transaction,
    parent: &Subspace,
    first: u64,
    last: u64,
    what: &'static str,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    if first > last {
        return Ok(Vec::new());
    }
    let begin = parent.pack(&(first,));
    let end = match last.checked_add(1) {
        Some(after) => parent.pack(&(after,)),
        None => parent.range().1,
    };
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::default())
        .await?;
    group_chunks(parent, rows, what)
}

/// Joins rows of `parent` (in key order) into whole records.
fn group_chunks(
    parent: &Subspace,
    rows: Vec<(Vec<u8>, Vec<u8>)>,
    what: &'static str,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    group_chunks_allowing_cut(parent, rows, false, what)
}

/// Joins rows of `parent` into whole records; when `cut`, the last record may be incomplete
/// and is dropped.
fn group_chunks_allowing_cut(
    parent: &Subspace,
    rows: Vec<(Vec<u8>, Vec<u8>)>,
    cut: bool,
    what: &'static str,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let mut records = Vec::new();
    // The record being joined: its id, its chunk count, the next index and the bytes so far.
    let mut open: Option<(u64, u32, u32, Vec<u8>)> = None;
    for (key, value) in rows {
        let (id, index, count): (u64, u32, u32) = decode_key(parent, &key, what)?;
        let (open_id, open_count, next_index, mut bytes) = match open.take() {
            Some(record) => record,
            None if index == 0 => (id, count, 0, Vec::new()),
            None => {
                return Err(StoreError::corrupt(
                    what,
                    format!("record {id} lacks chunk 0"),
                ));
            }
        };
        if (id, index, count) != (open_id, next_index, open_count) {
            return Err(StoreError::corrupt(
                what,
                format!("record {open_id}: chunk {index} of {count} out of place"),
            ));
        }
        bytes.extend_from_slice(&value);
        if index + 1 == count {
            records.push((id, bytes));
        } else {
            open = Some((id, count, index + 1, bytes));
        }
    }
    match open {
        Some((id, ..)) if !cut => Err(StoreError::corrupt(
            what,
            format!("record {id} is missing chunks"),
        )),
        _ => Ok(records),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temporary_database;

    #[tokio::test]
    async fn records_answer_retries_and_expire_behind_newer_keys() {
        let (_folder, database) = temporary_database(None);
        let old = IdempotencyKey::new(1_000, [1; 16]);
        let young = IdempotencyKey::new(1_000 + IDEMPOTENCY_RECORD_MS_MAX, [2; 16]);
        let later = IdempotencyKey::new(1_001 + IDEMPOTENCY_RECORD_MS_MAX, [3; 16]);
        let recalled = database
            .transact(|tx| async move {
                remember(&tx, "op", &(7u64,), &old, b"first")?;
                Ok([
                    recall(&tx, "op", &(7u64,), &old).await?,
                    recall(&tx, "op", &(8u64,), &old).await?,
                    recall(&tx, "other", &(7u64,), &old).await?,
                ])
            })
            .await
            .expect("remember");
        assert_eq!(recalled, [Some(b"first".to_vec()), None, None]);
        // A key issued exactly the retention later keeps the old record; one a millisecond
        // later clears it.
        let kept = database
            .transact(|tx| async move {
                remember(&tx, "op", &(), &young, b"young")?;
                recall(&tx, "op", &(7u64,), &old).await
            })
            .await
            .expect("young");
        assert_eq!(kept, Some(b"first".to_vec()));
        let (expired, live) = database
            .transact(|tx| async move {
                remember(&tx, "op", &(), &later, b"later")?;
                Ok((
                    recall(&tx, "op", &(7u64,), &old).await?,
                    recall(&tx, "op", &(), &young).await?,
                ))
            })
            .await
            .expect("later");
        assert_eq!((expired, live), (None, Some(b"young".to_vec())));
    }

    #[tokio::test]
    async fn insert_chunked_reads_back_whole_and_clears_nothing() {
        let (_folder, database) = temporary_database(None);
        let parent = Subspace::new(&("records",));
        let long = vec![7u8; 2 * CHUNK_BYTES + 1];
        let (stored, clears) = database
            .transact(|tx| {
                let (parent, long) = (parent.clone(), long.clone());
                async move {
                    insert_chunked(&tx, &parent, 1, &long)?;
                    let clears = tx.buffered_range_clears();
                    Ok((read_chunked(&tx, &parent, 1, "record").await?, clears))
                }
            })
            .await
            .expect("insert");
        assert_eq!((stored, clears), (Some(long), Some(0)));
    }

    #[test]
    fn keys_round_trip_and_sort_by_issue_time() {
        let early = IdempotencyKey::new(5, [0xff; 16]);
        let late = IdempotencyKey::new(6, [0; 16]);
        assert!(crate::tuple::pack(&early) < crate::tuple::pack(&late));
        assert_eq!(crate::tuple::unpack(&crate::tuple::pack(&late)), Ok(late));
        assert_eq!((late.issued_at_ms(), late.nonce()), (6, [0; 16]));
    }
}
