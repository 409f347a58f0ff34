//! The rate limit of key claims, per claimer, sans-IO: a token bucket for each claiming device
//! (the edge names the authenticated device in every `ClaimKeys` it forwards), fed the time as
//! `now_ms`.
//!
//! Every claim takes a one-time key of each device of the claimed account, and one-time keys
//! are what gives a new Olm session forward secrecy from its first message: a device that
//! claims in bulk wastes them and pushes everyone else onto the (reusable) fallback key. The
//! fallback key means nobody is ever refused a session, so the limit protects the quality of
//! sessions, not their existence; a person adding contacts one by one, or a few at once, never
//! meets it. A refused claim is answered with [`ErrorCode::Throttled`] and the time until the
//! next claim is allowed (`retry_after_ms`), and the client's outbox retries it.
//!
//! The buckets live in the region's memory: a restart forgets them (every claimer starts with
//! a full bucket again), which is harmless for a limit whose window is a minute. Their number
//! is bounded by [`CLAIMERS_TRACKED_MAX`]: a full bucket is the same as no bucket, so full ones
//! are dropped first, then the one idle longest. The bounds and their relations are in
//! [`crate::limits`].

use std::collections::HashMap;

use relay_proto::{DeviceAddress, ErrorCode, ProtoError};

use crate::limits::{CLAIM_REFILL_INTERVAL_MS, CLAIMERS_TRACKED_MAX, CLAIMS_BURST_PER_CLAIMER};

/// One claimer's bucket, in thousandths of a claim so refills are exact integers.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens_milli: u64,
    last_refill_ms: u64,
}

impl Bucket {
    const FULL_MILLI: u64 = CLAIMS_BURST_PER_CLAIMER as u64 * 1_000;

    fn full(now_ms: u64) -> Self {
        Self {
            tokens_milli: Self::FULL_MILLI,
            last_refill_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed_ms = now_ms.saturating_sub(self.last_refill_ms);
        // A clock that steps back never takes tokens away; it only delays the next refill.
        self.last_refill_ms = self.last_refill_ms.max(now_ms);
        let gained_milli = elapsed_ms.saturating_mul(1_000) / CLAIM_REFILL_INTERVAL_MS;
        self.tokens_milli = self
            .tokens_milli
            .saturating_add(gained_milli)
            .min(Self::FULL_MILLI);
    }

    fn is_full(&self, now_ms: u64) -> bool {
        let mut refilled = *self;
        refilled.refill(now_ms);
        refilled.tokens_milli == Self::FULL_MILLI
    }
}

/// The buckets of every claimer seen lately. Claims without a named claimer (from an edge that
/// does not name one) share one bucket.
#[derive(Debug, Default)]
pub struct ClaimLimiter {
    buckets: HashMap<Option<DeviceAddress>, Bucket>,
}

impl ClaimLimiter {
    /// A limiter with every claimer's bucket full.
    pub fn new() -> Self {
        Self::default()
    }

    /// A claim by `claimer` at `now_ms`: allowed (taking one claim from its bucket), or refused
    /// with [`ErrorCode::Throttled`] and the milliseconds until one claim is allowed again.
    pub fn handle_claim(
        &mut self,
        claimer: Option<DeviceAddress>,
        now_ms: u64,
    ) -> Result<(), ProtoError> {
        if !self.buckets.contains_key(&claimer) && self.buckets.len() >= CLAIMERS_TRACKED_MAX {
            self.make_room(now_ms);
        }
        let bucket = self
            .buckets
            .entry(claimer)
            .or_insert_with(|| Bucket::full(now_ms));
        bucket.refill(now_ms);
        if bucket.tokens_milli < 1_000 {
            let missing_milli = 1_000 - bucket.tokens_milli;
            let retry_after_ms = (missing_milli * CLAIM_REFILL_INTERVAL_MS).div_ceil(1_000);
            let who = claimer.map_or_else(|| "unnamed claimers".to_owned(), |c| c.to_string());
            return Err(ProtoError::new(
                ErrorCode::Throttled,
                format!(
                    "too many key claims by {who} (at most {CLAIMS_BURST_PER_CLAIMER} at once, \
                     then one every {CLAIM_REFILL_INTERVAL_MS} ms)"
                ),
            )
            .with_retry_after_ms(retry_after_ms));
        }
        bucket.tokens_milli -= 1_000;
        Ok(())
    }

