//! The `[replication]` section of a region's configuration, and the standby's own
//! configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use relay_net::config::ConfigError;
use serde::{Deserialize, Serialize};

use crate::limits::ACK_TIMEOUT_MS_DEFAULT;

/// A region's `[replication]` section: where its standby is and what happens when it is away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// The standby's replication address (`relayd standby` prints it on its "listening on"
    /// line).
    pub standby: SocketAddr,
    /// How long a commit waits for the standby to confirm it, and how long an absent standby
    /// has to come back before `when_standby_is_away` applies (default 2,000 ms).
    #[serde(default = "ack_timeout_ms_default")]
    pub ack_timeout_ms: u64,
    /// What the region does while its standby is away (unreachable or not confirming):
    /// `refuse_writes` (the default) answers commits "storage unavailable" so that nothing is
    /// acknowledged that the standby lacks (no loss on failover, but the region is down for
    /// writes); `go_on_alone` acknowledges them anyway and ships them when the standby is back
    /// (the region stays up, but a failover while the standby is behind loses what it lacks).
    #[serde(default)]
    pub when_standby_is_away: AwayPolicy,
}

/// What a region does while its standby is away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AwayPolicy {
    /// Refuse commits (nothing acknowledged that the standby lacks).
    #[default]
    RefuseWrites,
    /// Acknowledge commits without the standby, and ship them when it is back.
    GoOnAlone,
}

fn ack_timeout_ms_default() -> u64 {
    ACK_TIMEOUT_MS_DEFAULT
}

impl ReplicationConfig {
    /// A configuration shipping to `standby` with the defaults.
    pub fn new(standby: SocketAddr) -> Self {
        ReplicationConfig {
            standby,
            ack_timeout_ms: ACK_TIMEOUT_MS_DEFAULT,
            when_standby_is_away: AwayPolicy::default(),
        }
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ack_timeout_ms == 0 {
            return Err(ConfigError::Value(
                "replication.ack_timeout_ms must be above 0".into(),
            ));
        }
        if self.standby.port() == 0 {
            return Err(ConfigError::Value(
                "replication.standby needs the standby's port".into(),
            ));
        }
        Ok(())
    }
}

/// Configuration of a standby process (`relayd standby --config STANDBY.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyConfig {
    /// The region whose store this standby copies.
    pub region: u32,
    /// UDP address the replication server binds (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Folder of the copy (`region.redb` inside it: promoting the standby is starting the
    /// region with this folder as its `data_dir`).
    pub data_dir: PathBuf,
    /// PEM file of the deployment's CA.
    pub ca_cert: PathBuf,
    /// The region's own certificate chain (PEM): the standby serves with it, and accepts only a
    /// primary presenting the same certificate.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// Take over as the region when its primary goes silent; absent: never (an operator
    /// promotes with `relayd admin promote`).
    #[serde(default)]
    pub promotion: Option<PromotionConfig>,
}

/// A standby's `[promotion]` section: when and how it becomes the region by itself.
///
/// The standby takes over once its primary, which refuses writes without it
/// (`when_standby_is_away = "refuse_writes"`), has sent nothing for `lease_ms`, and its copy
/// is whole: it then holds every commit the primary acknowledged, and the primary cannot
/// acknowledge another without it. It opens its copy as the region's store, records a new
/// failover epoch, serves as the region (the region's configuration, with this standby's folder
/// and address), writes its address into the region's peers file, and answers the old primary,
/// should it come back, that it is fenced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionConfig {
    /// The region's configuration file: the promoted standby serves with it (its `data_dir`,
    /// `listen` and `[replication]` replaced by this standby's folder, `listen` below and none).
    pub region_config: PathBuf,
    /// The internal address the promoted region binds (port 0: any).
    pub listen: SocketAddr,
    /// How long the primary may be silent before the standby takes over (default 2,000 ms;
    /// at least 1,000 ms).
    #[serde(default = "lease_ms_default")]
    pub lease_ms: u64,
    /// The standby of the promoted region (another `relayd standby`, with a folder of its own:
    /// it gets a full copy): once promoted, the region ships every commit there, with the
    /// `[replication]` settings of the region's configuration. Without it the promoted region
    /// runs alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<SocketAddr>,
}

fn lease_ms_default() -> u64 {
    crate::limits::LEASE_MS_DEFAULT
}

impl StandbyConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        relay_net::config::load(path, |config: StandbyConfig| {
            config.validate()?;
            Ok(config)
        })
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.region == 0 {
            return Err(ConfigError::Value("region numbers start at 1".into()));
        }
        if let Some(promotion) = &self.promotion {
            if promotion.lease_ms < crate::limits::LEASE_MS_MIN {
                return Err(ConfigError::Value(format!(
                    "promotion.lease_ms must be at least {} ms",
                    crate::limits::LEASE_MS_MIN
                )));
            }
            if promotion.standby.is_some_and(|standby| standby.port() == 0) {
                return Err(ConfigError::Value(
                    "promotion.standby needs the next standby's port".into(),
                ));
            }
            if promotion.standby == Some(self.listen) {
                return Err(ConfigError::Value(
                    "promotion.standby is this standby's own address: name another".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replication_section_takes_its_defaults_and_refuses_nonsense() {
        let config: ReplicationConfig =
            toml::from_str("standby = \"127.0.0.1:4500\"").expect("parses");
        assert_eq!(
            config,
            ReplicationConfig::new("127.0.0.1:4500".parse().expect("addr"))
        );
        config.validate().expect("valid");
        let alone: ReplicationConfig =
            toml::from_str("standby = \"127.0.0.1:4500\"\nwhen_standby_is_away = \"go_on_alone\"")
                .expect("parses");
        assert_eq!(alone.when_standby_is_away, AwayPolicy::GoOnAlone);
        assert!(toml::from_str::<ReplicationConfig>("standby = \"127.0.0.1:1\"\nfoo = 1").is_err());
        assert!(
            toml::from_str::<ReplicationConfig>("standby = \"127.0.0.1:0\"")
                .expect("parses")
                .validate()
                .is_err()
        );
    }

    #[test]
    fn the_example_standby_configuration_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../home-region/standby.example.toml");
        let config = StandbyConfig::load(&path).expect("the example loads");
        assert_eq!(config.region, 1);
        let promotion = config.promotion.clone().expect("a [promotion] section");
        assert_eq!(promotion.lease_ms, crate::limits::LEASE_MS_DEFAULT);
        assert!(promotion.standby.is_some());
        // The next standby must be another address, with a port.
        for standby in [config.listen, "127.0.1.4:0".parse().expect("address")] {
            let mut wrong = config.clone();
            if let Some(promotion) = &mut wrong.promotion {
                promotion.standby = Some(standby);
            }
            assert!(wrong.validate().is_err(), "{standby}");
        }
        let garbage = tempfile::NamedTempFile::new().expect("file");
        std::fs::write(garbage.path(), "region = 1\nlisten = 3").expect("write");
        assert!(StandbyConfig::load(garbage.path()).is_err());
    }
}
