//! quinn over turmoil: an [`AsyncUdpSocket`] on a turmoil UDP socket, and a [`SocketFactory`]
//! that hands it to an endpoint.
//!
//! turmoil sockets are bound asynchronously inside a simulated host, while quinn binds
//! synchronously through the factory; so a socket is bound first ([`SimSocket::bind`]) and the
//! factory ([`BoundSocket`]) passes it on. turmoil never blocks a send (a lost packet is
//! dropped in the simulated network), so the socket is always writable. One datagram per
//! receive call, no GSO or GRO.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};
use relay_proto::net::SocketFactory;

type Readiness = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// A turmoil UDP socket that quinn can drive.
pub struct SimSocket {
    socket: Arc<turmoil::net::UdpSocket>,
    /// The pending "readable" future of the task waiting to receive, if any.
    readable: Mutex<Option<Readiness>>,
    local: SocketAddr,
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
        let socket = turmoil::net::UdpSocket::bind(address).await?;
        let local = socket.local_addr()?;
        Ok(Arc::new(Self {
            socket: Arc::new(socket),
            readable: Mutex::new(None),
            local,
        }))
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
        self.socket
            .try_send_to(transmit.contents, transmit.destination)
            .map(|_| ())
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

/// A [`SocketFactory`] handing out one socket bound beforehand with [`SimSocket::bind`].
#[derive(Debug, Clone)]
pub struct BoundSocket(pub Arc<SimSocket>);

impl SocketFactory for BoundSocket {
    fn bind(&self, _address: SocketAddr) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(self.0.clone())
    }

    fn runtime(&self) -> Arc<dyn Runtime> {
        // quinn's tokio runtime reads tokio's clock, which turmoil simulates.
        Arc::new(TokioRuntime)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use relay_proto::net::{self, TlsIdentity};
    use relay_proto::wire::FetchQueue;

    use super::*;

    fn identity() -> (TlsIdentity, Arc<quinn::rustls::RootCertStore>) {
        let key = rcgen::KeyPair::generate().expect("key");
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
    /// packets, which QUIC must recover from.
    fn request_over_simulated_quic(lossy: bool) -> Duration {
        let (identity, roots) = identity();
        let mut sim = turmoil::Builder::new()
            .simulation_duration(Duration::from_secs(120))
            .rng_seed(7)
            .build();
        if lossy {
            sim.set_fail_rate(0.2);
        }
        sim.host("server", move || {
            let identity = identity.clone();
            async move {
                let socket = SimSocket::bind("0.0.0.0:4433".parse()?).await?;
                let config = net::server_config(identity.clone(), None, net::ALPN_DEVICE)?;
                let address = socket.local;
                let endpoint =
                    net::bind_server_endpoint(&BoundSocket(socket), address, config, &identity)?;
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
            let socket = SimSocket::bind("0.0.0.0:5000".parse()?).await?;
            let address = socket.local;
            let endpoint = net::bind_endpoint(&BoundSocket(socket), address, None)?;
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
        *elapsed.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[test]
    fn quic_runs_over_the_simulated_network() {
        let elapsed = request_over_simulated_quic(false);
        assert!(elapsed > Duration::ZERO, "simulated time passed");
    }

    #[test]
    fn quic_recovers_from_simulated_loss() {
        request_over_simulated_quic(true);
    }

    #[test]
    fn the_same_seed_takes_the_same_simulated_time() {
        assert_eq!(
            request_over_simulated_quic(true),
            request_over_simulated_quic(true)
        );
    }
}
