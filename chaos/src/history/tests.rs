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
            peer: 0,
            entries: receiver_entries,
        },
        ChatView {
            client: 0,
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
                from: "c0".into(),
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
