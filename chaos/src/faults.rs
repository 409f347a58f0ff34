//! The faults of a run: what the simulator breaks, when, and how it heals everything for the
//! liveness phase.
//!
//! A [`FaultPlan`] lists faults with their start and end in simulated time. The run is split in
//! two phases at [`FaultPlan::heal_ms`]: during the **safety phase** faults come and go (the
//! invariants must hold whatever happens); at the heal every fault still active ends, every
//! crashed host restarts and the network stops losing and duplicating datagrams, and in the
//! **liveness phase** every acknowledged message must reach its recipient within
//! [`crate::history::LIVENESS_BOUND_MS`].
//!
//! [`FaultPlan::draw`] draws a plan from a seed the way TigerBeetle's swarm testing does: the
//! seed first picks which kinds of fault are on at all and how intense they are, then the faults
//! themselves, so that across seeds some runs hammer one mechanism and others mix everything.
//!
//! Network faults act on directed links between hosts. A link model keeps how many faults
//! drop or hold each direction and turns that into turmoil's link states (a drop wins over a
//! hold; turmoil cannot hold one direction of a link while dropping the other), so faults may
//! overlap freely.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use fdb_layers::FaultConfig;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::history::client_name;
use crate::seed;
use crate::simulation::{client_host, nth_edge_host, region_host};

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A region's process dies (its unacknowledged state is lost) and restarts on its disk.
    RegionCrash,
    /// An edge's process dies and restarts.
    EdgeCrash,
    /// A client app is killed between two actions and opened again on its store.
    ClientRestart,
    /// Two hosts cannot reach each other, either way.
    Partition,
    /// One host's datagrams to another are dropped; the other way works.
    OneWayPartition,
    /// The link between two hosts holds every datagram, then delivers them at once.
    Clog,
    /// Every link of one host is held, then released (what its peers see of SIGSTOP/SIGCONT).
    Pause,
    /// A random subset of hosts is clogged one by one, then unclogged in random order.
    SwizzleClog,
    /// Datagrams are lost at random.
    PacketLoss,
    /// Datagrams are delivered twice at random.
    Duplication,
    /// A server's clock is off by up to two minutes.
    ClockSkew,
    /// The store refuses commits as conflicts, answers `commit_unknown_result`, is slow, and
    /// in half of these runs fails commits as a failing disk would (the region answers
    /// `StorageUnavailable`; the commit may or may not be stored).
    StoreFaults,
    /// An operator moves a client's account home to another region
    /// (`relayd admin move-home`), while everything else goes on. Not in [`FaultKind::ALL`]:
    /// drawn apart ([`FaultPlan::draw_home_moves`]), so a seed's other faults are the same with
    /// or without them (`relayd sim --no-home-moves` leaves them out; swarm sweeps have them).
    HomeMove,
    /// A region's standby process dies and restarts on its copy (runs with standbys). Not in
    /// [`FaultKind::ALL`]: asked for by a run ([`crate::Simulation::crash_standby`]).
    StandbyCrash,
    /// A region's primary hangs (every link held, its standby's too) past its lease: the
    /// standby takes over, and the old primary is fenced when it comes back. Not in
    /// [`FaultKind::ALL`]: asked for by a run ([`crate::Simulation::fail_over`]).
    Failover,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 12] = [
        FaultKind::RegionCrash,
        FaultKind::EdgeCrash,
        FaultKind::ClientRestart,
        FaultKind::Partition,
        FaultKind::OneWayPartition,
        FaultKind::Clog,
        FaultKind::Pause,
        FaultKind::SwizzleClog,
        FaultKind::PacketLoss,
        FaultKind::Duplication,
        FaultKind::ClockSkew,
        FaultKind::StoreFaults,
    ];

    /// A short name, for tables.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::RegionCrash => "region crash",
            FaultKind::EdgeCrash => "edge crash",
            FaultKind::ClientRestart => "client restart",
            FaultKind::Partition => "partition",
            FaultKind::OneWayPartition => "one-way partition",
            FaultKind::Clog => "clog",
            FaultKind::Pause => "pause",
            FaultKind::SwizzleClog => "swizzle-clog",
            FaultKind::PacketLoss => "packet loss (runs)",
            FaultKind::Duplication => "duplication (runs)",
            FaultKind::ClockSkew => "clock skew (hosts)",
            FaultKind::StoreFaults => "store faults (runs)",
            FaultKind::HomeMove => "home move",
            FaultKind::StandbyCrash => "standby crash",
            FaultKind::Failover => "failover",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one network fault does to a directed link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkEffect {
    /// Datagrams are dropped.
    Drop,
    /// Datagrams are held until the fault ends, then delivered.
    Hold,
}

