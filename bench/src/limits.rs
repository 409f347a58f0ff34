//! Every bound of the message and connection benchmarks in one place, with units in the names,
//! and the relations between them asserted at compile time. (The storage benchmark keeps its
//! constants next to its workload in [`crate::storage`].)

use relay_proto::limits::{EDGE_ANSWER_TIMEOUT_MS, HOP_MARGIN_MS, QUEUE_FETCH_ENTRIES_MAX};

// ---------------------------------------------------------------------------------------------
// Devices

/// How long one request of a bench device may take, in ms: as long as the client library
/// waits, so that a slow region reaches the device as a typed answer and only a request the
/// edge never answered counts as timed out.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long a device's QUIC handshake with an edge may take, in ms.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long closing the devices' connections waits for the closes to reach the edge, in ms.
pub const CLOSE_WAIT_MS: u64 = 2_000;
/// Device connections sharing one client QUIC endpoint (one UDP socket of the bench process):
/// thousands of devices need a few hundred sockets, not thousands. The edge sees one
/// connection per device either way.
pub const DEVICES_PER_ENDPOINT_MAX: usize = 64;
/// The receive buffer asked for each of those sockets, in bytes: a phone reads its own socket,
/// with the system's default buffer (208 KiB on Linux) for one connection; here 64 devices'
/// handshake flights land in one buffer at once, and a datagram dropped there costs its
/// device a retransmission timeout (a second, for a handshake) that is the bench's, not the
/// edge's. 64 KiB a device; the kernel caps it at `net.core.rmem_max` (and says so).
pub const DEVICE_SOCKET_RECEIVE_BUFFER_BYTES: usize = 64 * 1024 * DEVICES_PER_ENDPOINT_MAX;
/// How long an online device waits for a push before it fetches anyway, in ms: the client
/// library's poll interval (`relay_client::app::POLL_INTERVAL_MS`), so a lost push costs what
/// it costs a real client, and is counted.
pub const POLL_INTERVAL_MS: u64 = 10_000;
/// Fetches one drain of a device's queue makes at most before waiting for the next push.
pub const FETCHES_PER_DRAIN_MAX: u32 = 10_000;
/// Transmissions of one envelope at most (retries after retryable refusals or timeouts); past
/// it the benchmark fails instead of measuring a stuck server.
pub const SEND_ATTEMPTS_MAX: u32 = 30;
/// First wait before retrying an envelope after a retryable failure, in ms; it doubles with
/// each failure in a row.
pub const SEND_RETRY_DELAY_MS_MIN: u64 = 20;
/// Longest wait before retrying an envelope (or a fetch), in ms; a longer hint from the server
/// is cut to it.
pub const SEND_RETRY_DELAY_MS_MAX: u64 = 2_000;
/// Queue entries one ack request acknowledges at most (the rest wait for the next), as the
/// client library's `ACKS_PER_REQUEST_MAX`: a page's acks fit in one.
pub const ACKS_PER_REQUEST_MAX: usize = QUEUE_FETCH_ENTRIES_MAX as usize;
/// Attempts of one fetch (or ack) at most before a device's inbox gives up.
pub const FETCH_ATTEMPTS_MAX: u32 = 30;
/// Registrations (and first connections) under way at once.
pub const REGISTRATIONS_IN_FLIGHT_MAX: usize = 32;
/// Connections being opened and authenticated at once by the connection benchmark.
pub const CONNECTS_IN_FLIGHT_MAX: usize = 64;

// ---------------------------------------------------------------------------------------------
// `relayd bench messages`

