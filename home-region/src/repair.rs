//! The operator's check and repair of a region's store, run offline (the region stopped) by
//! `relayd admin check-store` and `relayd admin repair-store`.
//!
//! [`check_store`] reads the store's identity and quarantine, then every device queue: each
//! entry is decoded on its own, and each message entry is resolved exactly as a fetch resolves
//! it (the chat log entry it references, the envelope there, the device's ciphertext in it),
//! so a queue the check passes is a queue a fetch can read. It also compares the queue's
//! counters with its entries. [`repair_device`] removes the entries of one device that cannot
//! be delivered ([`core::repair_queue_entry`]: an "expired" receipt tells the sender when the
//! entry still names one), rewrites a depth counter that does not match, and lifts the device's
//! quarantine once its queue reads well.
//!
//! Every step is a bounded transaction: [`CHECK_ENTRIES_PER_TRANSACTION`] entries, or one
//! repaired entry, at a time.

use std::collections::BTreeSet;

use fdb_layers::device_queue;
use fdb_layers::store_identity::{self, StoreIdentity};
use fdb_layers::{Database, StoreError, quarantine};
use relay_proto::{DeviceAddress, RegionId};
use serde::Serialize;

use crate::core::{self, EntryRepair};
use crate::limits::{CHECK_DEVICES_PER_TRANSACTION, CHECK_ENTRIES_PER_TRANSACTION};

/// What [`check_store`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreReport {
    /// The store's identity, if it has one and it reads.
    pub identity: Option<IdentityReport>,
    /// Problems outside the device queues (an identity or quarantine record that does not
    /// decode).
    pub problems: Vec<String>,
    /// Devices whose queues were checked.
    pub devices_checked: u64,
    /// Queue entries checked.
    pub entries_checked: u64,
    /// Devices whose queues cannot be fully read.
    pub damaged: Vec<DamagedQueue>,
    /// Devices quarantined by the region (found damaged while serving).
    pub quarantined: Vec<QuarantinedDevice>,
}

/// A store's identity, for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdentityReport {
    /// The region it belongs to.
    pub region: u32,
    /// Its deployment (the first 8 bytes of the id, hex).
    pub deployment: String,
    /// Its store id (hex).
    pub store_id: String,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// One device whose queue cannot be fully read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedQueue {
    /// The device.
    #[serde(skip)]
    pub address: DeviceAddress,
    /// The device, as `account/device`.
    pub device: String,
    /// Entries that cannot be delivered.
    pub entries: Vec<DamagedEntry>,
    /// Counters that do not decode or do not match the entries.
    pub counters: Vec<String>,
}

/// One queue entry that cannot be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedEntry {
    /// Its queue sequence number.
    pub queue_seq: u64,
    /// What cannot be read.
    pub damage: String,
}

/// A quarantined device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantinedDevice {
    /// The device.
    #[serde(skip)]
    pub address: DeviceAddress,
    /// The device, as `account/device`.
    pub device: String,
    /// Since when, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// Why.
    pub reason: String,
}

/// What [`repair_device`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceRepair {
    /// The device, as `account/device`.
    pub device: String,
    /// Entries removed whose senders were told with an "expired" receipt.
    pub removed_senders_told: Vec<RemovedEntry>,
    /// Entries removed that name no sender any more.
    pub removed_unattributed: Vec<DamagedEntry>,
    /// The depth counter rewritten to the entries counted, if it was wrong or unreadable.
    pub depth_rewritten_to: Option<u64>,
    /// Whether the device's quarantine was lifted (its queue reads well now).
    pub quarantine_lifted: bool,
    /// What is still wrong (the device stays quarantined).
    pub remaining: Vec<String>,
}

/// A removed entry whose sender was told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemovedEntry {
    /// Its queue sequence number.
    pub queue_seq: u64,
    /// The sending device, as `account/device`.
    pub sender: String,
    /// The message's client message id (hex).
    pub client_message_id: String,
    /// What could not be read.
    pub damage: String,
}

/// One device queue as [`check_device`] found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceCheck {
    /// Entries read.
    pub entries: u64,
    /// Entries that cannot be delivered.
    pub damaged: Vec<DamagedEntry>,
    /// Counter problems.
    pub counters: Vec<String>,
    /// Whether the depth counter is unreadable or does not match the entries.
    pub depth_wrong: bool,
}

