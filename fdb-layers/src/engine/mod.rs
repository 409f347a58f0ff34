//! The FDB-shaped transactional key-value API and its backends.
//!
//! Layer code sees only [`Database::transact`] and [`Transaction`], which behave like
//! FoundationDB's on every backend: a transaction reads a consistent snapshot at its read
//! version, sees its own buffered writes, records the ranges it read, and commits
//! optimistically. The commit is refused with the retryable [`StoreError::NotCommitted`] when a
//! transaction that committed after its read version wrote into one of those ranges, and
//! `transact` runs the closure again. Atomic operations (add, min, max) and versionstamped keys
//! and values are applied at commit; watches fire when a later commit changes a key; and
//! FoundationDB's limits are enforced everywhere.
//!
//! Backends, behind one enum so that layer code is the same on each:
//! - embedded ([`Database::open`], `embedded.rs`): one redb file, a two-thread commit pipeline
//!   with group commit (the next group is resolved while the current one is written), and
//!   seeded fault injection ([`FaultConfig`]) so retry paths run in tests. The file
//!   (`disk.rs`) is checked at open, every redb call is guarded against panics, and a commit
//!   that fails in storage (a full disk, an I/O error, injected below redb with
//!   [`DiskFaults`]) is answered [`StoreError::Unavailable`] while the file is opened again, so
//!   the process goes on once the disk recovers;
//! - memory ([`Database::memory`], `memory.rs`): deterministic, no thread and no wall clock,
//!   with a [`MemoryDisk`] that outlives simulated crashes; for the simulator;
//! - FoundationDB ([`Database::foundationdb`], `fdb.rs`, cargo feature `fdb`): the
//!   `foundationdb` crate, with `transact` mapped to FoundationDB's retry loop (`on_error`).
//!
//! The embedded and memory backends share the transaction (`local.rs`), the resolver and the
//! commit application (`committer.rs`) and the watches (`watches.rs`).

mod committer;
mod disk;
mod embedded;
#[cfg(feature = "fdb")]
mod fdb;
mod local;
mod memory;
mod replication;
mod transaction;
mod watches;

#[cfg(test)]
pub(crate) use committer::split_mix;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::Path;
#[cfg(feature = "fdb")]
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::StoreError;
use crate::limits::{
    RETRY_DELAY_MS_INITIAL, RETRY_DELAY_MS_MAX, TRANSACTION_AGE_MS_MAX, TRANSACTION_ATTEMPTS_MAX,
    VERSIONSTAMP_BYTES,
};
pub use disk::{DiskFailure, DiskFaults};
#[cfg(feature = "fdb")]
pub use fdb::FdbNetwork;
use local::LocalStore;
pub(crate) use local::key_after;
pub use memory::MemoryDisk;
pub use replication::{
    CommittedGroup, Mutation, Replicated, ReplicationSink, StandbyStore, StoreExport,
};
pub use transaction::{RangeOptions, Transaction, VersionstampFuture};
pub use watches::Watch;

/// Options of the embedded (redb) backend.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Injected faults; `None` in production.
    pub faults: Option<FaultConfig>,
    /// A switch that fails the file's writes and syncs on demand, as a full or failing disk
    /// would (tests and drills); `None` in production.
    pub disk_faults: Option<DiskFaults>,
    /// Whether opening verifies every page of the file first, so that a file damaged while
    /// the process was down is refused with a clear error ([`StoreError::Corrupt`]) instead of
    /// failing (or panicking inside redb) later. Reads the whole file; on by default.
    pub check_integrity_on_open: bool,
    /// Where every group commit is shipped, once durable here, before its requests are
    /// answered (a region's standby, see `replication.rs`); `None` without a standby.
    pub replication: Option<std::sync::Arc<dyn ReplicationSink>>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            faults: None,
            disk_faults: None,
            check_integrity_on_open: true,
            replication: None,
        }
    }
}

/// Options of the memory backend.
#[derive(Debug, Clone, Default)]
pub struct MemoryOptions {
    /// Injected faults; `None` unless a test or the simulator wants them.
    pub faults: Option<FaultConfig>,
    /// The durable state to open: a fresh disk by default; pass a clone of a crashed
    /// database's disk to "restart the process" on it.
    pub disk: MemoryDisk,
    /// Where every commit is shipped once applied, before it is answered (a simulated
    /// region's standby); `None` without one. As with the embedded backend.
    pub replication: Option<std::sync::Arc<dyn ReplicationSink>>,
}

