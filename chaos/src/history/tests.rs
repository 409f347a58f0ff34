//! The checker's own tests: clean runs pass, and each kind of broken history is caught.

use super::liveness::check_liveness;
use super::receipts::check_receipts;
use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn message(sender: u32, number: u32) -> MessageRef {
    MessageRef { sender, number }
}

fn at(at_ms: u64, what: What) -> TraceEvent {
    TraceEvent { at_ms, what }
}

fn received(receiver: u32, m: MessageRef, chat_seq: u64) -> What {
    What::Received {
        receiver,
        device: 0,
        message: m,
        from_account: u64::from(m.sender) + 100,
        chat_seq,
    }
}

fn registered() -> Vec<TraceEvent> {
    (0..2)
        .map(|client| {
            at(
                0,
                What::Registered {
                    client,
                    account: u64::from(client) + 100,
                    region: 1,
                },
            )
        })
        .collect()
}

fn planned() -> BTreeMap<MessageRef, u32> {
    [(message(0, 1), 1), (message(0, 2), 1), (message(1, 1), 0)]
        .into_iter()
        .collect()
}

/// The receiver's view of its chat with c0, and c0's view holding its two messages.
fn views(receiver_entries: Vec<ViewEntry>) -> Vec<ChatView> {
    vec![
        ChatView {
            client: 1,
            device: 0,
            peer: 0,
            entries: receiver_entries,
        },
        ChatView {
            client: 0,
            device: 0,
            peer: 1,
            entries: vec![entry(true, message(0, 1), 1), entry(true, message(0, 2), 2)],
        },
    ]
}

fn entry(outgoing: bool, m: MessageRef, chat_seq: u64) -> ViewEntry {
    ViewEntry {
        outgoing,
        message: Some(m),
        chat_seq: Some(chat_seq),
    }
}

#[test]
fn texts_round_trip() {
    let m = message(3, 17);
    assert_eq!(MessageRef::parse(&m.text()), Some(m));
    assert_eq!(MessageRef::parse("hello"), None);
}

#[test]
fn a_clean_run_passes() {
    let mut trace = registered();
    trace.extend([
        at(
            1,
            What::Acked {
                message: message(0, 1),
            },
        ),
        at(2, received(1, message(0, 1), 1)),
        at(
            3,
            What::Acked {
                message: message(0, 2),
            },
        ),
        at(4, received(1, message(0, 2), 3)),
    ]);
    // c1's own message took chat seq 2.
    let views = views(vec![
        entry(false, message(0, 1), 1),
        entry(true, message(1, 1), 2),
        entry(false, message(0, 2), 3),
    ]);
    assert_eq!(check(&planned(), &trace, &views), Vec::new());
}

#[test]
fn loss_reorder_duplicates_gaps_and_garbage_are_caught() {
    let mut trace = registered();
    trace.extend([
        at(
            1,
            What::Acked {
                message: message(0, 1),
            },
        ),
        at(
            2,
            What::Acked {
                message: message(0, 2),
            },
        ),
        at(3, received(1, message(0, 2), 2)),
        at(4, received(1, message(0, 2), 2)),
        at(5, received(0, message(0, 1), 1)),
        at(
            6,
            What::Undecryptable {
                receiver: 1,
                device: 0,
                from: "c0".into(),
                reason: "no session".into(),
            },
        ),
    ]);
    let views = views(vec![entry(false, message(0, 2), 2)]);
    let found: BTreeSet<Invariant> = check(&planned(), &trace, &views)
        .into_iter()
        .map(|violation| violation.invariant)
        .collect();
    let expected: BTreeSet<Invariant> = [
        Invariant::NoLoss,
        Invariant::Order,
        Invariant::SenderFifo,
        Invariant::Idempotence,
        Invariant::Decryptable,
    ]
    .into_iter()
    .collect();
    assert_eq!(found, expected);
}

