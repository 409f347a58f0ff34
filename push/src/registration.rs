//! A device's push registration: parsed from what the device sends, stored compactly by the
//! region, and read back through the same checks.
//!
//! **Kinds.** A WebPush subscription (a browser's `PushSubscription`: endpoint URL, `p256dh`
//! public key, `auth` secret), an APNs device token (hex), an FCM registration token.
//!
//! **Checks.** The endpoint is the region's outgoing request to a URL a device chose, so it is
//! held to HTTPS and, unless [`RegistrationPolicy::allow_private_hosts`], to a public host: a
//! loopback, private, link-local or unspecified IP literal and `localhost` are refused, so a
//! device cannot aim the region at its own network. (A public name that resolves to a private
//! address is not caught here; deployments that care route pushes through an egress proxy.)
//! Keys have their exact RFC 8291 lengths and the `p256dh` point must be on the curve; tokens
//! have bounded lengths and a plain alphabet.
//!
//! **Encoding.** [`PushRegistration::encode`]: a version byte (1), a kind byte (1 WebPush,
//! 2 APNs, 3 FCM), then the kind's fields, variable-length ones behind a big-endian `u16`
//! length. [`PushRegistration::decode`] parses all of it again with the given policy. A new
//! field means a new version byte; a version is never reused.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use web_push_native::p256;

use crate::jwt::{base64url, base64url_decode};
use crate::limits::{
    APNS_TOKEN_BYTES_MAX, APNS_TOKEN_BYTES_MIN, FCM_TOKEN_BYTES_MAX, WEBPUSH_AUTH_BYTES,
    WEBPUSH_ENDPOINT_BYTES_MAX, WEBPUSH_P256DH_BYTES,
};

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// The WebPush endpoint is not a usable URL.
    #[error("the WebPush endpoint is not a URL with a host: {0}")]
    BadUrl(String),
    /// The WebPush endpoint is not HTTPS.
    #[error("the WebPush endpoint must be https, not {0}")]
    NotHttps(String),
    /// The WebPush endpoint names a loopback, private or local host.
    #[error("the WebPush endpoint names a local or private host ({0})")]
    PrivateHost(String),
    /// A field is longer than its limit.
    #[error("the {what} is {bytes} bytes, more than the {max} allowed")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A field has the wrong length.
    #[error("the {what} is {bytes} bytes, not {expected}")]
    WrongLength {
        /// Which field.
        what: &'static str,
        /// Its length.
        bytes: usize,
        /// The length it must have.
        expected: &'static str,
    },
    /// A field is not the encoding it must be (base64url, hex, the token alphabet).
    #[error("the {what} is not valid {encoding}")]
    BadEncoding {
        /// Which field.
        what: &'static str,
        /// The encoding it must be in.
        encoding: &'static str,
    },
    /// The `p256dh` key is not a point on P-256.
    #[error("the WebPush p256dh key is not a P-256 public key")]
    BadKey,
    /// Stored bytes are not a registration this version can read.
    #[error("a stored push registration is unreadable: {0}")]
    Stored(String),
}

/// What a registration may name beyond the production rules; tests loosen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationPolicy {
    /// Accept `http:` WebPush endpoints (never in production).
    pub allow_http: bool,
    /// Accept loopback, private and local hosts (never in production).
    pub allow_private_hosts: bool,
}

impl RegistrationPolicy {
    /// HTTPS to public hosts only.
    pub const PRODUCTION: RegistrationPolicy = RegistrationPolicy {
        allow_http: false,
        allow_private_hosts: false,
    };
    /// HTTPS, to loopback too: the loopback test endpoints.
    pub const LOOPBACK_TESTS: RegistrationPolicy = RegistrationPolicy {
        allow_http: false,
        allow_private_hosts: true,
    };
}

impl Default for RegistrationPolicy {
    fn default() -> Self {
        RegistrationPolicy::PRODUCTION
    }
}

/// A device's push registration, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PushRegistration {
    /// A browser's WebPush subscription.
    WebPush(WebPushSubscription),
    /// An APNs device token.
    Apns(ApnsToken),
    /// An FCM registration token.
    Fcm(FcmToken),
}

