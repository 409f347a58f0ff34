//! The media index layer: which media blobs exist, who uploaded them, how large they are and
//! when they expire. The blobs themselves live in the object store (local files or S3); this
//! index is what the region consults to serve, account for and expire them.
//!
//! **Challenge.** Record each uploaded blob under its opaque id (16 or 32 bytes, chosen by the
//! uploader, so it reveals nothing), answer lookups by id, keep the bytes each account stores,
//! and find the blobs past their expiry (30 days by default) in bounded batches so the region
//! can delete them from the object store.
//!
//! **Key layout** (subspace `("media",)`):
//! - `("blob", media_id)` → the record: owner, size, expiry (prost);
//! - `("expiry", expires_at_ms, media_id)` → empty: the expiry index;
//! - `("owner_bytes", owner)` → the bytes the account stores (8 bytes LE, atomic add);
//! - `("upload", media_id)` → where the blob's upload stands: its SHA-256, the bytes committed
//!   (durable in the object store) and whether it is finished (prost). Written by
//!   [`begin_upload`], moved forward by [`commit_upload_bytes`] and [`finish_upload`], removed
//!   with the blob record.
//!
//! A lookup is a point read. The expiry index sorts by expiry time, so the expired blobs are
//! one range read from the start of the index up to "now". Uploads are rare next to messages,
//! so the index's tail, where every upload writes, is not a hot spot (the device queue's expiry
//! index, written on every message, is bucketed for that reason; this one need not be).
//!
//! **Conflicts.** A put reads the blob key (two puts of one id conflict; the second sees it
//! taken); a delete or a sweep reads each record it removes, so a delete and a sweep of one
//! blob conflict and only one reports it. The per-owner byte count is kept with atomic adds, so
//! puts and deletes of one owner's blobs never conflict on it. A sweep's range read of the
//! index conflicts only with puts that expire before "now" (none, in practice) and deletes of
//! blobs it is about to remove.
//!
//! **Idempotence.** [`put`] takes an [`IdempotencyKey`]: retried after `CommitUnknownResult`
//! it answers [`MediaPut::Stored`] again and writes nothing, even if the blob was deleted or
//! swept in between (without the key the retry would put a deleted blob back). So does
//! [`sweep_expired`], because its answer is acted on outside the store: the region deletes the
//! reported blobs from the object store after the commit, and a retry that reported nothing
//! (its first attempt already removed the records) would leave them there for ever. Its record
//! holds the ids it removed, so the retry reports them again (deleting a blob twice is
//! harmless). [`delete`] is idempotent by nature: deleting a missing blob returns `None`.
//!
//! **Limits.** Records are small; a sweep removes at most [`MEDIA_SWEEP_ENTRIES_MAX`] blobs
//! (a range read and a point read each, three cleared keys each: far below 5 s and 10 MB; its
//! idempotency record, about 70 bytes a blob, stays below one 100 kB value).
//!
//! **Uploads.** [`begin_upload`] records the blob (counted against its owner at once, so an
//! unfinished upload takes its quota and expires like a finished one) with its upload state;
//! it refuses when the owner's bytes would pass a quota. The object store cannot resume an
//! upload after a restart, so the region stores each committed unit as an object and records
//! the committed offset here after the object is durable: an offset only moves forward, from
//! the value the writer read ([`commit_upload_bytes`] with `from`), so a stale writer changes
//! nothing. A unit written but not recorded (a crash in between) is simply written again.
//!
//! **Evolution.** A content hash for deduplication would be a new field of the record and an index
//! `("hash", hash, media_id)`; expiry extension (a forwarded blob) moves its index key.

use prost::Message;
use relay_proto::AccountId;
use relay_proto::wire::BlobDigest;
use thiserror::Error;

