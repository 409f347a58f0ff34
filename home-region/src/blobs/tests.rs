//! The blob store's tests: uploads, resumption, downloads, quotas, expiry and the sweep, on local
//! files and on objects kept in the region's store.

use std::pin::Pin;
use std::task::{Context, Poll};

use fdb_layers::EmbeddedOptions;
use tokio::io::ReadBuf;

use super::*;
use crate::limits::BLOB_RUNNING_HASHES_MAX;

const UNIT: usize = BLOB_COMMIT_UNIT_BYTES as usize;

/// A region built without the `s3` feature refuses a `[blobs.s3]` section, naming the
/// build that has it, instead of keeping blobs somewhere the operator did not ask for.
#[cfg(not(feature = "s3"))]
#[test]
fn an_s3_section_without_the_s3_build_is_refused_plainly() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let config = crate::config::BlobsConfig {
        s3: Some(crate::config::S3Config {
            bucket: "relay-blobs".into(),
            region: "eu-west-1".into(),
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
        }),
        ..crate::config::BlobsConfig::default()
    };
    let db = Database::memory(fdb_layers::MemoryOptions::default()).expect("opens");
    let clock = Arc::new(relay_proto::clock::SystemClock);
    let Err(error) = configured_objects(&config, folder.path(), &db, clock) else {
        panic!("an S3 section was accepted by a build without S3");
    };
    assert!(error.contains("relay-blobs"), "{error}");
    assert!(error.contains("--features s3"), "{error}");
    assert!(!folder.path().join("blobs").exists());
}
const DAY_MS: u64 = 24 * 60 * 60 * 1_000;
const ALICE: AccountId = AccountId(1);
const BOB: AccountId = AccountId(2);

/// Bytes that arrive until `break_at`, then a broken stream (a dropped connection).
struct Breaking {
    bytes: Vec<u8>,
    at: usize,
    break_at: usize,
}

impl AsyncRead for Breaking {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at >= self.break_at {
            return Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        }
        let end = self
            .break_at
            .min(self.at + buffer.remaining())
            .min(self.at + 100_000);
        buffer.put_slice(&self.bytes[self.at..end]);
        self.at = end;
        Poll::Ready(Ok(()))
    }
}

struct Fixture {
    _folder: tempfile::TempDir,
    objects_dir: std::path::PathBuf,
    store: BlobStore,
}

fn fixture(limits: BlobLimits) -> Fixture {
    fixture_on(limits, |_, folder| {
        local_objects(folder).expect("blob folder") as Arc<dyn ObjectStore>
    })
}

/// A blob store on a store file in a temporary folder, with the objects `objects` makes of
/// the store and the folder's `blobs` subfolder.
fn fixture_on(
    limits: BlobLimits,
    objects: impl FnOnce(&Database, &std::path::Path) -> Arc<dyn ObjectStore>,
) -> Fixture {
    let folder = tempfile::tempdir().expect("tempdir");
    let db = Database::open(
        &folder.path().join("region.redb"),
        EmbeddedOptions::default(),
    )
    .expect("store opens");
    let objects_dir = folder.path().join("blobs");
    let objects = objects(&db, &objects_dir);
    Fixture {
        _folder: folder,
        objects_dir,
        store: BlobStore::new(objects, db, limits),
    }
}

/// `bytes` uploaded by alice in one go and finished, at `now_ms`.
async fn finished_upload(store: &BlobStore, bytes: &[u8], now_ms: u64) -> BlobStatus {
    let begun = store
        .begin(ALICE, &begin_of(bytes), now_ms)
        .await
        .expect("begins");
    upload_whole(store, &begun, bytes, now_ms).await;
    store
        .finish(ALICE, &begun.id, &[], now_ms)
        .await
        .expect("finishes");
    begun
}

/// ALICE uploads all of `bytes` to `begun` from offset 0 in one stream.
async fn upload_whole(store: &BlobStore, begun: &BlobStatus, bytes: &[u8], now_ms: u64) {
    let mut all = bytes;
    store
        .upload(ALICE, &at(begun, 0), &mut all, now_ms)
        .await
        .expect("uploads");
}

