use super::receipt_routing::LocalOutboxEntry;
use super::*;
use fdb_layers::{Database, EmbeddedOptions};
use relay_proto::wire::{
    DeviceAddr, DeviceCiphertext, Envelope, FetchAndAck, FetchQueue, OneTimeKey,
};
use relay_proto::{ChatId, ClientMessageId};

const HERE: RegionId = RegionId(1);
const ELSEWHERE: RegionId = RegionId(2);

struct Fixture {
    _dir: tempfile::TempDir,
    db: Database,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let db =
        Database::open(&dir.path().join("region.redb"), EmbeddedOptions::default()).expect("open");
    Fixture { _dir: dir, db }
}

/// A fresh idempotency key, as the service issues one per request.
fn key() -> IdempotencyKey {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let counter = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut nonce = [0u8; 16];
    nonce[8..].copy_from_slice(&counter.to_be_bytes());
    IdempotencyKey::new(1_000, nonce)
}

async fn run<T>(
    db: &Database,
    body: impl AsyncFn(Transaction) -> Outcome<T>,
) -> Result<(T, Effects), ProtoError> {
    db.transact(|tx| body(tx)).await.expect("store works")
}

/// Creates an account homed in `home` with `devices` devices (each with 2 one-time keys).
async fn account(db: &Database, name: &str, home: RegionId, devices: u32) -> AccountId {
    let create = key();
    let record = db
        .transact(|tx| async move { directory::create_account(&tx, name, home, &create).await })
        .await
        .expect("store")
        .expect("name free");
    for index in 0..devices {
        let register = wire::Register {
            name: name.into(),
            identity_key: vec![index as u8; 32],
            signing_key: vec![index as u8 + 100; 32],
            one_time_keys: vec![
                OneTimeKey {
                    key_id: format!("{name}-{index}-a"),
                    public_key: vec![1; 32],
                    ..OneTimeKey::default()
                },
                OneTimeKey {
                    key_id: format!("{name}-{index}-b"),
                    public_key: vec![2; 32],
                    ..OneTimeKey::default()
                },
            ],
            registration_token: String::new(),
            fallback_key: None,
        };
        let request = key();
        if index == 0 {
            run(db, async |tx| {
                register_device(&tx, &record, &register, &request).await
            })
            .await
            .expect("registered");
        } else {
            db.transact(|tx| {
                let register = register.clone();
                async move {
                    directory::add_device(
                        &tx,
                        record.id,
                        &register.identity_key,
                        &register.signing_key,
                        &request,
                    )
                    .await
                }
            })
            .await
            .expect("device added");
        }
    }
    record.id
}

fn envelope(
    sender: DeviceAddress,
    to: &[DeviceAddress],
    accounts: &[AccountId],
    message: u8,
    sender_seq: u64,
) -> Envelope {
    Envelope {
        chat: ChatId::direct(sender.account, accounts[0]).0.to_vec(),
        sender: sender.into(),
        client_message_id: ClientMessageId([message; 16]).0.to_vec(),
        sender_seq,
        recipient_accounts: accounts.iter().map(|a| a.0).collect(),
        ciphertexts: to
            .iter()
            .map(|&device| DeviceCiphertext {
                recipient: device.into(),
                message_type: 1,
                body: vec![message, device.device.0 as u8],
            })
            .collect(),
        device_seq: u64::from(message),
        ..Default::default()
    }
}

async fn commit(
    db: &Database,
    envelope: &Envelope,
    sender_region: RegionId,
) -> (send_outcome::Outcome, Effects) {
    let (decision, effects) = run(db, async |tx| {
        commit_envelope(
            &tx,
            HERE,
            envelope,
            sender_region,
            GroupSource::Directory,
            &BTreeSet::new(),
            1_000,
        )
        .await
    })
    .await
    .expect("accepted");
    let CommitDecision::Answer(outcome) = decision else {
        panic!("a recipient queue was unreadable: {decision:?}");
    };
    check_pushed(db, &effects).await;
    (outcome.outcome.expect("an outcome"), effects)
}

/// Checks what `effects` sends along with its pushes: for each device, a gapless run from the
/// first entry the transaction appended for it, each entry exactly as the device fetches it.
async fn check_pushed(db: &Database, effects: &Effects) {
    for (device, pushed) in &effects.pushed {
        let pushed = pushed.entries();
        let Some(first) = pushed.first() else {
            continue;
        };
        assert!(
            effects.notify.get(device) >= Some(&pushed[pushed.len() - 1].queue_seq),
            "announced up to the last entry sent along"
        );
        let (batch, _) = fetch_after(db, *device, &[], first.queue_seq - 1)
            .await
            .expect("fetched");
        assert!(batch.entries.len() >= pushed.len(), "{device}: {batch:?}");
        assert_eq!(
            batch.entries[..pushed.len()],
            pushed[..],
            "{device}: sent along as fetched"
        );
    }
}

/// The messages of `batch` as (the first byte of their client message id, the number they are
/// shown under), receipts left out.
fn shown_messages(batch: &QueueBatch) -> Vec<(u8, u64)> {
    batch
        .entries
        .iter()
        .flat_map(|entry| match &entry.item {
            Some(queue_entry::Item::Message(message)) => {
                vec![(message.client_message_id[0], message.chat_seq)]
            }
            Some(queue_entry::Item::Messages(messages)) => messages
                .messages
                .iter()
                .map(|message| (message.client_message_id[0], message.chat_seq))
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

async fn fetch(db: &Database, device: DeviceAddress, ack: &[u64]) -> (QueueBatch, Effects) {
    let (batch, effects) = fetch_after(db, device, ack, 0).await.expect("fetched");
    check_pushed(db, &effects).await;
    (batch, effects)
}

async fn fetch_after(
    db: &Database,
    device: DeviceAddress,
    ack: &[u64],
    after_queue_seq: u64,
) -> Result<(QueueBatch, Effects), ProtoError> {
    let request = FetchAndAck {
        ack: Some(wire::AckQueue {
            queue_seqs: ack.to_vec(),
        }),
        fetch: Some(FetchQueue {
            after_queue_seq,
            limit: 100,
        }),
    };
    run(db, async |tx| {
        fetch_and_ack(&tx, HERE, device, &request, &BTreeSet::new(), 2_000).await
    })
    .await
}

#[tokio::test]
async fn a_page_of_large_messages_fits_a_frame_and_the_rest_follows() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let (alice1, bob1) = (device_in(alice, 1), device_in(bob, 1));
    // 40 messages of the largest ciphertext: 2.6 MB, far more than a frame holds.
    let messages = 40u8;
    for message in 1..=messages {
        let mut sent = envelope(alice1, &[bob1], &[bob, alice], message, u64::from(message));
        sent.ciphertexts[0].body = vec![message; relay_proto::limits::CIPHERTEXT_BYTES_MAX];
        commit(&f.db, &sent, HERE).await;
    }
    let mut received = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let request = FetchAndAck {
            ack: None,
            fetch: Some(FetchQueue {
                after_queue_seq: after,
                limit: QUEUE_FETCH_ENTRIES_MAX,
            }),
        };
        let (batch, _) = run(&f.db, async |tx| {
            fetch_and_ack(&tx, HERE, bob1, &request, &BTreeSet::new(), 2_000).await
        })
        .await
        .expect("fetched");
        let response = wire::ClientResponse {
            body: Some(wire::client_response::Body::Queue(batch.clone())),
        };
        assert!(
            response.encoded_len() <= relay_proto::limits::FRAME_BYTES_MAX,
            "a page of {} entries is {} bytes",
            batch.entries.len(),
            response.encoded_len()
        );
        let Some(last) = batch.entries.last() else {
            break;
        };
        after = last.queue_seq;
        received.extend(batch.entries.iter().map(|entry| entry.queue_seq));
        pages += 1;
        assert!(pages <= usize::from(messages), "every page holds an entry");
    }
    assert_eq!(received, (1..=u64::from(messages)).collect::<Vec<_>>());
    assert!(
        pages >= 5,
        "the byte budget split the queue ({pages} pages)"
    );
}

#[tokio::test]
async fn commit_fans_out_and_a_retry_is_stored_once() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 2).await;
    let alice1 = device_in(alice, 1);
    let (bob1, bob2) = (device_in(bob, 1), device_in(bob, 2));
    let sent = envelope(alice1, &[bob1, bob2], &[bob, alice], 7, 1);

    let (outcome, effects) = commit(&f.db, &sent, HERE).await;
    let send_outcome::Outcome::Sent(first) = outcome else {
        panic!("expected sent")
    };
    assert_eq!(first.commits[0].chat_seq, 1);
    assert!(!first.commits[0].duplicate);
    assert_eq!(effects.notify, BTreeMap::from([(bob1, 1), (bob2, 1)]));

    // The same envelope again (a retry): the original result, nothing new queued.
    let (outcome, effects) = commit(&f.db, &sent, HERE).await;
    let send_outcome::Outcome::Sent(again) = outcome else {
        panic!("expected sent")
    };
    assert_eq!(again.commits[0].chat_seq, 1);
    assert!(again.commits[0].duplicate);
    assert!(effects.notify.is_empty());

    let (batch, _) = fetch(&f.db, bob2, &[]).await;
    assert_eq!(batch.entries.len(), 1, "stored once");
    let Some(queue_entry::Item::Message(message)) = &batch.entries[0].item else {
        panic!("a message")
    };
    assert_eq!(
        message.ciphertext,
        vec![7, 2],
        "each device gets its own ciphertext"
    );
    assert_eq!(message.sender, alice1.into());
}

/// Creates a group owned by `owner` with `members` (version 1).
async fn group(db: &Database, owner: AccountId, members: &[AccountId]) -> GroupId {
    let request = key();
    db.transact(|tx| async move {
        let new = directory::NewGroup {
            owner,
            name: "team",
            home_region: HERE,
            members,
            request_id: [owner.0 as u8; 16],
        };
        directory::create_group(&tx, &new, &request).await
    })
    .await
    .expect("store")
    .expect("fits")
}

/// A group message (`kind` Message: empty entries and a group ciphertext) or key share
/// (Olm bodies) of `group` at `version`.
#[allow(clippy::too_many_arguments)]
fn group_envelope(
    group: GroupId,
    version: u64,
    kind: EnvelopeKind,
    sender: DeviceAddress,
    to: &[DeviceAddress],
    accounts: &[AccountId],
    message: u8,
    sender_seq: u64,
) -> Envelope {
    let share = kind == EnvelopeKind::GroupKeyShare;
    Envelope {
        chat: ChatId::group(group).0.to_vec(),
        sender: sender.into(),
        client_message_id: ClientMessageId([message; 16]).0.to_vec(),
        sender_seq,
        recipient_accounts: accounts.iter().map(|a| a.0).collect(),
        ciphertexts: to
            .iter()
            .map(|&device| DeviceCiphertext {
                recipient: device.into(),
                message_type: if share {
                    wire::MESSAGE_TYPE_OLM_PRE_KEY
                } else {
                    wire::MESSAGE_TYPE_HOLDS_GROUP_SESSION
                },
                body: if share {
                    vec![message, device.device.0 as u8]
                } else {
                    Vec::new()
                },
            })
            .collect(),
        device_seq: u64::from(message),
        group: group.0,
        group_version: version,
        kind: kind as i32,
        group_ciphertext: if share { Vec::new() } else { vec![message; 40] },
        group_session_id: "session-1".into(),
        // Every earlier number waits to be stored first (strictly in order).
        group_prev_seq: sender_seq - 1,
    }
}

/// Commits at the directory writer (this store), refusals included.
async fn try_commit(
    db: &Database,
    envelope: &Envelope,
) -> Result<send_outcome::Outcome, ProtoError> {
    let (decision, _) = run(db, async |tx| {
        commit_envelope(
            &tx,
            HERE,
            envelope,
            HERE,
            GroupSource::Directory,
            &BTreeSet::new(),
            1_000,
        )
        .await
    })
    .await?;
    let CommitDecision::Answer(outcome) = decision else {
        panic!("a recipient queue was unreadable: {decision:?}");
    };
    Ok(outcome.outcome.expect("an outcome"))
}

