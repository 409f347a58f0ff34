//! The replica's behaviour one case at a time: operations and their refusals, concurrent edits,
//! epochs, bounded messages for a large backlog, snapshots for a new device, persisted peer
//! states, and bytes from a peer or a file that do not decode.

mod common;

use common::*;
use proptest::prelude::*;
use relay_sync::limits::{EPOCH_MESSAGES_MAX, MESSAGE_TEXT_BYTES_MAX, SYNC_MESSAGE_BYTES_MAX};
use relay_sync::{Hlc, Outcome, Replica, SyncError};

#[test]
fn operations_are_checked_and_idempotent() {
    let mut replica = Replica::new(own(1), 1);
    let first = text_of(1);
    assert_eq!(
        replica
            .append(CHAT, &message(1, other(1), &first))
            .expect("append"),
        Outcome::Applied
    );
    assert_eq!(
        replica
            .append(CHAT, &message(1, other(1), &first))
            .expect("again"),
        Outcome::Superseded
    );
    let mut changed = message(1, other(1), &first);
    changed.client_message_id.0[15] = 1;
    assert!(matches!(
        replica.append(CHAT, &changed),
        Err(SyncError::SequenceTaken { chat_seq: 1, .. })
    ));
    assert!(matches!(
        replica.append(CHAT, &message(0, other(1), "x")),
        Err(SyncError::ZeroSequence)
    ));
    let long = "x".repeat(MESSAGE_TEXT_BYTES_MAX + 1);
    assert!(matches!(
        replica.append(CHAT, &message(2, other(1), &long)),
        Err(SyncError::TextTooLong { .. })
    ));

    let at = replica.tick(1_000);
    assert!(matches!(
        replica.edit(CHAT, 1, "mine now", at),
        Err(SyncError::NotTheSender { chat_seq: 1, .. })
    ));
    assert!(matches!(
        replica.delete(CHAT, 1, at),
        Err(SyncError::NotTheSender { .. })
    ));
    assert!(matches!(
        replica.edit(CHAT, 5, "who?", at),
        Err(SyncError::UnknownMessage { chat_seq: 5, .. })
    ));
    assert!(matches!(
        replica.react(CHAT, 1, Some(&"👍".repeat(20)), at),
        Err(SyncError::ReactionTooLong { .. })
    ));

    let mut theirs = Hlc::zero(other(1));
    let edit = theirs.tick(2_000);
    assert_eq!(
        replica.edit(CHAT, 1, "their edit", edit).expect("edit"),
        Outcome::Applied
    );
    assert_eq!(
        replica.edit(CHAT, 1, "their edit", edit).expect("again"),
        Outcome::Superseded
    );
    assert!(
        replica.tick(0) > edit,
        "the device's clock moved past what it saw"
    );
    assert_eq!(
        replica
            .react(CHAT, 1, Some("👍"), replica.clock())
            .expect("react"),
        Outcome::Applied
    );
    assert_eq!(
        replica.mark_read(CHAT, own(1), 1).expect("read"),
        Outcome::Applied
    );
    assert_eq!(
        replica.mark_read(CHAT, own(1), 1).expect("read"),
        Outcome::Superseded
    );

    let view = replica.view(CHAT);
    let message = &view.messages[0];
    assert_eq!(
        (message.text.as_deref(), message.edited),
        (Some("their edit"), true)
    );
    assert_eq!(
        message.reactions.get(&own(1)).map(String::as_str),
        Some("👍")
    );
    assert_eq!(view.read_marks.get(&own(1)), Some(&1));
}

/// Two devices of the account (`own(1)`, `own(2)`) whose documents hold chat message 1, sent by
/// `sender`.
fn two_holding_message_1_of(sender: relay_proto::DeviceAddress) -> Vec<Replica> {
    let mut replicas = vec![Replica::new(own(1), 1), Replica::new(own(2), 2)];
    let first = text_of(1);
    for replica in replicas.iter_mut() {
        replica
            .append(CHAT, &message(1, sender, &first))
            .expect("append");
    }
    replicas
}

/// An older edit that arrives after a newer one loses, on the device where it arrives late and
/// everywhere after a sync.
#[test]
fn a_late_older_edit_loses_everywhere() {
    let mut replicas = two_holding_message_1_of(other(1));
    let mut theirs = Hlc::zero(other(1));
    let older = theirs.tick(1_000);
    let newer = theirs.tick(2_000);
    replicas[0].edit(CHAT, 1, "newer", newer).expect("edit");
    assert_eq!(
        replicas[0].edit(CHAT, 1, "older", older).expect("edit"),
        Outcome::Superseded
    );
    replicas[1].edit(CHAT, 1, "older", older).expect("edit");
    exchange_all(&mut replicas, None);
    for replica in &replicas {
        assert_eq!(
            replica.view(CHAT).messages[0].text.as_deref(),
            Some("newer")
        );
    }
}

