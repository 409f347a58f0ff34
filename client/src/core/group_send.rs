//! Group messages leaving the device: texts typed for a group, numbered into the group's chat
//! one by one, each encrypted once with the device's Megolm session (see
//! [`crate::group_keys`]), after the key shares its session needs.
//!
//! **Numbering.** A group text is stored unnumbered when it is typed ([`Core::compose_group`]).
//! The outbox takes the oldest one of a group when fewer than [`GROUP_TEXTS_AHEAD_MAX`] of the
//! group's entries are unconfirmed and every member device has an Olm session (keys are claimed
//! first, for members with no known device or a device without a session). In one transaction
//! it then makes the session ready ([`GroupKeys::prepare_send`]: a first session, or a rotation),
//! numbers a key share for each [`GROUP_KEY_SHARE_DEVICES_MAX`] member devices lacking the key,
//! then the message; so in the common case a key arrives before the first message needing it.
//!
//! **Rebuilding.** A region answers an envelope encrypted for an older membership with
//! `GroupChanged` (the version, the members, and the devices of the members it homes), and one
//! whose devices are not the current ones with "mismatched devices"; the device records what it
//! learned and rebuilds the entry under the same number and id. A message is encrypted again
//! at the session's current index, for the current member devices, after a rotation if a
//! device left (the removed member cannot read it); the shares for devices that lack the key
//! are numbered after the chat's last entry, so those devices hold the message until the key
//! arrives (`inbound` keeps it waiting). A key share keeps its Olm ciphertexts for the devices
//! still members and drops the others; one left with none is given up (the gap it leaves is
//! renumbered like any other). A share built for an older membership than the device now
//! knows keeps that version and its accounts, and drops only devices no longer current: a text
//! of its session stored before a removal may be queued to the removed member's devices, which
//! need its key (the region takes such a share; see `home_region::core::commit_envelope`).
//!
//! A region that already committed the first build of an entry keeps it (the envelope id is
//! its idempotency key), so every member device receives exactly one of the builds, each one
//! decryptable by the devices it was built for.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use rand::SeedableRng;
use rand::rngs::StdRng;
use relay_proto::wire::{DeviceCiphertext, Envelope, EnvelopeKind, GroupChanged};
use relay_proto::{
    AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId, ErrorCode, GroupId,
};

use super::outgoing::{ClaimedKey, start_sessions};
use super::{Core, Purpose, Report, Request};
use crate::content::Content;
use crate::envelope::{self, GroupHeader};
use crate::error::{ClientError, Result};
use crate::events::Event;
use crate::limits::{GROUP_KEY_SHARE_DEVICES_MAX, GROUP_TEXTS_AHEAD_MAX};
use crate::media::Attachment;
use crate::outbox::{Pending, retry_delay_ms};
use crate::store::{KnownGroup, NewGroupMessage, OutboxRow, Tick, Writer};

/// The sending side's state for groups.
#[derive(Debug, Default)]
pub(super) struct GroupSending {
    /// Groups whose next text waits for key claims: the accounts still awaited.
    claims: BTreeMap<u64, BTreeSet<AccountId>>,
    /// Groups whose next text waits after failed claims: until when (ms), and how many
    /// failures in a row.
    retry_at: BTreeMap<u64, (u64, u32)>,
    /// Groups whose membership is being read (none known yet).
    asking: BTreeSet<u64>,
    /// Accounts claimed while this device ran: a member whose claim named no device is not
    /// claimed again for every text (a region names any device it has, as mismatched).
    claimed: BTreeSet<AccountId>,
}

impl GroupSending {
    /// Whether a group text waits for claims or a membership.
    pub(super) fn busy(&self) -> bool {
        !self.claims.is_empty() || !self.asking.is_empty()
    }

    /// When the first group whose next text waits out a backoff may go on, if after `now_ms`
    /// (one already due goes on at the next step).
    pub(super) fn next_retry_after(&self, now_ms: u64) -> Option<u64> {
        self.retry_at
            .values()
            .map(|(at, _)| *at)
            .filter(|at| *at > now_ms)
            .min()
    }

