//! Relay's benchmarks, each workload next to its ceilings measured in the same run (these
//! machines are shared and noisy: compare ratios within one run). `relayd bench` is the command
//! line; this crate holds the workloads and their reports.
//!
//! - [`storage`]: durable message-path appends through the storage layers, against raw redb
//!   (batched, and one fsync per message) and the disk's fsync rate.
//! - [`sync`]: a new device's bootstrap of a long history from a snapshot, and one remote
//!   operation, against automerge's own save and load of the same documents.
//! - [`measure`]: windows, the fsync probe, CPU time from `/proc`, percentiles.

pub mod measure;
pub mod storage;
pub mod sync;

use std::path::Path;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options are unusable.
    #[error("{0}")]
    Invalid(String),
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The storage layers failed.
    #[error("{what}: {source}")]
    Store {
        /// What was being done.
        what: &'static str,
        /// The layers' error.
        source: fdb_layers::StoreError,
    },
    /// redb failed in a raw baseline.
    #[error("{what}: {error}")]
    Redb {
        /// What was being done.
        what: &'static str,
        /// redb's error.
        error: redb::Error,
    },
    /// The workload was refused (a full queue, a sequence gap) or a task failed.
    #[error("{0}")]
    Refused(String),
}

impl BenchError {
    /// A failed file operation on `path`, for `map_err`.
    pub fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BenchError {
        let path = path.display().to_string();
        move |source| BenchError::Io { what, path, source }
    }
}
