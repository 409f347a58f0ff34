//! The region's blob store: encrypted media and history snapshots, uploaded resumably and kept
//! for 30 days. The region never sees a key or a plaintext: a blob is ciphertext the client
//! encrypted (see the client's `blob` module), stored under an id the region draws.
//!
//! **Where bytes live.** In an [`ObjectStore`]: local files under the region's data folder
//! with fsync on every write (the default), the region's own store with a standby
//! ([`crate::blob_objects`]: shipped with every commit, so a failover keeps them), S3 in
//! production, memory in the simulation. The
//! object store cannot resume a multipart upload after a restart, so resumption is ours: an
//! upload is cut into units of [`BLOB_COMMIT_UNIT_BYTES`] (the last may be shorter), each unit
//! one object `<id hex>/<unit index>`, and the committed offset is recorded in the region's
//! store ([`fdb_layers::media`]) only after the unit's object is durable. A dropped connection
//! loses at most the unit in flight; the upload resumes at the committed offset. A unit written
//! but not recorded (a crash in between) is written again by the resumed upload.
//!
//! **Who may do what.** Only devices of the uploading account begin, resume, query and finish
//! an upload. Any authenticated device that names a finished blob's id may download it: the id
//! is 128 random bits drawn by the region, so knowing it is the grant, and it travels with the
//! key in an end-to-end encrypted envelope. Without the key the bytes are noise. A blob that is
//! unknown, expired, or another account's unfinished upload is [`ErrorCode::UnknownBlob`] alike,
//! so nothing tells a guesser which ids exist.
//!
//! **Bounds.** A blob is at most [`BlobLimits::blob_bytes_max`]; an account stores at most
//! [`BlobLimits::account_bytes_max`] (begun uploads count at once); a blob expires
//! [`BlobLimits::retention_ms`] after it was begun, finished or not. [`BlobStore::sweep`]
//! removes expired blobs (records first, then objects) and objects whose record is gone (left by
//! a crash between the two); it is called with the time, so tests move the clock by hand.
//!
//! **Checks.** `Finish` compares the size and digest of the committed bytes with those the
//! upload began with (or its finish declared), under the hash its `Begin` named (SHA-256 for
//! blob format 1, BLAKE3 for format 2); a mismatch discards the upload
//! ([`ErrorCode::BlobMismatch`]). The digest is
//! kept as each unit commits, in order ([`RunningHashes`]), so a finish reads nothing back; an
//! upload without one (resumed after a restart, or dropped past [`BLOB_RUNNING_HASHES_MAX`](crate::limits::BLOB_RUNNING_HASHES_MAX)) has
//! every unit read back and hashed at finish. A download checks each unit's length against the
//! record before sending it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fdb_layers::keys::IdempotencyKey;
use fdb_layers::media::{self, MediaId, MediaRecord, UploadBegun, UploadState};
use fdb_layers::{Database, StoreError};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use relay_proto::digest::BlobHasher;
use relay_proto::limits::{
    BLOB_BYTES_MAX, BLOB_COMMIT_UNIT_BYTES, BLOB_DIGEST_BYTES, BLOB_ID_BYTES,
    BLOB_STREAM_IDLE_TIMEOUT_MS,
};
use relay_proto::wire::BlobDigest;
use relay_proto::wire::{BlobAt, BlobBegin, BlobStatus};
use relay_proto::{AccountId, ErrorCode, ProtoError};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::direct_files::{DirectFiles, page_aligned_buffer};
use crate::limits::{
    BLOB_ACCOUNT_BYTES_MAX_DEFAULT, BLOB_SWEEP_TRANSACTIONS_MAX, BLOB_UNITS_COMMITTING_MAX,
    BLOB_UNITS_IN_MEMORY_MAX,
};
use crate::service::lock;
use running_hashes::RunningHashes;

/// The bounds of one region's blob store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLimits {
    /// Largest blob, in bytes.
    pub blob_bytes_max: u64,
    /// Bytes one account may store at once (unfinished uploads included).
    pub account_bytes_max: u64,
    /// How long a blob is kept after its upload began, in ms.
    pub retention_ms: u64,
    /// Units all upload streams hold in memory together ([`BLOB_UNITS_IN_MEMORY_MAX`]).
    pub units_in_memory_max: usize,
}