/// Bytes of the opaque payload (the "ciphertext") of every message.
pub const PAYLOAD_BYTES: usize = 100;
/// Default senders (and as many receivers) of the W1 rows.
pub const SENDERS_DEFAULT: usize = 100;
/// Most senders of one run.
pub const SENDERS_MAX: usize = 1_000;
/// Default measured window of each W1 row, in seconds.
pub const MESSAGES_WINDOW_SECONDS_DEFAULT: f64 = 10.0;
/// Measured window of each W1 row with `--quick`, in seconds.
pub const MESSAGES_WINDOW_SECONDS_QUICK: f64 = 2.0;
/// Longest measured window of a row, in seconds.
pub const WINDOW_SECONDS_MAX: f64 = 600.0;
/// Longest warm-up before a row's window, in seconds (it is a quarter of the window up to
/// this).
pub const WARMUP_SECONDS_MAX: f64 = 2.0;
/// The open-loop W1 row offers this share of the closed-loop row's delivered rate.
pub const OPEN_LOOP_SHARE_OF_MAX: f64 = 0.5;
/// Messages one sender composes for an offline receiver in the W4 row.
pub const BACKLOG_MESSAGES: u64 = 10_000;
/// The same with `--quick`.
pub const BACKLOG_MESSAGES_QUICK: u64 = 300;
/// Envelopes of the backlog's chat in flight at once: the client library's outbox window
/// (`relay_client::limits::PIPELINE_WINDOW`).
pub const BACKLOG_PIPELINE_WINDOW: usize = relay_client::limits::PIPELINE_WINDOW;
/// Members (the sender's account included) of the W3 groups by default: issue 13's two sizes,
/// each a closed-loop row; the first also gets the open-loop row at half its rate.
pub const GROUP_MEMBERS_DEFAULT: [usize; 2] = [100, relay_proto::limits::GROUP_MEMBERS_MAX];
/// Most W3 group sizes of one run.
pub const GROUP_SIZES_MAX: usize = 4;
/// Accounts one W3 `Add` group command adds at most (one directory transaction each); a group
/// is filled in batches of this many.
pub const GROUP_ADD_ACCOUNTS_PER_COMMAND: usize = 256;
/// Issue 13's target: deliveries per second (counted at the member devices) from one sender to
/// a group of [`W3_TARGET_MEMBERS`] members, opaque payloads.
pub const W3_DELIVERIES_PER_SECOND_TARGET: f64 = 100_000.0;
/// The group size issue 13's targets are stated for.
pub const W3_TARGET_MEMBERS: usize = 100;
/// Issue 13's target: send → deliver p99 at half of W3's max rate, in ms.
pub const W3_OPEN_SEND_TO_DELIVER_P99_MS_TARGET: f64 = 200.0;
/// How long a row may take after its window to have every envelope in flight acknowledged and
/// every acknowledged message delivered, in ms.
pub const DRAIN_TIMEOUT_MS: u64 = 60_000;
/// How long storing, or draining, the backlog may take, in ms.
pub const BACKLOG_TIMEOUT_MS: u64 = 600_000;
/// How long registering and connecting every device of a run may take, in ms.
pub const REGISTRATION_TIMEOUT_MS: u64 = 600_000;
/// Latency samples kept per row and kind (about 4 MB each); later ones are counted but not
/// kept.
pub const LATENCY_SAMPLES_MAX: usize = 1_000_000;
/// Messages the Olm ceiling encrypts at most (it stops at the end of its window before).
pub const OLM_MESSAGES_MAX: usize = 2_000_000;

// ---------------------------------------------------------------------------------------------
// `relayd bench messages --mode e2ee`

/// Worker threads of the runtime the SDK devices run on. A device's store writes SQLite
/// synchronously (with an fsync per transaction) on its task, as it does in an app; on a
/// runtime of one worker per core, two fsyncs would stall every other device of the process.
/// Each device of a real deployment runs on its own phone: more threads than cores, so a
/// device waiting for its disk does not hold the others, is the closer picture.
pub const E2EE_WORKER_THREADS: usize = 8;
/// How long the introductions may take (each sender's first message to each of its peers and
/// the peer's answer: name lookups, key claims, Olm sessions), in ms.
pub const INTRODUCTIONS_TIMEOUT_MS: u64 = 120_000;
/// How long closing every SDK device may take, in ms (each says goodbye to its edge).
pub const DEVICES_CLOSE_TIMEOUT_MS: u64 = 30_000;
/// Most SDK devices closed at once.
pub const CLOSES_IN_FLIGHT_MAX: usize = 64;

// ---------------------------------------------------------------------------------------------
// `relayd bench connections`

