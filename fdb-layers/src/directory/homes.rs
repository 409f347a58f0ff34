//! Home regions: the epoch compare-and-set that moves an account's or a group's home, and the
//! number of accounts homed in each region.
//!
//! **Key layout** (under `("directory",)`): `("homed", region)` → the number of accounts whose
//! home is `region` in this copy (8 bytes LE, atomic add): the directory writer's answer to "do
//! accounts live in region k?". The home region and epoch themselves live in the account and
//! group records ([`super::accounts`], [`super::groups`]).
//!
//! **Moves.** A move names the epoch it expects: it applies only at that epoch, bumping it, so a
//! returning old primary (or a second operator) acting on what it saw before is refused with the
//! current record ([`HomeMove::StaleEpoch`]). [`move_home`] and [`move_group_home`] are the one
//! compare-and-set ([`Homed`] says what differs between the two), and recognise their own
//! earlier success: a retry after `CommitUnknownResult` finds the epoch one past the expected
//! one with the home already where it was asked to be, and answers [`HomeMove::Moved`] again.
//!
//! **Conflicts.** A move reads the record, so two moves of one record conflict and the second
//! sees the first's epoch. The home counts are only changed with atomic adds: they conflict
//! with no writer.
//!
//! **Evolution.** Copies written before the home counts existed have none: [`count_homes`]
//! tallies the accounts page by page and [`set_accounts_homed`] stores the result, once, before
//! the copy serves.

use relay_proto::{AccountId, RegionId};

use super::Directory;
use super::accounts::{AccountRecord, StoredAccount, read_account, write_account};
use super::groups::{GroupId, GroupRecord, read_group, write_group};
use crate::codec::{decode_key, decode_record, encode_u64};
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::limits::LAYER_READ_ENTRIES_MAX;

/// What [`move_home`] or [`move_group_home`] did to a record `R`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeMove<R> {
    /// The home is now the one asked for, at the next epoch (moved now, or by an earlier
    /// attempt of the same move).
    Moved(R),
    /// Refused: the epoch is not the expected one; `current` is the stored record.
    StaleEpoch {
        /// The stored record.
        current: R,
    },
    /// No account or group has this id.
    Unknown,
}

/// Moves the home of `account` to `to_region` and bumps its epoch, if its epoch is still
/// `expected_epoch` (see the module doc).
pub async fn move_home(
    transaction: &Transaction,
    account: AccountId,
    to_region: RegionId,
    expected_epoch: u64,
) -> Result<HomeMove<AccountRecord>, StoreError> {
    compare_and_move(transaction, account, to_region, expected_epoch).await
}

/// Moves the home of `group` to `to_region` and bumps its epoch, if its epoch is still
/// `expected_epoch` (see the module doc).
pub async fn move_group_home(
    transaction: &Transaction,
    group: GroupId,
    to_region: RegionId,
    expected_epoch: u64,
) -> Result<HomeMove<GroupRecord>, StoreError> {
    compare_and_move(transaction, group, to_region, expected_epoch).await
}

/// The number of accounts whose home is `region` in this copy of the directory (at the
/// directory writer: every account homed there).
pub async fn accounts_homed(
    transaction: &Transaction,
    region: RegionId,
) -> Result<u64, StoreError> {
    let directory = Directory::get();
    crate::codec::read_count(
        transaction,
        &directory.homed_key(region),
        false,
        "accounts homed",
    )
    .await
}

/// Tallies the homes of up to `limit` accounts after `after` (from the first with `None`), in id
/// order (at most [`LAYER_READ_ENTRIES_MAX`]): adds one to `tally` per account and region, and
/// returns the last account read (`None` when there were no more).
pub async fn count_homes(
    transaction: &Transaction,
    after: Option<AccountId>,
    limit: usize,
    tally: &mut std::collections::BTreeMap<RegionId, u64>,
) -> Result<Option<AccountId>, StoreError> {
    let directory = Directory::get();
    let accounts = directory.root.subspace(&("account",));
    let (first, end) = accounts.range();
    let begin = match after {
        Some(account) => accounts.subspace(&(account,)).range().1,
        None => first,
    };
    let limit = limit.clamp(1, LAYER_READ_ENTRIES_MAX);
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::limit(limit))
        .await?;
    let mut last = None;
    for (key, value) in &rows {
        let (id,): (AccountId,) = decode_key(&accounts, key, "account key")?;
        let stored: StoredAccount = decode_record(value, "account record")?;
        *tally.entry(RegionId(stored.home_region)).or_default() += 1;
        last = Some(id);
    }
    Ok(last)
}

