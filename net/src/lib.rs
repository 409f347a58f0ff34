//! Relay's network shell, shared by every service and client: QUIC endpoints made through one
//! [`SocketFactory`] (kernel UDP, simulated UDP, later io_uring), TLS configuration
//! (server-authenticated for devices, mutual for edge↔region and region↔region), framed
//! request/response streams over quinn, [`PeerLinks`] between regions, and [`ConnectionSlots`]
//! that bound a server's connections. Services also share their configuration files' loading
//! and region addresses ([`config`]) and a bounded, expiring cache ([`cache`]); every bound of
//! the shell is in [`limits`]. Behind the `pki` feature, the certificate parameters of a
//! deployment's own CA, regions and edges ([`pki`]).
//!
//! The wire crate (`relay-proto`) stays sans-IO: protocol logic never touches these types, it is
//! fed decoded frames.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime};
use relay_proto::frame::{FRAME_HEADER_BYTES, FrameDecoder, decode_header, encode_frame};
use relay_proto::limits::{
    AUTH_KEYING_MATERIAL_BYTES, AUTH_KEYING_MATERIAL_LABEL, FRAME_BYTES_MAX,
};
use relay_proto::{FrameError, ProtoError};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

pub mod cache;
pub mod config;
pub mod limits;
#[cfg(feature = "pki")]
pub mod pki;
pub mod seeded;

use limits::{
    DEVICE_INITIAL_MTU_BYTES, DEVICE_RECEIVE_WINDOW_BYTES, DEVICE_SEND_WINDOW_BYTES,
    DEVICE_STREAM_RECEIVE_WINDOW_BYTES, DEVICE_STREAMS_PER_CONNECTION_MAX,
    DEVICE_TLS_SERVER_NAMES_MAX, DEVICE_TLS_TICKETS_PER_CONNECTION, IDLE_TIMEOUT_MS,
    KEEP_ALIVE_INTERVAL_MS, PEER_CONNECT_TIMEOUT_MS, STREAMS_PER_CONNECTION_MAX,
};

/// ALPN of device connections to an edge.
pub const ALPN_DEVICE: &[u8] = b"relay-device/1";
/// ALPN of internal connections (edge→region, region→region).
pub const ALPN_INTERNAL: &[u8] = b"relay-internal/1";
/// TLS server name every edge certificate carries.
pub const EDGE_SERVER_NAME: &str = "edge.relay.test";
/// TLS server name every region certificate carries.
pub const REGION_SERVER_NAME: &str = "region.relay.internal";

/// Errors of the network shell.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Socket or file I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// TLS material or configuration is unusable.
    #[error("tls: {0}")]
    Tls(String),
    /// The QUIC connection failed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Connecting failed before the handshake.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// Writing to a stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from a stream failed.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The peer's bytes are not a valid frame.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer closed the stream where a frame was expected.
    #[error("stream closed before a response")]
    Closed,
    /// The peer answered with an error.
    #[error("{0}")]
    Remote(ProtoError),
    /// The peer did not answer in time.
    #[error("timed out")]
    Timeout,
}

impl NetError {
    /// This error as a code and message to report to a peer or a user.
    pub fn to_proto(&self) -> ProtoError {
        match self {
            NetError::Remote(error) => error.clone(),
            NetError::Frame(error) => error.clone().into(),
            other => ProtoError::new(relay_proto::ErrorCode::Unavailable, other.to_string()),
        }
    }
}

/// Makes the UDP sockets QUIC endpoints run on. The simulator and the io_uring datapath plug in
/// here without touching protocol code.
pub trait SocketFactory: Send + Sync + 'static {
    /// Binds a socket at `address`.
    fn bind(&self, address: SocketAddr) -> io::Result<Arc<dyn AsyncUdpSocket>>;
    /// The runtime the endpoint's driver runs on.
    fn runtime(&self) -> Arc<dyn Runtime>;
    /// The seed of the next endpoint's random number generator (quinn's
    /// `EndpointConfig::rng_seed`), asked once per endpoint. `None`, the default, seeds from
    /// the operating system; a simulation hands out a seeded sequence so that a run repeats.
    fn endpoint_rng_seed(&self) -> Option<[u8; 32]> {
        None
    }
}

