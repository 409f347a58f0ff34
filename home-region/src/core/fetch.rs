//! A device's fetch and ack ([`fetch_and_ack`]): acknowledged entries become delivered
//! receipts for their senders, then the entries after the device's cursor are read, each
//! message resolved to its chat log entry and the device's own ciphertext.

use super::*;

/// Acknowledges entries of a device's queue (turning message acks into delivered receipts for
/// the senders), then reads the entries after a cursor. A quarantined device is refused. A
/// record of the queue that does not decode fails the transaction with
/// [`StoreError::Corrupt`]: the service quarantines the device.
pub async fn fetch_and_ack(
    tx: &Transaction,
    local: RegionId,
    device: DeviceAddress,
    request: &wire::FetchAndAck,
    quarantined: &BTreeSet<DeviceAddress>,
    now_ms: u64,
) -> Outcome<QueueBatch> {
    if quarantined.contains(&device) {
        return Ok(Err(quarantined_refusal(device)));
    }
    if directory::device(tx, device).await?.is_none() {
        return refuse(
            ErrorCode::UnknownAccount,
            format!("unknown device {device}"),
        );
    }
    // Checked before anything is written: a device behind what it acknowledged would
    // acknowledge entries it cannot decrypt (its ratchets went back with its cursor).
    let marks = device_state::marks(tx, device).await?;
    if let Some(fetch) = &request.fetch
        && fetch.after_queue_seq < marks.acked_queue_seq
    {
        return refuse(
            ErrorCode::DeviceRolledBack,
            format!(
                "device {device} fetches after queue entry {}, but it already acknowledged \
                 entry {}; {ROLLED_BACK_ADVICE}",
                fetch.after_queue_seq, marks.acked_queue_seq
            ),
        );
    }
    let mut effects = Effects::default();
    let mut routing = ReceiptRouting::new(local);
    if let Some(ack) = &request.ack {
        let removed = device_queue::ack(tx, device, &ack.queue_seqs).await?;
        if let Some(highest) = removed.iter().map(|(queue_seq, _)| *queue_seq).max() {
            device_state::record_ack(tx, device, highest)?;
        }
        let transition = Transition {
            state: ReceiptState::Delivered,
            now_ms,
        };
        for (_, item) in removed {
            route_item_receipts(
                tx,
                local,
                device,
                &item,
                transition,
                &mut effects,
                &mut routing,
            )
            .await?;
        }
    }
    routing.finish(tx, local, now_ms, &mut effects).await?;
    let mut batch = QueueBatch {
        entries: Vec::new(),
        // A hint for the device: a snapshot read, so appends to this queue never refuse a
        // fetch (the device hears of them from the push after their commit).
        latest_queue_seq: device_queue::latest_snapshot(tx, device).await?,
        one_time_keys_remaining: keys::one_time_key_count(tx, device).await?,
        fallback_key: keys::fallback_key_state(tx, device).await? as i32,
    };
    if let Some(fetch) = &request.fetch {
        let limit = fetch.limit.clamp(1, QUEUE_FETCH_ENTRIES_MAX) as usize;
        // The page stops at its byte budget (the device fetches again after the last entry it
        // got); it always holds the first entry, which fits a frame on its own.
        let mut bytes = 0;
        for (queue_seq, item) in
            device_queue::read_after_snapshot(tx, device, fetch.after_queue_seq, limit).await?
        {
            let entry = queued_entry(tx, device, queue_seq, item).await?;
            bytes += entry.encoded_len();
            if bytes > QUEUE_FETCH_BYTES_MAX && !batch.entries.is_empty() {
                break;
            }
            batch.entries.push(entry);
        }
    }
    Ok(Ok((batch, effects)))
}

