//! Moving an account's home to another region (`relayd admin move-home ACCOUNT --to M`).
//!
//! The old home drives the move (`RegionService::move_home`):
//! 1. **Hold.** Requests touching the account wait at the region's gate ([`AccountHolds`],
//!    after the handover [`crate::handover::Drain`]); the requests under way finish first (the
//!    region's gate closes for at most [`crate::limits::HANDOVER_DRAIN_WAIT_MS`] to let them).
//! 2. **Copy.** [`Exporter`] reads the account's keys, queues (with the chat log entries they
//!    name) and chat heads (with each chat's numbering, which a new home that holds nothing of
//!    the chat adopts) in bounded transactions and sends them as numbered parts
//!    (`ImportAccount`, at most [`MOVE_PART_BYTES_MAX`] each) to the new home, which applies
//!    each in one transaction ([`apply_part`]).
//! 3. **Fence.** One transaction checks that no queue of the account grew since it was read
//!    (the region's own receipt tasks are not held) and writes the away mark
//!    (`fdb_layers::home_move::set_away`), which those tasks read: from then on they forward
//!    to the new home. A queue that grew is copied again from where the copy stopped.
//! 4. **Flip.** The directory writer moves the home with its epoch compare-and-set
//!    (`MoveAccountHome`; the writer's own move when the old home is the writer).
//! 5. **Activate.** The new home takes the directory's record at once (the last part's
//!    `activate`), so it serves the account before its replica of the directory hears of it.
//! 6. **Let go.** The old home takes the record too, clears the account's keys and queues, tells
//!    every edge subscribed to it (`AccountMoved`), and lets the held requests go: they are
//!    refused `UnknownAccount` ("moved to region M"), which edges answer by asking the region
//!    that refused where the account lives now and sending the request there.
//!
//! A move that fails before the flip removes the away mark and lets the requests go: the
//! account stays where it was, and what the new home imported is cleared by the next move's
//! first part. A flip whose answer was lost is asked again (the writer recognises its own
//! earlier success). If the flip cannot be settled now, or the region stops after the away
//! mark, the region settles it by itself: the mark is written only once the new home applied
//! every part, so it asks the writer every second until it answers and then finishes the move;
//! the account's requests are refused `Unavailable` meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use fdb_layers::device_queue::{self, MessageInQueue, MovedEntry, QueueItem};
use fdb_layers::{Database, StoreError, chat_log, directory, home_move};
use prost::Message;
use relay_proto::limits::{ENVELOPE_BYTES_MAX, FRAME_BYTES_MAX};
use relay_proto::wire::{self, region_request};
use relay_proto::{AccountId, ChatId, DeviceAddress, ErrorCode, ProtoError, RegionId};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::core;
use crate::service::store_failure;
use crate::stored_envelope;

/// The most bytes of records one part of a move carries before it is sent (one chat log entry
/// more may follow it into the part).
pub const MOVE_PART_BYTES_MAX: usize = 256 * 1024;
/// Queue entries read per transaction while copying.
pub const MOVE_QUEUE_ENTRIES_PER_READ: usize = 64;
/// Chats looked at per transaction while finding the account's chat heads.
pub const MOVE_CHATS_PER_READ: usize = 256;
/// Keys copied or cleared per transaction.
pub const MOVE_KEYS_PER_READ: usize = 1_024;
/// The last entries of each of the account's chats sent with its numbering, so that an envelope
/// the old home took but whose answer was lost finds its dedupe record at a new home that adopts
/// the chat: more than a client keeps in flight of one chat (48 envelopes at most,
/// `relay_client::limits::PIPELINE_WINDOW`).
pub const MOVE_CHAT_TAIL_ENTRIES: u64 = 64;
/// Times the fence finds a queue grew and copies it again before the move gives up.
pub const MOVE_FENCE_ROUNDS_MAX: usize = 16;

// A part with one more entry at its largest (an envelope and its stored fields) fits a frame.
const _: () = assert!(MOVE_PART_BYTES_MAX + ENVELOPE_BYTES_MAX + 64 * 1024 <= FRAME_BYTES_MAX);

/// Accounts whose requests wait while their home moves (see the module doc).
#[derive(Debug, Default)]
pub struct AccountHolds {
    held: Mutex<BTreeSet<AccountId>>,
    /// Whether any account is held: the one check a request pays when none is.
    any: AtomicBool,
    released: Notify,
}

impl AccountHolds {
    /// Holds `account`; false if it is held already (a move of it is under way).
    pub fn hold(&self, account: AccountId) -> bool {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let new = held.insert(account);
        self.any.store(true, Ordering::SeqCst);
        new
    }

