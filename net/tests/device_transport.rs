//! The transport of device connections, over loopback QUIC: datagrams stay at QUIC's minimum
//! size, and neither end spends a login's CPU probing for a larger path MTU.

use std::time::Duration;

use relay_net::limits::DEVICE_INITIAL_MTU_BYTES;
use relay_net::{
    DeviceTls, EDGE_SERVER_NAME, TokioSockets, bind_endpoint, read_frame, request, respond,
};
use relay_proto::wire::FetchQueue;
use support::{device_listener, pki};
use tokio::sync::oneshot;

mod support;

/// Generous: loopback handshakes take milliseconds, but the machine is shared.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Requests after the handshake: quinn sends its first probe as soon as the handshake is
/// confirmed, so with discovery on, these round trips carry probes from both ends.
const REQUESTS: u64 = 8;

#[tokio::test]
async fn device_connections_send_no_path_mtu_probes() {
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
    for after_queue_seq in 0..REQUESTS {
        let question = FetchQueue {
            after_queue_seq,
            limit: 1,
        };
        let answer: FetchQueue = request(&connection, &question, EXCHANGE_TIMEOUT)
            .await
            .expect("an answer");
        assert_eq!(answer, question);
    }
    let edge_connection = tokio::time::timeout(EXCHANGE_TIMEOUT, edge_connection)
        .await
        .expect("the edge's side in time")
        .expect("the edge's side");
    for (end, stats) in [
        ("device", connection.stats()),
        ("edge", edge_connection.stats()),
    ] {
        assert_eq!(stats.path.sent_plpmtud_probes, 0, "the {end} probed");
        assert_eq!(
            stats.path.current_mtu, DEVICE_INITIAL_MTU_BYTES,
            "the {end}"
        );
    }
    connection.close(0u32.into(), b"done");
    client.wait_idle().await;
}
