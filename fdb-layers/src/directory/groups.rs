//! Groups: an owner, a name, a home region with its epoch, and members with their roles, kept
//! both ways.
//!
//! **Key layout** (under `("directory",)`):
//! - `("group_counter",)` → the last group id given (8 bytes LE);
//! - `("group", group)` → the group record (prost): owner, home region, epoch, name;
//! - `("member", group, account)` → the member's role (prost; empty: a plain member, `admin`
//!   set: an admin), one key per member;
//! - `("member_count", group)` → the number of members (8 bytes LE);
//! - `("group_of", account, group)` → empty: the reverse index, one key per membership;
//! - `("group_request", owner, request id)` → the group that creation request made (8 bytes LE).
//!
//! A group's members and an account's groups each share a key prefix and sort by id: each list
//! is one range read. A member's role is its key's value, so the member list carries the roles
//! in the same read; the empty value of a plain member is what stores written before roles
//! hold for every member, so they read unchanged (with no admin: groups were not reachable
//! from any request then).
//!
//! **Rules kept here.** A group has at most [`GROUP_MEMBERS_MAX`] members. It is never left
//! without an admin while it has members: when the last admin leaves or is removed
//! ([`remove_member`]), the remaining member with the lowest account id becomes an admin, and
//! the last admin cannot be made a plain member ([`GroupChange::LastAdmin`]). Who may ask for
//! what (admins, members) and whether accounts exist is the caller's to check.
//!
//! **Conflicts.** Group creation serializes on the group counter (groups are created rarely);
//! every change of one group (members, roles, name, home) reads and writes its version
//! ([`super::group_version`]), so changes of one group serialize; changes of different groups
//! never conflict.
//!
//! **Idempotence.** Every change takes an [`IdempotencyKey`]: retried after
//! `CommitUnknownResult` it answers with its first result (the same group id, the same version)
//! and changes nothing. A creation also names the client's request id, so a request the client
//! sends again (its answer was lost) finds the group the first one created instead of making
//! another.
//!
//! **Limits.** A group has at most [`GROUP_MEMBERS_MAX`] members, so its member list is one
//! bounded read; an account's groups are read in pages of at most [`LAYER_READ_ENTRIES_MAX`].
//! Names are bounded by the protocol (`GROUP_NAME_BYTES_MAX`); the caller checks them.
//!
//! **Evolution.** More roles come as new fields of the member value. Every change moves the
//! group's entry in the group log ([`super::log`]), which replicas follow into their copies of
//! the members.

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

pub use relay_proto::GroupId;

/// Bytes of a client's id for one creation request.
pub const GROUP_REQUEST_ID_BYTES: usize = relay_proto::limits::GROUP_REQUEST_ID_BYTES;

/// A group as the directory stores it (its members are listed by [`members`] and
/// [`group_members`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// The group's id.
    pub id: GroupId,
    /// The account that created the group.
    pub owner: AccountId,
    /// The group's name (empty for a group stored before names).
    pub name: String,
    /// The region that is the group's home.
    pub home_region: RegionId,
    /// Bumped whenever the home moves.
    pub epoch: u64,
}

/// A member of a group with its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupMember {
    /// The member's account.
    pub account: AccountId,
    /// Whether the member is an admin.
    pub admin: bool,
}

/// A group to create.
#[derive(Debug, Clone, Copy)]
pub struct NewGroup<'a> {
    /// The creator: the first member, an admin, and the group's owner.
    pub owner: AccountId,
    /// The name (checked by the caller).
    pub name: &'a str,
    /// The group's home (its creator's home region).
    pub home_region: RegionId,
    /// The other first members (the caller checks they exist); the owner and repeats in it
    /// change nothing.
    pub members: &'a [AccountId],
    /// The client's id for this creation: the same id from the same owner is the same group.
    pub request_id: [u8; GROUP_REQUEST_ID_BYTES],
}

/// Refused: the group would have more than [`GROUP_MEMBERS_MAX`] members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyMembers {
    /// The members it would have had.
    pub members: u64,
}

