use fdb_layers::chat_log::{AppendOutcome, NewEntry};
use fdb_layers::device_queue::MessageOrigin;
use fdb_layers::directory::{AccountRecord, IdempotencyKey};
use fdb_layers::{EmbeddedOptions, keys};
use relay_proto::{ClientMessageId, DeviceId, GroupId};

use super::*;

const OLD: RegionId = RegionId(1);
const NEW: RegionId = RegionId(2);
const ALICE: AccountId = AccountId(1);
const BOB: AccountId = AccountId(2);

fn device(account: AccountId, number: u32) -> DeviceAddress {
    DeviceAddress {
        account,
        device: DeviceId(number),
    }
}

fn key(n: u64) -> IdempotencyKey {
    let mut nonce = [0u8; 16];
    nonce[8..].copy_from_slice(&n.to_be_bytes());
    IdempotencyKey::new(1_000, nonce)
}

fn database(dir: &tempfile::TempDir) -> Database {
    Database::open(&dir.path().join("region.redb"), EmbeddedOptions::default()).expect("open")
}

fn record(home: RegionId, epoch: u64) -> AccountRecord {
    AccountRecord {
        id: ALICE,
        name: "alice".into(),
        home_region: home,
        epoch,
    }
}

/// Bob's record: homed at the new home.
fn bob_at_new() -> AccountRecord {
    AccountRecord {
        id: BOB,
        name: "bob".into(),
        home_region: NEW,
        epoch: 1,
    }
}

/// Two regions' stores: alice homed at the old one with two devices, bob at the new one, and
/// both in each region's directory.
async fn alice_old_bob_new(
    old_dir: &tempfile::TempDir,
    new_dir: &tempfile::TempDir,
) -> (Database, Database) {
    let (old, new) = (database(old_dir), database(new_dir));
    for db in [&old, &new] {
        db.transact(|tx| async move {
            directory::put_account(&tx, &record(OLD, 1)).await?;
            directory::put_account(&tx, &bob_at_new()).await
        })
        .await
        .expect("the directory");
    }
    alice_devices(&old).await;
    (old, new)
}

/// Alice's two devices, at her old home.
async fn alice_devices(old: &Database) {
    old.transact(|tx| async move {
        directory::add_first_device(&tx, ALICE, b"id-1", b"sign-1", &key(1))
            .await?
            .expect("first");
        directory::add_device(&tx, ALICE, b"id-2", b"sign-2", &key(2)).await?;
        Ok(())
    })
    .await
    .expect("alice's devices");
}

/// Parts applied straight to the new home's store, counted.
struct Direct<'a> {
    db: &'a Database,
    region: RegionId,
    parts: Vec<u32>,
}

impl PartSink for Direct<'_> {
    async fn send(&mut self, part: wire::ImportAccount) -> Result<(), ProtoError> {
        self.parts.push(part.part);
        apply_part(self.db, self.region, &part, 5_000).await
    }
}

/// Alice's move from `old` to `new`, its parts applied straight to `new`.
fn exporter<'a>(old: &'a Database, new: &'a Database) -> Exporter<'a, Direct<'a>> {
    Exporter::new(
        old,
        ALICE,
        OLD,
        Direct {
            db: new,
            region: NEW,
            parts: Vec::new(),
        },
    )
}

/// Alice's whole move from `old` to `new`: copied, fenced, flushed and activated (epoch 2).
async fn move_alice(old: &Database, new: &Database) {
    let mut exporter = exporter(old, new);
    exporter.copy().await.expect("copied");
    exporter.fence(NEW).await.expect("fenced");
    exporter.flush().await.expect("flushed");
    let moved = crate::core::account_info(&record(NEW, 2));
    exporter.activate(moved).await.expect("activated");
}

/// Bob's envelope `id` in their chat (or alice's in a group), queued for `to`, as the message
/// path stores them: the queue entry names its sender.
async fn send(
    db: &Database,
    chat: ChatId,
    sender: DeviceAddress,
    sender_seq: u64,
    id: u8,
    to: &[DeviceAddress],
) {
    send_envelope(db, chat, sender, sender_seq, id, &[id; 300], to).await;
}

