//! Every bound of the region in one place, with units in the names: its connections and
//! subscriptions, the cross-region outbox, retention sweeps, key claims, the accounts and
//! groups it caches from the directory writer, the store check at start and the operator's
//! repair. The bounds it shares with edges and devices (frame sizes, the nested timeouts) are in
//! [`relay_proto::limits`]; those of the store in [`fdb_layers::limits`]; those of QUIC
//! connections in [`relay_net::limits`].

use fdb_layers::limits::{LAYER_READ_ENTRIES_MAX, QUEUE_RETENTION_MS_DEFAULT, SWEEP_ENTRIES_MAX};
use relay_proto::limits::{
    DIRECTORY_CACHE_TTL_MS, GROUP_MEMBERS_MAX, QUEUE_PUSH_BYTES_MAX, REGION_PEER_REQUEST_TIMEOUT_MS,
};

// Connections and subscriptions.

/// Most internal connections (edges, other regions) one region holds; past it new ones are
/// refused (QUIC `CONNECTION_REFUSED`) and the peer retries. Each peer holds one or two.
pub const INTERNAL_CONNECTIONS_MAX: usize = 4_096;

/// Presence updates, typing notices and move notices waiting for one subscribed edge stream
/// before new ones are dropped (typing expires, presence and moves are told again). Queue
/// pushes are never dropped: one per device waits, holding the highest sequence announced.
pub const SUBSCRIPTION_EVENTS_MAX: usize = 16_384;

/// Bytes of queue entries sent along with the queue pushes waiting for one subscribed edge
/// stream; past it a push goes with its announcement alone (its device fetches the entries).
/// A full group's batch fits, for one device per member at the most a push holds.
pub const SUBSCRIPTION_ENTRY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Entries from which a group envelope is stored indexed (`stored_envelope::encode`): a
/// member's lookup is then a binary search instead of a walk over every entry before its own.
/// Below it the walk is as cheap, and the stored form stays plain protobuf.
pub const STORED_ENVELOPE_INDEX_ENTRIES_MIN: usize = 32;

/// Bytes of pushes one write to a subscribed edge stream gathers at most (the pushes waiting
/// go together; one larger than this goes alone).
pub const SUBSCRIPTION_WRITE_BYTES_MAX: usize = 64 * 1024;

/// Most presence watches one edge's subscription stream holds at a region; further watches
/// are answered `Unknown` (and logged). An edge holds at most
/// [`relay_proto::limits::PRESENCE_WATCHES_PER_DEVICE_MAX`] per connected device.
pub const PRESENCE_WATCHES_PER_STREAM_MAX: usize = 1 << 20;

// The cross-region outbox.

/// Receipts sent to another region in one request.
pub const OUTBOX_BATCH_ENTRIES_MAX: usize = 256;

/// Receipts the outbox pump applies for this region's own senders (group receipts) in one
/// transaction, at least (whole outbox entries, each the receipts of one ack, at most
/// [`OUTBOX_BATCH_ENTRIES_MAX`] entries): a group's members acknowledge tens of thousands of
/// messages a second, and each transaction waits for a group commit.
pub const LOCAL_RECEIPTS_BATCH_MAX: usize = 1_024;

/// Entries of this region's outbox for itself the pump reads at a time (each holds up to
/// `RECEIPTS_PER_QUEUE_ENTRY_MAX` receipts), so that it reads no further than a batch takes.
pub const LOCAL_OUTBOX_ENTRIES_PER_READ: usize = 16;

/// Pause between outbox delivery rounds while a destination is unreachable or has more, in ms.
pub const OUTBOX_RETRY_DELAY_MS: u64 = 500;

/// Pause between outbox delivery rounds when nothing waits and nothing woke the pump, in ms.
pub const OUTBOX_IDLE_POLL_MS: u64 = 5_000;

// Retention and quarantine.

/// Pause between two retention sweeps of the device queues, in ms.
pub const RETENTION_SWEEP_INTERVAL_MS: u64 = 60_000;

/// Most sweep transactions in one retention sweep, so one sweep stays bounded.
pub const RETENTION_SWEEP_TRANSACTIONS_MAX: usize = 64;

