//! A whole deployment inside the current process, for tests and doc tests: N regions, one edge
//! per region and the locator, each started as tasks on the current tokio runtime from the
//! same configurations the devnet writes for its child processes, on loopback ports the system
//! picks, with stores in a temporary folder. Nothing is faked: the regions open real embedded
//! stores (and check them, asking the directory writer as a devnet region does), the edges
//! speak real QUIC and TLS under the testbed's own CA, and the locator answers DNS.
//!
//! Region k's service binds 127.0.k.1 and its edge 127.0.k.2, as in the devnet; a client is in
//! region k when it binds an address of 127.0.k.0/24 ([`Testbed::client_bind`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), relay_devnet::DevnetError> {
//! let testbed = relay_devnet::testbed::Testbed::start(2).await?;
//! assert_eq!(testbed.regions(), 2);
//! assert!(testbed.ca().exists());
//! println!("locator {} (region 2's clients bind {})", testbed.locator(), testbed.client_bind(2));
//! testbed.stop().await;
//! # Ok(())
//! # }
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use home_region::RegionService;
use home_region::config::{PeersFile, RegionAddress, RegionConfig};
use relay_edge::EdgeService;
use relay_edge::config::{EdgeConfig, LimitsConfig};
use relay_edge::locator::{LocatorConfig, LocatorServer, RegionEntry};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::DevnetError;
use crate::launcher::region_ip;
use crate::limits::DEVNET_REGIONS_MAX;
use crate::pki::Pki;

/// The host number of a region's first client address (127.0.k.10), as in the devnet.
pub const CLIENT_HOST: u8 = 10;

