//! The launcher: the whole topology as separate processes on loopback.
//!
//! Region k's service binds 127.0.k.1 and its edge 127.0.k.2; its clients bind other addresses
//! of 127.0.k.0/24, which is how the locator tells which region they are in. The locator binds
//! 127.0.0.1. Every process gets a config file under the data folder; after the first start the
//! files hold the bound addresses, so a restart reuses the same ports when they are free
//! (clients remember the locator address). A child that dies is restarted on the same address;
//! when `shutdown` completes every child is stopped. One devnet at a time holds a data folder
//! (a lock file), so a second one says so instead of failing on the stores' locks.
//!
//! Regions start one after the other, the directory writer (region 1) first, and the peers file
//! is rewritten after each, so a region starting on a new store can ask the writer's census. A
//! child that exits before listening (a region refusing its store, say) is reported with the
//! error it printed.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use home_region::config::{PeersFile, RegionAddress, RegionConfig};
use relay_edge::config::{EdgeConfig, LimitsConfig};
use relay_edge::locator::{LocatorConfig, RegionEntry};
use relay_replica::limits::LEASE_MS_DEFAULT;
use relay_replica::{PromotionConfig, ReplicationConfig, StandbyConfig};
use rustix::fs::FlockOperation;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use crate::DevnetError;
use crate::events::{DevnetEvent, Ready, RegionReady};
use crate::limits::{
    CHILD_LOG_TAIL_BYTES_MAX, CHILD_LOG_TAIL_LINES, CHILD_RESTART_DELAY_MS,
    CHILD_RESTART_DELAY_MS_MAX, CHILD_START_TIMEOUT_MS, CHILD_STOP_TIMEOUT_MS, DEVNET_REGIONS_MAX,
    DEVNET_STANDBY_ACK_TIMEOUT_MS, EVENTS_BUFFERED_MAX,
};
use crate::pki::Pki;

/// The name of the lock file a running devnet holds in its data folder.
pub const LOCK_FILE: &str = "devnet.lock";

/// What to launch.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// How many regions, each with its own edge (1 to [`DEVNET_REGIONS_MAX`]).
    pub regions: u32,
    /// Folder holding every process's store, config, certificates and logs; created if needed.
    pub data: PathBuf,
    /// The `relayd` executable: each child runs `<relayd> region|edge|locator --config FILE`
    /// and prints "… listening on ADDR" once bound.
    pub relayd: PathBuf,
    /// Per-connection request limits of every edge (the edges' defaults unless a benchmark
    /// lifts them, so that it measures the message path rather than the abuse limit).
    pub edge_limits: LimitsConfig,
    /// A PEM file of CA certificates the regions trust for push services, besides the
    /// system's: a local WebPush service's (the regions wake devices through WebPush with the
    /// devnet's VAPID key, `pki/vapid.pem`, and accept endpoints on loopback).
    pub push_ca: Option<PathBuf>,
    /// Whether registering needs a token (`relayd admin token`), as in production; a devnet
    /// lets anyone register unless asked.
    pub require_tokens: bool,
    /// Whether each region gets a standby (`relayd standby`, `standby-k`, on 127.0.k.3) that
    /// receives every commit before the region acknowledges it, and the standby's own standby
    /// for once it is promoted (`next-standby-k`, on 127.0.k.4, idle until then).
    pub standbys: bool,
    /// Whether each region serves a media endpoint (on its host, 127.0.k.1), where devices
    /// move blobs' bytes without their edge; without one, blobs go through the edges.
    pub media_endpoints: bool,
}

/// The exit status of a region fenced by its promoted standby: the devnet does not start it
/// again (its store is stale).
pub const FENCED_EXIT_CODE: i32 = 3;

/// A child whose `DATA/<name>.down` file exists is not started again when it exits (a machine
/// that stays down, for drills and tests); removing the file lets the devnet start it again.
pub const DOWN_SUFFIX: &str = ".down";

/// The host of a region's service (its primary) in its block (127.0.k.1).
pub const REGION_HOST: u8 = 1;

/// The host of a region's standby in its block (127.0.k.3).
pub const STANDBY_HOST: u8 = 3;

/// The host of the standby a region's promoted standby ships to (127.0.k.4).
pub const NEXT_STANDBY_HOST: u8 = 4;

