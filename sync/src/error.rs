//! The errors of the sync crate: refused operations, and bytes from a peer or a file that do not
//! decode. None of them leaves a document half changed.

use relay_proto::{ChatId, DeviceAddress};

/// Why an operation, a sync message, a snapshot or a peer state was refused.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Chat sequences start at 1.
    #[error("chat sequence 0 does not exist: chat sequences start at 1")]
    ZeroSequence,
    /// An edit, deletion or reaction names a message this device does not hold.
    #[error("chat {chat}: this device holds no message {chat_seq}")]
    UnknownMessage {
        /// The chat.
        chat: ChatId,
        /// The chat sequence named.
        chat_seq: u64,
    },
    /// An append under a chat sequence that holds another message (another sender, client
    /// message id or time): chat sequences are given once, so one of the two is wrong.
    #[error("chat {chat}: chat sequence {chat_seq} already holds another message")]
    SequenceTaken {
        /// The chat.
        chat: ChatId,
        /// The chat sequence.
        chat_seq: u64,
    },
    /// Only a device of the sender's account edits or deletes a message for everyone.
    #[error(
        "chat {chat}: device {by} may not change message {chat_seq}, sent by account {sender_account}"
    )]
    NotTheSender {
        /// The chat.
        chat: ChatId,
        /// The message's chat sequence.
        chat_seq: u64,
        /// The device that tried.
        by: DeviceAddress,
        /// The account that sent the message.
        sender_account: relay_proto::AccountId,
    },
    /// A text longer than `MESSAGE_TEXT_BYTES_MAX`.
    #[error("a message text of {bytes} bytes is longer than the {max_bytes} bytes allowed")]
    TextTooLong {
        /// The text's length in bytes.
        bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// An attachment larger than `ATTACHMENT_BYTES_MAX`.
    #[error("a message attachment of {bytes} bytes is larger than the {max_bytes} bytes allowed")]
    AttachmentTooLarge {
        /// The attachment's length in bytes.
        bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A reaction longer than `REACTION_BYTES_MAX`.
    #[error("a reaction of {bytes} bytes is longer than the {max_bytes} bytes allowed")]
    ReactionTooLong {
        /// The reaction's length in bytes.
        bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// Bytes from a peer or a file that do not decode (a sync message, a snapshot, a peer
    /// state). Nothing was applied.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What the bytes were meant to be.
        what: &'static str,
        /// What is wrong with them.
        reason: String,
    },
    /// An epoch document that automerge refused (bytes that do not load, changes that do not
    /// apply).
    #[error("chat {chat}, epoch {epoch}: the document is refused: {source}")]
    Document {
        /// The chat.
        chat: ChatId,
        /// The epoch.
        epoch: u64,
        /// Automerge's reason.
        #[source]
        source: Box<automerge::AutomergeError>,
    },
    /// An epoch document whose first change is not the generation it claims (another chat,
    /// epoch or generation, or not a compaction at all).
    #[error(
        "chat {chat}, epoch {epoch}: the document is not generation {generation} it claims to be: {reason}"
    )]
    InvalidGeneration {
        /// The chat.
        chat: ChatId,
        /// The epoch.
        epoch: u64,
        /// The generation claimed.
        generation: u64,
        /// What does not match.
        reason: &'static str,
    },
}

impl SyncError {
    pub(crate) fn document(chat: ChatId, epoch: u64, source: automerge::AutomergeError) -> Self {
        SyncError::Document {
            chat,
            epoch,
            source: Box::new(source),
        }
    }

    pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        SyncError::Malformed {
            what,
            reason: reason.into(),
        }
    }
}