/// Queue entries expired in one retention sweep transaction.
pub const EXPIRE_BATCH_ENTRIES_MAX: usize = 256;

/// Quarantine records read in one transaction when the service starts.
pub const QUARANTINE_LOAD_DEVICES_PER_TRANSACTION: usize = 256;

// Key claims.

/// Claims one claimer may make in a burst: a whole group's members, which a member's first
/// message to a full group claims at once.
pub const CLAIMS_BURST_PER_CLAIMER: u32 = relay_proto::limits::GROUP_MEMBERS_MAX as u32;

/// Time for one claim to be allowed again after the burst is spent, in ms (20 a minute
/// sustained).
pub const CLAIM_REFILL_INTERVAL_MS: u64 = 3_000;

/// Claimers whose buckets are remembered at once.
pub const CLAIMERS_TRACKED_MAX: usize = 65_536;

// Accounts cached from the directory writer.

/// How long a region serves an account it cached from the directory writer before asking the
/// writer again (in the background: the cached copy answers meanwhile), in ms.
pub const ACCOUNT_REFRESH_INTERVAL_MS: u64 = DIRECTORY_CACHE_TTL_MS;

/// Accounts whose last refresh a region remembers; one it forgot is refreshed at its next
/// lookup.
pub const ACCOUNT_REFRESHES_TRACKED_MAX: usize = 65_536;

// Groups cached from the directory writer.

/// Groups whose membership a region that is not the directory writer keeps (the least
/// recently used is dropped first). A group holds at most `GROUP_MEMBERS_MAX` account ids
/// (8 KiB), so the cache holds at most 32 MiB of members.
pub const GROUP_CACHE_ENTRIES_MAX: usize = 4_096;

/// How long such a region checks group envelopes against a membership it cached before asking
/// the writer again, in ms. An envelope naming a newer version makes it ask at once; one
/// naming an older version is answered "the group changed". Shorter than an account's time to
/// live: a sender that missed a removal is refused within this long at the latest. Also the
/// lease on a region's copy of the groups: it checks envelopes against the copy for this long
/// after it sent a poll that caught up with the writer's logs (`crate::directory_replica`).
pub const GROUP_CACHE_TTL_MS: u64 = 10_000;

/// (Directory writer) groups whose askers (the regions that cached their membership in the
/// last [`GROUP_CACHE_TTL_MS`]) are remembered; past it, expired ones are forgotten first, and
/// then a membership change waits for every cache to expire instead.
pub const GROUP_ASKERS_MAX: usize = 65_536;

/// Refreshes asked of the directory writer at once; a lookup finding them all busy leaves its
/// account for a later lookup.
pub const ACCOUNT_REFRESHES_IN_FLIGHT_MAX: usize = 32;

// Views of a chat (an account that moved in, `chat_log::views`).

/// How far back, in entries of the chat, a view looks for the sender's earlier entries its
/// account was never shown when one of the sender's entries is queued to it: the tail a home
/// move records under the old home's numbers.
pub const MISSED_WALK_ENTRIES_MAX: u64 = crate::home_move::MOVE_CHAT_TAIL_ENTRIES;

/// Entries read at a time in that walk (usually the sender's previous entry is in the first).
pub const MISSED_WALK_PAGE_ENTRIES: u64 = 8;

// The store check at start.

/// Attempts to get the directory writer's census for an empty store before giving up.
pub const WRITER_CENSUS_ATTEMPTS_MAX: u32 = 8;

/// Longest one census attempt may take (connecting included), in ms.
pub const WRITER_CENSUS_ATTEMPT_TIMEOUT_MS: u64 = 2_000;

/// Pause between two census attempts, in ms.
pub const WRITER_CENSUS_RETRY_DELAY_MS: u64 = 1_000;

/// Longest an empty store waits for the directory writer, in ms.
pub const WRITER_CENSUS_WAIT_MS_MAX: u64 = WRITER_CENSUS_ATTEMPTS_MAX as u64
    * (WRITER_CENSUS_ATTEMPT_TIMEOUT_MS + WRITER_CENSUS_RETRY_DELAY_MS);

