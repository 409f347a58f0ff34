//! The locator's configuration: the TOML form, its checks, and the checked form the core serves.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use hickory_server::proto::rr::Name;
use relay_net::config::ConfigError;
use serde::{Deserialize, Serialize};

use super::LocatorError;
use super::prefix::IpNetwork;
use crate::limits::{EDGES_PER_REGION_MAX, LOCATOR_TTL_SECONDS_DEFAULT, TTL_SECONDS_MAX};

/// The locator's configuration, as read from the `[locator]` part of `relayd`'s TOML file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocatorConfig {
    /// Address to serve DNS on, UDP and TCP on the same port; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The zone the locator is authoritative for, an absolute name such as `relay.test.`.
    pub zone: String,
    /// TTL of every answer, in seconds; short, so clients move quickly after a failover.
    pub ttl_seconds: u32,
    /// The region table; the first entry is the default region for clients no network matches.
    pub regions: Vec<RegionEntry>,
}

/// One region of the locator's table: which client networks it serves and with which edges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionEntry {
    /// The region number (region k serves 127.0.k.0/24 in the devnet).
    pub region: u32,
    /// Client networks of this region as CIDRs, IPv4 or IPv6, such as `127.0.1.0/24`.
    #[serde(default)]
    pub networks: Vec<String>,
    /// The QUIC addresses of the region's edges, in the order they are answered.
    pub edges: Vec<SocketAddr>,
}

impl Default for LocatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 5300)),
            zone: "relay.test.".to_owned(),
            ttl_seconds: LOCATOR_TTL_SECONDS_DEFAULT,
            regions: Vec::new(),
        }
    }
}

impl LocatorConfig {
    /// A commented example configuration with the devnet's two regions.
    pub const EXAMPLE_TOML: &'static str = include_str!("../../locator.example.toml");

    /// Reads a configuration file and checks it, as every service's is loaded
    /// ([`relay_net::config`]): every error names the file.
    pub fn load(path: &Path) -> Result<ValidLocatorConfig, ConfigError> {
        relay_net::config::load(path, |config: LocatorConfig| {
            config
                .validate()
                .map_err(|error| ConfigError::Value(error.to_string()))
        })
    }

    /// Parses a configuration from TOML text (not yet validated: see [`Self::validate`]).
    pub fn from_toml_str(text: &str) -> Result<Self, LocatorError> {
        Ok(toml::from_str(text)?)
    }

    /// Checks the configuration and turns it into the form the locator serves.
    pub fn validate(&self) -> Result<ValidLocatorConfig, LocatorError> {
        let zone = parse_zone(&self.zone)?;
        if self.ttl_seconds > TTL_SECONDS_MAX {
            return Err(LocatorError::TtlTooLarge {
                ttl_seconds: self.ttl_seconds,
            });
        }
        if self.regions.is_empty() {
            return Err(LocatorError::NoRegions);
        }
        let edge_name = child_name(&zone, &["edge"], &self.zone)?;
        let srv_name = child_name(&zone, &["_relay", "_udp", "edge"], &self.zone)?;
        let hostmaster_name = child_name(&zone, &["hostmaster"], &self.zone)?;

        let mut region_numbers = HashSet::new();
        let mut network_owners: HashMap<IpNetwork, u32> = HashMap::new();
        let mut edge_addresses = HashSet::new();
        let mut regions = Vec::with_capacity(self.regions.len());
        for entry in &self.regions {
            if !region_numbers.insert(entry.region) {
                return Err(LocatorError::DuplicateRegion {
                    region: entry.region,
                });
            }
            let mut networks = Vec::with_capacity(entry.networks.len());
            for text in &entry.networks {
                let network =
                    IpNetwork::parse(text).map_err(|reason| LocatorError::InvalidNetwork {
                        region: entry.region,
                        network: text.clone(),
                        reason,
                    })?;
                if let Some(first_region) = network_owners.insert(network, entry.region) {
                    return Err(LocatorError::DuplicateNetwork {
                        network: network.to_string(),
                        first_region,
                        second_region: entry.region,
                    });
                }
                networks.push(network);
            }
            if entry.edges.is_empty() {
                return Err(LocatorError::RegionWithoutEdges {
                    region: entry.region,
                });
            }
            if entry.edges.len() > EDGES_PER_REGION_MAX {
                return Err(LocatorError::TooManyEdges {
                    region: entry.region,
                    count: entry.edges.len(),
                });
            }
            let mut edges = Vec::with_capacity(entry.edges.len());
            for (index, &address) in entry.edges.iter().enumerate() {
                let invalid = |reason| LocatorError::InvalidEdge {
                    region: entry.region,
                    edge: address,
                    reason,
                };
                if address.port() == 0 {
                    return Err(invalid("port 0 cannot be connected to"));
                }
                let ip = address.ip();
                if ip.is_unspecified() || ip.is_multicast() {
                    return Err(invalid(
                        "the address must be a unicast address clients can connect to",
                    ));
                }
                if !edge_addresses.insert(address) {
                    return Err(LocatorError::DuplicateEdge {
                        edge: address,
                        region: entry.region,
                    });
                }
                let label = format!("edge-r{}-{}", entry.region, index + 1);
                let host_name = child_name(&zone, &[label.as_str()], &self.zone)?;
                edges.push(Edge { address, host_name });
            }
            regions.push(Region {
                number: entry.region,
                networks,
                edges,
            });
        }
        Ok(ValidLocatorConfig {
            listen: self.listen,
            zone,
            ttl_seconds: self.ttl_seconds,
            edge_name,
            srv_name,
            hostmaster_name,
            regions,
        })
    }
}

