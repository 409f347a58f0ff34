//! The history in the core: what the device sends and receives goes into its relay-sync
//! documents ([`crate::history`]), edits, deletions for everyone and reactions are made and
//! received, and the documents are synced with the account's other devices.
//!
//! **Sync between own devices.** Sync messages travel as ordinary end-to-end encrypted
//! envelopes in the account's chat with itself (`ChatId::direct(me, me)`), through the outbox
//! like any content: retried with the same id, in sender order, re-encrypted after "mismatched
//! devices". The region wants every envelope to cover all of an account's current devices, so
//! each envelope goes to every other own device and names the one it is for
//! ([`crate::content::SyncMessage::to_device`]); the others skip it. Sync messages are made
//! after a change (a message sent or received, an edit, a received sync message) and when the
//! account's devices changed, never merely because a device opened, so a device alone costs
//! nothing and one-shot commands do not chatter.
//!
//! **Changes to messages.** An edit and a deletion for everyone name a message of the
//! changing account; a reaction any message of the chat. They go to the peer's devices and the
//! own devices as envelopes of the chat (like read receipts), carry a hybrid logical clock
//! reading, and are checked on arrival: the target must be a message of the chat this device
//! holds, sent by the changing account for an edit or a deletion, and the reading may not be
//! more than [`CHANGE_AHEAD_MS_MAX`] ahead of the region's clock. A deletion also forgets the
//! text in the SQLite store (the row stays for its ticks) and checkpoints the write-ahead log.
//!
//! **Order.** Every change to the documents happens under the store's write lock, after the
//! store committed what it rests on, and the documents are saved before the lock is released.

use std::collections::BTreeSet;

use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress};
use relay_sync::{Hlc, MessageView, NewMessage};

use super::{Core, Report, enqueue};
use crate::content::{Change, Content, MessageRef};
use crate::error::{ClientError, Result};
use crate::events::{ChangeKind, Event};
use crate::history::History;
use crate::inbound::Inbound;
use crate::limits::{CHANGE_AHEAD_MS_MAX, HISTORY_APPENDS_UNSAVED_MAX, SYNC_MESSAGES_PER_STEP_MAX};
use crate::store::{StoredMessage, Writer};

impl Core {
    /// The account's other current devices, the peers of the sync.
    pub(super) fn own_peers(&self) -> Result<Vec<DeviceAddress>> {
        let me = self.identity.address();
        Ok(self
            .store
            .known_devices(me.account)?
            .into_iter()
            .filter(|device| device.current && device.address != me)
            .map(|device| device.address)
            .collect())
    }

