//! Journey 26: a region's standby. A devnet started with `--standbys` gives region 1 a standby
//! that receives every commit before the region acknowledges it. alice sends bob (offline)
//! messages; each ✓ means the standby has it. The primary is SIGKILLed and its store lost; the
//! operator promotes the standby (`relayd admin promote`, refused while the standby still
//! runs) and restarts the devnet: the region serves from the copy, bob receives every message
//! alice saw acknowledged, and the region's new standby gets a full copy and keeps up.
//!
//! Journey 27: the primary hangs (SIGSTOP); its standby takes over within the lease, the edge
//! follows the peers file, a send during the hang is acknowledged, a photo sent before it
//! downloads from the promoted standby byte for byte (blobs live in the store the standby
//! receives), and the primary, resumed, is fenced and not restarted; the promoted standby's
//! process, killed, comes back as the region.
//!
//! Journey 28: a planned failover. The operator runs `relayd admin failover --region 1`: the
//! region holds requests, ships everything to its standby, which takes over at once; the old
//! primary stops (fenced). alice's sends while it happens are each acknowledged on their first
//! try, bob receives everything once, and the failover is refused with the wrong certificate
//! and the wrong region. The promoted region ships to its own standby, so a second failover
//! moves it on again; the third is refused, no standby being left.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{
    DEADLINE, Devnet, Person, acknowledged_at_once, events, eventually, json_lines, receive_all,
    relayd_bin, send_signal,
};

const MESSAGES: usize = 12;

fn promote(data: &std::path::Path) -> std::process::Output {
    Command::new(relayd_bin())
        .args(["admin", "promote", "--json", "--standby-config"])
        .arg(data.join("standby-1.toml"))
        .arg("--region-config")
        .arg(data.join("region-1.toml"))
        .output()
        .expect("relayd admin promote runs")
}

#[test]
fn a_promoted_standby_holds_every_message_the_lost_primary_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = root.join("devnet");
    let mut devnet = Devnet::start_with(1, &data, &["--standbys"]);
    let standby_pid = devnet
        .region(1)
        .standby_pid
        .expect("region 1 has a standby");
    assert!(devnet.region(1).standby.is_some());
    let alice = Person::new(root, "alice");
    alice.register(&devnet, "127.0.1.10");
    let bob = Person::new(root, "bob");
    bob.register(&devnet, "127.0.1.11");

    let sent: Vec<String> = (0..MESSAGES)
        .map(|index| format!("before failover {index}"))
        .collect();
    for text in &sent {
        let lines = alice.ok(&["send", "bob", text]);
        assert!(
            events(&lines, "tick")
                .iter()
                .any(|tick| tick["tick"] == "sent"),
            "every message is acknowledged (✓): {lines:?}"
        );
    }

    // A promotion while the standby runs is refused: it would copy a file being written.
    let refused = promote(&data);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("stop the standby first"), "{said}");

    // The primary dies and its store is lost.
    send_signal(devnet.region(1).service_pid, "KILL");
    devnet.stop();
    let _ = standby_pid;
    std::fs::remove_file(data.join("region-1").join("region.redb")).expect("the store is lost");

    let promoted = promote(&data);
    assert!(
        promoted.status.success(),
        "{}",
        String::from_utf8_lossy(&promoted.stderr)
    );
    let report = json_lines(&promoted.stdout);
    let report = events(&report, "promoted")[0].clone();
    assert!(report["version"].as_u64().expect("version") > 0, "{report}");
    assert!(report["replaced"].is_string(), "{report}");

    // The region starts on the copy; its new standby (an empty folder) gets a full copy.
    let devnet = Devnet::start_with(1, &data, &["--standbys"]);
    let mut received: Vec<String> = Vec::new();
    eventually(DEADLINE, "bob receives every acknowledged message", || {
        let lines = bob.ok(&["sync"]);
        received.extend(
            events(&lines, "message")
                .iter()
                .filter_map(|line| line["text"].as_str().map(str::to_owned)),
        );
        sent.iter()
            .all(|text| received.contains(text))
            .then_some(())
    });
    let after = alice.ok(&["send", "bob", "after failover"]);
    assert!(
        events(&after, "tick")
            .iter()
            .any(|tick| tick["tick"] == "sent"),
        "{after:?}"
    );
    eventually(DEADLINE, "the message after the failover arrives", || {
        let lines = bob.ok(&["sync"]);
        events(&lines, "message")
            .iter()
            .any(|line| line["text"] == "after failover")
            .then_some(())
    });
    // Nothing arrived twice.
    for text in &sent {
        assert_eq!(
            received.iter().filter(|seen| *seen == text).count(),
            1,
            "{text} arrived once"
        );
    }
    drop(devnet);
}

