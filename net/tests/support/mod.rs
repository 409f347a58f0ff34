//! What the network shell's tests share: a CA of their own and an edge certificate.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use relay_net::{EDGE_SERVER_NAME, TlsIdentity};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA of its own and an edge certificate it issued.
pub fn pki() -> (Arc<RootCertStore>, TlsIdentity) {
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("edge key");
    let cert = CertificateParams::new(vec![EDGE_SERVER_NAME.to_owned()])
        .expect("edge params")
        .signed_by(&key, &issuer)
        .expect("edge certificate");
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).expect("a root");
    let identity = TlsIdentity {
        cert_chain: vec![CertificateDer::from(cert.der().to_vec())],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    };
    (Arc::new(roots), identity)
}