/// The wire form of one queue entry of `device`: a message reference is resolved to the chat
/// log entry and the device's own ciphertext, a receipt decoded. A record that does not decode
/// (or a reference to a missing entry) is [`StoreError::Corrupt`].
pub async fn queued_entry(
    tx: &Transaction,
    device: DeviceAddress,
    queue_seq: u64,
    item: QueueItem,
) -> Result<QueueEntry, StoreError> {
    let item = match item {
        QueueItem::MessageRef {
            chat,
            chat_seq,
            origin,
            shown_seq,
        } => {
            let message = MessageInQueue {
                chat_seq,
                origin,
                shown_seq,
            };
            let mut queued = queued_messages(tx, device, chat, &[message]).await?;
            queue_entry::Item::Message(queued.remove(0))
        }
        QueueItem::MessageRefs { chat, messages } => {
            let queued = queued_messages(tx, device, chat, &messages).await?;
            queue_entry::Item::Messages(wire::QueuedMessages { messages: queued })
        }
        QueueItem::Receipt(bytes) => queue_entry::Item::Receipt(
            QueuedReceipt::decode(&bytes[..]).map_err(|error| corrupt("stored receipt", error))?,
        ),
        QueueItem::Receipts(bytes) => queue_entry::Item::Receipts(
            wire::QueuedReceipts::decode(&bytes[..])
                .map_err(|error| corrupt("stored receipts", error))?,
        ),
    };
    Ok(QueueEntry {
        queue_seq,
        item: Some(item),
    })
}

/// The messages of the log entries of `chat` that `messages` name (at least one), in that
/// order, as `device` gets them, each under the number it is shown; a missing entry is
/// [`StoreError::Corrupt`]. One range read when they follow each other (a lane's batch), else
/// one read each.
async fn queued_messages(
    tx: &Transaction,
    device: DeviceAddress,
    chat: ChatId,
    messages: &[MessageInQueue],
) -> Result<Vec<QueuedMessage>, StoreError> {
    let missing = |chat_seq: u64| {
        corrupt(
            "device queue",
            format!("queue of {device} references missing log entry {chat}#{chat_seq}"),
        )
    };
    let mut queued = Vec::with_capacity(messages.len());
    let consecutive = messages
        .windows(2)
        .all(|pair| pair[1].chat_seq == pair[0].chat_seq + 1);
    if let (true, Some(first), Some(last)) = (consecutive, messages.first(), messages.last()) {
        let mut found = chat_log::read_between(tx, chat, first.chat_seq, last.chat_seq)
            .await?
            .into_iter();
        for message in messages {
            let entry = found
                .next()
                .filter(|entry| entry.chat_seq == message.chat_seq)
                .ok_or_else(|| missing(message.chat_seq))?;
            let entry = own_copy(tx, device, chat, entry, message).await?;
            queued.push(message_for(device, chat, entry, message.shown())?);
        }
        return Ok(queued);
    }
    for message in messages {
        let entry = chat_log::entry(tx, chat, message.chat_seq)
            .await?
            .ok_or_else(|| missing(message.chat_seq))?;
        let entry = own_copy(tx, device, chat, entry, message).await?;
        queued.push(message_for(device, chat, entry, message.shown())?);
    }
    Ok(queued)
}

/// `entry` as `device`'s account keeps it: in a view of the chat (the account moved in), the
/// old home's build of a group message where it differs from the log's
/// (`chat_log::views::keep_copy`), one point read per message shown in a view; else as it is.
async fn own_copy(
    tx: &Transaction,
    device: DeviceAddress,
    chat: ChatId,
    mut entry: chat_log::LogEntry,
    message: &MessageInQueue,
) -> Result<chat_log::LogEntry, StoreError> {
    if message.shown_seq.is_some()
        && let Some(copy) =
            chat_log::views::copy_of(tx, chat, device.account, entry.chat_seq).await?
    {
        entry.envelope_bytes = copy.into();
    }
    Ok(entry)
}

/// The message of `entry` as `device` gets it: its own ciphertext and the group fields, under
/// number `shown` (the entry's own, but where the device's account has a view of the chat).
fn message_for(
    device: DeviceAddress,
    chat: ChatId,
    entry: chat_log::LogEntry,
    shown: u64,
) -> Result<QueuedMessage, StoreError> {
    let chat_seq = entry.chat_seq;
    // Only this device's entry and the group fields are decoded, in one walk: a group
    // message's envelope, read once per member, holds an entry per member device.
    let (envelope, ciphertext) = stored_envelope::member_view(&entry.envelope_bytes, device.into())
        .map_err(|error| corrupt("stored envelope", error))?;
    let Some(ciphertext) = ciphertext else {
        return Err(corrupt(
            "chat log",
            format!("log entry {chat}#{chat_seq} has no ciphertext for {device}"),
        ));
    };
    let header = EntryHeader {
        sender: entry.sender,
        client_message_id: entry.client_message_id,
        sender_seq: entry.sender_seq,
        server_time_ms: entry.server_time_ms,
    };
    Ok(queued_message(chat, shown, &header, ciphertext, envelope))
}
