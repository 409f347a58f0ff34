//! A client that survives its user, driving real `relayd devnet` and `relay` processes: a
//! sender's escape sequences reach the recipient's terminal escaped (and JSON exact); a message
//! is stored before any network attempt (a `relay send` killed while it tries loses nothing);
//! the last edge that worked is used while the locator is down; a silent directory writer is a
//! typed, plain error well before the client's own timeout; the device's secrets are not in its
//! database in plaintext; a damaged database is named as such.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Instant;

use relay_client::store::Store;
use serde_json::Value;
use support::{DEADLINE, Devnet, Person, eventually, json_lines, relay_bin, send_signal};

/// What a hostile sender types: clear the screen, set the window title, ring, return.
const HOSTILE: &str = "\x1b[2J\x1b]0;pwned\x07hi\r";
/// The same, as the recipient's terminal must show it.
const HOSTILE_SHOWN: &str = "\\x1b[2J\\x1b]0;pwned\\x07hi\\r";

fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == kind).collect()
}

/// Runs `relay --data <data> <args>` with human output (no `--json`).
fn run_human(person: &Person, args: &[&str]) -> Output {
    let output = Command::new(relay_bin())
        .arg("--data")
        .arg(&person.data)
        .args(args)
        .output()
        .expect("relay runs");
    eprintln!(
        "relay {} {args:?} (human) -> {}\nstdout: {}stderr: {}",
        person.name,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Whether `bytes` hold any byte a terminal acts on besides the line feed.
fn has_raw_controls(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .any(|&byte| (byte < 0x20 && byte != b'\n') || byte == 0x7f)
}

/// Sends SIGCONT to a paused process when dropped, whatever the test did meanwhile.
struct Paused(u32);

impl Paused {
    fn pause(pid: u32) -> Paused {
        send_signal(pid, "STOP");
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // No assertion here: a panic while unwinding from a failed check would abort the run.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.0.to_string())
            .status();
    }
}

/// A `relay` process with human output, its stdout lines on a channel.
struct HumanRunning {
    child: Child,
    lines: Receiver<String>,
}

impl HumanRunning {
    fn spawn(person: &Person, args: &[&str]) -> HumanRunning {
        let mut child = Command::new(relay_bin())
            .arg("--data")
            .arg(&person.data)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("relay starts");
        let stdout = child.stdout.take().expect("piped");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            // Raw bytes, split at line feeds only: a carriage return must not split a line.
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { return };
                if sender
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
        HumanRunning { child, lines }
    }

    fn wait_for(&mut self, predicate: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if predicate(&line) => return line,
                Ok(_) => continue,
                Err(_) => panic!("expected output not seen within {DEADLINE:?}"),
            }
        }
    }
}

impl Drop for HumanRunning {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sent_tick(lines: &[Value]) -> bool {
    events(lines, "tick")
        .iter()
        .any(|tick| tick["tick"] == "sent")
}

#[test]
fn escape_sequences_arrive_escaped_and_secrets_stay_sealed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let alice = Person::new(dir.path(), "alice");
    let bob = Person::new(dir.path(), "bob");
    alice.register(&devnet, "127.0.1.10");
    bob.register(&devnet, "127.0.2.10");

    // sync, human: the text is shown with its controls escaped, and no control byte is written.
    assert!(sent_tick(&alice.ok(&["send", "bob", HOSTILE])));
    let synced = run_human(&bob, &["sync"]);
    assert!(synced.status.success());
    let stdout = String::from_utf8_lossy(&synced.stdout);
    assert!(
        stdout.contains(&format!("alice: {HOSTILE_SHOWN}")),
        "{stdout:?}"
    );
    assert!(!has_raw_controls(&synced.stdout), "{stdout:?}");

    // sync, JSON: the text is exact for a JSON reader, and the line itself holds no control.
    let second = format!("{HOSTILE} again");
    assert!(sent_tick(&alice.ok(&["send", "bob", &second])));
    let output = bob.run(&["sync"]);
    assert!(output.status.success());
    assert!(!has_raw_controls(&output.stdout));
    let lines = json_lines(&output.stdout);
    assert_eq!(events(&lines, "message")[0]["text"], second.as_str());

