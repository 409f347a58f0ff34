//! Groups: the directory writer's decisions on group commands, as one function over one storage
//! transaction (like [`crate::core`]: no socket, no clock, no randomness of its own).
//!
//! A group is a directory record (`fdb_layers::directory`, groups), so only the directory
//! writer changes or reads it; a region that is not the writer forwards the edge's
//! [`wire::ForGroup`] there unchanged (the service's `to_writer`). The account that acts comes
//! from the device's authenticated session (the edge sets it), never from the command.
//!
//! The rules, checked here before the layer is asked:
//! - the acting account exists, and so does every account to add (`UnknownAccount`);
//! - create: the actor is the first member and an admin; the group's home is the actor's home
//!   region;
//! - add, remove, rename, set admin: admins only (`NotGroupAdmin`), except what only lowers
//!   the actor's own power: removing itself is leaving, and any member may make itself a plain
//!   member (both are what a retried commit of the same request meets, too);
//! - get: members only; to a non-member a group is indistinguishable from an unknown one
//!   (`UnknownGroup`); list: the actor's own groups;
//! - leave: answered with only the group's id and chat id (the actor sees nothing more of it),
//!   the same when it was not a member, so a retried leave succeeds; the layer promotes the
//!   lowest remaining member when the last admin leaves, and refuses to demote the last one
//!   (`LastGroupAdmin`).
//!
//! Every refusal is decided before anything is written, so a refused command changes nothing.
//! Changes carry the request's [`IdempotencyKey`] (a commit retried after an unknown result
//! answers as it did) and a creation its client's request id (a request sent again finds its
//! group).

use fdb_layers::keys::IdempotencyKey;
use fdb_layers::{Transaction, directory};
use relay_proto::limits::GROUP_MEMBERS_MAX;
use relay_proto::wire::{self, GroupAction};
use relay_proto::{AccountId, ChatId, ErrorCode, GroupId, ProtoError};

use crate::core::{Effects, Outcome};

/// What a group command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// One group (every command but `List`).
    Group(wire::GroupInfo),
    /// A page of the actor's groups.
    Groups(wire::GroupList),
}

