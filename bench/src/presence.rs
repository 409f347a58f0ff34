//! The presence benchmark (`relayd bench presence`, issue 13): presence and typing through a
//! two-region devnet's real processes, driven by [`crate::device`]'s opaque devices in this
//! process, next to the raw QUIC request/response ceiling measured in the same run.
//!
//! - **P1 watch setup**: W watcher devices homed in region 2 (on its edge) each watch the same
//!   A accounts homed in region 1, one `WatchPresence` after the other per watcher,
//!   [`WATCHES_IN_FLIGHT_MAX`] watchers at once. Each watch goes on edge 2's subscription stream
//!   to region 1, which answers with the account's state as a push: watches per second (to the
//!   last `Watching` answer), the time until every watcher had the first state of every
//!   account, and watch → first state latency.
//! - **P1 fan-out**: then the A accounts' devices (one each) connect to edge 1 and leave again,
//!   [`PresenceOptions::cycles`] times, in waves: first all A at once (all connect, and once
//!   every watcher was told, or [`PRESENCE_WAVE_TIMEOUT_MS`] passed, all leave, and so on: bursts
//!   of A × W updates), then one account at a time (bursts of W updates, one change's fan-out).
//!   Each connect and each leave is a change region 1 learns from edge 1's subscription stream
//!   and tells every watcher through edge 2. Reported per mode: presence updates delivered to
//!   watchers per second over the churn, and change → watcher latency p50/p99/p99.9 (same host
//!   clock: the change's instant is taken in this process, the push's when a watcher's control
//!   stream brought it). A connect counts from the moment the account's device began
//!   authenticating (after its QUIC handshake; the edge subscribes the device before it
//!   answers, so a later instant could come after the push), which includes the device's own
//!   authentication exchange, reported apart; a leave counts from the moment the device closed
//!   its connection. Each watcher must get every change, and end with every account offline.
//! - **P2 typing across regions**: S sender connections homed in region 1 each send a typing
//!   indicator every [`TYPING_INTERVAL_MS`] (the edge's sustained per-connection rate, so none
//!   is refused; their phases spread over the interval), alternating typing and stopped, to one
//!   receiver account homed in region 2 whose one device is connected; the notices pushed to
//!   it per second and send → receive latency.
//! - **Ceiling**: raw QUIC request/response ([`crate::ceilings::measure_quic`]) with the typing
//!   indicator's frame, [`PRESENCE_QUIC_REQUESTERS`] requesters, after the devnet stopped.
//!
//! Each row reads the edges' and regions' CPU time from `/proc` and reports deliveries per
//! server CPU-second. The matching of pushes to the changes and indicators that caused them is
//! sans-IO ([`fan_out`], [`first_states`], [`typing_deliveries`]), tested without a runtime.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_proto::wire::{ClientRequest, PresenceState, TypingSignal, client_request};
use relay_proto::{AccountId, DeviceAddress, ErrorCode};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::BenchError;
use crate::ceilings::{self, QuicCeiling};
use crate::device::{
    CallError, Device, EdgeLink, Endpoints, Pushes, Signal, SignalEvent, SignalLog,
};
use crate::limits::{
    CONNECTS_IN_FLIGHT_MAX, PRESENCE_ACCOUNTS_MAX, PRESENCE_CYCLES_MAX, PRESENCE_QUIC_REQUESTERS,
    PRESENCE_WATCHERS_MAX, PRESENCE_WAVE_POLL_MS, PRESENCE_WAVE_TIMEOUT_MS,
    REGISTRATION_TIMEOUT_MS, SIGNALS_KEPT_MAX, TYPING_DRAIN_MS, TYPING_INTERVAL_MS,
    TYPING_SENDERS_MAX, WARMUP_SECONDS_MAX, WATCHES_IN_FLIGHT_MAX, WINDOW_SECONDS_MAX,
};
use crate::measure::{CpuOf, Percentiles, Timing, cpu_time, latency_us, ratio, thousands};
use crate::messages::{
    FAR_REGION, NEAR_REGION, Online, Registered, join_in_order, register_all, run_folder,
};
use crate::servers::{ServerMark, Servers};

/// What to measure.
#[derive(Debug, Clone)]
pub struct PresenceOptions {
    /// The `relayd` executable the devnet runs (the one this runs as).
    pub relayd: PathBuf,
    /// Watcher devices (region 2) of P1.
    pub watchers: usize,
    /// Watched accounts (region 1) of P1, each watched by every watcher.
    pub accounts: usize,
    /// Times every watched account's device connects and leaves again.
    pub cycles: u32,
    /// Typing sender connections (region 1) of P2.
    pub typing_senders: usize,
    /// Measured seconds of P2.
    pub typing_seconds: f64,
    /// Measured seconds of the raw QUIC ceiling (after a quarter of it as warm-up).
    pub ceiling_seconds: f64,
    /// Folder on the disk to run in (a temporary folder is made inside it and removed);
    /// `None`: the system's temporary folder.
    pub data: Option<PathBuf>,
    /// How the `relayd` executable was built (`release` or `debug`), for the report.
    pub build: String,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct PresenceReport {
    /// How the servers' executable was built.
    pub build: String,
    /// Cores available to this process.
    pub cores: usize,
    /// The folder the devnet ran in (removed afterwards).
    pub data_folder: PathBuf,
    /// Accounts registered (watched, watchers, typing senders, the receiver).
    pub accounts_registered: usize,
    /// Seconds registering them took (not measured further).
    pub registration_seconds: f64,
    /// Typing indicators one edge connection may send in a burst.
    pub edge_typing_burst: u32,
    /// Typing indicators one edge connection may send per second, sustained.
    pub edge_typing_per_second: u32,
    /// P1's watches.
    pub watch_setup: WatchSetupRow,
    /// P1's changes told to every watcher: every account changing at once, then one account
    /// at a time.
    pub fan_out: Vec<FanOutRow>,
    /// P2.
    pub typing: TypingRow,
    /// Raw QUIC request/response with the typing indicator's frame, after the devnet stopped.
    pub quic_ceiling: QuicCeiling,
    /// Pushes counted but not kept for latencies (past [`SIGNALS_KEPT_MAX`]).
    pub pushes_not_kept: u64,
    /// Typing notices whose typing device did not parse (an edge's malformed push).
    pub typing_malformed: u64,
}

/// The CPU time of the edges and regions over a row.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerCpu {
    /// Every region and edge process together, in seconds.
    pub seconds: f64,
    /// The same per process (`edge-1`, `region-2`, …).
    pub by_process: BTreeMap<String, f64>,
    /// Whether every process kept its pid over the row.
    pub same_processes: bool,
    /// This process's CPU seconds over the row (every device of the benchmark, on the same
    /// cores as the servers).
    pub bench_seconds: Option<f64>,
}

