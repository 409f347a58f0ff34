//! Every bound of the network shell in one place, with units in the names: those of every QUIC
//! connection, then those of device connections (a device and its edge), which an edge holds by
//! the ten thousand and so keeps small.

use relay_proto::limits::FRAME_BYTES_MAX;

/// How long a connection may stay silent before it is closed, in ms.
pub const IDLE_TIMEOUT_MS: u64 = 30_000;

/// How often an idle connection sends a keep-alive, in ms. On a device connection only the
/// device sends them (its NAT binding is what must stay open); the edge relies on them.
pub const KEEP_ALIVE_INTERVAL_MS: u64 = 5_000;

/// How long a connection attempt to a peer (a region) may take, handshake included, in ms.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// How often an edge or region looks whether a peer it holds a connection to moved (its
/// address in the peers file changed: a standby took over), and drops that connection.
pub const PEER_MOVE_CHECK_INTERVAL_MS: u64 = 250;

/// Attempts of one request to a peer that moved while it was under way (its standby took
/// over): the first, and one at the new address.
pub const MOVED_PEER_ATTEMPTS_MAX: u32 = 2;

/// Most bidirectional streams (requests) a peer may have open at once on one internal
/// connection (edge↔region, region↔region); QUIC flow control holds back the next until one
/// ends.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1_024;

// Device connections.

/// Requests a device has in flight at once on its connection, as the client library keeps them
/// (`relay_client::limits::REQUESTS_IN_FLIGHT_MAX`).
pub const DEVICE_REQUESTS_IN_FLIGHT_MAX: u32 = 64;

/// Most bidirectional streams a device may have open at once on its connection to an edge: its
/// requests in flight, its control stream, and room for streams that ended but whose credit the
/// edge's `MAX_STREAMS` frame has not brought back yet (a round trip). quinn keeps an entry for
/// every stream a peer may open from the first packet on, so every idle connection pays for
/// this bound (at 1,024 it was 86 KB of hash tables per connection).
pub const DEVICE_STREAMS_PER_CONNECTION_MAX: u32 = 96;

/// Most bidirectional streams a device may have open at once on a connection to a region's
/// media endpoint: one transfer's stream, and room for a retry before the first one's credit
/// comes back. A media connection lives for one transfer; quinn's default windows serve it.
pub const MEDIA_STREAMS_PER_CONNECTION_MAX: u32 = 4;

/// Bytes a device may send on one stream ahead of the edge reading them. A larger frame still
/// goes through, in steps of this window.
pub const DEVICE_STREAM_RECEIVE_WINDOW_BYTES: u32 = 64 * 1024;

/// Bytes a device may send on all its streams together ahead of the edge reading them: the
/// most one device connection makes the edge buffer.
pub const DEVICE_RECEIVE_WINDOW_BYTES: u32 = 256 * 1024;

/// Bytes the edge may have sent to one device and not yet seen acknowledged: one largest frame
/// (a page of the device's queue).
pub const DEVICE_SEND_WINDOW_BYTES: u64 = FRAME_BYTES_MAX as u64;

/// The UDP payload size device connections start with, in bytes: QUIC's minimum, which every
/// path carries.
pub const DEVICE_INITIAL_MTU_BYTES: u16 = 1_200;

/// The one larger UDP payload size a device connection probes for, in bytes, and keeps if the
/// probe arrives: quinn's default upper bound (an Ethernet MTU of 1,500 less IPv6 and UDP
/// headers). One probe instead of a binary search: `relay_net`'s device transport says why.
pub const DEVICE_MTU_PROBE_BYTES: u16 = 1_452;

/// The receive buffer an edge asks the kernel for on its device socket, in bytes: the Initial
/// packets of many devices connecting at once wait there while the edge is busy with earlier
/// handshakes, and one dropped costs its device a retransmission timeout (about a second). The
/// kernel caps it at `net.core.rmem_max`; the edge logs what it got.
pub const DEVICE_SOCKET_RECEIVE_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// TLS session tickets an edge gives a device on each connection: the device resumes its next
/// login with one, and has another if that attempt fails before the new ones arrive.
pub const DEVICE_TLS_TICKETS_PER_CONNECTION: usize = 2;

/// Server names whose TLS sessions a device remembers (rustls keeps up to 8 tickets of each).
/// Every edge answers to one name, so a few are plenty.
pub const DEVICE_TLS_SERVER_NAMES_MAX: usize = 4;

// A connection stays up across one lost keep-alive.
const _: () = assert!(KEEP_ALIVE_INTERVAL_MS * 2 <= IDLE_TIMEOUT_MS);
// A peer that does not finish its handshake is given up before an idle connection would be.
const _: () = assert!(PEER_CONNECT_TIMEOUT_MS < IDLE_TIMEOUT_MS);
// quinn takes the stream limit as a QUIC variable-length integer.
const _: () = assert!(STREAMS_PER_CONNECTION_MAX >= 1);
// A device's requests in flight and its control stream fit its connection, with a quarter of
// that to spare for credit still on its way back.
const _: () =
    assert!(DEVICE_STREAMS_PER_CONNECTION_MAX >= (DEVICE_REQUESTS_IN_FLIGHT_MAX + 1) * 5 / 4);
// quinn's stream tables hold 7/8 of their buckets: up to 112 streams fit 128 buckets.
const _: () = assert!(DEVICE_STREAMS_PER_CONNECTION_MAX <= 112);
const _: () = assert!(DEVICE_STREAMS_PER_CONNECTION_MAX <= STREAMS_PER_CONNECTION_MAX);
const _: () = assert!(MEDIA_STREAMS_PER_CONNECTION_MAX >= 2);
const _: () = assert!(MEDIA_STREAMS_PER_CONNECTION_MAX <= DEVICE_STREAMS_PER_CONNECTION_MAX);
// One stream's window fits the connection's, and a largest frame fits the send window.
const _: () = assert!(DEVICE_STREAM_RECEIVE_WINDOW_BYTES <= DEVICE_RECEIVE_WINDOW_BYTES);
const _: () = assert!(DEVICE_SEND_WINDOW_BYTES >= FRAME_BYTES_MAX as u64);
// QUIC requires datagrams of at least 1,200 bytes.
const _: () = assert!(DEVICE_INITIAL_MTU_BYTES >= 1_200);
// One probe: the binary search's first midpoint is closer than its minimum change (the
// difference), so quinn probes the upper bound directly and then stops.
const _: () = assert!(DEVICE_MTU_PROBE_BYTES > DEVICE_INITIAL_MTU_BYTES);
// A device always has a ticket to resume with, and remembers the one name edges answer to.
const _: () = assert!(DEVICE_TLS_TICKETS_PER_CONNECTION >= 1);
const _: () = assert!(DEVICE_TLS_SERVER_NAMES_MAX >= 1);
