//! The connection benchmark (`relayd bench connections`, W2): N idle authenticated devices on
//! one edge of a devnet's real processes.
//!
//! The devices are registered first (through [`REGISTRATIONS_IN_FLIGHT_MAX`] connections that
//! close afterwards); once the edge's resident memory has settled it is read, then every device
//! opens its own connection and authenticates on its control stream, up to
//! [`CONNECTS_IN_FLIGHT_MAX`] at once: connections per second is N over the time from the
//! first handshake to the last authentication. The connections are held idle for
//! [`IDLE_HOLD_MS`] (keep-alives flowing) and the edge's memory is read again: the difference
//! over N is its memory per idle connection.
//!
//! Each device keeps its own TLS sessions (`relay_net::DeviceTls`), as a device would: its
//! first login is a full handshake (the edge signs, the device checks the edge's certificate),
//! and the tickets it gets make its next login a resumed one. Once every device left, every
//! device logs in again at once, measured the same way: connections per second of devices that
//! reconnect, and how many resumed (a resumed login checks no certificate). Then every device
//! leaves again, and the edge's memory is watched until it settles: is it back within
//! [`RSS_RETURN_SHARE_TARGET`] of where it began?
//!
//! The devices run in this process, [`DEVICES_PER_ENDPOINT_MAX`] to a UDP socket, so 10,000 of
//! them need a few hundred file descriptors; `RLIMIT_NOFILE` is raised to the hard limit
//! anyway. The figures are compared with the targets and reported met or missed.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_net::DeviceTls;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::BenchError;
use crate::bare_quic::{self, BareQuicCeiling};
use crate::device::{Device, EdgeLink, Endpoints, Pushes};
use crate::limits::{
    CONNECTIONS_PER_SECOND_TARGET, CONNECTIONS_TIMEOUT_MS, CONNECTS_IN_FLIGHT_MAX,
    DEVICES_PER_ENDPOINT_MAX, EDGE_BYTES_PER_CONNECTION_TARGET, IDLE_DEVICES_MAX, IDLE_HOLD_MS,
    REGISTRATION_TIMEOUT_MS, REGISTRATIONS_IN_FLIGHT_MAX, RSS_POLL_INTERVAL_MS,
    RSS_RETURN_SHARE_TARGET, RSS_RETURN_WAIT_MS_MAX, RSS_STEADY_MS,
};
use crate::measure::{
    CpuOf, Percentiles, cpu_time, latency_us, ratio, thousands, udp_receive_buffer_drops,
};
use crate::messages::run_folder;
use crate::servers::Servers;

