//! The `relay` binary as a newcomer uses it, against a real deployment started in this test
//! process (relay_devnet's testbed on loopback): texts from standard input, `send --wait`
//! following its own message, errors as JSON with `--json`, a failed `register` leaving nothing
//! behind, the system's roots when no `--ca` is given, `blob put` / `blob get` between two
//! accounts, groups managed from both regions (README journey 17), receipts per device with
//! read receipts turned off on either side (README journey 18), group messages (19), and
//! presence with each privacy setting and typing that ends by itself (20).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use relay_devnet::testbed::Testbed;
use serde_json::Value;

/// Generous: the machine is shared.
const DEADLINE: Duration = Duration::from_secs(60);

/// A testbed whose services run on their own threads while the test blocks on `relay`.
struct Deployment {
    runtime: tokio::runtime::Runtime,
    testbed: Option<Testbed>,
}

impl Deployment {
    fn start(regions: u32) -> Deployment {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let testbed = runtime.block_on(Testbed::start(regions)).expect("testbed");
        Deployment {
            runtime,
            testbed: Some(testbed),
        }
    }

    fn testbed(&self) -> &Testbed {
        self.testbed.as_ref().expect("running")
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Some(testbed) = self.testbed.take() {
            self.runtime.block_on(testbed.stop());
        }
    }
}

fn relay(data: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relay"));
    command.arg("--data").arg(data).args(args);
    command
}

fn run(mut command: Command, stdin: Option<&[u8]>) -> Output {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("relay starts");
    if let Some(bytes) = stdin {
        let mut input = child.stdin.take().expect("piped");
        input.write_all(bytes).expect("write stdin");
    }
    let until = Instant::now() + DEADLINE;
    while child.try_wait().expect("status").is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("relay did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    eprintln!(
        "{command:?} -> {}\nstdout: {}stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn json_lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line:?}: {error}")))
        .collect()
}

fn register(deployment: &Deployment, data: &Path, name: &str, region: u32) {
    let testbed = deployment.testbed();
    let output = run(
        relay(
            data,
            &[
                "--json",
                "register",
                name,
                "--locator",
                &testbed.locator().to_string(),
                "--bind",
                &testbed.client_bind(region).to_string(),
                "--ca",
                &testbed.ca().display().to_string(),
            ],
        ),
        None,
    );
    assert!(output.status.success(), "{name} registers");
}

fn people(deployment: &Deployment, root: &Path) -> (PathBuf, PathBuf) {
    let (alice, bob) = (root.join("alice"), root.join("bob"));
    register(deployment, &alice, "alice", 1);
    register(deployment, &bob, "bob", 2);
    (alice, bob)
}

#[test]
fn a_text_from_standard_input_arrives_exactly_and_a_long_one_is_refused() {
    let deployment = Deployment::start(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let (alice, bob) = people(&deployment, dir.path());
    // Many lines, quotes and a 20 KiB body: awkward as an argument, plain on standard input.
    let text = format!(
        "line one\n\"quoted\" and 'single'\n{}",
        "x".repeat(20 * 1024)
    );
    let mut piped = text.clone().into_bytes();
    piped.push(b'\n');
    let sent = run(relay(&alice, &["--json", "send", "bob", "-"]), Some(&piped));
    assert!(sent.status.success());
    assert!(
        json_lines(&sent.stdout)
            .iter()
            .any(|line| line["tick"] == "sent")
    );
    let synced = run(relay(&bob, &["--json", "sync"]), None);
    let messages: Vec<Value> = json_lines(&synced.stdout)
        .into_iter()
        .filter(|line| line["event"] == "message")
        .collect();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0]["text"],
        text.as_str(),
        "exact, but for the newline echo adds"
    );

    // Longer than a text may be: a clear error, exit code 1, and nothing stored or sent.
    let long = vec![b'y'; 40 * 1024];
    let refused = run(relay(&alice, &["send", "bob", "-"]), Some(&long));
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("longer than 32768 bytes"), "{stderr}");
    assert!(refused.stdout.is_empty(), "not even pending");
    let invalid = run(
        relay(&alice, &["send", "bob", "-"]),
        Some(&[0xff, 0xfe, b'\n']),
    );
    assert_eq!(invalid.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("not UTF-8"));
}