/// Runs `action` for `actor` at the directory writer, in one transaction.
pub async fn group_command(
    tx: &Transaction,
    actor: AccountId,
    action: &GroupAction,
    idempotency: &IdempotencyKey,
) -> Outcome<Answer> {
    let Some(actor_record) = directory::account_by_id(tx, actor).await? else {
        return refuse(
            ErrorCode::UnknownAccount,
            format!("account {actor} does not exist"),
        );
    };
    match action {
        GroupAction::Create {
            name,
            members,
            request_id,
        } => {
            if let Err(error) = accounts_exist(tx, members).await? {
                return Ok(Err(error));
            }
            let new = directory::NewGroup {
                owner: actor,
                name,
                home_region: actor_record.home_region,
                members,
                request_id: *request_id,
            };
            match directory::create_group(tx, &new, idempotency).await? {
                Ok(group) => answer_group(tx, group).await,
                Err(directory::TooManyMembers { members }) => refuse(
                    ErrorCode::GroupFull,
                    format!("{members} members is more than a group's {GROUP_MEMBERS_MAX}"),
                ),
            }
        }
        GroupAction::Add { group, accounts } => {
            if let Err(error) = admin_of(tx, *group, actor).await? {
                return Ok(Err(error));
            }
            if let Err(error) = accounts_exist(tx, accounts).await? {
                return Ok(Err(error));
            }
            // Counted before anything is written, so a group that cannot take them all takes
            // none.
            let mut joining = 0u64;
            for &account in accounts {
                if directory::member(tx, *group, account).await?.is_none() {
                    joining += 1;
                }
            }
            let members = directory::member_count(tx, *group).await?;
            if members + joining > GROUP_MEMBERS_MAX as u64 {
                return refuse(
                    ErrorCode::GroupFull,
                    format!(
                        "{group} has {members} members: {joining} more is more than a group's \
                         {GROUP_MEMBERS_MAX}"
                    ),
                );
            }
            for &account in accounts {
                let change = directory::add_member(tx, *group, account, idempotency).await?;
                if let Err(error) = changed(*group, account, change) {
                    return Ok(Err(error));
                }
            }
            answer_group(tx, *group).await
        }
        GroupAction::Remove { group, account } if *account == actor => {
            leave(tx, *group, actor, idempotency).await
        }
        GroupAction::Remove { group, account } => {
            if let Err(error) = admin_of(tx, *group, actor).await? {
                return Ok(Err(error));
            }
            let change = directory::remove_member(tx, *group, *account, idempotency).await?;
            if let Err(error) = changed(*group, *account, change) {
                return Ok(Err(error));
            }
            answer_group(tx, *group).await
        }
        GroupAction::Leave { group } => leave(tx, *group, actor, idempotency).await,
        GroupAction::Rename { group, name } => {
            if let Err(error) = admin_of(tx, *group, actor).await? {
                return Ok(Err(error));
            }
            let change = directory::rename_group(tx, *group, name, idempotency).await?;
            if let Err(error) = changed(*group, actor, change) {
                return Ok(Err(error));
            }
            answer_group(tx, *group).await
        }
        GroupAction::SetAdmin {
            group,
            account,
            admin,
        } => {
            let stepping_down = *account == actor && !*admin;
            let allowed = if stepping_down {
                member_of(tx, *group, actor).await?.map(|_| ())
            } else {
                admin_of(tx, *group, actor).await?
            };
            if let Err(error) = allowed {
                return Ok(Err(error));
            }
            let change = directory::set_admin(tx, *group, *account, *admin, idempotency).await?;
            if let Err(error) = changed(*group, *account, change) {
                return Ok(Err(error));
            }
            answer_group(tx, *group).await
        }
        GroupAction::Get { group } => {
            if let Err(error) = member_of(tx, *group, actor).await? {
                return Ok(Err(error));
            }
            answer_group(tx, *group).await
        }
        GroupAction::List { after, limit } => {
            let limit = usize::try_from(*limit).unwrap_or(usize::MAX);
            let groups = directory::groups_of(tx, actor, *after, limit).await?;
            let mut page = wire::GroupList {
                groups: Vec::with_capacity(groups.len()),
                next_after_group: 0,
            };
            for &group in &groups {
                if let Some(info) = group_info(tx, group, false).await? {
                    page.groups.push(info);
                }
            }
            if groups.len() == limit
                && let Some(last) = groups.last()
            {
                page.next_after_group = last.0;
            }
            Ok(Ok((Answer::Groups(page), Effects::default())))
        }
    }
}

/// The wire form of `group` as the directory holds it now, with its members when
/// `with_members`; `None` when there is no such group.
pub async fn group_info(
    tx: &Transaction,
    group: GroupId,
    with_members: bool,
) -> Result<Option<wire::GroupInfo>, fdb_layers::StoreError> {
    let Some(record) = directory::group(tx, group).await? else {
        return Ok(None);
    };
    let members = if with_members {
        directory::group_members(tx, group)
            .await?
            .into_iter()
            .map(|member| wire::GroupMemberInfo {
                account: member.account.0,
                admin: member.admin,
            })
            .collect()
    } else {
        Vec::new()
    };
    let member_count = directory::member_count(tx, group).await?;
    Ok(Some(wire::GroupInfo {
        group: group.0,
        chat: ChatId::group(group).0.to_vec(),
        name: record.name,
        version: directory::group_version(tx, group).await?,
        home_region: record.home_region.0,
        epoch: record.epoch,
        members,
        member_count: u32::try_from(member_count).unwrap_or(u32::MAX),
    }))
}

/// The actor leaves `group`: answered with the group's id and chat id only, whether or not it
/// was a member (and whether or not the group exists), so nothing is learnt by leaving.
async fn leave(
    tx: &Transaction,
    group: GroupId,
    actor: AccountId,
    idempotency: &IdempotencyKey,
) -> Outcome<Answer> {
    if directory::member(tx, group, actor).await?.is_some() {
        let change = directory::remove_member(tx, group, actor, idempotency).await?;
        if let Err(error) = changed(group, actor, change) {
            return Ok(Err(error));
        }
    }
    let left = wire::GroupInfo {
        group: group.0,
        chat: ChatId::group(group).0.to_vec(),
        ..wire::GroupInfo::default()
    };
    Ok(Ok((Answer::Group(left), Effects::default())))
}

