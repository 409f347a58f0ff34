//! Groups: an owner, a home region with its epoch, and members, kept both ways.
//!
//! **Key layout** (under `("directory",)`):
//! - `("group_counter",)` → the last group id given (8 bytes LE);
//! - `("group", group)` → the group record (prost): owner, home region, epoch;
//! - `("member", group, account)` → empty: one key per member;
//! - `("member_count", group)` → the number of members (8 bytes LE);
//! - `("group_of", account, group)` → empty: the reverse index, one key per membership.
//!
//! A group's members and an account's groups each share a key prefix and sort by id: each list
//! is one range read.
//!
//! **Conflicts.** Group creation serializes on the group counter (groups are created rarely);
//! membership changes of one group serialize on its version ([`super::group_version`]) and
//! member count; changes of different groups never conflict.
//!
//! **Idempotence.** [`create_group`], [`add_member`] and [`remove_member`] take an
//! [`IdempotencyKey`]: retried after `CommitUnknownResult` they answer with their first result
//! (the same group id, the same version) and change nothing.
//!
//! **Limits.** A group has at most [`GROUP_MEMBERS_MAX`] members, so its member list is one
//! bounded read; an account's groups are read in pages of at most [`LAYER_READ_ENTRIES_MAX`].
//!
//! **Evolution.** Member roles come as a new field of the member value (empty today); group
//! replicas like accounts'.

use prost::Message;
use relay_proto::{AccountId, RegionId};

use super::{Directory, FIRST_EPOCH, group_version};
use crate::codec::{
    IdempotencyKey, decode_key, decode_record, decode_u64, encode_u64, increment, read_u64, recall,
    remember,
};
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::limits::{GROUP_MEMBERS_MAX, LAYER_READ_ENTRIES_MAX};
use crate::tuple::{TupleDecode, TupleEncode, TupleError};

/// A group, numbered by the directory from 1, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u64);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "group {}", self.0)
    }
}

/// A group id packs as its number, so a group's keys sort by id.
impl TupleEncode for GroupId {
    fn encode_into(&self, out: &mut Vec<u8>) {
        self.0.encode_into(out);
    }
}

impl TupleDecode for GroupId {
    fn decode_from(input: &mut &[u8]) -> Result<Self, TupleError> {
        u64::decode_from(input).map(GroupId)
    }
}

/// A group as the directory stores it (its members are listed by [`members`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRecord {
    /// The group's id.
    pub id: GroupId,
    /// The account that created the group.
    pub owner: AccountId,
    /// The region that is the group's home.
    pub home_region: RegionId,
    /// Bumped whenever the home moves.
    pub epoch: u64,
}

/// What [`add_member`] or [`remove_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// The membership changed; the group is now at `version`.
    Changed {
        /// The group's version after the change.
        version: u64,
    },
    /// Nothing to change (already a member, or not a member); the group is at `version`.
    Unchanged {
        /// The group's current version.
        version: u64,
    },
    /// No group has this id.
    UnknownGroup,
    /// Refused: the group has [`GROUP_MEMBERS_MAX`] members.
    Full {
        /// The members the group has.
        members: u64,
    },
}

/// Creates a group owned by `owner` (its first member) with its home in `home_region`, under
/// the next group id. The caller checks that the owner exists. Retried with the same
/// `idempotency` key after its commit, it returns the group it created.
pub async fn create_group(
    transaction: &Transaction,
    owner: AccountId,
    home_region: RegionId,
    idempotency: &IdempotencyKey,
) -> Result<GroupId, StoreError> {
    if let Some(stored) = recall(transaction, "create_group", &(), idempotency).await? {
        return Ok(GroupId(decode_u64(&stored, "create_group result")?));
    }
    let directory = Directory::new();
    let counter_key = directory.root.pack(&("group_counter",));
    let id = GroupId(increment(transaction, &counter_key, "group counter").await?);
    let record = GroupRecord {
        id,
        owner,
        home_region,
        epoch: FIRST_EPOCH,
    };
    write_group(transaction, &directory, &record)?;
    transaction.set(&directory.member_key(id, owner), &[])?;
    transaction.set(&directory.group_of_key(owner, id), &[])?;
    transaction.set(&directory.member_count_key(id), &encode_u64(1))?;
    directory.group_changed(transaction, id).await?;
    remember(
        transaction,
        "create_group",
        &(),
        idempotency,
        &encode_u64(id.0),
    )?;
    Ok(id)
}

