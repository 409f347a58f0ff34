//! Why a devnet could not start or run.

use std::path::PathBuf;

/// Everything that can go wrong launching or following a devnet.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    /// The options are unusable.
    #[error("{0}")]
    Invalid(String),
    /// A file or folder could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// What was being done (`creating`, `writing`, `reading`).
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Another devnet holds the data folder.
    #[error(
        "another devnet (pid {pid}) is using {}; stop it first, or pick another --data folder",
        data.display()
    )]
    Busy {
        /// The data folder.
        data: PathBuf,
        /// The process holding it, as its lock file says (0 when unknown).
        pid: u32,
    },
    /// A certificate could not be made.
    #[error("certificates: {0}")]
    Pki(String),
    /// A child could not be started or did not come up.
    #[error("{name}: {reason}")]
    Child {
        /// `region-<k>`, `edge-<k>` or `locator`.
        name: String,
        /// What happened, with the end of its log when it exited.
        reason: String,
    },
    /// A child exited before listening, having printed why (its last `relayd: …` line): a
    /// region refusing its store, say. Restarting it would fail the same way.
    #[error("{name} refused to start ({status}): {error} (log: {})", log.display())]
    RefusedToStart {
        /// The child.
        name: String,
        /// How it exited.
        status: String,
        /// The error it printed.
        error: String,
        /// Its log file.
        log: PathBuf,
    },
    /// A devnet process could not be followed (`relayd devnet --json` as a child).
    #[error("the devnet {0}")]
    Process(String),
}

impl DevnetError {
    /// A failed file operation.
    pub(crate) fn file(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        DevnetError::File {
            what,
            path: path.to_owned(),
            source,
        }
    }
}
