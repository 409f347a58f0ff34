//! Logins checked against the edge's device-key cache, through real `relayd devnet` processes,
//! with the cache deliberately behind: what made it stale went through the other region's
//! edge. A removed device and devices restored from older copies (as sender and as recipient)
//! still log in from the cache (the edge's log says so), and are still refused before anything
//! they send gets a ✓ and before anything is delivered to them.

mod support;

use std::path::Path;

use relay_client::DATABASE_FILE;
use relay_client::store::Store;
use serde_json::Value;
use support::{DEADLINE, Devnet, Person, json_lines};

fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == kind).collect()
}

fn texts(lines: &[Value]) -> Vec<String> {
    events(lines, "message")
        .iter()
        .filter_map(|line| line["text"].as_str())
        .map(str::to_owned)
        .collect()
}

/// The ids of the messages a command's output reports as sent (✓).
fn sent_ids(lines: &[Value]) -> Vec<String> {
    events(lines, "tick")
        .iter()
        .filter(|tick| tick["tick"] == "sent")
        .filter_map(|tick| tick["id"].as_str())
        .map(str::to_owned)
        .collect()
}

/// Lines of edge `region`'s log saying `device` (as `account/device`) logged in from the cache.
fn logins_from_cache(devnet: &Devnet, region: u32, device: &str) -> usize {
    let log = devnet.data.join("logs").join(format!("edge-{region}.log"));
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let needle = format!("device={device} from_cache=true");
    log.lines()
        .filter(|line| line.contains("device connected") && line.contains(&needle))
        .count()
}

/// The account number a registration printed.
fn account_of(registered: &[Value]) -> u64 {
    events(registered, "registered")[0]["account"]
        .as_u64()
        .expect("account")
}

/// Runs a command that must fail because the device went back (exit code 1, the client's
/// explanation and `detail`), returning its JSON lines.
fn refused_as_rolled_back(person: &Person, args: &[&str], detail: &str) -> Vec<Value> {
    let output = person.run(args);
    assert_eq!(output.status.code(), Some(1), "relay {args:?} must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for words in [detail, "state went back", "restored from an older copy"] {
        assert!(stderr.contains(words), "{words:?} missing from: {stderr}");
    }
    json_lines(&output.stdout)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("copy folder");
    for entry in std::fs::read_dir(from).expect("data folder") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy a file");
    }
}

fn restore(copy: &Path, data: &Path) {
    std::fs::remove_dir_all(data).expect("remove the data folder");
    std::fs::rename(copy, data).expect("put the copy back");
}

#[test]
fn a_device_removed_through_another_edge_is_refused_though_its_key_is_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let phone = Person::new(dir.path(), "alice");
    let laptop = Person {
        name: "alice".into(),
        data: dir.path().join("alice-laptop"),
    };
    let bob = Person::new(dir.path(), "bob");
    let account = account_of(&phone.register(&devnet, "127.0.1.10"));
    bob.register(&devnet, "127.0.2.10");

    // The phone links the laptop, which then reads through region 1's edge.
    let mut linking = phone.spawn(&["link", "--timeout", "120"]);
    let pairing = linking.wait_for(DEADLINE, |line| line["event"] == "pairing_code");
    let code = pairing["code"].as_str().expect("code").to_owned();
    let mut accepting = laptop.spawn(&[
        "link-accept",
        &code,
        "--locator",
        &devnet.locator(),
        "--bind",
        "127.0.1.11",
        "--ca",
        &devnet.ca(),
    ]);
    linking.wait_for(DEADLINE, |line| line["event"] == "link_requested");
    let linked = accepting.wait_for(DEADLINE, |line| line["event"] == "linked");
    assert_eq!(linked["device"].as_u64(), Some(2));
    assert!(accepting.child.wait().expect("link-accept ends").success());
    assert!(linking.child.wait().expect("link ends").success());
    let laptop_address = format!("{account}/2");
    laptop.ok(&["sync"]);
    laptop.ok(&["sync"]);
    assert!(
        logins_from_cache(&devnet, 1, &laptop_address) >= 1,
        "the laptop's second login is from region 1's edge's cache"
    );

    // The phone removes the laptop through region 2's edge: region 1's edge does not see it.
    phone.ok(&["--bind", "127.0.2.12", "remove-device", "2"]);
    let before = logins_from_cache(&devnet, 1, &laptop_address);

    // The removed laptop still logs in from the stale cache, and nothing it sends is sent.
    let output = laptop.run(&["send", "bob", "from a removed laptop"]);
    assert!(!output.status.success(), "the removed laptop is refused");
    let lines = json_lines(&output.stdout);
    assert!(sent_ids(&lines).is_empty(), "no ✓: {lines:?}");
    assert_eq!(
        logins_from_cache(&devnet, 1, &laptop_address),
        before + 1,
        "the refused login was one from the cache"
    );

    // bob writes to alice: the laptop is not a recipient any more, and receives nothing.
    let output = bob.run(&["send", "alice", "after the removal"]);
    assert!(output.status.success());
    let output = laptop.run(&["sync"]);
    assert!(!output.status.success(), "the removed laptop is refused");
    let lines = json_lines(&output.stdout);
    assert!(texts(&lines).is_empty(), "nothing delivered: {lines:?}");
    let received = bob.ok(&["sync"]);
    assert!(
        !texts(&received).contains(&"from a removed laptop".to_owned()),
        "{received:?}"
    );
    assert!(texts(&phone.ok(&["sync"])).contains(&"after the removal".to_owned()));
}