async fn answer_group(tx: &Transaction, group: GroupId) -> Outcome<Answer> {
    match group_info(tx, group, true).await? {
        Some(info) => Ok(Ok((Answer::Group(info), Effects::default()))),
        None => refuse(ErrorCode::UnknownGroup, unknown_group(group)),
    }
}

/// `Ok` when `actor` is a member of `group`; to a non-member the group is unknown.
async fn member_of(
    tx: &Transaction,
    group: GroupId,
    actor: AccountId,
) -> Result<Result<directory::GroupMember, ProtoError>, fdb_layers::StoreError> {
    Ok(directory::member(tx, group, actor)
        .await?
        .ok_or_else(|| ProtoError::new(ErrorCode::UnknownGroup, unknown_group(group))))
}

/// `Ok` when `actor` is an admin of `group`.
async fn admin_of(
    tx: &Transaction,
    group: GroupId,
    actor: AccountId,
) -> Result<Result<(), ProtoError>, fdb_layers::StoreError> {
    Ok(member_of(tx, group, actor).await?.and_then(|member| {
        if member.admin {
            Ok(())
        } else {
            Err(ProtoError::new(
                ErrorCode::NotGroupAdmin,
                format!("only an admin of {group} can do this"),
            ))
        }
    }))
}

/// `Ok` when every account exists (at most `GROUP_MEMBERS_MAX` point reads: a command's lists
/// are bounded by the protocol).
async fn accounts_exist(
    tx: &Transaction,
    accounts: &[AccountId],
) -> Result<Result<(), ProtoError>, fdb_layers::StoreError> {
    for &account in accounts {
        if directory::account_by_id(tx, account).await?.is_none() {
            return Ok(Err(ProtoError::new(
                ErrorCode::UnknownAccount,
                format!("account {account} does not exist"),
            )));
        }
    }
    Ok(Ok(()))
}

/// A layer's answer to a change as the peer sees it: done (or nothing to do), or a refusal.
fn changed(
    group: GroupId,
    account: AccountId,
    change: directory::GroupChange,
) -> Result<(), ProtoError> {
    use directory::GroupChange;
    match change {
        GroupChange::Changed { .. } | GroupChange::Unchanged { .. } => Ok(()),
        GroupChange::UnknownGroup => Err(ProtoError::new(
            ErrorCode::UnknownGroup,
            unknown_group(group),
        )),
        GroupChange::Full { members } => Err(ProtoError::new(
            ErrorCode::GroupFull,
            format!("{group} has {members} members, a group's most"),
        )),
        GroupChange::NotAMember => Err(ProtoError::new(
            ErrorCode::UnknownAccount,
            format!("account {account} is not a member of {group}"),
        )),
        GroupChange::LastAdmin => Err(ProtoError::new(
            ErrorCode::LastGroupAdmin,
            format!(
                "account {account} is the only admin of {group}: make another member an admin \
                 first"
            ),
        )),
    }
}

fn unknown_group(group: GroupId) -> String {
    format!("unknown {group}")
}

fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Outcome<T> {
    Ok(Err(ProtoError::new(code, message)))
}

#[cfg(test)]
mod tests {
    use fdb_layers::{Database, EmbeddedOptions};
    use relay_proto::RegionId;
    use relay_proto::wire::group_command::Command;

    use super::*;

