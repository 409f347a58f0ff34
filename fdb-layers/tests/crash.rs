//! Crash safety: a process killed with SIGKILL in the middle of a stream of commits reopens
//! with every acknowledged commit present and no partial transaction.
//!
//! The parent test re-executes this test binary as a child ([`crash_child_writer`], selected
//! by [`CHILD_DATA_ENV`]). The child runs the message path from several concurrent tasks: each
//! transaction appends an envelope to one of two chat logs and, in the same transaction,
//! enqueues a reference to it in two shared device queues (so writers conflict and retry). It
//! prints `acked …` on stdout only after `transact` returned `Ok`. The parent SIGKILLs the
//! child once it has read a round's number of acks, reopens the file and checks:
//!
//! - every acknowledged message is stored, under the chat sequence the child was told;
//! - nothing is partial: every stored entry has its envelope intact, its dedupe key, its
//!   sender's `sender_seq`, and exactly one reference in each device queue, every queue
//!   reference points to a stored entry, and every queue entry has its expiry index key;
//! - sequences are gapless: each chat's entries are `1..=last_seq`, each queue's entries are
//!   `1..=latest` with a matching depth, each sender's messages are `1..=k`;
//! - at most one unacknowledged message per sender survives (the one in flight at the kill).
//!
//! The rounds run on the same file, each a new process with new senders, so every round also
//! checks that earlier rounds survived later crashes and that writing resumes after recovery.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fdb_layers::chat_log::{self, AppendOutcome, NewEntry};
use fdb_layers::device_queue::{self, QueueAppend, QueueItem};
use fdb_layers::{Database, EmbeddedOptions, StoreError};
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId, RegionId};

/// Set in the child's environment to the database file it writes; selects child mode.
const CHILD_DATA_ENV: &str = "FDB_LAYERS_CRASH_CHILD_DATA";
/// Set in the child's environment to the round number, which picks the senders.
const CHILD_ROUND_ENV: &str = "FDB_LAYERS_CRASH_CHILD_ROUND";
/// The name of the child test, as `--exact` wants it.
const CHILD_TEST_NAME: &str = "crash_child_writer";

/// Acks to read before each kill: early (files still small), later, and in between.
const KILL_AFTER_ACKS: [usize; 5] = [30, 2_000, 500, 4_000, 1];
/// Longest wait for a round's acks before the test fails: only a hung child should reach it, so
/// it is generous (a loaded 2-core machine has taken 15 s for 1,600 acks). The rounds are
/// bounded by their ack counts, not by time.
const ROUND_ACKS_WAIT_MAX: Duration = Duration::from_secs(600);
/// Longest wait for the killed child to be reaped and its output drained.
const CHILD_EXIT_WAIT_MAX: Duration = Duration::from_secs(10);

/// Concurrent writer tasks in the child.
const WRITERS: u64 = 6;
/// Messages each child writer sends at most: the parent kills it long before (the largest round
/// asks for 4,000 acks of 6 writers), and a child whose parent died stops at its first write to
/// the closed pipe; this bounds it even then.
const MESSAGES_PER_WRITER_MAX: u64 = 20_000;
/// Every this many messages a sender's envelope spans two values.
const LARGE_ENVELOPE_EVERY: u64 = 40;
/// The size of those large envelopes, in bytes (more than one 100 kB value).
const LARGE_ENVELOPE_BYTES: usize = 150_000;
/// Entries read per transaction when checking.
const CHECK_PAGE_ENTRIES: usize = 500;

/// The chats the writers append to (writer `w` uses chat `w % 2`).
const CHATS: [ChatId; 2] = [ChatId([0xc1; 16]), ChatId([0xc2; 16])];
/// The devices every message is enqueued for.
const RECIPIENTS: [DeviceAddress; 2] = [
    DeviceAddress {
        account: AccountId(1_000_000),
        device: DeviceId(1),
    },
    DeviceAddress {
        account: AccountId(1_000_000),
        device: DeviceId(2),
    },
];

/// One acknowledged message as the child reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ack {
    chat_index: usize,
    chat_seq: u64,
}

