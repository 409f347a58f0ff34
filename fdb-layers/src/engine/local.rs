//! A transaction of the embedded or memory backend: a read snapshot, a client-side write buffer
//! that reads see (read-your-writes), the read-conflict ranges, pending watches and versionstamp
//! requests, and the commit request built from them. The two backends differ only in where the
//! snapshot comes from and how a request is committed ([`LocalStore`]).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::ReadOnlyTable;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::committer::{
    AtomicOp, CommitRequest, KeyRange, OpenRead, PendingWrite, VersionstampedKey, fold,
    place_versionstamp,
};
use super::replication::Shipping;
use super::transaction::Budget;
use super::watches::{PendingWatch, Watch, WatchRegistry};
use super::{
    Counters, RangeOptions, TRANSACTION_AGE_MAX, Versionstamp, VersionstampFuture, WrittenKey,
};
use super::{embedded, memory};
use crate::error::StoreError;
use crate::limits::{
    CONFIRMED_READ_ATTEMPTS_MAX, CONFIRMED_READ_WAIT_MS, KEY_BYTES_MAX, VALUE_BYTES_MAX,
    VERSIONSTAMP_BYTES,
};

/// A key and its value.
pub(crate) type KeyValue = (Vec<u8>, Vec<u8>);

/// The store behind a local transaction.
#[derive(Clone)]
pub(crate) enum LocalStore {
    /// The redb file, committed by the committer thread.
    Embedded(Arc<embedded::Shared>),
    /// The in-memory store, committed inline.
    Memory(Arc<memory::Shared>),
}

impl LocalStore {
    /// Starts a transaction at the latest committed version.
    pub(crate) fn begin(&self) -> Result<LocalTransaction, StoreError> {
        let (snapshot, read_version) = match self {
            LocalStore::Embedded(shared) => {
                let (table, open) = shared.snapshot()?;
                let version = open.version();
                (Snapshot::Embedded { table, _open: open }, version)
            }
            LocalStore::Memory(shared) => {
                (Snapshot::Memory(shared.clone()), shared.latest_version()?)
            }
        };
        Ok(LocalTransaction::new(self.clone(), snapshot, read_version))
    }

    pub(crate) fn counters(&self) -> &Counters {
        match self {
            LocalStore::Embedded(shared) => shared.counters(),
            LocalStore::Memory(shared) => shared.counters(),
        }
    }

    pub(crate) fn registry(&self) -> &Arc<WatchRegistry> {
        match self {
            LocalStore::Embedded(shared) => shared.registry(),
            LocalStore::Memory(shared) => shared.registry(),
        }
    }

    async fn commit(&self, request: CommitRequest) -> Result<Versionstamp, StoreError> {
        match self {
            LocalStore::Embedded(shared) => shared.commit(request).await,
            LocalStore::Memory(shared) => shared.commit(request).await,
        }
    }

    /// The shipping to a standby, with one.
    fn shipping(&self) -> Option<&Arc<Shipping>> {
        match self {
            LocalStore::Embedded(shared) => shared.shipping(),
            LocalStore::Memory(shared) => shared.shipping(),
        }
    }

    /// Returns once the standby holds `version`: waits for the groups on their way to it, or,
    /// with none on its way (the last one refused, or failed on the disk), commits an empty
    /// group, whose confirmation confirms everything before it. `Unavailable` when the standby
    /// does not confirm it within [`CONFIRMED_READ_ATTEMPTS_MAX`] tries.
    async fn until_confirmed(&self, shipping: &Shipping, version: u64) -> Result<(), StoreError> {
        let wait = std::time::Duration::from_millis(CONFIRMED_READ_WAIT_MS);
        for attempt in 0..=CONFIRMED_READ_ATTEMPTS_MAX {
            if shipping.version() >= version {
                return Ok(());
            }
            if attempt == CONFIRMED_READ_ATTEMPTS_MAX {
                break;
            }
            if shipping.any_in_flight() {
                shipping.reached(version, wait).await;
                continue;
            }
            let empty = CommitRequest {
                read_version: version,
                read_conflicts: Vec::new(),
                cleared: Vec::new(),
                writes: Vec::new(),
                versionstamped_keys: Vec::new(),
                size_bytes: 0,
            };
            // Acknowledged only once the standby has it, and so everything before it.
            if let Err(error) = self.commit(empty).await {
                return Err(StoreError::Unavailable(format!(
                    "what this transaction read is not on the standby yet: {error}"
                )));
            }
        }
        Err(StoreError::Unavailable(format!(
            "what this transaction read (version {version}) is not on the standby yet; it holds \
             version {}",
            shipping.version()
        )))
    }

