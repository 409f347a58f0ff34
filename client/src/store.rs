//! The device's durable state in SQLite (`<data>/relay.db`, WAL, `synchronous=FULL`,
//! `secure_delete`): identity and settings, the Olm account and session pickles (sealed under the
//! device key, see [`crate::secrets`]), trusted device keys, contacts, messages with their ticks,
//! the outbox and the drafts waiting for their recipient's account, per-chat sender_seq
//! counters, the queue cursor with the acks still owed, and the seen-set that deduplicates
//! redelivered envelopes. A few values of the device's own state live in the settings table,
//! which needs no schema change for them: the last edge that worked, the envelope counter
//! (`device_seq`), when the fallback key was made, and whether the relay refused this device
//! because its state went back.
//!
//! Reads are methods on [`Store`]; every change goes through [`Store::write`], one transaction
//! whose commit is durable before the caller acknowledges anything to the server or reports it
//! done. The schema is versioned with `PRAGMA user_version`; a migration only ever adds
//! (version 2 added the drafts). Opening checks the file is a database of this schema with every
//! table, and calls anything else damaged ([`ClientError::Damaged`]) instead of starting over.
//! Pickles written by builds before sealing are sealed by [`Store::unlock`], after which the
//! file is vacuumed and its write-ahead log truncated, so no plaintext copy stays behind.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use prost::Message as _;
use relay_planted::PlantedBug;
use relay_proto::wire::Envelope;
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use crate::crypto::{Crypto, CryptoChanges};
use crate::error::{ClientError, Result};
use crate::fallback::FallbackTimes;
use crate::secrets::{DeviceKey, is_sealed};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 2;
/// How long a seen envelope id is remembered, in ms: longer than the 30-day queue retention, after
/// which the server can no longer redeliver it.
pub const SEEN_RETENTION_MS: u64 = 31 * 24 * 3600 * 1000;
/// How long to wait for another process holding the database lock, in milliseconds.
pub const BUSY_TIMEOUT_MS: u64 = 10_000;

/// Settings keys of the device's own state (see the module doc).
const NEXT_DEVICE_SEQ_KEY: &str = "next_device_seq";
const FALLBACK_MADE_AT_KEY: &str = "fallback_key_made_at_ms";
const FALLBACK_PREVIOUS_KEPT_KEY: &str = "fallback_key_previous_kept";
const ROLLED_BACK_KEY: &str = "rolled_back";

const SCHEMA_V1: &str = "
CREATE TABLE identity (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    account INTEGER NOT NULL,
    device INTEGER NOT NULL,
    name TEXT NOT NULL,
    region INTEGER NOT NULL,
    epoch INTEGER NOT NULL
);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE olm_account (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    pickle TEXT NOT NULL
);
CREATE TABLE olm_sessions (
    account INTEGER NOT NULL,
    device INTEGER NOT NULL,
    position INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    pickle TEXT NOT NULL,
    PRIMARY KEY (account, device, position)
);
CREATE TABLE devices (
    account INTEGER NOT NULL,
    device INTEGER NOT NULL,
    identity_key BLOB,
    current INTEGER NOT NULL,
    PRIMARY KEY (account, device)
);
CREATE TABLE contacts (
    account INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    region INTEGER NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chat BLOB NOT NULL,
    peer INTEGER NOT NULL,
    outgoing INTEGER NOT NULL,
    sender_account INTEGER NOT NULL,
    sender_device INTEGER NOT NULL,
    client_message_id BLOB NOT NULL,
    sender_seq INTEGER NOT NULL,
    chat_seq INTEGER,
    text TEXT,
    sent_at_ms INTEGER NOT NULL,
    server_time_ms INTEGER,
    tick INTEGER NOT NULL,
    read_at_ms INTEGER,
    undecryptable TEXT,
    failed TEXT,
    expired_devices INTEGER NOT NULL DEFAULT 0,
    UNIQUE (sender_account, sender_device, client_message_id)
);
CREATE INDEX messages_by_peer ON messages (peer, id);
CREATE TABLE outbox (
    chat BLOB NOT NULL,
    sender_seq INTEGER NOT NULL,
    client_message_id BLOB NOT NULL UNIQUE,
    peer INTEGER NOT NULL,
    content BLOB NOT NULL,
    envelope BLOB,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (chat, sender_seq)
);
CREATE TABLE chat_counters (chat BLOB PRIMARY KEY, next_sender_seq INTEGER NOT NULL);
CREATE TABLE queue_cursor (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    after_queue_seq INTEGER NOT NULL
);
CREATE TABLE pending_acks (queue_seq INTEGER PRIMARY KEY);
CREATE TABLE seen (
    sender_account INTEGER NOT NULL,
    sender_device INTEGER NOT NULL,
    client_message_id BLOB NOT NULL,
    seen_at_ms INTEGER NOT NULL,
    PRIMARY KEY (sender_account, sender_device, client_message_id)
) WITHOUT ROWID;
CREATE TABLE receipts (
    sender_account INTEGER NOT NULL,
    sender_device INTEGER NOT NULL,
    client_message_id BLOB NOT NULL,
    recipient_account INTEGER NOT NULL,
    recipient_device INTEGER NOT NULL,
    state INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (sender_account, sender_device, client_message_id, recipient_account, recipient_device)
) WITHOUT ROWID;
";

/// Version 2: messages typed for a recipient whose account is not known yet.
const SCHEMA_V2: &str = "
CREATE TABLE drafts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_message_id BLOB NOT NULL UNIQUE,
    peer_name TEXT NOT NULL,
    text TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL
);
";

/// The tables of each schema version, to check an opened database holds them all.
const TABLES_V1: [&str; 13] = [
    "identity",
    "settings",
    "olm_account",
    "olm_sessions",
    "devices",
    "contacts",
    "messages",
    "outbox",
    "chat_counters",
    "queue_cursor",
    "pending_acks",
    "seen",
    "receipts",
];
const TABLES_V2: [&str; 1] = ["drafts"];

/// The settings key of the last edge a connection reached.
const LAST_EDGE_SETTING: &str = "last_edge";
/// What the sealed account pickle is bound to.
const SEALED_ACCOUNT: &str = "olm account";

/// The device this data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The account.
    pub account: AccountId,
    /// This device's number.
    pub device: DeviceId,
    /// The account's name.
    pub name: String,
    /// The home region.
    pub region: u32,
    /// The home region's epoch when registered.
    pub epoch: u64,
}

impl Identity {
    /// This device's address.
    pub fn address(&self) -> DeviceAddress {
        DeviceAddress {
            account: self.account,
            device: self.device,
        }
    }
}

/// Where to find the deployment, remembered from registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The edge locator's DNS address.
    pub locator: SocketAddr,
    /// The local address sockets bind to (it decides the client's region).
    pub bind_ip: IpAddr,
    /// The deployment's CA certificate (a copy inside the data directory).
    pub ca_path: PathBuf,
}

/// An account known by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The account.
    pub account: AccountId,
    /// Its name.
    pub name: String,
    /// Its home region.
    pub region: u32,
}

/// A device of some account, as this device knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownDevice {
    /// The device.
    pub address: DeviceAddress,
    /// Its Curve25519 identity key, trusted on first use.
    pub identity_key: Option<[u8; 32]>,
    /// Whether it is among its account's current devices.
    pub current: bool,
}

/// How far a sent message got. Only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tick {
    /// In the outbox.
    Pending = 0,
    /// Stored by every destination region (✓).
    Sent = 1,
    /// A device of the peer acknowledged it (✓✓).
    Delivered = 2,
    /// The peer read it.
    Read = 3,
}

impl Tick {
    /// The tick for a stored number.
    pub fn from_i64(value: i64) -> Result<Self> {
        match value {
            0 => Ok(Tick::Pending),
            1 => Ok(Tick::Sent),
            2 => Ok(Tick::Delivered),
            3 => Ok(Tick::Read),
            other => Err(ClientError::Corrupt(format!("tick {other}"))),
        }
    }

    /// The lowercase name used in JSON output: `pending`, `sent`, `delivered`, `read`.
    pub fn name(self) -> &'static str {
        match self {
            Tick::Pending => "pending",
            Tick::Sent => "sent",
            Tick::Delivered => "delivered",
            Tick::Read => "read",
        }
    }

    /// The label people see: `pending`, `sent ✓`, `delivered ✓✓`, `read`.
    pub fn label(self) -> &'static str {
        match self {
            Tick::Pending => "pending",
            Tick::Sent => "sent ✓",
            Tick::Delivered => "delivered ✓✓",
            Tick::Read => "read",
        }
    }

    /// Parses a JSON name.
    pub fn parse(name: &str) -> Option<Self> {
        [Tick::Pending, Tick::Sent, Tick::Delivered, Tick::Read]
            .into_iter()
            .find(|tick| tick.name() == name)
    }
}

