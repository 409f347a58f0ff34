//! The queue entries a push carries along: one gapless run within a byte budget, kept the same
//! way by the region that builds it and by the edge that holds it for a device connection.

use prost::Message;

use super::QueueEntry;
use crate::limits::QUEUE_PUSH_BYTES_MAX;

/// A gapless run of queue entries, in queue order, at most [`QUEUE_PUSH_BYTES_MAX`] encoded.
/// Once an entry could not join (it did not follow, did not fit, or was not there to send),
/// the run is closed: nothing after it may join, or the device would see a gap.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EntryRun {
    entries: Vec<QueueEntry>,
    bytes: usize,
    closed: bool,
}

impl EntryRun {
    /// Adds `entry`, numbered `queue_seq` (`None`: an entry that does not go along), when it
    /// joins ([`EntryRun::join`]); else closes the run.
    pub fn push(&mut self, queue_seq: u64, entry: Option<QueueEntry>) {
        let joined = entry.is_some_and(|entry| entry.queue_seq == queue_seq && self.join(entry));
        if !joined {
            self.closed = true;
        }
    }

    /// Adds `entry` when the run is open, the entry follows its last one and fits the budget;
    /// says whether it did (a run stays open when an entry does not join this way).
    pub fn join(&mut self, entry: QueueEntry) -> bool {
        let follows = self
            .entries
            .last()
            .is_none_or(|last| last.queue_seq + 1 == entry.queue_seq);
        let bytes = entry.encoded_len();
        if self.closed || !follows || self.bytes + bytes > QUEUE_PUSH_BYTES_MAX {
            return false;
        }
        self.bytes += bytes;
        self.entries.push(entry);
        true
    }

    /// Adds what `other` holds after this run's entries, as far as it joins.
    pub fn extend(&mut self, other: EntryRun) {
        for entry in other.entries {
            self.push(entry.queue_seq, Some(entry));
        }
        self.closed |= other.closed;
    }

    /// The entries.
    pub fn entries(&self) -> &[QueueEntry] {
        &self.entries
    }

    /// Takes the entries out, leaving an empty, open run.
    pub fn take(&mut self) -> Vec<QueueEntry> {
        std::mem::take(self).entries
    }
}
