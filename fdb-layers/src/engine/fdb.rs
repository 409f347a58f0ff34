//! The FoundationDB backend (cargo feature `fdb`), on the `foundationdb` crate.
//!
//! Each [`Transaction`] call maps onto FoundationDB's own: reads with read-your-writes and
//! snapshot reads, `ADD`/`MIN`/`MAX` and `SET_VERSIONSTAMPED_KEY`/`_VALUE` atomic operations
//! (the placeholder offset appended as FoundationDB's 4-byte little-endian suffix), watches,
//! `get_versionstamp`, and [`crate::Database::transact`] as FoundationDB's retry loop: a
//! retryable error is handed to `on_error`, which backs off and resets the transaction (or
//! answers that the error is not retryable). FoundationDB's errors become [`StoreError`]s
//! (`not_committed` 1020 is `NotCommitted`, `commit_unknown_result` 1021 is
//! `CommitUnknownResult`, `transaction_too_old` 1007 is `TransactionTooOld`, and so on; codes
//! without a variant of their own keep their code in `StoreError::FoundationDb`).
//!
//! The size checks run here too, before FoundationDB sees a mutation, so that a too-large key,
//! value or transaction fails the same call with the same error as on the embedded backend;
//! FoundationDB still enforces its limits (and the 5-second age) itself.
//!
//! The client network runs once per process: [`FdbNetwork::boot`] starts it and returns the
//! guard that stops it, which every database handle also holds.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use foundationdb::api::{FdbApiBuilder, NetworkAutoStop};
use foundationdb::options::{DatabaseOption, MutationType, StreamingMode};
use foundationdb::{FdbError, KeySelector, RangeOption, TransactionCommitError};

use super::committer::AtomicOp;
use super::local::{
    KeyValue, check_cleared_range, check_key, check_value, check_versionstamped_key_write,
    check_versionstamped_value_write, check_written_key, key_after,
};
use super::transaction::Budget;
use super::watches::Watch;
use super::{Counters, RangeOptions, Transaction, Versionstamp, VersionstampFuture};
use crate::error::StoreError;
use crate::limits::{TRANSACTION_ATTEMPTS_MAX, VERSIONSTAMP_BYTES, WATCHES_OUTSTANDING_MAX};

/// Whether this process has booted FoundationDB's client network (it can only once).
static NETWORK_BOOTED: AtomicBool = AtomicBool::new(false);

/// FoundationDB's client network, which runs on a thread of its own and can be started once per
/// process. Boot it at the start of `main`, keep this guard (or a clone) for as long as the
/// process uses FoundationDB, and let it drop before the process exits: the last guard or
/// database handle dropped stops the network and joins its thread. A process that exits
/// without dropping it (`std::process::exit`, a leaked handle) leaves the network thread running
/// while FoundationDB's client library is torn down, which may crash the exit.
#[derive(Clone)]
pub struct FdbNetwork {
    _guard: Arc<NetworkAutoStop>,
}

impl std::fmt::Debug for FdbNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdbNetwork").finish_non_exhaustive()
    }
}

impl FdbNetwork {
    /// Selects the API version the crate was built for and starts the client network. Fails
    /// if libfdb_c does not support that version, or if this process booted the network before
    /// (FoundationDB allows one network per process, never restarted: keep one guard and clone
    /// it).
    pub fn boot() -> Result<FdbNetwork, StoreError> {
        if NETWORK_BOOTED.swap(true, Ordering::SeqCst) {
            return Err(StoreError::InvalidOptions(
                "FoundationDB's client network can be booted once per process; clone the \
                 first FdbNetwork instead"
                    .to_owned(),
            ));
        }
        // `build` panics if the API version was selected before: the flag above rules it out.
        let builder = FdbApiBuilder::default().build().map_err(store_error)?;
        // SAFETY: `boot` requires that the returned `NetworkAutoStop` be dropped before the
        // process exits. It lives in this guard, whose last clone (held by every database
        // handle too) drops it; dropping it stops the network and joins its thread. The type's
        // documentation tells callers to drop the guard before exiting, which returning from
        // `main` does.
        #[allow(unsafe_code)]
        let network = unsafe { builder.boot() }.map_err(store_error)?;
        tracing::info!("booted FoundationDB's client network");
        Ok(FdbNetwork {
            _guard: Arc::new(network),
        })
    }
}

/// State shared by a FoundationDB database's handles and transactions.
pub(crate) struct FdbShared {
    // Dropped before the network guard below, as FoundationDB requires.
    database: foundationdb::Database,
    counters: Counters,
    _network: FdbNetwork,
}

