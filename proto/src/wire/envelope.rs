//! Envelopes: what a device sends (one ciphertext per recipient device, or a group's Megolm
//! message once), its kinds, and the checks every envelope passes before a region stores it.

use std::collections::BTreeSet;

use super::DeviceAddr;
use crate::ProtoError;
use crate::ids::{AccountId, ChatId, ClientMessageId, DeviceAddress, GroupId};
use crate::limits::{
    CIPHERTEXT_BYTES_MAX, ENVELOPE_BYTES_MAX, ENVELOPE_RECIPIENT_DEVICES_MAX,
    GROUP_CIPHERTEXT_BYTES_MAX, GROUP_ENVELOPE_RECIPIENT_DEVICES_MAX, GROUP_MEMBERS_MAX,
    GROUP_SESSION_ID_BYTES_MAX,
};

/// [`DeviceCiphertext::message_type`] of an Olm pre-key message.
pub const MESSAGE_TYPE_OLM_PRE_KEY: u32 = 0;

/// [`DeviceCiphertext::message_type`] of an Olm normal message.
pub const MESSAGE_TYPE_OLM_NORMAL: u32 = 1;

/// [`DeviceCiphertext::message_type`] of a group message's entry for a device (with an empty
/// body): the sender states that this device holds the sender's current Megolm session, so it
/// can decrypt the envelope's `group_ciphertext`.
pub const MESSAGE_TYPE_HOLDS_GROUP_SESSION: u32 = 2;

/// The ciphertext for one recipient device.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DeviceCiphertext {
    /// The recipient device.
    #[prost(message, required, tag = "1")]
    pub recipient: DeviceAddr,
    /// Olm message type ([`MESSAGE_TYPE_OLM_PRE_KEY`], [`MESSAGE_TYPE_OLM_NORMAL`]), or in a
    /// group message [`MESSAGE_TYPE_HOLDS_GROUP_SESSION`].
    #[prost(uint32, tag = "2")]
    pub message_type: u32,
    /// The opaque ciphertext.
    #[prost(bytes = "vec", tag = "3")]
    pub body: Vec<u8>,
}

/// What an envelope carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum EnvelopeKind {
    /// A message (the wire default): 1:1, with an Olm ciphertext per device, or to a group,
    /// with one Megolm `group_ciphertext` and an empty entry per device holding the session.
    Message = 0,
    /// (Group envelopes only) the sender's Megolm session key, in an Olm ciphertext for each of
    /// some of the group's current member devices. A sender shares a new session in as many key
    /// shares as the envelope size needs, in the group's chat, before the first message that
    /// uses it (the same sender device and consecutive `sender_seq`s), so a device usually
    /// receives a key before the message needing it; a message rebuilt for a changed
    /// membership under its old number has its new key shares after it, and the receiving
    /// device keeps it until the key arrives. A key share lists every member account, as a
    /// message does, so every region homing a member stores each `sender_seq` of the chat.
    GroupKeyShare = 1,
}

