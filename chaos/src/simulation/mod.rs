//! The whole relay in one simulated world: N regions, each a turmoil host running the real
//! [`RegionService`] on the memory store; one edge per region running the real [`EdgeService`];
//! and simulated clients driving the real client library. Everything speaks real QUIC and TLS
//! over turmoil's simulated UDP, on turmoil's clock, in one thread, from one seed.
//!
//! ```no_run
//! use relay_chaos::Simulation;
//! use std::time::Duration;
//!
//! let report = Simulation::new(7)
//!     .regions(2)
//!     .clients_per_region(2)
//!     .messages_per_client(10)
//!     .crash_region(1, Duration::from_secs(3), Duration::from_secs(2))
//!     .run()
//!     .expect("the simulation runs");
//! report.assert_invariants();
//! ```
//!
//! Faults compose with the workload: [`Simulation::crash_region`] crashes a region's host (its
//! tasks, connections and store handles vanish; the [`MemoryDisk`] keeps exactly what was
//! acknowledged) and restarts it later on the same disk and address.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use fdb_layers::{Database, FaultConfig, MemoryDisk, MemoryOptions};
use home_region::{RegionParts, RegionService};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_edge::session::SessionLimits;
use relay_edge::{EdgeParts, EdgeService, NonceSource};
use relay_net::PeerResolver;
use relay_planted::PlantedBug;
use relay_proto::RegionId;

use crate::faults::{
    Action, Fault, FaultKind, FaultPlan, LinkEffect, LinkModel, NetFaults, Target, Topology,
};
use crate::history::{
    self, ChatView, DocView, GroupMessageRef, LIVENESS_BOUND_MS, MessageRef, TraceEvent, Violation,
    What,
};
use crate::net::{PacketFingerprint, PacketLog, SimSockets};
use crate::pki::{Pki, PkiError};
use crate::seed;
use crate::time::{SimClock, sim_epoch};
use crate::workload::{self, ClientSetup, GroupPlan, Plan, Shared, WorkloadShape};

mod hosts;
mod report;

use hosts::{EdgeSoftware, Operator, RegionSoftware, StandbySoftware};
use report::injected;
pub use report::{Report, ShippingFigures};

/// UDP port of every region's internal QUIC server.
pub const REGION_PORT: u16 = 4433;
/// UDP port of every edge's device-facing QUIC server.
pub const EDGE_PORT: u16 = 4434;
/// UDP port of every edge's internal (edge → region) endpoint.
pub const EDGE_INTERNAL_PORT: u16 = 4435;
/// UDP port of an operator's client endpoint (a home move's `relayd admin move-home`).
pub const OPERATOR_PORT: u16 = 4436;
/// UDP port of every standby's replication server.
pub const STANDBY_PORT: u16 = 4437;
/// UDP port a region ships to its standby from.
pub const SHIPPER_PORT: u16 = 4438;
/// Steps (simulated ms) the world runs on after the clients finished, at most, for every
/// standby to reach its region's store.
pub const STANDBY_SETTLE_STEPS_MAX: u32 = 30_000;
/// Times a standby taking over tries to raise its store's failover epoch on a failing disk.
pub const PROMOTION_ATTEMPTS_MAX: u32 = 100;
/// How often an operator looks whether the clients are ready, in simulated ms.
pub const OPERATOR_POLL_MS: u64 = 100;
/// How long an operator waits for all of a home move (the lookup and the move), in simulated
/// ms: within the run's wind-down and liveness phase, whatever the faults.
pub const OPERATOR_TIMEOUT_MS: u64 = 60_000;
/// The region that writes the directory.
pub const DIRECTORY_WRITER: u32 = 1;
/// Datagrams a simulated socket buffers before dropping (a kernel's receive buffer).
pub const UDP_DATAGRAMS_BUFFERED_MAX: usize = 4096;
/// Simulated time the world may run past the clients' deadline (closing, last syncs), in ms.
pub const WIND_DOWN_MS: u64 = 60_000;
/// The largest share of clients, in percent, that a swarm run has link a second device.
pub const LINKED_PERCENT_MAX: u32 = 60;
/// The share of linked clients, in percent, whose first device removes the second one mid-run
/// in a swarm run.
pub const REMOVED_PERCENT: u32 = 30;

/// The share of swarm runs, in percent, that have groups (one, or two in a quarter of them).
pub const GROUP_PERCENT: u32 = 50;

/// Why a simulation could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    /// The in-memory CA failed.
    #[error("pki: {0}")]
    Pki(#[from] PkiError),
    /// The clients' folder could not be made.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A host or client failed, or the world ran out of time.
    #[error("simulation with seed={seed} failed: {message}; reproduce with seed={seed}")]
    Run {
        /// The run's seed.
        seed: u64,
        /// What failed.
        message: String,
        /// The trace recorded until it failed (empty when it failed before starting), one
        /// event per line.
        trace: String,
    },
}