/// Kernel UDP sockets on tokio (quinn-udp: GSO/GRO where the kernel has them).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSockets;

impl SocketFactory for TokioSockets {
    fn bind(&self, address: SocketAddr) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let socket = std::net::UdpSocket::bind(address)?;
        TokioRuntime.wrap_udp_socket(socket)
    }

    fn runtime(&self) -> Arc<dyn Runtime> {
        Arc::new(TokioRuntime)
    }
}

/// Kernel UDP sockets like [`TokioSockets`], with a receive buffer of `receive_buffer_bytes`
/// asked of the kernel: a server socket that many peers reach at once (an edge's device socket)
/// would otherwise drop handshake packets while the server is busy, and each drop costs a
/// peer a retransmission timeout. The kernel caps the buffer at `net.core.rmem_max`; a buffer
/// smaller than asked is logged with that hint.
#[derive(Debug, Clone, Copy)]
pub struct BufferedSockets {
    /// The receive buffer to ask for, in bytes.
    pub receive_buffer_bytes: usize,
}

impl SocketFactory for BufferedSockets {
    fn bind(&self, address: SocketAddr) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let socket = std::net::UdpSocket::bind(address)?;
        let state = quinn::udp::UdpSocketState::new((&socket).into())?;
        state.set_recv_buffer_size((&socket).into(), self.receive_buffer_bytes)?;
        // Linux reports twice what it grants (the other half is its bookkeeping).
        let granted_bytes = state.recv_buffer_size((&socket).into())?;
        if granted_bytes < self.receive_buffer_bytes {
            tracing::warn!(
                %address,
                asked_bytes = self.receive_buffer_bytes,
                granted_bytes,
                "the kernel granted a smaller UDP receive buffer than asked; raise \
                 net.core.rmem_max so that bursts of handshakes are not dropped"
            );
        } else {
            tracing::debug!(%address, granted_bytes, "UDP receive buffer");
        }
        TokioRuntime.wrap_udp_socket(socket)
    }

    fn runtime(&self) -> Arc<dyn Runtime> {
        Arc::new(TokioRuntime)
    }
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct TlsIdentity {
    /// Leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// Loads a PEM certificate chain and a PEM private key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, NetError> {
        let cert_chain = load_certificates(cert_path)?;
        let key = PrivateKeyDer::from_pem_file(key_path)
            .map_err(|error| NetError::Tls(format!("{}: {error}", key_path.display())))?;
        Ok(Self { cert_chain, key })
    }
}

/// Loads every certificate of a PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|error| NetError::Tls(format!("{}: {error}", path.display())))?
        .collect();
    let certs = certs.map_err(|error| NetError::Tls(format!("{}: {error}", path.display())))?;
    if certs.is_empty() {
        return Err(NetError::Tls(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// A root store holding the certificates of a PEM file (the deployment's CA).
pub fn load_roots(ca_path: &Path) -> Result<Arc<RootCertStore>, NetError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(ca_path)? {
        roots
            .add(cert)
            .map_err(|error| NetError::Tls(error.to_string()))?;
    }
    Ok(Arc::new(roots))
}

/// A root store holding the operating system's trusted certificates (what a client trusts when
/// it is given no CA of its own: a deployment whose edges carry publicly trusted certificates).
/// `SSL_CERT_FILE` and `SSL_CERT_DIR` name other places to read them from. Certificates the
/// system holds but rustls cannot use are skipped; none at all is an error.
pub fn system_roots() -> Result<Arc<RootCertStore>, NetError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let problems: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(NetError::Tls(format!(
            "the system holds no trusted root certificate{}; give the deployment's CA with --ca",
            if problems.is_empty() {
                String::new()
            } else {
                format!(" ({})", problems.join("; "))
            }
        )));
    }
    Ok(Arc::new(roots))
}

