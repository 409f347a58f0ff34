//! What the embedded and memory backends share at commit, like FoundationDB's commit proxy and
//! resolver: the commit request a transaction builds, the resolver that checks it against newer
//! commits and hands out versionstamps, the seeded fault generator, and FoundationDB's atomic
//! operations and versionstamp placement applied to stored values.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::{Counters, FaultConfig, TRANSACTION_AGE_MAX, Versionstamp};
use crate::error::StoreError;
use crate::limits::{CONFLICT_HISTORY_BYTES_MAX, VERSIONSTAMP_BYTES};

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

    pub(crate) fn intersects(&self, other: &KeyRange) -> bool {
        self.begin < other.end && other.begin < self.end
    }
}

/// One of FoundationDB's atomic operations on a little-endian value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AtomicOp {
    /// `ADD` of a signed 8-byte delta.
    Add(i64),
    /// `MIN` with the operand.
    Min(Vec<u8>),
    /// `MAX` with the operand.
    Max(Vec<u8>),
}

impl AtomicOp {
    /// The value after this operation on `base` (`None`: no value).
    pub(crate) fn apply(&self, base: Option<&[u8]>) -> Vec<u8> {
        match self {
            AtomicOp::Add(delta) => apply_add(base, *delta),
            AtomicOp::Min(operand) => apply_min(base, operand),
            AtomicOp::Max(operand) => apply_max(base, operand),
        }
    }

    /// Bytes this operation adds to a transaction (FDB counts the parameter).
    pub(crate) fn size_bytes(&self) -> usize {
        match self {
            AtomicOp::Add(_) => 8,
            AtomicOp::Min(operand) | AtomicOp::Max(operand) => operand.len(),
        }
    }
}

/// A buffered write of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PendingWrite {
    Set(Vec<u8>),
    Clear,
    /// Atomic operations, oldest first, on a value this transaction has not read or written.
    Atomic(Vec<AtomicOp>),
    /// A value whose versionstamp is placed at `offset` at commit, then atomic operations.
    Versionstamped {
        value: Vec<u8>,
        offset: usize,
        then: Vec<AtomicOp>,
    },
}

impl PendingWrite {
    /// This write followed by `op` in the same transaction. Consecutive adds fold into one.
    pub(crate) fn then(self, op: AtomicOp) -> PendingWrite {
        match self {
            PendingWrite::Set(value) => PendingWrite::Set(op.apply(Some(&value))),
            PendingWrite::Clear => PendingWrite::Set(op.apply(None)),
            PendingWrite::Atomic(mut ops) => {
                push_folded(&mut ops, op);
                PendingWrite::Atomic(ops)
            }
            PendingWrite::Versionstamped {
                value,
                offset,
                mut then,
            } => {
                push_folded(&mut then, op);
                PendingWrite::Versionstamped {
                    value,
                    offset,
                    then,
                }
            }
        }
    }

    /// Whether applying the write needs the stored value.
    pub(crate) fn needs_base(&self) -> bool {
        matches!(self, PendingWrite::Atomic(_))
    }

    /// The value after this write on top of `base`, or `None` when the key is removed.
    pub(crate) fn resolve(&self, base: Option<&[u8]>, stamp: Versionstamp) -> Option<Vec<u8>> {
        match self {
            PendingWrite::Set(value) => Some(value.clone()),
            PendingWrite::Clear => None,
            PendingWrite::Atomic(ops) => fold(base.map(<[u8]>::to_vec), ops),
            PendingWrite::Versionstamped {
                value,
                offset,
                then,
            } => {
                let mut value = value.clone();
                place_versionstamp(&mut value, *offset, stamp);
                fold(Some(value), then)
            }
        }
    }
}

/// Appends `op`, folding it into a preceding add.
fn push_folded(ops: &mut Vec<AtomicOp>, op: AtomicOp) {
    if let (Some(AtomicOp::Add(earlier)), AtomicOp::Add(delta)) = (ops.last_mut(), &op) {
        *earlier = earlier.wrapping_add(*delta);
        return;
    }
    ops.push(op);
}