/// The region whose edge the devices connect to.
const REGION: u32 = 1;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ConnectionsOptions {
    /// The `relayd` executable the devnet runs (the one this runs as).
    pub relayd: PathBuf,
    /// Idle devices.
    pub devices: usize,
    /// Folder on the disk to run in (a temporary folder is made inside it and removed);
    /// `None`: the system's temporary folder.
    pub data: Option<PathBuf>,
    /// How the `relayd` executable was built (`release` or `debug`), for the report.
    pub build: String,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct ConnectionsReport {
    /// How the servers' executable was built.
    pub build: String,
    /// Cores available to this process.
    pub cores: usize,
    /// Idle devices connected.
    pub devices: usize,
    /// Client UDP sockets (QUIC endpoints) the devices shared.
    pub client_sockets: usize,
    /// This process's open-file limit during the run.
    pub open_files_limit: Option<u64>,
    /// Seconds registering the devices took (not measured further).
    pub registration_seconds: f64,
    /// The edge's resident memory before the devices connected, in bytes.
    pub edge_rss_before_bytes: u64,
    /// The edge's resident memory with every device connected and idle, in bytes.
    pub edge_rss_connected_bytes: u64,
    /// The edge's resident memory once every device left (after logging in twice) and it
    /// settled, in bytes.
    pub edge_rss_after_bytes: u64,
    /// `(connected - before) / devices`, in bytes.
    pub edge_bytes_per_connection: f64,
    /// `(after - before) / before`: how far the memory stayed from where it began.
    pub edge_rss_after_share_above_before: f64,
    /// From the first handshake to the last authentication, in seconds.
    pub connect_seconds: f64,
    /// Authenticated connections per second.
    pub connections_per_second: f64,
    /// Handshake plus authentication of one device.
    pub connect_latency: Percentiles,
    /// The edge's CPU seconds while the devices connected.
    pub edge_cpu_seconds_connecting: f64,
    /// The region's CPU seconds while the devices connected (it answers each device's key).
    pub region_cpu_seconds_connecting: f64,
    /// This process's CPU seconds while the devices connected (their handshakes).
    pub bench_cpu_seconds_connecting: Option<f64>,
    /// Edge certificates the devices checked in full while they first connected (one per login
    /// that was not resumed: all of them).
    pub certificates_verified_connecting: u64,
    /// UDP datagrams dropped at full receive buffers while the devices first connected.
    pub udp_receive_drops_connecting: Option<u64>,
    /// The same devices logging in again, with the TLS sessions their first login gave them.
    pub again: LoginWave,
    /// UDP datagrams dropped at full receive buffers while the devices left (both times) and
    /// the edge's memory settled: a close dropped keeps its connection at the edge until it
    /// times out.
    pub udp_receive_drops_leaving: Option<u64>,
    /// The ceiling measured in the same run: a bare QUIC server with the edge's TLS and
    /// transport, the same devices' logins without Relay's.
    pub ceiling: BareQuicCeiling,
    /// The targets.
    pub verdict: ConnectionsVerdict,
}

/// Every device logging in once more, measured like the first logins.
#[derive(Debug, Serialize)]
pub struct LoginWave {
    /// From the first handshake to the last authentication, in seconds.
    pub seconds: f64,
    /// Authenticated connections per second.
    pub connections_per_second: f64,
    /// Handshake plus authentication of one device.
    pub latency: Percentiles,
    /// The edge's CPU seconds meanwhile.
    pub edge_cpu_seconds: f64,
    /// The region's CPU seconds meanwhile.
    pub region_cpu_seconds: f64,
    /// This process's CPU seconds meanwhile.
    pub bench_cpu_seconds: Option<f64>,
    /// Edge certificates checked in full: logins that were not resumed.
    pub certificates_verified: u64,
    /// UDP datagrams dropped meanwhile at a full socket receive buffer, any socket on this
    /// machine ([`udp_receive_buffer_drops`]): each one dropped during a handshake costs its
    /// device a retransmission timeout.
    pub udp_receive_drops: Option<u64>,
}

/// The targets, met or missed.
#[derive(Debug, Serialize)]
pub struct ConnectionsVerdict {
    /// At most [`EDGE_BYTES_PER_CONNECTION_TARGET`] bytes per idle connection.
    pub bytes_per_connection_met: bool,
    /// At least [`CONNECTIONS_PER_SECOND_TARGET`] authenticated connections per second.
    pub connections_per_second_met: bool,
    /// Memory back within [`RSS_RETURN_SHARE_TARGET`] of the start.
    pub memory_back_met: bool,
    /// The verdict as printed.
    pub summary: String,
}

/// The steps [`run`] announces.
pub fn steps() -> u64 {
    // devnet, registration, settling, connecting, holding, leaving, logging in again, leaving
    // again, stopping, the ceiling.
    10
}

/// Runs the connection benchmark. `step` hears of each of the [`steps`] as it begins; when
/// `shutdown` completes first, everything started is stopped and the run fails with
/// [`BenchError::Interrupted`]. On a failure the run's folder (the devnet's logs) is kept.
pub fn run(
    options: &ConnectionsOptions,
    step: &(dyn Fn(&str) + Sync),
    shutdown: impl Future<Output = ()>,
) -> Result<ConnectionsReport, BenchError> {
    if options.devices == 0 || options.devices > IDLE_DEVICES_MAX {
        return Err(BenchError::Invalid(format!(
            "--devices must be within 1..={IDLE_DEVICES_MAX}, not {}",
            options.devices
        )));
    }
    let open_files_limit = raise_open_files_limit();
    let folder = run_folder(options.data.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("starting a runtime in", folder.path()))?;
    let outcome = runtime.block_on(async {
        let mut shutdown = std::pin::pin!(shutdown);
        step("starting the devnet");
        let devnet = folder.path().join("devnet");
        let servers = tokio::select! {
            servers = Servers::start(&options.relayd, 1, &devnet) => servers?,
            () = &mut shutdown => return Err(BenchError::Interrupted),
        };
        let measured = tokio::select! {
            measured = measure(&servers, options.devices, step) => measured,
            () = &mut shutdown => Err(BenchError::Interrupted),
        };
        step("stopping the devnet");
        servers.stop().await;
        let measured = measured?;
        step("the ceiling: a bare QUIC server with the edge's TLS and transport");
        let bare_folder = folder.path().join("bare-quic");
        let ceiling = tokio::select! {
            ceiling = bare_quic::measure(&options.relayd, &bare_folder, options.devices) => {
                ceiling?
            }
            () = &mut shutdown => return Err(BenchError::Interrupted),
        };
        Ok((measured, ceiling))
    });
    drop(runtime);
    let (measured, ceiling) = match outcome {
        Ok(measured) => measured,
        Err(error) => {
            return Err(BenchError::Kept {
                error: Box::new(error),
                folder: folder.keep(),
            });
        }
    };
    let path = folder.path().to_owned();
    folder.close().map_err(BenchError::io("removing", &path))?;
    let devices = options.devices;
    let edge_bytes_per_connection =
        measured.rss_connected.saturating_sub(measured.rss_before) as f64 / devices as f64;
    let edge_rss_after_share_above_before = ratio(
        measured.rss_after as f64 - measured.rss_before as f64,
        measured.rss_before as f64,
    );
    let connections_per_second = measured.first.connections_per_second;
    let verdict = verdict(
        edge_bytes_per_connection,
        connections_per_second,
        edge_rss_after_share_above_before,
    );
    Ok(ConnectionsReport {
        build: options.build.clone(),
        cores: std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        devices,
        client_sockets: measured.client_sockets,
        open_files_limit,
        registration_seconds: measured.registration_seconds,
        edge_rss_before_bytes: measured.rss_before,
        edge_rss_connected_bytes: measured.rss_connected,
        edge_rss_after_bytes: measured.rss_after,
        edge_bytes_per_connection,
        edge_rss_after_share_above_before,
        connect_seconds: measured.first.seconds,
        connections_per_second,
        connect_latency: measured.first.latency,
        edge_cpu_seconds_connecting: measured.first.edge_cpu_seconds,
        region_cpu_seconds_connecting: measured.first.region_cpu_seconds,
        bench_cpu_seconds_connecting: measured.first.bench_cpu_seconds,
        certificates_verified_connecting: measured.first.certificates_verified,
        udp_receive_drops_connecting: measured.first.udp_receive_drops,
        again: measured.again,
        udp_receive_drops_leaving: measured.udp_receive_drops_leaving,
        ceiling,
        verdict,
    })
}

/// Raises this process's soft open-file limit to its hard limit; returns the limit in force.
fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(maximum) = limit.maximum
        && limit.current < Some(maximum)
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            },
        )
        .is_err()
    {
        tracing::warn!("could not raise the open-file limit to {maximum}");
    }
    getrlimit(Resource::Nofile).current
}

