//! Group membership for an open [`Device`]: create a group, add and remove members, leave,
//! rename, make admins, read a group and list the device's groups. The directory writer keeps
//! the membership (metadata only; see `home-region/src/groups.rs` for its rules); this module
//! turns the names people type into account ids and the directory's answers back into names.
//!
//! Every command is safe to retry, so each runs up to [`GROUP_COMMAND_ATTEMPTS_MAX`] times on a
//! dropped connection or a region that is briefly unreachable: a creation carries a request id
//! drawn once, with which the directory answers a retry with the group the first attempt made;
//! the other commands are idempotent by nature (adding a member twice, leaving twice). A
//! refusal a retry cannot change (not an admin, an unknown group or name, a full group) is
//! returned at once as [`ClientError::Remote`] with its typed code.
//!
//! Every answer that names the members is recorded as the device's view of the group (see
//! [`crate::store::group_chat`]), which group messages are encrypted for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use relay_proto::limits::GROUP_REQUEST_ID_BYTES;
use relay_proto::wire::{
    AddGroupMembers, CreateGroup, GroupInfo, GroupRef, ListGroups, RemoveGroupMember, RenameGroup,
    SetGroupAdmin, group_command, validate_group_name,
};
use relay_proto::{AccountId, ErrorCode};
use tokio::task::JoinSet;

use crate::connection::{EdgeConnection, GroupAnswer};
use crate::device::Device;
use crate::error::{ClientError, Result};
use crate::limits::{
    GROUP_COMMAND_ATTEMPTS_MAX, GROUP_COMMAND_RETRY_DELAY_MS, GROUP_NAME_LOOKUPS_IN_FLIGHT_MAX,
};

/// A member of a group, with the name the directory gives its account.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupMember {
    /// The member's account id.
    pub account: u64,
    /// The account's name.
    pub name: String,
    /// Whether the member is an admin.
    pub admin: bool,
}

/// A group as the directory knows it, members named.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Group {
    /// The group's id (what the CLI's group commands take).
    pub id: u64,
    /// The group's name.
    pub name: String,
    /// One more for every change of the group.
    pub version: u64,
    /// The group's home region.
    pub home_region: u32,
    /// How many members it has.
    pub member_count: u32,
    /// The members in account id order (empty in [`Device::groups`]' list).
    pub members: Vec<GroupMember>,
}

impl Device {
    /// Creates a group named `name` with this account (its first admin) and the accounts named
    /// in `members`.
    pub async fn create_group(&self, name: &str, members: &[&str]) -> Result<Group> {
        check_name(name)?;
        let mut request_id = [0u8; GROUP_REQUEST_ID_BYTES];
        rand::rng().fill_bytes(&mut request_id);
        let connection = self.request_connection().await?;
        let members = account_ids(&connection, members).await?;
        let command = group_command::Command::Create(CreateGroup {
            name: name.into(),
            members: members.iter().map(|account| account.0).collect(),
            request_id: request_id.to_vec(),
        });
        self.named_group(command).await
    }

    /// (Admins) adds the accounts named in `members` to group `group`.
    pub async fn add_group_members(&self, group: u64, members: &[&str]) -> Result<Group> {
        let connection = self.request_connection().await?;
        let accounts = account_ids(&connection, members).await?;
        let command = group_command::Command::Add(AddGroupMembers {
            group,
            accounts: accounts.iter().map(|account| account.0).collect(),
        });
        self.named_group(command).await
    }

    /// (Admins) removes the account named `member` from group `group`; naming this account
    /// leaves the group.
    pub async fn remove_group_member(&self, group: u64, member: &str) -> Result<Group> {
        let connection = self.request_connection().await?;
        let account = account_ids(&connection, &[member]).await?[0];
        let command = group_command::Command::Remove(RemoveGroupMember {
            group,
            account: account.0,
        });
        self.named_group(command).await
    }

    /// Leaves group `group` (if the last admin leaves, the member with the lowest account id
    /// becomes an admin). Leaving a group this account is not in succeeds too.
    pub async fn leave_group(&self, group: u64) -> Result<()> {
        self.group_command(group_command::Command::Leave(GroupRef { group }))
            .await
            .map(|_| ())
    }

