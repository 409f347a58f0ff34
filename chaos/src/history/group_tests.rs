//! The group checks' own tests: a clean group history passes, and loss, a removed member or
//! device decrypting a later text, reordering, duplicates, undecryptable texts, ticks moving
//! back, a text that never settles and plaintext in a store are each caught.

use std::collections::BTreeSet;

use super::*;
use crate::workload::{GroupPlan, PlannedGroupSend};

fn text(sender: u32, number: u32) -> GroupMessageRef {
    GroupMessageRef {
        group: 1,
        sender,
        number,
    }
}

fn at(at_ms: u64, what: What) -> TraceEvent {
    TraceEvent { at_ms, what }
}

/// Group 1: created by c0 with c1 and c2; c2 removed, c3 added; c0 sends two texts, c1 one.
fn plan() -> Vec<GroupPlan> {
    let sends = [text(0, 1), text(0, 2), text(1, 1)]
        .into_iter()
        .map(|message| PlannedGroupSend { message, at_ms: 0 })
        .collect();
    vec![GroupPlan {
        group: 1,
        creator: 0,
        members: vec![0, 1, 2],
        sends,
        removal: Some((2, 10)),
        addition: Some((3, 20)),
    }]
}

/// `receiver`'s `device` got `message`, under a number of the group's chat of its own.
fn got(receiver: u32, device: u32, message: GroupMessageRef) -> What {
    got_as(
        receiver,
        device,
        message,
        u64::from(message.sender) * 100 + u64::from(message.number),
    )
}

/// As [`got`], under the chat number `chat_seq`.
fn got_as(receiver: u32, device: u32, message: GroupMessageRef, chat_seq: u64) -> What {
    What::GroupReceived {
        receiver,
        device,
        message,
        from_account: u64::from(message.sender) + 100,
        chat_seq,
    }
}

/// Sends `message` (started, queued and acknowledged in a row).
fn sent(message: GroupMessageRef) -> Vec<What> {
    vec![
        What::GroupSend { message, device: 0 },
        What::GroupQueued { message },
        What::GroupAcked { message },
        What::GroupTick { message, tick: 1 },
    ]
}

/// c0#1 before any change (everyone gets it), c2's removal asked and acknowledged, c3's
/// addition, then c0#2 and c1#1 (c1 and c3 get them; c1 has a second device).
fn history(after: Vec<What>) -> Vec<TraceEvent> {
    let mut whats: Vec<What> = (0..4)
        .map(|client| What::Registered {
            client,
            account: u64::from(client) + 100,
            region: 1,
        })
        .collect();
    whats.push(What::Linked { client: 1 });
    whats.push(What::GroupChanged {
        group: 1,
        by: 0,
        change: GroupChange::Create(vec![0, 1, 2]),
        version: 1,
    });
    whats.extend(sent(text(0, 1)));
    whats.extend([
        got(1, 0, text(0, 1)),
        got(1, 1, text(0, 1)),
        got(2, 0, text(0, 1)),
    ]);
    let remove = GroupChange::Remove(2);
    whats.push(What::GroupChangeAsked {
        group: 1,
        by: 0,
        change: remove.clone(),
    });
    whats.push(What::GroupChanged {
        group: 1,
        by: 0,
        change: remove,
        version: 2,
    });
    whats.push(What::GroupChanged {
        group: 1,
        by: 0,
        change: GroupChange::Add(3),
        version: 3,
    });
    whats.extend(sent(text(0, 2)));
    whats.extend(sent(text(1, 1)));
    whats.extend(after);
    whats
        .into_iter()
        .enumerate()
        .map(|(index, what)| at(index as u64, what))
        .collect()
}

fn everything_arrives() -> Vec<What> {
    vec![
        got(1, 0, text(0, 2)),
        got(1, 1, text(0, 2)),
        got(3, 0, text(0, 2)),
        got(0, 0, text(1, 1)),
        got(3, 0, text(1, 1)),
    ]
}

