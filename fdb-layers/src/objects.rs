//! The objects layer: whole byte objects (a region's blob units) kept in the store itself, so a
//! standby holds them with every commit that names them, and a full copy carries them. Regions
//! with a standby keep their blobs here instead of local files, which a standby never sees.
//!
//! **Challenge.** Store objects of up to [`OBJECT_BYTES_MAX`] under a path (`<blob id>/<unit>`),
//! read one back whole, delete it, and list the objects under a path prefix in path order, in
//! bounded pages.
//!
//! **Key layout** (subspace `("objects",)`):
//! - `("meta",)` followed by the path's UTF-8 bytes, raw (not a tuple element, so a path
//!   prefix is a key prefix and listing is one range read) → the object's size and when it was
//!   written (16 bytes: two u64 LE);
//! - `("chunk", path, index)` → the object's bytes from `index * OBJECT_CHUNK_BYTES`, at most
//!   [`OBJECT_CHUNK_BYTES`] each (a value may hold 100 kB).
//!
//! **Conflicts.** A put or delete writes only its own path's keys; a get reads them. Objects of
//! different paths never conflict; a list conflicts only with puts and deletes under its
//! prefix (it is a snapshot read: listing is for sweeps, which tolerate a stale page).
//!
//! **Idempotence.** A put overwrites (clearing the old chunks first), a delete of a missing
//! object changes nothing: both may run twice.
//!
//! **Limits.** An object is at most [`OBJECT_BYTES_MAX`] (4 MiB: 64 chunks, one transaction far
//! below 10 MB); a path at most [`OBJECT_PATH_BYTES_MAX`]; a list page at most
//! [`LAYER_READ_ENTRIES_MAX`].
//!
//! **Evolution.** Larger objects would span transactions (an incomplete mark until the last
//! chunk, as a standby's full copy does).

use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::limits::LAYER_READ_ENTRIES_MAX;
pub use crate::limits::{OBJECT_BYTES_MAX, OBJECT_CHUNK_BYTES, OBJECT_PATH_BYTES_MAX};
use crate::tuple::Subspace;

/// What the store knows of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its path.
    pub path: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub written_ms: u64,
}

/// The layer's subspaces.
struct Objects {
    meta: Subspace,
    chunks: Subspace,
}

impl Objects {
    fn new() -> Self {
        let root = Subspace::new(&("objects",));
        Objects {
            meta: root.subspace(&("meta",)),
            chunks: root.subspace(&("chunk",)),
        }
    }

    fn meta_key(&self, path: &str) -> Vec<u8> {
        let mut key = self.meta.bytes().to_vec();
        key.extend_from_slice(path.as_bytes());
        key
    }

    fn chunk_range(&self, path: &str) -> (Vec<u8>, Vec<u8>) {
        self.chunks.subspace(&(path,)).range()
    }
}

/// Why an object cannot be stored, if it cannot: a path longer than [`OBJECT_PATH_BYTES_MAX`]
/// or more bytes than [`OBJECT_BYTES_MAX`]. Callers check first; the layer's functions refuse
/// the same with [`StoreError::InvalidOptions`].
pub fn refusal(path: &str, size_bytes: usize) -> Option<String> {
    if path.len() > OBJECT_PATH_BYTES_MAX {
        return Some(format!(
            "an object's path is at most {OBJECT_PATH_BYTES_MAX} bytes, not {}",
            path.len()
        ));
    }
    if size_bytes > OBJECT_BYTES_MAX {
        return Some(format!(
            "an object in the store is at most {OBJECT_BYTES_MAX} bytes, not {size_bytes}"
        ));
    }
    None
}

fn check(path: &str, size_bytes: usize) -> Result<(), StoreError> {
    match refusal(path, size_bytes) {
        Some(refusal) => Err(StoreError::InvalidOptions(refusal)),
        None => Ok(()),
    }
}

fn check_path(path: &str) -> Result<(), StoreError> {
    check(path, 0)
}

