//! A region's media endpoint over real loopback QUIC: a device given a pass through its edge
//! (here, the region's own request handler) uploads a blob there and downloads it back; a pass
//! that is garbage, for another blob, or for the other direction is refused with
//! `Unauthenticated` and moves nothing; a connection that moves nothing is closed, one whose
//! transfer goes on longer than that is not; a device with too many transfers under way is
//! told to wait (`Throttled`); a region without an endpoint gives no pass.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use fdb_layers::keys::IdempotencyKey;
use relay_proto::digest::BlobHasher;
use relay_proto::wire::{
    self, BlobAt, BlobBegin, BlobCommand, BlobDigest, BlobStatus, ClientResponse, MediaAccess,
    MediaRequest, RegionRequest, RegionResponse, blob_command, client_response, region_request,
    region_response,
};
use relay_proto::{DeviceAddress, ErrorCode};
use support::{TestCa, WRITER, account_with_device, region, region_with_media};

/// Three commit units and a bit: the stream commits units as they arrive.
const BLOB_BYTES: usize = 3 * 1024 * 1024 + 12_345;

fn blob_request(device: DeviceAddress, command: blob_command::Command) -> RegionRequest {
    RegionRequest {
        body: Some(region_request::Body::Blob(wire::ForBlob {
            device: device.into(),
            command: BlobCommand {
                command: Some(command),
            },
        })),
    }
}

fn status_of(response: RegionResponse) -> BlobStatus {
    match response.body {
        Some(region_response::Body::Blob(status)) => status,
        other => panic!("expected a blob status, got {other:?}"),
    }
}

fn at(id: &[u8]) -> BlobAt {
    BlobAt {
        id: id.to_vec(),
        ..BlobAt::default()
    }
}

/// A device's connection to the media endpoint `access` names.
async fn connect(ca: &TestCa, access: &MediaAccess) -> quinn::Connection {
    let config = relay_net::client_config(ca.roots.clone(), None, relay_net::ALPN_MEDIA)
        .expect("client config");
    let endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("client endpoint");
    let address = access.address.parse().expect("a socket address");
    endpoint
        .connect_with(config, address, relay_net::MEDIA_SERVER_NAME)
        .expect("connecting")
        .await
        .expect("the media endpoint answers")
}

/// Sends `request` and, for an upload, `bytes` after it; returns the first answer frame and
/// the bytes after it.
async fn stream(
    connection: &quinn::Connection,
    request: &MediaRequest,
    bytes: &[u8],
) -> (ClientResponse, Vec<u8>) {
    let (mut send, mut recv) = connection.open_bi().await.expect("stream");
    relay_net::write_frame(&mut send, request)
        .await
        .expect("request");
    // A refused stream may be stopped before all of it is written.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let answer = relay_net::read_frame::<ClientResponse>(&mut recv)
        .await
        .expect("an answer")
        .expect("a frame");
    let rest = recv.read_to_end(usize::MAX).await.unwrap_or_default();
    (answer, rest)
}