/// Accounts tallied per transaction when a directory copy made before the home counts is
/// adopted.
pub const HOME_TALLY_ACCOUNTS_PER_TRANSACTION: usize = 1_024;

// The operator's check and repair.

/// Queue entries checked in one transaction.
pub const CHECK_ENTRIES_PER_TRANSACTION: usize = 256;

/// Devices listed in one transaction.
pub const CHECK_DEVICES_PER_TRANSACTION: usize = 256;

// The blob store (`crate::blobs`).

/// Bytes of blobs one account may store at once, unless the region's configuration says
/// otherwise (unfinished uploads count from their start).
pub const BLOB_ACCOUNT_BYTES_MAX_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;

/// How long a media pass (a device's grant to move one blob's bytes at the region's media
/// endpoint) is accepted after the region issued it, in ms: long enough to open a connection
/// and start the stream (a transfer under way goes on past it), short enough that a pass seen
/// by someone else soon stops working.
pub const MEDIA_PASS_TTL_MS: u64 = 10 * 60 * 1_000;

/// Most devices connected to a region's media endpoint at once; a device over the bound
/// waits in quinn's accept queue until one leaves (its transfer through the edge is unaffected).
pub const MEDIA_CONNECTIONS_MAX: usize = 4_096;

/// How long a region waits for a media stream's first frame (the pass and the command), in ms.
pub const MEDIA_REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Transfers one device may have under way at a region's media endpoint at once; one more is
/// refused `Throttled` with [`MEDIA_THROTTLED_RETRY_AFTER_MS`] (the SDK retries it, as after
/// a dropped connection). A device sends its blobs one after another; a few at once (a photo
/// and its history snapshot) fit well within.
pub const MEDIA_TRANSFERS_PER_DEVICE_MAX: usize = 8;

/// The retry-after of a transfer refused for [`MEDIA_TRANSFERS_PER_DEVICE_MAX`], in ms.
pub const MEDIA_THROTTLED_RETRY_AFTER_MS: u64 = 1_000;

/// How long a media connection may go without a stream under way before the region closes it,
/// in ms: a device opens its transfer's stream at once, and a connection that moves nothing
/// (no pass, or passes refused) gives its slot back.
pub const MEDIA_IDLE_CLOSE_MS: u64 = 5_000;

/// Pause between two sweeps of expired blobs, in ms.
pub const BLOB_SWEEP_INTERVAL_MS: u64 = 60 * 60 * 1_000;

/// Most sweep transactions in one blob sweep, so one sweep stays bounded.
pub const BLOB_SWEEP_TRANSACTIONS_MAX: usize = 64;

/// Units of one upload stream being committed at once, besides the one being read: each
/// one's object is written (and fsynced) as soon as it is read, so their fsyncs overlap, and
/// their offsets are recorded one after the other, in order. One upload stream holds at most
/// this many units plus one in memory (1 MiB each).
pub const BLOB_UNITS_COMMITTING_MAX: usize = 3;

/// Units all the upload streams of a region hold in memory together, read or committing
/// (1 MiB each: 256 MiB). Past it a stream waits before it reads its next unit, and QUIC's
/// flow control holds its device back, so thousands of uploads at once cost the region this
/// much memory and no more.
pub const BLOB_UNITS_IN_MEMORY_MAX: usize = 256;

/// Uploads whose digest the blob store keeps as their units commit, so a finish need not read
/// the blob back (about 200 bytes each); past it the oldest is dropped, and that upload is read
/// back when it finishes.
pub const BLOB_RUNNING_HASHES_MAX: usize = 1_024;

/// Objects listed per transaction when blobs are kept in the region's store
/// (`[blobs] keep_in = "store"`, the sweep's listing).
pub const BLOB_OBJECTS_LIST_PAGE: usize = 512;

// The planted bug `AckBeforeCommit` (simulation only).

/// How late the planted bug commits what it acknowledged, in ms.
pub const PLANTED_COMMIT_DELAY_MS: u64 = 500;

// Relations between the bounds, checked at compile time.