/// What a change of a group did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupChange {
    /// The group changed; it is now at `version`.
    Changed {
        /// The group's version after the change.
        version: u64,
    },
    /// Nothing to change (already a member, not a member, the same name or role); the group
    /// is at `version`.
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
    /// Refused: the account is not a member (a role to set).
    NotAMember,
    /// Refused: the member is the group's only admin, and the group would be left without one.
    LastAdmin,
}

/// Creates a group with the next group id: `new.owner` is its first member and an admin,
/// `new.members` plain members. Retried with the same `idempotency` key after its commit, or
/// asked again with the same owner and request id, it returns the group it created and changes
/// nothing.
pub async fn create_group(
    transaction: &Transaction,
    new: &NewGroup<'_>,
    idempotency: &IdempotencyKey,
) -> Result<Result<GroupId, TooManyMembers>, StoreError> {
    if let Some(stored) = recall(transaction, "create_group", &(), idempotency).await? {
        return Ok(Ok(GroupId(decode_u64(&stored, "create_group result")?)));
    }
    let directory = Directory::get();
    let request_key = directory.group_request_key(new.owner, new.request_id);
    if let Some(stored) = transaction.get(&request_key).await? {
        return Ok(Ok(GroupId(decode_u64(&stored, "group request")?)));
    }
    let mut others: Vec<AccountId> = new
        .members
        .iter()
        .copied()
        .filter(|&account| account != new.owner)
        .collect();
    others.sort_unstable();
    others.dedup();
    let members = others.len() as u64 + 1;
    if members > GROUP_MEMBERS_MAX {
        return Ok(Err(TooManyMembers { members }));
    }
    let counter_key = directory.root.pack(&("group_counter",));
    let id = GroupId(increment(transaction, &counter_key, "group counter").await?);
    let record = GroupRecord {
        id,
        owner: new.owner,
        name: new.name.to_owned(),
        home_region: new.home_region,
        epoch: FIRST_EPOCH,
    };
    write_group(transaction, directory, &record)?;
    directory.write_member(transaction, id, new.owner, true)?;
    for &account in &others {
        directory.write_member(transaction, id, account, false)?;
    }
    transaction.set(&directory.member_count_key(id), &encode_u64(members))?;
    transaction.set(&request_key, &encode_u64(id.0))?;
    directory.group_changed(transaction, id).await?;
    remember(
        transaction,
        "create_group",
        &(),
        idempotency,
        &encode_u64(id.0),
    )?;
    Ok(Ok(id))
}

/// The group with id `id`.
pub async fn group(
    transaction: &Transaction,
    id: GroupId,
) -> Result<Option<GroupRecord>, StoreError> {
    read_group(transaction, Directory::get(), id).await
}

/// Adds `account` to `group` as a plain member (the caller checks the account exists). Retried
/// with the same `idempotency` key after its commit, it answers its first result, even if the
/// member was removed in between.
pub async fn add_member(
    transaction: &Transaction,
    group: GroupId,
    account: AccountId,
    idempotency: &IdempotencyKey,
) -> Result<GroupChange, StoreError> {
    change_membership(transaction, group, account, true, idempotency).await
}

/// Removes `account` from `group` (an admin removing another member, or a member leaving). When
/// it was the last admin and members remain, the remaining member with the lowest account id
/// becomes an admin in the same change. Retried with the same `idempotency` key after its
/// commit, it answers its first result, even if the member was added again in between.
pub async fn remove_member(
    transaction: &Transaction,
    group: GroupId,
    account: AccountId,
    idempotency: &IdempotencyKey,
) -> Result<GroupChange, StoreError> {
    change_membership(transaction, group, account, false, idempotency).await
}