    /// Brings the documents up to date with the store (messages stored since they were last
    /// saved) and applies what a queue page brought: changes to messages and sync messages.
    /// Returns the events to report.
    pub(super) fn apply_to_history(&mut self, inbound: &[Inbound]) -> Result<()> {
        let inbound = &self.sort_bootstraps(inbound)?[..];
        if self.bootstrapping() {
            // The documents wait for the snapshot; the store keeps the messages meanwhile.
            return Ok(());
        }
        let me = self.identity.address();
        let peers = self.own_peers()?;
        let mut events = Vec::new();
        let mut deleted = false;
        let mut changed = false;
        let mut answer = false;
        let names = self.names_for(inbound);
        let history = &mut self.history;
        let store = &mut self.store;
        history.refresh()?;
        let sequenced = store.sequenced_after(history.rows_mark())?;
        let settled = store.history_rows_settled()?;
        let moves = |item: &Inbound| matches!(item, Inbound::Change { .. } | Inbound::Sync { .. });
        if !inbound.iter().any(moves) {
            // Appends only: the store can rebuild them, so they are saved lazily.
            let appended = absorb(history, me, &sequenced, Some(settled))?;
            history.raise_rows_mark(settled);
            history.note_appends(appended);
            if history.unsaved_appends() >= HISTORY_APPENDS_UNSAVED_MAX {
                store.write(|_| history.save(&peers))?;
            }
            self.sync_wanted |= appended > 0;
            return Ok(());
        }
        store.write(|writer| {
            // Another process saved since the rows were read: they are appended, and the mark
            // stays the file's, so the next change appends whatever else it lacks.
            let current = !history.refresh()?;
            changed |= absorb(history, me, &sequenced, current.then_some(settled))? > 0;
            if current {
                history.raise_rows_mark(settled);
            }
            for item in inbound {
                match item {
                    Inbound::Change {
                        sender,
                        peer,
                        target,
                        change,
                        at,
                        time_ms,
                        ..
                    } => {
                        let chat = ChatId::direct(me.account, *peer);
                        match apply_change(history, writer, chat, *target, change, *at, *time_ms) {
                            Ok(true) => {
                                changed = true;
                                deleted |= *change == Change::Delete;
                                events
                                    .push(changed_event(&names, *sender, *peer, target.1, change));
                            }
                            Ok(false) => {}
                            Err(error) => events.push(Event::Note {
                                message: format!(
                                    "a change from device {sender} was refused: {error}"
                                ),
                            }),
                        }
                    }
                    Inbound::Sync { from, bytes } => {
                        match history.receive_sync(*from, bytes) {
                            Ok(received) => {
                                changed |= !received.changed_chats.is_empty();
                                answer = true;
                                // A compaction (a deletion on another device) may have
                                // arrived: the store forgets the texts deleted since.
                                for chat in &received.changed_chats {
                                    deleted |= scrub_deleted(history, writer, *chat)?;
                                }
                            }
                            Err(error) => events.push(Event::Note {
                                message: format!(
                                    "a sync message from own device {from} was refused: {error}"
                                ),
                            }),
                        }
                    }
                    _ => {}
                }
            }
            history.save(&peers)?;
            Ok(())
        })?;
        if deleted {
            self.store.checkpoint()?;
        }
        if changed || answer {
            self.sync_wanted = true;
        }
        self.reports.extend(events.into_iter().map(Report::Event));
        Ok(())
    }

    /// Whether every other own device holds this device's documents as far as it has heard
    /// (see [`relay_sync::Replica::in_sync_with`]); false while a snapshot is awaited.
    pub fn history_in_sync(&mut self) -> Result<bool> {
        if self.bootstrapping() {
            return Ok(false);
        }
        let peers = self.own_peers()?;
        let replica = self.history.replica_mut();
        Ok(peers.into_iter().all(|peer| replica.in_sync_with(peer)))
    }

    /// Appends this device's message `id`, just given its chat sequence, to the documents.
    pub(super) fn history_sent(&mut self) -> Result<()> {
        self.apply_to_history(&[])
    }

    /// Edits, deletes for everyone or reacts to the message of the chat with `peer` whose id
    /// starts with `message` (as `relay history` shows it): applied here at once, then sent to
    /// the peer's devices and the own devices like a message. Returns the envelope's id.
    pub fn change_message(
        &mut self,
        peer: &str,
        message: &str,
        change: Change,
        wall_ms: u64,
        now_ms: u64,
    ) -> Result<ClientMessageId> {
        self.refuse_if_rolled_back()?;
        let contact = self
            .store
            .contact_by_name(peer)?
            .ok_or_else(|| ClientError::UnknownPeer(peer.to_owned()))?;
        let me = self.identity.address();
        let chat = ChatId::direct(me.account, contact.account);
        let peers = self.own_peers()?;
        let id = ClientMessageId(rand::Rng::random(&mut self.rng));
        let history = &mut self.history;
        history.refresh()?;
        let sequenced = self.store.sequenced_after(history.rows_mark())?;
        let settled = self.store.history_rows_settled()?;
        let pending = self.store.write(|writer| {
            let current = !history.refresh()?;
            absorb(history, me, &sequenced, current.then_some(settled))?;
            let target = history.find_by_prefix(chat, message)?;
            if target.deleted.is_some() {
                return Err(ClientError::Invalid(format!(
                    "message {} was deleted for everyone",
                    target.client_message_id
                )));
            }
            if !matches!(change, Change::React(_)) && target.sender.account != me.account {
                return Err(ClientError::Invalid(format!(
                    "message {} is {peer}'s: only its sender edits or deletes it",
                    target.client_message_id
                )));
            }
            let at = history.replica_mut().tick(wall_ms);
            let content = Content::change(
                MessageRef::new(target.sender, target.client_message_id),
                &change,
                at,
                contact.account.0,
            )?;
            apply_local(history, writer, chat, &target, &change, at)?;
            let pending = enqueue(
                writer,
                chat,
                contact.account,
                id,
                content.to_bytes(),
                wall_ms,
            )?;
            history.save(&peers)?;
            Ok((pending, target.client_message_id))
        })?;
        let (entry, target) = pending;
        if change == Change::Delete {
            self.store.checkpoint()?;
        }
        self.outbox.insert(entry, now_ms)?;
        self.sync_wanted = true;
        let mut names = self.names_for(&[]);
        names.insert(contact.account, contact.name.clone());
        self.reports.push_back(Report::Event(changed_event(
            &names,
            me,
            contact.account,
            target,
            &change,
        )));
        Ok(id)
    }