#[test]
fn sigkill_mid_stream_keeps_every_acknowledged_commit_and_no_partial_one() {
    let started = Instant::now();
    let folder = tempfile::tempdir().expect("a temporary folder");
    let path = folder.path().join("crash.redb");
    // Every ack of every round, by (sender account, sender_seq).
    let mut acked: BTreeMap<(u64, u64), Ack> = BTreeMap::new();
    for (round, &kill_after) in KILL_AFTER_ACKS.iter().enumerate() {
        let round_started = Instant::now();
        let round_acks = run_and_kill_child(&path, round as u64, kill_after);
        let killed_at = round_started.elapsed();
        let fresh = round_acks.len();
        for (key, ack) in round_acks {
            assert!(
                acked.insert(key, ack).is_none(),
                "round {round}: message {key:?} acknowledged twice"
            );
        }
        let summary = check_reopened(&path, &acked);
        println!(
            "crash round {round}: SIGKILL after {fresh} acks (asked {kill_after}, {:.1} s); \
             reopened with all {} acks so far + {} unacknowledged in-flight commits, {} entries \
             in each queue, all whole and gapless (checked in {:.1} s)",
            killed_at.as_secs_f64(),
            summary.acked,
            summary.unacked,
            summary.queue_entries,
            (round_started.elapsed() - killed_at).as_secs_f64(),
        );
    }
    println!(
        "crash test: {} rounds, {} acknowledged messages checked, {:.1} s",
        KILL_AFTER_ACKS.len(),
        acked.len(),
        started.elapsed().as_secs_f64()
    );
}

/// The child process's entry point, not a test of its own: ignored (so it never shows as a
/// pass), and run by the parent with `--ignored --exact`. It writes until it is killed.
#[test]
#[ignore = "the child process of sigkill_mid_stream_keeps_every_acknowledged_commit_and_no_partial_one, which runs it"]
fn crash_child_writer() {
    let path = std::env::var_os(CHILD_DATA_ENV)
        .expect("run by the crash test, which names the database file");
    let round: u64 = std::env::var(CHILD_ROUND_ENV)
        .expect("the parent sets the round")
        .parse()
        .expect("the round is a number");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let database = Database::open(Path::new(&path), EmbeddedOptions::default())
            .expect("the child opens the database");
        // libtest has printed "test crash_child_writer ... " without a newline: end that line
        // so that every ack starts one.
        println!();
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let database = database.clone();
                tokio::spawn(async move {
                    let sender = sender_of(round, writer);
                    let chat_index = (writer % 2) as usize;
                    for sender_seq in 1..=MESSAGES_PER_WRITER_MAX {
                        let chat_seq = send(&database, chat_index, sender, sender_seq).await;
                        // Only now is the message acknowledged; println! flushes each line.
                        let mut stdout = std::io::stdout().lock();
                        writeln!(
                            stdout,
                            "acked {} {sender_seq} {chat_index} {chat_seq}",
                            sender.account.0
                        )
                        .expect("stdout");
                        stdout.flush().expect("stdout flush");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer task");
        }
    });
}

/// Sends one message the way a region does: append to the chat log and, for a new entry only,
/// enqueue it for both recipients, in one transaction. Returns its chat sequence.
async fn send(
    database: &Database,
    chat_index: usize,
    sender: DeviceAddress,
    sender_seq: u64,
) -> u64 {
    let envelope = envelope_of(sender.account.0, sender_seq);
    let envelope = envelope.as_slice();
    let outcome = database
        .transact(|tx| async move {
            let entry = NewEntry {
                chat: CHATS[chat_index],
                sender,
                client_message_id: client_message_id_of(sender.account.0, sender_seq),
                sender_seq,
                sender_region: RegionId(1),
                envelope_bytes: envelope,
            };
            let outcome = chat_log::append(&tx, &entry, 1_000 + sender_seq).await?;
            if let AppendOutcome::Appended { chat_seq, .. } = outcome {
                let item = QueueItem::MessageRef {
                    chat: CHATS[chat_index],
                    chat_seq,
                    origin: None,
                    shown_seq: None,
                };
                for recipient in RECIPIENTS {
                    let queued =
                        device_queue::append(&tx, recipient, &item, 1_000 + sender_seq).await?;
                    assert!(
                        matches!(queued, QueueAppend::Appended { .. }),
                        "queue of {recipient} refused: {queued:?}"
                    );
                }
            }
            Ok::<_, StoreError>(outcome)
        })
        .await
        .expect("send transaction");
    match outcome {
        AppendOutcome::Appended { chat_seq, .. }
        | AppendOutcome::FirstAfterImport { chat_seq, .. }
        | AppendOutcome::Duplicate { chat_seq, .. } => chat_seq,
        AppendOutcome::Gap {
            expected_sender_seq,
        } => {
            panic!("{sender} sent {sender_seq} in order, yet the log expects {expected_sender_seq}")
        }
        AppendOutcome::RolledBack { last_sender_seq } => {
            panic!("{sender} sent {sender_seq} in order, yet the log already has {last_sender_seq}")
        }
    }
}

