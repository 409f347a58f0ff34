//! The servers under test: a devnet run as a child process (`relayd devnet --json`, followed
//! through [`DevnetProcess`]), with the edges' per-connection request limits lifted (the report
//! says so) and the storage engine's retries logged, and what the benchmarks read of it: each
//! region's and edge's pid and address, their CPU time and resident memory from `/proc`, and
//! the regions' transaction retries from their logs.
//!
//! The regions have no statistics request, so retries are counted from their logs: the storage
//! engine logs every retry of a transaction (`retrying transaction`, at debug level under
//! `fdb_layers::engine`, which this devnet turns on), with its cause; conflicts are those whose
//! cause is a conflicting commit (`NotCommitted`).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::rustls::RootCertStore;
use relay_devnet::{DevnetProcess, DevnetSettings, Ready};

use crate::BenchError;
use crate::measure::{process_cpu_time, process_written_bytes, resident_bytes};

/// The log filter of the devnet under test: the usual one, plus the storage engine's retries.
pub const LOG_FILTER: &str = "info,hickory_server=warn,fdb_layers::engine=debug";
/// The line the storage engine logs for each retried transaction.
const RETRY_LINE: &str = "retrying transaction";
/// What that line says when the retry's cause was a conflict.
const CONFLICT_CAUSE: &str = "conflicting transaction";

/// A running devnet under test.
#[derive(Debug)]
pub struct Servers {
    devnet: DevnetProcess,
    ready: Ready,
    logs: PathBuf,
}

/// A reading of every server at one moment: CPU time and log positions.
#[derive(Debug, Clone, Default)]
pub struct ServerMark {
    cpu: BTreeMap<String, (u32, Duration)>,
    log_offsets: BTreeMap<String, u64>,
    /// Bytes each region had written to storage (`/proc/<pid>/io`).
    written: BTreeMap<String, (u32, u64)>,
}

/// What the servers did between two marks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerUsage {
    /// User plus system CPU seconds of every region and edge process together.
    pub cpu_seconds: f64,
    /// The same per process (`region-1`, `edge-1`, …).
    pub cpu_seconds_by_process: BTreeMap<String, f64>,
    /// Whether every process kept its pid between the marks (none died or restarted).
    pub same_processes: bool,
    /// Bytes every region together wrote to storage (pages written back, as the kernel
    /// counts them).
    pub region_bytes_written: u64,
    /// Transactions the regions retried after a conflict.
    pub conflict_retries: u64,
    /// Transactions the regions retried for another reason (an unknown commit result, a full
    /// commit queue, storage unavailable).
    pub other_retries: u64,
}

impl Servers {
    /// Starts `relayd devnet` (the executable `relayd`) with `regions` regions on `data` and
    /// waits until it is ready.
    pub async fn start(relayd: &Path, regions: u32, data: &Path) -> Result<Self, BenchError> {
        Self::start_with_standbys(relayd, regions, data, false).await
    }

    /// [`Servers::start`], with a standby per region when `standbys` (every commit is then
    /// acknowledged once the region's standby has it too).
    pub async fn start_with_standbys(
        relayd: &Path,
        regions: u32,
        data: &Path,
        standbys: bool,
    ) -> Result<Self, BenchError> {
        Self::start_devnet(relayd, regions, data, standbys, true).await
    }

    /// [`Servers::start`] with no media endpoint at the regions: blobs go through the edges.
    pub async fn start_without_media(
        relayd: &Path,
        regions: u32,
        data: &Path,
    ) -> Result<Self, BenchError> {
        Self::start_devnet(relayd, regions, data, false, false).await
    }

    async fn start_devnet(
        relayd: &Path,
        regions: u32,
        data: &Path,
        standbys: bool,
        media_endpoints: bool,
    ) -> Result<Self, BenchError> {
        std::fs::create_dir_all(data).map_err(BenchError::io("creating", data))?;
        let settings = DevnetSettings {
            // The edges' own request limits: a benchmark that lifted them would not measure
            // what a device gets.
            edge_limits: None,
            log_filter: Some(LOG_FILTER.to_owned()),
            standbys,
            no_media_endpoints: !media_endpoints,
        };
        let devnet =
            DevnetProcess::start_with(relayd, regions, data, &data.join("devnet.log"), &settings)?;
        let ready = match devnet.ready().await {
            Ok(ready) => ready,
            Err(error) => {
                devnet.stop().await;
                return Err(error.into());
            }
        };
        Ok(Self {
            devnet,
            logs: ready.data.join("logs"),
            ready,
        })
    }

    /// Region `region`'s edge and the address its clients bind.
    pub fn edge(&self, region: u32) -> Result<(SocketAddr, IpAddr), BenchError> {
        self.ready
            .region(region)
            .map(|entry| (entry.edge, entry.client_bind))
            .ok_or_else(|| BenchError::Invalid(format!("the devnet has no region {region}")))
    }

    /// The edge locator's DNS address, which SDK devices ask for their edge.
    pub fn locator(&self) -> SocketAddr {
        self.ready.locator
    }

    /// The devnet's CA certificate file.
    pub fn ca(&self) -> &Path {
        &self.ready.ca
    }

    /// The devnet's CA, which devices trust.
    pub fn roots(&self) -> Result<Arc<RootCertStore>, BenchError> {
        relay_net::load_roots(&self.ready.ca).map_err(BenchError::net("loading the devnet's CA"))
    }

    /// The running regions and edges by name, with their pids.
    pub fn processes(&self) -> BTreeMap<String, u32> {
        self.devnet
            .state()
            .borrow()
            .pids
            .iter()
            .filter(|(name, _)| name.starts_with("region-") || name.starts_with("edge-"))
            .map(|(name, &pid)| (name.clone(), pid))
            .collect()
    }

