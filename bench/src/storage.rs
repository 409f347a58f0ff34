//! The storage benchmark (`relayd bench storage`): durable appends per second through the storage layers, next to
//! baselines measured in the same run on the same disk.
//!
//! One **message** is what a region does for a send: one `transact` that appends a 1 KiB
//! envelope to a chat log and enqueues a reference to it in two device queues. Each writer is a
//! tokio task with its own chat and its own two recipient devices, sending one message after
//! the other (so writers never conflict, and N writers keep at most N commits in flight). A
//! message writes 12 keys (chat log: entry, `last_seq`, `sender_seq`, dedupe; each queue:
//! entry, `latest`, expiry index, `depth`).
//!
//! Baselines, each on a fresh file in the same folder:
//! - **raw batched**: one thread writes the same 12 keys per message (same key encoding, same
//!   value sizes) straight into redb, `writers` messages per durable write transaction. That is
//!   the group the engine would form if every writer's commit joined the same fsync; it is not
//!   capped at the engine's `COMMIT_BATCH_TRANSACTIONS_MAX`, so above that the layers are
//!   compared with a batch they cannot form. No reads, no range clears, no conflict checks, no
//!   tasks: the ceiling of the engine's write path.
//! - **raw 1-fsync**: the same writes, one durable redb write transaction per message, from one
//!   thread (redb runs one write transaction at a time, so more writers cannot raise it).
//! - **fsync rate**: a 512-byte overwrite plus `fdatasync` of one file, in a loop, measured at
//!   the start and at the end of the run.
//!
//! A shared disk's fsync cost can change several-fold within a minute, so both redb baselines
//! are measured in every row, right after that row's layer cell. Every cell runs a warm-up (not
//! counted) and then a measured window; throughput is the commits completed inside the window
//! divided by its length. Each cell uses a fresh database. Alongside, the row reports the
//! engine's counters over the window (group commits, retries), the process's CPU time and the
//! committer thread's CPU time (a committer near 100% of one core is the bottleneck).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fdb_layers::chat_log::{self, AppendOutcome, NewEntry};
use fdb_layers::device_queue::{self, QueueAppend, QueueItem};
use fdb_layers::limits::{COMMIT_BATCH_TRANSACTIONS_MAX, DEVICE_QUEUE_DEPTH_MAX};
use fdb_layers::{Database, EmbeddedOptions, EngineStats};
use redb::{Durability, TableDefinition};
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId, RegionId};
use serde::Serialize;

use crate::BenchError;
use crate::measure::{
    CpuOf, Timing, cpu_time, measure_fsync, percentile_ms, process_cpu_time, ratio, thousands,
    unix_time_ms,
};

/// Bytes of the envelope each message carries.
const ENVELOPE_BYTES: usize = 1_024;
/// Device queues each message is enqueued in.
const RECIPIENTS_PER_MESSAGE: usize = 2;
/// Keys one message writes: four in the chat log, four per device queue.
pub(crate) const KEYS_PER_MESSAGE: usize = 4 + 4 * RECIPIENTS_PER_MESSAGE;
/// Bytes of a stored chat log entry beyond its envelope (sender, ids, times).
const ENTRY_METADATA_BYTES: usize = 48;
/// Bytes of a stored dedupe record (chat sequence and server time).
const DEDUPE_VALUE_BYTES: usize = 10;
/// Bytes of a stored device queue item (a chat id, a sequence and the enqueue time).
const QUEUE_ITEM_BYTES: usize = 32;

/// The writer count the targets are defined at.
const TARGET_WRITERS: usize = 1_000;
/// Target: the layers reach at least this share of the raw batched rate.
const TARGET_SHARE_OF_RAW_BATCHED: f64 = 0.5;
/// Target: the layers reach at least this multiple of one fsync per message.
const TARGET_MULTIPLE_OF_ONE_FSYNC: f64 = 20.0;

