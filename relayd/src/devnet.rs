//! `relayd devnet`: the whole topology as separate processes on loopback.
//!
//! Region k's service binds 127.0.k.1 and its edge 127.0.k.2; its clients bind other
//! addresses of 127.0.k.0/24, which is how the locator tells which region they are in. The
//! locator binds 127.0.0.1. Every process gets a config file under the data folder; after the
//! first start the files hold the bound addresses, so a restart reuses the same ports when they
//! are free (clients remember the locator address). A child that dies is restarted on the same
//! address; Ctrl-C (or SIGTERM) stops every child.
//!
//! Regions start one after the other, the directory writer (region 1) first, and the peers file
//! is rewritten after each, so a region starting on a new store can ask the writer's census. A
//! child that exits before listening (a region refusing its store, say) is reported with the
//! error it printed.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use home_region::config::{PeerEntry, PeersFile, RegionConfig};
use relay_edge::config::{EdgeConfig, LimitsConfig, RegionAddress};
use relay_edge::locator::{LocatorConfig, RegionEntry};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::pki::Pki;
use crate::serve::shutdown_signal;

/// How long a child may take to print its "listening on" line.
const CHILD_START_TIMEOUT_MS: u64 = 30_000;
/// How long a child may take to exit after SIGTERM before it is killed.
const CHILD_STOP_TIMEOUT_MS: u64 = 5_000;
/// Pause before restarting a child that died; it doubles after each failed restart.
const CHILD_RESTART_DELAY_MS: u64 = 200;
/// Longest pause between two restarts of a child that keeps failing to start (a region that
/// refuses its store fails the same way until an operator acts).
const CHILD_RESTART_DELAY_MS_MAX: u64 = 10_000;
/// Bytes of a child's log read back to find why it exited before listening.
const CHILD_LOG_TAIL_BYTES_MAX: u64 = 64 * 1024;

// A region starting on an empty store waits for the directory writer's census; the devnet must
// wait longer for its "listening" line than that.
const _: () = assert!(
    CHILD_START_TIMEOUT_MS > home_region::store_check::WRITER_CENSUS_WAIT_MS_MAX,
    "a region waiting for the directory writer would be killed as too slow to start"
);
const _: () = assert!(CHILD_RESTART_DELAY_MS < CHILD_RESTART_DELAY_MS_MAX);
/// Most regions a devnet runs (127.0.k.0/24 needs k ≤ 254).
pub(crate) const DEVNET_REGIONS_MAX: u32 = 16;

/// Arguments of `relayd devnet`.
#[derive(Debug, Args)]
pub struct DevnetArgs {
    /// How many regions (each with its own edge).
    #[arg(long, default_value_t = 2)]
    regions: u32,
    /// Folder holding every process's store, config, certificates and logs.
    #[arg(long)]
    data: PathBuf,
    /// Print machine-readable JSON lines instead of the guide.
    #[arg(long)]
    json: bool,
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

fn region_ip(region: u32, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, region as u8, host))
}

/// The address in an existing config file's `listen`, to reuse its port.
fn previous_listen(path: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: toml::Value = toml::from_str(&text).ok()?;
    value.get("listen")?.as_str()?.parse().ok()
}

fn write_toml<T: serde::Serialize>(path: &Path, value: &T, header: &str) -> Result<()> {
    let body = toml::to_string_pretty(value).context("serializing a config")?;
    std::fs::write(path, format!("{header}\n{body}"))
        .with_context(|| format!("writing {}", path.display()))
}

