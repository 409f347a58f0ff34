//! What a delivered message writes in the region's store: keys and bytes by kind of record, and
//! what redb writes to disk for them.
//!
//! Pairs of devices run the message path of `relayd bench messages` through the region's core
//! on an embedded store, concurrently so the group commit batches them as in a running region:
//! the sender's envelope ([`core::commit_envelope`]), the receiver's fetch and its ack of the
//! entry (which queues the delivered receipt for the sender), the sender's ack of the receipt.
//! Every write transaction's keys are tallied by kind ([`fdb_layers::tuple::key_names`]); the
//! bytes redb wrote come from the process's `write_bytes` in `/proc/self/io` (nextest runs this
//! test alone in its process), divided by the messages and by the group commits, and, for
//! comparison, what a group commit of a single key writes.
//!
//! The test asserts the keys a delivered message writes, kind by kind: the layout's contract,
//! which a change of layout updates here on purpose. It prints the measured bytes (they depend
//! on how commits happened to batch, so they are reported, not asserted).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use fdb_layers::keys::IdempotencyKey;
use fdb_layers::tuple::key_names;
use fdb_layers::{Database, EmbeddedOptions, StoreError, Transaction};
use home_region::core::{self, CommitDecision, Outcome};
use relay_proto::wire::{self, FetchAndAck, FetchQueue, queue_entry, send_outcome};
use relay_proto::{DeviceAddress, RegionId};

mod support;

const HERE: RegionId = RegionId(1);
/// Sender → receiver pairs running at once.
const PAIRS: u32 = 40;
/// Messages each sender sends, one at a time.
const MESSAGES_PER_PAIR: u64 = 25;
/// The payload of each envelope, as the bench's.
const PAYLOAD_BYTES: usize = 100;
/// Commits of one key each, to measure what a group commit costs by itself.
const ONE_KEY_COMMITS: u64 = 50;

/// Keys and bytes written, by kind of record.
#[derive(Debug, Default)]
struct Tally {
    by_kind: BTreeMap<String, KindTally>,
}

#[derive(Debug, Default, Clone, Copy)]
struct KindTally {
    keys: u64,
    bytes: u64,
}

impl Tally {
    fn add(&mut self, transaction: &Transaction) {
        let written = transaction
            .written_keys()
            .expect("the embedded backend lists its writes");
        for write in written {
            let kind = key_names(&write.key);
            let kind = if write.clear {
                format!("{kind} (clear)")
            } else {
                kind
            };
            let entry = self.by_kind.entry(kind).or_default();
            entry.keys += 1;
            entry.bytes += (write.key.len() + write.value_bytes) as u64;
        }
    }
}

/// Runs `body` as one retried transaction and tallies the writes of the attempt that committed.
async fn run<T>(
    db: &Database,
    tally: &Arc<Mutex<Tally>>,
    body: impl AsyncFn(&Transaction) -> Outcome<T>,
) -> T {
    let body = &body;
    let (value, attempt) = db
        .transact(|tx| async move {
            let outcome = body(&tx).await?;
            let mut attempt = Tally::default();
            attempt.add(&tx);
            Ok((outcome, attempt))
        })
        .await
        .expect("the store works");
    let (value, _effects) = value.expect("the region accepts the request");
    let mut total = tally.lock().expect("tally");
    for (kind, counts) in attempt.by_kind {
        let entry = total.by_kind.entry(kind).or_default();
        entry.keys += counts.keys;
        entry.bytes += counts.bytes;
    }
    value
}

fn idempotency_key() -> IdempotencyKey {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let counter = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut nonce = [0u8; 16];
    nonce[8..].copy_from_slice(&counter.to_be_bytes());
    IdempotencyKey::new(1_000, nonce)
}

/// Creates an account homed here with one device.
async fn account(db: &Database, name: &str) -> DeviceAddress {
    support::account_with_device(db, HERE, name, idempotency_key(), idempotency_key()).await
}

/// A client message id that looks random, as a client's are.
fn client_message_id(pair: u32, sender_seq: u64) -> [u8; 16] {
    let mut mixed = (u64::from(pair) << 32 | sender_seq).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut id = [0u8; 16];
    for chunk in id.chunks_mut(8) {
        mixed ^= mixed >> 29;
        mixed = mixed.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        chunk.copy_from_slice(&mixed.to_le_bytes());
    }
    id
}

