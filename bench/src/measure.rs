//! What every benchmark measures with: a warm-up then a measured window, the disk's fsync rate,
//! CPU time and resident memory from `/proc` (of this process, its threads, or another process
//! by pid), percentiles and printing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::BenchError;

/// Bytes rewritten before each fsync of the fsync-rate probe.
pub const FSYNC_PROBE_BYTES: usize = 512;

/// A cell's warm-up and measured window.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Uncounted time before the window.
    pub warmup: Duration,
    /// The measured window.
    pub window: Duration,
}

impl Timing {
    /// The window's start and end for a cell starting now.
    pub fn schedule(self) -> (Instant, Instant) {
        let window_start = Instant::now() + self.warmup;
        (window_start, window_start + self.window)
    }
}

/// Overwrites [`FSYNC_PROBE_BYTES`] of one file and `fdatasync`s it in a loop; returns
/// fsyncs per second.
pub fn measure_fsync(path: &Path, timing: Timing) -> Result<f64, BenchError> {
    let file = File::create(path).map_err(BenchError::io("creating", path))?;
    let block = [0x5a; FSYNC_PROBE_BYTES];
    let mut syncs_in_window = 0u64;
    let (window_start, window_end) = timing.schedule();
    while Instant::now() < window_end {
        file.write_all_at(&block, 0)
            .map_err(BenchError::io("writing", path))?;
        file.sync_data().map_err(BenchError::io("fsyncing", path))?;
        let finished = Instant::now();
        if finished >= window_start && finished <= window_end {
            syncs_in_window += 1;
        }
    }
    drop(file);
    std::fs::remove_file(path).map_err(BenchError::io("removing", path))?;
    Ok(syncs_in_window as f64 / timing.window.as_secs_f64())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_time_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// `numerator / denominator`, or 0 when the denominator is 0.
pub fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

/// The `percent`th percentile of sorted microsecond latencies, in milliseconds.
pub fn percentile_ms(sorted_us: &[u32], percent: usize) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let index = (sorted_us.len() * percent / 100).min(sorted_us.len() - 1);
    f64::from(sorted_us[index]) / 1_000.0
}

/// The `per_mille`th per-mille of sorted microsecond latencies, in milliseconds.
pub fn per_mille_ms(sorted_us: &[u32], per_mille: usize) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let index = (sorted_us.len() * per_mille / 1_000).min(sorted_us.len() - 1);
    f64::from(sorted_us[index]) / 1_000.0
}

/// The median, 99th and 99.9th percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Latencies the percentiles are computed from.
    pub samples: usize,
    /// The median.
    pub p50_ms: f64,
    /// The 99th percentile.
    pub p99_ms: f64,
    /// The 99.9th percentile.
    pub p999_ms: f64,
}

impl Percentiles {
    /// The percentiles of microsecond latencies (sorted here).
    pub fn of(mut latencies_us: Vec<u32>) -> Self {
        latencies_us.sort_unstable();
        Self {
            samples: latencies_us.len(),
            p50_ms: per_mille_ms(&latencies_us, 500),
            p99_ms: per_mille_ms(&latencies_us, 990),
            p999_ms: per_mille_ms(&latencies_us, 999),
        }
    }

    /// `p50 / p99 / p99.9` in milliseconds, as the tables print them.
    pub fn cell(&self) -> String {
        format!(
            "{} / {} / {}",
            milliseconds(self.p50_ms),
            milliseconds(self.p99_ms),
            milliseconds(self.p999_ms)
        )
    }
}

/// A duration in milliseconds with as many decimals as it needs to be read (two below 10 ms,
/// one below 100 ms, none above).
pub fn milliseconds(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else if value < 100.0 {
        format!("{value:.1}")
    } else {
        thousands(value)
    }
}

