//! What the checks read, gathered in one pass over the trace and the views, indexed so that each
//! check does a constant amount of work per event or stored entry.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::chat_of;
use super::trace::{Change, ChatView, MessageRef, TraceEvent, What};

/// The facts of one run.
pub(crate) struct Facts<'a> {
    /// Every message the workload could send, with its recipient.
    pub(crate) planned: &'a BTreeMap<MessageRef, u32>,
    /// client → its account id.
    pub(crate) accounts: BTreeMap<u32, u64>,
    /// Messages acknowledged as sent, in message order (so reports come out sorted).
    pub(crate) acked: BTreeSet<MessageRef>,
    /// Clients that linked a second device (device 1), with the trace index of the link.
    pub(crate) linked: BTreeMap<u32, usize>,
    /// Clients whose first device removed the second, with the trace index of the removal.
    pub(crate) removed: BTreeMap<u32, usize>,
    /// The trace index of the first message queued in any outbox (`usize::MAX`: none).
    pub(crate) first_queued: usize,
    /// message → the trace index of its first queueing.
    pub(crate) queued_at: HashMap<MessageRef, usize>,
    /// message → the device of its sender that sent it.
    pub(crate) sent_by: HashMap<MessageRef, u32>,
    /// (receiver, device) → received messages with their chat sequence, in arrival order.
    pub(crate) arrivals: BTreeMap<(u32, u32), Vec<(MessageRef, u64)>>,
    /// (receiver, device, message) for every arrival.
    pub(crate) arrived: HashSet<(u32, u32, MessageRef)>,
    /// (client, device, peer, message, chat seq) of every received message a device stores.
    pub(crate) stored_received: HashSet<(u32, u32, u32, MessageRef, u64)>,
    /// (client, device, peer, message) of every message of the client's account a device
    /// stores with a chat sequence (sent by it or by the account's other device).
    pub(crate) stored_sequenced: HashSet<(u32, u32, u32, MessageRef)>,
    /// (client, peer) → envelopes of their chat that carry no message (read receipts, and the
    /// edits and reactions of linked clients), sent by either side; each takes a chat sequence
    /// that no stored message holds.
    pub(crate) receipt_envelopes: BTreeMap<(u32, u32), usize>,
    /// Messages their sender's account deleted for everyone: stored without their text.
    pub(crate) deleted: HashSet<MessageRef>,
    /// (client, device, peer, chat seq) of every stored entry without a workload text (deleted,
    /// or undecryptable).
    pub(crate) textless: HashSet<(u32, u32, u32, u64)>,
}

impl<'a> Facts<'a> {
    /// The devices of `client` that must get `message`, meant for its account: the registered
    /// one, and the linked one (unless it was removed) unless the message entered an outbox
    /// before the link (one
    /// queued later was appended after the linked device joined, so its envelope had to cover
    /// it; one queued earlier may reach it or not, and the history bootstrap brings it to the
    /// documents, which I7 compares).
    pub(crate) fn devices_of(
        &self,
        client: u32,
        message: &MessageRef,
    ) -> std::ops::RangeInclusive<u32> {
        let member = match (self.linked.get(&client), self.queued_at.get(message)) {
            // A removed device is held to nothing: what it got before is checked as it came.
            _ if self.removed.contains_key(&client) => false,
            (Some(linked), Some(queued)) => linked < queued,
            (Some(_), None) => true,
            (None, _) => false,
        };
        0..=u32::from(member)
    }

    /// Whether `client` linked its second device after a message had been queued: that
    /// device's store holds only what arrived since, so its chats need not start at chat
    /// seq 1 (what came before is in its documents).
    pub(crate) fn linked_mid_run(&self, client: u32) -> bool {
        self.linked
            .get(&client)
            .is_some_and(|&linked| linked > self.first_queued)
    }

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
            linked: BTreeMap::new(),
            removed: BTreeMap::new(),
            first_queued: usize::MAX,
            queued_at: HashMap::new(),
            sent_by: HashMap::new(),
            arrivals: BTreeMap::new(),
            arrived: HashSet::new(),
            stored_received: HashSet::new(),
            stored_sequenced: HashSet::new(),
            receipt_envelopes: BTreeMap::new(),
            deleted: HashSet::new(),
            textless: HashSet::new(),
        };
        for (index, event) in trace.iter().enumerate() {
            match event.what {
                What::Registered {
                    client, account, ..
                } => {
                    facts.accounts.insert(client, account);
                }
                What::Linked { client } => {
                    facts.linked.entry(client).or_insert(index);
                }
                What::Removed { client } => {
                    facts.removed.entry(client).or_insert(index);
                }
                What::Queued { message } => {
                    facts.first_queued = facts.first_queued.min(index);
                    facts.queued_at.entry(message).or_insert(index);
                }
                What::Send {
                    message, device, ..
                } => {
                    facts.sent_by.insert(message, device);
                }
                What::Acked { message } => {
                    facts.acked.insert(message);
                }
                What::Received {
                    receiver,
                    device,
                    message,
                    chat_seq,
                    ..
                } => {
                    facts
                        .arrivals
                        .entry((receiver, device))
                        .or_default()
                        .push((message, chat_seq));
                    facts.arrived.insert((receiver, device, message));
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
                    client,
                    message,
                    ref change,
                    ..
                } => {
                    if *change == Change::Delete && message.sender == client {
                        facts.deleted.insert(message);
                    }
                    if let Some(peer) = chat_of(planned, client, message) {
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
                        facts.stored_received.insert((
                            view.client,
                            view.device,
                            view.peer,
                            message,
                            chat_seq,
                        ));
                    }
                    (Some(message), Some(_)) => {
                        facts.stored_sequenced.insert((
                            view.client,
                            view.device,
                            view.peer,
                            message,
                        ));
                    }
                    (None, Some(chat_seq)) => {
                        facts
                            .textless
                            .insert((view.client, view.device, view.peer, chat_seq));
                    }
                    _ => {}
                }
            }
        }
        facts
    }
}
