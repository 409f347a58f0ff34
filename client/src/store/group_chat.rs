//! Group chats (schema version 5): the membership each group was last known at, the group's
//! messages, and the group messages waiting for their session's key.
//!
//! **Membership.** `group_known` holds the version and members a device last learned for a
//! group (from the directory's answer to a send, `GroupChanged`); a version never goes back,
//! so a late answer cannot undo a newer one. The members' devices are the `devices` table's,
//! kept current by key claims and "mismatched devices" as for 1:1 chats.
//!
//! **Messages.** One row per group message, sent or received, keyed like `messages` by its
//! sending device and id. A text typed here is stored with no `sender_seq`: the outbox numbers
//! group texts one by one, in the order they were typed, when it builds their envelopes (so a
//! key share can take the numbers before the first message that needs it). The per-device
//! receipts of a sent group message are the `receipts` table's, as for 1:1 messages.
//!
//! **Waiting.** A group message can arrive before the key of its session (the key travels in
//! a key share that a rebuilt envelope puts after it). It waits here, as fetched, until a key
//! for its session arrives; at most `GROUP_WAITING_MESSAGES_MAX` wait, and the one waiting
//! longest is given up (recorded undecryptable) for a newer one.

use std::collections::BTreeMap;

use relay_proto::{AccountId, ClientMessageId, DeviceAddress};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{RecipientState, Store, Tick, Writer, address, to_i64, to_u64};
use crate::error::{ClientError, Result};

/// A group's membership as this device last learned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownGroup {
    /// The directory's version of the group.
    pub version: u64,
    /// The member accounts, sorted.
    pub members: Vec<AccountId>,
}

/// A group message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGroupMessage<'a> {
    /// The group.
    pub group: u64,
    /// Whether this account sent it.
    pub outgoing: bool,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The sender's id for it.
    pub client_message_id: ClientMessageId,
    /// The sender's counter in the group's chat (`None`: typed here, not numbered yet).
    pub sender_seq: Option<u64>,
    /// The home region's chat sequence, once known.
    pub chat_seq: Option<u64>,
    /// The text (`None` when it could not be decrypted).
    pub text: Option<&'a str>,
    /// The attached file, encoded ([`crate::media::Attachment::to_bytes`]), if any.
    pub attachment: Option<&'a [u8]>,
    /// When the sender wrote it (ms since the Unix epoch, the sender's clock).
    pub sent_at_ms: u64,
    /// When the region committed it.
    pub server_time_ms: Option<u64>,
    /// The tick.
    pub tick: Tick,
    /// Why it could not be decrypted.
    pub undecryptable: Option<&'a str>,
}

/// A stored group message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGroupMessage {
    /// The row (order of arrival on this device).
    pub row: i64,
    /// The group.
    pub group: u64,
    /// Whether this account sent it.
    pub outgoing: bool,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The sender's id for it.
    pub client_message_id: ClientMessageId,
    /// The sender's counter in the group's chat (`None` until numbered).
    pub sender_seq: Option<u64>,
    /// The home region's chat sequence.
    pub chat_seq: Option<u64>,
    /// The text (a file's caption).
    pub text: Option<String>,
    /// The attached file, encoded ([`crate::media::Attachment::to_bytes`]), if any.
    pub attachment: Option<Vec<u8>>,
    /// When the sender wrote it.
    pub sent_at_ms: u64,
    /// When the region committed it.
    pub server_time_ms: Option<u64>,
    /// The tick (outgoing messages).
    pub tick: Tick,
    /// Why it could not be decrypted.
    pub undecryptable: Option<String>,
    /// Why it was given up.
    pub failed: Option<String>,
}

/// A group text typed here and not numbered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnnumberedText {
    /// Its id.
    pub client_message_id: ClientMessageId,
    /// The text.
    pub text: String,
    /// The attached file, encoded, if any.
    pub attachment: Option<Vec<u8>>,
    /// When it was typed.
    pub sent_at_ms: u64,
}

