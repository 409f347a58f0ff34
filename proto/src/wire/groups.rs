//! Groups: the directory's group records (membership metadata only, never message content),
//! the commands that create and change them, and their checks.
//!
//! A device sends a `GroupCommand` to its edge, which forwards it to the device's home region as
//! a `ForGroup` naming the device's account (from the authenticated session, never from the
//! request); a region that is not the directory writer forwards the same `ForGroup` there. Every
//! command is answered with a `GroupInfo` (`List` with a `GroupList`) or a typed error:
//! `UnknownGroup` (no such group, or the asker is not a member: the same to a non-member),
//! `NotGroupAdmin`, `GroupFull`, `LastGroupAdmin`, `UnknownAccount` (a member to add does not
//! exist), `Malformed` or `TooLarge` (a bad name or list). Every change bumps the group's
//! version.

use std::collections::BTreeSet;

use crate::ProtoError;
use crate::ids::{AccountId, GroupId};
use crate::limits::{
    GROUP_MEMBERS_MAX, GROUP_NAME_BYTES_MAX, GROUP_REQUEST_ID_BYTES, GROUPS_PER_PAGE_MAX,
};

fn group_id(group: u64) -> Result<GroupId, ProtoError> {
    if group == 0 {
        return Err(ProtoError::invalid("group ids start at 1"));
    }
    Ok(GroupId(group))
}

fn account_id(account: u64) -> Result<AccountId, ProtoError> {
    if account == 0 {
        return Err(ProtoError::invalid("account ids start at 1"));
    }
    Ok(AccountId(account))
}

/// Account ids sorted and unique, refusing zero.
fn accounts(ids: &[u64]) -> Result<Vec<AccountId>, ProtoError> {
    let unique: BTreeSet<AccountId> = ids
        .iter()
        .map(|&id| account_id(id))
        .collect::<Result<_, _>>()?;
    Ok(unique.into_iter().collect())
}

fn group_too_large(members: usize) -> ProtoError {
    ProtoError::new(
        crate::ErrorCode::GroupFull,
        format!("{members} members is more than a group's {GROUP_MEMBERS_MAX}"),
    )
}

/// (Authenticated) a request about groups, acting as the asker's account.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupCommand {
    /// The command.
    #[prost(oneof = "group_command::Command", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
    pub command: Option<group_command::Command>,
}

/// The variants of [`GroupCommand`].
pub mod group_command {
    /// What to do.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Command {
        /// Create a group; the asker is its first member and an admin (answered with
        /// `GroupInfo`).
        #[prost(message, tag = "1")]
        Create(super::CreateGroup),
        /// (Admins) add members (answered with `GroupInfo`).
        #[prost(message, tag = "2")]
        Add(super::AddGroupMembers),
        /// (Admins) remove a member (answered with `GroupInfo`).
        #[prost(message, tag = "3")]
        Remove(super::RemoveGroupMember),
        /// Leave the group (answered with a `GroupInfo` holding only the group's id and chat:
        /// the asker sees nothing more of it). If the last admin leaves, the remaining member
        /// with the lowest account id becomes an admin. Leaving a group one is not in answers
        /// the same, so a retried leave succeeds.
        #[prost(message, tag = "4")]
        Leave(super::GroupRef),
        /// (Admins) rename the group (answered with `GroupInfo`).
        #[prost(message, tag = "5")]
        Rename(super::RenameGroup),
        /// (Admins) make a member an admin or a plain member (answered with `GroupInfo`).
        #[prost(message, tag = "6")]
        SetAdmin(super::SetGroupAdmin),
        /// (Members) the group with its members (answered with `GroupInfo`).
        #[prost(message, tag = "7")]
        Get(super::GroupRef),
        /// The asker's groups, a page at a time, in group id order (answered with
        /// `GroupList`).
        #[prost(message, tag = "8")]
        List(super::ListGroups),
    }
}

/// Creates a group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CreateGroup {
    /// The group's name: 1 to `GROUP_NAME_BYTES_MAX` bytes of UTF-8, no control characters.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The other first members (account ids; each must exist). The asker is always a member;
    /// naming it, or an account twice, changes nothing. At most `GROUP_MEMBERS_MAX` members in
    /// all.
    #[prost(uint64, repeated, tag = "2")]
    pub members: Vec<u64>,
    /// `GROUP_REQUEST_ID_BYTES` random bytes the client draws once per creation and sends
    /// again with every retry: the directory answers a retry with the group the first attempt
    /// created instead of creating another.
    #[prost(bytes = "vec", tag = "3")]
    pub request_id: Vec<u8>,
}

