//! The change log: how replicas of the directory follow the writer.
//!
//! **Key layout** (under `("directory",)`):
//! - `("log", stamp, account)` → nothing: the account's last change, at the versionstamp of the
//!   transaction that made it (`SET_VERSIONSTAMPED_KEY`);
//! - `("log_at", account)` → the 10-byte versionstamp of that entry (`SET_VERSIONSTAMPED_VALUE`);
//! - `("replica_cursor",)` → the writer's [`LogPosition`] this copy applied through (replicas);
//! - `("log_complete",)` → present once every account has an entry (see "Evolution");
//! - the same four for groups: `("group_log", stamp, group)`, `("group_log_at", group)`,
//!   `("group_replica_cursor",)` and `("group_log_complete",)`.
//!
//! **Groups** have a log of their own, written with every change of a group (its version moves:
//! created, members, roles, name, home). A replica keeps each group's members at their version
//! ([`put_group_replica`], one key per group: `("group_replica", group)` → version then member
//! ids, 8 bytes LE each), newer versions only. Whether a region may check an envelope against
//! that copy is the region's rule (a lease on having caught up lately, see
//! `home_region::directory_replica`): the copy alone says nothing of how fresh it is.
//!
//! Each account has one entry: a change clears the account's previous one. The log is as long as
//! the directory, never longer, and a new replica that reads it from the start gets every
//! account; one that follows it gets each changed account once, in commit order. "Changed after
//! position P" is one range read.
//!
//! **Conflicts.** A change reads only its account's `log_at` (changes of one account serialize
//! on its record and version anyway) and writes keys named by its own versionstamp: changes of
//! different accounts never conflict.
//!
//! **Idempotence.** Logging is part of the change's transaction. A second change of the same
//! account in one transaction (an account created with its first device) finds `log_at`
//! unreadable (written in this transaction: `AccessedUnreadable`) and writes the same entry
//! again. Applying at a replica goes through [`super::put_account`], which refuses an older
//! epoch and changes nothing for a record it holds already, so a page applied twice is harmless.
//!
//! **Evolution.** A store written before the log has accounts without entries:
//! [`backfill_log`] gives each one, page by page, before the writer serves, then
//! [`set_log_complete`] records that it need not run again (groups likewise:
//! [`backfill_group_log`], [`set_group_log_complete`]); the edges' caches could follow the same
//! logs next.

use relay_proto::AccountId;

use super::accounts::{AccountRecord, read_account};
use super::{Directory, GroupId};
use crate::codec::decode_key;
use crate::engine::{RangeOptions, Transaction, Versionstamp};
use crate::error::StoreError;
use crate::limits::{GROUP_MEMBERS_MAX, LAYER_READ_ENTRIES_MAX, VERSIONSTAMP_BYTES};
use crate::tuple::{Subspace, TupleVersionstamp, pack};

/// A position in one of the writer's change logs: after the change of the account (or group)
/// `id` at `stamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPosition {
    /// The versionstamp of the change's transaction.
    pub stamp: Versionstamp,
    /// The account's (or group's) id.
    pub id: u64,
}

impl LogPosition {
    /// Bytes of [`Self::to_bytes`].
    pub const BYTES: usize = VERSIONSTAMP_BYTES + 8;

    /// The position as a replica keeps and sends it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.stamp.as_bytes().to_vec();
        bytes.extend_from_slice(&self.id.to_be_bytes());
        bytes
    }

    /// A position from [`Self::to_bytes`]; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::BYTES {
            return None;
        }
        let stamp = Versionstamp::read_at(bytes, 0)?;
        let id = u64::from_be_bytes(bytes[VERSIONSTAMP_BYTES..].try_into().ok()?);
        Some(LogPosition { stamp, id })
    }
}

