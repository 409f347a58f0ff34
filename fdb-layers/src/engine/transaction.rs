//! The transaction handle layers use, the same on every backend: reads with read-your-writes,
//! buffered writes, FoundationDB's atomic operations, versionstamped keys and values, watches
//! and the commit. It dispatches to the local (embedded or memory) transaction or to
//! FoundationDB's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::committer::AtomicOp;
#[cfg(feature = "fdb")]
use super::fdb::FdbTransaction;
use super::local::LocalTransaction;
use super::watches::Watch;
use super::{Versionstamp, WrittenKey};
use crate::error::StoreError;
use crate::limits::TRANSACTION_BYTES_MAX;

/// How a range is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// Most pairs returned; `None` returns the whole range.
    pub limit: Option<usize>,
    /// Returns pairs from the end of the range backwards.
    pub reverse: bool,
    /// Reads without adding a read-conflict range (FDB snapshot read).
    pub snapshot: bool,
}

impl RangeOptions {
    /// The first `limit` pairs, forwards, with conflict detection.
    pub fn limit(limit: usize) -> Self {
        RangeOptions {
            limit: Some(limit),
            ..RangeOptions::default()
        }
    }
}

/// A transaction: cheap to clone (every clone is the same transaction), `Send` and `Sync`.
#[derive(Clone)]
pub struct Transaction {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Local(Arc<LocalTransaction>),
    #[cfg(feature = "fdb")]
    Fdb(Arc<FdbTransaction>),
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Transaction");
        match &self.backend {
            Backend::Local(transaction) => transaction.describe(&mut debug),
            #[cfg(feature = "fdb")]
            Backend::Fdb(transaction) => transaction.describe(&mut debug),
        }
        debug.finish_non_exhaustive()
    }
}

impl Transaction {
    pub(super) fn local(transaction: LocalTransaction) -> Self {
        Transaction {
            backend: Backend::Local(Arc::new(transaction)),
        }
    }

    #[cfg(feature = "fdb")]
    pub(super) fn fdb(transaction: Arc<FdbTransaction>) -> Self {
        Transaction {
            backend: Backend::Fdb(transaction),
        }
    }

    /// The version whose committed state this transaction reads. On FoundationDB it is known
    /// from the start of an attempt of [`crate::Database::transact`]; a transaction from
    /// [`crate::Database::create_transaction`] reports 0 there until `transact` would have
    /// fetched it.
    pub fn read_version(&self) -> u64 {
        match &self.backend {
            Backend::Local(transaction) => transaction.read_version(),
            #[cfg(feature = "fdb")]
            Backend::Fdb(transaction) => transaction.read_version(),
        }
    }