/// Renames `group` (the caller checks the name). Retried with the same `idempotency` key after
/// its commit, it answers its first result.
pub async fn rename_group(
    transaction: &Transaction,
    group: GroupId,
    name: &str,
    idempotency: &IdempotencyKey,
) -> Result<GroupChange, StoreError> {
    if let Some(result) =
        recalled_change(transaction, "rename_group", &(group,), idempotency).await?
    {
        return Ok(result);
    }
    let directory = Directory::get();
    let Some(mut record) = read_group(transaction, directory, group).await? else {
        return Ok(GroupChange::UnknownGroup);
    };
    if record.name == name {
        let version = group_version(transaction, group).await?;
        return Ok(GroupChange::Unchanged { version });
    }
    name.clone_into(&mut record.name);
    write_group(transaction, directory, &record)?;
    let version = directory.group_changed(transaction, group).await?;
    remember_change(transaction, "rename_group", &(group,), idempotency, version)?;
    Ok(GroupChange::Changed { version })
}

/// Makes member `account` of `group` an admin (`admin`) or a plain member. The group's only
/// admin cannot become a plain member ([`GroupChange::LastAdmin`]). Retried with the same
/// `idempotency` key after its commit, it answers its first result.
pub async fn set_admin(
    transaction: &Transaction,
    group: GroupId,
    account: AccountId,
    admin: bool,
    idempotency: &IdempotencyKey,
) -> Result<GroupChange, StoreError> {
    let scope = (group, account);
    if let Some(result) = recalled_change(transaction, "set_admin", &scope, idempotency).await? {
        return Ok(result);
    }
    let directory = Directory::get();
    if read_group(transaction, directory, group).await?.is_none() {
        return Ok(GroupChange::UnknownGroup);
    }
    let Some(current) = read_member(transaction, directory, group, account).await? else {
        return Ok(GroupChange::NotAMember);
    };
    if current.admin == admin {
        let version = group_version(transaction, group).await?;
        return Ok(GroupChange::Unchanged { version });
    }
    if !admin {
        let members = group_members(transaction, group).await?;
        if !members
            .iter()
            .any(|member| member.admin && member.account != account)
        {
            return Ok(GroupChange::LastAdmin);
        }
    }
    directory.write_member(transaction, group, account, admin)?;
    let version = directory.group_changed(transaction, group).await?;
    remember_change(transaction, "set_admin", &scope, idempotency, version)?;
    Ok(GroupChange::Changed { version })
}

/// The member `account` of `group` with its role, `None` when it is not a member (or the group
/// does not exist).
pub async fn member(
    transaction: &Transaction,
    group: GroupId,
    account: AccountId,
) -> Result<Option<GroupMember>, StoreError> {
    read_member(transaction, Directory::get(), group, account).await
}

/// Every member of `group`, in account order (at most [`GROUP_MEMBERS_MAX`]).
pub async fn members(
    transaction: &Transaction,
    group: GroupId,
) -> Result<Vec<AccountId>, StoreError> {
    Ok(group_members(transaction, group)
        .await?
        .into_iter()
        .map(|member| member.account)
        .collect())
}

/// Every member of `group` with its role, in account order (at most [`GROUP_MEMBERS_MAX`]).
pub async fn group_members(
    transaction: &Transaction,
    group: GroupId,
) -> Result<Vec<GroupMember>, StoreError> {
    let directory = Directory::get();
    let (begin, end) = directory.members.subspace(&(group,)).range();
    // Adds keep a group within GROUP_MEMBERS_MAX, so the limit only guards against a bug.
    let limit = usize::try_from(GROUP_MEMBERS_MAX).unwrap_or(usize::MAX);
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::limit(limit))
        .await?;
    rows.iter()
        .map(|(key, value)| {
            let (_, account): (GroupId, AccountId) =
                decode_key(&directory.members, key, "group member key")?;
            let role: StoredMember = decode_record(value, "group member role")?;
            Ok(GroupMember {
                account,
                admin: role.admin,
            })
        })
        .collect()
}

/// The number of members of `group` (0 for a group that does not exist).
pub async fn member_count(transaction: &Transaction, group: GroupId) -> Result<u64, StoreError> {
    let directory = Directory::get();
    read_u64(
        transaction,
        &directory.member_count_key(group),
        "group member count",
    )
    .await
}

