//! Views: one account's own numbering of a chat whose log here numbers it for others.
//!
//! **Challenge.** A chat across regions has a log in each, and each numbers it for the accounts
//! homed there: the orders differ where messages crossed, and a region that joined a group's
//! chat late numbers it from 1. When an account moves into a region whose log of the chat
//! others here read (its 1:1 peer, or members of its group), its devices hold the old home's
//! numbers (their shared history keys messages by them, and each device's queue must stay
//! gapless), while this region's log keeps its own numbers for those who were here already.
//! Adopting the old numbering (as a log nobody here reads does, [`super::adopt`]) would
//! renumber what the others have read.
//!
//! So the moved account gets a view: every entry this region queues for the account's devices,
//! or acknowledges to one of them, is shown to it under a number of the view, which goes on
//! from the old home's last one. The log and its numbers stay as they are; a queue entry keeps
//! the log's number to find the entry and carries the view's number to show it.
//!
//! **Key layout** (in the chat's subspace `("chat_log", chat)`):
//! - `("view", account)` → the last number the account's view gave or took (8 bytes LE);
//! - `("shown", account, chat_seq)` → the view's number of log entry `chat_seq`;
//! - `("shown_id", account, sender, client_message_id)` → the number the old home gave an
//!   envelope this log does not hold yet (one of the chat's last, which the sender may send
//!   again here): taken as the entry's view number when it is committed here;
//! - `("walked", account, sender)` → empty: the sender's entries stored here before the
//!   account arrived that its view never showed it were looked for (once per sender);
//! - `("copy", account, chat_seq)` → the envelope the account's devices get for log entry
//!   `chat_seq` instead of the log's: a group message the old home stored in another build
//!   than this log's ([`keep_copy`]).
//!
//! **Conflicts.** Numbering reads `("view", account)` with a conflict, like the log's own
//! `last_seq`: views number in commit order without gaps. Finding a chat's views is one range
//! read of a few keys, the one cost every append pays.
//!
//! **Limits.** A 1:1 chat has two views at most; a group's chat one per member that moved in
//! (a view stays when its account leaves the group). [`viewers_among`] reads up to
//! [`VIEWS_READ_MAX`] views in its one range read and looks up the accounts it asks about one
//! by one past that, so any number of views is numbered right.

use std::collections::BTreeSet;

use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress};

use super::ChatLog;
use crate::codec::{decode_key, decode_u64, encode_u64, read_u64};
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;

/// Views read in one range read by [`viewers_among`]: a group's members that moved in.
pub const VIEWS_READ_MAX: usize = crate::limits::GROUP_MEMBERS_MAX as usize;

/// The accounts with a view of `chat`, in account order (none for almost every chat), up to
/// [`VIEWS_READ_MAX`] of them.
pub async fn viewers(
    transaction: &Transaction,
    chat: ChatId,
) -> Result<Vec<AccountId>, StoreError> {
    let views = ChatLog::new(chat).root.subspace(&("view",));
    let (begin, end) = views.range();
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::limit(VIEWS_READ_MAX))
        .await?;
    rows.iter()
        .map(|(key, _)| {
            let (account,): (AccountId,) = decode_key(&views, key, "chat log view key")?;
            Ok(account)
        })
        .collect()
}

/// The accounts of `concerned` with a view of `chat`, in account order: one range read (which
/// finds none for almost every chat; `concerned` is only looked at when it finds some), and
/// one read per account of `concerned` when the chat has more than [`VIEWS_READ_MAX`] views.
pub async fn viewers_among(
    transaction: &Transaction,
    chat: ChatId,
    concerned: impl IntoIterator<Item = AccountId>,
) -> Result<Vec<AccountId>, StoreError> {
    let all = viewers(transaction, chat).await?;
    if all.is_empty() {
        return Ok(all);
    }
    let concerned: BTreeSet<AccountId> = concerned.into_iter().collect();
    if all.len() < VIEWS_READ_MAX {
        return Ok(all
            .into_iter()
            .filter(|account| concerned.contains(account))
            .collect());
    }
    let mut found = Vec::new();
    for account in concerned {
        if last_shown(transaction, chat, account).await?.is_some() {
            found.push(account);
        }
    }
    Ok(found)
}

/// Opens `account`'s view of `chat`, going on after `last_shown` (the old home's last number
/// of the chat), or raises an open one to it (never lowers it: numbers given stay given).
pub fn open(
    transaction: &Transaction,
    chat: ChatId,
    account: AccountId,
    last_shown: u64,
) -> Result<(), StoreError> {
    let log = ChatLog::new(chat);
    transaction.atomic_max(&log.root.pack(&("view", account)), &encode_u64(last_shown))
}

