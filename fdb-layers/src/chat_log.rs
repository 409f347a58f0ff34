//! The chat log layer: each chat's envelopes under a strict, gapless per-chat sequence, with
//! dedupe by client message id and the sender-FIFO check.
//!
//! **Challenge.** Store each envelope of a chat once (a retried send is answered with its
//! original result), accept a sender device's envelopes only in its own order (`sender_seq`
//! exactly one past the last), tell a sender that skipped ahead where to resend from, tell a
//! sender whose counter went back (a new envelope under a `sender_seq` already taken: its
//! state was restored from a copy) that it rolled back, give each envelope a chat sequence
//! number with no gap and no reuse, and let devices read the log in order from any point.
//!
//! **Key layout** (subspace `("chat_log", chat)`):
//! - `("dedupe", account, device, client_message_id)` → chat sequence and server time (prost);
//! - `("entry", chat_seq, index, count)` → the entry (prost), split across keys when the
//!   envelope outgrows one value;
//! - `("last_seq",)` → the last chat sequence given (8 bytes LE);
//! - `("sender_seq", account, device)` → the sender device's last accepted `sender_seq`;
//! - `("adopted",)` → up to which chat sequence this log took another region's numbers when a
//!   moved account brought a chat nobody here reads ([`adopt`]; absent: none);
//! - `("moved_mark", account, device)` → the highest `sender_seq` of the sender a home move
//!   brought here ([`raise_sender_seq`]): an unknown envelope at or below it is a retry of one
//!   the old home took, accepted rather than refused as a device that went back;
//! - `("view", account)`, `("shown", …)`, `("shown_id", …)` → the numbering of an account that
//!   moved here from a region that numbered the chat for it ([`views`]).
//!
//! A chat's keys are contiguous and its entries are in sequence order, so reading the log after
//! a cursor is one range read.
//!
//! **Conflicts.** An append reads the dedupe key, the sender's `sender_seq` and the chat's
//! `last_seq`, all with read conflicts. The `last_seq` read is deliberate: it is a
//! read-modify-write counter rather than an atomic add, and the conflict it causes between two
//! appends to one chat is what keeps the sequence gapless (one retries and takes the next
//! number). The price is a hot key per chat: appends to one chat serialize, about one per group
//! commit, which is plenty for a conversation. Appends to different chats never conflict.
//!
//! **Idempotence.** By nature, so [`append`] takes no idempotency key: the client message id
//! is the sender's own idempotency key. An append retried after `CommitUnknownResult` (or a
//! send retried by the client) finds its dedupe key and returns [`AppendOutcome::Duplicate`]
//! with the original sequence and time; callers fan out to device queues only on
//! [`AppendOutcome::Appended`], in the same transaction, which makes the chat log the guard of
//! every queue append of a message.
//!
//! **Limits.** An entry holds an envelope of up to `ENVELOPE_BYTES_MAX` (512 KiB) plus metadata,
//! split into values of at most 100 kB, so an append with its fan-out stays far below 10 MB;
//! a read returns at most [`LAYER_READ_ENTRIES_MAX`] entries (a few MB at worst: callers that
//! read large envelopes read fewer).
//!
//! **Evolution.** The 30-day retention sweep will clear old entries and their dedupe keys with
//! range clears. A region with very hot chats can move to versionstamped entry keys (no
//! counter read, no conflict) and number entries when reading.

use bytes::Bytes;
use prost::Message;
use relay_planted::PlantedBug;
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId, RegionId};

use crate::codec::{
    decode_key, decode_record, encode_u64, insert_chunked, read_chunked, read_chunked_between,
    read_chunked_range, read_u64, replace_chunked,
};
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::limits::LAYER_READ_ENTRIES_MAX;
use crate::tuple::{Subspace, TupleDecode};

pub mod views;

/// An envelope to append, with the fields the log checks and stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewEntry<'a> {
    /// The chat.
    pub chat: ChatId,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The sender's idempotency key.
    pub client_message_id: ClientMessageId,
    /// The sender device's counter in this chat.
    pub sender_seq: u64,
    /// The home region of the sender.
    pub sender_region: RegionId,
    /// The encoded envelope, opaque to the log.
    pub envelope_bytes: &'a [u8],
}

