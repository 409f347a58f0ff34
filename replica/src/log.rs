//! The primary's log of groups not yet confirmed by its standby, and what to send a standby
//! that (re)connects: a sans-IO core, driven by the link in `primary.rs`.

use std::collections::VecDeque;
use std::sync::Arc;

use fdb_layers::CommittedGroup;

/// Where to start shipping to a standby that said what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Send the groups after this version (the standby's), as they come.
    Stream {
        /// The standby's version.
        after: u64,
    },
    /// The groups after the standby's version are not all here: copy the whole store.
    FullCopy,
}

/// What follows a version a standby has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// This group.
    Group(Arc<CommittedGroup>),
    /// Nothing yet: wait for the next group.
    Wait,
    /// The group that followed was dropped (the log outgrew its bound): copy the whole store.
    Gap,
}

/// Groups after the standby's confirmed version, oldest first, bounded in bytes.
#[derive(Debug)]
pub struct ShipLog {
    groups: VecDeque<Arc<CommittedGroup>>,
    bytes: usize,
    bytes_max: usize,
    /// The newest version of the store: of the newest group pushed, or the store's version
    /// when the log started.
    latest: u64,
    /// The newest version the standby confirmed durable.
    confirmed: u64,
    /// Groups dropped unconfirmed because the log was full.
    dropped: u64,
}

impl ShipLog {
    /// An empty log of a store at version `latest`, holding at most `bytes_max` bytes of groups
    /// (and always the newest group).
    pub fn new(latest: u64, bytes_max: usize) -> Self {
        ShipLog {
            groups: VecDeque::new(),
            bytes: 0,
            bytes_max,
            latest,
            confirmed: 0,
            dropped: 0,
        }
    }

    /// The newest version of the store.
    pub fn latest(&self) -> u64 {
        self.latest
    }

    /// The newest version the standby confirmed durable.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// Whether the standby confirmed everything the store has.
    pub fn caught_up(&self) -> bool {
        self.confirmed >= self.latest
    }

    /// Groups kept, and their bytes.
    pub fn len(&self) -> (usize, usize) {
        (self.groups.len(), self.bytes)
    }

    /// Whether no group is kept.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Groups dropped unconfirmed because the log was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Adds the newest durable group, dropping the oldest while the log is over its bound.
    pub fn push(&mut self, group: Arc<CommittedGroup>) {
        self.latest = self.latest.max(group.version);
        self.bytes += group.bytes();
        self.groups.push_back(group);
        while self.bytes > self.bytes_max && self.groups.len() > 1 {
            if let Some(oldest) = self.groups.pop_front() {
                self.bytes -= oldest.bytes();
                self.dropped += 1;
            }
        }
    }

    /// The store reached `version` with a group that was never pushed (its commit failed after
    /// it was written): the log has a gap there, so a standby below it gets a full copy
    /// ([`Next::Gap`]) instead of waiting for a group that never comes.
    pub fn skipped(&mut self, version: u64) {
        self.latest = self.latest.max(version);
    }

    /// The standby confirmed `version` durable: the groups up to it are no longer needed.
    pub fn confirm(&mut self, version: u64) {
        self.confirmed = self.confirmed.max(version);
        while let Some(oldest) = self.groups.front() {
            if oldest.version > self.confirmed {
                break;
            }
            self.bytes -= oldest.bytes();
            self.groups.pop_front();
        }
    }

    /// Where to start for a standby at `version` (`installing`: its copy is unfinished).
    pub fn plan(&self, version: u64, installing: bool) -> Plan {
        if installing {
            return Plan::FullCopy;
        }
        if version == self.latest
            || self
                .groups
                .iter()
                .any(|group| group.previous_version == version)
        {
            Plan::Stream { after: version }
        } else {
            Plan::FullCopy
        }
    }