/// What one run's devnet phase measured.
struct Measured {
    client_sockets: usize,
    registration_seconds: f64,
    rss_before: u64,
    rss_connected: u64,
    rss_after: u64,
    first: LoginWave,
    again: LoginWave,
    udp_receive_drops_leaving: Option<u64>,
}

/// A registered device and what it keeps across its logins: its TLS sessions.
struct IdleDevice {
    device: Device,
    tls: DeviceTls,
}

async fn measure(
    servers: &Servers,
    devices: usize,
    step: &(dyn Fn(&str) + Sync),
) -> Result<Measured, BenchError> {
    let (edge, bind) = servers.edge(REGION)?;
    let edge_pid = servers.edge_pid(REGION)?;
    let endpoints = Arc::new(Endpoints::new(bind, servers.roots()?)?);

    step(&format!(
        "registering {} devices",
        thousands(devices as f64)
    ));
    let began = Instant::now();
    let registered = tokio::time::timeout(
        Duration::from_millis(REGISTRATION_TIMEOUT_MS),
        register(&endpoints, edge, devices),
    )
    .await
    .map_err(|_| {
        BenchError::Timeout(format!(
            "registering {devices} devices took longer than {REGISTRATION_TIMEOUT_MS} ms"
        ))
    })??;
    let registration_seconds = began.elapsed().as_secs_f64();
    endpoints.wait_idle().await;

    step("waiting for the edge's memory to settle");
    let rss_before = settled_rss(edge_pid).await?;

    let roots = servers.roots()?;
    let registered = registered
        .into_iter()
        .map(|device| {
            let tls = DeviceTls::new(roots.clone())
                .map_err(BenchError::net("a device's TLS configuration"))?;
            Ok(Arc::new(IdleDevice { device, tls }))
        })
        .collect::<Result<Vec<_>, BenchError>>()?;

    step(&format!(
        "connecting and authenticating {} devices",
        thousands(devices as f64)
    ));
    let (connected, first) = login_wave(servers, &endpoints, edge, &registered).await?;

    step("holding the connections idle");
    tokio::time::sleep(Duration::from_millis(IDLE_HOLD_MS)).await;
    let still_open = connected
        .links
        .iter()
        .filter(|(link, _)| link.is_open())
        .count();
    if still_open != devices {
        return Err(BenchError::Refused(format!(
            "{} of {devices} idle connections closed while held",
            devices - still_open
        )));
    }
    let rss_connected = Servers::resident_bytes(edge_pid)?;

    step("every device leaves");
    let drops_before_leaving = udp_receive_buffer_drops();
    leave(&endpoints, connected).await;

    // At once, so that this wave too finds the homes that registration cached (for
    // `DIRECTORY_CACHE_TTL_MS`); the region's CPU per login shows if it did not.
    step(&format!(
        "{} devices log in again",
        thousands(devices as f64)
    ));
    let (connected, again) = login_wave(servers, &endpoints, edge, &registered).await?;
    step("every device leaves again");
    leave(&endpoints, connected).await;
    let rss_after = settled_rss(edge_pid).await?;
    let udp_receive_drops_leaving = drops_since(drops_before_leaving)
        .zip(again.udp_receive_drops)
        .map(|(both, wave)| both.saturating_sub(wave));
    Ok(Measured {
        client_sockets: endpoints.sockets(),
        registration_seconds,
        rss_before,
        rss_connected,
        rss_after,
        first,
        again,
        udp_receive_drops_leaving,
    })
}