/// ring's provider, drawing its randomness and X25519 key shares through [`seeded`] (the
/// operating system's, unless a simulation seeded the thread).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.secure_random = &seeded::Random;
    for group in &mut provider.kx_groups {
        if group.name() == rustls::NamedGroup::X25519 {
            *group = &seeded::X25519;
        }
    }
    Arc::new(provider)
}

/// Which end of a connection a transport configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Server,
    Client,
}

/// The transport of a connection speaking `alpn`, at one `end`: device connections get
/// [`device_transport`], internal ones [`internal_transport`].
fn transport(alpn: &[u8], end: End) -> Arc<quinn::TransportConfig> {
    if alpn == ALPN_DEVICE {
        device_transport(end)
    } else {
        internal_transport()
    }
}

/// Internal connections (edge↔region, region↔region): few, long-lived and busy, so quinn's
/// generous windows, with many requests in flight.
fn internal_transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    // Both values are far below the bound quinn accepts, so the conversion cannot fail.
    transport.max_idle_timeout(
        quinn::IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS)).ok(),
    );
    transport.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_INTERVAL_MS)));
    transport.max_concurrent_bidi_streams(STREAMS_PER_CONNECTION_MAX.into());
    Arc::new(transport)
}

/// Device connections: an edge holds them by the ten thousand, mostly idle, so each is kept
/// small. Devices open every stream (requests and the control stream; none unidirectional) and
/// send no datagrams:
/// - the edge lets a device open [`DEVICE_STREAMS_PER_CONNECTION_MAX`] streams at once, and
///   buffers at most [`DEVICE_STREAM_RECEIVE_WINDOW_BYTES`] per stream and
///   [`DEVICE_RECEIVE_WINDOW_BYTES`] per connection of what it has not read yet;
/// - the edge sends one datagram per system call (no segmentation offload): quinn otherwise
///   keeps a buffer of ten datagrams per connection for the rest of its life, for replies
///   that are mostly one datagram long;
/// - only the device sends keep-alives;
/// - a device lets the edge open no stream, and keeps quinn's receive windows, so a page of
///   its queue arrives in few round trips.
fn device_transport(end: End) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(
        quinn::IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS)).ok(),
    );
    transport.max_concurrent_uni_streams(0u32.into());
    transport.datagram_receive_buffer_size(None);
    transport.datagram_send_buffer_size(0);
    transport.initial_mtu(DEVICE_INITIAL_MTU_BYTES);
    match end {
        End::Server => {
            transport.max_concurrent_bidi_streams(DEVICE_STREAMS_PER_CONNECTION_MAX.into());
            transport.stream_receive_window(DEVICE_STREAM_RECEIVE_WINDOW_BYTES.into());
            transport.receive_window(DEVICE_RECEIVE_WINDOW_BYTES.into());
            transport.send_window(DEVICE_SEND_WINDOW_BYTES);
            transport.enable_segmentation_offload(false);
        }
        End::Client => {
            transport.max_concurrent_bidi_streams(0u32.into());
            transport.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_INTERVAL_MS)));
        }
    }
    Arc::new(transport)
}

/// A QUIC server configuration. With `client_roots`, peers must present a certificate signed
/// by them (mutual TLS, for internal links). Connections speaking [`ALPN_DEVICE`] get the
/// small transport of device connections, others that of internal links.
pub fn server_config(
    identity: TlsIdentity,
    client_roots: Option<Arc<RootCertStore>>,
    alpn: &[u8],
) -> Result<quinn::ServerConfig, NetError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| NetError::Tls(error.to_string()))?;
    let builder = match client_roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|error| NetError::Tls(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder
        .with_single_cert(identity.cert_chain, identity.key)
        .map_err(|error| NetError::Tls(error.to_string()))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    if alpn == ALPN_DEVICE {
        // Stateless session tickets (encrypted under a key of this process, rotated by rustls):
        // a device that logs in again resumes without the server signing its certificate, and
        // the server keeps nothing per ticket, however many devices hold one. Resumption keeps
        // an ephemeral key exchange (rustls offers only PSK with (EC)DHE), and 0-RTT stays off
        // (`max_early_data_size` 0): a resumed login is as fresh as a full one.
        tls.ticketer = seeded::ticketer()
            .map_err(|error| NetError::Tls(format!("session tickets: {error}")))?;
        tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        tls.send_tls13_tickets = DEVICE_TLS_TICKETS_PER_CONNECTION;
    }
    let quic = QuicServerConfig::try_from(tls).map_err(|error| NetError::Tls(error.to_string()))?;
    let mut config = match seeded::token_key() {
        Some(key) => quinn::ServerConfig::new(Arc::new(quic), key),
        None => quinn::ServerConfig::with_crypto(Arc::new(quic)),
    };
    config.transport_config(transport(alpn, End::Server));
    Ok(config)
}

