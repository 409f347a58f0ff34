//! Protobuf messages (prost) for client↔edge, edge↔region and region↔region.
//!
//! Tags are never reused: a retired field keeps its number reserved in a comment. Every request
//! travels on its own QUIC bidirectional stream as one frame, answered by one frame; the control
//! stream of a device connection (opened with [`Hello`]) carries authentication and then
//! [`ServerPush`] frames, and an edge's subscription stream to a region carries [`Subscribe`]
//! requests one way (devices connected, presence watches, typing indicators) and pushes the
//! other (queue hints, presence updates, typing notices; see [`presence`]).

mod block;
mod entry_run;
mod presence;
mod push;

pub use block::{BlockAction, BlockedAccounts, SetBlock};
pub use entry_run::EntryRun;
pub use push::{PushAction, PushState, SetPush, WebPushSubscription};

pub use presence::{
    PresenceInfo, PresencePrivacy, PresenceState, PresenceUpdate, PresenceVisibility,
    PresenceWatchFrom, SetPresencePrivacy, TypingForward, TypingNotice, TypingSignal,
    WatchPresence,
};

use std::collections::BTreeSet;

use crate::ProtoError;
use crate::ids::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId, GroupId};
use crate::limits::{
    ACCOUNT_NAME_BYTES_MAX, CIPHERTEXT_BYTES_MAX, ENVELOPE_BYTES_MAX,
    ENVELOPE_RECIPIENT_DEVICES_MAX, GROUP_CIPHERTEXT_BYTES_MAX,
    GROUP_ENVELOPE_RECIPIENT_DEVICES_MAX, GROUP_MEMBERS_MAX, GROUP_NAME_BYTES_MAX,
    GROUP_REQUEST_ID_BYTES, GROUP_SESSION_ID_BYTES_MAX, GROUPS_PER_PAGE_MAX,
};

// ---------------------------------------------------------------------------------------------
// Shared pieces

/// A typed error answer.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ErrorReply {
    /// An [`crate::ErrorCode`] number.
    #[prost(uint32, tag = "1")]
    pub code: u32,
    /// What went wrong, for people.
    #[prost(string, tag = "2")]
    pub message: String,
    /// How long to wait before retrying, in milliseconds (0: no hint).
    #[prost(uint64, tag = "3")]
    pub retry_after_ms: u64,
}

/// A device on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct DeviceAddr {
    /// The account.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// The device number within the account (from 1).
    #[prost(uint32, tag = "2")]
    pub device: u32,
}

impl From<DeviceAddress> for DeviceAddr {
    fn from(address: DeviceAddress) -> Self {
        DeviceAddr {
            account: address.account.0,
            device: address.device.0,
        }
    }
}

impl DeviceAddr {
    /// The typed address; zero account or device numbers are invalid.
    pub fn parse(self) -> Result<DeviceAddress, ProtoError> {
        if self.account == 0 || self.device == 0 {
            return Err(ProtoError::invalid(
                "device address with zero account or device",
            ));
        }
        Ok(DeviceAddress {
            account: AccountId(self.account),
            device: DeviceId(self.device),
        })
    }
}

/// A Curve25519 public key a device publishes so that others can start Olm sessions with it:
/// a one-time key (claimed once), or its fallback key (`fallback`, handed out when the one-time
/// keys ran out, reusable, and signed by the device's Ed25519 key over
/// [`fallback_key_signing_payload`]).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct OneTimeKey {
    /// The key's id as the device's Olm account names it.
    #[prost(string, tag = "1")]
    pub key_id: String,
    /// The 32-byte public key.
    #[prost(bytes = "vec", tag = "2")]
    pub public_key: Vec<u8>,
    /// The device's Ed25519 signature of [`fallback_key_signing_payload`] (fallback keys; empty
    /// for one-time keys).
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
    /// Whether this is the device's fallback key rather than a one-time key.
    #[prost(bool, tag = "4")]
    pub fallback: bool,
}

/// The message a device signs to vouch for its fallback key: the key cannot be swapped by a
/// server or moved to another device without the claimer noticing.
pub fn fallback_key_signing_payload(
    identity_key: &[u8],
    key_id: &str,
    public_key: &[u8],
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(24 + identity_key.len() + public_key.len() + key_id.len());
    payload.extend_from_slice(b"relay-fallback-key-v1");
    // The two keys have fixed lengths (checked by every receiver before verifying), so the
    // variable-length id last keeps the concatenation unambiguous.
    payload.extend_from_slice(identity_key);
    payload.extend_from_slice(public_key);
    payload.extend_from_slice(key_id.as_bytes());
    payload
}

/// What a region knows of a device's fallback key, reported so that the device can replace it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum FallbackKeyState {
    /// Not reported (an older region, or an answer that does not carry it).
    Unknown = 0,
    /// The device has no fallback key: upload one.
    Missing = 1,
    /// The fallback key is set and nobody has been handed it yet.
    Unused = 2,
    /// The fallback key has been handed out at least once: replace it when it is safe to.
    Used = 3,
}

/// The public keys of one device, with one claimed one-time key when one was left.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DeviceKeys {
    /// The device number within its account.
    #[prost(uint32, tag = "1")]
    pub device: u32,
    /// Curve25519 identity key (32 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub identity_key: Vec<u8>,
    /// Ed25519 signing key (32 bytes).
    #[prost(bytes = "vec", tag = "3")]
    pub signing_key: Vec<u8>,
    /// A one-time key claimed for the asker, or (flagged `fallback`, signed) the device's
    /// fallback key when its one-time keys ran out; absent when it has neither.
    #[prost(message, optional, tag = "4")]
    pub one_time_key: Option<OneTimeKey>,
}

/// An account as the directory knows it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AccountInfo {
    /// The account id.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// The account's unique name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// The account's home region.
    #[prost(uint32, tag = "3")]
    pub region: u32,
    /// The home-region epoch (bumped on home moves).
    #[prost(uint64, tag = "4")]
    pub epoch: u64,
}

/// The current devices of one account.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AccountDevices {
    /// The account id.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// Its current device numbers.
    #[prost(uint32, repeated, tag = "2")]
    pub devices: Vec<u32>,
}

// ---------------------------------------------------------------------------------------------
// Envelopes

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

/// Checks an account name: 1..=64 bytes of lowercase ASCII letters, digits, `_`, `-` and `.`.
pub fn validate_account_name(name: &str) -> Result<(), ProtoError> {
    let ok = !name.is_empty()
        && name.len() <= ACCOUNT_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ProtoError::invalid(format!(
            "account names are 1 to {ACCOUNT_NAME_BYTES_MAX} characters of a-z, 0-9, '_', '-', '.'"
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Queue entries

/// Server-visible receipt states. `read` is never here: it travels end to end encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ReceiptState {
    /// Not a state (wire default).
    Unspecified = 0,
    /// The recipient device acknowledged the entry.
    Delivered = 2,
    /// The entry expired undelivered after the retention window.
    Expired = 4,
}

/// A message waiting in a device queue.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueuedMessage {
    /// The chat.
    #[prost(bytes = "vec", tag = "1")]
    pub chat: Vec<u8>,
    /// The region's gapless sequence number of the envelope in the chat.
    #[prost(uint64, tag = "2")]
    pub chat_seq: u64,
    /// The sending device.
    #[prost(message, required, tag = "3")]
    pub sender: DeviceAddr,
    /// The sender's idempotency key.
    #[prost(bytes = "vec", tag = "4")]
    pub client_message_id: Vec<u8>,
    /// The sender's counter in this chat.
    #[prost(uint64, tag = "5")]
    pub sender_seq: u64,
    /// When the region committed the envelope (ms since the Unix epoch).
    #[prost(uint64, tag = "6")]
    pub server_time_ms: u64,
    /// Olm message type.
    #[prost(uint32, tag = "7")]
    pub message_type: u32,
    /// This device's ciphertext (empty in a group message: the device decrypts
    /// `group_ciphertext` with the sender's session, which a key share brought before).
    #[prost(bytes = "vec", tag = "8")]
    pub ciphertext: Vec<u8>,
    /// The group the envelope was sent to; 0: a 1:1 envelope.
    #[prost(uint64, tag = "9")]
    pub group: u64,
    /// What the envelope carries: a message or (group envelopes) a key share for this device.
    #[prost(enumeration = "EnvelopeKind", tag = "10")]
    pub kind: i32,
    /// (Group messages) the Megolm message, the same for every recipient device.
    #[prost(bytes = "vec", tag = "11")]
    pub group_ciphertext: Vec<u8>,
    /// (Group envelopes) the sender's Megolm session the message uses or the key share carries.
    #[prost(string, tag = "12")]
    pub group_session_id: String,
}

/// A server-visible receipt for a message this device's account sent.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueuedReceipt {
    /// The chat of the message.
    #[prost(bytes = "vec", tag = "1")]
    pub chat: Vec<u8>,
    /// The client message id of the message.
    #[prost(bytes = "vec", tag = "2")]
    pub client_message_id: Vec<u8>,
    /// The device the receipt is about.
    #[prost(message, required, tag = "3")]
    pub recipient: DeviceAddr,
    /// The new state.
    #[prost(enumeration = "ReceiptState", tag = "4")]
    pub state: i32,
    /// When the state was reached (ms since the Unix epoch).
    #[prost(uint64, tag = "5")]
    pub at_ms: u64,
    /// The device that sent the message.
    #[prost(message, required, tag = "6")]
    pub sender: DeviceAddr,
}

/// Receipts queued together as one entry: those a region applies in one transaction (a batch
/// of its outbox, or a batch forwarded by another region) for one device, in the order they
/// were applied. A group message's members acknowledge it within moments of each other, so the
/// sender's devices get their receipts in a few entries instead of one per member device.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueuedReceipts {
    /// The receipts (at most [`crate::limits::RECEIPTS_PER_QUEUE_ENTRY_MAX`]).
    #[prost(message, repeated, tag = "1")]
    pub receipts: Vec<QueuedReceipt>,
}

/// Messages of one chat queued together as one entry: the envelopes a region committed in one
/// transaction (a chat's lane commits the envelopes waiting in it together), for one device, in
/// chat order. A group's fan-out then writes one entry per member device per commit, and each
/// member fetches and acknowledges them as one.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueuedMessages {
    /// The messages (at least two, at most [`crate::limits::MESSAGES_PER_QUEUE_ENTRY_MAX`]).
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<QueuedMessage>,
}

/// One entry of a device queue.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueueEntry {
    /// The entry's gapless number in its device's queue, from 1.
    #[prost(uint64, tag = "1")]
    pub queue_seq: u64,
    /// What the entry holds.
    #[prost(oneof = "queue_entry::Item", tags = "2, 3, 4, 5")]
    pub item: Option<queue_entry::Item>,
}

/// The variants of [`QueueEntry`].
pub mod queue_entry {
    /// What a queue entry holds.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Item {
        /// A message.
        #[prost(message, tag = "2")]
        Message(super::QueuedMessage),
        /// A receipt.
        #[prost(message, tag = "3")]
        Receipt(super::QueuedReceipt),
        /// Several receipts, in order.
        #[prost(message, tag = "4")]
        Receipts(super::QueuedReceipts),
        /// Several messages of one chat, in chat order.
        #[prost(message, tag = "5")]
        Messages(super::QueuedMessages),
    }
}

