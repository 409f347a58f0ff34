//! Every bound of the edge in one place, with units in the names: device connections and their
//! requests, the home-region cache, the device-key cache, subscriptions to regions, and the DNS
//! locator. The bounds
//! the edge shares with devices and regions (frame sizes, the nested timeouts) are in
//! [`relay_proto::limits`]; those of QUIC connections in [`relay_net::limits`].

use relay_proto::limits::{
    DIRECTORY_CACHE_TTL_MS, EDGE_ANSWER_TIMEOUT_MS, ENVELOPE_RECIPIENT_DEVICES_MAX, HOP_MARGIN_MS,
    SUBSCRIBED_DEVICES_PER_STREAM_MAX,
};
use relay_proto::{AccountId, DeviceAddress};

use crate::cache::Home;
use crate::keys::DeviceKey;

// Device connections.

/// Gatherings of devices' acks on their way to one region at once ([`crate::acks`]): an ack
/// that finds fewer starts one (it leaves at once); else it waits for the next to leave.
pub const ACK_GATHERINGS_IN_FLIGHT_MAX: usize = 4;

/// Most device connections one edge holds; past it new connections are refused (QUIC
/// `CONNECTION_REFUSED`) and devices retry with backoff, possibly at another edge.
pub const DEVICE_CONNECTIONS_MAX: usize = 100_000;

/// How long a device has to authenticate after `Hello`, in ms.
pub const AUTH_TIMEOUT_MS: u64 = 10_000;

/// Sustained requests per second one device connection may make, unless configured. A person
/// types far below it; a device draining a backlog or a bot answering many chats stays under
/// it; past it a device is refused `Throttled` with the time until its next request is allowed.
pub const REQUESTS_PER_SECOND_DEFAULT: u32 = 500;

/// Sustained new device connections per second one source address (an IPv4 address, an IPv6
/// /64) may open, by default.
pub const CONNECTIONS_PER_SECOND_PER_ADDRESS_DEFAULT: u32 = 20;
/// New device connections one source address may open in a burst, by default (a household or
/// an office behind one address logging in at once).
pub const CONNECTIONS_BURST_PER_ADDRESS_DEFAULT: u32 = 100;
/// Source addresses whose connection rate an edge tracks at once.
pub const ADMISSION_ADDRESSES_MAX: usize = 100_000;
/// How long a client is told to wait when the edge tracks too many addresses, in ms.
pub const ADMISSION_OVERLOADED_RETRY_MS: u64 = 1_000;
/// How long a refused connection is kept for its first request (to answer it with the
/// refusal), in ms.
pub const ADMISSION_REFUSAL_WAIT_MS: u64 = 2_000;

/// Requests one device connection may make in a burst, unless configured: a device coming
/// online with [`BACKLOG_SENDS_IN_A_BURST`] composed messages sends them at once (with the
/// fetches and acknowledgements that go with them), as fast as its pipeline allows.
pub const REQUESTS_BURST_DEFAULT: u32 = 12_000;

/// Composed messages a device coming online sends in one burst without being throttled.
pub const BACKLOG_SENDS_IN_A_BURST: u32 = 10_000;

/// How long an `Overloaded` answer (a region too slow to answer) asks the device to wait before
/// it retries, in ms.
pub const OVERLOADED_RETRY_AFTER_MS: u64 = 2_000;

/// How long the `Unavailable` answer to a request for an account that moved away from the region
/// the edge sent it to, when that region could not say where it went, asks the device to wait
/// before it retries, in ms (the directory's replicas learn a move within a second or so).
pub const MOVED_HOME_UNKNOWN_RETRY_AFTER_MS: u64 = 1_000;

/// Rounds of routing one envelope to the regions of its accounts, each after a region refused
/// an account that moved since the edge learned its home (two moves at once, in practice).
pub const SEND_ROUTE_ROUNDS_MAX: u32 = 3;

// The home-region cache.

/// Most accounts whose home region an edge remembers; the least recently used is forgotten.
pub const HOME_CACHE_ENTRIES_MAX: usize = 100_000;

