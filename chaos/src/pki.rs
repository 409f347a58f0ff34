//! The simulation's certificate authority, in memory: one CA and a certificate per region and
//! edge, issued as the devnet's PKI does (relayd's `pki` module) but never written to disk
//! except the CA certificate clients copy into their data directories.
//!
//! Keys are Ed25519, so every signature and key has the same size on every run, and serial
//! numbers are fixed (rcgen's default, a hash of the random key, is one byte shorter about once
//! in 128 certificates): the handshake packets, and so the simulated network's schedule, do not
//! depend on the random keys.

use std::sync::Arc;

use quinn::rustls::RootCertStore;
use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rcgen::{CertificateParams, Issuer, KeyPair, PKCS_ED25519, SerialNumber};
use relay_net::TlsIdentity;

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

/// The serial number of the CA's certificate; leaves take [`LEAF_SERIAL`].
const CA_SERIAL: u64 = 1;
/// The serial number of every leaf certificate (each region and edge holds its own key).
const LEAF_SERIAL: u64 = 2;

fn ca_params() -> CertificateParams {
    let mut params = relay_net::pki::ca_params("Relay simulation CA");
    params.serial_number = Some(SerialNumber::from(CA_SERIAL));
    params
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
        self.leaf(relay_net::pki::region_params(region)?.1)
    }

    /// A certificate for the edge of region `region` (to devices and to regions).
    pub fn edge(&self, region: u32) -> Result<TlsIdentity, PkiError> {
        self.leaf(relay_net::pki::edge_params(region)?.1)
    }

    fn leaf(&self, mut params: CertificateParams) -> Result<TlsIdentity, PkiError> {
        params.serial_number = Some(SerialNumber::from(LEAF_SERIAL));
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(TlsIdentity {
            cert_chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_have_the_same_size_on_every_run() {
        let sizes = |pki: &Pki| -> (usize, usize, usize) {
            let region = pki.region(1).expect("region");
            let edge = pki.edge(2).expect("edge");
            (
                pki.ca_der.len(),
                region.cert_chain[0].len(),
                edge.cert_chain[0].len(),
            )
        };
        let first = sizes(&Pki::new().expect("pki"));
        // A key-derived serial comes out a byte shorter about once in 128 certificates.
        for _ in 0..400 {
            assert_eq!(sizes(&Pki::new().expect("pki")), first);
        }
    }
}
