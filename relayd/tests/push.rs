//! Journey 22: a device with no connection is woken by a content-free push. bob (region 2)
//! registers a WebPush subscription, made with his region's VAPID key, at a loopback push
//! service that verifies VAPID and decrypts every push (RFC 8030/8291/8292, the `relay-push`
//! test service); while bob is offline, alice's message to him makes his region push, and the
//! push service's decrypted payload is the fixed wake: no text, no sender. A connected bob gets
//! no push. A push service answering 410 has the registration deleted. Registrations the region
//! cannot use are refused with the reason.

mod support;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use relay_push::PushRegistration;
use relay_push::testing::{WebPushBehaviour, WebPushTestService};
use serde_json::Value;
use support::{DEADLINE, Devnet, Person, eventually, send_signal};

const CANARY: &str = "canary-7c1e: the text no push service may see";

fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == kind).collect()
}

/// The `--endpoint`, `--p256dh` and `--auth` arguments of a subscription.
fn subscription_arguments(registration: &PushRegistration) -> Vec<String> {
    let PushRegistration::WebPush(subscription) = registration else {
        panic!("the test service makes WebPush subscriptions");
    };
    vec![
        "--endpoint".into(),
        subscription.endpoint().to_string(),
        "--p256dh".into(),
        URL_SAFE_NO_PAD.encode(subscription.p256dh()),
        "--auth".into(),
        URL_SAFE_NO_PAD.encode(subscription.auth()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_is_woken_by_a_push_that_carries_nothing_of_the_message() {
    let service = Arc::new(
        WebPushTestService::start()
            .await
            .expect("the WebPush service starts"),
    );
    let journey = {
        let service = service.clone();
        tokio::task::spawn_blocking(move || journey(&service))
    };
    journey.await.expect("the journey");
}

fn journey(service: &WebPushTestService) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let push_ca = root.join("push-ca.pem");
    std::fs::write(&push_ca, service.tls().certificate_pem()).expect("write the push CA");
    let devnet = Devnet::start_with(
        2,
        &root.join("devnet"),
        &["--push-ca", push_ca.to_str().expect("utf-8 path")],
    );
    let alice = Person::new(root, "alice");
    alice.register(&devnet, "127.0.1.10");
    let bob = Person::new(root, "bob");
    bob.register(&devnet, "127.0.2.10");

    // What bob's region offers; his browser subscribes with its VAPID key.
    let offered = bob.ok(&["push"]);
    let state = events(&offered, "push")[0];
    assert!(state["registered"].is_null(), "{state}");
    assert_eq!(state["providers"], serde_json::json!(["webpush"]));
    let vapid_public_key = URL_SAFE_NO_PAD
        .decode(state["vapid_public_key"].as_str().expect("a VAPID key"))
        .expect("base64url");
    let subscription = service.subscribe(Some(&vapid_public_key));
    let mut arguments = vec!["push".to_owned(), "webpush".to_owned()];
    arguments.extend(subscription_arguments(&subscription));
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    let registered = bob.ok(&arguments);
    assert_eq!(events(&registered, "push")[0]["registered"], "webpush");

    // Registrations the region cannot use are refused with the reason; the first stays.
    for (refused, said) in [
        (
            vec![
                "push",
                "webpush",
                "--endpoint",
                "http://127.0.0.1:9/x",
                "--p256dh",
                "AA",
                "--auth",
                "AA",
            ],
            "https",
        ),
        (vec!["push", "apns", &"ab".repeat(32)], "apns"),
        (vec!["push", "fcm", ""], "exactly one"),
    ] {
        let output = bob.run(&refused);
        assert!(!output.status.success(), "{refused:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(said), "{refused:?}: {stderr}");
    }
    assert_eq!(
        events(&bob.ok(&["push"]), "push")[0]["registered"],
        "webpush"
    );

    // bob is offline (no relay process runs for him): alice's message wakes him.
    let before = service.received().len();
    alice.ok(&["send", "bob", CANARY]);
    let pushes = eventually(DEADLINE, "bob's region pushes a wake", || {
        let received = service.received();
        (received.len() > before).then_some(received)
    });
    let wake = &pushes[before];
    assert_eq!(wake.plaintext, relay_push::wake::WEBPUSH_WAKE_PLAINTEXT);
    for secret in [CANARY.as_bytes(), b"alice", b"bob"] {
        assert!(
            !wake
                .plaintext
                .windows(secret.len())
                .any(|window| window == secret),
            "the push carries {:?}",
            String::from_utf8_lossy(secret)
        );
    }
    assert_eq!(
        wake.vapid_public_key, vapid_public_key,
        "signed with the region's key"
    );
    assert_eq!(wake.urgency.as_deref(), Some("high"));
    assert!(
        wake.topic.is_some(),
        "a topic lets the service replace an undelivered wake"
    );
    // Woken, bob fetches the message itself, end-to-end encrypted.
    let synced = bob.ok(&["sync"]);
    assert!(
        events(&synced, "message")
            .iter()
            .any(|message| message["text"] == CANARY)
    );

    // bob connected: a message for him now comes over his connection, and no push is sent.
    let mut listening = bob.spawn(&["listen"]);
    listening.wait_for(DEADLINE, |line| line["event"] == "listening");
    alice.ok(&["send", "bob", "while you are here (1)"]);
    listening.wait_for(DEADLINE, |line| line["text"] == "while you are here (1)");
    let connected_pushes = service.received().len();
    alice.ok(&["send", "bob", "while you are here (2)"]);
    listening.wait_for(DEADLINE, |line| line["text"] == "while you are here (2)");
    assert_eq!(
        service.received().len(),
        connected_pushes,
        "a connected device was pushed"
    );

    // bob's app dies without a word while a message is on its way: once the edge gives up
    // the dead connection, his region sees entries still queued and wakes him.
    send_signal(listening.child.id(), "STOP");
    alice.ok(&["send", "bob", "did you get this?"]);
    eventually(DEADLINE, "a device whose connection died is woken", || {
        (service.received().len() > connected_pushes).then_some(())
    });
    drop(listening);
    let synced = bob.ok(&["sync"]);
    assert!(
        events(&synced, "message")
            .iter()
            .any(|message| message["text"] == "did you get this?")
    );

    // bob's home moves to region 1 (the devnet's regions share one VAPID key): his push
    // registration moves with him, and region 1 wakes him now.
    let moved = support::move_home("bob", "1", &root.join("devnet").join("region-2.toml"));
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    let before_move = service.received().len();
    alice.ok(&["send", "bob", "from your new home"]);
    eventually(DEADLINE, "bob's new home wakes him", || {
        (service.received().len() > before_move).then_some(())
    });
    let synced = bob.ok(&["sync"]);
    assert!(
        events(&synced, "message")
            .iter()
            .any(|message| message["text"] == "from your new home")
    );
    assert_eq!(
        events(&bob.ok(&["push"]), "push")[0]["registered"],
        "webpush"
    );

    // The push service forgets bob's subscription (410): his region deletes the registration.
    service.set_behaviour(&subscription, WebPushBehaviour::Gone);
    alice.ok(&["send", "bob", "are you still there?"]);
    eventually(
        DEADLINE,
        "the push service refuses the wake as gone",
        || {
            service
                .refused()
                .iter()
                .any(|(status, _)| *status == 410)
                .then_some(())
        },
    );
    eventually(DEADLINE, "the gone registration is removed", || {
        let state = bob.ok(&["push"]);
        events(&state, "push")[0]["registered"]
            .is_null()
            .then_some(())
    });
    // `relay push off` after a new registration removes it.
    bob.ok(&arguments);
    let off = bob.ok(&["push", "off"]);
    assert!(events(&off, "push")[0]["registered"].is_null());
}
