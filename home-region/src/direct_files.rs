//! Local blob files whose whole units are written around the page cache.
//!
//! A blob unit is written once, fsynced, and read back only when someone downloads it. Written
//! through the page cache, each of its bytes is first copied into a cache page the kernel
//! allocates for it; on the 2-core virtual machine of the benchmarks that copy was 38 % of the
//! region's samples during 200 MB uploads (`copy_folio_from_iter_atomic`, under `write`),
//! because memory the guest freed goes back to the host and every fresh page costs a fault
//! there. Written with `O_DIRECT`, the disk takes the bytes straight from the unit's buffer:
//! no copy, no cache pages, and the fsync after has nothing dirty to flush.
//!
//! [`DirectFiles`] is `object_store`'s `LocalFileSystem` (with fsync) except for one case of
//! `put`: a payload that is one piece, starting on a page boundary in memory and a whole
//! number of pages long (every unit but a blob's last; the region allocates unit buffers so,
//! [`page_aligned_buffer`]) is staged, fsynced and renamed into place as `LocalFileSystem`
//! does, with the staged file opened `O_DIRECT`. Every other write, every read, list and
//! delete, and every write on a file system that refuses `O_DIRECT` (the first refusal turns it
//! off for the process) goes to `LocalFileSystem` unchanged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// Bytes a direct write's buffer address and length are multiples of: a page, which covers
/// every logical block size (512 or 4,096 bytes).
pub const DIRECT_ALIGN_BYTES: usize = 4096;

/// Staged files of direct writes are named after their object, `#` and a number from this
/// one on. A number, so listings skip them as they skip `LocalFileSystem`'s own staged files
/// (`#1`, `#2`, …); a large one, so the two rarely meet (when they do, `create_new` keeps them
/// apart and the later one takes the next number).
const STAGED_NUMBER_FIRST: u32 = 1_000_000;

/// How many numbered staged names a direct write tries before it leaves the write to
/// `LocalFileSystem` (two streams of one upload may stage the same unit at once).
const STAGED_NAMES_MAX: u32 = 64;

/// A vector with room for `bytes` more bytes after `len()` whose length (its padding, zeros) is
/// what it takes for the next byte to start on a [`DIRECT_ALIGN_BYTES`] boundary: the bytes
/// appended after it can be written with `O_DIRECT` (slice the `Bytes` made of it past the
/// padding).
pub fn page_aligned_buffer(bytes: usize) -> Vec<u8> {
    let mut buffer: Vec<u8> = Vec::with_capacity(bytes + DIRECT_ALIGN_BYTES);
    let padding = buffer
        .as_ptr()
        .align_offset(DIRECT_ALIGN_BYTES)
        .min(DIRECT_ALIGN_BYTES);
    buffer.resize(padding, 0);
    buffer
}

/// Local files, whole units written with `O_DIRECT` (see the module's documentation).
#[derive(Debug)]
pub struct DirectFiles {
    files: LocalFileSystem,
    /// Off once the file system refused `O_DIRECT`.
    direct: AtomicBool,
    /// Objects written directly, for tests and the curious.
    direct_writes: AtomicU64,
}

impl std::fmt::Display for DirectFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DirectFiles({})", self.files)
    }
}

impl DirectFiles {
    /// Files under `folder` (which must exist), each write fsynced, a folder removed with its
    /// last file.
    pub fn new(folder: &FsPath) -> object_store::Result<Self> {
        let files = LocalFileSystem::new_with_prefix(folder)?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(DirectFiles {
            files,
            direct: AtomicBool::new(true),
            direct_writes: AtomicU64::new(0),
        })
    }

    /// Objects written with `O_DIRECT` so far.
    pub fn direct_writes(&self) -> u64 {
        self.direct_writes.load(Ordering::Relaxed)
    }

    /// The one piece of `payload` if it can be written directly.
    fn direct_piece(&self, payload: &PutPayload, opts: &PutOptions) -> Option<Bytes> {
        if !self.direct.load(Ordering::Relaxed)
            || opts.mode != PutMode::Overwrite
            || !opts.attributes.is_empty()
        {
            return None;
        }
        let [piece] = payload.as_ref() else {
            return None;
        };
        let aligned = piece.as_ptr().align_offset(DIRECT_ALIGN_BYTES) == 0
            && !piece.is_empty()
            && piece.len().is_multiple_of(DIRECT_ALIGN_BYTES);
        aligned.then(|| piece.clone())
    }
}

/// What became of a direct write.
enum Direct {
    Written(PutResult),
    /// The file system refuses `O_DIRECT`.
    Refused,
    /// Not written for another reason (no free staged name): left to `LocalFileSystem`.
    Passed,
}

/// Stages `piece` beside `path` with `O_DIRECT`, fsyncs it, renames it into place and fsyncs
/// the folder. Folders missing on the way are made, each fsynced into its parent.
fn write_direct(path: &FsPath, piece: &[u8]) -> std::io::Result<Direct> {
    let Some(folder) = path.parent() else {
        return Ok(Direct::Passed);
    };
    if !folder.exists() {
        make_folders(folder)?;
    }
    for number in STAGED_NUMBER_FIRST..STAGED_NUMBER_FIRST + STAGED_NAMES_MAX {
        let mut staged = path.as_os_str().to_owned();
        staged.push(format!("#{number}"));
        let staged = PathBuf::from(staged);
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(&staged);
        let mut file = match opened {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) if error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                let _ = std::fs::remove_file(&staged);
                return Ok(Direct::Refused);
            }
            Err(error) => return Err(error),
        };
        let written = file
            .write_all(piece)
            .and_then(|()| file.sync_all())
            .and_then(|()| file.metadata());
        let metadata = match written {
            Ok(metadata) => metadata,
            // A file system may take the open and refuse the write (EINVAL) instead.
            Err(error) if error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                drop(file);
                let _ = std::fs::remove_file(&staged);
                return Ok(Direct::Refused);
            }
            Err(error) => {
                drop(file);
                let _ = std::fs::remove_file(&staged);
                return Err(error);
            }
        };
        drop(file);
        if let Err(error) = std::fs::rename(&staged, path) {
            let _ = std::fs::remove_file(&staged);
            return Err(error);
        }
        File::open(folder)?.sync_all()?;
        return Ok(Direct::Written(PutResult {
            e_tag: Some(e_tag(&metadata)),
            version: None,
            extensions: Default::default(),
        }));
    }
    Ok(Direct::Passed)
}

