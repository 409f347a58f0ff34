//! The sync benchmark (`relayd bench sync`, issue 12's bootstrap target): a phone with a long
//! chat history (edits, deletions, reactions and read marks) links a laptop through a devnet's
//! real processes, and the laptop's history is measured until it is usable; next to the
//! ceilings measured in the same run: automerge's own save and load of the phone's very
//! documents, and one raw loopback QUIC stream moving the snapshot blob's bytes each way.
//!
//! **What is real, and what is not.** The devnet's regions and edge are `relayd` processes; the
//! phone and the laptop are client SDK [`Device`]s in this process. The phone's history is
//! *written into its history file through the client library* ([`History`] and
//! [`relay_sync::bench::build_history`], one operation at a time as a device would) while the
//! phone is closed, instead of being sent message by message through the relay (100,000 real
//! sends take many minutes); the report says so. Everything after it is the real path: the
//! pairing ([`Device::link`], [`relay_client::link_accept`], [`Device::approve_link`]), the
//! phone's snapshot sealed and uploaded as a blob through the edge to the region, its reference
//! over Olm, the laptop's download, check and load, and the sync protocol's catch-up as end-to-
//! end encrypted envelopes through the relay.
//!
//! **What is measured** for each link, from the moment the phone starts approving:
//! - *usable*: the laptop shows every message of the history (its `bootstrapped` event names
//!   them all; with the sync protocol only, its documents hold them all, checked every
//!   [`HISTORY_POLL_INTERVAL_MS`]);
//! - *converged*: the laptop's documents show exactly the phone's chat (texts, edits,
//!   deletions, reactions, read marks), checked every [`HISTORY_POLL_INTERVAL_MS`];
//! - bytes: the sealed snapshot blob plus the sync messages both devices exchanged (their
//!   plaintext; each travels as one Olm envelope, a little larger), against automerge's own
//!   saved size of the phone's documents.
//!
//! The history is linked twice more at a smaller size ([`SyncOptions::compare_messages`]): once
//! by snapshot and once by the sync protocol only (`relay link --no-bootstrap`), which is slow
//! for a long history. The in-process part of [`relay_sync::bench::measure_bootstrap`] adds
//! one remote operation applied to the long history once in step, next to automerge alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use relay_client::history::History;
use relay_client::{
    Device, Event, Events, LinkHistory, Mode, OpenOptions, Overrides, link_accept, register,
};
use relay_proto::{ChatId, DeviceAddress};
use relay_sync::bench::{
    BootstrapMeasurement, HistoryPlace, HistoryShape, automerge_ceiling, build_history,
    measure_bootstrap,
};
use relay_sync::limits::REMOTE_OPERATION_APPLY_MS_TARGET;
use relay_sync::{ChatView, Replica};
use serde::Serialize;

use crate::BenchError;
use crate::blobs::RawServer;
use crate::limits::{
    BOOTSTRAP_BYTES_RATIO_TARGET, BOOTSTRAP_USABLE_SECONDS_TARGET, HISTORY_POLL_INTERVAL_MS,
    LINK_POLLS_MAX, LINK_REQUEST_POLL_MS, SYNC_CONVERGE_DEADLINE_SECONDS,
};
use crate::messages::run_folder;
use crate::servers::Servers;

/// The region every device lives in.
const REGION: u32 = 1;

/// What to measure.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The `relayd` executable the devnet runs (the one this runs as).
    pub relayd: PathBuf,
    /// Messages of the long history, linked by snapshot.
    pub messages: u64,
    /// Messages of the history linked both by snapshot and by the sync protocol only (0: no
    /// comparison).
    pub compare_messages: u64,
    /// Folder on the disk to run in (a temporary folder is made inside it and removed);
    /// `None`: the system's temporary folder.
    pub data: Option<PathBuf>,
    /// How the `relayd` executable was built (`release` or `debug`), for the report.
    pub build: String,
}