#[test]
fn send_wait_follows_its_own_message_only() {
    let deployment = Deployment::start(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let (alice, bob) = people(&deployment, dir.path());
    assert!(
        run(relay(&alice, &["send", "bob", "warm-up"]), None)
            .status
            .success()
    );
    // An earlier message waits in alice's outbox (no edge could be found for it: the locator
    // is not where she looks, and neither is the last edge that worked).
    {
        let mut store =
            relay_client::store::Store::open(&alice.join("relay.db")).expect("alice's store");
        let nowhere = "127.0.0.1:9".parse().expect("address");
        store
            .write(|writer| writer.set_last_edge(nowhere))
            .expect("forget the last edge");
    }
    let queued = run(
        relay(
            &alice,
            &[
                "--json",
                "--locator",
                "127.0.0.1:9",
                "send",
                "bob",
                "earlier",
            ],
        ),
        None,
    );
    let queued = json_lines(&queued.stdout);
    assert_eq!(queued[1]["event"], "still_pending", "{queued:?}");
    let earlier = queued[0]["id"].clone();
    // bob listens, so that the wait sees delivered; alice's next command sends both.
    let mut listening = relay(&bob, &["--json", "listen", "--timeout", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("listen");
    let waited = run(
        relay(
            &alice,
            &[
                "--json",
                "send",
                "bob",
                "mine",
                "--until",
                "delivered",
                "--timeout",
                "60",
            ],
        ),
        None,
    );
    let _ = listening.kill();
    let _ = listening.wait();
    assert!(waited.status.success());
    let ticks: Vec<Value> = json_lines(&waited.stdout)
        .into_iter()
        .filter(|line| line["event"] == "tick")
        .collect();
    let mine = ticks[0]["id"].clone();
    assert_ne!(mine, earlier);
    assert!(
        ticks.iter().all(|tick| tick["id"] == mine),
        "only its own ticks: {ticks:?}"
    );
    let seen: Vec<&str> = ticks
        .iter()
        .filter_map(|tick| tick["tick"].as_str())
        .collect();
    assert_eq!(seen.first(), Some(&"pending"));
    assert_eq!(seen.last(), Some(&"delivered"));
    // The earlier one went too, and said so to whoever follows all of alice's messages.
    let history = run(relay(&alice, &["--json", "history", "bob"]), None);
    assert!(
        json_lines(&history.stdout)
            .iter()
            .any(|entry| { entry["id"] == earlier && entry["tick"] != "pending" })
    );
}

#[test]
fn with_json_errors_are_json_on_stderr_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nobody = dir.path().join("nobody");
    let output = run(relay(&nobody, &["--json", "sync"]), None);
    assert_eq!(output.status.code(), Some(1));
    let errors = json_lines(&output.stderr);
    assert_eq!(errors.len(), 1, "one JSON object");
    assert_eq!(errors[0]["event"], "error");
    assert_eq!(errors[0]["code"], "not_registered");
    assert_eq!(errors[0]["exit_code"], 1);
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|message| message.contains("no registered device")),
        "{errors:?}"
    );
    // A usage mistake, before the arguments even parse.
    let output = run(relay(&nobody, &["--json", "send", "bob"]), None);
    assert_eq!(output.status.code(), Some(2));
    let errors = json_lines(&output.stderr);
    assert_eq!(errors[0]["code"], "usage");
    assert_eq!(errors[0]["exit_code"], 2);
    // Without --json, the same error is a line for people.
    let output = run(relay(&nobody, &["sync"]), None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: ") && !stderr.contains('{'),
        "{stderr}"
    );
}

#[test]
fn a_failed_registration_leaves_nothing_behind_but_what_was_there() {
    let deployment = Deployment::start(1);
    let testbed = deployment.testbed();
    let dir = tempfile::tempdir().expect("tempdir");
    let locator = testbed.locator().to_string();
    let bind = testbed.client_bind(1).to_string();
    let ca = testbed.ca().display().to_string();
    let attempt = |data: &Path, locator: &str| {
        run(
            relay(
                data,
                &[
                    "register",
                    "alice",
                    "--locator",
                    locator,
                    "--bind",
                    &bind,
                    "--ca",
                    &ca,
                ],
            ),
            None,
        )
    };

    // No edge answers (a locator nobody runs): the new directory is removed again.
    let fresh = dir.path().join("fresh");
    assert_eq!(attempt(&fresh, "127.0.0.1:9").status.code(), Some(1));
    assert!(!fresh.exists(), "no half-made data directory");

    // A directory the user had, with a file of theirs: kept, with the file, and nothing else.
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).expect("mkdir");
    std::fs::write(mine.join("notes.txt"), b"keep me").expect("a file");
    assert_eq!(attempt(&mine, "127.0.0.1:9").status.code(), Some(1));
    let left: Vec<String> = std::fs::read_dir(&mine)
        .expect("still there")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(left, vec!["notes.txt".to_owned()]);

    // The name is taken: the relay said so, and nothing of the attempt stays.
    register(&deployment, &dir.path().join("alice"), "alice", 1);
    let second = dir.path().join("alice-again");
    let output = attempt(&second, &locator);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("NameTaken"));
    assert!(!second.exists());
}

