//! The connection benchmark's ceiling (W2), measured in the same run: a bare QUIC server in a
//! process of its own (`relayd bench quic-server`, hidden), with everything of the edge's that
//! is quinn's and rustls's, and nothing of Relay's:
//!
//! - the device TLS and transport ([`relay_net::server_config`] for [`ALPN_DEVICE`]: the same
//!   certificate kind, session tickets, stream limits and windows), the device socket's receive
//!   buffer, and the edge's runtime and allocator settings (the binary runs it as it runs an
//!   edge);
//! - per connection, the shape of a login: the device opens one stream and sends two frames
//!   the size of a login's (hello, then authenticate with a signature), each echoed back, and
//!   the stream stays open as a device's control stream does;
//! - no signature checked, no device key looked up, no session, push slot or cache.
//!
//! The devices are measured as the edge's are ([`crate::connections`]): each with its own TLS
//! sessions, every device at once within [`CONNECTS_IN_FLIGHT_MAX`](crate::limits), a first
//! wave of full handshakes, a second of resumed ones, the server's resident memory before,
//! connected and after both waves left. What the edge spends beyond these figures is Relay's.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Child;
use std::sync::Arc;

use relay_devnet::pki::Pki;
use relay_net::limits::DEVICE_SOCKET_RECEIVE_BUFFER_BYTES;
use relay_net::{
    ALPN_DEVICE, BufferedSockets, DeviceTls, NetError, TlsIdentity, bind_endpoint, read_frame,
    write_frame,
};
use relay_proto::ids::{AccountId, DeviceAddress, DeviceId};
use relay_proto::wire::{Authenticate, ClientRequest, Hello, client_request};
use serde::Serialize;

use crate::BenchError;
use crate::connections::{connect_each, drops_since, leave_all, settled_rss};
use crate::device::{BENCH_CLIENT_VERSION, EdgeLink, Endpoints};
use crate::measure::{
    CpuOf, Percentiles, cpu_time, process_cpu_time, ratio, udp_receive_buffer_drops,
};
use crate::servers::Servers;

/// The line the server prints once bound, before its address.
const LISTENING: &str = "quic-server listening on ";

/// The bare server's figures, measured like the edge's.
#[derive(Debug, Serialize)]
pub struct BareQuicCeiling {
    /// Devices connected in each wave.
    pub devices: usize,
    /// The server's resident memory before the devices connected, in bytes.
    pub rss_before_bytes: u64,
    /// With every device connected and idle, in bytes.
    pub rss_connected_bytes: u64,
    /// Once every device left (after both waves) and it settled, in bytes.
    pub rss_after_bytes: u64,
    /// `(connected - before) / devices`, in bytes.
    pub bytes_per_connection: f64,
    /// `(after - before) / before`.
    pub rss_after_share_above_before: f64,
    /// Every device's first login: a full TLS handshake.
    pub first: BareWave,
    /// Every device again, with the TLS session its first login left it.
    pub again: BareWave,
    /// UDP datagrams dropped at full receive buffers while the devices left (both times) and
    /// the server's memory settled.
    pub udp_receive_drops_leaving: Option<u64>,
}

/// Every device logging in to the bare server once.
#[derive(Debug, Serialize)]
pub struct BareWave {
    /// From the first handshake to the last echoed login, in seconds.
    pub seconds: f64,
    /// Logins per second.
    pub connections_per_second: f64,
    /// Handshake plus the login's round trips, of one device.
    pub latency: Percentiles,
    /// The server's CPU seconds meanwhile.
    pub server_cpu_seconds: Option<f64>,
    /// This process's CPU seconds meanwhile (the devices).
    pub bench_cpu_seconds: Option<f64>,
    /// Server certificates checked in full: logins that were not resumed.
    pub certificates_verified: u64,
    /// UDP datagrams dropped meanwhile at a full socket receive buffer, any socket on this
    /// machine.
    pub udp_receive_drops: Option<u64>,
}

/// Binds the bare server on `listen` with the edge certificate `cert` and key `key`; the
/// caller announces the address and then runs [`serve`].
pub fn bind(
    cert: &Path,
    key: &Path,
    listen: SocketAddr,
) -> Result<(quinn::Endpoint, SocketAddr), BenchError> {
    let identity =
        TlsIdentity::load(cert, key).map_err(BenchError::net("the server's certificate"))?;
    let config = relay_net::server_config(identity, None, ALPN_DEVICE)
        .map_err(BenchError::net("the server's TLS configuration"))?;
    let endpoint = bind_endpoint(
        &BufferedSockets {
            receive_buffer_bytes: DEVICE_SOCKET_RECEIVE_BUFFER_BYTES,
        },
        listen,
        Some(config),
    )
    .map_err(BenchError::net(format!("binding {listen}")))?;
    let address = endpoint
        .local_addr()
        .map_err(|error| BenchError::net("the server's address")(NetError::Io(error)))?;
    Ok((endpoint, address))
}

