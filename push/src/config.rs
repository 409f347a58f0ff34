//! The `[push]` section of a region's configuration: which providers are on and where their
//! secrets are. Secrets are never inline: each is a file path, read when the providers are
//! built, so the configuration can be shown and checked in.
//!
//! `push/config.example.toml` is a commented example; a test loads it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::PushError;
use crate::limits::{PUSH_REQUEST_TIMEOUT_MS_DEFAULT, PUSH_SECRET_FILE_BYTES_MAX};

/// Push delivery: the providers a region may wake devices through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// WebPush (browsers), when devices may register PushSubscriptions.
    pub webpush: Option<WebPushConfig>,
    /// Apple Push Notification service (iOS, macOS).
    pub apns: Option<ApnsConfig>,
    /// Firebase Cloud Messaging HTTP v1 (Android).
    pub fcm: Option<FcmConfig>,
    /// A PEM file of extra CA certificates to trust besides the system's (tests, proxies).
    pub ca_file: Option<PathBuf>,
    /// Timeout of one request to a push service or token endpoint, in ms.
    pub request_timeout_ms: u64,
    /// Accept registrations whose endpoint is on a loopback or private address (a devnet's or
    /// a test's local push service); never in production.
    pub allow_private_endpoints: bool,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            webpush: None,
            apns: None,
            fcm: None,
            ca_file: None,
            request_timeout_ms: PUSH_REQUEST_TIMEOUT_MS_DEFAULT,
            allow_private_endpoints: false,
        }
    }
}

impl PushConfig {
    /// Which endpoints registrations may name under this configuration.
    pub fn registration_policy(&self) -> crate::RegistrationPolicy {
        if self.allow_private_endpoints {
            crate::RegistrationPolicy::LOOPBACK_TESTS
        } else {
            crate::RegistrationPolicy::PRODUCTION
        }
    }
}

/// WebPush (RFC 8030) with VAPID (RFC 8292).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// File holding the VAPID private key: PKCS#8 PEM, or the raw 32-byte scalar in base64url
    /// (`relayd admin vapid-key` prints a new one).
    pub vapid_private_key_file: PathBuf,
    /// The VAPID `sub` contact push services may reach the operator at: `mailto:` or `https:`.
    pub contact: String,
}

/// APNs with a provider token (JWT signed by a .p8 key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// File holding the .p8 signing key Apple issued (PKCS#8 PEM, P-256).
    pub key_file: PathBuf,
    /// The key's 10-character id (the JWT `kid`).
    pub key_id: String,
    /// The developer team id (the JWT `iss`).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// Apple's sandbox (`api.sandbox.push.apple.com`) instead of production.
    #[serde(default)]
    pub sandbox: bool,
    /// `apns-push-type`: `background` (silent; the default) or `alert`.
    #[serde(default)]
    pub push_type: ApnsPushType,
    /// Another base URL (`https://host:port`) instead of Apple's: tests only.
    #[serde(default)]
    pub base_url: Option<String>,
}

/// The kind of APNs notification a wake is sent as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApnsPushType {
    /// A silent background notification (`apns-priority: 5`, as Apple requires for it).
    #[default]
    Background,
    /// An alert notification (`apns-priority: 10`), for an app whose notification service
    /// extension fetches and shows the message itself.
    Alert,
}

/// Firebase Cloud Messaging HTTP v1 with a service account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// File holding the service account JSON Google issued (client_email, private_key,
    /// token_uri, project_id).
    pub service_account_file: PathBuf,
    /// The Firebase project id, if not the service account's `project_id`.
    #[serde(default)]
    pub project_id: Option<String>,
    /// Another base URL (`https://host:port`) instead of `https://fcm.googleapis.com`: tests.
    #[serde(default)]
    pub base_url: Option<String>,
}

/// Reads a secret file named in the configuration, bounded.
pub(crate) fn read_secret(path: &Path, what: &str) -> Result<String, PushError> {
    let size = std::fs::metadata(path)
        .map_err(|error| PushError::Config(format!("{what} {}: {error}", path.display())))?
        .len();
    if size > PUSH_SECRET_FILE_BYTES_MAX {
        return Err(PushError::Config(format!(
            "{what} {} is {size} bytes, more than the {PUSH_SECRET_FILE_BYTES_MAX} a key file may be",
            path.display()
        )));
    }
    std::fs::read_to_string(path)
        .map_err(|error| PushError::Config(format!("{what} {}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_loads() {
        let text = include_str!("../config.example.toml");
        let config: PushConfig = toml::from_str(text).expect("the example parses");
        let webpush = config.webpush.expect("the example configures WebPush");
        assert!(webpush.contact.starts_with("mailto:"));
        let apns = config.apns.expect("the example configures APNs");
        assert_eq!(apns.push_type, ApnsPushType::Background);
        assert!(config.fcm.is_some());
        assert_eq!(config.request_timeout_ms, PUSH_REQUEST_TIMEOUT_MS_DEFAULT);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error = toml::from_str::<PushConfig>("[webpush]\nvapid_private_key_file = \"k\"\ncontact = \"mailto:a@b\"\nsubject = \"x\"\n")
            .expect_err("an unknown field");
        assert!(error.to_string().contains("subject"), "{error}");
        assert!(toml::from_str::<PushConfig>("colour = 1\n").is_err());
        assert_eq!(toml::from_str::<PushConfig>(""), Ok(PushConfig::default()));
    }
}
