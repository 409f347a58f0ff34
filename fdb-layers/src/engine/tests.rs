//! Tests of the engine's FoundationDB semantics.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::test_support::temporary_database;

fn pairs(items: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    items
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

async fn put(database: &Database, items: &[(&str, &str)]) {
    let items = pairs(items);
    database
        .transact(|tx| {
            let items = items.clone();
            async move {
                for (key, value) in &items {
                    tx.set(key, value)?;
                }
                Ok(())
            }
        })
        .await
        .expect("setup write commits");
}

#[test]
fn handles_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Database>();
    assert_send_sync::<Transaction>();
    assert_send_sync::<StoreError>();
}

#[tokio::test]
async fn reads_see_own_writes_for_points_and_ranges_after_clears() {
    let (_folder, database) = temporary_database(None);
    put(
        &database,
        &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")],
    )
    .await;

    let tx = database.create_transaction().expect("transaction");
    tx.set(b"b", b"20").expect("set");
    tx.clear(b"c");
    tx.set(b"bb", b"new").expect("set");
    assert_eq!(tx.get(b"b").await.expect("get"), Some(b"20".to_vec()));
    assert_eq!(tx.get(b"c").await.expect("get"), None);
    assert_eq!(tx.get(b"a").await.expect("get"), Some(b"1".to_vec()));
    let all = RangeOptions::default();
    assert_eq!(
        tx.get_range(b"a", b"z", all).await.expect("range"),
        pairs(&[
            ("a", "1"),
            ("b", "20"),
            ("bb", "new"),
            ("d", "4"),
            ("e", "5")
        ])
    );

    // A range clear hides stored and buffered keys; a later set shows again.
    tx.clear_range(b"b", b"e");
    tx.set(b"d", b"40").expect("set");
    assert_eq!(tx.get(b"bb").await.expect("get"), None);
    let reverse = RangeOptions {
        reverse: true,
        ..RangeOptions::default()
    };
    assert_eq!(
        tx.get_range(b"a", b"z", reverse).await.expect("range"),
        pairs(&[("e", "5"), ("d", "40"), ("a", "1")])
    );
    let first_two = RangeOptions::limit(2);
    assert_eq!(
        tx.get_range(b"a", b"z", first_two).await.expect("range"),
        pairs(&[("a", "1"), ("d", "40")])
    );

    // Atomic adds are visible too, on stored, cleared and absent bases.
    tx.atomic_add(b"n", 5).expect("add");
    tx.atomic_add(b"n", -2).expect("add");
    assert_eq!(
        tx.get(b"n").await.expect("get"),
        Some(3i64.to_le_bytes().to_vec())
    );
    tx.commit().await.expect("commit");

    let tx = database.create_transaction().expect("transaction");
    assert_eq!(
        tx.get_range(b"a", b"z", RangeOptions::default())
            .await
            .expect("range"),
        vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"d".to_vec(), b"40".to_vec()),
            (b"e".to_vec(), b"5".to_vec()),
            (b"n".to_vec(), 3i64.to_le_bytes().to_vec()),
        ]
    );
}

#[tokio::test]
async fn an_older_transaction_reads_its_snapshot_and_conflicts() {
    let (_folder, database) = temporary_database(None);
    put(&database, &[("k", "old")]).await;

    let older = database.create_transaction().expect("transaction");
    assert_eq!(older.get(b"k").await.expect("get"), Some(b"old".to_vec()));
    put(&database, &[("k", "new"), ("other", "x")]).await;
    assert!(
        database
            .create_transaction()
            .expect("transaction")
            .read_version()
            > older.read_version()
    );

    // The newer commit is invisible to the older transaction, which then cannot commit.
    assert_eq!(older.get(b"k").await.expect("get"), Some(b"old".to_vec()));
    assert_eq!(older.get(b"other").await.expect("get"), None);
    older.set(b"derived", b"from old").expect("set");
    assert!(matches!(
        older.commit().await,
        Err(StoreError::NotCommitted)
    ));

    // Snapshot reads and blind writes do not conflict.
    let blind = database.create_transaction().expect("transaction");
    blind.snapshot_get(b"k").await.expect("snapshot get");
    blind
        .get_range(
            b"a",
            b"z",
            RangeOptions {
                snapshot: true,
                ..RangeOptions::default()
            },
        )
        .await
        .expect("snapshot range");
    blind.set(b"k", b"blind").expect("set");
    put(&database, &[("k", "newer")]).await;
    blind
        .commit()
        .await
        .expect("a transaction without read conflicts commits");
}