/// Every device of `devices` connects and authenticates ([`connect`]), timed, with the CPU of
/// every process and the certificates the devices checked meanwhile.
async fn login_wave(
    servers: &Servers,
    endpoints: &Arc<Endpoints>,
    edge: std::net::SocketAddr,
    devices: &[Arc<IdleDevice>],
) -> Result<(Connected, LoginWave), BenchError> {
    let verified = || {
        devices
            .iter()
            .map(|device| device.tls.certificates_verified())
            .sum::<u64>()
    };
    let verified_before = verified();
    let drops_before = udp_receive_buffer_drops();
    let before = servers.mark();
    let cpu_before = cpu_time(CpuOf::Process);
    let began = Instant::now();
    let connected = connect(endpoints, edge, devices).await?;
    let seconds = began.elapsed().as_secs_f64();
    let after = servers.mark();
    let cpu_after = cpu_time(CpuOf::Process);
    let usage = servers.usage(&before, &after);
    let cpu_of = |prefix: &str| {
        usage
            .cpu_seconds_by_process
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, seconds)| seconds)
            .sum::<f64>()
    };
    let wave = LoginWave {
        seconds,
        connections_per_second: ratio(devices.len() as f64, seconds),
        latency: connected.latency,
        edge_cpu_seconds: cpu_of("edge-"),
        region_cpu_seconds: cpu_of("region-"),
        bench_cpu_seconds: cpu_before
            .zip(cpu_after)
            .map(|(before, after)| after.saturating_sub(before).as_secs_f64()),
        certificates_verified: verified().saturating_sub(verified_before),
        udp_receive_drops: drops_since(drops_before),
    };
    Ok((connected, wave))
}

/// Every device closes its connection; returns once the closes are sent.
async fn leave(endpoints: &Endpoints, connected: Connected) {
    leave_all(endpoints, connected.links.into_iter().map(|(link, _)| link)).await;
}

/// UDP datagrams dropped at full receive buffers since `before` was read.
pub(crate) fn drops_since(before: Option<u64>) -> Option<u64> {
    before
        .zip(udp_receive_buffer_drops())
        .map(|(before, now)| now.saturating_sub(before))
}

/// Closes every one of `links`; returns once the closes are sent.
pub(crate) async fn leave_all(endpoints: &Endpoints, links: impl IntoIterator<Item = EdgeLink>) {
    let links: Vec<EdgeLink> = links.into_iter().collect();
    for link in &links {
        link.close();
    }
    endpoints.wait_idle().await;
    drop(links);
}

