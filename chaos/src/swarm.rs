//! Sweeps over many seeds: each seed is one [`Simulation::swarm`] run (its own topology,
//! workload, fault kinds and faults), run on a few threads at once, summed up in a
//! [`SwarmSummary`]: runs, simulated time, faults injected by kind, and every violation with
//! the seed that reproduces it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use relay_planted::PlantedBug;

use crate::faults::FaultKind;
use crate::history::{Change, Invariant, LIVENESS_BOUND_MS, Violation, What};
use crate::simulation::{Report, Simulation, SimulationError};

/// A sweep to run.
#[derive(Debug, Clone)]
pub struct Swarm {
    /// The first seed.
    pub first_seed: u64,
    /// How many seeds, from the first.
    pub seeds: u64,
    /// Threads running simulations at once.
    pub threads: usize,
    /// Bugs to plant in every run.
    pub planted: Vec<PlantedBug>,
    /// Stop at the first run that breaks an invariant (a search for a planted bug).
    pub stop_at_first_violation: bool,
    /// With [`Swarm::stop_at_first_violation`], only a violation of one of these stops the
    /// sweep (empty: any): a planted bug can break other invariants first, through the runs it
    /// derails, and a search for the one it must break goes on past those.
    pub stop_on: Vec<Invariant>,
    /// Stop starting new seeds once this much wall time has passed and at least
    /// [`Swarm::seeds_min`] have started: a sweep sized for a busy CI machine. The seeds run are
    /// still the first ones in order, so the set is a prefix of the sweep and each repeats.
    pub time_budget: Option<Duration>,
    /// With a time budget, the seeds that run however long they take.
    pub seeds_min: u64,
    /// Inject the home moves each seed draws (see `FaultKind::HomeMove`; on by default).
    pub home_moves: bool,
    /// Give every region a standby and crash the standbys each seed draws (see
    /// [`Simulation::with_standbys`]; off by default).
    pub standbys: bool,
    /// Give every region a standby and fail over the region each seed draws (see
    /// [`Simulation::with_failovers`]; off by default; takes the place of `standbys`).
    pub failovers: bool,
}

/// One run of a sweep that broke an invariant or could not finish.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed that reproduces it.
    pub seed: u64,
    /// Its violations (empty when the run itself failed).
    pub violations: Vec<Violation>,
    /// Why the run could not finish, if it could not.
    pub error: Option<String>,
    /// What the run recorded until it could not finish (empty otherwise).
    pub trace: String,
}

/// What a sweep found.
#[derive(Debug, Clone, Default)]
pub struct SwarmSummary {
    /// Runs finished.
    pub runs: u64,
    /// Simulated time, summed over the runs.
    pub simulated: Duration,
    /// Faults injected, by kind, summed over the runs.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Messages the workloads planned, acknowledged and received.
    pub messages: (u64, u64, u64),
    /// Of those received, the ones a second device sent and was removed before it heard they
    /// were sent ([`Report::received_unacknowledged_from_removed`]): received is acknowledged
    /// plus these.
    pub received_unacknowledged_from_removed: u64,
    /// Second devices linked, changes the devices of linked clients made (edits, deletions for
    /// everyone, reactions), and documents of second devices I7 compared with their first
    /// devices'.
    pub linked: (u64, [u64; 3], u64),
    /// Linked clients whose devices never both said their documents were in sync (the run
    /// went on after waiting; I7 compared the documents as they were).
    pub sync_unconfirmed: u64,
    /// Second devices removed while messages were on their way.
    pub removed: u64,
    /// The runs' groups: see [`GroupFigures`].
    pub groups: GroupFigures,
    /// The slowest delivery after a heal seen in any run, in simulated ms.
    pub slowest_delivery_ms: u64,
    /// Commits the regions' disks failed, summed over the runs.
    pub store_commits_failed: u64,
    /// Runs that broke an invariant or failed, by seed.
    pub failures: Vec<Failure>,
    /// Each finished run's seed, simulated time (ms) and network fingerprint digest, by seed:
    /// two sweeps of the same seeds must agree on every one.
    pub fingerprints: Vec<(u64, u64, u64)>,
}