/// One of the directory's change logs: the names of its keys.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChangeLog {
    /// `(entries, stamp, id)` → nothing.
    entries: &'static str,
    /// `(at, id)` → the versionstamp of the id's entry.
    at: &'static str,
    /// `(cursor,)` → where a replica applied through.
    cursor: &'static str,
    /// `(complete,)` → present once every record has an entry.
    complete: &'static str,
    /// The subspace of the records the log is of (for a backfill).
    records: &'static str,
}

/// The accounts' log.
pub(super) const ACCOUNT_LOG: ChangeLog = ChangeLog {
    entries: "log",
    at: "log_at",
    cursor: "replica_cursor",
    complete: "log_complete",
    records: "account",
};

/// The groups' log.
pub(super) const GROUP_LOG: ChangeLog = ChangeLog {
    entries: "group_log",
    at: "group_log_at",
    cursor: "group_replica_cursor",
    complete: "group_log_complete",
    records: "group",
};

/// Accounts changed after `after` (from the start with `None`), in commit order: at most
/// `limit` (and [`LAYER_READ_ENTRIES_MAX`]), each with its position and its record now; and
/// whether more follow.
pub async fn account_changes(
    transaction: &Transaction,
    after: Option<LogPosition>,
    limit: usize,
) -> Result<(Vec<(LogPosition, AccountRecord)>, bool), StoreError> {
    let directory = Directory::get();
    let (positions, more) = directory
        .changed_after(transaction, ACCOUNT_LOG, after, limit)
        .await?;
    let mut changes = Vec::with_capacity(positions.len());
    for position in positions {
        let account = AccountId(position.id);
        // An entry is written with its account's change: a missing record is damage.
        let record = read_account(transaction, directory, account)
            .await?
            .ok_or_else(|| {
                StoreError::corrupt("directory log", format!("account {account} has no record"))
            })?;
        changes.push((position, record));
    }
    Ok((changes, more))
}

/// A group's members at one version, as the writer's log gives it to replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatedGroup {
    /// The group.
    pub group: GroupId,
    /// Its version.
    pub version: u64,
    /// Its members, in id order.
    pub members: Vec<AccountId>,
}

/// Groups changed after `after` (from the start with `None`), in commit order: at most `limit`
/// (and [`LAYER_READ_ENTRIES_MAX`]) and, past the first, no more members in all than
/// `members_budget`; each with its position, version and members now; and whether more follow.
/// Each group is one bounded read of at most [`GROUP_MEMBERS_MAX`] members.
pub async fn group_changes(
    transaction: &Transaction,
    after: Option<LogPosition>,
    limit: usize,
    members_budget: usize,
) -> Result<(Vec<(LogPosition, ReplicatedGroup)>, bool), StoreError> {
    let directory = Directory::get();
    let (positions, mut more) = directory
        .changed_after(transaction, GROUP_LOG, after, limit)
        .await?;
    let mut changes = Vec::with_capacity(positions.len());
    let mut members_taken = 0usize;
    for position in positions {
        let group = GroupId(position.id);
        let members = super::members(transaction, group).await?;
        if !changes.is_empty() && members_taken + members.len() > members_budget {
            more = true;
            break;
        }
        members_taken += members.len();
        changes.push((
            position,
            ReplicatedGroup {
                group,
                version: super::group_version(transaction, group).await?,
                members,
            },
        ));
    }
    Ok((changes, more))
}

/// The writer's account log position this replica applied through; `None` before its first
/// page.
pub async fn replica_cursor(transaction: &Transaction) -> Result<Option<LogPosition>, StoreError> {
    Directory::get().cursor(transaction, ACCOUNT_LOG).await
}

/// Records that this replica applied the writer's account log through `position`.
pub fn set_replica_cursor(
    transaction: &Transaction,
    position: &LogPosition,
) -> Result<(), StoreError> {
    Directory::get().set_cursor(transaction, ACCOUNT_LOG, position)
}

