//! Simulated wall-clock time for the services and clients: turmoil's logical time since the Unix
//! epoch, which starts at a fixed instant ([`SIM_EPOCH_MS`]) and advances only with the
//! simulation, so queue entry times, rate limits and message timestamps repeat from run to run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay_proto::clock::Clock;

/// The wall-clock instant every simulation starts at: 2025-01-01T00:00:00Z, in ms.
pub const SIM_EPOCH_MS: u64 = 1_735_689_600_000;

/// [`SIM_EPOCH_MS`] as a [`SystemTime`], for turmoil's builder.
pub fn sim_epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(SIM_EPOCH_MS)
}

/// The logical time of the turmoil host that asks (its tokio clock, paused and advanced by the
/// simulation, plus the fixed epoch), off by a fixed skew. Outside a simulation it reads
/// [`SIM_EPOCH_MS`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SimClock {
    skew_ms: i64,
}

impl SimClock {
    /// A clock running `skew_ms` ahead of simulated time (behind when negative).
    pub fn skewed(skew_ms: i64) -> Self {
        Self { skew_ms }
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let exact = turmoil::since_epoch().map_or(SIM_EPOCH_MS, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
        exact.saturating_add_signed(self.skew_ms)
    }
}

/// Simulated time since the simulation started, in ms (0 outside a simulation).
pub fn sim_elapsed_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |elapsed| {
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    })
}
