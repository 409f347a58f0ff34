//! The FDB-shaped transactional key-value API and its embedded backend on redb.
//!
//! Layer code sees only [`Database::transact`] and [`Transaction`], which behave like
//! FoundationDB's: a transaction reads a consistent snapshot at its read version, sees its own
//! buffered writes, records the ranges it read, and commits optimistically. The commit is
//! refused with the retryable [`StoreError::NotCommitted`] when a transaction that committed
//! after its read version wrote into one of those ranges, and `transact` runs the closure again.
//!
//! The embedded backend keeps all data in one redb table. The commit version is stored in the
//! same file, so a read snapshot carries its version atomically. One committer thread drains
//! every waiting commit request, checks each against the writes of newer commits (kept in
//! memory for [`TRANSACTION_AGE_MS_MAX`] milliseconds), applies all the non-conflicting ones in
//! one redb write transaction with an fsync, and only then answers them (group commit).
//! Seeded fault injection ([`FaultConfig`]) makes the committer refuse, delay or answer
//! "unknown result" on purpose, so retry paths run in tests.
//!
//! Reads are `async` for the FoundationDB backend's sake; the embedded backend serves them
//! synchronously from redb's page cache and file, which is short enough not to warrant a
//! blocking-pool hop per read. The committer, which waits for fsyncs, runs on its own thread.

mod committer;

#[cfg(test)]
pub(crate) use committer::split_mix;
mod transaction;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::StoreError;
use crate::limits::{
    COMMIT_QUEUE_TRANSACTIONS_MAX, RETRY_DELAY_MS_INITIAL, RETRY_DELAY_MS_MAX,
    TRANSACTION_AGE_MS_MAX, TRANSACTION_ATTEMPTS_MAX,
};
use committer::{CommitRequest, Committer};
pub use transaction::{RangeOptions, Transaction};

/// The table holding every key and value of the database.
const DATA_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
/// The table holding the engine's own state (the last commit version).
const META_TABLE: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The key of the last commit version in [`META_TABLE`].
const VERSION_KEY: &str = "version";

