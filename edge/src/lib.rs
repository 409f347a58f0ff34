//! Relay's edge: QUIC termination for devices, device authentication, forwarding to regions,
//! delivery to connected devices; and the DNS edge locator.

pub mod locator;
