//! Queue entries: what a device's queue holds (messages, receipts, and batches of either) and
//! a page of them as a fetch returns it.

use super::{DeviceAddr, EnvelopeKind, FallbackKeyState};

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

/// (Edge → region) the acknowledgements of several devices' queues that an edge gathered
/// while its previous ones were on their way: each is handled as its own `FetchQueue`, and
/// they are answered in the same order (`AcksDone`). Saves the edge and the region one
/// request each per device; the transactions stay one per device.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AckMany {
    /// Each device's request (`fetch` set, usually with an ack only), at most
    /// [`crate::limits::ACK_MANY_DEVICES_MAX`].
    #[prost(message, repeated, tag = "1")]
    pub acks: Vec<super::ForDevice>,
}

/// The answers to an [`AckMany`], one per request, in its order.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AcksDone {
    /// What each request got.
    #[prost(message, repeated, tag = "1")]
    pub outcomes: Vec<AckOutcome>,
}

/// What one request of an [`AckMany`] got.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AckOutcome {
    /// The page (as `FetchQueue` answers) or the refusal.
    #[prost(oneof = "ack_outcome::Outcome", tags = "1, 2")]
    pub outcome: Option<ack_outcome::Outcome>,
}

/// The variants of [`AckOutcome`].
pub mod ack_outcome {
    /// What one request of an `AckMany` got.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Outcome {
        /// Done: as `FetchQueue` answers.
        #[prost(message, tag = "1")]
        Queue(super::QueueBatch),
        /// Refused, as `FetchQueue` would have been.
        #[prost(message, tag = "2")]
        Error(super::super::ErrorReply),
    }
}
