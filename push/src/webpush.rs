//! WebPush: RFC 8030 delivery of an RFC 8291 (aes128gcm) encrypted wake, identified by an
//! RFC 8292 VAPID token.
//!
//! `web-push-native` encrypts the body and builds the request (`TTL`, `Content-Encoding:
//! aes128gcm`); this module adds the VAPID `Authorization: vapid t=…, k=…` (signed here with
//! ring: the crate's own VAPID support would bring a second signature stack), `Urgency: high`
//! and `Topic`, so a push service holding an undelivered wake replaces it with the newer one.
//! The VAPID `aud` is the endpoint's origin including a non-default port.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::Full;
use web_push_native::{Auth, WebPushBuilder, p256};

use crate::config::{WebPushConfig, read_secret};
use crate::http::{HttpsClient, body, status_error};
use crate::jwt::{Es256Key, base64url, base64url_decode, unix_seconds};
use crate::limits::{VAPID_ORIGINS_CACHED_MAX, VAPID_TOKEN_REUSE_S, VAPID_TOKEN_VALIDITY_S};
use crate::registration::WebPushSubscription;
use crate::wake::{WAKE_COLLAPSE_KEY, WEBPUSH_WAKE_PLAINTEXT};
use crate::{
    Delivered, PushError, PushFuture, PushProvider, PushRegistration, Wake, WallClock, system_clock,
};

/// A VAPID key pair (P-256), which identifies the region to push services.
#[derive(Debug)]
pub struct VapidKey {
    key: Es256Key,
}

/// A freshly generated VAPID key, printable for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedVapidKey {
    /// The private key as PKCS#8 PEM: what `vapid_private_key_file` holds.
    pub private_key_pem: String,
    /// The public key, uncompressed and base64url: the web client's `applicationServerKey`.
    pub public_key_base64url: String,
}

/// Generates a VAPID key for `relayd` to print.
pub fn generate_vapid_key() -> Result<GeneratedVapidKey, PushError> {
    let der = Es256Key::generate_pkcs8()?;
    let key = Es256Key::from_pkcs8(&der, "a generated VAPID key")?;
    Ok(GeneratedVapidKey {
        private_key_pem: pem("PRIVATE KEY", &der),
        public_key_base64url: base64url(key.public_key()),
    })
}

impl VapidKey {
    /// A new random key.
    pub fn generate() -> Result<Self, PushError> {
        Self::from_text(&generate_vapid_key()?.private_key_pem)
    }

    /// The key in `text`: PKCS#8 PEM, or a raw 32-byte private scalar in base64url (what the
    /// `web-push` tools print).
    pub fn from_text(text: &str) -> Result<Self, PushError> {
        const WHAT: &str = "the VAPID private key";
        if text.contains("-----BEGIN") {
            let der = crate::jwt::pkcs8_der_from_pem(text, WHAT)?;
            return Ok(VapidKey {
                key: Es256Key::from_pkcs8(&der, WHAT)?,
            });
        }
        let scalar = base64url_decode(text).map_err(|_| {
            PushError::Config(format!("{WHAT} is neither PKCS#8 PEM nor base64url"))
        })?;
        let secret = p256::SecretKey::from_slice(&scalar).map_err(|_| {
            PushError::Config(format!("{WHAT} is not a 32-byte P-256 private scalar"))
        })?;
        let public = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
            &secret.public_key(),
            false,
        );
        Ok(VapidKey {
            key: Es256Key::from_scalar(&scalar, public.as_bytes(), WHAT)?,
        })
    }

    /// The key in the file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, PushError> {
        Self::from_text(&read_secret(path, "vapid_private_key_file")?)
    }

    /// The public key, uncompressed (65 bytes).
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key()
    }

    /// The public key in base64url: the web client's `applicationServerKey`.
    pub fn public_key_base64url(&self) -> String {
        base64url(self.key.public_key())
    }

    /// The `Authorization` header value for a push to `origin`, valid until `now + validity`.
    fn authorization(
        &self,
        origin: &str,
        contact: &str,
        now_s: u64,
    ) -> Result<HeaderValue, PushError> {
        let header = serde_json::json!({ "typ": "JWT", "alg": "ES256" });
        let claims = serde_json::json!({
            "aud": origin,
            "exp": now_s + VAPID_TOKEN_VALIDITY_S,
            "sub": contact,
        });
        let token = self.key.sign_jwt(&header, &claims)?;
        HeaderValue::try_from(format!(
            "vapid t={token}, k={}",
            self.public_key_base64url()
        ))
        .map_err(|error| PushError::Config(format!("the VAPID header: {error}")))
    }
}

/// Delivers wakes to WebPush subscriptions.
pub struct WebPushProvider {
    vapid: VapidKey,
    contact: String,
    client: HttpsClient,
    clock: WallClock,
    /// Signed `Authorization` headers by push service origin, with when each was signed: one
    /// signature serves every push to an origin for [`VAPID_TOKEN_REUSE_S`] (RFC 8292 lets a
    /// token be reused until it expires).
    authorizations: std::sync::Mutex<std::collections::HashMap<String, (HeaderValue, u64)>>,
}

impl std::fmt::Debug for WebPushProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPushProvider")
            .field("vapid", &self.vapid.public_key_base64url())
            .field("contact", &self.contact)
            .finish_non_exhaustive()
    }
}