/// Names a group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupRef {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
}

/// (Region → directory writer) a group's membership, asked by a region checking one of its
/// envelopes; the writer remembers who asked, to tell them when the group changes.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct AskGroupMembers {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The asking region.
    #[prost(uint32, tag = "2")]
    pub region: u32,
}

/// A group at a version.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct GroupVersion {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// Its version.
    #[prost(uint64, tag = "2")]
    pub version: u64,
}

/// Adds members to a group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AddGroupMembers {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The accounts to add (each must exist; members already are unchanged).
    #[prost(uint64, repeated, tag = "2")]
    pub accounts: Vec<u64>,
}

/// Removes a member from a group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RemoveGroupMember {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The account to remove (an account that is not a member is unchanged).
    #[prost(uint64, tag = "2")]
    pub account: u64,
}

/// Renames a group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RenameGroup {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The new name (rules as in [`CreateGroup::name`]).
    #[prost(string, tag = "2")]
    pub name: String,
}

/// Makes a member an admin, or a plain member.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SetGroupAdmin {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The member.
    #[prost(uint64, tag = "2")]
    pub account: u64,
    /// Admin (true) or plain member (false). The last admin cannot be made a plain member
    /// (`LastGroupAdmin`).
    #[prost(bool, tag = "3")]
    pub admin: bool,
}

/// Asks for a page of the asker's groups.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ListGroups {
    /// Groups with a greater id are listed (0: from the first).
    #[prost(uint64, tag = "1")]
    pub after_group: u64,
    /// At most this many (0 or more than `GROUPS_PER_PAGE_MAX`: `GROUPS_PER_PAGE_MAX`).
    #[prost(uint32, tag = "2")]
    pub limit: u32,
}

/// A member of a group.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct GroupMemberInfo {
    /// The member's account id.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// Whether the member is an admin.
    #[prost(bool, tag = "2")]
    pub admin: bool,
}

/// A group as the directory knows it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupInfo {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The group's chat id (16 bytes, [`ChatId::group`](crate::ids::ChatId::group)).
    #[prost(bytes = "vec", tag = "2")]
    pub chat: Vec<u8>,
    /// The group's name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// The group's version: one more for every change (created, members, admins, name,
    /// home). Later group envelopes name the version they were encrypted for.
    #[prost(uint64, tag = "4")]
    pub version: u64,
    /// The group's home region (its creator's home region).
    #[prost(uint32, tag = "5")]
    pub home_region: u32,
    /// The home-region epoch (bumped on home moves).
    #[prost(uint64, tag = "6")]
    pub epoch: u64,
    /// The members in account id order (empty in a `GroupList`: get the group for them).
    #[prost(message, repeated, tag = "7")]
    pub members: Vec<GroupMemberInfo>,
    /// How many members the group has.
    #[prost(uint32, tag = "8")]
    pub member_count: u32,
}

/// A page of the asker's groups.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupList {
    /// The groups in id order, without their members.
    #[prost(message, repeated, tag = "1")]
    pub groups: Vec<GroupInfo>,
    /// The `after_group` of the next page; 0 when this page is the last.
    #[prost(uint64, tag = "2")]
    pub next_after_group: u64,
}

/// A group command on behalf of an account (edge → home region → directory writer).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ForGroup {
    /// The account that acts: the authenticated device's, set by the edge.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// The command.
    #[prost(message, required, tag = "2")]
    pub command: GroupCommand,
}