async fn chat_entries(db: &Database, chat: ChatId) -> usize {
    db.transact(|tx| async move { chat_log::read_range(&tx, chat, 0, 100).await })
        .await
        .expect("read")
        .len()
}

fn message_of(entry: &QueueEntry) -> &QueuedMessage {
    let Some(queue_entry::Item::Message(message)) = &entry.item else {
        panic!("a message, got {entry:?}")
    };
    message
}

#[tokio::test]
async fn a_group_message_is_stored_once_and_queued_for_every_member_device() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 2).await;
    let bob = account(&f.db, "bob", HERE, 2).await;
    let carol = account(&f.db, "carol", HERE, 1).await;
    let dave = account(&f.db, "dave", ELSEWHERE, 0).await;
    let team = group(&f.db, alice, &[bob, carol, dave]).await;
    let (alice1, alice2) = (device_in(alice, 1), device_in(alice, 2));
    let (bob1, bob2, carol1) = (device_in(bob, 1), device_in(bob, 2), device_in(carol, 1));
    let members = [alice, bob, carol, dave];

    // The session's key for the devices that lack it, then the message: consecutive
    // sender_seqs from one device. Sent out of order, the message waits for the share.
    let share = group_envelope(
        team,
        1,
        EnvelopeKind::GroupKeyShare,
        alice1,
        &[bob1, carol1],
        &[bob, carol],
        1,
        1,
    );
    let message = group_envelope(
        team,
        1,
        EnvelopeKind::Message,
        alice1,
        &[alice2, bob1, bob2, carol1],
        &members,
        2,
        2,
    );
    let early = try_commit(&f.db, &message).await.expect("answered");
    assert!(
        matches!(
            early,
            send_outcome::Outcome::ResendFrom(ResendFrom {
                expected_sender_seq: 1
            })
        ),
        "{early:?}"
    );
    let (outcome, effects) = commit(&f.db, &share, HERE).await;
    assert!(matches!(outcome, send_outcome::Outcome::Sent(_)));
    assert_eq!(effects.notify, BTreeMap::from([(bob1, 1), (carol1, 1)]));
    let (outcome, effects) = commit(&f.db, &message, HERE).await;
    let send_outcome::Outcome::Sent(sent) = outcome else {
        panic!("expected sent, got {outcome:?}")
    };
    assert_eq!(sent.commits[0].chat_seq, 2);
    assert_eq!(
        effects.notify,
        BTreeMap::from([(alice2, 1), (bob1, 2), (bob2, 1), (carol1, 2)]),
        "every member device here, dave's left to his region"
    );

    // A retry is answered with the first result and queues nothing.
    let (outcome, effects) = commit(&f.db, &message, HERE).await;
    let send_outcome::Outcome::Sent(again) = outcome else {
        panic!("expected sent, got {outcome:?}")
    };
    assert!(again.commits[0].duplicate);
    assert!(effects.notify.is_empty());

    // Stored once: the share and the message are the chat's two entries.
    assert_eq!(chat_entries(&f.db, ChatId::group(team)).await, 2);

    // bob1 gets its key, then the message: the shared ciphertext, no ciphertext of its own.
    let (batch, _) = fetch(&f.db, bob1, &[]).await;
    assert_eq!(batch.entries.len(), 2);
    let key_share = message_of(&batch.entries[0]);
    assert_eq!(key_share.kind, EnvelopeKind::GroupKeyShare as i32);
    assert_eq!(key_share.group, team.0);
    assert_eq!(key_share.ciphertext, vec![1, 1]);
    assert!(key_share.group_ciphertext.is_empty());
    assert_eq!(key_share.group_session_id, "session-1");
    let received = message_of(&batch.entries[1]);
    assert_eq!(received.kind, EnvelopeKind::Message as i32);
    assert_eq!(received.sender_seq, 2);
    assert_eq!(received.chat_seq, 2);
    assert_eq!(
        received.message_type,
        wire::MESSAGE_TYPE_HOLDS_GROUP_SESSION
    );
    assert!(received.ciphertext.is_empty());
    assert_eq!(received.group_ciphertext, vec![2; 40]);
    assert_eq!(received.group_session_id, "session-1");
    // bob2 and alice2 (the sender's other device) get the same message, and only it.
    for device in [bob2, alice2] {
        let (batch, _) = fetch(&f.db, device, &[]).await;
        assert_eq!(batch.entries.len(), 1, "{device}");
        assert_eq!(message_of(&batch.entries[0]).group_ciphertext, vec![2; 40]);
    }
}

#[tokio::test]
async fn group_envelopes_that_do_not_match_the_group_are_refused_before_any_write() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 2).await;
    let bob = account(&f.db, "bob", HERE, 2).await;
    let carol = account(&f.db, "carol", HERE, 1).await;
    let erin = account(&f.db, "erin", HERE, 1).await;
    let team = group(&f.db, alice, &[bob, carol]).await;
    let (alice1, alice2) = (device_in(alice, 1), device_in(alice, 2));
    let (bob1, bob2, carol1) = (device_in(bob, 1), device_in(bob, 2), device_in(carol, 1));
    let message = |to: &[DeviceAddress], accounts: &[AccountId], version: u64| {
        group_envelope(
            team,
            version,
            EnvelopeKind::Message,
            alice1,
            to,
            accounts,
            1,
            1,
        )
    };
    let all = [alice2, bob1, bob2, carol1];
    let members = [alice, bob, carol];
    let expected_devices = vec![
        AccountDevices {
            account: alice.0,
            devices: vec![2],
        },
        AccountDevices {
            account: bob.0,
            devices: vec![1, 2],
        },
        AccountDevices {
            account: carol.0,
            devices: vec![1],
        },
    ];

    // A sender that is not a member sees an unknown group.
    let outsider = group_envelope(
        team,
        1,
        EnvelopeKind::Message,
        device_in(erin, 1),
        &all,
        &members,
        1,
        1,
    );
    let refused = try_commit(&f.db, &outsider).await.expect_err("refused");
    assert_eq!(refused.code, ErrorCode::UnknownGroup);
    let mut unknown = message(&all, &members, 1);
    unknown.group = 99;
    unknown.chat = ChatId::group(GroupId(99)).0.to_vec();
    let refused = try_commit(&f.db, &unknown).await.expect_err("refused");
    assert_eq!(refused.code, ErrorCode::UnknownGroup);

    // A wrong member list: the group changed, with its members and their devices.
    for accounts in [&[alice, bob][..], &[alice, bob, carol, erin][..]] {
        let to: Vec<DeviceAddress> = all
            .iter()
            .copied()
            .filter(|device| accounts.contains(&device.account))
            .collect();
        let outcome = try_commit(&f.db, &message(&to, accounts, 1))
            .await
            .expect("answered");
        let send_outcome::Outcome::GroupChanged(changed) = outcome else {
            panic!("expected the group changed, got {outcome:?}")
        };
        assert_eq!(changed.group, team.0);
        assert_eq!(changed.version, 1);
        assert_eq!(changed.members, vec![alice.0, bob.0, carol.0]);
        assert_eq!(changed.devices, expected_devices);
    }

    // A device missing, one extra, or the sender's other device left out: mismatched.
    let missing = message(&[alice2, bob1, carol1], &members, 1);
    let extra = message(
        &[alice2, bob1, bob2, device_in(bob, 3), carol1],
        &members,
        1,
    );
    let without_own = message(&[bob1, bob2, carol1], &[bob, carol], 1);
    for (envelope, account, devices) in [
        (missing, bob, vec![1, 2]),
        (extra, bob, vec![1, 2]),
        (without_own, alice, vec![2]),
    ] {
        let outcome = try_commit(&f.db, &envelope).await.expect("answered");
        let send_outcome::Outcome::Mismatched(mismatched) = outcome else {
            panic!("expected mismatched devices, got {outcome:?}")
        };
        assert_eq!(
            mismatched.accounts,
            vec![AccountDevices {
                account: account.0,
                devices
            }]
        );
    }

    // A key share to a device that is not current, or to an account that is no member.
    let share = |to: &[DeviceAddress], accounts: &[AccountId]| {
        group_envelope(
            team,
            1,
            EnvelopeKind::GroupKeyShare,
            alice1,
            to,
            accounts,
            2,
            1,
        )
    };
    let outcome = try_commit(&f.db, &share(&[device_in(bob, 3)], &[bob]))
        .await
        .expect("answered");
    assert!(
        matches!(outcome, send_outcome::Outcome::Mismatched(_)),
        "{outcome:?}"
    );
    let outcome = try_commit(&f.db, &share(&[device_in(erin, 1)], &[erin]))
        .await
        .expect("answered");
    assert!(
        matches!(outcome, send_outcome::Outcome::GroupChanged(_)),
        "{outcome:?}"
    );

    // erin joins (version 2): version 1 is stale, version 3 does not exist.
    let add = key();
    db_add_member(&f.db, team, erin, add).await;
    let outcome = try_commit(&f.db, &message(&all, &members, 1))
        .await
        .expect("answered");
    let send_outcome::Outcome::GroupChanged(changed) = outcome else {
        panic!("expected the group changed, got {outcome:?}")
    };
    assert_eq!(changed.version, 2);
    assert_eq!(changed.members, vec![alice.0, bob.0, carol.0, erin.0]);
    assert_eq!(changed.devices.len(), 4, "erin's devices too");
    let refused = try_commit(&f.db, &message(&all, &members, 3))
        .await
        .expect_err("refused");
    assert_eq!(refused.code, ErrorCode::Malformed);

    // Nothing of any refusal was written; the right envelope for version 2 is accepted.
    assert_eq!(chat_entries(&f.db, ChatId::group(team)).await, 0);
    let mut everyone = all.to_vec();
    everyone.push(device_in(erin, 1));
    let outcome = try_commit(&f.db, &message(&everyone, &[alice, bob, carol, erin], 2))
        .await
        .expect("answered");
    assert!(
        matches!(outcome, send_outcome::Outcome::Sent(_)),
        "{outcome:?}"
    );
    assert_eq!(chat_entries(&f.db, ChatId::group(team)).await, 1);
}

async fn db_add_member(db: &Database, group: GroupId, account: AccountId, key: IdempotencyKey) {
    db.transact(|tx| async move { directory::add_member(&tx, group, account, &key).await })
        .await
        .expect("added");
}

async fn db_remove_member(db: &Database, group: GroupId, account: AccountId) {
    let removal = key();
    db.transact(|tx| async move {
        directory::remove_member(&tx, group, account, &removal).await?;
        Ok(())
    })
    .await
    .expect("removed");
}

/// alice, bob and carol, a device each, in a group alice made.
struct TeamWithText {
    team: GroupId,
    alice: AccountId,
    bob: AccountId,
    carol: AccountId,
    alice1: DeviceAddress,
    bob1: DeviceAddress,
    carol1: DeviceAddress,
}

/// [`TeamWithText`], with alice's first text to the group (version 1) stored.
async fn team_with_a_text(f: &Fixture) -> TeamWithText {
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let carol = account(&f.db, "carol", HERE, 1).await;
    let team = group(&f.db, alice, &[bob, carol]).await;
    let (alice1, bob1, carol1) = (device_in(alice, 1), device_in(bob, 1), device_in(carol, 1));
    let text = group_envelope(
        team,
        1,
        EnvelopeKind::Message,
        alice1,
        &[bob1, carol1],
        &[alice, bob, carol],
        1,
        1,
    );
    assert!(matches!(
        try_commit(&f.db, &text).await,
        Ok(send_outcome::Outcome::Sent(_))
    ));
    TeamWithText {
        team,
        alice,
        bob,
        carol,
        alice1,
        bob1,
        carol1,
    }
}