/// Options of the embedded (redb) backend.
#[derive(Debug, Clone, Default)]
pub struct EmbeddedOptions {
    /// Injected faults; `None` in production.
    pub faults: Option<FaultConfig>,
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
        }
    }

    fn validate(&self) -> Result<(), StoreError> {
        let probabilities = [
            ("conflict_probability", self.conflict_probability),
            (
                "commit_unknown_result_probability",
                self.commit_unknown_result_probability,
            ),
            ("slow_commit_probability", self.slow_commit_probability),
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
    /// redb write transactions (group commits, each with one fsync).
    pub write_batches: u64,
    /// Commits refused with `NotCommitted` (real conflicts and injected ones).
    pub conflicts: u64,
    /// Attempts that `transact` ran again after a retryable error.
    pub retries: u64,
}

/// A database: cheap to clone, shared by every task of the process.
#[derive(Clone)]
pub struct Database {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Opens (creating if needed) the embedded database at `path` and starts its committer.
    pub fn open(path: &Path, options: EmbeddedOptions) -> Result<Database, StoreError> {
        if let Some(faults) = &options.faults {
            faults.validate()?;
        }
        let redb = Arc::new(redb::Database::create(path).map_err(StoreError::storage)?);
        let version = initialize(&redb)?;
        let counters = Arc::new(Counters::default());
        let (sender, receiver) = mpsc::sync_channel(COMMIT_QUEUE_TRANSACTIONS_MAX);
        let committer = Committer::new(redb.clone(), version, options.faults, counters.clone());
        let thread = std::thread::Builder::new()
            .name("fdb-layers-committer".to_owned())
            .spawn(move || committer.run(receiver))
            .map_err(|error| StoreError::storage(redb::StorageError::Io(error)))?;
        tracing::debug!(path = %path.display(), version, "opened embedded database");
        Ok(Database {
            shared: Arc::new(Shared {
                redb,
                requests: Some(sender),
                committer: Some(thread),
                counters,
            }),
        })
    }

    /// Starts a transaction at the latest committed version. Prefer [`Database::transact`],
    /// which also commits and retries.
    pub fn create_transaction(&self) -> Result<Transaction, StoreError> {
        let read = self.shared.redb.begin_read().map_err(StoreError::storage)?;
        let data = read.open_table(DATA_TABLE).map_err(StoreError::storage)?;
        let meta = read.open_table(META_TABLE).map_err(StoreError::storage)?;
        let read_version = meta
            .get(VERSION_KEY)
            .map_err(StoreError::storage)?
            .map(|version| version.value())
            .ok_or_else(|| StoreError::corrupt("commit version", "missing"))?;
        Ok(Transaction::new(self.shared.clone(), data, read_version))
    }

    /// Runs `body` in a transaction and commits it, running it again on retryable errors with
    /// a bounded, jittered exponential backoff (FoundationDB's `db.run`). `body` may run more
    /// than once, even after a commit that succeeded (`CommitUnknownResult`), so it must be
    /// idempotent.
    pub async fn transact<T, F, Fut>(&self, mut body: F) -> Result<T, StoreError>
    where
        F: FnMut(Transaction) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut delay_ms = RETRY_DELAY_MS_INITIAL;
        let mut attempt = 1;
        loop {
            let transaction = self.create_transaction()?;
            let outcome = match body(transaction.clone()).await {
                Ok(value) => transaction.commit().await.map(|()| value),
                Err(error) => Err(error),
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err(error) if error.is_retryable() && attempt < TRANSACTION_ATTEMPTS_MAX => {
                    self.shared.counters.retries.fetch_add(1, Ordering::Relaxed);
                    let jittered_ms = delay_ms / 2 + self.shared.jitter_ms(delay_ms / 2 + 1);
                    tracing::debug!(%error, attempt, jittered_ms, "retrying transaction");
                    tokio::time::sleep(Duration::from_millis(jittered_ms)).await;
                    delay_ms = (delay_ms * 2).min(RETRY_DELAY_MS_MAX);
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Counters of the engine since the database was opened.
    pub fn stats(&self) -> EngineStats {
        let counters = &self.shared.counters;
        EngineStats {
            committed_transactions: counters.committed_transactions.load(Ordering::Relaxed),
            write_batches: counters.write_batches.load(Ordering::Relaxed),
            conflicts: counters.conflicts.load(Ordering::Relaxed),
            retries: counters.retries.load(Ordering::Relaxed),
        }
    }
}

/// State shared by a database's handles and transactions. Dropping the last one stops the
/// committer and waits for it, so the file is closed when the drop returns.
pub(crate) struct Shared {
    redb: Arc<redb::Database>,
    /// Commit requests to the committer; `None` only while dropping.
    requests: Option<mpsc::SyncSender<CommitRequest>>,
    committer: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Shared {
    /// Hands a commit request to the committer without blocking.
    fn submit(&self, request: CommitRequest) -> Result<(), StoreError> {
        let requests = self.requests.as_ref().ok_or(StoreError::Closed)?;
        requests.try_send(request).map_err(|error| match error {
            mpsc::TrySendError::Full(_) => StoreError::CommitQueueFull,
            mpsc::TrySendError::Disconnected(_) => StoreError::Closed,
        })
    }

    /// A pseudo-random delay below `bound_ms`, so that conflicting retries spread out.
    fn jitter_ms(&self, bound_ms: u64) -> u64 {
        let draw = self.counters.jitter.fetch_add(1, Ordering::Relaxed);
        committer::split_mix(draw) % bound_ms.max(1)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the channel ends the committer once it has answered what is queued.
        self.requests = None;
        if let Some(thread) = self.committer.take()
            && thread.join().is_err()
        {
            tracing::error!("the committer thread panicked");
        }
    }
}

/// Counters shared with the committer thread.
#[derive(Default)]
struct Counters {
    committed_transactions: AtomicU64,
    write_batches: AtomicU64,
    conflicts: AtomicU64,
    retries: AtomicU64,
    jitter: AtomicU64,
}

/// Creates the tables of a new file and returns the last commit version.
fn initialize(redb: &redb::Database) -> Result<u64, StoreError> {
    let write = redb.begin_write().map_err(StoreError::storage)?;
    let version = {
        write.open_table(DATA_TABLE).map_err(StoreError::storage)?;
        let mut meta = write.open_table(META_TABLE).map_err(StoreError::storage)?;
        let stored = meta
            .get(VERSION_KEY)
            .map_err(StoreError::storage)?
            .map(|v| v.value());
        match stored {
            Some(version) => version,
            None => {
                meta.insert(VERSION_KEY, 0).map_err(StoreError::storage)?;
                0
            }
        }
    };
    write.commit().map_err(StoreError::storage)?;
    Ok(version)
}

/// The transaction age limit as a duration.
const TRANSACTION_AGE_MAX: Duration = Duration::from_millis(TRANSACTION_AGE_MS_MAX);
