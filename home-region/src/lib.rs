//! Relay's region service: the home of accounts. It sequences envelopes into per-chat logs,
//! fans them out to device queues, turns acknowledgements into delivered receipts for the
//! senders' regions, and keeps the key directory of its devices.
//!
//! [`core`] holds the decisions as functions over one storage transaction (no sockets, no
//! clock: the time comes in as an argument); [`claims`] the per-claimer rate limit of key
//! claims; [`service`] is the QUIC shell around them, with links to other regions (the
//! directory writer, receipt destinations).

pub mod claims;
pub mod config;
pub mod core;
pub mod service;

pub use config::RegionConfig;
pub use service::{RegionError, RegionParts, RegionService};
