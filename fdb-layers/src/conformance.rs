//! The conformance suite: the layers composed the way a region composes them, with the
//! invariants checked at the end. It runs against a clean database and against one with
//! seeded faults (conflicts, unknown commit results, slow commits, failing disks); with a
//! FoundationDB backend it will run there too. Every mutating call that is not idempotent by
//! nature carries an idempotency key issued once per logical request, so the results are exact
//! even when commits are retried after an unknown result or a failed disk (`Unavailable`, run
//! again by the caller as a client retries). The media index runs its share of the suite from
//! its own module (`media::tests`), with and without faults.

use std::collections::BTreeSet;

use relay_proto::wire::ReceiptState;
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, RegionId};

use crate::chat_log::{self, AppendOutcome, NewEntry};
use crate::codec::IdempotencyKey;
use crate::device_queue::{self, QueueAppend, QueueItem, SweepScope};
use crate::directory::{GroupChange, GroupId, GroupMember, NewGroup};
use crate::engine::{Database, FaultConfig};
use crate::error::StoreError;
use crate::test_support::{KeyIssuer, fault_seed, temporary_database, transact_through_outages};
use crate::{directory, keys, outbox, receipts};

const HOME: RegionId = RegionId(1);
const REMOTE: RegionId = RegionId(2);
const MESSAGES_PER_SENDER: u64 = 12;
const SENT_AT_MS: u64 = 1_000;
const DAY_MS: u64 = 24 * 60 * 60 * 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_without_faults() {
    let (_folder, database) = temporary_database(None);
    conformance(database, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_faults() {
    let seed = fault_seed();
    eprintln!("conformance with faults: seed={seed} (reproduce with FDB_LAYERS_SEED={seed})");
    let (_folder, database) = temporary_database(Some(faults_with_disk_failures(seed)));
    let suite = tokio::spawn(conformance(database.clone(), false));
    if let Err(failure) = suite.await {
        panic!("conformance failed with faults, seed={seed}: {failure}");
    }
    let stats = database.stats();
    eprintln!("seed={seed}: {stats:?}");
    assert!(
        stats.retries > 0 && stats.failed_group_commits > 0,
        "seed={seed}: faults must have caused retries and failed group commits: {stats:?}"
    );
}

/// [`FaultConfig::frequent`] with disk failures frequent enough that the suite's 80 or so
/// group commits meet some (none in about one run in 450,000).
pub(crate) fn faults_with_disk_failures(seed: u64) -> FaultConfig {
    FaultConfig {
        io_error_probability: 0.15,
        ..FaultConfig::frequent(seed)
    }
}

/// Runs every scenario against `database` (any backend). `commit_results_known`: no commit is
/// ever answered `CommitUnknownResult`, so a first send is answered as a first send (with
/// unknown results it may be answered as the duplicate of its own first attempt); every other
/// check is exact either way.
pub(crate) async fn conformance(database: Database, commit_results_known: bool) {
    let keys = KeyIssuer::default();
    let alice = register(&database, "alice", b"alice-phone", keys.issue()).await;
    let alice_laptop = add_device(&database, alice.account, b"alice-laptop", keys.issue()).await;
    let bob = register(&database, "bob", b"bob-phone", keys.issue()).await;
    let bob_laptop = add_device(&database, bob.account, b"bob-laptop", keys.issue()).await;
    let chat = ChatId::direct(alice.account, bob.account);

    claims_are_exactly_once(&database, bob, &keys).await;
    if commit_results_known {
        // Only where no conflict is injected: these count the conflicts the layers cause.
        appends_and_acks_of_one_queue_never_conflict(&database).await;
        pushes_to_one_destination_never_conflict(&database).await;
    }
    groups_are_versioned(&database, [alice.account, bob.account], &keys).await;

    // Both senders send concurrently; every message lands once, in one gapless order, and in
    // the queue of every device but the sender.
    let senders = [alice, bob].map(|sender| {
        let database = database.clone();
        tokio::spawn(async move {
            for sender_seq in 1..=MESSAGES_PER_SENDER {
                let outcome = send(&database, chat, sender, sender_seq).await;
                if commit_results_known {
                    assert!(
                        matches!(outcome, AppendOutcome::Appended { .. }),
                        "{outcome:?}"
                    );
                } else {
                    assert!(!matches!(outcome, AppendOutcome::Gap { .. }), "{outcome:?}");
                }
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

    let entries = transact_through_outages(&database, |tx| async move {
        chat_log::read_range(&tx, chat, 0, 100).await
    })
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
        let queued = transact_through_outages(&database, |tx| async move {
            device_queue::read_after(&tx, device, 0, 100).await
        })
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
                QueueItem::MessageRefs { .. } | QueueItem::Receipt(_) | QueueItem::Receipts(_) => 0,
            })
            .collect();
        assert_eq!(
            chat_seqs, expected,
            "I1/I4: each message queued once, in chat order"
        );
    }

    acks_deliver_receipts_once(&database, chat, bob_laptop, &entries).await;
    keyed_appends_are_exact(&database, bob_laptop, &keys).await;
    undelivered_entries_expire_once(&database, chat, [alice, alice_laptop, bob], &entries).await;
    outbox_entries_apply_once(&database, total, &keys).await;
}

/// Creates an account with its first device in one transaction; the idempotency key makes a
/// retry after an unknown commit result return the same account and device.
async fn register(
    database: &Database,
    name: &'static str,
    identity: &'static [u8],
    key: IdempotencyKey,
) -> DeviceAddress {
    transact_through_outages(database, |tx| async move {
        let account = directory::create_account(&tx, name, HOME, &key)
            .await?
            .unwrap_or_else(|taken| panic!("name {name} taken by {}", taken.owner));
        let device = directory::add_first_device(&tx, account.id, identity, b"sig", &key)
            .await?
            .unwrap_or_else(|_| panic!("account {name} already had a device"));
        Ok(DeviceAddress {
            account: account.id,
            device,
        })
    })
    .await
    .expect("register transaction")
}

/// Adds a device; the idempotency key makes the retries add it once.
async fn add_device(
    database: &Database,
    account: AccountId,
    identity: &'static [u8],
    key: IdempotencyKey,
) -> DeviceAddress {
    let device = transact_through_outages(database, |tx| async move {
        directory::add_device(&tx, account, identity, b"sig", &key).await
    })
    .await
    .expect("add device transaction");
    let listed = transact_through_outages(database, |tx| async move {
        directory::devices(&tx, account).await
    })
    .await
    .expect("list devices");
    let with_identity = listed
        .iter()
        .filter(|record| record.identity_key == identity)
        .count();
    assert_eq!(with_identity, 1, "a retried add adds the device once");
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
    transact_through_outages(database, |tx| {
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
            let outcome = chat_log::append(&tx, &entry, SENT_AT_MS + sender_seq).await?;
            if let AppendOutcome::Appended { chat_seq, .. } = outcome {
                let item = QueueItem::MessageRef {
                    chat,
                    chat_seq,
                    origin: None,
                    shown_seq: None,
                };
                for account in [AccountId(1), AccountId(2)] {
                    for device in directory::devices(&tx, account).await? {
                        if device.device != sender {
                            let queued =
                                device_queue::append(&tx, device.device, &item, SENT_AT_MS).await?;
                            assert!(matches!(queued, QueueAppend::Appended { .. }));
                        }
                    }
                }
                outbox::Pushes::new().push(&tx, REMOTE, &chat_seq.to_be_bytes())?;
            }
            Ok(outcome)
        }
    })
    .await
    .expect("send transaction")
}

/// Entries appended to one device queue (each in its own transaction, as sends are) while the
/// device fetches and acknowledges them concurrently (as a region's fetch-and-ack does: a
/// snapshot read after its cursor, the acks in the same transaction): no transaction of either
/// side is ever refused by the other.
async fn appends_and_acks_of_one_queue_never_conflict(database: &Database) {
    const ENTRIES: u64 = 200;
    const CHAT: ChatId = ChatId([0x51; 16]);
    let device = DeviceAddress {
        account: AccountId(7_000),
        device: relay_proto::DeviceId(1),
    };
    let before = database.stats();
    let appender = {
        let database = database.clone();
        tokio::spawn(async move {
            for chat_seq in 1..=ENTRIES {
                let item = QueueItem::MessageRef {
                    chat: CHAT,
                    chat_seq,
                    origin: None,
                    shown_seq: None,
                };
                database
                    .transact(|tx| {
                        let item = item.clone();
                        async move { device_queue::append(&tx, device, &item, SENT_AT_MS).await }
                    })
                    .await
                    .expect("append");
                tokio::task::yield_now().await;
            }
        })
    };
    let mut acked = Vec::new();
    let mut cursor = 0;
    let mut rounds = 0;
    while (acked.len() as u64) < ENTRIES {
        rounds += 1;
        assert!(rounds < 100_000, "the acker stopped making progress");
        let page = database
            .transact(|tx| async move {
                let page = device_queue::read_after_snapshot(&tx, device, cursor, 16).await?;
                let seqs: Vec<u64> = page.iter().map(|(queue_seq, _)| *queue_seq).collect();
                device_queue::ack(&tx, device, &seqs).await?;
                device_queue::latest_snapshot(&tx, device).await?;
                Ok(seqs)
            })
            .await
            .expect("fetch and ack");
        if let Some(&last) = page.last() {
            cursor = last;
        } else {
            tokio::task::yield_now().await;
        }
        acked.extend(page);
    }
    appender.await.expect("appender");
    assert_eq!(
        acked,
        (1..=ENTRIES).collect::<Vec<_>>(),
        "gapless, in order"
    );
    let after = database.stats();
    assert_eq!(
        (
            after.conflicts - before.conflicts,
            after.retries - before.retries
        ),
        (0, 0),
        "appends and acks of one queue refused each other"
    );
}

/// Many concurrent transactions each push a receipt to one destination (as acknowledgements of
/// messages from senders homed there do): none refuses another, and every push is there, once.
async fn pushes_to_one_destination_never_conflict(database: &Database) {
    const PUSHES: usize = 200;
    const DESTINATION: RegionId = RegionId(9);
    let before = database.stats();
    let tasks: Vec<_> = (0..PUSHES)
        .map(|index| {
            let database = database.clone();
            tokio::spawn(async move {
                let payload = (index as u64).to_be_bytes();
                database
                    .transact(
                        |tx| async move { outbox::Pushes::new().push(&tx, DESTINATION, &payload) },
                    )
                    .await
                    .expect("push");
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("push task");
    }
    let after = database.stats();
    assert_eq!(
        (
            after.conflicts - before.conflicts,
            after.retries - before.retries
        ),
        (0, 0),
        "pushes to one destination refused each other"
    );
    let mut seen = BTreeSet::new();
    loop {
        let batch = database
            .transact(|tx| async move { outbox::peek(&tx, DESTINATION, 64).await })
            .await
            .expect("peek");
        let Some(&(through, _)) = batch.last() else {
            break;
        };
        for (_, payload) in batch {
            let index: [u8; 8] = payload.as_slice().try_into().expect("an index");
            assert!(seen.insert(u64::from_be_bytes(index)), "pushed once");
        }
        database
            .transact(|tx| async move {
                outbox::remove_through(&tx, DESTINATION, through);
                Ok(())
            })
            .await
            .expect("remove");
    }
    assert_eq!(seen.len(), PUSHES);
}

/// Concurrent claims with one key each: every one-time key goes to exactly one claimer, every
/// claimer sees the key it took (even after unknown commit results), the rest get the fallback.
async fn claims_are_exactly_once(database: &Database, device: DeviceAddress, keys: &KeyIssuer) {
    let uploaded: Vec<(String, Vec<u8>)> = (0..10)
        .map(|index| (format!("otk-{index:02}"), vec![index; 32]))
        .collect();
    let upload_key = keys.issue();
    transact_through_outages(database, |tx| {
        let uploaded = uploaded.clone();
        async move {
            keys::set_fallback_key(&tx, device, "fallback", &[0xfb; 32], b"signature")?;
            keys::add_one_time_keys(&tx, device, &uploaded, &upload_key).await
        }
    })
    .await
    .expect("upload one-time keys");
    let claims: Vec<_> = (0..16)
        .map(|_| {
            let database = database.clone();
            let key = keys.issue();
            tokio::spawn(async move {
                transact_through_outages(&database, |tx| async move {
                    keys::claim_one_time_key(&tx, device, &key).await
                })
                .await
            })
        })
        .collect();
    let mut claimed = Vec::new();
    let mut fallbacks = 0;
    for claim in claims {
        match claim.await.expect("claim task").expect("claim").key {
            Some(key) if key.fallback => fallbacks += 1,
            Some(key) => claimed.push(key.key_id),
            None => panic!("a claim got nothing although a fallback key is set"),
        }
    }
    let distinct: BTreeSet<&String> = claimed.iter().collect();
    assert_eq!(
        distinct.len(),
        claimed.len(),
        "a one-time key was claimed twice: {claimed:?}"
    );
    assert_eq!((claimed.len(), fallbacks), (10, 6), "16 claims take all 10");
    let remaining = transact_through_outages(database, |tx| async move {
        keys::one_time_key_count(&tx, device).await
    })
    .await
    .expect("count");
    assert_eq!(remaining, 0);
}

/// Members join a group concurrently, one leaves, the group is renamed, gains an admin and
/// loses both (a member is promoted); every change bumps the group's version and the
/// directory's change counter exactly once, even when commits are retried.
async fn groups_are_versioned(database: &Database, accounts: [AccountId; 2], keys: &KeyIssuer) {
    let [owner, other] = accounts;
    let changes_before =
        transact_through_outages(
            database,
            |tx| async move { directory::change_count(&tx).await },
        )
        .await
        .expect("change count");
    let create_key = keys.issue();
    let group = transact_through_outages(database, |tx| async move {
        let new = NewGroup {
            owner,
            name: "conformance",
            home_region: HOME,
            members: &[],
            request_id: [1; directory::GROUP_REQUEST_ID_BYTES],
        };
        directory::create_group(&tx, &new, &create_key).await
    })
    .await
    .expect("create group")
    .expect("one member");
    // Members 100..108 (ids the directory need not know) join at once, then one leaves.
    let joins: Vec<_> = (100..108u64)
        .map(|account| {
            let database = database.clone();
            let key = keys.issue();
            tokio::spawn(async move {
                transact_through_outages(&database, |tx| async move {
                    directory::add_member(&tx, group, AccountId(account), &key).await
                })
                .await
            })
        })
        .collect();
    let mut versions = BTreeSet::new();
    for join in joins {
        match join.await.expect("join task").expect("join") {
            GroupChange::Changed { version } => assert!(versions.insert(version)),
            other => panic!("a first join must change the group: {other:?}"),
        }
    }
    assert_eq!(versions, (2..=9).collect(), "one version per change");
    let (add, remove) = (keys.issue(), keys.issue());
    let (added, removed) = transact_through_outages(database, |tx| async move {
        Ok((
            directory::add_member(&tx, group, other, &add).await?,
            directory::remove_member(&tx, group, AccountId(100), &remove).await?,
        ))
    })
    .await
    .expect("membership changes");
    assert_eq!(
        (added, removed),
        (
            GroupChange::Changed { version: 10 },
            GroupChange::Changed { version: 11 }
        )
    );
    // A rename, a second admin, then both admins leave: the lowest remaining member (101)
    // becomes the admin. One version per change, exact through retried commits.
    let [rename, promote, owner_leaves, other_leaves] =
        [keys.issue(), keys.issue(), keys.issue(), keys.issue()];
    let roles = transact_through_outages(database, |tx| async move {
        Ok([
            directory::rename_group(&tx, group, "renamed", &rename).await?,
            directory::set_admin(&tx, group, other, true, &promote).await?,
            directory::remove_member(&tx, group, owner, &owner_leaves).await?,
            directory::remove_member(&tx, group, other, &other_leaves).await?,
        ])
    })
    .await
    .expect("role changes");
    assert_eq!(
        roles,
        [12, 13, 14, 15].map(|version| GroupChange::Changed { version })
    );
    let (members, version, groups_of_other, changes_after) =
        transact_through_outages(database, |tx| async move {
            Ok((
                directory::group_members(&tx, group).await?,
                directory::group_version(&tx, group).await?,
                directory::groups_of(&tx, other, None, 10).await?,
                directory::change_count(&tx).await?,
            ))
        })
        .await
        .expect("group reads");
    let expected: Vec<GroupMember> = (101..108)
        .map(|account| GroupMember {
            account: AccountId(account),
            admin: account == 101,
        })
        .collect();
    assert_eq!(members, expected);
    assert_eq!(version, 15);
    assert_eq!(groups_of_other, []);
    assert_eq!(
        changes_after - changes_before,
        15,
        "one change count per change"
    );
    assert_eq!(group, GroupId(1));
}

/// The device acks everything; each removed entry becomes a delivered receipt in the same
/// transaction, so receipts are exact even when an ack is retried.
async fn acks_deliver_receipts_once(
    database: &Database,
    chat: ChatId,
    device: DeviceAddress,
    entries: &[chat_log::LogEntry],
) {
    let queued = transact_through_outages(database, |tx| async move {
        device_queue::read_after(&tx, device, 0, 100).await
    })
    .await
    .expect("read queue");
    let queue_seqs: Vec<u64> = queued.iter().map(|(seq, _)| *seq).collect();
    for _ in 0..2 {
        let queue_seqs = queue_seqs.clone();
        transact_through_outages(database, |tx| {
            let queue_seqs = queue_seqs.clone();
            async move {
                for (_, item) in device_queue::ack(&tx, device, &queue_seqs).await? {
                    advance_receipt(&tx, chat, device, &item, ReceiptState::Delivered).await?;
                }
                Ok(())
            }
        })
        .await
        .expect("ack");
    }
    let (depth, remaining) = transact_through_outages(database, |tx| async move {
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
        let state = transact_through_outages(database, |tx| async move {
            receipts::state(&tx, chat, message, device).await
        })
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

/// Moves the receipt of the message an item refers to, if it is a message.
async fn advance_receipt(
    tx: &crate::Transaction,
    chat: ChatId,
    device: DeviceAddress,
    item: &QueueItem,
    state: ReceiptState,
) -> Result<bool, StoreError> {
    let QueueItem::MessageRef { chat_seq, .. } = item else {
        return Ok(false);
    };
    let entry = chat_log::entry(tx, chat, *chat_seq)
        .await?
        .ok_or_else(|| StoreError::corrupt("test", "queued entry missing"))?;
    receipts::advance(tx, chat, entry.client_message_id, device, state).await
}

/// Notices appended concurrently with a key each land once each, gapless, whatever the faults.
async fn keyed_appends_are_exact(database: &Database, device: DeviceAddress, keys: &KeyIssuer) {
    let before = transact_through_outages(database, |tx| async move {
        device_queue::latest(&tx, device).await
    })
    .await
    .expect("latest");
    let appends: Vec<_> = (0..8u8)
        .map(|index| {
            let database = database.clone();
            let key = keys.issue();
            tokio::spawn(async move {
                transact_through_outages(&database, |tx| async move {
                    let item = QueueItem::Receipt(vec![index]);
                    device_queue::append_once(&tx, device, &item, SENT_AT_MS, &key).await
                })
                .await
            })
        })
        .collect();
    let mut sequences = BTreeSet::new();
    for append in appends {
        match append.await.expect("append task").expect("append") {
            QueueAppend::Appended { queue_seq } => assert!(sequences.insert(queue_seq)),
            QueueAppend::Full { depth } => panic!("queue full at {depth}"),
        }
    }
    assert_eq!(sequences, (before + 1..=before + 8).collect());
    let queued = transact_through_outages(database, |tx| async move {
        device_queue::read_after(&tx, device, before, 100).await
    })
    .await
    .expect("read queue");
    assert_eq!(queued.len(), 8, "each keyed append landed once");
    transact_through_outages(database, |tx| {
        let sequences: Vec<u64> = sequences.iter().copied().collect();
        async move { device_queue::ack(&tx, device, &sequences).await }
    })
    .await
    .expect("ack notices");
}

/// Thirty-one days later, every entry still queued expires exactly once: a sweep reports it
/// and the same transaction advances its receipt to expired; retried sweeps report nothing.
async fn undelivered_entries_expire_once(
    database: &Database,
    chat: ChatId,
    devices: [DeviceAddress; 3],
    entries: &[chat_log::LogEntry],
) {
    let now_ms = SENT_AT_MS + 31 * DAY_MS;
    loop {
        let more = transact_through_outages(database, |tx| async move {
            let report = device_queue::sweep_expired(
                &tx,
                SweepScope::All,
                now_ms,
                device_queue::QUEUE_RETENTION_MS_DEFAULT,
                7,
            )
            .await?;
            for (device, _, item) in &report.expired {
                let moved =
                    advance_receipt(&tx, chat, *device, item, ReceiptState::Expired).await?;
                assert!(moved, "an entry expires once");
            }
            // Counted in the transaction: a sweep retried after an unknown commit result
            // reports nothing, because its first attempt removed the entries.
            tx.atomic_add(b"expired_count", report.expired.len() as i64)?;
            Ok(report.more)
        })
        .await
        .expect("sweep");
        if !more {
            break;
        }
    }
    let expired = transact_through_outages(database, |tx| async move {
        crate::codec::read_count(&tx, b"expired_count", false, "test count").await
    })
    .await
    .expect("expired count");
    let expected: u64 = devices
        .iter()
        .map(|device| {
            entries
                .iter()
                .filter(|entry| entry.sender != *device)
                .count()
        })
        .sum::<usize>() as u64;
    assert_eq!(expired, expected, "every undelivered entry expired once");
    for device in devices {
        let (depth, left) = transact_through_outages(database, |tx| async move {
            Ok((
                device_queue::depth(&tx, device).await?,
                device_queue::read_after(&tx, device, 0, 100).await?,
            ))
        })
        .await
        .expect("queue after the sweep");
        assert_eq!((depth, left.len()), (0, 0), "{device}");
        for entry in entries.iter().filter(|entry| entry.sender != device) {
            let message = entry.client_message_id;
            let state = transact_through_outages(database, |tx| async move {
                receipts::state(&tx, chat, message, device).await
            })
            .await
            .expect("receipt");
            assert_eq!(state, Some(ReceiptState::Expired), "{device}");
        }
    }
}

/// Delivers the outbox to a "remote" keyspace in batches; the receiver's applied mark makes a
/// redelivered entry a no-op, so the applied count ends exact. A keyed push lands once.
async fn outbox_entries_apply_once(database: &Database, expected: u64, keys: &KeyIssuer) {
    let key = keys.issue();
    transact_through_outages(database, |tx| async move {
        outbox::push_once(&tx, REMOTE, b"notice", &key).await
    })
    .await
    .expect("keyed push");
    loop {
        let batch =
            transact_through_outages(
                database,
                |tx| async move { outbox::peek(&tx, REMOTE, 5).await },
            )
            .await
            .expect("peek");
        let Some(&(through, _)) = batch.last() else {
            break;
        };
        // Deliver the batch twice, as an at-least-once link may.
        for _ in 0..2 {
            let batch = batch.clone();
            transact_through_outages(database, |tx| {
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
        transact_through_outages(database, |tx| async move {
            outbox::remove_through(&tx, REMOTE, through);
            Ok(())
        })
        .await
        .expect("remove delivered");
    }
    let (applied, destinations) = transact_through_outages(database, |tx| async move {
        Ok((
            tx.get(b"remote_applied").await?,
            outbox::destinations(&tx).await?,
        ))
    })
    .await
    .expect("read applied count");
    assert_eq!(
        applied,
        Some(((expected + 1) as i64).to_le_bytes().to_vec())
    );
    assert!(destinations.is_empty());
}