/// A page of a device queue.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueueBatch {
    /// Entries in increasing queue sequence.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<QueueEntry>,
    /// The highest queue sequence assigned so far to this device.
    #[prost(uint64, tag = "2")]
    pub latest_queue_seq: u64,
    /// The device's unclaimed one-time keys.
    #[prost(uint32, tag = "3")]
    pub one_time_keys_remaining: u32,
    /// The state of the device's fallback key.
    #[prost(enumeration = "FallbackKeyState", tag = "4")]
    pub fallback_key: i32,
}

// ---------------------------------------------------------------------------------------------
// Requests and answers shared by the client and region protocols

/// Creates an account and its first device.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Register {
    /// The account name wanted.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Curve25519 identity key of the first device.
    #[prost(bytes = "vec", tag = "2")]
    pub identity_key: Vec<u8>,
    /// Ed25519 signing key of the first device.
    #[prost(bytes = "vec", tag = "3")]
    pub signing_key: Vec<u8>,
    /// Initial one-time keys.
    #[prost(message, repeated, tag = "4")]
    pub one_time_keys: Vec<OneTimeKey>,
    /// An operator-issued registration token (optional on the devnet).
    #[prost(string, tag = "5")]
    pub registration_token: String,
    /// The first device's signed fallback key.
    #[prost(message, optional, tag = "6")]
    pub fallback_key: Option<OneTimeKey>,
}

/// The account and device a registration created.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Registered {
    /// The account.
    #[prost(message, required, tag = "1")]
    pub account: AccountInfo,
    /// The new device's number.
    #[prost(uint32, tag = "2")]
    pub device: u32,
}

// ---------------------------------------------------------------------------------------------
// Linked devices

/// The message a new device signs with its new signing key to prove it holds the keys it asks
/// to link, bound to the pairing code so the proof cannot be replayed for another pairing.
pub fn link_proof_payload(code: &str, identity_key: &[u8], signing_key: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(16 + identity_key.len() + signing_key.len() + code.len());
    payload.extend_from_slice(b"relay-link-v1");
    // The two keys have fixed lengths (checked before verifying): the code last keeps the
    // concatenation unambiguous.
    payload.extend_from_slice(identity_key);
    payload.extend_from_slice(signing_key);
    payload.extend_from_slice(code.as_bytes());
    payload
}

/// (From a new device, unauthenticated) asks to join the account that opened a pairing, with
/// the new device's keys and a proof it holds them. Sent again with the same keys, it answers
/// where the request stands.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RequestLink {
    /// The pairing code (canonical text, see `PairingCode`).
    #[prost(string, tag = "1")]
    pub code: String,
    /// Curve25519 identity key of the new device.
    #[prost(bytes = "vec", tag = "2")]
    pub identity_key: Vec<u8>,
    /// Ed25519 signing key of the new device.
    #[prost(bytes = "vec", tag = "3")]
    pub signing_key: Vec<u8>,
    /// The new device's one-time keys, published when it is approved.
    #[prost(message, repeated, tag = "4")]
    pub one_time_keys: Vec<OneTimeKey>,
    /// The new device's signed fallback key.
    #[prost(message, optional, tag = "5")]
    pub fallback_key: Option<OneTimeKey>,
    /// Signature by `signing_key` of [`link_proof_payload`].
    #[prost(bytes = "vec", tag = "6")]
    pub proof: Vec<u8>,
}

/// Where a link request stands.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LinkStatus {
    /// The account the new device joins.
    #[prost(message, required, tag = "1")]
    pub account: AccountInfo,
    /// The device number it got, 0 while no device of the account approved it.
    #[prost(uint32, tag = "2")]
    pub device: u32,
}

/// (Authenticated) a request about the asker's own account's devices.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DeviceCommand {
    /// The command.
    #[prost(oneof = "device_command::Command", tags = "1, 2, 3, 4, 5")]
    pub command: Option<device_command::Command>,
}

/// The variants of [`DeviceCommand`].
pub mod device_command {
    /// What to do with the account's devices.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Command {
        /// Open a pairing (answered with `Pairing`).
        #[prost(message, tag = "1")]
        OpenPairing(super::OpenPairing),
        /// The link requests waiting for approval (answered with `LinkRequests`).
        #[prost(message, tag = "2")]
        LinkRequests(super::OpenPairing),
        /// Approve a link request (answered with `Devices`).
        #[prost(message, tag = "3")]
        Approve(super::ApproveLink),
        /// The account's devices (answered with `Devices`).
        #[prost(message, tag = "4")]
        List(super::OpenPairing),
        /// Remove a device (answered with `Devices`).
        #[prost(message, tag = "5")]
        Remove(super::RemoveDevice),
    }
}

/// No arguments.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct OpenPairing {}

/// An open pairing.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Pairing {
    /// The code to show (canonical text).
    #[prost(string, tag = "1")]
    pub code: String,
    /// When it stops being usable, in ms since the Unix epoch.
    #[prost(uint64, tag = "2")]
    pub expires_at_ms: u64,
}

/// A new device waiting for approval.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LinkRequestInfo {
    /// The pairing code it used.
    #[prost(string, tag = "1")]
    pub code: String,
    /// Its Curve25519 identity key (shown as a fingerprint to compare with the new device).
    #[prost(bytes = "vec", tag = "2")]
    pub identity_key: Vec<u8>,
    /// When it asked, in ms since the Unix epoch.
    #[prost(uint64, tag = "3")]
    pub requested_at_ms: u64,
}

/// The link requests waiting for approval.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LinkRequests {
    /// The requests, oldest first.
    #[prost(message, repeated, tag = "1")]
    pub requests: Vec<LinkRequestInfo>,
}

/// Approves the device that asked with `code` and `identity_key`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ApproveLink {
    /// The pairing code.
    #[prost(string, tag = "1")]
    pub code: String,
    /// The identity key the approver saw.
    #[prost(bytes = "vec", tag = "2")]
    pub identity_key: Vec<u8>,
}

/// Removes a device of the asker's account.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RemoveDevice {
    /// The device number.
    #[prost(uint32, tag = "1")]
    pub device: u32,
}

/// An account's current devices and their public keys.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DeviceList {
    /// The devices (no one-time keys).
    #[prost(message, repeated, tag = "1")]
    pub devices: Vec<DeviceKeys>,
}

/// Resolves a name to an account.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LookupName {
    /// The name.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// Claims one one-time key of every current device of an account.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ClaimKeys {
    /// The account.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// The authenticated device that claims (set by the edge, whatever the device sent): the
    /// region rate-limits claims per claimer.
    #[prost(message, optional, tag = "2")]
    pub claimer: Option<DeviceAddr>,
}

/// The devices of an account with their keys.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeyBundle {
    /// The account.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// Its current devices.
    #[prost(message, repeated, tag = "2")]
    pub devices: Vec<DeviceKeys>,
}

/// Reads a device queue after a cursor.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FetchQueue {
    /// Entries with a greater queue sequence are returned.
    #[prost(uint64, tag = "1")]
    pub after_queue_seq: u64,
    /// At most this many (capped by the server).
    #[prost(uint32, tag = "2")]
    pub limit: u32,
}

/// Acknowledges (and so deletes) queue entries.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AckQueue {
    /// The acknowledged queue sequences.
    #[prost(uint64, repeated, tag = "1")]
    pub queue_seqs: Vec<u64>,
}

/// Adds one-time keys, and replaces the fallback key when one is given.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct UploadOneTimeKeys {
    /// The new keys.
    #[prost(message, repeated, tag = "1")]
    pub keys: Vec<OneTimeKey>,
    /// A new signed fallback key, replacing the current one.
    #[prost(message, optional, tag = "2")]
    pub fallback_key: Option<OneTimeKey>,
}

/// How many unclaimed one-time keys a device has, and the state of its fallback key.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct OneTimeKeyCount {
    /// The count.
    #[prost(uint32, tag = "1")]
    pub remaining: u32,
    /// The state of the device's fallback key.
    #[prost(enumeration = "FallbackKeyState", tag = "2")]
    pub fallback_key: i32,
    /// The counts are the edge's cached hint (a login from its device-key cache), possibly
    /// behind the region's: claims through other edges lower them unseen, and answers can pass
    /// the edge out of order. A device decides what to upload from a fetch's exact counts
    /// instead. Old edges never set it; old devices ignore it.
    #[prost(bool, tag = "3")]
    pub cached: bool,
}

/// One region's commit of an envelope.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Committed {
    /// The region.
    #[prost(uint32, tag = "1")]
    pub region: u32,
    /// The chat sequence the region assigned.
    #[prost(uint64, tag = "2")]
    pub chat_seq: u64,
    /// Whether this was a retry of an envelope already stored.
    #[prost(bool, tag = "3")]
    pub duplicate: bool,
    /// When the region committed it (ms since the Unix epoch).
    #[prost(uint64, tag = "4")]
    pub server_time_ms: u64,
}

/// The envelope does not cover exactly the current devices; these are the current ones.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MismatchedDevices {
    /// Current devices of each account whose coverage was wrong.
    #[prost(message, repeated, tag = "1")]
    pub accounts: Vec<AccountDevices>,
}

/// The envelope's sender_seq leaves a gap; resend from this one.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ResendFrom {
    /// The sender_seq the region expects next.
    #[prost(uint64, tag = "1")]
    pub expected_sender_seq: u64,
}

/// The group's membership changed since the version a group envelope names (the group form of
/// [`MismatchedDevices`]): the sender re-shares its session (a new one when a member or a
/// device left) and re-encrypts for these members, then retries with the same client message
/// id.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupChanged {
    /// The group.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The group's current version: name it in the retried envelope.
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// The current members, in account id order.
    #[prost(uint64, repeated, tag = "3")]
    pub members: Vec<u64>,
    /// The current devices of the members homed in the regions that answered (every region
    /// the envelope went to). A member missing here is homed elsewhere: the client learns its
    /// devices when it claims their keys to share its session with them, as it must anyway.
    #[prost(message, repeated, tag = "4")]
    pub devices: Vec<AccountDevices>,
}

/// The outcome of sending (client↔edge) or committing (edge↔region) one envelope.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SendOutcome {
    /// The outcome.
    #[prost(oneof = "send_outcome::Outcome", tags = "1, 2, 3, 4")]
    pub outcome: Option<send_outcome::Outcome>,
}

/// The variants of [`SendOutcome`].
pub mod send_outcome {
    /// The outcome of a send.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Outcome {
        /// Durably stored by every destination region (client↔edge: one entry per region).
        #[prost(message, tag = "1")]
        Sent(super::SentEverywhere),
        /// Re-encrypt for the current devices and retry with the same client message id.
        #[prost(message, tag = "2")]
        Mismatched(super::MismatchedDevices),
        /// Resend from the given sender_seq.
        #[prost(message, tag = "3")]
        ResendFrom(super::ResendFrom),
        /// (Group envelopes) the group changed: re-share and re-encrypt for its current
        /// members and devices, and retry with the same client message id.
        #[prost(message, tag = "4")]
        GroupChanged(super::GroupChanged),
    }
}

/// Every destination region's commit.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SentEverywhere {
    /// One commit per destination region.
    #[prost(message, repeated, tag = "1")]
    pub commits: Vec<Committed>,
    /// The sender's home region as the edge routed the envelope, whose commit's chat sequence
    /// the sender keeps (0 from an edge before it: the sender's own idea of its home). A sender
    /// whose home moved learns it here.
    #[prost(uint32, tag = "2")]
    pub home_region: u32,
}

