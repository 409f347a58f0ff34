//! Relay's edge: QUIC termination for devices, device authentication, forwarding to regions,
//! delivery to connected devices; and the DNS edge locator.
//!
//! [`session`] holds the per-connection decisions (sans-IO); [`service`] is the QUIC shell;
//! [`locator`] answers DNS queries for the nearest edge.

pub mod config;
pub mod locator;
pub mod service;
pub mod session;

pub use config::EdgeConfig;
pub use service::{EdgeError, EdgeParts, EdgeService, NonceSource, OsNonces};
