//! The loopback FCM endpoints: an OAuth2 token URI that verifies the service account's RS256
//! assertion, and the HTTP v1 send URI that checks the bearer token and the message.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use ring::signature::RSA_PKCS1_2048_8192_SHA256;

use super::{
    LoopbackTls, Server, header, lock, random_bytes, read_body, respond, serve, verify_jwt,
};
use crate::config::FcmConfig;
use crate::fcm::{FCM_SCOPE, JWT_BEARER_GRANT};
use crate::http::{HttpVersions, HttpsClient};
use crate::jwt::{base64url, pkcs8_der_from_pem};
use crate::{PushError, WallClock};

/// Google's ceiling on an assertion's lifetime.
const ASSERTION_LIFETIME_S_MAX: u64 = 3600;
/// The lifetime of the access tokens the endpoint issues.
const ACCESS_TOKEN_LIFETIME_S: u64 = 3600;

/// A fixed RSA-2048 service account key for tests (made once with `openssl genpkey -algorithm
/// RSA -pkeyopt rsa_keygen_bits:2048`: ring cannot generate RSA keys). Never a real account's.
pub fn fcm_test_key_pem() -> &'static str {
    include_str!("fcm-test-key.pem")
}

/// The RSAPublicKey DER of the RSA PKCS#8 PEM `private_key_pem`, as the endpoint verifies with.
pub fn rsa_public_key(private_key_pem: &str) -> Result<Vec<u8>, PushError> {
    let der = pkcs8_der_from_pem(private_key_pem, "the test RSA key")?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|error| PushError::Config(format!("the test RSA key: {error}")))?;
    Ok(ring::signature::KeyPair::public_key(&key).as_ref().to_vec())
}

/// How the send endpoint answers messages to a registration token (after verifying them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FcmBehaviour {
    /// 200 `{"name": "projects/<p>/messages/<n>"}`.
    #[default]
    Accept,
    /// 404 `NOT_FOUND` with error code `UNREGISTERED`.
    Unregistered,
    /// 400 `INVALID_ARGUMENT`: "The registration token is not a valid FCM registration token".
    InvalidToken,
    /// 429 `RESOURCE_EXHAUSTED` / `QUOTA_EXCEEDED` with `Retry-After: retry_after_s`.
    Throttle {
        /// The `Retry-After` seconds.
        retry_after_s: u64,
    },
}

/// A message the send endpoint accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedFcm {
    /// The registration token it was for.
    pub token: String,
    /// The request body, parsed.
    pub body: serde_json::Value,
    /// The bearer token it carried.
    pub access_token: String,
}

struct Expected {
    client_email: String,
    project_id: String,
    token_uri: String,
    public_key: Vec<u8>,
    clock: WallClock,
}

#[derive(Default)]
struct State {
    behaviours: HashMap<String, FcmBehaviour>,
    issued: HashSet<String>,
    assertions: u64,
    received: Vec<ReceivedFcm>,
    refused: Vec<(u16, String)>,
}

/// Loopback FCM token and send endpoints for one service account and project.
pub struct FcmTestService {
    tls: LoopbackTls,
    base_url: String,
    expected: Arc<Expected>,
    state: Arc<Mutex<State>>,
    _server: Server,
}

