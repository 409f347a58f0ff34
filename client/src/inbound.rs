//! Processing a page of the device queue, sans network: decrypt each message with the sender
//! device's Olm sessions, deduplicate redeliveries, file texts and read receipts, move ticks
//! forward on server receipts, and record what could not be decrypted. Everything one page
//! changes (messages, ticks, Olm pickles, the cursor and the acks owed) is written through one
//! [`Writer`] (with the Olm state of [`crate::store::Store::write_with_crypto`]), so it commits
//! together before any entry is acknowledged.

use relay_proto::wire::{QueueEntry, QueuedMessage, QueuedReceipt, ReceiptState, queue_entry};
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress};
use relay_sync::Hlc;

use crate::blob::BlobRef;
use crate::content::{Change, Content, body};
use crate::crypto::Crypto;
use crate::error::{ClientError, Result};
use crate::group_keys::GroupKeys;
use crate::media::Attachment;
use crate::store::{NewMessage, RecipientState, Tick, Writer};

mod group;
use group::GroupInbound;

/// What processing a queue page produced, for reporting after the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A text message, from the peer or from another own device.
    Message {
        /// The message id.
        id: ClientMessageId,
        /// The sending device.
        sender: DeviceAddress,
        /// The other account of the chat.
        peer: AccountId,
        /// Whether this account sent it (another own device).
        outgoing: bool,
        /// The home region's chat sequence.
        chat_seq: u64,
        /// The region's commit time.
        time_ms: u64,
        /// The sender's clock.
        sent_at_ms: u64,
        /// The text (a file's caption).
        text: String,
        /// The attached file, if any.
        attachment: Option<Attachment>,
    },
    /// A text message to a group, from another member or another own device.
    GroupMessage {
        /// The group.
        group: u64,
        /// The message id.
        id: ClientMessageId,
        /// The sending device.
        sender: DeviceAddress,
        /// Whether this account sent it (another own device).
        outgoing: bool,
        /// The home region's chat sequence.
        chat_seq: u64,
        /// The region's commit time.
        time_ms: u64,
        /// The sender's clock.
        sent_at_ms: u64,
        /// The text (a file's caption).
        text: String,
        /// The attached file, if any.
        attachment: Option<Attachment>,
    },
    /// A group message sent from this device moved its tick (delivered: every member device
    /// it was sent to has it).
    GroupTick {
        /// The group.
        group: u64,
        /// The message id.
        id: ClientMessageId,
        /// The new tick.
        tick: Tick,
    },
    /// A message that could not be decrypted.
    Undecryptable {
        /// The message id.
        id: ClientMessageId,
        /// The sending device.
        sender: DeviceAddress,
        /// The region's commit time.
        time_ms: u64,
        /// Why.
        reason: String,
    },
    /// A sent message's tick moved.
    Tick {
        /// The message id.
        id: ClientMessageId,
        /// The other account of the chat.
        peer: AccountId,
        /// The new tick.
        tick: Tick,
    },
    /// A peer device's copy expired undelivered.
    Expired {
        /// The message id.
        id: ClientMessageId,
        /// The other account of the chat.
        peer: AccountId,
        /// The device whose copy expired.
        device: DeviceAddress,
    },
    /// Another own device read messages of a chat.
    ReadElsewhere {
        /// The other account of the chat.
        peer: AccountId,
        /// How many messages changed.
        count: usize,
    },
    /// A change to an earlier message (applied to the history after the page commits).
    Change {
        /// The envelope's id.
        id: ClientMessageId,
        /// The device that made the change.
        sender: DeviceAddress,
        /// The other account of the chat.
        peer: AccountId,
        /// The message changed: its sending device and id.
        target: (DeviceAddress, ClientMessageId),
        /// The change.
        change: Change,
        /// When, by the changing device's clock.
        at: Hlc,
        /// The region's commit time of the change.
        time_ms: u64,
    },
    /// A sync message from another own device (applied to the history after the page commits).
    Sync {
        /// The own device that sent it.
        from: DeviceAddress,
        /// The sync message.
        bytes: Vec<u8>,
    },
    /// A history bootstrap from another own device, for this one: where the encrypted snapshot
    /// of every chat is (downloaded and loaded after the page commits, see `core::bootstrap`).
    Bootstrap {
        /// The own device that sent it (the one that approved this device's link).
        from: DeviceAddress,
        /// The snapshot's blob.
        reference: BlobRef,
    },
    /// Something odd that is not an error of this page.
    Warning(String),
}

