//! The linked-devices journey of the README, on real `relayd devnet` and `relay` processes: alice
//! (phone and, once linked, laptop in region 1) and bob (region 2). The laptop joins with a
//! pairing code the phone shows and approves; bob's next message reaches both of alice's devices
//! decrypted after one "mismatched devices" answer (no loop), with a warning that alice's
//! devices changed; the phone removes the laptop, which then receives nothing more.

mod support;

use serde_json::Value;
use support::{DEADLINE, Devnet, Person};

fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == kind).collect()
}

fn texts(lines: &[Value]) -> Vec<String> {
    events(lines, "message")
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Device numbers and fingerprints of `device` lines.
fn devices(lines: &[Value]) -> Vec<(u64, String, bool)> {
    events(lines, "device")
        .iter()
        .map(|line| {
            (
                line["device"].as_u64().expect("device number"),
                line["fingerprint"].as_str().unwrap_or_default().to_owned(),
                line["current"].as_bool().expect("current"),
            )
        })
        .collect()
}

/// `person` sends `text` to `peer`; returns the stderr (notes) of the command.
fn send(person: &Person, peer: &str, text: &str) -> String {
    let output = person.run(&["send", peer, text]);
    assert!(output.status.success(), "send {text:?} failed");
    let lines = support::json_lines(&output.stdout);
    assert!(
        events(&lines, "tick")
            .iter()
            .any(|tick| tick["tick"] == "sent"),
        "{text:?} did not reach sent: {lines:?}"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_laptop_links_receives_from_a_contact_and_gets_nothing_once_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let phone = Person::new(dir.path(), "alice");
    let laptop = Person {
        name: "alice".into(),
        data: dir.path().join("alice-laptop"),
    };
    let bob = Person::new(dir.path(), "bob");
    phone.register(&devnet, "127.0.1.10");
    bob.register(&devnet, "127.0.2.10");
    // bob learns alice's one device by writing to her.
    send(&bob, "alice", "before the laptop");
    assert_eq!(texts(&phone.ok(&["sync"])), vec!["before the laptop"]);

    // The phone shows a code and waits; the laptop asks with it; the phone approves.
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
    let asked = accepting.wait_for(DEADLINE, |line| line["event"] == "link_requested");
    let seen = linking.wait_for(DEADLINE, |line| line["event"] == "link_requested");
    assert_eq!(
        asked["fingerprint"], seen["fingerprint"],
        "both screens show the same fingerprint"
    );
    let laptop_fingerprint = asked["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    let linked = accepting.wait_for(DEADLINE, |line| line["event"] == "linked");
    assert_eq!(
        (
            linked["name"].as_str(),
            linked["device"].as_u64(),
            linked["region"].as_u64()
        ),
        (Some("alice"), Some(2), Some(1))
    );
    linking.wait_for(DEADLINE, |line| {
        line["event"] == "device" && line["device"] == 2
    });
    let status = accepting.child.wait().expect("link-accept ends");
    assert!(status.success());
    let status = linking.child.wait().expect("link ends");
    assert!(status.success());

    // Any device lists the account's devices.
    let listed = laptop.ok(&["devices"]);
    assert_eq!(
        devices(&listed)
            .iter()
            .map(|(n, _, _)| *n)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(
        events(&listed, "device")
            .iter()
            .any(|line| line["device"] == 2 && line["this_device"] == true)
    );

    // The phone took the new list from the approval: its next message covers the laptop at
    // once (no warning), and the laptop gets the copy.
    let notes = send(&phone, "bob", "from the phone");
    assert!(!notes.contains("devices changed"), "{notes}");
    let copies = laptop.ok(&["sync"]);
    let copy = events(&copies, "message")
        .into_iter()
        .find(|message| message["text"] == "from the phone")
        .unwrap_or_else(|| panic!("the laptop gets the phone's copy: {copies:?}"));
    assert_eq!(
        (copy["direction"].as_str(), copy["peer"].as_str()),
        (Some("out"), Some("bob"))
    );
    assert!(texts(&bob.ok(&["sync"])).contains(&"from the phone".to_owned()));

    // bob's next message reaches both devices, after one re-encryption, with a warning.
    let notes = send(&bob, "alice", "hello both");
    assert!(
        notes.contains("devices changed") && notes.contains("device 2 added"),
        "bob is told alice's devices changed: {notes}"
    );
    for device in [&phone, &laptop] {
        let received = device.ok(&["sync"]);
        assert!(
            texts(&received).contains(&"hello both".to_owned()),
            "{}: {received:?}",
            device.data.display()
        );
        assert!(
            events(&received, "undecryptable").is_empty(),
            "{received:?}"
        );
    }
    let bob_sees = devices(&bob.ok(&["devices", "alice"]));
    assert!(
        bob_sees.contains(&(2, laptop_fingerprint.clone(), true)),
        "bob knows the laptop by the fingerprint it showed: {bob_sees:?}"
    );
    // A second message needs no re-encryption: no note this time.
    let notes = send(&bob, "alice", "again");
    assert!(!notes.contains("devices changed"), "{notes}");

    // The phone removes the laptop: bob's next message goes to the phone only.
    let left = phone.ok(&["remove-device", "2"]);
    assert_eq!(
        devices(&left)
            .iter()
            .map(|(n, _, _)| *n)
            .collect::<Vec<_>>(),
        vec![1]
    );
    let notes = send(&bob, "alice", "after the removal");
    assert!(notes.contains("device 2 removed"), "{notes}");
    let received = phone.ok(&["sync"]);
    assert!(texts(&received).contains(&"after the removal".to_owned()));
    let output = laptop.run(&["sync"]);
    let laptop_lines = support::json_lines(&output.stdout);
    assert!(
        !texts(&laptop_lines).contains(&"after the removal".to_owned()),
        "a removed device receives nothing more: {laptop_lines:?}"
    );
    assert!(!output.status.success(), "the removed laptop is refused");
}

/// No device is primary: the laptop (linked by the phone) opens a pairing, its `relay link`
/// stops waiting, the tablet asks with the code, and the phone approves it with `relay approve`.
#[test]
fn any_device_opens_a_pairing_and_another_approves_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(1, &dir.path().join("devnet"));
    let device = |folder: &str| Person {
        name: "alice".into(),
        data: dir.path().join(folder),
    };
    let (phone, laptop, tablet) = (device("phone"), device("laptop"), device("tablet"));
    phone.register(&devnet, "127.0.1.10");
    let accept = |person: &Person, code: &str, bind: &str| {
        person.spawn(&[
            "link-accept",
            code,
            "--locator",
            &devnet.locator(),
            "--bind",
            bind,
            "--ca",
            &devnet.ca(),
        ])
    };

    let mut linking = phone.spawn(&["link", "--timeout", "120"]);
    let pairing = linking.wait_for(DEADLINE, |line| line["event"] == "pairing_code");
    let mut accepting = accept(
        &laptop,
        pairing["code"].as_str().expect("code"),
        "127.0.1.11",
    );
    accepting.wait_for(DEADLINE, |line| {
        line["event"] == "linked" && line["device"] == 2
    });
    assert!(linking.child.wait().expect("link ends").success());

    // The laptop's `relay link` gives up before anyone asks; its code stays open.
    let output = laptop.run(&["link", "--timeout", "1"]);
    assert!(!output.status.success(), "no device asked in time");
    let lines = support::json_lines(&output.stdout);
    let code = events(&lines, "pairing_code")[0]["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let errors = support::json_lines(&output.stderr);
    assert_eq!(
        errors.last().map(|error| &error["code"]),
        Some(&Value::from("timed_out"))
    );

    let mut asking = accept(&tablet, &code, "127.0.1.12");
    asking.wait_for(DEADLINE, |line| line["event"] == "link_requested");
    let approved = phone.ok(&["approve", &code]);
    assert_eq!(
        devices(&approved)
            .iter()
            .map(|(n, _, _)| *n)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    asking.wait_for(DEADLINE, |line| {
        line["event"] == "linked" && line["device"] == 3
    });
    assert!(asking.child.wait().expect("link-accept ends").success());
    let listed = tablet.ok(&["devices"]);
    assert_eq!(
        devices(&listed)
            .iter()
            .map(|(n, _, _)| *n)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}