/// Default idle devices of the connection benchmark.
pub const IDLE_DEVICES_DEFAULT: usize = 10_000;
/// Idle devices with `--quick`.
pub const IDLE_DEVICES_QUICK: usize = 200;
/// Most idle devices of one run.
pub const IDLE_DEVICES_MAX: usize = 50_000;
/// How long the idle connections are held before the edge's memory is read, in ms: keep-alives
/// and the subscriptions have settled by then.
pub const IDLE_HOLD_MS: u64 = 3_000;
/// How long the edge's memory is watched after every device disconnected, in ms: until it
/// stops falling for [`RSS_STEADY_MS`] or this passes.
pub const RSS_RETURN_WAIT_MS_MAX: u64 = 30_000;
/// How long the edge's resident memory must stay unchanged to count as settled, in ms.
pub const RSS_STEADY_MS: u64 = 2_000;
/// Pause between two readings of a process's resident memory, in ms.
pub const RSS_POLL_INTERVAL_MS: u64 = 250;
/// How long opening and authenticating every idle device may take, in ms.
pub const CONNECTIONS_TIMEOUT_MS: u64 = 600_000;
/// Target: the edge's resident memory per idle authenticated connection, in bytes.
pub const EDGE_BYTES_PER_CONNECTION_TARGET: u64 = 16 * 1024;
/// Target: authenticated connections per second.
pub const CONNECTIONS_PER_SECOND_TARGET: f64 = 3_000.0;
/// Target: after every device left, the edge's resident memory is within this share of what it
/// was before they came.
pub const RSS_RETURN_SHARE_TARGET: f64 = 0.10;

// A device waits for the edge's own answer (which comes before the edge's bound) plus the hop.
// A page's acks go in one ack request.
const _: () = assert!(ACKS_PER_REQUEST_MAX >= QUEUE_FETCH_ENTRIES_MAX as usize);
const _: () = assert!(REQUEST_TIMEOUT_MS >= EDGE_ANSWER_TIMEOUT_MS + HOP_MARGIN_MS);
const _: () = assert!(CONNECT_TIMEOUT_MS <= REQUEST_TIMEOUT_MS);
const _: () = assert!(SEND_RETRY_DELAY_MS_MIN < SEND_RETRY_DELAY_MS_MAX);
// Retries of one envelope fit in the time a row may take to drain.
const _: () = assert!(
    SEND_ATTEMPTS_MAX as u64 * SEND_RETRY_DELAY_MS_MAX < DRAIN_TIMEOUT_MS * 2,
    "an envelope retried to its last attempt would outlive its row"
);
// A message whose push was lost arrives with the next poll, well within a row's drain.
const _: () = assert!(DRAIN_TIMEOUT_MS > 2 * POLL_INTERVAL_MS);
// A row's drain waits for at least an envelope sent at the window's end that timed out once.
const _: () = assert!(DRAIN_TIMEOUT_MS > 2 * REQUEST_TIMEOUT_MS);
const _: () = assert!(BACKLOG_MESSAGES_QUICK <= BACKLOG_MESSAGES);
const _: () = assert!(BACKLOG_PIPELINE_WINDOW >= 1);
// A group of every default size can be made (its sender and one member at least), in batches
// the protocol accepts.
const _: () = assert!(GROUP_MEMBERS_DEFAULT[0] >= 2 && GROUP_MEMBERS_DEFAULT[1] >= 2);
const _: () = assert!(GROUP_MEMBERS_DEFAULT[0] <= relay_proto::limits::GROUP_MEMBERS_MAX);
const _: () = assert!(GROUP_MEMBERS_DEFAULT[1] <= relay_proto::limits::GROUP_MEMBERS_MAX);
const _: () = assert!(GROUP_MEMBERS_DEFAULT.len() <= GROUP_SIZES_MAX);
const _: () = assert!(
    GROUP_ADD_ACCOUNTS_PER_COMMAND >= 1
        && GROUP_ADD_ACCOUNTS_PER_COMMAND <= relay_proto::limits::GROUP_MEMBERS_MAX
);
const _: () = assert!(W3_TARGET_MEMBERS <= relay_proto::limits::GROUP_MEMBERS_MAX);
const _: () = assert!(SENDERS_DEFAULT <= SENDERS_MAX);
const _: () = assert!(IDLE_DEVICES_QUICK <= IDLE_DEVICES_DEFAULT);
const _: () = assert!(IDLE_DEVICES_DEFAULT <= IDLE_DEVICES_MAX);
const _: () = assert!(RSS_POLL_INTERVAL_MS < RSS_STEADY_MS);
const _: () = assert!(RSS_STEADY_MS < RSS_RETURN_WAIT_MS_MAX);
const _: () = assert!(DEVICES_PER_ENDPOINT_MAX >= 1);
// The lifted edge limits stay far below where the edge's token arithmetic (tokens in
// thousandths, refilled per elapsed ms) could overflow a u64.

