//! The SDK against a real deployment started in this process (relay_devnet's testbed: regions,
//! edges and the locator as tasks, real stores, real QUIC): a program keeps devices open,
//! sends to several peers at once without waiting, and takes events as they come; a blob goes
//! through the edge when the region's media endpoint is out of reach.

use std::collections::BTreeSet;
use std::time::Duration;

use relay_client::limits::FLUSH_BUDGET_MS;
use relay_client::{Device, Event, Events, OpenOptions, Tick, register};
use relay_devnet::testbed::Testbed;

mod support;
use support::{live, overrides, register_all};

/// Generous: the machine is shared.
const DEADLINE: Duration = Duration::from_secs(60);

/// Reads `events` until `done` says so, failing at the deadline.
async fn until(events: &mut Events, mut done: impl FnMut(&Event) -> bool) {
    tokio::time::timeout(DEADLINE, async {
        while let Some(event) = events.next().await {
            if done(&event) {
                return;
            }
        }
        panic!("the device stopped");
    })
    .await
    .expect("within the deadline");
}

#[tokio::test(flavor = "current_thread")]
async fn a_program_sends_to_several_peers_at_once_and_follows_the_events() {
    let testbed = Testbed::start(2).await.expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    register_all(
        &testbed,
        dir.path(),
        &[("alice", 1), ("bob", 2), ("carol", 1)],
    )
    .await;
    let (alice, mut alice_events) = live(&dir.path().join("alice")).await;
    let (bob, mut bob_events) = live(&dir.path().join("bob")).await;
    let (carol, mut carol_events) = live(&dir.path().join("carol")).await;

    // Two tasks send at once through clones of one device; each send returns its id as soon
    // as the text is stored.
    let sends: Vec<_> = [("bob", "to bob"), ("carol", "to carol")]
        .into_iter()
        .map(|(peer, text)| {
            let alice = alice.clone();
            tokio::spawn(async move { alice.send(peer, text).await })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for send in sends {
        ids.insert(send.await.expect("task").expect("sent").to_string());
    }
    assert_eq!(ids.len(), 2);

    until(&mut bob_events, |event| {
        matches!(event, Event::Message { from, text, .. } if from == "alice" && text == "to bob")
    })
    .await;
    until(&mut carol_events, |event| {
        matches!(event, Event::Message { from, text, .. } if from == "alice" && text == "to carol")
    })
    .await;
    // Both devices acknowledged: alice sees each message delivered, as the events come.
    let mut delivered = BTreeSet::new();
    until(&mut alice_events, |event| {
        if let Event::Tick {
            id,
            tick: Tick::Delivered,
            ..
        } = event
        {
            delivered.insert(id.clone());
        }
        delivered == ids
    })
    .await;

    // bob reads: alice's tick moves to read, end to end.
    assert_eq!(bob.mark_read("alice").await.expect("read"), 1);
    until(
        &mut alice_events,
        |event| matches!(event, Event::Tick { tick: Tick::Read, peer, .. } if peer == "bob"),
    )
    .await;

    for device in [alice, bob, carol] {
        device.close().await.expect("closes");
    }
    testbed.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_sync_in_a_quiet_deployment_fetches_at_once() {
    let testbed = Testbed::start(1).await.expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    let alice_dir = dir.path().join("alice");
    register(&alice_dir, "alice", overrides(&testbed, 1), "", &mut |_| {})
        .await
        .expect("alice registers");
    // On demand, as the CLI and the simulation open it: nothing is pushed to wake it.
    let (alice, _events) = Device::open(&alice_dir, OpenOptions::default()).expect("opens");
    // Nothing to flush and nothing new arrives: each sync's fetch must go out as soon as it
    // asks for it. It used to wait for the next wake-up (a push, or its flush window closing
    // after FLUSH_BUDGET_MS), since asking for the fetch did not count as progress.
    let bound = Duration::from_millis(FLUSH_BUDGET_MS / 2);
    for round in 1..=3 {
        tokio::time::timeout(bound, alice.sync())
            .await
            .unwrap_or_else(|_| panic!("sync {round} waited past {bound:?}"))
            .expect("synced");
    }
    alice.close().await.expect("closes");
    testbed.stop().await;
}

/// A device's reconnects through one dialer resume its TLS session: the edge's certificate is
/// checked in full once, not on every login.
#[tokio::test(flavor = "current_thread")]
async fn a_reconnect_resumes_the_tls_session_of_the_first_connection() {
    use relay_client::connection::{Dialer, EdgeSource};
    use relay_client::store::Settings;

    let testbed = Testbed::start(1).await.expect("testbed");
    let edge = testbed.edge(1).expect("an edge");
    let settings = Settings {
        locator: testbed.locator(),
        bind_ip: testbed.client_bind(1),
        ca_path: Some(testbed.ca().to_path_buf()),
    };
    let dialer = Dialer::new(
        std::sync::Arc::new(relay_net::TokioSockets),
        EdgeSource::Fixed(vec![edge]),
    );
    for round in 0..3 {
        let connection = tokio::time::timeout(DEADLINE, dialer.connect_any(&settings))
            .await
            .expect("within the deadline")
            .expect("connects");
        // A resumable session arrives after the handshake, in a ticket the edge sends: a
        // request's round trip (answered or refused, before authentication) makes sure it came
        // before the connection closes.
        let _ = connection.lookup_name("nobody").await;
        connection.close().await;
        assert_eq!(dialer.certificates_verified(), 1, "round {round}");
    }
    // A clone shares the sessions; a new dialer has none.
    let fresh = Dialer::new(
        std::sync::Arc::new(relay_net::TokioSockets),
        EdgeSource::Fixed(vec![edge]),
    );
    let connection = fresh.connect_any(&settings).await.expect("connects");
    connection.close().await;
    assert_eq!(fresh.certificates_verified(), 1);
    testbed.stop().await;
}

/// A device that cannot reach its region's media endpoint (here the region advertises an
/// address nothing answers at) moves the blob's bytes through its edge instead, both ways,
/// and gets them back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_goes_through_the_edge_when_the_media_endpoint_is_out_of_reach() {
    use relay_client::BlobSource;

    // UDP port 9 (discard): nothing on loopback answers QUIC there.
    let testbed = Testbed::start_with_media(1, Some("127.0.0.1:9".into()))
        .await
        .expect("testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    let alice_dir = dir.path().join("alice");
    register(&alice_dir, "alice", overrides(&testbed, 1), "", &mut |_| {})
        .await
        .expect("alice registers");
    let (alice, _events) = live(&alice_dir).await;
    alice.connect().await.expect("alice connects");
    let bytes: Vec<u8> = (0..2_500_000u32).map(|index| (index % 253) as u8).collect();
    let reference = tokio::time::timeout(
        DEADLINE,
        alice.upload_blob(BlobSource::Bytes(&bytes), &mut |_| {}),
    )
    .await
    .expect("within the deadline")
    .expect("uploaded through the edge");
    let downloaded = tokio::time::timeout(DEADLINE, alice.download_blob(&reference, &mut |_| {}))
        .await
        .expect("within the deadline")
        .expect("downloaded through the edge");
    assert!(downloaded == bytes, "the download differs from the upload");
    // The next transfer skips the endpoint that did not answer (`MediaReach`) and goes
    // through the edge at once.
    let again = tokio::time::timeout(
        DEADLINE,
        alice.upload_blob(BlobSource::Bytes(&bytes[..1000]), &mut |_| {}),
    )
    .await
    .expect("within the deadline")
    .expect("uploaded through the edge again");
    let downloaded = tokio::time::timeout(DEADLINE, alice.download_blob(&again, &mut |_| {}))
        .await
        .expect("within the deadline")
        .expect("downloaded through the edge again");
    assert!(downloaded == bytes[..1000], "the second download differs");
    alice.close().await.expect("closes");
    testbed.stop().await;
}
