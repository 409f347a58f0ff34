//! Wake-up pushes: how a region wakes a device that has no connection.
//!
//! **What leaves the region.** A push carries no message content, no sender, no chat, no count:
//! only the fixed wake payload of [`wake`], the same bytes for every device and every message.
//! It tells the device "connect and fetch"; the device then opens its ordinary end-to-end
//! encrypted session and reads its queue. What a push service (Apple, Google, a browser vendor)
//! learns is that the region sent *a* wake to a device token at some time, which is inherent to
//! push; a collapse key ([`wake::WAKE_COLLAPSE_KEY`]) lets it replace an undelivered wake with a
//! newer one, so a burst of messages is one notification, not many.
//!
//! **What never leaves.** Message bytes, keys, account or chat identifiers, display names. The
//! WebPush payload is encrypted to the browser anyway (RFC 8291), but even its plaintext is the
//! fixed wake; APNs and FCM payloads are plain JSON holding only the wake marker. The tests
//! decrypt or read every byte each provider sends and compare it with the one constant.
//!
//! **Providers.** [`PushProvider`] is one async `send` of a [`Wake`] to a [`PushRegistration`];
//! it is object safe, so the region holds an `Arc<dyn PushProvider>`: normally
//! [`PushProviders`], which routes each registration to the configured [`webpush`], [`apns`] or
//! [`fcm`] provider. All three speak HTTPS through one [`http::HttpsClient`] (hyper over the
//! workspace's rustls with ring; APNs over HTTP/2 only). A send ends in [`Delivered`] or a
//! typed [`PushError`]: [`PushError::Gone`] means the push service no longer knows the device
//! and the region must delete the registration; [`PushError::Throttled`] and
//! [`PushError::Transport`] are worth retrying (honouring a `Retry-After`);
//! [`PushError::Rejected`] is permanent for this wake; [`PushError::Config`] is ours to fix.
//!
//! **Scheduling.** [`queue::PushQueue`] is the sans-IO core that decides *when* to push: it has
//! no clock and no sockets; the region feeds it `handle_wake(device, now)` and
//! `handle_result(device, result, now)` and drains `poll_send(now)` / `poll_timeout()`. At most
//! one push is in flight per device; wakes while one is pending or in flight coalesce into one;
//! failures retry with deterministic exponential backoff up to
//! [`limits::PUSH_ATTEMPTS_MAX`]; the number of devices waiting is bounded
//! ([`limits::PUSH_QUEUE_DEVICES_MAX`]) and a wake beyond it is refused and counted.
//!
//! **Registrations.** A device registers a [`PushRegistration`] (a browser's PushSubscription,
//! an APNs device token or an FCM registration token). It is parsed, not just checked: bad
//! URLs, plain-http or loopback/private endpoints (unless the test policy allows them), wrong
//! key lengths and oversized tokens are refused with a [`RegistrationError`]; the region stores
//! [`PushRegistration::encode`]'s compact bytes and reads them back through the same checks.
//!
//! **Testing.** With the feature `test-endpoints`, [`testing`] starts loopback WebPush, APNs and
//! FCM services over TLS that verify what a real service verifies (VAPID and provider token
//! signatures, headers, decryption of the WebPush body) and can answer gone or throttled;
//! [`testing::bench_webpush`] measures the WebPush provider against a plain-POST baseline.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub mod apns;
pub mod config;
pub mod fcm;
pub mod http;
mod jwt;
pub mod limits;
pub mod queue;
pub mod registration;
#[cfg(feature = "test-endpoints")]
pub mod testing;
pub mod wake;
pub mod webpush;

pub use config::{ApnsConfig, FcmConfig, PushConfig, WebPushConfig};
pub use queue::{PushQueue, PushQueueStats, QueueLimits, Settled, WakeOutcome};
pub use registration::{PushRegistration, RegistrationError, RegistrationPolicy};
pub use wake::Wake;
pub use webpush::{GeneratedVapidKey, VapidKey, generate_vapid_key};

/// Where providers read wall-clock time (JWT `iat`/`exp`, token ages): the system clock in
/// production, a hand-moved one in tests.
pub type WallClock = std::sync::Arc<dyn Fn() -> std::time::SystemTime + Send + Sync>;

/// The system's wall clock.
pub fn system_clock() -> WallClock {
    std::sync::Arc::new(std::time::SystemTime::now)
}

/// The future [`PushProvider::send`] returns: boxed so the trait stays object safe.
pub type PushFuture<'a> = Pin<Box<dyn Future<Output = Result<Delivered, PushError>> + Send + 'a>>;

/// Something that delivers a wake to a device's push registration.
///
/// Object safe: the region holds an `Arc<dyn PushProvider>` (normally [`PushProviders`]), and a
/// test may hold any provider pointed at a loopback endpoint.
pub trait PushProvider: Send + Sync {
    /// Sends `wake` to `target`; one HTTP request, no retries (those are [`PushQueue`]'s).
    fn send<'a>(&'a self, target: &'a PushRegistration, wake: &'a Wake) -> PushFuture<'a>;
}