/// What [`append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored under a new chat sequence number.
    Appended {
        /// The entry's chat sequence number.
        chat_seq: u64,
        /// When the entry was stored, in milliseconds since the Unix epoch.
        server_time_ms: u64,
    },
    /// Committed here for the first time, but stored already: a home move brought the entry
    /// (the old home's copy of the envelope, [`import_entry`]) before the envelope itself was
    /// committed here. The caller queues it as an appended one; the stored copy was checked by
    /// the old home for its accounts only, and may lack entries for devices of the accounts
    /// here that the envelope now committed has ([`extend_envelope`] completes it).
    FirstAfterImport {
        /// The stored entry's chat sequence number.
        chat_seq: u64,
        /// When the entry was stored.
        server_time_ms: u64,
    },
    /// Already stored: the original result.
    Duplicate {
        /// The stored entry's chat sequence number.
        chat_seq: u64,
        /// When the entry was stored.
        server_time_ms: u64,
    },
    /// Refused: the sender must resend from `expected_sender_seq`.
    Gap {
        /// The `sender_seq` the log expects next from this sender device.
        expected_sender_seq: u64,
    },
    /// Refused: a new envelope under a `sender_seq` the sender already used; its state went
    /// back.
    RolledBack {
        /// The last `sender_seq` accepted from this sender device.
        last_sender_seq: u64,
    },
}

/// One stored entry of a chat log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The entry's chat sequence number.
    pub chat_seq: u64,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The sender's idempotency key.
    pub client_message_id: ClientMessageId,
    /// The sender device's counter in this chat.
    pub sender_seq: u64,
    /// The home region of the sender.
    pub sender_region: RegionId,
    /// When the entry was stored, in milliseconds since the Unix epoch.
    pub server_time_ms: u64,
    /// The encoded envelope, shared with the record it was read from (no copy).
    pub envelope_bytes: Bytes,
}

/// Appends an envelope: dedupe first, then the sender-FIFO check, then the next chat sequence.
///
/// An envelope whose client message id is new but whose `sender_seq` is at or below the last
/// one accepted from its sender is [`AppendOutcome::RolledBack`], not a gap: an honest device
/// never gives a new envelope a number it already used. It numbers envelopes from a durable
/// counter, and renumbers them (after "resend from k") only down to a `k` this log asked for,
/// which is above everything it accepted; a retry of a stored envelope keeps its id and is a
/// duplicate. A device restored from a copy counts again from an older value.
pub async fn append(
    transaction: &Transaction,
    entry: &NewEntry<'_>,
    now_ms: u64,
) -> Result<AppendOutcome, StoreError> {
    append_after(transaction, entry, None, now_ms).await
}

