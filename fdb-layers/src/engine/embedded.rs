//! The embedded backend on redb. All data sits in one table; the commit version is stored in the
//! same file, so a read snapshot carries its version atomically.
//!
//! Commits go through a two-stage pipeline (group commit), each stage on its own thread:
//! - the **resolver stage** takes each commit request as it arrives, resolves it against the
//!   writes of every commit accepted after its read version (durable or still being written:
//!   the history records a write when it is accepted) and adds it to the open group, which
//!   holds the next version;
//! - the **writer stage** takes the open group whole as soon as the previous group is durable,
//!   applies its accepted requests in one redb write transaction with an fsync, then fires the
//!   watches they change and answers every request of the group.
//!
//! So the next group is resolved in memory while redb writes and fsyncs the current one. A
//! request that arrives alone while the writer stage is idle is written by the resolver stage
//! itself, as the same group commit: handing it over would only add a thread wake-up to its
//! latency. Either way one group is written at a time, in the order groups were closed. Groups
//! get increasing versions and are written in that order, a group's versionstamps follow the
//! order its requests were resolved in, and nothing is answered before its group's fsync (a
//! refused request too, so that its retry reads what it conflicted with): every acknowledged
//! commit is durable. If a group fails to commit, the next one was resolved as if it had
//! committed, which can only refuse more than needed.
//!
//! Reads are served synchronously from redb's page cache and file, which is short enough not
//! to warrant a blocking-pool hop per read.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::committer::{ApplyTarget, CommitRequest, KeyRange, OpenGroup, Resolver, apply_request};
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

/// The thread of the pipeline's resolver stage. Linux keeps the first 15 bytes of a thread's
/// name, `fdb-layers-comm` for both stages, so tools that look for the committer by that name
/// (`relayd bench storage`) count the whole pipeline; Rust's own messages show the full name.
const RESOLVER_THREAD_NAME: &str = "fdb-layers-committer/resolver";
/// The thread of the pipeline's writer stage, which applies and fsyncs the groups.
const WRITER_THREAD_NAME: &str = "fdb-layers-committer/writer";

// A group's versionstamps number its transactions with two bytes.
const _: () = assert!(COMMIT_BATCH_TRANSACTIONS_MAX <= u16::MAX as usize + 1);

/// A redb table of the data.
type DataTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// State shared by an embedded database's handles and transactions. Dropping the last one stops
/// the commit pipeline and waits for it, so the file is closed when the drop returns.
pub(crate) struct Shared {
    redb: Arc<redb::Database>,
    /// Commit requests to the resolver stage; `None` only while dropping.
    requests: Option<mpsc::SyncSender<Submission>>,
    /// The commit pipeline's threads, resolver stage first.
    stages: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
    registry: Arc<WatchRegistry>,
}

/// A commit request and where to answer it.
struct Submission {
    request: CommitRequest,
    reply: oneshot::Sender<Result<Versionstamp, StoreError>>,
}

