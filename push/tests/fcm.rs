//! FCM end to end against the loopback token and send endpoints, which verify the RS256
//! assertion, the bearer token and the message.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use relay_push::fcm::FcmProvider;
use relay_push::testing::{FcmBehaviour, FcmTestService, fcm_test_key_pem, rsa_public_key};
use relay_push::wake::fcm_wake_message;
use relay_push::{PushError, PushProvider, PushRegistration, Wake, WallClock};

const EMAIL: &str = "relay-push@relay-test.iam.gserviceaccount.com";
const PROJECT: &str = "relay-test";

async fn endpoints() -> FcmTestService {
    let public_key = rsa_public_key(fcm_test_key_pem()).expect("the fixture key");
    FcmTestService::start(EMAIL, public_key, PROJECT)
        .await
        .expect("the endpoints start")
}

fn provider(service: &FcmTestService) -> FcmProvider {
    FcmProvider::new(
        &service.config(),
        &service.service_account_json(fcm_test_key_pem()),
        service.client().expect("a client"),
    )
    .expect("a provider")
}

#[tokio::test]
async fn a_wake_is_sent_with_an_exchanged_access_token_and_holds_only_the_wake_data() {
    let service = endpoints().await;
    let provider = provider(&service);
    let token = "dXk3bm9wcXJz:APA91bH_test-token";
    let registration = PushRegistration::parse_fcm(token).expect("a token");
    let delivered = provider
        .send(&registration, &Wake::default())
        .await
        .expect("delivered");
    assert_eq!(delivered.status, 200);
    assert_eq!(
        delivered.message_id.as_deref(),
        Some("projects/relay-test/messages/1")
    );
    let received = service.received();
    assert_eq!(received.len(), 1, "refused: {:?}", service.refused());
    // Every byte of the message: the token and the fixed wake, nothing else.
    assert_eq!(received[0].body, fcm_wake_message(token));
    assert_eq!(received[0].token, token);
    assert_eq!(service.access_tokens_issued(), 1);
}

#[tokio::test]
async fn the_access_token_is_cached_until_shortly_before_it_expires() {
    let start = SystemTime::now();
    let now = Arc::new(Mutex::new(start));
    let clock_now = now.clone();
    let clock: WallClock = Arc::new(move || *clock_now.lock().expect("the test clock"));
    // The endpoints and the provider share the moved clock, as Google's and ours agree.
    let public_key = rsa_public_key(fcm_test_key_pem()).expect("the fixture key");
    let service = FcmTestService::start_with_clock(EMAIL, public_key, PROJECT, clock.clone())
        .await
        .expect("the endpoints start");
    let provider = provider(&service).with_clock(clock);
    let registration = PushRegistration::parse_fcm("token-1").expect("a token");
    // Issued for 3600 s; refreshed once fewer than 300 s remain.
    for minutes in [0, 20, 54, 56] {
        *now.lock().expect("the test clock") = start + Duration::from_secs(minutes * 60);
        provider
            .send(&registration, &Wake::default())
            .await
            .expect("delivered");
    }
    let received = service.received();
    assert_eq!(received.len(), 4);
    assert_eq!(received[0].access_token, received[2].access_token);
    assert_ne!(received[2].access_token, received[3].access_token);
    assert_eq!(service.access_tokens_issued(), 2);
}

#[tokio::test]
async fn unregistered_and_invalid_tokens_are_gone_and_quota_is_retryable() {
    let service = endpoints().await;
    let provider = provider(&service);
    let cases = [
        ("gone-token", FcmBehaviour::Unregistered),
        ("bad-token", FcmBehaviour::InvalidToken),
        ("busy-token", FcmBehaviour::Throttle { retry_after_s: 11 }),
    ];
    let mut errors = Vec::new();
    for (token, behaviour) in cases {
        service.set_behaviour(token, behaviour);
        let registration = PushRegistration::parse_fcm(token).expect("a token");
        errors.push(
            provider
                .send(&registration, &Wake::default())
                .await
                .expect_err("not delivered"),
        );
    }
    assert!(
        matches!(&errors[0], PushError::Gone { status: 404, .. }),
        "{}",
        errors[0]
    );
    assert!(
        matches!(&errors[1], PushError::Gone { status: 400, .. }),
        "{}",
        errors[1]
    );
    assert!(
        matches!(&errors[2], PushError::Throttled { status: 429, .. }),
        "{}",
        errors[2]
    );
    assert_eq!(errors[2].retry_after(), Some(Duration::from_secs(11)));
    assert!(service.received().is_empty());
}

#[tokio::test]
async fn an_assertion_signed_by_another_key_gets_no_access_token() {
    // The endpoints expect the fixture account's key; the provider signs with another.
    let service = endpoints().await;
    let other_key = include_str!("fixtures/other-rsa-key.pem");
    let provider = FcmProvider::new(
        &service.config(),
        &service.service_account_json(other_key),
        service.client().expect("a client"),
    )
    .expect("a provider");
    let registration = PushRegistration::parse_fcm("token-1").expect("a token");
    let error = provider
        .send(&registration, &Wake::default())
        .await
        .expect_err("refused");
    assert!(matches!(error, PushError::Config(_)), "{error}");
    assert_eq!(service.access_tokens_issued(), 0);
    assert_eq!(
        service.refused(),
        [(400, "Invalid JWT Signature.".to_owned())]
    );
    assert!(service.received().is_empty());
}
