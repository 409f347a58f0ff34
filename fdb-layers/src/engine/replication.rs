//! Shipping the embedded store's committed groups to a standby, and the standby's side of it.
//!
//! A region's standby keeps a copy of the region's store that is never behind what the region
//! acknowledged (semi-synchronous replication, the role FoundationDB's satellite logs play in a
//! multi-region cluster):
//!
//! - the primary's writer stage records the **effect** of each group commit while redb applies
//!   it: final values of the keys it wrote (atomic operations and versionstamps resolved), the
//!   keys it removed and the ranges it cleared, in order ([`CommittedGroup`]). Once the group is
//!   durable here it is handed to a [`ReplicationSink`] with a callback that answers the group's
//!   requests: the sink calls it once the standby has the group durable (or its policy refuses
//!   to wait longer), so every acknowledged commit is on the standby too. Meanwhile the writer
//!   stage writes the next group.
//! - **nothing read here leaves before the standby has it.** A group is visible to readers here
//!   as soon as it is durable, before the standby confirms it. A transaction that writes is
//!   answered after its own group, and groups are confirmed in version order, so whatever it
//!   read is on the standby by then. A transaction that only reads waits at its commit until
//!   the standby confirmed its read version ([`Shipping`]), asking for an empty group when
//!   none is on its way (after a group the standby refused, or one the disk failed). Otherwise
//!   a fetch could show a device a message, or a retried send hear "already stored", that a
//!   standby taking over never had. On FoundationDB, a read version is always committed.
//! - the standby applies groups in durable redb transactions of its own
//!   ([`StandbyStore::apply_all`]: consecutive groups that arrived together in one), refusing a
//!   group that does not follow the version it has. A
//!   standby that is too far behind (or new) is brought up to date by a full copy: the primary
//!   reads a snapshot ([`Database::export`](super::Database::export)) and the standby installs
//!   it in chunks ([`StandbyStore::begin_install`]), marked in the file as incomplete until the
//!   last chunk, so that a copy interrupted half way is never opened as a store.
//!
//! The standby's file is an ordinary store file: promoting the standby is opening it with
//! [`Database::open`](super::Database::open).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Durability, ReadableDatabase, ReadableTable};

use super::committer::{ApplyTarget, KeyRange};
use super::disk::{
    DATA_TABLE, DiskFaults, INSTALLING_KEY, META_TABLE, StoreFile, VERSION_KEY, contained,
    read_error,
};
use super::embedded::DataTable;
use super::local::{KeyValue, key_after};
use super::memory::MemoryDisk;
use crate::error::StoreError;

/// One effect of a committed group, as a standby applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// `key` now holds `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// Its value.
        value: Vec<u8>,
    },
    /// `key` was removed.
    Remove {
        /// The key.
        key: Vec<u8>,
    },
    /// Every key from `begin` (inclusive) to `end` (exclusive) was removed.
    RemoveRange {
        /// The first key of the range.
        begin: Vec<u8>,
        /// The key after the range.
        end: Vec<u8>,
    },
}

impl Mutation {
    /// Bytes of keys and values the mutation carries.
    pub fn bytes(&self) -> usize {
        match self {
            Mutation::Put { key, value } => key.len() + value.len(),
            Mutation::Remove { key } => key.len(),
            Mutation::RemoveRange { begin, end } => begin.len() + end.len(),
        }
    }
}

/// The effect of one group commit: its version and its mutations in the order they were
/// applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommittedGroup {
    /// The store's version before the group: a copy applies the group only at this version,
    /// so a copy that missed a group cannot go on as if it had not.
    pub previous_version: u64,
    /// The group's commit version (the store's version once it is applied).
    pub version: u64,
    /// What it did, in order.
    pub mutations: Vec<Mutation>,
}

impl CommittedGroup {
    /// Bytes of keys and values the group carries.
    pub fn bytes(&self) -> usize {
        self.mutations.iter().map(Mutation::bytes).sum()
    }
}

/// What the primary's writer stage calls once a group's fate on the standby is known: `Ok`
/// when the standby has it durable, an error when the sink's policy refuses to acknowledge it
/// (its requests are then answered [`StoreError::Unavailable`]: durable here, but not
/// acknowledged, as with a commit whose result is unknown).
pub type Replicated = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A primary's sink with what it confirmed: the newest version the standby holds, and how
/// many groups are on their way to it. A transaction that only read waits here until the
/// standby has what it read.
#[derive(Debug)]
pub(crate) struct Shipping {
    sink: Arc<dyn ReplicationSink>,
    version: tokio::sync::watch::Sender<u64>,
    in_flight: AtomicU64,
}