/// P1's watches.
#[derive(Debug, Clone, Serialize)]
pub struct WatchSetupRow {
    /// Watcher devices.
    pub watchers: usize,
    /// Accounts each watches.
    pub accounts: usize,
    /// `watchers × accounts`.
    pub watches: u64,
    /// From the first watch request to the last `Watching` answer, in seconds.
    pub answered_seconds: f64,
    /// `watches / answered_seconds`.
    pub watches_per_second: f64,
    /// From the first watch request until every watcher had the first state of every account
    /// (or the wave's bound passed), in seconds.
    pub first_states_seconds: f64,
    /// Watches whose first state arrived.
    pub first_states: u64,
    /// From a watch request to its first state's push.
    pub watch_to_first_state: Percentiles,
    /// The servers' CPU from the first request until the last first state.
    pub server_cpu: ServerCpu,
}

/// P1's fan-out of presence changes.
#[derive(Debug, Clone, Serialize)]
pub struct FanOutRow {
    /// Watched accounts that connect (and then leave) at once: all of them, or one.
    pub together: usize,
    /// Watcher devices.
    pub watchers: usize,
    /// Watched accounts.
    pub accounts: usize,
    /// Connect and leave cycles of every watched account.
    pub cycles: u32,
    /// Changes (connects and leaves) of the watched accounts: `accounts × cycles × 2`.
    pub changes: u64,
    /// Updates every watcher should get: `changes × watchers`.
    pub expected: u64,
    /// Presence updates the watchers got during the churn.
    pub delivered: u64,
    /// (watcher, change) pairs with no update of the changed state: dropped, or coalesced
    /// behind a later one.
    pub missing: u64,
    /// Updates that match no change (a state the account had not changed to).
    pub unmatched: u64,
    /// (watcher, account) pairs whose last update is not "offline" (every account left last).
    pub wrong_final_states: u64,
    /// Waves whose updates did not all arrive within [`PRESENCE_WAVE_TIMEOUT_MS`].
    pub waves_timed_out: u64,
    /// From the first connect to the last update of the last leave, in seconds.
    pub seconds: f64,
    /// `delivered / seconds`.
    pub delivered_per_second: f64,
    /// From a change to each watcher's update, connects and leaves together.
    pub change_to_watcher: Percentiles,
    /// The same for connects only (counted from the start of the device's authentication).
    pub connect_to_watcher: Percentiles,
    /// The same for leaves only (counted from the device closing its connection).
    pub leave_to_watcher: Percentiles,
    /// The watched devices' own authentications (Hello → Authenticated), included in
    /// `connect_to_watcher`.
    pub account_authentication: Percentiles,
    /// The servers' CPU over the churn.
    pub server_cpu: ServerCpu,
    /// `delivered / server_cpu.seconds`.
    pub delivered_per_server_cpu_second: f64,
    /// `delivered_per_second` over the raw QUIC ceiling's requests per second.
    pub share_of_quic_ceiling: f64,
}

/// P2: typing indicators from many connections of region 1 to one receiver of region 2.
#[derive(Debug, Clone, Serialize)]
pub struct TypingRow {
    /// Typing sender connections (one account and device each).
    pub senders: usize,
    /// Each sender's pause between two indicators, in ms.
    pub interval_ms: u64,
    /// The measured window, in seconds.
    pub window_seconds: f64,
    /// Indicators the edge accepted (`TypingSent`).
    pub sent: u64,
    /// Indicators refused `Throttled` by the edge's per-connection bucket.
    pub throttled: u64,
    /// Indicators refused with another retryable code (not retried: typing is ephemeral).
    pub refused: u64,
    /// Notices the receiver got for them.
    pub delivered: u64,
    /// Notices that match no indicator sent.
    pub unmatched: u64,
    /// `delivered / window_seconds`.
    pub delivered_per_second: f64,
    /// From sending an indicator to its notice at the receiver.
    pub send_to_receive: Percentiles,
    /// The answer to the indicator (`TypingSent`).
    pub answer: Percentiles,
    /// The servers' CPU from the window's start until the last notice.
    pub server_cpu: ServerCpu,
    /// `delivered / server_cpu.seconds`.
    pub delivered_per_server_cpu_second: f64,
    /// `delivered_per_second` over the raw QUIC ceiling's requests per second.
    pub share_of_quic_ceiling: f64,
}

/// The steps [`run`] announces.
pub fn steps() -> u64 {
    // devnet, registration, watchers connecting, watches, churn, typing, stopping, ceiling.
    8
}

