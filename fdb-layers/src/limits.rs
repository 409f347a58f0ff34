//! Every bound of the store in one place, with units in the names. The first four are
//! FoundationDB's own limits, enforced on the embedded engine too so that what passes here
//! passes on FoundationDB.

/// Longest key, in bytes (FoundationDB's limit).
pub const KEY_BYTES_MAX: usize = 10_000;

/// Longest value, in bytes (FoundationDB's limit).
pub const VALUE_BYTES_MAX: usize = 100_000;

/// Largest transaction (mutations plus conflict ranges), in bytes (FoundationDB's limit).
pub const TRANSACTION_BYTES_MAX: usize = 10_000_000;

/// Oldest a transaction may be when it reads or commits, in milliseconds (FoundationDB's limit).
pub const TRANSACTION_AGE_MS_MAX: u64 = 5_000;

/// Most attempts [`crate::Database::transact`] makes before returning the last retryable error.
pub const TRANSACTION_ATTEMPTS_MAX: u32 = 200;

/// First delay before retrying a transaction, in milliseconds; it doubles on each retry.
pub const RETRY_DELAY_MS_INITIAL: u64 = 2;

/// Longest delay between two attempts of a transaction, in milliseconds.
pub const RETRY_DELAY_MS_MAX: u64 = 100;

/// Most commit requests waiting for the committer; beyond it commits fail with the retryable
/// [`crate::StoreError::CommitQueueFull`].
pub const COMMIT_QUEUE_TRANSACTIONS_MAX: usize = 4_096;

/// Most transactions applied in one group commit (one redb write transaction).
pub const COMMIT_BATCH_TRANSACTIONS_MAX: usize = 512;

/// Most bytes of mutations applied in one group commit.
pub const COMMIT_BATCH_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Most bytes of written keys the committer remembers for conflict checks; beyond it the oldest
/// commits are forgotten and transactions that read before them get `TransactionTooOld`.
pub const CONFLICT_HISTORY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Most entries one layer read returns, whatever limit the caller asks for.
pub const LAYER_READ_ENTRIES_MAX: usize = 1_024;

/// Most entries waiting in one device queue; further appends are refused with
/// [`crate::device_queue::QueueAppend::Full`].
pub const DEVICE_QUEUE_DEPTH_MAX: u64 = 100_000;

/// Bytes of a large value stored under one key; larger records are split across keys.
pub const CHUNK_BYTES: usize = VALUE_BYTES_MAX;

/// Most keys one record is split across, so records hold up to
/// `RECORD_CHUNKS_MAX * CHUNK_BYTES` bytes (an envelope of
/// [`relay_proto::limits::ENVELOPE_BYTES_MAX`] with its metadata needs 3).
pub const RECORD_CHUNKS_MAX: usize = 4;
