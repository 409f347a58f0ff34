//! Every bound of the network shell in one place, with units in the names.

/// How long a connection may stay silent before it is closed, in ms.
pub const IDLE_TIMEOUT_MS: u64 = 30_000;

/// How often an idle connection sends a keep-alive, in ms.
pub const KEEP_ALIVE_INTERVAL_MS: u64 = 5_000;

/// How long a connection attempt to a peer (a region) may take, handshake included, in ms.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Most bidirectional streams (requests) a peer may have open at once on one connection; QUIC
/// flow control holds back the next until one ends.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1_024;

// A connection stays up across one lost keep-alive.
const _: () = assert!(KEEP_ALIVE_INTERVAL_MS * 2 <= IDLE_TIMEOUT_MS);
// A peer that does not finish its handshake is given up before an idle connection would be.
const _: () = assert!(PEER_CONNECT_TIMEOUT_MS < IDLE_TIMEOUT_MS);
// quinn takes the stream limit as a QUIC variable-length integer.
const _: () = assert!(STREAMS_PER_CONNECTION_MAX >= 1);
