//! Deterministic simulation of the whole relay: hosts, network and time simulated by turmoil in
//! one thread, so a run is reproduced from its seed.
//!
//! - [`net`] plugs turmoil's simulated UDP into the services' [`SocketFactory`]
//!   (relay_net), so the real region and edge services and the real QUIC stack run
//!   unchanged in the simulation, over links that can drop, delay, partition and hold packets.
//! - [`simulation`] builds the world from a seed ([`Simulation`]): regions on the memory store,
//!   their edges, and clients driving the real client library ([`workload`]: sends, retries,
//!   syncs, read receipts, app restarts). [`faults`] draws what breaks and when (crashes,
//!   partitions both ways and one way, clogs, pauses, swizzle-clogs, loss, duplication, clock
//!   skew, store faults) for a safety phase, then heals everything for a liveness phase;
//!   [`history`] records the run in simulation terms and checks the invariants over it.
//!   [`pki`], [`time`] and [`seed`] supply certificates, the simulated wall clock and derived
//!   seeds.
//! - [`swarm`] sweeps many seeds, each picking its own topology, workload and fault mix
//!   ([`Simulation::swarm`]), on several threads, and sums them up ([`SwarmSummary`]).
//! - [`real`] runs the same workload and checker on a devnet's real processes under SIGKILL,
//!   SIGSTOP and nftables partitions (`relayd chaos`; the failover drills reuse it).
//! - [`fuzz`] holds the entry points of the fuzz targets (every decoder of peer or file input).
//!
//! [`SocketFactory`]: relay_net::SocketFactory

pub mod drill;
pub mod faults;
pub mod fuzz;
pub mod history;
pub mod net;
pub mod pki;
pub mod real;
pub mod seed;
pub mod simulation;
pub mod swarm;
pub mod time;
pub mod workload;

pub use simulation::{Report, ShippingFigures, Simulation, SimulationError, seed_from_env};
pub use swarm::{GroupFigures, Swarm, SwarmSummary};
