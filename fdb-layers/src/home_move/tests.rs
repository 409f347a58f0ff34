use relay_proto::{ChatId, ClientMessageId, DeviceAddress, DeviceId, GroupId, RegionId};

use super::*;
use crate::chat_log::{self, AppendOutcome, NewEntry};
use crate::device_queue::{MovedEntry, QueueItem};
use crate::engine::Database;
use crate::test_support::{idempotency_key, temporary_database};
use crate::{blocks, device_state, directory, keys};

const ALICE: AccountId = AccountId(7);
const BOB: AccountId = AccountId(8);
const CAROL: AccountId = AccountId(9);
const OLD: RegionId = RegionId(1);

fn device(account: AccountId, number: u32) -> DeviceAddress {
    DeviceAddress {
        account,
        device: DeviceId(number),
    }
}

fn message_id(n: u8) -> ClientMessageId {
    ClientMessageId([n; 16])
}

/// Appends `sender`'s envelope number `sender_seq` to `chat` and queues it for `to`.
async fn send(
    database: &Database,
    chat: ChatId,
    sender: DeviceAddress,
    sender_seq: u64,
    id: u8,
    to: &[DeviceAddress],
) -> u64 {
    let to = to.to_vec();
    database
        .transact(|tx| {
            let to = to.clone();
            async move {
                let envelope = [id; 40];
                let entry = NewEntry {
                    chat,
                    sender,
                    client_message_id: message_id(id),
                    sender_seq,
                    sender_region: OLD,
                    envelope_bytes: &envelope,
                };
                let AppendOutcome::Appended { chat_seq, .. } =
                    chat_log::append(&tx, &entry, 1_000).await?
                else {
                    panic!("envelope {id} is appended");
                };
                for device in to {
                    let item = QueueItem::MessageRef {
                        chat,
                        chat_seq,
                        origin: None,
                        shown_seq: None,
                    };
                    device_queue::append(&tx, device, &item, 1_000 + u64::from(id)).await?;
                }
                Ok(chat_seq)
            }
        })
        .await
        .expect("a send commits")
}

