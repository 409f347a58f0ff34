//! The schema and its migrations: versioned with `PRAGMA user_version`; a migration only ever
//! adds (version 2 added the drafts, 3 indexes, 4 the group sessions, 5 group chats, 6 files in
//! messages). [`check`] tells a database of this client from anything else, which is
//! damaged, never started over.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction};

use super::damaged;
use crate::error::{ClientError, Result};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 6;

pub(super) const SCHEMA_V1: &str = "
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

/// Version 3: indexes for the history's catch-up with the store, which ran on every page and
/// answer: the rows sequenced after the history's mark, and the first outgoing message still
/// waiting for its chat sequence. Without them both scanned every message after the mark (all
/// of them for the second), so a device with 10,000 messages composed spent most of its time
/// there.
const SCHEMA_V3: &str = "
CREATE INDEX messages_sequenced ON messages (id)
    WHERE chat_seq IS NOT NULL AND text IS NOT NULL;
CREATE INDEX messages_waiting ON messages (id)
    WHERE outgoing = 1 AND chat_seq IS NULL AND failed IS NULL AND text IS NOT NULL;
";

/// Version 4: the Megolm group sessions (see [`super::groups`]): the device's sending session
/// per group with the devices holding its key, and the sessions other devices shared with it.
const SCHEMA_V4: &str = "
CREATE TABLE group_outbound_sessions (
    group_id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    pickle TEXT NOT NULL
);
CREATE TABLE group_outbound_shares (
    group_id INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    account INTEGER NOT NULL,
    device INTEGER NOT NULL,
    PRIMARY KEY (group_id, session_id, account, device)
) WITHOUT ROWID;
CREATE TABLE group_inbound_sessions (
    session_id TEXT PRIMARY KEY,
    group_id INTEGER NOT NULL,
    sender_account INTEGER NOT NULL,
    sender_device INTEGER NOT NULL,
    first_known_index INTEGER NOT NULL,
    received_seq INTEGER NOT NULL,
    pickle TEXT NOT NULL
);
";

/// Version 5: group chats (see [`super::group_chat`]): the membership each group was last
/// known at, the group's messages (a text typed here waits unnumbered until the outbox takes
/// it), group messages waiting for their session's key, and the group of an outbox entry.
const SCHEMA_V5: &str = "
CREATE TABLE group_known (
    group_id INTEGER PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE group_known_members (
    group_id INTEGER NOT NULL,
    account INTEGER NOT NULL,
    PRIMARY KEY (group_id, account)
) WITHOUT ROWID;
CREATE TABLE group_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id INTEGER NOT NULL,
    outgoing INTEGER NOT NULL,
    sender_account INTEGER NOT NULL,
    sender_device INTEGER NOT NULL,
    client_message_id BLOB NOT NULL,
    sender_seq INTEGER,
    chat_seq INTEGER,
    text TEXT,
    sent_at_ms INTEGER NOT NULL,
    server_time_ms INTEGER,
    tick INTEGER NOT NULL,
    undecryptable TEXT,
    failed TEXT,
    read_at_ms INTEGER,
    UNIQUE (sender_account, sender_device, client_message_id)
);
CREATE INDEX group_messages_by_group ON group_messages (group_id, id);
CREATE INDEX group_messages_unnumbered ON group_messages (group_id, id)
    WHERE outgoing = 1 AND sender_seq IS NULL AND failed IS NULL;
CREATE TABLE group_waiting (
    sender_account INTEGER NOT NULL,
    sender_device INTEGER NOT NULL,
    client_message_id BLOB NOT NULL,
    session_id TEXT NOT NULL,
    arrived_at_ms INTEGER NOT NULL,
    message BLOB NOT NULL,
    PRIMARY KEY (sender_account, sender_device, client_message_id)
) WITHOUT ROWID;
CREATE INDEX group_waiting_by_session ON group_waiting (session_id);
ALTER TABLE outbox ADD COLUMN group_id INTEGER NOT NULL DEFAULT 0;
";

