//! The committer: one thread that resolves conflicts and applies commits in groups, like
//! FoundationDB's commit proxy and resolver in one.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use redb::{Durability, ReadableTable};
use tokio::sync::oneshot;

use super::{Counters, DATA_TABLE, FaultConfig, META_TABLE, TRANSACTION_AGE_MAX, VERSION_KEY};
use crate::error::StoreError;
use crate::limits::{
    COMMIT_BATCH_BYTES_MAX, COMMIT_BATCH_TRANSACTIONS_MAX, CONFLICT_HISTORY_BYTES_MAX,
};

/// A half-open key range `[begin, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRange {
    pub(crate) begin: Vec<u8>,
    pub(crate) end: Vec<u8>,
}

impl KeyRange {
    pub(crate) fn new(begin: &[u8], end: &[u8]) -> Self {
        KeyRange {
            begin: begin.to_vec(),
            end: end.to_vec(),
        }
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.begin.as_slice() <= key && key < self.end.as_slice()
    }

    fn intersects(&self, other: &KeyRange) -> bool {
        self.begin < other.end && other.begin < self.end
    }
}

/// A buffered write of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PendingWrite {
    Set(Vec<u8>),
    Clear,
    /// FDB's `ADD` on a value this transaction has not read or written.
    Add(i64),
}

/// What a transaction sends to the committer.
pub(crate) struct CommitRequest {
    pub(crate) read_version: u64,
    pub(crate) read_conflicts: Vec<KeyRange>,
    /// Range clears, applied before `writes`.
    pub(crate) cleared: Vec<KeyRange>,
    pub(crate) writes: Vec<(Vec<u8>, PendingWrite)>,
    pub(crate) size_bytes: usize,
    pub(crate) reply: oneshot::Sender<Result<(), StoreError>>,
}

/// FDB's `ADD` of `delta` to a little-endian value (missing is zero; shorter is zero-extended,
/// longer truncated to 8 bytes).
pub(crate) fn apply_add(base: Option<&[u8]>, delta: i64) -> Vec<u8> {
    let mut bytes = [0u8; 8];
    if let Some(base) = base {
        let length = base.len().min(8);
        bytes[..length].copy_from_slice(&base[..length]);
    }
    i64::from_le_bytes(bytes)
        .wrapping_add(delta)
        .to_le_bytes()
        .to_vec()
}

/// SplitMix64: a tiny, good-enough generator for faults and jitter.
pub(crate) fn split_mix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(super) struct Committer {
    redb: Arc<redb::Database>,
    /// The version of the last commit that reached the disk.
    version: u64,
    history: ConflictHistory,
    faults: Option<Faults>,
    counters: Arc<Counters>,
}

impl Committer {
    pub(super) fn new(
        redb: Arc<redb::Database>,
        version: u64,
        faults: Option<FaultConfig>,
        counters: Arc<Counters>,
    ) -> Self {
        let faults = faults.map(|config| Faults {
            state: config.seed,
            config,
        });
        Committer {
            redb,
            version,
            history: ConflictHistory::new(version),
            faults,
            counters,
        }
    }

