//! quinn over turmoil: an [`AsyncUdpSocket`] on a turmoil UDP socket, and the
//! [`SocketFactory`]s that hand it to an endpoint.
//!
//! turmoil's `bind` is an `async fn` that never waits (it registers the port in the simulated
//! host at once), so [`SimSockets`] binds synchronously, as quinn's factory needs, and also
//! seeds every endpoint's random number generator from one seed. turmoil never blocks a send (a lost packet is dropped in the
//! simulated network), so the socket is always writable. One datagram per receive call, no GSO
//! or GRO.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};
use relay_net::SocketFactory;

use crate::faults::NetFaults;

type Readiness = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// A turmoil UDP socket that quinn can drive.
pub struct SimSocket {
    socket: Arc<turmoil::net::UdpSocket>,
    /// The pending "readable" future of the task waiting to receive, if any.
    readable: Mutex<Option<Readiness>>,
    local: SocketAddr,
    log: Option<PacketLog>,
    /// Loss and duplication, drawn from `draws` (a SplitMix64 state).
    faults: Option<Arc<NetFaults>>,
    draws: Mutex<u64>,
}

/// A fingerprint of every datagram sent through the sockets that share it: how many, and a
/// digest of their simulated send times, source ports, destinations and sizes (not their
/// bytes, which hold random keys). Two runs with equal fingerprints put the same datagrams on
/// the network at the same simulated instants.
#[derive(Debug, Clone, Default)]
pub struct PacketLog {
    inner: Arc<Mutex<PacketFingerprint>>,
}

/// What a [`PacketLog`] has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketFingerprint {
    /// Datagrams sent.
    pub datagrams: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// FNV-1a digest of (time ns, source port, destination, size) of every datagram in order.
    pub digest: u64,
}

impl PacketLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// What the log has seen so far.
    pub fn fingerprint(&self) -> PacketFingerprint {
        *self
            .inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn record(&self, source: SocketAddr, destination: SocketAddr, size: usize) {
        let at_ns = turmoil::sim_elapsed().map_or(0, |elapsed| elapsed.as_nanos());
        let mut fingerprint = self
            .inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        fingerprint.datagrams += 1;
        fingerprint.bytes += size as u64;
        let mut digest = if fingerprint.digest == 0 {
            0xCBF2_9CE4_8422_2325
        } else {
            fingerprint.digest
        };
        let fields = format!("{at_ns} {} {destination} {size};", source.port());
        for byte in fields.bytes() {
            digest = (digest ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3);
        }
        fingerprint.digest = digest;
    }
}

