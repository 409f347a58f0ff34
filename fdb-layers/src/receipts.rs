//! The receipts layer: the server-visible receipt state of each message for each recipient
//! device, which only moves forward (invariant I6).
//!
//! **Challenge.** Record that a message was delivered to (or expired for) one device, so the
//! sender's devices can be told once, without ever moving a state backwards even when acks,
//! expiry sweeps and retries race. `read` is not here: it travels end to end encrypted, so no
//! server learns when anyone read anything.
//!
//! **Key layout** (subspace `("receipts", chat, client_message_id)`):
//! - `(account, device)` → the state (one byte: the `ReceiptState` number, ordered
//!   unspecified < delivered < expired).
//!
//! A message's receipts are contiguous, so all of them are one range read ([`states`]); a
//! single receipt is a point read.
//!
//! **Conflicts.** [`advance`] reads the state it may replace, so two concurrent advances of one
//! message for one device conflict and the retry compares again; advances for different devices
//! or messages never conflict. A blind write (or an atomic max) would avoid that conflict but
//! could not tell the caller whether the state moved, which is what decides whether the
//! sender's devices are told.
//!
//! **Idempotence.** By nature, so [`advance`] takes no idempotency key: advancing to a state
//! already reached (or passed) returns `false` and changes nothing, so an advance retried after
//! `CommitUnknownResult` answers `false` and whatever the caller does only on `true` (queueing
//! the receipt for the sender's devices, in the same transaction) happens once.
//!
//! **Limits.** One byte per message and device; a message's receipts are read whole, bounded
//! by the envelope's recipient devices (`ENVELOPE_RECIPIENT_DEVICES_MAX`).
//!
//! **Evolution.** The retention sweep will clear a chat's receipts with the chat log entries
//! they belong to; the key names the message by the sender's client message id, which is
//! unique per sender device, so a sender may later be added to the key if ids stop being
//! random. A time of the transition would be a second byte range of the value.

use relay_proto::wire::ReceiptState;
use relay_proto::{ChatId, ClientMessageId, DeviceAddress};

use crate::codec::decode_key;
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::limits::RANGE_READ_RECIPIENTS_MIN;
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