    /// Registers the watches of a transaction that committed.
    fn register_watches(&self, watches: Vec<PendingWatch>) {
        if watches.is_empty() {
            return;
        }
        match self {
            LocalStore::Embedded(shared) => shared.register_watches(watches),
            LocalStore::Memory(shared) => shared.register_watches(watches),
        }
    }
}

/// Where a transaction's snapshot is read from.
enum Snapshot {
    /// A redb read transaction's table, pinned at the read version, counted open for the
    /// resolver until the transaction drops.
    Embedded {
        table: ReadOnlyTable<&'static [u8], &'static [u8]>,
        /// Held for its drop, which tells the resolver the transaction ended.
        _open: OpenRead,
    },
    /// The memory store's versions, read at the read version.
    Memory(Arc<memory::Shared>),
}

/// One transaction of the embedded or memory backend.
pub(crate) struct LocalTransaction {
    store: LocalStore,
    state: Mutex<State>,
}

struct State {
    snapshot: Snapshot,
    read_version: u64,
    started_at: Instant,
    /// Buffered writes of single keys, newer than every range in `cleared` that covers them.
    writes: BTreeMap<Vec<u8>, PendingWrite>,
    /// Buffered range clears, applied before `writes` at commit.
    cleared: Vec<KeyRange>,
    /// Buffered writes of keys holding a versionstamp, applied after `writes`.
    versionstamped_keys: Vec<VersionstampedKey>,
    /// Ranges that may hold the versionstamped keys; reading into them is refused.
    unreadable: Vec<KeyRange>,
    read_conflicts: Vec<KeyRange>,
    /// Watches registered when the transaction commits.
    watches: Vec<PendingWatch>,
    /// Answered with the versionstamp when the transaction commits.
    versionstamp_waiters: Vec<oneshot::Sender<Result<Versionstamp, StoreError>>>,
    /// Bytes of mutations and conflict ranges so far, and an error kept for the commit.
    budget: Budget,
    finished: bool,
}

impl LocalTransaction {
    fn new(store: LocalStore, snapshot: Snapshot, read_version: u64) -> Self {
        let state = State {
            snapshot,
            read_version,
            started_at: Instant::now(),
            writes: BTreeMap::new(),
            cleared: Vec::new(),
            versionstamped_keys: Vec::new(),
            unreadable: Vec::new(),
            read_conflicts: Vec::new(),
            watches: Vec::new(),
            versionstamp_waiters: Vec::new(),
            budget: Budget::default(),
            finished: false,
        };
        LocalTransaction {
            store,
            state: Mutex::new(state),
        }
    }

    pub(crate) fn describe(&self, f: &mut std::fmt::DebugStruct<'_, '_>) {
        let state = self.lock();
        f.field("read_version", &state.read_version)
            .field("size_bytes", &state.budget.size_bytes())
            .field("finished", &state.finished);
    }

    pub(crate) fn read_version(&self) -> u64 {
        self.lock().read_version
    }

