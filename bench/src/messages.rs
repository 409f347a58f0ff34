//! The message benchmark (`relayd bench messages`): messages through a devnet's real processes
//! (the `relayd` executable this runs as, started as `relayd devnet`), sent and received by
//! [`crate::device`]'s opaque devices in this process, next to ceilings measured in the same
//! run ([`crate::ceilings`]). In [`ClientMode::E2ee`] the same rows run with client SDK devices
//! instead ([`crate::e2ee`]), reported in the same shape.
//!
//! Rows, on one devnet with the edges' default per-connection request limits:
//! - **W1 max**: N senders → N receivers of region 1, 1:1 chats, closed loop (each sender
//!   composes its next message when the previous one is acknowledged ✓).
//! - **W1 at 50 %**: open loop, the senders together composing at half the delivered rate of
//!   W1 max, each on a fixed schedule (message k of a sender is due at its phase + k × the
//!   interval); a message waits for its predecessor's ✓ (one in flight per chat), and its
//!   latencies count from when it was due, so a server falling behind shows in them.
//! - **W1 two regions**: the same senders, closed loop, to N receivers homed in region 2.
//! - **W4 backlog**: one sender composes [`BACKLOG_MESSAGES`] messages at once for a receiver
//!   that is offline and sends them with the client's pipeline window; then the receiver comes
//!   online: the time to store them all (✓) and the time to drain them, apart.
//! - **W3 group fan-out** (opaque mode): one sender to a group of each of
//!   [`MessagesOptions::group_members`]' sizes, closed loop with the client's pipeline window,
//!   and the first size at 50 % open loop; see [`crate::groups`].
//!
//! What each W1 row reports, over its measured window (after a warm-up): messages delivered per
//! second, counted at the receivers; ✓ latency (from composition to the send's answer) and
//! send → deliver latency (from composition, which travels inside the opaque payload, to the
//! fetch that brought the message), p50/p99/p99.9; every message sent (✓) during the row and
//! every one delivered (the row waits for the last ones after its window); request timeouts and
//! retries; the regions' transaction retries after conflicts (from their logs, see
//! [`crate::servers`]); each region's and edge's CPU time from `/proc` and delivered messages
//! per server CPU-second; this process's own CPU time (the devices share the machine).
//!
//! Every device also drains its own queue when a push says so: senders receive the delivered
//! receipts their messages cause, as a real client does.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use relay_proto::limits::GROUP_MEMBERS_MAX;
use relay_proto::wire::{ClientRequest, FetchAndAck, FetchQueue, client_request, queue_entry};
use relay_proto::{ChatId, DeviceAddress};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::BenchError;
use crate::ceilings::{self, Ceilings};
use crate::device::{
    Arrival, Composed, Device, EdgeLink, Endpoints, GroupTarget, Inbox, Payload, Pushes, RunClock,
    SendPipeline, client_message_id, drain, opaque_envelope, send_result,
};
use crate::groups::GroupRow;
use crate::limits::{
    BACKLOG_MESSAGES, BACKLOG_PIPELINE_WINDOW, BACKLOG_TIMEOUT_MS, DRAIN_TIMEOUT_MS,
    E2EE_WORKER_THREADS, GROUP_SIZES_MAX, LATENCY_SAMPLES_MAX, OPEN_LOOP_SHARE_OF_MAX,
    PAYLOAD_BYTES, POLL_INTERVAL_MS, REGISTRATION_TIMEOUT_MS, REGISTRATIONS_IN_FLIGHT_MAX,
    SENDERS_MAX, WARMUP_SECONDS_MAX, WINDOW_SECONDS_MAX,
};
use crate::measure::{CpuOf, Percentiles, Timing, cpu_time, latency_us, ratio, thousands};
use crate::servers::{ServerUsage, Servers};

/// The row numbers payloads carry.
pub(crate) const ROW_W1_MAX: u8 = 0;
pub(crate) const ROW_W1_OPEN: u8 = 1;
pub(crate) const ROW_W1_TWO_REGIONS: u8 = 2;
pub(crate) const ROW_W4: u8 = 3;
// 4 and 5 are the E2EE mode's introductions (`crate::e2ee`).
/// W3 at 50 % (the first group size).
pub(crate) const ROW_W3_OPEN: u8 = 8;
/// W3 max of the first group size; the next sizes follow.
pub(crate) const ROW_W3_MAX_FIRST: u8 = 9;
const _: () = assert!(ROW_W3_MAX_FIRST as usize + GROUP_SIZES_MAX <= u8::MAX as usize);

/// The region the senders (and the one-region receivers) are homed in.
pub(crate) const NEAR_REGION: u32 = 1;
/// The region of the receivers of the two-region row.
pub(crate) const FAR_REGION: u32 = 2;

/// What to measure.
#[derive(Debug, Clone)]
pub struct MessagesOptions {
    /// The `relayd` executable the devnet runs (the one this runs as).
    pub relayd: PathBuf,
    /// Senders (and as many receivers) of the W1 rows.
    pub senders: usize,
    /// Regions of the devnet: 1, or 2 for the two-region row.
    pub regions: u32,
    /// Measured seconds of each W1 row (after a warm-up of a quarter of it, at most 2 s).
    pub window_seconds: f64,
    /// Messages of the W4 backlog.
    pub backlog_messages: u64,
    /// Folder on the disk to run in (a temporary folder is made inside it and removed);
    /// `None`: the system's temporary folder.
    pub data: Option<PathBuf>,
    /// How the `relayd` executable was built (`release` or `debug`), for the report.
    pub build: String,
    /// Which devices send and receive.
    pub mode: ClientMode,
    /// Members (the sender's account included) of each W3 group, opaque mode only; empty: no
    /// W3 rows.
    pub group_members: Vec<usize>,
    /// A standby per region: every commit is acknowledged once the standby has it durable too.
    pub standbys: bool,
}

/// Which devices the benchmark drives. The servers cannot tell them apart: they never see
/// plaintext.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientMode {
    /// [`crate::device`]'s minimal devices, sending opaque payloads: the servers' capacity.
    #[default]
    Opaque,
    /// Real client SDK devices ([`crate::e2ee`]): Olm, a SQLite store, the outbox; what
    /// people's devices cost, the bench process's CPU included.
    E2ee,
}