/// A WebPush subscription: where to POST, and the keys to encrypt to (RFC 8291).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WebPushSubscription {
    endpoint: http::Uri,
    p256dh: [u8; WEBPUSH_P256DH_BYTES],
    auth: [u8; WEBPUSH_AUTH_BYTES],
}

impl WebPushSubscription {
    /// The push resource URL.
    pub fn endpoint(&self) -> &http::Uri {
        &self.endpoint
    }

    /// The browser's P-256 public key, uncompressed.
    pub fn p256dh(&self) -> &[u8; WEBPUSH_P256DH_BYTES] {
        &self.p256dh
    }

    /// The browser's authentication secret.
    pub fn auth(&self) -> &[u8; WEBPUSH_AUTH_BYTES] {
        &self.auth
    }

    /// The endpoint's origin (`https://host[:port]`): a VAPID token's `aud`.
    pub fn origin(&self) -> String {
        origin(&self.endpoint)
    }
}

/// An APNs device token (its raw bytes; hex on the wire to Apple).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ApnsToken(Vec<u8>);

impl ApnsToken {
    /// The token as lowercase hex, as it goes into the request path.
    pub fn hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

/// An FCM registration token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FcmToken(String);

impl FcmToken {
    /// The token as FCM issued it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The origin of `uri`: scheme, host and a non-default port.
pub(crate) fn origin(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https");
    let host = uri.host().unwrap_or("");
    match uri.port_u16() {
        Some(port) if !(scheme == "https" && port == 443 || scheme == "http" && port == 80) => {
            format!("{scheme}://{host}:{port}")
        }
        _ => format!("{scheme}://{host}"),
    }
}

const ENCODING_VERSION: u8 = 1;
const KIND_WEBPUSH: u8 = 1;
const KIND_APNS: u8 = 2;
const KIND_FCM: u8 = 3;

impl PushRegistration {
    /// A WebPush subscription from its endpoint and base64url `p256dh` and `auth` keys.
    pub fn parse_webpush(
        endpoint: &str,
        p256dh: &str,
        auth: &str,
        policy: RegistrationPolicy,
    ) -> Result<Self, RegistrationError> {
        let endpoint = parse_endpoint(endpoint, policy)?;
        let p256dh_bytes = decode_key(p256dh, "WebPush p256dh key")?;
        let auth_bytes = decode_key(auth, "WebPush auth secret")?;
        Self::webpush_from_parts(endpoint, &p256dh_bytes, &auth_bytes)
    }

    /// A WebPush subscription from a browser's `JSON.stringify(pushSubscription)`:
    /// `{"endpoint": …, "keys": {"p256dh": …, "auth": …}}` (other fields ignored).
    pub fn parse_webpush_json(
        json: &str,
        policy: RegistrationPolicy,
    ) -> Result<Self, RegistrationError> {
        #[derive(Deserialize)]
        struct Keys {
            p256dh: String,
            auth: String,
        }
        #[derive(Deserialize)]
        struct Subscription {
            endpoint: String,
            keys: Keys,
        }
        if json.len() > WEBPUSH_ENDPOINT_BYTES_MAX * 2 {
            return Err(RegistrationError::TooLong {
                what: "WebPush subscription JSON",
                bytes: json.len(),
                max: WEBPUSH_ENDPOINT_BYTES_MAX * 2,
            });
        }
        let subscription: Subscription =
            serde_json::from_str(json).map_err(|_| RegistrationError::BadEncoding {
                what: "WebPush subscription",
                encoding: "PushSubscription JSON",
            })?;
        Self::parse_webpush(
            &subscription.endpoint,
            &subscription.keys.p256dh,
            &subscription.keys.auth,
            policy,
        )
    }