/// A region crash and restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionCrash {
    /// The region (from 1).
    pub region: u32,
    /// When it crashes, in simulated time since the start.
    pub at: Duration,
    /// How long it stays down before restarting on the same disk.
    pub down_for: Duration,
}

impl RegionCrash {
    /// The crash as a fault of `kind` on `target`, the host named `host`.
    fn fault(&self, kind: FaultKind, target: Target, host: &str) -> Fault {
        Fault {
            kind,
            start_ms: millis(self.at),
            end_ms: millis(self.at + self.down_for),
            target,
            label: format!("{host} down"),
        }
    }
}

/// A simulation to run: the deployment, the workload and the faults, from one seed.
#[derive(Debug, Clone)]
pub struct Simulation {
    seed: u64,
    shape: WorkloadShape,
    crashes: Vec<RegionCrash>,
    /// Faults drawn by [`Simulation::swarm`] (crashes added by [`Simulation::crash_region`]
    /// join them when the run starts).
    faults: FaultPlan,
    /// Home moves [`Simulation::swarm`] drew, injected only with
    /// [`Simulation::with_home_moves`].
    home_moves: Vec<Fault>,
    time_limit: Duration,
    latency_ms: (u64, u64),
    planted: Vec<PlantedBug>,
    edges_per_region: u32,
    /// Every edge's per-connection request limits.
    edge_limits: SessionLimits,
    /// How long every region's chat lanes hold an early envelope for its predecessor, in ms.
    lane_hold_ms: u64,
    /// Whether every region ships its commits to a standby of its own (a host of its own with
    /// its own disk) and acknowledges only what the standby has.
    standbys: bool,
    /// Standby crashes and restarts (with [`Simulation::standbys`]).
    standby_crashes: Vec<RegionCrash>,
    /// Failovers: a region's primary cut off from every host, its standby included, from `at`
    /// for `down_for` (with [`Simulation::standbys`], which may then take over).
    failovers: Vec<RegionCrash>,
    /// Regions whose link to their standby is cut (and when, for how long).
    standby_cuts: Vec<RegionCrash>,
}