impl Shipping {
    /// Shipping to `sink`, nothing confirmed yet: a copy's version is not known until a group
    /// reaches it.
    pub(crate) fn new(sink: Arc<dyn ReplicationSink>) -> Arc<Shipping> {
        Arc::new(Shipping {
            sink,
            version: tokio::sync::watch::Sender::new(0),
            in_flight: AtomicU64::new(0),
        })
    }

    /// The newest version the standby confirmed.
    pub(crate) fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Whether a group handed to the sink has not been answered yet.
    pub(crate) fn any_in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Hands `group` to the sink, counting it on its way until `done` hears its fate; a group
    /// the standby took confirms its version (and every version before it).
    pub(crate) fn ship(self: &Arc<Self>, group: CommittedGroup, done: Replicated) {
        let version = group.version;
        let shipping = self.clone();
        shipping.in_flight.fetch_add(1, Ordering::AcqRel);
        self.sink.replicate(
            group,
            Box::new(move |result| {
                if result.is_ok() {
                    shipping.version.send_if_modified(|newest| {
                        let newer = version > *newest;
                        if newer {
                            *newest = version;
                        }
                        newer
                    });
                }
                shipping.in_flight.fetch_sub(1, Ordering::AcqRel);
                done(result);
            }),
        );
    }

    /// Tells the sink the group commit at `version` reached the store unshipped
    /// ([`ReplicationSink::skipped`]).
    pub(crate) fn skipped(&self, version: u64) {
        self.sink.skipped(version);
    }

    /// Waits up to `wait` for the standby to confirm `version`; whether it did.
    pub(crate) async fn reached(&self, version: u64, wait: std::time::Duration) -> bool {
        let mut newest = self.version.subscribe();
        matches!(
            tokio::time::timeout(wait, newest.wait_for(|newest| *newest >= version)).await,
            Ok(Ok(_))
        )
    }
}

/// Where the primary's writer stage hands each durable group, in version order. The sink must
/// not block: it calls `done` later, from any thread, exactly once per group and in the order
/// it was given the groups, so that the writer stage writes the next group here while the
/// standby writes this one.
pub trait ReplicationSink: Send + Sync + std::fmt::Debug {
    /// Ships `group`; `done` hears when it is safe on the standby (or refused).
    fn replicate(&self, group: CommittedGroup, done: Replicated);

    /// The group commit at `version` failed, yet reached the store (a disk error after it was
    /// written): it was answered as failed and never handed over, so the standby's copy lacks
    /// it and no later group follows the copy. The sink brings the standby up to date another
    /// way (a full copy) without waiting for a later group. Called in version order with
    /// [`ReplicationSink::replicate`].
    fn skipped(&self, version: u64) {
        let _ = version;
    }
}

/// Records the effects of a group while it is applied to a target.
pub(crate) struct Recording<'a, T> {
    pub(crate) target: &'a mut T,
    pub(crate) mutations: Vec<Mutation>,
}

impl<T: ApplyTarget> ApplyTarget for Recording<'_, T> {
    fn value(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.target.value(key)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.mutations.push(Mutation::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        });
        self.target.put(key, value)
    }

    fn remove(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.mutations.push(Mutation::Remove { key: key.to_vec() });
        self.target.remove(key)
    }

    fn remove_range(&mut self, range: &KeyRange) -> Result<(), StoreError> {
        self.mutations.push(Mutation::RemoveRange {
            begin: range.begin.clone(),
            end: range.end.clone(),
        });
        self.target.remove_range(range)
    }
}

/// A consistent read of a whole store (embedded or memory), for copying it to a standby.
pub struct StoreExport {
    source: ExportSource,
    version: u64,
    done: bool,
}

/// Where an export reads.
enum ExportSource {
    /// An embedded store's snapshot; `next` is the key after the last one returned (`None`
    /// before the first chunk).
    Redb {
        table: DataTable,
        next: Option<Vec<u8>>,
    },
    /// A memory store's pairs at the export's version, copied when it began.
    Pairs(std::vec::IntoIter<KeyValue>),
}