#[test]
fn read_marks_only_move_forward_across_epochs() {
    let mut replicas = vec![Replica::new(own(1), 1), Replica::new(own(2), 2)];
    replicas[0]
        .mark_read(CHAT, own(1), EPOCH_MESSAGES_MAX + 5)
        .expect("read");
    replicas[1].mark_read(CHAT, own(1), 3).expect("read");
    exchange_all(&mut replicas, None);
    for replica in replicas.iter_mut() {
        assert_eq!(
            replica.view(CHAT).read_marks.get(&own(1)),
            Some(&(EPOCH_MESSAGES_MAX + 5))
        );
        let epochs: Vec<u64> = replica.epochs(CHAT).iter().map(|info| info.epoch).collect();
        assert_eq!(epochs, vec![0, 1]);
    }
}

/// A device with a backlog of thousands of messages sends it in several messages, none larger
/// than the limit, and the other device ends up with all of it.
#[test]
fn a_large_backlog_goes_in_several_bounded_messages() {
    let mut replicas = vec![Replica::new(own(1), 1), Replica::new(own(2), 2)];
    // Texts that do not compress, so the documents are as large as their texts.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for chat_seq in 1..=1_500 {
        let text: String = (0..12)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                format!("{:016x}", seed)
            })
            .collect();
        replicas[0]
            .append(CHAT, &message(chat_seq, own(1), &text))
            .expect("append");
    }
    let exchange = exchange_all(&mut replicas, None);
    assert!(exchange.largest_bytes <= SYNC_MESSAGE_BYTES_MAX);
    assert!(
        exchange.bytes > 2 * SYNC_MESSAGE_BYTES_MAX,
        "the backlog was large: {exchange:?}"
    );
    assert!(exchange.messages > 2, "{exchange:?}");
    assert_eq!(replicas[0].view(CHAT), replicas[1].view(CHAT));
    assert_eq!(replicas[1].view(CHAT).messages.len(), 1_500);
}

/// A new device starts from a snapshot, then syncs what happened meanwhile.
#[test]
fn a_new_device_starts_from_a_snapshot_and_catches_up() {
    let mut phone = Replica::new(own(1), 1);
    for chat_seq in 1..=200 {
        phone
            .append(CHAT, &message(chat_seq, own(1), &text_of(chat_seq)))
            .expect("append");
    }
    let at = phone.tick(5_000);
    phone
        .edit(CHAT, 10, "edited before the snapshot", at)
        .expect("edit");
    let snapshot = phone.save_snapshot();
    let mut laptop = Replica::load_snapshot(own(2), 2, &snapshot).expect("load");
    assert_eq!(laptop.view(CHAT), phone.view(CHAT));
    assert!(
        laptop.clock() >= at,
        "the new device's clock is past what the snapshot holds"
    );

    for chat_seq in 201..=210 {
        phone
            .append(CHAT, &message(chat_seq, own(1), &text_of(chat_seq)))
            .expect("append");
    }
    let mut replicas = vec![phone, laptop];
    let exchange = exchange_all(&mut replicas, None);
    assert_eq!(replicas[0].view(CHAT), replicas[1].view(CHAT));
    assert_eq!(replicas[1].view(CHAT).messages.len(), 210);
    assert!(
        exchange.bytes < snapshot.len(),
        "only what happened meanwhile travels: {exchange:?}"
    );
    laptop = replicas.pop().expect("two replicas");
    assert_eq!(
        laptop.view(CHAT).messages[9].text.as_deref(),
        Some("edited before the snapshot")
    );
}

/// Two devices that synced, saved their state and restarted exchange only heads, not the
/// documents again.
#[test]
fn persisted_peer_states_spare_a_full_exchange_after_a_restart() {
    let mut replicas = vec![Replica::new(own(1), 1), Replica::new(own(2), 2)];
    for chat_seq in 1..=300 {
        replicas[0]
            .append(CHAT, &message(chat_seq, own(1), &text_of(chat_seq)))
            .expect("append");
    }
    let first = exchange_all(&mut replicas, None);
    let saved: Vec<(Vec<u8>, Vec<u8>)> = replicas
        .iter_mut()
        .enumerate()
        .map(|(index, replica)| {
            (
                replica.save_snapshot(),
                replica.peer_state(own(2 - index as u32)),
            )
        })
        .collect();
    let mut restarted: Vec<Replica> = saved
        .iter()
        .enumerate()
        .map(|(index, (snapshot, peer_state))| {
            let mut replica =
                Replica::load_snapshot(own(index as u32 + 1), 10 + index as u64, snapshot)
                    .expect("load");
            replica
                .load_peer_state(own(2 - index as u32), peer_state)
                .expect("peer state");
            replica
        })
        .collect();
    let again = exchange_all(&mut restarted, None);
    assert!(
        again.bytes * 10 < first.bytes,
        "first {first:?}, after the restart {again:?}"
    );
    assert_eq!(restarted[0].view(CHAT), restarted[1].view(CHAT));
}