fn blob_bytes(length: usize) -> Vec<u8> {
    (0..length).map(|i| (i * 7 % 253) as u8).collect()
}

/// The begin of an upload of `bytes` as the SDK makes one (blob format 2: BLAKE3).
fn begin_of(bytes: &[u8]) -> BlobBegin {
    begin_under(BlobDigest::Blake3, bytes)
}

fn begin_under(kind: BlobDigest, bytes: &[u8]) -> BlobBegin {
    BlobBegin {
        size_bytes: bytes.len() as u64,
        digest: digest_of(kind, bytes),
        resume: Vec::new(),
        digest_kind: kind.into(),
    }
}

fn digest_of(kind: BlobDigest, bytes: &[u8]) -> Vec<u8> {
    let mut hasher = BlobHasher::new(kind);
    hasher.update(bytes);
    hasher.finalize().to_vec()
}

fn at(status: &BlobStatus, offset: u64) -> BlobAt {
    BlobAt {
        id: status.id.clone(),
        offset,
        ..Default::default()
    }
}

async fn download_all(store: &BlobStore, id: &[u8], offset: u64, now_ms: u64) -> Vec<u8> {
    let (_, mut reader) = store
        .open_download(id, offset, now_ms)
        .await
        .expect("download opens");
    let mut bytes = Vec::new();
    while let Some(piece) = reader.next_piece().await.expect("piece") {
        bytes.extend_from_slice(&piece);
    }
    bytes
}

fn code<T: std::fmt::Debug>(result: Result<T, ProtoError>) -> ErrorCode {
    result.expect_err("refused").code
}

#[tokio::test]
async fn an_upload_broken_mid_unit_resumes_from_the_committed_offset() {
    let fixture = fixture(BlobLimits::default());
    let store = &fixture.store;
    let bytes = blob_bytes(5 * UNIT / 2);
    let begun = store
        .begin(ALICE, &begin_of(&bytes), 0)
        .await
        .expect("begins");
    assert_eq!((begun.committed_bytes, begun.finished), (0, false));
    assert_eq!(begun.id.len(), BLOB_ID_BYTES);

    // The connection drops in the middle of the third unit: two units are kept.
    let mut broken = Breaking {
        bytes: bytes.clone(),
        at: 0,
        break_at: 2 * UNIT + 1_000,
    };
    let status = store
        .upload(ALICE, &at(&begun, 0), &mut broken, 1)
        .await
        .expect("a broken stream answers what it kept");
    assert_eq!(status.committed_bytes, 2 * UNIT as u64);
    let asked = store.status(ALICE, &begun.id, 2).await.expect("status");
    assert_eq!(asked.committed_bytes, 2 * UNIT as u64);
    assert_eq!(
        code(store.finish(ALICE, &begun.id, &[], 2).await),
        ErrorCode::WrongOffset,
        "an unfinished upload cannot be finished"
    );
    // Resuming anywhere but the committed offset is refused; from it, the rest goes in.
    let mut rest = &bytes[UNIT..];
    assert_eq!(
        code(
            store
                .upload(ALICE, &at(&begun, UNIT as u64), &mut rest, 3)
                .await
        ),
        ErrorCode::WrongOffset
    );
    let mut rest = &bytes[2 * UNIT..];
    let status = store
        .upload(ALICE, &at(&begun, 2 * UNIT as u64), &mut rest, 3)
        .await
        .expect("resumes");
    assert_eq!(status.committed_bytes, bytes.len() as u64);
    let finished = store
        .finish(ALICE, &begun.id, &[], 4)
        .await
        .expect("finishes");
    assert!(finished.finished);
    // Finishing twice answers the same.
    assert_eq!(store.finish(ALICE, &begun.id, &[], 4).await, Ok(finished));
    assert_eq!(download_all(store, &begun.id, 0, 5).await, bytes);
    assert_eq!(
        download_all(store, &begun.id, UNIT as u64 + 17, 5).await,
        bytes[UNIT + 17..],
        "a download resumes at any offset"
    );
    // Resuming the begun upload by id answers where it stands.
    let mut resume = begin_of(&bytes);
    resume.resume = begun.id.clone();
    let resumed = store.begin(ALICE, &resume, 6).await.expect("resumes by id");
    assert!(resumed.finished);
}