fn refusal(answer: &ClientResponse) -> ErrorCode {
    match &answer.body {
        Some(client_response::Body::Error(error)) => ErrorCode::from_u32(error.code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn answered_status(answer: ClientResponse) -> BlobStatus {
    match answer.body {
        Some(client_response::Body::Blob(status)) => status,
        other => panic!("expected a blob status, got {other:?}"),
    }
}

/// A region serving a media endpoint on loopback, and ada, its account's one device.
struct Serving {
    service: home_region::RegionService,
    ada: DeviceAddress,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), home_region::RegionError>>,
}

async fn serving_with_media(ca: &TestCa) -> Serving {
    let addresses = Arc::new(Mutex::new(BTreeMap::new()));
    let media = home_region::config::MediaConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        advertise: None,
    };
    let (service, db) = region_with_media(WRITER, ca, &addresses, Some(media));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(service.clone().run(async {
        let _ = stopped.await;
    }));
    let key = |counter: u8| IdempotencyKey::new(1, [counter; 16]);
    let ada = account_with_device(&db, WRITER, "ada", key(1), key(2)).await;
    Serving {
        service,
        ada,
        stop,
        serving,
    }
}

/// The status of an upload of `size_bytes` that `device` began, asked through the "edge".
async fn begin_upload(
    service: &home_region::RegionService,
    device: DeviceAddress,
    size_bytes: u64,
) -> BlobStatus {
    status_of(
        service
            .handle(blob_request(
                device,
                blob_command::Command::Begin(BlobBegin {
                    size_bytes,
                    ..BlobBegin::default()
                }),
            ))
            .await,
    )
}

/// Stops the region [`serving_with_media`] started, which must stop cleanly.
async fn stop_serving(
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), home_region::RegionError>>,
) {
    let _ = stop.send(());
    serving
        .await
        .expect("joined")
        .expect("the region stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_moves_its_blob_one_way_and_nothing_else() {
    let ca = TestCa::new();
    let Serving {
        service,
        ada,
        stop,
        serving,
    } = serving_with_media(&ca).await;
    let bytes: Vec<u8> = (0..BLOB_BYTES)
        .map(|index| (index * 7 % 251) as u8)
        .collect();

    // Two uploads begun through the "edge": each status carries the endpoint and a pass.
    let begun = begin_upload(&service, ada, BLOB_BYTES as u64).await;
    let other = begin_upload(&service, ada, BLOB_BYTES as u64).await;
    let access = begun.media.clone().expect("a pass for the upload");
    assert_eq!(
        Some(access.address.parse().expect("address")),
        service.media_address()
    );
    let other_pass = other.media.expect("a pass for the other upload").pass;
    let connection = connect(&ca, &access).await;

    // Refused: garbage, another blob's pass, the upload's pass for a download.
    let upload = |pass: &[u8], id: &[u8]| MediaRequest {
        pass: pass.to_vec(),
        command: BlobCommand {
            command: Some(blob_command::Command::Upload(at(id))),
        },
    };
    for request in [
        upload(b"not a pass", &begun.id),
        upload(&other_pass, &begun.id),
        MediaRequest {
            pass: access.pass.clone(),
            command: BlobCommand {
                command: Some(blob_command::Command::Download(at(&begun.id))),
            },
        },
    ] {
        let (answer, _) = stream(&connection, &request, &bytes).await;
        assert_eq!(refusal(&answer), ErrorCode::Unauthenticated);
    }
    let untouched = status_of(
        service
            .handle(blob_request(
                ada,
                blob_command::Command::Status(at(&begun.id)),
            ))
            .await,
    );
    assert_eq!(
        untouched.committed_bytes, 0,
        "a refused stream moves nothing"
    );
    assert!(
        untouched.media.is_some(),
        "an unfinished upload's status carries a new pass"
    );

    // The upload's own pass: every byte committed, then finished through the "edge".
    let (answer, _) = stream(&connection, &upload(&access.pass, &begun.id), &bytes).await;
    let committed = answered_status(answer);
    assert_eq!(committed.committed_bytes, BLOB_BYTES as u64);
    let finished = status_of(
        service
            .handle(blob_request(
                ada,
                blob_command::Command::Finish(BlobAt {
                    digest: {
                        let mut hasher = BlobHasher::new(BlobDigest::Sha256);
                        hasher.update(&bytes);
                        hasher.finalize().to_vec()
                    },
                    ..at(&begun.id)
                }),
            ))
            .await,
    );
    assert!(finished.finished);
    assert!(finished.media.is_none(), "a finished upload needs no pass");

    // Any device that knows the id locates it and downloads it from the endpoint.
    let located = status_of(
        service
            .handle(blob_request(
                ada,
                blob_command::Command::Locate(at(&begun.id)),
            ))
            .await,
    );
    let download = located.media.expect("a pass for the download");
    let (answer, rest) = stream(
        &connection,
        &MediaRequest {
            pass: download.pass.clone(),
            command: BlobCommand {
                command: Some(blob_command::Command::Download(at(&begun.id))),
            },
        },
        &[],
    )
    .await;
    assert_eq!(answered_status(answer).size_bytes, BLOB_BYTES as u64);
    assert!(rest == bytes, "the download differs from the upload");
    // A download pass does not upload.
    let (answer, _) = stream(&connection, &upload(&download.pass, &begun.id), &bytes).await;
    assert_eq!(refusal(&answer), ErrorCode::Unauthenticated);
    // An unfinished upload cannot be located.
    let refused = service
        .handle(blob_request(
            ada,
            blob_command::Command::Locate(at(&other.id)),
        ))
        .await;
    assert!(
        matches!(refused.body, Some(region_response::Body::Error(_))),
        "{refused:?}"
    );

    connection.close(0u32.into(), b"done");
    stop_serving(stop, serving).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_without_a_media_endpoint_gives_no_pass() {
    let ca = TestCa::new();
    let addresses = Arc::new(Mutex::new(BTreeMap::new()));
    let (service, db) = region(WRITER, &ca, &addresses);
    let key = |counter: u8| IdempotencyKey::new(1, [counter; 16]);
    let ada = account_with_device(&db, WRITER, "ada", key(1), key(2)).await;
    let begun = begin_upload(&service, ada, 10).await;
    assert!(begun.media.is_none());
    assert_eq!(service.media_address(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_media_connection_is_closed_and_a_slow_transfer_is_not() {
    use home_region::limits::MEDIA_IDLE_CLOSE_MS;
    use std::time::Duration;

    let ca = TestCa::new();
    let Serving {
        service,
        ada,
        stop,
        serving,
    } = serving_with_media(&ca).await;
    let bytes = vec![7u8; 1000];
    let begun = begin_upload(&service, ada, bytes.len() as u64).await;
    let access = begun.media.expect("a pass");
    let generous = Duration::from_secs(60);

    // A connection that opens no stream is closed, though its keep-alives keep it alive.
    let idle = connect(&ca, &access).await;
    let reason = tokio::time::timeout(generous, idle.closed())
        .await
        .expect("the region closes an idle connection");
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(close) if close.error_code == 1u32.into()),
        "{reason:?}"
    );

    // A transfer that pauses for longer than that goes on: its stream is under way.
    let slow = connect(&ca, &access).await;
    let (mut send, mut recv) = slow.open_bi().await.expect("stream");
    let request = MediaRequest {
        pass: access.pass.clone(),
        command: BlobCommand {
            command: Some(blob_command::Command::Upload(at(&begun.id))),
        },
    };
    relay_net::write_frame(&mut send, &request)
        .await
        .expect("request");
    send.write_all(&bytes[..500]).await.expect("half");
    tokio::time::sleep(Duration::from_millis(MEDIA_IDLE_CLOSE_MS + 1_000)).await;
    send.write_all(&bytes[500..]).await.expect("the rest");
    send.finish().expect("finish");
    let answer = tokio::time::timeout(generous, relay_net::read_frame::<ClientResponse>(&mut recv))
        .await
        .expect("an answer in time")
        .expect("an answer")
        .expect("a frame");
    assert_eq!(answered_status(answer).committed_bytes, bytes.len() as u64);

    slow.close(0u32.into(), b"done");
    stop_serving(stop, serving).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_too_many_transfers_under_way_is_told_to_wait() {
    use home_region::limits::{MEDIA_THROTTLED_RETRY_AFTER_MS, MEDIA_TRANSFERS_PER_DEVICE_MAX};
    use std::time::Duration;

    let ca = TestCa::new();
    let Serving {
        service,
        ada,
        stop,
        serving,
    } = serving_with_media(&ca).await;
    let bytes = vec![5u8; 4_000];
    let transfers = MEDIA_TRANSFERS_PER_DEVICE_MAX + 1;
    let mut begun = Vec::new();
    for _ in 0..transfers {
        begun.push(begin_upload(&service, ada, bytes.len() as u64).await);
    }
    let access = |status: &BlobStatus| status.media.clone().expect("a pass");
    // A connection carries a few streams at once: enough connections for every transfer.
    let per_connection = relay_net::limits::MEDIA_STREAMS_PER_CONNECTION_MAX as usize;
    let mut connections = Vec::new();
    for _ in 0..transfers.div_ceil(per_connection) {
        connections.push(connect(&ca, &access(&begun[0])).await);
    }
    // Every transfer starts and stays under way: the first half of each blob only.
    let mut streams = Vec::new();
    for (index, status) in begun.iter().enumerate() {
        let (mut send, recv) = connections[index / per_connection]
            .open_bi()
            .await
            .expect("stream");
        let request = MediaRequest {
            pass: access(status).pass,
            command: BlobCommand {
                command: Some(blob_command::Command::Upload(at(&status.id))),
            },
        };
        relay_net::write_frame(&mut send, &request)
            .await
            .expect("request");
        send.write_all(&bytes[..2_000]).await.expect("half");
        streams.push((send, recv));
    }
    // One is refused at once, whichever the region checked last; the others wait for the rest.
    let answers = streams
        .iter_mut()
        .map(|(_, recv)| Box::pin(relay_net::read_frame::<ClientResponse>(recv)));
    let (first, refused, _) = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::select_all(answers),
    )
    .await
    .expect("one transfer is refused in time");
    let answer = first.expect("an answer").expect("a frame");
    match &answer.body {
        Some(client_response::Body::Error(error)) => {
            assert_eq!(ErrorCode::from_u32(error.code), ErrorCode::Throttled);
            assert_eq!(error.retry_after_ms, MEDIA_THROTTLED_RETRY_AFTER_MS);
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
    // The others go through; the refused one, sent again, too.
    for (index, (send, recv)) in streams.iter_mut().enumerate() {
        if index == refused {
            continue;
        }
        send.write_all(&bytes[2_000..]).await.expect("the rest");
        send.finish().expect("finish");
        let answer = relay_net::read_frame::<ClientResponse>(recv)
            .await
            .expect("an answer")
            .expect("a frame");
        assert_eq!(answered_status(answer).committed_bytes, bytes.len() as u64);
    }
    let request = MediaRequest {
        pass: access(&begun[refused]).pass,
        command: BlobCommand {
            command: Some(blob_command::Command::Upload(at(&begun[refused].id))),
        },
    };
    let (answer, _) = stream(&connections[0], &request, &bytes).await;
    assert_eq!(answered_status(answer).committed_bytes, bytes.len() as u64);

    for connection in connections {
        connection.close(0u32.into(), b"done");
    }
    stop_serving(stop, serving).await;
}