#[test]
fn without_ca_the_system_roots_are_trusted() {
    let deployment = Deployment::start(1);
    let testbed = deployment.testbed();
    let dir = tempfile::tempdir().expect("tempdir");
    let locator = testbed.locator().to_string();
    let bind = testbed.client_bind(1).to_string();
    let register_args = [
        "--json",
        "register",
        "alice",
        "--locator",
        &locator,
        "--bind",
        &bind,
    ];
    // A system whose roots do not hold the testbed's CA refuses its edges; nothing is left.
    let alice = dir.path().join("alice");
    let mut command = relay(&alice, &register_args);
    command.env("SSL_CERT_FILE", dir.path().join("no-roots.pem"));
    command.env("SSL_CERT_DIR", dir.path().join("no-roots"));
    let output = run(command, None);
    assert_eq!(output.status.code(), Some(1));
    assert!(!alice.exists());
    // A system that trusts it (as everyone trusts a public deployment's edges): registered
    // without --ca, and later commands go on trusting the system.
    let trusting = |mut command: Command| {
        command
            .env("SSL_CERT_FILE", testbed.ca())
            .env_remove("SSL_CERT_DIR");
        command
    };
    let output = run(trusting(relay(&alice, &register_args)), None);
    assert!(output.status.success());
    assert!(!alice.join("ca.pem").exists(), "no CA of its own");
    register(&deployment, &dir.path().join("bob"), "bob", 1);
    let output = run(
        trusting(relay(
            &alice,
            &["--json", "send", "bob", "trusted by the system"],
        )),
        None,
    );
    assert!(
        json_lines(&output.stdout)
            .iter()
            .any(|line| line["tick"] == "sent")
    );
}

#[test]
fn blob_put_prints_a_reference_that_blob_get_opens_on_another_account() {
    let deployment = Deployment::start(2);
    let root = tempfile::tempdir().expect("tempdir");
    let (alice, bob) = people(&deployment, root.path());
    let file = root.path().join("photo.bin");
    let contents: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &contents).expect("write the file");

    let file_arg = file.display().to_string();
    let put = run(relay(&alice, &["--json", "blob", "put", &file_arg]), None);
    assert!(put.status.success(), "blob put failed");
    let lines = json_lines(&put.stdout);
    let reference = lines
        .iter()
        .find(|line| line["event"] == "blob")
        .and_then(|line| line["ref"].as_str())
        .expect("a blob line with its reference")
        .to_owned();
    assert!(reference.starts_with("relay-blob:2:"));

    let out = root.path().join("photo-copy.bin");
    let out_arg = out.display().to_string();
    let get = run(relay(&bob, &["blob", "get", &reference, &out_arg]), None);
    assert!(get.status.success(), "blob get failed");
    assert!(String::from_utf8_lossy(&get.stdout).contains("wrote 300000 bytes"));
    assert_eq!(std::fs::read(&out).expect("read the copy"), contents);

    // A damaged reference is refused plainly, and nothing is written.
    let damaged = format!("{}x", &reference[..reference.len() - 1]);
    let other = root.path().join("never.bin");
    let other_arg = other.display().to_string();
    let refused = run(
        relay(&bob, &["--json", "blob", "get", &damaged, &other_arg]),
        None,
    );
    assert_eq!(refused.status.code(), Some(1));
    let error = json_lines(&refused.stderr);
    assert!(
        error.iter().any(|line| line["event"] == "error"),
        "a JSON error: {error:?}"
    );
    assert!(!other.exists());
}

/// `relay --json group ARGS` (or `relay --json groups` with `args` empty) as `data`'s device:
/// its stdout events, or its stderr error object when it fails.
fn group(data: &Path, args: &[&str]) -> Result<Vec<Value>, Value> {
    let mut all = vec!["--json"];
    if args.is_empty() {
        all.push("groups");
    } else {
        all.push("group");
        all.extend_from_slice(args);
    }
    let output = run(relay(data, &all), None);
    if output.status.success() {
        Ok(json_lines(&output.stdout))
    } else {
        let errors = json_lines(&output.stderr);
        assert_eq!(errors.len(), 1, "one JSON error");
        Err(errors[0].clone())
    }
}

/// The members of the group in `events` as (name, admin), in account order.
fn members(events: &[Value]) -> Vec<(String, bool)> {
    events
        .iter()
        .filter(|event| event["event"] == "group_member")
        .map(|event| {
            (
                event["name"].as_str().expect("name").to_owned(),
                event["admin"].as_bool().expect("admin"),
            )
        })
        .collect()
}

fn refused_because(error: &Value, words: &str) {
    assert_eq!(error["code"], "refused", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|message| message.contains(words)),
        "{error} should say {words:?}"
    );
}

