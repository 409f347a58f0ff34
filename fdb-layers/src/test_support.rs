//! Helpers shared by the crate's tests.

use tempfile::TempDir;

use crate::engine::{Database, EmbeddedOptions, FaultConfig};

pub(crate) use crate::engine::split_mix;

/// A fresh database in a temporary folder (dropped with the folder).
pub(crate) fn temporary_database(faults: Option<FaultConfig>) -> (TempDir, Database) {
    let folder = tempfile::tempdir().expect("a temporary folder for a test database");
    let database = Database::open(
        &folder.path().join("store.redb"),
        EmbeddedOptions { faults },
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