/// Up to `limit` groups of `account` after `after` (from the first when `None`), in group order
/// (at most [`LAYER_READ_ENTRIES_MAX`] per call).
pub async fn groups_of(
    transaction: &Transaction,
    account: AccountId,
    after: Option<GroupId>,
    limit: usize,
) -> Result<Vec<GroupId>, StoreError> {
    let directory = Directory::get();
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
    /// Empty in groups stored before names.
    #[prost(string, tag = "4")]
    name: String,
}

/// The stored role of a member: a plain member encodes as no bytes at all, which is also what
/// members stored before roles hold.
#[derive(Clone, PartialEq, Message)]
struct StoredMember {
    #[prost(bool, tag = "1")]
    admin: bool,
}

/// The stored result of a group change, for answering retries.
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

    fn group_request_key(
        &self,
        owner: AccountId,
        request_id: [u8; GROUP_REQUEST_ID_BYTES],
    ) -> Vec<u8> {
        self.root.pack(&("group_request", owner, request_id))
    }

    /// Writes a membership both ways, with its role.
    fn write_member(
        &self,
        transaction: &Transaction,
        group: GroupId,
        account: AccountId,
        admin: bool,
    ) -> Result<(), StoreError> {
        let role = StoredMember { admin };
        transaction.set(&self.member_key(group, account), &role.encode_to_vec())?;
        transaction.set(&self.group_of_key(account, group), &[])
    }
}

async fn recalled_change<S: crate::tuple::TupleEncode + ?Sized>(
    transaction: &Transaction,
    operation: &str,
    scope: &S,
    idempotency: &IdempotencyKey,
) -> Result<Option<GroupChange>, StoreError> {
    let Some(stored) = recall(transaction, operation, scope, idempotency).await? else {
        return Ok(None);
    };
    let stored: StoredMembershipChange = decode_record(&stored, "group change result")?;
    Ok(Some(GroupChange::Changed {
        version: stored.version,
    }))
}

fn remember_change<S: crate::tuple::TupleEncode + ?Sized>(
    transaction: &Transaction,
    operation: &str,
    scope: &S,
    idempotency: &IdempotencyKey,
    version: u64,
) -> Result<(), StoreError> {
    let stored = StoredMembershipChange { version };
    remember(
        transaction,
        operation,
        scope,
        idempotency,
        &stored.encode_to_vec(),
    )
}

async fn change_membership(
    transaction: &Transaction,
    group: GroupId,
    account: AccountId,
    add: bool,
    idempotency: &IdempotencyKey,
) -> Result<GroupChange, StoreError> {
    let operation = if add { "add_member" } else { "remove_member" };
    let scope = (group, account);
    if let Some(result) = recalled_change(transaction, operation, &scope, idempotency).await? {
        return Ok(result);
    }
    let directory = Directory::get();
    if read_group(transaction, directory, group).await?.is_none() {
        return Ok(GroupChange::UnknownGroup);
    }
    let current = read_member(transaction, directory, group, account).await?;
    if current.is_some() == add {
        let version = group_version(transaction, group).await?;
        return Ok(GroupChange::Unchanged { version });
    }
    let count_key = directory.member_count_key(group);
    let members = read_u64(transaction, &count_key, "group member count").await?;
    let members = if add {
        if members >= GROUP_MEMBERS_MAX {
            return Ok(GroupChange::Full { members });
        }
        directory.write_member(transaction, group, account, false)?;
        members + 1
    } else {
        transaction.clear(&directory.member_key(group, account));
        transaction.clear(&directory.group_of_key(account, group));
        if current.is_some_and(|member| member.admin) {
            keep_an_admin(transaction, directory, group, account).await?;
        }
        members.checked_sub(1).ok_or_else(|| {
            StoreError::corrupt("group member count", format!("{group} counts no member"))
        })?
    };
    transaction.set(&count_key, &encode_u64(members))?;
    let version = directory.group_changed(transaction, group).await?;
    remember_change(transaction, operation, &scope, idempotency, version)?;
    Ok(GroupChange::Changed { version })
}

