//! Typed errors with stable codes, sent to peers in [`crate::wire::ErrorReply`].

use std::fmt;

/// A stable error code on the wire. New codes are added, never renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// The peer's bytes did not decode or broke a rule of the protocol.
    Malformed = 1,
    /// A frame, envelope or field was larger than its limit.
    TooLarge = 2,
    /// The request needs an authenticated device and the connection has none.
    Unauthenticated = 3,
    /// The authentication proof did not verify.
    BadSignature = 4,
    /// The named account or device does not exist.
    UnknownAccount = 5,
    /// The account name is taken.
    NameTaken = 6,
    /// A region the request needs could not be reached; retry later.
    Unavailable = 7,
    /// The server failed; retry later.
    Internal = 8,
    /// The request was refused by a limit (rate, queue depth); retry later.
    Throttled = 9,
    /// The wire version is not supported.
    UnsupportedVersion = 10,
    /// A registration token was required and missing or invalid.
    Forbidden = 11,
}

impl ErrorCode {
    /// The code for a wire number; unknown numbers map to `Internal`.
    pub fn from_u32(value: u32) -> Self {
        match value {
            1 => Self::Malformed,
            2 => Self::TooLarge,
            3 => Self::Unauthenticated,
            4 => Self::BadSignature,
            5 => Self::UnknownAccount,
            6 => Self::NameTaken,
            7 => Self::Unavailable,
            9 => Self::Throttled,
            10 => Self::UnsupportedVersion,
            11 => Self::Forbidden,
            _ => Self::Internal,
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Unavailable | Self::Internal | Self::Throttled)
    }
}

/// An error with a code and a message meant for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ProtoError {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong, for logs and users.
    pub message: String,
}

impl ProtoError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A malformed-input error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Malformed, message)
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl From<ProtoError> for crate::wire::ErrorReply {
    fn from(error: ProtoError) -> Self {
        crate::wire::ErrorReply {
            code: error.code as u32,
            message: error.message,
        }
    }
}

impl From<crate::wire::ErrorReply> for ProtoError {
    fn from(reply: crate::wire::ErrorReply) -> Self {
        ProtoError {
            code: ErrorCode::from_u32(reply.code),
            message: reply.message,
        }
    }
}
