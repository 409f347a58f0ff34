//! What a run found: counts, the fault log, violations; as a table or one JSON object.

use std::collections::BTreeMap;

use super::clients::Record;
use super::injector::FaultRecord;
use super::netns::Partitions;
use super::schedule::{Cut, Fault, FaultKind};
use super::{Config, seconds};
use crate::history::{
    Change, DocView, Invariant, MessageRef, TraceEvent, Violation, What, chat_of,
};
use crate::workload::Plan;

/// How long the phases took.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The fault phase, in ms.
    pub faults_ms: u64,
    /// When the fault phase ended, in ms since the trace's origin.
    pub faults_over_at_ms: u64,
    /// From the heal until the clients were done, in ms.
    pub healed_ms: u64,
}

/// The second devices users linked mid-run, and what I7 compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecondDevices {
    /// Users the plan has link a second device.
    pub planned: usize,
    /// Second devices that linked.
    pub linked: usize,
    /// Of those, the ones that linked before the fault phase ended.
    pub linked_under_faults: usize,
    /// Linked second devices that received everything they waited for.
    pub complete: usize,
    /// Chat documents of second devices compared with their first device's (I7).
    pub documents_compared: usize,
    /// Edits the devices of linked users made to their account's messages.
    pub edits: usize,
    /// Deletions for everyone they made.
    pub deletions: usize,
    /// Reactions they made, to either account's messages.
    pub reactions: usize,
    /// Of those changes, the ones whose chat's documents were read from both devices of the
    /// account, so I7 held the change to show in both.
    pub changes_checked: usize,
}

impl SecondDevices {
    /// Counts the changes of `trace` into `self`: by kind, and those whose chat's documents
    /// `docs` holds for both devices of the account (`planned` maps messages to recipients).
    fn count_changes(
        &mut self,
        planned: &BTreeMap<MessageRef, u32>,
        trace: &[TraceEvent],
        docs: &[DocView],
    ) {
        let read = |client: u32, peer: u32, device: u32| {
            docs.iter()
                .any(|doc| doc.client == client && doc.peer == peer && doc.device == device)
        };
        for event in trace {
            let What::Changed {
                client,
                message,
                change,
                ..
            } = &event.what
            else {
                continue;
            };
            let count = match change {
                Change::Edit => &mut self.edits,
                Change::Delete => &mut self.deletions,
                Change::React(_) => &mut self.reactions,
            };
            *count += 1;
            if chat_of(planned, *client, *message)
                .is_some_and(|peer| read(*client, peer, 0) && read(*client, peer, 1))
            {
                self.changes_checked += 1;
            }
        }
    }
}

/// The violations sorted into the report's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// I1.
    pub lost: usize,
    /// I4.
    pub duplicated: usize,
    /// I2 and I3.
    pub out_of_order: usize,
    /// I8.
    pub undecryptable: usize,
    /// I7: chats whose documents differ between the devices of an account.
    pub diverged: usize,
    /// Every other invariant.
    pub other: usize,
}

impl Counts {
    /// Sorts `violations` into the counts.
    pub fn of(violations: &[Violation]) -> Self {
        let mut counts = Self::default();
        for violation in violations {
            // The checker grows new invariants; whatever this build does not name is "other".
            #[allow(unreachable_patterns)]
            let count = match violation.invariant {
                Invariant::NoLoss => &mut counts.lost,
                Invariant::Idempotence => &mut counts.duplicated,
                Invariant::Order | Invariant::SenderFifo => &mut counts.out_of_order,
                Invariant::Decryptable => &mut counts.undecryptable,
                Invariant::Convergence => &mut counts.diverged,
                _ => &mut counts.other,
            };
            *count += 1;
        }
        counts
    }