impl WebPushProvider {
    /// A provider signing with `vapid`, naming `contact` (`mailto:` or `https:`), sending
    /// through `client`.
    pub fn new(vapid: VapidKey, contact: &str, client: HttpsClient) -> Result<Self, PushError> {
        if !(contact.starts_with("mailto:") || contact.starts_with("https:")) {
            return Err(PushError::Config(format!(
                "the VAPID contact must be a mailto: or https: URI, not {contact:?}"
            )));
        }
        Ok(WebPushProvider {
            vapid,
            contact: contact.to_owned(),
            client,
            clock: system_clock(),
            authorizations: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The provider `config` describes.
    pub fn from_config(config: &WebPushConfig, client: HttpsClient) -> Result<Self, PushError> {
        let vapid = VapidKey::from_file(&config.vapid_private_key_file)?;
        Self::new(vapid, &config.contact, client)
    }

    /// The same provider reading time from `clock`.
    pub fn with_clock(mut self, clock: WallClock) -> Self {
        self.clock = clock;
        self
    }

    /// The VAPID public key push services will see.
    pub fn vapid_public_key(&self) -> &[u8] {
        self.vapid.public_key()
    }

    /// The HTTP request that delivers `wake` to `subscription`: encrypted, signed, headed.
    pub fn request(
        &self,
        subscription: &WebPushSubscription,
        wake: &Wake,
    ) -> Result<Request<Full<Bytes>>, PushError> {
        let browser_key = p256::PublicKey::from_sec1_bytes(subscription.p256dh())
            .map_err(|_| PushError::Config("the subscription's p256dh key is invalid".into()))?;
        let request = WebPushBuilder::new(
            subscription.endpoint().clone(),
            browser_key,
            Auth::clone_from_slice(subscription.auth()),
        )
        .with_valid_duration(wake.time_to_live())
        .build(WEBPUSH_WAKE_PLAINTEXT)
        .map_err(|error| PushError::Config(format!("encrypting the wake: {error}")))?;
        let (mut parts, encrypted) = request.into_parts();
        let now_s = unix_seconds((self.clock)());
        let authorization = self.authorization(&subscription.origin(), now_s)?;
        parts
            .headers
            .insert(http::header::AUTHORIZATION, authorization);
        parts
            .headers
            .insert("urgency", HeaderValue::from_static("high"));
        parts
            .headers
            .insert("topic", HeaderValue::from_static(WAKE_COLLAPSE_KEY));
        Ok(Request::from_parts(parts, body(encrypted)))
    }

    /// The `Authorization` header for `origin` at `now_s`: the one signed for it less than
    /// [`VAPID_TOKEN_REUSE_S`] ago, else a new one.
    fn authorization(&self, origin: &str, now_s: u64) -> Result<HeaderValue, PushError> {
        let mut cached = self
            .authorizations
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some((header, signed_s)) = cached.get(origin)
            && now_s >= *signed_s
            && now_s - signed_s < VAPID_TOKEN_REUSE_S
        {
            return Ok(header.clone());
        }
        let header = self.vapid.authorization(origin, &self.contact, now_s)?;
        if cached.len() >= VAPID_ORIGINS_CACHED_MAX {
            cached.clear();
        }
        cached.insert(origin.to_owned(), (header.clone(), now_s));
        Ok(header)
    }

    async fn deliver(
        &self,
        subscription: &WebPushSubscription,
        wake: &Wake,
    ) -> Result<Delivered, PushError> {
        let request = self.request(subscription, wake)?;
        let reply = self.client.send(request).await?;
        let status = reply.status.as_u16();
        if reply.status.is_success() {
            return Ok(Delivered {
                status,
                message_id: reply.header("location"),
            });
        }
        let reason = match reply.body_text() {
            text if text.is_empty() => reply
                .status
                .canonical_reason()
                .unwrap_or("no reason")
                .to_owned(),
            text => text,
        };
        let error = status_error(&reply, reason, (self.clock)());
        tracing::debug!(%error, endpoint = %subscription.origin(), "a WebPush wake was not delivered");
        Err(error)
    }
}

impl PushProvider for WebPushProvider {
    fn send<'a>(&'a self, target: &'a PushRegistration, wake: &'a Wake) -> PushFuture<'a> {
        Box::pin(async move {
            match target {
                PushRegistration::WebPush(subscription) => self.deliver(subscription, wake).await,
                other => Err(PushError::Config(format!(
                    "the WebPush provider was given a {} registration",
                    other.kind()
                ))),
            }
        })
    }
}

/// `der` as PEM with `label`, 64 characters a line.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let encoded = STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_reads_back_from_pem_and_a_raw_scalar_gives_the_same_public_key() {
        let generated = generate_vapid_key().expect("a key");
        let key = VapidKey::from_text(&generated.private_key_pem).expect("reads back");
        assert_eq!(key.public_key_base64url(), generated.public_key_base64url);
        assert_eq!(key.public_key().len(), 65);

        // The RFC 8291 example's application server key, as a raw scalar.
        let raw = VapidKey::from_text("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")
            .expect("a raw scalar");
        assert_eq!(
            raw.public_key_base64url(),
            "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
        );
        assert!(matches!(
            VapidKey::from_text("not a key"),
            Err(PushError::Config(_))
        ));
        assert!(matches!(
            VapidKey::from_text("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"),
            Err(PushError::Config(message)) if message.contains("pkcs8")
        ));
    }
}