/// What a fault targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A region's host (crashes).
    Region(u32),
    /// An edge's host, by name (crashes).
    Edge(String),
    /// A region's standby host (crashes).
    Standby(u32),
    /// A client's account, whose home an operator moves to region `to`.
    HomeMove {
        /// The client.
        client: u32,
        /// The region it moves to.
        to: u32,
    },
    /// Directed links between hosts, each `(from, to)`.
    Links {
        /// The links.
        links: Vec<(String, String)>,
        /// What happens on them.
        effect: LinkEffect,
    },
}

/// One fault with its time span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Its kind (several faults may make up one swizzle-clog; they share the kind).
    pub kind: FaultKind,
    /// When it starts, in simulated ms.
    pub start_ms: u64,
    /// When it ends (at the latest at the heal).
    pub end_ms: u64,
    /// What it hits.
    pub target: Target,
    /// How it reads in the trace.
    pub label: String,
}

/// Every fault of a run and the rates of the continuous ones.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// The end of the safety phase: every fault ends here at the latest.
    pub heal_ms: u64,
    /// The faults.
    pub faults: Vec<Fault>,
    /// Datagrams lost during the safety phase, per million.
    pub drop_ppm: u32,
    /// Datagrams delivered twice during the safety phase, per million.
    pub duplicate_ppm: u32,
    /// Each server host's clock offset, in ms (absent: exact).
    pub clock_skew_ms: BTreeMap<String, i64>,
    /// The store's injected faults (each region draws its own seed from it).
    pub store: Option<FaultConfig>,
    /// When each client is killed and opened again, in simulated ms.
    pub client_restarts: BTreeMap<u32, Vec<u64>>,
    /// How many faults of each kind the plan injects.
    pub counts: BTreeMap<FaultKind, u64>,
}

impl FaultPlan {
    /// No faults; the heal is at the start.
    pub fn none() -> Self {
        Self {
            heal_ms: 0,
            faults: Vec::new(),
            drop_ppm: 0,
            duplicate_ppm: 0,
            clock_skew_ms: BTreeMap::new(),
            store: None,
            client_restarts: BTreeMap::new(),
            counts: BTreeMap::new(),
        }
    }

    /// Adds one fault, counted under its kind, and moves the heal past it.
    pub fn push(&mut self, fault: Fault) {
        *self.counts.entry(fault.kind).or_default() += 1;
        self.heal_ms = self.heal_ms.max(fault.end_ms);
        self.faults.push(fault);
    }