/// What a device sends: readable routing metadata plus opaque ciphertexts, nothing else.
///
/// A **1:1 envelope** (`group` 0) carries an Olm ciphertext (type 0 or 1, non-empty) for every
/// current device of every listed account but the sending device, and no group field.
///
/// A **group envelope** (`group` set, `chat` = [`ChatId::group`] of it) names the membership
/// version the sender encrypted for. As a message, it lists the group's members in
/// `recipient_accounts` (the sender's own account too when it has other devices), an entry of
/// type [`MESSAGE_TYPE_HOLDS_GROUP_SESSION`] with an empty body for every current device of
/// every member but the sending device (the sender states that exactly these devices hold its
/// current Megolm session) and the Megolm message once in `group_ciphertext`. As a key share
/// ([`EnvelopeKind::GroupKeyShare`]), Olm ciphertexts for some of those devices and no group
/// ciphertext. Regions refuse a message whose members or devices are not the current ones
/// (`MismatchedDevices`, or `GroupChanged` when the version is older than theirs).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Envelope {
    /// The chat (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub chat: Vec<u8>,
    /// The sending device.
    #[prost(message, required, tag = "2")]
    pub sender: DeviceAddr,
    /// The sender's idempotency key for this envelope (16 bytes).
    #[prost(bytes = "vec", tag = "3")]
    pub client_message_id: Vec<u8>,
    /// The sender device's counter in this chat, from 1.
    #[prost(uint64, tag = "4")]
    pub sender_seq: u64,
    /// Every account whose devices must be covered (the peer and the sender's own account).
    #[prost(uint64, repeated, tag = "5")]
    pub recipient_accounts: Vec<u64>,
    /// One ciphertext per recipient device.
    #[prost(message, repeated, tag = "6")]
    pub ciphertexts: Vec<DeviceCiphertext>,
    /// The sender device's own counter over all its envelopes (every chat), from 1; 0 from a
    /// device that does not count. Its home region keeps the highest, so that a device whose
    /// state went back (a restored data directory) is caught when it authenticates.
    #[prost(uint64, tag = "7")]
    pub device_seq: u64,
    /// The group this envelope is sent to; 0: not a group envelope.
    #[prost(uint64, tag = "8")]
    pub group: u64,
    /// (Group envelopes) the membership version the sender encrypted for (a `GroupInfo`'s
    /// `version`).
    #[prost(uint64, tag = "9")]
    pub group_version: u64,
    /// What the envelope carries (a message unless set).
    #[prost(enumeration = "EnvelopeKind", tag = "10")]
    pub kind: i32,
    /// (Group messages) the Megolm message, once for every recipient device (1 to
    /// `GROUP_CIPHERTEXT_BYTES_MAX` bytes).
    #[prost(bytes = "vec", tag = "11")]
    pub group_ciphertext: Vec<u8>,
    /// (Group envelopes) the id of the sender's Megolm session the message is encrypted with,
    /// or whose key a key share carries (1 to `GROUP_SESSION_ID_BYTES_MAX` bytes).
    #[prost(string, tag = "12")]
    pub group_session_id: String,
    /// (Group envelopes) the sender's previous envelope in this chat that is not settled yet
    /// (not yet stored by every region it went to), which a region must hold before this one;
    /// 0: none, every earlier number of the sender is settled (stored wherever it had to go, or
    /// given up). A group's regions change with its members, so a region may rightly lack the
    /// sender's earlier numbers: they went to the regions of the members then. Below
    /// `sender_seq`; 0 in 1:1 envelopes, whose numbers every region gets.
    #[prost(uint64, tag = "13")]
    pub group_prev_seq: u64,
}

/// The group fields of a checked group envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedGroup {
    /// The group.
    pub group: GroupId,
    /// The membership version the sender encrypted for (from 1).
    pub version: u64,
    /// A message or a key share.
    pub kind: EnvelopeKind,
    /// The sender's previous unsettled number in the chat, 0: none (see
    /// [`Envelope::group_prev_seq`]).
    pub prev_seq: u64,
}

/// An envelope whose ids and bounds were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEnvelope {
    /// The chat.
    pub chat: ChatId,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The idempotency key.
    pub client_message_id: ClientMessageId,
    /// The sender's counter in this chat.
    pub sender_seq: u64,
    /// Accounts that must be covered, sorted and unique.
    pub recipient_accounts: Vec<AccountId>,
    /// Recipient devices, sorted and unique.
    pub recipient_devices: Vec<DeviceAddress>,
    /// The sender device's counter over all its envelopes (0: not counted).
    pub device_seq: u64,
    /// The group fields of a group envelope; `None` for a 1:1 envelope.
    pub group: Option<ParsedGroup>,
}