fn found(after: Vec<What>) -> Vec<String> {
    check_groups(&plan(), &history(after))
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn group_texts_round_trip_and_are_not_one_to_one_texts() {
    let message = text(3, 12);
    assert_eq!(GroupMessageRef::parse(&message.text()), Some(message));
    assert_eq!(MessageRef::parse(&message.text()), None);
    assert_eq!(
        GroupMessageRef::parse(
            &MessageRef {
                sender: 3,
                number: 12
            }
            .text()
        ),
        None
    );
}

#[test]
fn a_clean_group_history_passes() {
    assert_eq!(found(everything_arrives()), Vec::<String>::new());
}

#[test]
fn a_lost_text_is_caught_at_each_device_held_to_it() {
    let mut after = everything_arrives();
    after.retain(|what| *what != got(1, 1, text(0, 2)) && *what != got(3, 0, text(1, 1)));
    let found = found(after);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].contains("g1:c0#2 was acknowledged but c1/d1"),
        "{found:#?}"
    );
    assert!(
        found[1].contains("g1:c1#1 was acknowledged but c3"),
        "{found:#?}"
    );
}

#[test]
fn a_removed_member_or_device_decrypting_a_later_text_is_caught() {
    let mut after = everything_arrives();
    after.push(got(2, 0, text(0, 2)));
    let found_member = found(after);
    assert_eq!(found_member.len(), 1, "{found_member:#?}");
    assert!(found_member[0].starts_with("removal: c2 decrypted g1:c0#2"));

    let mut after = vec![What::Removed { client: 1 }];
    after.extend(sent(GroupMessageRef {
        number: 3,
        ..text(0, 1)
    }));
    after.extend(everything_arrives());
    after.push(got(1, 0, text(0, 3)));
    after.push(got(3, 0, text(0, 3)));
    after.push(got(1, 1, text(0, 3)));
    let found_device = check_groups(
        &{
            let mut plan = plan();
            plan[0].sends.push(PlannedGroupSend {
                message: text(0, 3),
                at_ms: 0,
            });
            plan
        },
        &history(after),
    );
    assert_eq!(found_device.len(), 1, "{found_device:#?}");
    assert!(found_device[0].to_string().contains("c1/d1 was removed"));
}

#[test]
fn a_removal_racing_a_text_excuses_it_either_way() {
    // c2's removal is asked before c0#9 is acknowledged: c2 may get it or not.
    let plan = {
        let mut plan = plan();
        plan[0].sends.push(PlannedGroupSend {
            message: text(0, 9),
            at_ms: 0,
        });
        plan
    };
    let mut whats: Vec<What> = (0..3)
        .map(|client| What::Registered {
            client,
            account: u64::from(client) + 100,
            region: 1,
        })
        .collect();
    whats.push(What::GroupChanged {
        group: 1,
        by: 0,
        change: GroupChange::Create(vec![0, 1, 2]),
        version: 1,
    });
    whats.push(What::GroupSend {
        message: text(0, 9),
        device: 0,
    });
    whats.push(What::GroupChangeAsked {
        group: 1,
        by: 0,
        change: GroupChange::Remove(2),
    });
    whats.push(What::GroupAcked {
        message: text(0, 9),
    });
    whats.push(got(1, 0, text(0, 9)));
    let trace: Vec<TraceEvent> = whats.into_iter().map(|what| at(0, what)).collect();
    assert!(check_groups(&plan, &trace).is_empty());
}

#[test]
fn a_group_chat_number_naming_two_texts_at_a_device_is_caught() {
    // c3's device got c0#2 under the number c1#1 came under; c1's devices number the chat
    // apart from c3's (another home), which is no violation.
    let mut after = everything_arrives();
    after.retain(|what| !matches!(what, What::GroupReceived { receiver: 3, .. }));
    after.push(got_as(3, 0, text(0, 2), 7));
    after.push(got_as(3, 0, text(1, 1), 7));
    after.push(got_as(1, 0, text(0, 3), 7));
    let found = found(after);
    assert!(
        found.iter().any(|line| line
            == "I2 order: c3 received g1:c1#1 as number 7 of its group's chat, the number g1:c0#2 came under"),
        "{found:#?}"
    );
    assert_eq!(
        found.iter().filter(|line| line.starts_with("I2")).count(),
        1,
        "{found:#?}"
    );
}