// An E2EE text is a message the SDK accepts.
const _: () = assert!(PAYLOAD_BYTES <= relay_client::limits::TEXT_BYTES_MAX);
const _: () = assert!(E2EE_WORKER_THREADS >= 2);
// Closing waits for at least one device's goodbye to reach its edge.
const _: () = assert!(DEVICES_CLOSE_TIMEOUT_MS > relay_client::limits::CLOSE_WAIT_MS);
const _: () = assert!(CLOSES_IN_FLIGHT_MAX >= 1);
// Introductions outlast a request the SDK retries after its timeout.
const _: () = assert!(INTRODUCTIONS_TIMEOUT_MS > 2 * relay_client::limits::REQUEST_TIMEOUT_MS);

// --- The blob benchmark (`crate::blobs`) ---

/// Bytes of the benchmark's blob by default: issue 14's 20 MB file.
pub const BLOB_BYTES_DEFAULT: usize = 20 * 1000 * 1000;
/// Bytes of the blob with `--quick`.
pub const BLOB_BYTES_QUICK: usize = 4 * 1000 * 1000;
/// Rounds of each direction by default (the median is reported).
pub const BLOB_ROUNDS_DEFAULT: usize = 3;
/// Most rounds of each direction.
pub const BLOB_ROUNDS_MAX: usize = 20;
/// Issue 14's target: a blob moves at least this share of a raw QUIC stream's throughput.
pub const BLOB_SHARE_OF_RAW_TARGET: f64 = 0.70;

const _: () = assert!(BLOB_ROUNDS_DEFAULT >= 1 && BLOB_ROUNDS_DEFAULT <= BLOB_ROUNDS_MAX);
const _: () = assert!(BLOB_BYTES_QUICK <= BLOB_BYTES_DEFAULT);
const _: () = assert!(BLOB_BYTES_DEFAULT as u64 <= relay_proto::limits::BLOB_BYTES_MAX / 2);

// --- The sync benchmark (`crate::sync`) ---

/// Messages of the long history by default: issue 12's bootstrap of 100,000 messages.
pub const SYNC_MESSAGES_DEFAULT: u64 = 100_000;
/// Messages of the long history with `--quick`.
pub const SYNC_MESSAGES_QUICK: u64 = 2_000;
/// Messages of the history linked both by snapshot and by the sync protocol only, by default:
/// long enough to tell them apart, short enough for the sync protocol alone.
pub const SYNC_COMPARE_MESSAGES_DEFAULT: u64 = 10_000;
/// The same with `--quick`.
pub const SYNC_COMPARE_MESSAGES_QUICK: u64 = 1_000;
/// Issue 12's target: the new device is usable within this many seconds of the approval.
pub const BOOTSTRAP_USABLE_SECONDS_TARGET: f64 = 10.0;
/// Issue 12's target: a bootstrap transfers less than this many times automerge's own saved
/// size of the same documents.
pub const BOOTSTRAP_BYTES_RATIO_TARGET: f64 = 2.0;
/// How often the benchmark reads the laptop's documents while it waits for them, in ms.
pub const HISTORY_POLL_INTERVAL_MS: u64 = 250;
/// How often the phone asks for the laptop's link request, in ms.
pub const LINK_REQUEST_POLL_MS: u64 = 100;
/// Times the phone asks for the laptop's link request before the benchmark gives up.
pub const LINK_POLLS_MAX: u32 = 600;
/// How long the laptop may take from the approval to the phone's chat, in s: generous, so a
/// slow machine measures a slow link instead of failing (the sync protocol alone is slow).
pub const SYNC_CONVERGE_DEADLINE_SECONDS: u64 = 1_800;

const _: () = assert!(SYNC_MESSAGES_QUICK >= 2 && SYNC_MESSAGES_QUICK <= SYNC_MESSAGES_DEFAULT);
const _: () = assert!(SYNC_COMPARE_MESSAGES_QUICK <= SYNC_COMPARE_MESSAGES_DEFAULT);
const _: () = assert!(SYNC_COMPARE_MESSAGES_DEFAULT <= SYNC_MESSAGES_DEFAULT);
// The link request is awaited for at least a minute (the pairing flow's own patience).
const _: () = assert!(LINK_POLLS_MAX as u64 * LINK_REQUEST_POLL_MS >= 60_000);
const _: () = assert!(HISTORY_POLL_INTERVAL_MS < SYNC_CONVERGE_DEADLINE_SECONDS * 1_000);

