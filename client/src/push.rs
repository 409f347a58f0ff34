//! Push registration of an open [`Device`]: while it has no connection, the device's home
//! region can wake it with a content-free push (a WebPush message to a browser, an APNs or FCM
//! notification to an app), after which the app connects and fetches as usual. What the push
//! service carries is the same constant for every message: no content, no sender, no count.
//!
//! The app hands its platform's registration to [`Device::register_push`] (a browser's
//! PushSubscription, subscribed with the region's VAPID key from [`Device::push_state`]; an
//! APNs device token; an FCM registration token). The region checks it, stores it, and deletes
//! it when the push service says it is gone; registering again replaces it.

use relay_proto::wire::{PushAction, PushState, SetPush, WebPushSubscription};

use crate::device::Device;
use crate::error::Result;

/// A platform's push registration for this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRegistration {
    /// A browser's PushSubscription (the Push API's `endpoint` and `keys`).
    WebPush {
        /// The push service URL.
        endpoint: String,
        /// `keys.p256dh`, base64url.
        p256dh: String,
        /// `keys.auth`, base64url.
        auth: String,
    },
    /// An APNs device token (hex).
    Apns(String),
    /// An FCM registration token.
    Fcm(String),
}

/// This device's push registration as its home region keeps it, and what the region offers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PushSetting {
    /// The kind registered (`webpush`, `apns`, `fcm`), if any.
    pub registered: Option<String>,
    /// The kinds the region can push through.
    pub providers: Vec<String>,
    /// The region's VAPID public key (base64url), for a browser's `applicationServerKey`.
    pub vapid_public_key: Option<String>,
}

impl PushSetting {
    fn from_wire(state: PushState) -> Self {
        PushSetting {
            registered: (!state.registered.is_empty()).then_some(state.registered),
            providers: state.providers,
            vapid_public_key: (!state.vapid_public_key.is_empty())
                .then_some(state.vapid_public_key),
        }
    }
}

impl Device {
    /// This device's push registration and the region's push providers.
    pub async fn push_state(&self) -> Result<PushSetting> {
        self.push_request(SetPush::default()).await
    }

    /// Registers this device for wake-up pushes (replacing any registration). The region
    /// refuses a registration it cannot use (a kind it has no provider for, a malformed or
    /// non-https endpoint, a wrong key) with the reason.
    pub async fn register_push(&self, registration: PushRegistration) -> Result<PushSetting> {
        let mut request = SetPush {
            action: PushAction::Set as i32,
            ..SetPush::default()
        };
        match registration {
            PushRegistration::WebPush {
                endpoint,
                p256dh,
                auth,
            } => {
                request.webpush = Some(WebPushSubscription {
                    endpoint,
                    p256dh,
                    auth,
                })
            }
            PushRegistration::Apns(token) => request.apns_token = token,
            PushRegistration::Fcm(token) => request.fcm_token = token,
        }
        self.push_request(request).await
    }

    /// Removes this device's push registration: it is no longer woken.
    pub async fn unregister_push(&self) -> Result<PushSetting> {
        self.push_request(SetPush {
            action: PushAction::Remove as i32,
            ..SetPush::default()
        })
        .await
    }

    async fn push_request(&self, request: SetPush) -> Result<PushSetting> {
        request
            .validate()
            .map_err(|error| crate::error::ClientError::Invalid(error.to_string()))?;
        let connection = self.request_connection().await?;
        Ok(PushSetting::from_wire(connection.push(request).await?))
    }
}
