//! Every bound of the push crate in one place, units in the names; the relations between them
//! are asserted at compile time at the bottom.

/// Devices the scheduler holds at once (waiting or in flight); a wake for another is refused.
pub const PUSH_QUEUE_DEVICES_MAX: usize = 100_000;
/// Attempts of one wake before it is dropped (the first send counts).
pub const PUSH_ATTEMPTS_MAX: u32 = 8;
/// Delay before the first retry; each further retry doubles it.
pub const PUSH_RETRY_DELAY_MS_BASE: u64 = 1_000;
/// Longest backoff delay between two attempts.
pub const PUSH_RETRY_DELAY_MS_MAX: u64 = 5 * 60 * 1_000;
/// Longest `Retry-After` honoured; a longer one is cut to this.
pub const PUSH_RETRY_AFTER_MS_MAX: u64 = 60 * 60 * 1_000;

/// How long a push service keeps an undelivered wake, by default (its TTL / expiration).
pub const WAKE_TIME_TO_LIVE_S_DEFAULT: u64 = 12 * 60 * 60;
/// Longest TTL a wake may ask for (WebPush services cap theirs at about four weeks).
pub const WAKE_TIME_TO_LIVE_S_MAX: u64 = 28 * 24 * 60 * 60;

/// One HTTP request to a push service or token endpoint, connect to last body byte.
pub const PUSH_REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Largest response body read from a push service (errors are small JSON documents).
pub const PUSH_RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// Longest WebPush endpoint URL accepted in a registration.
pub const WEBPUSH_ENDPOINT_BYTES_MAX: usize = 2_048;
/// A WebPush `p256dh` key: an uncompressed P-256 point (RFC 8291 §3.1).
pub const WEBPUSH_P256DH_BYTES: usize = 65;
/// A WebPush `auth` secret (RFC 8291 §3.2).
pub const WEBPUSH_AUTH_BYTES: usize = 16;
/// How long a VAPID token is valid; RFC 8292 §2 allows at most 24 hours.
pub const VAPID_TOKEN_VALIDITY_S: u64 = 12 * 60 * 60;
/// How long one signed VAPID token is reused for an origin: half its validity, so a reused
/// token always has hours left.
pub const VAPID_TOKEN_REUSE_S: u64 = VAPID_TOKEN_VALIDITY_S / 2;
/// Push service origins whose signed VAPID token a provider keeps (a handful in practice:
/// each browser vendor's push service).
pub const VAPID_ORIGINS_CACHED_MAX: usize = 1_024;
/// The RFC 8292 ceiling on a VAPID token's `exp`, from its signing.
pub const VAPID_TOKEN_VALIDITY_S_MAX: u64 = 24 * 60 * 60;

/// Shortest APNs device token, in bytes (today's tokens are 32).
pub const APNS_TOKEN_BYTES_MIN: usize = 32;
/// Longest APNs device token, in bytes (Apple reserves growth up to 100).
pub const APNS_TOKEN_BYTES_MAX: usize = 100;
/// Age at which a cached APNs provider token is replaced.
pub const APNS_PROVIDER_TOKEN_REFRESH_S: u64 = 50 * 60;
/// Age beyond which APNs refuses a provider token (`ExpiredProviderToken`).
pub const APNS_PROVIDER_TOKEN_LIFETIME_S_MAX: u64 = 60 * 60;

/// Longest FCM registration token accepted (today's are about 160 characters).
pub const FCM_TOKEN_BYTES_MAX: usize = 1_024;
/// Lifetime asked for an FCM OAuth2 assertion (Google accepts at most one hour).
pub const FCM_ASSERTION_VALIDITY_S: u64 = 60 * 60;
/// An FCM access token is replaced this long before it expires.
pub const FCM_ACCESS_TOKEN_REFRESH_MARGIN_S: u64 = 5 * 60;
/// Longest `expires_in` believed from a token endpoint.
pub const FCM_ACCESS_TOKEN_LIFETIME_S_MAX: u64 = 24 * 60 * 60;

/// Largest secret file read (a VAPID key, an APNs .p8, a service account JSON).
pub const PUSH_SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;

const _: () = assert!(PUSH_ATTEMPTS_MAX >= 1);
const _: () = assert!(PUSH_RETRY_DELAY_MS_BASE > 0);
const _: () = assert!(PUSH_RETRY_DELAY_MS_BASE <= PUSH_RETRY_DELAY_MS_MAX);
const _: () = assert!(PUSH_RETRY_AFTER_MS_MAX >= PUSH_RETRY_DELAY_MS_MAX);
const _: () = assert!(PUSH_QUEUE_DEVICES_MAX > 0);
const _: () = assert!(WAKE_TIME_TO_LIVE_S_DEFAULT <= WAKE_TIME_TO_LIVE_S_MAX);
const _: () = assert!(VAPID_TOKEN_VALIDITY_S <= VAPID_TOKEN_VALIDITY_S_MAX);
const _: () = assert!(APNS_PROVIDER_TOKEN_REFRESH_S < APNS_PROVIDER_TOKEN_LIFETIME_S_MAX);
// A request that times out must leave room for the refreshed token to be used in time.
const _: () = assert!(
    PUSH_REQUEST_TIMEOUT_MS_DEFAULT / 1_000
        < APNS_PROVIDER_TOKEN_LIFETIME_S_MAX - APNS_PROVIDER_TOKEN_REFRESH_S
);
const _: () = assert!(FCM_ACCESS_TOKEN_REFRESH_MARGIN_S < FCM_ASSERTION_VALIDITY_S);
const _: () = assert!(PUSH_REQUEST_TIMEOUT_MS_DEFAULT / 1_000 < FCM_ACCESS_TOKEN_REFRESH_MARGIN_S);
const _: () = assert!(APNS_TOKEN_BYTES_MIN <= APNS_TOKEN_BYTES_MAX);
const _: () = assert!(VAPID_TOKEN_REUSE_S < VAPID_TOKEN_VALIDITY_S);