/// As [`send`], with the envelope's bytes given.
async fn send_envelope(
    db: &Database,
    chat: ChatId,
    sender: DeviceAddress,
    sender_seq: u64,
    id: u8,
    envelope: &[u8],
    to: &[DeviceAddress],
) {
    let to = to.to_vec();
    db.transact(|tx| {
        let to = to.clone();
        async move {
            let entry = NewEntry {
                chat,
                sender,
                client_message_id: ClientMessageId([id; 16]),
                sender_seq,
                sender_region: OLD,
                envelope_bytes: envelope,
            };
            let AppendOutcome::Appended { chat_seq, .. } =
                chat_log::append(&tx, &entry, 1_000).await?
            else {
                panic!("appended");
            };
            let origin = MessageOrigin {
                sender,
                client_message_id: ClientMessageId([id; 16]),
                sender_region: OLD,
                group: false,
            };
            for device in to {
                let item = QueueItem::MessageRef {
                    chat,
                    chat_seq,
                    origin: Some(origin),
                    shown_seq: None,
                };
                device_queue::append(&tx, device, &item, 1_000).await?;
            }
            Ok(())
        }
    })
    .await
    .expect("a send");
}

#[tokio::test]
async fn an_account_moves_in_parts_and_a_queue_that_grew_meanwhile_is_copied_again() {
    let (old_dir, new_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (old, new) = (database(&old_dir), database(&new_dir));
    let (alice1, alice2, bob1) = (device(ALICE, 1), device(ALICE, 2), device(BOB, 1));
    old.transact(|tx| async move {
        directory::put_account(&tx, &record(OLD, 1)).await?;
        directory::add_first_device(&tx, ALICE, b"id-1", b"sign-1", &key(1))
            .await?
            .expect("first");
        directory::add_device(&tx, ALICE, b"id-2", b"sign-2", &key(2)).await?;
        keys::add_one_time_keys(&tx, alice1, &[("k".into(), b"k".to_vec())], &key(3)).await?;
        Ok(())
    })
    .await
    .expect("alice");
    new.transact(|tx| async move { directory::put_account(&tx, &record(OLD, 1)).await })
        .await
        .expect("the new home's replica");
    // Enough messages of 300 bytes that the move takes several parts.
    let chat = ChatId::direct(ALICE, BOB);
    for id in 1..=200u8 {
        send(&old, chat, bob1, u64::from(id), id, &[alice1, alice2]).await;
    }
    send(&old, ChatId::group(GroupId(4)), alice1, 1, 201, &[alice2]).await;

    let mut exporter = exporter(&old, &new);
    exporter.copy().await.expect("copied");
    // A receipt for alice lands after her queues were copied (the region's receipt tasks are
    // not held): the fence finds the queue grew and copies it again.
    old.transact(|tx| async move {
        device_queue::append(&tx, alice2, &QueueItem::Receipt(b"tick".to_vec()), 2_000).await
    })
    .await
    .expect("a late receipt");
    exporter.fence(NEW).await.expect("fenced");
    exporter.flush().await.expect("flushed");
    let moved = crate::core::account_info(&record(NEW, 2));
    let stats = exporter.activate(moved.clone()).await.expect("activated");
    assert_eq!(stats.queue_entries, 200 + 201 + 1);
    assert_eq!(
        stats.log_entries, 201,
        "each log entry once, though two devices named it"
    );
    assert_eq!(stats.chats, 2);
    assert!(stats.parts >= 3, "several parts: {stats:?}");
    let parts = exporter.sink.parts.clone();
    assert_eq!(
        parts,
        (0..stats.parts).collect::<Vec<_>>(),
        "numbered in order"
    );

    // The old home's mark, then it lets go.
    assert_eq!(
        old.transact(|tx| async move { home_move::away(&tx, ALICE).await })
            .await
            .expect("read"),
        Some(NEW)
    );
    let_go(&old, &moved, false).await.expect("let go");
    old.transact(|tx| async move {
        assert_eq!(
            directory::account_by_id(&tx, ALICE)
                .await?
                .map(|r| r.home_region),
            Some(NEW)
        );
        assert!(directory::devices(&tx, ALICE).await?.is_empty());
        assert!(
            device_queue::queued_devices_of(&tx, ALICE, None, 8)
                .await?
                .is_empty()
        );
        Ok(())
    })
    .await
    .expect("the old home let go");

    // The new home serves alice: her record, devices, keys, both queues whole and in order.
    new.transact(|tx| async move {
        assert_eq!(
            directory::account_by_id(&tx, ALICE).await?,
            Some(record(NEW, 2))
        );
        assert_eq!(directory::devices(&tx, ALICE).await?.len(), 2);
        assert_eq!(keys::one_time_key_count(&tx, alice1).await?, 1);
        let first = device_queue::read_after(&tx, alice1, 0, 1_000).await?;
        assert_eq!(first.len(), 200);
        let second = device_queue::read_after(&tx, alice2, 0, 1_000).await?;
        assert_eq!(second.len(), 202);
        assert_eq!(second.last().map(|(seq, _)| *seq), Some(202));
        assert!(matches!(second[201].1, QueueItem::Receipt(_)));
        for (n, (_, item)) in first.iter().take(200).enumerate() {
            let (Some(chat), messages) = item.messages() else {
                panic!("a message");
            };
            let entry = chat_log::entry(&tx, chat, messages[0].chat_seq)
                .await?
                .expect("its log entry");
            assert_eq!(usize::from(entry.envelope_bytes[0]), n + 1);
        }
        // Bob goes on where he stood.
        assert_eq!(chat_log::last_sender_seq(&tx, chat, bob1).await?, 200);
        Ok(())
    })
    .await
    .expect("the new home's copy");

    // A second move into a region where the account lives is refused.
    let again = apply_part(
        &new,
        NEW,
        &wire::ImportAccount {
            account: ALICE.0,
            from_region: OLD.0,
            ..wire::ImportAccount::default()
        },
        6_000,
    )
    .await;
    assert_eq!(again.map_err(|error| error.code), Err(ErrorCode::Forbidden));
}

/// A message bob (homed at the new home) sent before alice linked her second device: his region
/// stored it for alice's first device only (it checks only its own accounts' devices); her home
/// answered "mismatched" and he sent it again for both, which her home stored and queued and his
/// region took as a duplicate. When alice moves to bob's region, the copy there is completed
/// with her second device's entry, or its queue would name an entry it cannot read.
#[tokio::test]
async fn a_copy_stored_for_others_is_completed_with_the_moved_devices_entries() {
    let (old_dir, new_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (old, new) = alice_old_bob_new(&old_dir, &new_dir).await;
    let (alice1, alice2, bob1) = (device(ALICE, 1), device(ALICE, 2), device(BOB, 1));
    let chat = ChatId::direct(ALICE, BOB);
    let entry = |to: DeviceAddress, body: &[u8]| wire::DeviceCiphertext {
        recipient: to.into(),
        message_type: 1,
        body: body.to_vec(),
    };
    let envelope = |ciphertexts| wire::Envelope {
        chat: chat.0.to_vec(),
        sender: bob1.into(),
        client_message_id: vec![9; 16],
        sender_seq: 1,
        recipient_accounts: vec![ALICE.0],
        ciphertexts,
        ..wire::Envelope::default()
    };
    // An earlier message of bob's in the chat at the new home, so the numbers differ.
    send(&new, chat, bob1, 1, 1, &[]).await;
    let first = envelope(vec![entry(alice1, b"for 1")]).encode_to_vec();
    send_envelope(&new, chat, bob1, 2, 9, &first, &[]).await;
    let checked = envelope(vec![
        entry(alice1, b"for 1, again"),
        entry(alice2, b"for 2"),
    ]);
    send(&old, chat, bob1, 1, 1, &[]).await;
    send_envelope(
        &old,
        chat,
        bob1,
        2,
        9,
        &checked.encode_to_vec(),
        &[alice1, alice2],
    )
    .await;

    move_alice(&old, &new).await;

    new.transact(|tx| async move {
        for (device, body) in [(alice1, &b"for 1"[..]), (alice2, &b"for 2"[..])] {
            let queued = device_queue::read_after(&tx, device, 0, 10).await?;
            let [(_, item)] = queued.as_slice() else {
                panic!("one entry for {device}: {queued:?}");
            };
            let (Some(chat), messages) = item.messages() else {
                panic!("a message");
            };
            assert_eq!(messages[0].chat_seq, 2, "the new home's number");
            assert_eq!(messages[0].shown(), 2, "the old home's (bob is homed here)");
            let stored = chat_log::entry(&tx, chat, 2).await?.expect("the entry");
            let (_, ciphertext) =
                crate::stored_envelope::member_view(&stored.envelope_bytes, device.into())
                    .expect("frames");
            // The first device keeps the entry stored here; the second gets the checked one.
            assert_eq!(ciphertext.map(|c| c.body), Some(body.to_vec()), "{device}");
        }
        Ok(())
    })
    .await
    .expect("the new home's copy");
}

/// Seed 1783: alice moves into the region of bob, her correspondent, which numbers their chat
/// for bob in another order (each home numbered the messages as they reached it). Her devices
/// know the old home's numbers, so the new home gives her a view of the chat: what her queues
/// name keeps those numbers, one of the chat's last entries is known by the number she knows,
/// and the chat goes on after the last of them. Bob's log and numbers stay as they are.
#[tokio::test]
async fn an_account_moving_into_its_peers_region_keeps_its_numbers_of_their_chat() {
    let (old_dir, new_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (old, new) = alice_old_bob_new(&old_dir, &new_dir).await;
    let (alice1, alice2, bob1) = (device(ALICE, 1), device(ALICE, 2), device(BOB, 1));
    let chat = ChatId::direct(ALICE, BOB);
    // The old home: bob's 1, alice's 10 (her second device gets a copy), bob's 2 (queued for
    // both of her devices), alice's 11 (a copy).
    send(&old, chat, bob1, 1, 1, &[]).await;
    send(&old, chat, alice1, 1, 10, &[alice2]).await;
    send(&old, chat, bob1, 2, 2, &[alice1, alice2]).await;
    send(&old, chat, alice1, 2, 11, &[alice2]).await;
    // Bob's region got alice's first: 10, 11, bob's 1, 2, and bob's 3, which never reached
    // the old home.
    send(&new, chat, alice1, 1, 10, &[bob1]).await;
    send(&new, chat, alice1, 2, 11, &[bob1]).await;
    send(&new, chat, bob1, 1, 1, &[]).await;
    send(&new, chat, bob1, 2, 2, &[]).await;
    send(&new, chat, bob1, 3, 3, &[]).await;

    move_alice(&old, &new).await;

    new.transact(|tx| async move {
        // (client message id, this log's number, the number shown) of each queued message.
        let queued = async |device| -> Result<Vec<(u8, u64, u64)>, StoreError> {
            let mut shown = Vec::new();
            for (_, item) in device_queue::read_after(&tx, device, 0, 10).await? {
                let (_, messages) = item.messages();
                for message in messages {
                    let origin = message.origin.expect("named");
                    shown.push((
                        origin.client_message_id.0[0],
                        message.chat_seq,
                        message.shown(),
                    ));
                }
            }
            Ok(shown)
        };
        assert_eq!(queued(alice1).await?, [(2, 4, 3)]);
        assert_eq!(queued(alice2).await?, [(10, 1, 2), (2, 4, 3), (11, 2, 4)]);
        assert_eq!(chat_log::last_seq(&tx, chat).await?, 5, "nothing appended");
        assert_eq!(
            chat_log::views::viewers(&tx, chat).await?,
            [ALICE],
            "bob has none"
        );
        assert_eq!(
            chat_log::views::last_shown(&tx, chat, ALICE).await?,
            Some(4)
        );
        // Bob's 1, one of the chat's last entries, is known to her as 1.
        assert_eq!(
            chat_log::views::shown_of(&tx, chat, ALICE, 3).await?,
            Some(1)
        );
        // Bob's 3, which she never had, comes next.
        Ok(())
    })
    .await
    .expect("the new home's copy");

    // Bob's 3 reaches her there, under her next number.
    let queued_3 = new
        .transact(|tx| async move {
            let shown =
                chat_log::views::number(&tx, chat, ALICE, 5, bob1, ClientMessageId([3; 16]))
                    .await?;
            let item = QueueItem::MessageRef {
                chat,
                chat_seq: 5,
                origin: Some(MessageOrigin {
                    sender: bob1,
                    client_message_id: ClientMessageId([3; 16]),
                    sender_region: NEW,
                    group: false,
                }),
                shown_seq: Some(shown),
            };
            device_queue::append(&tx, alice2, &item, 3_000).await?;
            Ok(shown)
        })
        .await
        .expect("bob's 3");
    assert_eq!(queued_3, 5);

    // A second move, to a region where nobody reads the chat: it takes her numbers, not the
    // log's, so her devices go on with the same ones.
    const THIRD: RegionId = RegionId(3);
    let third_dir = tempfile::tempdir().expect("dir");
    let third = database(&third_dir);
    third
        .transact(|tx| async move {
            directory::put_account(&tx, &record(NEW, 2)).await?;
            directory::put_account(&tx, &bob_at_new()).await
        })
        .await
        .expect("the third region's directory");
    let mut again = Exporter::new(
        &new,
        ALICE,
        NEW,
        Direct {
            db: &third,
            region: THIRD,
            parts: Vec::new(),
        },
    );
    again.copy().await.expect("copied");
    again.fence(THIRD).await.expect("fenced");
    again.flush().await.expect("flushed");
    let moved = crate::core::account_info(&record(THIRD, 3));
    again.activate(moved).await.expect("activated");
    third
        .transact(|tx| async move {
            let mut numbers = Vec::new();
            for (_, item) in device_queue::read_after(&tx, alice2, 0, 10).await? {
                let (_, messages) = item.messages();
                for message in messages {
                    let entry = chat_log::entry(&tx, chat, message.chat_seq)
                        .await?
                        .expect("its entry");
                    numbers.push((entry.client_message_id.0[0], message.shown()));
                }
            }
            assert_eq!(numbers, [(10, 2), (2, 3), (11, 4), (3, 5)]);
            assert_eq!(chat_log::last_seq(&tx, chat).await?, 5, "adopted");
            Ok(())
        })
        .await
        .expect("the third region's copy");
}

/// A group envelope of `sender` to alice and bob, as a region stores it.
fn group_envelope(group: u64, sender: DeviceAddress, sender_seq: u64, id: u8) -> Vec<u8> {
    wire::Envelope {
        chat: ChatId::group(GroupId(group)).0.to_vec(),
        sender: sender.into(),
        client_message_id: vec![id; 16],
        sender_seq,
        recipient_accounts: vec![ALICE.0, BOB.0],
        group,
        ..wire::Envelope::default()
    }
    .encode_to_vec()
}

#[tokio::test]
async fn a_group_member_moving_in_keeps_its_numbers_where_others_read_the_groups_chat() {
    let (old_dir, new_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (old, new) = alice_old_bob_new(&old_dir, &new_dir).await;
    let (alice2, bob1) = (device(ALICE, 2), device(BOB, 1));
    // Two groups of alice and bob; alice never sent in either. The old home numbered bob's
    // 1, 2 and 3 to the first as 1, 2, 3, and her second device has yet to fetch the 3. The
    // new home numbers the first group for bob: his 5 (before alice was in it), then 1, 2, 3.
    // It holds nothing of the second group, where bob's 7 and 8 went to alice only.
    let (first, second) = (ChatId::group(GroupId(70)), ChatId::group(GroupId(71)));
    // (region, group, bob's sender_seq, message id, queued for alice's second device)
    let sends = [
        (&old, 70, 1, 1, false),
        (&old, 70, 2, 2, false),
        (&old, 70, 3, 3, true),
        (&new, 70, 1, 5, false),
        (&new, 70, 2, 1, false),
        (&new, 70, 3, 2, false),
        (&new, 70, 4, 3, false),
        (&old, 71, 1, 7, false),
        (&old, 71, 2, 8, true),
    ];
    for (db, group, seq, id, queued) in sends {
        let chat = ChatId::group(GroupId(group));
        let to: &[DeviceAddress] = if queued { &[alice2] } else { &[] };
        send_envelope(
            db,
            chat,
            bob1,
            seq,
            id,
            &group_envelope(group, bob1, seq, id),
            to,
        )
        .await;
    }

    move_alice(&old, &new).await;

    let (queued, next) = new
        .transact(|tx| async move {
            let mut queued = Vec::new();
            for (_, item) in device_queue::read_after(&tx, alice2, 0, 10).await? {
                let (chat, messages) = item.messages();
                for message in messages {
                    let origin = message.origin.expect("named");
                    queued.push((
                        chat == Some(first),
                        origin.client_message_id.0[0],
                        message.chat_seq,
                        message.shown(),
                    ));
                }
            }
            assert_eq!(chat_log::views::viewers(&tx, first).await?, [ALICE]);
            assert_eq!(
                chat_log::views::last_shown(&tx, first, ALICE).await?,
                Some(3)
            );
            // Bob's 1 and 2, entries 2 and 3 here, are known to her as 1 and 2.
            assert_eq!(
                chat_log::views::shown_of(&tx, first, ALICE, 2).await?,
                Some(1)
            );
            assert_eq!(
                chat_log::views::shown_of(&tx, first, ALICE, 3).await?,
                Some(2)
            );
            assert_eq!(
                chat_log::last_seq(&tx, first).await?,
                4,
                "bob's numbers stay"
            );
            // The second group's numbering is adopted: nobody here read a number of it.
            assert!(chat_log::views::viewers(&tx, second).await?.is_empty());
            assert_eq!(chat_log::last_seq(&tx, second).await?, 2, "adopted");
            // Bob's next to the first group reaches her under her next number.
            let next =
                chat_log::views::number(&tx, first, ALICE, 5, bob1, ClientMessageId([9; 16]))
                    .await?;
            Ok((queued, next))
        })
        .await
        .expect("the new home's copy");
    assert_eq!(queued, [(true, 3, 4, 3), (false, 8, 2, 2)]);
    assert_eq!(next, 4);
}

#[tokio::test]
async fn a_part_with_keys_of_another_account_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let db = database(&dir);
    let foreign = fdb_layers::Subspace::new(&("blocks", BOB)).pack(&(3u64,));
    let part = wire::ImportAccount {
        account: ALICE.0,
        from_region: OLD.0,
        part: 1,
        keys: vec![wire::MovedKey {
            key: foreign.clone(),
            value: Vec::new(),
        }],
        ..wire::ImportAccount::default()
    };
    let refused = apply_part(&db, NEW, &part, 5_000).await;
    assert_eq!(
        refused.map_err(|error| error.code),
        Err(ErrorCode::Malformed)
    );
    let stored = db
        .transact(|tx| {
            let foreign = foreign.clone();
            async move { tx.get(&foreign).await }
        })
        .await
        .expect("read");
    assert_eq!(stored, None);
}

#[test]
fn requests_touch_the_accounts_routed_here_and_devices_their_own() {
    let envelope = wire::Envelope {
        sender: wire::DeviceAddr {
            account: 5,
            device: 1,
        },
        ..wire::Envelope::default()
    };
    let commit = region_request::Body::Commit(wire::CommitEnvelope {
        envelope,
        sender_region: OLD.0,
        routed: vec![
            wire::RoutedHome {
                account: 7,
                region: OLD.0,
            },
            wire::RoutedHome {
                account: 8,
                region: NEW.0,
            },
        ],
    });
    assert_eq!(
        touched_accounts(&commit, OLD),
        Touched {
            accounts: vec![AccountId(7), AccountId(5)],
            refused_when_away: true,
        }
    );
    assert_eq!(touched_accounts(&commit, NEW).accounts, [AccountId(8)]);
    let fetch = region_request::Body::FetchQueue(wire::ForDevice {
        device: wire::DeviceAddr {
            account: 9,
            device: 2,
        },
        ..wire::ForDevice::default()
    });
    assert_eq!(touched_accounts(&fetch, OLD).accounts, [AccountId(9)]);
    let lookup = region_request::Body::LookupAccount(wire::LookupAccount { account: 9 });
    assert!(touched_accounts(&lookup, OLD).accounts.is_empty());
}

#[tokio::test]
async fn a_held_account_releases_its_waiters() {
    let holds = std::sync::Arc::new(AccountHolds::default());
    assert!(!holds.any());
    assert!(holds.hold(ALICE));
    assert!(!holds.hold(ALICE), "one move of an account at a time");
    assert!(holds.holds_any(&[BOB, ALICE]));
    assert!(!holds.holds_any(&[BOB]));
    let waiter = tokio::spawn({
        let holds = holds.clone();
        async move {
            loop {
                let released = holds.released();
                tokio::pin!(released);
                released.as_mut().enable();
                if !holds.holds_any(&[ALICE]) {
                    return;
                }
                released.await;
            }
        }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    holds.release(ALICE);
    waiter.await.expect("released");
    assert!(!holds.any());
}

/// The import side of swarm seed 93: bob's group text stored at alice's new home in the build
/// he made first, and at her old home in the build he made again at a later index of his Megolm
/// session for her second device (which holds his key only from there), queued for it. The move
/// keeps the old home's build as her own copy: her devices get it, bob keeps his.
#[tokio::test]
async fn a_moved_member_keeps_the_build_of_a_group_text_its_old_home_queued() {
    let (old_dir, new_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (old, new) = alice_old_bob_new(&old_dir, &new_dir).await;
    let (alice2, bob1) = (device(ALICE, 2), device(BOB, 1));
    let chat = ChatId::group(GroupId(70));
    let build = |megolm: u8| {
        let mut envelope =
            wire::Envelope::decode(group_envelope(70, bob1, 1, 3).as_slice()).expect("decodes");
        envelope.group_session_id = "session-1".into();
        envelope.group_ciphertext = vec![megolm; 40];
        envelope.encode_to_vec()
    };
    let (again, first) = (build(9), build(7));
    send_envelope(&old, chat, bob1, 1, 3, &again, &[alice2]).await;
    send_envelope(&new, chat, bob1, 1, 3, &first, &[]).await;

    move_alice(&old, &new).await;

    let (copy, stored) = new
        .transact(|tx| async move {
            let copy = chat_log::views::copy_of(&tx, chat, ALICE, 1).await?;
            let stored = chat_log::entry(&tx, chat, 1).await?.expect("bob's text");
            Ok((copy, stored.envelope_bytes.to_vec()))
        })
        .await
        .expect("the new home's copy");
    assert_eq!(
        copy,
        Some(again),
        "alice's devices get the build they can read"
    );
    assert_eq!(stored, first, "the log keeps the build bob's devices got");
}

/// Failover swarm seed 390: alice moved into a region whose directory replica did not know bob
/// yet (it had just failed over, and was following the writer again). The move took bob for an
/// account nobody named, did not adopt the old home's numbering of their chat, and bob's next
/// envelope there took a number alice's devices held already (I2). A peer the region does not
/// know is not homed there: the chat is adopted.
#[tokio::test]
async fn a_chat_with_a_peer_the_new_home_does_not_know_yet_keeps_its_numbers() {
    let (old_dir, new_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (old, new) = (database(&old_dir), database(&new_dir));
    let elsewhere = AccountRecord {
        home_region: RegionId(3),
        ..bob_at_new()
    };
    old.transact(|tx| {
        let elsewhere = elsewhere.clone();
        async move {
            directory::put_account(&tx, &record(OLD, 1)).await?;
            directory::put_account(&tx, &elsewhere).await
        }
    })
    .await
    .expect("the old home");
    alice_devices(&old).await;
    // The new home's replica knows alice, not bob.
    new.transact(|tx| async move { directory::put_account(&tx, &record(OLD, 1)).await })
        .await
        .expect("the new home's replica");
    let (alice2, bob1) = (device(ALICE, 2), device(BOB, 1));
    let chat = ChatId::direct(ALICE, BOB);
    send(&old, chat, bob1, 1, 1, &[]).await;
    send(&old, chat, bob1, 2, 2, &[alice2]).await;

    move_alice(&old, &new).await;

    let last_seq = new
        .transact(|tx| async move { chat_log::last_seq(&tx, chat).await })
        .await
        .expect("reads");
    assert_eq!(last_seq, 2, "the old home's numbering is adopted");
}
