//! APNs: an HTTP/2 `POST https://<host>/3/device/<token>` with a provider token.
//!
//! The provider token is an ES256 JWT (`kid` = key id, `iss` = team id, `iat`) signed with the
//! .p8 key; Apple refuses one older than an hour and throttles one minted too often, so it is
//! cached and replaced after [`APNS_PROVIDER_TOKEN_REFRESH_S`]. The body is
//! [`APNS_WAKE_PAYLOAD`] and nothing else; `apns-collapse-id` makes a newer wake replace an
//! undelivered one, `apns-expiration` bounds how long Apple keeps it.
//!
//! Answers: 200 delivered (`apns-id`); 410, or 400 `BadDeviceToken`/`DeviceTokenNotForTopic`,
//! or any `Unregistered`: gone; 403 `ExpiredProviderToken`: the cached token is dropped and the
//! wake retried; other 403s: our key or ids are wrong (configuration); 429 and 5xx: throttled;
//! other 4xx: rejected.

use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::Full;

use crate::config::{ApnsConfig, ApnsPushType, read_secret};
use crate::http::{HttpsClient, body, status_error};
use crate::jwt::{Es256Key, pkcs8_der_from_pem, unix_seconds};
use crate::limits::APNS_PROVIDER_TOKEN_REFRESH_S;
use crate::registration::ApnsToken;
use crate::wake::{APNS_WAKE_PAYLOAD, WAKE_COLLAPSE_KEY};
use crate::{
    Delivered, PushError, PushFuture, PushProvider, PushRegistration, Wake, WallClock, system_clock,
};

/// Apple's production host.
pub const APNS_PRODUCTION_URL: &str = "https://api.push.apple.com";
/// Apple's sandbox host.
pub const APNS_SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";

/// Delivers wakes to APNs device tokens.
pub struct ApnsProvider {
    key: Es256Key,
    key_id: String,
    team_id: String,
    topic: HeaderValue,
    push_type: ApnsPushType,
    base_url: String,
    client: HttpsClient,
    clock: WallClock,
    token: Mutex<Option<ProviderToken>>,
}

#[derive(Clone)]
struct ProviderToken {
    jwt: String,
    issued_at_s: u64,
}