/// Runs the child for `round` until it has acknowledged `kill_after` messages, SIGKILLs it and
/// returns every ack it printed (including those still in the pipe at the kill).
fn run_and_kill_child(path: &Path, round: u64, kill_after: usize) -> BTreeMap<(u64, u64), Ack> {
    let executable = std::env::current_exe().expect("the test binary's path");
    let child = Command::new(executable)
        .args([
            "--ignored",
            "--exact",
            CHILD_TEST_NAME,
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DATA_ENV, path)
        .env(CHILD_ROUND_ENV, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the child starts");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });

    let mut acks = BTreeMap::new();
    let deadline = Instant::now() + ROUND_ACKS_WAIT_MAX;
    while acks.len() < kill_after {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(remaining) {
            Ok(line) => record_ack(&line, &mut acks),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "round {round}: only {} of {kill_after} acks within {ROUND_ACKS_WAIT_MAX:?}",
                acks.len()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                "round {round}: the child stopped after {} acks: {:?}",
                acks.len(),
                child.0.wait()
            ),
        }
    }
    // std's Child::kill sends SIGKILL on Unix: no destructor, no flush, no clean close.
    child.0.kill().expect("SIGKILL the child");
    let status = wait_with_deadline(&mut child.0, CHILD_EXIT_WAIT_MAX);
    assert_eq!(
        status.signal(),
        Some(9),
        "round {round}: the child must die of SIGKILL, not {status:?}"
    );
    // The pipe closes with the child; what it holds was printed before the kill.
    let drain_deadline = Instant::now() + CHILD_EXIT_WAIT_MAX;
    loop {
        let remaining = drain_deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(remaining) {
            Ok(line) => record_ack(&line, &mut acks),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("round {round}: stdout never closed"),
        }
    }
    reader.join().expect("the reader thread");
    acks
}

/// Parses an `acked <account> <sender_seq> <chat_index> <chat_seq>` line; other lines (the test
/// harness's) are ignored, and an ack anywhere but at a line's start fails the test.
fn record_ack(line: &str, acks: &mut BTreeMap<(u64, u64), Ack>) {
    let Some(fields) = line.strip_prefix("acked ") else {
        assert!(
            !line.contains("acked"),
            "an ack not at a line start: {line:?}"
        );
        return;
    };
    let numbers: Vec<u64> = fields
        .split(' ')
        .map(|field| field.parse().expect("a number in an ack line"))
        .collect();
    let [account, sender_seq, chat_index, chat_seq] = numbers[..] else {
        panic!("malformed ack line {line:?}");
    };
    let ack = Ack {
        chat_index: chat_index as usize,
        chat_seq,
    };
    assert!(
        acks.insert((account, sender_seq), ack).is_none(),
        "ack {line:?} printed twice"
    );
}

/// What one reopening found.
struct Summary {
    acked: usize,
    unacked: usize,
    queue_entries: usize,
}

/// Reopens the database at `path` and checks it against every ack so far (see the module doc).
fn check_reopened(path: &Path, acked: &BTreeMap<(u64, u64), Ack>) -> Summary {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let database = Database::open(path, EmbeddedOptions::default())
            .expect("the database reopens after SIGKILL");

        // Chats: gapless, every entry intact and from a known sender.
        let mut stored: BTreeMap<(u64, u64), Ack> = BTreeMap::new();
        for (chat_index, &chat) in CHATS.iter().enumerate() {
            let mut after = 0;
            loop {
                let page = database
                    .transact(|tx| async move {
                        chat_log::read_range(&tx, chat, after, CHECK_PAGE_ENTRIES).await
                    })
                    .await
                    .expect("read the chat log");
                if page.is_empty() {
                    break;
                }
                for entry in page {
                    let key = (entry.sender.account.0, entry.sender_seq);
                    assert_eq!(
                        entry.chat_seq,
                        after + 1,
                        "chat {chat_index} has a gap after {after}"
                    );
                    after = entry.chat_seq;
                    assert!(
                        entry.envelope_bytes == envelope_of(key.0, key.1),
                        "chat {chat_index} entry {} holds a torn envelope",
                        entry.chat_seq
                    );
                    assert_eq!(entry.client_message_id, client_message_id_of(key.0, key.1));
                    let ack = Ack {
                        chat_index,
                        chat_seq: entry.chat_seq,
                    };
                    assert!(
                        stored.insert(key, ack).is_none(),
                        "message {key:?} stored twice"
                    );
                }
            }
            let last_seq = database
                .transact(|tx| async move { chat_log::last_seq(&tx, chat).await })
                .await
                .expect("read last_seq");
            assert_eq!(
                last_seq, after,
                "chat {chat_index}: last_seq disagrees with its entries"
            );
        }

        // Every ack is stored where the child was told.
        for (key, ack) in acked {
            assert_eq!(
                stored.get(key),
                Some(ack),
                "acknowledged message {key:?} is missing or moved after the crash"
            );
        }

        // Each sender's messages are 1..=k, with at most the in-flight one unacknowledged.
        // (chat index, last sender_seq) of each sender; a sender writes to one chat.
        let mut last_by_sender: BTreeMap<u64, (usize, u64)> = BTreeMap::new();
        for (&(account, sender_seq), ack) in &stored {
            let (chat_index, last) = last_by_sender
                .entry(account)
                .or_insert((ack.chat_index, 0));
            assert_eq!(ack.chat_index, *chat_index, "sender {account} changed chats");
            assert_eq!(sender_seq, *last + 1, "sender {account} has a gap");
            *last = sender_seq;
        }
        let mut unacked = 0;
        for (&(account, sender_seq), _) in stored.iter().filter(|(key, _)| !acked.contains_key(key))
        {
            unacked += 1;
            let last_acked = acked
                .range((account, 0)..=(account, u64::MAX))
                .map(|((_, seq), _)| *seq)
                .max()
                .unwrap_or(0);
            assert_eq!(
                sender_seq,
                last_acked + 1,
                "sender {account}: unacknowledged {sender_seq} is not the one in flight"
            );
        }

        // Device queues: gapless, depth matches, exactly one reference per stored entry.
        let expected_refs: BTreeSet<(usize, u64)> = stored
            .values()
            .map(|ack| (ack.chat_index, ack.chat_seq))
            .collect();
        for recipient in RECIPIENTS {
            let mut refs = BTreeSet::new();
            let mut after = 0;
            loop {
                let page = database
                    .transact(|tx| async move {
                        device_queue::read_after(&tx, recipient, after, CHECK_PAGE_ENTRIES).await
                    })
                    .await
                    .expect("read the device queue");
                let Some(&(last, _)) = page.last() else { break };
                for (queue_seq, item) in page {
                    assert_eq!(queue_seq, after + 1, "queue of {recipient} has a gap");
                    after = queue_seq;
                    let QueueItem::MessageRef { chat, chat_seq, .. } = item else {
                        panic!("queue of {recipient} holds a receipt");
                    };
                    let chat_index = CHATS
                        .iter()
                        .position(|known| *known == chat)
                        .expect("a known chat");
                    assert!(
                        refs.insert((chat_index, chat_seq)),
                        "queue of {recipient} references {chat_index}/{chat_seq} twice"
                    );
                }
                assert_eq!(after, last);
            }
            let (latest, depth) = database
                .transact(|tx| async move {
                    Ok((
                        device_queue::latest(&tx, recipient).await?,
                        device_queue::depth(&tx, recipient).await?,
                    ))
                })
                .await
                .expect("read the queue counters");
            assert_eq!(
                (latest, depth),
                (after, after),
                "queue of {recipient}: counters disagree with its entries"
            );
            assert!(
                refs == expected_refs,
                "queue of {recipient} and the chat logs disagree: {} references, {} entries",
                refs.len(),
                expected_refs.len()
            );
        }

        // The expiry index: a sweep of every queue, driven by the index and never committed,
        // finds each queue entry exactly once.
        let probe = database.create_transaction().expect("a probe transaction");
        let mut indexed = BTreeSet::new();
        for _ in 0..=(2 * expected_refs.len() / device_queue::SWEEP_ENTRIES_MAX + 1) {
            let report = device_queue::sweep_expired(
                &probe,
                device_queue::SweepScope::All,
                u64::MAX / 2,
                0,
                device_queue::SWEEP_ENTRIES_MAX,
            )
            .await
            .expect("probe the expiry index");
            for (device, queue_seq, _) in report.expired {
                assert!(
                    indexed.insert((device, queue_seq)),
                    "expiry index lists {device}#{queue_seq} twice"
                );
            }
            if !report.more {
                break;
            }
        }
        assert_eq!(
            indexed.len(),
            RECIPIENTS.len() * expected_refs.len(),
            "the expiry index misses queue entries"
        );
        drop(probe);

        // Dedupe keys and sender counters, probed by appends that are never committed.
        for (&(account, sender_seq), ack) in &stored {
            let probe = database.create_transaction().expect("a probe transaction");
            let envelope = envelope_of(account, sender_seq);
            let retry = NewEntry {
                chat: CHATS[ack.chat_index],
                sender: sender_address(account),
                client_message_id: client_message_id_of(account, sender_seq),
                sender_seq,
                sender_region: RegionId(1),
                envelope_bytes: &envelope,
            };
            let outcome = chat_log::append(&probe, &retry, 0)
                .await
                .expect("probe dedupe");
            assert!(
                matches!(outcome, AppendOutcome::Duplicate { chat_seq, .. } if chat_seq == ack.chat_seq),
                "message {account}/{sender_seq}: dedupe key missing or wrong: {outcome:?}"
            );
        }
        for (&account, &(chat_index, last)) in &last_by_sender {
            let probe = database.create_transaction().expect("a probe transaction");
            let next = NewEntry {
                chat: CHATS[chat_index],
                sender: sender_address(account),
                client_message_id: ClientMessageId([0xff; 16]),
                sender_seq: 0,
                sender_region: RegionId(1),
                envelope_bytes: b"probe",
            };
            let outcome = chat_log::append(&probe, &next, 0)
                .await
                .expect("probe sender_seq");
            // A new id under a number already taken reads back the last one stored.
            assert_eq!(
                outcome,
                AppendOutcome::RolledBack {
                    last_sender_seq: last
                },
                "sender {account}: stored sender_seq disagrees with its entries"
            );
        }

        Summary {
            acked: acked.len(),
            unacked,
            queue_entries: expected_refs.len(),
        }
    })
}