/// One link of a laptop to a phone holding a history, measured.
#[derive(Debug, Clone, Serialize)]
pub struct LinkMeasurement {
    /// `snapshot` (bootstrap, then the sync protocol) or `sync only`.
    pub path: &'static str,
    /// Messages of the phone's history.
    pub messages: u64,
    /// Writing them into the phone's history file through the client library, in s (not
    /// part of the link).
    pub written_seconds: f64,
    /// The phone's approval: snapshot, sealing, upload, the reference queued, in s.
    pub approve_seconds: f64,
    /// From the start of the approval until the laptop shows every message, in s.
    pub usable_seconds: f64,
    /// From the start of the approval until the laptop's chat equals the phone's, in s.
    pub converged_seconds: f64,
    /// Bytes of the sealed snapshot blob (0 with the sync protocol only).
    pub blob_bytes: u64,
    /// Sync messages the phone sent the laptop until they converged, and their bytes.
    pub sync_messages_to_laptop: u64,
    /// Their bytes (plaintext).
    pub sync_bytes_to_laptop: u64,
    /// Sync messages the laptop sent the phone, and their bytes.
    pub sync_messages_from_laptop: u64,
    /// Their bytes (plaintext).
    pub sync_bytes_from_laptop: u64,
    /// Blob plus sync bytes both ways.
    pub total_bytes: u64,
    /// automerge's own saved size of the phone's documents, in bytes.
    pub automerge_saved_bytes: usize,
    /// `total_bytes / automerge_saved_bytes`.
    pub bytes_ratio: f64,
}

/// The ceilings of the long history, measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Ceilings {
    /// Epoch documents of the phone's history.
    pub documents: usize,
    /// automerge's own save of the phone's documents: bytes, and ms.
    pub automerge_saved_bytes: usize,
    /// Its time, in ms.
    pub automerge_save_ms: f64,
    /// automerge's own load of what it saved, in ms.
    pub automerge_load_ms: f64,
    /// The snapshot blob's bytes written to a raw loopback QUIC stream, in ms.
    pub raw_quic_upload_ms: f64,
    /// The same bytes read from one, in ms.
    pub raw_quic_download_ms: f64,
}

/// One remote operation on the long history, in process (see
/// [`relay_sync::bench::measure_bootstrap`]).
#[derive(Debug, Clone, Serialize)]
pub struct RemoteOperation {
    /// Epoch documents of the history.
    pub epochs: usize,
    /// Remote edits timed one at a time.
    pub operations: usize,
    /// Bytes that carried one edit (median).
    pub bytes: usize,
    /// The new device receiving and applying one edit, in ms (median).
    pub apply_ms: f64,
    /// The slowest of those, in ms.
    pub apply_max_ms: f64,
    /// automerge alone applying the same change to the same document, in ms (median).
    pub automerge_apply_ms: f64,
    /// The new device loading the snapshot in process, in ms.
    pub snapshot_load_ms: f64,
}

/// What `relayd bench sync` reports.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    /// How the servers' executable was built.
    pub build: String,
    /// Cores available to this process.
    pub cores: usize,
    /// How the phone's history came to be (written through the client library, not sent).
    pub history_written: &'static str,
    /// The long history linked by snapshot.
    pub bootstrap: LinkMeasurement,
    /// Its ceilings.
    pub ceilings: Ceilings,
    /// The smaller history linked by snapshot and by the sync protocol only.
    pub comparison: Vec<LinkMeasurement>,
    /// One remote operation on a history as long, in process.
    pub remote_operation: RemoteOperation,
    /// The targets: usable within this many seconds,
    pub target_usable_seconds: f64,
    /// with at most this many times automerge's own saved bytes transferred,
    pub target_bytes_ratio: f64,
    /// and one remote operation applied within this many ms.
    pub target_remote_operation_ms: u64,
}

/// How the report describes the phone's history.
const HISTORY_WRITTEN: &str = "written into the phone's history file through the client library \
                               (relay_sync::bench::build_history), not sent through the relay";

/// Steps the progress bar counts: every thousand messages written into a phone, two per link,
/// and the stages around them.
pub fn steps(options: &SyncOptions) -> u64 {
    let thousands = |messages: u64| messages.div_ceil(relay_sync::bench::BUILD_PROGRESS_MESSAGES);
    let (compared, links) = if options.compare_messages > 0 {
        (2 * thousands(options.compare_messages), 3)
    } else {
        (0, 1)
    };
    thousands(options.messages) + compared + 2 * links + 6
}