impl fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimSocket")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl SimSocket {
    /// Binds a simulated UDP socket on this host (call inside a turmoil host or client).
    pub async fn bind(address: SocketAddr) -> io::Result<Arc<Self>> {
        Self::bind_logged(address, None).await
    }

    /// [`SimSocket::bind`], recording every datagram sent in `log`.
    pub async fn bind_logged(address: SocketAddr, log: Option<PacketLog>) -> io::Result<Arc<Self>> {
        Self::bind_with(address, log, None, 0).await
    }

    /// [`SimSocket::bind_logged`], also losing and duplicating datagrams as `faults` says,
    /// with draws seeded by `seed`.
    pub async fn bind_with(
        address: SocketAddr,
        log: Option<PacketLog>,
        faults: Option<Arc<NetFaults>>,
        seed: u64,
    ) -> io::Result<Arc<Self>> {
        let socket = turmoil::net::UdpSocket::bind(address).await?;
        let local = socket.local_addr()?;
        Ok(Arc::new(Self {
            socket: Arc::new(socket),
            readable: Mutex::new(None),
            local,
            log,
            faults,
            draws: Mutex::new(seed),
        }))
    }

    /// How many copies of the next datagram to send (1 without faults).
    fn copies(&self) -> usize {
        let Some(faults) = &self.faults else {
            return 1;
        };
        let mut state = self
            .draws
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *state = crate::seed::split_mix(*state);
        faults.copies((*state % 1_000_000) as u32)
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // A lost datagram looks sent to the sender, as on a real network.
        for _ in 0..self.copies() {
            self.socket
                .try_send_to(transmit.contents, transmit.destination)?;
        }
        if let Some(log) = &self.log {
            log.record(self.local, transmit.destination, transmit.contents.len());
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        loop {
            match self.socket.try_recv_from(buf) {
                Ok((len, addr)) => {
                    *slot = RecvMeta {
                        addr,
                        len,
                        stride: len,
                        ecn: None,
                        dst_ip: Some(self.local.ip()),
                    };
                    return Poll::Ready(Ok(1));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    let mut readable = self
                        .readable
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner());
                    let socket = self.socket.clone();
                    let future = readable
                        .get_or_insert_with(|| Box::pin(async move { socket.readable().await }));
                    match future.as_mut().poll(cx) {
                        Poll::Ready(result) => {
                            *readable = None;
                            result?;
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// A [`SocketFactory`] binding simulated sockets on the current turmoil host, each endpoint's
/// random number generator seeded from one seed (call `bind` inside a turmoil host or client).
#[derive(Debug)]
pub struct SimSockets {
    seed: u64,
    endpoints: AtomicU64,
    sockets: AtomicU64,
    log: Option<PacketLog>,
    faults: Option<Arc<NetFaults>>,
}

impl SimSockets {
    /// Sockets whose endpoints draw their seeds from `seed`, in the order they are bound.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            endpoints: AtomicU64::new(0),
            sockets: AtomicU64::new(0),
            log: None,
            faults: None,
        }
    }

    /// These sockets record every datagram they send in `log`.
    pub fn with_log(mut self, log: PacketLog) -> Self {
        self.log = Some(log);
        self
    }

    /// These sockets lose and duplicate datagrams as `faults` says.
    pub fn with_faults(mut self, faults: Arc<NetFaults>) -> Self {
        self.faults = Some(faults);
        self
    }
}

impl SocketFactory for SimSockets {
    fn bind(&self, address: SocketAddr) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let socket = self.sockets.fetch_add(1, Ordering::Relaxed);
        let draws = crate::seed::derive(self.seed, "socket", socket);
        let mut bind = std::pin::pin!(SimSocket::bind_with(
            address,
            self.log.clone(),
            self.faults.clone(),
            draws
        ));
        match bind.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(socket) => Ok(socket?),
            Poll::Pending => Err(io::Error::other(
                "binding a simulated socket did not complete at once",
            )),
        }
    }

    fn runtime(&self) -> Arc<dyn Runtime> {
        // quinn's tokio runtime reads tokio's clock, which turmoil simulates.
        Arc::new(TokioRuntime)
    }

    fn endpoint_rng_seed(&self) -> Option<[u8; 32]> {
        let endpoint = self.endpoints.fetch_add(1, Ordering::Relaxed);
        let mut state = crate::seed::mix(self.seed, endpoint);
        let mut seed = [0u8; 32];
        for chunk in seed.chunks_exact_mut(8) {
            state = crate::seed::split_mix(state);
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        Some(seed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use relay_net::{self as net, TlsIdentity};
    use relay_proto::wire::FetchQueue;

    use super::*;

    fn identity() -> (TlsIdentity, Arc<quinn::rustls::RootCertStore>) {
        // Ed25519: signatures of one size, so the handshake's packets are too.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let params =
            rcgen::CertificateParams::new(vec![net::EDGE_SERVER_NAME.to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let der = quinn::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let mut roots = quinn::rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        (
            TlsIdentity {
                cert_chain: vec![cert.der().clone()],
                key: der,
            },
            Arc::new(roots),
        )
    }

    /// Runs one framed request over QUIC between two simulated hosts; `lossy` drops a share of
    /// packets, which QUIC must recover from. Returns the simulated time it took and how many
    /// datagrams both sides sent.
    fn request_over_simulated_quic(lossy: bool) -> (Duration, u64) {
        let (identity, roots) = identity();
        let log = PacketLog::new();
        let (server_log, device_log) = (log.clone(), log.clone());
        let mut sim = turmoil::Builder::new()
            .simulation_duration(Duration::from_secs(120))
            .rng_seed(7)
            .build();
        if lossy {
            sim.set_fail_rate(0.2);
        }
        sim.host("server", move || {
            let identity = identity.clone();
            let server_log = server_log.clone();
            async move {
                let config = net::server_config(identity.clone(), None, net::ALPN_DEVICE)?;
                let address = "0.0.0.0:4433".parse()?;
                let sockets = SimSockets::new(1).with_log(server_log);
                let endpoint = net::bind_server_endpoint(&sockets, address, config, &identity)?;
                while let Some(incoming) = endpoint.accept().await {
                    let connection = incoming.await?;
                    let (send, mut recv) = connection.accept_bi().await?;
                    let request: FetchQueue = net::read_frame(&mut recv).await?.ok_or("closed")?;
                    let answer = FetchQueue {
                        after_queue_seq: request.after_queue_seq + 1,
                        limit: 0,
                    };
                    net::respond(send, &answer).await?;
                    connection.closed().await;
                }
                Ok(())
            }
        });
        let elapsed = Arc::new(Mutex::new(Duration::ZERO));
        let record = elapsed.clone();
        sim.client("device", async move {
            let address = "0.0.0.0:5000".parse()?;
            let sockets = SimSockets::new(2).with_log(device_log);
            let endpoint = net::bind_endpoint(&sockets, address, None)?;
            let config = net::client_config(roots, None, net::ALPN_DEVICE)?;
            let server = SocketAddr::new(turmoil::lookup("server"), 4433);
            let start = tokio::time::Instant::now();
            let connection = endpoint
                .connect_with(config, server, net::EDGE_SERVER_NAME)?
                .await?;
            let question = FetchQueue {
                after_queue_seq: 41,
                limit: 1,
            };
            let answer: FetchQueue =
                net::request(&connection, &question, Duration::from_secs(60)).await?;
            assert_eq!(answer.after_queue_seq, 42);
            *record.lock().unwrap_or_else(|p| p.into_inner()) = start.elapsed();
            connection.close(0u32.into(), b"done");
            endpoint.wait_idle().await;
            Ok(())
        });
        sim.run().expect("simulation succeeds");
        let elapsed = *elapsed.lock().unwrap_or_else(|p| p.into_inner());
        (elapsed, log.fingerprint().datagrams)
    }

    #[test]
    fn quic_runs_over_the_simulated_network() {
        let (elapsed, datagrams) = request_over_simulated_quic(false);
        assert!(elapsed > Duration::ZERO, "simulated time passed");
        assert!(datagrams > 0, "datagrams crossed the network");
    }

    /// With a fifth of the datagrams dropped, the request still completes, and loss did
    /// happen: it took longer and QUIC sent more datagrams (retransmissions, probes) than
    /// over a clean network.
    #[test]
    fn quic_recovers_from_simulated_loss() {
        let (clean_elapsed, clean_datagrams) = request_over_simulated_quic(false);
        let (lossy_elapsed, lossy_datagrams) = request_over_simulated_quic(true);
        assert!(
            lossy_datagrams > clean_datagrams,
            "no retransmission: {lossy_datagrams} datagrams with loss, {clean_datagrams} without"
        );
        assert!(
            lossy_elapsed > clean_elapsed,
            "loss cost no time: {lossy_elapsed:?} with loss, {clean_elapsed:?} without"
        );
    }

    #[test]
    fn the_same_seed_takes_the_same_simulated_time() {
        assert_eq!(
            request_over_simulated_quic(true),
            request_over_simulated_quic(true)
        );
    }
}