    /// Draws a swarm plan for a deployment from `seed`: which kinds are on, how intense, and
    /// the faults themselves, all within a safety phase of `safety_ms`.
    pub fn draw(seed: u64, topology: &Topology, safety_ms: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed::derive(seed, "faults", 0));
        let mut plan = FaultPlan::none();
        plan.heal_ms = safety_ms;
        // Swarm: each kind is on in about half the runs.
        let on: BTreeSet<FaultKind> = FaultKind::ALL
            .into_iter()
            .filter(|_| rng.random_bool(0.5))
            .collect();
        let window = |rng: &mut StdRng, longest: u64| {
            let start = rng.random_range(300..safety_ms.max(301));
            let end = (start + rng.random_range(100..=longest)).min(safety_ms);
            (start, end.max(start + 1))
        };
        let regions: Vec<u32> = (1..=topology.regions).collect();
        let mut busy: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        let mut crash = |rng: &mut StdRng, plan: &mut FaultPlan, kind: FaultKind| {
            let region = regions[rng.random_range(0..regions.len())];
            let (target, host) = match kind {
                FaultKind::RegionCrash => (Target::Region(region), region_host(region)),
                _ => {
                    let edge = rng.random_range(1..=topology.edges_per_region.max(1));
                    let host = nth_edge_host(region, edge);
                    (Target::Edge(host.clone()), host)
                }
            };
            // Regions come back within seconds; an edge may stay down long enough for its
            // devices to move to another edge of the region.
            let longest = if kind == FaultKind::RegionCrash {
                4_000
            } else {
                15_000
            };
            let (start, end) = window(rng, longest);
            let spans = busy.entry(host.clone()).or_default();
            // A host is crashed at most once at a time.
            if spans.iter().any(|&(s, e)| start <= e && s <= end) {
                return;
            }
            spans.push((start, end));
            plan.push(Fault {
                kind,
                start_ms: start,
                end_ms: end,
                target,
                label: format!("{host} down"),
            });
        };
        for kind in [FaultKind::RegionCrash, FaultKind::EdgeCrash] {
            if on.contains(&kind) {
                for _ in 0..rng.random_range(1..=3) {
                    crash(&mut rng, &mut plan, kind);
                }
            }
        }
        let links = topology.links();
        let hosts = topology.hosts();
        let pick_link = |rng: &mut StdRng| links[rng.random_range(0..links.len())].clone();
        if on.contains(&FaultKind::Partition) {
            for _ in 0..rng.random_range(1..=4) {
                let (a, b) = pick_link(&mut rng);
                let (start, end) = window(&mut rng, 5_000);
                plan.push(Fault {
                    kind: FaultKind::Partition,
                    start_ms: start,
                    end_ms: end,
                    label: format!("{a} and {b} partitioned"),
                    target: Target::Links {
                        links: vec![(a.clone(), b.clone()), (b, a)],
                        effect: LinkEffect::Drop,
                    },
                });
            }
        }
        if on.contains(&FaultKind::OneWayPartition) {
            for _ in 0..rng.random_range(1..=3) {
                let (mut a, mut b) = pick_link(&mut rng);
                if rng.random_bool(0.5) {
                    std::mem::swap(&mut a, &mut b);
                }
                let (start, end) = window(&mut rng, 5_000);
                plan.push(Fault {
                    kind: FaultKind::OneWayPartition,
                    start_ms: start,
                    end_ms: end,
                    label: format!("{a} cannot reach {b}"),
                    target: Target::Links {
                        links: vec![(a, b)],
                        effect: LinkEffect::Drop,
                    },
                });
            }
        }
        if on.contains(&FaultKind::Clog) {
            for _ in 0..rng.random_range(1..=4) {
                let (a, b) = pick_link(&mut rng);
                let (start, end) = window(&mut rng, 3_000);
                plan.push(Fault {
                    kind: FaultKind::Clog,
                    start_ms: start,
                    end_ms: end,
                    label: format!("{a} and {b} clogged"),
                    target: Target::Links {
                        links: vec![(a.clone(), b.clone()), (b, a)],
                        effect: LinkEffect::Hold,
                    },
                });
            }
        }
        if on.contains(&FaultKind::Pause) {
            for _ in 0..rng.random_range(1..=3) {
                let host =
                    topology.servers()[rng.random_range(0..topology.servers().len())].clone();
                let (start, end) = window(&mut rng, 3_000);
                plan.push(Fault {
                    kind: FaultKind::Pause,
                    start_ms: start,
                    end_ms: end,
                    label: format!("{host} paused"),
                    target: Target::Links {
                        links: all_links_of(&host, &hosts),
                        effect: LinkEffect::Hold,
                    },
                });
            }
        }
        if on.contains(&FaultKind::SwizzleClog) {
            let mut chosen: Vec<String> = hosts
                .iter()
                .filter(|_| rng.random_bool(0.5))
                .cloned()
                .collect();
            if chosen.is_empty() {
                chosen.push(hosts[rng.random_range(0..hosts.len())].clone());
            }
            let step = rng.random_range(50..=500);
            let start = rng.random_range(300..safety_ms.max(301));
            let mut unclog_order: Vec<usize> = (0..chosen.len()).collect();
            unclog_order.shuffle(&mut rng);
            let clogged_all = start + step * chosen.len() as u64;
            *plan.counts.entry(FaultKind::SwizzleClog).or_default() += 1;
            for (i, host) in chosen.iter().enumerate() {
                let position = unclog_order.iter().position(|&j| j == i).unwrap_or(0) as u64;
                let clog = (start + step * i as u64).min(safety_ms);
                let unclog = (clogged_all + step * (position + 1)).min(safety_ms);
                plan.faults.push(Fault {
                    kind: FaultKind::SwizzleClog,
                    start_ms: clog,
                    end_ms: unclog.max(clog + 1),
                    label: format!("{host} swizzle-clogged"),
                    target: Target::Links {
                        links: all_links_of(host, &hosts),
                        effect: LinkEffect::Hold,
                    },
                });
            }
        }
        if on.contains(&FaultKind::PacketLoss) {
            plan.drop_ppm = rng.random_range(1_000..=50_000);
            plan.counts.insert(FaultKind::PacketLoss, 1);
        }
        if on.contains(&FaultKind::Duplication) {
            plan.duplicate_ppm = rng.random_range(1_000..=50_000);
            plan.counts.insert(FaultKind::Duplication, 1);
        }
        if on.contains(&FaultKind::ClockSkew) {
            for host in topology.servers() {
                if rng.random_bool(0.5) {
                    plan.clock_skew_ms
                        .insert(host.clone(), rng.random_range(-120_000..=120_000));
                }
            }
            if !plan.clock_skew_ms.is_empty() {
                plan.counts
                    .insert(FaultKind::ClockSkew, plan.clock_skew_ms.len() as u64);
            }
        }
        if on.contains(&FaultKind::StoreFaults) {
            // Disk failures draw from a generator of their own, so that adding them left every
            // other fault of every seed as it was.
            let mut disk = StdRng::seed_from_u64(seed::derive(seed, "store-disk", 0));
            let io_error_probability = if disk.random_bool(0.5) {
                disk.random_range(0.0..0.05)
            } else {
                0.0
            };
            plan.store = Some(FaultConfig {
                seed: seed::derive(seed, "store", 0),
                conflict_probability: rng.random_range(0.0..0.1),
                commit_unknown_result_probability: rng.random_range(0.0..0.1),
                slow_commit_probability: rng.random_range(0.0..0.1),
                slow_commit_ms: rng.random_range(1..=200),
                io_error_probability,
            });
            plan.counts.insert(FaultKind::StoreFaults, 1);
        }
        if on.contains(&FaultKind::ClientRestart) {
            for _ in 0..rng.random_range(1..=3) {
                let client = rng.random_range(0..topology.clients.len().max(1)) as u32;
                let at = rng.random_range(300..safety_ms.max(301));
                plan.client_restarts.entry(client).or_default().push(at);
                *plan.counts.entry(FaultKind::ClientRestart).or_default() += 1;
            }
            for restarts in plan.client_restarts.values_mut() {
                restarts.sort_unstable();
            }
        }
        plan.faults.sort_by_key(|fault| fault.start_ms);
        plan
    }

    /// Home moves for a swarm run (see [`FaultKind::HomeMove`]): in half the runs with two
    /// regions or more, one or two accounts moved to another region during the safety phase.
    /// From a generator of their own, so that drawing them leaves the seed's other faults as
    /// they were.
    pub fn draw_home_moves(seed: u64, topology: &Topology, safety_ms: u64) -> Vec<Fault> {
        let mut plan = FaultPlan::none();
        let mut moves = StdRng::seed_from_u64(seed::derive(seed, "home-moves", 0));
        if topology.regions >= 2 && !topology.clients.is_empty() && moves.random_bool(0.5) {
            let mut moved = BTreeSet::new();
            for _ in 0..moves.random_range(1..=2) {
                let client = moves.random_range(0..topology.clients.len()) as u32;
                let home = topology.clients[client as usize];
                let others: Vec<u32> = (1..=topology.regions).filter(|&r| r != home).collect();
                let to = others[moves.random_range(0..others.len())];
                let start = moves.random_range(300..safety_ms.max(301));
                // One move per account: a second would be asked of its old home.
                if !moved.insert(client) {
                    continue;
                }
                plan.push(Fault {
                    kind: FaultKind::HomeMove,
                    start_ms: start,
                    end_ms: start + 1,
                    label: format!("{}'s home moves to region {to}", client_name(client)),
                    target: Target::HomeMove { client, to },
                });
            }
        }
        plan.faults
    }

    /// The planned actions, in the order to apply them: each fault's start and its end (at the
    /// heal at the latest), then the heal.
    pub(crate) fn actions(&self) -> Vec<(u64, Action)> {
        let mut actions = Vec::new();
        for (index, fault) in self.faults.iter().enumerate() {
            if fault.start_ms >= self.heal_ms && self.heal_ms > 0 {
                continue;
            }
            let end = if self.heal_ms > 0 {
                fault.end_ms.min(self.heal_ms)
            } else {
                fault.end_ms
            };
            actions.push((fault.start_ms, Action::Start(index)));
            actions.push((end, Action::End(index)));
        }
        actions.push((self.heal_ms, Action::Heal));
        // Stable: at one instant, starts and ends keep the plan's order and the heal comes last.
        actions.sort_by_key(|&(at, action)| (at, matches!(action, Action::Heal)));
        actions
    }
}

