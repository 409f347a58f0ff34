//! The core driven by hand: events in, actions and events out, no runtime and no socket (the
//! store is a SQLite file in a temporary directory; peers are plain [`Crypto`] values).

use std::path::PathBuf;

use relay_proto::wire::{
    AccountDevices, Committed, DeviceCiphertext, DeviceKeys, FallbackKeyState, GroupChanged,
    KeyBundle, MismatchedDevices, QueueEntry, QueuedMessage, SentEverywhere, queue_entry,
};
use relay_proto::{AccountId, ChatId, DeviceAddress, DeviceId, ProtoError};

use super::*;
use crate::content::Content;
use crate::crypto::Crypto;
use crate::store::{NewMessage, RecipientState, Settings, Store};

const ALICE: DeviceAddress = DeviceAddress {
    account: AccountId(1),
    device: DeviceId(1),
};
const BOB: DeviceAddress = DeviceAddress {
    account: AccountId(2),
    device: DeviceId(1),
};
const WALL_MS: u64 = 1_800_000_000_000;

/// Alice's device (account 1, region 1) knowing bob (account 2) by name, opened in `mode`.
struct Rig {
    _dir: tempfile::TempDir,
    path: PathBuf,
    core: Core,
}

fn alice(mode: Mode) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("relay.db");
    let mut store = Store::create(&path).expect("create");
    store
        .unlock(&dir.path().join("device.key"))
        .expect("unlock");
    let changes = Crypto::new().take_changes().expect("pickles");
    let identity = Identity {
        account: ALICE.account,
        device: ALICE.device,
        name: "alice".into(),
        region: 1,
        epoch: 1,
    };
    store
        .write(|writer| {
            writer.save_crypto(&changes)?;
            writer.set_identity(&identity)?;
            writer.set_settings(&Settings {
                locator: "127.0.0.1:9".parse().expect("addr"),
                bind_ip: "127.0.0.1".parse().expect("ip"),
                ca_path: None,
            })?;
            writer.upsert_contact(&Contact {
                account: BOB.account,
                name: "bob".into(),
                region: 2,
            })
        })
        .expect("write");
    let core = Core::new(store, identity, mode, 7, 0, WALL_MS).expect("core");
    Rig {
        _dir: dir,
        path,
        core,
    }
}

fn edge() -> SocketAddr {
    "127.0.1.2:4433".parse().expect("addr")
}

/// Keys as the region reports them right after registration.
fn plenty_of_keys() -> OneTimeKeyCount {
    OneTimeKeyCount {
        remaining: 50,
        fallback_key: FallbackKeyState::Unused as i32,
        cached: false,
    }
}

impl Rig {
    fn actions(&mut self, now_ms: u64) -> Vec<Action> {
        std::iter::from_fn(|| self.core.poll_action(now_ms)).collect()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.core.poll_event()).collect()
    }

    /// Connects and answers the key upload every fresh device makes; returns the other actions.
    fn connect(&mut self, now_ms: u64) -> Vec<Action> {
        let actions = self.actions(now_ms);
        assert!(
            matches!(actions.as_slice(), [Action::Connect { .. }]),
            "{actions:?}"
        );
        self.core.handle_connected(edge(), plenty_of_keys(), now_ms);
        let mut others = Vec::new();
        for action in self.actions(now_ms) {
            match action {
                Action::Request {
                    id,
                    request: Request::UploadKeys { .. },
                } => self.core.handle_answer(
                    id,
                    Ok(Response::KeysUploaded(plenty_of_keys())),
                    now_ms,
                ),
                other => others.push(other),
            }
        }
        others.extend(self.actions(now_ms));
        others
    }
}

impl Rig {
    /// Learns that `group` is at version 1 with the accounts of `members`, and types "one" for
    /// it.
    fn group_text_typed(&mut self, group: u64, members: &[DeviceAddress]) {
        self.core
            .learn_group_info(&relay_proto::wire::GroupInfo {
                group,
                version: 1,
                members: members
                    .iter()
                    .map(|device| relay_proto::wire::GroupMemberInfo {
                        account: device.account.0,
                        admin: false,
                    })
                    .collect(),
                ..Default::default()
            })
            .expect("learned");
        self.core
            .compose_group(group, "one", WALL_MS, 0)
            .expect("typed");
    }
}