/// Default measured window of each cell, in seconds (14 cells of 3.75 s with the warm-up).
pub const WINDOW_SECONDS_DEFAULT: f64 = 3.0;
/// Measured window of each cell with `--quick`, in seconds (14 cells of 0.75 s).
pub const WINDOW_SECONDS_QUICK: f64 = 0.6;
/// Longest measured window of a cell, in seconds.
const WINDOW_SECONDS_MAX: f64 = 600.0;
/// Longest warm-up of a cell, in seconds (it is a quarter of the window up to this).
const WARMUP_SECONDS_MAX: f64 = 1.0;
/// Most concurrent writers of one row.
const WRITERS_MAX: usize = 10_000;
/// Most rows of one run.
const ROWS_MAX: usize = 16;
/// Messages a writer sends to one pair of recipients before moving to a fresh pair, so no
/// queue reaches its depth cap however long the run.
const MESSAGES_PER_RECIPIENT_PAIR_MAX: u64 = DEVICE_QUEUE_DEPTH_MAX;
/// Account ids of recipients start here (senders are 1..=writers).
const RECIPIENT_ACCOUNT_BASE: u64 = 1 << 40;
/// The name of the embedded engine's committer thread, as `/proc` shows it (15 bytes at most).
const COMMITTER_THREAD_NAME: &str = "fdb-layers-comm";

/// The table the raw baselines write into.
const RAW_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");

/// What to measure.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Measured seconds of each cell (after a warm-up of a quarter of it, at most 1 s).
    pub window_seconds: f64,
    /// Concurrent writer counts, one row each.
    pub writers: Vec<usize>,
    /// Folder on the disk to measure (a temporary folder is made inside it and removed);
    /// `None`: the system's temporary folder.
    pub data: Option<PathBuf>,
    /// The `relayd` executable: each row also runs the layers shipping every commit to a
    /// standby (`relayd standby`, a child process on loopback, fresh per row); `None`: not.
    pub standby: Option<PathBuf>,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Cores available to the process.
    pub cores: usize,
    /// The folder the databases were created in (removed afterwards).
    pub data_folder: PathBuf,
    /// Measured seconds of each cell.
    pub window_seconds: f64,
    /// Uncounted seconds before each cell's window.
    pub warmup_seconds: f64,
    /// Bytes of each message's envelope.
    pub envelope_bytes: usize,
    /// Keys written per message.
    pub keys_per_message: usize,
    /// 512-byte overwrites + fdatasync per second, at the start of the run.
    pub fsync_per_second_start: f64,
    /// The same at the end of the run.
    pub fsync_per_second_end: f64,
    /// One row per writer count.
    pub rows: Vec<Row>,
    /// The targets at [`TARGET_WRITERS`] writers.
    pub verdict: Verdict,
}

/// One writer count's measurements.
#[derive(Debug, Serialize)]
pub struct Row {
    /// Concurrent writers.
    pub writers: usize,
    /// Messages per second through the layers.
    pub layer_per_second: f64,
    /// Raw redb messages per second with `writers` messages per write transaction.
    pub raw_batched_per_second: f64,
    /// `layer_per_second / raw_batched_per_second`.
    pub layer_share_of_raw_batched: f64,
    /// Raw redb messages per second, one durable write transaction each.
    pub raw_one_fsync_per_second: f64,
    /// `layer_per_second / raw_one_fsync_per_second`.
    pub layer_multiple_of_one_fsync: f64,
    /// Median latency of one message's `transact`, in milliseconds.
    pub commit_p50_ms: f64,
    /// 99th percentile latency of one message's `transact`, in milliseconds.
    pub commit_p99_ms: f64,
    /// Transactions per group commit (one fsync each) in the window.
    pub average_batch: f64,
    /// Group commits in the window.
    pub batches: u64,
    /// Transactions `transact` ran again in the window.
    pub retries: u64,
    /// Process CPU time over the window, in percent of one core (Linux only).
    pub cpu_percent: Option<f64>,
    /// The committer thread's CPU time over the window, in percent of one core (Linux only).
    pub committer_cpu_percent: Option<f64>,
    /// The same layers shipping every commit to a standby (`--standby`).
    pub with_standby: Option<StandbyCell>,
}

