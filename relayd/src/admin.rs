//! `relayd admin`: operator commands on a stopped region's store. Wiring only: the check and
//! the repair are `home_region::repair`; this module opens the store (the engine checks every
//! page of the file as it opens it) and prints.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use fdb_layers::{Database, EmbeddedOptions};
use home_region::repair::{self, StoreReport};
use home_region::service::STORE_FILE;
use home_region::store_check::{self, Marker};
use relay_proto::RegionId;
use relay_proto::clock::{Clock, SystemClock};
use serde::Serialize;

/// `relayd admin` commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Check a region's store, offline (stop the region first): the storage engine's integrity
    /// check, the store's identity against its marker file, then every device queue: each
    /// entry decoded and resolved exactly as a fetch resolves it (the chat log entry, the
    /// envelope, the device's ciphertext) and the queue counters compared with the entries.
    /// Lists damaged and quarantined devices; exits non-zero when anything is damaged.
    ///
    /// Example: relayd admin check-store --data ./devnet-data/region-2
    CheckStore {
        /// The region's data folder (its config's `data_dir`, holding region.redb).
        #[arg(long)]
        data: PathBuf,
        /// Print one JSON object instead of the report.
        #[arg(long)]
        json: bool,
    },
    /// Repair a region's store, offline (stop the region first): remove the queue entries of
    /// each device that cannot be delivered, telling their senders with "expired" receipts
    /// where the entry still names them, rewrite a wrong depth counter, and lift the device's
    /// quarantine once its queue reads well. Without --device, every damaged or quarantined
    /// device is repaired.
    ///
    /// Example: relayd admin repair-store --data ./devnet-data/region-2 --device 2/1
    RepairStore {
        /// The region's data folder (its config's `data_dir`, holding region.redb).
        #[arg(long)]
        data: PathBuf,
        /// A device to repair, as ACCOUNT/DEVICE (repeatable).
        #[arg(long = "device", value_name = "ACCOUNT/DEVICE")]
        devices: Vec<String>,
        /// Print one JSON object instead of the report.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an admin command.
pub fn run(command: AdminCommand) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match command {
        AdminCommand::CheckStore { data, json } => runtime.block_on(check(&data, json)),
        AdminCommand::RepairStore {
            data,
            devices,
            json,
        } => runtime.block_on(repair(&data, &devices, json)),
    }
}

/// What `check-store --json` prints.
#[derive(Debug, Serialize)]
struct CheckOutput {
    store: String,
    engine_integrity: String,
    marker: String,
    #[serde(flatten)]
    report: StoreReport,
}

async fn check(data: &Path, json: bool) -> Result<()> {
    let store = store_file(data)?;
    let db = open(&store)?;
    let integrity = db
        .check_integrity()
        .await
        .with_context(|| format!("checking {}", store.display()))?;
    let engine_integrity = format!(
        "ok ({} keys, last commit version {})",
        integrity.keys, integrity.version
    );
    let report = repair::check_store(&db)
        .await
        .with_context(|| format!("checking {}", store.display()))?;
    let marker = marker_state(data, &report)?;
    let mut report = report;
    if marker.starts_with("names store") {
        report.problems.push(format!(
            "the marker file {marker}: this is not the store this region created here (relayd region says more when it refuses to start)"
        ));
    }
    let damaged = report.damaged.len();
    let quarantined = report.quarantined.len();
    let problems = report.problems.len();
    let output = CheckOutput {
        store: store.display().to_string(),
        engine_integrity,
        marker,
        report,
    };
    if json {
        println!("{}", serde_json::to_string(&output)?);
    } else {
        print_check(&output, data);
    }
    if damaged > 0 || quarantined > 0 {
        bail!(
            "{damaged} damaged device queue(s), {quarantined} quarantined device(s); repair with: relayd admin repair-store --data {}",
            data.display()
        );
    }
    if problems > 0 {
        bail!(
            "{problems} problem(s) with the store itself (listed above); repair-store does not fix them"
        );
    }
    Ok(())
}

