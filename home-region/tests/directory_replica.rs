//! Every region keeps a replica of the directory's accounts, fed from the writer's change log:
//! two region services in one process on loopback QUIC. Region 2 receives the accounts the
//! writer creates and the homes it moves without ever looking them up, and once the writer is
//! gone it still resolves them by name and by id.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fdb_layers::directory;
use relay_proto::wire::{self, RegionRequest, RegionResponse, region_request, region_response};
use relay_proto::{AccountId, ErrorCode, RegionId};
use support::{OTHER, TestCa, WRITER, region};

/// Generous: only bounds how long a broken test hangs.
const WAIT: Duration = Duration::from_secs(60);

fn account_of(response: RegionResponse) -> wire::AccountInfo {
    match response.body {
        Some(region_response::Body::Account(info)) => info,
        other => panic!("expected an account, got {other:?}"),
    }
}

fn error_of(response: RegionResponse) -> ErrorCode {
    match response.body {
        Some(region_response::Body::Error(error)) => ErrorCode::from_u32(error.code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn by_name(name: &str) -> RegionRequest {
    RegionRequest {
        body: Some(region_request::Body::LookupName(wire::LookupName {
            name: name.into(),
        })),
    }
}

fn changes_after(after: Vec<u8>) -> RegionRequest {
    RegionRequest {
        body: Some(region_request::Body::DirectoryChanges(
            wire::AskDirectoryChanges {
                after,
                limit: 10,
                ..Default::default()
            },
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_resolves_accounts_from_its_replica_while_the_writer_is_gone() {
    let ca = TestCa::new();
    let addresses = Arc::new(Mutex::new(BTreeMap::new()));
    let (writer, writer_db) = region(WRITER, &ca, &addresses);
    let (other, other_db) = region(OTHER, &ca, &addresses);
    let (stop_writer, writer_stopped) = tokio::sync::oneshot::channel::<()>();
    let writer_serving = tokio::spawn(writer.clone().run(async {
        let _ = writer_stopped.await;
    }));
    let (stop_other, other_stopped) = tokio::sync::oneshot::channel::<()>();
    let other_serving = tokio::spawn(other.clone().run(async {
        let _ = other_stopped.await;
    }));

    let key = |counter: u64| fdb_layers::keys::IdempotencyKey::new(1, [counter as u8; 16]);
    let created = writer_db
        .transact(|tx| async move {
            let mut ids = Vec::new();
            for (index, (name, home)) in [("ada", OTHER), ("bob", WRITER), ("cy", WRITER)]
                .into_iter()
                .enumerate()
            {
                let account =
                    directory::create_account(&tx, name, home, &key(index as u64)).await?;
                ids.push(account.expect("name free").id);
            }
            Ok(ids)
        })
        .await
        .expect("accounts");
    // bob moves home: the replica follows the epoch.
    let bob_id = created[1];
    writer_db
        .transact(|tx| async move { directory::move_home(&tx, bob_id, OTHER, 1).await })
        .await
        .expect("moved");

    // Region 2 never looked them up: its replica pulls them from the writer's log.
    let replica = |name: &'static str| {
        let other_db = other_db.clone();
        async move {
            other_db
                .transact(|tx| async move { directory::account_by_name(&tx, name).await })
                .await
                .expect("read")
        }
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let bob = replica("bob").await;
        if replica("ada").await.is_some()
            && replica("cy").await.is_some()
            && bob.is_some_and(|bob| bob.epoch == 2)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica did not receive the accounts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cursor = other_db
        .transact(|tx| async move { directory::replica_cursor(&tx).await })
        .await
        .expect("read");
    assert!(cursor.is_some(), "the replica keeps its log position");

    // Only the writer answers for its log, and a position must be one it gave.
    assert_eq!(
        error_of(other.handle(changes_after(Vec::new())).await),
        ErrorCode::Unavailable
    );
    assert_eq!(
        error_of(writer.handle(changes_after(b"garbage".to_vec())).await),
        ErrorCode::Malformed
    );
    let from_start = match writer.handle(changes_after(Vec::new())).await.body {
        Some(region_response::Body::DirectoryChanges(changes)) => changes,
        other => panic!("expected changes, got {other:?}"),
    };
    let names: Vec<&str> = from_start
        .accounts
        .iter()
        .map(|info| info.name.as_str())
        .collect();
    assert_eq!(names, ["ada", "cy", "bob"], "each once, in commit order");
    assert!(!from_start.more);

    // The writer is gone: region 2 still resolves every account it replicated.
    let _ = stop_writer.send(());
    writer_serving
        .await
        .expect("writer task")
        .expect("writer ran");
    let cy = account_of(other.handle(by_name("cy")).await);
    assert_eq!((cy.account, cy.region), (created[2].0, WRITER.0));
    let bob = account_of(
        other
            .handle(RegionRequest {
                body: Some(region_request::Body::LookupAccount(wire::LookupAccount {
                    account: created[1].0,
                })),
            })
            .await,
    );
    assert_eq!(
        (bob.name.as_str(), bob.region, bob.epoch),
        ("bob", OTHER.0, 2)
    );
    // A name the replica does not hold cannot be answered without the writer.
    assert_eq!(
        error_of(other.handle(by_name("nobody")).await),
        ErrorCode::DirectoryUnavailable
    );
    assert_eq!(AccountId(cy.account), created[2]);
    assert_eq!(RegionId(cy.region), WRITER);
    let _ = stop_other.send(());
    other_serving.await.expect("task").expect("ran");
}
