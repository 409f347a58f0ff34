//! The Megolm group sessions of [`crate::group_keys`] (`group_outbound_sessions`,
//! `group_outbound_shares`, `group_inbound_sessions`, schema version 4), pickles sealed under
//! the device key like the Olm ones (see [`crate::secrets`]), never written in plaintext.
//!
//! **Rows.** One sending session per group (a rotation replaces the group's row) with the
//! devices holding its key, one row per device under the session's id, so shares left by a
//! replaced session are never read as the new one's. One row per session received from another
//! device, under its id, with its group, sending device, first known index and order of
//! arrival. The associated data of each sealed pickle names its group (and for a received
//! session its id and sending device), so a pickle copied to another row does not open.
//!
//! **Transactions.** [`Writer::load_group_keys`] reads the sessions under the transaction's
//! write lock and [`Writer::save_group_keys`] writes what changed in the same transaction as the
//! envelope or queue page that changed it: two processes on one data directory never encrypt
//! from the same ratchet step, and a crash never loses a step that left the device.

use relay_proto::DeviceAddress;
use rusqlite::{Connection, params};

use super::{Store, Writer, address, to_i64, to_u32, to_u64};
use crate::error::{ClientError, Result};
use crate::group_keys::{GroupKeyChanges, GroupKeys, InboundRow, OutboundRow};
use crate::secrets::DeviceKey;

impl Store {
    /// The device's group sessions as committed (after [`Store::unlock`]).
    pub fn load_group_keys(&self, me: DeviceAddress) -> Result<GroupKeys> {
        load_group_keys(&self.connection, self.key.as_ref(), me)
    }
}

impl Writer<'_> {
    /// The device's group sessions as committed, read under this transaction's write lock; the
    /// caller saves what it changes with [`Writer::save_group_keys`] in the same transaction.
    pub fn load_group_keys(&self, me: DeviceAddress) -> Result<GroupKeys> {
        load_group_keys(self.transaction, self.key, me)
    }

    /// Saves the changed group sessions, pickles sealed under the device key.
    pub fn save_group_keys(&self, changes: &GroupKeyChanges) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let key = unlocked(self.key)?;
        for row in &changes.outbound {
            let group = to_i64(row.group);
            self.execute(
                "INSERT OR REPLACE INTO group_outbound_sessions
                 (group_id, session_id, created_at_ms, pickle) VALUES (?1, ?2, ?3, ?4)",
                params![
                    group,
                    row.session_id,
                    to_i64(row.created_at_ms),
                    key.seal(&sealed_outbound(row.group), &row.pickle)?
                ],
            )?;
            if let Some(devices) = &row.shared_with {
                self.execute(
                    "DELETE FROM group_outbound_shares WHERE group_id = ?1",
                    [group],
                )?;
                for device in devices {
                    self.execute(
                        "INSERT INTO group_outbound_shares (group_id, session_id, account, device)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![
                            group,
                            row.session_id,
                            to_i64(device.account.0),
                            device.device.0
                        ],
                    )?;
                }
            }
        }
        for session_id in &changes.inbound_removed {
            self.execute(
                "DELETE FROM group_inbound_sessions WHERE session_id = ?1",
                [session_id],
            )?;
        }
        for row in &changes.inbound {
            self.execute(
                "INSERT OR REPLACE INTO group_inbound_sessions
                 (session_id, group_id, sender_account, sender_device, first_known_index,
                  received_seq, pickle) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    row.session_id,
                    to_i64(row.group),
                    to_i64(row.sender.account.0),
                    row.sender.device.0,
                    i64::from(row.first_known_index),
                    to_i64(row.received_seq),
                    key.seal(
                        &sealed_inbound(&row.session_id, row.group, row.sender),
                        &row.pickle
                    )?
                ],
            )?;
        }
        Ok(())
    }
}