/// c1 linked a second device; c0 linked one too and sent message 1 from it, message 2 from its
/// first device.
fn linked_trace(second_receives: &[(MessageRef, u64)]) -> Vec<TraceEvent> {
    let mut trace = registered();
    trace.push(at(0, What::Linked { client: 0 }));
    trace.push(at(0, What::Linked { client: 1 }));
    for (number, device) in [(2, 0), (1, 1)] {
        trace.push(at(
            1,
            What::Send {
                message: message(0, number),
                recipient: 1,
                device,
            },
        ));
        trace.push(at(
            2,
            What::Acked {
                message: message(0, number),
            },
        ));
    }
    // Each device of c0 sent in order, but the first's message 2 overtook the second's 1.
    trace.push(at(3, received(1, message(0, 2), 1)));
    trace.push(at(4, received(1, message(0, 1), 2)));
    for (at_ms, (m, chat_seq)) in (5..).zip(second_receives) {
        trace.push(at(
            at_ms,
            What::Received {
                receiver: 1,
                device: 1,
                message: *m,
                from_account: 100,
                chat_seq: *chat_seq,
            },
        ));
    }
    trace
}

/// Every device's view: c1's two devices hold what they received, c0's two hold both messages.
fn linked_views(second_holds: Vec<ViewEntry>) -> Vec<ChatView> {
    let mut views = Vec::new();
    for device in [0, 1] {
        views.push(ChatView {
            client: 0,
            device,
            peer: 1,
            entries: vec![entry(true, message(0, 2), 1), entry(true, message(0, 1), 2)],
        });
    }
    views.push(ChatView {
        client: 1,
        device: 0,
        peer: 0,
        entries: vec![
            entry(false, message(0, 2), 1),
            entry(false, message(0, 1), 2),
        ],
    });
    views.push(ChatView {
        client: 1,
        device: 1,
        peer: 0,
        entries: second_holds,
    });
    views
}

#[test]
fn every_device_of_a_linked_recipient_is_held_to_i1_and_fifo_is_per_sending_device() {
    let planned: BTreeMap<MessageRef, u32> = [(message(0, 1), 1), (message(0, 2), 1)]
        .into_iter()
        .collect();
    let both = [(message(0, 2), 1), (message(0, 1), 2)];
    let clean = check(
        &planned,
        &linked_trace(&both),
        &linked_views(vec![
            entry(false, message(0, 2), 1),
            entry(false, message(0, 1), 2),
        ]),
    );
    assert_eq!(clean, Vec::new());

    // The second device of c1 never got message 1.
    let found = check(
        &planned,
        &linked_trace(&both[..1]),
        &linked_views(vec![entry(false, message(0, 2), 1)]),
    );
    assert!(
        found
            .iter()
            .any(|v| v.invariant == Invariant::NoLoss && v.detail.contains("c1/d1 never")),
        "{found:?}"
    );

    // c0's second device does not store the message its first device sent.
    let mut views = linked_views(vec![
        entry(false, message(0, 2), 1),
        entry(false, message(0, 1), 2),
    ]);
    views[1].entries.remove(0);
    let found = check(&planned, &linked_trace(&both), &views);
    assert!(
        found
            .iter()
            .any(|v| v.invariant == Invariant::Order && v.detail.contains("c0/d1 stores no")),
        "{found:?}"
    );

    // One sending device's messages out of order is still caught.
    let mut trace = linked_trace(&both);
    for event in &mut trace {
        if let What::Send { device, .. } = &mut event.what {
            *device = 0;
        }
    }
    let found = check(
        &planned,
        &trace,
        &linked_views(vec![
            entry(false, message(0, 2), 1),
            entry(false, message(0, 1), 2),
        ]),
    );
    assert!(
        found.iter().any(|v| v.invariant == Invariant::SenderFifo),
        "{found:?}"
    );
}

