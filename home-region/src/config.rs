//! The region's configuration file (TOML).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    pub regions: Vec<PeerEntry>,
}

/// One region's internal address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// The region number.
    pub region: u32,
    /// Its internal QUIC address.
    pub address: SocketAddr,
}

/// Why a configuration file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("invalid configuration in {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl RegionConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: RegionConfig = toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.region == 0 {
            return Err(ConfigError::Invalid("region numbers start at 1".into()));
        }
        if self.directory_writer == 0 {
            return Err(ConfigError::Invalid(
                "directory_writer must name a region (from 1)".into(),
            ));
        }
        Ok(())
    }
}

impl PeersFile {
    /// Reads a peers file; a missing file is an empty list (peers not known yet).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.to_string(),
        })
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
        self.regions
            .iter()
            .find(|entry| entry.region == region)
            .map(|entry| entry.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../region.example.toml");

    #[test]
    fn example_config_loads() {
        let config: RegionConfig = toml::from_str(EXAMPLE).expect("example parses");
        config.validate().expect("example is valid");
        assert_eq!(config.region, 1);
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
