//! `relayd bench directory`: how fast a region's directory replica catches up with the writer.
//!
//! In one process, on redb stores in a temporary folder: the directory writer's store is
//! filled with N accounts, then the writer's and an empty second region's services start on
//! loopback QUIC (mutual TLS, as deployed) and the second region's replica pulls the writer's
//! change log until it holds the last account. Next to it, measured in the same run on the same
//! disk, its two halves alone: the writer reading the log's pages (`account_changes`) and a
//! store applying them (`put_account` and the position, one transaction a page, as the
//! replica does), and the disk's fsync rate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fdb_layers::directory::{self, AccountRecord, LogPosition};
use fdb_layers::keys::IdempotencyKey;
use fdb_layers::{Database, EmbeddedOptions};
use home_region::blobs::{BlobLimits, memory_objects};
use home_region::{RegionParts, RegionService};
use relay_devnet::pki::Pki;
use relay_net::{PeerResolver, TlsIdentity, TokioSockets};
use relay_proto::clock::SystemClock;
use relay_proto::{AccountId, RegionId};
use serde::Serialize;

use crate::BenchError;
use crate::measure::{Timing, measure_fsync};

/// Accounts created per transaction while filling the writer's store.
const FILL_BATCH: usize = 500;
/// Accounts per page when measuring the halves (the replica's page).
const PAGE: usize = home_region::limits::DIRECTORY_CHANGES_PAGE_MAX;
/// How often the run looks whether the replica holds the last account.
const POLL_MS: u64 = 5;
/// How long the replica may take before the run fails.
const CATCH_UP_TIMEOUT_S: u64 = 600;

/// Options of a run.
#[derive(Debug, Clone)]
pub struct DirectoryOptions {
    /// Accounts in the writer's directory.
    pub accounts: u64,
    /// Folder for the stores (a temporary folder inside it).
    pub data: Option<PathBuf>,
    /// "release" or "debug": the build measured.
    pub build: String,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct DirectoryReport {
    /// "release" or "debug": the build measured.
    pub build: String,
    /// Accounts replicated.
    pub accounts: u64,
    /// The writer's store filled, in seconds (not part of the comparison).
    pub fill_seconds: f64,
    /// The replica from empty to the last account, in seconds.
    pub catch_up_seconds: f64,
    /// Accounts per second through the replica.
    pub replicated_per_second: f64,
    /// Ceiling: the writer reading the log's pages alone.
    pub read_per_second: f64,
    /// Ceiling: a store applying the pages alone.
    pub apply_per_second: f64,
    /// The replica against the slower of its two halves.
    pub share_of_ceiling: f64,
    /// Pages (transactions) the replica applied, and the disk's fsyncs per second.
    pub pages: u64,
    /// The disk's fsync rate in the same run.
    pub fsync_per_second: f64,
}

impl DirectoryReport {
    /// The report as a person reads it.
    pub fn table(&self) -> String {
        format!(
            "directory replica: {} accounts, pages of {PAGE}; {} build, {} cores\n\
             | measure | accounts/s | |\n|---|--:|---|\n\
             | a new region's replica catching up (over QUIC) | {:.0} | {:.0} % of the slower half |\n\
             | … the writer reading the log alone | {:.0} | ceiling |\n\
             | … a store applying the pages alone | {:.0} | ceiling |\n\
             | fsync rate of the disk | {:.0}/s | |\n\
             catch-up {:.2} s for {} pages; the writer's store was filled in {:.1} s\n",
            self.accounts,
            self.build,
            std::thread::available_parallelism().map_or(0, usize::from),
            self.replicated_per_second,
            self.share_of_ceiling * 100.0,
            self.read_per_second,
            self.apply_per_second,
            self.fsync_per_second,
            self.catch_up_seconds,
            self.pages,
            self.fill_seconds,
        )
    }
}

pub(crate) fn store_error(what: &'static str) -> impl FnOnce(fdb_layers::StoreError) -> BenchError {
    move |source| BenchError::Store { what, source }
}

/// Steps of a run, for a progress bar.
pub fn steps() -> u64 {
    3
}

/// Runs the benchmark on a runtime of its own, naming each step to `step`.
pub fn run_blocking(
    options: &DirectoryOptions,
    step: &(dyn Fn(&str) + Sync),
) -> Result<DirectoryReport, BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("starting a runtime in", Path::new(".")))?;
    runtime.block_on(run(options, step))
}

