//! A device's whole sync state: its chats as epoch documents, the operations it applies, the
//! sync protocol with each of the user's other devices, and snapshots for a new device.
//!
//! Sans-IO: documents in, messages out. A [`Replica`] never touches a socket, a file or a clock:
//! the caller passes times, carries the bytes of [`Replica::generate_message`] to the peer
//! device (as an ordinary end-to-end encrypted envelope), hands what arrives to
//! [`Replica::receive_message`], and persists [`Replica::save_snapshot`] and
//! [`Replica::peer_state`].
//!
//! **Sync.** For each peer device and each generation of each epoch, the replica keeps an
//! automerge sync [`State`]; a message carries parts, each an automerge sync message for one
//! generation of one epoch (named in the part), for every epoch that has something to say,
//! taken round-robin so one busy chat does not starve the others. A message holds at most
//! `SYNC_MESSAGE_BYTES_MAX` bytes: a large backlog (a whole epoch for a device that has none of
//! it) goes in fragments over several messages, and `generate_message` hands out the next one at
//! each call until it returns `None` (the peer's answer is awaited, or all is in step).
//!
//! **Sessions.** Automerge's protocol assumes a reliable, ordered stream. Each replica numbers
//! the messages it sends to a peer within a *session* (a fresh one at every open and every
//! [`Replica::reset_peer`]): the receiver ignores a duplicate (a number it has seen), and after
//! a gap (a lost message) it drops the fragments it was assembling and restarts the exchange
//! from the persisted part of its sync states, as it does when the peer starts a new session.
//! A lost message whose sender then waits for an answer is recovered by the next message either
//! way, or by `reset_peer` (the caller's timeout, or a restart).
//!
//! **Generations** (see `epoch`): parts of a generation lower than the one a device holds are
//! refused (counted in [`Received::stale_parts`]); a higher generation is received into a new
//! document, checked, and replaces the old one, whose state is re-applied onto it. Only a peer
//! that holds a generation (its part names heads) starts its reception, at most
//! `INCOMING_GENERATIONS_MAX` at once per epoch, and a generation is dropped when every peer
//! that offered it starts over without delivering it: a generation that no device holds (a
//! damaged part can name one) neither spreads nor stops the sync of the real ones.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use automerge::ActorId;
use automerge::sync::{Message, State, SyncDoc};
use relay_proto::{ChatId, ClientMessageId, DeviceAddress};

use crate::epoch::{self, Epoch, GenerationId, Outcome, epoch_of, scan_patches};
use crate::error::SyncError;
use crate::hlc::Hlc;
use crate::limits::{
    ATTACHMENT_BYTES_MAX, INCOMING_GENERATIONS_MAX, MESSAGE_TEXT_BYTES_MAX, REACTION_BYTES_MAX,
    SYNC_BLOOM_PROBES_MAX, SYNC_FRAGMENT_BYTES_MIN, SYNC_MESSAGE_BYTES_MAX,
    SYNC_MESSAGE_HEADER_BYTES, SYNC_PART_BYTES_MAX, SYNC_PART_HEADER_BYTES,
};
use crate::schema::{MessageState, Stamped, device_actor};
use crate::view::{ChatView, chat_view};
use crate::wire::{self, EpochKey, Part, SyncMessage};

/// A message as the relay delivered it, to append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewMessage<'a> {
    /// Its chat sequence (from 1).
    pub chat_seq: u64,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The sender's id for the envelope.
    pub client_message_id: ClientMessageId,
    /// When the region stored it, in ms since the Unix epoch.
    pub server_time_ms: u64,
    /// When the sender sent it, by the sender's clock, in ms since the Unix epoch.
    pub sent_time_ms: u64,
    /// The text (a file's caption, possibly empty, when it has an attachment).
    pub text: &'a str,
    /// The attachment, as the client encodes it (opaque here), if any.
    pub attachment: Option<&'a [u8]>,
}

/// What a received sync message did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// Chats whose documents changed: their views may have changed.
    pub changed_chats: BTreeSet<ChatId>,
    /// Parts of generations lower than the one this device holds, refused.
    pub stale_parts: u32,
    /// The message was a duplicate of one already received, and ignored.
    pub duplicate: bool,
}

/// One epoch of a chat as a replica holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochInfo {
    /// The epoch number.
    pub epoch: u64,
    /// The generation in use (`None` while the epoch's first document is still arriving).
    pub generation: Option<GenerationId>,
    /// The heads of the document in use.
    pub heads: Vec<[u8; 32]>,
    /// Higher generations being received from peers.
    pub receiving: Vec<GenerationId>,
}

/// A higher generation of an epoch, arriving from peers.
#[derive(Debug)]
struct Incoming {
    epoch: Epoch,
    /// The peers that sent parts of it, which are asked for the rest.
    sources: BTreeSet<DeviceAddress>,
}