/// Seeded fault injection ("buggify"): the committer misbehaves on purpose so that every
/// retry path runs in tests. The same seed and the same commit order give the same faults.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Seed of the fault generator; print it when a test fails.
    pub seed: u64,
    /// Chance that a commit is refused with `NotCommitted` although it does not conflict.
    pub conflict_probability: f64,
    /// Chance that a commit is answered `CommitUnknownResult` after it was made durable.
    pub commit_unknown_result_probability: f64,
    /// Chance that a group commit is delayed by `slow_commit_ms`.
    pub slow_commit_probability: f64,
    /// Delay of a slow group commit, in milliseconds.
    pub slow_commit_ms: u64,
    /// Chance that a group commit meets a failing disk (full, or an I/O error) and fails: on
    /// the embedded backend a write, sync or resize of the file fails below redb part way
    /// through the commit, so the commit may or may not be durable; on the memory backend the
    /// commit is applied or not, half the time each. Either way its requests are answered
    /// [`StoreError::Unavailable`].
    pub io_error_probability: f64,
}

impl FaultConfig {
    /// Faults frequent enough to hit every retry path in a short test.
    pub fn frequent(seed: u64) -> Self {
        FaultConfig {
            seed,
            conflict_probability: 0.1,
            commit_unknown_result_probability: 0.1,
            slow_commit_probability: 0.05,
            slow_commit_ms: 5,
            io_error_probability: 0.03,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        let probabilities = [
            ("conflict_probability", self.conflict_probability),
            (
                "commit_unknown_result_probability",
                self.commit_unknown_result_probability,
            ),
            ("slow_commit_probability", self.slow_commit_probability),
            ("io_error_probability", self.io_error_probability),
        ];
        for (name, probability) in probabilities {
            if !(0.0..=1.0).contains(&probability) {
                return Err(StoreError::InvalidOptions(format!(
                    "{name} must be within 0..=1, not {probability}"
                )));
            }
        }
        Ok(())
    }
}

/// Counters of the engine since the database was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Transactions with writes that committed.
    pub committed_transactions: u64,
    /// Group commits: redb write transactions, each with one fsync (embedded); commits
    /// (memory, where each commit is its own group); 0 on FoundationDB, whose batches are
    /// the cluster's.
    pub write_batches: u64,
    /// Commits refused with `NotCommitted` (real conflicts and injected ones).
    pub conflicts: u64,
    /// Attempts that `transact` ran again after a retryable error.
    pub retries: u64,
    /// Group commits that failed in storage (a full disk, an I/O error, a damaged file), whose
    /// requests were answered `Unavailable` (embedded), or commits that did (memory).
    pub failed_group_commits: u64,
    /// Times the embedded backend closed its file and opened it again (after a failed group
    /// commit, or for an integrity check).
    pub reopens: u64,
}

/// One key a transaction writes ([`Transaction::written_keys`]), for measurements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenKey {
    /// The key.
    pub key: Vec<u8>,
    /// Bytes of the value set (or of the atomic operand); 0 for a clear.
    pub value_bytes: usize,
    /// Whether the key is removed.
    pub clear: bool,
}

/// What an integrity check found in a healthy store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntegrityReport {
    /// The version of the last commit.
    pub version: u64,
    /// Keys stored.
    pub keys: u64,
}

/// FoundationDB's 10-byte versionstamp: the commit version (8 bytes, big-endian) and the
/// transaction's order within its commit batch (2 bytes, big-endian). Byte order is commit
/// order, so versionstamped keys sort in the order their transactions committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Versionstamp([u8; VERSIONSTAMP_BYTES]);

impl Versionstamp {
    /// The versionstamp of the transaction at `batch_order` in the commit at `commit_version`.
    pub fn new(commit_version: u64, batch_order: u16) -> Self {
        let mut bytes = [0u8; VERSIONSTAMP_BYTES];
        bytes[..8].copy_from_slice(&commit_version.to_be_bytes());
        bytes[8..].copy_from_slice(&batch_order.to_be_bytes());
        Versionstamp(bytes)
    }