impl ClientMode {
    /// The mode as the command line and the report name it.
    pub fn name(self) -> &'static str {
        match self {
            ClientMode::Opaque => "opaque",
            ClientMode::E2ee => "e2ee",
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct MessagesReport {
    /// How the servers' executable was built.
    pub build: String,
    /// Each region had a standby (every commit on two disks before its ✓).
    pub standbys: bool,
    /// Which devices sent and received.
    pub mode: ClientMode,
    /// Cores available to this process.
    pub cores: usize,
    /// Senders (and receivers) of the W1 rows.
    pub senders: usize,
    /// Regions of the devnet.
    pub regions: u32,
    /// Measured seconds of each W1 row.
    pub window_seconds: f64,
    /// Uncounted seconds before each W1 row's window.
    pub warmup_seconds: f64,
    /// Bytes of each message's opaque payload.
    pub payload_bytes: usize,
    /// Bytes of each encoded envelope.
    pub envelope_bytes: usize,
    /// The edges' per-connection sustained request limit during the run (their default).
    pub edge_requests_per_second: u32,
    /// The edges' per-connection burst during the run (their default).
    pub edge_requests_burst: u32,
    /// The folder the devnet ran in (removed afterwards).
    pub data_folder: PathBuf,
    /// The W1 rows.
    pub rows: Vec<MessageRow>,
    /// The W4 row.
    pub backlog: BacklogRow,
    /// The W3 rows (opaque mode): a closed-loop row per group size, then the first size at
    /// 50 %.
    pub groups: Vec<GroupRow>,
    /// The ceilings, measured after the devnet stopped.
    pub ceilings: Ceilings,
    /// How conflict retries are counted.
    pub retries_counted_from: String,
}

/// One W1 row.
#[derive(Debug, Clone, Serialize)]
pub struct MessageRow {
    /// `W1 max`, `W1 at 50%`, `W1 two regions`.
    pub workload: String,
    /// `closed` or `open` loop.
    pub pacing: String,
    /// Senders (each with its own receiver).
    pub senders: usize,
    /// Messages per second the senders composed (open loop only).
    pub offered_per_second: Option<f64>,
    /// Messages acknowledged ✓ during the row (warm-up and window).
    pub sent: u64,
    /// Messages the receivers got during the row, each once (the row waits for the last).
    pub delivered: u64,
    /// Messages delivered inside the window.
    pub delivered_in_window: u64,
    /// `delivered_in_window` per second.
    pub delivered_per_second: f64,
    /// This row's rate over W1 max's (the two-region row).
    pub share_of_one_region: Option<f64>,
    /// From composition to the send's answer, for answers inside the window.
    pub ack: Percentiles,
    /// From composition to arrival at the receiver, for arrivals inside the window.
    pub send_to_deliver: Percentiles,
    /// Sends that got no answer within the device's request timeout (then retried).
    pub request_timeouts: u64,
    /// Sends refused with a retryable code (then retried).
    pub retryable_refusals: u64,
    /// Sends answered "resend from k".
    pub resends: u64,
    /// Messages that arrived again after their first delivery.
    pub duplicates: u64,
    /// Messages no push announced: a periodic fetch found them.
    pub unannounced: u64,
    /// Region transactions retried after a conflict, in the window.
    pub conflict_retries: u64,
    /// Region transactions retried for another reason, in the window.
    pub other_retries: u64,
    /// CPU seconds of every region and edge process in the window.
    pub server_cpu_seconds: f64,
    /// The same per process.
    pub server_cpu_seconds_by_process: BTreeMap<String, f64>,
    /// `delivered_in_window / server_cpu_seconds`.
    pub delivered_per_server_cpu_second: f64,
    /// Bytes the regions wrote to storage in the window per message delivered in it.
    pub region_bytes_written_per_message: f64,
    /// CPU seconds of this process (every device) in the window.
    pub bench_cpu_seconds: Option<f64>,
    /// Connections the SDK devices lost during the row (and re-established by themselves);
    /// E2EE mode only: the SDK's retries and timeouts are its own business, a lost connection
    /// is what its events show of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_lost: Option<u64>,
}

/// The W4 row.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogRow {
    /// Messages composed at once for the offline receiver.
    pub messages: u64,
    /// Envelopes of the chat in flight at once.
    pub pipeline_window: usize,
    /// From composing them to the last ✓, in seconds.
    pub store_seconds: f64,
    /// `messages / store_seconds`.
    pub stored_per_second: f64,
    /// From the receiver starting to connect to the last message received, in seconds.
    pub drain_seconds: f64,
    /// `messages / drain_seconds`.
    pub drained_per_second: f64,
    /// Messages the receiver got, each once.
    pub delivered: u64,
    /// Messages that arrived again.
    pub duplicates: u64,
    /// Messages no push announced: a periodic fetch found them.
    pub unannounced: u64,
    /// Sends that timed out.
    pub request_timeouts: u64,
    /// Sends refused with a retryable code.
    pub retryable_refusals: u64,
    /// Sends answered "resend from k" (an envelope overtook its predecessor).
    pub resends: u64,
    /// Region transactions retried after a conflict (store and drain).
    pub conflict_retries: u64,
    /// Region and edge CPU seconds while storing.
    pub store_server_cpu_seconds: f64,
    /// Region and edge CPU seconds while draining.
    pub drain_server_cpu_seconds: f64,
}

/// The steps [`run`] announces.
pub fn steps(options: &MessagesOptions) -> u64 {
    let two_regions = u64::from(options.regions >= 2);
    // E2EE devices introduce themselves to their peers before the rows.
    let introductions = u64::from(options.mode == ClientMode::E2ee);
    let groups = match options.mode {
        ClientMode::Opaque => crate::groups::steps(&options.group_members),
        ClientMode::E2ee => 0,
    };
    // devnet, registration, W1 max, W1 open, [W1 two regions], W4 store, W4 drain, [W3],
    // stopping, three ceilings.
    10 + two_regions + introductions + groups
}

/// Runs the message benchmark: starts the devnet, registers the devices, runs the rows, stops
/// the devnet, measures the ceilings. `step` hears of each of the [`steps`] as it begins; when
/// `shutdown` completes first, everything started is stopped and the run fails with
/// [`BenchError::Interrupted`]. On a failure the run's folder (the devnet's logs) is kept.
pub fn run(
    options: &MessagesOptions,
    step: &(dyn Fn(&str) + Sync),
    shutdown: impl Future<Output = ()>,
) -> Result<MessagesReport, BenchError> {
    validate(options)?;
    let timing = timing(options.window_seconds);
    let folder = run_folder(options.data.as_deref())?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if options.mode == ClientMode::E2ee {
        runtime.worker_threads(E2EE_WORKER_THREADS);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .map_err(BenchError::io("starting a runtime in", folder.path()))?;
    let outcome = runtime.block_on(async {
        let mut shutdown = std::pin::pin!(shutdown);
        step("starting the devnet");
        let devnet = folder.path().join("devnet");
        let servers = tokio::select! {
            servers = Servers::start_with_standbys(
                &options.relayd,
                options.regions,
                &devnet,
                options.standbys,
            ) => servers?,
            () = &mut shutdown => return Err(BenchError::Interrupted),
        };
        let measured = async {
            match options.mode {
                ClientMode::Opaque => workloads(&servers, options, timing, step).await,
                ClientMode::E2ee => {
                    let devices = folder.path().join("devices");
                    crate::e2ee::workloads(&servers, options, timing, step, &devices).await
                }
            }
        };
        let measured = tokio::select! {
            measured = measured => measured,
            () = &mut shutdown => Err(BenchError::Interrupted),
        };
        step("stopping the devnet");
        servers.stop().await;
        let measured = measured?;
        let ceilings = tokio::select! {
            ceilings = measure_ceilings(folder.path(), options, measured.envelope_request.clone(), timing, step) => ceilings?,
            () = &mut shutdown => return Err(BenchError::Interrupted),
        };
        Ok((measured, ceilings))
    });
    drop(runtime);
    let (measured, ceilings) = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            return Err(BenchError::Kept {
                error: Box::new(error),
                folder: folder.keep(),
            });
        }
    };
    let report = MessagesReport {
        build: options.build.clone(),
        standbys: options.standbys,
        mode: options.mode,
        cores: std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        senders: options.senders,
        regions: options.regions,
        window_seconds: options.window_seconds,
        warmup_seconds: timing.warmup.as_secs_f64(),
        payload_bytes: PAYLOAD_BYTES,
        envelope_bytes: measured.envelope_bytes,
        edge_requests_per_second: relay_edge::limits::REQUESTS_PER_SECOND_DEFAULT,
        edge_requests_burst: relay_edge::limits::REQUESTS_BURST_DEFAULT,
        data_folder: folder.path().to_path_buf(),
        rows: measured.rows,
        backlog: measured.backlog,
        groups: measured.groups,
        ceilings,
        retries_counted_from: "the regions' logs: the storage engine logs every retried \
                               transaction with its cause"
            .into(),
    };
    let path = folder.path().to_owned();
    folder.close().map_err(BenchError::io("removing", &path))?;
    Ok(report)
}

