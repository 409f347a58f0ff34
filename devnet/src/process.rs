//! A devnet followed from outside: `relayd devnet --json` run as a child process, whose
//! [`DevnetEvent`]s say which pid each region, edge and the locator has right now (`started`,
//! `restarted` after a death, `exited`). `relayd chaos` and the drills run their devnet so.
//! Signals go only to pids the devnet reported and that are still the devnet's children when
//! signalled (checked in /proc), so a pid the system has reused is never hit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use relay_edge::config::LimitsConfig;
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::DevnetError;
use crate::events::{DevnetEvent, Ready};
use crate::limits::{DEVNET_READY_TIMEOUT_MS, DEVNET_STOP_TIMEOUT_MS};

type Result<T> = std::result::Result<T, DevnetError>;

fn process_error(message: impl Into<String>) -> DevnetError {
    DevnetError::Process(message.into())
}

/// What the devnet has said so far.
#[derive(Debug, Clone, Default)]
pub struct DevnetState {
    /// The running pid of each child by name (`region-1`, `edge-1`, `locator`); absent between
    /// its death and its restart.
    pub pids: BTreeMap<String, u32>,
    /// Deaths seen, by name.
    pub exits: BTreeMap<String, u32>,
    /// The `ready` event, once seen.
    pub ready: Option<Ready>,
    /// Children that exited fenced (their standby took over); the devnet does not restart them.
    pub fenced: std::collections::BTreeSet<String>,
    /// The devnet's output ended (it exited).
    pub ended: bool,
}

/// What a followed devnet runs with besides its regions and data folder.
#[derive(Debug, Clone, Default)]
pub struct DevnetSettings {
    /// Per-connection request limits of every edge (`--edge-requests-per-second`,
    /// `--edge-requests-burst`); `None`: the edges' defaults.
    pub edge_limits: Option<LimitsConfig>,
    /// The log filter (`RELAY_LOG`) of the devnet and its children; `None`: inherited.
    pub log_filter: Option<String>,
    /// A standby for every region (`--standbys`).
    pub standbys: bool,
    /// No media endpoint at the regions (`--no-media-endpoints`): blobs go through the edges.
    pub no_media_endpoints: bool,
}

/// A running `relayd devnet --json`.
#[derive(Debug)]
pub struct DevnetProcess {
    child: Child,
    pid: u32,
    state: watch::Receiver<DevnetState>,
    log: PathBuf,
}

impl DevnetProcess {
    /// Starts `exe devnet --json --regions N --data DATA`, its stderr going to `log`.
    pub fn start(exe: &Path, regions: u32, data: &Path, log: &Path) -> Result<Self> {
        Self::start_with(exe, regions, data, log, &DevnetSettings::default())
    }

    /// [`DevnetProcess::start`] with `settings` (edge limits, a log filter) passed to the
    /// devnet and, through it, to its children.
    pub fn start_with(
        exe: &Path,
        regions: u32,
        data: &Path,
        log: &Path,
        settings: &DevnetSettings,
    ) -> Result<Self> {
        let log_file = std::fs::File::create(log)
            .map_err(|source| DevnetError::file("creating", log, source))?;
        let mut command = Command::new(exe);
        command
            .arg("devnet")
            .arg("--json")
            .arg("--regions")
            .arg(regions.to_string())
            .arg("--data")
            .arg(data);
        if let Some(limits) = settings.edge_limits {
            command
                .arg("--edge-requests-per-second")
                .arg(limits.requests_per_second.to_string())
                .arg("--edge-requests-burst")
                .arg(limits.requests_burst.to_string());
        }
        if settings.standbys {
            command.arg("--standbys");
        }
        if settings.no_media_endpoints {
            command.arg("--no-media-endpoints");
        }
        if let Some(filter) = &settings.log_filter {
            // The children inherit the devnet's environment.
            command.env("RELAY_LOG", filter);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| process_error(format!("cannot be started: {error}")))?;
        let pid = child.id().ok_or_else(|| process_error("exited at once"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| process_error("gives no standard output"))?;
        let (sender, state) = watch::channel(DevnetState::default());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sender.send_modify(|state| apply(state, &line));
            }
            sender.send_modify(|state| state.ended = true);
        });
        Ok(Self {
            child,
            pid,
            state,
            log: log.to_owned(),
        })
    }

    /// The devnet's own pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A view of the devnet's state that follows its events.
    pub fn state(&self) -> watch::Receiver<DevnetState> {
        self.state.clone()
    }

    /// Waits for `ready`.
    pub async fn ready(&self) -> Result<Ready> {
        let mut state = self.state.clone();
        let seen = tokio::time::timeout(
            Duration::from_millis(DEVNET_READY_TIMEOUT_MS),
            state.wait_for(|state| state.ready.is_some() || state.ended),
        )
        .await
        .map_err(|_| process_error(format!("was not ready within {DEVNET_READY_TIMEOUT_MS} ms")))?
        .map_err(|_| process_error("event reader stopped"))?;
        match &seen.ready {
            Some(ready) => Ok(ready.clone()),
            None => Err(process_error(format!(
                "exited before it was ready (see {})",
                self.log.display()
            ))),
        }
    }

    /// Stops the devnet: SIGTERM (it stops its children), then, past the deadline, SIGKILL for
    /// it and for every child it last reported.
    pub async fn stop(mut self) {
        let children: Vec<u32> = self
            .state
            .borrow()
            .pids
            .values()
            .copied()
            .filter(|&pid| parent_of(pid) == Some(self.pid))
            .collect();
        signal_pid(self.pid, Signal::TERM);
        let stopped = tokio::time::timeout(
            Duration::from_millis(DEVNET_STOP_TIMEOUT_MS),
            self.child.wait(),
        )
        .await;
        if stopped.is_err() {
            tracing::warn!(
                "the devnet did not stop within {DEVNET_STOP_TIMEOUT_MS} ms; killing it and its children"
            );
            let _ = self.child.kill().await;
            for pid in children {
                signal_pid(pid, Signal::KILL);
            }
        }
    }
}