/// A running in-process deployment (see the module doc). [`Testbed::stop`] ends it; dropping
/// it stops its tasks too (without waiting for them).
#[derive(Debug)]
pub struct Testbed {
    folder: tempfile::TempDir,
    ca: PathBuf,
    locator: SocketAddr,
    regions: Vec<(SocketAddr, SocketAddr)>,
    /// Each region's configuration, region 1 first (for its operator's requests).
    configs: Vec<RegionConfig>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Testbed {
    /// Starts `regions` regions (region 1 writes the directory), their edges and the locator,
    /// and returns once every one of them listens. Each region serves a media endpoint.
    pub async fn start(regions: u32) -> Result<Testbed, DevnetError> {
        Self::start_with_media(regions, None).await
    }

    /// [`Testbed::start`], with each region's media endpoint advertised to devices as
    /// `advertise` when given (an address nothing answers at shows what a device does when it
    /// cannot reach the endpoint).
    pub async fn start_with_media(
        regions: u32,
        advertise: Option<String>,
    ) -> Result<Testbed, DevnetError> {
        if regions == 0 || regions > DEVNET_REGIONS_MAX {
            return Err(DevnetError::Invalid(format!(
                "a testbed has 1 to {DEVNET_REGIONS_MAX} regions"
            )));
        }
        let folder = tempfile::Builder::new()
            .prefix("relay-testbed-")
            .tempdir()
            .map_err(|source| DevnetError::file("creating", &std::env::temp_dir(), source))?;
        let pki = Pki::open(&folder.path().join("pki"))?;
        let (stop, stopped) = watch::channel(false);
        let mut testbed = Testbed {
            ca: pki.ca_cert(),
            folder,
            locator: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            regions: Vec::new(),
            configs: Vec::new(),
            stop,
            tasks: JoinSet::new(),
        };
        let peers_file = testbed.folder.path().join("peers.toml");
        let mut peers = PeersFile::default();
        let mut services = Vec::new();
        for region in 1..=regions {
            let certs = pki.region(region)?;
            let config = RegionConfig {
                region,
                listen: SocketAddr::new(region_ip(region, 1), 0),
                data_dir: testbed.folder.path().join(format!("region-{region}")),
                directory_writer: 1,
                peers_file: peers_file.clone(),
                ca_cert: pki.ca_cert(),
                cert: certs.cert,
                key: certs.key,
                blobs: Default::default(),
                push: Default::default(),
                registration: home_region::config::RegistrationConfig {
                    tokens_required: false,
                },
                replication: None,
                // Devices move blobs' bytes at the region's media endpoint.
                media: Some(home_region::config::MediaConfig {
                    listen: SocketAddr::new(region_ip(region, 1), 0),
                    advertise: advertise.clone(),
                }),
            };
            let (service, address, _) = RegionService::open(&config, false)
                .await
                .map_err(|error| child_error(&format!("region-{region}"), error))?;
            testbed.configs.push(config);
            testbed
                .tasks
                .spawn(run_region(service, shutdown(stopped.clone())));
            peers.regions.push(RegionAddress { region, address });
            // A region starting next asks the directory writer about its new store.
            write_peers(&peers_file, &peers)?;
            services.push(address);
        }
        let addresses: Vec<RegionAddress> = peers
            .regions
            .iter()
            .map(|peer| RegionAddress {
                region: peer.region,
                address: peer.address,
            })
            .collect();
        let mut edges = Vec::new();
        for region in 1..=regions {
            let certs = pki.edge(region)?;
            let config = EdgeConfig {
                region,
                listen: SocketAddr::new(region_ip(region, 2), 0),
                ca_cert: pki.ca_cert(),
                cert: certs.cert,
                key: certs.key,
                regions: addresses.clone(),
                peers_file: None,
                // In-process devices share 127.0.0.1: no per-address admission limit.
                limits: LimitsConfig {
                    connections_per_second_per_address: 1_000_000,
                    connections_burst_per_address: 1_000_000,
                    ..LimitsConfig::default()
                },
            };
            let (service, address, subscriptions) = EdgeService::bind(&config)
                .map_err(|error| child_error(&format!("edge-{region}"), error))?;
            let shutdown = shutdown(stopped.clone());
            testbed.tasks.spawn(async move {
                if let Err(error) = service.run(subscriptions, shutdown).await {
                    tracing::error!(%error, "a testbed edge stopped");
                }
            });
            edges.push(address);
        }
        let locator = LocatorConfig {
            listen: testbed.locator,
            regions: edges
                .iter()
                .zip(1u32..)
                .map(|(edge, region)| RegionEntry {
                    region,
                    networks: vec![format!("127.0.{region}.0/24")],
                    edges: vec![*edge],
                })
                .collect(),
            ..LocatorConfig::default()
        }
        .validate()
        .map_err(|error| child_error("locator", error))?;
        let server = LocatorServer::bind(locator)
            .await
            .map_err(|error| child_error("locator", error))?;
        testbed.locator = server.local_addr();
        let shutdown = shutdown(stopped);
        testbed.tasks.spawn(async move {
            if let Err(error) = server.serve(shutdown).await {
                tracing::error!(%error, "the testbed's locator stopped");
            }
        });
        testbed.regions = services.into_iter().zip(edges).collect();
        Ok(testbed)
    }

    /// How many regions run.
    pub fn regions(&self) -> u32 {
        u32::try_from(self.regions.len()).unwrap_or(u32::MAX)
    }

    /// The locator's address (DNS over UDP and TCP).
    pub fn locator(&self) -> SocketAddr {
        self.locator
    }

    /// The CA certificate clients trust.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// The address a client of region `region` binds (127.0.region.10).
    pub fn client_bind(&self, region: u32) -> IpAddr {
        region_ip(region, CLIENT_HOST)
    }

    /// Region `region`'s internal address, if it runs.
    pub fn region_address(&self, region: u32) -> Option<SocketAddr> {
        let index = usize::try_from(region.checked_sub(1)?).ok()?;
        self.regions.get(index).map(|(service, _)| *service)
    }

    /// Region `region`'s edge, if it runs.
    pub fn edge(&self, region: u32) -> Option<SocketAddr> {
        let index = usize::try_from(region.checked_sub(1)?).ok()?;
        self.regions.get(index).map(|(_, edge)| *edge)
    }

    /// Moves the home of `account` (an id or a name), homed in region `from`, to region `to`,
    /// as `from`'s operator does with `relayd admin move-home`, and returns the move's report.
    pub async fn move_home(
        &self,
        account: &str,
        from: u32,
        to: u32,
    ) -> Result<relay_proto::wire::HomeMoved, DevnetError> {
        let config = usize::try_from(from)
            .ok()
            .and_then(|from| from.checked_sub(1))
            .and_then(|index| self.configs.get(index))
            .ok_or_else(|| DevnetError::Invalid(format!("the testbed has no region {from}")))?;
        home_region::home_move::request_move_home(config, account, to)
            .await
            .map_err(|error| child_error(&format!("region-{from}"), error))
    }

    /// The folder holding the stores and certificates (removed when the testbed is dropped).
    pub fn folder(&self) -> &Path {
        self.folder.path()
    }

    /// Stops every service and waits for them to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn run_region(service: RegionService, shutdown: impl std::future::Future<Output = ()>) {
    if let Err(error) = service.run(shutdown).await {
        tracing::error!(%error, "a testbed region stopped");
    }
}

/// Completes once the testbed stops (or is dropped).
async fn shutdown(mut stopped: watch::Receiver<bool>) {
    while !*stopped.borrow() {
        if stopped.changed().await.is_err() {
            return;
        }
    }
}

fn child_error(name: &str, error: impl std::fmt::Display) -> DevnetError {
    DevnetError::Child {
        name: name.to_owned(),
        reason: error.to_string(),
    }
}

fn write_peers(path: &Path, peers: &PeersFile) -> Result<(), DevnetError> {
    let body = toml::to_string_pretty(peers)
        .map_err(|error| DevnetError::Invalid(format!("cannot write the peers file: {error}")))?;
    std::fs::write(path, body).map_err(|source| DevnetError::file("writing", path, source))
}
