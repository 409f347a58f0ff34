//! What travels inside each Olm ciphertext: the plaintext no server ever sees.
//!
//! A content is a text message, a read receipt, a change to an earlier message (an edit, a
//! deletion for everyone, a reaction) or a sync message for one of the sender's own devices.
//! Read receipts and changes are ordinary envelopes to the peer's devices and the sender's own
//! other devices, so no server learns that anyone read, edited or reacted to anything; a sync
//! message travels in the chat of the account with itself, to its own devices only, and so
//! does a history bootstrap: the reference to an encrypted snapshot of every chat, which a
//! device that approved a link sends to the new device only. A group key is a sending device's
//! Megolm session key for one group ([`GroupKey`]), sent to each member device that does not
//! hold it yet, over Olm only (see [`crate::group_keys`]).
//!
//! Forward compatible: a content of a kind this build does not know decodes with no body and is
//! skipped by the receiver ([`Content::is_unknown_kind`]), never shown as undecryptable. Tags
//! are never reused; a retired field keeps its number reserved in a comment.

use prost::Message;
use relay_proto::{AccountId, ClientMessageId, DeviceAddress, DeviceId};
use relay_sync::Hlc;
use relay_sync::limits::{REACTION_BYTES_MAX, SYNC_MESSAGE_BYTES_MAX};
use vodozemac::megolm::{InboundGroupSession, SessionConfig, SessionKey};

use crate::blob::BlobRef;
use crate::error::{ClientError, Result};
use crate::group_keys::GroupKeyError;
use crate::limits::{REACTION_CHARS_MAX, READ_RECEIPT_IDS_MAX, TEXT_BYTES_MAX};
use crate::media::Attachment;

/// The plaintext of one envelope.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Content {
    /// What it is.
    #[prost(oneof = "body::Body", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub body: Option<body::Body>,
}

/// The variants of [`Content`].
pub mod body {
    /// What a content holds.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Body {
        /// A text message.
        #[prost(message, tag = "1")]
        Text(super::Text),
        /// Messages marked read.
        #[prost(message, tag = "2")]
        Read(super::ReadReceipt),
        /// A new text for an earlier message of the sender's account.
        #[prost(message, tag = "3")]
        Edit(super::Edit),
        /// An earlier message of the sender's account deleted for everyone.
        #[prost(message, tag = "4")]
        Delete(super::Delete),
        /// A reaction to a message of the chat (or its removal).
        #[prost(message, tag = "5")]
        React(super::React),
        /// A sync message of the history, for one own device.
        #[prost(message, tag = "6")]
        Sync(super::SyncMessage),
        /// The history of every chat as an encrypted blob, for a newly linked own device.
        #[prost(message, tag = "7")]
        Bootstrap(super::HistoryBootstrap),
        /// A sending device's Megolm session key for one group.
        #[prost(message, tag = "8")]
        GroupKey(super::GroupKey),
        /// A text message to a group, inside a Megolm message (never over Olm).
        #[prost(message, tag = "9")]
        GroupText(super::GroupText),
    }
}

/// A text message.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Text {
    /// The text.
    #[prost(string, tag = "1")]
    pub body: String,
    /// When the sender wrote it (ms since the Unix epoch, the sender's clock).
    #[prost(uint64, tag = "2")]
    pub sent_at_ms: u64,
    /// The other account of the 1:1 chat as the sender sees it, so the sender's own other
    /// devices can file the message under the right chat.
    #[prost(uint64, tag = "3")]
    pub peer_account: u64,
    /// A file, whose caption the text is ([`crate::media`]).
    #[prost(message, optional, tag = "4")]
    pub attachment: Option<Attachment>,
}

/// A text message to a group. It travels only inside the group message of a sending
/// device's Megolm session ([`crate::group_keys`]); the group is named inside too, so a
/// message cannot be replayed into another group's chat.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupText {
    /// The group.
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The text.
    #[prost(string, tag = "2")]
    pub body: String,
    /// When the sender wrote it (ms since the Unix epoch, the sender's clock).
    #[prost(uint64, tag = "3")]
    pub sent_at_ms: u64,
    /// A file, whose caption the text is ([`crate::media`]).
    #[prost(message, optional, tag = "4")]
    pub attachment: Option<Attachment>,
}

