//! Group commands reach the directory writer from another region, and group envelopes are
//! checked against the writer's membership: two region services in one process, on loopback
//! QUIC with mutual TLS under a test CA. Region 2 (not the writer) is asked through
//! [`RegionService::handle`], as its edge would ask it, and forwards each command to region 1,
//! which runs it; answers and refusals come back unchanged. For an envelope it asks region 1
//! for the group's members and caches them by version.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use home_region::RegionService;
use relay_proto::wire::{
    self, ForGroup, GroupCommand, RegionRequest, RegionResponse, group_command::Command,
    region_request, region_response,
};
use relay_proto::{AccountId, ChatId, ErrorCode, GroupId};

mod support;

use support::{OTHER, TestCa, WRITER, region};

fn ask(account: u64, command: Command) -> RegionRequest {
    RegionRequest {
        body: Some(region_request::Body::Group(ForGroup {
            account,
            command: GroupCommand {
                command: Some(command),
            },
        })),
    }
}

fn group_of(response: RegionResponse) -> wire::GroupInfo {
    match response.body {
        Some(region_response::Body::Group(info)) => info,
        other => panic!("expected a group, got {other:?}"),
    }
}

fn error_of(response: RegionResponse) -> ErrorCode {
    match response.body {
        Some(region_response::Body::Error(error)) => ErrorCode::from_u32(error.code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_forwards_group_commands_to_the_directory_writer() {
    let ca = TestCa::new();
    let addresses = Arc::new(Mutex::new(BTreeMap::new()));
    let (writer, writer_db) = region(WRITER, &ca, &addresses);
    let (other, other_db) = region(OTHER, &ca, &addresses);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(writer.clone().run(async {
        let _ = stopped.await;
    }));

    // Accounts live at the writer: ada homed in region 2, bob in region 1.
    let key = |counter: u64| fdb_layers::keys::IdempotencyKey::new(1, [counter as u8; 16]);
    let (ada, bob) = writer_db
        .transact(|tx| async move {
            let ada = fdb_layers::directory::create_account(&tx, "ada", OTHER, &key(1)).await?;
            let bob = fdb_layers::directory::create_account(&tx, "bob", WRITER, &key(2)).await?;
            Ok((ada.expect("free").id, bob.expect("free").id))
        })
        .await
        .expect("accounts");

    let created = group_of(
        other
            .handle(ask(
                ada.0,
                Command::Create(wire::CreateGroup {
                    name: "across".into(),
                    members: vec![bob.0],
                    request_id: vec![5; 16],
                }),
            ))
            .await,
    );
    assert_eq!(created.group, 1);
    assert_eq!(created.chat, ChatId::group(GroupId(1)).0.to_vec());
    assert_eq!(created.home_region, OTHER.0, "the creator's home region");
    assert_eq!(created.member_count, 2);

    // The writer stored it; the forwarding region stored nothing of it.
    let (at_writer, at_other) = (
        writer_db
            .transact(|tx| async move { fdb_layers::directory::group(&tx, GroupId(1)).await })
            .await
            .expect("read"),
        other_db
            .transact(|tx| async move { fdb_layers::directory::group(&tx, GroupId(1)).await })
            .await
            .expect("read"),
    );
    assert_eq!(at_writer.map(|record| record.name), Some("across".into()));
    assert_eq!(at_other, None);

    // The writer's own members ask it directly; refusals travel back typed.
    let read = group_of(
        writer
            .handle(ask(bob.0, Command::Get(wire::GroupRef { group: 1 })))
            .await,
    );
    assert_eq!(read, created);
    let refused = other
        .handle(ask(
            bob.0,
            Command::Rename(wire::RenameGroup {
                group: 1,
                name: "mine".into(),
            }),
        ))
        .await;
    assert_eq!(error_of(refused), ErrorCode::NotGroupAdmin);
    let malformed = other
        .handle(ask(
            ada.0,
            Command::Rename(wire::RenameGroup {
                group: 1,
                name: String::new(),
            }),
        ))
        .await;
    assert_eq!(error_of(malformed), ErrorCode::Malformed);
    let renamed = group_of(
        other
            .handle(ask(
                ada.0,
                Command::Rename(wire::RenameGroup {
                    group: 1,
                    name: "renamed".into(),
                }),
            ))
            .await,
    );
    assert_eq!((renamed.name.as_str(), renamed.version), ("renamed", 2));

    // With the writer gone, a forwarded command is a typed, retryable refusal.
    let _ = stop.send(());
    serving.await.expect("writer task").expect("writer ran");
    let unavailable = other
        .handle(ask(ada.0, Command::Get(wire::GroupRef { group: 1 })))
        .await;
    assert_eq!(error_of(unavailable), ErrorCode::DirectoryUnavailable);
}

fn committed(response: RegionResponse) -> wire::send_outcome::Outcome {
    match response.body {
        Some(region_response::Body::Committed(outcome)) => outcome.outcome.expect("an outcome"),
        other => panic!("expected a send outcome, got {other:?}"),
    }
}

/// A group message from `sender` at `version`, with an empty entry for each of `to`.
fn group_message(
    group: GroupId,
    version: u64,
    sender: wire::DeviceAddr,
    to: &[wire::DeviceAddr],
    members: &[u64],
    message: u8,
) -> RegionRequest {
    let envelope = wire::Envelope {
        chat: ChatId::group(group).0.to_vec(),
        sender,
        client_message_id: vec![message; 16],
        sender_seq: u64::from(message),
        recipient_accounts: members.to_vec(),
        ciphertexts: to
            .iter()
            .map(|&recipient| wire::DeviceCiphertext {
                recipient,
                message_type: wire::MESSAGE_TYPE_HOLDS_GROUP_SESSION,
                body: Vec::new(),
            })
            .collect(),
        device_seq: 0,
        group: group.0,
        group_version: version,
        kind: wire::EnvelopeKind::Message as i32,
        group_ciphertext: vec![message; 32],
        group_session_id: "session".into(),
        group_prev_seq: u64::from(message) - 1,
    };
    RegionRequest {
        body: Some(region_request::Body::Commit(wire::CommitEnvelope {
            envelope,
            sender_region: OTHER.0,
            routed: Vec::new(),
        })),
    }
}

/// Two regions serving: the writer (region 1) and region 2. ada (two devices) is homed in
/// region 2, bob and cy in region 1 (one device each).
struct TwoRegions {
    writer: RegionService,
    other: RegionService,
    other_db: fdb_layers::Database,
    stop_writer: tokio::sync::oneshot::Sender<()>,
    writer_serving: Serving,
    stop_other: tokio::sync::oneshot::Sender<()>,
    other_serving: Serving,
    ada: AccountId,
    bob: AccountId,
    cy: AccountId,
    ada1: wire::DeviceAddr,
    ada2: wire::DeviceAddr,
    bob1: wire::DeviceAddr,
    cy1: wire::DeviceAddr,
}

type Serving = tokio::task::JoinHandle<Result<(), home_region::RegionError>>;

/// `ada` creates a group with `bob`, through region 2 (`other`): version 1.
async fn create_group(other: &RegionService, ada: AccountId, bob: AccountId) -> GroupId {
    let created = group_of(
        other
            .handle(ask(
                ada.0,
                Command::Create(wire::CreateGroup {
                    name: "across".into(),
                    members: vec![bob.0],
                    request_id: vec![6; 16],
                }),
            ))
            .await,
    );
    assert_eq!(created.version, 1);
    GroupId(created.group)
}

impl TwoRegions {
    async fn start() -> Self {
        let ca = TestCa::new();
        let addresses = Arc::new(Mutex::new(BTreeMap::new()));
        let (writer, writer_db) = region(WRITER, &ca, &addresses);
        let (other, other_db) = region(OTHER, &ca, &addresses);
        let (stop_writer, stopped) = tokio::sync::oneshot::channel::<()>();
        let writer_serving = tokio::spawn(writer.clone().run(async {
            let _ = stopped.await;
        }));
        // Region 2 serves too: the writer tells it when a group it asked about changes.
        let (stop_other, other_stopped) = tokio::sync::oneshot::channel::<()>();
        let other_serving = tokio::spawn(other.clone().run(async {
            let _ = other_stopped.await;
        }));

        // ada (two devices) is homed in region 2, bob and cy in region 1 (one device each). Region
        // 2 holds ada's record and devices, as it would after registering her.
        let key = |counter: u64| fdb_layers::keys::IdempotencyKey::new(1, [counter as u8; 16]);
        let (ada, bob, cy) = writer_db
            .transact(|tx| async move {
                let ada = fdb_layers::directory::create_account(&tx, "ada", OTHER, &key(1)).await?;
                let bob =
                    fdb_layers::directory::create_account(&tx, "bob", WRITER, &key(2)).await?;
                let cy = fdb_layers::directory::create_account(&tx, "cy", WRITER, &key(3)).await?;
                let bob = bob.expect("free").id;
                let cy = cy.expect("free").id;
                fdb_layers::directory::add_device(&tx, bob, &[2; 32], &[2; 32], &key(4)).await?;
                fdb_layers::directory::add_device(&tx, cy, &[3; 32], &[3; 32], &key(5)).await?;
                Ok((ada.expect("free"), bob, cy))
            })
            .await
            .expect("accounts");
        other_db
            .transact(|tx| {
                let ada = ada.clone();
                async move {
                    fdb_layers::directory::put_account(&tx, &ada).await?;
                    for index in 0..2u8 {
                        fdb_layers::directory::add_device(
                            &tx,
                            ada.id,
                            &[index; 32],
                            &[index; 32],
                            &key(10 + u64::from(index)),
                        )
                        .await?;
                    }
                    Ok(())
                }
            })
            .await
            .expect("ada in region 2");
        let ada = ada.id;
        let device = |account: relay_proto::AccountId, device: u32| wire::DeviceAddr {
            account: account.0,
            device,
        };
        let (ada1, ada2, bob1, cy1) = (
            device(ada, 1),
            device(ada, 2),
            device(bob, 1),
            device(cy, 1),
        );
        TwoRegions {
            writer,
            other,
            other_db,
            stop_writer,
            writer_serving,
            stop_other,
            other_serving,
            ada,
            bob,
            cy,
            ada1,
            ada2,
            bob1,
            cy1,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_checks_group_envelopes_against_the_writers_membership() {
    let TwoRegions {
        writer,
        other,
        stop_writer: stop,
        writer_serving: serving,
        stop_other,
        other_serving,
        ada,
        bob,
        cy,
        ada1,
        ada2,
        bob1,
        cy1,
        ..
    } = TwoRegions::start().await;
    let team = create_group(&other, ada, bob).await;

    // Region 2 asks the writer for the members, then commits for ada's other device; the
    // writer commits for bob. Both answer sent.
    let first = group_message(team, 1, ada1, &[ada2, bob1], &[ada.0, bob.0], 1);
    for region in [&other, &writer] {
        let outcome = committed(region.handle(first.clone()).await);
        assert!(
            matches!(outcome, wire::send_outcome::Outcome::Sent(_)),
            "{outcome:?}"
        );
    }

    // cy joins (version 2). The writer refuses version 1 with the members and the devices
    // of those homed there; region 2 refreshes its copy for an envelope naming version 2.
    let added = group_of(
        other
            .handle(ask(
                ada.0,
                Command::Add(wire::AddGroupMembers {
                    group: team.0,
                    accounts: vec![cy.0],
                }),
            ))
            .await,
    );
    assert_eq!(added.version, 2);
    // Region 2 cached version 1, but the writer made it drop that before acknowledging the
    // change: version 1 is stale there at once, not after its cache expires.
    let stale = group_message(team, 1, ada1, &[ada2, bob1], &[ada.0, bob.0], 2);
    let outcome = committed(other.handle(stale).await);
    assert!(
        matches!(outcome, wire::send_outcome::Outcome::GroupChanged(_)),
        "{outcome:?}"
    );
    let stale = group_message(team, 1, ada1, &[ada2, bob1], &[ada.0, bob.0], 2);
    let wire::send_outcome::Outcome::GroupChanged(changed) = committed(writer.handle(stale).await)
    else {
        panic!("expected the group changed")
    };
    assert_eq!(changed.version, 2);
    assert_eq!(changed.members, vec![ada.0, bob.0, cy.0]);
    let homed_at_writer: Vec<u64> = changed.devices.iter().map(|d| d.account).collect();
    assert_eq!(homed_at_writer, vec![bob.0, cy.0]);
    let current = group_message(team, 2, ada1, &[ada2, bob1, cy1], &[ada.0, bob.0, cy.0], 2);
    let outcome = committed(other.handle(current).await);
    assert!(
        matches!(outcome, wire::send_outcome::Outcome::Sent(_)),
        "{outcome:?}"
    );
    // Now that region 2 knows version 2, version 1 is stale there too.
    let stale = group_message(team, 1, ada1, &[ada2, bob1], &[ada.0, bob.0], 3);
    let outcome = committed(other.handle(stale).await);
    assert!(
        matches!(outcome, wire::send_outcome::Outcome::GroupChanged(_)),
        "{outcome:?}"
    );
    // A version the writer never gave, and a group it does not know, are refused.
    let future = group_message(team, 3, ada1, &[ada2, bob1, cy1], &[ada.0, bob.0, cy.0], 3);
    assert_eq!(error_of(other.handle(future).await), ErrorCode::Malformed);
    let unknown = group_message(GroupId(77), 1, ada1, &[ada2], &[ada.0], 3);
    assert_eq!(
        error_of(other.handle(unknown).await),
        ErrorCode::UnknownGroup
    );

    // With the writer gone, a group a region has not cached is a typed, retryable refusal.
    let _ = stop.send(());
    serving.await.expect("writer task").expect("writer ran");
    let _ = stop_other.send(());
    other_serving
        .await
        .expect("region task")
        .expect("region ran");
    let unreachable = group_message(GroupId(78), 1, ada1, &[ada2], &[ada.0], 3);
    assert_eq!(
        error_of(other.handle(unreachable).await),
        ErrorCode::DirectoryUnavailable
    );
}

/// Waits until region 2 checks group envelopes against its copy of `group` at `version`.
async fn until_replicated(
    other: &RegionService,
    other_db: &fdb_layers::Database,
    group: GroupId,
    version: u64,
) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let held = other_db
            .transact(|tx| async move { fdb_layers::directory::group_replica(&tx, group).await })
            .await
            .expect("read");
        if held.is_some_and(|held| held.version == version)
            && other.checks_groups_against_its_copy()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "region 2 did not replicate group {group} at version {version}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_checks_group_envelopes_against_its_replica_while_the_writer_is_gone() {
    let TwoRegions {
        other,
        other_db,
        stop_writer,
        writer_serving,
        stop_other,
        other_serving,
        ada,
        bob,
        ada1,
        ada2,
        bob1,
        ..
    } = TwoRegions::start().await;
    let team = create_group(&other, ada, bob).await;
    until_replicated(&other, &other_db, team, 1).await;

    // bob is removed (version 2). The writer tells region 2 before it answers, which ends region
    // 2's lease on its copy (still at version 1): a text for the old members is refused at once.
    let removed = group_of(
        other
            .handle(ask(
                ada.0,
                Command::Remove(wire::RemoveGroupMember {
                    group: team.0,
                    account: bob.0,
                }),
            ))
            .await,
    );
    assert_eq!(removed.version, 2);
    let stale = group_message(team, 1, ada1, &[ada2, bob1], &[ada.0, bob.0], 1);
    let outcome = committed(other.handle(stale).await);
    assert!(
        matches!(outcome, wire::send_outcome::Outcome::GroupChanged(_)),
        "{outcome:?}"
    );
    until_replicated(&other, &other_db, team, 2).await;

    // The writer is gone: region 2 checks against its copy, which holds the removal.
    let _ = stop_writer.send(());
    writer_serving
        .await
        .expect("writer task")
        .expect("writer ran");
    let current = group_message(team, 2, ada1, &[ada2], &[ada.0], 1);
    let outcome = committed(other.handle(current).await);
    assert!(
        matches!(outcome, wire::send_outcome::Outcome::Sent(_)),
        "{outcome:?}"
    );
    let stale = group_message(team, 1, ada1, &[ada2, bob1], &[ada.0, bob.0], 2);
    let outcome = committed(other.handle(stale).await);
    assert!(
        matches!(outcome, wire::send_outcome::Outcome::GroupChanged(_)),
        "{outcome:?}"
    );
    // A version newer than the copy needs the writer (as does a group the copy does not hold,
    // above).
    let newer = group_message(team, 3, ada1, &[ada2], &[ada.0], 2);
    assert_eq!(
        error_of(other.handle(newer).await),
        ErrorCode::DirectoryUnavailable
    );
    let _ = stop_other.send(());
    other_serving
        .await
        .expect("region task")
        .expect("region ran");
}
