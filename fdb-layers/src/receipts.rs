//! The receipts layer: the server-visible receipt state of each message for each recipient
//! device, which only moves forward (invariant I6).
//!
//! **Challenge.** Record that a message was delivered to (or expired for) one device, so the
//! sender's devices can be told once, without ever moving a state backwards even when acks,
//! expiry sweeps and retries race; and do it for a group message's thousand recipients without
//! a key written per delivery. `read` is not here: it travels end to end encrypted, so no
//! server learns when anyone read anything.
//!
//! **Key layout.** A message's states are kept in two forms, and a state is the furthest of
//! the two:
//! - `("receipts", chat, client_message_id, account, device)` → one byte (the `ReceiptState`
//!   number, ordered unspecified < delivered < expired), written by [`advance`]: one device's
//!   receipt at a time, as an ack of a 1:1 message moves it.
//! - `("receipt_batches", chat, client_message_id, n)` → the receipts one [`advance_many`] moved
//!   (a batch: [`BATCH_RECORD_BYTES`]-byte records of account, device and state, at most
//!   [`RECEIPT_BATCH_RECORDS_MAX`] per key), numbered from 0. A group message's receipts
//!   arrive in batches (the pump applies a batch of members' acks in one transaction), so a
//!   batch costs one key instead of one per member device. Past
//!   [`RECEIPT_BATCHES_PER_MESSAGE_MAX`] batches, the next [`advance_many`] folds them into
//!   one, so reading a message's states stays a few keys.
//!
//! A message's receipts of each form are contiguous, so reading them all is two range reads.
//!
//! **What is recorded.** A receipt the caller makes once by construction needs no record to be
//! told once: the region makes the receipt of a 1:1 message for a device when an ack or the
//! retention sweep removes the device's queue entry, which happens once (the removal reads the
//! entry with a conflict), so it only asks [`passes`] (a state another route recorded still
//! holds a lower one back) and writes nothing. That key was the one write of a delivered
//! message's with a random position in the store (the client message id): one page of the
//! embedded engine per message. Receipts another region forwards are made once there in the
//! same way and applied once here by their outbox number (`outbox::mark_applied`), so they are
//! not recorded either ([`passes_many`]). Recorded, by [`advance_many`]: a group's receipts for
//! senders homed here, which the region's pump takes from its own outbox with snapshot reads,
//! so the record is what makes a second pump's attempt at the same entries conflict.
//!
//! **Conflicts.** Both functions read the states they may replace (the device's key and the
//! message's batches; [`advance_many`] all of the message's), so two concurrent advances of
//! one message conflict when either may have changed what the other read and the retry
//! compares again. Two [`advance`]s of one message for different devices do not conflict
//! (the ack of each of a person's devices); [`advance_many`] conflicts with any advance of the
//! same message, which the region only runs from its serial receipt pump and forwarded
//! batches. A blind write (or an atomic max) would avoid conflicts but could not tell the
//! caller whether the state moved, which is what decides whether the sender's devices are
//! told.
//!
//! **Idempotence.** By nature, so neither takes an idempotency key: advancing to a state
//! already reached (or passed) returns `false` and changes nothing, so an advance retried after
//! `CommitUnknownResult` answers `false` and whatever the caller does only on `true` (queueing
//! the receipt for the sender's devices, in the same transaction) happens once.
//!
//! **Limits.** One byte per message and device, or [`BATCH_RECORD_BYTES`] in a batch; at most
//! [`RECEIPT_BATCHES_PER_MESSAGE_MAX`] batches (plus the keys of one folded batch, each at most
//! [`RECEIPT_BATCH_RECORDS_MAX`] records) are read per advance.
//!
//! **Evolution.** The retention sweep will clear a chat's receipts with the chat log entries
//! they belong to; the key names the message by the sender's client message id, which is
//! unique per sender device, so a sender may later be added to the key if ids stop being
//! random. A time of the transition would be a further field of a record. An earlier build
//! reads only the first form: rolled back, it would tell senders again of the receipts moved
//! in batches (a sender's devices keep each receipt's furthest state, so nothing moves back).