// A walk reads at least one page.
const _: () =
    assert!(MISSED_WALK_PAGE_ENTRIES >= 1 && MISSED_WALK_PAGE_ENTRIES <= MISSED_WALK_ENTRIES_MAX);

// A full group's fan-out sends each member's device its entries along, at the most a push
// holds.
const _: () = assert!(SUBSCRIPTION_ENTRY_BYTES_MAX >= GROUP_MEMBERS_MAX * QUEUE_PUSH_BYTES_MAX);
// A gathered write holds many small pushes, and is no larger than one frame may be.
const _: () = assert!(SUBSCRIPTION_WRITE_BYTES_MAX >= 64 * relay_proto::frame::FRAME_HEADER_BYTES);
const _: () = assert!(SUBSCRIPTION_WRITE_BYTES_MAX <= relay_proto::limits::FRAME_BYTES_MAX);
// A cached group is asked of the writer again after a directory record's time to live, and
// the cache holds every group of a busy region's recent senders.
const _: () = assert!(GROUP_CACHE_TTL_MS <= DIRECTORY_CACHE_TTL_MS);
const _: () = assert!(GROUP_CACHE_TTL_MS > REGION_PEER_REQUEST_TIMEOUT_MS);
const _: () = assert!(GROUP_CACHE_ENTRIES_MAX >= 1);
// A destination that failed is tried again sooner than one request to it may take, so a
// region coming back gets its receipts within about one peer timeout; an idle pump looks less
// often.
const _: () = assert!(OUTBOX_RETRY_DELAY_MS < REGION_PEER_REQUEST_TIMEOUT_MS);
const _: () = assert!(OUTBOX_RETRY_DELAY_MS < OUTBOX_IDLE_POLL_MS);
// Sweeps run many times within the retention window, so an entry is expired close to its age.
const _: () = assert!(RETENTION_SWEEP_INTERVAL_MS * 1_000 <= QUEUE_RETENTION_MS_DEFAULT);
// Each bounded read is one layer read at most.
const _: () = assert!(EXPIRE_BATCH_ENTRIES_MAX <= SWEEP_ENTRIES_MAX);
const _: () = assert!(OUTBOX_BATCH_ENTRIES_MAX <= LAYER_READ_ENTRIES_MAX);
const _: () = assert!(LOCAL_OUTBOX_ENTRIES_PER_READ <= OUTBOX_BATCH_ENTRIES_MAX);
const _: () = assert!(QUARANTINE_LOAD_DEVICES_PER_TRANSACTION <= LAYER_READ_ENTRIES_MAX);
const _: () = assert!(HOME_TALLY_ACCOUNTS_PER_TRANSACTION <= LAYER_READ_ENTRIES_MAX);
const _: () = assert!(CHECK_ENTRIES_PER_TRANSACTION <= LAYER_READ_ENTRIES_MAX);
const _: () = assert!(CHECK_DEVICES_PER_TRANSACTION <= LAYER_READ_ENTRIES_MAX);
// Claims: a bucket holds a full group's claims (a member's first message to it); after that
// a claimer gets 20 a minute, and a full refill takes at most an hour, so a bulk claimer
// drains one group's worth of one-time keys an hour (a restart forgetting the buckets gives it
// one more).
const _: () = assert!(CLAIMS_BURST_PER_CLAIMER as usize >= relay_proto::limits::GROUP_MEMBERS_MAX);
const _: () = assert!(CLAIM_REFILL_INTERVAL_MS >= 1);
const _: () = assert!(CLAIMS_BURST_PER_CLAIMER as u64 * CLAIM_REFILL_INTERVAL_MS <= 3_600_000);
const _: () = assert!(CLAIMERS_TRACKED_MAX >= 1);
// A refresh in flight is one request to the writer; at least one may run.
const _: () = assert!(ACCOUNT_REFRESHES_IN_FLIGHT_MAX >= 1 && ACCOUNT_REFRESHES_TRACKED_MAX >= 1);
const _: () = assert!(ACCOUNT_REFRESH_INTERVAL_MS > REGION_PEER_REQUEST_TIMEOUT_MS);
// The census: one retry at least, and an attempt has time to connect on a loaded machine.
const _: () = assert!(WRITER_CENSUS_ATTEMPTS_MAX >= 2, "one retry at least");
const _: () = assert!(
    WRITER_CENSUS_ATTEMPT_TIMEOUT_MS >= 1_000,
    "an attempt must have time to connect on a loaded machine"
);