/// One step of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Fault `n` starts.
    Start(usize),
    /// Fault `n` ends.
    End(usize),
    /// The safety phase ends.
    Heal,
}

/// The hosts of a deployment, for drawing faults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Regions, numbered from 1.
    pub regions: u32,
    /// Edges in each region, numbered from 1.
    pub edges_per_region: u32,
    /// Each client's home region, by client number.
    pub clients: Vec<u32>,
}

impl Topology {
    /// Every host.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts = self.servers();
        hosts.extend((0..self.clients.len() as u32).map(client_host));
        hosts
    }

    /// The regions' and edges' hosts.
    pub fn servers(&self) -> Vec<String> {
        (1..=self.regions)
            .flat_map(|region| std::iter::once(region_host(region)).chain(self.edges(region)))
            .collect()
    }

    /// Region `region`'s edges' hosts.
    pub fn edges(&self, region: u32) -> Vec<String> {
        (1..=self.edges_per_region.max(1))
            .map(|edge| nth_edge_host(region, edge))
            .collect()
    }

    /// The links that carry traffic: region to region, edge to region, client to its edge.
    pub fn links(&self) -> Vec<(String, String)> {
        let mut links = Vec::new();
        for a in 1..=self.regions {
            for b in a + 1..=self.regions {
                links.push((region_host(a), region_host(b)));
            }
            for edge in self.edges(a) {
                for b in 1..=self.regions {
                    links.push((edge.clone(), region_host(b)));
                }
            }
        }
        for (client, &region) in self.clients.iter().enumerate() {
            for edge in self.edges(region) {
                links.push((client_host(client as u32), edge));
            }
        }
        links
    }
}