async fn repair(data: &Path, devices: &[String], json: bool) -> Result<()> {
    let store = store_file(data)?;
    let db = open(&store)?;
    let report = repair::check_store(&db)
        .await
        .with_context(|| format!("checking {}", store.display()))?;
    let region = report
        .identity
        .as_ref()
        .map(|identity| RegionId(identity.region))
        .ok_or_else(|| {
            anyhow!(
                "{} has no readable identity, so its region is unknown; start the region once (relayd region) before repairing",
                store.display()
            )
        })?;
    let devices = if devices.is_empty() {
        repair::devices_to_repair(&report)
    } else {
        devices
            .iter()
            .map(|text| {
                repair::parse_device(text)
                    .ok_or_else(|| anyhow!("--device {text:?} is not ACCOUNT/DEVICE (e.g. 2/1)"))
            })
            .collect::<Result<_>>()?
    };
    let now_ms = SystemClock.now_ms();
    let mut repairs = Vec::new();
    for device in devices {
        let repaired = repair::repair_device(&db, region, device, now_ms)
            .await
            .with_context(|| format!("repairing the queue of device {device}"))?;
        repairs.push(repaired);
    }
    if json {
        println!("{}", serde_json::json!({ "repairs": repairs }));
    } else if repairs.is_empty() {
        println!("nothing to repair: no damaged or quarantined device");
    } else {
        for repaired in &repairs {
            println!("device {}:", repaired.device);
            for removed in &repaired.removed_senders_told {
                println!(
                    "  removed entry {} (message {} from {}; {}): the sender is told it expired",
                    removed.queue_seq, removed.client_message_id, removed.sender, removed.damage
                );
            }
            for removed in &repaired.removed_unattributed {
                println!(
                    "  removed entry {} ({}): it names no sender any more",
                    removed.queue_seq, removed.damage
                );
            }
            if let Some(depth) = repaired.depth_rewritten_to {
                println!("  depth counter rewritten to {depth}");
            }
            if repaired.quarantine_lifted {
                println!("  quarantine lifted");
            }
            for remaining in &repaired.remaining {
                println!("  still wrong: {remaining}");
            }
        }
    }
    let unrepaired: Vec<&str> = repairs
        .iter()
        .filter(|repaired| !repaired.remaining.is_empty())
        .map(|repaired| repaired.device.as_str())
        .collect();
    if !unrepaired.is_empty() {
        bail!(
            "device(s) {} could not be fully repaired and stay quarantined",
            unrepaired.join(", ")
        );
    }
    Ok(())
}

fn store_file(data: &Path) -> Result<PathBuf> {
    let store = data.join(STORE_FILE);
    if !store.is_file() {
        bail!(
            "no store at {} (is --data the region's data_dir?)",
            store.display()
        );
    }
    Ok(store)
}

/// Opens the store. The engine checks every page of the file as it opens it, so a damaged file
/// is an error here (with the path and what to do), and an open file passed the check.
fn open(store: &Path) -> Result<Database> {
    Database::open(store, EmbeddedOptions::default()).with_context(|| {
        format!(
            "opening {} (stop the region first: the store is opened by one process at a time)",
            store.display()
        )
    })
}

fn marker_state(data: &Path, report: &StoreReport) -> Result<String> {
    let marker = store_check::read_marker(data)?;
    let ours = report
        .identity
        .as_ref()
        .map(|identity| identity.store_id.as_str());
    Ok(match (marker, ours) {
        (Marker::Missing, _) => "missing (the region writes it at its next start)".into(),
        (Marker::Names(id), Some(ours)) if id.to_string() == ours => "matches".into(),
        (Marker::Names(id), _) => format!("names store {id}, not this one"),
    })
}

fn print_check(output: &CheckOutput, data: &Path) {
    let report = &output.report;
    println!("store {}", output.store);
    match &report.identity {
        Some(identity) => println!(
            "  region {}, deployment {}, store {}, created at {} ms",
            identity.region, identity.deployment, identity.store_id, identity.created_at_ms
        ),
        None => println!("  no identity (a new store, or one made before store identities)"),
    }
    println!("  marker file: {}", output.marker);
    println!("  storage engine integrity: {}", output.engine_integrity);
    println!(
        "  {} device queue(s), {} entries checked",
        report.devices_checked, report.entries_checked
    );
    for problem in &report.problems {
        println!("  problem: {problem}");
    }
    for damaged in &report.damaged {
        println!("  damaged: device {}", damaged.device);
        for entry in &damaged.entries {
            println!("    entry {}: {}", entry.queue_seq, entry.damage);
        }
        for counter in &damaged.counters {
            println!("    {counter}");
        }
    }
    for quarantined in &report.quarantined {
        println!(
            "  quarantined: device {} since {} ms ({})",
            quarantined.device, quarantined.since_ms, quarantined.reason
        );
    }
    if report.damaged.is_empty() && report.problems.is_empty() {
        if report.quarantined.is_empty() {
            println!("result: the store reads well");
        } else {
            println!(
                "result: the queues read well; lift the quarantine with: relayd admin repair-store --data {}",
                data.display()
            );
        }
    }
}
