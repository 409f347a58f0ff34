//! Observation: each device's events turned into trace events, progress ([`observe`]) and the
//! device's own view of them ([`Observer`]).

use std::collections::{BTreeMap, BTreeSet};

use relay_client::Event;
use relay_client::events::Direction;
use relay_client::limits::READ_RECEIPT_IDS_MAX;
use relay_client::store::Tick;

use super::Ledger;
use crate::history::{MessageRef, What, client_number};

/// One client's view of its own events, kept by [`observe`].
#[derive(Debug, Default)]
pub struct Observer {
    /// The message whose send is in progress: its `pending` tick names its id.
    pub sending: Option<MessageRef>,
    /// Client message ids (as the events print them) of this client's messages.
    ids: BTreeMap<String, MessageRef>,
    /// This client's messages seen acknowledged.
    acked: BTreeSet<MessageRef>,
    /// Outbox entries left after the last sync.
    pub pending: Option<usize>,
    /// Peers whose messages arrived since this client last marked them read.
    pub unread: BTreeSet<u32>,
    /// Messages this device can change: (peer, message id, the message, sent by this account).
    pub changeable: Vec<(u32, String, MessageRef, bool)>,
    /// The numbers ([`Progress::syncs`]) of this device's two latest finished syncs, the
    /// earlier first.
    ///
    /// [`Progress::syncs`]: super::Progress::syncs
    pub syncs: (u64, u64),
}

impl Observer {
    /// Notes a message this device can edit (if its account sent it) or react to.
    fn note_changeable(&mut self, peer: &str, id: &str, message: MessageRef, own: bool) {
        if let Some(peer) = client_number(peer) {
            self.changeable.push((peer, id.to_owned(), message, own));
        }
    }
}

/// Turns one event of device `device` of client `me` into trace events, progress and the
/// device's own state (the simulation's clients and `relayd chaos`'s real ones alike).
pub fn observe(me: u32, device: u32, event: Event, local: &mut Observer, shared: &mut impl Ledger) {
    match event {
        Event::Tick { id, tick, peer } => match tick {
            Tick::Pending => {
                if let Some(message) = local.sending.take() {
                    local.ids.insert(id, message);
                    shared.progress().queued.insert(message);
                    shared.record(What::Queued { message });
                }
            }
            Tick::Sent | Tick::Delivered | Tick::Read => {
                if let Some(&message) = local.ids.get(&id) {
                    if local.acked.insert(message) {
                        local.note_changeable(&peer, &id, message, true);
                        shared.record(What::Acked { message });
                    }
                    shared.record(What::Tick {
                        message,
                        tick: tick as u8,
                    });
                }
            }
        },
        Event::MarkedRead { peer, count } => {
            if let Some(peer) = client_number(&peer) {
                shared.record(What::MarkedRead {
                    reader: me,
                    peer,
                    envelopes: count.div_ceil(READ_RECEIPT_IDS_MAX) as u32,
                });
            }
        }
        Event::Message {
            id,
            from,
            direction: Direction::In,
            sender_device,
            chat_seq,
            text,
            ..
        } => match MessageRef::parse(&text) {
            Some(message) => {
                local.note_changeable(&from, &id, message, false);
                shared
                    .progress()
                    .received
                    .entry((me, device))
                    .or_default()
                    .insert(message);
                local.unread.insert(message.sender);
                shared.record(What::Received {
                    receiver: me,
                    device,
                    message,
                    from_account: account_of(&sender_device),
                    chat_seq,
                });
            }
            None => shared.record(What::Garbled {
                receiver: me,
                device,
                from,
                text,
            }),
        },
        // The account's other device sent it: this one can edit it too.
        Event::Message {
            id,
            peer,
            direction: Direction::Out,
            text,
            ..
        } => {
            if let Some(message) = MessageRef::parse(&text) {
                local.note_changeable(&peer, &id, message, true);
            }
        }
        Event::Undecryptable { from, .. } => {
            shared.record(What::Undecryptable {
                receiver: me,
                device,
                from,
            });
        }
        Event::Failed { id, .. } => {
            if let Some(&message) = local.ids.get(&id) {
                shared.progress().failed.insert(message);
                shared.record(What::Failed { message });
            }
        }
        Event::Synced { pending, .. } => {
            local.pending = Some(pending);
            shared.progress().synced(me, device, pending, local);
        }
        _ => {}
    }
}

/// The account of a device address printed as `account/device` (0 when unreadable).
pub fn account_of(device: &str) -> u64 {
    device
        .split_once('/')
        .and_then(|(account, _)| account.parse().ok())
        .unwrap_or(0)
}