pub use crate::codec::IdempotencyKey;
use crate::codec::{decode_key, decode_record, read_count, recall, remember};
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
pub use crate::limits::MEDIA_RETENTION_MS_DEFAULT;
pub use crate::limits::MEDIA_SWEEP_ENTRIES_MAX;
use crate::tuple::{Subspace, TupleDecode, TupleEncode, TupleError};

/// An opaque media id: 16 or 32 bytes chosen by the uploader.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MediaId(Vec<u8>);

/// A media id of the wrong length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a media id is 16 or 32 bytes, not {length}")]
pub struct InvalidMediaId {
    /// The length given.
    pub length: usize,
}

impl MediaId {
    /// Parses a media id: 16 or 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<MediaId, InvalidMediaId> {
        match bytes.len() {
            16 | 32 => Ok(MediaId(bytes.to_vec())),
            length => Err(InvalidMediaId { length }),
        }
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A media id packs as a byte string.
impl TupleEncode for MediaId {
    fn encode_into(&self, out: &mut Vec<u8>) {
        self.0.encode_into(out);
    }
}

impl TupleDecode for MediaId {
    fn decode_from(input: &mut &[u8]) -> Result<Self, TupleError> {
        let bytes = Vec::<u8>::decode_from(input)?;
        MediaId::from_bytes(&bytes).map_err(|error| TupleError::WrongLength {
            expected: 32,
            found: error.length,
        })
    }
}

/// A blob as the index stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRecord {
    /// The blob's id.
    pub id: MediaId,
    /// The account that uploaded it.
    pub owner: AccountId,
    /// Its size in bytes (of the ciphertext).
    pub size_bytes: u64,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// What [`put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPut {
    /// The blob is recorded (now, or by an earlier attempt with the same idempotency key).
    Stored,
    /// Refused: another put already recorded this id.
    Taken {
        /// The account that recorded it.
        owner: AccountId,
    },
}

/// Where a blob's upload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadState {
    /// The hash of the blob's digest, named when the upload began.
    pub digest_kind: BlobDigest,
    /// The digest of the blob's bytes, as the uploader declared it (empty until it does).
    pub digest: Vec<u8>,
    /// The bytes stored durably from the start: an upload resumes here.
    pub committed_bytes: u64,
    /// Whether the upload was finished (size and hash checked).
    pub finished: bool,
}

/// What [`begin_upload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadBegun {
    /// The blob and its upload are recorded (now, or by an earlier attempt with the same key).
    Begun,
    /// Refused: the owner's bytes would pass the quota.
    QuotaExceeded {
        /// The bytes the owner stores now.
        owner_bytes: u64,
    },
    /// Refused: another put already recorded this id.
    Taken {
        /// The account that recorded it.
        owner: AccountId,
    },
}

/// What [`sweep_expired`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaSweep {
    /// The expired blobs, now out of the index: delete them from the object store.
    pub expired: Vec<MediaRecord>,
    /// Whether another sweep may find more (this one stopped at its limit).
    pub more: bool,
}

/// Records the blob `id` uploaded by `owner`, unless the id is taken. Retried with the same
/// `idempotency` key after its commit, it answers [`MediaPut::Stored`] and writes nothing.
pub async fn put(
    transaction: &Transaction,
    id: &MediaId,
    owner: AccountId,
    size_bytes: u64,
    expires_at_ms: u64,
    idempotency: &IdempotencyKey,
) -> Result<MediaPut, StoreError> {
    if recall(transaction, "media_put", id, idempotency)
        .await?
        .is_some()
    {
        return Ok(MediaPut::Stored);
    }
    let index = MediaIndex::new();
    if let Some(existing) = read_record(transaction, &index, id).await? {
        return Ok(MediaPut::Taken {
            owner: existing.owner,
        });
    }
    let stored = StoredMedia {
        owner: owner.0,
        size_bytes,
        expires_at_ms,
    };
    transaction.set(&index.blob_key(id), &stored.encode_to_vec())?;
    transaction.set(&index.expiry.pack(&(expires_at_ms, id)), &[])?;
    transaction.atomic_add(&index.owner_bytes_key(owner), signed(size_bytes)?)?;
    remember(transaction, "media_put", id, idempotency, &[])?;
    Ok(MediaPut::Stored)
}