impl Simulation {
    /// Two regions, two clients per region, ten messages each, no faults.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            shape: WorkloadShape {
                regions: 2,
                clients_per_region: 2,
                messages_per_client: 10,
                pause_ms_max: 300,
                read_percent: 50,
                linked_percent: 0,
                removed_percent: 0,
                group_percent: 0,
            },
            crashes: Vec::new(),
            faults: FaultPlan::none(),
            home_moves: Vec::new(),
            time_limit: Duration::from_secs(300),
            latency_ms: (1, 25),
            planted: Vec::new(),
            edges_per_region: 1,
            edge_limits: SessionLimits::default(),
            lane_hold_ms: home_region::lanes::HOLD_MS_MAX,
            standbys: false,
            standby_crashes: Vec::new(),
            failovers: Vec::new(),
            standby_cuts: Vec::new(),
        }
    }

    /// A run whose every parameter comes from the seed (swarm testing): topology and workload
    /// sizes, latencies, which kinds of fault are on and how intense, and the faults.
    pub fn swarm(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed::derive(seed, "swarm", 0));
        let regions = rng.random_range(1..=3);
        let clients_per_region = if regions == 1 {
            rng.random_range(2..=4)
        } else {
            rng.random_range(1..=3)
        };
        let shape = WorkloadShape {
            regions,
            clients_per_region,
            messages_per_client: rng.random_range(2..=10),
            pause_ms_max: rng.random_range(20..=1_000),
            read_percent: rng.random_range(0..=100),
            // Drawn apart from the rest, so a seed's topology and faults stay as they were.
            linked_percent: StdRng::seed_from_u64(seed::derive(seed, "swarm-links", 0))
                .random_range(0..=LINKED_PERCENT_MAX),
            removed_percent: REMOVED_PERCENT,
            group_percent: GROUP_PERCENT,
        };
        let edges_per_region = rng.random_range(1..=2);
        let latency_min = rng.random_range(1..=10);
        let latency_max = latency_min + rng.random_range(0..=150);
        let safety_ms = rng.random_range(3_000..=20_000);
        let topology = Topology {
            regions,
            edges_per_region,
            clients: (0..regions * clients_per_region)
                .map(|client| client / clients_per_region + 1)
                .collect(),
        };
        let faults = FaultPlan::draw(seed, &topology, safety_ms);
        let home_moves = FaultPlan::draw_home_moves(seed, &topology, safety_ms);
        // Clients stop waiting once every message they could have sent had its full bound.
        let sending_ms = u64::from(shape.messages_per_client) * shape.pause_ms_max;
        let time_limit =
            Duration::from_millis(safety_ms.max(sending_ms) + LIVENESS_BOUND_MS + 10_000);
        Self {
            seed,
            shape,
            crashes: Vec::new(),
            faults,
            home_moves,
            time_limit,
            latency_ms: (latency_min, latency_max),
            planted: Vec::new(),
            edges_per_region,
            edge_limits: draw_edge_limits(seed),
            lane_hold_ms: draw_lane_hold_ms(seed),
            standbys: false,
            standby_crashes: Vec::new(),
            failovers: Vec::new(),
            standby_cuts: Vec::new(),
        }
    }

    /// The chance, in percent, that a client links a second device before anyone sends.
    pub fn linked_percent(mut self, percent: u32) -> Self {
        self.shape.linked_percent = percent;
        self
    }

    /// The chance, in percent, that a linked client's first device removes the second one
    /// while messages are on their way.
    pub fn removed_percent(mut self, percent: u32) -> Self {
        self.shape.removed_percent = percent;
        self
    }

    /// The chance, in percent, that the run has groups (created, sent to and changed while
    /// texts fly: see [`crate::workload::GroupPlan`]).
    pub fn group_percent(mut self, percent: u32) -> Self {
        self.shape.group_percent = percent;
        self
    }

    /// The store faults of every region (each region draws its own seed from them).
    pub fn store_faults(mut self, faults: FaultConfig) -> Self {
        self.faults.store = Some(faults);
        self
    }

    /// Edges in each region (clients prefer one and fall back to the others).
    pub fn edges_per_region(mut self, edges: u32) -> Self {
        self.edges_per_region = edges.max(1);
        self
    }

    /// Every edge's per-connection request limits (the edges' defaults unless set).
    pub fn edge_limits(mut self, limits: SessionLimits) -> Self {
        self.edge_limits = limits;
        self
    }

    /// Plants a known bug (a skipped safety check) for this run, to show the checker finds it.
    pub fn plant(mut self, bug: PlantedBug) -> Self {
        self.planted.push(bug);
        self
    }

    /// The faults this simulation injects (besides [`Simulation::crash_region`]'s).
    pub fn fault_plan(&self) -> &FaultPlan {
        &self.faults
    }

    /// The number of regions (each with one edge).
    pub fn regions(mut self, regions: u32) -> Self {
        self.shape.regions = regions;
        self
    }

    /// Clients homed in each region.
    pub fn clients_per_region(mut self, clients: u32) -> Self {
        self.shape.clients_per_region = clients;
        self
    }

    /// Messages each client sends.
    pub fn messages_per_client(mut self, messages: u32) -> Self {
        self.shape.messages_per_client = messages;
        self
    }

    /// The longest pause a client takes before a send.
    pub fn pause_max(mut self, pause: Duration) -> Self {
        self.shape.pause_ms_max = millis(pause);
        self
    }

    /// Simulated time after which clients stop waiting (their missing messages are reported).
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = limit;
        self
    }

    /// One-way network latency, drawn per datagram between these bounds.
    pub fn latency(mut self, min: Duration, max: Duration) -> Self {
        self.latency_ms = (millis(min), millis(max).max(millis(min)));
        self
    }

    /// Crashes region `region`'s host at `at` and restarts it `down_for` later.
    pub fn crash_region(mut self, region: u32, at: Duration, down_for: Duration) -> Self {
        self.crashes.push(RegionCrash {
            region,
            at,
            down_for,
        });
        self
    }

    /// Gives every region a standby: a host of its own (`standby-N`) whose copy is on a disk of
    /// its own, to which the region ships every commit (the real `relay_replica` shipper and
    /// standby server, over the simulated network) before acknowledging it, refusing writes
    /// while the standby is away. At the end of the run each standby's copy must equal its
    /// region's store ([`Invariant::Standby`](history::Invariant::Standby)).
    pub fn standbys(mut self) -> Self {
        self.standbys = true;
        self
    }

    /// [`Simulation::standbys`], with the standby crashes [`Simulation::swarm`]'s seed draws (in
    /// half the runs, one standby down for 0.2–3 s in the safety phase), drawn apart so the
    /// seed's other faults stay the same.
    pub fn with_standbys(mut self) -> Self {
        let mut rng = StdRng::seed_from_u64(seed::derive(self.seed, "swarm-standbys", 0));
        if rng.random_bool(0.5) {
            let region = rng.random_range(1..=self.shape.regions.max(1));
            let down_for = rng.random_range(200..=3_000);
            // Back by the heal.
            let latest_ms = self.faults.heal_ms.saturating_sub(down_for).max(1);
            let at = rng.random_range(0..latest_ms);
            self = self.crash_standby(
                region,
                Duration::from_millis(at),
                Duration::from_millis(down_for),
            );
        }
        self.standbys()
    }

    /// Fails region `region` over to its standby (turns [`Simulation::standbys`] on): at `at`
    /// every link of the region's primary host is held (what its peers see of a hung machine,
    /// the standby included) for `down_for`. Once the primary has been silent for the lease
    /// (2 s), the standby opens its copy as the region's store at a new failover epoch, serves
    /// as the region on its own host and takes the region's place in the map the edges and
    /// regions resolve it by (its peers file); when the primary's links come back, it dials its
    /// standby, hears it was promoted, and stops for good (fenced). Nothing it acknowledged is
    /// lost: it acknowledged only what its standby had.
    pub fn fail_over(mut self, region: u32, at: Duration, down_for: Duration) -> Self {
        self.failovers.push(RegionCrash {
            region,
            at,
            down_for,
        });
        self.standbys()
    }

    /// [`Simulation::with_standbys`] (its standby crashes included: a standby that took over and
    /// crashed comes back as the region, and still fences its old primary) and one failover
    /// ([`Simulation::fail_over`]) that [`Simulation::swarm`]'s seed draws: a drawn region hangs
    /// at a drawn moment of the safety phase for 2.5–5 s (past its standby's 2 s lease). Drawn
    /// apart, so the seed's other faults stay the same.
    pub fn with_failovers(self) -> Self {
        let this = self.with_standbys();
        let mut rng = StdRng::seed_from_u64(seed::derive(this.seed, "swarm-failovers", 0));
        let region = rng.random_range(1..=this.shape.regions.max(1));
        let down_for = rng.random_range(2_500..=5_000);
        let latest_ms = this.faults.heal_ms.saturating_sub(down_for).max(1);
        let at = rng.random_range(0..latest_ms);
        this.fail_over(
            region,
            Duration::from_millis(at),
            Duration::from_millis(down_for),
        )
    }

    /// Cuts region `region`'s primary off from its standby at `at` for `down_for` (both
    /// directions drop), while both go on hearing everyone else (turns
    /// [`Simulation::standbys`] on, and failover as with [`Simulation::fail_over`]). A cut past
    /// the 2 s lease makes the standby take over while the old primary still runs: nothing the
    /// old primary showed or acknowledged meanwhile may be missing from the standby's copy.
    pub fn cut_off_standby(mut self, region: u32, at: Duration, down_for: Duration) -> Self {
        self.standby_cuts.push(RegionCrash {
            region,
            at,
            down_for,
        });
        self.standbys()
    }

    /// Crashes region `region`'s standby host at `at` and restarts it `down_for` later, on
    /// the same disk (with [`Simulation::standbys`]).
    pub fn crash_standby(mut self, region: u32, at: Duration, down_for: Duration) -> Self {
        self.standby_crashes.push(RegionCrash {
            region,
            at,
            down_for,
        });
        self
    }

    /// Injects the home moves [`Simulation::swarm`] drew for this seed (see
    /// [`FaultKind::HomeMove`]).
    pub fn with_home_moves(mut self) -> Self {
        for fault in std::mem::take(&mut self.home_moves) {
            self.faults.push(fault);
        }
        self.faults.faults.sort_by_key(|fault| fault.start_ms);
        self
    }

    /// An operator moves client `client`'s account home to region `to` at `at` (see
    /// [`FaultKind::HomeMove`]).
    pub fn move_home(mut self, client: u32, to: u32, at: Duration) -> Self {
        self.faults.push(Fault {
            kind: FaultKind::HomeMove,
            start_ms: millis(at),
            end_ms: millis(at) + 1,
            label: format!(
                "{}'s home moves to region {to}",
                history::client_name(client)
            ),
            target: Target::HomeMove { client, to },
        });
        self
    }

    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Runs the simulation to its end and checks the invariants over what it recorded.
    pub fn run(&self) -> Result<Report, SimulationError> {
        let seed = self.seed;
        let failed = |message: String| SimulationError::Run {
            seed,
            message,
            trace: String::new(),
        };
        if self.shape.regions == 0 || self.shape.clients_per_region == 0 {
            return Err(failed("a simulation needs a region and a client".into()));
        }
        if let Some(crash) = self
            .crashes
            .iter()
            .find(|crash| crash.region == 0 || crash.region > self.shape.regions)
        {
            return Err(failed(format!("no region {} to crash", crash.region)));
        }
        if let Some(crash) = self
            .standby_crashes
            .iter()
            .find(|crash| !self.standbys || crash.region == 0 || crash.region > self.shape.regions)
        {
            return Err(failed(format!(
                "no standby of region {} to crash",
                crash.region
            )));
        }
        let _planted = relay_planted::plant(&self.planted);
        let mut faults = self.faults.clone();
        for crash in &self.crashes {
            let target = Target::Region(crash.region);
            faults.push(crash.fault(FaultKind::RegionCrash, target, &region_host(crash.region)));
        }
        for crash in &self.standby_crashes {
            let target = Target::Standby(crash.region);
            faults.push(crash.fault(FaultKind::StandbyCrash, target, &standby_host(crash.region)));
        }
        faults.faults.sort_by_key(|fault| fault.start_ms);
        let pki = Pki::from_seed(seed)?;
        let roots = pki.roots()?;
        let folder = scratch_folder()?;
        let ca_path = folder.path().join("ca.pem");
        std::fs::write(&ca_path, pki.ca_pem())?;

        let mut plan = Plan::draw(seed, self.shape);
        for client in &mut plan.clients {
            if let Some(restarts) = faults.client_restarts.get(&client.client) {
                client.restarts = restarts.clone();
            }
        }
        let plan = Rc::new(plan);
        let packets = PacketLog::new();
        let net_faults = NetFaults::new(faults.drop_ppm, faults.duplicate_ppm);
        let shared = Rc::new(RefCell::new(Shared::default()));
        // Every host runs on this thread, so what their connections draw (ids, TLS randoms and
        // key shares, ticket keys) comes from the seed, back to the operating system when the
        // run ends, however it ends.
        let _connections = relay_net::seeded::seed_thread(seed::derive(seed, "connections", 0));
        let mut sim = turmoil::Builder::new()
            .rng_seed(seed)
            .epoch(sim_epoch())
            .tick_duration(Duration::from_millis(1))
            .min_message_latency(Duration::from_millis(self.latency_ms.0))
            .max_message_latency(Duration::from_millis(self.latency_ms.1))
            .udp_capacity(UDP_DATAGRAMS_BUFFERED_MAX)
            .simulation_duration(self.time_limit + Duration::from_millis(WIND_DOWN_MS))
            .build();

        let region_hosts: BTreeMap<u32, String> = (1..=self.shape.regions)
            .map(|region| (region, region_host(region)))
            .collect();
        let mut disks = BTreeMap::new();
        // Each region's certificate, made once: an operator asks with its region's own.
        let mut identities = BTreeMap::new();
        for &region in region_hosts.keys() {
            identities.insert(region, pki.region(region)?);
        }
        let mut standby_disks = BTreeMap::new();
        let shippers = Rc::new(RefCell::new(Vec::new()));
        let serving: Serving = Arc::new(std::sync::Mutex::new(region_hosts.clone()));
        let promotable = !self.failovers.is_empty() || !self.standby_cuts.is_empty();
        let mut all_hosts: Vec<String> = Vec::new();
        let mut regions = BTreeMap::new();
        let mut fenced: BTreeMap<u32, Rc<Cell<bool>>> = BTreeMap::new();
        for (&region, host) in &region_hosts {
            let disk = MemoryDisk::new();
            disks.insert(region, disk.clone());
            let region_fenced = Rc::new(Cell::new(false));
            fenced.insert(region, region_fenced.clone());
            regions.insert(
                region,
                RegionSoftware {
                    standby: self.standbys.then(|| standby_host(region)),
                    shippers: shippers.clone(),
                    seed,
                    region,
                    lane_hold_ms: self.lane_hold_ms,
                    disk,
                    store_faults: faults.store.clone(),
                    clock: SimClock::skewed(faults.clock_skew_ms.get(host).copied().unwrap_or(0)),
                    net_faults: net_faults.clone(),
                    identity: identities[&region].clone(),
                    roots: roots.clone(),
                    serving: serving.clone(),
                    follow_moves: promotable,
                    fenced: region_fenced,
                    shared: shared.clone(),
                    starts: Rc::new(Cell::new(0)),
                    packets: packets.clone(),
                },
            );
        }
        let mut promotions: BTreeMap<u32, Rc<Cell<u64>>> = BTreeMap::new();
        if self.standbys {
            for (&region, primary) in &regions {
                let disk = MemoryDisk::new();
                standby_disks.insert(region, disk.clone());
                let promoted = Rc::new(Cell::new(0));
                promotions.insert(region, promoted.clone());
                let host = standby_host(region);
                let software = StandbySoftware {
                    seed,
                    region,
                    disk: disk.clone(),
                    net_faults: net_faults.clone(),
                    identity: identities[&region].clone(),
                    roots: roots.clone(),
                    starts: Rc::new(Cell::new(0)),
                    packets: packets.clone(),
                    promotion: promotable.then(|| RegionSoftware {
                        standby: None,
                        disk,
                        starts: Rc::new(Cell::new(0)),
                        ..primary.clone()
                    }),
                    promoted,
                };
                sim.host(host.as_str(), move || software.clone().run());
                all_hosts.push(host);
            }
        }
        for (region, software) in regions {
            let host = region_host(region);
            sim.host(host.as_str(), move || software.clone().run());
            all_hosts.push(host);
        }
        for &region in region_hosts.keys() {
            for edge in 1..=self.edges_per_region {
                let host = nth_edge_host(region, edge);
                let software = EdgeSoftware {
                    seed,
                    region,
                    edge,
                    limits: self.edge_limits,
                    clock: SimClock::skewed(faults.clock_skew_ms.get(&host).copied().unwrap_or(0)),
                    net_faults: net_faults.clone(),
                    identity: pki.edge(region)?,
                    roots: roots.clone(),
                    serving: serving.clone(),
                    follow_moves: promotable,
                    starts: Rc::new(Cell::new(0)),
                    packets: packets.clone(),
                };
                sim.host(host.as_str(), move || software.clone().run());
                all_hosts.push(host);
            }
        }
        let mut preferences = StdRng::seed_from_u64(seed::derive(seed, "edge-preference", 0));
        let deadline_ms = millis(self.time_limit);
        for client in &plan.clients {
            let setup = ClientSetup {
                seed,
                plan: client.clone(),
                everyone: plan.clone(),
                edge_hosts: {
                    // Each client prefers one of its region's edges and falls back to the others.
                    let mut edges: Vec<String> = (1..=self.edges_per_region)
                        .map(|edge| nth_edge_host(client.region, edge))
                        .collect();
                    let first = preferences.random_range(0..edges.len().max(1));
                    edges.rotate_left(first);
                    edges
                },
                edge_port: EDGE_PORT,
                data_dir: folder.path().join(history::client_name(client.client)),
                ca_path: ca_path.clone(),
                deadline_ms,
                shared: shared.clone(),
                packets: packets.clone(),
                net_faults: net_faults.clone(),
            };
            sim.client(
                client_host(client.client).as_str(),
                workload::run_client(setup),
            );
            all_hosts.push(client_host(client.client));
        }

        for (index, fault) in faults.faults.iter().enumerate() {
            let Target::HomeMove { client, to } = fault.target else {
                continue;
            };
            let Some(from) = plan
                .clients
                .iter()
                .find(|planned| planned.client == client)
                .map(|planned| planned.region)
            else {
                continue;
            };
            let operator = Operator {
                seed: seed::derive(seed, "operator", index as u64),
                at_ms: fault.start_ms,
                clients: plan.clients.len(),
                give_up_ms: deadline_ms,
                client,
                from,
                to,
                label: fault.label.clone(),
                identity: identities[&from].clone(),
                roots: roots.clone(),
                serving: serving.clone(),
                packets: packets.clone(),
                net_faults: net_faults.clone(),
                shared: shared.clone(),
            };
            sim.client(format!("operator-{index}").as_str(), operator.run());
            all_hosts.push(format!("operator-{index}"));
        }
        // Links of `host` with each of `others`, both ways.
        let links_with = |host: &String, others: &[String]| -> Vec<(String, String)> {
            others
                .iter()
                .filter(|other| *other != host)
                .flat_map(|other| [(host.clone(), other.clone()), (other.clone(), host.clone())])
                .collect()
        };
        let on_links = |kind, span: &RegionCrash, label, links, effect| Fault {
            kind,
            start_ms: millis(span.at),
            end_ms: millis(span.at + span.down_for),
            label,
            target: Target::Links { links, effect },
        };
        for failover in &self.failovers {
            let host = region_host(failover.region);
            faults.push(on_links(
                FaultKind::Failover,
                failover,
                format!("{host} hangs (failover)"),
                links_with(&host, &all_hosts),
                LinkEffect::Hold,
            ));
        }
        for cut in &self.standby_cuts {
            let (host, standby) = (region_host(cut.region), standby_host(cut.region));
            faults.push(on_links(
                FaultKind::Partition,
                cut,
                format!("{host} cut off from {standby}"),
                links_with(&host, &[standby]),
                LinkEffect::Drop,
            ));
        }
        faults.faults.sort_by_key(|fault| fault.start_ms);

        let mut actions = faults.actions().into_iter().peekable();
        let mut links = LinkModel::default();
        // A run that fails midway keeps what it recorded, so `--trace` can show how it got there.
        let failed_at = |message: String| SimulationError::Run {
            seed,
            message,
            trace: shared
                .borrow()
                .trace
                .iter()
                .map(|event| format!("{event}\n"))
                .collect(),
        };
        let record = |what: What, at: Duration| {
            shared.borrow_mut().trace.push(TraceEvent {
                at_ms: millis(at),
                what,
            });
        };
        loop {
            let finished = sim.step().map_err(|error| failed_at(error.to_string()))?;
            // With standbys the world runs on (within the wind-down) until every fault ended (a
            // standby down restarts) and every old primary whose standby took over heard it was
            // fenced.
            let failovers_settled = !self.standbys
                || (actions.peek().is_none()
                    && promotions.iter().all(|(region, epoch)| {
                        epoch.get() == 0 || fenced.get(region).is_none_or(|fenced| fenced.get())
                    }))
                || sim.elapsed() >= self.time_limit + Duration::from_millis(WIND_DOWN_MS / 2);
            if finished && failovers_settled {
                break;
            }
            let now = sim.elapsed();
            while let Some((_, action)) = actions.next_if(|&(at, _)| at <= millis(now)) {
                let (fault, starts) = match action {
                    Action::Heal => {
                        net_faults.heal();
                        if faults.heal_ms > 0 {
                            record(What::Healed, now);
                        }
                        continue;
                    }
                    Action::Start(index) => (&faults.faults[index], true),
                    Action::End(index) => (&faults.faults[index], false),
                };
                match &fault.target {
                    // Its operator asks the region at the time (and records it).
                    Target::HomeMove { .. } => continue,
                    Target::Region(region) => {
                        let host = region_host(*region);
                        if starts {
                            sim.crash(host.as_str());
                            // The process is gone: whatever it had not committed is lost too.
                            if let Some(disk) = disks.get(region) {
                                disk.crash();
                            }
                            record(What::RegionCrashed { region: *region }, now);
                        } else {
                            sim.bounce(host.as_str());
                            record(What::RegionRestarted { region: *region }, now);
                        }
                        continue;
                    }
                    Target::Edge(host) => {
                        if starts {
                            sim.crash(host.as_str());
                        } else {
                            sim.bounce(host.as_str());
                        }
                    }
                    Target::Standby(region) => {
                        let host = standby_host(*region);
                        if starts {
                            sim.crash(host.as_str());
                        } else {
                            sim.bounce(host.as_str());
                        }
                    }
                    Target::Links {
                        links: targets,
                        effect,
                    } => {
                        for call in links.change(targets, *effect, starts) {
                            call.apply(&sim);
                        }
                    }
                }
                let (kind, label) = (fault.kind, fault.label.clone());
                let what = if starts {
                    What::FaultStarted { kind, label }
                } else {
                    What::FaultEnded { kind, label }
                };
                record(what, now);
            }
        }
        // Standbys settle: the world runs on (bounded) until each copy reached its region's
        // store, so the check compares them at rest.
        // A standby that took over is its region's store now: its copy is compared with
        // nothing, and the store checks read it.
        let promoted: BTreeMap<u32, u64> = promotions
            .iter()
            .filter(|(_, epoch)| epoch.get() > 0)
            .map(|(&region, epoch)| (region, epoch.get()))
            .collect();
        for region in promoted.keys() {
            if let Some(copy) = standby_disks.remove(region) {
                disks.insert(*region, copy);
            }
        }
        for _ in 0..STANDBY_SETTLE_STEPS_MAX {
            let settled = standby_disks.iter().all(|(region, copy)| {
                disks
                    .get(region)
                    .is_none_or(|store| history::standby_caught_up(store, copy))
            });
            if settled {
                break;
            }
            sim.step().map_err(|error| failed_at(error.to_string()))?;
        }
        let elapsed = sim.elapsed();
        drop(sim);
        let shipping = shippers
            .borrow()
            .iter()
            .fold(ShippingFigures::default(), |sum, shipper| {
                let stats = shipper.stats();
                ShippingFigures {
                    sessions: sum.sessions + stats.sessions,
                    full_copies: sum.full_copies + stats.full_copies,
                    groups_sent: sum.groups_sent + stats.groups_sent,
                    unconfirmed_commits: sum.unconfirmed_commits + stats.unconfirmed_commits,
                }
            });

        let Shared {
            trace, views, docs, ..
        } = Rc::try_unwrap(shared)
            .map(RefCell::into_inner)
            .map_err(|_| failed("the clients' record is still shared".into()))?;
        let planned = plan.recipients();
        let mut violations = history::check(&planned, &trace, &views);
        violations.extend(history::check_convergence(&planned, &trace, &docs));
        violations.extend(history::check_groups(&plan.groups, &trace));
        let group_messages: BTreeSet<GroupMessageRef> = plan.group_messages().collect();
        for (region, disk) in &disks {
            let mut stored = Vec::new();
            disk.for_each_latest(|key, value| stored.push((key.to_vec(), value.to_vec())));
            violations.extend(history::check_blindness(
                &format!("region {region}'s store"),
                &planned,
                stored
                    .iter()
                    .map(|(key, value)| (key.as_slice(), value.as_slice())),
            ));
            violations.extend(history::check_group_blindness(
                &format!("region {region}'s store"),
                &group_messages,
                stored
                    .iter()
                    .map(|(key, value)| (key.as_slice(), value.as_slice())),
            ));
        }
        for (region, copy) in &standby_disks {
            if let Some(disk) = disks.get(region) {
                violations.extend(history::check_standby(*region, disk, copy));
            }
        }
        let slowest_delivery_ms = history::slowest_delivery_ms(&trace, &planned)
            .max(history::slowest_group_delivery_ms(&plan.groups, &trace));
        let injected = injected(&faults, &trace);
        let store_commits_failed = disks.values().map(MemoryDisk::failed_commits).sum();
        Ok(Report {
            seed,
            elapsed,
            trace,
            views,
            docs,
            planned,
            groups: plan.groups.clone(),
            violations,
            shape: self.shape,
            faults: injected,
            heal_ms: faults.heal_ms,
            slowest_delivery_ms,
            packets: packets.fingerprint(),
            store_commits_failed,
            standby_versions: standby_disks
                .iter()
                .map(|(&region, copy)| (region, copy.version()))
                .collect(),
            promoted,
            shipping,
        })
    }
}

