//! Every bound and timeout of the client in one place, with units in the names, and the
//! relations between them asserted at compile time (as `relay_proto::limits` does for the
//! protocol): a client waits longer than the edge may take to answer, the outbox's backoff is
//! bounded, buffers are bounded.

use relay_proto::limits::{
    EDGE_ANSWER_TIMEOUT_MS, HOP_MARGIN_MS, PAIRING_CODE_TTL_MS, QUEUE_FETCH_ENTRIES_MAX,
};

// --- Requests and connections ---

/// How long one request may take before the connection is considered broken, in milliseconds:
/// longer than the edge may take to answer, so a slow or silent region behind the edge reaches
/// the device as a typed answer (`Overloaded`, `DirectoryUnavailable`), not as a timeout.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long the QUIC handshake may take, in milliseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long a device takes its edge for the transfers of a region whose media endpoint did not
/// answer, before it tries the endpoint again, in ms.
pub const MEDIA_OUT_OF_REACH_HOLD_MS: u64 = 10 * 60 * 1_000;
/// Media endpoints a device remembers as out of reach at once.
pub const MEDIA_OUT_OF_REACH_MAX: usize = 64;
/// How long closing waits for the close to reach the edge, in milliseconds.
pub const CLOSE_WAIT_MS: u64 = 1_000;
/// Pushes buffered between the control-stream reader and the client; more are dropped (each
/// push only says "fetch", and one pending fetch covers them all).
pub const PUSHES_BUFFERED_MAX: usize = 16;
/// Requests one device has in flight on its connection at once (sends of several chats, a
/// fetch, key claims, name lookups); more wait for a free slot.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 64;
/// Queue entries one ack request acknowledges at most (the rest wait for the next): a page's
/// acks fit in one, and the region's ack transaction stays small.
pub const ACKS_PER_REQUEST_MAX: usize = QUEUE_FETCH_ENTRIES_MAX as usize;

// --- Blobs ---

