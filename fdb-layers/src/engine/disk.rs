//! The embedded backend's file, and how the engine survives its disk.
//!
//! - [`StoreFile`] holds the open redb database of one file and opens it again after a failed
//!   commit. redb refuses every write (and every read that misses its cache) after an I/O error
//!   until the database is closed and opened again, and repairs the file on that open, so a
//!   reopen is how the engine gets back to a consistent state without a process restart. Reads
//!   take the database only for as long as they begin a read transaction, so the writer can swap
//!   it; a snapshot of the previous database then fails with `TransactionTooOld` and its
//!   transaction runs again on the new one.
//! - The file is opened through [`FaultyFile`], a redb `StorageBackend` around the real file
//!   that fails writes, syncs and resizes on demand ([`DiskFaults`]): injected disk failures
//!   run redb's real failure path, not a shortcut above it.
//! - [`contained`] runs a redb call and turns a panic into [`StoreError::Corrupt`] with what
//!   panicked. redb trusts the pages it reads and may panic on a damaged one; a panic there
//!   must not take the region down, so every redb call of the engine goes through it. Opening
//!   checks the file's integrity first (every page checksum of the committed trees), so a
//!   file damaged while the process was down is refused with a clear error instead.
//!
//! The default panic hook still prints a contained panic (with its location) on stderr, and
//! the engine logs it with `tracing::error`: a process-wide hook installed by a library would
//! hide the panics of every other thread, and the location is what a redb bug report needs.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use redb::backends::FileBackend;
use redb::{BackendError, ReadableDatabase, StorageBackend, TableDefinition};

use crate::error::StoreError;
use crate::limits::{STORE_REOPEN_ATTEMPTS_MAX, STORE_REOPEN_DELAY_MS};

/// The table holding every key and value of the database.
pub(crate) const DATA_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
/// The table holding the engine's own state (the last commit version).
pub(crate) const META_TABLE: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The key of the last commit version in [`META_TABLE`].
pub(crate) const VERSION_KEY: &str = "version";
/// Meta key present while a standby installs a full copy into the file (its value is the
/// copy's version): such a file is not a store until the install finishes.
pub(crate) const INSTALLING_KEY: &str = "installing";

/// How a disk fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFailure {
    /// The disk is full (`ENOSPC`): writes that need new space fail (past the end of what the
    /// file has written, as sparse space from a resize is not backed), while overwrites of
    /// written bytes, syncs and resizes still work, as on a real filesystem.
    NoSpace,
    /// The device fails (`EIO`): every write, sync and resize fails.
    Io,
}

impl DiskFailure {
    fn error(self) -> io::Error {
        match self {
            DiskFailure::NoSpace => io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected disk failure)",
            ),
            DiskFailure::Io => io::Error::other("input/output error (injected disk failure)"),
        }
    }
}

/// Disk failures injected below redb, into the embedded backend's file: while one is set, the
/// file's writes, syncs and resizes fail as a failing disk's would (reads still work). Cheap
/// to clone; every clone is the same switch. Pass one in [`crate::EmbeddedOptions`] to fail
/// the disk on demand (tests, drills); the seeded faults of [`crate::FaultConfig`] use the same
/// switch to fail one operation of one group commit, whatever it is.
#[derive(Clone, Default)]
pub struct DiskFaults {
    inner: Arc<DiskFaultState>,
}

#[derive(Default)]
struct DiskFaultState {
    /// Whether any failure is set, so a healthy disk costs one load per operation.
    armed: AtomicBool,
    failures: Mutex<Failures>,
    /// Operations that failed so far.
    failed_operations: AtomicU64,
}

#[derive(Default)]
struct Failures {
    /// Set by [`DiskFaults::fail`]: every operation fails until [`DiskFaults::heal`].
    persistent: Option<DiskFailure>,
    /// Set for one group commit by the seeded faults: operations pass until the count runs
    /// out, then fail.
    injected: Option<(u64, DiskFailure)>,
    /// The next write panics, as redb does on some damaged pages (tests of the containment).
    #[cfg(test)]
    panic_next_write: bool,
}

impl fmt::Debug for DiskFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failures = self.lock();
        f.debug_struct("DiskFaults")
            .field("persistent", &failures.persistent)
            .field("injected", &failures.injected)
            .field("failed_operations", &self.failed_operations())
            .finish()
    }
}