/// Sets the number of accounts homed in `region` (after a [`count_homes`] tally, for a copy
/// written before the counts existed).
pub fn set_accounts_homed(
    transaction: &Transaction,
    region: RegionId,
    accounts: u64,
) -> Result<(), StoreError> {
    transaction.set(&Directory::get().homed_key(region), &encode_u64(accounts))
}

/// A directory record with a home region fenced by an epoch: what a home move needs of it.
pub(super) trait Homed: Clone + Send + Sync {
    /// The record's id.
    type Id: Copy + Send + Sync;
    /// Its home region.
    fn home_region(&self) -> RegionId;
    /// Its epoch.
    fn epoch(&self) -> u64;
    /// The same record, homed in `region` at `epoch`.
    fn homed_at(&self, region: RegionId, epoch: u64) -> Self;
    /// Reads the record.
    async fn read(
        transaction: &Transaction,
        directory: &Directory,
        id: Self::Id,
    ) -> Result<Option<Self>, StoreError>;
    /// Writes the record moved from `from`, with what else changes when its home moves (its
    /// version, the home counts).
    async fn write_moved(
        &self,
        transaction: &Transaction,
        directory: &Directory,
        from: &Self,
    ) -> Result<(), StoreError>;
}

impl Homed for AccountRecord {
    type Id = AccountId;

    fn home_region(&self) -> RegionId {
        self.home_region
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn homed_at(&self, region: RegionId, epoch: u64) -> Self {
        AccountRecord {
            home_region: region,
            epoch,
            ..self.clone()
        }
    }

    async fn read(
        transaction: &Transaction,
        directory: &Directory,
        id: AccountId,
    ) -> Result<Option<Self>, StoreError> {
        read_account(transaction, directory, id).await
    }

    async fn write_moved(
        &self,
        transaction: &Transaction,
        directory: &Directory,
        from: &Self,
    ) -> Result<(), StoreError> {
        write_account(transaction, directory, self)?;
        directory.home_moved(transaction, Some(from.home_region), Some(self.home_region))?;
        directory.account_changed(transaction, self.id).await?;
        Ok(())
    }
}

impl Homed for GroupRecord {
    type Id = GroupId;

    fn home_region(&self) -> RegionId {
        self.home_region
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn homed_at(&self, region: RegionId, epoch: u64) -> Self {
        GroupRecord {
            home_region: region,
            epoch,
            ..self.clone()
        }
    }

    async fn read(
        transaction: &Transaction,
        directory: &Directory,
        id: GroupId,
    ) -> Result<Option<Self>, StoreError> {
        read_group(transaction, directory, id).await
    }

    async fn write_moved(
        &self,
        transaction: &Transaction,
        directory: &Directory,
        _from: &Self,
    ) -> Result<(), StoreError> {
        write_group(transaction, directory, self)?;
        directory.group_changed(transaction, self.id).await?;
        Ok(())
    }
}

/// The epoch compare-and-set of a home move, for accounts and groups alike.
async fn compare_and_move<R: Homed>(
    transaction: &Transaction,
    id: R::Id,
    to_region: RegionId,
    expected_epoch: u64,
) -> Result<HomeMove<R>, StoreError> {
    let directory = Directory::get();
    let Some(current) = R::read(transaction, directory, id).await? else {
        return Ok(HomeMove::Unknown);
    };
    if current.epoch() == expected_epoch.saturating_add(1) && current.home_region() == to_region {
        return Ok(HomeMove::Moved(current));
    }
    if current.epoch() != expected_epoch {
        return Ok(HomeMove::StaleEpoch { current });
    }
    let moved = current.homed_at(to_region, current.epoch() + 1);
    moved.write_moved(transaction, directory, &current).await?;
    Ok(HomeMove::Moved(moved))
}

impl Directory {
    fn homed_key(&self, region: RegionId) -> Vec<u8> {
        self.root.pack(&("homed", region))
    }

