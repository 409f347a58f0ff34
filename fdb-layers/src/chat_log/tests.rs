//! The chat log's tests: appends, reads, imports and adoption against a real store.

use super::*;
use crate::test_support::temporary_database;

const CHAT: ChatId = ChatId([9; 16]);
const ALICE: DeviceAddress = DeviceAddress {
    account: AccountId(1),
    device: DeviceId(1),
};
const BOB: DeviceAddress = DeviceAddress {
    account: AccountId(2),
    device: DeviceId(1),
};

fn new_entry(sender: DeviceAddress, id: u8, sender_seq: u64, envelope: &[u8]) -> NewEntry<'_> {
    NewEntry {
        chat: CHAT,
        sender,
        client_message_id: ClientMessageId([id; 16]),
        sender_seq,
        sender_region: RegionId(1),
        envelope_bytes: envelope,
    }
}

#[tokio::test]
async fn an_extended_envelope_grows_across_chunks_and_keeps_the_entry() {
    use crate::limits::CHUNK_BYTES;
    let (_folder, database) = temporary_database(None);
    let envelope = vec![1u8; CHUNK_BYTES - 10];
    append_one(&database, new_entry(ALICE, 1, 1, &envelope), 1_000).await;
    let before = database
        .transact(|tx| async move { entry(&tx, CHAT, 1).await })
        .await
        .expect("read")
        .expect("stored");
    let more = vec![2u8; 100];
    let (extended, missing, after) = database
        .transact(|tx| {
            let more = more.clone();
            async move {
                let extended = extend_envelope(&tx, CHAT, 1, &more).await?;
                let missing = extend_envelope(&tx, CHAT, 2, &more).await?;
                Ok((extended, missing, entry(&tx, CHAT, 1).await?))
            }
        })
        .await
        .expect("extend");
    assert!(extended);
    assert!(!missing, "no entry 2 to extend");
    let after = after.expect("still stored");
    let mut whole = envelope.clone();
    whole.extend_from_slice(&more);
    assert_eq!(after.envelope_bytes.as_ref(), whole.as_slice());
    assert_eq!(
        LogEntry {
            envelope_bytes: before.envelope_bytes.clone(),
            ..after.clone()
        },
        before,
        "everything else as it was"
    );
    // Shrinking back is not this function's business, but a rewrite leaves no stale chunk:
    // the record reads whole once more.
    let shorter = database
        .transact(|tx| async move {
            let log = ChatLog::new(CHAT);
            let bytes = read_chunked(&tx, &log.entries, 1, "chat log entry")
                .await?
                .expect("stored");
            let mut stored = StoredEntry::decode(bytes.as_slice()).expect("decodes");
            stored.envelope = Bytes::from_static(b"short");
            replace_chunked(&tx, &log.entries, 1, &stored.encode_to_vec())?;
            entry(&tx, CHAT, 1).await
        })
        .await
        .expect("rewrite")
        .expect("stored");
    assert_eq!(shorter.envelope_bytes.as_ref(), b"short");
}

async fn append_one(database: &crate::Database, entry: NewEntry<'_>, now_ms: u64) -> AppendOutcome {
    database
        .transact(|tx| async move { append(&tx, &entry, now_ms).await })
        .await
        .expect("append transaction")
}

#[tokio::test]
async fn a_log_that_joined_late_takes_a_sender_from_where_it_is_still_in_order() {
    let (_folder, database) = temporary_database(None);
    let after = async |entry: NewEntry<'_>, prev: Option<u64>| {
        database
            .transact(|tx| async move { append_after(&tx, &entry, prev, 100).await })
            .await
            .expect("append transaction")
    };
    // Numbers 1..=6 went to other regions and are settled; 7 and 8 are on their way, 8
    // first: the log asks for 7.
    assert_eq!(
        after(new_entry(ALICE, 1, 8, b"a8"), Some(7)).await,
        AppendOutcome::Gap {
            expected_sender_seq: 7
        },
    );
    assert!(matches!(
        after(new_entry(ALICE, 2, 7, b"a7"), Some(0)).await,
        AppendOutcome::Appended { chat_seq: 1, .. }
    ));
    assert!(matches!(
        after(new_entry(ALICE, 1, 8, b"a8"), Some(7)).await,
        AppendOutcome::Appended { chat_seq: 2, .. }
    ));
    // Below what it holds, a new envelope is still a rolled-back device.
    assert_eq!(
        after(new_entry(ALICE, 3, 7, b"x"), Some(0)).await,
        AppendOutcome::RolledBack { last_sender_seq: 8 }
    );
    // 9..=11 went elsewhere (or were given up) while 12 names 8, which the log holds.
    assert!(matches!(
        after(new_entry(ALICE, 4, 12, b"a12"), Some(8)).await,
        AppendOutcome::Appended { chat_seq: 3, .. }
    ));
    // Without a previous number (1:1 chats) the next one is the one after the last.
    assert_eq!(
        after(new_entry(ALICE, 5, 14, b"a14"), None).await,
        AppendOutcome::Gap {
            expected_sender_seq: 13
        }
    );
}

