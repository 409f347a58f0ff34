//! Watches of the embedded and memory backends, with FoundationDB's semantics: a watch remembers
//! the value its transaction saw, is registered when that transaction commits, and fires once a
//! later commit leaves the key with a different value (a write of the same value does not fire
//! it). A change by the watching transaction itself fires it at once; a failed commit fails it
//! with the commit's error; a transaction dropped before committing fails it with
//! `TransactionCancelled`. Every database bounds its outstanding watches
//! ([`WATCHES_OUTSTANDING_MAX`]); a watch stops counting once it resolved or was dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::committer::KeyRange;
use crate::error::StoreError;
use crate::limits::WATCHES_OUTSTANDING_MAX;

/// What a watch resolves to.
type WatchOutcome = Result<(), StoreError>;

/// A future that resolves when the watched key's value changes after the watching transaction
/// committed (FoundationDB's watch). Dropping it cancels the watch.
#[must_use = "a watch does nothing unless awaited"]
pub struct Watch {
    state: WatchState,
}

enum WatchState {
    /// Resolved, or refused before it was registered.
    Done(WatchOutcome),
    /// A watch of the embedded or memory backend.
    Local {
        receiver: oneshot::Receiver<WatchOutcome>,
        registry: Arc<WatchRegistry>,
        id: u64,
        key: Vec<u8>,
    },
    /// A watch of the FoundationDB backend.
    #[cfg(feature = "fdb")]
    Boxed(Pin<Box<dyn Future<Output = WatchOutcome> + Send + Sync>>),
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            WatchState::Done(outcome) => format!("done: {outcome:?}"),
            WatchState::Local { .. } => "pending".to_owned(),
            #[cfg(feature = "fdb")]
            WatchState::Boxed(_) => "pending (FoundationDB)".to_owned(),
        };
        f.debug_struct("Watch").field("state", &state).finish()
    }
}

impl Watch {
    /// A watch that already resolved with `outcome`.
    pub(crate) fn done(outcome: WatchOutcome) -> Self {
        Watch {
            state: WatchState::Done(outcome),
        }
    }

    /// A watch resolved by `future` (the FoundationDB backend's).
    #[cfg(feature = "fdb")]
    pub(crate) fn boxed(
        future: impl Future<Output = WatchOutcome> + Send + Sync + 'static,
    ) -> Self {
        Watch {
            state: WatchState::Boxed(Box::pin(future)),
        }
    }
}

impl Future for Watch {
    type Output = WatchOutcome;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<WatchOutcome> {
        let watch = self.get_mut();
        let outcome = match &mut watch.state {
            WatchState::Done(outcome) => return Poll::Ready(outcome.clone()),
            WatchState::Local {
                receiver,
                registry,
                id,
                key,
            } => match Pin::new(receiver).poll(context) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(received) => {
                    registry.release(*id, key);
                    // The sender is dropped only with a transaction that never committed.
                    received.unwrap_or(Err(StoreError::TransactionCancelled))
                }
            },
            #[cfg(feature = "fdb")]
            WatchState::Boxed(future) => match future.as_mut().poll(context) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(outcome) => outcome,
            },
        };
        // Replacing a local state releases nothing twice: `release` forgets unknown ids.
        watch.state = WatchState::Done(outcome.clone());
        Poll::Ready(outcome)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let WatchState::Local {
            registry, id, key, ..
        } = &self.state
        {
            registry.release(*id, key);
        }
    }
}

/// A watch waiting for its transaction to commit.
pub(crate) struct PendingWatch {
    id: u64,
    pub(crate) key: Vec<u8>,
    /// The value the transaction saw when it created the watch.
    pub(crate) value: Option<Vec<u8>>,
    sender: oneshot::Sender<WatchOutcome>,
}

/// The watches of one open database.
pub(crate) struct WatchRegistry {
    state: Mutex<RegistryState>,
}

#[derive(Default)]
struct RegistryState {
    /// Every watch that has neither resolved nor been dropped, registered or still pending.
    live: BTreeSet<u64>,
    next_id: u64,
    /// Registered watches by key.
    by_key: BTreeMap<Vec<u8>, Vec<Registered>>,
    /// Set once the database closed: new watches fail with it.
    closed: bool,
}

struct Registered {
    id: u64,
    value: Option<Vec<u8>>,
    sender: oneshot::Sender<WatchOutcome>,
}