/// Runs the benchmark.
pub async fn run(
    options: &DirectoryOptions,
    step: &(dyn Fn(&str) + Sync),
) -> Result<DirectoryReport, BenchError> {
    if options.accounts == 0 {
        return Err(BenchError::Invalid("--accounts must be at least 1".into()));
    }
    let folder = crate::messages::run_folder(options.data.as_deref())?;
    let root = folder.path();

    let writer_db = open(&root.join("writer"))?;
    step("filling the writer's directory");
    let began = Instant::now();
    fill(&writer_db, options.accounts).await?;
    let fill_seconds = began.elapsed().as_secs_f64();

    // The two halves alone.
    step("the ceilings: reading and applying the log alone");
    let (read_seconds, pages) = read_all(&writer_db).await?;
    let apply_seconds = apply_all(&writer_db, &open(&root.join("apply"))?).await?;
    let fsync_per_second = measure_fsync(
        &root.join("fsync-probe"),
        Timing {
            warmup: Duration::from_millis(200),
            window: Duration::from_secs(1),
        },
    )?;

    // The replica over QUIC.
    step("a new region's replica catching up");
    let pki = Pki::open(&root.join("pki"))?;
    let addresses: Arc<Mutex<BTreeMap<u32, SocketAddr>>> = Arc::default();
    let writer = service(RegionId(1), writer_db, &pki, &addresses)?;
    let replica_db = open(&root.join("replica"))?;
    let replica = service(RegionId(2), replica_db.clone(), &pki, &addresses)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stopping = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let writer_task = tokio::spawn(writer.run(stopping()));
    let began = Instant::now();
    let replica_task = tokio::spawn(replica.run(stopping()));
    let last = AccountId(options.accounts);
    let deadline = began + Duration::from_secs(CATCH_UP_TIMEOUT_S);
    loop {
        let found = replica_db
            .transact(|tx| async move { directory::account_by_id(&tx, last).await })
            .await
            .map_err(store_error("reading the replica"))?;
        if found.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = stop.send(true);
            return Err(BenchError::Invalid(format!(
                "the replica did not receive account {last} within {CATCH_UP_TIMEOUT_S} s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    let catch_up_seconds = began.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let _ = writer_task.await;
    let _ = replica_task.await;

    let accounts = options.accounts as f64;
    let read_per_second = accounts / read_seconds;
    let apply_per_second = accounts / apply_seconds;
    let replicated_per_second = accounts / catch_up_seconds;
    Ok(DirectoryReport {
        build: options.build.clone(),
        accounts: options.accounts,
        fill_seconds,
        catch_up_seconds,
        replicated_per_second,
        read_per_second,
        apply_per_second,
        share_of_ceiling: replicated_per_second / read_per_second.min(apply_per_second),
        pages,
        fsync_per_second,
    })
}

pub(crate) fn open(folder: &Path) -> Result<Database, BenchError> {
    std::fs::create_dir_all(folder).map_err(BenchError::io("creating", folder))?;
    Database::open(&folder.join("region.redb"), EmbeddedOptions::default())
        .map_err(store_error("opening a store"))
}

/// Creates `accounts` accounts at the writer, [`FILL_BATCH`] per transaction.
async fn fill(db: &Database, accounts: u64) -> Result<(), BenchError> {
    let mut next = 1u64;
    while next <= accounts {
        let first = next;
        let last = (first + FILL_BATCH as u64 - 1).min(accounts);
        db.transact(|tx| async move {
            for id in first..=last {
                let mut request = [0u8; 16];
                request[..8].copy_from_slice(&id.to_be_bytes());
                let home = RegionId(1 + (id % 2) as u32);
                let _ = directory::create_account(
                    &tx,
                    &format!("user{id}"),
                    home,
                    &IdempotencyKey::new(7, request),
                )
                .await?;
            }
            Ok(())
        })
        .await
        .map_err(store_error("filling the writer's directory"))?;
        next = last + 1;
    }
    // Every account was created with its log entry: the writer has nothing to backfill.
    db.transact(|tx| async move { directory::set_log_complete(&tx) })
        .await
        .map_err(store_error("marking the log complete"))
}

/// Reads every page of the writer's log as the writer answers a replica; returns the time and
/// the pages.
async fn read_all(db: &Database) -> Result<(f64, u64), BenchError> {
    let began = Instant::now();
    let mut after: Option<LogPosition> = None;
    let mut pages = 0u64;
    loop {
        let (changes, more) = db
            .transact(|tx| async move { directory::account_changes(&tx, after, PAGE).await })
            .await
            .map_err(store_error("reading the log"))?;
        pages += 1;
        after = changes.last().map(|(position, _)| *position).or(after);
        if !more {
            return Ok((began.elapsed().as_secs_f64(), pages));
        }
    }
}

/// Applies every page of the writer's log to `target` as a replica does (read beforehand, so
/// only the applying is timed).
async fn apply_all(writer: &Database, target: &Database) -> Result<f64, BenchError> {
    let mut pages: Vec<(LogPosition, Vec<AccountRecord>)> = Vec::new();
    let mut after: Option<LogPosition> = None;
    loop {
        let (changes, more) = writer
            .transact(|tx| async move { directory::account_changes(&tx, after, PAGE).await })
            .await
            .map_err(store_error("reading the log"))?;
        if let Some((position, _)) = changes.last() {
            after = Some(*position);
            pages.push((
                *position,
                changes.into_iter().map(|(_, record)| record).collect(),
            ));
        }
        if !more {
            break;
        }
    }
    let began = Instant::now();
    for (position, records) in &pages {
        target
            .transact(|tx| async move {
                for record in records {
                    directory::put_account(&tx, record).await?;
                }
                directory::set_replica_cursor(&tx, position)
            })
            .await
            .map_err(store_error("applying a page"))?;
    }
    Ok(began.elapsed().as_secs_f64())
}

/// A region service on loopback with the devnet PKI's certificate for `region`.
pub(crate) fn service(
    region: RegionId,
    db: Database,
    pki: &Pki,
    addresses: &Arc<Mutex<BTreeMap<u32, SocketAddr>>>,
) -> Result<RegionService, BenchError> {
    let certs = pki.region(region.0)?;
    let identity = TlsIdentity::load(&certs.cert, &certs.key)
        .map_err(|error| BenchError::Invalid(format!("the region's certificate: {error}")))?;
    let roots = relay_net::load_roots(&pki.ca_cert())
        .map_err(|error| BenchError::Invalid(format!("the CA: {error}")))?;
    let known = addresses.clone();
    let peers: PeerResolver = Box::new(move |peer| {
        known
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&peer)
            .copied()
    });
    let listen: SocketAddr = "127.0.0.1:0"
        .parse()
        .map_err(|_| BenchError::Invalid("address".into()))?;
    let (service, address) = RegionService::new(RegionParts {
        region,
        directory_writer: RegionId(1),
        listen,
        db,
        sockets: &TokioSockets,
        identity,
        roots,
        peers,
        clock: Arc::new(SystemClock),
        boot_nonce: u64::from(region.0),
        blob_objects: memory_objects(),
        blob_limits: BlobLimits::default(),
        served_before: false,
        push: None,
        tokens_required: false,
        replication: None,
        follow_peer_moves: false,
    })
    .map_err(|error| BenchError::Invalid(format!("starting region {region}: {error}")))?;
    addresses
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .insert(region.0, address);
    Ok(service)
}