/// After admin `removed` left `group`: when no admin remains and members do, the member with
/// the lowest account id becomes one.
async fn keep_an_admin(
    transaction: &Transaction,
    directory: &Directory,
    group: GroupId,
    removed: AccountId,
) -> Result<(), StoreError> {
    let remaining: Vec<GroupMember> = group_members(transaction, group)
        .await?
        .into_iter()
        .filter(|member| member.account != removed)
        .collect();
    if remaining.iter().any(|member| member.admin) {
        return Ok(());
    }
    // Members come in account order: the first is the lowest id.
    if let Some(successor) = remaining.first() {
        directory.write_member(transaction, group, successor.account, true)?;
    }
    Ok(())
}

async fn read_member(
    transaction: &Transaction,
    directory: &Directory,
    group: GroupId,
    account: AccountId,
) -> Result<Option<GroupMember>, StoreError> {
    let Some(value) = transaction
        .get(&directory.member_key(group, account))
        .await?
    else {
        return Ok(None);
    };
    let role: StoredMember = decode_record(&value, "group member role")?;
    Ok(Some(GroupMember {
        account,
        admin: role.admin,
    }))
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
        name: stored.name,
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
        name: record.name.clone(),
    };
    transaction.set(&directory.group_key(record.id), &stored.encode_to_vec())
}

/// The stored form of a group before names (tag 4), for the test that old stores read.
#[cfg(test)]
#[derive(Clone, PartialEq, Message)]
struct StoredGroupBeforeNames {
    #[prost(uint64, tag = "1")]
    owner: u64,
    #[prost(uint32, tag = "2")]
    home_region: u32,
    #[prost(uint64, tag = "3")]
    epoch: u64,
}

#[cfg(test)]
mod tests {
    use relay_proto::{AccountId, RegionId};

    use super::Directory;
    use crate::codec::encode_u64;

    use crate::directory::*;
    use crate::test_support::{idempotency_key, temporary_database};