#[test]
fn groups_are_created_and_managed_from_both_regions_by_their_admins_only() {
    let deployment = Deployment::start(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let (alice, bob) = people(&deployment, dir.path());
    let (carol, dave) = (dir.path().join("carol"), dir.path().join("dave"));
    register(&deployment, &carol, "carol", 1);
    register(&deployment, &dave, "dave", 2);

    // alice (region 1, the directory writer's) creates it; she is its admin.
    let created = group(&alice, &["create", "friends", "bob", "carol"]).expect("created");
    assert_eq!(created[0]["event"], "group");
    assert_eq!(created[0]["name"], "friends");
    assert_eq!(created[0]["member_count"], 3);
    let id = created[0]["id"].as_u64().expect("id").to_string();
    let g = id.as_str();
    assert_eq!(
        members(&created),
        [
            ("alice".into(), true),
            ("bob".into(), false),
            ("carol".into(), false)
        ]
    );

    // bob (region 2: forwarded to the writer) is a member, not an admin.
    refused_because(
        &group(&bob, &["rename", g, "mine"]).expect_err("not an admin"),
        "only an admin",
    );
    refused_because(
        &group(&bob, &["add", g, "dave"]).expect_err("not an admin"),
        "only an admin",
    );
    group(&alice, &["admin", g, "bob"]).expect("bob made an admin");
    let renamed = group(&bob, &["rename", g, "best friends"]).expect("renamed");
    assert_eq!(renamed[0]["name"], "best friends");
    let added = group(&bob, &["add", g, "dave"]).expect("dave added");
    assert_eq!(added[0]["member_count"], 4);

    // Bad input changes nothing and says why.
    let version = added[0]["version"].as_u64().expect("version");
    let unknown = group(&alice, &["add", g, "dave", "nobody-by-that-name"]).expect_err("unknown");
    assert_eq!(unknown["code"], "unknown_peer", "{unknown}");
    assert!(
        unknown["message"]
            .as_str()
            .is_some_and(|m| m.contains("nobody-by-that-name"))
    );
    let empty = group(&alice, &["create", ""]).expect_err("an empty name");
    assert_eq!(empty["code"], "invalid", "{empty}");
    let long = group(&alice, &["rename", g, &"x".repeat(129)]).expect_err("a long name");
    assert!(
        long["message"]
            .as_str()
            .is_some_and(|m| m.contains("longer than 128"))
    );
    let info = group(&alice, &["info", g]).expect("info");
    assert_eq!(
        info[0]["version"].as_u64(),
        Some(version),
        "nothing changed"
    );

    // Every member lists it; carol, removed, no longer sees it.
    let listed = group(&carol, &[]).expect("carol's groups");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "best friends");
    group(&alice, &["remove", g, "carol"]).expect("carol removed");
    refused_because(
        &group(&carol, &["info", g]).expect_err("carol is out"),
        "unknown group",
    );
    assert!(group(&carol, &[]).expect("carol's groups").is_empty());

    // Admins leave; a group with members never stays without one.
    let left = group(&alice, &["leave", g]).expect("alice leaves");
    assert_eq!(left[0]["event"], "group_left");
    group(&bob, &["leave", g]).expect("bob leaves");
    let info = group(&dave, &["info", g]).expect("dave's view");
    assert_eq!(info[0]["member_count"], 1);
    assert_eq!(members(&info), [("dave".into(), true)], "dave promoted");
    refused_because(
        &group(&dave, &["admin", g, "dave", "--off"]).expect_err("the last admin"),
        "the only admin",
    );
}

/// The texts of the group messages among `events`.
fn group_texts(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|event| event["event"] == "group_message")
        .map(|event| event["text"].as_str().expect("text").to_owned())
        .collect()
}

