//! The device queue as this device keeps it: the cursor (`queue_cursor`: the highest queue
//! sequence processed and committed), the acks still owed (`pending_acks`), and the seen-set
//! (`seen`) that deduplicates redelivered envelopes.

use relay_proto::{ClientMessageId, DeviceAddress};
use rusqlite::{OptionalExtension, params};

use super::{Store, Writer, to_i64, to_u64};
use crate::error::Result;
use crate::limits::SEEN_RETENTION_MS;

impl Store {
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
}

impl Writer<'_> {
    /// Remembers that an envelope was processed; `false` if it already was.
    pub fn mark_seen(
        &self,
        sender: DeviceAddress,
        client_message_id: ClientMessageId,
        now_ms: u64,
    ) -> Result<bool> {
        let inserted = self.execute(
            "INSERT OR IGNORE INTO seen (sender_account, sender_device, client_message_id, seen_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![to_i64(sender.account.0), sender.device.0, client_message_id.0.as_slice(), to_i64(now_ms)],
        )?;
        Ok(inserted == 1)
    }

    /// Forgets seen ids older than [`SEEN_RETENTION_MS`].
    pub fn prune_seen(&self, now_ms: u64) -> Result<usize> {
        Ok(self.execute(
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
        self.execute(
            "INSERT INTO queue_cursor (singleton, after_queue_seq) VALUES (1, ?1)
             ON CONFLICT (singleton) DO UPDATE SET after_queue_seq = MAX(after_queue_seq, excluded.after_queue_seq)",
            [to_i64(*highest)],
        )?;
        for seq in queue_seqs {
            self.execute(
                "INSERT OR IGNORE INTO pending_acks (queue_seq) VALUES (?1)",
                [to_i64(*seq)],
            )?;
        }
        Ok(())
    }

    /// Forgets acks the server confirmed.
    pub fn acked(&self, queue_seqs: &[u64]) -> Result<()> {
        for seq in queue_seqs {
            self.execute(
                "DELETE FROM pending_acks WHERE queue_seq = ?1",
                [to_i64(*seq)],
            )?;
        }
        Ok(())
    }
}