/// One pair's closed loop: each message sent, fetched and acked, its receipt fetched and acked.
async fn pair_loop(
    db: Database,
    tally: Arc<Mutex<Tally>>,
    pair: u32,
    sender: DeviceAddress,
    receiver: DeviceAddress,
) {
    let no_quarantine = BTreeSet::new();
    let (mut receiver_cursor, mut sender_cursor) = (0, 0);
    for sender_seq in 1..=MESSAGES_PER_PAIR {
        let envelope = support::direct_envelope(
            sender,
            receiver,
            sender_seq,
            client_message_id(pair, sender_seq).to_vec(),
            PAYLOAD_BYTES,
        );
        let now_ms = 1_000 + sender_seq;
        let decision = run(&db, &tally, async |tx| {
            core::commit_envelope(
                tx,
                HERE,
                &envelope,
                HERE,
                core::GroupSource::Directory,
                &no_quarantine,
                now_ms,
            )
            .await
        })
        .await;
        let CommitDecision::Answer(answer) = decision else {
            panic!("a queue was unreadable: {decision:?}");
        };
        assert!(
            matches!(answer.outcome, Some(send_outcome::Outcome::Sent(_))),
            "sent: {answer:?}"
        );
        // The receiver fetches the entry, then acks it in a request of its own.
        receiver_cursor = fetch_one(&db, &tally, receiver, receiver_cursor, now_ms, |entry| {
            matches!(entry, queue_entry::Item::Message(_))
        })
        .await;
        ack(&db, &tally, receiver, receiver_cursor, now_ms).await;
        // The delivered receipt reaches the sender, which acks it.
        sender_cursor = fetch_one(&db, &tally, sender, sender_cursor, now_ms, |entry| {
            matches!(entry, queue_entry::Item::Receipt(_))
        })
        .await;
        ack(&db, &tally, sender, sender_cursor, now_ms).await;
    }
}

/// Fetches the one entry after `cursor` (a read: it writes nothing) and returns its sequence.
async fn fetch_one(
    db: &Database,
    tally: &Arc<Mutex<Tally>>,
    device: DeviceAddress,
    cursor: u64,
    now_ms: u64,
    expected: impl Fn(&queue_entry::Item) -> bool,
) -> u64 {
    let request = FetchAndAck {
        ack: None,
        fetch: Some(FetchQueue {
            after_queue_seq: cursor,
            limit: 10,
        }),
    };
    let batch = run(db, tally, async |tx| {
        core::fetch_and_ack(tx, HERE, device, &request, &BTreeSet::new(), now_ms).await
    })
    .await;
    assert_eq!(batch.entries.len(), 1, "one entry waits for {device}");
    let entry = &batch.entries[0];
    assert!(
        entry.item.as_ref().is_some_and(expected),
        "the entry waiting for {device}: {entry:?}"
    );
    entry.queue_seq
}

async fn ack(
    db: &Database,
    tally: &Arc<Mutex<Tally>>,
    device: DeviceAddress,
    queue_seq: u64,
    now_ms: u64,
) {
    let request = FetchAndAck {
        ack: Some(wire::AckQueue {
            queue_seqs: vec![queue_seq],
        }),
        fetch: None,
    };
    run(db, tally, async |tx| {
        core::fetch_and_ack(tx, HERE, device, &request, &BTreeSet::new(), now_ms).await
    })
    .await;
}

/// Bytes this process caused to be written to storage so far (Linux).
fn process_write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