// ---------------------------------------------------------------------------------------------
// Groups (the directory's group records: membership metadata only, never message content)
//
// A device sends a `GroupCommand` to its edge, which forwards it to the device's home region as
// a `ForGroup` naming the device's account (from the authenticated session, never from the
// request); a region that is not the directory writer forwards the same `ForGroup` there. Every
// command is answered with a `GroupInfo` (`List` with a `GroupList`) or a typed error:
// `UnknownGroup` (no such group, or the asker is not a member: the same to a non-member),
// `NotGroupAdmin`, `GroupFull`, `LastGroupAdmin`, `UnknownAccount` (a member to add does not
// exist), `Malformed` or `TooLarge` (a bad name or list). Every change bumps the group's
// version.

/// (Authenticated) a request about groups, acting as the asker's account.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupCommand {
    /// The command.
    #[prost(oneof = "group_command::Command", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
    pub command: Option<group_command::Command>,
}

/// The variants of [`GroupCommand`].
pub mod group_command {
    /// What to do.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Command {
        /// Create a group; the asker is its first member and an admin (answered with
        /// `GroupInfo`).
        #[prost(message, tag = "1")]
        Create(super::CreateGroup),
        /// (Admins) add members (answered with `GroupInfo`).
        #[prost(message, tag = "2")]
        Add(super::AddGroupMembers),
        /// (Admins) remove a member (answered with `GroupInfo`).
        #[prost(message, tag = "3")]
        Remove(super::RemoveGroupMember),
        /// Leave the group (answered with a `GroupInfo` holding only the group's id and chat:
        /// the asker sees nothing more of it). If the last admin leaves, the remaining member
        /// with the lowest account id becomes an admin. Leaving a group one is not in answers
        /// the same, so a retried leave succeeds.
        #[prost(message, tag = "4")]
        Leave(super::GroupRef),
        /// (Admins) rename the group (answered with `GroupInfo`).
        #[prost(message, tag = "5")]
        Rename(super::RenameGroup),
        /// (Admins) make a member an admin or a plain member (answered with `GroupInfo`).
        #[prost(message, tag = "6")]
        SetAdmin(super::SetGroupAdmin),
        /// (Members) the group with its members (answered with `GroupInfo`).
        #[prost(message, tag = "7")]
        Get(super::GroupRef),
        /// The asker's groups, a page at a time, in group id order (answered with
        /// `GroupList`).
        #[prost(message, tag = "8")]
        List(super::ListGroups),
    }
}

/// Creates a group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CreateGroup {
    /// The group's name: 1 to `GROUP_NAME_BYTES_MAX` bytes of UTF-8, no control characters.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The other first members (account ids; each must exist). The asker is always a member;
    /// naming it, or an account twice, changes nothing. At most `GROUP_MEMBERS_MAX` members in
    /// all.
    #[prost(uint64, repeated, tag = "2")]
    pub members: Vec<u64>,
    /// `GROUP_REQUEST_ID_BYTES` random bytes the client draws once per creation and sends
    /// again with every retry: the directory answers a retry with the group the first attempt
    /// created instead of creating another.
    #[prost(bytes = "vec", tag = "3")]
    pub request_id: Vec<u8>,
}

/// Names a group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupRef {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
}

/// (Region → directory writer) a group's membership, asked by a region checking one of its
/// envelopes; the writer remembers who asked, to tell them when the group changes.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct AskGroupMembers {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The asking region.
    #[prost(uint32, tag = "2")]
    pub region: u32,
}

/// A group at a version.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct GroupVersion {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// Its version.
    #[prost(uint64, tag = "2")]
    pub version: u64,
}

/// Adds members to a group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AddGroupMembers {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The accounts to add (each must exist; members already are unchanged).
    #[prost(uint64, repeated, tag = "2")]
    pub accounts: Vec<u64>,
}

/// Removes a member from a group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RemoveGroupMember {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The account to remove (an account that is not a member is unchanged).
    #[prost(uint64, tag = "2")]
    pub account: u64,
}

/// Renames a group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RenameGroup {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The new name (rules as in [`CreateGroup::name`]).
    #[prost(string, tag = "2")]
    pub name: String,
}

/// Makes a member an admin, or a plain member.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SetGroupAdmin {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The member.
    #[prost(uint64, tag = "2")]
    pub account: u64,
    /// Admin (true) or plain member (false). The last admin cannot be made a plain member
    /// (`LastGroupAdmin`).
    #[prost(bool, tag = "3")]
    pub admin: bool,
}

/// Asks for a page of the asker's groups.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ListGroups {
    /// Groups with a greater id are listed (0: from the first).
    #[prost(uint64, tag = "1")]
    pub after_group: u64,
    /// At most this many (0 or more than `GROUPS_PER_PAGE_MAX`: `GROUPS_PER_PAGE_MAX`).
    #[prost(uint32, tag = "2")]
    pub limit: u32,
}

/// A member of a group.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct GroupMemberInfo {
    /// The member's account id.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// Whether the member is an admin.
    #[prost(bool, tag = "2")]
    pub admin: bool,
}

/// A group as the directory knows it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupInfo {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The group's chat id (16 bytes, [`ChatId::group`]).
    #[prost(bytes = "vec", tag = "2")]
    pub chat: Vec<u8>,
    /// The group's name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// The group's version: one more for every change (created, members, admins, name,
    /// home). Later group envelopes name the version they were encrypted for.
    #[prost(uint64, tag = "4")]
    pub version: u64,
    /// The group's home region (its creator's home region).
    #[prost(uint32, tag = "5")]
    pub home_region: u32,
    /// The home-region epoch (bumped on home moves).
    #[prost(uint64, tag = "6")]
    pub epoch: u64,
    /// The members in account id order (empty in a `GroupList`: get the group for them).
    #[prost(message, repeated, tag = "7")]
    pub members: Vec<GroupMemberInfo>,
    /// How many members the group has.
    #[prost(uint32, tag = "8")]
    pub member_count: u32,
}

/// A page of the asker's groups.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupList {
    /// The groups in id order, without their members.
    #[prost(message, repeated, tag = "1")]
    pub groups: Vec<GroupInfo>,
    /// The `after_group` of the next page; 0 when this page is the last.
    #[prost(uint64, tag = "2")]
    pub next_after_group: u64,
}

/// A group command on behalf of an account (edge → home region → directory writer).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ForGroup {
    /// The account that acts: the authenticated device's, set by the edge.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// The command.
    #[prost(message, required, tag = "2")]
    pub command: GroupCommand,
}

/// A [`GroupCommand`] whose ids, names and lists were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupAction {
    /// Create a group named `name` with the asker and `members`.
    Create {
        /// The name (checked).
        name: String,
        /// The other first members, sorted and unique, without zero (may hold the asker).
        members: Vec<AccountId>,
        /// The client's id for this creation.
        request_id: [u8; GROUP_REQUEST_ID_BYTES],
    },
    /// Add `accounts` to `group`.
    Add {
        /// The group.
        group: GroupId,
        /// The accounts, sorted and unique, without zero; at least one.
        accounts: Vec<AccountId>,
    },
    /// Remove `account` from `group`.
    Remove {
        /// The group.
        group: GroupId,
        /// The member.
        account: AccountId,
    },
    /// Leave `group`.
    Leave {
        /// The group.
        group: GroupId,
    },
    /// Rename `group`.
    Rename {
        /// The group.
        group: GroupId,
        /// The new name (checked).
        name: String,
    },
    /// Make `account` an admin of `group` or a plain member.
    SetAdmin {
        /// The group.
        group: GroupId,
        /// The member.
        account: AccountId,
        /// Admin or plain member.
        admin: bool,
    },
    /// Read `group`.
    Get {
        /// The group.
        group: GroupId,
    },
    /// List the asker's groups after `after`.
    List {
        /// List groups after this one (`None`: from the first).
        after: Option<GroupId>,
        /// At most this many, 1..=`GROUPS_PER_PAGE_MAX`.
        limit: u32,
    },
}

impl GroupCommand {
    /// Checks what a server can check without the directory: ids are non-zero, names follow
    /// [`validate_group_name`], lists are within `GROUP_MEMBERS_MAX`.
    pub fn parse(&self) -> Result<GroupAction, ProtoError> {
        use group_command::Command;
        let Some(command) = &self.command else {
            return Err(ProtoError::new(
                crate::ErrorCode::UnsupportedRequest,
                "an empty group command, or a kind this server does not know (it is older)",
            ));
        };
        Ok(match command {
            Command::Create(create) => {
                validate_group_name(&create.name)?;
                // The asker is a member too.
                if create.members.len() >= GROUP_MEMBERS_MAX {
                    return Err(group_too_large(create.members.len() + 1));
                }
                let request_id =
                    <[u8; GROUP_REQUEST_ID_BYTES]>::try_from(create.request_id.as_slice())
                        .map_err(|_| {
                            ProtoError::invalid(format!(
                                "a group's request id is {GROUP_REQUEST_ID_BYTES} bytes"
                            ))
                        })?;
                GroupAction::Create {
                    name: create.name.clone(),
                    members: accounts(&create.members)?,
                    request_id,
                }
            }
            Command::Add(add) => {
                if add.accounts.len() > GROUP_MEMBERS_MAX {
                    return Err(group_too_large(add.accounts.len()));
                }
                let accounts = accounts(&add.accounts)?;
                if accounts.is_empty() {
                    return Err(ProtoError::invalid("no account to add"));
                }
                GroupAction::Add {
                    group: group_id(add.group)?,
                    accounts,
                }
            }
            Command::Remove(remove) => GroupAction::Remove {
                group: group_id(remove.group)?,
                account: account_id(remove.account)?,
            },
            Command::Leave(group) => GroupAction::Leave {
                group: group_id(group.group)?,
            },
            Command::Rename(rename) => {
                validate_group_name(&rename.name)?;
                GroupAction::Rename {
                    group: group_id(rename.group)?,
                    name: rename.name.clone(),
                }
            }
            Command::SetAdmin(set) => GroupAction::SetAdmin {
                group: group_id(set.group)?,
                account: account_id(set.account)?,
                admin: set.admin,
            },
            Command::Get(group) => GroupAction::Get {
                group: group_id(group.group)?,
            },
            Command::List(list) => GroupAction::List {
                after: (list.after_group != 0).then_some(GroupId(list.after_group)),
                limit: match list.limit {
                    0 => GROUPS_PER_PAGE_MAX,
                    limit => limit.min(GROUPS_PER_PAGE_MAX),
                },
            },
        })
    }
}

/// Checks a group name: 1 to `GROUP_NAME_BYTES_MAX` bytes of UTF-8 (any script), no control
/// characters (no line breaks or terminal escapes in a name shown to people).
pub fn validate_group_name(name: &str) -> Result<(), ProtoError> {
    if name.len() > GROUP_NAME_BYTES_MAX {
        return Err(ProtoError::new(
            crate::ErrorCode::TooLarge,
            format!(
                "a group name of {} bytes is longer than {GROUP_NAME_BYTES_MAX}",
                name.len()
            ),
        ));
    }
    if name.is_empty() || name.trim().is_empty() {
        return Err(ProtoError::invalid("a group name cannot be empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(ProtoError::invalid(
            "a group name cannot hold control characters",
        ));
    }
    Ok(())
}

fn group_id(group: u64) -> Result<GroupId, ProtoError> {
    if group == 0 {
        return Err(ProtoError::invalid("group ids start at 1"));
    }
    Ok(GroupId(group))
}

fn account_id(account: u64) -> Result<AccountId, ProtoError> {
    if account == 0 {
        return Err(ProtoError::invalid("account ids start at 1"));
    }
    Ok(AccountId(account))
}

/// Account ids sorted and unique, refusing zero.
fn accounts(ids: &[u64]) -> Result<Vec<AccountId>, ProtoError> {
    let unique: BTreeSet<AccountId> = ids
        .iter()
        .map(|&id| account_id(id))
        .collect::<Result<_, _>>()?;
    Ok(unique.into_iter().collect())
}