/// The text the binary prints once bound.
pub fn listening_line(address: SocketAddr) -> String {
    format!("{LISTENING}{address}")
}

/// Serves every connection of `endpoint` ([`hold`]) until `shutdown` completes.
pub async fn serve(endpoint: quinn::Endpoint, shutdown: impl Future<Output = ()>) {
    let accepting = async {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(hold(incoming));
        }
    };
    tokio::select! {
        () = accepting => {}
        () = shutdown => {}
    }
    endpoint.close(0u32.into(), b"stopping");
}

/// One connection: the first stream's [`LOGIN_FRAMES`] frames echoed, then the stream and the
/// connection held until the device closes it.
async fn hold(incoming: quinn::Incoming) {
    let Ok(connection) = incoming.await else {
        return;
    };
    let Ok((mut send, mut recv)) = connection.accept_bi().await else {
        return;
    };
    for _ in 0..LOGIN_FRAMES {
        let Ok(Some(frame)) = read_frame::<ClientRequest>(&mut recv).await else {
            return;
        };
        if write_frame(&mut send, &frame).await.is_err() {
            return;
        }
    }
    connection.closed().await;
}

/// Frames a login sends on its control stream, each answered: hello, then authenticate.
const LOGIN_FRAMES: usize = 2;

/// The frames of one login, as large as a device's.
fn login_frames() -> [ClientRequest; LOGIN_FRAMES] {
    let hello = ClientRequest {
        body: Some(client_request::Body::Hello(Hello {
            client_version: BENCH_CLIENT_VERSION.into(),
        })),
    };
    let authenticate = ClientRequest {
        body: Some(client_request::Body::Authenticate(Authenticate {
            device: DeviceAddress {
                account: AccountId(u64::from(u32::MAX)),
                device: DeviceId(1),
            }
            .into(),
            signature: vec![0x5a; 64],
            queue_cursor: Some(0),
            next_device_seq: Some(1),
        })),
    };
    [hello, authenticate]
}

/// A device's side of a bare login on `link`: its frames sent and echoed; returns the open
/// stream, kept as a device keeps its control stream.
async fn login(
    link: &EdgeLink,
    frames: &[ClientRequest; LOGIN_FRAMES],
) -> Result<(quinn::SendStream, quinn::RecvStream), BenchError> {
    let failed = |what: &'static str| BenchError::net(format!("a bare login: {what}"));
    let (mut send, mut recv) = link
        .connection()
        .open_bi()
        .await
        .map_err(|error| failed("opening its stream")(NetError::from(error)))?;
    for frame in frames {
        write_frame(&mut send, frame)
            .await
            .map_err(failed("sending"))?;
        let echoed = read_frame::<ClientRequest>(&mut recv)
            .await
            .map_err(failed("receiving"))?;
        if echoed.as_ref() != Some(frame) {
            return Err(BenchError::Protocol(
                "the bare server answered a login frame with something else".into(),
            ));
        }
    }
    Ok((send, recv))
}

/// The bare server as a child process of this benchmark.
struct ServerProcess {
    child: Child,
    address: SocketAddr,
}

