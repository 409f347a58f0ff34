//! Test support for journeys: a devnet of real `relayd` processes on loopback, and the `relay`
//! CLI run as a user would. Ports are read from the processes' output, never fixed; waits are
//! on conditions with generous deadlines, never on fixed sleeps.

#![allow(dead_code)]

pub mod history;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use relay_devnet::{DevnetEvent, Ready, RegionReady};
use serde_json::Value;

/// Generous: the machines are shared and noisy.
pub const START_DEADLINE: Duration = Duration::from_secs(90);
/// How long a condition may take to become true.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The path of a binary of this package.
pub fn relayd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_relayd")
}

/// The path of the `relay` CLI, built by the `relay-cli` package: `target/<profile>/relay`,
/// beside this test's own `deps/` folder. `cargo build --workspace` and `cargo nextest run
/// --workspace` build it (relay-cli's own tests need it); a missing or stale one (older than
/// the client library it was built from) fails with what to run.
pub fn relay_bin() -> PathBuf {
    let test = std::env::current_exe().expect("the test executable's path");
    let deps = test.parent().expect("the deps folder");
    let profile = deps.parent().expect("the profile folder");
    let relay = profile.join(format!("relay{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&relay)
        .and_then(|metadata| metadata.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: build it with `cargo build -p relay-cli` (or run the tests with \
                 `cargo nextest run --workspace`)",
                relay.display()
            )
        });
    // A `relay` older than the sources it is built from is stale.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace");
    let newest_source = ["client", "proto", "net", "planted"]
        .iter()
        .filter_map(|crate_dir| newest_source(&workspace.join(crate_dir)))
        .max();
    if let Some(source) = newest_source {
        assert!(
            built >= source,
            "{} is older than the client's sources: rebuild it with `cargo build -p relay-cli` \
             (or run the tests with `cargo nextest run --workspace`)",
            relay.display()
        );
    }
    relay
}

/// When the newest Rust source or manifest under `dir` that goes into a binary was written:
/// integration tests (`tests/` folders) and unit test modules (`tests.rs`) do not, and a change
/// to them alone leaves the binary as cargo built it.
fn newest_source(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | "tests" | "benches" | "examples")
                    && !name.starts_with('.')
                {
                    folders.push(path);
                }
            } else if (name.ends_with(".rs") && name != "tests.rs") || name == "Cargo.toml" {
                let modified = entry.metadata().and_then(|m| m.modified()).ok();
                newest = newest.max(modified);
            }
        }
    }
    newest
}

/// A running `relayd devnet --json`.
pub struct Devnet {
    child: Option<Child>,
    /// Its data folder.
    pub data: PathBuf,
    /// The `ready` event.
    pub ready: Ready,
    events: Receiver<DevnetEvent>,
}

impl Devnet {
    /// Starts a devnet with `regions` regions on `data` and waits until it is ready.
    pub fn start(regions: u32, data: &Path) -> Devnet {
        Devnet::start_with(regions, data, &[])
    }

