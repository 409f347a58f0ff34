//! The fault schedule of a real-process run, drawn from the seed: which process or region to hit
//! next, how, and for how long. Sans-IO: it hands out faults and pauses, and never touches a
//! process or a clock, so a seed always gives the same schedule.
//!
//! The first faults cover every selected kind on both a region and an edge (a kill and a pause
//! of each; a partition both ways and one way), in a seeded order; after that each fault is
//! drawn at random. The injector runs them one after another.

use std::collections::VecDeque;
use std::fmt;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Shortest pause between two faults, in ms.
pub const GAP_MS_MIN: u64 = 100;
/// Longest pause between two faults, in ms.
pub const GAP_MS_MAX: u64 = 600;
/// Shortest time a process stays paused (SIGSTOP … SIGCONT), in ms.
pub const PAUSE_MS_MIN: u64 = 300;
/// Longest time a process stays paused, in ms.
pub const PAUSE_MS_MAX: u64 = 1_500;
/// Shortest time a partition holds, in ms.
pub const PARTITION_MS_MIN: u64 = 500;
/// Longest time a partition holds, in ms.
pub const PARTITION_MS_MAX: u64 = 2_000;

/// A kind of fault, as `--faults` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL a region or an edge; the devnet restarts it on the same address.
    Kill,
    /// SIGSTOP a region or an edge, then SIGCONT it.
    Pause,
    /// Cut one region's addresses (127.0.k.0/24) off from the other regions', both ways or
    /// one way.
    Partition,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 3] = [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition];

    /// The name `--faults` and the report use.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
        }
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name.trim())
            .ok_or_else(|| format!("{name:?} is not a fault kind (kill, pause, partition)"))
    }
}

/// A process of the devnet that faults hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// Region k's service.
    Region(u32),
    /// Region k's edge.
    Edge(u32),
}

impl Target {
    /// The devnet's name for the process (`region-1`, `edge-2`).
    pub fn process(self) -> String {
        match self {
            Target::Region(region) => format!("region-{region}"),
            Target::Edge(region) => format!("edge-{region}"),
        }
    }

    /// `region` or `edge`.
    pub fn role(self) -> &'static str {
        match self {
            Target::Region(_) => "region",
            Target::Edge(_) => "edge",
        }
    }
}

/// Which packets a partition of one region drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Both from and to the region.
    BothWays,
    /// Only those leaving the region.
    Outbound,
    /// Only those entering the region.
    Inbound,
}

impl Cut {
    /// How the report names it.
    pub fn name(self) -> &'static str {
        match self {
            Cut::BothWays => "both ways",
            Cut::Outbound => "outbound only",
            Cut::Inbound => "inbound only",
        }
    }
}

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the process; it is back when the devnet has restarted it.
    Kill(Target),
    /// SIGSTOP the process for `hold_ms`, then SIGCONT it.
    Pause {
        /// The process.
        target: Target,
        /// How long it stays stopped, in ms.
        hold_ms: u64,
    },
    /// Drop the region's packets to and/or from every other region for `hold_ms`.
    Partition {
        /// The region cut off.
        region: u32,
        /// Which way.
        cut: Cut,
        /// How long, in ms.
        hold_ms: u64,
    },
}

impl Fault {
    /// Its kind.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Kill(_) => FaultKind::Kill,
            Fault::Pause { .. } => FaultKind::Pause,
            Fault::Partition { .. } => FaultKind::Partition,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(target) => write!(f, "kill {}", target.process()),
            Fault::Pause { target, hold_ms } => {
                write!(f, "pause {} for {hold_ms} ms", target.process())
            }
            Fault::Partition {
                region,
                cut,
                hold_ms,
            } => write!(
                f,
                "partition region {region} from the others ({}) for {hold_ms} ms",
                cut.name()
            ),
        }
    }
}

/// The faults of one run, drawn from its seed.
#[derive(Debug)]
pub struct Schedule {
    rng: StdRng,
    regions: u32,
    kinds: Vec<FaultKind>,
    /// Faults still owed to cover every kind on a region and an edge.
    covering: VecDeque<Fault>,
}

impl Schedule {
    /// The schedule for `regions` regions and the selected kinds. Partitions need two regions:
    /// with one they are left out.
    pub fn new(seed: u64, regions: u32, kinds: &[FaultKind]) -> Self {
        let mut rng = StdRng::seed_from_u64(crate::seed::derive(seed, "faults", 0));
        let regions = regions.max(1);
        let mut kinds: Vec<FaultKind> = kinds
            .iter()
            .copied()
            .filter(|kind| *kind != FaultKind::Partition || regions >= 2)
            .collect();
        kinds.sort();
        kinds.dedup();
        let mut covering = Vec::new();
        for &kind in &kinds {
            match kind {
                FaultKind::Kill | FaultKind::Pause => {
                    for make in [Target::Region, Target::Edge] {
                        let target = make(rng.random_range(1..=regions));
                        covering.push(draw_of(kind, target, &mut rng));
                    }
                }
                FaultKind::Partition => {
                    let one_way = if rng.random_bool(0.5) {
                        Cut::Outbound
                    } else {
                        Cut::Inbound
                    };
                    for cut in [Cut::BothWays, one_way] {
                        covering.push(Fault::Partition {
                            region: rng.random_range(1..=regions),
                            cut,
                            hold_ms: rng.random_range(PARTITION_MS_MIN..=PARTITION_MS_MAX),
                        });
                    }
                }
            }
        }
        covering.shuffle(&mut rng);
        Self {
            rng,
            regions,
            kinds,
            covering: covering.into(),
        }
    }