    /// Lets the requests waiting for `account` go.
    pub fn release(&self, account: AccountId) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        held.remove(&account);
        self.any.store(!held.is_empty(), Ordering::SeqCst);
        drop(held);
        self.released.notify_waiters();
    }

    /// Whether any account is held now.
    pub fn any(&self) -> bool {
        self.any.load(Ordering::SeqCst)
    }

    /// Whether one of `accounts` is held.
    pub fn holds_any(&self, accounts: &[AccountId]) -> bool {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        accounts.iter().any(|account| held.contains(account))
    }

    /// Completes when an account is released next (create it before [`Self::holds_any`], so
    /// a release in between is not missed).
    pub fn released(&self) -> Notified<'_> {
        self.released.notified()
    }
}

/// The accounts of this region a request touches: those it waits for while their home moves,
/// and whether it is refused once one of them moved away (a receipt for one is forwarded
/// instead).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// The accounts.
    pub accounts: Vec<AccountId>,
    /// Whether the request is refused when one of them moved away.
    pub refused_when_away: bool,
}

/// What `body` touches of the accounts homed in `local` (see [`Touched`]).
pub fn touched_accounts(body: &region_request::Body, local: RegionId) -> Touched {
    use region_request::Body as Req;
    let device_account = |device: &wire::DeviceAddr| vec![AccountId(device.account)];
    let (accounts, refused_when_away) = match body {
        Req::Commit(commit) => {
            let mut accounts = Vec::new();
            if commit.routed.is_empty() {
                // An edge of an earlier build: every account the envelope names.
                if let Ok(parsed) = commit.envelope.parse() {
                    accounts.extend(parsed.recipient_accounts);
                    accounts.push(parsed.sender.account);
                }
            } else {
                accounts.extend(
                    commit
                        .routed
                        .iter()
                        .filter(|routed| routed.region == local.0)
                        .map(|routed| AccountId(routed.account)),
                );
                if commit.sender_region == local.0 {
                    accounts.push(AccountId(commit.envelope.sender.account));
                }
            }
            (accounts, true)
        }
        Req::SigningKey(device) => (device_account(device), true),
        Req::ClaimKeys(claim) => (vec![AccountId(claim.account)], true),
        Req::UploadOneTimeKeys(for_device)
        | Req::FetchQueue(for_device)
        | Req::Devices(for_device)
        | Req::PresencePrivacy(for_device)
        | Req::Push(for_device)
        | Req::Block(for_device) => (device_account(&for_device.device), true),
        Req::Receipts(receipts) => (
            receipts
                .receipts
                .iter()
                .filter_map(|forward| forward.receipt.sender.parse().ok())
                .map(|sender: DeviceAddress| sender.account)
                .collect(),
            false,
        ),
        _ => (Vec::new(), false),
    };
    Touched {
        accounts,
        refused_when_away,
    }
}

/// Where a part of a move goes: the new home over QUIC, or (in tests) a store directly.
pub trait PartSink {
    /// Delivers one part; an error fails the move.
    fn send(
        &mut self,
        part: wire::ImportAccount,
    ) -> impl Future<Output = Result<(), ProtoError>> + Send;
}

/// What a move carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveStats {
    /// Keys copied as they are.
    pub keys: u64,
    /// Queue entries.
    pub queue_entries: u64,
    /// Chat log entries carried with them.
    pub log_entries: u64,
    /// Chats whose heads moved.
    pub chats: u64,
    /// Parts sent.
    pub parts: u32,
}

/// Where the copy of one queue stands.
#[derive(Debug, Clone, Copy, Default)]
struct QueueCopy {
    /// The highest queue sequence copied.
    cursor: u64,
    /// The queue's latest sequence when it was last read.
    latest: u64,
}

/// The old home's side of a move: reads the account in bounded transactions and sends it as
/// parts (see the module doc).
pub struct Exporter<'a, S> {
    db: &'a Database,
    account: AccountId,
    from: RegionId,
    sink: S,
    part: wire::ImportAccount,
    part_bytes: usize,
    /// Log entries already sent in this move: a group message two devices hold goes once.
    sent_log: HashSet<(ChatId, u64)>,
    queues: BTreeMap<DeviceAddress, QueueCopy>,
    stats: MoveStats,
}

impl<'a, S: PartSink> Exporter<'a, S> {
    /// An export of `account` from region `from`'s store `db` into `sink`.
    pub fn new(db: &'a Database, account: AccountId, from: RegionId, sink: S) -> Self {
        Exporter {
            db,
            account,
            from,
            sink,
            part: empty_part(account, from, 0),
            part_bytes: 0,
            sent_log: HashSet::new(),
            queues: BTreeMap::new(),
            stats: MoveStats::default(),
        }
    }

    /// Copies everything: keys, chat heads, queues (the parts sent as they fill; the last one
    /// waits for [`Self::fence`] and [`Self::activate`]).
    pub async fn copy(&mut self) -> Result<(), ProtoError> {
        self.copy_keys().await?;
        // Before the queues: a new home adopts a chat's numbering before its entries arrive.
        self.copy_chat_heads().await?;
        self.copy_queues().await
    }