/// The address `host` of region `region`'s block, 127.0.region.host.
pub fn region_ip(region: u32, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, region as u8, host))
}

/// Runs a devnet until `shutdown` completes, handing every event to `sink` as it happens; the
/// [`DevnetEvent::Ready`] event comes once every child listens. Fails if a child cannot be
/// started (every child started so far is stopped first).
pub async fn run(
    options: DevnetOptions,
    mut sink: impl FnMut(DevnetEvent),
    shutdown: impl Future<Output = ()>,
) -> Result<(), DevnetError> {
    if options.regions == 0 || options.regions > DEVNET_REGIONS_MAX {
        return Err(DevnetError::Invalid(format!(
            "--regions must be between 1 and {DEVNET_REGIONS_MAX}"
        )));
    }
    if options.edge_limits.requests_per_second == 0 || options.edge_limits.requests_burst == 0 {
        return Err(DevnetError::Invalid(
            "the edges' request limits must be at least 1".into(),
        ));
    }
    std::fs::create_dir_all(&options.data)
        .map_err(|source| DevnetError::file("creating", &options.data, source))?;
    let data = options
        .data
        .canonicalize()
        .map_err(|source| DevnetError::file("resolving", &options.data, source))?;
    let _lock = lock_data_folder(&data)?;
    let launcher = Launcher {
        relayd: options.relayd.clone(),
        data: data.clone(),
        pki: Pki::open(&data.join("pki"))?,
        edge_limits: options.edge_limits,
        push_ca: options.push_ca.clone(),
        require_tokens: options.require_tokens,
        standbys: options.standbys,
        media_endpoints: options.media_endpoints,
    };
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs)
        .map_err(|source| DevnetError::file("creating", &logs, source))?;

    let mut running: Vec<Running> = Vec::new();
    let ready = match launcher
        .start_all(options.regions, &mut running, &mut sink)
        .await
    {
        Ok(ready) => ready,
        Err(error) => {
            for mut started in running {
                stop_child(&mut started.child).await;
            }
            return Err(error);
        }
    };
    sink(DevnetEvent::Ready(ready));

    let (stop_sender, stop) = watch::channel(false);
    let (events, mut received) = mpsc::channel(EVENTS_BUFFERED_MAX);
    let mut supervisors = tokio::task::JoinSet::new();
    for started in running {
        supervisors.spawn(supervise(
            options.relayd.clone(),
            started,
            stop.clone(),
            events.clone(),
        ));
    }
    drop(events);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            event = received.recv() => match event {
                Some(event) => sink(event),
                None => break,
            },
            () = &mut shutdown => break,
        }
    }
    let _ = stop_sender.send(true);
    while supervisors.join_next().await.is_some() {}
    while let Ok(event) = received.try_recv() {
        sink(event);
    }
    sink(DevnetEvent::Stopped);
    Ok(())
}

/// Holds `data/devnet.lock` (an exclusive `flock`) for as long as the returned file lives, with
/// this process's id in it; a folder another devnet holds is [`DevnetError::Busy`].
fn lock_data_folder(data: &Path) -> Result<File, DevnetError> {
    let path = data.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| DevnetError::file("opening", &path, source))?;
    if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(DevnetError::Busy {
            data: data.to_owned(),
            pid: holder.trim().parse().unwrap_or(0),
        });
    }
    let write_pid = |file: &mut File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())
    };
    write_pid(&mut file).map_err(|source| DevnetError::file("writing", &path, source))?;
    Ok(file)
}

/// What the children need from the devnet: the executable, the data folder, the PKI, the
/// edges' limits.
struct Launcher {
    relayd: PathBuf,
    data: PathBuf,
    pki: Pki,
    edge_limits: LimitsConfig,
    push_ca: Option<PathBuf>,
    require_tokens: bool,
    standbys: bool,
    media_endpoints: bool,
}

#[derive(Debug, Clone)]
struct ChildSpec {
    /// "region-1", "edge-1", "locator".
    name: String,
    /// Subcommand of relayd.
    role: &'static str,
    config: PathBuf,
    log: PathBuf,
}

struct Running {
    spec: ChildSpec,
    child: Child,
    address: SocketAddr,
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    fn started(&self) -> DevnetEvent {
        DevnetEvent::Started {
            name: self.spec.name.clone(),
            pid: self.pid(),
            address: self.address,
        }
    }
}