/// One epoch of one chat.
#[derive(Debug, Default)]
struct Slot {
    active: Option<Epoch>,
    /// Higher generations arriving, at most `INCOMING_GENERATIONS_MAX` (a peer may name one it
    /// cannot deliver: the others still get through).
    incoming: BTreeMap<GenerationId, Incoming>,
}

impl Slot {
    fn live(&self, generation: GenerationId) -> bool {
        self.active
            .as_ref()
            .is_some_and(|active| active.id() == generation)
            || self.incoming.contains_key(&generation)
    }
}

/// An automerge sync message on its way out, possibly in fragments.
#[derive(Debug)]
struct OutPart {
    key: EpochKey,
    bytes: Vec<u8>,
    sent_bytes: usize,
    next_fragment: u32,
}

/// Fragments of one automerge sync message being put back together.
#[derive(Debug)]
pub(crate) struct Reassembly {
    key: EpochKey,
    next_fragment: u32,
    bytes: Vec<u8>,
}

/// What a replica keeps about one peer device.
#[derive(Debug)]
struct Peer {
    /// Automerge's sync state per generation of each epoch (persisted: see `peer_state`).
    states: BTreeMap<EpochKey, State>,
    /// The fingerprint of the last automerge message queued per epoch generation, until the
    /// peer says something about it.
    last_sent: BTreeMap<EpochKey, (usize, u64)>,
    out_session: u64,
    out_next: u64,
    outgoing: VecDeque<OutPart>,
    /// Epoch generations whose changes arrived from the peer since this replica last told it
    /// its heads: the next message for each says them, even when automerge would not (it stays
    /// silent when the peer's next message names heads equal to its own, so the peer would never
    /// learn its changes arrived, and `in_sync_with` would stay false on its side).
    owe_heads: BTreeSet<EpochKey>,
    /// The last epoch visited by the round-robin.
    cursor: Option<(ChatId, u64)>,
    in_session: Option<u64>,
    in_next: u64,
    reassembly: Option<Reassembly>,
}

impl Peer {
    fn new(out_session: u64) -> Self {
        Peer {
            states: BTreeMap::new(),
            last_sent: BTreeMap::new(),
            out_session,
            out_next: 0,
            outgoing: VecDeque::new(),
            owe_heads: BTreeSet::new(),
            cursor: None,
            in_session: None,
            in_next: 0,
            reassembly: None,
        }
    }

    /// Back to the persisted part of every sync state: the next message of each epoch starts
    /// the exchange over from the heads both sides last shared.
    fn restart_states(&mut self) {
        self.last_sent.clear();
        for state in self.states.values_mut() {
            *state = State::decode(&state.encode()).unwrap_or_default();
        }
    }

    /// Forgets every generation of `chat`'s epoch `number` but the live ones.
    fn purge(&mut self, chat: ChatId, number: u64, slot: &Slot) {
        let dead =
            |key: &EpochKey| key.chat == chat && key.epoch == number && !slot.live(key.generation);
        self.states.retain(|key, _| !dead(key));
        self.last_sent.retain(|key, _| !dead(key));
        self.owe_heads.retain(|key| !dead(key));
        self.outgoing.retain(|part| !dead(&part.key));
    }
}

/// A device's chats and its sync with the user's other devices.
#[derive(Debug)]
pub struct Replica {
    device: DeviceAddress,
    actor: ActorId,
    clock: Hlc,
    session_nonce: u64,
    sessions_started: u64,
    chats: BTreeMap<ChatId, BTreeMap<u64, Slot>>,
    peers: BTreeMap<DeviceAddress, Peer>,
}

impl Replica {
    /// An empty replica for `device`. `session_nonce` must be fresh (random) at every open: it
    /// keeps the automerge actor of this session apart from any earlier one, including one of a
    /// copy of this device's data restored from a backup.
    pub fn new(device: DeviceAddress, session_nonce: u64) -> Self {
        Replica {
            device,
            actor: device_actor(device, session_nonce),
            clock: Hlc::zero(device),
            session_nonce,
            sessions_started: 0,
            chats: BTreeMap::new(),
            peers: BTreeMap::new(),
        }
    }

    /// A replica from a snapshot (this device's saved state, or another device's snapshot for a
    /// new device). Its clock is put past every reading in the documents.
    pub fn load_snapshot(
        device: DeviceAddress,
        session_nonce: u64,
        bytes: &[u8],
    ) -> Result<Self, SyncError> {
        let mut replica = Replica::new(device, session_nonce);
        for (key, document) in wire::decode_snapshot(bytes)? {
            let slot = replica
                .chats
                .entry(key.chat)
                .or_default()
                .entry(key.epoch)
                .or_default();
            if slot.active.is_some() {
                return Err(SyncError::malformed(
                    "snapshot",
                    format!("chat {} epoch {} appears twice", key.chat, key.epoch),
                ));
            }
            let epoch = Epoch::load(
                key.chat,
                key.epoch,
                key.generation,
                document,
                &replica.actor,
            )?;
            if let Some(max) = epoch.state().max_hlc() {
                replica.clock.observe(max);
            }
            slot.active = Some(epoch);
        }
        Ok(replica)
    }