/// Longest an envelope waits for its predecessor before it is released to the chat log, in ms.
pub const HOLD_MS_MAX: u64 = 1_000;
/// Envelopes waiting in one chat's lane at most.
pub const LANE_ENVELOPES_MAX: usize = 4_096;
/// Envelopes in one batch (one transaction) at most.
pub const BATCH_ENVELOPES_MAX: usize = 256;
/// Bytes of envelopes in one batch at most (a transaction may hold 10 MB).
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// (chat, sender) pairs whose next `sender_seq` is remembered at most.
pub const EXPECTED_ENTRIES_MAX: usize = 262_144;

// Blobs: an account can store at least one blob of the largest size; expired blobs are swept
// many times within their retention, so a blob goes soon after its expiry.
const _: () = assert!(BLOB_ACCOUNT_BYTES_MAX_DEFAULT >= relay_proto::limits::BLOB_BYTES_MAX);
const _: () =
    assert!(BLOB_SWEEP_INTERVAL_MS * 100 <= fdb_layers::limits::MEDIA_RETENTION_MS_DEFAULT);
const _: () = assert!(BLOB_SWEEP_TRANSACTIONS_MAX >= 1);
const _: () = assert!(BLOB_RUNNING_HASHES_MAX >= 1);
const _: () = assert!(BLOB_UNITS_COMMITTING_MAX >= 1);
// One stream can keep all its commits going while it reads.
const _: () = assert!(BLOB_UNITS_IN_MEMORY_MAX > BLOB_UNITS_COMMITTING_MAX);
// A media pass outlives the time to connect and send the first frame many times over, and
// ends long before the blob it names would expire.
const _: () = assert!(MEDIA_PASS_TTL_MS >= 10 * MEDIA_REQUEST_TIMEOUT_MS);
const _: () = assert!(MEDIA_PASS_TTL_MS * 100 <= fdb_layers::limits::MEDIA_RETENTION_MS_DEFAULT);
const _: () = assert!(MEDIA_CONNECTIONS_MAX >= 1);
// A device's transfers fit in the connections it may hold, and more than one runs at once.
const _: () = assert!(MEDIA_TRANSFERS_PER_DEVICE_MAX >= 2);
const _: () = assert!(MEDIA_TRANSFERS_PER_DEVICE_MAX <= MEDIA_CONNECTIONS_MAX);
// An idle media connection is closed before the transport's own idle timeout would, which a
// device's keep-alives put off for ever.
const _: () = assert!(MEDIA_IDLE_CLOSE_MS < relay_net::limits::IDLE_TIMEOUT_MS);
// A blob unit is one object of the store when blobs are kept there.
const _: () = assert!(
    relay_proto::limits::BLOB_COMMIT_UNIT_BYTES as usize <= fdb_layers::limits::OBJECT_BYTES_MAX
);
const _: () = assert!(BLOB_OBJECTS_LIST_PAGE <= fdb_layers::limits::LAYER_READ_ENTRIES_MAX);

// Chat lanes (`crate::lanes`): a batch fits in a transaction with room for its queue entries and receipts.
const _: () = assert!(BATCH_BYTES_MAX * 2 < 10_000_000);
// A lane holds at least a whole batch.
const _: () = assert!(LANE_ENVELOPES_MAX >= BATCH_ENVELOPES_MAX);
// The hold is far below the edge's wait for a region (a held envelope is still answered in time).
const _: () = assert!(HOLD_MS_MAX * 4 <= relay_proto::limits::EDGE_REGION_REQUEST_TIMEOUT_MS);

// --- Push (see `crate::push`) ---