/// The last number of `account`'s view of `chat` (`None`: the account has no view of it).
pub async fn last_shown(
    transaction: &Transaction,
    chat: ChatId,
    account: AccountId,
) -> Result<Option<u64>, StoreError> {
    let log = ChatLog::new(chat);
    match transaction.get(&log.root.pack(&("view", account))).await? {
        Some(value) => Ok(Some(decode_u64(&value, "chat log view")?)),
        None => Ok(None),
    }
}

/// The number `account`'s view of `chat` shows log entry `chat_seq` under (`None`: it gave or
/// took none).
pub async fn shown_of(
    transaction: &Transaction,
    chat: ChatId,
    account: AccountId,
    chat_seq: u64,
) -> Result<Option<u64>, StoreError> {
    let log = ChatLog::new(chat);
    match transaction
        .get(&log.root.pack(&("shown", account, chat_seq)))
        .await?
    {
        Some(value) => Ok(Some(decode_u64(&value, "chat log shown")?)),
        None => Ok(None),
    }
}

/// Records that `account`'s view of `chat` shows log entry `chat_seq` as `shown` (the number
/// the old home gave it, which the account's devices know), and raises the view past it.
pub fn show_as(
    transaction: &Transaction,
    chat: ChatId,
    account: AccountId,
    chat_seq: u64,
    shown: u64,
) -> Result<(), StoreError> {
    let log = ChatLog::new(chat);
    transaction.set(
        &log.root.pack(&("shown", account, chat_seq)),
        &encode_u64(shown),
    )?;
    transaction.atomic_max(&log.root.pack(&("view", account)), &encode_u64(shown))
}

/// Records the number `shown` the old home gave the envelope `sender` sent as
/// `client_message_id`, which this log does not hold yet: when it is committed here,
/// [`number`] shows it under that number. Raises the view past it.
pub fn show_by_id(
    transaction: &Transaction,
    chat: ChatId,
    account: AccountId,
    sender: DeviceAddress,
    client_message_id: ClientMessageId,
    shown: u64,
) -> Result<(), StoreError> {
    let log = ChatLog::new(chat);
    transaction.set(
        &shown_id_key(chat, account, sender, client_message_id),
        &encode_u64(shown),
    )?;
    transaction.atomic_max(&log.root.pack(&("view", account)), &encode_u64(shown))
}

/// Whether `account`'s view of `chat` knows log entry `chat_seq` (sent by `sender` as
/// `client_message_id`): it showed it a number, or the old home gave the envelope one
/// ([`show_by_id`]) before this log held it.
pub async fn knows(
    transaction: &Transaction,
    chat: ChatId,
    account: AccountId,
    chat_seq: u64,
    sender: DeviceAddress,
    client_message_id: ClientMessageId,
) -> Result<bool, StoreError> {
    if shown_of(transaction, chat, account, chat_seq)
        .await?
        .is_some()
    {
        return Ok(true);
    }
    let by_id_key = shown_id_key(chat, account, sender, client_message_id);
    Ok(transaction.get(&by_id_key).await?.is_some())
}

/// Whether `account`'s view of `chat` was already walked back for `sender`'s entries it never
/// showed ([`set_walked`]): once it was, every later entry of the sender is queued to the
/// account when it is committed, so no walk is needed again.
pub async fn walked(
    transaction: &Transaction,
    chat: ChatId,
    account: AccountId,
    sender: DeviceAddress,
) -> Result<bool, StoreError> {
    let log = ChatLog::new(chat);
    Ok(transaction
        .get(&log.root.pack(&("walked", account, sender)))
        .await?
        .is_some())
}

/// Records that `account`'s view of `chat` was walked back for `sender`'s entries.
pub fn set_walked(
    transaction: &Transaction,
    chat: ChatId,
    account: AccountId,
    sender: DeviceAddress,
) -> Result<(), StoreError> {
    let log = ChatLog::new(chat);
    transaction.set(&log.root.pack(&("walked", account, sender)), &[])
}

/// Keeps `envelope` as `account`'s own copy of log entry `chat_seq` of `chat`: what its
/// devices get for the entry instead of the log's envelope.
///
/// A group message is encrypted once, with the sender's Megolm session at one index. When the
/// sender learns of a member device late (a region answered "mismatched devices"), it builds
/// the message again at a later index and gives the new device the key from that index; a
/// region that committed the first build keeps it for its own members, who all hold the key
/// from before. The moved account's devices may hold the key only from the later index: the
/// old home's build (which it queued for them) is the one they can decrypt, and this log's
/// is not. The copy lives as long as the chat's log.
pub fn keep_copy(
    transaction: &Transaction,
    chat: ChatId,
    account: AccountId,
    chat_seq: u64,
    envelope: &[u8],
) -> Result<(), StoreError> {
    let log = ChatLog::new(chat);
    transaction.set(&log.root.pack(&("copy", account, chat_seq)), envelope)
}

