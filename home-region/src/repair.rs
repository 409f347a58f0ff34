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
//!
//! [`check_offline`] and [`repair_offline`] are the operator's commands on a stopped region's
//! data folder: they find and open the store (the engine checks every page of the file as it
//! opens it), run the engine's integrity check and compare the store with its marker file, then
//! check or repair, and answer with a report that prints itself ([`StoreCheck`],
//! [`StoreRepair`]) and says whether anything is left to do ([`StoreCheck::verdict`],
//! [`StoreRepair::verdict`]).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use fdb_layers::device_queue;
use fdb_layers::store_identity::{self, StoreId, StoreIdentity};
use fdb_layers::{Database, EmbeddedOptions, StoreError, quarantine};
use relay_proto::{DeviceAddress, RegionId};
use serde::{Serialize, Serializer};

use crate::core::{self, EntryRepair};
use crate::limits::{CHECK_DEVICES_PER_TRANSACTION, CHECK_ENTRIES_PER_TRANSACTION};
use crate::service::STORE_FILE;
use crate::store_check::{self, Marker, StoreCheckError};

/// Why the operator's check or repair could not run.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// The data folder holds no store.
    #[error("no store at {} (is --data the region's data_dir?)", .store.display())]
    NoStore {
        /// Where the store was looked for.
        store: PathBuf,
    },
    /// The store could not be opened (a damaged file is refused here, with what to do).
    #[error(
        "opening {} (stop the region first: the store is opened by one process at a time)",
        .store.display()
    )]
    Open {
        /// The store's file.
        store: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// Reading the store failed.
    #[error("checking {}", .store.display())]
    Check {
        /// The store's file.
        store: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// The marker file beside the store cannot be read.
    #[error(transparent)]
    Marker(#[from] StoreCheckError),
    /// The store records no region, so entries cannot be repaired for one.
    #[error(
        "{} has no readable identity, so its region is unknown; start the region once (relayd region) before repairing",
        .store.display()
    )]
    NoIdentity {
        /// The store's file.
        store: PathBuf,
    },
    /// The store's keys follow another layout: repairing would write keys it does not read.
    #[error(
        "{} follows layout version {found} and this relayd reads version {}; nothing was repaired",
        .store.display(),
        store_identity::LAYOUT_VERSION
    )]
    OtherLayout {
        /// The store's file.
        store: PathBuf,
        /// Its layout version.
        found: u32,
    },
    /// Repairing a device's queue failed.
    #[error("repairing the queue of device {device}")]
    Repair {
        /// The device.
        device: DeviceAddress,
        /// Why.
        source: StoreError,
    },
}

/// What the check found that the operator must act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckFailed {
    /// Device queues are damaged or quarantined: a repair fixes them.
    #[error(
        "{damaged} damaged device queue(s), {quarantined} quarantined device(s); repair with: relayd admin repair-store --data {}",
        .data_dir.display()
    )]
    Queues {
        /// Damaged device queues.
        damaged: usize,
        /// Quarantined devices.
        quarantined: usize,
        /// The region's data folder.
        data_dir: PathBuf,
    },
    /// The store itself has problems a repair does not fix.
    #[error(
        "{problems} problem(s) with the store itself (listed above); repair-store does not fix them"
    )]
    Store {
        /// How many.
        problems: usize,
    },
}

/// Devices the repair could not fully repair: they stay quarantined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "device(s) {} could not be fully repaired and stay quarantined",
    .devices.join(", ")
)]
pub struct RepairIncomplete {
    /// The devices, as `account/device`.
    pub devices: Vec<String>,
}

/// The marker file beside a store, compared with the store's own id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerState {
    /// There is no marker file (the region writes it at its next start).
    Missing,
    /// The marker names this store.
    Matches,
    /// The marker names another store: this is not the store the region created here.
    NamesAnother(StoreId),
}

impl fmt::Display for MarkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MarkerState::Missing => write!(f, "missing (the region writes it at its next start)"),
            MarkerState::Matches => write!(f, "matches"),
            MarkerState::NamesAnother(id) => write!(f, "names store {id}, not this one"),
        }
    }
}

impl Serialize for MarkerState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What [`check_offline`] found: the store's file, the engine's integrity, the marker file and
/// the device queues. Its `Display` is the report an operator reads; it serializes as one JSON
/// object with the queue report's fields flattened in.
#[derive(Debug, Clone, Serialize)]
pub struct StoreCheck {
    /// The store's file.
    pub store: String,
    /// The storage engine's integrity check.
    pub engine_integrity: String,
    /// The marker file.
    pub marker: MarkerState,
    /// The store's identity, quarantine and device queues.
    #[serde(flatten)]
    pub report: StoreReport,
    /// The region's data folder.
    #[serde(skip)]
    pub data_dir: PathBuf,
}