    /// All of them.
    pub fn total(&self) -> usize {
        self.lost
            + self.duplicated
            + self.out_of_order
            + self.undecryptable
            + self.diverged
            + self.other
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// The run's seed.
    pub seed: u64,
    regions: u32,
    clients: usize,
    messages_per_client: u32,
    partitions: Partitions,
    planned: usize,
    sent: usize,
    queued: usize,
    acknowledged: usize,
    received: usize,
    given_up: usize,
    clients_complete: usize,
    second_devices: SecondDevices,
    faults: Vec<FaultRecord>,
    counts: Counts,
    violations: Vec<Violation>,
    unexpected_exits: BTreeMap<String, u32>,
    client_errors: Vec<String>,
    client_errors_total: usize,
    problems: Vec<String>,
    timing: Timing,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: &Config,
        plan: &Plan,
        record: &Record,
        docs: &[DocView],
        violations: Vec<Violation>,
        faults: Vec<FaultRecord>,
        timing: Timing,
        unexpected_exits: BTreeMap<String, u32>,
        problems: Vec<String>,
    ) -> Self {
        let count = |wanted: fn(&What) -> bool| {
            record
                .trace
                .iter()
                .filter(|event| wanted(&event.what))
                .count()
        };
        let mut second_devices = SecondDevices {
            planned: plan.clients.iter().filter(|client| client.linked).count(),
            linked: record.progress.linked.len(),
            linked_under_faults: record
                .trace
                .iter()
                .filter(|event| {
                    matches!(event.what, What::Linked { .. })
                        && event.at_ms <= timing.faults_over_at_ms
                })
                .count(),
            complete: record
                .second_finished
                .values()
                .filter(|&&complete| complete)
                .count(),
            documents_compared: docs.iter().filter(|doc| doc.device > 0).count(),
            ..SecondDevices::default()
        };
        second_devices.count_changes(&plan.recipients(), &record.trace, docs);
        Self {
            seed: config.seed,
            regions: config.regions,
            clients: plan.clients.len(),
            messages_per_client: config.messages,
            partitions: config.partitions.clone(),
            planned: plan.recipients().len(),
            sent: count(|what| matches!(what, What::Send { .. })),
            queued: count(|what| matches!(what, What::Queued { .. })),
            acknowledged: count(|what| matches!(what, What::Acked { .. })),
            received: count(|what| matches!(what, What::Received { .. })),
            given_up: count(|what| matches!(what, What::Failed { .. })),
            clients_complete: record
                .finished
                .values()
                .filter(|&&complete| complete)
                .count(),
            second_devices,
            faults,
            counts: Counts::of(&violations),
            violations,
            unexpected_exits,
            client_errors: record.errors.clone(),
            client_errors_total: record.errors_total,
            problems,
            timing,
        }
    }

    /// Whether the run is clean: no violation, no crash, no client error, every client and
    /// every planned second device linked and done.
    pub fn ok(&self) -> bool {
        self.counts.total() == 0
            && self.unexpected_exits.is_empty()
            && self.client_errors_total == 0
            && self.problems.is_empty()
            && self.clients_complete == self.clients
            && self.second_devices.linked == self.second_devices.planned
            && self.second_devices.complete == self.second_devices.linked
    }

    /// How many faults of `kind` hit a process of `role` (`region`, `edge`).
    fn faults_of(&self, kind: FaultKind, role: &str) -> usize {
        self.faults
            .iter()
            .filter(|record| match record.fault {
                Fault::Kill(target) | Fault::Pause { target, .. } => {
                    record.fault.kind() == kind && target.role() == role
                }
                Fault::Partition { .. } => false,
            })
            .count()
    }

    /// How many partitions were one way (`true`) or both ways.
    fn partitions_of(&self, one_way: bool) -> usize {
        self.faults
            .iter()
            .filter(|record| match record.fault {
                Fault::Partition { cut, .. } => (cut != Cut::BothWays) == one_way,
                _ => false,
            })
            .count()
    }

