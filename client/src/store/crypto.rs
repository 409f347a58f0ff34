//! The Olm account and sessions (`olm_account`, `olm_sessions`), sealed under the device key
//! (see [`crate::secrets`]).
//!
//! **Kept in memory, persisted incrementally.** [`Store::write_with_crypto`] hands a
//! transaction the account and sessions as they were last committed, from memory, and saves
//! only the pickles that changed, in the same transaction as the change that caused them (an
//! envelope, a processed queue page): nothing leaves the device before its ratchet state is
//! committed. Each commit of Olm state raises a counter in the settings table
//! (`crypto_version`); a transaction that finds it moved since this store's last commit (another
//! process on the same data directory, such as `relay read` while `relay listen` runs) reloads
//! the state from the store first, under the write lock it holds, so two processes never
//! advance the same ratchet from the same step. A transaction that fails forgets the memory
//! copy, which is read again by the next one.

use std::path::Path;

use relay_proto::DeviceAddress;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Store, Writer, address, to_i64};
use crate::crypto::{Crypto, CryptoChanges};
use crate::error::{ClientError, Result};
use crate::secrets::{DeviceKey, is_sealed};

/// What the sealed account pickle is bound to.
const SEALED_ACCOUNT: &str = "olm account";
/// The settings key of the counter of commits that changed the Olm state.
const CRYPTO_VERSION_KEY: &str = "crypto_version";

/// The Olm state of the last transaction this store committed, and the `crypto_version` it
/// committed; `version` is `None` when memory may be ahead of or behind the store.
#[derive(Debug, Default)]
pub(super) struct CryptoCache {
    crypto: Option<Crypto>,
    version: Option<u64>,
    reloads: u64,
}

impl Store {
    /// Runs `change` in one transaction (as [`Store::write`]) with the device's Olm state,
    /// and commits the pickles it changed with everything else the transaction wrote. The state
    /// comes from memory unless another process committed Olm state since this store last did.
    pub fn write_with_crypto<T>(
        &mut self,
        change: impl FnOnce(&Writer<'_>, &mut Crypto) -> Result<T>,
    ) -> Result<T> {
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let writer = Writer {
            transaction: &transaction,
            key: self.key.as_ref(),
        };
        let cache = &mut self.crypto;
        let stored = writer.crypto_version()?;
        if cache.crypto.is_none() || cache.version != Some(stored) {
            cache.reloads += 1;
            cache.crypto = Some(writer.load_crypto()?);
        }
        // Until this transaction commits, memory may hold changes the store does not.
        cache.version = None;
        let Some(crypto) = cache.crypto.as_mut() else {
            return Err(ClientError::Corrupt("the Olm account is missing".into()));
        };
        let value = change(&writer, crypto)?;
        let changes = crypto.take_changes()?;
        writer.save_crypto(&changes)?;
        let version = writer.crypto_version()?;
        transaction.commit()?;
        cache.version = Some(version);
        Ok(value)
    }

    /// How many times [`Store::write_with_crypto`] read the Olm state from the file (once at
    /// first use, then only after another process changed it).
    pub fn crypto_reloads(&self) -> u64 {
        self.crypto.reloads
    }
}

impl Store {
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
}

impl Writer<'_> {
    /// The count of commits that changed the Olm state (0 before the first).
    pub fn crypto_version(&self) -> Result<u64> {
        match self.setting(CRYPTO_VERSION_KEY)? {
            None => Ok(0),
            Some(value) => value
                .parse()
                .map_err(|_| ClientError::Corrupt(format!("{CRYPTO_VERSION_KEY} {value:?}"))),
        }
    }

