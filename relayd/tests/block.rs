//! Journey 24: blocking. bob (region 2) blocks alice (region 1): her messages, 1:1 and to a
//! group they share, are stored and answered as usual (she sees ✓, never ✓✓) and reach none of
//! bob's devices, while carol's reach him and alice's group message reaches carol; after
//! `relay unblock` her next message arrives. Blocking yourself or a name no account has is
//! refused plainly.

mod support;

use serde_json::Value;
use support::{DEADLINE, Devnet, Person, eventually};

fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == kind).collect()
}

fn texts(lines: &[Value], kind: &str) -> Vec<String> {
    events(lines, kind)
        .iter()
        .map(|line| line["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Syncs `person` until a message (of `kind`) with `text` arrives; every text received.
fn sync_until(person: &Person, kind: &str, text: &str) -> Vec<String> {
    let mut received = Vec::new();
    eventually(DEADLINE, "the message arrives", || {
        received.extend(texts(&person.ok(&["sync"]), kind));
        received.iter().any(|seen| seen == text).then_some(())
    });
    received
}

#[test]
fn a_blocked_account_reaches_none_of_the_blockers_devices_until_unblocked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let devnet = Devnet::start(2, &root.join("devnet"));
    let alice = Person::new(root, "alice");
    alice.register(&devnet, "127.0.1.10");
    let bob = Person::new(root, "bob");
    bob.register(&devnet, "127.0.2.10");
    let carol = Person::new(root, "carol");
    carol.register(&devnet, "127.0.2.11");
    let created = alice.ok(&["group", "create", "friends", "bob", "carol"]);
    let group = events(&created, "group")[0]["id"]
        .as_u64()
        .expect("group id")
        .to_string();

    let blocked = bob.ok(&["block", "alice"]);
    assert_eq!(
        events(&blocked, "blocked")[0]["accounts"],
        serde_json::json!(["alice"])
    );

    // alice is not told: her sends are stored (✓) as usual.
    let sent = alice.ok(&["send", "bob", "are you there?"]);
    assert!(
        events(&sent, "tick")
            .iter()
            .any(|tick| tick["tick"] == "sent")
    );
    alice.ok(&["send-group", &group, "hello friends"]);
    carol.ok(&["send", "bob", "from carol"]);
    let received = sync_until(&bob, "message", "from carol");
    assert!(
        !received.iter().any(|text| text == "are you there?"),
        "{received:?}"
    );
    // carol gets alice's group message; bob does not.
    let carol_got = sync_until(&carol, "group_message", "hello friends");
    assert!(carol_got.iter().any(|text| text == "hello friends"));
    let bob_group = texts(&bob.ok(&["sync"]), "group_message");
    assert!(
        !bob_group.iter().any(|text| text == "hello friends"),
        "{bob_group:?}"
    );
    // alice's message never reaches ✓✓.
    alice.ok(&["sync"]);
    let history = alice.ok(&["history", "bob"]);
    let tick = events(&history, "history")
        .iter()
        .find(|entry| entry["text"] == "are you there?")
        .map(|entry| entry["tick"].clone())
        .expect("alice's message in her history");
    assert_eq!(tick, "sent");

    // Refusals, plainly: yourself, a name no account has.
    let own = bob.run(&["block", "bob"]);
    assert!(!own.status.success());
    assert!(String::from_utf8_lossy(&own.stderr).contains("itself"));
    let unknown = bob.run(&["block", "nosuchperson"]);
    assert!(!unknown.status.success());

    // Unblocked: alice's next message arrives, the one sent while blocked does not.
    let unblocked = bob.ok(&["unblock", "alice"]);
    assert_eq!(
        events(&unblocked, "blocked")[0]["accounts"],
        serde_json::json!([])
    );
    alice.ok(&["send", "bob", "now?"]);
    let received = sync_until(&bob, "message", "now?");
    assert!(
        !received.iter().any(|text| text == "are you there?"),
        "{received:?}"
    );
    assert_eq!(
        events(&bob.ok(&["blocked"]), "blocked")[0]["accounts"],
        serde_json::json!([])
    );
}
