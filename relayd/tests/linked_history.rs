//! Issue 12's journey on real `relayd devnet` and `relay` processes: alice has a phone in region
//! 1, bob is in region 2. After 1,000 messages with edits, deletions and reactions from both,
//! alice links a laptop, which then shows exactly the phone's history. Each of alice's devices
//! acts while the other is offline (a CLI device is offline whenever no command of it runs):
//! both edit the same message, one deletes, both react and send, bob writes meanwhile; once
//! both sync they hold the same history, the later edit having won. bob's client encrypts to the
//! laptop after one "devices changed" answer, without a loop. The phone removes the laptop,
//! which gets nothing more, and no file of any device or region holds a deleted text.

mod support;

use std::time::Duration;

use support::history::{Entry, files_holding, history, id_of, link, send, send_many, sync_until};
use support::{Devnet, Person};

/// Messages in the history before the link.
const HISTORY_MESSAGES: usize = 1_000;
/// How long the senders get to send the history.
const SEND_DEADLINE: Duration = Duration::from_secs(600);
/// How long the devices get to converge (each round runs `relay sync` on each).
const CONVERGE_DEADLINE: Duration = Duration::from_secs(300);

/// The phone sends the first two thirds of the history, bob the rest.
fn text_of(index: usize) -> String {
    if index < HISTORY_MESSAGES * 2 / 3 {
        format!("phone's message {index:04} 41c7")
    } else {
        format!("bob's message {index:04} 41c7")
    }
}

/// The entry of `entries` that once held `text`, found by `id` (its first 8 digits).
fn by_id<'a>(entries: &'a [Entry], id: &str) -> &'a Entry {
    entries
        .iter()
        .find(|entry| entry.id.starts_with(id))
        .unwrap_or_else(|| panic!("no message {id} in the history"))
}

fn texts(entries: &[Entry]) -> Vec<Option<&str>> {
    entries.iter().map(|entry| entry.text.as_deref()).collect()
}