/// The turmoil host name of region `region`.
pub fn region_host(region: u32) -> String {
    format!("region-{region}")
}

/// The turmoil host name of region `region`'s standby.
pub fn standby_host(region: u32) -> String {
    format!("standby-{region}")
}

/// The turmoil host name of region `region`'s (first) edge.
pub fn edge_host(region: u32) -> String {
    format!("edge-{region}")
}

/// The turmoil host name of region `region`'s edge number `edge` (from 1).
pub fn nth_edge_host(region: u32, edge: u32) -> String {
    if edge <= 1 {
        edge_host(region)
    } else {
        format!("edge-{region}.{edge}")
    }
}

/// The turmoil host name of client `client`.
pub fn client_host(client: u32) -> String {
    format!("client-{client}")
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A folder for the clients' data directories, in memory where the system has one (the
/// clients' SQLite stores sync every commit; on a RAM disk that costs nothing).
fn scratch_folder() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(folder) = tempfile::Builder::new()
            .prefix("relay-sim-")
            .tempdir_in(shm)
    {
        return Ok(folder);
    }
    tempfile::Builder::new().prefix("relay-sim-").tempdir()
}

/// `port` on every interface of the host (turmoil binds nothing else).
fn any_address(port: u16) -> SocketAddr {
    SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port)
}