/// `base` after every operation of `ops` in order. With no operations, `base` itself.
pub(crate) fn fold(base: Option<Vec<u8>>, ops: &[AtomicOp]) -> Option<Vec<u8>> {
    ops.iter()
        .fold(base, |value, op| Some(op.apply(value.as_deref())))
}

/// A key written with a versionstamp placed at `offset` at commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VersionstampedKey {
    pub(crate) key: Vec<u8>,
    pub(crate) offset: usize,
    pub(crate) value: Vec<u8>,
    /// How many range clears the transaction had buffered before this write; the later ones
    /// apply after it.
    pub(crate) clears_before: usize,
}

impl VersionstampedKey {
    /// The key with `stamp` in place.
    pub(crate) fn key_at(&self, stamp: Versionstamp) -> Vec<u8> {
        let mut key = self.key.clone();
        place_versionstamp(&mut key, self.offset, stamp);
        key
    }
}

/// Writes `stamp` over the placeholder at `offset`; callers checked that it fits.
pub(crate) fn place_versionstamp(bytes: &mut [u8], offset: usize, stamp: Versionstamp) {
    if let Some(placeholder) = bytes.get_mut(offset..offset + VERSIONSTAMP_BYTES) {
        placeholder.copy_from_slice(stamp.as_bytes());
    }
}

/// What a transaction sends to be committed.
#[derive(Debug)]
pub(crate) struct CommitRequest {
    pub(crate) read_version: u64,
    pub(crate) read_conflicts: Vec<KeyRange>,
    /// Range clears, applied before `writes`.
    pub(crate) cleared: Vec<KeyRange>,
    pub(crate) writes: Vec<(Vec<u8>, PendingWrite)>,
    /// Applied after `writes`, each before the range clears issued after it.
    pub(crate) versionstamped_keys: Vec<VersionstampedKey>,
    pub(crate) size_bytes: usize,
}

impl CommitRequest {
    /// Every single key the request writes when it commits with `stamp`.
    pub(crate) fn written_keys(&self, stamp: Versionstamp) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self.writes.iter().map(|(key, _)| key.clone()).collect();
        keys.extend(
            self.versionstamped_keys
                .iter()
                .map(|written| written.key_at(stamp)),
        );
        keys
    }
}

