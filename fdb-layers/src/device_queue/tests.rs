use relay_proto::{AccountId, DeviceId};

use super::*;
use crate::test_support::{idempotency_key, temporary_database};

const DEVICE: DeviceAddress = DeviceAddress {
    account: AccountId(3),
    device: DeviceId(2),
};
const OTHER: DeviceAddress = DeviceAddress {
    account: AccountId(4),
    device: DeviceId(1),
};
const DAY_MS: u64 = 24 * 60 * 60 * 1_000;

fn message(chat_seq: u64) -> QueueItem {
    QueueItem::MessageRef {
        chat: ChatId([1; 16]),
        chat_seq,
        origin: None,
        shown_seq: None,
    }
}

#[tokio::test]
async fn entries_are_gapless_readable_after_a_cursor_and_acked_once() {
    let (_folder, database) = temporary_database(None);
    let appended = database
        .transact(|tx| async move {
            Ok([
                append(&tx, DEVICE, &message(10), 1).await?,
                append(&tx, DEVICE, &QueueItem::Receipt(b"r".to_vec()), 2).await?,
                append(&tx, DEVICE, &message(11), 3).await?,
            ])
        })
        .await
        .expect("appends");
    assert_eq!(
        appended.map(|outcome| match outcome {
            QueueAppend::Appended { queue_seq } => queue_seq,
            QueueAppend::Full { .. } => 0,
        }),
        [1, 2, 3]
    );

    let (all, after_one) = database
        .transact(|tx| async move {
            Ok((
                read_after(&tx, DEVICE, 0, 10).await?,
                read_after(&tx, DEVICE, 1, 1).await?,
            ))
        })
        .await
        .expect("reads");
    assert_eq!(all.len(), 3);
    assert_eq!(all[1], (2, QueueItem::Receipt(b"r".to_vec())));
    assert_eq!(after_one, [(2, QueueItem::Receipt(b"r".to_vec()))]);

    let first_ack = database
        .transact(|tx| async move { ack(&tx, DEVICE, &[1, 3, 3, 99]).await })
        .await
        .expect("ack");
    assert_eq!(first_ack, [(1, message(10)), (3, message(11))]);
    let second_ack = database
        .transact(|tx| async move { ack(&tx, DEVICE, &[1, 3]).await })
        .await
        .expect("ack again");
    assert!(second_ack.is_empty());

    let (remaining, latest_seq, waiting, next) = database
        .transact(|tx| async move {
            let remaining = read_after(&tx, DEVICE, 0, 10).await?;
            let latest_seq = latest(&tx, DEVICE).await?;
            let waiting = depth(&tx, DEVICE).await?;
            let next = append(&tx, DEVICE, &message(12), 4).await?;
            Ok((remaining, latest_seq, waiting, next))
        })
        .await
        .expect("reads");
    assert_eq!(
        remaining.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        [2]
    );
    assert_eq!((latest_seq, waiting), (3, 1));
    assert_eq!(
        next,
        QueueAppend::Appended { queue_seq: 4 },
        "acks never lower the sequence"
    );
}

#[tokio::test]
async fn append_keys_are_the_keys_an_append_writes() {
    let (_folder, database) = temporary_database(None);
    let appended = database
        .transact(|tx| async move { append(&tx, DEVICE, &message(1), 77).await })
        .await
        .expect("append");
    let QueueAppend::Appended { queue_seq } = appended else {
        panic!("an empty queue takes an entry");
    };
    let present = database
        .transact(|tx| async move {
            let mut present = Vec::new();
            for key in append_keys(DEVICE, queue_seq, 77) {
                present.push(tx.get(&key).await?.is_some());
            }
            Ok(present)
        })
        .await
        .expect("read");
    assert_eq!(present, [true; 4]);
}