/// What a sweep's groups did, summed over its runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupFigures {
    /// Runs that had groups.
    pub runs: u64,
    /// Groups planned.
    pub groups: u64,
    /// Group messages planned, acknowledged, and received (counted per receiving device).
    pub messages: (u64, u64, u64),
    /// Membership changes the directory writer acknowledged (creations included).
    pub changes: u64,
    /// Members removed from a group while texts were on their way.
    pub removals: u64,
    /// (removed member, group message sent after its removal) pairs the removal check held.
    pub removal_checks: u64,
    /// Texts of members removed meanwhile that never settled at their sender (an open edge
    /// bug; liveness excuses them).
    pub stuck: u64,
}

impl SwarmSummary {
    /// The summary as a table for people: runs, simulated and real time, messages, the slowest
    /// delivery after a heal, faults by kind, violations by invariant, and how to rerun each
    /// failing seed (with the planted bug, if any).
    pub fn table(&self, real: Duration, plant: Option<PlantedBug>) -> String {
        let summary = self;
        let mut out = String::new();
        let mut line =
            |label: &str, value: String| out.push_str(&format!("  {label:<36} {value}\n"));
        line("runs", summary.runs.to_string());
        line("simulated time", hours(summary.simulated));
        line("real time", format!("{:.1} s", real.as_secs_f64()));
        let (planned, acked, received) = summary.messages;
        line(
            "messages planned / acked / received",
            format!("{planned} / {acked} / {received}"),
        );
        line(
            "received, unacked: sender removed",
            summary.received_unacknowledged_from_removed.to_string(),
        );
        let (linked, [edits, deletions, reactions], compared) = summary.linked;
        line(
            "second devices / removed / docs (I7)",
            format!("{linked} / {} / {compared}", summary.removed),
        );
        line(
            "edits / deletions / reactions",
            format!("{edits} / {deletions} / {reactions}"),
        );
        let groups = summary.groups;
        line(
            "runs with groups / groups",
            format!("{} / {}", groups.runs, groups.groups),
        );
        line(
            "group msgs planned / acked / got",
            format!(
                "{} / {} / {} (deliveries, per device)",
                groups.messages.0, groups.messages.1, groups.messages.2
            ),
        );
        line(
            "group changes / removals / checks",
            format!(
                "{} / {} / {} (removed member × later text)",
                groups.changes, groups.removals, groups.removal_checks
            ),
        );
        line(
            "removed members' texts never settled",
            groups.stuck.to_string(),
        );
        line(
            "accounts never confirmed in sync",
            summary.sync_unconfirmed.to_string(),
        );
        line(
            "slowest delivery after a heal",
            format!(
                "{:.1} s (bound {} s)",
                summary.slowest_delivery_ms as f64 / 1000.0,
                LIVENESS_BOUND_MS / 1000
            ),
        );
        out.push_str("  faults injected\n");
        for (kind, count) in &summary.faults {
            out.push_str(&format!("    {:<34} {count}\n", kind.name()));
        }
        out.push_str(&format!(
            "    {:<34} {}\n",
            "store commits failed (disk)", summary.store_commits_failed
        ));
        let violations = summary.violations();
        let total: u64 = violations.values().sum();
        out.push_str(&format!("  {:<36} {total}\n", "violations"));
        for (invariant, count) in &violations {
            out.push_str(&format!("    {:<34} {count}\n", invariant.to_string()));
        }
        for failure in &summary.failures {
            if let Some(error) = &failure.error {
                out.push_str(&format!("  seed={}: {error}\n", failure.seed));
            }
            for violation in failure.violations.iter().take(10) {
                out.push_str(&format!("  seed={}: {violation}\n", failure.seed));
            }
            let planted = plant
                .map(|bug| format!(" --plant {bug}"))
                .unwrap_or_default();
            out.push_str(&format!(
            "  reproduce with seed={0}: relayd sim --first-seed {0} --seeds 1 --trace{planted}\n",
            failure.seed
        ));
        }
        out
    }