impl std::fmt::Debug for StoreExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreExport")
            .field("version", &self.version)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl StoreExport {
    pub(crate) fn new(table: DataTable, version: u64) -> Self {
        StoreExport {
            source: ExportSource::Redb { table, next: None },
            version,
            done: false,
        }
    }

    /// An export of `pairs` (in key order), read at `version`.
    pub(crate) fn of_pairs(pairs: Vec<KeyValue>, version: u64) -> Self {
        StoreExport {
            source: ExportSource::Pairs(pairs.into_iter()),
            version,
            done: false,
        }
    }

    /// The version the export reads at: groups after it follow the copy.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether reading a chunk reads a file (then it belongs on a blocking thread); a memory
    /// store's export reads what it copied in memory.
    pub fn reads_files(&self) -> bool {
        matches!(self.source, ExportSource::Redb { .. })
    }

    /// The next pairs in key order, about `bytes_max` of them (at least one pair while any
    /// remain); empty once every pair was returned.
    pub fn next_chunk(&mut self, bytes_max: usize) -> Result<Vec<KeyValue>, StoreError> {
        if self.done {
            return Ok(Vec::new());
        }
        let mut pairs = Vec::new();
        let mut bytes = 0;
        match &mut self.source {
            ExportSource::Redb { table, next } => {
                let begin = next.clone().unwrap_or_default();
                let range = contained("reading the export", || {
                    table.range::<&[u8]>(begin.as_slice()..)
                })?
                .map_err(read_error)?;
                for pair in range {
                    let (key, value) = contained("reading the export", || {
                        pair.map(|(key, value)| (key.value().to_vec(), value.value().to_vec()))
                    })?
                    .map_err(read_error)?;
                    bytes += key.len() + value.len();
                    *next = Some(key_after(&key));
                    pairs.push((key, value));
                    if bytes >= bytes_max {
                        return Ok(pairs);
                    }
                }
            }
            ExportSource::Pairs(left) => {
                for (key, value) in left.by_ref() {
                    bytes += key.len() + value.len();
                    pairs.push((key, value));
                    if bytes >= bytes_max {
                        return Ok(pairs);
                    }
                }
            }
        }
        self.done = true;
        Ok(pairs)
    }
}

/// A standby's copy of a store: applies shipped groups and installs full copies. The file is
/// an ordinary store file once no install is in progress.
pub struct StandbyStore {
    copy: Copy,
    version: u64,
    installing: Option<u64>,
}

/// Where a standby keeps its copy.
enum Copy {
    /// A store file (a standby process).
    File(Arc<StoreFile>),
    /// A memory disk (a simulated standby).
    Memory(MemoryDisk),
}

impl std::fmt::Debug for StandbyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandbyStore")
            .field("version", &self.version)
            .field("installing", &self.installing)
            .finish_non_exhaustive()
    }
}

impl StandbyStore {
    /// Opens (creating if needed) the standby's file at `path`, checking every page of an
    /// existing one first.
    pub fn open(path: &Path) -> Result<StandbyStore, StoreError> {
        let (file, _) = StoreFile::open_any(path, DiskFaults::default(), true)?;
        let (version, installing) = file.with("reading the standby's version", |redb| {
            let read = redb.begin_read().map_err(StoreError::storage)?;
            let meta = read.open_table(META_TABLE).map_err(StoreError::storage)?;
            let version = meta
                .get(VERSION_KEY)
                .map_err(StoreError::storage)?
                .map(|version| version.value())
                .ok_or_else(|| StoreError::corrupt("commit version", "missing"))?;
            let installing = meta
                .get(INSTALLING_KEY)
                .map_err(StoreError::storage)?
                .map(|version| version.value());
            Ok((version, installing))
        })?;
        Ok(StandbyStore {
            copy: Copy::File(file),
            version,
            installing,
        })
    }

    /// A standby's copy on `disk` (the simulator's standbys): refused while a database has the
    /// disk open, since a copy and a store are never the same disk at once.
    pub fn memory(disk: MemoryDisk) -> Result<StandbyStore, StoreError> {
        let (version, installing) = disk.standby_state()?;
        Ok(StandbyStore {
            copy: Copy::Memory(disk),
            version,
            installing,
        })
    }

    /// The version of the last group applied (0 for a new store).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The version of a full copy being installed (and not finished): the store is not usable
    /// until a new copy is installed whole.
    pub fn installing(&self) -> Option<u64> {
        self.installing
    }

    /// Applies `group` durably. Refused unless it follows the version this copy has and no
    /// install is in progress.
    pub fn apply(&mut self, group: &CommittedGroup) -> Result<(), StoreError> {
        self.apply_all(std::slice::from_ref(group))
    }

    /// Applies consecutive `groups` durably in one write transaction (one fsync): a standby
    /// that fell behind catches up in a few large writes. Refused, with nothing applied,
    /// unless each group follows the one before it (the first: this copy's version) and no
    /// install is in progress.
    pub fn apply_all(&mut self, groups: &[CommittedGroup]) -> Result<(), StoreError> {
        if self.installing.is_some() {
            return Err(StoreError::InvalidOptions(
                "a group cannot be applied during an install".into(),
            ));
        }
        let Some(last) = groups.last() else {
            return Ok(());
        };
        let mut version = self.version;
        for group in groups {
            if group.previous_version != version || group.version <= version {
                return Err(StoreError::InvalidOptions(format!(
                    "the group from version {} to {} does not follow this copy's version {}",
                    group.previous_version, group.version, version
                )));
            }
            version = group.version;
        }
        let file = match &self.copy {
            Copy::File(file) => file,
            Copy::Memory(disk) => {
                disk.apply_groups(groups)?;
                self.version = last.version;
                return Ok(());
            }
        };
        write(
            file,
            "applying replicated groups",
            |data| {
                for mutation in groups.iter().flat_map(|group| &group.mutations) {
                    match mutation {
                        Mutation::Put { key, value } => {
                            data.insert(key.as_slice(), value.as_slice())
                                .map_err(StoreError::storage)?;
                        }
                        Mutation::Remove { key } => {
                            data.remove(key.as_slice()).map_err(StoreError::storage)?;
                        }
                        Mutation::RemoveRange { begin, end } => {
                            data.retain_in::<&[u8], _>(begin.as_slice()..end.as_slice(), |_, _| {
                                false
                            })
                            .map_err(StoreError::storage)?;
                        }
                    }
                }
                Ok(())
            },
            |meta| {
                meta.insert(VERSION_KEY, last.version)
                    .map_err(StoreError::storage)?;
                Ok(())
            },
        )?;
        self.version = last.version;
        Ok(())
    }

