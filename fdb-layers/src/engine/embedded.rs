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
//! commit is durable.
//!
//! **A failed group commit** (a full disk, an I/O error, a panic inside redb) is survived
//! without a restart:
//! 1. its requests are answered [`StoreError::Unavailable`] (`Corrupt` for a panic): the commit
//!    may or may not be durable, so the caller acknowledges nothing and retries later;
//! 2. the file is opened again ([`StoreFile::reopen`]): redb refuses everything after an I/O
//!    error until then, and repairs the file on the open, where the commit is either wholly
//!    there or not at all;
//! 3. the resolver learns the durable version read back from the file
//!    ([`Resolver::failed`]): if the group is not durable its writes never count again, and the
//!    oldest readable version comes down to the durable one, so new transactions are not "too
//!    old". Groups resolved meanwhile were checked against the failed group as if it had
//!    committed, which can only refuse more than needed, and are written as usual;
//! 4. for a while commits are refused at once with `Unavailable`
//!    ([`STORAGE_RETRY_DELAY_MS_INITIAL`], doubling with each failure in a row up to
//!    [`STORAGE_RETRY_DELAY_MS_MAX`]), so a disk that stays full costs a bounded number of
//!    attempts, not one per commit; the first commit after the refusal tries the disk again
//!    (and the reopen, if that failed too). Reads go on from the last durable state meanwhile.
//!
//! Reads are served synchronously from redb's page cache and file, which is short enough not
//! to warrant a blocking-pool hop per read.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::committer::{
    ApplyTarget, CommitRequest, InjectedDiskFailure, KeyRange, OpenGroup, OpenRead, OpenReads,
    Resolver, apply_request,
};
use super::disk::{DATA_TABLE, META_TABLE, StoreFile, VERSION_KEY, contained, read_error};
use super::local::KeyValue;
use super::replication::{CommittedGroup, Recording, Shipping, StoreExport};
use super::watches::{PendingWatch, WatchRegistry};
use super::{Counters, EmbeddedOptions, IntegrityReport, Versionstamp};
use crate::error::StoreError;
use crate::limits::{
    COMMIT_BATCH_BYTES_MAX, COMMIT_BATCH_TRANSACTIONS_MAX, COMMIT_QUEUE_TRANSACTIONS_MAX,
    STORAGE_RETRY_DELAY_MS_INITIAL, STORAGE_RETRY_DELAY_MS_MAX,
};

/// The thread of the pipeline's resolver stage. Linux keeps the first 15 bytes of a thread's
/// name, `fdb-layers-comm` for both stages, so tools that look for the committer by that name
/// (`relayd bench storage`) count the whole pipeline; Rust's own messages show the full name.
const RESOLVER_THREAD_NAME: &str = "fdb-layers-committer/resolver";
/// The thread of the pipeline's writer stage, which applies and fsyncs the groups.
const WRITER_THREAD_NAME: &str = "fdb-layers-committer/writer";

/// A redb table of the data.
pub(crate) type DataTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// State shared by an embedded database's handles and transactions. Dropping the last one stops
/// the commit pipeline and waits for it, so the file is closed when the drop returns.
pub(crate) struct Shared {
    file: Arc<StoreFile>,
    /// Jobs for the resolver stage; `None` only while dropping.
    requests: Option<mpsc::SyncSender<Job>>,
    /// The commit pipeline's threads, resolver stage first.
    stages: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
    registry: Arc<WatchRegistry>,
    /// The read versions of the open transactions, which bound what the resolver remembers.
    open_reads: Arc<OpenReads>,
    /// The shipping to a standby, with one (the committer's).
    shipping: Option<Arc<Shipping>>,
}