impl FdbShared {
    /// Opens the database of the cluster file at `cluster_file` (FoundationDB's default when
    /// `None`).
    pub(crate) fn connect(
        network: &FdbNetwork,
        cluster_file: Option<&Path>,
    ) -> Result<Arc<FdbShared>, StoreError> {
        let path = match cluster_file {
            None => None,
            Some(path) => {
                let path = path.to_str().ok_or_else(|| {
                    StoreError::InvalidOptions(format!(
                        "the cluster file path {} is not UTF-8",
                        path.display()
                    ))
                })?;
                // The crate turns the path into a C string and panics on a NUL byte.
                if path.contains('\0') {
                    return Err(StoreError::InvalidOptions(
                        "the cluster file path contains a NUL byte".to_owned(),
                    ));
                }
                Some(path)
            }
        };
        let database = foundationdb::Database::new(path).map_err(store_error)?;
        let watches_max = i32::try_from(WATCHES_OUTSTANDING_MAX).unwrap_or(i32::MAX);
        database
            .set_option(DatabaseOption::MaxWatches(watches_max))
            .map_err(store_error)?;
        tracing::info!(cluster_file = ?cluster_file, "connected to FoundationDB");
        Ok(Arc::new(FdbShared {
            database,
            counters: Counters::default(),
            _network: network.clone(),
        }))
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A new transaction; its read version is fetched by its first read (0 until `transact`
    /// fetches it).
    pub(crate) fn create_transaction(self: &Arc<Self>) -> Result<Transaction, StoreError> {
        let raw = self.database.create_trx().map_err(store_error)?;
        Ok(Transaction::fdb(FdbTransaction::new(raw, self.clone())))
    }
}

/// FoundationDB's retry loop around `body`: on a retryable error, `on_error` backs off and
/// hands back the reset transaction for the next attempt.
pub(crate) async fn transact<T, F, Fut>(
    shared: &Arc<FdbShared>,
    mut body: F,
) -> Result<T, StoreError>
where
    F: FnMut(Transaction) -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut raw = shared.database.create_trx().map_err(store_error)?;
    let mut attempt = 1;
    loop {
        let transaction = FdbTransaction::new(raw, shared.clone());
        let outcome: Result<T, StoreError> = async {
            transaction.fetch_read_version().await?;
            let value = body(Transaction::fdb(transaction.clone())).await?;
            transaction.commit().await?;
            Ok(value)
        }
        .await;
        let error = match outcome {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let code = match error.foundationdb_code() {
            Some(code) if error.is_retryable() && attempt < TRANSACTION_ATTEMPTS_MAX => code,
            _ => return Err(error),
        };
        raw = match transaction.take_for_retry() {
            Retry::Open(raw) => raw.on_error(FdbError::from_code(code)).await,
            Retry::CommitFailed(failed) => failed.on_error().await,
            // The body committed the transaction itself, then failed: start afresh.
            Retry::Finished => shared.database.create_trx(),
        }
        .map_err(store_error)?;
        shared.counters.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%error, attempt, "retrying FoundationDB transaction");
        attempt += 1;
    }
}

/// A FoundationDB transaction behind the [`Transaction`] API.
pub(crate) struct FdbTransaction {
    // Dropped before `shared`, which keeps the database and the network alive.
    state: Mutex<State>,
    shared: Arc<FdbShared>,
}

struct State {
    slot: Slot,
    /// The read version, once fetched.
    read_version: u64,
    /// Bytes of mutations and conflict ranges so far, counted as the local backends do, and an
    /// error kept for the commit.
    budget: Budget,
    /// Whether the transaction wrote anything (for the statistics).
    wrote: bool,
}

/// Where the FoundationDB transaction is.
enum Slot {
    Open(foundationdb::Transaction),
    /// Its commit failed; kept for `on_error`.
    CommitFailed(TransactionCommitError),
    /// Committed, or handed back to the retry loop.
    Finished,
}

/// What the retry loop gets back from a failed attempt.
enum Retry {
    Open(foundationdb::Transaction),
    CommitFailed(TransactionCommitError),
    Finished,
}

impl FdbTransaction {
    fn new(raw: foundationdb::Transaction, shared: Arc<FdbShared>) -> Arc<Self> {
        Arc::new(FdbTransaction {
            state: Mutex::new(State {
                slot: Slot::Open(raw),
                read_version: 0,
                budget: Budget::default(),
                wrote: false,
            }),
            shared,
        })
    }

    pub(crate) fn describe(&self, f: &mut std::fmt::DebugStruct<'_, '_>) {
        let state = self.lock();
        f.field("read_version", &state.read_version)
            .field("size_bytes", &state.budget.size_bytes())
            .field("finished", &matches!(state.slot, Slot::Finished));
    }

    pub(crate) fn read_version(&self) -> u64 {
        self.lock().read_version
    }

