//! APNs end to end against the loopback HTTP/2 endpoint, which verifies the provider token,
//! the headers and the payload.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use relay_push::apns::ApnsProvider;
use relay_push::config::ApnsPushType;
use relay_push::testing::{ApnsBehaviour, ApnsTestKey, ApnsTestService};
use relay_push::wake::{APNS_WAKE_PAYLOAD, WAKE_COLLAPSE_KEY};
use relay_push::{PushError, PushProvider, PushRegistration, Wake, WallClock};

const KEY_ID: &str = "ABC123DEFG";
const TEAM_ID: &str = "DEF123GHIJ";
const TOPIC: &str = "example.relay.app";

async fn endpoint() -> (ApnsTestKey, ApnsTestService) {
    let key = ApnsTestKey::generate().expect("a key");
    let service = ApnsTestService::start(&key, KEY_ID, TEAM_ID, TOPIC)
        .await
        .expect("the endpoint starts");
    (key, service)
}

fn provider(key: &ApnsTestKey, service: &ApnsTestService) -> ApnsProvider {
    ApnsProvider::new(
        &service.config(ApnsPushType::Background),
        &key.private_key_pem,
        service.client().expect("a client"),
    )
    .expect("a provider")
}

fn token(byte: u8) -> (String, PushRegistration) {
    let hex = format!("{byte:02x}").repeat(32);
    let registration = PushRegistration::parse_apns(&hex).expect("a token");
    (hex, registration)
}

#[tokio::test]
async fn a_wake_arrives_over_http2_with_a_valid_provider_token_and_only_the_wake_payload() {
    let (key, service) = endpoint().await;
    let provider = provider(&key, &service);
    let (hex, registration) = token(0xab);
    let before = SystemTime::now();
    let delivered = provider
        .send(&registration, &Wake::new(Duration::from_secs(3600)))
        .await
        .expect("delivered");
    assert_eq!(delivered.status, 200);
    assert!(delivered.message_id.is_some());

    let received = service.received();
    assert_eq!(received.len(), 1, "refused: {:?}", service.refused());
    let push = &received[0];
    assert_eq!(push.payload, APNS_WAKE_PAYLOAD);
    assert_eq!(push.token_hex, hex);
    assert_eq!(push.version, http::Version::HTTP_2);
    assert_eq!(push.topic, TOPIC);
    assert_eq!(push.push_type, "background");
    assert_eq!(push.priority, "5");
    assert_eq!(push.collapse_id.as_deref(), Some(WAKE_COLLAPSE_KEY));
    let before_s = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs();
    assert!(push.expiration_s >= before_s + 3600);
    assert!(push.expiration_s <= before_s + 3600 + 600);
}

#[tokio::test]
async fn the_provider_token_is_reused_for_50_minutes_then_replaced() {
    let (key, service) = endpoint().await;
    let start = SystemTime::now();
    let now = Arc::new(Mutex::new(start));
    let clock_now = now.clone();
    let clock: WallClock = Arc::new(move || *clock_now.lock().expect("the test clock"));
    let provider = provider(&key, &service).with_clock(clock);
    let (_, registration) = token(0x01);
    for minutes in [0, 30, 49, 51, 52] {
        *now.lock().expect("the test clock") = start + Duration::from_secs(minutes * 60);
        provider
            .send(&registration, &Wake::default())
            .await
            .expect("delivered");
    }
    let received = service.received();
    assert_eq!(received.len(), 5, "refused: {:?}", service.refused());
    let first = &received[0].provider_token;
    assert!(
        received[..3]
            .iter()
            .all(|push| &push.provider_token == first)
    );
    assert_ne!(&received[3].provider_token, first);
    assert_eq!(received[4].provider_token, received[3].provider_token);
    assert_eq!(
        received[3].provider_token_iat - received[0].provider_token_iat,
        51 * 60
    );
}

#[tokio::test]
async fn unregistered_and_bad_tokens_are_gone_and_throttling_is_retryable() {
    let (key, service) = endpoint().await;
    let provider = provider(&key, &service);
    let cases = [
        (ApnsBehaviour::Unregistered, 0x10),
        (ApnsBehaviour::BadDeviceToken, 0x11),
        (ApnsBehaviour::TooManyRequests, 0x12),
    ];
    let mut errors = Vec::new();
    for (behaviour, byte) in cases {
        let (hex, registration) = token(byte);
        service.set_behaviour(&hex, behaviour);
        errors.push(
            provider
                .send(&registration, &Wake::default())
                .await
                .expect_err("not delivered"),
        );
    }
    assert!(
        matches!(&errors[0], PushError::Gone { status: 410, reason } if reason == "Unregistered"),
        "{}",
        errors[0]
    );
    assert!(
        matches!(&errors[1], PushError::Gone { status: 400, reason } if reason == "BadDeviceToken"),
        "{}",
        errors[1]
    );
    assert!(
        matches!(&errors[2], PushError::Throttled { status: 429, .. }),
        "{}",
        errors[2]
    );
    assert!(service.received().is_empty());
}

#[tokio::test]
async fn a_token_signed_by_another_key_is_refused_by_the_endpoint() {
    let (_, service) = endpoint().await;
    let stranger = ApnsTestKey::generate().expect("a key");
    let provider = provider(&stranger, &service);
    let (_, registration) = token(0x20);
    let error = provider
        .send(&registration, &Wake::default())
        .await
        .expect_err("refused");
    assert!(matches!(error, PushError::Config(_)), "{error}");
    assert_eq!(
        service.refused(),
        [(403, "InvalidProviderToken".to_owned())]
    );
}