const MESSAGE_COLUMNS: &str = "id, group_id, outgoing, sender_account, sender_device, \
     client_message_id, sender_seq, chat_seq, text, sent_at_ms, server_time_ms, tick, \
     undecryptable, failed, attachment";

impl Store {
    /// The membership `group` was last known at.
    pub fn group_known(&self, group: u64) -> Result<Option<KnownGroup>> {
        group_known(&self.connection, group)
    }

    /// The groups with texts typed here and not numbered yet.
    pub fn groups_with_unnumbered_texts(&self) -> Result<Vec<u64>> {
        let mut statement = self.connection.prepare(
            "SELECT DISTINCT group_id FROM group_messages
             WHERE outgoing = 1 AND sender_seq IS NULL AND failed IS NULL",
        )?;
        let rows = statement.query_map([], |row| row.get::<_, i64>(0))?;
        let mut groups = Vec::new();
        for row in rows {
            groups.push(to_u64(row?));
        }
        Ok(groups)
    }

    /// The groups and ids of the texts `me` typed that the outbox has not numbered yet.
    pub fn unnumbered_group_texts(&self, me: DeviceAddress) -> Result<Vec<(u64, ClientMessageId)>> {
        unnumbered_texts(&self.connection, me)
    }

    /// The messages of `group` in the chat's order as this device's home region numbered it
    /// (its chat sequence), then those not sequenced yet (pending) in the order they were
    /// typed; at most `limit` of the latest.
    pub fn group_history(&self, group: u64, limit: usize) -> Result<Vec<StoredGroupMessage>> {
        let mut statement = self.connection.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM group_messages WHERE group_id = ?1
             ORDER BY chat_seq IS NULL DESC, chat_seq DESC, id DESC LIMIT ?2"
        ))?;
        let rows = statement.query_map(
            params![to_i64(group), i64::try_from(limit).unwrap_or(i64::MAX)],
            group_message_row,
        )?;
        let mut messages = Vec::new();
        for row in rows {
            messages.push(row??);
        }
        messages.reverse();
        Ok(messages)
    }

    /// A group message of `sender`.
    pub fn group_message(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
    ) -> Result<Option<StoredGroupMessage>> {
        group_message(&self.connection, sender, client_message_id)
    }

    /// Group messages whose id (hex) starts with `prefix`, at most `limit`.
    pub fn group_messages_by_id_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<StoredGroupMessage>> {
        let mut statement = self.connection.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM group_messages
             WHERE lower(hex(client_message_id)) LIKE ?1 ORDER BY id LIMIT ?2"
        ))?;
        let pattern = format!("{}%", prefix.replace(['%', '_'], ""));
        let rows = statement.query_map(
            params![pattern, i64::try_from(limit).unwrap_or(i64::MAX)],
            group_message_row,
        )?;
        let mut messages = Vec::new();
        for row in rows {
            messages.push(row??);
        }
        Ok(messages)
    }

    /// How many group messages wait for their session's key.
    pub fn group_waiting_count(&self) -> Result<u64> {
        let count: i64 =
            self.connection
                .query_row("SELECT COUNT(*) FROM group_waiting", [], |row| row.get(0))?;
        Ok(to_u64(count))
    }
}