/// Journey 19: group messages through the `relay` binary, members in both regions.
#[test]
fn group_messages_reach_every_member_in_both_regions_and_no_one_removed() {
    let deployment = Deployment::start(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let (alice, bob) = people(&deployment, dir.path());
    let (carol, dave) = (dir.path().join("carol"), dir.path().join("dave"));
    register(&deployment, &carol, "carol", 1);
    register(&deployment, &dave, "dave", 2);
    let created = group(&alice, &["create", "friends", "bob", "carol", "dave"]).expect("created");
    let id = created[0]["id"].as_u64().expect("id").to_string();
    let g = id.as_str();

    // alice sends and waits for ✓ (every region homing a member stored it).
    let sent = ok(&alice, &["send-group", g, "hello friends"]);
    let ticks: Vec<&str> = sent
        .iter()
        .filter(|event| event["event"] == "group_tick")
        .map(|event| event["tick"].as_str().expect("tick"))
        .collect();
    assert_eq!(ticks, ["pending", "sent"], "{sent:?}");
    for member in [&bob, &carol, &dave] {
        let synced = ok(member, &["sync"]);
        assert_eq!(group_texts(&synced), ["hello friends"], "{synced:?}");
        let from: Vec<&str> = synced
            .iter()
            .filter(|event| event["event"] == "group_message")
            .map(|event| event["from"].as_str().expect("from"))
            .collect();
        assert_eq!(from, ["alice"]);
    }
    // Every member device fetched it: alice's --wait sees ✓✓ for her next one at once after
    // they sync again.
    let waiting = relay(
        &alice,
        &[
            "--json",
            "send-group",
            g,
            "second",
            "--until",
            "delivered",
            "--timeout",
            "60",
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("send-group --wait starts");
    for member in [&bob, &carol, &dave] {
        let until = Instant::now() + DEADLINE;
        while !group_texts(&ok(member, &["sync"])).contains(&"second".to_owned()) {
            assert!(
                Instant::now() < until,
                "the second message reaches every member"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let waited = waiting.wait_with_output().expect("send-group --wait ends");
    assert!(waited.status.success(), "{waited:?}");
    let waited = json_lines(&waited.stdout);
    let delivered = waited
        .iter()
        .find(|event| event["event"] == "group_tick" && event["tick"] == "delivered")
        .expect("delivered");
    // `relay info` shows the message and each member device it went to, each delivered.
    let id = delivered["id"].as_str().expect("id");
    let info = ok(&alice, &["info", &id[..12]]);
    assert_eq!(info[0]["event"], "group_message", "{info:?}");
    assert_eq!(info[0]["tick"], "delivered");
    let states: Vec<&str> = info[1..]
        .iter()
        .map(|event| event["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["delivered"; 3], "{info:?}");

    // bob (region 2) writes back; carol is removed, and the next message does not reach her.
    ok(&bob, &["send-group", g, "hi from bob"]);
    group(&alice, &["remove", g, "carol"]).expect("carol removed");
    ok(&alice, &["send-group", g, "carol has left"]);
    for member in [&bob, &dave] {
        let until = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        while !seen.contains(&"carol has left".to_owned()) {
            assert!(Instant::now() < until, "{seen:?}");
            seen.extend(group_texts(&ok(member, &["sync"])));
        }
    }
    ok(&carol, &["sync"]);
    let history = ok(&carol, &["group", "history", g]);
    assert_eq!(
        group_texts(&history),
        ["hello friends", "second", "hi from bob"],
        "{history:?}"
    );
    let history = ok(&dave, &["group", "history", g]);
    assert_eq!(
        group_texts(&history),
        ["hello friends", "second", "hi from bob", "carol has left"]
    );
    // The sender's history holds its own messages, and bob's once fetched.
    ok(&alice, &["sync"]);
    let history = ok(&alice, &["group", "history", g]);
    assert_eq!(
        group_texts(&history),
        ["hello friends", "second", "hi from bob", "carol has left"]
    );

    // bob and dave read: alice's last message goes to read once both have (read by all), and
    // `relay info` shows who read it.
    let last = ok(&alice, &["group", "history", g]);
    let last_id = last
        .iter()
        .rev()
        .find(|event| event["text"] == "carol has left")
        .and_then(|event| event["id"].as_str())
        .expect("alice's last message")
        .to_owned();
    let marked = ok(&bob, &["group", "read", g]);
    assert!(marked.iter().any(|event| event["event"] == "marked_read"));
    ok(&alice, &["sync"]);
    let info = ok(&alice, &["info", &last_id[..12]]);
    assert_eq!(
        info[0]["tick"], "delivered",
        "dave has not read it: {info:?}"
    );
    ok(&dave, &["group", "read", g]);
    let synced = ok(&alice, &["sync"]);
    assert!(
        synced.iter().any(|event| event["event"] == "group_tick"
            && event["tick"] == "read"
            && event["id"] == last_id.as_str()),
        "{synced:?}"
    );
    let info = ok(&alice, &["info", &last_id[..12]]);
    let states: Vec<&str> = info[1..]
        .iter()
        .map(|event| event["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["read", "read"], "{info:?}");

    // carol is no longer a member: her text fails with a reason, and nothing is sent.
    let refused = run(
        relay(&carol, &["--json", "send-group", g, "let me back"]),
        None,
    );
    assert!(!refused.status.success());
    let errors = json_lines(&refused.stderr);
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|message| message.contains("not a member")),
        "{errors:?}"
    );
    // A group that does not exist, the same.
    let refused = run(
        relay(&alice, &["--json", "send-group", "999", "anyone?"]),
        None,
    );
    assert!(!refused.status.success());

    // Typing in the group's chat goes through the edge (the SDK's journey checks who sees it).
    let typed = ok(&alice, &["group", "typing", g]);
    assert_eq!(
        (&typed[0]["event"], &typed[0]["group"], &typed[0]["typing"]),
        (
            &Value::from("typing_sent"),
            &Value::from(g.parse::<u64>().expect("an id")),
            &Value::from(true)
        ),
        "{typed:?}"
    );
    let stopped = ok(&alice, &["group", "typing", g, "--stop"]);
    assert_eq!(stopped[0]["typing"], false, "{stopped:?}");
}

/// Runs `work` for each item, at most 8 at a time (each runs `relay` processes).
fn in_parallel<T: Sync>(items: &[T], work: impl Fn(&T) + Sync) {
    for chunk in items.chunks(8) {
        std::thread::scope(|scope| {
            for item in chunk {
                scope.spawn(|| work(item));
            }
        });
    }
}

/// Issue 13's journey at size through the `relay` binary: fifty members homed in both regions
/// each read the group's messages; a removed member reads nothing after; a member's laptop,
/// linked mid-stream, reads what follows and nothing before.
#[test]
fn fifty_members_in_two_regions_a_removal_and_a_laptop_linked_mid_stream() {
    const MEMBERS: usize = 50;
    let deployment = Deployment::start(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let people: Vec<(String, PathBuf, u32)> = (0..MEMBERS)
        .map(|index| {
            let name = format!("m{index:02}");
            let data = dir.path().join(&name);
            (name, data, 1 + (index % 2) as u32)
        })
        .collect();
    in_parallel(&people, |(name, data, region)| {
        register(&deployment, data, name, *region)
    });
    let mut create = vec!["create", "fifty"];
    create.extend(people[1..].iter().map(|(name, _, _)| name.as_str()));
    let created = group(&people[0].1, &create).expect("created");
    assert_eq!(created[0]["member_count"], MEMBERS);
    let id = created[0]["id"].as_u64().expect("id").to_string();
    let g = id.as_str();
    let sender = &people[0].1;

    ok(sender, &["send-group", g, "hello fifty"]);
    in_parallel(&people[1..], |(name, data, _)| {
        let synced = ok(data, &["sync"]);
        assert_eq!(group_texts(&synced), ["hello fifty"], "{name}: {synced:?}");
    });

    // The last member is removed; member 1 (region 2) links a laptop.
    let (gone_name, gone, _) = &people[MEMBERS - 1];
    group(sender, &["remove", g, gone_name]).expect("removed");
    ok(sender, &["send-group", g, "forty-nine left"]);
    let laptop = dir.path().join("m01-laptop");
    link(&deployment, &people[1].1, &laptop, 2);
    ok(sender, &["send-group", g, "hello laptop"]);

    let until = Instant::now() + DEADLINE;
    let mut laptop_texts = Vec::new();
    while !laptop_texts.contains(&"hello laptop".to_owned()) {
        assert!(
            Instant::now() < until,
            "the laptop reads what follows its link"
        );
        laptop_texts.extend(group_texts(&ok(&laptop, &["sync"])));
    }
    assert_eq!(
        group_texts(&ok(&laptop, &["group", "history", g])),
        ["hello laptop"],
        "nothing from before its link"
    );
    in_parallel(&people[1..MEMBERS - 1], |(name, data, _)| {
        let synced = ok(data, &["sync"]);
        assert_eq!(
            group_texts(&synced),
            ["forty-nine left", "hello laptop"],
            "{name}: {synced:?}"
        );
    });
    ok(gone, &["sync"]);
    assert_eq!(
        group_texts(&ok(gone, &["group", "history", g])),
        ["hello fifty"],
        "the removed member holds nothing sent after"
    );
}

/// Runs `relay --json ARGS` on `data`, which must succeed; its stdout's JSON lines.
fn ok(data: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let output = run(relay(data, &all), None);
    assert!(output.status.success(), "relay {args:?} succeeds");
    json_lines(&output.stdout)
}

/// Links a new device of the account in `existing` into `new` (region `region`): `relay link`
/// on the existing device, `relay link-accept` with its code on the new one.
fn link(deployment: &Deployment, existing: &Path, new: &Path, region: u32) {
    use std::io::BufRead;
    let mut linking = relay(existing, &["--json", "link", "--timeout", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("relay link starts");
    let stdout = linking.stdout.take().expect("piped");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let code = loop {
        let line = lines
            .next()
            .expect("relay link prints its code")
            .expect("a line");
        let event: Value = serde_json::from_str(&line).expect("json");
        if event["event"] == "pairing_code" {
            break event["code"].as_str().expect("code").to_owned();
        }
    };
    let testbed = deployment.testbed();
    let accepted = run(
        relay(
            new,
            &[
                "--json",
                "link-accept",
                &code,
                "--locator",
                &testbed.locator().to_string(),
                "--bind",
                &testbed.client_bind(region).to_string(),
                "--ca",
                &testbed.ca().display().to_string(),
            ],
        ),
        None,
    );
    assert!(accepted.status.success(), "the new device is linked");
    for _ in lines {} // Until `relay link` is done and closes its stdout.
    assert!(linking.wait().expect("relay link exits").success());
}

/// `relay info MSG` on `data`: the message's tick and each recipient device's state, by
/// `account/device`.
fn info(data: &Path, id: &str) -> (String, Vec<(String, String)>) {
    let events = ok(data, &["info", &id[..8]]);
    assert_eq!(events[0]["event"], "history", "{events:?}");
    assert_eq!(events[0]["id"], id);
    let tick = events[0]["tick"].as_str().expect("outgoing").to_owned();
    let devices = events[1..]
        .iter()
        .map(|event| {
            assert_eq!(event["event"], "receipt", "{event}");
            assert!(
                event["at_ms"].is_u64() == (event["state"] != "pending"),
                "a time once past pending: {event}"
            );
            (
                event["device"].as_str().expect("device").to_owned(),
                event["state"].as_str().expect("state").to_owned(),
            )
        })
        .collect();
    (tick, devices)
}

/// alice sends `text` to bob; the message's id.
fn send(alice: &Path, text: &str) -> String {
    ok(alice, &["send", "bob", text])
        .iter()
        .find(|event| event["event"] == "tick" && event["tick"] == "sent")
        .and_then(|event| event["id"].as_str())
        .expect("sent")
        .to_owned()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(device, state)| (device.to_string(), state.to_string()))
        .collect()
}

#[test]
fn receipts_per_device_and_read_receipts_off_in_both_directions() {
    let deployment = Deployment::start(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let (alice, bob) = people(&deployment, dir.path());
    let laptop = dir.path().join("bob-laptop");
    link(&deployment, &bob, &laptop, 2);
    let bob_devices = ok(&bob, &["devices"]);
    assert_eq!(bob_devices.len(), 2, "{bob_devices:?}");
    let (phone_id, laptop_id) = {
        let this = bob_devices
            .iter()
            .find(|device| device["this_device"] == true)
            .expect("this device");
        let other = bob_devices
            .iter()
            .find(|device| device["this_device"] == false)
            .expect("the laptop");
        (this["device"].clone(), other["device"].clone())
    };
    // alice's first message; bob's account number from its recipients.
    let first = send(&alice, "one");
    let known = ok(&alice, &["devices", "bob"]);
    assert_eq!(known.len(), 2, "alice encrypted for both of bob's devices");
    let (tick, devices) = info(&alice, &first);
    assert_eq!(tick, "sent");
    assert_eq!(devices.len(), 2, "{devices:?}");
    let account = devices[0].0.split('/').next().expect("account").to_owned();
    let phone = format!("{account}/{phone_id}");
    let laptop_device = format!("{account}/{laptop_id}");
    let states = |list: &[(&str, &str)]| {
        let mut expected = pairs(list);
        expected.sort();
        expected
    };
    assert_eq!(
        devices,
        states(&[(&phone, "sent"), (&laptop_device, "sent")])
    );

    // The phone fetches it: delivered there; the tick waits for the laptop.
    ok(&bob, &["sync"]);
    ok(&alice, &["sync"]);
    assert_eq!(
        info(&alice, &first),
        (
            "sent".into(),
            states(&[(&phone, "delivered"), (&laptop_device, "sent")])
        )
    );
    ok(&laptop, &["sync"]);
    ok(&alice, &["sync"]);
    assert_eq!(
        info(&alice, &first),
        (
            "delivered".into(),
            states(&[(&phone, "delivered"), (&laptop_device, "delivered")])
        )
    );
    // The phone reads it: read there, and the tick is read.
    ok(&bob, &["read", "alice"]);
    ok(&alice, &["sync"]);
    assert_eq!(
        info(&alice, &first),
        (
            "read".into(),
            states(&[(&phone, "read"), (&laptop_device, "delivered")])
        )
    );
    // On bob's side the message is incoming: no recipients to show.
    let incoming = ok(&bob, &["info", &first[..8]]);
    assert_eq!(incoming.len(), 1, "{incoming:?}");
    assert_eq!(incoming[0]["direction"], "in");
    // An unknown prefix is a clear error.
    let unknown = run(relay(&alice, &["--json", "info", "000000000"]), None);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no message"));

    // Bob turns read receipts off: his reads reach his laptop, not alice.
    let set = ok(&bob, &["settings", "read-receipts", "off"]);
    assert_eq!(set[0]["event"], "setting");
    assert_eq!(set[0]["value"], "off");
    assert_eq!(ok(&bob, &["settings"])[0]["value"], "off", "persisted");
    let second = send(&alice, "two");
    ok(&bob, &["sync"]);
    ok(&laptop, &["sync"]);
    ok(&bob, &["read", "alice"]);
    ok(&laptop, &["sync"]);
    ok(&alice, &["sync"]);
    assert_eq!(
        info(&alice, &second),
        (
            "delivered".into(),
            states(&[(&phone, "delivered"), (&laptop_device, "delivered")])
        ),
        "alice's tick stops at delivered"
    );
    let laptop_view = ok(&laptop, &["history", "alice"]);
    let two = laptop_view
        .iter()
        .find(|event| event["id"] == second.as_str())
        .expect("the laptop has it");
    assert_eq!(two["read"], true, "the read mark reached bob's laptop");

    // Bob on again, alice off: bob's read receipt comes, and alice does not see it.
    ok(&bob, &["settings", "read-receipts", "on"]);
    ok(&alice, &["settings", "read-receipts", "off"]);
    let third = send(&alice, "three");
    ok(&bob, &["sync"]);
    ok(&laptop, &["sync"]);
    ok(&bob, &["read", "alice"]);
    ok(&alice, &["sync"]);
    assert_eq!(
        info(&alice, &third),
        (
            "delivered".into(),
            states(&[(&phone, "delivered"), (&laptop_device, "delivered")])
        ),
        "alice sees no read receipt while hers are off"
    );
    // On again: the receipt that came while off stays unseen; later ones show.
    ok(&alice, &["settings", "read-receipts", "on"]);
    assert_eq!(info(&alice, &third).0, "delivered", "dropped, not kept");
    let fourth = send(&alice, "four");
    ok(&bob, &["sync"]);
    ok(&laptop, &["sync"]);
    ok(&bob, &["read", "alice"]);
    ok(&alice, &["sync"]);
    assert_eq!(
        info(&alice, &fourth),
        (
            "read".into(),
            states(&[(&phone, "read"), (&laptop_device, "delivered")])
        )
    );
}

/// A `relay` process left running (`presence --follow`), its JSON lines read as they come.
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Follower {
    fn start(data: &Path, args: &[&str]) -> Follower {
        use std::io::BufRead;
        let mut child = relay(data, &[&["--json"], args].concat())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("relay starts");
        let stdout = child.stdout.take().expect("piped");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(value) = serde_json::from_str::<Value>(&line)
                    && sender.send(value).is_err()
                {
                    return;
                }
            }
        });
        Follower {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line that satisfies `wanted`, within the deadline.
    fn until(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "not within {DEADLINE:?}; the follower printed {:#?}",
                    self.seen
                ),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn presence_is(state: &'static str) -> impl Fn(&Value) -> bool {
    move |line| line["event"] == "presence" && line["peer"] == "alice" && line["state"] == state
}

#[test]
fn presence_with_each_privacy_setting_and_typing_that_ends_by_itself() {
    let deployment = Deployment::start(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let (alice, bob) = people(&deployment, dir.path());
    let carol = dir.path().join("carol");
    register(&deployment, &carol, "carol", 1);
    // Bob is alice's contact: they have a chat.
    send(&alice, "hi bob");

    // Bob, in the other region, follows alice: offline (her send ended), last seen known.
    let mut follower = Follower::start(&bob, &["presence", "alice", "--follow", "120"]);
    let first = follower.until(|line| line["event"] == "presence");
    assert_eq!(first["peer"], "alice");
    assert!(
        first["state"] == "offline" && first["last_seen_ms"].as_u64().is_some_and(|at| at > 0)
            || first["state"] == "online",
        "{first}"
    );

    // Alice types: bob sees it, then sees it end by itself (alice says nothing more).
    // Taken before the indicator leaves: bob's "typing…" starts later, so it cannot end
    // sooner than TYPING_SHOWN_MS after this.
    let sent_at = Instant::now();
    let typed = ok(&alice, &["typing", "bob"]);
    assert_eq!(typed[0]["event"], "typing_sent", "{typed:?}");
    follower.until(|line| line["event"] == "typing" && line["typing"] == true);
    follower.until(|line| line["event"] == "typing" && line["typing"] == false);
    assert!(
        sent_at.elapsed() >= Duration::from_millis(6_000),
        "ended {:?} after it was sent",
        sent_at.elapsed()
    );

    // Contacts: carol (no chat with alice) is told it is hidden; bob still sees her.
    let set = ok(&alice, &["settings", "presence", "contacts"]);
    assert!(
        set.iter()
            .any(|line| line["name"] == "presence" && line["value"] == "contacts (1 account)"),
        "{set:?}"
    );
    let hidden = ok(&carol, &["presence", "alice"]);
    assert_eq!(hidden.len(), 1, "{hidden:?}");
    assert_eq!(hidden[0]["state"], "hidden");
    assert_eq!(hidden[0]["last_seen_ms"], Value::Null);
    let seen = ok(&bob, &["settings"]);
    assert!(
        seen.iter().any(|line| line["name"] == "read-receipts"),
        "{seen:?}"
    );

    // Nobody: bob, still following, is told it is hidden.
    ok(&alice, &["settings", "presence", "nobody"]);
    follower.until(presence_is("hidden"));
    let shown = ok(&alice, &["settings"]);
    assert!(
        shown
            .iter()
            .any(|line| line["name"] == "presence" && line["value"] == "nobody"),
        "{shown:?}"
    );
    // Everyone again: bob sees her (online while her command runs, or offline after it).
    ok(&alice, &["settings", "presence", "everyone"]);
    follower.until(|line| {
        line["event"] == "presence" && (line["state"] == "online" || line["state"] == "offline")
    });
    drop(follower);

    // Bad input is refused plainly: a visibility that does not exist, a name nobody has.
    let wrong = run(relay(&alice, &["settings", "presence", "friends"]), None);
    assert_eq!(wrong.status.code(), Some(2));
    let nobody = run(relay(&bob, &["--json", "presence", "nobody-here"]), None);
    assert_eq!(nobody.status.code(), Some(1));
}