/// Pushes a region sends at once (each an HTTPS request to a push service).
pub const PUSH_SENDS_IN_FLIGHT_MAX: usize = 64;
/// Devices read per page when a region loads who registered for push at start.
pub const PUSH_REGISTERED_PAGE_DEVICES: usize = fdb_layers::limits::LAYER_READ_ENTRIES_MAX;
// The largest registration the push crate accepts fits what the store keeps for it.
const _: () = assert!(
    1 + 1
        + 2
        + relay_push::limits::WEBPUSH_ENDPOINT_BYTES_MAX
        + relay_push::limits::WEBPUSH_P256DH_BYTES
        + relay_push::limits::WEBPUSH_AUTH_BYTES
        <= fdb_layers::limits::PUSH_REGISTRATION_BYTES_MAX
);
const _: () = assert!(
    1 + 1 + 2 + relay_push::limits::FCM_TOKEN_BYTES_MAX
        <= fdb_layers::limits::PUSH_REGISTRATION_BYTES_MAX
);
// What the wire lets a device send is no more than the push crate parses.
const _: () = assert!(
    relay_proto::limits::WEBPUSH_ENDPOINT_BYTES_MAX
        <= relay_push::limits::WEBPUSH_ENDPOINT_BYTES_MAX
);

// --- Home moves (see `crate::home_move`; part sizes are there) ---

/// Times a request of a home move (a part to the new home, the flip at the directory writer)
/// is sent before the move gives up: each is safe to repeat.
pub const MOVE_PEER_ATTEMPTS_MAX: usize = 3;
/// How long after an account arrived by a home move an envelope first stored before it may
/// still commit: a retried envelope stored here up to this long after the account arrived is
/// queued for it again (its devices drop a repeat). Covers a transaction's age limit and the
/// longest wait in a chat's lane, between the commit's clock reading and its commit.
pub const MOVE_ARRIVAL_SLACK_MS: u64 = 10_000;
const _: () =
    assert!(fdb_layers::limits::TRANSACTION_AGE_MS_MAX + HOLD_MS_MAX < MOVE_ARRIVAL_SLACK_MS);
/// How long the old home waits before it sends again a part of a home move that the new home
/// refused for now (its storage failed the commit, say).
pub const MOVE_PART_RETRY_MS: u64 = 200;
const _: () = assert!(MOVE_PART_RETRY_MS < relay_proto::limits::REGION_PEER_REQUEST_TIMEOUT_MS);
/// How often a region asks the directory writer again to settle a home move whose flip it
/// did not hear answered, and sends again an activation the new home did not take.
pub const MOVE_SETTLE_RETRY_MS: u64 = 1_000;
/// Times the old home sends a moved account's activation in the background after the new home
/// did not take it at once (every [`MOVE_SETTLE_RETRY_MS`]: ten minutes).
pub const MOVE_ACTIVATE_ATTEMPTS_MAX: u32 = 600;

/// Times the old home tries to record a moved account's new home in its store while the
/// account's requests are still held (every [`MOVE_RECORD_RETRY_MS`]), before it lets them go
/// (turned away) and goes on trying in the background.
pub const MOVE_RECORD_ATTEMPTS_HELD: u32 = 5;
/// The wait between those attempts.
pub const MOVE_RECORD_RETRY_MS: u64 = 100;
const _: () =
    assert!(MOVE_RECORD_ATTEMPTS_HELD as u64 * MOVE_RECORD_RETRY_MS < MOVE_SETTLE_RETRY_MS);

/// Times a region tries again to remove the away mark of a move that failed, when its store
/// refused the first removal (every [`MOVE_SETTLE_RETRY_MS`]: ten minutes).
pub const MOVE_UNMARK_ATTEMPTS_MAX: u32 = 600;
/// How long an operator waits for a home move's answer: the copy, the flip and the letting go,
/// each request of it sent up to [`MOVE_PEER_ATTEMPTS_MAX`] times.
pub const MOVE_HOME_REQUEST_TIMEOUT_MS: u64 = 120_000;
const _: () = assert!(
    MOVE_PEER_ATTEMPTS_MAX as u64 * relay_proto::limits::REGION_PEER_REQUEST_TIMEOUT_MS * 3
        < MOVE_HOME_REQUEST_TIMEOUT_MS
);

