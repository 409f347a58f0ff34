//! The conformance suite: the layers composed the way a region composes them, with the
//! invariants checked at the end. It runs against a clean database and against one with
//! seeded faults (conflicts, unknown commit results, slow commits); with a FoundationDB backend
//! it will run there too.

use std::collections::BTreeSet;

use relay_proto::wire::ReceiptState;
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, RegionId};

use crate::chat_log::{self, AppendOutcome, NewEntry};
use crate::device_queue::{self, QueueAppend, QueueItem};
use crate::engine::{Database, FaultConfig};
use crate::error::StoreError;
use crate::test_support::{fault_seed, temporary_database};
use crate::{directory, keys, outbox, receipts};

const HOME: RegionId = RegionId(1);
const REMOTE: RegionId = RegionId(2);
const MESSAGES_PER_SENDER: u64 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_without_faults() {
    let (_folder, database) = temporary_database(None);
    conformance(database, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_faults() {
    let seed = fault_seed();
    eprintln!("conformance with faults: seed={seed} (reproduce with FDB_LAYERS_SEED={seed})");
    let (_folder, database) = temporary_database(Some(FaultConfig::frequent(seed)));
    let suite = tokio::spawn(conformance(database.clone(), false));
    if let Err(failure) = suite.await {
        panic!("conformance failed with faults, seed={seed}: {failure}");
    }
    let stats = database.stats();
    assert!(
        stats.retries > 0,
        "seed={seed}: faults must have caused retries: {stats:?}"
    );
}

/// Runs every scenario. `exact_claims`: no commit result is ever unknown, so every claimed key
/// is seen by its claimer.
async fn conformance(database: Database, exact_claims: bool) {
    let alice = register(&database, "alice", b"alice-phone").await;
    let alice_laptop = add_device(&database, alice.account, b"alice-laptop").await;
    let bob = register(&database, "bob", b"bob-phone").await;
    let bob_laptop = add_device(&database, bob.account, b"bob-laptop").await;
    let chat = ChatId::direct(alice.account, bob.account);

    claims_are_exactly_once(&database, bob, exact_claims).await;

    // Both senders send concurrently; every message lands once, in one gapless order, and in
    // the queue of every device but the sender.
    let senders = [alice, bob].map(|sender| {
        let database = database.clone();
        tokio::spawn(async move {
            for sender_seq in 1..=MESSAGES_PER_SENDER {
                send(&database, chat, sender, sender_seq).await;
            }
        })
    });
    for sender in senders {
        sender.await.expect("sender task");
    }
    // A retried send is answered with its original result and enqueues nothing.
    let retry = send(&database, chat, alice, 1).await;
    assert!(
        matches!(retry, AppendOutcome::Duplicate { .. }),
        "{retry:?}"
    );

    let entries = database
        .transact(|tx| async move { chat_log::read_range(&tx, chat, 0, 100).await })
        .await
        .expect("read the chat log");
    let total = 2 * MESSAGES_PER_SENDER;
    let sequences: Vec<u64> = entries.iter().map(|entry| entry.chat_seq).collect();
    assert_eq!(
        sequences,
        (1..=total).collect::<Vec<_>>(),
        "I2: gapless chat sequence"
    );
    for sender in [alice, bob] {
        let sender_seqs: Vec<u64> = entries
            .iter()
            .filter(|entry| entry.sender == sender)
            .map(|entry| entry.sender_seq)
            .collect();
        assert_eq!(
            sender_seqs,
            (1..=MESSAGES_PER_SENDER).collect::<Vec<_>>(),
            "I3: sender FIFO"
        );
    }
    for device in [alice, alice_laptop, bob, bob_laptop] {
        let expected: Vec<u64> = entries
            .iter()
            .filter(|entry| entry.sender != device)
            .map(|e| e.chat_seq)
            .collect();
        let queued = database
            .transact(|tx| async move { device_queue::read_after(&tx, device, 0, 100).await })
            .await
            .expect("read a device queue");
        let queue_seqs: Vec<u64> = queued.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(
            queue_seqs,
            (1..=expected.len() as u64).collect::<Vec<_>>(),
            "gapless queue"
        );
        let chat_seqs: Vec<u64> = queued
            .iter()
            .map(|(_, item)| match item {
                QueueItem::MessageRef { chat_seq, .. } => *chat_seq,
                QueueItem::Receipt(_) => 0,
            })
            .collect();
        assert_eq!(
            chat_seqs, expected,
            "I1/I4: each message queued once, in chat order"
        );
    }

    acks_deliver_receipts_once(&database, chat, bob_laptop, &entries).await;
    outbox_entries_apply_once(&database, total).await;
}

/// Creates an account with its first device, recognising its own earlier attempt (after an
/// unknown commit result) by the device's identity key.
async fn register(
    database: &Database,
    name: &'static str,
    identity: &'static [u8],
) -> DeviceAddress {
    let registered = database
        .transact(|tx| async move {
            match directory::create_account(&tx, name, HOME).await? {
                Ok(account) => {
                    let device = directory::add_device(&tx, account.id, identity, b"sig").await?;
                    Ok(Some(DeviceAddress {
                        account: account.id,
                        device,
                    }))
                }
                Err(taken) => {
                    let devices = directory::devices(&tx, taken.owner).await?;
                    Ok(devices
                        .into_iter()
                        .find(|device| device.identity_key == identity)
                        .map(|device| device.device))
                }
            }
        })
        .await
        .expect("register transaction");
    registered.unwrap_or_else(|| panic!("name {name} taken by someone else"))
}

/// Adds a device unless the account already has one with this identity key (idempotent).
async fn add_device(
    database: &Database,
    account: AccountId,
    identity: &'static [u8],
) -> DeviceAddress {
    let device = database
        .transact(|tx| async move {
            let existing = directory::devices(&tx, account).await?;
            if let Some(device) = existing
                .iter()
                .find(|device| device.identity_key == identity)
            {
                return Ok(device.device.device);
            }
            directory::add_device(&tx, account, identity, b"sig").await
        })
        .await
        .expect("add device transaction");
    DeviceAddress { account, device }
}

/// Sends one message from `sender` the way a region does: append to the log, and only for a
/// new entry enqueue it for every other device of both accounts, in one transaction.
async fn send(
    database: &Database,
    chat: ChatId,
    sender: DeviceAddress,
    sender_seq: u64,
) -> AppendOutcome {
    let mut client_message_id = [0u8; 16];
    client_message_id[..8].copy_from_slice(&sender.account.0.to_be_bytes());
    client_message_id[8..].copy_from_slice(&sender_seq.to_be_bytes());
    let envelope = format!("envelope {sender} {sender_seq}").into_bytes();
    database
        .transact(|tx| {
            let envelope = envelope.clone();
            async move {
                let entry = NewEntry {
                    chat,
                    sender,
                    client_message_id: ClientMessageId(client_message_id),
                    sender_seq,
                    sender_region: HOME,
                    envelope_bytes: &envelope,
                };
                let outcome = chat_log::append(&tx, &entry, 1_000 + sender_seq).await?;
                if let AppendOutcome::Appended { chat_seq, .. } = outcome {
                    let item = QueueItem::MessageRef { chat, chat_seq };
                    for account in [AccountId(1), AccountId(2)] {
                        for device in directory::devices(&tx, account).await? {
                            if device.device != sender {
                                let queued =
                                    device_queue::append(&tx, device.device, &item).await?;
                                assert!(matches!(queued, QueueAppend::Appended { .. }));
                            }
                        }
                    }
                    outbox::push(&tx, REMOTE, &chat_seq.to_be_bytes()).await?;
                }
                Ok(outcome)
            }
        })
        .await
        .expect("send transaction")
}

async fn claims_are_exactly_once(database: &Database, device: DeviceAddress, exact: bool) {
    let uploaded: Vec<(String, Vec<u8>)> = (0..10)
        .map(|index| (format!("otk-{index:02}"), vec![index; 32]))
        .collect();
    database
        .transact(|tx| {
            let uploaded = uploaded.clone();
            async move { keys::add_one_time_keys(&tx, device, &uploaded).await }
        })
        .await
        .expect("upload one-time keys");
    let claims: Vec<_> = (0..16)
        .map(|_| {
            let database = database.clone();
            tokio::spawn(async move {
                database
                    .transact(|tx| async move { keys::claim_one_time_key(&tx, device).await })
                    .await
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for claim in claims {
        if let Some((key_id, _)) = claim.await.expect("claim task").expect("claim") {
            claimed.push(key_id);
        }
    }
    let distinct: BTreeSet<&String> = claimed.iter().collect();
    assert_eq!(
        distinct.len(),
        claimed.len(),
        "a one-time key was claimed twice: {claimed:?}"
    );
    let remaining = database
        .transact(|tx| async move { keys::one_time_key_count(&tx, device).await })
        .await
        .expect("count");
    assert_eq!(remaining, 0, "16 claims take all 10 keys");
    if exact {
        assert_eq!(claimed.len(), 10);
    }
}

/// The device acks everything; each removed entry becomes a delivered receipt in the same
/// transaction, so receipts are exact even when an ack is retried.
async fn acks_deliver_receipts_once(
    database: &Database,
    chat: ChatId,
    device: DeviceAddress,
    entries: &[chat_log::LogEntry],
) {
    let queued = database
        .transact(|tx| async move { device_queue::read_after(&tx, device, 0, 100).await })
        .await
        .expect("read queue");
    let queue_seqs: Vec<u64> = queued.iter().map(|(seq, _)| *seq).collect();
    for _ in 0..2 {
        let queue_seqs = queue_seqs.clone();
        database
            .transact(|tx| {
                let queue_seqs = queue_seqs.clone();
                async move {
                    for (_, item) in device_queue::ack(&tx, device, &queue_seqs).await? {
                        if let QueueItem::MessageRef { chat_seq, .. } = item {
                            let entry =
                                chat_log::entry(&tx, chat, chat_seq).await?.ok_or_else(|| {
                                    StoreError::corrupt("test", "queued entry missing")
                                })?;
                            receipts::advance(
                                &tx,
                                chat,
                                entry.client_message_id,
                                device,
                                ReceiptState::Delivered,
                            )
                            .await?;
                        }
                    }
                    Ok(())
                }
            })
            .await
            .expect("ack");
    }
    let (depth, remaining) = database
        .transact(|tx| async move {
            Ok((
                device_queue::depth(&tx, device).await?,
                device_queue::read_after(&tx, device, 0, 100).await?,
            ))
        })
        .await
        .expect("read queue after acks");
    assert_eq!((depth, remaining.len()), (0, 0));
    for entry in entries.iter().filter(|entry| entry.sender != device) {
        let message = entry.client_message_id;
        let state = database
            .transact(|tx| async move { receipts::state(&tx, chat, message, device).await })
            .await
            .expect("receipt");
        assert_eq!(
            state,
            Some(ReceiptState::Delivered),
            "I6: entry {}",
            entry.chat_seq
        );
    }
}

/// Delivers the outbox to a "remote" keyspace in batches; the receiver's applied mark makes a
/// redelivered entry a no-op, so the applied count ends exact.
async fn outbox_entries_apply_once(database: &Database, expected: u64) {
    loop {
        let batch = database
            .transact(|tx| async move { outbox::peek(&tx, REMOTE, 5).await })
            .await
            .expect("peek");
        let Some(&(through, _)) = batch.last() else {
            break;
        };
        // Deliver the batch twice, as an at-least-once link may.
        for _ in 0..2 {
            let batch = batch.clone();
            database
                .transact(|tx| {
                    let batch = batch.clone();
                    async move {
                        for (seq, _) in &batch {
                            if outbox::mark_applied(&tx, HOME, *seq).await? {
                                tx.atomic_add(b"remote_applied", 1)?;
                            }
                        }
                        Ok(())
                    }
                })
                .await
                .expect("apply");
        }
        database
            .transact(|tx| async move {
                outbox::remove_through(&tx, REMOTE, through);
                Ok(())
            })
            .await
            .expect("remove delivered");
    }
    let (applied, destinations) = database
        .transact(|tx| async move {
            Ok((
                tx.get(b"remote_applied").await?,
                outbox::destinations(&tx).await?,
            ))
        })
        .await
        .expect("read applied count");
    assert_eq!(applied, Some((expected as i64).to_le_bytes().to_vec()));
    assert!(destinations.is_empty());
}