/// Processes `entries` (a page fetched after `cursor`) for device `me` with the Olm state of the
/// same transaction, and records the cursor and acks; returns what to report.
pub fn process_entries(
    writer: &Writer<'_>,
    crypto: &mut Crypto,
    me: DeviceAddress,
    cursor: u64,
    entries: &[QueueEntry],
    now_ms: u64,
) -> Result<Vec<Inbound>> {
    let mut reports = Vec::new();
    let mut expected = cursor + 1;
    let mut seqs = Vec::with_capacity(entries.len());
    // The group sessions are read only for a page that holds a group message.
    let mut keys: Option<GroupKeys> = None;
    for entry in entries {
        if entry.queue_seq > expected {
            reports.push(Inbound::Warning(format!(
                "queue sequence jumped from {} to {}: entries {}..{} were never delivered here",
                expected - 1,
                entry.queue_seq,
                expected,
                entry.queue_seq - 1
            )));
        }
        expected = expected.max(entry.queue_seq + 1);
        seqs.push(entry.queue_seq);
        let mut message = |message: &QueuedMessage| -> Result<()> {
            if message.group == 0 {
                return process_message(writer, crypto, me, message, now_ms, &mut reports);
            }
            let keys = match &mut keys {
                Some(keys) => keys,
                None => keys.insert(writer.load_group_keys(me)?),
            };
            let mut group = GroupInbound {
                writer,
                crypto,
                keys,
                me,
                now_ms,
                reports: &mut reports,
            };
            group.process(message, false)
        };
        match &entry.item {
            Some(queue_entry::Item::Message(queued)) => message(queued)?,
            // The messages of one chat a region committed together.
            Some(queue_entry::Item::Messages(batch)) => {
                batch.messages.iter().try_for_each(&mut message)?;
            }
            Some(queue_entry::Item::Receipt(receipt)) => {
                process_receipt(writer, me, receipt, &mut reports)?
            }
            Some(queue_entry::Item::Receipts(batch)) => {
                for receipt in &batch.receipts {
                    process_receipt(writer, me, receipt, &mut reports)?;
                }
            }
            None => reports.push(Inbound::Warning(format!(
                "queue entry {} is of a kind this build does not know",
                entry.queue_seq
            ))),
        }
    }
    if let Some(keys) = &mut keys {
        writer.save_group_keys(&keys.take_changes().map_err(ClientError::from)?)?;
    }
    writer.processed_queue_entries(&seqs)?;
    Ok(reports)
}