    /// The single keys written so far, in key order, with what each puts in the store.
    pub(crate) fn written_keys(&self) -> Vec<WrittenKey> {
        let state = self.lock();
        let single = state.writes.iter().map(|(key, write)| {
            let (value_bytes, clear) = match write {
                PendingWrite::Set(value) => (value.len(), false),
                PendingWrite::Clear => (0, true),
                PendingWrite::Atomic(ops) => (ops.iter().map(AtomicOp::size_bytes).sum(), false),
                PendingWrite::Versionstamped { value, .. } => (value.len(), false),
            };
            WrittenKey {
                key: key.clone(),
                value_bytes,
                clear,
            }
        });
        let stamped = state.versionstamped_keys.iter().map(|write| WrittenKey {
            key: write.key.clone(),
            value_bytes: write.value.len(),
            clear: false,
        });
        single.chain(stamped).collect()
    }

    /// Range clears buffered so far.
    #[cfg(test)]
    pub(crate) fn buffered_range_clears(&self) -> usize {
        self.lock().cleared.len()
    }

    pub(crate) fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>, StoreError> {
        let mut state = self.lock();
        state.check_readable()?;
        check_key(key)?;
        let value = state.visible(key)?;
        if !snapshot {
            state.add_read_conflict(KeyRange::new(key, &key_after(key)))?;
        }
        Ok(value)
    }

