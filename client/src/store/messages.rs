//! Messages of every chat, both directions (`messages`), with their ticks, and the state of
//! each recipient device of an outgoing message (`receipts`): a tick and a device's state only
//! ever move forward.
//!
//! Recipients: the device that sends a message records, when it builds the envelope, one row
//! per device the envelope is encrypted for (the peer's devices and this account's other
//! devices), `pending` until the regions commit it, then `sent`; a re-encryption for a changed
//! device list replaces the rows still pending. A receipt only moves an existing row forward
//! (`pending < sent < delivered < read`; `expired` only from `pending` or `sent`), so a
//! duplicated or reordered receipt changes nothing, and a receipt for a device that is not a
//! recipient makes no row. The account's other devices never see the envelope: for a message
//! they know as a copy, a row is made by the first receipt of each device of the peer or of
//! this account other than the sender, and then moves forward like the others (a message this
//! device sent before rows were kept gets a row for the first receipt's device only).
//!
//! The tick aggregates the rows (what WhatsApp shows in a 1:1 chat): `delivered` once every
//! current device of the peer among the recipients has it delivered (or read; an expired copy
//! does not hold the tick back), `read` once any device of the peer read it. A read receipt
//! arriving while read receipts are off is dropped (see [`Writer::mark_read_by_peer`]).

use relay_planted::PlantedBug;
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId};
use rusqlite::{OptionalExtension, Row, params};

use super::{Store, Writer, address, to_i64, to_u32, to_u64};
use crate::error::{ClientError, Result};
use crate::limits::{CHECKPOINT_ATTEMPTS_MAX, CHECKPOINT_RETRY_MS};

/// How far a sent message got. Only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tick {
    /// In the outbox.
    Pending = 0,
    /// Stored by every destination region (✓).
    Sent = 1,
    /// Every current device of the peer among its recipients acknowledged it (✓✓).
    Delivered = 2,
    /// A device of the peer read it (shown only while read receipts are on).
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

/// Where one recipient device stands with one outgoing message. Moves forward only:
/// `Pending < Sent < Delivered < Read`, and `Expired` only from `Pending` or `Sent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecipientState {
    /// The envelope is in the outbox.
    Pending = 0,
    /// Every destination region stored it.
    Sent = 1,
    /// The device acknowledged it (a receipt from its region).
    Delivered = 2,
    /// The device's account read it on this device (an end-to-end encrypted read receipt).
    Read = 3,
    /// The device's copy expired undelivered.
    Expired = 4,
}

impl RecipientState {
    /// The state for a stored number (the wire's receipt states keep their numbers).
    pub fn from_i64(value: i64) -> Result<Self> {
        match value {
            0 => Ok(RecipientState::Pending),
            1 => Ok(RecipientState::Sent),
            2 => Ok(RecipientState::Delivered),
            3 => Ok(RecipientState::Read),
            4 => Ok(RecipientState::Expired),
            other => Err(ClientError::Corrupt(format!("recipient state {other}"))),
        }
    }

    /// The lowercase name used in output: `pending`, `sent`, `delivered`, `read`, `expired`.
    pub fn name(self) -> &'static str {
        match self {
            RecipientState::Pending => "pending",
            RecipientState::Sent => "sent",
            RecipientState::Delivered => "delivered",
            RecipientState::Read => "read",
            RecipientState::Expired => "expired",
        }
    }

    /// Whether a device in state `self` may move to `next`: forward only, and to `Expired`
    /// only from before delivery (a copy acknowledged or read cannot expire undelivered).
    pub fn advances_to(self, next: RecipientState) -> bool {
        match (self, next) {
            (_, RecipientState::Expired) => self < RecipientState::Delivered,
            (RecipientState::Expired, _) => false,
            _ => next > self,
        }
    }
}

