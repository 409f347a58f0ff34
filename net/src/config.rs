//! What every service's configuration file shares: a TOML file read into a serde type that
//! refuses unknown fields (the type says `deny_unknown_fields`), checked before anything is
//! bound, with errors that name the file; and where each region listens, the one address entry
//! edges and regions both configure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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
    /// The file is not valid TOML for this configuration, or a value in it is out of range.
    #[error("invalid configuration in {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range (a configuration built in code, or checked before its file is
    /// known).
    #[error("invalid configuration: {0}")]
    Value(String),
}

impl ConfigError {
    /// This error, naming the file `path` if it names none yet.
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            ConfigError::Value(message) => ConfigError::Invalid {
                path: path.to_owned(),
                message,
            },
            named => named,
        }
    }
}

/// Reads `path` as TOML into `T`, then checks it with `check` (which may also turn it into the
/// form a service runs on); every error names the file.
pub fn load<T: DeserializeOwned, C>(
    path: &Path,
    check: impl FnOnce(T) -> Result<C, ConfigError>,
) -> Result<C, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    check(parse(path, &text)?).map_err(|error| error.in_file(path))
}

/// Reads `path` as TOML into `T`, or `None` when there is no such file (a list a launcher has
/// not written yet).
pub fn load_if_present<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text).map(Some),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|error| ConfigError::Invalid {
        path: path.to_owned(),
        message: error.to_string(),
    })
}

/// Where a region listens: an entry of an edge's `regions` and of the regions' peers file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionAddress {
    /// The region number.
    pub region: u32,
    /// Its internal QUIC address.
    pub address: SocketAddr,
}

/// The address of `region` in `regions`, if listed.
pub fn address_of(regions: &[RegionAddress], region: u32) -> Option<SocketAddr> {
    regions
        .iter()
        .find(|entry| entry.region == region)
        .map(|entry| entry.address)
}

/// Replaces the file at `path` with `text` whole: written to `path.new`, synced, and renamed
/// over `path`, so a reader (a process reading its config or the peers file while another
/// writes it) sees the old file or the new one, never one cut short.
pub fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    let new = PathBuf::from(name);
    std::fs::write(&new, text)?;
    std::fs::File::open(&new)?.sync_all()?;
    std::fs::rename(&new, path)
}

/// The peers file: where every region listens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersFile {
    /// One entry per region.
    #[serde(default)]
    pub regions: Vec<RegionAddress>,
}

impl PeersFile {
    /// Reads a peers file; a missing file is an empty list (peers not known yet).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(load_if_present(path)?.unwrap_or_default())
    }

    /// Records that `region` now listens at `address` in the peers file at `path` (a promoted
    /// standby announcing itself), replacing the file atomically so a reader never sees half
    /// of it.
    pub fn set_address(path: &Path, region: u32, address: SocketAddr) -> Result<(), ConfigError> {
        let mut peers = PeersFile::load(path)?;
        peers.regions.retain(|entry| entry.region != region);
        peers.regions.push(RegionAddress { region, address });
        peers.regions.sort_by_key(|entry| entry.region);
        let text = toml::to_string_pretty(&peers)
            .map_err(|error| ConfigError::Value(format!("cannot write the peers file: {error}")))?;
        replace_file(path, &format!("# Every region's internal address.\n{text}")).map_err(
            |source| ConfigError::Read {
                path: path.to_owned(),
                source,
            },
        )
    }

    /// A resolver that reads the peers file at `path` again on every call, so a launcher can
    /// write it after the regions have bound their ports.
    pub fn resolver(path: PathBuf) -> crate::PeerResolver {
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
        address_of(&self.regions, region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        region: u32,
        #[serde(default)]
        regions: Vec<RegionAddress>,
    }

    fn checked(sample: Sample) -> Result<Sample, ConfigError> {
        if sample.region == 0 {
            return Err(ConfigError::Value("region numbers start at 1".into()));
        }
        Ok(sample)
    }

    #[test]
    fn every_error_names_the_file() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let file = |name: &str, text: &str| {
            let path = folder.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let missing = folder.path().join("missing.toml");
        let garbage = file("garbage.toml", "region = \"one\"\n[[[ not toml");
        let unknown = file("unknown.toml", "region = 1\nsurprise = 1\n");
        let zero = file("zero.toml", "region = 0\n");
        for path in [&missing, &garbage, &unknown, &zero] {
            let error = load(path, checked).expect_err("refused");
            assert!(
                error.to_string().contains(&path.display().to_string()),
                "{error}"
            );
        }
        assert!(matches!(
            load(&zero, checked),
            Err(ConfigError::Invalid { message, .. }) if message == "region numbers start at 1"
        ));
        assert!(
            load_if_present::<Sample>(&missing)
                .expect("absent is fine")
                .is_none()
        );
        assert!(load_if_present::<Sample>(&garbage).is_err());
    }

    #[test]
    fn region_addresses_are_found_by_number() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let path = folder.path().join("regions.toml");
        std::fs::write(
            &path,
            "region = 1\n[[regions]]\nregion = 2\naddress = \"127.0.2.1:7001\"\n",
        )
        .expect("write");
        let sample = load(&path, checked).expect("loads");
        assert_eq!(
            address_of(&sample.regions, 2),
            Some("127.0.2.1:7001".parse().expect("an address"))
        );
        assert_eq!(address_of(&sample.regions, 3), None);
    }
}