    /// The pid of region `region`'s edge.
    pub fn edge_pid(&self, region: u32) -> Result<u32, BenchError> {
        self.processes()
            .get(&format!("edge-{region}"))
            .copied()
            .ok_or_else(|| BenchError::Refused(format!("edge-{region} is not running")))
    }

    /// The resident memory of process `pid`, in bytes.
    pub fn resident_bytes(pid: u32) -> Result<u64, BenchError> {
        resident_bytes(pid).ok_or_else(|| {
            BenchError::Refused(format!("cannot read the memory of process {pid} in /proc"))
        })
    }

    /// Reads every region's and edge's CPU time and the length of every region's log.
    pub fn mark(&self) -> ServerMark {
        let mut mark = ServerMark::default();
        for (name, pid) in self.processes() {
            if let Some(cpu) = process_cpu_time(pid) {
                mark.cpu.insert(name.clone(), (pid, cpu));
            }
            if name.starts_with("region-") {
                let length = std::fs::metadata(self.log_of(&name)).map_or(0, |m| m.len());
                if let Some(written) = process_written_bytes(pid) {
                    mark.written.insert(name.clone(), (pid, written));
                }
                mark.log_offsets.insert(name, length);
            }
        }
        mark
    }

    /// What the servers did from `before` to `after`.
    pub fn usage(&self, before: &ServerMark, after: &ServerMark) -> ServerUsage {
        let mut usage = ServerUsage {
            same_processes: before.cpu.len() == after.cpu.len(),
            ..ServerUsage::default()
        };
        for (name, (pid, cpu_after)) in &after.cpu {
            match before.cpu.get(name) {
                Some((pid_before, cpu_before)) if pid_before == pid => {
                    let seconds = cpu_after.saturating_sub(*cpu_before).as_secs_f64();
                    usage.cpu_seconds += seconds;
                    usage.cpu_seconds_by_process.insert(name.clone(), seconds);
                }
                _ => usage.same_processes = false,
            }
        }
        for (name, (pid, after)) in &after.written {
            if let Some((pid_before, before)) = before.written.get(name)
                && pid_before == pid
            {
                usage.region_bytes_written += after.saturating_sub(*before);
            }
        }
        for (name, &from) in &before.log_offsets {
            let to = after.log_offsets.get(name).copied().unwrap_or(from);
            let (conflicts, others) = count_retries(&self.log_of(name), from, to);
            usage.conflict_retries += conflicts;
            usage.other_retries += others;
        }
        usage
    }

    fn log_of(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Stops the devnet and every child it started.
    pub async fn stop(self) {
        self.devnet.stop().await;
    }
}

/// Starts `relayd` with `args`, its standard error written to `log`, and waits for the line
/// on its standard output that says where it listens (`… listening on ADDR`); a child that
/// exits or closes its output first is ended and refused, naming `what` and the log.
pub(crate) fn spawn_listening(
    relayd: &Path,
    args: &[&std::ffi::OsStr],
    log: &Path,
    what: &str,
) -> Result<(std::process::Child, SocketAddr), BenchError> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let log_file = std::fs::File::create(log).map_err(BenchError::io("creating", log))?;
    let mut child = Command::new(relayd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .map_err(BenchError::io("starting", relayd))?;
    let address = child.stdout.take().and_then(|stdout| {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.split_once(" listening on ")?.1.trim().parse().ok())
    });
    match address {
        Some(address) => Ok((child, address)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(BenchError::Refused(format!(
                "{what} did not start: see {}",
                log.display()
            )))
        }
    }
}

/// Retries logged in `log` between byte offsets `from` and `to`: (conflicts, other causes).
/// A log that cannot be read counts nothing.
fn count_retries(log: &Path, from: u64, to: u64) -> (u64, u64) {
    let Ok(mut file) = std::fs::File::open(log) else {
        return (0, 0);
    };
    if to <= from || file.seek(SeekFrom::Start(from)).is_err() {
        return (0, 0);
    }
    let mut text = Vec::new();
    if file.take(to - from).read_to_end(&mut text).is_err() {
        return (0, 0);
    }
    let text = String::from_utf8_lossy(&text);
    let mut counts = (0, 0);
    for line in text.lines().filter(|line| line.contains(RETRY_LINE)) {
        if line.contains(CONFLICT_CAUSE) {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_counted_by_cause_between_two_offsets() {
        let folder = tempfile::tempdir().expect("folder");
        let log = folder.path().join("region-1.log");
        let before = "DEBUG fdb_layers::engine: retrying transaction error=transaction not \
                      committed: a conflicting transaction committed first attempt=1\n";
        std::fs::write(&log, before).expect("write");
        let from = before.len() as u64;
        let window = "INFO region: something\n\
             DEBUG fdb_layers::engine: retrying transaction error=transaction not committed: a \
             conflicting transaction committed first attempt=1 jittered_ms=1\n\
             DEBUG fdb_layers::engine: retrying transaction error=commit queue is full attempt=2\n";
        std::fs::write(&log, format!("{before}{window}")).expect("write");
        let to = (before.len() + window.len()) as u64;
        assert_eq!(count_retries(&log, from, to), (1, 1));
        assert_eq!(count_retries(&log, 0, to), (2, 1));
        assert_eq!(count_retries(&log, to, to), (0, 0));
        assert_eq!(
            count_retries(&folder.path().join("missing.log"), 0, 10),
            (0, 0)
        );
    }
}