/// What the resolver stage is asked to do.
enum Job {
    /// Resolve a commit request.
    Commit(Submission),
    /// Check the file's integrity once every group resolved before is written.
    CheckIntegrity(oneshot::Sender<Result<IntegrityReport, StoreError>>),
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
        let (file, version) = StoreFile::open(
            path,
            options.disk_faults.unwrap_or_default(),
            options.check_integrity_on_open,
        )?;
        let counters = Arc::new(Counters::default());
        let registry = WatchRegistry::new();
        let (sender, receiver) = mpsc::sync_channel(COMMIT_QUEUE_TRANSACTIONS_MAX);
        let open_reads = OpenReads::new(version);
        let shipping = options.replication.map(Shipping::new);
        let committer = Arc::new(Committer::new(
            file.clone(),
            Resolver::new(version, options.faults),
            open_reads.clone(),
            counters.clone(),
            registry.clone(),
            shipping.clone(),
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
            file,
            requests: Some(sender),
            stages: vec![resolver, writer],
            counters,
            registry,
            open_reads,
            shipping,
        }))
    }

    /// The shipping to a standby, with one.
    pub(crate) fn shipping(&self) -> Option<&Arc<Shipping>> {
        self.shipping.as_ref()
    }

    /// A read snapshot of the data and its version, counted open (for the resolver) until the
    /// returned [`OpenRead`] drops.
    pub(crate) fn snapshot(&self) -> Result<(DataTable, OpenRead), StoreError> {
        self.open_reads
            .begin(|| self.file.with("beginning a read", read_data_and_version))
    }

    /// A consistent read of the whole store, for copying it to a standby. Not counted as an
    /// open transaction: it may take longer than a transaction may.
    pub(crate) fn export(&self) -> Result<StoreExport, StoreError> {
        let (data, version) = self
            .file
            .with("beginning an export", read_data_and_version)?;
        Ok(StoreExport::new(data, version))
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
        self.send(Job::Commit(Submission { request, reply }))?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Checks the file's integrity: once every commit resolved before is written, the file is
    /// closed and opened again with every page of the committed trees verified. Transactions
    /// reading meanwhile run again; commits wait for the check.
    pub(crate) async fn check_integrity(&self) -> Result<IntegrityReport, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::CheckIntegrity(reply))?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Registers the watches of a committed transaction against the latest committed values.
    pub(crate) fn register_watches(&self, watches: Vec<PendingWatch>) {
        let mut reader = LatestReader::new(&self.file);
        self.registry.register(watches, |key| reader.value(key));
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        let requests = self.requests.as_ref().ok_or(StoreError::Closed)?;
        requests.try_send(job).map_err(|error| match error {
            mpsc::TrySendError::Full(_) => StoreError::CommitQueueFull,
            mpsc::TrySendError::Disconnected(_) => StoreError::Closed,
        })
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
    let range =
        contained("reading a range", || table.range::<&[u8]>(begin..end))?.map_err(read_error)?;
    Ok(Box::new(ContainedRange {
        range,
        reverse,
        done: false,
    }))
}

/// The value of `key` in `table`.
pub(crate) fn snapshot_value(table: &DataTable, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    contained("reading a key", || {
        let value = table.get(key).map_err(read_error)?;
        Ok(value.map(|guard| guard.value().to_vec()))
    })?
}

/// A redb range read whose every step is contained: a panic ends it with `Corrupt`.
struct ContainedRange<'a> {
    range: redb::Range<'a, &'static [u8], &'static [u8]>,
    reverse: bool,
    done: bool,
}

impl Iterator for ContainedRange<'_> {
    type Item = Result<KeyValue, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let (range, reverse) = (&mut self.range, self.reverse);
        let step = contained("reading a range", || {
            let item = if reverse {
                range.next_back()
            } else {
                range.next()
            };
            item.map(owned_pair)
        });
        let item = step.unwrap_or_else(|panicked| Some(Err(panicked)));
        if matches!(item, None | Some(Err(_))) {
            self.done = true;
        }
        item
    }
}

/// A pair read from redb, copied out of its guards.
type StoredPair<'a> = (
    redb::AccessGuard<'a, &'static [u8]>,
    redb::AccessGuard<'a, &'static [u8]>,
);

