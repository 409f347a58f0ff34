//! The embedded backend on redb. All data sits in one table; the commit version is stored in the
//! same file, so a read snapshot carries its version atomically. One committer thread drains
//! every waiting commit request, resolves each against the writes of newer commits, applies all
//! the accepted ones in one redb write transaction with an fsync, then fires the watches they
//! change and answers them (group commit). Every acknowledged commit is durable.
//!
//! Reads are served synchronously from redb's page cache and file, which is short enough not
//! to warrant a blocking-pool hop per read. The committer, which waits for fsyncs, runs on its
//! own thread.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::committer::{ApplyTarget, CommitRequest, KeyRange, Resolver, apply_request};
use super::local::KeyValue;
use super::watches::{PendingWatch, WatchRegistry};
use super::{Counters, EmbeddedOptions, Versionstamp};
use crate::error::StoreError;
use crate::limits::{
    COMMIT_BATCH_BYTES_MAX, COMMIT_BATCH_TRANSACTIONS_MAX, COMMIT_QUEUE_TRANSACTIONS_MAX,
};

/// The table holding every key and value of the database.
const DATA_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
/// The table holding the engine's own state (the last commit version).
const META_TABLE: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The key of the last commit version in [`META_TABLE`].
const VERSION_KEY: &str = "version";

// A group's versionstamps number its transactions with two bytes.
const _: () = assert!(COMMIT_BATCH_TRANSACTIONS_MAX <= u16::MAX as usize + 1);

/// A redb table of the data.
type DataTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// State shared by an embedded database's handles and transactions. Dropping the last one stops
/// the committer and waits for it, so the file is closed when the drop returns.
pub(crate) struct Shared {
    redb: Arc<redb::Database>,
    /// Commit requests to the committer; `None` only while dropping.
    requests: Option<mpsc::SyncSender<Submission>>,
    committer: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    registry: Arc<WatchRegistry>,
}

/// A commit request and where to answer it.
struct Submission {
    request: CommitRequest,
    reply: oneshot::Sender<Result<Versionstamp, StoreError>>,
}

impl Shared {
    /// Opens (creating if needed) the file at `path` and starts its committer.
    pub(crate) fn open(path: &Path, options: EmbeddedOptions) -> Result<Arc<Shared>, StoreError> {
        if let Some(faults) = &options.faults {
            faults.validate()?;
        }
        let redb = Arc::new(redb::Database::create(path).map_err(StoreError::storage)?);
        let version = initialize(&redb)?;
        let counters = Arc::new(Counters::default());
        let registry = WatchRegistry::new();
        let (sender, receiver) = mpsc::sync_channel(COMMIT_QUEUE_TRANSACTIONS_MAX);
        let committer = Committer {
            redb: redb.clone(),
            resolver: Resolver::new(version, options.faults),
            counters: counters.clone(),
            registry: registry.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("fdb-layers-committer".to_owned())
            .spawn(move || committer.run(receiver))
            .map_err(|error| StoreError::storage(redb::StorageError::Io(error)))?;
        tracing::debug!(path = %path.display(), version, "opened embedded database");
        Ok(Arc::new(Shared {
            redb,
            requests: Some(sender),
            committer: Some(thread),
            counters,
            registry,
        }))
    }

    /// A read snapshot of the data and its version.
    pub(crate) fn snapshot(&self) -> Result<(DataTable, u64), StoreError> {
        let read = self.redb.begin_read().map_err(StoreError::storage)?;
        let data = read.open_table(DATA_TABLE).map_err(StoreError::storage)?;
        let meta = read.open_table(META_TABLE).map_err(StoreError::storage)?;
        let version = meta
            .get(VERSION_KEY)
            .map_err(StoreError::storage)?
            .map(|version| version.value())
            .ok_or_else(|| StoreError::corrupt("commit version", "missing"))?;
        Ok((data, version))
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn registry(&self) -> &Arc<WatchRegistry> {
        &self.registry
    }

    /// Hands `request` to the committer and waits for its answer.
    pub(crate) async fn commit(&self, request: CommitRequest) -> Result<Versionstamp, StoreError> {
        let (reply, answer) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or(StoreError::Closed)?;
        requests
            .try_send(Submission { request, reply })
            .map_err(|error| match error {
                mpsc::TrySendError::Full(_) => StoreError::CommitQueueFull,
                mpsc::TrySendError::Disconnected(_) => StoreError::Closed,
            })?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Registers the watches of a committed transaction against the latest committed values.
    pub(crate) fn register_watches(&self, watches: Vec<PendingWatch>) {
        let mut reader = LatestReader::new(&self.redb);
        self.registry.register(watches, |key| reader.value(key));
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
        self.registry.close();
    }
}

/// The pairs of `[begin, end)` in `table`, in the direction of the read.
pub(crate) fn snapshot_range<'a>(
    table: &'a DataTable,
    begin: &[u8],
    end: &[u8],
    reverse: bool,
) -> Result<Box<dyn Iterator<Item = Result<KeyValue, StoreError>> + 'a>, StoreError> {
    let range = table
        .range::<&[u8]>(begin..end)
        .map_err(StoreError::storage)?;
    Ok(if reverse {
        Box::new(range.rev().map(owned_pair))
    } else {
        Box::new(range.map(owned_pair))
    })
}

/// A pair read from redb, copied out of its guards.
type StoredPair<'a> = (
    redb::AccessGuard<'a, &'static [u8]>,
    redb::AccessGuard<'a, &'static [u8]>,
);

fn owned_pair(item: Result<StoredPair<'_>, redb::StorageError>) -> Result<KeyValue, StoreError> {
    item.map(|(key, value)| (key.value().to_vec(), value.value().to_vec()))
        .map_err(StoreError::storage)
}