#[tokio::test]
async fn an_upload_begun_without_a_hash_is_checked_against_the_one_its_finish_declares() {
    let fixture = fixture(BlobLimits::default());
    let store = &fixture.store;
    let bytes = blob_bytes(2 * UNIT + 10);
    let hash = digest_of(BlobDigest::Blake3, &bytes);
    let mut begin = begin_of(&bytes);
    begin.digest = Vec::new();
    let begun = store
        .begin(ALICE, &begin, 0)
        .await
        .expect("begins without a hash");
    upload_whole(store, &begun, &bytes, 1).await;
    // A finish must declare it then, 32 bytes, and the one the bytes have.
    assert_eq!(
        code(store.finish(ALICE, &begun.id, &[], 2).await),
        ErrorCode::Malformed
    );
    assert_eq!(
        code(store.finish(ALICE, &begun.id, &[1; 5], 2).await),
        ErrorCode::Malformed
    );
    let finished = store
        .finish(ALICE, &begun.id, &hash, 3)
        .await
        .expect("finishes");
    assert!(finished.finished);
    // The declared hash is the upload's from then on: a finish again, with it or without
    // one, answers the same; with another, it is refused.
    assert_eq!(
        store.finish(ALICE, &begun.id, &[], 4).await,
        Ok(finished.clone())
    );
    assert_eq!(store.finish(ALICE, &begun.id, &hash, 4).await, Ok(finished));
    assert_eq!(
        code(store.finish(ALICE, &begun.id, &[9; 32], 4).await),
        ErrorCode::BlobMismatch
    );
    assert_eq!(download_all(store, &begun.id, 0, 5).await, bytes);

    // A declared hash the bytes do not have discards the upload, as a begun one does.
    let begun = store
        .begin(ALICE, &begin, 6)
        .await
        .expect("begins without a hash");
    upload_whole(store, &begun, &bytes, 7).await;
    assert_eq!(
        code(store.finish(ALICE, &begun.id, &[9; 32], 8).await),
        ErrorCode::BlobMismatch
    );
    assert_eq!(
        code(store.status(ALICE, &begun.id, 9).await),
        ErrorCode::UnknownBlob
    );
}

/// The digest is checked under the kind the upload began with: an upload begun for BLAKE3
/// (format 2) and finished with the bytes' SHA-256 is a mismatch, and an older device's upload,
/// begun without a kind, is checked with SHA-256.
#[tokio::test]
async fn a_finish_is_checked_under_the_digest_kind_the_upload_began_with() {
    let fixture = fixture(BlobLimits::default());
    let store = &fixture.store;
    let bytes = blob_bytes(UNIT + 10);
    for (kind, other) in [
        (BlobDigest::Blake3, BlobDigest::Sha256),
        (BlobDigest::Sha256, BlobDigest::Blake3),
    ] {
        let mut begin = begin_under(kind, &bytes);
        begin.digest = Vec::new();
        let begun = store.begin(ALICE, &begin, 0).await.expect("begins");
        // The answer names the kind, so a device can tell a region that knows it.
        assert_eq!(begun.digest_kind, i32::from(kind));
        upload_whole(store, &begun, &bytes, 1).await;
        let status = store.status(ALICE, &begun.id, 1).await.expect("status");
        assert_eq!(status.digest_kind, i32::from(kind));
        assert_eq!(
            code(
                store
                    .finish(ALICE, &begun.id, &digest_of(other, &bytes), 2)
                    .await
            ),
            ErrorCode::BlobMismatch,
            "{kind:?} upload finished with a {other:?} digest"
        );
        let begun = store.begin(ALICE, &begin, 3).await.expect("begins");
        upload_whole(store, &begun, &bytes, 4).await;
        let finished = store
            .finish(ALICE, &begun.id, &digest_of(kind, &bytes), 5)
            .await
            .expect("finishes under its own kind");
        assert!(finished.finished);
    }
}

