//! What the checks read, gathered in one pass over the trace and the views, indexed so that each
//! check does a constant amount of work per event or stored entry.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::trace::{ChatView, MessageRef, TraceEvent, What};

/// The facts of one run.
pub(crate) struct Facts<'a> {
    /// Every message the workload could send, with its recipient.
    pub(crate) planned: &'a BTreeMap<MessageRef, u32>,
    /// client → its account id.
    pub(crate) accounts: BTreeMap<u32, u64>,
    /// Messages acknowledged as sent, in message order (so reports come out sorted).
    pub(crate) acked: BTreeSet<MessageRef>,
    /// receiver → received messages with their chat sequence, in arrival order.
    pub(crate) arrivals: BTreeMap<u32, Vec<(MessageRef, u64)>>,
    /// (receiver, message) for every arrival.
    pub(crate) arrived: HashSet<(u32, MessageRef)>,
    /// (client, peer, message, chat seq) of every received message a client stores.
    pub(crate) stored_received: HashSet<(u32, u32, MessageRef, u64)>,
    /// (client, peer, message) of every sent message a client stores with a chat sequence.
    pub(crate) stored_sequenced: HashSet<(u32, u32, MessageRef)>,
    /// (client, peer) → envelopes of their chat that carry no message (read receipts, and the
    /// edits and reactions of linked clients), sent by either side; each takes a chat sequence
    /// that no stored message holds.
    pub(crate) receipt_envelopes: BTreeMap<(u32, u32), usize>,
}

impl<'a> Facts<'a> {
    /// One pass over `trace` and one over `views`.
    pub(crate) fn gather(
        planned: &'a BTreeMap<MessageRef, u32>,
        trace: &[TraceEvent],
        views: &[ChatView],
    ) -> Self {
        let mut facts = Facts {
            planned,
            accounts: BTreeMap::new(),
            acked: BTreeSet::new(),
            arrivals: BTreeMap::new(),
            arrived: HashSet::new(),
            stored_received: HashSet::new(),
            stored_sequenced: HashSet::new(),
            receipt_envelopes: BTreeMap::new(),
        };
        for event in trace {
            match event.what {
                What::Registered {
                    client, account, ..
                } => {
                    facts.accounts.insert(client, account);
                }
                What::Acked { message } => {
                    facts.acked.insert(message);
                }
                What::Received {
                    receiver,
                    message,
                    chat_seq,
                    ..
                } => {
                    facts
                        .arrivals
                        .entry(receiver)
                        .or_default()
                        .push((message, chat_seq));
                    facts.arrived.insert((receiver, message));
                }
                What::MarkedRead {
                    reader,
                    peer,
                    envelopes,
                } => {
                    let count = envelopes as usize;
                    *facts.receipt_envelopes.entry((reader, peer)).or_default() += count;
                    *facts.receipt_envelopes.entry((peer, reader)).or_default() += count;
                }
                What::Changed {
                    client, message, ..
                } => {
                    // The chat of the message: with its recipient, or with its sender.
                    let peer = match message.sender == client {
                        true => planned.get(&message).copied(),
                        false => Some(message.sender),
                    };
                    if let Some(peer) = peer {
                        *facts.receipt_envelopes.entry((client, peer)).or_default() += 1;
                        *facts.receipt_envelopes.entry((peer, client)).or_default() += 1;
                    }
                }
                _ => {}
            }
        }
        for view in views {
            for entry in &view.entries {
                match (entry.message, entry.chat_seq) {
                    (Some(message), Some(chat_seq)) if !entry.outgoing => {
                        facts
                            .stored_received
                            .insert((view.client, view.peer, message, chat_seq));
                    }
                    (Some(message), Some(_)) => {
                        facts
                            .stored_sequenced
                            .insert((view.client, view.peer, message));
                    }
                    _ => {}
                }
            }
        }
        facts
    }
}
