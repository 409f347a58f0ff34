//! Receipts at the region: routing the receipt of each message an ack or a sweep removed from
//! a queue (queued here for a sender homed here, pushed to the outbox for another region, and
//! group receipts for senders homed here through this region's own outbox), the pump that
//! applies those ([`deliver_local_receipts`]), and receipts forwarded by another region
//! ([`apply_forwarded_receipts`]). Every receipt only moves forward (`fdb_layers::receipts`),
//! and the receipts one transaction moves forward reach each sender device as one queue entry.

use super::*;

/// A receipt state reached at a time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Transition {
    pub(super) state: ReceiptState,
    pub(super) now_ms: u64,
}

/// [`route_receipt`] for every message a removed queue entry of `device` held (none for an
/// entry of receipts).
pub(super) async fn route_item_receipts(
    tx: &Transaction,
    local: RegionId,
    device: DeviceAddress,
    item: &QueueItem,
    transition: Transition,
    effects: &mut Effects,
    routing: &mut ReceiptRouting,
) -> Result<(), StoreError> {
    let (Some(chat), messages) = item.messages() else {
        return Ok(());
    };
    for message in messages {
        let reference = (chat, message.chat_seq, message.origin);
        route_receipt(tx, local, device, reference, transition, effects, routing).await?;
    }
    Ok(())
}

/// The sender of log entry `chat#chat_seq` as the entry names it (`None`: no such entry), for
/// a queue entry written before queue entries named their sender.
pub(crate) async fn logged_origin(
    tx: &Transaction,
    chat: ChatId,
    chat_seq: u64,
) -> Result<Option<MessageOrigin>, StoreError> {
    Ok(chat_log::entry(tx, chat, chat_seq)
        .await?
        .map(|entry| MessageOrigin {
            sender: entry.sender,
            client_message_id: entry.client_message_id,
            sender_region: entry.sender_region,
            group: stored_envelope::is_group(&entry.envelope_bytes),
        }))
}

/// Sends the receipt of the log entry `chat#chat_seq` for `device` to the sender: queued here
/// when the sender is homed here, else pushed to the outbox of the sender's region. Runs only
/// for entries an ack or a sweep removed in this transaction, which makes it once per entry.
/// `pushes` numbers the transaction's outbox pushes.
#[allow(clippy::too_many_arguments)]
pub(super) async fn route_receipt(
    tx: &Transaction,
    local: RegionId,
    device: DeviceAddress,
    (chat, chat_seq, origin): (ChatId, u64, Option<MessageOrigin>),
    transition: Transition,
    effects: &mut Effects,
    routing: &mut ReceiptRouting,
) -> Result<(), StoreError> {
    let origin = match origin {
        Some(origin) => origin,
        // An entry queued before entries named their sender: the chat log entry does.
        None => match logged_origin(tx, chat, chat_seq).await? {
            Some(origin) => origin,
            None => return Ok(()),
        },
    };
    let receipt = QueuedReceipt {
        chat: chat.0.to_vec(),
        client_message_id: origin.client_message_id.0.to_vec(),
        recipient: device.into(),
        state: transition.state as i32,
        at_ms: transition.now_ms,
        sender: origin.sender.into(),
    };
    if origin.sender_region == local && !origin.group {
        routing.local.deliver(tx, receipt).await
    } else if origin.sender_region == local {
        // A group message's, for a sender homed here: every member's ack of one message makes
        // a receipt for the same sender queue, and appending each in its own ack would make
        // those acks conflict on that queue. The transaction's receipts go to this region's
        // outbox together, as one entry (versionstamped, no read), and the pump appends a batch
        // of them in one transaction (`deliver_local_receipts`).
        routing.local_group.push(receipt);
        effects.outbox_pushed = true;
        Ok(())
    } else {
        // Elsewhere: to the outbox for the sender's region, one entry per receipt (each is
        // forwarded with its own outbox number, which the other region applies once).
        routing
            .pushes
            .push(tx, origin.sender_region, &receipt.encode_to_vec())?;
        effects.outbox_pushed = true;
        Ok(())
    }
}