#[tokio::test]
async fn bytes_that_do_not_match_the_hash_are_discarded_and_return_the_quota() {
    let fixture = fixture(BlobLimits::default());
    let store = &fixture.store;
    let bytes = blob_bytes(UNIT + 10);
    let mut begin = begin_of(&bytes);
    begin.digest = digest_of(BlobDigest::Blake3, b"something else");
    let begun = store.begin(ALICE, &begin, 0).await.expect("begins");
    upload_whole(store, &begun, &bytes, 1).await;
    assert_eq!(
        code(store.finish(ALICE, &begun.id, &[], 2).await),
        ErrorCode::BlobMismatch
    );
    assert_eq!(
        code(store.status(ALICE, &begun.id, 3).await),
        ErrorCode::UnknownBlob,
        "the upload is gone"
    );
    assert_eq!(
        std::fs::read_dir(&fixture.objects_dir)
            .expect("folder")
            .count(),
        0,
        "its units are deleted"
    );
    let owner_bytes = store
        .db
        .transact(|tx| async move { media::owner_bytes(&tx, ALICE).await })
        .await
        .expect("owner bytes");
    assert_eq!(owner_bytes, 0);
}

#[tokio::test]
async fn sizes_and_quotas_are_enforced() {
    let limits = BlobLimits {
        blob_bytes_max: 3 * UNIT as u64,
        account_bytes_max: 4 * UNIT as u64,
        ..BlobLimits::default()
    };
    let fixture = fixture(limits);
    let store = &fixture.store;
    let too_large = BlobBegin {
        size_bytes: 3 * UNIT as u64 + 1,
        digest: vec![0; 32],
        ..BlobBegin::default()
    };
    assert_eq!(
        code(store.begin(ALICE, &too_large, 0).await),
        ErrorCode::TooLarge
    );
    let bad_hash = BlobBegin {
        size_bytes: 1,
        digest: vec![0; 5],
        ..BlobBegin::default()
    };
    assert_eq!(
        code(store.begin(ALICE, &bad_hash, 0).await),
        ErrorCode::Malformed
    );
    let unknown_kind = BlobBegin {
        size_bytes: 1,
        digest_kind: 7,
        ..BlobBegin::default()
    };
    assert_eq!(
        code(store.begin(ALICE, &unknown_kind, 0).await),
        ErrorCode::Malformed
    );

    // A stream longer than the blob: what fits is committed, the rest refused.
    let bytes = blob_bytes(3 * UNIT);
    let begun = store
        .begin(ALICE, &begin_of(&bytes), 0)
        .await
        .expect("begins");
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"more");
    let mut longer = longer.as_slice();
    assert_eq!(
        code(store.upload(ALICE, &at(&begun, 0), &mut longer, 1).await),
        ErrorCode::TooLarge
    );
    assert_eq!(
        store
            .status(ALICE, &begun.id, 1)
            .await
            .map(|s| s.committed_bytes),
        Ok(bytes.len() as u64)
    );
    // Three units begun; two more would pass four: refused, for this account only.
    let two_units = blob_bytes(2 * UNIT);
    assert_eq!(
        code(store.begin(ALICE, &begin_of(&two_units), 2).await),
        ErrorCode::QuotaExceeded
    );
    store
        .begin(BOB, &begin_of(&two_units), 2)
        .await
        .expect("another account has its own quota");
    store
        .begin(ALICE, &begin_of(&blob_bytes(UNIT)), 2)
        .await
        .expect("what fits is taken");
}