/// The layers with a standby: every commit acknowledged only once the standby (another
/// process, on loopback) has it durable.
#[derive(Debug, Serialize)]
pub struct StandbyCell {
    /// Messages per second.
    pub per_second: f64,
    /// `per_second / layer_per_second` of the same row.
    pub share_of_alone: f64,
    /// Median latency of one message's `transact`, in milliseconds.
    pub commit_p50_ms: f64,
    /// 99th percentile latency, in milliseconds.
    pub commit_p99_ms: f64,
    /// What the standby adds to the median commit, in milliseconds.
    pub added_p50_ms: f64,
    /// Transactions per group commit (one fsync here and one on the standby each).
    pub average_batch: f64,
    /// This process's CPU time over the window, in percent of one core (Linux only).
    pub cpu_percent: Option<f64>,
    /// The standby process's CPU time over the window, in percent of one core (Linux only).
    pub standby_cpu_percent: Option<f64>,
}

/// Whether the targets are met.
#[derive(Debug, Serialize)]
pub struct Verdict {
    /// Whether a row with [`TARGET_WRITERS`] writers was measured.
    pub evaluated: bool,
    /// Both targets met.
    pub pass: bool,
    /// The verdict line as printed.
    pub summary: String,
}

/// The steps [`run`] announces for `options`: the fsync rate twice, and three cells per row
/// (four with a standby).
pub fn steps(options: &StorageOptions) -> u64 {
    let cells = if options.standby.is_some() { 4 } else { 3 };
    2 + cells * options.writers.len() as u64
}

/// Runs the storage benchmark: the fsync rate, then per writer count the layers, raw redb
/// batched and raw redb with one fsync per message, then the fsync rate again. `step` hears of
/// each of the [`steps`] as it begins.
pub fn run(args: &StorageOptions, step: &dyn Fn(&str)) -> Result<Report, BenchError> {
    let window_seconds = args.window_seconds;
    if !(window_seconds > 0.0 && window_seconds <= WINDOW_SECONDS_MAX) {
        return Err(BenchError::Invalid(format!(
            "--seconds must be within (0, {WINDOW_SECONDS_MAX}], not {window_seconds}"
        )));
    }
    if args.writers.is_empty() || args.writers.len() > ROWS_MAX {
        return Err(BenchError::Invalid(format!(
            "--writers takes 1 to {ROWS_MAX} counts"
        )));
    }
    if let Some(&writers) = args
        .writers
        .iter()
        .find(|&&writers| writers == 0 || writers > WRITERS_MAX)
    {
        return Err(BenchError::Invalid(format!(
            "--writers counts must be within 1..={WRITERS_MAX}, not {writers}"
        )));
    }
    let timing = Timing {
        warmup: Duration::from_secs_f64((window_seconds / 4.0).min(WARMUP_SECONDS_MAX)),
        window: Duration::from_secs_f64(window_seconds),
    };
    let folder = crate::messages::run_folder(args.data.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("starting a runtime in", folder.path()))?;

    step("measuring the fsync rate");
    let fsync_per_second_start = measure_fsync(&folder.path().join("fsync.probe"), timing)?;
    let mut rows = Vec::with_capacity(args.writers.len());
    for &writers in &args.writers {
        step(&format!("{writers} writer(s): the layers"));
        let layer = runtime.block_on(measure_layers(
            &folder.path().join(format!("layers-{writers}.redb")),
            writers,
            timing,
            None,
        ))?;
        let with_standby = match &args.standby {
            Some(relayd) => {
                step(&format!("{writers} writer(s): the layers with a standby"));
                let cell_folder = folder.path().join(format!("standby-{writers}"));
                let measured = runtime.block_on(async {
                    let standby = crate::standby::StandbyProcess::start(relayd, &cell_folder)?;
                    let measured = measure_layers(
                        &folder.path().join(format!("layers-standby-{writers}.redb")),
                        writers,
                        timing,
                        Some(&standby),
                    )
                    .await;
                    standby.stop();
                    measured
                })?;
                Some(StandbyCell {
                    per_second: measured.per_second,
                    share_of_alone: ratio(measured.per_second, layer.per_second),
                    commit_p50_ms: measured.p50_ms,
                    commit_p99_ms: measured.p99_ms,
                    added_p50_ms: measured.p50_ms - layer.p50_ms,
                    average_batch: ratio(
                        measured.stats.committed_transactions as f64,
                        measured.stats.write_batches as f64,
                    ),
                    cpu_percent: measured.cpu_percent,
                    standby_cpu_percent: measured.standby_cpu_percent,
                })
            }
            None => None,
        };
        step(&format!("{writers} writer(s): raw redb, batched"));
        let raw_batched_per_second = measure_raw(
            &folder.path().join(format!("raw-batched-{writers}.redb")),
            writers,
            timing,
        )?;
        step(&format!(
            "{writers} writer(s): raw redb, one fsync per message"
        ));
        let raw_one_fsync_per_second = measure_raw(
            &folder.path().join(format!("raw-one-fsync-{writers}.redb")),
            1,
            timing,
        )?;
        rows.push(Row {
            writers,
            layer_per_second: layer.per_second,
            raw_batched_per_second,
            layer_share_of_raw_batched: ratio(layer.per_second, raw_batched_per_second),
            raw_one_fsync_per_second,
            layer_multiple_of_one_fsync: ratio(layer.per_second, raw_one_fsync_per_second),
            commit_p50_ms: layer.p50_ms,
            commit_p99_ms: layer.p99_ms,
            average_batch: ratio(
                layer.stats.committed_transactions as f64,
                layer.stats.write_batches as f64,
            ),
            batches: layer.stats.write_batches,
            retries: layer.stats.retries,
            cpu_percent: layer.cpu_percent,
            committer_cpu_percent: layer.committer_cpu_percent,
            with_standby,
        });
    }
    step("measuring the fsync rate again");
    let fsync_per_second_end = measure_fsync(&folder.path().join("fsync.probe"), timing)?;
    let report = Report {
        cores: std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        data_folder: folder.path().to_path_buf(),
        window_seconds,
        warmup_seconds: timing.warmup.as_secs_f64(),
        envelope_bytes: ENVELOPE_BYTES,
        keys_per_message: KEYS_PER_MESSAGE,
        fsync_per_second_start,
        fsync_per_second_end,
        verdict: verdict(&rows),
        rows,
    };
    let path = folder.path().to_owned();
    folder.close().map_err(BenchError::io("removing", &path))?;
    Ok(report)
}

