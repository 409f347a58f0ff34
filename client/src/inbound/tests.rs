use relay_proto::DeviceId;
use relay_proto::wire::{self, DeviceAddr, QueueEntry};

use super::*;
use crate::store::Store;

fn device(account: u64, device: u32) -> DeviceAddress {
    DeviceAddress {
        account: AccountId(account),
        device: DeviceId(device),
    }
}

struct Side {
    _dir: tempfile::TempDir,
    store: Store,
    crypto: Crypto,
    me: DeviceAddress,
}

fn side(me: DeviceAddress) -> Side {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::create(&dir.path().join("relay.db")).expect("create");
    store
        .unlock(&dir.path().join("device.key"))
        .expect("unlock");
    Side {
        _dir: dir,
        store,
        crypto: Crypto::new(),
        me,
    }
}

fn message_entry(
    queue_seq: u64,
    from: DeviceAddress,
    to: AccountId,
    id: u8,
    kind: u32,
    body: Vec<u8>,
) -> QueueEntry {
    QueueEntry {
        queue_seq,
        item: Some(queue_entry::Item::Message(QueuedMessage {
            chat: ChatId::direct(from.account, to).0.to_vec(),
            chat_seq: queue_seq,
            sender: DeviceAddr::from(from),
            client_message_id: vec![id; 16],
            sender_seq: queue_seq,
            server_time_ms: 1_000 + queue_seq,
            message_type: kind,
            ciphertext: body,
            ..Default::default()
        })),
    }
}

/// Commits the side's in-memory Olm state, processes like the client does (state read and
/// written inside the transaction), then picks the committed state up again.
fn process(side: &mut Side, entries: &[QueueEntry]) -> Vec<Inbound> {
    let changes = side.crypto.take_changes().expect("changes");
    side.store
        .write(|writer| writer.save_crypto(&changes))
        .expect("save");
    let cursor = side.store.queue_cursor().expect("cursor");
    let me = side.me;
    let reports = side
        .store
        .write_with_crypto(|writer, crypto| {
            process_entries(writer, crypto, me, cursor, entries, 5_000)
        })
        .expect("process");
    side.crypto = side.store.load_crypto().expect("load").expect("account");
    reports
}

#[test]
fn messages_decrypt_once_and_receipts_move_ticks() {
    let alice_device = device(1, 1);
    let mut bob = side(device(2, 1));
    bob.crypto.generate_one_time_keys(1);
    let key = bob.crypto.unpublished_one_time_keys().remove(0);
    let mut alice = side(alice_device);
    alice
        .crypto
        .create_outbound_session(bob.me, &bob.crypto.identity_key(), &key.public_key)
        .expect("session");
    let text = Content::text("hello", 42, 2).expect("content").to_bytes();
    let (kind, body) = alice.crypto.encrypt(bob.me, &text).expect("encrypt");
    let first = message_entry(1, alice_device, AccountId(2), 9, kind, body);

    let reports = process(&mut bob, std::slice::from_ref(&first));
    assert!(
        matches!(&reports[..], [Inbound::Message { text, outgoing: false, .. }] if text == "hello")
    );
    assert_eq!(
        bob.store.identity_key(alice_device).expect("key"),
        Some(alice.crypto.identity_key())
    );
    // Redelivered (e.g. the ack was lost): deduplicated, not decrypted twice, acked again.
    let again = QueueEntry {
        queue_seq: 2,
        ..first
    };
    assert!(process(&mut bob, &[again]).is_empty());
    assert_eq!(bob.store.pending_acks().expect("acks"), vec![1, 2]);
    assert_eq!(bob.store.queue_cursor().expect("cursor"), 2);

    // Garbage from alice is recorded as undecryptable, reported and still acked.
    let garbage = message_entry(3, alice_device, AccountId(2), 10, 1, vec![1, 2, 3]);
    let reports = process(&mut bob, &[garbage]);
    assert!(matches!(&reports[..], [Inbound::Undecryptable { .. }]));
    let history = bob.store.history(AccountId(1)).expect("history");
    assert_eq!(history.len(), 2);
    assert!(history[1].undecryptable.is_some() && history[1].text.is_none());
    assert_eq!(bob.store.queue_cursor().expect("cursor"), 3);

    // Bob reads: alice processes the read receipt, and a delivered receipt before it.
    let bob_chat = ChatId::direct(AccountId(1), AccountId(2));
    let sent_id = ClientMessageId([9; 16]);
    alice
        .store
        .write(|w| {
            w.insert_message(&NewMessage {
                chat: bob_chat,
                peer: AccountId(2),
                outgoing: true,
                sender: alice_device,
                client_message_id: sent_id,
                sender_seq: 1,
                chat_seq: None,
                text: Some("hello"),
                attachment: None,
                sent_at_ms: 42,
                server_time_ms: None,
                tick: Tick::Sent,
                undecryptable: None,
            })
            .map(|_| ())
        })
        .expect("sent message");
    let delivered = QueueEntry {
        queue_seq: 1,
        item: Some(queue_entry::Item::Receipt(QueuedReceipt {
            chat: bob_chat.0.to_vec(),
            client_message_id: sent_id.0.to_vec(),
            recipient: DeviceAddr::from(bob.me),
            state: ReceiptState::Delivered as i32,
            at_ms: 7,
            sender: DeviceAddr::from(alice_device),
        })),
    };
    let read = Content::read(vec![sent_id.0], 8, 1)
        .expect("read")
        .to_bytes();
    let (kind, body) = bob.crypto.encrypt(alice_device, &read).expect("encrypt");
    let receipt_message = message_entry(2, bob.me, AccountId(1), 11, kind, body);
    let reports = process(&mut alice, &[delivered.clone(), receipt_message]);
    assert_eq!(
        reports,
        vec![
            Inbound::Tick {
                id: sent_id,
                peer: AccountId(2),
                tick: Tick::Delivered
            },
            Inbound::Tick {
                id: sent_id,
                peer: AccountId(2),
                tick: Tick::Read
            },
        ]
    );
    // A late delivered receipt never moves the tick back.
    let late = QueueEntry {
        queue_seq: 3,
        ..delivered
    };
    assert!(process(&mut alice, &[late]).is_empty());
    let stored = alice
        .store
        .message(alice_device, sent_id)
        .expect("read")
        .expect("some");
    assert_eq!(stored.tick, Tick::Read);
}