    /// Reads a key, adding it to the read-conflict ranges.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_key(key, false).await
    }

    /// Reads a key without adding a read conflict (FDB snapshot read): a concurrent write of it
    /// will not make this transaction retry.
    pub async fn snapshot_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_key(key, true).await
    }

    /// Reads the pairs with `begin <= key < end`, in key order (or reversed), merged with this
    /// transaction's own writes.
    pub async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        options: RangeOptions,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        match &self.backend {
            Backend::Local(transaction) => transaction.get_range(begin, end, options),
            #[cfg(feature = "fdb")]
            Backend::Fdb(transaction) => transaction.get_range(begin, end, options).await,
        }
    }

    /// Buffers a write of `value` under `key`.
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local(transaction) => transaction.set(key, value),
            #[cfg(feature = "fdb")]
            Backend::Fdb(transaction) => transaction.set(key, value),
        }
    }

    /// Buffers the removal of `key`. An invalid key fails the commit.
    pub fn clear(&self, key: &[u8]) {
        match &self.backend {
            Backend::Local(transaction) => transaction.clear(key),
            #[cfg(feature = "fdb")]
            Backend::Fdb(transaction) => transaction.clear(key),
        }
    }

    /// Buffers the removal of every key with `begin <= key < end`. An invalid range fails the
    /// commit; an empty one does nothing.
    pub fn clear_range(&self, begin: &[u8], end: &[u8]) {
        match &self.backend {
            Backend::Local(transaction) => transaction.clear_range(begin, end),
            #[cfg(feature = "fdb")]
            Backend::Fdb(transaction) => transaction.clear_range(begin, end),
        }
    }

    /// Buffers FDB's `ADD`: the value is read as a little-endian integer (missing means 0,
    /// shorter is zero-extended, longer is truncated to 8 bytes) and `delta` is added, wrapping.
    /// Adds no read conflict, so concurrent adds to one key never conflict.
    pub fn atomic_add(&self, key: &[u8], delta: i64) -> Result<(), StoreError> {
        self.atomic(key, AtomicOp::Add(delta))
    }

    /// Buffers FDB's `MIN`: the stored value, zero-extended or truncated to `operand`'s length,
    /// and `operand` are compared as little-endian unsigned integers and the smaller is stored;
    /// a missing value stores `operand`. Adds no read conflict.
    pub fn atomic_min(&self, key: &[u8], operand: &[u8]) -> Result<(), StoreError> {
        self.atomic(key, AtomicOp::Min(operand.to_vec()))
    }

    /// Buffers FDB's `MAX`: like [`Transaction::atomic_min`], but the larger is stored and a
    /// missing value counts as zero. Adds no read conflict.
    pub fn atomic_max(&self, key: &[u8], operand: &[u8]) -> Result<(), StoreError> {
        self.atomic(key, AtomicOp::Max(operand.to_vec()))
    }

    /// Buffers FDB's `SET_VERSIONSTAMPED_KEY`: at commit the 10 bytes of `key` from `offset`
    /// are replaced by the transaction's [`Versionstamp`] and `value` is stored under the
    /// result. Reading the keys it may take fails with `AccessedUnreadable` until the commit.
    pub fn set_versionstamped_key(
        &self,
        key: &[u8],
        offset: u32,
        value: &[u8],
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local(transaction) => transaction.set_versionstamped_key(key, offset, value),
            #[cfg(feature = "fdb")]
            Backend::Fdb(transaction) => transaction.set_versionstamped_key(key, offset, value),
        }
    }

    /// Buffers FDB's `SET_VERSIONSTAMPED_VALUE`: at commit the 10 bytes of `value` from
    /// `offset` are replaced by the transaction's [`Versionstamp`] and the result is stored
    /// under `key`. Reading `key` fails with `AccessedUnreadable` until the commit.
    pub fn set_versionstamped_value(
        &self,
        key: &[u8],
        value: &[u8],
        offset: u32,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local(transaction) => transaction.set_versionstamped_value(key, value, offset),
            #[cfg(feature = "fdb")]
            Backend::Fdb(transaction) => transaction.set_versionstamped_value(key, value, offset),
        }
    }

    /// The versionstamp this transaction commits with, resolved once it committed (FDB's
    /// `get_versionstamp`). Ask before the commit, typically inside the
    /// [`crate::Database::transact`] body, and await it after: it fails with `NoCommitVersion`
    /// for a transaction that wrote nothing, with the commit's error if the commit failed, and
    /// with `TransactionCancelled` if the transaction was dropped uncommitted.
    pub fn versionstamp(&self) -> VersionstampFuture {
        match &self.backend {
            Backend::Local(transaction) => transaction.versionstamp(),
            #[cfg(feature = "fdb")]
            Backend::Fdb(transaction) => transaction.versionstamp(),
        }
    }

    /// Watches `key` (FDB's watch): the future resolves once a commit after this transaction's
    /// leaves `key` with a value other than the one this transaction sees now; a write of the
    /// same value does not count. It is registered when the transaction commits (a read-only
    /// one too), fails with the commit's error if the commit fails, and resolves at once if this
    /// transaction itself changes the key. Dropping it cancels the watch. At most
    /// [`crate::limits::WATCHES_OUTSTANDING_MAX`] watches are outstanding per database; beyond,
    /// it fails with `TooManyWatches`.
    pub fn watch(&self, key: &[u8]) -> Watch {
        match &self.backend {
            Backend::Local(transaction) => transaction.watch(key),
            #[cfg(feature = "fdb")]
            Backend::Fdb(transaction) => transaction.watch(key),
        }
    }

    /// Commits the buffered writes. A transaction without writes commits without the
    /// committer. Afterwards the transaction can no longer be used.
    pub async fn commit(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local(transaction) => transaction.commit().await,
            #[cfg(feature = "fdb")]
            Backend::Fdb(transaction) => transaction.commit().await,
        }
    }

    /// The single keys this transaction writes so far (sets, clears, atomic operations and
    /// versionstamped keys; range clears are not listed), with what each puts in the store: for
    /// measurements of what an operation writes. `None` on FoundationDB, which keeps its
    /// mutations in the client library.
    pub fn written_keys(&self) -> Option<Vec<WrittenKey>> {
        match &self.backend {
            Backend::Local(transaction) => Some(transaction.written_keys()),
            #[cfg(feature = "fdb")]
            Backend::Fdb(_) => None,
        }
    }

    /// Range clears this transaction has buffered (local backends only), for tests of the
    /// mutations layers send.
    #[cfg(test)]
    pub(crate) fn buffered_range_clears(&self) -> Option<usize> {
        match &self.backend {
            Backend::Local(transaction) => Some(transaction.buffered_range_clears()),
            #[cfg(feature = "fdb")]
            Backend::Fdb(_) => None,
        }
    }

    async fn read_key(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.backend {
            Backend::Local(transaction) => transaction.get(key, snapshot),
            #[cfg(feature = "fdb")]
            Backend::Fdb(transaction) => transaction.get(key, snapshot).await,
        }
    }

    fn atomic(&self, key: &[u8], op: AtomicOp) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local(transaction) => transaction.atomic(key, op),
            #[cfg(feature = "fdb")]
            Backend::Fdb(transaction) => transaction.atomic(key, op),
        }
    }
}