/// The blob `id`, if the index has it.
pub async fn get(
    transaction: &Transaction,
    id: &MediaId,
) -> Result<Option<MediaRecord>, StoreError> {
    read_record(transaction, &MediaIndex::new(), id).await
}

/// Removes the blob `id` from the index and returns it; a missing blob returns `None`.
pub async fn delete(
    transaction: &Transaction,
    id: &MediaId,
) -> Result<Option<MediaRecord>, StoreError> {
    let index = MediaIndex::new();
    let Some(record) = read_record(transaction, &index, id).await? else {
        return Ok(None);
    };
    remove(transaction, &index, &record)?;
    Ok(Some(record))
}

/// Removes the blobs that expired before `now_ms` (at most `limit`, clamped to
/// `1..=`[`MEDIA_SWEEP_ENTRIES_MAX`]) and returns them, oldest expiry first. Retried with the
/// same `idempotency` key after its commit, it returns the same blobs.
pub async fn sweep_expired(
    transaction: &Transaction,
    now_ms: u64,
    limit: usize,
    idempotency: &IdempotencyKey,
) -> Result<MediaSweep, StoreError> {
    if let Some(stored) = recall(transaction, "media_sweep", &(), idempotency).await? {
        let stored: StoredSweep = decode_record(&stored, "media sweep result")?;
        return stored.sweep();
    }
    let index = MediaIndex::new();
    let limit = limit.clamp(1, MEDIA_SWEEP_ENTRIES_MAX);
    let (begin, _) = index.expiry.range();
    let end = index.expiry.pack(&(now_ms,));
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::limit(limit))
        .await?;
    let mut sweep = MediaSweep {
        expired: Vec::with_capacity(rows.len()),
        more: rows.len() == limit,
    };
    for (key, _) in &rows {
        let (expires_at_ms, id): (u64, MediaId) =
            decode_key(&index.expiry, key, "media expiry key")?;
        let Some(record) = read_record(transaction, &index, &id).await? else {
            return Err(StoreError::corrupt(
                "media expiry key",
                "an expiry key without its blob record",
            ));
        };
        if record.expires_at_ms != expires_at_ms {
            return Err(StoreError::corrupt(
                "media expiry key",
                format!(
                    "indexed at {expires_at_ms}, record expires at {}",
                    record.expires_at_ms
                ),
            ));
        }
        remove(transaction, &index, &record)?;
        sweep.expired.push(record);
    }
    if !sweep.expired.is_empty() {
        let stored = StoredSweep::new(&sweep);
        remember(
            transaction,
            "media_sweep",
            &(),
            idempotency,
            &stored.encode_to_vec(),
        )?;
    }
    Ok(sweep)
}

/// Records the blob `id` of `owner` and its upload (nothing committed yet), unless `owner`'s
/// bytes would pass `quota_bytes` or the id is taken. Retried with the same `idempotency` key
/// after its commit, it answers [`UploadBegun::Begun`] and writes nothing.
#[allow(clippy::too_many_arguments)]
pub async fn begin_upload(
    transaction: &Transaction,
    id: &MediaId,
    owner: AccountId,
    size_bytes: u64,
    digest_kind: BlobDigest,
    digest: &[u8],
    expires_at_ms: u64,
    quota_bytes: u64,
    idempotency: &IdempotencyKey,
) -> Result<UploadBegun, StoreError> {
    if recall(transaction, "media_put", id, idempotency)
        .await?
        .is_some()
    {
        return Ok(UploadBegun::Begun);
    }
    let stored_bytes = owner_bytes(transaction, owner).await?;
    if stored_bytes.saturating_add(size_bytes) > quota_bytes {
        return Ok(UploadBegun::QuotaExceeded {
            owner_bytes: stored_bytes,
        });
    }
    match put(
        transaction,
        id,
        owner,
        size_bytes,
        expires_at_ms,
        idempotency,
    )
    .await?
    {
        MediaPut::Taken { owner } => return Ok(UploadBegun::Taken { owner }),
        MediaPut::Stored => {}
    }
    let upload = StoredUpload {
        digest: digest.to_vec(),
        committed_bytes: 0,
        finished: false,
        digest_kind: digest_kind.into(),
    };
    transaction.set(&MediaIndex::new().upload_key(id), &upload.encode_to_vec())?;
    Ok(UploadBegun::Begun)
}