/// Runs the benchmark on a devnet of `options.relayd`, stopping early when `shutdown`
/// completes.
pub fn run(
    options: &SyncOptions,
    step: &(dyn Fn(&str) + Sync),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<SyncReport, BenchError> {
    if options.messages < 2 {
        return Err(BenchError::Invalid(
            "the sync benchmark needs at least 2 messages".into(),
        ));
    }
    if options.compare_messages == 1 {
        return Err(BenchError::Invalid(
            "the comparison needs at least 2 messages (0: none)".into(),
        ));
    }
    let folder = run_folder(options.data.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("starting a runtime in", folder.path()))?;
    let outcome = runtime.block_on(async {
        let mut shutdown = std::pin::pin!(shutdown);
        tokio::select! {
            measured = measure(options, folder.path(), step) => measured,
            () = &mut shutdown => Err(BenchError::Interrupted),
        }
    });
    drop(runtime);
    outcome.map_err(|error| BenchError::Kept {
        error: Box::new(error),
        folder: folder.keep(),
    })
}

async fn measure(
    options: &SyncOptions,
    folder: &Path,
    step: &(dyn Fn(&str) + Sync),
) -> Result<SyncReport, BenchError> {
    step("starting the devnet");
    let servers = Servers::start(&options.relayd, 1, &folder.join("devnet")).await?;
    let measured = measure_links(options, folder, &servers, step).await;
    step("stopping the devnet");
    servers.stop().await;
    let (bootstrap, comparison, snapshot) = measured?;

    step("automerge's own save and load of the phone's documents");
    let ceiling = automerge_ceiling(&snapshot, &mut Instant::now)
        .map_err(|error| BenchError::Protocol(format!("the automerge ceiling: {error}")))?;
    drop(snapshot);
    step("a raw QUIC stream moving the blob's bytes");
    let raw = RawServer::start(folder).await?;
    let blob = vec![0x5a_u8; usize::try_from(bootstrap.blob_bytes).unwrap_or(usize::MAX)];
    let raw_upload = raw.upload(&blob).await;
    let raw_download = raw.download(blob.len()).await;
    raw.stop().await;
    let seconds = Duration::from_secs_f64;
    let ceilings = Ceilings {
        documents: ceiling.documents,
        automerge_saved_bytes: ceiling.saved_bytes,
        automerge_save_ms: ms(ceiling.save),
        automerge_load_ms: ms(ceiling.load),
        raw_quic_upload_ms: ms(seconds(raw_upload?)),
        raw_quic_download_ms: ms(seconds(raw_download?)),
    };
    let with_ratio = |mut link: LinkMeasurement, saved: usize| {
        link.automerge_saved_bytes = saved;
        link.bytes_ratio = crate::measure::ratio(link.total_bytes as f64, saved as f64);
        link
    };
    let bootstrap = with_ratio(bootstrap, ceiling.saved_bytes);
    let comparison = comparison
        .into_iter()
        .map(|(link, snapshot)| {
            let saved = automerge_ceiling(&snapshot, &mut Instant::now)
                .map(|ceiling| ceiling.saved_bytes)
                .map_err(|error| BenchError::Protocol(format!("the automerge ceiling: {error}")))?;
            Ok(with_ratio(link, saved))
        })
        .collect::<Result<Vec<_>, BenchError>>()?;

    let remote_operation = remote_operation(options.messages, step)?;
    Ok(SyncReport {
        build: options.build.clone(),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        history_written: HISTORY_WRITTEN,
        bootstrap,
        ceilings,
        comparison,
        remote_operation,
        target_usable_seconds: BOOTSTRAP_USABLE_SECONDS_TARGET,
        target_bytes_ratio: BOOTSTRAP_BYTES_RATIO_TARGET,
        target_remote_operation_ms: REMOTE_OPERATION_APPLY_MS_TARGET,
    })
}

/// The in-process measurement: a history as long, a remote edit once in step.
fn remote_operation(
    messages: u64,
    step: &(dyn Fn(&str) + Sync),
) -> Result<RemoteOperation, BenchError> {
    step("in process: a history as long, and remote edits once in step");
    let shape = HistoryShape {
        messages,
        ..HistoryShape::BOOTSTRAP
    };
    let measured: BootstrapMeasurement = measure_bootstrap(shape, &mut Instant::now)
        .map_err(|error| BenchError::Protocol(format!("the in-process measurement: {error}")))?;
    Ok(RemoteOperation {
        epochs: measured.epochs,
        operations: measured.remote_operations,
        bytes: measured.remote_operation_bytes,
        apply_ms: ms(measured.remote_operation_apply),
        apply_max_ms: ms(measured.remote_operation_apply_max),
        automerge_apply_ms: ms(measured.automerge_remote_operation_apply),
        snapshot_load_ms: ms(measured.snapshot_load),
    })
}

type Links = (LinkMeasurement, Vec<(LinkMeasurement, Vec<u8>)>, Vec<u8>);

/// The long history by snapshot, then the comparison; each on an account of its own, with the
/// phone's snapshot of each history for the ceilings.
async fn measure_links(
    options: &SyncOptions,
    folder: &Path,
    servers: &Servers,
    step: &(dyn Fn(&str) + Sync),
) -> Result<Links, BenchError> {
    let overrides = || -> Result<Overrides, BenchError> {
        Ok(Overrides {
            locator: Some(servers.locator()),
            bind_ip: Some(servers.edge(REGION)?.1),
            ca_path: Some(servers.ca().to_path_buf()),
            device_key: None,
        })
    };
    step("registering the contact");
    let contact = register(&folder.join("bob"), "bob", overrides()?, "", &mut |_| {})
        .await
        .map_err(BenchError::client("registering the contact"))?;
    let mut runs = vec![(options.messages, LinkHistory::Snapshot, "alice")];
    if options.compare_messages > 0 {
        runs.push((options.compare_messages, LinkHistory::Snapshot, "carol"));
        runs.push((options.compare_messages, LinkHistory::SyncOnly, "dave"));
    }
    let mut measured = Vec::new();
    for (messages, history, name) in runs {
        let account = Account {
            folder: folder.join(name),
            name,
            contact: contact.address(),
        };
        measured.push(link_once(&account, messages, history, &overrides()?, step).await?);
    }
    let mut measured = measured.into_iter();
    let (bootstrap, snapshot) = measured
        .next()
        .ok_or_else(|| BenchError::Protocol("the long history was not measured".into()))?;
    Ok((bootstrap, measured.collect(), snapshot))
}

/// An account of the benchmark: its phone's and laptop's folders, and the contact its history
/// is with.
struct Account {
    folder: PathBuf,
    name: &'static str,
    contact: DeviceAddress,
}

/// Registers the account's phone, writes it a history of `messages`, links a laptop to it as
/// `history` says, and measures the laptop until its chat equals the phone's. Returns the
/// measurement and the phone's snapshot.
async fn link_once(
    account: &Account,
    messages: u64,
    history: LinkHistory,
    overrides: &Overrides,
    step: &(dyn Fn(&str) + Sync),
) -> Result<(LinkMeasurement, Vec<u8>), BenchError> {
    let path = match history {
        LinkHistory::Snapshot => "snapshot",
        LinkHistory::SyncOnly => "sync only",
    };
    step(&format!("{}: registering the phone", account.name));
    let phone_dir = account.folder.join("phone");
    let laptop_dir = account.folder.join("laptop");
    let phone_identity = register(&phone_dir, account.name, overrides.clone(), "", &mut |_| {})
        .await
        .map_err(BenchError::client("registering the phone"))?;
    let me = phone_identity.address();
    let chat = ChatId::direct(me.account, account.contact.account);

    // The history, written through the client library while the phone is closed.
    let started = Instant::now();
    let mut phone_history = History::open(&phone_dir, me, rand::random())
        .map_err(BenchError::client("opening the phone's history"))?;
    let place = HistoryPlace {
        chat,
        contact: account.contact,
        after_chat_seq: 0,
    };
    let shape = HistoryShape {
        messages,
        ..HistoryShape::BOOTSTRAP
    };
    build_history(phone_history.replica_mut(), place, shape, &mut |_| {
        step(&format!("{}: writing the phone's history", account.name));
    })
    .map_err(|error| BenchError::Protocol(format!("writing the phone's history: {error}")))?;
    phone_history
        .save(&[])
        .map_err(BenchError::client("saving the phone's history"))?;
    let expected = phone_history.view(chat);
    drop(phone_history);
    let written_seconds = started.elapsed().as_secs_f64();
    if expected.messages.len() as u64 != messages {
        return Err(BenchError::Protocol(format!(
            "the phone's history shows {} of {messages} messages",
            expected.messages.len()
        )));
    }

    let live = || OpenOptions {
        mode: Mode::Live,
        ..OpenOptions::default()
    };
    let (phone, phone_events) =
        Device::open(&phone_dir, live()).map_err(BenchError::client("opening the phone"))?;
    let phone_events = drain(phone_events);
    phone
        .connect()
        .await
        .map_err(BenchError::client("connecting the phone"))?;
    let snapshot = phone
        .history_snapshot()
        .await
        .map_err(BenchError::client("the phone's snapshot"))?;

    step(&format!("{}: linking the laptop ({path})", account.name));
    let pairing = phone
        .link()
        .await
        .map_err(BenchError::client("opening a pairing"))?;
    // The laptop asks with the code while the phone waits for its request and approves it.
    let mut quiet = |_| {};
    let accepting = link_accept(&laptop_dir, &pairing.code, overrides.clone(), &mut quiet);
    let approving = async {
        for _ in 0..LINK_POLLS_MAX {
            let requests = phone
                .link_requests()
                .await
                .map_err(BenchError::client("listing the link requests"))?;
            if let Some(request) = requests
                .into_iter()
                .find(|asked| asked.code == pairing.code)
            {
                let began = Instant::now();
                let approved = phone
                    .approve_link(&request.code, &request.identity_key, history)
                    .await
                    .map_err(BenchError::client("approving the laptop"))?;
                return Ok((began, began.elapsed(), approved));
            }
            tokio::time::sleep(Duration::from_millis(LINK_REQUEST_POLL_MS)).await;
        }
        Err(BenchError::Timeout(
            "the laptop's link request did not reach the phone".into(),
        ))
    };
    let (accepted, approved) = tokio::join!(accepting, approving);
    let (approving, approve_time, approved) = approved?;
    let laptop_identity = accepted.map_err(BenchError::client("accepting the link"))?;
    let approve_seconds = approve_time.as_secs_f64();
    let blob_bytes = match (&approved.bootstrap, history) {
        (relay_client::BootstrapSent::Sent { bytes, .. }, _) => *bytes,
        (_, LinkHistory::SyncOnly) => 0,
        (other, LinkHistory::Snapshot) => {
            return Err(BenchError::Protocol(format!(
                "the phone sent no snapshot: {other:?}"
            )));
        }
    };
    let (laptop, laptop_events) =
        Device::open(&laptop_dir, live()).map_err(BenchError::client("opening the laptop"))?;
    let bootstrapped = watch_bootstrap(laptop_events);
    laptop
        .connect()
        .await
        .map_err(BenchError::client("connecting the laptop"))?;

    // Usable, then converged.
    let deadline = approving + Duration::from_secs(SYNC_CONVERGE_DEADLINE_SECONDS);
    let laptop_address = laptop_identity.address();
    let mut usable = None;
    let converged = loop {
        if usable.is_none() {
            usable = bootstrapped.usable(messages);
        }
        let view = laptop_view(&laptop, laptop_address, chat).await?;
        if usable.is_none() && view.messages.len() as u64 == messages {
            usable = Some(Instant::now());
        }
        if view == expected {
            break Instant::now();
        }
        if let Some(reason) = bootstrapped.skipped() {
            return Err(BenchError::Protocol(format!(
                "the laptop skipped the snapshot: {reason}"
            )));
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Timeout(format!(
                "the laptop showed {} of {messages} messages, not yet the phone's chat, after \
                 {SYNC_CONVERGE_DEADLINE_SECONDS} s",
                view.messages.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(HISTORY_POLL_INTERVAL_MS)).await;
    };
    let usable = usable.unwrap_or(converged);
    let to_laptop = phone
        .sync_traffic()
        .await
        .map_err(BenchError::client("the phone's sync traffic"))?;
    let from_laptop = laptop
        .sync_traffic()
        .await
        .map_err(BenchError::client("the laptop's sync traffic"))?;
    let _ = laptop.close().await;
    let _ = phone.close().await;
    phone_events.abort();
    bootstrapped.task.abort();
    let total_bytes = blob_bytes + to_laptop.sent_bytes + from_laptop.sent_bytes;
    Ok((
        LinkMeasurement {
            path,
            messages,
            written_seconds,
            approve_seconds,
            usable_seconds: usable.duration_since(approving).as_secs_f64(),
            converged_seconds: converged.duration_since(approving).as_secs_f64(),
            blob_bytes,
            sync_messages_to_laptop: to_laptop.sent_messages,
            sync_bytes_to_laptop: to_laptop.sent_bytes,
            sync_messages_from_laptop: from_laptop.sent_messages,
            sync_bytes_from_laptop: from_laptop.sent_bytes,
            total_bytes,
            automerge_saved_bytes: 0,
            bytes_ratio: 0.0,
        },
        snapshot,
    ))
}

/// What the laptop's documents show of `chat`: its snapshot, loaded as a replica of its own.
async fn laptop_view(
    laptop: &Device,
    address: DeviceAddress,
    chat: ChatId,
) -> Result<ChatView, BenchError> {
    let snapshot = laptop
        .history_snapshot()
        .await
        .map_err(BenchError::client("the laptop's snapshot"))?;
    let replica = Replica::load_snapshot(address, 0, &snapshot)
        .map_err(|error| BenchError::Protocol(format!("the laptop's snapshot: {error}")))?;
    Ok(replica.view(chat))
}

/// Reads a device's events until it closes (a device whose events nobody reads drops them).
fn drain(mut events: Events) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while events.next().await.is_some() {} })
}