#[tokio::test]
async fn only_the_owner_uploads_and_anyone_with_the_id_downloads_a_finished_blob() {
    let fixture = fixture(BlobLimits::default());
    let store = &fixture.store;
    let bytes = blob_bytes(1_000);
    let begun = store
        .begin(ALICE, &begin_of(&bytes), 0)
        .await
        .expect("begins");
    let mut all = bytes.as_slice();
    assert_eq!(
        code(store.upload(BOB, &at(&begun, 0), &mut all, 1).await),
        ErrorCode::UnknownBlob
    );
    assert_eq!(
        code(store.status(BOB, &begun.id, 1).await),
        ErrorCode::UnknownBlob
    );
    assert_eq!(
        code(store.open_download(&begun.id, 0, 1).await),
        ErrorCode::UnknownBlob,
        "an unfinished blob cannot be downloaded"
    );
    upload_whole(store, &begun, &bytes, 1).await;
    assert_eq!(
        code(store.finish(BOB, &begun.id, &[], 2).await),
        ErrorCode::UnknownBlob
    );
    store
        .finish(ALICE, &begun.id, &[], 2)
        .await
        .expect("finishes");
    assert_eq!(download_all(store, &begun.id, 0, 3).await, bytes);
    assert_eq!(
        code(store.open_download(&[9; BLOB_ID_BYTES], 0, 3).await),
        ErrorCode::UnknownBlob
    );
    assert_eq!(
        code(store.open_download(&[9; 3], 0, 3).await),
        ErrorCode::Malformed
    );
}

#[tokio::test]
async fn blobs_expire_after_their_retention_and_the_sweep_removes_them() {
    let fixture = fixture(BlobLimits::default());
    let store = &fixture.store;
    let retention_ms = BlobLimits::default().retention_ms;
    assert_eq!(retention_ms, 30 * DAY_MS);
    let bytes = blob_bytes(UNIT + 1);
    let finished = finished_upload(store, &bytes, 0).await;
    // An upload begun a day later, never finished.
    let later = store
        .begin(ALICE, &begin_of(&bytes), DAY_MS)
        .await
        .expect("begins");
    assert_eq!(finished.expires_at_ms, retention_ms);

    let before = retention_ms - 1;
    assert_eq!(store.sweep(before).await, Ok(BlobSweep::default()));
    assert_eq!(download_all(store, &finished.id, 0, before).await, bytes);
    // Expired but not swept yet: already refused.
    assert_eq!(
        code(store.open_download(&finished.id, 0, retention_ms).await),
        ErrorCode::UnknownBlob
    );
    assert_eq!(
        store.sweep(retention_ms).await,
        Ok(BlobSweep {
            expired_blobs: 1,
            orphaned_blobs: 0
        })
    );
    assert!(
        !fixture
            .objects_dir
            .join(hex(&parse_id(&finished.id).expect("id")))
            .exists(),
        "the expired blob's units are deleted"
    );
    assert!(store.status(ALICE, &later.id, retention_ms).await.is_ok());
    assert_eq!(
        store
            .sweep(DAY_MS + retention_ms)
            .await
            .map(|s| s.expired_blobs),
        Ok(1),
        "an unfinished upload expires too"
    );
}

/// With a standby, units live in the region's store (`keep_in = "store"`): the same upload,
/// resumption, download and sweep, through [`crate::blob_objects::StoreObjects`].
#[tokio::test]
async fn a_blob_kept_in_the_store_uploads_resumes_downloads_and_is_swept() {
    let objects = std::cell::OnceCell::new();
    let fixture = fixture_on(BlobLimits::default(), |db, _| {
        let kept = crate::blob_objects::StoreObjects::new(
            db.clone(),
            Arc::new(relay_proto::clock::SystemClock),
        );
        let _ = objects.set(kept.clone());
        kept as Arc<dyn ObjectStore>
    });
    let objects = objects.into_inner().expect("the objects");
    let store = &fixture.store;
    let bytes = blob_bytes(2 * UNIT + 10);
    let begun = store
        .begin(ALICE, &begin_of(&bytes), 0)
        .await
        .expect("begins");
    let mut broken = Breaking {
        bytes: bytes.clone(),
        at: 0,
        break_at: UNIT + UNIT / 2,
    };
    let status = store
        .upload(ALICE, &at(&begun, 0), &mut broken, 0)
        .await
        .expect("a broken stream answers what it kept");
    assert_eq!(
        status.committed_bytes, UNIT as u64,
        "one whole unit committed"
    );
    let mut rest = &bytes[UNIT..];
    store
        .upload(ALICE, &at(&begun, UNIT as u64), &mut rest, 0)
        .await
        .expect("resumes");
    store
        .finish(ALICE, &begun.id, &[], 0)
        .await
        .expect("finishes");
    assert_eq!(download_all(store, &begun.id, 0, 1).await, bytes);
    assert_eq!(
        download_all(store, &begun.id, UNIT as u64 + 3, 1).await,
        bytes[UNIT + 3..]
    );
    let retention_ms = BlobLimits::default().retention_ms;
    assert_eq!(
        store.sweep(retention_ms).await.map(|s| s.expired_blobs),
        Ok(1)
    );
    let left = objects.list_with_delimiter(None).await.expect("lists");
    assert!(
        left.objects.is_empty() && left.common_prefixes.is_empty(),
        "the swept blob's units are gone: {left:?}"
    );
}