#[tokio::test]
async fn appends_are_deduplicated_then_fifo_checked_then_sequenced() {
    let (_folder, database) = temporary_database(None);
    let first = append_one(&database, new_entry(ALICE, 1, 1, b"a1"), 100).await;
    assert_eq!(
        first,
        AppendOutcome::Appended {
            chat_seq: 1,
            server_time_ms: 100
        }
    );
    // A retry, even at a later time, gets the original result.
    let retry = append_one(&database, new_entry(ALICE, 1, 1, b"a1"), 999).await;
    assert_eq!(
        retry,
        AppendOutcome::Duplicate {
            chat_seq: 1,
            server_time_ms: 100
        }
    );
    // A gap is refused with the number to resend from; a taken sender_seq under a new id
    // is a device whose state went back.
    let gap = append_one(&database, new_entry(ALICE, 2, 3, b"a3"), 101).await;
    assert_eq!(
        gap,
        AppendOutcome::Gap {
            expected_sender_seq: 2
        }
    );
    let replay = append_one(&database, new_entry(ALICE, 3, 1, b"a1'"), 101).await;
    assert_eq!(replay, AppendOutcome::RolledBack { last_sender_seq: 1 });
    let zero = append_one(&database, new_entry(BOB, 4, 0, b"b0"), 101).await;
    assert_eq!(
        zero,
        AppendOutcome::Gap {
            expected_sender_seq: 1
        }
    );
    // Senders have their own sender_seq; the chat sequence is shared and gapless.
    let bob = append_one(&database, new_entry(BOB, 5, 1, b"b1"), 102).await;
    assert_eq!(
        bob,
        AppendOutcome::Appended {
            chat_seq: 2,
            server_time_ms: 102
        }
    );
    let alice = append_one(&database, new_entry(ALICE, 2, 2, b"a2"), 103).await;
    assert_eq!(
        alice,
        AppendOutcome::Appended {
            chat_seq: 3,
            server_time_ms: 103
        }
    );

    let (entries, stored, missing, last) = database
        .transact(|tx| async move {
            Ok((
                read_range(&tx, CHAT, 0, 10).await?,
                entry(&tx, CHAT, 2).await?,
                entry(&tx, CHAT, 4).await?,
                last_seq(&tx, CHAT).await?,
            ))
        })
        .await
        .expect("reads");
    let sequences: Vec<_> = entries.iter().map(|entry| entry.chat_seq).collect();
    assert_eq!(sequences, [1, 2, 3]);
    assert_eq!(&entries[2].envelope_bytes[..], b"a2");
    let stored = stored.expect("entry 2");
    assert_eq!(
        (stored.sender, stored.sender_seq, stored.server_time_ms),
        (BOB, 1, 102)
    );
    assert_eq!(stored.client_message_id, ClientMessageId([5; 16]));
    assert_eq!((missing, last), (None, 3));
}