/// An entry of this region's outbox for itself: the group receipts one transaction made for
/// senders homed here. Its field has tag 15 so that an entry of an earlier build (one
/// `QueuedReceipt`, tags 1 to 6) decodes as none and is read as that receipt.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct LocalOutboxEntry {
    #[prost(message, repeated, tag = "15")]
    pub(super) receipts: Vec<QueuedReceipt>,
}

/// The receipts of one entry of this region's outbox for itself.
fn local_outbox_receipts(bytes: &[u8]) -> Result<Vec<QueuedReceipt>, prost::DecodeError> {
    let entry = LocalOutboxEntry::decode(bytes)?;
    if entry.receipts.is_empty() {
        return Ok(vec![QueuedReceipt::decode(bytes)?]);
    }
    Ok(entry.receipts)
}

/// What [`deliver_local_receipts`] did in one transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalReceiptsApplied {
    /// Receipts taken from the outbox (applied, or dropped as moving nothing forward).
    pub receipts: usize,
    /// Whether more may wait: run again.
    pub more: bool,
}

/// Appends the oldest receipts this region's outbox holds for itself (group receipts, see
/// `route_receipt`) to their senders' queues and removes their entries, in one transaction:
/// whole entries, at most `entries_limit` of them, until at least `limit` receipts are taken.
pub async fn deliver_local_receipts(
    tx: &Transaction,
    local: RegionId,
    (entries_limit, limit): (usize, usize),
    now_ms: u64,
) -> Outcome<LocalReceiptsApplied> {
    let mut effects = Effects::default();
    // A batch's receipts are mostly for one sender (a group message's members): its devices
    // are read once, and each of them gets the batch's receipts as one queue entry.
    let mut receipts = LocalReceipts::new(local);
    let mut applied = LocalReceiptsApplied::default();
    let mut last = None;
    let mut batch = Vec::new();
    let mut entries_taken = 0;
    // A few entries at a time (each holds up to `RECEIPTS_PER_QUEUE_ENTRY_MAX`), so that the
    // outbox is read no further than the batch takes.
    while applied.receipts < limit && entries_taken < entries_limit {
        let page = entries_limit
            .saturating_sub(entries_taken)
            .min(LOCAL_OUTBOX_ENTRIES_PER_READ);
        let entries = match last {
            None => outbox::peek_snapshot(tx, local, page).await?,
            Some(after) => outbox::peek_snapshot_after(tx, local, after, page).await?,
        };
        let full = entries.len() == page;
        for (seq, bytes) in entries {
            if applied.receipts >= limit {
                break;
            }
            match local_outbox_receipts(&bytes) {
                Ok(taken) => {
                    applied.receipts += taken.len();
                    batch.extend(taken);
                }
                Err(error) => {
                    tracing::error!(%error, "dropping an undecodable receipt of the outbox");
                }
            }
            entries_taken += 1;
            last = Some(seq);
        }
        if !full {
            break;
        }
    }
    // Stopped by a limit: more may wait (at worst one more round finds nothing).
    applied.more = applied.receipts >= limit || entries_taken >= entries_limit;
    receipts.deliver_many(tx, batch, Record::Yes).await?;
    let Some(last) = last else {
        return Ok(Ok((applied, effects)));
    };
    receipts
        .finish(tx, now_ms, &mut effects, &mut outbox::Pushes::new())
        .await?;
    outbox::remove_through(tx, local, last);
    Ok(Ok((applied, effects)))
}

/// The receipts one transaction routes: pushes to the outbox (numbered in order), and the
/// receipts for senders homed here.
pub(super) struct ReceiptRouting {
    pushes: outbox::Pushes,
    local: LocalReceipts,
    /// Group receipts for senders homed here, for this region's outbox.
    local_group: Vec<QueuedReceipt>,
}

