//! Bad input gets a clear error and loses nothing: malformed or oversized frames, unknown or
//! unauthenticated devices, wrong signatures, sends to unknown people, bad configuration files
//! and flags. Frames are written by hand to a real edge over QUIC.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use relay_net::{self as net, TokioSockets};
use relay_proto::wire::{self, ClientRequest, ClientResponse, client_request, client_response};
use relay_proto::{ErrorCode, encode_frame};
use support::{Devnet, Person};

async fn connect(devnet: &Devnet, edge: &str) -> quinn::Connection {
    let roots = net::load_roots(Path::new(&devnet.ca())).expect("ca");
    let config = net::client_config(roots, None, net::ALPN_DEVICE).expect("client config");
    let endpoint = net::bind_endpoint(&TokioSockets, "127.0.1.20:0".parse().expect("addr"), None)
        .expect("bind");
    let edge: SocketAddr = edge.parse().expect("edge address");
    endpoint
        .connect_with(config, edge, net::EDGE_SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake")
}

/// Writes raw bytes on a new stream and reads the edge's one answer.
async fn exchange(connection: &quinn::Connection, bytes: &[u8]) -> ClientResponse {
    let (mut send, mut recv) = connection.open_bi().await.expect("stream");
    send.write_all(bytes).await.expect("write");
    let _ = send.finish();
    tokio::time::timeout(
        Duration::from_secs(30),
        net::read_frame::<ClientResponse>(&mut recv),
    )
    .await
    .expect("answered in time")
    .expect("a frame")
    .expect("not closed")
}

fn error_code(response: &ClientResponse) -> ErrorCode {
    match &response.body {
        Some(client_response::Body::Error(error)) => ErrorCode::from_u32(error.code),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn the_edge_refuses_bad_frames_and_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let alice = Person::new(dir.path(), "alice");
    alice.register(&devnet, "127.0.1.10");
    let bob = Person::new(dir.path(), "bob");
    bob.register(&devnet, "127.0.2.10");
    let edge = devnet.region(1).edge.to_string();

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let connection = connect(&devnet, &edge).await;
        // A body that is not protobuf.
        let garbage = [1u8, 0, 0, 0, 3, 0xff, 0xff, 0xff];
        assert_eq!(
            error_code(&exchange(&connection, &garbage).await),
            ErrorCode::Malformed
        );
        // A header announcing 4 GiB: refused without reading it.
        let huge = [1u8, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            error_code(&exchange(&connection, &huge).await),
            ErrorCode::TooLarge
        );
        // A wire version from the future.
        let future = [9u8, 0, 0, 0, 0];
        assert_eq!(
            error_code(&exchange(&connection, &future).await),
            ErrorCode::UnsupportedVersion
        );
        // A send before authenticating.
        let envelope = wire::Envelope {
            chat: vec![0; 16],
            sender: wire::DeviceAddr {
                account: 1,
                device: 1,
            },
            client_message_id: vec![1; 16],
            sender_seq: 1,
            recipient_accounts: vec![2],
            ciphertexts: vec![wire::DeviceCiphertext {
                recipient: wire::DeviceAddr {
                    account: 2,
                    device: 1,
                },
                message_type: 0,
                body: vec![1],
            }],
            device_seq: 0,
            ..Default::default()
        };
        let send = ClientRequest {
            body: Some(client_request::Body::Send(envelope)),
        };
        assert_eq!(
            error_code(&exchange(&connection, &encode_frame(&send)).await),
            ErrorCode::Unauthenticated
        );

        // Authentication with a wrong signature, then for a device that does not exist.
        for (device, expected) in [
            (
                wire::DeviceAddr {
                    account: 1,
                    device: 1,
                },
                ErrorCode::BadSignature,
            ),
            (
                wire::DeviceAddr {
                    account: 1,
                    device: 9,
                },
                ErrorCode::UnknownAccount,
            ),
        ] {
            let connection = connect(&devnet, &edge).await;
            let (mut send, mut recv) = connection.open_bi().await.expect("control stream");
            let hello = ClientRequest {
                body: Some(client_request::Body::Hello(wire::Hello::default())),
            };
            net::write_frame(&mut send, &hello).await.expect("hello");
            let challenge = net::read_frame::<ClientResponse>(&mut recv)
                .await
                .expect("frame")
                .expect("challenge");
            assert!(matches!(
                challenge.body,
                Some(client_response::Body::Challenge(_))
            ));
            let authenticate = wire::Authenticate {
                device,
                signature: vec![7; 64],
                queue_cursor: None,
                next_device_seq: None,
            };
            let authenticate = ClientRequest {
                body: Some(client_request::Body::Authenticate(authenticate)),
            };
            net::write_frame(&mut send, &authenticate)
                .await
                .expect("authenticate");
            let refused = net::read_frame::<ClientResponse>(&mut recv)
                .await
                .expect("frame")
                .expect("answer");
            assert_eq!(error_code(&refused), expected);
        }
    });

    // Nothing was lost and the edge still serves real clients.
    let sent = alice.ok(&["send", "bob", "still here"]);
    assert!(
        sent.iter()
            .any(|line| line["event"] == "tick" && line["tick"] == "sent")
    );
    let received = bob.ok(&["sync"]);
    assert!(
        received
            .iter()
            .any(|line| line["event"] == "message" && line["text"] == "still here")
    );
}

