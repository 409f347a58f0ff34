//! The DNS edge locator: an authoritative DNS server for Relay's zone (`relay.test.` by default)
//! that tells a client which edges to connect to.
//!
//! This module owns the locator's configuration ([`LocatorConfig`], checked into a
//! [`ValidLocatorConfig`]), the decision logic ([`Locator`], sans-IO: a question and a client
//! address in, an [`Answer`] out) and the runtime shell ([`LocatorServer`]: hickory-server over
//! one UDP socket and one TCP listener on the same port).
//!
//! # Names in the zone
//! | name | types | answer |
//! |---|---|---|
//! | `<zone>` | SOA | the zone's SOA |
//! | `edge.<zone>` | A, AAAA | the addresses of the client's region's edges |
//! | `_relay._udp.edge.<zone>` | SRV | one record per edge of the client's region (port = the edge's QUIC port), target `edge-r<region>-<i>.<zone>`, addresses in the additional section |
//! | `edge-r<region>-<i>.<zone>` | A, AAAA | the address of the i-th edge (from 1, in config order) of that region |
//!
//! Other names in the zone get NXDOMAIN, other types on existing names get NODATA (NOERROR, no
//! answers); both carry the zone's SOA in the authority section. Names outside the zone, and
//! classes other than IN, get REFUSED. Answers inside the zone have the AA bit set and use the
//! configured TTL.
//!
//! # Choosing the client's region
//! The client address is the address of the EDNS Client Subnet option (RFC 7871) when the query
//! carries one with a non-zero source prefix length, otherwise the query's source address. The
//! region is the one owning the longest network prefix containing that address. **When no
//! network contains the address, the first region in config order (the default region)
//! answers.** A query's Client Subnet option is echoed back with a scope prefix length covering
//! exactly the addresses that would get the same answer, so resolvers cache it correctly.
//!
//! The locator serves the edges listed in its configuration; it does not probe their health.
//!
//! The module is split by what each part owns: [`config`] (the TOML form and its checks),
//! [`core`] (the sans-IO decisions), [`prefix`] (address and network arithmetic) and
//! [`server`] (the hickory shell).

mod config;
mod core;
mod prefix;
mod server;
#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;

use hickory_server::net::NetError;

pub use config::{LocatorConfig, RegionEntry, ValidLocatorConfig};
pub use core::{Answer, Locator, QueryOrigin};
pub use server::{LocatorServer, serve};

use crate::limits::LOCATOR_SHUTDOWN_TIMEOUT_MS;
use crate::limits::{EDGES_PER_REGION_MAX, TTL_SECONDS_MAX};

/// Everything that can go wrong configuring or running the locator.
#[derive(Debug, thiserror::Error)]
pub enum LocatorError {
    /// The configuration file is not valid TOML for a [`LocatorConfig`].
    #[error("locator config: {0}")]
    ParseConfig(#[from] toml::de::Error),
    /// The zone is not a valid absolute domain name.
    #[error("locator config: zone {zone:?} is invalid: {reason}")]
    InvalidZone {
        /// The zone as configured.
        zone: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The TTL is above [`TTL_SECONDS_MAX`].
    #[error("locator config: ttl_seconds = {ttl_seconds} is above the maximum {TTL_SECONDS_MAX}")]
    TtlTooLarge {
        /// The TTL as configured.
        ttl_seconds: u32,
    },
    /// No region is configured.
    #[error("locator config: no regions; at least one [[regions]] entry is needed")]
    NoRegions,
    /// Two region entries have the same region number.
    #[error("locator config: region {region} is listed more than once")]
    DuplicateRegion {
        /// The repeated region number.
        region: u32,
    },
    /// A network is not a CIDR like `127.0.1.0/24` or `fd00::/64`.
    #[error("locator config: region {region}: network {network:?} is invalid: {reason}")]
    InvalidNetwork {
        /// The region listing the network.
        region: u32,
        /// The network as configured.
        network: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The same network is listed twice, so the region it belongs to is ambiguous.
    #[error(
        "locator config: network {network} is listed by region {first_region} and by region {second_region}"
    )]
    DuplicateNetwork {
        /// The repeated network.
        network: String,
        /// The first region listing it.
        first_region: u32,
        /// The second region listing it.
        second_region: u32,
    },
    /// A region lists no edges.
    #[error("locator config: region {region} has no edges; list at least one edge address")]
    RegionWithoutEdges {
        /// The region without edges.
        region: u32,
    },
    /// A region lists more than [`EDGES_PER_REGION_MAX`] edges.
    #[error(
        "locator config: region {region} lists {count} edges, more than the maximum {EDGES_PER_REGION_MAX}"
    )]
    TooManyEdges {
        /// The region.
        region: u32,
        /// How many edges it lists.
        count: usize,
    },
    /// An edge address cannot be handed to clients.
    #[error("locator config: region {region}: edge {edge} is invalid: {reason}")]
    InvalidEdge {
        /// The region listing the edge.
        region: u32,
        /// The edge address.
        edge: SocketAddr,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The same edge address is listed twice.
    #[error("locator config: edge {edge} is listed more than once (last in region {region})")]
    DuplicateEdge {
        /// The repeated edge address.
        edge: SocketAddr,
        /// The region with the second listing.
        region: u32,
    },
    /// A socket could not be bound.
    #[error("locator: cannot bind {protocol} on {address}: {source}")]
    Bind {
        /// `UDP` or `TCP`.
        protocol: &'static str,
        /// The address asked for.
        address: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// The DNS server failed while serving.
    #[error("locator: server failed: {0}")]
    Server(#[from] NetError),
    /// The DNS server stopped although no shutdown was requested.
    #[error("locator: server stopped unexpectedly")]
    StoppedUnexpectedly,
    /// The DNS server did not stop within [`LOCATOR_SHUTDOWN_TIMEOUT_MS`].
    #[error("locator: server did not stop within {LOCATOR_SHUTDOWN_TIMEOUT_MS} ms")]
    ShutdownTimedOut,
}
