//! Relay's client SDK: end-to-end encryption with Olm (vodozemac), a durable SQLite store, an
//! outbox that retries with the same client message id, and edge discovery over DNS, behind one
//! API that apps, bots, the `relay` CLI, the chaos clients and benchmarks all use.
//!
//! - [`Device`] is an open device: [`Device::send`] stores a text and returns its id at once,
//!   the device delivers it (many chats at once) while [`Events`] reports what happens
//!   (messages, ticks, undecryptable messages, expiries, connection state, notes);
//!   [`register`] makes a new one. Its task is the runtime shell around a sans-IO core.
//! - [`core`] is that core: every decision (typing, drafts, envelopes and "mismatched
//!   devices", ticks, queue pages, fallback keys, a device refused as rolled back), fed inputs
//!   and `now`, handing back actions and events, unit-tested with no runtime and no socket. It
//!   uses the sans-IO pieces [`outbox`] (ordering, backoff, send outcomes), [`envelope`],
//!   [`inbound`] (classifying a queue page), [`crypto`], [`fallback`] and [`content`].
//! - [`group_keys`] keeps the device's Megolm group sessions (sending, rotating, sharing and
//!   receiving group keys), sans IO; the send path does not use it yet. [`groups`] is group
//!   membership ([`Device::create_group`], [`Device::add_group_members`], ...), by name.
//! - [`flows`] are the one-command flows of the CLI (`send --wait`, `sync`, `read`, `listen`,
//!   `history`) as thin functions over [`Device`].
//! - [`history`] keeps the device's chats as relay-sync documents, which the account's devices
//!   sync between them (edits, deletions for everyone, reactions, read marks).
//! - [`store`] is the device's SQLite database, one file per table family; [`limits`] every
//!   bound and timeout; [`connection`] and [`discovery`] the network shell; [`terminal`] keeps
//!   peers' text from driving a terminal; [`blob`] seals blobs (files, history snapshots)
//!   before [`Device::upload_blob`] sends them.

pub mod blob;
pub mod block;
pub mod connection;
pub mod content;
pub mod core;
pub mod crypto;
pub mod device;
pub mod discovery;
pub mod envelope;
pub mod error;
pub mod events;
pub mod fallback;
pub mod flows;
pub mod group_keys;
pub mod groups;
pub mod history;
pub mod inbound;
pub mod limits;
pub mod link;
pub mod media;
pub mod media_reach;
pub mod outbox;
pub mod presence;
pub mod push;
pub mod register;
pub mod secrets;
pub mod store;
pub mod terminal;
pub mod transfer;

pub use blob::BlobRef;
pub use core::{MessageState, Mode, StillPending, TypingSent};
pub use device::{
    Approved, BootstrapSent, CA_FILE, DATABASE_FILE, Device, Environment, Events, LinkHistory,
    OpenOptions, Overrides,
};
pub use error::{ClientError, Result};
pub use events::{Direction, Event};
pub use link::{link_accept, link_accept_in};
pub use media::{Attachment, FileDescription, FileInfo};
pub use presence::PresenceSetting;
pub use push::{PushRegistration, PushSetting};
pub use register::{register, register_in};
pub use relay_proto::wire::PresenceVisibility;
pub use store::{Identity, Tick};
pub use transfer::{BlobProgress, BlobSource, IfExists};