    /// Every epoch of every chat, as one blob: what a device persists, and what a new device
    /// receives to start from.
    pub fn save_snapshot(&mut self) -> Vec<u8> {
        let mut epochs = Vec::new();
        for (chat, slots) in &mut self.chats {
            for (number, slot) in slots.iter_mut() {
                if let Some(active) = slot.active.as_mut() {
                    let key = EpochKey {
                        chat: *chat,
                        epoch: *number,
                        generation: active.id(),
                    };
                    epochs.push((key, active.save()));
                }
            }
        }
        wire::encode_snapshot(&epochs)
    }

    /// The automerge documents in use, every epoch of every chat (for the benchmark's raw
    /// automerge comparison).
    pub(crate) fn documents_mut(&mut self) -> Vec<&mut automerge::AutoCommit> {
        self.chats
            .values_mut()
            .flat_map(|slots| slots.values_mut())
            .filter_map(|slot| slot.active.as_mut())
            .map(Epoch::doc_mut)
            .collect()
    }

    /// This replica's device.
    pub fn device(&self) -> DeviceAddress {
        self.device
    }

    /// The device's clock: its last reading.
    pub fn clock(&self) -> Hlc {
        self.clock
    }

    /// A reading for a local edit, deletion or reaction made at `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        self.clock.tick(now_ms)
    }

    /// The chats this replica holds.
    pub fn chats(&self) -> Vec<ChatId> {
        self.chats.keys().copied().collect()
    }

    /// What an app shows of `chat` (empty if this replica holds nothing of it).
    pub fn view(&self, chat: ChatId) -> ChatView {
        let states = self
            .chats
            .get(&chat)
            .into_iter()
            .flat_map(|slots| slots.values())
            .filter_map(|slot| slot.active.as_ref())
            .map(Epoch::state);
        chat_view(chat, states)
    }

    /// The epochs of `chat`, with their generations and heads.
    pub fn epochs(&mut self, chat: ChatId) -> Vec<EpochInfo> {
        let Some(slots) = self.chats.get_mut(&chat) else {
            return Vec::new();
        };
        slots
            .iter_mut()
            .map(|(number, slot)| EpochInfo {
                epoch: *number,
                generation: slot.active.as_ref().map(Epoch::id),
                heads: slot.active.as_mut().map(Epoch::heads).unwrap_or_default(),
                receiving: slot.incoming.keys().copied().collect(),
            })
            .collect()
    }

    fn active_or_first(&mut self, chat: ChatId, number: u64) -> Result<&mut Epoch, SyncError> {
        let slot = self
            .chats
            .entry(chat)
            .or_default()
            .entry(number)
            .or_default();
        if slot.active.is_none() {
            slot.active = Some(Epoch::first(chat, number, &self.actor)?);
        }
        slot.active.as_mut().ok_or(SyncError::ZeroSequence)
    }

    fn active_holding(&mut self, chat: ChatId, chat_seq: u64) -> Result<&mut Epoch, SyncError> {
        let number = epoch_of(chat_seq)?;
        self.chats
            .get_mut(&chat)
            .and_then(|slots| slots.get_mut(&number))
            .and_then(|slot| slot.active.as_mut())
            .ok_or(SyncError::UnknownMessage { chat, chat_seq })
    }

    /// Stores a message the relay delivered. Appending the same message again changes nothing.
    pub fn append(&mut self, chat: ChatId, message: &NewMessage<'_>) -> Result<Outcome, SyncError> {
        check_text(message.text)?;
        if let Some(attachment) = message.attachment
            && attachment.len() > ATTACHMENT_BYTES_MAX
        {
            return Err(SyncError::AttachmentTooLarge {
                bytes: attachment.len(),
                max_bytes: ATTACHMENT_BYTES_MAX,
            });
        }
        let number = epoch_of(message.chat_seq)?;
        let state = MessageState {
            sender: message.sender,
            client_message_id: message.client_message_id,
            server_time_ms: message.server_time_ms,
            sent_time_ms: message.sent_time_ms,
            text: Some(Stamped {
                at: Hlc::zero(message.sender),
                value: message.text.to_owned(),
            }),
            // An empty attachment is none (the document ignores an empty value).
            attachment: message
                .attachment
                .filter(|attachment| !attachment.is_empty())
                .map(<[u8]>::to_vec),
            deleted: None,
            reactions: BTreeMap::new(),
        };
        self.active_or_first(chat, number)?
            .append(message.chat_seq, &state)
    }

    /// Edits a message's text (made by a device of its sender's account at `at`); the edit with
    /// the highest clock reading is the one every device shows.
    pub fn edit(
        &mut self,
        chat: ChatId,
        chat_seq: u64,
        text: &str,
        at: Hlc,
    ) -> Result<Outcome, SyncError> {
        check_text(text)?;
        self.clock.observe(at);
        self.active_holding(chat, chat_seq)?.edit(
            chat_seq,
            &Stamped {
                at,
                value: text.to_owned(),
            },
        )
    }

    /// Deletes a message for everyone (by a device of its sender's account at `at`): the text
    /// goes from every document, history included (the epoch is compacted), and a tombstone
    /// stays.
    pub fn delete(&mut self, chat: ChatId, chat_seq: u64, at: Hlc) -> Result<Outcome, SyncError> {
        self.clock.observe(at);
        let outcome = self.active_holding(chat, chat_seq)?.delete(chat_seq, at)?;
        if outcome == Outcome::Applied {
            self.compact(chat, epoch_of(chat_seq)?)?;
        }
        Ok(outcome)
    }

    /// Sets (or with `None` removes) the reaction of `at.device` to a message.
    pub fn react(
        &mut self,
        chat: ChatId,
        chat_seq: u64,
        emoji: Option<&str>,
        at: Hlc,
    ) -> Result<Outcome, SyncError> {
        let value = emoji.unwrap_or_default();
        if value.len() > REACTION_BYTES_MAX {
            return Err(SyncError::ReactionTooLong {
                bytes: value.len(),
                max_bytes: REACTION_BYTES_MAX,
            });
        }
        self.clock.observe(at);
        self.active_holding(chat, chat_seq)?.react(
            chat_seq,
            &Stamped {
                at,
                value: value.to_owned(),
            },
        )
    }

    /// Moves `reader`'s read watermark in `chat` up to `chat_seq` (never down).
    pub fn mark_read(
        &mut self,
        chat: ChatId,
        reader: DeviceAddress,
        chat_seq: u64,
    ) -> Result<Outcome, SyncError> {
        let number = epoch_of(chat_seq)?;
        self.active_or_first(chat, number)?
            .mark_read(reader, chat_seq)
    }

    /// Rebuilds epoch `number` of `chat` as its next generation, without history.
    fn compact(&mut self, chat: ChatId, number: u64) -> Result<(), SyncError> {
        let Some(slot) = self
            .chats
            .get_mut(&chat)
            .and_then(|slots| slots.get_mut(&number))
        else {
            return Ok(());
        };
        let Some(active) = slot.active.as_ref() else {
            return Ok(());
        };
        let next = active.compacted(&self.actor)?;
        let next_id = next.id();
        slot.incoming.retain(|generation, _| *generation > next_id);
        slot.active = Some(next);
        for peer in self.peers.values_mut() {
            peer.purge(chat, number, slot);
        }
        Ok(())
    }

    fn next_session(&mut self) -> u64 {
        self.sessions_started += 1;
        self.session_nonce.wrapping_add(self.sessions_started)
    }

    fn peer_mut(&mut self, peer: DeviceAddress) -> &mut Peer {
        if !self.peers.contains_key(&peer) {
            let session = self.next_session();
            self.peers.insert(peer, Peer::new(session));
        }
        // Inserted just above when missing.
        self.peers.entry(peer).or_insert_with(|| Peer::new(0))
    }

    /// Starts a new session with `peer`: what was in flight is forgotten, and the next message
    /// starts the exchange over from the heads both sides last shared. For the caller's timeout
    /// when the peer stays silent, or a reconnection.
    pub fn reset_peer(&mut self, peer: DeviceAddress) {
        let session = self.next_session();
        let state = self.peer_mut(peer);
        state.out_session = session;
        state.out_next = 0;
        state.outgoing.clear();
        state.cursor = None;
        state.in_session = None;
        state.in_next = 0;
        state.reassembly = None;
        state.restart_states();
        self.forget_source(peer);
    }

    /// Forgets `source` as a sender of the generations still arriving, and drops those no other
    /// peer is delivering. After a restart a peer offers again what it really holds, so a
    /// generation it named and never delivered (its parts were lost, or a damaged part named
    /// one that does not exist) holds no place and is not asked for any longer.
    fn forget_source(&mut self, source: DeviceAddress) {
        for (chat, slots) in &mut self.chats {
            for (number, slot) in slots.iter_mut() {
                let before = slot.incoming.len();
                slot.incoming.retain(|_, incoming| {
                    incoming.sources.remove(&source);
                    !incoming.sources.is_empty()
                });
                if slot.incoming.len() != before {
                    for peer in self.peers.values_mut() {
                        peer.purge(*chat, *number, slot);
                    }
                }
            }
        }
    }

    /// The persisted part of the sync with `peer` (for the documents in use), as bytes.
    pub fn peer_state(&self, peer: DeviceAddress) -> Vec<u8> {
        let Some(state) = self.peers.get(&peer) else {
            return wire::encode_peer_state(&[]);
        };
        let states: Vec<(EpochKey, Vec<u8>)> = state
            .states
            .iter()
            .filter(|(key, _)| {
                self.chats
                    .get(&key.chat)
                    .and_then(|slots| slots.get(&key.epoch))
                    .and_then(|slot| slot.active.as_ref())
                    .is_some_and(|active| active.id() == key.generation)
            })
            .map(|(key, state)| (*key, state.encode()))
            .collect();
        wire::encode_peer_state(&states)
    }

    /// Restores the persisted sync with `peer` (from [`Replica::peer_state`]) and starts a new
    /// session with it. Nothing changes if the bytes do not decode.
    pub fn load_peer_state(&mut self, peer: DeviceAddress, bytes: &[u8]) -> Result<(), SyncError> {
        let mut states = BTreeMap::new();
        for (key, encoded) in wire::decode_peer_state(bytes)? {
            let state = State::decode(encoded).map_err(|error| {
                SyncError::malformed(
                    "peer state",
                    format!("chat {} epoch {}: {error}", key.chat, key.epoch),
                )
            })?;
            states.insert(key, state);
        }
        self.reset_peer(peer);
        self.peer_mut(peer).states = states;
        Ok(())
    }

    /// The next sync message for `peer`, at most `SYNC_MESSAGE_BYTES_MAX` bytes, or `None` when
    /// there is nothing to send (all in step, or answers awaited). Call it until `None` after
    /// every change and every received message.
    pub fn generate_message(&mut self, peer: DeviceAddress) -> Option<Vec<u8>> {
        self.peer_mut(peer);
        if self
            .peers
            .get(&peer)
            .is_some_and(|state| state.outgoing.is_empty())
        {
            self.fill_outgoing(peer);
        }
        let state = self.peers.get_mut(&peer)?;
        let mut size = SYNC_MESSAGE_HEADER_BYTES;
        let mut parts = Vec::new();
        while let Some(front) = state.outgoing.front_mut() {
            if parts.len() == usize::from(u16::MAX) {
                break;
            }
            let Some(room) = SYNC_MESSAGE_BYTES_MAX.checked_sub(size + SYNC_PART_HEADER_BYTES)
            else {
                break;
            };
            let remaining = front.bytes.len() - front.sent_bytes;
            let take = if remaining <= room {
                remaining
            } else if room >= SYNC_FRAGMENT_BYTES_MIN {
                room
            } else {
                break;
            };
            let last = take == remaining;
            parts.push(Part {
                key: front.key,
                fragment_index: front.next_fragment,
                last,
                payload: front.bytes[front.sent_bytes..front.sent_bytes + take].to_vec(),
            });
            size += wire::part_bytes(take);
            front.sent_bytes += take;
            front.next_fragment += 1;
            if last {
                state.outgoing.pop_front();
            } else {
                break;
            }
        }
        if parts.is_empty() {
            return None;
        }
        let number = state.out_next;
        state.out_next += 1;
        Some(
            SyncMessage {
                session: state.out_session,
                number,
                parts,
            }
            .encode(),
        )
    }

    /// Asks automerge, epoch by epoch from where the last round stopped, for the messages due to
    /// `peer`, until a message's worth is queued.
    fn fill_outgoing(&mut self, to: DeviceAddress) {
        let Some(peer) = self.peers.get_mut(&to) else {
            return;
        };
        let keys: Vec<(ChatId, u64)> = self
            .chats
            .iter()
            .flat_map(|(chat, slots)| slots.keys().map(|number| (*chat, *number)))
            .collect();
        let start = match peer.cursor {
            Some(cursor) => keys.partition_point(|key| *key <= cursor),
            None => 0,
        };
        let mut queued_bytes = 0;
        for offset in 0..keys.len() {
            let (chat, number) = keys[(start + offset) % keys.len()];
            let Some(slot) = self
                .chats
                .get_mut(&chat)
                .and_then(|slots| slots.get_mut(&number))
            else {
                continue;
            };
            // A peer on a higher generation refuses the active one's parts without answering,
            // which costs one message: no need to know which generation it holds.
            if let Some(active) = slot.active.as_mut() {
                queued_bytes += queue_sync_message(peer, chat, number, active);
            }
            for incoming in slot.incoming.values_mut() {
                if incoming.sources.contains(&to) {
                    queued_bytes += queue_sync_message(peer, chat, number, &mut incoming.epoch);
                }
            }
            if queued_bytes >= SYNC_MESSAGE_BYTES_MAX {
                peer.cursor = Some((chat, number));
                return;
            }
        }
        peer.cursor = None;
    }

    /// Whether `peer` holds what this replica holds, as far as this replica knows: for every
    /// epoch it holds, the peer last announced exactly the same heads, nothing for the peer
    /// waits to go out, and no generation is still arriving. Both sides true means equal
    /// documents; what either changes afterwards makes it false until the peer answers.
    pub fn in_sync_with(&mut self, peer: DeviceAddress) -> bool {
        let Some(state) = self.peers.get(&peer) else {
            return false;
        };
        if !state.outgoing.is_empty() {
            return false;
        }
        for (chat, slots) in &mut self.chats {
            for (number, slot) in slots {
                if !slot.incoming.is_empty() {
                    return false;
                }
                let Some(active) = slot.active.as_mut() else {
                    continue;
                };
                let key = EpochKey {
                    chat: *chat,
                    epoch: *number,
                    generation: active.id(),
                };
                let Some(theirs) = state.states.get(&key).and_then(|s| s.their_heads.as_ref())
                else {
                    return false;
                };
                let mut ours = active.heads();
                let mut theirs: Vec<[u8; 32]> = theirs.iter().map(|hash| hash.0).collect();
                ours.sort_unstable();
                theirs.sort_unstable();
                if ours != theirs {
                    return false;
                }
            }
        }
        true
    }

    /// Applies a sync message from `peer`. Bytes that do not decode are refused whole with
    /// [`SyncError::Malformed`], and nothing is applied.
    pub fn receive_message(
        &mut self,
        from: DeviceAddress,
        bytes: &[u8],
    ) -> Result<Received, SyncError> {
        let message = SyncMessage::decode(bytes)?;
        let mut received = Received::default();
        let peer = self.peer_mut(from);
        let mut restarted = false;
        match peer.in_session {
            Some(session) if session == message.session => {
                if message.number < peer.in_next {
                    received.duplicate = true;
                    return Ok(received);
                }
                if message.number > peer.in_next {
                    // Messages were lost: what was being assembled is incomplete, and automerge's
                    // exchange starts over.
                    peer.reassembly = None;
                    peer.restart_states();
                }
            }
            Some(_) => {
                // The peer started a new session (it restarted, or gave up waiting).
                peer.reassembly = None;
                peer.outgoing.clear();
                peer.cursor = None;
                peer.restart_states();
                restarted = true;
            }
            None => {}
        }
        peer.in_session = Some(message.session);
        peer.in_next = message.number.saturating_add(1);
        if restarted {
            self.forget_source(from);
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            return Ok(received);
        };

        // Assemble and decode every complete part before applying any.
        let mut reassembly = peer.reassembly.take();
        let mut complete = Vec::new();
        for part in message.parts {
            match reassemble(&mut reassembly, part) {
                Ok(Some(whole)) => complete.push(whole),
                Ok(None) => {}
                Err(error) => {
                    peer.restart_states();
                    return Err(error);
                }
            }
        }
        peer.reassembly = reassembly;
        let mut decoded = Vec::with_capacity(complete.len());
        for (key, bytes) in complete {
            match Message::decode(&bytes) {
                Ok(message) if !blooms_are_sound(&message) => {
                    peer.restart_states();
                    return Err(SyncError::malformed(
                        "sync message",
                        format!(
                            "chat {} epoch {}: a Bloom filter without bits or with over \
                             {SYNC_BLOOM_PROBES_MAX} probes",
                            key.chat, key.epoch
                        ),
                    ));
                }
                Ok(message) => decoded.push((key, message)),
                Err(error) => {
                    peer.restart_states();
                    return Err(SyncError::malformed(
                        "sync message",
                        format!("chat {} epoch {}: {error}", key.chat, key.epoch),
                    ));
                }
            }
        }
        for (key, message) in decoded {
            self.apply_part(from, key, message, &mut received)?;
        }
        Ok(received)
    }

    fn apply_part(
        &mut self,
        from: DeviceAddress,
        key: EpochKey,
        message: Message,
        received: &mut Received,
    ) -> Result<(), SyncError> {
        let EpochKey {
            chat,
            epoch: number,
            generation,
        } = key;
        let Some(peer) = self.peers.get_mut(&from) else {
            return Ok(());
        };
        let slot = self
            .chats
            .entry(chat)
            .or_default()
            .entry(number)
            .or_default();

        let active_id = slot.active.as_ref().map(Epoch::id);
        let into_active = if active_id == Some(generation) {
            true
        } else if active_id.is_some_and(|active| generation < active) {
            received.stale_parts += 1;
            return Ok(());
        } else if active_id.is_none() && generation.generation == 0 {
            // Generation 0 is the same on every device: build it here.
            let first = Epoch::first(chat, number, &self.actor)?;
            if first.id() == generation {
                slot.active = Some(first);
                true
            } else {
                false
            }
        } else {
            false
        };

        if !into_active && !slot.incoming.contains_key(&generation) {
            if message.heads.is_empty() {
                // The peer holds nothing of this generation: it is asking for it, not offering
                // it. Only a device that holds a generation makes others receive it, so a
                // generation no one holds (named by a damaged part) does not spread.
                return Ok(());
            }
            if slot.incoming.len() >= INCOMING_GENERATIONS_MAX {
                // Full: the lowest candidate makes room for a higher one.
                match slot.incoming.first_key_value() {
                    Some((lowest, _)) if *lowest < generation => {
                        slot.incoming.pop_first();
                        peer.purge(chat, number, slot);
                    }
                    _ => {
                        received.stale_parts += 1;
                        return Ok(());
                    }
                }
            }
            slot.incoming.insert(
                generation,
                Incoming {
                    epoch: Epoch::receiving(chat, number, generation, &self.actor),
                    sources: BTreeSet::new(),
                },
            );
        }

        peer.last_sent.remove(&key);
        let state = peer.states.entry(key).or_default();
        let target = if into_active {
            slot.active.as_mut()
        } else {
            slot.incoming.get_mut(&generation).map(|incoming| {
                incoming.sources.insert(from);
                &mut incoming.epoch
            })
        };
        let Some(target) = target else {
            return Ok(());
        };
        if !message.changes.is_empty() {
            peer.owe_heads.insert(key);
        }
        let mut log = epoch::patch_log();
        let doc = target.doc_mut();
        doc.sync()
            .receive_sync_message_log_patches(state, message, &mut log)
            .map_err(|source| SyncError::document(chat, number, source))?;
        let patches = doc.make_patches(&mut log);
        let (touched, max_hlc) = scan_patches(&patches);
        if let Some(max_hlc) = max_hlc {
            self.clock.observe(max_hlc);
        }
        if !into_active {
            let promote = slot
                .incoming
                .get_mut(&generation)
                .is_some_and(|incoming| incoming.epoch.has_genesis());
            if promote {
                received.changed_chats.insert(chat);
                return self.promote(chat, number, generation);
            }
            return Ok(());
        }
        if !patches.is_empty() {
            received.changed_chats.insert(chat);
        }
        let compact = slot.active.as_ref().is_some_and(|active| {
            touched
                .iter()
                .any(|chat_seq| active.holds_deleted_text(*chat_seq))
        });
        if compact {
            self.compact(chat, number)?;
        }
        Ok(())
    }

    /// Puts the received higher generation of an epoch in use: checks its genesis, re-applies
    /// the old generation's state onto it, and compacts again if that brought a deletion.
    fn promote(
        &mut self,
        chat: ChatId,
        number: u64,
        generation: GenerationId,
    ) -> Result<(), SyncError> {
        let Some(slot) = self
            .chats
            .get_mut(&chat)
            .and_then(|slots| slots.get_mut(&number))
        else {
            return Ok(());
        };
        let Some(mut incoming) = slot.incoming.remove(&generation) else {
            return Ok(());
        };
        let checked = incoming.epoch.check_genesis();
        if let Err(error) = checked {
            for peer in self.peers.values_mut() {
                peer.purge(chat, number, slot);
            }
            return Err(error);
        }
        let mut next = incoming.epoch;
        if let Some(old) = slot.active.as_ref() {
            next.join(&old.state())?;
        }
        let state = next.state();
        if let Some(max) = state.max_hlc() {
            self.clock.observe(max);
        }
        let compact = next.holds_any_deleted_text();
        slot.incoming.retain(|candidate, _| *candidate > generation);
        slot.active = Some(next);
        for peer in self.peers.values_mut() {
            peer.purge(chat, number, slot);
        }
        if compact {
            self.compact(chat, number)?;
        }
        Ok(())
    }
}