/// Records message `id` (number `seq` of `chat`) as sent by `sender` to `recipient`'s
/// device, ticked ✓.
fn sent_to(
    w: &Writer<'_>,
    chat: ChatId,
    sender: DeviceAddress,
    recipient: DeviceAddress,
    seq: u64,
    id: ClientMessageId,
) -> Result<()> {
    w.insert_message(&NewMessage {
        chat,
        peer: recipient.account,
        outgoing: true,
        sender,
        client_message_id: id,
        sender_seq: seq,
        chat_seq: None,
        text: Some("hello"),
        attachment: None,
        sent_at_ms: 42,
        server_time_ms: None,
        tick: Tick::Sent,
        undecryptable: None,
    })?;
    w.set_recipients(sender, id, &[recipient])?;
    w.mark_recipients_sent(sender, id, 43)
}

#[test]
fn with_read_receipts_off_a_peers_read_receipt_is_dropped_for_good() {
    let alice_device = device(1, 1);
    let bob_device = device(2, 1);
    let mut alice = side(alice_device);
    let mut bob = side(bob_device);
    alice.crypto.generate_one_time_keys(1);
    let key = alice.crypto.unpublished_one_time_keys().remove(0);
    bob.crypto
        .create_outbound_session(alice_device, &alice.crypto.identity_key(), &key.public_key)
        .expect("session");
    let chat = ChatId::direct(AccountId(1), AccountId(2));
    let (first, second) = (ClientMessageId([21; 16]), ClientMessageId([22; 16]));
    alice
        .store
        .write(|w| {
            for (seq, id) in [(1, first), (2, second)] {
                sent_to(w, chat, alice_device, bob_device, seq, id)?;
            }
            w.set_read_receipts(false)
        })
        .expect("sent, read receipts off");
    let delivered = |queue_seq, id: ClientMessageId| QueueEntry {
        queue_seq,
        item: Some(queue_entry::Item::Receipt(QueuedReceipt {
            chat: chat.0.to_vec(),
            client_message_id: id.0.to_vec(),
            recipient: DeviceAddr::from(bob_device),
            state: ReceiptState::Delivered as i32,
            at_ms: 50,
            sender: DeviceAddr::from(alice_device),
        })),
    };
    let read = |bob: &mut Side, queue_seq, id: ClientMessageId, envelope_id| {
        let content = Content::read(vec![id.0], 60, 1).expect("read").to_bytes();
        let (kind, body) = bob.crypto.encrypt(alice_device, &content).expect("encrypt");
        message_entry(queue_seq, bob_device, AccountId(1), envelope_id, kind, body)
    };
    let read_first = read(&mut bob, 2, first, 31);
    let reports = process(&mut alice, &[delivered(1, first), read_first]);
    assert_eq!(
        reports,
        vec![Inbound::Tick {
            id: first,
            peer: AccountId(2),
            tick: Tick::Delivered
        }],
        "the tick stops at delivered"
    );
    let recipients = alice.store.recipients(alice_device, first).expect("rows");
    assert_eq!(recipients[0].state, RecipientState::Delivered);

    // Turned on again: the read receipt dropped while off stays unseen, a new one shows.
    alice
        .store
        .write(|w| w.set_read_receipts(true))
        .expect("on");
    let read_second = read(&mut bob, 4, second, 32);
    let reports = process(&mut alice, &[delivered(3, second), read_second]);
    assert_eq!(reports.len(), 2);
    assert!(matches!(reports[1], Inbound::Tick { id, tick: Tick::Read, .. } if id == second));
    let tick = |alice: &Side, id| {
        alice
            .store
            .message(alice_device, id)
            .expect("read")
            .expect("some")
            .tick
    };
    assert_eq!(
        (tick(&alice, first), tick(&alice, second)),
        (Tick::Delivered, Tick::Read)
    );
}

