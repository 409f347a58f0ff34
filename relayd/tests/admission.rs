//! Journey 25: one source address cannot flood an edge with new connections. On a devnet whose
//! edges admit 1 connection a second with a burst of 3 per address, eight people behind one
//! address sending at once are partly refused `Throttled` with a retry-after (shown plainly,
//! nothing lost: each refused message stays in its outbox and goes with the next command); a
//! person on another address is not affected.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{DEADLINE, Devnet, Person, eventually};

fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == kind).collect()
}

#[test]
fn an_address_over_its_connection_rate_is_refused_with_a_retry_after_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let devnet = Devnet::start_with(
        1,
        &root.join("devnet"),
        &[
            "--edge-connections-per-second-per-address",
            "1",
            "--edge-connections-burst-per-address",
            "3",
        ],
    );
    let bob = Person::new(root, "bob");
    bob.register(&devnet, "127.0.1.11");
    // Eight people behind one address (a household, an office), registered one by one within
    // the address's rate.
    let people: Vec<Person> = (0..8)
        .map(|n| {
            let person = Person::new(root, &format!("p{n}"));
            eventually(DEADLINE, "a registration within the address's rate", || {
                std::thread::sleep(Duration::from_millis(1_100));
                let output = person.run(&[
                    "register",
                    &person.name,
                    "--locator",
                    &devnet.locator(),
                    "--bind",
                    "127.0.1.20",
                    "--ca",
                    &devnet.ca(),
                ]);
                output.status.success().then_some(())
            });
            person
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));

    // All eight send at once: the address's burst is three, so some connections are refused,
    // with a retry-after, which the client honours before it connects again: every message is
    // sent in the end.
    let sending: Vec<std::process::Child> = people
        .iter()
        .map(|person| {
            Command::new(support::relay_bin())
                .arg("--data")
                .arg(&person.data)
                .args(["send", "bob", &format!("from {}", person.name)])
                // Waiting shows the connection's notes: a refusal and its retry-after.
                .args(["--until", "sent", "--timeout", "60"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("relay starts")
        })
        .collect();
    let outputs: Vec<String> = sending
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().expect("relay ends");
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .collect();
    let throttled: Vec<&String> = outputs
        .iter()
        .filter(|said| said.contains("Throttled"))
        .collect();
    assert!(!throttled.is_empty(), "no one was throttled: {outputs:#?}");
    assert!(
        throttled.len() < outputs.len(),
        "everyone was throttled: {outputs:#?}"
    );
    for said in &throttled {
        assert!(said.contains("too many new connections"), "{said}");
        assert!(said.contains("retrying in"), "{said}");
    }
    for said in &outputs {
        assert!(said.contains("sent ✓"), "{said}");
    }

    // bob, on another address, connects as usual, and every message arrives.
    let mut received = texts(&bob.ok(&["sync"]));
    eventually(DEADLINE, "bob has every message", || {
        received.extend(texts(&bob.ok(&["sync"])));
        people
            .iter()
            .all(|person| received.contains(&format!("from {}", person.name)))
            .then_some(())
    });
}

fn texts(lines: &[Value]) -> Vec<String> {
    events(lines, "message")
        .iter()
        .map(|message| message["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}