use std::collections::{BTreeMap, HashMap};

use relay_proto::wire::ReceiptState;
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId};

use crate::codec::decode_key;
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::limits::{RECEIPT_BATCH_RECORDS_MAX, RECEIPT_BATCHES_PER_MESSAGE_MAX};
use crate::tuple::Subspace;

/// Bytes of one record of a batch: the account (8, big-endian), the device (4, big-endian) and
/// the state (1).
pub const BATCH_RECORD_BYTES: usize = 13;
const _: () = assert!(BATCH_RECORD_BYTES == 8 + 4 + 1);

/// Moves the receipt of a message for `recipient` to `state` if that is further than the stored
/// one. Returns whether it moved.
pub async fn advance(
    transaction: &Transaction,
    chat: ChatId,
    client_message_id: ClientMessageId,
    recipient: DeviceAddress,
    state: ReceiptState,
) -> Result<bool, StoreError> {
    if !passes(transaction, chat, client_message_id, recipient, state).await? {
        return Ok(false);
    }
    let key = message_subspace(chat, client_message_id).pack(&recipient);
    transaction.set(&key, &[state_byte(state)])?;
    Ok(true)
}

/// Whether `state` is further than the receipt stored for `recipient`, without recording it:
/// for a receipt its caller makes once by construction (the region's receipt of a removed queue
/// entry, see the module doc). Reads what [`advance`] reads, so a state recorded by another
/// route still holds a lower one back.
pub async fn passes(
    transaction: &Transaction,
    chat: ChatId,
    client_message_id: ClientMessageId,
    recipient: DeviceAddress,
    state: ReceiptState,
) -> Result<bool, StoreError> {
    let stored = crate::receipts::state(transaction, chat, client_message_id, recipient)
        .await?
        .unwrap_or(ReceiptState::Unspecified);
    Ok(state > stored)
}

/// [`advance`] for several recipients of one message, in order (a recipient named twice moves
/// at most as far as its furthest state): the message's states are read in two range reads,
/// and the receipts that moved are written as one batch. Returns, for each, whether it moved.
pub async fn advance_many(
    transaction: &Transaction,
    chat: ChatId,
    client_message_id: ClientMessageId,
    moves: &[(DeviceAddress, ReceiptState)],
) -> Result<Vec<bool>, StoreError> {
    forward_many(transaction, chat, client_message_id, moves, true).await
}

/// [`passes`] for several recipients of one message, as [`advance_many`] decides them, without
/// recording them: for receipts their caller makes once by construction.
pub async fn passes_many(
    transaction: &Transaction,
    chat: ChatId,
    client_message_id: ClientMessageId,
    moves: &[(DeviceAddress, ReceiptState)],
) -> Result<Vec<bool>, StoreError> {
    forward_many(transaction, chat, client_message_id, moves, false).await
}

