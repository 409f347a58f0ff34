//! `relayd bench directory`: how fast a region's directory replica catches up with the writer.
//!
//! In one process, on redb stores in a temporary folder: the directory writer's store is
//! filled with N accounts, then the writer's and an empty second region's services start on
//! loopback QUIC (mutual TLS, as deployed) and the second region's replica pulls the writer's
//! change log until it holds the last account. Next to it, measured in the same run on the same
//! disk, its two halves alone: the writer reading the log's pages (`account_changes`) and a
//! store applying them (`put_account` and the position, one transaction a page, as the
//! replica does), and the disk's fsync rate. Then the writer gains groups (of
//! [`crate::limits::DIRECTORY_GROUP_MEMBERS`] members each, by default), and the region, caught
//! up with the accounts, pulls the group log until it holds the last group, next to the same
//! two halves for groups.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fdb_layers::directory::{self, AccountRecord, LogPosition, ReplicatedGroup};
use fdb_layers::keys::IdempotencyKey;
use fdb_layers::{Database, EmbeddedOptions};
use home_region::blobs::{BlobLimits, memory_objects};
use home_region::{RegionParts, RegionService};
use relay_devnet::pki::Pki;
use relay_net::{PeerResolver, TlsIdentity, TokioSockets};
use relay_proto::clock::SystemClock;
use relay_proto::{AccountId, GroupId, RegionId};
use serde::Serialize;

use crate::BenchError;
use crate::measure::{Timing, measure_fsync};

/// Accounts created per transaction while filling the writer's store.
const FILL_BATCH: usize = 500;
/// Accounts per page when measuring the halves (the replica's page).
const PAGE: usize = home_region::limits::DIRECTORY_CHANGES_PAGE_MAX;
/// Groups per page when measuring the halves (the replica's page).
const GROUP_PAGE: usize = home_region::limits::GROUP_CHANGES_PAGE_MAX;
/// Members per page of groups when measuring the halves (the replica's budget).
const GROUP_PAGE_MEMBERS: usize = home_region::limits::GROUP_CHANGES_MEMBERS_MAX;
/// Groups created per transaction while filling the writer's store.
const GROUP_FILL_BATCH: u64 = 10;
/// How often the run looks whether the replica holds the last account.
const POLL_MS: u64 = 5;
/// How long the replica may take before the run fails.
const CATCH_UP_TIMEOUT_S: u64 = 600;

/// Options of a run.
#[derive(Debug, Clone)]
pub struct DirectoryOptions {
    /// Accounts in the writer's directory.
    pub accounts: u64,
    /// Groups in the writer's directory, each of `members` accounts.
    pub groups: u64,
    /// Members of each group (at most the accounts, and a group's limit).
    pub members: u64,
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
    /// Groups replicated, and the members of each.
    pub groups: u64,
    /// Members of each group.
    pub members_per_group: u64,
    /// The replica, caught up with the accounts, from the first to the last new group, in
    /// seconds.
    pub groups_catch_up_seconds: f64,
    /// Groups per second through the replica.
    pub groups_replicated_per_second: f64,
    /// Ceiling: the writer reading the group log's pages alone.
    pub groups_read_per_second: f64,
    /// Ceiling: a store applying those pages alone.
    pub groups_apply_per_second: f64,
    /// The replica's groups against the slower of the two halves.
    pub groups_share_of_ceiling: f64,
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
             catch-up {:.2} s for {} pages; the writer's store was filled in {:.1} s\n\
             {} groups of {} members, pages of up to {GROUP_PAGE_MEMBERS} members:\n\
             | measure | groups/s | |\n|---|--:|---|\n\
             | a region's replica catching up with new groups (over QUIC) | {:.0} | {:.0} % of the slower half |\n\
             | … the writer reading the group log alone | {:.0} | ceiling |\n\
             | … a store applying the pages alone | {:.0} | ceiling |\n\
             groups caught up in {:.2} s\n",
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
            self.groups,
            self.members_per_group,
            self.groups_replicated_per_second,
            self.groups_share_of_ceiling * 100.0,
            self.groups_read_per_second,
            self.groups_apply_per_second,
            self.groups_catch_up_seconds,
        )
    }
}