    pub(crate) fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        options: RangeOptions,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut state = self.lock();
        state.check_readable()?;
        check_key(begin)?;
        check_key(end)?;
        let limit = options.limit.unwrap_or(usize::MAX);
        if begin >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let wanted = KeyRange::new(begin, end);
        if state
            .unreadable
            .iter()
            .any(|range| range.intersects(&wanted))
        {
            return Err(StoreError::AccessedUnreadable);
        }
        let pairs = match &state.snapshot {
            Snapshot::Embedded { table, .. } => {
                let mut stored = embedded::snapshot_range(table, begin, end, options.reverse)?;
                state.merged_range(&mut stored, begin, end, limit, options.reverse)?
            }
            Snapshot::Memory(shared) => {
                let read_version = state.read_version;
                shared.with_range(read_version, begin, end, options.reverse, |stored| {
                    state.merged_range(stored, begin, end, limit, options.reverse)
                })??
            }
        };
        if !options.snapshot {
            // A read that stopped at its limit only depends on the keys up to where it stopped.
            let range = match (pairs.len() == limit, options.reverse, pairs.last()) {
                (true, false, Some((last, _))) => KeyRange::new(begin, &key_after(last)),
                (true, true, Some((first, _))) => KeyRange::new(first, end),
                _ => wanted,
            };
            state.add_read_conflict(range)?;
        }
        Ok(pairs)
    }

    pub(crate) fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.check_writable()?;
        check_written_key(key)?;
        check_value(value)?;
        state.budget.grow(key.len() + value.len())?;
        self.fire_own_change(&mut state, key, Some(value));
        state
            .writes
            .insert(key.to_vec(), PendingWrite::Set(value.to_vec()));
        Ok(())
    }

    pub(crate) fn clear(&self, key: &[u8]) {
        let mut state = self.lock();
        let checked = state.check_writable().and_then(|()| check_written_key(key));
        match checked.and_then(|()| state.budget.grow(key.len())) {
            Ok(()) => {
                self.fire_own_change(&mut state, key, None);
                state.writes.insert(key.to_vec(), PendingWrite::Clear);
            }
            Err(error) => state.budget.defer(error),
        }
    }

    pub(crate) fn clear_range(&self, begin: &[u8], end: &[u8]) {
        let mut state = self.lock();
        let checked = state
            .check_writable()
            .and_then(|()| check_cleared_range(begin, end));
        if begin >= end {
            if let Err(error) = checked {
                state.budget.defer(error);
            }
            return;
        }
        match checked.and_then(|()| state.budget.grow(begin.len() + end.len())) {
            Ok(()) => {
                let range = KeyRange::new(begin, end);
                self.fire_own_changes_in(&mut state, &range, true);
                let covered: Vec<Vec<u8>> = state
                    .writes
                    .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in covered {
                    state.writes.remove(&key);
                }
                state.cleared.push(range);
            }
            Err(error) => state.budget.defer(error),
        }
    }

    pub(crate) fn atomic(&self, key: &[u8], op: AtomicOp) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.check_writable()?;
        check_written_key(key)?;
        if let AtomicOp::Min(operand) | AtomicOp::Max(operand) = &op {
            check_value(operand)?;
        }
        state.budget.grow(key.len() + op.size_bytes())?;
        let next = match state.writes.remove(key) {
            Some(write) => write.then(op),
            None if state.is_cleared(key) => PendingWrite::Clear.then(op),
            None => PendingWrite::Atomic(vec![op]),
        };
        match &next {
            PendingWrite::Set(value) => {
                let value = value.clone();
                self.fire_own_change(&mut state, key, Some(&value));
            }
            _ => self.fire_own_changes_in(&mut state, &KeyRange::new(key, &key_after(key)), false),
        }
        state.writes.insert(key.to_vec(), next);
        Ok(())
    }

    pub(crate) fn set_versionstamped_key(
        &self,
        key: &[u8],
        offset: u32,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.check_writable()?;
        let offset_bytes = check_versionstamped_key_write(key, offset, value)?;
        state
            .budget
            .grow(key.len() + VERSIONSTAMP_OFFSET_BYTES + value.len())?;
        let range = versionstamped_key_range(key, offset_bytes, state.read_version);
        self.fire_own_changes_in(&mut state, &range, false);
        state.unreadable.push(range);
        let clears_before = state.cleared.len();
        state.versionstamped_keys.push(VersionstampedKey {
            key: key.to_vec(),
            offset: offset_bytes,
            value: value.to_vec(),
            clears_before,
        });
        Ok(())
    }

    pub(crate) fn set_versionstamped_value(
        &self,
        key: &[u8],
        value: &[u8],
        offset: u32,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.check_writable()?;
        let offset = check_versionstamped_value_write(key, value, offset)?;
        state
            .budget
            .grow(key.len() + value.len() + VERSIONSTAMP_OFFSET_BYTES)?;
        self.fire_own_changes_in(&mut state, &KeyRange::new(key, &key_after(key)), false);
        state.writes.insert(
            key.to_vec(),
            PendingWrite::Versionstamped {
                value: value.to_vec(),
                offset,
                then: Vec::new(),
            },
        );
        Ok(())
    }

    pub(crate) fn versionstamp(&self) -> VersionstampFuture {
        let mut state = self.lock();
        if state.finished {
            return VersionstampFuture::done(Err(StoreError::TransactionFinished));
        }
        let (sender, receiver) = oneshot::channel();
        state.versionstamp_waiters.push(sender);
        VersionstampFuture::waiting(receiver)
    }

    pub(crate) fn watch(&self, key: &[u8]) -> Watch {
        let mut state = self.lock();
        let value = state
            .check_readable()
            .and_then(|()| check_key(key))
            .and_then(|()| state.visible(key));
        let value = match value {
            Ok(value) => value,
            Err(error) => return Watch::done(Err(error)),
        };
        match self.store.registry().create(key, value) {
            Ok((pending, watch)) => {
                state.watches.push(pending);
                watch
            }
            Err(error) => Watch::done(Err(error)),
        }
    }

    pub(crate) async fn commit(&self) -> Result<(), StoreError> {
        let (request, watches, waiters) = {
            let mut state = self.lock();
            state.check_writable()?;
            state.finished = true;
            let watches = std::mem::take(&mut state.watches);
            let waiters = std::mem::take(&mut state.versionstamp_waiters);
            let read_only = state.writes.is_empty()
                && state.cleared.is_empty()
                && state.versionstamped_keys.is_empty();
            let request = if let Some(error) = state.budget.take_deferred() {
                Err(error)
            } else if read_only {
                Ok(None)
            } else if state.started_at.elapsed() > TRANSACTION_AGE_MAX {
                Err(StoreError::TransactionTooOld)
            } else {
                let request = CommitRequest {
                    read_version: state.read_version,
                    read_conflicts: std::mem::take(&mut state.read_conflicts),
                    cleared: std::mem::take(&mut state.cleared),
                    writes: std::mem::take(&mut state.writes).into_iter().collect(),
                    versionstamped_keys: std::mem::take(&mut state.versionstamped_keys),
                    size_bytes: state.budget.size_bytes(),
                };
                Ok(Some(request))
            };
            (request, watches, waiters)
        };
        // A transaction without writes commits without the committer, at its read version
        // (however old it is, as on FoundationDB).
        // With a standby, what it read leaves the region only once the standby has it.
        let outcome = match request {
            Ok(None) => match self.store.shipping() {
                Some(shipping) => self
                    .store
                    .until_confirmed(shipping, self.read_version())
                    .await
                    .map(|()| None),
                None => Ok(None),
            },
            Ok(Some(request)) => self.store.commit(request).await.map(Some),
            Err(error) => Err(error),
        };
        for waiter in waiters {
            let answer = match &outcome {
                Ok(Some(stamp)) => Ok(*stamp),
                Ok(None) => Err(StoreError::NoCommitVersion),
                Err(error) => Err(error.clone()),
            };
            // The caller may have dropped the future.
            let _ = waiter.send(answer);
        }
        match &outcome {
            Ok(_) => self.store.register_watches(watches),
            Err(error) => {
                for watch in watches {
                    self.store
                        .registry()
                        .resolve_pending(watch, Err(error.clone()));
                }
            }
        }
        outcome.map(|_| ())
    }

    /// Fires this transaction's watches of `key` if `value` differs from what they saw.
    fn fire_own_change(&self, state: &mut State, key: &[u8], value: Option<&[u8]>) {
        if state.watches.is_empty() {
            return;
        }
        let (fired, kept) = std::mem::take(&mut state.watches)
            .into_iter()
            .partition(|watch| watch.key == key && watch.value.as_deref() != value);
        state.watches = kept;
        self.fire(fired);
    }

    /// Fires this transaction's watches of keys in `range` (only those that saw a value when
    /// `only_present`, as for a clear).
    fn fire_own_changes_in(&self, state: &mut State, range: &KeyRange, only_present: bool) {
        if state.watches.is_empty() {
            return;
        }
        let (fired, kept) = std::mem::take(&mut state.watches)
            .into_iter()
            .partition(|watch| {
                range.contains(&watch.key) && (!only_present || watch.value.is_some())
            });
        state.watches = kept;
        self.fire(fired);
    }

    fn fire(&self, fired: Vec<PendingWatch>) {
        for watch in fired {
            self.store.registry().resolve_pending(watch, Ok(()));
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as any partial write
        // buffer, and the transaction is thrown away after its attempt anyway.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn check_readable(&self) -> Result<(), StoreError> {
        if self.finished {
            return Err(StoreError::TransactionFinished);
        }
        if self.started_at.elapsed() > TRANSACTION_AGE_MAX {
            return Err(StoreError::TransactionTooOld);
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        if self.finished {
            return Err(StoreError::TransactionFinished);
        }
        Ok(())
    }

    fn add_read_conflict(&mut self, range: KeyRange) -> Result<(), StoreError> {
        self.budget.grow(range.begin.len() + range.end.len())?;
        self.read_conflicts.push(range);
        Ok(())
    }

    fn is_cleared(&self, key: &[u8]) -> bool {
        self.cleared.iter().any(|range| range.contains(key))
    }

    /// The value of `key` as this transaction sees it, without a read conflict.
    fn visible(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if self.unreadable.iter().any(|range| range.contains(key)) {
            return Err(StoreError::AccessedUnreadable);
        }
        match self.writes.get(key) {
            Some(PendingWrite::Set(value)) => Ok(Some(value.clone())),
            Some(PendingWrite::Clear) => Ok(None),
            Some(PendingWrite::Atomic(ops)) => Ok(fold(self.stored(key)?, ops)),
            Some(PendingWrite::Versionstamped { .. }) => Err(StoreError::AccessedUnreadable),
            None if self.is_cleared(key) => Ok(None),
            None => self.stored(key),
        }
    }

    /// The committed value of `key` at the read version.
    fn stored(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.snapshot {
            Snapshot::Memory(shared) => shared.value_at(key, self.read_version),
            Snapshot::Embedded { table, .. } => embedded::snapshot_value(table, key),
        }
    }

    /// The range `[begin, end)` of the committed pairs (`stored`, already in the direction of
    /// the read) with this transaction's writes applied, up to `limit` pairs.
    fn merged_range(
        &self,
        stored: &mut dyn Iterator<Item = Result<KeyValue, StoreError>>,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let buffered = self
            .writes
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)));
        let mut buffered: Box<dyn Iterator<Item = (&Vec<u8>, &PendingWrite)>> = if reverse {
            Box::new(buffered.rev())
        } else {
            Box::new(buffered)
        };
        // Comes before in the direction of the read.
        let before = |a: &[u8], b: &[u8]| if reverse { a > b } else { a < b };

        let mut next_stored = stored.next().transpose()?;
        let mut next_buffered = buffered.next();
        let mut pairs = Vec::new();
        while pairs.len() < limit {
            let take = match (&next_stored, next_buffered) {
                (None, None) => break,
                (Some(_), None) => Take::Stored,
                (None, Some(_)) => Take::Buffered,
                (Some((key, _)), Some((buffered_key, _))) if key == buffered_key => Take::Both,
                (Some((key, _)), Some((buffered_key, _))) if before(key, buffered_key) => {
                    Take::Stored
                }
                (Some(_), Some(_)) => Take::Buffered,
            };
            let stored_pair = match take {
                Take::Buffered => None,
                Take::Stored | Take::Both => {
                    let pair = next_stored.take();
                    next_stored = stored.next().transpose()?;
                    pair
                }
            };
            let write = match take {
                Take::Stored => None,
                Take::Buffered | Take::Both => {
                    let write = next_buffered;
                    next_buffered = buffered.next();
                    write
                }
            };
            match (stored_pair, write) {
                (Some((key, value)), None) => {
                    if !self.is_cleared(&key) {
                        pairs.push((key, value));
                    }
                }
                (stored_pair, Some((key, write))) => {
                    let base = stored_pair.map(|(_, value)| value);
                    match write {
                        PendingWrite::Set(value) => pairs.push((key.clone(), value.clone())),
                        PendingWrite::Clear => {}
                        PendingWrite::Atomic(ops) => {
                            if let Some(value) = fold(base, ops) {
                                pairs.push((key.clone(), value));
                            }
                        }
                        PendingWrite::Versionstamped { .. } => {
                            return Err(StoreError::AccessedUnreadable);
                        }
                    }
                }
                (None, None) => break,
            }
        }
        Ok(pairs)
    }
}