/// Everything the old home hands over for `account`, moved into `new` as a region does it.
async fn move_account(old: &Database, new: &Database, account: AccountId) {
    // Keys copied key for key, two a page so the cursor is exercised.
    let mut after: Option<Vec<u8>> = None;
    loop {
        let cursor = after.clone();
        let page = old
            .transact(|tx| {
                let cursor = cursor.clone();
                async move { account_keys(&tx, account, cursor.as_deref(), 2).await }
            })
            .await
            .expect("keys read");
        let full = page.len() == 2;
        after = page.last().map(|(key, _)| key.clone()).or(after);
        new.transact(|tx| {
            let page = page.clone();
            async move { import_keys(&tx, account, &page) }
        })
        .await
        .expect("keys written");
        if !full {
            break;
        }
    }
    // Chat heads, one chat looked at a page.
    let mut after = None;
    loop {
        let (heads, next) = old
            .transact(
                |tx| async move { chat_log::chats_of(&tx, account, after, 1, |_| false).await },
            )
            .await
            .expect("chats read");
        new.transact(|tx| {
            let heads = heads.clone();
            async move {
                for chat in heads {
                    // In these tests nobody at the new home reads alice's chats but bob's.
                    let nobody = !chat.senders.iter().any(|(sender, _)| sender.account == BOB);
                    chat_log::adopt(&tx, chat.chat, chat.last_seq, nobody).await?;
                    for (sender, sender_seq) in chat.senders {
                        chat_log::raise_sender_seq(&tx, chat.chat, sender, sender_seq)?;
                    }
                }
                Ok(())
            }
        })
        .await
        .expect("heads written");
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    // Queues, with the log entries they name.
    let devices = old
        .transact(|tx| async move { device_queue::queued_devices_of(&tx, account, None, 16).await })
        .await
        .expect("queued devices read");
    for queued in devices {
        let (latest, entries) = old
            .transact(|tx| async move {
                let entries = device_queue::moved_entries(&tx, queued, 0, 100).await?;
                let mut carried = Vec::new();
                for entry in entries {
                    let (chat, messages) = entry.item.messages();
                    let mut logged = Vec::new();
                    if let Some(chat) = chat {
                        for message in messages {
                            let bytes = chat_log::entry_bytes(&tx, chat, message.chat_seq)
                                .await?
                                .expect("the named entry is there");
                            logged.push((chat, message.chat_seq, bytes));
                        }
                    }
                    // Over the wire as bytes, as a region sends it.
                    carried.push((
                        entry.queue_seq,
                        device_queue::moved_item_bytes(&entry),
                        logged,
                    ));
                }
                Ok((device_queue::latest(&tx, queued).await?, carried))
            })
            .await
            .expect("queue read");
        new.transact(|tx| {
            let entries = entries.clone();
            async move {
                for (queue_seq, bytes, logged) in entries {
                    let mut entry = device_queue::moved_entry_from(queue_seq, &bytes)?;
                    let mut renumbered = std::collections::BTreeMap::new();
                    for (chat, old_seq, bytes) in logged {
                        renumbered.insert(
                            old_seq,
                            chat_log::import_entry(&tx, chat, old_seq, &bytes).await?,
                        );
                    }
                    if let QueueItem::MessageRef { chat_seq, .. } = &mut entry.item {
                        *chat_seq = renumbered[chat_seq];
                    }
                    device_queue::import_entry(&tx, queued, &entry).await?;
                }
                device_queue::raise_latest(&tx, queued, latest)
            }
        })
        .await
        .expect("queue written");
    }
}

#[tokio::test]
async fn an_account_moves_with_its_devices_keys_queues_and_chat_heads() {
    let (_old_folder, old) = temporary_database(None);
    let (_new_folder, new) = temporary_database(None);
    let (alice1, alice2, bob1, carol1) = (
        device(ALICE, 1),
        device(ALICE, 2),
        device(BOB, 1),
        device(CAROL, 1),
    );
    let with_bob = ChatId::direct(ALICE, BOB);
    let with_carol = ChatId::direct(ALICE, CAROL);
    let bob_and_carol = ChatId::direct(BOB, CAROL);
    let group = ChatId::group(GroupId(5));

    old.transact(|tx| async move {
        directory::add_first_device(&tx, ALICE, b"id-1", b"sign-1", &idempotency_key(1))
            .await?
            .expect("a first device");
        directory::add_device(&tx, ALICE, b"id-2", b"sign-2", &idempotency_key(2)).await?;
        keys::add_one_time_keys(
            &tx,
            alice1,
            &[
                ("k1".into(), b"one".to_vec()),
                ("k2".into(), b"two".to_vec()),
            ],
            &idempotency_key(3),
        )
        .await?;
        keys::set_fallback_key(&tx, alice2, "f1", b"fallback", b"signed")?;
        blocks::block(&tx, ALICE, CAROL).await?;
        device_state::record_envelope(&tx, alice1, 4)?;
        Ok(())
    })
    .await
    .expect("alice's records");

    // Bob wrote three to alice; alice answered once; carol wrote once; alice wrote in a group;
    // bob and carol talk without her. Alice's device 1 acknowledged bob's first.
    let everyone = [alice1, alice2];
    send(&old, with_bob, bob1, 1, 1, &everyone).await;
    send(&old, with_bob, bob1, 2, 2, &everyone).await;
    send(&old, with_bob, bob1, 3, 3, &everyone).await;
    send(&old, with_bob, alice1, 1, 4, &[alice2]).await;
    send(&old, with_carol, carol1, 1, 5, &everyone).await;
    send(&old, group, alice2, 1, 6, &[alice1]).await;
    send(&old, bob_and_carol, bob1, 1, 7, &[carol1]).await;
    old.transact(|tx| async move {
        device_queue::ack(&tx, alice1, &[1]).await?;
        device_state::record_ack(&tx, alice1, 1)
    })
    .await
    .expect("an ack");

    // The new home already holds bob's first message: bob is homed there too.
    send(&new, with_bob, bob1, 1, 1, &[]).await;

    move_account(&old, &new, ALICE).await;

    new.transact(|tx| async move {
        // Devices and keys.
        let devices = directory::devices(&tx, ALICE).await?;
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[1].signing_key, b"sign-2");
        assert_eq!(directory::last_device_number(&tx, ALICE).await?, 2);
        let claim = keys::claim_one_time_key(&tx, alice1, &idempotency_key(9)).await?;
        assert_eq!(claim.key.expect("a key").key_id, "k1");
        assert_eq!(claim.one_time_keys_remaining, 1);
        let fallback = keys::claim_one_time_key(&tx, alice2, &idempotency_key(10)).await?;
        assert!(fallback.key.expect("the fallback").fallback);
        assert!(blocks::is_blocked(&tx, ALICE, CAROL).await?);
        let marks = device_state::marks(&tx, alice1).await?;
        assert_eq!((marks.acked_queue_seq, marks.device_seq), (1, 4));

        // Queues: same queue sequences, each naming the same envelope under this log's numbers.
        let queue = device_queue::read_after(&tx, alice1, 0, 100).await?;
        assert_eq!(
            queue.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            [2, 3, 4, 5]
        );
        let mut envelopes = Vec::new();
        for (_, item) in &queue {
            let (Some(chat), messages) = item.messages() else {
                panic!("message entries only");
            };
            for message in messages {
                let entry = chat_log::entry(&tx, chat, message.chat_seq)
                    .await?
                    .expect("the entry moved");
                envelopes.push(entry.envelope_bytes[0]);
            }
        }
        assert_eq!(envelopes, [2, 3, 5, 6]);
        assert_eq!(device_queue::latest(&tx, alice1).await?, 5);
        assert_eq!(device_queue::depth(&tx, alice1).await?, 4);
        assert_eq!(device_queue::latest(&tx, alice2).await?, 5);
        // Bob's first message was not stored twice: the log had it.
        assert_eq!(chat_log::last_seq(&tx, with_bob).await?, 4);
        Ok(())
    })
    .await
    .expect("the new home's records");

    // Every sender goes on where it stood, in chats the new home did not hold before too; a
    // chat without alice did not move.
    let next = |chat, sender, sender_seq, id| {
        let new = new.clone();
        async move {
            new.transact(|tx| async move {
                let envelope = [id; 8];
                let entry = NewEntry {
                    chat,
                    sender,
                    client_message_id: message_id(id),
                    sender_seq,
                    sender_region: OLD,
                    envelope_bytes: &envelope,
                };
                chat_log::append(&tx, &entry, 2_000).await
            })
            .await
            .expect("an append")
        }
    };
    assert!(matches!(
        next(with_bob, bob1, 4, 40).await,
        AppendOutcome::Appended { .. }
    ));
    assert!(matches!(
        next(with_bob, alice1, 2, 41).await,
        AppendOutcome::Appended { .. }
    ));
    assert!(matches!(
        next(with_carol, carol1, 2, 42).await,
        AppendOutcome::Appended { .. }
    ));
    assert_eq!(
        next(bob_and_carol, bob1, 2, 43).await,
        AppendOutcome::Gap {
            expected_sender_seq: 1
        }
    );

    // The old home lets go of everything, a page at a time.
    let mut rounds = 0;
    while !old
        .transact(|tx| async move { clear_account(&tx, ALICE, 2).await })
        .await
        .expect("a clear")
    {
        rounds += 1;
        assert!(rounds < 100, "clearing ends");
    }
    old.transact(|tx| async move {
        assert!(account_keys(&tx, ALICE, None, 100).await?.is_empty());
        assert!(
            device_queue::queued_devices_of(&tx, ALICE, None, 16)
                .await?
                .is_empty()
        );
        assert!(directory::devices(&tx, ALICE).await?.is_empty());
        // Others' records stay.
        assert_eq!(device_queue::latest(&tx, carol1).await?, 1);
        // Nothing of alice's queues is left in the expiry index either: a sweep of all queues
        // at the end of time finds only carol's entry.
        let swept =
            device_queue::sweep_expired(&tx, device_queue::SweepScope::All, u64::MAX / 2, 1, 100)
                .await?;
        assert_eq!(
            swept
                .expired
                .iter()
                .map(|(device, seq, _)| (*device, *seq))
                .collect::<Vec<_>>(),
            [(carol1, 1)]
        );
        Ok(())
    })
    .await
    .expect("the old home let go");
}

