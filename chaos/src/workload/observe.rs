//! Observation: each device's events turned into trace events, progress ([`observe`]) and the
//! device's own view of them ([`Observer`]).

use std::collections::{BTreeMap, BTreeSet};

use relay_client::Event;
use relay_client::events::Direction;
use relay_client::limits::READ_RECEIPT_IDS_MAX;
use relay_client::store::Tick;

use super::Ledger;
use crate::history::{GroupMessageRef, MessageRef, What, client_number};

/// One client's view of its own events, kept by [`observe`].
#[derive(Debug, Default)]
pub struct Observer {
    /// The message whose send is in progress: its `pending` tick names its id.
    pub sending: Option<MessageRef>,
    /// Client message ids (as the events print them) of this client's messages.
    ids: BTreeMap<String, MessageRef>,
    /// The peer each of [`Observer::ids`] was sent to, as its events name it.
    peers: BTreeMap<String, String>,
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
    /// The group message whose send is in progress: its pending tick names its id.
    pub sending_group: Option<GroupMessageRef>,
    /// Client message ids of this client's group messages.
    group_ids: BTreeMap<String, GroupMessageRef>,
    /// This client's group messages seen acknowledged.
    group_acked: BTreeSet<GroupMessageRef>,
}

/// A message of this device whose outcome it has not heard: no tick past pending and no
/// failure reached it (the app was killed before it passed them on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unheard {
    /// Its id, as the events print it.
    pub id: String,
    /// The peer of a 1:1 message; `None` for a group message.
    pub peer: Option<String>,
}

impl Observer {
    /// This device's messages whose outcome it has not heard ([`Unheard`]), in id order.
    pub fn unheard(&self, progress: &super::Progress) -> Vec<Unheard> {
        let direct = self.ids.iter().filter(|(_, message)| {
            !self.acked.contains(*message) && !progress.failed.contains(*message)
        });
        let direct = direct.map(|(id, _)| Unheard {
            id: id.clone(),
            peer: Some(self.peers.get(id).cloned().unwrap_or_default()),
        });
        let groups = self
            .group_ids
            .iter()
            .filter(|(_, message)| {
                !self.group_acked.contains(*message) && !progress.groups.failed.contains(*message)
            })
            .map(|(id, _)| Unheard {
                id: id.clone(),
                peer: None,
            });
        direct.chain(groups).collect()
    }

    /// Whether every text this device sent is acknowledged or given up, but for group texts
    /// of a sender whose removal from the group was asked while they were on their way: those
    /// may never settle (see [`GroupProgress::stuck`]), and the rest of its outbox is then only
    /// key shares and receipts.
    ///
    /// [`GroupProgress::stuck`]: super::GroupProgress::stuck
    pub fn only_stuck_texts_pending(&self, progress: &super::Progress) -> bool {
        let texts = self
            .ids
            .values()
            .all(|message| self.acked.contains(message) || progress.failed.contains(message));
        let group_texts = self.group_ids.values().all(|message| {
            self.group_acked.contains(message)
                || progress.groups.failed.contains(message)
                || progress.groups.stuck(message)
        });
        texts && group_texts
    }

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
                    local.peers.insert(id.clone(), peer);
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
        Event::Undecryptable { from, reason, .. } => {
            shared.record(What::Undecryptable {
                receiver: me,
                device,
                from,
                reason,
            });
        }
        Event::Failed { id, reason, .. } => {
            if let Some(&message) = local.ids.get(&id) {
                shared.progress().failed.insert(message);
                shared.record(What::Failed { message, reason });
            }
        }
        Event::GroupTick { id, tick, .. } => match tick {
            Tick::Pending => {
                if let Some(message) = local.sending_group.take() {
                    local.group_ids.insert(id, message);
                    shared.progress().groups.queued.insert(message);
                    shared.record(What::GroupQueued { message });
                }
            }
            Tick::Sent | Tick::Delivered | Tick::Read => {
                if let Some(&message) = local.group_ids.get(&id) {
                    if local.group_acked.insert(message) {
                        let groups = &mut shared.progress().groups;
                        let now = groups.tick();
                        groups.acked_at.insert(message, now);
                        shared.record(What::GroupAcked { message });
                    }
                    shared.record(What::GroupTick {
                        message,
                        tick: tick as u8,
                    });
                }
            }
        },
        Event::GroupMessage {
            from,
            direction: Direction::In,
            sender_device,
            chat_seq,
            text,
            undecryptable,
            ..
        } => match (undecryptable, GroupMessageRef::parse(&text)) {
            (Some(reason), _) => shared.record(What::GroupUndecryptable {
                receiver: me,
                device,
                from,
                reason,
            }),
            (None, Some(message)) => {
                shared
                    .progress()
                    .groups
                    .received
                    .entry((me, device))
                    .or_default()
                    .insert(message);
                shared.record(What::GroupReceived {
                    receiver: me,
                    device,
                    message,
                    from_account: account_of(&sender_device),
                    chat_seq,
                });
            }
            (None, None) => shared.record(What::Garbled {
                receiver: me,
                device,
                from,
                text,
            }),
        },
        Event::GroupFailed { id, .. } => {
            if let Some(&message) = local.group_ids.get(&id) {
                shared.progress().groups.failed.insert(message);
                shared.record(What::GroupFailed { message });
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