impl Envelope {
    /// Checks sizes, ids and coverage rules a server can check without the directory, and the
    /// form of each kind (see [`Envelope`]): a 1:1 envelope has no group field and Olm bodies;
    /// a group envelope is in its group's chat, and a message has empty entries of type
    /// [`MESSAGE_TYPE_HOLDS_GROUP_SESSION`] and a group ciphertext, a key share Olm bodies and
    /// none.
    pub fn parse(&self) -> Result<ParsedEnvelope, ProtoError> {
        use prost::Message;
        let encoded = self.encoded_len();
        if encoded > ENVELOPE_BYTES_MAX {
            return Err(ProtoError::new(
                crate::ErrorCode::TooLarge,
                format!("envelope of {encoded} bytes exceeds {ENVELOPE_BYTES_MAX}"),
            ));
        }
        if self.ciphertexts.is_empty() {
            return Err(ProtoError::invalid("envelope has no recipient device"));
        }
        let chat = ChatId::from_bytes(&self.chat)?;
        let group = self.parse_group(chat)?;
        let devices_max = if group.is_some() {
            GROUP_ENVELOPE_RECIPIENT_DEVICES_MAX
        } else {
            ENVELOPE_RECIPIENT_DEVICES_MAX
        };
        if self.ciphertexts.len() > devices_max {
            return Err(ProtoError::new(
                crate::ErrorCode::TooLarge,
                format!(
                    "{} recipient devices is more than an envelope's {devices_max}",
                    self.ciphertexts.len()
                ),
            ));
        }
        if self.sender_seq == 0 {
            return Err(ProtoError::invalid("sender_seq starts at 1"));
        }
        let sender = self.sender.parse()?;
        let accounts: BTreeSet<AccountId> = self
            .recipient_accounts
            .iter()
            .map(|&a| AccountId(a))
            .collect();
        if accounts.len() != self.recipient_accounts.len() || accounts.contains(&AccountId(0)) {
            return Err(ProtoError::invalid(
                "recipient accounts must be unique and non-zero",
            ));
        }
        if group.is_some() && accounts.len() > GROUP_MEMBERS_MAX {
            return Err(ProtoError::new(
                crate::ErrorCode::TooLarge,
                format!(
                    "{} recipient accounts is more than a group's {GROUP_MEMBERS_MAX} members",
                    accounts.len()
                ),
            ));
        }
        let holds_session = matches!(
            group,
            Some(ParsedGroup {
                kind: EnvelopeKind::Message,
                ..
            })
        );
        let mut devices = BTreeSet::new();
        for ciphertext in &self.ciphertexts {
            let device = ciphertext.recipient.parse()?;
            if device == sender {
                return Err(ProtoError::invalid(
                    "an envelope is not addressed to its sender",
                ));
            }
            if !accounts.contains(&device.account) {
                return Err(ProtoError::invalid("ciphertext for an account not listed"));
            }
            if holds_session {
                if ciphertext.message_type != MESSAGE_TYPE_HOLDS_GROUP_SESSION
                    || !ciphertext.body.is_empty()
                {
                    return Err(ProtoError::invalid(format!(
                        "a group message's entry for device {device} must be empty and of type \
                         {MESSAGE_TYPE_HOLDS_GROUP_SESSION} (holds the sender's session); keys \
                         travel in key shares"
                    )));
                }
            } else {
                if ciphertext.message_type == MESSAGE_TYPE_HOLDS_GROUP_SESSION {
                    return Err(ProtoError::invalid(format!(
                        "message type {MESSAGE_TYPE_HOLDS_GROUP_SESSION} (holds the sender's \
                         session) belongs in group messages only"
                    )));
                }
                if group.is_some()
                    && ciphertext.message_type != MESSAGE_TYPE_OLM_PRE_KEY
                    && ciphertext.message_type != MESSAGE_TYPE_OLM_NORMAL
                {
                    return Err(ProtoError::invalid(format!(
                        "a key share's entry for device {device} must be an Olm message (type \
                         {MESSAGE_TYPE_OLM_PRE_KEY} or {MESSAGE_TYPE_OLM_NORMAL})"
                    )));
                }
                if ciphertext.body.is_empty() {
                    return Err(ProtoError::invalid(format!(
                        "the ciphertext for device {device} is empty"
                    )));
                }
                if ciphertext.body.len() > CIPHERTEXT_BYTES_MAX {
                    return Err(ProtoError::new(
                        crate::ErrorCode::TooLarge,
                        format!(
                            "the ciphertext for device {device} is larger than \
                             {CIPHERTEXT_BYTES_MAX} bytes"
                        ),
                    ));
                }
            }
            if !devices.insert(device) {
                return Err(ProtoError::invalid("two ciphertexts for one device"));
            }
        }
        Ok(ParsedEnvelope {
            chat,
            sender,
            client_message_id: ClientMessageId::from_bytes(&self.client_message_id)?,
            sender_seq: self.sender_seq,
            recipient_accounts: accounts.into_iter().collect(),
            recipient_devices: devices.into_iter().collect(),
            device_seq: self.device_seq,
            group,
        })
    }

