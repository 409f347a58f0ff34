//! The one error type of the store, shaped like FoundationDB's error codes: some are retryable
//! (the transaction closure runs again), the rest are returned to the caller.

use std::sync::Arc;

use thiserror::Error;

use crate::limits::{
    KEY_BYTES_MAX, TRANSACTION_AGE_MS_MAX, TRANSACTION_BYTES_MAX, VALUE_BYTES_MAX,
    VERSIONSTAMP_BYTES, WATCHES_OUTSTANDING_MAX,
};

/// Everything that can go wrong in a transaction or a layer call.
#[derive(Debug, Clone, Error)]
pub enum StoreError {
    /// Another transaction wrote something this one read (FDB `not_committed`, 1020). Retryable.
    #[error("transaction not committed: a conflicting transaction committed first")]
    NotCommitted,
    /// The commit may or may not have been applied (FDB `commit_unknown_result`, 1021).
    /// Retryable, so every transaction body must be idempotent.
    #[error("commit result unknown: the transaction may or may not have been applied")]
    CommitUnknownResult,
    /// The transaction is older than the limit, or its read version has left the conflict
    /// history, or its snapshot is gone because the embedded backend opened its file again
    /// after a failure (FDB `transaction_too_old`, 1007). Retryable.
    #[error(
        "transaction too old: older than {TRANSACTION_AGE_MS_MAX} ms, or its snapshot is gone \
         (the store file was opened again)"
    )]
    TransactionTooOld,
    /// The committer's queue is full (FDB `proxy_memory_limit_exceeded`, 1042). Retryable.
    #[error("commit queue is full")]
    CommitQueueFull,
    /// A key longer than the limit (FDB `key_too_large`, 2102).
    #[error("key of {key_bytes} bytes exceeds {KEY_BYTES_MAX}")]
    KeyTooLarge {
        /// Length of the refused key.
        key_bytes: usize,
    },
    /// A value longer than the limit (FDB `value_too_large`, 2103).
    #[error("value of {value_bytes} bytes exceeds {VALUE_BYTES_MAX}")]
    ValueTooLarge {
        /// Length of the refused value.
        value_bytes: usize,
    },
    /// The transaction's mutations and conflict ranges outgrew the limit
    /// (FDB `transaction_too_large`, 2101).
    #[error("transaction of {transaction_bytes} bytes exceeds {TRANSACTION_BYTES_MAX}")]
    TransactionTooLarge {
        /// Size the transaction would have reached.
        transaction_bytes: usize,
    },
    /// A write to the system keyspace (keys from `\xff`), which FDB refuses by default
    /// (FDB `key_outside_legal_range`, 2004).
    #[error("key outside the legal range (keys from 0xff are reserved)")]
    KeyOutsideLegalRange,
    /// The transaction was used after its commit (FDB `used_during_commit`, 2017).
    #[error("transaction used after commit")]
    TransactionFinished,
    /// The transaction was dropped (or reset by a retry) before it committed, so its watches
    /// and versionstamp will never resolve (FDB `transaction_cancelled`, 1025).
    #[error("transaction cancelled before it committed")]
    TransactionCancelled,
    /// The database already has the most outstanding watches allowed
    /// (FDB `too_many_watches`, 1032).
    #[error("too many outstanding watches (at most {WATCHES_OUTSTANDING_MAX} per database)")]
    TooManyWatches,
    /// A read of a key or range this transaction wrote with a versionstamp, whose value or key
    /// is only known at commit (FDB `accessed_unreadable`, 1036).
    #[error("read of a key written with a versionstamp in the same transaction")]
    AccessedUnreadable,
    /// A versionstamp asked of a transaction that wrote nothing, so it has no commit version
    /// (FDB `no_commit_version`, 2021).
    #[error("transaction committed without writes, so it has no versionstamp")]
    NoCommitVersion,
    /// A versionstamp placeholder that does not fit in the key or value
    /// (FDB `client_invalid_operation`, 2000).
    #[error(
        "a versionstamp of {VERSIONSTAMP_BYTES} bytes at offset {offset} does not fit in {length} bytes"
    )]
    InvalidVersionstampOffset {
        /// Where the caller placed the versionstamp.
        offset: u32,
        /// Length of the key or value holding the placeholder.
        length: usize,
    },
    /// A FoundationDB error without a variant of its own (feature `fdb`).
    #[error("FoundationDB error {code}: {message}")]
    FoundationDb {
        /// FoundationDB's error code.
        code: i32,
        /// FoundationDB's description of the code.
        message: String,
        /// Whether FoundationDB's `on_error` retries it.
        retryable: bool,
    },
    /// Invalid options given to [`crate::Database::open`].
    #[error("invalid store options: {0}")]
    InvalidOptions(String),
    /// Stored bytes that do not decode: a bug or a damaged file, never a panic.
    #[error("corrupt record ({what}): {detail}")]
    Corrupt {
        /// Which record failed to decode.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// The storage engine failed (I/O error, full disk, damaged file).
    #[error("storage engine: {0}")]
    Storage(#[source] Arc<redb::Error>),
    /// The store cannot commit now: a commit failed in storage (disk full, I/O error) and the
    /// engine is recovering, or is waiting for the cause to go away. Whether the failed commit
    /// is durable is unknown, as with `CommitUnknownResult`. Not retried by `transact` (a full
    /// disk does not empty itself within a retry loop): callers refuse the request as "storage
    /// unavailable", never acknowledge it, and the client retries later under the same ids.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The store file is open in another process (a running region or standby holds its lock).
    #[error(
        "the store file {0} is open in another process: stop the region or standby that holds it \
         first"
    )]
    InUse(String),
    /// The database is closed: its committer stopped, or (memory backend) its simulated
    /// process crashed.
    #[error("database is closed")]
    Closed,
}

impl StoreError {
    /// Whether [`crate::Database::transact`] runs the transaction again after this error
    /// (FDB's `on_error` retries exactly these).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::NotCommitted
            | StoreError::CommitUnknownResult
            | StoreError::TransactionTooOld
            | StoreError::CommitQueueFull => true,
            StoreError::FoundationDb { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// FoundationDB's code for this error, where FoundationDB has one.
    pub fn foundationdb_code(&self) -> Option<i32> {
        let code = match self {
            StoreError::NotCommitted => 1020,
            StoreError::CommitUnknownResult => 1021,
            StoreError::TransactionTooOld => 1007,
            StoreError::CommitQueueFull => 1042,
            StoreError::KeyTooLarge { .. } => 2102,
            StoreError::ValueTooLarge { .. } => 2103,
            StoreError::TransactionTooLarge { .. } => 2101,
            StoreError::KeyOutsideLegalRange => 2004,
            StoreError::TransactionFinished => 2017,
            StoreError::TransactionCancelled => 1025,
            StoreError::TooManyWatches => 1032,
            StoreError::AccessedUnreadable => 1036,
            StoreError::NoCommitVersion => 2021,
            StoreError::InvalidVersionstampOffset { .. } => 2000,
            StoreError::FoundationDb { code, .. } => *code,
            StoreError::InvalidOptions(_)
            | StoreError::Corrupt { .. }
            | StoreError::Storage(_)
            | StoreError::Unavailable(_)
            | StoreError::InUse(_)
            | StoreError::Closed => return None,
        };
        Some(code)
    }

    /// A record that failed to decode.
    pub(crate) fn corrupt(what: &'static str, detail: impl ToString) -> Self {
        StoreError::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }

    /// An error of the redb engine.
    pub(crate) fn storage(error: impl Into<redb::Error>) -> Self {
        StoreError::Storage(Arc::new(error.into()))
    }
}
