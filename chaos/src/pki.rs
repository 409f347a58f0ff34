//! The simulation's certificate authority, in memory: one CA and a certificate per region and
//! edge, issued as the devnet's PKI does (relayd's `pki` module) but never written to disk
//! except the CA certificate clients copy into their data directories.
//!
//! Keys are Ed25519, so every signature and key has the same size on every run: the handshake
//! packets, and so the simulated network's schedule, do not depend on the random keys.

use std::sync::Arc;

use quinn::rustls::RootCertStore;
use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rcgen::{CertificateParams, Issuer, KeyPair, PKCS_ED25519};
use relay_proto::net::TlsIdentity;

/// Why the CA could not issue a certificate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused to generate a key or sign a certificate.
    #[error("certificate issuance: {0}")]
    Issue(#[from] rcgen::Error),
    /// rustls refused the CA certificate as a root.
    #[error("root store: {0}")]
    Root(String),
}

/// An in-memory CA.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    relay_proto::pki::ca_params("Relay simulation CA")
}

impl Pki {
    /// A new CA with a fresh key.
    pub fn new() -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let cert = ca_params().self_signed(&key)?;
        let ca_der = cert.der().clone();
        let ca_pem = cert.pem();
        Ok(Self {
            issuer: Issuer::new(ca_params(), key),
            ca_der,
            ca_pem,
        })
    }

    /// The CA certificate in PEM, for clients' `ca.pem`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A root store trusting this CA.
    pub fn roots(&self) -> Result<Arc<RootCertStore>, PkiError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .map_err(|error| PkiError::Root(error.to_string()))?;
        Ok(Arc::new(roots))
    }

    /// A certificate for region `region` (server and client side of internal links).
    pub fn region(&self, region: u32) -> Result<TlsIdentity, PkiError> {
        self.leaf(relay_proto::pki::region_params(region)?.1)
    }

    /// A certificate for the edge of region `region` (to devices and to regions).
    pub fn edge(&self, region: u32) -> Result<TlsIdentity, PkiError> {
        self.leaf(relay_proto::pki::edge_params(region)?.1)
    }

    fn leaf(&self, params: CertificateParams) -> Result<TlsIdentity, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(TlsIdentity {
            cert_chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        })
    }
}