fn load_group_keys(
    connection: &Connection,
    key: Option<&DeviceKey>,
    me: DeviceAddress,
) -> Result<GroupKeys> {
    let key = unlocked(key)?;
    let mut outbound = Vec::new();
    {
        let mut statement = connection.prepare(
            "SELECT group_id, session_id, created_at_ms, pickle FROM group_outbound_sessions
             ORDER BY group_id",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                to_u64(row.get(0)?),
                row.get::<_, String>(1)?,
                to_u64(row.get(2)?),
                row.get::<_, String>(3)?,
            ))
        })?;
        let mut shares = connection.prepare(
            "SELECT account, device FROM group_outbound_shares
             WHERE group_id = ?1 AND session_id = ?2 ORDER BY account, device",
        )?;
        for row in rows {
            let (group, session_id, created_at_ms, sealed) = row?;
            let devices = shares
                .query_map(params![to_i64(group), session_id], |row| {
                    Ok(address(row.get(0)?, row.get(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            outbound.push(OutboundRow {
                group,
                session_id,
                created_at_ms,
                shared_with: Some(devices),
                pickle: key.open(&sealed_outbound(group), &sealed)?,
            });
        }
    }
    let mut inbound = Vec::new();
    {
        let mut statement = connection.prepare(
            "SELECT session_id, group_id, sender_account, sender_device, first_known_index,
                    received_seq, pickle
             FROM group_inbound_sessions ORDER BY received_seq",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                to_u64(row.get(1)?),
                address(row.get(2)?, row.get(3)?),
                to_u32(row.get(4)?),
                to_u64(row.get(5)?),
                row.get::<_, String>(6)?,
            ))
        })?;
        for row in rows {
            let (session_id, group, sender, first_known_index, received_seq, sealed) = row?;
            let pickle = key.open(&sealed_inbound(&session_id, group, sender), &sealed)?;
            inbound.push(InboundRow {
                session_id,
                group,
                sender,
                first_known_index,
                received_seq,
                pickle,
            });
        }
    }
    GroupKeys::from_rows(me, outbound, inbound)
        .map_err(|error| ClientError::Corrupt(error.to_string()))
}

fn unlocked(key: Option<&DeviceKey>) -> Result<&DeviceKey> {
    key.ok_or_else(|| {
        ClientError::DeviceKey("the store was opened without the device key (a bug)".into())
    })
}

/// What the sealed sending session of `group` is bound to.
fn sealed_outbound(group: u64) -> String {
    format!("megolm sending session of group {group}")
}