impl std::fmt::Debug for FcmTestService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmTestService")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl FcmTestService {
    /// Starts endpoints accepting assertions of `client_email` signed by the RSA key whose
    /// RSAPublicKey DER is `public_key` ([`rsa_public_key`]), for `project_id`.
    pub async fn start(
        client_email: &str,
        public_key: Vec<u8>,
        project_id: &str,
    ) -> Result<Self, String> {
        Self::start_with_clock(client_email, public_key, project_id, crate::system_clock()).await
    }

    /// [`start`](Self::start), judging assertion times by `clock`.
    pub async fn start_with_clock(
        client_email: &str,
        public_key: Vec<u8>,
        project_id: &str,
        clock: WallClock,
    ) -> Result<Self, String> {
        let tls = LoopbackTls::new()?;
        let state = Arc::new(Mutex::new(State::default()));
        let expected_cell: Arc<std::sync::OnceLock<Arc<Expected>>> =
            Arc::new(std::sync::OnceLock::new());
        let handler_state = state.clone();
        let handler_expected = expected_cell.clone();
        let handler: super::Handler = Arc::new(move |request| {
            let state = handler_state.clone();
            let expected = handler_expected.get().cloned();
            Box::pin(async move {
                match expected {
                    Some(expected) => handle(request, &state, &expected).await,
                    None => respond(503, &[], "starting"),
                }
            })
        });
        let server = serve(&tls, false, handler)
            .await
            .map_err(|error| format!("binding the FCM endpoints: {error}"))?;
        let base_url = format!("https://127.0.0.1:{}", server.address.port());
        let expected = Arc::new(Expected {
            client_email: client_email.to_owned(),
            project_id: project_id.to_owned(),
            token_uri: format!("{base_url}/token"),
            public_key,
            clock,
        });
        let _ = expected_cell.set(expected.clone());
        Ok(FcmTestService {
            tls,
            base_url,
            expected,
            state,
            _server: server,
        })
    }

    /// A service account JSON naming this token URI, with `private_key_pem`.
    pub fn service_account_json(&self, private_key_pem: &str) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": self.expected.project_id,
            "private_key_id": "test-key-1",
            "private_key": private_key_pem,
            "client_email": self.expected.client_email,
            "client_id": "1",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.expected.token_uri,
        })
        .to_string()
    }

    /// A provider configuration pointing here (its `service_account_file` is a placeholder:
    /// pass the JSON to [`FcmProvider::new`](crate::fcm::FcmProvider::new)).
    pub fn config(&self) -> FcmConfig {
        FcmConfig {
            service_account_file: "unused.json".into(),
            project_id: None,
            base_url: Some(self.base_url.clone()),
        }
    }

    /// How messages to `token` are answered from now on.
    pub fn set_behaviour(&self, token: &str, behaviour: FcmBehaviour) {
        lock(&self.state)
            .behaviours
            .insert(token.to_owned(), behaviour);
    }

    /// Every message accepted so far, in arrival order.
    pub fn received(&self) -> Vec<ReceivedFcm> {
        lock(&self.state).received.clone()
    }

    /// Every request refused so far: status and reason.
    pub fn refused(&self) -> Vec<(u16, String)> {
        lock(&self.state).refused.clone()
    }

    /// Access tokens issued so far (valid assertions exchanged).
    pub fn access_tokens_issued(&self) -> u64 {
        lock(&self.state).assertions
    }

    /// Its TLS certificate and roots.
    pub fn tls(&self) -> &LoopbackTls {
        &self.tls
    }

    /// A client trusting these endpoints.
    pub fn client(&self) -> Result<HttpsClient, PushError> {
        self.tls.client(HttpVersions::Any)
    }
}

async fn handle(
    request: hyper::Request<hyper::body::Incoming>,
    state: &Mutex<State>,
    expected: &Expected,
) -> Response<Full<Bytes>> {
    if request.method() != http::Method::POST {
        return respond(405, &[], "POST only");
    }
    let path = request.uri().path().to_owned();
    let (parts, body) = match read_body(request, 64 * 1024).await {
        Ok(read) => read,
        Err(error) => return refuse(state, 413, "PAYLOAD_TOO_LARGE", &error),
    };
    if path == "/token" {
        return token(&parts, &body, state, expected);
    }
    if path == format!("/v1/projects/{}/messages:send", expected.project_id) {
        return send(&parts, &body, state, expected);
    }
    refuse(state, 404, "NOT_FOUND", &format!("no such resource {path}"))
}

