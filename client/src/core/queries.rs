//! What an app asks the core of its store, without changing anything but a setting: messages
//! still pending and each message's state, its details and receipts, a chat's history, a
//! message's attachment, whether read receipts are sent.

use super::*;

impl Core {
    /// Messages still waiting to be sent (all, or just `only`), with the last problem seen.
    pub fn still_pending(&self, only: Option<ClientMessageId>) -> Result<Vec<StillPending>> {
        let reason = self
            .last_problem
            .clone()
            .unwrap_or_else(|| "not sent yet".into());
        let mut pending = Vec::new();
        for draft in self.store.drafts()? {
            if only.is_none_or(|id| id == draft.client_message_id) {
                pending.push(StillPending {
                    id: draft.client_message_id,
                    peer: draft.peer_name,
                    reason: reason.clone(),
                });
            }
        }
        let me = self.identity.address();
        for row in self.store.outbox()? {
            // The history's sync messages to the own devices are the device's own business,
            // and so are a group's key shares.
            if row.peer == self.identity.account || row.is_key_share() {
                continue;
            }
            if only.is_none_or(|id| id == row.client_message_id) {
                let peer = match row.group {
                    0 => self.name_of(row.peer),
                    group => format!("group {group}"),
                };
                pending.push(StillPending {
                    id: row.client_message_id,
                    peer,
                    reason: reason.clone(),
                });
            }
        }
        for (group, id) in self.store.unnumbered_group_texts(me)? {
            if only.is_none_or(|only| only == id) {
                pending.push(StillPending {
                    id,
                    peer: format!("group {group}"),
                    reason: reason.clone(),
                });
            }
        }
        Ok(pending)
    }

    /// Entries in the outbox and drafts, as stored.
    pub fn pending_count(&self) -> Result<usize> {
        Ok(self.store.outbox()?.len() + self.store.drafts()?.len())
    }

    /// Where message `id` of this device stands, read from the store.
    pub fn message_state(&self, id: ClientMessageId) -> Result<MessageState> {
        if let Some(name) = self.outgoing.given_up.get(&id) {
            return Ok(MessageState::UnknownPeer(name.clone()));
        }
        if let Some(message) = self.store.message(self.identity.address(), id)? {
            return Ok(match message.failed {
                Some(reason) => MessageState::Failed(reason),
                None => MessageState::Ticked(message.tick),
            });
        }
        if self.store.draft(id)?.is_some() {
            return Ok(MessageState::Draft);
        }
        if let Some(message) = self.store.group_message(self.identity.address(), id)? {
            return Ok(match message.failed {
                Some(reason) => MessageState::Failed(reason),
                None => MessageState::Ticked(message.tick),
            });
        }
        Ok(MessageState::Unknown)
    }

    /// The message whose id starts with `prefix` (of any chat; at least
    /// [`crate::limits::MESSAGE_ID_PREFIX_CHARS_MIN`] hex digits, naming one message) as its
    /// [`Event::History`] entry, then, for an outgoing message, one [`Event::Receipt`] per
    /// recipient device (the peer's and this account's other devices) with its state.
    pub fn message_info(&self, prefix: &str) -> Result<Vec<Event>> {
        let prefix = crate::history::id_prefix(prefix)?;
        let found = self.store.messages_by_id_prefix(&prefix, 2)?;
        let in_groups = self.store.group_messages_by_id_prefix(&prefix, 2)?;
        if found.len() + in_groups.len() > 1 {
            return Err(ClientError::Invalid(format!(
                "more than one message has an id starting with {prefix}; give more digits"
            )));
        }
        if let Some(message) = in_groups.into_iter().next() {
            return self.group_message_info(message);
        }
        let message = match found.as_slice() {
            [message] => message,
            [] => {
                return Err(ClientError::Invalid(format!(
                    "no message on this device has an id starting with {prefix}"
                )));
            }
            _ => {
                return Err(ClientError::Invalid(format!(
                    "more than one message has an id starting with {prefix}; give more digits"
                )));
            }
        };
        let id = message.client_message_id.to_string();
        let entry = match self.store.contact_by_account(message.peer)? {
            Some(contact) => self
                .history(&contact.name)?
                .into_iter()
                .find(|entry| matches!(entry, Event::History { id: shown, .. } if *shown == id)),
            None => None,
        };
        let Some(entry) = entry else {
            return Err(ClientError::Invalid(format!(
                "message {id} is in no chat this device shows"
            )));
        };
        let mut events = vec![entry];
        if message.outgoing {
            events.extend(self.receipt_events(message.sender, message.client_message_id)?);
        }
        Ok(events)
    }

