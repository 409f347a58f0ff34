//! Journey 23: registration needs a token, as in production. A devnet started with
//! `--require-tokens` refuses a registration without one, or with one never issued, and
//! nothing is created (the name stays free); `relayd admin token` (the real binary, asking the
//! directory writer with a region's certificate) issues single-use and counted tokens; a used
//! up or expired token is refused; no file of the region holds a token's text.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::{Devnet, Person, relayd_bin};

fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == kind).collect()
}

/// `relayd admin token --config … --json` with `arguments`: the tokens.
fn issue(devnet: &Devnet, arguments: &[&str]) -> Vec<String> {
    let config = devnet.data.join("region-2.toml");
    let output = Command::new(relayd_bin())
        .args(["admin", "token", "--json", "--config"])
        .arg(&config)
        .args(arguments)
        .output()
        .expect("relayd admin token runs");
    assert!(
        output.status.success(),
        "relayd admin token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    line["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|token| token.as_str().expect("a token").to_owned())
        .collect()
}

/// Registers `person` from `bind` with `token`: the command's output.
fn register(person: &Person, devnet: &Devnet, bind: &str, token: &str) -> std::process::Output {
    person.run(&[
        "register",
        &person.name,
        "--locator",
        &devnet.locator(),
        "--bind",
        bind,
        "--ca",
        &devnet.ca(),
        "--token",
        token,
    ])
}

fn refused_with(output: &std::process::Output, said: &str) {
    assert!(!output.status.success(), "the registration was accepted");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Forbidden") && stderr.contains(said),
        "{stderr}"
    );
}

fn files_holding(folder: &Path, needle: &[u8]) -> Vec<String> {
    let mut holding = Vec::new();
    let mut folders = vec![folder.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|window| window == needle))
            {
                holding.push(path.display().to_string());
            }
        }
    }
    holding
}

#[test]
fn registration_needs_a_token_that_is_valid_unused_and_unexpired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let devnet = Devnet::start_with(2, &root.join("devnet"), &["--require-tokens"]);
    let alice = Person::new(root, "alice");
    let bob = Person::new(root, "bob");
    let carol = Person::new(root, "carol");
    let dave = Person::new(root, "dave");

    // No token, a token never issued: refused, and nothing is created.
    refused_with(
        &register(&alice, &devnet, "127.0.1.10", ""),
        "requires a registration token",
    );
    refused_with(
        &register(
            &alice,
            &devnet,
            "127.0.1.10",
            "rt_00000000000000000000000000000000",
        ),
        "not valid",
    );

    // A single-use token (issued through region 2's certificate; the writer is region 1).
    let single = issue(&devnet, &[]);
    assert_eq!(single.len(), 1);
    let registered = register(&alice, &devnet, "127.0.1.10", &single[0]);
    assert!(registered.status.success(), "{registered:?}");
    assert_eq!(
        events(&support::json_lines(&registered.stdout), "registered")[0]["name"],
        "alice",
        "the name stayed free through the refusals"
    );
    refused_with(
        &register(&bob, &devnet, "127.0.2.10", &single[0]),
        "not valid",
    );

    // A token for two registrations, from region 2 (forwarded to the writer): bob and carol.
    let counted = issue(&devnet, &["--uses", "2"]);
    for (person, bind) in [(&bob, "127.0.2.10"), (&carol, "127.0.2.11")] {
        let registered = register(person, &devnet, bind, &counted[0]);
        assert!(registered.status.success(), "{registered:?}");
    }
    refused_with(
        &register(&dave, &devnet, "127.0.1.11", &counted[0]),
        "not valid",
    );

    // An expired token (valid for about 0.9 s; used after 2 s).
    let expiring = issue(&devnet, &["--days", "0.00001"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    refused_with(
        &register(&dave, &devnet, "127.0.1.11", &expiring[0]),
        "expired",
    );

    // Several at once, each a different token.
    let batch = issue(&devnet, &["--count", "5"]);
    assert_eq!(batch.len(), 5);
    let distinct: std::collections::BTreeSet<&String> = batch.iter().collect();
    assert_eq!(distinct.len(), 5);
    let registered = register(&dave, &devnet, "127.0.1.11", &batch[3]);
    assert!(registered.status.success(), "{registered:?}");

    // The people registered work as usual.
    alice.ok(&["send", "dave", "welcome"]);

    // No file of any region holds a token's text.
    for token in single.iter().chain(&counted).chain(&batch) {
        assert_eq!(
            files_holding(&devnet.data.join("region-1"), token.as_bytes()),
            Vec::<String>::new()
        );
    }

    // Bad requests are refused plainly.
    let output = Command::new(relayd_bin())
        .args(["admin", "token", "--config"])
        .arg(devnet.data.join("region-1.toml"))
        .args(["--count", "0"])
        .output()
        .expect("relayd admin token runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 to 1000"));
}