#[test]
fn devices_restored_from_copies_are_refused_though_the_cache_is_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));

    // --- A restored sender: its later envelopes went through region 2's edge. ---
    let alice = Person::new(dir.path(), "alice");
    let bob = Person::new(dir.path(), "bob");
    let account = account_of(&alice.register(&devnet, "127.0.1.10"));
    bob.register(&devnet, "127.0.2.10");
    let alice_address = format!("{account}/1");
    let first = alice.ok(&["send", "bob", "before the copy"]);
    assert_eq!(sent_ids(&first).len(), 1, "{first:?}");
    // A message written while no edge can be found stays in the outbox of the copy.
    {
        let mut store = Store::open(&alice.data.join(DATABASE_FILE)).expect("alice's store");
        let nowhere: std::net::SocketAddr = "127.0.0.1:9".parse().expect("address");
        store
            .write(|writer| writer.set_last_edge(nowhere))
            .expect("forget the last edge");
    }
    alice.ok(&[
        "--locator",
        "127.0.0.1:9",
        "send",
        "bob",
        "queued in the copy",
    ]);
    let copy = dir.path().join("alice-copy");
    copy_dir(&alice.data, &copy);
    let flushed = alice.ok(&["--bind", "127.0.2.20", "send", "bob", "after the copy"]);
    assert_eq!(sent_ids(&flushed).len(), 2, "{flushed:?}");
    restore(&copy, &alice.data);
    let before = logins_from_cache(&devnet, 1, &alice_address);
    let behind = "its next envelope would be number 2, but number 3 is stored";
    let refused = refused_as_rolled_back(&alice, &["sync"], behind);
    assert!(sent_ids(&refused).is_empty(), "no ✓: {refused:?}");
    assert_eq!(
        logins_from_cache(&devnet, 1, &alice_address),
        before + 1,
        "the restored copy logged in from region 1's edge's cache"
    );
    // Every later command says the same; bob got only what the living device sent.
    refused_as_rolled_back(&alice, &["send", "bob", "from the old copy"], behind);
    let received = bob.ok(&["sync"]);
    assert_eq!(
        texts(&received),
        ["before the copy", "queued in the copy", "after the copy"]
    );
    assert!(events(&received, "undecryptable").is_empty());

    // --- A restored recipient: its later acknowledgements went through region 1's edge. ---
    let carol = Person::new(dir.path(), "carol");
    let dave = Person::new(dir.path(), "dave");
    carol.register(&devnet, "127.0.1.11");
    let account = account_of(&dave.register(&devnet, "127.0.2.11"));
    let dave_address = format!("{account}/1");
    carol.ok(&["send", "dave", "r1"]);
    assert_eq!(texts(&dave.ok(&["sync"])), ["r1"]);
    let copy = dir.path().join("dave-copy");
    copy_dir(&dave.data, &copy);
    carol.ok(&["send", "dave", "r2"]);
    assert_eq!(texts(&dave.ok(&["--bind", "127.0.1.21", "sync"])), ["r2"]);
    // One more read through region 1's edge acknowledges r2.
    dave.ok(&["--bind", "127.0.1.21", "sync"]);
    restore(&copy, &dave.data);
    carol.ok(&["send", "dave", "r3"]);
    let before = logins_from_cache(&devnet, 2, &dave_address);
    let refused = refused_as_rolled_back(&dave, &["sync"], "already acknowledged entry 2");
    assert!(events(&refused, "message").is_empty(), "{refused:?}");
    assert!(events(&refused, "undecryptable").is_empty(), "{refused:?}");
    assert_eq!(
        logins_from_cache(&devnet, 2, &dave_address),
        before + 1,
        "the restored copy logged in from region 2's edge's cache"
    );
}