/// [`append`], for a sender that names the previous number of its the log must hold first
/// (`prev`, a group envelope's `group_prev_seq`; `Some(0)`: none, every earlier number of the
/// sender is settled). Without it (1:1 chats) the next number is the one after the sender's
/// last, exactly. With it, the log takes the envelope once it holds `prev` (a number above
/// `prev` it never held went to other regions, or was given up), and asks for `prev` otherwise.
/// A region that joined a group's chat late (a member homed there was added) holds none of the
/// sender's earlier envelopes, which went to the regions of the members then; without this it
/// asked for them ("resend from 1"), and the sender, which had them confirmed and gone, could
/// only renumber onto numbers the other regions hold, which they refuse as a device that went
/// back.
pub async fn append_after(
    transaction: &Transaction,
    entry: &NewEntry<'_>,
    prev: Option<u64>,
    now_ms: u64,
) -> Result<AppendOutcome, StoreError> {
    let log = ChatLog::new(entry.chat);
    let dedupe_key = log
        .root
        .pack(&("dedupe", entry.sender, entry.client_message_id));
    let sender_key = log.root.pack(&("sender_seq", entry.sender));
    if let Some(value) = transaction.get(&dedupe_key).await? {
        let stored: StoredDedupe = decode_record(&value, "chat log dedupe")?;
        if !stored.imported {
            return Ok(AppendOutcome::Duplicate {
                chat_seq: stored.chat_seq,
                server_time_ms: stored.server_time_ms,
            });
        }
        // A home move brought this entry here before the envelope itself arrived: this is its
        // first commit here, so the caller queues it for the accounts here as for an append.
        let first_here = StoredDedupe {
            imported: false,
            ..stored
        };
        transaction.set(&dedupe_key, &first_here.encode_to_vec())?;
        transaction.atomic_max(&sender_key, &encode_u64(entry.sender_seq))?;
        return Ok(AppendOutcome::FirstAfterImport {
            chat_seq: stored.chat_seq,
            server_time_ms: stored.server_time_ms,
        });
    }

    let last_sender_seq = read_u64(transaction, &sender_key, "chat log sender_seq").await?;
    // What the log wants next: the number after its last, or the named previous one it lacks;
    // an envelope whose previous number it holds is next whatever its number.
    let expected_sender_seq = match prev {
        None => last_sender_seq + 1,
        Some(prev) if prev > last_sender_seq => prev,
        Some(_) => entry.sender_seq,
    };
    let checked = !relay_planted::is_planted(PlantedBug::SkipSenderSeqCheck);
    // A home move brought this sender's mark here from where it stood at the old home: an
    // envelope at or below that mark that this log never saw is a retry of one the old home
    // took (its answer lost), not a device that went back, and is taken as it is. (A device
    // that did go back is still caught by its own home's `device_seq` mark.)
    let mut retried_after_move = false;
    if checked && last_sender_seq > 0 && entry.sender_seq <= last_sender_seq {
        let moved_key = log.root.pack(&("moved_mark", entry.sender));
        let moved = read_u64(transaction, &moved_key, "chat log moved_mark").await?;
        if moved == 0 || entry.sender_seq > moved {
            return Ok(AppendOutcome::RolledBack { last_sender_seq });
        }
        retried_after_move = true;
    }
    if checked && !retried_after_move && entry.sender_seq != expected_sender_seq {
        return Ok(AppendOutcome::Gap {
            expected_sender_seq,
        });
    }

    let last_seq_key = log.root.pack(&("last_seq",));
    let chat_seq = read_u64(transaction, &last_seq_key, "chat log last_seq").await? + 1;
    let stored = StoredEntry {
        sender_account: entry.sender.account.0,
        sender_device: entry.sender.device.0,
        client_message_id: entry.client_message_id.0.to_vec(),
        sender_seq: entry.sender_seq,
        sender_region: entry.sender_region.0,
        server_time_ms: now_ms,
        envelope: Bytes::copy_from_slice(entry.envelope_bytes),
    };
    // `chat_seq` is one past `last_seq`, read above with a conflict, and every entry is
    // written together with `last_seq` raised to its sequence (nothing else writes entries;
    // the retention sweep only removes old ones). So no entry `chat_seq` exists at the read
    // version, and an append racing for the same sequence also writes `last_seq`, so one of
    // the two commits is refused. There is nothing to replace: write without a range clear.
    insert_chunked(transaction, &log.entries, chat_seq, &stored.encode_to_vec())?;
    transaction.set(&last_seq_key, &encode_u64(chat_seq))?;
    if !retried_after_move {
        transaction.set(&sender_key, &encode_u64(entry.sender_seq))?;
    }
    let dedupe = StoredDedupe {
        chat_seq,
        server_time_ms: now_ms,
        imported: false,
    };
    transaction.set(&dedupe_key, &dedupe.encode_to_vec())?;
    Ok(AppendOutcome::Appended {
        chat_seq,
        server_time_ms: now_ms,
    })
}