fn check_text(text: &str) -> Result<(), SyncError> {
    if text.len() > MESSAGE_TEXT_BYTES_MAX {
        return Err(SyncError::TextTooLong {
            bytes: text.len(),
            max_bytes: MESSAGE_TEXT_BYTES_MAX,
        });
    }
    Ok(())
}

/// Queues automerge's next sync message for one epoch document, if it has one; returns its size.
fn queue_sync_message(peer: &mut Peer, chat: ChatId, number: u64, epoch: &mut Epoch) -> usize {
    let key = EpochKey {
        chat,
        epoch: number,
        generation: epoch.id(),
    };
    let state = peer.states.entry(key).or_default();
    if peer.owe_heads.remove(&key) {
        // Automerge answers only heads it has not sent: forgetting them makes it say them.
        state.last_sent_heads.clear();
    }
    let Some(message) = epoch.doc_mut().sync().generate_sync_message(state) else {
        return 0;
    };
    let bytes = message.encode();
    // Automerge answers every call with a message when it must ask the peer to start over (a
    // "reset": the peer named heads this document lacks), even if it just did: the same message
    // again, with nothing heard from the peer in between, tells it nothing.
    let fingerprint = fingerprint(&bytes);
    if peer.last_sent.insert(key, fingerprint) == Some(fingerprint) {
        return 0;
    }
    let size = bytes.len();
    peer.outgoing.push_back(OutPart {
        key,
        bytes,
        sent_bytes: 0,
        next_fragment: 0,
    });
    size
}