    /// Starts a devnet as [`Devnet::start`] does, with more `relayd devnet` arguments.
    pub fn start_with(regions: u32, data: &Path, arguments: &[&str]) -> Devnet {
        let mut child = Command::new(relayd_bin())
            .args([
                "devnet",
                "--json",
                "--regions",
                &regions.to_string(),
                "--data",
            ])
            .arg(data)
            .args(arguments)
            .env("RELAY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("relayd devnet starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                match DevnetEvent::parse(&line) {
                    Some(event) => {
                        if sender.send(event).is_err() {
                            return;
                        }
                    }
                    None => eprintln!("devnet: {line}"),
                }
            }
        });
        let ready = wait_for_event(&events, START_DEADLINE, |event| {
            matches!(event, DevnetEvent::Ready(_))
        });
        let DevnetEvent::Ready(ready) = ready else {
            unreachable!("the predicate only accepts ready events")
        };
        Devnet {
            child: Some(child),
            data: data.to_owned(),
            ready,
            events,
        }
    }

    /// Waits for an event matching `predicate`, panicking at the deadline.
    pub fn wait_event(
        &mut self,
        deadline: Duration,
        predicate: impl Fn(&DevnetEvent) -> bool,
    ) -> DevnetEvent {
        wait_for_event(&self.events, deadline, predicate)
    }

    /// The locator's address.
    pub fn locator(&self) -> String {
        self.ready.locator.to_string()
    }

    /// The CA certificate clients trust.
    pub fn ca(&self) -> String {
        self.ready.ca.display().to_string()
    }

    /// Region `k`'s entry in the ready event.
    pub fn region(&self, k: u32) -> &RegionReady {
        self.ready.region(k).expect("region listed")
    }

    /// Sends a signal to the devnet itself.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        send_signal(pid, signal);
    }

    /// Stops the devnet with SIGTERM and waits for it to exit cleanly.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        send_signal(child.id(), "TERM");
        let until = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "devnet exited with {status}");
                return;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!("devnet did not stop within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), "TERM");
            let until = Instant::now() + Duration::from_secs(15);
            while Instant::now() < until {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for an event of `events` matching `predicate`, panicking at the deadline.
fn wait_for_event(
    events: &Receiver<DevnetEvent>,
    deadline: Duration,
    predicate: impl Fn(&DevnetEvent) -> bool,
) -> DevnetEvent {
    let until = Instant::now() + deadline;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(event) if predicate(&event) => return event,
            Ok(_) => continue,
            Err(RecvTimeoutError::Timeout) => panic!("devnet event not seen within {deadline:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("devnet exited before the event"),
        }
    }
}

/// Sends a signal (by name: TERM, KILL, STOP, CONT) to a process this test started.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A person with a `relay` data folder.
pub struct Person {
    /// The account name.
    pub name: String,
    /// The data folder.
    pub data: PathBuf,
}

impl Person {
    /// A person whose data lives under `root/name`.
    pub fn new(root: &Path, name: &str) -> Person {
        Person {
            name: name.to_owned(),
            data: root.join(name),
        }
    }

    /// Runs `relay --data <data> --json <args>` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(relay_bin());
        command
            .arg("--data")
            .arg(&self.data)
            .arg("--json")
            .args(args);
        let output = command.output().expect("relay runs");
        eprintln!(
            "relay {} {:?} -> {}\nstdout: {}stderr: {}",
            self.name,
            args,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Runs a command that must succeed, returning its JSON lines.
    pub fn ok(&self, args: &[&str]) -> Vec<Value> {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "relay {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        json_lines(&output.stdout)
    }

    /// Registers this person through the devnet's locator from `bind`.
    pub fn register(&self, devnet: &Devnet, bind: &str) -> Vec<Value> {
        self.ok(&[
            "register",
            &self.name,
            "--locator",
            &devnet.locator(),
            "--bind",
            bind,
            "--ca",
            &devnet.ca(),
        ])
    }

    /// Starts a long-running `relay` command (listen, send --wait) with piped JSON output.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut child = Command::new(relay_bin())
            .arg("--data")
            .arg(&self.data)
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("relay starts");
        let stdout = child.stdout.take().expect("piped");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(value) = serde_json::from_str::<Value>(&line)
                    && sender.send(value).is_err()
                {
                    return;
                }
            }
        });
        Running { child, lines }
    }
}

/// A long-running `relay` process.
pub struct Running {
    /// The process.
    pub child: Child,
    lines: Receiver<Value>,
}

impl Running {
    /// Waits for a JSON line matching `predicate`.
    pub fn wait_for(&mut self, deadline: Duration, predicate: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(value) if predicate(&value) => return value,
                Ok(_) => continue,
                Err(_) => panic!("expected output not seen within {deadline:?}"),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses each stdout line as JSON.
pub fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON: {line:?}: {error}"))
        })
        .collect()
}