/// A push service accepted a wake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The HTTP status it answered (201 for WebPush, 200 for APNs and FCM).
    pub status: u16,
    /// Its id for the message, when it gave one (WebPush `Location`, `apns-id`, FCM `name`).
    pub message_id: Option<String>,
}

/// Why a push was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The push service no longer knows this device (404/410, an unregistered or bad token):
    /// the region must delete the registration.
    #[error(
        "the push service no longer knows this device ({status}: {reason}); delete the registration"
    )]
    Gone {
        /// The HTTP status.
        status: u16,
        /// The service's reason, as it gave it.
        reason: String,
    },
    /// The push service is overloaded or asks us to slow down (429, 5xx): retry later, not
    /// before `retry_after` when it said so.
    #[error(
        "the push service asks to retry later ({status}: {reason}; retry after {retry_after:?})"
    )]
    Throttled {
        /// The HTTP status.
        status: u16,
        /// Its `Retry-After`, when it sent one (bounded by [`limits::PUSH_RETRY_AFTER_MS_MAX`]).
        retry_after: Option<Duration>,
        /// The service's reason, as it gave it.
        reason: String,
    },
    /// The push service refused this push for good (another 4xx): do not retry this wake.
    #[error("the push service rejected the push ({status}: {reason})")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The service's reason, as it gave it.
        reason: String,
    },
    /// The request did not complete: connect, TLS, HTTP or timeout failure. Worth retrying.
    #[error("push transport: {0}")]
    Transport(String),
    /// Our side is misconfigured (no provider for this kind of registration, a bad key, a
    /// refused provider token). Not worth retrying until the configuration changes.
    #[error("push configuration: {0}")]
    Config(String),
}

impl PushError {
    /// Whether a later attempt of the same wake may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PushError::Throttled { .. } | PushError::Transport(_))
    }

    /// The delay the push service asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PushError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The configured providers, one per kind of registration; routes each send to its kind's.
///
/// This is what the region holds (as `Arc<dyn PushProvider>`). A registration whose kind has
/// no provider configured fails with [`PushError::Config`].
#[derive(Default, Clone)]
pub struct PushProviders {
    /// The WebPush provider, if configured.
    pub webpush: Option<std::sync::Arc<webpush::WebPushProvider>>,
    /// The APNs provider, if configured.
    pub apns: Option<std::sync::Arc<apns::ApnsProvider>>,
    /// The FCM provider, if configured.
    pub fcm: Option<std::sync::Arc<fcm::FcmProvider>>,
}

impl std::fmt::Debug for PushProviders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushProviders")
            .field("webpush", &self.webpush.is_some())
            .field("apns", &self.apns.is_some())
            .field("fcm", &self.fcm.is_some())
            .finish()
    }
}

impl PushProviders {
    /// The providers `config` names, reading their secrets from the files it names.
    pub fn from_config(config: &PushConfig) -> Result<Self, PushError> {
        let roots = http::TrustRoots::from_config(config)?;
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let mut providers = PushProviders::default();
        if let Some(webpush) = &config.webpush {
            let client = http::HttpsClient::new(&roots, http::HttpVersions::Any, timeout)?;
            providers.webpush = Some(std::sync::Arc::new(webpush::WebPushProvider::from_config(
                webpush, client,
            )?));
        }
        if let Some(apns) = &config.apns {
            let client = http::HttpsClient::new(&roots, http::HttpVersions::Http2Only, timeout)?;
            providers.apns = Some(std::sync::Arc::new(apns::ApnsProvider::from_config(
                apns, client,
            )?));
        }
        if let Some(fcm) = &config.fcm {
            let client = http::HttpsClient::new(&roots, http::HttpVersions::Any, timeout)?;
            providers.fcm = Some(std::sync::Arc::new(fcm::FcmProvider::from_config(
                fcm, client,
            )?));
        }
        Ok(providers)
    }
}

impl PushProvider for PushProviders {
    fn send<'a>(&'a self, target: &'a PushRegistration, wake: &'a Wake) -> PushFuture<'a> {
        let missing = |kind: &str| -> PushFuture<'a> {
            let error = PushError::Config(format!(
                "a {kind} registration, but no [push.{kind}] provider is configured"
            ));
            Box::pin(async move { Err(error) })
        };
        match target {
            PushRegistration::WebPush(_) => match &self.webpush {
                Some(provider) => provider.send(target, wake),
                None => missing("webpush"),
            },
            PushRegistration::Apns(_) => match &self.apns {
                Some(provider) => provider.send(target, wake),
                None => missing("apns"),
            },
            PushRegistration::Fcm(_) => match &self.fcm {
                Some(provider) => provider.send(target, wake),
                None => missing("fcm"),
            },
        }
    }
}