/// A checked [`LocatorConfig`]: parsed networks and names; only [`LocatorConfig::validate`]
/// makes one.
#[derive(Clone, Debug)]
pub struct ValidLocatorConfig {
    pub(super) listen: SocketAddr,
    pub(super) zone: Name,
    pub(super) ttl_seconds: u32,
    pub(super) edge_name: Name,
    pub(super) srv_name: Name,
    /// The SOA's responsible-person name, `hostmaster.<zone>`.
    pub(super) hostmaster_name: Name,
    pub(super) regions: Vec<Region>,
}

impl ValidLocatorConfig {
    /// The address to serve DNS on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The zone, lowercase and absolute.
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// The TTL of every answer, in seconds.
    pub fn ttl_seconds(&self) -> u32 {
        self.ttl_seconds
    }

    /// The name clients resolve to find edges: `edge.<zone>`.
    pub fn edge_name(&self) -> &Name {
        &self.edge_name
    }

    /// The SRV name clients resolve to learn edge ports: `_relay._udp.edge.<zone>`.
    pub fn srv_name(&self) -> &Name {
        &self.srv_name
    }
}

/// A region as served: its number, client networks and edges.
#[derive(Clone, Debug)]
pub(super) struct Region {
    pub(super) number: u32,
    pub(super) networks: Vec<IpNetwork>,
    pub(super) edges: Vec<Edge>,
}

/// One edge: its QUIC address and its name in the zone (`edge-r<region>-<i>.<zone>`).
#[derive(Clone, Debug)]
pub(super) struct Edge {
    pub(super) address: SocketAddr,
    pub(super) host_name: Name,
}

/// Checks the zone text (letters, digits and hyphens; absolute; not the root) and parses it.
fn parse_zone(text: &str) -> Result<Name, LocatorError> {
    let invalid = |reason: String| LocatorError::InvalidZone {
        zone: text.to_owned(),
        reason,
    };
    let Some(relative) = text.strip_suffix('.') else {
        return Err(invalid(
            "it must be absolute, ending with a dot, such as \"relay.test.\"".to_owned(),
        ));
    };
    if relative.is_empty() {
        return Err(invalid("the root zone cannot be served".to_owned()));
    }
    for label in relative.split('.') {
        let well_formed = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !well_formed {
            return Err(invalid(format!(
                "label {label:?} must be 1 to 63 letters, digits or inner hyphens"
            )));
        }
    }
    Name::from_ascii(text)
        .map(|name| name.to_lowercase())
        .map_err(|error| invalid(error.to_string()))
}

/// `labels` prepended to `zone`; fails when the result is longer than a name may be.
fn child_name(zone: &Name, labels: &[&str], zone_text: &str) -> Result<Name, LocatorError> {
    Name::from_labels(labels.iter().copied())
        .and_then(|relative| relative.append_domain(zone))
        .map_err(|error| LocatorError::InvalidZone {
            zone: zone_text.to_owned(),
            reason: format!("{}.<zone> is not a valid name: {error}", labels.join(".")),
        })
}