    /// The group fields, checked against the kind and the chat (`None`: a 1:1 envelope, which
    /// must carry none).
    fn parse_group(&self, chat: ChatId) -> Result<Option<ParsedGroup>, ProtoError> {
        let Ok(kind) = EnvelopeKind::try_from(self.kind) else {
            return Err(ProtoError::invalid(format!(
                "envelope kind {} is not known here (the client is newer)",
                self.kind
            )));
        };
        if self.group == 0 {
            if self.group_version != 0
                || kind != EnvelopeKind::Message
                || !self.group_ciphertext.is_empty()
                || !self.group_session_id.is_empty()
                || self.group_prev_seq != 0
            {
                return Err(ProtoError::invalid(
                    "an envelope that names no group carries no group version, kind, \
                     ciphertext, session or previous number",
                ));
            }
            return Ok(None);
        }
        let group = GroupId(self.group);
        if chat != ChatId::group(group) {
            return Err(ProtoError::invalid(format!(
                "a group envelope for group {} must be in that group's chat, not {chat}",
                self.group
            )));
        }
        if self.group_version == 0 {
            return Err(ProtoError::invalid("group versions start at 1"));
        }
        if self.group_prev_seq >= self.sender_seq {
            return Err(ProtoError::invalid(format!(
                "a previous number {} not below the envelope's own number {}",
                self.group_prev_seq, self.sender_seq
            )));
        }
        if self.group_session_id.is_empty()
            || self.group_session_id.len() > GROUP_SESSION_ID_BYTES_MAX
        {
            return Err(ProtoError::invalid(format!(
                "a group envelope names its Megolm session in 1 to {GROUP_SESSION_ID_BYTES_MAX} \
                 bytes"
            )));
        }
        match kind {
            EnvelopeKind::Message => {
                if self.group_ciphertext.is_empty() {
                    return Err(ProtoError::invalid(
                        "a group message carries its group ciphertext",
                    ));
                }
                if self.group_ciphertext.len() > GROUP_CIPHERTEXT_BYTES_MAX {
                    return Err(ProtoError::new(
                        crate::ErrorCode::TooLarge,
                        format!(
                            "a group ciphertext of {} bytes is larger than \
                             {GROUP_CIPHERTEXT_BYTES_MAX}",
                            self.group_ciphertext.len()
                        ),
                    ));
                }
            }
            EnvelopeKind::GroupKeyShare => {
                if !self.group_ciphertext.is_empty() {
                    return Err(ProtoError::invalid(
                        "a group key share carries no group ciphertext",
                    ));
                }
            }
        }
        Ok(Some(ParsedGroup {
            group,
            version: self.group_version,
            kind,
            prev_seq: self.group_prev_seq,
        }))
    }
}