impl Launcher {
    /// Starts the regions, then their edges, then the locator; reports each as it starts.
    async fn start_all(
        &self,
        regions: u32,
        running: &mut Vec<Running>,
        sink: &mut impl FnMut(DevnetEvent),
    ) -> Result<Ready, DevnetError> {
        let peers_file = self.data.join("peers.toml");
        // Regions first: edges need their addresses.
        let mut peers = PeersFile::default();
        let push = relay_push::PushConfig {
            webpush: Some(relay_push::WebPushConfig {
                vapid_private_key_file: self.pki.vapid_key()?,
                contact: "mailto:devnet@relay.test".into(),
            }),
            ca_file: self.push_ca.clone(),
            allow_private_endpoints: true,
            ..relay_push::PushConfig::default()
        };
        for region in 1..=regions {
            let certs = self.pki.region(region)?;
            let name = format!("region-{region}");
            let data_dir = self.data.join(&name);
            // The standby first: the region ships its first commit (its store's identity) to
            // it before it listens.
            let replication = if self.standbys {
                // The promoted region's own standby, idle until the standby below is promoted
                // and ships to it (a full copy first).
                let next_name = format!("next-standby-{region}");
                let next_dir = self.data.join(&next_name);
                let next = self
                    .launch(
                        &next_name,
                        "standby",
                        SocketAddr::new(region_ip(region, NEXT_STANDBY_HOST), 0),
                        |listen| StandbyConfig {
                            region,
                            listen,
                            data_dir: next_dir.clone(),
                            ca_cert: self.pki.ca_cert(),
                            cert: certs.cert.clone(),
                            key: certs.key.clone(),
                            // A second failover moves the region here.
                            promotion: Some(PromotionConfig {
                                region_config: self.data.join(format!("region-{region}.toml")),
                                listen: SocketAddr::new(region_ip(region, NEXT_STANDBY_HOST), 0),
                                lease_ms: LEASE_MS_DEFAULT,
                                standby: None,
                            }),
                        },
                    )
                    .await?;
                let next_address = next.address;
                sink(next.started());
                running.push(next);
                let name = format!("standby-{region}");
                let standby_dir = self.data.join(&name);
                let started = self
                    .launch(
                        &name,
                        "standby",
                        SocketAddr::new(region_ip(region, STANDBY_HOST), 0),
                        |listen| StandbyConfig {
                            region,
                            listen,
                            data_dir: standby_dir.clone(),
                            ca_cert: self.pki.ca_cert(),
                            cert: certs.cert.clone(),
                            key: certs.key.clone(),
                            // Takes over when the region's primary is gone.
                            promotion: Some(PromotionConfig {
                                region_config: self.data.join(format!("region-{region}.toml")),
                                listen: SocketAddr::new(region_ip(region, STANDBY_HOST), 0),
                                lease_ms: LEASE_MS_DEFAULT,
                                standby: Some(next_address),
                            }),
                        },
                    )
                    .await?;
                let replication = ReplicationConfig {
                    ack_timeout_ms: DEVNET_STANDBY_ACK_TIMEOUT_MS,
                    ..ReplicationConfig::new(started.address)
                };
                sink(started.started());
                running.push(started);
                Some(replication)
            } else {
                None
            };
            let started = self
                .launch(
                    &name,
                    "region",
                    SocketAddr::new(region_ip(region, REGION_HOST), 0),
                    |listen| RegionConfig {
                        region,
                        listen,
                        data_dir: data_dir.clone(),
                        directory_writer: 1,
                        peers_file: peers_file.clone(),
                        ca_cert: self.pki.ca_cert(),
                        cert: certs.cert.clone(),
                        key: certs.key.clone(),
                        // With a standby, blobs live in the store it receives: a failover
                        // keeps them.
                        blobs: home_region::config::BlobsConfig {
                            keep_in: if replication.is_some() {
                                home_region::config::BlobPlace::Store
                            } else {
                                home_region::config::BlobPlace::Files
                            },
                            ..Default::default()
                        },
                        push: push.clone(),
                        registration: home_region::config::RegistrationConfig {
                            tokens_required: self.require_tokens,
                        },
                        replication: replication.clone(),
                        // Devices move blobs' bytes at the region's media endpoint, on the
                        // region's host.
                        media: self
                            .media_endpoints
                            .then(|| home_region::config::MediaConfig {
                                listen: SocketAddr::new(region_ip(region, REGION_HOST), 0),
                                advertise: None,
                            }),
                    },
                )
                .await?;
            peers.regions.push(RegionAddress {
                region,
                address: started.address,
            });
            sink(started.started());
            running.push(started);
            // The regions after this one may need its address now (a new store asks the
            // directory writer before its region listens).
            write_toml(
                &peers_file,
                &peers,
                "# Every region's internal address. Written by relayd devnet.",
            )?;
        }

        let region_addresses = peers.regions.clone();
        let mut edges = Vec::new();
        for region in 1..=regions {
            let certs = self.pki.edge(region)?;
            let name = format!("edge-{region}");
            let started = self
                .launch(
                    &name,
                    "edge",
                    SocketAddr::new(region_ip(region, 2), 0),
                    |listen| EdgeConfig {
                        region,
                        listen,
                        peers_file: Some(peers_file.clone()),
                        ca_cert: self.pki.ca_cert(),
                        cert: certs.cert.clone(),
                        key: certs.key.clone(),
                        regions: region_addresses.clone(),
                        limits: self.edge_limits,
                    },
                )
                .await?;
            edges.push(started.address);
            sink(started.started());
            running.push(started);
        }

        let localhost = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let locator = self
            .launch("locator", "locator", localhost, |listen| {
                locator_config(listen, &edges)
            })
            .await?;
        sink(locator.started());
        let ready = Ready {
            locator: locator.address,
            ca: self.pki.ca_cert(),
            data: self.data.clone(),
            locator_pid: locator.pid(),
            regions: (1..=regions)
                .filter_map(|region| {
                    let find = |name: String| running.iter().find(|r| r.spec.name == name);
                    let service = find(format!("region-{region}"))?;
                    let edge = find(format!("edge-{region}"))?;
                    let standby = find(format!("standby-{region}"));
                    Some(RegionReady {
                        region,
                        service: service.address,
                        service_pid: service.pid(),
                        edge: edge.address,
                        edge_pid: edge.pid(),
                        client_bind: region_ip(region, 10),
                        standby: standby.map(|standby| standby.address),
                        standby_pid: standby.map(Running::pid),
                    })
                })
                .collect(),
        };
        running.push(locator);
        Ok(ready)
    }