/// c0 sends c1 three messages; c1 links its second device after the first was queued (as
/// `relayd chaos` links mid-run); the second device received `second_receives` and stores
/// `second_holds`.
fn mid_run_link(
    second_receives: &[(MessageRef, u64)],
    second_holds: Vec<ViewEntry>,
) -> Vec<Violation> {
    let planned: BTreeMap<MessageRef, u32> =
        (1..=3).map(|number| (message(0, number), 1)).collect();
    let mut trace = registered();
    for number in 1..=3 {
        let m = message(0, number);
        if number == 2 {
            trace.push(at(5, What::Linked { client: 1 }));
        }
        trace.push(at(
            10,
            What::Send {
                message: m,
                recipient: 1,
                device: 0,
            },
        ));
        trace.push(at(11, What::Queued { message: m }));
        trace.push(at(12, What::Acked { message: m }));
        trace.push(at(13, received(1, m, u64::from(number))));
    }
    for (m, chat_seq) in second_receives {
        trace.push(at(
            20,
            What::Received {
                receiver: 1,
                device: 1,
                message: *m,
                from_account: 100,
                chat_seq: *chat_seq,
            },
        ));
    }
    let all: Vec<ViewEntry> = (1..=3)
        .map(|n| entry(false, message(0, n), u64::from(n)))
        .collect();
    let sent: Vec<ViewEntry> = (1..=3)
        .map(|n| entry(true, message(0, n), u64::from(n)))
        .collect();
    let views = vec![
        ChatView {
            client: 0,
            device: 0,
            peer: 1,
            entries: sent,
        },
        ChatView {
            client: 1,
            device: 0,
            peer: 0,
            entries: all,
        },
        ChatView {
            client: 1,
            device: 1,
            peer: 0,
            entries: second_holds,
        },
    ];
    check(&planned, &trace, &views)
}

#[test]
fn a_device_linked_mid_run_is_held_to_what_was_queued_after_it_joined() {
    // It missed message 1, queued before it joined, and stores the chat from chat seq 2 on.
    let later = [(message(0, 2), 2), (message(0, 3), 3)];
    let holds = || {
        vec![
            entry(false, message(0, 2), 2),
            entry(false, message(0, 3), 3),
        ]
    };
    assert_eq!(mid_run_link(&later, holds()), Vec::new());

    // Message 3, queued after it joined, never reached it.
    let found = mid_run_link(&later[..1], vec![entry(false, message(0, 2), 2)]);
    assert!(
        found.iter().any(|v| v.invariant == Invariant::NoLoss
            && v.detail.contains("c0#3 was acknowledged but c1/d1 never")),
        "{found:?}"
    );
    assert!(
        !found.iter().any(|v| v.detail.contains("c0#1")),
        "{found:?}"
    );

    // A gap after its first stored chat seq is still one.
    let found = mid_run_link(
        &[(message(0, 3), 3)],
        vec![
            entry(false, message(0, 3), 3),
            entry(false, message(0, 2), 5),
        ],
    );
    assert!(
        found.iter().any(|v| v.invariant == Invariant::Order
            && v.detail
                .contains("c1/d1's chat with c0 misses 1 of chat seqs 3..=5")),
        "{found:?}"
    );
}

#[test]
fn ticks_moving_back_late_acks_and_stuck_messages_are_reported() {
    let m = message(0, 1);
    let stuck = message(0, 2);
    let late = message(1, 1);
    let mut planned = planned();
    planned.insert(late, 0);
    let bound = LIVENESS_BOUND_MS;
    let trace = vec![
        at(10, What::Queued { message: m }),
        at(
            20,
            What::Tick {
                message: m,
                tick: 1,
            },
        ),
        at(
            30,
            What::Tick {
                message: m,
                tick: 3,
            },
        ),
        at(
            40,
            What::Tick {
                message: m,
                tick: 2,
            },
        ),
        at(50, What::Healed),
        at(60, What::Queued { message: stuck }),
        at(70, What::Queued { message: late }),
        at(80, What::Acked { message: late }),
        at(80 + bound + 1, received(0, late, 1)),
    ];
    let found: Vec<String> = {
        let mut violations = Vec::new();
        check_receipts(&trace, &mut violations);
        check_liveness(&trace, &planned, &mut violations);
        violations.iter().map(ToString::to_string).collect()
    };
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(found[0].contains("moved back from read to delivered"));
    assert!(
        found
            .iter()
            .any(|v| v.contains("c0#1 was queued") && v.contains("never acknowledged"))
    );
    assert!(found.iter().any(|v| v.contains("c0#2 was queued")));
    assert!(
        found
            .iter()
            .any(|v| v.contains("c1#1") && v.contains("arrived only"))
    );
    assert_eq!(slowest_delivery_ms(&trace, &planned), bound + 1);
}

