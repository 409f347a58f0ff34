//! What the network shell's tests share: a CA of their own and an edge certificate, and an
//! edge's device endpoint on loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use relay_net::{
    ALPN_DEVICE, EDGE_SERVER_NAME, TlsIdentity, TokioSockets, bind_endpoint, server_config,
};
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

/// An endpoint on loopback that accepts device connections (their transport) as an edge does.
pub fn device_listener(identity: TlsIdentity) -> (quinn::Endpoint, SocketAddr) {
    let server = server_config(identity, None, ALPN_DEVICE).expect("server config");
    let endpoint = bind_endpoint(
        &TokioSockets,
        "127.0.0.1:0".parse().expect("addr"),
        Some(server),
    )
    .expect("server endpoint");
    let address = endpoint.local_addr().expect("bound");
    (endpoint, address)
}