/// How long an edge uses a cached home region before asking again, in ms.
pub const HOME_CACHE_TTL_MS: u64 = DIRECTORY_CACHE_TTL_MS;

/// Most memory the home-region cache takes, in bytes.
pub const HOME_CACHE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most bytes one cached home takes, overheads included (about 114 on 64-bit targets).
pub const HOME_CACHE_ENTRY_BYTES_MAX: usize =
    relay_net::cache::TtlCache::<AccountId, Home>::ENTRY_BYTES_MAX;

// The device-key cache.

/// Most devices whose key an edge remembers; the least recently used is forgotten. Twice the
/// connections an edge holds, so devices that reconnect find their key after a wave of others.
pub const DEVICE_KEY_CACHE_ENTRIES_MAX: usize = 2 * DEVICE_CONNECTIONS_MAX;

/// How long an edge uses a cached device key before asking the home region again, in ms. The
/// cache's correctness does not rest on it (see `crate::keys`): it bounds how long an entry of a
/// device that never comes back takes a place.
pub const DEVICE_KEY_CACHE_TTL_MS: u64 = 30 * 60 * 1_000;

/// Most memory the device-key cache takes, in bytes.
pub const DEVICE_KEY_CACHE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Most bytes one cached device key takes, overheads included (about 230 on 64-bit targets).
pub const DEVICE_KEY_CACHE_ENTRY_BYTES_MAX: usize =
    relay_net::cache::TtlCache::<DeviceAddress, DeviceKey>::ENTRY_BYTES_MAX;

// Subscriptions to regions.

/// Subscription changes (devices connecting or leaving) waiting to be sent to one region;
/// past it they are dropped and the stream is brought in line with the devices connected now,
/// Typing indicators one connection may send in a burst (a user starting and stopping in a few
/// chats); past it they are refused `Throttled` with a retry-after.
pub const TYPING_BURST: u32 = 8;

/// Sustained typing indicators per second one connection may send: a typing device repeats
/// its indicator every [`relay_proto::limits::TYPING_REPEAT_MS`] per chat.
pub const TYPING_PER_SECOND: u32 = 1;

/// Typing indicators waiting for one region's subscription stream; past it new ones are
/// dropped (they are ephemeral, and the receiver's "typing…" expires by itself).
pub const TYPING_WAITING_MAX: usize = 4_096;

/// Presence updates and typing notices waiting for one device connection, one per watched
/// account and per typing device (a newer one replaces its predecessor); past it new ones are
/// dropped and logged.
pub const DEVICE_EVENTS_WAITING_MAX: usize =
    relay_proto::limits::PRESENCE_WATCHES_PER_DEVICE_MAX + 64;

/// as after a reconnect.
pub const SUBSCRIPTION_CHANGES_MAX: usize = 4_096;

/// Pause between attempts to re-open a subscription stream to a region, in ms.
pub const RESUBSCRIBE_DELAY_MS: u64 = 300;

// The DNS locator.

/// The most edges one region may list; bounds the size of an answer.
pub const EDGES_PER_REGION_MAX: usize = 32;

/// The largest TTL the locator hands out, in seconds: answers must stay short-lived so failover
/// is quick.
pub const TTL_SECONDS_MAX: u32 = 3_600;

/// The TTL of the locator's answers unless configured, in seconds.
pub const LOCATOR_TTL_SECONDS_DEFAULT: u32 = 5;

/// The largest UDP response the locator sends to an EDNS client, in bytes (the DNS flag day
/// 2020 value).
pub const UDP_PAYLOAD_BYTES_MAX: u16 = 1_232;

/// Bytes of one A record in an answer: a compressed name (2), type, class (2 each), TTL (4),
/// data length (2) and the address (4).
pub const DNS_A_RECORD_BYTES: usize = 16;

/// How long a TCP connection to the locator may stay idle before it is closed, in ms.
pub const LOCATOR_TCP_IDLE_TIMEOUT_MS: u64 = 5_000;