/// Swarm seed 2150: alice's text went out as a member, rebuilt under a rotated session whose key
/// share is numbered after it; she was removed before the share arrived. The share is still
/// taken (bob needs the key to read the text the chat holds), while a text from her is not, nor
/// a share from a device that never sent in the group.
#[tokio::test]
async fn a_former_members_key_share_is_taken_and_its_texts_are_not() {
    let f = fixture();
    let TeamWithText {
        team,
        alice,
        bob,
        carol,
        alice1,
        bob1,
        carol1,
    } = team_with_a_text(&f).await;
    db_remove_member(&f.db, team, carol).await;
    db_remove_member(&f.db, team, alice).await;

    let share = group_envelope(
        team,
        3,
        EnvelopeKind::GroupKeyShare,
        alice1,
        &[bob1],
        &[bob],
        2,
        2,
    );
    assert!(
        matches!(
            try_commit(&f.db, &share).await,
            Ok(send_outcome::Outcome::Sent(_))
        ),
        "a former member's key share is taken"
    );
    let (batch, _) = fetch(&f.db, bob1, &[]).await;
    assert_eq!(batch.entries.len(), 2, "bob gets the text and its key");

    let later = group_envelope(
        team,
        3,
        EnvelopeKind::Message,
        alice1,
        &[bob1],
        &[bob],
        3,
        3,
    );
    let refused = try_commit(&f.db, &later).await.map(|_| ());
    assert_eq!(
        refused.map_err(|error| error.code),
        Err(ErrorCode::UnknownGroup),
        "a former member sends no text"
    );
    let stranger = group_envelope(
        team,
        3,
        EnvelopeKind::GroupKeyShare,
        carol1,
        &[bob1],
        &[bob],
        4,
        1,
    );
    let refused = try_commit(&f.db, &stranger).await.map(|_| ());
    assert_eq!(
        refused.map_err(|error| error.code),
        Err(ErrorCode::UnknownGroup),
        "carol never sent in the group"
    );
}

/// Swarm seed 2319 (with group replicas): alice's text, rebuilt under a rotated session after a
/// device left, was stored and queued to carol; carol was removed before the key share numbered
/// after the text arrived, and the share, refused `GroupChanged` and rebuilt without carol, left
/// carol waiting for the key for ever. A share for the version its text was built for now
/// reaches the members removed since; one for the current version still names members only.
#[tokio::test]
async fn a_key_share_for_an_older_version_reaches_members_removed_since() {
    let f = fixture();
    let TeamWithText {
        team,
        alice,
        bob,
        carol,
        alice1,
        bob1,
        carol1,
    } = team_with_a_text(&f).await;
    let members = [alice, bob, carol];
    db_remove_member(&f.db, team, carol).await;

    // For the current version, carol is no member: the sender learns the membership.
    let current = group_envelope(
        team,
        2,
        EnvelopeKind::GroupKeyShare,
        alice1,
        &[carol1],
        &members,
        2,
        2,
    );
    let outcome = try_commit(&f.db, &current).await.expect("answered");
    assert!(
        matches!(outcome, send_outcome::Outcome::GroupChanged(_)),
        "{outcome:?}"
    );
    // A device carol does not have is mismatched, whatever the version.
    let stray = group_envelope(
        team,
        1,
        EnvelopeKind::GroupKeyShare,
        alice1,
        &[device_in(carol, 2)],
        &members,
        2,
        2,
    );
    let outcome = try_commit(&f.db, &stray).await.expect("answered");
    assert!(
        matches!(outcome, send_outcome::Outcome::Mismatched(_)),
        "{outcome:?}"
    );
    // The share for version 1, the text's, is taken and queued to bob and carol.
    let share = group_envelope(
        team,
        1,
        EnvelopeKind::GroupKeyShare,
        alice1,
        &[bob1, carol1],
        &members,
        2,
        2,
    );
    let outcome = try_commit(&f.db, &share).await.expect("answered");
    assert!(
        matches!(outcome, send_outcome::Outcome::Sent(_)),
        "{outcome:?}"
    );
    for device in [bob1, carol1] {
        let (batch, _) = fetch(&f.db, device, &[]).await;
        assert_eq!(batch.entries.len(), 2, "{device} gets the text and its key");
    }
    // A text for version 1 is still stale.
    let later = group_envelope(
        team,
        1,
        EnvelopeKind::Message,
        alice1,
        &[bob1, carol1],
        &members,
        3,
        3,
    );
    let outcome = try_commit(&f.db, &later).await.expect("answered");
    assert!(
        matches!(outcome, send_outcome::Outcome::GroupChanged(_)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn envelopes_must_cover_exactly_the_current_devices() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 2).await;
    let bob = account(&f.db, "bob", HERE, 2).await;
    let alice1 = device_in(alice, 1);
    // Missing bob's second device and alice's own other device.
    let partial = envelope(alice1, &[device_in(bob, 1)], &[bob, alice], 1, 1);
    let (outcome, effects) = commit(&f.db, &partial, HERE).await;
    let send_outcome::Outcome::Mismatched(mismatched) = outcome else {
        panic!("expected mismatch")
    };
    let mut accounts: Vec<(u64, Vec<u32>)> = mismatched
        .accounts
        .into_iter()
        .map(|a| (a.account, a.devices))
        .collect();
    accounts.sort();
    assert_eq!(accounts, vec![(alice.0, vec![2]), (bob.0, vec![1, 2])]);
    assert!(effects.notify.is_empty());
    // A device that does not exist is a mismatch too.
    let extra = envelope(
        alice1,
        &[
            device_in(bob, 1),
            device_in(bob, 2),
            device_in(bob, 3),
            device_in(alice, 2),
        ],
        &[bob, alice],
        1,
        1,
    );
    assert!(matches!(
        commit(&f.db, &extra, HERE).await.0,
        send_outcome::Outcome::Mismatched(_)
    ));
    // Nothing was stored by the refusals: the corrected envelope is chat sequence 1.
    let right = envelope(
        alice1,
        &[device_in(bob, 1), device_in(bob, 2), device_in(alice, 2)],
        &[bob, alice],
        1,
        1,
    );
    let send_outcome::Outcome::Sent(sent) = commit(&f.db, &right, HERE).await.0 else {
        panic!("expected sent")
    };
    assert_eq!(sent.commits[0].chat_seq, 1);
}

#[tokio::test]
async fn a_sender_seq_gap_is_refused_with_the_expected_number() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let alice1 = device_in(alice, 1);
    let skipped = envelope(alice1, &[device_in(bob, 1)], &[bob, alice], 2, 2);
    let send_outcome::Outcome::ResendFrom(resend) = commit(&f.db, &skipped, HERE).await.0 else {
        panic!("gap")
    };
    assert_eq!(resend.expected_sender_seq, 1);
}

#[tokio::test]
async fn recipients_in_other_regions_are_left_to_them() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", ELSEWHERE, 0).await;
    // bob's devices are not known here: the envelope is checked and stored for alice's side only.
    let bob1 = device_in(bob, 1);
    let sent = envelope(device_in(alice, 1), &[bob1], &[bob, alice], 3, 1);
    let (outcome, effects) = commit(&f.db, &sent, HERE).await;
    assert!(matches!(outcome, send_outcome::Outcome::Sent(_)));
    assert!(effects.notify.is_empty(), "no local recipient devices");
}

/// Bob's home is elsewhere when alice's envelope first reaches her region: it is stored for
/// bob's first device only (his devices are checked at his home, which answered "mismatched").
/// Bob then moves here; alice's retry, covering both his devices, is a duplicate here, and it
/// queues the entry for them: the stored copy is completed with the entry for his second device,
/// which it never had, so both devices read the message.
#[tokio::test]
async fn a_duplicate_queued_for_an_account_that_moved_here_carries_every_devices_entry() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 2).await;
    let set_home = async |home: RegionId, epoch: u64| {
        f.db.transact(|tx| async move {
            let mut record = directory::account_by_id(&tx, bob).await?.expect("bob");
            record.home_region = home;
            record.epoch = epoch;
            directory::put_account(&tx, &record).await?;
            if home == HERE {
                home_move::set_arrived(&tx, bob, 1_000)?;
            }
            Ok(())
        })
        .await
        .expect("bob's home");
    };
    set_home(ELSEWHERE, 2).await;
    let (alice1, bob1, bob2) = (device_in(alice, 1), device_in(bob, 1), device_in(bob, 2));
    let first = envelope(alice1, &[bob1], &[bob, alice], 3, 1);
    let (outcome, effects) = commit(&f.db, &first, HERE).await;
    assert!(matches!(outcome, send_outcome::Outcome::Sent(_)));
    assert!(effects.notify.is_empty(), "bob is not homed here yet");

    set_home(HERE, 3).await;
    let retry = envelope(alice1, &[bob1, bob2], &[bob, alice], 3, 1);
    let (outcome, _) = commit(&f.db, &retry, HERE).await;
    let send_outcome::Outcome::Sent(sent) = outcome else {
        panic!("sent: {outcome:?}");
    };
    assert!(sent.commits[0].duplicate);
    for device in [bob1, bob2] {
        let (batch, _) = fetch(&f.db, device, &[]).await;
        let [entry] = batch.entries.as_slice() else {
            panic!("one entry for {device}: {batch:?}");
        };
        assert_eq!(
            message_of(entry).ciphertext,
            [3, device.device.0 as u8],
            "{device}"
        );
    }
}

/// Alice's second device sends to bob while her home cannot reach bob's: bob's home stores the
/// envelope, which named bob's devices only (her home refused it: her first device was
/// missing). Bob then moves to alice's home with the entry in his queue, and her retry, naming
/// every device, is the envelope's first commit there: it is queued for her first device too,
/// and the stored copy (bob's old home's) is completed with that device's entry.
#[tokio::test]
async fn the_first_commit_of_a_moved_entry_completes_it_for_the_devices_here() {
    let f = fixture();
    let old_home = fixture();
    let alice = account(&f.db, "alice", HERE, 2).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let (alice1, alice2, bob1) = (device_in(alice, 1), device_in(alice, 2), device_in(bob, 1));
    let first = envelope(alice2, &[bob1], &[bob, alice], 5, 1);
    let chat = ChatId::direct(alice, bob);
    let moved = old_home
        .db
        .transact(|tx| {
            let bytes = first.encode_to_vec();
            async move {
                let entry = NewEntry {
                    chat,
                    sender: alice2,
                    client_message_id: ClientMessageId([5; 16]),
                    sender_seq: 1,
                    sender_region: HERE,
                    envelope_bytes: &bytes,
                };
                chat_log::append(&tx, &entry, 1_000).await?;
                Ok(chat_log::entry_bytes(&tx, chat, 1).await?.expect("stored"))
            }
        })
        .await
        .expect("bob's old home");
    f.db.transact(|tx| {
        let moved = moved.clone();
        async move { chat_log::import_entry(&tx, chat, 1, &moved).await }
    })
    .await
    .expect("the move brought it");

    let retry = envelope(alice2, &[bob1, alice1], &[bob, alice], 5, 1);
    let (outcome, effects) = commit(&f.db, &retry, HERE).await;
    let send_outcome::Outcome::Sent(sent) = outcome else {
        panic!("sent: {outcome:?}");
    };
    assert!(!sent.commits[0].duplicate, "its first commit here");
    assert_eq!(effects.notify.get(&alice1), Some(&1));
    let (batch, _) = fetch(&f.db, alice1, &[]).await;
    let [entry] = batch.entries.as_slice() else {
        panic!("one entry for alice's first device: {batch:?}");
    };
    assert_eq!(message_of(entry).ciphertext, [5, 1]);
}

#[tokio::test]
async fn a_sender_this_region_never_saw_is_accepted() {
    let f = fixture();
    let bob = account(&f.db, "bob", HERE, 1).await;
    // alice is homed elsewhere and was never looked up here.
    let alice_elsewhere = device_in(AccountId(4242), 1);
    let sent = envelope(
        alice_elsewhere,
        &[device_in(bob, 1)],
        &[bob, alice_elsewhere.account],
        1,
        1,
    );
    let (outcome, effects) = commit(&f.db, &sent, ELSEWHERE).await;
    assert!(
        matches!(outcome, send_outcome::Outcome::Sent(_)),
        "{outcome:?}"
    );
    assert_eq!(effects.notify.get(&device_in(bob, 1)), Some(&1));
}