    /// What follows `version` for a standby that has it.
    pub fn next_after(&self, version: u64) -> Next {
        let index = self
            .groups
            .partition_point(|group| group.version <= version);
        match self.groups.get(index) {
            Some(group) if group.previous_version == version => Next::Group(group.clone()),
            Some(_) => Next::Gap,
            None if self.latest <= version => Next::Wait,
            None => Next::Gap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fdb_layers::Mutation;

    fn group(previous_version: u64, version: u64, value_bytes: usize) -> Arc<CommittedGroup> {
        Arc::new(CommittedGroup {
            previous_version,
            version,
            mutations: vec![Mutation::Put {
                key: vec![1],
                value: vec![0; value_bytes],
            }],
        })
    }

    #[test]
    fn a_standby_gets_the_groups_after_its_version_in_order() {
        let mut log = ShipLog::new(10, 1_000);
        assert_eq!(log.plan(10, false), Plan::Stream { after: 10 });
        assert_eq!(log.next_after(10), Next::Wait);
        log.push(group(10, 12, 9));
        log.push(group(12, 15, 9));
        assert_eq!(log.next_after(10), Next::Group(group(10, 12, 9)));
        assert_eq!(log.next_after(12), Next::Group(group(12, 15, 9)));
        assert_eq!(log.next_after(15), Next::Wait);
        assert!(!log.caught_up());
        log.confirm(12);
        assert_eq!(log.len().0, 1);
        // A standby that restarted with what it confirmed goes on from there.
        assert_eq!(log.plan(12, false), Plan::Stream { after: 12 });
        log.confirm(15);
        assert!(log.caught_up());
        assert!(log.is_empty());
    }

    #[test]
    fn a_standby_the_log_cannot_bring_up_to_date_gets_a_full_copy() {
        let mut log = ShipLog::new(10, 100);
        log.push(group(10, 12, 60));
        log.push(group(12, 15, 60));
        assert_eq!(log.dropped(), 1, "over its bound, the oldest group goes");
        assert_eq!(log.next_after(10), Next::Gap);
        assert_eq!(log.plan(10, false), Plan::FullCopy);
        assert_eq!(log.plan(12, false), Plan::Stream { after: 12 });
        // A new standby, one ahead of the store, or one whose copy is unfinished.
        assert_eq!(log.plan(0, false), Plan::FullCopy);
        assert_eq!(log.plan(99, false), Plan::FullCopy);
        assert_eq!(log.plan(15, true), Plan::FullCopy);
        // After a copy read at 15 (or at a version whose group is not pushed yet), wait.
        assert_eq!(log.next_after(15), Next::Wait);
        assert_eq!(log.next_after(16), Next::Wait);
        // The newest group stays even when it alone is over the bound.
        log.push(group(15, 20, 500));
        assert_eq!(log.next_after(15), Next::Group(group(15, 20, 500)));
    }

    #[test]
    fn a_group_never_pushed_is_a_gap_that_a_full_copy_fills() {
        let mut log = ShipLog::new(10, 1_000);
        log.push(group(10, 12, 9));
        // The commit at 13 reached the store, failed, and was never pushed.
        log.skipped(13);
        assert_eq!(log.latest(), 13);
        assert_eq!(log.next_after(10), Next::Group(group(10, 12, 9)));
        assert_eq!(
            log.next_after(12),
            Next::Gap,
            "nothing follows 12 but the store is at 13"
        );
        assert_eq!(log.plan(12, false), Plan::FullCopy);
        assert!(!log.caught_up());
        // A later group follows 13, which a standby at 12 cannot reach.
        log.push(group(13, 15, 9));
        assert_eq!(log.next_after(12), Next::Gap);
        assert_eq!(log.plan(12, false), Plan::FullCopy);
        assert_eq!(log.plan(13, false), Plan::Stream { after: 13 });
        // Skipping never lowers the newest version.
        log.skipped(11);
        assert_eq!(log.latest(), 15);
    }
}