/// A read receipt: these messages of the chat were read.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ReadReceipt {
    /// Client message ids (16 bytes each) of the messages read.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub client_message_ids: Vec<Vec<u8>>,
    /// When they were read (ms since the Unix epoch, the reader's clock).
    #[prost(uint64, tag = "2")]
    pub read_at_ms: u64,
    /// The other account of the 1:1 chat as the reader sees it (for the reader's other devices);
    /// for messages of a group, the account that sent them.
    #[prost(uint64, tag = "3")]
    pub peer_account: u64,
    /// The group the messages are of; 0: the 1:1 chat's. (A group's read receipt goes to the
    /// messages' sender only, over Olm in the 1:1 chat, never to the group.)
    #[prost(uint64, tag = "4")]
    pub group: u64,
}

/// Names a message of a chat everywhere: its sending device and that device's id for it (the
/// chat sequence differs between regions).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MessageRef {
    /// The sending device's account.
    #[prost(uint64, tag = "1")]
    pub sender_account: u64,
    /// The sending device.
    #[prost(uint32, tag = "2")]
    pub sender_device: u32,
    /// The sender's client message id (16 bytes).
    #[prost(bytes = "vec", tag = "3")]
    pub client_message_id: Vec<u8>,
}

/// A change's hybrid logical clock reading; its device is the envelope's sender.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Stamp {
    /// Wall-clock time, in ms since the Unix epoch, by the changing device's clock.
    #[prost(uint64, tag = "1")]
    pub wall_ms: u64,
    /// Events after `wall_ms` with no later wall-clock time.
    #[prost(uint32, tag = "2")]
    pub counter: u32,
}

/// A new text for an earlier message.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Edit {
    /// The message edited (sent by the editing account).
    #[prost(message, optional, tag = "1")]
    pub target: Option<MessageRef>,
    /// The new text.
    #[prost(string, tag = "2")]
    pub text: String,
    /// When, by the editing device's clock.
    #[prost(message, optional, tag = "3")]
    pub at: Option<Stamp>,
    /// The other account of the 1:1 chat as the editor sees it (for its other devices).
    #[prost(uint64, tag = "4")]
    pub peer_account: u64,
}

/// A deletion for everyone.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Delete {
    /// The message deleted (sent by the deleting account).
    #[prost(message, optional, tag = "1")]
    pub target: Option<MessageRef>,
    /// When, by the deleting device's clock.
    #[prost(message, optional, tag = "2")]
    pub at: Option<Stamp>,
    /// The other account of the 1:1 chat as the deleter sees it.
    #[prost(uint64, tag = "3")]
    pub peer_account: u64,
}

/// A reaction to a message; an empty reaction takes the device's reaction back.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct React {
    /// The message reacted to (sent by either account of the chat).
    #[prost(message, optional, tag = "1")]
    pub target: Option<MessageRef>,
    /// The reaction: one emoji or a short string (see [`check_reaction`]).
    #[prost(string, tag = "2")]
    pub reaction: String,
    /// When, by the reacting device's clock.
    #[prost(message, optional, tag = "3")]
    pub at: Option<Stamp>,
    /// The other account of the 1:1 chat as the reacting device sees it.
    #[prost(uint64, tag = "4")]
    pub peer_account: u64,
}

/// A relay-sync message for one device of the sender's own account.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SyncMessage {
    /// The own device it is for; the account's other devices skip it.
    #[prost(uint32, tag = "1")]
    pub to_device: u32,
    /// The sync message (at most `SYNC_MESSAGE_BYTES_MAX` bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub bytes: Vec<u8>,
}

/// Where a newly linked own device finds the history: the [`BlobRef`] of the encrypted
/// snapshot the approving device uploaded (the key travels only here, inside Olm).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HistoryBootstrap {
    /// The new device it is for; the account's other devices skip it.
    #[prost(uint32, tag = "1")]
    pub to_device: u32,
    /// The region holding the blob (not 0).
    #[prost(uint32, tag = "2")]
    pub region: u32,
    /// The blob's id there (`BLOB_ID_BYTES` bytes).
    #[prost(bytes = "vec", tag = "3")]
    pub id: Vec<u8>,
    /// The key it is sealed under (`BLOB_KEY_BYTES` bytes).
    #[prost(bytes = "vec", tag = "4")]
    pub key: Vec<u8>,
    /// Its size in bytes (1 to `BLOB_BYTES_MAX`).
    #[prost(uint64, tag = "5")]
    pub size: u64,
    /// The digest of its ciphertext (`BLOB_DIGEST_BYTES` bytes), under `format`'s hash.
    #[prost(bytes = "vec", tag = "6")]
    pub digest: Vec<u8>,
    /// The blob's format ([`BlobFormat::number`](crate::blob::BlobFormat::number); 0, from a
    /// sender before the field: format 1).
    #[prost(uint32, tag = "7")]
    pub format: u32,
}