/// The keys [`append`] writes for an entry of `chat` from `sender` with `client_message_id`
/// stored under `chat_seq` in one value (an envelope of up to about 100 kB), in the order it
/// writes them: the entry, the chat's last sequence, the sender's sequence, the dedupe record.
/// For baselines that write what the layer writes without the layer (`relayd bench storage`).
pub fn append_keys(
    chat: ChatId,
    sender: DeviceAddress,
    client_message_id: ClientMessageId,
    chat_seq: u64,
) -> [Vec<u8>; 4] {
    let log = ChatLog::new(chat);
    [
        log.entries.subspace(&(chat_seq,)).pack(&(0u32, 1u32)),
        log.root.pack(&("last_seq",)),
        log.root.pack(&("sender_seq", sender)),
        log.root.pack(&("dedupe", sender, client_message_id)),
    ]
}

/// The last `sender_seq` the log accepted from `sender` in `chat` (0 before the first), as a
/// snapshot read: a hint for ordering what waits to be appended, never a basis for a write
/// ([`append`] reads it again with a conflict).
pub async fn last_sender_seq(
    transaction: &Transaction,
    chat: ChatId,
    sender: DeviceAddress,
) -> Result<u64, StoreError> {
    let log = ChatLog::new(chat);
    match transaction
        .snapshot_get(&log.root.pack(&("sender_seq", sender)))
        .await?
    {
        Some(bytes) => crate::codec::decode_u64(&bytes, "chat log sender_seq"),
        None => Ok(0),
    }
}

/// The entry of `chat` with sequence `chat_seq`.
pub async fn entry(
    transaction: &Transaction,
    chat: ChatId,
    chat_seq: u64,
) -> Result<Option<LogEntry>, StoreError> {
    let log = ChatLog::new(chat);
    match read_chunked(transaction, &log.entries, chat_seq, "chat log entry").await? {
        Some(bytes) => log_entry(chat_seq, bytes).map(Some),
        None => Ok(None),
    }
}

/// Up to `limit` entries of `chat` after sequence `after`, in order (at most
/// [`LAYER_READ_ENTRIES_MAX`]).
pub async fn read_range(
    transaction: &Transaction,
    chat: ChatId,
    after: u64,
    limit: usize,
) -> Result<Vec<LogEntry>, StoreError> {
    let Some(first) = after.checked_add(1) else {
        return Ok(Vec::new());
    };
    let log = ChatLog::new(chat);
    let limit = limit.min(LAYER_READ_ENTRIES_MAX);
    let begin = log.entries.pack(&(first,));
    let records =
        read_chunked_range(transaction, &log.entries, &begin, limit, "chat log entry").await?;
    records
        .into_iter()
        .map(|(chat_seq, bytes)| log_entry(chat_seq, bytes))
        .collect()
}

/// The entries of `chat` from sequence `first` to `last` (both included) that exist, in order:
/// a read bounded by the two, so entries appended after `last` are neither read nor a conflict
/// (a device's fetch reads the entries its queue entry names while the chat's lane appends).
pub async fn read_between(
    transaction: &Transaction,
    chat: ChatId,
    first: u64,
    last: u64,
) -> Result<Vec<LogEntry>, StoreError> {
    let log = ChatLog::new(chat);
    read_chunked_between(transaction, &log.entries, first, last, "chat log entry")
        .await?
        .into_iter()
        .map(|(chat_seq, bytes)| log_entry(chat_seq, bytes))
        .collect()
}

/// The last chat sequence number given in `chat` (0 before the first entry).
pub async fn last_seq(transaction: &Transaction, chat: ChatId) -> Result<u64, StoreError> {
    let log = ChatLog::new(chat);
    read_u64(
        transaction,
        &log.root.pack(&("last_seq",)),
        "chat log last_seq",
    )
    .await
}

/// The stored bytes of entry `chat_seq` of `chat`, whole however it was split (`None`: no such
/// entry): what an account's old home sends its new home with the queue entries naming it
/// ([`import_entry`]).
pub async fn entry_bytes(
    transaction: &Transaction,
    chat: ChatId,
    chat_seq: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let log = ChatLog::new(chat);
    read_chunked(transaction, &log.entries, chat_seq, "chat log entry").await
}

/// The entries of `chat` from `first` to `last` as [`entry_bytes`] gives them, with their
/// numbers, in one range read.
pub async fn entry_bytes_between(
    transaction: &Transaction,
    chat: ChatId,
    first: u64,
    last: u64,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let log = ChatLog::new(chat);
    read_chunked_between(transaction, &log.entries, first, last, "chat log entry").await
}