/// Where the upload of blob `id` stands, if the index has it.
pub async fn upload_state(
    transaction: &Transaction,
    id: &MediaId,
) -> Result<Option<UploadState>, StoreError> {
    read_upload(transaction, &MediaIndex::new(), id).await
}

/// Moves the committed offset of blob `id` from `from_bytes` to `to_bytes` (the bytes in
/// between are durable in the object store) and returns the state after. An offset that is no
/// longer `from_bytes` (another writer moved it) or a finished upload is left as it is and
/// returned, so a stale writer changes nothing; `None` when the blob is gone.
pub async fn commit_upload_bytes(
    transaction: &Transaction,
    id: &MediaId,
    from_bytes: u64,
    to_bytes: u64,
) -> Result<Option<UploadState>, StoreError> {
    let index = MediaIndex::new();
    let Some(mut upload) = read_upload(transaction, &index, id).await? else {
        return Ok(None);
    };
    if upload.finished || upload.committed_bytes != from_bytes || to_bytes < from_bytes {
        return Ok(Some(upload));
    }
    upload.committed_bytes = to_bytes;
    write_upload(transaction, &index, id, &upload)?;
    Ok(Some(upload))
}

/// Marks the upload of blob `id` finished and returns its state; `None` when the blob is gone.
/// The caller checked the bytes first, against `digest`: the one the upload began with, or the
/// one its finish declared when it began without (kept from then on).
pub async fn finish_upload(
    transaction: &Transaction,
    id: &MediaId,
    digest: &[u8],
) -> Result<Option<UploadState>, StoreError> {
    let index = MediaIndex::new();
    let Some(mut upload) = read_upload(transaction, &index, id).await? else {
        return Ok(None);
    };
    if !upload.finished {
        upload.finished = true;
        if upload.digest.is_empty() {
            upload.digest = digest.to_vec();
        }
        write_upload(transaction, &index, id, &upload)?;
    }
    Ok(Some(upload))
}

/// The bytes of the blobs `owner` has in the index.
pub async fn owner_bytes(transaction: &Transaction, owner: AccountId) -> Result<u64, StoreError> {
    let index = MediaIndex::new();
    read_count(
        transaction,
        &index.owner_bytes_key(owner),
        false,
        "media owner bytes",
    )
    .await
}

/// The stored form of a blob record (its id is in the key).
#[derive(Clone, PartialEq, Message)]
struct StoredMedia {
    #[prost(uint64, tag = "1")]
    owner: u64,
    #[prost(uint64, tag = "2")]
    size_bytes: u64,
    #[prost(uint64, tag = "3")]
    expires_at_ms: u64,
}

/// The stored form of an upload's state (its id is in the key).
#[derive(Clone, PartialEq, Message)]
struct StoredUpload {
    #[prost(bytes = "vec", tag = "1")]
    digest: Vec<u8>,
    #[prost(uint64, tag = "2")]
    committed_bytes: u64,
    #[prost(bool, tag = "3")]
    finished: bool,
    /// A [`BlobDigest`]; absent from records written before BLAKE3: SHA-256.
    #[prost(int32, tag = "4")]
    digest_kind: i32,
}