#[tokio::test]
async fn what_a_delivered_message_writes() -> Result<(), StoreError> {
    // Under the target folder, on a real disk: a tmpfs would count no bytes written.
    let folder = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary folder");
    let db = Database::open(
        &folder.path().join("region.redb"),
        EmbeddedOptions::default(),
    )?;
    let mut pairs = Vec::new();
    for pair in 0..PAIRS {
        let sender = account(&db, &format!("sender{pair}")).await;
        let receiver = account(&db, &format!("receiver{pair}")).await;
        pairs.push((pair, sender, receiver));
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stats_before = db.stats();
    let written_before = process_write_bytes();
    // One thread runs every pair's loop; the store's commit pipeline has threads of its own
    // and batches what the loops submit at once.
    let loops = tokio::task::LocalSet::new();
    for (pair, sender, receiver) in pairs {
        loops.spawn_local(pair_loop(db.clone(), tally.clone(), pair, sender, receiver));
    }
    loops.await;
    let written = process_write_bytes().zip(written_before);
    let stats = db.stats();
    let commits = stats.write_batches - stats_before.write_batches;
    let transactions = stats.committed_transactions - stats_before.committed_transactions;
    let messages = u64::from(PAIRS) * MESSAGES_PER_PAIR;

    let tally = std::mem::take(&mut *tally.lock().expect("tally"));
    let per_message = |count: u64| count as f64 / messages as f64;
    println!(
        "what a delivered message writes ({messages} messages, {PAIRS} pairs at once, \
         {PAYLOAD_BYTES} B payloads)"
    );
    println!("| kind | keys per message | bytes (keys + values) per message |");
    println!("|---|--:|--:|");
    let (mut keys, mut bytes) = (0, 0);
    for (kind, counts) in &tally.by_kind {
        println!(
            "| {kind} | {:.2} | {:.1} |",
            per_message(counts.keys),
            per_message(counts.bytes)
        );
        keys += counts.keys;
        bytes += counts.bytes;
    }
    println!(
        "| all | {:.2} | {:.1} |",
        per_message(keys),
        per_message(bytes)
    );
    println!(
        "{transactions} write transactions in {commits} group commits ({:.1} per commit)",
        transactions as f64 / commits.max(1) as f64
    );
    match written {
        Some((after, before)) => {
            let disk = after - before;
            println!(
                "redb wrote {disk} B: {:.0} B per message, {:.0} B per group commit",
                per_message(disk),
                disk as f64 / commits.max(1) as f64
            );
        }
        None => println!("bytes written: /proc/self/io is not readable here"),
    }
    // What a group commit costs whatever it holds: commits of one small key each, one at a
    // time, into the same store.
    let written_before = process_write_bytes();
    for round in 0..ONE_KEY_COMMITS {
        db.transact(|tx| async move { tx.set(b"\x02writes_census\x00", &round.to_le_bytes()) })
            .await?;
    }
    if let Some((after, before)) = process_write_bytes().zip(written_before) {
        println!(
            "a group commit of one key: {:.0} B written",
            (after - before) as f64 / ONE_KEY_COMMITS as f64
        );
    }

    // The layout's contract: the keys a delivered message writes, kind by kind.
    let keys_by_kind: BTreeMap<&str, f64> = tally
        .by_kind
        .iter()
        .map(|(kind, counts)| (kind.as_str(), per_message(counts.keys)))
        .collect();
    let expected: BTreeMap<&str, f64> = EXPECTED_KEYS_PER_MESSAGE.iter().copied().collect();
    assert_eq!(keys_by_kind, expected);
    Ok(())
}

/// The keys one delivered message writes, by kind (21): the send, 9 (entry, the chat's last
/// sequence, the sender's `sender_seq`, the dedupe record keyed by the random client message
/// id, the sender's envelope mark, the receiver's queue entry, `latest`, depth and expiry
/// index key); the receiver's ack, 8 (its entry and index key cleared, its depth and ack mark,
/// and the receipt queued for the sender: entry, `latest`, depth, index key; the receipt's
/// state is not recorded, since the entry's removal makes it once); the sender's ack of the
/// receipt, 4 (entry and index key cleared, depth, ack mark). Each queue entry's depth is
/// written twice, +1 when it is appended and -1 when it is acked.
const EXPECTED_KEYS_PER_MESSAGE: &[(&str, f64)] = &[
    ("chat_log/dedupe", 1.0),
    ("chat_log/entry", 1.0),
    ("chat_log/last_seq", 1.0),
    ("chat_log/sender_seq", 1.0),
    ("device_queue/depth", 4.0),
    ("device_queue/entry", 2.0),
    ("device_queue/entry (clear)", 2.0),
    ("device_queue/latest", 2.0),
    ("device_queue_expiry", 2.0),
    ("device_queue_expiry (clear)", 2.0),
    ("device_state/acked_queue_seq", 2.0),
    ("device_state/device_seq", 1.0),
];