fn owned_pair(item: Result<StoredPair<'_>, redb::StorageError>) -> Result<KeyValue, StoreError> {
    item.map(|(key, value)| (key.value().to_vec(), value.value().to_vec()))
        .map_err(read_error)
}

/// The commit pipeline, shared by its two threads.
struct Committer {
    file: Arc<StoreFile>,
    state: Mutex<PipelineState>,
    /// Signalled when the writer stage has a group to take, and when the resolver stage stops.
    work: Condvar,
    /// Signalled when the writer stage takes the open group, when a group is written, and
    /// when the writer stage stops.
    space: Condvar,
    counters: Arc<Counters>,
    registry: Arc<WatchRegistry>,
    /// Told each durable version, so the resolver forgets what every open transaction saw.
    open_reads: Arc<OpenReads>,
    /// Where each durable group is shipped before its requests are answered (a standby), and
    /// what it confirmed.
    shipping: Option<Arc<Shipping>>,
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
    /// Failed group commits in a row, and the refusal they cause.
    health: Health,
    /// Versions of failed groups whose durability is not known yet: the reopen after them
    /// failed, so the durable version could not be read.
    unsettled_failures: Vec<u64>,
}

/// Whether commits are taken, after failed group commits.
#[derive(Default)]
struct Health {
    /// Group commits that failed in a row.
    failures_in_a_row: u32,
    /// Until when commits are refused.
    refused_until: Option<Instant>,
    /// What the last failure was.
    cause: String,
}

impl Health {
    /// Why and for how long more a commit arriving at `now` is refused, if it is.
    fn refusal(&self, now: Instant) -> Option<StoreError> {
        let until = self.refused_until?;
        let remaining = until
            .checked_duration_since(now)
            .filter(|remaining| !remaining.is_zero())?;
        Some(StoreError::Unavailable(format!(
            "commits are refused for {} ms more after {} failed group commit(s) in a row: {}",
            remaining.as_millis().max(1),
            self.failures_in_a_row,
            self.cause
        )))
    }

    /// Records a failed group commit at `now`: commits are refused for the next delay.
    fn failed(&mut self, now: Instant, cause: &StoreError) {
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        let doublings = self.failures_in_a_row - 1;
        let delay_ms = STORAGE_RETRY_DELAY_MS_INITIAL
            .saturating_mul(2u64.saturating_pow(doublings))
            .min(STORAGE_RETRY_DELAY_MS_MAX);
        self.refused_until = Some(now + Duration::from_millis(delay_ms));
        self.cause = cause.to_string();
    }

