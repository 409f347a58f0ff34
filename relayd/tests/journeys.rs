//! The user journeys of the README, driving real `relayd devnet` and `relay` processes on
//! loopback: two people homed in different regions exchange end-to-end-encrypted messages with
//! ticks; an offline device catches up; a killed region loses nothing; a restarted devnet keeps
//! everything; no server ever holds the plaintext.

mod support;

use std::path::Path;

use relay_devnet::DevnetEvent;
use serde_json::Value;
use support::{DEADLINE, Devnet, Person, eventually};

fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == kind).collect()
}

fn texts(lines: &[Value]) -> Vec<String> {
    events(lines, "message")
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Sends and returns the message id, checking it reached ✓.
fn send(person: &Person, peer: &str, text: &str) -> String {
    let lines = person.ok(&["send", peer, text]);
    let sent = events(&lines, "tick")
        .into_iter()
        .find(|tick| tick["tick"] == "sent")
        .unwrap_or_else(|| panic!("{text:?} did not reach sent: {lines:?}"));
    sent["id"].as_str().expect("message id").to_owned()
}

/// The ticks of `person`'s outgoing messages to `peer`, after a sync.
fn ticks(person: &Person, peer: &str) -> Vec<String> {
    person.ok(&["sync"]);
    let history = person.ok(&["history", peer]);
    events(&history, "history")
        .into_iter()
        .filter(|entry| entry["direction"] == "out")
        .map(|entry| entry["tick"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn two_people(devnet: &Devnet, root: &Path) -> (Person, Person) {
    let alice = Person::new(root, "alice");
    let bob = Person::new(root, "bob");
    let registered = alice.register(devnet, "127.0.1.10");
    assert_eq!(
        events(&registered, "registered")[0]["region"],
        1,
        "alice is homed in region 1"
    );
    let registered = bob.register(devnet, "127.0.2.10");
    assert_eq!(
        events(&registered, "registered")[0]["region"],
        2,
        "bob is homed in region 2"
    );
    (alice, bob)
}

#[test]
fn offline_recipient_catches_up_in_order_and_ticks_move_forward() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let (alice, bob) = two_people(&devnet, dir.path());

    // bob is offline: every message still reaches ✓ (durable in both regions).
    let ids: Vec<String> = ["one", "two", "three"]
        .iter()
        .map(|text| send(&alice, "bob", text))
        .collect();
    assert_eq!(ticks(&alice, "bob"), vec!["sent"; 3]);

    // bob syncs later: all three, in order, from alice, with gapless chat sequence numbers.
    let received = bob.ok(&["sync"]);
    assert_eq!(texts(&received), vec!["one", "two", "three"]);
    let messages = events(&received, "message");
    assert!(
        messages
            .iter()
            .all(|m| m["from"] == "alice" && m["direction"] == "in")
    );
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["chat_seq"].as_u64().expect("chat_seq"))
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    let received_ids: Vec<&str> = messages
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        received_ids,
        ids.iter().map(String::as_str).collect::<Vec<_>>()
    );

    // A second sync gets nothing new: acknowledged entries are gone.
    assert!(texts(&bob.ok(&["sync"])).is_empty());

    // bob's acks travel back to region 1 as delivered receipts: ✓✓.
    eventually(DEADLINE, "alice sees delivered", || {
        (ticks(&alice, "bob") == vec!["delivered"; 3]).then_some(())
    });

    // bob reads the chat: an end-to-end-encrypted read receipt moves alice's ticks to read.
    let marked = bob.ok(&["read", "alice"]);
    assert_eq!(events(&marked, "marked_read")[0]["count"], 3);
    eventually(DEADLINE, "alice sees read", || {
        (ticks(&alice, "bob") == vec!["read"; 3]).then_some(())
    });

    // bob's history shows the chat read, in order.
    let history = bob.ok(&["history", "alice"]);
    let entries = events(&history, "history");
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|entry| entry["read"] == true));

    // And replies cross the other way.
    send(&bob, "alice", "hello back");
    let back = alice.ok(&["sync"]);
    assert_eq!(texts(&back), vec!["hello back"]);
}

#[test]
fn listen_prints_live_messages_and_send_wait_follows_the_ticks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let (alice, bob) = two_people(&devnet, dir.path());
    // A first message sets up the Olm sessions both ways.
    send(&alice, "bob", "warm-up");
    bob.ok(&["sync"]);

    let mut listening = bob.spawn(&["listen"]);
    listening.wait_for(DEADLINE, |line| line["event"] == "listening");

    let mut sending = alice.spawn(&[
        "send",
        "bob",
        "live",
        "--wait",
        "--until",
        "read",
        "--timeout",
        "120",
    ]);
    sending.wait_for(DEADLINE, |line| {
        line["event"] == "tick" && line["tick"] == "sent"
    });
    let message = listening.wait_for(DEADLINE, |line| {
        line["event"] == "message" && line["text"] == "live"
    });
    assert_eq!(message["from"], "alice");
    sending.wait_for(DEADLINE, |line| {
        line["event"] == "tick" && line["tick"] == "delivered"
    });

    bob.ok(&["read", "alice"]);
    sending.wait_for(DEADLINE, |line| {
        line["event"] == "tick" && line["tick"] == "read"
    });
    let status = sending.child.wait().expect("send exits");
    assert!(
        status.success(),
        "send --wait --until read exits cleanly once read"
    );
}