#[test]
fn damaged_files_are_typed_errors() {
    let mut replica = Replica::new(own(1), 1);
    replica
        .append(CHAT, &message(1, own(1), "hello"))
        .expect("append");
    let snapshot = replica.save_snapshot();
    assert!(matches!(
        Replica::load_snapshot(own(2), 2, &snapshot[..snapshot.len() - 3]),
        Err(SyncError::Malformed { .. })
    ));
    let mut flipped = snapshot.clone();
    let last = flipped.len() - 10;
    flipped[last] ^= 0xff;
    assert!(Replica::load_snapshot(own(2), 2, &flipped).is_err());
    let mut doubled = snapshot.clone();
    doubled[7] = 2; // two epochs announced
    doubled.extend_from_slice(&snapshot[8..]);
    assert!(matches!(
        Replica::load_snapshot(own(2), 2, &doubled),
        Err(SyncError::Malformed { .. })
    ));
    assert!(matches!(
        replica.load_peer_state(own(2), b"RSP2"),
        Err(SyncError::Malformed { .. })
    ));
    // A snapshot of the first layout (epochs of 10,000 chat sequences) names its version.
    let mut first_layout = snapshot.clone();
    first_layout[3] = b'1';
    match Replica::load_snapshot(own(2), 2, &first_layout) {
        Err(SyncError::Malformed { reason, .. }) => {
            assert!(reason.contains("layout version 1"), "{reason}");
        }
        other => panic!("a version 1 snapshot was not refused: {other:?}"),
    }
}

/// Where a sync message's first part names its generation number: after the message header
/// (magic, session, number, part count) and the part's chat and epoch.
const FIRST_PART_GENERATION_LAST_BYTE: usize = 4 + 8 + 8 + 2 + 16 + 8 + 7;

/// A damaged part that names a generation no device holds opens no lasting place: the devices
/// still converge on the real generation, the receiver's peer is not made to receive the
/// phantom too, and once the sessions restart the phantom is forgotten.
#[test]
fn a_generation_no_device_holds_neither_spreads_nor_blocks() {
    let mut replicas = vec![Replica::new(own(1), 1), Replica::new(own(2), 2)];
    for chat_seq in 1..=20 {
        replicas[0]
            .append(CHAT, &message(chat_seq, own(1), &text_of(chat_seq)))
            .expect("append");
    }
    let mut damaged = replicas[0]
        .generate_message(own(2))
        .expect("a first message");
    damaged[FIRST_PART_GENERATION_LAST_BYTE] = 7;
    replicas[1]
        .receive_message(own(1), &damaged)
        .expect("a well-formed message");
    let phantom = replicas[1].epochs(CHAT)[0].receiving.clone();
    assert_eq!(
        phantom.iter().map(|id| id.generation).collect::<Vec<_>>(),
        vec![7],
        "the damaged part named generation 7"
    );

    replicas[0].reset_peer(own(2));
    exchange_all(&mut replicas, None);
    assert_eq!(replicas[1].view(CHAT).messages.len(), 20);
    assert_eq!(replicas[0].view(CHAT), replicas[1].view(CHAT));
    assert!(
        replicas[0].epochs(CHAT)[0].receiving.is_empty(),
        "a request for the phantom does not make its peer receive it"
    );
    assert!(
        replicas[1].epochs(CHAT)[0].receiving.is_empty(),
        "the peer that named it started over without delivering it"
    );
}