#[test]
fn reordering_duplicates_garbage_and_ticks_moving_back_are_caught() {
    let after = vec![
        got(1, 0, text(0, 2)),
        got(1, 1, text(0, 2)),
        got(1, 1, text(0, 2)),
        got(3, 0, text(1, 1)),
        got(3, 0, text(0, 2)),
        got(3, 0, text(0, 1)),
        got(0, 0, text(1, 1)),
        got(1, 0, text(0, 1)),
        What::GroupUndecryptable {
            receiver: 3,
            device: 0,
            from: "c0".into(),
            reason: "no key".into(),
        },
        got(4, 0, text(0, 1)),
        What::GroupTick {
            message: text(0, 1),
            tick: 3,
        },
        What::GroupTick {
            message: text(0, 1),
            tick: 2,
        },
    ];
    let found = found(after);
    let has = |needle: &str| found.iter().any(|line| line.contains(needle));
    assert!(
        has("I4 idempotence: c1/d1 received g1:c0#2 twice"),
        "{found:#?}"
    );
    assert!(
        has("I4 idempotence: c1 received g1:c0#1 twice"),
        "{found:#?}"
    );
    assert!(has("I8 decryptable: c3 could not decrypt"), "{found:#?}");
    assert!(
        has("I8 decryptable: c4 received g1:c0#1, but was never a member"),
        "{found:#?}"
    );
    assert!(
        has("I6 receipts move forward: g1:c0#1's tick moved back"),
        "{found:#?}"
    );
    assert!(
        has("I3 sender FIFO: c3 received g1:c0#1 after g1:c0#2"),
        "{found:#?}"
    );
    assert_eq!(found.len(), 6, "{found:#?}");
}

#[test]
fn a_text_never_acknowledged_breaks_liveness_even_if_its_sender_was_being_removed() {
    let unsettled = |sender: u32| {
        let message = GroupMessageRef {
            number: 7,
            ..text(sender, 0)
        };
        let mut plan = plan();
        plan[0].sends.push(PlannedGroupSend { message, at_ms: 0 });
        let mut whats = vec![
            What::GroupChangeAsked {
                group: 1,
                by: 0,
                change: GroupChange::Remove(2),
            },
            What::GroupSend { message, device: 0 },
            What::GroupQueued { message },
        ];
        whats.push(What::Healed);
        let trace: Vec<TraceEvent> = whats.into_iter().map(|what| at(5, what)).collect();
        (check_groups(&plan, &trace), stuck_group_texts(&trace))
    };
    let (violations, stuck) = unsettled(1);
    assert_eq!(stuck, 0);
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert!(
        violations[0]
            .to_string()
            .contains("g1:c1#7 was queued at 5 ms and never acknowledged")
    );
    // The sender being removed: it still must settle (acknowledged, or failed as from a
    // non-member), and it is counted as stuck too.
    let (violations, stuck) = unsettled(2);
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!(stuck, 1);
}

#[test]
fn group_plaintext_in_a_store_is_found() {
    let planned: BTreeSet<GroupMessageRef> = [text(0, 1), text(0, 2)].into_iter().collect();
    let stored: Vec<(&[u8], &[u8])> = vec![
        (b"chat/1", b"\x01opaque"),
        (b"chat/2", b"..c0 #g1.1.."),
        (
            b"chat/3",
            b"c0 #1 and c0 #g1.9 and c0 #g.2 are not planned group texts",
        ),
    ];
    let found = check_group_blindness("region 1", &planned, stored);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0]
            .to_string()
            .contains("plaintext of g1:c0#1 under key chat/2")
    );
}
