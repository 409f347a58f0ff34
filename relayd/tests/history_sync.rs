//! The history journey of the README, on real `relayd devnet` and `relay` processes: alice has
//! a phone and a laptop in region 1, bob is in region 2. The laptop, linked after the first
//! messages, gets the whole history through the sync between alice's devices; an edit, a
//! reaction and a deletion for everyone from bob and from the laptop converge on all three
//! devices; a tablet linked last shows exactly the phone's history; and no file of any device
//! (nor of the regions) holds a deleted text.

mod support;

use std::time::Duration;

use support::history::{Entry, files_holding, history, id_of, link, send};
use support::{Devnet, Person, eventually};

/// How long the devices get to converge: each round runs `relay sync` on every device.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(120);

/// What the test expects of an entry: text, edited, deleted, reactions.
type Shown<'a> = (Option<&'a str>, bool, bool, Vec<(&'a str, &'a str)>);

/// Runs `relay sync` on every device, round after round, until each device's history of its
/// chat passes `check` and alice's devices show the same history; returns bob's and alice's.
fn converge(
    bob: &Person,
    alice: &[&Person],
    check: impl Fn(&[Entry]) -> bool,
) -> (Vec<Entry>, Vec<Entry>) {
    eventually(CONVERGE_DEADLINE, "the devices converge", || {
        for device in alice.iter().copied().chain([bob]) {
            device.ok(&["sync"]);
        }
        let bobs = history(bob, "alice");
        let alices: Vec<Vec<Entry>> = alice.iter().map(|device| history(device, "bob")).collect();
        let same = alices.iter().all(|entries| *entries == alices[0]);
        (check(&bobs) && alices.iter().all(|entries| check(entries)) && same)
            .then(|| (bobs, alices[0].clone()))
    })
}

#[test]
fn linked_devices_share_the_history_and_its_edits_reactions_and_deletions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let device = |folder: &str| Person {
        name: "alice".into(),
        data: dir.path().join(folder),
    };
    let (phone, laptop, tablet) = (device("phone"), device("laptop"), device("tablet"));
    let bob = Person::new(dir.path(), "bob");
    phone.register(&devnet, "127.0.1.10");
    bob.register(&devnet, "127.0.2.10");
    send(&phone, "bob", "first from the phone");
    bob.ok(&["sync"]);
    send(&bob, "alice", "first from bob");
    phone.ok(&["sync"]);

    // The laptop joins after the first messages and gets them from the phone by sync.
    link(&devnet, &phone, &laptop, "127.0.1.11");
    send(&phone, "bob", "after the link");
    let texts = |entries: &[Entry]| -> Vec<Option<String>> {
        entries.iter().map(|entry| entry.text.clone()).collect()
    };
    let all_three = ["first from the phone", "first from bob", "after the link"]
        .map(|text| Some(text.to_owned()))
        .to_vec();
    let (_, alices) = converge(&bob, &[&phone, &laptop], |entries| {
        texts(entries) == all_three
    });
    assert_eq!(texts(&alices), all_three, "the laptop shows the whole chat");

    // Two texts to delete, delivered everywhere first.
    send(&bob, "alice", "bob's secret 7f3a");
    send(&phone, "bob", "alice's secret 5e1b");
    converge(&bob, &[&phone, &laptop], |entries| entries.len() == 5);

    // bob edits, reacts and deletes; so does the laptop, also on what the phone sent.
    let bobs = history(&bob, "alice");
    bob.ok(&[
        "edit",
        "alice",
        &id_of(&bobs, "first from bob"),
        "first from bob, edited",
    ]);
    bob.ok(&[
        "react",
        "alice",
        &id_of(&bobs, "first from the phone"),
        "👍",
    ]);
    bob.ok(&[
        "delete",
        "--everyone",
        "alice",
        &id_of(&bobs, "bob's secret 7f3a"),
    ]);
    let laptops = history(&laptop, "bob");
    laptop.ok(&[
        "edit",
        "bob",
        &id_of(&laptops, "after the link"),
        "after the link, edited on the laptop",
    ]);
    laptop.ok(&["react", "bob", &id_of(&laptops, "first from bob"), "❤️"]);
    laptop.ok(&[
        "delete",
        "--everyone",
        "bob",
        &id_of(&laptops, "alice's secret 5e1b"),
    ]);
    // The laptop may not edit bob's message: refused, nothing sent.
    let refused = laptop.run(&["edit", "bob", &id_of(&laptops, "first from bob"), "forged"]);
    assert!(!refused.status.success());

    let expected = |entries: &[Entry]| {
        let shown: Vec<Shown<'_>> = entries
            .iter()
            .map(|entry| {
                (
                    entry.text.as_deref(),
                    entry.edited,
                    entry.deleted,
                    entry
                        .reactions
                        .iter()
                        .map(|(from, reaction)| (from.as_str(), reaction.as_str()))
                        .collect(),
                )
            })
            .collect();
        shown
            == vec![
                (
                    Some("first from the phone"),
                    false,
                    false,
                    vec![("bob", "👍")],
                ),
                (
                    Some("first from bob, edited"),
                    true,
                    false,
                    vec![("alice", "❤️")],
                ),
                (
                    Some("after the link, edited on the laptop"),
                    true,
                    false,
                    vec![],
                ),
                (None, false, true, vec![]),
                (None, false, true, vec![]),
            ]
    };
    let (bobs, alices) = converge(&bob, &[&phone, &laptop], expected);
    let ids = |entries: &[Entry]| entries.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&bobs),
        ids(&alices),
        "both accounts name the same messages"
    );

    // A tablet linked now, from the laptop, shows exactly the phone's history.
    link(&devnet, &laptop, &tablet, "127.0.1.12");
    send(&laptop, "bob", "hello from the laptop");
    let with_the_tablet = |entries: &[Entry]| entries.len() == 6 && expected(&entries[..5]);
    converge(&bob, &[&phone, &laptop, &tablet], with_the_tablet);

    // The human history names each message by its id and shows the changes.
    let human = std::process::Command::new(support::relay_bin())
        .arg("--data")
        .arg(&phone.data)
        .args(["history", "bob"])
        .output()
        .expect("relay history");
    let human = String::from_utf8_lossy(&human.stdout).into_owned();
    assert!(
        human.contains("first from bob, edited (edited) [❤️ alice]")
            && human.contains("message deleted")
            && human.contains(&alices[0].id[..8]),
        "{human}"
    );

    // No device's files, nor the regions', hold a deleted text.
    for secret in ["bob's secret 7f3a", "alice's secret 5e1b"] {
        for root in [&phone.data, &laptop.data, &tablet.data, &bob.data] {
            let holding = files_holding(root, secret.as_bytes());
            assert!(holding.is_empty(), "{secret:?} is still in {holding:?}");
        }
        let holding = files_holding(&dir.path().join("devnet"), secret.as_bytes());
        assert!(
            holding.is_empty(),
            "{secret:?} is in the region's files {holding:?}"
        );
    }
    // The scan finds what is there: a text nobody deleted is in the phone's files.
    assert!(!files_holding(&phone.data, b"first from the phone").is_empty());
}