/// A short stand-in for a message's bytes: its length and a hash.
fn fingerprint(bytes: &[u8]) -> (usize, u64) {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    (bytes.len(), hasher.finish())
}

/// Adds a part to what is being assembled; returns a whole automerge message once complete.
/// A fragment whose predecessors were lost is dropped.
pub(crate) fn reassemble(
    reassembly: &mut Option<Reassembly>,
    part: Part,
) -> Result<Option<(EpochKey, Vec<u8>)>, SyncError> {
    if part.fragment_index == 0 {
        if part.last {
            *reassembly = None;
            return Ok(Some((part.key, part.payload)));
        }
        *reassembly = Some(Reassembly {
            key: part.key,
            next_fragment: 1,
            bytes: part.payload,
        });
        return Ok(None);
    }
    let Some(current) = reassembly
        .as_mut()
        .filter(|current| current.key == part.key && current.next_fragment == part.fragment_index)
    else {
        *reassembly = None;
        return Ok(None);
    };
    if current.bytes.len() + part.payload.len() > SYNC_PART_BYTES_MAX {
        *reassembly = None;
        return Err(SyncError::malformed(
            "sync message",
            format!("a fragmented part grows past the {SYNC_PART_BYTES_MAX} bytes allowed"),
        ));
    }
    current.bytes.extend_from_slice(&part.payload);
    current.next_fragment += 1;
    if part.last {
        return Ok(reassembly.take().map(|whole| (whole.key, whole.bytes)));
    }
    Ok(None)
}