fn process_message(
    writer: &Writer<'_>,
    crypto: &mut Crypto,
    me: DeviceAddress,
    message: &QueuedMessage,
    now_ms: u64,
    reports: &mut Vec<Inbound>,
) -> Result<()> {
    let (Ok(sender), Ok(id)) = (
        message.sender.parse(),
        ClientMessageId::from_bytes(&message.client_message_id),
    ) else {
        reports.push(Inbound::Warning(
            "a queued message with a malformed sender or id".into(),
        ));
        return Ok(());
    };
    if !writer.mark_seen(sender, id, now_ms)? {
        return Ok(()); // A redelivery of something already processed.
    }
    let expected_identity = writer.identity_key(sender)?;
    let decrypted = crypto.decrypt(
        sender,
        expected_identity,
        message.message_type,
        &message.ciphertext,
    );
    let content = decrypted
        .as_ref()
        .map_err(|error| error.duplicate())
        .and_then(|decrypted| Content::from_bytes(&decrypted.plaintext));
    let outgoing = sender.account == me.account;
    let (decrypted, content) = match (decrypted, content) {
        (Ok(decrypted), Ok(content)) => (decrypted, content),
        (Ok(decrypted), Err(_)) if Content::is_unknown_kind(&decrypted.plaintext) => {
            // The Olm state moved: it commits with the page, the message is only skipped.
            reports.push(Inbound::Warning(format!(
                "message {id} from device {sender} is of a kind this build does not know \
                 (a newer Relay sent it); skipped"
            )));
            return Ok(());
        }
        (_, Err(error)) => {
            return record_undecryptable(
                writer,
                me,
                message,
                sender,
                id,
                &error.to_string(),
                reports,
            );
        }
        (Err(error), Ok(_)) => {
            return record_undecryptable(
                writer,
                me,
                message,
                sender,
                id,
                &error.to_string(),
                reports,
            );
        }
    };
    if let (None, Some(identity_key)) = (expected_identity, decrypted.identity_key) {
        writer.trust_device(sender, &identity_key, true)?;
    }
    let Some(body) = content.body else {
        return record_undecryptable(writer, me, message, sender, id, "empty content", reports);
    };
    if let body::Body::Bootstrap(bootstrap) = &body {
        // Like a sync message: only from another own device, in the account's chat with
        // itself; a copy for another own device is skipped.
        if !outgoing
            || ChatId::from_bytes(&message.chat).ok()
                != Some(ChatId::direct(me.account, me.account))
        {
            let reason = "a history bootstrap from another account or in another chat";
            return record_undecryptable(writer, me, message, sender, id, reason, reports);
        }
        if bootstrap.to_device == me.device.0
            && let Some(reference) = bootstrap.reference()
        {
            reports.push(Inbound::Bootstrap {
                from: sender,
                reference,
            });
        }
        return Ok(());
    }
    if matches!(body, body::Body::GroupKey(_) | body::Body::GroupText(_)) {
        // Group contents travel in group envelopes only (a key in a key share, a text in a
        // Megolm message); in a 1:1 envelope they are a sender's mistake or a replay.
        let reason = "a group content in a 1:1 envelope";
        return record_undecryptable(writer, me, message, sender, id, reason, reports);
    }
    if let body::Body::Sync(sync) = body {
        // Only from another own device, in the account's chat with itself; a copy for another
        // own device is skipped.
        if !outgoing
            || ChatId::from_bytes(&message.chat).ok()
                != Some(ChatId::direct(me.account, me.account))
        {
            let reason = "a sync message from another account or in another chat";
            return record_undecryptable(writer, me, message, sender, id, reason, reports);
        }
        if sync.to_device == me.device.0 {
            reports.push(Inbound::Sync {
                from: sender,
                bytes: sync.bytes,
            });
        }
        return Ok(());
    }
    let peer_in_content = Content {
        body: Some(body.clone()),
    }
    .peer_account()
    .unwrap_or(0);
    let peer = if outgoing {
        AccountId(peer_in_content)
    } else {
        sender.account
    };
    let chat = ChatId::from_bytes(&message.chat).ok();
    // With read receipts off, a device tells only its own devices what it read: in the
    // account's chat with itself.
    let own_read = outgoing
        && matches!(body, body::Body::Read(_))
        && chat == Some(ChatId::direct(me.account, me.account));
    if (chat != Some(ChatId::direct(me.account, peer)) && !own_read) || peer.0 == 0 {
        let reason = "the envelope's chat does not match its content";
        return record_undecryptable(writer, me, message, sender, id, reason, reports);
    }
    match body {
        body::Body::Text(text) => {
            writer.insert_message(&NewMessage {
                chat: ChatId::direct(me.account, peer),
                peer,
                outgoing,
                sender,
                client_message_id: id,
                sender_seq: message.sender_seq,
                chat_seq: Some(message.chat_seq),
                text: Some(&text.body),
                attachment: text
                    .attachment
                    .as_ref()
                    .map(Attachment::to_bytes)
                    .as_deref(),
                sent_at_ms: text.sent_at_ms,
                server_time_ms: Some(message.server_time_ms),
                tick: Tick::Sent,
                undecryptable: None,
            })?;
            reports.push(Inbound::Message {
                id,
                sender,
                peer,
                outgoing,
                chat_seq: message.chat_seq,
                time_ms: message.server_time_ms,
                sent_at_ms: text.sent_at_ms,
                text: text.body,
                attachment: text.attachment,
            });
        }
        body::Body::Edit(edit) => {
            push_change(
                reports,
                id,
                sender,
                peer,
                message,
                edit.target,
                edit.at,
                Change::Edit(edit.text),
            );
        }
        body::Body::Delete(delete) => {
            push_change(
                reports,
                id,
                sender,
                peer,
                message,
                delete.target,
                delete.at,
                Change::Delete,
            );
        }
        body::Body::React(react) => {
            push_change(
                reports,
                id,
                sender,
                peer,
                message,
                react.target,
                react.at,
                Change::React(react.reaction),
            );
        }
        body::Body::Sync(_)
        | body::Body::Bootstrap(_)
        | body::Body::GroupKey(_)
        | body::Body::GroupText(_) => {} // above
        body::Body::Read(read) if read.group != 0 => {
            // Messages of a group: another own device read them, or a member read this
            // device's (its receipt only moves a recipient row of a message sent from here).
            let ids: Vec<ClientMessageId> = read
                .client_message_ids
                .iter()
                .filter_map(|bytes| ClientMessageId::from_bytes(bytes).ok())
                .collect();
            if outgoing {
                writer.mark_group_read_locally(read.group, peer, &ids, read.read_at_ms)?;
            } else if writer.read_receipts()? {
                for id in ids {
                    if writer.record_group_receipt(
                        me,
                        id,
                        sender,
                        RecipientState::Read,
                        read.read_at_ms,
                    )? && writer.group_read_by_all(me, id)?
                        && writer.advance_group_tick(me, id, Tick::Read)?
                    {
                        reports.push(Inbound::GroupTick {
                            group: read.group,
                            id,
                            tick: Tick::Read,
                        });
                    }
                }
            }
        }
        body::Body::Read(read) => {
            let ids: Vec<ClientMessageId> = read
                .client_message_ids
                .iter()
                .filter_map(|bytes| ClientMessageId::from_bytes(bytes).ok())
                .collect();
            if outgoing {
                let count = writer.mark_read_locally(peer, &ids, read.read_at_ms)?;
                if count > 0 {
                    reports.push(Inbound::ReadElsewhere { peer, count });
                }
            } else if writer.read_receipts()? {
                for (_, id) in writer.mark_read_by_peer(peer, me, sender, &ids, read.read_at_ms)? {
                    reports.push(Inbound::Tick {
                        id,
                        peer,
                        tick: Tick::Read,
                    });
                }
            }
            // With read receipts off, the peer's read receipt is dropped, not kept: it stays
            // unseen when they are turned on again (the README's rule).
        }
    }
    Ok(())
}