/// Registers `devices` devices named `idle-<i>`: [`REGISTRATIONS_IN_FLIGHT_MAX`] connections
/// each register their share one after the other, then close.
async fn register(
    endpoints: &Arc<Endpoints>,
    edge: std::net::SocketAddr,
    devices: usize,
) -> Result<Vec<Device>, BenchError> {
    let workers = REGISTRATIONS_IN_FLIGHT_MAX.min(devices);
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        let endpoints = endpoints.clone();
        tasks.spawn(async move {
            let link = endpoints.connect(edge).await?;
            let mut registered = Vec::new();
            for index in (worker..devices).step_by(workers) {
                registered.push((
                    index,
                    Device::register(&link, &format!("idle-{index}")).await?,
                ));
            }
            link.close();
            Ok::<_, BenchError>(registered)
        });
    }
    let mut all: Vec<Option<Device>> = (0..devices).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let registered = joined
            .map_err(|error| BenchError::Refused(format!("a registration failed: {error}")))??;
        for (index, device) in registered {
            all[index] = Some(device);
        }
    }
    all.into_iter()
        .map(|device| {
            device.ok_or_else(|| BenchError::Refused("a registration did not finish".into()))
        })
        .collect()
}

/// The devices' idle connections (and the receivers of their control streams, kept so that
/// the streams stay open) and how long each took.
struct Connected {
    links: Vec<(EdgeLink, watch::Receiver<Pushes>)>,
    latency: Percentiles,
}

/// Opens and authenticates a connection for every device, each with its own TLS sessions.
async fn connect(
    endpoints: &Arc<Endpoints>,
    edge: std::net::SocketAddr,
    devices: &[Arc<IdleDevice>],
) -> Result<Connected, BenchError> {
    let (links, latency) = connect_each(devices, |device| {
        let endpoints = endpoints.clone();
        async move {
            let link = endpoints.connect_with(edge, device.tls.config()).await?;
            let pushes = device.device.authenticate(&link, 0).await?;
            Ok((link, pushes))
        }
    })
    .await?;
    Ok(Connected { links, latency })
}

/// Runs `login` for every one of `devices`, [`CONNECTS_IN_FLIGHT_MAX`] at once, all within
/// [`CONNECTIONS_TIMEOUT_MS`]; returns what each returned and how long each took.
pub(crate) async fn connect_each<D, L, F, Fut>(
    devices: &[Arc<D>],
    login: F,
) -> Result<(Vec<L>, Percentiles), BenchError>
where
    D: Send + Sync + 'static,
    L: Send + 'static,
    F: Fn(Arc<D>) -> Fut,
    Fut: Future<Output = Result<L, BenchError>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT_MAX));
    let mut tasks = JoinSet::new();
    for device in devices {
        let permits = permits.clone();
        let login = login(device.clone());
        tasks.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| BenchError::Refused("connecting stopped".into()))?;
            let began = Instant::now();
            let logged_in = login.await?;
            Ok::<_, BenchError>((logged_in, latency_us(began.elapsed())))
        });
    }
    let joined = async {
        let mut all = Vec::with_capacity(devices.len());
        let mut latencies_us = Vec::with_capacity(devices.len());
        while let Some(joined) = tasks.join_next().await {
            let (logged_in, latency) = joined
                .map_err(|error| BenchError::Refused(format!("a connection failed: {error}")))??;
            all.push(logged_in);
            latencies_us.push(latency);
        }
        Ok::<_, BenchError>((all, Percentiles::of(latencies_us)))
    };
    tokio::time::timeout(Duration::from_millis(CONNECTIONS_TIMEOUT_MS), joined)
        .await
        .map_err(|_| {
            BenchError::Timeout(format!(
                "connecting {} devices took longer than {CONNECTIONS_TIMEOUT_MS} ms",
                devices.len()
            ))
        })?
}

/// The resident memory of `pid` once it stopped changing for [`RSS_STEADY_MS`] (or after
/// [`RSS_RETURN_WAIT_MS_MAX`], whichever comes first).
pub(crate) async fn settled_rss(pid: u32) -> Result<u64, BenchError> {
    let deadline = Instant::now() + Duration::from_millis(RSS_RETURN_WAIT_MS_MAX);
    let mut last = Servers::resident_bytes(pid)?;
    let mut steady_since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(RSS_POLL_INTERVAL_MS)).await;
        let now = Servers::resident_bytes(pid)?;
        if now != last {
            last = now;
            steady_since = Instant::now();
        } else if steady_since.elapsed() >= Duration::from_millis(RSS_STEADY_MS) {
            break;
        }
    }
    Ok(last)
}