/// Checks the whole store (see the module doc).
pub async fn check_store(db: &Database) -> Result<StoreReport, StoreError> {
    let mut report = StoreReport::default();
    match db
        .transact(|tx| async move { corrupt_as_text(store_identity::identity(&tx).await) })
        .await?
    {
        Ok(identity) => report.identity = identity.map(|identity| identity_report(&identity)),
        Err(problem) => report.problems.push(format!("store identity: {problem}")),
    }
    let quarantined = match quarantined_devices(db).await? {
        Ok(quarantined) => quarantined,
        Err(problem) => {
            report.problems.push(format!("quarantine: {problem}"));
            Vec::new()
        }
    };
    let mut devices: BTreeSet<DeviceAddress> =
        quarantined.iter().map(|(device, _)| *device).collect();
    report.quarantined = quarantined
        .into_iter()
        .map(|(device, record)| QuarantinedDevice {
            address: device,
            device: device.to_string(),
            since_ms: record.since_ms,
            reason: record.reason,
        })
        .collect();
    let mut after = None;
    loop {
        let page = db
            .transact(|tx| async move {
                corrupt_as_text(
                    device_queue::queued_devices(&tx, after, CHECK_DEVICES_PER_TRANSACTION).await,
                )
            })
            .await?;
        let page = match page {
            Ok(page) => page,
            Err(problem) => {
                report.problems.push(format!("device queues: {problem}"));
                break;
            }
        };
        let Some(&last) = page.last() else {
            break;
        };
        devices.extend(page);
        after = Some(last);
    }
    for device in devices {
        let check = check_device(db, device).await?;
        report.devices_checked += 1;
        report.entries_checked += check.entries;
        if !check.damaged.is_empty() || !check.counters.is_empty() {
            report.damaged.push(DamagedQueue {
                address: device,
                device: device.to_string(),
                entries: check.damaged,
                counters: check.counters,
            });
        }
    }
    Ok(report)
}

/// Checks one device's queue: every entry resolved as a fetch would, and the counters.
pub async fn check_device(db: &Database, device: DeviceAddress) -> Result<DeviceCheck, StoreError> {
    let mut check = DeviceCheck::default();
    let (depth, latest) = db
        .transact(|tx| async move {
            Ok((
                corrupt_as_text(device_queue::depth(&tx, device).await)?,
                corrupt_as_text(device_queue::latest(&tx, device).await)?,
            ))
        })
        .await?;
    let mut after = 0;
    let mut last_seq = 0;
    loop {
        let page = db
            .transact(|tx| async move {
                let entries =
                    match device_queue::inspect(&tx, device, after, CHECK_ENTRIES_PER_TRANSACTION)
                        .await
                    {
                        Ok(entries) => entries,
                        Err(StoreError::Corrupt { what, detail }) => {
                            return Ok(Err(format!("corrupt record ({what}): {detail}")));
                        }
                        Err(error) => return Err(error),
                    };
                let mut checked = Vec::with_capacity(entries.len());
                for entry in entries {
                    let damage = match entry.item {
                        Err(error) => Some(error.to_string()),
                        Ok((item, _)) => corrupt_as_text(
                            core::queued_entry(&tx, device, entry.queue_seq, item).await,
                        )?
                        .err(),
                    };
                    checked.push((entry.queue_seq, damage));
                }
                Ok(Ok(checked))
            })
            .await?;
        let page = match page {
            Ok(page) => page,
            Err(problem) => {
                check.counters.push(format!("entry keys: {problem}"));
                check.depth_wrong = true;
                break;
            }
        };
        let Some(&(last, _)) = page.last() else {
            break;
        };
        for (queue_seq, damage) in page {
            check.entries += 1;
            last_seq = queue_seq;
            if let Some(damage) = damage {
                check.damaged.push(DamagedEntry { queue_seq, damage });
            }
        }
        after = last;
    }
    match depth {
        Err(problem) => {
            check.counters.push(format!("depth counter: {problem}"));
            check.depth_wrong = true;
        }
        Ok(depth) if depth != check.entries => {
            check.counters.push(format!(
                "depth counter says {depth} entries, {} found",
                check.entries
            ));
            check.depth_wrong = true;
        }
        Ok(_) => {}
    }
    match latest {
        Err(problem) => check.counters.push(format!("latest counter: {problem}")),
        Ok(latest) if latest < last_seq => check
            .counters
            .push(format!("latest counter {latest} is below entry {last_seq}")),
        Ok(_) => {}
    }
    Ok(check)
}

