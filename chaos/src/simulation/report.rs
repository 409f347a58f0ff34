//! What a finished simulation recorded ([`Report`]), the invariants it checks over that, and
//! the faults a run really injected.

use super::*;

/// What a finished simulation recorded.
#[derive(Debug, Clone)]
pub struct Report {
    /// The run's seed.
    pub seed: u64,
    /// Simulated time the run took.
    pub elapsed: Duration,
    /// The trace, in simulated-time order.
    pub trace: Vec<TraceEvent>,
    /// Every client's final view of its chats.
    pub views: Vec<ChatView>,
    /// Every device's final relay-sync documents of its chats.
    pub docs: Vec<DocView>,
    /// Every planned message with its recipient.
    pub planned: BTreeMap<MessageRef, u32>,
    /// The run's groups, as planned.
    pub groups: Vec<GroupPlan>,
    /// The broken invariants (empty when the run is correct).
    pub violations: Vec<Violation>,
    /// The run's topology and workload.
    pub shape: WorkloadShape,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// When the safety phase ended, in simulated ms.
    pub heal_ms: u64,
    /// The longest an acknowledged message took to arrive after the heal (or its
    /// acknowledgement, if later), in simulated ms.
    pub slowest_delivery_ms: u64,
    /// What the network carried: equal fingerprints mean the same datagrams (in count, size,
    /// endpoints and simulated send time) in the same order.
    pub packets: PacketFingerprint,
    /// Commits the regions' disks failed (store faults with disk failures), summed.
    pub store_commits_failed: u64,
    /// (Runs with standbys) each region's standby's copy at the end: its version.
    pub standby_versions: BTreeMap<u32, u64>,
    /// (Runs with failovers) the regions whose standby took over, with the epoch it raised.
    pub promoted: BTreeMap<u32, u64>,
    /// (Runs with standbys) what the regions' shippers did, summed over every start of every
    /// region: sessions with a standby, full copies sent, commits answered without the
    /// standby's confirmation (refused).
    pub shipping: ShippingFigures,
}

/// What the regions' shippers did in a run with standbys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShippingFigures {
    /// Sessions with a standby that reached its state.
    pub sessions: u64,
    /// Full copies of a store sent.
    pub full_copies: u64,
    /// Groups sent.
    pub groups_sent: u64,
    /// Commits refused because the standby did not confirm them in time.
    pub unconfirmed_commits: u64,
}

impl Report {
    /// Messages acknowledged as sent.
    pub fn acknowledged(&self) -> usize {
        self.count(|what| matches!(what, What::Acked { .. }))
    }

    /// Messages received by their recipient's first device (a linked second device receives
    /// them too: see [`Report::received_by_second_devices`]).
    pub fn received(&self) -> usize {
        self.count(|what| matches!(what, What::Received { device: 0, .. }))
    }

    /// Messages received (by their recipient's first device) that their sender never heard
    /// were sent: a linked second device sent them and was removed before their ✓ reached it.
    /// A removed device's outbox goes with it, so liveness excuses these, and of a run's
    /// messages the acknowledged ones and these are all that can arrive.
    pub fn received_unacknowledged_from_removed(&self) -> usize {
        let mut removed = BTreeSet::new();
        let mut acked = BTreeSet::new();
        let mut from_second_devices = BTreeSet::new();
        for event in &self.trace {
            match event.what {
                What::Removed { client } => {
                    removed.insert(client);
                }
                What::Acked { message } => {
                    acked.insert(message);
                }
                What::Send {
                    message, device: 1, ..
                } => {
                    from_second_devices.insert(message);
                }
                _ => {}
            }
        }
        self.count(|what| {
            matches!(what, What::Received { device: 0, message, .. }
                if !acked.contains(message)
                    && removed.contains(&message.sender)
                    && from_second_devices.contains(message))
        })
    }

    /// Messages received by linked second devices.
    pub fn received_by_second_devices(&self) -> usize {
        self.count(|what| matches!(what, What::Received { device: 1, .. }))
    }

    /// Group messages planned.
    pub fn group_planned(&self) -> usize {
        self.groups.iter().map(|group| group.sends.len()).sum()
    }

    /// Group messages acknowledged as sent.
    pub fn group_acknowledged(&self) -> usize {
        self.count(|what| matches!(what, What::GroupAcked { .. }))
    }