    /// One [`Event::Receipt`] per recipient device of a message `sender` sent, with its state
    /// (1:1 and group messages alike).
    pub(super) fn receipt_events(
        &self,
        sender: DeviceAddress,
        id: ClientMessageId,
    ) -> Result<Vec<Event>> {
        Ok(self
            .store
            .recipients(sender, id)?
            .into_iter()
            .map(|row| Event::Receipt {
                id: id.to_string(),
                name: self.name_of(row.device.account),
                device: row.device.to_string(),
                state: row.state,
                at_ms: (row.state != RecipientState::Pending).then_some(row.at_ms),
            })
            .collect())
    }

    /// Whether this device sends read receipts and shows the peers' (on unless turned off).
    pub fn read_receipts(&self) -> Result<bool> {
        self.store.read_receipts()
    }

    /// Turns read receipts on or off. Off: `mark_read` tells only this account's other devices,
    /// and read receipts from peers are dropped (they stay unseen after turning it on again).
    pub fn set_read_receipts(&mut self, on: bool) -> Result<()> {
        self.store.write(|writer| writer.set_read_receipts(on))
    }

    /// The chat with `peer` in order, as [`Event::History`] entries (local only): the
    /// messages this device stored, with their current text, deletion and reactions from the
    /// history's documents, and the messages only the documents hold (synced from another own
    /// device), in chat order.
    pub fn history(&self, peer: &str) -> Result<Vec<Event>> {
        let contact = self
            .store
            .contact_by_name(peer)?
            .ok_or_else(|| ClientError::UnknownPeer(peer.into()))?;
        let me = self.identity.account;
        let view = self.chat_view(contact.account);
        let own_read_mark = view
            .read_marks
            .iter()
            .filter(|(device, _)| device.account == me)
            .map(|(_, chat_seq)| *chat_seq)
            .max()
            .unwrap_or(0);
        let mut documents: BTreeMap<(DeviceAddress, ClientMessageId), relay_sync::MessageView> =
            view.messages
                .into_iter()
                .map(|message| ((message.sender, message.client_message_id), message))
                .collect();
        let name = |account: AccountId| {
            if account == me {
                self.identity.name.clone()
            } else {
                contact.name.clone()
            }
        };
        let reactions = |message: &relay_sync::MessageView| {
            message
                .reactions
                .iter()
                .map(|(device, reaction)| Reaction {
                    from: name(device.account),
                    reaction: reaction.clone(),
                })
                .collect::<Vec<_>>()
        };
        let mut entries = Vec::new();
        for message in self.store.history(contact.account)? {
            let shared = documents.remove(&(message.sender, message.client_message_id));
            let (text, attachment, edited, deleted, reacted) = match &shared {
                Some(shared) => (
                    shared.text.clone(),
                    shared.attachment.as_deref(),
                    shared.edited,
                    shared.deleted.is_some(),
                    reactions(shared),
                ),
                None => (
                    message.text.clone(),
                    message.attachment.as_deref(),
                    false,
                    false,
                    Vec::new(),
                ),
            };
            entries.push(Event::History {
                id: message.client_message_id.to_string(),
                direction: if message.outgoing {
                    Direction::Out
                } else {
                    Direction::In
                },
                from: name(message.sender.account),
                peer: contact.name.clone(),
                time_ms: message.time_ms(),
                text,
                file: file_info(attachment),
                tick: message.outgoing.then_some(message.tick),
                read: (!message.outgoing).then_some(
                    message.read_at_ms.is_some()
                        || message.chat_seq.is_some_and(|seq| seq <= own_read_mark),
                ),
                undecryptable: message.undecryptable.clone(),
                failed: message.failed.clone(),
                chat_seq: message.chat_seq,
                edited,
                deleted,
                reactions: reacted,
            });
        }
        for message in documents.into_values() {
            let outgoing = message.sender.account == me;
            entries.push(Event::History {
                id: message.client_message_id.to_string(),
                direction: if outgoing {
                    Direction::Out
                } else {
                    Direction::In
                },
                from: name(message.sender.account),
                peer: contact.name.clone(),
                time_ms: message.server_time_ms,
                reactions: reactions(&message),
                file: file_info(message.attachment.as_deref()),
                text: message.text,
                // Sent by another own device, which has the ticks.
                tick: outgoing.then_some(Tick::Sent),
                read: (!outgoing).then_some(message.chat_seq <= own_read_mark),
                undecryptable: None,
                failed: None,
                chat_seq: Some(message.chat_seq),
                edited: message.edited,
                deleted: message.deleted.is_some(),
            });
        }
        // The store's order is by chat sequence, then unsequenced messages: a stable sort
        // slots the documents' messages in and keeps it.
        entries.sort_by_key(|entry| match entry {
            Event::History { chat_seq, .. } => (chat_seq.is_none(), chat_seq.unwrap_or(0)),
            _ => (true, u64::MAX),
        });
        Ok(entries)
    }