/// The group with id `id`.
pub async fn group(
    transaction: &Transaction,
    id: GroupId,
) -> Result<Option<GroupRecord>, StoreError> {
    read_group(transaction, &Directory::new(), id).await
}

/// Adds `account` to `group` (the caller checks the account exists). Retried with the same
/// `idempotency` key after its commit, it answers its first result, even if the member was
/// removed in between.
pub async fn add_member(
    transaction: &Transaction,
    group: GroupId,
    account: AccountId,
    idempotency: &IdempotencyKey,
) -> Result<MembershipChange, StoreError> {
    change_membership(transaction, group, account, true, idempotency).await
}

/// Removes `account` from `group`. Retried with the same `idempotency` key after its commit, it
/// answers its first result, even if the member was added again in between.
pub async fn remove_member(
    transaction: &Transaction,
    group: GroupId,
    account: AccountId,
    idempotency: &IdempotencyKey,
) -> Result<MembershipChange, StoreError> {
    change_membership(transaction, group, account, false, idempotency).await
}

/// Every member of `group`, in account order (at most [`GROUP_MEMBERS_MAX`]).
pub async fn members(
    transaction: &Transaction,
    group: GroupId,
) -> Result<Vec<AccountId>, StoreError> {
    let directory = Directory::new();
    let (begin, end) = directory.members.subspace(&(group,)).range();
    // Adds keep a group within GROUP_MEMBERS_MAX, so the limit only guards against a bug.
    let limit = usize::try_from(GROUP_MEMBERS_MAX).unwrap_or(usize::MAX);
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::limit(limit))
        .await?;
    rows.iter()
        .map(|(key, _)| {
            let (_, account): (GroupId, AccountId) =
                decode_key(&directory.members, key, "group member key")?;
            Ok(account)
        })
        .collect()
}

/// Up to `limit` groups of `account` after `after` (from the first when `None`), in group order
/// (at most [`LAYER_READ_ENTRIES_MAX`] per call).
pub async fn groups_of(
    transaction: &Transaction,
    account: AccountId,
    after: Option<GroupId>,
    limit: usize,
) -> Result<Vec<GroupId>, StoreError> {
    let directory = Directory::new();
    let memberships = directory.groups_of.subspace(&(account,));
    let (first, end) = memberships.range();
    let begin = match after {
        Some(group) => memberships.subspace(&(group,)).range().1,
        None => first,
    };
    let limit = limit.min(LAYER_READ_ENTRIES_MAX);
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::limit(limit))
        .await?;
    rows.iter()
        .map(|(key, _)| {
            let (group,): (GroupId,) = decode_key(&memberships, key, "group membership key")?;
            Ok(group)
        })
        .collect()
}

/// The stored form of a group (its id is in the key).
#[derive(Clone, PartialEq, Message)]
struct StoredGroup {
    #[prost(uint64, tag = "1")]
    owner: u64,
    #[prost(uint32, tag = "2")]
    home_region: u32,
    #[prost(uint64, tag = "3")]
    epoch: u64,
}

/// The stored result of a membership change, for answering retries.
#[derive(Clone, PartialEq, Message)]
struct StoredMembershipChange {
    #[prost(uint64, tag = "1")]
    version: u64,
}

impl Directory {
    fn group_key(&self, group: GroupId) -> Vec<u8> {
        self.root.pack(&("group", group))
    }

