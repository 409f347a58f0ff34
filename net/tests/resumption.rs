//! TLS session resumption of device connections, over loopback QUIC: a device that logs in again
//! with the sessions it kept resumes without checking the edge's certificate, a device without
//! them checks it in full, and a device that does not trust the edge's CA is refused.

use std::net::SocketAddr;
use std::time::Duration;

use relay_net::{
    DeviceTls, EDGE_SERVER_NAME, TlsIdentity, TokioSockets, bind_endpoint, read_frame, request,
    respond,
};
use relay_proto::wire::FetchQueue;
use support::{device_listener, pki};

mod support;

/// Generous: loopback handshakes take milliseconds, but the machine is shared.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// An edge's device endpoint that answers every request with its own question.
fn echo_edge(identity: TlsIdentity) -> (quinn::Endpoint, SocketAddr) {
    let (endpoint, address) = device_listener(identity);
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((send, mut recv)) = connection.accept_bi().await {
                    if let Ok(Some(question)) = read_frame::<FetchQueue>(&mut recv).await {
                        let _ = respond(send, &question).await;
                    }
                }
            });
        }
    });
    (endpoint, address)
}

/// Logs in once as `device` and makes one request (by its answer the edge's session tickets,
/// sent right after the handshake, have arrived), then leaves.
async fn log_in(
    client: &quinn::Endpoint,
    edge: SocketAddr,
    device: &DeviceTls,
) -> Result<(), String> {
    let connecting = client
        .connect_with(device.config(), edge, EDGE_SERVER_NAME)
        .map_err(|e| e.to_string())?;
    let connection = tokio::time::timeout(EXCHANGE_TIMEOUT, connecting)
        .await
        .map_err(|_| "the handshake timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let question = FetchQueue {
        after_queue_seq: 7,
        limit: 1,
    };
    let answer: FetchQueue = request(&connection, &question, EXCHANGE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(answer, question);
    connection.close(0u32.into(), b"done");
    Ok(())
}

#[tokio::test]
async fn a_device_resumes_with_its_sessions_and_checks_the_certificate_without_them() {
    let (roots, identity) = pki();
    let (_edge, edge) = echo_edge(identity);
    let client = bind_endpoint(&TokioSockets, "127.0.0.1:0".parse().expect("addr"), None)
        .expect("client endpoint");

    let phone = DeviceTls::new(roots.clone()).expect("the phone's TLS");
    log_in(&client, edge, &phone).await.expect("first login");
    assert_eq!(
        phone.certificates_verified(),
        1,
        "a first login checks the certificate"
    );
    for login in 2..=4 {
        log_in(&client, edge, &phone).await.expect("a later login");
        assert_eq!(
            phone.certificates_verified(),
            1,
            "login {login} resumed a session instead of checking the certificate again"
        );
    }

    // Another device has no session of its own: the phone's tickets are not its.
    let laptop = DeviceTls::new(roots).expect("the laptop's TLS");
    log_in(&client, edge, &laptop)
        .await
        .expect("the laptop's login");
    assert_eq!(laptop.certificates_verified(), 1);
    assert_eq!(phone.certificates_verified(), 1);
    client.wait_idle().await;
}

#[tokio::test]
async fn a_device_that_does_not_trust_the_edge_is_refused() {
    let (roots, identity) = pki();
    let (other_roots, _) = pki();
    let (_edge, edge) = echo_edge(identity);
    let client = bind_endpoint(&TokioSockets, "127.0.0.1:0".parse().expect("addr"), None)
        .expect("client endpoint");

    let stranger = DeviceTls::new(other_roots).expect("the stranger's TLS");
    let error = log_in(&client, edge, &stranger)
        .await
        .expect_err("an edge whose CA the device does not trust");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert_eq!(stranger.certificates_verified(), 0);
    // The edge still serves a device that trusts it.
    let phone = DeviceTls::new(roots).expect("the phone's TLS");
    log_in(&client, edge, &phone)
        .await
        .expect("a trusting device");
    assert_eq!(phone.certificates_verified(), 1);
}
