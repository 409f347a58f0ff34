//! What leaves the device: typed texts, drafts waiting for their names, read receipts, the
//! outbox's envelopes (claiming keys for devices without a session), and what each send outcome
//! asks for ("mismatched devices" re-encrypts, "resend from" renumbers, ✓ ticks).
//!
//! What a person types is committed before any network attempt: a text for a known contact
//! goes straight to the outbox; one for a name not resolved yet is kept as a draft, which is
//! moved to the outbox under the same message id, in one transaction, once its name resolves.
//! Drafts for a known contact are queued before anything else is, so nothing overtakes a text
//! typed earlier for the same chat (sender FIFO, I3).

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use relay_proto::wire::{Committed, Envelope, send_outcome};
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId, ErrorCode};

use super::{Core, NameFailure, NameState, Purpose, Report, Request, Response, check_peer_name};
use crate::content::{Content, body::Body};
use crate::crypto::{Crypto, verify_fallback_key};
use crate::envelope;
use crate::error::{ClientError, Result};
use crate::events::Event;
use crate::limits::READ_RECEIPT_IDS_MAX;
use crate::media::Attachment;
use crate::outbox::{Next, Outcome, Pending};
use crate::store::{Contact, Draft, NewMessage, OutboxRow, Store, Tick};

/// The outgoing side's state besides the outbox.
#[derive(Debug, Default)]
pub(super) struct Outgoing {
    /// Entries waiting for key claims.
    waiting: Vec<Waiter>,
    /// Accounts whose keys are being claimed.
    claiming: BTreeSet<AccountId>,
    /// Keys claimed and not used yet: each device's identity key and one-time key.
    claimed: BTreeMap<DeviceAddress, ([u8; 32], Option<Vec<u8>>)>,
    /// Names asked of (or to ask of) the directory.
    pub(super) names: BTreeMap<String, NameState>,
    /// Names a call waits for.
    calls: BTreeSet<String>,
    /// Drafts given up because no account has their name: id → name.
    pub(super) given_up: BTreeMap<ClientMessageId, String>,
}

/// An entry whose envelope waits for the keys of some accounts.
#[derive(Debug)]
struct Waiter {
    entry: Pending,
    row: OutboxRow,
    /// The envelope whose ciphertexts to keep (a re-encryption after "mismatched devices").
    reuse: Option<Envelope>,
    /// Accounts whose claims are still awaited.
    accounts: BTreeSet<AccountId>,
}

impl Outgoing {
    /// Marks `account`'s keys as being claimed; `false` if a claim is in flight already.
    pub(super) fn start_claim(&mut self, account: AccountId) -> bool {
        self.claiming.insert(account)
    }

    /// Whether `account`'s keys are being claimed.
    pub(super) fn is_claiming(&self, account: AccountId) -> bool {
        self.claiming.contains(&account)
    }

    /// Whether keys of `device` were claimed and not used yet.
    pub(super) fn has_claimed(&self, device: DeviceAddress) -> bool {
        self.claimed.contains_key(&device)
    }

    /// Takes the claimed keys of the devices `wanted` says.
    pub(super) fn take_claimed(
        &mut self,
        wanted: impl Fn(&DeviceAddress) -> bool,
    ) -> Vec<ClaimedKey> {
        let devices: Vec<DeviceAddress> = self
            .claimed
            .keys()
            .filter(|device| wanted(device))
            .copied()
            .collect();
        devices
            .into_iter()
            .filter_map(|device| {
                self.claimed
                    .remove(&device)
                    .map(|(identity_key, one_time_key)| (device, identity_key, one_time_key))
            })
            .collect()
    }

    /// Whether anything of the outbox is in flight: sends, key claims, draft names asked.
    pub(super) fn busy(&self, in_flight: &BTreeMap<u64, Purpose>) -> bool {
        !self.waiting.is_empty()
            || !self.claiming.is_empty()
            || in_flight
                .values()
                .any(|purpose| matches!(purpose, Purpose::Send { .. } | Purpose::Claim(_)))
            || self
                .names
                .values()
                .any(|state| matches!(state, NameState::Asking))
    }

    /// Whether names are still to be asked.
    pub(super) fn names_waiting(&self) -> bool {
        self.names
            .values()
            .any(|state| matches!(state, NameState::Wanted))
    }

    /// Whether a call waits for a name not answered yet.
    pub(super) fn names_for_calls(&self) -> bool {
        self.calls.iter().any(|name| {
            matches!(
                self.names.get(name),
                Some(NameState::Wanted | NameState::Asking)
            )
        })
    }

    /// Asks for `name` for a call.
    pub(super) fn want_name(&mut self, name: &str) {
        self.calls.insert(name.to_owned());
        if !matches!(self.names.get(name), Some(NameState::Asking)) {
            self.names.insert(name.to_owned(), NameState::Wanted);
        }
    }