    /// Moves one account's count from the home `from` to the home `to` (`None`: no home, for
    /// a new account); nothing when they are the same.
    pub(super) fn home_moved(
        &self,
        transaction: &Transaction,
        from: Option<RegionId>,
        to: Option<RegionId>,
    ) -> Result<(), StoreError> {
        if from == to {
            return Ok(());
        }
        if let Some(from) = from {
            transaction.atomic_add(&self.homed_key(from), -1)?;
        }
        if let Some(to) = to {
            transaction.atomic_add(&self.homed_key(to), 1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::{AccountId, RegionId};

    use crate::directory::*;
    use crate::test_support::{idempotency_key, temporary_database};

    #[tokio::test]
    async fn accounts_are_counted_by_home_region() {
        let (_folder, database) = temporary_database(None);
        let homed = async || {
            database
                .transact(|tx| async move {
                    Ok([
                        accounts_homed(&tx, RegionId(1)).await?,
                        accounts_homed(&tx, RegionId(2)).await?,
                    ])
                })
                .await
                .expect("counts")
        };
        for (index, (name, home)) in [("a", 1), ("b", 2), ("c", 2)].into_iter().enumerate() {
            database
                .transact(|tx| async move {
                    create_account(&tx, name, RegionId(home), &idempotency_key(index as u64)).await
                })
                .await
                .expect("transaction")
                .expect("name free");
        }
        // A retried creation counts once.
        database
            .transact(|tx| async move {
                create_account(&tx, "a", RegionId(1), &idempotency_key(0)).await
            })
            .await
            .expect("transaction")
            .expect("the first result");
        assert_eq!(homed().await, [1, 2]);

        let moved = database
            .transact(
                |tx| async move { move_home(&tx, AccountId(2), RegionId(1), FIRST_EPOCH).await },
            )
            .await
            .expect("move");
        assert!(matches!(moved, HomeMove::Moved(_)));
        assert_eq!(homed().await, [2, 1]);

        // A replica's copy follows the records it is given.
        let record = AccountRecord {
            id: AccountId(9),
            name: "z".into(),
            home_region: RegionId(2),
            epoch: 1,
        };
        let moved_record = AccountRecord {
            home_region: RegionId(1),
            epoch: 2,
            ..record.clone()
        };
        database
            .transact(|tx| {
                let (record, moved_record) = (record.clone(), moved_record.clone());
                async move {
                    put_account(&tx, &record).await?;
                    put_account(&tx, &record).await?;
                    put_account(&tx, &moved_record).await
                }
            })
            .await
            .expect("put");
        assert_eq!(homed().await, [3, 1]);

        // The tally of the records agrees with the counters, page by page.
        let mut tally = std::collections::BTreeMap::new();
        let mut after = None;
        loop {
            let last = database
                .transact(|tx| {
                    let mut page = std::collections::BTreeMap::new();
                    async move {
                        let last = count_homes(&tx, after, 2, &mut page).await?;
                        Ok((last, page))
                    }
                })
                .await
                .expect("tally");
            for (region, count) in last.1 {
                *tally.entry(region).or_default() += count;
            }
            match last.0 {
                Some(account) => after = Some(account),
                None => break,
            }
        }
        assert_eq!(
            tally,
            std::collections::BTreeMap::from([(RegionId(1), 3), (RegionId(2), 1)])
        );
        database
            .transact(|tx| async move { set_accounts_homed(&tx, RegionId(2), 5) })
            .await
            .expect("set");
        assert_eq!(homed().await, [3, 5]);
    }

    #[tokio::test]
    async fn a_home_moves_once_per_epoch() {
        let (_folder, database) = temporary_database(None);
        let alice = database
            .transact(|tx| async move {
                create_account(&tx, "alice", RegionId(1), &idempotency_key(1)).await
            })
            .await
            .expect("transaction")
            .expect("name free");
        let move_to = |region: u32, expected_epoch: u64| {
            let database = database.clone();
            async move {
                database
                    .transact(|tx| async move {
                        move_home(&tx, alice.id, RegionId(region), expected_epoch).await
                    })
                    .await
                    .expect("move")
            }
        };
        let moved = AccountRecord {
            home_region: RegionId(2),
            epoch: 2,
            ..alice.clone()
        };
        assert_eq!(move_to(2, 1).await, HomeMove::Moved(moved.clone()));
        assert_eq!(
            move_to(2, 1).await,
            HomeMove::Moved(moved.clone()),
            "a retry"
        );
        assert_eq!(
            move_to(3, 1).await,
            HomeMove::StaleEpoch {
                current: moved.clone()
            }
        );
        let unknown = database
            .transact(|tx| async move { move_home(&tx, AccountId(9), RegionId(2), 1).await })
            .await
            .expect("move");
        assert_eq!(unknown, HomeMove::Unknown);
        let version = database
            .transact(|tx| async move { account_version(&tx, alice.id).await })
            .await
            .expect("version");
        assert_eq!(version, 2, "created, then moved once");
    }
}
