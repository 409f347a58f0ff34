//! The region's decisions, as functions over one storage transaction.
//!
//! Nothing here opens a socket, spawns a task or reads a clock: the time comes in as `now_ms`,
//! the answer and the [`Effects`] (devices to notify, outbox work) come back as values, and the
//! service performs the effects only after the transaction committed. Because a transaction may
//! be retried, every function is safe to run more than once for one commit.
//!
//! The path of an envelope through [`commit_envelope`], in one transaction:
//! 1. every listed recipient account homed here must be covered by exactly its current devices
//!    (the sender's own device excepted), else "mismatched devices" with the current lists;
//! 2. the chat log deduplicates by (chat, sender device, client message id), checks sender_seq
//!    is the next one, and assigns the next gapless chat sequence;
//! 3. every local recipient device gets a queue entry under its own gapless queue sequence.
//!    The envelopes of one chat committed in one transaction (a lane's batch, see
//!    [`commit_envelope_into`]) reach each device as one entry ([`FanOut`]), so a group's
//!    fan-out writes one entry per member device per commit, not one per message.
//!
//! A device whose queue could not be read is **quarantined** (the service keeps the set, loaded
//! from the store's quarantine layer): [`commit_envelope`] refuses every envelope with a
//! quarantined local recipient with `RecipientUnavailable` and never acknowledges it, and so
//! does a quarantined device's own [`fetch_and_ack`]. The queue metadata a commit reads anyway
//! (depth and latest sequence of each local recipient) is checked before anything is written:
//! a record there that does not decode is [`CommitDecision::RecipientQueueUnreadable`], a
//! refusal, never an acknowledgement. [`repair_queue_entry`] removes an entry that cannot be
//! delivered, telling the sender with an "expired" receipt when the entry can still be
//! attributed.
//!
//! A device whose state went back (its data directory restored from a copy: older Olm
//! ratchets, counters and queue cursor) is refused with [`ErrorCode::DeviceRolledBack`] before
//! anything it sends is stored or anything it acknowledges turns into a delivered receipt: a
//! new envelope under a `sender_seq` it already used ([`commit_envelope`]), a fetch from a
//! cursor behind an entry it already acknowledged ([`fetch_and_ack`]), and, at the edge, an
//! authentication presenting a cursor or envelope counter behind the marks [`signing_key`]
//! reports (see `fdb_layers::device_state`).
//!
//! Layer calls that are not idempotent by nature (registration, key uploads and claims) take an
//! [`IdempotencyKey`] that the service issues once per request, outside the transaction, so a
//! commit retried after an unknown result applies once and answers as the first attempt did.
//! Every other write here is guarded in its own transaction: queue appends of a message by the
//! chat log's dedupe, receipt appends and outbox pushes by the ack or sweep that removed the
//! entry and by the receipt that moved forward.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use fdb_layers::chat_log::{AppendOutcome, NewEntry};
use fdb_layers::device_queue::{MessageInQueue, MessageOrigin, QueueAppend, QueueItem, SweepScope};
use fdb_layers::keys::IdempotencyKey;
use fdb_layers::limits::DEVICE_QUEUE_DEPTH_MAX;
use fdb_layers::store_identity::{self, RegisterOutcome, StoreId};
use fdb_layers::{
    StoreError, Transaction, chat_log, device_queue, device_state, directory, home_move, keys,
    outbox, receipts,
};
use prost::Message;
use relay_planted::PlantedBug;
use relay_proto::limits::{
    GROUP_MEMBERS_MAX, MESSAGES_PER_QUEUE_ENTRY_MAX, ONE_TIME_KEYS_PER_UPLOAD_MAX,
    QUEUE_ENTRY_OVERHEAD_BYTES_MAX, QUEUE_FETCH_BYTES_MAX, QUEUE_FETCH_ENTRIES_MAX,
    QUEUED_MESSAGES_BYTES_MAX, RECEIPTS_PER_QUEUE_ENTRY_MAX,
};
use relay_proto::wire::{
    self, AccountDevices, AccountInfo, Committed, DeviceKeys, EnvelopeKind, GroupChanged,
    KeyBundle, MismatchedDevices, QueueBatch, QueueEntry, QueuedMessage, QueuedReceipt,
    ReceiptState, ResendFrom, SendOutcome, SentEverywhere, queue_entry, send_outcome,
};
use relay_proto::{
    AccountId, ChatId, DeviceAddress, DeviceId, ErrorCode, GroupId, ProtoError, RegionId,
};

use crate::limits::{
    EXPIRE_BATCH_ENTRIES_MAX, LOCAL_OUTBOX_ENTRIES_PER_READ, MOVE_ARRIVAL_SLACK_MS,
};
use crate::stored_envelope;

mod device_keys;
mod fetch;
mod imported;
mod queue_upkeep;
mod receipt_routing;
mod shown;

pub use device_keys::{
    check_fallback_key, check_keys, claim_keys, register_device, signing_key, upload_one_time_keys,
};
pub use fetch::{fetch_and_ack, queued_entry};
use imported::{adopt_group_build, keep_own_copies, stored_recipients};
pub(crate) use imported::{another_group_build, complete_entry};
pub use queue_upkeep::{EntryRepair, ExpiredQueues, expire_queues, repair_queue_entry};

