//! Protobuf messages (prost) for client↔edge, edge↔region and region↔region.
//!
//! Tags are never reused: a retired field keeps its number reserved in a comment. Every request
//! travels on its own QUIC bidirectional stream as one frame, answered by one frame; the control
//! stream of a device connection (opened with [`Hello`]) carries authentication and then
//! [`ServerPush`] frames, and an edge's subscription stream to a region carries [`Subscribe`]
//! requests one way (devices connected, presence watches, typing indicators) and pushes the
//! other (queue hints, presence updates, typing notices; see [`presence`]).
//!
//! This file holds what the protocols share and the device link's requests and answers; beside
//! it, one file per family: `envelope`, `queue` (queue entries and pages), `linking`, `groups`,
//! `blobs`, `moves` (home moves), `presence`, `push`, `block`, `entry_run` and `region` (the
//! edge ↔ region and region ↔ region requests and answers).

mod blobs;
mod block;
mod entry_run;
mod envelope;
mod groups;
mod linking;
mod moves;
mod presence;
mod push;
mod queue;
mod region;

pub use blobs::{
    BlobAt, BlobBegin, BlobCommand, BlobDigest, BlobStatus, ForBlob, MediaAccess, MediaRequest,
    blob_command,
};
pub use block::{BlockAction, BlockedAccounts, SetBlock};
pub use entry_run::EntryRun;
pub use envelope::{
    DeviceCiphertext, Envelope, EnvelopeKind, MESSAGE_TYPE_HOLDS_GROUP_SESSION,
    MESSAGE_TYPE_OLM_NORMAL, MESSAGE_TYPE_OLM_PRE_KEY, ParsedEnvelope, ParsedGroup,
};
pub use groups::{
    AddGroupMembers, AskGroupMembers, CreateGroup, ForGroup, GroupAction, GroupCommand, GroupInfo,
    GroupList, GroupMemberInfo, GroupRef, GroupVersion, ListGroups, RemoveGroupMember, RenameGroup,
    SetGroupAdmin, group_command, validate_group_name,
};
pub use linking::{
    ApproveLink, DeviceCommand, DeviceList, LinkRequestInfo, LinkRequests, LinkStatus, OpenPairing,
    Pairing, RemoveDevice, RequestLink, device_command, link_proof_payload,
};
pub use moves::{
    AccountImported, AccountMoved, HandOver, HandedOver, HomeMoved, ImportAccount, MoveAccountHome,
    MoveHome, MovedChatHead, MovedChatLog, MovedKey, MovedLogEntry, MovedQueueEntry,
    MovedQueueHead, RoutedHome,
};
pub use push::{PushAction, PushState, SetPush, WebPushSubscription};
pub use queue::{
    AckMany, AckOutcome, AcksDone, QueueBatch, QueueEntry, QueuedMessage, QueuedMessages,
    QueuedReceipt, QueuedReceipts, ReceiptState, ack_outcome, queue_entry,
};

pub use presence::{
    PresenceInfo, PresencePrivacy, PresenceState, PresenceUpdate, PresenceVisibility,
    PresenceWatchFrom, SetPresencePrivacy, TypingForward, TypingNotice, TypingSignal,
    WatchPresence,
};
pub use region::{
    AskDirectoryChanges, CommitEnvelope, CreateAccount, DeviceQueueAvailable, DirectoryChanges,
    ForDevice, ForwardReceipts, GroupMembersAt, IssueRegistrationTokens, LookupAccount,
    ReceiptForward, RegionRequest, RegionResponse, RegistrationTokens, SigningKey, StoreCensus,
    StoreCensusRequest, StoreClaim, Subscribe, region_request, region_response,
};

use crate::ProtoError;
use crate::ids::{AccountId, DeviceAddress, DeviceId};
use crate::limits::ACCOUNT_NAME_BYTES_MAX;

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
// Account names

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
// Keys, queue reads and the outcomes of sends

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ChatId, GroupId};
    use crate::limits::{
        CIPHERTEXT_BYTES_MAX, GROUP_CIPHERTEXT_BYTES_MAX, GROUP_ENVELOPE_RECIPIENT_DEVICES_MAX,
        GROUP_MEMBERS_MAX, GROUP_NAME_BYTES_MAX, GROUP_REQUEST_ID_BYTES,
        GROUP_SESSION_ID_BYTES_MAX, GROUPS_PER_PAGE_MAX,
    };

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