/// [`advance`] for several recipients of one message, in order (a recipient named twice moves
/// at most as far as its furthest state): the message's receipts are read in one range read
/// when at least [`RANGE_READ_RECIPIENTS_MIN`] are asked for, else one by one. Returns, for
/// each, whether it moved.
pub async fn advance_many(
    transaction: &Transaction,
    chat: ChatId,
    client_message_id: ClientMessageId,
    moves: &[(DeviceAddress, ReceiptState)],
) -> Result<Vec<bool>, StoreError> {
    if moves.len() < RANGE_READ_RECIPIENTS_MIN {
        let mut moved = Vec::with_capacity(moves.len());
        for &(recipient, state) in moves {
            moved.push(advance(transaction, chat, client_message_id, recipient, state).await?);
        }
        return Ok(moved);
    }
    let message = message_subspace(chat, client_message_id);
    let mut stored: std::collections::HashMap<DeviceAddress, ReceiptState> =
        states(transaction, chat, client_message_id)
            .await?
            .into_iter()
            .collect();
    let mut moved = Vec::with_capacity(moves.len());
    for &(recipient, state) in moves {
        let known = stored
            .get(&recipient)
            .copied()
            .unwrap_or(ReceiptState::Unspecified);
        if state <= known {
            moved.push(false);
            continue;
        }
        transaction.set(&message.pack(&recipient), &[state_byte(state)])?;
        stored.insert(recipient, state);
        moved.push(true);
    }
    Ok(moved)
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

/// Receipts against a model (a map from message and device to state), driven by random
/// operation sequences: states only move forward, whatever order the advances come in.
#[cfg(test)]
mod properties {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use relay_proto::{AccountId, DeviceId};

    use super::*;
    use crate::test_support::{block_on, temporary_database};

    const CHAT: ChatId = ChatId([6; 16]);

    #[derive(Debug, Clone)]
    enum Operation {
        Advance {
            message: u8,
            recipient: u8,
            state: ReceiptState,
        },
        State {
            message: u8,
            recipient: u8,
        },
        States {
            message: u8,
        },
        /// Long enough at times for the range read (recipients repeat).
        AdvanceMany {
            message: u8,
            moves: Vec<(u8, ReceiptState)>,
        },
    }

    fn receipt_state() -> impl Strategy<Value = ReceiptState> {
        prop_oneof![
            Just(ReceiptState::Unspecified),
            Just(ReceiptState::Delivered),
            Just(ReceiptState::Expired),
        ]
    }

    fn operation() -> impl Strategy<Value = Operation> {
        prop_oneof![
            4 => (0..3u8, 0..4u8, receipt_state()).prop_map(|(message, recipient, state)| {
                Operation::Advance {
                    message,
                    recipient,
                    state,
                }
            }),
            1 => (0..3u8, 0..4u8)
                .prop_map(|(message, recipient)| Operation::State { message, recipient }),
            1 => (0..3u8).prop_map(|message| Operation::States { message }),
            2 => (
                0..3u8,
                prop::collection::vec((0..24u8, receipt_state()), 0..2 * RANGE_READ_RECIPIENTS_MIN)
            )
                .prop_map(|(message, moves)| Operation::AdvanceMany { message, moves }),
        ]
    }

    fn message_id(message: u8) -> ClientMessageId {
        ClientMessageId([message; 16])
    }

    fn recipient_address(recipient: u8) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(u64::from(recipient / 2) + 1),
            device: DeviceId(u32::from(recipient % 2) + 1),
        }
    }

    async fn check(operations: Vec<Operation>) -> Result<(), TestCaseError> {
        let (_folder, database) = temporary_database(None);
        let mut model: BTreeMap<(u8, DeviceAddress), ReceiptState> = BTreeMap::new();
        let fail = |error: StoreError| TestCaseError::fail(error.to_string());
        for operation in operations {
            match operation {
                Operation::Advance {
                    message,
                    recipient,
                    state,
                } => {
                    let address = recipient_address(recipient);
                    let moved = database
                        .transact(|tx| async move {
                            advance(&tx, CHAT, message_id(message), address, state).await
                        })
                        .await
                        .map_err(fail)?;
                    let stored = model
                        .get(&(message, address))
                        .copied()
                        .unwrap_or(ReceiptState::Unspecified);
                    let expected = state > stored;
                    if expected {
                        model.insert((message, address), state);
                    }
                    prop_assert_eq!(moved, expected, "{:?} over {:?}", state, stored);
                }
                Operation::State { message, recipient } => {
                    let address = recipient_address(recipient);
                    let read = database
                        .transact(|tx| async move {
                            super::state(&tx, CHAT, message_id(message), address).await
                        })
                        .await
                        .map_err(fail)?;
                    prop_assert_eq!(read, model.get(&(message, address)).copied());
                }
                Operation::AdvanceMany { message, moves } => {
                    let moves: Vec<(DeviceAddress, ReceiptState)> = moves
                        .into_iter()
                        .map(|(recipient, state)| (recipient_address(recipient), state))
                        .collect();
                    let asked = moves.clone();
                    let moved = database
                        .transact(|tx| {
                            let asked = asked.clone();
                            async move {
                                advance_many(&tx, CHAT, message_id(message), &asked).await
                            }
                        })
                        .await
                        .map_err(fail)?;
                    let mut expected = Vec::with_capacity(moves.len());
                    for (address, state) in moves {
                        let stored = model
                            .get(&(message, address))
                            .copied()
                            .unwrap_or(ReceiptState::Unspecified);
                        expected.push(state > stored);
                        if state > stored {
                            model.insert((message, address), state);
                        }
                    }
                    prop_assert_eq!(moved, expected);
                }
                Operation::States { message } => {
                    let read = database
                        .transact(|tx| async move { states(&tx, CHAT, message_id(message)).await })
                        .await
                        .map_err(fail)?;
                    let expected: Vec<(DeviceAddress, ReceiptState)> = model
                        .iter()
                        .filter(|((stored_message, _), _)| *stored_message == message)
                        .map(|((_, address), state)| (*address, *state))
                        .collect();
                    prop_assert_eq!(read, expected);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn receipts_match_their_model(operations in prop::collection::vec(operation(), 1..40)) {
            block_on(check(operations))?;
        }
    }
}