    /// The attachment of message `message` (its id, or a prefix of at least
    /// [`crate::limits::MESSAGE_ID_PREFIX_CHARS_MIN`] hex digits naming one message): of a
    /// chat or a group, stored here or only in the history's documents (synced from another own
    /// device). A message without a file, or deleted for everyone, is a clear refusal.
    pub fn attachment(&self, message: &str) -> Result<Attachment> {
        let prefix = message.trim().to_ascii_lowercase();
        if prefix.len() < crate::limits::MESSAGE_ID_PREFIX_CHARS_MIN
            || prefix.len() > 32
            || !prefix.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(ClientError::Invalid(format!(
                "{message:?} is not a message id (at least {} hex digits)",
                crate::limits::MESSAGE_ID_PREFIX_CHARS_MIN
            )));
        }
        // Every message whose id starts so, wherever it is: (id, its attachment bytes).
        let mut found: BTreeMap<ClientMessageId, Option<Vec<u8>>> = BTreeMap::new();
        for stored in self.store.messages_by_id_prefix(&prefix, 2)? {
            let shared = self
                .chat_view(stored.peer)
                .messages
                .into_iter()
                .find(|shown| shown.client_message_id == stored.client_message_id);
            let attachment = match shared {
                Some(shared) => shared.attachment,
                None => stored.attachment,
            };
            found.insert(stored.client_message_id, attachment);
        }
        for stored in self.store.group_messages_by_id_prefix(&prefix, 2)? {
            found.insert(stored.client_message_id, stored.attachment);
        }
        // Only a message this device never stored (synced from another own device) needs the
        // documents' every chat read.
        if found.is_empty() {
            for chat in self.history.replica().chats() {
                for shown in self.history.replica().view(chat).messages {
                    if shown.client_message_id.to_string().starts_with(&prefix) {
                        found.insert(shown.client_message_id, shown.attachment);
                    }
                }
            }
        }
        let mut found = found.into_iter();
        let (id, attachment) = match (found.next(), found.next()) {
            (Some(only), None) => only,
            (None, _) => {
                return Err(ClientError::Invalid(format!("no message {prefix} here")));
            }
            (Some(_), Some(_)) => {
                return Err(ClientError::Invalid(format!(
                    "{prefix} names more than one message: give more of its id"
                )));
            }
        };
        let bytes = attachment.ok_or_else(|| {
            ClientError::Invalid(format!(
                "message {id} has no file (or was deleted for everyone)"
            ))
        })?;
        Attachment::from_bytes(&bytes)
    }
}