/// Writes `bytes` as the object at `path` (replacing one there), written at `now_ms`.
pub async fn put(
    transaction: &Transaction,
    path: &str,
    bytes: &[u8],
    now_ms: u64,
) -> Result<(), StoreError> {
    check(path, bytes.len())?;
    let objects = Objects::new();
    let (begin, end) = objects.chunk_range(path);
    transaction.clear_range(&begin, &end);
    for (index, chunk) in bytes.chunks(OBJECT_CHUNK_BYTES).enumerate() {
        transaction.set(&objects.chunks.pack(&(path, index as u64)), chunk)?;
    }
    let mut meta = Vec::with_capacity(16);
    meta.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    meta.extend_from_slice(&now_ms.to_le_bytes());
    transaction.set(&objects.meta_key(path), &meta)
}

fn decode_meta(path: String, value: &[u8]) -> Result<ObjectInfo, StoreError> {
    let corrupt = || StoreError::corrupt("object meta", format!("{} bytes", value.len()));
    let size = value.get(..8).ok_or_else(corrupt)?;
    let written = value.get(8..16).ok_or_else(corrupt)?;
    Ok(ObjectInfo {
        path,
        size_bytes: u64::from_le_bytes(size.try_into().map_err(|_| corrupt())?),
        written_ms: u64::from_le_bytes(written.try_into().map_err(|_| corrupt())?),
    })
}

/// What the store knows of the object at `path`, if there is one.
pub async fn info(transaction: &Transaction, path: &str) -> Result<Option<ObjectInfo>, StoreError> {
    check_path(path)?;
    let objects = Objects::new();
    match transaction.get(&objects.meta_key(path)).await? {
        Some(value) => decode_meta(path.to_owned(), &value).map(Some),
        None => Ok(None),
    }
}

/// The object at `path` and its bytes, if there is one. Chunks that do not add up to its size
/// are [`StoreError::Corrupt`].
pub async fn get(
    transaction: &Transaction,
    path: &str,
) -> Result<Option<(ObjectInfo, Vec<u8>)>, StoreError> {
    let Some(info) = info(transaction, path).await? else {
        return Ok(None);
    };
    let objects = Objects::new();
    let (begin, end) = objects.chunk_range(path);
    let chunks_max = OBJECT_BYTES_MAX.div_ceil(OBJECT_CHUNK_BYTES);
    let chunks = transaction
        .get_range(&begin, &end, RangeOptions::limit(chunks_max + 1))
        .await?;
    let mut bytes = Vec::with_capacity(usize::try_from(info.size_bytes).unwrap_or(0));
    for (_, chunk) in chunks {
        bytes.extend_from_slice(&chunk);
    }
    if bytes.len() as u64 != info.size_bytes {
        return Err(StoreError::corrupt(
            "object",
            format!(
                "{path}: {} bytes of chunks, {} recorded",
                bytes.len(),
                info.size_bytes
            ),
        ));
    }
    Ok(Some((info, bytes)))
}

/// Deletes the object at `path` (nothing if there is none).
pub fn delete(transaction: &Transaction, path: &str) -> Result<(), StoreError> {
    check_path(path)?;
    let objects = Objects::new();
    let (begin, end) = objects.chunk_range(path);
    transaction.clear_range(&begin, &end);
    transaction.clear(&objects.meta_key(path));
    Ok(())
}