fn all_links_of(host: &str, hosts: &[String]) -> Vec<(String, String)> {
    hosts
        .iter()
        .filter(|other| other.as_str() != host)
        .flat_map(|other| {
            [
                (host.to_owned(), other.clone()),
                (other.clone(), host.to_owned()),
            ]
        })
        .collect()
}

/// The state of one direction of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Direction {
    #[default]
    Up,
    Dropped,
    Held,
}

/// How many active faults drop or hold each directed link, and the state last given to
/// turmoil for each pair of hosts.
#[derive(Debug, Default)]
pub(crate) struct LinkModel {
    /// (from, to) → (faults dropping, faults holding).
    counts: BTreeMap<(String, String), (u32, u32)>,
    /// {a, b} with a < b → (a→b, b→a) as applied.
    applied: BTreeMap<(String, String), (Direction, Direction)>,
}

impl LinkModel {
    /// A fault starts (`delta` 1) or ends (`delta` -1) on `links`; returns the pairs whose
    /// state changed, with the turmoil calls to make.
    pub(crate) fn change(
        &mut self,
        links: &[(String, String)],
        effect: LinkEffect,
        starts: bool,
    ) -> Vec<LinkCall> {
        let mut touched = BTreeSet::new();
        for (from, to) in links {
            let count = self.counts.entry((from.clone(), to.clone())).or_default();
            let slot = match effect {
                LinkEffect::Drop => &mut count.0,
                LinkEffect::Hold => &mut count.1,
            };
            *slot = if starts {
                *slot + 1
            } else {
                slot.saturating_sub(1)
            };
            touched.insert(ordered(from, to));
        }
        let mut calls = Vec::new();
        for (a, b) in touched {
            let want = self.wanted(&a, &b);
            let had = self
                .applied
                .get(&(a.clone(), b.clone()))
                .copied()
                .unwrap_or_default();
            if want == had {
                continue;
            }
            // Back to healthy first: releasing delivers what a hold kept; a repair alone would
            // leave it stuck.
            if had.0 == Direction::Held || had.1 == Direction::Held {
                calls.push(LinkCall::Release(a.clone(), b.clone()));
            } else if had != (Direction::Up, Direction::Up) {
                calls.push(LinkCall::Repair(a.clone(), b.clone()));
            }
            match want {
                (Direction::Up, Direction::Up) => {}
                (Direction::Dropped, Direction::Dropped) => {
                    calls.push(LinkCall::Partition(a.clone(), b.clone()));
                }
                (Direction::Dropped, _) => {
                    calls.push(LinkCall::PartitionOneWay(a.clone(), b.clone()))
                }
                (_, Direction::Dropped) => {
                    calls.push(LinkCall::PartitionOneWay(b.clone(), a.clone()))
                }
                _ => calls.push(LinkCall::Hold(a.clone(), b.clone())),
            }
            self.applied.insert((a, b), want);
        }
        calls
    }

