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

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime};
use relay_proto::limits::{AUTH_KEYING_MATERIAL_BYTES, AUTH_KEYING_MATERIAL_LABEL};
use relay_proto::{FrameError, ProtoError};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

pub mod cache;
pub mod config;
mod frames;
pub mod limits;
mod peers;
#[cfg(feature = "pki")]
pub mod pki;
pub mod seeded;
mod slots;

pub use frames::{FrameReader, read_frame, read_frame_limited, request, respond, write_frame};
pub use peers::{PeerLinks, PeerResolver};
pub use slots::{ConnectionSlot, ConnectionSlots, accept_bounded};

use limits::{
    DEVICE_INITIAL_MTU_BYTES, DEVICE_MTU_PROBE_BYTES, DEVICE_RECEIVE_WINDOW_BYTES,
    DEVICE_SEND_WINDOW_BYTES, DEVICE_STREAM_RECEIVE_WINDOW_BYTES,
    DEVICE_STREAMS_PER_CONNECTION_MAX, DEVICE_TLS_SERVER_NAMES_MAX,
    DEVICE_TLS_TICKETS_PER_CONNECTION, IDLE_TIMEOUT_MS, KEEP_ALIVE_INTERVAL_MS,
    MEDIA_STREAMS_PER_CONNECTION_MAX, STREAMS_PER_CONNECTION_MAX,
};

/// ALPN of device connections to an edge.
pub const ALPN_DEVICE: &[u8] = b"relay-device/1";
/// ALPN of internal connections (edge→region, region→region).
pub const ALPN_INTERNAL: &[u8] = b"relay-internal/1";
/// ALPN of device connections to a region's media endpoint (one blob transfer each, under a
/// media pass the region issued over the device's edge).
pub const ALPN_MEDIA: &[u8] = b"relay-media/1";
/// TLS server name every edge certificate carries.
pub const EDGE_SERVER_NAME: &str = "edge.relay.test";
/// TLS server name every region certificate carries.
pub const REGION_SERVER_NAME: &str = "region.relay.internal";
/// TLS server name of a region's media endpoint (devices check it); a deployment's region
/// certificates carry it beside [`REGION_SERVER_NAME`].
pub const MEDIA_SERVER_NAME: &str = "media.relay.test";

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
/// operating system's, unless a simulation seeded the thread), and preferring
/// TLS_AES_128_GCM_SHA256 to rustls's first choice, TLS_AES_256_GCM_SHA384: the key schedule of
/// every handshake then runs HKDF over SHA-256 instead of SHA-512's compression (6 % of an
/// edge's CPU during a wave of logins, `perf`), and every packet is sealed with AES-128 (as
/// QUIC's Initial packets are anyway). Both ends take this order, so both prefer it.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
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
/// [`device_transport`], media connections [`media_transport`], internal ones
/// [`internal_transport`].
fn transport(alpn: &[u8], end: End) -> Arc<quinn::TransportConfig> {
    if alpn == ALPN_DEVICE {
        device_transport(end)
    } else if alpn == ALPN_MEDIA {
        media_transport(end)
    } else {
        internal_transport()
    }
}

/// Device connections to a region's media endpoint: one per transfer, busy while it lasts and
/// closed after, so quinn's generous windows (a device's edge connection keeps small ones for
/// the ten thousand idle devices an edge holds). The device opens every stream, few at once,
/// and sends no datagrams.
fn media_transport(end: End) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(
        quinn::IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS)).ok(),
    );
    transport.max_concurrent_uni_streams(0u32.into());
    transport.datagram_receive_buffer_size(None);
    match end {
        End::Server => {
            transport.max_concurrent_bidi_streams(MEDIA_STREAMS_PER_CONNECTION_MAX.into());
        }
        End::Client => {
            transport.max_concurrent_bidi_streams(0u32.into());
            transport.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_INTERVAL_MS)));
        }
    }
    Arc::new(transport)
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
/// - each end probes the path once for datagrams of [`DEVICE_MTU_PROBE_BYTES`] and keeps
///   [`DEVICE_INITIAL_MTU_BYTES`] where that probe is lost, instead of quinn's binary search (five
///   or six probes each way). A probe is nearly all padding, and quinn parses padding a byte at
///   a time: the search cost the edge and the device about a quarter of a login's CPU
///   (`relayd bench connections`), while larger datagrams only help the few replies (and blobs
///   through the edge) larger than one;
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
    let mut discovery = quinn::MtuDiscoveryConfig::default();
    // The search's first step is smaller than its minimum change, so it probes its upper
    // bound alone, and stops there whether that probe arrives or not.
    discovery
        .upper_bound(DEVICE_MTU_PROBE_BYTES)
        .minimum_change(DEVICE_MTU_PROBE_BYTES - DEVICE_INITIAL_MTU_BYTES);
    transport.mtu_discovery_config(Some(discovery));
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
    /// The roots, for the media configuration.
    roots: Arc<RootCertStore>,
    /// The configuration of connections to regions' media endpoints, made on first use.
    media: Arc<std::sync::OnceLock<quinn::ClientConfig>>,
}

impl DeviceTls {
    /// A device trusting `roots`, with no session yet: its next login checks the edge's
    /// certificate in full.
    pub fn new(roots: Arc<RootCertStore>) -> Result<Self, NetError> {
        let certificates_verified = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
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
            roots,
            media: Arc::default(),
        })
    }

    /// The configuration of this device's connections to regions' media endpoints (ALPN
    /// [`ALPN_MEDIA`], server name [`MEDIA_SERVER_NAME`], the same roots; one connection per
    /// transfer, so no sessions kept).
    pub fn media_config(&self) -> Result<quinn::ClientConfig, NetError> {
        if let Some(config) = self.media.get() {
            return Ok(config.clone());
        }
        let config = client_config(self.roots.clone(), None, ALPN_MEDIA)?;
        Ok(self.media.get_or_init(|| config).clone())
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

/// The first certificate a connection's peer presented (mutual TLS), if any.
pub fn peer_certificate(connection: &quinn::Connection) -> Option<CertificateDer<'static>> {
    connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned())
}

/// The address of an endpoint as logged in its "listening on" line.
pub fn listening_line(role: &str, address: SocketAddr) -> String {
    format!("{role} listening on {address}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_prefer_aes_128_with_sha_256() {
        // A client offers its suites in this order and the server takes the first it has, so
        // both ends of every Relay connection settle on TLS_AES_128_GCM_SHA256.
        let suites: Vec<_> = provider()
            .cipher_suites
            .iter()
            .map(|suite| suite.suite())
            .collect();
        assert_eq!(
            suites.first(),
            Some(&rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let error = load_roots(Path::new("/nonexistent/ca.pem")).expect_err("no file");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }
}
