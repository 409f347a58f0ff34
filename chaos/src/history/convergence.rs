//! I7 convergence: the devices of one account that exchanged the same operations hold identical
//! chat documents, and those documents hold the operations the account's devices made.
//!
//! The workload records each device's relay-sync view of each chat ([`DocView`]) after its final
//! sync, once every device of the account has finished acting; then every device of an account
//! must show each chat exactly as the account's first device does (text, edited, deleted,
//! reactions, message by message, then each device's read mark). The check reports the first
//! difference of each chat.
//!
//! Equal documents could still have lost an operation on every device alike, so each change a
//! device of the account made ([`What::Changed`]) must show in every one of its devices'
//! documents ([`check_changes`]): a message it deleted for everyone shows its text (original or
//! edited) nowhere; one it edited (and nobody deleted) shows one of the edits its devices made,
//! never the original; and each of its devices' last reaction to a message is among the
//! message's reactions. Changes the peer account made are not held against this account's
//! documents: they travel to it as envelopes, which the run does not wait for. A deletion also
//! takes the text out of the account's stored histories ([`check_deleted_views`]).

use std::collections::{BTreeMap, BTreeSet};

use super::facts::Facts;
use super::trace::{
    Change, ChatView, DocEntry, DocView, MessageRef, TraceEvent, What, client_name, device_name,
};
use super::{Findings, Invariant};

/// Compares, per (account, chat), every device's document with the first device's.
pub(crate) fn check(docs: &[DocView], findings: &mut Findings) {
    let mut by_chat: BTreeMap<(u32, u32), Vec<&DocView>> = BTreeMap::new();
    for doc in docs {
        by_chat.entry((doc.client, doc.peer)).or_default().push(doc);
    }
    for ((client, peer), mut devices) in by_chat {
        devices.sort_by_key(|doc| doc.device);
        let Some((first, others)) = devices.split_first() else {
            continue;
        };
        for other in others {
            let difference = first_difference(&first.entries, &other.entries).or_else(|| {
                (first.read_marks != other.read_marks).then(|| {
                    format!(
                        "the read marks: {:?} against {:?}",
                        first.read_marks, other.read_marks
                    )
                })
            });
            if let Some(difference) = difference {
                findings.add(
                    Invariant::Convergence,
                    format!(
                        "{}'s chat with {}: {} and {} differ first at {difference}",
                        client_name(client),
                        client_name(peer),
                        device_name(client, first.device),
                        device_name(client, other.device),
                    ),
                );
            }
        }
    }
}

/// The first entry at which two documents differ, described (`None` when they are equal).
fn first_difference(left: &[DocEntry], right: &[DocEntry]) -> Option<String> {
    let shown =
        |entry: Option<&DocEntry>| entry.map_or_else(|| "nothing".into(), |e| e.to_string());
    let at = left
        .iter()
        .zip(right)
        .position(|(l, r)| l != r)
        .or_else(|| (left.len() != right.len()).then(|| left.len().min(right.len())))?;
    Some(format!(
        "message {}: {} against {}",
        at + 1,
        shown(left.get(at)),
        shown(right.get(at))
    ))
}

/// What the devices of one account did to one message, from the trace.
#[derive(Debug, Default)]
struct Done {
    /// The account's devices that edited it.
    editors: BTreeSet<u32>,
    /// The device of the account that deleted it for everyone, if one did.
    deleted_by: Option<u32>,
    /// Each device's last reaction to it.
    reactions: BTreeMap<u32, String>,
}