    // listen, human: live messages are escaped too.
    let mut listening = HumanRunning::spawn(&bob, &["listen", "--timeout", "120"]);
    listening.wait_for(|line| line.starts_with("listening as bob"));
    let third = format!("{HOSTILE} live");
    assert!(sent_tick(&alice.ok(&["send", "bob", &third])));
    let line = listening.wait_for(|line| line.contains("live"));
    assert!(line.contains(&format!("{HOSTILE_SHOWN} live")), "{line:?}");
    assert!(!has_raw_controls(line.as_bytes()), "{line:?}");
    drop(listening);

    // history, human and JSON.
    let history = run_human(&bob, &["history", "alice"]);
    let stdout = String::from_utf8_lossy(&history.stdout);
    assert_eq!(stdout.matches(HOSTILE_SHOWN).count(), 3, "{stdout:?}");
    assert!(!has_raw_controls(&history.stdout), "{stdout:?}");
    let history = bob.ok(&["history", "alice"]);
    let texts: Vec<&str> = events(&history, "history")
        .iter()
        .map(|entry| entry["text"].as_str().expect("text"))
        .collect();
    assert_eq!(texts, vec![HOSTILE, second.as_str(), third.as_str()]);

    // The device's secrets: sealed in the database under a key kept beside it, never in it.
    alice.ok(&["sync"]);
    let key_path = alice.data.join("device.key");
    let key_hex = std::fs::read_to_string(&key_path).expect("the device key file");
    let key_hex = key_hex.trim();
    assert_eq!(key_hex.len(), 64);
    let key_raw: Vec<u8> = (0..64)
        .step_by(2)
        .map(|at| u8::from_str_radix(&key_hex[at..at + 2], 16).expect("hex"))
        .collect();
    let database = database_bytes(&alice.data);
    for needle in [
        key_hex.as_bytes(),
        key_raw.as_slice(),
        // Field names of the Olm account and session pickles: in plaintext they would show.
        b"\"signing_key\"",
        b"\"diffie_hellman_key\"",
        b"\"sending_ratchet\"",
        b"\"receiving_chains\"",
    ] {
        assert!(
            !contains(&database, needle),
            "{:?} is in relay.db",
            String::from_utf8_lossy(needle)
        );
    }
    assert!(
        contains(&database, b"sealed1:"),
        "the pickles are there, sealed"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&key_path), 0o600);
        assert_eq!(mode(&alice.data), 0o700);
        // Opened up by someone: the next command closes it again and says so.
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let output = alice.run(&["sync"]);
        assert!(output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("was open to other users"));
        assert_eq!(mode(&key_path), 0o600);
    }

    // The key kept elsewhere: without it the device says what is missing; with it, it works.
    let elsewhere = dir.path().join("alice-device.key");
    std::fs::rename(&key_path, &elsewhere).expect("move the key");
    let output = alice.run(&["sync"]);
    assert!(!output.status.success(), "no key, no device");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("device key") && stderr.contains("RELAY_DEVICE_KEY_FILE"),
        "{stderr}"
    );
    let output = Command::new(relay_bin())
        .arg("--data")
        .arg(&alice.data)
        .args(["--json", "sync"])
        .env("RELAY_DEVICE_KEY_FILE", &elsewhere)
        .output()
        .expect("relay runs");
    assert!(output.status.success(), "the key found where it is kept");
    // Another device's key is refused, and nothing is made up in its place.
    let output = Command::new(relay_bin())
        .arg("--data")
        .arg(&alice.data)
        .args(["--json", "sync"])
        .env("RELAY_DEVICE_KEY_FILE", bob.data.join("device.key"))
        .output()
        .expect("relay runs");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("does not open"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!key_path.exists());
}