/// Reports a change whose form [`Content::from_bytes`] checked (target and stamp present).
#[allow(clippy::too_many_arguments)]
fn push_change(
    reports: &mut Vec<Inbound>,
    id: ClientMessageId,
    sender: DeviceAddress,
    peer: AccountId,
    message: &QueuedMessage,
    target: Option<crate::content::MessageRef>,
    at: Option<crate::content::Stamp>,
    change: Change,
) {
    let (Some(target), Some(at)) = (target.as_ref().and_then(|t| t.parts()), at) else {
        reports.push(Inbound::Warning(format!(
            "a change {id} from device {sender} names no message"
        )));
        return;
    };
    reports.push(Inbound::Change {
        id,
        sender,
        peer,
        target,
        change,
        at: at.hlc(sender),
        time_ms: message.server_time_ms,
    });
}

fn record_undecryptable(
    writer: &Writer<'_>,
    me: DeviceAddress,
    message: &QueuedMessage,
    sender: DeviceAddress,
    id: ClientMessageId,
    reason: &str,
    reports: &mut Vec<Inbound>,
) -> Result<()> {
    // Filed under the sender's chat; for another own device the peer is unknown, so under our own.
    let peer = sender.account;
    writer.insert_message(&NewMessage {
        chat: ChatId::from_bytes(&message.chat)
            .unwrap_or_else(|_| ChatId::direct(me.account, peer)),
        peer,
        outgoing: sender.account == me.account,
        sender,
        client_message_id: id,
        sender_seq: message.sender_seq,
        chat_seq: Some(message.chat_seq),
        text: None,
        attachment: None,
        sent_at_ms: message.server_time_ms,
        server_time_ms: Some(message.server_time_ms),
        tick: Tick::Sent,
        undecryptable: Some(reason),
    })?;
    reports.push(Inbound::Undecryptable {
        id,
        sender,
        time_ms: message.server_time_ms,
        reason: reason.into(),
    });
    Ok(())
}