/// Runs the presence benchmark. `step` hears of each of the [`steps`] as it begins; when
/// `shutdown` completes first, everything started is stopped and the run fails with
/// [`BenchError::Interrupted`]. On a failure the run's folder (the devnet's logs) is kept.
pub fn run(
    options: &PresenceOptions,
    step: &(dyn Fn(&str) + Sync),
    shutdown: impl Future<Output = ()>,
) -> Result<PresenceReport, BenchError> {
    validate(options)?;
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
            servers = Servers::start(&options.relayd, FAR_REGION, &devnet) => servers?,
            () = &mut shutdown => return Err(BenchError::Interrupted),
        };
        let measured = tokio::select! {
            measured = measure(&servers, options, step) => measured,
            () = &mut shutdown => Err(BenchError::Interrupted),
        };
        step("stopping the devnet");
        servers.stop().await;
        let measured = measured?;
        step("ceiling: raw QUIC request/response");
        let request = ClientRequest {
            body: Some(client_request::Body::Typing(TypingSignal {
                peer: u64::from(u32::MAX),
                typing: true,
                group: 0,
            })),
        };
        let seconds = options.ceiling_seconds;
        let timing = Timing {
            warmup: Duration::from_secs_f64((seconds / 4.0).min(WARMUP_SECONDS_MAX)),
            window: Duration::from_secs_f64(seconds),
        };
        let quic = tokio::select! {
            quic = ceilings::measure_quic(folder.path(), PRESENCE_QUIC_REQUESTERS, request, timing) => quic?,
            () = &mut shutdown => return Err(BenchError::Interrupted),
        };
        Ok((measured, quic))
    });
    drop(runtime);
    let (mut measured, quic_ceiling) = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            return Err(BenchError::Kept {
                error: Box::new(error),
                folder: folder.keep(),
            });
        }
    };
    for row in &mut measured.fan_out {
        row.share_of_quic_ceiling = ratio(row.delivered_per_second, quic_ceiling.per_second);
    }
    measured.typing.share_of_quic_ceiling = ratio(
        measured.typing.delivered_per_second,
        quic_ceiling.per_second,
    );
    let report = PresenceReport {
        build: options.build.clone(),
        cores: std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        data_folder: folder.path().to_path_buf(),
        accounts_registered: options.watchers + options.accounts + options.typing_senders + 1,
        registration_seconds: measured.registration_seconds,
        edge_typing_burst: relay_edge::limits::TYPING_BURST,
        edge_typing_per_second: relay_edge::limits::TYPING_PER_SECOND,
        watch_setup: measured.watch_setup,
        fan_out: measured.fan_out,
        typing: measured.typing,
        quic_ceiling,
        pushes_not_kept: measured.pushes_not_kept,
        typing_malformed: measured.typing_malformed,
    };
    let path = folder.path().to_owned();
    folder.close().map_err(BenchError::io("removing", &path))?;
    Ok(report)
}

fn validate(options: &PresenceOptions) -> Result<(), BenchError> {
    let within = |name: &str, value: usize, max: usize| {
        if value == 0 || value > max {
            Err(BenchError::Invalid(format!(
                "--{name} must be within 1..={max}, not {value}"
            )))
        } else {
            Ok(())
        }
    };
    within("watchers", options.watchers, PRESENCE_WATCHERS_MAX)?;
    within("accounts", options.accounts, PRESENCE_ACCOUNTS_MAX)?;
    within(
        "cycles",
        options.cycles as usize,
        PRESENCE_CYCLES_MAX as usize,
    )?;
    within("typing-senders", options.typing_senders, TYPING_SENDERS_MAX)?;
    for (name, seconds) in [
        ("seconds", options.typing_seconds),
        ("ceiling seconds", options.ceiling_seconds),
    ] {
        if !(seconds > 0.0 && seconds <= WINDOW_SECONDS_MAX) {
            return Err(BenchError::Invalid(format!(
                "the {name} must be within (0, {WINDOW_SECONDS_MAX}], not {seconds}"
            )));
        }
    }
    Ok(())
}

/// What the devnet phase measured.
struct Measured {
    registration_seconds: f64,
    watch_setup: WatchSetupRow,
    fan_out: Vec<FanOutRow>,
    typing: TypingRow,
    pushes_not_kept: u64,
    typing_malformed: u64,
}

/// A device's authenticated connection, with the receiver that keeps its control stream read.
type Connection = (Arc<EdgeLink>, watch::Receiver<Pushes>);

async fn measure(
    servers: &Servers,
    options: &PresenceOptions,
    step: &(dyn Fn(&str) + Sync),
) -> Result<Measured, BenchError> {
    let (near_edge, near_bind) = servers.edge(NEAR_REGION)?;
    let (far_edge, far_bind) = servers.edge(FAR_REGION)?;
    let roots = servers.roots()?;
    let near = Arc::new(Endpoints::new(near_bind, roots.clone())?);
    let far = Arc::new(Endpoints::new(far_bind, roots)?);

    let total = options.watchers + options.accounts + options.typing_senders + 1;
    step(&format!("registering {} accounts", thousands(total as f64)));
    let began = Instant::now();
    // One group after the other, [`REGISTRATIONS_IN_FLIGHT_MAX`] at once: registrations are
    // directory transactions at region 1 (the writer), and four groups at once mostly conflict
    // with each other there (a region 2 registration then times out waiting for the writer).
    let registering = async {
        let watched =
            register_all(&near, near_edge, "watched", options.accounts, Online::No).await?;
        let watchers =
            register_all(&far, far_edge, "watcher", options.watchers, Online::No).await?;
        let typists = register_all(
            &near,
            near_edge,
            "typist",
            options.typing_senders,
            Online::No,
        )
        .await?;
        let reader = register_all(&far, far_edge, "reader", 1, Online::No).await?;
        Ok::<_, BenchError>((watched, watchers, typists, reader))
    };
    let (watched, watchers, typists, reader) =
        tokio::time::timeout(Duration::from_millis(REGISTRATION_TIMEOUT_MS), registering)
            .await
            .map_err(|_| {
                BenchError::Timeout(format!(
                    "registering {total} accounts took longer than {REGISTRATION_TIMEOUT_MS} ms"
                ))
            })??;
    let registration_seconds = began.elapsed().as_secs_f64();
    let devices = |registered: Vec<Registered>| -> Vec<Arc<Device>> {
        registered
            .into_iter()
            .map(|registered| Arc::new(registered.device))
            .collect()
    };
    let (watched, watchers, typists, reader) = (
        devices(watched),
        devices(watchers),
        devices(typists),
        devices(reader),
    );

    let log = Arc::new(SignalLog::new(SIGNALS_KEPT_MAX));
    step(&format!(
        "connecting {} watchers",
        thousands(watchers.len() as f64)
    ));
    let watcher_links = connect_all(&far, far_edge, &watchers, Some(&log)).await?;

    let outcome = async {
        step(&format!(
            "{} watchers watch {} accounts each",
            thousands(watchers.len() as f64),
            watched.len()
        ));
        let accounts: Vec<AccountId> = watched
            .iter()
            .map(|device| device.address.account)
            .collect();
        let setup = watch_all(servers, &watchers, &watcher_links, &accounts, &log).await?;

        step(&format!(
            "{} accounts connect and leave {} times, together then one at a time",
            accounts.len(),
            options.cycles
        ));
        let together = churn(
            servers,
            &near,
            near_edge,
            &watched,
            watched.len(),
            options,
            &log,
        )
        .await?;
        let one_at_a_time = churn(servers, &near, near_edge, &watched, 1, options, &log).await?;
        // P1 is over: its watchers leave, so that P2's CPU is typing's alone.
        for (link, _) in &watcher_links {
            link.close();
        }
        far.wait_idle().await;

        step(&format!(
            "{} typing senders → one receiver",
            thousands(typists.len() as f64)
        ));
        let typing = typing(
            servers,
            (&near, near_edge),
            (&far, far_edge),
            &typists,
            &reader,
            options,
        )
        .await?;
        let signals = log.kept();
        let watch_setup = WatchSetupRow {
            watchers: watchers.len(),
            accounts: accounts.len(),
            watches: setup.watches,
            answered_seconds: setup.answered_seconds,
            watches_per_second: ratio(setup.watches as f64, setup.answered_seconds),
            first_states_seconds: setup.first_states_seconds,
            first_states: 0,
            watch_to_first_state: Percentiles::default(),
            server_cpu: setup.server_cpu,
        };
        let watch_setup = {
            let firsts = first_states(&setup.requested, &signals, together.began);
            WatchSetupRow {
                first_states: firsts.first_states,
                watch_to_first_state: Percentiles::of(firsts.latencies_us),
                ..watch_setup
            }
        };
        let watcher_addresses: Vec<DeviceAddress> =
            watchers.iter().map(|device| device.address).collect();
        let fan_out = vec![
            fan_out_row(together, &signals, &watcher_addresses, options),
            fan_out_row(one_at_a_time, &signals, &watcher_addresses, options),
        ];
        Ok::<_, BenchError>((watch_setup, fan_out, typing))
    }
    .await;
    for (link, _) in &watcher_links {
        link.close();
    }
    far.wait_idle().await;
    near.wait_idle().await;
    let (watch_setup, fan_out, typing) = outcome?;
    Ok(Measured {
        registration_seconds,
        watch_setup,
        fan_out,
        typing,
        pushes_not_kept: log.not_kept(),
        typing_malformed: log.malformed(),
    })
}

