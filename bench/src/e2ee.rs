//! The E2EE mode of the message benchmark (`relayd bench messages --mode e2ee`): the rows of
//! [`crate::messages`] with every device a real [`relay_client::Device`] (the client SDK: Olm
//! sessions, a SQLite store per device with its outbox, the SDK's own connection, retries and
//! fetches), each in its own data directory under the run's folder, registered through the
//! devnet's locator from its region's client address (127.0.k.x) and trusting the devnet's CA,
//! then opened [`Mode::Live`]. The servers cannot tell these devices from the opaque ones; what
//! changes is the client side: the bench process's CPU now holds every device's Olm, SQLite
//! and QUIC work, as a phone's would.
//!
//! - **Introductions** first: each sender's first text to each of its peers (a name lookup, a
//!   claimed one-time key, an Olm pre-key message) and the peer's answer, so that the rows
//!   measure ongoing chats on established sessions, not first contact.
//! - **W1 max**: each sender calls [`Device::send`] for its next text when its previous one
//!   is ✓ ([`Tick::Sent`] on its event stream); ✓ latency runs from that call to the tick.
//! - **W1 at 50 %**: each sender calls `send` on its fixed schedule (the SDK's outbox then
//!   keeps as many of the chat's envelopes in flight as it wants); latencies count from when a
//!   text was due.
//! - **W1 two regions** and **W4 backlog** as in the opaque mode; the backlog receiver was
//!   introduced, then closed, and is opened again to drain: its time covers opening the store,
//!   connecting, fetching, decrypting and storing, which the SDK does together.
//!
//! Every text is [`PAYLOAD_BYTES`] bytes ([`Text`]): the row, the sender's number for it in
//! the row and the composition time on the run's clock, so the receiver measures send →
//! deliver and checks sender FIFO and duplicates with one counter per peer and row. Each
//! device's events are read by its own task ([`follow`]): messages go to the shared
//! [`Recorder`], ticks to the sender's [`Acks`]; an undecryptable message, a failed send, a
//! rolled-back device or a device that stops fails the run.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use rand::Rng;
use relay_client::content::Content;
use relay_client::crypto::Crypto;
use relay_client::store::OutboxRow;
use relay_client::{Device, Direction, Event, Events, Mode, OpenOptions, Tick};
use relay_proto::wire::{ClientRequest, Envelope, client_request};
use relay_proto::{AccountId, ChatId, DeviceAddress, DeviceId};
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet, LocalSet};

use crate::BenchError;
use crate::device::{Payload, RunClock, client_message_id};
use crate::limits::{
    BACKLOG_TIMEOUT_MS, CLOSES_IN_FLIGHT_MAX, DEVICES_CLOSE_TIMEOUT_MS, DRAIN_TIMEOUT_MS,
    INTRODUCTIONS_TIMEOUT_MS, LATENCY_SAMPLES_MAX, OPEN_LOOP_SHARE_OF_MAX, PAYLOAD_BYTES,
    REGISTRATION_TIMEOUT_MS, REGISTRATIONS_IN_FLIGHT_MAX,
};
use crate::measure::{CpuOf, Timing, cpu_time, latency_us, ratio, thousands};
use crate::messages::{
    BacklogRow, Context, FAR_REGION, Measured, MessageRow, MessagesOptions, NEAR_REGION, Pace,
    ROW_W1_MAX, ROW_W1_OPEN, ROW_W1_TWO_REGIONS, ROW_W4, Recorder, SenderTally, message_row,
    sleep_until_maybe,
};
use crate::servers::Servers;

/// The row of a sender's first text to a peer.
const ROW_INTRODUCTION: u8 = 4;
/// The row of the peer's answer to it.
const ROW_INTRODUCTION_ANSWER: u8 = 5;

/// The word every bench text starts with.
const TEXT_PREFIX: &str = "relay-bench";
/// The longest header of a text: the prefix, the row, the number and the time, each after a
/// space, and a space before the filler.
const TEXT_HEADER_BYTES_MAX: usize = TEXT_PREFIX.len() + 1 + 3 + 1 + 20 + 1 + 20 + 1;
const _: () = assert!(TEXT_HEADER_BYTES_MAX <= PAYLOAD_BYTES);

// ---------------------------------------------------------------------------------------------
// The text

/// What a bench text carries, then lowercase filler up to [`PAYLOAD_BYTES`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Text {
    /// The benchmark row that sent it.
    pub row: u8,
    /// The sender's number for it in the row and chat, from 1.
    pub seq: u64,
    /// When it was composed, in µs on the run's [`RunClock`].
    pub composed_at_us: u64,
}