#[test]
fn plaintext_in_a_store_is_found_and_ciphertext_is_not() {
    let planned = planned();
    let stored: Vec<(&[u8], &[u8])> = vec![
        (b"chat/1", b"\x01\x02opaque"),
        (b"chat/2", b"...c0 #1..."),
        (b"c0 #2", b"key holds it"),
        (b"chat/3", b"c0 #99 is not planned, nor is #1 or c #1"),
    ];
    let found = check_blindness("region 1", &planned, stored);
    let found: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].contains("plaintext of c0#1 under key chat/2"));
    assert!(found[1].contains("plaintext of c0#2"));
}

fn doc_entry(chat_seq: u64, text: &str) -> DocEntry {
    DocEntry {
        chat_seq,
        text: Some(text.into()),
        edited: false,
        deleted: false,
        reactions: Vec::new(),
    }
}

fn doc(device: u32, entries: Vec<DocEntry>) -> DocView {
    DocView {
        client: 1,
        device,
        peer: 0,
        entries,
        read_marks: Vec::new(),
    }
}

#[test]
fn devices_of_an_account_with_equal_documents_converge() {
    let mut edited = doc_entry(2, "c0 #2 (edited)");
    edited.edited = true;
    edited.reactions = vec![("101/7".into(), "👍".into())];
    let entries = vec![doc_entry(1, "c0 #1"), edited];
    // Another account's chat with another peer, on its one device, is compared with nothing.
    let alone = DocView {
        client: 0,
        device: 0,
        peer: 1,
        entries: vec![doc_entry(1, "c0 #1")],
        read_marks: Vec::new(),
    };
    let docs = vec![doc(1, entries.clone()), alone, doc(0, entries)];
    assert_eq!(check_convergence(&planned(), &[], &docs), Vec::new());
}

#[test]
fn devices_that_differ_are_reported_at_the_first_difference() {
    let mut reacted = doc_entry(2, "c0 #2");
    reacted.reactions = vec![("101/7".into(), "👍".into())];
    let mut deleted = doc_entry(1, "c0 #1");
    deleted.text = None;
    deleted.deleted = true;

    // A reaction one device lacks; the entries before it agree.
    let found = check_convergence(
        &planned(),
        &[],
        &[
            doc(0, vec![doc_entry(1, "c0 #1"), reacted.clone()]),
            doc(1, vec![doc_entry(1, "c0 #1"), doc_entry(2, "c0 #2")]),
        ],
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].invariant, Invariant::Convergence);
    let shown = found[0].to_string();
    assert!(
        shown.starts_with("I7 convergence: c1's chat with c0: c1 and c1/d1"),
        "{shown}"
    );
    assert!(shown.contains("message 2"), "{shown}");
    assert!(shown.contains("👍"), "{shown}");

    // A deletion one device has not seen, and a message only the other holds.
    let found = check_convergence(
        &planned(),
        &[],
        &[
            doc(1, vec![deleted]),
            doc(0, vec![doc_entry(1, "c0 #1"), reacted]),
        ],
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].detail.contains("message 1"), "{}", found[0]);
    assert!(found[0].detail.contains("(deleted)"), "{}", found[0]);

    let found = check_convergence(
        &planned(),
        &[],
        &[
            doc(0, vec![doc_entry(1, "c0 #1")]),
            doc(1, vec![doc_entry(1, "c0 #1"), doc_entry(2, "c0 #2")]),
        ],
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].detail.contains("message 2: nothing against seq 2"),
        "{}",
        found[0]
    );
}

