//! The region's configuration file and its peers file (TOML), loaded the way every service's
//! are ([`relay_net::config`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use relay_net::config::{ConfigError, PeersFile, RegionAddress};
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
    /// The blob store (encrypted media and history snapshots): local files under
    /// `data_dir/blobs` by default.
    #[serde(default)]
    pub blobs: BlobsConfig,
    /// Waking devices that have no connection: the push providers (none by default: no device
    /// is woken, and a device asking to register is told so). See `relay_push::PushConfig`.
    #[serde(default)]
    pub push: relay_push::PushConfig,
    /// Who may register (read by the directory writer only).
    #[serde(default)]
    pub registration: RegistrationConfig,
    /// The region's standby, which receives every commit before the region acknowledges it
    /// (see `relay_replica::ReplicationConfig`); none by default. On FoundationDB the cluster's
    /// own multi-region replication takes this role.
    #[serde(default)]
    pub replication: Option<relay_replica::ReplicationConfig>,
    /// The media endpoint, where devices move blobs' bytes directly instead of through their
    /// edge (under a pass the region gives them through it); none by default, and then every
    /// blob goes through the edges. It serves with this region's `cert`, which must carry the
    /// name `media.relay.test` and be signed by a CA devices trust.
    #[serde(default)]
    pub media: Option<MediaConfig>,
}

/// The `[media]` section: the region's media endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// UDP address its QUIC server binds (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The address devices are told to connect to (`host:port`), when it is not `listen`'s
    /// (behind a load balancer or a NAT); `listen`'s bound address by default.
    #[serde(default)]
    pub advertise: Option<String>,
}

/// The `[registration]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    /// A new account needs a registration token (`relayd admin token` issues them); true
    /// unless turned off (a devnet turns it off).
    #[serde(default = "tokens_required_default")]
    pub tokens_required: bool,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            tokens_required: tokens_required_default(),
        }
    }
}

fn tokens_required_default() -> bool {
    true
}

/// Where and how a region keeps blobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobsConfig {
    /// Bytes of blobs one account may store at once (default
    /// [`crate::limits::BLOB_ACCOUNT_BYTES_MAX_DEFAULT`]).
    #[serde(default)]
    pub account_bytes_max: Option<u64>,
    /// Where blobs live without `s3`: `"files"` (local files under `data_dir/blobs`, the
    /// default) or `"store"` (in the region's own store, so its standby holds them with every
    /// commit; a region with a standby should say so, since a failover loses blobs in local
    /// files).
    #[serde(default)]
    pub keep_in: BlobPlace,
    /// Keep blobs in this S3 bucket instead of local files.
    #[serde(default)]
    pub s3: Option<S3Config>,
}

/// Where a region keeps blobs when no S3 bucket is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobPlace {
    /// Local files under `data_dir/blobs`, fsync'd on every write; never shipped to a standby.
    #[default]
    Files,
    /// The region's own store (`fdb_layers::objects`), shipped to the standby with every commit.
    Store,
}

/// An S3 (or S3-compatible) bucket for blobs. Credentials not given here come from the usual
/// AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket's name.
    pub bucket: String,
    /// The bucket's AWS region (`eu-west-1`).
    pub region: String,
    /// A custom endpoint (an S3-compatible service such as MinIO); AWS's when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The access key id; from the environment when absent.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret access key; from the environment when absent.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Allow a plain-HTTP endpoint (a local test service only).
    #[serde(default)]
    pub allow_http: bool,
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
        if self.blobs.account_bytes_max == Some(0) {
            return Err(ConfigError::Value(
                "blobs.account_bytes_max must allow some bytes".into(),
            ));
        }
        if let Some(s3) = &self.blobs.s3
            && (s3.bucket.is_empty() || s3.region.is_empty())
        {
            return Err(ConfigError::Value(
                "blobs.s3 needs a bucket and a region".into(),
            ));
        }
        if self.blobs.s3.is_some() && self.blobs.keep_in == BlobPlace::Store {
            return Err(ConfigError::Value(
                "blobs.keep_in = \"store\" and [blobs.s3] name two places for blobs: keep one"
                    .into(),
            ));
        }
        if let Some(replication) = &self.replication {
            replication.validate()?;
        }
        if let Some(media) = &self.media
            && media.advertise.as_deref().is_some_and(|advertise| {
                advertise
                    .rsplit_once(':')
                    .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            })
        {
            return Err(ConfigError::Value(
                "media.advertise must be host:port (what devices connect to)".into(),
            ));
        }
        if self.directory_writer == 0 {
            return Err(ConfigError::Value(
                "directory_writer must name a region (from 1)".into(),
            ));
        }
        Ok(())
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
    fn blob_settings_are_optional_and_checked() {
        let config: RegionConfig = toml::from_str(EXAMPLE).expect("example parses");
        assert_eq!(
            config.blobs,
            BlobsConfig::default(),
            "local files by default"
        );
        let mut text = EXAMPLE.to_string();
        text.push_str(
            "\n[blobs]\naccount_bytes_max = 1000\n[blobs.s3]\nbucket = \"relay-blobs\"\n\
             region = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\n",
        );
        let config: RegionConfig = toml::from_str(&text).expect("s3 settings parse");
        config.validate().expect("valid");
        let s3 = config.blobs.s3.expect("s3");
        assert_eq!((s3.bucket.as_str(), s3.allow_http), ("relay-blobs", true));
        let mut typo = EXAMPLE.to_string();
        typo.push_str("\n[blobs.s3]\nbucket = \"b\"\nregion = \"r\"\nbuckit = \"x\"\n");
        assert!(toml::from_str::<RegionConfig>(&typo).is_err());
    }

    #[test]
    fn the_media_endpoint_is_optional_and_checked() {
        let config: RegionConfig = toml::from_str(EXAMPLE).expect("example parses");
        assert_eq!(config.media, None, "blobs go through the edges by default");
        let with = |section: &str| format!("{EXAMPLE}\n[media]\n{section}\n");
        let config: RegionConfig =
            toml::from_str(&with("listen = \"127.0.1.1:0\"")).expect("media parses");
        config.validate().expect("valid");
        let media = config.media.expect("media");
        assert_eq!(media.listen, "127.0.1.1:0".parse().expect("address"));
        assert_eq!(media.advertise, None);
        let config: RegionConfig = toml::from_str(&with(
            "listen = \"0.0.0.0:4443\"\nadvertise = \"media-1.example.org:4443\"",
        ))
        .expect("advertise parses");
        config.validate().expect("a host name and a port");
        for bad in [
            "",
            "media-1.example.org",
            ":4443",
            "media-1.example.org:http",
        ] {
            let config: RegionConfig = toml::from_str(&with(&format!(
                "listen = \"0.0.0.0:4443\"\nadvertise = \"{bad}\""
            )))
            .expect("parses");
            assert!(config.validate().is_err(), "advertise = {bad:?}");
        }
        assert!(
            toml::from_str::<RegionConfig>(&with("listen = \"127.0.1.1:0\"\nport = 1")).is_err()
        );
        assert!(
            toml::from_str::<RegionConfig>(&with("advertise = \"a:1\"")).is_err(),
            "listen is needed"
        );
    }

    #[test]
    fn missing_peers_file_is_empty() {
        let peers = PeersFile::load(Path::new("/nonexistent/peers.toml")).expect("empty");
        assert!(peers.regions.is_empty());
    }
}
