//! The memory backend, for deterministic simulation: the same optimistic concurrency, limits,
//! atomic operations, versionstamps and watches as the embedded backend, with no thread and no
//! wall clock. A commit runs inline in the caller's task (each commit is its own group, so its
//! versionstamp has batch order 0); transaction age and the conflict history's expiry use
//! tokio's clock, so tokio's paused time drives them; injected faults draw from the seed in
//! commit order.
//!
//! The data lives on a [`MemoryDisk`], which stands for the durable file: it keeps the values of
//! recent versions (multi-version, like FoundationDB's storage servers) so that a transaction
//! reads a consistent snapshot while others commit, and forgets them as the conflict history
//! does. A simulated process crash ([`MemoryDisk::crash`], or opening the disk again) loses
//! exactly what a real one loses: transactions that had not committed, the conflict history and
//! the watches. Every acknowledged commit stays, since a commit is applied before it is
//! acknowledged, as with the embedded backend's group commit; a commit answered
//! `CommitUnknownResult` may or may not have been applied.
//!
//! An injected disk failure ([`crate::FaultConfig::io_error_probability`]) fails one commit
//! the way a disk error fails the embedded backend's group commit: like a real disk, the
//! commit may or may not have reached it (a seeded draw picks, half the time each), and it is
//! answered [`StoreError::Unavailable`] either way. There is no file to open again and no
//! cause that lasts, so the next commit goes to the disk as usual.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::committer::{ApplyTarget, CommitRequest, KeyRange, Resolver, apply_request};
use super::local::KeyValue;
use super::replication::{CommittedGroup, Mutation, Recording, Shipping, StoreExport};
use super::watches::{PendingWatch, WatchRegistry};
use super::{Counters, IntegrityReport, MemoryOptions, Versionstamp};
use crate::error::StoreError;

/// The durable state of memory databases: what a file is to the embedded backend. Cheap to
/// clone; every clone is the same disk. Opening a database on it ([`crate::Database::memory`])
/// makes that database the disk's only live process.
#[derive(Clone, Default)]
pub struct MemoryDisk {
    inner: Arc<Mutex<Disk>>,
}

impl std::fmt::Debug for MemoryDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let disk = self.lock();
        f.debug_struct("MemoryDisk")
            .field("version", &disk.store.version)
            .field("keys", &disk.store.keys.len())
            .field("incarnation", &disk.incarnation)
            .finish()
    }
}

impl MemoryDisk {
    /// An empty disk.
    pub fn new() -> Self {
        MemoryDisk::default()
    }

    /// Crashes the process that has the disk open: its database handles, transactions and
    /// commits not yet applied fail with [`StoreError::Closed`], and its watches fail with it
    /// too. What was committed stays; open the disk again to go on.
    pub fn crash(&self) {
        let watches = self.lock().crash();
        if let Some(watches) = watches {
            watches.close();
        }
    }

    /// The version of the last commit on the disk.
    pub fn version(&self) -> u64 {
        self.lock().store.version
    }

    /// Commits the disk failed (injected disk failures), over every process that had it open.
    pub fn failed_commits(&self) -> u64 {
        self.lock().failed_commits
    }

    /// Calls `visit` with every key and its latest value, in key order: what a scan of the
    /// durable file would see (the simulator looks for plaintext this way).
    pub fn for_each_latest(&self, mut visit: impl FnMut(&[u8], &[u8])) {
        let disk = self.lock();
        let version = disk.store.version;
        for key in disk.store.keys.keys() {
            if let Some(value) = disk.store.value_at(key, version) {
                visit(key, value);
            }
        }
    }

    /// The value of `key` at the disk's version.
    pub(crate) fn latest_value(&self, key: &[u8]) -> Option<Vec<u8>> {
        let disk = self.lock();
        disk.store.value_at(key, disk.store.version).cloned()
    }

    /// (A standby's copy) the disk's version and the version of a full copy being installed,
    /// refused while a database has the disk open.
    pub(crate) fn standby_state(&self) -> Result<(u64, Option<u64>), StoreError> {
        let disk = self.standby_lock()?;
        Ok((disk.store.version, disk.installing))
    }