impl DiskFaults {
    /// A healthy disk.
    pub fn new() -> Self {
        DiskFaults::default()
    }

    /// From now on every write, sync and resize of the file fails with `failure`, until
    /// [`DiskFaults::heal`].
    pub fn fail(&self, failure: DiskFailure) {
        let mut failures = self.lock();
        failures.persistent = Some(failure);
        self.rearm(&failures);
    }

    /// Ends the failure set by [`DiskFaults::fail`].
    pub fn heal(&self) {
        let mut failures = self.lock();
        failures.persistent = None;
        self.rearm(&failures);
    }

    /// How many operations failed so far.
    pub fn failed_operations(&self) -> u64 {
        self.inner.failed_operations.load(Ordering::Relaxed)
    }

    /// Lets `passing` more operations through, then fails the following ones with `failure`,
    /// until [`DiskFaults::end_injected`].
    pub(crate) fn inject(&self, passing: u64, failure: DiskFailure) {
        let mut failures = self.lock();
        failures.injected = Some((passing, failure));
        self.rearm(&failures);
    }

    /// Ends a failure set by [`DiskFaults::inject`].
    pub(crate) fn end_injected(&self) {
        let mut failures = self.lock();
        failures.injected = None;
        self.rearm(&failures);
    }

    /// Makes the next write of the file panic, inside redb's commit.
    #[cfg(test)]
    pub(crate) fn panic_next_write(&self) {
        let mut failures = self.lock();
        failures.panic_next_write = true;
        self.inner.armed.store(true, Ordering::Release);
    }

    /// Whether the next operation may go to the file; `allocates`: it needs new space.
    fn check(&self, allocates: bool) -> io::Result<()> {
        if !self.inner.armed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut failures = self.lock();
        #[cfg(test)]
        if std::mem::take(&mut failures.panic_next_write) {
            self.rearm(&failures);
            drop(failures);
            panic!("injected panic below redb");
        }
        let Failures {
            persistent,
            injected,
            ..
        } = &mut *failures;
        let failure = match (persistent, injected) {
            (Some(DiskFailure::NoSpace), _) if !allocates => return Ok(()),
            (Some(failure), _) => *failure,
            (None, Some((0, failure))) => *failure,
            (None, Some((passing, _))) => {
                *passing -= 1;
                return Ok(());
            }
            (None, None) => return Ok(()),
        };
        self.inner.failed_operations.fetch_add(1, Ordering::Relaxed);
        Err(failure.error())
    }