/// `relayd devnet`.
pub fn run(args: DevnetArgs) -> Result<()> {
    if args.regions == 0 || args.regions > DEVNET_REGIONS_MAX {
        bail!("--regions must be between 1 and {DEVNET_REGIONS_MAX}");
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let data = args
        .data
        .canonicalize()
        .context("resolving the data folder")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(devnet(args.regions, data, args.json))
}

async fn devnet(regions: u32, data: PathBuf, json: bool) -> Result<()> {
    let pki = Pki::open(&data.join("pki"))?;
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs).context("creating the logs folder")?;
    let exe = std::env::current_exe().context("finding the relayd executable")?;
    let peers_file = data.join("peers.toml");
    let (stop_sender, stop) = watch::channel(false);
    let mut running: Vec<Running> = Vec::new();

    let result = async {
        // Regions first: edges need their addresses.
        let mut peers = PeersFile::default();
        for region in 1..=regions {
            let certs = pki.region(region)?;
            let name = format!("region-{region}");
            let started = launch(
                &exe,
                &data,
                &name,
                "region",
                SocketAddr::new(region_ip(region, 1), 0),
                |listen| RegionConfig {
                    region,
                    listen,
                    data_dir: data.join(&name),
                    directory_writer: 1,
                    peers_file: peers_file.clone(),
                    ca_cert: pki.ca_cert(),
                    cert: certs.cert.clone(),
                    key: certs.key.clone(),
                },
            )
            .await?;
            peers.regions.push(PeerEntry {
                region,
                address: started.address,
            });
            report(json, &started, "started");
            running.push(started);
            // The regions after this one may need its address now (a new store asks the
            // directory writer before its region listens).
            write_toml(
                &peers_file,
                &peers,
                "# Every region's internal address. Written by relayd devnet.",
            )?;
        }

        let region_addresses: Vec<RegionAddress> = peers
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
            let name = format!("edge-{region}");
            let started = launch(
                &exe,
                &data,
                &name,
                "edge",
                SocketAddr::new(region_ip(region, 2), 0),
                |listen| EdgeConfig {
                    region,
                    listen,
                    ca_cert: pki.ca_cert(),
                    cert: certs.cert.clone(),
                    key: certs.key.clone(),
                    regions: region_addresses.clone(),
                    limits: LimitsConfig::default(),
                },
            )
            .await?;
            edges.push(started.address);
            report(json, &started, "started");
            running.push(started);
        }

        let localhost = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let started = launch(&exe, &data, "locator", "locator", localhost, |listen| {
            locator_config(listen, &edges)
        })
        .await?;
        let locator = started.address;
        report(json, &started, "started");
        running.push(started);

        print_guide(json, &data, &pki.ca_cert(), locator, &running);
        Ok::<_, anyhow::Error>(())
    }
    .await;

    if let Err(error) = result {
        for mut started in running {
            stop_child(&mut started.child).await;
        }
        return Err(error);
    }

    let mut supervisors = tokio::task::JoinSet::new();
    for started in running {
        supervisors.spawn(supervise(exe.clone(), started, stop.clone(), json));
    }
    shutdown_signal().await;
    let _ = stop_sender.send(true);
    while supervisors.join_next().await.is_some() {}
    say(
        json,
        serde_json::json!({"event": "stopped"}),
        "devnet stopped".into(),
    );
    Ok(())
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

/// Starts the child `name` with the config `make` builds for a listen address, preferring the
/// address its previous config file held (so a restarted devnet keeps its ports).
async fn launch<C: serde::Serialize>(
    exe: &Path,
    data: &Path,
    name: &str,
    role: &'static str,
    default_listen: SocketAddr,
    make: impl Fn(SocketAddr) -> C,
) -> Result<Running> {
    let config_path = data.join(format!("{name}.toml"));
    let spec = ChildSpec {
        name: name.to_owned(),
        role,
        config: config_path.clone(),
        log: data.join("logs").join(format!("{name}.log")),
    };
    let preferred = previous_listen(&config_path).unwrap_or(default_listen);
    let write = |listen| write_toml(&config_path, &make(listen), "# Written by relayd devnet.");
    start_preferring(exe, &spec, write, preferred).await
}

/// Starts a child on its preferred address, falling back to any free port there.
async fn start_preferring(
    exe: &Path,
    spec: &ChildSpec,
    write_config: impl Fn(SocketAddr) -> Result<()>,
    preferred: SocketAddr,
) -> Result<Running> {
    write_config(preferred)?;
    match start(exe, spec).await {
        Ok(running) => {
            write_config(running.address)?;
            Ok(running)
        }
        // A port taken meanwhile: any free one will do. A child that refused to start for
        // another reason (a region refusing its store) would refuse on any port.
        Err(error) if preferred.port() != 0 && !refused_for_another_reason(&error) => {
            tracing::warn!(name = %spec.name, %error, "preferred port unavailable; taking a free one");
            write_config(SocketAddr::new(preferred.ip(), 0))?;
            let running = start(exe, spec).await?;
            write_config(running.address)?;
            Ok(running)
        }
        Err(error) => Err(error),
    }
}

/// Spawns a child and waits for its "listening on" line. A child that exits first is reported
/// with the error it printed (its last `relayd: …` line).
async fn start(exe: &Path, spec: &ChildSpec) -> Result<Running> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("opening {}", spec.log.display()))?;
    let log_start = log.metadata().map(|metadata| metadata.len()).unwrap_or(0);
    let mut child = Command::new(exe)
        .arg(spec.role)
        .arg("--config")
        .arg(&spec.config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", spec.name))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from {}", spec.name))?;
    let mut lines = BufReader::new(stdout).lines();
    let listening = async {
        while let Some(line) = lines.next_line().await? {
            if let Some((_, address)) = line.split_once(" listening on ") {
                return address
                    .trim()
                    .parse::<SocketAddr>()
                    .map(Some)
                    .map_err(|error| anyhow!("bad address in {line:?}: {error}"));
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
            return Err(ExitedBeforeListening {
                name: spec.name.clone(),
                status,
                error: last_error_line(&spec.log, log_start),
                log: spec.log.clone(),
            }
            .into());
        }
        Ok(Err(error)) => {
            stop_child(&mut child).await;
            return Err(error);
        }
        Err(_) => {
            stop_child(&mut child).await;
            bail!(
                "{} did not start within {CHILD_START_TIMEOUT_MS} ms (see {})",
                spec.name,
                spec.log.display()
            );
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

/// A child exited before printing its "listening on" line.
#[derive(Debug)]
struct ExitedBeforeListening {
    name: String,
    status: String,
    /// The error it printed, if any.
    error: Option<String>,
    log: PathBuf,
}

impl std::fmt::Display for ExitedBeforeListening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some(error) => write!(
                f,
                "{} refused to start ({}): {error} (log: {})",
                self.name,
                self.status,
                self.log.display()
            ),
            None => write!(
                f,
                "{} exited before listening ({}; see {})",
                self.name,
                self.status,
                self.log.display()
            ),
        }
    }
}