    /// (A standby's copy) applies replicated groups, checked to follow each other and the disk
    /// by the caller; the disk is at the last one's version after.
    pub(crate) fn apply_groups(&self, groups: &[CommittedGroup]) -> Result<(), StoreError> {
        let mut disk = self.standby_lock()?;
        for group in groups {
            let mut target = MemoryTarget {
                store: &mut disk.store,
                version: group.version,
            };
            for mutation in &group.mutations {
                match mutation {
                    Mutation::Put { key, value } => target.put(key, value)?,
                    Mutation::Remove { key } => target.remove(key)?,
                    Mutation::RemoveRange { begin, end } => target.remove_range(&KeyRange {
                        begin: begin.clone(),
                        end: end.clone(),
                    })?,
                }
            }
            disk.store.version = group.version;
        }
        // No transaction reads a copy: only the newest values are kept.
        let version = disk.store.version;
        disk.store.advance_floor(version);
        Ok(())
    }

    /// (A standby's copy) forgets every key and marks the disk as holding an unfinished full
    /// copy read at `version`: no database opens it until [`Self::finish_install`].
    pub(crate) fn begin_install(&self, version: u64) -> Result<(), StoreError> {
        let mut disk = self.standby_lock()?;
        disk.store = VersionedStore::default();
        disk.installing = Some(version);
        Ok(())
    }

    /// (A standby's copy) adds pairs of the full copy being installed.
    pub(crate) fn install_pairs(&self, pairs: &[KeyValue]) -> Result<(), StoreError> {
        let mut disk = self.standby_lock()?;
        let Some(version) = disk.installing else {
            return Err(StoreError::InvalidOptions(
                "no install is in progress".into(),
            ));
        };
        for (key, value) in pairs {
            disk.store.write(key, version, Some(value.clone()));
        }
        Ok(())
    }

    /// (A standby's copy) the full copy is whole, at `version`.
    pub(crate) fn finish_install(&self, version: u64) -> Result<(), StoreError> {
        let mut disk = self.standby_lock()?;
        disk.installing = None;
        disk.store.version = version;
        disk.store.advance_floor(version);
        Ok(())
    }