/// Opens and authenticates a connection for every device of `devices` at `edge`,
/// [`CONNECTS_IN_FLIGHT_MAX`] at once, in order; their presence and typing pushes go to `log`
/// when there is one.
async fn connect_all(
    endpoints: &Arc<Endpoints>,
    edge: SocketAddr,
    devices: &[Arc<Device>],
    log: Option<&Arc<SignalLog>>,
) -> Result<Vec<Connection>, BenchError> {
    let permits = Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT_MAX));
    let mut tasks = JoinSet::new();
    for (index, device) in devices.iter().enumerate() {
        let (endpoints, permits, device) = (endpoints.clone(), permits.clone(), device.clone());
        let log = log.cloned();
        tasks.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| BenchError::Refused("connecting stopped".into()))?;
            let link = endpoints.connect(edge).await?;
            let pushes = device.authenticate_logging(&link, 0, log).await?;
            Ok::<_, BenchError>((index, (Arc::new(link), pushes)))
        });
    }
    join_in_order(tasks, devices.len(), "connection").await
}

/// Waits until `count()` reaches `target`, at most [`PRESENCE_WAVE_TIMEOUT_MS`]; whether it
/// did.
async fn reached(count: impl Fn() -> u64, target: u64) -> bool {
    let polls = PRESENCE_WAVE_TIMEOUT_MS / PRESENCE_WAVE_POLL_MS;
    for _ in 0..polls {
        if count() >= target {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(PRESENCE_WAVE_POLL_MS)).await;
    }
    count() >= target
}

/// Every server's CPU time and this process's, at one moment.
struct CpuMark {
    servers: ServerMark,
    bench: Option<Duration>,
}

fn cpu_mark(servers: &Servers) -> CpuMark {
    CpuMark {
        servers: servers.mark(),
        bench: cpu_time(CpuOf::Process),
    }
}

/// The servers' CPU (and this process's) between two marks.
fn server_cpu(servers: &Servers, before: &CpuMark, after: &CpuMark) -> ServerCpu {
    let usage = servers.usage(&before.servers, &after.servers);
    ServerCpu {
        seconds: usage.cpu_seconds,
        by_process: usage.cpu_seconds_by_process,
        same_processes: usage.same_processes,
        bench_seconds: before
            .bench
            .zip(after.bench)
            .map(|(before, after)| after.saturating_sub(before).as_secs_f64()),
    }
}

/// What the watch setup measured before its pushes are matched.
struct Setup {
    watches: u64,
    answered_seconds: f64,
    first_states_seconds: f64,
    /// (watcher, account) → when its watch request began.
    requested: HashMap<(DeviceAddress, AccountId), Instant>,
    server_cpu: ServerCpu,
}

/// Every watcher (`devices`, connected as `links`) watches every account, one request after
/// the other, [`WATCHES_IN_FLIGHT_MAX`] watchers at once; then waits for every first state.
async fn watch_all(
    servers: &Servers,
    devices: &[Arc<Device>],
    links: &[Connection],
    accounts: &[AccountId],
    log: &SignalLog,
) -> Result<Setup, BenchError> {
    let watches = (links.len() * accounts.len()) as u64;
    let presence_before = log.presence_received();
    let before = cpu_mark(servers);
    let began = Instant::now();
    let permits = Arc::new(Semaphore::new(WATCHES_IN_FLIGHT_MAX));
    let accounts: Arc<[AccountId]> = accounts.into();
    let mut tasks = JoinSet::new();
    for (device, (link, _)) in devices.iter().zip(links) {
        let (permits, link, accounts) = (permits.clone(), link.clone(), accounts.clone());
        let watcher = device.address;
        tasks.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| BenchError::Refused("watching stopped".into()))?;
            let mut sent = Vec::with_capacity(accounts.len());
            for &account in accounts.iter() {
                sent.push(((watcher, account), Instant::now()));
                link.watch_presence(account, true)
                    .await
                    .map_err(|error| error.into_bench(format!("{watcher} watching {account}")))?;
            }
            Ok::<_, BenchError>(sent)
        });
    }
    let mut requested = HashMap::with_capacity(watches as usize);
    while let Some(joined) = tasks.join_next().await {
        let sent =
            joined.map_err(|error| BenchError::Refused(format!("a watcher failed: {error}")))??;
        requested.extend(sent);
    }
    let answered_seconds = began.elapsed().as_secs_f64();
    reached(|| log.presence_received(), presence_before + watches).await;
    let first_states_seconds = began.elapsed().as_secs_f64();
    let after = cpu_mark(servers);
    Ok(Setup {
        watches,
        answered_seconds,
        first_states_seconds,
        requested,
        server_cpu: server_cpu(servers, &before, &after),
    })
}

