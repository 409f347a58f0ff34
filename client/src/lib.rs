//! Relay's client: end-to-end encryption with Olm (vodozemac), a durable SQLite store, an outbox
//! that retries with the same client message id, edge discovery over DNS, and the `relay` CLI.
//!
//! The decision logic is sans-IO and unit-tested without sockets: [`outbox`] (ordering, backoff,
//! send outcomes), [`envelope`] (encrypting for exactly the current devices), [`inbound`]
//! (processing a queue page), [`crypto`], [`fallback`] (when the fallback key is replaced and
//! forgotten), [`content`], and the DNS message handling in [`discovery`]. [`connection`] and
//! [`app`] are the runtime shell; [`cli`] parses arguments and prints [`events::Event`]s, through
//! [`terminal`] so that no peer's text can drive the terminal.

pub mod app;
pub mod cli;
pub mod connection;
pub mod content;
pub mod crypto;
pub mod discovery;
pub mod envelope;
pub mod error;
pub mod events;
pub mod fallback;
pub mod inbound;
pub mod outbox;
pub mod secrets;
pub mod limits;
pub mod store;
pub mod terminal;

pub use app::{Client, Environment, Overrides, register, register_in};
pub use error::{ClientError, Result};
pub use events::Event;