/// A group of alice and `members` more accounts homed here, one device each.
struct GroupOf {
    team: GroupId,
    alice1: DeviceAddress,
    /// The members' devices (alice's excepted).
    devices: Vec<DeviceAddress>,
    /// Every member account, alice's last.
    listed: Vec<AccountId>,
}

async fn group_of(db: &Database, members: usize) -> GroupOf {
    let alice = account(db, "alice", HERE, 1).await;
    let mut listed = Vec::new();
    for index in 0..members {
        listed.push(account(db, &format!("m{index}"), HERE, 1).await);
    }
    let team = group(db, alice, &listed).await;
    let devices = listed.iter().map(|member| device_in(*member, 1)).collect();
    listed.push(alice);
    GroupOf {
        team,
        alice1: device_in(alice, 1),
        devices,
        listed,
    }
}

#[tokio::test]
async fn group_acks_become_receipts_for_the_sender_in_one_batch() {
    let f = fixture();
    let GroupOf {
        team,
        alice1,
        devices,
        listed,
    } = group_of(&f.db, 5).await;
    let message = group_envelope(
        team,
        1,
        EnvelopeKind::Message,
        alice1,
        &devices,
        &listed,
        1,
        1,
    );
    let (outcome, _) = commit(&f.db, &message, HERE).await;
    assert!(
        matches!(outcome, send_outcome::Outcome::Sent(_)),
        "{outcome:?}"
    );

    // Each member's ack pushes its receipt to this region's outbox, touching nothing of
    // alice's queue (so the acks do not conflict on it).
    for device in &devices {
        let (_, effects) = fetch(&f.db, *device, &[1]).await;
        assert!(effects.outbox_pushed);
        assert!(!effects.notify.contains_key(&alice1), "{effects:?}");
    }
    let (batch, _) = fetch(&f.db, alice1, &[]).await;
    assert!(
        batch.entries.is_empty(),
        "no receipt before the pump's batch"
    );

    // The pump's batch appends all five in one transaction, and the next finds none.
    let (taken, effects) =
        f.db.transact(|tx| async move { deliver_local_receipts(&tx, HERE, (256, 1_024), 9).await })
            .await
            .expect("store")
            .expect("applied");
    assert_eq!(taken.receipts, 5);
    // One entry holds them all: alice's queue grows by one, not by a member count.
    assert_eq!(effects.notify.get(&alice1), Some(&1));
    let (taken, _) =
        f.db.transact(|tx| async move { deliver_local_receipts(&tx, HERE, (256, 1_024), 9).await })
            .await
            .expect("store")
            .expect("applied");
    assert_eq!(taken.receipts, 0);
    let (batch, _) = fetch(&f.db, alice1, &[]).await;
    assert_eq!(batch.entries.len(), 1, "{batch:?}");
    let Some(queue_entry::Item::Receipts(receipts)) = &batch.entries[0].item else {
        panic!("an entry of receipts, got {:?}", batch.entries[0]);
    };
    let recipients: BTreeSet<wire::DeviceAddr> = receipts
        .receipts
        .iter()
        .map(|receipt| {
            assert_eq!(receipt.state, ReceiptState::Delivered as i32);
            assert!(receipt.encoded_len() <= relay_proto::limits::QUEUED_RECEIPT_ENCODED_BYTES_MAX);
            receipt.recipient
        })
        .collect();
    assert_eq!(
        recipients,
        devices.iter().map(|device| (*device).into()).collect()
    );

    // A member acknowledging again (a retried ack) moves nothing: no entry for alice.
    let (_, effects) = fetch_after(&f.db, devices[0], &[1], 1)
        .await
        .expect("fetched");
    assert!(!effects.outbox_pushed);
    let (taken, effects) =
        f.db.transact(|tx| async move { deliver_local_receipts(&tx, HERE, (256, 1_024), 9).await })
            .await
            .expect("store")
            .expect("applied");
    assert_eq!((taken.receipts, effects.notify.get(&alice1)), (0, None));
}

/// Commits `envelopes` in one transaction, as a chat's lane commits its batch.
async fn commit_together(db: &Database, envelopes: &[Envelope]) -> Effects {
    let ((), effects) = run(db, async |tx| {
        let mut effects = Effects::default();
        let mut fan_out = FanOut::default();
        for envelope in envelopes {
            let (decision, more) = commit_envelope_into(
                &tx,
                HERE,
                envelope,
                HERE,
                GroupSource::Directory,
                &BTreeSet::new(),
                1_000,
                &mut fan_out,
            )
            .await?
            .expect("accepted");
            assert!(
                matches!(
                    &decision,
                    CommitDecision::Answer(SendOutcome {
                        outcome: Some(send_outcome::Outcome::Sent(_))
                    })
                ),
                "{decision:?}"
            );
            effects.merge(more);
        }
        fan_out.write(&tx, 1_000, &mut effects).await?;
        Ok(Ok(((), effects)))
    })
    .await
    .expect("committed");
    check_pushed(db, &effects).await;
    effects
}

#[tokio::test]
async fn envelopes_of_a_chat_committed_together_reach_each_device_as_one_entry() {
    let f = fixture();
    let GroupOf {
        team,
        alice1,
        devices,
        listed,
    } = group_of(&f.db, 3).await;
    let message = |number: u8| {
        group_envelope(
            team,
            1,
            EnvelopeKind::Message,
            alice1,
            &devices,
            &listed,
            number,
            u64::from(number),
        )
    };
    let effects = commit_together(&f.db, &[message(1), message(2), message(3)]).await;
    for device in &devices {
        assert_eq!(effects.notify.get(device), Some(&1), "one entry each");
        // Sent along with the push, as the member would fetch it (`check_pushed`).
        assert_eq!(effects.pushed[device].entries().len(), 1, "sent along");
    }

    // Each member fetches the three messages as one entry, in order.
    let (batch, _) = fetch(&f.db, devices[0], &[]).await;
    assert_eq!(batch.entries.len(), 1, "{batch:?}");
    let Some(queue_entry::Item::Messages(queued)) = &batch.entries[0].item else {
        panic!("an entry of messages, got {:?}", batch.entries[0]);
    };
    let numbers: Vec<u64> = queued.messages.iter().map(|m| m.sender_seq).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    let chat_seqs: Vec<u64> = queued.messages.iter().map(|m| m.chat_seq).collect();
    assert_eq!(chat_seqs, vec![1, 2, 3]);
    assert!(queued.messages.iter().all(|m| m.group == team.0));
    assert_eq!(queued.messages[1].group_ciphertext, vec![2; 40]);

    // Acknowledging the entry makes a delivered receipt for each message it held, all three
    // in one outbox entry.
    for device in &devices {
        let (_, effects) = fetch(&f.db, *device, &[1]).await;
        assert!(effects.outbox_pushed);
    }
    let pending =
        f.db.transact(|tx| async move { outbox::peek(&tx, HERE, 100).await })
            .await
            .expect("peeked");
    assert_eq!(pending.len(), 3, "one outbox entry per member's ack");
    let (taken, effects) =
        f.db.transact(|tx| async move { deliver_local_receipts(&tx, HERE, (256, 1_024), 9).await })
            .await
            .expect("store")
            .expect("applied");
    assert_eq!(taken.receipts, 9, "three members × three messages");
    assert!(
        !effects.pushed[&alice1].entries().is_empty(),
        "receipts sent along"
    );
    check_pushed(&f.db, &effects).await;
    let (batch, _) = fetch(&f.db, alice1, &[]).await;
    let delivered: BTreeSet<(Vec<u8>, wire::DeviceAddr)> = batch
        .entries
        .iter()
        .flat_map(|entry| match &entry.item {
            Some(queue_entry::Item::Receipts(receipts)) => receipts.receipts.clone(),
            Some(queue_entry::Item::Receipt(receipt)) => vec![receipt.clone()],
            other => panic!("receipts, got {other:?}"),
        })
        .map(|receipt| (receipt.client_message_id, receipt.recipient))
        .collect();
    assert_eq!(delivered.len(), 9, "{delivered:?}");
    let receipt_entries: Vec<u64> = batch.entries.iter().map(|entry| entry.queue_seq).collect();
    fetch(&f.db, alice1, &receipt_entries).await;

    // An unacknowledged entry of messages expires into a receipt for each of them.
    let later = message(4);
    let later_too = message(5);
    commit_together(&f.db, &[later, later_too]).await;
    let (expired, effects) = run(&f.db, async |tx| {
        expire_queues(
            &tx,
            HERE,
            1_000 + device_queue::QUEUE_RETENTION_MS_DEFAULT + 1,
        )
        .await
    })
    .await
    .expect("swept");
    assert_eq!(expired.expired_entries, 3, "one entry per member");
    assert!(effects.outbox_pushed);
    let (taken, _) =
        f.db.transact(|tx| async move { deliver_local_receipts(&tx, HERE, (256, 1_024), 9).await })
            .await
            .expect("store")
            .expect("applied");
    assert_eq!(taken.receipts, 6, "three members × two messages expired");
}

#[tokio::test]
async fn a_local_outbox_entry_of_an_earlier_build_still_reaches_the_sender() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let alice1 = device_in(alice, 1);
    let receipt = QueuedReceipt {
        chat: ChatId([3; 16]).0.to_vec(),
        client_message_id: vec![4; 16],
        recipient: device_in(AccountId(99), 1).into(),
        state: ReceiptState::Delivered as i32,
        at_ms: 5,
        sender: alice1.into(),
    };
    // One receipt per entry, as builds before bundled entries pushed them.
    f.db.transact(|tx| {
        let bytes = receipt.encode_to_vec();
        async move { outbox::Pushes::new().push(&tx, HERE, &bytes) }
    })
    .await
    .expect("pushed");
    let (taken, effects) =
        f.db.transact(|tx| async move { deliver_local_receipts(&tx, HERE, (256, 1_024), 9).await })
            .await
            .expect("store")
            .expect("applied");
    assert_eq!(taken.receipts, 1);
    assert_eq!(effects.notify.get(&alice1), Some(&1));
    let (batch, _) = fetch(&f.db, alice1, &[]).await;
    assert_eq!(
        batch.entries[0].item,
        Some(queue_entry::Item::Receipt(receipt))
    );
}

#[tokio::test]
async fn the_pump_takes_whole_outbox_entries_up_to_its_limits() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let alice1 = device_in(alice, 1);
    let receipt = |recipient: u64| QueuedReceipt {
        chat: ChatId([3; 16]).0.to_vec(),
        client_message_id: vec![4; 16],
        recipient: device_in(AccountId(100 + recipient), 1).into(),
        state: ReceiptState::Delivered as i32,
        at_ms: 5,
        sender: alice1.into(),
    };
    // 40 entries of 3 receipts each: more than one read of the outbox.
    f.db.transact(|tx| async move {
        let mut pushes = outbox::Pushes::new();
        for entry in 0..40u64 {
            let bytes = LocalOutboxEntry {
                receipts: (0..3).map(|index| receipt(entry * 3 + index)).collect(),
            }
            .encode_to_vec();
            pushes.push(&tx, HERE, &bytes)?;
        }
        Ok(())
    })
    .await
    .expect("pushed");
    let pump = async |limits: (usize, usize)| {
        f.db.transact(|tx| async move { deliver_local_receipts(&tx, HERE, limits, 9).await })
            .await
            .expect("store")
            .expect("applied")
            .0
    };
    // Whole entries until at least 50 receipts: 17 entries.
    let first = pump((256, 50)).await;
    assert_eq!((first.receipts, first.more), (51, true));
    // At most 20 entries.
    let second = pump((20, 1_000)).await;
    assert_eq!((second.receipts, second.more), (60, true));
    // The rest, and the outbox is empty.
    let third = pump((256, 1_000)).await;
    assert_eq!((third.receipts, third.more), (9, false));
    let fourth = pump((256, 1_000)).await;
    assert_eq!((fourth.receipts, fourth.more), (0, false));
    let (batch, _) = fetch(&f.db, alice1, &[]).await;
    let receipts: usize = batch
        .entries
        .iter()
        .map(|entry| match &entry.item {
            Some(queue_entry::Item::Receipts(receipts)) => receipts.receipts.len(),
            Some(queue_entry::Item::Receipt(_)) => 1,
            other => panic!("receipts, got {other:?}"),
        })
        .sum();
    assert_eq!(receipts, 120, "every receipt reached alice once");
}