impl Text {
    /// The text: exactly [`PAYLOAD_BYTES`] bytes.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "{TEXT_PREFIX} {} {} {} ",
            self.row, self.seq, self.composed_at_us
        );
        let mut rng = rand::rng();
        while text.len() < PAYLOAD_BYTES {
            text.push(char::from(rng.random_range(b'a'..=b'z')));
        }
        text
    }

    /// Reads a text back; `None` for a text no bench device wrote.
    pub fn decode(text: &str) -> Option<Self> {
        if text.len() != PAYLOAD_BYTES {
            return None;
        }
        let mut words = text.split(' ');
        if words.next()? != TEXT_PREFIX {
            return None;
        }
        Some(Self {
            row: words.next()?.parse().ok()?,
            seq: words.next()?.parse().ok()?,
            composed_at_us: words.next()?.parse().ok()?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// ✓ of one sender

/// The ✓ of one sending device's texts, as its event stream reports them, for the task that
/// sends them.
#[derive(Debug, Default)]
pub struct Acks {
    state: Mutex<AcksState>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct AcksState {
    /// Texts sent and not yet ✓: message id → composition time (µs on the run's clock).
    waiting: HashMap<String, u64>,
    /// ✓ of ids not waiting yet: the tick can overtake `send` handing the id back. Every id
    /// a sender sends is waited for, so this holds a few entries at most.
    early: HashMap<String, Instant>,
    /// ✓ since the sender last looked: (composition time, when the tick came).
    confirmed: Vec<(u64, Instant)>,
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, AcksState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The text `id`, composed at `composed_at_us`, waits for its ✓.
    pub fn wait_for(&self, id: String, composed_at_us: u64) {
        let mut state = self.lock();
        match state.early.remove(&id) {
            Some(at) => {
                state.confirmed.push((composed_at_us, at));
                drop(state);
                self.changed.notify_one();
            }
            None => {
                state.waiting.insert(id, composed_at_us);
            }
        }
    }

    /// A tick of message `id` came at `at`. The first at or past ✓ confirms it (a delivered
    /// tick can come first when the send's answer is slower than the receiver; then no sent
    /// tick follows, since ticks only move forward).
    pub fn tick(&self, id: &str, tick: Tick, at: Instant) {
        if tick == Tick::Pending {
            return;
        }
        let mut state = self.lock();
        match (state.waiting.remove(id), tick) {
            (Some(composed_at_us), _) => state.confirmed.push((composed_at_us, at)),
            (None, Tick::Sent) => {
                state.early.insert(id.to_owned(), at);
            }
            // A later tick of a text already confirmed.
            (None, Tick::Pending | Tick::Delivered | Tick::Read) => return,
        }
        drop(state);
        self.changed.notify_one();
    }

    /// The ✓ since the last call, and how many texts still wait.
    pub fn take_confirmed(&self) -> (Vec<(u64, Instant)>, usize) {
        let mut state = self.lock();
        (std::mem::take(&mut state.confirmed), state.waiting.len())
    }

    /// Waits until something changes.
    async fn changed(&self) {
        self.changed.notified().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Devices

/// An SDK device of the run: its name and data directory, and its handle while it is open.
struct Party {
    name: String,
    dir: PathBuf,
    region: u32,
    open: Option<Opened>,
}

/// An open SDK device and the task reading its events.
struct Opened {
    device: Device,
    /// Set before the run closes the device: its events ending then is not a failure.
    closing: Arc<AtomicBool>,
    follower: JoinHandle<()>,
}

/// A sender: its device, its ✓ and its peers' names (the near receiver, then the far one).
struct Sender {
    name: String,
    device: Device,
    acks: Arc<Acks>,
    peers: Vec<String>,
}

/// What a device's event task needs.
struct Follow {
    name: String,
    recorder: Arc<Recorder>,
    clock: RunClock,
    /// The sender's ✓, for a sending device.
    acks: Option<Arc<Acks>>,
    /// The device itself, for a receiver: it answers each introduction.
    answer_with: Option<Device>,
    closing: Arc<AtomicBool>,
}

/// Registers every party through the devnet's locator from its region's client address, up
/// to [`REGISTRATIONS_IN_FLIGHT_MAX`] at once. (The SDK's registration reports to a callback
/// that need not be `Send`, so they run on this thread, interleaved.)
async fn register_all(servers: &Servers, parties: &[Party]) -> Result<(), BenchError> {
    let mut binds: BTreeMap<u32, IpAddr> = BTreeMap::new();
    for party in parties {
        if let Entry::Vacant(entry) = binds.entry(party.region) {
            entry.insert(servers.edge(party.region)?.1);
        }
    }
    let local = LocalSet::new();
    local
        .run_until(async {
            let permits = Arc::new(Semaphore::new(REGISTRATIONS_IN_FLIGHT_MAX));
            let mut tasks = JoinSet::new();
            for party in parties {
                let overrides = relay_client::Overrides {
                    locator: Some(servers.locator()),
                    bind_ip: binds.get(&party.region).copied(),
                    ca_path: Some(servers.ca().to_path_buf()),
                    device_key: None,
                };
                let (name, dir) = (party.name.clone(), party.dir.clone());
                let permits = permits.clone();
                tasks.spawn_local(async move {
                    let _permit = permits
                        .acquire_owned()
                        .await
                        .map_err(|_| BenchError::Refused("registration stopped".into()))?;
                    relay_client::register(&dir, &name, overrides, "", &mut |_| {})
                        .await
                        .map_err(BenchError::client(format!("registering {name}")))?;
                    Ok::<_, BenchError>(())
                });
            }
            while let Some(joined) = tasks.join_next().await {
                joined.map_err(|error| {
                    BenchError::Refused(format!("a registration failed: {error}"))
                })??;
            }
            Ok(())
        })
        .await
}

/// Opens `party`'s device live, with a task reading its events: ✓ to `acks` for a sender,
/// and an answer to each introduction when `answers`.
fn open(
    party: &mut Party,
    recorder: &Arc<Recorder>,
    clock: RunClock,
    acks: Option<Arc<Acks>>,
    answers: bool,
) -> Result<Device, BenchError> {
    let options = OpenOptions {
        mode: Mode::Live,
        ..OpenOptions::default()
    };
    let (device, events) = Device::open(&party.dir, options)
        .map_err(BenchError::client(format!("opening {}", party.name)))?;
    let closing = Arc::new(AtomicBool::new(false));
    let follow = Follow {
        name: party.name.clone(),
        recorder: recorder.clone(),
        clock,
        acks,
        answer_with: answers.then(|| device.clone()),
        closing: closing.clone(),
    };
    let follower = tokio::spawn(run_follow(follow, events));
    party.open = Some(Opened {
        device: device.clone(),
        closing,
        follower,
    });
    Ok(device)
}

/// Waits until every device of `devices` is connected and authenticated, failing at
/// `deadline`.
async fn connect_all(devices: &[(String, Device)], deadline: Instant) -> Result<(), BenchError> {
    let mut tasks = JoinSet::new();
    for (name, device) in devices {
        let (name, device) = (name.clone(), device.clone());
        tasks.spawn(async move {
            device
                .connect()
                .await
                .map_err(BenchError::client(format!("connecting {name}")))
        });
    }
    loop {
        match tokio::time::timeout_at(deadline.into(), tasks.join_next()).await {
            Ok(Some(joined)) => joined
                .map_err(|error| BenchError::Refused(format!("a connection failed: {error}")))??,
            Ok(None) => return Ok(()),
            Err(_) => {
                return Err(BenchError::Timeout(format!(
                    "{} devices were not connected by the deadline",
                    tasks.len()
                )));
            }
        }
    }
}

/// Closes every open party (each says goodbye to its edge), up to [`CLOSES_IN_FLIGHT_MAX`] at
/// once, within [`DEVICES_CLOSE_TIMEOUT_MS`]; a device not closed by then is dropped (its task
/// stops at once) and said so in the log.
async fn close_all(parties: &mut [Party]) {
    let permits = Arc::new(Semaphore::new(CLOSES_IN_FLIGHT_MAX));
    let mut tasks = JoinSet::new();
    for party in parties.iter_mut() {
        if let Some(opened) = party.open.take() {
            opened.closing.store(true, Ordering::SeqCst);
            let permits = permits.clone();
            let name = party.name.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                if let Err(error) = opened.device.close().await {
                    tracing::warn!(%name, %error, "closing a bench device failed");
                }
                let _ = opened.follower.await;
            });
        }
    }
    let deadline = Instant::now() + Duration::from_millis(DEVICES_CLOSE_TIMEOUT_MS);
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline.into(), tasks.join_next()).await {}
    if !tasks.is_empty() {
        tracing::warn!(
            devices = tasks.len(),
            "bench devices did not close within {DEVICES_CLOSE_TIMEOUT_MS} ms; dropped"
        );
        tasks.abort_all();
    }
}

/// A device's event task: messages to the recorder (checking each peer's texts of a row come
/// numbered 1, 2, 3, …; one again is a duplicate), ticks to the sender's [`Acks`], an answer
/// to each introduction for a receiver. Ends with the event stream; a failure of the device,
/// or its end before the run closes it, fails the run.
async fn run_follow(follow: Follow, mut events: Events) {
    let Follow {
        name,
        recorder,
        clock,
        acks,
        answer_with,
        closing,
    } = follow;
    let ending = || closing.load(Ordering::SeqCst) || recorder.stopping.load(Ordering::SeqCst);
    // The last number seen of each peer's texts of each row.
    let mut last_seq: BTreeMap<(String, u8), u64> = BTreeMap::new();
    while let Some(event) = events.next().await {
        let at = Instant::now();
        match event {
            Event::Message {
                direction: Direction::In,
                from,
                text,
                ..
            } => {
                let Some(text) = Text::decode(&text) else {
                    recorder.fail(format!("{name} got a text no bench device wrote: {text:?}"));
                    continue;
                };
                let last = last_seq.entry((from.clone(), text.row)).or_insert(0);
                if text.seq <= *last {
                    recorder.duplicate(text.row);
                    continue;
                }
                if text.seq != *last + 1 {
                    recorder.fail(format!(
                        "{name} got text {} of {from} in row {} after text {last}: out of order \
                         or one lost",
                        text.seq, text.row
                    ));
                    continue;
                }
                *last = text.seq;
                tracing::trace!(%name, %from, row = text.row, seq = text.seq, "received");
                let payload = Payload {
                    row: text.row,
                    composed_at_us: text.composed_at_us,
                };
                recorder.message(payload, at, false);
                if text.row == ROW_INTRODUCTION
                    && let Some(device) = &answer_with
                {
                    let answer = Text {
                        row: ROW_INTRODUCTION_ANSWER,
                        seq: 1,
                        composed_at_us: clock.now_us(),
                    };
                    // Its own task: `send` waits for the device, which may be waiting for this
                    // task to take its next event.
                    let (device, recorder, name) = (device.clone(), recorder.clone(), name.clone());
                    tokio::spawn(async move {
                        if let Err(error) = device.send(&from, &answer.encode()).await {
                            recorder.fail(format!("{name} answering {from}: {error}"));
                        }
                    });
                }
            }
            Event::Tick { id, tick, .. } => {
                if let Some(acks) = &acks {
                    acks.tick(&id, tick, at);
                }
            }
            Event::Undecryptable { from, reason, .. } => {
                recorder.fail(format!(
                    "{name} could not decrypt a text of {from}: {reason}"
                ));
            }
            Event::Failed { peer, reason, .. } => {
                recorder.fail(format!("{name} gave up a text to {peer}: {reason}"));
            }
            Event::RolledBack { reason } => {
                recorder.fail(format!("{name} was refused as rolled back: {reason}"));
            }
            Event::Disconnected { reason, .. } if !ending() => {
                tracing::debug!(%name, %reason, "a bench device lost its connection");
                recorder.connection_lost();
            }
            _ => {}
        }
    }
    if !ending() {
        recorder.fail(format!("the device {name} stopped"));
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// The E2EE mode's rows on `servers` (see the module doc), with the devices' data directories
/// under `devices`.
pub(crate) async fn workloads(
    servers: &Servers,
    options: &MessagesOptions,
    timing: Timing,
    step: &(dyn Fn(&str) + Sync),
    devices: &Path,
) -> Result<Measured, BenchError> {
    let clock = RunClock::start();
    let recorder = Arc::new(Recorder::new(clock));
    let count = options.senders;
    let two_regions = options.regions >= 2;
    let party = |name: String, region: u32| Party {
        dir: devices.join(&name),
        name,
        region,
        open: None,
    };
    // Senders, receivers, [far receivers], the backlog's sender and receiver.
    let mut parties: Vec<Party> = Vec::new();
    for prefix in ["sender", "receiver"] {
        parties.extend((0..count).map(|index| party(format!("{prefix}-{index}"), NEAR_REGION)));
    }
    if two_regions {
        parties.extend((0..count).map(|index| party(format!("far-receiver-{index}"), FAR_REGION)));
    }
    parties.push(party("backlog-sender".into(), NEAR_REGION));
    parties.push(party("backlog-receiver".into(), NEAR_REGION));
    std::fs::create_dir_all(devices).map_err(BenchError::io("creating", devices))?;

    step(&format!(
        "registering {} client SDK devices (Olm keys, a SQLite store each)",
        parties.len()
    ));
    let deadline = Instant::now() + Duration::from_millis(REGISTRATION_TIMEOUT_MS);
    tokio::time::timeout_at(deadline.into(), register_all(servers, &parties))
        .await
        .map_err(|_| {
            BenchError::Timeout(format!(
                "registering the devices took longer than {REGISTRATION_TIMEOUT_MS} ms"
            ))
        })??;
    tracing::debug!(devices = parties.len(), "registered");

    let outcome = async {
        let (mut senders, mut backlog_sender) =
            open_all(&mut parties, &recorder, clock, count, two_regions, deadline).await?;
        introduce(&recorder, clock, &senders, &backlog_sender, step).await?;
        // The backlog's receiver goes offline until its row drains.
        let backlog_receiver = parties
            .iter_mut()
            .find(|party| party.name == "backlog-receiver")
            .ok_or_else(|| BenchError::Refused("the backlog receiver is missing".into()))?;
        if let Some(opened) = backlog_receiver.open.take() {
            opened.closing.store(true, Ordering::SeqCst);
            opened
                .device
                .close()
                .await
                .map_err(BenchError::client("closing the backlog receiver"))?;
        }

        let context = Context {
            servers,
            recorder: recorder.clone(),
            clock,
        };
        step("W1 max: closed loop");
        let max = w1_row(&context, &mut senders, 0, ROW_W1_MAX, Pace::Closed, timing).await?;
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
        )
        .await?;
        let mut rows = vec![max, open];
        if two_regions {
            step("W1 two regions: closed loop, region 1 → region 2");
            let mut row = w1_row(
                &context,
                &mut senders,
                1,
                ROW_W1_TWO_REGIONS,
                Pace::Closed,
                timing,
            )
            .await?;
            row.share_of_one_region = Some(ratio(
                row.delivered_per_second,
                rows[0].delivered_per_second,
            ));
            rows.push(row);
        }
        let backlog = w4_row(
            &context,
            &mut backlog_sender,
            &mut parties,
            options.backlog_messages,
            step,
        )
        .await?;
        Ok((rows, backlog))
    }
    .await;
    recorder.stopping.store(true, Ordering::SeqCst);
    close_all(&mut parties).await;
    let (rows, backlog) = outcome?;
    let sample = sample_envelope(clock)?;
    Ok(Measured {
        rows,
        backlog,
        // W3 measures the servers' fan-out: opaque devices only.
        groups: Vec::new(),
        envelope_bytes: sample.encoded_len(),
        envelope_request: ClientRequest {
            body: Some(client_request::Body::Send(sample)),
        },
    })
}

/// Opens every party live and waits until each is connected; hands back the senders (with
/// their peers) and the backlog's sender.
async fn open_all(
    parties: &mut [Party],
    recorder: &Arc<Recorder>,
    clock: RunClock,
    count: usize,
    two_regions: bool,
    deadline: Instant,
) -> Result<(Vec<Sender>, Sender), BenchError> {
    let mut senders = Vec::new();
    let mut backlog_sender = None;
    let mut opened = Vec::new();
    for party in parties.iter_mut() {
        let peers = if let Some(index) = party.name.strip_prefix("sender-") {
            let mut peers = vec![format!("receiver-{index}")];
            if two_regions {
                peers.push(format!("far-receiver-{index}"));
            }
            Some(peers)
        } else if party.name == "backlog-sender" {
            Some(vec!["backlog-receiver".to_owned()])
        } else {
            None
        };
        let Some(peers) = peers else {
            let device = open(party, recorder, clock, None, true)?;
            opened.push((party.name.clone(), device));
            continue;
        };
        let acks = Arc::new(Acks::default());
        let device = open(party, recorder, clock, Some(acks.clone()), false)?;
        opened.push((party.name.clone(), device.clone()));
        let sender = Sender {
            name: party.name.clone(),
            device,
            acks,
            peers,
        };
        if sender.name == "backlog-sender" {
            backlog_sender = Some(sender);
        } else {
            senders.push(sender);
        }
    }
    connect_all(&opened, deadline).await?;
    tracing::debug!(devices = opened.len(), "opened and connected");
    if senders.len() != count {
        return Err(BenchError::Refused(format!(
            "{} of {count} senders were opened",
            senders.len()
        )));
    }
    let backlog_sender = backlog_sender
        .ok_or_else(|| BenchError::Refused("the backlog sender was not opened".into()))?;
    Ok((senders, backlog_sender))
}

/// Each sender's first text to each of its peers and each peer's answer, all delivered and
/// every first text ✓, within [`INTRODUCTIONS_TIMEOUT_MS`]. Nothing of them counts in a row.
async fn introduce(
    recorder: &Recorder,
    clock: RunClock,
    senders: &[Sender],
    backlog_sender: &Sender,
    step: &(dyn Fn(&str) + Sync),
) -> Result<(), BenchError> {
    let all: Vec<&Sender> = senders
        .iter()
        .chain(std::iter::once(backlog_sender))
        .collect();
    let introductions: u64 = all.iter().map(|sender| sender.peers.len() as u64).sum();
    step(&format!(
        "introductions: {introductions} first texts (Olm pre-key messages) and their answers"
    ));
    let deadline = Instant::now() + Duration::from_millis(INTRODUCTIONS_TIMEOUT_MS);
    for sender in &all {
        for peer in 0..sender.peers.len() {
            send_text(sender, peer, ROW_INTRODUCTION, 1, Instant::now(), clock).await?;
        }
    }
    recorder
        .wait_delivered(ROW_INTRODUCTION_ANSWER, introductions, deadline)
        .await?;
    for sender in &all {
        loop {
            let (_, waiting) = sender.acks.take_confirmed();
            if waiting == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline.into(), sender.acks.changed())
                .await
                .is_err()
            {
                return Err(BenchError::Timeout(format!(
                    "{} had {waiting} introductions without ✓ at the deadline",
                    sender.name
                )));
            }
        }
    }
    recorder.take_row(ROW_INTRODUCTION);
    recorder.take_row(ROW_INTRODUCTION_ANSWER);
    Ok(())
}

/// Sends `sender`'s text number `seq` of `row` to its peer `peer`, composed at `at`, and waits
/// for its ✓ in its [`Acks`].
async fn send_text(
    sender: &Sender,
    peer: usize,
    row: u8,
    seq: u64,
    at: Instant,
    clock: RunClock,
) -> Result<(), BenchError> {
    let name = sender
        .peers
        .get(peer)
        .ok_or_else(|| BenchError::Refused(format!("sender {} has no peer {peer}", sender.name)))?;
    let text = Text {
        row,
        seq,
        composed_at_us: clock.us_at(at),
    };
    let id = sender
        .device
        .send(name, &text.encode())
        .await
        .map_err(BenchError::client(format!(
            "{} sending to {name}",
            sender.name
        )))?;
    sender.acks.wait_for(id.to_string(), text.composed_at_us);
    Ok(())
}

/// Sends on `sender`'s chat with peer `peer` as `pace` says until composing is over and every
/// text is ✓; ✓ latencies count for ticks inside `window`.
#[allow(clippy::too_many_arguments)]
async fn drive(
    sender: &Sender,
    peer: usize,
    row: u8,
    pace: Pace,
    first_due: Instant,
    interval: Duration,
    compose_until: Instant,
    window: (Instant, Instant),
    clock: RunClock,
) -> Result<SenderTally, BenchError> {
    let mut tally = SenderTally::default();
    let mut seq = 0u64;
    let mut next_due = first_due;
    let mut waiting = 0usize;
    loop {
        let now = Instant::now();
        let composing = match pace {
            Pace::Closed => {
                if now < compose_until && waiting == 0 {
                    seq += 1;
                    send_text(sender, peer, row, seq, now, clock).await?;
                }
                now < compose_until
            }
            Pace::Open { .. } => {
                while next_due <= now && next_due < compose_until {
                    seq += 1;
                    send_text(sender, peer, row, seq, next_due, clock).await?;
                    next_due += interval;
                }
                next_due < compose_until
            }
            Pace::Backlog { messages } => {
                while seq < messages {
                    seq += 1;
                    send_text(sender, peer, row, seq, now, clock).await?;
                }
                false
            }
        };
        let (confirmed, still_waiting) = sender.acks.take_confirmed();
        waiting = still_waiting;
        for (composed_at_us, at) in confirmed {
            tally.confirmed += 1;
            if at >= window.0
                && at <= window.1
                && tally.ack_latencies_us.len() < LATENCY_SAMPLES_MAX
            {
                let composed_at = clock.instant_at(composed_at_us);
                tally
                    .ack_latencies_us
                    .push(latency_us(at.saturating_duration_since(composed_at)));
            }
        }
        if !composing && waiting == 0 {
            return Ok(tally);
        }
        if let Pace::Closed = pace
            && composing
            && waiting == 0
        {
            // Composes the next at once.
            continue;
        }
        let wake = match pace {
            Pace::Open { .. } if composing => Some(next_due),
            _ => None,
        };
        tokio::select! {
            () = sender.acks.changed() => {}
            () = sleep_until_maybe(wake), if wake.is_some() => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rows

/// One W1 row: every sender on its chat with peer `peer` with `pace` through a warm-up and a
/// window, then until every text sent is ✓ and delivered.
async fn w1_row(
    context: &Context<'_>,
    senders: &mut Vec<Sender>,
    peer: usize,
    row: u8,
    pace: Pace,
    timing: Timing,
) -> Result<MessageRow, BenchError> {
    let (window_start, window_end) = timing.schedule();
    let started = Instant::now();
    let lost_before = context.recorder.connections_lost();
    context.recorder.open_row(row, window_start, window_end);
    let count = senders.len();
    let interval = match pace {
        Pace::Open { per_second } => Duration::from_secs_f64(count as f64 / per_second),
        _ => Duration::ZERO,
    };
    let mut tasks = JoinSet::new();
    for (index, sender) in std::mem::take(senders).into_iter().enumerate() {
        let clock = context.clock;
        // Each sender's schedule starts at its own phase of the interval.
        let first_due = started + interval.mul_f64(index as f64 / count as f64);
        tasks.spawn(async move {
            let tally = drive(
                &sender,
                peer,
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
                    "the senders' last texts were not ✓ within {DRAIN_TIMEOUT_MS} ms after the \
                     window"
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
        .wait_delivered(row, tally.confirmed, drain_deadline)
        .await?;
    let arrivals = context.recorder.take_row(row);
    let bench_cpu_seconds = cpu_before
        .zip(cpu_after)
        .map(|(before, after)| after.saturating_sub(before).as_secs_f64());
    let mut report = message_row(
        row,
        pace,
        count,
        tally,
        arrivals,
        usage,
        bench_cpu_seconds,
        timing,
    );
    report.connections_lost = Some(context.recorder.connections_lost() - lost_before);
    Ok(report)
}

/// The W4 row: `messages` texts sent at once by the backlog's sender to the backlog's receiver
/// (closed since its introduction), through the SDK's outbox until all are ✓; then the
/// receiver is opened again and drains them.
async fn w4_row(
    context: &Context<'_>,
    sender: &mut Sender,
    parties: &mut [Party],
    messages: u64,
    step: &(dyn Fn(&str) + Sync),
) -> Result<BacklogRow, BenchError> {
    step(&format!(
        "W4 backlog: storing {} texts for an offline receiver",
        thousands(messages as f64)
    ));
    let timeout = Duration::from_millis(BACKLOG_TIMEOUT_MS);
    let began = Instant::now();
    context
        .recorder
        .open_row(ROW_W4, began, began + timeout * 2);
    let before = context.servers.mark();
    let stored = tokio::time::timeout(
        timeout,
        drive(
            sender,
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
            "the backlog sender confirmed {} of {messages} texts",
            stored.confirmed
        )));
    }

    step("W4 backlog: the receiver opens again and drains it");
    let online = Instant::now();
    let receiver = parties
        .iter_mut()
        .find(|party| party.name == "backlog-receiver")
        .ok_or_else(|| BenchError::Refused("the backlog receiver is missing".into()))?;
    open(receiver, &context.recorder, context.clock, None, false)?;
    context
        .recorder
        .wait_delivered(ROW_W4, messages, online + timeout)
        .await?;
    let drain_seconds = online.elapsed().as_secs_f64();
    let drained_mark = context.servers.mark();
    let store_usage = context.servers.usage(&before, &stored_mark);
    let drain_usage = context.servers.usage(&stored_mark, &drained_mark);
    let arrivals = context.recorder.take_row(ROW_W4);
    Ok(BacklogRow {
        messages,
        pipeline_window: relay_client::limits::PIPELINE_WINDOW,
        store_seconds,
        stored_per_second: ratio(messages as f64, store_seconds),
        drain_seconds,
        drained_per_second: ratio(messages as f64, drain_seconds),
        delivered: arrivals.delivered,
        duplicates: arrivals.duplicates,
        unannounced: arrivals.unannounced,
        // The SDK retries inside; its timeouts and refusals are not seen from outside it.
        request_timeouts: 0,
        retryable_refusals: 0,
        resends: 0,
        conflict_retries: store_usage.conflict_retries + drain_usage.conflict_retries,
        store_server_cpu_seconds: store_usage.cpu_seconds,
        drain_server_cpu_seconds: drain_usage.cpu_seconds,
    })
}

/// A W1 envelope as the SDK builds it ([`relay_client::envelope::assemble`]) on a session past
/// its introduction (an Olm normal message, not a pre-key one): for the report's size and the
/// raw QUIC ceiling's frame.
fn sample_envelope(clock: RunClock) -> Result<Envelope, BenchError> {
    let what = "building a sample envelope";
    let sender = DeviceAddress {
        account: AccountId(1),
        device: DeviceId(1),
    };
    let receiver = DeviceAddress {
        account: AccountId(2),
        device: DeviceId(1),
    };
    let (mut sending, mut receiving) = (Crypto::new(), Crypto::new());
    receiving.generate_one_time_keys(1);
    let one_time_key = receiving
        .unpublished_one_time_keys()
        .into_iter()
        .next()
        .ok_or_else(|| BenchError::Refused(format!("{what}: no one-time key")))?;
    sending
        .create_outbound_session(
            receiver,
            &receiving.identity_key(),
            &one_time_key.public_key,
        )
        .map_err(BenchError::client(what))?;
    let content = |row: u8, peer: AccountId| {
        let text = Text {
            row,
            seq: 1,
            composed_at_us: clock.now_us(),
        };
        Content::text(&text.encode(), crate::measure::unix_time_ms(), peer.0)
            .map(|content| content.to_bytes())
            .map_err(BenchError::client(what))
    };
    // The introduction and its answer: the sender's session moves past pre-key messages.
    let (kind, body) = sending
        .encrypt(receiver, &content(ROW_INTRODUCTION, receiver.account)?)
        .map_err(BenchError::client(what))?;
    receiving
        .decrypt(sender, None, kind, &body)
        .map_err(BenchError::client(what))?;
    let (kind, body) = receiving
        .encrypt(sender, &content(ROW_INTRODUCTION_ANSWER, sender.account)?)
        .map_err(BenchError::client(what))?;
    sending
        .decrypt(receiver, None, kind, &body)
        .map_err(BenchError::client(what))?;
    let row = OutboxRow {
        chat: ChatId::direct(sender.account, receiver.account),
        sender_seq: 2,
        client_message_id: client_message_id(),
        peer: receiver.account,
        content: content(ROW_W1_MAX, receiver.account)?,
        envelope: None,
        group: 0,
    };
    relay_client::envelope::assemble(&mut sending, sender, &row, &[receiver], None, 2)
        .map_err(BenchError::client(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_is_the_payload_size_and_reads_back() {
        let text = Text {
            row: ROW_W1_TWO_REGIONS,
            seq: u64::MAX,
            composed_at_us: u64::MAX,
        };
        let encoded = text.encode();
        assert_eq!(encoded.len(), PAYLOAD_BYTES);
        assert_eq!(Text::decode(&encoded), Some(text));
        let small = Text {
            row: 0,
            seq: 1,
            composed_at_us: 0,
        };
        assert_eq!(Text::decode(&small.encode()), Some(small));
        assert_eq!(Text::decode("hello"), None);
        let foreign = format!("{:<width$}", "someone 1 2 3", width = PAYLOAD_BYTES);
        assert_eq!(Text::decode(&foreign), None);
        let short = &encoded[..PAYLOAD_BYTES - 1];
        assert_eq!(Text::decode(short), None);
    }

    #[test]
    fn a_tick_confirms_once_even_when_it_overtakes_the_id() {
        let acks = Acks::default();
        let now = Instant::now();
        // The ordinary order: waited for, then ✓, then ✓✓ (ignored).
        acks.wait_for("a".into(), 10);
        acks.tick("a", Tick::Pending, now);
        assert_eq!(acks.take_confirmed(), (Vec::new(), 1));
        acks.tick("a", Tick::Sent, now);
        acks.tick("a", Tick::Delivered, now);
        assert_eq!(acks.take_confirmed(), (vec![(10, now)], 0));
        // ✓ before `send` handed the id back.
        acks.tick("b", Tick::Sent, now);
        assert_eq!(acks.take_confirmed(), (Vec::new(), 0));
        acks.wait_for("b".into(), 20);
        assert_eq!(acks.take_confirmed(), (vec![(20, now)], 0));
        // ✓✓ first (the send's answer was slower than the receiver): it confirms.
        acks.wait_for("c".into(), 30);
        acks.tick("c", Tick::Delivered, now);
        assert_eq!(acks.take_confirmed(), (vec![(30, now)], 0));
    }

    #[test]
    fn the_sample_envelope_is_a_normal_olm_message_for_one_device() {
        let envelope = sample_envelope(RunClock::start()).expect("sample");
        assert_eq!(envelope.ciphertexts.len(), 1);
        assert_eq!(envelope.ciphertexts[0].message_type, 1, "a normal message");
        assert!(envelope.ciphertexts[0].body.len() > PAYLOAD_BYTES);
    }
}