/// Appends `fields` (encoded protobuf fields of the envelope, such as more entries of a
/// repeated field: protobuf merges concatenated encodings) to the envelope of entry `chat_seq`
/// of `chat`, and returns whether the entry is there. The rest of the entry stays as it is.
///
/// For the one case where a stored envelope must grow: an envelope first stored here when it
/// was for none of this region's devices (so its entries for another account's devices were
/// never checked here), whose account then moved here. Its devices are queued the entry, and
/// their entries come from the envelope the old home checked.
pub async fn extend_envelope(
    transaction: &Transaction,
    chat: ChatId,
    chat_seq: u64,
    fields: &[u8],
) -> Result<bool, StoreError> {
    rewrite_envelope(transaction, chat, chat_seq, |stored| {
        let mut envelope = Vec::with_capacity(stored.len() + fields.len());
        envelope.extend_from_slice(stored);
        envelope.extend_from_slice(fields);
        Bytes::from(envelope)
    })
    .await
}

/// Replaces the envelope of entry `chat_seq` of `chat` with `envelope` (a group message built
/// again: see the caller); `false` if there is no such entry. The entry's other fields stay.
pub async fn replace_envelope(
    transaction: &Transaction,
    chat: ChatId,
    chat_seq: u64,
    envelope: &[u8],
) -> Result<bool, StoreError> {
    rewrite_envelope(transaction, chat, chat_seq, |_| {
        Bytes::copy_from_slice(envelope)
    })
    .await
}

/// Rewrites the envelope of entry `chat_seq` of `chat` as `rewrite` makes it from the stored
/// one; `false` if there is no such entry. The entry's other fields stay.
async fn rewrite_envelope(
    transaction: &Transaction,
    chat: ChatId,
    chat_seq: u64,
    rewrite: impl FnOnce(&[u8]) -> Bytes,
) -> Result<bool, StoreError> {
    let log = ChatLog::new(chat);
    let Some(bytes) = read_chunked(transaction, &log.entries, chat_seq, "chat log entry").await?
    else {
        return Ok(false);
    };
    let mut stored = StoredEntry::decode(bytes.as_slice())
        .map_err(|error| StoreError::corrupt("chat log entry", error))?;
    stored.envelope = rewrite(&stored.envelope);
    replace_chunked(transaction, &log.entries, chat_seq, &stored.encode_to_vec())?;
    Ok(true)
}

/// Decodes an entry in the form [`entry_bytes`] gives it (another region's, taken by a move).
pub fn decode_entry(chat_seq: u64, bytes: &[u8]) -> Result<LogEntry, StoreError> {
    log_entry(chat_seq, bytes.to_vec())
}

/// Takes into this region's log of `chat` an entry another region's log accepted (`bytes`, from
/// [`entry_bytes`] there, where it is number `old_seq`) and returns its chat sequence here: the
/// entry this log already holds under the same sender and client message id (a 1:1 message
/// reached both regions); else, in a chat this log adopted ([`adopt`]) up to that number, the
/// entry under its old number, so the moved account's devices go on with the numbers they
/// know; else the entry appended under the next chat sequence. With its dedupe record, and the
/// sender's mark raised to its `sender_seq` (never lowered). No order check: the other log made
/// it. Idempotent by nature (the dedupe record), like [`append`].
pub async fn import_entry(
    transaction: &Transaction,
    chat: ChatId,
    old_seq: u64,
    bytes: &[u8],
) -> Result<u64, StoreError> {
    import_checked(transaction, chat, old_seq, bytes, None).await
}