    /// The kinds this schedule draws from (the selection, less what cannot apply).
    pub fn kinds(&self) -> &[FaultKind] {
        &self.kinds
    }

    /// Whether every selected kind has been handed out on a region and an edge.
    pub fn covered(&self) -> bool {
        self.covering.is_empty()
    }

    /// The pause before the next fault (ms) and the fault; `None` when no kind is selected.
    pub fn next_fault(&mut self) -> Option<(u64, Fault)> {
        let gap_ms = self.rng.random_range(GAP_MS_MIN..=GAP_MS_MAX);
        if let Some(fault) = self.covering.pop_front() {
            return Some((gap_ms, fault));
        }
        let kind = *self
            .kinds
            .get(self.rng.random_range(0..self.kinds.len().max(1)))?;
        let region = self.rng.random_range(1..=self.regions);
        let target = if self.rng.random_bool(0.5) {
            Target::Region(region)
        } else {
            Target::Edge(region)
        };
        let fault = match kind {
            FaultKind::Kill | FaultKind::Pause => draw_of(kind, target, &mut self.rng),
            FaultKind::Partition => Fault::Partition {
                region,
                cut: match self.rng.random_range(0..3) {
                    0 => Cut::BothWays,
                    1 => Cut::Outbound,
                    _ => Cut::Inbound,
                },
                hold_ms: self.rng.random_range(PARTITION_MS_MIN..=PARTITION_MS_MAX),
            },
        };
        Some((gap_ms, fault))
    }
}

/// A kill or a pause of `target` (`kind` is one of those two).
fn draw_of(kind: FaultKind, target: Target, rng: &mut StdRng) -> Fault {
    if kind == FaultKind::Kill {
        Fault::Kill(target)
    } else {
        Fault::Pause {
            target,
            hold_ms: rng.random_range(PAUSE_MS_MIN..=PAUSE_MS_MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [FaultKind; 3] = [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition];

    fn first(schedule: &mut Schedule, count: usize) -> Vec<Fault> {
        (0..count)
            .filter_map(|_| schedule.next_fault().map(|(_, fault)| fault))
            .collect()
    }

    #[test]
    fn a_seed_gives_one_schedule() {
        let a = first(&mut Schedule::new(5, 3, &ALL), 40);
        assert_eq!(a, first(&mut Schedule::new(5, 3, &ALL), 40));
        assert_ne!(a, first(&mut Schedule::new(6, 3, &ALL), 40));
    }

    #[test]
    fn the_first_faults_cover_every_kind_on_a_region_and_an_edge() {
        for seed in 0..50 {
            let mut schedule = Schedule::new(seed, 2, &ALL);
            let faults = first(&mut schedule, 6);
            assert!(schedule.covered());
            for kind in [FaultKind::Kill, FaultKind::Pause] {
                for role in ["region", "edge"] {
                    assert!(
                        faults.iter().any(|fault| match fault {
                            Fault::Kill(target) | Fault::Pause { target, .. } =>
                                fault.kind() == kind && target.role() == role,
                            Fault::Partition { .. } => false,
                        }),
                        "seed {seed}: no {kind:?} of a {role} in {faults:?}"
                    );
                }
            }
            let cuts: Vec<Cut> = faults
                .iter()
                .filter_map(|fault| match fault {
                    Fault::Partition { cut, .. } => Some(*cut),
                    _ => None,
                })
                .collect();
            assert_eq!(cuts.len(), 2);
            assert!(cuts.contains(&Cut::BothWays));
        }
    }

    #[test]
    fn faults_stay_within_the_deployment_and_the_selection() {
        let mut schedule = Schedule::new(9, 2, &[FaultKind::Pause]);
        for _ in 0..100 {
            let Some((gap_ms, fault)) = schedule.next_fault() else {
                panic!("a kind is selected");
            };
            assert!((GAP_MS_MIN..=GAP_MS_MAX).contains(&gap_ms));
            let Fault::Pause { target, hold_ms } = fault else {
                panic!("only pauses were selected: {fault}");
            };
            let (Target::Region(region) | Target::Edge(region)) = target;
            assert!((1..=2).contains(&region));
            assert!((PAUSE_MS_MIN..=PAUSE_MS_MAX).contains(&hold_ms));
        }
    }

    #[test]
    fn one_region_has_no_partitions_and_no_kind_means_no_fault() {
        let mut schedule = Schedule::new(1, 1, &ALL);
        assert_eq!(schedule.kinds(), &[FaultKind::Kill, FaultKind::Pause]);
        assert!(
            first(&mut schedule, 50)
                .iter()
                .all(|fault| fault.kind() != FaultKind::Partition)
        );
        assert_eq!(Schedule::new(1, 2, &[]).next_fault(), None);
    }
}