impl ReceiptRouting {
    pub(super) fn new(local: RegionId) -> Self {
        ReceiptRouting {
            pushes: outbox::Pushes::new(),
            local: LocalReceipts::new(local),
            local_group: Vec::new(),
        }
    }

    /// Pushes the group receipts for senders homed here to this region's outbox, as entries
    /// of at most [`RECEIPTS_PER_QUEUE_ENTRY_MAX`], and queues the other receipts for senders
    /// homed here (see [`LocalReceipts::finish`]).
    pub(super) async fn finish(
        mut self,
        tx: &Transaction,
        local: RegionId,
        now_ms: u64,
        effects: &mut Effects,
    ) -> Result<(), StoreError> {
        for chunk in self.local_group.chunks(RECEIPTS_PER_QUEUE_ENTRY_MAX) {
            let entry = LocalOutboxEntry {
                receipts: chunk.to_vec(),
            };
            self.pushes.push(tx, local, &entry.encode_to_vec())?;
        }
        self.local
            .finish(tx, now_ms, effects, &mut self.pushes)
            .await
    }
}

/// A receipt's fields, parsed; `None` (logged) for a malformed one.
pub(super) struct ParsedReceipt {
    chat: ChatId,
    message: relay_proto::ClientMessageId,
    recipient: DeviceAddress,
    sender: DeviceAddress,
    state: ReceiptState,
}

impl ParsedReceipt {
    fn of(receipt: &QueuedReceipt) -> Option<Self> {
        let (Ok(chat), Ok(message), Ok(recipient), Ok(sender)) = (
            relay_proto::ChatId::from_bytes(&receipt.chat),
            relay_proto::ClientMessageId::from_bytes(&receipt.client_message_id),
            receipt.recipient.parse(),
            receipt.sender.parse(),
        ) else {
            tracing::warn!("dropping a malformed receipt");
            return None;
        };
        let Ok(state) = ReceiptState::try_from(receipt.state) else {
            tracing::warn!(
                state = receipt.state,
                "dropping a receipt with an unknown state"
            );
            return None;
        };
        Some(ParsedReceipt {
            chat,
            message,
            recipient,
            sender,
            state,
        })
    }
}

/// Whether the receipts [`LocalReceipts::deliver_many`] moves forward are recorded: only where
/// they could be taken twice (see `fdb_layers::receipts`, "What is recorded").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// A group's receipts, which the pump takes from this region's outbox by snapshot reads.
    Yes,
    /// Receipts another region made once and this one applies once, by outbox number.
    No,
}

/// Receipts for messages sent from this region that moved forward in one transaction, by the
/// sender device that gets them, with the devices of each sender account read once.
pub(super) struct LocalReceipts {
    local: RegionId,
    senders: BTreeMap<AccountId, SenderHere>,
    queued: BTreeMap<DeviceAddress, Vec<QueuedReceipt>>,
    /// Receipts for senders whose home moved away: for the outbox of their new home.
    forwarded: Vec<(RegionId, QueuedReceipt)>,
}

/// What a transaction found of a receipt's sender account here.
enum SenderHere {
    /// Homed here: its devices.
    Devices(Vec<DeviceAddress>),
    /// Its home moved to this region (or the mark says it is moving there).
    MovedTo(RegionId),
}

impl LocalReceipts {
    pub(super) fn new(local: RegionId) -> Self {
        LocalReceipts {
            local,
            senders: BTreeMap::new(),
            queued: BTreeMap::new(),
            forwarded: Vec::new(),
        }
    }