/// Which of the two merged streams the next pair of a range read comes from.
enum Take {
    Stored,
    Buffered,
    Both,
}

/// The keys a versionstamped key may take, as FoundationDB computes them: the placeholder
/// replaced by the smallest possible versionstamp (the read version, batch order 0) up to the
/// largest (all `0xff`), inclusive.
fn versionstamped_key_range(key: &[u8], offset: usize, read_version: u64) -> KeyRange {
    let mut begin = key.to_vec();
    place_versionstamp(&mut begin, offset, Versionstamp::new(read_version, 0));
    let mut last = key.to_vec();
    place_versionstamp(
        &mut last,
        offset,
        Versionstamp::from_bytes([0xff; VERSIONSTAMP_BYTES]),
    );
    KeyRange {
        begin,
        end: key_after(&last),
    }
}

/// The placeholder's offset, checked to fit in `bytes`.
/// Bytes of the placeholder offset FoundationDB appends to a versionstamped key or value; every
/// backend counts them against the transaction's budget.
pub(crate) const VERSIONSTAMP_OFFSET_BYTES: usize = 4;

/// Checks a write of `value` under a `key` holding a versionstamp placeholder at `offset`, on
/// every backend; returns the placeholder's position in `key`.
pub(crate) fn check_versionstamped_key_write(
    key: &[u8],
    offset: u32,
    value: &[u8],
) -> Result<usize, StoreError> {
    let offset_bytes = check_placeholder(key, offset)?;
    check_versionstamped_key(key, offset_bytes)?;
    check_value(value)?;
    Ok(offset_bytes)
}