    pub(crate) async fn get(
        &self,
        key: &[u8],
        snapshot: bool,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        let pending = {
            let mut state = self.lock();
            let raw = state.open()?;
            let pending = raw.get(key, snapshot);
            if !snapshot {
                state.budget.grow(key.len() + key_after(key).len())?;
            }
            pending
        };
        let value = pending.await.map_err(store_error)?;
        Ok(value.map(|slice| slice.to_vec()))
    }

    pub(crate) async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        options: RangeOptions,
    ) -> Result<Vec<KeyValue>, StoreError> {
        check_key(begin)?;
        check_key(end)?;
        if begin >= end || options.limit == Some(0) {
            return Ok(Vec::new());
        }
        let mut range = RangeOption {
            begin: KeySelector::first_greater_or_equal(begin.to_vec()),
            end: KeySelector::first_greater_or_equal(end.to_vec()),
            limit: options.limit,
            mode: if options.limit.is_some() {
                StreamingMode::Exact
            } else {
                StreamingMode::WantAll
            },
            reverse: options.reverse,
            ..RangeOption::default()
        };
        let mut pairs = Vec::new();
        let mut iteration = 1;
        loop {
            let pending = {
                let mut state = self.lock();
                let raw = state.open()?;
                let pending = raw.get_range(&range, iteration, options.snapshot);
                if !options.snapshot && iteration == 1 {
                    state.budget.grow(begin.len() + end.len())?;
                }
                pending
            };
            let values = pending.await.map_err(store_error)?;
            pairs.extend(
                values
                    .iter()
                    .map(|pair| (pair.key().to_vec(), pair.value().to_vec())),
            );
            match range.next_range(&values) {
                Some(next) => range = next,
                None => break,
            }
            iteration += 1;
        }
        Ok(pairs)
    }

