//! Home moves between regions: the handover of a device's requests, the parts of an account
//! exported by its old home and imported by its new one, and the directory's compare-and-set.

use super::{AccountInfo, DeviceAddr};

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