#[test]
fn devices_whose_read_marks_differ_are_reported() {
    let mut read = doc(1, vec![doc_entry(1, "c0 #1")]);
    read.read_marks = vec![("101/1".into(), 1)];
    let found = check_convergence(
        &planned(),
        &[],
        &[doc(0, vec![doc_entry(1, "c0 #1")]), read],
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].detail.contains("the read marks"), "{}", found[0]);
}

fn changed(client: u32, device: u32, m: MessageRef, change: Change) -> TraceEvent {
    at(
        10,
        What::Changed {
            client,
            device,
            message: m,
            change,
        },
    )
}

/// c0's chat with c1 as both of c0's devices hold it.
fn own_docs(entries: Vec<DocEntry>) -> Vec<DocView> {
    (0..2)
        .map(|device| DocView {
            client: 0,
            device,
            peer: 1,
            entries: entries.clone(),
            read_marks: Vec::new(),
        })
        .collect()
}

#[test]
fn changes_an_account_made_must_show_in_its_documents() {
    let trace = vec![
        changed(0, 1, message(0, 1), Change::Edit),
        changed(0, 0, message(0, 2), Change::Delete),
        changed(0, 0, message(1, 1), Change::React("👍".into())),
        // c1 deleted its own message: c0's documents may not show it yet.
        changed(1, 0, message(1, 1), Change::Delete),
    ];
    let mut edited = doc_entry(1, &message(0, 1).edited_text("c0/d1"));
    edited.edited = true;
    let mut deleted = doc_entry(2, "");
    deleted.text = None;
    deleted.deleted = true;
    let mut reacted = doc_entry(3, "c1 #1");
    reacted.reactions = vec![("100/1".into(), "👍".into())];
    let kept = own_docs(vec![edited.clone(), deleted.clone(), reacted.clone()]);
    assert_eq!(check_convergence(&planned(), &trace, &kept), Vec::new());
    // c1's deletion has not reached c0: its message without its text is no loss.
    let kept = own_docs(vec![edited.clone(), deleted.clone()]);
    assert_eq!(check_convergence(&planned(), &trace, &kept), Vec::new());

    // Equal on both devices, but the edit, the deletion and the reaction are lost.
    let lost = own_docs(vec![
        doc_entry(1, "c0 #1"),
        doc_entry(2, "c0 #2"),
        doc_entry(3, "c1 #1"),
    ]);
    let found: Vec<String> = check_convergence(&planned(), &trace, &lost)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(found.len(), 6, "{found:#?}");
    assert!(found.iter().all(|v| v.starts_with("I7 convergence")));
    assert!(found[0].contains("c0 shows c0#1"), "{found:#?}");
    assert!(
        found.iter().any(|v| v.contains("c0/d1 still shows c0#2")
            && v.contains("after c0 deleted it for everyone"))
    );
    assert!(found.iter().any(|v| v.contains("without c0's reaction 👍")));

    // A message the account changed that its document lost altogether.
    let gone = own_docs(vec![deleted, reacted]);
    let found = check_convergence(&planned(), &trace, &gone);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].detail.contains("lost c0#1"), "{}", found[0]);
}