    /// Group messages received and decrypted, counted per receiving device.
    pub fn group_deliveries(&self) -> usize {
        self.count(|what| matches!(what, What::GroupReceived { .. }))
    }

    /// Group membership changes the directory writer acknowledged (creations included).
    pub fn group_changes(&self) -> usize {
        self.count(|what| matches!(what, What::GroupChanged { .. }))
    }

    /// Members whose removal from a group was acknowledged: the removal check holds each to
    /// every group message sent after.
    pub fn group_removals(&self) -> usize {
        self.count(|what| {
            matches!(
                what,
                What::GroupChanged {
                    change: history::GroupChange::Remove(_),
                    ..
                }
            )
        })
    }

    /// (Member removed from a group, group message whose send started after the removal was
    /// acknowledged) pairs: each is a case the removal check held, that the member must not
    /// decrypt the message.
    pub fn group_removal_checks(&self) -> usize {
        let mut removed: Vec<(u32, usize)> = Vec::new();
        let mut checks = 0;
        for (index, event) in self.trace.iter().enumerate() {
            match &event.what {
                What::GroupChanged {
                    group,
                    change: history::GroupChange::Remove(_),
                    ..
                } => removed.push((*group, index)),
                What::GroupSend { message, .. } => {
                    checks += removed
                        .iter()
                        .filter(|&&(group, at)| group == message.group && at < index)
                        .count();
                }
                _ => {}
            }
        }
        checks
    }

    /// Group texts of members removed while they were on their way that never settled at their
    /// sender ([`history::stuck_group_texts`]).
    pub fn group_stuck(&self) -> usize {
        history::stuck_group_texts(&self.trace)
    }

    /// Clients that finished before the time limit.
    pub fn complete_clients(&self) -> usize {
        self.count(|what| matches!(what, What::Finished { complete: true, .. }))
    }

    fn count(&self, matches: impl Fn(&What) -> bool) -> usize {
        self.trace
            .iter()
            .filter(|event| matches(&event.what))
            .count()
    }

    /// The trace as text, one event per line.
    pub fn trace_text(&self) -> String {
        self.trace
            .iter()
            .map(|event| format!("{event}\n"))
            .collect()
    }

    /// Panics, printing the violations, the trace's tail and `reproduce with seed=<n>`, unless
    /// every invariant held.
    pub fn assert_invariants(&self) {
        if self.violations.is_empty() {
            return;
        }
        let tail: String = self
            .trace
            .iter()
            .rev()
            .take(40)
            .rev()
            .map(|event| format!("  {event}\n"))
            .collect();
        let violations: String = self
            .violations
            .iter()
            .map(|violation| format!("  {violation}\n"))
            .collect();
        let message = format!(
            "{} invariant violation(s) in the simulation:\n{violations}last events:\n{tail}reproduce with seed={}",
            self.violations.len(),
            self.seed
        );
        eprintln!("{message}");
        panic!("{message}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={}: {} planned, {} acknowledged, {} received, {} violation(s) in {:.1} s simulated",
            self.seed,
            self.planned.len(),
            self.acknowledged(),
            self.received(),
            self.violations.len(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// The faults a run really injected, by kind: those that started before the clients finished
/// (a plan may schedule more), and the continuous kinds (loss, duplication, clock skew, store
/// faults) as planned.
pub(super) fn injected(plan: &FaultPlan, trace: &[TraceEvent]) -> BTreeMap<FaultKind, u64> {
    let mut counts = BTreeMap::new();
    let mut swizzled = false;
    for event in trace {
        let kind = match &event.what {
            What::RegionCrashed { .. } => FaultKind::RegionCrash,
            What::ClientRestarted { .. } => FaultKind::ClientRestart,
            // One swizzle-clog clogs several hosts in turn: count it once.
            What::FaultStarted {
                kind: FaultKind::SwizzleClog,
                ..
            } if swizzled => continue,
            What::FaultStarted { kind, .. } => {
                swizzled |= *kind == FaultKind::SwizzleClog;
                *kind
            }
            _ => continue,
        };
        *counts.entry(kind).or_default() += 1;
    }
    for kind in [
        FaultKind::PacketLoss,
        FaultKind::Duplication,
        FaultKind::ClockSkew,
        FaultKind::StoreFaults,
    ] {
        if let Some(&count) = plan.counts.get(&kind) {
            counts.insert(kind, count);
        }
    }
    counts
}