/// The objects whose path starts with `prefix`, in path order, after the path `after` (from the
/// first with `None`): at most `limit` (and [`LAYER_READ_ENTRIES_MAX`]), and whether more follow.
/// A snapshot read.
pub async fn list(
    transaction: &Transaction,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<ObjectInfo>, bool), StoreError> {
    check_path(prefix)?;
    let objects = Objects::new();
    let start = objects.meta_key(prefix);
    let mut end = start.clone();
    end.push(0xFF);
    let begin = match after {
        Some(after) => {
            let mut key = objects.meta_key(after);
            key.push(0);
            key.max(start)
        }
        None => start,
    };
    let wanted = limit.clamp(1, LAYER_READ_ENTRIES_MAX);
    let entries = transaction
        .get_range(
            &begin,
            &end,
            RangeOptions {
                limit: Some(wanted + 1),
                snapshot: true,
                ..RangeOptions::default()
            },
        )
        .await?;
    let more = entries.len() > wanted;
    let meta_prefix = objects.meta.bytes().len();
    let mut found = Vec::with_capacity(entries.len().min(wanted));
    for (key, value) in entries.into_iter().take(wanted) {
        let path = String::from_utf8(key[meta_prefix..].to_vec())
            .map_err(|_| StoreError::corrupt("object path", "not UTF-8"))?;
        found.push(decode_meta(path, &value)?);
    }
    Ok((found, more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Database, MemoryOptions};

    fn database() -> Database {
        Database::memory(MemoryOptions::default()).expect("opens")
    }

    async fn read(database: &Database, path: &'static str) -> Option<(ObjectInfo, Vec<u8>)> {
        database
            .transact(|tx| async move { get(&tx, path).await })
            .await
            .expect("reads")
    }

    #[tokio::test]
    async fn an_object_reads_back_whole_and_is_replaced_and_deleted() {
        let database = database();
        let big: Vec<u8> = (0..OBJECT_CHUNK_BYTES * 3 + 17).map(|i| i as u8).collect();
        let stored = big.clone();
        database
            .transact(|tx| {
                let stored = stored.clone();
                async move { put(&tx, "ab/0", &stored, 5).await }
            })
            .await
            .expect("puts");
        let (info, bytes) = read(&database, "ab/0").await.expect("an object");
        assert_eq!((info.size_bytes, info.written_ms), (big.len() as u64, 5));
        assert_eq!(bytes, big);
        // A shorter object in its place leaves none of the old chunks.
        database
            .transact(|tx| async move { put(&tx, "ab/0", b"short", 6).await })
            .await
            .expect("puts");
        let (_, bytes) = read(&database, "ab/0").await.expect("an object");
        assert_eq!(bytes, b"short");
        database
            .transact(|tx| async move { delete(&tx, "ab/0") })
            .await
            .expect("deletes");
        assert!(read(&database, "ab/0").await.is_none());
        // Empty objects exist too.
        database
            .transact(|tx| async move { put(&tx, "empty", b"", 7).await })
            .await
            .expect("puts");
        let (info, bytes) = read(&database, "empty").await.expect("an object");
        assert_eq!((info.size_bytes, bytes.len()), (0, 0));
    }

    #[tokio::test]
    async fn a_list_pages_through_a_prefix_in_path_order() {
        let database = database();
        for path in ["a/1", "a/0", "a/10", "ab/0", "b/0"] {
            database
                .transact(|tx| async move { put(&tx, path, path.as_bytes(), 1).await })
                .await
                .expect("puts");
        }
        let (page, more) = database
            .transact(|tx| async move { list(&tx, "a/", None, 2).await })
            .await
            .expect("lists");
        let paths: Vec<_> = page.iter().map(|info| info.path.as_str()).collect();
        assert_eq!((paths, more), (vec!["a/0", "a/1"], true));
        let (page, more) = database
            .transact(|tx| async move { list(&tx, "a/", Some("a/1"), 2).await })
            .await
            .expect("lists");
        let paths: Vec<_> = page.iter().map(|info| info.path.as_str()).collect();
        assert_eq!((paths, more), (vec!["a/10"], false));
        let (page, _) = database
            .transact(|tx| async move { list(&tx, "", None, 10).await })
            .await
            .expect("lists");
        assert_eq!(page.len(), 5);
        assert_eq!(page[3].size_bytes, 4, "ab/0");
    }

    #[tokio::test]
    async fn an_object_too_large_or_a_path_too_long_is_refused() {
        let database = database();
        let too_large = vec![0; OBJECT_BYTES_MAX + 1];
        let refused = database
            .transact(|tx| {
                let too_large = too_large.clone();
                async move { put(&tx, "x", &too_large, 1).await }
            })
            .await;
        assert!(
            matches!(refused, Err(StoreError::InvalidOptions(_))),
            "{refused:?}"
        );
        let long = "p".repeat(OBJECT_PATH_BYTES_MAX + 1);
        let refused = database
            .transact(|tx| {
                let long = long.clone();
                async move { put(&tx, &long, b"", 1).await }
            })
            .await;
        assert!(
            matches!(refused, Err(StoreError::InvalidOptions(_))),
            "{refused:?}"
        );
    }
}