/// The committer thread: resolves and applies commits in groups.
struct Committer {
    redb: Arc<redb::Database>,
    resolver: Resolver,
    counters: Arc<Counters>,
    registry: Arc<WatchRegistry>,
}

impl Committer {
    /// Serves commit requests until every sender is gone.
    fn run(mut self, requests: mpsc::Receiver<Submission>) {
        while let Ok(first) = requests.recv() {
            let mut batch_bytes = first.request.size_bytes;
            let mut batch = vec![first];
            while batch.len() < COMMIT_BATCH_TRANSACTIONS_MAX
                && batch_bytes < COMMIT_BATCH_BYTES_MAX
            {
                match requests.try_recv() {
                    Ok(submission) => {
                        batch_bytes += submission.request.size_bytes;
                        batch.push(submission);
                    }
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
        tracing::debug!(version = self.resolver.version(), "committer stopped");
    }

    fn commit_batch(&mut self, batch: Vec<Submission>) {
        if let Some(delay_ms) = self.resolver.slow_commit_delay_ms() {
            std::thread::sleep(Duration::from_millis(delay_ms));
        }
        let requests: Vec<&CommitRequest> = batch.iter().map(|s| &s.request).collect();
        let verdicts = self
            .resolver
            .resolve(&requests, Instant::now(), &self.counters);
        let accepted: Vec<(&CommitRequest, Versionstamp)> = requests
            .iter()
            .zip(&verdicts)
            .filter_map(|(request, verdict)| verdict.as_ref().ok().map(|stamp| (*request, *stamp)))
            .collect();
        let applied = match accepted.first() {
            None => Ok(()),
            Some((_, first)) => {
                let version = first.commit_version();
                let applied = self.apply(version, &accepted);
                match &applied {
                    Ok(()) => {
                        self.resolver.committed(version, Instant::now());
                        self.counters.write_batches.fetch_add(1, Ordering::Relaxed);
                        self.counters
                            .committed_transactions
                            .fetch_add(accepted.len() as u64, Ordering::Relaxed);
                        self.notify_watches(&accepted);
                    }
                    Err(error) => tracing::error!(%error, "group commit failed"),
                }
                applied
            }
        };
        // Every answer goes out after the fsync (or the failure) of the whole group, and after
        // the watches it changed fired.
        for (submission, verdict) in batch.into_iter().zip(verdicts) {
            let answer = match (verdict, &applied) {
                (Ok(stamp), Ok(())) => self.resolver.answer(stamp),
                (Ok(_), Err(error)) => Err(error.clone()),
                (Err(error), _) => Err(error),
            };
            // The caller may have given up waiting; the commit stands either way.
            let _ = submission.reply.send(answer);
        }
    }

    /// Applies the accepted requests in order in one durable redb write transaction.
    fn apply(
        &self,
        version: u64,
        accepted: &[(&CommitRequest, Versionstamp)],
    ) -> Result<(), StoreError> {
        let mut write = self.redb.begin_write().map_err(StoreError::storage)?;
        write
            .set_durability(Durability::Immediate)
            .map_err(StoreError::storage)?;
        {
            let mut data = RedbTarget(write.open_table(DATA_TABLE).map_err(StoreError::storage)?);
            for (request, stamp) in accepted {
                apply_request(&mut data, request, *stamp)?;
            }
            let mut meta = write.open_table(META_TABLE).map_err(StoreError::storage)?;
            meta.insert(VERSION_KEY, version)
                .map_err(StoreError::storage)?;
        }
        write.commit().map_err(StoreError::storage)
    }

    /// Fires the watches of keys the group changed.
    fn notify_watches(&self, accepted: &[(&CommitRequest, Versionstamp)]) {
        let mut keys = Vec::new();
        let mut ranges: Vec<KeyRange> = Vec::new();
        for (request, stamp) in accepted {
            keys.extend(request.written_keys(*stamp));
            ranges.extend(request.cleared.iter().cloned());
        }
        let mut reader = LatestReader::new(&self.redb);
        self.registry
            .notify(&keys, &ranges, |key| reader.value(key));
    }
}

/// Reads latest committed values, opening one redb read transaction on first use.
struct LatestReader<'a> {
    redb: &'a redb::Database,
    table: Option<DataTable>,
}

impl<'a> LatestReader<'a> {
    fn new(redb: &'a redb::Database) -> Self {
        LatestReader { redb, table: None }
    }

    fn value(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let table = match &mut self.table {
            Some(table) => table,
            empty => {
                let read = self.redb.begin_read().map_err(StoreError::storage)?;
                empty.insert(read.open_table(DATA_TABLE).map_err(StoreError::storage)?)
            }
        };
        let value = table.get(key).map_err(StoreError::storage)?;
        Ok(value.map(|guard| guard.value().to_vec()))
    }
}

/// The data table of a redb write transaction, as a target of commits.
struct RedbTarget<'a>(redb::Table<'a, &'static [u8], &'static [u8]>);

impl ApplyTarget for RedbTarget<'_> {
    fn value(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.0.get(key).map_err(StoreError::storage)?;
        Ok(value.map(|guard| guard.value().to_vec()))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.0.insert(key, value).map_err(StoreError::storage)?;
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.0.remove(key).map_err(StoreError::storage)?;
        Ok(())
    }

    fn remove_range(&mut self, range: &KeyRange) -> Result<(), StoreError> {
        self.0
            .retain_in::<&[u8], _>(range.begin.as_slice()..range.end.as_slice(), |_, _| false)
            .map_err(StoreError::storage)
    }
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
