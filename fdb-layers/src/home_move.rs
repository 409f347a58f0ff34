//! The home move layer: what an account's old home region hands its new home, and how the old
//! home lets go of it.
//!
//! **Challenge.** An account's home keeps its devices with their keys, marks and queues, its
//! blocks, presence and push registrations, and its place in each of its chats' logs (each
//! sender's last `sender_seq`). Moving the home to another region must carry all of it, in
//! transactions of bounded size on both sides, so the new home serves the account as the old
//! one would have: every queued message still there (under the same queue sequences, so a
//! device's cursor stays valid), the next envelope of every chat accepted, keys claimed once.
//!
//! **What moves, and how.**
//! - *Copied key for key* ([`account_keys`], [`import_keys`]): the account's device records and
//!   device counter and version (`("directory", "device" | "device_counter" |
//!   "account_version", account)`), device marks (`("device_state", account)`), one-time and
//!   fallback keys (`("keys", "one_time" | "one_time_count" | "fallback" | "fallback_used",
//!   account)`), blocks (`("blocks", account)`), presence (`("presence", account)`) and push
//!   registrations (`("push", account)`). These keys name the account and nothing local, so
//!   they mean the same in both stores.
//! - *Queues* (`device_queue::moved_entries`, `device_queue::import_entry`): each entry under
//!   its own queue sequence, with the chat log entries it references carried along
//!   (`chat_log::entry_bytes`) and taken into the new home's logs (`chat_log::import_entry`,
//!   which finds an entry that reached both regions by its dedupe record), so references are
//!   rewritten to the new home's chat sequences. Each queue's latest sequence goes along too.
//! - *Chat heads* (`chat_log::chats_of`, `chat_log::raise_sender_seq`): where every sender
//!   stands in each chat of the account, raised (never lowered) at the new home, which may not
//!   have held the chat before.
//!
//! Not moved: open pairings (their codes name the old region; a link in progress starts again),
//! receipt states of messages the account sent (a late receipt is then told once more, which
//! receivers of receipts already take as a repeat), and media blobs, which stay where they were
//! uploaded until they expire.
//!
//! **The old home's mark.** `("home_move", "away", account)` → the region the account moved to
//! (4 bytes LE), written by the old home before the directory moves the account
//! ([`set_away`]): from then on the old home forwards what it would have queued for the account
//! (receipts its own tasks make) to the new home, and refuses requests routed to it for the
//! account. It stays (a few bytes per account that left) until the account moves back
//! ([`clear_away`]), so an edge that cached a home two moves old is still turned away.
//!
//! **The new home's mark.** `("home_move", "arrived", account)` → when the account arrived
//! (ms, 8 bytes LE), written when the new home takes the account ([`set_arrived`]).
//!
//! **Conflicts.** The old home exports while the account is held (no request touching it runs);
//! the new home writes keys nothing else touches before the directory names it the home.
//!
//! **Idempotence.** An import writes the same keys again, an entry already there is left, chat
//! log entries are found by their dedupe records and marks only rise: a part sent twice changes
//! nothing. [`clear_account`] of what is gone clears nothing.
//!
//! **Limits.** Callers page: [`account_keys`] returns at most [`LAYER_READ_ENTRIES_MAX`] keys a
//! call, and queues and chats are read in pages by their own layers.

use relay_proto::AccountId;

use crate::device_queue;
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::limits::LAYER_READ_ENTRIES_MAX;
use crate::tuple::Subspace;

/// The key prefixes of everything of `account` that is copied key for key, in key order of
/// the list (see the module doc).
fn copied_prefixes(account: AccountId) -> Vec<Vec<u8>> {
    [
        Subspace::new(&("blocks", account)),
        Subspace::new(&("device_state", account)),
        Subspace::new(&("directory", "account_version", account)),
        Subspace::new(&("directory", "device", account)),
        Subspace::new(&("directory", "device_counter", account)),
        Subspace::new(&("keys", "fallback", account)),
        Subspace::new(&("keys", "fallback_used", account)),
        Subspace::new(&("keys", "one_time", account)),
        Subspace::new(&("keys", "one_time_count", account)),
        Subspace::new(&("presence", account)),
        Subspace::new(&("push", account)),
    ]
    .into_iter()
    .map(|subspace| subspace.bytes().to_vec())
    .collect()
}

/// The range of keys starting with `prefix`, the prefix itself included (a single key such as
/// a device counter is its own prefix).
fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut end = prefix.to_vec();
    end.push(0xff);
    (prefix.to_vec(), end)
}

/// Up to `limit` of the keys of `account` copied key for key (at most
/// [`LAYER_READ_ENTRIES_MAX`]), after the key `after` (from the first with `None`), in order.
/// Fewer than `limit` means no more are left.
pub async fn account_keys(
    transaction: &Transaction,
    account: AccountId,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
    let limit = limit.clamp(1, LAYER_READ_ENTRIES_MAX);
    let mut found = Vec::new();
    for prefix in copied_prefixes(account) {
        let (mut begin, end) = prefix_range(&prefix);
        if let Some(after) = after {
            if after >= end.as_slice() {
                continue;
            }
            if after >= begin.as_slice() {
                begin = after.to_vec();
                begin.push(0);
            }
        }
        let rows = transaction
            .get_range(&begin, &end, RangeOptions::limit(limit - found.len()))
            .await?;
        found.extend(rows);
        if found.len() >= limit {
            break;
        }
    }
    Ok(found)
}