/// A QUIC client configuration trusting `roots`, presenting `identity` when given (mutual TLS);
/// its transport follows `alpn` as in [`server_config`]. A device configuration made here
/// resumes only the sessions of connections made with it; a device that reconnects keeps a
/// [`DeviceTls`] instead.
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<TlsIdentity>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, NetError> {
    if alpn == ALPN_DEVICE && identity.is_none() {
        return Ok(DeviceTls::new(roots)?.config());
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| NetError::Tls(error.to_string()))?
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.cert_chain, identity.key)
            .map_err(|error| NetError::Tls(error.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    quic_client_config(tls, alpn)
}

fn quic_client_config(
    tls: rustls::ClientConfig,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, NetError> {
    let quic = QuicClientConfig::try_from(tls).map_err(|error| NetError::Tls(error.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(alpn, End::Client));
    config.initial_dst_cid_provider(Arc::new(seeded::initial_connection_id));
    Ok(config)
}

/// What a device keeps across its connections to edges: one connection configuration, whose TLS
/// sessions it resumes (at most [`DEVICE_TLS_SERVER_NAMES_MAX`] server names; every edge
/// answers to [`EDGE_SERVER_NAME`]), and how many edge certificates it checked in full, one per
/// login that was not resumed. A resumed login skips the edge's certificate (its signature and
/// the chain check) on both ends; a login without a ticket, or with one the edge no longer
/// accepts, checks the certificate in full. Clones share everything.
///
/// rustls resumes a session only with the certificate verifier that checked it, so a device
/// makes this once and takes [`DeviceTls::config`] for every connection.
#[derive(Debug, Clone)]
pub struct DeviceTls {
    config: quinn::ClientConfig,
    certificates_verified: Arc<std::sync::atomic::AtomicU64>,
}

impl DeviceTls {
    /// A device trusting `roots`, with no session yet: its next login checks the edge's
    /// certificate in full.
    pub fn new(roots: Arc<RootCertStore>) -> Result<Self, NetError> {
        let certificates_verified = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|error| NetError::Tls(error.to_string()))?;
        let verifier = Arc::new(CountingVerifier {
            inner: verifier,
            verified: certificates_verified.clone(),
        });
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|error| NetError::Tls(error.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        tls.resumption = rustls::client::Resumption::store(Arc::new(
            rustls::client::ClientSessionMemoryCache::new(DEVICE_TLS_SERVER_NAMES_MAX),
        ));
        tls.alpn_protocols = vec![ALPN_DEVICE.to_vec()];
        Ok(Self {
            config: quic_client_config(tls, ALPN_DEVICE)?,
            certificates_verified,
        })
    }

    /// The configuration of this device's next connection to an edge.
    pub fn config(&self) -> quinn::ClientConfig {
        self.config.clone()
    }

    /// Edge certificates checked in full so far: logins that were not resumed.
    pub fn certificates_verified(&self) -> u64 {
        self.certificates_verified
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The webpki verifier of the deployment's roots, counting the certificates it accepts.
#[derive(Debug)]
struct CountingVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    verified: Arc<std::sync::atomic::AtomicU64>,
}

impl rustls::client::danger::ServerCertVerifier for CountingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.verified
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// Binds a QUIC endpoint through `sockets`; a server when `server` is given.
pub fn bind_endpoint(
    sockets: &dyn SocketFactory,
    address: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, NetError> {
    bind_endpoint_with(
        sockets,
        address,
        server,
        quinn::EndpointConfig::default(),
        None,
    )
}

/// Binds a server endpoint whose stateless-reset key is derived from `identity`'s private key.
///
/// A restarted process on the same address then answers packets of its previous life's
/// connections with a valid stateless reset, so peers drop those connections at once and
/// reconnect, instead of waiting for the idle timeout.
pub fn bind_server_endpoint(
    sockets: &dyn SocketFactory,
    address: SocketAddr,
    server: quinn::ServerConfig,
    identity: &TlsIdentity,
) -> Result<quinn::Endpoint, NetError> {
    let mut hasher = Sha256::new();
    hasher.update(b"relay-stateless-reset-v1");
    hasher.update(identity.key.secret_der());
    let secret = hasher.finalize();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    // Connection ids must validate across restarts too, or the packets that would trigger the
    // reset are dropped as carrying an invalid id.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&secret[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    bind_endpoint_with(sockets, address, Some(server), config, Some(cid_key))
}

fn bind_endpoint_with(
    sockets: &dyn SocketFactory,
    address: SocketAddr,
    server: Option<quinn::ServerConfig>,
    mut config: quinn::EndpointConfig,
    cid_key: Option<u64>,
) -> Result<quinn::Endpoint, NetError> {
    let seed = sockets.endpoint_rng_seed();
    if let Some(seed) = seed {
        // quinn's connection-id generators draw from the thread's OS-seeded generator, not the
        // endpoint's: a seeded factory (the simulator) gets ids from its seed too.
        let generators = std::sync::atomic::AtomicU64::new(u64::from_le_bytes(
            seed[..8].try_into().unwrap_or_default(),
        ));
        config.cid_generator(move || {
            let state =
                generators.fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed);
            Box::new(SeededCids {
                key: cid_key,
                state,
            })
        });
    }
    config.rng_seed(seed);
    let socket = sockets.bind(address)?;
    Ok(quinn::Endpoint::new_with_abstract_socket(
        config,
        server,
        socket,
        sockets.runtime(),
    )?)
}

/// Connection ids from a seed: `nonce ‖ signature` like quinn's hashed generator when a key is
/// given (so a restarted server recognises its previous life's ids), plain otherwise.
struct SeededCids {
    key: Option<u64>,
    state: u64,
}

impl SeededCids {
    const NONCE_BYTES: usize = 3;
    const CID_BYTES: usize = 8;

    fn signature(key: u64, nonce: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(key.to_le_bytes());
        hasher.update(nonce);
        hasher.finalize().into()
    }
}

impl quinn_proto::ConnectionIdGenerator for SeededCids {
    fn generate_cid(&mut self) -> quinn_proto::ConnectionId {
        let mut bytes = seeded::split_mix(&mut self.state).to_le_bytes();
        if let Some(key) = self.key {
            let signature = Self::signature(key, &bytes[..Self::NONCE_BYTES]);
            bytes[Self::NONCE_BYTES..]
                .copy_from_slice(&signature[..Self::CID_BYTES - Self::NONCE_BYTES]);
        }
        quinn_proto::ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &quinn_proto::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        let Some(key) = self.key else {
            return Ok(());
        };
        if cid.len() != Self::CID_BYTES {
            return Err(quinn_proto::InvalidCid);
        }
        let (nonce, signature) = cid.split_at(Self::NONCE_BYTES);
        let expected = Self::signature(key, nonce);
        if expected[..Self::CID_BYTES - Self::NONCE_BYTES] == *signature {
            Ok(())
        } else {
            Err(quinn_proto::InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        Self::CID_BYTES
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The keying material both ends of a connection derive for binding device authentication.
pub fn auth_keying_material(
    connection: &quinn::Connection,
) -> Result<[u8; AUTH_KEYING_MATERIAL_BYTES], NetError> {
    let mut output = [0u8; AUTH_KEYING_MATERIAL_BYTES];
    connection
        .export_keying_material(&mut output, AUTH_KEYING_MATERIAL_LABEL, b"")
        .map_err(|_| NetError::Tls("keying material export failed".into()))?;
    Ok(output)
}

/// Writes one frame.
pub async fn write_frame<M: Message>(
    send: &mut quinn::SendStream,
    message: &M,
) -> Result<(), NetError> {
    send.write_all(&encode_frame(message)).await?;
    Ok(())
}

/// Reads one frame; `None` when the peer finished the stream cleanly between frames. Not
/// cancel-safe: a read dropped halfway (a `select!` whose other branch won) loses the bytes it
/// took, and the stream's next read starts inside a frame. A stream read beside other work
/// takes a [`FrameReader`].
pub async fn read_frame<M: Message + Default>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<M>, NetError> {
    read_frame_limited(recv, FRAME_BYTES_MAX).await
}

/// Reads one frame of at most `limit` bytes (a stream of its own protocol, such as
/// replication's); `None` when the peer finished the stream cleanly between frames.
pub async fn read_frame_limited<M: Message + Default>(
    recv: &mut quinn::RecvStream,
    limit: usize,
) -> Result<Option<M>, NetError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let body_length = decode_header(&header, limit)?;
    let mut body = vec![0u8; body_length];
    recv.read_exact(&mut body).await?;
    M::decode(&body[..])
        .map(Some)
        .map_err(|error| FrameError::Decode(error.to_string()).into())
}

/// Reads the frames of one stream, and may be dropped halfway through a read without losing
/// anything: what a dropped read took from the stream stays buffered for the next one (quinn's
/// `read_exact`, under [`read_frame`], is not cancel-safe; `read_chunk` is). For a long-lived
/// stream read in a `select!` beside other work, such as an edge's subscription stream.
pub struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl FrameReader {
    /// Frames of at most [`FRAME_BYTES_MAX`] bytes from `recv`.
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(FRAME_BYTES_MAX),
        }
    }

    /// The next frame; `None` when the peer finished the stream cleanly between frames.
    /// Cancel-safe.
    pub async fn read<M: Message + Default>(&mut self) -> Result<Option<M>, NetError> {
        loop {
            if let Some(frame) = self.decoder.next_frame::<M>()? {
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => self.decoder.push(&chunk.bytes),
                Ok(None) if self.decoder.buffered() == 0 => return Ok(None),
                Ok(None) => {
                    return Err(
                        quinn::ReadExactError::FinishedEarly(self.decoder.buffered()).into(),
                    );
                }
                Err(error) => return Err(quinn::ReadExactError::ReadError(error).into()),
            }
        }
    }
}

/// Sends one request on a new bidirectional stream and reads its one response.
pub async fn request<Req: Message, Resp: Message + Default>(
    connection: &quinn::Connection,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, NetError> {
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        write_frame(&mut send, request).await?;
        // The peer may already have closed its side; a failed finish is reported by the read.
        let _ = send.finish();
        read_frame::<Resp>(&mut recv).await?.ok_or(NetError::Closed)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| NetError::Timeout)?
}

/// Answers one request stream with one frame and finishes it.
pub async fn respond<M: Message>(mut send: quinn::SendStream, message: &M) -> Result<(), NetError> {
    write_frame(&mut send, message).await?;
    let _ = send.finish();
    Ok(())
}

/// The first certificate a connection's peer presented (mutual TLS), if any.
pub fn peer_certificate(connection: &quinn::Connection) -> Option<CertificateDer<'static>> {
    connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned())
}

/// Resolves a peer number (a region) to its current address.
pub type PeerResolver = Box<dyn Fn(u32) -> Option<SocketAddr> + Send + Sync>;

/// One peer's cached connection; its lock is held while connecting, so concurrent users of the
/// same peer wait for one attempt instead of making their own.
type PeerSlot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// Lazily connected, cached QUIC links to numbered peers (regions), reconnecting after a
/// failure. Used by edges (to regions) and regions (to each other), always with mutual TLS.
/// Each peer is connected under its own lock: a peer that does not answer a handshake holds
/// back only the requests to that peer. Only peers the resolver knows get a link, so the links
/// are bounded by the configured regions, whatever peer numbers a request names.
pub struct PeerLinks {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    server_name: &'static str,
    resolve: PeerResolver,
    connections: std::sync::Mutex<std::collections::BTreeMap<u32, PeerSlot>>,
}

impl std::fmt::Debug for PeerLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLinks")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PeerLinks {
    /// Links made from `endpoint` with `config`, checking peers' certificates for `server_name`.
    pub fn new(
        endpoint: quinn::Endpoint,
        config: quinn::ClientConfig,
        server_name: &'static str,
        resolve: PeerResolver,
    ) -> Self {
        Self {
            endpoint,
            config,
            server_name,
            resolve,
            connections: Default::default(),
        }
    }

    /// The live connection to `peer`, connecting first if there is none.
    pub async fn connection(&self, peer: u32) -> Result<quinn::Connection, NetError> {
        let slot = match self.slot(peer) {
            Some(slot) => slot,
            None if (self.resolve)(peer).is_some() => self.new_slot(peer),
            None => return Err(unknown_peer(peer)),
        };
        let mut cached = slot.lock().await;
        if let Some(connection) = cached.as_ref()
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        *cached = None;
        let address = (self.resolve)(peer).ok_or_else(|| unknown_peer(peer))?;
        let connecting =
            self.endpoint
                .connect_with(self.config.clone(), address, self.server_name)?;
        let connection =
            tokio::time::timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS), connecting)
                .await
                .map_err(|_| NetError::Timeout)??;
        *cached = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets the connection to `peer` so the next use reconnects. Never waits: if a
    /// connection attempt to `peer` is under way, it replaces the connection anyway.
    pub async fn forget(&self, peer: u32) {
        if let Some(slot) = self.slot(peer)
            && let Ok(mut cached) = slot.try_lock()
        {
            *cached = None;
        }
    }

    /// Closes the cached connection of every peer the resolver now places at another address
    /// (a region that moved: a standby that took over), so that requests waiting on the old
    /// address fail at once and are retried at the new one; returns how many were closed.
    /// Never waits: a peer being connected to is looked at next time.
    pub fn close_moved(&self) -> usize {
        let slots: Vec<(u32, PeerSlot)> = self
            .connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .map(|(peer, slot)| (*peer, slot.clone()))
            .collect();
        let mut closed = 0;
        for (peer, slot) in slots {
            let Ok(mut cached) = slot.try_lock() else {
                continue;
            };
            let moved = cached.as_ref().is_some_and(|connection| {
                connection.close_reason().is_none()
                    && self.moved_from(peer, connection.remote_address())
            });
            if moved && let Some(connection) = cached.take() {
                connection.close(0u32.into(), b"the peer moved");
                closed += 1;
            }
        }
        closed
    }

    /// Closes, every [`limits::PEER_MOVE_CHECK_INTERVAL_MS`], the connections to peers that
    /// moved ([`Self::close_moved`]); runs until its task is dropped. For edges and regions whose
    /// resolver reads a peers file a promoted standby rewrites.
    pub async fn close_moved_forever(&self) {
        loop {
            tokio::time::sleep(Duration::from_millis(limits::PEER_MOVE_CHECK_INTERVAL_MS)).await;
            let moved = self.close_moved();
            if moved > 0 {
                tracing::warn!(moved, "a peer moved: its old connection is closed");
            }
        }
    }

    /// Whether a request whose connection to `peer` at `from` failed (not timed out) should be
    /// sent once more: the peer moved meanwhile, and this was the request's attempt number
    /// `attempts` (from 1) of at most [`limits::MOVED_PEER_ATTEMPTS_MAX`].
    pub fn retry_at_new_address(&self, peer: u32, from: SocketAddr, attempts: u32) -> bool {
        let retry = attempts < limits::MOVED_PEER_ATTEMPTS_MAX && self.moved_from(peer, from);
        if retry {
            tracing::info!(
                peer,
                "the peer moved during a request: sending it to its new address"
            );
        }
        retry
    }

    fn slot(&self, peer: u32) -> Option<PeerSlot> {
        self.connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&peer)
            .cloned()
    }

    fn new_slot(&self, peer: u32) -> PeerSlot {
        self.connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .entry(peer)
            .or_default()
            .clone()
    }

    /// Whether the resolver places `peer` at another address than `from` now: it moved (a
    /// standby took over) while a request was under way at `from`.
    pub fn moved_from(&self, peer: u32, from: std::net::SocketAddr) -> bool {
        (self.resolve)(peer).is_some_and(|now| now != from)
    }

    /// One request to `peer` within `timeout`; a transport failure drops the cached connection.
    /// A request whose connection failed because the peer moved meanwhile is sent once more to
    /// the new address, within what is left of `timeout` (a request must be safe to repeat, as
    /// every request between regions is: a lost answer is retried the same way).
    pub async fn request<Req: Message, Resp: Message + Default>(
        &self,
        peer: u32,
        message: &Req,
        timeout: Duration,
    ) -> Result<Resp, NetError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let connection = self.connection(peer).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let result = request(&connection, message, left).await;
            if !matches!(
                result,
                Err(NetError::Connection(_)
                    | NetError::Timeout
                    | NetError::Write(_)
                    | NetError::Read(_))
            ) {
                return result;
            }
            self.forget(peer).await;
            let retry = !matches!(result, Err(NetError::Timeout))
                && tokio::time::Instant::now() < deadline
                && self.retry_at_new_address(peer, connection.remote_address(), attempts);
            if !retry {
                return result;
            }
        }
    }
}

