//! The loopback WebPush push service (RFC 8030, 8291, 8292).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use ring::signature::ECDSA_P256_SHA256_FIXED;
use web_push_native::p256;
use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint as _;

use super::{
    LoopbackTls, Server, header, lock, now_s, random_bytes, read_body, respond, serve, verify_jwt,
};
use crate::PushError;
use crate::http::{HttpVersions, HttpsClient, TrustRoots};
use crate::jwt::{base64url, base64url_decode};
use crate::limits::VAPID_TOKEN_VALIDITY_S_MAX;
use crate::registration::{PushRegistration, RegistrationPolicy};

/// RFC 8030 §7.2: a push service must accept payloads up to 4096 bytes and may refuse more.
const PUSH_MESSAGE_BYTES_MAX: usize = 4096;

/// How the service answers pushes to a subscription (after verifying them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebPushBehaviour {
    /// 201 Created.
    #[default]
    Accept,
    /// 410 Gone: the subscription expired or was unsubscribed.
    Gone,
    /// 429 Too Many Requests with `Retry-After: retry_after_s`.
    Throttle {
        /// The `Retry-After` seconds.
        retry_after_s: u64,
    },
}

/// A push the service accepted, decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedWebPush {
    /// The subscription's path id.
    pub subscription: String,
    /// The decrypted payload.
    pub plaintext: Vec<u8>,
    /// The encrypted body's length.
    pub encrypted_bytes: usize,
    /// The `TTL` header.
    pub ttl_s: u64,
    /// The `Urgency` header.
    pub urgency: Option<String>,
    /// The `Topic` header.
    pub topic: Option<String>,
    /// The VAPID token's `sub`.
    pub vapid_subject: String,
    /// The VAPID public key (`k`).
    pub vapid_public_key: Vec<u8>,
    /// The HTTP version the push came over.
    pub version: http::Version,
}

struct Subscription {
    secret: p256::SecretKey,
    auth: [u8; 16],
    application_server_key: Option<Vec<u8>>,
    behaviour: WebPushBehaviour,
}

#[derive(Default)]
struct State {
    subscriptions: HashMap<String, Subscription>,
    received: Vec<ReceivedWebPush>,
    refused: Vec<(u16, String)>,
    raw_posts: u64,
    next_id: u64,
}

/// A loopback WebPush push service.
pub struct WebPushTestService {
    tls: LoopbackTls,
    origin: String,
    state: Arc<Mutex<State>>,
    _server: Server,
}

impl std::fmt::Debug for WebPushTestService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPushTestService")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl WebPushTestService {
    /// Starts the service on 127.0.0.1, port 0.
    pub async fn start() -> Result<Self, String> {
        let tls = LoopbackTls::new()?;
        let state = Arc::new(Mutex::new(State::default()));
        // The origin is known once the port is: the handler reads it from a cell set below.
        let origin_cell: Arc<std::sync::OnceLock<String>> = Arc::new(std::sync::OnceLock::new());
        let handler_state = state.clone();
        let handler_origin = origin_cell.clone();
        let handler: super::Handler = Arc::new(move |request| {
            let state = handler_state.clone();
            let origin = handler_origin.get().cloned().unwrap_or_default();
            Box::pin(async move { handle(request, &state, &origin).await })
        });
        let server = serve(&tls, false, handler)
            .await
            .map_err(|error| format!("binding the WebPush service: {error}"))?;
        let origin = format!("https://127.0.0.1:{}", server.address.port());
        let _ = origin_cell.set(origin.clone());
        Ok(WebPushTestService {
            tls,
            origin,
            state,
            _server: server,
        })
    }

    /// A new subscription, as a browser would make it; bound to `application_server_key`
    /// (the VAPID public key) if given, as `pushManager.subscribe` binds it.
    pub fn subscribe(&self, application_server_key: Option<&[u8]>) -> PushRegistration {
        let secret = loop {
            // A random 32-byte string is a valid scalar but with negligible probability.
            if let Ok(secret) = p256::SecretKey::from_slice(&random_bytes(32)) {
                break secret;
            }
        };
        let mut auth = [0; 16];
        auth.copy_from_slice(&random_bytes(16));
        let public = secret.public_key().to_encoded_point(false);
        let id = {
            let mut state = lock(&self.state);
            state.next_id += 1;
            let id = format!("sub{}", state.next_id);
            state.subscriptions.insert(
                id.clone(),
                Subscription {
                    secret,
                    auth,
                    application_server_key: application_server_key.map(<[u8]>::to_vec),
                    behaviour: WebPushBehaviour::Accept,
                },
            );
            id
        };
        let endpoint = format!("{}/push/{id}", self.origin);
        match PushRegistration::parse_webpush(
            &endpoint,
            &base64url(public.as_bytes()),
            &base64url(&auth),
            RegistrationPolicy::LOOPBACK_TESTS,
        ) {
            Ok(registration) => registration,
            Err(error) => panic!("the test service made an unparsable subscription: {error}"),
        }
    }

    /// How pushes to `registration` are answered from now on.
    pub fn set_behaviour(&self, registration: &PushRegistration, behaviour: WebPushBehaviour) {
        let PushRegistration::WebPush(subscription) = registration else {
            return;
        };
        let id = subscription.endpoint().path().trim_start_matches("/push/");
        if let Some(subscription) = lock(&self.state).subscriptions.get_mut(id) {
            subscription.behaviour = behaviour;
        }
    }

    /// Every push accepted so far, decrypted, in arrival order.
    pub fn received(&self) -> Vec<ReceivedWebPush> {
        lock(&self.state).received.clone()
    }

    /// Every push refused so far: status and reason.
    pub fn refused(&self) -> Vec<(u16, String)> {
        lock(&self.state).refused.clone()
    }

    /// Plain POSTs to [`raw_url`](Self::raw_url) so far.
    pub fn raw_posts(&self) -> u64 {
        lock(&self.state).raw_posts
    }

    /// A URL that takes any POST and answers 201 without checks: the bench's baseline.
    pub fn raw_url(&self) -> String {
        format!("{}/raw", self.origin)
    }

    /// The service's origin, `https://127.0.0.1:<port>`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Its TLS certificate and roots.
    pub fn tls(&self) -> &LoopbackTls {
        &self.tls
    }

    /// Roots trusting only this service.
    pub fn trust_roots(&self) -> TrustRoots {
        self.tls.trust_roots()
    }

    /// A client trusting this service.
    pub fn client(&self) -> Result<HttpsClient, PushError> {
        self.tls.client(HttpVersions::Any)
    }
}

