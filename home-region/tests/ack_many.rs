//! An edge's `AckMany`: several devices' acknowledgements in one request, each handled as its
//! own `FetchQueue` and answered in order. Asked through [`RegionService::handle`] as an edge
//! asks, on a region with a memory store: what one device's ack does (the entry leaves its
//! queue, its sender's delivered receipt is queued) is what it does gathered, and a refusal of
//! one device (unknown, or a request that also reads a page) leaves the others' done.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use fdb_layers::Database;
use fdb_layers::keys::IdempotencyKey;
use home_region::core::{self, CommitDecision};
use relay_proto::limits::ACK_MANY_DEVICES_MAX;
use relay_proto::wire::{
    self, AckMany, AckQueue, FetchAndAck, FetchQueue, ForDevice, RegionRequest,
    ack_outcome::Outcome, queue_entry, region_request, region_response, send_outcome,
};
use relay_proto::{AccountId, DeviceAddress, DeviceId, ErrorCode, RegionId};

mod support;

use support::{TestCa, WRITER, region};

const HERE: RegionId = WRITER;

fn idempotency_key(counter: u8) -> IdempotencyKey {
    IdempotencyKey::new(7, [counter; 16])
}

/// Creates an account homed here with one device.
async fn account(db: &Database, name: &str, counter: u8) -> DeviceAddress {
    support::account_with_device(
        db,
        HERE,
        name,
        idempotency_key(counter),
        idempotency_key(counter + 100),
    )
    .await
}

/// Commits a message from `sender` to `receiver`.
async fn send(db: &Database, sender: DeviceAddress, receiver: DeviceAddress, seq: u64) {
    let envelope = support::direct_envelope(sender, receiver, seq, [seq as u8; 16].to_vec(), 100);
    let envelope = &envelope;
    let decision = db
        .transact(|tx| async move {
            core::commit_envelope(
                &tx,
                HERE,
                envelope,
                HERE,
                core::GroupSource::Directory,
                &BTreeSet::new(),
                1_000,
            )
            .await
        })
        .await
        .expect("store")
        .expect("accepted")
        .0;
    let CommitDecision::Answer(answer) = decision else {
        panic!("not committed: {decision:?}");
    };
    assert!(matches!(
        answer.outcome,
        Some(send_outcome::Outcome::Sent(_))
    ));
}

fn fetch_and_ack(device: DeviceAddress, acks: Vec<u64>, fetch: bool) -> ForDevice {
    ForDevice {
        device: device.into(),
        fetch: Some(FetchAndAck {
            ack: Some(AckQueue { queue_seqs: acks }),
            fetch: fetch.then_some(FetchQueue {
                after_queue_seq: 0,
                limit: 10,
            }),
        }),
        ..ForDevice::default()
    }
}

/// The entries waiting in `device`'s queue after `after`, as a fetch reads them.
async fn waiting(
    service: &home_region::RegionService,
    device: DeviceAddress,
    after: u64,
) -> Vec<wire::QueueEntry> {
    let request = RegionRequest {
        body: Some(region_request::Body::FetchQueue(ForDevice {
            device: device.into(),
            fetch: Some(FetchAndAck {
                ack: None,
                fetch: Some(FetchQueue {
                    after_queue_seq: after,
                    limit: 10,
                }),
            }),
            ..ForDevice::default()
        })),
    };
    match service.handle(request).await.body {
        Some(region_response::Body::Queue(batch)) => batch.entries,
        other => panic!("expected a page, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_acks_are_each_done_or_refused_alone_and_answered_in_order() {
    let ca = TestCa::new();
    let addresses = Arc::new(Mutex::new(BTreeMap::new()));
    let (service, db) = region(HERE, &ca, &addresses);
    let ada = account(&db, "ada", 1).await;
    let bob = account(&db, "bob", 2).await;
    let cyd = account(&db, "cyd", 3).await;
    send(&db, ada, bob, 1).await;
    send(&db, ada, cyd, 1).await;
    let bob_entry = waiting(&service, bob, 0).await[0].queue_seq;
    let cyd_entry = waiting(&service, cyd, 0).await[0].queue_seq;
    let stranger = DeviceAddress {
        account: AccountId(999_999),
        device: DeviceId(1),
    };

    let gathered = RegionRequest {
        body: Some(region_request::Body::AckMany(AckMany {
            acks: vec![
                fetch_and_ack(bob, vec![bob_entry], false),
                fetch_and_ack(stranger, vec![1], false),
                fetch_and_ack(cyd, vec![cyd_entry], true),
            ],
        })),
    };
    let outcomes = match service.handle(gathered).await.body {
        Some(region_response::Body::AcksDone(done)) => done.outcomes,
        other => panic!("expected AcksDone, got {other:?}"),
    };
    assert_eq!(outcomes.len(), 3, "one answer per request");
    assert!(
        matches!(&outcomes[0].outcome, Some(Outcome::Queue(batch)) if batch.entries.is_empty()),
        "bob's ack is done: {:?}",
        outcomes[0]
    );
    let code = |index: usize| match &outcomes[index].outcome {
        Some(Outcome::Error(error)) => ErrorCode::from_u32(error.code),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(code(1), ErrorCode::UnknownAccount, "a stranger is refused");
    assert_eq!(
        code(2),
        ErrorCode::Malformed,
        "a request that reads a page is refused"
    );

    // Bob's entry was acknowledged (a fetch after it finds nothing, one from before it is
    // refused as rolled back); cyd's stays (her request was refused whole).
    assert!(waiting(&service, bob, bob_entry).await.is_empty());
    assert_eq!(waiting(&service, cyd, 0).await.len(), 1);
    // Ada hears that bob has the message: the delivered receipt is in her queue.
    let receipts = waiting(&service, ada, 0).await;
    assert!(
        receipts.iter().any(|entry| matches!(
            entry.item,
            Some(queue_entry::Item::Receipt(_) | queue_entry::Item::Receipts(_))
        )),
        "ada's queue holds bob's receipt: {receipts:?}"
    );

    // More than one AckMany holds is refused whole, and changes nothing.
    let too_many = RegionRequest {
        body: Some(region_request::Body::AckMany(AckMany {
            acks: vec![fetch_and_ack(cyd, vec![cyd_entry], false); ACK_MANY_DEVICES_MAX + 1],
        })),
    };
    match service.handle(too_many).await.body {
        Some(region_response::Body::Error(error)) => {
            assert_eq!(ErrorCode::from_u32(error.code), ErrorCode::Malformed)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(waiting(&service, cyd, 0).await.len(), 1);
}