fn token(
    parts: &http::request::Parts,
    body: &[u8],
    state: &Mutex<State>,
    expected: &Expected,
) -> Response<Full<Bytes>> {
    let invalid = |description: &str| {
        lock(state).refused.push((400, description.to_owned()));
        let body =
            serde_json::json!({ "error": "invalid_grant", "error_description": description });
        respond(400, &[], body.to_string())
    };
    if header(parts, "content-type").as_deref() != Some("application/x-www-form-urlencoded") {
        return invalid("the token request is not a form");
    }
    let form = parse_form(body);
    if form.get("grant_type").map(String::as_str) != Some(JWT_BEARER_GRANT) {
        return invalid("grant_type is not jwt-bearer");
    }
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    let Ok((jwt_header, claims)) = verify_jwt(
        &assertion,
        &RSA_PKCS1_2048_8192_SHA256,
        &expected.public_key,
    ) else {
        return invalid("Invalid JWT Signature.");
    };
    if jwt_header["alg"] != "RS256" {
        return invalid("the assertion is not RS256");
    }
    if claims["iss"] != expected.client_email.as_str() {
        return invalid("iss is not the service account");
    }
    if claims["aud"] != expected.token_uri.as_str() {
        return invalid("aud is not the token URI");
    }
    let scopes = claims["scope"].as_str().unwrap_or_default();
    if !scopes.split(' ').any(|scope| scope == FCM_SCOPE) {
        return invalid("the assertion does not ask for firebase.messaging");
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
        return invalid("iat and exp are required");
    };
    let now = crate::jwt::unix_seconds((expected.clock)());
    if exp <= iat || exp - iat > ASSERTION_LIFETIME_S_MAX || exp <= now || iat > now + 300 {
        return invalid(
            "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe",
        );
    }
    let access_token = format!("ya29.test-{}", base64url(&random_bytes(24)));
    let mut state = lock(state);
    state.issued.insert(access_token.clone());
    state.assertions += 1;
    let body = serde_json::json!({
        "access_token": access_token,
        "expires_in": ACCESS_TOKEN_LIFETIME_S,
        "token_type": "Bearer",
    });
    respond(
        200,
        &[("content-type", "application/json".to_owned())],
        body.to_string(),
    )
}

fn send(
    parts: &http::request::Parts,
    body: &[u8],
    state: &Mutex<State>,
    expected: &Expected,
) -> Response<Full<Bytes>> {
    let access_token = header(parts, "authorization")
        .and_then(|value| value.strip_prefix("Bearer ").map(str::to_owned))
        .unwrap_or_default();
    if !lock(state).issued.contains(&access_token) {
        return refuse(
            state,
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        );
    }
    let Ok(message) = serde_json::from_slice::<serde_json::Value>(body) else {
        return refuse(state, 400, "INVALID_ARGUMENT", "the body is not JSON");
    };
    let Some(token) = message["message"]["token"].as_str().map(str::to_owned) else {
        return refuse(state, 400, "INVALID_ARGUMENT", "message.token is required");
    };
    let behaviour = lock(state)
        .behaviours
        .get(&token)
        .copied()
        .unwrap_or_default();
    match behaviour {
        FcmBehaviour::Accept => {}
        FcmBehaviour::Unregistered => {
            return fcm_error(
                state,
                404,
                "NOT_FOUND",
                "UNREGISTERED",
                "Requested entity was not found.",
                &[],
            );
        }
        FcmBehaviour::InvalidToken => {
            return fcm_error(
                state,
                400,
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                &[],
            );
        }
        FcmBehaviour::Throttle { retry_after_s } => {
            return fcm_error(
                state,
                429,
                "RESOURCE_EXHAUSTED",
                "QUOTA_EXCEEDED",
                "Quota exceeded for this project.",
                &[("retry-after", retry_after_s.to_string())],
            );
        }
    }
    let mut state = lock(state);
    state.received.push(ReceivedFcm {
        token,
        body: message,
        access_token,
    });
    let name = format!(
        "projects/{}/messages/{}",
        expected.project_id,
        state.received.len()
    );
    respond(200, &[], serde_json::json!({ "name": name }).to_string())
}

fn refuse(state: &Mutex<State>, status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    fcm_error(state, status, code, code, message, &[])
}

/// A Google API error body, with an FCM error code in its details.
fn fcm_error(
    state: &Mutex<State>,
    status: u16,
    status_text: &str,
    error_code: &str,
    message: &str,
    headers: &[(&str, String)],
) -> Response<Full<Bytes>> {
    tracing::debug!(
        status,
        error_code,
        message,
        "the loopback FCM endpoint refused a request"
    );
    lock(state).refused.push((status, error_code.to_owned()));
    let body = serde_json::json!({
        "error": {
            "code": status,
            "message": message,
            "status": status_text,
            "details": [{
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": error_code,
            }],
        }
    });
    respond(status, headers, body.to_string())
}

/// An `application/x-www-form-urlencoded` body as a map.
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (percent_decode(key), percent_decode(value)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'+' => out.push(b' '),
            b'%' if at + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[at + 1..at + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        at += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        let form = parse_form(b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c&x=1+2%");
        assert_eq!(form["grant_type"], JWT_BEARER_GRANT);
        assert_eq!(form["assertion"], "a.b.c");
        assert_eq!(form["x"], "1 2%");
    }
}
