//! What the embedded and memory backends share at commit, like FoundationDB's commit proxy and
//! resolver: the commit request a transaction builds, the resolver that checks it against newer
//! commits and hands out versionstamps, the seeded fault generator, and FoundationDB's atomic
//! operations and versionstamp placement applied to stored values.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::disk::DiskFailure;
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

    /// The value after this write on top of `base`, or `None` when the key is removed. A plain
    /// set is borrowed, not copied: most writes are sets, and the store copies the value anyway.
    pub(crate) fn resolve(
        &self,
        base: Option<&[u8]>,
        stamp: Versionstamp,
    ) -> Option<Cow<'_, [u8]>> {
        match self {
            PendingWrite::Set(value) => Some(Cow::Borrowed(value)),
            PendingWrite::Clear => None,
            PendingWrite::Atomic(ops) => fold(base.map(<[u8]>::to_vec), ops).map(Cow::Owned),
            PendingWrite::Versionstamped {
                value,
                offset,
                then,
            } => {
                let mut value = value.clone();
                place_versionstamp(&mut value, *offset, stamp);
                fold(Some(value), then).map(Cow::Owned)
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

/// The read versions of a store's open transactions, and the newest durable version (the one
/// every transaction beginning from now on reads at, or a later one), so that the resolver
/// forgets a commit as soon as no transaction that can still commit read before it.
///
/// Without it the resolver keeps every commit for the whole transaction age limit (5 s), as
/// FoundationDB's resolver does for read versions it cannot see: under load that is hundreds
/// of thousands of remembered keys, and every conflict check and every insertion walks them
/// (a sixth of a busy region's CPU went to comparing keys in that map). A region's
/// transactions live a few milliseconds, so the history shrinks to the groups they overlap.
///
/// A transaction's version is read and counted under one lock ([`OpenReads::begin`]), and the
/// bound the resolver asks for ([`OpenReads::oldest_read_version`]) is taken under the same
/// lock: no transaction can have read a version without being counted when the bound is taken,
/// and one that begins after reads at least the durable version the bound was capped at.
#[derive(Debug)]
pub(crate) struct OpenReads {
    state: Mutex<OpenReadsState>,
}

#[derive(Debug)]
struct OpenReadsState {
    /// How many open transactions read at each version.
    open_by_version: BTreeMap<u64, usize>,
    /// The newest version known to be durable; never goes down.
    durable_version: u64,
}

/// One open transaction's read version, counted by [`OpenReads`] until it drops.
#[derive(Debug)]
pub(crate) struct OpenRead {
    reads: Arc<OpenReads>,
    version: u64,
}

impl OpenReads {
    /// No transaction open; `durable_version` is the store's durable version.
    pub(crate) fn new(durable_version: u64) -> Arc<Self> {
        Arc::new(OpenReads {
            state: Mutex::new(OpenReadsState {
                open_by_version: BTreeMap::new(),
                durable_version,
            }),
        })
    }

    /// Runs `read`, which opens a snapshot and returns it with its version, and counts that
    /// version open until the returned [`OpenRead`] drops. `read` runs under the lock, so it
    /// must be short and take no lock that a holder of another engine lock waits on.
    pub(crate) fn begin<T>(
        self: &Arc<Self>,
        read: impl FnOnce() -> Result<(T, u64), StoreError>,
    ) -> Result<(T, OpenRead), StoreError> {
        let mut state = self.lock();
        let (snapshot, version) = read()?;
        *state.open_by_version.entry(version).or_insert(0) += 1;
        let open = OpenRead {
            reads: self.clone(),
            version,
        };
        Ok((snapshot, open))
    }

    /// Records that `version` is durable: every transaction beginning from now on reads at it
    /// or later.
    pub(crate) fn durable(&self, version: u64) {
        let mut state = self.lock();
        state.durable_version = state.durable_version.max(version);
    }

    /// The oldest version an open transaction read at, or the durable version if that is older
    /// or none is open: commits at or below it conflict with nothing that can still commit.
    pub(crate) fn oldest_read_version(&self) -> u64 {
        let state = self.lock();
        let oldest_open = state.open_by_version.keys().next().copied();
        oldest_open.map_or(state.durable_version, |oldest| {
            oldest.min(state.durable_version)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OpenReadsState> {
        // Every update completes under the lock, so a poisoned one is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl OpenRead {
    /// The version the transaction reads at.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }
}

impl Drop for OpenRead {
    fn drop(&mut self) {
        let mut state = self.reads.lock();
        if let Some(count) = state.open_by_version.get_mut(&self.version) {
            *count -= 1;
            if *count == 0 {
                state.open_by_version.remove(&self.version);
            }
        }
    }
}

/// Checks commits against the writes of newer ones, assigns commit versions and versionstamps,
/// and injects the configured faults. One per open database, used by one committer at a time.
pub(crate) struct Resolver {
    /// The version of the last group that accepted a request; the next group gets the one after
    /// it. A group whose commit then failed keeps its version unused: versions only grow.
    version: u64,
    history: ConflictHistory,
    faults: Option<Faults>,
    /// The store's open transactions, when it counts them: commits no open transaction read
    /// before are forgotten at once instead of after the transaction age limit.
    open_reads: Option<Arc<OpenReads>>,
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
            open_reads: None,
        }
    }

    /// This resolver, forgetting each commit once no transaction counted by `open_reads` (nor
    /// any beginning later) read before it.
    pub(crate) fn counting(mut self, open_reads: Arc<OpenReads>) -> Self {
        self.open_reads = Some(open_reads);
        self
    }

    /// The version of the last group that accepted a request.
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

    /// Resolves one group of requests, to be applied at the next version (see
    /// [`Resolver::resolve_one`]).
    pub(crate) fn resolve(
        &mut self,
        batch: &[&CommitRequest],
        now: Instant,
        counters: &Counters,
    ) -> Vec<Result<Versionstamp, StoreError>> {
        let mut group = self.open_group(now);
        let verdicts = batch
            .iter()
            .map(|request| self.resolve_one(&mut group, request, counters))
            .collect();
        self.close_group(group);
        verdicts
    }

    /// Starts the group to be applied at the next version, forgetting what has aged out.
    pub(crate) fn open_group(&mut self, now: Instant) -> OpenGroup {
        let read_by_all = self
            .open_reads
            .as_ref()
            .map_or(0, |open_reads| open_reads.oldest_read_version());
        self.history.forget_older_than(now, read_by_all);
        OpenGroup {
            remembered: RememberedCommit::new(self.version + 1, now),
            accepted: 0,
        }
    }

    /// Resolves one request into `group`. An accepted request gets a versionstamp (the group's
    /// version and its order in the group) and enters the history at once, so a later request
    /// of the same group that read what it writes conflicts with it, and so does every request
    /// of a later group that read it, whether this group is durable yet or not.
    pub(crate) fn resolve_one(
        &mut self,
        group: &mut OpenGroup,
        request: &CommitRequest,
        counters: &Counters,
    ) -> Result<Versionstamp, StoreError> {
        if request.read_version < self.history.floor_version {
            return Err(StoreError::TransactionTooOld);
        }
        if self.faults.as_mut().is_some_and(Faults::conflict) || self.history.conflicts(request) {
            counters.conflicts.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::NotCommitted);
        }
        let stamp = Versionstamp::new(group.remembered.version, group.accepted);
        group.accepted = group.accepted.saturating_add(1);
        self.history.record(&mut group.remembered, request, stamp);
        Ok(stamp)
    }

    /// Ends `group`: no request joins it any more, and the next group gets the next version
    /// if it accepted any.
    pub(crate) fn close_group(&mut self, group: OpenGroup) {
        if group.accepted > 0 {
            self.version = group.remembered.version;
            self.history.seal(group.remembered);
        }
    }

    /// Records that the group resolved at `version` reached the store durably at `now`: its
    /// writes are remembered for the transaction age limit from then.
    pub(crate) fn settled(&mut self, version: u64, now: Instant) {
        self.history.settled(version, now);
    }

    /// Records that the group resolved at `version` failed to commit, and that the store's
    /// durable version is now `durable_version` (read from the store after the failure).
    ///
    /// A group above the durable version never became durable: nothing will ever read its
    /// writes, so it is forgotten at once, and a retry of its requests (which reads what they
    /// wrote) does not conflict with it. A group at or below it is durable after all, and
    /// stays remembered like any other. The floor comes down to the durable version if
    /// forgotten groups had raised it past: every group between them failed, so new
    /// transactions, which read at the durable version, are checked against everything that
    /// can be read after it. Groups resolved after the failed one stay remembered and may
    /// still be written (they were checked against the failed group as if it had committed,
    /// which only refused more than needed). This is what keeps a failed commit from leaving
    /// every later transaction "too old".
    pub(crate) fn failed(&mut self, version: u64, durable_version: u64, now: Instant) {
        if durable_version < version {
            self.history.forget_never_durable(version);
        } else {
            self.history.settled(version, now);
        }
        self.history.floor_version = self.history.floor_version.min(durable_version);
        self.version = self.version.max(durable_version);
    }

    /// Records that the group resolved at `version` was never written (the store could not
    /// take it): like a failed group that is not durable, it is forgotten at once.
    pub(crate) fn not_written(&mut self, version: u64) {
        self.history.forget_never_durable(version);
    }

    /// The disk failure of this group commit, if the faults make it fail.
    pub(crate) fn disk_failure(&mut self) -> Option<InjectedDiskFailure> {
        self.faults.as_mut().and_then(Faults::disk_failure)
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

/// A group of requests being resolved, all to be applied at one version.
pub(crate) struct OpenGroup {
    /// What the group's accepted requests write, with the group's version.
    remembered: RememberedCommit,
    /// Requests accepted so far, the next one's order within the group.
    accepted: u16,
}

/// The writes of recent commits, for checking reads against everything committed after them.
/// Commits older than the transaction age limit (or beyond the byte bound), and on a store that
/// counts its open transactions ([`OpenReads`]) commits every open transaction read past, are
/// forgotten and `floor_version` rises past them: a transaction reading below it is too old.
///
/// Like FoundationDB's resolver, a read range is checked in logarithmic time whatever the
/// history holds: single-key writes sit in a map of key → newest version, and range clears in
/// an index of disjoint cleared segments ([`ClearIndex`]), so a check looks up its range in
/// both (plus one step per remembered key or segment inside the range) instead of scanning
/// every clear since its read version.
struct ConflictHistory {
    floor_version: u64,
    /// The newest version that wrote each remembered key. Keys are shared with the commit that
    /// wrote them ([`RememberedCommit::keys`]), so a key is copied once however often it is
    /// written.
    last_write_by_key: BTreeMap<Arc<[u8]>, u64>,
    /// The newest version that cleared each remembered range.
    cleared: ClearIndex,
    /// What each resolved group wrote, oldest first, for forgetting it.
    commits: VecDeque<RememberedCommit>,
    /// Bytes of remembered keys and ranges in `commits` (the index counts its own).
    bytes: usize,
}

/// What one resolved group wrote.
struct RememberedCommit {
    version: u64,
    /// When the group was resolved, then when it settled (durable or failed); it is forgotten
    /// the transaction age limit after.
    committed_at: Instant,
    keys: Vec<Arc<[u8]>>,
    cleared: Vec<KeyRange>,
}

impl RememberedCommit {
    fn new(version: u64, committed_at: Instant) -> Self {
        RememberedCommit {
            version,
            committed_at,
            keys: Vec::new(),
            cleared: Vec::new(),
        }
    }
}

impl ConflictHistory {
    fn new(version: u64) -> Self {
        ConflictHistory {
            floor_version: version,
            last_write_by_key: BTreeMap::new(),
            cleared: ClearIndex::default(),
            commits: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Bytes held, checked against [`CONFLICT_HISTORY_BYTES_MAX`].
    fn bytes(&self) -> usize {
        self.bytes + self.cleared.bytes
    }

    /// Whether anything committed after the request's read version wrote into what it read.
    fn conflicts(&self, request: &CommitRequest) -> bool {
        request.read_conflicts.iter().any(|read| {
            if read.begin >= read.end {
                return false;
            }
            let bounds = (
                Bound::Included(read.begin.as_slice()),
                Bound::Excluded(read.end.as_slice()),
            );
            let key_written = self
                .last_write_by_key
                .range::<[u8], _>(bounds)
                .any(|(_, &version)| version > request.read_version);
            key_written || self.cleared.cleared_after(read, request.read_version)
        })
    }

    /// Remembers the writes of a request accepted with `stamp` in the group `commit` is the
    /// record of. Kept even if the group commit then fails: an extra remembered write can only
    /// cause a spurious retry.
    fn record(
        &mut self,
        commit: &mut RememberedCommit,
        request: &CommitRequest,
        stamp: Versionstamp,
    ) {
        for (key, _) in &request.writes {
            self.remember_key(commit, key);
        }
        for written in &request.versionstamped_keys {
            self.remember_key(commit, &written.key_at(stamp));
        }
        for range in &request.cleared {
            self.bytes += range.begin.len() + range.end.len();
            self.cleared.insert(range, commit.version);
            commit.cleared.push(range.clone());
        }
    }

    fn remember_key(&mut self, commit: &mut RememberedCommit, key: &[u8]) {
        self.bytes += key.len();
        // A key written again shares the copy the map already holds.
        let shared = match self.last_write_by_key.get_key_value(key) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(key),
        };
        self.last_write_by_key
            .insert(shared.clone(), commit.version);
        commit.keys.push(shared);
    }

    /// Keeps the record of a resolved group until it is forgotten.
    fn seal(&mut self, commit: RememberedCommit) {
        self.commits.push_back(commit);
    }

    /// Restarts the age of the group at `version` at `now`, when it settled.
    fn settled(&mut self, version: u64, now: Instant) {
        // The group settling is one of the last resolved.
        if let Some(commit) = self
            .commits
            .iter_mut()
            .rev()
            .find(|commit| commit.version == version)
        {
            commit.committed_at = commit.committed_at.max(now);
        }
    }

    /// Forgets the group at `version`, which never became durable, without raising the floor,
    /// and rebuilds the indexes from the groups left (rare: once per failed group commit).
    fn forget_never_durable(&mut self, version: u64) {
        let Some(position) = self
            .commits
            .iter()
            .rposition(|commit| commit.version == version)
        else {
            return;
        };
        let Some(failed) = self.commits.remove(position) else {
            return;
        };
        let failed_bytes: usize = failed.keys.iter().map(|key| key.len()).sum::<usize>()
            + failed
                .cleared
                .iter()
                .map(|range| range.begin.len() + range.end.len())
                .sum::<usize>();
        self.bytes = self.bytes.saturating_sub(failed_bytes);
        self.last_write_by_key.clear();
        self.cleared = ClearIndex::default();
        for commit in &self.commits {
            for key in &commit.keys {
                self.last_write_by_key.insert(key.clone(), commit.version);
            }
            for range in &commit.cleared {
                self.cleared.insert(range, commit.version);
            }
        }
    }

    /// Forgets commits older than the transaction age limit, commits at or below
    /// `read_by_all` (every transaction that can still commit read at that version or later,
    /// so they conflict with none of them; 0 when the store does not count its transactions),
    /// and the oldest ones beyond the byte bound.
    fn forget_older_than(&mut self, now: Instant, read_by_all: u64) {
        while let Some(oldest) = self.commits.front() {
            let expired = now.saturating_duration_since(oldest.committed_at) > TRANSACTION_AGE_MAX;
            let seen_by_all = oldest.version <= read_by_all;
            if !expired && !seen_by_all && self.bytes() <= CONFLICT_HISTORY_BYTES_MAX {
                break;
            }
            let Some(oldest) = self.commits.pop_front() else {
                break;
            };
            self.floor_version = oldest.version;
            for key in oldest.keys {
                self.bytes = self.bytes.saturating_sub(key.len());
                if self.last_write_by_key.get(&*key) == Some(&oldest.version) {
                    self.last_write_by_key.remove(&*key);
                }
            }
            for range in &oldest.cleared {
                self.bytes = self
                    .bytes
                    .saturating_sub(range.begin.len() + range.end.len());
                self.cleared.forget(range, self.floor_version);
            }
        }
    }
}

/// Remembered range clears as disjoint segments, each mapped from its first key to its end and
/// the newest version that cleared it: FoundationDB's resolver keeps the same ordered map of
/// key boundaries to versions. Whether a read range was cleared after a version is one lookup
/// of the segment reaching into the range from before it, then the segments starting inside it.
///
/// Versions are recorded in ascending order, so a new clear simply replaces what it covers:
/// the parts of older segments outside it stay with their versions. The index holds at most
/// two more segments than the clears it remembers, and each segment lies within a clear of its
/// version, so forgetting a commit's clears forgets every segment of its version.
#[derive(Default)]
struct ClearIndex {
    segments: BTreeMap<Vec<u8>, ClearedSegment>,
    /// Bytes of the segments' keys.
    bytes: usize,
}

/// The end of one cleared segment and the newest version that cleared it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClearedSegment {
    end: Vec<u8>,
    version: u64,
}

impl ClearIndex {
    /// Records that `range` was cleared at `version`, newer than every version recorded so far.
    fn insert(&mut self, range: &KeyRange, version: u64) {
        if range.begin >= range.end {
            return;
        }
        let (begin, end) = (range.begin.as_slice(), range.end.as_slice());
        // What an older segment had beyond the range, to put back after it.
        let mut beyond: Option<ClearedSegment> = None;
        // A segment starting before the range keeps its part before it.
        if let Some((_, before)) = self
            .segments
            .range_mut::<[u8], _>((Bound::Unbounded, Bound::Excluded(begin)))
            .next_back()
            && before.end.as_slice() > begin
        {
            debug_assert!(before.version <= version, "clears recorded out of order");
            let old_end = std::mem::replace(&mut before.end, begin.to_vec());
            self.bytes = self.bytes + begin.len() - old_end.len();
            if old_end.as_slice() > end {
                beyond = Some(ClearedSegment {
                    end: old_end,
                    version: before.version,
                });
            }
        }
        // Segments starting inside the range are covered; the last may reach beyond it.
        let covered: Vec<Vec<u8>> = self
            .segments
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
            .map(|(first, _)| first.clone())
            .collect();
        for first in covered {
            if let Some(segment) = self.segments.remove(&first) {
                debug_assert!(segment.version <= version, "clears recorded out of order");
                self.bytes -= first.len() + segment.end.len();
                if segment.end.as_slice() > end {
                    beyond = Some(segment);
                }
            }
        }
        if let Some(segment) = beyond {
            self.bytes += end.len() + segment.end.len();
            self.segments.insert(end.to_vec(), segment);
        }
        self.bytes += begin.len() + end.len();
        self.segments.insert(
            begin.to_vec(),
            ClearedSegment {
                end: end.to_vec(),
                version,
            },
        );
    }

    /// Whether a clear newer than `version` intersects `range`.
    fn cleared_after(&self, range: &KeyRange, version: u64) -> bool {
        if self.segments.is_empty() || range.begin >= range.end {
            return false;
        }
        let (begin, end) = (range.begin.as_slice(), range.end.as_slice());
        let reaching_in = self
            .segments
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(begin)))
            .next_back()
            .is_some_and(|(_, segment)| {
                segment.end.as_slice() > begin && segment.version > version
            });
        reaching_in
            || self
                .segments
                .range::<[u8], _>((Bound::Excluded(begin), Bound::Excluded(end)))
                .any(|(_, segment)| segment.version > version)
    }

    /// Forgets the segments intersecting `range` (a clear of a forgotten commit) that no
    /// transaction at or above `floor_version` can conflict with.
    fn forget(&mut self, range: &KeyRange, floor_version: u64) {
        if range.begin >= range.end {
            return;
        }
        let (begin, end) = (range.begin.as_slice(), range.end.as_slice());
        let reaching_in = self
            .segments
            .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(begin)))
            .next_back()
            .filter(|(_, segment)| segment.end.as_slice() > begin);
        let forgotten: Vec<Vec<u8>> = reaching_in
            .into_iter()
            .chain(
                self.segments
                    .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end))),
            )
            .filter(|(_, segment)| segment.version <= floor_version)
            .map(|(first, _)| first.clone())
            .collect();
        for first in forgotten {
            if let Some(segment) = self.segments.remove(&first) {
                self.bytes -= first.len() + segment.end.len();
            }
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

    /// The disk failure of this group commit, if it is to fail.
    fn disk_failure(&mut self) -> Option<InjectedDiskFailure> {
        if !self.draw(self.config.io_error_probability) {
            return None;
        }
        let failure = if self.draw(0.5) {
            DiskFailure::NoSpace
        } else {
            DiskFailure::Io
        };
        let passing_operations = split_mix(self.state) % INJECTED_FAILURE_PASSING_OPERATIONS_MAX;
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        Some(InjectedDiskFailure {
            failure,
            passing_operations,
            applied: self.draw(0.5),
        })
    }
}