    /// The versionstamp in its stored form.
    pub fn from_bytes(bytes: [u8; VERSIONSTAMP_BYTES]) -> Self {
        Versionstamp(bytes)
    }

    /// The versionstamp found at `offset` in stored bytes, if they are long enough.
    pub fn read_at(bytes: &[u8], offset: usize) -> Option<Self> {
        let end = offset.checked_add(VERSIONSTAMP_BYTES)?;
        let stamp: [u8; VERSIONSTAMP_BYTES] = bytes.get(offset..end)?.try_into().ok()?;
        Some(Versionstamp(stamp))
    }

    /// The 10 bytes as stored.
    pub fn as_bytes(&self) -> &[u8; VERSIONSTAMP_BYTES] {
        &self.0
    }

    /// The version of the commit.
    pub fn commit_version(&self) -> u64 {
        let mut version = [0u8; 8];
        version.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(version)
    }

    /// The transaction's order within its commit batch.
    pub fn batch_order(&self) -> u16 {
        u16::from_be_bytes([self.0[8], self.0[9]])
    }
}

/// A database: cheap to clone, shared by every task of the process.
#[derive(Clone)]
pub struct Database {
    backend: Backend,
}

/// The backends, dispatched by enum.
#[derive(Clone)]
enum Backend {
    /// The embedded (redb) or memory backend.
    Local(LocalStore),
    /// FoundationDB.
    #[cfg(feature = "fdb")]
    Fdb(Arc<fdb::FdbShared>),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.backend {
            Backend::Local(LocalStore::Embedded(_)) => "embedded",
            Backend::Local(LocalStore::Memory(_)) => "memory",
            #[cfg(feature = "fdb")]
            Backend::Fdb(_) => "foundationdb",
        };
        f.debug_struct("Database")
            .field("backend", &backend)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Opens (creating if needed) the embedded database at `path` and starts its committer.
    pub fn open(path: &Path, options: EmbeddedOptions) -> Result<Database, StoreError> {
        let shared = embedded::Shared::open(path, options)?;
        Ok(Database {
            backend: Backend::Local(LocalStore::Embedded(shared)),
        })
    }

    /// Opens a memory database on `options.disk`. Opening a disk again crashes the database
    /// that had it open: its handles fail with [`StoreError::Closed`] and the new one goes on
    /// from every commit that was acknowledged (see [`MemoryDisk::crash`]).
    pub fn memory(options: MemoryOptions) -> Result<Database, StoreError> {
        let shared = memory::Shared::open(options)?;
        Ok(Database {
            backend: Backend::Local(LocalStore::Memory(shared)),
        })
    }

    /// Connects to FoundationDB through the cluster file at `cluster_file` (FoundationDB's
    /// default file when `None`), on the client network `network` booted once per process.
    #[cfg(feature = "fdb")]
    pub fn foundationdb(
        network: &FdbNetwork,
        cluster_file: Option<&Path>,
    ) -> Result<Database, StoreError> {
        let shared = fdb::FdbShared::connect(network, cluster_file)?;
        Ok(Database {
            backend: Backend::Fdb(shared),
        })
    }

    /// Starts a transaction at the latest committed version. Prefer [`Database::transact`],
    /// which also commits and retries.
    pub fn create_transaction(&self) -> Result<Transaction, StoreError> {
        match &self.backend {
            Backend::Local(store) => Ok(Transaction::local(store.begin()?)),
            #[cfg(feature = "fdb")]
            Backend::Fdb(shared) => shared.create_transaction(),
        }
    }