/// What one layer row measured.
struct LayerMeasurement {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Engine counters over the window.
    stats: EngineStats,
    cpu_percent: Option<f64>,
    committer_cpu_percent: Option<f64>,
    /// The standby process's CPU time over the window, in percent of one core.
    standby_cpu_percent: Option<f64>,
}

/// Runs `writers` tasks sending messages through the layers on a fresh database at `path`.
async fn measure_layers(
    path: &Path,
    writers: usize,
    timing: Timing,
    standby: Option<&crate::standby::StandbyProcess>,
) -> Result<LayerMeasurement, BenchError> {
    let shipper = standby.map(|standby| standby.shipper()).transpose()?;
    let database = Database::open(
        path,
        EmbeddedOptions {
            replication: shipper
                .clone()
                .map(|shipper| shipper as std::sync::Arc<dyn fdb_layers::ReplicationSink>),
            ..EmbeddedOptions::default()
        },
    )
    .map_err(|source| BenchError::Store {
        what: "opening the database",
        source,
    })?;
    if let (Some(shipper), Some(standby)) = (&shipper, standby) {
        standby.ship_to(shipper, &database)?;
    }
    let envelope = envelope();
    let (window_start, window_end) = timing.schedule();
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let database = database.clone();
            let envelope = envelope.clone();
            tokio::spawn(async move {
                run_writer(&database, writer, &envelope, window_start, window_end).await
            })
        })
        .collect();
    tokio::time::sleep_until(window_start.into()).await;
    let stats_before = database.stats();
    let cpu_before = cpu_time(CpuOf::Process);
    let committer_before = cpu_time(CpuOf::Thread(COMMITTER_THREAD_NAME));
    let standby_before = standby.and_then(|standby| process_cpu_time(standby.pid()));
    tokio::time::sleep_until(window_end.into()).await;
    let standby_after = standby.and_then(|standby| process_cpu_time(standby.pid()));
    let stats_after = database.stats();
    let cpu_after = cpu_time(CpuOf::Process);
    let committer_after = cpu_time(CpuOf::Thread(COMMITTER_THREAD_NAME));
    let mut latencies_us = Vec::new();
    for task in tasks {
        let latencies = task
            .await
            .map_err(|error| BenchError::Refused(format!("a writer task failed: {error}")))??;
        latencies_us.extend(latencies);
    }
    if let Some(shipper) = &shipper {
        shipper.stop();
    }
    drop(database);
    std::fs::remove_file(path).map_err(BenchError::io("removing", path))?;

    latencies_us.sort_unstable();
    let window = timing.window.as_secs_f64();
    let busy_percent = |before: Option<Duration>, after: Option<Duration>| {
        Some(after?.saturating_sub(before?).as_secs_f64() / window * 100.0)
    };
    Ok(LayerMeasurement {
        per_second: latencies_us.len() as f64 / window,
        p50_ms: percentile_ms(&latencies_us, 50),
        p99_ms: percentile_ms(&latencies_us, 99),
        stats: EngineStats {
            committed_transactions: stats_after.committed_transactions
                - stats_before.committed_transactions,
            write_batches: stats_after.write_batches - stats_before.write_batches,
            conflicts: stats_after.conflicts - stats_before.conflicts,
            retries: stats_after.retries - stats_before.retries,
            failed_group_commits: stats_after.failed_group_commits
                - stats_before.failed_group_commits,
            reopens: stats_after.reopens - stats_before.reopens,
        },
        cpu_percent: busy_percent(cpu_before, cpu_after),
        committer_cpu_percent: busy_percent(committer_before, committer_after),
        standby_cpu_percent: busy_percent(standby_before, standby_after),
    })
}