#[tokio::test]
async fn an_import_refuses_keys_of_another_account_and_a_second_import_changes_nothing() {
    let (_folder, database) = temporary_database(None);
    let foreign = vec![(Subspace::new(&("blocks", BOB)).pack(&(1u64,)), Vec::new())];
    let refused = database
        .transact(|tx| {
            let foreign = foreign.clone();
            async move { import_keys(&tx, ALICE, &foreign) }
        })
        .await;
    assert!(matches!(refused, Err(StoreError::InvalidOptions(_))));

    let alice1 = device(ALICE, 1);
    let entry = MovedEntry {
        queue_seq: 9,
        item: QueueItem::Receipt(b"r".to_vec()),
        enqueued_at_ms: 5,
    };
    for expected in [true, false] {
        let entry = entry.clone();
        let imported = database
            .transact(|tx| {
                let entry = entry.clone();
                async move { device_queue::import_entry(&tx, alice1, &entry).await }
            })
            .await
            .expect("an import");
        assert_eq!(imported, expected);
    }
    database
        .transact(|tx| async move {
            assert_eq!(device_queue::depth(&tx, alice1).await?, 1);
            assert_eq!(device_queue::latest(&tx, alice1).await?, 9);
            Ok(())
        })
        .await
        .expect("one entry");
}