    /// Serves commit requests until every sender is gone.
    pub(super) fn run(mut self, requests: mpsc::Receiver<CommitRequest>) {
        while let Ok(first) = requests.recv() {
            let mut batch_bytes = first.size_bytes;
            let mut batch = vec![first];
            while batch.len() < COMMIT_BATCH_TRANSACTIONS_MAX
                && batch_bytes < COMMIT_BATCH_BYTES_MAX
            {
                match requests.try_recv() {
                    Ok(request) => {
                        batch_bytes += request.size_bytes;
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
        tracing::debug!(version = self.version, "committer stopped");
    }

    fn commit_batch(&mut self, batch: Vec<CommitRequest>) {
        self.history.forget_older_than(Instant::now());
        if let Some(delay_ms) = self.faults.as_mut().and_then(Faults::slow_commit_delay_ms) {
            std::thread::sleep(Duration::from_millis(delay_ms));
        }
        let version = self.version + 1;
        // Resolve every request first; accepted ones enter the history at once, so a later
        // request of the same batch that read what they write conflicts with them.
        let mut verdicts = Vec::with_capacity(batch.len());
        for request in &batch {
            let verdict = if request.read_version < self.history.floor_version {
                Err(StoreError::TransactionTooOld)
            } else if self.faults.as_mut().is_some_and(Faults::conflict)
                || self.history.conflicts(request)
            {
                Err(StoreError::NotCommitted)
            } else {
                self.history.record(version, request);
                Ok(())
            };
            if matches!(verdict, Err(StoreError::NotCommitted)) {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            verdicts.push(verdict);
        }
        let accepted: Vec<&CommitRequest> = batch
            .iter()
            .zip(&verdicts)
            .filter(|(_, verdict)| verdict.is_ok())
            .map(|(request, _)| request)
            .collect();
        let applied = if accepted.is_empty() {
            Ok(())
        } else {
            let applied = self.apply(version, &accepted);
            if applied.is_ok() {
                self.version = version;
                self.history.seal(version, Instant::now());
                self.counters.write_batches.fetch_add(1, Ordering::Relaxed);
                let committed = accepted.len() as u64;
                self.counters
                    .committed_transactions
                    .fetch_add(committed, Ordering::Relaxed);
            }
            applied
        };
        if let Err(error) = &applied {
            tracing::error!(%error, "group commit failed");
        }
        // Every answer goes out after the fsync (or the failure) of the whole group.
        for (request, verdict) in batch.into_iter().zip(verdicts) {
            let answer = match verdict {
                Ok(()) => match &applied {
                    Ok(()) if self.faults.as_mut().is_some_and(Faults::unknown_result) => {
                        Err(StoreError::CommitUnknownResult)
                    }
                    Ok(()) => Ok(()),
                    Err(error) => Err(error.clone()),
                },
                Err(error) => Err(error),
            };
            // The caller may have given up waiting; the commit stands either way.
            let _ = request.reply.send(answer);
        }
    }

    /// Applies the accepted requests in order in one durable redb write transaction.
    fn apply(&self, version: u64, accepted: &[&CommitRequest]) -> Result<(), StoreError> {
        let mut write = self.redb.begin_write().map_err(StoreError::storage)?;
        write
            .set_durability(Durability::Immediate)
            .map_err(StoreError::storage)?;
        {
            let mut data = write.open_table(DATA_TABLE).map_err(StoreError::storage)?;
            for request in accepted {
                for range in &request.cleared {
                    data.retain_in::<&[u8], _>(
                        range.begin.as_slice()..range.end.as_slice(),
                        |_, _| false,
                    )
                    .map_err(StoreError::storage)?;
                }
                for (key, write) in &request.writes {
                    match write {
                        PendingWrite::Set(value) => {
                            data.insert(key.as_slice(), value.as_slice())
                                .map_err(StoreError::storage)?;
                        }
                        PendingWrite::Clear => {
                            data.remove(key.as_slice()).map_err(StoreError::storage)?;
                        }
                        PendingWrite::Add(delta) => {
                            let base = data
                                .get(key.as_slice())
                                .map_err(StoreError::storage)?
                                .map(|value| value.value().to_vec());
                            let sum = apply_add(base.as_deref(), *delta);
                            data.insert(key.as_slice(), sum.as_slice())
                                .map_err(StoreError::storage)?;
                        }
                    }
                }
            }
            let mut meta = write.open_table(META_TABLE).map_err(StoreError::storage)?;
            meta.insert(VERSION_KEY, version)
                .map_err(StoreError::storage)?;
        }
        write.commit().map_err(StoreError::storage)
    }
}

/// The writes of recent commits, for checking reads against everything committed after them.
/// Commits older than the transaction age limit (or beyond the byte bound) are forgotten and
/// `floor_version` rises past them: a transaction reading below it is too old.
struct ConflictHistory {
    floor_version: u64,
    /// The newest version that wrote each remembered key.
    last_write_by_key: BTreeMap<Vec<u8>, u64>,
    /// Range clears, oldest first.
    cleared: VecDeque<(u64, KeyRange)>,
    /// Keys written per commit version, oldest first, for forgetting them.
    commits: VecDeque<RememberedCommit>,
    /// Keys of the group commit being resolved, sealed into `commits` once it is durable.
    pending_keys: Vec<Vec<u8>>,
    bytes: usize,
}

struct RememberedCommit {
    version: u64,
    committed_at: Instant,
    keys: Vec<Vec<u8>>,
}

impl ConflictHistory {
    fn new(version: u64) -> Self {
        ConflictHistory {
            floor_version: version,
            last_write_by_key: BTreeMap::new(),
            cleared: VecDeque::new(),
            commits: VecDeque::new(),
            pending_keys: Vec::new(),
            bytes: 0,
        }
    }

    /// Whether anything committed after the request's read version wrote into what it read.
    fn conflicts(&self, request: &CommitRequest) -> bool {
        request.read_conflicts.iter().any(|read| {
            let bounds = (
                Bound::Included(read.begin.as_slice()),
                Bound::Excluded(read.end.as_slice()),
            );
            let key_written = self
                .last_write_by_key
                .range::<[u8], _>(bounds)
                .any(|(_, &version)| version > request.read_version);
            key_written
                || self
                    .cleared
                    .iter()
                    .rev()
                    .take_while(|(version, _)| *version > request.read_version)
                    .any(|(_, cleared)| cleared.intersects(read))
        })
    }

    /// Remembers the writes of an accepted request at `version`. Kept even if the group commit
    /// then fails: an extra remembered write can only cause a spurious retry.
    fn record(&mut self, version: u64, request: &CommitRequest) {
        for (key, _) in &request.writes {
            self.bytes += key.len();
            self.last_write_by_key.insert(key.clone(), version);
            self.pending_keys.push(key.clone());
        }
        for range in &request.cleared {
            self.bytes += range.begin.len() + range.end.len();
            self.cleared.push_back((version, range.clone()));
        }
    }

    /// Closes the record of the group commit at `version`.
    fn seal(&mut self, version: u64, committed_at: Instant) {
        let keys = std::mem::take(&mut self.pending_keys);
        self.commits.push_back(RememberedCommit {
            version,
            committed_at,
            keys,
        });
    }

    /// Forgets commits older than the transaction age limit, and the oldest ones beyond the
    /// byte bound.
    fn forget_older_than(&mut self, now: Instant) {
        while let Some(oldest) = self.commits.front() {
            let expired = now.duration_since(oldest.committed_at) > TRANSACTION_AGE_MAX;
            if !expired && self.bytes <= CONFLICT_HISTORY_BYTES_MAX {
                break;
            }
            let Some(oldest) = self.commits.pop_front() else {
                break;
            };
            for key in oldest.keys {
                self.bytes = self.bytes.saturating_sub(key.len());
                if self.last_write_by_key.get(&key) == Some(&oldest.version) {
                    self.last_write_by_key.remove(&key);
                }
            }
            self.floor_version = oldest.version;
        }
        while let Some((version, range)) = self.cleared.front() {
            if *version > self.floor_version {
                break;
            }
            self.bytes = self
                .bytes
                .saturating_sub(range.begin.len() + range.end.len());
            self.cleared.pop_front();
        }
    }
}

/// The seeded fault generator of one database.
struct Faults {
    config: FaultConfig,
    state: u64,
}

impl Faults {
    fn draw(&mut self, probability: f64) -> bool {
        let draw = split_mix(self.state);
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        // The top 53 bits as a uniform number in [0, 1).
        let uniform = (draw >> 11) as f64 / (1u64 << 53) as f64;
        uniform < probability
    }

    fn conflict(&mut self) -> bool {
        self.draw(self.config.conflict_probability)
    }

    fn unknown_result(&mut self) -> bool {
        self.draw(self.config.commit_unknown_result_probability)
    }

    /// The delay of this group commit, if it is to be slow.
    fn slow_commit_delay_ms(&mut self) -> Option<u64> {
        self.draw(self.config.slow_commit_probability)
            .then_some(self.config.slow_commit_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(read_version: u64, reads: &[(&[u8], &[u8])], writes: &[&[u8]]) -> CommitRequest {
        let (reply, _) = oneshot::channel();
        CommitRequest {
            read_version,
            read_conflicts: reads
                .iter()
                .map(|(begin, end)| KeyRange::new(begin, end))
                .collect(),
            cleared: Vec::new(),
            writes: writes
                .iter()
                .map(|key| (key.to_vec(), PendingWrite::Clear))
                .collect(),
            size_bytes: 0,
            reply,
        }
    }

    #[test]
    fn history_checks_newer_writes_and_forgets_old_commits() {
        let mut history = ConflictHistory::new(0);
        let start = Instant::now();
        history.record(1, &request(0, &[], &[b"b"]));
        history.seal(1, start);
        history.record(2, &request(1, &[], &[b"x"]));
        history.seal(2, start + Duration::from_secs(3));

        assert!(history.conflicts(&request(0, &[(b"a", b"c")], &[])));
        assert!(
            !history.conflicts(&request(1, &[(b"a", b"c")], &[])),
            "b is not newer"
        );
        assert!(
            !history.conflicts(&request(0, &[(b"c", b"x")], &[])),
            "ranges are half-open"
        );

        history.forget_older_than(start + TRANSACTION_AGE_MAX + Duration::from_secs(1));
        assert_eq!(
            history.floor_version, 1,
            "commit 1 is forgotten, commit 2 is not"
        );
        assert!(!history.last_write_by_key.contains_key(b"b".as_slice()));
        assert!(history.conflicts(&request(1, &[(b"x", b"y")], &[])));
        history.forget_older_than(start + Duration::from_secs(60));
        assert_eq!((history.floor_version, history.bytes), (2, 0));
        assert!(history.last_write_by_key.is_empty());
    }

    #[test]
    fn atomic_add_follows_foundationdb() {
        assert_eq!(apply_add(None, 5), 5i64.to_le_bytes());
        assert_eq!(apply_add(Some(&[1]), 1), 2i64.to_le_bytes());
        assert_eq!(apply_add(Some(&[0xff; 10]), 1), 0i64.to_le_bytes());
    }
}