/// [`advance_many`], writing the batch only with `record`.
async fn forward_many(
    transaction: &Transaction,
    chat: ChatId,
    client_message_id: ClientMessageId,
    moves: &[(DeviceAddress, ReceiptState)],
    record: bool,
) -> Result<Vec<bool>, StoreError> {
    // Only the states of the recipients asked for are looked up, in both forms.
    let mut known: HashMap<DeviceAddress, ReceiptState> = moves
        .iter()
        .map(|&(recipient, _)| (recipient, ReceiptState::Unspecified))
        .collect();
    for (recipient, state) in single_states(transaction, chat, client_message_id).await? {
        if let Some(known) = known.get_mut(&recipient) {
            *known = (*known).max(state);
        }
    }
    let batches = Batches::read(transaction, chat, client_message_id).await?;
    batches.visit(|recipient, state| {
        if let Some(known) = known.get_mut(&recipient) {
            *known = (*known).max(state);
        }
    })?;
    let mut moved = Vec::with_capacity(moves.len());
    let mut batch: BTreeMap<DeviceAddress, ReceiptState> = BTreeMap::new();
    for &(recipient, state) in moves {
        let Some(known) = known.get_mut(&recipient) else {
            return Err(StoreError::corrupt(
                "receipt",
                "a recipient was not looked up",
            ));
        };
        if state <= *known {
            moved.push(false);
            continue;
        }
        *known = state;
        batch.insert(recipient, state);
        moved.push(true);
    }
    if record && !batch.is_empty() {
        batches.write(transaction, batch)?;
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
    let mut stored = match transaction.get(&key).await? {
        Some(value) => Some(decode_state(&value)?),
        None => None,
    };
    Batches::read(transaction, chat, client_message_id)
        .await?
        .visit(|batched, state| {
            if batched == recipient {
                stored = stored.max(Some(state));
            }
        })?;
    Ok(stored)
}

/// Every receipt of a message, in device order.
pub async fn states(
    transaction: &Transaction,
    chat: ChatId,
    client_message_id: ClientMessageId,
) -> Result<Vec<(DeviceAddress, ReceiptState)>, StoreError> {
    let mut all: BTreeMap<_, _> = single_states(transaction, chat, client_message_id)
        .await?
        .into_iter()
        .collect();
    for (recipient, state) in Batches::read(transaction, chat, client_message_id)
        .await?
        .all()?
    {
        let known = all.entry(recipient).or_insert(state);
        *known = (*known).max(state);
    }
    Ok(all.into_iter().collect())
}

/// The states [`advance`] wrote for a message, in device order.
async fn single_states(
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

/// A message's batches as read, still encoded, and the number the next one takes.
struct Batches {
    subspace: Subspace,
    rows: Vec<(Vec<u8>, Vec<u8>)>,
    next: u64,
}

impl Batches {
    async fn read(
        transaction: &Transaction,
        chat: ChatId,
        client_message_id: ClientMessageId,
    ) -> Result<Self, StoreError> {
        let subspace = Subspace::new(&("receipt_batches", chat, client_message_id));
        let (begin, end) = subspace.range();
        let rows = transaction
            .get_range(&begin, &end, RangeOptions::default())
            .await?;
        let mut next = 0;
        for (key, _) in &rows {
            let number: u64 = decode_key(&subspace, key, "receipt batch key")?;
            next = number.saturating_add(1).max(next);
        }
        Ok(Batches {
            subspace,
            rows,
            next,
        })
    }

    /// Calls `visit` with every record of every batch, in the order they were written (a
    /// device may come more than once).
    fn visit(&self, mut visit: impl FnMut(DeviceAddress, ReceiptState)) -> Result<(), StoreError> {
        for (_, value) in &self.rows {
            for record in records(value)? {
                let (recipient, state) = decode_record(record)?;
                visit(recipient, state);
            }
        }
        Ok(())
    }

    /// The furthest state of each device the batches hold.
    fn all(&self) -> Result<BTreeMap<DeviceAddress, ReceiptState>, StoreError> {
        let mut all = BTreeMap::new();
        self.visit(|recipient, state| {
            let known = all.entry(recipient).or_insert(state);
            *known = (*known).max(state);
        })?;
        Ok(all)
    }

    /// Writes `batch` (states that moved) after the batches read; past
    /// [`RECEIPT_BATCHES_PER_MESSAGE_MAX`] of them, replaces them all with one batch holding
    /// every state they and `batch` hold.
    fn write(
        &self,
        transaction: &Transaction,
        batch: BTreeMap<DeviceAddress, ReceiptState>,
    ) -> Result<(), StoreError> {
        let (records, mut number) = if self.rows.len() < RECEIPT_BATCHES_PER_MESSAGE_MAX {
            (batch, self.next)
        } else {
            let mut folded = self.all()?;
            for (key, _) in &self.rows {
                transaction.clear(key);
            }
            for (recipient, state) in batch {
                let known = folded.entry(recipient).or_insert(state);
                *known = (*known).max(state);
            }
            (folded, 0)
        };
        let records: Vec<_> = records.into_iter().collect();
        for chunk in records.chunks(RECEIPT_BATCH_RECORDS_MAX) {
            transaction.set(&self.subspace.pack(&number), &encode_batch(chunk))?;
            number += 1;
        }
        Ok(())
    }
}

fn encode_batch(records: &[(DeviceAddress, ReceiptState)]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(records.len() * BATCH_RECORD_BYTES);
    for (recipient, state) in records {
        bytes.extend_from_slice(&recipient.account.0.to_be_bytes());
        bytes.extend_from_slice(&recipient.device.0.to_be_bytes());
        bytes.push(state_byte(*state));
    }
    bytes
}

/// The records of a batch's value.
fn records(bytes: &[u8]) -> Result<std::slice::ChunksExact<'_, u8>, StoreError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(BATCH_RECORD_BYTES) {
        return Err(StoreError::corrupt(
            "receipt batch",
            format!(
                "{} bytes, not a positive multiple of {BATCH_RECORD_BYTES}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes.chunks_exact(BATCH_RECORD_BYTES))
}

/// One record of a batch ([`records`] makes each [`BATCH_RECORD_BYTES`] long).
fn decode_record(record: &[u8]) -> Result<(DeviceAddress, ReceiptState), StoreError> {
    let mut account = [0; 8];
    account.copy_from_slice(&record[..8]);
    let mut device = [0; 4];
    device.copy_from_slice(&record[8..12]);
    let recipient = DeviceAddress {
        account: AccountId(u64::from_be_bytes(account)),
        device: DeviceId(u32::from_be_bytes(device)),
    };
    Ok((recipient, decode_state(&record[12..])?))
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

    /// `passes` and `passes_many` decide as `advance` and `advance_many` would, against the
    /// states recorded in both forms, and write nothing.
    #[tokio::test]
    async fn passing_checks_the_records_and_writes_nothing() {
        let (_folder, database) = temporary_database(None);
        database
            .transact(|tx| async move {
                advance(&tx, CHAT, MESSAGE, PHONE, ReceiptState::Delivered).await?;
                advance_many(&tx, CHAT, MESSAGE, &[(LAPTOP, ReceiptState::Expired)]).await
            })
            .await
            .expect("recorded");
        let tablet = member(7);
        let (one, many, written) = database
            .transact(|tx| async move {
                let one = [
                    passes(&tx, CHAT, MESSAGE, PHONE, ReceiptState::Delivered).await?,
                    passes(&tx, CHAT, MESSAGE, PHONE, ReceiptState::Expired).await?,
                    passes(&tx, CHAT, MESSAGE, LAPTOP, ReceiptState::Delivered).await?,
                    passes(&tx, CHAT, MESSAGE, tablet, ReceiptState::Delivered).await?,
                ];
                let many = passes_many(
                    &tx,
                    CHAT,
                    MESSAGE,
                    &[
                        (PHONE, ReceiptState::Delivered),
                        (LAPTOP, ReceiptState::Expired),
                        (tablet, ReceiptState::Delivered),
                        (tablet, ReceiptState::Delivered),
                    ],
                )
                .await?;
                Ok((one, many, tx.written_keys().map(|keys| keys.len())))
            })
            .await
            .expect("checked");
        assert_eq!(one, [false, true, false, true]);
        // Within one call a device named twice passes once, as `advance_many` moves it once.
        assert_eq!(many, [false, false, true, false]);
        assert_eq!(written, Some(0), "nothing written");
        let tablet_state = database
            .transact(|tx| async move { state(&tx, CHAT, MESSAGE, tablet).await })
            .await
            .expect("read");
        assert_eq!(tablet_state, None);
    }

    fn member(index: u32) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(1_000 + u64::from(index)),
            device: DeviceId(1 + index % 3),
        }
    }

    async fn batch_keys(database: &crate::engine::Database) -> usize {
        database
            .transact(|tx| async move { Ok(Batches::read(&tx, CHAT, MESSAGE).await?.rows.len()) })
            .await
            .expect("batches")
    }

    /// A batch per advance up to the limit, then one folded batch; a batch larger than a key
    /// holds takes several; every state survives both, with the single-device form beside them.
    #[tokio::test]
    async fn batches_fold_and_split_and_keep_every_state() {
        let (_folder, database) = temporary_database(None);
        database
            .transact(|tx| async move {
                advance(&tx, CHAT, MESSAGE, member(0), ReceiptState::Expired).await
            })
            .await
            .expect("single");
        for round in 0..RECEIPT_BATCHES_PER_MESSAGE_MAX as u32 {
            let moves = [
                (member(2 * round), ReceiptState::Delivered),
                (member(2 * round + 1), ReceiptState::Delivered),
            ];
            let moved = database
                .transact(|tx| async move { advance_many(&tx, CHAT, MESSAGE, &moves).await })
                .await
                .expect("advance");
            // Member 0 expired already, through `advance`.
            let first = round != 0;
            assert_eq!(moved, [first, true], "round {round}");
        }
        assert_eq!(batch_keys(&database).await, RECEIPT_BATCHES_PER_MESSAGE_MAX);
        let count = RECEIPT_BATCH_RECORDS_MAX as u32 + 10;
        let moves: Vec<_> = (0..count)
            .map(|index| (member(index), ReceiptState::Expired))
            .collect();
        let asked = moves.clone();
        let moved = database
            .transact(|tx| {
                let asked = asked.clone();
                async move { advance_many(&tx, CHAT, MESSAGE, &asked).await }
            })
            .await
            .expect("fold");
        assert!(!moved[0] && moved[1..].iter().all(|moved| *moved));
        // Folded into one batch, which takes two keys.
        assert_eq!(batch_keys(&database).await, 2);
        let all = database
            .transact(|tx| async move { states(&tx, CHAT, MESSAGE).await })
            .await
            .expect("states");
        assert_eq!(all.len(), count as usize);
        assert!(all.iter().all(|(_, state)| *state == ReceiptState::Expired));
        assert!(all.windows(2).all(|pair| pair[0].0 < pair[1].0));
        let again = database
            .transact(|tx| async move {
                advance(&tx, CHAT, MESSAGE, member(7), ReceiptState::Delivered).await
            })
            .await
            .expect("advance after fold");
        assert!(
            !again,
            "a batched state is read by the single-device advance"
        );
    }

    #[tokio::test]
    async fn a_damaged_batch_is_corrupt_not_a_panic() {
        let (_folder, database) = temporary_database(None);
        for value in [&[][..], &[1, 2, 3][..], &[0; BATCH_RECORD_BYTES + 1][..]] {
            let result = database
                .transact(|tx| async move {
                    let subspace = Subspace::new(&("receipt_batches", CHAT, MESSAGE));
                    tx.set(&subspace.pack(&0u64), value)?;
                    states(&tx, CHAT, MESSAGE).await
                })
                .await;
            assert!(
                matches!(result, Err(StoreError::Corrupt { .. })),
                "{value:?}: {result:?}"
            );
        }
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
        /// Many of them on one message fold its batches (recipients repeat).
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
            4 => (
                0..2u8,
                prop::collection::vec((0..24u8, receipt_state()), 0..32)
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
        fn receipts_match_their_model(operations in prop::collection::vec(operation(), 1..80)) {
            block_on(check(operations))?;
        }
    }
}