    fn rearm(&self, failures: &Failures) {
        let armed = failures.persistent.is_some() || failures.injected.is_some();
        self.inner.armed.store(armed, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, Failures> {
        // Every update completes under the lock.
        self.inner
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The store's file as redb's storage: the real file, with the writes, syncs and resizes
/// checked against [`DiskFaults`] first. Locks and reads go straight to the file.
#[derive(Debug)]
struct FaultyFile {
    file: FileBackend,
    faults: DiskFaults,
    /// The end of the bytes written to the file (its length when opened, then the furthest
    /// write): a full disk refuses writes past it.
    written_end: AtomicU64,
}

impl StorageBackend for FaultyFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.faults.check(false)?;
        self.file.set_len(len)?;
        self.written_end.fetch_min(len, Ordering::Relaxed);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.faults.check(false)?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let end = offset.saturating_add(data.len() as u64);
        self.faults
            .check(end > self.written_end.load(Ordering::Relaxed))?;
        self.file.write(offset, data)?;
        self.written_end.fetch_max(end, Ordering::Relaxed);
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// The redb database of one file, opened again after a failure.
pub(crate) struct StoreFile {
    path: PathBuf,
    faults: DiskFaults,
    check_integrity_on_open: bool,
    /// The open database; `None` while it is being opened again, or after that failed.
    handle: RwLock<Option<redb::Database>>,
    /// Why the file is not open, while `handle` is `None`.
    closed_because: Mutex<String>,
    /// The file is being opened again (`handle` is `None` meanwhile).
    reopening: AtomicBool,
}

impl StoreFile {
    /// Opens the file at `path`, checking its integrity first if asked, and returns the last
    /// commit version. Where there is no file, a new store is made beside it and renamed into
    /// place, so that an empty file is never a store the engine made: one is refused as
    /// damaged (a truncated or half-restored store), where redb would start it empty.
    pub(crate) fn open(
        path: &Path,
        faults: DiskFaults,
        check_integrity_on_open: bool,
    ) -> Result<(Arc<StoreFile>, u64), StoreError> {
        let (file, version) = Self::open_any(path, faults, check_integrity_on_open)?;
        file.with("checking for an unfinished install", |redb| {
            refuse_unfinished_install(redb, path)
        })?;
        Ok((file, version))
    }

    /// Opens the file as [`Self::open`] does, also when a standby's install into it is
    /// unfinished (for the standby, which finishes or redoes it).
    pub(crate) fn open_any(
        path: &Path,
        faults: DiskFaults,
        check_integrity_on_open: bool,
    ) -> Result<(Arc<StoreFile>, u64), StoreError> {
        match std::fs::metadata(path) {
            Ok(metadata) if metadata.len() == 0 => {
                return Err(StoreError::Corrupt {
                    what: "store file",
                    detail: format!(
                        "{} is empty: the store was truncated or not restored; restore it from \
                         a backup, or delete it to start an empty store",
                        path.display()
                    ),
                });
            }
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => create(path, &faults)?,
            Err(error) => return Err(StoreError::storage(redb::StorageError::Io(error))),
        }
        let redb = open_redb(path, &faults, check_integrity_on_open)?;
        let version = durable_version(&redb)?;
        let file = StoreFile {
            path: path.to_path_buf(),
            faults,
            check_integrity_on_open,
            handle: RwLock::new(Some(redb)),
            closed_because: Mutex::new(String::new()),
            reopening: AtomicBool::new(false),
        };
        Ok((Arc::new(file), version))
    }

    /// The switch of the file's injected disk failures.
    pub(crate) fn faults(&self) -> &DiskFaults {
        &self.faults
    }

    /// Runs `call` with the open database (contained, see [`contained`]). While the file is
    /// being opened again, `TransactionTooOld`, which `transact` retries after a pause (a
    /// reopen is short, and reads go on after it); while it is closed after a failed reopen,
    /// `Unavailable`. The database is held only during the call.
    pub(crate) fn with<T>(
        &self,
        what: &'static str,
        call: impl FnOnce(&redb::Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let handle = self
            .handle
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match handle.as_ref() {
            Some(redb) => contained(what, || call(redb))?,
            None if self.reopening.load(Ordering::Acquire) => Err(StoreError::TransactionTooOld),
            None => Err(StoreError::Unavailable(format!(
                "the store file is not open: {}",
                self.closed_because()
            ))),
        }
    }

    /// Whether the file is open.
    pub(crate) fn is_open(&self) -> bool {
        self.handle
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some()
    }

    /// Closes the database and opens the file again (`check_integrity`: verifying every page
    /// first, whatever the options say), in at most [`STORE_REOPEN_ATTEMPTS_MAX`] attempts.
    /// Returns the durable commit version. Read transactions of the closed database fail from
    /// now on; on failure the file stays closed until a later reopen succeeds. Called by the
    /// one thread writing the store, never with a write transaction open.
    pub(crate) fn reopen(&self, check_integrity: bool) -> Result<u64, StoreError> {
        self.reopening.store(true, Ordering::Release);
        let reopened = self.close_and_open(check_integrity);
        self.reopening.store(false, Ordering::Release);
        reopened
    }

    fn close_and_open(&self, check_integrity: bool) -> Result<u64, StoreError> {
        let closed = self
            .handle
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(redb) = closed {
            // After an I/O error the close skips every write and reports that error; the open
            // below repairs the file whatever the close did.
            match contained("closing the store file", || redb.close()) {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "closing the failed store file"),
                Err(error) => tracing::warn!(%error, "closing the store file panicked"),
            }
        }
        let mut last_error = None;
        for attempt in 1..=STORE_REOPEN_ATTEMPTS_MAX {
            let opened = open_redb(
                &self.path,
                &self.faults,
                check_integrity || self.check_integrity_on_open,
            )
            .and_then(|redb| durable_version(&redb).map(|version| (redb, version)));
            match opened {
                Ok((redb, version)) => {
                    *self
                        .handle
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(redb);
                    tracing::info!(
                        path = %self.path.display(),
                        version,
                        attempt,
                        "store file opened again"
                    );
                    return Ok(version);
                }
                Err(error) => {
                    tracing::warn!(%error, attempt, path = %self.path.display(), "opening the store file again failed");
                    last_error = Some(error);
                    if attempt < STORE_REOPEN_ATTEMPTS_MAX {
                        std::thread::sleep(Duration::from_millis(STORE_REOPEN_DELAY_MS));
                    }
                }
            }
        }
        let error = last_error.unwrap_or(StoreError::Closed);
        self.set_closed_because(format!("opening it again failed: {error}"));
        Err(error)
    }

    fn closed_because(&self) -> String {
        self.closed_because
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_closed_because(&self, reason: String) {
        *self
            .closed_because
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = reason;
    }
}

/// Runs `call`, a call into redb, and answers a panic as a corrupt store: redb panics on some
/// damaged pages, and that must not take the process down. `what` says what the call did.
pub(crate) fn contained<T>(what: &'static str, call: impl FnOnce() -> T) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|message| (*message).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        tracing::error!(during = what, %message, "the storage engine panicked: answered as a corrupt store");
        StoreError::Corrupt {
            what: "storage engine",
            detail: format!("redb panicked while {what}: {message}"),
        }
    })
}

/// A redb error met on the read path: a snapshot of a database closed since (the file was
/// opened again, see [`StoreFile::reopen`]) is gone, which a new transaction fixes; a latched
/// I/O error means the store is failing; anything else is the engine's error.
pub(crate) fn read_error(error: impl Into<redb::Error>) -> StoreError {
    match error.into() {
        redb::Error::DatabaseClosed => StoreError::TransactionTooOld,
        redb::Error::PreviousIo => StoreError::Unavailable(
            "an I/O error of the store file was not recovered from yet".to_owned(),
        ),
        error => StoreError::Storage(Arc::new(error)),
    }
}

/// Makes a new store at `path`: a redb file with the engine's tables, written beside it, then
/// renamed into place (and the rename made durable), so a crash leaves no file or a whole one.
fn create(path: &Path, faults: &DiskFaults) -> Result<(), StoreError> {
    let io_error = |error: io::Error| StoreError::storage(redb::StorageError::Io(error));
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    let new = path.with_file_name(name);
    // A leftover of a creation that crashed: never a store yet.
    match std::fs::remove_file(&new) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(error)),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&new)
        .map_err(io_error)?;
    let redb = open_redb(&new, faults, false)?;
    create_tables(&redb)?;
    contained("closing the new store file", || redb.close())?.map_err(StoreError::storage)?;
    std::fs::rename(&new, path).map_err(io_error)?;
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    std::fs::File::open(folder)
        .and_then(|folder| folder.sync_all())
        .map_err(io_error)
}

/// Opens the existing redb file at `path` through [`FaultyFile`].
fn open_redb(
    path: &Path,
    faults: &DiskFaults,
    check_integrity: bool,
) -> Result<redb::Database, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|error| StoreError::storage(redb::StorageError::Io(error)))?;
    let file = FileBackend::new(file).map_err(|error| match error {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.display().to_string()),
        error => StoreError::storage(error),
    })?;
    let backend = FaultyFile {
        written_end: AtomicU64::new(
            file.len()
                .map_err(|error| StoreError::storage(redb::StorageError::Io(error)))?,
        ),
        file,
        faults: faults.clone(),
    };
    let mut builder = redb::Builder::new();
    builder.set_check_integrity_on_open(check_integrity);
    let opened = contained("opening the store file", || {
        builder.create_with_backend(backend)
    })?;
    let damaged = |detail: String| StoreError::Corrupt {
        what: "store file",
        detail: format!(
            "{} {detail}: restore it from a backup, or move it aside to start empty",
            path.display()
        ),
    };
    opened.map_err(|error| match error {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
            damaged(format!("failed its integrity check ({detail})"))
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(error))
            if matches!(
                error.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            damaged(format!("is not a whole store ({error})"))
        }
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.display().to_string()),
        redb::DatabaseError::UpgradeRequired(format) => damaged(format!(
            "is in redb file format {format}, which this engine does not read"
        )),
        error => StoreError::storage(error),
    })
}