/// Repairs one device's queue (see the module doc) in region `local`, at `now_ms`.
pub async fn repair_device(
    db: &Database,
    local: RegionId,
    device: DeviceAddress,
    now_ms: u64,
) -> Result<DeviceRepair, StoreError> {
    let mut repair = DeviceRepair {
        device: device.to_string(),
        ..DeviceRepair::default()
    };
    let before = check_device(db, device).await?;
    for damaged in &before.damaged {
        let queue_seq = damaged.queue_seq;
        let (outcome, _) = db
            .transact(|tx| async move {
                core::repair_queue_entry(&tx, local, device, queue_seq, now_ms).await
            })
            .await?;
        match outcome {
            EntryRepair::Gone | EntryRepair::Readable => {}
            EntryRepair::RemovedSenderTold {
                sender,
                client_message_id,
                damage,
            } => repair.removed_senders_told.push(RemovedEntry {
                queue_seq,
                sender: sender.to_string(),
                client_message_id: client_message_id.to_string(),
                damage,
            }),
            EntryRepair::RemovedUnattributed { damage } => repair
                .removed_unattributed
                .push(DamagedEntry { queue_seq, damage }),
        }
    }
    let mut after = check_device(db, device).await?;
    if after.depth_wrong && after.damaged.is_empty() {
        let entries = after.entries;
        db.transact(|tx| async move { device_queue::set_depth(&tx, device, entries) })
            .await?;
        repair.depth_rewritten_to = Some(entries);
        after = check_device(db, device).await?;
    }
    repair.remaining = after
        .damaged
        .iter()
        .map(|entry| format!("entry {}: {}", entry.queue_seq, entry.damage))
        .chain(after.counters.iter().cloned())
        .collect();
    if repair.remaining.is_empty() {
        repair.quarantine_lifted = db
            .transact(|tx| async move { quarantine::lift(&tx, device).await })
            .await?;
    }
    Ok(repair)
}

/// The devices a repair without a device list works on: every damaged or quarantined one.
pub fn devices_to_repair(report: &StoreReport) -> Vec<DeviceAddress> {
    let devices: BTreeSet<DeviceAddress> = report
        .damaged
        .iter()
        .map(|queue| queue.address)
        .chain(report.quarantined.iter().map(|device| device.address))
        .collect();
    devices.into_iter().collect()
}

/// Reads a device address written as `account/device` (as reports print them).
pub fn parse_device(text: &str) -> Option<DeviceAddress> {
    let (account, device) = text.trim().split_once('/')?;
    let address = DeviceAddress {
        account: relay_proto::AccountId(account.parse().ok()?),
        device: relay_proto::DeviceId(device.parse().ok()?),
    };
    (address.account.0 != 0 && address.device.0 != 0).then_some(address)
}

/// Every quarantined device, page by page.
async fn quarantined_devices(
    db: &Database,
) -> Result<Result<Vec<(DeviceAddress, quarantine::QuarantineRecord)>, String>, StoreError> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = db
            .transact(|tx| async move {
                corrupt_as_text(quarantine::list(&tx, after, CHECK_DEVICES_PER_TRANSACTION).await)
            })
            .await?;
        let page = match page {
            Ok(page) => page,
            Err(problem) => return Ok(Err(problem)),
        };
        let Some(&(last, _)) = page.last() else {
            return Ok(Ok(all));
        };
        all.extend(page);
        after = Some(last);
    }
}

/// A corrupt record as a problem to report; any other error stays an error.
fn corrupt_as_text<T>(result: Result<T, StoreError>) -> Result<Result<T, String>, StoreError> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(error @ StoreError::Corrupt { .. }) => Ok(Err(error.to_string())),
        Err(error) => Err(error),
    }
}

