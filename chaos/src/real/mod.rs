//! Chaos on real processes: a devnet's regions, edges and locator under load and faults, checked
//! with the simulation's history checker. `relayd chaos` is this plus its command line; the
//! failover drills reuse the same pieces.
//!
//! [`run`] starts `relayd devnet` as a child ([`relay_devnet::DevnetProcess`]), registers
//! in-process clients ([`clients`]), then runs their planned messages while a bounded fault loop
//! ([`schedule`], applied by the [`injector`]) SIGKILLs (the devnet restarts them), pauses
//! (SIGSTOP … SIGCONT) and partitions regions and edges, while a seed-drawn share of the users
//! (one at least) link a second device. Partitions are nftables drop rules
//! inside a network namespace of the run's own ([`netns`]) when that is possible, and pauses
//! otherwise. Then every fault is lifted and every process is running again, the clients sync
//! until everything has arrived (or a deadline passes), and [`crate::history::check`] reads
//! their trace and stored histories, and [`crate::history::check_convergence`] the relay-sync
//! documents of both devices of each linked user (I7). The [`Report`] counts lost, duplicated,
//! out-of-order and undecryptable messages and diverged documents; any non-zero count, and a
//! second device that never linked, fails the run.
//!
//! Whatever happens (an error, Ctrl-C), every paused process is continued, every rule removed,
//! and the devnet (and through it every server) stopped.

pub mod clients;
pub mod injector;
pub mod netns;
pub mod report;
pub mod schedule;

use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use relay_devnet::limits::DEVNET_REGIONS_MAX;
use relay_devnet::{DevnetError, DevnetProcess};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::history::{check, check_convergence};
use crate::seed;
use crate::workload::{LINK_RETRY_MS, Plan, WorkloadShape};
use clients::{Deadline, Deployment, Record};
use injector::Injector;
pub use netns::Partitions;
pub use report::Report;
use report::Timing;
use schedule::FaultKind;

/// Most clients per region (client i of region k binds 127.0.k.(10 + i)).
pub const CLIENTS_PER_REGION_MAX: u32 = 200;
/// Most messages per client.
pub const MESSAGES_PER_CLIENT_MAX: u32 = 10_000;
/// Longest fault phase, in seconds.
pub const DURATION_S_MAX: u64 = 24 * 3600;
/// Most faults one run injects (the fault phase ends earlier by time).
pub const FAULTS_MAX: usize = 100_000;
/// How long every client together may take to register, in ms.
pub const REGISTRATION_TIMEOUT_MS: u64 = 120_000;
/// How long a killed process may take to be restarted by the devnet, in ms.
pub const RESTART_TIMEOUT_MS: u64 = 60_000;
/// How long every process may take to be running again once the faults are lifted, in ms.
pub const RECOVERY_TIMEOUT_MS: u64 = 60_000;
/// How long clients may take past the healing deadline to finish the call they are in (a sync
/// retries for up to 30 s), in ms.
pub const CLIENT_WIND_DOWN_MS: u64 = 45_000;
/// Chance, in percent, that a user links a second device mid-run (when the draw picks none,
/// one user drawn from the seed does).
pub const LINKED_PERCENT: u32 = 25;
/// Most attempts at each step of linking a second device (each [`LINK_RETRY_MS`] apart); the
/// run's own count covers its fault phase, recovery and healing.
pub const LINK_ATTEMPTS_MAX: u32 = 1_000_000;
/// Bounds of the pause a client takes before each send, in ms.
pub const SEND_PAUSE_MS_MIN: u64 = 10;
/// See [`SEND_PAUSE_MS_MIN`].
pub const SEND_PAUSE_MS_MAX: u64 = 10_000;

const _: () = assert!(LINKED_PERCENT <= 100);
// A second device that links at the last attempt still has the healing to catch up.
const _: () = assert!(LINK_ATTEMPTS_MAX as u64 * LINK_RETRY_MS >= DURATION_S_MAX * 1000);

/// Why a run could not run or finish (a broken invariant is not an error: it is in the
/// [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum RealChaosError {
    /// The options are unusable.
    #[error("{0}")]
    Invalid(String),
    /// The devnet could not be started or followed.
    #[error(transparent)]
    Devnet(#[from] DevnetError),
    /// The operating system refused something.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The run could not go on (a deadline passed, the devnet exited, a tool failed).
    #[error("{0}")]
    Run(String),
    /// The run was interrupted (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
}

impl RealChaosError {
    /// A failed operating-system call.
    pub(crate) fn io(what: &str, source: std::io::Error) -> Self {
        RealChaosError::Io {
            what: what.to_owned(),
            source,
        }
    }
}

/// Where progress lines go (a person reads them while the run goes on).
pub type ProgressSink = Arc<dyn Fn(String) + Send + Sync>;

