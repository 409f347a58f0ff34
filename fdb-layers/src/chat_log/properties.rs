//! The chat log against a model (a vector of entries and two maps), driven by random
//! operation sequences, with and without injected faults.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::engine::FaultConfig;
use crate::test_support::{block_on, temporary_database, transact_through_outages};

const CHAT: ChatId = ChatId([4; 16]);

#[derive(Debug, Clone)]
enum Operation {
    /// `sender_seq` is the sender's last plus `step` minus one (0: a taken number, which is a
    /// rollback under a new id once the sender has one accepted; 2: a gap).
    Append {
        sender: u8,
        id: u8,
        step: u64,
        envelope_bytes: usize,
    },
    ReadRange {
        after: u64,
        limit: usize,
    },
    Entry {
        chat_seq: u64,
    },
    LastSeq,
}

fn operation() -> impl Strategy<Value = Operation> {
    let envelope_bytes = prop_oneof![20 => 0..48usize, 1 => Just(150_000usize)];
    let step = prop_oneof![4 => Just(1u64), 1 => Just(0u64), 1 => Just(2u64)];
    prop_oneof![
        6 => (0..3u8, 0..6u8, step, envelope_bytes).prop_map(
            |(sender, id, step, envelope_bytes)| Operation::Append {
                sender,
                id,
                step,
                envelope_bytes,
            }
        ),
        2 => (0..24u64, 0..6usize)
            .prop_map(|(after, limit)| Operation::ReadRange { after, limit }),
        1 => (0..24u64).prop_map(|chat_seq| Operation::Entry { chat_seq }),
        1 => Just(Operation::LastSeq),
    ]
}

#[derive(Default)]
struct Model {
    entries: Vec<LogEntry>,
    dedupe: BTreeMap<(u8, u8), (u64, u64)>,
    sender_seqs: BTreeMap<u8, u64>,
}

fn sender_address(sender: u8) -> DeviceAddress {
    DeviceAddress {
        account: AccountId(u64::from(sender) + 1),
        device: DeviceId(1),
    }
}

fn envelope(sender: u8, id: u8, bytes: usize) -> Vec<u8> {
    (0..bytes)
        .map(|index| (index as u8) ^ sender.wrapping_mul(31) ^ id)
        .collect()
}

async fn check(operations: Vec<Operation>, faults: Option<u64>) -> Result<(), TestCaseError> {
    let (_folder, database) = temporary_database(faults.map(FaultConfig::frequent));
    let mut model = Model::default();
    for (step_index, operation) in operations.into_iter().enumerate() {
        let now_ms = 1_000 + step_index as u64;
        match operation {
            Operation::Append {
                sender,
                id,
                step,
                envelope_bytes,
            } => {
                let last = model.sender_seqs.get(&sender).copied().unwrap_or(0);
                let sender_seq = (last + step).saturating_sub(1);
                let bytes = envelope(sender, id, envelope_bytes);
                let entry = NewEntry {
                    chat: CHAT,
                    sender: sender_address(sender),
                    client_message_id: ClientMessageId([id; 16]),
                    sender_seq,
                    sender_region: RegionId(u32::from(sender)),
                    envelope_bytes: &bytes,
                };
                let outcome = transact_through_outages(&database, |tx| async move {
                    append(&tx, &entry, now_ms).await
                })
                .await
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
                let expected =
                    if let Some(&(chat_seq, server_time_ms)) = model.dedupe.get(&(sender, id)) {
                        AppendOutcome::Duplicate {
                            chat_seq,
                            server_time_ms,
                        }
                    } else if last > 0 && sender_seq <= last {
                        AppendOutcome::RolledBack {
                            last_sender_seq: last,
                        }
                    } else if sender_seq != last + 1 {
                        AppendOutcome::Gap {
                            expected_sender_seq: last + 1,
                        }
                    } else {
                        let chat_seq = model.entries.len() as u64 + 1;
                        model.entries.push(LogEntry {
                            chat_seq,
                            sender: entry.sender,
                            client_message_id: entry.client_message_id,
                            sender_seq,
                            sender_region: entry.sender_region,
                            server_time_ms: now_ms,
                            envelope_bytes: bytes.clone().into(),
                        });
                        model.dedupe.insert((sender, id), (chat_seq, now_ms));
                        model.sender_seqs.insert(sender, sender_seq);
                        AppendOutcome::Appended {
                            chat_seq,
                            server_time_ms: now_ms,
                        }
                    };
                // After an unknown commit result the retry finds its own entry: the same
                // numbers, reported as a duplicate.
                let retried = match expected {
                    AppendOutcome::Appended {
                        chat_seq,
                        server_time_ms,
                    } if faults.is_some() => Some(AppendOutcome::Duplicate {
                        chat_seq,
                        server_time_ms,
                    }),
                    _ => None,
                };
                prop_assert!(
                    outcome == expected || Some(outcome) == retried,
                    "append {sender}/{id} seq {sender_seq}: {outcome:?}, expected {expected:?}"
                );
            }
            Operation::ReadRange { after, limit } => {
                let read = transact_through_outages(&database, |tx| async move {
                    read_range(&tx, CHAT, after, limit).await
                })
                .await
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
                let expected: Vec<LogEntry> = model
                    .entries
                    .iter()
                    .filter(|entry| entry.chat_seq > after)
                    .take(limit)
                    .cloned()
                    .collect();
                prop_assert_eq!(read, expected, "read_range after {} limit {}", after, limit);
            }
            Operation::Entry { chat_seq } => {
                let read = transact_through_outages(&database, |tx| async move {
                    entry(&tx, CHAT, chat_seq).await
                })
                .await
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
                let expected = model
                    .entries
                    .iter()
                    .find(|entry| entry.chat_seq == chat_seq)
                    .cloned();
                prop_assert_eq!(read, expected, "entry {}", chat_seq);
            }
            Operation::LastSeq => {
                let read =
                    transact_through_outages(
                        &database,
                        |tx| async move { last_seq(&tx, CHAT).await },
                    )
                    .await
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                prop_assert_eq!(read, model.entries.len() as u64);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_chat_log_matches_its_model(
        operations in prop::collection::vec(operation(), 1..40),
        faults in prop::option::of(any::<u64>()),
    ) {
        block_on(check(operations, faults))?;
    }
}