impl StoreCheck {
    /// `Ok` when the store reads well, else what the operator must do.
    pub fn verdict(&self) -> Result<(), CheckFailed> {
        let report = &self.report;
        if !report.damaged.is_empty() || !report.quarantined.is_empty() {
            return Err(CheckFailed::Queues {
                damaged: report.damaged.len(),
                quarantined: report.quarantined.len(),
                data_dir: self.data_dir.clone(),
            });
        }
        if !report.problems.is_empty() {
            return Err(CheckFailed::Store {
                problems: report.problems.len(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for StoreCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let report = &self.report;
        writeln!(f, "store {}", self.store)?;
        match &report.identity {
            Some(identity) => writeln!(
                f,
                "  region {}, deployment {}, store {}, created at {} ms",
                identity.region, identity.deployment, identity.store_id, identity.created_at_ms
            )?,
            None => writeln!(
                f,
                "  no identity (a new store, or one made before store identities)"
            )?,
        }
        writeln!(f, "  marker file: {}", self.marker)?;
        writeln!(f, "  storage engine integrity: {}", self.engine_integrity)?;
        writeln!(
            f,
            "  {} device queue(s), {} entries checked",
            report.devices_checked, report.entries_checked
        )?;
        for problem in &report.problems {
            writeln!(f, "  problem: {problem}")?;
        }
        for damaged in &report.damaged {
            writeln!(f, "  damaged: device {}", damaged.device)?;
            for entry in &damaged.entries {
                writeln!(f, "    entry {}: {}", entry.queue_seq, entry.damage)?;
            }
            for counter in &damaged.counters {
                writeln!(f, "    {counter}")?;
            }
        }
        for quarantined in &report.quarantined {
            writeln!(
                f,
                "  quarantined: device {} since {} ms ({})",
                quarantined.device, quarantined.since_ms, quarantined.reason
            )?;
        }
        if report.damaged.is_empty() && report.problems.is_empty() {
            if report.quarantined.is_empty() {
                writeln!(f, "result: the store reads well")?;
            } else {
                writeln!(
                    f,
                    "result: the queues read well; lift the quarantine with: relayd admin repair-store --data {}",
                    self.data_dir.display()
                )?;
            }
        }
        Ok(())
    }
}

/// What [`repair_offline`] did, device by device. Its `Display` is the report an operator
/// reads; it serializes as `{"repairs": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreRepair {
    /// One repair per device asked for (or found damaged or quarantined).
    pub repairs: Vec<DeviceRepair>,
}

impl StoreRepair {
    /// `Ok` when every device was fully repaired.
    pub fn verdict(&self) -> Result<(), RepairIncomplete> {
        let devices: Vec<String> = self
            .repairs
            .iter()
            .filter(|repaired| !repaired.remaining.is_empty())
            .map(|repaired| repaired.device.clone())
            .collect();
        if devices.is_empty() {
            Ok(())
        } else {
            Err(RepairIncomplete { devices })
        }
    }
}

impl fmt::Display for StoreRepair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.repairs.is_empty() {
            return writeln!(f, "nothing to repair: no damaged or quarantined device");
        }
        for repaired in &self.repairs {
            writeln!(f, "device {}:", repaired.device)?;
            for removed in &repaired.removed_senders_told {
                writeln!(
                    f,
                    "  removed entry {} (message {} from {}; {}): the sender is told it expired",
                    removed.queue_seq, removed.client_message_id, removed.sender, removed.damage
                )?;
            }
            for removed in &repaired.removed_unattributed {
                writeln!(
                    f,
                    "  removed entry {} ({}): it names no sender any more",
                    removed.queue_seq, removed.damage
                )?;
            }
            if let Some(depth) = repaired.depth_rewritten_to {
                writeln!(f, "  depth counter rewritten to {depth}")?;
            }
            if repaired.quarantine_lifted {
                writeln!(f, "  quarantine lifted")?;
            }
            for remaining in &repaired.remaining {
                writeln!(f, "  still wrong: {remaining}")?;
            }
        }
        Ok(())
    }
}

/// Checks the store of a stopped region whose data folder is `data_dir`: the engine's
/// integrity, the marker file, then every device queue ([`check_store`]). A store whose marker
/// names another store gets a problem saying so.
pub async fn check_offline(data_dir: &Path) -> Result<StoreCheck, RepairError> {
    let store = store_file(data_dir)?;
    let db = open(&store)?;
    let checking = |source| RepairError::Check {
        store: store.clone(),
        source,
    };
    let integrity = db.check_integrity().await.map_err(checking)?;
    let engine_integrity = format!(
        "ok ({} keys, last commit version {})",
        integrity.keys, integrity.version
    );
    let mut report = check_store(&db).await.map_err(checking)?;
    let marker = marker_state(data_dir, &report)?;
    if let MarkerState::NamesAnother(_) = marker {
        report.problems.push(format!(
            "the marker file {marker}: this is not the store this region created here (relayd region says more when it refuses to start)"
        ));
    }
    Ok(StoreCheck {
        store: store.display().to_string(),
        engine_integrity,
        marker,
        report,
        data_dir: data_dir.to_owned(),
    })
}

/// Repairs the device queues of a stopped region whose data folder is `data_dir`, at `now_ms`:
/// those of `devices`, or with none given, of every damaged or quarantined device
/// ([`repair_device`]).
pub async fn repair_offline(
    data_dir: &Path,
    devices: &[DeviceAddress],
    now_ms: u64,
) -> Result<StoreRepair, RepairError> {
    let store = store_file(data_dir)?;
    let db = open(&store)?;
    let report = check_store(&db)
        .await
        .map_err(|source| RepairError::Check {
            store: store.clone(),
            source,
        })?;
    let identity = report
        .identity
        .as_ref()
        .ok_or_else(|| RepairError::NoIdentity {
            store: store.clone(),
        })?;
    if identity.layout_version != store_identity::LAYOUT_VERSION {
        return Err(RepairError::OtherLayout {
            store,
            found: identity.layout_version,
        });
    }
    let region = RegionId(identity.region);
    let devices = if devices.is_empty() {
        devices_to_repair(&report)
    } else {
        devices.to_vec()
    };
    let mut repairs = Vec::with_capacity(devices.len());
    for device in devices {
        let repaired = repair_device(&db, region, device, now_ms)
            .await
            .map_err(|source| RepairError::Repair { device, source })?;
        repairs.push(repaired);
    }
    Ok(StoreRepair { repairs })
}

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
    /// The layout version its keys follow.
    pub layout_version: u32,
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
        Ok(identity) => {
            if let Some(identity) = &identity
                && identity.layout_version != store_identity::LAYOUT_VERSION
            {
                // Read no further: every other key may mean something else in that layout.
                report.problems.push(format!(
                    "store identity: the keys follow layout version {} and this relayd reads \
                     version {}; nothing else was checked",
                    identity.layout_version,
                    store_identity::LAYOUT_VERSION
                ));
                report.identity = Some(identity_report(identity));
                return Ok(report);
            }
            report.identity = identity.map(|identity| identity_report(&identity));
        }
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
            EntryRepair::RemovedSendersTold { told, damage } => repair.removed_senders_told.extend(
                told.into_iter()
                    .map(|(sender, client_message_id)| RemovedEntry {
                        queue_seq,
                        sender: sender.to_string(),
                        client_message_id: client_message_id.to_string(),
                        damage: damage.clone(),
                    }),
            ),
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

/// The store's file in `data_dir`, if there is one.
fn store_file(data_dir: &Path) -> Result<PathBuf, RepairError> {
    let store = data_dir.join(STORE_FILE);
    if !store.is_file() {
        return Err(RepairError::NoStore { store });
    }
    Ok(store)
}

/// Opens the store. The engine checks every page of the file as it opens it, so a damaged file
/// is an error here (with the path and what to do), and an open file passed the check.
fn open(store: &Path) -> Result<Database, RepairError> {
    Database::open(store, EmbeddedOptions::default()).map_err(|source| RepairError::Open {
        store: store.to_owned(),
        source,
    })
}

/// The marker file beside the store, compared with the identity the store records.
fn marker_state(data_dir: &Path, report: &StoreReport) -> Result<MarkerState, RepairError> {
    let ours = report
        .identity
        .as_ref()
        .map(|identity| identity.store_id.as_str());
    Ok(match store_check::read_marker(data_dir)? {
        Marker::Missing => MarkerState::Missing,
        Marker::Names(id) if Some(id.to_string().as_str()) == ours => MarkerState::Matches,
        Marker::Names(id) => MarkerState::NamesAnother(id),
    })
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
        layout_version: identity.layout_version,
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
            ..Default::default()
        };
        let (decision, _) = db
            .transact(|tx| {
                let envelope = envelope.clone();
                async move {
                    core::commit_envelope(
                        &tx,
                        HERE,
                        &envelope,
                        HERE,
                        core::GroupSource::Directory,
                        &BTreeSet::new(),
                        1_000,
                    )
                    .await
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

    /// A store whose keys follow another layout version is checked no further and repaired
    /// not at all: its other keys may mean something else.
    #[tokio::test]
    async fn a_store_of_another_layout_is_neither_read_nor_repaired() {
        let folder = tempfile::tempdir().expect("tempdir");
        let data_dir = folder.path();
        let identity = StoreIdentity {
            region: HERE,
            deployment: store_identity::DeploymentId([7; 32]),
            store_id: StoreId([9; 16]),
            created_at_ms: 1,
            layout_version: store_identity::LAYOUT_VERSION + 1,
        };
        Database::open(&data_dir.join(STORE_FILE), EmbeddedOptions::default())
            .expect("open")
            .transact(|tx| async move { store_identity::create(&tx, &identity).await })
            .await
            .expect("an identity");
        let checked = check_offline(data_dir).await.expect("checked");
        assert_eq!(checked.report.problems.len(), 1, "{checked}");
        assert!(
            checked.report.problems[0].contains("layout version 2"),
            "{checked}"
        );
        assert!(checked.verdict().is_err(), "{checked}");
        let refused = repair_offline(data_dir, &[], 5)
            .await
            .expect_err("another layout");
        assert!(
            matches!(refused, RepairError::OtherLayout { found: 2, .. }),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn the_offline_commands_report_and_say_what_is_left_to_do() {
        let folder = tempfile::tempdir().expect("tempdir");
        let data_dir = folder.path();
        let missing = check_offline(data_dir).await.expect_err("no store yet");
        assert!(matches!(missing, RepairError::NoStore { .. }), "{missing}");
        let open = || {
            Database::open(&data_dir.join(STORE_FILE), EmbeddedOptions::default()).expect("open")
        };
        let bob = {
            let db = open();
            let alice = person(&db, "alice", 1).await;
            let bob = person(&db, "bob", 2).await;
            send(&db, alice, bob, 1, 1).await;
            bob
        };
        // Without an identity the store's region is unknown: nothing can be repaired.
        let refused = repair_offline(data_dir, &[], 5)
            .await
            .expect_err("no region");
        assert!(
            matches!(refused, RepairError::NoIdentity { .. }),
            "{refused}"
        );
        let store_id = StoreId([9; 16]);
        let identity = StoreIdentity {
            region: HERE,
            deployment: store_identity::DeploymentId([7; 32]),
            store_id,
            created_at_ms: 1,
            layout_version: store_identity::LAYOUT_VERSION,
        };
        open()
            .transact(|tx| async move {
                store_identity::create(&tx, &identity).await?;
                let queue = Subspace::new(&("device_queue", bob));
                tx.set(&queue.subspace(&("entry",)).pack(&(1u64,)), &[0xff; 3])
            })
            .await
            .expect("damage");

        let checked = check_offline(data_dir).await.expect("checked");
        assert_eq!(checked.marker, MarkerState::Missing);
        let text = checked.to_string();
        assert!(text.contains(&format!("damaged: device {bob}")), "{text}");
        assert!(text.contains("marker file: missing"), "{text}");
        let Err(CheckFailed::Queues {
            damaged,
            quarantined,
            ..
        }) = checked.verdict()
        else {
            panic!("a damaged queue is left to repair: {:?}", checked.verdict());
        };
        assert_eq!((damaged, quarantined), (1, 0));
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&checked).expect("json")).expect("parses");
        assert_eq!(
            json["marker"],
            "missing (the region writes it at its next start)"
        );
        assert_eq!(json["damaged"][0]["device"], bob.to_string(), "{json}");

        // A marker naming another store is a problem of the store itself.
        store_check::write_marker_file(data_dir, StoreId([1; 16])).expect("marker");
        let foreign = check_offline(data_dir).await.expect("checked");
        assert!(matches!(foreign.marker, MarkerState::NamesAnother(_)));
        assert_eq!(foreign.report.problems.len(), 1, "{foreign}");
        store_check::write_marker_file(data_dir, store_id).expect("marker");

        let repaired = repair_offline(data_dir, &[], 9_000)
            .await
            .expect("repaired");
        assert_eq!(repaired.repairs.len(), 1);
        assert_eq!(repaired.verdict(), Ok(()));
        let text = repaired.to_string();
        assert!(text.starts_with(&format!("device {bob}:\n")), "{text}");
        assert!(text.contains("removed entry 1"), "{text}");
        let json = serde_json::to_value(&repaired).expect("json");
        assert_eq!(json["repairs"][0]["device"], bob.to_string());

        let again = check_offline(data_dir).await.expect("checked");
        assert_eq!(again.marker, MarkerState::Matches);
        assert_eq!(again.verdict(), Ok(()));
        assert!(
            again
                .to_string()
                .ends_with("result: the store reads well\n")
        );
        let nothing = repair_offline(data_dir, &[], 9_001).await.expect("nothing");
        assert_eq!(
            nothing.to_string(),
            "nothing to repair: no damaged or quarantined device\n"
        );
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