impl WatchRegistry {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(WatchRegistry {
            state: Mutex::new(RegistryState::default()),
        })
    }

    /// Creates a watch of `key`, which its transaction saw holding `value`: the caller keeps
    /// the pending part until the transaction commits. Refused beyond the bound.
    pub(crate) fn create(
        self: &Arc<Self>,
        key: &[u8],
        value: Option<Vec<u8>>,
    ) -> Result<(PendingWatch, Watch), StoreError> {
        let mut state = self.lock();
        if state.closed {
            return Err(StoreError::Closed);
        }
        if state.live.len() >= WATCHES_OUTSTANDING_MAX {
            return Err(StoreError::TooManyWatches);
        }
        let id = state.next_id;
        state.next_id += 1;
        state.live.insert(id);
        let (sender, receiver) = oneshot::channel();
        let pending = PendingWatch {
            id,
            key: key.to_vec(),
            value,
            sender,
        };
        let watch = Watch {
            state: WatchState::Local {
                receiver,
                registry: self.clone(),
                id,
                key: key.to_vec(),
            },
        };
        Ok((pending, watch))
    }

    /// Resolves a watch that never got registered (its transaction changed the key itself, or
    /// failed to commit).
    pub(crate) fn resolve_pending(&self, pending: PendingWatch, outcome: WatchOutcome) {
        self.lock().live.remove(&pending.id);
        // The watch may have been dropped already.
        let _ = pending.sender.send(outcome);
    }

    /// Registers the watches of a transaction that committed. `current` reads a key's latest
    /// committed value; a key that already changed fires its watch at once.
    pub(crate) fn register(
        &self,
        watches: Vec<PendingWatch>,
        mut current: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, StoreError>,
    ) {
        if watches.is_empty() {
            return;
        }
        // Reading under the lock orders this against `notify`: a commit applied before the
        // read is seen here, one applied after it finds the watch registered.
        let mut state = self.lock();
        for watch in watches {
            if !state.live.contains(&watch.id) || watch.sender.is_closed() {
                state.live.remove(&watch.id);
                continue;
            }
            if state.closed {
                state.live.remove(&watch.id);
                let _ = watch.sender.send(Err(StoreError::Closed));
                continue;
            }
            match current(&watch.key) {
                Ok(value) if value == watch.value => {
                    state.by_key.entry(watch.key).or_default().push(Registered {
                        id: watch.id,
                        value: watch.value,
                        sender: watch.sender,
                    });
                }
                outcome => {
                    state.live.remove(&watch.id);
                    let _ = watch.sender.send(outcome.map(|_| ()));
                }
            }
        }
    }

    /// Whether any watch is registered. Checked after a commit is visible, `false` means the
    /// commit has nothing to fire: a watch registered later reads the committed value itself.
    /// Lets committers skip collecting the keys they changed.
    pub(crate) fn has_registered(&self) -> bool {
        !self.lock().by_key.is_empty()
    }

    /// Fires the registered watches whose key a commit wrote (`keys`) or cleared (`ranges`) and
    /// whose value now differs from the one watched. Call after the commit is visible.
    pub(crate) fn notify(
        &self,
        keys: &[Vec<u8>],
        ranges: &[KeyRange],
        mut current: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, StoreError>,
    ) {
        let mut state = self.lock();
        if state.by_key.is_empty() {
            return;
        }
        let mut touched: BTreeSet<Vec<u8>> = keys
            .iter()
            .filter(|key| state.by_key.contains_key(*key))
            .cloned()
            .collect();
        for range in ranges {
            let bounds = (
                Bound::Included(range.begin.as_slice()),
                Bound::Excluded(range.end.as_slice()),
            );
            touched.extend(
                state
                    .by_key
                    .range::<[u8], _>(bounds)
                    .map(|(key, _)| key.clone()),
            );
        }
        for key in touched {
            let now = current(&key);
            let RegistryState { live, by_key, .. } = &mut *state;
            let Some(registered) = by_key.get_mut(&key) else {
                continue;
            };
            let mut index = 0;
            while index < registered.len() {
                let fire = match &now {
                    Ok(value) => *value != registered[index].value,
                    Err(_) => true,
                };
                if fire {
                    let watch = registered.swap_remove(index);
                    live.remove(&watch.id);
                    let _ = watch.sender.send(now.clone().map(|_| ()));
                } else {
                    index += 1;
                }
            }
            if registered.is_empty() {
                by_key.remove(&key);
            }
        }
    }

    /// Fails every registered watch with `Closed` and refuses new ones: the database closed
    /// (or its process crashed).
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let by_key = std::mem::take(&mut state.by_key);
        for watch in by_key.into_values().flatten() {
            state.live.remove(&watch.id);
            let _ = watch.sender.send(Err(StoreError::Closed));
        }
    }

    /// Outstanding watches (registered, or pending in a transaction).
    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> usize {
        self.lock().live.len()
    }

    /// Forgets a watch that resolved or was dropped.
    fn release(&self, id: u64, key: &[u8]) {
        let mut state = self.lock();
        if !state.live.remove(&id) {
            return;
        }
        if let Some(registered) = state.by_key.get_mut(key) {
            registered.retain(|watch| watch.id != id);
            if registered.is_empty() {
                state.by_key.remove(key);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, RegistryState> {
        // Every update leaves the registry consistent, so a panic elsewhere cannot corrupt it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
