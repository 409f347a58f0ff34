//! Property tests of convergence (I7): three devices of one user apply random operations and
//! exchange sync messages at random (some lost, some delivered twice, sessions reset), then
//! sync fully. Every device then shows the same chat, and that chat is what the operations
//! say: edits resolved by the highest clock reading, the earliest deletion kept, read marks at
//! their maximum, and no deleted text in any view, saved state or later sync message.
//! Deterministic from the proptest seed.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use relay_proto::DeviceAddress;
use relay_sync::inspect::{contains, snapshot_plaintext};
use relay_sync::limits::EPOCH_MESSAGES_MAX;
use relay_sync::{Hlc, Replica};

const REPLICAS: usize = 3;
/// Chat sequences the tests use: across three epochs, with the epoch boundaries.
const SEQUENCES: [u64; 8] = [
    1,
    2,
    3,
    EPOCH_MESSAGES_MAX - 1,
    EPOCH_MESSAGES_MAX,
    EPOCH_MESSAGES_MAX + 1,
    EPOCH_MESSAGES_MAX + 2,
    2 * EPOCH_MESSAGES_MAX + 1,
];
const EMOJIS: [&str; 3] = ["👍", "❤", "😂"];

#[derive(Debug, Clone)]
enum Fate {
    Deliver,
    Drop,
    Duplicate,
}

#[derive(Debug, Clone)]
enum Op {
    /// The relay delivers message `SEQUENCES[seq]` to a device.
    Append { replica: usize, seq: usize },
    /// A device edits a message at `wall_ms` (refused unless the user sent it).
    Edit {
        replica: usize,
        seq: usize,
        wall_ms: u64,
    },
    /// A device deletes a message for everyone at `wall_ms` (likewise).
    Delete {
        replica: usize,
        seq: usize,
        wall_ms: u64,
    },
    /// The other person edits (or, with `delete`, deletes) a message at `wall_ms`; the relay
    /// delivers it later to each device ([`Op::Deliver`]), in any order.
    Remote {
        seq: usize,
        wall_ms: u64,
        delete: bool,
    },
    /// The relay delivers one of the other person's edits or deletions to a device.
    Deliver { replica: usize, which: usize },
    /// A reaction (or its removal) made on a device.
    React {
        replica: usize,
        seq: usize,
        emoji: Option<usize>,
        wall_ms: u64,
    },
    /// A device reads up to a chat sequence.
    Read { replica: usize, seq: usize },
    /// One sync message between two devices, with its fate.
    Sync { from: usize, to: usize, fate: Fate },
    /// A device gives up waiting on a peer and starts a new session with it.
    Reset { replica: usize, peer: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let replica = 0..REPLICAS;
    let seq = 0..SEQUENCES.len();
    let wall = 1_000u64..1_040;
    prop_oneof![
        4 => (replica.clone(), seq.clone()).prop_map(|(replica, seq)| Op::Append { replica, seq }),
        2 => (replica.clone(), seq.clone(), wall.clone()).prop_map(|(replica, seq, wall_ms)| Op::Edit { replica, seq, wall_ms }),
        1 => (replica.clone(), seq.clone(), wall.clone()).prop_map(|(replica, seq, wall_ms)| Op::Delete { replica, seq, wall_ms }),
        2 => (replica.clone(), seq.clone(), proptest::option::of(0..EMOJIS.len()), wall.clone())
            .prop_map(|(replica, seq, emoji, wall_ms)| Op::React { replica, seq, emoji, wall_ms }),
        1 => (replica.clone(), seq.clone()).prop_map(|(replica, seq)| Op::Read { replica, seq }),
        2 => (seq.clone(), wall.clone(), proptest::bool::weighted(0.3)).prop_map(|(seq, wall_ms, delete)| Op::Remote { seq, wall_ms, delete }),
        3 => (replica.clone(), 0..64usize).prop_map(|(replica, which)| Op::Deliver { replica, which }),
        6 => (replica.clone(), replica.clone(), prop_oneof![6 => Just(Fate::Deliver), 1 => Just(Fate::Drop), 1 => Just(Fate::Duplicate)])
            .prop_filter("two devices", |(from, to, _)| from != to)
            .prop_map(|(from, to, fate)| Op::Sync { from, to, fate }),
        1 => (replica.clone(), replica).prop_filter("two devices", |(a, b)| a != b).prop_map(|(replica, peer)| Op::Reset { replica, peer }),
    ]
}

/// Who sent message `chat_seq`: odd ones the user's first device, even ones the other person.
fn sender_of(chat_seq: u64) -> DeviceAddress {
    if chat_seq % 2 == 1 { own(1) } else { other(1) }
}

/// What the operations that took effect say the chat must be.
#[derive(Debug, Default)]
struct Model {
    appended: BTreeMap<u64, ()>,
    edits: BTreeMap<u64, Vec<(Hlc, String)>>,
    deletions: BTreeMap<u64, Vec<Hlc>>,
    reactions: BTreeMap<(u64, DeviceAddress), Vec<(Hlc, String)>>,
    read_marks: BTreeMap<DeviceAddress, u64>,
}

fn device_of(replica: usize) -> DeviceAddress {
    own(replica as u32 + 1)
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|index| Replica::new(device_of(index), 100 + index as u64))
        .collect();
    let mut model = Model::default();
    let texts: BTreeMap<u64, String> = SEQUENCES.iter().map(|seq| (*seq, text_of(*seq))).collect();
    // The other person's device has its own clock; its edits and deletions wait in `remote`
    // until the relay delivers them.
    let mut their_clock = Hlc::zero(other(1));
    let mut remote: Vec<(u64, Hlc, Option<String>)> = Vec::new();