fn unknown_peer(peer: u32) -> NetError {
    NetError::Remote(ProtoError::new(
        relay_proto::ErrorCode::Unavailable,
        format!("no address known for region {peer}"),
    ))
}

/// The connections a server holds, counted against a bound: each accepted connection takes a
/// slot and gives it back when its [`ConnectionSlot`] drops; past the bound the server refuses
/// new connections (QUIC `CONNECTION_REFUSED`, which peers retry with backoff) instead of
/// spawning tasks without end.
#[derive(Debug, Clone)]
pub struct ConnectionSlots {
    held: Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
}

/// One held connection slot, given back on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    held: Arc<std::sync::atomic::AtomicUsize>,
}

impl ConnectionSlots {
    /// At most `max` connections at once.
    pub fn new(max: usize) -> Self {
        Self {
            held: Arc::default(),
            max,
        }
    }

    /// A slot for one more connection, unless `max` are held.
    pub fn try_take(&self) -> Option<ConnectionSlot> {
        use std::sync::atomic::Ordering;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.max).then_some(held + 1)
            })
            .ok()
            .map(|_| ConnectionSlot {
                held: self.held.clone(),
            })
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.held.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Accepts one incoming connection if a slot is free: the connection and its slot, or `None`
/// when the handshake failed or the server is full (the connection is then refused).
pub async fn accept_bounded(
    slots: &ConnectionSlots,
    incoming: quinn::Incoming,
) -> Option<(quinn::Connection, ConnectionSlot)> {
    let Some(slot) = slots.try_take() else {
        tracing::warn!(
            held = slots.held(),
            remote = %incoming.remote_address(),
            "refusing a connection: the server holds as many as it may"
        );
        incoming.refuse();
        return None;
    };
    match incoming.await {
        Ok(connection) => Some((connection, slot)),
        Err(error) => {
            tracing::debug!(%error, "handshake failed");
            None
        }
    }
}

/// The address of an endpoint as logged in its "listening on" line.
pub fn listening_line(role: &str, address: SocketAddr) -> String {
    format!("{role} listening on {address}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_bounded_and_given_back() {
        let slots = ConnectionSlots::new(2);
        let first = slots.try_take().expect("a slot");
        let second = slots.try_take().expect("a slot");
        assert!(slots.try_take().is_none(), "full");
        assert_eq!(slots.held(), 2);
        drop(first);
        let third = slots.try_take().expect("one was given back");
        drop((second, third));
        assert_eq!(slots.held(), 0);
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let error = load_roots(Path::new("/nonexistent/ca.pem")).expect_err("no file");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }
}