// --- The presence benchmark (`crate::presence`) ---

/// Watcher devices (region 2) of the P1 fan-out by default, each watching every watched
/// account.
pub const PRESENCE_WATCHERS_DEFAULT: usize = 1_000;
/// Watchers with `--quick`.
pub const PRESENCE_WATCHERS_QUICK: usize = 100;
/// Most watchers of one run.
pub const PRESENCE_WATCHERS_MAX: usize = 20_000;
/// Watched accounts (region 1) of P1 by default, each with one device that comes and goes.
pub const PRESENCE_ACCOUNTS_DEFAULT: usize = 10;
/// Most watched accounts of one run: every watcher watches every one of them, and a device
/// watches at most `PRESENCE_WATCHES_PER_DEVICE_MAX` accounts.
pub const PRESENCE_ACCOUNTS_MAX: usize = relay_proto::limits::PRESENCE_WATCHES_PER_DEVICE_MAX;
/// Times every watched account's device connects and leaves again in P1 by default (each a
/// change every watcher is told of).
pub const PRESENCE_CYCLES_DEFAULT: u32 = 10;
/// The same with `--quick`.
pub const PRESENCE_CYCLES_QUICK: u32 = 3;
/// Most connect/leave cycles of one run.
pub const PRESENCE_CYCLES_MAX: u32 = 1_000;
/// How long every watcher may take to get one wave of presence (the first states of every
/// watch, or one connect or leave of every watched account), in ms; past it the wave counts
/// what arrived and the run goes on.
pub const PRESENCE_WAVE_TIMEOUT_MS: u64 = 30_000;
/// Pause between two readings of the pushes counted while a wave is awaited, in ms.
pub const PRESENCE_WAVE_POLL_MS: u64 = 2;
/// Watch requests under way at once (each watcher watches its accounts one after the other).
pub const WATCHES_IN_FLIGHT_MAX: usize = 64;
/// Presence and typing pushes kept with their arrival times per run (about 56 bytes each);
/// later ones are counted, not kept.
pub const SIGNALS_KEPT_MAX: usize = 2_000_000;
/// Typing senders (region 1, one connection each) of P2 by default, all typing to one
/// receiver account (region 2).
pub const TYPING_SENDERS_DEFAULT: usize = 1_000;
/// Typing senders with `--quick`.
pub const TYPING_SENDERS_QUICK: usize = 50;
/// Most typing senders of one run.
pub const TYPING_SENDERS_MAX: usize = 20_000;
/// Each typing sender's pause between two indicators, in ms: the edge's sustained typing rate
/// per connection, so that no indicator is refused.
pub const TYPING_INTERVAL_MS: u64 = 1_000 / relay_edge::limits::TYPING_PER_SECOND as u64;
/// Measured seconds of P2 by default.
pub const TYPING_WINDOW_SECONDS_DEFAULT: f64 = 10.0;
/// The same with `--quick`.
pub const TYPING_WINDOW_SECONDS_QUICK: f64 = 3.0;
/// How long the typing notices of indicators sent in the window may take to arrive after it,
/// in ms.
pub const TYPING_DRAIN_MS: u64 = 10_000;
/// Requesters of the raw QUIC ceiling of the presence benchmark (each on its own connection).
pub const PRESENCE_QUIC_REQUESTERS: usize = 100;
/// Seconds of that ceiling's window by default (after a quarter of it as warm-up).
pub const PRESENCE_CEILING_SECONDS_DEFAULT: f64 = 5.0;
/// The same with `--quick`.
pub const PRESENCE_CEILING_SECONDS_QUICK: f64 = 1.0;

const _: () = assert!(PRESENCE_WATCHERS_QUICK <= PRESENCE_WATCHERS_DEFAULT);
const _: () = assert!(PRESENCE_WATCHERS_DEFAULT <= PRESENCE_WATCHERS_MAX);
const _: () =
    assert!(PRESENCE_ACCOUNTS_DEFAULT >= 1 && PRESENCE_ACCOUNTS_DEFAULT <= PRESENCE_ACCOUNTS_MAX);
const _: () =
    assert!(PRESENCE_CYCLES_QUICK >= 1 && PRESENCE_CYCLES_QUICK <= PRESENCE_CYCLES_DEFAULT);