fn process_receipt(
    writer: &Writer<'_>,
    me: DeviceAddress,
    receipt: &QueuedReceipt,
    reports: &mut Vec<Inbound>,
) -> Result<()> {
    let (Ok(sender), Ok(recipient), Ok(id)) = (
        receipt.sender.parse(),
        receipt.recipient.parse(),
        ClientMessageId::from_bytes(&receipt.client_message_id),
    ) else {
        reports.push(Inbound::Warning(
            "a receipt with a malformed device or id".into(),
        ));
        return Ok(());
    };
    let state = match ReceiptState::try_from(receipt.state) {
        Ok(ReceiptState::Delivered) => RecipientState::Delivered,
        Ok(ReceiptState::Expired) => RecipientState::Expired,
        Ok(ReceiptState::Unspecified) | Err(_) => {
            reports.push(Inbound::Warning(format!(
                "a receipt with unknown state {}",
                receipt.state
            )));
            return Ok(());
        }
    };
    if sender == me
        && let Some(message) = writer.group_message(sender, id)?
    {
        let moved = writer.record_group_receipt(me, id, recipient, state, receipt.at_ms)?;
        if moved
            && writer.group_delivered_to_all(me, id)?
            && writer.advance_group_tick(me, id, Tick::Delivered)?
        {
            reports.push(Inbound::GroupTick {
                group: message.group,
                id,
                tick: Tick::Delivered,
            });
        }
        return Ok(());
    }
    // Receipts for envelopes without a message row (read receipts, key shares) need no record.
    let Some(peer) = writer.message_peer(sender, id)? else {
        return Ok(());
    };
    let moved = writer.record_receipt(sender, id, recipient, state, receipt.at_ms, me)?;
    if !moved || recipient.account != peer {
        return Ok(()); // Nothing new, or another own device got its copy: no tick for the peer.
    }
    match state {
        RecipientState::Delivered
            if writer.delivered_to_every_peer_device(sender, id, peer)?
                && writer.advance_tick(sender, id, Tick::Delivered)? =>
        {
            reports.push(Inbound::Tick {
                id,
                peer,
                tick: Tick::Delivered,
            });
        }
        RecipientState::Expired => {
            writer.add_expired_device(sender, id)?;
            reports.push(Inbound::Expired {
                id,
                peer,
                device: recipient,
            });
            // The expired copy no longer holds the tick back.
            if writer.delivered_to_every_peer_device(sender, id, peer)?
                && writer.advance_tick(sender, id, Tick::Delivered)?
            {
                reports.push(Inbound::Tick {
                    id,
                    peer,
                    tick: Tick::Delivered,
                });
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;