impl ServerProcess {
    /// Starts `relayd bench quic-server` with an edge certificate of the PKI in `folder`, its
    /// log in `folder`, and waits for its listening line.
    fn start(relayd: &Path, folder: &Path, pki: &Pki) -> Result<Self, BenchError> {
        let certs = pki.edge(1)?;
        let (child, address) = crate::servers::spawn_listening(
            relayd,
            &[
                "bench".as_ref(),
                "quic-server".as_ref(),
                "--cert".as_ref(),
                certs.cert.as_os_str(),
                "--key".as_ref(),
                certs.key.as_os_str(),
                "--listen".as_ref(),
                "127.0.0.1:0".as_ref(),
            ],
            &folder.join("quic-server.log"),
            "relayd bench quic-server",
        )?;
        Ok(Self { child, address })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends the child this benchmark started.
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Measures the bare server (`relayd` is the executable that runs it) with `devices` devices,
/// in `folder`.
pub(crate) async fn measure(
    relayd: &Path,
    folder: &Path,
    devices: usize,
) -> Result<BareQuicCeiling, BenchError> {
    std::fs::create_dir_all(folder).map_err(BenchError::io("creating", folder))?;
    let pki = Pki::open(&folder.join("pki"))?;
    let server = ServerProcess::start(relayd, folder, &pki)?;
    let measured = measure_server(&server, &pki, devices).await;
    server.stop();
    measured
}

async fn measure_server(
    server: &ServerProcess,
    pki: &Pki,
    devices: usize,
) -> Result<BareQuicCeiling, BenchError> {
    let roots = relay_net::load_roots(&pki.ca_cert()).map_err(BenchError::net("the CA"))?;
    let endpoints = Arc::new(Endpoints::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        roots.clone(),
    )?);
    let sessions = (0..devices)
        .map(|_| {
            DeviceTls::new(roots.clone())
                .map(Arc::new)
                .map_err(BenchError::net("a device's TLS configuration"))
        })
        .collect::<Result<Vec<_>, BenchError>>()?;
    let frames = Arc::new(login_frames());
    let pid = server.pid();
    let rss_before = settled_rss(pid).await?;
    let (held, first) = wave(server, &endpoints, &sessions, &frames).await?;
    tokio::time::sleep(std::time::Duration::from_millis(
        crate::limits::IDLE_HOLD_MS,
    ))
    .await;
    if held.iter().any(|(link, _)| !link.is_open()) {
        return Err(BenchError::Refused(
            "an idle connection to the bare server closed while held".into(),
        ));
    }
    let rss_connected = Servers::resident_bytes(pid)?;
    let drops_before_leaving = udp_receive_buffer_drops();
    leave_all(&endpoints, held.into_iter().map(|(link, _)| link)).await;
    let (held, again) = wave(server, &endpoints, &sessions, &frames).await?;
    leave_all(&endpoints, held.into_iter().map(|(link, _)| link)).await;
    let rss_after = settled_rss(pid).await?;
    let udp_receive_drops_leaving = drops_since(drops_before_leaving)
        .zip(again.udp_receive_drops)
        .map(|(both, wave)| both.saturating_sub(wave));
    Ok(BareQuicCeiling {
        devices,
        rss_before_bytes: rss_before,
        rss_connected_bytes: rss_connected,
        rss_after_bytes: rss_after,
        bytes_per_connection: rss_connected.saturating_sub(rss_before) as f64 / devices as f64,
        rss_after_share_above_before: ratio(
            rss_after as f64 - rss_before as f64,
            rss_before as f64,
        ),
        first,
        again,
        udp_receive_drops_leaving,
    })
}

type Held = (EdgeLink, (quinn::SendStream, quinn::RecvStream));

/// Every device logs in to the bare server once, timed, with the CPU of both processes.
async fn wave(
    server: &ServerProcess,
    endpoints: &Arc<Endpoints>,
    sessions: &[Arc<DeviceTls>],
    frames: &Arc<[ClientRequest; LOGIN_FRAMES]>,
) -> Result<(Vec<Held>, BareWave), BenchError> {
    let verified = || {
        sessions
            .iter()
            .map(|tls| tls.certificates_verified())
            .sum::<u64>()
    };
    let verified_before = verified();
    let drops_before = udp_receive_buffer_drops();
    let server_before = process_cpu_time(server.pid());
    let bench_before = cpu_time(CpuOf::Process);
    let address = server.address;
    let began = std::time::Instant::now();
    let (held, latency): (Vec<Held>, Percentiles) = connect_each(sessions, |tls| {
        let endpoints = endpoints.clone();
        let frames = frames.clone();
        async move {
            let link = endpoints.connect_with(address, tls.config()).await?;
            let streams = login(&link, &frames).await?;
            Ok((link, streams))
        }
    })
    .await?;
    let seconds = began.elapsed().as_secs_f64();
    let spent = |before: Option<std::time::Duration>, after: Option<std::time::Duration>| {
        before
            .zip(after)
            .map(|(before, after)| after.saturating_sub(before).as_secs_f64())
    };
    let wave = BareWave {
        seconds,
        connections_per_second: ratio(sessions.len() as f64, seconds),
        latency,
        server_cpu_seconds: spent(server_before, process_cpu_time(server.pid())),
        bench_cpu_seconds: spent(bench_before, cpu_time(CpuOf::Process)),
        certificates_verified: verified().saturating_sub(verified_before),
        udp_receive_drops: drops_since(drops_before),
    };
    Ok((held, wave))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_login_is_as_large_as_a_devices() {
        let [hello, authenticate] = login_frames();
        assert!(matches!(
            hello.body,
            Some(client_request::Body::Hello(ref hello)) if hello.client_version == BENCH_CLIENT_VERSION
        ));
        let Some(client_request::Body::Authenticate(authenticate)) = authenticate.body else {
            panic!("the second frame authenticates");
        };
        assert_eq!(authenticate.signature.len(), 64);
    }

    #[test]
    fn the_listening_line_names_the_address() {
        let address: SocketAddr = "127.0.0.1:4433".parse().expect("an address");
        let line = listening_line(address);
        assert_eq!(
            line.strip_prefix(LISTENING)
                .and_then(|rest| rest.parse().ok()),
            Some(address)
        );
    }
}