/// A watched account's change: it connected (online) or left (offline) at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The state it changed to.
    pub state: PresenceState,
    /// When: the start of its device's authentication, or the close of its connection.
    pub at: Instant,
}

/// The fan-out row of one churn, its pushes among `signals` matched to its changes.
fn fan_out_row(
    churn: Churn,
    signals: &[Signal],
    watchers: &[DeviceAddress],
    options: &PresenceOptions,
) -> FanOutRow {
    let tally = fan_out(
        &churn.changes,
        signals,
        (churn.began, churn.ended),
        watchers,
    );
    let changes = churn
        .changes
        .values()
        .map(|changes| changes.len() as u64)
        .sum::<u64>();
    FanOutRow {
        together: churn.together,
        watchers: watchers.len(),
        accounts: churn.changes.len(),
        cycles: options.cycles,
        changes,
        expected: changes * watchers.len() as u64,
        delivered: churn.delivered,
        missing: tally.missing,
        unmatched: tally.unmatched,
        wrong_final_states: tally.wrong_final_states,
        waves_timed_out: churn.waves_timed_out,
        seconds: churn.seconds,
        delivered_per_second: ratio(churn.delivered as f64, churn.seconds),
        change_to_watcher: Percentiles::of(
            tally
                .connect_us
                .iter()
                .chain(&tally.leave_us)
                .copied()
                .collect(),
        ),
        connect_to_watcher: Percentiles::of(tally.connect_us),
        leave_to_watcher: Percentiles::of(tally.leave_us),
        account_authentication: Percentiles::of(churn.authentication_us),
        delivered_per_server_cpu_second: ratio(churn.delivered as f64, churn.server_cpu.seconds),
        server_cpu: churn.server_cpu,
        share_of_quic_ceiling: 0.0,
    }
}

/// What the churn measured before its pushes are matched.
struct Churn {
    /// Accounts changing at once.
    together: usize,
    began: Instant,
    /// When the last wave's updates had arrived (or its bound passed).
    ended: Instant,
    seconds: f64,
    /// Every watched account's changes, in order.
    changes: HashMap<AccountId, Vec<Change>>,
    delivered: u64,
    waves_timed_out: u64,
    authentication_us: Vec<u32>,
    server_cpu: ServerCpu,
}

/// The watched accounts' devices connect to `edge` and leave again, `together` of them at
/// once (the next ones after those left), `cycles` times; each wave waits until the watchers
/// got as many updates as it should cause (or [`PRESENCE_WAVE_TIMEOUT_MS`] passed).
async fn churn(
    servers: &Servers,
    endpoints: &Arc<Endpoints>,
    edge: SocketAddr,
    watched: &[Arc<Device>],
    together: usize,
    options: &PresenceOptions,
    log: &SignalLog,
) -> Result<Churn, BenchError> {
    let together = together.clamp(1, watched.len().max(1));
    let mut changes: HashMap<AccountId, Vec<Change>> = HashMap::new();
    let mut authentication_us = Vec::new();
    let mut waves_timed_out = 0;
    let presence_before = log.presence_received();
    let mut target = presence_before;
    let before = cpu_mark(servers);
    let began = Instant::now();
    for _ in 0..options.cycles {
        for group in watched.chunks(together) {
            let per_wave = (group.len() * options.watchers) as u64;
            let mut tasks = JoinSet::new();
            for device in group {
                let (endpoints, device) = (endpoints.clone(), device.clone());
                tasks.spawn(async move {
                    let link = endpoints.connect(edge).await?;
                    let authenticating = Instant::now();
                    let pushes = device.authenticate(&link, 0).await?;
                    let authenticated = Instant::now();
                    Ok::<_, BenchError>((
                        device.address.account,
                        link,
                        pushes,
                        authenticating,
                        authenticated,
                    ))
                });
            }
            let mut online = Vec::with_capacity(group.len());
            while let Some(joined) = tasks.join_next().await {
                let (account, link, pushes, authenticating, authenticated) =
                    joined.map_err(|error| {
                        BenchError::Refused(format!("a connection failed: {error}"))
                    })??;
                changes.entry(account).or_default().push(Change {
                    state: PresenceState::Online,
                    at: authenticating,
                });
                authentication_us.push(latency_us(authenticated - authenticating));
                online.push((account, link, pushes));
            }
            target += per_wave;
            if !reached(|| log.presence_received(), target).await {
                waves_timed_out += 1;
            }
            for (account, link, _pushes) in &online {
                let at = Instant::now();
                link.close();
                changes.entry(*account).or_default().push(Change {
                    state: PresenceState::Offline,
                    at,
                });
            }
            target += per_wave;
            if !reached(|| log.presence_received(), target).await {
                waves_timed_out += 1;
            }
            drop(online);
        }
    }
    let ended = Instant::now();
    let after = cpu_mark(servers);
    endpoints.wait_idle().await;
    Ok(Churn {
        together,
        began,
        ended,
        seconds: (ended - began).as_secs_f64(),
        changes,
        delivered: log.presence_received() - presence_before,
        waves_timed_out,
        authentication_us,
        server_cpu: server_cpu(servers, &before, &after),
    })
}