    /// An APNs device token from its hex form.
    pub fn parse_apns(token_hex: &str) -> Result<Self, RegistrationError> {
        let token_hex = token_hex.trim();
        if token_hex.len() > APNS_TOKEN_BYTES_MAX * 2 {
            return Err(RegistrationError::TooLong {
                what: "APNs device token",
                bytes: token_hex.len() / 2,
                max: APNS_TOKEN_BYTES_MAX,
            });
        }
        let bad_hex = RegistrationError::BadEncoding {
            what: "APNs device token",
            encoding: "hex",
        };
        if !token_hex.len().is_multiple_of(2) {
            return Err(bad_hex);
        }
        let bytes = (0..token_hex.len())
            .step_by(2)
            .map(|at| {
                token_hex
                    .get(at..at + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or(bad_hex)?;
        Self::apns_from_bytes(bytes)
    }

    /// An FCM registration token.
    pub fn parse_fcm(token: &str) -> Result<Self, RegistrationError> {
        let token = token.trim();
        if token.len() > FCM_TOKEN_BYTES_MAX {
            return Err(RegistrationError::TooLong {
                what: "FCM token",
                bytes: token.len(),
                max: FCM_TOKEN_BYTES_MAX,
            });
        }
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.');
        if token.is_empty() || !token.chars().all(plain) {
            return Err(RegistrationError::BadEncoding {
                what: "FCM token",
                encoding: "token text (letters, digits, - _ : .)",
            });
        }
        Ok(PushRegistration::Fcm(FcmToken(token.to_owned())))
    }

    /// The registration as compact bytes for the region's store.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENCODING_VERSION];
        match self {
            PushRegistration::WebPush(subscription) => {
                out.push(KIND_WEBPUSH);
                put_field(&mut out, subscription.endpoint.to_string().as_bytes());
                out.extend_from_slice(&subscription.p256dh);
                out.extend_from_slice(&subscription.auth);
            }
            PushRegistration::Apns(token) => {
                out.push(KIND_APNS);
                put_field(&mut out, &token.0);
            }
            PushRegistration::Fcm(token) => {
                out.push(KIND_FCM);
                put_field(&mut out, token.0.as_bytes());
            }
        }
        out
    }

    /// Reads bytes [`encode`](Self::encode) wrote, with every check of parsing.
    pub fn decode(bytes: &[u8], policy: RegistrationPolicy) -> Result<Self, RegistrationError> {
        let mut reader = Reader(bytes);
        let version = reader.byte()?;
        if version != ENCODING_VERSION {
            return Err(RegistrationError::Stored(format!(
                "encoding version {version}"
            )));
        }
        let registration = match reader.byte()? {
            KIND_WEBPUSH => {
                let endpoint = reader.field()?;
                let endpoint = std::str::from_utf8(endpoint)
                    .map_err(|_| RegistrationError::Stored("an endpoint not in UTF-8".into()))?;
                let endpoint = parse_endpoint(endpoint, policy)?;
                let p256dh = reader.take(WEBPUSH_P256DH_BYTES)?;
                let auth = reader.take(WEBPUSH_AUTH_BYTES)?;
                Self::webpush_from_parts(endpoint, p256dh, auth)?
            }
            KIND_APNS => Self::apns_from_bytes(reader.field()?.to_vec())?,
            KIND_FCM => {
                let token = std::str::from_utf8(reader.field()?)
                    .map_err(|_| RegistrationError::Stored("a token not in UTF-8".into()))?;
                Self::parse_fcm(token)?
            }
            kind => return Err(RegistrationError::Stored(format!("kind {kind}"))),
        };
        if !reader.0.is_empty() {
            return Err(RegistrationError::Stored(format!(
                "{} bytes after the registration",
                reader.0.len()
            )));
        }
        Ok(registration)
    }

    /// The kind, for logs and configuration messages: `webpush`, `apns` or `fcm`.
    pub fn kind(&self) -> &'static str {
        match self {
            PushRegistration::WebPush(_) => "webpush",
            PushRegistration::Apns(_) => "apns",
            PushRegistration::Fcm(_) => "fcm",
        }
    }

    fn webpush_from_parts(
        endpoint: http::Uri,
        p256dh: &[u8],
        auth: &[u8],
    ) -> Result<Self, RegistrationError> {
        let p256dh: [u8; WEBPUSH_P256DH_BYTES] =
            p256dh
                .try_into()
                .map_err(|_| RegistrationError::WrongLength {
                    what: "WebPush p256dh key",
                    bytes: p256dh.len(),
                    expected: "65 (an uncompressed P-256 point)",
                })?;
        let auth: [u8; WEBPUSH_AUTH_BYTES] =
            auth.try_into()
                .map_err(|_| RegistrationError::WrongLength {
                    what: "WebPush auth secret",
                    bytes: auth.len(),
                    expected: "16",
                })?;
        p256::PublicKey::from_sec1_bytes(&p256dh).map_err(|_| RegistrationError::BadKey)?;
        Ok(PushRegistration::WebPush(WebPushSubscription {
            endpoint,
            p256dh,
            auth,
        }))
    }

    fn apns_from_bytes(bytes: Vec<u8>) -> Result<Self, RegistrationError> {
        if bytes.len() > APNS_TOKEN_BYTES_MAX {
            return Err(RegistrationError::TooLong {
                what: "APNs device token",
                bytes: bytes.len(),
                max: APNS_TOKEN_BYTES_MAX,
            });
        }
        if bytes.len() < APNS_TOKEN_BYTES_MIN {
            return Err(RegistrationError::WrongLength {
                what: "APNs device token",
                bytes: bytes.len(),
                expected: "32 to 100",
            });
        }
        Ok(PushRegistration::Apns(ApnsToken(bytes)))
    }
}

/// Serialized as a browser-style JSON object or a token string, so it reads well in config
/// files and logs; the store uses [`PushRegistration::encode`].
impl Serialize for PushRegistration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wire = match self {
            PushRegistration::WebPush(subscription) => RegistrationWire::WebPush {
                endpoint: subscription.endpoint.to_string(),
                p256dh: base64url(&subscription.p256dh),
                auth: base64url(&subscription.auth),
            },
            PushRegistration::Apns(token) => RegistrationWire::Apns { token: token.hex() },
            PushRegistration::Fcm(token) => RegistrationWire::Fcm {
                token: token.0.clone(),
            },
        };
        wire.serialize(serializer)
    }
}

/// Deserialized with the production policy.
impl<'de> Deserialize<'de> for PushRegistration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let parsed = match RegistrationWire::deserialize(deserializer)? {
            RegistrationWire::WebPush {
                endpoint,
                p256dh,
                auth,
            } => PushRegistration::parse_webpush(
                &endpoint,
                &p256dh,
                &auth,
                RegistrationPolicy::PRODUCTION,
            ),
            RegistrationWire::Apns { token } => PushRegistration::parse_apns(&token),
            RegistrationWire::Fcm { token } => PushRegistration::parse_fcm(&token),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum RegistrationWire {
    WebPush {
        endpoint: String,
        p256dh: String,
        auth: String,
    },
    Apns {
        token: String,
    },
    Fcm {
        token: String,
    },
}

fn parse_endpoint(
    endpoint: &str,
    policy: RegistrationPolicy,
) -> Result<http::Uri, RegistrationError> {
    if endpoint.len() > WEBPUSH_ENDPOINT_BYTES_MAX {
        return Err(RegistrationError::TooLong {
            what: "WebPush endpoint",
            bytes: endpoint.len(),
            max: WEBPUSH_ENDPOINT_BYTES_MAX,
        });
    }
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|error: http::uri::InvalidUri| RegistrationError::BadUrl(error.to_string()))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| RegistrationError::BadUrl("no scheme".into()))?;
    match scheme {
        "https" => {}
        "http" if policy.allow_http => {}
        other => return Err(RegistrationError::NotHttps(other.to_owned())),
    }
    let host = uri
        .host()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| RegistrationError::BadUrl("no host".into()))?;
    if uri
        .authority()
        .is_some_and(|authority| authority.as_str().contains('@'))
    {
        return Err(RegistrationError::BadUrl("credentials in the URL".into()));
    }
    if !policy.allow_private_hosts && is_private_host(host) {
        return Err(RegistrationError::PrivateHost(host.to_owned()));
    }
    Ok(uri)
}