/// Version 6: files in messages (see [`crate::media`]): the attachment of a message, of a
/// group message and of a draft, encoded.
const SCHEMA_V6: &str = "
ALTER TABLE messages ADD COLUMN attachment BLOB;
ALTER TABLE group_messages ADD COLUMN attachment BLOB;
ALTER TABLE drafts ADD COLUMN attachment BLOB;
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
const TABLES_V5: [&str; 4] = [
    "group_known",
    "group_known_members",
    "group_messages",
    "group_waiting",
];
const TABLES_V4: [&str; 3] = [
    "group_outbound_sessions",
    "group_outbound_shares",
    "group_inbound_sessions",
];

/// Creates every table of [`SCHEMA_VERSION`] in a new database.
pub(super) fn create(transaction: &Transaction<'_>) -> Result<()> {
    transaction.execute_batch(SCHEMA_V1)?;
    transaction.execute_batch(SCHEMA_V2)?;
    transaction.execute_batch(SCHEMA_V3)?;
    transaction.execute_batch(SCHEMA_V4)?;
    transaction.execute_batch(SCHEMA_V5)?;
    transaction.execute_batch(SCHEMA_V6)?;
    transaction.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

/// Checks that the database at `path` (`bytes` long) is one of this client, of a version this
/// build reads, with every table of its version; returns its version. Anything else is
/// [`ClientError::Damaged`] (or [`ClientError::Corrupt`] for a newer schema), never touched.
pub(super) fn check(connection: &Connection, path: &Path, bytes: u64) -> Result<i32> {
    let version: i32 = connection
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
    if version >= 4 {
        expected.extend(TABLES_V4);
    }
    if version >= 5 {
        expected.extend(TABLES_V5);
    }
    for table in expected {
        let found: Option<i64> = connection
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
    Ok(version)
}

/// Brings a database of schema `version` (checked by [`check`]) up to [`SCHEMA_VERSION`].
pub(super) fn migrate(transaction: &Transaction<'_>, version: i32) -> Result<()> {
    if version < 2 {
        transaction.execute_batch(SCHEMA_V2)?;
    }
    if version < 3 {
        transaction.execute_batch(SCHEMA_V3)?;
    }
    if version < 4 {
        transaction.execute_batch(SCHEMA_V4)?;
    }
    if version < 5 {
        transaction.execute_batch(SCHEMA_V5)?;
    }
    if version < 6 {
        transaction.execute_batch(SCHEMA_V6)?;
    }
    transaction.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// A database of version 2 opens as the current version, with the history's indexes, and
    /// the queries that need them use them.
    #[test]
    fn a_version_2_database_gains_the_history_indexes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.db");
        {
            let mut connection = Connection::open(&path).expect("open");
            let transaction = connection.transaction().expect("transaction");
            transaction.execute_batch(SCHEMA_V1).expect("v1");
            transaction.execute_batch(SCHEMA_V2).expect("v2");
            transaction
                .pragma_update(None, "user_version", 2)
                .expect("version");
            transaction.commit().expect("commit");
        }
        let store = Store::open(&path).expect("opens");
        let version: i32 = store
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        let plan = |sql: &str| -> String {
            let mut statement = store
                .connection
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("plan");
            let rows = statement
                .query_map([], |row| row.get::<_, String>(3))
                .expect("rows");
            rows.map(|row| row.expect("row"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let sequenced = plan(
            "SELECT id FROM messages WHERE id > 0 AND chat_seq IS NOT NULL AND text IS NOT NULL \
             ORDER BY id",
        );
        assert!(sequenced.contains("messages_sequenced"), "{sequenced}");
        let waiting = plan(
            "SELECT id FROM messages WHERE outgoing = 1 AND chat_seq IS NULL AND failed IS NULL \
             AND text IS NOT NULL ORDER BY id LIMIT 1",
        );
        assert!(waiting.contains("messages_waiting"), "{waiting}");
    }

    /// A database of version 5 opens as the current version: its messages, group messages and
    /// drafts kept, with no attachment, and a message with one can be stored.
    #[test]
    fn a_version_5_database_gains_attachments_and_keeps_its_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.db");
        {
            let mut connection = Connection::open(&path).expect("open");
            let transaction = connection.transaction().expect("transaction");
            for schema in [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5] {
                transaction.execute_batch(schema).expect("schema");
            }
            transaction
                .execute(
                    "INSERT INTO messages (chat, peer, outgoing, sender_account, sender_device,
                     client_message_id, sender_seq, chat_seq, text, sent_at_ms, tick)
                     VALUES (?1, 5, 0, 5, 1, ?2, 1, 1, 'before', 0, 1)",
                    rusqlite::params![[7u8; 16].as_slice(), [9u8; 16].as_slice()],
                )
                .expect("a message");
            transaction
                .pragma_update(None, "user_version", 5)
                .expect("version");
            transaction.commit().expect("commit");
        }
        let store = Store::open(&path).expect("opens");
        let messages = store.messages_by_id_prefix("090909", 5).expect("messages");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].text.as_deref(), Some("before"));
        assert_eq!(messages[0].attachment, None);
        for table in ["messages", "group_messages", "drafts"] {
            let columns: i64 = store
                .connection
                .query_row(
                    &format!(
                        "SELECT count(*) FROM pragma_table_info('{table}')
                         WHERE name = 'attachment'"
                    ),
                    [],
                    |row| row.get(0),
                )
                .expect("columns");
            assert_eq!(columns, 1, "{table}");
        }
    }

    /// A database of version 3 opens as the current version with the group session and group
    /// chat tables, empty, and everything it held untouched (an outbox entry is a 1:1 one).
    #[test]
    fn a_version_3_database_gains_the_group_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.db");
        {
            let mut connection = Connection::open(&path).expect("open");
            let transaction = connection.transaction().expect("transaction");
            transaction.execute_batch(SCHEMA_V1).expect("v1");
            transaction.execute_batch(SCHEMA_V2).expect("v2");
            transaction.execute_batch(SCHEMA_V3).expect("v3");
            transaction
                .execute(
                    "INSERT INTO contacts (account, name, region) VALUES (5, 'erin', 1)",
                    [],
                )
                .expect("a contact");
            transaction
                .execute(
                    "INSERT INTO outbox (chat, sender_seq, client_message_id, peer, content,
                     envelope, created_at_ms) VALUES (?1, 1, ?2, 5, x'01', NULL, 0)",
                    rusqlite::params![[7u8; 16].as_slice(), [9u8; 16].as_slice()],
                )
                .expect("an outbox entry");
            transaction
                .pragma_update(None, "user_version", 3)
                .expect("version");
            transaction.commit().expect("commit");
        }
        let mut store = Store::open(&path).expect("opens");
        let version: i32 = store
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        let outbox = store.outbox().expect("outbox");
        assert_eq!((outbox.len(), outbox[0].group), (1, 0));
        assert!(store.group_known(1).expect("known").is_none());
        store
            .unlock(&dir.path().join("device.key"))
            .expect("unlock");
        let me = crate::store::testing::device(1, 1);
        let keys = store.load_group_keys(me).expect("no sessions yet");
        assert!(keys.outbound(7).is_none());
        assert!(
            store.contact_by_name("erin").expect("contact").is_some(),
            "what it held is untouched"
        );
        drop(store);
        // Opening again finds every table of versions 4 and 5 (and migrates nothing).
        let store = Store::open(&path).expect("reopens");
        for table in TABLES_V4.iter().chain(TABLES_V5.iter()) {
            let found: i64 = store
                .connection
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |row| row.get(0),
                )
                .expect("master");
            assert_eq!(found, 1, "{table}");
        }
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
}