/// One run's settings.
#[derive(Clone)]
pub struct Config {
    /// Seed of the workload and of the fault schedule.
    pub seed: u64,
    /// Regions (each with its own edge), as in `relayd devnet`.
    pub regions: u32,
    /// Clients homed in each region (client i of region k binds 127.0.k.(10 + i)).
    pub clients_per_region: u32,
    /// Messages each client sends.
    pub messages: u32,
    /// How long the fault phase lasts (longer until every kind hit a region and an edge).
    pub duration: Duration,
    /// How long the clients may take, once every fault is lifted, to receive everything.
    pub heal_timeout: Duration,
    /// The kinds of fault to inject.
    pub faults: Vec<FaultKind>,
    /// How partitions are made.
    pub partitions: Partitions,
    /// Folder for the devnet's data and logs and the clients' stores.
    pub data: PathBuf,
    /// The `relayd` executable the devnet runs.
    pub relayd: PathBuf,
    /// Whether to hand the recorded trace to `progress` at the end.
    pub trace: bool,
    /// Progress lines.
    pub progress: ProgressSink,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("seed", &self.seed)
            .field("regions", &self.regions)
            .field("clients_per_region", &self.clients_per_region)
            .field("messages", &self.messages)
            .field("duration", &self.duration)
            .field("faults", &self.faults)
            .field("partitions", &self.partitions)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Checks the sizes against their bounds.
    pub fn validate(&self) -> Result<(), RealChaosError> {
        let invalid = |message: String| Err(RealChaosError::Invalid(message));
        if self.regions == 0 || self.regions > DEVNET_REGIONS_MAX {
            return invalid(format!(
                "--regions must be between 1 and {DEVNET_REGIONS_MAX}"
            ));
        }
        if self.clients_per_region == 0 || self.clients_per_region > CLIENTS_PER_REGION_MAX {
            return invalid(format!(
                "--clients-per-region must be between 1 and {CLIENTS_PER_REGION_MAX}"
            ));
        }
        if self.regions * self.clients_per_region < 2 {
            return invalid(
                "a run needs two clients at least (more regions or --clients-per-region)".into(),
            );
        }
        if self.messages == 0 || self.messages > MESSAGES_PER_CLIENT_MAX {
            return invalid(format!(
                "--messages must be between 1 and {MESSAGES_PER_CLIENT_MAX}"
            ));
        }
        let duration_max = Duration::from_secs(DURATION_S_MAX);
        if self.duration > duration_max || self.heal_timeout > duration_max {
            return invalid(format!(
                "--duration and --heal-timeout must be at most {DURATION_S_MAX} s"
            ));
        }
        Ok(())
    }

    fn progress(&self, line: String) {
        (self.progress)(line);
    }
}

