//! How an entry is shown to accounts with a view of its chat (`chat_log::views`: an account
//! that moved here from a region that numbered the chat for it): the number each is shown it
//! under, and the sender's earlier entries such an account was never shown, queued first.

use relay_proto::wire;
use relay_proto::{AccountId, ChatId, DeviceAddress};

use fdb_layers::chat_log;
use fdb_layers::device_queue::{MessageInQueue, MessageOrigin};
use fdb_layers::{StoreError, Transaction};

use super::{QUEUE_ENTRY_OVERHEAD_BYTES_MAX, corrupt, stored_recipients};
use crate::limits::{MISSED_WALK_ENTRIES_MAX, MISSED_WALK_PAGE_ENTRIES};
use crate::stored_envelope;

/// The numbers under which the accounts of a view of a chat (an account that moved here from a
/// region that numbered the chat for it, `chat_log::views`) are shown entry `chat_seq`, and
/// the sender's earlier entries such an account was never shown ([`Missed`]).
#[derive(Debug, Default)]
pub(super) struct ShownNumbers {
    shown: Vec<(AccountId, u64)>,
    pub(super) missed: Vec<Missed>,
}

/// An earlier entry of the same sender that an account with a view was never shown: this
/// region stored it before the account moved here, and the old home never had it (the sender's
/// edge could not reach it), so only the sender's retry would bring it, perhaps after later
/// ones (swarm seeds 514 and 1240: I3). It is queued just before the entry that found it.
#[derive(Debug)]
pub(super) struct Missed {
    account: AccountId,
    /// The devices of the account the stored envelope has an entry for.
    devices: Vec<DeviceAddress>,
    pub(super) message: MessageInQueue,
    pub(super) bytes: usize,
}

impl Missed {
    /// Log entry `entry` of `chat`, numbered now in `account`'s view, for those of `receives`
    /// (the account's devices here) its stored envelope has an entry for.
    async fn of(
        tx: &Transaction,
        chat: ChatId,
        account: AccountId,
        receives: &[DeviceAddress],
        entry: &chat_log::LogEntry,
    ) -> Result<Missed, StoreError> {
        let shown = chat_log::views::number(
            tx,
            chat,
            account,
            entry.chat_seq,
            entry.sender,
            entry.client_message_id,
        )
        .await?;
        let mut devices = Vec::new();
        for &device in receives {
            if stored_envelope::ciphertext_for(&entry.envelope_bytes, device.into())
                .map_err(|error| corrupt("stored envelope", error))?
                .is_some()
            {
                devices.push(device);
            }
        }
        Ok(Missed {
            account,
            devices,
            message: MessageInQueue {
                chat_seq: entry.chat_seq,
                origin: Some(MessageOrigin {
                    sender: entry.sender,
                    client_message_id: entry.client_message_id,
                    sender_region: entry.sender_region,
                    group: stored_envelope::is_group(&entry.envelope_bytes),
                }),
                shown_seq: Some(shown),
            },
            bytes: entry.envelope_bytes.len() + QUEUE_ENTRY_OVERHEAD_BYTES_MAX,
        })
    }

    pub(super) fn covers(&self, device: DeviceAddress) -> bool {
        self.account == device.account && self.devices.contains(&device)
    }
}

impl ShownNumbers {
    /// The number `account` is shown the entry under, if its view numbers the chat.
    pub(super) fn of(&self, account: AccountId) -> Option<u64> {
        self.shown
            .iter()
            .find(|(viewer, _)| *viewer == account)
            .map(|&(_, shown)| shown)
    }

    /// The number a sender of `account` is answered under: its view's if it is homed here and
    /// has one, else the log's `chat_seq` (another region's sender numbers the chat there).
    pub(super) fn acknowledged(&self, account: AccountId, sender_here: bool, chat_seq: u64) -> u64 {
        match self.of(account) {
            Some(shown) if sender_here => shown,
            _ => chat_seq,
        }
    }
}

/// Numbers entry `chat_seq` of the envelope `parsed` in the view of each account of
/// `concerned` (those it is queued or acknowledged to here) that has one: one range read per
/// append, which finds none but for a chat an account moved in with (its 1:1 peer, or members
/// of its group, read this log under its own numbers). For an account it is queued to
/// (`devices` holds its devices here), the sender's earlier entries the account was never
/// shown are numbered first ([`missed_before`]).
pub(super) async fn shown_numbers(
    tx: &Transaction,
    parsed: &wire::ParsedEnvelope,
    chat_seq: u64,
    concerned: impl Iterator<Item = AccountId>,
    devices: &[DeviceAddress],
) -> Result<ShownNumbers, StoreError> {
    let viewers = chat_log::views::viewers_among(tx, parsed.chat, concerned).await?;
    let mut numbers = ShownNumbers::default();
    for viewer in viewers {
        let receives: Vec<DeviceAddress> = devices
            .iter()
            .copied()
            .filter(|device| device.account == viewer)
            .collect();
        if !receives.is_empty()
            && parsed.sender.account != viewer
            && !chat_log::views::walked(tx, parsed.chat, viewer, parsed.sender).await?
        {
            chat_log::views::set_walked(tx, parsed.chat, viewer, parsed.sender)?;
            for entry in missed_before(tx, parsed, chat_seq, viewer).await? {
                let missed = Missed::of(tx, parsed.chat, viewer, &receives, &entry).await?;
                numbers.missed.push(missed);
            }
        }
        let number = chat_log::views::number(
            tx,
            parsed.chat,
            viewer,
            chat_seq,
            parsed.sender,
            parsed.client_message_id,
        )
        .await?;
        numbers.shown.push((viewer, number));
    }
    Ok(numbers)
}

/// The entries of `parsed`'s sender before `chat_seq` in its chat that `account`'s view never
/// showed it and that name the account, oldest first: walking back from `chat_seq` a page at a
/// time, up to the sender's last entry the account knows (shown, or numbered by the old home)
/// or [`MISSED_WALK_ENTRIES_MAX`] entries back. Done once per view and sender
/// (`chat_log::views::walked`): the sender's first entry queued to the account after it
/// arrived finds every such entry, and each later one is queued as it is committed.
async fn missed_before(
    tx: &Transaction,
    parsed: &wire::ParsedEnvelope,
    chat_seq: u64,
    account: AccountId,
) -> Result<Vec<chat_log::LogEntry>, StoreError> {
    let floor = chat_seq.saturating_sub(MISSED_WALK_ENTRIES_MAX);
    let mut missed = Vec::new();
    let mut below = chat_seq;
    'walk: while below > floor + 1 {
        let first = below
            .saturating_sub(MISSED_WALK_PAGE_ENTRIES)
            .max(floor + 1);
        let page =
            chat_log::read_range(tx, parsed.chat, first - 1, (below - first) as usize).await?;
        for entry in page.into_iter().rev() {
            if entry.sender != parsed.sender {
                continue;
            }
            let known = chat_log::views::knows(
                tx,
                parsed.chat,
                account,
                entry.chat_seq,
                entry.sender,
                entry.client_message_id,
            )
            .await?;
            if known {
                break 'walk;
            }
            if stored_recipients(&entry).contains(&account) {
                missed.push(entry);
            }
        }
        below = first;
    }
    missed.reverse();
    Ok(missed)
}