/// The seed of a host's next start: `host` (its component and number, the low 32 bits free)
/// plus how many times it started before, so a restarted host draws fresh but repeatable ids.
fn next_incarnation(starts: &Cell<u64>, seed: u64, component: &str, host: u64) -> u64 {
    let start = starts.get();
    starts.set(start + 1);
    seed::derive(seed, component, host | start)
}

/// Which host serves each region now: its own, or its standby's once that took over (what a
/// peers file says in a devnet).
type Serving = Arc<std::sync::Mutex<BTreeMap<u32, String>>>;

/// Resolves a region to the internal address of the host that serves it now.
fn serving_resolver(serving: &Serving) -> PeerResolver {
    let serving = serving.clone();
    Box::new(move |region| {
        let host = serving.lock().ok()?.get(&region).cloned()?;
        Some(SocketAddr::new(turmoil::lookup(host.as_str()), REGION_PORT))
    })
}

/// The edges' request limits of a swarm run: the defaults in two runs of three; in the third, a
/// tight bucket (an operator's choice, or an edge protecting itself) that throttles the
/// clients' pipelined sends. A throttled envelope is retried after the ones behind it went
/// through: real gaps in a chat, which only the region's `sender_seq` check keeps out of the
/// log. Drawn from its own stream, so the rest of a seed's run does not move.
fn draw_edge_limits(seed: u64) -> SessionLimits {
    let mut rng = StdRng::seed_from_u64(seed::derive(seed, "edge-limits", 0));
    if rng.random_range(0..3) != 0 {
        return SessionLimits::default();
    }
    SessionLimits {
        requests_per_second: rng.random_range(5..=50),
        requests_burst: rng.random_range(2..=20),
        ..SessionLimits::default()
    }
}