    /// What a pair should be: drops win; a hold holds both ways (turmoil holds whole links).
    fn wanted(&self, a: &str, b: &str) -> (Direction, Direction) {
        let of = |from: &str, to: &str| {
            self.counts
                .get(&(from.to_owned(), to.to_owned()))
                .copied()
                .unwrap_or_default()
        };
        let (ab, ba) = (of(a, b), of(b, a));
        let dropped = |count: (u32, u32)| count.0 > 0;
        if dropped(ab) || dropped(ba) {
            let state = |count| {
                if dropped(count) {
                    Direction::Dropped
                } else {
                    Direction::Up
                }
            };
            return (state(ab), state(ba));
        }
        if ab.1 > 0 || ba.1 > 0 {
            return (Direction::Held, Direction::Held);
        }
        (Direction::Up, Direction::Up)
    }
}

fn ordered(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

/// One call on turmoil's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkCall {
    Release(String, String),
    Repair(String, String),
    Partition(String, String),
    PartitionOneWay(String, String),
    Hold(String, String),
}

impl LinkCall {
    pub(crate) fn apply(&self, sim: &turmoil::Sim<'_>) {
        match self {
            LinkCall::Release(a, b) => sim.release(a.as_str(), b.as_str()),
            LinkCall::Repair(a, b) => sim.repair(a.as_str(), b.as_str()),
            LinkCall::Partition(a, b) => sim.partition(a.as_str(), b.as_str()),
            LinkCall::PartitionOneWay(from, to) => sim.partition_oneway(from.as_str(), to.as_str()),
            LinkCall::Hold(a, b) => sim.hold(a.as_str(), b.as_str()),
        }
    }
}

