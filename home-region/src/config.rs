//! The region's configuration file and its peers file (TOML), loaded the way every service's
//! are ([`relay_net::config`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use relay_net::config::{ConfigError, RegionAddress};
use serde::{Deserialize, Serialize};

/// Configuration of one region process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// This region's number (1, 2, …). Accounts registered through this region's edges live here.
    pub region: u32,
    /// UDP address the internal QUIC server binds (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Folder of the embedded store (`region.redb` inside it, and the `store-id` marker file
    /// beside it that names the store the region created there).
    pub data_dir: PathBuf,
    /// The region that writes the global directory (names are unique there).
    pub directory_writer: u32,
    /// TOML file listing every region's internal address (`[[regions]] region = 1, address =
    /// "127.0.1.1:4433"`). Read again whenever a peer is unknown or unreachable, so a launcher
    /// can write it after the regions have bound their ports.
    pub peers_file: PathBuf,
    /// PEM file of the deployment's CA: peers (edges, regions) must present a certificate it
    /// signed. Its SHA-256 is also the deployment id the region's store records, so a store of
    /// another deployment is refused at start.
    pub ca_cert: PathBuf,
    /// PEM certificate chain of this region (server and client side of internal links).
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
}

/// The peers file: where every region listens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersFile {
    /// One entry per region.
    #[serde(default)]
    pub regions: Vec<RegionAddress>,
}

impl RegionConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        relay_net::config::load(path, |config: RegionConfig| {
            config.validate()?;
            Ok(config)
        })
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.region == 0 {
            return Err(ConfigError::Value("region numbers start at 1".into()));
        }
        if self.directory_writer == 0 {
            return Err(ConfigError::Value(
                "directory_writer must name a region (from 1)".into(),
            ));
        }
        Ok(())
    }
}

impl PeersFile {
    /// Reads a peers file; a missing file is an empty list (peers not known yet).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(relay_net::config::load_if_present(path)?.unwrap_or_default())
    }

    /// A resolver that reads the peers file at `path` again on every call, so a launcher can
    /// write it after the regions have bound their ports.
    pub fn resolver(path: PathBuf) -> relay_net::PeerResolver {
        Box::new(move |region| match PeersFile::load(&path) {
            Ok(peers) => peers.address_of(region),
            Err(error) => {
                tracing::warn!(%error, "cannot read the peers file");
                None
            }
        })
    }

    /// The address of a region, if listed.
    pub fn address_of(&self, region: u32) -> Option<SocketAddr> {
        relay_net::config::address_of(&self.regions, region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../region.example.toml");

    #[test]
    fn example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("region.example.toml");
        let config = RegionConfig::load(&path).expect("the example loads");
        assert_eq!(config.region, 1);
        assert_eq!(config, toml::from_str(EXAMPLE).expect("example parses"));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let mut text = EXAMPLE.to_string();
        text.push_str("\nsurprise = 1\n");
        assert!(toml::from_str::<RegionConfig>(&text).is_err());
        let mut config: RegionConfig = toml::from_str(EXAMPLE).expect("example parses");
        config.region = 0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn missing_peers_file_is_empty() {
        let peers = PeersFile::load(Path::new("/nonexistent/peers.toml")).expect("empty");
        assert!(peers.regions.is_empty());
    }
}
