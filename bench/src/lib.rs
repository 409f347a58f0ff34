//! Relay's benchmarks, each workload next to its ceilings measured in the same run (these
//! machines are shared and noisy: compare ratios within one run). `relayd bench` is the command
//! line; this crate holds the workloads and their reports.
//!
//! - [`storage`]: durable message-path appends through the storage layers, against raw redb
//!   (batched, and one fsync per message) and the disk's fsync rate.
//! - [`messages`]: messages through a devnet's real processes (W1 one to one, closed and open
//!   loop, one region and across two; W4 a backlog for an offline device; W3 one sender to a
//!   group, in [`groups`]), against raw QUIC request/response, raw redb and Olm, measured in
//!   the same run ([`ceilings`]).
//! - [`groups`]: W3, the message benchmark's group fan-out rows (groups made through the real
//!   group commands, one opaque sender, every member device connected).
//! - [`connections`]: idle authenticated devices on one edge (W2): the edge's memory per
//!   connection, connections per second, memory given back; against the same devices on a
//!   bare QUIC server with the edge's TLS and transport ([`bare_quic`]) in the same run.
//! - [`presence`]: presence and typing through a two-region devnet's real processes (P1: many
//!   watchers of a few accounts, their setup and the fan-out of each connect and leave; P2:
//!   typing indicators from many connections to one receiver across regions), against raw
//!   QUIC request/response in the same run (issue 13).
//! - [`e2ee`]: the message benchmark's E2EE mode: the same rows with every device a real
//!   client SDK device (Olm, a SQLite store, the outbox), the bench process's CPU included.
//! - [`device`]: the minimal opaque device those drive (registration, authentication,
//!   envelopes of opaque bytes, fetch-and-ack, presence watches and typing indicators, a log of
//!   the presence and typing pushes), with sans-IO sending and receiving cores.
//! - [`servers`]: the devnet under test, run as a child process: its pids, CPU time, resident
//!   memory and the regions' transaction retries.
//! - [`sync`]: a new device's bootstrap of a long history from a snapshot, and one remote
//!   operation, against automerge's own save and load of the same documents.
//! - [`blobs`]: a 20 MB blob uploaded and downloaded by a client SDK device through a devnet's
//!   real processes, against a raw QUIC stream in the same run (issue 14's media target).
//! - [`measure`]: windows, the fsync probe, CPU time and memory from `/proc`, percentiles.
//! - [`limits`]: every bound of the message, connection, blob, sync and presence benchmarks.

pub mod bare_quic;
pub mod blobs;
pub mod ceilings;
pub mod connections;
pub mod device;
pub mod directory;
pub mod e2ee;
pub mod groups;
pub mod home_move;
pub mod limits;
pub mod measure;
pub mod messages;
pub mod presence;
pub mod push;
pub mod servers;
mod standby;
pub mod storage;
pub mod sync;

use std::path::Path;

use relay_devnet::DevnetError;
use relay_net::NetError;
use relay_proto::ProtoError;

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
    /// A client SDK device failed (the E2EE mode).
    #[error("{what}: {source}")]
    Client {
        /// What was being done.
        what: String,
        /// The SDK's error.
        source: relay_client::ClientError,
    },
    /// The devnet under test could not be started or followed.
    #[error("the devnet under test: {0}")]
    Devnet(#[from] DevnetError),
    /// A device's connection failed (the network shell's error).
    #[error("{what}: {source}")]
    Net {
        /// What was being done.
        what: String,
        /// The network shell's error.
        source: NetError,
    },
    /// An edge answered a device's request with an error that retrying cannot fix.
    #[error("{what}: the edge refused: {error}")]
    Remote {
        /// What was being done.
        what: String,
        /// The edge's typed answer.
        error: ProtoError,
    },
    /// An edge answered something the protocol does not allow there, or a device saw its
    /// queue break a rule (a gap, a reordering).
    #[error("{0}")]
    Protocol(String),
    /// Something did not happen within its bound.
    #[error("{0}")]
    Timeout(String),
    /// The run was interrupted (Ctrl-C or SIGTERM).
    #[error("interrupted")]
    Interrupted,
    /// A run failed; its folder (the devnet's data and logs) is kept for a look.
    #[error("{error} (the run's data and logs are kept in {})", folder.display())]
    Kept {
        /// Why the run failed.
        error: Box<BenchError>,
        /// The folder kept.
        folder: std::path::PathBuf,
    },
}

impl BenchError {
    /// A failed file operation on `path`, for `map_err`.
    pub fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BenchError {
        let path = path.display().to_string();
        move |source| BenchError::Io { what, path, source }
    }

    /// A failed client SDK operation, for `map_err`.
    pub fn client(what: impl Into<String>) -> impl FnOnce(relay_client::ClientError) -> BenchError {
        let what = what.into();
        move |source| BenchError::Client { what, source }
    }

    /// A failed network operation, for `map_err`.
    pub fn net(what: impl Into<String>) -> impl FnOnce(NetError) -> BenchError {
        let what = what.into();
        move |source| BenchError::Net { what, source }
    }
}