/// Sends `text` from `from` to `to` until it is acknowledged (✓): a send during a failover may
/// be refused or time out, and is retried under the same id by the client's outbox.
fn send_acknowledged(from: &Person, to: &str, text: &str) {
    let mut first = true;
    eventually(DEADLINE, "the send is acknowledged", || {
        let lines = if first {
            first = false;
            from.run(&["send", to, text])
        } else {
            // What is still pending goes out with the next sync.
            from.run(&["sync"])
        };
        let lines = json_lines(&lines.stdout);
        let acknowledged = events(&lines, "tick")
            .iter()
            .any(|tick| tick["tick"] == "sent" || tick["tick"] == "delivered");
        acknowledged.then_some(())
    });
}

#[test]
fn a_standby_takes_over_a_region_whose_primary_is_gone_and_fences_it_when_it_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = root.join("devnet");
    let mut devnet = Devnet::start_with(1, &data, &["--standbys"]);
    let alice = Person::new(root, "alice");
    alice.register(&devnet, "127.0.1.10");
    let bob = Person::new(root, "bob");
    bob.register(&devnet, "127.0.1.11");
    // A photo first: its blob (three units) lives in the region's store, which the standby
    // receives, not in local files it never sees.
    let photo: Vec<u8> = (0..2_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let photo_path = root.join("photo.jpg");
    std::fs::write(&photo_path, &photo).expect("write the photo");
    alice.ok(&["send-file", "bob", photo_path.to_str().expect("utf-8 path")]);
    let photo_message = eventually(DEADLINE, "the photo's message reaches bob", || {
        let lines = bob.ok(&["sync"]);
        events(&lines, "message")
            .into_iter()
            .find(|line| !line["file"].is_null())
            .cloned()
    });
    let photo_id = photo_message["id"].as_str().expect("an id").to_owned();
    assert!(
        !data.join("region-1").join("blobs").exists()
            || std::fs::read_dir(data.join("region-1").join("blobs"))
                .expect("the blob folder")
                .next()
                .is_none(),
        "no blob in local files"
    );

    let mut sent: Vec<String> = (0..MESSAGES)
        .map(|index| format!("before {index}"))
        .collect();
    for text in &sent {
        alice.ok(&["send", "bob", text]);
    }
    // The primary's process hangs (SIGSTOP): its standby hears nothing for its lease, takes
    // over with everything alice saw acknowledged, and the edge follows the region's new
    // address from the peers file.
    let primary = devnet.region(1).service_pid;
    send_signal(primary, "STOP");
    let during = "sent while the primary hangs".to_owned();
    send_acknowledged(&alice, "bob", &during);
    sent.push(during);
    let received = receive_all(&bob, &sent);
    let peers = std::fs::read_to_string(data.join("peers.toml")).expect("the peers file");
    assert!(
        peers.contains("127.0.1.3:"),
        "the standby's address is region 1's now: {peers}"
    );
    // The promoted standby serves the photo from its copy of the store.
    let photo_out = root.join("bob-photo.jpg");
    let written = bob.ok(&[
        "download",
        &photo_id,
        photo_out.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(
        events(&written, "file_written")[0]["bytes"],
        photo.len() as u64
    );
    assert!(
        std::fs::read(&photo_out).expect("the photo") == photo,
        "the photo differs after the failover"
    );

    // The old primary wakes up: its standby tells it it was promoted, and it stops for good.
    send_signal(primary, "CONT");
    devnet.wait_event(
        DEADLINE,
        |event| matches!(event, relay_devnet::DevnetEvent::Fenced { name } if name == "region-1"),
    );
    let after = "after the old primary came back".to_owned();
    send_acknowledged(&alice, "bob", &after);
    let mut received = [received, receive_all(&bob, std::slice::from_ref(&after))].concat();
    sent.push(after);

    // The promoted standby's process dies too: the devnet starts it again, and it serves as the
    // region again from its folder (not as a standby of the stale primary).
    let promoted = devnet
        .region(1)
        .standby_pid
        .expect("region 1 has a standby");
    send_signal(promoted, "KILL");
    devnet.wait_event(DEADLINE, |event| {
        matches!(event, relay_devnet::DevnetEvent::Restarted { name, .. } if name == "standby-1")
    });
    let later = "after the promoted standby restarted".to_owned();
    send_acknowledged(&alice, "bob", &later);
    received.extend(receive_all(&bob, std::slice::from_ref(&later)));
    sent.push(later);
    for text in &sent {
        assert_eq!(
            received.iter().filter(|seen| *seen == text).count(),
            1,
            "{text} arrived once: {received:?}"
        );
    }
}

fn failover(config: &std::path::Path, region: &str) -> std::process::Output {
    Command::new(relayd_bin())
        .args([
            "admin", "failover", "--json", "--region", region, "--config",
        ])
        .arg(config)
        .output()
        .expect("relayd admin failover runs")
}

#[test]
fn a_planned_failover_moves_the_region_to_its_standby_without_a_failed_send() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = root.join("devnet");
    let mut devnet = Devnet::start_with(1, &data, &["--standbys"]);
    let alice = Person::new(root, "alice");
    alice.register(&devnet, "127.0.1.10");
    let bob = Person::new(root, "bob");
    bob.register(&devnet, "127.0.1.11");
    let mut sent: Vec<String> = (0..4).map(|index| format!("before {index}")).collect();
    for text in &sent {
        assert!(acknowledged_at_once(&alice, "bob", text), "{text}");
    }
    let config = data.join("region-1.toml");

    // Refused, and nothing changes: another region's number, another certificate (the edge's).
    let wrong_region = failover(&config, "2");
    assert!(!wrong_region.status.success());
    // Under --json the error is one JSON object too.
    let error: Value = serde_json::from_slice(&wrong_region.stderr).unwrap_or_else(|error| {
        panic!(
            "one JSON error expected ({error}): {}",
            String::from_utf8_lossy(&wrong_region.stderr)
        )
    });
    assert_eq!(error["event"], "error");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|message| message.contains("--region 2")),
        "{error}"
    );
    let edge_config = root.join("region-1-with-the-edge-cert.toml");
    let text = std::fs::read_to_string(&config).expect("the region's configuration");
    std::fs::write(
        &edge_config,
        text.replace("pki/region-1.pem", "pki/edge-1.pem")
            .replace("pki/region-1.key", "pki/edge-1.key"),
    )
    .expect("written");
    let forbidden = failover(&edge_config, "1");
    assert!(!forbidden.status.success());
    let said = String::from_utf8_lossy(&forbidden.stderr);
    assert!(said.contains("own certificate"), "{said}");
    assert!(acknowledged_at_once(
        &alice,
        "bob",
        "still region 1's primary"
    ));
    sent.push("still region 1's primary".to_owned());

    // alice keeps sending while the operator fails the region over: every send is
    // acknowledged on its first try.
    let during = std::thread::scope(|scope| {
        let sending = scope.spawn(|| {
            let mut texts = Vec::new();
            for index in 0..8 {
                let text = format!("during {index}");
                assert!(
                    acknowledged_at_once(&alice, "bob", &text),
                    "{text} was not acknowledged at once"
                );
                texts.push(text);
            }
            texts
        });
        let output = failover(&config, "1");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines = json_lines(&output.stdout);
        let done = events(&lines, "failed_over");
        assert_eq!(done.len(), 1, "{lines:?}");
        assert!(done[0]["epoch"].as_u64().expect("epoch") >= 1);
        assert!(
            done[0]["address"]
                .as_str()
                .is_some_and(|address| address.starts_with("127.0.1.3:")),
            "the standby's address: {lines:?}"
        );
        sending.join().expect("the sender")
    });
    sent.extend(during);
    devnet.wait_event(
        DEADLINE,
        |event| matches!(event, relay_devnet::DevnetEvent::Fenced { name } if name == "region-1"),
    );
    let after = "after the planned failover".to_owned();
    assert!(acknowledged_at_once(&alice, "bob", &after));
    sent.push(after);
    let received = receive_all(&bob, &sent);
    for text in &sent {
        assert_eq!(
            received.iter().filter(|seen| *seen == text).count(),
            1,
            "{text} arrived once: {received:?}"
        );
    }

    // The promoted region ships to its own standby (`next-standby-1`, which got a full copy):
    // a second failover moves the region there, and nothing is lost on the way.
    let again = failover(&config, "1");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let lines = json_lines(&again.stdout);
    let done = events(&lines, "failed_over");
    assert!(
        done[0]["address"]
            .as_str()
            .is_some_and(|address| address.starts_with("127.0.1.4:")),
        "the next standby's address: {lines:?}"
    );
    assert!(done[0]["epoch"].as_u64().expect("epoch") >= 2);
    devnet.wait_event(
        DEADLINE,
        |event| matches!(event, relay_devnet::DevnetEvent::Fenced { name } if name == "standby-1"),
    );
    let last = "after the second failover".to_owned();
    assert!(acknowledged_at_once(&alice, "bob", &last));
    sent.push(last.clone());
    let received = [received, receive_all(&bob, std::slice::from_ref(&last))].concat();
    for text in &sent {
        assert_eq!(
            received.iter().filter(|seen| *seen == text).count(),
            1,
            "{text} arrived once: {received:?}"
        );
    }

    // That one runs without a standby of its own: a third failover is refused.
    let third = failover(&config, "1");
    assert!(!third.status.success());
    let said = String::from_utf8_lossy(&third.stderr);
    assert!(said.contains("no standby"), "{said}");
}