impl std::error::Error for ExitedBeforeListening {}

/// Whether a start failed for another reason than its address being taken.
fn refused_for_another_reason(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<ExitedBeforeListening>()
        .and_then(|exited| exited.error.as_deref())
        .is_some_and(|printed| !printed.contains("in use"))
}

/// The last error line (`relayd: …`) a child wrote to its log after byte `from`, without the
/// prefix.
fn last_error_line(log: &Path, from: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(log).ok()?;
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

async fn stop_child(child: &mut Child) {
    if let Some(pid) = child
        .id()
        .and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
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
    exe: PathBuf,
    mut running: Running,
    mut stop: watch::Receiver<bool>,
    json: bool,
) {
    loop {
        tokio::select! {
            status = running.child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                say(json, serde_json::json!({"event": "exited", "name": running.spec.name, "status": status}),
                    format!("{} exited ({status}); restarting", running.spec.name));
                let mut delay_ms = CHILD_RESTART_DELAY_MS;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                        _ = stop.changed() => return,
                    }
                    if *stop.borrow() {
                        return;
                    }
                    match start(&exe, &running.spec).await {
                        Ok(restarted) => {
                            running = restarted;
                            report(json, &running, "restarted");
                            break;
                        }
                        Err(error) => {
                            delay_ms = (delay_ms * 2).min(CHILD_RESTART_DELAY_MS_MAX);
                            say(json, serde_json::json!({"event": "restart_failed", "name": running.spec.name, "error": format!("{error:#}"), "retry_in_ms": delay_ms}),
                                format!("{} could not restart: {error:#}; retrying in {delay_ms} ms", running.spec.name));
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

fn say(json: bool, value: serde_json::Value, line: String) {
    let mut stdout = std::io::stdout().lock();
    let _ = if json {
        writeln!(stdout, "{value}")
    } else {
        writeln!(stdout, "{line}")
    };
    let _ = stdout.flush();
}

fn report(json: bool, running: &Running, event: &str) {
    let pid = running.child.id().unwrap_or(0);
    say(
        json,
        serde_json::json!({"event": event, "name": running.spec.name, "pid": pid, "address": running.address.to_string()}),
        format!(
            "{} {event} (pid {pid}) listening on {}",
            running.spec.name, running.address
        ),
    );
}

fn print_guide(json: bool, data: &Path, ca: &Path, locator: SocketAddr, running: &[Running]) {
    let regions: Vec<u32> = running
        .iter()
        .filter(|r| r.spec.role == "region")
        .count()
        .try_into()
        .map(|n: u32| (1..=n).collect())
        .unwrap_or_default();
    let pid_of = |name: &str| {
        running
            .iter()
            .find(|r| r.spec.name == name)
            .and_then(|r| r.child.id())
    };
    let address_of = |name: &str| {
        running
            .iter()
            .find(|r| r.spec.name == name)
            .map(|r| r.address.to_string())
    };
    if json {
        let regions: Vec<serde_json::Value> = regions
            .iter()
            .map(|&k| {
                serde_json::json!({
                    "region": k,
                    "service": address_of(&format!("region-{k}")),
                    "service_pid": pid_of(&format!("region-{k}")),
                    "edge": address_of(&format!("edge-{k}")),
                    "edge_pid": pid_of(&format!("edge-{k}")),
                    "client_bind": region_ip(k, 10).to_string(),
                })
            })
            .collect();
        say(
            true,
            serde_json::json!({
                "event": "ready", "locator": locator.to_string(), "ca": ca.display().to_string(),
                "data": data.display().to_string(), "locator_pid": pid_of("locator"), "regions": regions,
            }),
            String::new(),
        );
        return;
    }
    let mut guide = format!(
        "\ndevnet ready: {} regions, data in {}\n\nFind your edge (the answer depends on the address you ask from):\n  dig -b 127.0.1.10 @{} -p {} edge.relay.test\n",
        regions.len(),
        data.display(),
        locator.ip(),
        locator.port()
    );
    let people = ["alice", "bob", "carol", "dave"];
    guide.push_str("\nRegister people (region k's clients bind an address in 127.0.k.0/24):\n");
    for &k in &regions {
        let name = people.get(k as usize - 1).copied().unwrap_or("user");
        guide.push_str(&format!(
            "  relay --data ./{name} register {name} --locator {locator} --bind {} --ca {}\n",
            region_ip(k, 10),
            ca.display()
        ));
    }
    guide.push_str("\nThen: relay --data ./alice send bob \"hi\" --wait   |   relay --data ./bob sync\n\nStop everything with Ctrl-C.\n");
    say(false, serde_json::Value::Null, guide);
}
