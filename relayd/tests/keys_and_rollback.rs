//! Keys that never run out and devices that went back, through real `relayd devnet` processes:
//! a hundred new contacts message one offline person (who has fifty one-time keys) and every
//! message is acknowledged and decrypted; a data directory restored from an older copy is
//! refused with its typed error, as a sender and as a recipient, and nobody sees a message it
//! cannot decrypt or a ✓✓ from a device that could not read.

mod support;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::rc::Rc;

use relay_client::store::{Store, Tick};
use relay_client::{
    DATABASE_FILE, Device, Environment, Event, OpenOptions, Overrides, flows, register_in,
};
use relay_proto::limits::ONE_TIME_KEYS_AT_REGISTRATION;
use serde_json::Value;
use support::{DEADLINE, Devnet, Person, eventually, json_lines};

/// New contacts that message the offline person: twice the one-time keys it uploaded.
const CONTACTS: usize = 2 * ONE_TIME_KEYS_AT_REGISTRATION;
/// Contacts registering and sending at once (the machine has two cores).
const CONTACTS_AT_ONCE: usize = 10;

fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == kind).collect()
}

fn texts(lines: &[Value]) -> Vec<String> {
    events(lines, "message")
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Sends with the CLI and returns the message id, checking it reached ✓.
fn send(person: &Person, peer: &str, text: &str) -> String {
    let lines = person.ok(&["send", peer, text]);
    let sent = events(&lines, "tick")
        .into_iter()
        .find(|tick| tick["tick"] == "sent")
        .unwrap_or_else(|| panic!("{text:?} did not reach sent: {lines:?}"));
    sent["id"].as_str().expect("message id").to_owned()
}

/// The ticks of `person`'s outgoing messages to `peer`, by text, after a sync.
fn ticks(person: &Person, peer: &str) -> Vec<(String, String)> {
    person.ok(&["sync"]);
    let history = person.ok(&["history", peer]);
    events(&history, "history")
        .into_iter()
        .filter(|entry| entry["direction"] == "out")
        .map(|entry| {
            (
                entry["text"].as_str().unwrap_or("?").to_owned(),
                entry["tick"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

/// Runs a command that must fail because the device went back: exit code 1 and an error that
/// says what happened (with `detail`, the counter that gave it away) and what to do.
fn refused_as_rolled_back(person: &Person, args: &[&str], detail: &str) -> Vec<Value> {
    let output = person.run(args);
    assert_eq!(output.status.code(), Some(1), "relay {args:?} must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for words in [
        detail,
        "state went back",
        "restored from an older copy",
        "register this device again in a new data directory",
        "linking a new device to an account is coming",
    ] {
        assert!(stderr.contains(words), "{words:?} missing from: {stderr}");
    }
    json_lines(&output.stdout)
}

/// Copies a data directory (the SQLite database and whatever else is in it).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("copy folder");
    for entry in std::fs::read_dir(from).expect("data folder") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy a file");
    }
}

/// Puts the copy back in place of the data directory, as a backup restore would.
fn restore(copy: &Path, data: &Path) {
    std::fs::remove_dir_all(data).expect("remove the data folder");
    std::fs::rename(copy, data).expect("put the copy back");
}

fn assert_exit(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One new contact, driven in this process through the real devnet: registers (in region 1 or
/// 2 by its address), messages `zed` once, and returns the text once it reached ✓.
async fn new_contact(root: PathBuf, index: usize, locator: SocketAddr, ca: PathBuf) -> String {
    let name = format!("contact{index:03}");
    let data = root.join(&name);
    let bind: IpAddr = if index.is_multiple_of(2) {
        [127, 0, 1, 20].into()
    } else {
        [127, 0, 2, 20].into()
    };
    let overrides = Overrides {
        locator: Some(locator),
        bind_ip: Some(bind),
        ca_path: Some(ca),
        ..Overrides::default()
    };
    register_in(
        &Environment::default(),
        &data,
        &name,
        overrides,
        "",
        &mut |_| {},
    )
    .await
    .unwrap_or_else(|error| panic!("{name} registers: {error}"));
    let seen = Rc::new(RefCell::new(Vec::new()));
    let mut sink = {
        let seen = seen.clone();
        move |event: Event| seen.borrow_mut().push(event)
    };
    let (device, mut events) = Device::open(&data, OpenOptions::default()).expect("opens");
    let text = format!("hello zed, this is {name}");
    let sent = flows::send(
        &device,
        &mut events,
        "zed",
        &text,
        None,
        std::future::pending(),
        &mut sink,
    )
    .await;
    device.close().await.expect("closes");
    let id = sent.unwrap_or_else(|error| panic!("{name} sends: {error}"));
    let acknowledged = seen.borrow().iter().any(|event| {
        matches!(event, Event::Tick { id: tick_id, tick: Tick::Sent, .. } if *tick_id == id.to_string())
    });
    assert!(
        acknowledged,
        "{name}'s message reached ✓: {:?}",
        seen.borrow()
    );
    text
}

#[test]
fn a_hundred_new_contacts_reach_an_offline_person_whose_one_time_keys_ran_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let zed = Person::new(dir.path(), "zed");
    zed.register(&devnet, "127.0.2.10");
    let locator: SocketAddr = devnet.locator().parse().expect("locator address");
    let ca = PathBuf::from(devnet.ca());

    // zed stays offline: no sync, so its 50 one-time keys are never topped up, and contacts
    // 51 to 100 start their sessions from its signed fallback key.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sent: Vec<String> = runtime.block_on(async {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut sent = Vec::new();
                for first in (0..CONTACTS).step_by(CONTACTS_AT_ONCE) {
                    let tasks: Vec<_> = (first..(first + CONTACTS_AT_ONCE).min(CONTACTS))
                        .map(|index| {
                            tokio::task::spawn_local(new_contact(
                                dir.path().join("contacts"),
                                index,
                                locator,
                                ca.clone(),
                            ))
                        })
                        .collect();
                    for task in tasks {
                        sent.push(task.await.expect("a contact's task"));
                    }
                }
                sent
            })
            .await
    });
    assert_eq!(sent.len(), CONTACTS);

    let fallback_times = || {
        let mut store = Store::open(&zed.data.join(DATABASE_FILE)).expect("zed's store");
        store
            .unlock(&zed.data.join("device.key"))
            .expect("zed's device key");
        let times = store
            .write(|writer| writer.fallback_times())
            .expect("times");
        let crypto = store.load_crypto().expect("olm").expect("an account");
        (times, crypto.unpublished_fallback_key().is_none())
    };
    let (registered, published) = fallback_times();
    assert!(published && !registered.previous_kept, "{registered:?}");

    // zed comes online and decrypts all of them.
    let received = zed.ok(&["sync"]);
    assert!(
        events(&received, "undecryptable").is_empty(),
        "{:?}",
        events(&received, "undecryptable")
    );
    let received: BTreeSet<String> = texts(&received).into_iter().collect();
    let expected: BTreeSet<String> = sent.into_iter().collect();
    assert_eq!(received, expected);

    // The region told zed his fallback key was handed out. Once his queue was fetched to its
    // end (the page that reached the latest entry), the sync topped up his one-time keys and
    // replaced the fallback key in one upload, keeping the previous one for messages still on
    // their way.
    let (replaced, published) = fallback_times();
    assert!(published, "the new fallback key was uploaded");
    assert!(replaced.previous_kept, "{replaced:?}");
    assert!(replaced.made_at_ms > registered.made_at_ms, "{replaced:?}");
    // The next sync finds the new key unused: it stays.
    zed.ok(&["sync"]);
    let (again, published) = fallback_times();
    assert!(published);
    assert_eq!(again, replaced);
}

#[test]
fn a_restored_data_directory_is_refused_as_sender_and_as_recipient() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));

    // --- A restored sender. ---
    let alice = Person::new(dir.path(), "alice");
    let bob = Person::new(dir.path(), "bob");
    alice.register(&devnet, "127.0.1.10");
    bob.register(&devnet, "127.0.2.10");
    send(&alice, "bob", "before the copy");
    assert_eq!(texts(&bob.ok(&["sync"])), ["before the copy"]);
    // A message written while no edge can be found stays in alice's outbox (exit code 0): the
    // locator is not where alice looks, and neither is the last edge that worked.
    {
        let mut store = Store::open(&alice.data.join(DATABASE_FILE)).expect("alice's store");
        let nowhere: std::net::SocketAddr = "127.0.0.1:9".parse().expect("address");
        store
            .write(|writer| writer.set_last_edge(nowhere))
            .expect("forget the last edge");
    }
    let queued = alice.ok(&[
        "--locator",
        "127.0.0.1:9",
        "send",
        "bob",
        "queued in the copy",
    ]);
    let queued_id = events(&queued, "still_pending")[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // The backup: alice's data directory as it is now.
    let copy = dir.path().join("alice-copy");
    copy_dir(&alice.data, &copy);
    // The device lives on: its next send also sends the queued message. It fetches nothing,
    // so its queue cursor gives nothing away: its envelope counter does.
    let flushed = alice.ok(&["send", "bob", "after the copy"]);
    let sent: Vec<&str> = events(&flushed, "tick")
        .iter()
        .filter(|tick| tick["tick"] == "sent")
        .filter_map(|tick| tick["id"].as_str())
        .collect();
    assert_eq!(sent.len(), 2, "{flushed:?}");
    assert!(sent.contains(&queued_id.as_str()), "{flushed:?}");
    // The backup is put back: its counters and Olm ratchets are behind what the relay has seen.
    restore(&copy, &alice.data);
    let behind = "its next envelope would be number 2, but number 3 is stored";
    let refused = refused_as_rolled_back(&alice, &["sync"], behind);
    // What its outbox held is reported failed with the reason, not silently dropped.
    let failed = events(&refused, "failed");
    assert_eq!(failed.len(), 1, "{refused:?}");
    assert_eq!(failed[0]["id"], queued_id.as_str());
    assert!(
        failed[0]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("state went back")),
        "{failed:?}"
    );
    // Every later command says the same, and nothing new enters the outbox.
    let again = refused_as_rolled_back(&alice, &["send", "bob", "from the old copy"], behind);
    assert!(
        events(&again, "tick").is_empty(),
        "nothing queued: {again:?}"
    );
    refused_as_rolled_back(&alice, &["sync"], behind);
    let history = alice.run(&["history", "bob"]);
    assert_exit(&history);
    assert!(String::from_utf8_lossy(&history.stderr).contains("state went back"));
    let history = json_lines(&history.stdout);
    let entry = events(&history, "history")
        .into_iter()
        .find(|entry| entry["id"] == queued_id.as_str())
        .expect("the queued message in the restored history");
    assert!(entry["failed"].is_string(), "{entry:?}");
    // bob got what the living device sent, once, and nothing he cannot decrypt.
    let received = bob.ok(&["sync"]);
    assert_eq!(texts(&received), ["queued in the copy", "after the copy"]);
    assert!(events(&received, "undecryptable").is_empty());
    let history = bob.ok(&["history", "alice"]);
    assert!(
        events(&history, "history")
            .iter()
            .all(|entry| entry["undecryptable"].is_null()),
        "{history:?}"
    );

    // --- A restored recipient. ---
    let carol = Person::new(dir.path(), "carol");
    let dave = Person::new(dir.path(), "dave");
    carol.register(&devnet, "127.0.1.11");
    dave.register(&devnet, "127.0.2.11");
    send(&carol, "dave", "r1");
    assert_eq!(texts(&dave.ok(&["sync"])), ["r1"]);
    let copy = dir.path().join("dave-copy");
    copy_dir(&dave.data, &copy);
    send(&carol, "dave", "r2");
    assert_eq!(texts(&dave.ok(&["sync"])), ["r2"]);
    restore(&copy, &dave.data);
    send(&carol, "dave", "r3");
    // The restored device is refused before it can fetch or acknowledge anything.
    let behind = "queue cursor 1, but it acknowledged entry 2";
    let refused = refused_as_rolled_back(&dave, &["sync"], behind);
    assert!(events(&refused, "message").is_empty(), "{refused:?}");
    assert!(events(&refused, "undecryptable").is_empty(), "{refused:?}");
    // carol's r1 and r2 were read by the living device and turn ✓✓; r3 never does.
    eventually(DEADLINE, "carol sees r1 and r2 delivered", || {
        let ticks = ticks(&carol, "dave");
        (ticks[..2]
            == [
                ("r1".into(), "delivered".into()),
                ("r2".into(), "delivered".into()),
            ])
        .then_some(ticks)
    });
    refused_as_rolled_back(&dave, &["sync"], behind);
    assert_eq!(ticks(&carol, "dave")[2], ("r3".into(), "sent".into()));
}