    /// Starts the child `name` with the config `make` builds for a listen address, preferring
    /// the address its previous config file held (so a restarted devnet keeps its ports).
    async fn launch<C: serde::Serialize>(
        &self,
        name: &str,
        role: &'static str,
        default_listen: SocketAddr,
        make: impl Fn(SocketAddr) -> C,
    ) -> Result<Running, DevnetError> {
        let config_path = self.data.join(format!("{name}.toml"));
        let spec = ChildSpec {
            name: name.to_owned(),
            role,
            config: config_path.clone(),
            log: self.data.join("logs").join(format!("{name}.log")),
        };
        let preferred = previous_listen(&config_path).unwrap_or(default_listen);
        let write = |listen| write_toml(&config_path, &make(listen), "# Written by relayd devnet.");
        write(preferred)?;
        match start(&self.relayd, &spec).await {
            Ok(running) => {
                write(running.address)?;
                Ok(running)
            }
            // A port taken meanwhile: any free one will do. A child that refused to start for
            // another reason (a region refusing its store) would refuse on any port.
            Err(error) if preferred.port() != 0 && !refused_for_another_reason(&error) => {
                tracing::warn!(name = %spec.name, %error, "preferred port unavailable; taking a free one");
                write(SocketAddr::new(preferred.ip(), 0))?;
                let running = start(&self.relayd, &spec).await?;
                write(running.address)?;
                Ok(running)
            }
            Err(error) => Err(error),
        }
    }
}

