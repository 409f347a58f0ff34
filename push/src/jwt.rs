//! JSON Web Tokens signed with ring: ES256 (VAPID, APNs provider tokens) and RS256 (FCM's
//! OAuth2 assertion). Only signing lives here; the loopback endpoints verify with ring too.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;

use crate::PushError;

/// Unpadded base64url, as JWTs and WebPush keys use it.
pub(crate) fn base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes unpadded (or padded) base64url.
pub(crate) fn base64url_decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text.trim().trim_end_matches('='))
}

/// Seconds since the Unix epoch of `time` (0 before the epoch).
pub(crate) fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}

/// The DER of the PKCS#8 private key in PEM `text` ("-----BEGIN PRIVATE KEY-----").
pub(crate) fn pkcs8_der_from_pem(text: &str, what: &str) -> Result<Vec<u8>, PushError> {
    if text.contains("BEGIN EC PRIVATE KEY") || text.contains("BEGIN RSA PRIVATE KEY") {
        return Err(PushError::Config(format!(
            "{what} is not PKCS#8 (\"BEGIN PRIVATE KEY\"): convert it with \
             `openssl pkcs8 -topk8 -nocrypt -in old.pem -out new.pem`"
        )));
    }
    PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes())
        .map(|der| der.secret_pkcs8_der().to_vec())
        .map_err(|error| PushError::Config(format!("{what} is not a PKCS#8 PEM key: {error}")))
}

/// `header.claims`, each base64url JSON: the bytes a JWT signature covers.
fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    )
}

/// An ES256 (ECDSA P-256, SHA-256, fixed-width signature) signing key.
pub(crate) struct Es256Key {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for Es256Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Es256Key")
            .field("public", &base64url(self.public_key()))
            .finish_non_exhaustive()
    }
}

impl Es256Key {
    /// The key in PKCS#8 DER `der`.
    pub(crate) fn from_pkcs8(der: &[u8], what: &str) -> Result<Self, PushError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng).map_err(
            |error| PushError::Config(format!("{what} is not a P-256 PKCS#8 key: {error}")),
        )?;
        Ok(Es256Key { key, rng })
    }

    /// The key whose 32-byte private scalar is `private` and uncompressed point `public`.
    pub(crate) fn from_scalar(
        private: &[u8],
        public: &[u8],
        what: &str,
    ) -> Result<Self, PushError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            private,
            public,
            &rng,
        )
        .map_err(|error| PushError::Config(format!("{what} is not a P-256 key: {error}")))?;
        Ok(Es256Key { key, rng })
    }

    /// A fresh key, as PKCS#8 DER.
    pub(crate) fn generate_pkcs8() -> Result<Vec<u8>, PushError> {
        let rng = SystemRandom::new();
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map(|document| document.as_ref().to_vec())
            .map_err(|_| PushError::Config("the system's random source failed".into()))
    }

    /// The public key, an uncompressed point (65 bytes).
    pub(crate) fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// A compact JWT of `header` and `claims`, signed.
    pub(crate) fn sign_jwt(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<String, PushError> {
        let input = signing_input(header, claims);
        let signature = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| PushError::Config("ES256 signing failed".into()))?;
        Ok(format!("{input}.{}", base64url(signature.as_ref())))
    }
}

/// An RS256 (RSASSA-PKCS1-v1_5, SHA-256) signing key.
pub(crate) struct Rs256Key {
    key: RsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for Rs256Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rs256Key")
            .field("modulus_bytes", &self.key.public().modulus_len())
            .finish_non_exhaustive()
    }
}

impl Rs256Key {
    /// The key in PKCS#8 DER `der`.
    pub(crate) fn from_pkcs8(der: &[u8], what: &str) -> Result<Self, PushError> {
        let key = RsaKeyPair::from_pkcs8(der).map_err(|error| {
            PushError::Config(format!("{what} is not an RSA PKCS#8 key: {error}"))
        })?;
        Ok(Rs256Key {
            key,
            rng: SystemRandom::new(),
        })
    }

    /// A compact JWT of `header` and `claims`, signed.
    pub(crate) fn sign_jwt(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<String, PushError> {
        let input = signing_input(header, claims);
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| PushError::Config("RS256 signing failed".into()))?;
        Ok(format!("{input}.{}", base64url(&signature)))
    }
}
