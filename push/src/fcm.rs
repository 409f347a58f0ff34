//! FCM HTTP v1: an OAuth2 access token from a service account, then
//! `POST /v1/projects/{project}/messages:send`.
//!
//! **Access token.** An RS256 JWT assertion (`iss` = the service account's `client_email`,
//! `scope` = firebase.messaging, `aud` = its `token_uri`) is exchanged at `token_uri`
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`) for a bearer token, cached until
//! [`FCM_ACCESS_TOKEN_REFRESH_MARGIN_S`] before it expires. One fetch at a time: concurrent
//! sends wait for it rather than each asking Google.
//!
//! **Message.** [`fcm_wake_message`]: the token, `data: {"relay": "wake"}`, high Android
//! priority and the wake collapse key. No notification block, so nothing is displayed by FCM
//! itself and nothing identifying is in it.
//!
//! **Answers.** 200 delivered (`name`); `UNREGISTERED`, `SENDER_ID_MISMATCH`, or
//! `INVALID_ARGUMENT` about the registration token: gone (our message is fixed and valid, so
//! an invalid argument is the token); 401: the access token is dropped and the wake retried;
//! 429, 5xx: throttled with `Retry-After`; any other 404 (a wrong project) is configuration,
//! never gone, so a typo cannot delete every registration.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde::Deserialize;

use crate::config::{FcmConfig, read_secret};
use crate::http::{HttpsClient, Reply, body, status_error};
use crate::jwt::{Rs256Key, pkcs8_der_from_pem, unix_seconds};
use crate::limits::{
    FCM_ACCESS_TOKEN_LIFETIME_S_MAX, FCM_ACCESS_TOKEN_REFRESH_MARGIN_S, FCM_ASSERTION_VALIDITY_S,
};
use crate::registration::FcmToken;
use crate::wake::fcm_wake_message;
use crate::{
    Delivered, PushError, PushFuture, PushProvider, PushRegistration, Wake, WallClock, system_clock,
};

/// Google's FCM base URL.
pub const FCM_URL: &str = "https://fcm.googleapis.com";
/// The OAuth2 scope FCM sends need.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The OAuth2 grant type of a JWT bearer assertion (RFC 7523).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The fields of a Google service account JSON this crate reads (others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    /// The account's email: the assertion's `iss`.
    pub client_email: String,
    /// Its RSA private key, PKCS#8 PEM.
    pub private_key: String,
    /// Its key id, sent as the assertion's `kid` when present.
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// Where to exchange the assertion for an access token.
    pub token_uri: String,
    /// The Firebase project.
    #[serde(default)]
    pub project_id: Option<String>,
}

/// Delivers wakes to FCM registration tokens.
pub struct FcmProvider {
    key: Rs256Key,
    account: ServiceAccount,
    send_url: String,
    client: HttpsClient,
    clock: WallClock,
    access: tokio::sync::Mutex<Option<AccessToken>>,
}

#[derive(Clone)]
struct AccessToken {
    token: String,
    expires_at_s: u64,
}

impl std::fmt::Debug for FcmProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmProvider")
            .field("client_email", &self.account.client_email)
            .field("send_url", &self.send_url)
            .finish_non_exhaustive()
    }
}

impl FcmProvider {
    /// The provider `config` describes, its service account read from the file it names.
    pub fn from_config(config: &FcmConfig, client: HttpsClient) -> Result<Self, PushError> {
        let json = read_secret(&config.service_account_file, "FCM service_account_file")?;
        Self::new(config, &json, client)
    }

    /// The provider `config` describes, with the service account JSON `service_account`.
    pub fn new(
        config: &FcmConfig,
        service_account: &str,
        client: HttpsClient,
    ) -> Result<Self, PushError> {
        let account: ServiceAccount = serde_json::from_str(service_account)
            .map_err(|error| PushError::Config(format!("the FCM service account JSON: {error}")))?;
        let der = pkcs8_der_from_pem(&account.private_key, "the service account's private_key")?;
        let key = Rs256Key::from_pkcs8(&der, "the service account's private_key")?;
        if !account.token_uri.starts_with("https://") {
            return Err(PushError::Config(format!(
                "the service account's token_uri must be https: {}",
                account.token_uri
            )));
        }
        let project = config
            .project_id
            .clone()
            .or_else(|| account.project_id.clone())
            .ok_or_else(|| {
                PushError::Config("no FCM project_id in the config or the service account".into())
            })?;
        if project.is_empty()
            || !project
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
        {
            return Err(PushError::Config(format!("the FCM project id {project:?}")));
        }
        let base_url = config
            .base_url
            .as_deref()
            .unwrap_or(FCM_URL)
            .trim_end_matches('/');
        if !base_url.starts_with("https://") {
            return Err(PushError::Config(format!(
                "the FCM base_url must be https: {base_url}"
            )));
        }
        Ok(FcmProvider {
            key,
            send_url: format!("{base_url}/v1/projects/{project}/messages:send"),
            account,
            client,
            clock: system_clock(),
            access: tokio::sync::Mutex::new(None),
        })
    }

    /// The same provider reading time from `clock`.
    pub fn with_clock(mut self, clock: WallClock) -> Self {
        self.clock = clock;
        self
    }

    /// A valid access token: the cached one, or a new one from the token endpoint.
    async fn access_token(&self) -> Result<String, PushError> {
        let mut cached = self.access.lock().await;
        let now_s = unix_seconds((self.clock)());
        if let Some(access) = cached.as_ref()
            && now_s + FCM_ACCESS_TOKEN_REFRESH_MARGIN_S < access.expires_at_s
        {
            return Ok(access.token.clone());
        }
        let access = self.fetch_access_token(now_s).await?;
        let token = access.token.clone();
        *cached = Some(access);
        Ok(token)
    }

    async fn fetch_access_token(&self, now_s: u64) -> Result<AccessToken, PushError> {
        let header = match &self.account.private_key_id {
            Some(kid) => serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": kid }),
            None => serde_json::json!({ "alg": "RS256", "typ": "JWT" }),
        };
        let claims = serde_json::json!({
            "iss": self.account.client_email,
            "scope": FCM_SCOPE,
            "aud": self.account.token_uri,
            "iat": now_s,
            "exp": now_s + FCM_ASSERTION_VALIDITY_S,
        });
        let assertion = self.key.sign_jwt(&header, &claims)?;
        // The grant type, form-encoded (':' is %3A); the assertion is base64url and dots.
        let form = format!(
            "grant_type={}&assertion={assertion}",
            JWT_BEARER_GRANT.replace(':', "%3A")
        );
        let request = Request::post(&self.account.token_uri)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body(form))
            .map_err(|error| PushError::Config(format!("the token request: {error}")))?;
        let reply = self.client.send(request).await?;
        if !reply.status.is_success() {
            let reason = format!("the FCM token endpoint: {}", reply.body_text());
            return Err(match reply.status.as_u16() {
                429 | 500..=599 => status_error(&reply, reason, (self.clock)()),
                _ => PushError::Config(reason),
            });
        }
        #[derive(Deserialize)]
        struct TokenReply {
            access_token: String,
            expires_in: u64,
        }
        let parsed: TokenReply = serde_json::from_slice(&reply.body).map_err(|error| {
            PushError::Transport(format!("the FCM token endpoint's answer: {error}"))
        })?;
        tracing::debug!(expires_in_s = parsed.expires_in, "a new FCM access token");
        Ok(AccessToken {
            token: parsed.access_token,
            expires_at_s: now_s + parsed.expires_in.min(FCM_ACCESS_TOKEN_LIFETIME_S_MAX),
        })
    }

    async fn forget_access_token(&self, token: &str) {
        let mut cached = self.access.lock().await;
        if cached.as_ref().is_some_and(|access| access.token == token) {
            *cached = None;
        }
    }

    fn request(&self, token: &FcmToken, access: &str) -> Result<Request<Full<Bytes>>, PushError> {
        Request::post(&self.send_url)
            .header(http::header::AUTHORIZATION, format!("Bearer {access}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body(fcm_wake_message(token.as_str()).to_string()))
            .map_err(|error| PushError::Config(format!("the FCM request: {error}")))
    }

    async fn deliver(&self, token: &FcmToken) -> Result<Delivered, PushError> {
        let access = self.access_token().await?;
        let reply = self.client.send(self.request(token, &access)?).await?;
        let status = reply.status.as_u16();
        if reply.status.is_success() {
            let name = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|body| body.get("name")?.as_str().map(str::to_owned));
            return Ok(Delivered {
                status,
                message_id: name,
            });
        }
        let (code, message) = error_code(&reply);
        let reason = format!("{code}: {message}");
        let error = match (status, code.as_str()) {
            (_, "UNREGISTERED" | "SENDER_ID_MISMATCH") => PushError::Gone { status, reason },
            (400, "INVALID_ARGUMENT")
                if message.to_ascii_lowercase().contains("registration token") =>
            {
                PushError::Gone { status, reason }
            }
            (401, _) => {
                self.forget_access_token(&access).await;
                PushError::Throttled {
                    status,
                    retry_after: None,
                    reason,
                }
            }
            (403 | 404, _) => PushError::Config(format!("FCM: {reason}")),
            _ => status_error(&reply, reason, (self.clock)()),
        };
        tracing::debug!(%error, "an FCM wake was not delivered");
        Err(error)
    }
}

/// FCM's error code (`details[].errorCode`, else `status`) and message.
fn error_code(reply: &Reply) -> (String, String) {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&reply.body) else {
        return (reply.status.as_str().to_owned(), reply.body_text());
    };
    let error = &body["error"];
    let detail = error["details"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|detail| detail["errorCode"].as_str());
    let code = detail
        .or_else(|| error["status"].as_str())
        .unwrap_or(reply.status.as_str());
    let message = error["message"].as_str().unwrap_or_default();
    (code.to_owned(), message.to_owned())
}

impl PushProvider for FcmProvider {
    fn send<'a>(&'a self, target: &'a PushRegistration, _wake: &'a Wake) -> PushFuture<'a> {
        // FCM's own TTL default (four weeks) is left alone: a late wake still means "fetch".
        Box::pin(async move {
            match target {
                PushRegistration::Fcm(token) => self.deliver(token).await,
                other => Err(PushError::Config(format!(
                    "the FCM provider was given a {} registration",
                    other.kind()
                ))),
            }
        })
    }
}
