//! Loopback push services for tests (feature `test-endpoints`): a WebPush push service, an
//! APNs endpoint and an FCM token and send endpoint, each on 127.0.0.1 port 0 over TLS with an
//! rcgen self-signed certificate, and each verifying what the real service verifies.
//!
//! - [`WebPushTestService`]: RFC 8030 `POST /push/<id>`; checks the VAPID header (ES256
//!   signature against `k`, `aud` = its origin, `exp` within 24 h, `k` = the key the
//!   subscription was made with), `Content-Encoding: aes128gcm`, `TTL`, `Urgency`, `Topic`;
//!   decrypts the body with the subscription's private key and auth secret (RFC 8291) and
//!   records the plaintext; answers 201, or 410 / 429 with `Retry-After` as told.
//! - [`ApnsTestService`]: HTTP/2 only (ALPN h2); checks the provider token (ES256 against the
//!   team's public key, `kid`, `iss`, `iat` age), `apns-*` headers and the payload; answers
//!   200, 410 `Unregistered`, 400 `BadDeviceToken` or 429 as told.
//! - [`FcmTestService`]: `POST /token` checks the RS256 assertion against the service
//!   account's public key and issues a bearer token; `POST /v1/projects/<p>/messages:send`
//!   checks it and the message; answers 200, 404 `UNREGISTERED`, 400 `INVALID_ARGUMENT` or
//!   429 as told.
//!
//! Clients reach them with [`LoopbackTls::trust_roots`] (or `ca_file` =
//! [`LoopbackTls::certificate_pem`]) and registrations parsed with
//! [`RegistrationPolicy::LOOPBACK_TESTS`](crate::RegistrationPolicy::LOOPBACK_TESTS).
//! A service stops when its handle is dropped.

mod apns;
mod bench;
mod fcm;
mod webpush;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::rand::SecureRandom as _;
use ring::signature::{UnparsedPublicKey, VerificationAlgorithm};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use apns::{ApnsBehaviour, ApnsTestKey, ApnsTestService, ReceivedApns};
pub use bench::{BenchReport, bench_webpush};
pub use fcm::{FcmBehaviour, FcmTestService, ReceivedFcm, fcm_test_key_pem, rsa_public_key};
pub use webpush::{ReceivedWebPush, WebPushBehaviour, WebPushTestService, verify_vapid};

use crate::http::{HttpVersions, HttpsClient, TrustRoots};
use crate::jwt::base64url_decode;

/// A self-signed certificate for `localhost` and 127.0.0.1, and the server side of TLS.
#[derive(Clone)]
pub struct LoopbackTls {
    certificate: CertificateDer<'static>,
    certificate_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for LoopbackTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopbackTls").finish_non_exhaustive()
    }
}

impl LoopbackTls {
    /// A fresh certificate and key.
    pub fn new() -> Result<Self, String> {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .map_err(|error| format!("a test certificate: {error}"))?;
        let certificate = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS versions: {error}"))?
        .with_no_client_auth()
        .with_single_cert(vec![certificate.clone()], key)
        .map_err(|error| format!("the test certificate: {error}"))?;
        Ok(LoopbackTls {
            certificate,
            certificate_pem: certified.cert.pem(),
            server: Arc::new(server),
        })
    }

    /// Roots trusting only this certificate.
    pub fn trust_roots(&self) -> TrustRoots {
        TrustRoots::only([self.certificate.clone()])
    }

    /// The certificate as PEM, for a `ca_file`.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// A client trusting this certificate.
    pub fn client(&self, versions: HttpVersions) -> Result<HttpsClient, crate::PushError> {
        HttpsClient::new(&self.trust_roots(), versions, Duration::from_secs(30))
    }
}

/// A request handler of a loopback service.
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// A listening service; it stops accepting when dropped.
struct Server {
    address: SocketAddr,
    accept: tokio::task::AbortHandle,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Serves `handler` on 127.0.0.1 port 0 over `tls`; HTTP/2 only when `h2_only`.
async fn serve(tls: &LoopbackTls, h2_only: bool, handler: Handler) -> std::io::Result<Server> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let mut config = (*tls.server).clone();
    config.alpn_protocols = if h2_only {
        vec![b"h2".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "a loopback push service could not accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                let service = service_fn(move |request| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(request).await) }
                });
                let io = TokioIo::new(stream);
                let served = if h2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else if h2_only {
                    // APNs speaks HTTP/2 only: a client that did not negotiate h2 gets nothing.
                    return;
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                };
                if let Err(error) = served {
                    tracing::debug!(%error, "a loopback push connection ended");
                }
            });
        }
    });
    Ok(Server {
        address,
        accept: task.abort_handle(),
    })
}

/// A response of `status` with `headers` and `body`.
fn respond(
    status: u16,
    headers: &[(&str, String)],
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// A request's body, at most `max` bytes.
async fn read_body(
    request: Request<Incoming>,
    max: usize,
) -> Result<(http::request::Parts, Bytes), String> {
    let (parts, body) = request.into_parts();
    let bytes = Limited::new(body, max)
        .collect()
        .await
        .map_err(|error| format!("the body: {error}"))?
        .to_bytes();
    Ok((parts, bytes))
}

/// A header as text.
fn header(parts: &http::request::Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// Verifies a compact JWT's signature with `public_key` and returns its header and claims.
pub fn verify_jwt(
    token: &str,
    algorithm: &'static dyn VerificationAlgorithm,
    public_key: &[u8],
) -> Result<(serde_json::Value, serde_json::Value), String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err("a JWT has three parts".into());
    };
    let signed = &token[..header.len() + 1 + claims.len()];
    let signature = base64url_decode(signature).map_err(|_| "the signature is not base64url")?;
    UnparsedPublicKey::new(algorithm, public_key)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| "the JWT signature does not verify".to_owned())?;
    let json = |part: &str, what: &str| -> Result<serde_json::Value, String> {
        let bytes = base64url_decode(part).map_err(|_| format!("the {what} is not base64url"))?;
        serde_json::from_slice(&bytes).map_err(|_| format!("the {what} is not JSON"))
    };
    Ok((json(header, "header")?, json(claims, "claims")?))
}

/// Seconds since the Unix epoch now.
fn now_s() -> u64 {
    crate::jwt::unix_seconds(SystemTime::now())
}

/// `count` random bytes.
fn random_bytes(count: usize) -> Vec<u8> {
    let mut bytes = vec![0; count];
    // The system's random source failing is not something a test can work around.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    bytes
}

/// Locks a service's state; a panicked handler's state is still readable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