#[tokio::test]
async fn a_limited_range_read_conflicts_only_up_to_where_it_stopped() {
    let (_folder, database) = temporary_database(None);
    put(&database, &[("a", "1"), ("b", "2"), ("c", "3")]).await;

    let reader = database.create_transaction().expect("transaction");
    let read = reader
        .get_range(b"a", b"z", RangeOptions::limit(2))
        .await
        .expect("range");
    assert_eq!(read.len(), 2);
    reader.set(b"x", b"1").expect("set");
    put(&database, &[("c", "30")]).await;
    reader
        .commit()
        .await
        .expect("a write past the read keys does not conflict");

    let reader = database.create_transaction().expect("transaction");
    reader
        .get_range(b"a", b"z", RangeOptions::limit(2))
        .await
        .expect("range");
    reader.set(b"x", b"2").expect("set");
    put(&database, &[("b", "20")]).await;
    assert!(matches!(
        reader.commit().await,
        Err(StoreError::NotCommitted)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transact_retries_conflicts_until_it_commits() {
    let (_folder, database) = temporary_database(None);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let database = database.clone();
            tokio::spawn(async move {
                database
                    .transact(|tx| async move {
                        let count = match tx.get(b"counter").await? {
                            Some(bytes) => crate::codec::decode_u64(&bytes, "counter")?,
                            None => 0,
                        };
                        tx.set(b"counter", &(count + 1).to_le_bytes())?;
                        Ok(())
                    })
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("increment commits");
    }
    let tx = database.create_transaction().expect("transaction");
    assert_eq!(
        tx.get(b"counter").await.expect("get"),
        Some(20u64.to_le_bytes().to_vec())
    );
    assert!(
        database.stats().retries > 0,
        "concurrent read-modify-writes must have conflicted"
    );
}

#[tokio::test]
async fn atomic_adds_do_not_conflict() {
    let (_folder, database) = temporary_database(None);
    let first = database.create_transaction().expect("transaction");
    let second = database.create_transaction().expect("transaction");
    first.atomic_add(b"n", 2).expect("add");
    second.atomic_add(b"n", 3).expect("add");
    first.commit().await.expect("commit");
    second.commit().await.expect("commit");
    let tx = database.create_transaction().expect("transaction");
    assert_eq!(
        tx.get(b"n").await.expect("get"),
        Some(5i64.to_le_bytes().to_vec())
    );
}

#[tokio::test]
async fn commits_survive_reopening() {
    let folder = tempfile::tempdir().expect("folder");
    let path = folder.path().join("store.redb");
    let database = Database::open(&path, EmbeddedOptions::default()).expect("open");
    put(&database, &[("durable", "yes"), ("gone", "soon")]).await;
    database
        .transact(|tx| async move {
            tx.clear(b"gone");
            Ok(())
        })
        .await
        .expect("clear");
    let version = database
        .create_transaction()
        .expect("transaction")
        .read_version();
    drop(database);

    let database = Database::open(&path, EmbeddedOptions::default()).expect("reopen");
    let tx = database.create_transaction().expect("transaction");
    assert_eq!(
        tx.read_version(),
        version,
        "versions continue across reopening"
    );
    assert_eq!(
        tx.get(b"durable").await.expect("get"),
        Some(b"yes".to_vec())
    );
    assert_eq!(tx.get(b"gone").await.expect("get"), None);
    tx.set(b"more", b"1").expect("set");
    tx.commit().await.expect("commits after reopening");
}

#[tokio::test]
async fn limits_are_refused_with_clear_errors() {
    let (_folder, database) = temporary_database(None);
    let tx = database.create_transaction().expect("transaction");
    let long_key = vec![b'k'; KEY_BYTES_MAX + 1];
    assert!(
        matches!(tx.set(&long_key, b""), Err(StoreError::KeyTooLarge { key_bytes }) if key_bytes == KEY_BYTES_MAX + 1)
    );
    let long_value = vec![0u8; VALUE_BYTES_MAX + 1];
    assert!(matches!(
        tx.set(b"k", &long_value),
        Err(StoreError::ValueTooLarge { .. })
    ));
    assert!(matches!(
        tx.set(b"\xffsystem", b""),
        Err(StoreError::KeyOutsideLegalRange)
    ));
    tx.set(&vec![b'k'; KEY_BYTES_MAX], &vec![0u8; VALUE_BYTES_MAX])
        .expect("largest pair fits");

    let value = vec![0u8; VALUE_BYTES_MAX];
    let mut outcome = Ok(());
    for index in 0u32..110 {
        outcome = tx.set(&index.to_be_bytes(), &value);
        if outcome.is_err() {
            break;
        }
    }
    assert!(
        matches!(outcome, Err(StoreError::TransactionTooLarge { .. })),
        "{outcome:?}"
    );

    // An invalid clear fails the commit.
    let tx = database.create_transaction().expect("transaction");
    tx.set(b"a", b"1").expect("set");
    tx.clear(&long_key);
    assert!(matches!(
        tx.commit().await,
        Err(StoreError::KeyTooLarge { .. })
    ));
    assert!(matches!(
        tx.set(b"a", b"1"),
        Err(StoreError::TransactionFinished)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_transaction_older_than_five_seconds_is_too_old() {
    let (_folder, database) = temporary_database(None);
    let tx = database.create_transaction().expect("transaction");
    tx.get(b"a").await.expect("a young transaction reads");
    tokio::time::advance(Duration::from_millis(TRANSACTION_AGE_MS_MAX + 1)).await;
    let error = tx.get(b"a").await.expect_err("too old to read");
    assert!(matches!(error, StoreError::TransactionTooOld) && error.is_retryable());
    tx.set(b"a", b"1").expect("writes are buffered");
    assert!(matches!(
        tx.commit().await,
        Err(StoreError::TransactionTooOld)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_applies_many_transactions_per_write() {
    let (_folder, database) = temporary_database(None);
    let tasks: Vec<_> = (0u32..64)
        .map(|index| {
            let database = database.clone();
            tokio::spawn(async move {
                database
                    .transact(|tx| async move { tx.set(&index.to_be_bytes(), b"v") })
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("commit");
    }
    let stats = database.stats();
    assert_eq!(stats.committed_transactions, 64);
    assert!(
        stats.write_batches < stats.committed_transactions,
        "64 concurrent commits took {} redb write transactions",
        stats.write_batches
    );
}

#[tokio::test]
async fn a_read_only_transaction_commits_without_the_committer() {
    let (_folder, database) = temporary_database(None);
    let answer = database
        .transact(|tx| async move { Ok(tx.get(b"nothing").await?.is_none()) })
        .await
        .expect("read-only transaction");
    assert!(answer);
    assert_eq!(database.stats().write_batches, 0);
}

#[tokio::test]
async fn injected_faults_are_retried_until_the_body_ran_once_durably() {
    let seed = crate::test_support::fault_seed();
    let faults = FaultConfig {
        seed,
        conflict_probability: 0.3,
        commit_unknown_result_probability: 0.3,
        slow_commit_probability: 0.1,
        slow_commit_ms: 2,
    };
    let (_folder, database) = temporary_database(Some(faults));
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for round in 1u64..=20 {
        let attempts = attempts.clone();
        // Idempotent: applies round `round` only if the marker says it has not been applied.
        database
            .transact(|tx| {
                let attempts = attempts.clone();
                async move {
                    attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let applied = crate::codec::read_u64(&tx, b"applied", "applied").await?;
                    if applied < round {
                        let total = crate::codec::read_u64(&tx, b"total", "total").await?;
                        tx.set(b"total", &(total + 10).to_le_bytes())?;
                        tx.set(b"applied", &round.to_le_bytes())?;
                    }
                    Ok(())
                }
            })
            .await
            .unwrap_or_else(|error| panic!("seed={seed}: round {round} failed: {error}"));
    }
    let tx = database.create_transaction().expect("transaction");
    let total = crate::codec::read_u64(&tx, b"total", "total")
        .await
        .expect("total");
    assert_eq!(total, 200, "seed={seed}");
    let attempts = attempts.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        attempts > 20,
        "seed={seed}: faults at 30% must have caused retries"
    );
}

#[test]
fn invalid_fault_probabilities_are_refused() {
    let folder = tempfile::tempdir().expect("folder");
    let faults = FaultConfig {
        conflict_probability: 1.5,
        ..FaultConfig::frequent(1)
    };
    let opened = Database::open(
        &folder.path().join("x.redb"),
        EmbeddedOptions {
            faults: Some(faults),
        },
    );
    assert!(matches!(opened, Err(StoreError::InvalidOptions(_))));
}