/// How long the regions' chat lanes hold an early envelope in a swarm run: the default in half
/// the runs; in the other half nothing (0 ms) or a short hold, so that envelopes a network
/// reordered reach the chat log out of order and its `sender_seq` check is exercised (with the
/// default hold only a predecessor delayed a whole second gets there). Drawn from its own
/// stream, so the rest of a seed's run does not move.
fn draw_lane_hold_ms(seed: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed::derive(seed, "lane-hold", 0));
    match rng.random_range(0..6) {
        0 | 1 => 0,
        2 => rng.random_range(1..=50),
        _ => home_region::lanes::HOLD_MS_MAX,
    }
}

/// Authentication nonces from a seeded generator.
#[derive(Debug)]
struct SeededNonces {
    state: std::sync::Mutex<u64>,
}

impl SeededNonces {
    fn new(seed: u64) -> Self {
        Self {
            state: std::sync::Mutex::new(seed),
        }
    }
}

impl NonceSource for SeededNonces {
    fn fill(&self, bytes: &mut [u8]) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for chunk in bytes.chunks_mut(8) {
            *state = seed::split_mix(*state);
            let word = state.to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// Where the seed comes from in tests: `RELAY_SIM_SEED` when set (to reproduce a failure),
/// else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("RELAY_SIM_SEED")
        .ok()
        .and_then(|seed| seed.trim().parse().ok())
        .unwrap_or(default)
}