/// A finished blob whose units are gone (local files across a failover) is refused plainly
/// before its status, not as a stream that breaks on every retry.
#[tokio::test]
async fn a_finished_blob_whose_bytes_are_gone_is_refused_before_its_status() {
    let fixture = fixture(BlobLimits::default());
    let store = &fixture.store;
    let begun = finished_upload(store, &blob_bytes(UNIT + 5), 0).await;
    std::fs::remove_dir_all(&fixture.objects_dir).expect("the files are lost");
    std::fs::create_dir_all(&fixture.objects_dir).expect("an empty folder");
    let refused = store
        .open_download(&begun.id, 0, 1)
        .await
        .expect_err("refused");
    assert_eq!(refused.code, ErrorCode::UnknownBlob);
    assert!(refused.message.contains("not its bytes"), "{refused}");
}

#[tokio::test]
async fn garbage_units_are_overwritten_or_swept() {
    let fixture = fixture(BlobLimits::default());
    let store = &fixture.store;
    let bytes = blob_bytes(2 * UNIT);
    let begun = store
        .begin(ALICE, &begin_of(&bytes), 0)
        .await
        .expect("begins");
    let id = parse_id(&begun.id).expect("id");
    // A unit written before a crash, never recorded, holding other bytes; and a folder of
    // a blob whose record is gone.
    store
        .objects
        .put(&unit_path(&id, 1), PutPayload::from(vec![0xEE; 100]))
        .await
        .expect("stray unit");
    let orphan = MediaId::from_bytes(&[0xAB; BLOB_ID_BYTES]).expect("id");
    store
        .objects
        .put(&unit_path(&orphan, 0), PutPayload::from(vec![1; 10]))
        .await
        .expect("orphan unit");
    store
        .objects
        .put(
            &ObjectPath::from("not-a-blob/x"),
            PutPayload::from(vec![1; 10]),
        )
        .await
        .expect("stray folder");
    assert_eq!(
        store.sweep(1).await,
        Ok(BlobSweep {
            expired_blobs: 0,
            orphaned_blobs: 2
        }),
        "folders without a record go; the live upload stays"
    );
    assert!(
        !fixture
            .objects_dir
            .join(hex(&orphan))
            .join("00000000")
            .exists()
    );
    let mut all = bytes.as_slice();
    store
        .upload(ALICE, &at(&begun, 0), &mut all, 1)
        .await
        .expect("uploads over the stray unit");
    store
        .finish(ALICE, &begun.id, &[], 2)
        .await
        .expect("finishes");
    assert_eq!(download_all(store, &begun.id, 0, 3).await, bytes);

    // A unit damaged on disk after the finish is refused, never served.
    let unit_file = fixture.objects_dir.join(hex(&id)).join("00000001");
    std::fs::write(&unit_file, b"short").expect("damage");
    let (_, mut reader) = store.open_download(&begun.id, 0, 3).await.expect("opens");
    reader.next_piece().await.expect("first unit is fine");
    assert_eq!(
        reader.next_piece().await.map_err(|error| error.code),
        Err(ErrorCode::StorageUnavailable)
    );
}

