//! Encodings the layers share: fixed-width counters, prost records, keys read back from the
//! store, and records larger than one value split across consecutive keys.

use prost::Message;

use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::limits::{CHUNK_BYTES, RECORD_CHUNKS_MAX};
use crate::tuple::{Subspace, TupleDecode};

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

/// Writes `bytes` as record `id` of `parent`, split across keys `(id, index, count)` of at most
/// [`CHUNK_BYTES`] each, replacing whatever record `id` held.
pub(crate) fn set_chunked(
    transaction: &Transaction,
    parent: &Subspace,
    id: u64,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let count = bytes.len().div_ceil(CHUNK_BYTES).max(1);
    if count > RECORD_CHUNKS_MAX {
        return Err(StoreError::ValueTooLarge {
            value_bytes: bytes.len(),
        });
    }
    let record = parent.subspace(&(id,));
    let (begin, end) = record.range();
    transaction.clear_range(&begin, &end);
    // `count <= RECORD_CHUNKS_MAX`, so the casts below are lossless.
    let count = count as u32;
    if bytes.is_empty() {
        return transaction.set(&record.pack(&(0u32, count)), &[]);
    }
    for (index, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
        transaction.set(&record.pack(&(index as u32, count)), chunk)?;
    }
    Ok(())
}

/// Reads record `id` of `parent` written by [`set_chunked`].
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
