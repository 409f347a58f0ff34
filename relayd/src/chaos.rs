//! `relayd chaos`: the devnet's real processes under load and faults, checked with the
//! simulation's history checker.
//!
//! It starts `relayd devnet` as a child, registers in-process clients ([`clients`]), then runs
//! their planned messages while a bounded fault loop ([`schedule`]) SIGKILLs (the devnet
//! restarts them), pauses (SIGSTOP … SIGCONT) and partitions regions and edges. Partitions are
//! nftables drop rules inside a network namespace of the run's own ([`netns`]) when that is
//! possible, and pauses otherwise. Then every fault is lifted and every process is running
//! again, the clients sync until everything has arrived (or a deadline passes), and
//! [`relay_chaos::history::check`] reads their trace and stored histories. The report counts
//! lost, duplicated, out-of-order and undecryptable messages; any non-zero count fails the run.
//!
//! Whatever happens (an error, Ctrl-C), every paused process is continued, every rule removed,
//! the devnet (and through it every server) stopped, and the namespace deleted.

mod clients;
mod netns;
mod schedule;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use relay_chaos::history::{Invariant, Violation, What, check};
use relay_chaos::workload::{Plan, WorkloadShape};
use rustix::process::Signal;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::serve::shutdown_signal;
use clients::{Deadline, Deployment, Record};
use netns::{Namespace, Partitions};
use relay_devnet::limits::DEVNET_REGIONS_MAX;
use relay_devnet::process::{self as processes, DevnetProcess as Devnet, DevnetState};
use schedule::{Cut, Fault, FaultKind, Schedule, Target};

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
/// Bounds of the pause a client takes before each send, in ms.
pub const SEND_PAUSE_MS_MIN: u64 = 10;
/// See [`SEND_PAUSE_MS_MIN`].
pub const SEND_PAUSE_MS_MAX: u64 = 10_000;

/// Arguments of `relayd chaos`.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Regions (each with its own edge), as in `relayd devnet`.
    #[arg(long, default_value_t = 2)]
    regions: u32,
    /// Clients homed in each region; client i of region k binds 127.0.k.(10 + i) and finds its
    /// edge through the devnet's locator.
    #[arg(long, default_value_t = 2)]
    clients_per_region: u32,
    /// Messages each client sends, each to a client drawn from the seed, spread over the fault
    /// phase.
    #[arg(long, default_value_t = 20)]
    messages: u32,
    /// Seconds of faults. The phase goes on until every selected kind has hit both a region and
    /// an edge at least once, so it may run a little longer.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds the clients may take, once every fault is lifted and every process runs, to
    /// receive everything (they stop as soon as they have).
    #[arg(long, default_value_t = 120)]
    heal_timeout: u64,
    /// Seed of the workload (who sends what to whom, and when) and of the fault schedule; drawn
    /// at random and printed when absent. Real timing varies, so a seed repeats the plan, not
    /// the exact interleaving.
    #[arg(long)]
    seed: Option<u64>,
    /// Which faults to inject (comma-separated): kill (SIGKILL; the devnet restarts the
    /// process), pause (SIGSTOP, later SIGCONT), partition (nftables drop rules between one
    /// region's 127.0.k.0/24 and the others', both ways or one way; needs root, `ip` and `nft`,
    /// else regions are paused instead).
    #[arg(long, value_delimiter = ',', default_value = "kill,pause,partition")]
    faults: Vec<FaultKind>,
    /// Folder for the devnet's data and logs and the clients' stores: new or empty. Default: a
    /// temporary folder, deleted after a clean run and kept (and printed) otherwise.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the report as one JSON object (progress goes to stderr either way).
    #[arg(long)]
    json: bool,
    /// Print the clients' recorded trace (every send, ack and arrival) to stderr at the end.
    #[arg(long)]
    trace: bool,
    /// Set by `relayd chaos` itself when it reruns inside the network namespace it made.
    #[arg(long, hide = true)]
    inside_netns: Option<String>,
}