/// Sends `signal` to the devnet's child `name` if it is running and still the devnet's child;
/// returns the pid signalled.
pub fn signal_child(
    state: &DevnetState,
    devnet_pid: u32,
    name: &str,
    signal: Signal,
) -> Result<u32> {
    let pid = *state
        .pids
        .get(name)
        .ok_or_else(|| process_error(format!("child {name} is not running")))?;
    if parent_of(pid) != Some(devnet_pid) {
        return Err(process_error(format!(
            "child {name}'s pid {pid} is no longer the devnet's child"
        )));
    }
    let target = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| process_error(format!("child {name} has an invalid pid {pid}")))?;
    rustix::process::kill_process(target, signal).map_err(|error| {
        process_error(format!(
            "child {name} (pid {pid}) cannot be signalled: {error}"
        ))
    })?;
    Ok(pid)
}

/// Whether every named child runs (is reported, is the devnet's child and is not stopped).
pub fn all_running(state: &DevnetState, devnet_pid: u32, names: &[String]) -> bool {
    names.iter().all(|name| {
        state.pids.get(name).is_some_and(|&pid| {
            parent_of(pid) == Some(devnet_pid) && process_state(pid).is_some_and(|s| s != 'T')
        })
    })
}

/// Sends a signal to a pid, ignoring failure (it may be gone).
pub fn signal_pid(pid: u32, signal: Signal) {
    if let Some(target) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(target, signal);
    }
}

/// Applies one line of the devnet's JSON output (other lines are ignored).
fn apply(state: &mut DevnetState, line: &str) {
    let Some(event) = DevnetEvent::parse(line) else {
        return;
    };
    match event {
        DevnetEvent::Started { name, pid, .. } | DevnetEvent::Restarted { name, pid, .. }
            if pid != 0 =>
        {
            state.pids.insert(name, pid);
        }
        DevnetEvent::Exited { name, .. } => {
            state.pids.remove(&name);
            *state.exits.entry(name).or_default() += 1;
        }
        DevnetEvent::Ready(ready) => state.ready = Some(ready),
        DevnetEvent::Fenced { name } => {
            state.fenced.insert(name);
        }
        _ => {}
    }
}

/// Fields of /proc/<pid>/stat after the command name: state, then the parent pid.
fn stat_fields(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold spaces or parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// The parent pid of a live process.
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid).map(|(_, parent)| parent)
}

/// The state letter of a live process (`R`, `S`, `T` for stopped, `Z`, …).
pub fn process_state(pid: u32) -> Option<char> {
    stat_fields(pid).map(|(state, _)| state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_follow_the_children() {
        let mut state = DevnetState::default();
        for line in [
            r#"{"event":"started","name":"region-1","pid":10,"address":"127.0.1.1:1"}"#,
            r#"{"event":"started","name":"edge-1","pid":11,"address":"127.0.1.2:1"}"#,
            r#"{"event":"ready","locator":"127.0.0.1:53","ca":"/d/pki/ca.pem","data":"/d","locator_pid":3,"regions":[]}"#,
            r#"{"event":"exited","name":"edge-1","status":"signal: 9"}"#,
            "not json",
            r#"{"event":"started","name":"bad","pid":"x"}"#,
        ] {
            apply(&mut state, line);
        }
        assert_eq!(state.pids.get("region-1"), Some(&10));
        assert_eq!(state.pids.get("edge-1"), None);
        assert!(!state.pids.contains_key("bad"));
        assert_eq!(state.exits.get("edge-1"), Some(&1));
        let ready = state.ready.as_ref().expect("ready seen");
        assert_eq!(ready.locator, "127.0.0.1:53".parse().expect("address"));
        assert_eq!(ready.ca, PathBuf::from("/d/pki/ca.pem"));
        apply(
            &mut state,
            r#"{"event":"restarted","name":"edge-1","pid":12,"address":"127.0.1.2:1"}"#,
        );
        assert_eq!(state.pids.get("edge-1"), Some(&12));
    }

    #[test]
    fn this_process_is_its_parents_child_and_running() {
        let me = std::process::id();
        assert_eq!(parent_of(me), Some(std::os::unix::process::parent_id()));
        assert!(matches!(process_state(me), Some('R' | 'S')));
    }
}