#[test]
fn a_laptop_linked_after_a_thousand_messages_shows_and_converges_with_the_phones_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let device = |folder: &str| Person {
        name: "alice".into(),
        data: dir.path().join(folder),
    };
    let (phone, laptop) = (device("phone"), device("laptop"));
    let bob = Person::new(dir.path(), "bob");
    phone.register(&devnet, "127.0.1.10");
    bob.register(&devnet, "127.0.2.10");
    // Each knows the other before the library sends (a first `relay send` looks the name up).
    send(&phone, "bob", "hello before the history");
    bob.ok(&["sync"]);

    // 1,000 messages: the phone's first, then bob's (one region numbers a chat as it receives
    // it, so the two accounts' documents agree only on what each side saw in order).
    let all: Vec<String> = (0..HISTORY_MESSAGES).map(text_of).collect();
    let (phones, bobs) = all.split_at(HISTORY_MESSAGES * 2 / 3);
    send_many(&phone, "bob", phones, SEND_DEADLINE);
    send_many(&bob, "alice", bobs, SEND_DEADLINE);
    sync_until(
        &[&phone, &bob],
        CONVERGE_DEADLINE,
        "both hold the history",
        || (history(&phone, "bob"), history(&bob, "alice")),
        |(mine, theirs)| mine.len() == HISTORY_MESSAGES + 1 && theirs.len() == mine.len(),
    );

    // Edits, deletions and reactions from both accounts, before the link.
    let before = history(&phone, "bob");
    let edited_by_phone = id_of(&before, &text_of(10));
    let deleted_by_phone = id_of(&before, &text_of(20));
    let reacted_by_phone = id_of(&before, &text_of(900));
    phone.ok(&[
        "edit",
        "bob",
        &edited_by_phone,
        "phone's message 10, edited",
    ]);
    phone.ok(&["delete", "--everyone", "bob", &deleted_by_phone]);
    phone.ok(&["react", "bob", &reacted_by_phone, "🎉"]);
    let bobs_view = history(&bob, "alice");
    bob.ok(&[
        "edit",
        "alice",
        &id_of(&bobs_view, &text_of(950)),
        "bob's message 950, edited",
    ]);
    bob.ok(&[
        "delete",
        "--everyone",
        "alice",
        &id_of(&bobs_view, &text_of(960)),
    ]);
    bob.ok(&["react", "alice", &id_of(&bobs_view, &text_of(5)), "👍"]);
    let changed = |entries: &Vec<Entry>| {
        entries.len() == HISTORY_MESSAGES + 1
            && entries.iter().filter(|entry| entry.edited).count() == 2
            && entries.iter().filter(|entry| entry.deleted).count() == 2
            && entries
                .iter()
                .map(|entry| entry.reactions.len())
                .sum::<usize>()
                == 2
    };
    let phone_before_link = sync_until(
        &[&phone, &bob],
        CONVERGE_DEADLINE,
        "the phone shows every change",
        || history(&phone, "bob"),
        changed,
    );
    assert_eq!(
        by_id(&phone_before_link, &reacted_by_phone).reactions,
        vec![("alice".to_owned(), "🎉".to_owned())]
    );

    // The laptop links (the phone sends it the history as a snapshot) and shows exactly the
    // phone's history: every message by id, with its edits, deletions and reactions.
    link(&devnet, &phone, &laptop, "127.0.1.11");
    let laptops = sync_until(
        &[&laptop],
        CONVERGE_DEADLINE,
        "the laptop shows the phone's history",
        || history(&laptop, "bob"),
        |entries| entries.len() == phone_before_link.len(),
    );
    assert_eq!(
        laptops, phone_before_link,
        "the laptop shows the phone's history"
    );

    // Apart: the phone acts while the laptop is offline, then the laptop while the phone is,
    // each on what it had. Both edit message 30; the laptop's edit comes later and wins.
    let contested = id_of(&laptops, &text_of(30));
    let deleted_by_laptop = id_of(&laptops, &text_of(40));
    send(&phone, "bob", "from the phone while the laptop is away");
    phone.ok(&[
        "edit",
        "bob",
        &contested,
        "message 30 as the phone wrote it",
    ]);
    phone.ok(&["react", "bob", &id_of(&laptops, &text_of(700)), "❤️"]);
    let notes = send(&bob, "alice", "from bob while alice's devices are apart");
    assert!(
        notes.contains("devices changed") && notes.contains("device 2 added"),
        "bob is told alice's devices changed: {notes}"
    );
    let notes = send(&bob, "alice", "from bob, a second time");
    assert!(
        !notes.contains("devices changed"),
        "one re-encryption, no loop: {notes}"
    );
    send(&laptop, "bob", "from the laptop while the phone is away");
    laptop.ok(&[
        "edit",
        "bob",
        &contested,
        "message 30 as the laptop wrote it",
    ]);
    laptop.ok(&["delete", "--everyone", "bob", &deleted_by_laptop]);
    laptop.ok(&["react", "bob", &id_of(&laptops, &text_of(800)), "😮"]);

    let news = [
        "from the phone while the laptop is away",
        "from bob while alice's devices are apart",
        "from bob, a second time",
        "from the laptop while the phone is away",
    ];
    let (phones, laptops) = sync_until(
        &[&phone, &laptop, &bob],
        CONVERGE_DEADLINE,
        "alice's devices converge",
        || (history(&phone, "bob"), history(&laptop, "bob")),
        |(phones, laptops)| {
            phones == laptops
                && news.iter().all(|text| texts(phones).contains(&Some(*text)))
                && by_id(phones, &contested).text.as_deref()
                    == Some("message 30 as the laptop wrote it")
                && by_id(phones, &deleted_by_laptop).deleted
                && by_id(phones, &id_of(&phone_before_link, &text_of(800)))
                    .reactions
                    .len()
                    == 1
        },
    );
    assert_eq!(phones, laptops);
    assert_eq!(phones.len(), HISTORY_MESSAGES + 1 + news.len());
    assert_eq!(phones.iter().filter(|entry| entry.deleted).count(), 3);
    assert_eq!(
        by_id(&phones, &id_of(&phone_before_link, &text_of(700))).reactions,
        vec![("alice".to_owned(), "❤️".to_owned())]
    );
    // bob sees the same changes on his side.
    let bobs = sync_until(
        &[&bob],
        CONVERGE_DEADLINE,
        "bob shows the laptop's changes",
        || history(&bob, "alice"),
        |entries| {
            texts(entries).contains(&Some("message 30 as the laptop wrote it"))
                && entries.iter().filter(|entry| entry.deleted).count() == 3
        },
    );
    assert!(texts(&bobs).contains(&Some("from the laptop while the phone is away")));

    // The phone removes the laptop: bob's next message reaches the phone only.
    phone.ok(&["remove-device", "2"]);
    let notes = send(&bob, "alice", "after the removal");
    assert!(notes.contains("device 2 removed"), "{notes}");
    sync_until(
        &[&phone],
        CONVERGE_DEADLINE,
        "the phone gets bob's message",
        || history(&phone, "bob"),
        |entries| texts(entries).contains(&Some("after the removal")),
    );
    let refused = laptop.run(&["sync"]);
    assert!(!refused.status.success(), "the removed laptop is refused");
    assert!(
        !texts(&history(&laptop, "bob")).contains(&Some("after the removal")),
        "a removed device receives nothing more"
    );

    // No device's files, nor the regions', hold a deleted text.
    for secret in [text_of(20), text_of(960), text_of(40)] {
        for root in [&phone.data, &laptop.data, &bob.data, &devnet.data] {
            let holding = files_holding(root, secret.as_bytes());
            assert!(holding.is_empty(), "{secret:?} is still in {holding:?}");
        }
    }
    // The scan finds what is there: the phone's store holds a text nobody deleted, the
    // laptop's one it received after the link (the history file is compressed, a store's rows
    // are not).
    assert!(!files_holding(&phone.data, text_of(21).as_bytes()).is_empty());
    assert!(!files_holding(&laptop.data, b"from bob, a second time").is_empty());
}