// --- Planned failover (see `crate::handover`) ---

/// How long a region handing itself over waits for the requests under way to finish before it
/// asks its standby to take over anyway (they are then answered or fail with the connection,
/// and are sent again to the standby).
pub const HANDOVER_DRAIN_WAIT_MS: u64 = 1_000;
/// How long a fenced region that handed itself over waits for the operator's answer to be
/// received before it closes its endpoint.
pub const HANDOVER_ANSWER_WAIT_MS: u64 = 2_000;
/// How long a stopping region waits for its connections' close to reach its peers.
pub const CLOSE_NOTICE_WAIT_MS: u64 = 500;
/// How long `relayd admin failover` waits for the region's answer: the drain, the shipper's
/// handover, and a margin for the connection.
pub const HANDOVER_REQUEST_TIMEOUT_MS: u64 =
    HANDOVER_DRAIN_WAIT_MS + relay_replica::limits::HANDOVER_TIMEOUT_MS + 5_000;
// Held requests from other regions and edges are still answered in time when the standby takes
// over promptly: the drain is a fraction of their wait.
const _: () = assert!(HANDOVER_DRAIN_WAIT_MS < REGION_PEER_REQUEST_TIMEOUT_MS);
const _: () = assert!(
    HANDOVER_DRAIN_WAIT_MS + relay_replica::limits::HANDOVER_TIMEOUT_MS
        < HANDOVER_REQUEST_TIMEOUT_MS
);

// --- The directory replica (see `crate::directory_replica`) ---

/// Accounts per page of the writer's change log, asked by a replica and answered by the writer.
pub const DIRECTORY_CHANGES_PAGE_MAX: usize = fdb_layers::limits::LAYER_READ_ENTRIES_MAX;
/// How often a replica asks the writer for changes once it has read them all (a new account is
/// in every region's replica this long after its creation, at most, while the writer answers).
pub const DIRECTORY_REPLICA_POLL_MS: u64 = 1_000;
/// Accounts the writer gives a log entry per transaction when it backfills a store written
/// before the log.
pub const DIRECTORY_BACKFILL_PAGE: usize = fdb_layers::limits::LAYER_READ_ENTRIES_MAX;
// A replica lags less than a cached account is trusted without asking the writer again.
const _: () = assert!(DIRECTORY_REPLICA_POLL_MS < ACCOUNT_REFRESH_INTERVAL_MS);
const _: () = assert!(DIRECTORY_CHANGES_PAGE_MAX >= 1 && DIRECTORY_BACKFILL_PAGE >= 1);
/// Groups per page of the writer's group log, at most.
pub const GROUP_CHANGES_PAGE_MAX: usize = fdb_layers::limits::LAYER_READ_ENTRIES_MAX;
/// Members per page of the writer's group log, at most, past the page's first group (sixteen
/// groups of the largest size, or many more small ones).
pub const GROUP_CHANGES_MEMBERS_MAX: usize = 16 * relay_proto::limits::GROUP_MEMBERS_MAX;
/// Regions the directory writer remembers as replica readers (each told of every group change
/// while it may check envelopes against its copy); past it, a change waits every copy out.
pub const REPLICA_READERS_MAX: usize = 1_024;
// A page of groups, each member a varint of at most 10 bytes and each group's id and version
// with their tags, fits a third of a frame beside the accounts.
const _: () = assert!(
    (GROUP_CHANGES_MEMBERS_MAX + relay_proto::limits::GROUP_MEMBERS_MAX) * 10
        + GROUP_CHANGES_PAGE_MAX * 32
        <= relay_proto::limits::FRAME_BYTES_MAX / 3
);
const _: () = assert!(GROUP_CHANGES_PAGE_MAX >= 1);
// A replica that follows the writer renews its lease on the groups (`GROUP_CACHE_TTL_MS` from
// its last caught-up poll) long before it lapses, even when a poll takes its whole timeout.
const _: () = assert!(
    DIRECTORY_REPLICA_POLL_MS + relay_proto::limits::REGION_PEER_REQUEST_TIMEOUT_MS
        < GROUP_CACHE_TTL_MS
);