/// Creates the engine's tables in a new file, at version 0.
fn create_tables(redb: &redb::Database) -> Result<(), StoreError> {
    contained("creating the tables", || {
        let write = redb.begin_write().map_err(StoreError::storage)?;
        write.open_table(DATA_TABLE).map_err(StoreError::storage)?;
        let mut meta = write.open_table(META_TABLE).map_err(StoreError::storage)?;
        meta.insert(VERSION_KEY, 0).map_err(StoreError::storage)?;
        drop(meta);
        write.commit().map_err(StoreError::storage)
    })?
}

/// The last commit version stored in the file (only read, so that opening the file again
/// works on a full disk); `Corrupt { what: "commit version" }` when the file lacks the
/// engine's tables.
fn durable_version(redb: &redb::Database) -> Result<u64, StoreError> {
    let missing = || StoreError::corrupt("commit version", "missing");
    contained("reading the commit version", || {
        let read = redb.begin_read().map_err(StoreError::storage)?;
        let meta = match read.open_table(META_TABLE) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Err(missing()),
            Err(error) => return Err(StoreError::storage(error)),
        };
        match read.open_table(DATA_TABLE) {
            Ok(_) => {}
            Err(redb::TableError::TableDoesNotExist(_)) => return Err(missing()),
            Err(error) => return Err(StoreError::storage(error)),
        }
        let version = meta.get(VERSION_KEY).map_err(StoreError::storage)?;
        version.map(|version| version.value()).ok_or_else(missing)
    })?
}