fn group_too_large(members: usize) -> ProtoError {
    ProtoError::new(
        crate::ErrorCode::GroupFull,
        format!("{members} members is more than a group's {GROUP_MEMBERS_MAX}"),
    )
}

// ---------------------------------------------------------------------------------------------
// Blobs (the blob store: encrypted media and history snapshots)
//
// A blob is ciphertext the region stores for 30 days under an id it draws (128 random bits:
// knowing the id is the grant to download). `Begin`, `Status` and `Finish` are ordinary requests;
// `Upload` and `Download` open a stream of their own: after the request frame, an upload
// stream carries the blob's raw bytes from the given offset to the end of the stream, answered
// by one frame (the status, with the offset the region committed); a download stream is
// answered by one frame (the status) followed by the raw bytes from the offset to the end.

/// Begins an upload, or resumes one (`resume` set).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BlobBegin {
    /// The blob's size in bytes.
    #[prost(uint64, tag = "1")]
    pub size_bytes: u64,
    /// SHA-256 of the blob's bytes (32 bytes), or empty: `Finish` declares it (a device that
    /// seals while it sends knows the hash only at the end). The region checks it at `Finish`.
    #[prost(bytes = "vec", tag = "2")]
    pub sha256: Vec<u8>,
    /// The id of an upload this account began earlier, to resume it (empty: a new upload).
    #[prost(bytes = "vec", tag = "3")]
    pub resume: Vec<u8>,
}

/// Names a blob, at an offset for the streams.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BlobAt {
    /// The blob's id (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    /// Where the stream starts, in bytes (`Upload`: the committed offset; ignored by `Status`
    /// and `Finish`).
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    /// (`Download`) the region holding the blob, as its status named it; 0: the device's home.
    #[prost(uint32, tag = "3")]
    pub region: u32,
    /// (`Finish`) the blob's SHA-256 when `Begin` left it out (32 bytes); empty otherwise, or
    /// the same as `Begin`'s.
    #[prost(bytes = "vec", tag = "4")]
    pub sha256: Vec<u8>,
}

/// A request about a blob.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BlobCommand {
    /// The request.
    #[prost(oneof = "blob_command::Command", tags = "1, 2, 3, 4, 5")]
    pub command: Option<blob_command::Command>,
}

/// The variants of [`BlobCommand`].
pub mod blob_command {
    /// A request about a blob.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Command {
        /// Begin or resume an upload (answered with its status).
        #[prost(message, tag = "1")]
        Begin(super::BlobBegin),
        /// Where an upload stands (after a dropped connection).
        #[prost(message, tag = "2")]
        Status(super::BlobAt),
        /// Finish an upload: the region checks its size and hash.
        #[prost(message, tag = "3")]
        Finish(super::BlobAt),
        /// (Own stream) the blob's bytes from `offset` follow the frame.
        #[prost(message, tag = "4")]
        Upload(super::BlobAt),
        /// (Own stream) send the blob's bytes from `offset` after the status.
        #[prost(message, tag = "5")]
        Download(super::BlobAt),
    }
}

impl BlobCommand {
    /// Whether the command opens a stream of its own (raw bytes after the frames).
    pub fn is_stream(&self) -> bool {
        matches!(
            self.command,
            Some(blob_command::Command::Upload(_) | blob_command::Command::Download(_))
        )
    }
}

/// Where a blob stands.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BlobStatus {
    /// The blob's id (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    /// Its size in bytes, as begun.
    #[prost(uint64, tag = "2")]
    pub size_bytes: u64,
    /// The bytes the region holds durably, from the start: an upload resumes here.
    #[prost(uint64, tag = "3")]
    pub committed_bytes: u64,
    /// Whether the upload is finished (size and hash checked): the blob can be downloaded.
    #[prost(bool, tag = "4")]
    pub finished: bool,
    /// When the region deletes it, in milliseconds since the Unix epoch.
    #[prost(uint64, tag = "5")]
    pub expires_at_ms: u64,
    /// The region holding it (downloads from other regions' devices go there).
    #[prost(uint32, tag = "6")]
    pub region: u32,
}

/// A blob request naming the device it acts for (the edge authenticated it).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ForBlob {
    /// The device.
    #[prost(message, required, tag = "1")]
    pub device: DeviceAddr,
    /// The request.
    #[prost(message, required, tag = "2")]
    pub command: BlobCommand,
}

// ---------------------------------------------------------------------------------------------
// Client ↔ edge

/// Opens a connection's control stream; the edge answers with a [`Challenge`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Hello {
    /// The client's software name and version, for logs.
    #[prost(string, tag = "1")]
    pub client_version: String,
}

/// The nonce a device signs to authenticate.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Challenge {
    /// Random bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub nonce: Vec<u8>,
}

/// Proves a device holds its signing key, bound to this connection.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Authenticate {
    /// The device.
    #[prost(message, required, tag = "1")]
    pub device: DeviceAddr,
    /// Ed25519 signature over `nonce ‖ TLS keying-material export`.
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
    /// The device's queue cursor: the highest queue sequence it processed and stored. A cursor
    /// behind an entry the device already acknowledged means its state went back.
    #[prost(uint64, optional, tag = "3")]
    pub queue_cursor: Option<u64>,
    /// The `device_seq` the device will give its next envelope. One not above every
    /// `device_seq` its home region has seen means its state went back.
    #[prost(uint64, optional, tag = "4")]
    pub next_device_seq: Option<u64>,
}

/// The message a device signs to authenticate on one connection.
pub fn auth_signing_payload(nonce: &[u8], keying_material: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(16 + nonce.len() + keying_material.len());
    payload.extend_from_slice(b"relay-auth-v1");
    payload.extend_from_slice(nonce);
    payload.extend_from_slice(keying_material);
    payload
}

/// A request from a device to its edge.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ClientRequest {
    /// The request.
    #[prost(
        oneof = "client_request::Body",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18"
    )]
    pub body: Option<client_request::Body>,
}

/// The variants of [`ClientRequest`].
pub mod client_request {
    /// A device's request.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Body {
        /// Open the control stream (first frame of the connection's first stream).
        #[prost(message, tag = "1")]
        Hello(super::Hello),
        /// Authenticate on the control stream.
        #[prost(message, tag = "2")]
        Authenticate(super::Authenticate),
        /// Create an account (no authentication needed).
        #[prost(message, tag = "3")]
        Register(super::Register),
        /// Resolve a name.
        #[prost(message, tag = "4")]
        LookupName(super::LookupName),
        /// Claim keys of an account's devices.
        #[prost(message, tag = "5")]
        ClaimKeys(super::ClaimKeys),
        /// Add one-time keys.
        #[prost(message, tag = "6")]
        UploadOneTimeKeys(super::UploadOneTimeKeys),
        /// Send an envelope.
        #[prost(message, tag = "7")]
        Send(super::Envelope),
        /// Read the queue, and acknowledge entries in the same request.
        #[prost(message, tag = "8")]
        FetchQueue(super::FetchAndAck),
        /// Resolve an account id (answered with `Account`).
        #[prost(message, tag = "9")]
        LookupAccount(super::LookupAccount),
        /// (From a new device, unauthenticated) ask to be linked (answered with `LinkStatus`).
        #[prost(message, tag = "10")]
        RequestLink(super::RequestLink),
        /// Manage the account's devices.
        #[prost(message, tag = "11")]
        Devices(super::DeviceCommand),
        /// Upload, query or download a blob (answered with `Blob`; uploads and downloads on
        /// their own stream).
        #[prost(message, tag = "12")]
        Blob(super::BlobCommand),
        /// Create, change, read or list groups as the device's account (answered with `Group`
        /// or, for `List`, `Groups`).
        #[prost(message, tag = "13")]
        Group(super::GroupCommand),
        /// Start or stop watching an account's presence (answered with `Watching`; the
        /// presence comes as pushes).
        #[prost(message, tag = "14")]
        WatchPresence(super::WatchPresence),
        /// Read or set the account's presence privacy (answered with `PresencePrivacy`).
        #[prost(message, tag = "15")]
        PresencePrivacy(super::SetPresencePrivacy),
        /// A typing indicator for a peer (answered with `TypingSent`).
        #[prost(message, tag = "16")]
        Typing(super::TypingSignal),
        /// Read, set or remove the device's push registration (answered with `Push`).
        #[prost(message, tag = "17")]
        Push(super::SetPush),
        /// Block or unblock an account, or list the blocked ones (answered with `Blocked`).
        #[prost(message, tag = "18")]
        Block(super::SetBlock),
    }
}

/// Acknowledges some entries, then reads the queue after a cursor.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FetchAndAck {
    /// Entries to acknowledge first (may be empty).
    #[prost(message, optional, tag = "1")]
    pub ack: Option<AckQueue>,
    /// The read that follows (limit 0 acknowledges only).
    #[prost(message, optional, tag = "2")]
    pub fetch: Option<FetchQueue>,
}

/// An edge's answer to one device request.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ClientResponse {
    /// The answer.
    #[prost(
        oneof = "client_response::Body",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21"
    )]
    pub body: Option<client_response::Body>,
}

/// The variants of [`ClientResponse`].
pub mod client_response {
    /// An edge's answer.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Body {
        /// The request failed.
        #[prost(message, tag = "1")]
        Error(super::ErrorReply),
        /// Answer to `Hello`.
        #[prost(message, tag = "2")]
        Challenge(super::Challenge),
        /// Answer to `Authenticate`.
        #[prost(message, tag = "3")]
        Authenticated(super::OneTimeKeyCount),
        /// Answer to `Register`.
        #[prost(message, tag = "4")]
        Registered(super::Registered),
        /// Answer to `LookupName`.
        #[prost(message, tag = "5")]
        Account(super::AccountInfo),
        /// Answer to `ClaimKeys`.
        #[prost(message, tag = "6")]
        Keys(super::KeyBundle),
        /// Answer to `UploadOneTimeKeys`.
        #[prost(message, tag = "7")]
        KeysUploaded(super::OneTimeKeyCount),
        /// Answer to `Send`.
        #[prost(message, tag = "8")]
        Sent(super::SendOutcome),
        /// Answer to `FetchQueue`.
        #[prost(message, tag = "9")]
        Queue(super::QueueBatch),
        /// Answer to `RequestLink`.
        #[prost(message, tag = "10")]
        LinkStatus(super::LinkStatus),
        /// Answer to `Devices` opening a pairing.
        #[prost(message, tag = "11")]
        Pairing(super::Pairing),
        /// Answer to `Devices` asking for the link requests.
        #[prost(message, tag = "12")]
        LinkRequests(super::LinkRequests),
        /// Answer to `Devices` listing, approving or removing.
        #[prost(message, tag = "13")]
        Devices(super::DeviceList),
        /// Answer to `Blob`.
        #[prost(message, tag = "14")]
        Blob(super::BlobStatus),
        /// Answer to `Group`, except `List`.
        #[prost(message, tag = "15")]
        Group(super::GroupInfo),
        /// Answer to `Group` listing.
        #[prost(message, tag = "16")]
        Groups(super::GroupList),
        /// Answer to `WatchPresence`: the watch is passed on.
        #[prost(message, tag = "17")]
        Watching(super::WatchPresence),
        /// Answer to `PresencePrivacy`: the setting now.
        #[prost(message, tag = "18")]
        PresencePrivacy(super::PresencePrivacy),
        /// Answer to `Typing`: the indicator is passed on.
        #[prost(message, tag = "19")]
        TypingSent(super::TypingSignal),
        /// Answer to `Push`: the registration now.
        #[prost(message, tag = "20")]
        Push(super::PushState),
        /// Answer to `Block`: the blocked accounts now.
        #[prost(message, tag = "21")]
        Blocked(super::BlockedAccounts),
    }

    impl Body {
        /// The variant's name, for errors that say what came instead of what was expected.
        pub fn name(&self) -> &'static str {
            match self {
                Body::Error(_) => "Error",
                Body::Challenge(_) => "Challenge",
                Body::Authenticated(_) => "Authenticated",
                Body::Registered(_) => "Registered",
                Body::Account(_) => "Account",
                Body::Keys(_) => "Keys",
                Body::KeysUploaded(_) => "KeysUploaded",
                Body::Sent(_) => "Sent",
                Body::Queue(_) => "Queue",
                Body::LinkStatus(_) => "LinkStatus",
                Body::Pairing(_) => "Pairing",
                Body::LinkRequests(_) => "LinkRequests",
                Body::Devices(_) => "Devices",
                Body::Blob(_) => "Blob",
                Body::Group(_) => "Group",
                Body::Groups(_) => "Groups",
                Body::Watching(_) => "Watching",
                Body::PresencePrivacy(_) => "PresencePrivacy",
                Body::TypingSent(_) => "TypingSent",
                Body::Push(_) => "Push",
                Body::Blocked(_) => "Blocked",
            }
        }
    }
}