    fn member_key(&self, group: GroupId, account: AccountId) -> Vec<u8> {
        self.members.pack(&(group, account))
    }

    fn member_count_key(&self, group: GroupId) -> Vec<u8> {
        self.root.pack(&("member_count", group))
    }

    fn group_of_key(&self, account: AccountId, group: GroupId) -> Vec<u8> {
        self.groups_of.pack(&(account, group))
    }
}

async fn change_membership(
    transaction: &Transaction,
    group: GroupId,
    account: AccountId,
    add: bool,
    idempotency: &IdempotencyKey,
) -> Result<MembershipChange, StoreError> {
    let operation = if add { "add_member" } else { "remove_member" };
    if let Some(stored) = recall(transaction, operation, &(group, account), idempotency).await? {
        let stored: StoredMembershipChange = decode_record(&stored, "membership change result")?;
        return Ok(MembershipChange::Changed {
            version: stored.version,
        });
    }
    let directory = Directory::new();
    if read_group(transaction, &directory, group).await?.is_none() {
        return Ok(MembershipChange::UnknownGroup);
    }
    let member_key = directory.member_key(group, account);
    let is_member = transaction.get(&member_key).await?.is_some();
    if is_member == add {
        let version = group_version(transaction, group).await?;
        return Ok(MembershipChange::Unchanged { version });
    }
    let count_key = directory.member_count_key(group);
    let members = read_u64(transaction, &count_key, "group member count").await?;
    let members = if add {
        if members >= GROUP_MEMBERS_MAX {
            return Ok(MembershipChange::Full { members });
        }
        transaction.set(&member_key, &[])?;
        transaction.set(&directory.group_of_key(account, group), &[])?;
        members + 1
    } else {
        transaction.clear(&member_key);
        transaction.clear(&directory.group_of_key(account, group));
        members.checked_sub(1).ok_or_else(|| {
            StoreError::corrupt("group member count", format!("{group} counts no member"))
        })?
    };
    transaction.set(&count_key, &encode_u64(members))?;
    let version = directory.group_changed(transaction, group).await?;
    let stored = StoredMembershipChange { version };
    remember(
        transaction,
        operation,
        &(group, account),
        idempotency,
        &stored.encode_to_vec(),
    )?;
    Ok(MembershipChange::Changed { version })
}

pub(super) async fn read_group(
    transaction: &Transaction,
    directory: &Directory,
    id: GroupId,
) -> Result<Option<GroupRecord>, StoreError> {
    let Some(value) = transaction.get(&directory.group_key(id)).await? else {
        return Ok(None);
    };
    let stored: StoredGroup = decode_record(&value, "group record")?;
    Ok(Some(GroupRecord {
        id,
        owner: AccountId(stored.owner),
        home_region: RegionId(stored.home_region),
        epoch: stored.epoch,
    }))
}