    /// Starts installing a full copy read at `version`: removes every key and marks the file
    /// incomplete, durably, so nothing opens it as a store until [`Self::finish_install`].
    pub fn begin_install(&mut self, version: u64) -> Result<(), StoreError> {
        let file = match &self.copy {
            Copy::File(file) => file,
            Copy::Memory(disk) => {
                disk.begin_install(version)?;
                self.installing = Some(version);
                return Ok(());
            }
        };
        write(
            file,
            "beginning an install",
            |data| {
                data.retain(|_, _| false).map_err(StoreError::storage)?;
                Ok(())
            },
            |meta| {
                meta.insert(INSTALLING_KEY, version)
                    .map_err(StoreError::storage)?;
                Ok(())
            },
        )?;
        self.installing = Some(version);
        Ok(())
    }

    /// Adds pairs of the copy being installed (in one durable transaction).
    pub fn install_chunk(&mut self, pairs: &[KeyValue]) -> Result<(), StoreError> {
        if self.installing.is_none() {
            return Err(StoreError::InvalidOptions(
                "no install is in progress".into(),
            ));
        }
        let file = match &self.copy {
            Copy::File(file) => file,
            Copy::Memory(disk) => return disk.install_pairs(pairs),
        };
        write(
            file,
            "installing a chunk",
            |data| {
                for (key, value) in pairs {
                    data.insert(key.as_slice(), value.as_slice())
                        .map_err(StoreError::storage)?;
                }
                Ok(())
            },
            |_| Ok(()),
        )
    }

    /// Finishes the install: the copy is whole, at the version it was read at.
    pub fn finish_install(&mut self) -> Result<(), StoreError> {
        let Some(version) = self.installing else {
            return Err(StoreError::InvalidOptions(
                "no install is in progress".into(),
            ));
        };
        match &self.copy {
            Copy::File(file) => write(
                file,
                "finishing an install",
                |_| Ok(()),
                |meta| {
                    meta.remove(INSTALLING_KEY).map_err(StoreError::storage)?;
                    meta.insert(VERSION_KEY, version)
                        .map_err(StoreError::storage)?;
                    Ok(())
                },
            )?,
            Copy::Memory(disk) => disk.finish_install(version)?,
        }
        self.version = version;
        self.installing = None;
        Ok(())
    }

    /// The value of `key` (tests and checks).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let file = match &self.copy {
            Copy::File(file) => file,
            Copy::Memory(disk) => return Ok(disk.latest_value(key)),
        };
        file.with("reading a key", |redb| {
            let read = redb.begin_read().map_err(StoreError::storage)?;
            let data = read.open_table(DATA_TABLE).map_err(StoreError::storage)?;
            let value = data.get(key).map_err(StoreError::storage)?;
            Ok(value.map(|guard| guard.value().to_vec()))
        })
    }

    /// Every pair, in key order (tests and checks on small stores).
    pub fn pairs(&self) -> Result<Vec<KeyValue>, StoreError> {
        let file = match &self.copy {
            Copy::File(file) => file,
            Copy::Memory(disk) => {
                let mut pairs = Vec::new();
                disk.for_each_latest(|key, value| pairs.push((key.to_vec(), value.to_vec())));
                return Ok(pairs);
            }
        };
        file.with("reading every pair", |redb| {
            let read = redb.begin_read().map_err(StoreError::storage)?;
            let data = read.open_table(DATA_TABLE).map_err(StoreError::storage)?;
            let mut pairs = Vec::new();
            for pair in data.iter().map_err(StoreError::storage)? {
                let (key, value) = pair.map_err(StoreError::storage)?;
                pairs.push((key.value().to_vec(), value.value().to_vec()));
            }
            Ok(pairs)
        })
    }
}