/// Something the edge tells an authenticated device on its control stream.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ServerPush {
    /// The event.
    #[prost(oneof = "server_push::Event", tags = "1, 2, 3")]
    pub event: Option<server_push::Event>,
}

/// The variants of [`ServerPush`].
pub mod server_push {
    /// An event for a device.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Event {
        /// New entries wait in the device queue.
        #[prost(message, tag = "1")]
        QueueAvailable(super::DeviceQueueAvailable),
        /// A watched account's presence, now or after a change.
        #[prost(message, tag = "2")]
        Presence(super::PresenceInfo),
        /// Someone is typing to this device's account, or stopped.
        #[prost(message, tag = "3")]
        Typing(super::TypingNotice),
    }
}

// ---------------------------------------------------------------------------------------------
// Edge ↔ region and region ↔ region

/// An envelope forwarded by an edge for commit.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CommitEnvelope {
    /// The envelope.
    #[prost(message, required, tag = "1")]
    pub envelope: Envelope,
    /// The sender's home region, where receipts go.
    #[prost(uint32, tag = "2")]
    pub sender_region: u32,
    /// Where the edge routed each account of the envelope (empty from edges before it).
    #[prost(message, repeated, tag = "3")]
    pub routed: Vec<RoutedHome>,
}

/// Asks the directory writer to create an account homed in a region.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CreateAccount {
    /// The name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The home region.
    #[prost(uint32, tag = "2")]
    pub home_region: u32,
    /// The registration token the device gave (checked by the directory writer when it
    /// requires one).
    #[prost(string, tag = "3")]
    pub registration_token: String,
}

/// (An operator, with a deployment certificate, to the directory writer) issue registration
/// tokens. Answered with `RegistrationTokens`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct IssueRegistrationTokens {
    /// How many tokens (1 to `REGISTRATION_TOKENS_PER_REQUEST_MAX`).
    #[prost(uint32, tag = "1")]
    pub count: u32,
    /// Registrations each allows (1 to `REGISTRATION_TOKEN_USES_MAX`).
    #[prost(uint32, tag = "2")]
    pub uses: u32,
    /// How long each is valid, in ms (1 to `REGISTRATION_TOKEN_TTL_MS_MAX`).
    #[prost(uint64, tag = "3")]
    pub ttl_ms: u64,
}

/// (A region to the directory writer) the accounts changed after a position of the writer's
/// change log, for the region's replica of the directory. Answered with `DirectoryChanges`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AskDirectoryChanges {
    /// The position the replica applied through (empty: from the start), as the writer gave it.
    #[prost(bytes = "vec", tag = "1")]
    pub after: Vec<u8>,
    /// At most this many accounts (the writer caps it too).
    #[prost(uint32, tag = "2")]
    pub limit: u32,
    /// The asking region: the writer tells it of every group change it makes while the region
    /// may check envelopes against its copy (0 from a region before group replicas: the writer
    /// then waits such a copy out instead).
    #[prost(uint32, tag = "3")]
    pub region: u32,
    /// The position of the writer's group log the replica applied through (empty: from the
    /// start), as the writer gave it.
    #[prost(bytes = "vec", tag = "4")]
    pub groups_after: Vec<u8>,
}

/// A group's members at one version, as a replica of the directory keeps them.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupMembersAt {
    /// The group id.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The group's version.
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// The members' account ids, in id order (at most `GROUP_MEMBERS_MAX`).
    #[prost(uint64, repeated, tag = "3")]
    pub members: Vec<u64>,
}

/// Accounts changed after a position of the writer's change log, in commit order, each as it
/// is now.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DirectoryChanges {
    /// The accounts.
    #[prost(message, repeated, tag = "1")]
    pub accounts: Vec<AccountInfo>,
    /// The position of the last one (empty when there is none): the next `after`.
    #[prost(bytes = "vec", tag = "2")]
    pub through: Vec<u8>,
    /// More changes follow.
    #[prost(bool, tag = "3")]
    pub more: bool,
    /// Groups changed after `groups_after`, in commit order, each as it is now.
    #[prost(message, repeated, tag = "4")]
    pub groups: Vec<GroupMembersAt>,
    /// The position of the last group (empty when there is none): the next `groups_after`.
    #[prost(bytes = "vec", tag = "5")]
    pub groups_through: Vec<u8>,
    /// More group changes follow.
    #[prost(bool, tag = "6")]
    pub groups_more: bool,
}

/// (An operator, with the region's own certificate, to that region) a planned failover: the
/// region stops taking requests, lets the ones under way finish, waits until its standby
/// confirmed every commit, and asks the standby to take over. Answered with `HandedOver` once
/// the standby serves as the region; the old primary then stops.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HandOver {
    /// The region meant (refused by any other).
    #[prost(uint32, tag = "1")]
    pub region: u32,
}

/// A planned failover is done: the standby serves as the region.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HandedOver {
    /// The region.
    #[prost(uint32, tag = "1")]
    pub region: u32,
    /// The store's failover epoch now.
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    /// The store's version the standby took over at (every commit up to it).
    #[prost(uint64, tag = "3")]
    pub version: u64,
    /// How long the region held requests, from the operator's request to the standby serving
    /// (ms).
    #[prost(uint64, tag = "4")]
    pub held_ms: u64,
}

/// (An operator, with the region's own certificate, to an account's home region) move the
/// account's home to another region: the region holds the account's requests, hands its
/// devices, keys, queues and chat heads to the new home, has the directory writer move the
/// home with an epoch bump, and lets go. Answered with `HomeMoved`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MoveHome {
    /// The account.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// The region to move it to.
    #[prost(uint32, tag = "2")]
    pub to_region: u32,
}

/// An account's home moved.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HomeMoved {
    /// The account as the directory has it now (its new home and epoch).
    #[prost(message, required, tag = "1")]
    pub account: AccountInfo,
    /// The region it moved from.
    #[prost(uint32, tag = "2")]
    pub from_region: u32,
    /// Keys copied key for key (devices, keys, marks, blocks, presence, push).
    #[prost(uint64, tag = "3")]
    pub keys: u64,
    /// Queue entries moved.
    #[prost(uint64, tag = "4")]
    pub queue_entries: u64,
    /// Chat log entries carried with them.
    #[prost(uint64, tag = "5")]
    pub log_entries: u64,
    /// Chats whose heads moved.
    #[prost(uint64, tag = "6")]
    pub chats: u64,
    /// Parts sent to the new home.
    #[prost(uint32, tag = "7")]
    pub parts: u32,
    /// How long the account's requests were held (ms).
    #[prost(uint64, tag = "8")]
    pub held_ms: u64,
}

/// A key of a moved account, copied as it is.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MovedKey {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// A chat log entry a moved queue entry names, in the old home's stored form.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MovedLogEntry {
    /// The chat (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub chat: Vec<u8>,
    /// The stored entry.
    #[prost(bytes = "vec", tag = "2")]
    pub entry: Vec<u8>,
    /// Its chat sequence at the old home (kept at a new home that adopts the chat).
    #[prost(uint64, tag = "3")]
    pub chat_seq: u64,
    /// One of the chat's last entries, sent so that a retried envelope finds its dedupe record
    /// at a new home that adopts the chat (and ignored by one that does not), rather than an
    /// entry a queue entry names.
    #[prost(bool, tag = "4")]
    pub tail: bool,
}

/// A chat of a moved account as its old home numbers it for the account: a new home that
/// holds nothing of the chat adopts the numbering, and one whose log of it others here read
/// gives the account a view that goes on from it, so the account's devices never see a number
/// twice.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MovedChatLog {
    /// The chat (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub chat: Vec<u8>,
    /// The last chat sequence the old home gave (or showed the account, in its view).
    #[prost(uint64, tag = "2")]
    pub last_seq: u64,
    /// The other account of a 1:1 chat (0: a group's chat, or not known): a new home where it
    /// is homed, or that does not know it, keeps its own numbers for the chat.
    #[prost(uint64, tag = "4")]
    pub peer: u64,
    /// A group's chat: a new home that holds entries of it numbers it for members homed there,
    /// and gives the account a view; one that holds none adopts the numbering. (False from an
    /// old home of an earlier build, whose group chats the new home numbers on its own.)
    #[prost(bool, tag = "5")]
    pub group: bool,
}

/// A moved queue entry: its item in the old home's stored form, every message of which names
/// its sender and client message id (the new home finds the log entry by them).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MovedQueueEntry {
    /// The device.
    #[prost(message, required, tag = "1")]
    pub device: DeviceAddr,
    /// The entry's queue sequence (kept).
    #[prost(uint64, tag = "2")]
    pub queue_seq: u64,
    /// The stored item.
    #[prost(bytes = "vec", tag = "3")]
    pub item: Vec<u8>,
}

/// The latest queue sequence of a moved device's queue.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MovedQueueHead {
    /// The device.
    #[prost(message, required, tag = "1")]
    pub device: DeviceAddr,
    /// Its queue's latest sequence.
    #[prost(uint64, tag = "2")]
    pub latest: u64,
}

/// Where a sender stands in a chat of a moved account.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MovedChatHead {
    /// The chat (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub chat: Vec<u8>,
    /// The sender device.
    #[prost(message, required, tag = "2")]
    pub sender: DeviceAddr,
    /// Its last accepted `sender_seq`.
    #[prost(uint64, tag = "3")]
    pub sender_seq: u64,
}

/// (An account's old home to its new home, with the old home's certificate) one part of a home
/// move, applied in one transaction: chat numberings first, then log entries, then queue
/// entries, heads and keys.
/// Part 0 first clears what an earlier unfinished move left. The last part carries `activate`:
/// the directory's record after the move, which the new home takes at once. Answered with
/// `AccountImported`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ImportAccount {
    /// The account.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// The old home.
    #[prost(uint32, tag = "2")]
    pub from_region: u32,
    /// The part's number, from 0.
    #[prost(uint32, tag = "3")]
    pub part: u32,
    /// Keys copied as they are.
    #[prost(message, repeated, tag = "4")]
    pub keys: Vec<MovedKey>,
    /// Chat log entries the queue entries (of this part or a later one) name.
    #[prost(message, repeated, tag = "5")]
    pub log_entries: Vec<MovedLogEntry>,
    /// Queue entries.
    #[prost(message, repeated, tag = "6")]
    pub queue: Vec<MovedQueueEntry>,
    /// Queue heads.
    #[prost(message, repeated, tag = "7")]
    pub queue_heads: Vec<MovedQueueHead>,
    /// Chat heads.
    #[prost(message, repeated, tag = "8")]
    pub chat_heads: Vec<MovedChatHead>,
    /// The account's record once the directory moved it: this region serves it from now on.
    #[prost(message, optional, tag = "9")]
    pub activate: Option<AccountInfo>,
    /// The account's chats as the old home numbers them (applied first).
    #[prost(message, repeated, tag = "10")]
    pub chat_logs: Vec<MovedChatLog>,
}