/// A [`GroupCommand`] whose ids, names and lists were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupAction {
    /// Create a group named `name` with the asker and `members`.
    Create {
        /// The name (checked).
        name: String,
        /// The other first members, sorted and unique, without zero (may hold the asker).
        members: Vec<AccountId>,
        /// The client's id for this creation.
        request_id: [u8; GROUP_REQUEST_ID_BYTES],
    },
    /// Add `accounts` to `group`.
    Add {
        /// The group.
        group: GroupId,
        /// The accounts, sorted and unique, without zero; at least one.
        accounts: Vec<AccountId>,
    },
    /// Remove `account` from `group`.
    Remove {
        /// The group.
        group: GroupId,
        /// The member.
        account: AccountId,
    },
    /// Leave `group`.
    Leave {
        /// The group.
        group: GroupId,
    },
    /// Rename `group`.
    Rename {
        /// The group.
        group: GroupId,
        /// The new name (checked).
        name: String,
    },
    /// Make `account` an admin of `group` or a plain member.
    SetAdmin {
        /// The group.
        group: GroupId,
        /// The member.
        account: AccountId,
        /// Admin or plain member.
        admin: bool,
    },
    /// Read `group`.
    Get {
        /// The group.
        group: GroupId,
    },
    /// List the asker's groups after `after`.
    List {
        /// List groups after this one (`None`: from the first).
        after: Option<GroupId>,
        /// At most this many, 1..=`GROUPS_PER_PAGE_MAX`.
        limit: u32,
    },
}

impl GroupCommand {
    /// Checks what a server can check without the directory: ids are non-zero, names follow
    /// [`validate_group_name`], lists are within `GROUP_MEMBERS_MAX`.
    pub fn parse(&self) -> Result<GroupAction, ProtoError> {
        use group_command::Command;
        let Some(command) = &self.command else {
            return Err(ProtoError::new(
                crate::ErrorCode::UnsupportedRequest,
                "an empty group command, or a kind this server does not know (it is older)",
            ));
        };
        Ok(match command {
            Command::Create(create) => {
                validate_group_name(&create.name)?;
                // The asker is a member too.
                if create.members.len() >= GROUP_MEMBERS_MAX {
                    return Err(group_too_large(create.members.len() + 1));
                }
                let request_id =
                    <[u8; GROUP_REQUEST_ID_BYTES]>::try_from(create.request_id.as_slice())
                        .map_err(|_| {
                            ProtoError::invalid(format!(
                                "a group's request id is {GROUP_REQUEST_ID_BYTES} bytes"
                            ))
                        })?;
                GroupAction::Create {
                    name: create.name.clone(),
                    members: accounts(&create.members)?,
                    request_id,
                }
            }
            Command::Add(add) => {
                if add.accounts.len() > GROUP_MEMBERS_MAX {
                    return Err(group_too_large(add.accounts.len()));
                }
                let accounts = accounts(&add.accounts)?;
                if accounts.is_empty() {
                    return Err(ProtoError::invalid("no account to add"));
                }
                GroupAction::Add {
                    group: group_id(add.group)?,
                    accounts,
                }
            }
            Command::Remove(remove) => GroupAction::Remove {
                group: group_id(remove.group)?,
                account: account_id(remove.account)?,
            },
            Command::Leave(group) => GroupAction::Leave {
                group: group_id(group.group)?,
            },
            Command::Rename(rename) => {
                validate_group_name(&rename.name)?;
                GroupAction::Rename {
                    group: group_id(rename.group)?,
                    name: rename.name.clone(),
                }
            }
            Command::SetAdmin(set) => GroupAction::SetAdmin {
                group: group_id(set.group)?,
                account: account_id(set.account)?,
                admin: set.admin,
            },
            Command::Get(group) => GroupAction::Get {
                group: group_id(group.group)?,
            },
            Command::List(list) => GroupAction::List {
                after: (list.after_group != 0).then_some(GroupId(list.after_group)),
                limit: match list.limit {
                    0 => GROUPS_PER_PAGE_MAX,
                    limit => limit.min(GROUPS_PER_PAGE_MAX),
                },
            },
        })
    }
}

/// Checks a group name: 1 to `GROUP_NAME_BYTES_MAX` bytes of UTF-8 (any script), no control
/// characters (no line breaks or terminal escapes in a name shown to people).
pub fn validate_group_name(name: &str) -> Result<(), ProtoError> {
    if name.len() > GROUP_NAME_BYTES_MAX {
        return Err(ProtoError::new(
            crate::ErrorCode::TooLarge,
            format!(
                "a group name of {} bytes is longer than {GROUP_NAME_BYTES_MAX}",
                name.len()
            ),
        ));
    }
    if name.is_empty() || name.trim().is_empty() {
        return Err(ProtoError::invalid("a group name cannot be empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(ProtoError::invalid(
            "a group name cannot hold control characters",
        ));
    }
    Ok(())
}