pub(crate) fn store_error(what: &'static str) -> impl FnOnce(fdb_layers::StoreError) -> BenchError {
    move |source| BenchError::Store { what, source }
}

/// Steps of a run, for a progress bar.
pub fn steps() -> u64 {
    4
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
    if options.groups == 0
        || options.members == 0
        || options.members > options.accounts
        || options.members as usize > relay_proto::limits::GROUP_MEMBERS_MAX
    {
        return Err(BenchError::Invalid(format!(
            "--groups must be at least 1, each of 1 to {} members and no more than --accounts",
            relay_proto::limits::GROUP_MEMBERS_MAX
        )));
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

    // The replica over QUIC: a new region pulls every account.
    step("a new region's replica catching up");
    let pki = Pki::open(&root.join("pki"))?;
    let replica_db = open(&root.join("replica"))?;
    let last = AccountId(options.accounts);
    let catch_up_seconds = catch_up(&writer_db, &replica_db, &pki, |tx| async move {
        directory::account_by_id(&tx, last)
            .await
            .map(|found| found.is_some())
    })
    .await?;

    // Then the writer gains groups, and the region, caught up with the accounts, pulls them.
    step("groups: filling, the ceilings, and the replica catching up");
    fill_groups(&writer_db, options).await?;
    let groups_read_seconds = read_groups(&writer_db).await?;
    let groups_apply_seconds = apply_groups(&writer_db, &open(&root.join("apply-groups"))?).await?;
    let last_group = GroupId(options.groups);
    let groups_catch_up_seconds = catch_up(&writer_db, &replica_db, &pki, |tx| async move {
        directory::group_replica(&tx, last_group)
            .await
            .map(|found| found.is_some())
    })
    .await?;

    let accounts = options.accounts as f64;
    let read_per_second = accounts / read_seconds;
    let apply_per_second = accounts / apply_seconds;
    let replicated_per_second = accounts / catch_up_seconds;
    let groups = options.groups as f64;
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
        groups: options.groups,
        members_per_group: options.members,
        groups_catch_up_seconds,
        groups_replicated_per_second: groups / groups_catch_up_seconds,
        groups_read_per_second: groups / groups_read_seconds,
        groups_apply_per_second: groups / groups_apply_seconds,
        groups_share_of_ceiling: (groups / groups_catch_up_seconds)
            / (groups / groups_read_seconds).min(groups / groups_apply_seconds),
    })
}