    /// Records this device's read mark in the chat with `peer`: every message of the chat it
    /// holds is read.
    pub(super) fn history_read(&mut self, peer: AccountId) -> Result<()> {
        let me = self.identity.address();
        let chat = ChatId::direct(me.account, peer);
        let peers = self.own_peers()?;
        let history = &mut self.history;
        self.store.write(|_| {
            history.refresh()?;
            let Some(last) = history.view(chat).messages.last().map(|m| m.chat_seq) else {
                return Ok(());
            };
            history
                .replica_mut()
                .mark_read(chat, me, last)
                .map_err(history_error)?;
            history.save(&peers)
        })?;
        self.sync_wanted = true;
        Ok(())
    }

    /// Queues the sync messages the documents call for, for each other own device, at most
    /// [`SYNC_MESSAGES_PER_STEP_MAX`] each; a larger backlog goes on at the next step.
    pub(super) fn step_sync(&mut self, now_ms: u64) -> Result<()> {
        if !self.sync_wanted {
            return Ok(());
        }
        self.sync_wanted = false;
        let peers = self.own_peers()?;
        if peers.is_empty() {
            return Ok(());
        }
        let me = self.identity.address();
        let chat = ChatId::direct(me.account, me.account);
        let wall_ms = self.wall_ms;
        let history = &mut self.history;
        let rng = &mut self.rng;
        let mut more = false;
        let entries = self.store.write(|writer| {
            history.refresh()?;
            let mut entries = Vec::new();
            for &peer in &peers {
                for count in 0..=SYNC_MESSAGES_PER_STEP_MAX {
                    if count == SYNC_MESSAGES_PER_STEP_MAX {
                        more = true;
                        break;
                    }
                    let Some(bytes) = history.generate_sync(peer) else {
                        break;
                    };
                    let content = Content::sync(peer.device, bytes)?;
                    let id = ClientMessageId(rand::Rng::random(rng));
                    entries.push(enqueue(
                        writer,
                        chat,
                        me.account,
                        id,
                        content.to_bytes(),
                        wall_ms,
                    )?);
                }
            }
            history.save(&peers)?;
            Ok(entries)
        })?;
        for entry in entries {
            self.outbox.insert(entry, now_ms)?;
        }
        self.sync_wanted = more;
        Ok(())
    }

    /// Saves the documents if messages were appended since the last save (the device closes).
    pub fn save_history(&mut self) -> Result<()> {
        if self.history.unsaved_appends() == 0 {
            return Ok(());
        }
        let peers = self.own_peers()?;
        let history = &mut self.history;
        let me = self.identity.address();
        history.refresh()?;
        let sequenced = self.store.sequenced_after(history.rows_mark())?;
        let settled = self.store.history_rows_settled()?;
        self.store.write(|_| {
            // Another process may have saved since: take its documents and add the rows.
            let current = !history.refresh()?;
            absorb(history, me, &sequenced, current.then_some(settled))?;
            history.save(&peers)
        })
    }

    /// The sync messages this device's history exchanged with own devices since it opened.
    pub fn sync_traffic(&self) -> crate::history::SyncTraffic {
        self.history.sync_traffic()
    }

    /// Every chat's documents as one snapshot (see [`History::snapshot`]).
    pub fn history_snapshot(&mut self) -> Result<Vec<u8>> {
        let history = &mut self.history;
        history.refresh()?;
        let sequenced = self.store.sequenced_after(history.rows_mark())?;
        let settled = self.store.history_rows_settled()?;
        let me = self.identity.address();
        self.store.write(|_| {
            let current = !history.refresh()?;
            absorb(history, me, &sequenced, current.then_some(settled))?;
            Ok(history.snapshot())
        })
    }

