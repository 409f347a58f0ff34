//! The device's durable state in SQLite (`<data>/relay.db`, WAL, `synchronous=FULL`,
//! `secure_delete`): identity and settings, the Olm account and session pickles and the Megolm
//! group sessions (sealed under the device key, see [`crate::secrets`]), trusted device keys,
//! contacts, messages with their ticks, the outbox and the drafts waiting for their recipient's
//! account, per-chat sender_seq counters, the queue cursor with the acks still owed, and the
//! seen-set that deduplicates redelivered envelopes. A few values of the device's own state
//! live in the settings table, which needs no schema change for them: the last edge that
//! worked, the envelope counter (`device_seq`), when the fallback key was made, and whether the
//! relay refused this device because its state went back.
//!
//! Reads are methods on [`Store`]; every change goes through [`Store::write`], one transaction
//! whose commit is durable before the caller acknowledges anything to the server or reports it
//! done. The schema is versioned with `PRAGMA user_version`; a migration only ever adds
//! (version 2 added the drafts, version 4 the group sessions). Opening checks the file is a
//! database of this schema with every table, and calls anything else damaged
//! ([`ClientError::Damaged`]) instead of starting over. Pickles written by builds before
//! sealing are sealed by [`Store::unlock`], after which the file is vacuumed and its write-ahead
//! log truncated, so no plaintext copy stays behind.
//!
//! One file per table family: [`identity`] (identity and settings), [`crypto`] (the Olm
//! account and sessions), [`groups`] (the Megolm group sessions), [`contacts`] (contacts and
//! devices), [`messages`] (messages, ticks and receipts), [`group_chat`] (group membership
//! as last known, group messages and those waiting for a key), [`outbox`] (outbox, sender_seq
//! counters and drafts), [`queue`] (queue cursor, acks owed and the seen-set) and [`schema`]
//! (the schema and its migrations).

use std::path::{Path, PathBuf};

use relay_proto::{AccountId, DeviceAddress, DeviceId};
use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::error::{ClientError, Result};
use crate::limits::{BUSY_TIMEOUT_MS, STATEMENTS_CACHED_MAX};
use crate::secrets::DeviceKey;

pub mod contacts;
pub mod crypto;
pub mod group_chat;
pub mod groups;
pub mod identity;
pub mod messages;
pub mod outbox;
pub mod queue;
pub mod schema;

pub use contacts::{Contact, KnownDevice};
pub use group_chat::{KnownGroup, NewGroupMessage, StoredGroupMessage, UnnumberedText};
pub use identity::{Identity, Settings};
pub use messages::{NewMessage, RecipientReceipt, RecipientState, StoredMessage, Tick};
pub use outbox::{Draft, OutboxRow};
pub use schema::SCHEMA_VERSION;

/// The SQLite store of one data directory.
#[derive(Debug)]
pub struct Store {
    connection: Connection,
    path: PathBuf,
    /// Seals and opens the Olm pickles; `None` until [`Store::unlock`].
    key: Option<DeviceKey>,
    /// The Olm account and sessions as last committed through this store (see
    /// [`Store::write_with_crypto`]).
    crypto: crypto::CryptoCache,
}

impl Store {
    /// Creates the database of a new data directory at `path`, or opens the one an unfinished
    /// registration left there. An existing file that is not such a database is damaged.
    pub fn create(path: &Path) -> Result<Self> {
        if path.exists() {
            return Self::open(path);
        }
        let mut store = Self::connect(path)?;
        store.configure()?;
        let transaction = store.connection.transaction()?;
        schema::create(&transaction)?;
        transaction.commit()?;
        Ok(store)
    }

    /// Opens the existing database at `path`, migrating an older schema; never creates one. A
    /// file that is not a database, is empty, or lacks a table is [`ClientError::Damaged`].
    /// The Olm pickles stay locked until [`Store::unlock`].
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(damaged(path, "the file does not exist"));
        }
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let mut store = Self::connect(path)?;
        let version = schema::check(&store.connection, path, bytes)?;
        store.configure()?;
        if version < SCHEMA_VERSION {
            let transaction = store.connection.transaction()?;
            schema::migrate(&transaction, version)?;
            transaction.commit()?;
        }
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The error for this database holding something it must not (or lacking something).
    pub fn damaged(&self, problem: &str) -> ClientError {
        damaged(&self.path, problem)
    }

    fn connect(path: &Path) -> Result<Self> {
        let connection =
            Connection::open(path).map_err(|error| damaged(path, &error.to_string()))?;
        // A file that is not a database fails at its first read: say so, and leave it as it is.
        connection
            .query_row("SELECT count(*) FROM sqlite_master", [], |row| {
                row.get::<_, i64>(0)
            })
            .map_err(|error| damaged(path, &error.to_string()))?;
        connection.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
        connection.set_prepared_statement_cache_capacity(STATEMENTS_CACHED_MAX);
        Ok(Self {
            connection,
            path: path.to_owned(),
            key: None,
            crypto: crypto::CryptoCache::default(),
        })
    }

    /// Sets the connection's durability and privacy modes (only on a database known to be
    /// ours: switching to WAL writes to the file).
    fn configure(&self) -> Result<()> {
        self.connection.pragma_update(None, "journal_mode", "WAL")?;
        self.connection.pragma_update(None, "synchronous", "FULL")?;
        self.connection.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted and overwritten content (old pickles, deleted rows) is zeroed, not left in
        // free pages.
        self.connection.pragma_update(None, "secure_delete", "ON")?;
        Ok(())
    }

    /// Runs `change` in one transaction and commits it durably. The transaction takes the write
    /// lock first (`BEGIN IMMEDIATE`), so state read inside it (the Olm pickles above all) cannot
    /// be changed by another process using the same data directory before it commits.
    pub fn write<T>(&mut self, change: impl FnOnce(&Writer<'_>) -> Result<T>) -> Result<T> {
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = change(&Writer {
            transaction: &transaction,
            key: self.key.as_ref(),
        })?;
        transaction.commit()?;
        Ok(value)
    }
}

/// The changes of one transaction (see [`Store::write`]).
#[derive(Debug)]
pub struct Writer<'a> {
    transaction: &'a Transaction<'a>,
    key: Option<&'a DeviceKey>,
}

impl Writer<'_> {
    /// Runs one statement through the connection's statement cache: the write paths run the
    /// same few statements for every message, and parsing and planning each one anew was about
    /// a tenth of a busy device's CPU (profile of `relayd bench messages --mode e2ee`).
    fn execute(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.transaction.prepare_cached(sql)?.execute(params)
    }
}

fn damaged(path: &Path, problem: &str) -> ClientError {
    ClientError::Damaged {
        database: path.to_owned(),
        problem: problem.to_owned(),
    }
}

fn address(account: i64, device: i64) -> DeviceAddress {
    DeviceAddress {
        account: AccountId(to_u64(account)),
        device: DeviceId(to_u32(device)),
    }
}

// SQLite integers are i64; ids and sequences are u64 on the wire and stay below 2^63 in practice.
// The casts are bit-preserving both ways, so a value always reads back as it was written.
fn to_i64(value: u64) -> i64 {
    value as i64
}

fn to_u64(value: i64) -> u64 {
    value as u64
}

fn to_u32(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) fn device(account: u64, device: u32) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(account),
            device: DeviceId(device),
        }
    }

    pub(crate) fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::create(&dir.path().join("relay.db")).expect("create");
        store
            .unlock(&dir.path().join("device.key"))
            .expect("unlock");
        (dir, store)
    }
}
