//! Loopback WebPush, APNs and FCM endpoints over TLS (being added).