#[test]
fn a_damaged_database_is_named_and_only_a_missing_one_is_unregistered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nobody = Person::new(dir.path(), "nobody");
    std::fs::create_dir_all(&nobody.data).expect("mkdir");
    let output = nobody.run(&["sync"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no registered device"));

    let database = nobody.data.join("relay.db");
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
    for (what, bytes) in [("empty", Vec::new()), ("garbage", garbage)] {
        std::fs::write(&database, &bytes).expect("write");
        for args in [&["sync"][..], &["history", "bob"], &["send", "bob", "hi"]] {
            let output = nobody.run(args);
            assert!(!output.status.success(), "{what}: {args:?}");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("is damaged")
                    && stderr.contains(
                        "restore it from a backup or register again in a new data directory"
                    )
                    && !stderr.contains("no registered device")
                    && !stderr.contains("panicked"),
                "{what}: {stderr}"
            );
        }
        assert_eq!(
            std::fs::read(&database).expect("read"),
            bytes,
            "left as it was"
        );
    }
}

#[test]
fn typed_messages_are_stored_at_once_and_the_last_edge_outlives_the_locator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let alice = Person::new(dir.path(), "alice");
    let bob = Person::new(dir.path(), "bob");
    let carol = Person::new(dir.path(), "carol");
    alice.register(&devnet, "127.0.1.10");
    bob.register(&devnet, "127.0.2.10");
    carol.register(&devnet, "127.0.2.11");
    assert!(sent_tick(&alice.ok(&["send", "bob", "warm-up"])));

    // alice's edge is paused: each send is stored and reported pending before any network
    // attempt; killed while it tries to connect, it loses nothing.
    let edge = devnet.region(1).edge_pid;
    let mut ids = Vec::new();
    {
        let _paused = Paused::pause(edge);
        for (peer, text) in [
            ("bob", "typed while the edge is paused"),
            ("carol", "to a name not resolved yet"),
        ] {
            let mut sending = alice.spawn(&["send", peer, text]);
            let pending = sending.wait_for(DEADLINE, |line| {
                line["event"] == "tick" && line["tick"] == "pending"
            });
            ids.push(pending["id"].as_str().expect("id").to_owned());
            // Still trying (the edge cannot answer while paused): the message is in the store.
            assert!(
                sending.child.try_wait().expect("status").is_none(),
                "the send is still trying"
            );
            let store = Store::open(&alice.data.join("relay.db")).expect("open alice's store");
            let stored = match peer {
                "bob" => store
                    .outbox()
                    .expect("outbox")
                    .iter()
                    .any(|row| row.client_message_id.to_string() == ids[ids.len() - 1]),
                _ => store.drafts().expect("drafts").iter().any(|draft| {
                    draft.client_message_id.to_string() == ids[ids.len() - 1]
                        && draft.peer_name == "carol"
                        && draft.text == text
                }),
            };
            assert!(stored, "{text:?} is stored while the command still tries");
            sending.child.kill().expect("SIGKILL the send mid-attempt");
            sending.child.wait().expect("reaped");
        }
    }
    // The next commands send both, under the ids they were given when typed.
    let mut sent_ids = Vec::new();
    eventually(DEADLINE, "the outbox and the draft are flushed", || {
        let lines = alice.ok(&["sync"]);
        for tick in events(&lines, "tick") {
            if tick["tick"] == "sent" {
                sent_ids.push(tick["id"].as_str().expect("id").to_owned());
            }
        }
        (events(&lines, "synced")[0]["pending"] == 0).then_some(())
    });
    for id in &ids {
        assert!(sent_ids.contains(id), "{id} sent: {sent_ids:?}");
    }
    let received = bob.ok(&["sync"]);
    assert!(
        events(&received, "message")
            .iter()
            .any(|m| m["text"] == "typed while the edge is paused" && m["id"] == ids[0].as_str())
    );
    let received = carol.ok(&["sync"]);
    assert!(
        events(&received, "message")
            .iter()
            .any(|m| m["text"] == "to a name not resolved yet" && m["id"] == ids[1].as_str())
    );

    // The locator stops answering: every command uses the last edge that worked.
    let locator = devnet.ready.locator_pid;
    let _paused = Paused::pause(locator);
    let output = bob.run(&["sync"]);
    assert!(output.status.success(), "sync works without the locator");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("trying the last edge that worked"),
        "the note says why"
    );
    let lines = alice.ok(&["send", "bob", "while the locator is down"]);
    assert!(
        sent_tick(&lines),
        "send works without the locator: {lines:?}"
    );
    let received = bob.ok(&["sync"]);
    assert!(
        events(&received, "message")
            .iter()
            .any(|m| m["text"] == "while the locator is down")
    );
}