/// `relayd chaos`.
pub fn run(args: ChaosArgs) -> Result<()> {
    validate(&args)?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let partitions_wanted = args.faults.contains(&FaultKind::Partition) && args.regions >= 2;
    let partitions = match &args.inside_netns {
        Some(namespace) if !netns::is_current(namespace) => {
            bail!(
                "--inside-netns is for relayd chaos itself: this is not network namespace {namespace}"
            )
        }
        Some(namespace) => match netns::nft_prepare() {
            Ok(()) => Partitions::Nftables {
                namespace: namespace.clone(),
            },
            Err(error) => Partitions::Pauses {
                why: format!("nftables failed inside the namespace: {error:#}"),
            },
        },
        None if partitions_wanted => match netns::namespace_unavailable() {
            None => match Namespace::create() {
                Ok(namespace) => return rerun_inside(&namespace, args.seed.is_none(), seed),
                Err(error) => Partitions::Pauses {
                    why: format!("no network namespace could be made: {error:#}"),
                },
            },
            Some(why) => Partitions::Pauses { why },
        },
        None => Partitions::Off {
            why: if args.regions < 2 {
                "one region has no other to be cut off from".into()
            } else {
                "not selected".into()
            },
        },
    };

    let (data, temporary) = match &args.data {
        Some(data) => {
            prepare_data(data)?;
            (data.canonicalize().context("resolving --data")?, None)
        }
        None => {
            let temporary = tempfile::Builder::new()
                .prefix("relay-chaos-")
                .tempdir()
                .context("making a temporary folder")?;
            (temporary.path().to_owned(), Some(temporary))
        }
    };
    let config = Config {
        seed,
        regions: args.regions,
        clients_per_region: args.clients_per_region,
        messages: args.messages,
        duration: Duration::from_secs(args.duration),
        heal_timeout: Duration::from_secs(args.heal_timeout),
        faults: args.faults.clone(),
        partitions,
        data: data.clone(),
        trace: args.trace,
    };
    progress(format!(
        "seed {seed}: {} regions × {} clients, {} messages each, {} s of faults; partitions: {}; data in {}",
        config.regions,
        config.clients_per_region,
        config.messages,
        args.duration,
        config.partitions.describe(),
        data.display()
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let local = tokio::task::LocalSet::new();
    let outcome = runtime.block_on(local.run_until(chaos(&config)));
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            if let Some(temporary) = temporary {
                let kept = temporary.keep();
                progress(format!("data kept in {}", kept.display()));
            }
            return Err(error.context(format!("relayd chaos with seed {seed}")));
        }
    };
    print_report(&report, args.json)?;
    if report.ok() {
        drop(temporary);
        Ok(())
    } else {
        if let Some(temporary) = temporary {
            let kept = temporary.keep();
            progress(format!("data and logs kept in {}", kept.display()));
        }
        bail!("the run broke invariants or did not finish cleanly; reproduce with --seed {seed}")
    }
}

/// One run's settings.
#[derive(Debug)]
struct Config {
    seed: u64,
    regions: u32,
    clients_per_region: u32,
    messages: u32,
    duration: Duration,
    heal_timeout: Duration,
    faults: Vec<FaultKind>,
    partitions: Partitions,
    data: PathBuf,
    trace: bool,
}

fn validate(args: &ChaosArgs) -> Result<()> {
    if args.regions == 0 || args.regions > DEVNET_REGIONS_MAX {
        bail!("--regions must be between 1 and {DEVNET_REGIONS_MAX}");
    }
    if args.clients_per_region == 0 || args.clients_per_region > CLIENTS_PER_REGION_MAX {
        bail!("--clients-per-region must be between 1 and {CLIENTS_PER_REGION_MAX}");
    }
    if args.regions * args.clients_per_region < 2 {
        bail!("a run needs two clients at least (more regions or --clients-per-region)");
    }
    if args.messages == 0 || args.messages > MESSAGES_PER_CLIENT_MAX {
        bail!("--messages must be between 1 and {MESSAGES_PER_CLIENT_MAX}");
    }
    if args.duration > DURATION_S_MAX || args.heal_timeout > DURATION_S_MAX {
        bail!("--duration and --heal-timeout must be at most {DURATION_S_MAX} s");
    }
    Ok(())
}

/// Makes `--data` (it must be new or empty: clients register afresh).
fn prepare_data(data: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let mut entries =
        std::fs::read_dir(data).with_context(|| format!("reading {}", data.display()))?;
    if entries.next().is_some() {
        bail!(
            "--data {} is not empty: give a new or empty folder",
            data.display()
        );
    }
    Ok(())
}