/// One recipient device of an outgoing message and where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientReceipt {
    /// The recipient device.
    pub device: DeviceAddress,
    /// Its state.
    pub state: RecipientState,
    /// When the state last changed (ms; the region's or the reader's clock).
    pub at_ms: u64,
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
    /// The text (a file's caption); `None` when undecryptable or deleted.
    pub text: Option<String>,
    /// The attached file as [`crate::media::Attachment::to_bytes`] encodes it, if any.
    pub attachment: Option<Vec<u8>>,
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
    /// The attached file, encoded ([`crate::media::Attachment::to_bytes`]), if any.
    pub attachment: Option<&'a [u8]>,
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
    /// database (`secure_delete`) leaves no older copy of its pages in the log, and the zeroed
    /// pages reach the database file. Another process reading the database at the time keeps
    /// the checkpoint from finishing (SQLite answers "busy"): it is tried again, at most
    /// [`CHECKPOINT_ATTEMPTS_MAX`] times [`CHECKPOINT_RETRY_MS`] apart, and what is left then
    /// goes with the next call.
    pub fn checkpoint(&self) -> Result<()> {
        for attempt in 1..=CHECKPOINT_ATTEMPTS_MAX {
            let busy: i64 =
                self.connection
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
            if busy == 0 {
                break;
            }
            if attempt < CHECKPOINT_ATTEMPTS_MAX {
                std::thread::sleep(std::time::Duration::from_millis(CHECKPOINT_RETRY_MS));
            }
        }
        Ok(())
    }

    /// The recipient devices of a message and their states, ordered by account and device.
    pub fn recipients(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
    ) -> Result<Vec<RecipientReceipt>> {
        recipients(&self.connection, sender, client_message_id)
    }

    /// The messages (of every chat) whose id starts with `prefix` (lowercase hex digits), at
    /// most `limit` of them.
    pub fn messages_by_id_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<StoredMessage>> {
        let mut statement = self.connection.prepare(&format!(
            "{MESSAGE_COLUMNS} WHERE lower(hex(client_message_id)) LIKE ?1 ORDER BY id LIMIT ?2"
        ))?;
        let pattern = format!("{}%", prefix.replace(['%', '_'], ""));
        let rows = statement.query_map(params![pattern, to_i64(limit as u64)], message_row)?;
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
             undecryptable, attachment)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
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
                message.attachment,
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

    /// Records that `reader` (a device of `peer`) read outgoing messages of this account in
    /// the chat with `peer`, and moves their ticks to read; returns the (sender, id) of each
    /// message whose tick moved. The caller drops read receipts while read receipts are off.
    pub fn mark_read_by_peer(
        &self,
        peer: AccountId,
        me: DeviceAddress,
        reader: DeviceAddress,
        client_message_ids: &[ClientMessageId],
        at_ms: u64,
    ) -> Result<Vec<(DeviceAddress, ClientMessageId)>> {
        if reader.account != peer {
            return Ok(Vec::new()); // Only the peer's devices tell this account what they read.
        }
        let own_account = me.account;
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
                self.record_receipt(sender, *id, reader, RecipientState::Read, at_ms, me)?;
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
            "UPDATE messages SET text = NULL, attachment = NULL WHERE sender_account = ?1 AND sender_device = ?2
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

    /// Makes `devices` the recipients of a message this device is sending (its envelope's
    /// devices): rows still pending for other devices go, new ones start pending. Nothing for
    /// an envelope without a message row (a read receipt, a change, a sync message).
    pub fn set_recipients(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        devices: &[DeviceAddress],
    ) -> Result<()> {
        let Some(peer) = self.message_peer(sender, client_message_id)? else {
            return Ok(());
        };
        let keep: Vec<DeviceAddress> = devices
            .iter()
            .copied()
            .filter(|device| is_possible_recipient(sender, peer, *device))
            .collect();
        self.keep_recipients(sender, client_message_id, &keep)
    }

    /// Makes `keep` the recipients of a message `sender` sends: each gets a pending row, and
    /// pending rows of other devices go (a rebuilt envelope's). Rows that moved on stay.
    pub(super) fn keep_recipients(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        keep: &[DeviceAddress],
    ) -> Result<()> {
        for row in recipients(self.transaction, sender, client_message_id)? {
            if row.state == RecipientState::Pending && !keep.contains(&row.device) {
                self.execute(
                    "DELETE FROM receipts WHERE sender_account = ?1 AND sender_device = ?2
                     AND client_message_id = ?3 AND recipient_account = ?4
                     AND recipient_device = ?5",
                    params![
                        to_i64(sender.account.0),
                        sender.device.0,
                        client_message_id.0.as_slice(),
                        to_i64(row.device.account.0),
                        row.device.device.0
                    ],
                )?;
            }
        }
        for device in keep {
            self.insert_recipient(
                sender,
                client_message_id,
                *device,
                RecipientState::Pending,
                0,
            )?;
        }
        Ok(())
    }

    /// Moves every recipient still pending to sent: the regions committed the envelope.
    pub fn mark_recipients_sent(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        at_ms: u64,
    ) -> Result<()> {
        self.execute(
            "UPDATE receipts SET state = ?1, at_ms = ?2 WHERE sender_account = ?3
             AND sender_device = ?4 AND client_message_id = ?5 AND state = ?6",
            params![
                RecipientState::Sent as i64,
                to_i64(at_ms),
                to_i64(sender.account.0),
                sender.device.0,
                client_message_id.0.as_slice(),
                RecipientState::Pending as i64
            ],
        )?;
        Ok(())
    }

    /// Records, on device `me`, that recipient device `recipient` of a message reached `state`
    /// (see the module doc for which devices get a row); `true` when its row is new or moved forward. A
    /// receipt for an unknown message, for a device that is not a recipient, or that would
    /// move a state back changes nothing.
    pub fn record_receipt(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        recipient: DeviceAddress,
        state: RecipientState,
        at_ms: u64,
        me: DeviceAddress,
    ) -> Result<bool> {
        let Some(peer) = self.message_peer(sender, client_message_id)? else {
            return Ok(false);
        };
        if !is_possible_recipient(sender, peer, recipient) {
            return Ok(false);
        }
        let rows = recipients(self.transaction, sender, client_message_id)?;
        match rows.iter().find(|row| row.device == recipient) {
            Some(row) => self.advance_recipient(sender, client_message_id, row, state, at_ms),
            // This device sent it: its envelope named every recipient, so this one is none.
            None if sender == me && !rows.is_empty() => Ok(false),
            None => self.insert_recipient(sender, client_message_id, recipient, state, at_ms),
        }
    }

    /// Whether the tick of a message may show delivered: every current device of `peer` among
    /// its recipients has it delivered or read (an expired copy does not count), and one does.
    pub fn delivered_to_every_peer_device(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        peer: AccountId,
    ) -> Result<bool> {
        let mut reached = 0;
        for row in recipients(self.transaction, sender, client_message_id)? {
            if row.device.account != peer {
                continue;
            }
            match row.state {
                RecipientState::Delivered | RecipientState::Read => reached += 1,
                RecipientState::Expired => {}
                RecipientState::Pending | RecipientState::Sent => {
                    let removed = self
                        .known_devices(peer)?
                        .iter()
                        .any(|known| known.address == row.device && !known.current);
                    if !removed {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(reached > 0)
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

    /// Moves recipient `row` of a message `sender` sent to `state` if that is forward;
    /// `true` if it moved.
    pub(super) fn advance_recipient(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        row: &RecipientReceipt,
        state: RecipientState,
        at_ms: u64,
    ) -> Result<bool> {
        if !row.state.advances_to(state) {
            return Ok(false);
        }
        let changed = self.execute(
            "UPDATE receipts SET state = ?1, at_ms = ?2 WHERE sender_account = ?3
             AND sender_device = ?4 AND client_message_id = ?5
             AND recipient_account = ?6 AND recipient_device = ?7 AND state = ?8",
            params![
                state as i64,
                to_i64(at_ms),
                to_i64(sender.account.0),
                sender.device.0,
                client_message_id.0.as_slice(),
                to_i64(row.device.account.0),
                row.device.device.0,
                row.state as i64
            ],
        )?;
        Ok(changed == 1)
    }

    fn insert_recipient(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        recipient: DeviceAddress,
        state: RecipientState,
        at_ms: u64,
    ) -> Result<bool> {
        let inserted = self.execute(
            "INSERT OR IGNORE INTO receipts (sender_account, sender_device, client_message_id,
             recipient_account, recipient_device, state, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                to_i64(sender.account.0),
                sender.device.0,
                client_message_id.0.as_slice(),
                to_i64(recipient.account.0),
                recipient.device.0,
                state as i64,
                to_i64(at_ms)
            ],
        )?;
        Ok(inserted == 1)
    }
}

/// Whether `device` can be a recipient of a message of `sender` in the chat with `peer`: a
/// device of the peer or of the sender's account, other than the sender.
fn is_possible_recipient(sender: DeviceAddress, peer: AccountId, device: DeviceAddress) -> bool {
    device != sender && (device.account == peer || device.account == sender.account)
}

pub(super) fn recipients(
    connection: &rusqlite::Connection,
    sender: DeviceAddress,
    client_message_id: ClientMessageId,
) -> Result<Vec<RecipientReceipt>> {
    let mut statement = connection.prepare(
        "SELECT recipient_account, recipient_device, state, at_ms FROM receipts
         WHERE sender_account = ?1 AND sender_device = ?2 AND client_message_id = ?3
         ORDER BY recipient_account, recipient_device",
    )?;
    let rows = statement.query_map(
        params![
            to_i64(sender.account.0),
            sender.device.0,
            client_message_id.0.as_slice()
        ],
        |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
            ))
        },
    )?;
    let mut receipts = Vec::new();
    for row in rows {
        let (account, device, state, at_ms) = row?;
        receipts.push(RecipientReceipt {
            device: address(account, device),
            state: RecipientState::from_i64(state)?,
            at_ms: to_u64(at_ms),
        });
    }
    Ok(receipts)
}

const MESSAGE_COLUMNS: &str = "SELECT id, chat, peer, outgoing, sender_account, sender_device,
    client_message_id, sender_seq, chat_seq, text, sent_at_ms, server_time_ms, tick, read_at_ms,
    undecryptable, failed, expired_devices, attachment FROM messages";

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
            attachment: row.get(17)?,
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
            attachment: None,
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
            .write(|w| w.mark_read_by_peer(AccountId(2), me, device(2, 1), &[id], 98))
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

        // The message had no recipient rows (as one sent before they were kept): the read
        // receipt made the reader's.
        assert_eq!(states(&store, me, id), vec![(2, 1, "read")]);
    }

    /// An outgoing message of `sender` to account 2 with the recipients `devices`, sent.
    fn sent_message(
        store: &mut Store,
        sender: DeviceAddress,
        id: ClientMessageId,
        devices: &[DeviceAddress],
    ) {
        let message = NewMessage {
            chat: ChatId::direct(AccountId(1), AccountId(2)),
            peer: AccountId(2),
            outgoing: true,
            sender,
            client_message_id: id,
            sender_seq: 1,
            chat_seq: None,
            text: Some("hi"),
            attachment: None,
            sent_at_ms: 10,
            server_time_ms: None,
            tick: Tick::Pending,
            undecryptable: None,
        };
        store
            .write(|w| {
                w.insert_message(&message)?;
                w.set_recipients(sender, id, devices)?;
                w.mark_recipients_sent(sender, id, 20)
            })
            .expect("sent");
    }

    fn states(
        store: &Store,
        sender: DeviceAddress,
        id: ClientMessageId,
    ) -> Vec<(u64, u32, &'static str)> {
        store
            .recipients(sender, id)
            .expect("recipients")
            .iter()
            .map(|row| (row.device.account.0, row.device.device.0, row.state.name()))
            .collect()
    }

    #[test]
    fn recipient_states_only_move_forward() {
        use RecipientState::*;
        let all = [Pending, Sent, Delivered, Read, Expired];
        for from in all {
            for to in all {
                let expected = match to {
                    Expired => from < Delivered,
                    _ => from != Expired && to > from,
                };
                assert_eq!(from.advances_to(to), expected, "{from:?} → {to:?}");
            }
        }
        for state in all {
            assert_eq!(
                RecipientState::from_i64(state as i64).expect("known"),
                state
            );
        }
        assert!(RecipientState::from_i64(5).is_err());
    }

    #[test]
    fn duplicated_and_reordered_receipts_never_move_a_device_back() {
        let (_dir, mut store) = open();
        let me = device(1, 1);
        let id = ClientMessageId([7; 16]);
        let (phone, laptop, own) = (device(2, 1), device(2, 2), device(1, 2));
        sent_message(&mut store, me, id, &[phone, laptop, own, me]);
        assert_eq!(
            states(&store, me, id),
            vec![(1, 2, "sent"), (2, 1, "sent"), (2, 2, "sent")],
            "one row per recipient, the sender not among them"
        );
        let record = |store: &mut Store, device, state, at_ms| {
            store
                .write(|w| w.record_receipt(me, id, device, state, at_ms, me))
                .expect("receipt")
        };
        let delivered_to_all = |store: &mut Store| {
            store
                .write(|w| w.delivered_to_every_peer_device(me, id, AccountId(2)))
                .expect("aggregate")
        };
        // Read before delivered (the E2EE read receipt overtook the region's receipt).
        assert!(record(&mut store, phone, RecipientState::Read, 30));
        assert!(
            !record(&mut store, phone, RecipientState::Delivered, 31),
            "late delivered"
        );
        assert!(
            !record(&mut store, phone, RecipientState::Read, 32),
            "read twice"
        );
        assert!(
            !record(&mut store, phone, RecipientState::Expired, 33),
            "expired after read"
        );
        assert!(
            !delivered_to_all(&mut store),
            "the laptop has not acknowledged it"
        );
        // The own device's copy does not count for the peer's tick.
        assert!(record(&mut store, own, RecipientState::Delivered, 34));
        assert!(!delivered_to_all(&mut store));
        assert!(record(&mut store, laptop, RecipientState::Delivered, 35));
        assert!(delivered_to_all(&mut store));
        // Not recipients: a device the envelope did not name, another account, the sender.
        assert!(!record(
            &mut store,
            device(2, 9),
            RecipientState::Delivered,
            36
        ));
        assert!(!record(
            &mut store,
            device(3, 1),
            RecipientState::Delivered,
            37
        ));
        assert!(!record(&mut store, me, RecipientState::Delivered, 38));
        // A receipt for a message this device does not know.
        let unknown = ClientMessageId([8; 16]);
        assert!(
            !store
                .write(|w| w.record_receipt(me, unknown, phone, RecipientState::Delivered, 39, me))
                .expect("unknown")
        );
        assert!(store.recipients(me, unknown).expect("rows").is_empty());
        let rows = store.recipients(me, id).expect("rows");
        assert_eq!(
            rows.iter()
                .map(|row| (row.device, row.state, row.at_ms))
                .collect::<Vec<_>>(),
            vec![
                (own, RecipientState::Delivered, 34),
                (phone, RecipientState::Read, 30),
                (laptop, RecipientState::Delivered, 35),
            ]
        );
    }

    #[test]
    fn recipients_follow_the_envelope_and_removed_or_expired_devices_do_not_hold_the_tick() {
        let (_dir, mut store) = open();
        let me = device(1, 1);
        let id = ClientMessageId([9; 16]);
        let (phone, laptop, tablet) = (device(2, 1), device(2, 2), device(2, 3));
        let message = NewMessage {
            chat: ChatId::direct(AccountId(1), AccountId(2)),
            peer: AccountId(2),
            outgoing: true,
            sender: me,
            client_message_id: id,
            sender_seq: 1,
            chat_seq: None,
            text: Some("hi"),
            attachment: None,
            sent_at_ms: 10,
            server_time_ms: None,
            tick: Tick::Pending,
            undecryptable: None,
        };
        store
            .write(|w| {
                w.insert_message(&message)?;
                w.set_recipients(me, id, &[phone, laptop])
            })
            .expect("built");
        assert_eq!(
            states(&store, me, id),
            vec![(2, 1, "pending"), (2, 2, "pending")]
        );
        // Mismatched devices: re-encrypted for the phone and a new tablet.
        store
            .write(|w| {
                w.set_recipients(me, id, &[phone, tablet])?;
                w.mark_recipients_sent(me, id, 20)
            })
            .expect("rebuilt and sent");
        assert_eq!(states(&store, me, id), vec![(2, 1, "sent"), (2, 3, "sent")]);
        let aggregate = |store: &mut Store| {
            store
                .write(|w| w.delivered_to_every_peer_device(me, id, AccountId(2)))
                .expect("aggregate")
        };
        store
            .write(|w| w.record_receipt(me, id, phone, RecipientState::Delivered, 30, me))
            .expect("delivered");
        assert!(!aggregate(&mut store));
        // The tablet's copy expired: it no longer holds the tick back.
        store
            .write(|w| w.record_receipt(me, id, tablet, RecipientState::Expired, 40, me))
            .expect("expired");
        assert!(aggregate(&mut store));
        // Or, instead, the tablet was removed from the peer's account.
        let other = ClientMessageId([10; 16]);
        sent_message(&mut store, me, other, &[phone, tablet]);
        store
            .write(|w| w.record_receipt(me, other, phone, RecipientState::Delivered, 30, me))
            .expect("delivered");
        let aggregate_other = |store: &mut Store| {
            store
                .write(|w| w.delivered_to_every_peer_device(me, other, AccountId(2)))
                .expect("aggregate")
        };
        assert!(!aggregate_other(&mut store));
        store
            .write(|w| w.set_current_devices(AccountId(2), &[DeviceId(1), DeviceId(3)]))
            .expect("devices");
        assert!(!aggregate_other(&mut store), "the tablet is current");
        store
            .write(|w| w.set_current_devices(AccountId(2), &[DeviceId(1)]))
            .expect("devices");
        assert!(aggregate_other(&mut store), "the tablet was removed");
    }

    #[test]
    fn a_copy_from_another_own_device_learns_its_recipients_from_receipts() {
        let (_dir, mut store) = open();
        let me = device(1, 1);
        let sender = device(1, 2);
        let id = ClientMessageId([11; 16]);
        sent_message(&mut store, sender, id, &[]);
        let record = |store: &mut Store, device| {
            store
                .write(|w| w.record_receipt(sender, id, device, RecipientState::Delivered, 5, me))
                .expect("receipt")
        };
        assert!(record(&mut store, device(2, 1)));
        assert!(record(&mut store, device(2, 2)), "a second peer device");
        assert!(record(&mut store, me), "this device's own copy");
        assert!(!record(&mut store, sender), "the sender is no recipient");
        assert!(!record(&mut store, device(3, 1)), "nor another account");
        assert_eq!(
            states(&store, sender, id),
            vec![
                (1, 1, "delivered"),
                (2, 1, "delivered"),
                (2, 2, "delivered")
            ]
        );
    }

    #[test]
    fn read_receipts_are_on_until_turned_off() {
        let (_dir, mut store) = open();
        assert!(store.read_receipts().expect("default"));
        store.write(|w| w.set_read_receipts(false)).expect("off");
        assert!(!store.read_receipts().expect("off"));
        assert!(
            !store
                .write(|w| w.read_receipts())
                .expect("off in a transaction")
        );
        store.write(|w| w.set_read_receipts(true)).expect("on");
        assert!(store.read_receipts().expect("on"));
    }
}