#[test]
fn a_silent_directory_writer_is_a_typed_plain_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let bob = Person::new(dir.path(), "bob");
    let carol = Person::new(dir.path(), "carol");
    let dave = Person::new(dir.path(), "dave");
    let erin = Person::new(dir.path(), "erin");
    bob.register(&devnet, "127.0.2.10");
    carol.register(&devnet, "127.0.1.10");
    erin.register(&devnet, "127.0.1.11");
    assert!(sent_tick(&bob.ok(&["send", "erin", "warm-up"])));
    const DIRECTORY_DOWN: &str =
        "the directory is unavailable (region 1 did not answer); try again in a minute";

    let writer = devnet.region(1).service_pid;
    {
        let _paused = Paused::pause(writer);
        // Registering in region 2 needs the writer to keep names unique.
        let started = Instant::now();
        let output = dave.run(&[
            "register",
            "dave",
            "--locator",
            &devnet.locator(),
            "--bind",
            "127.0.2.11",
            "--ca",
            &devnet.ca(),
        ]);
        let took = started.elapsed();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(DIRECTORY_DOWN), "{stderr}");
        assert!(
            !stderr.contains("timed out"),
            "a typed answer, not a timeout: {stderr}"
        );
        eprintln!("register answered in {took:?}");

        // A name bob's region does not know is asked of the writer: the message waits as a
        // draft, and the reason is the same plain one.
        let started = Instant::now();
        let lines = bob.ok(&["send", "carol", "hello carol"]);
        let took = started.elapsed();
        let pending = events(&lines, "still_pending");
        assert_eq!(pending.len(), 1, "{lines:?}");
        assert_eq!(pending[0]["reason"], DIRECTORY_DOWN);
        assert_eq!(pending[0]["peer"], "carol");
        eprintln!("send answered in {took:?}");

        // A message to erin, homed in the paused region: the edge answers in time, so the
        // reason left with the pending message is typed (busy, or unreachable once the edge has
        // dropped its link), never the client's own timeout.
        let lines = bob.ok(&["send", "erin", "while region 1 is paused"]);
        let pending = events(&lines, "still_pending");
        assert_eq!(pending.len(), 1, "{lines:?}");
        let reason = pending[0]["reason"].as_str().expect("reason");
        assert!(
            reason.starts_with("the server is busy; retry in 2 s")
                || reason
                    .starts_with("part of the service is unreachable (region 1 is unreachable"),
            "{reason}"
        );
    }

    // The writer is back: the draft goes out, and registering works with the same keys.
    eventually(DEADLINE, "bob's draft is sent", || {
        let lines = bob.ok(&["sync"]);
        (events(&lines, "synced")[0]["pending"] == 0).then_some(())
    });
    let received = carol.ok(&["sync"]);
    assert!(
        events(&received, "message")
            .iter()
            .any(|m| m["text"] == "hello carol" && m["from"] == "bob")
    );
    let received = erin.ok(&["sync"]);
    assert!(
        events(&received, "message")
            .iter()
            .any(|m| m["text"] == "while region 1 is paused")
    );
    eventually(DEADLINE, "dave registers", || {
        let output = dave.run(&["register", "dave"]);
        output.status.success().then_some(())
    });
}

fn database_bytes(data: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(data.join("relay.db")).expect("relay.db");
    if let Ok(log) = std::fs::read(data.join("relay.db-wal")) {
        bytes.extend(log);
    }
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
