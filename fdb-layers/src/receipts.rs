//! The receipts layer: the server-visible receipt state of each message for each recipient
//! device, which only moves forward (invariant I6).
//!
//! **Challenge.** Record that a message was delivered to (or expired for) one device, so the
//! sender's devices can be told, without ever moving a state backwards even when acks, expiry
//! sweeps and retries race. `read` is not here: it travels end to end encrypted.
//!
//! **Key layout** (subspace `("receipts", chat, client_message_id)`):
//! - `(account, device)` → the state (one byte: the `ReceiptState` number).
//!
//! A message's receipts are contiguous, so all of them are one range read ([`states`]).
//!
//! **Conflicts.** [`advance`] reads the state it may replace, so two concurrent advances of one
//! message for one device conflict and the retry compares again; advances for different devices
//! or messages never conflict.
//!
//! **Idempotence.** Advancing to a state already reached returns `false` and changes nothing,
//! so a retried advance is harmless.
//!
//! **Limits.** One byte per message and device.
//!
//! **Evolution.** The retention sweep clears a chat's receipts with the chat log entries they
//! belong to; the key names the message by the sender's client message id, which is unique per
//! sender device, so a sender may later be added to the key if ids stop being random.

use relay_proto::wire::ReceiptState;
use relay_proto::{ChatId, ClientMessageId, DeviceAddress};

use crate::codec::decode_key;
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::tuple::Subspace;

/// Moves the receipt of a message for `recipient` to `state` if that is further than the stored
/// one. Returns whether it moved.
pub async fn advance(
    transaction: &Transaction,
    chat: ChatId,
    client_message_id: ClientMessageId,
    recipient: DeviceAddress,
    state: ReceiptState,
) -> Result<bool, StoreError> {
    let message = message_subspace(chat, client_message_id);
    let key = message.pack(&recipient);
    let stored = match transaction.get(&key).await? {
        Some(value) => decode_state(&value)?,
        None => ReceiptState::Unspecified,
    };
    if state <= stored {
        return Ok(false);
    }
    transaction.set(&key, &[state_byte(state)])?;
    Ok(true)
}

/// The receipt of a message for `recipient`, if any.
pub async fn state(
    transaction: &Transaction,
    chat: ChatId,
    client_message_id: ClientMessageId,
    recipient: DeviceAddress,
) -> Result<Option<ReceiptState>, StoreError> {
    let key = message_subspace(chat, client_message_id).pack(&recipient);
    match transaction.get(&key).await? {
        Some(value) => decode_state(&value).map(Some),
        None => Ok(None),
    }
}

/// Every receipt of a message, in device order.
pub async fn states(
    transaction: &Transaction,
    chat: ChatId,
    client_message_id: ClientMessageId,
) -> Result<Vec<(DeviceAddress, ReceiptState)>, StoreError> {
    let message = message_subspace(chat, client_message_id);
    let (begin, end) = message.range();
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::default())
        .await?;
    rows.iter()
        .map(|(key, value)| {
            let recipient: DeviceAddress = decode_key(&message, key, "receipt key")?;
            Ok((recipient, decode_state(value)?))
        })
        .collect()
}

fn message_subspace(chat: ChatId, client_message_id: ClientMessageId) -> Subspace {
    Subspace::new(&("receipts", chat, client_message_id))
}

fn state_byte(state: ReceiptState) -> u8 {
    // The enum's numbers are 0, 2 and 4.
    state as i32 as u8
}

fn decode_state(value: &[u8]) -> Result<ReceiptState, StoreError> {
    let [byte] = value else {
        return Err(StoreError::corrupt(
            "receipt",
            format!("{} bytes, not 1", value.len()),
        ));
    };
    ReceiptState::try_from(i32::from(*byte))
        .map_err(|_| StoreError::corrupt("receipt", format!("unknown state {byte}")))
}

#[cfg(test)]
mod tests {
    use relay_proto::{AccountId, DeviceId};

    use super::*;
    use crate::test_support::temporary_database;

    const CHAT: ChatId = ChatId([2; 16]);
    const MESSAGE: ClientMessageId = ClientMessageId([3; 16]);
    const PHONE: DeviceAddress = DeviceAddress {
        account: AccountId(4),
        device: DeviceId(1),
    };
    const LAPTOP: DeviceAddress = DeviceAddress {
        account: AccountId(4),
        device: DeviceId(2),
    };

    #[tokio::test]
    async fn receipts_only_move_forward() {
        let (_folder, database) = temporary_database(None);
        let moves = database
            .transact(|tx| async move {
                Ok([
                    advance(&tx, CHAT, MESSAGE, PHONE, ReceiptState::Unspecified).await?,
                    advance(&tx, CHAT, MESSAGE, PHONE, ReceiptState::Delivered).await?,
                    advance(&tx, CHAT, MESSAGE, PHONE, ReceiptState::Delivered).await?,
                    advance(&tx, CHAT, MESSAGE, LAPTOP, ReceiptState::Expired).await?,
                    advance(&tx, CHAT, MESSAGE, LAPTOP, ReceiptState::Delivered).await?,
                ])
            })
            .await
            .expect("advances");
        assert_eq!(moves, [false, true, false, true, false]);
        let (all, phone, other) = database
            .transact(|tx| async move {
                Ok((
                    states(&tx, CHAT, MESSAGE).await?,
                    state(&tx, CHAT, MESSAGE, PHONE).await?,
                    state(&tx, CHAT, ClientMessageId([9; 16]), PHONE).await?,
                ))
            })
            .await
            .expect("reads");
        assert_eq!(
            all,
            [
                (PHONE, ReceiptState::Delivered),
                (LAPTOP, ReceiptState::Expired)
            ]
        );
        assert_eq!((phone, other), (Some(ReceiptState::Delivered), None));
    }
}