/// Microseconds of a duration as a latency sample (saturating at about 71 minutes).
pub fn latency_us(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

/// A rate rounded to a whole number with thousands separators.
pub fn thousands(value: f64) -> String {
    let whole = value.round().max(0.0) as u64;
    let digits = whole.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Whose CPU time [`cpu_time`] reads.
#[derive(Debug, Clone, Copy)]
pub enum CpuOf {
    /// The whole process.
    Process,
    /// The threads of this process with this name.
    Thread(&'static str),
}

/// User plus system CPU time from `/proc` (Linux); `None` elsewhere, if nothing matches, or if
/// it does not parse.
pub fn cpu_time(of: CpuOf) -> Option<Duration> {
    match of {
        CpuOf::Process => stat_cpu_time(Path::new("/proc/self/stat")),
        CpuOf::Thread(name) => {
            let mut total: Option<Duration> = None;
            for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
                let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                if comm.trim_end() == name {
                    let time = stat_cpu_time(&task.path().join("stat"))?;
                    total = Some(total.unwrap_or_default() + time);
                }
            }
            total
        }
    }
}

/// User plus system CPU time of process `pid` so far, from `/proc/<pid>/stat` (Linux); `None`
/// if it is gone or the file does not parse.
pub fn process_cpu_time(pid: u32) -> Option<Duration> {
    stat_cpu_time(Path::new(&format!("/proc/{pid}/stat")))
}

/// Bytes process `pid` caused to be written to storage so far (`write_bytes` of
/// `/proc/<pid>/io`: pages written back and fsynced, not bytes handed to `write`); `None` if
/// it is gone or the file cannot be read.
pub fn process_written_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

/// UDP datagrams the kernel dropped so far because a socket's receive buffer was full
/// (`RcvbufErrors` of `/proc/net/snmp`, every socket of this network namespace); `None` where
/// the file is missing or does not parse.
pub fn udp_receive_buffer_drops() -> Option<u64> {
    rcvbuf_errors(&std::fs::read_to_string("/proc/net/snmp").ok()?)
}

/// `RcvbufErrors` of the `Udp:` lines of a `/proc/net/snmp` text: a line of names, then one of
/// values.
fn rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let names = udp.next()?;
    let values = udp.next()?;
    let index = names
        .split_whitespace()
        .position(|name| name == "RcvbufErrors")?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// The resident memory of process `pid` (`VmRSS` of `/proc/<pid>/status`), in bytes; `None` if
/// it is gone or the file does not parse.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    // "VmRSS:      12345 kB"
    let kilobytes: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kilobytes * 1024)
}

/// The user plus system time of a `/proc/…/stat` file.
fn stat_cpu_time(path: &Path) -> Option<Duration> {
    /// Linux reports these times in USER_HZ ticks, 100 per second on every architecture's ABI.
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start with field 3, the state;
    // utime and stime are fields 14 and 15.
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (user + system) * 1_000 / TICKS_PER_SECOND,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_drops_are_read_by_column_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 127182343 10518 486497 127681335 486490 0\n\
                    UdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 7\n";
        assert_eq!(rcvbuf_errors(snmp), Some(486_490));
        assert_eq!(rcvbuf_errors("Udp: InDatagrams\nUdp: 5\n"), None);
        assert_eq!(rcvbuf_errors("garbage"), None);
        // The live file parses where there is one.
        if std::path::Path::new("/proc/net/snmp").exists() {
            assert!(udp_receive_buffer_drops().is_some());
        }
    }

    #[test]
    fn percentiles_pick_their_rank() {
        let latencies: Vec<u32> = (1..=1_000).rev().map(|ms| ms * 1_000).collect();
        let percentiles = Percentiles::of(latencies);
        assert_eq!(percentiles.samples, 1_000);
        assert_eq!(percentiles.p50_ms, 501.0);
        assert_eq!(percentiles.p99_ms, 991.0);
        assert_eq!(percentiles.p999_ms, 1_000.0);
        assert_eq!(Percentiles::of(Vec::new()), Percentiles::default());
        assert_eq!(milliseconds(1.234), "1.23");
        assert_eq!(milliseconds(12.34), "12.3");
        assert_eq!(milliseconds(1_234.5), "1,235");
    }

    #[test]
    fn this_process_has_cpu_time_and_resident_memory() {
        let pid = std::process::id();
        assert!(process_cpu_time(pid).is_some());
        assert!(resident_bytes(pid).is_some_and(|bytes| bytes > 0));
        assert_eq!(resident_bytes(u32::MAX), None);
    }
}