impl Default for BlobLimits {
    fn default() -> Self {
        BlobLimits {
            blob_bytes_max: BLOB_BYTES_MAX,
            account_bytes_max: BLOB_ACCOUNT_BYTES_MAX_DEFAULT,
            retention_ms: media::MEDIA_RETENTION_MS_DEFAULT,
            units_in_memory_max: BLOB_UNITS_IN_MEMORY_MAX,
        }
    }
}

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobSweep {
    /// Expired blobs removed.
    pub expired_blobs: usize,
    /// Blob folders removed whose record was already gone.
    pub orphaned_blobs: usize,
}

/// The region's blob store: objects plus their records in the region's store.
#[derive(Clone)]
pub struct BlobStore {
    objects: Arc<dyn ObjectStore>,
    db: Database,
    limits: BlobLimits,
    hashes: Arc<std::sync::Mutex<RunningHashes>>,
    /// Units the upload streams may hold in memory, shared by all of them.
    units_in_memory: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("objects", &self.objects.to_string())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// An object store in memory (the simulation's).
pub fn memory_objects() -> Arc<dyn ObjectStore> {
    Arc::new(object_store::memory::InMemory::new())
}

/// The object store a region's configuration names: its S3 bucket, its own store `db`
/// (`keep_in = "store"`, stamped with `clock`), or local files under `data_dir/blobs`.
pub fn configured_objects(
    config: &crate::config::BlobsConfig,
    data_dir: &std::path::Path,
    db: &Database,
    clock: Arc<dyn relay_proto::clock::Clock>,
) -> Result<Arc<dyn ObjectStore>, String> {
    if let Some(s3) = &config.s3 {
        return s3_objects(s3);
    }
    match config.keep_in {
        crate::config::BlobPlace::Store => {
            Ok(crate::blob_objects::StoreObjects::new(db.clone(), clock))
        }
        crate::config::BlobPlace::Files => local_objects(&data_dir.join("blobs"))
            .map_err(|error| format!("the blob folder under {}: {error}", data_dir.display())),
    }
}

/// The S3 bucket `s3` names, through object_store's `aws` store.
#[cfg(feature = "s3")]
fn s3_objects(s3: &crate::config::S3Config) -> Result<Arc<dyn ObjectStore>, String> {
    let mut builder = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(&s3.bucket)
        .with_region(&s3.region)
        .with_allow_http(s3.allow_http);
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(key) = &s3.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &s3.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    let store = builder
        .build()
        .map_err(|error| format!("the S3 bucket {}: {error}", s3.bucket))?;
    Ok(Arc::new(store))
}

/// Without the `s3` feature a `[blobs.s3]` section is refused, naming the build to use.
#[cfg(not(feature = "s3"))]
fn s3_objects(s3: &crate::config::S3Config) -> Result<Arc<dyn ObjectStore>, String> {
    Err(format!(
        "[blobs.s3] names the bucket {}, but this relayd was built without S3 support: build it \
         with `cargo build --release -p relayd --features s3`, or remove the section to keep \
         blobs in local files",
        s3.bucket
    ))
}

/// The store of local blob files under `folder` (created if missing), with fsync on every
/// write, whole units written around the page cache ([`DirectFiles`]), and a blob's folder
/// removed with its last unit.
pub fn local_objects(folder: &std::path::Path) -> Result<Arc<dyn ObjectStore>, std::io::Error> {
    std::fs::create_dir_all(folder)?;
    let store = DirectFiles::new(folder).map_err(std::io::Error::other)?;
    Ok(Arc::new(store))
}

impl BlobStore {
    /// A blob store keeping bytes in `objects` and records in `db`.
    pub fn new(objects: Arc<dyn ObjectStore>, db: Database, limits: BlobLimits) -> Self {
        BlobStore {
            objects,
            db,
            limits,
            hashes: Arc::default(),
            units_in_memory: Arc::new(tokio::sync::Semaphore::new(limits.units_in_memory_max)),
        }
    }