    /// Buckets remembered now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Drops every full bucket (it equals a fresh one), and if none was full, the bucket idle
    /// longest.
    fn make_room(&mut self, now_ms: u64) {
        self.buckets.retain(|_, bucket| !bucket.is_full(now_ms));
        if self.buckets.len() < CLAIMERS_TRACKED_MAX {
            return;
        }
        let idle_longest = self
            .buckets
            .iter()
            .min_by_key(|(_, bucket)| bucket.last_refill_ms)
            .map(|(claimer, _)| *claimer);
        if let Some(claimer) = idle_longest {
            self.buckets.remove(&claimer);
        }
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::{AccountId, DeviceId};

    use super::*;

    fn device(account: u64) -> Option<DeviceAddress> {
        Some(DeviceAddress {
            account: AccountId(account),
            device: DeviceId(1),
        })
    }

    #[test]
    fn a_claimer_gets_its_burst_then_one_claim_per_interval() {
        let mut limiter = ClaimLimiter::new();
        for _ in 0..CLAIMS_BURST_PER_CLAIMER {
            assert_eq!(limiter.handle_claim(device(1), 1_000), Ok(()));
        }
        let refused = limiter
            .handle_claim(device(1), 1_000)
            .expect_err("the burst is spent");
        assert_eq!(refused.code, ErrorCode::Throttled);
        assert!(refused.code.is_retryable());
        assert_eq!(refused.retry_after_ms, CLAIM_REFILL_INTERVAL_MS);
        // Another claimer is not held back by the first.
        assert_eq!(limiter.handle_claim(device(2), 1_000), Ok(()));
        // Part of an interval later the hint is what is left of it (rounded up), and retrying
        // after the hint gets one claim, and only one.
        let part_ms = CLAIM_REFILL_INTERVAL_MS / 3;
        let later = limiter
            .handle_claim(device(1), 1_000 + part_ms)
            .expect_err("not yet");
        let left_ms = CLAIM_REFILL_INTERVAL_MS - part_ms;
        assert!(
            (left_ms..=left_ms + 1).contains(&later.retry_after_ms),
            "{later}"
        );
        let refilled = 1_000 + part_ms + later.retry_after_ms;
        assert_eq!(limiter.handle_claim(device(1), refilled), Ok(()));
        assert!(limiter.handle_claim(device(1), refilled).is_err());
        // A clock stepping back takes nothing away and gives nothing.
        assert!(limiter.handle_claim(device(1), 0).is_err());
        // Claims without a named claimer share one bucket.
        for _ in 0..CLAIMS_BURST_PER_CLAIMER {
            assert_eq!(limiter.handle_claim(None, 1_000), Ok(()));
        }
        assert!(limiter.handle_claim(None, 1_000).is_err());
    }

    #[test]
    fn the_buckets_stay_bounded_and_full_ones_go_first() {
        let mut limiter = ClaimLimiter::new();
        // A busy claimer with a spent bucket, then enough others to fill the table.
        for _ in 0..CLAIMS_BURST_PER_CLAIMER {
            limiter.handle_claim(device(0), 0).expect("burst");
        }
        for account in 1..CLAIMERS_TRACKED_MAX as u64 {
            limiter
                .handle_claim(device(account), 0)
                .expect("first claim");
        }
        assert_eq!(limiter.tracked(), CLAIMERS_TRACKED_MAX);
        // Long after, every bucket but the busy one's has refilled: a newcomer makes them go,
        // and the busy claimer is still held to its refill rate.
        let later = (CLAIMS_BURST_PER_CLAIMER as u64 - 1) * CLAIM_REFILL_INTERVAL_MS;
        limiter
            .handle_claim(device(u64::MAX), later)
            .expect("a newcomer");
        assert!(limiter.tracked() <= 2, "{} buckets", limiter.tracked());
        for _ in 0..CLAIMS_BURST_PER_CLAIMER - 1 {
            limiter.handle_claim(device(0), later).expect("refilled");
        }
        assert!(limiter.handle_claim(device(0), later).is_err());
    }
}
