//! Known bugs that the simulator can plant, to prove its checker finds them.
//!
//! Each [`PlantedBug`] names one safety check that a service skips when the bug is planted on the
//! current thread. Only the deterministic simulation (relay-chaos) plants bugs: it runs the
//! whole relay on one thread, so [`plant`] reaches every service of one run and nothing else.
//! Servers run on tokio's multi-threaded runtime, whose threads never plant anything, so in a
//! real deployment [`is_planted`] is always `false` (FoundationDB's BUGGIFY takes the same
//! approach: compiled in, switched on only in simulation).

use std::cell::Cell;

/// A bug the simulator can plant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PlantedBug {
    /// The chat log appends an envelope whatever its sender_seq, instead of refusing a gap with
    /// "resend from k" (breaks I3 sender FIFO when a device's envelopes arrive out of order).
    SkipSenderSeqCheck,
    /// A region answers "committed" for an envelope before its transaction commits, and commits
    /// it a moment later (breaks I1 no loss when the region crashes in between).
    AckBeforeCommit,
    /// A device applies a delivered receipt even when the message is already read, moving its
    /// tick backwards (breaks I6 receipts move forward).
    ReceiptMovesBackwards,
    /// A device's history shows only its own read mark of a chat, not the marks its other
    /// devices synced to it (breaks I7 convergence once a device of a linked account reads).
    ReadMarksStayLocal,
    /// A region accepts a group envelope for the accounts it lists, without checking them (and
    /// its version) against the group's current membership, so a sender that has not heard of
    /// a removal still shares its texts with the removed member (breaks the removal check).
    GroupMembershipUnchecked,
}

impl PlantedBug {
    /// Every plantable bug.
    pub const ALL: [PlantedBug; 5] = [
        PlantedBug::SkipSenderSeqCheck,
        PlantedBug::AckBeforeCommit,
        PlantedBug::ReceiptMovesBackwards,
        PlantedBug::ReadMarksStayLocal,
        PlantedBug::GroupMembershipUnchecked,
    ];

    /// The bug's name on the command line (`relayd sim --plant <name>`).
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::SkipSenderSeqCheck => "skip-sender-seq-check",
            PlantedBug::AckBeforeCommit => "ack-before-commit",
            PlantedBug::ReceiptMovesBackwards => "receipt-moves-backwards",
            PlantedBug::ReadMarksStayLocal => "read-marks-stay-local",
            PlantedBug::GroupMembershipUnchecked => "group-membership-unchecked",
        }
    }

    /// The bug named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|bug| bug.name() == name)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

// Every bug has its bit in the planted set.
const _: () = assert!(PlantedBug::ALL.len() <= u8::BITS as usize);

impl std::fmt::Display for PlantedBug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

thread_local! {
    static PLANTED: Cell<u8> = const { Cell::new(0) };
}

/// Whether `bug` is planted on this thread.
pub fn is_planted(bug: PlantedBug) -> bool {
    PLANTED.with(|planted| planted.get() & bug.bit() != 0)
}

/// Plants `bugs` on this thread until the returned guard is dropped.
pub fn plant(bugs: &[PlantedBug]) -> Planted {
    let previous = PLANTED.with(|planted| {
        let previous = planted.get();
        planted.set(bugs.iter().fold(previous, |set, bug| set | bug.bit()));
        previous
    });
    Planted { previous }
}

/// Keeps bugs planted; dropping it restores what was planted before.
#[derive(Debug)]
#[must_use = "the bugs are unplanted when the guard is dropped"]
pub struct Planted {
    previous: u8,
}

impl Drop for Planted {
    fn drop(&mut self) {
        PLANTED.with(|planted| planted.set(self.previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bugs_are_planted_on_this_thread_only_until_the_guard_drops() {
        assert!(!is_planted(PlantedBug::AckBeforeCommit));
        {
            let _guard = plant(&[PlantedBug::AckBeforeCommit]);
            assert!(is_planted(PlantedBug::AckBeforeCommit));
            assert!(!is_planted(PlantedBug::SkipSenderSeqCheck));
            let elsewhere = std::thread::spawn(|| is_planted(PlantedBug::AckBeforeCommit))
                .join()
                .expect("thread");
            assert!(!elsewhere);
        }
        assert!(!is_planted(PlantedBug::AckBeforeCommit));
        for bug in PlantedBug::ALL {
            assert_eq!(PlantedBug::from_name(bug.name()), Some(bug));
        }
    }
}