impl HistoryBootstrap {
    /// The blob reference it carries, if every field is well formed.
    pub fn reference(&self) -> Option<BlobRef> {
        BlobRef::from_parts(
            self.format,
            self.region,
            &self.id,
            &self.key,
            self.size,
            &self.digest,
        )
    }
}

/// A sending device's Megolm session key for one group, at the session's index when it was
/// shared: the receiver decrypts that message of the session and every later one, none before.
/// The sender is the Olm session's authenticated device, never a field of the content.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupKey {
    /// The group (the directory numbers groups from 1).
    #[prost(uint64, tag = "1")]
    pub group: u64,
    /// The session's id (vodozemac's base64 of its Ed25519 public key).
    #[prost(string, tag = "2")]
    pub session_id: String,
    /// The signed Megolm session key (vodozemac `SessionKey` bytes).
    #[prost(bytes = "vec", tag = "3")]
    pub session_key: Vec<u8>,
}

impl GroupKey {
    /// The session key it carries, if every field is well formed: a group other than 0, a
    /// session key whose signature verifies, and a session id that is that key's.
    pub fn session_key(&self) -> std::result::Result<SessionKey, GroupKeyError> {
        if self.group == 0 {
            return Err(GroupKeyError::MalformedKey("group 0 does not exist".into()));
        }
        let key = SessionKey::from_bytes(&self.session_key)
            .map_err(|error| GroupKeyError::MalformedKey(error.to_string()))?;
        // The key's own id is its signing key's; a content naming another id is not to be
        // filed under that id.
        let id = InboundGroupSession::new(&key, SessionConfig::version_1()).session_id();
        if id != self.session_id {
            return Err(GroupKeyError::MalformedKey(format!(
                "the key is of session {id}, the content names {:?}",
                self.session_id
            )));
        }
        Ok(key)
    }
}

/// A change to an earlier message, as a receiver applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new text.
    Edit(String),
    /// Deleted for everyone.
    Delete,
    /// A reaction (empty: taken back).
    React(String),
}

impl MessageRef {
    /// The reference to `sender`'s message `id`.
    pub fn new(sender: DeviceAddress, id: ClientMessageId) -> Self {
        MessageRef {
            sender_account: sender.account.0,
            sender_device: sender.device.0,
            client_message_id: id.0.to_vec(),
        }
    }

    /// The sending device and id, if the id is well formed.
    pub fn parts(&self) -> Option<(DeviceAddress, ClientMessageId)> {
        let id = ClientMessageId::from_bytes(&self.client_message_id).ok()?;
        Some((
            DeviceAddress {
                account: AccountId(self.sender_account),
                device: DeviceId(self.sender_device),
            },
            id,
        ))
    }
}

impl Stamp {
    /// The stamp of `at` (its device travels as the envelope's sender).
    pub fn of(at: Hlc) -> Self {
        Stamp {
            wall_ms: at.wall_ms,
            counter: at.counter,
        }
    }

    /// The reading made by `device`.
    pub fn hlc(self, device: DeviceAddress) -> Hlc {
        Hlc {
            wall_ms: self.wall_ms,
            counter: self.counter,
            device,
        }
    }
}