/// Runs one durable redb write transaction on `file` with the data and meta tables.
fn write(
    file: &StoreFile,
    what: &'static str,
    data: impl FnOnce(&mut redb::Table<'_, &'static [u8], &'static [u8]>) -> Result<(), StoreError>,
    meta: impl FnOnce(&mut redb::Table<'_, &'static str, u64>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    file.with(what, |redb| {
        let mut write = redb.begin_write().map_err(StoreError::storage)?;
        write
            .set_durability(Durability::Immediate)
            .map_err(StoreError::storage)?;
        {
            let mut table = write.open_table(DATA_TABLE).map_err(StoreError::storage)?;
            data(&mut table)?;
            let mut table = write.open_table(META_TABLE).map_err(StoreError::storage)?;
            meta(&mut table)?;
        }
        write.commit().map_err(StoreError::storage)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::engine::{Database, EmbeddedOptions, MemoryOptions};

    /// A sink that applies each group to a standby copy in the same process, or refuses.
    #[derive(Debug)]
    struct InProcess {
        standby: Mutex<StandbyStore>,
        refuse: AtomicBool,
        /// The versions the engine said it reached without a group.
        skipped: Mutex<Vec<u64>>,
    }

    impl InProcess {
        /// A sink applying to `standby`, which takes every group.
        fn to(standby: StandbyStore) -> Arc<InProcess> {
            Arc::new(InProcess {
                standby: Mutex::new(standby),
                refuse: AtomicBool::new(false),
                skipped: Mutex::new(Vec::new()),
            })
        }
    }

    impl ReplicationSink for InProcess {
        fn replicate(&self, group: CommittedGroup, done: Replicated) {
            if self.refuse.load(Ordering::SeqCst) {
                return done(Err(StoreError::Unavailable("the standby is gone".into())));
            }
            done(self.standby.lock().expect("lock").apply(&group))
        }

        fn skipped(&self, version: u64) {
            self.skipped.lock().expect("lock").push(version);
        }
    }

    fn primary_with_standby(folder: &Path) -> (Database, Arc<InProcess>) {
        let sink = InProcess::to(StandbyStore::open(&folder.join("standby.redb")).expect("opens"));
        let database = Database::open(
            &folder.join("primary.redb"),
            EmbeddedOptions {
                replication: Some(sink.clone()),
                ..EmbeddedOptions::default()
            },
        )
        .expect("opens");
        (database, sink)
    }

    /// A memory primary shipping to a standby's copy on a memory disk (the simulator's pair).
    fn memory_primary_with_standby() -> (Database, Arc<InProcess>, MemoryDisk) {
        let copy = MemoryDisk::new();
        let sink = InProcess::to(StandbyStore::memory(copy.clone()).expect("a free disk"));
        let database = Database::memory(MemoryOptions {
            replication: Some(sink.clone()),
            ..MemoryOptions::default()
        })
        .expect("opens");
        (database, sink, copy)
    }

    /// `a` was written here but the standby refused it: a transaction reads it, and its commit
    /// fails, the standby still lacking it.
    async fn assert_read_waits_for_the_standby(database: &Database) {
        let reader = database.create_transaction().expect("a transaction");
        let read = reader.get(b"a").await.expect("reads");
        assert_eq!(read, Some(b"1".to_vec()), "applied here");
        let answered = reader.commit().await;
        assert!(
            matches!(&answered, Err(StoreError::Unavailable(reason)) if reason.contains("not on the standby yet")),
            "{answered:?}"
        );
    }

    /// A sink that holds each group's answer until released, or refuses at once.
    #[derive(Default)]
    struct Held {
        waiting: Mutex<Vec<Replicated>>,
        refuse: AtomicBool,
    }

    impl std::fmt::Debug for Held {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Held").finish_non_exhaustive()
        }
    }

    impl ReplicationSink for Held {
        fn replicate(&self, _group: CommittedGroup, done: Replicated) {
            if self.refuse.load(Ordering::SeqCst) {
                return done(Err(StoreError::Unavailable("the standby is gone".into())));
            }
            self.waiting.lock().expect("lock").push(done);
        }
    }

    impl Held {
        /// Waits (a bounded number of short sleeps) until a group is held.
        async fn until_holding(&self) {
            for _ in 0..10_000 {
                if !self.waiting.lock().expect("lock").is_empty() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            panic!("no group reached the sink");
        }

        /// The standby confirms every group held so far.
        fn release(&self) {
            let held = std::mem::take(&mut *self.waiting.lock().expect("lock"));
            for done in held {
                done(Ok(()));
            }
        }
    }

    /// While the standby has not confirmed a write, a transaction that read it is not answered;
    /// once it confirms, both are.
    async fn reads_leave_once_the_standby_has_them(database: Database, held: Arc<Held>) {
        let writer = {
            let database = database.clone();
            tokio::spawn(async move {
                database
                    .transact(|transaction| async move { transaction.set(b"a", b"1") })
                    .await
            })
        };
        held.until_holding().await;
        let reader = database.create_transaction().expect("a transaction");
        let read = reader.get(b"a").await.expect("reads");
        assert_eq!(
            read,
            Some(b"1".to_vec()),
            "visible here before the standby has it"
        );
        let answered = tokio::spawn(async move { reader.commit().await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !answered.is_finished(),
            "answered before the standby had it"
        );
        assert!(
            !writer.is_finished(),
            "acknowledged before the standby had it"
        );
        held.release();
        answered
            .await
            .expect("joins")
            .expect("answered once confirmed");
        writer
            .await
            .expect("joins")
            .expect("acknowledged once confirmed");
    }

    /// After a group the standby refused, nothing is on its way to confirm what a reader saw: the
    /// reader's commit sends an empty group, whose confirmation answers it.
    async fn a_read_after_a_refused_group_pushes_an_empty_one(database: Database, held: Arc<Held>) {
        held.refuse.store(true, Ordering::SeqCst);
        let refused = database
            .transact(|transaction| async move { transaction.set(b"a", b"1") })
            .await;
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        held.refuse.store(false, Ordering::SeqCst);
        let reader = database.create_transaction().expect("a transaction");
        assert_eq!(reader.get(b"a").await.expect("reads"), Some(b"1".to_vec()));
        let answered = tokio::spawn(async move { reader.commit().await });
        held.until_holding().await;
        assert!(
            !answered.is_finished(),
            "answered before the standby had it"
        );
        held.release();
        answered
            .await
            .expect("joins")
            .expect("answered once confirmed");
    }

    fn embedded_with(folder: &Path, held: &Arc<Held>) -> Database {
        Database::open(
            &folder.join("primary.redb"),
            EmbeddedOptions {
                replication: Some(held.clone()),
                ..EmbeddedOptions::default()
            },
        )
        .expect("opens")
    }

    fn memory_with(held: &Arc<Held>) -> Database {
        Database::memory(MemoryOptions {
            replication: Some(held.clone()),
            ..MemoryOptions::default()
        })
        .expect("opens")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_leaves_only_once_the_standby_has_what_it_read() {
        let folder = tempfile::tempdir().expect("folder");
        let held = Arc::new(Held::default());
        reads_leave_once_the_standby_has_them(embedded_with(folder.path(), &held), held).await;
        let held = Arc::new(Held::default());
        reads_leave_once_the_standby_has_them(memory_with(&held), held).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_after_a_refused_group_is_confirmed_by_an_empty_group() {
        let folder = tempfile::tempdir().expect("folder");
        let held = Arc::new(Held::default());
        a_read_after_a_refused_group_pushes_an_empty_one(embedded_with(folder.path(), &held), held)
            .await;
        let held = Arc::new(Held::default());
        a_read_after_a_refused_group_pushes_an_empty_one(memory_with(&held), held).await;
    }

    fn every_pair(database: &Database) -> Vec<KeyValue> {
        let mut export = database.export().expect("exports");
        let mut pairs = Vec::new();
        loop {
            let chunk = export.next_chunk(64).expect("reads");
            if chunk.is_empty() {
                return pairs;
            }
            pairs.extend(chunk);
        }
    }

    /// Writes of every kind, in transactions committed concurrently so that groups hold several.
    async fn write_every_kind(database: &Database, rounds: u8) {
        let mut tasks = Vec::new();
        for round in 0..rounds {
            let database = database.clone();
            tasks.push(tokio::spawn(async move {
                database
                    .transact(|transaction| async move {
                        transaction.set(&[b'k', round], &[round; 3])?;
                        transaction.atomic_add(b"counter", 1)?;
                        transaction.atomic_max(&[b'm', round % 3], &[round])?;
                        let mut key = vec![b'v', round, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                        key.truncate(12);
                        transaction.set_versionstamped_key(&key, 2, b"stamped")?;
                        if round % 4 == 3 {
                            transaction.clear(&[b'k', round - 1]);
                            transaction.clear_range(b"m", &[b'm', 1]);
                        }
                        Ok(())
                    })
                    .await
            }));
        }
        for task in tasks {
            task.await.expect("joins").expect("commits");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_standby_holds_what_the_primary_acknowledged() {
        let folder = tempfile::tempdir().expect("folder");
        let (database, sink) = primary_with_standby(folder.path());
        write_every_kind(&database, 40).await;
        let primary = every_pair(&database);
        let standby = sink.standby.lock().expect("lock");
        assert_eq!(standby.pairs().expect("reads"), primary);
        assert_eq!(
            standby.get(b"counter").expect("reads"),
            Some(40i64.to_le_bytes().to_vec())
        );
        assert!(
            primary
                .iter()
                .any(|(key, value)| key[0] == b'v' && value == b"stamped")
        );
        assert_eq!(
            standby.version(),
            database.export().expect("exports").version()
        );
    }

    #[tokio::test]
    async fn a_commit_the_standby_did_not_take_is_not_acknowledged() {
        let folder = tempfile::tempdir().expect("folder");
        let (database, sink) = primary_with_standby(folder.path());
        sink.refuse.store(true, Ordering::SeqCst);
        let refused = database
            .transact(|transaction| async move { transaction.set(b"a", b"1") })
            .await;
        assert!(
            matches!(&refused, Err(StoreError::Unavailable(reason)) if reason.contains("standby")),
            "{refused:?}"
        );
        // Durable here all the same, like a commit whose result is unknown; what a transaction
        // reads of it leaves only once the standby has it.
        assert_read_waits_for_the_standby(&database).await;
        // The copy missed that group, so it cannot take the next one: it must be brought up
        // to date (from the primary's log of groups, or a full copy) first.
        sink.refuse.store(false, Ordering::SeqCst);
        let refused = database
            .transact(|transaction| async move { transaction.set(b"b", b"2") })
            .await;
        assert!(
            matches!(&refused, Err(StoreError::Unavailable(reason)) if reason.contains("does not follow")),
            "{refused:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_copy_then_the_groups_after_it_make_the_same_store() {
        let folder = tempfile::tempdir().expect("folder");
        let (database, _) = primary_with_standby(folder.path());
        write_every_kind(&database, 20).await;
        // A second standby, new, copies the store and then applies what follows.
        let path = folder.path().join("late.redb");
        let mut late = StandbyStore::open(&path).expect("opens");
        let mut export = database.export().expect("exports");
        late.begin_install(export.version()).expect("begins");
        loop {
            let chunk = export.next_chunk(100).expect("reads");
            if chunk.is_empty() {
                break;
            }
            late.install_chunk(&chunk).expect("installs");
        }
        // An install cut short is not a store.
        drop(late);
        let refused = Database::open(&path, EmbeddedOptions::default());
        assert!(
            matches!(&refused, Err(StoreError::Corrupt { detail, .. }) if detail.contains("standby")),
            "{refused:?}"
        );
        let mut late = StandbyStore::open(&path).expect("opens");
        assert_eq!(late.installing(), Some(export.version()));
        assert!(late.apply(&CommittedGroup::default()).is_err());
        late.finish_install().expect("finishes");
        assert_eq!(late.version(), export.version());
        assert!(
            late.apply(&CommittedGroup {
                previous_version: export.version() - 1,
                version: export.version(),
                mutations: Vec::new()
            })
            .is_err(),
            "a group that does not follow is refused"
        );
        assert_eq!(late.pairs().expect("reads"), every_pair(&database));
        drop(late);
        // Promoted: the copy opens as a store with every pair.
        let promoted = Database::open(&path, EmbeddedOptions::default()).expect("opens");
        assert_eq!(every_pair(&promoted), every_pair(&database));
    }

    #[test]
    fn consecutive_groups_apply_together_and_a_broken_chain_applies_nothing() {
        let folder = tempfile::tempdir().expect("folder");
        let mut copy = StandbyStore::open(&folder.path().join("copy.redb")).expect("opens");
        let put = |key: &[u8]| Mutation::Put {
            key: key.to_vec(),
            value: b"v".to_vec(),
        };
        let group = |previous_version, version, key: &[u8]| CommittedGroup {
            previous_version,
            version,
            mutations: vec![put(key)],
        };
        copy.apply_all(&[group(0, 3, b"a"), group(3, 5, b"b")])
            .expect("a chain from the copy's version applies");
        assert_eq!(copy.version(), 5);
        let broken = copy.apply_all(&[group(5, 6, b"c"), group(7, 8, b"d")]);
        assert!(broken.is_err());
        assert_eq!(copy.version(), 5);
        assert_eq!(
            copy.get(b"c").expect("reads"),
            None,
            "nothing of a broken chain"
        );
        copy.apply_all(&[]).expect("nothing to apply");
        assert_eq!(copy.pairs().expect("reads").len(), 2);
    }

    #[tokio::test]
    async fn a_memory_standby_holds_what_its_primary_acknowledged() {
        let (database, sink, copy) = memory_primary_with_standby();
        write_every_kind(&database, 40).await;
        let primary = every_pair(&database);
        let standby = sink.standby.lock().expect("lock");
        assert_eq!(standby.pairs().expect("reads"), primary);
        assert_eq!(
            standby.get(b"counter").expect("reads"),
            Some(40i64.to_le_bytes().to_vec())
        );
        assert_eq!(standby.version(), copy.version());
        assert_eq!(
            copy.version(),
            database.export().expect("exports").version()
        );
        // The copy cannot be a store while its primary's database has... its own disk; a
        // database opened on the copy makes it a store, and it is no copy any more.
        drop(standby);
        let promoted = Database::memory(MemoryOptions {
            disk: copy.clone(),
            ..MemoryOptions::default()
        })
        .expect("the copy opens as a store");
        assert_eq!(every_pair(&promoted), primary);
        assert!(
            StandbyStore::memory(copy).is_err(),
            "a disk open as a store is refused as a copy"
        );
    }

    #[tokio::test]
    async fn a_memory_commit_the_standby_did_not_take_is_not_acknowledged() {
        let (database, sink, _) = memory_primary_with_standby();
        sink.refuse.store(true, Ordering::SeqCst);
        let refused = database
            .transact(|transaction| async move { transaction.set(b"a", b"1") })
            .await;
        assert!(
            matches!(&refused, Err(StoreError::Unavailable(reason)) if reason.contains("standby")),
            "{refused:?}"
        );
        assert_read_waits_for_the_standby(&database).await;
        sink.refuse.store(false, Ordering::SeqCst);
        let refused = database
            .transact(|transaction| async move { transaction.set(b"b", b"2") })
            .await;
        assert!(
            matches!(&refused, Err(StoreError::Unavailable(reason)) if reason.contains("does not follow")),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_memory_full_copy_then_the_groups_after_it_make_the_same_store() {
        let (database, sink, _) = memory_primary_with_standby();
        write_every_kind(&database, 20).await;
        let late_disk = MemoryDisk::new();
        let mut late = StandbyStore::memory(late_disk.clone()).expect("a free disk");
        let mut export = database.export().expect("exports");
        late.begin_install(export.version()).expect("begins");
        let chunk = export.next_chunk(100).expect("reads");
        late.install_chunk(&chunk).expect("installs");
        let refused = Database::memory(MemoryOptions {
            disk: late_disk.clone(),
            ..MemoryOptions::default()
        });
        assert!(
            matches!(&refused, Err(StoreError::Corrupt { detail, .. }) if detail.contains("never finished")),
            "an install cut short is not a store: {refused:?}"
        );
        drop(late);
        let mut late = StandbyStore::memory(late_disk.clone()).expect("a free disk");
        assert_eq!(late.installing(), Some(export.version()));
        loop {
            let chunk = export.next_chunk(100).expect("reads");
            if chunk.is_empty() {
                break;
            }
            late.install_chunk(&chunk).expect("installs");
        }
        late.finish_install().expect("finishes");
        assert_eq!(late.version(), export.version());
        // The groups after the copy follow it: the first standby's sink feeds the late one too.
        let more = database.clone();
        more.transact(|transaction| async move {
            transaction.set(b"after", b"copy")?;
            transaction.atomic_add(b"counter", 5)
        })
        .await
        .expect("commits");
        let standby = sink.standby.lock().expect("lock");
        let next = CommittedGroup {
            previous_version: late.version(),
            version: standby.version(),
            mutations: vec![
                Mutation::Put {
                    key: b"after".to_vec(),
                    value: b"copy".to_vec(),
                },
                Mutation::Put {
                    key: b"counter".to_vec(),
                    value: standby.get(b"counter").expect("reads").expect("a counter"),
                },
            ],
        };
        late.apply(&next).expect("follows the copy");
        assert_eq!(late.pairs().expect("reads"), every_pair(&database));
        drop(late);
        let promoted = Database::memory(MemoryOptions {
            disk: late_disk,
            ..MemoryOptions::default()
        })
        .expect("a whole copy opens as a store");
        assert_eq!(every_pair(&promoted), every_pair(&database));
    }

    #[tokio::test]
    async fn a_failed_memory_commit_that_reached_the_disk_is_said_to_be_skipped() {
        let copy = MemoryDisk::new();
        let primary = MemoryDisk::new();
        let sink = InProcess::to(StandbyStore::memory(copy.clone()).expect("a free disk"));
        let database = Database::memory(MemoryOptions {
            disk: primary.clone(),
            faults: Some(crate::FaultConfig {
                seed: 11,
                conflict_probability: 0.0,
                commit_unknown_result_probability: 0.0,
                slow_commit_probability: 0.0,
                slow_commit_ms: 0,
                io_error_probability: 1.0,
            }),
            replication: Some(sink.clone()),
        })
        .expect("opens");
        let mut reached = Vec::new();
        for round in 0u8..20 {
            let before = primary.version();
            let failed = database.create_transaction().expect("a transaction");
            failed.set(&[b'k', round], b"v").expect("set");
            assert!(failed.commit().await.is_err(), "every commit fails");
            if primary.version() > before {
                reached.push(primary.version());
            }
        }
        assert!(!reached.is_empty(), "some failed commit reached the disk");
        assert_eq!(*sink.skipped.lock().expect("lock"), reached);
        assert_eq!(copy.version(), 0, "nothing was shipped");
    }
}