pub(crate) use receipt_routing::logged_origin;
pub use receipt_routing::{LocalReceiptsApplied, apply_forwarded_receipts, deliver_local_receipts};
use receipt_routing::{ReceiptRouting, Transition, route_item_receipts, route_receipt};
use shown::{ShownNumbers, shown_numbers};

/// What a device whose state went back (a data directory restored from a copy) is told to do.
pub const ROLLED_BACK_ADVICE: &str = "register this device again in a new data directory \
(linking a new device to an account is coming)";

/// What a request asks the service to do once its transaction committed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// Devices whose queues grew, with their new latest queue sequence.
    pub notify: BTreeMap<DeviceAddress, u64>,
    /// What goes along with each device's push: the entries appended for it, in wire form, as
    /// far as the region could build them, from the first this transaction appended
    /// ([`Effects::appended`]).
    pub pushed: BTreeMap<DeviceAddress, wire::EntryRun>,
    /// The cross-region outbox has new entries to deliver.
    pub outbox_pushed: bool,
}

impl Effects {
    /// Notes an entry appended to `device`'s queue as `queue_seq`, with its wire form when the
    /// region built it to send along with the push (`None`: the device fetches it).
    pub fn appended(&mut self, device: DeviceAddress, queue_seq: u64, entry: Option<QueueEntry>) {
        let latest = self.notify.entry(device).or_insert(queue_seq);
        *latest = (*latest).max(queue_seq);
        self.pushed
            .entry(device)
            .or_default()
            .push(queue_seq, entry);
    }

    /// Adds what `other` asks for: the higher latest sequence of each device (with `other`'s
    /// pushed entries where they follow these), and the outbox.
    pub fn merge(&mut self, other: Effects) {
        let mut other_pushed = other.pushed;
        for (device, latest) in other.notify {
            let known = self.notify.entry(device).or_insert(latest);
            *known = (*known).max(latest);
            let pushed = other_pushed.remove(&device).unwrap_or_default();
            self.pushed.entry(device).or_default().extend(pushed);
        }
        self.outbox_pushed |= other.outbox_pushed;
    }
}

/// A request's answer: a refusal for the peer, or a value plus its effects.
pub type Outcome<T> = Result<Result<(T, Effects), ProtoError>, StoreError>;

fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Outcome<T> {
    Ok(Err(ProtoError::new(code, message)))
}

/// The wire form of a directory record.
pub fn account_info(record: &directory::AccountRecord) -> AccountInfo {
    AccountInfo {
        account: record.id.0,
        name: record.name.clone(),
        region: record.home_region.0,
        epoch: record.epoch,
    }
}

/// How many of `entries` (outbox entries in order) may leave the region: with a standby, only
/// those of commits it confirmed (`confirmed`, the store version it holds); without one, all.
pub fn confirmed_prefix<T>(entries: &[(outbox::OutboxSeq, T)], confirmed: Option<u64>) -> usize {
    match confirmed {
        None => entries.len(),
        Some(confirmed) => entries
            .iter()
            .take_while(|(seq, _)| seq.commit_version() <= confirmed)
            .count(),
    }
}

/// What [`commit_envelope`] decided.
#[derive(Debug, Clone)]
pub enum CommitDecision {
    /// The answer for the sender's edge (sent, mismatched devices, or resend from).
    Answer(SendOutcome),
    /// A local recipient device's queue metadata does not decode: nothing was written, the
    /// envelope is refused (`RecipientUnavailable`) and the service quarantines the device.
    RecipientQueueUnreadable {
        /// The device.
        device: DeviceAddress,
        /// What did not decode.
        error: StoreError,
    },
}

/// The refusal of an envelope or a fetch for a quarantined device.
pub fn quarantined_refusal(device: DeviceAddress) -> ProtoError {
    ProtoError::new(
        ErrorCode::RecipientUnavailable,
        format!(
            "the queue of device {device} cannot be read (damaged storage); nothing is accepted \
             for it until an operator repairs the store (relayd admin check-store)"
        ),
    )
}

/// A group's members at one version, as a region checks a group envelope against them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMembership {
    /// The group.
    pub group: GroupId,
    /// The membership version.
    pub version: u64,
    /// The members.
    pub members: BTreeSet<AccountId>,
}

impl GroupMembership {
    /// The membership in the directory writer's answer (a `GroupInfo` with its members).
    pub fn from_info(info: &wire::GroupInfo) -> Result<Self, ProtoError> {
        if info.group == 0 || info.version == 0 || info.members.len() > GROUP_MEMBERS_MAX {
            return Err(ProtoError::new(
                ErrorCode::Internal,
                "the directory writer answered a group that cannot be",
            ));
        }
        Ok(GroupMembership {
            group: GroupId(info.group),
            version: info.version,
            members: info
                .members
                .iter()
                .map(|member| AccountId(member.account))
                .collect(),
        })
    }
}

/// The current membership of `group` in this store (the directory writer's), `None` when
/// there is no such group.
pub async fn group_membership(
    tx: &Transaction,
    group: GroupId,
) -> Result<Option<GroupMembership>, StoreError> {
    if directory::group(tx, group).await?.is_none() {
        return Ok(None);
    }
    Ok(Some(GroupMembership {
        group,
        version: directory::group_version(tx, group).await?,
        members: directory::members(tx, group).await?.into_iter().collect(),
    }))
}