/// A disk failure the seeded faults inject into one group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InjectedDiskFailure {
    /// How the disk fails.
    pub(crate) failure: DiskFailure,
    /// Embedded backend: the file operations (writes, syncs, resizes) of the commit that pass
    /// before the failing ones, so the commit fails early (not durable) or late (maybe durable).
    pub(crate) passing_operations: u64,
    /// Memory backend: whether the commit was applied before the failure.
    pub(crate) applied: bool,
}

/// Bound of [`InjectedDiskFailure::passing_operations`]: a redb commit writes its pages, its
/// header and syncs at least twice, so every injected failure lands inside the commit.
const INJECTED_FAILURE_PASSING_OPERATIONS_MAX: u64 = 4;

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

    /// Remembers one group at `version`, resolved at `at`, that wrote `keys` and cleared
    /// `cleared`.
    fn remember(
        history: &mut ConflictHistory,
        version: u64,
        at: Instant,
        keys: &[&[u8]],
        cleared: &[(&[u8], &[u8])],
    ) {
        let request = CommitRequest {
            cleared: cleared
                .iter()
                .map(|(begin, end)| KeyRange::new(begin, end))
                .collect(),
            writes: keys
                .iter()
                .map(|key| (key.to_vec(), PendingWrite::Set(Vec::new())))
                .collect(),
            ..request(0, &[])
        };
        let mut commit = RememberedCommit::new(version, at);
        history.record(&mut commit, &request, Versionstamp::new(version, 0));
        history.seal(commit);
    }

    #[test]
    fn history_checks_newer_writes_and_forgets_old_commits() {
        let mut history = ConflictHistory::new(0);
        let start = Instant::now();
        remember(&mut history, 1, start, &[b"b"], &[]);
        remember(
            &mut history,
            2,
            start + Duration::from_secs(3),
            &[b"x"],
            &[],
        );

        assert!(history.conflicts(&request(0, &[(b"a", b"c")])));
        assert!(
            !history.conflicts(&request(1, &[(b"a", b"c")])),
            "b is not newer"
        );
        assert!(
            !history.conflicts(&request(0, &[(b"c", b"x")])),
            "ranges are half-open"
        );

        history.forget_older_than(start + TRANSACTION_AGE_MAX + Duration::from_secs(1), 0);
        assert_eq!(
            history.floor_version, 1,
            "commit 1 is forgotten, commit 2 is not"
        );
        assert!(!history.last_write_by_key.contains_key(b"b".as_slice()));
        assert!(history.conflicts(&request(1, &[(b"x", b"y")])));
        history.forget_older_than(start + Duration::from_secs(60), 0);
        assert_eq!((history.floor_version, history.bytes()), (2, 0));
        assert!(history.last_write_by_key.is_empty());
    }

    /// A request that writes `keys`, read at `read_version` with the ranges `reads`.
    fn writing(read_version: u64, reads: &[(&[u8], &[u8])], keys: &[&[u8]]) -> CommitRequest {
        CommitRequest {
            writes: keys
                .iter()
                .map(|key| (key.to_vec(), PendingWrite::Set(Vec::new())))
                .collect(),
            ..request(read_version, reads)
        }
    }

    #[test]
    fn a_group_that_never_became_durable_stops_conflicting_and_brings_the_floor_down() {
        let counters = Counters::default();
        let start = Instant::now();
        let mut resolver = Resolver::new(0, None);
        let first = resolver.resolve(&[&writing(0, &[], &[b"a"])], start, &counters);
        assert_eq!(
            first[0].as_ref().map(Versionstamp::commit_version).ok(),
            Some(1)
        );
        resolver.settled(1, start);
        // Group 2 writes b and fails; group 3, resolved while group 2 was written, was checked
        // against it as if it had committed.
        let failed = resolver.resolve(&[&writing(1, &[], &[b"b"])], start, &counters);
        assert_eq!(
            failed[0].as_ref().map(Versionstamp::commit_version).ok(),
            Some(2)
        );
        let meanwhile =
            resolver.resolve(&[&writing(1, &[(b"b", b"c")], &[b"x"])], start, &counters);
        assert!(matches!(meanwhile[0], Err(StoreError::NotCommitted)));
        // The file says group 2 is not durable: its write no longer conflicts (the retry of a
        // request that read b commits), group 1's still does.
        resolver.failed(2, 1, start);
        let retry = resolver.resolve(&[&writing(1, &[(b"b", b"c")], &[b"b"])], start, &counters);
        assert_eq!(
            retry[0].as_ref().map(Versionstamp::commit_version).ok(),
            Some(3)
        );
        let stale = resolver.resolve(&[&writing(0, &[(b"a", b"b")], &[b"y"])], start, &counters);
        assert!(matches!(stale[0], Err(StoreError::NotCommitted)));

        // A failed group whose durability was not known yet is forgotten with age like any
        // other, raising the floor past the durable version; learning that it failed brings
        // the floor back down, so transactions reading at the durable version commit.
        let later = start + TRANSACTION_AGE_MAX + Duration::from_secs(1);
        let mut resolver = Resolver::new(0, None);
        resolver.resolve(&[&writing(0, &[], &[b"a"])], start, &counters);
        resolver.settled(1, start);
        resolver.resolve(&[&writing(1, &[], &[b"b"])], start, &counters);
        resolver.settled(2, start);
        let forgotten = resolver.resolve(&[&writing(1, &[], &[b"c"])], later, &counters);
        assert!(matches!(forgotten[0], Err(StoreError::TransactionTooOld)));
        assert_eq!(resolver.floor_version(), 2);
        resolver.failed(2, 1, later);
        assert_eq!(resolver.floor_version(), 1);
        let accepted = resolver.resolve(&[&writing(1, &[(b"a", b"z")], &[b"c"])], later, &counters);
        assert_eq!(
            accepted[0].as_ref().map(Versionstamp::commit_version).ok(),
            Some(3)
        );
    }

    #[test]
    fn a_commit_is_forgotten_once_every_open_transaction_read_past_it() {
        let counters = Counters::default();
        let start = Instant::now();
        let open_reads = OpenReads::new(0);
        let mut resolver = Resolver::new(0, None).counting(open_reads.clone());
        let begin = |version: u64| open_reads.begin(|| Ok(((), version))).expect("begin").1;
        // A transaction reads at 0 and stays open while group 1 writes k.
        let early = begin(0);
        let first = resolver.resolve(&[&writing(0, &[], &[b"k"])], start, &counters);
        assert_eq!(
            first[0].as_ref().map(Versionstamp::commit_version).ok(),
            Some(1)
        );
        resolver.settled(1, start);
        open_reads.durable(1);
        assert_eq!(open_reads.oldest_read_version(), 0);
        // Well within the age limit, group 1 is kept while the early transaction is open: it
        // read k before group 1 wrote it, so it conflicts.
        let stale = resolver.resolve(&[&writing(0, &[(b"k", b"l")], &[b"x"])], start, &counters);
        assert!(matches!(stale[0], Err(StoreError::NotCommitted)));
        assert!(resolver.history.last_write_by_key.contains_key(&b"k"[..]));
        // Once it ended, and every transaction open reads at 1 or later, the next group forgets
        // group 1 at once: nothing can conflict with it any more.
        drop(early);
        let reader = begin(1);
        assert_eq!(open_reads.oldest_read_version(), 1);
        let second = resolver.resolve(&[&writing(1, &[(b"k", b"l")], &[b"y"])], start, &counters);
        assert_eq!(
            second[0].as_ref().map(Versionstamp::commit_version).ok(),
            Some(2)
        );
        assert!(!resolver.history.last_write_by_key.contains_key(&b"k"[..]));
        assert_eq!(resolver.floor_version(), 1);
        // Group 2 is not durable yet, so it is kept even with no transaction open: one that
        // begins now reads at 1, before it.
        drop(reader);
        assert_eq!(open_reads.oldest_read_version(), 1);
        let racing = resolver.resolve(&[&writing(1, &[(b"y", b"z")], &[b"w"])], start, &counters);
        assert!(matches!(racing[0], Err(StoreError::NotCommitted)));
        // Durable and read past by all, it goes too.
        resolver.settled(2, start);
        open_reads.durable(2);
        let third = resolver.resolve(&[&writing(2, &[(b"y", b"z")], &[b"w"])], start, &counters);
        assert_eq!(
            third[0].as_ref().map(Versionstamp::commit_version).ok(),
            Some(3)
        );
        assert!(!resolver.history.last_write_by_key.contains_key(&b"y"[..]));
        assert_eq!(resolver.floor_version(), 2);
    }

    #[test]
    fn a_key_written_again_is_forgotten_with_its_newest_commit_only() {
        let mut history = ConflictHistory::new(0);
        let start = Instant::now();
        remember(&mut history, 1, start, &[b"k"], &[]);
        remember(
            &mut history,
            2,
            start + Duration::from_secs(3),
            &[b"k"],
            &[],
        );
        let shared = history
            .commits
            .iter()
            .map(|commit| commit.keys[0].as_ptr())
            .collect::<Vec<_>>();
        assert_eq!(shared[0], shared[1], "one copy of the key for both commits");
        history.forget_older_than(start + TRANSACTION_AGE_MAX + Duration::from_secs(1), 0);
        assert!(history.conflicts(&request(1, &[(b"k", b"k\0")])));
        history.forget_older_than(start + Duration::from_secs(60), 0);
        assert!(history.last_write_by_key.is_empty());
    }

    #[test]
    fn clears_conflict_with_reads_they_overlap_and_not_with_adjacent_ones() {
        let mut history = ConflictHistory::new(0);
        let start = Instant::now();
        remember(&mut history, 1, start, &[], &[(b"c", b"f")]);
        remember(&mut history, 2, start, &[], &[(b"f", b"h")]);
        let conflicts = |read_version: u64, begin: &[u8], end: &[u8]| {
            history.conflicts(&request(read_version, &[(begin, end)]))
        };
        // Overlapping, inside, around, and at either edge of [c, f).
        assert!(conflicts(0, b"a", b"d"));
        assert!(conflicts(0, b"d", b"e"));
        assert!(conflicts(0, b"a", b"z"));
        assert!(conflicts(0, b"c", b"c\0"));
        assert!(conflicts(0, b"e\xff", b"f"));
        // Adjacent: ranges are half-open.
        assert!(!conflicts(0, b"a", b"c"));
        assert!(!conflicts(0, b"h", b"z"));
        // [f, h) is newer than [c, f): a read at 1 conflicts only from f on.
        assert!(!conflicts(1, b"c", b"f"));
        assert!(conflicts(1, b"e", b"f\0"));
        assert!(!conflicts(2, b"a", b"z"));
        // An empty read conflicts with nothing.
        assert!(!conflicts(0, b"d", b"d"));
    }

    #[test]
    fn a_newer_clear_splits_older_ones_and_keeps_their_versions_outside_it() {
        let mut index = ClearIndex::default();
        index.insert(&KeyRange::new(b"b", b"y"), 1);
        index.insert(&KeyRange::new(b"m", b"p"), 2);
        index.insert(&KeyRange::new(b"a", b"c"), 3);
        index.insert(&KeyRange::new(b"o", b"q"), 4);
        let segments: Vec<(&[u8], &[u8], u64)> = index
            .segments
            .iter()
            .map(|(begin, segment)| (begin.as_slice(), segment.end.as_slice(), segment.version))
            .collect();
        let expected: [(&[u8], &[u8], u64); 5] = [
            (b"a", b"c", 3),
            (b"c", b"m", 1),
            (b"m", b"o", 2),
            (b"o", b"q", 4),
            (b"q", b"y", 1),
        ];
        assert_eq!(segments, expected);
        assert_eq!(index.bytes, 10);
        assert!(!index.cleared_after(&KeyRange::new(b"c", b"m"), 1));
        assert!(index.cleared_after(&KeyRange::new(b"c", b"m\0"), 1));
        assert!(index.cleared_after(&KeyRange::new(b"x", b"z"), 0));

        // Forgetting the oldest clear keeps the segments newer clears own.
        index.forget(&KeyRange::new(b"b", b"y"), 1);
        let firsts: Vec<&[u8]> = index.segments.keys().map(Vec::as_slice).collect();
        assert_eq!(firsts, [b"a", b"m", b"o"]);
        index.forget(&KeyRange::new(b"m", b"p"), 2);
        index.forget(&KeyRange::new(b"a", b"c"), 3);
        index.forget(&KeyRange::new(b"o", b"q"), 4);
        assert!(index.segments.is_empty());
        assert_eq!(index.bytes, 0);
    }

    /// The index answers like a scan of every remembered clear, for random clears, reads and
    /// forgetting, and forgets everything once every clear is forgotten.
    #[test]
    fn the_clear_index_answers_like_a_scan_of_every_clear() {
        let seed = crate::test_support::fault_seed();
        let mut state = seed;
        let mut draw = |bound: u64| {
            state = state.wrapping_add(1);
            split_mix(state) % bound
        };
        // Keys of one or two bytes from a small alphabet, so ranges overlap and touch often.
        let key = |draw: &mut dyn FnMut(u64) -> u64| {
            let mut key = vec![b'a' + draw(8) as u8];
            if draw(2) == 0 {
                key.push(b'a' + draw(8) as u8);
            }
            key
        };
        let mut index = ClearIndex::default();
        // Every clear still remembered, oldest first.
        let mut clears: VecDeque<(u64, KeyRange)> = VecDeque::new();
        let mut floor = 0;
        for version in 1..=400u64 {
            for _ in 0..draw(3) {
                let (begin, end) = (key(&mut draw), key(&mut draw));
                let range = KeyRange::new(&begin.clone().min(end.clone()), &begin.max(end));
                index.insert(&range, version);
                clears.push_back((version, range));
            }
            if draw(4) == 0 {
                floor = floor.max(version.saturating_sub(draw(20)));
                while clears.front().is_some_and(|(cleared, _)| *cleared <= floor) {
                    if let Some((_, range)) = clears.pop_front() {
                        index.forget(&range, floor);
                    }
                }
            }
            let mut previous_end: Option<&Vec<u8>> = None;
            for (begin, segment) in &index.segments {
                assert!(*begin < segment.end, "seed={seed}: empty segment");
                assert!(
                    previous_end.is_none_or(|previous| previous <= begin),
                    "seed={seed}: overlapping segments"
                );
                previous_end = Some(&segment.end);
            }
            let bytes: usize = index
                .segments
                .iter()
                .map(|(begin, segment)| begin.len() + segment.end.len())
                .sum();
            assert_eq!(index.bytes, bytes, "seed={seed}");
            for _ in 0..20 {
                let (begin, end) = (key(&mut draw), key(&mut draw));
                let read = KeyRange::new(&begin.clone().min(end.clone()), &begin.max(end));
                let read_version = floor + draw(version - floor + 1);
                // Empty ranges are neither read nor cleared (the transaction drops them).
                let scanned = read.begin < read.end
                    && clears.iter().any(|(cleared, range)| {
                        *cleared > read_version
                            && range.begin < range.end
                            && range.intersects(&read)
                    });
                assert_eq!(
                    index.cleared_after(&read, read_version),
                    scanned,
                    "seed={seed}: read {read:?} at {read_version}"
                );
            }
        }
        while let Some((_, range)) = clears.pop_front() {
            index.forget(&range, 400);
        }
        assert!(index.segments.is_empty(), "seed={seed}");
        assert_eq!(index.bytes, 0, "seed={seed}");
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
            add_then_max
                .resolve(Some(&8u64.to_le_bytes()), stamp)
                .as_deref(),
            Some(13u64.to_le_bytes().as_slice())
        );
        let stamped = PendingWrite::Versionstamped {
            value: vec![b'v'; 12],
            offset: 1,
            then: Vec::new(),
        };
        let mut expected = vec![b'v'];
        expected.extend_from_slice(stamp.as_bytes());
        expected.push(b'v');
        assert_eq!(
            stamped.resolve(None, stamp).as_deref(),
            Some(expected.as_slice())
        );
    }
}