impl Writer<'_> {
    /// The membership `group` was last known at.
    pub fn group_known(&self, group: u64) -> Result<Option<KnownGroup>> {
        group_known(self.transaction, group)
    }

    /// Records `group` at `version` with `members`, unless a newer version is known; `true`
    /// when it changed.
    pub fn set_group_known(&self, group: u64, version: u64, members: &[AccountId]) -> Result<bool> {
        if let Some(known) = self.group_known(group)?
            && known.version >= version
        {
            return Ok(false);
        }
        self.execute(
            "INSERT OR REPLACE INTO group_known (group_id, version) VALUES (?1, ?2)",
            params![to_i64(group), to_i64(version)],
        )?;
        self.execute(
            "DELETE FROM group_known_members WHERE group_id = ?1",
            [to_i64(group)],
        )?;
        for member in members {
            self.execute(
                "INSERT OR IGNORE INTO group_known_members (group_id, account) VALUES (?1, ?2)",
                params![to_i64(group), to_i64(member.0)],
            )?;
        }
        Ok(true)
    }

    /// Stores a group message; `false` if one with its sender and id is stored already.
    pub fn insert_group_message(&self, message: &NewGroupMessage<'_>) -> Result<bool> {
        let inserted = self.execute(
            "INSERT OR IGNORE INTO group_messages (group_id, outgoing, sender_account,
             sender_device, client_message_id, sender_seq, chat_seq, text, sent_at_ms,
             server_time_ms, tick, undecryptable, attachment)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                to_i64(message.group),
                message.outgoing,
                to_i64(message.sender.account.0),
                message.sender.device.0,
                message.client_message_id.0.as_slice(),
                message.sender_seq.map(to_i64),
                message.chat_seq.map(to_i64),
                message.text,
                to_i64(message.sent_at_ms),
                message.server_time_ms.map(to_i64),
                message.tick as i64,
                message.undecryptable,
                message.attachment,
            ],
        )?;
        Ok(inserted == 1)
    }

    /// The oldest text typed here for `group` and not numbered yet.
    pub fn next_unnumbered_text(&self, group: u64) -> Result<Option<UnnumberedText>> {
        let row = self
            .transaction
            .query_row(
                "SELECT client_message_id, text, sent_at_ms, attachment FROM group_messages
                 WHERE group_id = ?1 AND outgoing = 1 AND sender_seq IS NULL AND failed IS NULL
                 ORDER BY id LIMIT 1",
                [to_i64(group)],
                |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, Option<String>>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, Option<Vec<u8>>>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((id, text, sent_at_ms, attachment)) = row else {
            return Ok(None);
        };
        Ok(Some(UnnumberedText {
            client_message_id: ClientMessageId::from_bytes(&id)
                .map_err(|error| ClientError::Corrupt(error.to_string()))?,
            text: text.unwrap_or_default(),
            attachment,
            sent_at_ms: to_u64(sent_at_ms),
        }))
    }

    /// Gives a group text typed by `me` its sender_seq.
    pub fn number_group_text(
        &self,
        me: DeviceAddress,
        client_message_id: ClientMessageId,
        sender_seq: u64,
    ) -> Result<()> {
        self.execute(
            "UPDATE group_messages SET sender_seq = ?1 WHERE sender_account = ?2
             AND sender_device = ?3 AND client_message_id = ?4",
            params![
                to_i64(sender_seq),
                to_i64(me.account.0),
                me.device.0,
                client_message_id.0.as_slice()
            ],
        )?;
        Ok(())
    }

    /// Records the chat sequence and commit time of a group message `me` sent, and moves its
    /// tick to sent; `true` if the tick moved.
    pub fn set_group_sent(
        &self,
        me: DeviceAddress,
        client_message_id: ClientMessageId,
        chat_seq: Option<u64>,
        server_time_ms: Option<u64>,
    ) -> Result<bool> {
        self.execute(
            "UPDATE group_messages SET chat_seq = COALESCE(?1, chat_seq),
             server_time_ms = COALESCE(?2, server_time_ms) WHERE sender_account = ?3
             AND sender_device = ?4 AND client_message_id = ?5",
            params![
                chat_seq.map(to_i64),
                server_time_ms.map(to_i64),
                to_i64(me.account.0),
                me.device.0,
                client_message_id.0.as_slice()
            ],
        )?;
        self.advance_group_tick(me, client_message_id, Tick::Sent)
    }

    /// Moves a group message's tick forward to `tick` (never back); `true` if it moved.
    pub fn advance_group_tick(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        tick: Tick,
    ) -> Result<bool> {
        let changed = self.execute(
            "UPDATE group_messages SET tick = ?1 WHERE sender_account = ?2 AND sender_device = ?3
             AND client_message_id = ?4 AND tick < ?1 AND failed IS NULL",
            params![
                tick as i64,
                to_i64(sender.account.0),
                sender.device.0,
                client_message_id.0.as_slice()
            ],
        )?;
        Ok(changed == 1)
    }

    /// Marks a group message `me` sent as given up.
    pub fn mark_group_failed(
        &self,
        me: DeviceAddress,
        client_message_id: ClientMessageId,
        reason: &str,
    ) -> Result<bool> {
        let changed = self.execute(
            "UPDATE group_messages SET failed = ?1 WHERE sender_account = ?2
             AND sender_device = ?3 AND client_message_id = ?4 AND failed IS NULL",
            params![
                reason,
                to_i64(me.account.0),
                me.device.0,
                client_message_id.0.as_slice()
            ],
        )?;
        Ok(changed == 1)
    }

    /// Incoming messages of `group` not read yet, oldest first: their senders and ids.
    pub fn unread_group_messages(
        &self,
        group: u64,
    ) -> Result<Vec<(DeviceAddress, ClientMessageId)>> {
        let mut statement = self.transaction.prepare(
            "SELECT sender_account, sender_device, client_message_id FROM group_messages
             WHERE group_id = ?1 AND outgoing = 0 AND read_at_ms IS NULL AND text IS NOT NULL
             ORDER BY id",
        )?;
        let rows = statement.query_map([to_i64(group)], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut unread = Vec::new();
        for row in rows {
            let (account, device, id) = row?;
            let id = ClientMessageId::from_bytes(&id)
                .map_err(|error| ClientError::Corrupt(error.to_string()))?;
            unread.push((address(account, device), id));
        }
        Ok(unread)
    }

    /// Marks messages of `group` from `sender_account` read here (another own device read them,
    /// or this one did); how many changed.
    pub fn mark_group_read_locally(
        &self,
        group: u64,
        sender_account: AccountId,
        client_message_ids: &[ClientMessageId],
        at_ms: u64,
    ) -> Result<usize> {
        let mut changed = 0;
        for id in client_message_ids {
            changed += self.execute(
                "UPDATE group_messages SET read_at_ms = ?1 WHERE group_id = ?2
                 AND sender_account = ?3 AND outgoing = 0 AND client_message_id = ?4
                 AND read_at_ms IS NULL",
                params![
                    to_i64(at_ms),
                    to_i64(group),
                    to_i64(sender_account.0),
                    id.0.as_slice()
                ],
            )?;
        }
        Ok(changed)
    }

    /// Whether every member account a group message `me` sent went to (other than this one)
    /// has read it on some device; `false` with none.
    pub fn group_read_by_all(
        &self,
        me: DeviceAddress,
        client_message_id: ClientMessageId,
    ) -> Result<bool> {
        let rows = super::messages::recipients(self.transaction, me, client_message_id)?;
        let mut accounts: BTreeMap<AccountId, bool> = BTreeMap::new();
        for row in rows {
            if row.device.account == me.account {
                continue;
            }
            *accounts.entry(row.device.account).or_default() |= row.state == RecipientState::Read;
        }
        Ok(!accounts.is_empty() && accounts.values().all(|read| *read))
    }

    /// Gives up every group text `me` typed and the outbox has not numbered; returns their
    /// groups and ids.
    pub fn fail_unnumbered_group_texts(
        &self,
        me: DeviceAddress,
        reason: &str,
    ) -> Result<Vec<(u64, ClientMessageId)>> {
        let failed = unnumbered_texts(self.transaction, me)?;
        for (_, id) in &failed {
            self.mark_group_failed(me, *id, reason)?;
        }
        Ok(failed)
    }

    /// A group message of `sender`, read under this transaction's lock.
    pub fn group_message(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
    ) -> Result<Option<StoredGroupMessage>> {
        group_message(self.transaction, sender, client_message_id)
    }

    /// Sets the recipient devices of a group message `me` sends: each gets a pending row, and
    /// pending rows of devices no longer among them go (a rebuilt envelope for a new
    /// membership). Rows that moved on stay.
    pub fn set_group_recipients(
        &self,
        me: DeviceAddress,
        client_message_id: ClientMessageId,
        devices: &[DeviceAddress],
    ) -> Result<()> {
        let keep: Vec<DeviceAddress> = devices
            .iter()
            .copied()
            .filter(|device| *device != me)
            .collect();
        self.keep_recipients(me, client_message_id, &keep)
    }

    /// Records that `recipient`'s copy of a group message `me` sent reached `state`; `true`
    /// if its row moved forward. A device the message was not sent to gets no row.
    pub fn record_group_receipt(
        &self,
        me: DeviceAddress,
        client_message_id: ClientMessageId,
        recipient: DeviceAddress,
        state: RecipientState,
        at_ms: u64,
    ) -> Result<bool> {
        let rows = super::messages::recipients(self.transaction, me, client_message_id)?;
        match rows.iter().find(|row| row.device == recipient) {
            Some(row) => self.advance_recipient(me, client_message_id, row, state, at_ms),
            None => Ok(false),
        }
    }

    /// Whether every recipient device of a group message `me` sent has it (delivered or
    /// read), not counting copies that expired; `false` with no recipient at all.
    pub fn group_delivered_to_all(
        &self,
        me: DeviceAddress,
        client_message_id: ClientMessageId,
    ) -> Result<bool> {
        let rows = super::messages::recipients(self.transaction, me, client_message_id)?;
        let mut reached = 0;
        for row in &rows {
            match row.state {
                RecipientState::Delivered | RecipientState::Read => reached += 1,
                RecipientState::Expired => {}
                RecipientState::Pending | RecipientState::Sent => return Ok(false),
            }
        }
        Ok(reached > 0)
    }

    /// Keeps a fetched group message (its encoded `QueuedMessage`) until a key for
    /// `session_id` arrives; `false` if it waits already. Gives up the one waiting longest
    /// when `max` wait, returning it.
    pub fn add_group_waiting(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        session_id: &str,
        message: &[u8],
        now_ms: u64,
        max: u64,
    ) -> Result<(bool, Option<Vec<u8>>)> {
        let mut evicted = None;
        let count: i64 =
            self.transaction
                .query_row("SELECT COUNT(*) FROM group_waiting", [], |row| row.get(0))?;
        if to_u64(count) >= max {
            let oldest = self
                .transaction
                .query_row(
                    "SELECT sender_account, sender_device, client_message_id, message
                     FROM group_waiting ORDER BY arrived_at_ms, client_message_id LIMIT 1",
                    [],
                    |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, Vec<u8>>(2)?,
                            row.get::<_, Vec<u8>>(3)?,
                        ))
                    },
                )
                .optional()?;
            if let Some((account, device, id, bytes)) = oldest {
                self.execute(
                    "DELETE FROM group_waiting WHERE sender_account = ?1 AND sender_device = ?2
                     AND client_message_id = ?3",
                    params![account, device, id],
                )?;
                evicted = Some(bytes);
            }
        }
        let inserted = self.execute(
            "INSERT OR IGNORE INTO group_waiting (sender_account, sender_device,
             client_message_id, session_id, arrived_at_ms, message)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                to_i64(sender.account.0),
                sender.device.0,
                client_message_id.0.as_slice(),
                session_id,
                to_i64(now_ms),
                message
            ],
        )?;
        Ok((inserted == 1, evicted))
    }

    /// Takes every group message waiting for a key of `session_id`, in order of arrival.
    pub fn take_group_waiting(&self, session_id: &str) -> Result<Vec<Vec<u8>>> {
        let mut statement = self.transaction.prepare(
            "SELECT message FROM group_waiting WHERE session_id = ?1
             ORDER BY arrived_at_ms, client_message_id",
        )?;
        let rows = statement.query_map([session_id], |row| row.get::<_, Vec<u8>>(0))?;
        let mut messages = Vec::new();
        for row in rows {
            messages.push(row?);
        }
        self.execute(
            "DELETE FROM group_waiting WHERE session_id = ?1",
            [session_id],
        )?;
        Ok(messages)
    }
}

