//! What every benchmark measures with: a warm-up then a measured window, the disk's fsync rate,
//! CPU time from `/proc`, percentiles and printing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