/// What the service verified in a VAPID `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VapidClaims {
    /// `sub`: the application server's contact.
    pub subject: String,
    /// `k`: its public key.
    pub public_key: Vec<u8>,
    /// `exp`.
    pub expires_s: u64,
}

/// Verifies an RFC 8292 `Authorization: vapid t=<jwt>, k=<key>` header for a push to
/// `audience` at `now_s`: the ES256 signature against `k`, `aud`, `exp` (future, within
/// 24 h) and a `mailto:`/`https:` `sub`.
pub fn verify_vapid(
    authorization: &str,
    audience: &str,
    now_s: u64,
) -> Result<VapidClaims, String> {
    let rest = authorization
        .strip_prefix("vapid ")
        .ok_or("the Authorization scheme is not vapid")?;
    let mut token = None;
    let mut key = None;
    for parameter in rest.split(',') {
        let parameter = parameter.trim();
        if let Some(value) = parameter.strip_prefix("t=") {
            token = Some(value);
        } else if let Some(value) = parameter.strip_prefix("k=") {
            key = Some(value);
        }
    }
    let (Some(token), Some(key)) = (token, key) else {
        return Err("the vapid header lacks t= or k=".into());
    };
    let public_key = base64url_decode(key).map_err(|_| "k is not base64url")?;
    if public_key.len() != 65 || public_key[0] != 4 {
        return Err("k is not an uncompressed P-256 point".into());
    }
    let (header, claims) = verify_jwt(token, &ECDSA_P256_SHA256_FIXED, &public_key)?;
    if header["alg"] != "ES256" {
        return Err(format!("the JWT alg is {}, not ES256", header["alg"]));
    }
    if claims["aud"] != audience {
        return Err(format!("aud is {}, not {audience}", claims["aud"]));
    }
    let expires_s = claims["exp"].as_u64().ok_or("no exp")?;
    if expires_s <= now_s {
        return Err("the VAPID token has expired".into());
    }
    if expires_s > now_s + VAPID_TOKEN_VALIDITY_S_MAX {
        return Err("exp is more than 24 hours ahead".into());
    }
    let subject = claims["sub"].as_str().unwrap_or_default().to_owned();
    if !(subject.starts_with("mailto:") || subject.starts_with("https:")) {
        return Err(format!("sub {subject:?} is not a mailto: or https: URI"));
    }
    Ok(VapidClaims {
        subject,
        public_key,
        expires_s,
    })
}