/// What tells a device whose counter went back from an honest one: a retry (a known id) is
/// a duplicate whatever its number; a number past the next one is a gap, and the entry
/// renumbered down to what the gap asked for is appended; only a new id under a number
/// already taken is a rollback, and it stores nothing.
#[tokio::test]
async fn a_taken_sender_seq_under_a_new_id_is_a_rollback_not_a_gap() {
    let (_folder, database) = temporary_database(None);
    for seq in 1..=3u8 {
        let appended = append_one(&database, new_entry(ALICE, seq, seq.into(), b"a"), 10).await;
        assert!(matches!(appended, AppendOutcome::Appended { .. }));
    }
    // A retry of entry 2, even renumbered on the way, is a duplicate.
    for retried_seq in [2, 1, 9] {
        assert_eq!(
            append_one(&database, new_entry(ALICE, 2, retried_seq, b"a"), 11).await,
            AppendOutcome::Duplicate {
                chat_seq: 2,
                server_time_ms: 10
            }
        );
    }
    // New envelopes under the taken numbers 1..=3: the sender's counter went back.
    for taken in 1..=3 {
        assert_eq!(
            append_one(
                &database,
                new_entry(ALICE, 40 + taken as u8, taken, b"r"),
                12
            )
            .await,
            AppendOutcome::RolledBack { last_sender_seq: 3 }
        );
    }
    // An entry refused before it reached the log left a hole at 4: its successor is a gap,
    // and renumbered down to 4 (the number asked for) it is appended.
    assert_eq!(
        append_one(&database, new_entry(ALICE, 6, 5, b"a"), 13).await,
        AppendOutcome::Gap {
            expected_sender_seq: 4
        }
    );
    assert_eq!(
        append_one(&database, new_entry(ALICE, 6, 4, b"a"), 14).await,
        AppendOutcome::Appended {
            chat_seq: 4,
            server_time_ms: 14
        }
    );
    // Another sender's numbers are its own.
    assert!(matches!(
        append_one(&database, new_entry(BOB, 7, 1, b"b"), 15).await,
        AppendOutcome::Appended { chat_seq: 5, .. }
    ));
    let last = database
        .transact(|tx| async move { last_seq(&tx, CHAT).await })
        .await
        .expect("read");
    assert_eq!(last, 5, "the refused envelopes stored nothing");
}

/// A new entry is written without a range clear: its sequence was allocated under a
/// conflicting read of `last_seq`, so two appends racing for one sequence conflict and the
/// second takes the next one.
#[tokio::test]
async fn a_new_entry_clears_nothing_and_racing_appends_for_one_sequence_conflict() {
    let (_folder, database) = temporary_database(None);
    let alice = database.create_transaction().expect("transaction");
    let bob = database.create_transaction().expect("transaction");
    let outcomes = [
        append(&alice, &new_entry(ALICE, 1, 1, b"a1"), 100)
            .await
            .expect("append"),
        append(&bob, &new_entry(BOB, 2, 1, b"b1"), 100)
            .await
            .expect("append"),
    ];
    let first = AppendOutcome::Appended {
        chat_seq: 1,
        server_time_ms: 100,
    };
    assert_eq!(outcomes, [first, first], "both saw last_seq 0");
    assert_eq!(alice.buffered_range_clears(), Some(0));
    alice.commit().await.expect("the first commit");
    assert!(matches!(bob.commit().await, Err(StoreError::NotCommitted)));
    let retried = append_one(&database, new_entry(BOB, 2, 1, b"b1"), 101).await;
    assert_eq!(
        retried,
        AppendOutcome::Appended {
            chat_seq: 2,
            server_time_ms: 101
        }
    );
    let entries = database
        .transact(|tx| async move { read_range(&tx, CHAT, 0, 10).await })
        .await
        .expect("read");
    let stored: Vec<_> = entries
        .iter()
        .map(|entry| (entry.chat_seq, entry.sender, &entry.envelope_bytes[..]))
        .collect();
    assert_eq!(stored, [(1, ALICE, &b"a1"[..]), (2, BOB, &b"b1"[..])]);
}

/// A read between two sequences returns the entries between them, whole however many
/// values each takes, and no later one; a transaction that made it and writes commits past
/// an append after the range (a device's fetch and ack while the chat's lane appends).
#[tokio::test]
async fn a_read_between_two_sequences_reads_and_conflicts_on_nothing_after_them() {
    let (_folder, database) = temporary_database(None);
    let large: Vec<u8> = (0..relay_proto::limits::ENVELOPE_BYTES_MAX)
        .map(|i| i as u8)
        .collect();
    for sender_seq in 1..=4u64 {
        let envelope = if sender_seq == 3 {
            large.clone()
        } else {
            vec![sender_seq as u8; 10]
        };
        let outcome = append_one(
            &database,
            new_entry(ALICE, sender_seq as u8, sender_seq, &envelope),
            5,
        )
        .await;
        assert!(matches!(outcome, AppendOutcome::Appended { .. }));
    }
    let (middle, one, past_the_end, none) = database
        .transact(|tx| async move {
            Ok((
                read_between(&tx, CHAT, 2, 3).await?,
                read_between(&tx, CHAT, 4, 4).await?,
                read_between(&tx, CHAT, 4, 9).await?,
                read_between(&tx, CHAT, 3, 2).await?,
            ))
        })
        .await
        .expect("reads");
    let sequences =
        |entries: &[LogEntry]| -> Vec<u64> { entries.iter().map(|entry| entry.chat_seq).collect() };
    assert_eq!(sequences(&middle), [2, 3]);
    assert_eq!(
        middle[1].envelope_bytes, large,
        "a chunked entry read whole"
    );
    assert_eq!(sequences(&one), [4]);
    assert_eq!(sequences(&past_the_end), [4]);
    assert!(none.is_empty());

    let reader = database.create_transaction().expect("transaction");
    let read = read_between(&reader, CHAT, 1, 4).await.expect("read");
    assert_eq!(sequences(&read), [1, 2, 3, 4]);
    reader
        .set(b"\x02a_write_of_the_reader", b"1")
        .expect("write");
    let appended = append_one(&database, new_entry(BOB, 9, 1, b"b1"), 6).await;
    assert!(matches!(
        appended,
        AppendOutcome::Appended { chat_seq: 5, .. }
    ));
    reader
        .commit()
        .await
        .expect("an append after the range is no conflict");
}