/// The stored result of a sweep, for answering retries.
#[derive(Clone, PartialEq, Message)]
struct StoredSweep {
    #[prost(message, repeated, tag = "1")]
    expired: Vec<StoredSweptMedia>,
    #[prost(bool, tag = "2")]
    more: bool,
}

/// One swept blob in a [`StoredSweep`].
#[derive(Clone, PartialEq, Message)]
struct StoredSweptMedia {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
    #[prost(message, required, tag = "2")]
    record: StoredMedia,
}

impl StoredSweep {
    fn new(sweep: &MediaSweep) -> Self {
        let expired = sweep
            .expired
            .iter()
            .map(|record| StoredSweptMedia {
                id: record.id.as_bytes().to_vec(),
                record: StoredMedia {
                    owner: record.owner.0,
                    size_bytes: record.size_bytes,
                    expires_at_ms: record.expires_at_ms,
                },
            })
            .collect();
        StoredSweep {
            expired,
            more: sweep.more,
        }
    }

    fn sweep(self) -> Result<MediaSweep, StoreError> {
        let expired = self
            .expired
            .into_iter()
            .map(|swept| {
                let id = MediaId::from_bytes(&swept.id)
                    .map_err(|error| StoreError::corrupt("media sweep result", error))?;
                Ok(MediaRecord {
                    id,
                    owner: AccountId(swept.record.owner),
                    size_bytes: swept.record.size_bytes,
                    expires_at_ms: swept.record.expires_at_ms,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(MediaSweep {
            expired,
            more: self.more,
        })
    }
}

struct MediaIndex {
    root: Subspace,
    expiry: Subspace,
}

impl MediaIndex {
    fn new() -> Self {
        let root = Subspace::new(&("media",));
        let expiry = root.subspace(&("expiry",));
        MediaIndex { root, expiry }
    }

    fn blob_key(&self, id: &MediaId) -> Vec<u8> {
        self.root.pack(&("blob", id))
    }

    fn owner_bytes_key(&self, owner: AccountId) -> Vec<u8> {
        self.root.pack(&("owner_bytes", owner))
    }

    fn upload_key(&self, id: &MediaId) -> Vec<u8> {
        self.root.pack(&("upload", id))
    }
}

async fn read_upload(
    transaction: &Transaction,
    index: &MediaIndex,
    id: &MediaId,
) -> Result<Option<UploadState>, StoreError> {
    let Some(value) = transaction.get(&index.upload_key(id)).await? else {
        return Ok(None);
    };
    let stored: StoredUpload = decode_record(&value, "media upload")?;
    let digest_kind = BlobDigest::try_from(stored.digest_kind).map_err(|_| {
        StoreError::corrupt(
            "media upload",
            format!("digest kind {} is not known", stored.digest_kind),
        )
    })?;
    Ok(Some(UploadState {
        digest_kind,
        digest: stored.digest,
        committed_bytes: stored.committed_bytes,
        finished: stored.finished,
    }))
}

fn write_upload(
    transaction: &Transaction,
    index: &MediaIndex,
    id: &MediaId,
    upload: &UploadState,
) -> Result<(), StoreError> {
    let stored = StoredUpload {
        digest: upload.digest.clone(),
        committed_bytes: upload.committed_bytes,
        finished: upload.finished,
        digest_kind: upload.digest_kind.into(),
    };
    transaction.set(&index.upload_key(id), &stored.encode_to_vec())
}

async fn read_record(
    transaction: &Transaction,
    index: &MediaIndex,
    id: &MediaId,
) -> Result<Option<MediaRecord>, StoreError> {
    let Some(value) = transaction.get(&index.blob_key(id)).await? else {
        return Ok(None);
    };
    let stored: StoredMedia = decode_record(&value, "media record")?;
    Ok(Some(MediaRecord {
        id: id.clone(),
        owner: AccountId(stored.owner),
        size_bytes: stored.size_bytes,
        expires_at_ms: stored.expires_at_ms,
    }))
}

fn remove(
    transaction: &Transaction,
    index: &MediaIndex,
    record: &MediaRecord,
) -> Result<(), StoreError> {
    transaction.clear(&index.blob_key(&record.id));
    transaction.clear(&index.upload_key(&record.id));
    transaction.clear(&index.expiry.pack(&(record.expires_at_ms, &record.id)));
    transaction.atomic_add(
        &index.owner_bytes_key(record.owner),
        -signed(record.size_bytes)?,
    )
}

/// A size as the signed delta of an atomic add.
fn signed(size_bytes: u64) -> Result<i64, StoreError> {
    i64::try_from(size_bytes)
        .map_err(|_| StoreError::corrupt("media size", format!("{size_bytes} bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FaultConfig;
    use crate::test_support::{
        KeyIssuer, fault_seed, idempotency_key, temporary_database, transact_through_outages,
    };

    fn media_id(byte: u8) -> MediaId {
        MediaId::from_bytes(&[byte; 16]).expect("16 bytes")
    }

    #[test]
    fn media_ids_are_16_or_32_bytes() {
        assert!(MediaId::from_bytes(&[1; 16]).is_ok());
        assert!(MediaId::from_bytes(&[1; 32]).is_ok());
        assert_eq!(
            MediaId::from_bytes(&[1; 20]),
            Err(InvalidMediaId { length: 20 })
        );
    }

    #[tokio::test]
    async fn blobs_are_recorded_once_looked_up_and_deleted() {
        let (_folder, database) = temporary_database(None);
        let long_id = MediaId::from_bytes(&[9; 32]).expect("32 bytes");
        let (puts, bytes) = transact_through_outages(&database, |tx| {
            let long_id = long_id.clone();
            async move {
                let puts = [
                    put(
                        &tx,
                        &media_id(1),
                        AccountId(1),
                        100,
                        50,
                        &idempotency_key(1),
                    )
                    .await?,
                    put(&tx, &media_id(1), AccountId(2), 7, 50, &idempotency_key(2)).await?,
                    put(&tx, &long_id, AccountId(1), 20, 60, &idempotency_key(3)).await?,
                ];
                Ok((puts, owner_bytes(&tx, AccountId(1)).await?))
            }
        })
        .await
        .expect("puts");
        assert_eq!(
            puts,
            [
                MediaPut::Stored,
                MediaPut::Taken {
                    owner: AccountId(1)
                },
                MediaPut::Stored
            ]
        );
        assert_eq!(bytes, 120);

        let (found, deleted, deleted_again, retried, missing, bytes) =
            transact_through_outages(&database, |tx| async move {
                let found = get(&tx, &media_id(1)).await?;
                let deleted = delete(&tx, &media_id(1)).await?;
                let deleted_again = delete(&tx, &media_id(1)).await?;
                // The first put retried after the delete: it must not bring the blob back.
                let retried = put(
                    &tx,
                    &media_id(1),
                    AccountId(1),
                    100,
                    50,
                    &idempotency_key(1),
                )
                .await?;
                let missing = get(&tx, &media_id(1)).await?;
                Ok((
                    found,
                    deleted,
                    deleted_again,
                    retried,
                    missing,
                    owner_bytes(&tx, AccountId(1)).await?,
                ))
            })
            .await
            .expect("deletes");
        let record = MediaRecord {
            id: media_id(1),
            owner: AccountId(1),
            size_bytes: 100,
            expires_at_ms: 50,
        };
        assert_eq!(found, Some(record.clone()));
        assert_eq!(deleted, Some(record));
        assert_eq!(
            (deleted_again, retried, missing),
            (None, MediaPut::Stored, None)
        );
        assert_eq!(bytes, 20);
    }

    #[tokio::test]
    async fn sweeps_remove_expired_blobs_in_expiry_order() {
        let (_folder, database) = temporary_database(None);
        transact_through_outages(&database, |tx| async move {
            for (byte, expires_at_ms) in [(1u8, 30u64), (2, 10), (3, 20), (4, 40)] {
                put(
                    &tx,
                    &media_id(byte),
                    AccountId(1),
                    10,
                    expires_at_ms,
                    &idempotency_key(u64::from(byte)),
                )
                .await?;
            }
            Ok(())
        })
        .await
        .expect("puts");
        let sweep = |now_ms, limit, key| {
            let database = database.clone();
            async move {
                transact_through_outages(&database, |tx| async move {
                    sweep_expired(&tx, now_ms, limit, &idempotency_key(key)).await
                })
                .await
                .expect("sweep")
            }
        };
        let first = sweep(35, 2, 10).await;
        let ids: Vec<_> = first
            .expired
            .iter()
            .map(|record| record.id.clone())
            .collect();
        assert_eq!(ids, [media_id(2), media_id(3)]);
        assert!(first.more);
        assert_eq!(
            sweep(35, 2, 10).await,
            first,
            "a retry reports the same blobs"
        );
        let second = sweep(35, 2, 11).await;
        let ids: Vec<_> = second
            .expired
            .iter()
            .map(|record| record.id.clone())
            .collect();
        assert_eq!(ids, [media_id(1)]);
        assert!(!second.more);
        assert_eq!(sweep(35, 2, 12).await, MediaSweep::default());
        let (left, bytes) = transact_through_outages(&database, |tx| async move {
            Ok((
                get(&tx, &media_id(4)).await?,
                owner_bytes(&tx, AccountId(1)).await?,
            ))
        })
        .await
        .expect("reads");
        assert_eq!(left.map(|record| record.expires_at_ms), Some(40));
        assert_eq!(bytes, 10);
    }

    #[tokio::test]
    async fn uploads_are_counted_against_a_quota_and_only_move_forward() {
        let (_folder, database) = temporary_database(None);
        let (begun, over, taken) = transact_through_outages(&database, |tx| async move {
            let begun = begin_upload(
                &tx,
                &media_id(1),
                AccountId(1),
                600,
                BlobDigest::Blake3,
                &[7; 32],
                50,
                1_000,
                &idempotency_key(1),
            )
            .await?;
            let over = begin_upload(
                &tx,
                &media_id(2),
                AccountId(1),
                401,
                BlobDigest::Sha256,
                &[7; 32],
                50,
                1_000,
                &idempotency_key(2),
            )
            .await?;
            let taken = begin_upload(
                &tx,
                &media_id(1),
                AccountId(2),
                10,
                BlobDigest::Sha256,
                &[7; 32],
                50,
                1_000,
                &idempotency_key(3),
            )
            .await?;
            Ok((begun, over, taken))
        })
        .await
        .expect("begins");
        assert_eq!(begun, UploadBegun::Begun);
        assert_eq!(over, UploadBegun::QuotaExceeded { owner_bytes: 600 });
        assert_eq!(
            taken,
            UploadBegun::Taken {
                owner: AccountId(1)
            }
        );
        let (moved, stale, finished, after_finish, retried) =
            transact_through_outages(&database, |tx| async move {
                let moved = commit_upload_bytes(&tx, &media_id(1), 0, 300).await?;
                // A writer that read offset 0 before the move changes nothing.
                let stale = commit_upload_bytes(&tx, &media_id(1), 0, 100).await?;
                let finished = finish_upload(&tx, &media_id(1), &[7; 32]).await?;
                let after_finish = commit_upload_bytes(&tx, &media_id(1), 300, 600).await?;
                // The first begin retried after its commit writes nothing.
                let retried = begin_upload(
                    &tx,
                    &media_id(1),
                    AccountId(1),
                    600,
                    BlobDigest::Blake3,
                    &[7; 32],
                    50,
                    1_000,
                    &idempotency_key(1),
                )
                .await?;
                Ok((moved, stale, finished, after_finish, retried))
            })
            .await
            .expect("progress");
        let state = |committed_bytes, finished| {
            Some(UploadState {
                digest_kind: BlobDigest::Blake3,
                digest: vec![7; 32],
                committed_bytes,
                finished,
            })
        };
        assert_eq!(moved, state(300, false));
        assert_eq!(stale, state(300, false));
        assert_eq!(finished, state(300, true));
        assert_eq!(after_finish, state(300, true));
        assert_eq!(retried, UploadBegun::Begun);
        let (gone, bytes) = transact_through_outages(&database, |tx| async move {
            delete(&tx, &media_id(1)).await?;
            Ok((
                upload_state(&tx, &media_id(1)).await?,
                owner_bytes(&tx, AccountId(1)).await?,
            ))
        })
        .await
        .expect("delete");
        assert_eq!(
            (gone, bytes),
            (None, 0),
            "a deleted blob takes its upload along"
        );
    }

    const DAY_MS: u64 = 24 * 60 * 60 * 1_000;

    /// The media index's share of the conformance suite: concurrent keyed puts, then sweeps in
    /// rounds, exact with and without injected faults.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_without_faults() {
        let (_folder, database) = temporary_database(None);
        media_is_recorded_once_and_expires(&database, AccountId(1), &KeyIssuer::default()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_with_faults() {
        let seed = fault_seed();
        eprintln!(
            "media conformance with faults: seed={seed} (reproduce with FDB_LAYERS_SEED={seed})"
        );
        let (_folder, database) = temporary_database(Some(FaultConfig::frequent(seed)));
        let suite = {
            let database = database.clone();
            tokio::spawn(async move {
                media_is_recorded_once_and_expires(&database, AccountId(1), &KeyIssuer::default())
                    .await
            })
        };
        if let Err(failure) = suite.await {
            panic!("media conformance failed with faults, seed={seed}: {failure}");
        }
    }

    /// Blobs are recorded once per key, counted per owner, and swept after their expiry.
    async fn media_is_recorded_once_and_expires(
        database: &crate::Database,
        owner: AccountId,
        keys: &KeyIssuer,
    ) {
        let puts: Vec<_> = (0..6u8)
            .map(|index| {
                let database = database.clone();
                let key = keys.issue();
                tokio::spawn(async move {
                    let id = MediaId::from_bytes(&[index; 32]).expect("32 bytes");
                    let expires_at_ms = 1_000 + u64::from(index) * DAY_MS;
                    transact_through_outages(&database, |tx| {
                        let id = id.clone();
                        async move { put(&tx, &id, owner, 1_000, expires_at_ms, &key).await }
                    })
                    .await
                })
            })
            .collect();
        for put in puts {
            assert_eq!(put.await.expect("put task").expect("put"), MediaPut::Stored);
        }
        let bytes =
            transact_through_outages(database, |tx| async move { owner_bytes(&tx, owner).await })
                .await
                .expect("owner bytes");
        assert_eq!(bytes, 6_000, "each put counted once");
        // At day 3.5, blobs 0..=3 have expired.
        let now_ms = 1_000 + 7 * DAY_MS / 2;
        let mut swept = Vec::new();
        loop {
            // One key per sweep round: a retried round reports the blobs its first attempt removed.
            let key = keys.issue();
            let sweep = transact_through_outages(database, |tx| async move {
                sweep_expired(&tx, now_ms, 3, &key).await
            })
            .await
            .expect("sweep");
            swept.extend(sweep.expired.iter().map(|record| record.id.as_bytes()[0]));
            if !sweep.more {
                break;
            }
        }
        assert_eq!(swept, [0, 1, 2, 3]);
        let bytes =
            transact_through_outages(database, |tx| async move { owner_bytes(&tx, owner).await })
                .await
                .expect("owner bytes");
        assert_eq!(bytes, 2_000);
    }
}