/// The laptop's bootstrap as its events tell it.
struct Bootstrapped {
    seen: std::sync::Arc<std::sync::Mutex<BootstrapSeen>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct BootstrapSeen {
    /// When the snapshot was loaded, and the messages it showed.
    loaded: Option<(Instant, usize)>,
    /// Why the snapshot was not loaded.
    skipped: Option<String>,
}

impl Bootstrapped {
    /// When the snapshot loaded with all `messages` shown, if it did.
    fn usable(&self, messages: u64) -> Option<Instant> {
        let seen = self.seen.lock().ok()?;
        seen.loaded
            .filter(|(_, shown)| *shown as u64 == messages)
            .map(|(at, _)| at)
    }

    /// Why the laptop did not load the snapshot, if it did not.
    fn skipped(&self) -> Option<String> {
        self.seen.lock().ok()?.skipped.clone()
    }
}

fn watch_bootstrap(mut events: Events) -> Bootstrapped {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BootstrapSeen::default()));
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let Ok(mut seen) = seen.lock() else {
                    return;
                };
                match event {
                    Event::Bootstrapped { messages, .. } => {
                        seen.loaded = Some((Instant::now(), messages));
                    }
                    Event::BootstrapSkipped { reason, .. } => seen.skipped = Some(reason),
                    _ => {}
                }
            }
        })
    };
    Bootstrapped { seen, task }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