/// Writes keys [`account_keys`] read at the old home. Every key must be one of the account's
/// copied keys: anything else is refused and nothing of the call is written.
pub fn import_keys(
    transaction: &Transaction,
    account: AccountId,
    keys: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), StoreError> {
    let prefixes = copied_prefixes(account);
    if let Some((key, _)) = keys
        .iter()
        .find(|(key, _)| !prefixes.iter().any(|prefix| key.starts_with(prefix)))
    {
        return Err(StoreError::InvalidOptions(format!(
            "a moved key of account {account} outside its keys: {key:02x?}"
        )));
    }
    for (key, value) in keys {
        transaction.set(key, value)?;
    }
    Ok(())
}

/// Removes up to about `limit` keys of what [`account_keys`] and the queues hold of `account`
/// here. Returns whether nothing is left: the old home lets go of a moved account page by page
/// (and a new home clears what an earlier, unfinished move left before it imports).
pub async fn clear_account(
    transaction: &Transaction,
    account: AccountId,
    limit: usize,
) -> Result<bool, StoreError> {
    for prefix in copied_prefixes(account) {
        let (begin, end) = prefix_range(&prefix);
        transaction.clear_range(&begin, &end);
    }
    let limit = limit.clamp(1, LAYER_READ_ENTRIES_MAX);
    let mut budget = limit;
    for device in device_queue::queued_devices_of(transaction, account, None, limit).await? {
        if budget == 0 {
            return Ok(false);
        }
        let page = budget.min(LAYER_READ_ENTRIES_MAX);
        if !device_queue::clear_queue(transaction, device, page).await? {
            return Ok(false);
        }
        budget = budget.saturating_sub(page);
    }
    Ok(true)
}

/// Records when `account` arrived here (its new home took it, at `now_ms`): an envelope this
/// region stored before then did not reach the account's queues here (see [`arrived`]).
pub fn set_arrived(
    transaction: &Transaction,
    account: AccountId,
    now_ms: u64,
) -> Result<(), StoreError> {
    transaction.set(&arrived_key(account), &crate::codec::encode_u64(now_ms))
}

/// When `account` last arrived here by a home move (`None`: it never did), as a snapshot read:
/// a retried envelope first stored here before then is queued for the account on its retry,
/// since its old home may have held it and turned it away while the account moved.
pub async fn arrived(
    transaction: &Transaction,
    account: AccountId,
) -> Result<Option<u64>, StoreError> {
    match transaction.snapshot_get(&arrived_key(account)).await? {
        Some(value) => Ok(Some(crate::codec::decode_u64(&value, "home move arrival")?)),
        None => Ok(None),
    }
}

fn arrived_key(account: AccountId) -> Vec<u8> {
    Subspace::new(&("home_move", "arrived")).pack(&(account,))
}

/// Marks `account` as moved (or moving) away from this region to `to` (see the module doc).
pub fn set_away(
    transaction: &Transaction,
    account: AccountId,
    to: relay_proto::RegionId,
) -> Result<(), StoreError> {
    transaction.set(&away_key(account), &to.0.to_le_bytes())
}

/// Removes the mark of `account` (it moves back here).
pub fn clear_away(transaction: &Transaction, account: AccountId) {
    transaction.clear(&away_key(account));
}

/// Where `account` moved away to from this region, if it did (a read with a conflict: a
/// transaction that queues for the account and reads it conflicts with the mark's write).
pub async fn away(
    transaction: &Transaction,
    account: AccountId,
) -> Result<Option<relay_proto::RegionId>, StoreError> {
    match transaction.get(&away_key(account)).await? {
        Some(value) => Ok(Some(decode_region(&value)?)),
        None => Ok(None),
    }
}

/// Up to `limit` accounts marked as moved away, after `after` (from the first with `None`),
/// with where they went (at most [`LAYER_READ_ENTRIES_MAX`]): a region loads them when it
/// starts.
pub async fn away_accounts(
    transaction: &Transaction,
    after: Option<AccountId>,
    limit: usize,
) -> Result<Vec<(AccountId, relay_proto::RegionId)>, StoreError> {
    let marks = Subspace::new(&("home_move", "away"));
    let (mut begin, end) = marks.range();
    if let Some(after) = after {
        begin = marks.pack(&(after,));
        begin.push(0);
    }
    let rows = transaction
        .get_range(
            &begin,
            &end,
            RangeOptions::limit(limit.clamp(1, LAYER_READ_ENTRIES_MAX)),
        )
        .await?;
    rows.iter()
        .map(|(key, value)| {
            let (account,): (AccountId,) = crate::codec::decode_key(&marks, key, "home move mark")?;
            Ok((account, decode_region(value)?))
        })
        .collect()
}

fn away_key(account: AccountId) -> Vec<u8> {
    Subspace::new(&("home_move", "away")).pack(&(account,))
}

fn decode_region(value: &[u8]) -> Result<relay_proto::RegionId, StoreError> {
    let bytes: [u8; 4] = value
        .try_into()
        .map_err(|_| StoreError::corrupt("home move mark", "not 4 bytes"))?;
    Ok(relay_proto::RegionId(u32::from_le_bytes(bytes)))
}

#[cfg(test)]
mod tests;