    const NOW_MS: u64 = 1_000_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        db: Database,
        /// Accounts 1..=4: ada and bea homed in region 1, cy and dee in region 2.
        accounts: [AccountId; 4],
        next_key: std::cell::Cell<u64>,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dir.path().join("region.redb"), EmbeddedOptions::default())
            .expect("open");
        let accounts = db
            .transact(|tx| async move {
                let mut ids = [AccountId(0); 4];
                for (index, (name, home)) in [("ada", 1), ("bea", 1), ("cy", 2), ("dee", 2)]
                    .into_iter()
                    .enumerate()
                {
                    let record = directory::create_account(
                        &tx,
                        name,
                        RegionId(home),
                        &key(index as u64 + 1),
                    )
                    .await?
                    .expect("name free");
                    ids[index] = record.id;
                }
                Ok(ids)
            })
            .await
            .expect("accounts");
        Fixture {
            _dir: dir,
            db,
            accounts,
            next_key: std::cell::Cell::new(100),
        }
    }

    fn key(counter: u64) -> IdempotencyKey {
        let mut nonce = [0u8; 16];
        nonce[8..].copy_from_slice(&counter.to_be_bytes());
        IdempotencyKey::new(NOW_MS, nonce)
    }

    impl Fixture {
        /// Runs `command` as `actor` under a new idempotency key.
        async fn run(&self, actor: AccountId, command: Command) -> Result<Answer, ProtoError> {
            let counter = self.next_key.get();
            self.next_key.set(counter + 1);
            self.run_keyed(actor, command, key(counter)).await
        }

        async fn run_keyed(
            &self,
            actor: AccountId,
            command: Command,
            key: IdempotencyKey,
        ) -> Result<Answer, ProtoError> {
            let action = wire::GroupCommand {
                command: Some(command),
            }
            .parse()?;
            self.db
                .transact(|tx| {
                    let action = action.clone();
                    async move { group_command(&tx, actor, &action, &key).await }
                })
                .await
                .expect("store")
                .map(|(answer, _)| answer)
        }

        async fn group(&self, actor: AccountId, command: Command) -> wire::GroupInfo {
            match self.run(actor, command).await {
                Ok(Answer::Group(info)) => info,
                other => panic!("expected a group, got {other:?}"),
            }
        }

        async fn refused(&self, actor: AccountId, command: Command) -> ErrorCode {
            match self.run(actor, command).await {
                Err(error) => error.code,
                Ok(answer) => panic!("expected a refusal, got {answer:?}"),
            }
        }
    }

    fn create(name: &str, members: &[AccountId], request: u8) -> Command {
        Command::Create(wire::CreateGroup {
            name: name.into(),
            members: members.iter().map(|account| account.0).collect(),
            request_id: vec![request; 16],
        })
    }

    fn get(group: u64) -> Command {
        Command::Get(wire::GroupRef { group })
    }

    fn roles(info: &wire::GroupInfo) -> Vec<(u64, bool)> {
        info.members
            .iter()
            .map(|member| (member.account, member.admin))
            .collect()
    }

    #[tokio::test]
    async fn a_creator_makes_a_group_its_members_can_read_and_nobody_else() {
        let fixture = fixture().await;
        let [ada, bea, cy, dee] = fixture.accounts;
        let created = fixture.group(cy, create("trip", &[ada, bea], 1)).await;
        assert_eq!(created.group, 1);
        assert_eq!(created.chat, ChatId::group(GroupId(1)).0.to_vec());
        assert_eq!(created.name, "trip");
        assert_eq!(created.home_region, 2, "the creator's home region");
        assert_eq!((created.version, created.member_count), (1, 3));
        assert_eq!(
            roles(&created),
            [(ada.0, false), (bea.0, false), (cy.0, true)]
        );
        // The client sends its creation again (the answer was lost): the same group.
        let again = fixture.group(cy, create("trip", &[ada, bea], 1)).await;
        assert_eq!(again, created);

        assert_eq!(fixture.group(ada, get(1)).await, created);
        assert_eq!(fixture.refused(dee, get(1)).await, ErrorCode::UnknownGroup);
        assert_eq!(fixture.refused(ada, get(9)).await, ErrorCode::UnknownGroup);
        assert_eq!(
            fixture.refused(ada, create("x", &[AccountId(77)], 2)).await,
            ErrorCode::UnknownAccount
        );
        assert_eq!(
            fixture.refused(AccountId(77), create("x", &[], 3)).await,
            ErrorCode::UnknownAccount,
            "the actor must exist"
        );
        assert_eq!(
            fixture.refused(ada, create("", &[], 4)).await,
            ErrorCode::Malformed
        );

        fixture.group(ada, create("book club", &[], 5)).await;
        let listed = match fixture
            .run(
                ada,
                Command::List(wire::ListGroups {
                    after_group: 0,
                    limit: 1,
                }),
            )
            .await
        {
            Ok(Answer::Groups(list)) => list,
            other => panic!("expected a list, got {other:?}"),
        };
        assert_eq!(listed.groups.len(), 1);
        assert_eq!(listed.groups[0].name, "trip");
        assert!(listed.groups[0].members.is_empty());
        assert_eq!(listed.groups[0].member_count, 3);
        assert_eq!(listed.next_after_group, 1);
        let rest = match fixture
            .run(
                ada,
                Command::List(wire::ListGroups {
                    after_group: 1,
                    limit: 0,
                }),
            )
            .await
        {
            Ok(Answer::Groups(list)) => list,
            other => panic!("expected a list, got {other:?}"),
        };
        let names: Vec<&str> = rest.groups.iter().map(|info| info.name.as_str()).collect();
        assert_eq!((names, rest.next_after_group), (vec!["book club"], 0));
    }

    #[tokio::test]
    async fn admins_change_the_group_and_members_cannot() {
        let fixture = fixture().await;
        let [ada, bea, cy, dee] = fixture.accounts;
        fixture.group(ada, create("team", &[bea], 1)).await;
        let add_cy = || {
            Command::Add(wire::AddGroupMembers {
                group: 1,
                accounts: vec![cy.0],
            })
        };
        let rename = |name: &str| {
            Command::Rename(wire::RenameGroup {
                group: 1,
                name: name.into(),
            })
        };
        let set_admin = |account: AccountId, admin| {
            Command::SetAdmin(wire::SetGroupAdmin {
                group: 1,
                account: account.0,
                admin,
            })
        };
        let remove = |account: AccountId| {
            Command::Remove(wire::RemoveGroupMember {
                group: 1,
                account: account.0,
            })
        };
        for command in [add_cy(), rename("mine"), set_admin(bea, true), remove(ada)] {
            assert_eq!(
                fixture.refused(bea, command).await,
                ErrorCode::NotGroupAdmin
            );
        }
        assert_eq!(
            fixture.refused(dee, add_cy()).await,
            ErrorCode::UnknownGroup,
            "to a non-member the group is unknown"
        );
        let added = fixture.group(ada, add_cy()).await;
        assert_eq!((added.version, added.member_count), (2, 3));
        let again = fixture.group(ada, add_cy()).await;
        assert_eq!(again.version, 2, "adding a member twice changes nothing");
        assert_eq!(
            fixture
                .refused(
                    ada,
                    Command::Add(wire::AddGroupMembers {
                        group: 1,
                        accounts: vec![dee.0, 99],
                    })
                )
                .await,
            ErrorCode::UnknownAccount
        );
        let renamed = fixture.group(ada, rename("the team")).await;
        assert_eq!((renamed.name.as_str(), renamed.version), ("the team", 3));
        assert_eq!(
            fixture.refused(ada, rename("a\nb")).await,
            ErrorCode::Malformed
        );
        assert_eq!(
            fixture.refused(ada, set_admin(ada, false)).await,
            ErrorCode::LastGroupAdmin
        );
        assert_eq!(
            fixture.refused(ada, set_admin(dee, true)).await,
            ErrorCode::UnknownAccount,
            "not a member"
        );
        let promoted = fixture.group(ada, set_admin(bea, true)).await;
        assert_eq!(
            roles(&promoted),
            [(ada.0, true), (bea.0, true), (cy.0, false)]
        );
        // An admin may step down once another admin remains, and then add nobody.
        fixture.group(bea, set_admin(bea, false)).await;
        assert_eq!(
            fixture.refused(bea, add_cy()).await,
            ErrorCode::NotGroupAdmin
        );
        let removed = fixture.group(ada, remove(cy)).await;
        assert_eq!(roles(&removed), [(ada.0, true), (bea.0, false)]);
        assert_eq!(removed.version, 6);
        assert_eq!(fixture.refused(cy, get(1)).await, ErrorCode::UnknownGroup);
    }

    #[tokio::test]
    async fn the_last_admin_leaving_hands_the_group_on() {
        let fixture = fixture().await;
        let [ada, bea, cy, _] = fixture.accounts;
        fixture.group(ada, create("team", &[cy, bea], 1)).await;
        let leave = || Command::Leave(wire::GroupRef { group: 1 });
        let left = fixture.group(ada, leave()).await;
        assert_eq!(
            left,
            wire::GroupInfo {
                group: 1,
                chat: ChatId::group(GroupId(1)).0.to_vec(),
                ..wire::GroupInfo::default()
            },
            "who left sees nothing more"
        );
        // Leaving again (a retried request) answers the same and changes nothing.
        assert_eq!(fixture.group(ada, leave()).await, left);
        let after = fixture.group(bea, get(1)).await;
        assert_eq!(roles(&after), [(bea.0, true), (cy.0, false)]);
        assert_eq!(after.version, 2);
        // Removing oneself is leaving, for a plain member too.
        let removed_self = fixture
            .group(
                cy,
                Command::Remove(wire::RemoveGroupMember {
                    group: 1,
                    account: cy.0,
                }),
            )
            .await;
        assert_eq!(removed_self, left);
        assert_eq!(roles(&fixture.group(bea, get(1)).await), [(bea.0, true)]);
    }

    #[tokio::test]
    async fn a_retried_commit_answers_as_the_first() {
        let fixture = fixture().await;
        let [ada, bea, _, _] = fixture.accounts;
        fixture.group(ada, create("team", &[bea], 1)).await;
        fixture
            .group(
                ada,
                Command::SetAdmin(wire::SetGroupAdmin {
                    group: 1,
                    account: bea.0,
                    admin: true,
                }),
            )
            .await;
        // Ada steps down; the commit is retried after an unknown result (the same key): it
        // answers as it did, though Ada is no admin any more.
        let step_down = || {
            Command::SetAdmin(wire::SetGroupAdmin {
                group: 1,
                account: ada.0,
                admin: false,
            })
        };
        let first = fixture.run_keyed(ada, step_down(), key(7)).await;
        let retried = fixture.run_keyed(ada, step_down(), key(7)).await;
        assert_eq!(first, retried);
        match retried {
            Ok(Answer::Group(info)) => {
                assert_eq!(roles(&info), [(ada.0, false), (bea.0, true)]);
                assert_eq!(info.version, 3);
            }
            other => panic!("expected a group, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_full_group_takes_none_of_a_batch() {
        let fixture = fixture().await;
        let [ada, bea, cy, dee] = fixture.accounts;
        fixture.group(ada, create("big", &[], 1)).await;
        // Stand in for a group one short of full without creating a thousand accounts.
        fixture
            .db
            .transact(|tx| async move {
                for account in 1_000..1_000 + GROUP_MEMBERS_MAX as u64 - 2 {
                    directory::add_member(&tx, GroupId(1), AccountId(account), &key(account))
                        .await?;
                }
                Ok(())
            })
            .await
            .expect("fill");
        let add = |accounts: &[AccountId]| {
            Command::Add(wire::AddGroupMembers {
                group: 1,
                accounts: accounts.iter().map(|account| account.0).collect(),
            })
        };
        assert_eq!(
            fixture.refused(ada, add(&[bea, cy])).await,
            ErrorCode::GroupFull
        );
        let info = fixture.group(ada, get(1)).await;
        assert_eq!(info.member_count as usize, GROUP_MEMBERS_MAX - 1);
        let full = fixture.group(ada, add(&[dee])).await;
        assert_eq!(full.member_count as usize, GROUP_MEMBERS_MAX);
        assert_eq!(full.members.len(), GROUP_MEMBERS_MAX);
    }
}