    fn new_group<'a>(owner: u64, members: &'a [AccountId], request: u8) -> NewGroup<'a> {
        NewGroup {
            owner: AccountId(owner),
            name: "friends",
            home_region: RegionId(owner as u32),
            members,
            request_id: [request; GROUP_REQUEST_ID_BYTES],
        }
    }

    fn admin(account: u64) -> GroupMember {
        GroupMember {
            account: AccountId(account),
            admin: true,
        }
    }

    fn plain(account: u64) -> GroupMember {
        GroupMember {
            account: AccountId(account),
            admin: false,
        }
    }

    #[tokio::test]
    async fn groups_track_members_both_ways_with_versions() {
        let (_folder, database) = temporary_database(None);
        let owner = AccountId(1);
        let (group, retried, asked_again, other) = database
            .transact(|tx| async move {
                Ok((
                    create_group(&tx, &new_group(1, &[], 1), &idempotency_key(10)).await?,
                    create_group(&tx, &new_group(1, &[], 1), &idempotency_key(10)).await?,
                    // The client's retry: a new request, the same request id.
                    create_group(&tx, &new_group(1, &[], 1), &idempotency_key(12)).await?,
                    create_group(&tx, &new_group(2, &[], 1), &idempotency_key(11)).await?,
                ))
            })
            .await
            .expect("creations");
        let (group, other) = (group.expect("small"), other.expect("small"));
        assert_eq!(
            (group, retried, asked_again, other),
            (GroupId(1), Ok(GroupId(1)), Ok(GroupId(1)), GroupId(2)),
            "another owner's request id of the same bytes is another request"
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
        use GroupChange::{Changed, Unchanged, UnknownGroup};
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
                    group_members(&tx, group).await?,
                    groups_of(&tx, AccountId(3), None, 10).await?,
                    groups_of(&tx, AccountId(3), Some(group), 10).await?,
                    super::group(&tx, other).await?,
                    group_version(&tx, group).await?,
                ))
            })
            .await
            .expect("reads");
        assert_eq!(listed, [admin(1), plain(3)], "the creator is an admin");
        assert_eq!(of_three, [group, other]);
        assert_eq!(of_three_after_first, [other]);
        assert_eq!(
            record,
            Some(GroupRecord {
                id: other,
                owner: AccountId(2),
                name: "friends".into(),
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
            name: "friends".into(),
            home_region: RegionId(3),
            epoch: 2,
        };
        assert_eq!(
            moves,
            [
                HomeMove::Moved(moved.clone()),
                HomeMove::Moved(moved.clone()),
                HomeMove::StaleEpoch { current: moved }
            ]
        );
    }

    #[tokio::test]
    async fn a_creation_writes_its_first_members_in_one_change() {
        let (_folder, database) = temporary_database(None);
        let members = [AccountId(5), AccountId(1), AccountId(3), AccountId(5)];
        let (group, listed, count, version, of_five) = database
            .transact(|tx| async move {
                let group = create_group(&tx, &new_group(1, &members, 1), &idempotency_key(1))
                    .await?
                    .expect("small");
                Ok((
                    group,
                    group_members(&tx, group).await?,
                    member_count(&tx, group).await?,
                    group_version(&tx, group).await?,
                    groups_of(&tx, AccountId(5), None, 10).await?,
                ))
            })
            .await
            .expect("create");
        assert_eq!(listed, [admin(1), plain(3), plain(5)]);
        assert_eq!((count, version), (3, 1));
        assert_eq!(of_five, [group]);

        let everyone: Vec<AccountId> = (2..=GROUP_MEMBERS_MAX + 1).map(AccountId).collect();
        let refused =
            database
                .transact(|tx| {
                    let everyone = everyone.clone();
                    async move {
                        create_group(&tx, &new_group(1, &everyone, 2), &idempotency_key(2)).await
                    }
                })
                .await
                .expect("create");
        assert_eq!(
            refused,
            Err(TooManyMembers {
                members: GROUP_MEMBERS_MAX + 1
            })
        );
    }

    #[tokio::test]
    async fn a_group_never_loses_its_last_admin() {
        let (_folder, database) = temporary_database(None);
        let members = [AccountId(7), AccountId(4), AccountId(9)];
        let group = database
            .transact(|tx| async move {
                create_group(&tx, &new_group(1, &members, 1), &idempotency_key(1)).await
            })
            .await
            .expect("create")
            .expect("small");
        let (changes, after) = database
            .transact(|tx| async move {
                let changes = [
                    // The only admin cannot step down, nor be made one twice.
                    set_admin(&tx, group, AccountId(1), false, &idempotency_key(2)).await?,
                    set_admin(&tx, group, AccountId(1), true, &idempotency_key(3)).await?,
                    set_admin(&tx, group, AccountId(8), true, &idempotency_key(4)).await?,
                    set_admin(&tx, GroupId(99), AccountId(1), true, &idempotency_key(5)).await?,
                    // The last admin leaves: the lowest remaining id (4) becomes one.
                    remove_member(&tx, group, AccountId(1), &idempotency_key(6)).await?,
                ];
                Ok((changes, group_members(&tx, group).await?))
            })
            .await
            .expect("changes");
        use GroupChange::{Changed, LastAdmin, NotAMember, Unchanged, UnknownGroup};
        assert_eq!(
            changes,
            [
                LastAdmin,
                Unchanged { version: 1 },
                NotAMember,
                UnknownGroup,
                Changed { version: 2 }
            ]
        );
        assert_eq!(after, [admin(4), plain(7), plain(9)]);

        let (changes, after) = database
            .transact(|tx| async move {
                let changes = [
                    set_admin(&tx, group, AccountId(9), true, &idempotency_key(7)).await?,
                    // Two admins: either may step down, and then the other is the last.
                    set_admin(&tx, group, AccountId(4), false, &idempotency_key(8)).await?,
                    set_admin(&tx, group, AccountId(9), false, &idempotency_key(9)).await?,
                    // A retry of the step-down answers as it did.
                    set_admin(&tx, group, AccountId(4), false, &idempotency_key(8)).await?,
                    // A plain member leaving changes no role.
                    remove_member(&tx, group, AccountId(7), &idempotency_key(10)).await?,
                    remove_member(&tx, group, AccountId(9), &idempotency_key(11)).await?,
                ];
                Ok((changes, group_members(&tx, group).await?))
            })
            .await
            .expect("changes");
        assert_eq!(
            changes,
            [
                Changed { version: 3 },
                Changed { version: 4 },
                LastAdmin,
                Changed { version: 4 },
                Changed { version: 5 },
                Changed { version: 6 },
            ]
        );
        assert_eq!(after, [admin(4)], "the last member is its admin");
        let (left, empty, count) = database
            .transact(|tx| async move {
                Ok((
                    remove_member(&tx, group, AccountId(4), &idempotency_key(12)).await?,
                    group_members(&tx, group).await?,
                    member_count(&tx, group).await?,
                ))
            })
            .await
            .expect("last leaves");
        assert_eq!(left, Changed { version: 7 });
        assert_eq!((empty, count), (Vec::new(), 0));
    }

    #[tokio::test]
    async fn renames_bump_the_version_once() {
        let (_folder, database) = temporary_database(None);
        let (changes, record) = database
            .transact(|tx| async move {
                let group = create_group(&tx, &new_group(1, &[], 1), &idempotency_key(1))
                    .await?
                    .expect("small");
                let changes = [
                    rename_group(&tx, group, "family", &idempotency_key(2)).await?,
                    rename_group(&tx, group, "family", &idempotency_key(3)).await?,
                    rename_group(&tx, group, "famille", &idempotency_key(4)).await?,
                    rename_group(&tx, group, "family", &idempotency_key(2)).await?,
                    rename_group(&tx, GroupId(9), "x", &idempotency_key(5)).await?,
                ];
                Ok((changes, super::group(&tx, group).await?))
            })
            .await
            .expect("renames");
        use GroupChange::{Changed, Unchanged, UnknownGroup};
        assert_eq!(
            changes,
            [
                Changed { version: 2 },
                Unchanged { version: 2 },
                Changed { version: 3 },
                Changed { version: 2 },
                UnknownGroup,
            ]
        );
        assert_eq!(record.map(|record| record.name), Some("famille".into()));
    }

    #[tokio::test]
    async fn groups_stored_before_names_and_roles_read_unchanged() {
        let (_folder, database) = temporary_database(None);
        let (record, listed) = database
            .transact(|tx| async move {
                // A group as the layer wrote it before names and roles: a record of three
                // fields, empty member values.
                let directory = Directory::get();
                let old = super::StoredGroupBeforeNames {
                    owner: 1,
                    home_region: 1,
                    epoch: 1,
                };
                tx.set(
                    &directory.group_key(GroupId(1)),
                    &prost::Message::encode_to_vec(&old),
                )?;
                tx.set(&directory.member_key(GroupId(1), AccountId(1)), &[])?;
                tx.set(&directory.member_key(GroupId(1), AccountId(2)), &[])?;
                tx.set(&directory.member_count_key(GroupId(1)), &encode_u64(2))?;
                Ok((
                    super::group(&tx, GroupId(1)).await?,
                    group_members(&tx, GroupId(1)).await?,
                ))
            })
            .await
            .expect("read");
        assert_eq!(record.map(|record| record.name), Some(String::new()));
        assert_eq!(listed, [plain(1), plain(2)]);
    }

    #[tokio::test]
    async fn a_full_group_refuses_members() {
        let (_folder, database) = temporary_database(None);
        let outcome = database
            .transact(|tx| async move {
                let group = create_group(&tx, &new_group(1, &[], 1), &idempotency_key(1))
                    .await?
                    .expect("small");
                // Stand in for GROUP_MEMBERS_MAX members without writing them all.
                let directory = Directory::get();
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
            GroupChange::Full {
                members: GROUP_MEMBERS_MAX
            }
        );
    }
}