/// Runs this same command inside `namespace` and passes its exit status on.
fn rerun_inside(namespace: &Namespace, pass_seed: bool, seed: u64) -> Result<()> {
    let exe = std::env::current_exe().context("finding the relayd executable")?;
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if pass_seed {
        args.extend([OsString::from("--seed"), OsString::from(seed.to_string())]);
    }
    progress(format!(
        "running inside network namespace {} (partitions as nftables rules there)",
        namespace.name()
    ));
    let status = namespace.run_inside(&exe, &args)?;
    if !status.success() {
        bail!(
            "relayd chaos exited with {status} inside network namespace {}",
            namespace.name()
        );
    }
    Ok(())
}

/// Starts the devnet, runs everything, and cleans up whatever happened.
async fn chaos(config: &Config) -> Result<Report> {
    let exe = std::env::current_exe().context("finding the relayd executable")?;
    let devnet = Devnet::start(
        &exe,
        config.regions,
        &config.data.join("devnet"),
        &config.data.join("devnet.log"),
    )?;
    let injector = Rc::new(Injector::new(config, &devnet));
    let result = tokio::select! {
        result = drive(config, &devnet, injector.clone()) => result,
        () = shutdown_signal() => Err(anyhow!("interrupted")),
    };
    // Whatever happened: nothing stays stopped or cut off, and the devnet stops its children.
    injector.close();
    devnet.stop().await;
    result
}

