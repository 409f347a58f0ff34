//! A long-lived stream read beside other work: `FrameReader` hands out every frame whole
//! although its reads are dropped again and again halfway (as a `select!` whose other branch
//! won drops them), over loopback QUIC with a device connection's small receive windows.

use std::time::Duration;

use relay_net::{
    DeviceTls, EDGE_SERVER_NAME, FrameReader, TokioSockets, bind_endpoint, write_frame,
};
use relay_proto::wire::Envelope;
use support::{device_listener, pki};

mod support;

/// Generous: loopback handshakes and transfers take milliseconds, but the machine is shared.
const DEADLINE: Duration = Duration::from_secs(60);
/// Frames the writer sends.
const FRAMES: u64 = 40;

/// The `index`th frame: sizes from a few bytes to 160 KB (many packets, beyond one stream
/// window), its bytes saying where they belong.
fn frame(index: u64) -> Envelope {
    let length = ((index * 7_919) % 160_000) as usize;
    Envelope {
        sender_seq: index,
        group_ciphertext: (0..length).map(|at| (at as u64 ^ index) as u8).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_frame_reader_loses_nothing_when_its_reads_are_dropped_halfway() {
    let (roots, identity) = pki();
    let (listener, address) = device_listener(identity);
    let client = bind_endpoint(&TokioSockets, "127.0.0.1:0".parse().expect("addr"), None)
        .expect("client endpoint");
    let tls = DeviceTls::new(roots).expect("client TLS");

    // The writer sends each frame in two writes with a pause between, so a read often has
    // half a frame when it is dropped.
    let writer = tokio::spawn(async move {
        let connection = client
            .connect_with(tls.config(), address, EDGE_SERVER_NAME)
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, _recv) = connection.open_bi().await.expect("a stream");
        for index in 0..FRAMES {
            let bytes = relay_proto::encode_frame(&frame(index));
            let (first, second) = bytes.split_at(bytes.len() / 2);
            send.write_all(first).await.expect("first half");
            tokio::time::sleep(Duration::from_millis(2)).await;
            send.write_all(second).await.expect("second half");
        }
        // One more frame through the library's own writer, then the end of the stream.
        write_frame(&mut send, &frame(FRAMES))
            .await
            .expect("last frame");
        send.finish().expect("finish");
        connection.closed().await;
    });

    let reading = async {
        let connection = listener
            .accept()
            .await
            .expect("a connection")
            .await
            .expect("handshake");
        let (_send, recv) = connection.accept_bi().await.expect("the stream");
        let mut reader = FrameReader::new(recv);
        let mut received = Vec::new();
        let mut dropped = 0u64;
        loop {
            // A read that has not finished within a millisecond is dropped and begun again.
            match tokio::time::timeout(Duration::from_millis(1), reader.read::<Envelope>()).await {
                Err(_) => dropped += 1,
                Ok(Ok(Some(envelope))) => received.push(envelope),
                Ok(Ok(None)) => break,
                Ok(Err(error)) => panic!("frame {}: {error}", received.len()),
            }
        }
        connection.close(0u32.into(), b"done");
        (received, dropped)
    };
    let (received, dropped) = tokio::time::timeout(DEADLINE, reading)
        .await
        .expect("every frame within the deadline");
    writer.await.expect("the writer");

    assert_eq!(received.len() as u64, FRAMES + 1);
    for (index, envelope) in received.iter().enumerate() {
        assert!(
            *envelope == frame(index as u64),
            "frame {index} arrived changed ({dropped} reads dropped)"
        );
    }
}
