//! Journey 29: an account's home moves. alice lives in region 1 with carol; bob lives in region
//! 2. While alice is offline, carol and bob write to her. The operator moves alice's home to
//! region 2 (`relayd admin move-home alice --to 2`) while bob keeps writing: each of his sends
//! is acknowledged on its first try. alice then receives every message once, in order per
//! sender, bob sees his messages delivered, and alice writes to both on. The move is refused
//! from the wrong region and with the wrong certificate; moved back to region 1, alice still
//! receives and sends.

mod support;

use serde_json::Value;
use support::{
    DEADLINE, Devnet, Person, acknowledged_at_once, events, eventually, json_lines, move_home,
    receive_all,
};

/// The chat sequences `person` stores of its chat with `peer`: never one twice, whichever home
/// gave them (a new home that held nothing of a chat goes on with the old home's numbers).
fn distinct_chat_seqs(person: &Person, peer: &str) -> usize {
    let lines = person.ok(&["history", peer]);
    let seqs: Vec<u64> = events(&lines, "history")
        .iter()
        .filter_map(|line| line["chat_seq"].as_u64())
        .collect();
    let distinct: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        seqs.len(),
        "{peer}'s chat numbers repeat: {seqs:?}"
    );
    seqs.len()
}

/// Every text of `texts` arrived exactly once in `received`, in the order of `texts`.
fn once_in_order(received: &[String], texts: &[String]) {
    let positions: Vec<usize> = texts
        .iter()
        .map(|text| {
            let seen: Vec<usize> = received
                .iter()
                .enumerate()
                .filter(|(_, seen)| *seen == text)
                .map(|(position, _)| position)
                .collect();
            assert_eq!(seen.len(), 1, "{text} arrived once: {received:?}");
            seen[0]
        })
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "in order: {texts:?} in {received:?}"
    );
}

#[test]
fn an_account_moves_home_with_its_queued_messages_and_no_failed_send() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = root.join("devnet");
    let devnet = Devnet::start(2, &data);
    let alice = Person::new(root, "alice");
    alice.register(&devnet, "127.0.1.10");
    let carol = Person::new(root, "carol");
    carol.register(&devnet, "127.0.1.12");
    let bob = Person::new(root, "bob");
    bob.register(&devnet, "127.0.2.11");

    // They have talked before; then alice goes offline and both write to her.
    assert!(acknowledged_at_once(&alice, "bob", "hi bob"));
    assert!(acknowledged_at_once(&alice, "carol", "hi carol"));
    receive_all(&bob, &["hi bob".to_owned()]);
    receive_all(&carol, &["hi carol".to_owned()]);
    let from_carol: Vec<String> = (0..3).map(|index| format!("carol {index}")).collect();
    for text in &from_carol {
        assert!(acknowledged_at_once(&carol, "alice", text), "{text}");
    }
    let mut from_bob: Vec<String> = (0..3).map(|index| format!("bob before {index}")).collect();
    for text in &from_bob {
        assert!(acknowledged_at_once(&bob, "alice", text), "{text}");
    }

    let region_1 = data.join("region-1.toml");
    let region_2 = data.join("region-2.toml");
    // Refused, and nothing changes: asked of a region that is not alice's home, and with a
    // certificate that is not region 1's own (the edge's).
    let elsewhere = move_home("alice", "1", &region_2);
    assert!(!elsewhere.status.success());
    let error: Value = serde_json::from_slice(&elsewhere.stderr).expect("one JSON error");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|message| message.contains("homed in region 1")),
        "{error}"
    );
    let edge_config = root.join("region-1-with-the-edge-cert.toml");
    let text = std::fs::read_to_string(&region_1).expect("the region's configuration");
    std::fs::write(
        &edge_config,
        text.replace("pki/region-1.pem", "pki/edge-1.pem")
            .replace("pki/region-1.key", "pki/edge-1.key"),
    )
    .expect("written");
    let forbidden = move_home("alice", "2", &edge_config);
    assert!(!forbidden.status.success());
    assert!(String::from_utf8_lossy(&forbidden.stderr).contains("own certificate"));

    // bob keeps writing while the operator moves alice's home: every send is acknowledged on
    // its first try.
    let during = std::thread::scope(|scope| {
        let sending = scope.spawn(|| {
            let mut texts = Vec::new();
            for index in 0..6 {
                let text = format!("bob during {index}");
                assert!(
                    acknowledged_at_once(&bob, "alice", &text),
                    "{text} was not acknowledged at once"
                );
                texts.push(text);
            }
            texts
        });
        let output = move_home("alice", "2", &region_1);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines = json_lines(&output.stdout);
        let moved = events(&lines, "home_moved");
        assert_eq!(moved.len(), 1, "{lines:?}");
        assert_eq!(moved[0]["to_region"], 2);
        assert_eq!(moved[0]["from_region"], 1);
        assert_eq!(moved[0]["epoch"], 2);
        assert!(
            moved[0]["queue_entries"].as_u64().expect("entries") >= 1,
            "alice's queue moved: {lines:?}"
        );
        sending.join().expect("bob")
    });
    from_bob.extend(during);
    let after = "bob after the move".to_owned();
    assert!(acknowledged_at_once(&bob, "alice", &after));
    from_bob.push(after);

    // alice, back online, gets everything once; each sender's messages in order.
    let mut expected = from_carol.clone();
    expected.extend(from_bob.iter().cloned());
    let received = receive_all(&alice, &expected);
    once_in_order(&received, &from_carol);
    once_in_order(&received, &from_bob);
    // bob hears his messages were delivered.
    eventually(DEADLINE, "bob sees a delivered tick", || {
        let lines = bob.ok(&["sync"]);
        events(&lines, "tick")
            .iter()
            .any(|tick| tick["tick"] == "delivered")
            .then_some(())
    });
    // alice writes on to both, from her new home.
    assert!(acknowledged_at_once(&alice, "carol", "from region 2"));
    assert!(acknowledged_at_once(&alice, "bob", "to a neighbour"));
    receive_all(&carol, &["from region 2".to_owned()]);
    receive_all(&bob, &["to a neighbour".to_owned()]);
    assert_eq!(
        distinct_chat_seqs(&alice, "carol"),
        1 + from_carol.len() + 1
    );
    assert_eq!(distinct_chat_seqs(&alice, "bob"), 1 + from_bob.len() + 1);

    // Region 1 turns the move away now: alice is not homed there.
    let again = move_home("alice", "2", &region_1);
    assert!(!again.status.success());
    // Moved back, alice still receives and sends.
    let back = move_home("alice", "1", &region_2);
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    let lines = json_lines(&back.stdout);
    assert_eq!(events(&lines, "home_moved")[0]["epoch"], 3);
    assert!(acknowledged_at_once(&carol, "alice", "welcome back"));
    assert!(acknowledged_at_once(&bob, "alice", "bob again"));
    let received = receive_all(&alice, &["welcome back".to_owned(), "bob again".to_owned()]);
    assert_eq!(received.len(), 2, "nothing old arrived again: {received:?}");
    assert!(acknowledged_at_once(&alice, "bob", "home again"));
    receive_all(&bob, &["home again".to_owned()]);
    distinct_chat_seqs(&alice, "carol");
    distinct_chat_seqs(&alice, "bob");
    drop(devnet);
}