/// Retries `attempt` until it returns Some, or panics at the deadline.
pub fn eventually<T>(deadline: Duration, what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    let mut pause = Duration::from_millis(100);
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        if Instant::now() > until {
            panic!("{what}: not true within {deadline:?}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Runs `relayd devnet --json` on `data` expecting it to fail before it is ready; returns its
/// output. Panics if it becomes ready or outlives the deadline.
pub fn devnet_refuses(regions: u32, data: &Path) -> Output {
    let child = Command::new(relayd_bin())
        .args([
            "devnet",
            "--json",
            "--regions",
            &regions.to_string(),
            "--data",
        ])
        .arg(data)
        .env("RELAY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("relayd devnet starts");
    let output = wait_with_deadline(child, START_DEADLINE, "relayd devnet");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "devnet (expected to fail) -> {}\nstdout: {stdout}stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !stdout.contains("\"event\":\"ready\""),
        "the devnet was expected to fail"
    );
    assert!(!output.status.success(), "the devnet must exit non-zero");
    output
}

/// Waits for `child` to exit, collecting its output; kills it at the deadline and panics.
pub fn wait_with_deadline(mut child: Child, deadline: Duration, what: &str) -> Output {
    let until = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().expect("output"),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not exit within {deadline:?}");
            }
        }
    }
}

/// Runs `relayd <args>` to completion (an operator command), with a deadline.
pub fn relayd(args: &[&str]) -> Output {
    let child = Command::new(relayd_bin())
        .args(args)
        .env("RELAY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("relayd runs");
    let output = wait_with_deadline(child, DEADLINE, "relayd");
    eprintln!(
        "relayd {args:?} -> {}\nstdout: {}stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A `relayd` server started on its own (not by a devnet), stopped with SIGTERM when dropped.
pub struct Server {
    child: Child,
    /// The address from its "listening on" line.
    pub address: String,
    stderr: std::thread::JoinHandle<String>,
}

impl Server {
    /// Starts `relayd <args>` and waits for its "listening on" line; panics if it exits first.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(relayd_bin())
            .args(args)
            .env("RELAY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("relayd starts");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("relayd {line}");
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let until = Instant::now() + START_DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some((_, address)) = line.split_once(" listening on ") {
                        return Server {
                            child,
                            address: address.trim().to_owned(),
                            stderr,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("relayd {args:?} did not listen within {START_DEADLINE:?}");
                }
            }
        }
    }

    /// Stops the server with SIGTERM and returns what it wrote to stderr.
    pub fn stop(mut self) -> String {
        send_signal(self.child.id(), "TERM");
        let until = Instant::now() + DEADLINE;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        stderr.join().unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            send_signal(self.child.id(), "TERM");
            let until = Instant::now() + Duration::from_secs(15);
            while Instant::now() < until {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The JSON lines of `lines` that are `kind` events.
pub fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == kind).collect()
}

/// Whether one `relay send` saw its message acknowledged (no retry by a later sync).
pub fn acknowledged_at_once(from: &Person, to: &str, text: &str) -> bool {
    let lines = from.ok(&["send", to, text]);
    events(&lines, "tick")
        .iter()
        .any(|tick| tick["tick"] == "sent" || tick["tick"] == "delivered")
}

/// Syncs `person` until every text of `texts` arrived; every text received, in arrival order.
pub fn receive_all(person: &Person, texts: &[String]) -> Vec<String> {
    let mut received: Vec<String> = Vec::new();
    eventually(DEADLINE, "every message arrives", || {
        let lines = person.ok(&["sync"]);
        received.extend(
            events(&lines, "message")
                .iter()
                .filter_map(|line| line["text"].as_str().map(str::to_owned)),
        );
        texts
            .iter()
            .all(|text| received.contains(text))
            .then_some(())
    });
    received
}

/// Runs `relayd admin move-home ACCOUNT --to TO --config CONFIG --json` to completion.
pub fn move_home(account: &str, to: &str, config: &Path) -> Output {
    let output = Command::new(relayd_bin())
        .args([
            "admin",
            "move-home",
            account,
            "--json",
            "--to",
            to,
            "--config",
        ])
        .arg(config)
        .output()
        .expect("relayd admin move-home runs");
    eprintln!(
        "move-home {account} --to {to} -> {}\nstdout: {}stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
