//! The client library's errors: one enum, with a way to tell what a retry can fix.

use relay_net::NetError;
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
    /// The same as [`ClientError::Net`], told to a second caller (see
    /// [`ClientError::duplicate`]).
    #[error("network: {0}")]
    Network(String),
    /// The edge answered the request with an error (shown plainly for the errors a person
    /// can act on: a busy server, an unavailable directory).
    #[error("{}", describe_remote(.0))]
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
    /// The data directory holds the keys of a registration that did not finish.
    #[error(
        "the registration of this data directory did not finish; run `relay --data DIR register NAME` again"
    )]
    RegistrationUnfinished,
    /// The local database is not a database of this client, or lacks what every registered
    /// device has.
    #[error(
        "the local database {} is damaged ({problem}); restore it from a backup or register again in a new data directory",
        database.display()
    )]
    Damaged {
        /// The database file.
        database: std::path::PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The key that seals the device's secrets is missing, unreadable or the wrong one.
    #[error("device key: {0}")]
    DeviceKey(String),
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
    /// The device was closed (or stopped after a local failure) before the call was answered.
    #[error("the device is closed")]
    Closed,
    /// A downloaded blob does not match its reference or does not open under its key.
    #[error("blob: {0}")]
    Blob(#[from] crate::blob::BlobCryptoError),
    /// A group session could not encrypt, decrypt or take a key.
    #[error("group session: {0}")]
    GroupKey(#[from] crate::group_keys::GroupKeyError),
}

impl ClientError {
    /// Whether trying the same thing again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Net(_)
            | ClientError::Network(_)
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

    /// How long the server asked to wait before a retry, in ms, if it said.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            ClientError::Remote(error) if error.retry_after_ms > 0 => Some(error.retry_after_ms),
            _ => None,
        }
    }

    /// Whether the connection to the edge should be dropped and made again.
    pub fn needs_reconnect(&self) -> bool {
        match self {
            ClientError::Net(_) | ClientError::Network(_) | ClientError::EdgeUnreachable(_) => true,
            ClientError::Remote(error) => error.code == ErrorCode::Unauthenticated,
            _ => false,
        }
    }
}

impl ClientError {
    /// A copy of this error for another caller waiting on the same failure: the same message
    /// and the same answers to [`ClientError::is_retryable`] and its kin (the variants holding
    /// an operating system's or a library's error keep its message).
    pub fn duplicate(&self) -> ClientError {
        match self {
            ClientError::Store(error) => ClientError::Invalid(format!("local store: {error}")),
            ClientError::Io(error) => {
                ClientError::Io(std::io::Error::new(error.kind(), error.to_string()))
            }
            ClientError::Net(error) => ClientError::Network(error.to_string()),
            ClientError::Network(text) => ClientError::Network(text.clone()),
            ClientError::Remote(error) => ClientError::Remote(error.clone()),
            ClientError::UnexpectedResponse(text) => ClientError::UnexpectedResponse(text.clone()),
            ClientError::Crypto(text) => ClientError::Crypto(text.clone()),
            ClientError::Discovery(text) => ClientError::Discovery(text.clone()),
            ClientError::NotRegistered => ClientError::NotRegistered,
            ClientError::RegistrationUnfinished => ClientError::RegistrationUnfinished,
            ClientError::Damaged { database, problem } => ClientError::Damaged {
                database: database.clone(),
                problem: problem.clone(),
            },
            ClientError::DeviceKey(text) => ClientError::DeviceKey(text.clone()),
            ClientError::AlreadyRegistered(name) => ClientError::AlreadyRegistered(name.clone()),
            ClientError::UnknownPeer(name) => ClientError::UnknownPeer(name.clone()),
            ClientError::Invalid(text) => ClientError::Invalid(text.clone()),
            ClientError::Corrupt(text) => ClientError::Corrupt(text.clone()),
            ClientError::IdentityChanged(device) => ClientError::IdentityChanged(*device),
            ClientError::EdgeUnreachable(text) => ClientError::EdgeUnreachable(text.clone()),
            ClientError::Outbox(error) => ClientError::Outbox(error.clone()),
            ClientError::Interrupted => ClientError::Interrupted,
            ClientError::TimedOut(text) => ClientError::TimedOut(text.clone()),
            ClientError::NoOneTimeKey(device) => ClientError::NoOneTimeKey(*device),
            ClientError::BadFallbackKey(device) => ClientError::BadFallbackKey(*device),
            ClientError::DeviceRolledBack(text) => ClientError::DeviceRolledBack(text.clone()),
            ClientError::Closed => ClientError::Closed,
            ClientError::Blob(error) => ClientError::Blob(error.clone()),
            ClientError::GroupKey(error) => ClientError::GroupKey(error.clone()),
        }
    }