    /// The answer to a claim of `account` came (`ok`: keys were trusted); returns the groups
    /// whose next text must back off (the claim failed).
    pub(super) fn claim_answered(&mut self, account: AccountId, ok: bool) -> Vec<u64> {
        let mut failed = Vec::new();
        self.claims.retain(|group, accounts| {
            if !accounts.remove(&account) {
                return true;
            }
            if !ok {
                failed.push(*group);
                return false;
            }
            !accounts.is_empty()
        });
        if ok {
            self.claimed.insert(account);
        }
        failed
    }
}

/// The current member devices of a group as this device knows them (every device of every
/// member but `me`), and the member accounts whose keys must be claimed first.
fn member_devices(
    devices_of: impl Fn(AccountId) -> Result<Vec<crate::store::KnownDevice>>,
    has_session: impl Fn(DeviceAddress) -> Result<bool>,
    claimed: &BTreeSet<AccountId>,
    known: &KnownGroup,
    me: DeviceAddress,
) -> Result<(BTreeSet<DeviceAddress>, BTreeSet<AccountId>)> {
    let mut devices = BTreeSet::new();
    let mut missing = BTreeSet::new();
    for &account in &known.members {
        let current: Vec<DeviceAddress> = devices_of(account)?
            .into_iter()
            .filter(|device| device.current && device.address != me)
            .map(|device| device.address)
            .collect();
        if current.is_empty() && account != me.account && !claimed.contains(&account) {
            missing.insert(account);
        }
        for device in current {
            if !has_session(device)? {
                missing.insert(account);
            }
            devices.insert(device);
        }
    }
    Ok((devices, missing))
}

/// What a numbering or a rebuild produced.
struct Built {
    /// The key shares numbered, in order.
    shares: Vec<Pending>,
}

impl Core {
    /// Stores a text typed for `group` without touching the network; the outbox numbers and
    /// sends it (see the module doc). Reports it pending; returns its id.
    pub fn compose_group(
        &mut self,
        group: u64,
        text: &str,
        wall_ms: u64,
        now_ms: u64,
    ) -> Result<ClientMessageId> {
        self.compose_group_message(group, text, None, wall_ms, now_ms)
    }

    /// Stores a message typed for `group` as [`Core::compose_group`] does: a text, or a file
    /// (already uploaded: `attachment`) with `text` as its caption.
    pub fn compose_group_message(
        &mut self,
        group: u64,
        text: &str,
        attachment: Option<&Attachment>,
        wall_ms: u64,
        _now_ms: u64,
    ) -> Result<ClientMessageId> {
        self.refuse_if_rolled_back()?;
        if group == 0 {
            return Err(ClientError::Invalid("there is no group 0".into()));
        }
        // The checks the content will meet when it is numbered.
        Content::group_message(group, text, attachment, wall_ms)?;
        let attachment = attachment.map(Attachment::to_bytes);
        let me = self.identity.address();
        let id = ClientMessageId(rand::Rng::random(&mut self.rng));
        self.store.write(|writer| {
            writer.insert_group_message(&NewGroupMessage {
                group,
                outgoing: true,
                sender: me,
                client_message_id: id,
                sender_seq: None,
                chat_seq: None,
                text: Some(text),
                attachment: attachment.as_deref(),
                sent_at_ms: wall_ms,
                server_time_ms: None,
                tick: Tick::Pending,
                undecryptable: None,
            })
        })?;
        self.reports.push_back(Report::Event(Event::GroupTick {
            group,
            id: id.to_string(),
            tick: Tick::Pending,
        }));
        Ok(id)
    }

    /// The latest `limit` messages of `group` on this device, oldest first, as
    /// [`Event::GroupMessage`]s (local only; a sent one with its tick).
    pub fn group_history(&self, group: u64, limit: usize) -> Result<Vec<Event>> {
        Ok(self
            .store
            .group_history(group, limit)?
            .into_iter()
            .map(|message| self.group_message_event(message))
            .collect())
    }

    /// A stored group message as the device reports it.
    fn group_message_event(&self, message: crate::store::StoredGroupMessage) -> Event {
        let mine = message.outgoing && message.sender == self.identity.address();
        Event::GroupMessage {
            group: message.group,
            id: message.client_message_id.to_string(),
            from: self.name_of(message.sender.account),
            direction: if message.outgoing {
                crate::events::Direction::Out
            } else {
                crate::events::Direction::In
            },
            sender_device: message.sender.to_string(),
            chat_seq: message.chat_seq.unwrap_or(0),
            time_ms: message.server_time_ms.unwrap_or(0),
            sent_at_ms: message.sent_at_ms,
            text: message.text.unwrap_or_default(),
            file: super::file_info(message.attachment.as_deref()),
            undecryptable: message
                .undecryptable
                .or(message.failed.map(|reason| format!("not sent: {reason}"))),
            tick: mine.then_some(message.tick),
        }
    }