#[test]
fn an_entry_of_messages_delivers_each_in_order_and_is_acked_once() {
    let alice_device = device(1, 1);
    let mut bob = side(device(2, 1));
    bob.crypto.generate_one_time_keys(1);
    let key = bob.crypto.unpublished_one_time_keys().remove(0);
    let mut alice = side(alice_device);
    alice
        .crypto
        .create_outbound_session(bob.me, &bob.crypto.identity_key(), &key.public_key)
        .expect("session");
    let messages: Vec<QueuedMessage> = ["one", "two", "three"]
        .into_iter()
        .enumerate()
        .map(|(index, text)| {
            let number = index as u64 + 1;
            let content = Content::text(text, 42, 2).expect("content").to_bytes();
            let (kind, body) = alice.crypto.encrypt(bob.me, &content).expect("encrypt");
            let Some(queue_entry::Item::Message(message)) =
                message_entry(number, alice_device, AccountId(2), number as u8, kind, body).item
            else {
                unreachable!("a message entry")
            };
            message
        })
        .collect();
    let entry = QueueEntry {
        queue_seq: 1,
        item: Some(queue_entry::Item::Messages(wire::QueuedMessages {
            messages,
        })),
    };
    let reports = process(&mut bob, &[entry]);
    let texts: Vec<&str> = reports
        .iter()
        .filter_map(|report| match report {
            Inbound::Message { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, vec!["one", "two", "three"], "{reports:?}");
    assert_eq!(bob.store.pending_acks().expect("acks"), vec![1]);
    assert_eq!(bob.store.queue_cursor().expect("cursor"), 1);
    assert_eq!(bob.store.history(AccountId(1)).expect("history").len(), 3);
}

#[test]
fn an_entry_of_receipts_moves_each_message_it_names() {
    let alice_device = device(1, 1);
    let bob_device = device(2, 1);
    let mut alice = side(alice_device);
    let chat = ChatId::direct(AccountId(1), AccountId(2));
    let ids = [ClientMessageId([31; 16]), ClientMessageId([32; 16])];
    alice
        .store
        .write(|w| {
            for (seq, id) in (1..).zip(ids) {
                sent_to(w, chat, alice_device, bob_device, seq, id)?;
            }
            Ok(())
        })
        .expect("sent");
    let receipt = |id: ClientMessageId| QueuedReceipt {
        chat: chat.0.to_vec(),
        client_message_id: id.0.to_vec(),
        recipient: DeviceAddr::from(bob_device),
        state: ReceiptState::Delivered as i32,
        at_ms: 50,
        sender: DeviceAddr::from(alice_device),
    };
    let batch = QueueEntry {
        queue_seq: 1,
        item: Some(queue_entry::Item::Receipts(wire::QueuedReceipts {
            // The second receipt twice: a duplicate inside a batch moves nothing again.
            receipts: vec![receipt(ids[0]), receipt(ids[1]), receipt(ids[1])],
        })),
    };
    let reports = process(&mut alice, &[batch]);
    let ticks: Vec<_> = reports
        .iter()
        .map(|report| match report {
            Inbound::Tick { id, tick, .. } => (*id, *tick),
            other => panic!("a tick, got {other:?}"),
        })
        .collect();
    assert_eq!(
        ticks,
        vec![(ids[0], Tick::Delivered), (ids[1], Tick::Delivered)]
    );
}

/// A group entry for `to`'s device: a message (`kind` 0) with a group ciphertext, or a
/// key share (1) with an Olm body.
#[allow(clippy::too_many_arguments)]
fn group_entry(
    queue_seq: u64,
    from: DeviceAddress,
    group: u64,
    id: u8,
    kind: relay_proto::wire::EnvelopeKind,
    session_id: &str,
    message_type: u32,
    ciphertext: Vec<u8>,
    group_ciphertext: Vec<u8>,
) -> QueueEntry {
    QueueEntry {
        queue_seq,
        item: Some(queue_entry::Item::Message(QueuedMessage {
            chat: ChatId::group(relay_proto::GroupId(group)).0.to_vec(),
            chat_seq: queue_seq,
            sender: DeviceAddr::from(from),
            client_message_id: vec![id; 16],
            sender_seq: queue_seq,
            server_time_ms: 1_000 + queue_seq,
            message_type,
            ciphertext,
            group,
            kind: kind as i32,
            group_ciphertext,
            group_session_id: session_id.to_owned(),
        })),
    }
}

/// Alice's device (1/1) sending to group 9, whose only other member device is bob's (2/1).
struct GroupOfTwo {
    alice_device: DeviceAddress,
    bob: Side,
    /// Alice's group sessions: the sending one is shared with bob.
    keys: crate::group_keys::GroupKeys,
    members: std::collections::BTreeSet<DeviceAddress>,
    /// The key share of alice's sending session to bob: Olm message type and body.
    share: (u32, Vec<u8>),
}

fn group_of_two() -> GroupOfTwo {
    use crate::group_keys::GroupKeys;
    let alice_device = device(1, 1);
    let mut bob = side(device(2, 1));
    bob.crypto.generate_one_time_keys(1);
    let key = bob.crypto.unpublished_one_time_keys().remove(0);
    let mut alice = side(alice_device);
    alice
        .crypto
        .create_outbound_session(bob.me, &bob.crypto.identity_key(), &key.public_key)
        .expect("session");
    let mut keys = GroupKeys::new(alice_device);
    let members: std::collections::BTreeSet<DeviceAddress> = [bob.me].into();
    let plan = keys.prepare_send(9, &members, 10);
    keys.mark_shared(9, &plan.session_id, &plan.devices)
        .expect("shared");
    let share = Content::group_key(plan.key.clone()).to_bytes();
    let share = alice.crypto.encrypt(bob.me, &share).expect("olm");
    GroupOfTwo {
        alice_device,
        bob,
        keys,
        members,
        share,
    }
}

/// Two messages of a session that arrived together before its key come out in the chat's
/// order once it arrives, whatever their ids (the store keeps them by arrival, then id).
#[test]
fn group_messages_that_waited_for_their_key_come_out_in_chat_order() {
    use relay_proto::wire::EnvelopeKind;
    let GroupOfTwo {
        alice_device,
        mut bob,
        mut keys,
        members,
        share: (olm_type, olm_body),
    } = group_of_two();
    let mut sealed = Vec::new();
    for text in ["first", "second"] {
        let text = Content::group_text(9, text, 10).expect("text").to_bytes();
        sealed.push(keys.encrypt(9, &members, 10, &text).expect("encrypt"));
    }
    // The later message has the lower id.
    let messages: Vec<QueueEntry> = [(1, 9), (2, 3)]
        .into_iter()
        .zip(&sealed)
        .map(|((queue_seq, id), sealed)| {
            group_entry(
                queue_seq,
                alice_device,
                9,
                id,
                EnvelopeKind::Message,
                &sealed.session_id,
                2,
                Vec::new(),
                sealed.bytes.clone(),
            )
        })
        .collect();
    assert!(process(&mut bob, &messages).is_empty());
    let key_share = group_entry(
        3,
        alice_device,
        9,
        7,
        EnvelopeKind::GroupKeyShare,
        &sealed[0].session_id,
        olm_type,
        olm_body,
        Vec::new(),
    );
    let texts: Vec<String> = process(&mut bob, &[key_share])
        .into_iter()
        .filter_map(|report| match report {
            Inbound::GroupMessage { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["first", "second"]);
}

#[test]
fn a_group_message_waits_for_its_key_and_bad_group_input_is_recorded_not_fatal() {
    use relay_proto::wire::EnvelopeKind;
    let GroupOfTwo {
        alice_device,
        mut bob,
        mut keys,
        members,
        share: (olm_type, olm_body),
    } = group_of_two();
    let text = Content::group_text(9, "hi group", 10)
        .expect("text")
        .to_bytes();
    let sealed = keys.encrypt(9, &members, 10, &text).expect("encrypt");

    // The message first: it waits, nothing is reported, it is acknowledged.
    let message = group_entry(
        1,
        alice_device,
        9,
        1,
        EnvelopeKind::Message,
        &sealed.session_id,
        2,
        Vec::new(),
        sealed.bytes.clone(),
    );
    assert!(process(&mut bob, std::slice::from_ref(&message)).is_empty());
    assert_eq!(bob.store.group_waiting_count().expect("count"), 1);
    assert_eq!(bob.store.pending_acks().expect("acks"), vec![1]);
    // Then its key: the waiting message is decrypted.
    let key_share = group_entry(
        2,
        alice_device,
        9,
        2,
        EnvelopeKind::GroupKeyShare,
        &sealed.session_id,
        olm_type,
        olm_body,
        Vec::new(),
    );
    let reports = process(&mut bob, &[key_share]);
    assert!(
        matches!(&reports[..], [Inbound::GroupMessage { group: 9, text, .. }] if text == "hi group"),
        "{reports:?}"
    );
    assert_eq!(bob.store.group_waiting_count().expect("count"), 0);
    // Redelivered: nothing again.
    let again = QueueEntry {
        queue_seq: 3,
        ..message
    };
    assert!(process(&mut bob, &[again]).is_empty());

    // Garbage of every kind: recorded or warned about, never fatal, always acknowledged.
    let garbage = [
        // Not a Megolm message, under the held session.
        group_entry(
            4,
            alice_device,
            9,
            4,
            EnvelopeKind::Message,
            &sealed.session_id,
            2,
            Vec::new(),
            vec![7; 40],
        ),
        // Another group's chat.
        QueueEntry {
            queue_seq: 5,
            item: match group_entry(
                5,
                alice_device,
                9,
                5,
                EnvelopeKind::Message,
                &sealed.session_id,
                2,
                Vec::new(),
                sealed.bytes.clone(),
            )
            .item
            {
                Some(queue_entry::Item::Message(mut m)) => {
                    m.chat = ChatId::group(relay_proto::GroupId(10)).0.to_vec();
                    Some(queue_entry::Item::Message(m))
                }
                other => other,
            },
        },
        // A key share whose Olm body is noise.
        group_entry(
            6,
            alice_device,
            9,
            6,
            EnvelopeKind::GroupKeyShare,
            "s",
            1,
            vec![1, 2, 3],
            Vec::new(),
        ),
        // The session claimed by another device.
        group_entry(
            7,
            device(3, 1),
            9,
            7,
            EnvelopeKind::Message,
            &sealed.session_id,
            2,
            Vec::new(),
            sealed.bytes.clone(),
        ),
    ];
    let reports = process(&mut bob, &garbage);
    let undecryptable = reports
        .iter()
        .filter(|report| matches!(report, Inbound::Undecryptable { .. }))
        .count();
    let warnings = reports
        .iter()
        .filter(|report| matches!(report, Inbound::Warning(_)))
        .count();
    assert_eq!((undecryptable, warnings), (3, 1), "{reports:?}");
    assert_eq!(bob.store.queue_cursor().expect("cursor"), 7);
    let history = bob.store.group_history(9, 10).expect("history");
    assert_eq!(history[0].text.as_deref(), Some("hi group"));
}

#[test]
fn a_queue_gap_is_reported() {
    let mut bob = side(device(2, 1));
    let entry = QueueEntry {
        queue_seq: 4,
        item: None,
    };
    let reports = process(&mut bob, &[entry]);
    assert_eq!(reports.len(), 2);
    assert!(matches!(&reports[0], Inbound::Warning(text) if text.contains("jumped")));
}
