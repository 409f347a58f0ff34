//! Deterministic simulation of the whole relay: hosts, network and time simulated by turmoil in
//! one thread, so a run is reproduced from its seed.
//!
//! [`net`] plugs turmoil's simulated UDP into the services' [`SocketFactory`]
//! (relay_proto::net), so the real region and edge services and the real QUIC stack run
//! unchanged in the simulation, over links that can drop, delay, partition and hold packets.
//!
//! [`fuzz`] holds the entry points of the fuzz targets (every decoder of peer or file input).
//!
//! [`SocketFactory`]: relay_proto::net::SocketFactory

pub mod fuzz;
pub mod net;