#[test]
fn a_message_deleted_for_everyone_is_stored_without_its_text() {
    let planned = planned();
    let mut trace = registered();
    trace.extend([
        at(
            1,
            What::Acked {
                message: message(0, 1),
            },
        ),
        at(2, received(1, message(0, 1), 1)),
        changed(0, 0, message(0, 1), Change::Delete),
    ]);
    let tombstone = ViewEntry {
        outgoing: false,
        message: None,
        chat_seq: Some(1),
    };
    let mut own_tombstone = tombstone.clone();
    own_tombstone.outgoing = true;
    let views = vec![
        ChatView {
            client: 1,
            device: 0,
            peer: 0,
            entries: vec![tombstone],
        },
        ChatView {
            client: 0,
            device: 0,
            peer: 1,
            entries: vec![own_tombstone],
        },
    ];
    assert_eq!(check(&planned, &trace, &views), Vec::new());

    // The deleting account still stores the text.
    let mut kept = views.clone();
    kept[1].entries = vec![entry(true, message(0, 1), 1)];
    let found = check(&planned, &trace, &kept);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0]
            .detail
            .contains("c0 still stores the text of c0#1, which its account deleted"),
        "{}",
        found[0]
    );
}

/// c1 links a second device and removes it between c0's two messages; the second device
/// received `second_receives`.
fn removal_run(second_receives: &[(MessageRef, u64)]) -> (Vec<TraceEvent>, Vec<ChatView>) {
    let mut trace = registered();
    trace.push(at(0, What::Linked { client: 1 }));
    for (at_ms, number) in [(1, 1), (3, 2)] {
        if number == 2 {
            trace.push(at(2, What::Removed { client: 1 }));
        }
        trace.push(at(
            at_ms,
            What::Queued {
                message: message(0, number),
            },
        ));
        trace.push(at(
            at_ms,
            What::Acked {
                message: message(0, number),
            },
        ));
    }
    trace.push(at(4, received(1, message(0, 1), 1)));
    trace.push(at(4, received(1, message(0, 2), 2)));
    let mut second = Vec::new();
    for (m, chat_seq) in second_receives {
        trace.push(at(
            5,
            What::Received {
                receiver: 1,
                device: 1,
                message: *m,
                from_account: 100,
                chat_seq: *chat_seq,
            },
        ));
        second.push(entry(false, *m, *chat_seq));
    }
    let mut views = views(vec![
        entry(false, message(0, 1), 1),
        entry(false, message(0, 2), 2),
    ]);
    views.push(ChatView {
        client: 1,
        device: 1,
        peer: 0,
        entries: second,
    });
    (trace, views)
}

#[test]
fn a_removed_device_is_held_to_nothing_but_must_receive_nothing_queued_after() {
    let planned: BTreeMap<MessageRef, u32> = [(message(0, 1), 1), (message(0, 2), 1)]
        .into_iter()
        .collect();
    // Removed before it fetched anything, or after it fetched what came before: clean.
    for second in [vec![], vec![(message(0, 1), 1)]] {
        let (trace, views) = removal_run(&second);
        assert_eq!(check(&planned, &trace, &views), Vec::new(), "{second:?}");
    }
    // c0#2 entered the outbox after the removal and still reached the removed device.
    let (trace, views) = removal_run(&[(message(0, 1), 1), (message(0, 2), 2)]);
    let found = check(&planned, &trace, &views);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].invariant, Invariant::Removal);
    assert!(
        found[0]
            .detail
            .contains("c1/d1 received c0#2 (chat seq 2), queued after it was removed"),
        "{}",
        found[0]
    );
}

#[test]
fn what_a_removed_device_never_sent_is_not_held_to_liveness() {
    let planned = planned();
    let mut trace = registered();
    trace.push(at(0, What::Linked { client: 0 }));
    trace.push(at(
        1,
        What::Send {
            message: message(0, 1),
            recipient: 1,
            device: 1,
        },
    ));
    trace.push(at(
        1,
        What::Queued {
            message: message(0, 1),
        },
    ));
    trace.push(at(2, What::Healed));
    let mut found = Vec::new();
    check_liveness(&trace, &planned, &mut found);
    assert_eq!(found.len(), 1, "queued by a current device: {found:#?}");
    trace.insert(3, at(1, What::Removed { client: 0 }));
    let mut found = Vec::new();
    check_liveness(&trace, &planned, &mut found);
    assert_eq!(found, Vec::new());
}
