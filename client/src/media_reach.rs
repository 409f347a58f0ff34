//! Which regions' media endpoints a device could not reach lately, sans-IO.
//!
//! A device on a network that lets only its edge through (a captive portal, a firewall that
//! passes one address) would wait the whole connect timeout on every transfer before taking
//! the edge. After one endpoint did not answer, the device takes the edge for its transfers
//! there for [`MEDIA_OUT_OF_REACH_HOLD_MS`], then tries the endpoint again; an endpoint that
//! answers is forgotten at once. Shared by every connection of one device (clones share it),
//! at most [`MEDIA_OUT_OF_REACH_MAX`] endpoints, the oldest forgotten first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::limits::{MEDIA_OUT_OF_REACH_HOLD_MS, MEDIA_OUT_OF_REACH_MAX};

/// Media endpoints out of reach lately, by address, with when each was found so (ms).
#[derive(Debug, Clone, Default)]
pub struct MediaReach {
    out_of_reach: Arc<Mutex<HashMap<String, u64>>>,
}

impl MediaReach {
    /// Whether the device should take its edge instead of `endpoint` at `now_ms`.
    pub fn out_of_reach(&self, endpoint: &str, now_ms: u64) -> bool {
        let mut found = self.lock();
        match found.get(endpoint) {
            Some(&since) if now_ms.saturating_sub(since) < MEDIA_OUT_OF_REACH_HOLD_MS => true,
            Some(_) => {
                // Held long enough: the next transfer tries the endpoint again.
                found.remove(endpoint);
                false
            }
            None => false,
        }
    }

    /// `endpoint` did not answer at `now_ms`.
    pub fn unreachable(&self, endpoint: &str, now_ms: u64) {
        let mut found = self.lock();
        if !found.contains_key(endpoint)
            && found.len() >= MEDIA_OUT_OF_REACH_MAX
            && let Some(oldest) = found
                .iter()
                .min_by_key(|(_, since)| **since)
                .map(|(endpoint, _)| endpoint.clone())
        {
            found.remove(&oldest);
        }
        found.insert(endpoint.to_owned(), now_ms);
    }

    /// `endpoint` answered.
    pub fn reached(&self, endpoint: &str) {
        self.lock().remove(endpoint);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.out_of_reach
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_out_of_reach_is_skipped_for_a_while_then_tried_again() {
        let reach = MediaReach::default();
        let shared = reach.clone();
        assert!(!reach.out_of_reach("10.0.0.1:4443", 0));
        reach.unreachable("10.0.0.1:4443", 1_000);
        assert!(
            shared.out_of_reach("10.0.0.1:4443", 1_000 + MEDIA_OUT_OF_REACH_HOLD_MS - 1),
            "clones share what one connection found"
        );
        assert!(
            !reach.out_of_reach("10.0.0.2:4443", 1_000),
            "another endpoint"
        );
        assert!(!reach.out_of_reach("10.0.0.1:4443", 1_000 + MEDIA_OUT_OF_REACH_HOLD_MS));
        reach.unreachable("10.0.0.1:4443", 5_000);
        reach.reached("10.0.0.1:4443");
        assert!(!reach.out_of_reach("10.0.0.1:4443", 5_001), "it answered");
    }

    #[test]
    fn at_most_so_many_endpoints_are_kept_the_oldest_forgotten_first() {
        let reach = MediaReach::default();
        for index in 0..MEDIA_OUT_OF_REACH_MAX as u64 {
            reach.unreachable(&format!("10.0.0.{index}:1"), index);
        }
        reach.unreachable("10.1.0.0:1", 1_000);
        assert!(!reach.out_of_reach("10.0.0.0:1", 1_001), "the oldest went");
        assert!(reach.out_of_reach("10.0.0.1:1", 1_001));
        assert!(reach.out_of_reach("10.1.0.0:1", 1_001));
        assert_eq!(reach.lock().len(), MEDIA_OUT_OF_REACH_MAX);
    }
}
