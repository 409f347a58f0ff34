//! The edge's configuration file (TOML), loaded the way every service's is
//! ([`relay_net::config`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use relay_net::config::{ConfigError, RegionAddress};
use serde::{Deserialize, Serialize};

use crate::session::SessionLimits;

/// Configuration of one edge process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// The region this edge belongs to: devices registering through it are homed there.
    pub region: u32,
    /// UDP address devices connect to over QUIC (port 0 picks a free port).
    pub listen: SocketAddr,
    /// PEM file of the deployment's CA (regions' certificates are checked against it).
    pub ca_cert: PathBuf,
    /// PEM certificate chain: presented to devices (name `edge.relay.test`) and to regions.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// Every region's internal address.
    pub regions: Vec<RegionAddress>,
    /// A peers file (as regions read, `[[regions]] region = 1, address = "…"`) read again
    /// whenever a region is connected to: an address there replaces the one in `regions`, so
    /// the edge follows a region that moved (a standby that took over). None by default.
    #[serde(default)]
    pub peers_file: Option<PathBuf>,
    /// Per-connection limits.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// Per-connection and per-address limits (every other bound of the edge is a constant in
/// `relay_edge::limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sustained requests per second one device connection may make.
    pub requests_per_second: u32,
    /// Requests one device connection may make in a burst.
    pub requests_burst: u32,
    /// Sustained new device connections per second one source address (an IPv4 address, an
    /// IPv6 /64) may open; more are refused `Throttled` with a retry-after.
    pub connections_per_second_per_address: u32,
    /// New device connections one source address may open in a burst.
    pub connections_burst_per_address: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let defaults = SessionLimits::default();
        Self {
            requests_per_second: defaults.requests_per_second,
            requests_burst: defaults.requests_burst,
            connections_per_second_per_address: defaults.connections_per_second_per_address,
            connections_burst_per_address: defaults.connections_burst_per_address,
        }
    }
}

impl EdgeConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        relay_net::config::load(path, |config: EdgeConfig| {
            config.validate()?;
            Ok(config)
        })
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.region == 0 {
            return Err(ConfigError::Value("region numbers start at 1".into()));
        }
        if relay_net::config::address_of(&self.regions, self.region).is_none() {
            return Err(ConfigError::Value(format!(
                "regions must list the edge's own region {}",
                self.region
            )));
        }
        if self.limits.requests_per_second == 0
            || self.limits.requests_burst == 0
            || self.limits.connections_per_second_per_address == 0
            || self.limits.connections_burst_per_address == 0
        {
            return Err(ConfigError::Value("limits must be at least 1".into()));
        }
        Ok(())
    }

    /// The session limits this configuration sets.
    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            requests_per_second: self.limits.requests_per_second,
            requests_burst: self.limits.requests_burst,
            connections_per_second_per_address: self.limits.connections_per_second_per_address,
            connections_burst_per_address: self.limits.connections_burst_per_address,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../edge.example.toml");

    #[test]
    fn example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("edge.example.toml");
        let config = EdgeConfig::load(&path).expect("the example loads");
        assert_eq!(config.regions.len(), 2);
        assert_eq!(config, toml::from_str(EXAMPLE).expect("example parses"));
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(toml::from_str::<EdgeConfig>(&format!("{EXAMPLE}\nextra = true\n")).is_err());
        let mut config: EdgeConfig = toml::from_str(EXAMPLE).expect("example parses");
        config.region = 3;
        assert!(
            config.validate().is_err(),
            "own region missing from regions"
        );
    }
}