/// Where [`commit_envelope`] finds the membership of a group envelope's group.
#[derive(Debug, Clone, Copy)]
pub enum GroupSource<'a> {
    /// This region is the directory writer: the membership is read in the commit's own
    /// transaction, so a change commits either before the check or after the envelope.
    Directory,
    /// Another region: the membership its cache holds (refreshed from the writer when the
    /// envelope named a newer version); `None` for a 1:1 envelope.
    Known(Option<&'a GroupMembership>),
}

/// Commits an envelope for this region's recipients (steps 1–3 of the module doc), unless a
/// local recipient device is in `quarantined`.
///
/// A group envelope is checked against its group's membership (from `groups`) first: the
/// sender's account must be a member (else `UnknownGroup`, as a non-member sees any group); a
/// version newer than the membership is `Malformed` (no such version exists yet); a message
/// for an older one or whose `recipient_accounts` are not the members, or a key share for the
/// current version naming an account that is not one, is answered with [`GroupChanged`] (the
/// current version and members, and the current devices of the members homed here); a key
/// share for an older version may name members removed since. Then coverage: a message must
/// cover exactly the current devices of every member homed here (the sender's own account
/// included, listed or not), a key share a subset of them.
pub async fn commit_envelope(
    tx: &Transaction,
    local: RegionId,
    envelope: &wire::Envelope,
    sender_region: RegionId,
    groups: GroupSource<'_>,
    quarantined: &BTreeSet<DeviceAddress>,
    now_ms: u64,
) -> Outcome<CommitDecision> {
    let mut fan_out = FanOut::default();
    let committed = commit_envelope_into(
        tx,
        local,
        envelope,
        sender_region,
        groups,
        quarantined,
        now_ms,
        &mut fan_out,
    )
    .await?;
    let (decision, mut effects) = match committed {
        Ok(committed) => committed,
        Err(refusal) => return Ok(Err(refusal)),
    };
    fan_out.write(tx, now_ms, &mut effects).await?;
    Ok(Ok((decision, effects)))
}

/// The queue entries the envelopes of one transaction fan out to, written at its end
/// ([`FanOut::write`]): consecutive messages of one chat for one device become one entry
/// ([`QueueItem::MessageRefs`], at most [`MESSAGES_PER_QUEUE_ENTRY_MAX`] messages and
/// [`QUEUED_MESSAGES_BYTES_MAX`] of ciphertext), a lone message a [`QueueItem::MessageRef`].
///
/// It also keeps what the transaction's envelopes read of the recipients (each account's home
/// and devices, each queue's depth), so a batch of envelopes to one group reads them once:
/// within one transaction they cannot change.
#[derive(Debug, Default)]
pub struct FanOut {
    entries: BTreeMap<DeviceAddress, Vec<GatheredEntry>>,
    /// Account → its devices when it is homed here, `None` when it is not (or unknown).
    homed_devices: HashMap<AccountId, Option<Vec<DeviceAddress>>>,
    /// Device → the depth its queue had at the transaction's read version.
    depths: HashMap<DeviceAddress, u64>,
    /// Group → its membership as the transaction read it (at the directory writer), so the
    /// envelopes of one group committed together read it once.
    memberships: HashMap<GroupId, Option<GroupMembership>>,
    /// (Recipient, sender) → whether the recipient blocked the sender (read once per
    /// transaction, with a snapshot read: see `fdb_layers::blocks`).
    blocks: HashMap<(AccountId, AccountId), bool>,
    /// The envelopes this transaction appended to the log, so their queue entries go along
    /// with the pushes that announce them (`(chat, chat_seq)` → the envelope).
    logged: HashMap<(ChatId, u64), Logged>,
}

/// An envelope a transaction logged, as its queue entries show it to each recipient device:
/// the log entry's fields, and each device's ciphertext found in one walk over the envelope
/// (a fetch reading the stored envelope walks it once per member device).
#[derive(Debug)]
struct Logged {
    header: EntryHeader,
    fields: stored_envelope::GroupFields,
    /// Device → its ciphertext, the first entry of each device.
    ciphertexts: HashMap<wire::DeviceAddr, wire::DeviceCiphertext>,
}

impl Logged {
    fn new(parsed: &wire::ParsedEnvelope, envelope: &wire::Envelope, server_time_ms: u64) -> Self {
        let mut ciphertexts = HashMap::with_capacity(envelope.ciphertexts.len());
        for entry in &envelope.ciphertexts {
            ciphertexts
                .entry(entry.recipient)
                .or_insert_with(|| entry.clone());
        }
        Logged {
            header: EntryHeader {
                sender: parsed.sender,
                client_message_id: parsed.client_message_id,
                sender_seq: parsed.sender_seq,
                server_time_ms,
            },
            fields: stored_envelope::GroupFields {
                group: envelope.group,
                kind: envelope.kind,
                group_ciphertext: envelope.group_ciphertext.clone(),
                group_session_id: envelope.group_session_id.clone(),
            },
            ciphertexts,
        }
    }