pub(super) fn write_group(
    transaction: &Transaction,
    directory: &Directory,
    record: &GroupRecord,
) -> Result<(), StoreError> {
    let stored = StoredGroup {
        owner: record.owner.0,
        home_region: record.home_region.0,
        epoch: record.epoch,
    };
    transaction.set(&directory.group_key(record.id), &stored.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use relay_proto::{AccountId, RegionId};

    use super::Directory;
    use crate::codec::encode_u64;

    use crate::directory::*;
    use crate::test_support::{idempotency_key, temporary_database};

    #[tokio::test]
    async fn groups_track_members_both_ways_with_versions() {
        let (_folder, database) = temporary_database(None);
        let owner = AccountId(1);
        let (group, retried, other) = database
            .transact(|tx| async move {
                Ok((
                    create_group(&tx, owner, RegionId(1), &idempotency_key(10)).await?,
                    create_group(&tx, owner, RegionId(1), &idempotency_key(10)).await?,
                    create_group(&tx, AccountId(2), RegionId(2), &idempotency_key(11)).await?,
                ))
            })
            .await
            .expect("creations");
        assert_eq!(
            (group, retried, other),
            (GroupId(1), GroupId(1), GroupId(2))
        );

        let changes = database
            .transact(|tx| async move {
                Ok([
                    add_member(&tx, group, AccountId(2), &idempotency_key(20)).await?,
                    add_member(&tx, group, AccountId(3), &idempotency_key(21)).await?,
                    add_member(&tx, group, AccountId(3), &idempotency_key(22)).await?,
                    remove_member(&tx, group, AccountId(2), &idempotency_key(23)).await?,
                    // Retries of the first add and of the removal, after each other's commit.
                    add_member(&tx, group, AccountId(2), &idempotency_key(20)).await?,
                    remove_member(&tx, group, AccountId(2), &idempotency_key(23)).await?,
                    remove_member(&tx, group, AccountId(9), &idempotency_key(24)).await?,
                    add_member(&tx, GroupId(99), AccountId(2), &idempotency_key(25)).await?,
                    add_member(&tx, other, AccountId(3), &idempotency_key(26)).await?,
                ])
            })
            .await
            .expect("membership changes");
        use MembershipChange::{Changed, Unchanged, UnknownGroup};
        assert_eq!(
            changes,
            [
                Changed { version: 2 },
                Changed { version: 3 },
                Unchanged { version: 3 },
                Changed { version: 4 },
                Changed { version: 2 },
                Changed { version: 4 },
                Unchanged { version: 4 },
                UnknownGroup,
                Changed { version: 2 },
            ]
        );
        let (listed, of_three, of_three_after_first, record, version) = database
            .transact(|tx| async move {
                Ok((
                    members(&tx, group).await?,
                    groups_of(&tx, AccountId(3), None, 10).await?,
                    groups_of(&tx, AccountId(3), Some(group), 10).await?,
                    super::group(&tx, other).await?,
                    group_version(&tx, group).await?,
                ))
            })
            .await
            .expect("reads");
        assert_eq!(listed, [owner, AccountId(3)]);
        assert_eq!(of_three, [group, other]);
        assert_eq!(of_three_after_first, [other]);
        assert_eq!(
            record,
            Some(GroupRecord {
                id: other,
                owner: AccountId(2),
                home_region: RegionId(2),
                epoch: FIRST_EPOCH,
            })
        );
        assert_eq!(version, 4);

        let moves = database
            .transact(|tx| async move {
                Ok([
                    move_group_home(&tx, group, RegionId(3), 1).await?,
                    move_group_home(&tx, group, RegionId(3), 1).await?,
                    move_group_home(&tx, group, RegionId(4), 1).await?,
                ])
            })
            .await
            .expect("moves");
        let moved = GroupRecord {
            id: group,
            owner,
            home_region: RegionId(3),
            epoch: 2,
        };
        assert_eq!(
            moves,
            [
                HomeMove::Moved(moved),
                HomeMove::Moved(moved),
                HomeMove::StaleEpoch { current: moved }
            ]
        );
    }

    #[tokio::test]
    async fn a_full_group_refuses_members() {
        let (_folder, database) = temporary_database(None);
        let outcome = database
            .transact(|tx| async move {
                let group =
                    create_group(&tx, AccountId(1), RegionId(1), &idempotency_key(1)).await?;
                // Stand in for GROUP_MEMBERS_MAX members without writing them all.
                let directory = Directory::new();
                tx.set(
                    &directory.member_count_key(group),
                    &encode_u64(GROUP_MEMBERS_MAX),
                )?;
                add_member(&tx, group, AccountId(2), &idempotency_key(2)).await
            })
            .await
            .expect("add");
        assert_eq!(
            outcome,
            MembershipChange::Full {
                members: GROUP_MEMBERS_MAX
            }
        );
    }
}