fn request(actions: &[Action], wanted: impl Fn(&Request) -> bool) -> (RequestId, Request) {
    actions
        .iter()
        .find_map(|action| match action {
            Action::Request { id, request } if wanted(request) => Some((*id, request.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no such request in {actions:?}"))
}

/// A device with one published one-time key, and its key bundle as the region hands it out.
fn peer(address: DeviceAddress) -> (Crypto, DeviceKeys) {
    let mut crypto = Crypto::new();
    crypto.generate_one_time_keys(1);
    let key = crypto.unpublished_one_time_keys().remove(0);
    let keys = DeviceKeys {
        device: address.device.0,
        identity_key: crypto.identity_key().to_vec(),
        signing_key: crypto.signing_key().to_vec(),
        one_time_key: Some(key),
    };
    (crypto, keys)
}

fn sent(region: u32, chat_seq: u64) -> Response {
    Response::Sent(send_outcome::Outcome::Sent(SentEverywhere {
        commits: vec![Committed {
            region,
            chat_seq,
            duplicate: false,
            server_time_ms: WALL_MS + 5,
        }],
        home_region: 0,
    }))
}

fn text_of(crypto: &mut Crypto, from: DeviceAddress, ciphertext: &DeviceCiphertext) -> String {
    let decrypted = crypto
        .decrypt(from, None, ciphertext.message_type, &ciphertext.body)
        .expect("decrypts");
    match Content::from_bytes(&decrypted.plaintext)
        .expect("content")
        .body
    {
        Some(crate::content::body::Body::Text(text)) => text.body,
        other => panic!("not a text: {other:?}"),
    }
}

#[test]
fn a_typed_text_is_stored_first_then_claimed_encrypted_sent_and_ticked() {
    let mut rig = alice(Mode::OnDemand);
    let id = rig
        .core
        .type_text("bob", "hi bob", WALL_MS, 0)
        .expect("typed");
    assert_eq!(
        rig.events(),
        vec![Event::Tick {
            id: id.to_string(),
            peer: "bob".into(),
            tick: Tick::Pending
        }]
    );
    assert_eq!(
        rig.core.store().outbox().expect("outbox").len(),
        1,
        "stored first"
    );
    // On demand, nothing touches the network until a flush window opens.
    assert!(rig.actions(0).is_empty());
    rig.core.open_flush_window(20_000);
    let actions = rig.connect(0);
    let (claim, _) = request(&actions, |r| *r == Request::ClaimKeys(BOB.account));
    let (mut bob, bob_keys) = peer(BOB);
    rig.core.handle_answer(
        claim,
        Ok(Response::Keys(KeyBundle {
            account: BOB.account.0,
            devices: vec![bob_keys],
        })),
        10,
    );
    let actions = rig.actions(10);
    let (send, Request::Send(envelope)) = request(&actions, |r| matches!(r, Request::Send(_)))
    else {
        unreachable!("a send was asked for")
    };
    // The envelope was committed before it was handed out, and reads as typed for bob.
    let stored = rig
        .core
        .store()
        .outbox_entry(id)
        .expect("read")
        .expect("entry");
    assert!(stored.envelope.is_some());
    let recipient = |rig: &Rig| {
        rig.core
            .store()
            .recipients(ALICE, id)
            .expect("recipients")
            .iter()
            .map(|row| (row.device, row.state))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        recipient(&rig),
        vec![(BOB, RecipientState::Pending)],
        "the envelope's devices, with it"
    );
    assert_eq!(envelope.client_message_id, id.0.to_vec());
    assert_eq!(envelope.ciphertexts.len(), 1);
    assert_eq!(text_of(&mut bob, ALICE, &envelope.ciphertexts[0]), "hi bob");
    assert!(!rig.core.flush_settled(10, 20_000), "a send is in flight");

    rig.core.handle_answer(send, Ok(sent(1, 3)), 20);
    let events = rig.events();
    assert!(events.contains(&Event::Tick {
        id: id.to_string(),
        peer: "bob".into(),
        tick: Tick::Sent
    }));
    assert!(rig.core.store().outbox().expect("outbox").is_empty());
    let message = rig
        .core
        .store()
        .message(ALICE, id)
        .expect("read")
        .expect("message");
    assert_eq!((message.tick, message.chat_seq), (Tick::Sent, Some(3)));
    assert_eq!(recipient(&rig), vec![(BOB, RecipientState::Sent)]);
    assert!(rig.core.flush_settled(20, 20_000));
    assert_eq!(
        rig.core.message_state(id).expect("state"),
        MessageState::Ticked(Tick::Sent)
    );
}

/// A send refused with a retryable error is counted once and sent again, the same envelope;
/// its success counts nothing.
#[test]
fn a_failed_send_attempt_is_counted_and_retried() {
    let mut rig = alice(Mode::Live);
    let id = rig.core.type_text("bob", "hi", WALL_MS, 0).expect("typed");
    let actions = rig.connect(0);
    let (claim, _) = request(&actions, |r| *r == Request::ClaimKeys(BOB.account));
    let (_bob, bob_keys) = peer(BOB);
    rig.core.handle_answer(
        claim,
        Ok(Response::Keys(KeyBundle {
            account: BOB.account.0,
            devices: vec![bob_keys],
        })),
        10,
    );
    let actions = rig.actions(10);
    let (send, Request::Send(first)) = request(&actions, |r| matches!(r, Request::Send(_))) else {
        unreachable!("a send was asked for")
    };
    assert_eq!(rig.core.send_attempts_failed(), 0);
    rig.core.handle_answer(
        send,
        Err(ClientError::Remote(ProtoError::new(
            relay_proto::ErrorCode::Unavailable,
            "the region moved",
        ))),
        20,
    );
    assert_eq!(rig.core.send_attempts_failed(), 1);
    let later = 20 + crate::limits::RETRY_DELAY_MS_MAX + 1;
    let mut actions = rig.actions(later);
    if !actions.iter().any(|action| {
        matches!(
            action,
            Action::Request {
                request: Request::Send(_),
                ..
            }
        )
    }) {
        // The failure dropped the connection: the retry goes out once connected again.
        actions = rig.connect(later);
    }
    let (again, Request::Send(second)) = request(&actions, |r| matches!(r, Request::Send(_)))
    else {
        unreachable!("the send was retried")
    };
    assert_eq!(second.client_message_id, first.client_message_id);
    assert_eq!(second.client_message_id, id.0.to_vec());
    rig.core.handle_answer(again, Ok(sent(1, 1)), later + 1);
    assert_eq!(rig.core.send_attempts_failed(), 1);
    assert!(rig.core.store().outbox().expect("outbox").is_empty());
}

#[test]
fn mismatched_devices_reencrypt_the_same_entry_for_exactly_the_current_devices() {
    let mut rig = alice(Mode::Live);
    let id = rig.core.type_text("bob", "one", WALL_MS, 0).expect("typed");
    let actions = rig.connect(0);
    let (claim, _) = request(&actions, |r| *r == Request::ClaimKeys(BOB.account));
    let (mut bob, bob_keys) = peer(BOB);
    rig.core.handle_answer(
        claim,
        Ok(Response::Keys(KeyBundle {
            account: 2,
            devices: vec![bob_keys.clone()],
        })),
        1,
    );
    let actions = rig.actions(1);
    let (send, Request::Send(first)) = request(&actions, |r| matches!(r, Request::Send(_))) else {
        unreachable!()
    };
    // The region: bob has a second device now.
    rig.core.handle_answer(
        send,
        Ok(Response::Sent(send_outcome::Outcome::Mismatched(
            MismatchedDevices {
                accounts: vec![AccountDevices {
                    account: 2,
                    devices: vec![1, 2],
                }],
            },
        ))),
        2,
    );
    let actions = rig.actions(2);
    let (claim, _) = request(&actions, |r| *r == Request::ClaimKeys(BOB.account));
    let second_bob = DeviceAddress {
        account: BOB.account,
        device: DeviceId(2),
    };
    let (mut bob_two, bob_two_keys) = peer(second_bob);
    rig.core.handle_answer(
        claim,
        Ok(Response::Keys(KeyBundle {
            account: 2,
            devices: vec![
                DeviceKeys {
                    one_time_key: None,
                    ..bob_keys
                },
                bob_two_keys,
            ],
        })),
        3,
    );
    let actions = rig.actions(3);
    let (_, Request::Send(second)) = request(&actions, |r| matches!(r, Request::Send(_))) else {
        unreachable!()
    };
    assert_eq!(second.client_message_id, id.0.to_vec(), "the same id");
    assert_eq!(second.sender_seq, first.sender_seq, "the same sender_seq");
    assert!(
        second.device_seq > first.device_seq,
        "a new envelope number"
    );
    assert_eq!(second.ciphertexts.len(), 2);
    assert_eq!(
        second.ciphertexts[0], first.ciphertexts[0],
        "kept for the device still current"
    );
    assert_eq!(text_of(&mut bob, ALICE, &second.ciphertexts[0]), "one");
    assert_eq!(text_of(&mut bob_two, ALICE, &second.ciphertexts[1]), "one");
    let recipients: Vec<DeviceAddress> = rig
        .core
        .store()
        .recipients(ALICE, id)
        .expect("recipients")
        .iter()
        .map(|row| row.device)
        .collect();
    assert_eq!(
        recipients,
        vec![BOB, second_bob],
        "the re-encrypted envelope's"
    );
}

#[test]
fn with_read_receipts_off_a_read_tells_only_the_own_devices() {
    let mut rig = alice(Mode::OnDemand);
    let chat = ChatId::direct(ALICE.account, BOB.account);
    let incoming = ClientMessageId([3; 16]);
    rig.core
        .store
        .write(|writer| {
            writer.insert_message(&NewMessage {
                chat,
                peer: BOB.account,
                outgoing: false,
                sender: BOB,
                client_message_id: incoming,
                sender_seq: 1,
                chat_seq: Some(1),
                text: Some("hi alice"),
                attachment: None,
                sent_at_ms: WALL_MS,
                server_time_ms: Some(WALL_MS),
                tick: Tick::Sent,
                undecryptable: None,
            })?;
            writer.set_read_receipts(false)
        })
        .expect("a message from bob, read receipts off");
    let contact = rig
        .core
        .store()
        .contact_by_name("bob")
        .expect("read")
        .expect("bob");
    // No other own device: marked read here, nothing to send.
    assert_eq!(rig.core.mark_read(&contact, WALL_MS, 0).expect("read"), 1);
    assert!(
        rig.core
            .store()
            .unread_from(BOB.account)
            .expect("unread")
            .is_empty()
    );
    assert!(
        rig.core.store().outbox().expect("outbox").is_empty(),
        "bob is told nothing"
    );

    // With another own device: one receipt, in alice's chat with herself.
    let laptop = DeviceAddress {
        account: ALICE.account,
        device: DeviceId(2),
    };
    let again = ClientMessageId([4; 16]);
    rig.core
        .store
        .write(|writer| {
            writer.set_current_devices(ALICE.account, &[ALICE.device, laptop.device])?;
            writer
                .insert_message(&NewMessage {
                    chat,
                    peer: BOB.account,
                    outgoing: false,
                    sender: BOB,
                    client_message_id: again,
                    sender_seq: 2,
                    chat_seq: Some(2),
                    text: Some("again"),
                    attachment: None,
                    sent_at_ms: WALL_MS,
                    server_time_ms: Some(WALL_MS),
                    tick: Tick::Sent,
                    undecryptable: None,
                })
                .map(|_| ())
        })
        .expect("a laptop and a second message");
    assert_eq!(rig.core.mark_read(&contact, WALL_MS, 0).expect("read"), 1);
    let outbox = rig.core.store().outbox().expect("outbox");
    assert_eq!(outbox.len(), 1);
    assert_eq!(
        (outbox[0].chat, outbox[0].peer),
        (ChatId::direct(ALICE.account, ALICE.account), ALICE.account),
        "to alice's own devices only"
    );

    // On again: the receipt goes to bob's chat (his devices and alice's own).
    rig.core.set_read_receipts(true).expect("on");
    let third = ClientMessageId([5; 16]);
    rig.core
        .store
        .write(|writer| {
            writer
                .insert_message(&NewMessage {
                    chat,
                    peer: BOB.account,
                    outgoing: false,
                    sender: BOB,
                    client_message_id: third,
                    sender_seq: 3,
                    chat_seq: Some(3),
                    text: Some("third"),
                    attachment: None,
                    sent_at_ms: WALL_MS,
                    server_time_ms: Some(WALL_MS),
                    tick: Tick::Sent,
                    undecryptable: None,
                })
                .map(|_| ())
        })
        .expect("a third message");
    assert_eq!(rig.core.mark_read(&contact, WALL_MS, 0).expect("read"), 1);
    let outbox = rig.core.store().outbox().expect("outbox");
    assert_eq!(outbox.len(), 2);
    assert!(
        outbox
            .iter()
            .any(|row| row.chat == chat && row.peer == BOB.account),
        "{outbox:?}"
    );
}

#[test]
fn a_queue_page_is_committed_and_named_before_it_is_acknowledged() {
    let mut rig = alice(Mode::Live);
    let actions = rig.connect(0);
    assert_eq!(
        rig.events(),
        vec![Event::Connected {
            edge: edge().to_string()
        }]
    );
    let (fetch, request_sent) = request(&actions, |r| matches!(r, Request::Fetch { .. }));
    assert_eq!(request_sent, Request::Fetch { after_queue_seq: 0 });
    assert!(
        !actions.iter().any(|action| matches!(
            action,
            Action::Request {
                request: Request::Ack(_),
                ..
            }
        )),
        "nothing is owed yet"
    );
    // carol (account 3, unknown to alice) writes to alice from a session of her own.
    let carol_device = DeviceAddress {
        account: AccountId(3),
        device: DeviceId(1),
    };
    let mut carol = Crypto::new();
    let alice_key = {
        // alice's published one-time key, as carol would claim it.
        let mut store = Store::open(&rig.path).expect("open");
        store
            .unlock(&rig.path.with_file_name("device.key"))
            .expect("unlock");
        store
            .write_with_crypto(|_, crypto| {
                crypto.generate_one_time_keys(1);
                Ok((
                    crypto.identity_key(),
                    crypto.unpublished_one_time_keys().remove(0),
                ))
            })
            .expect("a key")
    };
    carol
        .create_outbound_session(ALICE, &alice_key.0, &alice_key.1.public_key)
        .expect("session");
    let content = Content::text("hello alice", WALL_MS, 1)
        .expect("content")
        .to_bytes();
    let (kind, body) = carol.encrypt(ALICE, &content).expect("encrypt");
    let page = QueueBatch {
        entries: vec![QueueEntry {
            queue_seq: 1,
            item: Some(queue_entry::Item::Message(QueuedMessage {
                chat: ChatId::direct(AccountId(3), ALICE.account).0.to_vec(),
                chat_seq: 1,
                sender: carol_device.into(),
                client_message_id: vec![4; 16],
                sender_seq: 1,
                server_time_ms: WALL_MS + 1,
                message_type: kind,
                ciphertext: body,
                ..Default::default()
            })),
        }],
        latest_queue_seq: 1,
        one_time_keys_remaining: 49,
        fallback_key: FallbackKeyState::Unused as i32,
    };
    rig.core.handle_answer(fetch, Ok(Response::Queue(page)), 5);
    // Committed: the cursor moved and the ack is owed, before anything is acknowledged.
    assert_eq!(rig.core.store().queue_cursor().expect("cursor"), 1);
    assert_eq!(rig.core.store().pending_acks().expect("acks"), vec![1]);
    // The message names an account alice cannot name yet: it waits for one lookup.
    assert!(rig.events().is_empty());
    let actions = rig.actions(5);
    let (lookup, _) = request(&actions, |r| *r == Request::LookupAccount(AccountId(3)));
    // The page reached the latest sequence the region read with it: the queue's end, with no
    // fetch only to hear "nothing more".
    assert!(
        !actions.iter().any(|action| matches!(
            action,
            Action::Request {
                request: Request::Fetch { .. },
                ..
            }
        )),
        "{actions:?}"
    );
    let (ack, acked) = request(&actions, |r| matches!(r, Request::Ack(_)));
    assert_eq!(
        acked,
        Request::Ack(vec![1]),
        "the ack goes in its own request"
    );
    rig.core.handle_answer(
        lookup,
        Ok(Response::Account(AccountInfo {
            account: 3,
            name: "carol".into(),
            region: 1,
            epoch: 1,
        })),
        6,
    );
    let events = rig.events();
    assert!(
        matches!(events.as_slice(), [Event::Message { from, text, .. }] if from == "carol" && text == "hello alice"),
        "{events:?}"
    );
    let caught_up = rig.core.caught_up();
    assert_eq!(
        rig.core.store().pending_acks().expect("acks"),
        vec![1],
        "owed until the region answers the ack"
    );
    rig.core.handle_answer(ack, Ok(Response::Acked), 8);
    assert_eq!(rig.core.caught_up(), caught_up + 1, "the queue's end");
    assert!(rig.core.store().pending_acks().expect("acks").is_empty());
}

#[test]
fn a_push_that_comes_while_a_page_is_fetched_calls_for_one_more() {
    let mut rig = alice(Mode::Live);
    let actions = rig.connect(0);
    let (fetch, _) = request(&actions, |r| matches!(r, Request::Fetch { .. }));
    let empty = || {
        Ok(Response::Queue(QueueBatch {
            entries: Vec::new(),
            latest_queue_seq: 0,
            one_time_keys_remaining: 50,
            fallback_key: FallbackKeyState::Unused as i32,
        }))
    };
    let fetches = |actions: &[Action]| {
        actions
            .iter()
            .filter(|action| {
                matches!(
                    action,
                    Action::Request {
                        request: Request::Fetch { .. },
                        ..
                    }
                )
            })
            .count()
    };
    // The region read the page, then committed an entry and pushed before the page arrived:
    // the empty page is not the queue's end.
    rig.core.handle_push(1, Vec::new());
    assert_eq!(fetches(&rig.actions(1)), 0, "one fetch at a time");
    rig.core.handle_answer(fetch, empty(), 2);
    let actions = rig.actions(2);
    let (again, sent) = request(&actions, |r| matches!(r, Request::Fetch { .. }));
    assert_eq!(sent, Request::Fetch { after_queue_seq: 0 });
    // No push meanwhile: an empty page ends the catch-up.
    rig.core.handle_answer(again, empty(), 3);
    assert_eq!(fetches(&rig.actions(3)), 0);
}

/// Queue entries numbered `seqs`, each a delivered receipt of a message alice never sent (taken
/// and acknowledged, changing nothing).
fn receipt_entries(seqs: std::ops::RangeInclusive<u64>) -> Vec<QueueEntry> {
    seqs.map(|queue_seq| QueueEntry {
        queue_seq,
        item: Some(queue_entry::Item::Receipt(
            relay_proto::wire::QueuedReceipt {
                chat: ChatId::direct(ALICE.account, BOB.account).0.to_vec(),
                client_message_id: vec![queue_seq as u8; 16],
                recipient: BOB.into(),
                state: relay_proto::wire::ReceiptState::Delivered as i32,
                at_ms: WALL_MS,
                sender: ALICE.into(),
            },
        )),
    })
    .collect()
}

/// The fetches and acks among `actions`.
fn fetches_and_acks(actions: &[Action]) -> Vec<(RequestId, Request)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Request { id, request }
                if matches!(request, Request::Fetch { .. } | Request::Ack(_)) =>
            {
                Some((*id, request.clone()))
            }
            _ => None,
        })
        .collect()
}

/// A queue page as the region answers a fetch, keys plenty.
fn queue_page(entries: Vec<QueueEntry>, latest_queue_seq: u64) -> Result<Response> {
    Ok(Response::Queue(QueueBatch {
        entries,
        latest_queue_seq,
        one_time_keys_remaining: 50,
        fallback_key: FallbackKeyState::Unused as i32,
    }))
}

/// Alice connected, her first catch-up over (an empty queue).
fn alice_caught_up() -> Rig {
    let mut rig = alice(Mode::Live);
    let actions = rig.connect(0);
    let (fetch, _) = request(&actions, |r| matches!(r, Request::Fetch { .. }));
    rig.core.handle_answer(fetch, queue_page(Vec::new(), 0), 1);
    assert!(fetches_and_acks(&rig.actions(1)).is_empty());
    rig
}

#[test]
fn entries_a_push_brings_along_are_taken_and_acknowledged_without_a_fetch() {
    let mut rig = alice_caught_up();
    let caught_up = rig.core.caught_up();
    rig.core.handle_push(2, receipt_entries(1..=2));
    assert_eq!(rig.core.store().queue_cursor().expect("cursor"), 2);
    let actions = rig.actions(2);
    let requests = fetches_and_acks(&actions);
    assert!(
        matches!(requests.as_slice(), [(_, Request::Ack(acked))] if *acked == vec![1, 2]),
        "an ack and no fetch: {requests:?}"
    );
    rig.core
        .handle_answer(requests[0].0, Ok(Response::Acked), 3);
    assert_eq!(rig.core.caught_up(), caught_up + 1, "a catch-up of its own");
    assert!(rig.core.store().pending_acks().expect("acks").is_empty());
    // The next push's entries follow the new cursor; one already stored is skipped.
    rig.core.handle_push(3, receipt_entries(2..=3));
    let requests = fetches_and_acks(&rig.actions(4));
    assert!(
        matches!(requests.as_slice(), [(_, Request::Ack(acked))] if *acked == vec![3]),
        "{requests:?}"
    );
}

#[test]
fn a_pushed_run_that_does_not_follow_the_cursor_or_falls_short_is_fetched() {
    let mut rig = alice_caught_up();
    // A gap (entry 1 went in a push this device never read): nothing taken, a fetch.
    rig.core.handle_push(2, receipt_entries(2..=2));
    assert_eq!(rig.core.store().queue_cursor().expect("cursor"), 0);
    let requests = fetches_and_acks(&rig.actions(2));
    assert!(
        matches!(
            requests.as_slice(),
            [(_, Request::Fetch { after_queue_seq: 0 })]
        ),
        "{requests:?}"
    );
    // While that fetch is in flight, a run that follows is left to it.
    rig.core.handle_push(3, receipt_entries(1..=3));
    assert_eq!(rig.core.store().queue_cursor().expect("cursor"), 0);
    assert!(
        fetches_and_acks(&rig.actions(3)).is_empty(),
        "one fetch at a time"
    );
    rig.core
        .handle_answer(requests[0].0, queue_page(receipt_entries(1..=3), 3), 4);
    let requests = fetches_and_acks(&rig.actions(4));
    let (ack, _) = request(&rig_actions_of(&requests), |r| {
        *r == Request::Ack(vec![1, 2, 3])
    });
    rig.core.handle_answer(ack, Ok(Response::Acked), 5);
    // The push that came during the fetch asks for one more page; it comes back empty.
    let requests = fetches_and_acks(&rig.actions(5));
    let (fetch, _) = request(&rig_actions_of(&requests), |r| {
        *r == Request::Fetch { after_queue_seq: 3 }
    });
    rig.core.handle_answer(fetch, queue_page(Vec::new(), 3), 6);
    assert!(fetches_and_acks(&rig.actions(6)).is_empty());
    // A run short of what was announced: taken, then the rest fetched after it.
    rig.core.handle_push(6, receipt_entries(4..=5));
    assert_eq!(rig.core.store().queue_cursor().expect("cursor"), 5);
    let requests = fetches_and_acks(&rig.actions(7));
    request(&rig_actions_of(&requests), |r| {
        *r == Request::Ack(vec![4, 5])
    });
    request(&rig_actions_of(&requests), |r| {
        *r == Request::Fetch { after_queue_seq: 5 }
    });
}

/// `requests` as the actions that carried them.
fn rig_actions_of(requests: &[(RequestId, Request)]) -> Vec<Action> {
    requests
        .iter()
        .map(|(id, request)| Action::Request {
            id: *id,
            request: request.clone(),
        })
        .collect()
}

#[test]
fn a_refusal_as_rolled_back_gives_up_the_outbox_and_refuses_what_follows() {
    let mut rig = alice(Mode::OnDemand);
    let id = rig
        .core
        .type_text("bob", "from the old copy", WALL_MS, 0)
        .expect("typed");
    rig.events();
    rig.core.open_flush_window(20_000);
    assert!(matches!(
        rig.actions(0).as_slice(),
        [Action::Connect { .. }]
    ));
    let refusal = ProtoError::new(ErrorCode::DeviceRolledBack, "device 1/1 is behind");
    rig.core
        .handle_connect_failed(ClientError::Remote(refusal), 1);
    let events = rig.events();
    assert!(events.contains(&Event::Failed {
        id: id.to_string(),
        peer: "bob".into(),
        reason: ROLLED_BACK_FAILURE.into()
    }));
    assert_eq!(
        events.last(),
        Some(&Event::RolledBack {
            reason: "device 1/1 is behind".into()
        })
    );
    assert!(rig.core.store().outbox().expect("outbox").is_empty());
    assert_eq!(
        rig.core.store().rolled_back().expect("read").as_deref(),
        Some("device 1/1 is behind")
    );
    assert!(matches!(
        rig.core.type_text("bob", "again", WALL_MS, 2),
        Err(ClientError::DeviceRolledBack(_))
    ));
    assert!(
        rig.actions(1)
            .iter()
            .all(|action| *action == Action::Disconnect)
    );
    assert!(rig.actions(60_000).is_empty(), "it never connects again");
    assert_eq!(rig.core.poll_timeout(1_000), None);
}

#[test]
fn no_edge_ends_a_one_shot_flush_and_the_reason_is_kept() {
    let mut rig = alice(Mode::OnDemand);
    let id = rig.core.type_text("bob", "hi", WALL_MS, 0).expect("typed");
    rig.core.open_flush_window(20_000);
    assert!(matches!(
        rig.actions(0).as_slice(),
        [Action::Connect { .. }]
    ));
    assert!(!rig.core.flush_settled(0, 20_000));
    let error = ClientError::EdgeUnreachable("no edge is configured".into());
    rig.core.handle_connect_failed(error, 1);
    assert!(rig.core.flush_settled(1, 20_000), "nothing can go now");
    let pending = rig.core.still_pending(Some(id)).expect("pending");
    assert_eq!(
        pending[0].reason,
        "cannot reach an edge (no edge is configured)"
    );
    assert!(rig.events().iter().any(|event| matches!(
        event,
        Event::Disconnected {
            unreachable: true,
            retry_in_ms: Some(_),
            ..
        }
    )));
    // The window closed: an on-demand device does not keep dialing.
    assert!(rig.actions(60_000).is_empty());
}

#[test]
fn drafts_wait_for_their_name_and_keep_their_id() {
    let mut rig = alice(Mode::OnDemand);
    let to_carol = rig
        .core
        .type_text("carol", "hi carol", WALL_MS, 0)
        .expect("draft");
    let to_nobody = rig
        .core
        .type_text("nobody", "hello?", WALL_MS, 0)
        .expect("draft");
    assert_eq!(
        rig.core.message_state(to_carol).expect("state"),
        MessageState::Draft
    );
    rig.events();
    rig.core.open_flush_window(20_000);
    let actions = rig.connect(0);
    let (carol, _) = request(&actions, |r| *r == Request::LookupName("carol".into()));
    let (nobody, _) = request(&actions, |r| *r == Request::LookupName("nobody".into()));
    rig.events();
    rig.core.handle_answer(
        nobody,
        Err(ClientError::Remote(ProtoError::new(
            ErrorCode::UnknownAccount,
            "no such account",
        ))),
        1,
    );
    assert_eq!(
        rig.events(),
        vec![Event::Failed {
            id: to_nobody.to_string(),
            peer: "nobody".into(),
            reason: "no account is named nobody".into()
        }]
    );
    assert_eq!(
        rig.core.message_state(to_nobody).expect("state"),
        MessageState::UnknownPeer("nobody".into())
    );
    rig.core.handle_answer(
        carol,
        Ok(Response::Account(AccountInfo {
            account: 3,
            name: "carol".into(),
            region: 2,
            epoch: 1,
        })),
        2,
    );
    let outbox = rig.core.store().outbox().expect("outbox");
    assert_eq!(outbox.len(), 1);
    assert_eq!(
        (
            outbox[0].client_message_id,
            outbox[0].peer,
            outbox[0].sender_seq
        ),
        (to_carol, AccountId(3), 1),
        "the draft became the chat's first entry under its id"
    );
    assert!(rig.core.store().drafts().expect("drafts").is_empty());
    let actions = rig.actions(2);
    request(&actions, |r| *r == Request::ClaimKeys(AccountId(3)));
}

/// A contact's device list that changes from one this device knew is a warning naming what
/// changed; the first list it learns, or the same list again, is not.
#[test]
fn a_changed_device_list_is_a_warning_and_a_first_one_is_not() {
    let set = |devices: &[u32]| -> std::collections::BTreeSet<DeviceId> {
        devices.iter().map(|device| DeviceId(*device)).collect()
    };
    let bob = AccountId(3);
    assert_eq!(
        super::outgoing::device_change(bob, &set(&[]), &set(&[1, 2])),
        None
    );
    assert_eq!(
        super::outgoing::device_change(bob, &set(&[1, 2]), &set(&[1, 2])),
        None
    );
    let (account, text) =
        super::outgoing::device_change(bob, &set(&[1, 2]), &set(&[1, 3])).expect("a change");
    assert_eq!(account, bob);
    assert!(
        text.contains("device 3 added") && text.contains("device 2 removed"),
        "{text}"
    );
    assert!(text.contains("relay devices {peer}"), "{text}");
}

#[test]
fn the_peers_edits_reactions_and_deletions_are_checked_and_a_deletion_forgets_the_text() {
    use relay_sync::Hlc;

    use crate::content::{Change, MessageRef};

    let mut rig = alice(Mode::Live);
    let actions = rig.connect(0);
    let (fetch, _) = request(&actions, |r| matches!(r, Request::Fetch { .. }));
    let mut bob = Crypto::new();
    let alice_key = {
        let mut store = Store::open(&rig.path).expect("open");
        store
            .unlock(&rig.path.with_file_name("device.key"))
            .expect("unlock");
        store
            .write_with_crypto(|_, crypto| {
                crypto.generate_one_time_keys(1);
                Ok((
                    crypto.identity_key(),
                    crypto.unpublished_one_time_keys().remove(0),
                ))
            })
            .expect("a key")
    };
    bob.create_outbound_session(ALICE, &alice_key.0, &alice_key.1.public_key)
        .expect("session");
    let chat = ChatId::direct(ALICE.account, BOB.account);
    let original = ClientMessageId([10; 16]);
    let at = |ms: u64| Hlc {
        wall_ms: WALL_MS + ms,
        counter: 0,
        device: BOB,
    };
    let target = || MessageRef::new(BOB, original);
    let mut page = |first: u64, contents: Vec<Content>| QueueBatch {
        entries: contents
            .into_iter()
            .enumerate()
            .map(|(index, content)| {
                let queue_seq = first + index as u64;
                let (kind, body) = bob.encrypt(ALICE, &content.to_bytes()).expect("encrypt");
                QueueEntry {
                    queue_seq,
                    item: Some(queue_entry::Item::Message(QueuedMessage {
                        chat: chat.0.to_vec(),
                        chat_seq: queue_seq,
                        sender: BOB.into(),
                        client_message_id: if queue_seq == 1 {
                            original.0.to_vec()
                        } else {
                            vec![queue_seq as u8; 16]
                        },
                        sender_seq: queue_seq,
                        server_time_ms: WALL_MS + queue_seq,
                        message_type: kind,
                        ciphertext: body,
                        ..Default::default()
                    })),
                }
            })
            .collect(),
        // More waits after each page: the next one is fetched.
        latest_queue_seq: first + 100,
        one_time_keys_remaining: 49,
        fallback_key: FallbackKeyState::Unused as i32,
    };
    let first = page(
        1,
        vec![
            Content::text("the original", WALL_MS, 1).expect("text"),
            Content::change(target(), &Change::Edit("the edit".into()), at(1), 1).expect("edit"),
            Content::change(target(), &Change::React("👍".into()), at(2), 1).expect("react"),
            // Stamped two days ahead of the region's clock: refused.
            Content::change(
                target(),
                &Change::Edit("from the future".into()),
                at(2 * 24 * 3600 * 1000),
                1,
            )
            .expect("edit"),
            // A message this chat does not hold: refused.
            Content::change(
                MessageRef::new(BOB, ClientMessageId([99; 16])),
                &Change::Delete,
                at(3),
                1,
            )
            .expect("delete"),
        ],
    );
    rig.core.handle_answer(fetch, Ok(Response::Queue(first)), 5);
    let events = rig.events();
    let changes: Vec<&Event> = events
        .iter()
        .filter(|event| matches!(event, Event::Changed { .. }))
        .collect();
    assert_eq!(changes.len(), 2, "{events:?}");
    let refusals = events
        .iter()
        .filter(|event| matches!(event, Event::Note { message } if message.contains("refused")))
        .count();
    assert_eq!(refusals, 2, "{events:?}");
    let history = rig.core.history("bob").expect("history");
    assert!(
        matches!(history.as_slice(), [Event::History { text: Some(text), edited: true, reactions, .. }]
            if text == "the edit" && reactions.len() == 1),
        "{history:?}"
    );

    // alice reacts to bob's message, but may neither edit nor delete it.
    let prefix = &original.to_string()[..8];
    for change in [Change::Edit("mine now".into()), Change::Delete] {
        let refused = rig
            .core
            .change_message("bob", prefix, change, WALL_MS + 10, 10)
            .expect_err("only the sender changes a message");
        assert!(refused.to_string().contains("only its sender"), "{refused}");
    }
    rig.core
        .change_message("bob", prefix, Change::React("🎉".into()), WALL_MS + 10, 10)
        .expect("a reaction");

    // bob deletes it for everyone: gone from the history's view and from the store.
    let actions = rig.actions(10);
    let (fetch, _) = request(&actions, |r| matches!(r, Request::Fetch { .. }));
    let second = page(
        6,
        vec![Content::change(target(), &Change::Delete, at(4), 1).expect("delete")],
    );
    rig.core
        .handle_answer(fetch, Ok(Response::Queue(second)), 11);
    let history = rig.core.history("bob").expect("history");
    assert!(
        matches!(
            history.as_slice(),
            [Event::History {
                text: None,
                deleted: true,
                ..
            }]
        ),
        "{history:?}"
    );
    let stored = rig
        .core
        .store()
        .message(BOB, original)
        .expect("read")
        .expect("the row stays");
    assert_eq!(stored.text, None, "the store forgot the text");
    // A region that numbers a message 0 does not stop the device: the store keeps it, the
    // documents cannot hold it.
    let actions = rig.actions(12);
    let (fetch, _) = request(&actions, |r| matches!(r, Request::Fetch { .. }));
    let mut third = page(
        7,
        vec![Content::text("numbered 0", WALL_MS, 1).expect("text")],
    );
    if let Some(queue_entry::Item::Message(message)) = &mut third.entries[0].item {
        message.chat_seq = 0;
    }
    rig.core
        .handle_answer(fetch, Ok(Response::Queue(third)), 13);
    assert!(rig.core.failure().is_none(), "{:?}", rig.core.failure());
    assert_eq!(rig.core.history("bob").expect("history").len(), 2);
    let snapshot = rig.core.history_snapshot().expect("snapshot");
    let plaintext = relay_sync::inspect::snapshot_plaintext(&snapshot).expect("inspect");
    assert!(!relay_sync::inspect::contains(&plaintext, b"the original"));
    assert!(!relay_sync::inspect::contains(&plaintext, b"the edit"));
}

/// A login's key counts from the edge's cache are a hint that may be stale-low: it asks for no
/// new one-time keys (the first fetch's exact count does), while the same count reported by
/// the region does. An upload made on a stale count held back the fallback key's replacement
/// for a minute (`keys_and_rollback`'s hundred-contacts journey failed about 1 run in 13).
#[test]
fn a_cached_login_count_asks_for_no_new_keys_but_the_regions_does() {
    let exhausted = |cached| OneTimeKeyCount {
        remaining: 0,
        fallback_key: FallbackKeyState::Unused as i32,
        cached,
    };
    // One-time keys asked for (a fresh device also uploads its first fallback key either way).
    let uploads = |actions: &[Action]| {
        actions
            .iter()
            .filter(|action| {
                matches!(
                    action,
                    Action::Request {
                        request: Request::UploadKeys { one_time_keys, .. },
                        ..
                    } if !one_time_keys.is_empty()
                )
            })
            .count()
    };
    for (cached, expected) in [(true, 0), (false, 1)] {
        let mut rig = alice(Mode::Live);
        let actions = rig.actions(WALL_MS);
        assert!(
            matches!(actions.as_slice(), [Action::Connect { .. }]),
            "{actions:?}"
        );
        rig.core
            .handle_connected(edge(), exhausted(cached), WALL_MS);
        let actions = rig.actions(WALL_MS);
        assert_eq!(uploads(&actions), expected, "cached {cached}: {actions:?}");
    }
}

#[test]
fn a_failed_ack_keeps_the_entries_owed_for_the_next_connection() {
    let mut rig = alice(Mode::Live);
    let actions = rig.connect(0);
    let (fetch, _) = request(&actions, |r| matches!(r, Request::Fetch { .. }));
    // A receipt: processed without a session or a lookup.
    let page = QueueBatch {
        entries: vec![QueueEntry {
            queue_seq: 1,
            item: Some(queue_entry::Item::Receipt(Default::default())),
        }],
        // More waits than the page holds: the next page is fetched while the ack is in flight.
        latest_queue_seq: 2,
        one_time_keys_remaining: 50,
        fallback_key: FallbackKeyState::Unused as i32,
    };
    rig.core.handle_answer(fetch, Ok(Response::Queue(page)), 1);
    let actions = rig.actions(1);
    let (ack, acked) = request(&actions, |r| matches!(r, Request::Ack(_)));
    assert_eq!(acked, Request::Ack(vec![1]));
    let (next_fetch, _) = request(&actions, |r| matches!(r, Request::Fetch { .. }));
    assert_eq!(
        rig.actions(1)
            .iter()
            .filter(|action| matches!(
                action,
                Action::Request {
                    request: Request::Ack(_),
                    ..
                }
            ))
            .count(),
        0,
        "one ack at a time"
    );
    let error = ClientError::Remote(ProtoError::new(
        relay_proto::ErrorCode::Unavailable,
        "the region is busy",
    ));
    assert!(error.is_retryable(), "the test needs a retryable refusal");
    rig.core.handle_answer(ack, Err(error), 2);
    assert_eq!(
        rig.core.store().pending_acks().expect("acks"),
        vec![1],
        "still owed"
    );
    assert!(!rig.core.is_connected(), "dropped, to connect again later");
    rig.core.handle_answer(
        next_fetch,
        Err(ClientError::EdgeUnreachable("not connected".into())),
        2,
    );
    rig.actions(2);
    let actions = rig.connect(crate::limits::RETRY_DELAY_MS_MAX + 2);
    let (_, acked) = request(&actions, |r| matches!(r, Request::Ack(_)));
    assert_eq!(
        acked,
        Request::Ack(vec![1]),
        "owed acks go first on connecting"
    );
}

/// A lookup the edge throttles fails the name with the edge's own error, retryable as it was:
/// `relay read PEER` once got a plain `Invalid` text, which a caller had to take as final (the
/// swarm failed seed 60 on it once fetches and acks went in parallel).
#[test]
fn a_throttled_name_lookup_stays_a_retryable_error() {
    let mut rig = alice(Mode::Live);
    rig.connect(0);
    rig.core.want_name("carol");
    let actions = rig.actions(1);
    let (carol, _) = request(&actions, |r| *r == Request::LookupName("carol".into()));
    rig.core.handle_answer(
        carol,
        Err(ClientError::Remote(ProtoError::new(
            ErrorCode::Throttled,
            "too many requests",
        ))),
        2,
    );
    let Some(NameState::Failed(failure)) = rig.core.name_state("carol") else {
        panic!("{:?}", rig.core.name_state("carol"));
    };
    let error = failure.error();
    assert!(error.is_retryable(), "{error:?}");
    assert!(
        matches!(&error, ClientError::Remote(refusal) if refusal.code == ErrorCode::Throttled),
        "{error:?}"
    );
}

#[test]
fn message_info_names_one_message_by_its_id_prefix_with_each_recipient() {
    let mut rig = alice(Mode::OnDemand);
    let chat = ChatId::direct(ALICE.account, BOB.account);
    let mut first = [0xab; 16];
    first[4] = 0x01;
    let mut second = [0xab; 16];
    second[4] = 0x02;
    let (first, second) = (ClientMessageId(first), ClientMessageId(second));
    let laptop = DeviceAddress {
        account: ALICE.account,
        device: DeviceId(2),
    };
    rig.core
        .store
        .write(|writer| {
            for (seq, id, outgoing) in [(1, first, true), (2, second, false)] {
                writer.insert_message(&NewMessage {
                    chat,
                    peer: BOB.account,
                    outgoing,
                    sender: if outgoing { ALICE } else { BOB },
                    client_message_id: id,
                    sender_seq: seq,
                    chat_seq: Some(seq),
                    text: Some("hi"),
                    attachment: None,
                    sent_at_ms: WALL_MS,
                    server_time_ms: Some(WALL_MS),
                    tick: Tick::Sent,
                    undecryptable: None,
                })?;
            }
            writer.set_recipients(ALICE, first, &[BOB, laptop])?;
            writer.mark_recipients_sent(ALICE, first, WALL_MS)?;
            writer
                .record_receipt(
                    ALICE,
                    first,
                    BOB,
                    RecipientState::Delivered,
                    WALL_MS + 5,
                    ALICE,
                )
                .map(|_| ())
        })
        .expect("two messages");
    let invalid = |prefix: &str| match rig.core.message_info(prefix) {
        Err(ClientError::Invalid(reason)) => reason,
        other => panic!("{prefix}: {other:?}"),
    };
    assert!(invalid("abab").contains("at least 6 hex digits"));
    assert!(invalid("abababxx").contains("at least 6 hex digits"));
    assert!(invalid("abababab").contains("more than one message"));
    assert!(invalid("cdcdcdcd").contains("no message"));

    let events = rig.core.message_info("ABABABAB01").expect("the first");
    assert!(
        matches!(&events[0], Event::History { id, tick: Some(Tick::Sent), .. }
            if *id == first.to_string())
    );
    assert_eq!(
        events[1..],
        [
            Event::Receipt {
                id: first.to_string(),
                name: "alice".into(),
                device: "1/2".into(),
                state: RecipientState::Sent,
                at_ms: Some(WALL_MS),
            },
            Event::Receipt {
                id: first.to_string(),
                name: "bob".into(),
                device: "2/1".into(),
                state: RecipientState::Delivered,
                at_ms: Some(WALL_MS + 5),
            },
        ]
    );
    // An incoming message has no recipients to show.
    let events = rig.core.message_info("abababab02").expect("the second");
    assert_eq!(events.len(), 1);
    assert!(matches!(
        &events[0],
        Event::History {
            direction: Direction::In,
            ..
        }
    ));
}

#[test]
fn presence_is_watched_again_on_every_connection_and_typing_expires_by_itself() {
    use relay_proto::limits::{TYPING_REPEAT_MS, TYPING_SHOWN_MS};
    use relay_proto::wire::{PresenceInfo, PresenceState, TypingNotice};

    let mut rig = alice(Mode::Live);
    // Watched before connecting: the watch goes out with the connection.
    rig.core.watch_presence(BOB.account, true).expect("watch");
    let actions = rig.connect(0);
    let (id, _) = request(
        &actions,
        |request| matches!(request, Request::WatchPresence { account, watch: true } if *account == BOB.account),
    );
    rig.core.handle_answer(id, Ok(Response::Passed), 0);
    rig.events();
    rig.core.handle_presence(PresenceInfo {
        account: BOB.account.0,
        state: PresenceState::Offline as i32,
        last_seen_ms: 1_234,
    });
    // Presence of an account not watched is not reported.
    rig.core.handle_presence(PresenceInfo {
        account: 77,
        state: PresenceState::Online as i32,
        last_seen_ms: 0,
    });
    let events = rig.events();
    assert_eq!(
        events,
        vec![Event::Presence {
            peer: "bob".into(),
            account: BOB.account.0,
            state: "offline".into(),
            last_seen_ms: Some(1_234),
        }]
    );
    // A new connection watches again.
    rig.core.handle_connection_lost("gone", 10);
    let actions = rig.actions(1_000_000);
    assert!(
        actions
            .iter()
            .any(|action| matches!(action, Action::Connect { .. })),
        "{actions:?}"
    );
    rig.core
        .handle_connected(edge(), plenty_of_keys(), 1_000_000);
    let actions = rig.actions(1_000_000);
    request(&actions, |request| {
        matches!(request, Request::WatchPresence { watch: true, .. })
    });

    // Typing: shown on the first indicator, extended by repeats, ended when not heard from.
    let at = 2_000_000;
    let notice = |typing| TypingNotice {
        to: ALICE.into(),
        from: BOB.into(),
        typing,
        group: 0,
    };
    rig.events();
    rig.core.handle_typing(notice(true), at);
    rig.core.handle_typing(notice(true), at + 2_000);
    let typing = |typing| Event::Typing {
        peer: "bob".into(),
        account: BOB.account.0,
        device: BOB.device.0,
        group: None,
        typing,
    };
    assert_eq!(rig.events(), vec![typing(true)], "a repeat is no new event");
    assert_eq!(
        rig.core.typing_timeout(),
        Some(at + 2_000 + TYPING_SHOWN_MS)
    );
    rig.core.handle_timeout(at + 2_000 + TYPING_SHOWN_MS - 1);
    assert!(rig.events().is_empty(), "still shown");
    rig.core.handle_timeout(at + 2_000 + TYPING_SHOWN_MS);
    assert_eq!(rig.events(), vec![typing(false)], "expired by itself");
    // A "stopped" ends it at once; a stop of nothing shown says nothing.
    rig.core.handle_typing(notice(true), at + 20_000);
    rig.core.handle_typing(notice(false), at + 20_001);
    rig.core.handle_typing(notice(false), at + 20_002);
    assert_eq!(rig.events(), vec![typing(true), typing(false)]);
    // The same device typing in a group's chat is shown apart from its 1:1 typing.
    let in_group = |typing| TypingNotice {
        group: 7,
        ..notice(typing)
    };
    rig.core.handle_typing(notice(true), at + 30_000);
    rig.core.handle_typing(in_group(true), at + 30_001);
    rig.core.handle_typing(in_group(false), at + 30_002);
    let group_typing = |typing| Event::Typing {
        peer: "bob".into(),
        account: BOB.account.0,
        device: BOB.device.0,
        group: Some(7),
        typing,
    };
    assert_eq!(
        rig.events(),
        vec![typing(true), group_typing(true), group_typing(false)]
    );
    rig.core.handle_timeout(at + 30_000 + TYPING_SHOWN_MS);
    assert_eq!(rig.events(), vec![typing(false)], "the 1:1 one expires");

    // Sending: repeated within TYPING_REPEAT_MS is not sent again; a stop after typing is.
    let peer = TypingIn::Peer(BOB.account);
    let group = TypingIn::Group(relay_proto::GroupId(7));
    assert_eq!(rig.core.send_typing(group, true, at), TypingSent::Sent);
    assert_eq!(
        rig.core.send_typing(group, true, at + 1),
        TypingSent::Repeated,
        "each chat repeats on its own"
    );
    assert_eq!(
        rig.core.send_typing(peer, false, at),
        TypingSent::Repeated,
        "never typed"
    );
    assert_eq!(rig.core.send_typing(peer, true, at), TypingSent::Sent);
    assert_eq!(
        rig.core.send_typing(peer, true, at + 1),
        TypingSent::Repeated
    );
    assert_eq!(
        rig.core.send_typing(peer, true, at + TYPING_REPEAT_MS),
        TypingSent::Sent
    );
    assert_eq!(
        rig.core.send_typing(peer, false, at + TYPING_REPEAT_MS + 1),
        TypingSent::Sent
    );
    rig.core.typing_failed(peer);
    assert_eq!(
        rig.core.send_typing(peer, false, at + TYPING_REPEAT_MS + 2),
        TypingSent::Repeated
    );
    assert_eq!(
        rig.core.send_typing(peer, true, at + TYPING_REPEAT_MS + 3),
        TypingSent::Sent
    );
}

/// A key share for an older membership, answered "mismatched devices" after the device learned
/// of a removal, keeps its version, its accounts and the removed member's device: a text of its
/// session may be queued to that device (stored before the removal), and it needs the key.
#[test]
fn a_key_share_for_an_older_membership_keeps_the_members_removed_since() {
    const GROUP: u64 = 9;
    let carol = DeviceAddress {
        account: AccountId(3),
        device: DeviceId(1),
    };
    let mut rig = alice(Mode::Live);
    rig.group_text_typed(GROUP, &[ALICE, BOB, carol]);
    let actions = rig.connect(0);
    let (_, bob_keys) = peer(BOB);
    let (_, carol_keys) = peer(carol);
    for (account, keys) in [(BOB.account, bob_keys), (carol.account, carol_keys)] {
        let (claim, _) = request(&actions, |r| *r == Request::ClaimKeys(account));
        rig.core.handle_answer(
            claim,
            Ok(Response::Keys(KeyBundle {
                account: account.0,
                devices: vec![keys],
            })),
            1,
        );
    }
    let actions = rig.actions(1);
    let sends: Vec<(RequestId, Envelope)> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Request {
                id,
                request: Request::Send(envelope),
            } => Some((*id, envelope.clone())),
            _ => None,
        })
        .collect();
    let share_kind = relay_proto::wire::EnvelopeKind::GroupKeyShare as i32;
    let (share_id, share) = sends
        .iter()
        .find(|(_, envelope)| envelope.kind == share_kind)
        .cloned()
        .expect("a key share goes first");
    assert_eq!(share.group_version, 1);
    assert_eq!(share.ciphertexts.len(), 2, "for bob and carol");

    // The text is answered first: carol was removed (version 2).
    if let Some((text_id, _)) = sends
        .iter()
        .find(|(_, envelope)| envelope.kind != share_kind)
    {
        rig.core.handle_answer(
            *text_id,
            Ok(Response::Sent(send_outcome::Outcome::GroupChanged(
                GroupChanged {
                    group: GROUP,
                    version: 2,
                    members: vec![ALICE.account.0, BOB.account.0],
                    devices: Vec::new(),
                },
            ))),
            2,
        );
    }
    // Then the share: carol's device list changed meanwhile (a second device).
    rig.core.handle_answer(
        share_id,
        Ok(Response::Sent(send_outcome::Outcome::Mismatched(
            MismatchedDevices {
                accounts: vec![AccountDevices {
                    account: carol.account.0,
                    devices: vec![1, 2],
                }],
            },
        ))),
        3,
    );
    let rebuilt = (3..40)
        .flat_map(|now_ms| rig.actions(now_ms * 1_000))
        .find_map(|action| match action {
            Action::Request {
                request: Request::Send(envelope),
                ..
            } if envelope.client_message_id == share.client_message_id => Some(envelope),
            _ => None,
        })
        .expect("the share goes again");
    assert_eq!(rebuilt.sender_seq, share.sender_seq, "under its number");
    assert_eq!(
        rebuilt.group_version, 1,
        "for the membership it was built for"
    );
    assert_eq!(
        rebuilt.ciphertexts, share.ciphertexts,
        "carol's device is still hers and still gets the key"
    );
    assert!(rebuilt.recipient_accounts.contains(&carol.account.0));
}