/// Datagram loss and duplication, shared by every simulated socket of a run and switched off
/// at the heal.
#[derive(Debug, Default)]
pub struct NetFaults {
    drop_ppm: AtomicU32,
    duplicate_ppm: AtomicU32,
}

impl NetFaults {
    /// Loss and duplication rates, per million datagrams.
    pub fn new(drop_ppm: u32, duplicate_ppm: u32) -> Arc<Self> {
        Arc::new(Self {
            drop_ppm: AtomicU32::new(drop_ppm),
            duplicate_ppm: AtomicU32::new(duplicate_ppm),
        })
    }

    /// Stops losing and duplicating.
    pub fn heal(&self) {
        self.drop_ppm.store(0, Ordering::Relaxed);
        self.duplicate_ppm.store(0, Ordering::Relaxed);
    }

    /// What to do with a datagram, given a uniform draw in 0..1_000_000: send it 0, 1 or 2
    /// times.
    pub fn copies(&self, draw: u32) -> usize {
        let drop = self.drop_ppm.load(Ordering::Relaxed);
        let duplicate = self.duplicate_ppm.load(Ordering::Relaxed);
        if draw < drop {
            0
        } else if draw < drop.saturating_add(duplicate) {
            2
        } else {
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology {
            regions: 2,
            edges_per_region: 2,
            clients: vec![1, 1, 2],
        }
    }

    #[test]
    fn plans_repeat_per_seed_and_end_by_the_heal() {
        let plan = FaultPlan::draw(5, &topology(), 8_000);
        assert_eq!(plan, FaultPlan::draw(5, &topology(), 8_000));
        let kinds: BTreeSet<BTreeSet<FaultKind>> = (0..40)
            .map(|seed| {
                FaultPlan::draw(seed, &topology(), 8_000)
                    .counts
                    .keys()
                    .copied()
                    .collect()
            })
            .collect();
        assert!(kinds.len() > 20, "the seed picks which kinds are on");
        for seed in 0..40 {
            let plan = FaultPlan::draw(seed, &topology(), 8_000);
            let actions = plan.actions();
            assert_eq!(actions.last().map(|a| a.1), Some(Action::Heal));
            assert!(actions.iter().all(|&(at, _)| at <= 8_000));
        }
    }

    #[test]
    fn overlapping_faults_resolve_to_drops_then_holds_then_health() {
        let mut model = LinkModel::default();
        let ab = vec![("a".to_owned(), "b".to_owned())];
        let both = vec![
            ("a".to_owned(), "b".to_owned()),
            ("b".to_owned(), "a".to_owned()),
        ];
        let hold = model.change(&both, LinkEffect::Hold, true);
        assert_eq!(hold, vec![LinkCall::Hold("a".into(), "b".into())]);
        // A one-way drop on a held link: release what was held, then drop that way only.
        let drop = model.change(&ab, LinkEffect::Drop, true);
        assert_eq!(
            drop,
            vec![
                LinkCall::Release("a".into(), "b".into()),
                LinkCall::PartitionOneWay("a".into(), "b".into())
            ]
        );
        let undrop = model.change(&ab, LinkEffect::Drop, false);
        assert_eq!(
            undrop,
            vec![
                LinkCall::Repair("a".into(), "b".into()),
                LinkCall::Hold("a".into(), "b".into())
            ]
        );
        let unhold = model.change(&both, LinkEffect::Hold, false);
        assert_eq!(unhold, vec![LinkCall::Release("a".into(), "b".into())]);
        assert!(model.change(&both, LinkEffect::Hold, false).is_empty());
    }

    #[test]
    fn net_faults_drop_then_duplicate_then_pass() {
        let faults = NetFaults::new(10, 20);
        assert_eq!(faults.copies(5), 0);
        assert_eq!(faults.copies(15), 2);
        assert_eq!(faults.copies(30), 1);
        faults.heal();
        assert_eq!(faults.copies(0), 1);
    }
}