impl std::fmt::Debug for ApnsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsProvider")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl ApnsProvider {
    /// The provider `config` describes, its key read from `config.key_file`.
    pub fn from_config(config: &ApnsConfig, client: HttpsClient) -> Result<Self, PushError> {
        let pem = read_secret(&config.key_file, "APNs key_file")?;
        Self::new(config, &pem, client)
    }

    /// The provider `config` describes, with the .p8 key `key_pem` (its `key_file` unread).
    pub fn new(config: &ApnsConfig, key_pem: &str, client: HttpsClient) -> Result<Self, PushError> {
        let der = pkcs8_der_from_pem(key_pem, "the APNs key")?;
        let key = Es256Key::from_pkcs8(&der, "the APNs key")?;
        let plain = |text: &str| {
            !text.is_empty()
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        };
        if !plain(&config.key_id) || !plain(&config.team_id) {
            return Err(PushError::Config(
                "the APNs key_id and team_id are letters and digits".into(),
            ));
        }
        let topic = HeaderValue::from_str(&config.topic)
            .ok()
            .filter(|_| plain(&config.topic))
            .ok_or_else(|| PushError::Config(format!("the APNs topic {:?}", config.topic)))?;
        let base_url = match &config.base_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if config.sandbox => APNS_SANDBOX_URL.to_owned(),
            None => APNS_PRODUCTION_URL.to_owned(),
        };
        if !base_url.starts_with("https://") {
            return Err(PushError::Config(format!(
                "the APNs base_url must be https: {base_url}"
            )));
        }
        Ok(ApnsProvider {
            key,
            key_id: config.key_id.clone(),
            team_id: config.team_id.clone(),
            topic,
            push_type: config.push_type,
            base_url,
            client,
            clock: system_clock(),
            token: Mutex::new(None),
        })
    }

    /// The same provider reading time from `clock`.
    pub fn with_clock(mut self, clock: WallClock) -> Self {
        self.clock = clock;
        self
    }

    /// The current provider token: the cached one until it is
    /// [`APNS_PROVIDER_TOKEN_REFRESH_S`] old (or the clock went back), then a new one.
    fn provider_token(&self, now_s: u64) -> Result<String, PushError> {
        let mut cached = self
            .token
            .lock()
            .map_err(|_| PushError::Config("the APNs token cache was poisoned".into()))?;
        if let Some(token) = cached.as_ref()
            && now_s >= token.issued_at_s
            && now_s - token.issued_at_s < APNS_PROVIDER_TOKEN_REFRESH_S
        {
            return Ok(token.jwt.clone());
        }
        let header = serde_json::json!({ "alg": "ES256", "kid": self.key_id });
        let claims = serde_json::json!({ "iss": self.team_id, "iat": now_s });
        let jwt = self.key.sign_jwt(&header, &claims)?;
        *cached = Some(ProviderToken {
            jwt: jwt.clone(),
            issued_at_s: now_s,
        });
        tracing::debug!(key_id = %self.key_id, "a new APNs provider token");
        Ok(jwt)
    }

    /// Drops the cached token if it is still `jwt` (Apple called it expired).
    fn forget_token(&self, jwt: &str) {
        if let Ok(mut cached) = self.token.lock()
            && cached.as_ref().is_some_and(|token| token.jwt == jwt)
        {
            *cached = None;
        }
    }

    fn request(
        &self,
        token: &ApnsToken,
        wake: &Wake,
        jwt: &str,
        now_s: u64,
    ) -> Result<Request<Full<Bytes>>, PushError> {
        let (push_type, priority) = match self.push_type {
            ApnsPushType::Background => ("background", "5"),
            ApnsPushType::Alert => ("alert", "10"),
        };
        let expiration = now_s + wake.time_to_live().as_secs();
        Request::post(format!("{}/3/device/{}", self.base_url, token.hex()))
            .header(http::header::AUTHORIZATION, format!("bearer {jwt}"))
            .header("apns-topic", self.topic.clone())
            .header("apns-push-type", push_type)
            .header("apns-priority", priority)
            .header("apns-collapse-id", WAKE_COLLAPSE_KEY)
            .header("apns-expiration", expiration.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body(APNS_WAKE_PAYLOAD))
            .map_err(|error| PushError::Config(format!("the APNs request: {error}")))
    }

    async fn deliver(&self, token: &ApnsToken, wake: &Wake) -> Result<Delivered, PushError> {
        let now = (self.clock)();
        let now_s = unix_seconds(now);
        let jwt = self.provider_token(now_s)?;
        let reply = self
            .client
            .send(self.request(token, wake, &jwt, now_s)?)
            .await?;
        let status = reply.status.as_u16();
        if reply.status.is_success() {
            return Ok(Delivered {
                status,
                message_id: reply.header("apns-id"),
            });
        }
        let reason = serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|body| body.get("reason")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| reply.body_text());
        let error = match (status, reason.as_str()) {
            (_, "Unregistered") | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => {
                PushError::Gone { status, reason }
            }
            (403, "ExpiredProviderToken") => {
                self.forget_token(&jwt);
                PushError::Throttled {
                    status,
                    retry_after: None,
                    reason,
                }
            }
            (403, _) => PushError::Config(format!("APNs refused our provider token: {reason}")),
            _ => status_error(&reply, reason, now),
        };
        tracing::debug!(%error, "an APNs wake was not delivered");
        Err(error)
    }
}

impl PushProvider for ApnsProvider {
    fn send<'a>(&'a self, target: &'a PushRegistration, wake: &'a Wake) -> PushFuture<'a> {
        Box::pin(async move {
            match target {
                PushRegistration::Apns(token) => self.deliver(token, wake).await,
                other => Err(PushError::Config(format!(
                    "the APNs provider was given a {} registration",
                    other.kind()
                ))),
            }
        })
    }
}