/// Checks a reaction: at most [`REACTION_BYTES_MAX`] bytes and [`REACTION_CHARS_MAX`]
/// characters (one emoji, even a family or a flag, or a short word), no control or format
/// characters but the joiners and selectors emoji are built with.
pub fn check_reaction(reaction: &str) -> Result<()> {
    let allowed = |c: char| {
        !c.is_control()
            && !matches!(c, '\u{200b}'..='\u{200c}' | '\u{200e}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if reaction.len() > REACTION_BYTES_MAX
        || reaction.chars().count() > REACTION_CHARS_MAX
        || !reaction.chars().all(allowed)
        || reaction.trim().len() != reaction.len()
    {
        return Err(ClientError::Invalid(format!(
            "a reaction is one emoji or a short word: at most {REACTION_CHARS_MAX} characters \
             and {REACTION_BYTES_MAX} bytes, no control characters or surrounding spaces"
        )));
    }
    Ok(())
}

impl Content {
    /// A text message content, refusing texts over [`TEXT_BYTES_MAX`].
    pub fn text(body: &str, sent_at_ms: u64, peer_account: u64) -> Result<Self> {
        Content::message(body, None, sent_at_ms, peer_account)
    }

    /// A message content: a text, or a file with `body` as its caption; refuses texts over
    /// [`TEXT_BYTES_MAX`] and malformed attachments.
    pub fn message(
        body: &str,
        attachment: Option<&Attachment>,
        sent_at_ms: u64,
        peer_account: u64,
    ) -> Result<Self> {
        if body.len() > TEXT_BYTES_MAX {
            return Err(ClientError::Invalid(format!(
                "the text is {} bytes; the limit is {TEXT_BYTES_MAX}",
                body.len()
            )));
        }
        if let Some(attachment) = attachment {
            attachment.check().map_err(ClientError::Invalid)?;
        }
        Ok(Content {
            body: Some(body::Body::Text(Text {
                body: body.to_owned(),
                sent_at_ms,
                peer_account,
                attachment: attachment.cloned(),
            })),
        })
    }

    /// A read receipt content for up to [`READ_RECEIPT_IDS_MAX`] client message ids.
    pub fn read(
        client_message_ids: Vec<[u8; 16]>,
        read_at_ms: u64,
        peer_account: u64,
    ) -> Result<Self> {
        if client_message_ids.is_empty() || client_message_ids.len() > READ_RECEIPT_IDS_MAX {
            return Err(ClientError::Invalid(format!(
                "a read receipt names 1 to {READ_RECEIPT_IDS_MAX} messages"
            )));
        }
        Ok(Content {
            body: Some(body::Body::Read(ReadReceipt {
                client_message_ids: client_message_ids.into_iter().map(Vec::from).collect(),
                read_at_ms,
                peer_account,
                group: 0,
            })),
        })
    }

    /// A read receipt for messages of `group` that `sender_account` sent.
    pub fn group_read(
        group: u64,
        client_message_ids: Vec<[u8; 16]>,
        read_at_ms: u64,
        sender_account: u64,
    ) -> Result<Self> {
        let mut content = Content::read(client_message_ids, read_at_ms, sender_account)?;
        if let Some(body::Body::Read(read)) = &mut content.body {
            read.group = group;
        }
        Ok(content)
    }

    /// A change to `target` made at `at`, in the chat with `peer_account`.
    pub fn change(target: MessageRef, change: &Change, at: Hlc, peer_account: u64) -> Result<Self> {
        let at = Some(Stamp::of(at));
        let target = Some(target);
        let body = match change {
            Change::Edit(text) => {
                check_text(text)?;
                body::Body::Edit(Edit {
                    target,
                    text: text.clone(),
                    at,
                    peer_account,
                })
            }
            Change::Delete => body::Body::Delete(Delete {
                target,
                at,
                peer_account,
            }),
            Change::React(reaction) => {
                if !reaction.is_empty() {
                    check_reaction(reaction)?;
                }
                body::Body::React(React {
                    target,
                    reaction: reaction.clone(),
                    at,
                    peer_account,
                })
            }
        };
        Ok(Content { body: Some(body) })
    }

    /// A sync message for the own device `to_device`.
    pub fn sync(to_device: DeviceId, bytes: Vec<u8>) -> Result<Self> {
        if bytes.is_empty() || bytes.len() > SYNC_MESSAGE_BYTES_MAX {
            return Err(ClientError::Invalid(format!(
                "a sync message is 1 to {SYNC_MESSAGE_BYTES_MAX} bytes"
            )));
        }
        Ok(Content {
            body: Some(body::Body::Sync(SyncMessage {
                to_device: to_device.0,
                bytes,
            })),
        })
    }

    /// A history bootstrap for the new own device `to_device`: where its snapshot blob is.
    pub fn bootstrap(to_device: DeviceId, reference: &BlobRef) -> Self {
        Content {
            body: Some(body::Body::Bootstrap(HistoryBootstrap {
                to_device: to_device.0,
                region: reference.region,
                id: reference.id.to_vec(),
                key: reference.key.to_vec(),
                size: reference.size,
                digest: reference.digest.to_vec(),
                format: reference.format.number(),
            })),
        }
    }

    /// A text for `group`, refusing texts over [`TEXT_BYTES_MAX`].
    pub fn group_text(group: u64, body: &str, sent_at_ms: u64) -> Result<Self> {
        Content::group_message(group, body, None, sent_at_ms)
    }

    /// A message for `group`: a text, or a file with `body` as its caption; refuses texts
    /// over [`TEXT_BYTES_MAX`] and malformed attachments.
    pub fn group_message(
        group: u64,
        body: &str,
        attachment: Option<&Attachment>,
        sent_at_ms: u64,
    ) -> Result<Self> {
        check_text(body)?;
        if let Some(attachment) = attachment {
            attachment.check().map_err(ClientError::Invalid)?;
        }
        Ok(Content {
            body: Some(body::Body::GroupText(GroupText {
                group,
                body: body.to_owned(),
                sent_at_ms,
                attachment: attachment.cloned(),
            })),
        })
    }

    /// A group key for one member device (see [`crate::group_keys::GroupKeys::prepare_send`]).
    pub fn group_key(key: GroupKey) -> Self {
        Content {
            body: Some(body::Body::GroupKey(key)),
        }
    }

    /// The other account of the 1:1 chat as the sender sees it.
    pub fn peer_account(&self) -> Option<u64> {
        match self.body.as_ref()? {
            body::Body::Text(text) => Some(text.peer_account),
            body::Body::Read(read) => Some(read.peer_account),
            body::Body::Edit(edit) => Some(edit.peer_account),
            body::Body::Delete(delete) => Some(delete.peer_account),
            body::Body::React(react) => Some(react.peer_account),
            body::Body::Sync(_)
            | body::Body::Bootstrap(_)
            | body::Body::GroupKey(_)
            | body::Body::GroupText(_) => None,
        }
    }

    /// Whether `bytes` is a well-formed content of a kind this build does not know (a newer
    /// sender's): to skip, not to report as undecryptable.
    pub fn is_unknown_kind(bytes: &[u8]) -> bool {
        !bytes.is_empty() && Content::decode(bytes).is_ok_and(|content| content.body.is_none())
    }

    /// The encoded plaintext.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes a plaintext, checking the bounds a well-behaved sender keeps.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let content = Content::decode(bytes)
            .map_err(|error| ClientError::Crypto(format!("undecodable content: {error}")))?;
        match &content.body {
            None => Err(ClientError::Crypto("content of an unknown kind".into())),
            Some(body::Body::Text(text)) if text.body.len() > TEXT_BYTES_MAX => {
                Err(ClientError::Crypto("text larger than its limit".into()))
            }
            Some(body::Body::GroupText(text))
                if text.body.len() > TEXT_BYTES_MAX || text.group == 0 =>
            {
                Err(ClientError::Crypto("malformed group text".into()))
            }
            Some(
                body::Body::Text(Text {
                    attachment: Some(attachment),
                    ..
                })
                | body::Body::GroupText(GroupText {
                    attachment: Some(attachment),
                    ..
                }),
            ) if attachment.check().is_err() => {
                let reason = attachment.check().err().unwrap_or_default();
                Err(ClientError::Crypto(format!(
                    "malformed attachment: {reason}"
                )))
            }
            Some(body::Body::Read(read))
                if read.client_message_ids.is_empty()
                    || read.client_message_ids.len() > READ_RECEIPT_IDS_MAX
                    || read.client_message_ids.iter().any(|id| id.len() != 16) =>
            {
                Err(ClientError::Crypto("malformed read receipt".into()))
            }
            Some(body::Body::Edit(edit))
                if !well_formed(&edit.target, edit.at) || edit.text.len() > TEXT_BYTES_MAX =>
            {
                Err(ClientError::Crypto("malformed edit".into()))
            }
            Some(body::Body::Delete(delete)) if !well_formed(&delete.target, delete.at) => {
                Err(ClientError::Crypto("malformed deletion".into()))
            }
            Some(body::Body::React(react))
                if !well_formed(&react.target, react.at)
                    || (!react.reaction.is_empty() && check_reaction(&react.reaction).is_err()) =>
            {
                Err(ClientError::Crypto("malformed reaction".into()))
            }
            Some(body::Body::Sync(sync))
                if sync.bytes.is_empty() || sync.bytes.len() > SYNC_MESSAGE_BYTES_MAX =>
            {
                Err(ClientError::Crypto("malformed sync message".into()))
            }
            Some(body::Body::Bootstrap(bootstrap)) if bootstrap.reference().is_none() => {
                Err(ClientError::Crypto("malformed history bootstrap".into()))
            }
            Some(body::Body::GroupKey(key)) => match key.session_key() {
                Ok(_) => Ok(content),
                Err(error) => Err(ClientError::Crypto(format!("malformed group key: {error}"))),
            },
            Some(_) => Ok(content),
        }
    }
}

/// Refuses texts over [`TEXT_BYTES_MAX`].
pub(crate) fn check_text(text: &str) -> Result<()> {
    if text.len() > TEXT_BYTES_MAX {
        return Err(ClientError::Invalid(format!(
            "the text is {} bytes; the limit is {TEXT_BYTES_MAX}",
            text.len()
        )));
    }
    Ok(())
}

/// Whether a change names a message with a well-formed id and carries its stamp.
fn well_formed(target: &Option<MessageRef>, at: Option<Stamp>) -> bool {
    at.is_some() && target.as_ref().and_then(MessageRef::parts).is_some()
}

#[cfg(test)]
mod tests {
    use relay_proto::limits::{BLOB_BYTES_MAX, BLOB_DIGEST_BYTES, BLOB_ID_BYTES};

    use super::*;
    use crate::blob::{BLOB_KEY_BYTES, BlobFormat};

    #[test]
    fn a_file_travels_with_its_caption_and_a_malformed_one_is_refused() {
        let sealed = crate::blob::seal(b"the file");
        let reference = BlobRef {
            format: sealed.format,
            region: 1,
            id: [3; BLOB_ID_BYTES],
            key: sealed.key,
            size: sealed.ciphertext.len() as u64,
            digest: sealed.digest,
        };
        let description = crate::media::FileDescription {
            file_name: "notes.txt".into(),
            ..Default::default()
        };
        let attachment = Attachment::new(&reference, 8, &description).expect("attachment");
        for content in [
            Content::message("a caption", Some(&attachment), 5, 2).expect("1:1"),
            Content::group_message(9, "", Some(&attachment), 5).expect("group"),
        ] {
            let decoded = Content::from_bytes(&content.to_bytes()).expect("decodes");
            let carried = match decoded.body {
                Some(body::Body::Text(text)) => text.attachment,
                Some(body::Body::GroupText(text)) => text.attachment,
                other => panic!("{other:?}"),
            };
            assert!(carried.and_then(|carried| carried.reference()) == Some(reference.clone()));
        }
        let mut broken = attachment.clone();
        broken.digest.truncate(5);
        assert!(
            Content::message("x", Some(&broken), 5, 2).is_err(),
            "refused to send"
        );
        let forged = Content {
            body: Some(body::Body::Text(Text {
                body: "x".into(),
                sent_at_ms: 5,
                peer_account: 2,
                attachment: Some(broken),
            })),
        };
        let refused = Content::from_bytes(&forged.to_bytes()).expect_err("refused on receipt");
        assert!(
            refused.to_string().contains("malformed attachment"),
            "{refused}"
        );
    }

    #[test]
    fn text_and_read_round_trip() {
        let text = Content::text("héllo", 1_700_000_000_000, 7).expect("text");
        assert_eq!(Content::from_bytes(&text.to_bytes()).expect("decode"), text);
        let read = Content::read(vec![[1; 16], [2; 16]], 5, 7).expect("read");
        let decoded = Content::from_bytes(&read.to_bytes()).expect("decode");
        assert_eq!(decoded, read);
        match decoded.body {
            Some(body::Body::Read(receipt)) => {
                assert_eq!(receipt.client_message_ids[1], vec![2; 16])
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bounds_are_enforced_both_ways() {
        assert!(Content::text(&"x".repeat(TEXT_BYTES_MAX + 1), 0, 1).is_err());
        assert!(Content::read(Vec::new(), 0, 1).is_err());
        assert!(Content::read(vec![[0; 16]; READ_RECEIPT_IDS_MAX + 1], 0, 1).is_err());
        let bad = Content {
            body: Some(body::Body::Read(ReadReceipt {
                client_message_ids: vec![vec![1; 3]],
                read_at_ms: 0,
                peer_account: 1,
                group: 0,
            })),
        };
        assert!(Content::from_bytes(&bad.to_bytes()).is_err());
        assert!(Content::from_bytes(&Content { body: None }.to_bytes()).is_err());
        assert!(Content::from_bytes(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn changes_and_sync_messages_round_trip_and_are_bounded() {
        let sender = DeviceAddress {
            account: AccountId(2),
            device: DeviceId(1),
        };
        let at = Hlc {
            wall_ms: 5,
            counter: 1,
            device: sender,
        };
        let target = MessageRef::new(sender, ClientMessageId([7; 16]));
        assert_eq!(target.parts(), Some((sender, ClientMessageId([7; 16]))));
        for change in [
            Change::Edit("new words".into()),
            Change::Delete,
            Change::React("👍".into()),
            Change::React("👨‍👩‍👧‍👦".into()),
            Change::React(String::new()),
        ] {
            let content = Content::change(target.clone(), &change, at, 1).expect("change");
            assert_eq!(
                Content::from_bytes(&content.to_bytes()).expect("decode"),
                content
            );
            assert_eq!(content.peer_account(), Some(1));
        }
        let sync = Content::sync(DeviceId(2), vec![1, 2, 3]).expect("sync");
        assert_eq!(Content::from_bytes(&sync.to_bytes()).expect("decode"), sync);
        assert!(Content::sync(DeviceId(2), Vec::new()).is_err());
        assert!(Content::sync(DeviceId(2), vec![0; SYNC_MESSAGE_BYTES_MAX + 1]).is_err());

        // Reactions: one emoji or a short word, nothing that could drive a terminal.
        for bad in [
            "a long sentence of words",
            "\u{1b}[2J",
            "x\u{202e}",
            " 👍",
            "👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍",
        ] {
            assert!(check_reaction(bad).is_err(), "{bad:?}");
            assert!(Content::change(target.clone(), &Change::React(bad.into()), at, 1).is_err());
        }
        assert!(
            Content::change(
                target.clone(),
                &Change::Edit("x".repeat(TEXT_BYTES_MAX + 1)),
                at,
                1
            )
            .is_err()
        );

        // A peer's malformed change is refused on arrival: no stamp, a short id, a bad reaction.
        let malformed = [
            body::Body::Edit(Edit {
                target: Some(target.clone()),
                text: "x".into(),
                at: None,
                peer_account: 1,
            }),
            body::Body::Delete(Delete {
                target: Some(MessageRef {
                    client_message_id: vec![1; 3],
                    ..target.clone()
                }),
                at: Some(Stamp::of(at)),
                peer_account: 1,
            }),
            body::Body::React(React {
                target: Some(target.clone()),
                reaction: "\u{7}".into(),
                at: Some(Stamp::of(at)),
                peer_account: 1,
            }),
        ];
        for body in malformed {
            let bytes = Content { body: Some(body) }.to_bytes();
            assert!(Content::from_bytes(&bytes).is_err());
            assert!(!Content::is_unknown_kind(&bytes));
        }
    }

    #[test]
    fn a_history_bootstrap_round_trips_and_a_malformed_one_is_refused() {
        let reference = BlobRef {
            format: BlobFormat::V2,
            region: 1,
            id: [3; BLOB_ID_BYTES],
            key: [4; BLOB_KEY_BYTES],
            size: 4096,
            digest: [5; BLOB_DIGEST_BYTES],
        };
        let content = Content::bootstrap(DeviceId(2), &reference);
        let decoded = Content::from_bytes(&content.to_bytes()).expect("decode");
        assert_eq!(decoded, content);
        assert_eq!(decoded.peer_account(), None);
        match decoded.body {
            Some(body::Body::Bootstrap(bootstrap)) => {
                assert_eq!(bootstrap.to_device, 2);
                assert_eq!(bootstrap.reference(), Some(reference.clone()));
            }
            other => panic!("unexpected {other:?}"),
        }

        // Every field is checked on arrival: a peer cannot make the device fetch region 0, a
        // blob larger than any the store keeps, or open it with a short key.
        let good = HistoryBootstrap {
            to_device: 2,
            region: 1,
            id: vec![3; BLOB_ID_BYTES],
            key: vec![4; BLOB_KEY_BYTES],
            size: 4096,
            digest: vec![5; BLOB_DIGEST_BYTES],
            format: 2,
        };
        // A bootstrap from a sender before formats is format 1.
        assert_eq!(
            HistoryBootstrap {
                format: 0,
                ..good.clone()
            }
            .reference()
            .map(|reference| reference.format),
            Some(BlobFormat::V1)
        );
        let malformed = [
            HistoryBootstrap {
                region: 0,
                ..good.clone()
            },
            HistoryBootstrap {
                size: 0,
                ..good.clone()
            },
            HistoryBootstrap {
                size: BLOB_BYTES_MAX + 1,
                ..good.clone()
            },
            HistoryBootstrap {
                id: vec![3; BLOB_ID_BYTES - 1],
                ..good.clone()
            },
            HistoryBootstrap {
                key: vec![4; BLOB_KEY_BYTES + 1],
                ..good.clone()
            },
            HistoryBootstrap {
                digest: Vec::new(),
                ..good.clone()
            },
            HistoryBootstrap {
                format: 3,
                ..good.clone()
            },
        ];
        for bootstrap in malformed {
            let bytes = Content {
                body: Some(body::Body::Bootstrap(bootstrap.clone())),
            }
            .to_bytes();
            assert!(Content::from_bytes(&bytes).is_err(), "{bootstrap:?}");
            assert!(!Content::is_unknown_kind(&bytes));
        }
        let bytes = Content {
            body: Some(body::Body::Bootstrap(good)),
        }
        .to_bytes();
        assert!(Content::from_bytes(&bytes).is_ok());
    }

    #[test]
    fn a_group_key_round_trips_and_a_malformed_one_is_refused() {
        use vodozemac::megolm::GroupSession;
        let session = GroupSession::new(SessionConfig::version_1());
        let key = GroupKey {
            group: 7,
            session_id: session.session_id(),
            session_key: session.session_key().to_bytes(),
        };
        let content = Content::group_key(key.clone());
        let decoded = Content::from_bytes(&content.to_bytes()).expect("decode");
        assert_eq!(decoded, content);
        assert_eq!(decoded.peer_account(), None);
        match decoded.body {
            Some(body::Body::GroupKey(decoded)) => {
                assert_eq!(decoded, key);
                assert!(decoded.session_key().is_ok());
            }
            other => panic!("unexpected {other:?}"),
        }

        // Group 0, a key whose signature fails, a short key, a session id that is not the key's.
        let mut damaged = key.session_key.clone();
        damaged[40] ^= 1;
        let malformed = [
            GroupKey {
                group: 0,
                ..key.clone()
            },
            GroupKey {
                session_key: damaged,
                ..key.clone()
            },
            GroupKey {
                session_key: key.session_key[..100].to_vec(),
                ..key.clone()
            },
            GroupKey {
                session_id: GroupSession::new(SessionConfig::version_1()).session_id(),
                ..key.clone()
            },
        ];
        for bad in malformed {
            let bytes = Content::group_key(bad.clone()).to_bytes();
            let error = Content::from_bytes(&bytes).expect_err("refused");
            assert!(
                error.to_string().contains("malformed group key"),
                "{bad:?}: {error}"
            );
            assert!(!Content::is_unknown_kind(&bytes));
        }

        // Random bytes, alone and after a group key's tag, never panic the decoder.
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(8);
        let real = content.to_bytes();
        for round in 0..3_000 {
            let mut bytes = vec![0u8; rand::Rng::random_range(&mut rng, 0..300)];
            rand::RngCore::fill_bytes(&mut rng, &mut bytes);
            if round % 2 == 0 {
                // A group key's field tag and a length, then noise.
                bytes.splice(0..0, [0x42, (bytes.len() as u8) & 0x7f]);
            }
            let _ = Content::from_bytes(&bytes);
            let mut mutated = real.clone();
            let at = round % mutated.len();
            mutated[at] ^= 1 << (round % 8);
            if let Ok(Content {
                body: Some(body::Body::GroupKey(decoded)),
            }) = Content::from_bytes(&mutated)
            {
                // What decodes is well formed: a verified key under its own id.
                assert!(decoded.session_key().is_ok());
            }
        }
    }

    #[test]
    fn a_content_of_a_newer_kind_is_told_from_garbage() {
        // Field 15 of a newer build's oneof: this build decodes no body.
        let newer = [0x7a, 0x02, 0x08, 0x01];
        assert!(Content::from_bytes(&newer).is_err());
        assert!(Content::is_unknown_kind(&newer));
        assert!(!Content::is_unknown_kind(&[0xff, 0xff, 0xff]));
        assert!(!Content::is_unknown_kind(&[]));
    }
}