    for (index, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append { replica, seq } => {
                let chat_seq = SEQUENCES[seq];
                replicas[replica]
                    .append(
                        CHAT,
                        &message(chat_seq, sender_of(chat_seq), &texts[&chat_seq]),
                    )
                    .map_err(|error| TestCaseError::fail(format!("append: {error}")))?;
                model.appended.insert(chat_seq, ());
            }
            Op::Edit {
                replica,
                seq,
                wall_ms,
            } => {
                let chat_seq = SEQUENCES[seq];
                let at = replicas[replica].tick(wall_ms);
                let text = format!("<edit {index} of {chat_seq}>");
                if replicas[replica].edit(CHAT, chat_seq, &text, at).is_ok() {
                    model.edits.entry(chat_seq).or_default().push((at, text));
                }
            }
            Op::Delete {
                replica,
                seq,
                wall_ms,
            } => {
                let chat_seq = SEQUENCES[seq];
                let at = replicas[replica].tick(wall_ms);
                if replicas[replica].delete(CHAT, chat_seq, at).is_ok() {
                    model.deletions.entry(chat_seq).or_default().push(at);
                }
            }
            Op::Remote {
                seq,
                wall_ms,
                delete,
            } => {
                let chat_seq = SEQUENCES[seq];
                let at = their_clock.tick(wall_ms);
                let text = (!delete).then(|| format!("<their edit {index} of {chat_seq}>"));
                remote.push((chat_seq, at, text));
            }
            Op::Deliver { replica, which } => {
                if remote.is_empty() {
                    continue;
                }
                let (chat_seq, at, text) = remote[which % remote.len()].clone();
                match text {
                    Some(text) => {
                        if replicas[replica].edit(CHAT, chat_seq, &text, at).is_ok() {
                            model.edits.entry(chat_seq).or_default().push((at, text));
                        }
                    }
                    None => {
                        if replicas[replica].delete(CHAT, chat_seq, at).is_ok() {
                            model.deletions.entry(chat_seq).or_default().push(at);
                        }
                    }
                }
            }
            Op::React {
                replica,
                seq,
                emoji,
                wall_ms,
            } => {
                let chat_seq = SEQUENCES[seq];
                let at = replicas[replica].tick(wall_ms);
                let emoji = emoji.map(|index| EMOJIS[index]);
                if replicas[replica].react(CHAT, chat_seq, emoji, at).is_ok() {
                    model
                        .reactions
                        .entry((chat_seq, at.device))
                        .or_default()
                        .push((at, emoji.unwrap_or_default().to_owned()));
                }
            }
            Op::Read { replica, seq } => {
                let chat_seq = SEQUENCES[seq];
                let reader = device_of(replica);
                replicas[replica]
                    .mark_read(CHAT, reader, chat_seq)
                    .map_err(|error| TestCaseError::fail(format!("read: {error}")))?;
                let mark = model.read_marks.entry(reader).or_default();
                *mark = (*mark).max(chat_seq);
            }
            Op::Sync { from, to, fate } => {
                let (from_device, to_device) = (device_of(from), device_of(to));
                if let Some(bytes) = replicas[from].generate_message(to_device) {
                    let times = match fate {
                        Fate::Deliver => 1,
                        Fate::Drop => 0,
                        Fate::Duplicate => 2,
                    };
                    for _ in 0..times {
                        replicas[to]
                            .receive_message(from_device, &bytes)
                            .map_err(|error| TestCaseError::fail(format!("receive: {error}")))?;
                    }
                }
            }
            Op::Reset { replica, peer } => replicas[replica].reset_peer(device_of(peer)),
        }
    }

    // The devices reconnect (new sessions), and sync until no one has anything to say.
    for replica in replicas.iter_mut() {
        for peer in 0..REPLICAS {
            replica.reset_peer(device_of(peer));
        }
    }
    exchange_all(&mut replicas, None);

    let view = replicas[0].view(CHAT);
    for replica in &replicas[1..] {
        prop_assert_eq!(
            &replica.view(CHAT),
            &view,
            "I7: every device shows the same chat"
        );
    }
    let epochs = replicas[0].epochs(CHAT);
    for replica in replicas[1..].iter_mut() {
        prop_assert_eq!(&replica.epochs(CHAT), &epochs, "same generations and heads");
    }

    // The view is what the operations say.
    let shown: Vec<u64> = view
        .messages
        .iter()
        .map(|message| message.chat_seq)
        .collect();
    prop_assert_eq!(shown, model.appended.keys().copied().collect::<Vec<_>>());
    for message in &view.messages {
        let chat_seq = message.chat_seq;
        let deleted = model
            .deletions
            .get(&chat_seq)
            .and_then(|deletions| deletions.iter().min().copied());
        prop_assert_eq!(message.deleted.map(|deletion| deletion.at), deleted);
        let expected_text = match deleted {
            Some(_) => None,
            None => Some(
                model
                    .edits
                    .get(&chat_seq)
                    .and_then(|edits| edits.iter().max_by_key(|(at, _)| *at))
                    .map_or_else(|| texts[&chat_seq].clone(), |(_, text)| text.clone()),
            ),
        };
        prop_assert_eq!(&message.text, &expected_text, "text of {}", chat_seq);
        for device in (0..REPLICAS).map(device_of) {
            let expected = model
                .reactions
                .get(&(chat_seq, device))
                .and_then(|reactions| reactions.iter().max_by_key(|(at, _)| *at))
                .map(|(_, emoji)| emoji.clone())
                .filter(|emoji| !emoji.is_empty());
            prop_assert_eq!(
                message.reactions.get(&device).cloned(),
                expected,
                "reaction to {}",
                chat_seq
            );
        }
    }
    prop_assert_eq!(&view.read_marks, &model.read_marks);

    // Deleted texts, originals and edits alike, are gone from every saved state and from
    // every sync message sent from now on.
    let deleted_texts: Vec<String> = model
        .deletions
        .keys()
        .flat_map(|chat_seq| {
            std::iter::once(texts[chat_seq].clone()).chain(
                model
                    .edits
                    .get(chat_seq)
                    .into_iter()
                    .flatten()
                    .map(|(_, text)| text.clone()),
            )
        })
        .collect();
    for replica in replicas.iter_mut() {
        let at = replica.tick(2_000);
        replica.react(CHAT, SEQUENCES[0], Some("👍"), at).ok();
        replica.append(CHAT, &message(30_001, own(1), "after")).ok();
    }
    let mut transcripts = Vec::new();
    exchange_all(&mut replicas, Some(&mut transcripts));
    for (index, replica) in replicas.iter_mut().enumerate() {
        let saved = snapshot_plaintext(&replica.save_snapshot())
            .map_err(|error| TestCaseError::fail(format!("snapshot: {error}")))?;
        for text in &deleted_texts {
            prop_assert!(
                !contains(&saved, text.as_bytes()),
                "device {} saved deleted {}",
                index,
                text
            );
            prop_assert!(
                !view
                    .messages
                    .iter()
                    .any(|message| message.text.as_deref() == Some(text))
            );
        }
    }
    for ((from, to), transcript) in &transcripts {
        for text in &deleted_texts {
            prop_assert!(
                !contains(transcript.plaintext(), text.as_bytes()),
                "{} -> {} sent deleted {}",
                from,
                to,
                text
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn devices_converge_on_what_the_operations_say(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