/// [`import_entry`], with whether number `old_seq` is an adopted one this log gave no entry
/// (`None`: read it here, once the entry is known to be new).
async fn import_checked(
    transaction: &Transaction,
    chat: ChatId,
    old_seq: u64,
    bytes: &[u8],
    adopted_slot_free: Option<bool>,
) -> Result<u64, StoreError> {
    let stored = StoredEntry::decode(bytes)
        .map_err(|error| StoreError::corrupt("moved chat log entry", error))?;
    let client_message_id = ClientMessageId::from_bytes(&stored.client_message_id)
        .map_err(|error| StoreError::corrupt("moved chat log entry", error))?;
    let sender = DeviceAddress {
        account: AccountId(stored.sender_account),
        device: DeviceId(stored.sender_device),
    };
    let log = ChatLog::new(chat);
    let dedupe_key = log.root.pack(&("dedupe", sender, client_message_id));
    if let Some(value) = transaction.get(&dedupe_key).await? {
        let known: StoredDedupe = decode_record(&value, "chat log dedupe")?;
        return Ok(known.chat_seq);
    }
    let free = match adopted_slot_free {
        Some(free) => free,
        None => slot_free(transaction, &log, old_seq).await?,
    };
    let chat_seq = if free {
        // Adopted: the numbers up to `adopted` that this log never gave are the old home's.
        insert_chunked(transaction, &log.entries, old_seq, bytes)?;
        old_seq
    } else {
        let last_seq_key = log.root.pack(&("last_seq",));
        let chat_seq = read_u64(transaction, &last_seq_key, "chat log last_seq").await? + 1;
        // As in `append_after`: one past `last_seq`, read with a conflict, so nothing is there.
        insert_chunked(transaction, &log.entries, chat_seq, bytes)?;
        transaction.set(&last_seq_key, &encode_u64(chat_seq))?;
        chat_seq
    };
    raise_sender_seq(transaction, chat, sender, stored.sender_seq)?;
    let dedupe = StoredDedupe {
        chat_seq,
        server_time_ms: stored.server_time_ms,
        imported: true,
    };
    transaction.set(&dedupe_key, &dedupe.encode_to_vec())?;
    Ok(chat_seq)
}

/// Takes one of the last entries of another region's log of `chat` (number `old_seq` there) into
/// this log if this log adopted that numbering ([`adopt`]) and gave no entry that number: so a
/// sender's envelope the old home took but whose answer was lost finds its dedupe record here
/// when it is sent again, and keeps its number. Otherwise changes nothing (this log numbers the
/// chat itself, and holds what it was sent). Returns whether it took it.
pub async fn import_tail_entry(
    transaction: &Transaction,
    chat: ChatId,
    old_seq: u64,
    bytes: &[u8],
) -> Result<bool, StoreError> {
    if !slot_free(transaction, &ChatLog::new(chat), old_seq).await? {
        return Ok(false);
    }
    import_checked(transaction, chat, old_seq, bytes, Some(true)).await?;
    Ok(true)
}

/// Whether `old_seq` is a number `log` adopted from another region ([`adopt`]) and gave no
/// entry: a moved entry may take it.
async fn slot_free(
    transaction: &Transaction,
    log: &ChatLog,
    old_seq: u64,
) -> Result<bool, StoreError> {
    let adopted = read_u64(
        transaction,
        &log.root.pack(&("adopted",)),
        "chat log adopted",
    )
    .await?;
    if old_seq == 0 || old_seq > adopted {
        return Ok(false);
    }
    let (slot_begin, slot_end) = log.entries.subspace(&(old_seq,)).range();
    Ok(transaction
        .get_range(&slot_begin, &slot_end, RangeOptions::limit(1))
        .await?
        .is_empty())
}

/// Adopts the numbering of another region's log of `chat`, whose last sequence is `last_seq`,
/// when a moved account brings the chat here and nobody here reads it (the caller knows: a 1:1
/// chat whose other account is homed elsewhere): this log's last sequence is raised to
/// `last_seq`, and entries moved with [`import_entry`] keep their old numbers where this log
/// gave none, so the account's devices never see a number twice. A chat that an account homed
/// here reads keeps this log's own numbers (its entries arrive here and are queued for that
/// account as they come; taking them from a move would store them without queueing them).
/// Returns whether it adopted.
pub async fn adopt(
    transaction: &Transaction,
    chat: ChatId,
    last_seq: u64,
    nobody_here_reads_it: bool,
) -> Result<bool, StoreError> {
    if !nobody_here_reads_it {
        return Ok(false);
    }
    let log = ChatLog::new(chat);
    let last_seq_key = log.root.pack(&("last_seq",));
    let adopted_key = log.root.pack(&("adopted",));
    let adopted = read_u64(transaction, &adopted_key, "chat log adopted").await?;
    let here = read_u64(transaction, &last_seq_key, "chat log last_seq").await?;
    if last_seq > adopted {
        transaction.set(&adopted_key, &encode_u64(last_seq))?;
    }
    if last_seq > here {
        transaction.set(&last_seq_key, &encode_u64(last_seq))?;
    }
    Ok(true)
}

