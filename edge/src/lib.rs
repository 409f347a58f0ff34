//! Relay's edge: QUIC termination for devices, device authentication, forwarding to regions,
//! delivery to connected devices; and the DNS edge locator.
//!
//! [`session`] holds the per-connection decisions (sans-IO); [`cache`] the bounded, versioned
//! cache of account homes, [`keys`] the bounded cache of device keys that spares a login the
//! round trip to the home region, [`subscriptions`] what a subscription stream to a region has to
//! send, [`presence`] the presence watches of connected devices, and [`acks`] the devices'
//! acknowledgements gathered on their way to a region (all sans-IO); [`service`]
//! is the QUIC shell; [`locator`] answers DNS queries for the
//! nearest edge. Every bound of the edge is in [`limits`].

pub mod acks;
pub mod admission;
pub mod cache;
pub mod config;
pub mod keys;
pub mod limits;
pub mod locator;
pub mod presence;
pub mod service;
pub mod session;
pub mod subscriptions;

pub use config::EdgeConfig;
pub use service::{EdgeError, EdgeParts, EdgeService, NonceSource, OsNonces};