#[tokio::test]
async fn an_entry_of_messages_stops_at_its_count_and_its_bytes() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let alice1 = device_in(alice, 1);
    let bob1 = device_in(bob, 1);
    let count = MESSAGES_PER_QUEUE_ENTRY_MAX + 1;
    let envelopes: Vec<Envelope> = (1..=count as u64)
        .map(|number| envelope(alice1, &[bob1], &[bob], number as u8, number))
        .collect();
    let effects = commit_together(&f.db, &envelopes).await;
    assert_eq!(
        effects.notify.get(&bob1),
        Some(&2),
        "a full entry, then one more"
    );
    let (batch, _) = fetch(&f.db, bob1, &[]).await;
    let Some(queue_entry::Item::Messages(first)) = &batch.entries[0].item else {
        panic!("an entry of messages, got {:?}", batch.entries[0]);
    };
    assert_eq!(first.messages.len(), MESSAGES_PER_QUEUE_ENTRY_MAX);
    assert_eq!(message_of(&batch.entries[1]).sender_seq, count as u64);

    // Two large messages do not fit one entry's bytes: each goes alone.
    let carol = account(&f.db, "carol", HERE, 1).await;
    let carol1 = device_in(carol, 1);
    let large = |number: u8| {
        let mut large = envelope(alice1, &[carol1], &[carol], number, u64::from(number));
        large.ciphertexts[0].body = vec![number; QUEUED_MESSAGES_BYTES_MAX / 2];
        large
    };
    let effects = commit_together(&f.db, &[large(1), large(2)]).await;
    assert_eq!(effects.notify.get(&carol1), Some(&2));
    let (batch, _) = fetch(&f.db, carol1, &[]).await;
    assert_eq!(batch.entries.len(), 2);
    assert_eq!(message_of(&batch.entries[0]).sender_seq, 1);
    assert_eq!(message_of(&batch.entries[1]).sender_seq, 2);
}

#[tokio::test]
async fn acks_become_delivered_receipts_for_the_sender() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let carol = account(&f.db, "carol", ELSEWHERE, 0).await;
    let (alice1, bob1) = (device_in(alice, 1), device_in(bob, 1));
    commit(&f.db, &envelope(alice1, &[bob1], &[bob, alice], 1, 1), HERE).await;
    // carol (homed elsewhere) sends to bob: her receipt must travel through the outbox.
    let from_carol = envelope(device_in(carol, 1), &[bob1], &[bob], 2, 1);
    let (outcome, _) = commit(&f.db, &from_carol, ELSEWHERE).await;
    assert!(
        matches!(outcome, send_outcome::Outcome::Sent(_)),
        "{outcome:?}"
    );

    let (batch, _) = fetch(&f.db, bob1, &[]).await;
    assert_eq!(
        batch
            .entries
            .iter()
            .map(|e| e.queue_seq)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    let (after_ack, effects) = fetch(&f.db, bob1, &[1, 2]).await;
    assert!(after_ack.entries.is_empty(), "acked entries are deleted");
    assert_eq!(after_ack.latest_queue_seq, 2, "the counter survives acks");
    assert!(effects.outbox_pushed, "carol's receipt goes to her region");
    assert_eq!(
        effects.notify.get(&alice1),
        Some(&1),
        "alice's receipt is queued here"
    );
    assert_eq!(
        effects.pushed[&alice1].entries().len(),
        1,
        "and sent along with its push"
    );

    let (alice_batch, _) = fetch(&f.db, alice1, &[]).await;
    let Some(queue_entry::Item::Receipt(receipt)) = &alice_batch.entries[0].item else {
        panic!("a receipt")
    };
    assert_eq!(receipt.state, ReceiptState::Delivered as i32);
    assert_eq!(receipt.recipient, bob1.into());
    assert_eq!(receipt.client_message_id, vec![1; 16]);

    let pending =
        f.db.transact(|tx| async move { outbox::peek(&tx, ELSEWHERE, 10).await })
            .await
            .expect("outbox");
    assert_eq!(pending.len(), 1);
    // Acking again (from the cursor past them, as a device that stored them does) changes
    // nothing: acks are idempotent.
    let (_, effects) = fetch_after(&f.db, bob1, &[1, 2], 2).await.expect("fetched");
    assert_eq!(effects, Effects::default());
}

#[tokio::test]
async fn undelivered_entries_expire_into_receipts_for_the_senders() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let carol = account(&f.db, "carol", ELSEWHERE, 0).await;
    let (alice1, bob1) = (device_in(alice, 1), device_in(bob, 1));
    commit(&f.db, &envelope(alice1, &[bob1], &[bob, alice], 1, 1), HERE).await;
    let from_carol = envelope(device_in(carol, 1), &[bob1], &[bob], 2, 1);
    commit(&f.db, &from_carol, ELSEWHERE).await;
    let expire = async |now_ms: u64| {
        run(&f.db, async |tx| expire_queues(&tx, HERE, now_ms).await)
            .await
            .expect("swept")
    };

    // Within the retention window nothing expires.
    let retention_ms = fdb_layers::device_queue::QUEUE_RETENTION_MS_DEFAULT;
    let (early, effects) = expire(1_000 + retention_ms).await;
    assert_eq!(early, ExpiredQueues::default());
    assert_eq!(effects, Effects::default());

    let (late, effects) = expire(1_001 + retention_ms).await;
    assert_eq!(
        late,
        ExpiredQueues {
            expired_entries: 2,
            more: false
        }
    );
    assert!(effects.outbox_pushed, "carol's receipt goes to her region");
    assert_eq!(
        effects.notify.get(&alice1),
        Some(&1),
        "alice's is queued here"
    );
    let (bob_batch, _) = fetch(&f.db, bob1, &[]).await;
    assert!(bob_batch.entries.is_empty(), "the expired entries are gone");
    assert_eq!(bob_batch.latest_queue_seq, 2);

    let (alice_batch, _) = fetch(&f.db, alice1, &[]).await;
    let Some(queue_entry::Item::Receipt(receipt)) = &alice_batch.entries[0].item else {
        panic!("a receipt")
    };
    assert_eq!(receipt.state, ReceiptState::Expired as i32);
    assert_eq!(receipt.recipient, bob1.into());
    assert_eq!(receipt.at_ms, 1_001 + retention_ms);
    let pending =
        f.db.transact(|tx| async move { outbox::peek(&tx, ELSEWHERE, 10).await })
            .await
            .expect("outbox");
    let forwarded = QueuedReceipt::decode(&pending[0].1[..]).expect("a receipt");
    assert_eq!(forwarded.state, ReceiptState::Expired as i32);
    // A second sweep finds nothing: each entry expires once.
    assert_eq!(
        expire(2_000 + retention_ms).await.0,
        ExpiredQueues::default()
    );
}

#[tokio::test]
async fn a_retried_registration_answers_its_first_result() {
    let f = fixture();
    let create = key();
    let record = f
        .db
        .transact(|tx| async move { directory::create_account(&tx, "dora", HERE, &create).await })
        .await
        .expect("store")
        .expect("name free");
    let register = wire::Register {
        name: "dora".into(),
        identity_key: vec![1; 32],
        signing_key: vec![2; 32],
        one_time_keys: vec![OneTimeKey {
            key_id: "k".into(),
            public_key: vec![3; 32],
            ..OneTimeKey::default()
        }],
        registration_token: String::new(),
        fallback_key: None,
    };
    let request = key();
    let attempt = async |request: &IdempotencyKey| {
        run(&f.db, async |tx| {
            register_device(&tx, &record, &register, request).await
        })
        .await
    };
    let first = attempt(&request).await.expect("registered").0;
    // The same request again, as after an unknown commit result: the same device.
    let retried = attempt(&request).await.expect("registered again").0;
    assert_eq!(first, retried);
    // The client retrying after a lost answer (a new request, the same keys): the same
    // device, not "name taken".
    let resent = attempt(&key()).await.expect("registered on a resend").0;
    assert_eq!(first, resent);
    // Another device wanting the name is refused.
    let stranger = wire::Register {
        identity_key: vec![7; 32],
        ..register.clone()
    };
    let other = run(&f.db, async |tx| {
        register_device(&tx, &record, &stranger, &key()).await
    })
    .await
    .map(|_| ())
    .map_err(|error| error.code);
    assert_eq!(other, Err(ErrorCode::NameTaken));
    let count = f
        .db
        .transact(|tx| async move { keys::one_time_key_count(&tx, device_in(record.id, 1)).await })
        .await
        .expect("count");
    assert_eq!(count, 1, "the retry uploaded nothing twice");
}

#[tokio::test]
async fn forwarded_receipts_apply_once_and_only_past_a_recorded_state() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let alice1 = device_in(alice, 1);
    let receipt = QueuedReceipt {
        chat: vec![0; 16],
        client_message_id: vec![5; 16],
        recipient: DeviceAddr {
            account: 99,
            device: 1,
        },
        state: ReceiptState::Delivered as i32,
        at_ms: 10,
        sender: alice1.into(),
    };
    let forward = |commit_version: u64| wire::ForwardReceipts {
        receipts: vec![wire::ReceiptForward {
            receipt: receipt.clone(),
            origin_region: 2,
            origin_stamp: [&commit_version.to_be_bytes()[..], &[0; 4]].concat(),
        }],
    };
    let apply = async |request: wire::ForwardReceipts| {
        run(&f.db, async |tx| {
            apply_forwarded_receipts(&tx, HERE, &request, 3_000).await
        })
        .await
        .expect("applied")
        .1
    };
    assert_eq!(apply(forward(1)).await.notify.get(&alice1), Some(&1));
    assert!(
        apply(forward(1)).await.notify.is_empty(),
        "a redelivered batch is applied once"
    );
    // Nothing records a forwarded receipt (it was made once, by the removal of a queue entry
    // there), but one recorded by another route holds a lower state back.
    f.db.transact(|tx| async move {
        fdb_layers::receipts::advance(
            &tx,
            ChatId([0; 16]),
            ClientMessageId([5; 16]),
            DeviceAddress {
                account: AccountId(99),
                device: DeviceId(1),
            },
            ReceiptState::Expired,
        )
        .await
    })
    .await
    .expect("recorded");
    assert!(
        apply(forward(2)).await.notify.is_empty(),
        "a state below the recorded one does not move"
    );
    let (batch, _) = fetch(&f.db, alice1, &[]).await;
    assert_eq!(batch.entries.len(), 1);
    let malformed = wire::ForwardReceipts {
        receipts: vec![wire::ReceiptForward {
            receipt: receipt.clone(),
            origin_region: 2,
            origin_stamp: vec![1, 2, 3],
        }],
    };
    let refused = run(&f.db, async |tx| {
        apply_forwarded_receipts(&tx, HERE, &malformed, 3_000).await
    })
    .await
    .expect_err("refused");
    assert_eq!(refused.code, ErrorCode::Malformed);
}