/// `account`'s own copy of log entry `chat_seq` of `chat` ([`keep_copy`]), if it has one.
pub async fn copy_of(
    transaction: &Transaction,
    chat: ChatId,
    account: AccountId,
    chat_seq: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let log = ChatLog::new(chat);
    transaction
        .get(&log.root.pack(&("copy", account, chat_seq)))
        .await
}

/// The number `account`'s view of `chat` shows log entry `chat_seq` (sent by `sender` as
/// `client_message_id`) under: the one it has; else the one the old home gave the envelope
/// ([`show_by_id`]); else the view's next. Call it only for an account with a view
/// ([`viewers`]), in the transaction that queues or acknowledges the entry to the account.
pub async fn number(
    transaction: &Transaction,
    chat: ChatId,
    account: AccountId,
    chat_seq: u64,
    sender: DeviceAddress,
    client_message_id: ClientMessageId,
) -> Result<u64, StoreError> {
    if let Some(shown) = shown_of(transaction, chat, account, chat_seq).await? {
        return Ok(shown);
    }
    let log = ChatLog::new(chat);
    let by_id_key = shown_id_key(chat, account, sender, client_message_id);
    let shown = match transaction.get(&by_id_key).await? {
        Some(value) => {
            transaction.clear(&by_id_key);
            decode_u64(&value, "chat log shown_id")?
        }
        None => {
            let view_key = log.root.pack(&("view", account));
            let next = read_u64(transaction, &view_key, "chat log view").await? + 1;
            transaction.set(&view_key, &encode_u64(next))?;
            next
        }
    };
    transaction.set(
        &log.root.pack(&("shown", account, chat_seq)),
        &encode_u64(shown),
    )?;
    Ok(shown)
}

/// The key of the number the old home gave `sender`'s envelope `client_message_id` in
/// `account`'s view of `chat` ([`show_by_id`]).
fn shown_id_key(
    chat: ChatId,
    account: AccountId,
    sender: DeviceAddress,
    client_message_id: ClientMessageId,
) -> Vec<u8> {
    ChatLog::new(chat)
        .root
        .pack(&("shown_id", account, sender, client_message_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat_log::{NewEntry, append};
    use crate::test_support::temporary_database;
    use relay_proto::{DeviceId, RegionId};

    fn device(account: u64) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(account),
            device: DeviceId(1),
        }
    }

    #[tokio::test]
    async fn a_view_numbers_after_the_old_homes_last_and_keeps_what_it_took() {
        let (_folder, db) = temporary_database(None);
        let (alice, bob) = (AccountId(1), AccountId(2));
        let chat = ChatId::direct(alice, bob);
        let id = |n: u8| ClientMessageId([n; 16]);
        db.transact(|tx| async move {
            // Bob's region numbered two entries of the chat.
            for n in 1..=2u8 {
                let entry = NewEntry {
                    chat,
                    sender: device(2),
                    client_message_id: id(n),
                    sender_seq: u64::from(n),
                    sender_region: RegionId(2),
                    envelope_bytes: b"e",
                };
                append(&tx, &entry, 0).await?;
            }
            assert!(viewers(&tx, chat).await?.is_empty());
            // Alice arrives: her devices hold 7 numbers, the old home gave entry 2 number 6
            // and an envelope not here yet number 7.
            open(&tx, chat, alice, 5)?;
            show_as(&tx, chat, alice, 2, 6)?;
            show_by_id(&tx, chat, alice, device(1), id(9), 7)?;
            Ok(())
        })
        .await
        .expect("opened");
        let shown = db
            .transact(|tx| async move {
                assert_eq!(viewers(&tx, chat).await?, vec![alice]);
                assert_eq!(last_shown(&tx, chat, alice).await?, Some(7));
                assert_eq!(last_shown(&tx, chat, bob).await?, None);
                let taken = number(&tx, chat, alice, 2, device(2), id(2)).await?;
                // The envelope the old home numbered 7, committed here as entry 3.
                let by_id = number(&tx, chat, alice, 3, device(1), id(9)).await?;
                let next = number(&tx, chat, alice, 4, device(2), id(4)).await?;
                let again = number(&tx, chat, alice, 4, device(2), id(4)).await?;
                Ok((taken, by_id, next, again))
            })
            .await
            .expect("numbered");
        assert_eq!(shown, (6, 7, 8, 8));
        let (opened_again, last) = db
            .transact(|tx| async move {
                // A second move's chat heads never take numbers back.
                open(&tx, chat, alice, 5)?;
                Ok((
                    shown_of(&tx, chat, alice, 3).await?,
                    last_shown(&tx, chat, alice).await?,
                ))
            })
            .await
            .expect("reopened");
        assert_eq!((opened_again, last), (Some(7), Some(8)));
    }
}
