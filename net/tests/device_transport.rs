//! The transport of device connections, over loopback QUIC: each end probes the path once for
//! larger datagrams (not a binary search of probes, which cost a quarter of a login's CPU), and
//! keeps what the probe found.

use std::time::Duration;

use relay_net::limits::DEVICE_MTU_PROBE_BYTES;
use relay_net::{
    DeviceTls, EDGE_SERVER_NAME, TokioSockets, bind_endpoint, read_frame, request, respond,
};
use relay_proto::wire::FetchQueue;
use support::{device_listener, pki};
use tokio::sync::oneshot;

mod support;

/// Generous: loopback handshakes take milliseconds, but the machine is shared.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Requests the device makes at most while waiting for both ends' probes to be answered.
const REQUESTS_MAX: u64 = 2_000;

#[tokio::test]
async fn each_end_of_a_device_connection_probes_the_path_once() {
    let (roots, identity) = pki();
    let (edge, address) = device_listener(identity);
    let (edge_side, edge_connection) = oneshot::channel();
    tokio::spawn(async move {
        let Some(incoming) = edge.accept().await else {
            return;
        };
        let Ok(connection) = incoming.await else {
            return;
        };
        let _ = edge_side.send(connection.clone());
        while let Ok((send, mut recv)) = connection.accept_bi().await {
            if let Ok(Some(question)) = read_frame::<FetchQueue>(&mut recv).await {
                let _ = respond(send, &question).await;
            }
        }
    });
    let client = bind_endpoint(&TokioSockets, "127.0.0.1:0".parse().expect("addr"), None)
        .expect("client endpoint");
    let device = DeviceTls::new(roots).expect("the device's TLS");
    let connecting = client
        .connect_with(device.config(), address, EDGE_SERVER_NAME)
        .expect("connecting");
    let connection = tokio::time::timeout(EXCHANGE_TIMEOUT, connecting)
        .await
        .expect("a handshake in time")
        .expect("a handshake");
    let edge_connection = tokio::time::timeout(EXCHANGE_TIMEOUT, edge_connection)
        .await
        .expect("the edge's side in time")
        .expect("the edge's side");
    // Loopback carries the probe's size: wait (by requests, bounded) until both ends use it.
    let mut after_queue_seq = 0;
    while [&connection, &edge_connection]
        .iter()
        .any(|end| end.stats().path.current_mtu < DEVICE_MTU_PROBE_BYTES)
    {
        assert!(
            after_queue_seq < REQUESTS_MAX,
            "no probe of {DEVICE_MTU_PROBE_BYTES} bytes was answered after {REQUESTS_MAX} requests"
        );
        let question = FetchQueue {
            after_queue_seq,
            limit: 1,
        };
        let answer: FetchQueue = request(&connection, &question, EXCHANGE_TIMEOUT)
            .await
            .expect("an answer");
        assert_eq!(answer, question);
        after_queue_seq += 1;
    }
    for (end, stats) in [
        ("device", connection.stats()),
        ("edge", edge_connection.stats()),
    ] {
        assert_eq!(stats.path.current_mtu, DEVICE_MTU_PROBE_BYTES, "the {end}");
        assert_eq!(
            stats.path.sent_plpmtud_probes - stats.path.lost_plpmtud_probes,
            1,
            "the {end} searched with more than one probe: {:?}",
            stats.path
        );
    }
    connection.close(0u32.into(), b"done");
    client.wait_idle().await;
}