/// Whether every Bloom filter `message` carries can be checked against: automerge takes a
/// filter's bit count and probes per entry from the peer's bytes, divides by the first (a
/// filter of entries but no bits panics) and allocates the second for every hash it checks.
fn blooms_are_sound(message: &Message) -> bool {
    message.have.iter().all(|have| bloom_is_sound(&have.bloom))
}

/// See [`blooms_are_sound`]: a filter of no entries (never checked), or one with bits and at
/// most [`SYNC_BLOOM_PROBES_MAX`] probes. Its encoding is its entries, bits per entry and
/// probes (LEB128), then the bits.
fn bloom_is_sound(bloom: &automerge::sync::BloomFilter) -> bool {
    let bytes = bloom.to_bytes();
    if bytes.is_empty() {
        return true;
    }
    let mut rest = bytes.as_slice();
    let (Some(_entries), Some(_bits_per_entry), Some(probes)) = (
        read_leb128(&mut rest),
        read_leb128(&mut rest),
        read_leb128(&mut rest),
    ) else {
        return false;
    };
    // Automerge counts the bits in a u32.
    !rest.is_empty() && rest.len() <= (u32::MAX / 8) as usize && probes <= SYNC_BLOOM_PROBES_MAX
}

/// An unsigned LEB128 number at the start of `bytes`, which move past it.
fn read_leb128(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use automerge::sync::BloomFilter;

    use super::*;

    fn bloom(bytes: &[u8]) -> BloomFilter {
        BloomFilter::try_from(bytes).expect("a filter automerge decodes")
    }

    #[test]
    fn a_bloom_filter_without_bits_or_with_too_many_probes_is_not_sound() {
        // What automerge builds: 2 entries, 10 bits each, 7 probes, 3 bytes of bits.
        assert!(bloom_is_sound(&bloom(&[2, 10, 7, 0xff, 0x01, 0x80])));
        assert!(bloom_is_sound(&BloomFilter::default()), "no entries");
        // Entries but no bits per entry: automerge would divide by zero probing it.
        assert!(!bloom_is_sound(&bloom(&[1, 0, 7])));
        // 2^32 − 1 probes: automerge would allocate them for every hash it checks.
        assert!(!bloom_is_sound(&bloom(&[
            1, 8, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01
        ])));
        assert!(bloom_is_sound(&bloom(&[1, 8, 64, 0x01])));
        assert!(!bloom_is_sound(&bloom(&[1, 8, 65, 0x01])));
    }
}