    /// Log entry `chat_seq` of `chat` as `device`'s queue shows it (what [`message_for`] makes
    /// of the stored envelope); `None` when the envelope has no entry for the device.
    fn message_for(
        &self,
        device: DeviceAddress,
        chat: ChatId,
        chat_seq: u64,
    ) -> Option<QueuedMessage> {
        let ciphertext = self.ciphertexts.get(&device.into())?.clone();
        Some(queued_message(
            chat,
            chat_seq,
            &self.header,
            ciphertext,
            self.fields.clone(),
        ))
    }
}

/// What a queued message says of its log entry besides the envelope.
#[derive(Debug)]
struct EntryHeader {
    sender: DeviceAddress,
    client_message_id: relay_proto::ClientMessageId,
    sender_seq: u64,
    server_time_ms: u64,
}

/// The message a device's queue shows under number `shown`: the log entry's `header`, the
/// device's own `ciphertext` and the envelope's group `fields`.
fn queued_message(
    chat: ChatId,
    shown: u64,
    header: &EntryHeader,
    ciphertext: wire::DeviceCiphertext,
    fields: stored_envelope::GroupFields,
) -> QueuedMessage {
    QueuedMessage {
        chat: chat.0.to_vec(),
        chat_seq: shown,
        sender: header.sender.into(),
        client_message_id: header.client_message_id.0.to_vec(),
        sender_seq: header.sender_seq,
        server_time_ms: header.server_time_ms,
        message_type: ciphertext.message_type,
        ciphertext: ciphertext.body,
        group: fields.group,
        kind: fields.kind,
        // Each device's entry references the one stored envelope: the Megolm message is copied
        // out of it for every device, never stored per device.
        group_ciphertext: fields.group_ciphertext,
        group_session_id: fields.group_session_id,
    }
}

#[derive(Debug)]
struct GatheredEntry {
    chat: ChatId,
    messages: Vec<MessageInQueue>,
    bytes: usize,
}

impl FanOut {
    /// Adds a message for `device`, `bytes` being at most what its entry holds besides ids (its
    /// ciphertext for the device, and the group ciphertext) plus
    /// [`QUEUE_ENTRY_OVERHEAD_BYTES_MAX`].
    fn add(&mut self, device: DeviceAddress, chat: ChatId, message: MessageInQueue, bytes: usize) {
        let entries = self.entries.entry(device).or_default();
        match entries.last_mut() {
            Some(last)
                if last.chat == chat
                    && last.messages.len() < MESSAGES_PER_QUEUE_ENTRY_MAX
                    && last.bytes + bytes <= QUEUED_MESSAGES_BYTES_MAX =>
            {
                last.messages.push(message);
                last.bytes += bytes;
            }
            _ => entries.push(GatheredEntry {
                chat,
                messages: vec![message],
                bytes,
            }),
        }
    }

    /// Adds entry `chat_seq` of `chat` (`envelope`, sent as `origin`) for each of `devices`,
    /// under the number its account's view shows it ([`ShownNumbers`]).
    fn add_shown(
        &mut self,
        devices: impl IntoIterator<Item = DeviceAddress>,
        chat: ChatId,
        chat_seq: u64,
        origin: MessageOrigin,
        shown: &ShownNumbers,
        envelope: &wire::Envelope,
    ) {
        let bytes = queued_bytes(envelope);
        for device in devices {
            // What the device's account was never shown of the sender's earlier entries goes
            // first, so the sender's messages reach it in their order.
            for missed in shown.missed.iter().filter(|missed| missed.covers(device)) {
                self.add(device, chat, missed.message, missed.bytes);
            }
            let message = MessageInQueue {
                chat_seq,
                origin: Some(origin),
                shown_seq: shown.of(device.account),
            };
            self.add(device, chat, message, bytes);
        }
    }

    /// The entries gathered for `device` so far (each one more in its queue when written).
    fn entries_for(&self, device: DeviceAddress) -> u64 {
        self.entries
            .get(&device)
            .map_or(0, |entries| entries.len() as u64)
    }

    /// The devices of `account` if it is homed in `local` (read once per transaction).
    async fn homed_devices(
        &mut self,
        tx: &Transaction,
        local: RegionId,
        account: AccountId,
    ) -> Result<Option<&[DeviceAddress]>, StoreError> {
        if let std::collections::hash_map::Entry::Vacant(unread) = self.homed_devices.entry(account)
        {
            // Every account homed here was registered here, so an account this region does not
            // know is homed elsewhere (the edge resolved the homes); its own region checks it.
            let devices = match directory::account_by_id(tx, account).await? {
                Some(record) if record.home_region == local => Some(
                    directory::devices(tx, account)
                        .await?
                        .into_iter()
                        .map(|device| device.device)
                        .collect(),
                ),
                _ => None,
            };
            unread.insert(devices);
        }
        Ok(self
            .homed_devices
            .get(&account)
            .and_then(|devices| devices.as_deref()))
    }

    /// Whether `recipient` (homed here) blocked `sender` (read once per transaction).
    async fn blocked(
        &mut self,
        tx: &Transaction,
        recipient: AccountId,
        sender: AccountId,
    ) -> Result<bool, StoreError> {
        if let Some(&blocked) = self.blocks.get(&(recipient, sender)) {
            return Ok(blocked);
        }
        let blocked = fdb_layers::blocks::is_blocked(tx, recipient, sender).await?;
        self.blocks.insert((recipient, sender), blocked);
        Ok(blocked)
    }