/// Checks a write of a `value` holding a versionstamp placeholder at `offset` under `key`, on
/// every backend; returns the placeholder's position in `value`.
pub(crate) fn check_versionstamped_value_write(
    key: &[u8],
    value: &[u8],
    offset: u32,
) -> Result<usize, StoreError> {
    check_written_key(key)?;
    let offset_bytes = check_placeholder(value, offset)?;
    check_value(value)?;
    Ok(offset_bytes)
}

pub(crate) fn check_placeholder(bytes: &[u8], offset: u32) -> Result<usize, StoreError> {
    let invalid = StoreError::InvalidVersionstampOffset {
        offset,
        length: bytes.len(),
    };
    let start = usize::try_from(offset).map_err(|_| invalid.clone())?;
    match start.checked_add(VERSIONSTAMP_BYTES) {
        Some(end) if end <= bytes.len() => Ok(start),
        _ => Err(invalid),
    }
}

/// The first key after `key` in byte order (`key` followed by a zero byte).
pub(crate) fn key_after(key: &[u8]) -> Vec<u8> {
    let mut after = Vec::with_capacity(key.len() + 1);
    after.extend_from_slice(key);
    after.push(0);
    after
}

/// A key or range end that may be read: range ends and `key_after` may be one byte longer than
/// a stored key can be.
pub(crate) fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.len() > KEY_BYTES_MAX + 1 {
        return Err(StoreError::KeyTooLarge {
            key_bytes: key.len(),
        });
    }
    Ok(())
}