    /// The disk, for a standby's copy: refused while a database has it open.
    fn standby_lock(&self) -> Result<MutexGuard<'_, Disk>, StoreError> {
        let disk = self.lock();
        if disk.watches.strong_count() > 0 {
            return Err(StoreError::InvalidOptions(
                "the disk is open as a store: it cannot be a standby's copy too".into(),
            ));
        }
        Ok(disk)
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // Every update of the disk completes under the lock before it is released, so a panic
        // elsewhere cannot leave it half-written.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
struct Disk {
    store: VersionedStore,
    /// Bumped by every open and crash; handles of an older process are closed.
    incarnation: u64,
    /// The watches of the process that has the disk open.
    watches: Weak<WatchRegistry>,
    /// Commits failed by an injected disk failure.
    failed_commits: u64,
    /// (A standby's copy) the version of a full copy being installed: until it is whole, the
    /// disk is no store.
    installing: Option<u64>,
}

impl Disk {
    /// Ends the process that has the disk open and returns its watches, to be closed once the
    /// disk is unlocked (the watch registry locks the disk, never the other way round).
    fn crash(&mut self) -> Option<Arc<WatchRegistry>> {
        self.incarnation += 1;
        // Old versions only served the crashed process's transactions.
        self.store.compact();
        std::mem::take(&mut self.watches).upgrade()
    }
}

/// The state of one open memory database ("process"), shared by its handles and transactions.
pub(crate) struct Shared {
    disk: MemoryDisk,
    incarnation: u64,
    resolver: Mutex<Resolver>,
    counters: Arc<Counters>,
    registry: Arc<WatchRegistry>,
    /// Where each applied commit is shipped before it is answered (a standby), and what it
    /// confirmed.
    shipping: Option<Arc<Shipping>>,
}

impl Shared {
    /// Opens `options.disk`, crashing whichever process had it open.
    pub(crate) fn open(options: MemoryOptions) -> Result<Arc<Shared>, StoreError> {
        if let Some(faults) = &options.faults {
            faults.validate()?;
        }
        let registry = WatchRegistry::new();
        let (incarnation, version, crashed_watches) = {
            let mut disk = options.disk.lock();
            if let Some(version) = disk.installing {
                return Err(StoreError::corrupt(
                    "store",
                    format!(
                        "it holds a full copy read at version {version} that was never finished"
                    ),
                ));
            }
            let crashed_watches = disk.crash();
            disk.watches = Arc::downgrade(&registry);
            (disk.incarnation, disk.store.version, crashed_watches)
        };
        if let Some(watches) = crashed_watches {
            watches.close();
        }
        Ok(Arc::new(Shared {
            disk: options.disk,
            incarnation,
            resolver: Mutex::new(Resolver::new(version, options.faults)),
            counters: Arc::new(Counters::default()),
            registry,
            shipping: options.replication.map(Shipping::new),
        }))
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The shipping to a standby, with one.
    pub(crate) fn shipping(&self) -> Option<&Arc<Shipping>> {
        self.shipping.as_ref()
    }

    pub(crate) fn registry(&self) -> &Arc<WatchRegistry> {
        &self.registry
    }

    /// The version of the last commit, for a new transaction to read at.
    pub(crate) fn latest_version(&self) -> Result<u64, StoreError> {
        Ok(self.open_disk()?.store.version)
    }

    /// The value of `key` at `version`.
    pub(crate) fn value_at(&self, key: &[u8], version: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let disk = self.open_disk()?;
        disk.store.check_readable(version)?;
        Ok(disk.store.value_at(key, version).cloned())
    }

    /// Runs `read` over the pairs of `[begin, end)` at `version`, in the direction of the read,
    /// with the disk locked.
    pub(crate) fn with_range<R>(
        &self,
        version: u64,
        begin: &[u8],
        end: &[u8],
        reverse: bool,
        read: impl FnOnce(&mut dyn Iterator<Item = Result<KeyValue, StoreError>>) -> R,
    ) -> Result<R, StoreError> {
        let disk = self.open_disk()?;
        disk.store.check_readable(version)?;
        let range = disk
            .store
            .keys
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)));
        let visible = |(key, versions): (&Vec<u8>, &Versions)| {
            value_at(versions, version).map(|value| Ok((key.clone(), value.clone())))
        };
        let mut pairs: Box<dyn Iterator<Item = Result<KeyValue, StoreError>>> = if reverse {
            Box::new(range.rev().filter_map(visible))
        } else {
            Box::new(range.filter_map(visible))
        };
        Ok(read(&mut pairs))
    }

    /// Commits `request` inline: resolves it, applies it, fires the watches it changed and,
    /// with a standby, answers once the standby has it (as the embedded backend does).
    pub(crate) async fn commit(&self, request: CommitRequest) -> Result<Versionstamp, StoreError> {
        let delay_ms = self.lock_resolver().slow_commit_delay_ms();
        if let Some(delay_ms) = delay_ms {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        let (answer, stamp, replicated) = {
            let mut resolver = self.lock_resolver();
            let mut disk = self.open_disk()?;
            let now = Instant::now();
            let verdict = resolver
                .resolve(&[&request], now, &self.counters)
                .pop()
                .unwrap_or(Err(StoreError::NotCommitted))?;
            let version = verdict.commit_version();
            let previous_version = disk.store.version;
            let disk_failure = resolver.disk_failure();
            let mut shipped = None;
            if disk_failure.is_none_or(|failure| failure.applied) {
                let mut target = MemoryTarget {
                    store: &mut disk.store,
                    version,
                };
                if self.shipping.is_some() && disk_failure.is_none() {
                    let mut recording = Recording {
                        target: &mut target,
                        mutations: Vec::new(),
                    };
                    apply_request(&mut recording, &request, verdict)?;
                    shipped = Some(CommittedGroup {
                        previous_version,
                        version,
                        mutations: recording.mutations,
                    });
                } else {
                    apply_request(&mut target, &request, verdict)?;
                }
                disk.store.version = version;
            }
            if let Some(failure) = disk_failure {
                if let (true, Some(shipping)) = (failure.applied, &self.shipping) {
                    // On the disk, never shipped: the standby needs another way to it.
                    shipping.skipped(version);
                }
                disk.failed_commits += 1;
                resolver.failed(version, disk.store.version, now);
                disk.store.advance_floor(resolver.floor_version());
                self.counters
                    .failed_group_commits
                    .fetch_add(1, Ordering::Relaxed);
                let answer = Err(StoreError::Unavailable(format!(
                    "the commit failed in storage, and may or may not be durable: {:?} \
                     (injected disk failure)",
                    failure.failure
                )));
                (answer, verdict, None)
            } else {
                resolver.settled(version, now);
                disk.store.advance_floor(resolver.floor_version());
                self.counters.write_batches.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .committed_transactions
                    .fetch_add(1, Ordering::Relaxed);
                // Handed over under the disk's lock, so the sink gets commits in version order.
                let replicated = match (shipped, &self.shipping) {
                    (Some(group), Some(shipping)) => {
                        let (done, replicated) = oneshot::channel();
                        shipping.ship(
                            group,
                            Box::new(move |result| {
                                let _ = done.send(result);
                            }),
                        );
                        Some(replicated)
                    }
                    _ => None,
                };
                // An injected unknown result changes only the answer: the commit was applied.
                (resolver.answer(verdict), verdict, replicated)
            }
        };
        if answer.is_err() && disk_version_below(&self.disk, stamp) {
            // Not applied: nothing changed, nothing to fire.
            return answer;
        }
        // The commit is visible: without registered watches there is nothing to fire.
        if self.registry.has_registered() {
            self.registry
                .notify(&request.written_keys(stamp), &request.cleared, |key| {
                    self.latest(key)
                });
        }
        let Some(replicated) = replicated else {
            return answer;
        };
        let refusal = match replicated.await {
            Ok(Ok(())) => return answer,
            Ok(Err(error)) => error.to_string(),
            Err(_) => "the standby's shipper went away".to_string(),
        };
        match answer {
            Ok(_) => Err(StoreError::Unavailable(format!(
                "the commit is durable here but not on the standby: {refusal}"
            ))),
            answer => answer,
        }
    }

    /// A copy of the whole store at its version, for a standby.
    pub(crate) fn export(&self) -> Result<StoreExport, StoreError> {
        let disk = self.open_disk()?;
        let version = disk.store.version;
        let pairs = disk
            .store
            .keys
            .iter()
            .filter_map(|(key, versions)| {
                value_at(versions, version).map(|value| (key.clone(), value.clone()))
            })
            .collect();
        Ok(StoreExport::of_pairs(pairs, version))
    }

    /// The disk's version and keys: a memory disk cannot be damaged.
    pub(crate) fn check_integrity(&self) -> Result<IntegrityReport, StoreError> {
        let disk = self.open_disk()?;
        let version = disk.store.version;
        let keys = disk
            .store
            .keys
            .values()
            .filter(|versions| value_at(versions, version).is_some())
            .count() as u64;
        Ok(IntegrityReport { version, keys })
    }

    /// Registers the watches of a committed transaction against the latest committed values.
    pub(crate) fn register_watches(&self, watches: Vec<PendingWatch>) {
        self.registry.register(watches, |key| self.latest(key));
    }

    /// The latest committed value of `key`.
    fn latest(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let disk = self.open_disk()?;
        let version = disk.store.version;
        Ok(disk.store.value_at(key, version).cloned())
    }

    /// The disk, unless this process crashed.
    fn open_disk(&self) -> Result<MutexGuard<'_, Disk>, StoreError> {
        let disk = self.disk.lock();
        if disk.incarnation != self.incarnation {
            return Err(StoreError::Closed);
        }
        Ok(disk)
    }

    fn lock_resolver(&self) -> MutexGuard<'_, Resolver> {
        // The resolver is updated only after a commit is applied; a panic between cannot
        // happen in the code holding the lock, and a spurious conflict would be harmless.
        self.resolver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.registry.close();
    }
}