#[tokio::test]
async fn one_time_keys_are_claimed_once_each() {
    let f = fixture();
    let bob = account(&f.db, "bob", HERE, 1).await;
    let mut claimed = BTreeSet::new();
    for _ in 0..3 {
        let request = key();
        let (bundle, _) = run(&f.db, async |tx| claim_keys(&tx, HERE, bob, &request).await)
            .await
            .expect("claimed");
        assert_eq!(bundle.devices.len(), 1);
        if let Some(key) = &bundle.devices[0].one_time_key {
            assert!(
                claimed.insert(key.key_id.clone()),
                "claimed twice: {}",
                key.key_id
            );
        }
    }
    assert_eq!(claimed.len(), 2, "two keys, then none left");
    let refused = run(&f.db, async |tx| {
        claim_keys(&tx, HERE, AccountId(999), &key()).await
    })
    .await;
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.code),
        Err(ErrorCode::UnknownAccount)
    );
}

#[tokio::test]
async fn bad_keys_are_refused() {
    assert!(check_keys(&[0; 31], &[0; 32], &[]).is_err());
    let too_many = vec![
        OneTimeKey {
            key_id: "k".into(),
            public_key: vec![0; 32],
            ..OneTimeKey::default()
        };
        ONE_TIME_KEYS_PER_UPLOAD_MAX + 1
    ];
    assert_eq!(
        check_keys(&[0; 32], &[0; 32], &too_many).map_err(|e| e.code),
        Err(ErrorCode::TooLarge)
    );
}

/// Makes the stored envelope of `chat#chat_seq` undecodable, as a flipped bit in its first
/// byte would: its tag byte becomes 0xff (wire type 7, which protobuf does not have). The
/// log entry's own fields still decode, so its sender can still be told.
async fn damage_envelope(db: &Database, chat: ChatId, chat_seq: u64) {
    db.transact(|tx| async move {
        let envelope = chat_log::entry(&tx, chat, chat_seq)
            .await?
            .expect("the entry exists")
            .envelope_bytes;
        let record = fdb_layers::Subspace::new(&("chat_log", chat))
            .subspace(&("entry",))
            .subspace(&(chat_seq,));
        let (begin, end) = record.range();
        let rows = tx
            .get_range(&begin, &end, fdb_layers::RangeOptions::default())
            .await?;
        let (key, mut value) = rows.into_iter().next().expect("one chunk");
        let at = value
            .windows(envelope.len())
            .position(|window| window == &envelope[..])
            .expect("the envelope is in the record");
        value[at] = 0xff;
        tx.set(&key, &value)
    })
    .await
    .expect("damaged");
}

/// Overwrites a device queue entry with bytes that do not decode.
async fn damage_queue_entry(db: &Database, device: DeviceAddress, queue_seq: u64) {
    db.transact(|tx| async move {
        let key = fdb_layers::Subspace::new(&("device_queue", device))
            .subspace(&("entry",))
            .pack(&(queue_seq,));
        tx.set(&key, &[0xff, 0xff, 0xff])
    })
    .await
    .expect("damaged");
}

#[tokio::test]
async fn a_quarantined_recipient_refuses_the_envelope_and_nothing_is_stored() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let carol = account(&f.db, "carol", HERE, 1).await;
    let (alice1, bob1, carol1) = (device_in(alice, 1), device_in(bob, 1), device_in(carol, 1));
    let quarantined = BTreeSet::from([bob1]);
    let to_bob = envelope(alice1, &[bob1], &[bob, alice], 1, 1);
    let refused = run(&f.db, async |tx| {
        commit_envelope(
            &tx,
            HERE,
            &to_bob,
            HERE,
            GroupSource::Directory,
            &quarantined,
            1_000,
        )
        .await
    })
    .await
    .map(|_| ())
    .map_err(|error| error.code);
    assert_eq!(refused, Err(ErrorCode::RecipientUnavailable));
    let last = f
        .db
        .transact(|tx| async move { chat_log::last_seq(&tx, ChatId::direct(alice, bob)).await })
        .await
        .expect("read");
    assert_eq!(last, 0, "nothing was appended");
    // Other recipients are served as before.
    let to_carol = envelope(alice1, &[carol1], &[carol, alice], 2, 1);
    let (decision, effects) = run(&f.db, async |tx| {
        commit_envelope(
            &tx,
            HERE,
            &to_carol,
            HERE,
            GroupSource::Directory,
            &quarantined,
            1_000,
        )
        .await
    })
    .await
    .expect("accepted");
    assert!(matches!(decision, CommitDecision::Answer(_)));
    assert_eq!(effects.notify.get(&carol1), Some(&1));
    // The quarantined device's own fetch is refused, without touching its queue.
    let request = FetchAndAck {
        ack: None,
        fetch: Some(FetchQueue {
            after_queue_seq: 0,
            limit: 10,
        }),
    };
    let fetched = run(&f.db, async |tx| {
        fetch_and_ack(&tx, HERE, bob1, &request, &quarantined, 2_000).await
    })
    .await
    .map(|_| ())
    .map_err(|error| error.code);
    assert_eq!(fetched, Err(ErrorCode::RecipientUnavailable));
}

#[tokio::test]
async fn unreadable_queue_counters_refuse_the_commit_before_any_write() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let (alice1, bob1) = (device_in(alice, 1), device_in(bob, 1));
    f.db.transact(|tx| async move {
        let key = fdb_layers::Subspace::new(&("device_queue", bob1)).pack(&("latest",));
        tx.set(&key, b"not a counter")
    })
    .await
    .expect("damaged");
    let to_bob = envelope(alice1, &[bob1], &[bob, alice], 1, 1);
    let (decision, effects) = run(&f.db, async |tx| {
        commit_envelope(
            &tx,
            HERE,
            &to_bob,
            HERE,
            GroupSource::Directory,
            &BTreeSet::new(),
            1_000,
        )
        .await
    })
    .await
    .expect("decided");
    let CommitDecision::RecipientQueueUnreadable { device, error } = decision else {
        panic!("expected a refusal, got {decision:?}");
    };
    assert_eq!(device, bob1);
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    assert_eq!(effects, Effects::default());
    let last = f
        .db
        .transact(|tx| async move { chat_log::last_seq(&tx, ChatId::direct(alice, bob)).await })
        .await
        .expect("read");
    assert_eq!(last, 0, "nothing was appended");
}

#[tokio::test]
async fn a_damaged_envelope_fails_the_fetch_and_its_repair_tells_the_sender() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let (alice1, bob1) = (device_in(alice, 1), device_in(bob, 1));
    let chat = ChatId::direct(alice, bob);
    commit(&f.db, &envelope(alice1, &[bob1], &[bob, alice], 1, 1), HERE).await;
    commit(&f.db, &envelope(alice1, &[bob1], &[bob, alice], 2, 2), HERE).await;
    damage_envelope(&f.db, chat, 1).await;

    let request = FetchAndAck {
        ack: None,
        fetch: Some(FetchQueue {
            after_queue_seq: 0,
            limit: 10,
        }),
    };
    let fetched =
        f.db.transact(|tx| {
            let request = request.clone();
            async move { fetch_and_ack(&tx, HERE, bob1, &request, &BTreeSet::new(), 2_000).await }
        })
        .await;
    assert!(
        matches!(
            &fetched,
            Err(StoreError::Corrupt {
                what: "stored envelope",
                ..
            })
        ),
        "{fetched:?}"
    );

    let repair = async |queue_seq: u64| {
        f.db.transact(
            |tx| async move { repair_queue_entry(&tx, HERE, bob1, queue_seq, 5_000).await },
        )
        .await
        .expect("repaired")
    };
    let (first, effects) = repair(1).await;
    let EntryRepair::RemovedSendersTold { told, .. } = first else {
        panic!("expected the sender told, got {first:?}");
    };
    assert_eq!(told, vec![(alice1, ClientMessageId([1; 16]))]);
    assert_eq!(
        effects.notify.get(&alice1),
        Some(&1),
        "alice's receipt is queued"
    );
    assert_eq!(
        repair(1).await.0,
        EntryRepair::Gone,
        "a repair applies once"
    );
    assert_eq!(
        repair(2).await.0,
        EntryRepair::Readable,
        "good entries stay"
    );

    let (batch, _) = fetch(&f.db, bob1, &[]).await;
    assert_eq!(
        batch
            .entries
            .iter()
            .map(|e| e.queue_seq)
            .collect::<Vec<_>>(),
        vec![2],
        "bob's queue reads again, from the next message"
    );
    let (alice_batch, _) = fetch(&f.db, alice1, &[]).await;
    let Some(queue_entry::Item::Receipt(receipt)) = &alice_batch.entries[0].item else {
        panic!("a receipt")
    };
    assert_eq!(receipt.state, ReceiptState::Expired as i32);
    assert_eq!(receipt.recipient, bob1.into());
}

#[tokio::test]
async fn an_undecodable_queue_entry_is_removed_without_a_sender_to_tell() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let (alice1, bob1) = (device_in(alice, 1), device_in(bob, 1));
    commit(&f.db, &envelope(alice1, &[bob1], &[bob, alice], 1, 1), HERE).await;
    damage_queue_entry(&f.db, bob1, 1).await;
    let (outcome, effects) =
        f.db.transact(|tx| async move { repair_queue_entry(&tx, HERE, bob1, 1, 5_000).await })
            .await
            .expect("repaired");
    assert!(
        matches!(outcome, EntryRepair::RemovedUnattributed { .. }),
        "{outcome:?}"
    );
    assert_eq!(effects, Effects::default());
    let (batch, _) = fetch(&f.db, bob1, &[]).await;
    assert!(batch.entries.is_empty());
    assert_eq!(batch.latest_queue_seq, 1, "the sequence never goes back");
    let depth =
        f.db.transact(|tx| async move { device_queue::depth(&tx, bob1).await })
            .await
            .expect("depth");
    assert_eq!(depth, 0);
}

#[tokio::test]
async fn a_receipt_for_a_damaged_sender_queue_does_not_fail_the_ack() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let (alice1, bob1) = (device_in(alice, 1), device_in(bob, 1));
    commit(&f.db, &envelope(alice1, &[bob1], &[bob, alice], 1, 1), HERE).await;
    f.db.transact(|tx| async move {
        let key = fdb_layers::Subspace::new(&("device_queue", alice1)).pack(&("latest",));
        tx.set(&key, b"not a counter")
    })
    .await
    .expect("damaged");
    // bob's ack succeeds; only the push of alice's receipt is skipped.
    let (after_ack, effects) = fetch(&f.db, bob1, &[1]).await;
    assert!(after_ack.entries.is_empty());
    assert!(effects.notify.is_empty());
    let state =
        f.db.transact(|tx| async move {
            receipts::state(
                &tx,
                ChatId::direct(alice, bob),
                ClientMessageId([1; 16]),
                bob1,
            )
            .await
        })
        .await
        .expect("read");
    // A receipt made by the removal of a queue entry is made once by that removal: nothing
    // records it (`fdb_layers::receipts`, "What is recorded").
    assert_eq!(
        state, None,
        "no receipt state is written for a removed entry"
    );
}

#[tokio::test]
async fn the_census_counts_homed_accounts_and_registers_stores_once() {
    let f = fixture();
    account(&f.db, "bob", ELSEWHERE, 0).await;
    account(&f.db, "carol", ELSEWHERE, 0).await;
    account(&f.db, "alice", HERE, 0).await;
    let census = async |claim: Option<([u8; 16], Option<[u8; 16]>)>| {
        let request = wire::StoreCensusRequest {
            region: ELSEWHERE.0,
            claim: claim.map(|(store, previous)| wire::StoreClaim {
                store_id: store.to_vec(),
                previous_store_id: previous.map(|id| id.to_vec()).unwrap_or_default(),
            }),
        };
        run(&f.db, async |tx| store_census(&tx, &request, 7_000).await)
            .await
            .map(|(census, _)| census)
    };
    let first = census(None).await.expect("census");
    assert_eq!((first.accounts_homed, first.store_id.len()), (2, 0));
    let claimed = census(Some(([1; 16], None))).await.expect("claimed");
    assert_eq!(claimed.store_id, vec![1; 16]);
    assert_eq!(claimed.registered_at_ms, 7_000);
    // Another store cannot take the region's place without naming the one it replaces.
    let held = census(Some(([2; 16], None))).await.expect("answered");
    assert_eq!(held.store_id, vec![1; 16]);
    let replaced = census(Some(([2; 16], Some([1; 16]))))
        .await
        .expect("replaced");
    assert_eq!(replaced.store_id, vec![2; 16]);
    let stale = census(Some(([3; 16], Some([1; 16]))))
        .await
        .expect("answered");
    assert_eq!(
        stale.store_id,
        vec![2; 16],
        "a claim naming an old store changes nothing"
    );
    let request = wire::StoreCensusRequest {
        region: ELSEWHERE.0,
        claim: Some(wire::StoreClaim {
            store_id: vec![1; 3],
            previous_store_id: Vec::new(),
        }),
    };
    let refused = run(&f.db, async |tx| store_census(&tx, &request, 7_000).await)
        .await
        .map(|_| ())
        .map_err(|error| error.code);
    assert_eq!(refused, Err(ErrorCode::Malformed));
}