    /// A group message as its [`Event::GroupMessage`], then, for one this device sent, one
    /// [`Event::Receipt`] per member device it went to (`relay info`).
    pub(super) fn group_message_info(
        &self,
        message: crate::store::StoredGroupMessage,
    ) -> Result<Vec<Event>> {
        let (sender, id) = (message.sender, message.client_message_id);
        let mine = message.outgoing && sender == self.identity.address();
        let mut events = vec![self.group_message_event(message)];
        if mine {
            events.extend(self.receipt_events(sender, id)?);
        }
        Ok(events)
    }

    /// Marks every unread message of `group` read, and queues a read receipt for each sender's
    /// messages to that sender alone (over Olm in the 1:1 chat, end-to-end encrypted; the other
    /// members learn nothing), and to this account's other devices; with read receipts off,
    /// to the own devices only. Returns how many were marked.
    pub fn mark_group_read(&mut self, group: u64, wall_ms: u64, now_ms: u64) -> Result<usize> {
        self.refuse_if_rolled_back()?;
        let me = self.identity.address();
        let send_to_senders = self.store.read_receipts()?;
        let other_own_devices = self
            .store
            .known_devices(me.account)?
            .iter()
            .any(|known| known.current && known.address != me);
        let unread = self
            .store
            .write(|writer| writer.unread_group_messages(group))?;
        let mut by_sender: BTreeMap<AccountId, Vec<ClientMessageId>> = BTreeMap::new();
        for (sender, id) in &unread {
            by_sender.entry(sender.account).or_default().push(*id);
        }
        let mut receipts = Vec::new();
        for (sender, ids) in &by_sender {
            if *sender == me.account || !(send_to_senders || other_own_devices) {
                continue;
            }
            for chunk in ids.chunks(crate::limits::READ_RECEIPT_IDS_MAX) {
                let content = Content::group_read(
                    group,
                    chunk.iter().map(|id| id.0).collect(),
                    wall_ms,
                    sender.0,
                )?;
                receipts.push((
                    *sender,
                    ClientMessageId(rand::Rng::random(&mut self.rng)),
                    content.to_bytes(),
                ));
            }
        }
        let entries = self.store.write(|writer| {
            for (sender, ids) in &by_sender {
                writer.mark_group_read_locally(group, *sender, ids, wall_ms)?;
            }
            let mut entries = Vec::new();
            for (sender, id, content) in &receipts {
                let (chat, to) = if send_to_senders {
                    (ChatId::direct(me.account, *sender), *sender)
                } else {
                    (ChatId::direct(me.account, me.account), me.account)
                };
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
        Ok(unread.len())
    }

    /// Whether group texts wait to be numbered.
    pub(super) fn group_texts_waiting(&self) -> bool {
        self.store
            .groups_with_unnumbered_texts()
            .is_ok_and(|groups| !groups.is_empty())
    }

    /// Numbers the group texts there is room for (see the module doc).
    pub(super) fn step_groups(&mut self, now_ms: u64) -> Result<()> {
        for group in self.store.groups_with_unnumbered_texts()? {
            if let Some(accounts) = self.group_sending.claims.get(&group) {
                // A full group's claims go out as the device's requests leave room.
                let unasked: Vec<AccountId> = accounts
                    .iter()
                    .filter(|account| !self.outgoing.is_claiming(**account))
                    .copied()
                    .collect();
                for account in unasked {
                    if !self.has_room() {
                        break;
                    }
                    self.outgoing.start_claim(account);
                    self.request(Request::ClaimKeys(account), Purpose::Claim(account));
                }
                continue;
            }
            if self.group_sending.asking.contains(&group)
                || self
                    .group_sending
                    .retry_at
                    .get(&group)
                    .is_some_and(|(at, _)| now_ms < *at)
            {
                continue;
            }
            let chat = ChatId::group(GroupId(group));
            loop {
                if self.outbox.chat_len(chat) >= GROUP_TEXTS_AHEAD_MAX || !self.has_room() {
                    break;
                }
                if !self.number_group_text(group, now_ms)? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Numbers the oldest unnumbered text of `group` with the key shares it needs; `false`
    /// when there is none or it waits for claims.
    fn number_group_text(&mut self, group: u64, now_ms: u64) -> Result<bool> {
        let me = self.identity.address();
        let Some(known) = self.store.group_known(group)? else {
            // The first text for a group this device knows nothing of: its membership first.
            self.group_sending.asking.insert(group);
            self.request(Request::GroupInfo(group), Purpose::GroupInfo(group));
            return Ok(false);
        };
        let (_, missing) = member_devices(
            |account| self.store.known_devices(account),
            |device| Ok(self.outgoing.has_claimed(device) || self.store.has_session(device)?),
            &self.group_sending.claimed,
            &known,
            me,
        )?;
        if !missing.is_empty() {
            self.claim_for_group(group, missing);
            return Ok(false);
        }
        let wall_ms = self.wall_ms;
        let mut rng = StdRng::from_rng(&mut self.rng);
        let claimed = self.take_claimed(&known.members);
        let chat = ChatId::group(GroupId(group));
        let numbered = self.store.write_with_crypto(|writer, crypto| {
            let Some(text) = writer.next_unnumbered_text(group)? else {
                return Ok(None);
            };
            start_sessions(crypto, &claimed)?;
            let attachment = text
                .attachment
                .as_deref()
                .map(Attachment::from_bytes)
                .transpose()?;
            let content =
                Content::group_message(group, &text.text, attachment.as_ref(), text.sent_at_ms)?
                    .to_bytes();
            let mut keys = writer.load_group_keys(me)?;
            let (devices, _) = member_devices(
                |account| writer.known_devices(account),
                |device| Ok(crypto.has_session(device)),
                &BTreeSet::new(),
                &known,
                me,
            )?;
            let shares = share_key(
                writer, crypto, &mut keys, &mut rng, me, group, &known, &devices, wall_ms,
            )?;
            let sender_seq = writer.take_sender_seq(chat)?;
            let message = keys.encrypt(group, &devices, wall_ms, &content)?;
            let envelope = envelope::group_message(
                me,
                GroupHeader {
                    group,
                    version: known.version,
                    session_id: &message.session_id,
                    sender_seq,
                    client_message_id: text.client_message_id,
                    device_seq: writer.take_device_seq()?,
                },
                &known.members,
                &devices,
                message.bytes,
            )?;
            let fanout = envelope.ciphertexts.len();
            writer.insert_outbox(
                &OutboxRow {
                    chat,
                    sender_seq,
                    client_message_id: text.client_message_id,
                    peer: AccountId(0),
                    group,
                    content,
                    envelope: Some(envelope.encode_to_vec()),
                },
                wall_ms,
            )?;
            writer.number_group_text(me, text.client_message_id, sender_seq)?;
            let recipients: Vec<DeviceAddress> = devices.iter().copied().collect();
            writer.set_group_recipients(me, text.client_message_id, &recipients)?;
            writer.save_group_keys(&keys.take_changes()?)?;
            let mut entries = shares.shares;
            entries.push(Pending {
                chat,
                sender_seq,
                client_message_id: text.client_message_id,
            });
            Ok(Some((entries, fanout)))
        });
        match numbered {
            Ok(Some((entries, fanout))) => {
                self.group_sending.retry_at.remove(&group);
                for entry in entries {
                    self.outbox.insert(entry, now_ms)?;
                }
                self.outbox.set_fanout(chat, fanout);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(error) if error.is_retryable() => {
                // A member device had no key to start a session with: later, with backoff.
                self.back_off_group(group, now_ms);
                self.last_problem = Some(error.to_string());
                Ok(false)
            }
            Err(
                error @ (ClientError::Invalid(_)
                | ClientError::Crypto(_)
                | ClientError::GroupKey(_)
                | ClientError::IdentityChanged(_)
                | ClientError::BadFallbackKey(_)),
            ) => {
                // The text can never be sent as it is (a member device without any key to
                // start a session with, a content over its limit): it fails, and does not hold
                // the group's later texts back.
                self.fail_unnumbered(group, &error.to_string())?;
                Ok(true)
            }
            Err(error) => Err(error),
        }
    }

    /// Gives up the oldest unnumbered text of `group`.
    fn fail_unnumbered(&mut self, group: u64, reason: &str) -> Result<()> {
        let me = self.identity.address();
        let failed = self.store.write(|writer| {
            let Some(text) = writer.next_unnumbered_text(group)? else {
                return Ok(None);
            };
            writer.mark_group_failed(me, text.client_message_id, reason)?;
            Ok(Some(text.client_message_id))
        })?;
        if let Some(id) = failed {
            self.reports.push_back(Report::Event(Event::GroupFailed {
                group,
                id: id.to_string(),
                reason: reason.to_owned(),
            }));
        }
        Ok(())
    }

    /// The membership `group` is known at; an entry of a group is numbered only once it is
    /// known, so its absence means the store lost it: only this account, at version 1 (the
    /// region answers with the real one).
    fn known_group(&self, group: u64) -> Result<KnownGroup> {
        Ok(self.store.group_known(group)?.unwrap_or(KnownGroup {
            version: 1,
            members: vec![self.identity.account],
        }))
    }

    /// The directory's answer about a group the device asked for before its first text:
    /// recorded, or (not a member, no such group) the group's waiting texts fail.
    pub(super) fn handle_group_info(
        &mut self,
        group: u64,
        answer: Result<super::Response>,
        now_ms: u64,
    ) -> Result<()> {
        self.group_sending.asking.remove(&group);
        match answer {
            Ok(super::Response::Group(info)) if info.group == group && info.version > 0 => {
                self.learn_group_info(&info)?;
            }
            Err(ClientError::Remote(refusal)) if refusal.code == ErrorCode::UnknownGroup => {
                let reason = format!(
                    "this account is not a member of group {group} (or there is no such group)"
                );
                while self.store.groups_with_unnumbered_texts()?.contains(&group) {
                    self.fail_unnumbered(group, &reason)?;
                }
            }
            Ok(_) => {
                self.last_problem = Some(format!("an answer about group {group} that is not it"));
                self.back_off_group(group, now_ms);
            }
            Err(error) => {
                self.note_request_error(&error, now_ms);
                self.last_problem = Some(error.to_string());
                self.back_off_group(group, now_ms);
            }
        }
        Ok(())
    }

    /// `group`'s next text waits a little longer after each failure in a row.
    pub(super) fn back_off_group(&mut self, group: u64, now_ms: u64) {
        let failures = self
            .group_sending
            .retry_at
            .get(&group)
            .map_or(0, |(_, n)| *n)
            + 1;
        let delay = retry_delay_ms(failures, &mut self.rng);
        self.group_sending
            .retry_at
            .insert(group, (now_ms + delay, failures));
    }

    /// Claims the keys of `accounts` for the next text of `group`.
    /// (As many as the device's requests leave room for; the others go as answers come.)
    fn claim_for_group(&mut self, group: u64, accounts: BTreeSet<AccountId>) {
        for account in &accounts {
            if !self.has_room() {
                break;
            }
            if self.outgoing.start_claim(*account) {
                self.request(Request::ClaimKeys(*account), Purpose::Claim(*account));
            }
        }
        self.group_sending.claims.insert(group, accounts);
    }

    /// Takes the claimed keys of devices of `accounts`.
    fn take_claimed(&mut self, accounts: &[AccountId]) -> Vec<ClaimedKey> {
        self.outgoing
            .take_claimed(|device| accounts.contains(&device.account))
    }

    /// Records a group's membership as the directory answered a group command.
    pub fn learn_group_info(&mut self, info: &relay_proto::wire::GroupInfo) -> Result<()> {
        let members: Vec<AccountId> = info.members.iter().map(|m| AccountId(m.account)).collect();
        self.store
            .write(|writer| writer.set_group_known(info.group, info.version, &members))?;
        Ok(())
    }

    /// Records accounts the directory named (a group's members) as known accounts, so this
    /// device shows their names.
    pub fn learn_contacts(&mut self, contacts: &[crate::store::Contact]) -> Result<()> {
        self.store.write(|writer| {
            for contact in contacts {
                if contact.account != self.identity.account {
                    writer.upsert_contact(contact)?;
                }
            }
            Ok(())
        })
    }

    /// Records what a region said about a group (`GroupChanged`): the version and members,
    /// and the current devices of the members it homes.
    pub(super) fn learn_group(&mut self, changed: &GroupChanged) -> Result<()> {
        let members: Vec<AccountId> = changed.members.iter().map(|a| AccountId(*a)).collect();
        let me = self.identity.account;
        let own_changed = self.store.write(|writer| {
            writer.set_group_known(changed.group, changed.version, &members)?;
            let mut own_changed = false;
            for account in &changed.devices {
                let id = AccountId(account.account);
                if !members.contains(&id) {
                    continue;
                }
                let devices: Vec<DeviceId> = account.devices.iter().map(|d| DeviceId(*d)).collect();
                own_changed |= id == me;
                writer.set_current_devices(id, &devices)?;
            }
            Ok(own_changed)
        })?;
        self.sync_wanted |= own_changed;
        Ok(())
    }

    /// Rebuilds a group entry after `GroupChanged` or "mismatched devices" (see the module
    /// doc), claiming keys first unless this follows a claim; hands it back to the outbox.
    pub(super) fn rebuild_group(
        &mut self,
        entry: Pending,
        row: OutboxRow,
        sent: Option<Envelope>,
        after_claim: bool,
        now_ms: u64,
    ) -> Result<()> {
        let me = self.identity.address();
        let group = row.group;
        let sent = match sent {
            Some(sent) => sent,
            None => match row.envelope.as_deref().map(Envelope::decode) {
                Some(Ok(envelope)) => envelope,
                _ => {
                    return Err(ClientError::Corrupt(format!(
                        "group entry {} has no envelope",
                        row.client_message_id
                    )));
                }
            },
        };
        let known = self.known_group(group)?;
        let share = sent.kind == EnvelopeKind::GroupKeyShare as i32;
        if !share && !after_claim {
            let (_, missing) = member_devices(
                |account| self.store.known_devices(account),
                |device| Ok(self.outgoing.has_claimed(device) || self.store.has_session(device)?),
                &self.group_sending.claimed,
                &known,
                me,
            )?;
            if !missing.is_empty() {
                self.wait_for_claims(entry, row, Some(sent), missing);
                return Ok(());
            }
        }
        let wall_ms = self.wall_ms;
        let mut rng = StdRng::from_rng(&mut self.rng);
        let claimed = self.take_claimed(&known.members);
        let rebuilt = self.store.write_with_crypto(|writer, crypto| {
            start_sessions(crypto, &claimed)?;
            let (devices, _) = member_devices(
                |account| writer.known_devices(account),
                |device| Ok(crypto.has_session(device)),
                &BTreeSet::new(),
                &known,
                me,
            )?;
            let header = |session_id, device_seq| GroupHeader {
                group,
                version: known.version,
                session_id,
                sender_seq: row.sender_seq,
                client_message_id: row.client_message_id,
                device_seq,
            };
            if share {
                let header = header(&sent.group_session_id, writer.take_device_seq()?);
                let envelope = rebuilt_share(writer, me, &sent, &known, &devices, header)?;
                writer.set_envelope(row.client_message_id, &envelope.encode_to_vec())?;
                return Ok(Built { shares: Vec::new() });
            }
            let mut keys = writer.load_group_keys(me)?;
            let shares = share_key(
                writer, crypto, &mut keys, &mut rng, me, group, &known, &devices, wall_ms,
            )?;
            let message = keys.encrypt(group, &devices, wall_ms, &row.content)?;
            let envelope = envelope::group_message(
                me,
                header(&message.session_id, writer.take_device_seq()?),
                &known.members,
                &devices,
                message.bytes,
            )?;
            writer.set_envelope(row.client_message_id, &envelope.encode_to_vec())?;
            let recipients: Vec<DeviceAddress> = devices.iter().copied().collect();
            writer.set_group_recipients(me, row.client_message_id, &recipients)?;
            writer.save_group_keys(&keys.take_changes()?)?;
            Ok(shares)
        });
        match rebuilt {
            Ok(built) => {
                self.outbox.handle_reencrypted(entry, now_ms)?;
                for share in built.shares {
                    self.outbox.insert(share, now_ms)?;
                }
                Ok(())
            }
            Err(error) => self.settle_failure(entry, &row, None, error, now_ms),
        }
    }
}

/// Key share `sent` built again under `header` (the same number and session, a new device_seq)
/// for the devices still current: those of `devices`, the member devices of `known`. A share
/// for an older membership than `known` keeps its version and accounts, and every device still
/// current for its account: texts of its session built for that membership may be queued to
/// members removed since, and they need the key (the region takes it).
fn rebuilt_share(
    writer: &Writer<'_>,
    me: DeviceAddress,
    sent: &Envelope,
    known: &KnownGroup,
    devices: &BTreeSet<DeviceAddress>,
    header: GroupHeader<'_>,
) -> Result<Envelope> {
    let older = sent.group_version < known.version;
    // The current devices of each account named, read once per account.
    let mut current_of: BTreeMap<AccountId, BTreeSet<DeviceAddress>> = BTreeMap::new();
    let mut kept = Vec::new();
    for ciphertext in &sent.ciphertexts {
        let Ok(device) = ciphertext.recipient.parse() else {
            continue;
        };
        let current = if older {
            let current = match current_of.entry(device.account) {
                Entry::Occupied(read) => read.into_mut(),
                Entry::Vacant(unread) => unread.insert(
                    writer
                        .known_devices(device.account)?
                        .into_iter()
                        .filter(|known| known.current)
                        .map(|known| known.address)
                        .collect(),
                ),
            };
            current.contains(&device)
        } else {
            devices.contains(&device)
        };
        if current {
            kept.push(ciphertext.clone());
        }
    }
    if kept.is_empty() {
        return Err(ClientError::Invalid(
            "no device this key share was for is a member device any more".into(),
        ));
    }
    let (version, accounts) = if older {
        let named = sent.recipient_accounts.iter().map(|a| AccountId(*a));
        (sent.group_version, named.collect())
    } else {
        (known.version, known.members.clone())
    };
    envelope::key_share(me, GroupHeader { version, ..header }, &accounts, kept)
}

/// Makes `group`'s sending session ready for a message to `devices` (rotating it if due) and
/// numbers a key share for each [`GROUP_KEY_SHARE_DEVICES_MAX`] devices lacking its key, each
/// stored with its envelope; records them as holding the key.
#[allow(clippy::too_many_arguments)]
fn share_key(
    writer: &Writer<'_>,
    crypto: &mut crate::crypto::Crypto,
    keys: &mut crate::group_keys::GroupKeys,
    rng: &mut StdRng,
    me: DeviceAddress,
    group: u64,
    known: &KnownGroup,
    devices: &BTreeSet<DeviceAddress>,
    wall_ms: u64,
) -> Result<Built> {
    let chat = ChatId::group(GroupId(group));
    let plan = keys.prepare_send(group, devices, wall_ms);
    let key = Content::group_key(plan.key.clone()).to_bytes();
    let mut shares = Vec::new();
    for chunk in plan.devices.chunks(GROUP_KEY_SHARE_DEVICES_MAX) {
        let mut ciphertexts = Vec::with_capacity(chunk.len());
        for &device in chunk {
            if !crypto.has_session(device) {
                return Err(ClientError::NoOneTimeKey(device));
            }
            let (message_type, body) = crypto.encrypt(device, &key)?;
            ciphertexts.push(DeviceCiphertext {
                recipient: device.into(),
                message_type,
                body,
            });
        }
        let client_message_id = ClientMessageId(rand::Rng::random(rng));
        let sender_seq = writer.take_sender_seq(chat)?;
        let envelope = envelope::key_share(
            me,
            GroupHeader {
                group,
                version: known.version,
                session_id: &plan.session_id,
                sender_seq,
                client_message_id,
                device_seq: writer.take_device_seq()?,
            },
            &known.members,
            ciphertexts,
        )?;
        writer.insert_outbox(
            &OutboxRow {
                chat,
                sender_seq,
                client_message_id,
                peer: AccountId(0),
                group,
                content: Vec::new(),
                envelope: Some(envelope.encode_to_vec()),
            },
            wall_ms,
        )?;
        shares.push(Pending {
            chat,
            sender_seq,
            client_message_id,
        });
    }
    keys.mark_shared(group, &plan.session_id, &plan.devices)?;
    Ok(Built { shares })
}