/// A check mark for a met target, a cross for a missed one.
fn mark(met: bool) -> &'static str {
    if met { "✓" } else { "✗" }
}

impl SyncReport {
    /// The report as Markdown tables.
    pub fn table(&self) -> String {
        let b = &self.bootstrap;
        let c = &self.ceilings;
        let r = &self.remote_operation;
        let mb_per_second = |bytes: u64, ms: f64| {
            if ms > 0.0 {
                bytes as f64 / 1e6 / (ms / 1_000.0)
            } else {
                0.0
            }
        };
        let mut out = format!(
            "relayd bench sync: a phone with {} messages links a laptop through a devnet \
             ({} build, {} cores); the phone's history was {}\n\n\
             | measure | through the relay | ceiling in the same run | target |\n\
             |---|--:|--:|---|\n\
             | laptop usable (every message shown) after the approval began | {:.2} s | automerge load {:.2} s | < {:.0} s {} |\n\
             | laptop's chat equals the phone's | {:.2} s | | |\n\
             | approval (snapshot, seal, upload) | {:.2} s | automerge save {:.2} s | |\n\
             | snapshot blob | {} B | raw QUIC {:.0} ms up ({:.0} MB/s), {:.0} ms down ({:.0} MB/s) | |\n\
             | sync messages | {} B to the laptop ({} msgs), {} B back ({} msgs) | | |\n\
             | bytes transferred | {} B = {:.2}× automerge's save ({} B, {} documents) | | < {:.0}× {} |\n",
            b.messages,
            self.build,
            self.cores,
            self.history_written,
            b.usable_seconds,
            c.automerge_load_ms / 1_000.0,
            self.target_usable_seconds,
            mark(b.usable_seconds < self.target_usable_seconds),
            b.converged_seconds,
            b.approve_seconds,
            c.automerge_save_ms / 1_000.0,
            b.blob_bytes,
            c.raw_quic_upload_ms,
            mb_per_second(b.blob_bytes, c.raw_quic_upload_ms),
            c.raw_quic_download_ms,
            mb_per_second(b.blob_bytes, c.raw_quic_download_ms),
            b.sync_bytes_to_laptop,
            b.sync_messages_to_laptop,
            b.sync_bytes_from_laptop,
            b.sync_messages_from_laptop,
            b.total_bytes,
            b.bytes_ratio,
            c.automerge_saved_bytes,
            c.documents,
            self.target_bytes_ratio,
            mark(b.bytes_ratio < self.target_bytes_ratio),
        );
        out.push_str(&format!(
            "\none remote edit once in step, in process ({} epochs, median of {}): {} B, applied \
             in {:.2} ms (slowest {:.2} ms; automerge alone {:.2} ms) | target < {} ms {}\n",
            r.epochs,
            r.operations,
            r.bytes,
            r.apply_ms,
            r.apply_max_ms,
            r.automerge_apply_ms,
            self.target_remote_operation_ms,
            mark(r.apply_ms < self.target_remote_operation_ms as f64),
        ));
        if !self.comparison.is_empty() {
            out.push_str(
                "\n| path | messages | usable | converged | blob | sync to laptop | sync back | \
                 total / automerge's save |\n|---|--:|--:|--:|--:|--:|--:|--:|\n",
            );
            for link in &self.comparison {
                out.push_str(&format!(
                    "| {} | {} | {:.2} s | {:.2} s | {} B | {} B ({} msgs) | {} B ({} msgs) | \
                     {:.2}× |\n",
                    link.path,
                    link.messages,
                    link.usable_seconds,
                    link.converged_seconds,
                    link.blob_bytes,
                    link.sync_bytes_to_laptop,
                    link.sync_messages_to_laptop,
                    link.sync_bytes_from_laptop,
                    link.sync_messages_from_laptop,
                    link.bytes_ratio,
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_short_a_history_is_refused_before_anything_starts() {
        let options = SyncOptions {
            relayd: PathBuf::from("/nonexistent/relayd"),
            messages: 1,
            compare_messages: 0,
            data: None,
            build: "debug".into(),
        };
        assert!(matches!(
            run(&options, &|_| {}, std::future::pending()),
            Err(BenchError::Invalid(_))
        ));
        let options = SyncOptions {
            messages: 10,
            compare_messages: 1,
            ..options
        };
        assert!(matches!(
            run(&options, &|_| {}, std::future::pending()),
            Err(BenchError::Invalid(_))
        ));
    }
}