/// A device with real keys: its vodozemac account, and a fallback key it signed.
fn signed_fallback(account: &vodozemac::olm::Account, key_id: &str) -> OneTimeKey {
    let public_key = vodozemac::Curve25519PublicKey::from_bytes([key_id.len() as u8; 32]);
    let payload = wire::fallback_key_signing_payload(
        account.curve25519_key().as_bytes(),
        key_id,
        public_key.as_bytes(),
    );
    OneTimeKey {
        key_id: key_id.into(),
        public_key: public_key.to_vec(),
        signature: account.sign(&payload).to_bytes().to_vec(),
        fallback: true,
    }
}

#[tokio::test]
async fn fallback_keys_are_checked_then_handed_out_flagged_and_signed() {
    let f = fixture();
    let olm = vodozemac::olm::Account::new();
    let create = key();
    let record = f
        .db
        .transact(|tx| async move { directory::create_account(&tx, "fay", HERE, &create).await })
        .await
        .expect("store")
        .expect("name free");
    let register = wire::Register {
        name: "fay".into(),
        identity_key: olm.curve25519_key().to_vec(),
        signing_key: olm.ed25519_key().as_bytes().to_vec(),
        one_time_keys: vec![OneTimeKey {
            key_id: "otk".into(),
            public_key: vec![3; 32],
            ..OneTimeKey::default()
        }],
        registration_token: String::new(),
        fallback_key: Some(signed_fallback(&olm, "fb-1")),
    };
    // A fallback key signed by someone else, or not flagged as one, is refused.
    let forged = wire::Register {
        fallback_key: Some(signed_fallback(&vodozemac::olm::Account::new(), "fb-1")),
        ..register.clone()
    };
    let unflagged = wire::Register {
        fallback_key: Some(OneTimeKey {
            fallback: false,
            ..signed_fallback(&olm, "fb-1")
        }),
        ..register.clone()
    };
    for (bad, code) in [
        (&forged, ErrorCode::BadSignature),
        (&unflagged, ErrorCode::Malformed),
    ] {
        let refused = run(&f.db, async |tx| {
            register_device(&tx, &record, bad, &key()).await
        })
        .await;
        assert_eq!(refused.map(|_| ()).map_err(|error| error.code), Err(code));
    }
    let (registered, _) = run(&f.db, async |tx| {
        register_device(&tx, &record, &register, &key()).await
    })
    .await
    .expect("registered");
    let fay1 = device_in(record.id, registered.device);
    let state = async || {
        run(&f.db, async |tx| signing_key(&tx, fay1).await)
            .await
            .expect("signing key")
            .0
            .fallback_key
    };
    assert_eq!(state().await, wire::FallbackKeyState::Unused as i32);

    let claim = async || {
        let (bundle, _) = run(&f.db, async |tx| {
            claim_keys(&tx, HERE, record.id, &key()).await
        })
        .await
        .expect("claimed");
        bundle.devices[0].one_time_key.clone().expect("a key")
    };
    let first = claim().await;
    assert_eq!((first.key_id.as_str(), first.fallback), ("otk", false));
    assert!(first.signature.is_empty());
    // The one-time keys ran out: the fallback key, flagged, with a signature that verifies
    // under the device's signing key.
    let second = claim().await;
    assert_eq!(second, signed_fallback(&olm, "fb-1"));
    assert!(
        check_fallback_key(
            olm.curve25519_key().as_bytes(),
            olm.ed25519_key().as_bytes(),
            &second
        )
        .is_ok()
    );
    assert_eq!(claim().await, second, "reusable");
    assert_eq!(state().await, wire::FallbackKeyState::Used as i32);

    // The device replaces it: only with a key it signed.
    let upload = async |fallback_key: OneTimeKey| {
        let upload = wire::UploadOneTimeKeys {
            keys: Vec::new(),
            fallback_key: Some(fallback_key),
        };
        run(&f.db, async |tx| {
            upload_one_time_keys(&tx, fay1, &upload, &key()).await
        })
        .await
    };
    let refused = upload(signed_fallback(&vodozemac::olm::Account::new(), "fb-2")).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|error| error.code),
        Err(ErrorCode::BadSignature)
    );
    let (count, _) = upload(signed_fallback(&olm, "fb-2"))
        .await
        .expect("uploaded");
    assert_eq!(
        count,
        wire::OneTimeKeyCount {
            remaining: 0,
            fallback_key: wire::FallbackKeyState::Unused as i32,
            cached: false,
        }
    );
    assert_eq!(claim().await.key_id, "fb-2");
}

#[tokio::test]
async fn a_new_envelope_under_a_taken_sender_seq_is_refused_as_rolled_back() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let (alice1, bob1) = (device_in(alice, 1), device_in(bob, 1));
    for (message, sender_seq) in [(1, 1), (2, 2)] {
        let sent = envelope(alice1, &[bob1], &[bob, alice], message, sender_seq);
        assert!(matches!(
            commit(&f.db, &sent, HERE).await.0,
            send_outcome::Outcome::Sent(_)
        ));
    }
    // A retry of message 2 is a duplicate; a new message numbered 2 is a rolled-back device.
    let retry = envelope(alice1, &[bob1], &[bob, alice], 2, 2);
    let send_outcome::Outcome::Sent(again) = commit(&f.db, &retry, HERE).await.0 else {
        panic!("a duplicate")
    };
    assert!(again.commits[0].duplicate);
    let restored = envelope(alice1, &[bob1], &[bob, alice], 9, 2);
    let refused = run(&f.db, async |tx| {
        commit_envelope(
            &tx,
            HERE,
            &restored,
            HERE,
            GroupSource::Directory,
            &BTreeSet::new(),
            1_000,
        )
        .await
    })
    .await
    .expect_err("refused");
    assert_eq!(refused.code, ErrorCode::DeviceRolledBack);
    assert!(!refused.code.is_retryable());
    assert!(
        refused.message.contains("register this device again"),
        "{refused}"
    );
    let (batch, _) = fetch(&f.db, bob1, &[]).await;
    assert_eq!(
        batch.entries.len(),
        2,
        "nothing stored for the refused envelope"
    );
    // The home region kept the sender's highest device_seq for the edge to check.
    let (key, _) = run(&f.db, async |tx| signing_key(&tx, alice1).await)
        .await
        .expect("signing key");
    assert_eq!(key.device_seq, 2);
}

#[tokio::test]
async fn a_fetch_from_behind_an_acknowledged_entry_is_refused_as_rolled_back() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let (alice1, bob1) = (device_in(alice, 1), device_in(bob, 1));
    for message in 1..=3 {
        let sent = envelope(alice1, &[bob1], &[bob, alice], message, message.into());
        commit(&f.db, &sent, HERE).await;
    }
    // bob stores entries 1 and 2, then acks them from his cursor 2 (in one request, acks
    // come before the read).
    let (batch, _) = fetch_after(&f.db, bob1, &[1, 2], 2).await.expect("fetched");
    assert_eq!(batch.entries.len(), 1);
    // An ack of entries already gone (a retry) is still fine from the same cursor.
    fetch_after(&f.db, bob1, &[1, 2], 2).await.expect("retried");
    let (key, _) = run(&f.db, async |tx| signing_key(&tx, bob1).await)
        .await
        .expect("signing key");
    assert_eq!(key.acked_queue_seq, 2);
    // A copy of bob's device from before it stored entry 2 fetches after 1: refused, and
    // its acks are not applied (entry 3 stays queued, no receipt goes to alice).
    let refused = fetch_after(&f.db, bob1, &[3], 1)
        .await
        .expect_err("rolled back");
    assert_eq!(refused.code, ErrorCode::DeviceRolledBack);
    let (batch, effects) = fetch_after(&f.db, bob1, &[], 2).await.expect("fetched");
    assert_eq!(
        batch
            .entries
            .iter()
            .map(|e| e.queue_seq)
            .collect::<Vec<_>>(),
        [3]
    );
    assert_eq!(effects, Effects::default());
    // Acking entry 3 raises the mark; the cursor 2 is now behind it.
    fetch_after(&f.db, bob1, &[3], 3).await.expect("acked");
    assert!(fetch_after(&f.db, bob1, &[], 2).await.is_err());
}

/// Outbox entries leave the region only once the standby confirmed their commit: the prefix of
/// entries at or below the confirmed version, stopping at the first one above it.
#[test]
fn only_entries_the_standby_confirmed_leave_the_region() {
    let seq = |version: u64, order: u16| {
        let mut bytes = [0u8; outbox::OutboxSeq::BYTES];
        bytes[..8].copy_from_slice(&version.to_be_bytes());
        bytes[8..10].copy_from_slice(&order.to_be_bytes());
        outbox::OutboxSeq::from_bytes(&bytes).expect("a sequence")
    };
    let entries = [
        (seq(7, 0), ()),
        (seq(7, 1), ()),
        (seq(9, 0), ()),
        (seq(12, 0), ()),
    ];
    assert_eq!(entries[2].0.commit_version(), 9);
    assert_eq!(confirmed_prefix(&entries, None), 4, "no standby: all");
    assert_eq!(confirmed_prefix(&entries, Some(6)), 0);
    assert_eq!(confirmed_prefix(&entries, Some(7)), 2);
    assert_eq!(confirmed_prefix(&entries, Some(11)), 3);
    assert_eq!(confirmed_prefix(&entries, Some(12)), 4);
    assert_eq!(confirmed_prefix::<()>(&[], Some(12)), 0);
}