fn validate(options: &MessagesOptions) -> Result<(), BenchError> {
    let seconds = options.window_seconds;
    if !(seconds > 0.0 && seconds <= WINDOW_SECONDS_MAX) {
        return Err(BenchError::Invalid(format!(
            "--seconds must be within (0, {WINDOW_SECONDS_MAX}], not {seconds}"
        )));
    }
    if options.senders == 0 || options.senders > SENDERS_MAX {
        return Err(BenchError::Invalid(format!(
            "--senders must be within 1..={SENDERS_MAX}, not {}",
            options.senders
        )));
    }
    if !(1..=2).contains(&options.regions) {
        return Err(BenchError::Invalid(format!(
            "--regions must be 1 or 2, not {}",
            options.regions
        )));
    }
    if options.group_members.len() > GROUP_SIZES_MAX
        || options
            .group_members
            .iter()
            .any(|&members| !(2..=GROUP_MEMBERS_MAX).contains(&members))
    {
        return Err(BenchError::Invalid(format!(
            "--group-members takes up to {GROUP_SIZES_MAX} group sizes, each within \
             2..={GROUP_MEMBERS_MAX} (the sender and one member at least), not {:?}",
            options.group_members
        )));
    }
    if options.backlog_messages == 0 || options.backlog_messages > BACKLOG_MESSAGES {
        return Err(BenchError::Invalid(format!(
            "the backlog must be within 1..={BACKLOG_MESSAGES} messages, not {}",
            options.backlog_messages
        )));
    }
    Ok(())
}

/// A row's warm-up and window for `window_seconds`.
fn timing(window_seconds: f64) -> Timing {
    Timing {
        warmup: Duration::from_secs_f64((window_seconds / 4.0).min(WARMUP_SECONDS_MAX)),
        window: Duration::from_secs_f64(window_seconds),
    }
}

/// A fresh temporary folder in `parent` (or the system's temporary folder).
pub(crate) fn run_folder(parent: Option<&Path>) -> Result<tempfile::TempDir, BenchError> {
    match parent {
        Some(parent) => {
            std::fs::create_dir_all(parent).map_err(BenchError::io("creating", parent))?;
            tempfile::Builder::new()
                .prefix("relayd-bench-")
                .tempdir_in(parent)
                .map_err(BenchError::io("creating a folder in", parent))
        }
        None => tempfile::Builder::new()
            .prefix("relayd-bench-")
            .tempdir()
            .map_err(BenchError::io(
                "creating a folder in",
                &std::env::temp_dir(),
            )),
    }
}

/// What the rows hand to the ceilings and the report.
pub(crate) struct Measured {
    pub(crate) rows: Vec<MessageRow>,
    pub(crate) backlog: BacklogRow,
    pub(crate) groups: Vec<GroupRow>,
    /// A W1 send, the raw QUIC ceiling's frame.
    pub(crate) envelope_request: ClientRequest,
    /// The size of its envelope.
    pub(crate) envelope_bytes: usize,
}

async fn workloads(
    servers: &Servers,
    options: &MessagesOptions,
    timing: Timing,
    step: &(dyn Fn(&str) + Sync),
) -> Result<Measured, BenchError> {
    let clock = RunClock::start();
    let recorder = Arc::new(Recorder::new(clock));
    let roots = servers.roots()?;
    let (near_edge, near_bind) = servers.edge(NEAR_REGION)?;
    let near = Arc::new(Endpoints::new(near_bind, roots.clone())?);
    let far = if options.regions >= 2 {
        let (far_edge, far_bind) = servers.edge(FAR_REGION)?;
        Some((far_edge, Arc::new(Endpoints::new(far_bind, roots)?)))
    } else {
        None
    };

    let count = options.senders;
    step(&format!(
        "registering {} devices",
        count * (2 + usize::from(far.is_some())) + 2
    ));
    let deadline = Instant::now() + Duration::from_millis(REGISTRATION_TIMEOUT_MS);
    let registered = async {
        let senders =
            register_all(&near, near_edge, "sender", count, Online::Yes(&recorder)).await?;
        let receivers =
            register_all(&near, near_edge, "receiver", count, Online::Yes(&recorder)).await?;
        let far_receivers = match &far {
            Some((edge, endpoints)) => Some(
                register_all(
                    endpoints,
                    *edge,
                    "far-receiver",
                    count,
                    Online::Yes(&recorder),
                )
                .await?,
            ),
            None => None,
        };
        let backlog_sender = register_all(
            &near,
            near_edge,
            "backlog-sender",
            1,
            Online::Yes(&recorder),
        )
        .await?;
        let backlog_receiver =
            register_all(&near, near_edge, "backlog-receiver", 1, Online::No).await?;
        Ok::<_, BenchError>((
            senders,
            receivers,
            far_receivers,
            backlog_sender,
            backlog_receiver,
        ))
    };
    let (senders, receivers, far_receivers, backlog_sender, backlog_receiver) =
        tokio::time::timeout_at(deadline.into(), registered)
            .await
            .map_err(|_| {
                BenchError::Timeout(format!(
                    "registering the devices took longer than {REGISTRATION_TIMEOUT_MS} ms"
                ))
            })??;

    let mut links: Vec<Arc<EdgeLink>> = Vec::new();
    let mut senders = senders
        .into_iter()
        .zip(&receivers)
        .map(|(sender, receiver)| {
            let link = sender.link.ok_or_else(|| {
                BenchError::Refused(format!("sender {} is offline", sender.device.address))
            })?;
            links.push(link.clone());
            let lanes = vec![Lane::new(&sender.device, &receiver.device, 1)];
            Ok(Sender {
                device: sender.device,
                link,
                lanes,
            })
        })
        .collect::<Result<Vec<Sender>, BenchError>>()?;
    if let Some(far_receivers) = &far_receivers {
        for (sender, receiver) in senders.iter_mut().zip(far_receivers) {
            let lane = Lane::new(&sender.device, &receiver.device, 1);
            sender.lanes.push(lane);
        }
        links.extend(far_receivers.iter().filter_map(|r| r.link.clone()));
    }
    links.extend(receivers.iter().filter_map(|r| r.link.clone()));

    let sample = {
        let composed = Composed {
            sender_seq: 1,
            client_message_id: client_message_id(),
            composed_at_us: clock.now_us(),
        };
        opaque_envelope(
            senders[0].device.address,
            receivers[0].device.address,
            senders[0].lanes[0].chat,
            &composed,
            ROW_W1_MAX,
            1,
        )
    };
    let envelope_bytes = sample.encoded_len();
    let envelope_request = ClientRequest {
        body: Some(client_request::Body::Send(sample)),
    };

    let context = Context {
        servers,
        recorder: recorder.clone(),
        clock,
    };
    let outcome = async {
        step("W1 max: closed loop");
        let max = w1_row(
            &context,
            &mut senders,
            0,
            ROW_W1_MAX,
            Pace::Closed,
            timing,
            1,
        )
        .await?;
        let offered = max.delivered_per_second * OPEN_LOOP_SHARE_OF_MAX;
        if offered <= 0.0 {
            return Err(BenchError::Refused(
                "W1 max delivered nothing in its window: there is no rate to take half of".into(),
            ));
        }
        step(&format!("W1 at 50%: open loop at {}/s", thousands(offered)));
        let open = w1_row(
            &context,
            &mut senders,
            0,
            ROW_W1_OPEN,
            Pace::Open {
                per_second: offered,
            },
            timing,
            1,
        )
        .await?;
        let mut rows = vec![max, open];
        if far_receivers.is_some() {
            step("W1 two regions: closed loop, region 1 → region 2");
            let mut row = w1_row(
                &context,
                &mut senders,
                1,
                ROW_W1_TWO_REGIONS,
                Pace::Closed,
                timing,
                1,
            )
            .await?;
            row.share_of_one_region = Some(ratio(
                row.delivered_per_second,
                rows[0].delivered_per_second,
            ));
            rows.push(row);
        }
        let backlog_sender = backlog_sender
            .into_iter()
            .next()
            .ok_or_else(|| BenchError::Refused("the backlog sender was not registered".into()))?;
        let backlog_receiver = backlog_receiver
            .into_iter()
            .next()
            .ok_or_else(|| BenchError::Refused("the backlog receiver was not registered".into()))?;
        if let Some(link) = &backlog_sender.link {
            links.push(link.clone());
        }
        let backlog = w4_row(
            &context,
            backlog_sender,
            backlog_receiver.device,
            &near,
            near_edge,
            options.backlog_messages,
            step,
            &mut links,
        )
        .await?;
        let groups = crate::groups::w3_rows(
            &context,
            &near,
            near_edge,
            &options.group_members,
            rows[0].delivered_per_second,
            timing,
            step,
            &mut links,
        )
        .await?;
        Ok((rows, backlog, groups))
    }
    .await;
    recorder.stopping.store(true, Ordering::SeqCst);
    for link in &links {
        link.close();
    }
    near.wait_idle().await;
    if let Some((_, endpoints)) = &far {
        endpoints.wait_idle().await;
    }
    let (rows, backlog, groups) = outcome?;
    Ok(Measured {
        rows,
        backlog,
        groups,
        envelope_request,
        envelope_bytes,
    })
}