    /// (Admins) renames group `group`.
    pub async fn rename_group(&self, group: u64, name: &str) -> Result<Group> {
        check_name(name)?;
        let command = group_command::Command::Rename(RenameGroup {
            group,
            name: name.into(),
        });
        self.named_group(command).await
    }

    /// (Admins) makes the member named `member` an admin of group `group` (`admin`), or a plain
    /// member. Any member may step down itself, unless it is the last admin.
    pub async fn set_group_admin(&self, group: u64, member: &str, admin: bool) -> Result<Group> {
        let connection = self.request_connection().await?;
        let account = account_ids(&connection, &[member]).await?[0];
        let command = group_command::Command::SetAdmin(SetGroupAdmin {
            group,
            account: account.0,
            admin,
        });
        self.named_group(command).await
    }

    /// (Members) group `group` with its members.
    pub async fn group(&self, group: u64) -> Result<Group> {
        self.named_group(group_command::Command::Get(GroupRef { group }))
            .await
    }

    /// Every group this account is a member of, in id order, without their members.
    pub async fn groups(&self) -> Result<Vec<Group>> {
        let mut groups = Vec::new();
        let mut after_group = 0;
        loop {
            let command = group_command::Command::List(ListGroups {
                after_group,
                limit: 0,
            });
            let page = match self.group_command(command).await? {
                GroupAnswer::Groups(page) => page,
                GroupAnswer::Group(_) => {
                    return Err(ClientError::UnexpectedResponse(
                        "a group where a list of groups was due".into(),
                    ));
                }
            };
            groups.extend(page.groups.into_iter().map(|info| unnamed(&info)));
            // The directory pages forward; a page that would not is a server bug, not a loop.
            if page.next_after_group == 0 || page.next_after_group <= after_group {
                return Ok(groups);
            }
            after_group = page.next_after_group;
        }
    }

    /// Runs `command` and names the members of the group it answers with.
    async fn named_group(&self, command: group_command::Command) -> Result<Group> {
        let info = match self.group_command(command).await? {
            GroupAnswer::Group(info) => info,
            GroupAnswer::Groups(_) => {
                return Err(ClientError::UnexpectedResponse(
                    "a list of groups where one group was due".into(),
                ));
            }
        };
        let connection = self.request_connection().await?;
        let accounts: Vec<AccountId> = info
            .members
            .iter()
            .map(|member| AccountId(member.account))
            .collect();
        let contacts = account_names(&connection, &accounts).await?;
        // The membership as the directory answered it is what the next group message is
        // encrypted for (an admin who removed a member rotates before their next message), and
        // the members' names are what this device shows for them (`relay info`).
        if info.version > 0 && !info.members.is_empty() {
            self.learn_group(info.clone(), contacts.values().cloned().collect())
                .await?;
        }
        let names: BTreeMap<AccountId, String> = contacts
            .into_iter()
            .map(|(account, contact)| (account, contact.name))
            .collect();
        let mut group = unnamed(&info);
        group.members = info
            .members
            .iter()
            .map(|member| GroupMember {
                account: member.account,
                name: names
                    .get(&AccountId(member.account))
                    .cloned()
                    .unwrap_or_else(|| format!("account {}", member.account)),
                admin: member.admin,
            })
            .collect();
        Ok(group)
    }

    /// Runs `command`, again on a new connection after a failure a retry can mend.
    async fn group_command(&self, command: group_command::Command) -> Result<GroupAnswer> {
        let mut last_error = None;
        for attempt in 0..GROUP_COMMAND_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(GROUP_COMMAND_RETRY_DELAY_MS)).await;
            }
            let answer = match self.request_connection().await {
                Ok(connection) => connection.group_command(command.clone()).await,
                Err(error) => Err(error),
            };
            match answer {
                Err(error) if error.is_retryable() || error.needs_reconnect() => {
                    last_error = Some(error);
                }
                answer => return answer,
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::Network("no attempt ran".into())))
    }
}