/// A part of a home move is stored.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AccountImported {
    /// The account.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// The part.
    #[prost(uint32, tag = "2")]
    pub part: u32,
}

/// (An account's home region to the directory writer) move the account's home, if its epoch is
/// still `expected_epoch`. Answered with `Account`: the record now, moved or not (moved: its
/// home is `to_region` at `expected_epoch + 1`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MoveAccountHome {
    /// The account.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// The new home.
    #[prost(uint32, tag = "2")]
    pub to_region: u32,
    /// The epoch the mover read.
    #[prost(uint64, tag = "3")]
    pub expected_epoch: u64,
}

/// (Region to edge, on the subscription stream) an account homed in the region moved: the edge
/// takes the new home, and subscribes for the account's connected devices there.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AccountMoved {
    /// The account as the directory has it now.
    #[prost(message, required, tag = "1")]
    pub account: AccountInfo,
}

/// Where an edge routed one account of an envelope: a region refuses (`UnknownAccount`) an
/// envelope routed to it for an account it knows is not homed there, so the edge routes afresh
/// instead of the account missing the message.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RoutedHome {
    /// The account.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// The region the edge sent it to as its home.
    #[prost(uint32, tag = "2")]
    pub region: u32,
}

/// Registration tokens just issued: shown once, stored only as their SHA-256.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RegistrationTokens {
    /// The tokens.
    #[prost(string, repeated, tag = "1")]
    pub tokens: Vec<String>,
    /// Registrations each allows.
    #[prost(uint32, tag = "2")]
    pub uses: u32,
    /// When they expire (ms since the Unix epoch, the writer's clock).
    #[prost(uint64, tag = "3")]
    pub expires_at_ms: u64,
}

/// Resolves an account id.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LookupAccount {
    /// The account.
    #[prost(uint64, tag = "1")]
    pub account: u64,
}

/// A request naming the device it acts for (the edge authenticated it).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ForDevice {
    /// The device.
    #[prost(message, required, tag = "1")]
    pub device: DeviceAddr,
    /// One-time keys to upload, for `UploadOneTimeKeys`.
    #[prost(message, optional, tag = "2")]
    pub upload: Option<UploadOneTimeKeys>,
    /// Acknowledge and read, for `FetchQueue`.
    #[prost(message, optional, tag = "3")]
    pub fetch: Option<FetchAndAck>,
    /// The command, for `Devices`.
    #[prost(message, optional, tag = "4")]
    pub devices: Option<DeviceCommand>,
    /// The setting to read or change, for `PresencePrivacy`.
    #[prost(message, optional, tag = "5")]
    pub presence_privacy: Option<SetPresencePrivacy>,
    /// The registration to read, set or remove, for `Push`.
    #[prost(message, optional, tag = "6")]
    pub push: Option<SetPush>,
    /// The block to set, or the list to read, for `Block`.
    #[prost(message, optional, tag = "7")]
    pub block: Option<SetBlock>,
}

/// The signing key of a device, for authentication at the edge.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SigningKey {
    /// The device.
    #[prost(message, required, tag = "1")]
    pub device: DeviceAddr,
    /// Its Ed25519 public key.
    #[prost(bytes = "vec", tag = "2")]
    pub signing_key: Vec<u8>,
    /// Its unclaimed one-time keys.
    #[prost(uint32, tag = "3")]
    pub one_time_keys_remaining: u32,
    /// The state of its fallback key.
    #[prost(enumeration = "FallbackKeyState", tag = "4")]
    pub fallback_key: i32,
    /// The highest queue sequence it has acknowledged (0: none).
    #[prost(uint64, tag = "5")]
    pub acked_queue_seq: u64,
    /// The highest `device_seq` of its envelopes this region has stored (0: none).
    #[prost(uint64, tag = "6")]
    pub device_seq: u64,
}

/// Tells a region which devices this edge holds connections for.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Subscribe {
    /// Devices now connected here.
    #[prost(message, repeated, tag = "1")]
    pub add: Vec<DeviceAddr>,
    /// Devices no longer connected here.
    #[prost(message, repeated, tag = "2")]
    pub remove: Vec<DeviceAddr>,
    /// Presence watches of devices connected here, of accounts homed in the region, begun or
    /// ended (at most [`crate::limits::SUBSCRIBE_SIGNALS_PER_FRAME_MAX`]).
    #[prost(message, repeated, tag = "3")]
    pub watch: Vec<PresenceWatchFrom>,
    /// Typing indicators for accounts homed in the region (at most
    /// [`crate::limits::SUBSCRIBE_SIGNALS_PER_FRAME_MAX`]).
    #[prost(message, repeated, tag = "4")]
    pub typing: Vec<TypingForward>,
}

/// New entries wait in a device's queue.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DeviceQueueAvailable {
    /// The device.
    #[prost(message, required, tag = "1")]
    pub device: DeviceAddr,
    /// The highest queue sequence now assigned.
    #[prost(uint64, tag = "2")]
    pub latest_queue_seq: u64,
    /// Entries the region appended, sent along so the device need not fetch them: gapless, in
    /// queue order, at most [`crate::limits::QUEUE_PUSH_BYTES_MAX`] encoded, possibly fewer
    /// than were appended (the rest, or all when empty, are fetched). A device takes them only
    /// when the first follows its cursor, and acknowledges them as a fetched page's.
    #[prost(message, repeated, tag = "3")]
    pub entries: Vec<QueueEntry>,
}

/// A server-visible receipt travelling to the sender's home region.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ReceiptForward {
    /// The receipt, as the sender's devices will see it.
    #[prost(message, required, tag = "1")]
    pub receipt: QueuedReceipt,
    /// Idempotency key: the origin region and its outbox sequence.
    #[prost(uint32, tag = "2")]
    pub origin_region: u32,
    // Tag 3 (`origin_seq`, a gapless counter per destination) is retired: outbox entries are
    // numbered by versionstamp now.
    /// The origin region's outbox sequence for this receipt: the pushing commit's 10-byte
    /// versionstamp and a 2-byte order within it (increasing, with gaps).
    #[prost(bytes = "vec", tag = "4")]
    pub origin_stamp: Vec<u8>,
}

/// A batch of receipts for a region's accounts.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ForwardReceipts {
    /// The receipts.
    #[prost(message, repeated, tag = "1")]
    pub receipts: Vec<ReceiptForward>,
}

/// (To the directory writer) what the directory knows of a region's store: a region starting
/// on an empty store asks before serving, and registers the store it created.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoreCensusRequest {
    /// The region asked about.
    #[prost(uint32, tag = "1")]
    pub region: u32,
    /// A store to register as the region's, if given.
    #[prost(message, optional, tag = "2")]
    pub claim: Option<StoreClaim>,
}

/// Registers a store as a region's at the directory writer: a compare-and-set, so a store
/// never silently replaces another.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoreClaim {
    /// The store id (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub store_id: Vec<u8>,
    /// The store it replaces (16 bytes), empty when the region had none registered. A claim
    /// whose `previous_store_id` is not the registered one changes nothing.
    #[prost(bytes = "vec", tag = "2")]
    pub previous_store_id: Vec<u8>,
}

/// The directory writer's census of a region (after the claim, if one was made).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoreCensus {
    /// The region.
    #[prost(uint32, tag = "1")]
    pub region: u32,
    /// Accounts whose home is the region.
    #[prost(uint64, tag = "2")]
    pub accounts_homed: u64,
    /// The store the region registered last (16 bytes), empty when none.
    #[prost(bytes = "vec", tag = "3")]
    pub store_id: Vec<u8>,
    /// When it was registered, in milliseconds since the Unix epoch (0 when none).
    #[prost(uint64, tag = "4")]
    pub registered_at_ms: u64,
}

/// A request to a region from an edge or another region.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RegionRequest {
    /// The request.
    #[prost(
        oneof = "region_request::Body",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27"
    )]
    pub body: Option<region_request::Body>,
}

/// The variants of [`RegionRequest`].
pub mod region_request {
    /// A request to a region.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Body {
        /// Commit an envelope for this region's recipients.
        #[prost(message, tag = "1")]
        Commit(super::CommitEnvelope),
        /// Register an account homed here.
        #[prost(message, tag = "2")]
        Register(super::Register),
        /// (To the directory writer) create an account.
        #[prost(message, tag = "3")]
        CreateAccount(super::CreateAccount),
        /// Resolve a name.
        #[prost(message, tag = "4")]
        LookupName(super::LookupName),
        /// Resolve an account id.
        #[prost(message, tag = "5")]
        LookupAccount(super::LookupAccount),
        /// The signing key of a device homed here.
        #[prost(message, tag = "6")]
        SigningKey(super::DeviceAddr),
        /// Claim keys of an account homed here.
        #[prost(message, tag = "7")]
        ClaimKeys(super::ClaimKeys),
        /// Upload one-time keys for a device homed here.
        #[prost(message, tag = "8")]
        UploadOneTimeKeys(super::ForDevice),
        /// Acknowledge and read a device queue.
        #[prost(message, tag = "9")]
        FetchQueue(super::ForDevice),
        /// Open the subscription stream (first frame), then change subscriptions.
        #[prost(message, tag = "10")]
        Subscribe(super::Subscribe),
        /// Receipts for senders homed here.
        #[prost(message, tag = "11")]
        Receipts(super::ForwardReceipts),
        /// (To the directory writer) the census of a region's store, optionally registering one.
        #[prost(message, tag = "12")]
        StoreCensus(super::StoreCensusRequest),
        /// A new device asks to join an account homed here.
        #[prost(message, tag = "13")]
        RequestLink(super::RequestLink),
        /// A device homed here manages its account's devices.
        #[prost(message, tag = "14")]
        Devices(super::ForDevice),
        /// A device homed here uploads, queries or downloads a blob (uploads and downloads on
        /// their own stream).
        #[prost(message, tag = "15")]
        Blob(super::ForBlob),
        /// A group command of an account: from an edge to the account's home region, which
        /// forwards it to the directory writer unless it is the writer.
        #[prost(message, tag = "16")]
        Group(super::ForGroup),
        /// (Region → directory writer) a group's current version and members, for a region
        /// checking a group envelope (answered with `Group`; `UnknownGroup` when it does not
        /// exist). Regions are trusted peers: no membership is asked of the asker.
        #[prost(message, tag = "17")]
        GroupMembers(super::AskGroupMembers),
        /// (Directory writer → a region that asked for a group's members) the group changed:
        /// a cached membership older than this version is dropped before the region answers
        /// (with `GroupDropped`), so that once a change is acknowledged no region accepts an
        /// envelope for the membership before it.
        #[prost(message, tag = "18")]
        GroupVersion(super::GroupVersion),
        /// A device homed here reads or sets its account's presence privacy (answered with
        /// `PresencePrivacy`).
        #[prost(message, tag = "19")]
        PresencePrivacy(super::ForDevice),
        /// A device homed here reads, sets or removes its push registration (answered with
        /// `Push`).
        #[prost(message, tag = "20")]
        Push(super::ForDevice),
        /// (An operator to the directory writer) issue registration tokens (answered with
        /// `RegistrationTokens`).
        #[prost(message, tag = "21")]
        IssueTokens(super::IssueRegistrationTokens),
        /// A device homed here blocks or unblocks an account, or lists the blocked ones
        /// (answered with `Blocked`).
        #[prost(message, tag = "22")]
        Block(super::ForDevice),
        /// (An operator, with the region's own certificate) a planned failover to the
        /// region's standby (answered with `HandedOver`).
        #[prost(message, tag = "23")]
        HandOver(super::HandOver),
        /// (Region → directory writer) the accounts changed after a position of the writer's
        /// change log (answered with `DirectoryChanges`).
        #[prost(message, tag = "24")]
        DirectoryChanges(super::AskDirectoryChanges),
        /// (An operator, with the region's own certificate) move an account's home to another
        /// region (answered with `HomeMoved`).
        #[prost(message, tag = "25")]
        MoveHome(super::MoveHome),
        /// (An account's old home → its new home) a part of a home move (answered with
        /// `AccountImported`).
        #[prost(message, tag = "26")]
        ImportAccount(super::ImportAccount),
        /// (An account's home → the directory writer) the epoch compare-and-set that moves
        /// the home (answered with `Account`).
        #[prost(message, tag = "27")]
        MoveAccountHome(super::MoveAccountHome),
    }
}

