//! The outbox (`outbox`: envelopes waiting for the relay's answer, in sender_seq order per
//! chat), the per-chat sender_seq counters (`chat_counters`), and the drafts (`drafts`: texts
//! typed for a name not resolved yet).

use prost::Message as _;
use relay_proto::wire::Envelope;
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{Store, Writer, to_i64, to_u64};
use crate::error::{ClientError, Result};

/// A message typed for an account known only by name: it waits here until a command resolves
/// the name, then becomes an outbox entry under the same id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// The id the message keeps once queued.
    pub client_message_id: ClientMessageId,
    /// The recipient's account name.
    pub peer_name: String,
    /// The text (a file's caption).
    pub text: String,
    /// The attached file, encoded ([`crate::media::Attachment::to_bytes`]), if any.
    pub attachment: Option<Vec<u8>>,
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
    /// The other account of the chat (1:1; 0 for a group's).
    pub peer: AccountId,
    /// The group of a group chat's entry; 0 for a 1:1 chat's.
    pub group: u64,
    /// The encoded plaintext [`crate::content::Content`], kept to re-encrypt on mismatched devices.
    pub content: Vec<u8>,
    /// The encoded envelope once built; retries send exactly these bytes.
    pub envelope: Option<Vec<u8>>,
}

impl OutboxRow {
    /// Whether this is a group's key share: built whole when numbered, it keeps no content
    /// (every other entry keeps its plaintext content to re-encrypt).
    pub fn is_key_share(&self) -> bool {
        self.group != 0 && self.content.is_empty()
    }
}

impl Store {
    /// Every outbox entry, by chat and sender_seq.
    pub fn outbox(&self) -> Result<Vec<OutboxRow>> {
        outbox_rows(&self.connection)
    }

    /// One outbox entry.
    pub fn outbox_entry(&self, client_message_id: ClientMessageId) -> Result<Option<OutboxRow>> {
        let row = self
            .connection
            .query_row(
                "SELECT chat, sender_seq, client_message_id, peer, content, envelope, group_id FROM outbox
                 WHERE client_message_id = ?1",
                [client_message_id.0.as_slice()],
                outbox_row,
            )
            .optional()?;
        row.transpose()
    }

    /// Every draft, oldest first.
    pub fn drafts(&self) -> Result<Vec<Draft>> {
        let mut statement = self.connection.prepare(
            "SELECT client_message_id, peer_name, text, sent_at_ms, attachment FROM drafts ORDER BY id",
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
                "SELECT client_message_id, peer_name, text, sent_at_ms, attachment FROM drafts
                 WHERE client_message_id = ?1",
                [client_message_id.0.as_slice()],
                draft_row,
            )
            .optional()?;
        row.transpose()
    }
}

impl Writer<'_> {
    /// Keeps a message for an account known only by name.
    pub fn insert_draft(&self, draft: &Draft) -> Result<()> {
        self.execute(
            "INSERT INTO drafts (client_message_id, peer_name, text, sent_at_ms, attachment)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                draft.client_message_id.0.as_slice(),
                draft.peer_name,
                draft.text,
                to_i64(draft.sent_at_ms),
                draft.attachment,
            ],
        )?;
        Ok(())
    }

    /// Removes a draft (queued or given up); `false` if it was gone already (another process
    /// took it).
    pub fn remove_draft(&self, client_message_id: ClientMessageId) -> Result<bool> {
        let removed = self.execute(
            "DELETE FROM drafts WHERE client_message_id = ?1",
            [client_message_id.0.as_slice()],
        )?;
        Ok(removed == 1)
    }

    /// Every outbox entry as committed, read under this transaction's write lock.
    pub fn outbox(&self) -> Result<Vec<OutboxRow>> {
        outbox_rows(self.transaction)
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
        self.execute(
            "INSERT OR REPLACE INTO chat_counters (chat, next_sender_seq) VALUES (?1, ?2)",
            params![chat.0.as_slice(), to_i64(next)],
        )?;
        Ok(())
    }

    /// Adds an outbox entry.
    pub fn insert_outbox(&self, row: &OutboxRow, created_at_ms: u64) -> Result<()> {
        self.execute(
            "INSERT INTO outbox (chat, sender_seq, client_message_id, peer, content, envelope,
             created_at_ms, group_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                row.chat.0.as_slice(),
                to_i64(row.sender_seq),
                row.client_message_id.0.as_slice(),
                to_i64(row.peer.0),
                row.content,
                row.envelope,
                to_i64(created_at_ms),
                to_i64(row.group)
            ],
        )?;
        Ok(())
    }

    /// Stores the built envelope of an outbox entry.
    pub fn set_envelope(&self, client_message_id: ClientMessageId, envelope: &[u8]) -> Result<()> {
        self.execute(
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
            self.execute(
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
            self.execute(
                "UPDATE messages SET sender_seq = ?1 WHERE sender_account = ?2 AND sender_device = ?3
                 AND client_message_id = ?4",
                params![to_i64(*new), to_i64(sender.account.0), sender.device.0, id.0.as_slice()],
            )?;
            self.execute(
                "UPDATE group_messages SET sender_seq = ?1 WHERE sender_account = ?2
                 AND sender_device = ?3 AND client_message_id = ?4",
                params![
                    to_i64(*new),
                    to_i64(sender.account.0),
                    sender.device.0,
                    id.0.as_slice()
                ],
            )?;
        }
        self.execute(
            "UPDATE outbox SET sender_seq = -sender_seq WHERE chat = ?1 AND sender_seq < 0",
            [chat.0.as_slice()],
        )?;
        self.set_next_sender_seq(chat, next_sender_seq)
    }

    /// Removes an outbox entry.
    pub fn remove_outbox(&self, client_message_id: ClientMessageId) -> Result<()> {
        self.execute(
            "DELETE FROM outbox WHERE client_message_id = ?1",
            [client_message_id.0.as_slice()],
        )?;
        Ok(())
    }
}

fn outbox_rows(connection: &Connection) -> Result<Vec<OutboxRow>> {
    let mut statement = connection.prepare(
        "SELECT chat, sender_seq, client_message_id, peer, content, envelope, group_id FROM outbox
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
            group: to_u64(row.get(6)?),
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
            attachment: row.get(4)?,
        })
    })();
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{device, open};
    use std::net::SocketAddr;

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
            attachment: Some(vec![1, 2, 3]),
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
                        ..Default::default()
                    };
                    w.insert_outbox(
                        &OutboxRow {
                            chat,
                            sender_seq: seq,
                            client_message_id: id,
                            peer: AccountId(2),
                            content: vec![1],
                            envelope: Some(envelope.encode_to_vec()),
                            group: 0,
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
}