/// Plaintext bytes in one sealed chunk of a blob (each chunk verifies on its own).
pub const BLOB_PLAINTEXT_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes of a file read at a time while it is sealed for upload (a file is never held whole).
pub const BLOB_FILE_READ_BYTES: usize = 1024 * 1024;
/// Bytes of opened plaintext buffered before a download writes them to its file (a download
/// to a file is never held whole).
pub const BLOB_FILE_WRITE_BYTES: usize = 1024 * 1024;
/// Most bytes a download into memory reserves before the first byte arrives (the rest grows
/// as it comes: a reference names its size, and a peer chose that).
pub const BLOB_MEMORY_RESERVE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Attempts of one upload or download (the first and its resumptions after dropped
/// connections) before giving up.
pub const BLOB_TRANSFER_ATTEMPTS_MAX: u32 = 64;
/// Pause before resuming a transfer whose stream broke, in ms (the device reconnects meanwhile).
pub const BLOB_RESUME_DELAY_MS: u64 = 500;
/// How long an upload waits for the region's answer after its last byte, or a download for
/// its next bytes, in ms.
pub const BLOB_ANSWER_TIMEOUT_MS: u64 = relay_proto::limits::BLOB_STREAM_IDLE_TIMEOUT_MS + 5_000;

// --- History bootstrap ---

/// Changes and sync messages a device keeps aside while it downloads its history bootstrap
/// (they apply on top of the snapshot); one more gives the bootstrap up for the sync protocol.
pub const BOOTSTRAP_DEFERRED_INBOUND_MAX: usize = 4_096;
/// How long a device keeps its connection for the bootstrap's download, in ms.
pub const BOOTSTRAP_DOWNLOAD_HOLD_MS: u64 = 4 * BLOB_ANSWER_TIMEOUT_MS;
/// Progress reports of one bootstrap download at most (one per percent).
pub const BOOTSTRAP_PROGRESS_REPORTS_MAX: u64 = 100;

const _: () = assert!(BOOTSTRAP_DOWNLOAD_HOLD_MS > BLOB_ANSWER_TIMEOUT_MS);
const _: () = assert!(BOOTSTRAP_DEFERRED_INBOUND_MAX >= FETCH_PAGE_ENTRIES_MAX as usize);

// --- Edge discovery ---

/// How long to wait for the locator's answer to one query, in milliseconds.
pub const DNS_TIMEOUT_MS: u64 = 1_000;
/// Queries sent before giving up on the locator.
pub const DNS_ATTEMPTS_MAX: u32 = 3;
/// Largest DNS answer read over UDP, in bytes.
pub const DNS_ANSWER_BYTES_MAX: usize = 4096;

// --- The outbox ---

/// Shortest wait before retrying a failed send (or a failed connection), in milliseconds.
pub const RETRY_DELAY_MS_MIN: u64 = 200;
/// Longest wait before retrying a failed send (or a failed connection), in milliseconds.
pub const RETRY_DELAY_MS_MAX: u64 = 30_000;
/// Re-encryptions after "mismatched devices" in a row before backing off instead.
pub const MISMATCHES_IN_A_ROW_MAX: u32 = 5;
/// Renumberings after "resend from" in a row before backing off instead.
pub const RESENDS_IN_A_ROW_MAX: u32 = 5;
/// Entries of one chat in flight at once while all goes well (a 1:1 chat, a small group). The
/// home region commits a chat's envelopes in each sender's order, holding an early one until
/// its predecessor arrives (its chat lanes), so a window this wide costs no refusals; it leaves
/// a quarter of the requests in flight to other chats and to fetches. A chat's envelopes
/// commit one batch at a time, so one busy chat (a bot writing to a group) moves at its window
/// over the time a batch takes to commit (README, "what bounds W3 is a chat's window").
pub const PIPELINE_WINDOW: usize = 48;
/// Entries of one chat in flight at once however many devices each reaches.
pub const PIPELINE_WINDOW_MIN: usize = 2;
/// Deliveries (entries in flight times the devices each one reaches) one chat keeps in flight
/// at most: a group's window narrows as its fan-out grows ([`pipeline_window`]), so a sender to
/// 1,024 members cannot commit envelopes faster than the members' queues are drained, while a
/// chat to 341 devices or fewer keeps the whole [`PIPELINE_WINDOW`].
pub const PIPELINE_DELIVERIES_IN_FLIGHT_MAX: usize = 16 * 1_024;
/// Entries of one chat in flight at once when each reaches `fanout_devices` devices (0 when
/// unknown): [`PIPELINE_DELIVERIES_IN_FLIGHT_MAX`] over the fan-out, between
/// [`PIPELINE_WINDOW_MIN`] and [`PIPELINE_WINDOW`]. Measured with `relayd bench messages` (W3):
/// a sender to 100 members moves at the full window, one to 1,024 at sixteen.
pub const fn pipeline_window(fanout_devices: usize) -> usize {
    if fanout_devices == 0 {
        return PIPELINE_WINDOW;
    }
    let window = PIPELINE_DELIVERIES_IN_FLIGHT_MAX / fanout_devices;
    if window < PIPELINE_WINDOW_MIN {
        PIPELINE_WINDOW_MIN
    } else if window > PIPELINE_WINDOW {
        PIPELINE_WINDOW
    } else {
        window
    }
}
/// How long a one-shot command (`send`, `read`, `sync` in the CLI) keeps retrying the outbox
/// before leaving entries pending for the next one, in ms (twice the request timeout: a hung
/// request still leaves time for a retry).
pub const FLUSH_BUDGET_MS: u64 = 20_000;
/// How long a sync keeps retrying after a failure that follows a successful connection (a
/// request that timed out, a dropped connection), in ms. A first connection that finds no edge
/// at all is not retried.
pub const SYNC_RETRY_BUDGET_MS: u64 = 30_000;

// --- The queue ---

/// Times a store checkpoint is tried while another process's reader keeps it from finishing.
pub const CHECKPOINT_ATTEMPTS_MAX: u32 = 10;
/// Pause between two checkpoint attempts, in ms (a device closing waits at most about 0.2 s).
pub const CHECKPOINT_RETRY_MS: u64 = 20;

/// While a device is open and live, how often the queue is fetched even without a push, in ms.
pub const POLL_INTERVAL_MS: u64 = 10_000;
/// How long `relay presence` waits for the watched account's home region to say its presence,
/// in ms (the edge's answer timeout and a reconnect fit in it).
pub const PRESENCE_ANSWER_WAIT_MS: u64 = 2 * relay_proto::limits::EDGE_ANSWER_TIMEOUT_MS;
/// Queue pages fetched by one catch-up before other work gets a turn.
pub const FETCH_ROUNDS_MAX: usize = 64;
/// Entries of one queue page (what the client asks for; the region caps it too).
pub const FETCH_PAGE_ENTRIES_MAX: u32 = QUEUE_FETCH_ENTRIES_MAX;
/// How long a seen envelope id is remembered, in ms: longer than the 30-day queue retention,
/// after which the server can no longer redeliver it.
pub const SEEN_RETENTION_MS: u64 = 31 * 24 * 3600 * 1000;
/// Times a "rolled back" refusal is checked again when this device's counters moved meanwhile
/// (another process on the same data directory acknowledged or sent after this one read them).
pub const ROLLBACK_RECHECKS_MAX: u32 = 3;

// --- Keys ---

/// Shortest time between two one-time key uploads on one connection, in ms.
pub const KEY_UPLOAD_INTERVAL_MS: u64 = 60_000;
/// Olm sessions kept per remote device; the least recently used beyond this are dropped.
pub const SESSIONS_PER_DEVICE_MAX: usize = 4;
/// A fallback key older than this is replaced even if nobody was handed it, in milliseconds.
pub const FALLBACK_KEY_MAX_AGE_MS: u64 = 7 * 24 * 3600 * 1000;
/// How long the previous fallback key is kept after it was replaced, in milliseconds (see
/// [`crate::fallback`]); a new key is made no sooner either, since making one drops the previous.
pub const FALLBACK_KEY_PREVIOUS_KEPT_MS: u64 = 7 * 24 * 3600 * 1000;

// --- Group sessions (Megolm, see crate::group_keys) ---

/// Attempts of one group command (create, add, ...) over dropped connections; every group
/// command is safe to repeat.
pub const GROUP_COMMAND_ATTEMPTS_MAX: u32 = 5;
/// The pause between two attempts of a group command.
pub const GROUP_COMMAND_RETRY_DELAY_MS: u64 = 500;
/// Name lookups a group command keeps in flight at once (members to add, members to name).
pub const GROUP_NAME_LOOKUPS_IN_FLIGHT_MAX: usize = 16;
const _: () = assert!(GROUP_NAME_LOOKUPS_IN_FLIGHT_MAX > 0);
const _: () = assert!(
    GROUP_NAME_LOOKUPS_IN_FLIGHT_MAX < REQUESTS_IN_FLIGHT_MAX,
    "lookups leave room for the device's own requests"
);

/// Messages one sending group session encrypts; the next message starts a new session.
pub const GROUP_SESSION_MESSAGES_MAX: u32 = 100;
/// Age of a sending group session at which the next message starts a new session, in ms.
pub const GROUP_SESSION_AGE_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// Sessions kept per (group, sending device) from other devices; a newer one makes the device
/// forget the one it received first.
pub const GROUP_INBOUND_SESSIONS_PER_SENDER_MAX: usize = 1_000;
/// Group texts of one group numbered into the outbox and not confirmed yet; the next waits.
/// Numbering late lets the key shares a new session needs take the numbers before its first
/// message, and bounds the messages a rebuilt envelope's shares arrive after (see
/// `core::group_send`).
pub const GROUP_TEXTS_AHEAD_MAX: usize = 64;
/// Member devices one key share envelope carries the session key to (an Olm pre-key message
/// each, under 600 bytes): more go in further key shares.
pub const GROUP_KEY_SHARE_DEVICES_MAX: usize = 512;
/// Group messages a device keeps while their session's key has not arrived; past it the one
/// waiting longest is recorded undecryptable.
pub const GROUP_WAITING_MESSAGES_MAX: u64 = 20_000;
const _: () = assert!(GROUP_TEXTS_AHEAD_MAX >= 1 && GROUP_TEXTS_AHEAD_MAX <= PIPELINE_WINDOW * 4);
const _: () = assert!(
    GROUP_WAITING_MESSAGES_MAX >= 64 * GROUP_TEXTS_AHEAD_MAX as u64,
    "room for 64 senders' texts numbered ahead of a rebuilt envelope's key share"
);
const _: () = assert!(
    GROUP_KEY_SHARE_DEVICES_MAX * 640 <= relay_proto::limits::ENVELOPE_BYTES_MAX,
    "a full key share fits one envelope"
);
/// Entries a region's queue holds for one device at most (`fdb-layers`'
/// `DEVICE_QUEUE_DEPTH_MAX`; the client does not depend on the storage layers).
const REGION_DEVICE_QUEUE_DEPTH_MAX: u64 = 100_000;

// --- Contents ---

/// Largest text body, in bytes of UTF-8 (well under the 64 KiB ciphertext limit).
pub const TEXT_BYTES_MAX: usize = 32 * 1024;
/// Longest file name an attachment carries, in bytes of UTF-8 (longer names are cut).
pub const FILE_NAME_BYTES_MAX: usize = 255;
/// Longest media type an attachment carries, in bytes.
pub const MEDIA_TYPE_BYTES_MAX: usize = 127;
/// Largest thumbnail an attachment carries, in bytes: a small preview, not the picture.
pub const THUMBNAIL_BYTES_MAX: usize = 8 * 1024;
/// Most client message ids one read receipt names; longer lists are split.
pub const READ_RECEIPT_IDS_MAX: usize = 512;
/// Most characters (Unicode scalar values) of one reaction: one emoji, even a family of four
/// joined by zero-width joiners, or a short word.
pub const REACTION_CHARS_MAX: usize = 16;
/// Fewest hex digits of a message id a person may type (`relay edit PEER ID`); a prefix must
/// also name exactly one message of the chat.
pub const MESSAGE_ID_PREFIX_CHARS_MIN: usize = 6;

// --- History (relay-sync) ---

/// How far ahead of the region's clock a received edit, deletion or reaction may be stamped,
/// in milliseconds: a device with a clock further ahead would win every later change.
pub const CHANGE_AHEAD_MS_MAX: u64 = 24 * 3600 * 1000;

/// Messages a device appends to its history before it saves the documents though nothing else
/// changed (see [`crate::history`]): what a crash costs the next open in appends made again.
pub const HISTORY_APPENDS_UNSAVED_MAX: usize = 1_000;
/// Sync messages one device queues for one of its own devices at one step; a backlog larger
/// than this (a whole history for a newly linked device) goes on at the next steps, as the
/// answers come back.
pub const SYNC_MESSAGES_PER_STEP_MAX: usize = 64;

// --- The local store and the event stream ---

/// How long to wait for another process holding the database lock, in milliseconds.
pub const BUSY_TIMEOUT_MS: u64 = 10_000;
/// Prepared statements the store keeps for reuse: more than the distinct statements its write
/// paths run, so a message's statements are parsed once per open device, not once per message.
pub const STATEMENTS_CACHED_MAX: usize = 64;
/// Events an open device holds for its reader; a device whose reader falls this far behind
/// waits for it (nothing is dropped).
pub const EVENTS_BUFFERED_MAX: usize = 1024;
/// Calls (send, sync, …) waiting for an open device to take them.
pub const COMMANDS_BUFFERED_MAX: usize = 64;

/// How often a new device asks whether its link request was approved, and how often `relay
/// link` looks for the new device's request, in milliseconds.
pub const LINK_POLL_INTERVAL_MS: u64 = 500;
/// How long `relay link` waits for the new device by default, in milliseconds: the code's life.
pub const LINK_WAIT_MS_DEFAULT: u64 = PAIRING_CODE_TTL_MS;
/// How many times a new device asks before giving up: until its pairing code expires.
pub const LINK_POLLS_MAX: u64 = PAIRING_CODE_TTL_MS / LINK_POLL_INTERVAL_MS;

// Every text a device sends fits in its history's documents.
const _: () = assert!(TEXT_BYTES_MAX <= relay_sync::limits::MESSAGE_TEXT_BYTES_MAX);
// A caption at its longest and the largest attachment fit one ciphertext with room for Olm,
// and the attachment fits the history documents.
const _: () = assert!(
    TEXT_BYTES_MAX + crate::media::ATTACHMENT_ENCODED_BYTES_MAX + 8 * 1024
        <= relay_proto::limits::CIPHERTEXT_BYTES_MAX
);
const _: () =
    assert!(crate::media::ATTACHMENT_ENCODED_BYTES_MAX <= relay_sync::limits::ATTACHMENT_BYTES_MAX);
// A message id prefix is shorter than the id's 32 hex digits.
const _: () = assert!(MESSAGE_ID_PREFIX_CHARS_MIN < 32);
// A step's sync messages fit in the outbox's pipeline of the own chat many times over.
const _: () = assert!(SYNC_MESSAGES_PER_STEP_MAX >= PIPELINE_WINDOW);

// A request outlives the edge's own answer by at least one hop's margin, so whatever happens
// behind the edge reaches the device as a typed answer.
const _: () = assert!(REQUEST_TIMEOUT_MS >= EDGE_ANSWER_TIMEOUT_MS + HOP_MARGIN_MS);
// The handshake is part of the first request's patience, not more.
const _: () = assert!(CONNECT_TIMEOUT_MS <= REQUEST_TIMEOUT_MS);
// An endpoint out of reach is skipped for many connect timeouts, so a device on a network that
// lets only its edge through waits one timeout in a long while, not one per transfer.
const _: () = assert!(MEDIA_OUT_OF_REACH_HOLD_MS >= 100 * CONNECT_TIMEOUT_MS);
const _: () = assert!(MEDIA_OUT_OF_REACH_MAX >= 1);
const _: () = assert!(RETRY_DELAY_MS_MIN < RETRY_DELAY_MS_MAX);
// A one-shot command outlasts a hung request and still retries once.
const _: () = assert!(FLUSH_BUDGET_MS >= 2 * REQUEST_TIMEOUT_MS);
// A sync's retries span at least the longest backoff, so a busy server's hint is honoured once.
const _: () = assert!(SYNC_RETRY_BUDGET_MS >= RETRY_DELAY_MS_MAX);
// A chat's pipeline fits in the requests a connection carries, with a quarter of them left
// for other chats and fetches.
const _: () = assert!(PIPELINE_WINDOW + REQUESTS_IN_FLIGHT_MAX / 4 <= REQUESTS_IN_FLIGHT_MAX);
// A narrowed window still overlaps a round trip, and never widens past the full one.
const _: () = assert!(PIPELINE_WINDOW_MIN >= 2 && PIPELINE_WINDOW_MIN <= PIPELINE_WINDOW);
const _: () = assert!(PIPELINE_DELIVERIES_IN_FLIGHT_MAX >= PIPELINE_WINDOW);
// A page's acks go in one ack request.
const _: () = assert!(ACKS_PER_REQUEST_MAX >= FETCH_PAGE_ENTRIES_MAX as usize);
// A seen id outlives the region's 30-day queue retention: redelivery is always deduplicated.
const _: () = assert!(SEEN_RETENTION_MS > 30 * 24 * 3600 * 1000);
// A key replaced because of its age has been current for at least as long as its predecessor
// is kept, so periodic replacement never waits on the previous key.
const _: () = assert!(FALLBACK_KEY_MAX_AGE_MS >= FALLBACK_KEY_PREVIOUS_KEPT_MS);
// The sessions kept from one sender cover every message a region can hold for this device, so
// a message still in the queue never finds its session forgotten.
const _: () = assert!(
    GROUP_INBOUND_SESSIONS_PER_SENDER_MAX as u64 * GROUP_SESSION_MESSAGES_MAX as u64
        >= REGION_DEVICE_QUEUE_DEPTH_MAX
);
// Waiting for another process's lock takes no longer than a request: a shared data directory
// never stalls a command past its own timeouts.
const _: () = assert!(BUSY_TIMEOUT_MS <= REQUEST_TIMEOUT_MS);
// A live device polls its queue well within the connection's idle timeout.
const _: () = assert!(POLL_INTERVAL_MS < relay_net::limits::IDLE_TIMEOUT_MS);
// Asking about a link takes less than a request's patience, and the polls span the code's life.
const _: () = assert!(LINK_POLL_INTERVAL_MS < REQUEST_TIMEOUT_MS);
const _: () = assert!(LINK_POLLS_MAX * LINK_POLL_INTERVAL_MS >= PAIRING_CODE_TTL_MS);
// The edge's transport for devices lets a device open as many request streams at once as it
// keeps requests in flight.
const _: () =
    assert!(REQUESTS_IN_FLIGHT_MAX <= relay_net::limits::DEVICE_REQUESTS_IN_FLIGHT_MAX as usize);
// A blob stream waits longer than the edge and region give a silent stream, so their typed
// answer arrives first.
const _: () = assert!(
    BLOB_ANSWER_TIMEOUT_MS > relay_proto::limits::BLOB_STREAM_IDLE_TIMEOUT_MS + HOP_MARGIN_MS
);
// A sealed chunk is far smaller than a commit unit: a resumed upload loses little.
const _: () =
    assert!(BLOB_PLAINTEXT_CHUNK_BYTES as u64 <= relay_proto::limits::BLOB_COMMIT_UNIT_BYTES);
const _: () = assert!(BLOB_TRANSFER_ATTEMPTS_MAX >= 2, "one resumption at least");
