//! One transaction: a read snapshot, a client-side write buffer that reads see
//! (read-your-writes), the read-conflict ranges, and the commit request built from them.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::ReadOnlyTable;
use tokio::time::Instant;

use super::committer::{CommitRequest, KeyRange, PendingWrite, apply_add};
use super::{Shared, TRANSACTION_AGE_MAX};
use crate::error::StoreError;
use crate::limits::{KEY_BYTES_MAX, TRANSACTION_BYTES_MAX, VALUE_BYTES_MAX};

/// How a range is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// Most pairs returned; `None` returns the whole range.
    pub limit: Option<usize>,
    /// Returns pairs from the end of the range backwards.
    pub reverse: bool,
    /// Reads without adding a read-conflict range (FDB snapshot read).
    pub snapshot: bool,
}

impl RangeOptions {
    /// The first `limit` pairs, forwards, with conflict detection.
    pub fn limit(limit: usize) -> Self {
        RangeOptions {
            limit: Some(limit),
            ..RangeOptions::default()
        }
    }
}

/// A transaction: cheap to clone (every clone is the same transaction), `Send` and `Sync`.
#[derive(Clone)]
pub struct Transaction {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    state: Mutex<State>,
}

struct State {
    /// The committed state at `read_version`.
    snapshot: ReadOnlyTable<&'static [u8], &'static [u8]>,
    read_version: u64,
    started_at: Instant,
    /// Buffered writes of single keys, newer than every range in `cleared` that covers them.
    writes: BTreeMap<Vec<u8>, PendingWrite>,
    /// Buffered range clears, applied before `writes` at commit.
    cleared: Vec<KeyRange>,
    read_conflicts: Vec<KeyRange>,
    /// Bytes of mutations and conflict ranges so far (FDB counts the same things).
    size_bytes: usize,
    /// An error of an infallible call (`clear`, `clear_range`), returned by the commit.
    deferred_error: Option<StoreError>,
    finished: bool,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Transaction")
            .field("read_version", &state.read_version)
            .field("size_bytes", &state.size_bytes)
            .field("finished", &state.finished)
            .finish_non_exhaustive()
    }
}

impl Transaction {
    pub(super) fn new(
        shared: Arc<Shared>,
        snapshot: ReadOnlyTable<&'static [u8], &'static [u8]>,
        read_version: u64,
    ) -> Self {
        let state = State {
            snapshot,
            read_version,
            started_at: Instant::now(),
            writes: BTreeMap::new(),
            cleared: Vec::new(),
            read_conflicts: Vec::new(),
            size_bytes: 0,
            deferred_error: None,
            finished: false,
        };
        Transaction {
            inner: Arc::new(Inner {
                shared,
                state: Mutex::new(state),
            }),
        }
    }

    /// The version whose committed state this transaction reads.
    pub fn read_version(&self) -> u64 {
        self.lock().read_version
    }