fn locator_config(listen: SocketAddr, edges: &[SocketAddr]) -> LocatorConfig {
    LocatorConfig {
        listen,
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
}

/// The address in an existing config file's `listen`, to reuse its port.
fn previous_listen(path: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: toml::Value = toml::from_str(&text).ok()?;
    value.get("listen")?.as_str()?.parse().ok()
}

/// Writes a config file whole ([`relay_net::config::replace_file`]): a child reading it
/// meanwhile sees the old file or the new one, never one cut short (a standby reads its
/// region's file at start, while the devnet writes it for the region).
fn write_toml<T: serde::Serialize>(
    path: &Path,
    value: &T,
    header: &str,
) -> Result<(), DevnetError> {
    let body = toml::to_string_pretty(value)
        .map_err(|error| DevnetError::Invalid(format!("cannot write a config: {error}")))?;
    relay_net::config::replace_file(path, &format!("{header}\n{body}"))
        .map_err(|source| DevnetError::file("writing", path, source))
}

/// Spawns a child and waits for its "listening on" line; a child that exits first fails with
/// the end of its log.
async fn start(relayd: &Path, spec: &ChildSpec) -> Result<Running, DevnetError> {
    let child_error = |reason: String| DevnetError::Child {
        name: spec.name.clone(),
        reason,
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|source| DevnetError::file("opening", &spec.log, source))?;
    let log_start = log.metadata().map_or(0, |metadata| metadata.len());
    let mut child = Command::new(relayd)
        .arg(spec.role)
        .arg("--config")
        .arg(&spec.config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| child_error(format!("cannot start {}: {error}", relayd.display())))?;
    let Some(stdout) = child.stdout.take() else {
        stop_child(&mut child).await;
        return Err(child_error("no standard output".into()));
    };
    let mut lines = BufReader::new(stdout).lines();
    let listening = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some((_, address)) = line.split_once(" listening on ") {
                return address
                    .trim()
                    .parse::<SocketAddr>()
                    .map(Some)
                    .map_err(|error| format!("bad address in {line:?}: {error}"));
            }
        }
        Ok(None)
    };
    let address = match tokio::time::timeout(
        Duration::from_millis(CHILD_START_TIMEOUT_MS),
        listening,
    )
    .await
    {
        Ok(Ok(Some(address))) => address,
        Ok(Ok(None)) => {
            let status = match tokio::time::timeout(
                Duration::from_millis(CHILD_STOP_TIMEOUT_MS),
                child.wait(),
            )
            .await
            {
                Ok(Ok(status)) => status.to_string(),
                _ => {
                    stop_child(&mut child).await;
                    "closed its output".to_owned()
                }
            };
            return Err(match last_error_line(&spec.log, log_start) {
                Some(error) => DevnetError::RefusedToStart {
                    name: spec.name.clone(),
                    status,
                    error,
                    log: spec.log.clone(),
                },
                None => child_error(format!(
                    "exited before listening ({status}):\n{}\n(the whole log: {})",
                    log_tail(&spec.log, log_start),
                    spec.log.display()
                )),
            });
        }
        Ok(Err(reason)) => {
            stop_child(&mut child).await;
            return Err(child_error(reason));
        }
        Err(_) => {
            stop_child(&mut child).await;
            return Err(child_error(format!(
                "did not start within {CHILD_START_TIMEOUT_MS} ms (see {})",
                spec.log.display()
            )));
        }
    };
    // Keep draining the child's stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Running {
        spec: spec.clone(),
        child,
        address,
    })
}

/// Whether a start failed for another reason than its address being taken.
fn refused_for_another_reason(error: &DevnetError) -> bool {
    matches!(error, DevnetError::RefusedToStart { error, .. } if !error.contains("in use"))
}

/// The last error line (`relayd: …`) a child wrote to its log after byte `from`, without the
/// prefix.
fn last_error_line(log: &Path, from: u64) -> Option<String> {
    let mut file = File::open(log).ok()?;
    let length = file.metadata().ok()?.len();
    let start = from.max(length.saturating_sub(CHILD_LOG_TAIL_BYTES_MAX));
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut tail = Vec::new();
    file.take(CHILD_LOG_TAIL_BYTES_MAX)
        .read_to_end(&mut tail)
        .ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("relayd: ").map(str::to_owned))
}

