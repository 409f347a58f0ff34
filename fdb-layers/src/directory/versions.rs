//! Versions: how a cache of the directory notices staleness.
//!
//! **Key layout** (under `("directory",)`):
//! - `("account_version", account)` → the account's version (8 bytes LE);
//! - `("group_version", group)` → the group's version (8 bytes LE);
//! - `("changes",)` → the directory change counter (8 bytes LE, atomic add).
//!
//! Every change of an account (created, a device added or removed, home region or epoch or name
//! changed) adds one to its version; every change of a group (created, a member added or
//! removed, a member's role, its name, home moved) adds one to the group's version; every change of either adds one to the
//! change counter. A cache keeps `(record, version)`; the change counter unchanged means nothing
//! changed anywhere, else one point read of [`account_version`] or [`group_version`] per cached
//! record says which records are stale. Versions are per copy of the directory (the writer and
//! each replica count their own changes), so a cache compares versions read from one copy.
//!
//! **Conflicts.** A record's version is read and written by every change of that record, so
//! changes of one record serialize on it; the change counter is only changed with atomic adds,
//! so it conflicts with no writer, and a reader of it conflicts only with the changes it wants to
//! see.
//!
//! **Evolution.** Replicas follow the writer through the change log ([`super::log`]); the
//! change counter could become the commit version of the last change, so that versions are
//! comparable across copies.

use relay_proto::AccountId;

use super::{Directory, GroupId};
use crate::codec::{increment, read_u64};
use crate::engine::Transaction;
use crate::error::StoreError;

/// The version of `account` in this copy of the directory: 0 for an account it does not know,
/// then one more for every change of the account or its devices.
pub async fn account_version(
    transaction: &Transaction,
    account: AccountId,
) -> Result<u64, StoreError> {
    let directory = Directory::get();
    read_u64(
        transaction,
        &directory.account_version_key(account),
        "account version",
    )
    .await
}

/// The number of changes this copy of the directory has applied (accounts, devices, groups).
pub async fn change_count(transaction: &Transaction) -> Result<u64, StoreError> {
    let directory = Directory::get();
    crate::codec::read_count(
        transaction,
        &directory.changes_key(),
        false,
        "directory change counter",
    )
    .await
}

/// The version of `group` in this copy of the directory: 0 for a group it does not know, then
/// one more for every change of the group or its members.
pub async fn group_version(transaction: &Transaction, group: GroupId) -> Result<u64, StoreError> {
    let directory = Directory::get();
    read_u64(
        transaction,
        &directory.group_version_key(group),
        "group version",
    )
    .await
}

impl Directory {
    fn account_version_key(&self, account: AccountId) -> Vec<u8> {
        self.root.pack(&("account_version", account))
    }

    fn group_version_key(&self, group: GroupId) -> Vec<u8> {
        self.root.pack(&("group_version", group))
    }

    fn changes_key(&self) -> Vec<u8> {
        self.root.pack(&("changes",))
    }

    /// Bumps the version of `account` and the change counter, and moves its entry in the change
    /// log ([`super::log`]); returns the new version.
    pub(super) async fn account_changed(
        &self,
        transaction: &Transaction,
        account: AccountId,
    ) -> Result<u64, StoreError> {
        transaction.atomic_add(&self.changes_key(), 1)?;
        self.log_change(transaction, super::log::ACCOUNT_LOG, account.0)
            .await?;
        increment(
            transaction,
            &self.account_version_key(account),
            "account version",
        )
        .await
    }

    /// Bumps the version of `group` and the change counter, and moves its entry in the group
    /// log ([`super::log`]); returns the new version.
    pub(super) async fn group_changed(
        &self,
        transaction: &Transaction,
        group: GroupId,
    ) -> Result<u64, StoreError> {
        transaction.atomic_add(&self.changes_key(), 1)?;
        self.log_change(transaction, super::log::GROUP_LOG, group.0)
            .await?;
        increment(transaction, &self.group_version_key(group), "group version").await
    }
}
