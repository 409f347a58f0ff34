//! Push registrations on the wire: a device asks its home region to wake it while it has no
//! connection, through a browser's WebPush subscription, an APNs device token or an FCM
//! registration token. The region parses and checks what it is given (see the region's push
//! crate); here the fields are only bounded, so a frame cannot carry more than a registration.

use crate::ProtoError;
use crate::limits::{PUSH_TOKEN_BYTES_MAX, WEBPUSH_ENDPOINT_BYTES_MAX, WEBPUSH_KEY_CHARS_MAX};

/// (Device → edge → its home region) read, set or remove the device's push registration.
/// Answered with [`PushState`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SetPush {
    /// What to do.
    #[prost(enumeration = "PushAction", tag = "1")]
    pub action: i32,
    /// The browser's subscription, for a WebPush registration.
    #[prost(message, optional, tag = "2")]
    pub webpush: Option<WebPushSubscription>,
    /// The APNs device token (hex), for an APNs registration.
    #[prost(string, tag = "3")]
    pub apns_token: String,
    /// The FCM registration token, for an FCM registration.
    #[prost(string, tag = "4")]
    pub fcm_token: String,
}

/// What a [`SetPush`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PushAction {
    /// Only read the registration and the region's push settings.
    Read = 0,
    /// Register (replacing any registration of the device): exactly one of the kinds is set.
    Set = 1,
    /// Remove the device's registration.
    Remove = 2,
}

/// A browser's PushSubscription (the W3C Push API's `endpoint` and `keys`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WebPushSubscription {
    /// The push service URL (https).
    #[prost(string, tag = "1")]
    pub endpoint: String,
    /// `keys.p256dh`: the browser's P-256 public key, base64url.
    #[prost(string, tag = "2")]
    pub p256dh: String,
    /// `keys.auth`: the 16-byte authentication secret, base64url.
    #[prost(string, tag = "3")]
    pub auth: String,
}

/// (Region → edge → device) the device's push registration and what the region offers.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PushState {
    /// The kind registered: `webpush`, `apns`, `fcm`, or empty for none.
    #[prost(string, tag = "1")]
    pub registered: String,
    /// The kinds this region can push through (its configured providers).
    #[prost(string, repeated, tag = "2")]
    pub providers: Vec<String>,
    /// The region's VAPID public key (base64url, uncompressed P-256), when it pushes through
    /// WebPush: a browser subscribes with it as its `applicationServerKey`.
    #[prost(string, tag = "3")]
    pub vapid_public_key: String,
}

impl SetPush {
    /// Checks the bounds of every field and that a `Set` names exactly one kind.
    pub fn validate(&self) -> Result<PushAction, ProtoError> {
        let action = PushAction::try_from(self.action)
            .map_err(|_| ProtoError::invalid("an unknown push action"))?;
        if let Some(webpush) = &self.webpush
            && (webpush.endpoint.len() > WEBPUSH_ENDPOINT_BYTES_MAX
                || webpush.p256dh.len() > WEBPUSH_KEY_CHARS_MAX
                || webpush.auth.len() > WEBPUSH_KEY_CHARS_MAX)
        {
            return Err(ProtoError::invalid(
                "a WebPush subscription over its bounds",
            ));
        }
        if self.apns_token.len() > PUSH_TOKEN_BYTES_MAX
            || self.fcm_token.len() > PUSH_TOKEN_BYTES_MAX
        {
            return Err(ProtoError::invalid("a push token over its bound"));
        }
        let kinds = usize::from(self.webpush.is_some())
            + usize::from(!self.apns_token.is_empty())
            + usize::from(!self.fcm_token.is_empty());
        match (action, kinds) {
            (PushAction::Set, 1) | (PushAction::Read | PushAction::Remove, 0) => Ok(action),
            (PushAction::Set, _) => Err(ProtoError::invalid(
                "a push registration names exactly one of webpush, apns and fcm",
            )),
            _ => Err(ProtoError::invalid(
                "only a push registration carries a kind",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_names_exactly_one_kind_within_its_bounds() {
        let webpush = WebPushSubscription {
            endpoint: "https://push.example/abc".into(),
            p256dh: "k".into(),
            auth: "a".into(),
        };
        let set = |webpush: Option<WebPushSubscription>, apns: &str| SetPush {
            action: PushAction::Set as i32,
            webpush,
            apns_token: apns.into(),
            fcm_token: String::new(),
        };
        assert_eq!(
            set(Some(webpush.clone()), "").validate(),
            Ok(PushAction::Set)
        );
        assert!(
            set(Some(webpush.clone()), "ab").validate().is_err(),
            "two kinds"
        );
        assert!(set(None, "").validate().is_err(), "no kind");
        let read = SetPush::default();
        assert_eq!(read.validate(), Ok(PushAction::Read));
        let carrying = SetPush {
            action: PushAction::Remove as i32,
            ..set(None, "ab")
        };
        assert!(carrying.validate().is_err());
        let long = WebPushSubscription {
            endpoint: "x".repeat(WEBPUSH_ENDPOINT_BYTES_MAX + 1),
            ..webpush
        };
        assert!(set(Some(long), "").validate().is_err());
        assert!(
            set(None, &"f".repeat(PUSH_TOKEN_BYTES_MAX + 1))
                .validate()
                .is_err()
        );
        let unknown = SetPush {
            action: 9,
            ..SetPush::default()
        };
        assert!(unknown.validate().is_err());
    }
}