/// Whether the disk has not reached the version of `stamp` (a failed commit not applied).
fn disk_version_below(disk: &MemoryDisk, stamp: Versionstamp) -> bool {
    disk.version() < stamp.commit_version()
}

/// A key's values, oldest first: the version that wrote each, and `None` where it was removed.
type Versions = Vec<(u64, Option<Vec<u8>>)>;

/// The newest value of `versions` at `version`.
fn value_at(versions: &Versions, version: u64) -> Option<&Vec<u8>> {
    versions
        .iter()
        .rev()
        .find(|(written, _)| *written <= version)
        .and_then(|(_, value)| value.as_ref())
}

/// Keys with the values of every version a transaction may still read.
#[derive(Default)]
struct VersionedStore {
    keys: BTreeMap<Vec<u8>, Versions>,
    /// The version of the last commit.
    version: u64,
    /// Reads below it are too old; values older than what it sees are forgotten.
    floor: u64,
    /// Keys written at each version, oldest first, to forget their older values later.
    written: VecDeque<(u64, Vec<u8>)>,
}

impl VersionedStore {
    fn check_readable(&self, version: u64) -> Result<(), StoreError> {
        if version < self.floor {
            return Err(StoreError::TransactionTooOld);
        }
        Ok(())
    }

    fn value_at(&self, key: &[u8], version: u64) -> Option<&Vec<u8>> {
        self.keys
            .get(key)
            .and_then(|versions| value_at(versions, version))
    }