async fn measure_ceilings(
    folder: &Path,
    options: &MessagesOptions,
    request: ClientRequest,
    timing: Timing,
    step: &(dyn Fn(&str) + Sync),
) -> Result<Ceilings, BenchError> {
    let envelope_bytes = match &request.body {
        Some(client_request::Body::Send(envelope)) => envelope.encoded_len(),
        _ => 0,
    };
    step("ceiling: raw QUIC request/response");
    let quic = ceilings::measure_quic(folder, options.senders, request, timing).await?;
    step("ceiling: raw redb and the fsync rate");
    let batch = options.senders;
    let redb_folder = folder.to_owned();
    let redb = tokio::task::spawn_blocking(move || {
        ceilings::measure_redb(&redb_folder, batch, envelope_bytes, timing)
    })
    .await
    .map_err(|error| BenchError::Refused(format!("the redb ceiling failed: {error}")))??;
    step("ceiling: Olm encrypt and decrypt");
    let olm = tokio::task::spawn_blocking(move || ceilings::measure_olm(PAYLOAD_BYTES, timing))
        .await
        .map_err(|error| BenchError::Refused(format!("the Olm ceiling failed: {error}")))??;
    Ok(Ceilings { quic, redb, olm })
}

// ---------------------------------------------------------------------------------------------
// Devices

/// Whether a registered device stays connected, draining its queue into the recorder.
pub(crate) enum Online<'a> {
    Yes(&'a Arc<Recorder>),
    No,
}

/// A registered device and, when online, its authenticated connection.
pub(crate) struct Registered {
    pub(crate) device: Device,
    pub(crate) link: Option<Arc<EdgeLink>>,
}

/// Registers `count` devices named `<prefix>-<i>` through `edge`, up to
/// [`REGISTRATIONS_IN_FLIGHT_MAX`] at once, in order. Online ones authenticate on the
/// connection they registered on and drain their queue from then on; the others close it.
pub(crate) async fn register_all(
    endpoints: &Arc<Endpoints>,
    edge: SocketAddr,
    prefix: &str,
    count: usize,
    online: Online<'_>,
) -> Result<Vec<Registered>, BenchError> {
    let recorder = match online {
        Online::Yes(recorder) => Some(recorder.clone()),
        Online::No => None,
    };
    let permits = Arc::new(Semaphore::new(REGISTRATIONS_IN_FLIGHT_MAX));
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let endpoints = endpoints.clone();
        let permits = permits.clone();
        let recorder = recorder.clone();
        let name = format!("{prefix}-{index}");
        tasks.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| BenchError::Refused("registration stopped".into()))?;
            let link = endpoints.connect(edge).await?;
            let device = Device::register(&link, &name).await?;
            let link = match recorder {
                Some(recorder) => {
                    let pushes = device.authenticate(&link, 0).await?;
                    let link = Arc::new(link);
                    let inbox = run_inbox(
                        device.address,
                        link.clone(),
                        pushes,
                        recorder,
                        Inbox::new(0),
                    );
                    tokio::spawn(inbox);
                    Some(link)
                }
                None => {
                    link.close();
                    None
                }
            };
            Ok::<_, BenchError>((index, Registered { device, link }))
        });
    }
    join_in_order(tasks, count, "registration").await
}

/// The answers of `count` tasks, each naming its index, in index order: the first failure
/// ("a {what} failed"), or a task that answered no index ("a {what} did not finish"), fails
/// them all.
pub(crate) async fn join_in_order<T: Send + 'static>(
    mut tasks: JoinSet<Result<(usize, T), BenchError>>,
    count: usize,
    what: &str,
) -> Result<Vec<T>, BenchError> {
    let mut answers: Vec<Option<T>> = (0..count).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (index, answer) =
            joined.map_err(|error| BenchError::Refused(format!("a {what} failed: {error}")))??;
        if let Some(slot) = answers.get_mut(index) {
            *slot = Some(answer);
        }
    }
    answers
        .into_iter()
        .map(|answer| answer.ok_or_else(|| BenchError::Refused(format!("a {what} did not finish"))))
        .collect()
}

/// Why an online device's inbox drains its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// It just connected: entries may wait from before.
    Connected,
    /// A push came since its last drain began.
    Push,
    /// Nothing came for [`POLL_INTERVAL_MS`]: the client library fetches then too.
    Poll,
}

/// An online device's inbox, as the client library's: drains its queue at once, then after
/// every push that came since its last drain began (a push means "fetch", whatever it names),
/// and every [`POLL_INTERVAL_MS`] without one. Every arrival goes to the recorder; messages a
/// poll found are counted apart (no push announced them). Ends when the connection closes (a
/// failure unless the run is stopping).
async fn run_inbox(
    device: DeviceAddress,
    link: Arc<EdgeLink>,
    mut pushes: watch::Receiver<Pushes>,
    recorder: Arc<Recorder>,
    mut inbox: Inbox,
) {
    let mut wake = Wake::Connected;
    loop {
        // Pushes from now on call for another drain.
        let announced = pushes.borrow_and_update().latest_queue_seq;
        let cursor_before = inbox.cursor();
        let unannounced = wake == Wake::Poll;
        // Entries a push brought along, as the client library takes them: when they follow
        // the cursor and reach every entry announced, nothing is fetched.
        let pushed = link.take_pushed(inbox.cursor());
        let mut fetch = true;
        if wake == Wake::Push && !pushed.is_empty() {
            let at = Instant::now();
            let page = relay_proto::wire::QueueBatch {
                entries: pushed,
                latest_queue_seq: announced,
                ..Default::default()
            };
            let taken = inbox.handle_batch(&page).map_err(|error| error.to_string());
            let taken = taken.and_then(|arrivals| {
                arrivals
                    .into_iter()
                    .try_for_each(|arrival| recorder.arrive(arrival, at, false))
                    .map_err(|error| error.to_string())
            });
            if let Err(error) = taken {
                if !recorder.stopping.load(Ordering::SeqCst) {
                    recorder.fail(format!("the inbox of {device}: {error}"));
                }
                return;
            }
            fetch = inbox.cursor() < announced;
        }
        let drained = drain(&link, &mut inbox, fetch, |arrival, at| {
            recorder.arrive(arrival, at, unannounced)
        })
        .await;
        if let Err(error) = drained {
            if !recorder.stopping.load(Ordering::SeqCst) {
                recorder.fail(format!("the inbox of {device}: {error}"));
            }
            return;
        }
        if unannounced && inbox.cursor() > cursor_before {
            tracing::warn!(
                %device,
                cursor_before,
                announced,
                cursor = inbox.cursor(),
                "a periodic fetch found queue entries no push announced"
            );
        }
        recorder.inbox_state(device, inbox.cursor(), announced, &link);
        let poll = tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        wake = tokio::select! {
            changed = pushes.changed() => match changed {
                Ok(()) => Wake::Push,
                // The reader ended without saying why: the connection is gone.
                Err(_) => return,
            },
            () = poll => Wake::Poll,
        };
        let closed = pushes.borrow().closed.clone();
        if let Some(reason) = closed {
            if !recorder.stopping.load(Ordering::SeqCst) {
                recorder.fail(format!("the connection of {device} closed: {reason}"));
            }
            return;
        }
    }
}

