//! The push benchmark (`relayd bench push`, issue 14): wake-ups sent per second by the WebPush
//! provider a region uses (`relay_push::webpush`: RFC 8291 encryption of the wake, an RFC 8292
//! VAPID token, one HTTPS request each) to a loopback RFC 8030 push service that verifies the
//! VAPID signature and decrypts every push, so the receiving side's cost is real; next to its
//! ceiling measured in the same run: plain HTTPS POSTs of the same size, to the same server,
//! over the same client, with nothing to sign, encrypt or check.
//!
//! Both sides share this machine's two cores (the provider and the service run in this process
//! on one runtime), as the other benchmarks share them with the servers.

use std::time::Duration;

use relay_push::testing::bench_webpush;
use serde::Serialize;

use crate::BenchError;

/// What to measure.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Pushes measured (and as many baseline POSTs).
    pub pushes: usize,
    /// Pushes in flight at once.
    pub concurrency: usize,
    /// "release" or "debug".
    pub build: String,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// Pushes measured.
    pub pushes: usize,
    /// Pushes in flight at once.
    pub concurrency: usize,
    /// Bytes of one encrypted wake (the baseline POSTs as many).
    pub body_bytes: usize,
    /// WebPush wakes delivered per second: encrypted, signed, sent, verified and decrypted.
    pub pushes_per_second: f64,
    /// Plain HTTPS POSTs of the same size per second: the ceiling.
    pub baseline_posts_per_second: f64,
    /// Pushes per second as a share of the ceiling.
    pub share_of_baseline: f64,
    /// Mean wall time of one push, in microseconds, at this concurrency.
    pub push_wall_us: f64,
    /// "release" or "debug".
    pub build: String,
    /// Cores of this machine.
    pub cores: usize,
}

/// Steps of a run (for a progress bar).
pub fn steps() -> u64 {
    1
}

/// Runs the benchmark.
pub fn run(options: &PushOptions, step: &(dyn Fn(&str) + Sync)) -> Result<PushReport, BenchError> {
    if options.pushes == 0 || options.concurrency == 0 {
        return Err(BenchError::Invalid(
            "--pushes and --concurrency must be at least 1".into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| BenchError::Io {
            what: "starting the runtime",
            path: String::new(),
            source,
        })?;
    step("pushing");
    let measured = runtime
        .block_on(bench_webpush(options.pushes, options.concurrency))
        .map_err(|error| BenchError::Invalid(format!("the WebPush bench failed: {error}")))?;
    Ok(PushReport {
        pushes: measured.pushes,
        concurrency: measured.concurrency,
        body_bytes: measured.body_bytes,
        pushes_per_second: measured.pushes_per_s,
        baseline_posts_per_second: measured.baseline_posts_per_s,
        share_of_baseline: measured.ratio(),
        push_wall_us: micros(measured.push_elapsed) / measured.pushes.max(1) as f64,
        build: options.build.clone(),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
    })
}

fn micros(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e6
}

impl PushReport {
    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mut out = format!(
            "WebPush wakes, {} pushes, {} in flight, {} B each; {} build, {} cores\n",
            self.pushes, self.concurrency, self.body_bytes, self.build, self.cores
        );
        out.push_str(
            "| plain HTTPS POST (ceiling) | WebPush provider → verifying, decrypting service | share of ceiling |\n",
        );
        out.push_str("|---|---|---|\n");
        out.push_str(&format!(
            "| {:.0} /s | {:.0} /s | {:.0} % |\n",
            self.baseline_posts_per_second,
            self.pushes_per_second,
            100.0 * self.share_of_baseline
        ));
        out
    }
}
