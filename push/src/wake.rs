//! The wake: the only thing a push ever says, defined once for every provider.
//!
//! Each provider sends exactly these bytes and nothing derived from a message, a sender or a
//! chat; the tests compare what each loopback endpoint received (decrypted, for WebPush) with
//! these constants.

use std::time::Duration;

use crate::limits::{WAKE_TIME_TO_LIVE_S_DEFAULT, WAKE_TIME_TO_LIVE_S_MAX};

/// The plaintext of a WebPush wake, before RFC 8291 encryption.
pub const WEBPUSH_WAKE_PLAINTEXT: &[u8] = br#"{"relay":"wake"}"#;

/// The body of an APNs wake: a silent background notification and nothing else.
pub const APNS_WAKE_PAYLOAD: &[u8] = br#"{"aps":{"content-available":1}}"#;

/// The key and value of an FCM wake's `data` map.
pub const FCM_WAKE_DATA: (&str, &str) = ("relay", "wake");

/// The collapse key of every wake: WebPush `Topic`, `apns-collapse-id`, FCM `collapse_key`.
/// A push service holding an undelivered wake replaces it with the newer one.
pub const WAKE_COLLAPSE_KEY: &str = "relay-wake";

/// The FCM HTTP v1 request body of a wake to `token`.
pub fn fcm_wake_message(token: &str) -> serde_json::Value {
    let (key, value) = FCM_WAKE_DATA;
    serde_json::json!({
        "message": {
            "token": token,
            "data": { key: value },
            "android": { "priority": "high", "collapse_key": WAKE_COLLAPSE_KEY },
        }
    })
}

/// One wake of a device: how long the push service may hold it undelivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    time_to_live: Duration,
}

impl Default for Wake {
    fn default() -> Self {
        Wake {
            time_to_live: Duration::from_secs(WAKE_TIME_TO_LIVE_S_DEFAULT),
        }
    }
}

impl Wake {
    /// A wake the push service keeps for `time_to_live` at most (cut to
    /// [`WAKE_TIME_TO_LIVE_S_MAX`]).
    pub fn new(time_to_live: Duration) -> Self {
        Wake {
            time_to_live: time_to_live.min(Duration::from_secs(WAKE_TIME_TO_LIVE_S_MAX)),
        }
    }

    /// How long the push service may hold it undelivered.
    pub fn time_to_live(&self) -> Duration {
        self.time_to_live
    }
}

// `Topic` (RFC 8030 §5.4) is at most 32 characters of the URL-safe base64 alphabet.
const _: () = assert!(WAKE_COLLAPSE_KEY.len() <= 32);
