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

/// Most watches outstanding on one database, registered or waiting for their transaction to
/// commit (FoundationDB's default `max_watches`); beyond it `watch` fails with
/// [`crate::StoreError::TooManyWatches`].
pub const WATCHES_OUTSTANDING_MAX: usize = 10_000;

/// Bytes of a versionstamp: the commit version (8 bytes, big-endian) and the transaction's
/// order within its commit batch (2 bytes, big-endian), as in FoundationDB.
pub const VERSIONSTAMP_BYTES: usize = 10;

/// Most attempts [`crate::Database::transact`] makes before returning the last retryable error.
pub const TRANSACTION_ATTEMPTS_MAX: u32 = 200;

/// First delay before retrying a transaction, in milliseconds; it doubles on each retry.
pub const RETRY_DELAY_MS_INITIAL: u64 = 2;

/// Longest delay between two attempts of a transaction, in milliseconds.
pub const RETRY_DELAY_MS_MAX: u64 = 100;

/// Most commit requests waiting for the committer; beyond it commits fail with the retryable
/// [`crate::StoreError::CommitQueueFull`].
pub const COMMIT_QUEUE_TRANSACTIONS_MAX: usize = 4_096;

/// Most transactions applied in one group commit (one redb write transaction): as many as the
/// commit queue holds. A group takes what arrived while the previous one was being written, and
/// every transaction cut from a group waits for the next fsync anyway, so a smaller cap only
/// adds fsyncs under load (with 1,000 writers, groups averaged 511 under a cap of 512). Versionstamps
/// number a group's transactions with two bytes, which allows up to 65,536;
/// [`COMMIT_BATCH_BYTES_MAX`] bounds a group's memory and write time.
pub const COMMIT_BATCH_TRANSACTIONS_MAX: usize = COMMIT_QUEUE_TRANSACTIONS_MAX;

/// Most bytes of mutations applied in one group commit.
pub const COMMIT_BATCH_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Most bytes of written keys the committer remembers for conflict checks; beyond it the oldest
/// commits are forgotten and transactions that read before them get `TransactionTooOld`.
pub const CONFLICT_HISTORY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Most entries one layer read returns, whatever limit the caller asks for.
pub const LAYER_READ_ENTRIES_MAX: usize = 1_024;

/// Batches of one message's receipts (`receipts::advance_many`) past which the next advance
/// folds them into one: reading a message's receipts reads at most this many keys and a folded
/// batch.
pub const RECEIPT_BATCHES_PER_MESSAGE_MAX: usize = 16;

/// Records (`receipts::BATCH_RECORD_BYTES` each) in one key of a receipt batch: a folded batch
/// of a group message to `relay_proto::limits::GROUP_ENVELOPE_RECIPIENT_DEVICES_MAX` devices
/// takes a few keys.
pub const RECEIPT_BATCH_RECORDS_MAX: usize = 4_096;

/// Most entries waiting in one device queue; further appends are refused with
/// [`crate::device_queue::QueueAppend::Full`].
pub const DEVICE_QUEUE_DEPTH_MAX: u64 = 100_000;

/// Accounts one account may block.
pub const BLOCKED_ACCOUNTS_MAX: usize = 10_000;

/// Largest push registration one device stores, in bytes (a WebPush endpoint URL and its
/// keys, or a provider's token, as the region's push crate encodes them).
pub const PUSH_REGISTRATION_BYTES_MAX: usize = 4 * 1024;

/// Bytes of a large value stored under one key; larger records are split across keys.
pub const CHUNK_BYTES: usize = VALUE_BYTES_MAX;

/// Most keys one record is split across, so records hold up to
/// `RECORD_CHUNKS_MAX * CHUNK_BYTES` bytes (an envelope of
/// [`relay_proto::limits::ENVELOPE_BYTES_MAX`] with its metadata needs 6).
pub const RECORD_CHUNKS_MAX: usize = 7;

// Layer bounds (moved here so every bound lives in one place).

/// How long an idempotency record is kept after its key's issue time, in milliseconds
/// (24 hours).
pub const IDEMPOTENCY_RECORD_MS_MAX: u64 = 24 * 60 * 60 * 1_000;

/// How long an undelivered entry is kept, in milliseconds (30 days).
pub const QUEUE_RETENTION_MS_DEFAULT: u64 = 30 * 24 * 60 * 60 * 1_000;

/// Most bytes of a quarantine reason kept; longer ones are cut.
pub const QUARANTINE_REASON_BYTES_MAX: usize = 1_024;

/// Most entries one [`crate::device_queue::sweep_expired`] call removes.
pub const SWEEP_ENTRIES_MAX: usize = 1_024;

/// Most members of one group: the protocol's bound (a group message fans out to every member's
/// devices).
pub const GROUP_MEMBERS_MAX: u64 = relay_proto::limits::GROUP_MEMBERS_MAX as u64;

/// How long a blob is kept by default, in milliseconds (30 days).
pub const MEDIA_RETENTION_MS_DEFAULT: u64 = 30 * 24 * 60 * 60 * 1_000;

/// Most blobs one [`crate::media::sweep_expired`] call removes (its idempotency record must fit
/// one value).
pub const MEDIA_SWEEP_ENTRIES_MAX: usize = 512;

// Disk failures (the embedded engine).

/// Most attempts at opening the store file again after a failed group commit, one after the
/// other; when all fail, commits are refused and the next one after the refusal tries again.
pub const STORE_REOPEN_ATTEMPTS_MAX: u32 = 3;

/// Pause between two attempts at opening the store file again, in milliseconds.
pub const STORE_REOPEN_DELAY_MS: u64 = 20;