proptest! {
    /// Random bytes, and real messages cut short or with a byte changed, are refused with a
    /// typed error or applied; they never panic the receiver, and once the sessions restart the
    /// two devices still converge.
    #[test]
    fn bad_bytes_from_a_peer_never_panic(
        noise in proptest::collection::vec(any::<u8>(), 0..512),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut replicas = vec![Replica::new(own(1), 1), Replica::new(own(2), 2)];
        for chat_seq in 1..=20 {
            replicas[0].append(CHAT, &message(chat_seq, own(1), &text_of(chat_seq))).expect("append");
        }
        replicas[1].append(CHAT, &message(21, own(1), &text_of(21))).expect("append");
        let _ = replicas[1].receive_message(own(1), &noise);
        let mut prefixed = b"RSM2".to_vec();
        prefixed.extend_from_slice(&noise);
        let _ = replicas[1].receive_message(own(1), &prefixed);
        let _ = Replica::load_snapshot(own(2), 3, &noise);
        let _ = replicas[1].load_peer_state(own(1), &noise);
        let mut damaged_messages = 0;
        for _ in 0..6 {
            let Some(bytes) = replicas[0].generate_message(own(2)) else { break };
            let mut cut_short = bytes.clone();
            cut_short.truncate(cut.index(bytes.len()));
            prop_assert!(replicas[1].receive_message(own(1), &cut_short).is_err());
            let mut flipped = bytes.clone();
            let at = flip.index(bytes.len());
            flipped[at] = flipped[at].wrapping_add(value);
            let _ = replicas[1].receive_message(own(1), &flipped);
            damaged_messages += 2;
            let _ = replicas[1].receive_message(own(1), &bytes);
            if let Some(reply) = replicas[1].generate_message(own(1)) {
                let _ = replicas[0].receive_message(own(2), &reply);
            }
        }
        prop_assert!(damaged_messages > 0);
        replicas[0].reset_peer(own(2));
        replicas[1].reset_peer(own(1));
        exchange_all(&mut replicas, None);
        prop_assert_eq!(replicas[0].view(CHAT), replicas[1].view(CHAT));
        prop_assert_eq!(replicas[0].view(CHAT).messages.len(), 21);
    }
}

/// Two devices of the sending account edit one message while apart: after a sync both show
/// the later edit by hybrid logical clock, whichever device wrote it.
#[test]
fn concurrent_edits_of_two_own_devices_converge_on_the_later_one() {
    let mut replicas = two_holding_message_1_of(own(1));
    let earlier = replicas[0].tick(1_000);
    let later = replicas[1].tick(2_000);
    replicas[0].edit(CHAT, 1, "earlier", earlier).expect("edit");
    replicas[1].edit(CHAT, 1, "later", later).expect("edit");
    exchange_all(&mut replicas, None);
    for replica in &replicas {
        assert_eq!(
            replica.view(CHAT).messages[0].text.as_deref(),
            Some("later")
        );
    }
}

/// A replica knows when its peer holds what it holds: not before they have exchanged, yes
/// after, and no again after either side changes something, until they exchange again.
#[test]
fn a_replica_knows_when_its_peer_holds_the_same_documents() {
    let mut replicas = two_holding_message_1_of(own(1));
    let (one, two) = (own(1), own(2));
    assert!(!replicas[0].in_sync_with(two), "nothing heard from it yet");
    exchange_all(&mut replicas, None);
    assert!(replicas[0].in_sync_with(two));
    assert!(replicas[1].in_sync_with(one));
    assert!(!replicas[0].in_sync_with(own(3)), "an unknown device");

    let at = replicas[1].tick(5_000);
    replicas[1].edit(CHAT, 1, "changed", at).expect("edit");
    assert!(!replicas[1].in_sync_with(one), "its change is not out yet");
    // The edit goes out; until the answer comes back, the editor does not know it arrived.
    let bytes = replicas[1].generate_message(one).expect("the edit");
    assert!(!replicas[1].in_sync_with(one));
    replicas[0].receive_message(two, &bytes).expect("applies");
    exchange_all(&mut replicas, None);
    assert!(replicas[0].in_sync_with(two));
    assert!(replicas[1].in_sync_with(one));
    assert_eq!(
        replicas[0].view(CHAT).messages[0].text.as_deref(),
        Some("changed")
    );
}

/// Both devices change a message while their messages cross. Automerge stays silent when the
/// peer's next message names heads equal to its own, so without an answer the first device
/// would never learn that its change arrived; the replica answers with its heads after changes
/// arrive, and both know they are in sync.
#[test]
fn crossing_changes_end_with_both_replicas_knowing_they_are_in_sync() {
    let mut replicas = two_holding_message_1_of(own(1));
    exchange_all(&mut replicas, None);
    let (one, two) = (own(1), own(2));

    let at = replicas[0].tick(5_000);
    replicas[0].edit(CHAT, 1, "from one", at).expect("edit");
    let from_one = replicas[0].generate_message(two).expect("its change");
    let at = replicas[1].tick(6_000);
    replicas[1].react(CHAT, 1, Some("👍"), at).expect("react");
    let from_two = replicas[1].generate_message(one).expect("its change");
    replicas[0]
        .receive_message(two, &from_two)
        .expect("applies");
    let heads_of_one = replicas[0].generate_message(two).expect("its new heads");
    replicas[1]
        .receive_message(one, &from_one)
        .expect("applies");
    replicas[1]
        .receive_message(one, &heads_of_one)
        .expect("applies");

    exchange_all(&mut replicas, None);
    assert!(replicas[0].in_sync_with(two), "the first device heard back");
    assert!(replicas[1].in_sync_with(one));
    assert_eq!(
        replicas[0].view(CHAT).messages,
        replicas[1].view(CHAT).messages
    );
}