    /// Takes another device's snapshot as this device's history (see
    /// [`History::load_snapshot`]), then syncs with the own devices for what came after it.
    pub fn load_history_snapshot(&mut self, snapshot: &[u8]) -> Result<()> {
        let peers = self.own_peers()?;
        let history = &mut self.history;
        self.store.write(|_| {
            history.refresh()?;
            history.load_snapshot(snapshot)?;
            history.save(&peers)
        })?;
        self.sync_wanted = true;
        self.name_history_peers();
        Ok(())
    }

    /// The chat with `contact` as the documents hold it.
    pub(super) fn chat_view(&self, contact: AccountId) -> relay_sync::ChatView {
        self.history
            .view(ChatId::direct(self.identity.account, contact))
    }

    /// The names of the accounts `inbound` names, and this one.
    fn names_for(&self, inbound: &[Inbound]) -> Names {
        let mut accounts = BTreeSet::from([self.identity.account]);
        for item in inbound {
            if let Inbound::Change { sender, peer, .. } = item {
                accounts.insert(sender.account);
                accounts.insert(*peer);
            }
        }
        accounts
            .into_iter()
            .map(|account| (account, self.name_of(account)))
            .collect()
    }
}

type Names = std::collections::BTreeMap<AccountId, String>;

fn history_error(error: relay_sync::SyncError) -> ClientError {
    ClientError::Invalid(format!("history: {error}"))
}

/// Appends `messages` (stored, decrypted, sequenced) to the documents; how many were new.
/// With `raise_to` (they are every sequenced row past the mark), the row mark is raised past
/// them, but never past that row: the last one before an outgoing message still waiting for
/// its chat sequence.
fn absorb(
    history: &mut History,
    me: DeviceAddress,
    messages: &[StoredMessage],
    raise_to: Option<i64>,
) -> Result<usize> {
    let mut appended = 0;
    for message in messages {
        let (Some(chat_seq), Some(text)) = (message.chat_seq, message.text.as_deref()) else {
            continue;
        };
        let chat = ChatId::direct(me.account, message.peer);
        let outcome = history.replica_mut().append(
            chat,
            &NewMessage {
                chat_seq,
                sender: message.sender,
                client_message_id: message.client_message_id,
                server_time_ms: message.server_time_ms.unwrap_or(message.sent_at_ms),
                sent_time_ms: message.sent_at_ms,
                text,
                attachment: message.attachment.as_deref(),
            },
        );
        match outcome {
            Ok(relay_sync::Outcome::Applied) => appended += 1,
            Ok(_) => {}
            // Two messages under one chat sequence, or a sequence 0: what a region sent is
            // wrong. The store keeps the row; the documents keep what they can (the first).
            Err(
                relay_sync::SyncError::SequenceTaken { .. }
                | relay_sync::SyncError::ZeroSequence
                | relay_sync::SyncError::TextTooLong { .. }
                | relay_sync::SyncError::AttachmentTooLarge { .. },
            ) => {}
            Err(error) => return Err(history_error(error)),
        }
        // The mark never passes an outgoing message still waiting for its chat sequence
        // (`settled`): rows after it are read again, or that message would never reach the
        // documents once sequenced (with many own messages in flight, most of them did not).
        if let Some(settled) = raise_to {
            history.raise_rows_mark(message.id.min(settled));
        }
    }
    Ok(appended)
}

/// Applies a change received from `at.device` to `target` of `chat`; whether it changed
/// anything.
fn apply_change(
    history: &mut History,
    writer: &Writer<'_>,
    chat: ChatId,
    target: (DeviceAddress, ClientMessageId),
    change: &Change,
    at: Hlc,
    time_ms: u64,
) -> Result<bool> {
    if at.wall_ms > time_ms.saturating_add(CHANGE_AHEAD_MS_MAX) {
        return Err(ClientError::Invalid(format!(
            "its clock is {} ms ahead of the region's",
            at.wall_ms - time_ms
        )));
    }
    let Some(message) = history.find(chat, target.0, target.1) else {
        return Err(ClientError::Invalid(format!(
            "it names message {} that this chat does not hold",
            target.1
        )));
    };
    if !matches!(change, Change::React(_)) && message.sender.account != at.device.account {
        return Err(ClientError::Invalid(format!(
            "message {} was not sent by the account that changes it",
            target.1
        )));
    }
    apply_local(history, writer, chat, &message, change, at)
}