/// Whom one chat of a sender reaches.
pub(crate) enum Recipients {
    /// One peer's device, 1:1.
    Peer(DeviceAddress),
    /// Every member device of a group (W3).
    Group(GroupTarget),
}

/// One chat of a sender.
pub(crate) struct Lane {
    to: Recipients,
    chat: ChatId,
    pipeline: SendPipeline,
}

impl Lane {
    fn new(sender: &Device, peer: &Device, window: usize) -> Self {
        Self {
            to: Recipients::Peer(peer.address),
            chat: ChatId::direct(sender.address.account, peer.address.account),
            pipeline: SendPipeline::new(window),
        }
    }

    /// The chat of `group`, `window` envelopes in flight at most.
    pub(crate) fn group(group: GroupTarget, window: usize) -> Self {
        Self {
            chat: group.chat(),
            to: Recipients::Group(group),
            pipeline: SendPipeline::new(window),
        }
    }
}

/// A sending device with its chats.
pub(crate) struct Sender {
    pub(crate) device: Device,
    pub(crate) link: Arc<EdgeLink>,
    pub(crate) lanes: Vec<Lane>,
}

/// How a sender composes its messages.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// The next when one of those in flight is acknowledged (a chat keeps its pipeline window
    /// full: one message for the W1 rows, the client's window for W3), until the window ends.
    Closed,
    /// The senders together at this rate, each on its own schedule, until the window ends.
    Open { per_second: f64 },
    /// This many at once.
    Backlog { messages: u64 },
}

/// What one sender did in one row.
#[derive(Debug, Default)]
pub(crate) struct SenderTally {
    pub(crate) confirmed: u64,
    pub(crate) ack_latencies_us: Vec<u32>,
    pub(crate) timeouts: u64,
    pub(crate) retryable_refusals: u64,
    pub(crate) resends: u64,
}

impl SenderTally {
    /// Adds another sender's tally to this one (latency samples up to
    /// [`LATENCY_SAMPLES_MAX`]).
    pub(crate) fn add(&mut self, other: SenderTally) {
        self.confirmed += other.confirmed;
        self.timeouts += other.timeouts;
        self.retryable_refusals += other.retryable_refusals;
        self.resends += other.resends;
        let room = LATENCY_SAMPLES_MAX.saturating_sub(self.ack_latencies_us.len());
        self.ack_latencies_us
            .extend(other.ack_latencies_us.into_iter().take(room));
    }
}

/// Sends on `sender`'s chat `lane` as `pace` says until composing is over and every message
/// is confirmed; ✓ latencies count for answers inside `window`.
#[allow(clippy::too_many_arguments)]
async fn drive(
    sender: &mut Sender,
    lane: usize,
    row: u8,
    pace: Pace,
    first_due: Instant,
    interval: Duration,
    compose_until: Instant,
    window: (Instant, Instant),
    clock: RunClock,
) -> Result<SenderTally, BenchError> {
    let mut tally = SenderTally::default();
    let Sender {
        device,
        link,
        lanes,
    } = sender;
    let lane = lanes.get_mut(lane).ok_or_else(|| {
        BenchError::Refused(format!("sender {} has no chat {lane}", device.address))
    })?;
    let resends_before = lane.pipeline.resends();
    let mut in_flight = JoinSet::new();
    let mut composed = 0u64;
    let mut next_due = first_due;
    loop {
        let now = Instant::now();
        let composing = match pace {
            Pace::Closed => {
                while now < compose_until && lane.pipeline.unconfirmed() < lane.pipeline.window() {
                    lane.pipeline.compose(client_message_id(), clock.us_at(now));
                    composed += 1;
                }
                now < compose_until
            }
            Pace::Open { .. } => {
                while next_due <= now && next_due < compose_until {
                    lane.pipeline
                        .compose(client_message_id(), clock.us_at(next_due));
                    composed += 1;
                    next_due += interval;
                }
                next_due < compose_until
            }
            Pace::Backlog { messages } => {
                let at = clock.us_at(now);
                while composed < messages {
                    lane.pipeline.compose(client_message_id(), at);
                    composed += 1;
                }
                false
            }
        };
        while let Some(next) = lane.pipeline.poll_transmit(clock.now_ms()) {
            let envelope = match &lane.to {
                Recipients::Peer(peer) => device.envelope(*peer, lane.chat, &next, row),
                Recipients::Group(group) => device.group_envelope(group, &next, row),
            };
            let link = link.clone();
            in_flight.spawn(async move { (next.sender_seq, link.send(envelope).await) });
        }
        if !composing && in_flight.is_empty() && lane.pipeline.is_idle() {
            break;
        }
        let mut wake = lane
            .pipeline
            .poll_timeout()
            .map(|at_ms| clock.instant_at(at_ms * 1_000));
        if let Pace::Open { .. } = pace
            && composing
        {
            wake = Some(wake.map_or(next_due, |at| at.min(next_due)));
        }
        if let Pace::Closed = pace
            && composing
            && lane.pipeline.unconfirmed() < lane.pipeline.window()
        {
            // Composes at once on the next turn.
            continue;
        }
        tokio::select! {
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                let (sender_seq, outcome) = joined
                    .map_err(|error| BenchError::Refused(format!("a send task failed: {error}")))?;
                let what = || format!("{} sending message {sender_seq} of chat {}", device.address, lane.chat);
                let (result, timed_out) = send_result(outcome).map_err(|error| error.into_bench(what()))?;
                if timed_out {
                    tally.timeouts += 1;
                } else if matches!(result, crate::device::SendResult::Retry { .. }) {
                    tally.retryable_refusals += 1;
                }
                let confirmed = lane
                    .pipeline
                    .handle_outcome(sender_seq, result, clock.now_ms())
                    .map_err(|error| BenchError::Protocol(format!("{}: {error}", what())))?;
                if let Some(confirmed) = confirmed {
                    tally.confirmed += 1;
                    let answered = Instant::now();
                    if answered >= window.0
                        && answered <= window.1
                        && tally.ack_latencies_us.len() < LATENCY_SAMPLES_MAX
                    {
                        let composed_at = clock.instant_at(confirmed.composed_at_us);
                        tally
                            .ack_latencies_us
                            .push(latency_us(answered.saturating_duration_since(composed_at)));
                    }
                }
            }
            () = sleep_until_maybe(wake), if wake.is_some() => {}
            else => {
                return Err(BenchError::Refused(format!(
                    "sender {} has nothing in flight and nothing to wait for with {} messages unconfirmed",
                    device.address,
                    lane.pipeline.unconfirmed()
                )));
            }
        }
    }
    tally.resends = lane.pipeline.resends() - resends_before;
    Ok(tally)
}

pub(crate) async fn sleep_until_maybe(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Rows

/// What the rows share.
pub(crate) struct Context<'a> {
    pub(crate) servers: &'a Servers,
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) clock: RunClock,
}

