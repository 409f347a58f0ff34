//! Every bound of replication, in one place.

use fdb_layers::limits::{COMMIT_BATCH_BYTES_MAX, TRANSACTION_BYTES_MAX};

/// Bytes of keys and values in one part of a group: a group travels in parts of at most this
/// much (and [`GROUP_PART_MUTATIONS_MAX`] mutations), applied together once the last arrives.
pub const GROUP_PART_BYTES: usize = 1024 * 1024;

/// Mutations in one part of a group.
pub const GROUP_PART_MUTATIONS_MAX: usize = 16 * 1024;

/// Largest frame on a replication stream: a part of a group or a chunk of a full copy with
/// its encoding's overhead (at most 16 bytes a mutation), and a key and a value past the part's
/// bound (a part closes after the pair that reaches it).
pub const REPLICATION_FRAME_BYTES_MAX: usize = 4 * GROUP_PART_BYTES + 16 * GROUP_PART_MUTATIONS_MAX;

/// Bytes of keys and values of one group a standby gathers before applying it: a group holds at
/// most a batch and the transaction that closed it.
pub const GROUP_BYTES_MAX: usize = COMMIT_BATCH_BYTES_MAX + TRANSACTION_BYTES_MAX;

/// Bytes of keys and values per chunk of a full copy.
pub const INSTALL_CHUNK_BYTES: usize = 1024 * 1024;

/// Bytes of groups the primary keeps for a standby that is behind; past it the oldest are
/// dropped, and the standby is brought up to date by a full copy instead.
pub const SHIP_LOG_BYTES_MAX: usize = 256 * 1024 * 1024;

/// How long the primary waits for the standby to confirm a group (default of
/// `[replication] ack_timeout_ms`), and how long it gives an absent standby to come back before
/// it applies its policy.
pub const ACK_TIMEOUT_MS_DEFAULT: u64 = 2_000;

/// Pause before the primary dials its standby again after a failed attempt, doubling up to
/// [`REDIAL_DELAY_MS_MAX`].
pub const REDIAL_DELAY_MS_INITIAL: u64 = 100;

/// Longest pause between attempts to dial the standby.
pub const REDIAL_DELAY_MS_MAX: u64 = 1_000;

/// How long dialling the standby and hearing its state may take.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// How often a primary with nothing to ship tells its standby it is alive.
pub const HEARTBEAT_INTERVAL_MS: u64 = 250;

/// How long a standby that may promote itself waits without a frame from its primary before it
/// takes over (default of `[promotion] lease_ms`).
pub const LEASE_MS_DEFAULT: u64 = 2_000;

/// Shortest lease a standby accepts: several heartbeats must be able to go missing first.
pub const LEASE_MS_MIN: u64 = 4 * HEARTBEAT_INTERVAL_MS;

/// How often a standby checks its lease on the primary.
pub const LEASE_CHECK_INTERVAL_MS: u64 = 50;

/// How long the primary logs nothing new about an absent standby while going on alone.
pub const ALONE_WARNING_INTERVAL_MS: u64 = 10_000;

/// Groups and chunks a standby has read but not applied yet: at most this many wait in memory
/// (QUIC's flow control holds back the rest). Groups are usually kilobytes; the worst case is
/// this many of [`GROUP_BYTES_MAX`].
pub const STANDBY_STEPS_QUEUED_MAX: usize = 16;

/// Connections a standby accepts at once (its primary, a restarted primary whose old link has
/// not timed out yet, and a little slack).
pub const STANDBY_CONNECTIONS_MAX: usize = 4;

/// How long a standby asked to take over (a planned failover) waits for its promotion (opening
/// the copy as the region's store, starting the region, announcing its address) before it
/// refuses the handover.
pub const HANDOVER_PROMOTION_TIMEOUT_MS: u64 = 15_000;

/// How long a primary waits for a handover as a whole: the standby catching up, then its
/// promotion. Past it the handover is given up and the primary serves on (if the standby took
/// over meanwhile, the primary hears it and is fenced: it never acknowledges without it).
pub const HANDOVER_TIMEOUT_MS: u64 = 20_000;

const _: () = assert!(INSTALL_CHUNK_BYTES <= GROUP_PART_BYTES);
const _: () = assert!(HANDOVER_PROMOTION_TIMEOUT_MS < HANDOVER_TIMEOUT_MS);
const _: () = assert!(
    GROUP_PART_BYTES + fdb_layers::limits::KEY_BYTES_MAX + fdb_layers::limits::VALUE_BYTES_MAX
        <= 2 * GROUP_PART_BYTES
);
const _: () =
    assert!(2 * GROUP_PART_BYTES + 16 * GROUP_PART_MUTATIONS_MAX <= REPLICATION_FRAME_BYTES_MAX);
const _: () = assert!(COMMIT_BATCH_BYTES_MAX <= SHIP_LOG_BYTES_MAX);
const _: () = assert!(REDIAL_DELAY_MS_INITIAL <= REDIAL_DELAY_MS_MAX);
const _: () = assert!(REDIAL_DELAY_MS_MAX < ACK_TIMEOUT_MS_DEFAULT);
const _: () = assert!(LEASE_MS_MIN <= LEASE_MS_DEFAULT);
const _: () = assert!(LEASE_CHECK_INTERVAL_MS < HEARTBEAT_INTERVAL_MS);
// A primary restarted by its supervisor is back before its standby takes over.
const _: () = assert!(REDIAL_DELAY_MS_MAX < LEASE_MS_DEFAULT);