    /// The depth of `device`'s queue at the transaction's read version, with its latest
    /// sequence read too (read once per transaction; either failing to decode is an error).
    async fn depth(&mut self, tx: &Transaction, device: DeviceAddress) -> Result<u64, StoreError> {
        if let Some(&depth) = self.depths.get(&device) {
            return Ok(depth);
        }
        // Snapshot reads: an ack lowering the depth meanwhile must not refuse this commit (the
        // depth can only read too high, so the cap holds); the append reads `latest` with the
        // conflict that keeps the queue gapless.
        let depth = device_queue::depth_snapshot(tx, device).await?;
        device_queue::latest_snapshot(tx, device).await?;
        self.depths.insert(device, depth);
        Ok(depth)
    }

    /// Appends the gathered entries to their devices' queues, noting each device for a push.
    pub async fn write(
        mut self,
        tx: &Transaction,
        now_ms: u64,
        effects: &mut Effects,
    ) -> Result<(), StoreError> {
        for (device, entries) in std::mem::take(&mut self.entries) {
            for GatheredEntry { chat, messages, .. } in entries {
                // Built before the write: the entry's messages move into its record.
                let queued = self.pushed_messages(device, chat, &messages);
                let item = match messages.as_slice() {
                    [message] => QueueItem::MessageRef {
                        chat,
                        chat_seq: message.chat_seq,
                        origin: message.origin,
                        shown_seq: message.shown_seq,
                    },
                    _ => QueueItem::MessageRefs { chat, messages },
                };
                let queue_seq = enqueue(tx, device, &item, now_ms).await?;
                let pushed = queued.map(|queued| {
                    let item = match <[QueuedMessage; 1]>::try_from(queued) {
                        Ok([message]) => queue_entry::Item::Message(message),
                        Err(queued) => {
                            queue_entry::Item::Messages(wire::QueuedMessages { messages: queued })
                        }
                    };
                    QueueEntry {
                        queue_seq,
                        item: Some(item),
                    }
                });
                effects.appended(device, queue_seq, pushed);
            }
        }
        Ok(())
    }

    /// `messages` of `chat` as `device` fetches them, when this transaction appended each of
    /// them to the log and the device sees them under their own numbers (an account with a view
    /// of the chat fetches its numbers). Anything else (a log entry completed or kept apart
    /// since, one without the device's ciphertext) is left to the fetch, which reads the log.
    fn pushed_messages(
        &self,
        device: DeviceAddress,
        chat: ChatId,
        messages: &[MessageInQueue],
    ) -> Option<Vec<QueuedMessage>> {
        let mut queued = Vec::with_capacity(messages.len());
        for message in messages {
            let (None, Some(logged)) = (
                message.shown_seq,
                self.logged.get(&(chat, message.chat_seq)),
            ) else {
                return None;
            };
            queued.push(logged.message_for(device, chat, message.chat_seq)?);
        }
        Some(queued)
    }
}

