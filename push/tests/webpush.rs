//! WebPush end to end against the loopback push service, which checks VAPID, the headers and
//! decrypts every body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_push::queue::Settled;
use relay_push::testing::{WebPushBehaviour, WebPushTestService};
use relay_push::wake::{WAKE_COLLAPSE_KEY, WEBPUSH_WAKE_PLAINTEXT};
use relay_push::webpush::WebPushProvider;
use relay_push::{
    PushConfig, PushError, PushProvider, PushProviders, PushQueue, PushRegistration, VapidKey,
    Wake, WebPushConfig,
};

const CONTACT: &str = "mailto:ops@relay.example";

async fn service_and_provider() -> (WebPushTestService, WebPushProvider) {
    let service = WebPushTestService::start()
        .await
        .expect("the service starts");
    let client = service.client().expect("a client");
    let provider = WebPushProvider::new(VapidKey::generate().expect("a key"), CONTACT, client)
        .expect("a provider");
    (service, provider)
}

#[tokio::test]
async fn a_wake_arrives_encrypted_signed_and_holds_only_the_wake_payload() {
    let (service, provider) = service_and_provider().await;
    let registration = service.subscribe(Some(provider.vapid_public_key()));
    let wake = Wake::new(Duration::from_secs(600));
    let delivered = provider
        .send(&registration, &wake)
        .await
        .expect("delivered");
    assert_eq!(delivered.status, 201);
    assert!(
        delivered
            .message_id
            .is_some_and(|id| id.contains("/message/1"))
    );

    let received = service.received();
    assert_eq!(received.len(), 1, "refused: {:?}", service.refused());
    let push = &received[0];
    // The only bytes a push carries, decrypted by the receiver: the fixed wake.
    assert_eq!(push.plaintext, WEBPUSH_WAKE_PLAINTEXT);
    assert!(push.encrypted_bytes > WEBPUSH_WAKE_PLAINTEXT.len() + 16);
    assert_eq!(push.ttl_s, 600);
    assert_eq!(push.urgency.as_deref(), Some("high"));
    assert_eq!(push.topic.as_deref(), Some(WAKE_COLLAPSE_KEY));
    assert_eq!(push.vapid_subject, CONTACT);
    assert_eq!(push.vapid_public_key, provider.vapid_public_key());
}

#[tokio::test]
async fn gone_and_throttled_answers_map_to_their_errors() {
    let (service, provider) = service_and_provider().await;
    let wake = Wake::default();

    let gone = service.subscribe(None);
    service.set_behaviour(&gone, WebPushBehaviour::Gone);
    let error = provider.send(&gone, &wake).await.expect_err("gone");
    assert!(
        matches!(error, PushError::Gone { status: 410, .. }),
        "{error}"
    );

    let busy = service.subscribe(None);
    service.set_behaviour(&busy, WebPushBehaviour::Throttle { retry_after_s: 7 });
    let error = provider.send(&busy, &wake).await.expect_err("throttled");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    assert!(
        matches!(error, PushError::Throttled { status: 429, .. }),
        "{error}"
    );
    assert!(error.is_retryable());

    assert!(service.received().is_empty());
}

#[tokio::test]
async fn a_push_signed_with_another_vapid_key_is_refused_by_the_service() {
    let (service, provider) = service_and_provider().await;
    let other = VapidKey::generate().expect("a key");
    // The browser subscribed with another application server key.
    let registration = service.subscribe(Some(other.public_key()));
    let error = provider
        .send(&registration, &Wake::default())
        .await
        .expect_err("refused");
    assert!(
        matches!(error, PushError::Rejected { status: 403, .. }),
        "{error}"
    );
    assert!(service.received().is_empty());
    assert_eq!(service.refused().len(), 1);
}