/// One W1 (or W3) row: every sender on chat `lane` with `pace` through a warm-up and a
/// window, then until every message sent is delivered to each of its
/// `deliveries_per_message` devices (1 for a 1:1 chat, a group's member devices for W3).
pub(crate) async fn w1_row(
    context: &Context<'_>,
    senders: &mut Vec<Sender>,
    lane: usize,
    row: u8,
    pace: Pace,
    timing: Timing,
    deliveries_per_message: u64,
) -> Result<MessageRow, BenchError> {
    let (window_start, window_end) = timing.schedule();
    let started = Instant::now();
    context.recorder.open_row(row, window_start, window_end);
    let count = senders.len();
    let interval = match pace {
        Pace::Open { per_second } => Duration::from_secs_f64(count as f64 / per_second),
        _ => Duration::ZERO,
    };
    let mut tasks = JoinSet::new();
    for (index, mut sender) in std::mem::take(senders).into_iter().enumerate() {
        let clock = context.clock;
        // Each sender's schedule starts at its own phase of the interval.
        let first_due = started + interval.mul_f64(index as f64 / count as f64);
        tasks.spawn(async move {
            let tally = drive(
                &mut sender,
                lane,
                row,
                pace,
                first_due,
                interval,
                window_end,
                (window_start, window_end),
                clock,
            )
            .await;
            (index, sender, tally)
        });
    }
    tokio::time::sleep_until(window_start.into()).await;
    let before = context.servers.mark();
    let cpu_before = cpu_time(CpuOf::Process);
    tokio::time::sleep_until(window_end.into()).await;
    let after = context.servers.mark();
    let cpu_after = cpu_time(CpuOf::Process);
    let usage = context.servers.usage(&before, &after);

    let drain_deadline = window_end + Duration::from_millis(DRAIN_TIMEOUT_MS);
    let mut returned: Vec<Option<Sender>> = (0..count).map(|_| None).collect();
    let mut tally = SenderTally::default();
    let mut failure = None;
    loop {
        let joined = match tokio::time::timeout_at(drain_deadline.into(), tasks.join_next()).await {
            Ok(Some(joined)) => joined,
            Ok(None) => break,
            Err(_) => {
                tasks.abort_all();
                return Err(BenchError::Timeout(format!(
                    "the senders' last messages were not acknowledged within {DRAIN_TIMEOUT_MS} ms after the window"
                )));
            }
        };
        let (index, sender, sent) =
            joined.map_err(|error| BenchError::Refused(format!("a sender failed: {error}")))?;
        match sent {
            Ok(sent) => tally.add(sent),
            Err(error) => failure = Some(error),
        }
        returned[index] = Some(sender);
    }
    if let Some(error) = failure {
        return Err(error);
    }
    *senders = returned.into_iter().flatten().collect();
    context
        .recorder
        .wait_delivered(
            row,
            tally.confirmed.saturating_mul(deliveries_per_message),
            drain_deadline,
        )
        .await?;
    let arrivals = context.recorder.take_row(row);
    let bench_cpu_seconds = cpu_before
        .zip(cpu_after)
        .map(|(before, after)| after.saturating_sub(before).as_secs_f64());
    Ok(message_row(
        row,
        pace,
        count,
        tally,
        arrivals,
        usage,
        bench_cpu_seconds,
        timing,
    ))
}

/// A W1 row's report from what its senders, its receivers and the servers did.
#[allow(clippy::too_many_arguments)]
pub(crate) fn message_row(
    row: u8,
    pace: Pace,
    senders: usize,
    tally: SenderTally,
    arrivals: RowArrivals,
    usage: ServerUsage,
    bench_cpu_seconds: Option<f64>,
    timing: Timing,
) -> MessageRow {
    let window = timing.window.as_secs_f64();
    let delivered_per_second = arrivals.delivered_in_window as f64 / window;
    MessageRow {
        workload: row_name(row).into(),
        pacing: match pace {
            Pace::Open { .. } => "open".into(),
            _ => "closed".into(),
        },
        senders,
        offered_per_second: match pace {
            Pace::Open { per_second } => Some(per_second),
            _ => None,
        },
        sent: tally.confirmed,
        delivered: arrivals.delivered,
        delivered_in_window: arrivals.delivered_in_window,
        delivered_per_second,
        share_of_one_region: None,
        ack: Percentiles::of(tally.ack_latencies_us),
        send_to_deliver: Percentiles::of(arrivals.latencies_us),
        request_timeouts: tally.timeouts,
        retryable_refusals: tally.retryable_refusals,
        resends: tally.resends,
        duplicates: arrivals.duplicates,
        unannounced: arrivals.unannounced,
        conflict_retries: usage.conflict_retries,
        other_retries: usage.other_retries,
        server_cpu_seconds: usage.cpu_seconds,
        delivered_per_server_cpu_second: ratio(
            arrivals.delivered_in_window as f64,
            usage.cpu_seconds,
        ),
        region_bytes_written_per_message: ratio(
            usage.region_bytes_written as f64,
            arrivals.delivered_in_window as f64,
        ),
        server_cpu_seconds_by_process: usage.cpu_seconds_by_process,
        bench_cpu_seconds,
        connections_lost: None,
    }
}

/// The W4 row: `messages` composed at once by `sender` for `receiver` (offline), sent with the
/// client's pipeline window until all are ✓; then the receiver connects and drains them.
#[allow(clippy::too_many_arguments)]
async fn w4_row(
    context: &Context<'_>,
    sender: Registered,
    receiver: Device,
    endpoints: &Endpoints,
    edge: SocketAddr,
    messages: u64,
    step: &(dyn Fn(&str) + Sync),
    links: &mut Vec<Arc<EdgeLink>>,
) -> Result<BacklogRow, BenchError> {
    step(&format!(
        "W4 backlog: storing {} messages for an offline receiver",
        thousands(messages as f64)
    ));
    let link = sender
        .link
        .ok_or_else(|| BenchError::Refused("the backlog sender is offline".into()))?;
    let mut sender = Sender {
        lanes: vec![Lane::new(
            &sender.device,
            &receiver,
            BACKLOG_PIPELINE_WINDOW,
        )],
        device: sender.device,
        link,
    };
    let timeout = Duration::from_millis(BACKLOG_TIMEOUT_MS);
    let began = Instant::now();
    context
        .recorder
        .open_row(ROW_W4, began, began + timeout * 2);
    let before = context.servers.mark();
    let stored = tokio::time::timeout(
        timeout,
        drive(
            &mut sender,
            0,
            ROW_W4,
            Pace::Backlog { messages },
            began,
            Duration::ZERO,
            began,
            (began, began + timeout),
            context.clock,
        ),
    )
    .await
    .map_err(|_| {
        BenchError::Timeout(format!(
            "storing the backlog took longer than {BACKLOG_TIMEOUT_MS} ms"
        ))
    })??;
    let store_seconds = began.elapsed().as_secs_f64();
    let stored_mark = context.servers.mark();
    if stored.confirmed != messages {
        return Err(BenchError::Refused(format!(
            "the backlog sender confirmed {} of {messages} messages",
            stored.confirmed
        )));
    }

    step("W4 backlog: the receiver comes online and drains it");
    let online = Instant::now();
    let receiver_link = Arc::new(endpoints.connect(edge).await?);
    links.push(receiver_link.clone());
    let pushes = receiver.authenticate(&receiver_link, 0).await?;
    tokio::spawn(run_inbox(
        receiver.address,
        receiver_link,
        pushes,
        context.recorder.clone(),
        Inbox::new(0),
    ));
    context
        .recorder
        .wait_delivered(ROW_W4, messages, online + timeout)
        .await?;
    let drain_seconds = online.elapsed().as_secs_f64();
    let drained_mark = context.servers.mark();
    let store_usage: ServerUsage = context.servers.usage(&before, &stored_mark);
    let drain_usage = context.servers.usage(&stored_mark, &drained_mark);
    let arrivals = context.recorder.take_row(ROW_W4);
    Ok(BacklogRow {
        messages,
        pipeline_window: BACKLOG_PIPELINE_WINDOW,
        store_seconds,
        stored_per_second: ratio(messages as f64, store_seconds),
        drain_seconds,
        drained_per_second: ratio(messages as f64, drain_seconds),
        delivered: arrivals.delivered,
        duplicates: arrivals.duplicates,
        unannounced: arrivals.unannounced,
        request_timeouts: stored.timeouts,
        retryable_refusals: stored.retryable_refusals,
        resends: stored.resends,
        conflict_retries: store_usage.conflict_retries + drain_usage.conflict_retries,
        store_server_cpu_seconds: store_usage.cpu_seconds,
        drain_server_cpu_seconds: drain_usage.cpu_seconds,
    })
}