/// One writer: sends messages one after the other until `window_end`, and returns the latency
/// (µs) of each message completed inside the window.
async fn run_writer(
    database: &Database,
    writer: usize,
    envelope: &[u8],
    window_start: Instant,
    window_end: Instant,
) -> Result<Vec<u32>, BenchError> {
    let writer_id = writer as u64 + 1;
    let chat = chat_of(writer);
    let sender = DeviceAddress {
        account: AccountId(writer_id),
        device: DeviceId(1),
    };
    let mut latencies_us = Vec::new();
    for sender_seq in 1.. {
        let began = Instant::now();
        if began >= window_end {
            break;
        }
        let recipients = recipients_of(writer, sender_seq);
        let now_ms = unix_time_ms();
        let entry = NewEntry {
            chat,
            sender,
            client_message_id: client_message_id_of(writer, sender_seq),
            sender_seq,
            sender_region: RegionId(1),
            envelope_bytes: envelope,
        };
        let entry = &entry;
        let refused = database
            .transact(|tx| async move {
                let chat_seq = match chat_log::append(&tx, entry, now_ms).await? {
                    AppendOutcome::Appended { chat_seq, .. }
                    | AppendOutcome::FirstAfterImport { chat_seq, .. } => chat_seq,
                    // A retry after `CommitUnknownResult` finds its first attempt: done.
                    AppendOutcome::Duplicate { .. } => return Ok(None),
                    AppendOutcome::Gap {
                        expected_sender_seq,
                    } => {
                        return Ok(Some(format!(
                            "the chat log expects sender_seq {expected_sender_seq}"
                        )));
                    }
                    AppendOutcome::RolledBack { last_sender_seq } => {
                        return Ok(Some(format!(
                            "the chat log already holds sender_seq {last_sender_seq}"
                        )));
                    }
                };
                // As the region queues it: naming its sender for the receipt.
                let item = QueueItem::MessageRef {
                    chat,
                    chat_seq,
                    origin: Some(device_queue::MessageOrigin {
                        sender: entry.sender,
                        client_message_id: entry.client_message_id,
                        sender_region: entry.sender_region,
                        group: false,
                    }),
                    shown_seq: None,
                };
                for recipient in recipients {
                    if let QueueAppend::Full { depth } =
                        device_queue::append(&tx, recipient, &item, now_ms).await?
                    {
                        return Ok(Some(format!("the queue of {recipient} is full ({depth})")));
                    }
                }
                Ok(None)
            })
            .await
            .map_err(|source| BenchError::Store {
                what: "a message transaction",
                source,
            })?;
        if let Some(reason) = refused {
            return Err(BenchError::Refused(format!(
                "writer {writer_id}: message {sender_seq} refused: {reason}"
            )));
        }
        let finished = Instant::now();
        if finished >= window_start && finished <= window_end {
            let latency_us = finished.duration_since(began).as_micros();
            latencies_us.push(u32::try_from(latency_us).unwrap_or(u32::MAX));
        }
    }
    Ok(latencies_us)
}