    /// Runs `body` in a transaction and commits it, running it again on retryable errors with
    /// a bounded, jittered exponential backoff (FoundationDB's `db.run`; on FoundationDB, its
    /// own `on_error` loop). `body` may run more than once, even after a commit that succeeded
    /// (`CommitUnknownResult`), so it must be idempotent.
    pub async fn transact<T, F, Fut>(&self, body: F) -> Result<T, StoreError>
    where
        F: FnMut(Transaction) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        match &self.backend {
            Backend::Local(store) => transact_local(store, body).await,
            #[cfg(feature = "fdb")]
            Backend::Fdb(shared) => fdb::transact(shared, body).await,
        }
    }

    /// A consistent read of the whole store at its latest version, for copying it to a standby
    /// (embedded and memory backends: on FoundationDB `InvalidOptions`).
    pub fn export(&self) -> Result<StoreExport, StoreError> {
        match &self.backend {
            Backend::Local(LocalStore::Embedded(shared)) => shared.export(),
            Backend::Local(LocalStore::Memory(shared)) => shared.export(),
            #[cfg(feature = "fdb")]
            Backend::Fdb(_) => Err(StoreError::InvalidOptions(
                "only the embedded and memory backends export a copy for a standby".into(),
            )),
        }
    }

    /// Checks the store's integrity. Embedded: once every commit resolved before is written,
    /// closes the file and opens it again with every page of the committed trees verified
    /// (commits wait meanwhile, transactions reading at the time run again); a damaged file is
    /// [`StoreError::Corrupt`], and commits are then refused until it opens again. Memory: the
    /// disk's version and keys. FoundationDB checks its own storage; asking is an error.
    pub async fn check_integrity(&self) -> Result<IntegrityReport, StoreError> {
        match &self.backend {
            Backend::Local(LocalStore::Embedded(shared)) => shared.check_integrity().await,
            Backend::Local(LocalStore::Memory(shared)) => shared.check_integrity(),
            #[cfg(feature = "fdb")]
            Backend::Fdb(_) => Err(StoreError::InvalidOptions(
                "FoundationDB checks its own storage (fdbcli's consistencycheck)".to_owned(),
            )),
        }
    }

    /// Counters of the engine since the database was opened.
    pub fn stats(&self) -> EngineStats {
        let counters = match &self.backend {
            Backend::Local(store) => store.counters(),
            #[cfg(feature = "fdb")]
            Backend::Fdb(shared) => shared.counters(),
        };
        counters.snapshot()
    }
}

/// The retry loop of the embedded and memory backends.
async fn transact_local<T, F, Fut>(store: &LocalStore, mut body: F) -> Result<T, StoreError>
where
    F: FnMut(Transaction) -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let counters = store.counters();
    let mut delay_ms = RETRY_DELAY_MS_INITIAL;
    let mut attempt = 1;
    loop {
        // A transaction that cannot begin yet (the embedded file being opened again) is retried
        // like one that failed later.
        let outcome = match store.begin() {
            Ok(transaction) => {
                let transaction = Transaction::local(transaction);
                match body(transaction.clone()).await {
                    Ok(value) => transaction.commit().await.map(|()| value),
                    Err(error) => Err(error),
                }
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(value) => return Ok(value),
            Err(error) if error.is_retryable() && attempt < TRANSACTION_ATTEMPTS_MAX => {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                let jittered_ms = delay_ms / 2 + counters.jitter_ms(delay_ms / 2 + 1);
                tracing::debug!(%error, attempt, jittered_ms, "retrying transaction");
                tokio::time::sleep(Duration::from_millis(jittered_ms)).await;
                delay_ms = (delay_ms * 2).min(RETRY_DELAY_MS_MAX);
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Counters of one open database, shared with its committer.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) committed_transactions: AtomicU64,
    pub(crate) write_batches: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) failed_group_commits: AtomicU64,
    pub(crate) reopens: AtomicU64,
    jitter: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> EngineStats {
        EngineStats {
            committed_transactions: self.committed_transactions.load(Ordering::Relaxed),
            write_batches: self.write_batches.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            failed_group_commits: self.failed_group_commits.load(Ordering::Relaxed),
            reopens: self.reopens.load(Ordering::Relaxed),
        }
    }

    /// A pseudo-random delay below `bound_ms`, so that conflicting retries spread out. The
    /// sequence is fixed, so a single-threaded simulation stays deterministic.
    fn jitter_ms(&self, bound_ms: u64) -> u64 {
        let draw = self.jitter.fetch_add(1, Ordering::Relaxed);
        committer::split_mix(draw) % bound_ms.max(1)
    }
}

/// The transaction age limit as a duration.
const TRANSACTION_AGE_MAX: Duration = Duration::from_millis(TRANSACTION_AGE_MS_MAX);