/// The groups and ids of the texts `me` typed that the outbox has not numbered (nor given
/// up), in the order they were typed.
fn unnumbered_texts(
    connection: &Connection,
    me: DeviceAddress,
) -> Result<Vec<(u64, ClientMessageId)>> {
    let mut statement = connection.prepare(
        "SELECT group_id, client_message_id FROM group_messages
         WHERE outgoing = 1 AND sender_seq IS NULL AND failed IS NULL
         AND sender_account = ?1 AND sender_device = ?2 ORDER BY id",
    )?;
    let rows = statement.query_map(params![to_i64(me.account.0), me.device.0], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
    })?;
    let mut texts = Vec::new();
    for row in rows {
        let (group, id) = row?;
        let id = ClientMessageId::from_bytes(&id)
            .map_err(|error| ClientError::Corrupt(error.to_string()))?;
        texts.push((to_u64(group), id));
    }
    Ok(texts)
}

fn group_known(connection: &Connection, group: u64) -> Result<Option<KnownGroup>> {
    let version: Option<i64> = connection
        .query_row(
            "SELECT version FROM group_known WHERE group_id = ?1",
            [to_i64(group)],
            |row| row.get(0),
        )
        .optional()?;
    let Some(version) = version else {
        return Ok(None);
    };
    let mut statement = connection
        .prepare("SELECT account FROM group_known_members WHERE group_id = ?1 ORDER BY account")?;
    let rows = statement.query_map([to_i64(group)], |row| row.get::<_, i64>(0))?;
    let mut members = Vec::new();
    for row in rows {
        members.push(AccountId(to_u64(row?)));
    }
    Ok(Some(KnownGroup {
        version: to_u64(version),
        members,
    }))
}