/// Writes the keys of `batch` messages per durable redb write transaction, one writer's
/// messages after the other's, on a fresh file at `path`; returns messages per second.
fn measure_raw(path: &Path, batch: usize, timing: Timing) -> Result<f64, BenchError> {
    measure_raw_messages(path, batch, ENVELOPE_BYTES, timing)
}

/// [`measure_raw`] with envelopes of `envelope_bytes`: the [`KEYS_PER_MESSAGE`] keys of a
/// message (chat log append, two device queue appends) for `batch` messages per durable redb
/// write transaction; returns messages per second. The message benchmark's raw redb ceiling.
pub(crate) fn measure_raw_messages(
    path: &Path,
    batch: usize,
    envelope_bytes: usize,
    timing: Timing,
) -> Result<f64, BenchError> {
    let redb_error =
        |what: &'static str| move |error: redb::Error| BenchError::Redb { what, error };
    let database = redb::Database::create(path).map_err(|error| BenchError::Redb {
        what: "creating the raw database",
        error: error.into(),
    })?;
    let entry_value = vec![0xe7; envelope_bytes + ENTRY_METADATA_BYTES];
    let dedupe_value = [0xd1; DEDUPE_VALUE_BYTES];
    let queue_value = [0x9a; QUEUE_ITEM_BYTES];
    let mut last_sender_seq = vec![0u64; batch];
    let mut messages_in_window = 0u64;
    let (window_start, window_end) = timing.schedule();
    while Instant::now() < window_end {
        let now_ms = unix_time_ms();
        let mut write = database
            .begin_write()
            .map_err(|error| redb_error("a raw write transaction")(error.into()))?;
        write
            .set_durability(Durability::Immediate)
            .map_err(|error| redb_error("raw durability")(error.into()))?;
        {
            let mut table = write
                .open_table(RAW_TABLE)
                .map_err(|error| redb_error("the raw table")(error.into()))?;
            for (writer, sender_seq) in last_sender_seq.iter_mut().enumerate() {
                *sender_seq += 1;
                let keys = MessageKeys::new(writer, *sender_seq, now_ms);
                let counter = sender_seq.to_le_bytes();
                let writes: [(&[u8], &[u8]); KEYS_PER_MESSAGE] = [
                    (&keys.entry, &entry_value),
                    (&keys.last_seq, &counter),
                    (&keys.sender_seq, &counter),
                    (&keys.dedupe, &dedupe_value),
                    (&keys.queue_entries[0], &queue_value),
                    (&keys.queue_latest[0], &counter),
                    (&keys.queue_expiry[0], &[]),
                    (&keys.queue_depth[0], &counter),
                    (&keys.queue_entries[1], &queue_value),
                    (&keys.queue_latest[1], &counter),
                    (&keys.queue_expiry[1], &[]),
                    (&keys.queue_depth[1], &counter),
                ];
                for (key, value) in writes {
                    table
                        .insert(key, value)
                        .map_err(|error| redb_error("a raw insert")(error.into()))?;
                }
            }
        }
        write
            .commit()
            .map_err(|error| redb_error("a raw commit")(error.into()))?;
        let finished = Instant::now();
        if finished >= window_start && finished <= window_end {
            messages_in_window += batch as u64;
        }
    }
    drop(database);
    std::fs::remove_file(path).map_err(BenchError::io("removing", path))?;
    Ok(messages_in_window as f64 / timing.window.as_secs_f64())
}

/// The keys the layers write for one message, built by the layers' own key functions, so the
/// raw baseline writes exactly those keys.
struct MessageKeys {
    entry: Vec<u8>,
    last_seq: Vec<u8>,
    sender_seq: Vec<u8>,
    dedupe: Vec<u8>,
    queue_entries: [Vec<u8>; RECIPIENTS_PER_MESSAGE],
    queue_latest: [Vec<u8>; RECIPIENTS_PER_MESSAGE],
    queue_expiry: [Vec<u8>; RECIPIENTS_PER_MESSAGE],
    queue_depth: [Vec<u8>; RECIPIENTS_PER_MESSAGE],
}