    /// Records `value` (`None`: removed) for `key` at `version`.
    fn write(&mut self, key: &[u8], version: u64, value: Option<Vec<u8>>) {
        let versions = match self.keys.get_mut(key) {
            Some(versions) => versions,
            None if value.is_none() => return,
            None => self.keys.entry(key.to_vec()).or_default(),
        };
        match versions.last_mut() {
            Some((written, slot)) if *written == version => *slot = value,
            _ => versions.push((version, value)),
        }
        self.written.push_back((version, key.to_vec()));
    }

    /// Raises the floor and forgets the values no read at or above it can see.
    fn advance_floor(&mut self, floor: u64) {
        self.floor = self.floor.max(floor);
        while let Some((version, _)) = self.written.front() {
            if *version > self.floor {
                break;
            }
            let Some((_, key)) = self.written.pop_front() else {
                break;
            };
            self.prune(&key);
        }
    }

    /// Keeps only the newest value of `key` at or below the floor, and the newer ones.
    fn prune(&mut self, key: &[u8]) {
        let Some(versions) = self.keys.get_mut(key) else {
            return;
        };
        let floor = self.floor;
        if let Some(newest_visible) = versions.iter().rposition(|(written, _)| *written <= floor) {
            versions.drain(..newest_visible);
        }
        if let [(written, None)] = versions.as_slice()
            && *written <= floor
        {
            self.keys.remove(key);
        }
    }

    /// Forgets every old version and removed key: nothing reads them after a crash.
    fn compact(&mut self) {
        self.keys.retain(|_, versions| {
            let latest = versions.pop();
            versions.clear();
            match latest {
                Some((written, Some(value))) => {
                    versions.push((written, Some(value)));
                    true
                }
                _ => false,
            }
        });
        self.written.clear();
        self.floor = self.version;
    }
}

/// The memory store at the version being committed, as a target of commits.
struct MemoryTarget<'a> {
    store: &'a mut VersionedStore,
    version: u64,
}

impl ApplyTarget for MemoryTarget<'_> {
    fn value(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.store.value_at(key, self.version).cloned())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.store.write(key, self.version, Some(value.to_vec()));
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> Result<(), StoreError> {
        if self.store.value_at(key, self.version).is_some() {
            self.store.write(key, self.version, None);
        }
        Ok(())
    }

    fn remove_range(&mut self, range: &KeyRange) -> Result<(), StoreError> {
        let bounds = (
            Bound::Included(range.begin.as_slice()),
            Bound::Excluded(range.end.as_slice()),
        );
        let version = self.version;
        let present: Vec<Vec<u8>> = self
            .store
            .keys
            .range::<[u8], _>(bounds)
            .filter(|(_, versions)| value_at(versions, version).is_some())
            .map(|(key, _)| key.clone())
            .collect();
        for key in present {
            self.store.write(&key, version, None);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_keeps_old_versions_until_the_floor_passes_them() {
        let mut store = VersionedStore::default();
        // Commits write in version order.
        store.write(b"k", 1, Some(b"one".to_vec()));
        store.write(b"gone", 1, Some(b"x".to_vec()));
        store.write(b"k", 2, Some(b"two".to_vec()));
        store.write(b"gone", 2, None);
        store.write(b"k", 3, None);
        store.version = 3;
        assert_eq!(store.value_at(b"k", 1), Some(&b"one".to_vec()));
        assert_eq!(store.value_at(b"k", 2), Some(&b"two".to_vec()));
        assert_eq!(store.value_at(b"k", 3), None);

        store.advance_floor(2);
        assert!(store.check_readable(1).is_err());
        assert_eq!(
            store.value_at(b"k", 2),
            Some(&b"two".to_vec()),
            "the floor's view stays"
        );
        assert_eq!(store.keys.get(b"k".as_slice()).map(Vec::len), Some(2));
        assert!(
            !store.keys.contains_key(b"gone".as_slice()),
            "removed before the floor"
        );

        store.advance_floor(3);
        assert!(store.keys.is_empty());
        assert!(store.written.is_empty());
    }
}