async fn handle(
    request: hyper::Request<hyper::body::Incoming>,
    state: &Mutex<State>,
    origin: &str,
) -> Response<Full<Bytes>> {
    let version = request.version();
    let path = request.uri().path().to_owned();
    if request.method() != http::Method::POST {
        return respond(405, &[], "POST only");
    }
    let (parts, body) = match read_body(request, PUSH_MESSAGE_BYTES_MAX).await {
        Ok(read) => read,
        Err(error) => return refuse(state, 413, error),
    };
    if path == "/raw" {
        lock(state).raw_posts += 1;
        return respond(201, &[], Bytes::new());
    }
    let Some(id) = path.strip_prefix("/push/") else {
        return refuse(state, 404, format!("no push resource at {path}"));
    };
    let authorization = header(&parts, "authorization").unwrap_or_default();
    let vapid = match verify_vapid(&authorization, origin, now_s()) {
        Ok(vapid) => vapid,
        Err(error) => return refuse(state, 401, error),
    };
    if header(&parts, "content-encoding").as_deref() != Some("aes128gcm") {
        return refuse(state, 415, "Content-Encoding must be aes128gcm".into());
    }
    let Some(ttl_s) = header(&parts, "ttl").and_then(|ttl| ttl.parse::<u64>().ok()) else {
        return refuse(state, 400, "a push needs a TTL header".into());
    };
    let urgency = header(&parts, "urgency");
    if let Some(urgency) = &urgency
        && !["very-low", "low", "normal", "high"].contains(&urgency.as_str())
    {
        return refuse(state, 400, format!("Urgency {urgency:?}"));
    }
    let topic = header(&parts, "topic");
    if let Some(topic) = &topic
        && (topic.len() > 32
            || !topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return refuse(state, 400, format!("Topic {topic:?}"));
    }
    let mut state_now = lock(state);
    let Some(subscription) = state_now.subscriptions.get(id) else {
        drop(state_now);
        return refuse(state, 404, format!("no subscription {id}"));
    };
    if let Some(bound) = &subscription.application_server_key
        && *bound != vapid.public_key
    {
        drop(state_now);
        return refuse(
            state,
            403,
            "the VAPID key is not the one the subscription was made with".into(),
        );
    }
    let plaintext = match web_push_native::decrypt(
        body.to_vec(),
        &subscription.secret,
        &web_push_native::Auth::clone_from_slice(&subscription.auth),
    ) {
        Ok(plaintext) => plaintext,
        Err(error) => {
            drop(state_now);
            return refuse(state, 400, format!("the body does not decrypt: {error}"));
        }
    };
    match subscription.behaviour {
        WebPushBehaviour::Accept => {}
        WebPushBehaviour::Gone => {
            drop(state_now);
            return refuse(
                state,
                410,
                "push subscription has unsubscribed or expired".into(),
            );
        }
        WebPushBehaviour::Throttle { retry_after_s } => {
            state_now.refused.push((429, "throttled".into()));
            return respond(
                429,
                &[("retry-after", retry_after_s.to_string())],
                "slow down",
            );
        }
    }
    state_now.received.push(ReceivedWebPush {
        subscription: id.to_owned(),
        plaintext,
        encrypted_bytes: body.len(),
        ttl_s,
        urgency,
        topic,
        vapid_subject: vapid.subject,
        vapid_public_key: vapid.public_key,
        version,
    });
    let message = state_now.received.len();
    respond(
        201,
        &[("location", format!("{origin}/message/{message}"))],
        Bytes::new(),
    )
}

fn refuse(state: &Mutex<State>, status: u16, reason: String) -> Response<Full<Bytes>> {
    tracing::debug!(status, %reason, "the loopback WebPush service refused a push");
    lock(state).refused.push((status, reason.clone()));
    respond(status, &[], reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::Es256Key;

    fn signed(claims: serde_json::Value, key: &Es256Key) -> String {
        let token = key
            .sign_jwt(&serde_json::json!({"typ": "JWT", "alg": "ES256"}), &claims)
            .expect("signs");
        format!("vapid t={token}, k={}", base64url(key.public_key()))
    }

    #[test]
    fn the_vapid_check_refuses_forged_stale_and_misaddressed_tokens() {
        let der = Es256Key::generate_pkcs8().expect("a key");
        let key = Es256Key::from_pkcs8(&der, "test").expect("a key");
        let other = Es256Key::from_pkcs8(&Es256Key::generate_pkcs8().expect("a key"), "test")
            .expect("a key");
        let now = 1_700_000_000;
        let audience = "https://127.0.0.1:4000";
        let good = serde_json::json!({"aud": audience, "exp": now + 3600, "sub": "mailto:a@b"});
        let header = signed(good.clone(), &key);
        assert!(verify_vapid(&header, audience, now).is_ok());

        // Another key's k with this key's signature.
        let forged = header.replace(&base64url(key.public_key()), &base64url(other.public_key()));
        assert!(verify_vapid(&forged, audience, now).is_err());
        // A changed claim under the old signature.
        let (token, k) = header
            .strip_prefix("vapid t=")
            .and_then(|rest| rest.split_once(", k="))
            .expect("the header's shape");
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = base64url(
            serde_json::json!({"aud": audience, "exp": now + 7200, "sub": "mailto:a@b"})
                .to_string()
                .as_bytes(),
        );
        let tampered = format!("vapid t={}, k={k}", parts.join("."));
        assert!(verify_vapid(&tampered, audience, now).is_err());

        assert!(verify_vapid(&header, "https://127.0.0.1:4001", now).is_err());
        assert!(verify_vapid(&header, audience, now + 3600).is_err());
        let too_long = signed(
            serde_json::json!({"aud": audience, "exp": now + 25 * 3600, "sub": "mailto:a@b"}),
            &key,
        );
        assert!(verify_vapid(&too_long, audience, now).is_err());
        let no_contact = signed(
            serde_json::json!({"aud": audience, "exp": now + 60, "sub": "me"}),
            &key,
        );
        assert!(verify_vapid(&no_contact, audience, now).is_err());
        assert!(verify_vapid("Bearer abc", audience, now).is_err());
    }
}
