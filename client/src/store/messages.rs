//! Messages of every chat, both directions (`messages`), with their ticks, and the
//! server-visible receipts of each recipient device (`receipts`): a tick and a receipt only
//! ever move forward.

use relay_planted::PlantedBug;
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId};
use rusqlite::{OptionalExtension, Row, params};

use super::{Store, Writer, address, to_i64, to_u32, to_u64};
use crate::error::{ClientError, Result};

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

impl Store {
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

    /// Decrypted messages of every chat with a chat sequence stored after row `after_row`, in
    /// row order: what the history's documents may lack (see [`crate::history`]).
    pub fn sequenced_after(&self, after_row: i64) -> Result<Vec<StoredMessage>> {
        let mut statement = self.connection.prepare(&format!(
            "{MESSAGE_COLUMNS} WHERE id > ?1 AND chat_seq IS NOT NULL AND text IS NOT NULL
             ORDER BY id"
        ))?;
        let rows = statement.query_map([after_row], message_row)?;
        let mut messages = Vec::new();
        for row in rows {
            messages.push(row??);
        }
        Ok(messages)
    }

    /// The highest row every row up to which is in the history's documents once the rows
    /// [`Store::sequenced_after`] returns are: short of the first outgoing message still
    /// waiting for its chat sequence.
    pub fn history_rows_settled(&self) -> Result<i64> {
        // `ORDER BY id LIMIT 1` rather than `min(id)`: SQLite answers the latter by walking the
        // table from its first row, the former from the partial index `messages_waiting`.
        let waiting: Option<i64> = self
            .connection
            .query_row(
                "SELECT id FROM messages WHERE outgoing = 1 AND chat_seq IS NULL
                 AND failed IS NULL AND text IS NOT NULL ORDER BY id LIMIT 1",
                [],
                |row| row.get(0),
            )
            .optional()?;
        let last: Option<i64> =
            self.connection
                .query_row("SELECT max(id) FROM messages", [], |row| row.get(0))?;
        Ok(match waiting {
            Some(row) => row - 1,
            None => last.unwrap_or(0),
        })
    }

    /// Folds the write-ahead log into the database and empties it, so content zeroed in the
    /// database (`secure_delete`) leaves no older copy of its pages in the log. Another process
    /// reading the database at the time may keep part of the log; the next call empties it.
    pub fn checkpoint(&self) -> Result<()> {
        self.connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
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
}

impl Writer<'_> {
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

    /// Inserts a message; `false` when one with the same sender and id exists already.
    pub fn insert_message(&self, message: &NewMessage<'_>) -> Result<bool> {
        let inserted = self.execute(
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

    /// Records the region's sequence and time of a sent message.
    pub fn set_sequenced(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        chat_seq: Option<u64>,
        server_time_ms: Option<u64>,
    ) -> Result<()> {
        self.execute(
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
        let changed = self.execute(
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
            changed += self.execute(
                "UPDATE messages SET read_at_ms = ?1 WHERE peer = ?2 AND outgoing = 0
                 AND client_message_id = ?3 AND read_at_ms IS NULL",
                params![to_i64(at_ms), to_i64(peer.0), id.0.as_slice()],
            )?;
        }
        Ok(changed)
    }

    /// Forgets a message's text and every copy of it this store holds (its outbox entry, not
    /// sent yet, is given up), after a deletion for everyone; `secure_delete` zeroes the
    /// freed bytes. The row stays, for its ticks and receipts.
    pub fn scrub_text(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
    ) -> Result<()> {
        self.execute(
            "UPDATE messages SET text = NULL WHERE sender_account = ?1 AND sender_device = ?2
             AND client_message_id = ?3",
            params![
                to_i64(sender.account.0),
                sender.device.0,
                client_message_id.0.as_slice()
            ],
        )?;
        self.execute(
            "DELETE FROM drafts WHERE client_message_id = ?1",
            params![client_message_id.0.as_slice()],
        )?;
        Ok(())
    }

    /// Marks a message given up, with the reason.
    pub fn mark_failed(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        reason: &str,
    ) -> Result<()> {
        self.execute(
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
        let changed = self.execute(
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
        self.execute(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::SEEN_RETENTION_MS;
    use crate::store::testing::{device, open};

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
}