    /// Begins an upload for `owner` (a fresh id) or resumes one it began (`begin.resume`).
    pub async fn begin(
        &self,
        owner: AccountId,
        begin: &BlobBegin,
        now_ms: u64,
    ) -> Result<BlobStatus, ProtoError> {
        // Empty: the finish declares it.
        let digest_kind = BlobDigest::try_from(begin.digest_kind).map_err(|_| {
            ProtoError::invalid(format!(
                "digest kind {} is not known (0: SHA-256, 1: BLAKE3)",
                begin.digest_kind
            ))
        })?;
        if !begin.digest.is_empty() {
            check_digest(&begin.digest)?;
        }
        if begin.size_bytes > self.limits.blob_bytes_max {
            return Err(ProtoError::new(
                ErrorCode::TooLarge,
                format!(
                    "a blob is at most {} bytes, not {}",
                    self.limits.blob_bytes_max, begin.size_bytes
                ),
            ));
        }
        if !begin.resume.is_empty() {
            let id = parse_id(&begin.resume)?;
            let (record, upload) = self.owned(owner, &id, now_ms).await?;
            if record.size_bytes != begin.size_bytes
                || upload.digest_kind != digest_kind
                || upload.digest != begin.digest
            {
                return Err(ProtoError::new(
                    ErrorCode::BlobMismatch,
                    "the upload to resume was begun with another size or digest",
                ));
            }
            return Ok(status(&record, &upload));
        }
        let id = MediaId::from_bytes(&rand::random::<[u8; BLOB_ID_BYTES]>())
            .map_err(|error| ProtoError::new(ErrorCode::Internal, error.to_string()))?;
        let key = IdempotencyKey::new(now_ms, rand::random());
        let expires_at_ms = now_ms.saturating_add(self.limits.retention_ms);
        let quota = self.limits.account_bytes_max;
        let begun = self
            .db
            .transact(|tx| {
                let (id, digest) = (id.clone(), begin.digest.clone());
                async move {
                    media::begin_upload(
                        &tx,
                        &id,
                        owner,
                        begin.size_bytes,
                        digest_kind,
                        &digest,
                        expires_at_ms,
                        quota,
                        &key,
                    )
                    .await
                }
            })
            .await
            .map_err(blob_store_failure)?;
        match begun {
            UploadBegun::Begun => Ok(BlobStatus {
                id: id.as_bytes().to_vec(),
                size_bytes: begin.size_bytes,
                committed_bytes: 0,
                finished: false,
                expires_at_ms,
                region: 0,
                media: None,
                digest_kind: digest_kind.into(),
            }),
            UploadBegun::QuotaExceeded { owner_bytes } => Err(ProtoError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "the account stores {owner_bytes} bytes of blobs; {} more would pass its \
                     quota of {quota} bytes",
                    begin.size_bytes
                ),
            )),
            // 128 random bits collided: refuse rather than touch another upload.
            UploadBegun::Taken { .. } => Err(ProtoError::new(
                ErrorCode::Internal,
                "a fresh blob id was taken; begin again",
            )),
        }
    }

    /// Where `owner`'s upload `id` stands.
    pub async fn status(
        &self,
        owner: AccountId,
        id: &[u8],
        now_ms: u64,
    ) -> Result<BlobStatus, ProtoError> {
        let id = parse_id(id)?;
        let (record, upload) = self.owned(owner, &id, now_ms).await?;
        Ok(status(&record, &upload))
    }

    /// Takes the bytes of `owner`'s upload from `at.offset` (the committed offset) until
    /// `bytes` ends, committing each whole unit as it arrives, and returns where the upload
    /// stands. A partial unit at the end of `bytes` is dropped (the upload resumes before it);
    /// bytes past the blob's size are refused after everything before them was committed.
    pub async fn upload(
        &self,
        owner: AccountId,
        at: &BlobAt,
        bytes: &mut (impl AsyncRead + Unpin),
        now_ms: u64,
    ) -> Result<BlobStatus, ProtoError> {
        let id = parse_id(&at.id)?;
        let (record, mut upload) = self.owned(owner, &id, now_ms).await?;
        if upload.finished {
            return Err(ProtoError::new(
                ErrorCode::WrongOffset,
                "the upload is finished already",
            ));
        }
        if at.offset != upload.committed_bytes {
            return Err(ProtoError::new(
                ErrorCode::WrongOffset,
                format!(
                    "the upload is committed up to byte {}, not {}: resume from there",
                    upload.committed_bytes, at.offset
                ),
            ));
        }
        // Units are committed while the next ones are read, so the stream keeps moving: each
        // one's object is written as soon as it is read (up to BLOB_UNITS_COMMITTING_MAX at
        // once, so their fsyncs overlap), and its offset is recorded once the unit before it
        // is, so offsets move in order. Each commit waits for the one before it: the last
        // one's answer is the upload's state, or the first failure.
        let slots = Arc::new(tokio::sync::Semaphore::new(BLOB_UNITS_COMMITTING_MAX));
        let mut committing: Option<tokio::task::JoinHandle<Result<UploadState, ProtoError>>> = None;
        let mut read_bytes = upload.committed_bytes;
        while read_bytes < record.size_bytes {
            if let Some(last) = committing.take_if(|last| last.is_finished()) {
                // A failed commit (another stream moved the offset, the disk) ends the stream.
                upload = joined(last).await?;
            }
            let unit_bytes = unit_bytes_at(record.size_bytes, read_bytes);
            // Held until the unit is committed (or dropped with it).
            let in_memory = Arc::clone(&self.units_in_memory)
                .acquire_owned()
                .await
                .map_err(|_| ProtoError::new(ErrorCode::Internal, "the unit slots closed"))?;
            // Its bytes start on a page, so a whole unit is written around the page cache.
            let mut unit = page_aligned_buffer(unit_bytes);
            let padding = unit.len();
            let complete = read_unit(bytes, &mut unit, unit_bytes).await;
            if !matches!(complete, Ok(true)) {
                if let Some(last) = committing.take() {
                    upload = joined(last).await?;
                }
                // The stream ended inside a unit: what came of it is not committed.
                complete?;
                return Ok(status(&record, &upload));
            }
            let slot = Arc::clone(&slots)
                .acquire_owned()
                .await
                .map_err(|_| ProtoError::new(ErrorCode::Internal, "the commit slots closed"))?;
            let store = self.clone();
            let unit_id = id.clone();
            let from_bytes = read_bytes;
            let unit = Bytes::from(unit).slice(padding..);
            let before = committing.take();
            committing = Some(tokio::spawn(async move {
                let committed = store.commit_unit(&unit_id, from_bytes, unit, before).await;
                drop((slot, in_memory));
                committed
            }));
            read_bytes += unit_bytes as u64;
        }
        if let Some(last) = committing.take() {
            upload = joined(last).await?;
        }
        let mut extra = [0u8; 1];
        if read_idle(bytes, &mut extra).await? > 0 {
            return Err(ProtoError::new(
                ErrorCode::TooLarge,
                format!(
                    "the stream went on past the blob's {} bytes",
                    record.size_bytes
                ),
            ));
        }
        Ok(status(&record, &upload))
    }

    /// Writes the unit of blob `id` starting at `from_bytes` and records it committed, once
    /// the commit `before` (of the unit before it, if under way) did.
    async fn commit_unit(
        &self,
        id: &MediaId,
        from_bytes: u64,
        unit: Bytes,
        before: Option<tokio::task::JoinHandle<Result<UploadState, ProtoError>>>,
    ) -> Result<UploadState, ProtoError> {
        let to_bytes = from_bytes + unit.len() as u64;
        let written = self
            .objects
            .put(
                &unit_path(id, from_bytes / BLOB_COMMIT_UNIT_BYTES),
                PutPayload::from(unit.clone()),
            )
            .await
            .map_err(object_failure);
        if let Some(before) = before {
            joined(before).await?;
        }
        written?;
        let moved = self
            .db
            .transact(|tx| {
                let id = id.clone();
                async move { media::commit_upload_bytes(&tx, &id, from_bytes, to_bytes).await }
            })
            .await
            .map_err(blob_store_failure)?
            .ok_or_else(unknown_blob)?;
        if moved.committed_bytes != to_bytes {
            // Another stream of the same upload moved it: this one stops here.
            return Err(ProtoError::new(
                ErrorCode::WrongOffset,
                format!(
                    "another stream committed this upload up to byte {}",
                    moved.committed_bytes
                ),
            ));
        }
        let running = lock(&self.hashes).take_for(id, from_bytes, moved.digest_kind);
        if let Some(mut running) = running {
            running.hasher.update(&unit);
            running.through_bytes = to_bytes;
            lock(&self.hashes).keep(id, running);
        }
        Ok(moved)
    }

    /// Finishes `owner`'s upload `id`: every byte committed, and the size and digest those it
    /// began with (or, begun without a hash, the `declared` one). A mismatch discards the
    /// upload.
    pub async fn finish(
        &self,
        owner: AccountId,
        id: &[u8],
        declared: &[u8],
        now_ms: u64,
    ) -> Result<BlobStatus, ProtoError> {
        let id = parse_id(id)?;
        if !declared.is_empty() {
            check_digest(declared)?;
        }
        let (record, upload) = self.owned(owner, &id, now_ms).await?;
        let expected = match (upload.digest.as_slice(), declared) {
            (begun, []) if !begun.is_empty() => begun.to_vec(),
            ([], declared) if !declared.is_empty() => declared.to_vec(),
            (begun, declared) if !begun.is_empty() && begun == declared => begun.to_vec(),
            ([], _) => {
                return Err(ProtoError::invalid(
                    "the upload began without a digest: its finish must declare one",
                ));
            }
            _ => {
                return Err(ProtoError::new(
                    ErrorCode::BlobMismatch,
                    "the finish declares another digest than the upload began with",
                ));
            }
        };
        if upload.finished {
            return Ok(status(&record, &upload));
        }
        if upload.committed_bytes < record.size_bytes {
            return Err(ProtoError::new(
                ErrorCode::WrongOffset,
                format!(
                    "only {} of {} bytes are committed: upload the rest first",
                    upload.committed_bytes, record.size_bytes
                ),
            ));
        }
        let running = lock(&self.hashes).finished(&id, record.size_bytes);
        let (size_bytes, hasher) = match running {
            Some(hasher) => (record.size_bytes, hasher),
            None => {
                let mut hasher = BlobHasher::new(upload.digest_kind);
                let mut size_bytes = 0u64;
                for index in 0..unit_count(record.size_bytes) {
                    let unit = self.read_unit_object(&id, &record, index).await?;
                    size_bytes += unit.len() as u64;
                    hasher.update(&unit);
                }
                (size_bytes, hasher)
            }
        };
        if size_bytes != record.size_bytes || hasher.finalize().as_slice() != expected {
            tracing::warn!(blob = %hex(&id), "an upload's bytes do not match its hash; discarded");
            self.remove(&id).await?;
            return Err(ProtoError::new(
                ErrorCode::BlobMismatch,
                "the uploaded bytes do not match the digest declared for the upload; the \
                 upload was discarded",
            ));
        }
        let finished = self
            .db
            .transact(|tx| {
                let id = id.clone();
                let expected = expected.clone();
                async move { media::finish_upload(&tx, &id, &expected).await }
            })
            .await
            .map_err(blob_store_failure)?
            .ok_or_else(unknown_blob)?;
        Ok(status(&record, &finished))
    }

    /// The status of the finished blob `id`, for a download by any authenticated device.
    pub async fn download_status(&self, id: &[u8], now_ms: u64) -> Result<BlobStatus, ProtoError> {
        let id = parse_id(id)?;
        let (record, upload) = self.record(&id, now_ms).await?;
        if !upload.finished {
            return Err(unknown_blob());
        }
        Ok(status(&record, &upload))
    }

    /// Opens the finished blob `id` for a download from `offset`: its status, and a reader of
    /// its bytes from there.
    pub async fn open_download(
        &self,
        id: &[u8],
        offset: u64,
        now_ms: u64,
    ) -> Result<(BlobStatus, BlobReader), ProtoError> {
        let id = parse_id(id)?;
        let (record, upload) = self.record(&id, now_ms).await?;
        if !upload.finished {
            return Err(unknown_blob());
        }
        if offset > record.size_bytes {
            return Err(ProtoError::new(
                ErrorCode::WrongOffset,
                format!("the blob has {} bytes, not {offset}", record.size_bytes),
            ));
        }
        // A blob whose record is here but whose bytes are not (kept in local files by a region
        // that failed over since: its standby copied the store, not the files) is refused
        // before its status, plainly, instead of a stream that breaks on every retry.
        let first_unit = offset.min(record.size_bytes.saturating_sub(1)) / BLOB_COMMIT_UNIT_BYTES;
        if record.size_bytes > 0
            && let Err(object_store::Error::NotFound { .. }) =
                self.objects.head(&unit_path(&id, first_unit)).await
        {
            tracing::error!(blob = %hex(&id), unit = first_unit, "a finished blob's bytes are missing from this region's storage");
            return Err(ProtoError::new(
                ErrorCode::UnknownBlob,
                "this region holds the blob's record but not its bytes (kept in local files by a \
                 region that failed over since?); ask the sender to send it again",
            ));
        }
        let reader = BlobReader {
            store: self.clone(),
            index: offset / BLOB_COMMIT_UNIT_BYTES,
            skip: usize::try_from(offset % BLOB_COMMIT_UNIT_BYTES).unwrap_or(usize::MAX),
            id,
            record: record.clone(),
        };
        Ok((status(&record, &upload), reader))
    }

    /// Removes the blobs expired at `now_ms` (their records, then their objects) and the
    /// objects whose record is gone; bounded by [`BLOB_SWEEP_TRANSACTIONS_MAX`] transactions.
    pub async fn sweep(&self, now_ms: u64) -> Result<BlobSweep, ProtoError> {
        let mut sweep = BlobSweep::default();
        // A blob is expired from its `expires_at_ms` on (as downloads see it); the index sweep
        // takes those that expire before the time it is given.
        let now_ms = now_ms.saturating_add(1);
        for _ in 0..BLOB_SWEEP_TRANSACTIONS_MAX {
            let key = IdempotencyKey::new(now_ms, rand::random());
            let expired = self
                .db
                .transact(|tx| async move {
                    media::sweep_expired(&tx, now_ms, media::MEDIA_SWEEP_ENTRIES_MAX, &key).await
                })
                .await
                .map_err(blob_store_failure)?;
            for record in &expired.expired {
                self.delete_objects(&record.id).await?;
            }
            sweep.expired_blobs += expired.expired.len();
            if !expired.more {
                break;
            }
        }
        sweep.orphaned_blobs = self.remove_orphans().await?;
        Ok(sweep)
    }

    /// The record and upload state of `id`, if it belongs to `owner` and has not expired.
    async fn owned(
        &self,
        owner: AccountId,
        id: &MediaId,
        now_ms: u64,
    ) -> Result<(MediaRecord, UploadState), ProtoError> {
        let (record, upload) = self.record(id, now_ms).await?;
        if record.owner != owner {
            return Err(unknown_blob());
        }
        Ok((record, upload))
    }

    /// The record and upload state of `id`, if it has not expired.
    async fn record(
        &self,
        id: &MediaId,
        now_ms: u64,
    ) -> Result<(MediaRecord, UploadState), ProtoError> {
        let found = self
            .db
            .transact(|tx| {
                let id = id.clone();
                async move {
                    let record = media::get(&tx, &id).await?;
                    let upload = media::upload_state(&tx, &id).await?;
                    Ok(record.zip(upload))
                }
            })
            .await
            .map_err(blob_store_failure)?;
        match found {
            Some((record, upload)) if record.expires_at_ms > now_ms => Ok((record, upload)),
            _ => Err(unknown_blob()),
        }
    }

    /// Unit `index` of blob `id`, checked to have the length the record implies.
    async fn read_unit_object(
        &self,
        id: &MediaId,
        record: &MediaRecord,
        index: u64,
    ) -> Result<Bytes, ProtoError> {
        let unit = self
            .objects
            .get(&unit_path(id, index))
            .await
            .map_err(object_failure)?
            .bytes()
            .await
            .map_err(object_failure)?;
        let expected = unit_bytes_at(record.size_bytes, index * BLOB_COMMIT_UNIT_BYTES);
        if unit.len() != expected {
            tracing::error!(blob = %hex(id), index, found = unit.len(), expected, "a blob unit has the wrong length");
            return Err(ProtoError::new(
                ErrorCode::StorageUnavailable,
                "a stored piece of the blob is damaged",
            ));
        }
        Ok(unit)
    }

    /// Removes blob `id`: its record, then its objects.
    async fn remove(&self, id: &MediaId) -> Result<(), ProtoError> {
        self.db
            .transact(|tx| {
                let id = id.clone();
                async move { media::delete(&tx, &id).await }
            })
            .await
            .map_err(blob_store_failure)?;
        self.delete_objects(id).await
    }

    async fn delete_objects(&self, id: &MediaId) -> Result<(), ProtoError> {
        lock(&self.hashes).uploads.remove(id);
        self.delete_folder(&ObjectPath::from(hex(id))).await?;
        Ok(())
    }

    /// Deletes the objects of `folder`; returns how many there were.
    async fn delete_folder(&self, folder: &ObjectPath) -> Result<usize, ProtoError> {
        let listed = self
            .objects
            .list_with_delimiter(Some(folder))
            .await
            .map_err(object_failure)?;
        for object in &listed.objects {
            match self.objects.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(object_failure(error)),
            }
        }
        Ok(listed.objects.len())
    }

    /// Removes the blob folders whose record is gone (a crash between a sweep's commit and its
    /// deletes, or a folder that is not a blob at all); returns how many.
    async fn remove_orphans(&self) -> Result<usize, ProtoError> {
        let listed = self
            .objects
            .list_with_delimiter(None)
            .await
            .map_err(object_failure)?;
        let mut removed = 0;
        for folder in listed.common_prefixes {
            let known =
                match unhex(folder.as_ref()).and_then(|bytes| MediaId::from_bytes(&bytes).ok()) {
                    Some(id) => self
                        .db
                        .transact(|tx| {
                            let id = id.clone();
                            async move { media::get(&tx, &id).await }
                        })
                        .await
                        .map_err(blob_store_failure)?
                        .is_some(),
                    None => false,
                };
            if !known && self.delete_folder(&folder).await? > 0 {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The bytes of a finished blob, one unit at a time.
#[derive(Debug)]
pub struct BlobReader {
    store: BlobStore,
    id: MediaId,
    record: MediaRecord,
    index: u64,
    skip: usize,
}

impl BlobReader {
    /// The next piece of the blob, `None` after the last.
    pub async fn next_piece(&mut self) -> Result<Option<Bytes>, ProtoError> {
        if self.index >= unit_count(self.record.size_bytes) {
            return Ok(None);
        }
        let unit = self
            .store
            .read_unit_object(&self.id, &self.record, self.index)
            .await?;
        let piece = unit.slice(self.skip.min(unit.len())..);
        self.index += 1;
        self.skip = 0;
        Ok(Some(piece))
    }
}

fn status(record: &MediaRecord, upload: &UploadState) -> BlobStatus {
    BlobStatus {
        id: record.id.as_bytes().to_vec(),
        size_bytes: record.size_bytes,
        committed_bytes: upload.committed_bytes,
        finished: upload.finished,
        expires_at_ms: record.expires_at_ms,
        region: 0,
        media: None,
        digest_kind: upload.digest_kind.into(),
    }
}

fn check_digest(digest: &[u8]) -> Result<(), ProtoError> {
    if digest.len() != BLOB_DIGEST_BYTES {
        return Err(ProtoError::invalid(format!(
            "a blob's digest is {BLOB_DIGEST_BYTES} bytes, not {}",
            digest.len()
        )));
    }
    Ok(())
}

fn parse_id(id: &[u8]) -> Result<MediaId, ProtoError> {
    if id.len() != BLOB_ID_BYTES {
        return Err(ProtoError::invalid(format!(
            "a blob id is {BLOB_ID_BYTES} bytes, not {}",
            id.len()
        )));
    }
    MediaId::from_bytes(id).map_err(|error| ProtoError::invalid(error.to_string()))
}

fn unknown_blob() -> ProtoError {
    ProtoError::new(
        ErrorCode::UnknownBlob,
        "no such blob: unknown, expired, or not this account's upload",
    )
}

/// Units of a blob of `size_bytes` (an empty blob has none).
fn unit_count(size_bytes: u64) -> u64 {
    size_bytes.div_ceil(BLOB_COMMIT_UNIT_BYTES)
}

/// Bytes of the unit starting at `offset` of a blob of `size_bytes`.
fn unit_bytes_at(size_bytes: u64, offset: u64) -> usize {
    // A unit is at most BLOB_COMMIT_UNIT_BYTES (8 MiB at most, checked at compile time).
    usize::try_from(
        size_bytes
            .saturating_sub(offset)
            .min(BLOB_COMMIT_UNIT_BYTES),
    )
    .unwrap_or(usize::MAX)
}

fn unit_path(id: &MediaId, index: u64) -> ObjectPath {
    ObjectPath::from(format!("{}/{index:08}", hex(id)))
}

fn hex(id: &MediaId) -> String {
    id.as_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// The result of a unit's commit task.
async fn joined(
    task: tokio::task::JoinHandle<Result<UploadState, ProtoError>>,
) -> Result<UploadState, ProtoError> {
    task.await.unwrap_or_else(|error| {
        Err(ProtoError::new(
            ErrorCode::Internal,
            format!("a blob unit's commit failed: {error}"),
        ))
    })
}

/// Reads `unit_bytes` more into `unit`, after what it holds (true), or until the stream ends
/// (false).
async fn read_unit(
    bytes: &mut (impl AsyncRead + Unpin),
    unit: &mut Vec<u8>,
    unit_bytes: usize,
) -> Result<bool, ProtoError> {
    let start = unit.len();
    unit.resize(start + unit_bytes, 0);
    let mut filled = 0;
    while filled < unit_bytes {
        let read = read_idle(bytes, &mut unit[start + filled..]).await?;
        if read == 0 {
            unit.truncate(start + filled);
            return Ok(false);
        }
        filled += read;
    }
    Ok(true)
}

/// One read, given up after [`BLOB_STREAM_IDLE_TIMEOUT_MS`] of silence. A stream that broke
/// (reset, connection lost) reads as its end: what was committed stays committed.
async fn read_idle(
    bytes: &mut (impl AsyncRead + Unpin),
    buffer: &mut [u8],
) -> Result<usize, ProtoError> {
    match tokio::time::timeout(
        Duration::from_millis(BLOB_STREAM_IDLE_TIMEOUT_MS),
        bytes.read(buffer),
    )
    .await
    {
        Ok(Ok(read)) => Ok(read),
        Ok(Err(error)) => {
            tracing::debug!(%error, "an upload stream broke");
            Ok(0)
        }
        Err(_) => Err(ProtoError::new(
            ErrorCode::Unavailable,
            "the upload stream was silent too long",
        )),
    }
}

fn blob_store_failure(error: StoreError) -> ProtoError {
    tracing::warn!(%error, "blob records unavailable");
    ProtoError::new(
        ErrorCode::StorageUnavailable,
        "the region's storage is unavailable; retry later",
    )
}

fn object_failure(error: object_store::Error) -> ProtoError {
    match error {
        object_store::Error::NotFound { .. } => {
            tracing::error!(%error, "a committed blob unit is missing");
            ProtoError::new(
                ErrorCode::StorageUnavailable,
                "a stored piece of the blob is missing",
            )
        }
        error => {
            tracing::warn!(%error, "blob objects unavailable");
            ProtoError::new(
                ErrorCode::StorageUnavailable,
                "the region's blob storage is unavailable; retry later",
            )
        }
    }
}

mod running_hashes;

#[cfg(test)]
mod tests;