/// Applies `change` to `message` of `chat` at `at`; whether it changed anything. A deletion
/// also forgets the text in the store.
fn apply_local(
    history: &mut History,
    writer: &Writer<'_>,
    chat: ChatId,
    message: &MessageView,
    change: &Change,
    at: Hlc,
) -> Result<bool> {
    let replica = history.replica_mut();
    let outcome = match change {
        Change::Edit(text) => replica.edit(chat, message.chat_seq, text, at),
        Change::Delete => replica.delete(chat, message.chat_seq, at),
        Change::React(reaction) => replica.react(
            chat,
            message.chat_seq,
            Some(reaction.as_str()).filter(|reaction| !reaction.is_empty()),
            at,
        ),
    }
    .map_err(history_error)?;
    if *change == Change::Delete {
        writer.scrub_text(message.sender, message.client_message_id)?;
    }
    Ok(outcome == relay_sync::Outcome::Applied)
}

/// Forgets in the store the text of every message of `chat` deleted in the documents; whether
/// there was one.
fn scrub_deleted(history: &History, writer: &Writer<'_>, chat: ChatId) -> Result<bool> {
    let mut any = false;
    for message in history.view(chat).messages {
        if message.deleted.is_some() {
            writer.scrub_text(message.sender, message.client_message_id)?;
            any = true;
        }
    }
    Ok(any)
}

fn changed_event(
    names: &Names,
    by: DeviceAddress,
    peer: AccountId,
    target: ClientMessageId,
    change: &Change,
) -> Event {
    let name = |account: AccountId| {
        names
            .get(&account)
            .cloned()
            .unwrap_or_else(|| format!("#{account}"))
    };
    let (kind, text) = match change {
        Change::Edit(text) => (ChangeKind::Edit, Some(text.clone())),
        Change::Delete => (ChangeKind::Delete, None),
        Change::React(reaction) => (ChangeKind::React, Some(reaction.clone())),
    };
    Event::Changed {
        id: target.to_string(),
        from: name(by.account),
        peer: name(peer),
        change: kind,
        text,
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::DeviceId;

    use super::*;
    use crate::store::Tick;

    fn sequenced(id: i64, chat_seq: u64, me: DeviceAddress, peer: AccountId) -> StoredMessage {
        StoredMessage {
            id,
            chat: ChatId::direct(me.account, peer),
            peer,
            outgoing: true,
            sender: me,
            client_message_id: ClientMessageId((id as u128).to_be_bytes()),
            sender_seq: id as u64,
            chat_seq: Some(chat_seq),
            text: Some(format!("message {id}")),
            attachment: None,
            sent_at_ms: 1_000,
            server_time_ms: Some(1_000),
            tick: Tick::Sent,
            read_at_ms: None,
            undecryptable: None,
            failed: None,
            expired_devices: 0,
        }
    }

    /// Rows 1 and 3 have their chat sequences while row 2 (an own message in flight) waits for
    /// its own: the mark stops at row 1, so row 2 is read again and reaches the documents once
    /// sequenced. The mark used to follow the last row absorbed (3), and with many own messages
    /// in flight most of them never reached the documents, so a linked device never got them.
    #[test]
    fn the_row_mark_stops_short_of_a_message_waiting_for_its_chat_sequence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = DeviceAddress {
            account: AccountId(1),
            device: DeviceId(1),
        };
        let peer = AccountId(2);
        let mut history = History::open(dir.path(), me, 7).expect("history");
        let settled = 1;
        let first = [sequenced(1, 1, me, peer), sequenced(3, 3, me, peer)];
        assert_eq!(
            absorb(&mut history, me, &first, Some(settled)).expect("absorb"),
            2
        );
        assert_eq!(history.rows_mark(), settled);
        // Row 2 got its sequence: read again from the mark, it is appended; row 3 is not twice.
        let again = [sequenced(2, 2, me, peer), sequenced(3, 3, me, peer)];
        assert_eq!(
            absorb(&mut history, me, &again, Some(3)).expect("absorb"),
            1
        );
        assert_eq!(history.rows_mark(), 3);
    }
}