#[tokio::test]
async fn away_marks_are_listed_in_pages_and_cleared() {
    let (_folder, database) = temporary_database(None);
    database
        .transact(|tx| async move {
            set_away(&tx, ALICE, RegionId(2))?;
            set_away(&tx, BOB, RegionId(3))?;
            set_away(&tx, CAROL, RegionId(2))?;
            clear_away(&tx, BOB);
            Ok(())
        })
        .await
        .expect("marks");
    database
        .transact(|tx| async move {
            assert_eq!(away(&tx, ALICE).await?, Some(RegionId(2)));
            assert_eq!(away(&tx, BOB).await?, None);
            assert_eq!(away_accounts(&tx, None, 1).await?, [(ALICE, RegionId(2))]);
            assert_eq!(
                away_accounts(&tx, Some(ALICE), 10).await?,
                [(CAROL, RegionId(2))]
            );
            assert!(away_accounts(&tx, Some(CAROL), 10).await?.is_empty());
            Ok(())
        })
        .await
        .expect("read back");
}

#[tokio::test]
async fn a_chat_the_new_home_lacks_keeps_the_numbers_the_devices_know() {
    let (_old_folder, old) = temporary_database(None);
    let (_new_folder, new) = temporary_database(None);
    let (alice1, carol1) = (device(ALICE, 1), device(CAROL, 1));
    let chat = ChatId::direct(ALICE, CAROL);
    for n in 1..=3u8 {
        send(&old, chat, carol1, u64::from(n), n, &[alice1]).await;
    }
    // alice read the first two at her old home: only number 3 waits.
    old.transact(|tx| async move {
        device_queue::ack(&tx, alice1, &[1, 2]).await?;
        Ok(())
    })
    .await
    .expect("acks");

    move_account(&old, &new, ALICE).await;

    let next = new
        .transact(|tx| async move {
            let queue = device_queue::read_after(&tx, alice1, 0, 10).await?;
            let (Some(_), messages) = queue[0].1.messages() else {
                panic!("a message");
            };
            // Number 3 there is number 3 here: alice's device never sees a number twice.
            assert_eq!(messages[0].chat_seq, 3);
            let entry = chat_log::entry(&tx, chat, 3).await?.expect("moved");
            assert_eq!(entry.envelope_bytes[0], 3);
            assert_eq!(chat_log::last_seq(&tx, chat).await?, 3);
            // carol's number 2, which alice read at her old home, sent again (its answer was
            // lost): a retry of what the old home took, not a device that went back.
            let again = [2u8; 8];
            let retry = NewEntry {
                chat,
                sender: carol1,
                client_message_id: message_id(2),
                sender_seq: 2,
                sender_region: OLD,
                envelope_bytes: &again,
            };
            assert!(matches!(
                chat_log::append(&tx, &retry, 2_000).await?,
                AppendOutcome::Appended { chat_seq: 4, .. }
            ));
            let envelope = [4u8; 8];
            let entry = NewEntry {
                chat,
                sender: carol1,
                client_message_id: message_id(4),
                sender_seq: 4,
                sender_region: OLD,
                envelope_bytes: &envelope,
            };
            chat_log::append(&tx, &entry, 2_000).await
        })
        .await
        .expect("the new home's copy");
    assert!(matches!(next, AppendOutcome::Appended { chat_seq: 5, .. }));
}
