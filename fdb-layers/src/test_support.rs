//! Helpers shared by the crate's tests.

use std::future::Future;
use std::time::Duration;

use tempfile::TempDir;

use crate::engine::{Database, EmbeddedOptions, FaultConfig, Transaction};
use crate::error::StoreError;

/// Pause before a transaction answered `Unavailable` runs again, in milliseconds.
const OUTAGE_RETRY_DELAY_MS: u64 = 10;
/// Most times a transaction answered `Unavailable` runs again: far longer than the longest
/// refusal after failed commits (`STORAGE_RETRY_DELAY_MS_MAX`).
const OUTAGE_RETRIES_MAX: u32 = 3_000;

pub(crate) use crate::engine::split_mix;

/// A fresh database in a temporary folder (dropped with the folder).
pub(crate) fn temporary_database(faults: Option<FaultConfig>) -> (TempDir, Database) {
    let folder = tempfile::tempdir().expect("a temporary folder for a test database");
    let database = Database::open(
        &folder.path().join("store.redb"),
        EmbeddedOptions {
            faults,
            ..EmbeddedOptions::default()
        },
    )
    .expect("a test database opens");
    (folder, database)
}

/// A seed for fault injection: `FDB_LAYERS_SEED` if set, else one derived from the clock.
pub(crate) fn fault_seed() -> u64 {
    if let Some(seed) = std::env::var("FDB_LAYERS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
    {
        return seed;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0);
    split_mix(nanos)
}

/// A distinct idempotency key for each `n`, issued at time 0 (so it never expires others).
pub(crate) fn idempotency_key(n: u64) -> crate::codec::IdempotencyKey {
    let mut nonce = [0u8; 16];
    nonce[8..].copy_from_slice(&n.to_be_bytes());
    crate::codec::IdempotencyKey::new(0, nonce)
}

/// Runs a future to completion on a fresh single-threaded runtime with time enabled (the
/// engine's retries sleep), for property tests whose cases are synchronous closures.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a test runtime")
        .block_on(future)
}

/// Issues idempotency keys the way a region does: one per logical request, before its
/// transaction, so every retry of that transaction carries the same key.
#[derive(Default)]
pub(crate) struct KeyIssuer {
    next: std::sync::atomic::AtomicU64,
}

impl KeyIssuer {
    /// A new key.
    pub(crate) fn issue(&self) -> crate::codec::IdempotencyKey {
        let counter = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut nonce = [0xc0; 16];
        nonce[8..].copy_from_slice(&counter.to_be_bytes());
        crate::codec::IdempotencyKey::new(1_000, nonce)
    }
}

/// Runs `body` with [`Database::transact`] the way a region's caller treats a store with disk
/// failures: a [`StoreError::Unavailable`] (a failed group commit, which may or may not be
/// durable, or the refusal after it) runs the same body again after a pause, as a client
/// retries a refused request under the same ids; the body must be idempotent, as for
/// `CommitUnknownResult`. Any other outcome is returned.
pub(crate) async fn transact_through_outages<T, F, Fut>(
    database: &Database,
    mut body: F,
) -> Result<T, StoreError>
where
    F: FnMut(Transaction) -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    for _ in 0..OUTAGE_RETRIES_MAX {
        match database.transact(&mut body).await {
            Err(StoreError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(OUTAGE_RETRY_DELAY_MS)).await;
            }
            outcome => return outcome,
        }
    }
    database.transact(&mut body).await
}

/// The address of device `device` of account `account`.
pub(crate) fn device_address(account: u64, device: u32) -> relay_proto::DeviceAddress {
    relay_proto::DeviceAddress {
        account: relay_proto::AccountId(account),
        device: relay_proto::DeviceId(device),
    }
}