const _: () = assert!(PRESENCE_CYCLES_DEFAULT <= PRESENCE_CYCLES_MAX);
// Every push of a default run is kept: its first states, and two changes a cycle per watch in
// each of the two fan-out rows (every account at once, one at a time).
const _: () = assert!(
    PRESENCE_WATCHERS_DEFAULT
        * PRESENCE_ACCOUNTS_DEFAULT
        * (2 * 2 * PRESENCE_CYCLES_DEFAULT as usize + 1)
        + TYPING_SENDERS_DEFAULT * (TYPING_WINDOW_SECONDS_DEFAULT as usize + 1)
        <= SIGNALS_KEPT_MAX
);
// A wave waits for a watch whose region answered at its last moment, and is polled often.
const _: () = assert!(PRESENCE_WAVE_TIMEOUT_MS > 2 * REQUEST_TIMEOUT_MS);
const _: () = assert!(PRESENCE_WAVE_POLL_MS * 100 <= PRESENCE_WAVE_TIMEOUT_MS);
const _: () = assert!(WATCHES_IN_FLIGHT_MAX >= 1);
// A sender paced at the edge's sustained rate stays within its bucket.
const _: () = assert!(TYPING_INTERVAL_MS * relay_edge::limits::TYPING_PER_SECOND as u64 >= 1_000);
const _: () = assert!(TYPING_SENDERS_QUICK <= TYPING_SENDERS_DEFAULT);
const _: () = assert!(TYPING_SENDERS_DEFAULT <= TYPING_SENDERS_MAX);
const _: () = assert!(TYPING_WINDOW_SECONDS_QUICK <= TYPING_WINDOW_SECONDS_DEFAULT);
const _: () = assert!(TYPING_WINDOW_SECONDS_DEFAULT <= WINDOW_SECONDS_MAX);
// A notice outlives its drain only if the edge never answered the indicator.
const _: () = assert!(TYPING_DRAIN_MS >= REQUEST_TIMEOUT_MS);
const _: () = assert!(PRESENCE_CEILING_SECONDS_QUICK <= PRESENCE_CEILING_SECONDS_DEFAULT);

/// Pushes `relayd bench push` measures by default (and as many baseline POSTs).
pub const PUSHES_DEFAULT: usize = 5_000;
/// Pushes a `--quick` run measures.
pub const PUSHES_QUICK: usize = 500;
/// Pushes in flight at once by default (a region's sender allows
/// `home_region::limits::PUSH_SENDS_IN_FLIGHT_MAX`).
pub const PUSH_CONCURRENCY_DEFAULT: usize = 64;
const _: () = assert!(PUSHES_QUICK <= PUSHES_DEFAULT && PUSH_CONCURRENCY_DEFAULT <= PUSHES_QUICK);

/// Accounts in the writer's directory for `relayd bench directory`.
pub const DIRECTORY_ACCOUNTS_DEFAULT: u64 = 100_000;
/// The same, with `--quick`.
pub const DIRECTORY_ACCOUNTS_QUICK: u64 = 5_000;
const _: () = assert!(DIRECTORY_ACCOUNTS_QUICK <= DIRECTORY_ACCOUNTS_DEFAULT);
/// Groups in the writer's directory in `relayd bench directory`, and with `--quick`.
pub const DIRECTORY_GROUPS_DEFAULT: u64 = 2_000;
/// See [`DIRECTORY_GROUPS_DEFAULT`].
pub const DIRECTORY_GROUPS_QUICK: u64 = 100;
/// Members of each of those groups (a group the size of a large family or a team).
pub const DIRECTORY_GROUP_MEMBERS: u64 = 100;
const _: () = assert!(DIRECTORY_GROUPS_QUICK <= DIRECTORY_GROUPS_DEFAULT);
// Every group's members are accounts of the run, and a group may hold them.
const _: () = assert!(DIRECTORY_GROUP_MEMBERS <= DIRECTORY_ACCOUNTS_QUICK);
const _: () = assert!(DIRECTORY_GROUP_MEMBERS as usize <= relay_proto::limits::GROUP_MEMBERS_MAX);

/// `relayd bench home-move`: messages queued for each of the moving account's two devices
/// (W4's backlog: 10,000 composed for a person offline).
pub const HOME_MOVE_MESSAGES_DEFAULT: u64 = 10_000;
/// The same with `--quick`.
pub const HOME_MOVE_MESSAGES_QUICK: u64 = 1_000;
const _: () = assert!(HOME_MOVE_MESSAGES_QUICK <= HOME_MOVE_MESSAGES_DEFAULT);
