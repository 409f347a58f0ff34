//! Wall-clock time as the services see it: milliseconds since the Unix epoch, read through a
//! [`Clock`] so that a simulation can supply its own time instead of the system's.
//!
//! Only the shells read a clock; the decision logic takes the time as an argument (`now_ms`).

use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock. A clock set before 1970 reads as 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| {
                u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_reads_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
