//! A page's group entries (see the parent module): key shares accepted into the device's
//! group sessions, group messages decrypted with them, and messages whose key has not arrived
//! kept until it does.

use prost::Message as _;
use relay_proto::wire::QueuedMessage;
use relay_proto::{ChatId, ClientMessageId, DeviceAddress};

use super::Inbound;
use crate::content::{Content, body};
use crate::crypto::Crypto;
use crate::error::{ClientError, Result};
use crate::group_keys::{GroupKeyError, GroupKeys};
use crate::limits::GROUP_WAITING_MESSAGES_MAX;
use crate::media::Attachment;
use crate::store::{NewGroupMessage, Tick, Writer};

/// One page's group messages: key shares accepted into the device's group sessions, group
/// messages decrypted with them, and messages whose key has not arrived kept until it does.
pub(super) struct GroupInbound<'a, 'w> {
    pub(super) writer: &'a Writer<'w>,
    pub(super) crypto: &'a mut Crypto,
    pub(super) keys: &'a mut GroupKeys,
    pub(super) me: DeviceAddress,
    pub(super) now_ms: u64,
    pub(super) reports: &'a mut Vec<Inbound>,
}

impl GroupInbound<'_, '_> {
    /// Processes a group envelope's entry for this device; `again` when it comes back from
    /// waiting for its key (it was deduplicated when it first arrived).
    pub(super) fn process(&mut self, message: &QueuedMessage, again: bool) -> Result<()> {
        let (Ok(sender), Ok(id)) = (
            message.sender.parse(),
            ClientMessageId::from_bytes(&message.client_message_id),
        ) else {
            self.reports.push(Inbound::Warning(
                "a queued group message with a malformed sender or id".into(),
            ));
            return Ok(());
        };
        if !again && !self.writer.mark_seen(sender, id, self.now_ms)? {
            return Ok(()); // A redelivery of something already processed.
        }
        let group = message.group;
        if ChatId::from_bytes(&message.chat).ok()
            != Some(ChatId::group(relay_proto::GroupId(group)))
        {
            let reason = "a group message outside its group's chat";
            return self.undecryptable(message, sender, id, reason);
        }
        match relay_proto::wire::EnvelopeKind::try_from(message.kind) {
            Ok(relay_proto::wire::EnvelopeKind::GroupKeyShare) => {
                self.key_share(message, sender, id)
            }
            Ok(relay_proto::wire::EnvelopeKind::Message) => self.group_text(message, sender, id),
            Err(_) => {
                self.reports.push(Inbound::Warning(format!(
                    "group envelope {id} from device {sender} is of a kind this build does not \
                     know (a newer Relay sent it); skipped"
                )));
                Ok(())
            }
        }
    }

