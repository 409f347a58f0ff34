//! The edge ↔ region and region ↔ region requests and answers: envelopes forwarded for commit,
//! what an edge asks of a device's home region for it (`ForDevice`), the directory writer's
//! requests, subscriptions and the pushes they bring, receipts forwarded between regions, and
//! the two envelopes every such request and answer travels in ([`RegionRequest`],
//! [`RegionResponse`]).

use super::{
    AccountImported, AccountInfo, AccountMoved, AckMany, AcksDone, AskGroupMembers, BlobStatus,
    BlockedAccounts, ClaimKeys, DeviceAddr, DeviceCommand, DeviceList, Envelope, ErrorReply,
    FallbackKeyState, FetchAndAck, ForBlob, ForGroup, GroupInfo, GroupList, GroupVersion, HandOver,
    HandedOver, HomeMoved, ImportAccount, KeyBundle, LinkRequests, LinkStatus, LookupName,
    MoveAccountHome, MoveHome, OneTimeKeyCount, Pairing, PresencePrivacy, PresenceUpdate,
    PresenceWatchFrom, PushState, QueueBatch, QueueEntry, QueuedReceipt, Register, Registered,
    RequestLink, RoutedHome, SendOutcome, SetBlock, SetPresencePrivacy, SetPush, TypingForward,
    TypingNotice, UploadOneTimeKeys,
};

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
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28"
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
        /// (Edge → a device's home) several devices' `FetchQueue` requests at once (answered
        /// with `AcksDone`).
        #[prost(message, tag = "28")]
        AckMany(super::AckMany),
    }
}

/// A region's answer.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RegionResponse {
    /// The answer.
    #[prost(
        oneof = "region_response::Body",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31"
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
        /// Answer to `AckMany`.
        #[prost(message, tag = "31")]
        AcksDone(super::AcksDone),
    }
}