/// Starts the writer's service on `writer_db` and a second region's on `replica_db` (loopback
/// QUIC, mutual TLS), and times until `arrived` says the replica holds what it waits for.
async fn catch_up<F, Fut>(
    writer_db: &Database,
    replica_db: &Database,
    pki: &Pki,
    arrived: F,
) -> Result<f64, BenchError>
where
    F: Fn(fdb_layers::Transaction) -> Fut + Clone,
    Fut: std::future::Future<Output = Result<bool, fdb_layers::StoreError>>,
{
    let began = Instant::now();
    let regions = TwoRegions::start(writer_db.clone(), replica_db.clone(), pki)?;
    let deadline = began + Duration::from_secs(CATCH_UP_TIMEOUT_S);
    let outcome = loop {
        match replica_db.transact(arrived.clone()).await {
            Ok(true) => break Ok(began.elapsed().as_secs_f64()),
            Ok(false) => {}
            Err(error) => break Err(store_error("reading the replica")(error)),
        }
        if Instant::now() >= deadline {
            break Err(BenchError::Invalid(format!(
                "the replica did not catch up within {CATCH_UP_TIMEOUT_S} s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    };
    regions.stop().await;
    outcome
}

/// Region 1 (the directory writer) and region 2 as services on loopback, each resolving the
/// other through `addresses`, serving until [`TwoRegions::stop`].
pub(crate) struct TwoRegions {
    /// Where each region listens.
    pub(crate) addresses: Arc<Mutex<BTreeMap<u32, SocketAddr>>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: [tokio::task::JoinHandle<Result<(), home_region::RegionError>>; 2],
}

impl TwoRegions {
    /// Starts region 1 on `writer` and region 2 on `other`.
    pub(crate) fn start(writer: Database, other: Database, pki: &Pki) -> Result<Self, BenchError> {
        let addresses: Arc<Mutex<BTreeMap<u32, SocketAddr>>> = Arc::default();
        let writer = service(RegionId(1), writer, pki, &addresses)?;
        let other = service(RegionId(2), other, pki, &addresses)?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let stopping = || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let tasks = [
            tokio::spawn(writer.run(stopping())),
            tokio::spawn(other.run(stopping())),
        ];
        Ok(TwoRegions {
            addresses,
            stop,
            tasks,
        })
    }

    /// Stops both and waits for them to end.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
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

/// Creates `options.groups` groups at the writer, each of `options.members` consecutive accounts
/// (the first its owner), [`GROUP_FILL_BATCH`] per transaction.
async fn fill_groups(db: &Database, options: &DirectoryOptions) -> Result<(), BenchError> {
    let (groups, members, accounts) = (options.groups, options.members, options.accounts);
    let mut next = 1u64;
    while next <= groups {
        let first = next;
        let last = (first + GROUP_FILL_BATCH - 1).min(groups);
        db.transact(|tx| async move {
            for group in first..=last {
                let owner = 1 + (group * 7919) % (accounts - members + 1);
                let others: Vec<AccountId> = (owner + 1..owner + members).map(AccountId).collect();
                let mut request_id = [0u8; directory::GROUP_REQUEST_ID_BYTES];
                request_id[..8].copy_from_slice(&group.to_be_bytes());
                let new = directory::NewGroup {
                    owner: AccountId(owner),
                    name: "bench",
                    home_region: RegionId(1),
                    members: &others,
                    request_id,
                };
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&group.to_be_bytes());
                let _ = directory::create_group(&tx, &new, &IdempotencyKey::new(8, key)).await?;
            }
            Ok(())
        })
        .await
        .map_err(store_error("filling the writer's groups"))?;
        next = last + 1;
    }
    db.transact(|tx| async move { directory::set_group_log_complete(&tx) })
        .await
        .map_err(store_error("marking the group log complete"))
}

/// Every page of the writer's group log, as the writer answers a replica.
async fn group_pages(
    db: &Database,
) -> Result<Vec<(LogPosition, Vec<ReplicatedGroup>)>, BenchError> {
    let mut pages = Vec::new();
    let mut after: Option<LogPosition> = None;
    loop {
        let (changes, more) = db
            .transact(|tx| async move {
                directory::group_changes(&tx, after, GROUP_PAGE, GROUP_PAGE_MEMBERS).await
            })
            .await
            .map_err(store_error("reading the group log"))?;
        if let Some((position, _)) = changes.last() {
            after = Some(*position);
            pages.push((
                *position,
                changes.into_iter().map(|(_, group)| group).collect(),
            ));
        }
        if !more {
            return Ok(pages);
        }
    }
}

/// Reads every page of the writer's group log; returns the time.
async fn read_groups(db: &Database) -> Result<f64, BenchError> {
    let began = Instant::now();
    group_pages(db).await?;
    Ok(began.elapsed().as_secs_f64())
}

/// Applies every page of the writer's group log to `target` as a replica does (read
/// beforehand, so only the applying is timed).
async fn apply_groups(writer: &Database, target: &Database) -> Result<f64, BenchError> {
    let pages = group_pages(writer).await?;
    let began = Instant::now();
    for (position, groups) in &pages {
        target
            .transact(|tx| async move {
                for group in groups {
                    directory::put_group_replica(&tx, group).await?;
                }
                directory::set_group_replica_cursor(&tx, position)
            })
            .await
            .map_err(store_error("applying a page of groups"))?;
    }
    Ok(began.elapsed().as_secs_f64())
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
        media: None,
    })
    .map_err(|error| BenchError::Invalid(format!("starting region {region}: {error}")))?;
    addresses
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .insert(region.0, address);
    Ok(service)
}