/// A store that commits can be applied to: a redb write transaction or the memory store.
pub(crate) trait ApplyTarget {
    /// The stored value of `key`.
    fn value(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `value` under `key`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`.
    fn remove(&mut self, key: &[u8]) -> Result<(), StoreError>;
    /// Removes every key of `range`.
    fn remove_range(&mut self, range: &KeyRange) -> Result<(), StoreError>;
}

/// Applies one accepted request committed with `stamp`, in FoundationDB's order: range clears,
/// single-key writes, then versionstamped keys (each unless a later clear of the same
/// transaction covers it).
pub(crate) fn apply_request(
    target: &mut impl ApplyTarget,
    request: &CommitRequest,
    stamp: Versionstamp,
) -> Result<(), StoreError> {
    for range in &request.cleared {
        target.remove_range(range)?;
    }
    for (key, write) in &request.writes {
        let base = if write.needs_base() {
            target.value(key)?
        } else {
            None
        };
        match write.resolve(base.as_deref(), stamp) {
            Some(value) => target.put(key, &value)?,
            None => target.remove(key)?,
        }
    }
    for written in &request.versionstamped_keys {
        let key = written.key_at(stamp);
        let cleared_later = request
            .cleared
            .iter()
            .skip(written.clears_before)
            .any(|range| range.contains(&key));
        if !cleared_later {
            target.put(&key, &written.value)?;
        }
    }
    Ok(())
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

/// FDB's `MAX`: the existing value, zero-extended or truncated to the operand's length, and the
/// operand compared as little-endian unsigned integers; the larger is stored. A missing value
/// counts as zero.
pub(crate) fn apply_max(base: Option<&[u8]>, operand: &[u8]) -> Vec<u8> {
    let existing = resized(base.unwrap_or_default(), operand.len());
    if compare_little_endian(&existing, operand).is_ge() {
        existing
    } else {
        operand.to_vec()
    }
}

/// FDB's `MIN`: like `MAX` but the smaller is stored, and a missing value stores the operand.
pub(crate) fn apply_min(base: Option<&[u8]>, operand: &[u8]) -> Vec<u8> {
    let Some(base) = base else {
        return operand.to_vec();
    };
    let existing = resized(base, operand.len());
    if compare_little_endian(&existing, operand).is_le() {
        existing
    } else {
        operand.to_vec()
    }
}

/// `bytes` zero-extended or truncated to `length`.
fn resized(bytes: &[u8], length: usize) -> Vec<u8> {
    let mut resized = bytes[..bytes.len().min(length)].to_vec();
    resized.resize(length, 0);
    resized
}

/// Compares two equally long little-endian unsigned integers.
fn compare_little_endian(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.iter().rev().cmp(b.iter().rev())
}

/// SplitMix64: a tiny, good-enough generator for faults and jitter.
pub(crate) fn split_mix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Checks commits against the writes of newer ones, assigns commit versions and versionstamps,
/// and injects the configured faults. One per open database, used by one committer at a time.
pub(crate) struct Resolver {
    /// The version of the last commit that reached the store.
    version: u64,
    history: ConflictHistory,
    faults: Option<Faults>,
}

impl Resolver {
    pub(crate) fn new(version: u64, faults: Option<FaultConfig>) -> Self {
        Resolver {
            version,
            history: ConflictHistory::new(version),
            faults: faults.map(|config| Faults {
                state: config.seed,
                config,
            }),
        }
    }

    /// The version of the last commit that reached the store.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// The oldest read version a transaction may still commit (or read, in memory) at.
    pub(crate) fn floor_version(&self) -> u64 {
        self.history.floor_version
    }

    /// The delay of this group commit, if the faults make it slow.
    pub(crate) fn slow_commit_delay_ms(&mut self) -> Option<u64> {
        self.faults.as_mut().and_then(Faults::slow_commit_delay_ms)
    }

    /// Resolves one group of requests, to be applied at the next version. Each accepted request
    /// gets a versionstamp (the version and its order in the group) and enters the history at
    /// once, so a later request of the same group that read what it writes conflicts with it.
    pub(crate) fn resolve(
        &mut self,
        batch: &[&CommitRequest],
        now: Instant,
        counters: &Counters,
    ) -> Vec<Result<Versionstamp, StoreError>> {
        self.history.forget_older_than(now);
        let version = self.version + 1;
        let mut accepted: u16 = 0;
        let mut verdicts = Vec::with_capacity(batch.len());
        for request in batch {
            let verdict = if request.read_version < self.history.floor_version {
                Err(StoreError::TransactionTooOld)
            } else if self.faults.as_mut().is_some_and(Faults::conflict)
                || self.history.conflicts(request)
            {
                counters.conflicts.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::NotCommitted)
            } else {
                let stamp = Versionstamp::new(version, accepted);
                accepted = accepted.saturating_add(1);
                self.history
                    .record(version, &request.written_keys(stamp), &request.cleared);
                Ok(stamp)
            };
            verdicts.push(verdict);
        }
        verdicts
    }

    /// Records that the group resolved last reached the store durably at `version`.
    pub(crate) fn committed(&mut self, version: u64, now: Instant) {
        self.version = version;
        self.history.seal(version, now);
    }

    /// The answer to an accepted, durable request: its versionstamp, or an injected
    /// `CommitUnknownResult`.
    pub(crate) fn answer(&mut self, stamp: Versionstamp) -> Result<Versionstamp, StoreError> {
        if self.faults.as_mut().is_some_and(Faults::unknown_result) {
            return Err(StoreError::CommitUnknownResult);
        }
        Ok(stamp)
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
    fn record(&mut self, version: u64, keys: &[Vec<u8>], cleared: &[KeyRange]) {
        for key in keys {
            self.bytes += key.len();
            self.last_write_by_key.insert(key.clone(), version);
            self.pending_keys.push(key.clone());
        }
        for range in cleared {
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
            let expired = now.saturating_duration_since(oldest.committed_at) > TRANSACTION_AGE_MAX;
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
    use std::time::Duration;

    use super::*;

    fn request(read_version: u64, reads: &[(&[u8], &[u8])]) -> CommitRequest {
        CommitRequest {
            read_version,
            read_conflicts: reads
                .iter()
                .map(|(begin, end)| KeyRange::new(begin, end))
                .collect(),
            cleared: Vec::new(),
            writes: Vec::new(),
            versionstamped_keys: Vec::new(),
            size_bytes: 0,
        }
    }

    #[test]
    fn history_checks_newer_writes_and_forgets_old_commits() {
        let mut history = ConflictHistory::new(0);
        let start = Instant::now();
        history.record(1, &[b"b".to_vec()], &[]);
        history.seal(1, start);
        history.record(2, &[b"x".to_vec()], &[]);
        history.seal(2, start + Duration::from_secs(3));

        assert!(history.conflicts(&request(0, &[(b"a", b"c")])));
        assert!(
            !history.conflicts(&request(1, &[(b"a", b"c")])),
            "b is not newer"
        );
        assert!(
            !history.conflicts(&request(0, &[(b"c", b"x")])),
            "ranges are half-open"
        );

        history.forget_older_than(start + TRANSACTION_AGE_MAX + Duration::from_secs(1));
        assert_eq!(
            history.floor_version, 1,
            "commit 1 is forgotten, commit 2 is not"
        );
        assert!(!history.last_write_by_key.contains_key(b"b".as_slice()));
        assert!(history.conflicts(&request(1, &[(b"x", b"y")])));
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

    #[test]
    fn atomic_min_and_max_follow_foundationdb() {
        let le = |value: u64| value.to_le_bytes().to_vec();
        // Little-endian: 0x0100 (256) is larger than 0x00ff (255) although its first byte is
        // smaller.
        assert_eq!(apply_max(Some(&le(255)), &le(256)), le(256));
        assert_eq!(apply_min(Some(&le(255)), &le(256)), le(255));
        assert_eq!(apply_max(Some(&le(7)), &le(3)), le(7));
        assert_eq!(apply_min(Some(&le(7)), &le(3)), le(3));
        // Missing: MAX compares with zero, MIN stores the operand.
        assert_eq!(apply_max(None, &le(0)), le(0));
        assert_eq!(apply_min(None, &le(9)), le(9));
        // A shorter existing value is zero-extended; a longer one is truncated to the
        // operand's length before comparing, and the result has the operand's length.
        assert_eq!(apply_max(Some(&[5]), &[4, 0]), vec![5, 0]);
        assert_eq!(apply_min(Some(&[1, 2, 3]), &[9]), vec![1]);
        assert_eq!(apply_max(Some(&[1, 2, 3]), &[9]), vec![9]);
    }

    #[test]
    fn writes_fold_atomic_operations_in_order() {
        let stamp = Versionstamp::new(7, 1);
        let add_then_max = PendingWrite::Atomic(Vec::new())
            .then(AtomicOp::Add(2))
            .then(AtomicOp::Add(3))
            .then(AtomicOp::Max(10u64.to_le_bytes().to_vec()));
        assert_eq!(
            add_then_max,
            PendingWrite::Atomic(vec![
                AtomicOp::Add(5),
                AtomicOp::Max(10u64.to_le_bytes().to_vec())
            ])
        );
        assert_eq!(
            add_then_max.resolve(Some(&8u64.to_le_bytes()), stamp),
            Some(13u64.to_le_bytes().to_vec())
        );
        let stamped = PendingWrite::Versionstamped {
            value: vec![b'v'; 12],
            offset: 1,
            then: Vec::new(),
        };
        let mut expected = vec![b'v'];
        expected.extend_from_slice(stamp.as_bytes());
        expected.push(b'v');
        assert_eq!(stamped.resolve(None, stamp), Some(expected));
    }
}