/// Refuses a file holding a standby's unfinished install: part of a copy, not a store.
fn refuse_unfinished_install(redb: &redb::Database, path: &Path) -> Result<(), StoreError> {
    let read = redb.begin_read().map_err(StoreError::storage)?;
    let meta = read.open_table(META_TABLE).map_err(StoreError::storage)?;
    match meta.get(INSTALLING_KEY).map_err(StoreError::storage)? {
        None => Ok(()),
        Some(version) => Err(StoreError::Corrupt {
            what: "store file",
            detail: format!(
                "{} holds part of a standby's copy (read at version {}) whose install did not \
                 finish: it is not a store; let the standby copy it again",
                path.display(),
                version.value()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::engine::{Database, EmbeddedOptions, RangeOptions};

    /// Longest wait for the store to reach a state the test waits for.
    const WAIT_MAX: Duration = Duration::from_secs(30);
    /// Most commits sent while waiting for a refusal: refusals double with every failure in a
    /// row, so one comes long before.
    const COMMITS_UNTIL_REFUSAL_MAX: usize = 100_000;

    /// Bytes of the values of a pair: the file grows by about two of them per commit, so a
    /// commit needs new space (a small one may fit in pages freed by earlier commits).
    const PAIR_VALUE_BYTES: usize = 60_000;

    /// The value both keys of the pair `prefix` hold.
    fn pair_value(prefix: &str) -> Vec<u8> {
        let mut value = prefix.as_bytes().to_vec();
        value.resize(PAIR_VALUE_BYTES, b'.');
        value
    }

    /// Commits `prefix/a` and `prefix/b`, both holding [`pair_value`], in one transaction.
    async fn commit_pair(database: &Database, prefix: &str) -> Result<(), StoreError> {
        let key = prefix.as_bytes().to_vec();
        let value = pair_value(prefix);
        database
            .transact(|tx| {
                let (key, value) = (key.clone(), value.clone());
                async move {
                    tx.set(&[key.as_slice(), b"/a"].concat(), &value)?;
                    tx.set(&[key.as_slice(), b"/b"].concat(), &value)
                }
            })
            .await
    }

    /// The values of `prefix/a` and `prefix/b`.
    async fn pair(database: &Database, prefix: &str) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let prefix = prefix.as_bytes().to_vec();
        database
            .transact(|tx| {
                let prefix = prefix.clone();
                async move {
                    Ok((
                        tx.get(&[prefix.as_slice(), b"/a"].concat()).await?,
                        tx.get(&[prefix.as_slice(), b"/b"].concat()).await?,
                    ))
                }
            })
            .await
            .expect("read a pair")
    }

    /// Opens the file at `path` and checks that every acknowledged pair is there and that
    /// every pair whose commit failed is there whole or not at all.
    async fn check_after_reopening(path: &Path, acknowledged: &[String], unknown: &[String]) {
        let database = Database::open(path, EmbeddedOptions::default()).expect("reopen");
        for prefix in acknowledged {
            let expected = Some(pair_value(prefix));
            assert_eq!(
                pair(&database, prefix).await,
                (expected.clone(), expected),
                "acknowledged {prefix}"
            );
        }
        let mut present = 0;
        for prefix in unknown {
            let (a, b) = pair(&database, prefix).await;
            assert_eq!(a, b, "{prefix} is whole or absent");
            present += usize::from(a.is_some());
        }
        eprintln!(
            "{} acknowledged commits found; {present} of {} failed ones turned out durable",
            acknowledged.len(),
            unknown.len()
        );
    }

    /// Commits until one is answered as `wanted` says, within [`WAIT_MAX`]; failed commits
    /// go to `unknown`.
    async fn commit_until(
        database: &Database,
        name: &str,
        unknown: &mut Vec<String>,
        wanted: impl Fn(&Result<(), StoreError>) -> bool,
    ) -> String {
        let start = Instant::now();
        for index in 0.. {
            let prefix = format!("{name}/{index}");
            let outcome = commit_pair(database, &prefix).await;
            if outcome.is_err() {
                unknown.push(prefix.clone());
            }
            if wanted(&outcome) {
                return prefix;
            }
            assert!(
                matches!(outcome, Err(StoreError::Unavailable(_))),
                "{prefix}: {outcome:?}"
            );
            assert!(
                start.elapsed() < WAIT_MAX,
                "{name}: not reached within {WAIT_MAX:?}; last: {outcome:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        unreachable!("the loop returns or fails")
    }

    /// The devnet finding, below redb: a full disk, then an I/O error, then a healthy
    /// disk again, all in one process.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_then_an_io_error_fail_commits_until_the_disk_recovers() {
        let folder = tempfile::tempdir().expect("folder");
        let path = folder.path().join("store.redb");
        let disk = DiskFaults::new();
        let database = Database::open(
            &path,
            EmbeddedOptions {
                disk_faults: Some(disk.clone()),
                ..EmbeddedOptions::default()
            },
        )
        .expect("open");
        let mut acknowledged = Vec::new();
        let mut unknown = Vec::new();
        for index in 0..10 {
            let prefix = format!("before/{index}");
            commit_pair(&database, &prefix).await.expect("commit");
            acknowledged.push(prefix);
        }
        let early = database.create_transaction().expect("transaction");
        assert!(early.get(b"before/0/a").await.expect("read").is_some());

        // A full disk: concurrent commits need new space and fail, none is acknowledged (one
        // that fits in pages the file freed earlier may still commit, as on a real disk).
        disk.fail(DiskFailure::NoSpace);
        let commits: Vec<_> = (0..8)
            .map(|index| {
                let database = database.clone();
                tokio::spawn(async move {
                    let prefix = format!("full/{index}");
                    (commit_pair(&database, &prefix).await, prefix)
                })
            })
            .collect();
        let mut failed_in_storage = 0;
        for commit in commits {
            let (outcome, prefix) = commit.await.expect("commit task");
            match outcome {
                Ok(()) => acknowledged.push(prefix),
                Err(StoreError::Unavailable(message)) => {
                    failed_in_storage += usize::from(message.contains("no space left"));
                    unknown.push(prefix);
                }
                Err(other) => panic!("{prefix} on a full disk: {other}"),
            }
        }
        assert!(failed_in_storage > 0, "a group met the full disk");
        assert!(disk.failed_operations() > 0);

        // Reads go on from the last durable state; a transaction that read before the file
        // was opened again is served from its snapshot or runs again.
        let expected = Some(pair_value("before/9"));
        assert_eq!(
            pair(&database, "before/9").await,
            (expected.clone(), expected)
        );
        match early.get(b"before/1/a").await {
            Ok(value) => assert_eq!(value, Some(pair_value("before/1"))),
            Err(StoreError::TransactionTooOld) => {}
            Err(error) => panic!("a snapshot of the closed file: {error}"),
        }

        // While the disk stays full, commits are refused without reaching it.
        let mut refused = false;
        for index in 0..COMMITS_UNTIL_REFUSAL_MAX {
            let prefix = format!("still-full/{index}");
            match commit_pair(&database, &prefix).await {
                Ok(()) => acknowledged.push(prefix),
                Err(StoreError::Unavailable(message)) => {
                    unknown.push(prefix);
                    if message.contains("refused") {
                        refused = true;
                        break;
                    }
                }
                Err(other) => panic!("{prefix} on a full disk: {other}"),
            }
        }
        assert!(refused, "commits are refused after failed group commits");

        // The disk fails with I/O errors instead: a commit that reaches it fails with one.
        disk.fail(DiskFailure::Io);
        commit_until(&database, "io-error", &mut unknown, |outcome| {
            matches!(outcome, Err(StoreError::Unavailable(message)) if message.contains("input/output error"))
        })
        .await;

        // The disk recovers: commits succeed again, without a restart.
        disk.heal();
        let first = commit_until(&database, "healed", &mut unknown, Result::is_ok).await;
        acknowledged.push(first);
        for index in 0..10 {
            let prefix = format!("after/{index}");
            commit_pair(&database, &prefix)
                .await
                .expect("commit after the disk recovered");
            acknowledged.push(prefix);
        }
        let stats = database.stats();
        assert!(stats.failed_group_commits >= 2, "{stats:?}");
        assert!(stats.reopens >= stats.failed_group_commits, "{stats:?}");
        drop(early);
        drop(database);

        check_after_reopening(&path, &acknowledged, &unknown).await;
    }

    /// A panic inside redb's commit (here from below it, as a damaged page would raise one) is
    /// answered as a corrupt store, and the pipeline goes on once the file is opened again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_commit_that_panics_inside_redb_is_answered_and_the_store_goes_on() {
        let folder = tempfile::tempdir().expect("folder");
        let path = folder.path().join("store.redb");
        let disk = DiskFaults::new();
        let database = Database::open(
            &path,
            EmbeddedOptions {
                disk_faults: Some(disk.clone()),
                ..EmbeddedOptions::default()
            },
        )
        .expect("open");
        commit_pair(&database, "before").await.expect("commit");
        disk.panic_next_write();
        match commit_pair(&database, "panicked").await {
            Err(StoreError::Corrupt { what, detail }) => {
                assert_eq!(what, "storage engine");
                assert!(detail.contains("injected panic below redb"), "{detail}");
            }
            other => panic!("a commit that panicked in redb: {other:?}"),
        }
        let mut unknown = vec!["panicked".to_owned()];
        let after = commit_until(&database, "after", &mut unknown, Result::is_ok).await;
        assert_eq!(
            pair(&database, "before").await.0,
            Some(pair_value("before"))
        );
        drop(database);
        check_after_reopening(&path, &["before".to_owned(), after], &unknown).await;
    }

    /// Writes 200 values spread over many pages, closes the file and damages one data page.
    async fn damaged_store(path: &Path) {
        let database = Database::open(path, EmbeddedOptions::default()).expect("open");
        for batch in 0..10u8 {
            database
                .transact(|tx| async move {
                    for index in 0..20u8 {
                        tx.set(&[b'k', batch, index], &[b'Z'; 2_000])?;
                    }
                    Ok(())
                })
                .await
                .expect("write");
        }
        drop(database);
        let mut bytes = std::fs::read(path).expect("read the file");
        // A leaf of the data table: a page full of values. Its first byte is the page type.
        let leaf = bytes
            .chunks(4_096)
            .rposition(|page| page.windows(256).any(|run| run.iter().all(|b| *b == b'Z')))
            .expect("a data page");
        bytes[leaf * 4_096] = 0x55;
        std::fs::write(path, &bytes).expect("write the damaged file");
    }

    /// Every key of the database, read in pages; the first error ends it.
    async fn read_everything(database: &Database) -> Result<usize, StoreError> {
        let mut begin = Vec::new();
        let mut keys = 0;
        loop {
            let from = begin.clone();
            let page = database
                .transact(|tx| {
                    let from = from.clone();
                    async move { tx.get_range(&from, b"\xff", RangeOptions::limit(50)).await }
                })
                .await?;
            let Some((last, _)) = page.last() else {
                return Ok(keys);
            };
            keys += page.len();
            begin = [last.as_slice(), &[0]].concat();
        }
    }

    #[tokio::test]
    async fn a_damaged_file_is_refused_with_a_typed_error_and_never_panics() {
        let folder = tempfile::tempdir().expect("folder");
        let path = folder.path().join("store.redb");
        damaged_store(&path).await;
        match Database::open(&path, EmbeddedOptions::default()) {
            Err(StoreError::Corrupt { what, detail }) => {
                assert_eq!(what, "store file");
                assert!(detail.contains("failed its integrity check"), "{detail}");
            }
            other => panic!("opening a damaged file: {other:?}"),
        }
        // Without the check, the damage is met later: as a typed error wherever it is met.
        let unchecked = EmbeddedOptions {
            check_integrity_on_open: false,
            ..EmbeddedOptions::default()
        };
        match Database::open(&path, unchecked) {
            Err(StoreError::Corrupt { .. } | StoreError::Storage(_)) => {}
            Err(other) => panic!("opening a damaged file unchecked: {other:?}"),
            Ok(database) => {
                let read = read_everything(&database).await;
                assert!(read.is_err(), "the damaged page went unnoticed: {read:?}");
                assert!(database.check_integrity().await.is_err());
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_integrity_check_reports_a_healthy_store_while_it_is_used() {
        let folder = tempfile::tempdir().expect("folder");
        let path = folder.path().join("store.redb");
        let database = Database::open(&path, EmbeddedOptions::default()).expect("open");
        for index in 0..5 {
            commit_pair(&database, &format!("k/{index}"))
                .await
                .expect("commit");
        }
        let reader = database.create_transaction().expect("transaction");
        let writers: Vec<_> = (0..4)
            .map(|index| {
                let database = database.clone();
                tokio::spawn(async move { commit_pair(&database, &format!("w/{index}")).await })
            })
            .collect();
        let report = database.check_integrity().await.expect("a healthy store");
        for writer in writers {
            writer
                .await
                .expect("writer task")
                .expect("a commit around the check");
        }
        assert!(report.keys >= 10 && report.keys <= 18, "{report:?}");
        assert!(report.version >= 5, "{report:?}");
        match reader.get(b"k/0/a").await {
            Ok(value) => assert_eq!(value, Some(pair_value("k/0"))),
            Err(StoreError::TransactionTooOld) => {}
            Err(error) => panic!("a snapshot from before the check: {error}"),
        }
        assert_eq!(read_everything(&database).await.expect("read"), 18);
        let again = database.check_integrity().await.expect("checked again");
        assert_eq!(again.keys, 18);
        assert_eq!(database.stats().reopens, 2);
    }

    #[tokio::test]
    async fn a_new_store_appears_whole_and_an_empty_file_is_refused() {
        let folder = tempfile::tempdir().expect("folder");
        let path = folder.path().join("store.redb");
        // A creation that crashed left its file beside the store: it is no store yet.
        std::fs::write(folder.path().join("store.redb.new"), b"half").expect("leftover");
        let database = Database::open(&path, EmbeddedOptions::default()).expect("created");
        commit_pair(&database, "first").await.expect("commit");
        drop(database);
        let names: Vec<String> = std::fs::read_dir(folder.path())
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["store.redb"]);

        // A store truncated to nothing (a botched copy or restore) is refused, not started
        // empty: redb would take an empty file for a new database.
        std::fs::File::create(&path).expect("truncate");
        match Database::open(&path, EmbeddedOptions::default()) {
            Err(StoreError::Corrupt { what, detail }) => {
                assert_eq!(what, "store file");
                assert!(detail.contains("is empty"), "{detail}");
            }
            other => panic!("an empty store file: {other:?}"),
        }
    }

    #[test]
    fn a_contained_panic_is_a_corrupt_store() {
        let error: Result<(), StoreError> = contained("testing", || panic!("boom"));
        match error {
            Err(StoreError::Corrupt { what, detail }) => {
                assert_eq!(what, "storage engine");
                assert_eq!(detail, "redb panicked while testing: boom");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(contained("testing", || 7).expect("no panic"), 7);
    }
}