/// An upload resumed on a store that restarted (no running hash in memory) is read back at
/// finish: its bytes are checked all the same, and a mismatch is still found.
#[tokio::test]
async fn an_upload_resumed_after_a_restart_is_read_back_and_checked_at_finish() {
    let fixture = fixture(BlobLimits::default());
    let store = &fixture.store;
    let restarted = || BlobStore::new(store.objects.clone(), store.db.clone(), store.limits);
    for (kind, wrong_hash) in [
        (BlobDigest::Sha256, false),
        (BlobDigest::Sha256, true),
        (BlobDigest::Blake3, false),
        (BlobDigest::Blake3, true),
    ] {
        let bytes = blob_bytes(5 * UNIT / 2);
        let mut begin = begin_under(kind, &bytes);
        if wrong_hash {
            begin.digest = digest_of(kind, b"something else");
        }
        let begun = store.begin(ALICE, &begin, 0).await.expect("begins");
        let mut first = &bytes[..UNIT];
        store
            .upload(ALICE, &at(&begun, 0), &mut first, 1)
            .await
            .expect("the first unit");
        let after = restarted();
        let mut rest = &bytes[UNIT..];
        after
            .upload(ALICE, &at(&begun, UNIT as u64), &mut rest, 2)
            .await
            .expect("the rest");
        let finished = after.finish(ALICE, &begun.id, &[], 3).await;
        if wrong_hash {
            assert_eq!(code(finished), ErrorCode::BlobMismatch);
        } else {
            assert!(finished.expect("finishes").finished);
            assert_eq!(download_all(&after, &begun.id, 0, 4).await, bytes);
        }
    }
}

#[test]
fn a_running_hash_covers_units_committed_in_order_once() {
    let id = |n: u8| MediaId::from_bytes(&[n; BLOB_ID_BYTES]).expect("id");
    let unit = [7u8; 10];
    let mut hashes = RunningHashes::default();
    // In order: kept, and it is the hash of the bytes.
    for from_bytes in [0, 10] {
        let mut running = hashes
            .take_for(&id(1), from_bytes, BlobDigest::Blake3)
            .expect("taken");
        running.hasher.update(&unit);
        running.through_bytes = from_bytes + 10;
        hashes.keep(&id(1), running);
    }
    assert_eq!(
        hashes
            .finished(&id(1), 20)
            .map(|hasher| hasher.finalize().to_vec()),
        Some(digest_of(BlobDigest::Blake3, &[7u8; 20]))
    );
    // A unit past the hash (a restart lost it): none.
    assert!(hashes.take_for(&id(2), 10, BlobDigest::Sha256).is_none());
    // Two streams commit the same unit: whichever bytes the object kept, none is trusted.
    let first = hashes
        .take_for(&id(3), 0, BlobDigest::Sha256)
        .expect("taken");
    assert!(
        hashes.take_for(&id(3), 0, BlobDigest::Sha256).is_none(),
        "a second commit of unit 0"
    );
    hashes.keep(&id(3), first);
    assert!(hashes.finished(&id(3), 10).is_none());
    // Short of the size: none.
    let running = hashes
        .take_for(&id(4), 0, BlobDigest::Sha256)
        .expect("taken");
    hashes.keep(&id(4), running);
    assert!(hashes.finished(&id(4), 10).is_none());
    // Bounded: the upload begun longest ago goes first.
    let mut hashes = RunningHashes::default();
    for n in 0..=BLOB_RUNNING_HASHES_MAX {
        let key = MediaId::from_bytes(&(n as u64).to_le_bytes().repeat(2)).expect("id");
        let running = hashes.take_for(&key, 0, BlobDigest::Sha256).expect("taken");
        hashes.keep(&key, running);
    }
    assert_eq!(hashes.uploads.len(), BLOB_RUNNING_HASHES_MAX);
    let first = MediaId::from_bytes(&0u64.to_le_bytes().repeat(2)).expect("id");
    assert!(!hashes.uploads.contains_key(&first));
}

/// Local objects whose writes of unit 0 are slow and of one unit fail: commits that overlap.
#[derive(Debug)]
struct Uneven {
    files: Arc<dyn ObjectStore>,
    slow_ms: u64,
    failing_unit: Option<u64>,
}