/// The writer's group log position this replica applied through; `None` before its first page.
pub async fn group_replica_cursor(
    transaction: &Transaction,
) -> Result<Option<LogPosition>, StoreError> {
    Directory::get().cursor(transaction, GROUP_LOG).await
}

/// Records that this replica applied the writer's group log through `position`.
pub fn set_group_replica_cursor(
    transaction: &Transaction,
    position: &LogPosition,
) -> Result<(), StoreError> {
    Directory::get().set_cursor(transaction, GROUP_LOG, position)
}

/// (A replica) keeps `group` as the writer gave it, unless this copy holds the group at its
/// version or newer already (pages applied twice or out of order change nothing). Refuses a
/// group with more than [`GROUP_MEMBERS_MAX`] members.
pub async fn put_group_replica(
    transaction: &Transaction,
    group: &ReplicatedGroup,
) -> Result<(), StoreError> {
    if group.members.len() as u64 > GROUP_MEMBERS_MAX {
        return Err(StoreError::corrupt(
            "directory group replica",
            format!("group {} with {} members", group.group, group.members.len()),
        ));
    }
    if let Some(held) = group_replica(transaction, group.group).await?
        && held.version >= group.version
    {
        return Ok(());
    }
    let mut value = Vec::with_capacity(8 * (1 + group.members.len()));
    value.extend_from_slice(&group.version.to_le_bytes());
    for member in &group.members {
        value.extend_from_slice(&member.0.to_le_bytes());
    }
    transaction.set(&Directory::get().group_replica_key(group.group), &value)
}

/// (A replica) the copy of `group` this replica holds, `None` if it holds none.
pub async fn group_replica(
    transaction: &Transaction,
    group: GroupId,
) -> Result<Option<ReplicatedGroup>, StoreError> {
    let Some(value) = transaction
        .get(&Directory::get().group_replica_key(group))
        .await?
    else {
        return Ok(None);
    };
    let damaged = || StoreError::corrupt("directory group replica", "not a version and members");
    if value.len() < 8 || value.len() % 8 != 0 || (value.len() / 8 - 1) as u64 > GROUP_MEMBERS_MAX {
        return Err(damaged());
    }
    let mut words = value
        .chunks_exact(8)
        .map(|word| u64::from_le_bytes(word.try_into().unwrap_or_default()));
    let version = words.next().ok_or_else(damaged)?;
    Ok(Some(ReplicatedGroup {
        group,
        version,
        members: words.map(AccountId).collect(),
    }))
}

/// Gives log entries to up to `limit` accounts after `after` (by id) that have none (a store
/// written before the log); returns the last account looked at, `None` once every account was.
/// Run page by page, each in its own transaction, before the writer serves.
pub async fn backfill_log(
    transaction: &Transaction,
    after: AccountId,
    limit: usize,
) -> Result<Option<AccountId>, StoreError> {
    Ok(Directory::get()
        .backfill(transaction, ACCOUNT_LOG, after.0, limit)
        .await?
        .map(AccountId))
}

/// [`backfill_log`] for groups: entries for up to `limit` groups after `after` that have none.
pub async fn backfill_group_log(
    transaction: &Transaction,
    after: GroupId,
    limit: usize,
) -> Result<Option<GroupId>, StoreError> {
    Ok(Directory::get()
        .backfill(transaction, GROUP_LOG, after.0, limit)
        .await?
        .map(GroupId))
}

/// Whether every account of this copy has a log entry ([`set_log_complete`] ran).
pub async fn log_complete(transaction: &Transaction) -> Result<bool, StoreError> {
    Directory::get().complete(transaction, ACCOUNT_LOG).await
}

/// Records that every account has a log entry (after [`backfill_log`] went through them all);
/// later accounts get theirs with their creation.
pub fn set_log_complete(transaction: &Transaction) -> Result<(), StoreError> {
    Directory::get().set_complete(transaction, ACCOUNT_LOG)
}