    /// Saves changed Olm pickles, sealed under the device key, and counts the change.
    pub fn save_crypto(&self, changes: &CryptoChanges) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let version = self.crypto_version()?;
        self.set_setting(CRYPTO_VERSION_KEY, &(version + 1).to_string())?;
        let key = unlocked(self.key)?;
        if let Some(account) = &changes.account {
            self.execute(
                "INSERT OR REPLACE INTO olm_account (singleton, pickle) VALUES (1, ?1)",
                [key.seal(SEALED_ACCOUNT, account)?],
            )?;
        }
        for (device, sessions) in &changes.sessions {
            let what = sealed_sessions(*device);
            let account = to_i64(device.account.0);
            self.execute(
                "DELETE FROM olm_sessions WHERE account = ?1 AND device = ?2",
                params![account, device.device.0],
            )?;
            for (position, (session_id, pickle)) in sessions.iter().enumerate() {
                self.execute(
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

    /// The Olm account and sessions as committed, read under this transaction's write lock; the
    /// caller saves what it changes with [`Writer::save_crypto`] in the same transaction.
    pub fn load_crypto(&self) -> Result<Crypto> {
        load_crypto(self.transaction, self.key)?
            .ok_or_else(|| ClientError::Corrupt("the Olm account is missing".into()))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema::SCHEMA_V1;
    use crate::store::testing::{device, open};
    use crate::store::{Identity, Settings};
    use relay_proto::{AccountId, DeviceId};

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
            ca_path: Some(dir.path().join("ca.pem")),
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

    /// Two processes share one data directory: each keeps the Olm state in memory between
    /// transactions, and one that finds the other committed Olm state reloads it before using
    /// it, so no ratchet step is ever used twice (the peer decrypts every message).
    #[test]
    fn olm_state_stays_in_memory_and_another_writer_is_noticed() {
        let alice_address = device(1, 1);
        let bob_address = device(2, 1);
        let (dir, mut first) = open();
        let mut bob = Crypto::new();
        bob.generate_one_time_keys(1);
        let one_time_key = bob.unpublished_one_time_keys().remove(0);
        let mut alice = Crypto::new();
        alice
            .create_outbound_session(bob_address, &bob.identity_key(), &one_time_key.public_key)
            .expect("session");
        let changes = alice.take_changes().expect("pickles");
        first.write(|w| w.save_crypto(&changes)).expect("save");
        let mut second = Store::open(&dir.path().join("relay.db")).expect("a second process");
        second
            .unlock(&dir.path().join("device.key"))
            .expect("unlock");

        let mut sent = Vec::new();
        let encrypt = |store: &mut Store, text: &str| {
            let text = text.to_owned();
            store
                .write_with_crypto(|_, crypto| crypto.encrypt(bob_address, text.as_bytes()))
                .map(|message| (text, message))
        };
        for text in ["one", "two", "three"] {
            sent.push(encrypt(&mut first, text).expect("first"));
        }
        assert_eq!(first.crypto_reloads(), 1, "read once, then kept in memory");
        sent.push(encrypt(&mut second, "from the other process").expect("second"));
        assert_eq!(second.crypto_reloads(), 1);
        sent.push(encrypt(&mut first, "four").expect("first"));
        assert_eq!(first.crypto_reloads(), 2, "the other writer is noticed");
        sent.push(encrypt(&mut first, "five").expect("first"));
        assert_eq!(first.crypto_reloads(), 2, "and memory serves again");

        // A transaction that fails commits nothing: memory is read again from the store.
        let failed: Result<()> = first.write_with_crypto(|_, crypto| {
            crypto.encrypt(bob_address, b"never sent")?;
            Err(ClientError::Invalid(
                "the envelope could not be stored".into(),
            ))
        });
        assert!(failed.is_err());
        sent.push(encrypt(&mut first, "six").expect("first"));
        assert_eq!(first.crypto_reloads(), 3);
        assert_eq!(
            first.write(|w| w.crypto_version()).expect("version"),
            8,
            "one version per commit that changed the Olm state"
        );

        for (text, (kind, body)) in sent {
            let decrypted = bob
                .decrypt(alice_address, None, kind, &body)
                .unwrap_or_else(|error| panic!("{text:?} does not decrypt: {error}"));
            assert_eq!(decrypted.plaintext, text.as_bytes());
        }
    }
}