/// [`commit_envelope`], its queue entries gathered into `fan_out` for the caller to write once
/// the transaction's envelopes are all committed (the envelopes of one lane's batch).
#[allow(clippy::too_many_arguments)]
pub async fn commit_envelope_into(
    tx: &Transaction,
    local: RegionId,
    envelope: &wire::Envelope,
    sender_region: RegionId,
    groups: GroupSource<'_>,
    quarantined: &BTreeSet<DeviceAddress>,
    now_ms: u64,
    fan_out: &mut FanOut,
) -> Outcome<CommitDecision> {
    let answer =
        |outcome: SendOutcome, effects: Effects| Ok(Ok((CommitDecision::Answer(outcome), effects)));
    let parsed = match envelope.parse() {
        Ok(parsed) => parsed,
        Err(error) => return Ok(Err(error)),
    };

    // 0. A group envelope's sender, version and member list.
    let mut checked_accounts = Cow::Borrowed(parsed.recipient_accounts.as_slice());
    let mut exact_coverage = true;
    if let Some(group) = parsed.group {
        let membership = match groups {
            GroupSource::Directory => {
                let read = match fan_out.memberships.entry(group.group) {
                    std::collections::hash_map::Entry::Occupied(read) => read.into_mut(),
                    std::collections::hash_map::Entry::Vacant(unread) => {
                        unread.insert(group_membership(tx, group.group).await?)
                    }
                };
                read.as_ref().map(Cow::Borrowed)
            }
            GroupSource::Known(Some(known)) if known.group == group.group => {
                Some(Cow::Borrowed(known))
            }
            GroupSource::Known(_) => {
                return refuse(
                    ErrorCode::Internal,
                    format!(
                        "group {} was not looked up before its envelope",
                        group.group
                    ),
                );
            }
        };
        let Some(membership) = membership else {
            return refuse(
                ErrorCode::UnknownGroup,
                format!("unknown group {}", group.group),
            );
        };
        if !membership.members.contains(&parsed.sender.account) {
            // A key share from a device whose earlier envelopes this chat holds (it was a
            // member then) is still taken: texts it sent as a member, stored here, may need
            // the key (one rebuilt under a rotated session has its share numbered after it).
            // It lets members read what was accepted; a former member still sends nothing.
            let former_member = group.kind == EnvelopeKind::GroupKeyShare
                && chat_log::last_sender_seq(tx, parsed.chat, parsed.sender).await? > 0;
            if !former_member {
                return refuse(
                    ErrorCode::UnknownGroup,
                    format!("unknown group {}", group.group),
                );
            }
        }
        if group.version > membership.version {
            return refuse(
                ErrorCode::Malformed,
                format!(
                    "group {} is at version {}; version {} does not exist",
                    group.group, membership.version, group.version
                ),
            );
        }
        let listed: BTreeSet<AccountId> = parsed.recipient_accounts.iter().copied().collect();
        let wrong_members = match group.kind {
            // The sender's own account is listed only when it has other devices; coverage
            // below checks it either way.
            EnvelopeKind::Message => listed
                .iter()
                .filter(|&&account| account != parsed.sender.account)
                .ne(membership
                    .members
                    .iter()
                    .filter(|&&account| account != parsed.sender.account)),
            // A share built for an older membership may name accounts removed since: texts
            // of its session stored while they were members, here or in another region, may
            // be queued to their devices and need the key (a text rebuilt under a rotated
            // session has its shares numbered after it). The session is one the sender made
            // before it learned of the removal, so it replaces it before its next text; and
            // a share is only an Olm message, which any account may send any other 1:1.
            EnvelopeKind::GroupKeyShare => {
                group.version == membership.version && !listed.is_subset(&membership.members)
            }
        };
        let stale = group.version < membership.version && group.kind == EnvelopeKind::Message;
        // Planted in the simulation only: the envelope's own list is taken as it is.
        let unchecked = relay_planted::is_planted(PlantedBug::GroupMembershipUnchecked);
        if !unchecked && (stale || wrong_members) {
            let changed = group_changed(tx, local, &membership, parsed.sender).await?;
            let outcome = SendOutcome {
                outcome: Some(send_outcome::Outcome::GroupChanged(changed)),
            };
            return answer(outcome, Effects::default());
        }
        match group.kind {
            EnvelopeKind::Message if unchecked => {}
            EnvelopeKind::Message => {
                checked_accounts = Cow::Owned(membership.members.iter().copied().collect());
            }
            EnvelopeKind::GroupKeyShare => exact_coverage = false,
        }
    }

    // 1. Coverage of every local recipient account by exactly its current devices (a key
    //    share: by some of them).
    let mut local_devices = Vec::new();
    let mut mismatched = Vec::new();
    for &account in checked_accounts.iter() {
        let Some(devices) = fan_out.homed_devices(tx, local, account).await? else {
            continue;
        };
        let current: BTreeSet<DeviceAddress> = devices
            .iter()
            .copied()
            .filter(|&address| address != parsed.sender)
            .collect();
        // The parsed devices are sorted by account: this account's are one run of them (a
        // group's thousands of devices are not scanned once per member).
        let first = parsed
            .recipient_devices
            .partition_point(|device| device.account < account);
        let covered: BTreeSet<DeviceAddress> = parsed.recipient_devices[first..]
            .iter()
            .copied()
            .take_while(|device| device.account == account)
            .collect();
        let covered_right = if exact_coverage {
            current == covered
        } else {
            covered.is_subset(&current)
        };
        if !covered_right {
            mismatched.push(AccountDevices {
                account: account.0,
                devices: current.iter().map(|address| address.device.0).collect(),
            });
        } else if account != parsed.sender.account
            && fan_out.blocked(tx, account, parsed.sender.account).await?
        {
            // Blocked: stored and answered as usual, queued for none of this account's
            // devices (the sender learns nothing).
        } else {
            local_devices.extend(covered);
        }
    }
    if !mismatched.is_empty() {
        let outcome = send_outcome::Outcome::Mismatched(MismatchedDevices {
            accounts: mismatched,
        });
        let outcome = SendOutcome {
            outcome: Some(outcome),
        };
        return answer(outcome, Effects::default());
    }

    // A quarantined, damaged or full queue refuses the whole envelope before anything is
    // written: the sender retries later, and no recipient gets a partial fan-out.
    if let Some(&device) = local_devices
        .iter()
        .find(|device| quarantined.contains(device))
    {
        return Ok(Err(quarantined_refusal(device)));
    }
    for &device in &local_devices {
        let depth = match fan_out.depth(tx, device).await {
            Ok(depth) => depth,
            Err(error @ StoreError::Corrupt { .. }) => {
                let decision = CommitDecision::RecipientQueueUnreadable { device, error };
                return Ok(Ok((decision, Effects::default())));
            }
            Err(error) => return Err(error),
        };
        // The entries gathered for the device in this transaction are not in its depth yet.
        if depth + fan_out.entries_for(device) >= DEVICE_QUEUE_DEPTH_MAX {
            return refuse(
                ErrorCode::Throttled,
                format!("the queue of device {device} is full"),
            );
        }
    }

    // 2. Dedupe, sender FIFO, chat sequence.
    let envelope_bytes = stored_envelope::encode(envelope);
    let entry = NewEntry {
        chat: parsed.chat,
        sender: parsed.sender,
        client_message_id: parsed.client_message_id,
        sender_seq: parsed.sender_seq,
        sender_region,
        envelope_bytes: &envelope_bytes,
    };
    let committed = |chat_seq, duplicate, server_time_ms| {
        let commit = Committed {
            region: local.0,
            chat_seq,
            duplicate,
            server_time_ms,
        };
        SendOutcome {
            outcome: Some(send_outcome::Outcome::Sent(SentEverywhere {
                commits: vec![commit],
                home_region: 0,
            })),
        }
    };
    // Each queue entry names the sender, so the receipt of its delivery reads nothing back.
    let origin = MessageOrigin {
        sender: parsed.sender,
        client_message_id: parsed.client_message_id,
        sender_region,
        group: parsed.group.is_some(),
    };
    let sender_here = sender_region == local;
    // A group sender names its previous unsettled number (see `Envelope::group_prev_seq`): a
    // region that joined the chat late does not ask for what went to the regions before it.
    let prev = parsed.group.map(|group| group.prev_seq);
    let (chat_seq, server_time_ms) = match chat_log::append_after(tx, &entry, prev, now_ms).await? {
        AppendOutcome::Duplicate {
            chat_seq,
            server_time_ms,
        } => {
            // A copy this transaction appended may be completed below: the fetch reads it.
            fan_out.logged.remove(&(parsed.chat, chat_seq));
            // A recipient whose home moved here after the envelope was first stored here was
            // not queued then, and its old home may never have stored it (it held the envelope
            // while the account moved, then turned it away): it is queued now. A device that
            // got it from the old home drops the repeat (clients deduplicate by message id).
            let mut arrived_since = BTreeSet::new();
            for device in &local_devices {
                if arrived_since.contains(&device.account) {
                    continue;
                }
                if let Some(arrived) = home_move::arrived(tx, device.account).await?
                    && server_time_ms <= arrived.saturating_add(MOVE_ARRIVAL_SLACK_MS)
                {
                    arrived_since.insert(device.account);
                }
            }
            // Read once, for the group check and the completion below.
            let stored = if arrived_since.is_empty() {
                None
            } else {
                chat_log::entry(tx, parsed.chat, chat_seq).await?
            };
            if parsed.group.is_some() {
                // A group's envelope goes again only to the accounts it was stored for: one
                // sent again after the group changed (the same message, re-encrypted for the
                // members then) names a member added since, whose devices got the sender's key
                // after this stored copy and cannot read it.
                let stored_for = stored.as_ref().map(stored_recipients).unwrap_or_default();
                arrived_since.retain(|account| stored_for.contains(account));
            }
            let arrived: Vec<DeviceAddress> = local_devices
                .iter()
                .copied()
                .filter(|device| arrived_since.contains(&device.account))
                .collect();
            let shown = if sender_here || !arrived_since.is_empty() {
                let concerned = arrived_since
                    .iter()
                    .copied()
                    .chain(sender_here.then_some(parsed.sender.account));
                shown_numbers(tx, &parsed, chat_seq, concerned, &arrived).await?
            } else {
                ShownNumbers::default()
            };
            if !arrived_since.is_empty() {
                // The copy stored here was first stored for none of these accounts (their
                // devices' entries were checked by their old home, not here): it may lack
                // entries for devices this envelope covers, such as a device the sender learned
                // of only when the old home answered "mismatched". A group message stored in
                // another build than this one cannot be completed (one Megolm ciphertext for
                // all): an account with a view keeps this build as its own copy.
                let own_copies = match &stored {
                    Some(stored) if parsed.group.is_some() => {
                        keep_own_copies(
                            tx,
                            parsed.chat,
                            stored,
                            envelope,
                            &envelope_bytes,
                            &arrived_since,
                        )
                        .await?
                    }
                    _ => BTreeSet::new(),
                };
                if let Some(stored) = &stored {
                    complete_entry(tx, parsed.chat, stored, &envelope.ciphertexts, |device| {
                        arrived_since.contains(&device.account)
                            && !own_copies.contains(&device.account)
                            && local_devices.contains(&device)
                    })
                    .await?;
                }
                fan_out.add_shown(arrived, parsed.chat, chat_seq, origin, &shown, envelope);
            }
            let acknowledged = shown.acknowledged(parsed.sender.account, sender_here, chat_seq);
            return answer(
                committed(acknowledged, true, server_time_ms),
                Effects::default(),
            );
        }
        AppendOutcome::Gap {
            expected_sender_seq,
        } => {
            let outcome = send_outcome::Outcome::ResendFrom(ResendFrom {
                expected_sender_seq,
            });
            let outcome = SendOutcome {
                outcome: Some(outcome),
            };
            return answer(outcome, Effects::default());
        }
        AppendOutcome::RolledBack { last_sender_seq } => {
            return refuse(
                ErrorCode::DeviceRolledBack,
                format!(
                    "device {} sent a new envelope as number {} of chat {}, but number \
                     {last_sender_seq} is already stored; {ROLLED_BACK_ADVICE}",
                    parsed.sender, parsed.sender_seq, parsed.chat
                ),
            );
        }
        AppendOutcome::Appended {
            chat_seq,
            server_time_ms,
        } => {
            fan_out.logged.insert(
                (parsed.chat, chat_seq),
                Logged::new(&parsed, envelope, server_time_ms),
            );
            (chat_seq, server_time_ms)
        }
        AppendOutcome::FirstAfterImport {
            chat_seq,
            server_time_ms,
        } => {
            // The stored copy is the old home's, checked for its accounts only (a home move
            // brought it, or it was stored before their account moved here): it is completed
            // with this envelope's entries for the devices here, which were checked here, and
            // they are queued the entry. A group message in another build is replaced instead.
            match chat_log::entry(tx, parsed.chat, chat_seq).await? {
                Some(stored)
                    if parsed.group.is_some() && another_group_build(&stored, envelope)? =>
                {
                    adopt_group_build(tx, parsed.chat, &stored, &envelope_bytes).await?;
                }
                Some(stored) => {
                    complete_entry(tx, parsed.chat, &stored, &envelope.ciphertexts, |device| {
                        local_devices.contains(&device)
                    })
                    .await?;
                }
                None => {}
            }
            (chat_seq, server_time_ms)
        }
    };
    if sender_region == local {
        device_state::record_envelope(tx, parsed.sender, parsed.device_seq)?;
    }

    // 3. Fan out to the local recipients' queues.
    let concerned = local_devices
        .iter()
        .map(|device| device.account)
        .chain(sender_here.then_some(parsed.sender.account));
    let shown = shown_numbers(tx, &parsed, chat_seq, concerned, &local_devices).await?;
    fan_out.add_shown(
        local_devices,
        parsed.chat,
        chat_seq,
        origin,
        &shown,
        envelope,
    );
    let acknowledged = shown.acknowledged(parsed.sender.account, sender_here, chat_seq);
    answer(
        committed(acknowledged, false, server_time_ms),
        Effects::default(),
    )
}