    /// Keeps `receipt`, made once by the removal of a queue entry here, for every device of the
    /// sender's account, unless a state recorded for its message and device is as far
    /// (`receipts::passes`; nothing is recorded: the removal makes it once).
    async fn deliver(
        &mut self,
        tx: &Transaction,
        receipt: QueuedReceipt,
    ) -> Result<(), StoreError> {
        let Some(parsed) = ParsedReceipt::of(&receipt) else {
            return Ok(());
        };
        let (chat, message, recipient, state) =
            (parsed.chat, parsed.message, parsed.recipient, parsed.state);
        if !receipts::passes(tx, chat, message, recipient, state).await? {
            return Ok(());
        }
        self.keep(tx, parsed.sender, receipt).await
    }

    /// [`LocalReceipts::deliver`] for many receipts: those of one message are moved forward
    /// together (read in one go; with [`Record::Yes`], written as one batch:
    /// `receipts::advance_many`).
    async fn deliver_many(
        &mut self,
        tx: &Transaction,
        taken: Vec<QueuedReceipt>,
        record: Record,
    ) -> Result<(), StoreError> {
        let mut by_message: Vec<((ChatId, relay_proto::ClientMessageId), Vec<_>)> = Vec::new();
        let mut index: HashMap<(ChatId, relay_proto::ClientMessageId), usize> = HashMap::new();
        for receipt in taken {
            let Some(parsed) = ParsedReceipt::of(&receipt) else {
                continue;
            };
            let key = (parsed.chat, parsed.message);
            let slot = *index.entry(key).or_insert_with(|| {
                by_message.push((key, Vec::new()));
                by_message.len() - 1
            });
            by_message[slot].1.push((parsed, receipt));
        }
        for ((chat, message), receipts) in by_message {
            let moves: Vec<(DeviceAddress, ReceiptState)> = receipts
                .iter()
                .map(|(parsed, _)| (parsed.recipient, parsed.state))
                .collect();
            let moved = match record {
                Record::Yes => receipts::advance_many(tx, chat, message, &moves).await?,
                Record::No => receipts::passes_many(tx, chat, message, &moves).await?,
            };
            for ((parsed, receipt), moved) in receipts.into_iter().zip(moved) {
                if moved {
                    self.keep(tx, parsed.sender, receipt).await?;
                }
            }
        }
        Ok(())
    }

    /// Keeps `receipt`, which moved forward, for every device of `sender`'s account.
    async fn keep(
        &mut self,
        tx: &Transaction,
        sender: DeviceAddress,
        receipt: QueuedReceipt,
    ) -> Result<(), StoreError> {
        let here = match self.senders.entry(sender.account) {
            std::collections::btree_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::btree_map::Entry::Vacant(unknown) => {
                unknown.insert(sender_here(tx, self.local, sender.account).await?)
            }
        };
        let devices = match here {
            SenderHere::Devices(devices) => devices,
            SenderHere::MovedTo(region) => {
                self.forwarded.push((*region, receipt));
                return Ok(());
            }
        };
        for address in devices.iter() {
            self.queued
                .entry(*address)
                .or_default()
                .push(receipt.clone());
        }
        Ok(())
    }