    /// Records a group commit that succeeded.
    fn succeeded(&mut self) {
        self.failures_in_a_row = 0;
        self.refused_until = None;
    }
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
    /// The disk failure the faults inject into this commit, if any.
    disk_failure: Option<InjectedDiskFailure>,
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
        let delay_ms = self.resolver.slow_commit_delay_ms();
        let disk_failure = if accepted.is_empty() {
            None
        } else {
            self.resolver.disk_failure()
        };
        Some(TakenGroup {
            accepted,
            refused,
            delay_ms,
            disk_failure,
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
        file: Arc<StoreFile>,
        resolver: Resolver,
        open_reads: Arc<OpenReads>,
        counters: Arc<Counters>,
        registry: Arc<WatchRegistry>,
        shipping: Option<Arc<Shipping>>,
    ) -> Self {
        Committer {
            file,
            state: Mutex::new(PipelineState {
                resolver: resolver.counting(open_reads.clone()),
                open: None,
                writing: false,
                resolver_stopped: false,
                writer_stopped: false,
                health: Health::default(),
                unsettled_failures: Vec::new(),
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            counters,
            registry,
            open_reads,
            shipping,
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
    fn run_resolver(&self, requests: mpsc::Receiver<Job>) {
        let _stopped = StageStopped {
            committer: self,
            writer: false,
        };
        while let Ok(job) = requests.recv() {
            // Resolve everything queued (up to an integrity check), then hand the group over.
            let mut check = None;
            let mut next = Some(job);
            while let Some(job) = next.take() {
                match job {
                    Job::Commit(submission) => {
                        if !self.resolve(submission) {
                            return;
                        }
                    }
                    Job::CheckIntegrity(reply) => {
                        check = Some(reply);
                        break;
                    }
                }
                next = requests.try_recv().ok();
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
                self.finish_writing();
            } else if state.has_work() {
                drop(state);
                self.work.notify_one();
            } else {
                drop(state);
            }
            if let Some(reply) = check {
                // The caller may have given up waiting.
                let _ = reply.send(self.check_integrity());
            }
        }
    }

    /// Resolves `submission` into the open group, waiting while it is full, or refuses it at
    /// once while failed group commits make the pipeline refuse commits. `false` once the
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
        if let Some(refusal) = state.health.refusal(Instant::now()) {
            // Not resolved, so nothing of it is remembered: the caller may retry at once.
            let _ = submission.reply.send(Err(refusal));
            return true;
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
            self.finish_writing();
        }
        tracing::debug!(
            version = self.lock().resolver.version(),
            "committer stopped"
        );
    }

    /// Waits until the open group has a request and no group is being written, then takes it.
    /// Meanwhile, a file left closed by a failed reopen is opened again once the refusal after
    /// it ended: no transaction can begin, so no commit would come to do it.
    fn take_group(&self) -> Option<TakenGroup> {
        let mut state = self.lock();
        loop {
            if !state.writing && state.has_work() {
                break;
            }
            if state.resolver_stopped && !state.has_work() {
                return None;
            }
            if state.writing || self.file.is_open() {
                state = self
                    .work
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            let now = Instant::now();
            match state.health.refused_until {
                Some(until) if until > now => {
                    state = self
                        .work
                        .wait_timeout(state, until - now)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                }
                _ => {
                    state.writing = true;
                    drop(state);
                    if let Err(error) = self.reopen() {
                        self.refuse(&error);
                    }
                    self.finish_writing();
                    state = self.lock();
                }
            }
        }
        let taken = state.take();
        drop(state);
        self.space.notify_one();
        taken
    }

    /// Records a failure (`cause`): commits are refused for a while. If the file is left
    /// closed, the writer stage opens it again when the refusal ends.
    fn refuse(&self, cause: &StoreError) {
        self.lock().health.failed(Instant::now(), cause);
        self.work.notify_all();
    }

    /// Ends the writing of a group (or a check): the next group may be taken, and the writer
    /// stage may open a file left closed.
    fn finish_writing(&self) {
        self.lock().writing = false;
        self.space.notify_all();
        self.work.notify_all();
    }

    /// Writes a taken group in one durable redb write transaction, fires the watches it
    /// changed and answers its requests; after a failure, gets the store going again (see the
    /// module doc).
    fn write_group(&self, taken: TakenGroup) {
        let TakenGroup {
            accepted,
            refused,
            delay_ms,
            disk_failure,
        } = taken;
        if let Some(delay_ms) = delay_ms {
            std::thread::sleep(Duration::from_millis(delay_ms));
        }
        let requests: Vec<(&CommitRequest, Versionstamp)> = accepted
            .iter()
            .map(|(submission, stamp)| (&submission.request, *stamp))
            .collect();
        // The group as shipped to a standby, once durable here.
        let mut shipped = None;
        let answers: Vec<Result<Versionstamp, StoreError>> = match requests.first() {
            None => Vec::new(),
            Some((_, first)) => {
                let version = first.commit_version();
                if let Err(error) = self.ensure_open() {
                    let answer = self.refuse_unwritten(version, &error);
                    requests.iter().map(|_| Err(answer.clone())).collect()
                } else {
                    match self.write(version, &requests, disk_failure) {
                        Ok(group) => {
                            // Before the state's lock: a transaction beginning now reads it.
                            self.open_reads.durable(version);
                            self.counters.write_batches.fetch_add(1, Ordering::Relaxed);
                            self.counters
                                .committed_transactions
                                .fetch_add(requests.len() as u64, Ordering::Relaxed);
                            self.notify_watches(&requests);
                            shipped = group;
                            let mut state = self.lock();
                            state.resolver.settled(version, Instant::now());
                            state.health.succeeded();
                            requests
                                .iter()
                                .map(|(_, stamp)| state.resolver.answer(*stamp))
                                .collect()
                        }
                        Err(error) => {
                            let answer = self.recover(version, &requests, &error);
                            requests.iter().map(|_| Err(answer.clone())).collect()
                        }
                    }
                }
            }
        };
        drop(requests);
        let replies: Vec<_> = accepted
            .into_iter()
            .zip(answers)
            .map(|((submission, _), answer)| (submission.reply, answer))
            .collect();
        match (shipped, &self.shipping) {
            // Answered once the standby has the group; meanwhile the next group is written
            // here, so the two fsyncs overlap.
            (Some(group), Some(shipping)) => shipping.ship(
                group,
                Box::new(move |replicated| answer(replies, replicated)),
            ),
            // Every answer goes out after the fsync (or the failure) of the whole group, and
            // after the watches it changed fired.
            _ => answer(replies, Ok(())),
        }
        for (submission, error) in refused {
            let _ = submission.reply.send(Err(error));
        }
    }

    /// Applies the accepted requests in one durable redb write transaction, with the injected
    /// disk failure, if any, under it.
    fn write(
        &self,
        version: u64,
        accepted: &[(&CommitRequest, Versionstamp)],
        disk_failure: Option<InjectedDiskFailure>,
    ) -> Result<Option<CommittedGroup>, StoreError> {
        if let Some(injected) = disk_failure {
            self.file
                .faults()
                .inject(injected.passing_operations, injected.failure);
        }
        let record = self.shipping.is_some();
        let written = self.file.with("writing a group commit", |redb| {
            apply(redb, version, accepted, record)
        });
        if disk_failure.is_some() {
            self.file.faults().end_injected();
        }
        written
    }

    /// Opens the file again if an earlier failure left it closed.
    fn ensure_open(&self) -> Result<(), StoreError> {
        if self.file.is_open() {
            return Ok(());
        }
        self.reopen().map(|_| ())
    }

    /// The group at `version` was not written because the file could not be opened (with
    /// `error`): it is forgotten, commits are refused for longer, and the answer for its
    /// requests is returned.
    fn refuse_unwritten(&self, version: u64, error: &StoreError) -> StoreError {
        self.counters
            .failed_group_commits
            .fetch_add(1, Ordering::Relaxed);
        self.lock().resolver.not_written(version);
        self.refuse(error);
        StoreError::Unavailable(format!("the group commit was not written: {error}"))
    }

    /// After the group at `version` failed with `error`: opens the file again, tells the
    /// resolver what is durable, starts refusing commits for a while, and returns the answer
    /// for the group's requests.
    fn recover(
        &self,
        version: u64,
        accepted: &[(&CommitRequest, Versionstamp)],
        error: &StoreError,
    ) -> StoreError {
        self.counters
            .failed_group_commits
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, version, "group commit failed; opening the store file again");
        {
            let mut state = self.lock();
            state.unsettled_failures.push(version);
            state.resolver.settled(version, Instant::now());
        }
        let durable = self.reopen();
        let cause = durable.as_ref().err().unwrap_or(error);
        self.refuse(cause);
        if let Ok(durable) = durable
            && durable >= version
        {
            // The failed commit reached the file after all (its last sync failed): what it
            // changed is visible now, so its watches fire. Its requests still hear that it
            // failed: a failed sync does not make it durable.
            self.notify_watches(accepted);
            if let Some(shipping) = &self.shipping {
                // Never shipped: the standby's copy lacks it.
                shipping.skipped(version);
            }
        }
        match error {
            StoreError::Corrupt { .. } => error.clone(),
            error => StoreError::Unavailable(format!(
                "the group commit failed in storage, and may or may not be durable: {error}"
            )),
        }
    }

    /// Opens the file again and tells the resolver the durable version, which settles every
    /// failed group whose durability was unknown.
    fn reopen(&self) -> Result<u64, StoreError> {
        self.counters.reopens.fetch_add(1, Ordering::Relaxed);
        let durable = self.file.reopen(false)?;
        self.open_reads.durable(durable);
        let mut state = self.lock();
        let now = Instant::now();
        let PipelineState {
            resolver,
            unsettled_failures,
            ..
        } = &mut *state;
        for failed in unsettled_failures.drain(..) {
            resolver.failed(failed, durable, now);
        }
        Ok(durable)
    }

    /// Checks the file's integrity once every group resolved so far is written, holding the
    /// writing slot meanwhile. Runs on the resolver stage.
    fn check_integrity(&self) -> Result<IntegrityReport, StoreError> {
        {
            let mut state = self.lock();
            loop {
                if state.writer_stopped {
                    return Err(StoreError::Closed);
                }
                if !state.writing && !state.has_work() {
                    break;
                }
                self.work.notify_one();
                state = self
                    .space
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            state.writing = true;
        }
        self.counters.reopens.fetch_add(1, Ordering::Relaxed);
        let checked = self.file.reopen(true).and_then(|version| {
            let keys = self.file.with("counting keys", |redb| {
                let read = redb.begin_read().map_err(read_error)?;
                let data = read.open_table(DATA_TABLE).map_err(read_error)?;
                data.len().map_err(read_error)
            })?;
            Ok(IntegrityReport { version, keys })
        });
        if let Err(error) = &checked {
            tracing::error!(%error, "the store failed its integrity check");
            if !self.file.is_open() {
                // Nothing can be written: refuse commits, and try again after the refusal.
                self.refuse(error);
            }
        }
        self.finish_writing();
        checked
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
        let mut reader = LatestReader::new(&self.file);
        self.registry
            .notify(&keys, &ranges, |key| reader.value(key));
    }
}

/// A read transaction's data table and the commit version it reads at.
fn read_data_and_version(redb: &redb::Database) -> Result<(DataTable, u64), StoreError> {
    let read = redb.begin_read().map_err(read_error)?;
    let data = read.open_table(DATA_TABLE).map_err(read_error)?;
    let meta = read.open_table(META_TABLE).map_err(read_error)?;
    let version = meta
        .get(VERSION_KEY)
        .map_err(read_error)?
        .map(|version| version.value())
        .ok_or_else(|| StoreError::corrupt("commit version", "missing"))?;
    Ok((data, version))
}

/// Where a request's answer goes, and the answer.
type Reply = (
    oneshot::Sender<Result<Versionstamp, StoreError>>,
    Result<Versionstamp, StoreError>,
);

/// Answers a group's requests: with their own answers, or, for a group the standby did not
/// confirm, `Unavailable` (durable and visible here, but not acknowledged, as a commit whose
/// result is unknown).
fn answer(replies: Vec<Reply>, replicated: Result<(), StoreError>) {
    let refusal = replicated.err().map(|error| {
        StoreError::Unavailable(format!(
            "the commit is durable here but not on the standby: {error}"
        ))
    });
    for (reply, answer) in replies {
        let answer = match (&refusal, answer) {
            (Some(refusal), Ok(_)) => Err(refusal.clone()),
            (_, answer) => answer,
        };
        // The caller may have given up waiting; the commit stands either way.
        let _ = reply.send(answer);
    }
}

/// Applies the accepted requests in order in one durable redb write transaction; with
/// `record`, returns what they did, for a standby.
fn apply(
    redb: &redb::Database,
    version: u64,
    accepted: &[(&CommitRequest, Versionstamp)],
    record: bool,
) -> Result<Option<CommittedGroup>, StoreError> {
    let mut write = redb.begin_write().map_err(StoreError::storage)?;
    write
        .set_durability(Durability::Immediate)
        .map_err(StoreError::storage)?;
    let group = {
        let mut data = RedbTarget(write.open_table(DATA_TABLE).map_err(StoreError::storage)?);
        let mutations = if record {
            let mut recording = Recording {
                target: &mut data,
                mutations: Vec::new(),
            };
            for (request, stamp) in accepted {
                apply_request(&mut recording, request, *stamp)?;
            }
            Some(recording.mutations)
        } else {
            for (request, stamp) in accepted {
                apply_request(&mut data, request, *stamp)?;
            }
            None
        };
        let mut meta = write.open_table(META_TABLE).map_err(StoreError::storage)?;
        let previous = meta
            .insert(VERSION_KEY, version)
            .map_err(StoreError::storage)?
            .map(|previous| previous.value());
        match (mutations, previous) {
            (Some(mutations), Some(previous_version)) => Some(CommittedGroup {
                previous_version,
                version,
                mutations,
            }),
            (Some(_), None) => return Err(StoreError::corrupt("commit version", "missing")),
            (None, _) => None,
        }
    };
    write.commit().map_err(StoreError::storage)?;
    Ok(group)
}

/// Reads latest committed values, opening one redb read transaction on first use.
struct LatestReader<'a> {
    file: &'a StoreFile,
    table: Option<DataTable>,
}

impl<'a> LatestReader<'a> {
    fn new(file: &'a StoreFile) -> Self {
        LatestReader { file, table: None }
    }

    fn value(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let table = match &mut self.table {
            Some(table) => table,
            empty => {
                let table = self.file.with("beginning a read", |redb| {
                    let read = redb.begin_read().map_err(read_error)?;
                    read.open_table(DATA_TABLE).map_err(read_error)
                })?;
                empty.insert(table)
            }
        };
        snapshot_value(table, key)
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

    #[test]
    fn refusals_double_with_each_failure_in_a_row_up_to_the_bound() {
        let mut health = Health::default();
        let now = Instant::now();
        assert!(health.refusal(now).is_none());
        let cause = StoreError::Unavailable("the disk is full".to_owned());
        let delays_ms: Vec<u128> = (0..11)
            .map(|_| {
                health.failed(now, &cause);
                health
                    .refused_until
                    .map_or(0, |until| (until - now).as_millis())
            })
            .collect();
        assert_eq!(
            delays_ms,
            [20, 40, 80, 160, 320, 640, 1_280, 2_560, 5_000, 5_000, 5_000]
        );
        let refusal = health.refusal(now + Duration::from_millis(4_000));
        assert!(
            matches!(&refusal, Some(StoreError::Unavailable(message)) if message.contains("11 failed group commit(s) in a row: storage unavailable: the disk is full")),
            "{refusal:?}"
        );
        assert!(health.refusal(now + Duration::from_millis(5_000)).is_none());
        health.succeeded();
        assert!(health.refusal(now).is_none());
        health.failed(now, &cause);
        assert_eq!(
            health.refused_until,
            Some(now + Duration::from_millis(STORAGE_RETRY_DELAY_MS_INITIAL))
        );
    }

    /// Driven by hand, without its threads: a group resolved while the one before it is taken
    /// but not yet written is checked against it, gets the next version, and is answered only
    /// once it is written itself, after the group before.
    #[test]
    fn the_next_group_is_resolved_against_the_group_in_flight() {
        let folder = tempfile::tempdir().expect("folder");
        let (file, version) = StoreFile::open(
            &folder.path().join("x.redb"),
            crate::engine::DiskFaults::new(),
            true,
        )
        .expect("open");
        let committer = Committer::new(
            file,
            Resolver::new(version, None),
            OpenReads::new(version),
            Arc::new(Counters::default()),
            WatchRegistry::new(),
            None,
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
        committer.finish_writing();
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