/// Whether every group of this copy has a log entry ([`set_group_log_complete`] ran).
pub async fn group_log_complete(transaction: &Transaction) -> Result<bool, StoreError> {
    Directory::get().complete(transaction, GROUP_LOG).await
}

/// Records that every group has a log entry (after [`backfill_group_log`]).
pub fn set_group_log_complete(transaction: &Transaction) -> Result<(), StoreError> {
    Directory::get().set_complete(transaction, GROUP_LOG)
}

impl Directory {
    fn entries(&self, log: ChangeLog) -> Subspace {
        self.root.subspace(&(log.entries,))
    }

    fn at_key(&self, log: ChangeLog, id: u64) -> Vec<u8> {
        self.root.pack(&(log.at, id))
    }

    fn group_replica_key(&self, group: GroupId) -> Vec<u8> {
        self.root.pack(&("group_replica", group))
    }

    async fn cursor(
        &self,
        transaction: &Transaction,
        log: ChangeLog,
    ) -> Result<Option<LogPosition>, StoreError> {
        match transaction.get(&self.root.pack(&(log.cursor,))).await? {
            None => Ok(None),
            Some(bytes) => LogPosition::from_bytes(&bytes).map(Some).ok_or_else(|| {
                StoreError::corrupt("directory replica cursor", "not a log position")
            }),
        }
    }

    fn set_cursor(
        &self,
        transaction: &Transaction,
        log: ChangeLog,
        position: &LogPosition,
    ) -> Result<(), StoreError> {
        transaction.set(&self.root.pack(&(log.cursor,)), &position.to_bytes())
    }

    async fn complete(
        &self,
        transaction: &Transaction,
        log: ChangeLog,
    ) -> Result<bool, StoreError> {
        Ok(transaction
            .get(&self.root.pack(&(log.complete,)))
            .await?
            .is_some())
    }

    fn set_complete(&self, transaction: &Transaction, log: ChangeLog) -> Result<(), StoreError> {
        transaction.set(&self.root.pack(&(log.complete,)), b"")
    }

    /// The positions of `log` after `after`, at most `limit`, and whether more follow.
    async fn changed_after(
        &self,
        transaction: &Transaction,
        log: ChangeLog,
        after: Option<LogPosition>,
        limit: usize,
    ) -> Result<(Vec<LogPosition>, bool), StoreError> {
        let entries = self.entries(log);
        let (start, end) = entries.range();
        let begin = match after {
            Some(position) => {
                let mut key = entries.pack(&(
                    TupleVersionstamp {
                        stamp: position.stamp,
                        user_version: 0,
                    },
                    position.id,
                ));
                key.push(0);
                key
            }
            None => start,
        };
        let wanted = limit.clamp(1, LAYER_READ_ENTRIES_MAX);
        let read = transaction
            .get_range(&begin, &end, RangeOptions::limit(wanted + 1))
            .await?;
        let more = read.len() > wanted;
        let mut positions = Vec::with_capacity(read.len().min(wanted));
        for (key, _) in read.into_iter().take(wanted) {
            let (stamp, id): (TupleVersionstamp, u64) =
                decode_key(&entries, &key, "directory log key")?;
            positions.push(LogPosition {
                stamp: stamp.stamp,
                id,
            });
        }
        Ok((positions, more))
    }

    /// Entries for up to `limit` records after `after` that have none; the last id looked at.
    async fn backfill(
        &self,
        transaction: &Transaction,
        log: ChangeLog,
        after: u64,
        limit: usize,
    ) -> Result<Option<u64>, StoreError> {
        let records = self.root.subspace(&(log.records,));
        let (_, end) = records.range();
        let mut begin = records.pack(&(after,));
        begin.push(0);
        let wanted = limit.clamp(1, LAYER_READ_ENTRIES_MAX);
        let read = transaction
            .get_range(&begin, &end, RangeOptions::limit(wanted))
            .await?;
        let mut last = None;
        for (key, _) in &read {
            let (id,): (u64,) = decode_key(&records, key, "directory record key")?;
            if transaction.get(&self.at_key(log, id)).await?.is_none() {
                self.log_change(transaction, log, id).await?;
            }
            last = Some(id);
        }
        Ok(if read.len() < wanted { None } else { last })
    }