    /// A key share: the Olm body carries the sender's session key, which decrypts the messages
    /// that waited for it.
    fn key_share(
        &mut self,
        message: &QueuedMessage,
        sender: DeviceAddress,
        id: ClientMessageId,
    ) -> Result<()> {
        let expected_identity = self.writer.identity_key(sender)?;
        let decrypted = match self.crypto.decrypt(
            sender,
            expected_identity,
            message.message_type,
            &message.ciphertext,
        ) {
            Ok(decrypted) => decrypted,
            Err(error) => {
                self.reports.push(Inbound::Warning(format!(
                    "a key of group {} from device {sender} did not decrypt: {error}",
                    message.group
                )));
                return Ok(());
            }
        };
        if let (None, Some(identity_key)) = (expected_identity, decrypted.identity_key) {
            self.writer.trust_device(sender, &identity_key, true)?;
        }
        let key = match Content::from_bytes(&decrypted.plaintext).map(|content| content.body) {
            Ok(Some(body::Body::GroupKey(key)))
                if key.group == message.group && key.session_id == message.group_session_id =>
            {
                key
            }
            _ => {
                self.reports.push(Inbound::Warning(format!(
                    "key share {id} from device {sender} does not carry the key of its group's \
                     session"
                )));
                return Ok(());
            }
        };
        if let Err(error) = self.keys.accept_key(sender, &key) {
            self.reports.push(Inbound::Warning(format!(
                "a key of group {} from device {sender} was refused: {error}",
                key.group
            )));
            return Ok(());
        }
        let mut waiting = self
            .writer
            .take_group_waiting(&key.session_id)?
            .iter()
            .map(|bytes| {
                QueuedMessage::decode(bytes.as_slice()).map_err(|error| {
                    ClientError::Corrupt(format!(
                        "a stored group message waiting for its key: {error}"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // In the chat's order, as they would have been shown had the key come first (those
        // of one page arrived at the same moment, and the store orders them by arrival).
        waiting.sort_by_key(|message| message.chat_seq);
        for message in &waiting {
            self.process(message, true)?;
        }
        Ok(())
    }

    /// A group message: decrypted with the sender's session, or kept until its key arrives.
    fn group_text(
        &mut self,
        message: &QueuedMessage,
        sender: DeviceAddress,
        id: ClientMessageId,
    ) -> Result<()> {
        let group = message.group;
        let plaintext = match self.keys.decrypt(
            group,
            sender,
            &message.group_session_id,
            &message.group_ciphertext,
        ) {
            Ok(decrypted) => decrypted.plaintext,
            Err(GroupKeyError::UnknownSession { .. }) => {
                let (_, evicted) = self.writer.add_group_waiting(
                    sender,
                    id,
                    &message.group_session_id,
                    &message.encode_to_vec(),
                    self.now_ms,
                    GROUP_WAITING_MESSAGES_MAX,
                )?;
                if let Some(bytes) = evicted
                    && let Ok(oldest) = QueuedMessage::decode(bytes.as_slice())
                    && let (Ok(sender), Ok(id)) = (
                        oldest.sender.parse(),
                        ClientMessageId::from_bytes(&oldest.client_message_id),
                    )
                {
                    let reason = format!(
                        "its session's key never arrived while {GROUP_WAITING_MESSAGES_MAX} \
                         newer group messages waited"
                    );
                    self.undecryptable(&oldest, sender, id, &reason)?;
                }
                return Ok(());
            }
            Err(error) => return self.undecryptable(message, sender, id, &error.to_string()),
        };
        let text = match Content::from_bytes(&plaintext).map(|content| content.body) {
            Ok(Some(body::Body::GroupText(text))) if text.group == group => text,
            Ok(_) => {
                let reason = "a group message that is not a text of its group";
                return self.undecryptable(message, sender, id, reason);
            }
            Err(error) => return self.undecryptable(message, sender, id, &error.to_string()),
        };
        let outgoing = sender.account == self.me.account;
        self.writer.insert_group_message(&NewGroupMessage {
            group,
            outgoing,
            sender,
            client_message_id: id,
            sender_seq: Some(message.sender_seq),
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
        self.reports.push(Inbound::GroupMessage {
            group,
            id,
            sender,
            outgoing,
            chat_seq: message.chat_seq,
            time_ms: message.server_time_ms,
            sent_at_ms: text.sent_at_ms,
            text: text.body,
            attachment: text.attachment,
        });
        Ok(())
    }

    fn undecryptable(
        &mut self,
        message: &QueuedMessage,
        sender: DeviceAddress,
        id: ClientMessageId,
        reason: &str,
    ) -> Result<()> {
        self.writer.insert_group_message(&NewGroupMessage {
            group: message.group,
            outgoing: sender.account == self.me.account,
            sender,
            client_message_id: id,
            sender_seq: Some(message.sender_seq),
            chat_seq: Some(message.chat_seq),
            text: None,
            attachment: None,
            sent_at_ms: message.server_time_ms,
            server_time_ms: Some(message.server_time_ms),
            tick: Tick::Sent,
            undecryptable: Some(reason),
        })?;
        self.reports.push(Inbound::Undecryptable {
            id,
            sender,
            time_ms: message.server_time_ms,
            reason: reason.into(),
        });
        Ok(())
    }
}