    /// Asks for the names the drafts wait for (again, after a failure), forgetting answers
    /// nobody needs any more.
    pub(super) fn want_draft_names(&mut self, store: &Store) {
        let Ok(drafts) = store.drafts() else {
            return;
        };
        let wanted: BTreeSet<String> = drafts.into_iter().map(|draft| draft.peer_name).collect();
        self.names.retain(|name, state| {
            wanted.contains(name) || self.calls.contains(name) || *state == NameState::Asking
        });
        for name in wanted {
            match self.names.get(&name) {
                Some(NameState::Asking | NameState::Wanted) => {}
                _ => {
                    self.names.insert(name, NameState::Wanted);
                }
            }
        }
    }

    /// No name can be asked now (no edge): every wanted name fails with `error`.
    pub(super) fn names_failed(&mut self, error: &ClientError) {
        for state in self.names.values_mut() {
            if *state == NameState::Wanted {
                *state = NameState::Failed(NameFailure(error.duplicate()));
            }
        }
    }

    /// The call waiting for `name` is done with it.
    pub(super) fn release_name(&mut self, name: &str) {
        self.calls.remove(name);
    }
}

impl Core {
    /// Stores a text typed for `peer`, without touching the network: in the outbox when `peer`
    /// is a known contact, else as a draft for the name (asked of the directory once
    /// connected). Reports it pending; returns its id.
    pub fn type_text(
        &mut self,
        peer: &str,
        text: &str,
        wall_ms: u64,
        now_ms: u64,
    ) -> Result<ClientMessageId> {
        self.type_message(peer, text, None, wall_ms, now_ms)
    }

    /// Stores a message typed for `peer` as [`Core::type_text`] does: a text, or a file
    /// (already uploaded: `attachment`) with `text` as its caption.
    pub fn type_message(
        &mut self,
        peer: &str,
        text: &str,
        attachment: Option<&Attachment>,
        wall_ms: u64,
        now_ms: u64,
    ) -> Result<ClientMessageId> {
        self.refuse_if_rolled_back()?;
        check_peer_name(&self.identity, peer)?;
        if let Some(contact) = self.store.contact_by_name(peer)? {
            return self.queue_text(&contact, text, attachment, wall_ms, now_ms);
        }
        // The same checks the outbox entry will make, so a draft always becomes one.
        Content::message(text, attachment, wall_ms, 0)?;
        let draft = Draft {
            client_message_id: ClientMessageId(rand::Rng::random(&mut self.rng)),
            peer_name: peer.to_owned(),
            text: text.to_owned(),
            attachment: attachment.map(Attachment::to_bytes),
            sent_at_ms: wall_ms,
        };
        self.store.write(|writer| writer.insert_draft(&draft))?;
        self.reports.push_back(Report::Event(Event::Tick {
            id: draft.client_message_id.to_string(),
            peer: draft.peer_name.clone(),
            tick: Tick::Pending,
        }));
        self.outgoing.want_draft_names(&self.store);
        Ok(draft.client_message_id)
    }

    /// Queues a text for `peer`, a contact this device already knows, without touching the
    /// network; it goes with the next flush.
    pub fn compose(
        &mut self,
        peer: &str,
        text: &str,
        wall_ms: u64,
        now_ms: u64,
    ) -> Result<ClientMessageId> {
        self.compose_message(peer, text, None, wall_ms, now_ms)
    }

    /// Queues a message for `peer` as [`Core::compose`] does: a text, or a file (already
    /// uploaded: `attachment`) with `text` as its caption.
    pub fn compose_message(
        &mut self,
        peer: &str,
        text: &str,
        attachment: Option<&Attachment>,
        wall_ms: u64,
        now_ms: u64,
    ) -> Result<ClientMessageId> {
        self.refuse_if_rolled_back()?;
        let contact = self
            .store
            .contact_by_name(peer)?
            .ok_or_else(|| ClientError::UnknownPeer(peer.to_owned()))?;
        self.queue_text(&contact, text, attachment, wall_ms, now_ms)
    }