/// Swarm seed 4074 (with group replicas): a new member's first group text waited for a claim of
/// another member's keys, which a region refused while its disk failed; the group backed off,
/// but nothing woke the device when the backoff ended, and the text was never sent. The
/// device's next timeout now includes a group's backoff.
#[test]
fn a_group_backing_off_after_a_failed_claim_wakes_the_device_to_claim_again() {
    const GROUP: u64 = 9;
    let mut rig = alice(Mode::Live);
    rig.group_text_typed(GROUP, &[ALICE, BOB]);
    let actions = rig.connect(0);
    let (claim, _) = request(&actions, |r| *r == Request::ClaimKeys(BOB.account));
    rig.core.handle_answer(
        claim,
        Err(ClientError::Remote(ProtoError::new(
            ErrorCode::StorageUnavailable,
            "the region's storage is unavailable; retry later",
        ))),
        1,
    );
    assert!(
        !rig.actions(1).iter().any(|action| matches!(
            action,
            Action::Request {
                request: Request::ClaimKeys(_),
                ..
            }
        )),
        "backing off"
    );
    let due = rig.core.poll_timeout(1).expect("a timeout");
    // The live device's next fetch is due at POLL_INTERVAL_MS (it connected at 0).
    assert!(
        due < POLL_INTERVAL_MS,
        "woken for the group's backoff ({due} ms), not the next poll"
    );
    rig.core.handle_timeout(due);
    let actions = rig.actions(due);
    request(&actions, |r| *r == Request::ClaimKeys(BOB.account));
}
