//! A commit that meets an entry a home move brought here before the envelope itself was
//! committed (the old home's copy): completing that copy with the entries it lacks, or, when
//! the sender built a group message again, taking the new build while each account with a view
//! of the chat keeps the build its devices were given. `home_move` completes imported entries
//! with the same functions.

use super::*;

/// `stored`, the old home's copy of a group message that a home move brought before the
/// message itself was committed here, is another build than the one committed now (the sender
/// built it again at a later index of its Megolm session, for a device it learned of late): no
/// entry added to it makes it readable for a device that holds the key only from the later
/// index, such as a member added meanwhile. The log takes the build committed now
/// (`envelope_bytes`), checked here for every device it is queued to; each account with a view
/// of the chat (moved in) keeps the old home's build as its own copy, unless it has one: that
/// build was queued to its devices there, and they may hold the key for it only.
pub(super) async fn adopt_group_build(
    tx: &Transaction,
    chat: ChatId,
    stored: &chat_log::LogEntry,
    envelope_bytes: &[u8],
) -> Result<(), StoreError> {
    for account in chat_log::views::viewers(tx, chat).await? {
        if chat_log::views::copy_of(tx, chat, account, stored.chat_seq)
            .await?
            .is_none()
        {
            chat_log::views::keep_copy(tx, chat, account, stored.chat_seq, &stored.envelope_bytes)?;
        }
    }
    chat_log::replace_envelope(tx, chat, stored.chat_seq, envelope_bytes).await?;
    Ok(())
}

/// Where `stored`, a group message's entry of `chat`, is another build than `envelope` (the
/// sender built the message again at a later index of its Megolm session, for a device it
/// learned of late), keeps `envelope` (encoded: `envelope_bytes`) as the own copy of each
/// account of `accounts` with a view of the chat (`chat_log::views::keep_copy`): their devices
/// may hold the key only from the later index. Returns those accounts.
pub(super) async fn keep_own_copies(
    tx: &Transaction,
    chat: ChatId,
    stored: &chat_log::LogEntry,
    envelope: &wire::Envelope,
    envelope_bytes: &[u8],
    accounts: &BTreeSet<AccountId>,
) -> Result<BTreeSet<AccountId>, StoreError> {
    if !another_group_build(stored, envelope)? {
        return Ok(BTreeSet::new());
    }
    let mut kept = BTreeSet::new();
    for &account in accounts {
        if chat_log::views::last_shown(tx, chat, account)
            .await?
            .is_some()
        {
            chat_log::views::keep_copy(tx, chat, account, stored.chat_seq, envelope_bytes)?;
            kept.insert(account);
        }
    }
    Ok(kept)
}

/// Whether `stored`, a group message's log entry, holds another build of it than `offered`
/// (another Megolm session or index: the sender built it again), which no entry added to it
/// could make readable for a device that holds the key only for `offered`'s.
pub(crate) fn another_group_build(
    stored: &chat_log::LogEntry,
    offered: &wire::Envelope,
) -> Result<bool, StoreError> {
    // Its group fields only: the per-device entries (up to one per member device) stay unread.
    let stored_build = stored_envelope::group_fields(&stored.envelope_bytes)
        .map_err(|error| corrupt("stored envelope", error))?;
    Ok(stored_build.group_session_id != offered.group_session_id
        || stored_build.group_ciphertext != offered.group_ciphertext)
}

/// The accounts the envelope of `stored` names as its recipients (none if it does not decode).
pub(super) fn stored_recipients(stored: &chat_log::LogEntry) -> BTreeSet<AccountId> {
    stored_envelope::recipients(&stored.envelope_bytes)
        .map(|recipients| {
            recipients
                .recipient_accounts
                .into_iter()
                .map(AccountId)
                .collect()
        })
        .unwrap_or_default()
}

/// Completes `stored`, an entry of `chat` read here, with the entries of `offered` (another
/// copy of its envelope) for the devices `wanted` names that it lacks.
pub(crate) async fn complete_entry(
    tx: &Transaction,
    chat: ChatId,
    stored: &chat_log::LogEntry,
    offered: &[wire::DeviceCiphertext],
    wanted: impl Fn(DeviceAddress) -> bool,
) -> Result<(), StoreError> {
    let fields = stored_envelope::missing_entries(&stored.envelope_bytes, offered, |device| {
        wanted(DeviceAddress {
            account: AccountId(device.account),
            device: DeviceId(device.device),
        })
    })
    .map_err(|error| corrupt("stored envelope", error))?;
    if !fields.is_empty() {
        chat_log::extend_envelope(tx, chat, stored.chat_seq, &fields).await?;
    }
    Ok(())
}