/// Every typing sender sends an indicator every [`TYPING_INTERVAL_MS`] for the window (phases
/// spread over the interval), alternating typing and stopped, to the receiver's account; the
/// receiver's notices are then matched to them.
async fn typing(
    servers: &Servers,
    (near, near_edge): (&Arc<Endpoints>, SocketAddr),
    (far, far_edge): (&Arc<Endpoints>, SocketAddr),
    typists: &[Arc<Device>],
    reader: &[Arc<Device>],
    options: &PresenceOptions,
) -> Result<TypingRow, BenchError> {
    let log = Arc::new(SignalLog::new(SIGNALS_KEPT_MAX));
    let reader_links = connect_all(far, far_edge, reader, Some(&log)).await?;
    let peer = reader
        .first()
        .map(|device| device.address.account)
        .ok_or_else(|| BenchError::Invalid("no typing receiver".into()))?;
    let links = connect_all(near, near_edge, typists, None).await?;
    let window = Duration::from_secs_f64(options.typing_seconds);
    let interval = Duration::from_millis(TYPING_INTERVAL_MS);
    let indicators_max = (window.as_millis() / interval.as_millis()) as u64 + 1;
    let before = cpu_mark(servers);
    let window_start = Instant::now() + Duration::from_millis(100);
    let window_end = window_start + window;
    let mut tasks = JoinSet::new();
    for (index, (device, (link, _))) in typists.iter().zip(&links).enumerate() {
        let from = device.address;
        let link = link.clone();
        let phase = interval.mul_f64(index as f64 / typists.len() as f64);
        tasks.spawn(async move {
            let mut sent = Vec::new();
            let (mut throttled, mut refused) = (0u64, 0u64);
            let mut answers_us = Vec::new();
            for k in 0..indicators_max {
                let due = window_start + phase + interval * k as u32;
                if due >= window_end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let typing = k % 2 == 0;
                let began = Instant::now();
                match link.typing(peer, typing).await {
                    Ok(()) => {
                        answers_us.push(latency_us(began.elapsed()));
                        sent.push(Indicator {
                            from,
                            typing,
                            at: began,
                        });
                    }
                    Err(CallError::Retryable(error)) if error.code == ErrorCode::Throttled => {
                        throttled += 1
                    }
                    Err(CallError::Retryable(_) | CallError::Timeout) => refused += 1,
                    Err(error) => return Err(error.into_bench(format!("{from} typing"))),
                }
            }
            Ok::<_, BenchError>((sent, throttled, refused, answers_us))
        });
    }
    let mut indicators = Vec::new();
    let (mut throttled, mut refused) = (0, 0);
    let mut answers_us = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (sent, their_throttled, their_refused, answers) = joined
            .map_err(|error| BenchError::Refused(format!("a typing sender failed: {error}")))??;
        indicators.extend(sent);
        throttled += their_throttled;
        refused += their_refused;
        answers_us.extend(answers);
    }
    let sent = indicators.len() as u64;
    let deadline = Instant::now() + Duration::from_millis(TYPING_DRAIN_MS);
    while log.typing_received() < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(PRESENCE_WAVE_POLL_MS)).await;
    }
    let after = cpu_mark(servers);
    for (link, _) in links.iter().chain(&reader_links) {
        link.close();
    }
    near.wait_idle().await;
    far.wait_idle().await;
    let tally = typing_deliveries(&indicators, &log.kept());
    let cpu = server_cpu(servers, &before, &after);
    Ok(TypingRow {
        senders: typists.len(),
        interval_ms: TYPING_INTERVAL_MS,
        window_seconds: options.typing_seconds,
        sent,
        throttled,
        refused,
        delivered: tally.delivered,
        unmatched: tally.unmatched,
        delivered_per_second: ratio(tally.delivered as f64, options.typing_seconds),
        send_to_receive: Percentiles::of(tally.latencies_us),
        answer: Percentiles::of(answers_us),
        delivered_per_server_cpu_second: ratio(tally.delivered as f64, cpu.seconds),
        server_cpu: cpu,
        share_of_quic_ceiling: 0.0,
    })
}

// ---------------------------------------------------------------------------------------------
// Matching pushes to their causes, sans IO

/// The first states of the watches, matched to the requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirstStates {
    /// Watches whose first state arrived (before `until`).
    pub first_states: u64,
    /// From each watch request to its first state, in µs.
    pub latencies_us: Vec<u32>,
}

/// The first presence push of each watch in `requested` ((watcher, account) → when the watch
/// began) among `signals` that arrived before `until`.
pub fn first_states(
    requested: &HashMap<(DeviceAddress, AccountId), Instant>,
    signals: &[Signal],
    until: Instant,
) -> FirstStates {
    let mut seen = HashSet::new();
    let mut tally = FirstStates::default();
    for signal in signals.iter().filter(|signal| signal.at < until) {
        let SignalEvent::Presence { account, .. } = signal.event else {
            continue;
        };
        let key = (signal.receiver, account);
        if let Some(&began) = requested.get(&key)
            && seen.insert(key)
        {
            tally.first_states += 1;
            tally
                .latencies_us
                .push(latency_us(signal.at.saturating_duration_since(began)));
        }
    }
    tally
}

/// The churn's presence pushes matched to the changes that caused them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FanOutTally {
    /// Change → watcher latencies of connects, in µs.
    pub connect_us: Vec<u32>,
    /// The same of leaves.
    pub leave_us: Vec<u32>,
    /// (watcher, change) pairs without an update.
    pub missing: u64,
    /// Updates that match no change.
    pub unmatched: u64,
    /// (watcher, account) pairs whose last update is not the account's last state.
    pub wrong_final_states: u64,
}

/// Matches each presence push to one of `watchers` among `signals` within `window` (from, until)
/// to the latest change of its account to the state it shows, at or before its arrival; every
/// watcher should have one push per change, and end with each account's last state.
pub fn fan_out(
    changes: &HashMap<AccountId, Vec<Change>>,
    signals: &[Signal],
    (since, until): (Instant, Instant),
    watchers: &[DeviceAddress],
) -> FanOutTally {
    let mut tally = FanOutTally::default();
    let mut matched: HashSet<(DeviceAddress, AccountId, usize)> = HashSet::new();
    let mut last: HashMap<(DeviceAddress, AccountId), PresenceState> = HashMap::new();
    let watching: HashSet<DeviceAddress> = watchers.iter().copied().collect();
    for signal in signals.iter().filter(|signal| {
        signal.at >= since && signal.at <= until && watching.contains(&signal.receiver)
    }) {
        let SignalEvent::Presence { account, state } = signal.event else {
            continue;
        };
        last.insert((signal.receiver, account), state);
        let cause = changes.get(&account).and_then(|changes| {
            changes
                .iter()
                .enumerate()
                .rev()
                .find(|(_, change)| change.at <= signal.at && change.state == state)
        });
        match cause {
            Some((index, change)) if matched.insert((signal.receiver, account, index)) => {
                let latency = latency_us(signal.at - change.at);
                match state {
                    PresenceState::Online => tally.connect_us.push(latency),
                    _ => tally.leave_us.push(latency),
                }
            }
            // A second update of one change to one watcher.
            Some(_) | None => tally.unmatched += 1,
        }
    }
    let expected: u64 = changes
        .values()
        .map(|changes| (changes.len() * watchers.len()) as u64)
        .sum();
    tally.missing = expected.saturating_sub(matched.len() as u64);
    for watcher in watchers {
        for (account, changes) in changes {
            let Some(final_state) = changes.last().map(|change| change.state) else {
                continue;
            };
            if last.get(&(*watcher, *account)) != Some(&final_state) {
                tally.wrong_final_states += 1;
            }
        }
    }
    tally
}