/// One message of a chat, either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Local row id (insertion order).
    pub id: i64,
    /// The chat.
    pub chat: ChatId,
    /// The other account of the chat.
    pub peer: AccountId,
    /// Whether this account sent it (from this or another own device).
    pub outgoing: bool,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The sender's id for it.
    pub client_message_id: ClientMessageId,
    /// The sender's counter in the chat.
    pub sender_seq: u64,
    /// The home region's chat sequence, once known.
    pub chat_seq: Option<u64>,
    /// The text; `None` when undecryptable.
    pub text: Option<String>,
    /// When the sender wrote it (sender's clock, ms).
    pub sent_at_ms: u64,
    /// When the region committed it (ms), once known.
    pub server_time_ms: Option<u64>,
    /// How far it got (outgoing messages).
    pub tick: Tick,
    /// When this account read it (incoming messages).
    pub read_at_ms: Option<u64>,
    /// Why it could not be decrypted, if it could not.
    pub undecryptable: Option<String>,
    /// Why it was given up, if it was.
    pub failed: Option<String>,
    /// Peer devices whose copy expired undelivered.
    pub expired_devices: u32,
}

impl StoredMessage {
    /// The time to show: the region's commit time when known, else the sender's clock.
    pub fn time_ms(&self) -> u64 {
        self.server_time_ms.unwrap_or(self.sent_at_ms)
    }
}

/// A message to insert.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// The chat.
    pub chat: ChatId,
    /// The other account of the chat.
    pub peer: AccountId,
    /// Whether this account sent it.
    pub outgoing: bool,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The sender's id for it.
    pub client_message_id: ClientMessageId,
    /// The sender's counter in the chat.
    pub sender_seq: u64,
    /// The home region's chat sequence, if known.
    pub chat_seq: Option<u64>,
    /// The text, if decrypted.
    pub text: Option<&'a str>,
    /// The sender's clock.
    pub sent_at_ms: u64,
    /// The region's commit time, if known.
    pub server_time_ms: Option<u64>,
    /// The initial tick.
    pub tick: Tick,
    /// Why it could not be decrypted.
    pub undecryptable: Option<&'a str>,
}

/// A message typed for an account known only by name: it waits here until a command resolves
/// the name, then becomes an outbox entry under the same id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// The id the message keeps once queued.
    pub client_message_id: ClientMessageId,
    /// The recipient's account name.
    pub peer_name: String,
    /// The text.
    pub text: String,
    /// When it was written (ms since the Unix epoch).
    pub sent_at_ms: u64,
}

/// An outbox entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The chat.
    pub chat: ChatId,
    /// The sender device's counter in the chat.
    pub sender_seq: u64,
    /// The idempotency key.
    pub client_message_id: ClientMessageId,
    /// The other account of the chat.
    pub peer: AccountId,
    /// The encoded plaintext [`crate::content::Content`], kept to re-encrypt on mismatched devices.
    pub content: Vec<u8>,
    /// The encoded envelope once built; retries send exactly these bytes.
    pub envelope: Option<Vec<u8>>,
}