    async fn copy_keys(&mut self) -> Result<(), ProtoError> {
        let account = self.account;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let cursor = after.clone();
            let page = self
                .db
                .transact(|tx| {
                    let cursor = cursor.clone();
                    async move {
                        home_move::account_keys(&tx, account, cursor.as_deref(), MOVE_KEYS_PER_READ)
                            .await
                    }
                })
                .await
                .map_err(store_failure)?;
            let full = page.len() == MOVE_KEYS_PER_READ;
            after = page.last().map(|(key, _)| key.clone());
            for (key, value) in page {
                self.add_bytes(key.len() + value.len() + 8).await?;
                self.part.keys.push(wire::MovedKey { key, value });
                self.stats.keys += 1;
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn copy_queues(&mut self) -> Result<(), ProtoError> {
        let account = self.account;
        let mut after = None;
        loop {
            let devices = self
                .db
                .transact(|tx| async move {
                    device_queue::queued_devices_of(&tx, account, after, MOVE_KEYS_PER_READ).await
                })
                .await
                .map_err(store_failure)?;
            let Some(&last) = devices.last() else {
                return Ok(());
            };
            for device in devices {
                self.queues.entry(device).or_default();
                self.copy_queue_after(device).await?;
            }
            after = Some(last);
        }
    }

    /// Copies the entries of `device`'s queue after its copy's cursor, to the end.
    async fn copy_queue_after(&mut self, device: DeviceAddress) -> Result<(), ProtoError> {
        loop {
            let cursor = self.queues.get(&device).copied().unwrap_or_default().cursor;
            let (latest, read, last, entries) = self
                .db
                .transact(|tx| async move {
                    let entries = device_queue::moved_entries(
                        &tx,
                        device,
                        cursor,
                        MOVE_QUEUE_ENTRIES_PER_READ,
                    )
                    .await?;
                    let read = entries.len();
                    let last = entries.last().map(|entry| entry.queue_seq);
                    let mut carried = Vec::with_capacity(read);
                    for entry in entries {
                        carried.extend(with_log_entries(&tx, entry).await?);
                    }
                    let latest = device_queue::latest(&tx, device).await?;
                    Ok((latest, read, last, carried))
                })
                .await
                .map_err(store_failure)?;
            let full = read == MOVE_QUEUE_ENTRIES_PER_READ;
            let copy = self.queues.entry(device).or_default();
            copy.latest = latest;
            if let Some(last) = last {
                copy.cursor = last;
            }
            for (entry, logged) in entries {
                self.add_entry(device, entry, logged).await?;
            }
            if !full {
                self.add_bytes(24).await?;
                self.part.queue_heads.push(wire::MovedQueueHead {
                    device: device.into(),
                    latest,
                });
                return Ok(());
            }
        }
    }

    async fn add_entry(
        &mut self,
        device: DeviceAddress,
        entry: MovedEntry,
        logged: Vec<(ChatId, u64, Vec<u8>)>,
    ) -> Result<(), ProtoError> {
        let new_logged: Vec<_> = logged
            .into_iter()
            .filter(|(chat, seq, _)| !self.sent_log.contains(&(*chat, *seq)))
            .collect();
        let item = device_queue::moved_item_bytes(&entry);
        let bytes = item.len()
            + 32
            + new_logged
                .iter()
                .map(|(_, _, b)| b.len() + 32)
                .sum::<usize>();
        self.add_bytes(bytes).await?;
        for (chat, seq, entry_bytes) in new_logged {
            self.sent_log.insert((chat, seq));
            self.part.log_entries.push(wire::MovedLogEntry {
                chat: chat.0.to_vec(),
                entry: entry_bytes,
                chat_seq: seq,
                tail: false,
            });
            self.stats.log_entries += 1;
        }
        self.part.queue.push(wire::MovedQueueEntry {
            device: device.into(),
            queue_seq: entry.queue_seq,
            item,
        });
        self.stats.queue_entries += 1;
        Ok(())
    }

    /// Copies where each chat of the account stands (its last number as the account's devices
    /// know it, its senders' places) and its last entries. The account is held meanwhile, so
    /// only others' messages number its chats further, and those reach it through its queues
    /// (whose copies raise a view's numbers at the new home past theirs).
    async fn copy_chat_heads(&mut self) -> Result<(), ProtoError> {
        let account = self.account;
        let mut after = None;
        loop {
            let (chats, next) = self
                .db
                .transact(|tx| async move {
                    let (chats, next) =
                        chat_log::chats_of(&tx, account, after, MOVE_CHATS_PER_READ, |bytes| {
                            names_as_group_member(bytes, account)
                        })
                        .await?;
                    let mut kinds = Vec::with_capacity(chats.len());
                    for chat in chats {
                        // The other account of a 1:1 chat: a sender, or named by its last
                        // envelope (none: a group's chat, or not known).
                        let is_peer = |other: &AccountId| {
                            *other != account && ChatId::direct(account, *other) == chat.chat
                        };
                        let mut peer = chat
                            .senders
                            .iter()
                            .map(|(sender, _)| sender.account)
                            .find(is_peer);
                        let mut group = false;
                        if peer.is_none()
                            && let Some(entry) =
                                chat_log::entry(&tx, chat.chat, chat.last_seq).await?
                            && let Ok(envelope) = stored_envelope::recipients(&entry.envelope_bytes)
                        {
                            group = envelope.group != 0;
                            peer = envelope
                                .recipient_accounts
                                .iter()
                                .map(|&other| AccountId(other))
                                .find(is_peer);
                        }
                        let view = chat_log::views::last_shown(&tx, chat.chat, account).await?;
                        kinds.push((chat, peer, group, view));
                    }
                    Ok((kinds, next))
                })
                .await
                .map_err(store_failure)?;
            for (chat, peer, group, view) in chats {
                // The numbering first: the new home adopts it before any entry of the chat.
                self.add_bytes(chat.senders.len() * 48 + 32).await?;
                self.part.chat_logs.push(wire::MovedChatLog {
                    chat: chat.chat.0.to_vec(),
                    last_seq: view.unwrap_or(chat.last_seq),
                    peer: peer.map_or(0, |peer| peer.0),
                    group,
                });
                for (sender, sender_seq) in &chat.senders {
                    self.part.chat_heads.push(wire::MovedChatHead {
                        chat: chat.chat.0.to_vec(),
                        sender: (*sender).into(),
                        sender_seq: *sender_seq,
                    });
                }
                self.copy_chat_tail(chat.chat, chat.last_seq, view.is_some())
                    .await?;
                self.stats.chats += 1;
            }
            match next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Sends the last [`MOVE_CHAT_TAIL_ENTRIES`] entries of `chat` (read in a transaction of
    /// their own), each counted into the parts on its own; `in_view`: the account has a view of
    /// the chat here, and gets those of them it was shown, under the numbers it was shown.
    async fn copy_chat_tail(
        &mut self,
        chat: ChatId,
        last_seq: u64,
        in_view: bool,
    ) -> Result<(), ProtoError> {
        let first = last_seq.saturating_sub(MOVE_CHAT_TAIL_ENTRIES) + 1;
        let account = self.account;
        let tail = self
            .db
            .transact(|tx| async move {
                let tail = chat_log::entry_bytes_between(&tx, chat, first, last_seq).await?;
                if !in_view {
                    return Ok(tail);
                }
                let mut shown = Vec::with_capacity(tail.len());
                for (seq, entry) in tail {
                    if let Some(number) = chat_log::views::shown_of(&tx, chat, account, seq).await?
                    {
                        shown.push((number, entry));
                    }
                }
                Ok(shown)
            })
            .await
            .map_err(store_failure)?;
        for (seq, entry) in tail {
            self.add_bytes(entry.len() + 32).await?;
            self.part.log_entries.push(wire::MovedLogEntry {
                chat: chat.0.to_vec(),
                entry,
                chat_seq: seq,
                tail: true,
            });
        }
        Ok(())
    }

    /// Writes the away mark for `to` in a transaction that checks no queue of the account grew
    /// since it was copied; a queue that grew is copied again from where its copy stopped, and
    /// the check runs again (at most [`MOVE_FENCE_ROUNDS_MAX`] rounds).
    pub async fn fence(&mut self, to: RegionId) -> Result<(), ProtoError> {
        // Everything copied so far reaches the new home before the mark sends it receipts.
        self.flush().await?;
        let account = self.account;
        for _ in 0..MOVE_FENCE_ROUNDS_MAX {
            let copied: Vec<(DeviceAddress, u64)> = self
                .queues
                .iter()
                .map(|(device, copy)| (*device, copy.latest))
                .collect();
            let grown = self
                .db
                .transact(|tx| {
                    let copied = copied.clone();
                    async move {
                        let mut grown = Vec::new();
                        let known: BTreeSet<DeviceAddress> =
                            copied.iter().map(|(device, _)| *device).collect();
                        for device in
                            device_queue::queued_devices_of(&tx, account, None, MOVE_KEYS_PER_READ)
                                .await?
                        {
                            if !known.contains(&device) {
                                grown.push(device);
                            }
                        }
                        for (device, latest) in copied {
                            // A read with a conflict: an append committing meanwhile makes
                            // this transaction retry and see it.
                            if device_queue::latest(&tx, device).await? != latest {
                                grown.push(device);
                            }
                        }
                        if grown.is_empty() {
                            home_move::set_away(&tx, account, to)?;
                        }
                        Ok(grown)
                    }
                })
                .await
                .map_err(store_failure)?;
            if grown.is_empty() {
                return Ok(());
            }
            for device in grown {
                self.queues.entry(device).or_default();
                self.copy_queue_after(device).await?;
            }
        }
        Err(ProtoError::new(
            ErrorCode::Unavailable,
            format!("the queues of account {account} kept growing while it moved; try again later"),
        ))
    }

    /// Sends what waits, then the last part, which hands the new home the directory's record.
    pub async fn activate(&mut self, record: wire::AccountInfo) -> Result<MoveStats, ProtoError> {
        self.flush().await?;
        self.part.activate = Some(record);
        self.flush_always().await?;
        Ok(self.stats)
    }

    /// Sends what waits (before the flip: the new home holds everything when the directory
    /// names it).
    pub async fn flush(&mut self) -> Result<(), ProtoError> {
        if self.part_bytes > 0 || self.part.part == 0 {
            self.flush_always().await?;
        }
        Ok(())
    }

    async fn flush_always(&mut self) -> Result<(), ProtoError> {
        let next = self.part.part + 1;
        let part = std::mem::replace(&mut self.part, empty_part(self.account, self.from, next));
        self.part_bytes = 0;
        self.stats.parts += 1;
        self.sink.send(part).await
    }

    /// Counts `bytes` more into the part, sending it first if they would not fit.
    async fn add_bytes(&mut self, bytes: usize) -> Result<(), ProtoError> {
        if self.part_bytes > 0 && self.part_bytes + bytes > MOVE_PART_BYTES_MAX {
            self.flush_always().await?;
        }
        self.part_bytes += bytes;
        Ok(())
    }
}

/// Whether the stored envelope `bytes` is a group's that names `account` among its members: a
/// group chat the account reads without having sent in it moves with it too.
fn names_as_group_member(bytes: &[u8], account: AccountId) -> bool {
    stored_envelope::recipients(bytes).is_ok_and(|envelope| {
        envelope.group != 0 && envelope.recipient_accounts.contains(&account.0)
    })
}

fn empty_part(account: AccountId, from: RegionId, part: u32) -> wire::ImportAccount {
    wire::ImportAccount {
        account: account.0,
        from_region: from.0,
        part,
        ..wire::ImportAccount::default()
    }
}

/// `entry` with every message naming its sender (an entry queued before queue entries did
/// gets it from the log), and the stored log entries it names; `None` when none of them is
/// left (a retention sweep removed them: a fetch here would drop the entry too).
async fn with_log_entries(
    tx: &fdb_layers::Transaction,
    mut entry: MovedEntry,
) -> Result<Option<(MovedEntry, Vec<(ChatId, u64, Vec<u8>)>)>, StoreError> {
    let (Some(chat), messages) = entry.item.messages() else {
        return Ok(Some((entry, Vec::new())));
    };
    let mut logged = Vec::with_capacity(messages.len());
    let mut named = Vec::with_capacity(messages.len());
    for message in messages {
        let Some(bytes) = chat_log::entry_bytes(tx, chat, message.chat_seq).await? else {
            continue;
        };
        let origin = match message.origin {
            Some(origin) => Some(origin),
            None => core::logged_origin(tx, chat, message.chat_seq).await?,
        };
        named.push(MessageInQueue { origin, ..message });
        // Under the number the account's devices know it by (its view's, if it has one here).
        logged.push((chat, message.shown(), bytes));
    }
    entry.item = match (&entry.item, named.as_slice()) {
        (_, []) => return Ok(None),
        (QueueItem::MessageRef { .. }, [one]) => QueueItem::MessageRef {
            chat,
            chat_seq: one.chat_seq,
            origin: one.origin,
            shown_seq: one.shown_seq,
        },
        _ => QueueItem::MessageRefs {
            chat,
            messages: named,
        },
    };
    Ok(Some((entry, logged)))
}

/// The new home's side: applies one part in one transaction (the first clears what an earlier
/// unfinished move left, in transactions of its own). `local` is this region.
pub async fn apply_part(
    db: &Database,
    local: RegionId,
    part: &wire::ImportAccount,
    now_ms: u64,
) -> Result<(), ProtoError> {
    let account = AccountId(part.account);
    if part.from_region == local.0 {
        return Err(ProtoError::invalid(
            "a region does not move an account to itself",
        ));
    }
    if part.part == 0 {
        let homed_here = db
            .transact(|tx| async move {
                let record = directory::account_by_id(&tx, account).await?;
                let away = home_move::away(&tx, account).await?;
                Ok(record.is_some_and(|record| record.home_region == local) && away.is_none())
            })
            .await
            .map_err(store_failure)?;
        if homed_here {
            return Err(ProtoError::new(
                ErrorCode::Forbidden,
                format!("account {account} is homed here already"),
            ));
        }
        while !db
            .transact(|tx| async move {
                home_move::clear_account(&tx, account, MOVE_KEYS_PER_READ).await
            })
            .await
            .map_err(store_failure)?
        {}
    }
    let part = part.clone();
    db.transact(|tx| {
        let part = part.clone();
        async move { import(&tx, local, &part, now_ms).await }
    })
    .await
    .map_err(store_failure)?
}

async fn import(
    tx: &fdb_layers::Transaction,
    local: RegionId,
    part: &wire::ImportAccount,
    now_ms: u64,
) -> Result<Result<(), ProtoError>, StoreError> {
    let account = AccountId(part.account);
    for moved in &part.chat_logs {
        let Ok(chat) = ChatId::from_bytes(&moved.chat) else {
            return Ok(Err(ProtoError::invalid("a moved chat without an id")));
        };
        let peer_home = match moved.peer {
            0 => None,
            peer => directory::account_by_id(tx, AccountId(peer))
                .await?
                .map(|peer| peer.home_region),
        };
        let numbered_here = chat_log::last_seq(tx, chat).await? > 0;
        tracing::debug!(
            %account,
            %chat,
            peer = moved.peer,
            ?peer_home,
            group = moved.group,
            last_seq = moved.last_seq,
            "a moved chat"
        );
        if peer_home == Some(local) || numbered_here {
            // A 1:1 chat with an account homed here, or a chat this region numbered already (a
            // group's for its members here, a 1:1 chat's for a peer homed here once and moved
            // away since): this log's numbers stand, and the moved account goes on with the
            // old home's in a view of its own. Two logs of one chat may order the envelopes
            // that crossed differently (two devices of one account sending while the regions
            // were apart): adopting would show the moved account's devices this log's order
            // under numbers they hold for other envelopes.
            chat_log::views::open(tx, chat, account, moved.last_seq)?;
        } else if moved.group {
            // A group's chat this region holds nothing of: nobody here read a number of it.
            chat_log::adopt(tx, chat, moved.last_seq, true).await?;
        } else {
            // Only a 1:1 chat whose other account lives elsewhere, and that this log never
            // numbered: nobody here reads it. A peer
            // this region's directory replica does not know yet (it lags behind the writer,
            // as after a failover) is not homed here either: the region knows its own.
            let peer_elsewhere = moved.peer != 0;
            chat_log::adopt(tx, chat, moved.last_seq, peer_elsewhere).await?;
        }
    }
    let mut viewed = Viewed::default();
    for logged in &part.log_entries {
        let Ok(chat) = ChatId::from_bytes(&logged.chat) else {
            return Ok(Err(ProtoError::invalid("a moved log entry without a chat")));
        };
        let in_view = viewed.check(tx, chat, account).await?;
        tracing::debug!(
            %account,
            %chat,
            chat_seq = logged.chat_seq,
            tail = logged.tail,
            in_view,
            "a moved log entry"
        );
        if logged.tail && in_view {
            // The old home's number of one of the chat's last envelopes, which its sender may
            // send again here: for the entry here, or for when it is committed here.
            let moved = chat_log::decode_entry(logged.chat_seq, &logged.entry)?;
            match chat_log::seq_of(tx, chat, moved.sender, moved.client_message_id).await? {
                Some(chat_seq) => {
                    chat_log::views::show_as(tx, chat, account, chat_seq, logged.chat_seq)?
                }
                None => chat_log::views::show_by_id(
                    tx,
                    chat,
                    account,
                    moved.sender,
                    moved.client_message_id,
                    logged.chat_seq,
                )?,
            }
        } else if logged.tail {
            chat_log::import_tail_entry(tx, chat, logged.chat_seq, &logged.entry).await?;
        } else {
            let chat_seq = chat_log::import_entry(tx, chat, logged.chat_seq, &logged.entry).await?;
            if in_view {
                chat_log::views::show_as(tx, chat, account, chat_seq, logged.chat_seq)?;
            }
            if let Err(error) =
                complete_entry(tx, account, chat, chat_seq, &logged.entry, in_view).await?
            {
                return Ok(Err(error));
            }
        }
    }
    for moved in &part.queue {
        let device: DeviceAddress = match moved.device.parse() {
            Ok(device) if device.account == account => device,
            _ => {
                return Ok(Err(ProtoError::invalid(
                    "a moved queue entry of another account",
                )));
            }
        };
        let mut entry = match device_queue::moved_entry_from(moved.queue_seq, &moved.item) {
            Ok(entry) => entry,
            Err(error) => return Ok(Err(ProtoError::invalid(format!("a moved entry: {error}")))),
        };
        if let Err(error) = renumber(tx, account, &mut viewed, &mut entry.item).await? {
            return Ok(Err(error));
        }
        device_queue::import_entry(tx, device, &entry).await?;
    }
    for head in &part.queue_heads {
        let device: DeviceAddress = match head.device.parse() {
            Ok(device) if device.account == account => device,
            _ => {
                return Ok(Err(ProtoError::invalid(
                    "a moved queue head of another account",
                )));
            }
        };
        device_queue::raise_latest(tx, device, head.latest)?;
    }
    for head in &part.chat_heads {
        let (Ok(chat), Ok(sender)) = (ChatId::from_bytes(&head.chat), head.sender.parse()) else {
            return Ok(Err(ProtoError::invalid("a malformed moved chat head")));
        };
        chat_log::raise_sender_seq(tx, chat, sender, head.sender_seq)?;
    }
    let keys: Vec<(Vec<u8>, Vec<u8>)> = part
        .keys
        .iter()
        .map(|moved| (moved.key.clone(), moved.value.clone()))
        .collect();
    match home_move::import_keys(tx, account, &keys) {
        Ok(()) => {}
        Err(StoreError::InvalidOptions(problem)) => return Ok(Err(ProtoError::invalid(problem))),
        Err(error) => return Err(error),
    }
    if let Some(record) = &part.activate {
        if record.account != account.0 || record.region != local.0 {
            return Ok(Err(ProtoError::invalid(
                "a move activates the account in another region",
            )));
        }
        directory::put_account(tx, &crate::service::record_of(record)).await?;
        home_move::clear_away(tx, account);
        home_move::set_arrived(tx, account, now_ms)?;
    }
    Ok(Ok(()))
}

/// Points the messages of a moved item at this region's log entries (found by sender and
/// client message id, imported before it).
/// Completes entry `chat_seq` of `chat` here with the entries for `account`'s devices that the
/// old home's copy (`moved`, which it queued for them) holds and this one lacks: a copy first
/// stored here for other accounts was never checked for this account's devices, and may lack
/// one the sender added when the old home answered "mismatched".
///
/// A group message is one Megolm ciphertext for every device, so it cannot be completed: when
/// the old home's build is another one (the sender built it again at a later index for a
/// device it learned of late), the account keeps that build as its own copy in its view
/// (`chat_log::views::keep_copy`), since its devices may hold the key only from that index.
async fn complete_entry(
    tx: &fdb_layers::Transaction,
    account: AccountId,
    chat: ChatId,
    chat_seq: u64,
    moved: &[u8],
    in_view: bool,
) -> Result<Result<(), ProtoError>, StoreError> {
    let moved = chat_log::decode_entry(chat_seq, moved)?;
    let Some(stored) = chat_log::entry(tx, chat, chat_seq).await? else {
        return Ok(Ok(()));
    };
    if stored.envelope_bytes == moved.envelope_bytes {
        // The moved copy itself, or the same envelope: nothing to complete.
        return Ok(Ok(()));
    }
    let Ok(offered) = wire::Envelope::decode(moved.envelope_bytes.clone()) else {
        return Ok(Err(ProtoError::invalid(
            "a moved log entry whose envelope does not decode",
        )));
    };
    if offered.group != 0 && in_view && core::another_group_build(&stored, &offered)? {
        chat_log::views::keep_copy(tx, chat, account, chat_seq, &moved.envelope_bytes)?;
        return Ok(Ok(()));
    }
    core::complete_entry(tx, chat, &stored, &offered.ciphertexts, |device| {
        device.account == account
    })
    .await?;
    Ok(Ok(()))
}

async fn renumber(
    tx: &fdb_layers::Transaction,
    account: AccountId,
    viewed: &mut Viewed,
    item: &mut QueueItem,
) -> Result<Result<(), ProtoError>, StoreError> {
    let (Some(chat), messages) = item.messages() else {
        return Ok(Ok(()));
    };
    let in_view = viewed.check(tx, chat, account).await?;
    let mut renumbered = Vec::with_capacity(messages.len());
    for message in messages {
        let Some(origin) = message.origin else {
            return Ok(Err(ProtoError::invalid(
                "a moved message that does not name its sender",
            )));
        };
        let Some(chat_seq) =
            chat_log::seq_of(tx, chat, origin.sender, origin.client_message_id).await?
        else {
            return Ok(Err(ProtoError::invalid(
                "a moved queue entry names a log entry that was not sent before it",
            )));
        };
        // In a view, the device is shown the number the old home showed it.
        let shown_seq = in_view.then(|| message.shown());
        if let Some(shown) = shown_seq {
            chat_log::views::show_as(tx, chat, account, chat_seq, shown)?;
        }
        renumbered.push(MessageInQueue {
            chat_seq,
            origin: Some(origin),
            shown_seq,
        });
    }
    match item {
        QueueItem::MessageRef {
            chat_seq,
            origin,
            shown_seq,
            ..
        } => {
            *chat_seq = renumbered[0].chat_seq;
            *origin = renumbered[0].origin;
            *shown_seq = renumbered[0].shown_seq;
        }
        QueueItem::MessageRefs { messages, .. } => *messages = renumbered,
        QueueItem::Receipt(_) | QueueItem::Receipts(_) => {}
    }
    Ok(Ok(()))
}

/// Which chats the moved account has a view of here (`chat_log::views`), read once per chat
/// of an imported part.
#[derive(Debug, Default)]
struct Viewed(HashMap<ChatId, bool>);

impl Viewed {
    async fn check(
        &mut self,
        tx: &fdb_layers::Transaction,
        chat: ChatId,
        account: AccountId,
    ) -> Result<bool, StoreError> {
        if let Some(&known) = self.0.get(&chat) {
            return Ok(known);
        }
        let in_view = chat_log::views::last_shown(tx, chat, account)
            .await?
            .is_some();
        self.0.insert(chat, in_view);
        Ok(in_view)
    }
}

/// The old home lets go of `account` once the directory moved it to `record`'s region: takes
/// the record (unless this region is the writer, whose move wrote it), then [`clear`]s it.
pub async fn let_go(
    db: &Database,
    record: &wire::AccountInfo,
    writer: bool,
) -> Result<(), ProtoError> {
    take_record(db, record, writer).await?;
    clear(db, AccountId(record.account)).await
}

/// The old home takes the directory's record of a moved account (unless it is the writer,
/// whose move wrote it): from then on its transactions see the account homed elsewhere.
pub async fn take_record(
    db: &Database,
    record: &wire::AccountInfo,
    writer: bool,
) -> Result<(), ProtoError> {
    if writer {
        return Ok(());
    }
    let record = crate::service::record_of(record);
    db.transact(|tx| {
        let record = record.clone();
        async move { directory::put_account(&tx, &record).await }
    })
    .await
    .map_err(store_failure)?;
    Ok(())
}

/// Clears what the old home keeps of a moved account (its keys and queues), page by page.
pub async fn clear(db: &Database, account: AccountId) -> Result<(), ProtoError> {
    while !db
        .transact(
            |tx| async move { home_move::clear_account(&tx, account, MOVE_KEYS_PER_READ).await },
        )
        .await
        .map_err(store_failure)?
    {}
    Ok(())
}

/// Asks the region `config` describes, as its operator (with the region's own certificate), to
/// move the home of `account` (an account id, or a name) to region `to`, and waits for the
/// answer.
pub async fn request_move_home(
    config: &crate::config::RegionConfig,
    account: &str,
    to: u32,
) -> Result<wire::HomeMoved, crate::service::RegionError> {
    use crate::service::{RegionError, RemoteCensus};
    use relay_net::NetError;
    use relay_proto::wire::{RegionRequest, RegionResponse, region_response};

    let roots = relay_net::load_roots(&config.ca_cert)?;
    let identity = relay_net::TlsIdentity::load(&config.cert, &config.key)?;
    let remote = RemoteCensus::connect(config, roots, identity)?;
    let timeout = std::time::Duration::from_millis(crate::limits::MOVE_HOME_REQUEST_TIMEOUT_MS);
    let remote_error = |error: ProtoError| RegionError::Net(NetError::Remote(error));
    let asked = async {
        let connection = remote.links.connection(config.region).await?;
        let id = match account.parse::<u64>() {
            Ok(id) => id,
            Err(_) => {
                let lookup = RegionRequest {
                    body: Some(region_request::Body::LookupName(wire::LookupName {
                        name: account.to_owned(),
                    })),
                };
                match relay_net::request::<_, RegionResponse>(&connection, &lookup, timeout)
                    .await?
                    .body
                {
                    Some(region_response::Body::Account(info)) => info.account,
                    Some(region_response::Body::Error(error)) => {
                        return Err(remote_error(error.into()));
                    }
                    _ => {
                        return Err(remote_error(ProtoError::new(
                            ErrorCode::Internal,
                            "unexpected answer to a lookup",
                        )));
                    }
                }
            }
        };
        let request = RegionRequest {
            body: Some(region_request::Body::MoveHome(wire::MoveHome {
                account: id,
                to_region: to,
            })),
        };
        let answer =
            relay_net::request::<_, RegionResponse>(&connection, &request, timeout).await?;
        match answer.body {
            Some(region_response::Body::HomeMoved(moved)) => Ok(moved),
            Some(region_response::Body::Error(error)) => Err(remote_error(error.into())),
            _ => Err(remote_error(ProtoError::new(
                ErrorCode::Internal,
                "unexpected answer to a home move",
            ))),
        }
    };
    let answer = asked.await;
    remote.close();
    answer
}

#[cfg(test)]
mod tests;