    /// The report as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        let fault_log: Vec<serde_json::Value> = self
            .faults
            .iter()
            .map(|record| {
                serde_json::json!({
                    "at_ms": record.at_ms, "kind": record.fault.kind().name(),
                    "fault": record.fault.to_string(), "pids": record.pids,
                    "lasted_ms": record.lasted_ms,
                })
            })
            .collect();
        let violations: Vec<serde_json::Value> = self
            .violations
            .iter()
            .map(|violation| {
                serde_json::json!({"invariant": violation.invariant.to_string(), "detail": violation.detail})
            })
            .collect();
        serde_json::json!({
            "event": "chaos_report",
            "ok": self.ok(),
            "seed": self.seed,
            "regions": self.regions,
            "clients": self.clients,
            "messages_per_client": self.messages_per_client,
            "partitions": self.partitions.name(),
            "partitions_how": self.partitions.describe(),
            "messages": {
                "planned": self.planned, "sent": self.sent, "queued": self.queued,
                "acknowledged": self.acknowledged, "received": self.received,
                "given_up": self.given_up,
            },
            "faults": {
                "total": self.faults.len(),
                "kill": {"region": self.faults_of(FaultKind::Kill, "region"), "edge": self.faults_of(FaultKind::Kill, "edge")},
                "pause": {"region": self.faults_of(FaultKind::Pause, "region"), "edge": self.faults_of(FaultKind::Pause, "edge")},
                "partition": {"both_ways": self.partitions_of(false), "one_way": self.partitions_of(true)},
            },
            "fault_log": fault_log,
            "counts": {
                "lost": self.counts.lost, "duplicated": self.counts.duplicated,
                "out_of_order": self.counts.out_of_order, "undecryptable": self.counts.undecryptable,
                "diverged": self.counts.diverged, "other": self.counts.other,
            },
            "second_devices": {
                "planned": self.second_devices.planned, "linked": self.second_devices.linked,
                "linked_under_faults": self.second_devices.linked_under_faults,
                "complete": self.second_devices.complete,
                "documents_compared": self.second_devices.documents_compared,
                "edits": self.second_devices.edits,
                "deletions": self.second_devices.deletions,
                "reactions": self.second_devices.reactions,
                "changes_checked": self.second_devices.changes_checked,
            },
            "violations": violations,
            "unexpected_exits": self.unexpected_exits,
            "client_errors": self.client_errors,
            "client_errors_total": self.client_errors_total,
            "clients_complete": self.clients_complete,
            "problems": self.problems,
            "faults_ms": self.timing.faults_ms,
            "healed_ms": self.timing.healed_ms,
        })
    }

    /// The report as tables for people.
    pub fn table(&self) -> String {
        let mut out = format!(
            "relayd chaos, seed {}: {} regions, {} clients, {} messages each; partitions: {}\n\n",
            self.seed,
            self.regions,
            self.clients,
            self.messages_per_client,
            self.partitions.describe()
        );
        out.push_str("| messages | count |\n|---|--:|\n");
        for (name, value) in [
            ("planned", self.planned),
            ("sent (asked to send)", self.sent),
            ("queued in an outbox", self.queued),
            ("acknowledged (✓)", self.acknowledged),
            ("received", self.received),
            ("given up", self.given_up),
        ] {
            out.push_str(&format!("| {name} | {value} |\n"));
        }
        out.push_str(&format!(
            "\n| faults ({} in {:.1} s) | region | edge |\n|---|--:|--:|\n",
            self.faults.len(),
            seconds(self.timing.faults_ms)
        ));
        for kind in [FaultKind::Kill, FaultKind::Pause] {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                kind.name(),
                self.faults_of(kind, "region"),
                self.faults_of(kind, "edge")
            ));
        }
        out.push_str(&format!(
            "| partition (both ways / one way) | {} | {} |\n",
            self.partitions_of(false),
            self.partitions_of(true)
        ));
        out.push_str("\n| check | count |\n|---|--:|\n");
        for (name, value) in [
            ("lost", self.counts.lost),
            ("duplicated", self.counts.duplicated),
            ("out of order", self.counts.out_of_order),
            ("undecryptable", self.counts.undecryptable),
            ("diverged documents (I7)", self.counts.diverged),
            ("other", self.counts.other),
        ] {
            out.push_str(&format!("| {name} | {value} |\n"));
        }
        out.push_str(&format!(
            "\n| second devices (linked mid-run) | count |\n|---|--:|\n\
             | planned | {} |\n| second devices linked | {} |\n| linked while faults ran | {} |\n\
             | had everything | {} |\n| I7 documents compared | {} |\n\
             | edits / deletions for everyone / reactions | {} / {} / {} |\n\
             | changes I7 checked on both devices | {} |\n",
            self.second_devices.planned,
            self.second_devices.linked,
            self.second_devices.linked_under_faults,
            self.second_devices.complete,
            self.second_devices.documents_compared,
            self.second_devices.edits,
            self.second_devices.deletions,
            self.second_devices.reactions,
            self.second_devices.changes_checked
        ));
        out.push_str(&format!(
            "\nhealing: {} of {} clients had everything after {:.1} s\n",
            self.clients_complete,
            self.clients,
            seconds(self.timing.healed_ms)
        ));
        for violation in &self.violations {
            out.push_str(&format!("violation: {violation}\n"));
        }
        for (name, exits) in &self.unexpected_exits {
            out.push_str(&format!(
                "crash: {name} exited {exits} time(s) without being killed\n"
            ));
        }
        for error in &self.client_errors {
            out.push_str(&format!("client error: {error}\n"));
        }
        if self.client_errors_total > self.client_errors.len() {
            out.push_str(&format!(
                "client errors: {} more\n",
                self.client_errors_total - self.client_errors.len()
            ));
        }
        for problem in &self.problems {
            out.push_str(&format!("problem: {problem}\n"));
        }
        out.push_str(if self.ok() {
            "result: PASS\n"
        } else {
            "result: FAIL\n"
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_sort_into_the_reports_counts() {
        let violation = |invariant| Violation {
            invariant,
            detail: String::new(),
        };
        let counts = Counts::of(&[
            violation(Invariant::NoLoss),
            violation(Invariant::NoLoss),
            violation(Invariant::Idempotence),
            violation(Invariant::Order),
            violation(Invariant::SenderFifo),
            violation(Invariant::Decryptable),
            violation(Invariant::Convergence),
        ]);
        assert_eq!(
            counts,
            Counts {
                lost: 2,
                duplicated: 1,
                out_of_order: 2,
                undecryptable: 1,
                diverged: 1,
                other: 0,
            }
        );
        assert_eq!(counts.total(), 7);
    }

    #[test]
    fn changes_count_by_kind_and_as_checked_when_both_devices_documents_were_read() {
        // Client 0 sent its message 1 to client 1, client 2 its message 1 to client 0.
        let own = MessageRef {
            sender: 0,
            number: 1,
        };
        let theirs = MessageRef {
            sender: 2,
            number: 1,
        };
        let planned = BTreeMap::from([(own, 1), (theirs, 0)]);
        let changed = |device, message, change| TraceEvent {
            at_ms: 0,
            what: What::Changed {
                client: 0,
                device,
                message,
                change,
            },
        };
        let trace = [
            changed(0, own, Change::Edit),
            changed(1, own, Change::React("👍".into())),
            changed(1, theirs, Change::React("😂".into())),
            changed(0, own, Change::Delete),
        ];
        let doc = |device, peer| DocView {
            client: 0,
            device,
            peer,
            entries: Vec::new(),
            read_marks: Vec::new(),
        };
        // Both devices' documents of the chat with client 1; only the first's with client 2.
        let docs = [doc(0, 1), doc(1, 1), doc(0, 2)];
        let mut second = SecondDevices::default();
        second.count_changes(&planned, &trace, &docs);
        assert_eq!(
            (second.edits, second.deletions, second.reactions),
            (1, 1, 2)
        );
        assert_eq!(second.changes_checked, 3);
    }
}