#[tokio::test]
async fn providers_built_from_config_files_deliver_through_a_ca_file() {
    let service = WebPushTestService::start()
        .await
        .expect("the service starts");
    let folder = tempfile::tempdir().expect("a folder");
    let generated = relay_push::generate_vapid_key().expect("a key");
    let key_file = folder.path().join("vapid.pem");
    std::fs::write(&key_file, &generated.private_key_pem).expect("written");
    let ca_file = folder.path().join("ca.pem");
    std::fs::write(&ca_file, service.tls().certificate_pem()).expect("written");
    let config = PushConfig {
        webpush: Some(WebPushConfig {
            vapid_private_key_file: key_file,
            contact: CONTACT.into(),
        }),
        ca_file: Some(ca_file),
        ..PushConfig::default()
    };
    let providers: Arc<dyn PushProvider> =
        Arc::new(PushProviders::from_config(&config).expect("providers"));
    let public_key = relay_push::VapidKey::from_text(&generated.private_key_pem)
        .expect("the key")
        .public_key()
        .to_vec();
    let registration = service.subscribe(Some(&public_key));
    providers
        .send(&registration, &Wake::default())
        .await
        .expect("delivered");
    assert_eq!(service.received().len(), 1);

    let apns = PushRegistration::parse_apns(&"ab".repeat(32)).expect("a token");
    let error = providers
        .send(&apns, &Wake::default())
        .await
        .expect_err("no APNs provider");
    assert!(matches!(error, PushError::Config(_)), "{error}");
}

/// The region's loop in small: the queue decides, the provider sends, the service answers.
/// Ten wakes and a throttled first attempt still make exactly one delivered push.
#[tokio::test]
async fn the_queue_and_a_provider_coalesce_and_retry_to_one_delivered_push() {
    let (service, provider) = service_and_provider().await;
    let registration = service.subscribe(Some(provider.vapid_public_key()));
    service.set_behaviour(
        &registration,
        WebPushBehaviour::Throttle { retry_after_s: 3 },
    );
    let mut queue = PushQueue::default();
    let start = Instant::now();
    for _ in 0..10 {
        queue.handle_wake("device-1", start);
    }
    let send = queue.poll_send(start).expect("due");
    let result = provider.send(&registration, &Wake::default()).await;
    let settled = queue.handle_result(&send.device, &result, start);
    assert_eq!(
        settled,
        Settled::Retrying {
            at: start + Duration::from_secs(3)
        }
    );

    service.set_behaviour(&registration, WebPushBehaviour::Accept);
    assert!(queue.poll_send(start + Duration::from_secs(2)).is_none());
    let at = queue.poll_timeout().expect("a retry is waiting");
    let send = queue.poll_send(at).expect("due");
    assert_eq!(send.attempt, 2);
    let result = provider.send(&registration, &Wake::default()).await;
    assert_eq!(
        queue.handle_result(&send.device, &result, at),
        Settled::Delivered
    );
    assert!(queue.is_empty());
    assert_eq!(service.received().len(), 1);
}

/// One VAPID signature serves every push to an origin for half the token's validity; then a
/// new one is signed (and the service still accepts every push).
#[tokio::test]
async fn a_vapid_token_is_reused_for_an_origin_then_signed_anew() {
    let (service, provider) = service_and_provider().await;
    let now = Arc::new(std::sync::Mutex::new(std::time::SystemTime::now()));
    let clock = {
        let now = now.clone();
        Arc::new(move || *now.lock().expect("clock"))
    };
    let provider = provider.with_clock(clock);
    let registration = service.subscribe(Some(provider.vapid_public_key()));
    let PushRegistration::WebPush(subscription) = &registration else {
        panic!("a WebPush subscription");
    };
    let authorization = |provider: &WebPushProvider| {
        provider
            .request(subscription, &Wake::default())
            .expect("a request")
            .headers()
            .get(http::header::AUTHORIZATION)
            .expect("signed")
            .clone()
    };
    let first = authorization(&provider);
    *now.lock().expect("clock") +=
        Duration::from_secs(relay_push::limits::VAPID_TOKEN_REUSE_S - 60);
    assert_eq!(authorization(&provider), first, "reused within the window");
    provider
        .send(&registration, &Wake::default())
        .await
        .expect("a reused token is accepted");
    *now.lock().expect("clock") += Duration::from_secs(120);
    assert_ne!(
        authorization(&provider),
        first,
        "signed anew after the window"
    );
}