fn group_message(
    connection: &Connection,
    sender: DeviceAddress,
    client_message_id: ClientMessageId,
) -> Result<Option<StoredGroupMessage>> {
    let row = connection
        .query_row(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM group_messages WHERE sender_account = ?1
                 AND sender_device = ?2 AND client_message_id = ?3"
            ),
            params![
                to_i64(sender.account.0),
                sender.device.0,
                client_message_id.0.as_slice()
            ],
            group_message_row,
        )
        .optional()?;
    row.transpose()
}

fn group_message_row(row: &Row<'_>) -> rusqlite::Result<Result<StoredGroupMessage>> {
    let id: Vec<u8> = row.get(5)?;
    let tick: i64 = row.get(11)?;
    let parsed = (|| {
        Ok(StoredGroupMessage {
            row: row.get(0)?,
            group: to_u64(row.get(1)?),
            outgoing: row.get(2)?,
            sender: address(row.get(3)?, row.get(4)?),
            client_message_id: ClientMessageId::from_bytes(&id)
                .map_err(|error| ClientError::Corrupt(error.to_string()))?,
            sender_seq: row.get::<_, Option<i64>>(6)?.map(to_u64),
            chat_seq: row.get::<_, Option<i64>>(7)?.map(to_u64),
            text: row.get(8)?,
            sent_at_ms: to_u64(row.get(9)?),
            server_time_ms: row.get::<_, Option<i64>>(10)?.map(to_u64),
            tick: Tick::from_i64(tick)?,
            undecryptable: row.get(12)?,
            failed: row.get(13)?,
            attachment: row.get(14)?,
        })
    })();
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{device, open};

    #[test]
    fn membership_only_moves_to_newer_versions() {
        let (_dir, mut store) = open();
        let (a, b, c) = (AccountId(1), AccountId(2), AccountId(3));
        assert!(store.group_known(7).expect("read").is_none());
        assert!(
            store
                .write(|w| w.set_group_known(7, 2, &[b, a]))
                .expect("set")
        );
        assert!(
            !store
                .write(|w| w.set_group_known(7, 1, &[a]))
                .expect("older")
        );
        assert!(
            store
                .write(|w| w.set_group_known(7, 3, &[a, c]))
                .expect("newer")
        );
        assert_eq!(
            store.group_known(7).expect("read"),
            Some(KnownGroup {
                version: 3,
                members: vec![a, c]
            })
        );
    }

    #[test]
    fn typed_texts_are_numbered_in_order_and_receipts_only_move_forward() {
        let (_dir, mut store) = open();
        let me = device(1, 1);
        let (first, second) = (ClientMessageId([1; 16]), ClientMessageId([2; 16]));
        store
            .write(|w| {
                for (id, text) in [(first, "one"), (second, "two")] {
                    w.insert_group_message(&NewGroupMessage {
                        group: 5,
                        outgoing: true,
                        sender: me,
                        client_message_id: id,
                        sender_seq: None,
                        chat_seq: None,
                        text: Some(text),
                        attachment: None,
                        sent_at_ms: 10,
                        server_time_ms: None,
                        tick: Tick::Pending,
                        undecryptable: None,
                    })?;
                }
                Ok(())
            })
            .expect("typed");
        assert_eq!(store.groups_with_unnumbered_texts().expect("groups"), [5]);
        let next = store
            .write(|w| w.next_unnumbered_text(5))
            .expect("next")
            .expect("some");
        assert_eq!((next.client_message_id, next.text.as_str()), (first, "one"));
        store
            .write(|w| w.number_group_text(me, first, 1))
            .expect("numbered");
        let next = store
            .write(|w| w.next_unnumbered_text(5))
            .expect("next")
            .expect("some");
        assert_eq!(next.client_message_id, second);

        let (b1, c1, stranger) = (device(2, 1), device(3, 1), device(9, 1));
        store
            .write(|w| w.set_group_recipients(me, first, &[b1, c1, me]))
            .expect("recipients");
        let record = |store: &mut Store, device, state| {
            store
                .write(|w| w.record_group_receipt(me, first, device, state, 20))
                .expect("receipt")
        };
        assert!(!record(&mut store, stranger, RecipientState::Delivered));
        assert!(record(&mut store, b1, RecipientState::Delivered));
        assert!(!record(&mut store, b1, RecipientState::Delivered), "again");
        assert!(
            !store
                .write(|w| w.group_delivered_to_all(me, first))
                .expect("all")
        );
        assert!(record(&mut store, c1, RecipientState::Read));
        assert!(!record(&mut store, c1, RecipientState::Delivered), "back");
        assert!(
            store
                .write(|w| w.group_delivered_to_all(me, first))
                .expect("all")
        );
        assert!(
            store
                .write(|w| w.set_group_sent(me, first, Some(4), Some(99)))
                .expect("sent")
        );
        let stored = store.group_message(me, first).expect("read").expect("some");
        assert_eq!(
            (stored.chat_seq, stored.tick, stored.sender_seq),
            (Some(4), Tick::Sent, Some(1))
        );
        assert_eq!(store.group_history(5, 10).expect("history").len(), 2);
    }

    #[test]
    fn waiting_messages_are_bounded_and_taken_by_session() {
        let (_dir, mut store) = open();
        let sender = device(2, 1);
        for index in 0..3u8 {
            let (added, evicted) = store
                .write(|w| {
                    w.add_group_waiting(
                        sender,
                        ClientMessageId([index; 16]),
                        if index == 1 { "s2" } else { "s1" },
                        &[index],
                        u64::from(index),
                        2,
                    )
                })
                .expect("wait");
            assert!(added);
            assert_eq!(evicted, (index == 2).then(|| vec![0]));
        }
        assert_eq!(store.group_waiting_count().expect("count"), 2);
        assert_eq!(
            store.write(|w| w.take_group_waiting("s1")).expect("take"),
            vec![vec![2]]
        );
        assert_eq!(store.group_waiting_count().expect("count"), 1);
    }
}
