//! The loopback APNs endpoint: HTTP/2 only, provider token and headers checked as Apple does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use ring::signature::ECDSA_P256_SHA256_FIXED;

use super::{LoopbackTls, Server, header, lock, now_s, read_body, respond, serve, verify_jwt};
use crate::PushError;
use crate::config::{ApnsConfig, ApnsPushType};
use crate::http::{HttpVersions, HttpsClient};
use crate::jwt::Es256Key;
use crate::limits::APNS_PROVIDER_TOKEN_LIFETIME_S_MAX;

/// Apple's payload ceiling for a notification.
const APNS_PAYLOAD_BYTES_MAX: usize = 4096;

/// A team's .p8 signing key made for a test, and its public half for the endpoint.
#[derive(Debug, Clone)]
pub struct ApnsTestKey {
    /// The private key, PKCS#8 PEM, as Apple's .p8 files are.
    pub private_key_pem: String,
    /// The public key, an uncompressed P-256 point.
    pub public_key: Vec<u8>,
}

impl ApnsTestKey {
    /// A fresh key.
    pub fn generate() -> Result<Self, PushError> {
        let der = Es256Key::generate_pkcs8()?;
        let key = Es256Key::from_pkcs8(&der, "a test APNs key")?;
        Ok(ApnsTestKey {
            private_key_pem: crate::webpush::pem("PRIVATE KEY", &der),
            public_key: key.public_key().to_vec(),
        })
    }
}

/// How the endpoint answers pushes to a device token (after verifying them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApnsBehaviour {
    /// 200 with an `apns-id`.
    #[default]
    Accept,
    /// 410 `{"reason":"Unregistered"}`.
    Unregistered,
    /// 400 `{"reason":"BadDeviceToken"}`.
    BadDeviceToken,
    /// 429 `{"reason":"TooManyRequests"}`.
    TooManyRequests,
}

/// A push the endpoint accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedApns {
    /// The device token from the path (hex).
    pub token_hex: String,
    /// The body, as sent.
    pub payload: Vec<u8>,
    /// `apns-topic`.
    pub topic: String,
    /// `apns-push-type`.
    pub push_type: String,
    /// `apns-priority`.
    pub priority: String,
    /// `apns-collapse-id`.
    pub collapse_id: Option<String>,
    /// `apns-expiration` (Unix seconds).
    pub expiration_s: u64,
    /// The provider token's `iat`.
    pub provider_token_iat: u64,
    /// The provider token itself.
    pub provider_token: String,
    /// The HTTP version it came over (always HTTP/2 here).
    pub version: http::Version,
}

struct Expected {
    key_id: String,
    team_id: String,
    topic: String,
    public_key: Vec<u8>,
}

#[derive(Default)]
struct State {
    behaviours: HashMap<String, ApnsBehaviour>,
    received: Vec<ReceivedApns>,
    refused: Vec<(u16, String)>,
}

/// A loopback APNs endpoint for one team key and app.
pub struct ApnsTestService {
    tls: LoopbackTls,
    base_url: String,
    key_id: String,
    team_id: String,
    topic: String,
    state: Arc<Mutex<State>>,
    _server: Server,
}

impl std::fmt::Debug for ApnsTestService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsTestService")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl ApnsTestService {
    /// Starts an endpoint accepting provider tokens of `key` (`kid` = `key_id`, `iss` =
    /// `team_id`) for the app `topic`.
    pub async fn start(
        key: &ApnsTestKey,
        key_id: &str,
        team_id: &str,
        topic: &str,
    ) -> Result<Self, String> {
        let tls = LoopbackTls::new()?;
        let state = Arc::new(Mutex::new(State::default()));
        let expected = Arc::new(Expected {
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            topic: topic.to_owned(),
            public_key: key.public_key.clone(),
        });
        let handler_state = state.clone();
        let handler: super::Handler = Arc::new(move |request| {
            let state = handler_state.clone();
            let expected = expected.clone();
            Box::pin(async move { handle(request, &state, &expected).await })
        });
        let server = serve(&tls, true, handler)
            .await
            .map_err(|error| format!("binding the APNs endpoint: {error}"))?;
        Ok(ApnsTestService {
            tls,
            base_url: format!("https://127.0.0.1:{}", server.address.port()),
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            topic: topic.to_owned(),
            state,
            _server: server,
        })
    }

    /// A provider configuration pointing here (its `key_file` is a placeholder: pass the key
    /// to [`ApnsProvider::new`](crate::apns::ApnsProvider::new)).
    pub fn config(&self, push_type: ApnsPushType) -> ApnsConfig {
        ApnsConfig {
            key_file: "unused.p8".into(),
            key_id: self.key_id.clone(),
            team_id: self.team_id.clone(),
            topic: self.topic.clone(),
            sandbox: false,
            push_type,
            base_url: Some(self.base_url.clone()),
        }
    }

    /// How pushes to the device token `token_hex` are answered from now on.
    pub fn set_behaviour(&self, token_hex: &str, behaviour: ApnsBehaviour) {
        lock(&self.state)
            .behaviours
            .insert(token_hex.to_ascii_lowercase(), behaviour);
    }

    /// Every push accepted so far, in arrival order.
    pub fn received(&self) -> Vec<ReceivedApns> {
        lock(&self.state).received.clone()
    }

    /// Every push refused so far: status and reason.
    pub fn refused(&self) -> Vec<(u16, String)> {
        lock(&self.state).refused.clone()
    }

    /// Its TLS certificate and roots.
    pub fn tls(&self) -> &LoopbackTls {
        &self.tls
    }

    /// An HTTP/2-only client trusting this endpoint, as the APNs provider needs.
    pub fn client(&self) -> Result<HttpsClient, PushError> {
        self.tls.client(HttpVersions::Http2Only)
    }
}