#[tokio::test]
async fn damaged_entries_are_found_one_by_one_and_removed() {
    let (_folder, database) = temporary_database(None);
    database
        .transact(|tx| async move {
            for chat_seq in 1..=3 {
                append(&tx, DEVICE, &message(chat_seq), chat_seq).await?;
            }
            append(&tx, OTHER, &message(9), 9).await?;
            // Entry 2 of DEVICE no longer decodes.
            let queue = DeviceQueue::new(DEVICE);
            tx.set(&queue.entries.pack(&(2u64,)), &[0xff, 0xff])
        })
        .await
        .expect("setup");
    let (devices, after_first, inspected) = database
        .transact(|tx| async move {
            Ok((
                queued_devices(&tx, None, 10).await?,
                queued_devices(&tx, Some(DEVICE), 10).await?,
                inspect(&tx, DEVICE, 0, 10).await?,
            ))
        })
        .await
        .expect("inspect");
    assert_eq!(devices, vec![DEVICE, OTHER]);
    assert_eq!(after_first, vec![OTHER]);
    let readable: Vec<(u64, bool)> = inspected
        .iter()
        .map(|entry| (entry.queue_seq, entry.item.is_ok()))
        .collect();
    assert_eq!(readable, vec![(1, true), (2, false), (3, true)]);
    assert!(matches!(
        database
            .transact(|tx| async move { read_after(&tx, DEVICE, 0, 10).await })
            .await,
        Err(StoreError::Corrupt { .. })
    ));

    let removed = database
        .transact(|tx| async move {
            Ok([
                remove_unreadable(&tx, DEVICE, 1).await?,
                remove_unreadable(&tx, DEVICE, 2).await?,
                remove_unreadable(&tx, DEVICE, 2).await?,
            ])
        })
        .await
        .expect("remove");
    assert_eq!(
        removed,
        [false, true, false],
        "only the unreadable entry, once"
    );
    let (left, waiting) = database
        .transact(|tx| async move {
            Ok((
                read_after(&tx, DEVICE, 0, 10).await?,
                depth(&tx, DEVICE).await?,
            ))
        })
        .await
        .expect("read");
    assert_eq!(left, vec![(1, message(1)), (3, message(3))]);
    assert_eq!(waiting, 2);
    database
        .transact(|tx| async move { set_depth(&tx, DEVICE, 7) })
        .await
        .expect("set depth");
    assert_eq!(
        database
            .transact(|tx| async move { depth(&tx, DEVICE).await })
            .await
            .expect("depth"),
        7
    );
}

#[tokio::test]
async fn a_full_queue_refuses_appends() {
    let (_folder, database) = temporary_database(None);
    let outcome = database
        .transact(|tx| async move {
            // Stand in for DEVICE_QUEUE_DEPTH_MAX entries without writing them all.
            let queue = DeviceQueue::new(DEVICE);
            tx.atomic_add(&queue.depth_key(), DEVICE_QUEUE_DEPTH_MAX as i64)?;
            append(&tx, DEVICE, &message(1), 1).await
        })
        .await
        .expect("append");
    assert_eq!(
        outcome,
        QueueAppend::Full {
            depth: DEVICE_QUEUE_DEPTH_MAX
        }
    );
}

#[tokio::test]
async fn a_keyed_append_happens_once() {
    let (_folder, database) = temporary_database(None);
    let outcomes = database
        .transact(|tx| async move {
            let key = idempotency_key(7);
            Ok([
                append_once(&tx, DEVICE, &message(1), 1, &key).await?,
                append_once(&tx, DEVICE, &message(1), 1, &key).await?,
                append_once(&tx, OTHER, &message(1), 1, &key).await?,
                append_once(&tx, DEVICE, &message(2), 1, &idempotency_key(8)).await?,
            ])
        })
        .await
        .expect("appends");
    let sequences = outcomes.map(|outcome| match outcome {
        QueueAppend::Appended { queue_seq } => queue_seq,
        QueueAppend::Full { .. } => 0,
    });
    assert_eq!(sequences, [1, 1, 1, 2], "one key, one entry per device");
    let waiting = database
        .transact(|tx| async move { depth(&tx, DEVICE).await })
        .await
        .expect("depth");
    assert_eq!(waiting, 2);
}