    /// Moves the entry of `id` in `log` to this transaction's versionstamp.
    pub(super) async fn log_change(
        &self,
        transaction: &Transaction,
        log: ChangeLog,
        id: u64,
    ) -> Result<(), StoreError> {
        let entries = self.entries(log);
        let at = self.at_key(log, id);
        match transaction.get(&at).await {
            Ok(Some(stamp)) => {
                let stamp = Versionstamp::read_at(&stamp, 0)
                    .ok_or_else(|| StoreError::corrupt("directory log_at", "not a versionstamp"))?;
                transaction.clear(&entries.pack(&(
                    TupleVersionstamp {
                        stamp,
                        user_version: 0,
                    },
                    id,
                )));
            }
            Ok(None) => {}
            // Logged already in this transaction: the same entry is written again.
            Err(StoreError::AccessedUnreadable) => {}
            Err(error) => return Err(error),
        }
        let mut key = entries.bytes().to_vec();
        let offset = u32::try_from(TupleVersionstamp::stamp_offset(key.len()))
            .map_err(|_| StoreError::corrupt("directory log key", "prefix longer than 4 GB"))?;
        key.extend_from_slice(&pack(&(TupleVersionstamp::incomplete(0), id)));
        transaction.set_versionstamped_key(&key, offset, b"")?;
        // The value's first 10 bytes become the versionstamp.
        transaction.set_versionstamped_value(&at, &[0u8; VERSIONSTAMP_BYTES], 0)
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::{AccountId, RegionId};

    use crate::directory::*;
    use crate::test_support::{idempotency_key, temporary_database};

    fn names(changes: &[(LogPosition, AccountRecord)]) -> Vec<&str> {
        changes
            .iter()
            .map(|(_, record)| record.name.as_str())
            .collect()
    }

    #[tokio::test]
    async fn a_replica_gets_every_account_then_each_change_once_in_commit_order() {
        let (_folder, database) = temporary_database(None);
        for (index, name) in ["ann", "bob", "cat"].into_iter().enumerate() {
            database
                .transact(|tx| async move {
                    let created =
                        create_account(&tx, name, RegionId(1), &idempotency_key(index as u64))
                            .await?;
                    let Ok(created) = created else {
                        return Ok(());
                    };
                    // A second change of the same account in the transaction: one entry.
                    let added = add_first_device(
                        &tx,
                        created.id,
                        &[1; 32],
                        &[2; 32],
                        &idempotency_key(100 + index as u64),
                    )
                    .await?;
                    assert!(added.is_ok());
                    Ok(())
                })
                .await
                .expect("created");
        }
        let changes = |after: Option<LogPosition>, limit: usize| {
            let database = database.clone();
            async move {
                database
                    .transact(|tx| async move { account_changes(&tx, after, limit).await })
                    .await
                    .expect("read")
            }
        };
        let (first, more) = changes(None, 2).await;
        assert_eq!(names(&first), ["ann", "bob"]);
        assert!(more);
        let (rest, more) = changes(Some(first[1].0), 10).await;
        assert_eq!(names(&rest), ["cat"]);
        assert!(!more);
        let through = rest[0].0;
        assert_eq!(
            LogPosition::from_bytes(&through.to_bytes()),
            Some(through),
            "a position travels as bytes"
        );
        assert_eq!(LogPosition::from_bytes(b"garbage"), None);

        // bob moves: after the position read, only bob, now in region 2.
        database
            .transact(|tx| async move { move_home(&tx, AccountId(2), RegionId(2), 1).await })
            .await
            .expect("moved");
        let (moved, _) = changes(Some(through), 10).await;
        assert_eq!(names(&moved), ["bob"]);
        assert_eq!(moved[0].1.home_region, RegionId(2));
        // From the start: each account once, bob last.
        let (all, _) = changes(None, 10).await;
        assert_eq!(names(&all), ["ann", "cat", "bob"]);

        // A replica applies what it read and keeps its position.
        let (_replica_folder, replica) = temporary_database(None);
        let cursor = replica
            .transact(|tx| {
                let all = all.clone();
                async move {
                    for (_, record) in &all {
                        put_account(&tx, record).await?;
                    }
                    set_replica_cursor(&tx, &all[2].0)?;
                    replica_cursor(&tx).await
                }
            })
            .await
            .expect("applied");
        assert_eq!(cursor, Some(all[2].0));
        let bob = replica
            .transact(|tx| async move { account_by_name(&tx, "bob").await })
            .await
            .expect("read")
            .expect("bob is in the replica");
        assert_eq!((bob.home_region, bob.epoch), (RegionId(2), 2));
    }

    #[tokio::test]
    async fn accounts_of_a_store_written_before_the_log_are_backfilled() {
        let (_folder, database) = temporary_database(None);
        for (index, name) in ["ann", "bob", "cat"].into_iter().enumerate() {
            database
                .transact(|tx| async move {
                    create_account(&tx, name, RegionId(1), &idempotency_key(index as u64)).await
                })
                .await
                .expect("created")
                .expect("name free");
        }
        // As a store written before the log: no entries.
        database
            .transact(|tx| async move {
                let root = crate::tuple::Subspace::new(&("directory",));
                for kind in ["log", "log_at"] {
                    let (begin, end) = root.subspace(&(kind,)).range();
                    tx.clear_range(&begin, &end);
                }
                Ok(())
            })
            .await
            .expect("cleared");
        let read_all = || {
            let database = database.clone();
            async move {
                database
                    .transact(|tx| async move { account_changes(&tx, None, 10).await })
                    .await
                    .expect("read")
                    .0
            }
        };
        assert!(read_all().await.is_empty());
        let mut after = AccountId(0);
        loop {
            let page = database
                .transact(|tx| async move { backfill_log(&tx, after, 2).await })
                .await
                .expect("backfilled");
            match page {
                Some(last) => after = last,
                None => break,
            }
        }
        assert_eq!(names(&read_all().await), ["ann", "bob", "cat"]);
        let complete = database
            .transact(|tx| async move {
                let before = log_complete(&tx).await?;
                set_log_complete(&tx)?;
                Ok((before, log_complete(&tx).await?))
            })
            .await
            .expect("marked");
        assert_eq!(complete, (false, true));
        // Once is enough: a second pass adds nothing and moves nothing.
        let before = read_all().await;
        database
            .transact(|tx| async move { backfill_log(&tx, AccountId(0), 10).await })
            .await
            .expect("backfilled");
        assert_eq!(read_all().await, before);
    }

    /// Reads a page of the group log.
    async fn groups_after(
        database: &crate::Database,
        after: Option<LogPosition>,
    ) -> Vec<(LogPosition, ReplicatedGroup)> {
        database
            .transact(|tx| async move { group_changes(&tx, after, 10, 1_000).await })
            .await
            .expect("read")
            .0
    }

    #[tokio::test]
    async fn a_replica_gets_each_group_at_its_latest_version_and_keeps_only_newer_ones() {
        let (_folder, database) = temporary_database(None);
        let group = database
            .transact(|tx| async move {
                let new = NewGroup {
                    owner: AccountId(1),
                    name: "climbers",
                    home_region: RegionId(1),
                    members: &[AccountId(2)],
                    request_id: [7; GROUP_REQUEST_ID_BYTES],
                };
                create_group(&tx, &new, &idempotency_key(1)).await
            })
            .await
            .expect("created")
            .expect("not too many");
        let created = groups_after(&database, None).await;
        assert_eq!(created.len(), 1, "one entry per group: {created:?}");
        let first = created[0].1.clone();
        assert_eq!(first.members, [AccountId(1), AccountId(2)]);

        // A member added, then removed: after the position read, the group once, as it is now.
        database
            .transact(|tx| async move {
                add_member(&tx, group, AccountId(3), &idempotency_key(2)).await?;
                remove_member(&tx, group, AccountId(2), &idempotency_key(3)).await
            })
            .await
            .expect("changed");
        let changed = groups_after(&database, Some(created[0].0)).await;
        assert_eq!(changed.len(), 1);
        let now = changed[0].1.clone();
        assert_eq!(now.members, [AccountId(1), AccountId(3)]);
        assert!(now.version > first.version);
        assert!(groups_after(&database, Some(changed[0].0)).await.is_empty());

        // The replica keeps the newest version it was given, whatever the order of the pages.
        let (_replica_folder, replica) = temporary_database(None);
        let held = replica
            .transact(|tx| {
                let (now, first) = (now.clone(), first.clone());
                let position = changed[0].0;
                async move {
                    put_group_replica(&tx, &now).await?;
                    put_group_replica(&tx, &first).await?;
                    set_group_replica_cursor(&tx, &position)?;
                    Ok((
                        group_replica(&tx, group).await?,
                        group_replica_cursor(&tx).await?,
                        group_replica(&tx, GroupId(99)).await?,
                    ))
                }
            })
            .await
            .expect("applied");
        assert_eq!(held, (Some(now), Some(changed[0].0), None));
    }

    #[tokio::test]
    async fn a_damaged_group_replica_is_refused_and_groups_are_backfilled() {
        let (_folder, database) = temporary_database(None);
        for (index, owner) in [1u64, 2].into_iter().enumerate() {
            database
                .transact(|tx| async move {
                    let new = NewGroup {
                        owner: AccountId(owner),
                        name: "g",
                        home_region: RegionId(1),
                        members: &[],
                        request_id: [index as u8; GROUP_REQUEST_ID_BYTES],
                    };
                    create_group(&tx, &new, &idempotency_key(index as u64)).await
                })
                .await
                .expect("created")
                .expect("not too many");
        }
        // As a store written before the group log.
        database
            .transact(|tx| async move {
                let root = crate::tuple::Subspace::new(&("directory",));
                for kind in ["group_log", "group_log_at"] {
                    let (begin, end) = root.subspace(&(kind,)).range();
                    tx.clear_range(&begin, &end);
                }
                // And a replica value that is not a version and members.
                tx.set(&root.pack(&("group_replica", GroupId(5))), b"short")?;
                Ok(())
            })
            .await
            .expect("cleared");
        assert!(groups_after(&database, None).await.is_empty());
        let mut after = GroupId(0);
        while let Some(last) = database
            .transact(|tx| async move { backfill_group_log(&tx, after, 1).await })
            .await
            .expect("backfilled")
        {
            after = last;
        }
        let groups: Vec<GroupId> = groups_after(&database, None)
            .await
            .into_iter()
            .map(|(_, group)| group.group)
            .collect();
        assert_eq!(groups, [GroupId(1), GroupId(2)]);
        // A page holds one group at least, then no more members than its budget.
        let (page, more) = database
            .transact(|tx| async move { group_changes(&tx, None, 10, 0).await })
            .await
            .expect("read");
        assert_eq!((page.len(), more), (1, true));
        let (page, more) = database
            .transact(|tx| async move { group_changes(&tx, None, 10, 2).await })
            .await
            .expect("read");
        assert_eq!((page.len(), more), (2, false));
        let damaged = database
            .transact(|tx| async move { group_replica(&tx, GroupId(5)).await })
            .await;
        assert!(
            matches!(damaged, Err(crate::StoreError::Corrupt { .. })),
            "{damaged:?}"
        );
    }
}