    pub(crate) fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_written_key(key)?;
        check_value(value)?;
        let mut state = self.lock();
        state.open()?;
        state.budget.grow(key.len() + value.len())?;
        state.open()?.set(key, value);
        state.wrote = true;
        Ok(())
    }

    pub(crate) fn clear(&self, key: &[u8]) {
        let mut state = self.lock();
        let checked = state
            .open()
            .map(|_| ())
            .and_then(|()| check_written_key(key))
            .and_then(|()| state.budget.grow(key.len()));
        match checked.and_then(|()| state.open()) {
            Ok(raw) => {
                raw.clear(key);
                state.wrote = true;
            }
            Err(error) => state.budget.defer(error),
        }
    }

    pub(crate) fn clear_range(&self, begin: &[u8], end: &[u8]) {
        let mut state = self.lock();
        let checked = state
            .open()
            .map(|_| ())
            .and_then(|()| check_cleared_range(begin, end));
        if begin >= end {
            if let Err(error) = checked {
                state.budget.defer(error);
            }
            return;
        }
        let grown = checked.and_then(|()| state.budget.grow(begin.len() + end.len()));
        match grown.and_then(|()| state.open()) {
            Ok(raw) => {
                raw.clear_range(begin, end);
                state.wrote = true;
            }
            Err(error) => state.budget.defer(error),
        }
    }

    pub(crate) fn atomic(&self, key: &[u8], op: AtomicOp) -> Result<(), StoreError> {
        check_written_key(key)?;
        let (mutation, param) = match op {
            AtomicOp::Add(delta) => (MutationType::Add, delta.to_le_bytes().to_vec()),
            AtomicOp::Min(operand) => (MutationType::Min, operand),
            AtomicOp::Max(operand) => (MutationType::Max, operand),
        };
        check_value(&param)?;
        let mut state = self.lock();
        state.open()?;
        state.budget.grow(key.len() + param.len())?;
        state.open()?.atomic_op(key, &param, mutation);
        state.wrote = true;
        Ok(())
    }

    pub(crate) fn set_versionstamped_key(
        &self,
        key: &[u8],
        offset: u32,
        value: &[u8],
    ) -> Result<(), StoreError> {
        check_versionstamped_key_write(key, offset, value)?;
        let mut key_with_offset = key.to_vec();
        key_with_offset.extend_from_slice(&offset.to_le_bytes());
        let mut state = self.lock();
        state.open()?;
        state.budget.grow(key_with_offset.len() + value.len())?;
        state
            .open()?
            .atomic_op(&key_with_offset, value, MutationType::SetVersionstampedKey);
        state.wrote = true;
        Ok(())
    }

    pub(crate) fn set_versionstamped_value(
        &self,
        key: &[u8],
        value: &[u8],
        offset: u32,
    ) -> Result<(), StoreError> {
        check_versionstamped_value_write(key, value, offset)?;
        let mut value_with_offset = value.to_vec();
        value_with_offset.extend_from_slice(&offset.to_le_bytes());
        let mut state = self.lock();
        state.open()?;
        state.budget.grow(key.len() + value_with_offset.len())?;
        state.open()?.atomic_op(
            key,
            &value_with_offset,
            MutationType::SetVersionstampedValue,
        );
        state.wrote = true;
        Ok(())
    }

    pub(crate) fn versionstamp(&self) -> VersionstampFuture {
        let state = self.lock();
        let pending = match state.open() {
            Ok(raw) => raw.get_versionstamp(),
            Err(error) => return VersionstampFuture::done(Err(error)),
        };
        VersionstampFuture::boxed(async move {
            let bytes = pending.await.map_err(store_error)?;
            Versionstamp::read_at(&bytes, 0)
                .filter(|_| bytes.len() == VERSIONSTAMP_BYTES)
                .ok_or_else(|| {
                    StoreError::corrupt(
                        "versionstamp",
                        format!("{} bytes, not {VERSIONSTAMP_BYTES}", bytes.len()),
                    )
                })
        })
    }

    pub(crate) fn watch(&self, key: &[u8]) -> Watch {
        if let Err(error) = check_key(key) {
            return Watch::done(Err(error));
        }
        let state = self.lock();
        let pending = match state.open() {
            Ok(raw) => raw.watch(key),
            Err(error) => return Watch::done(Err(error)),
        };
        Watch::boxed(async move { pending.await.map_err(store_error) })
    }

    pub(crate) async fn commit(&self) -> Result<(), StoreError> {
        let (raw, wrote) = {
            let mut state = self.lock();
            state.open()?;
            let slot = std::mem::replace(&mut state.slot, Slot::Finished);
            if let Some(error) = state.budget.take_deferred() {
                return Err(error);
            }
            match slot {
                Slot::Open(raw) => (raw, state.wrote),
                // `open` above returned an error for the other states.
                Slot::CommitFailed(_) | Slot::Finished => {
                    return Err(StoreError::TransactionFinished);
                }
            }
        };
        match raw.commit().await {
            Ok(_) => {
                if wrote {
                    self.shared
                        .counters
                        .committed_transactions
                        .fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(failed) => {
                let error = store_error(*failed);
                if matches!(error, StoreError::NotCommitted) {
                    self.shared
                        .counters
                        .conflicts
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.lock().slot = Slot::CommitFailed(failed);
                Err(error)
            }
        }
    }

    /// Fetches the read version, so that [`Transaction::read_version`] knows it.
    async fn fetch_read_version(&self) -> Result<(), StoreError> {
        let pending = self.lock().open()?.get_read_version();
        let version = pending.await.map_err(store_error)?;
        self.lock().read_version = u64::try_from(version).unwrap_or(0);
        Ok(())
    }

    /// Takes the FoundationDB transaction back for `on_error`.
    fn take_for_retry(&self) -> Retry {
        match std::mem::replace(&mut self.lock().slot, Slot::Finished) {
            Slot::Open(raw) => Retry::Open(raw),
            Slot::CommitFailed(failed) => Retry::CommitFailed(failed),
            Slot::Finished => Retry::Finished,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a panic elsewhere cannot corrupt it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// The open FoundationDB transaction.
    fn open(&self) -> Result<&foundationdb::Transaction, StoreError> {
        match &self.slot {
            Slot::Open(raw) => Ok(raw),
            Slot::CommitFailed(_) | Slot::Finished => Err(StoreError::TransactionFinished),
        }
    }
}

/// The [`StoreError`] for a FoundationDB error.
fn store_error(error: impl Into<FdbError>) -> StoreError {
    let error: FdbError = error.into();
    match error.code() {
        1007 => StoreError::TransactionTooOld,
        1020 => StoreError::NotCommitted,
        1021 => StoreError::CommitUnknownResult,
        // A future of a transaction destroyed before it committed.
        1025 | 1101 => StoreError::TransactionCancelled,
        1032 => StoreError::TooManyWatches,
        1036 => StoreError::AccessedUnreadable,
        1042 => StoreError::CommitQueueFull,
        2004 => StoreError::KeyOutsideLegalRange,
        2017 => StoreError::TransactionFinished,
        2021 => StoreError::NoCommitVersion,
        code => StoreError::FoundationDb {
            code,
            message: error.message().to_owned(),
            retryable: error.is_retryable(),
        },
    }
}

/// Compile-time check: `transact` futures can be spawned on a multi-threaded runtime.
#[allow(dead_code)]
fn transact_is_send(database: &crate::Database) {
    fn assert_send<T: Send>(_: T) {}
    assert_send(database.transact(|tx| async move {
        tx.get(b"key").await?;
        tx.watch(b"key").await?;
        tx.versionstamp().await?;
        tx.commit().await
    }));
}