/// A region's answer.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RegionResponse {
    /// The answer.
    #[prost(
        oneof = "region_response::Body",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30"
    )]
    pub body: Option<region_response::Body>,
}

/// The variants of [`RegionResponse`].
pub mod region_response {
    /// A region's answer.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Body {
        /// The request failed.
        #[prost(message, tag = "1")]
        Error(super::ErrorReply),
        /// Answer to `Commit` (`Sent` holds this region's single commit).
        #[prost(message, tag = "2")]
        Committed(super::SendOutcome),
        /// Answer to `Register`.
        #[prost(message, tag = "3")]
        Registered(super::Registered),
        /// Answer to `CreateAccount`, `LookupName`, `LookupAccount`.
        #[prost(message, tag = "4")]
        Account(super::AccountInfo),
        /// Answer to `SigningKey`.
        #[prost(message, tag = "5")]
        SigningKey(super::SigningKey),
        /// Answer to `ClaimKeys`.
        #[prost(message, tag = "6")]
        Keys(super::KeyBundle),
        /// Answer to `UploadOneTimeKeys`.
        #[prost(message, tag = "7")]
        KeysUploaded(super::OneTimeKeyCount),
        /// Answer to `FetchQueue`.
        #[prost(message, tag = "8")]
        Queue(super::QueueBatch),
        /// A push on the subscription stream.
        #[prost(message, tag = "9")]
        QueueAvailable(super::DeviceQueueAvailable),
        /// Answer to `Receipts`: all stored (idempotently).
        #[prost(message, tag = "10")]
        ReceiptsStored(super::OneTimeKeyCount),
        /// Answer to `StoreCensus`.
        #[prost(message, tag = "11")]
        StoreCensus(super::StoreCensus),
        /// Answer to `RequestLink`.
        #[prost(message, tag = "12")]
        LinkStatus(super::LinkStatus),
        /// Answer to `Devices` opening a pairing.
        #[prost(message, tag = "13")]
        Pairing(super::Pairing),
        /// Answer to `Devices` asking for the link requests.
        #[prost(message, tag = "14")]
        LinkRequests(super::LinkRequests),
        /// Answer to `Devices` listing, approving or removing.
        #[prost(message, tag = "15")]
        Devices(super::DeviceList),
        /// Answer to `Blob`.
        #[prost(message, tag = "16")]
        Blob(super::BlobStatus),
        /// Answer to `Group`, except `List`, and to `GroupMembers`.
        #[prost(message, tag = "17")]
        Group(super::GroupInfo),
        /// Answer to `Group` listing.
        #[prost(message, tag = "18")]
        Groups(super::GroupList),
        /// Answer to `GroupVersion`: the region holds no membership of the group older than
        /// the version.
        #[prost(message, tag = "19")]
        GroupDropped(super::GroupVersion),
        /// Answer to `PresencePrivacy`: the setting now.
        #[prost(message, tag = "20")]
        PresencePrivacy(super::PresencePrivacy),
        /// A push on the subscription stream: what a watcher may see of an account.
        #[prost(message, tag = "21")]
        Presence(super::PresenceUpdate),
        /// A push on the subscription stream: a typing indicator for a device connected to the
        /// edge.
        #[prost(message, tag = "22")]
        Typing(super::TypingNotice),
        /// Answer to `Push`: the device's registration now.
        #[prost(message, tag = "23")]
        Push(super::PushState),
        /// Answer to `IssueTokens`.
        #[prost(message, tag = "24")]
        RegistrationTokens(super::RegistrationTokens),
        /// Answer to `Block`.
        #[prost(message, tag = "25")]
        Blocked(super::BlockedAccounts),
        /// Answer to `HandOver`.
        #[prost(message, tag = "26")]
        HandedOver(super::HandedOver),
        /// Answer to `DirectoryChanges`.
        #[prost(message, tag = "27")]
        DirectoryChanges(super::DirectoryChanges),
        /// Answer to `MoveHome`.
        #[prost(message, tag = "28")]
        HomeMoved(super::HomeMoved),
        /// Answer to `ImportAccount`.
        #[prost(message, tag = "29")]
        AccountImported(super::AccountImported),
        /// A push on the subscription stream: an account homed in the region moved.
        #[prost(message, tag = "30")]
        AccountMoved(super::AccountMoved),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            chat: vec![1; 16],
            sender: DeviceAddr {
                account: 1,
                device: 1,
            },
            client_message_id: vec![2; 16],
            sender_seq: 1,
            recipient_accounts: vec![2],
            ciphertexts: vec![DeviceCiphertext {
                recipient: DeviceAddr {
                    account: 2,
                    device: 1,
                },
                message_type: 0,
                body: vec![3; 10],
            }],
            device_seq: 1,
            ..Envelope::default()
        }
    }

    /// A message from device 1/1 to group 7 with members 1, 2 and 3 (two devices each, the
    /// sender's other device included).
    fn group_message() -> Envelope {
        let group = GroupId(7);
        let mut ciphertexts = Vec::new();
        for account in 1..=3 {
            for device in 1..=2 {
                if (account, device) == (1, 1) {
                    continue;
                }
                ciphertexts.push(DeviceCiphertext {
                    recipient: DeviceAddr { account, device },
                    message_type: MESSAGE_TYPE_HOLDS_GROUP_SESSION,
                    body: Vec::new(),
                });
            }
        }
        Envelope {
            chat: ChatId::group(group).0.to_vec(),
            recipient_accounts: vec![1, 2, 3],
            ciphertexts,
            group: group.0,
            group_version: 4,
            kind: EnvelopeKind::Message as i32,
            group_ciphertext: vec![9; 100],
            group_session_id: "session".into(),
            ..envelope()
        }
    }

    /// A key share of group 7 for two of its devices.
    fn key_share() -> Envelope {
        let mut share = group_message();
        share.kind = EnvelopeKind::GroupKeyShare as i32;
        share.group_ciphertext.clear();
        share.ciphertexts = vec![
            DeviceCiphertext {
                recipient: DeviceAddr {
                    account: 2,
                    device: 1,
                },
                message_type: MESSAGE_TYPE_OLM_PRE_KEY,
                body: vec![5; 300],
            },
            DeviceCiphertext {
                recipient: DeviceAddr {
                    account: 3,
                    device: 2,
                },
                message_type: MESSAGE_TYPE_OLM_NORMAL,
                body: vec![6; 200],
            },
        ];
        share
    }

    fn malformed(envelope: &Envelope) -> bool {
        envelope.parse().map_err(|error| error.code) == Err(crate::ErrorCode::Malformed)
    }

    #[test]
    fn parses_group_messages_and_key_shares() {
        let parsed = group_message().parse().expect("a valid group message");
        assert_eq!(
            parsed.group,
            Some(ParsedGroup {
                group: GroupId(7),
                version: 4,
                kind: EnvelopeKind::Message,
                prev_seq: 0,
            })
        );
        assert_eq!(parsed.recipient_devices.len(), 5);
        let parsed = key_share().parse().expect("a valid key share");
        assert_eq!(
            parsed.group.map(|group| group.kind),
            Some(EnvelopeKind::GroupKeyShare)
        );
        assert_eq!(parsed.recipient_devices.len(), 2);
        assert_eq!(envelope().parse().expect("valid").group, None);
    }

    #[test]
    fn refuses_malformed_group_envelopes() {
        // A message with an Olm body for a device (keys travel in key shares).
        let mut e = group_message();
        e.ciphertexts[0].body = vec![1; 10];
        assert!(malformed(&e), "a body in a group message");
        let mut e = group_message();
        e.ciphertexts[0].message_type = MESSAGE_TYPE_OLM_NORMAL;
        assert!(malformed(&e), "an Olm type in a group message");
        // A key share with an empty body, or the group message marker.
        let mut e = key_share();
        e.ciphertexts[1].body.clear();
        assert!(malformed(&e), "an empty body in a key share");
        let mut e = key_share();
        e.ciphertexts[0].message_type = MESSAGE_TYPE_HOLDS_GROUP_SESSION;
        assert!(malformed(&e), "the marker in a key share");
        let mut e = key_share();
        e.ciphertexts[0].message_type = 7;
        assert!(malformed(&e), "an unknown type in a key share");
        let mut e = key_share();
        e.group_ciphertext = vec![1; 10];
        assert!(malformed(&e), "a group ciphertext in a key share");
        // A previous number not below the envelope's own, or on a 1:1 envelope.
        let mut e = group_message();
        e.sender_seq = 5;
        e.group_prev_seq = 5;
        assert!(malformed(&e), "a previous number at the envelope's own");
        e.group_prev_seq = 4;
        assert!(e.parse().is_ok(), "the one before");
        let mut e = envelope();
        e.group_prev_seq = 1;
        assert!(malformed(&e), "a previous number on a 1:1 envelope");
        // A message without its group ciphertext, or with one too large.
        let mut e = group_message();
        e.group_ciphertext.clear();
        assert!(malformed(&e), "no group ciphertext");
        let mut e = group_message();
        e.group_ciphertext = vec![1; GROUP_CIPHERTEXT_BYTES_MAX + 1];
        assert_eq!(
            e.parse().map_err(|e| e.code),
            Err(crate::ErrorCode::TooLarge)
        );
        // A chat that is not the group's.
        let mut e = group_message();
        e.chat = ChatId::group(GroupId(8)).0.to_vec();
        assert!(malformed(&e), "another group's chat");
        let mut e = group_message();
        e.chat = ChatId::direct(AccountId(1), AccountId(2)).0.to_vec();
        assert!(malformed(&e), "a direct chat");
        // Version 0, no session id, a session id too long, an unknown kind.
        let mut e = group_message();
        e.group_version = 0;
        assert!(malformed(&e), "version 0");
        let mut e = group_message();
        e.group_session_id.clear();
        assert!(malformed(&e), "no session id");
        let mut e = group_message();
        e.group_session_id = "s".repeat(GROUP_SESSION_ID_BYTES_MAX + 1);
        assert!(malformed(&e), "a session id too long");
        let mut e = group_message();
        e.kind = 9;
        assert!(malformed(&e), "an unknown kind");
        // More members than a group has.
        let mut e = key_share();
        e.recipient_accounts = (1..=GROUP_MEMBERS_MAX as u64 + 1).collect();
        assert_eq!(
            e.parse().map_err(|e| e.code),
            Err(crate::ErrorCode::TooLarge)
        );
    }

    #[test]
    fn refuses_group_fields_in_one_to_one_envelopes() {
        let mut e = envelope();
        e.group_version = 1;
        assert!(malformed(&e), "a version");
        let mut e = envelope();
        e.kind = EnvelopeKind::GroupKeyShare as i32;
        assert!(malformed(&e), "a key share");
        let mut e = envelope();
        e.group_ciphertext = vec![1];
        assert!(malformed(&e), "a group ciphertext");
        let mut e = envelope();
        e.group_session_id = "s".into();
        assert!(malformed(&e), "a session id");
        let mut e = envelope();
        e.ciphertexts[0].message_type = MESSAGE_TYPE_HOLDS_GROUP_SESSION;
        e.ciphertexts[0].body.clear();
        assert!(malformed(&e), "the group marker");
        let mut e = envelope();
        e.ciphertexts[0].body.clear();
        assert!(malformed(&e), "an empty Olm body");
    }

    #[test]
    fn a_message_to_a_full_group_with_the_largest_ids_fits_an_envelope() {
        use prost::Message;
        let group = GroupId(u64::MAX);
        let members: Vec<u64> = (0..GROUP_MEMBERS_MAX as u64)
            .map(|i| u64::MAX - i)
            .collect();
        let sender = DeviceAddr {
            account: members[0],
            device: u32::MAX,
        };
        let mut ciphertexts = Vec::new();
        for &account in &members {
            for i in 0..crate::limits::DEVICES_PER_ACCOUNT_MAX as u32 {
                let recipient = DeviceAddr {
                    account,
                    device: u32::MAX - 1 - i,
                };
                ciphertexts.push(DeviceCiphertext {
                    recipient,
                    message_type: MESSAGE_TYPE_HOLDS_GROUP_SESSION,
                    body: Vec::new(),
                });
            }
        }
        assert_eq!(ciphertexts.len(), GROUP_ENVELOPE_RECIPIENT_DEVICES_MAX);
        let message = Envelope {
            chat: ChatId::group(group).0.to_vec(),
            sender,
            client_message_id: vec![0xff; 16],
            sender_seq: u64::MAX,
            recipient_accounts: members,
            ciphertexts,
            device_seq: u64::MAX,
            group: group.0,
            group_version: u64::MAX,
            kind: EnvelopeKind::Message as i32,
            group_ciphertext: vec![0xff; GROUP_CIPHERTEXT_BYTES_MAX],
            group_session_id: "s".repeat(GROUP_SESSION_ID_BYTES_MAX),
            group_prev_seq: u64::MAX - 1,
        };
        let encoded = message.encoded_len();
        assert!(
            encoded <= crate::limits::GROUP_MESSAGE_ENVELOPE_BYTES_MAX,
            "{encoded} bytes, more than the bound computed for it"
        );
        let parsed = message.parse().expect("a full group's message is valid");
        assert_eq!(
            parsed.recipient_devices.len(),
            GROUP_ENVELOPE_RECIPIENT_DEVICES_MAX
        );
        // One device more is refused, even as a group envelope.
        let mut over = message;
        over.ciphertexts.push(DeviceCiphertext {
            recipient: DeviceAddr {
                account: over.recipient_accounts[1],
                device: 1,
            },
            message_type: MESSAGE_TYPE_HOLDS_GROUP_SESSION,
            body: Vec::new(),
        });
        assert_eq!(
            over.parse().map_err(|e| e.code),
            Err(crate::ErrorCode::TooLarge)
        );
    }

    #[test]
    fn parses_a_good_envelope() {
        let parsed = envelope().parse().expect("valid");
        assert_eq!(parsed.recipient_accounts, vec![AccountId(2)]);
        assert_eq!(parsed.recipient_devices.len(), 1);
    }

    #[test]
    fn refuses_bad_envelopes() {
        let mut e = envelope();
        e.chat = vec![1; 3];
        assert!(e.parse().is_err());
        let mut e = envelope();
        e.ciphertexts[0].recipient = DeviceAddr {
            account: 1,
            device: 1,
        };
        assert!(e.parse().is_err(), "addressed to its sender");
        let mut e = envelope();
        e.ciphertexts.push(e.ciphertexts[0].clone());
        assert!(e.parse().is_err(), "duplicate device");
        let mut e = envelope();
        e.ciphertexts[0].recipient.account = 3;
        assert!(e.parse().is_err(), "account not listed");
        let mut e = envelope();
        e.ciphertexts[0].body = vec![0; CIPHERTEXT_BYTES_MAX + 1];
        assert_eq!(
            e.parse().map_err(|e| e.code),
            Err(crate::ErrorCode::TooLarge)
        );
        let mut e = envelope();
        e.sender_seq = 0;
        assert!(e.parse().is_err());
    }

    #[test]
    fn account_names() {
        assert!(validate_account_name("alice").is_ok());
        assert!(validate_account_name("").is_err());
        assert!(validate_account_name("Alice").is_err());
        assert!(validate_account_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn group_names() {
        assert!(validate_group_name("Family 🏡").is_ok());
        assert!(validate_group_name("Équipe — été").is_ok());
        assert_eq!(
            validate_group_name("").map_err(|e| e.code),
            Err(crate::ErrorCode::Malformed)
        );
        assert!(validate_group_name("   ").is_err());
        assert!(validate_group_name("two\nlines").is_err());
        assert!(validate_group_name("bell\u{7}").is_err());
        assert!(validate_group_name("csi\u{9b}").is_err());
        let longest = "é".repeat(GROUP_NAME_BYTES_MAX / 2);
        assert!(validate_group_name(&longest).is_ok());
        assert_eq!(
            validate_group_name(&format!("{longest}a")).map_err(|e| e.code),
            Err(crate::ErrorCode::TooLarge)
        );
    }

    #[test]
    fn group_commands_parse_into_checked_actions() {
        use group_command::Command;
        let parse = |command: Command| {
            GroupCommand {
                command: Some(command),
            }
            .parse()
        };
        let create = CreateGroup {
            name: "friends".into(),
            members: vec![5, 3, 5],
            request_id: vec![9; GROUP_REQUEST_ID_BYTES],
        };
        assert_eq!(
            parse(Command::Create(create.clone())),
            Ok(GroupAction::Create {
                name: "friends".into(),
                members: vec![AccountId(3), AccountId(5)],
                request_id: [9; GROUP_REQUEST_ID_BYTES],
            })
        );
        let refusals = [
            Command::Create(CreateGroup {
                request_id: vec![9; 3],
                ..create.clone()
            }),
            Command::Create(CreateGroup {
                members: vec![0],
                ..create.clone()
            }),
            Command::Create(CreateGroup {
                name: String::new(),
                ..create.clone()
            }),
            Command::Add(AddGroupMembers {
                group: 1,
                accounts: Vec::new(),
            }),
            Command::Add(AddGroupMembers {
                group: 0,
                accounts: vec![2],
            }),
            Command::Remove(RemoveGroupMember {
                group: 1,
                account: 0,
            }),
            Command::Leave(GroupRef { group: 0 }),
            Command::Rename(RenameGroup {
                group: 1,
                name: "a\tb".into(),
            }),
        ];
        for refused in refusals {
            assert_eq!(
                parse(refused.clone()).map_err(|e| e.code),
                Err(crate::ErrorCode::Malformed),
                "{refused:?}"
            );
        }
        let everyone = Command::Create(CreateGroup {
            members: (1..=GROUP_MEMBERS_MAX as u64).collect(),
            ..create
        });
        assert_eq!(
            parse(everyone).map_err(|e| e.code),
            Err(crate::ErrorCode::GroupFull),
            "the asker makes one more"
        );
        assert_eq!(
            parse(Command::List(ListGroups {
                after_group: 0,
                limit: 10_000
            })),
            Ok(GroupAction::List {
                after: None,
                limit: GROUPS_PER_PAGE_MAX
            })
        );
        assert_eq!(
            parse(Command::List(ListGroups {
                after_group: 4,
                limit: 0
            })),
            Ok(GroupAction::List {
                after: Some(GroupId(4)),
                limit: GROUPS_PER_PAGE_MAX
            })
        );
        assert_eq!(
            GroupCommand { command: None }.parse().map_err(|e| e.code),
            Err(crate::ErrorCode::UnsupportedRequest)
        );
    }

    #[test]
    fn a_full_group_and_a_page_of_groups_fit_their_bounds() {
        use crate::limits::{FRAME_BYTES_MAX, GROUP_INFO_FIXED_BYTES_MAX};
        use prost::Message;
        let fixed = GroupInfo {
            group: u64::MAX,
            chat: vec![0xff; 16],
            name: "n".repeat(GROUP_NAME_BYTES_MAX),
            version: u64::MAX,
            home_region: u32::MAX,
            epoch: u64::MAX,
            members: Vec::new(),
            member_count: GROUP_MEMBERS_MAX as u32,
        };
        assert!(fixed.encoded_len() <= GROUP_INFO_FIXED_BYTES_MAX);
        let member = GroupMemberInfo {
            account: u64::MAX,
            admin: true,
        };
        let full = GroupInfo {
            members: vec![member; GROUP_MEMBERS_MAX],
            ..fixed.clone()
        };
        assert_eq!(
            full.encoded_len() - fixed.encoded_len(),
            GROUP_MEMBERS_MAX * crate::limits::GROUP_MEMBER_ENCODED_BYTES_MAX
        );
        let page = ClientResponse {
            body: Some(client_response::Body::Groups(GroupList {
                groups: vec![fixed; GROUPS_PER_PAGE_MAX as usize],
                next_after_group: u64::MAX,
            })),
        };
        assert!(page.encoded_len() <= FRAME_BYTES_MAX);
        assert!(full.encoded_len() <= FRAME_BYTES_MAX);
    }

    #[test]
    fn a_device_address_never_takes_more_than_its_bound() {
        use crate::limits::DEVICE_ADDR_ENCODED_BYTES_MAX;
        use prost::Message;
        let largest = DeviceAddr {
            account: u64::MAX,
            device: u32::MAX,
        };
        let one = Subscribe {
            add: vec![largest],
            ..Subscribe::default()
        };
        assert_eq!(one.encode_to_vec().len(), DEVICE_ADDR_ENCODED_BYTES_MAX);
        let many = Subscribe {
            add: vec![largest; 100],
            remove: vec![largest; 100],
            ..Subscribe::default()
        };
        assert_eq!(
            many.encode_to_vec().len(),
            200 * DEVICE_ADDR_ENCODED_BYTES_MAX
        );
        // A watch and a typing indicator fit their bound too.
        use crate::limits::SUBSCRIBE_SIGNAL_ENCODED_BYTES_MAX;
        let watch = Subscribe {
            watch: vec![PresenceWatchFrom {
                watcher: largest,
                account: u64::MAX,
                watch: true,
            }],
            ..Subscribe::default()
        };
        assert!(watch.encode_to_vec().len() <= SUBSCRIBE_SIGNAL_ENCODED_BYTES_MAX);
        let typing = Subscribe {
            typing: vec![TypingForward {
                from: largest,
                to: u64::MAX,
                typing: true,
                group: u64::MAX,
            }],
            ..Subscribe::default()
        };
        assert!(typing.encode_to_vec().len() <= SUBSCRIBE_SIGNAL_ENCODED_BYTES_MAX);
    }
}