/// How many responses may wait to be written on one TCP connection to the locator.
pub const LOCATOR_TCP_RESPONSES_WAITING_MAX: usize = 32;

/// How long the locator waits for its tasks to stop after shutdown is requested, in ms.
pub const LOCATOR_SHUTDOWN_TIMEOUT_MS: u64 = 5_000;

/// How many random ports the locator tries when asked for port 0 and the port its UDP socket
/// got is already taken for TCP.
pub const LOCATOR_BIND_ATTEMPTS_MAX: usize = 8;

// Relations between the bounds, checked at compile time.

// A device's authentication asks its home region for its key within the edge's answer bound;
// a slow region reaches the device as `Overloaded`, never as an authentication timeout.
const _: () = assert!(AUTH_TIMEOUT_MS >= EDGE_ANSWER_TIMEOUT_MS + HOP_MARGIN_MS);
// A burst is at least one second of the sustained rate.
const _: () = assert!(REQUESTS_BURST_DEFAULT >= REQUESTS_PER_SECOND_DEFAULT);
// A backlog's burst leaves room for a page of fetches and acknowledgements per 10 sends.
const _: () =
    assert!(REQUESTS_BURST_DEFAULT >= BACKLOG_SENDS_IN_A_BURST + BACKLOG_SENDS_IN_A_BURST / 10);
const _: () = assert!(REQUESTS_PER_SECOND_DEFAULT >= 1);
// Every account of one envelope (its recipients and its sender) is cached at once, so a send
// never evicts the homes it just looked up.
const _: () = assert!(HOME_CACHE_ENTRIES_MAX > ENVELOPE_RECIPIENT_DEVICES_MAX);
const _: () = assert!(HOME_CACHE_ENTRIES_MAX * HOME_CACHE_ENTRY_BYTES_MAX <= HOME_CACHE_BYTES_MAX);
// Every connected device's key can be cached at once, within the cache's memory bound; an
// entry outlives the login that looked it up.
const _: () = assert!(DEVICE_KEY_CACHE_ENTRIES_MAX >= DEVICE_CONNECTIONS_MAX);
const _: () = assert!(
    DEVICE_KEY_CACHE_ENTRIES_MAX * DEVICE_KEY_CACHE_ENTRY_BYTES_MAX <= DEVICE_KEY_CACHE_BYTES_MAX
);
const _: () = assert!(DEVICE_KEY_CACHE_TTL_MS > AUTH_TIMEOUT_MS);
// Every connected device fits one subscription stream at its region.
const _: () = assert!(DEVICE_CONNECTIONS_MAX <= SUBSCRIBED_DEVICES_PER_STREAM_MAX);
// A subscription stream is re-opened sooner than a device gives up waiting for an answer.
const _: () = assert!(RESUBSCRIBE_DELAY_MS < EDGE_ANSWER_TIMEOUT_MS);
// The locator's answers: the default TTL is allowed, and the A records of every edge of a region
// fit one UDP answer with room for the header, the question and the EDNS record (SRV answers,
// with their targets' addresses, may be truncated and retried over TCP).
const _: () = assert!(LOCATOR_TTL_SECONDS_DEFAULT <= TTL_SECONDS_MAX);
const _: () =
    assert!(EDGES_PER_REGION_MAX * DNS_A_RECORD_BYTES + 512 <= UDP_PAYLOAD_BYTES_MAX as usize);

// A connection's typing burst covers a start and a stop in a few chats at once.
const _: () = assert!(TYPING_BURST >= 2 && TYPING_PER_SECOND >= 1);
// Every watched account's latest presence fits the connection's waiting events.
const _: () =
    assert!(DEVICE_EVENTS_WAITING_MAX > relay_proto::limits::PRESENCE_WATCHES_PER_DEVICE_MAX);
const _: () =
    assert!(CONNECTIONS_BURST_PER_ADDRESS_DEFAULT >= CONNECTIONS_PER_SECOND_PER_ADDRESS_DEFAULT);
const _: () = assert!(CONNECTIONS_PER_SECOND_PER_ADDRESS_DEFAULT >= 1);
