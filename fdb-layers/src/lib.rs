//! Relay's storage: layers over an FDB-shaped transactional, ordered key-value API.
//!
//! This crate owns everything a region keeps durably: the directory (accounts, devices, home
//! regions), the key directory (one-time and fallback keys), per-chat logs (sequencing, dedupe,
//! sender FIFO), per-device queues, the marks that tell a device whose state went back, receipts,
//! the cross-region outbox, the store's own identity and the quarantine of devices whose queue
//! cannot be read. Each layer is a module of functions
//! taking a [`Transaction`], so a region composes several layers in one atomic transaction
//! run by [`Database::transact`].
//!
//! The API imitates FoundationDB (retryable transaction closures, snapshot reads with
//! read-your-writes, optimistic conflicts, atomic add/min/max, versionstamped keys and values,
//! watches, tuple-encoded keys under subspaces, and FoundationDB's size and age limits), so the
//! layers run unchanged on every backend: the embedded one on redb (group commit, seeded fault
//! injection), a deterministic memory one for simulation, and FoundationDB itself (cargo
//! feature `fdb`).

pub mod blocks;
pub mod chat_log;
pub mod device_queue;
pub mod device_state;
pub mod directory;
pub mod engine;
pub mod error;
pub mod home_move;
pub mod keys;
pub mod limits;
pub mod media;
pub mod objects;
pub mod outbox;
pub mod pairing;
pub mod presence;
pub mod push;
pub mod quarantine;
pub mod receipts;
pub mod store_identity;
pub mod tokens;
pub mod tuple;

mod codec;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod test_support;

#[cfg(feature = "fdb")]
pub use engine::FdbNetwork;
pub use engine::{
    CommittedGroup, Database, DiskFailure, DiskFaults, EmbeddedOptions, EngineStats, FaultConfig,
    IntegrityReport, MemoryDisk, MemoryOptions, Mutation, RangeOptions, Replicated,
    ReplicationSink, StandbyStore, StoreExport, Transaction, Versionstamp, VersionstampFuture,
    Watch, WrittenKey,
};
pub use error::StoreError;
pub use tuple::{Subspace, TupleDecode, TupleEncode};