/// What a queue entry of `envelope` holds for a device at most, besides ids.
fn queued_bytes(envelope: &wire::Envelope) -> usize {
    envelope
        .ciphertexts
        .iter()
        .map(|ciphertext| ciphertext.body.len())
        .max()
        .unwrap_or(0)
        + envelope.group_ciphertext.len()
        + QUEUE_ENTRY_OVERHEAD_BYTES_MAX
}

/// The answer to a group envelope for an older version or other members: the current version
/// and members, with the current devices (the sending device excepted) of the members homed
/// here.
async fn group_changed(
    tx: &Transaction,
    local: RegionId,
    membership: &GroupMembership,
    sender: DeviceAddress,
) -> Result<GroupChanged, StoreError> {
    let mut devices = Vec::new();
    for &account in &membership.members {
        let Some(record) = directory::account_by_id(tx, account).await? else {
            continue;
        };
        if record.home_region != local {
            continue;
        }
        devices.push(AccountDevices {
            account: account.0,
            devices: directory::devices(tx, account)
                .await?
                .into_iter()
                .map(|device| device.device)
                .filter(|&address| address != sender)
                .map(|address| address.device.0)
                .collect(),
        });
    }
    Ok(GroupChanged {
        group: membership.group.0,
        version: membership.version,
        members: membership.members.iter().map(|account| account.0).collect(),
        devices,
    })
}