#[tokio::test]
async fn append_keys_are_the_keys_an_append_writes() {
    let (_folder, database) = temporary_database(None);
    let envelope = vec![7u8; 1_000];
    let entry = new_entry(ALICE, 1, 1, &envelope);
    let AppendOutcome::Appended { chat_seq, .. } = append_one(&database, entry, 5).await else {
        panic!("a first append is appended");
    };
    let keys = append_keys(entry.chat, ALICE, entry.client_message_id, chat_seq);
    let present = database
        .transact(|tx| {
            let keys = keys.clone();
            async move {
                let mut present = Vec::new();
                for key in &keys {
                    present.push(tx.get(key).await?.is_some());
                }
                Ok(present)
            }
        })
        .await
        .expect("read");
    assert_eq!(present, [true; 4]);
}

#[tokio::test]
async fn large_envelopes_span_several_values_and_ranges_stay_whole() {
    let (_folder, database) = temporary_database(None);
    let large: Vec<u8> = (0..relay_proto::limits::ENVELOPE_BYTES_MAX)
        .map(|i| i as u8)
        .collect();
    for sender_seq in 1..=3 {
        let envelope = if sender_seq == 2 {
            b"small".to_vec()
        } else {
            large.clone()
        };
        let outcome = append_one(
            &database,
            new_entry(ALICE, sender_seq as u8, sender_seq, &envelope),
            5,
        )
        .await;
        assert!(matches!(outcome, AppendOutcome::Appended { .. }));
    }
    let (first_two, after_one, whole) = database
        .transact(|tx| async move {
            Ok((
                read_range(&tx, CHAT, 0, 2).await?,
                read_range(&tx, CHAT, 1, 10).await?,
                entry(&tx, CHAT, 3).await?,
            ))
        })
        .await
        .expect("reads");
    assert_eq!(first_two.len(), 2);
    assert_eq!(first_two[0].envelope_bytes, large);
    assert_eq!(&first_two[1].envelope_bytes[..], b"small");
    let after_one: Vec<_> = after_one.iter().map(|entry| entry.chat_seq).collect();
    assert_eq!(after_one, [2, 3]);
    assert_eq!(whole.map(|entry| entry.envelope_bytes), Some(large.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_get_a_gapless_sequence() {
    let (_folder, database) = temporary_database(None);
    let senders: Vec<_> = (1..=8u64)
        .map(|account| {
            let database = database.clone();
            tokio::spawn(async move {
                let sender = DeviceAddress {
                    account: AccountId(account),
                    device: DeviceId(1),
                };
                for sender_seq in 1..=3u64 {
                    let id = (account * 10 + sender_seq) as u8;
                    let outcome =
                        append_one(&database, new_entry(sender, id, sender_seq, b"x"), 1).await;
                    assert!(
                        matches!(outcome, AppendOutcome::Appended { .. }),
                        "{outcome:?}"
                    );
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.expect("sender task");
    }
    let entries = database
        .transact(|tx| async move { read_range(&tx, CHAT, 0, 100).await })
        .await
        .expect("read");
    let sequences: Vec<_> = entries.iter().map(|entry| entry.chat_seq).collect();
    assert_eq!(sequences, (1..=24).collect::<Vec<_>>());
    for account in 1..=8u64 {
        let sender_seqs: Vec<_> = entries
            .iter()
            .filter(|entry| entry.sender.account == AccountId(account))
            .map(|entry| entry.sender_seq)
            .collect();
        assert_eq!(sender_seqs, [1, 2, 3], "sender FIFO of account {account}");
    }
}