    /// Reads a key, adding it to the read-conflict ranges.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_key(key, false)
    }

    /// Reads a key without adding a read conflict (FDB snapshot read): a concurrent write of it
    /// will not make this transaction retry.
    pub async fn snapshot_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_key(key, true)
    }

    /// Reads the pairs with `begin <= key < end`, in key order (or reversed), merged with this
    /// transaction's own writes.
    pub async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        options: RangeOptions,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut state = self.lock();
        state.check_readable()?;
        check_key(begin)?;
        check_key(end)?;
        let limit = options.limit.unwrap_or(usize::MAX);
        if begin >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let pairs = state.merged_range(begin, end, limit, options.reverse)?;
        if !options.snapshot {
            // A read that stopped at its limit only depends on the keys up to where it stopped.
            let range = match (pairs.len() == limit, options.reverse, pairs.last()) {
                (true, false, Some((last, _))) => KeyRange::new(begin, &key_after(last)),
                (true, true, Some((first, _))) => KeyRange::new(first, end),
                _ => KeyRange::new(begin, end),
            };
            state.add_read_conflict(range)?;
        }
        Ok(pairs)
    }

    /// Buffers a write of `value` under `key`.
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.check_writable()?;
        check_written_key(key)?;
        if value.len() > VALUE_BYTES_MAX {
            return Err(StoreError::ValueTooLarge {
                value_bytes: value.len(),
            });
        }
        state.grow(key.len() + value.len())?;
        state
            .writes
            .insert(key.to_vec(), PendingWrite::Set(value.to_vec()));
        Ok(())
    }

    /// Buffers the removal of `key`. An invalid key fails the commit.
    pub fn clear(&self, key: &[u8]) {
        let mut state = self.lock();
        let checked = state.check_writable().and_then(|()| check_written_key(key));
        let grown = checked.and_then(|()| state.grow(key.len()));
        match grown {
            Ok(()) => {
                state.writes.insert(key.to_vec(), PendingWrite::Clear);
            }
            Err(error) => state.defer(error),
        }
    }

    /// Buffers the removal of every key with `begin <= key < end`. An invalid range fails the
    /// commit; an empty one does nothing.
    pub fn clear_range(&self, begin: &[u8], end: &[u8]) {
        let mut state = self.lock();
        let checked = state
            .check_writable()
            .and_then(|()| check_key(begin))
            .and_then(|()| {
                check_key(end)?;
                if begin.first() == Some(&0xff) || end > b"\xff".as_slice() {
                    return Err(StoreError::KeyOutsideLegalRange);
                }
                Ok(())
            });
        if begin >= end {
            if let Err(error) = checked {
                state.defer(error);
            }
            return;
        }
        match checked.and_then(|()| state.grow(begin.len() + end.len())) {
            Ok(()) => {
                let covered: Vec<Vec<u8>> = state
                    .writes
                    .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in covered {
                    state.writes.remove(&key);
                }
                state.cleared.push(KeyRange::new(begin, end));
            }
            Err(error) => state.defer(error),
        }
    }

    /// Buffers FDB's `ADD`: the value is read as a little-endian integer (missing means 0,
    /// shorter is zero-extended, longer is truncated to 8 bytes) and `delta` is added, wrapping.
    /// Adds no read conflict, so concurrent adds to one key never conflict.
    pub fn atomic_add(&self, key: &[u8], delta: i64) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.check_writable()?;
        check_written_key(key)?;
        state.grow(key.len() + 8)?;
        let next = match state.writes.get(key) {
            Some(PendingWrite::Set(value)) => PendingWrite::Set(apply_add(Some(value), delta)),
            Some(PendingWrite::Clear) => PendingWrite::Set(apply_add(None, delta)),
            Some(PendingWrite::Add(earlier)) => PendingWrite::Add(earlier.wrapping_add(delta)),
            None if state.is_cleared(key) => PendingWrite::Set(apply_add(None, delta)),
            None => PendingWrite::Add(delta),
        };
        state.writes.insert(key.to_vec(), next);
        Ok(())
    }

    /// Commits the buffered writes. A transaction without writes commits without the
    /// committer. Afterwards the transaction can no longer be used.
    pub async fn commit(&self) -> Result<(), StoreError> {
        let (request, answer) = {
            let mut state = self.lock();
            state.check_writable()?;
            state.finished = true;
            if let Some(error) = state.deferred_error.take() {
                return Err(error);
            }
            if state.writes.is_empty() && state.cleared.is_empty() {
                return Ok(());
            }
            if state.started_at.elapsed() > TRANSACTION_AGE_MAX {
                return Err(StoreError::TransactionTooOld);
            }
            let (reply, answer) = tokio::sync::oneshot::channel();
            let request = CommitRequest {
                read_version: state.read_version,
                read_conflicts: std::mem::take(&mut state.read_conflicts),
                cleared: std::mem::take(&mut state.cleared),
                writes: std::mem::take(&mut state.writes).into_iter().collect(),
                size_bytes: state.size_bytes,
                reply,
            };
            (request, answer)
        };
        self.inner.shared.submit(request)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    fn read_key(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>, StoreError> {
        let mut state = self.lock();
        state.check_readable()?;
        check_key(key)?;
        let value = match state.writes.get(key) {
            Some(PendingWrite::Set(value)) => Some(value.clone()),
            Some(PendingWrite::Clear) => None,
            Some(PendingWrite::Add(delta)) => {
                let delta = *delta;
                let base = state.snapshot_value(key)?;
                Some(apply_add(base.as_deref(), delta))
            }
            None if state.is_cleared(key) => None,
            None => state.snapshot_value(key)?,
        };
        if !snapshot {
            state.add_read_conflict(KeyRange::new(key, &key_after(key)))?;
        }
        Ok(value)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as any partial write
        // buffer, and the transaction is thrown away after its attempt anyway.
        self.inner
            .state
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

    fn defer(&mut self, error: StoreError) {
        self.deferred_error.get_or_insert(error);
    }

    fn grow(&mut self, bytes: usize) -> Result<(), StoreError> {
        let transaction_bytes = self.size_bytes + bytes;
        if transaction_bytes > TRANSACTION_BYTES_MAX {
            return Err(StoreError::TransactionTooLarge { transaction_bytes });
        }
        self.size_bytes = transaction_bytes;
        Ok(())
    }

    fn add_read_conflict(&mut self, range: KeyRange) -> Result<(), StoreError> {
        self.grow(range.begin.len() + range.end.len())?;
        self.read_conflicts.push(range);
        Ok(())
    }

    fn is_cleared(&self, key: &[u8]) -> bool {
        self.cleared.iter().any(|range| range.contains(key))
    }

    fn snapshot_value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.snapshot.get(key).map_err(StoreError::storage)?;
        Ok(value.map(|guard| guard.value().to_vec()))
    }

    /// The range `[begin, end)` of the snapshot with this transaction's writes applied, in
    /// the requested direction, up to `limit` pairs.
    fn merged_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let stored = self
            .snapshot
            .range::<&[u8]>(begin..end)
            .map_err(StoreError::storage)?;
        let mut stored: Box<dyn Iterator<Item = _>> = if reverse {
            Box::new(stored.rev())
        } else {
            Box::new(stored)
        };
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

        let mut next_stored = next_pair(&mut stored)?;
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
                    next_stored = next_pair(&mut stored)?;
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
                        PendingWrite::Add(delta) => {
                            pairs.push((key.clone(), apply_add(base.as_deref(), *delta)));
                        }
                    }
                }
                (None, None) => break,
            }
        }
        Ok(pairs)
    }
}