/// The last [`CHILD_LOG_TAIL_LINES`] lines a child wrote to its log after `from` (bytes), each
/// indented, or a note that it wrote nothing.
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(from))?;
        file.read_to_string(&mut text)
    });
    if read.is_err() || text.trim().is_empty() {
        return "  (it wrote nothing to its log)".into();
    }
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let start = lines.len().saturating_sub(CHILD_LOG_TAIL_LINES);
    lines[start..]
        .iter()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn stop_child(child: &mut Child) {
    if let Some(pid) = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(Duration::from_millis(CHILD_STOP_TIMEOUT_MS), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Waits for a child to exit and restarts it on the same address until the devnet stops.
async fn supervise(
    relayd: PathBuf,
    mut running: Running,
    mut stop: watch::Receiver<bool>,
    events: mpsc::Sender<DevnetEvent>,
) {
    loop {
        tokio::select! {
            status = running.child.wait() => {
                let fenced = status
                    .as_ref()
                    .is_ok_and(|status| status.code() == Some(FENCED_EXIT_CODE));
                let status = status.map_or_else(|error| error.to_string(), |status| status.to_string());
                let name = running.spec.name.clone();
                let _ = events.send(DevnetEvent::Exited { name: name.clone(), status }).await;
                if fenced {
                    // Its standby took over: starting it again on its stale store would only
                    // be fenced again.
                    let _ = events.send(DevnetEvent::Fenced { name: name.clone() }).await;
                    let _ = stop.wait_for(|stop| *stop).await;
                    return;
                }
                let down = running
                    .spec
                    .config
                    .with_file_name(format!("{name}{DOWN_SUFFIX}"));
                let mut delay_ms = CHILD_RESTART_DELAY_MS;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                        _ = stop.changed() => return,
                    }
                    if *stop.borrow() {
                        return;
                    }
                    if down.exists() {
                        // A machine that stays down: look again later.
                        delay_ms = CHILD_RESTART_DELAY_MS_MAX;
                        continue;
                    }
                    match start(&relayd, &running.spec).await {
                        Ok(restarted) => {
                            running = restarted;
                            let event = DevnetEvent::Restarted {
                                name: name.clone(),
                                pid: running.pid(),
                                address: running.address,
                            };
                            let _ = events.send(event).await;
                            break;
                        }
                        Err(error) => {
                            delay_ms = (delay_ms * 2).min(CHILD_RESTART_DELAY_MS_MAX);
                            let event = DevnetEvent::RestartFailed {
                                name: name.clone(),
                                error: error.to_string(),
                                retry_in_ms: delay_ms,
                            };
                            let _ = events.send(event).await;
                        }
                    }
                }
            }
            _ = stop.changed() => {
                stop_child(&mut running.child).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_devnet_on_one_folder_is_told_who_holds_it() {
        let folder = tempfile::tempdir().expect("folder");
        let held = lock_data_folder(folder.path()).expect("the first lock");
        match lock_data_folder(folder.path()) {
            Err(DevnetError::Busy { pid, .. }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected Busy, got {other:?}"),
        }
        drop(held);
        lock_data_folder(folder.path()).expect("free again once the first is gone");
    }

    #[test]
    fn a_config_is_replaced_whole_and_nothing_is_left_beside_it() {
        let folder = tempfile::tempdir().expect("folder");
        let path = folder.path().join("region-1.toml");
        std::fs::write(&path, "listen = \"127.0.1.1:1\"\n").expect("an old file");
        let new = LocatorConfig {
            listen: "127.0.0.1:53".parse().expect("address"),
            ..LocatorConfig::default()
        };
        write_toml(&path, &new, "# header").expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# header\n"), "{text}");
        assert_eq!(previous_listen(&path), Some(new.listen));
        let names: Vec<_> = std::fs::read_dir(folder.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("region-1.toml")]);
    }

    #[test]
    fn the_log_tail_quotes_what_the_child_wrote_last() {
        let folder = tempfile::tempdir().expect("folder");
        let log = folder.path().join("x.log");
        std::fs::write(&log, "old run\n").expect("write");
        let start = std::fs::metadata(&log).expect("metadata").len();
        let mut lines = String::new();
        for i in 0..10 {
            lines.push_str(&format!("line {i}\n"));
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .and_then(|mut file| file.write_all(lines.as_bytes()))
            .expect("append");
        let tail = log_tail(&log, start);
        assert!(tail.contains("line 9") && tail.contains("line 4"));
        assert!(!tail.contains("line 3") && !tail.contains("old run"));
        assert_eq!(log_tail(&log, 10_000), "  (it wrote nothing to its log)");
    }
}