/// The SQLite store of one data directory.
#[derive(Debug)]
pub struct Store {
    connection: Connection,
    path: PathBuf,
    /// Seals and opens the Olm pickles; `None` until [`Store::unlock`].
    key: Option<DeviceKey>,
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
        transaction.execute_batch(SCHEMA_V1)?;
        transaction.execute_batch(SCHEMA_V2)?;
        transaction.pragma_update(None, "user_version", SCHEMA_VERSION)?;
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
        let version: i32 = store
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|error| damaged(path, &error.to_string()))?;
        if version > SCHEMA_VERSION {
            return Err(ClientError::Corrupt(format!(
                "{} has schema version {version}; this build reads up to {SCHEMA_VERSION}",
                path.display()
            )));
        }
        if version < 1 {
            let problem = if bytes == 0 {
                "the file is empty".to_owned()
            } else {
                "it holds no Relay tables".to_owned()
            };
            return Err(damaged(path, &problem));
        }
        let mut expected: Vec<&str> = TABLES_V1.to_vec();
        if version >= 2 {
            expected.extend(TABLES_V2);
        }
        for table in expected {
            let found: Option<i64> = store
                .connection
                .query_row(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|error| damaged(path, &error.to_string()))?;
            if found.is_none() {
                return Err(damaged(path, &format!("the table {table} is missing")));
            }
        }
        store.configure()?;
        if version < 2 {
            let transaction = store.connection.transaction()?;
            transaction.execute_batch(SCHEMA_V2)?;
            transaction.pragma_update(None, "user_version", 2)?;
            transaction.commit()?;
        }
        Ok(store)
    }

    /// Opens the Olm pickles with the device key at `key_path`, creating the key if no sealed
    /// secret needs one yet. Plaintext pickles (from builds before sealing) are sealed in one
    /// transaction, then the file is vacuumed and its log truncated so no plaintext copy stays.
    /// A missing or wrong key is a [`ClientError::DeviceKey`] error, never a new identity.
    pub fn unlock(&mut self, key_path: &Path) -> Result<()> {
        let account: Option<String> = self
            .connection
            .query_row(
                "SELECT pickle FROM olm_account WHERE singleton = 1",
                [],
                |row| row.get(0),
            )
            .optional()?;
        let sealed_exists = account.as_deref().is_some_and(is_sealed) || {
            let sealed_session: Option<i64> = self
                .connection
                .query_row(
                    "SELECT 1 FROM olm_sessions WHERE pickle LIKE 'sealed1:%' LIMIT 1",
                    [],
                    |row| row.get(0),
                )
                .optional()?;
            sealed_session.is_some()
        };
        let key = if sealed_exists {
            DeviceKey::load(key_path)?
        } else {
            DeviceKey::load_or_create(key_path)?
        };
        if let Some(sealed) = account.as_deref().filter(|account| is_sealed(account)) {
            // A wrong key fails here, at once, rather than at the first message.
            key.open(SEALED_ACCOUNT, sealed)?;
        }
        let sealed_now = self.seal_plaintext(&key)?;
        self.key = Some(key);
        if sealed_now > 0 {
            self.connection.execute_batch(
                "PRAGMA wal_checkpoint(TRUNCATE); VACUUM; PRAGMA wal_checkpoint(TRUNCATE);",
            )?;
        }
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an Olm account was saved (a registration got as far as making keys).
    pub fn has_olm_account(&self) -> Result<bool> {
        let found: Option<i64> = self
            .connection
            .query_row("SELECT 1 FROM olm_account WHERE singleton = 1", [], |row| {
                row.get(0)
            })
            .optional()?;
        Ok(found.is_some())
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
        Ok(Self {
            connection,
            path: path.to_owned(),
            key: None,
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

    /// Seals every pickle still in plaintext, in one transaction; returns how many.
    fn seal_plaintext(&mut self, key: &DeviceKey) -> Result<usize> {
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut sealed = 0;
        let account: Option<String> = transaction
            .query_row(
                "SELECT pickle FROM olm_account WHERE singleton = 1",
                [],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(account) = account.filter(|account| !is_sealed(account)) {
            transaction.execute(
                "UPDATE olm_account SET pickle = ?1 WHERE singleton = 1",
                [key.seal(SEALED_ACCOUNT, &account)?],
            )?;
            sealed += 1;
        }
        let sessions: Vec<(i64, i64, i64, String)> = {
            let mut statement = transaction.prepare(
                "SELECT account, device, position, pickle FROM olm_sessions
                 WHERE pickle NOT LIKE 'sealed1:%'",
            )?;
            let rows = statement.query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (account, device, position, pickle) in sessions {
            let what = sealed_sessions(address(account, device));
            transaction.execute(
                "UPDATE olm_sessions SET pickle = ?1 WHERE account = ?2 AND device = ?3
                 AND position = ?4",
                params![key.seal(&what, &pickle)?, account, device, position],
            )?;
            sealed += 1;
        }
        transaction.commit()?;
        Ok(sealed)
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

    /// The registered identity, if any.
    pub fn identity(&self) -> Result<Option<Identity>> {
        self.connection
            .query_row(
                "SELECT account, device, name, region, epoch FROM identity WHERE singleton = 1",
                [],
                |row| {
                    Ok(Identity {
                        account: AccountId(to_u64(row.get(0)?)),
                        device: DeviceId(to_u32(row.get(1)?)),
                        name: row.get(2)?,
                        region: to_u32(row.get(3)?),
                        epoch: to_u64(row.get(4)?),
                    })
                },
            )
            .optional()
            .map_err(Into::into)
    }

    /// The remembered deployment settings, if all are set.
    pub fn settings(&self) -> Result<Option<Settings>> {
        let locator = self.setting("locator")?;
        let bind_ip = self.setting("bind_ip")?;
        let ca_path = self.setting("ca_path")?;
        let (Some(locator), Some(bind_ip), Some(ca_path)) = (locator, bind_ip, ca_path) else {
            return Ok(None);
        };
        Ok(Some(Settings {
            locator: locator
                .parse()
                .map_err(|_| ClientError::Corrupt(format!("locator {locator}")))?,
            bind_ip: bind_ip
                .parse()
                .map_err(|_| ClientError::Corrupt(format!("bind ip {bind_ip}")))?,
            ca_path: PathBuf::from(ca_path),
        }))
    }

    /// The Olm account and sessions, if an account was saved (after [`Store::unlock`]).
    pub fn load_crypto(&self) -> Result<Option<Crypto>> {
        load_crypto(&self.connection, self.key.as_ref())
    }

    /// Whether an Olm session with `device` is stored.
    pub fn has_session(&self, device: DeviceAddress) -> Result<bool> {
        let found: Option<i64> = self
            .connection
            .query_row(
                "SELECT 1 FROM olm_sessions WHERE account = ?1 AND device = ?2 LIMIT 1",
                params![to_i64(device.account.0), device.device.0],
                |row| row.get(0),
            )
            .optional()?;
        Ok(found.is_some())
    }

    /// A contact by name.
    pub fn contact_by_name(&self, name: &str) -> Result<Option<Contact>> {
        self.connection
            .query_row(
                "SELECT account, name, region FROM contacts WHERE name = ?1",
                [name],
                contact_row,
            )
            .optional()
            .map_err(Into::into)
    }

    /// A contact by account.
    pub fn contact_by_account(&self, account: AccountId) -> Result<Option<Contact>> {
        self.connection
            .query_row(
                "SELECT account, name, region FROM contacts WHERE account = ?1",
                [to_i64(account.0)],
                contact_row,
            )
            .optional()
            .map_err(Into::into)
    }

    /// The devices of `account` this device knows of.
    pub fn known_devices(&self, account: AccountId) -> Result<Vec<KnownDevice>> {
        known_devices(&self.connection, account)
    }

    /// The trusted identity key of a device, if known.
    pub fn identity_key(&self, device: DeviceAddress) -> Result<Option<[u8; 32]>> {
        Ok(self
            .known_devices(device.account)?
            .into_iter()
            .find(|known| known.address == device)
            .and_then(|known| known.identity_key))
    }

    /// Every outbox entry, by chat and sender_seq.
    pub fn outbox(&self) -> Result<Vec<OutboxRow>> {
        outbox_rows(&self.connection)
    }

    /// One outbox entry.
    pub fn outbox_entry(&self, client_message_id: ClientMessageId) -> Result<Option<OutboxRow>> {
        let row = self
            .connection
            .query_row(
                "SELECT chat, sender_seq, client_message_id, peer, content, envelope FROM outbox
                 WHERE client_message_id = ?1",
                [client_message_id.0.as_slice()],
                outbox_row,
            )
            .optional()?;
        row.transpose()
    }

    /// A message by its sender and id.
    pub fn message(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
    ) -> Result<Option<StoredMessage>> {
        let row = self
            .connection
            .query_row(
                &format!(
                    "{MESSAGE_COLUMNS} WHERE sender_account = ?1 AND sender_device = ?2
                     AND client_message_id = ?3"
                ),
                params![
                    to_i64(sender.account.0),
                    sender.device.0,
                    client_message_id.0.as_slice()
                ],
                message_row,
            )
            .optional()?;
        row.transpose()
    }

    /// The chat with `peer` in order: by the home region's chat sequence, messages not yet
    /// sequenced (pending) last, ties by local insertion.
    pub fn history(&self, peer: AccountId) -> Result<Vec<StoredMessage>> {
        let mut statement = self.connection.prepare(&format!(
            "{MESSAGE_COLUMNS} WHERE peer = ?1 ORDER BY chat_seq IS NULL, chat_seq, id"
        ))?;
        let rows = statement.query_map([to_i64(peer.0)], message_row)?;
        let mut messages = Vec::new();
        for row in rows {
            messages.push(row??);
        }
        Ok(messages)
    }

    /// Incoming decrypted messages from `peer` not yet read here, oldest first.
    pub fn unread_from(&self, peer: AccountId) -> Result<Vec<StoredMessage>> {
        Ok(self
            .history(peer)?
            .into_iter()
            .filter(|message| {
                !message.outgoing && message.read_at_ms.is_none() && message.text.is_some()
            })
            .collect())
    }

    /// The cursor: the highest queue sequence processed and committed.
    pub fn queue_cursor(&self) -> Result<u64> {
        let value: Option<i64> = self
            .connection
            .query_row(
                "SELECT after_queue_seq FROM queue_cursor WHERE singleton = 1",
                [],
                |row| row.get(0),
            )
            .optional()?;
        Ok(value.map_or(0, to_u64))
    }

    /// The `device_seq` the next envelope of this device will get (from 1).
    pub fn next_device_seq(&self) -> Result<u64> {
        next_device_seq(self.setting(NEXT_DEVICE_SEQ_KEY)?)
    }

    /// Why the relay refused this device as rolled back, if it did (then the data directory
    /// can no longer send or receive).
    pub fn rolled_back(&self) -> Result<Option<String>> {
        self.setting(ROLLED_BACK_KEY)
    }

    /// Queue entries processed and committed but not yet acknowledged to the server.
    pub fn pending_acks(&self) -> Result<Vec<u64>> {
        let mut statement = self
            .connection
            .prepare("SELECT queue_seq FROM pending_acks ORDER BY queue_seq")?;
        let rows = statement.query_map([], |row| row.get::<_, i64>(0))?;
        let mut seqs = Vec::new();
        for row in rows {
            seqs.push(to_u64(row?));
        }
        Ok(seqs)
    }

    /// Whether an envelope from `sender` with this id was already processed.
    pub fn is_seen(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
    ) -> Result<bool> {
        let found: Option<i64> = self
            .connection
            .query_row(
                "SELECT 1 FROM seen WHERE sender_account = ?1 AND sender_device = ?2
                 AND client_message_id = ?3",
                params![
                    to_i64(sender.account.0),
                    sender.device.0,
                    client_message_id.0.as_slice()
                ],
                |row| row.get(0),
            )
            .optional()?;
        Ok(found.is_some())
    }

    /// The edge the last connection reached, tried when the locator does not answer. A value
    /// that does not parse is ignored: it is only a hint.
    pub fn last_edge(&self) -> Result<Option<SocketAddr>> {
        Ok(self
            .setting(LAST_EDGE_SETTING)?
            .and_then(|edge| edge.parse().ok()))
    }

    /// Every draft, oldest first.
    pub fn drafts(&self) -> Result<Vec<Draft>> {
        let mut statement = self.connection.prepare(
            "SELECT client_message_id, peer_name, text, sent_at_ms FROM drafts ORDER BY id",
        )?;
        let rows = statement.query_map([], draft_row)?;
        let mut drafts = Vec::new();
        for row in rows {
            drafts.push(row??);
        }
        Ok(drafts)
    }

    /// One draft, if it still waits.
    pub fn draft(&self, client_message_id: ClientMessageId) -> Result<Option<Draft>> {
        let row = self
            .connection
            .query_row(
                "SELECT client_message_id, peer_name, text, sent_at_ms FROM drafts
                 WHERE client_message_id = ?1",
                [client_message_id.0.as_slice()],
                draft_row,
            )
            .optional()?;
        row.transpose()
    }

    fn setting(&self, key: &str) -> Result<Option<String>> {
        self.connection
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(Into::into)
    }
}

/// The changes of one transaction (see [`Store::write`]).
#[derive(Debug)]
pub struct Writer<'a> {
    transaction: &'a Transaction<'a>,
    key: Option<&'a DeviceKey>,
}

impl Writer<'_> {
    /// Saves the registered identity.
    pub fn set_identity(&self, identity: &Identity) -> Result<()> {
        self.transaction.execute(
            "INSERT OR REPLACE INTO identity (singleton, account, device, name, region, epoch)
             VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            params![
                to_i64(identity.account.0),
                identity.device.0,
                identity.name,
                identity.region,
                to_i64(identity.epoch)
            ],
        )?;
        Ok(())
    }

    /// Saves the deployment settings.
    pub fn set_settings(&self, settings: &Settings) -> Result<()> {
        let ca_path = settings
            .ca_path
            .to_str()
            .ok_or_else(|| ClientError::Invalid("the CA path is not valid UTF-8".into()))?;
        for (key, value) in [
            ("locator", settings.locator.to_string()),
            ("bind_ip", settings.bind_ip.to_string()),
            ("ca_path", ca_path.to_owned()),
        ] {
            self.transaction.execute(
                "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
                [key, &value],
            )?;
        }
        Ok(())
    }

    /// Remembers the edge a connection reached.
    pub fn set_last_edge(&self, edge: SocketAddr) -> Result<()> {
        self.transaction.execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
            [LAST_EDGE_SETTING, &edge.to_string()],
        )?;
        Ok(())
    }

    /// Keeps a message for an account known only by name.
    pub fn insert_draft(&self, draft: &Draft) -> Result<()> {
        self.transaction.execute(
            "INSERT INTO drafts (client_message_id, peer_name, text, sent_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                draft.client_message_id.0.as_slice(),
                draft.peer_name,
                draft.text,
                to_i64(draft.sent_at_ms)
            ],
        )?;
        Ok(())
    }

    /// Removes a draft (queued or given up); `false` if it was gone already (another process
    /// took it).
    pub fn remove_draft(&self, client_message_id: ClientMessageId) -> Result<bool> {
        let removed = self.transaction.execute(
            "DELETE FROM drafts WHERE client_message_id = ?1",
            [client_message_id.0.as_slice()],
        )?;
        Ok(removed == 1)
    }

    /// Every outbox entry as committed, read under this transaction's write lock.
    pub fn outbox(&self) -> Result<Vec<OutboxRow>> {
        outbox_rows(self.transaction)
    }

    /// Takes the next `device_seq` (from 1) for an envelope and advances the counter: the number
    /// is durable with the envelope before the envelope can leave, so the counter is always
    /// above every number the region has seen from this device.
    pub fn take_device_seq(&self) -> Result<u64> {
        let seq = next_device_seq(self.setting(NEXT_DEVICE_SEQ_KEY)?)?;
        self.set_setting(NEXT_DEVICE_SEQ_KEY, &(seq + 1).to_string())?;
        Ok(seq)
    }

    /// When the fallback key was made and whether the previous one is kept.
    pub fn fallback_times(&self) -> Result<FallbackTimes> {
        let made_at_ms =
            match self.setting(FALLBACK_MADE_AT_KEY)? {
                Some(value) => Some(value.parse().map_err(|_| {
                    ClientError::Corrupt(format!("{FALLBACK_MADE_AT_KEY} {value:?}"))
                })?),
                None => None,
            };
        let previous_kept = match self.setting(FALLBACK_PREVIOUS_KEPT_KEY)?.as_deref() {
            None | Some("0") => false,
            Some("1") => true,
            Some(value) => {
                return Err(ClientError::Corrupt(format!(
                    "{FALLBACK_PREVIOUS_KEPT_KEY} {value:?}"
                )));
            }
        };
        Ok(FallbackTimes {
            made_at_ms,
            previous_kept,
        })
    }

    /// Saves the fallback key times (with the Olm account they describe).
    pub fn set_fallback_times(&self, times: &FallbackTimes) -> Result<()> {
        match times.made_at_ms {
            Some(made_at_ms) => self.set_setting(FALLBACK_MADE_AT_KEY, &made_at_ms.to_string())?,
            None => self.clear_setting(FALLBACK_MADE_AT_KEY)?,
        }
        let kept = if times.previous_kept { "1" } else { "0" };
        self.set_setting(FALLBACK_PREVIOUS_KEPT_KEY, kept)
    }

    /// Records that the relay refused this device because its state went back.
    pub fn set_rolled_back(&self, reason: &str) -> Result<()> {
        self.set_setting(ROLLED_BACK_KEY, reason)
    }

    /// Saves changed Olm pickles, sealed under the device key.
    pub fn save_crypto(&self, changes: &CryptoChanges) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let key = unlocked(self.key)?;
        if let Some(account) = &changes.account {
            self.transaction.execute(
                "INSERT OR REPLACE INTO olm_account (singleton, pickle) VALUES (1, ?1)",
                [key.seal(SEALED_ACCOUNT, account)?],
            )?;
        }
        for (device, sessions) in &changes.sessions {
            let what = sealed_sessions(*device);
            let account = to_i64(device.account.0);
            self.transaction.execute(
                "DELETE FROM olm_sessions WHERE account = ?1 AND device = ?2",
                params![account, device.device.0],
            )?;
            for (position, (session_id, pickle)) in sessions.iter().enumerate() {
                self.transaction.execute(
                    "INSERT INTO olm_sessions (account, device, position, session_id, pickle)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        account,
                        device.device.0,
                        position as i64,
                        session_id,
                        key.seal(&what, pickle)?
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Saves a contact (a name may move to another account only if the directory says so).
    pub fn upsert_contact(&self, contact: &Contact) -> Result<()> {
        self.transaction.execute(
            "DELETE FROM contacts WHERE name = ?1 AND account != ?2",
            params![contact.name, to_i64(contact.account.0)],
        )?;
        self.transaction.execute(
            "INSERT INTO contacts (account, name, region) VALUES (?1, ?2, ?3)
             ON CONFLICT (account) DO UPDATE SET name = excluded.name, region = excluded.region",
            params![to_i64(contact.account.0), contact.name, contact.region],
        )?;
        Ok(())
    }

    /// Records a device: trusts its identity key on first use and refuses a different one later.
    pub fn trust_device(
        &self,
        device: DeviceAddress,
        identity_key: &[u8; 32],
        current: bool,
    ) -> Result<()> {
        let known: Option<Option<Vec<u8>>> = self
            .transaction
            .query_row(
                "SELECT identity_key FROM devices WHERE account = ?1 AND device = ?2",
                params![to_i64(device.account.0), device.device.0],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(Some(known)) = &known
            && known.as_slice() != identity_key
        {
            return Err(ClientError::IdentityChanged(device));
        }
        self.transaction.execute(
            "INSERT INTO devices (account, device, identity_key, current) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (account, device) DO UPDATE SET identity_key = excluded.identity_key,
             current = MAX(current, excluded.current)",
            params![
                to_i64(device.account.0),
                device.device.0,
                identity_key.as_slice(),
                current
            ],
        )?;
        Ok(())
    }

    /// The Olm account and sessions as committed, read under this transaction's write lock; the
    /// caller saves what it changes with [`Writer::save_crypto`] in the same transaction.
    pub fn load_crypto(&self) -> Result<Crypto> {
        load_crypto(self.transaction, self.key)?
            .ok_or_else(|| ClientError::Corrupt("the Olm account is missing".into()))
    }

    /// The devices of `account` this device knows of (read inside the transaction).
    pub fn known_devices(&self, account: AccountId) -> Result<Vec<KnownDevice>> {
        known_devices(self.transaction, account)
    }

    /// The trusted identity key of a device, if known (read inside the transaction).
    pub fn identity_key(&self, device: DeviceAddress) -> Result<Option<[u8; 32]>> {
        let key: Option<Option<Vec<u8>>> = self
            .transaction
            .query_row(
                "SELECT identity_key FROM devices WHERE account = ?1 AND device = ?2",
                params![to_i64(device.account.0), device.device.0],
                |row| row.get(0),
            )
            .optional()?;
        match key.flatten() {
            None => Ok(None),
            Some(bytes) => <[u8; 32]>::try_from(bytes.as_slice())
                .map(Some)
                .map_err(|_| ClientError::Corrupt("identity key length".into())),
        }
    }

    /// The other account of the chat of a message, if the message is known.
    pub fn message_peer(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
    ) -> Result<Option<AccountId>> {
        let peer: Option<i64> = self
            .transaction
            .query_row(
                "SELECT peer FROM messages WHERE sender_account = ?1 AND sender_device = ?2
                 AND client_message_id = ?3",
                params![
                    to_i64(sender.account.0),
                    sender.device.0,
                    client_message_id.0.as_slice()
                ],
                |row| row.get(0),
            )
            .optional()?;
        Ok(peer.map(|peer| AccountId(to_u64(peer))))
    }

    /// Sets the current devices of `account` to exactly `devices` (others stay known, not current).
    pub fn set_current_devices(&self, account: AccountId, devices: &[DeviceId]) -> Result<()> {
        let account = to_i64(account.0);
        self.transaction.execute(
            "UPDATE devices SET current = 0 WHERE account = ?1",
            [account],
        )?;
        for device in devices {
            self.transaction.execute(
                "INSERT INTO devices (account, device, identity_key, current) VALUES (?1, ?2, NULL, 1)
                 ON CONFLICT (account, device) DO UPDATE SET current = 1",
                params![account, device.0],
            )?;
        }
        Ok(())
    }

    /// Takes the chat's next sender_seq (from 1) and advances the counter.
    pub fn take_sender_seq(&self, chat: ChatId) -> Result<u64> {
        let next: Option<i64> = self
            .transaction
            .query_row(
                "SELECT next_sender_seq FROM chat_counters WHERE chat = ?1",
                [chat.0.as_slice()],
                |row| row.get(0),
            )
            .optional()?;
        let seq = next.map_or(1, to_u64);
        self.set_next_sender_seq(chat, seq + 1)?;
        Ok(seq)
    }

    /// Sets the chat's next sender_seq.
    pub fn set_next_sender_seq(&self, chat: ChatId, next: u64) -> Result<()> {
        self.transaction.execute(
            "INSERT OR REPLACE INTO chat_counters (chat, next_sender_seq) VALUES (?1, ?2)",
            params![chat.0.as_slice(), to_i64(next)],
        )?;
        Ok(())
    }

    /// Inserts a message; `false` when one with the same sender and id exists already.
    pub fn insert_message(&self, message: &NewMessage<'_>) -> Result<bool> {
        let inserted = self.transaction.execute(
            "INSERT OR IGNORE INTO messages (chat, peer, outgoing, sender_account, sender_device,
             client_message_id, sender_seq, chat_seq, text, sent_at_ms, server_time_ms, tick,
             undecryptable) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                message.chat.0.as_slice(),
                to_i64(message.peer.0),
                message.outgoing,
                to_i64(message.sender.account.0),
                message.sender.device.0,
                message.client_message_id.0.as_slice(),
                to_i64(message.sender_seq),
                message.chat_seq.map(to_i64),
                message.text,
                to_i64(message.sent_at_ms),
                message.server_time_ms.map(to_i64),
                message.tick as i64,
                message.undecryptable,
            ],
        )?;
        Ok(inserted == 1)
    }

    /// Adds an outbox entry.
    pub fn insert_outbox(&self, row: &OutboxRow, created_at_ms: u64) -> Result<()> {
        self.transaction.execute(
            "INSERT INTO outbox (chat, sender_seq, client_message_id, peer, content, envelope,
             created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                row.chat.0.as_slice(),
                to_i64(row.sender_seq),
                row.client_message_id.0.as_slice(),
                to_i64(row.peer.0),
                row.content,
                row.envelope,
                to_i64(created_at_ms)
            ],
        )?;
        Ok(())
    }

    /// Stores the built envelope of an outbox entry.
    pub fn set_envelope(&self, client_message_id: ClientMessageId, envelope: &[u8]) -> Result<()> {
        self.transaction.execute(
            "UPDATE outbox SET envelope = ?1 WHERE client_message_id = ?2",
            params![envelope, client_message_id.0.as_slice()],
        )?;
        Ok(())
    }

    /// Renumbers outbox entries of a chat (rewriting their stored envelopes and messages).
    pub fn renumber(
        &self,
        chat: ChatId,
        sender: DeviceAddress,
        moves: &[(ClientMessageId, u64, u64)],
        next_sender_seq: u64,
    ) -> Result<()> {
        // Two steps through negative numbers, so no intermediate state collides on the key.
        for (id, _, new) in moves {
            self.transaction.execute(
                "UPDATE outbox SET sender_seq = ?1 WHERE client_message_id = ?2",
                params![-to_i64(*new), id.0.as_slice()],
            )?;
            let envelope: Option<Vec<u8>> = self
                .transaction
                .query_row(
                    "SELECT envelope FROM outbox WHERE client_message_id = ?1",
                    [id.0.as_slice()],
                    |row| row.get(0),
                )
                .optional()?
                .flatten();
            if let Some(bytes) = envelope {
                let mut envelope = Envelope::decode(bytes.as_slice())
                    .map_err(|error| ClientError::Corrupt(format!("stored envelope: {error}")))?;
                envelope.sender_seq = *new;
                self.set_envelope(*id, &envelope.encode_to_vec())?;
            }
            self.transaction.execute(
                "UPDATE messages SET sender_seq = ?1 WHERE sender_account = ?2 AND sender_device = ?3
                 AND client_message_id = ?4",
                params![to_i64(*new), to_i64(sender.account.0), sender.device.0, id.0.as_slice()],
            )?;
        }
        self.transaction.execute(
            "UPDATE outbox SET sender_seq = -sender_seq WHERE chat = ?1 AND sender_seq < 0",
            [chat.0.as_slice()],
        )?;
        self.set_next_sender_seq(chat, next_sender_seq)
    }

    /// Removes an outbox entry.
    pub fn remove_outbox(&self, client_message_id: ClientMessageId) -> Result<()> {
        self.transaction.execute(
            "DELETE FROM outbox WHERE client_message_id = ?1",
            [client_message_id.0.as_slice()],
        )?;
        Ok(())
    }

    /// Records the region's sequence and time of a sent message.
    pub fn set_sequenced(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        chat_seq: Option<u64>,
        server_time_ms: Option<u64>,
    ) -> Result<()> {
        self.transaction.execute(
            "UPDATE messages SET chat_seq = COALESCE(?1, chat_seq),
             server_time_ms = COALESCE(?2, server_time_ms)
             WHERE sender_account = ?3 AND sender_device = ?4 AND client_message_id = ?5",
            params![
                chat_seq.map(to_i64),
                server_time_ms.map(to_i64),
                to_i64(sender.account.0),
                sender.device.0,
                client_message_id.0.as_slice()
            ],
        )?;
        Ok(())
    }

    /// Moves a message's tick forward; `true` when it moved (never backwards).
    pub fn advance_tick(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        tick: Tick,
    ) -> Result<bool> {
        // The simulator may plant the bug of forgetting that a tick only moves forward.
        let sql = if relay_planted::is_planted(PlantedBug::ReceiptMovesBackwards) {
            "UPDATE messages SET tick = ?1 WHERE sender_account = ?2 AND sender_device = ?3
             AND client_message_id = ?4 AND tick != ?1"
        } else {
            "UPDATE messages SET tick = ?1 WHERE sender_account = ?2 AND sender_device = ?3
             AND client_message_id = ?4 AND tick < ?1"
        };
        let changed = self.transaction.execute(
            sql,
            params![
                tick as i64,
                to_i64(sender.account.0),
                sender.device.0,
                client_message_id.0.as_slice()
            ],
        )?;
        Ok(changed == 1)
    }

    /// Marks outgoing messages of this account in the chat with `peer` read by the peer; returns
    /// the (sender, id) of each message whose tick moved.
    pub fn mark_read_by_peer(
        &self,
        peer: AccountId,
        own_account: AccountId,
        client_message_ids: &[ClientMessageId],
    ) -> Result<Vec<(DeviceAddress, ClientMessageId)>> {
        let mut moved = Vec::new();
        for id in client_message_ids {
            let senders: Vec<i64> = {
                let mut statement = self.transaction.prepare(
                    "SELECT sender_device FROM messages WHERE peer = ?1 AND outgoing = 1
                     AND sender_account = ?2 AND client_message_id = ?3",
                )?;
                let rows = statement.query_map(
                    params![to_i64(peer.0), to_i64(own_account.0), id.0.as_slice()],
                    |row| row.get(0),
                )?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for device in senders {
                let sender = DeviceAddress {
                    account: own_account,
                    device: DeviceId(to_u32(device)),
                };
                if self.advance_tick(sender, *id, Tick::Read)? {
                    moved.push((sender, *id));
                }
            }
        }
        Ok(moved)
    }

    /// Marks incoming messages from `peer` read here; returns how many changed.
    pub fn mark_read_locally(
        &self,
        peer: AccountId,
        client_message_ids: &[ClientMessageId],
        at_ms: u64,
    ) -> Result<usize> {
        let mut changed = 0;
        for id in client_message_ids {
            changed += self.transaction.execute(
                "UPDATE messages SET read_at_ms = ?1 WHERE peer = ?2 AND outgoing = 0
                 AND client_message_id = ?3 AND read_at_ms IS NULL",
                params![to_i64(at_ms), to_i64(peer.0), id.0.as_slice()],
            )?;
        }
        Ok(changed)
    }

    /// Marks a message given up, with the reason.
    pub fn mark_failed(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        reason: &str,
    ) -> Result<()> {
        self.transaction.execute(
            "UPDATE messages SET failed = ?1 WHERE sender_account = ?2 AND sender_device = ?3
             AND client_message_id = ?4",
            params![
                reason,
                to_i64(sender.account.0),
                sender.device.0,
                client_message_id.0.as_slice()
            ],
        )?;
        Ok(())
    }

    /// Records a server-visible receipt for one recipient device (its state only moves forward);
    /// `true` when it is new or moved.
    pub fn record_receipt(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        recipient: DeviceAddress,
        state: i32,
        at_ms: u64,
    ) -> Result<bool> {
        let changed = self.transaction.execute(
            "INSERT INTO receipts (sender_account, sender_device, client_message_id,
             recipient_account, recipient_device, state, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT DO UPDATE SET state = excluded.state, at_ms = excluded.at_ms
             WHERE excluded.state > receipts.state",
            params![
                to_i64(sender.account.0),
                sender.device.0,
                client_message_id.0.as_slice(),
                to_i64(recipient.account.0),
                recipient.device.0,
                state,
                to_i64(at_ms)
            ],
        )?;
        Ok(changed == 1)
    }

    /// Counts one more peer device whose copy of a message expired undelivered.
    pub fn add_expired_device(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
    ) -> Result<()> {
        self.transaction.execute(
            "UPDATE messages SET expired_devices = expired_devices + 1 WHERE sender_account = ?1
             AND sender_device = ?2 AND client_message_id = ?3",
            params![
                to_i64(sender.account.0),
                sender.device.0,
                client_message_id.0.as_slice()
            ],
        )?;
        Ok(())
    }

    /// Remembers that an envelope was processed; `false` if it already was.
    pub fn mark_seen(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        now_ms: u64,
    ) -> Result<bool> {
        let inserted = self.transaction.execute(
            "INSERT OR IGNORE INTO seen (sender_account, sender_device, client_message_id, seen_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![to_i64(sender.account.0), sender.device.0, client_message_id.0.as_slice(), to_i64(now_ms)],
        )?;
        Ok(inserted == 1)
    }

    /// Forgets seen ids older than [`SEEN_RETENTION_MS`].
    pub fn prune_seen(&self, now_ms: u64) -> Result<usize> {
        Ok(self.transaction.execute(
            "DELETE FROM seen WHERE seen_at_ms < ?1",
            [to_i64(now_ms.saturating_sub(SEEN_RETENTION_MS))],
        )?)
    }

    /// Advances the queue cursor (never backwards) and owes acks for the processed entries.
    ///
    /// **Why an honest device's cursor is never behind an entry it acknowledged.** This is the
    /// only place acks are owed, and it raises the cursor to the highest entry it owes, in the
    /// same transaction, before anything is acknowledged: an ack leaves only from
    /// [`Store::pending_acks`], read after that transaction committed (durably: WAL with
    /// `synchronous=FULL`), and the cursor never moves back. So every entry the region has
    /// seen acknowledged is at or below the durable cursor, and the region may treat a cursor
    /// below its highest acknowledged entry as a device whose state went back (a data
    /// directory restored from an older copy). Another process on the same data directory can
    /// acknowledge entries after this one read the cursor; it raised the durable cursor first,
    /// so the caller tells that race from a rollback by reading the cursor again.
    pub fn processed_queue_entries(&self, queue_seqs: &[u64]) -> Result<()> {
        let Some(highest) = queue_seqs.iter().max() else {
            return Ok(());
        };
        self.transaction.execute(
            "INSERT INTO queue_cursor (singleton, after_queue_seq) VALUES (1, ?1)
             ON CONFLICT (singleton) DO UPDATE SET after_queue_seq = MAX(after_queue_seq, excluded.after_queue_seq)",
            [to_i64(*highest)],
        )?;
        for seq in queue_seqs {
            self.transaction.execute(
                "INSERT OR IGNORE INTO pending_acks (queue_seq) VALUES (?1)",
                [to_i64(*seq)],
            )?;
        }
        Ok(())
    }

    /// Forgets acks the server confirmed.
    pub fn acked(&self, queue_seqs: &[u64]) -> Result<()> {
        for seq in queue_seqs {
            self.transaction.execute(
                "DELETE FROM pending_acks WHERE queue_seq = ?1",
                [to_i64(*seq)],
            )?;
        }
        Ok(())
    }

    fn setting(&self, key: &str) -> Result<Option<String>> {
        self.transaction
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(Into::into)
    }

    fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.transaction.execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
            [key, value],
        )?;
        Ok(())
    }

    fn clear_setting(&self, key: &str) -> Result<()> {
        self.transaction
            .execute("DELETE FROM settings WHERE key = ?1", [key])?;
        Ok(())
    }
}

const MESSAGE_COLUMNS: &str = "SELECT id, chat, peer, outgoing, sender_account, sender_device,
    client_message_id, sender_seq, chat_seq, text, sent_at_ms, server_time_ms, tick, read_at_ms,
    undecryptable, failed, expired_devices FROM messages";

fn message_row(row: &Row<'_>) -> rusqlite::Result<Result<StoredMessage>> {
    let chat: Vec<u8> = row.get(1)?;
    let client_message_id: Vec<u8> = row.get(6)?;
    let tick: i64 = row.get(12)?;
    let parsed = (|| {
        Ok(StoredMessage {
            id: row.get(0)?,
            chat: ChatId::from_bytes(&chat)
                .map_err(|error| ClientError::Corrupt(error.to_string()))?,
            peer: AccountId(to_u64(row.get(2)?)),
            outgoing: row.get(3)?,
            sender: address(row.get(4)?, row.get(5)?),
            client_message_id: ClientMessageId::from_bytes(&client_message_id)
                .map_err(|error| ClientError::Corrupt(error.to_string()))?,
            sender_seq: to_u64(row.get(7)?),
            chat_seq: row.get::<_, Option<i64>>(8)?.map(to_u64),
            text: row.get(9)?,
            sent_at_ms: to_u64(row.get(10)?),
            server_time_ms: row.get::<_, Option<i64>>(11)?.map(to_u64),
            tick: Tick::from_i64(tick)?,
            read_at_ms: row.get::<_, Option<i64>>(13)?.map(to_u64),
            undecryptable: row.get(14)?,
            failed: row.get(15)?,
            expired_devices: to_u32(row.get(16)?),
        })
    })();
    Ok(parsed)
}

fn outbox_rows(connection: &Connection) -> Result<Vec<OutboxRow>> {
    let mut statement = connection.prepare(
        "SELECT chat, sender_seq, client_message_id, peer, content, envelope FROM outbox
         ORDER BY chat, sender_seq",
    )?;
    let rows = statement.query_map([], outbox_row)?;
    let mut entries = Vec::new();
    for row in rows {
        entries.push(row??);
    }
    Ok(entries)
}

fn outbox_row(row: &Row<'_>) -> rusqlite::Result<Result<OutboxRow>> {
    let chat: Vec<u8> = row.get(0)?;
    let client_message_id: Vec<u8> = row.get(2)?;
    let parsed = (|| {
        Ok(OutboxRow {
            chat: ChatId::from_bytes(&chat)
                .map_err(|error| ClientError::Corrupt(error.to_string()))?,
            sender_seq: to_u64(row.get(1)?),
            client_message_id: ClientMessageId::from_bytes(&client_message_id)
                .map_err(|error| ClientError::Corrupt(error.to_string()))?,
            peer: AccountId(to_u64(row.get(3)?)),
            content: row.get(4)?,
            envelope: row.get(5)?,
        })
    })();
    Ok(parsed)
}

fn draft_row(row: &Row<'_>) -> rusqlite::Result<Result<Draft>> {
    let client_message_id: Vec<u8> = row.get(0)?;
    let parsed = (|| {
        Ok(Draft {
            client_message_id: ClientMessageId::from_bytes(&client_message_id)
                .map_err(|error| ClientError::Corrupt(error.to_string()))?,
            peer_name: row.get(1)?,
            text: row.get(2)?,
            sent_at_ms: to_u64(row.get(3)?),
        })
    })();
    Ok(parsed)
}

fn contact_row(row: &Row<'_>) -> rusqlite::Result<Contact> {
    Ok(Contact {
        account: AccountId(to_u64(row.get(0)?)),
        name: row.get(1)?,
        region: to_u32(row.get(2)?),
    })
}

fn load_crypto(connection: &Connection, key: Option<&DeviceKey>) -> Result<Option<Crypto>> {
    let account: Option<String> = connection
        .query_row(
            "SELECT pickle FROM olm_account WHERE singleton = 1",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let Some(account) = account else {
        return Ok(None);
    };
    let key = unlocked(key)?;
    let account = key.open(SEALED_ACCOUNT, &account)?;
    let mut statement = connection.prepare(
        "SELECT account, device, pickle FROM olm_sessions ORDER BY account, device, position",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((address(row.get(0)?, row.get(1)?), row.get::<_, String>(2)?))
    })?;
    let mut sessions: Vec<(DeviceAddress, Vec<String>)> = Vec::new();
    for row in rows {
        let (device, pickle) = row?;
        let pickle = key.open(&sealed_sessions(device), &pickle)?;
        match sessions.last_mut() {
            Some((last, list)) if *last == device => list.push(pickle),
            _ => sessions.push((device, vec![pickle])),
        }
    }
    Crypto::from_pickles(&account, sessions).map(Some)
}

fn unlocked(key: Option<&DeviceKey>) -> Result<&DeviceKey> {
    key.ok_or_else(|| {
        ClientError::DeviceKey("the store was opened without the device key (a bug)".into())
    })
}

/// What the sealed sessions with `device` are bound to.
fn sealed_sessions(device: DeviceAddress) -> String {
    format!("olm sessions with {device}")
}

fn damaged(path: &Path, problem: &str) -> ClientError {
    ClientError::Damaged {
        database: path.to_owned(),
        problem: problem.to_owned(),
    }
}

fn known_devices(connection: &Connection, account: AccountId) -> Result<Vec<KnownDevice>> {
    let mut statement = connection.prepare(
        "SELECT device, identity_key, current FROM devices WHERE account = ?1 ORDER BY device",
    )?;
    let rows = statement.query_map([to_i64(account.0)], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, Option<Vec<u8>>>(1)?,
            row.get::<_, bool>(2)?,
        ))
    })?;
    let mut devices = Vec::new();
    for row in rows {
        let (device, identity_key, current) = row?;
        let identity_key = match identity_key {
            Some(bytes) => Some(
                <[u8; 32]>::try_from(bytes.as_slice())
                    .map_err(|_| ClientError::Corrupt("identity key length".into()))?,
            ),
            None => None,
        };
        devices.push(KnownDevice {
            address: DeviceAddress {
                account,
                device: DeviceId(to_u32(device)),
            },
            identity_key,
            current,
        });
    }
    Ok(devices)
}