/// A group name the directory would refuse is refused here, with no round trip.
fn check_name(name: &str) -> Result<()> {
    validate_group_name(name).map_err(|error| ClientError::Invalid(error.message))
}

/// The group of `info` with no members named.
fn unnamed(info: &GroupInfo) -> Group {
    Group {
        id: info.group,
        name: info.name.clone(),
        version: info.version,
        home_region: info.home_region,
        member_count: info.member_count,
        members: Vec::new(),
    }
}

/// Runs one lookup, again after a refusal the edge says a retry can outlast (an edge that
/// throttles a burst of lookups names when to come back), up to [`GROUP_COMMAND_ATTEMPTS_MAX`]
/// times at least [`GROUP_COMMAND_RETRY_DELAY_MS`] apart. A command names up to
/// [`GROUP_NAME_LOOKUPS_IN_FLIGHT_MAX`] accounts at once, before and after its answer, which is
/// more than a tight per-connection budget takes in one burst: without this, such a command
/// failed every time it was tried.
async fn retried<T, Lookup, Answer>(mut lookup: Lookup) -> Result<T>
where
    Lookup: FnMut() -> Answer,
    Answer: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 1;
    loop {
        match lookup().await {
            Err(ClientError::Remote(refusal))
                if refusal.code.is_retryable() && attempt < GROUP_COMMAND_ATTEMPTS_MAX =>
            {
                let delay_ms = refusal.retry_after_ms.max(GROUP_COMMAND_RETRY_DELAY_MS);
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                attempt += 1;
            }
            answer => return answer,
        }
    }
}

/// The account ids of `names`, in their order; a name no account has is
/// [`ClientError::UnknownPeer`], before any group changes.
pub(crate) async fn account_ids(
    connection: &Arc<EdgeConnection>,
    names: &[&str],
) -> Result<Vec<AccountId>> {
    let mut ids = Vec::with_capacity(names.len());
    for chunk in names.chunks(GROUP_NAME_LOOKUPS_IN_FLIGHT_MAX) {
        let mut lookups = JoinSet::new();
        for (index, name) in chunk.iter().enumerate() {
            let connection = connection.clone();
            let name = (*name).to_owned();
            lookups.spawn(async move {
                let info = retried(|| connection.lookup_name(&name)).await;
                (index, info)
            });
        }
        let mut found = vec![AccountId(0); chunk.len()];
        while let Some(joined) = lookups.join_next().await {
            let (index, info) = joined
                .map_err(|error| ClientError::Invalid(format!("a name lookup stopped: {error}")))?;
            found[index] = match info {
                Ok(info) => AccountId(info.account),
                Err(ClientError::Remote(error)) if error.code == ErrorCode::UnknownAccount => {
                    return Err(ClientError::UnknownPeer(chunk[index].to_owned()));
                }
                Err(error) => return Err(error),
            };
        }
        ids.extend(found);
    }
    Ok(ids)
}

/// The names of `accounts`, looked up at most [`GROUP_NAME_LOOKUPS_IN_FLIGHT_MAX`] at a time.
pub(crate) async fn account_names(
    connection: &Arc<EdgeConnection>,
    accounts: &[AccountId],
) -> Result<BTreeMap<AccountId, crate::store::Contact>> {
    let mut names = BTreeMap::new();
    for chunk in accounts.chunks(GROUP_NAME_LOOKUPS_IN_FLIGHT_MAX) {
        let mut lookups = JoinSet::new();
        for account in chunk {
            let connection = connection.clone();
            let account = *account;
            lookups.spawn(async move {
                let info = retried(|| connection.lookup_account(account)).await;
                (account, info)
            });
        }
        while let Some(joined) = lookups.join_next().await {
            let (account, info) = joined.map_err(|error| {
                ClientError::Invalid(format!("an account lookup stopped: {error}"))
            })?;
            let info = info?;
            names.insert(
                account,
                crate::store::Contact {
                    account,
                    name: info.name,
                    region: info.region,
                },
            );
        }
    }
    Ok(names)
}