fn identity_report(identity: &StoreIdentity) -> IdentityReport {
    IdentityReport {
        region: identity.region.0,
        deployment: identity.deployment.to_string(),
        store_id: identity.store_id.to_string(),
        created_at_ms: identity.created_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use fdb_layers::keys::IdempotencyKey;
    use fdb_layers::{EmbeddedOptions, Subspace, chat_log, directory};
    use relay_proto::wire;
    use relay_proto::{AccountId, ChatId, DeviceId};

    use super::*;
    use crate::core::CommitDecision;

    const HERE: RegionId = RegionId(1);

    fn key(n: u8) -> IdempotencyKey {
        IdempotencyKey::new(1_000, [n; 16])
    }

    async fn person(db: &Database, name: &'static str, n: u8) -> DeviceAddress {
        let record = db
            .transact(|tx| async move { directory::create_account(&tx, name, HERE, &key(n)).await })
            .await
            .expect("store")
            .expect("name free");
        let device = db
            .transact(|tx| async move {
                directory::add_first_device(&tx, record.id, &[n; 32], &[n; 32], &key(n + 100)).await
            })
            .await
            .expect("store")
            .expect("first device");
        DeviceAddress {
            account: record.id,
            device,
        }
    }

    async fn send(db: &Database, from: DeviceAddress, to: DeviceAddress, message: u8, seq: u64) {
        let envelope = wire::Envelope {
            chat: ChatId::direct(from.account, to.account).0.to_vec(),
            sender: from.into(),
            client_message_id: vec![message; 16],
            sender_seq: seq,
            recipient_accounts: vec![to.account.0],
            ciphertexts: vec![wire::DeviceCiphertext {
                recipient: to.into(),
                message_type: 1,
                body: vec![message],
            }],
            device_seq: seq,
        };
        let (decision, _) = db
            .transact(|tx| {
                let envelope = envelope.clone();
                async move {
                    core::commit_envelope(&tx, HERE, &envelope, HERE, &BTreeSet::new(), 1_000).await
                }
            })
            .await
            .expect("store")
            .expect("accepted");
        assert!(matches!(decision, CommitDecision::Answer(_)));
    }

    #[tokio::test]
    async fn the_check_lists_damaged_queues_and_the_repair_clears_them() {
        let folder = tempfile::tempdir().expect("tempdir");
        let db = Database::open(
            &folder.path().join("region.redb"),
            EmbeddedOptions::default(),
        )
        .expect("open");
        let alice = person(&db, "alice", 1).await;
        let bob = person(&db, "bob", 2).await;
        let carol = person(&db, "carol", 3).await;
        send(&db, alice, bob, 1, 1).await;
        send(&db, alice, bob, 2, 2).await;
        send(&db, alice, carol, 3, 1).await;
        // bob's first entry no longer decodes; his depth counter is off by two.
        db.transact(|tx| async move {
            let queue = Subspace::new(&("device_queue", bob));
            tx.set(&queue.subspace(&("entry",)).pack(&(1u64,)), &[0xff; 3])?;
            tx.atomic_add(&queue.pack(&("depth",)), 2)?;
            quarantine::put(
                &tx,
                bob,
                &quarantine::QuarantineRecord {
                    since_ms: 3,
                    reason: "found while serving".into(),
                },
            )
            .await
        })
        .await
        .expect("damage");

        let report = check_store(&db).await.expect("checked");
        assert_eq!(report.devices_checked, 2, "bob and carol have queues");
        assert_eq!(report.entries_checked, 3);
        assert_eq!(report.damaged.len(), 1, "{report:?}");
        let damaged = &report.damaged[0];
        assert_eq!(damaged.address, bob);
        assert_eq!(damaged.device, bob.to_string());
        assert_eq!(
            damaged
                .entries
                .iter()
                .map(|e| e.queue_seq)
                .collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(
            damaged.counters,
            vec!["depth counter says 4 entries, 2 found"]
        );
        assert_eq!(report.quarantined.len(), 1);
        assert_eq!(devices_to_repair(&report), vec![bob]);

        let repair = repair_device(&db, HERE, bob, 9_000)
            .await
            .expect("repaired");
        assert_eq!(repair.removed_unattributed.len(), 1);
        assert!(repair.removed_senders_told.is_empty());
        assert_eq!(repair.depth_rewritten_to, Some(1));
        assert!(repair.remaining.is_empty(), "{:?}", repair.remaining);
        assert!(repair.quarantine_lifted);

        let after = check_store(&db).await.expect("checked");
        assert!(after.damaged.is_empty(), "{after:?}");
        assert!(after.quarantined.is_empty());
        let left = db
            .transact(|tx| async move { device_queue::read_after(&tx, bob, 0, 10).await })
            .await
            .expect("readable");
        assert_eq!(left.len(), 1, "bob's good entry is still there");
        let chat_seq = db
            .transact(|tx| async move {
                chat_log::last_seq(&tx, ChatId::direct(alice.account, bob.account)).await
            })
            .await
            .expect("read");
        assert_eq!(chat_seq, 2, "the chat log is untouched");
    }

    #[test]
    fn devices_are_read_as_account_slash_device() {
        assert_eq!(
            parse_device("2/1"),
            Some(DeviceAddress {
                account: AccountId(2),
                device: DeviceId(1)
            })
        );
        for bad in ["2", "0/1", "2/0", "a/b", "2/1/3", ""] {
            assert_eq!(parse_device(bad), None, "{bad}");
        }
    }
}