impl Shared {
    /// Opens (creating if needed) the file at `path` and starts its commit pipeline.
    pub(crate) fn open(path: &Path, options: EmbeddedOptions) -> Result<Arc<Shared>, StoreError> {
        if let Some(faults) = &options.faults {
            faults.validate()?;
        }
        let redb = Arc::new(redb::Database::create(path).map_err(StoreError::storage)?);
        let version = initialize(&redb)?;
        let counters = Arc::new(Counters::default());
        let registry = WatchRegistry::new();
        let (sender, receiver) = mpsc::sync_channel(COMMIT_QUEUE_TRANSACTIONS_MAX);
        let committer = Arc::new(Committer::new(
            redb.clone(),
            Resolver::new(version, options.faults),
            counters.clone(),
            registry.clone(),
        ));
        let writer = {
            let committer = committer.clone();
            spawn(WRITER_THREAD_NAME, move || committer.run_writer())?
        };
        let resolver = {
            let committer = committer.clone();
            spawn(RESOLVER_THREAD_NAME, move || {
                committer.run_resolver(receiver)
            })
        };
        let resolver = match resolver {
            Ok(resolver) => resolver,
            Err(error) => {
                // Stop the writer stage as the resolver stage would have.
                drop(StageStopped {
                    committer: &committer,
                    writer: false,
                });
                join(writer);
                return Err(error);
            }
        };
        tracing::debug!(path = %path.display(), version, "opened embedded database");
        Ok(Arc::new(Shared {
            redb,
            requests: Some(sender),
            stages: vec![resolver, writer],
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

    /// Hands `request` to the commit pipeline and waits for its answer.
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
        // Closing the channel ends the resolver stage once it has resolved what is queued,
        // then the writer stage once it has committed and answered that.
        self.requests = None;
        for stage in self.stages.drain(..) {
            join(stage);
        }
        self.registry.close();
    }
}

/// Starts a thread of the commit pipeline.
fn spawn(name: &str, run: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(run)
        .map_err(|error| StoreError::storage(redb::StorageError::Io(error)))
}

/// Waits for a thread of the commit pipeline to end.
fn join(stage: JoinHandle<()>) {
    let name = stage.thread().name().unwrap_or_default().to_owned();
    if stage.join().is_err() {
        tracing::error!(thread = %name, "a commit pipeline thread panicked");
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

/// The commit pipeline, shared by its two threads.
struct Committer {
    redb: Arc<redb::Database>,
    state: Mutex<PipelineState>,
    /// Signalled when the writer stage has a group to take, and when the resolver stage stops.
    work: Condvar,
    /// Signalled when the writer stage takes the open group, and when it stops.
    space: Condvar,
    counters: Arc<Counters>,
    registry: Arc<WatchRegistry>,
}

struct PipelineState {
    resolver: Resolver,
    /// The group being resolved, not yet taken to be written.
    open: Option<PendingGroup>,
    /// A group is being written, by the writer stage or by the resolver stage itself: groups
    /// are written one at a time, in the order they were taken.
    writing: bool,
    /// The resolver stage stopped (the database is closing): the writer stage commits what is
    /// open, then stops.
    resolver_stopped: bool,
    /// The writer stage stopped: the resolver stage stops too, and nothing is left waiting.
    writer_stopped: bool,
}

/// The requests of one group resolved so far.
struct PendingGroup {
    group: OpenGroup,
    /// Accepted requests with their versionstamps, in order.
    accepted: Vec<(Submission, Versionstamp)>,
    /// Refused requests, answered with the group, so that a retry comes after the writes it
    /// conflicted with are durable and readable.
    refused: Vec<(Submission, StoreError)>,
    /// Bytes of the accepted requests' mutations.
    bytes: usize,
}

impl PendingGroup {
    fn len(&self) -> usize {
        self.accepted.len() + self.refused.len()
    }

    fn is_full(&self) -> bool {
        self.len() >= COMMIT_BATCH_TRANSACTIONS_MAX || self.bytes >= COMMIT_BATCH_BYTES_MAX
    }
}

/// A group taken to be written: closed, so later requests go to the next group.
struct TakenGroup {
    accepted: Vec<(Submission, Versionstamp)>,
    refused: Vec<(Submission, StoreError)>,
    /// The delay of a slow commit, if the faults make this one slow.
    delay_ms: Option<u64>,
}

impl PipelineState {
    /// Whether the open group has a request for the writer stage to take.
    fn has_work(&self) -> bool {
        self.open.as_ref().is_some_and(|pending| pending.len() > 0)
    }

    /// Closes the open group and takes it to be written.
    fn take(&mut self) -> Option<TakenGroup> {
        let PendingGroup {
            group,
            accepted,
            refused,
            ..
        } = self.open.take()?;
        self.resolver.close_group(group);
        self.writing = true;
        Some(TakenGroup {
            accepted,
            refused,
            delay_ms: self.resolver.slow_commit_delay_ms(),
        })
    }
}

/// Marks a stage stopped when it ends, even by a panic, so the other stage does not wait for
/// it forever.
struct StageStopped<'a> {
    committer: &'a Committer,
    writer: bool,
}

impl Drop for StageStopped<'_> {
    fn drop(&mut self) {
        let mut state = self.committer.lock();
        if self.writer {
            state.writer_stopped = true;
            // Nothing will write the open group: its requests are answered `Closed`.
            state.open = None;
            self.committer.space.notify_all();
        } else {
            state.resolver_stopped = true;
            self.committer.work.notify_all();
        }
    }
}

impl Committer {
    fn new(
        redb: Arc<redb::Database>,
        resolver: Resolver,
        counters: Arc<Counters>,
        registry: Arc<WatchRegistry>,
    ) -> Self {
        Committer {
            redb,
            state: Mutex::new(PipelineState {
                resolver,
                open: None,
                writing: false,
                resolver_stopped: false,
                writer_stopped: false,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            counters,
            registry,
        }
    }

    fn lock(&self) -> MutexGuard<'_, PipelineState> {
        // Every update of the state completes under the lock, and a stage that panics marks
        // itself stopped on the way out (`StageStopped`), so the state stays usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The resolver stage: resolves each commit request as it arrives into the open group,
    /// until every sender is gone or the writer stage stopped.
    fn run_resolver(&self, requests: mpsc::Receiver<Submission>) {
        let _stopped = StageStopped {
            committer: self,
            writer: false,
        };
        while let Ok(mut submission) = requests.recv() {
            // Resolve everything queued, then hand the group over.
            loop {
                if !self.resolve(submission) {
                    return;
                }
                match requests.try_recv() {
                    Ok(next) => submission = next,
                    Err(_) => break,
                }
            }
            let mut state = self.lock();
            let alone = !state.writing && state.open.as_ref().is_some_and(|open| open.len() == 1);
            if alone {
                // The writer stage is idle and the request came alone: waking the writer
                // would only add a thread hand-off to its latency, so write it here.
                let taken = state.take();
                drop(state);
                if let Some(taken) = taken {
                    self.write_group(taken);
                }
                self.lock().writing = false;
            } else if state.has_work() {
                drop(state);
                self.work.notify_one();
            }
        }
    }

    /// Resolves `submission` into the open group, waiting while it is full. `false` once the
    /// writer stage stopped (the submission is then answered `Closed`).
    fn resolve(&self, submission: Submission) -> bool {
        let mut state = self.lock();
        loop {
            if state.writer_stopped {
                return false;
            }
            if !state.open.as_ref().is_some_and(PendingGroup::is_full) {
                break;
            }
            self.work.notify_one();
            state = self
                .space
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        let PipelineState { resolver, open, .. } = &mut *state;
        let pending = open.get_or_insert_with(|| PendingGroup {
            group: resolver.open_group(Instant::now()),
            accepted: Vec::new(),
            refused: Vec::new(),
            bytes: 0,
        });
        match resolver.resolve_one(&mut pending.group, &submission.request, &self.counters) {
            Ok(stamp) => {
                pending.bytes += submission.request.size_bytes;
                pending.accepted.push((submission, stamp));
            }
            Err(error) => pending.refused.push((submission, error)),
        }
        true
    }

    /// The writer stage: writes groups until the resolver stage stopped and nothing is open.
    fn run_writer(&self) {
        let _stopped = StageStopped {
            committer: self,
            writer: true,
        };
        while let Some(taken) = self.take_group() {
            self.write_group(taken);
            self.lock().writing = false;
        }
        tracing::debug!(
            version = self.lock().resolver.version(),
            "committer stopped"
        );
    }

    /// Waits until the open group has a request and no group is being written, then takes it.
    fn take_group(&self) -> Option<TakenGroup> {
        let mut state = self.lock();
        loop {
            if !state.writing && state.has_work() {
                break;
            }
            if state.resolver_stopped && !state.has_work() {
                return None;
            }
            state = self
                .work
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        let taken = state.take();
        drop(state);
        self.space.notify_one();
        taken
    }

    /// Writes a taken group in one durable redb write transaction, fires the watches it
    /// changed and answers its requests.
    fn write_group(&self, taken: TakenGroup) {
        let TakenGroup {
            accepted,
            refused,
            delay_ms,
        } = taken;
        if let Some(delay_ms) = delay_ms {
            std::thread::sleep(Duration::from_millis(delay_ms));
        }
        let requests: Vec<(&CommitRequest, Versionstamp)> = accepted
            .iter()
            .map(|(submission, stamp)| (&submission.request, *stamp))
            .collect();
        let applied = match requests.first() {
            None => Ok(()),
            Some((_, first)) => {
                let version = first.commit_version();
                let applied = self.apply(version, &requests);
                match &applied {
                    Ok(()) => {
                        self.counters.write_batches.fetch_add(1, Ordering::Relaxed);
                        self.counters
                            .committed_transactions
                            .fetch_add(requests.len() as u64, Ordering::Relaxed);
                        self.notify_watches(&requests);
                    }
                    Err(error) => tracing::error!(%error, "group commit failed"),
                }
                self.lock().resolver.settled(version, Instant::now());
                applied
            }
        };
        let answers: Vec<Result<Versionstamp, StoreError>> = {
            let mut state = self.lock();
            requests
                .iter()
                .map(|(_, stamp)| match &applied {
                    Ok(()) => state.resolver.answer(*stamp),
                    Err(error) => Err(error.clone()),
                })
                .collect()
        };
        drop(requests);
        // Every answer goes out after the fsync (or the failure) of the whole group, and after
        // the watches it changed fired.
        for ((submission, _), answer) in accepted.into_iter().zip(answers) {
            // The caller may have given up waiting; the commit stands either way.
            let _ = submission.reply.send(answer);
        }
        for (submission, error) in refused {
            let _ = submission.reply.send(Err(error));
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
        // The group is visible, so without registered watches there is nothing to fire, and
        // copying the group's keys would be wasted.
        if !self.registry.has_registered() {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::committer::PendingWrite;
    use crate::engine::local::key_after;

    /// A request read at `read_version` that read `read` and sets `write`, with where its
    /// answer arrives.
    fn submission(
        read_version: u64,
        read: &[u8],
        write: &[u8],
    ) -> (
        Submission,
        oneshot::Receiver<Result<Versionstamp, StoreError>>,
    ) {
        let (reply, answer) = oneshot::channel();
        let request = CommitRequest {
            read_version,
            read_conflicts: vec![KeyRange::new(read, &key_after(read))],
            cleared: Vec::new(),
            writes: vec![(write.to_vec(), PendingWrite::Set(b"v".to_vec()))],
            versionstamped_keys: Vec::new(),
            size_bytes: write.len() + 1,
        };
        (Submission { request, reply }, answer)
    }

    /// Driven by hand, without its threads: a group resolved while the one before it is taken
    /// but not yet written is checked against it, gets the next version, and is answered only
    /// once it is written itself, after the group before.
    #[test]
    fn the_next_group_is_resolved_against_the_group_in_flight() {
        let folder = tempfile::tempdir().expect("folder");
        let redb = Arc::new(redb::Database::create(folder.path().join("x.redb")).expect("redb"));
        let version = initialize(&redb).expect("initialize");
        let committer = Committer::new(
            redb,
            Resolver::new(version, None),
            Arc::new(Counters::default()),
            WatchRegistry::new(),
        );
        let (first, mut first_answer) = submission(version, b"a", b"k");
        assert!(committer.resolve(first));
        let in_flight = committer.lock().take().expect("the first group");
        // Both read at the version before the group in flight; one read what it writes.
        let (stale, mut stale_answer) = submission(version, b"k", b"x");
        let (bystander, mut bystander_answer) = submission(version, b"b", b"y");
        assert!(committer.resolve(stale));
        assert!(committer.resolve(bystander));
        {
            let state = committer.lock();
            let next = state.open.as_ref().expect("the next group");
            assert_eq!(
                next.refused.len(),
                1,
                "the stale read conflicts with the group in flight"
            );
            assert!(matches!(next.refused[0].1, StoreError::NotCommitted));
            let in_flight_version = in_flight.accepted[0].1.commit_version();
            assert_eq!(next.accepted[0].1.commit_version(), in_flight_version + 1);
        }
        assert!(
            first_answer.try_recv().is_err(),
            "nothing answered before its fsync"
        );
        committer.write_group(in_flight);
        committer.lock().writing = false;
        assert!(first_answer.try_recv().expect("answered").is_ok());
        assert!(
            stale_answer.try_recv().is_err(),
            "answered with its own group"
        );
        let next = committer.lock().take().expect("the next group");
        committer.write_group(next);
        assert!(matches!(
            stale_answer.try_recv(),
            Ok(Err(StoreError::NotCommitted))
        ));
        let stamp = bystander_answer
            .try_recv()
            .expect("answered")
            .expect("committed");
        assert_eq!(stamp.commit_version(), version + 2);
        assert_eq!(
            committer
                .counters
                .committed_transactions
                .load(Ordering::Relaxed),
            2
        );
    }
}