/// What a versionstamp future resolves to.
type VersionstampOutcome = Result<Versionstamp, StoreError>;

/// What a transaction has buffered against [`TRANSACTION_BYTES_MAX`], counted as FoundationDB
/// counts it (mutations plus conflict ranges), and the first error of a call that cannot return
/// one (`clear`, `clear_range`), which the commit returns instead. Every backend's transaction
/// keeps one, so a transaction too large on one is too large on all.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    size_bytes: usize,
    deferred_error: Option<StoreError>,
}

impl Budget {
    /// Counts `bytes` more, or refuses them (counting nothing) past [`TRANSACTION_BYTES_MAX`].
    pub(crate) fn grow(&mut self, bytes: usize) -> Result<(), StoreError> {
        let transaction_bytes = self.size_bytes + bytes;
        if transaction_bytes > TRANSACTION_BYTES_MAX {
            return Err(StoreError::TransactionTooLarge { transaction_bytes });
        }
        self.size_bytes = transaction_bytes;
        Ok(())
    }

    /// Keeps `error` for the commit, unless an earlier one is kept already.
    pub(crate) fn defer(&mut self, error: StoreError) {
        self.deferred_error.get_or_insert(error);
    }

    /// The error kept for the commit, taken.
    pub(crate) fn take_deferred(&mut self) -> Option<StoreError> {
        self.deferred_error.take()
    }

    /// Bytes counted so far.
    pub(crate) fn size_bytes(&self) -> usize {
        self.size_bytes
    }
}

/// The versionstamp of a transaction, resolved after it committed
/// ([`Transaction::versionstamp`]).
#[must_use = "a versionstamp future does nothing unless awaited"]
pub struct VersionstampFuture {
    state: VersionstampState,
}

enum VersionstampState {
    Done(VersionstampOutcome),
    Waiting(oneshot::Receiver<VersionstampOutcome>),
    #[cfg(feature = "fdb")]
    Boxed(Pin<Box<dyn Future<Output = VersionstampOutcome> + Send + Sync>>),
}

impl std::fmt::Debug for VersionstampFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            VersionstampState::Done(outcome) => format!("done: {outcome:?}"),
            VersionstampState::Waiting(_) => "waiting for the commit".to_owned(),
            #[cfg(feature = "fdb")]
            VersionstampState::Boxed(_) => "waiting for the commit (FoundationDB)".to_owned(),
        };
        f.debug_struct("VersionstampFuture")
            .field("state", &state)
            .finish()
    }
}

impl VersionstampFuture {
    pub(crate) fn done(outcome: VersionstampOutcome) -> Self {
        VersionstampFuture {
            state: VersionstampState::Done(outcome),
        }
    }

    pub(crate) fn waiting(receiver: oneshot::Receiver<VersionstampOutcome>) -> Self {
        VersionstampFuture {
            state: VersionstampState::Waiting(receiver),
        }
    }

    #[cfg(feature = "fdb")]
    pub(crate) fn boxed(
        future: impl Future<Output = VersionstampOutcome> + Send + Sync + 'static,
    ) -> Self {
        VersionstampFuture {
            state: VersionstampState::Boxed(Box::pin(future)),
        }
    }
}

impl Future for VersionstampFuture {
    type Output = VersionstampOutcome;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<VersionstampOutcome> {
        let future = self.get_mut();
        let outcome = match &mut future.state {
            VersionstampState::Done(outcome) => return Poll::Ready(outcome.clone()),
            VersionstampState::Waiting(receiver) => match Pin::new(receiver).poll(context) {
                Poll::Pending => return Poll::Pending,
                // The sender is dropped only with a transaction that never committed.
                Poll::Ready(received) => received.unwrap_or(Err(StoreError::TransactionCancelled)),
            },
            #[cfg(feature = "fdb")]
            VersionstampState::Boxed(inner) => match inner.as_mut().poll(context) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(outcome) => outcome,
            },
        };
        future.state = VersionstampState::Done(outcome.clone());
        Poll::Ready(outcome)
    }
}