    /// Marks every unread message from `contact` read and queues the end-to-end encrypted
    /// receipts; returns how many were marked.
    pub fn mark_read(&mut self, contact: &Contact, wall_ms: u64, now_ms: u64) -> Result<usize> {
        self.refuse_if_rolled_back()?;
        self.queue_known_drafts(now_ms)?;
        let ids: Vec<ClientMessageId> = self
            .store
            .unread_from(contact.account)?
            .iter()
            .map(|message| message.client_message_id)
            .collect();
        // With read receipts off the peer hears nothing: the receipt goes to this account's
        // other devices only, in its chat with itself (none to send without another device).
        let me = self.identity.address();
        let send_to_peer = self.store.read_receipts()?;
        let (chat, to) = if send_to_peer {
            (ChatId::direct(me.account, contact.account), contact.account)
        } else {
            (ChatId::direct(me.account, me.account), me.account)
        };
        let other_own_devices = self
            .store
            .known_devices(me.account)?
            .iter()
            .any(|known| known.current && known.address != me);
        let mut contents = Vec::new();
        for chunk in ids
            .chunks(READ_RECEIPT_IDS_MAX)
            .filter(|_| send_to_peer || other_own_devices)
        {
            let content = Content::read(
                chunk.iter().map(|id| id.0).collect(),
                wall_ms,
                contact.account.0,
            )?;
            contents.push((
                ClientMessageId(rand::Rng::random(&mut self.rng)),
                content.to_bytes(),
            ));
        }
        let entries = self.store.write(|writer| {
            writer.mark_read_locally(contact.account, &ids, wall_ms)?;
            let mut entries = Vec::new();
            for (id, content) in &contents {
                entries.push(super::enqueue(
                    writer,
                    chat,
                    to,
                    *id,
                    content.clone(),
                    wall_ms,
                )?);
            }
            Ok(entries)
        })?;
        for entry in entries {
            self.outbox.insert(entry, now_ms)?;
        }
        self.history_read(contact.account)?;
        Ok(ids.len())
    }

    /// Whether the outbox holds nothing.
    pub fn outbox_is_empty(&self) -> bool {
        self.outbox.is_empty()
    }

    /// The call waiting for `name` is done with it.
    pub fn release_name(&mut self, name: &str) {
        self.outgoing.release_name(name);
    }

    /// Puts a text for `contact` in the outbox (after any draft for it) and reports it pending.
    fn queue_text(
        &mut self,
        contact: &Contact,
        text: &str,
        attachment: Option<&Attachment>,
        wall_ms: u64,
        now_ms: u64,
    ) -> Result<ClientMessageId> {
        if contact.account == self.identity.account {
            return Err(ClientError::Invalid(
                "a message to yourself has no recipient device".into(),
            ));
        }
        let content = Content::message(text, attachment, wall_ms, contact.account.0)?;
        self.queue_known_drafts(now_ms)?;
        let id = ClientMessageId(rand::Rng::random(&mut self.rng));
        self.enqueue(
            contact.account,
            &content,
            Some(text),
            id,
            false,
            wall_ms,
            now_ms,
        )?;
        self.reports.push_back(Report::Event(Event::Tick {
            id: id.to_string(),
            peer: contact.name.clone(),
            tick: Tick::Pending,
        }));
        Ok(id)
    }

    /// Moves every draft whose name is now a known contact to the outbox, oldest first.
    pub(super) fn queue_known_drafts(&mut self, now_ms: u64) -> Result<()> {
        for draft in self.store.drafts()? {
            if let Some(contact) = self.store.contact_by_name(&draft.peer_name)? {
                self.queue_draft(&contact, &draft, now_ms)?;
            }
        }
        Ok(())
    }

    /// Moves one draft for `contact` to the outbox under its id, or gives it up (reported as
    /// failed) if it can never be sent as it is, so it cannot hold the others back.
    fn queue_draft(&mut self, contact: &Contact, draft: &Draft, now_ms: u64) -> Result<()> {
        let content = if contact.account == self.identity.account {
            Err("a message to yourself has no recipient device".to_owned())
        } else {
            draft
                .attachment
                .as_deref()
                .map(Attachment::from_bytes)
                .transpose()
                .and_then(|attachment| {
                    Content::message(
                        &draft.text,
                        attachment.as_ref(),
                        draft.sent_at_ms,
                        contact.account.0,
                    )
                })
                .map_err(|error| error.to_string())
        };
        match content {
            Ok(content) => {
                let wall_ms = draft.sent_at_ms;
                self.enqueue(
                    contact.account,
                    &content,
                    Some(&draft.text),
                    draft.client_message_id,
                    true,
                    wall_ms,
                    now_ms,
                )?;
            }
            Err(reason) => {
                let id = draft.client_message_id;
                if self.store.write(|writer| writer.remove_draft(id))? {
                    self.reports.push_back(Report::Event(Event::Failed {
                        id: id.to_string(),
                        peer: draft.peer_name.clone(),
                        reason,
                    }));
                }
            }
        }
        Ok(())
    }