/// Waits for `child` to exit, killing it again and failing if it takes longer than `limit`.
fn wait_with_deadline(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return status;
        }
        assert!(Instant::now() < deadline, "the child outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills the child if the parent fails before killing it on purpose.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The sending device of writer `writer` in round `round`: new accounts each round.
fn sender_of(round: u64, writer: u64) -> DeviceAddress {
    sender_address(round * 100 + writer + 1)
}

fn sender_address(account: u64) -> DeviceAddress {
    DeviceAddress {
        account: AccountId(account),
        device: DeviceId(1),
    }
}

fn client_message_id_of(account: u64, sender_seq: u64) -> ClientMessageId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&account.to_be_bytes());
    id[8..].copy_from_slice(&sender_seq.to_be_bytes());
    ClientMessageId(id)
}

/// The envelope of a message: its length and every byte derive from the sender and sequence,
/// so a torn or mixed-up value is caught.
fn envelope_of(account: u64, sender_seq: u64) -> Vec<u8> {
    let length = if sender_seq.is_multiple_of(LARGE_ENVELOPE_EVERY) {
        LARGE_ENVELOPE_BYTES
    } else {
        64 + (sender_seq as usize * 37 + account as usize * 11) % 2_000
    };
    let mut state = account.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ sender_seq;
    (0..length)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}