    /// The summary as one JSON object (per-seed fingerprints included, so two sweeps can be
    /// compared seed by seed).
    pub fn json(
        &self,
        first_seed: u64,
        real: Duration,
        plant: Option<PlantedBug>,
    ) -> serde_json::Value {
        let summary = self;
        let faults: serde_json::Map<String, serde_json::Value> = summary
            .faults
            .iter()
            .map(|(kind, count)| (kind.name().to_owned(), (*count).into()))
            .collect();
        let violations: serde_json::Map<String, serde_json::Value> = summary
            .violations()
            .iter()
            .map(|(invariant, count)| (invariant.to_string(), (*count).into()))
            .collect();
        let failures: Vec<serde_json::Value> = summary
        .failures
        .iter()
        .map(|failure| {
            serde_json::json!({
                "seed": failure.seed,
                "error": failure.error,
                "violations": failure.violations.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
        serde_json::json!({
            "first_seed": first_seed,
            "runs": summary.runs,
            "planted": plant.map(|bug| bug.name()),
            "simulated_s": summary.simulated.as_secs_f64(),
            "real_s": real.as_secs_f64(),
            "messages": {
                "planned": summary.messages.0,
                "acknowledged": summary.messages.1,
                "received": summary.messages.2,
                "received_unacknowledged_from_removed":
                    summary.received_unacknowledged_from_removed,
            },
            "linked": {
                "second_devices": summary.linked.0,
                "edits": summary.linked.1[0],
                "deletions": summary.linked.1[1],
                "reactions": summary.linked.1[2],
                "documents_compared": summary.linked.2,
                "sync_unconfirmed": summary.sync_unconfirmed,
                "removed": summary.removed,
            },
            "groups": {
                "runs": summary.groups.runs,
                "groups": summary.groups.groups,
                "messages_planned": summary.groups.messages.0,
                "messages_acknowledged": summary.groups.messages.1,
                "deliveries": summary.groups.messages.2,
                "membership_changes": summary.groups.changes,
                "removals": summary.groups.removals,
                "removal_checks": summary.groups.removal_checks,
                "stuck_texts_of_removed_members": summary.groups.stuck,
            },
            "slowest_delivery_ms": summary.slowest_delivery_ms,
            "faults": faults,
            "store_commits_failed": summary.store_commits_failed,
            "violations": violations,
            "failures": failures,
            // Per seed: [seed, simulated ms, digest of the datagrams]; equal sweeps agree on each.
            "fingerprints": summary.fingerprints,
        })
    }

    /// Violations, by invariant.
    pub fn violations(&self) -> BTreeMap<Invariant, u64> {
        let mut counts = BTreeMap::new();
        for failure in &self.failures {
            for violation in &failure.violations {
                *counts.entry(violation.invariant).or_default() += 1;
            }
        }
        counts
    }

    /// Whether every run finished and held every invariant.
    pub fn is_clean(&self) -> bool {
        self.failures.is_empty()
    }

    fn add(&mut self, report: &Report) {
        self.runs += 1;
        self.simulated += report.elapsed;
        for (&kind, &count) in &report.faults {
            *self.faults.entry(kind).or_default() += count;
        }
        self.messages.0 += report.planned.len() as u64;
        self.messages.1 += report.acknowledged() as u64;
        self.messages.2 += report.received() as u64;
        self.received_unacknowledged_from_removed +=
            report.received_unacknowledged_from_removed() as u64;
        for event in &report.trace {
            match &event.what {
                What::Linked { .. } => self.linked.0 += 1,
                What::SyncUnconfirmed { .. } => self.sync_unconfirmed += 1,
                What::Removed { .. } => self.removed += 1,
                What::Changed { change, .. } => {
                    let kind = match change {
                        Change::Edit => 0,
                        Change::Delete => 1,
                        Change::React(_) => 2,
                    };
                    self.linked.1[kind] += 1;
                }
                _ => {}
            }
        }
        if !report.groups.is_empty() {
            let groups = &mut self.groups;
            groups.runs += 1;
            groups.groups += report.groups.len() as u64;
            groups.messages.0 += report.group_planned() as u64;
            groups.messages.1 += report.group_acknowledged() as u64;
            groups.messages.2 += report.group_deliveries() as u64;
            groups.changes += report.group_changes() as u64;
            groups.removals += report.group_removals() as u64;
            groups.removal_checks += report.group_removal_checks() as u64;
            groups.stuck += report.group_stuck() as u64;
        }
        self.linked.2 += report.docs.iter().filter(|doc| doc.device > 0).count() as u64;
        self.slowest_delivery_ms = self.slowest_delivery_ms.max(report.slowest_delivery_ms);
        self.store_commits_failed += report.store_commits_failed;
        self.fingerprints.push((
            report.seed,
            u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
            report.packets.digest,
        ));
        if !report.violations.is_empty() {
            self.failures.push(Failure {
                seed: report.seed,
                violations: report.violations.clone(),
                error: None,
                trace: String::new(),
            });
        }
    }
}

impl Swarm {
    /// `seeds` seeds from `first_seed`, on as many threads as the machine has cores.
    pub fn new(first_seed: u64, seeds: u64) -> Self {
        Self {
            first_seed,
            seeds,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            planted: Vec::new(),
            stop_at_first_violation: false,
            stop_on: Vec::new(),
            home_moves: true,
            standbys: false,
            failovers: false,
            time_budget: None,
            seeds_min: 0,
        }
    }

    /// This sweep, stopping early once `budget` of wall time has passed, but never before
    /// `seeds_min` seeds have started.
    pub fn within(mut self, budget: Duration, seeds_min: u64) -> Self {
        self.time_budget = Some(budget);
        self.seeds_min = seeds_min;
        self
    }

    /// Runs the sweep; `progress` hears about every finished run (in completion order).
    pub fn run(&self, progress: impl Fn(&Report) + Sync) -> SwarmSummary {
        let next = AtomicU64::new(self.first_seed);
        let end = self.first_seed.saturating_add(self.seeds);
        let summary = Mutex::new(SwarmSummary::default());
        let stop = std::sync::atomic::AtomicBool::new(false);
        let started = std::time::Instant::now();
        let floor = self.first_seed.saturating_add(self.seeds_min);
        std::thread::scope(|scope| {
            for _ in 0..self.threads.max(1) {
                scope.spawn(|| {
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let seed = next.fetch_add(1, Ordering::Relaxed);
                        if seed >= end {
                            return;
                        }
                        let over_budget = self
                            .time_budget
                            .is_some_and(|budget| started.elapsed() >= budget);
                        if over_budget && seed >= floor {
                            // Later seeds are not started by any thread either.
                            next.store(end, Ordering::Relaxed);
                            return;
                        }
                        let mut simulation = self
                            .planted
                            .iter()
                            .fold(Simulation::swarm(seed), |sim, &bug| sim.plant(bug));
                        if self.failovers {
                            simulation = simulation.with_failovers();
                        } else if self.standbys {
                            simulation = simulation.with_standbys();
                        }
                        if self.home_moves {
                            simulation = simulation.with_home_moves();
                        }
                        let outcome = simulation.run();
                        let mut summary = summary.lock().unwrap_or_else(|p| p.into_inner());
                        match outcome {
                            Ok(report) => {
                                summary.add(&report);
                                progress(&report);
                                let stops = report.violations.iter().any(|violation| {
                                    self.stop_on.is_empty()
                                        || self.stop_on.contains(&violation.invariant)
                                });
                                if stops && self.stop_at_first_violation {
                                    stop.store(true, Ordering::Relaxed);
                                }
                            }
                            Err(error) => summary.failures.push(Failure {
                                seed,
                                violations: Vec::new(),
                                trace: match &error {
                                    SimulationError::Run { trace, .. } => trace.clone(),
                                    _ => String::new(),
                                },
                                error: Some(error.to_string()),
                            }),
                        }
                    }
                });
            }
        });
        let mut summary = summary.into_inner().unwrap_or_else(|p| p.into_inner());
        summary.failures.sort_by_key(|failure| failure.seed);
        summary.fingerprints.sort_unstable();
        summary
    }
}

/// A duration as hours, minutes and seconds.
fn hours(duration: Duration) -> String {
    let seconds = duration.as_secs();
    format!(
        "{}h {:02}m {:02}s",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}
