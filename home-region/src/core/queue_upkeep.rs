//! Keeping device queues deliverable: an entry that cannot be read is removed by the operator's
//! repair ([`repair_queue_entry`]), entries past the retention window expire
//! ([`expire_queues`]); either way the sender hears "expired" when the entry can be attributed.

use super::*;

/// What [`repair_queue_entry`] did with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryRepair {
    /// No entry has this sequence (acknowledged, expired or repaired already).
    Gone,
    /// The entry reads well: left in place.
    Readable,
    /// Removed; the sender of each message it held that can still be attributed was told with
    /// an "expired" receipt.
    RemovedSendersTold {
        /// The sending device and the message's client message id, for each message told.
        told: Vec<(DeviceAddress, relay_proto::ClientMessageId)>,
        /// What could not be read.
        damage: String,
    },
    /// Removed; nothing says whose it was (the entry, or the metadata of the log entry it
    /// references, does not decode), so nobody could be told.
    RemovedUnattributed {
        /// What could not be read.
        damage: String,
    },
}

/// Removes entry `queue_seq` of `device`'s queue if it cannot be delivered (it, the log
/// entry it references, or the envelope there does not decode), telling the sender with an
/// "expired" receipt, routed like the retention sweep's, when the log entry still names the
/// sender. A readable entry is left.
pub async fn repair_queue_entry(
    tx: &Transaction,
    local: RegionId,
    device: DeviceAddress,
    queue_seq: u64,
    now_ms: u64,
) -> Result<(EntryRepair, Effects), StoreError> {
    let mut effects = Effects::default();
    let inspected = device_queue::inspect(tx, device, queue_seq.saturating_sub(1), 1).await?;
    let Some(found) = inspected
        .into_iter()
        .find(|entry| entry.queue_seq == queue_seq)
    else {
        return Ok((EntryRepair::Gone, effects));
    };
    let item = match found.item {
        Ok((item, _)) => item,
        Err(error) => {
            device_queue::remove_unreadable(tx, device, queue_seq).await?;
            let damage = error.to_string();
            return Ok((EntryRepair::RemovedUnattributed { damage }, effects));
        }
    };
    let damage = match queued_entry(tx, device, queue_seq, item.clone()).await {
        Ok(_) => return Ok((EntryRepair::Readable, effects)),
        Err(error @ StoreError::Corrupt { .. }) => error.to_string(),
        Err(error) => return Err(error),
    };
    device_queue::ack(tx, device, &[queue_seq]).await?;
    let (Some(chat), messages) = item.messages() else {
        // A receipt about someone else's message: losing it loses a tick, nothing to tell.
        return Ok((EntryRepair::RemovedUnattributed { damage }, effects));
    };
    let transition = Transition {
        state: ReceiptState::Expired,
        now_ms,
    };
    let mut routing = ReceiptRouting::new(local);
    let mut told = Vec::new();
    for message in messages {
        // The sender as the entry names it, else as the log entry does, if that still reads.
        let origin = match message.origin {
            Some(origin) => Some(origin),
            None => match logged_origin(tx, chat, message.chat_seq).await {
                Ok(origin) => origin,
                Err(StoreError::Corrupt { .. }) => None,
                Err(error) => return Err(error),
            },
        };
        let Some(origin) = origin else {
            continue;
        };
        route_receipt(
            tx,
            local,
            device,
            (chat, message.chat_seq, Some(origin)),
            transition,
            &mut effects,
            &mut routing,
        )
        .await?;
        told.push((origin.sender, origin.client_message_id));
    }
    routing.finish(tx, local, now_ms, &mut effects).await?;
    let repair = if told.is_empty() {
        EntryRepair::RemovedUnattributed { damage }
    } else {
        EntryRepair::RemovedSendersTold { told, damage }
    };
    Ok((repair, effects))
}

/// What [`expire_queues`] did in one transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiredQueues {
    /// Queue entries removed because they waited longer than the retention window.
    pub expired_entries: usize,
    /// Whether more may have expired: run again.
    pub more: bool,
}

/// Removes queue entries older than the retention window (30 days), at most
/// [`EXPIRE_BATCH_ENTRIES_MAX`], and tells each expired message's sender with an "expired"
/// receipt, routed like a delivered one (queued here, or through the outbox to the sender's
/// region). Expired receipts for a device are dropped: they were about its own messages.
pub async fn expire_queues(
    tx: &Transaction,
    local: RegionId,
    now_ms: u64,
) -> Outcome<ExpiredQueues> {
    let report = device_queue::sweep_expired(
        tx,
        SweepScope::All,
        now_ms,
        device_queue::QUEUE_RETENTION_MS_DEFAULT,
        EXPIRE_BATCH_ENTRIES_MAX,
    )
    .await?;
    let mut effects = Effects::default();
    let mut routing = ReceiptRouting::new(local);
    let transition = Transition {
        state: ReceiptState::Expired,
        now_ms,
    };
    for (device, _, item) in &report.expired {
        route_item_receipts(
            tx,
            local,
            *device,
            item,
            transition,
            &mut effects,
            &mut routing,
        )
        .await?;
    }
    routing.finish(tx, local, now_ms, &mut effects).await?;
    let expired = ExpiredQueues {
        expired_entries: report.expired.len(),
        more: report.more,
    };
    Ok(Ok((expired, effects)))
}