    /// A stable, machine-readable name of the kind of error (`--json` prints it as `code`).
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::Store(_) => "local_store",
            ClientError::Io(_) => "io",
            ClientError::Net(_) | ClientError::Network(_) => "network",
            ClientError::Remote(_) => "refused",
            ClientError::UnexpectedResponse(_) => "unexpected_answer",
            ClientError::Crypto(_) => "crypto",
            ClientError::Discovery(_) => "edge_discovery",
            ClientError::NotRegistered => "not_registered",
            ClientError::RegistrationUnfinished => "registration_unfinished",
            ClientError::Damaged { .. } => "damaged_database",
            ClientError::DeviceKey(_) => "device_key",
            ClientError::AlreadyRegistered(_) => "already_registered",
            ClientError::UnknownPeer(_) => "unknown_peer",
            ClientError::Invalid(_) => "invalid",
            ClientError::Corrupt(_) => "corrupt_local_state",
            ClientError::IdentityChanged(_) => "identity_changed",
            ClientError::EdgeUnreachable(_) => "edge_unreachable",
            ClientError::Outbox(_) => "internal",
            ClientError::Interrupted => "interrupted",
            ClientError::TimedOut(_) => "timed_out",
            ClientError::NoOneTimeKey(_) => "no_one_time_key",
            ClientError::BadFallbackKey(_) => "bad_fallback_key",
            ClientError::DeviceRolledBack(_) => "device_rolled_back",
            ClientError::Closed => "closed",
            ClientError::Blob(_) => "bad_blob",
            ClientError::GroupKey(_) => "group_session",
        }
    }
}

/// What an edge's error means to the person using the client. The message quotes the server
/// (the CLI escapes it before printing).
pub fn describe_remote(error: &ProtoError) -> String {
    match error.code {
        ErrorCode::DirectoryUnavailable => format!(
            "the directory is unavailable ({}); try again in {}",
            error.message,
            match error.retry_after_ms {
                0 => "a minute".to_owned(),
                ms => format!("{} s", ms.div_ceil(1000)),
            }
        ),
        ErrorCode::Overloaded => match error.retry_after_ms {
            0 => "the server is busy; retry in a few seconds".to_owned(),
            ms => format!("the server is busy; retry in {} s", ms.div_ceil(1000)),
        },
        ErrorCode::Unavailable => format!(
            "part of the service is unreachable ({}); try again later",
            error.message
        ),
        ErrorCode::UnknownGroup => format!(
            "{} (or this account is not a member); `relay groups` lists yours",
            error.message
        ),
        ErrorCode::NotGroupAdmin => {
            format!("{}; `relay group info` shows its admins", error.message)
        }
        ErrorCode::GroupFull | ErrorCode::LastGroupAdmin => error.message.clone(),
        _ => format!("the edge refused the request: {error}"),
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

    #[test]
    fn busy_servers_and_a_silent_directory_read_plainly() {
        let busy = ClientError::Remote(
            ProtoError::new(
                ErrorCode::Overloaded,
                "region 2 did not answer within 5.0 s",
            )
            .with_retry_after_ms(1_500),
        );
        assert_eq!(busy.to_string(), "the server is busy; retry in 2 s");
        assert!(busy.is_retryable() && !busy.needs_reconnect());
        assert_eq!(busy.retry_after_ms(), Some(1_500));
        let directory = ClientError::Remote(ProtoError::new(
            ErrorCode::DirectoryUnavailable,
            "region 1 did not answer",
        ));
        assert_eq!(
            directory.to_string(),
            "the directory is unavailable (region 1 did not answer); try again in a minute"
        );
        assert!(directory.is_retryable());
        assert_eq!(directory.retry_after_ms(), None);
        let taken = ClientError::Remote(ProtoError::new(ErrorCode::NameTaken, "the name is taken"));
        assert_eq!(
            taken.to_string(),
            "the edge refused the request: NameTaken: the name is taken"
        );
    }
}