/// Whether `host` is a name or IP literal that points into the region's own networks.
fn is_private_host(host: &str) -> bool {
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") || lower.ends_with(".local") {
        return true;
    }
    let literal = lower.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64 // 100.64/10, CGNAT
        }
        Ok(IpAddr::V6(ip)) => {
            let first = ip.segments()[0];
            ip.is_loopback()
                || ip.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || ip.to_ipv4_mapped().is_some_and(|v4| is_private_host(&v4.to_string()))
        }
        Err(_) => false,
    }
}

fn decode_key(text: &str, what: &'static str) -> Result<Vec<u8>, RegistrationError> {
    if text.len() > 256 {
        return Err(RegistrationError::TooLong {
            what,
            bytes: text.len(),
            max: 256,
        });
    }
    base64url_decode(text).map_err(|_| RegistrationError::BadEncoding {
        what,
        encoding: "base64url",
    })
}

fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every field is bounded by a limit far below u16::MAX (asserted below).
    let length = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&bytes[..usize::from(length)]);
}

const _: () = assert!(WEBPUSH_ENDPOINT_BYTES_MAX < u16::MAX as usize);
const _: () = assert!(FCM_TOKEN_BYTES_MAX < u16::MAX as usize);
const _: () = assert!(APNS_TOKEN_BYTES_MAX < u16::MAX as usize);

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], RegistrationError> {
        if self.0.len() < count {
            return Err(RegistrationError::Stored("truncated".into()));
        }
        let (head, rest) = self.0.split_at(count);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, RegistrationError> {
        Ok(self.take(1)?[0])
    }

    fn field(&mut self) -> Result<&'a [u8], RegistrationError> {
        let length = self.take(2)?;
        let length = u16::from_be_bytes([length[0], length[1]]);
        self.take(usize::from(length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256DH: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const ENDPOINT: &str = "https://push.example.net/push/JzLQ3raZJfFBR0aqvOMsLrt54w4rJUsV";

    fn webpush() -> PushRegistration {
        PushRegistration::parse_webpush(ENDPOINT, P256DH, AUTH, RegistrationPolicy::PRODUCTION)
            .expect("the RFC 8291 example keys parse")
    }

    #[test]
    fn every_kind_round_trips_through_its_encoding() {
        let registrations = [
            webpush(),
            PushRegistration::parse_apns(&"ab".repeat(32)).expect("a 32-byte token"),
            PushRegistration::parse_fcm("dXk3:APA91bH-x_y.z").expect("a token"),
        ];
        for registration in registrations {
            let bytes = registration.encode();
            let decoded = PushRegistration::decode(&bytes, RegistrationPolicy::PRODUCTION);
            assert_eq!(decoded, Ok(registration.clone()));
            let json = serde_json::to_string(&registration).expect("serializes");
            let back: PushRegistration = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(back, registration);
        }
    }

    #[test]
    fn a_browser_subscription_parses() {
        let json = format!(
            r#"{{"endpoint":"{ENDPOINT}","expirationTime":null,"keys":{{"p256dh":"{P256DH}","auth":"{AUTH}"}}}}"#
        );
        let parsed = PushRegistration::parse_webpush_json(&json, RegistrationPolicy::PRODUCTION);
        assert_eq!(parsed, Ok(webpush()));
    }

    #[test]
    fn garbage_is_refused_with_the_reason() {
        let policy = RegistrationPolicy::PRODUCTION;
        let refused = |endpoint: &str| {
            PushRegistration::parse_webpush(endpoint, P256DH, AUTH, policy).expect_err(endpoint)
        };
        assert!(matches!(refused("not a url"), RegistrationError::BadUrl(_)));
        assert!(matches!(
            refused("/relative/path"),
            RegistrationError::BadUrl(_)
        ));
        assert_eq!(
            refused("http://push.example.net/x"),
            RegistrationError::NotHttps("http".into())
        );
        assert_eq!(
            refused("ftp://push.example.net/x"),
            RegistrationError::NotHttps("ftp".into())
        );
        for private in [
            "https://127.0.0.1:8443/x",
            "https://10.1.2.3/x",
            "https://192.168.0.1/x",
            "https://169.254.169.254/latest",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://localhost/x",
            "https://0.0.0.0/x",
        ] {
            assert!(
                matches!(refused(private), RegistrationError::PrivateHost(_)),
                "{private}"
            );
        }
        assert!(matches!(
            refused("https://user:pw@push.example.net/x"),
            RegistrationError::BadUrl(_)
        ));
        let long = format!(
            "https://push.example.net/{}",
            "a".repeat(WEBPUSH_ENDPOINT_BYTES_MAX)
        );
        assert!(matches!(refused(&long), RegistrationError::TooLong { .. }));

        let short_key = base64url(&[4; 33]);
        assert!(matches!(
            PushRegistration::parse_webpush(ENDPOINT, &short_key, AUTH, policy),
            Err(RegistrationError::WrongLength { bytes: 33, .. })
        ));
        let off_curve = base64url(&[4; 65]);
        assert_eq!(
            PushRegistration::parse_webpush(ENDPOINT, &off_curve, AUTH, policy),
            Err(RegistrationError::BadKey)
        );
        assert!(matches!(
            PushRegistration::parse_webpush(ENDPOINT, P256DH, &base64url(&[1; 15]), policy),
            Err(RegistrationError::WrongLength { bytes: 15, .. })
        ));
        assert!(matches!(
            PushRegistration::parse_webpush(ENDPOINT, "not*base64", AUTH, policy),
            Err(RegistrationError::BadEncoding { .. })
        ));

        assert!(matches!(
            PushRegistration::parse_apns("abc"),
            Err(RegistrationError::BadEncoding { .. })
        ));
        assert!(matches!(
            PushRegistration::parse_apns(&"zz".repeat(32)),
            Err(RegistrationError::BadEncoding { .. })
        ));
        assert!(matches!(
            PushRegistration::parse_apns(&"ab".repeat(16)),
            Err(RegistrationError::WrongLength { .. })
        ));
        assert!(matches!(
            PushRegistration::parse_apns(&"ab".repeat(APNS_TOKEN_BYTES_MAX + 1)),
            Err(RegistrationError::TooLong { .. })
        ));
        assert!(matches!(
            PushRegistration::parse_fcm(&"a".repeat(FCM_TOKEN_BYTES_MAX + 1)),
            Err(RegistrationError::TooLong { .. })
        ));
        assert!(matches!(
            PushRegistration::parse_fcm("a token/with spaces"),
            Err(RegistrationError::BadEncoding { .. })
        ));
        assert!(matches!(
            PushRegistration::parse_fcm(""),
            Err(RegistrationError::BadEncoding { .. })
        ));
    }

    #[test]
    fn the_test_policy_allows_loopback_and_the_stored_form_is_checked_again() {
        let loopback = PushRegistration::parse_webpush(
            "https://127.0.0.1:8443/push/1",
            P256DH,
            AUTH,
            RegistrationPolicy::LOOPBACK_TESTS,
        )
        .expect("the test policy allows loopback");
        let bytes = loopback.encode();
        assert!(matches!(
            PushRegistration::decode(&bytes, RegistrationPolicy::PRODUCTION),
            Err(RegistrationError::PrivateHost(_))
        ));
        assert_eq!(
            PushRegistration::decode(&bytes, RegistrationPolicy::LOOPBACK_TESTS),
            Ok(loopback)
        );
        for cut in 0..bytes.len() {
            assert!(
                PushRegistration::decode(&bytes[..cut], RegistrationPolicy::LOOPBACK_TESTS)
                    .is_err(),
                "a registration cut to {cut} bytes"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(PushRegistration::decode(&longer, RegistrationPolicy::LOOPBACK_TESTS).is_err());
        let mut other_version = bytes;
        other_version[0] = 2;
        assert!(matches!(
            PushRegistration::decode(&other_version, RegistrationPolicy::LOOPBACK_TESTS),
            Err(RegistrationError::Stored(_))
        ));
    }

    #[test]
    fn the_origin_keeps_a_non_default_port() {
        let uri: http::Uri = "https://127.0.0.1:8443/push/1".parse().expect("a URI");
        assert_eq!(origin(&uri), "https://127.0.0.1:8443");
        let uri: http::Uri = "https://push.example.net:443/push/1"
            .parse()
            .expect("a URI");
        assert_eq!(origin(&uri), "https://push.example.net");
    }
}