/// Every change an account's devices made shows in every one of its devices' documents of the
/// message's chat (`planned` maps each message to its recipient, which names the chat).
pub(crate) fn check_changes(
    planned: &BTreeMap<MessageRef, u32>,
    trace: &[TraceEvent],
    docs: &[DocView],
    findings: &mut Findings,
) {
    // (client, peer of the chat) → message → what the client's devices did to it.
    let mut done: BTreeMap<(u32, u32), BTreeMap<MessageRef, Done>> = BTreeMap::new();
    // Messages deleted for everyone by anyone: another account's copy may not show it yet.
    let mut deleted = BTreeSet::new();
    for event in trace {
        let What::Changed {
            client,
            device,
            message,
            change,
        } = &event.what
        else {
            continue;
        };
        let Some(peer) = chat_of(planned, *client, *message) else {
            continue;
        };
        let entry = done
            .entry((*client, peer))
            .or_default()
            .entry(*message)
            .or_default();
        match change {
            Change::Edit => {
                entry.editors.insert(*device);
            }
            Change::Delete => {
                entry.deleted_by.get_or_insert(*device);
                deleted.insert(*message);
            }
            Change::React(reaction) => {
                entry.reactions.insert(*device, reaction.clone());
            }
        }
    }
    for doc in docs {
        let Some(messages) = done.get(&(doc.client, doc.peer)) else {
            continue;
        };
        let holder = device_name(doc.client, doc.device);
        for (message, what) in messages {
            let shown: Vec<&DocEntry> = doc
                .entries
                .iter()
                .filter(|entry| entry.text.as_deref().and_then(MessageRef::parse) == Some(*message))
                .collect();
            if let Some(by) = what.deleted_by {
                if let Some(entry) = shown.first() {
                    findings.add(
                        Invariant::Convergence,
                        format!(
                            "{holder} still shows {message} ({entry}) after {} deleted it for everyone",
                            device_name(doc.client, by)
                        ),
                    );
                }
                continue;
            }
            let Some(entry) = shown.first() else {
                // Deleted by the peer's account, whose deletion may still be on its way.
                if !deleted.contains(message) {
                    findings.add(
                        Invariant::Convergence,
                        format!(
                            "{holder}'s document of the chat with {} lost {message}, which its account changed",
                            client_name(doc.peer)
                        ),
                    );
                }
                continue;
            };
            if !what.editors.is_empty() {
                let edits: BTreeSet<String> = what
                    .editors
                    .iter()
                    .map(|&editor| message.edited_text(&device_name(doc.client, editor)))
                    .collect();
                if !entry.text.as_ref().is_some_and(|text| edits.contains(text)) {
                    findings.add(
                        Invariant::Convergence,
                        format!(
                            "{holder} shows {message} as {entry}, not as one of its account's edits {edits:?}"
                        ),
                    );
                }
            }
            for (device, reaction) in &what.reactions {
                if !entry.reactions.iter().any(|(_, shown)| shown == reaction) {
                    findings.add(
                        Invariant::Convergence,
                        format!(
                            "{holder} shows {message} as {entry}, without {}'s reaction {reaction}",
                            device_name(doc.client, *device)
                        ),
                    );
                }
            }
        }
    }
}

/// The peer of the chat of client `client` that holds `message`: its recipient if the client
/// sent it (by `planned`, the workload's recipients), else its sender.
pub(crate) fn chat_of(
    planned: &BTreeMap<MessageRef, u32>,
    client: u32,
    message: MessageRef,
) -> Option<u32> {
    match message.sender == client {
        true => planned.get(&message).copied(),
        false => Some(message.sender),
    }
}

/// No device of an account stores the text of a message the account deleted for everyone (a
/// device removed from the account no longer hears of deletions).
pub(crate) fn check_deleted_views(facts: &Facts<'_>, views: &[ChatView], findings: &mut Findings) {
    for view in views {
        if view.device > 0 && facts.removed.contains_key(&view.client) {
            continue;
        }
        for entry in &view.entries {
            let Some(message) = entry.message else {
                continue;
            };
            if message.sender == view.client && facts.deleted.contains(&message) {
                findings.add(
                    Invariant::Convergence,
                    format!(
                        "{} still stores the text of {message}, which its account deleted for everyone",
                        device_name(view.client, view.device)
                    ),
                );
            }
        }
    }
}
