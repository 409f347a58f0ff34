//! The change log: how replicas of the directory follow the writer.
//!
//! **Key layout** (under `("directory",)`):
//! - `("log", stamp, account)` → nothing: the account's last change, at the versionstamp of the
//!   transaction that made it (`SET_VERSIONSTAMPED_KEY`);
//! - `("log_at", account)` → the 10-byte versionstamp of that entry (`SET_VERSIONSTAMPED_VALUE`);
//! - `("replica_cursor",)` → the writer's [`LogPosition`] this copy applied through (replicas);
//! - `("log_complete",)` → present once every account has an entry (see "Evolution").
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
//! [`set_log_complete`] records that it need not run again; groups next, then the edges'
//! caches could follow the same log.

use relay_proto::AccountId;

use super::Directory;
use super::accounts::{AccountRecord, read_account};
use crate::codec::decode_key;
use crate::engine::{RangeOptions, Transaction, Versionstamp};
use crate::error::StoreError;
use crate::limits::{LAYER_READ_ENTRIES_MAX, VERSIONSTAMP_BYTES};
use crate::tuple::{Subspace, TupleVersionstamp, pack};

/// A position in the writer's change log: after the change of `account` at `stamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPosition {
    /// The versionstamp of the change's transaction.
    pub stamp: Versionstamp,
    /// The account changed.
    pub account: AccountId,
}

impl LogPosition {
    /// Bytes of [`Self::to_bytes`].
    pub const BYTES: usize = VERSIONSTAMP_BYTES + 8;

    /// The position as a replica keeps and sends it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.stamp.as_bytes().to_vec();
        bytes.extend_from_slice(&self.account.0.to_be_bytes());
        bytes
    }

    /// A position from [`Self::to_bytes`]; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::BYTES {
            return None;
        }
        let stamp = Versionstamp::read_at(bytes, 0)?;
        let account = u64::from_be_bytes(bytes[VERSIONSTAMP_BYTES..].try_into().ok()?);
        Some(LogPosition {
            stamp,
            account: AccountId(account),
        })
    }
}

/// Accounts changed after `after` (from the start with `None`), in commit order: at most
/// `limit` (and [`LAYER_READ_ENTRIES_MAX`]), each with its position and its record now; and
/// whether more follow.
pub async fn account_changes(
    transaction: &Transaction,
    after: Option<LogPosition>,
    limit: usize,
) -> Result<(Vec<(LogPosition, AccountRecord)>, bool), StoreError> {
    let directory = Directory::new();
    let log = directory.log();
    let (start, end) = log.range();
    let begin = match after {
        Some(position) => {
            let mut key = log.pack(&(
                TupleVersionstamp {
                    stamp: position.stamp,
                    user_version: 0,
                },
                position.account,
            ));
            key.push(0);
            key
        }
        None => start,
    };
    let wanted = limit.clamp(1, LAYER_READ_ENTRIES_MAX);
    let entries = transaction
        .get_range(&begin, &end, RangeOptions::limit(wanted + 1))
        .await?;
    let more = entries.len() > wanted;
    let mut changes = Vec::with_capacity(entries.len().min(wanted));
    for (key, _) in entries.into_iter().take(wanted) {
        let (stamp, account): (TupleVersionstamp, AccountId) =
            decode_key(&log, &key, "directory log key")?;
        let position = LogPosition {
            stamp: stamp.stamp,
            account,
        };
        // An entry is written with its account's change: a missing record is damage.
        let record = read_account(transaction, &directory, account)
            .await?
            .ok_or_else(|| {
                StoreError::corrupt("directory log", format!("account {account} has no record"))
            })?;
        changes.push((position, record));
    }
    Ok((changes, more))
}

/// The writer's log position this replica applied through; `None` before its first page.
pub async fn replica_cursor(transaction: &Transaction) -> Result<Option<LogPosition>, StoreError> {
    let directory = Directory::new();
    match transaction.get(&directory.replica_cursor_key()).await? {
        None => Ok(None),
        Some(bytes) => LogPosition::from_bytes(&bytes)
            .map(Some)
            .ok_or_else(|| StoreError::corrupt("directory replica cursor", "not a log position")),
    }
}

/// Records that this replica applied the writer's log through `position`.
pub fn set_replica_cursor(
    transaction: &Transaction,
    position: &LogPosition,
) -> Result<(), StoreError> {
    transaction.set(&Directory::new().replica_cursor_key(), &position.to_bytes())
}

/// Gives log entries to up to `limit` accounts after `after` (by id) that have none (a store
/// written before the log); returns the last account looked at, `None` once every account was.
/// Run page by page, each in its own transaction, before the writer serves.
pub async fn backfill_log(
    transaction: &Transaction,
    after: AccountId,
    limit: usize,
) -> Result<Option<AccountId>, StoreError> {
    let directory = Directory::new();
    let accounts = directory.root.subspace(&("account",));
    let (_, end) = accounts.range();
    let mut begin = accounts.pack(&(after,));
    begin.push(0);
    let wanted = limit.clamp(1, LAYER_READ_ENTRIES_MAX);
    let records = transaction
        .get_range(&begin, &end, RangeOptions::limit(wanted))
        .await?;
    let mut last = None;
    for (key, _) in &records {
        let (account,): (AccountId,) = decode_key(&accounts, key, "account key")?;
        if transaction
            .get(&directory.log_at_key(account))
            .await?
            .is_none()
        {
            directory.log_change(transaction, account).await?;
        }
        last = Some(account);
    }
    Ok(if records.len() < wanted { None } else { last })
}

/// Whether every account of this copy has a log entry ([`set_log_complete`] ran).
pub async fn log_complete(transaction: &Transaction) -> Result<bool, StoreError> {
    Ok(transaction
        .get(&Directory::new().root.pack(&("log_complete",)))
        .await?
        .is_some())
}

/// Records that every account has a log entry (after [`backfill_log`] went through them all);
/// later accounts get theirs with their creation.
pub fn set_log_complete(transaction: &Transaction) -> Result<(), StoreError> {
    transaction.set(&Directory::new().root.pack(&("log_complete",)), b"")
}

impl Directory {
    fn log(&self) -> Subspace {
        self.root.subspace(&("log",))
    }

    fn log_at_key(&self, account: AccountId) -> Vec<u8> {
        self.root.pack(&("log_at", account))
    }

    fn replica_cursor_key(&self) -> Vec<u8> {
        self.root.pack(&("replica_cursor",))
    }

    /// Moves `account`'s log entry to this transaction's versionstamp.
    pub(super) async fn log_change(
        &self,
        transaction: &Transaction,
        account: AccountId,
    ) -> Result<(), StoreError> {
        let log = self.log();
        let at = self.log_at_key(account);
        match transaction.get(&at).await {
            Ok(Some(stamp)) => {
                let stamp = Versionstamp::read_at(&stamp, 0)
                    .ok_or_else(|| StoreError::corrupt("directory log_at", "not a versionstamp"))?;
                transaction.clear(&log.pack(&(
                    TupleVersionstamp {
                        stamp,
                        user_version: 0,
                    },
                    account,
                )));
            }
            Ok(None) => {}
            // Logged already in this transaction: the same entry is written again.
            Err(StoreError::AccessedUnreadable) => {}
            Err(error) => return Err(error),
        }
        let mut key = log.bytes().to_vec();
        let offset = u32::try_from(TupleVersionstamp::stamp_offset(key.len()))
            .map_err(|_| StoreError::corrupt("directory log key", "prefix longer than 4 GB"))?;
        key.extend_from_slice(&pack(&(TupleVersionstamp::incomplete(0), account)));
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
}