/// A typing indicator the edge accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indicator {
    /// The typing device.
    pub from: DeviceAddress,
    /// Typing or stopped.
    pub typing: bool,
    /// When its request began.
    pub at: Instant,
}

/// The receiver's typing notices matched to the indicators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypingTally {
    /// Notices matched to an indicator, each indicator once.
    pub delivered: u64,
    /// Notices that match no indicator (or one matched before).
    pub unmatched: u64,
    /// Send → receive latencies, in µs.
    pub latencies_us: Vec<u32>,
}

/// Matches each typing notice of `signals` to its device's latest indicator of the same
/// state sent at or before its arrival.
pub fn typing_deliveries(indicators: &[Indicator], signals: &[Signal]) -> TypingTally {
    let mut by_device: HashMap<DeviceAddress, Vec<&Indicator>> = HashMap::new();
    for indicator in indicators {
        by_device.entry(indicator.from).or_default().push(indicator);
    }
    for sent in by_device.values_mut() {
        sent.sort_by_key(|indicator| indicator.at);
    }
    let mut matched = HashSet::new();
    let mut tally = TypingTally::default();
    for signal in signals {
        let SignalEvent::Typing { from, typing } = signal.event else {
            continue;
        };
        let cause = by_device.get(&from).and_then(|sent| {
            sent.iter()
                .enumerate()
                .rev()
                .find(|(_, indicator)| indicator.at <= signal.at && indicator.typing == typing)
        });
        match cause {
            Some((index, indicator)) if matched.insert((from, index)) => {
                tally.delivered += 1;
                tally
                    .latencies_us
                    .push(latency_us(signal.at - indicator.at));
            }
            Some(_) | None => tally.unmatched += 1,
        }
    }
    tally
}

// ---------------------------------------------------------------------------------------------
// The report

impl PresenceReport {
    /// The report as a table with its context lines.
    pub fn table(&self) -> String {
        let setup = &self.watch_setup;
        let fan_out = &self.fan_out;
        let typing = &self.typing;
        let cpu = |cpu: &ServerCpu| {
            let of = |name: &str| cpu.by_process.get(name).copied().unwrap_or(0.0);
            format!(
                "{:.2} ({:.2} / {:.2} / {:.2} / {:.2}) | {}",
                cpu.seconds,
                of("edge-1"),
                of("region-1"),
                of("edge-2"),
                of("region-2"),
                cpu.bench_seconds
                    .map_or_else(|| "n/a".to_owned(), |seconds| format!("{seconds:.2}")),
            )
        };
        let mut out = format!(
            "relayd bench presence ({} build): a devnet of two regions in {}\n\
             {} cores; {} accounts registered in {:.1} s; P1: {} watchers (region 2) × {} \
             accounts (region 1), {} connect/leave cycles; P2: {} typing senders (region 1) → \
             one receiver (region 2), one indicator each per {} ms for {:.1} s (the edge allows \
             a connection bursts of {} then {}/s)\n\n",
            self.build,
            self.data_folder.display(),
            self.cores,
            thousands(self.accounts_registered as f64),
            self.registration_seconds,
            thousands(setup.watchers as f64),
            setup.accounts,
            fan_out.first().map_or(0, |row| row.cycles),
            thousands(typing.senders as f64),
            typing.interval_ms,
            typing.window_seconds,
            self.edge_typing_burst,
            self.edge_typing_per_second,
        );
        out.push_str(
            "| row | rate | latency p50 / p99 / p99.9 ms | delivered / expected | server CPU s \
             (edge-1 / region-1 / edge-2 / region-2) | bench CPU s | delivered per server CPU-s | \
             share of raw QUIC |\n|---|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        out.push_str(&format!(
            "| P1 watch setup | {} watches/s; every first state after {:.2} s | watch → first \
             state {} | {} / {} | {} | {} | |\n",
            thousands(setup.watches_per_second),
            setup.first_states_seconds,
            setup.watch_to_first_state.cell(),
            thousands(setup.first_states as f64),
            thousands(setup.watches as f64),
            cpu(&setup.server_cpu),
            thousands(ratio(setup.first_states as f64, setup.server_cpu.seconds)),
        ));
        for row in fan_out {
            let together = if row.together == 1 {
                "one account at a time".to_owned()
            } else {
                format!("{} accounts at once", row.together)
            };
            out.push_str(&format!(
                "| P1 fan-out, {together} | {} updates/s | change → watcher {} | {} / {} | {} | \
                 {} | {:.1}% |\n",
                thousands(row.delivered_per_second),
                row.change_to_watcher.cell(),
                thousands(row.delivered as f64),
                thousands(row.expected as f64),
                cpu(&row.server_cpu),
                thousands(row.delivered_per_server_cpu_second),
                row.share_of_quic_ceiling * 100.0,
            ));
            out.push_str(&format!(
                "| — connects | | connect → watcher {} (of which the account's own \
                 authentication {}) | | | | | |\n| — leaves | | leave → watcher {} | | | | | |\n",
                row.connect_to_watcher.cell(),
                row.account_authentication.cell(),
                row.leave_to_watcher.cell(),
            ));
        }
        out.push_str(&format!(
            "| P2 typing across regions | {} notices/s | send → receive {} (TypingSent answer \
             {}) | {} / {} | {} | {} | {:.1}% |\n",
            thousands(typing.delivered_per_second),
            typing.send_to_receive.cell(),
            typing.answer.cell(),
            thousands(typing.delivered as f64),
            thousands(typing.sent as f64),
            cpu(&typing.server_cpu),
            thousands(typing.delivered_per_server_cpu_second),
            typing.share_of_quic_ceiling * 100.0,
        ));
        out.push_str(&format!(
            "| ceiling: raw QUIC request/response ({} requesters, {} B) | {} requests/s | round \
             trip {} | | | | | 100% |\n\n",
            self.quic_ceiling.requesters,
            self.quic_ceiling.request_bytes,
            thousands(self.quic_ceiling.per_second),
            self.quic_ceiling.latency.cell(),
        ));
        let sum = |field: fn(&FanOutRow) -> u64| fan_out.iter().map(field).sum::<u64>();
        out.push_str(&format!(
            "P1: {} updates missing, {} matching no change, {} watches ending in a wrong \
             state, {} waves past their {} s bound; P2: {} indicators throttled, {} refused \
             otherwise, {} notices matching no indicator{}{}\n",
            thousands(sum(|row| row.missing) as f64),
            thousands(sum(|row| row.unmatched) as f64),
            thousands(sum(|row| row.wrong_final_states) as f64),
            sum(|row| row.waves_timed_out),
            PRESENCE_WAVE_TIMEOUT_MS / 1_000,
            thousands(typing.throttled as f64),
            thousands(typing.refused as f64),
            thousands(typing.unmatched as f64),
            if self.pushes_not_kept > 0 {
                format!(
                    "; {} pushes counted but not kept for latencies",
                    thousands(self.pushes_not_kept as f64)
                )
            } else {
                String::new()
            },
            if self.typing_malformed > 0 {
                format!(
                    "; {} typing notices from a device that did not parse",
                    thousands(self.typing_malformed as f64)
                )
            } else {
                String::new()
            },
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::DeviceId;

    use super::*;

    fn device(account: u64) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(account),
            device: DeviceId(1),
        }
    }