/// The name of a row, as the report prints it.
pub(crate) fn row_name(row: u8) -> &'static str {
    match row {
        ROW_W1_MAX => "W1 max",
        ROW_W1_OPEN => "W1 at 50%",
        ROW_W1_TWO_REGIONS => "W1 two regions",
        ROW_W4 => "W4 backlog",
        ROW_W3_OPEN => "W3 at 50%",
        row if row >= ROW_W3_MAX_FIRST => "W3 max",
        _ => "introductions",
    }
}

// ---------------------------------------------------------------------------------------------
// What the receivers saw

/// Every arrival of the run, by row, and the first failure of a device's inbox (the opaque
/// devices' or the SDK devices' of [`crate::e2ee`]).
pub(crate) struct Recorder {
    clock: RunClock,
    state: Mutex<Recording>,
    changed: Notify,
    /// Set once the run closes its connections: inboxes ending then are not failures.
    pub(crate) stopping: AtomicBool,
}

#[derive(Default)]
struct Recording {
    rows: BTreeMap<u8, RowArrivals>,
    receipts: u64,
    failure: Option<String>,
    /// Connections the SDK devices lost so far.
    connections_lost: u64,
    /// Each online device's queue cursor and the highest queue sequence a push announced,
    /// after its last drain (a device told of more than it fetched missed a fetch), and its
    /// connection (to look into its queue when messages are missing).
    inboxes: BTreeMap<DeviceAddress, (u64, u64, Arc<EdgeLink>)>,
}

/// What the receivers got of one row's messages.
#[derive(Debug, Default)]
pub(crate) struct RowArrivals {
    window: Option<(Instant, Instant)>,
    pub(crate) delivered: u64,
    pub(crate) delivered_in_window: u64,
    latencies_us: Vec<u32>,
    pub(crate) duplicates: u64,
    /// Messages found by a periodic fetch: no push announced them.
    pub(crate) unannounced: u64,
}