impl MessageKeys {
    fn new(writer: usize, sender_seq: u64, now_ms: u64) -> Self {
        let sender = DeviceAddress {
            account: AccountId(writer as u64 + 1),
            device: DeviceId(1),
        };
        // One writer per chat, so the chat sequence is the sender's sequence.
        let [entry, last_seq, sender_seq_key, dedupe] = chat_log::append_keys(
            chat_of(writer),
            sender,
            client_message_id_of(writer, sender_seq),
            sender_seq,
        );
        let [first, second] = recipients_of(writer, sender_seq)
            .map(|recipient| device_queue::append_keys(recipient, sender_seq, now_ms));
        let [latest_0, entry_0, expiry_0, depth_0] = first;
        let [latest_1, entry_1, expiry_1, depth_1] = second;
        MessageKeys {
            entry,
            last_seq,
            sender_seq: sender_seq_key,
            dedupe,
            queue_entries: [entry_0, entry_1],
            queue_latest: [latest_0, latest_1],
            queue_expiry: [expiry_0, expiry_1],
            queue_depth: [depth_0, depth_1],
        }
    }
}

/// The chat of writer `writer`.
fn chat_of(writer: usize) -> ChatId {
    let mut id = [0xbe; 16];
    id[..8].copy_from_slice(&(writer as u64).to_be_bytes());
    ChatId(id)
}

/// The two devices message `sender_seq` of `writer` is enqueued for: the writer's own pair,
/// replaced by a fresh pair every [`MESSAGES_PER_RECIPIENT_PAIR_MAX`] messages.
fn recipients_of(writer: usize, sender_seq: u64) -> [DeviceAddress; RECIPIENTS_PER_MESSAGE] {
    let pair = (sender_seq - 1) / MESSAGES_PER_RECIPIENT_PAIR_MAX;
    let account = AccountId(RECIPIENT_ACCOUNT_BASE + writer as u64);
    // The pair number stays far below u32::MAX / 2 within WINDOW_SECONDS_MAX.
    let first_device = (pair as u32).saturating_mul(2).saturating_add(1);
    [
        DeviceAddress {
            account,
            device: DeviceId(first_device),
        },
        DeviceAddress {
            account,
            device: DeviceId(first_device.saturating_add(1)),
        },
    ]
}

fn client_message_id_of(writer: usize, sender_seq: u64) -> ClientMessageId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(writer as u64).to_be_bytes());
    id[8..].copy_from_slice(&sender_seq.to_be_bytes());
    ClientMessageId(id)
}

/// An envelope of [`ENVELOPE_BYTES`] that does not compress.
fn envelope() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..ENVELOPE_BYTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// The verdict on the targets, from the row with [`TARGET_WRITERS`] writers.
fn verdict(rows: &[Row]) -> Verdict {
    let Some(row) = rows.iter().find(|row| row.writers == TARGET_WRITERS) else {
        return Verdict {
            evaluated: false,
            pass: false,
            summary: format!(
                "verdict: not evaluated (the targets are defined at {TARGET_WRITERS} writers; \
                 add {TARGET_WRITERS} to --writers)"
            ),
        };
    };
    let share_met = row.layer_share_of_raw_batched >= TARGET_SHARE_OF_RAW_BATCHED;
    let multiple_met = row.layer_multiple_of_one_fsync >= TARGET_MULTIPLE_OF_ONE_FSYNC;
    let pass = share_met && multiple_met;
    let mark = |met: bool| if met { "met" } else { "MISSED" };
    let percent = |value: Option<f64>| {
        value.map_or_else(|| "unknown".to_owned(), |value| format!("{value:.0}%"))
    };
    let mut summary = format!(
        "verdict at {TARGET_WRITERS} writers: {} — layers {}/s = {:.0}% of raw batched {}/s \
         (target ≥ {:.0}%: {}) and {:.1}× raw one-fsync {}/s (target ≥ {:.0}×: {})",
        if pass { "PASS" } else { "FAIL" },
        thousands(row.layer_per_second),
        row.layer_share_of_raw_batched * 100.0,
        thousands(row.raw_batched_per_second),
        TARGET_SHARE_OF_RAW_BATCHED * 100.0,
        mark(share_met),
        row.layer_multiple_of_one_fsync,
        thousands(row.raw_one_fsync_per_second),
        TARGET_MULTIPLE_OF_ONE_FSYNC,
        mark(multiple_met),
    );
    if !pass {
        summary.push_str(&format!(
            "; group commits averaged {:.1} transactions (engine cap {COMMIT_BATCH_TRANSACTIONS_MAX}), \
             {} retries, committer thread on CPU {} of the window, process CPU {} of one core",
            row.average_batch,
            row.retries,
            percent(row.committer_cpu_percent),
            percent(row.cpu_percent),
        ));
    }
    Verdict {
        evaluated: true,
        pass,
        summary,
    }
}