#[test]
fn the_cli_refuses_bad_requests_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devnet = Devnet::start(2, &dir.path().join("devnet"));
    let alice = Person::new(dir.path(), "alice");
    alice.register(&devnet, "127.0.1.10");

    let unknown = alice.run(&["send", "nobody", "hello?"]);
    assert!(
        !unknown.status.success(),
        "sending to an unknown person fails"
    );
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("nobody"),
        "the error names who is unknown"
    );

    let taken = Person::new(&dir.path().join("again"), "alice").run(&[
        "register",
        "alice",
        "--locator",
        &devnet.locator(),
        "--bind",
        "127.0.2.10",
        "--ca",
        &devnet.ca(),
    ]);
    assert!(!taken.status.success(), "a taken name is refused");
    assert!(
        String::from_utf8_lossy(&taken.stderr)
            .to_lowercase()
            .contains("taken")
    );

    let bad_name = Person::new(dir.path(), "x").run(&[
        "register",
        "Not A Name",
        "--locator",
        &devnet.locator(),
        "--bind",
        "127.0.1.11",
        "--ca",
        &devnet.ca(),
    ]);
    assert!(!bad_name.status.success());

    let unregistered = Person::new(dir.path(), "nobody").run(&["sync"]);
    assert!(
        !unregistered.status.success(),
        "a data directory without a registration is refused"
    );
    assert!(!String::from_utf8_lossy(&unregistered.stderr).is_empty());

    let no_locator = Person::new(dir.path(), "lost").run(&[
        "register",
        "lost",
        "--locator",
        "127.0.0.1:1",
        "--bind",
        "127.0.1.12",
        "--ca",
        &devnet.ca(),
    ]);
    assert!(
        !no_locator.status.success(),
        "an unreachable locator is a clear failure"
    );
}

#[test]
fn relayd_refuses_bad_configuration_before_binding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.toml");
    std::fs::write(&garbage, "region = \"one\"\n[[[ not toml").expect("write");
    let unknown_field = dir.path().join("unknown.toml");
    std::fs::write(&unknown_field, "listen = \"127.0.0.1:0\"\nsurprise = 1\n").expect("write");
    for role in ["region", "edge", "locator"] {
        for config in [
            dir.path().join("missing.toml"),
            garbage.clone(),
            unknown_field.clone(),
        ] {
            let output = Command::new(support::relayd_bin())
                .args([role, "--config"])
                .arg(&config)
                .output()
                .expect("runs");
            assert!(
                !output.status.success(),
                "{role} with {} must fail",
                config.display()
            );
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("relayd:"),
                "a clear message on stderr: {stderr}"
            );
            assert!(
                !String::from_utf8_lossy(&output.stdout).contains("listening on"),
                "nothing was bound"
            );
        }
    }
    let output = Command::new(support::relayd_bin())
        .args(["devnet", "--regions", "0", "--data"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--regions"));
}
