//! Applies the schedule's faults to the devnet's processes and lifts them.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use relay_devnet::process::{self as processes, DevnetProcess, DevnetState};
use rustix::process::Signal;
use tokio::time::Instant;

use super::netns::{self, Partitions};
use super::schedule::{Cut, Fault, Schedule, Target};
use super::{Config, FAULTS_MAX, RESTART_TIMEOUT_MS, RealChaosError, millis, seconds};

type Result<T> = std::result::Result<T, RealChaosError>;

/// One injected fault, as the report lists it.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    /// When it began, in ms since the clients began registering (as the trace counts).
    pub at_ms: u64,
    /// The fault.
    pub fault: Fault,
    /// The pids it hit.
    pub pids: Vec<u32>,
    /// How long it lasted (for a kill: until the devnet had restarted the process), in ms.
    pub lasted_ms: u64,
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
pub struct Injector {
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
    /// Every fault injected, in order.
    pub log: RefCell<Vec<FaultRecord>>,
    progress: super::ProgressSink,
}

impl Injector {
    /// An injector for `devnet`'s processes.
    pub fn new(config: &Config, devnet: &DevnetProcess) -> Self {
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
            progress: config.progress.clone(),
        }
    }

    /// The fault loop, begun at `started`: faults one after another until the duration has
    /// passed and every kind has been covered. Times are logged since `origin`.
    pub async fn run(&self, config: &Config, origin: Instant, started: Instant) -> Result<()> {
        let mut schedule = Schedule::new(config.seed, config.regions, &config.faults);
        let kinds: Vec<&str> = schedule.kinds().iter().map(|kind| kind.name()).collect();
        (self.progress)(format!("faults drawn from: {}", kinds.join(", ")));
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
                    (self.progress)(format!(
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
            (self.progress)(format!(
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
                    Err(error) => return Ok(Injected::Skipped(error.to_string())),
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
                .map_err(|_| {
                    RealChaosError::Run(format!(
                        "{name} was not restarted within {RESTART_TIMEOUT_MS} ms"
                    ))
                })?
                .map_err(|_| RealChaosError::Run("the devnet's event reader stopped".into()))?;
                if self.state.borrow().ended {
                    return Err(RealChaosError::Run("the devnet exited".into()));
                }
                Ok(Injected::Hit(vec![pid]))
            }
            Fault::Pause { target, hold_ms } => {
                let pid = match self.pause(&target.process()) {
                    Ok(pid) => pid,
                    Err(error) => return Ok(Injected::Skipped(error.to_string())),
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
                        Err(error) => return Ok(Injected::Skipped(error.to_string())),
                    };
                    let edge = match self.pause(&Target::Edge(region).process()) {
                        Ok(edge) => edge,
                        Err(error) => {
                            self.resume(service);
                            return Ok(Injected::Skipped(error.to_string()));
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
            return Err(RealChaosError::Run("faults are over".into()));
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
    pub fn heal(&self) {
        let stopped: Vec<u32> = self.stopped.borrow().iter().copied().collect();
        for pid in stopped {
            self.resume(pid);
        }
        if std::mem::take(&mut *self.cut.borrow_mut())
            && let Err(error) = netns::nft_heal()
        {
            (self.progress)(format!("removing the drop rules failed: {error}"));
        }
    }

    /// Lifts every fault and lets no new one start.
    pub fn close(&self) {
        *self.closed.borrow_mut() = true;
        self.heal();
    }

    /// Waits until every region, edge and the locator runs (restarted, continued).
    pub async fn wait_all_running(&self, timeout_ms: u64) -> Result<()> {
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
                return Err(RealChaosError::Run(format!(
                    "not every process was running {timeout_ms} ms after the faults ended"
                )));
            }
            if let Ok(Err(_)) = changed {
                return Err(RealChaosError::Run("the devnet exited".into()));
            }
        }
    }

    /// Deaths the devnet saw that no kill explains (a crash).
    pub fn unexpected_exits(&self) -> BTreeMap<String, u32> {
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