async fn handle(
    request: hyper::Request<hyper::body::Incoming>,
    state: &Mutex<State>,
    expected: &Expected,
) -> Response<Full<Bytes>> {
    let version = request.version();
    if version != http::Version::HTTP_2 {
        return refuse(state, 400, "HTTP/2 only");
    }
    if request.method() != http::Method::POST {
        return refuse(state, 405, "MethodNotAllowed");
    }
    let path = request.uri().path().to_owned();
    let (parts, payload) = match read_body(request, APNS_PAYLOAD_BYTES_MAX).await {
        Ok(read) => read,
        Err(_) => return refuse(state, 413, "PayloadTooLarge"),
    };
    let Some(token_hex) = path.strip_prefix("/3/device/") else {
        return refuse(state, 404, "BadPath");
    };
    if token_hex.is_empty() || !token_hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return refuse(state, 400, "BadDeviceToken");
    }
    let provider_token = header(&parts, "authorization")
        .and_then(|value| value.strip_prefix("bearer ").map(str::to_owned))
        .unwrap_or_default();
    let Ok((jwt_header, claims)) = verify_jwt(
        &provider_token,
        &ECDSA_P256_SHA256_FIXED,
        &expected.public_key,
    ) else {
        return refuse(state, 403, "InvalidProviderToken");
    };
    if jwt_header["alg"] != "ES256"
        || jwt_header["kid"] != expected.key_id.as_str()
        || claims["iss"] != expected.team_id.as_str()
    {
        return refuse(state, 403, "InvalidProviderToken");
    }
    let Some(iat) = claims["iat"].as_u64() else {
        return refuse(state, 403, "InvalidProviderToken");
    };
    let now = now_s();
    if iat + APNS_PROVIDER_TOKEN_LIFETIME_S_MAX < now
        || iat > now + APNS_PROVIDER_TOKEN_LIFETIME_S_MAX
    {
        return refuse(state, 403, "ExpiredProviderToken");
    }
    let topic = header(&parts, "apns-topic").unwrap_or_default();
    if topic != expected.topic {
        return refuse(state, 400, "TopicDisallowed");
    }
    let push_type = header(&parts, "apns-push-type").unwrap_or_default();
    let priority = header(&parts, "apns-priority").unwrap_or_else(|| "10".into());
    match (push_type.as_str(), priority.as_str()) {
        ("background", "5") | ("alert", "5" | "10") => {}
        ("background", _) => return refuse(state, 400, "BadPriority"),
        _ => return refuse(state, 400, "InvalidPushType"),
    }
    let collapse_id = header(&parts, "apns-collapse-id");
    if collapse_id.as_ref().is_some_and(|id| id.len() > 64) {
        return refuse(state, 400, "BadCollapseId");
    }
    let Some(expiration_s) = header(&parts, "apns-expiration").and_then(|value| value.parse().ok())
    else {
        return refuse(state, 400, "BadExpirationDate");
    };
    let aps_ok = serde_json::from_slice::<serde_json::Value>(&payload)
        .is_ok_and(|body| body.get("aps").is_some_and(serde_json::Value::is_object));
    if !aps_ok {
        return refuse(state, 400, "PayloadEmpty");
    }
    let behaviour = lock(state)
        .behaviours
        .get(&token_hex.to_ascii_lowercase())
        .copied()
        .unwrap_or_default();
    match behaviour {
        ApnsBehaviour::Accept => {}
        ApnsBehaviour::Unregistered => return refuse(state, 410, "Unregistered"),
        ApnsBehaviour::BadDeviceToken => return refuse(state, 400, "BadDeviceToken"),
        ApnsBehaviour::TooManyRequests => return refuse(state, 429, "TooManyRequests"),
    }
    let mut state = lock(state);
    state.received.push(ReceivedApns {
        token_hex: token_hex.to_owned(),
        payload: payload.to_vec(),
        topic,
        push_type,
        priority,
        collapse_id,
        expiration_s,
        provider_token_iat: iat,
        provider_token,
        version,
    });
    let id = format!("00000000-0000-0000-0000-{:012}", state.received.len());
    respond(200, &[("apns-id", id)], Bytes::new())
}

fn refuse(state: &Mutex<State>, status: u16, reason: &str) -> Response<Full<Bytes>> {
    tracing::debug!(status, reason, "the loopback APNs endpoint refused a push");
    lock(state).refused.push((status, reason.to_owned()));
    let mut headers = Vec::new();
    if status == 410 {
        headers.push(("content-type", "application/json".to_owned()));
    }
    let body = if status == 410 {
        serde_json::json!({ "reason": reason, "timestamp": now_s() * 1000 })
    } else {
        serde_json::json!({ "reason": reason })
    };
    respond(status, &headers, body.to_string())
}
