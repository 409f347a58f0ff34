//! Relay's multi-device model: each chat's history as automerge documents that every device of
//! a user converges on (invariant I7), the sync between a user's own devices, and snapshots for
//! a new device.
//!
//! A chat is a sequence of **epochs** of at most [`limits::EPOCH_MESSAGES_MAX`] chat sequences,
//! each an automerge document (see `schema` for its layout and `epoch` for generations and
//! compaction). Edits and reactions are last-writer-wins by hybrid logical clock ([`Hlc`]),
//! resolved by value; read watermarks only move forward; a deletion for everyone removes the
//! text from every device's saved state by compacting the epoch into a new generation.
//!
//! Everything is sans-IO: a [`Replica`] takes operations and bytes, and hands out views, sync
//! messages and snapshots as values and bytes. It reads no clock (times are arguments), opens
//! no socket or file and spawns nothing. Bytes from a peer or a file never panic it: they are a
//! [`SyncError`].

pub mod bench;
mod epoch;
pub mod error;
pub mod hlc;
pub mod inspect;
pub mod limits;
mod replica;
mod schema;
pub mod view;
mod wire;

pub use epoch::{GenerationId, Outcome, epoch_of};
pub use error::SyncError;
pub use hlc::Hlc;
pub use replica::{EpochInfo, NewMessage, Received, Replica};
pub use view::{ChatView, Deletion, MessageView};