fn corrupt(what: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

/// Appends to a device queue whose depth was checked in this transaction.
async fn enqueue(
    tx: &Transaction,
    device: DeviceAddress,
    item: &QueueItem,
    now_ms: u64,
) -> Result<u64, StoreError> {
    match device_queue::append(tx, device, item, now_ms).await? {
        QueueAppend::Appended { queue_seq } => Ok(queue_seq),
        QueueAppend::Full { depth } => Err(corrupt(
            "device queue",
            format!("queue of {device} full ({depth} entries) after its depth was checked"),
        )),
    }
}

/// (At the directory writer) the census of `region`'s store: how many accounts are homed there
/// and which store it registered last, after registering `claim` if it is given (a
/// compare-and-set on the registered store).
pub async fn store_census(
    tx: &Transaction,
    request: &wire::StoreCensusRequest,
    now_ms: u64,
) -> Outcome<wire::StoreCensus> {
    let region = RegionId(request.region);
    if region.0 == 0 {
        return refuse(ErrorCode::Malformed, "region numbers start at 1");
    }
    let mut registered = store_identity::registration(tx, region).await?;
    if let Some(claim) = &request.claim {
        let Some(store_id) = StoreId::from_bytes(&claim.store_id) else {
            return refuse(ErrorCode::Malformed, "a store id is 16 bytes");
        };
        let previous = match claim.previous_store_id.as_slice() {
            [] => None,
            bytes => match StoreId::from_bytes(bytes) {
                Some(previous) => Some(previous),
                None => return refuse(ErrorCode::Malformed, "a store id is 16 bytes"),
            },
        };
        registered = match store_identity::register(tx, region, store_id, previous, now_ms).await? {
            RegisterOutcome::Registered(registration) => Some(registration),
            RegisterOutcome::Held { current } => current,
        };
    }
    let census = wire::StoreCensus {
        region: region.0,
        accounts_homed: directory::accounts_homed(tx, region).await?,
        store_id: registered
            .map(|registration| registration.store_id.0.to_vec())
            .unwrap_or_default(),
        registered_at_ms: registered.map_or(0, |registration| registration.registered_at_ms),
    };
    Ok(Ok((census, Effects::default())))
}

/// Reads the device address of a wire value, refusing zero ids.
pub fn device_address(addr: wire::DeviceAddr) -> Result<DeviceAddress, ProtoError> {
    addr.parse()
}

/// The typed id of a device number within an account.
pub fn device_in(account: AccountId, device: u32) -> DeviceAddress {
    DeviceAddress {
        account,
        device: DeviceId(device),
    }
}

#[cfg(test)]
mod tests;
