//! `relayd chaos` as a user runs it, in its short version: two regions, two clients in each, ten
//! messages per client and about ten seconds of kills, pauses and partitions of regions and
//! edges, while one user at least links a second device and both its devices edit, delete for
//! everyone and react; then every acknowledged message must have arrived once, in order,
//! decryptable, at every device that was a member when it was sent, and both devices of a linked
//! user must hold the same chat documents, showing every change the account made (I7).
//! `RELAY_CHAOS_SEED=<n>` reruns one seed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use serde_json::Value;

/// Generous: the run itself takes about 30 s; the machines are shared and noisy.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn kills_pauses_and_partitions_lose_nothing() {
    let seed = std::env::var("RELAY_CHAOS_SEED").unwrap_or_else(|_| "1".into());
    let mut child = Command::new(env!("CARGO_BIN_EXE_relayd"))
        .args([
            "chaos",
            "--json",
            "--regions",
            "2",
            "--clients-per-region",
            "2",
            "--messages",
            "10",
            "--duration",
            "10",
            "--heal-timeout",
            "90",
            "--seed",
            &seed,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("relayd chaos starts");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (sender, output) = channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let read = stdout.read_to_string(&mut text);
        let _ = sender.send(read.map(|_| text));
    });
    let Ok(text) = output.recv_timeout(RUN_DEADLINE) else {
        // Its own pid only: relayd chaos stops its devnet and namespace on SIGTERM.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        panic!("relayd chaos did not finish within {RUN_DEADLINE:?}");
    };
    let text = text.expect("stdout is text");
    let status = child.wait().expect("relayd chaos exits");
    let report: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|error| panic!("one JSON object expected, got {text:?}: {error}"));
    eprintln!("report: {report:#}");

    assert!(
        status.success(),
        "relayd chaos --seed {seed} failed ({status})"
    );
    assert_eq!(report["ok"], true);
    for count in [
        "lost",
        "duplicated",
        "out_of_order",
        "undecryptable",
        "diverged",
        "other",
    ] {
        assert_eq!(report["counts"][count], 0, "{count}");
    }
    assert_eq!(report["clients_complete"], 4);

    // A second device linked mid-run, had everything and its documents were compared.
    let second = &report["second_devices"];
    assert!(second["linked"].as_u64().unwrap_or(0) >= 1, "{second}");
    assert_eq!(second["linked"], second["planned"], "{second}");
    assert_eq!(second["complete"], second["linked"], "{second}");
    assert!(
        second["documents_compared"].as_u64().unwrap_or(0) >= 1,
        "{second}"
    );
    // Its devices changed messages, and I7 found each change it checked in both documents.
    let changes: u64 = ["edits", "deletions", "reactions"]
        .iter()
        .map(|kind| second[kind].as_u64().unwrap_or(0))
        .sum();
    assert!(changes >= 1, "no change made: {second}");
    assert!(
        second["changes_checked"].as_u64().unwrap_or(0) >= 1,
        "no change checked: {second}"
    );

    // Faults were really injected: a kill and a pause of both a region and an edge, and
    // partitions (nftables rules in a namespace of its own when run as root with `ip` and
    // `nft`, else pauses of a whole region).
    let faults = &report["faults"];
    for kind in ["kill", "pause"] {
        for role in ["region", "edge"] {
            assert!(
                faults[kind][role].as_u64().unwrap_or(0) >= 1,
                "no {kind} of a {role}: {faults}"
            );
        }
    }
    let partitions = faults["partition"]["both_ways"].as_u64().unwrap_or(0)
        + faults["partition"]["one_way"].as_u64().unwrap_or(0);
    assert!(partitions >= 2, "partitions: {faults}");
    assert!(matches!(
        report["partitions"].as_str(),
        Some("nftables" | "pauses")
    ));

    // Load ran: every planned message was sent, and whatever was acknowledged arrived.
    let messages = &report["messages"];
    assert_eq!(messages["planned"], 40);
    assert_eq!(messages["sent"], 40);
    assert!(messages["acknowledged"].as_u64().unwrap_or(0) >= 1);
    assert!(messages["received"].as_u64() >= messages["acknowledged"].as_u64());
}