/// The chat sequence of the entry `sender` sent as `client_message_id` in `chat` (its dedupe
/// record; `None`: this log has no such entry): a moved queue entry finds its messages here by
/// it, whatever numbers the old home gave them.
pub async fn seq_of(
    transaction: &Transaction,
    chat: ChatId,
    sender: DeviceAddress,
    client_message_id: ClientMessageId,
) -> Result<Option<u64>, StoreError> {
    let log = ChatLog::new(chat);
    match transaction
        .get(&log.root.pack(&("dedupe", sender, client_message_id)))
        .await?
    {
        Some(value) => {
            let stored: StoredDedupe = decode_record(&value, "chat log dedupe")?;
            Ok(Some(stored.chat_seq))
        }
        None => Ok(None),
    }
}

/// Raises the last `sender_seq` this log accepted from `sender` in `chat` to `sender_seq` if it
/// is below (an atomic max: no read): the new home of a moved account takes each sender's place
/// in the account's chats from the old home, so the next envelope is checked against it.
pub fn raise_sender_seq(
    transaction: &Transaction,
    chat: ChatId,
    sender: DeviceAddress,
    sender_seq: u64,
) -> Result<(), StoreError> {
    let log = ChatLog::new(chat);
    let mark = encode_u64(sender_seq);
    transaction.atomic_max(&log.root.pack(&("sender_seq", sender)), &mark)?;
    // Remembered apart: what came with a move may be retried here (see `append_after`).
    transaction.atomic_max(&log.root.pack(&("moved_mark", sender)), &mark)
}

/// A chat of this region's log and where each of its senders stands (their last `sender_seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatHeads {
    /// The chat.
    pub chat: ChatId,
    /// The last chat sequence given here.
    pub last_seq: u64,
    /// Each sender device of the chat here and its last accepted `sender_seq`.
    pub senders: Vec<(DeviceAddress, u64)>,
}