    /// Puts a content in the outbox of the chat with `peer` under the chat's next sender_seq
    /// and the id `id`; a text is also recorded as a pending outgoing message. With
    /// `from_draft`, the draft with that id is taken in the same transaction (nothing happens if
    /// another process took it).
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        peer: AccountId,
        content: &Content,
        text: Option<&str>,
        id: ClientMessageId,
        from_draft: bool,
        wall_ms: u64,
        now_ms: u64,
    ) -> Result<()> {
        let me = self.identity.address();
        let chat = ChatId::direct(me.account, peer);
        let (sent_at_ms, attachment) = match &content.body {
            Some(Body::Text(text)) => (
                text.sent_at_ms,
                text.attachment.as_ref().map(Attachment::to_bytes),
            ),
            _ => (wall_ms, None),
        };
        let bytes = content.to_bytes();
        let sender_seq = self.store.write(|writer| {
            if from_draft && !writer.remove_draft(id)? {
                return Ok(None);
            }
            let sender_seq = writer.take_sender_seq(chat)?;
            if let Some(text) = text {
                writer.insert_message(&NewMessage {
                    chat,
                    peer,
                    outgoing: true,
                    sender: me,
                    client_message_id: id,
                    sender_seq,
                    chat_seq: None,
                    text: Some(text),
                    attachment: attachment.as_deref(),
                    sent_at_ms,
                    server_time_ms: None,
                    tick: Tick::Pending,
                    undecryptable: None,
                })?;
            }
            let row = OutboxRow {
                chat,
                sender_seq,
                client_message_id: id,
                peer,
                content: bytes,
                envelope: None,
                group: 0,
            };
            writer.insert_outbox(&row, wall_ms)?;
            Ok(Some(sender_seq))
        })?;
        if let Some(sender_seq) = sender_seq {
            self.outbox.insert(
                Pending {
                    chat,
                    sender_seq,
                    client_message_id: id,
                },
                now_ms,
            )?;
        }
        Ok(())
    }

    /// Brings the in-memory outbox in line with the stored one, which another process using
    /// the same data directory (say `relay read` while `relay listen` runs) may have changed.
    pub(super) fn sync_outbox(&mut self, now_ms: u64) -> Result<()> {
        let rows: Vec<Pending> = self
            .store
            .outbox()?
            .into_iter()
            .map(|row| Pending {
                chat: row.chat,
                sender_seq: row.sender_seq,
                client_message_id: row.client_message_id,
            })
            .collect();
        for entry in self.outbox.entries() {
            if !rows.contains(&entry) {
                self.outbox.remove(entry);
            }
        }
        let known = self.outbox.entries();
        for row in rows {
            if !known.contains(&row) {
                self.outbox.insert(row, now_ms)?;
            }
        }
        Ok(())
    }

    /// Asks the directory for the names waited for.
    pub(super) fn step_names(&mut self, now_ms: u64) -> Result<()> {
        self.queue_known_drafts(now_ms)?;
        let wanted: Vec<String> = self
            .outgoing
            .names
            .iter()
            .filter(|(_, state)| **state == NameState::Wanted)
            .map(|(name, _)| name.clone())
            .collect();
        for name in wanted {
            if !self.has_room() {
                break;
            }
            self.outgoing.names.insert(name.clone(), NameState::Asking);
            self.request(Request::LookupName(name.clone()), Purpose::LookupName(name));
        }
        Ok(())
    }

    /// Sends every due outbox entry there is room for.
    pub(super) fn step_outbox(&mut self, now_ms: u64) -> Result<()> {
        while self.has_room() {
            let Some(entry) = self.outbox.poll_transmit(now_ms) else {
                break;
            };
            let Some(row) = self.store.outbox_entry(entry.client_message_id)? else {
                // Gone from the store (another process sent it): never loop on it.
                self.outbox
                    .handle_outcome(entry, Outcome::Refused, now_ms, &mut self.rng)?;
                continue;
            };
            match &row.envelope {
                Some(bytes) => {
                    let mut envelope = Envelope::decode(bytes.as_slice()).map_err(|error| {
                        ClientError::Corrupt(format!("stored envelope: {error}"))
                    })?;
                    if row.group != 0 {
                        // Said afresh on every attempt: what is settled only grows.
                        envelope.group_prev_seq =
                            self.outbox.waiting_below(entry.chat, entry.sender_seq);
                    }
                    self.request(
                        Request::Send(envelope.clone()),
                        Purpose::Send {
                            entry,
                            envelope,
                            row,
                        },
                    );
                }
                None => self.build(entry, row, None, false, now_ms)?,
            }
        }
        Ok(())
    }

    /// Encrypts an outbox entry's content for exactly the current devices of the peer and of
    /// this account (other than this device), claiming keys first for devices without a session
    /// (unless this build follows a claim). Ciphertexts of `reuse` for devices still current
    /// are kept (a re-encryption). The envelope is stored with the Olm state, in one
    /// transaction, before it can be sent; a first build sends it, a re-encryption hands the
    /// entry back to the outbox.
    fn build(
        &mut self,
        entry: Pending,
        row: OutboxRow,
        reuse: Option<Envelope>,
        after_claim: bool,
        now_ms: u64,
    ) -> Result<()> {
        if row.group != 0 {
            return self.rebuild_group(entry, row, reuse, after_claim, now_ms);
        }
        let me = self.identity.address();
        let accounts = envelope::recipient_accounts(row.peer, me.account);
        let reused = |device: DeviceAddress| {
            reuse.as_ref().is_some_and(|envelope| {
                envelope
                    .ciphertexts
                    .iter()
                    .any(|ciphertext| ciphertext.recipient == device.into())
            })
        };
        if !after_claim {
            let mut missing = BTreeSet::new();
            for &account in &accounts {
                let targets: Vec<DeviceAddress> = self
                    .store
                    .known_devices(account)?
                    .into_iter()
                    .filter(|device| device.current && device.address != me)
                    .map(|device| device.address)
                    .collect();
                let mut lacking = account == row.peer && targets.is_empty();
                for device in &targets {
                    lacking |= !reused(*device) && !self.store.has_session(*device)?;
                }
                if lacking {
                    missing.insert(account);
                }
            }
            if !missing.is_empty() {
                self.wait_for_claims(entry, row, reuse, missing);
                return Ok(());
            }
        }
        let claimed = self
            .outgoing
            .take_claimed(|device| accounts.contains(&device.account));
        let reencrypt = reuse.is_some();
        let built = self.store.write_with_crypto(|writer, crypto| {
            start_sessions(crypto, &claimed)?;
            let mut targets = Vec::new();
            for account in accounts {
                for known in writer.known_devices(account)? {
                    if known.current {
                        targets.push(known.address);
                    }
                }
            }
            let device_seq = writer.take_device_seq()?;
            let envelope =
                envelope::assemble(crypto, me, &row, &targets, reuse.as_ref(), device_seq)?;
            writer.set_envelope(row.client_message_id, &envelope.encode_to_vec())?;
            let recipients: Vec<DeviceAddress> =
                targets.into_iter().filter(|device| *device != me).collect();
            writer.set_recipients(me, row.client_message_id, &recipients)?;
            Ok(envelope)
        });
        match built {
            Ok(_) if reencrypt => {
                self.outbox.handle_reencrypted(entry, now_ms)?;
                Ok(())
            }
            Ok(envelope) => {
                self.request(
                    Request::Send(envelope.clone()),
                    Purpose::Send {
                        entry,
                        envelope,
                        row,
                    },
                );
                Ok(())
            }
            Err(error) => self.settle_failure(entry, &row, reuse, error, now_ms),
        }
    }

    /// Parks `entry` until the keys of `accounts` are claimed (claiming those not in flight).
    pub(super) fn wait_for_claims(
        &mut self,
        entry: Pending,
        row: OutboxRow,
        reuse: Option<Envelope>,
        accounts: BTreeSet<AccountId>,
    ) {
        for account in &accounts {
            if self.outgoing.claiming.insert(*account) {
                self.request(Request::ClaimKeys(*account), Purpose::Claim(*account));
            }
        }
        self.outgoing.waiting.push(Waiter {
            entry,
            row,
            reuse,
            accounts,
        });
    }

    /// An attempt for `entry` failed with `error` before or while it was sent.
    pub(super) fn settle_failure(
        &mut self,
        entry: Pending,
        row: &OutboxRow,
        sent: Option<Envelope>,
        error: ClientError,
        now_ms: u64,
    ) -> Result<()> {
        if let Some(refusal) = super::rolled_back_refusal(&error) {
            self.roll_back(refusal);
            return Ok(());
        }
        let Some(outcome) = self.classify(&error, now_ms) else {
            return Err(error);
        };
        if matches!(outcome, Outcome::Retry | Outcome::RetryAfter(_)) {
            self.send_attempts_failed += 1;
        }
        let next = self
            .outbox
            .handle_outcome(entry, outcome, now_ms, &mut self.rng)?;
        let home = self.identity.region;
        self.settle(next, row, sent, (&[], home), &error.to_string(), now_ms)
    }

    /// The answer to a send.
    pub(super) fn handle_sent(
        &mut self,
        entry: Pending,
        envelope: Envelope,
        row: OutboxRow,
        answer: Result<Response>,
        now_ms: u64,
    ) -> Result<()> {
        let outcome = match answer {
            Ok(Response::Sent(outcome)) => outcome,
            Ok(_) => {
                let error = ClientError::UnexpectedResponse("a send outcome with no result".into());
                return self.settle_failure(entry, &row, Some(envelope), error, now_ms);
            }
            Err(error) => return self.settle_failure(entry, &row, Some(envelope), error, now_ms),
        };
        let mut commits = Vec::new();
        // The commit whose chat sequence this device keeps: its home's, as the edge routed the
        // envelope (its home may have moved since it registered).
        let mut home = self.identity.region;
        let outcome = match outcome {
            send_outcome::Outcome::Sent(everywhere) => {
                commits = everywhere.commits;
                if everywhere.home_region != 0 {
                    home = everywhere.home_region;
                }
                Outcome::Sent
            }
            send_outcome::Outcome::Mismatched(mismatched) => {
                let me = self.identity.account;
                let members = match row.group {
                    0 => Vec::new(),
                    group => self
                        .store
                        .group_known(group)?
                        .map(|known| known.members)
                        .unwrap_or_default(),
                };
                let changes = self.store.write(|writer| {
                    let mut changes = Vec::new();
                    for account in &mismatched.accounts {
                        // A key share for an older membership may name members removed since.
                        let named = members.contains(&AccountId(account.account))
                            || envelope.recipient_accounts.contains(&account.account);
                        if row.group != 0 && named {
                            // A group's member: its devices, with no note (a group of a
                            // thousand members would drown the chat in them).
                            let account_id = AccountId(account.account);
                            let devices: Vec<DeviceId> =
                                account.devices.iter().map(|d| DeviceId(*d)).collect();
                            writer.set_current_devices(account_id, &devices)?;
                            if account_id == me {
                                changes.push((me, String::new()));
                            }
                            continue;
                        }
                        if account.account == row.peer.0 || account.account == me.0 {
                            let account_id = AccountId(account.account);
                            let devices: Vec<DeviceId> =
                                account.devices.iter().map(|d| DeviceId(*d)).collect();
                            let before: BTreeSet<DeviceId> = writer
                                .known_devices(account_id)?
                                .into_iter()
                                .filter(|known| known.current)
                                .map(|known| known.address.device)
                                .collect();
                            writer.set_current_devices(account_id, &devices)?;
                            let after: BTreeSet<DeviceId> = devices.into_iter().collect();
                            if let Some(change) = device_change(account_id, &before, &after) {
                                changes.push(change);
                            }
                        }
                    }
                    Ok(changes)
                })?;
                for (peer, text) in changes {
                    // A device of this account linked or removed: the sync follows the list.
                    self.sync_wanted |= peer == me;
                    if !text.is_empty() {
                        self.reports.push_back(Report::NoteAbout { peer, text });
                    }
                }
                Outcome::Mismatched
            }
            send_outcome::Outcome::ResendFrom(resend)
                if row.group != 0 && !self.outbox.holds(entry.chat, resend.expected_sender_seq) =>
            {
                // A group chat is never renumbered: its numbers live in several regions, and a
                // number one region lacks may be held by another. The region asked for an
                // entry settled since (its envelope named it as the previous one): the next
                // attempt names what still waits.
                Outcome::Retry
            }
            send_outcome::Outcome::ResendFrom(resend) => {
                Outcome::ResendFrom(resend.expected_sender_seq)
            }
            send_outcome::Outcome::GroupChanged(changed) if changed.group == row.group => {
                // Encrypted for an older membership: learn the current one, rebuild.
                self.learn_group(&changed)?;
                Outcome::Mismatched
            }
            send_outcome::Outcome::GroupChanged(_) => {
                let error = ClientError::UnexpectedResponse(
                    "an answer about another group, or a group answer to a 1:1 envelope".into(),
                );
                return self.settle_failure(entry, &row, Some(envelope), error, now_ms);
            }
        };
        let next = self
            .outbox
            .handle_outcome(entry, outcome, now_ms, &mut self.rng)?;
        self.settle(next, &row, Some(envelope), (&commits, home), "", now_ms)
    }

    /// Everything an outbox decision asks for.
    fn settle(
        &mut self,
        next: Next,
        row: &OutboxRow,
        sent: Option<Envelope>,
        (commits, home): (&[Committed], u32),
        problem: &str,
        now_ms: u64,
    ) -> Result<()> {
        let me = self.identity.address();
        match next {
            Next::Confirmed(entry) if row.group != 0 => {
                let own = commits.iter().find(|commit| commit.region == home);
                let committed_at_ms = commits
                    .iter()
                    .map(|commit| commit.server_time_ms)
                    .max()
                    .unwrap_or_default();
                let id = entry.client_message_id;
                let key_share = row.is_key_share();
                let moved = self.store.write(|writer| {
                    writer.remove_outbox(id)?;
                    if key_share {
                        return Ok(false);
                    }
                    writer.mark_recipients_sent(me, id, committed_at_ms)?;
                    writer.set_group_sent(
                        me,
                        id,
                        own.map(|commit| commit.chat_seq),
                        own.map(|commit| commit.server_time_ms),
                    )
                })?;
                if moved {
                    self.reports.push_back(Report::Event(Event::GroupTick {
                        group: row.group,
                        id: id.to_string(),
                        tick: Tick::Sent,
                    }));
                }
            }
            Next::Dropped(entry) if row.group != 0 => {
                let reason = if problem.is_empty() {
                    "refused".to_owned()
                } else {
                    problem.to_owned()
                };
                let id = entry.client_message_id;
                let failed = self.store.write(|writer| {
                    writer.remove_outbox(id)?;
                    writer.mark_group_failed(me, id, &reason)
                })?;
                if failed {
                    self.reports.push_back(Report::Event(Event::GroupFailed {
                        group: row.group,
                        id: id.to_string(),
                        reason,
                    }));
                }
            }
            Next::Confirmed(entry) => {
                let own = commits.iter().find(|commit| commit.region == home);
                let moved = self.store.write(|writer| {
                    writer.remove_outbox(entry.client_message_id)?;
                    writer.set_sequenced(
                        me,
                        entry.client_message_id,
                        own.map(|commit| commit.chat_seq),
                        own.map(|commit| commit.server_time_ms),
                    )?;
                    let committed_at_ms = commits
                        .iter()
                        .map(|commit| commit.server_time_ms)
                        .max()
                        .unwrap_or_default();
                    writer.mark_recipients_sent(me, entry.client_message_id, committed_at_ms)?;
                    writer.advance_tick(me, entry.client_message_id, Tick::Sent)
                })?;
                if moved {
                    self.reports.push_back(Report::Tick {
                        id: entry.client_message_id,
                        peer: row.peer,
                        tick: Tick::Sent,
                    });
                }
                // A text (not a receipt, a change or a sync message) joins the history now
                // that it has its chat sequence.
                if own.is_some()
                    && row.peer != me.account
                    && self.store.message(me, entry.client_message_id)?.is_some()
                {
                    self.history_sent()?;
                }
            }
            Next::Reencrypt(entry) => {
                let row = self
                    .store
                    .outbox_entry(entry.client_message_id)?
                    .unwrap_or_else(|| row.clone());
                self.build(entry, row, sent, false, now_ms)?;
            }
            Next::Renumber {
                chat,
                moves,
                next_sender_seq,
            } => {
                self.store
                    .write(|writer| writer.renumber(chat, me, &moves, next_sender_seq))?;
            }
            Next::RetryAt(_) => {
                if !problem.is_empty() {
                    self.last_problem = Some(problem.to_owned());
                }
            }
            Next::Dropped(entry) => {
                let reason = if problem.is_empty() {
                    "refused".to_owned()
                } else {
                    problem.to_owned()
                };
                let known = self.store.message(me, entry.client_message_id)?.is_some();
                self.store.write(|writer| {
                    writer.remove_outbox(entry.client_message_id)?;
                    writer.mark_failed(me, entry.client_message_id, &reason)
                })?;
                if known {
                    self.reports.push_back(Report::Failed {
                        id: entry.client_message_id,
                        peer: row.peer,
                        reason,
                    });
                } else if row.peer == me.account {
                    // A sync message for an own device removed since: the sync with the
                    // devices left goes on without it.
                } else {
                    self.reports.push_back(Report::NoteAbout {
                        peer: row.peer,
                        text: format!("a read receipt to {{peer}} was refused: {reason}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// What a failed attempt means for the entry: retry later, give up, or (`None`) stop the
    /// device because the failure is local (the store).
    fn classify(&mut self, error: &ClientError, now_ms: u64) -> Option<Outcome> {
        self.note_request_error(error, now_ms);
        match error {
            _ if error.is_retryable() || error.needs_reconnect() => Some(
                error
                    .retry_after_ms()
                    .map_or(Outcome::Retry, Outcome::RetryAfter),
            ),
            ClientError::UnexpectedResponse(_) => Some(Outcome::Retry),
            ClientError::Remote(_)
            | ClientError::IdentityChanged(_)
            | ClientError::BadFallbackKey(_)
            | ClientError::Crypto(_)
            | ClientError::Invalid(_)
            | ClientError::UnknownPeer(_) => Some(Outcome::Refused),
            _ => None,
        }
    }

    /// The answer to a key claim for `account`: trusts the devices' identity keys on first use,
    /// records them as the account's current devices, keeps the claimed keys, and builds the
    /// envelopes that waited. A fallback key is used only if its device signed it.
    pub(super) fn handle_claimed(
        &mut self,
        account: AccountId,
        answer: Result<Response>,
        now_ms: u64,
    ) -> Result<()> {
        self.outgoing.claiming.remove(&account);
        let claimed = match answer {
            Ok(Response::Keys(bundle)) if bundle.account == account.0 => {
                self.trust_claimed(account, &bundle)
            }
            Ok(Response::Keys(_)) => Err(ClientError::UnexpectedResponse(
                "keys of another account".into(),
            )),
            Ok(_) => Err(ClientError::UnexpectedResponse(
                "an answer that is not keys".into(),
            )),
            Err(error) => Err(error),
        };
        for group in self.group_sending.claim_answered(account, claimed.is_ok()) {
            // Through the core's own randomness, like every other backoff: seeded runs repeat.
            self.back_off_group(group, now_ms);
        }
        let (ready, still): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.outgoing.waiting)
            .into_iter()
            .partition(|waiter| waiter.accounts.contains(&account));
        self.outgoing.waiting = still;
        match claimed {
            Ok(()) => {
                for mut waiter in ready {
                    waiter.accounts.remove(&account);
                    if waiter.accounts.is_empty() {
                        self.build(waiter.entry, waiter.row, waiter.reuse, true, now_ms)?;
                    } else {
                        self.outgoing.waiting.push(waiter);
                    }
                }
            }
            Err(error) => {
                for waiter in ready {
                    self.settle_failure(
                        waiter.entry,
                        &waiter.row,
                        waiter.reuse,
                        error.duplicate(),
                        now_ms,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn trust_claimed(
        &mut self,
        account: AccountId,
        bundle: &relay_proto::wire::KeyBundle,
    ) -> Result<()> {
        let me = self.identity.address();
        let mut devices = Vec::new();
        let mut keyed = Vec::new();
        for keys in &bundle.devices {
            if keys.device == 0 {
                return Err(ClientError::UnexpectedResponse(
                    "a device numbered 0".into(),
                ));
            }
            let device = DeviceAddress {
                account,
                device: DeviceId(keys.device),
            };
            devices.push(device.device);
            if device == me {
                continue;
            }
            let identity_key =
                <[u8; 32]>::try_from(keys.identity_key.as_slice()).map_err(|_| {
                    ClientError::UnexpectedResponse(format!("identity key of {device}"))
                })?;
            if let Some(key) = keys.one_time_key.as_ref().filter(|key| key.fallback) {
                verify_fallback_key(device, &identity_key, &keys.signing_key, key)?;
            }
            keyed.push((
                device,
                identity_key,
                keys.one_time_key.as_ref().map(|key| key.public_key.clone()),
            ));
        }
        self.store.write(|writer| {
            for (device, identity_key, _) in &keyed {
                writer.trust_device(*device, identity_key, true)?;
            }
            writer.set_current_devices(account, &devices)
        })?;
        for (device, identity_key, one_time_key) in keyed {
            self.outgoing
                .claimed
                .insert(device, (identity_key, one_time_key));
        }
        Ok(())
    }

    /// The answer to a name lookup: a contact (its drafts are queued), no such account (its
    /// drafts are given up, reported as failed), or a failure (the drafts wait for a later try).
    pub(super) fn handle_name_lookup(
        &mut self,
        name: String,
        answer: Result<Response>,
        now_ms: u64,
    ) -> Result<()> {
        let state = match answer {
            Ok(Response::Account(info)) if info.account != 0 && info.name == name => {
                let contact = Contact {
                    account: AccountId(info.account),
                    name: info.name,
                    region: info.region,
                };
                self.store.write(|writer| writer.upsert_contact(&contact))?;
                NameState::Known(contact)
            }
            Ok(Response::Account(info)) => {
                let error = ClientError::UnexpectedResponse(format!(
                    "lookup of {name} answered {:?}",
                    info.name
                ));
                self.last_problem = Some(error.to_string());
                NameState::Failed(NameFailure(error))
            }
            Ok(_) => NameState::Failed(NameFailure(ClientError::UnexpectedResponse(
                "an answer that is not an account".into(),
            ))),
            Err(ClientError::Remote(error)) if error.code == ErrorCode::UnknownAccount => {
                NameState::Unknown
            }
            Err(error) => {
                self.note_request_error(&error, now_ms);
                self.last_problem = Some(error.to_string());
                NameState::Failed(NameFailure(error))
            }
        };
        if state == NameState::Unknown {
            for draft in self.store.drafts()? {
                if draft.peer_name != name {
                    continue;
                }
                let id = draft.client_message_id;
                if self.store.write(|writer| writer.remove_draft(id))? {
                    self.reports.push_back(Report::Event(Event::Failed {
                        id: id.to_string(),
                        peer: name.clone(),
                        reason: format!("no account is named {name}"),
                    }));
                    self.outgoing.given_up.insert(id, name.clone());
                }
            }
        }
        self.outgoing.names.insert(name, state);
        self.queue_known_drafts(now_ms)
    }
}

/// A claimed device's identity key and one-time key (none: the device had none left).
pub(super) type ClaimedKey = (DeviceAddress, [u8; 32], Option<Vec<u8>>);

/// Starts an Olm session with each claimed device that has none yet (inside the transaction
/// that stores what the sessions encrypt).
pub(super) fn start_sessions(crypto: &mut Crypto, claimed: &[ClaimedKey]) -> Result<()> {
    for (device, identity_key, one_time_key) in claimed {
        if !crypto.has_session(*device)
            && let Some(one_time_key) = one_time_key
        {
            crypto.create_outbound_session(*device, identity_key, one_time_key)?;
        }
    }
    Ok(())
}

/// The warning when an account's current devices change from a list this device knew (not the
/// first list it learns): devices added, devices gone, and where to compare them.
pub(super) fn device_change(
    account: AccountId,
    before: &BTreeSet<DeviceId>,
    after: &BTreeSet<DeviceId>,
) -> Option<(AccountId, String)> {
    if before.is_empty() || before == after {
        return None;
    }
    let list = |devices: Vec<&DeviceId>| {
        devices
            .iter()
            .map(|device| device.0.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let added = list(after.difference(before).collect());
    let removed = list(before.difference(after).collect());
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("device {added} added"));
    }
    if !removed.is_empty() {
        parts.push(format!("device {removed} removed"));
    }
    Some((
        account,
        format!(
            "⚠ {{peer}}'s devices changed ({}); messages now go to the new list. Compare the \
             fingerprints with `relay devices {{peer}}` on both sides",
            parts.join(", ")
        ),
    ))
}