type KeyValue = (Vec<u8>, Vec<u8>);

/// Which of the two merged streams the next pair of a range read comes from.
enum Take {
    Stored,
    Buffered,
    Both,
}

fn next_pair<'a, I>(iterator: &mut I) -> Result<Option<KeyValue>, StoreError>
where
    I: Iterator<
            Item = Result<
                (
                    redb::AccessGuard<'a, &'static [u8]>,
                    redb::AccessGuard<'a, &'static [u8]>,
                ),
                redb::StorageError,
            >,
        > + ?Sized,
{
    match iterator.next() {
        None => Ok(None),
        Some(Ok((key, value))) => Ok(Some((key.value().to_vec(), value.value().to_vec()))),
        Some(Err(error)) => Err(StoreError::storage(error)),
    }
}

/// The first key after `key` in byte order (`key` followed by a zero byte).
pub(crate) fn key_after(key: &[u8]) -> Vec<u8> {
    let mut after = Vec::with_capacity(key.len() + 1);
    after.extend_from_slice(key);
    after.push(0);
    after
}

fn check_key(key: &[u8]) -> Result<(), StoreError> {
    // Range ends and `key_after` may be one byte longer than a stored key can be.
    if key.len() > KEY_BYTES_MAX + 1 {
        return Err(StoreError::KeyTooLarge {
            key_bytes: key.len(),
        });
    }
    Ok(())
}

fn check_written_key(key: &[u8]) -> Result<(), StoreError> {
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
