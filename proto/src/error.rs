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
    /// The region's store cannot take writes now (disk full, I/O error): nothing was
    /// acknowledged; retry later.
    StorageUnavailable = 12,
    /// The device's state went back (its data directory was restored from a backup): its
    /// sequence numbers, queue cursor or Olm ratchets are behind what the region has seen, so
    /// nothing it sends or receives can be trusted to decrypt. Not retryable: the device must
    /// be linked again (or registered anew).
    DeviceRolledBack = 13,
    /// The directory writer (the region that keeps account names unique) cannot be reached;
    /// retry later.
    DirectoryUnavailable = 14,
    /// The server is overloaded; retry after the reply's `retry_after_ms`.
    Overloaded = 15,
    /// A recipient device's queue cannot be read (damaged storage): sends to it are refused,
    /// never acknowledged, until an operator repairs the store; retry later.
    RecipientUnavailable = 16,
    /// The peer does not know this kind of request (it is older than the asker): the request
    /// did nothing. Not retryable against the same peer.
    UnsupportedRequest = 17,
    /// A pairing code that does not exist, expired, or was used already.
    PairingRefused = 18,
    /// The account's blob storage quota would be exceeded: nothing was stored. Retryable once
    /// older blobs expire or are deleted.
    QuotaExceeded = 19,
    /// The blob (or upload) does not exist, expired, or belongs to another account's upload.
    UnknownBlob = 20,
    /// A finished upload's bytes do not match the size or SHA-256 it was begun with: the
    /// upload was discarded. Not retryable: begin again with the right bytes.
    BlobMismatch = 21,
    /// An upload stream started at an offset other than the one the region committed: ask
    /// for the status and resume from its `committed_bytes`.
    WrongOffset = 22,
    /// The group does not exist, or the asker is not one of its members (to a non-member the
    /// two are the same).
    UnknownGroup = 23,
    /// Only an admin of the group may do this.
    NotGroupAdmin = 24,
    /// The group would have more members than its limit: nothing was changed.
    GroupFull = 25,
    /// The change would leave the group without an admin: make another member an admin
    /// first.
    LastGroupAdmin = 26,
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
            12 => Self::StorageUnavailable,
            13 => Self::DeviceRolledBack,
            14 => Self::DirectoryUnavailable,
            15 => Self::Overloaded,
            16 => Self::RecipientUnavailable,
            17 => Self::UnsupportedRequest,
            18 => Self::PairingRefused,
            19 => Self::QuotaExceeded,
            20 => Self::UnknownBlob,
            21 => Self::BlobMismatch,
            22 => Self::WrongOffset,
            23 => Self::UnknownGroup,
            24 => Self::NotGroupAdmin,
            25 => Self::GroupFull,
            26 => Self::LastGroupAdmin,
            _ => Self::Internal,
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Unavailable
                | Self::Internal
                | Self::Throttled
                | Self::StorageUnavailable
                | Self::DirectoryUnavailable
                | Self::Overloaded
                | Self::RecipientUnavailable
        )
    }
}

/// An error with a code and a message meant for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ProtoError {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong, for logs and users.
    pub message: String,
    /// How long to wait before retrying, in milliseconds; 0 when the server gave no hint.
    pub retry_after_ms: u64,
}

impl ProtoError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: 0,
        }
    }

    /// This error with a hint of when a retry may succeed.
    pub fn with_retry_after_ms(mut self, retry_after_ms: u64) -> Self {
        self.retry_after_ms = retry_after_ms;
        self
    }

    /// A malformed-input error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Malformed, message)
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)?;
        if self.retry_after_ms > 0 {
            write!(f, " (retry after {} ms)", self.retry_after_ms)?;
        }
        Ok(())
    }
}

impl From<ProtoError> for crate::wire::ErrorReply {
    fn from(error: ProtoError) -> Self {
        crate::wire::ErrorReply {
            code: error.code as u32,
            message: error.message,
            retry_after_ms: error.retry_after_ms,
        }
    }
}

impl From<crate::wire::ErrorReply> for ProtoError {
    fn from(reply: crate::wire::ErrorReply) -> Self {
        ProtoError {
            code: ErrorCode::from_u32(reply.code),
            message: reply.message,
            retry_after_ms: reply.retry_after_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_the_wire() {
        for number in 1..=26 {
            let code = ErrorCode::from_u32(number);
            if number != 8 {
                assert_ne!(code, ErrorCode::Internal, "code {number} is unknown");
            }
            assert_eq!(code as u32, number);
        }
        assert_eq!(ErrorCode::from_u32(999), ErrorCode::Internal);
    }

    #[test]
    fn the_retry_hint_travels_with_the_error() {
        let error = ProtoError::new(ErrorCode::Overloaded, "busy").with_retry_after_ms(250);
        let reply: crate::wire::ErrorReply = error.clone().into();
        assert_eq!(reply.retry_after_ms, 250);
        assert_eq!(ProtoError::from(reply), error);
        assert!(error.to_string().contains("retry after 250 ms"));
        assert!(!ErrorCode::DeviceRolledBack.is_retryable());
        assert!(ErrorCode::StorageUnavailable.is_retryable());
    }
}