#[tokio::test]
async fn sweeps_report_what_expired_in_bounded_rounds() {
    let (_folder, database) = temporary_database(None);
    database
        .transact(|tx| async move {
            for day in 0..4u64 {
                append(&tx, DEVICE, &message(day), day * DAY_MS).await?;
                append(&tx, OTHER, &message(10 + day), day * DAY_MS).await?;
            }
            // A clock that stepped back: an old entry behind a young one.
            append(&tx, DEVICE, &message(99), 0).await?;
            Ok(())
        })
        .await
        .expect("appends");
    let sweep = |scope, now_ms, limit| {
        let database = database.clone();
        async move {
            database
                .transact(
                    |tx| async move { sweep_expired(&tx, scope, now_ms, 2 * DAY_MS, limit).await },
                )
                .await
                .expect("sweep")
        }
    };
    // On day 3, entries of days 0 (and the stepped-back one) are expired, day 1 is not
    // (its age is exactly the retention).
    let device_sweep = sweep(SweepScope::Device(DEVICE), 3 * DAY_MS, 10).await;
    assert_eq!(
        device_sweep,
        SweepReport {
            expired: vec![(DEVICE, 1, message(0))],
            more: false
        },
        "a device sweep stops at the first young entry"
    );
    let first = sweep(SweepScope::All, 3 * DAY_MS, 1).await;
    assert_eq!(first.expired.len(), 1);
    assert!(first.more);
    let second = sweep(SweepScope::All, 3 * DAY_MS, 10).await;
    assert!(!second.more);
    let mut all: Vec<_> = first.expired.into_iter().chain(second.expired).collect();
    all.sort_by_key(|(device, queue_seq, _)| (*device, *queue_seq));
    assert_eq!(all, [(DEVICE, 5, message(99)), (OTHER, 1, message(10))]);
    assert_eq!(
        sweep(SweepScope::All, 3 * DAY_MS, 10).await,
        SweepReport::default()
    );

    let (depths, remaining) = database
        .transact(|tx| async move {
            Ok((
                [depth(&tx, DEVICE).await?, depth(&tx, OTHER).await?],
                read_after(&tx, DEVICE, 0, 10).await?,
            ))
        })
        .await
        .expect("reads");
    assert_eq!(depths, [3, 3]);
    let sequences: Vec<_> = remaining.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(sequences, [2, 3, 4]);
    // Acked entries leave the index too: nothing is swept twice.
    database
        .transact(|tx| async move { ack(&tx, DEVICE, &[2]).await })
        .await
        .expect("ack");
    let later = sweep(SweepScope::All, 10 * DAY_MS, 100).await;
    let mut swept: Vec<_> = later
        .expired
        .iter()
        .map(|(device, queue_seq, _)| (*device, *queue_seq))
        .collect();
    swept.sort();
    assert_eq!(
        swept,
        [(DEVICE, 3), (DEVICE, 4), (OTHER, 2), (OTHER, 3), (OTHER, 4)]
    );
}

#[test]
fn expiry_buckets_spread_dense_ids() {
    let mut used = [0u32; EXPIRY_INDEX_BUCKETS as usize];
    for account in 1..=256 {
        let device = DeviceAddress {
            account: AccountId(account),
            device: DeviceId(1),
        };
        used[usize::from(expiry_bucket(device))] += 1;
    }
    assert!(used.iter().all(|&count| count > 4), "{used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acks_of_one_entry_report_it_once() {
    let (_folder, database) = temporary_database(None);
    database
        .transact(|tx| async move { append(&tx, DEVICE, &message(1), 1).await })
        .await
        .expect("append");
    let acks: Vec<_> = (0..6)
        .map(|_| {
            let database = database.clone();
            tokio::spawn(async move {
                database
                    .transact(|tx| async move { ack(&tx, DEVICE, &[1]).await })
                    .await
            })
        })
        .collect();
    let mut reported = 0;
    for task in acks {
        reported += task.await.expect("task").expect("ack").len();
    }
    assert_eq!(reported, 1);
    let waiting = database
        .transact(|tx| async move { depth(&tx, DEVICE).await })
        .await
        .expect("depth");
    assert_eq!(waiting, 0);
}