impl Recorder {
    pub(crate) fn new(clock: RunClock) -> Self {
        Self {
            clock,
            state: Mutex::new(Recording::default()),
            changed: Notify::new(),
            stopping: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Starts counting `row`'s arrivals; those inside the window also count as in it.
    pub(crate) fn open_row(&self, row: u8, window_start: Instant, window_end: Instant) {
        self.lock().rows.insert(
            row,
            RowArrivals {
                window: Some((window_start, window_end)),
                ..RowArrivals::default()
            },
        );
    }

    /// One arrival at a device, at `at`; `unannounced` when a periodic fetch found it.
    fn arrive(&self, arrival: Arrival, at: Instant, unannounced: bool) -> Result<(), BenchError> {
        let payload = |ciphertext: &[u8]| {
            Payload::decode(ciphertext).ok_or_else(|| {
                BenchError::Protocol("a message whose payload no bench device wrote".into())
            })
        };
        match arrival {
            Arrival::Message { ciphertext, .. } => {
                self.message(payload(&ciphertext)?, at, unannounced);
            }
            Arrival::Duplicate { ciphertext, .. } => self.duplicate(payload(&ciphertext)?.row),
            Arrival::Receipts(count) => {
                self.lock().receipts += count;
                self.changed.notify_waiters();
            }
        }
        Ok(())
    }

    /// A message of `payload.row` arrived at `at` for the first time; `unannounced` when a
    /// periodic fetch found it.
    pub(crate) fn message(&self, payload: Payload, at: Instant, unannounced: bool) {
        {
            let mut state = self.lock();
            let row = state.rows.entry(payload.row).or_default();
            row.delivered += 1;
            row.unannounced += u64::from(unannounced);
            if let Some((start, end)) = row.window
                && at >= start
                && at <= end
            {
                row.delivered_in_window += 1;
                if row.latencies_us.len() < LATENCY_SAMPLES_MAX {
                    let composed_at = self.clock.instant_at(payload.composed_at_us);
                    row.latencies_us
                        .push(latency_us(at.saturating_duration_since(composed_at)));
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// A message of `row` arrived again.
    pub(crate) fn duplicate(&self, row: u8) {
        self.lock().rows.entry(row).or_default().duplicates += 1;
        self.changed.notify_waiters();
    }

    /// An SDK device lost its connection (it reconnects by itself).
    pub(crate) fn connection_lost(&self) {
        self.lock().connections_lost += 1;
    }

    /// Connections the SDK devices lost so far.
    pub(crate) fn connections_lost(&self) -> u64 {
        self.lock().connections_lost
    }

    /// A device's queue cursor and the highest queue sequence announced to it, after a drain.
    fn inbox_state(
        &self,
        device: DeviceAddress,
        cursor: u64,
        latest_pushed: u64,
        link: &Arc<EdgeLink>,
    ) {
        self.lock()
            .inboxes
            .insert(device, (cursor, latest_pushed, link.clone()));
    }

    /// Looks (without acknowledging) into the queue of every online device after its cursor:
    /// the devices with entries waiting that no push announced.
    async fn unannounced(&self) -> Vec<String> {
        let inboxes: Vec<(DeviceAddress, u64, u64, Arc<EdgeLink>)> = self
            .lock()
            .inboxes
            .iter()
            .map(|(device, (cursor, pushed, link))| (*device, *cursor, *pushed, link.clone()))
            .collect();
        let mut waiting = Vec::new();
        for (device, cursor, pushed, link) in inboxes {
            let probe = FetchAndAck {
                ack: None,
                fetch: Some(FetchQueue {
                    after_queue_seq: cursor,
                    limit: 1,
                }),
            };
            match link.fetch(probe).await {
                Ok(batch) if !batch.entries.is_empty() => waiting.push(format!(
                    "{device} (fetched to {cursor}, told of {pushed}, {} waits: {})",
                    batch.entries[0].queue_seq,
                    match &batch.entries[0].item {
                        Some(queue_entry::Item::Message(message)) =>
                            format!("message {} of {:?}", message.sender_seq, message.sender),
                        Some(queue_entry::Item::Messages(batch)) => format!(
                            "{} messages of {:?}",
                            batch.messages.len(),
                            batch.messages.first().map(|message| &message.sender)
                        ),
                        Some(queue_entry::Item::Receipt(_)) => "a receipt".to_owned(),
                        Some(queue_entry::Item::Receipts(batch)) =>
                            format!("{} receipts", batch.receipts.len()),
                        None => "nothing".to_owned(),
                    }
                )),
                Ok(_) => {}
                Err(error) => waiting.push(format!(
                    "{device}: {}",
                    error.into_bench("looking into its queue".into())
                )),
            }
        }
        waiting
    }

    /// A device's inbox failed: every wait fails with this.
    pub(crate) fn fail(&self, message: String) {
        self.lock().failure.get_or_insert(message);
        self.changed.notify_waiters();
    }

    /// Receipts the senders fetched so far, over the run.
    pub(crate) fn receipts(&self) -> u64 {
        self.lock().receipts
    }

    /// Waits until the senders fetched `count` receipts over the run; `false` at `deadline`.
    pub(crate) async fn wait_receipts(&self, count: u64, deadline: Instant) -> bool {
        loop {
            let changed = self.changed.notified();
            if self.lock().receipts >= count {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                return self.lock().receipts >= count;
            }
        }
    }

    /// Waits until `count` messages of `row` were delivered, failing at `deadline` or when an
    /// inbox failed.
    pub(crate) async fn wait_delivered(
        &self,
        row: u8,
        count: u64,
        deadline: Instant,
    ) -> Result<(), BenchError> {
        loop {
            let changed = self.changed.notified();
            {
                let state = self.lock();
                if let Some(failure) = &state.failure {
                    return Err(BenchError::Refused(failure.clone()));
                }
                let delivered = state.rows.get(&row).map_or(0, |row| row.delivered);
                if delivered >= count {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                let delivered = self.lock().rows.get(&row).map_or(0, |row| row.delivered);
                let waiting = self.unannounced().await;
                return Err(BenchError::Timeout(format!(
                    "{}: {delivered} of {count} messages acknowledged ✓ were delivered by the \
                     deadline; entries waiting beyond a device's cursor: {}",
                    row_name(row),
                    if waiting.is_empty() {
                        "none".to_owned()
                    } else {
                        waiting.join(", ")
                    }
                )));
            }
        }
    }

    /// `row`'s arrivals, no longer counted.
    pub(crate) fn take_row(&self, row: u8) -> RowArrivals {
        self.lock().rows.remove(&row).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// The report

impl MessagesReport {
    /// The report as Markdown tables with their context lines.
    pub fn table(&self) -> String {
        let payloads = match self.mode {
            ClientMode::Opaque => format!("{} B opaque payloads", self.payload_bytes),
            ClientMode::E2ee => format!(
                "{} B texts end-to-end encrypted (Olm) by client SDK devices, each with its own \
                 SQLite store",
                self.payload_bytes
            ),
        };
        let mut out = format!(
            "relayd bench messages --mode {} ({} build): {} senders → {} receivers, 1:1, \
             {payloads} (envelopes of {} B)\n\
             {} cores; {:.1} s measured per W1 row after {:.2} s warm-up; a devnet of {} \
             region(s){} in {}; edges' per-connection request limits {}/s, bursts of {}\n\n",
            self.mode.name(),
            self.build,
            self.senders,
            self.senders,
            self.envelope_bytes,
            self.cores,
            self.window_seconds,
            self.warmup_seconds,
            self.regions,
            if self.standbys {
                ", each with a standby (a ✓ means two disks)"
            } else {
                ""
            },
            self.data_folder.display(),
            thousands(f64::from(self.edge_requests_per_second)),
            thousands(f64::from(self.edge_requests_burst)),
        );
        out.push_str(
            "| workload | delivered/s | ✓ p50 / p99 / p99.9 ms | send→deliver p50 / p99 / p99.9 ms \
             | sent | delivered | timeouts | retries: conflicts / other | server CPU s | \
             delivered per server CPU-s | region bytes written per message | bench CPU s |\n\
             |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for row in &self.rows {
            let workload = match (row.offered_per_second, row.share_of_one_region) {
                (Some(offered), _) => format!(
                    "{} ({} loop, {}/s offered)",
                    row.workload,
                    row.pacing,
                    thousands(offered)
                ),
                _ => format!("{} ({} loop)", row.workload, row.pacing),
            };
            let rate = match row.share_of_one_region {
                Some(share) => format!(
                    "{} ({:.0}% of one region)",
                    thousands(row.delivered_per_second),
                    share * 100.0
                ),
                None => thousands(row.delivered_per_second),
            };
            out.push_str(&format!(
                "| {workload} | {rate} | {} | {} | {} | {} | {} | {} / {} | {:.1} | {} | {} | {} |\n",
                row.ack.cell(),
                row.send_to_deliver.cell(),
                thousands(row.sent as f64),
                thousands(row.delivered as f64),
                row.request_timeouts,
                row.conflict_retries,
                row.other_retries,
                row.server_cpu_seconds,
                thousands(row.delivered_per_server_cpu_second),
                thousands(row.region_bytes_written_per_message),
                row.bench_cpu_seconds
                    .map_or_else(|| "n/a".to_owned(), |seconds| format!("{seconds:.1}")),
            ));
        }
        let unannounced: Vec<String> = self
            .rows
            .iter()
            .chain(self.groups.iter().map(|row| &row.measured))
            .filter(|row| row.unannounced > 0)
            .map(|row| format!("{} in {}", row.unannounced, row.workload))
            .chain(
                (self.backlog.unannounced > 0)
                    .then(|| format!("{} in W4 backlog", self.backlog.unannounced)),
            )
            .collect();
        match self.mode {
            ClientMode::Opaque => out.push_str(&format!(
                "\nMessages no push announced (found by the devices' {} s poll, as the client \
                 library's): {}\n",
                POLL_INTERVAL_MS / 1_000,
                if unannounced.is_empty() {
                    "none".to_owned()
                } else {
                    unannounced.join(", ")
                }
            )),
            ClientMode::E2ee => {
                let lost: Vec<String> = self
                    .rows
                    .iter()
                    .map(|row| format!("{} in {}", row.connections_lost.unwrap_or(0), row.workload))
                    .collect();
                out.push_str(&format!(
                    "\nThe SDK retries, reconnects and polls by itself (timeouts and retries are \
                     not seen from outside it); connections its devices lost and re-established: \
                     {}. Bench CPU is this process: every device's Olm, SQLite and QUIC.\n",
                    lost.join(", ")
                ));
            }
        }
        let backlog = &self.backlog;
        out.push_str(&format!(
            "\nW4 backlog: one sender composed {} messages for an offline receiver ({} in \
             flight): all stored ✓ in {:.2} s ({}/s, server CPU {:.1} s); the receiver came \
             online and received them in {:.2} s ({}/s, server CPU {:.1} s); {} delivered, {} \
             duplicates, {}{} conflict retries\n",
            thousands(backlog.messages as f64),
            backlog.pipeline_window,
            backlog.store_seconds,
            thousands(backlog.stored_per_second),
            backlog.store_server_cpu_seconds,
            backlog.drain_seconds,
            thousands(backlog.drained_per_second),
            backlog.drain_server_cpu_seconds,
            thousands(backlog.delivered as f64),
            backlog.duplicates,
            match self.mode {
                ClientMode::Opaque => format!(
                    "{} timeouts, {} resends, ",
                    backlog.request_timeouts, backlog.resends
                ),
                // The SDK retries inside: its timeouts and resends are not seen from outside.
                ClientMode::E2ee => String::new(),
            },
            backlog.conflict_retries,
        ));
        out.push_str(&crate::groups::table(
            &self.groups,
            self.payload_bytes,
            self.rows
                .first()
                .map_or(0.0, |max| max.delivered_per_second),
        ));
        let ceilings = &self.ceilings;
        out.push_str(&format!(
            "\nCeilings, measured in the same run after the devnet stopped, each alone:\n\
             - raw QUIC request/response (in-process echo over loopback QUIC+TLS, {} requesters \
             each on its own connection, {} B frames, one stream per request): {}/s, p50 / p99 \
             / p99.9 {} ms\n\
             - raw redb ({} keys per message with {} B envelopes, {} messages per fsync): {}/s; \
             fsync rate {}/s\n\
             - Olm (vodozemac, {} B messages on an established session, one thread): encrypt \
             {}/s, decrypt {}/s\n",
            ceilings.quic.requesters,
            ceilings.quic.request_bytes,
            thousands(ceilings.quic.per_second),
            ceilings.quic.latency.cell(),
            ceilings.redb.keys_per_message,
            ceilings.redb.envelope_bytes,
            ceilings.redb.batch,
            thousands(ceilings.redb.per_second),
            thousands(ceilings.redb.fsync_per_second),
            ceilings.olm.payload_bytes,
            thousands(ceilings.olm.encrypt_per_second),
            thousands(ceilings.olm.decrypt_per_second),
        ));
        if let Some(max) = self.rows.first() {
            out.push_str(&format!(
                "\nW1 max against them: {:.1}% of raw QUIC request/response, {:.1}% of raw \
                 redb; server CPU in its window by process: {}\n",
                ratio(max.delivered_per_second, ceilings.quic.per_second) * 100.0,
                ratio(max.delivered_per_second, ceilings.redb.per_second) * 100.0,
                max.server_cpu_seconds_by_process
                    .iter()
                    .map(|(name, seconds)| format!("{name} {seconds:.1} s"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        out.push_str(&format!(
            "Retries are counted from {}. The open loop's latencies count from when each \
             message was due.\n",
            self.retries_counted_from,
        ));
        out
    }
}