/// Runs one chaos run on a local task set (its clients are not `Send`): starts the devnet, runs
/// everything, and cleans up whatever happened, also when `shutdown` completes first (then the
/// run fails with [`RealChaosError::Interrupted`]).
pub async fn run(
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, RealChaosError> {
    config.validate()?;
    tokio::task::LocalSet::new()
        .run_until(chaos(config, shutdown))
        .await
}

async fn chaos(
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, RealChaosError> {
    let devnet = DevnetProcess::start(
        &config.relayd,
        config.regions,
        &config.data.join("devnet"),
        &config.data.join("devnet.log"),
    )?;
    let injector = Rc::new(Injector::new(config, &devnet));
    let result = tokio::select! {
        result = drive(config, &devnet, injector.clone()) => result,
        () = shutdown => Err(RealChaosError::Interrupted),
    };
    // Whatever happened: nothing stays stopped or cut off, and the devnet stops its children.
    injector.close();
    devnet.stop().await;
    result
}

/// Registers the clients, runs load and faults, heals, waits for the clients and checks.
async fn drive(
    config: &Config,
    devnet: &DevnetProcess,
    injector: Rc<Injector>,
) -> Result<Report, RealChaosError> {
    let ready = devnet.ready().await?;
    config.progress(format!("devnet ready; locator {}", ready.locator));
    let mut plan = Plan::draw(
        config.seed,
        WorkloadShape {
            regions: config.regions,
            clients_per_region: config.clients_per_region,
            messages_per_client: config.messages,
            // Pauses average 3/4 of the fault phase over the messages: sends (which take time
            // of their own under faults) end about when the faults do.
            pause_ms_max: (millis(config.duration) * 3 / (2 * u64::from(config.messages)))
                .clamp(SEND_PAUSE_MS_MIN, SEND_PAUSE_MS_MAX),
            // These clients send and sync; read receipts are the simulation's to exercise.
            read_percent: 0,
            linked_percent: LINKED_PERCENT,
            // Removal races are the simulation's to exercise.
            removed_percent: 0,
            group_percent: 0,
        },
    );
    // One user at least links a second device in every run, and each links between two of its
    // sends: under the faults, with sends left for the new device.
    let mut linked: Vec<u32> = plan
        .clients
        .iter()
        .filter(|client| client.linked)
        .map(|client| client.client)
        .collect();
    if linked.is_empty() {
        let count = u64::from(config.regions * config.clients_per_region);
        let drawn = seed::derive(config.seed, "real-linked", 0) % count;
        linked.push(u32::try_from(drawn).unwrap_or(0));
    }
    for client in linked {
        plan.link_mid_run(config.seed, client);
    }
    let plan = Rc::new(plan);
    // Linking retries through the faults, the recovery and the healing.
    let link_window_ms =
        millis(config.duration) + RECOVERY_TIMEOUT_MS + millis(config.heal_timeout);
    let link_attempts = u32::try_from(link_window_ms / LINK_RETRY_MS)
        .unwrap_or(u32::MAX)
        .clamp(1, LINK_ATTEMPTS_MAX);
    let deployment = Rc::new(Deployment {
        locator: ready.locator,
        ca: ready.ca,
        clients_dir: clients::clients_dir(&config.data),
        seed: config.seed,
        clients_per_region: config.clients_per_region,
        link_attempts,
        // Links start in the first half of the fault phase, so they happen under faults.
        link_delay_ms_max: millis(config.duration) / 2,
    });
    // Trace and fault times count from here.
    let origin = Instant::now();
    let record = Rc::new(RefCell::new(Record::new(origin)));

    let mut registrations = JoinSet::new();
    for client in plan.clients.clone() {
        let (deployment, record) = (deployment.clone(), record.clone());
        registrations
            .spawn_local(async move { clients::register(&deployment, &client, &record).await });
    }
    tokio::time::timeout(Duration::from_millis(REGISTRATION_TIMEOUT_MS), async {
        while let Some(registered) = registrations.join_next().await {
            registered.map_err(|error| {
                RealChaosError::Run(format!("a registration task failed: {error}"))
            })??;
        }
        Ok::<_, RealChaosError>(())
    })
    .await
    .map_err(|_| {
        RealChaosError::Run(format!(
            "the clients did not register within {REGISTRATION_TIMEOUT_MS} ms"
        ))
    })??;
    config.progress(format!(
        "{} clients registered; load and faults begin",
        plan.clients.len()
    ));

    let deadline = Rc::new(Deadline::default());
    let mut workload = JoinSet::new();
    for client in plan.clients.clone() {
        workload.spawn_local(clients::run(
            deployment.clone(),
            client,
            plan.clone(),
            record.clone(),
            deadline.clone(),
        ));
    }

    let faults_started = Instant::now();
    let mut problems = Vec::new();
    if let Err(error) = injector.run(config, origin, faults_started).await {
        problems.push(format!("fault loop: {error}"));
    }
    let faults_ms = millis(faults_started.elapsed());
    injector.heal();
    let recovering = Instant::now();
    if let Err(error) = injector.wait_all_running(RECOVERY_TIMEOUT_MS).await {
        problems.push(error.to_string());
    }
    let healing = Instant::now();
    config.progress(format!(
        "faults over after {:.1} s ({} injected); every process running after {:.1} s more; healing",
        seconds(faults_ms),
        injector.log.borrow().len(),
        recovering.elapsed().as_secs_f64()
    ));
    deadline.set(healing + config.heal_timeout);

    let wind_down = config.heal_timeout + Duration::from_millis(CLIENT_WIND_DOWN_MS);
    let finished = tokio::time::timeout(wind_down, async {
        while workload.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        workload.abort_all();
        while workload.join_next().await.is_some() {}
        problems.push(format!(
            "clients still busy {} s after the healing deadline; stopped",
            CLIENT_WIND_DOWN_MS / 1000
        ));
    }
    let healed_ms = millis(healing.elapsed());

    let record = record.borrow();
    if config.trace {
        for event in &record.trace {
            config.progress(format!("trace {event}"));
        }
    }
    let views = clients::views(&deployment, &plan, &record)?;
    let docs = clients::docs(&deployment, &plan, &record)?;
    let mut violations = check(&plan.recipients(), &record.trace, &views);
    violations.extend(check_convergence(&plan.recipients(), &record.trace, &docs));
    for (client, why) in &record.unlinked {
        problems.push(format!(
            "{} did not link its second device: {why}",
            crate::history::client_name(*client)
        ));
    }
    let unexpected_exits = injector.unexpected_exits();
    Ok(Report::new(
        config,
        &plan,
        &record,
        &docs,
        violations,
        injector.log.borrow().clone(),
        Timing {
            faults_ms,
            faults_over_at_ms: millis(faults_started.duration_since(origin)) + faults_ms,
            healed_ms,
        },
        unexpected_exits,
        problems,
    ))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}