/// What a sealed session from another device is bound to.
fn sealed_inbound(session_id: &str, group: u64, sender: DeviceAddress) -> String {
    format!("megolm session {session_id} of group {group} from {sender}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::group_keys::tests::{ALICE, GROUP, Group, T0, device};
    use crate::group_keys::{GroupKeyError, NewSession};
    use crate::store::testing::open;

    fn reopen(dir: &Path) -> Store {
        let mut store = Store::open(&dir.join("relay.db")).expect("reopen");
        store.unlock(&dir.join("device.key")).expect("unlock");
        store
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    /// Alice's sending session and Bob's copy survive a restart of both: Alice goes on at the
    /// next index without sharing again, Bob decrypts before and after, and neither file holds
    /// a pickle in plaintext.
    #[test]
    fn group_sessions_survive_a_restart_sealed() {
        let bob_address = device(2, 1);
        let mut group = Group::new(ALICE, &[bob_address]);
        let (alice_dir, mut alice_store) = open();
        let (bob_dir, mut bob_store) = open();
        let mut sent = Vec::new();
        for n in 0..3 {
            sent.push(group.send(&format!("before restart {n}"), T0 + n).1);
        }
        let alice_changes = group.sender.take_changes().expect("alice");
        let outbound_pickle = alice_changes.outbound[0].pickle.clone();
        alice_store
            .write(|writer| writer.save_group_keys(&alice_changes))
            .expect("save alice");
        let bob_keys = group.receivers.get_mut(&bob_address).expect("bob");
        let bob_changes = bob_keys.take_changes().expect("bob");
        let inbound_pickle = bob_changes.inbound[0].pickle.clone();
        bob_store
            .write(|writer| writer.save_group_keys(&bob_changes))
            .expect("save bob");
        drop((alice_store, bob_store));

        for (dir, pickle) in [
            (alice_dir.path(), &outbound_pickle),
            (bob_dir.path(), &inbound_pickle),
        ] {
            let mut bytes = std::fs::read(dir.join("relay.db")).expect("db");
            bytes.extend(std::fs::read(dir.join("relay.db-wal")).unwrap_or_default());
            assert!(!contains(&bytes, b"ratchet"), "no pickle field names");
            assert!(!contains(
                &bytes,
                &pickle.as_bytes()[pickle.len() / 2..][..40]
            ));
        }

        let mut alice_store = reopen(alice_dir.path());
        let bob_store = reopen(bob_dir.path());
        let members: BTreeSet<_> = [ALICE, bob_address].into_iter().collect();
        let (plan, message) = alice_store
            .write(|writer| {
                let mut keys = writer.load_group_keys(ALICE)?;
                let plan = keys.prepare_send(GROUP, &members, T0 + 10);
                let message = keys.encrypt(GROUP, &members, T0 + 10, b"after restart")?;
                writer.save_group_keys(&keys.take_changes()?)?;
                Ok((plan, message))
            })
            .expect("send after restart");
        assert_eq!(plan.new_session, None, "the same session");
        assert!(plan.devices.is_empty(), "Bob's share was remembered");
        assert_eq!(message.session_id, sent[0].session_id);
        assert_eq!(message.index, 3, "the next index");
        let outbound = alice_store.load_group_keys(ALICE).expect("load");
        let session = outbound.outbound(GROUP).expect("session");
        assert_eq!(session.message_index(), 4, "the step was committed");
        assert_eq!(session.created_at_ms(), T0);

        let mut bob_keys = bob_store.load_group_keys(bob_address).expect("load bob");
        sent.push(message);
        for (n, message) in sent.iter().enumerate() {
            let opened = bob_keys
                .decrypt(GROUP, ALICE, &message.session_id, &message.bytes)
                .expect("decrypts after the restart");
            assert_eq!(opened.index, n as u32);
        }

        // A rotation replaces the group's row and its shares.
        let rotated = alice_store
            .write(|writer| {
                let mut keys = writer.load_group_keys(ALICE)?;
                let alone: BTreeSet<_> = [ALICE].into_iter().collect();
                let plan = keys.prepare_send(GROUP, &alone, T0 + 20);
                writer.save_group_keys(&keys.take_changes()?)?;
                Ok(plan)
            })
            .expect("rotate");
        assert!(matches!(rotated.new_session, Some(NewSession::Rotated(_))));
        let keys = alice_store.load_group_keys(ALICE).expect("load");
        let session = keys.outbound(GROUP).expect("session");
        assert_eq!(session.session_id(), rotated.session_id);
        assert!(
            session.shared_with().is_empty(),
            "Bob held the old one only"
        );
    }

    /// Sessions a sender's newer ones pushed out are deleted from the file too, and a sealed
    /// pickle moved to another session's row does not open.
    #[test]
    fn forgotten_sessions_leave_the_file_and_rows_stay_bound() {
        let carol = device(3, 1);
        let (dir, mut store) = open();
        let mut keys = GroupKeys::new(carol).with_inbound_per_sender_max(2);
        let mut ids = Vec::new();
        for n in 0..3 {
            let mut alice = GroupKeys::new(ALICE);
            let members: BTreeSet<_> = [ALICE, carol].into_iter().collect();
            let plan = alice.prepare_send(GROUP, &members, T0 + n);
            keys.accept_key(ALICE, &plan.key).expect("accept");
            ids.push(plan.session_id);
            store
                .write(|writer| writer.save_group_keys(&keys.take_changes()?))
                .expect("save");
        }
        let loaded = store.load_group_keys(carol).expect("load");
        assert!(loaded.inbound(&ids[0]).is_none());
        assert!(loaded.inbound(&ids[1]).is_some() && loaded.inbound(&ids[2]).is_some());
        let rows: i64 = store
            .connection
            .query_row("SELECT count(*) FROM group_inbound_sessions", [], |row| {
                row.get(0)
            })
            .expect("count");
        assert_eq!(rows, 2);

        store
            .connection
            .execute(
                "UPDATE group_inbound_sessions SET sender_account = 66 WHERE session_id = ?1",
                [&ids[1]],
            )
            .expect("tamper");
        drop(store);
        assert!(reopen(dir.path()).load_group_keys(carol).is_err());

        let error = GroupKeyError::UnknownSession {
            group: GROUP,
            sender: ALICE,
            session_id: ids[0].clone(),
        };
        assert_eq!(ClientError::from(error).code(), "group_session");
    }
}