fn next_device_seq(stored: Option<String>) -> Result<u64> {
    match stored {
        None => Ok(1),
        Some(value) => value
            .parse::<u64>()
            .ok()
            .filter(|&next| next >= 1)
            .ok_or_else(|| ClientError::Corrupt(format!("{NEXT_DEVICE_SEQ_KEY} {value:?}"))),
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
mod tests {
    use super::*;

    fn device(account: u64, device: u32) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(account),
            device: DeviceId(device),
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::create(&dir.path().join("relay.db")).expect("create");
        store
            .unlock(&dir.path().join("device.key"))
            .expect("unlock");
        (dir, store)
    }

    #[test]
    fn the_device_counters_and_the_rolled_back_mark_persist() {
        let (dir, mut store) = open();
        assert_eq!(store.next_device_seq().expect("read"), 1);
        assert_eq!(store.rolled_back().expect("read"), None);
        let taken = store
            .write(|w| Ok([w.take_device_seq()?, w.take_device_seq()?]))
            .expect("take");
        assert_eq!(taken, [1, 2]);
        // A transaction that fails takes nothing: the number is durable only with what used it.
        let failed: Result<u64> = store.write(|w| {
            w.take_device_seq()?;
            Err(ClientError::Invalid(
                "the envelope could not be built".into(),
            ))
        });
        assert!(failed.is_err());
        assert_eq!(store.next_device_seq().expect("read"), 3);

        let times = FallbackTimes {
            made_at_ms: Some(1_234),
            previous_kept: true,
        };
        store
            .write(|w| {
                assert_eq!(w.fallback_times()?, FallbackTimes::default());
                w.set_fallback_times(&times)?;
                w.set_rolled_back("device 1/1 is behind")
            })
            .expect("write");
        drop(store);
        let mut store = Store::open(&dir.path().join("relay.db")).expect("reopen");
        assert_eq!(store.next_device_seq().expect("read"), 3);
        assert_eq!(
            store.rolled_back().expect("read").as_deref(),
            Some("device 1/1 is behind")
        );
        assert_eq!(store.write(|w| w.fallback_times()).expect("read"), times);
        // A damaged value is a typed error, not a panic or a silent reset.
        store
            .write(|w| w.set_setting(NEXT_DEVICE_SEQ_KEY, "seven"))
            .expect("write");
        assert!(matches!(
            store.next_device_seq(),
            Err(ClientError::Corrupt(_))
        ));
    }

    #[test]
    fn identity_settings_and_crypto_round_trip() {
        let (dir, mut store) = open();
        assert_eq!(store.identity().expect("read"), None);
        let identity = Identity {
            account: AccountId(7),
            device: DeviceId(1),
            name: "alice".into(),
            region: 2,
            epoch: 3,
        };
        let settings = Settings {
            locator: "127.0.0.1:5353".parse().expect("addr"),
            bind_ip: "127.0.2.9".parse().expect("ip"),
            ca_path: dir.path().join("ca.pem"),
        };
        let mut crypto = Crypto::new();
        crypto.generate_one_time_keys(2);
        let mut other = Crypto::new();
        other.generate_one_time_keys(1);
        let key = other.unpublished_one_time_keys().remove(0);
        crypto
            .create_outbound_session(device(9, 1), &other.identity_key(), &key.public_key)
            .expect("session");
        let changes = crypto.take_changes().expect("changes");
        store
            .write(|writer| {
                writer.set_identity(&identity)?;
                writer.set_settings(&settings)?;
                writer.save_crypto(&changes)
            })
            .expect("write");
        drop(store);
        let mut store = Store::open(&dir.path().join("relay.db")).expect("reopen");
        store
            .unlock(&dir.path().join("device.key"))
            .expect("unlock");
        assert_eq!(store.identity().expect("read"), Some(identity));
        assert_eq!(store.settings().expect("read"), Some(settings));
        let mut restored = store.load_crypto().expect("load").expect("some");
        assert_eq!(restored.identity_key(), crypto.identity_key());
        assert!(restored.has_session(device(9, 1)));
        assert_eq!(restored.unpublished_one_time_keys().len(), 2);
        let (_, body) = restored.encrypt(device(9, 1), b"x").expect("encrypt");
        assert!(!body.is_empty());
    }

    /// The bytes of the database and its write-ahead log.
    fn database_bytes(dir: &Path) -> Vec<u8> {
        let mut bytes = std::fs::read(dir.join("relay.db")).expect("database");
        if let Ok(log) = std::fs::read(dir.join("relay.db-wal")) {
            bytes.extend(log);
        }
        bytes
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    #[test]
    fn secrets_are_sealed_and_plaintext_databases_are_migrated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.db");
        let key_path = dir.path().join("device.key");
        // A database as builds before sealing wrote it: schema 1, plaintext pickles.
        let mut crypto = Crypto::new();
        crypto.generate_one_time_keys(3);
        let mut other = Crypto::new();
        other.generate_one_time_keys(1);
        let one_time_key = other.unpublished_one_time_keys().remove(0);
        crypto
            .create_outbound_session(
                device(9, 1),
                &other.identity_key(),
                &one_time_key.public_key,
            )
            .expect("session");
        let changes = crypto.take_changes().expect("changes");
        let account_pickle = changes.account.clone().expect("account pickle");
        let session_pickle = changes.sessions[&device(9, 1)][0].1.clone();
        {
            let connection = Connection::open(&path).expect("open");
            connection.execute_batch(SCHEMA_V1).expect("schema");
            connection
                .pragma_update(None, "user_version", 1)
                .expect("version");
            connection
                .execute(
                    "INSERT INTO olm_account (singleton, pickle) VALUES (1, ?1)",
                    [&account_pickle],
                )
                .expect("account");
            connection
                .execute(
                    "INSERT INTO olm_sessions (account, device, position, session_id, pickle)
                     VALUES (9, 1, 0, 's', ?1)",
                    [&session_pickle],
                )
                .expect("session");
        }
        assert!(contains(
            &database_bytes(dir.path()),
            &account_pickle.as_bytes()[..64]
        ));

        let mut store = Store::open(&path).expect("open");
        assert!(
            store.load_crypto().is_err(),
            "locked until the device key is given"
        );
        store
            .unlock(&key_path)
            .expect("unlock creates the key and seals");
        let mut restored = store.load_crypto().expect("load").expect("account");
        assert_eq!(restored.identity_key(), crypto.identity_key());
        assert!(restored.has_session(device(9, 1)));
        assert!(restored.encrypt(device(9, 1), b"x").is_ok());
        assert!(
            store.drafts().expect("drafts").is_empty(),
            "schema 2 added the drafts"
        );
        store
            .write(|writer| writer.save_crypto(&restored.take_changes()?))
            .expect("save");
        drop(store);

        let bytes = database_bytes(dir.path());
        let key_text = std::fs::read_to_string(&key_path).expect("key");
        let key_hex = key_text.trim();
        let key_raw: Vec<u8> = (0..key_hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&key_hex[at..at + 2], 16).expect("hex"))
            .collect();
        for pickle in [&account_pickle, &session_pickle] {
            for start in [0, pickle.len() / 2] {
                let window = &pickle.as_bytes()[start..start + 48];
                assert!(
                    !contains(&bytes, window),
                    "a plaintext pickle is in the file"
                );
            }
        }
        assert!(
            !contains(&bytes, b"signing_key"),
            "no pickle field names either"
        );
        assert!(!contains(&bytes, key_hex.as_bytes()) && !contains(&bytes, &key_raw));

        // The key opens them again; another key or none is a clear error, not a new identity.
        let mut store = Store::open(&path).expect("reopen");
        store.unlock(&key_path).expect("unlock");
        assert_eq!(
            store
                .load_crypto()
                .expect("load")
                .expect("account")
                .identity_key(),
            crypto.identity_key()
        );
        drop(store);
        let wrong = dir.path().join("wrong.key");
        DeviceKey::create(&wrong).expect("another key");
        let mut store = Store::open(&path).expect("reopen");
        let error = store.unlock(&wrong).expect_err("wrong key");
        assert!(matches!(error, ClientError::DeviceKey(_)), "{error}");
        let error = store
            .unlock(&dir.path().join("elsewhere.key"))
            .expect_err("missing key");
        assert!(error.to_string().contains("is missing"), "{error}");
        assert!(
            !dir.path().join("elsewhere.key").exists(),
            "no key is made up for sealed secrets"
        );
    }

    #[test]
    fn damaged_databases_are_named_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.db");
        let damage = |store: Result<Store>| match store {
            Err(ClientError::Damaged { problem, .. }) => problem,
            Err(other) => panic!("expected damaged, got {other}"),
            Ok(_) => panic!("expected damaged, it opened"),
        };

        std::fs::write(&path, b"").expect("empty");
        assert!(damage(Store::open(&path)).contains("empty"));
        assert!(
            damage(Store::create(&path)).contains("empty"),
            "registration does not write over it"
        );
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 0);

        let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 37 % 251) as u8).collect();
        std::fs::write(&path, &garbage).expect("garbage");
        let problem = damage(Store::open(&path));
        assert!(problem.contains("not a database"), "{problem}");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            garbage,
            "left as it was"
        );
        let message = Store::open(&path).expect_err("damaged").to_string();
        assert!(
            message.starts_with("the local database ")
                && message.contains("is damaged (")
                && message.ends_with(
                    "restore it from a backup or register again in a new data directory"
                ),
            "{message}"
        );

        std::fs::remove_file(&path).expect("remove");
        {
            let connection = Connection::open(&path).expect("open");
            connection
                .execute_batch("CREATE TABLE notes (text TEXT);")
                .expect("another app's database");
        }
        assert!(damage(Store::open(&path)).contains("no Relay tables"));

        std::fs::remove_file(&path).expect("remove");
        drop(Store::create(&path).expect("create"));
        {
            let connection = Connection::open(&path).expect("open");
            connection
                .execute_batch("DROP TABLE outbox;")
                .expect("drop");
        }
        assert!(damage(Store::open(&path)).contains("the table outbox is missing"));
    }

    #[test]
    fn drafts_and_the_last_edge_are_kept() {
        let (_dir, mut store) = open();
        assert_eq!(store.last_edge().expect("edge"), None);
        let edge: SocketAddr = "127.0.1.2:4433".parse().expect("addr");
        store.write(|w| w.set_last_edge(edge)).expect("edge");
        assert_eq!(store.last_edge().expect("edge"), Some(edge));
        let draft = Draft {
            client_message_id: ClientMessageId([3; 16]),
            peer_name: "carol".into(),
            text: "hi \x1b carol".into(),
            sent_at_ms: 7,
        };
        store.write(|w| w.insert_draft(&draft)).expect("draft");
        assert_eq!(store.drafts().expect("drafts"), vec![draft.clone()]);
        assert_eq!(
            store.draft(draft.client_message_id).expect("draft"),
            Some(draft.clone())
        );
        assert!(
            store
                .write(|w| w.remove_draft(draft.client_message_id))
                .expect("remove")
        );
        assert!(
            !store
                .write(|w| w.remove_draft(draft.client_message_id))
                .expect("again"),
            "taken once"
        );
        assert!(store.drafts().expect("drafts").is_empty());
    }

    #[test]
    fn messages_deduplicate_and_ticks_only_move_forward() {
        let (_dir, mut store) = open();
        let me = device(1, 1);
        let id = ClientMessageId([5; 16]);
        let chat = ChatId::direct(AccountId(1), AccountId(2));
        let message = NewMessage {
            chat,
            peer: AccountId(2),
            outgoing: true,
            sender: me,
            client_message_id: id,
            sender_seq: 1,
            chat_seq: None,
            text: Some("hi"),
            sent_at_ms: 10,
            server_time_ms: None,
            tick: Tick::Pending,
            undecryptable: None,
        };
        assert!(store.write(|w| w.insert_message(&message)).expect("insert"));
        assert!(
            !store.write(|w| w.insert_message(&message)).expect("again"),
            "deduplicated"
        );
        assert!(
            store
                .write(|w| w.advance_tick(me, id, Tick::Delivered))
                .expect("tick")
        );
        assert!(
            !store
                .write(|w| w.advance_tick(me, id, Tick::Sent))
                .expect("tick"),
            "never backwards"
        );
        store
            .write(|w| w.set_sequenced(me, id, Some(4), Some(99)))
            .expect("sequenced");
        let moved = store
            .write(|w| w.mark_read_by_peer(AccountId(2), AccountId(1), &[id]))
            .expect("read");
        assert_eq!(moved, vec![(me, id)]);
        let stored = store.message(me, id).expect("read").expect("some");
        assert_eq!(
            (stored.tick, stored.chat_seq, stored.time_ms()),
            (Tick::Read, Some(4), 99)
        );
        assert_eq!(store.history(AccountId(2)).expect("history").len(), 1);

        let peer = device(2, 1);
        let incoming = ClientMessageId([6; 16]);
        assert!(!store.is_seen(peer, incoming).expect("seen"));
        assert!(
            store
                .write(|w| w.mark_seen(peer, incoming, 1_000))
                .expect("seen")
        );
        assert!(
            !store
                .write(|w| w.mark_seen(peer, incoming, 1_000))
                .expect("seen")
        );
        assert!(store.is_seen(peer, incoming).expect("seen"));
        assert_eq!(
            store
                .write(|w| w.prune_seen(1_000 + SEEN_RETENTION_MS + 1))
                .expect("prune"),
            1
        );
        assert!(!store.is_seen(peer, incoming).expect("seen"));

        assert!(
            store
                .write(|w| w.record_receipt(me, id, peer, 2, 5))
                .expect("receipt")
        );
        assert!(
            !store
                .write(|w| w.record_receipt(me, id, peer, 2, 6))
                .expect("same")
        );
        assert!(
            store
                .write(|w| w.record_receipt(me, id, peer, 4, 7))
                .expect("forward")
        );
    }

    #[test]
    fn outbox_counters_renumbering_and_cursor() {
        let (_dir, mut store) = open();
        let me = device(1, 1);
        let chat = ChatId::direct(AccountId(1), AccountId(2));
        let mut ids = Vec::new();
        for index in 0..3u8 {
            let id = ClientMessageId([index + 1; 16]);
            ids.push(id);
            store
                .write(|w| {
                    let seq = w.take_sender_seq(chat)?;
                    let envelope = Envelope {
                        chat: chat.0.to_vec(),
                        sender: me.into(),
                        client_message_id: id.0.to_vec(),
                        sender_seq: seq,
                        recipient_accounts: vec![2, 1],
                        ciphertexts: Vec::new(),
                        device_seq: u64::from(index) + 1,
                    };
                    w.insert_outbox(
                        &OutboxRow {
                            chat,
                            sender_seq: seq,
                            client_message_id: id,
                            peer: AccountId(2),
                            content: vec![1],
                            envelope: Some(envelope.encode_to_vec()),
                        },
                        0,
                    )
                })
                .expect("enqueue");
        }
        let seqs: Vec<u64> = store
            .outbox()
            .expect("outbox")
            .iter()
            .map(|row| row.sender_seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        // Shift up by one: the intermediate state would collide without the two-step update.
        let moves = vec![(ids[0], 1, 2), (ids[1], 2, 3), (ids[2], 3, 4)];
        store
            .write(|w| w.renumber(chat, me, &moves, 5))
            .expect("renumber");
        let rows = store.outbox().expect("outbox");
        assert_eq!(
            rows.iter().map(|row| row.sender_seq).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        let envelope =
            Envelope::decode(rows[0].envelope.as_deref().expect("envelope")).expect("decode");
        assert_eq!(envelope.sender_seq, 2);
        assert_eq!(store.write(|w| w.take_sender_seq(chat)).expect("seq"), 5);
        store.write(|w| w.remove_outbox(ids[0])).expect("remove");
        assert!(store.outbox_entry(ids[0]).expect("read").is_none());

        assert_eq!(store.queue_cursor().expect("cursor"), 0);
        store
            .write(|w| w.processed_queue_entries(&[3, 1, 2]))
            .expect("processed");
        store
            .write(|w| w.processed_queue_entries(&[2]))
            .expect("redelivered");
        assert_eq!(store.queue_cursor().expect("cursor"), 3, "never backwards");
        assert_eq!(store.pending_acks().expect("acks"), vec![1, 2, 3]);
        store.write(|w| w.acked(&[1, 2])).expect("acked");
        assert_eq!(store.pending_acks().expect("acks"), vec![3]);
    }

    #[test]
    fn devices_are_trusted_on_first_use() {
        let (_dir, mut store) = open();
        let bob = device(2, 1);
        store
            .write(|w| w.trust_device(bob, &[1; 32], true))
            .expect("trust");
        store
            .write(|w| w.trust_device(bob, &[1; 32], true))
            .expect("same key again");
        assert!(matches!(
            store.write(|w| w.trust_device(bob, &[2; 32], true)),
            Err(ClientError::IdentityChanged(_))
        ));
        store
            .write(|w| w.set_current_devices(AccountId(2), &[DeviceId(2)]))
            .expect("current");
        let devices = store.known_devices(AccountId(2)).expect("devices");
        assert_eq!(devices.len(), 2);
        assert!(!devices[0].current && devices[0].identity_key == Some([1; 32]));
        assert!(devices[1].current && devices[1].identity_key.is_none());
        assert_eq!(store.identity_key(bob).expect("key"), Some([1; 32]));

        let contact = Contact {
            account: AccountId(2),
            name: "bob".into(),
            region: 1,
        };
        store
            .write(|w| w.upsert_contact(&contact))
            .expect("contact");
        assert_eq!(
            store.contact_by_name("bob").expect("read"),
            Some(contact.clone())
        );
        assert_eq!(
            store.contact_by_account(AccountId(2)).expect("read"),
            Some(contact)
        );
    }
}