fn verdict(bytes_per_connection: f64, per_second: f64, share_above: f64) -> ConnectionsVerdict {
    let bytes_per_connection_met = bytes_per_connection <= EDGE_BYTES_PER_CONNECTION_TARGET as f64;
    let connections_per_second_met = per_second >= CONNECTIONS_PER_SECOND_TARGET;
    let memory_back_met = share_above <= RSS_RETURN_SHARE_TARGET;
    let mark = |met: bool| if met { "met" } else { "MISSED" };
    let summary = format!(
        "targets: ≤ {} B per idle connection: {} ({} B); ≥ {} authenticated connections/s: {} \
         ({}/s); memory back within {:.0}% of the start: {} ({:+.1}%)",
        thousands(EDGE_BYTES_PER_CONNECTION_TARGET as f64),
        mark(bytes_per_connection_met),
        thousands(bytes_per_connection),
        thousands(CONNECTIONS_PER_SECOND_TARGET),
        mark(connections_per_second_met),
        thousands(per_second),
        RSS_RETURN_SHARE_TARGET * 100.0,
        mark(memory_back_met),
        share_above * 100.0,
    );
    ConnectionsVerdict {
        bytes_per_connection_met,
        connections_per_second_met,
        memory_back_met,
        summary,
    }
}

impl ConnectionsReport {
    /// The report as a table with its context lines.
    pub fn table(&self) -> String {
        let mebibytes = |bytes: u64| format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0));
        format!(
            "relayd bench connections ({} build): {} idle authenticated devices on one edge\n\
             {} cores; devices in this process, {} per UDP socket ({} sockets, open-file limit \
             {}); registering them took {:.1} s\n\n\
             | edge RSS before | connected | after they left | per idle connection | \
             connections/s | connect + auth p50 / p99 / p99.9 ms | CPU s while connecting: \
             edge / region / bench |\n\
             |--:|--:|--:|--:|--:|--:|--:|\n\
             | {} | {} | {} ({:+.1}%) | {} B | {} ({:.2} s) | {} | {:.1} / {:.1} / {} |\n\n\
             | login | connections/s | connect + auth p50 / p99 / p99.9 ms | CPU ms / login: \
             edge / region / bench | certificates checked |\n\
             |---|--:|--:|--:|--:|\n\
             {}\n{}\n\n\
             {}\n\n\
             {}\n\n\
             {}\n",
            self.build,
            thousands(self.devices as f64),
            self.cores,
            DEVICES_PER_ENDPOINT_MAX,
            self.client_sockets,
            self.open_files_limit
                .map_or_else(|| "unknown".to_owned(), |limit| limit.to_string()),
            self.registration_seconds,
            mebibytes(self.edge_rss_before_bytes),
            mebibytes(self.edge_rss_connected_bytes),
            mebibytes(self.edge_rss_after_bytes),
            self.edge_rss_after_share_above_before * 100.0,
            thousands(self.edge_bytes_per_connection),
            thousands(self.connections_per_second),
            self.connect_seconds,
            self.connect_latency.cell(),
            self.edge_cpu_seconds_connecting,
            self.region_cpu_seconds_connecting,
            self.bench_cpu_seconds_connecting
                .map_or_else(|| "n/a".to_owned(), |seconds| format!("{seconds:.1}")),
            self.login_row(
                "first (full TLS handshake)",
                &LoginWave {
                    seconds: self.connect_seconds,
                    connections_per_second: self.connections_per_second,
                    latency: self.connect_latency,
                    edge_cpu_seconds: self.edge_cpu_seconds_connecting,
                    region_cpu_seconds: self.region_cpu_seconds_connecting,
                    bench_cpu_seconds: self.bench_cpu_seconds_connecting,
                    certificates_verified: self.certificates_verified_connecting,
                    udp_receive_drops: self.udp_receive_drops_connecting,
                }
            ),
            self.login_row("again (its TLS session)", &self.again),
            self.ceiling_table(),
            self.drops_line(),
            self.verdict.summary,
        )
    }

    /// Datagrams dropped at full socket buffers in each phase, edge and bare server.
    fn drops_line(&self) -> String {
        let count = |drops: Option<u64>| drops.map_or_else(|| "n/a".to_owned(), |n| n.to_string());
        let bare = &self.ceiling;
        format!(
            "UDP datagrams dropped at full socket buffers (any socket), first logins / again / \
             leaving: edge {} / {} / {}, bare {} / {} / {}",
            count(self.udp_receive_drops_connecting),
            count(self.again.udp_receive_drops),
            count(self.udp_receive_drops_leaving),
            count(bare.first.udp_receive_drops),
            count(bare.again.udp_receive_drops),
            count(bare.udp_receive_drops_leaving),
        )
    }

    /// The edge next to the bare QUIC server of the same run.
    fn ceiling_table(&self) -> String {
        let bare = &self.ceiling;
        let per_login_ms = |seconds: Option<f64>| {
            seconds.map_or_else(
                || "n/a".to_owned(),
                |seconds| format!("{:.3}", seconds * 1_000.0 / self.devices as f64),
            )
        };
        let share = |edge: f64, bare: f64| format!("{:.0} %", ratio(edge, bare) * 100.0);
        format!(
            "ceiling in this run: a bare QUIC server in a process of its own, with the edge's \
             TLS, transport, socket and allocator; each device's login is its two frames \
             echoed on a stream kept open (no signature, no device key, nothing of Relay's)\n\n\
             | server | per idle connection | after they left | first logins/s | again/s | \
             CPU ms / first login: server / devices |\n\
             |---|--:|--:|--:|--:|--:|\n\
             | bare QUIC (ceiling) | {} B | {:+.1}% | {} | {} | {} / {} |\n\
             | edge | {} B ({:.2}× bare) | {:+.1}% | {} ({} of bare) | {} ({} of bare) | \
             {} / {} |",
            thousands(bare.bytes_per_connection),
            bare.rss_after_share_above_before * 100.0,
            thousands(bare.first.connections_per_second),
            thousands(bare.again.connections_per_second),
            per_login_ms(bare.first.server_cpu_seconds),
            per_login_ms(bare.first.bench_cpu_seconds),
            thousands(self.edge_bytes_per_connection),
            ratio(self.edge_bytes_per_connection, bare.bytes_per_connection),
            self.edge_rss_after_share_above_before * 100.0,
            thousands(self.connections_per_second),
            share(
                self.connections_per_second,
                bare.first.connections_per_second
            ),
            thousands(self.again.connections_per_second),
            share(
                self.again.connections_per_second,
                bare.again.connections_per_second
            ),
            per_login_ms(Some(self.edge_cpu_seconds_connecting)),
            per_login_ms(self.bench_cpu_seconds_connecting),
        )
    }

    fn login_row(&self, name: &str, wave: &LoginWave) -> String {
        let per_login_ms = |seconds: f64| format!("{:.3}", seconds * 1_000.0 / self.devices as f64);
        format!(
            "| {name} | {} ({:.2} s) | {} | {} / {} / {} | {} of {} |",
            thousands(wave.connections_per_second),
            wave.seconds,
            wave.latency.cell(),
            per_login_ms(wave.edge_cpu_seconds),
            per_login_ms(wave.region_cpu_seconds),
            wave.bench_cpu_seconds
                .map_or_else(|| "n/a".to_owned(), per_login_ms),
            thousands(wave.certificates_verified as f64),
            thousands(self.devices as f64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_names_each_target() {
        let good = verdict(8_000.0, 5_000.0, 0.02);
        assert!(good.bytes_per_connection_met && good.connections_per_second_met);
        assert!(good.memory_back_met);
        let bad = verdict(40_000.0, 900.0, 0.5);
        assert!(!bad.bytes_per_connection_met && !bad.connections_per_second_met);
        assert!(!bad.memory_back_met);
        assert_eq!(bad.summary.matches("MISSED").count(), 3, "{}", bad.summary);
    }

    #[test]
    fn the_open_file_limit_only_goes_up() {
        use rustix::process::{Resource, getrlimit};
        let before = getrlimit(Resource::Nofile).current;
        let after = raise_open_files_limit();
        match (before, after) {
            (Some(before), Some(after)) => assert!(after >= before, "{after} < {before}"),
            // None is unlimited.
            (_, None) => {}
            (None, Some(after)) => panic!("an unlimited limit became {after}"),
        }
    }
}
