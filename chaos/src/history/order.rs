//! I2 order: per chat, a device receives strictly increasing chat sequences, and the sequences
//! it stores (its own messages' and read receipts' included) are gapless from 1 (from the first
//! it stores, for a device linked mid-run; not at all for a removed one, which stopped).

use std::collections::{BTreeMap, HashMap};

use super::facts::Facts;
use super::trace::{ChatView, client_name, device_name};
use super::{Findings, Invariant, describe};

/// At each device, arrivals of each chat come in strictly increasing chat sequence.
pub(crate) fn check_arrivals(facts: &Facts<'_>, findings: &mut Findings) {
    for ((receiver, device), received) in &facts.arrivals {
        let mut last: HashMap<u32, u64> = HashMap::new();
        for (message, chat_seq) in received {
            if let Some(previous) = last.insert(message.sender, *chat_seq)
                && previous >= *chat_seq
            {
                findings.add(
                    Invariant::Order,
                    format!(
                        "{} received {message} at chat seq {chat_seq} after chat seq {previous}",
                        device_name(*receiver, *device)
                    ),
                );
            }
        }
    }
}

/// Every acknowledged message is stored with a chat sequence by every device of its sender's
/// account (the one that sent it, and the other, which gets a copy). A message the account
/// deleted for everyone is stored without its text, so nothing names it: I7's check of the
/// changes holds its text to be gone.
pub(crate) fn check_senders_stored(facts: &Facts<'_>, findings: &mut Findings) {
    for message in facts.acked.iter().filter(|m| !facts.deleted.contains(m)) {
        let Some(recipient) = facts.planned.get(message) else {
            continue;
        };
        for device in facts.devices_of(message.sender, message) {
            let sequenced =
                facts
                    .stored_sequenced
                    .contains(&(message.sender, device, *recipient, *message));
            if !sequenced {
                findings.add(
                    Invariant::Order,
                    format!(
                        "{message} was acknowledged but {} stores no chat seq for it",
                        device_name(message.sender, device)
                    ),
                );
            }
        }
    }
}

/// One stored chat: no two messages share a chat sequence, every received message has one, and
/// the sequences from 1 to the highest miss no more than the unsequenced own envelopes (pending
/// messages and read receipts, which take numbers no stored message holds).
pub(crate) fn check_view(facts: &Facts<'_>, view: &ChatView, findings: &mut Findings) {
    let mut sequences = BTreeMap::new();
    let mut unsequenced_own = facts
        .receipt_envelopes
        .get(&(view.client, view.peer))
        .copied()
        .unwrap_or(0);
    for entry in &view.entries {
        match entry.chat_seq {
            Some(chat_seq) => {
                if let Some(other) = sequences.insert(chat_seq, entry.message) {
                    findings.add(
                        Invariant::Order,
                        format!(
                            "{} holds two messages at chat seq {chat_seq} of the chat with {} ({} and {})",
                            device_name(view.client, view.device),
                            client_name(view.peer),
                            describe(other),
                            describe(entry.message)
                        ),
                    );
                }
            }
            None if entry.outgoing => unsequenced_own += 1,
            None => findings.add(
                Invariant::Order,
                format!(
                    "{} holds a received message without a chat seq ({})",
                    device_name(view.client, view.device),
                    describe(entry.message)
                ),
            ),
        }
    }
    // A removed device stopped fetching while its own sends went on being numbered: what it
    // holds has gaps by nature (it is held to what arrived, in order, above).
    if view.device > 0 && facts.removed.contains_key(&view.client) {
        return;
    }
    // A device linked mid-run stores what arrived since it joined: its chat is gapless from
    // its first stored sequence (what came before is in its documents, which I7 compares).
    let lowest = match view.device > 0 && facts.linked_mid_run(view.client) {
        true => sequences
            .range(1..)
            .next()
            .map_or(1, |(&chat_seq, _)| chat_seq),
        false => 1,
    };
    // The stored sequences are distinct, so the gaps between the lowest and the highest are
    // their distance minus their count: no scan of lowest..=highest.
    let highest = sequences.keys().next_back().copied().unwrap_or(0);
    let held = u64::try_from(sequences.range(lowest..).count()).unwrap_or(u64::MAX);
    let span = (highest + 1).saturating_sub(lowest);
    let missing = usize::try_from(span.saturating_sub(held)).unwrap_or(usize::MAX);
    if missing > unsequenced_own {
        findings.add(
            Invariant::Order,
            format!(
                "{}'s chat with {} misses {missing} of chat seqs {lowest}..={highest}",
                device_name(view.client, view.device),
                client_name(view.peer)
            ),
        );
    }
}