    /// Queues each device's receipts (enqueued at `now_ms`): one receipt as a `Receipt` entry,
    /// more as `Receipts` entries of at most [`RECEIPTS_PER_QUEUE_ENTRY_MAX`] each, so a group
    /// message's receipts from a batch of members cost the sender's devices one entry each.
    async fn finish(
        self,
        tx: &Transaction,
        now_ms: u64,
        effects: &mut Effects,
        pushes: &mut outbox::Pushes,
    ) -> Result<(), StoreError> {
        for (region, receipt) in &self.forwarded {
            pushes.push(tx, *region, &receipt.encode_to_vec())?;
            effects.outbox_pushed = true;
        }
        for (address, receipts) in self.queued {
            for chunk in receipts.chunks(RECEIPTS_PER_QUEUE_ENTRY_MAX) {
                let (item, pushed) = match chunk {
                    [receipt] => (
                        QueueItem::Receipt(receipt.encode_to_vec()),
                        wire::queue_entry::Item::Receipt(receipt.clone()),
                    ),
                    _ => {
                        let receipts = wire::QueuedReceipts {
                            receipts: chunk.to_vec(),
                        };
                        (
                            QueueItem::Receipts(receipts.encode_to_vec()),
                            wire::queue_entry::Item::Receipts(receipts),
                        )
                    }
                };
                // The sender's own queue may be the damaged one: that must not fail (and
                // quarantine) the device whose ack or the region whose batch brought the
                // receipt. An append that does not decode the queue's counters fails before it
                // writes; the sender's device is quarantined when it fetches.
                let appended = match device_queue::append(tx, address, &item, now_ms).await {
                    Err(error @ StoreError::Corrupt { .. }) => {
                        tracing::error!(%address, %error, "the queue of the receipt's sender device cannot be read; receipt not queued");
                        break;
                    }
                    appended => appended?,
                };
                match appended {
                    QueueAppend::Appended { queue_seq } => {
                        let entry = wire::QueueEntry {
                            queue_seq,
                            item: Some(pushed),
                        };
                        effects.appended(address, queue_seq, Some(entry));
                    }
                    // Only the receipt's push to a device whose queue is at the cap is
                    // skipped, so acknowledging the message never fails because of it.
                    QueueAppend::Full { depth } => {
                        tracing::warn!(%address, depth, "queue full; receipt not queued");
                    }
                }
            }
        }
        Ok(())
    }
}

/// Where the receipts for `account` go: its devices when it is homed here, its new home when
/// it moved away (the old home's away mark, read with a conflict, so a receipt racing the mark
/// is retried and forwarded; or the directory's record of a home elsewhere).
async fn sender_here(
    tx: &Transaction,
    local: RegionId,
    account: AccountId,
) -> Result<SenderHere, StoreError> {
    if let Some(region) = fdb_layers::home_move::away(tx, account).await? {
        return Ok(SenderHere::MovedTo(region));
    }
    let devices: Vec<DeviceAddress> = directory::devices(tx, account)
        .await?
        .into_iter()
        .map(|device| device.device)
        .collect();
    if devices.is_empty()
        && let Some(record) = directory::account_by_id(tx, account).await?
        && record.home_region != local
    {
        return Ok(SenderHere::MovedTo(record.home_region));
    }
    Ok(SenderHere::Devices(devices))
}

/// Applies receipts forwarded by another region, once each (by origin region and sequence).
pub async fn apply_forwarded_receipts(
    tx: &Transaction,
    local: RegionId,
    request: &wire::ForwardReceipts,
    now_ms: u64,
) -> Outcome<()> {
    let mut effects = Effects::default();
    let mut receipts = LocalReceipts::new(local);
    let mut applied = Vec::with_capacity(request.receipts.len());
    for forward in &request.receipts {
        let Ok(sender) = forward.receipt.sender.parse() else {
            return refuse(ErrorCode::Malformed, "receipt with an invalid sender");
        };
        // An account that moved away since the receipt was sent here is still known: its
        // receipt goes on to the new home (`LocalReceipts` forwards it).
        if directory::account_by_id(tx, sender.account)
            .await?
            .is_none()
        {
            return refuse(
                ErrorCode::UnknownAccount,
                format!("{sender} is not known here"),
            );
        }
        let Some(origin_seq) = outbox::OutboxSeq::from_bytes(&forward.origin_stamp) else {
            return refuse(
                ErrorCode::Malformed,
                "receipt forward without a 12-byte origin stamp",
            );
        };
        if outbox::mark_applied(tx, RegionId(forward.origin_region), origin_seq).await? {
            applied.push(forward.receipt.clone());
        }
    }
    // Those of one message together: a group message's receipts from the other region's
    // members are one batch of its receipt states.
    receipts.deliver_many(tx, applied, Record::No).await?;
    receipts
        .finish(tx, now_ms, &mut effects, &mut outbox::Pushes::new())
        .await?;
    Ok(Ok(((), effects)))
}
