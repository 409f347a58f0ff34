//! The running digests of the uploads under way ([`RunningHashes`]), so a finish need not read
//! a blob back.

use fdb_layers::media::MediaId;
use relay_proto::digest::BlobHasher;
use relay_proto::wire::BlobDigest;

use crate::limits::BLOB_RUNNING_HASHES_MAX;

/// The digest of each upload's committed bytes, moved on as its units commit (in order, one
/// at a time); for at most [`BLOB_RUNNING_HASHES_MAX`] uploads, the one begun longest ago
/// dropped first. Kept in memory only: after a restart a finish reads the blob back, and so it
/// does after two streams of one upload committed the same unit (either one's bytes may be
/// the object's).
#[derive(Default)]
pub(super) struct RunningHashes {
    /// Numbers the uploads in the order they began here.
    began: u64,
    pub(super) uploads: std::collections::HashMap<MediaId, Hashing>,
}

pub(super) enum Hashing {
    /// Every committed byte hashed.
    Ready(RunningHash),
    /// A commit is moving the hash on.
    Busy { began: u64 },
    /// Not known: the upload is read back at finish.
    Unknown { began: u64 },
}

impl Hashing {
    fn began(&self) -> u64 {
        match self {
            Hashing::Ready(running) => running.began,
            Hashing::Busy { began } | Hashing::Unknown { began } => *began,
        }
    }
}

pub(super) struct RunningHash {
    began: u64,
    /// The bytes hashed so far: the committed ones, from the first.
    pub(super) through_bytes: u64,
    pub(super) hasher: BlobHasher,
}

impl RunningHashes {
    /// Takes the hash of upload `id` to move it past the unit committed at `from_bytes`: a new
    /// one for the first unit, the kept one if it reached `from_bytes`; otherwise none, and
    /// the upload is read back at finish.
    pub(super) fn take_for(
        &mut self,
        id: &MediaId,
        from_bytes: u64,
        kind: BlobDigest,
    ) -> Option<RunningHash> {
        match self.uploads.remove(id) {
            Some(Hashing::Ready(running)) if running.through_bytes == from_bytes => {
                self.hold(
                    id,
                    Hashing::Busy {
                        began: running.began,
                    },
                );
                Some(running)
            }
            None if from_bytes == 0 => {
                self.began += 1;
                let began = self.began;
                self.hold(id, Hashing::Busy { began });
                Some(RunningHash {
                    began,
                    through_bytes: 0,
                    hasher: BlobHasher::new(kind),
                })
            }
            None => None,
            Some(other) => {
                self.hold(
                    id,
                    Hashing::Unknown {
                        began: other.began(),
                    },
                );
                None
            }
        }
    }

    /// Keeps the hash a commit moved on, unless another commit of the upload came meanwhile.
    pub(super) fn keep(&mut self, id: &MediaId, running: RunningHash) {
        if let Some(held @ Hashing::Busy { .. }) = self.uploads.get_mut(id) {
            *held = Hashing::Ready(running);
        }
    }

    /// The hash of every byte of upload `id`, `size_bytes` of them, if kept; forgets it.
    pub(super) fn finished(&mut self, id: &MediaId, size_bytes: u64) -> Option<BlobHasher> {
        match self.uploads.remove(id) {
            Some(Hashing::Ready(running)) if running.through_bytes == size_bytes => {
                Some(running.hasher)
            }
            _ => None,
        }
    }

    fn hold(&mut self, id: &MediaId, hashing: Hashing) {
        if self.uploads.len() >= BLOB_RUNNING_HASHES_MAX
            && let Some(oldest) = self
                .uploads
                .iter()
                .min_by_key(|(_, hashing)| hashing.began())
                .map(|(id, _)| id.clone())
        {
            self.uploads.remove(&oldest);
        }
        self.uploads.insert(id.clone(), hashing);
    }
}