#[test]
fn a_killed_region_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut devnet = Devnet::start(2, &dir.path().join("devnet"));
    let (alice, bob) = two_people(&devnet, dir.path());
    for text in ["a", "b", "c"] {
        send(&alice, "bob", text);
    }

    // SIGKILL bob's region (it holds his queue), and also alice's (the directory writer).
    for region in [2u32, 1] {
        let pid = devnet.region(region).service_pid;
        support::send_signal(pid, "KILL");
        let name = format!("region-{region}");
        devnet.wait_event(DEADLINE, |event| {
            matches!(event, DevnetEvent::Restarted { name: restarted, .. } if *restarted == name)
        });
    }

    // Sending works again once the regions are back: the client's outbox retries each message
    // under its one client message id until the edge, reconnected, reports it sent.
    for text in ["d", "e"] {
        let lines = alice.ok(&[
            "send",
            "bob",
            text,
            "--wait",
            "--until",
            "sent",
            "--timeout",
            "120",
        ]);
        assert!(
            events(&lines, "tick")
                .iter()
                .any(|tick| tick["tick"] == "sent"),
            "{text} sent: {lines:?}"
        );
    }
    let received = bob.ok(&["sync"]);
    assert_eq!(
        texts(&received),
        vec!["a", "b", "c", "d", "e"],
        "every acknowledged message, in order, once"
    );
}

#[test]
fn a_restarted_devnet_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("devnet");
    let mut devnet = Devnet::start(2, &data);
    let (alice, bob) = two_people(&devnet, dir.path());
    send(&alice, "bob", "before the restart");
    let locator = devnet.locator();
    devnet.stop();

    let devnet = Devnet::start(2, &data);
    assert_eq!(
        devnet.locator(),
        locator,
        "the locator keeps its port, so clients find it again"
    );
    let received = bob.ok(&["sync"]);
    assert_eq!(texts(&received), vec!["before the restart"]);
    send(&bob, "alice", "after the restart");
    assert_eq!(texts(&alice.ok(&["sync"])), vec!["after the restart"]);
}

#[test]
fn no_server_ever_holds_the_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("devnet");
    let devnet = Devnet::start(2, &data);
    let (alice, bob) = two_people(&devnet, dir.path());
    let canary = format!(
        "canary-{}-{}",
        std::process::id(),
        dir.path().display().to_string().len()
    );
    send(&alice, "bob", &canary);
    assert_eq!(texts(&bob.ok(&["sync"])), vec![canary.clone()]);
    send(&bob, "alice", &format!("re: {canary}"));
    alice.ok(&["sync"]);
    drop(devnet); // stop the servers so their logs and stores are complete

    let found = files_containing(&data, canary.as_bytes());
    assert!(
        found.is_empty(),
        "plaintext found in server files: {found:?}"
    );
    // The scan does find it where it belongs: in the clients' own stores.
    assert!(
        !files_containing(&bob.data, canary.as_bytes()).is_empty(),
        "the scan works"
    );
}

fn files_containing(root: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("readable dir") {
                stack.push(entry.expect("entry").path());
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|window| window == needle)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn a_retried_send_is_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let (alice, bob) = two_people(&devnet, dir.path());
    send(&alice, "bob", "first");

    // Freeze bob's region: alice's region commits the envelope, bob's never answers, so the edge
    // reports a retryable failure and the client retries the same envelope (same client message
    // id) until its budget runs out, leaving it pending in the outbox.
    let region2 = devnet.region(2).service_pid;
    support::send_signal(region2, "STOP");
    let attempt = alice.run(&["send", "bob", "retried"]);
    support::send_signal(region2, "CONT");
    assert!(attempt.status.success());
    let lines = support::json_lines(&attempt.stdout);
    assert!(
        events(&lines, "still_pending").len() == 1
            && events(&lines, "tick")
                .iter()
                .all(|t| t["tick"] == "pending"),
        "the send stays pending while a region is frozen: {lines:?}"
    );

    // Once bob's region is back, the outbox delivers it (again, under the same id).
    eventually(DEADLINE, "the outbox flushes", || {
        let synced = alice.ok(&["sync"]);
        (events(&synced, "synced")[0]["pending"] == 0).then_some(())
    });
    send(&alice, "bob", "third");

    // Stored once in bob's region: one copy, and gapless chat sequence numbers.
    let received = bob.ok(&["sync"]);
    assert_eq!(texts(&received), vec!["first", "retried", "third"]);
    let seqs: Vec<u64> = events(&received, "message")
        .iter()
        .map(|m| m["chat_seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    // Stored once in alice's region too, though it received the envelope at every attempt.
    let history = alice.ok(&["history", "bob"]);
    let alice_seqs: Vec<u64> = events(&history, "history")
        .iter()
        .map(|h| h["chat_seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(alice_seqs, vec![1, 2, 3]);
}
