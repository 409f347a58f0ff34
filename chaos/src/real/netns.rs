//! Partitions for real-process runs: a network namespace of their own, where nftables rules
//! drop the packets between one region's addresses (127.0.k.0/24) and the others'.
//!
//! Run as root with `ip` and `nft` on the PATH, `relayd chaos` creates the namespace
//! `relay-chaos-<pid>` ([`Namespace::create`]), brings its loopback up and runs itself again
//! inside it ([`Namespace::run_inside`], `ip netns exec`): the devnet, the clients and the rules
//! then live in that namespace only, so the host's network is never touched. The outer process
//! waits, passes Ctrl-C on, and deletes the namespace at the end, also on error. Elsewhere
//! partitions fall back to pausing processes ([`Partitions::Pauses`]).

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use std::future::Future;

use relay_devnet::process::signal_pid;
use rustix::process::Signal;

use super::RealChaosError;
use super::schedule::Cut;

type Result<T> = std::result::Result<T, RealChaosError>;

/// The nftables table `relayd chaos` owns inside its namespace.
pub const NFT_TABLE: &str = "relay_chaos";
/// How long the inner process may take to finish after the outer one passed Ctrl-C on, in ms.
pub const INNER_STOP_TIMEOUT_MS: u64 = 60_000;

/// How partitions are made in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitions {
    /// nftables drop rules in the namespace of this name.
    Nftables {
        /// The namespace.
        namespace: String,
    },
    /// Pausing the cut-off region's service and edge together, because nftables cannot be used.
    Pauses {
        /// Why not.
        why: String,
    },
    /// No partitions in this run.
    Off {
        /// Why.
        why: String,
    },
}

impl Partitions {
    /// How the report names the mode.
    pub fn name(&self) -> &'static str {
        match self {
            Partitions::Nftables { .. } => "nftables",
            Partitions::Pauses { .. } => "pauses",
            Partitions::Off { .. } => "off",
        }
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        match self {
            Partitions::Nftables { namespace } => {
                format!("nftables drop rules in network namespace {namespace}")
            }
            Partitions::Pauses { why } => {
                format!("process pauses (region service and edge stopped together), because {why}")
            }
            Partitions::Off { why } => format!("none ({why})"),
        }
    }
}

/// Why this process cannot make a namespace with nftables rules, if it cannot.
pub fn namespace_unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not running as root".into());
    }
    for (tool, probe) in [("ip", "-V"), ("nft", "--version")] {
        let works = Command::new(tool)
            .arg(probe)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !works {
            return Some(format!(
                "`{tool}` is not available (Debian: apt-get install {})",
                package_of(tool)
            ));
        }
    }
    None
}

fn package_of(tool: &str) -> &'static str {
    if tool == "nft" {
        "nftables"
    } else {
        "iproute2"
    }
}

/// Whether this process runs in the network namespace `name` that `ip netns` made (so
/// nftables rules touch that namespace only, never the host's).
pub fn is_current(name: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    if !name.starts_with("relay-chaos-") || name.contains('/') {
        return false;
    }
    let named = std::fs::metadata(Path::new("/run/netns").join(name));
    let current = std::fs::metadata("/proc/self/ns/net");
    match (named, current) {
        (Ok(named), Ok(current)) => named.dev() == current.dev() && named.ino() == current.ino(),
        _ => false,
    }
}

/// A network namespace this process created; dropping it deletes it.
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// Creates `relay-chaos-<pid>` with its loopback up, and checks that programs and nftables
    /// run inside it (a container may allow the first step and not the others).
    pub fn create() -> Result<Self> {
        let name = format!("relay-chaos-{}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let namespace = Self { name };
        run("ip", &["-n", &namespace.name, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &["netns", "exec", &namespace.name, "nft", "list", "tables"],
        )?;
        Ok(namespace)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `exe args…` inside the namespace and waits for it; when `shutdown` completes first
    /// (Ctrl-C), the inner process gets SIGTERM and is waited for.
    pub async fn run_inside(
        &self,
        exe: &Path,
        args: &[OsString],
        shutdown: impl Future<Output = ()>,
    ) -> Result<ExitStatus> {
        let waiting = |error| RealChaosError::io("waiting for the process in the namespace", error);
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(exe)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| RealChaosError::io("running a process in the namespace", error))?;
        // `ip netns exec` execs the program, so this pid is the inner process itself.
        let pid = child.id().ok_or_else(|| {
            RealChaosError::Run("the process in the namespace exited at once".into())
        })?;
        tokio::select! {
            status = child.wait() => status.map_err(waiting),
            () = shutdown => {
                signal_pid(pid, Signal::TERM);
                let stopped = tokio::time::timeout(
                    Duration::from_millis(INNER_STOP_TIMEOUT_MS),
                    child.wait(),
                )
                .await;
                match stopped {
                    Ok(status) => status.map_err(waiting),
                    Err(_) => {
                        let _ = child.kill().await;
                        Err(RealChaosError::Run(format!(
                            "the process in the namespace did not stop within {INNER_STOP_TIMEOUT_MS} ms; killed"
                        )))
                    }
                }
            }
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(error) = run("ip", &["netns", "delete", &self.name]) {
            tracing::error!(namespace = %self.name, %error, "could not delete a network namespace");
        }
    }
}

/// Creates the table and output chain that hold the drop rules (inside the namespace).
pub fn nft_prepare() -> Result<()> {
    run("nft", &["add", "table", "inet", NFT_TABLE])?;
    run(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            NFT_TABLE,
            "output",
            "{ type filter hook output priority 0 ; policy accept ; }",
        ],
    )
}

/// Drops the packets `cut` names between region `region`'s addresses and every other region's.
pub fn nft_cut(region: u32, regions: u32, cut: Cut) -> Result<()> {
    let own = subnet(region);
    for other in (1..=regions).filter(|&other| other != region) {
        let other = subnet(other);
        let mut pairs = Vec::new();
        if matches!(cut, Cut::BothWays | Cut::Outbound) {
            pairs.push((own.clone(), other.clone()));
        }
        if matches!(cut, Cut::BothWays | Cut::Inbound) {
            pairs.push((other.clone(), own.clone()));
        }
        for (from, to) in pairs {
            run(
                "nft",
                &[
                    "add", "rule", "inet", NFT_TABLE, "output", "ip", "saddr", &from, "ip",
                    "daddr", &to, "drop",
                ],
            )?;
        }
    }
    Ok(())
}

/// Drops every packet from or to `address` (one machine cut off from all the others: the
/// failover drill's partition of a region's primary).
pub fn nft_isolate(address: std::net::IpAddr) -> Result<()> {
    let address = address.to_string();
    for direction in ["saddr", "daddr"] {
        run(
            "nft",
            &[
                "add", "rule", "inet", NFT_TABLE, "output", "ip", direction, &address, "drop",
            ],
        )?;
    }
    Ok(())
}

/// Removes every drop rule.
pub fn nft_heal() -> Result<()> {
    run("nft", &["flush", "chain", "inet", NFT_TABLE, "output"])
}

/// Region k's addresses.
fn subnet(region: u32) -> String {
    format!("127.0.{region}.0/24")
}

/// Runs a command to completion, failing with its stderr.
fn run(program: &str, args: &[&str]) -> Result<()> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| RealChaosError::io(&format!("running {program}"), error))?;
    if !output.status.success() {
        return Err(RealChaosError::Run(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}
