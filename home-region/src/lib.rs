//! Relay's region service: the home of accounts. It sequences envelopes into per-chat logs,
//! fans them out to device queues, turns acknowledgements into delivered receipts for the
//! senders' regions, and keeps the key directory of its devices.
//!
//! [`core`] holds the decisions as functions over one storage transaction (no sockets, no
//! clock: the time comes in as an argument), [`linking`] and [`groups`] those of linked devices
//! and of groups (the latter at the directory writer); [`claims`] the per-claimer rate limit of key
//! claims; [`service`] is the QUIC shell around them, with links to other regions (the
//! directory writer, receipt destinations). [`store_check`] decides, before the region serves,
//! whether the store it opened is the one it expects; [`blobs`] is the resumable blob store
//! (encrypted media and history snapshots, through `object_store`); [`repair`] is the operator's offline check
//! and repair of a store's device queues. Every bound of the region is in [`limits`].

pub mod blob_objects;
pub mod blobs;
pub mod claims;
pub mod config;
pub mod core;
pub mod direct_files;
pub mod directory_replica;
pub mod failover;
pub mod groups;
pub mod handover;
pub mod home_move;
pub mod lanes;
pub mod limits;
pub mod linking;
pub mod media_pass;
pub mod presence;
pub mod promote;
pub mod push;
pub mod repair;
pub mod service;
pub mod store_check;
mod stored_envelope;

pub use config::RegionConfig;
pub use service::{RegionError, RegionParts, RegionService};