/// Makes `folder` and the folders above it that are missing, fsyncing each into its parent.
fn make_folders(folder: &FsPath) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = folder;
    while !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    std::fs::create_dir_all(folder)?;
    for made in missing {
        if let Some(parent) = made.parent() {
            File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// The entity tag `LocalFileSystem` gives a file: inode, modification time in microseconds
/// and size, in hexadecimal.
fn e_tag(metadata: &std::fs::Metadata) -> String {
    let inode = std::os::unix::fs::MetadataExt::ino(metadata);
    let mtime = metadata
        .modified()
        .ok()
        .and_then(|mtime| mtime.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    format!("\"{inode:x}-{mtime:x}-{:x}\"", metadata.len())
}

fn direct_failure(error: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "DirectFiles",
        source: error.into(),
    }
}

#[async_trait]
impl ObjectStore for DirectFiles {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if let Some(piece) = self.direct_piece(&payload, &opts) {
            let path = self.files.path_to_filesystem(location)?;
            let written = tokio::task::spawn_blocking(move || write_direct(&path, &piece))
                .await
                .map_err(|error| direct_failure(std::io::Error::other(error)))?
                .map_err(direct_failure)?;
            match written {
                Direct::Written(result) => {
                    self.direct_writes.fetch_add(1, Ordering::Relaxed);
                    return Ok(result);
                }
                Direct::Refused => {
                    tracing::info!(
                        store = %self.files,
                        "the blob folder's file system refuses O_DIRECT: units are written \
                         through the page cache"
                    );
                    self.direct.store(false, Ordering::Relaxed);
                }
                Direct::Passed => {}
            }
        }
        self.files.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.files.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.files.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.files.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.files.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.files.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.files.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;

    use super::*;

    fn aligned(bytes: &[u8]) -> Bytes {
        let mut buffer = page_aligned_buffer(bytes.len());
        let padding = buffer.len();
        buffer.extend_from_slice(bytes);
        Bytes::from(buffer).slice(padding..)
    }

    #[tokio::test]
    async fn whole_pages_go_around_the_cache_and_read_back_as_written() {
        let folder = tempfile::tempdir().expect("folder");
        let files = DirectFiles::new(folder.path()).expect("files");
        let unit: Vec<u8> = (0..4 * DIRECT_ALIGN_BYTES)
            .map(|i| (i % 251) as u8)
            .collect();
        let piece = aligned(&unit);
        assert_eq!(piece.as_ptr().align_offset(DIRECT_ALIGN_BYTES), 0);
        let location = Path::from("blob/0");
        files
            .put(&location, PutPayload::from(piece.clone()))
            .await
            .expect("put");
        // Again over it (a unit committed twice), then a short last unit, which is not
        // whole pages and goes through the cache.
        files
            .put(&location, PutPayload::from(piece))
            .await
            .expect("put again");
        let last = Path::from("blob/1");
        files
            .put(&last, PutPayload::from(Bytes::from_static(b"the end")))
            .await
            .expect("put the last");
        let on_o_direct = files.direct.load(Ordering::Relaxed);
        assert_eq!(files.direct_writes(), if on_o_direct { 2 } else { 0 });
        let read = files
            .get(&location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(read.as_ref(), unit.as_slice());
        let read = files.get(&last).await.expect("get").bytes().await;
        assert_eq!(read.expect("bytes").as_ref(), b"the end");
        // Nothing staged is left behind, and a folder goes with its last file.
        let names: Vec<String> = std::fs::read_dir(folder.path().join("blob"))
            .expect("the blob's folder")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A staged file a crash left is not an object.
        std::fs::write(folder.path().join("blob/0#1000000"), b"left").expect("staged");
        let listed: Vec<ObjectMeta> = futures_util::TryStreamExt::try_collect(files.list(None))
            .await
            .expect("list");
        assert_eq!(listed.len(), 2, "{listed:?}");
        std::fs::remove_file(folder.path().join("blob/0#1000000")).expect("removed");
        files.delete(&location).await.expect("delete");
        files.delete(&last).await.expect("delete");
        assert!(!folder.path().join("blob").exists());
    }

    #[test]
    fn an_aligned_buffer_pads_to_the_next_page() {
        for bytes in [1, DIRECT_ALIGN_BYTES, 1 << 20] {
            let mut buffer = page_aligned_buffer(bytes);
            let padding = buffer.len();
            assert!(padding < DIRECT_ALIGN_BYTES);
            buffer.extend(std::iter::repeat_n(7u8, bytes));
            assert_eq!(
                buffer[padding..].as_ptr().align_offset(DIRECT_ALIGN_BYTES),
                0
            );
            assert!(buffer.capacity() >= padding + bytes);
        }
    }
}