/// A key that may be written: within the limit and outside the system keyspace.
pub(crate) fn check_written_key(key: &[u8]) -> Result<(), StoreError> {
    if key.len() > KEY_BYTES_MAX {
        return Err(StoreError::KeyTooLarge {
            key_bytes: key.len(),
        });
    }
    if key.first() == Some(&0xff) {
        return Err(StoreError::KeyOutsideLegalRange);
    }
    Ok(())
}

/// A range that may be cleared: both ends within the key limit and outside the system keyspace.
/// Every backend checks clears with this, so a clear that passes here passes on FoundationDB.
pub(crate) fn check_cleared_range(begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
    check_key(begin)?;
    check_key(end)?;
    if begin.first() == Some(&0xff) || end > b"\xff".as_slice() {
        return Err(StoreError::KeyOutsideLegalRange);
    }
    Ok(())
}

/// A key with a versionstamp placeholder at `offset_bytes` (already checked to fit) that may be
/// written: within the key limit, and outside the system keyspace unless the stamp replaces its
/// first byte.
pub(crate) fn check_versionstamped_key(key: &[u8], offset_bytes: usize) -> Result<(), StoreError> {
    if key.len() > KEY_BYTES_MAX {
        return Err(StoreError::KeyTooLarge {
            key_bytes: key.len(),
        });
    }
    if offset_bytes > 0 && key.first() == Some(&0xff) {
        return Err(StoreError::KeyOutsideLegalRange);
    }
    Ok(())
}

/// A value within the limit.
pub(crate) fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(StoreError::ValueTooLarge {
            value_bytes: value.len(),
        });
    }
    Ok(())
}