/// The chats of this region's log that `account` takes part in, looking at up to `scan_limit`
/// chats after `after` (from the first with `None`, at most [`LAYER_READ_ENTRIES_MAX`]): a chat
/// a device of the account sent in, the 1:1 chat of the account with one of the chat's
/// senders, or a chat whose last entry's envelope `names_account` says is for the account (a
/// group's chat it only reads). Returns them with where each sender stands, and the chat to go
/// on after (`None`: every chat was looked at). A chat where nobody ever sent has nothing to
/// move.
///
/// One single-key range read per chat of the region plus one read of its senders, and one of
/// its last entry when the account sent nothing there: the cost of a home move grows with the
/// chats its region holds. An index of each account's chats is the next step where that
/// matters (it costs a write on a sender's first envelope of a chat).
pub async fn chats_of(
    transaction: &Transaction,
    account: AccountId,
    after: Option<ChatId>,
    scan_limit: usize,
    names_account: impl Fn(&[u8]) -> bool,
) -> Result<(Vec<ChatHeads>, Option<ChatId>), StoreError> {
    let logs = Subspace::new(&("chat_log",));
    let (mut begin, end) = logs.range();
    if let Some(after) = after {
        (_, begin) = logs.subspace(&(after,)).range();
    }
    let mut found = Vec::new();
    let mut last = None;
    for _ in 0..scan_limit.clamp(1, LAYER_READ_ENTRIES_MAX) {
        let first = transaction
            .get_range(&begin, &end, RangeOptions::limit(1))
            .await?;
        let Some((key, _)) = first.first() else {
            return Ok((found, None));
        };
        let mut rest = key.get(logs.bytes().len()..).unwrap_or_default();
        let chat = ChatId::decode_from(&mut rest)
            .map_err(|error| StoreError::corrupt("chat log key", error))?;
        last = Some(chat);
        let log = ChatLog::new(chat);
        (_, begin) = log.root.range();
        let senders_space = log.root.subspace(&("sender_seq",));
        let (senders_begin, senders_end) = senders_space.range();
        let rows = transaction
            .get_range(
                &senders_begin,
                &senders_end,
                RangeOptions::limit(LAYER_READ_ENTRIES_MAX),
            )
            .await?;
        let mut senders = Vec::with_capacity(rows.len());
        for (key, value) in &rows {
            let (sender,): (DeviceAddress,) =
                decode_key(&senders_space, key, "chat log sender_seq key")?;
            senders.push((
                sender,
                crate::codec::decode_u64(value, "chat log sender_seq")?,
            ));
        }
        let sends = senders.iter().any(|(sender, _)| {
            sender.account == account || ChatId::direct(account, sender.account) == chat
        });
        if senders.is_empty() {
            continue;
        }
        let last_seq = read_u64(
            transaction,
            &log.root.pack(&("last_seq",)),
            "chat log last_seq",
        )
        .await?;
        let takes_part = sends
            || entry(transaction, chat, last_seq)
                .await?
                .is_some_and(|last| names_account(&last.envelope_bytes));
        if takes_part {
            found.push(ChatHeads {
                chat,
                last_seq,
                senders,
            });
        }
    }
    Ok((found, last))
}

/// The stored form of an entry (its chat and sequence are in the key).
#[derive(Clone, PartialEq, Message)]
struct StoredEntry {
    #[prost(uint64, tag = "1")]
    sender_account: u64,
    #[prost(uint32, tag = "2")]
    sender_device: u32,
    #[prost(bytes = "vec", tag = "3")]
    client_message_id: Vec<u8>,
    #[prost(uint64, tag = "4")]
    sender_seq: u64,
    #[prost(uint32, tag = "5")]
    sender_region: u32,
    #[prost(uint64, tag = "6")]
    server_time_ms: u64,
    #[prost(bytes = "bytes", tag = "7")]
    envelope: Bytes,
}

/// The stored original result of an append, for answering retries.
#[derive(Clone, PartialEq, Message)]
struct StoredDedupe {
    #[prost(uint64, tag = "1")]
    chat_seq: u64,
    #[prost(uint64, tag = "2")]
    server_time_ms: u64,
    /// Written by a home move's [`import_entry`]: the envelope itself has not been committed
    /// here yet (its first commit here is answered as an append, and queued).
    #[prost(bool, tag = "3")]
    imported: bool,
}

struct ChatLog {
    root: Subspace,
    entries: Subspace,
}

impl ChatLog {
    fn new(chat: ChatId) -> Self {
        let root = Subspace::new(&("chat_log", chat));
        let entries = root.subspace(&("entry",));
        ChatLog { root, entries }
    }
}

/// Decodes a stored entry; its envelope stays in `bytes`' buffer (a group message's envelope
/// holds an entry per member device: read once per member, it is not copied).
fn log_entry(chat_seq: u64, bytes: Vec<u8>) -> Result<LogEntry, StoreError> {
    let stored = StoredEntry::decode(Bytes::from(bytes))
        .map_err(|error| StoreError::corrupt("chat log entry", error))?;
    let client_message_id = ClientMessageId::from_bytes(&stored.client_message_id)
        .map_err(|error| StoreError::corrupt("chat log entry", error))?;
    Ok(LogEntry {
        chat_seq,
        sender: DeviceAddress {
            account: AccountId(stored.sender_account),
            device: DeviceId(stored.sender_device),
        },
        client_message_id,
        sender_seq: stored.sender_seq,
        sender_region: RegionId(stored.sender_region),
        server_time_ms: stored.server_time_ms,
        envelope_bytes: stored.envelope,
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties;