/// The report as a Markdown table with its context lines.
impl Report {
    /// The report as a Markdown table with its context lines.
    pub fn table(&self) -> String {
        table(self)
    }
}

fn table(report: &Report) -> String {
    let mut out = format!(
        "relayd bench storage: {} B envelopes; a message = chat log append + {} device queue \
         appends ({} keys) in one durable transaction\n\
         {} cores; {:.1} s measured per cell after {:.2} s warm-up; fresh databases in {}\n\
         fsync rate (512 B overwrite + fdatasync): {}/s at the start, {}/s at the end\n\n",
        report.envelope_bytes,
        RECIPIENTS_PER_MESSAGE,
        report.keys_per_message,
        report.cores,
        report.window_seconds,
        report.warmup_seconds,
        report.data_folder.display(),
        thousands(report.fsync_per_second_start),
        thousands(report.fsync_per_second_end),
    );
    out.push_str(
        "| writers | layer appends/s | raw batched/s | layer ÷ raw batched | raw 1-fsync/s | \
         layer ÷ 1-fsync | commit p50/p99 ms | avg batch | retries | cpu (committer) |\n\
         |--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    let percent =
        |value: Option<f64>| value.map_or_else(|| "n/a".to_owned(), |value| format!("{value:.0}%"));
    for row in &report.rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0}% | {} | {:.1}× | {:.1} / {:.1} | {:.1} | {} | {} ({}) |\n",
            row.writers,
            thousands(row.layer_per_second),
            thousands(row.raw_batched_per_second),
            row.layer_share_of_raw_batched * 100.0,
            thousands(row.raw_one_fsync_per_second),
            row.layer_multiple_of_one_fsync,
            row.commit_p50_ms,
            row.commit_p99_ms,
            row.average_batch,
            row.retries,
            percent(row.cpu_percent),
            percent(row.committer_cpu_percent),
        ));
    }
    if report.rows.iter().any(|row| row.with_standby.is_some()) {
        let fsync_ms = 1_000.0 / report.fsync_per_second_start.max(1.0);
        out.push_str(&format!(
            "\nWith a standby (`relayd standby`, another process on loopback): every commit is \
             acknowledged once the standby has it durable too (one fsync here ≈ {fsync_ms:.2} ms)\n\n\
             | writers | alone appends/s | with standby/s | with ÷ alone | commit p50/p99 ms alone | \
             with standby | added p50 ms | avg batch | cpu here (standby) |\n\
             |--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        ));
        for row in &report.rows {
            if let Some(cell) = &row.with_standby {
                out.push_str(&format!(
                    "| {} | {} | {} | {:.0}% | {:.1} / {:.1} | {:.1} / {:.1} | {:+.1} | {:.1} | {} ({}) |\n",
                    row.writers,
                    thousands(row.layer_per_second),
                    thousands(cell.per_second),
                    cell.share_of_alone * 100.0,
                    row.commit_p50_ms,
                    row.commit_p99_ms,
                    cell.commit_p50_ms,
                    cell.commit_p99_ms,
                    cell.added_p50_ms,
                    cell.average_batch,
                    percent(cell.cpu_percent),
                    percent(cell.standby_cpu_percent),
                ));
            }
        }
    }
    out.push('\n');
    out.push_str(&report.verdict.summary);
    out.push('\n');
    out
}