/// Alice moved here from a region that numbered her chat with bob for her (bob is homed here,
/// and this log numbers the chat for him): she has a view. Bob's messages reach her under the
/// view's next numbers, her own are acknowledged under the view's (one the old home numbered
/// keeps that number, retried or not), and bob keeps seeing this log's numbers.
#[tokio::test]
async fn an_account_that_moved_in_goes_on_with_its_own_numbers_and_its_peer_with_the_logs() {
    let f = fixture();
    let alice = account(&f.db, "alice", HERE, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let (alice1, bob1) = (device_in(alice, 1), device_in(bob, 1));
    let chat = ChatId::direct(alice, bob);
    let chat_seq_of = |outcome: send_outcome::Outcome| {
        let send_outcome::Outcome::Sent(sent) = outcome else {
            panic!("sent: {outcome:?}");
        };
        (sent.commits[0].chat_seq, sent.commits[0].duplicate)
    };
    // Two of bob's messages, before alice's view opens: this log's 1 and 2.
    for (id, sender_seq) in [(1, 1), (2, 2)] {
        let sent = envelope(bob1, &[alice1], &[alice, bob], id, sender_seq);
        commit(&f.db, &sent, HERE).await;
    }
    let (batch, _) = fetch(&f.db, alice1, &[]).await;
    let acks: Vec<u64> = batch.entries.iter().map(|entry| entry.queue_seq).collect();
    fetch(&f.db, alice1, &acks).await;
    // The move: her devices know the chat up to 5, bob's second message as 5, and her message
    // 12, which the old home took and numbered 6, is not here yet.
    f.db.transact(|tx| async move {
        chat_log::views::open(&tx, chat, alice, 5)?;
        chat_log::views::show_as(&tx, chat, alice, 2, 5)?;
        chat_log::views::show_by_id(&tx, chat, alice, alice1, ClientMessageId([12; 16]), 6)
    })
    .await
    .expect("the move");

    let from_bob = envelope(bob1, &[alice1], &[alice, bob], 3, 3);
    assert_eq!(
        chat_seq_of(commit(&f.db, &from_bob, HERE).await.0),
        (3, false)
    );
    let hers = envelope(alice1, &[bob1], &[bob, alice], 12, 1);
    assert_eq!(
        chat_seq_of(commit(&f.db, &hers, HERE).await.0),
        (6, false),
        "the old home's number"
    );
    assert_eq!(
        chat_seq_of(commit(&f.db, &hers, HERE).await.0),
        (6, true),
        "a retry, the same"
    );
    let next = envelope(alice1, &[bob1], &[bob, alice], 13, 2);
    assert_eq!(chat_seq_of(commit(&f.db, &next, HERE).await.0), (8, false));
    let late = envelope(bob1, &[alice1], &[alice, bob], 4, 4);
    assert_eq!(chat_seq_of(commit(&f.db, &late, HERE).await.0), (6, false));

    let after = batch.entries.last().map_or(0, |entry| entry.queue_seq);
    let (for_alice, _) = fetch_after(&f.db, alice1, &[], after)
        .await
        .expect("fetched");
    assert_eq!(
        shown_messages(&for_alice),
        [(3, 7), (4, 9)],
        "after the view's 6 and 8"
    );
    let (for_bob, _) = fetch(&f.db, bob1, &[]).await;
    assert_eq!(
        shown_messages(&for_bob),
        [(12, 4), (13, 5)],
        "this log's numbers"
    );
}

/// Swarm seeds 3348 and 3937 (with home moves): dan moved here and was then added to a group.
/// Alice's text, stored here before he joined, was refused once as the group had changed, and
/// she sent it again re-encrypted for the members then, dan included: a duplicate here. It was
/// queued for dan as an account that arrived since it was stored, but the stored copy is the
/// Megolm message from before he had her key, which he cannot read (I8). A group's envelope goes
/// again only to the accounts its stored copy names.
#[tokio::test]
async fn a_group_text_sent_again_is_not_queued_for_a_member_added_since_it_was_stored() {
    let f = fixture();
    let GroupOf {
        team,
        alice1,
        devices,
        listed,
    } = group_of(&f.db, 1).await;
    let bob1 = devices[0];
    let first = group_envelope(
        team,
        1,
        EnvelopeKind::Message,
        alice1,
        &[bob1],
        &listed,
        7,
        1,
    );
    let (outcome, _) = commit(&f.db, &first, HERE).await;
    assert!(
        matches!(outcome, send_outcome::Outcome::Sent(_)),
        "{outcome:?}"
    );
    // Dan's home moves here, then he joins.
    let dan = account(&f.db, "dan", HERE, 1).await;
    let dan1 = device_in(dan, 1);
    f.db.transact(|tx| async move { home_move::set_arrived(&tx, dan, 1_000) })
        .await
        .expect("arrived");
    db_add_member(&f.db, team, dan, key()).await;
    let mut members = listed.clone();
    members.push(dan);
    let again = group_envelope(
        team,
        2,
        EnvelopeKind::Message,
        alice1,
        &[bob1, dan1],
        &members,
        7,
        1,
    );
    let (outcome, effects) = commit(&f.db, &again, HERE).await;
    let send_outcome::Outcome::Sent(sent) = outcome else {
        panic!("sent: {outcome:?}");
    };
    assert!(sent.commits[0].duplicate);
    assert!(!effects.notify.contains_key(&dan1), "{effects:?}");
    let (batch, _) = fetch(&f.db, dan1, &[]).await;
    assert!(batch.entries.is_empty(), "{batch:?}");
}

/// Swarm seed 93 (with standbys and a home move): dan, a member homed elsewhere, has a second
/// device alice had not learned of. Alice's text was stored here first, for bob (its Megolm
/// message at one index, and no entry for dan's second device, which was dan's home's to
/// check); dan's home answered "mismatched devices", and alice built the text again at a later
/// index, giving the second device the key from there. Dan then moved here, and alice's text
/// came again: a duplicate, queued for dan as an account that arrived since, with the stored
/// copy completed by an entry for his second device, which cannot read that build (I8, I1).
/// A moved member with a view now keeps the build sent again as its own copy.
#[tokio::test]
async fn a_moved_member_gets_the_build_of_a_group_text_its_devices_can_read() {
    let f = fixture();
    let GroupOf {
        team,
        alice1,
        devices,
        listed,
    } = group_of(&f.db, 1).await;
    let bob1 = devices[0];
    let dan = account(&f.db, "dan", ELSEWHERE, 2).await;
    let (dan1, dan2) = (device_in(dan, 1), device_in(dan, 2));
    db_add_member(&f.db, team, dan, key()).await;
    let mut members = listed.clone();
    members.push(dan);
    let chat = ChatId::group(team);
    let first = group_envelope(
        team,
        2,
        EnvelopeKind::Message,
        alice1,
        &[bob1, dan1],
        &members,
        7,
        1,
    );
    let (outcome, _) = commit(&f.db, &first, HERE).await;
    assert!(
        matches!(outcome, send_outcome::Outcome::Sent(_)),
        "{outcome:?}"
    );
    f.db.transact(|tx| async move {
        let mut record = directory::account_by_id(&tx, dan).await?.expect("dan");
        record.home_region = HERE;
        record.epoch += 1;
        directory::put_account(&tx, &record).await?;
        home_move::set_arrived(&tx, dan, 1_000)?;
        chat_log::views::open(&tx, chat, dan, 3)
    })
    .await
    .expect("the move");
    let mut again = group_envelope(
        team,
        2,
        EnvelopeKind::Message,
        alice1,
        &[bob1, dan1, dan2],
        &members,
        7,
        1,
    );
    again.group_ciphertext = vec![9; 40];
    let (outcome, _) = commit(&f.db, &again, HERE).await;
    let send_outcome::Outcome::Sent(sent) = outcome else {
        panic!("sent: {outcome:?}");
    };
    assert!(sent.commits[0].duplicate);
    let group_ciphertexts = |batch: &QueueBatch| -> Vec<Vec<u8>> {
        batch
            .entries
            .iter()
            .flat_map(|entry| match &entry.item {
                Some(queue_entry::Item::Message(message)) => vec![message.group_ciphertext.clone()],
                Some(queue_entry::Item::Messages(messages)) => messages
                    .messages
                    .iter()
                    .map(|message| message.group_ciphertext.clone())
                    .collect(),
                _ => Vec::new(),
            })
            .collect()
    };
    for device in [dan1, dan2] {
        let (batch, _) = fetch(&f.db, device, &[]).await;
        assert_eq!(shown_messages(&batch), [(7, 4)], "{device}: in dan's view");
        assert_eq!(
            group_ciphertexts(&batch),
            [vec![9; 40]],
            "{device} gets the build sent again"
        );
    }
    let (batch, _) = fetch(&f.db, bob1, &[]).await;
    assert_eq!(
        group_ciphertexts(&batch),
        [vec![7; 40]],
        "bob keeps the build stored first"
    );
}

/// A member that moved here with a group's chat this region numbers for its other members
/// (`chat_log::views`): the group's texts reach its devices under the numbers of its view,
/// and the others' under the log's.
#[tokio::test]
async fn a_member_that_moved_in_sees_a_groups_texts_under_its_own_numbers() {
    let f = fixture();
    let GroupOf {
        team,
        alice1,
        devices,
        listed,
    } = group_of(&f.db, 2).await;
    let (moved1, stayed1) = (devices[0], devices[1]);
    let chat = ChatId::group(team);
    let moved = moved1.account;
    f.db.transact(|tx| async move { chat_log::views::open(&tx, chat, moved, 5) })
        .await
        .expect("a view");
    let text = |message: u8, sender_seq: u64| {
        group_envelope(
            team,
            1,
            EnvelopeKind::Message,
            alice1,
            &devices,
            &listed,
            message,
            sender_seq,
        )
    };
    let chat_seq_of = |outcome: send_outcome::Outcome| {
        let send_outcome::Outcome::Sent(sent) = outcome else {
            panic!("sent: {outcome:?}");
        };
        (sent.commits[0].chat_seq, sent.commits[0].duplicate)
    };
    assert_eq!(
        chat_seq_of(commit(&f.db, &text(7, 1), HERE).await.0),
        (1, false)
    );
    assert_eq!(
        chat_seq_of(commit(&f.db, &text(8, 2), HERE).await.0),
        (2, false)
    );
    assert_eq!(
        chat_seq_of(commit(&f.db, &text(7, 1), HERE).await.0),
        (1, true),
        "a retry, the same"
    );
    let (for_moved, _) = fetch(&f.db, moved1, &[]).await;
    assert_eq!(
        shown_messages(&for_moved),
        [(7, 6), (8, 7)],
        "after the view's 5"
    );
    let (for_stayed, _) = fetch(&f.db, stayed1, &[]).await;
    assert_eq!(
        shown_messages(&for_stayed),
        [(7, 1), (8, 2)],
        "this log's numbers"
    );
}

/// Swarm seeds 514 and 1240: bob, homed here, sent alice three messages this region stored
/// while alice still lived elsewhere, and her old home never got them (bob's edge could not
/// reach it). Alice moved here. Only bob's retries bring them to her now, and the first retry
/// to arrive was his third: queued alone, it reached her before the first two (I3). An entry
/// queued to her now brings the sender's earlier ones her view never showed, in order.
#[tokio::test]
async fn a_moved_account_gets_a_senders_entries_stored_before_it_arrived_in_order() {
    let f = fixture();
    let elsewhere = RegionId(2);
    let alice = account(&f.db, "alice", elsewhere, 1).await;
    let bob = account(&f.db, "bob", HERE, 1).await;
    let (alice1, bob1) = (device_in(alice, 1), device_in(bob, 1));
    let chat = ChatId::direct(alice, bob);
    let from_bob =
        |id: u8, sender_seq: u64| envelope(bob1, &[alice1], &[alice, bob], id, sender_seq);
    for (id, sender_seq) in [(1, 1), (2, 2), (3, 3)] {
        commit(&f.db, &from_bob(id, sender_seq), HERE).await;
    }
    // She moves here; her devices know the chat up to 5 from her old home, which has none of
    // bob's three.
    f.db.transact(|tx| async move {
        let mut record = directory::account_by_id(&tx, alice).await?.expect("alice");
        record.home_region = HERE;
        record.epoch += 1;
        directory::put_account(&tx, &record).await?;
        home_move::set_arrived(&tx, alice, 1_000)?;
        chat_log::views::open(&tx, chat, alice, 5)
    })
    .await
    .expect("the move");
    // Bob's third comes again first: his first two go before it.
    commit(&f.db, &from_bob(3, 3), HERE).await;
    let (batch, _) = fetch(&f.db, alice1, &[]).await;
    assert_eq!(shown_messages(&batch), [(1, 6), (2, 7), (3, 8)]);
    let acks: Vec<u64> = batch.entries.iter().map(|entry| entry.queue_seq).collect();
    fetch(&f.db, alice1, &acks).await;
    // His first again (a repeat her device drops) and a new one: nothing is shown twice under
    // another number, and the new one comes next.
    commit(&f.db, &from_bob(1, 1), HERE).await;
    commit(&f.db, &from_bob(4, 4), HERE).await;
    let after = acks.last().copied().unwrap_or(0);
    let (batch, _) = fetch_after(&f.db, alice1, &[], after)
        .await
        .expect("fetched");
    assert_eq!(shown_messages(&batch), [(1, 6), (4, 9)]);
}
