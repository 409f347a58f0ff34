//! The simulation's certificate authority, in memory: one CA and a certificate per region and
//! edge, issued as the devnet's PKI does (relayd's `pki` module) but never written to disk
//! except the CA certificate clients copy into their data directories.
//!
//! Keys are Ed25519, drawn from the run's seed, and serial numbers are fixed, so a run's
//! certificates are the same bytes every time it runs. That matters beyond sizes: a server's
//! connection ids and stateless-reset tokens are keyed by its private key (relay_net's
//! `bind_server_endpoint`), and a restarted server decides what a late packet of its previous
//! life is by decrypting it with keys derived from those ids. With keys from the operating
//! system, such a packet was dropped in one run and taken for a new connection in the next, and
//! a seed's runs parted there.

use std::sync::Arc;

use quinn::rustls::RootCertStore;
use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
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
    seed: u64,
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// PKCS#8 v1 (RFC 8410) of an Ed25519 private key, up to its 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The Ed25519 key numbered `number` of the kind `role` in the run seeded `seed`.
fn seeded_key(seed: u64, role: &str, number: u64) -> Result<KeyPair, PkiError> {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    for part in 0..4 {
        der.extend_from_slice(&crate::seed::derive(seed, role, number * 4 + part).to_le_bytes());
    }
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(der),
        &PKCS_ED25519,
    )?)
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
    /// The CA of the run seeded `seed`.
    pub fn from_seed(seed: u64) -> Result<Self, PkiError> {
        let key = seeded_key(seed, "pki-ca", 0)?;
        let cert = ca_params().self_signed(&key)?;
        let ca_der = cert.der().clone();
        let ca_pem = cert.pem();
        Ok(Self {
            seed,
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
        let key = seeded_key(self.seed, "pki-region", region.into())?;
        self.leaf(relay_net::pki::region_params(region)?.1, key)
    }

    /// A certificate for the edge of region `region` (to devices and to regions).
    pub fn edge(&self, region: u32) -> Result<TlsIdentity, PkiError> {
        let key = seeded_key(self.seed, "pki-edge", region.into())?;
        self.leaf(relay_net::pki::edge_params(region)?.1, key)
    }

    fn leaf(&self, mut params: CertificateParams, key: KeyPair) -> Result<TlsIdentity, PkiError> {
        params.serial_number = Some(SerialNumber::from(LEAF_SERIAL));
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

    fn bytes(pki: &Pki) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let region = pki.region(1).expect("region");
        let edge = pki.edge(2).expect("edge");
        (
            pki.ca_der.to_vec(),
            region.cert_chain[0].to_vec(),
            edge.cert_chain[0].to_vec(),
            region.key.secret_der().to_vec(),
        )
    }

    #[test]
    fn a_seed_gives_the_same_certificates_and_keys_on_every_run() {
        let first = bytes(&Pki::from_seed(26).expect("pki"));
        assert_eq!(bytes(&Pki::from_seed(26).expect("pki")), first);
        let other = bytes(&Pki::from_seed(27).expect("pki"));
        assert_ne!(other.3, first.3, "another seed draws other keys");
        // Each host holds its own key.
        let pki = Pki::from_seed(26).expect("pki");
        let keys = [
            pki.region(1).expect("region").key.secret_der().to_vec(),
            pki.region(2).expect("region").key.secret_der().to_vec(),
            pki.edge(1).expect("edge").key.secret_der().to_vec(),
        ];
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[0], keys[2]);
    }

    #[test]
    fn certificates_have_the_same_size_for_every_seed() {
        let sizes = |seed: u64| {
            let (ca, region, edge, _) = bytes(&Pki::from_seed(seed).expect("pki"));
            (ca.len(), region.len(), edge.len())
        };
        let first = sizes(0);
        // A key-derived serial would come out a byte shorter about once in 128 certificates.
        for seed in 1..400 {
            assert_eq!(sizes(seed), first, "seed {seed}");
        }
    }
}
