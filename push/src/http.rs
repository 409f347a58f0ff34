//! The HTTPS client every provider sends through: hyper 1 over the workspace's rustls with the
//! ring provider, HTTPS only, HTTP/1.1 and HTTP/2 by ALPN (HTTP/2 only for APNs), a timeout on
//! every request and a bound on every response body.
//!
//! It trusts the system's roots plus any extra certificate named in the configuration
//! (`ca_file`), which is how tests reach loopback endpoints with self-signed certificates.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::limits::{PUSH_RESPONSE_BYTES_MAX, PUSH_RETRY_AFTER_MS_MAX};
use crate::{PushConfig, PushError};

/// The certificates a client trusts.
#[derive(Debug, Clone, Default)]
pub struct TrustRoots {
    system: bool,
    extra: Vec<CertificateDer<'static>>,
}

impl TrustRoots {
    /// The system's roots (as `rustls-native-certs` finds them).
    pub fn system() -> Self {
        TrustRoots {
            system: true,
            extra: Vec::new(),
        }
    }

    /// Only the given certificates (tests: a loopback endpoint's self-signed certificate).
    pub fn only(certificates: impl IntoIterator<Item = CertificateDer<'static>>) -> Self {
        TrustRoots {
            system: false,
            extra: certificates.into_iter().collect(),
        }
    }

    /// These roots plus `certificate`.
    pub fn with(mut self, certificate: CertificateDer<'static>) -> Self {
        self.extra.push(certificate);
        self
    }

    /// The system's roots plus the PEM certificates in `config.ca_file`, if any.
    pub fn from_config(config: &PushConfig) -> Result<Self, PushError> {
        let mut roots = TrustRoots::system();
        if let Some(path) = &config.ca_file {
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
                .map_err(|error| {
                    PushError::Config(format!("ca_file {}: {error}", path.display()))
                })?;
            if certificates.is_empty() {
                return Err(PushError::Config(format!(
                    "ca_file {} holds no PEM certificate",
                    path.display()
                )));
            }
            roots.extra.extend(certificates);
        }
        Ok(roots)
    }

    fn store(&self) -> Result<rustls::RootCertStore, PushError> {
        let mut store = rustls::RootCertStore::empty();
        if self.system {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "a system root certificate could not be read");
            }
            let (added, ignored) = store.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "system root certificates");
        }
        for certificate in &self.extra {
            store
                .add(certificate.clone())
                .map_err(|error| PushError::Config(format!("an extra CA certificate: {error}")))?;
        }
        if store.is_empty() {
            return Err(PushError::Config(
                "no trusted root certificate: the system has none and no ca_file is given".into(),
            ));
        }
        Ok(store)
    }
}

/// Which HTTP versions a client offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersions {
    /// HTTP/2 or HTTP/1.1, as the server picks (WebPush, FCM).
    Any,
    /// HTTP/2 only (APNs refuses anything else).
    Http2Only,
}

/// A pooled HTTPS client with a per-request timeout.
#[derive(Clone)]
pub struct HttpsClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A response, its body read in full (at most [`PUSH_RESPONSE_BYTES_MAX`]).
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    /// The body as text for an error message, cut to a readable length.
    pub(crate) fn body_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(200).collect()
    }

    /// The `Retry-After` header as a delay from `now` (seconds or an HTTP date), bounded.
    pub(crate) fn retry_after(&self, now: SystemTime) -> Option<Duration> {
        let value = self.headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
        parse_retry_after(value, now)
    }

    /// The header `name` as text, if present and printable.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    }
}

/// A `Retry-After` value (RFC 9110 §10.2.3: delay-seconds or an HTTP date) as a delay from
/// `now`, cut to [`PUSH_RETRY_AFTER_MS_MAX`]; `None` if unreadable.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(Duration::from_millis(PUSH_RETRY_AFTER_MS_MAX)))
}

impl HttpsClient {
    /// A client trusting `roots`, offering `versions`, giving each request `timeout`.
    pub fn new(
        roots: &TrustRoots,
        versions: HttpVersions,
        timeout: Duration,
    ) -> Result<Self, PushError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| PushError::Config(format!("TLS: {error}")))?
            .with_root_certificates(roots.store()?)
            .with_no_client_auth();
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let mut connector_http = HttpConnector::new();
        connector_http.enforce_http(false);
        connector_http.set_connect_timeout(Some(timeout));
        connector_http.set_nodelay(true);
        let mut client = Client::builder(TokioExecutor::new());
        client.pool_idle_timeout(Duration::from_secs(90));
        let connector = match versions {
            HttpVersions::Any => builder.enable_all_versions().wrap_connector(connector_http),
            HttpVersions::Http2Only => {
                client.http2_only(true);
                builder.enable_http2().wrap_connector(connector_http)
            }
        };
        Ok(HttpsClient {
            client: client.build(connector),
            timeout,
        })
    }

    /// Sends `request` and reads the response, within the client's timeout.
    pub(crate) async fn send(&self, request: Request<Full<Bytes>>) -> Result<Reply, PushError> {
        let uri = request.uri().clone();
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| PushError::Transport(format!("{uri}: {}", chain(&error))))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, PUSH_RESPONSE_BYTES_MAX)
                .collect()
                .await
                .map_err(|error| {
                    PushError::Transport(format!("{uri}: reading the response: {error}"))
                })?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                PushError::Transport(format!("{uri}: no response within {:?}", self.timeout))
            })?
    }
}

/// An error and its sources, one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A request body of `bytes`.
pub(crate) fn body(bytes: impl Into<Bytes>) -> Full<Bytes> {
    Full::new(bytes.into())
}

/// The error a status outside 2xx means, by the rules all three services share: 404/410 gone,
/// 429/5xx throttled (with `Retry-After`), other 4xx rejected. Providers map their own
/// reasons (a bad token is gone, an expired provider token is throttled) before this.
pub(crate) fn status_error(reply: &Reply, reason: String, now: SystemTime) -> PushError {
    let status = reply.status.as_u16();
    match status {
        404 | 410 => PushError::Gone { status, reason },
        429 | 500..=599 => PushError::Throttled {
            status,
            retry_after: reply.retry_after(now),
            reason,
        },
        _ => PushError::Rejected { status, reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_bounded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999", now),
            Some(Duration::from_millis(PUSH_RETRY_AFTER_MS_MAX))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