    fn presence(receiver: u64, account: u64, state: PresenceState, at: Instant) -> Signal {
        Signal {
            receiver: device(receiver),
            event: SignalEvent::Presence {
                account: AccountId(account),
                state,
            },
            at,
        }
    }

    #[test]
    fn each_update_counts_from_the_change_it_shows() {
        let start = Instant::now();
        let ms = |ms: u64| start + Duration::from_millis(ms);
        let changes = HashMap::from([(
            AccountId(1),
            vec![
                Change {
                    state: PresenceState::Online,
                    at: ms(10),
                },
                Change {
                    state: PresenceState::Offline,
                    at: ms(20),
                },
                Change {
                    state: PresenceState::Online,
                    at: ms(30),
                },
                Change {
                    state: PresenceState::Offline,
                    at: ms(40),
                },
            ],
        )]);
        let watchers = [device(100), device(200)];
        let signals = vec![
            // A first state before the churn: not counted here.
            presence(100, 1, PresenceState::Offline, ms(5)),
            presence(100, 1, PresenceState::Online, ms(12)),
            presence(200, 1, PresenceState::Online, ms(13)),
            presence(100, 1, PresenceState::Offline, ms(21)),
            // Watcher 200 missed the first leave and the second connect (coalesced).
            presence(100, 1, PresenceState::Online, ms(31)),
            presence(100, 1, PresenceState::Offline, ms(44)),
            presence(200, 1, PresenceState::Offline, ms(45)),
            // A repeat of one change.
            presence(200, 1, PresenceState::Offline, ms(46)),
        ];
        let tally = fan_out(&changes, &signals, (ms(10), ms(100)), &watchers);
        assert_eq!(tally.connect_us, vec![2_000, 3_000, 1_000]);
        assert_eq!(tally.leave_us, vec![1_000, 4_000, 5_000]);
        assert_eq!(tally.missing, 8 - 6);
        assert_eq!(tally.unmatched, 1);
        assert_eq!(tally.wrong_final_states, 0);
        // A watcher that heard nothing ends in no state: wrong, and missing everything.
        let tally = fan_out(&changes, &signals, (ms(10), ms(100)), &[device(300)]);
        assert_eq!((tally.missing, tally.wrong_final_states), (4, 1));
    }

    #[test]
    fn a_first_state_counts_from_its_watch_request() {
        let start = Instant::now();
        let ms = |ms: u64| start + Duration::from_millis(ms);
        let requested = HashMap::from([
            ((device(100), AccountId(1)), ms(0)),
            ((device(100), AccountId(2)), ms(1)),
            ((device(200), AccountId(1)), ms(2)),
        ]);
        let signals = vec![
            presence(100, 1, PresenceState::Offline, ms(3)),
            presence(100, 1, PresenceState::Online, ms(4)),
            presence(100, 2, PresenceState::Offline, ms(5)),
            // Not watched by it; and one after the setup.
            presence(200, 2, PresenceState::Offline, ms(6)),
            presence(200, 1, PresenceState::Offline, ms(50)),
        ];
        let firsts = first_states(&requested, &signals, ms(10));
        assert_eq!(firsts.first_states, 2);
        assert_eq!(firsts.latencies_us, vec![3_000, 4_000]);
    }

    #[test]
    fn a_typing_notice_counts_from_its_indicator() {
        let start = Instant::now();
        let ms = |ms: u64| start + Duration::from_millis(ms);
        let indicators = [
            Indicator {
                from: device(1),
                typing: true,
                at: ms(0),
            },
            Indicator {
                from: device(1),
                typing: false,
                at: ms(1_000),
            },
            Indicator {
                from: device(2),
                typing: true,
                at: ms(500),
            },
        ];
        let notice = |from: u64, typing: bool, at: u64| Signal {
            receiver: device(9),
            event: SignalEvent::Typing {
                from: device(from),
                typing,
            },
            at: ms(at),
        };
        let signals = [
            notice(1, true, 3),
            notice(2, true, 504),
            notice(1, false, 1_002),
            // Twice the same, and one nobody sent.
            notice(1, false, 1_003),
            notice(3, true, 10),
        ];
        let tally = typing_deliveries(&indicators, &signals);
        assert_eq!(tally.delivered, 3);
        assert_eq!(tally.unmatched, 2);
        assert_eq!(tally.latencies_us, vec![3_000, 4_000, 2_000]);
    }
}
