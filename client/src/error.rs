//! The client library's errors: one enum, with a way to tell what a retry can fix.

use relay_proto::net::NetError;
use relay_proto::{DeviceAddress, ErrorCode, ProtoError};

/// What can go wrong in the client library. Each message is complete on its own (no variant
/// reports its cause again as a `source`), so printing the chain never repeats a cause.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The local SQLite store failed.
    #[error("local store: {0}")]
    Store(rusqlite::Error),
    /// A local file could not be read or written.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// The QUIC connection or a stream on it failed.
    #[error("network: {0}")]
    Net(NetError),
    /// The edge answered the request with an error.
    #[error("the edge refused the request: {0}")]
    Remote(ProtoError),
    /// The edge answered with something that does not fit the request.
    #[error("unexpected answer from the edge: {0}")]
    UnexpectedResponse(String),
    /// Encryption, decryption or key handling failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// The edge locator could not be asked or gave no usable answer.
    #[error("edge discovery: {0}")]
    Discovery(String),
    /// The data directory holds no registered device.
    #[error(
        "this data directory has no registered device; run `relay --data DIR register NAME --locator ADDR --bind IP --ca PATH` first"
    )]
    NotRegistered,
    /// The data directory already holds a registered device.
    #[error("this data directory is already registered as {0}")]
    AlreadyRegistered(String),
    /// No account has this name (or it is not known locally while offline).
    #[error("unknown peer {0}")]
    UnknownPeer(String),
    /// The user asked for something that cannot be done.
    #[error("{0}")]
    Invalid(String),
    /// The local store holds something this build cannot read.
    #[error("corrupt local state: {0}")]
    Corrupt(String),
    /// A device presented an identity key different from the one trusted before.
    #[error("the identity key of device {0} changed; refusing to use it")]
    IdentityChanged(DeviceAddress),
    /// No edge the locator named could be reached.
    #[error("cannot reach an edge ({0})")]
    EdgeUnreachable(String),
    /// The outbox state machine was driven out of order (a bug).
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
    /// The user interrupted the command (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
    /// Waiting for something took longer than allowed.
    #[error("timed out: {0}")]
    TimedOut(String),
    /// A device of a recipient has no one-time key left to start an Olm session with.
    #[error("device {0} has no one-time keys left; it must come online and upload more")]
    NoOneTimeKey(DeviceAddress),
    /// A claimed fallback key is not signed by the device it is said to belong to.
    #[error(
        "the fallback key of device {0} is not signed by that device; refusing to start a session with it"
    )]
    BadFallbackKey(DeviceAddress),
    /// The relay refused this device because its state went back (its data directory was
    /// restored from an older copy). Not retryable: the data directory is done for.
    #[error(
        "this device's state went back (its data directory was restored from an older copy), so \
         the relay refuses it: {0}. Messages left in its outbox were marked failed; this data \
         directory can no longer send or receive"
    )]
    DeviceRolledBack(String),
}

impl ClientError {
    /// Whether trying the same thing again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Net(_)
            | ClientError::Discovery(_)
            | ClientError::EdgeUnreachable(_)
            | ClientError::NoOneTimeKey(_) => true,
            ClientError::Remote(error) => error.code.is_retryable(),
            _ => false,
        }
    }

    /// Whether no edge could be reached at all (the locator or every edge it named is silent), as
    /// opposed to an edge that answered but could not serve the request yet.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Discovery(_) | ClientError::EdgeUnreachable(_)
        )
    }

    /// Whether the connection to the edge should be dropped and made again.
    pub fn needs_reconnect(&self) -> bool {
        match self {
            ClientError::Net(_) | ClientError::EdgeUnreachable(_) => true,
            ClientError::Remote(error) => error.code == ErrorCode::Unauthenticated,
            _ => false,
        }
    }
}

impl From<rusqlite::Error> for ClientError {
    fn from(error: rusqlite::Error) -> Self {
        ClientError::Store(error)
    }
}

impl From<std::io::Error> for ClientError {
    fn from(error: std::io::Error) -> Self {
        ClientError::Io(error)
    }
}

impl From<NetError> for ClientError {
    fn from(error: NetError) -> Self {
        ClientError::Net(error)
    }
}

impl From<relay_proto::wire::ErrorReply> for ClientError {
    fn from(reply: relay_proto::wire::ErrorReply) -> Self {
        ClientError::Remote(reply.into())
    }
}

/// The library's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_follows_the_wire_code() {
        let unavailable = ClientError::Remote(ProtoError::new(ErrorCode::Unavailable, "x"));
        assert!(unavailable.is_retryable());
        assert!(!unavailable.needs_reconnect());
        let malformed = ClientError::Remote(ProtoError::invalid("x"));
        assert!(!malformed.is_retryable());
        let unauthenticated = ClientError::Remote(ProtoError::new(ErrorCode::Unauthenticated, "x"));
        assert!(unauthenticated.needs_reconnect());
        assert!(ClientError::Net(NetError::Timeout).is_retryable());
    }
}