/// Registers the clients, runs load and faults, heals, waits for the clients and checks.
async fn drive(config: &Config, devnet: &Devnet, injector: Rc<Injector>) -> Result<Report> {
    let ready = devnet.ready().await?;
    progress(format!("devnet ready; locator {}", ready.locator));
    let plan = Rc::new(Plan::draw(
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
        },
    ));
    let deployment = Rc::new(Deployment {
        locator: ready.locator,
        ca: ready.ca,
        clients_dir: clients::clients_dir(&config.data),
        seed: config.seed,
        clients_per_region: config.clients_per_region,
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
            registered.context("a registration task failed")??;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .map_err(|_| anyhow!("the clients did not register within {REGISTRATION_TIMEOUT_MS} ms"))??;
    progress(format!(
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
        problems.push(format!("fault loop: {error:#}"));
    }
    let faults_ms = millis(faults_started.elapsed());
    injector.heal();
    let recovering = Instant::now();
    if let Err(error) = injector.wait_all_running(RECOVERY_TIMEOUT_MS).await {
        problems.push(error.to_string());
    }
    let healing = Instant::now();
    progress(format!(
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
            progress(format!("trace {event}"));
        }
    }
    let views = clients::views(&deployment, &plan, &record)?;
    let violations = check(&plan.recipients(), &record.trace, &views);
    let unexpected_exits = injector.unexpected_exits();
    Ok(Report::new(
        config,
        &plan,
        &record,
        violations,
        injector.log.borrow().clone(),
        Timing {
            faults_ms,
            healed_ms,
        },
        unexpected_exits,
        problems,
    ))
}

/// One injected fault, as the report lists it.
#[derive(Debug, Clone)]
struct FaultRecord {
    /// When it began, in ms since the clients began registering (as the trace counts).
    at_ms: u64,
    fault: Fault,
    /// The pids it hit.
    pids: Vec<u32>,
    /// How long it lasted (for a kill: until the devnet had restarted the process), in ms.
    lasted_ms: u64,
}

/// What became of one fault.
#[derive(Debug)]
enum Injected {
    /// It hit these pids (none for nftables rules) and is over.
    Hit(Vec<u32>),
    /// Its process was not running.
    Skipped(String),
}

/// Applies faults to the devnet's processes and lifts them. Every process it stops is recorded
/// the moment it is stopped, so [`Injector::close`] continues it whatever was interrupted.
struct Injector {
    regions: u32,
    devnet_pid: u32,
    state: tokio::sync::watch::Receiver<DevnetState>,
    partitions: Partitions,
    /// Pids stopped by a pause and not yet continued.
    stopped: RefCell<BTreeSet<u32>>,
    /// Whether rules may be in place.
    cut: RefCell<bool>,
    /// Kills by process name (their exits are expected).
    kills: RefCell<BTreeMap<String, u32>>,
    /// Once closed, no fault starts.
    closed: RefCell<bool>,
    log: RefCell<Vec<FaultRecord>>,
}

impl Injector {
    fn new(config: &Config, devnet: &Devnet) -> Self {
        Self {
            regions: config.regions,
            devnet_pid: devnet.pid(),
            state: devnet.state(),
            partitions: config.partitions.clone(),
            stopped: RefCell::new(BTreeSet::new()),
            cut: RefCell::new(false),
            kills: RefCell::new(BTreeMap::new()),
            closed: RefCell::new(false),
            log: RefCell::new(Vec::new()),
        }
    }

    /// The fault loop, begun at `started`: faults one after another until the duration has
    /// passed and every kind has been covered. Times are logged since `origin`.
    async fn run(&self, config: &Config, origin: Instant, started: Instant) -> Result<()> {
        let mut schedule = Schedule::new(config.seed, config.regions, &config.faults);
        let kinds: Vec<&str> = schedule.kinds().iter().map(|kind| kind.name()).collect();
        progress(format!("faults drawn from: {}", kinds.join(", ")));
        let until = started + config.duration;
        for _ in 0..FAULTS_MAX {
            if Instant::now() >= until && schedule.covered() {
                break;
            }
            let Some((gap_ms, mut fault)) = schedule.next_fault() else {
                // No kind selected: the load runs for the duration without faults.
                tokio::time::sleep_until(until).await;
                break;
            };
            if let (Partitions::Pauses { .. }, Fault::Partition { cut, .. }) =
                (&self.partitions, &mut fault)
            {
                // A paused region is cut off both ways, whatever the schedule drew.
                *cut = Cut::BothWays;
            }
            tokio::time::sleep(Duration::from_millis(gap_ms)).await;
            let at_ms = millis(origin.elapsed());
            let began = Instant::now();
            let pids = match self.inject(fault).await? {
                Injected::Hit(pids) => pids,
                Injected::Skipped(why) => {
                    progress(format!(
                        "{:>6.1} s  {fault}: skipped ({why})",
                        seconds(at_ms)
                    ));
                    continue;
                }
            };
            let lasted_ms = millis(began.elapsed());
            let hit = if pids.is_empty() {
                "nftables".to_owned()
            } else {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!("pid {}", pids.join(", "))
            };
            progress(format!(
                "{:>6.1} s  {fault} ({hit}); over after {:.1} s",
                seconds(at_ms),
                seconds(lasted_ms)
            ));
            self.log.borrow_mut().push(FaultRecord {
                at_ms,
                fault,
                pids,
                lasted_ms,
            });
        }
        Ok(())
    }

    /// Applies one fault and lifts it. A process that is not running (a crash the report
    /// lists) skips the fault; a fault that cannot be lifted is an error.
    async fn inject(&self, fault: Fault) -> Result<Injected> {
        match fault {
            Fault::Kill(target) => {
                let name = target.process();
                let pid = match self.signal(&name, Signal::KILL) {
                    Ok(pid) => pid,
                    Err(error) => return Ok(Injected::Skipped(format!("{error:#}"))),
                };
                *self.kills.borrow_mut().entry(name.clone()).or_default() += 1;
                let mut state = self.state.clone();
                tokio::time::timeout(
                    Duration::from_millis(RESTART_TIMEOUT_MS),
                    state.wait_for(|state| {
                        state.ended || state.pids.get(&name).is_some_and(|&now| now != pid)
                    }),
                )
                .await
                .map_err(|_| anyhow!("{name} was not restarted within {RESTART_TIMEOUT_MS} ms"))?
                .map_err(|_| anyhow!("the devnet's event reader stopped"))?;
                if self.state.borrow().ended {
                    bail!("the devnet exited");
                }
                Ok(Injected::Hit(vec![pid]))
            }
            Fault::Pause { target, hold_ms } => {
                let pid = match self.pause(&target.process()) {
                    Ok(pid) => pid,
                    Err(error) => return Ok(Injected::Skipped(format!("{error:#}"))),
                };
                tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                self.resume(pid);
                Ok(Injected::Hit(vec![pid]))
            }
            Fault::Partition {
                region,
                cut,
                hold_ms,
            } => match &self.partitions {
                Partitions::Nftables { .. } => {
                    self.open()?;
                    *self.cut.borrow_mut() = true;
                    netns::nft_cut(region, self.regions, cut)?;
                    tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                    netns::nft_heal()?;
                    *self.cut.borrow_mut() = false;
                    Ok(Injected::Hit(Vec::new()))
                }
                Partitions::Pauses { .. } => {
                    let service = match self.pause(&Target::Region(region).process()) {
                        Ok(service) => service,
                        Err(error) => return Ok(Injected::Skipped(format!("{error:#}"))),
                    };
                    let edge = match self.pause(&Target::Edge(region).process()) {
                        Ok(edge) => edge,
                        Err(error) => {
                            self.resume(service);
                            return Ok(Injected::Skipped(format!("{error:#}")));
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                    self.resume(edge);
                    self.resume(service);
                    Ok(Injected::Hit(vec![service, edge]))
                }
                Partitions::Off { why } => {
                    Ok(Injected::Skipped(format!("partitions are off: {why}")))
                }
            },
        }
    }

    fn open(&self) -> Result<()> {
        if *self.closed.borrow() {
            bail!("faults are over");
        }
        Ok(())
    }

    fn signal(&self, name: &str, signal: Signal) -> Result<u32> {
        self.open()?;
        Ok(processes::signal_child(
            &self.state.borrow(),
            self.devnet_pid,
            name,
            signal,
        )?)
    }

    /// SIGSTOPs `name`, recording its pid before anything else can run.
    fn pause(&self, name: &str) -> Result<u32> {
        let pid = self.signal(name, Signal::STOP)?;
        self.stopped.borrow_mut().insert(pid);
        Ok(pid)
    }

    fn resume(&self, pid: u32) {
        if self.stopped.borrow_mut().remove(&pid) {
            processes::signal_pid(pid, Signal::CONT);
        }
    }

    /// Lifts every fault: continues stopped processes, removes the drop rules.
    fn heal(&self) {
        let stopped: Vec<u32> = self.stopped.borrow().iter().copied().collect();
        for pid in stopped {
            self.resume(pid);
        }
        if std::mem::take(&mut *self.cut.borrow_mut())
            && let Err(error) = netns::nft_heal()
        {
            progress(format!("removing the drop rules failed: {error:#}"));
        }
    }

    /// Lifts every fault and lets no new one start.
    fn close(&self) {
        *self.closed.borrow_mut() = true;
        self.heal();
    }

    /// Waits until every region, edge and the locator runs (restarted, continued).
    async fn wait_all_running(&self, timeout_ms: u64) -> Result<()> {
        let mut names: Vec<String> = (1..=self.regions)
            .flat_map(|region| [Target::Region(region), Target::Edge(region)])
            .map(Target::process)
            .collect();
        names.push("locator".into());
        let until = Instant::now() + Duration::from_millis(timeout_ms);
        let mut state = self.state.clone();
        loop {
            if processes::all_running(&state.borrow_and_update(), self.devnet_pid, &names) {
                return Ok(());
            }
            // A stopped process shows in /proc, not as an event: look again now and then.
            let changed = tokio::time::timeout_at(
                until.min(Instant::now() + Duration::from_millis(100)),
                state.changed(),
            )
            .await;
            if Instant::now() >= until {
                bail!("not every process was running {timeout_ms} ms after the faults ended");
            }
            if let Ok(Err(_)) = changed {
                bail!("the devnet exited");
            }
        }
    }

    /// Deaths the devnet saw that no kill explains (a crash).
    fn unexpected_exits(&self) -> BTreeMap<String, u32> {
        let kills = self.kills.borrow();
        self.state
            .borrow()
            .exits
            .iter()
            .filter_map(|(name, &exits)| {
                let extra = exits.saturating_sub(kills.get(name).copied().unwrap_or(0));
                (extra > 0).then(|| (name.clone(), extra))
            })
            .collect()
    }
}

/// How long the phases took.
#[derive(Debug, Clone, Copy)]
struct Timing {
    faults_ms: u64,
    healed_ms: u64,
}

/// The violations sorted into the report's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    lost: usize,
    duplicated: usize,
    out_of_order: usize,
    undecryptable: usize,
    other: usize,
}

impl Counts {
    fn of(violations: &[Violation]) -> Self {
        let mut counts = Self::default();
        for violation in violations {
            // The checker grows new invariants; whatever this build does not name is "other".
            #[allow(unreachable_patterns)]
            let count = match violation.invariant {
                Invariant::NoLoss => &mut counts.lost,
                Invariant::Idempotence => &mut counts.duplicated,
                Invariant::Order | Invariant::SenderFifo => &mut counts.out_of_order,
                Invariant::Decryptable => &mut counts.undecryptable,
                _ => &mut counts.other,
            };
            *count += 1;
        }
        counts
    }

    fn total(&self) -> usize {
        self.lost + self.duplicated + self.out_of_order + self.undecryptable + self.other
    }
}

/// What a run found.
#[derive(Debug)]
struct Report {
    seed: u64,
    regions: u32,
    clients: usize,
    messages_per_client: u32,
    partitions: Partitions,
    planned: usize,
    sent: usize,
    queued: usize,
    acknowledged: usize,
    received: usize,
    given_up: usize,
    clients_complete: usize,
    faults: Vec<FaultRecord>,
    counts: Counts,
    violations: Vec<Violation>,
    unexpected_exits: BTreeMap<String, u32>,
    client_errors: Vec<String>,
    client_errors_total: usize,
    problems: Vec<String>,
    timing: Timing,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn new(
        config: &Config,
        plan: &Plan,
        record: &Record,
        violations: Vec<Violation>,
        faults: Vec<FaultRecord>,
        timing: Timing,
        unexpected_exits: BTreeMap<String, u32>,
        problems: Vec<String>,
    ) -> Self {
        let count = |wanted: fn(&What) -> bool| {
            record
                .trace
                .iter()
                .filter(|event| wanted(&event.what))
                .count()
        };
        Self {
            seed: config.seed,
            regions: config.regions,
            clients: plan.clients.len(),
            messages_per_client: config.messages,
            partitions: config.partitions.clone(),
            planned: plan.recipients().len(),
            sent: count(|what| matches!(what, What::Send { .. })),
            queued: count(|what| matches!(what, What::Queued { .. })),
            acknowledged: count(|what| matches!(what, What::Acked { .. })),
            received: count(|what| matches!(what, What::Received { .. })),
            given_up: count(|what| matches!(what, What::Failed { .. })),
            clients_complete: record
                .finished
                .values()
                .filter(|&&complete| complete)
                .count(),
            faults,
            counts: Counts::of(&violations),
            violations,
            unexpected_exits,
            client_errors: record.errors.clone(),
            client_errors_total: record.errors_total,
            problems,
            timing,
        }
    }

    /// Whether the run is clean: no violation, no crash, no client error, every client done.
    fn ok(&self) -> bool {
        self.counts.total() == 0
            && self.unexpected_exits.is_empty()
            && self.client_errors_total == 0
            && self.problems.is_empty()
            && self.clients_complete == self.clients
    }

    /// How many faults of `kind` hit a process of `role` (`region`, `edge`).
    fn faults_of(&self, kind: FaultKind, role: &str) -> usize {
        self.faults
            .iter()
            .filter(|record| match record.fault {
                Fault::Kill(target) | Fault::Pause { target, .. } => {
                    record.fault.kind() == kind && target.role() == role
                }
                Fault::Partition { .. } => false,
            })
            .count()
    }

    /// How many partitions were one way (`true`) or both ways.
    fn partitions_of(&self, one_way: bool) -> usize {
        self.faults
            .iter()
            .filter(|record| match record.fault {
                Fault::Partition { cut, .. } => (cut != Cut::BothWays) == one_way,
                _ => false,
            })
            .count()
    }

    fn json(&self) -> serde_json::Value {
        let fault_log: Vec<serde_json::Value> = self
            .faults
            .iter()
            .map(|record| {
                serde_json::json!({
                    "at_ms": record.at_ms, "kind": record.fault.kind().name(),
                    "fault": record.fault.to_string(), "pids": record.pids,
                    "lasted_ms": record.lasted_ms,
                })
            })
            .collect();
        let violations: Vec<serde_json::Value> = self
            .violations
            .iter()
            .map(|violation| {
                serde_json::json!({"invariant": violation.invariant.to_string(), "detail": violation.detail})
            })
            .collect();
        serde_json::json!({
            "event": "chaos_report",
            "ok": self.ok(),
            "seed": self.seed,
            "regions": self.regions,
            "clients": self.clients,
            "messages_per_client": self.messages_per_client,
            "partitions": self.partitions.name(),
            "partitions_how": self.partitions.describe(),
            "messages": {
                "planned": self.planned, "sent": self.sent, "queued": self.queued,
                "acknowledged": self.acknowledged, "received": self.received,
                "given_up": self.given_up,
            },
            "faults": {
                "total": self.faults.len(),
                "kill": {"region": self.faults_of(FaultKind::Kill, "region"), "edge": self.faults_of(FaultKind::Kill, "edge")},
                "pause": {"region": self.faults_of(FaultKind::Pause, "region"), "edge": self.faults_of(FaultKind::Pause, "edge")},
                "partition": {"both_ways": self.partitions_of(false), "one_way": self.partitions_of(true)},
            },
            "fault_log": fault_log,
            "counts": {
                "lost": self.counts.lost, "duplicated": self.counts.duplicated,
                "out_of_order": self.counts.out_of_order, "undecryptable": self.counts.undecryptable,
                "other": self.counts.other,
            },
            "violations": violations,
            "unexpected_exits": self.unexpected_exits,
            "client_errors": self.client_errors,
            "client_errors_total": self.client_errors_total,
            "clients_complete": self.clients_complete,
            "problems": self.problems,
            "faults_ms": self.timing.faults_ms,
            "healed_ms": self.timing.healed_ms,
        })
    }

    fn table(&self) -> String {
        let mut out = format!(
            "relayd chaos, seed {}: {} regions, {} clients, {} messages each; partitions: {}\n\n",
            self.seed,
            self.regions,
            self.clients,
            self.messages_per_client,
            self.partitions.describe()
        );
        out.push_str("| messages | count |\n|---|--:|\n");
        for (name, value) in [
            ("planned", self.planned),
            ("sent (asked to send)", self.sent),
            ("queued in an outbox", self.queued),
            ("acknowledged (✓)", self.acknowledged),
            ("received", self.received),
            ("given up", self.given_up),
        ] {
            out.push_str(&format!("| {name} | {value} |\n"));
        }
        out.push_str(&format!(
            "\n| faults ({} in {:.1} s) | region | edge |\n|---|--:|--:|\n",
            self.faults.len(),
            seconds(self.timing.faults_ms)
        ));
        for kind in [FaultKind::Kill, FaultKind::Pause] {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                kind.name(),
                self.faults_of(kind, "region"),
                self.faults_of(kind, "edge")
            ));
        }
        out.push_str(&format!(
            "| partition (both ways / one way) | {} | {} |\n",
            self.partitions_of(false),
            self.partitions_of(true)
        ));
        out.push_str("\n| check | count |\n|---|--:|\n");
        for (name, value) in [
            ("lost", self.counts.lost),
            ("duplicated", self.counts.duplicated),
            ("out of order", self.counts.out_of_order),
            ("undecryptable", self.counts.undecryptable),
            ("other", self.counts.other),
        ] {
            out.push_str(&format!("| {name} | {value} |\n"));
        }
        out.push_str(&format!(
            "\nhealing: {} of {} clients had everything after {:.1} s\n",
            self.clients_complete,
            self.clients,
            seconds(self.timing.healed_ms)
        ));
        for violation in &self.violations {
            out.push_str(&format!("violation: {violation}\n"));
        }
        for (name, exits) in &self.unexpected_exits {
            out.push_str(&format!(
                "crash: {name} exited {exits} time(s) without being killed\n"
            ));
        }
        for error in &self.client_errors {
            out.push_str(&format!("client error: {error}\n"));
        }
        if self.client_errors_total > self.client_errors.len() {
            out.push_str(&format!(
                "client errors: {} more\n",
                self.client_errors_total - self.client_errors.len()
            ));
        }
        for problem in &self.problems {
            out.push_str(&format!("problem: {problem}\n"));
        }
        out.push_str(if self.ok() {
            "result: PASS\n"
        } else {
            "result: FAIL\n"
        });
        out
    }
}

fn print_report(report: &Report, json: bool) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    if json {
        writeln!(stdout, "{}", report.json())?;
    } else {
        write!(stdout, "{}", report.table())?;
    }
    stdout.flush()?;
    Ok(())
}

/// A progress line on stderr.
fn progress(line: String) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "chaos: {line}");
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_sort_into_the_reports_counts() {
        let violation = |invariant| Violation {
            invariant,
            detail: String::new(),
        };
        let counts = Counts::of(&[
            violation(Invariant::NoLoss),
            violation(Invariant::NoLoss),
            violation(Invariant::Idempotence),
            violation(Invariant::Order),
            violation(Invariant::SenderFifo),
            violation(Invariant::Decryptable),
        ]);
        assert_eq!(
            counts,
            Counts {
                lost: 2,
                duplicated: 1,
                out_of_order: 2,
                undecryptable: 1,
                other: 0,
            }
        );
        assert_eq!(counts.total(), 6);
    }
}