impl std::fmt::Display for Uneven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Uneven({})", self.files)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Uneven {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        let unit: Option<u64> = location.filename().and_then(|name| name.parse().ok());
        if unit == Some(0) {
            tokio::time::sleep(Duration::from_millis(self.slow_ms)).await;
        }
        if unit.is_some() && unit == self.failing_unit {
            return Err(object_store::Error::Generic {
                store: "Uneven",
                source: "a unit that cannot be written".into(),
            });
        }
        self.files.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.files.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.files.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures_util::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>
    {
        self.files.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
    {
        self.files.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.files.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.files.copy_opts(from, to, options).await
    }
}

/// Units are written while the ones before them still are, but their offsets move in order:
/// a first unit slower to write than the next ones holds them back, and a unit that cannot be
/// written stops the offset before it, whatever was written after it.
#[tokio::test]
async fn overlapping_commits_record_offsets_in_order_and_stop_at_a_failed_unit() {
    for failing_unit in [None, Some(2)] {
        let fixture = fixture_on(BlobLimits::default(), |_, folder| {
            Arc::new(Uneven {
                files: local_objects(folder).expect("blob folder"),
                slow_ms: 300,
                failing_unit,
            }) as Arc<dyn ObjectStore>
        });
        let store = &fixture.store;
        let bytes = blob_bytes(4 * UNIT + 10);
        let begun = store
            .begin(ALICE, &begin_of(&bytes), 0)
            .await
            .expect("begins");
        let mut all = bytes.as_slice();
        let uploaded = store.upload(ALICE, &at(&begun, 0), &mut all, 1).await;
        let status = store.status(ALICE, &begun.id, 2).await.expect("status");
        match failing_unit {
            None => {
                assert_eq!(
                    uploaded.expect("uploads").committed_bytes,
                    bytes.len() as u64
                );
                assert!(
                    store
                        .finish(ALICE, &begun.id, &[], 3)
                        .await
                        .expect("finishes")
                        .finished
                );
                assert_eq!(download_all(store, &begun.id, 0, 4).await, bytes);
            }
            Some(unit) => {
                assert_eq!(code(uploaded), ErrorCode::StorageUnavailable);
                assert_eq!(status.committed_bytes, unit * UNIT as u64);
            }
        }
    }
}

/// Upload streams share one bound on the units they hold in memory: at its tightest (one unit
/// for the whole store) two uploads at once still both go through, one unit at a time.
#[tokio::test]
async fn uploads_at_once_share_the_bound_on_units_in_memory_and_all_go_through() {
    let limits = BlobLimits {
        units_in_memory_max: 1,
        ..BlobLimits::default()
    };
    let fixture = fixture(limits);
    let store = &fixture.store;
    let first = blob_bytes(3 * UNIT + 5);
    let second: Vec<u8> = blob_bytes(2 * UNIT + 9).iter().map(|byte| !byte).collect();
    let one = store
        .begin(ALICE, &begin_of(&first), 0)
        .await
        .expect("begins");
    let two = store
        .begin(ALICE, &begin_of(&second), 0)
        .await
        .expect("begins");
    let upload = |begun: &BlobStatus, bytes: &[u8]| {
        let at = at(begun, 0);
        let bytes = bytes.to_vec();
        async move {
            let mut all = bytes.as_slice();
            store.upload(ALICE, &at, &mut all, 1).await
        }
    };
    let (uploaded_one, uploaded_two) = tokio::join!(upload(&one, &first), upload(&two, &second));
    assert_eq!(
        uploaded_one.expect("first").committed_bytes,
        first.len() as u64
    );
    assert_eq!(
        uploaded_two.expect("second").committed_bytes,
        second.len() as u64
    );
    for (begun, bytes) in [(&one, &first), (&two, &second)] {
        assert!(
            store
                .finish(ALICE, &begun.id, &[], 2)
                .await
                .expect("finishes")
                .finished
        );
        assert_eq!(&download_all(store, &begun.id, 0, 3).await, bytes);
    }
    assert_eq!(
        store.units_in_memory.available_permits(),
        1,
        "every unit let go"
    );
}