/// How long commits are refused with [`crate::StoreError::Unavailable`] after a failed group
/// commit, in milliseconds; the refusal doubles with each further failure in a row, so a disk
/// that stays full is tried a bounded number of times instead of on every commit.
pub const STORAGE_RETRY_DELAY_MS_INITIAL: u64 = 20;

/// Longest refusal after failed group commits, in milliseconds: once the disk recovers, commits
/// succeed again within this long.
pub const STORAGE_RETRY_DELAY_MS_MAX: u64 = 5_000;

/// How long a transaction that only read waits, at its commit, for the groups on their way to
/// the standby to reach its read version before it looks again (with a standby; see
/// `engine/replication.rs`). The shipper's own acknowledgement timeout bounds each group.
pub const CONFIRMED_READ_WAIT_MS: u64 = 1_000;
/// How many times such a transaction waits, or commits an empty group to push the standby's
/// confirmation forward, before it fails `Unavailable` (and is retried like any).
pub const CONFIRMED_READ_ATTEMPTS_MAX: u32 = 5;

/// Largest object the objects layer keeps in the store (a region's blob unit, with a standby),
/// in bytes: one transaction, far below [`TRANSACTION_BYTES_MAX`].
pub const OBJECT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Bytes of one value of an object in the store.
pub const OBJECT_CHUNK_BYTES: usize = 64 * 1024;
/// Longest object path, in bytes.
pub const OBJECT_PATH_BYTES_MAX: usize = 1_024;

// Relations between the bounds, checked at compile time.

// An object's keys and values fit one transaction and its chunks one read.
const _: () = assert!(OBJECT_CHUNK_BYTES <= VALUE_BYTES_MAX);
const _: () = assert!(OBJECT_PATH_BYTES_MAX + 64 <= KEY_BYTES_MAX);
const _: () = assert!(OBJECT_BYTES_MAX * 2 <= TRANSACTION_BYTES_MAX);
const _: () = assert!(OBJECT_BYTES_MAX / OBJECT_CHUNK_BYTES < LAYER_READ_ENTRIES_MAX);

// One record of each size fits one transaction.
const _: () = assert!(KEY_BYTES_MAX + VALUE_BYTES_MAX <= TRANSACTION_BYTES_MAX);
const _: () =
    assert!(RECEIPT_BATCH_RECORDS_MAX * crate::receipts::BATCH_RECORD_BYTES <= VALUE_BYTES_MAX);
// A folded batch of the largest group's message takes fewer keys than the batches that fold,
// so a fold leaves room for batches after it.
const _: () = assert!(
    relay_proto::limits::GROUP_ENVELOPE_RECIPIENT_DEVICES_MAX.div_ceil(RECEIPT_BATCH_RECORDS_MAX)
        < RECEIPT_BATCHES_PER_MESSAGE_MAX
);
// The largest transaction fits one group commit, and the conflict history holds a whole group.
const _: () = assert!(TRANSACTION_BYTES_MAX <= COMMIT_BATCH_BYTES_MAX);
const _: () = assert!(COMMIT_BATCH_BYTES_MAX <= CONFLICT_HISTORY_BYTES_MAX);
// A group's versionstamps number its transactions with two bytes; a group takes at most what
// the commit queue holds.
const _: () = assert!(COMMIT_BATCH_TRANSACTIONS_MAX <= u16::MAX as usize + 1);
const _: () = assert!(COMMIT_BATCH_TRANSACTIONS_MAX <= COMMIT_QUEUE_TRANSACTIONS_MAX);
// Retries back off up to a bound, and a pause leaves a retried transaction most of its life.
const _: () = assert!(RETRY_DELAY_MS_INITIAL <= RETRY_DELAY_MS_MAX);
const _: () = assert!(RETRY_DELAY_MS_MAX * 10 <= TRANSACTION_AGE_MS_MAX);
// An idempotency record outlives every retry of the call that wrote it: `transact` gives up
// after its attempts, each at most a transaction's age plus the longest pause.
const _: () = assert!(
    TRANSACTION_ATTEMPTS_MAX as u64 * (TRANSACTION_AGE_MS_MAX + RETRY_DELAY_MS_MAX)
        < IDEMPOTENCY_RECORD_MS_MAX
);
// A large record is cut into values; the largest envelope fits in all chunks but one, which
// leaves a whole chunk for its metadata.
const _: () = assert!(CHUNK_BYTES <= VALUE_BYTES_MAX);
const _: () =
    assert!((RECORD_CHUNKS_MAX - 1) * CHUNK_BYTES >= relay_proto::limits::ENVELOPE_BYTES_MAX);
// A group message fans out to every member's devices, bounded like an envelope's recipients.
const _: () =
    assert!(GROUP_MEMBERS_MAX as usize <= relay_proto::limits::ENVELOPE_RECIPIENT_DEVICES_MAX);
// One fetch page and one sweep are each one layer read.
const _: () =
    assert!(relay_proto::limits::QUEUE_FETCH_ENTRIES_MAX as usize <= LAYER_READ_ENTRIES_MAX);
const _: () = assert!(SWEEP_ENTRIES_MAX <= LAYER_READ_ENTRIES_MAX);
const _: () = assert!(MEDIA_SWEEP_ENTRIES_MAX <= LAYER_READ_ENTRIES_MAX);
// Undelivered entries and blobs are kept far longer than an idempotency record.
const _: () = assert!(IDEMPOTENCY_RECORD_MS_MAX < QUEUE_RETENTION_MS_DEFAULT);
// A failed group commit is answered after the reopen attempts; the refusal then doubles.
const _: () = assert!(STORAGE_RETRY_DELAY_MS_INITIAL <= STORAGE_RETRY_DELAY_MS_MAX);
const _: () = assert!(STORE_REOPEN_ATTEMPTS_MAX >= 1);
