//! `relayd bench home-move`: how long an account's home move holds its requests, and how fast
//! it carries a backlog.
//!
//! In one process, on redb stores in a temporary folder: region 1 (the directory writer) holds
//! alice, with two devices and N messages from bob queued for each (W4's backlog of a person
//! who was offline), each message a 1:1 envelope of about 500 bytes. Regions 1 and 2 then
//! start on loopback QUIC (mutual TLS, as deployed) and the operator's request moves alice to
//! region 2 (`MoveHome`, asked with region 1's own certificate, as `relayd admin move-home`
//! does): copied in parts, fenced, flipped at the directory writer, activated, let go. Next to
//! it, measured in the same run on the same disk, its two halves alone: region 1's store read
//! into parts (`home_move::Exporter`, nothing sent) and the parts applied to an empty store
//! (`home_move::apply_part`), and the disk's fsync rate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fdb_layers::Database;
use fdb_layers::chat_log::{self, AppendOutcome, NewEntry};
use fdb_layers::device_queue::{self, MessageOrigin, QueueItem};
use fdb_layers::directory::{self, IdempotencyKey};
use home_region::home_move::{Exporter, PartSink, apply_part};
use relay_devnet::pki::Pki;
use relay_net::{PeerLinks, PeerResolver, TlsIdentity, TokioSockets};
use relay_proto::wire::{self, RegionRequest, RegionResponse, region_request, region_response};
use relay_proto::{
    AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId, ProtoError, RegionId,
};
use serde::Serialize;

use crate::BenchError;
use crate::directory::{TwoRegions, open, store_error};
use crate::measure::{Timing, measure_fsync};

/// Messages stored per transaction while filling region 1's store.
const FILL_BATCH: u64 = 250;
/// Bytes of each device's ciphertext in an envelope.
const CIPHERTEXT_BYTES: usize = 200;
/// The moving account, and the account writing to it.
const ALICE: AccountId = AccountId(1);
const BOB: AccountId = AccountId(2);
/// How long the move may take before the run fails.
const MOVE_TIMEOUT_S: u64 = 600;

/// Options of a run.
#[derive(Debug, Clone)]
pub struct HomeMoveOptions {
    /// Messages queued for each of the account's two devices.
    pub messages: u64,
    /// Folder for the stores (a temporary folder inside it).
    pub data: Option<PathBuf>,
    /// "release" or "debug": the build measured.
    pub build: String,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct HomeMoveReport {
    /// "release" or "debug": the build measured.
    pub build: String,
    /// Messages queued for each device.
    pub messages: u64,
    /// Queue entries moved (both devices).
    pub queue_entries: u64,
    /// Chat log entries carried with them.
    pub log_entries: u64,
    /// Parts sent to the new home.
    pub parts: u32,
    /// The move, from the operator's request to its answer, in seconds.
    pub move_seconds: f64,
    /// How long the account's requests were held, as the old home measured it (ms).
    pub held_ms: u64,
    /// Queue entries per second through the move.
    pub moved_per_second: f64,
    /// Ceiling: the old home's store read into parts alone.
    pub export_per_second: f64,
    /// Ceiling: the parts applied to an empty store alone.
    pub apply_per_second: f64,
    /// The move against the slower of its two halves.
    pub share_of_ceiling: f64,
    /// The disk's fsync rate in the same run.
    pub fsync_per_second: f64,
    /// Region 1's store filled, in seconds (not part of the comparison).
    pub fill_seconds: f64,
}

impl HomeMoveReport {
    /// The report as a person reads it.
    pub fn table(&self) -> String {
        format!(
            "home move: an account with 2 devices and {} messages queued for each; {} build, {} \
             cores\n\
             | measure | queue entries/s | |\n|---|--:|---|\n\
             | the move over QUIC (copy, fence, flip, activate, let go) | {:.0} | {:.0} % of the slower half |\n\
             | … the old home's store read into parts alone | {:.0} | ceiling |\n\
             | … the parts applied to an empty store alone | {:.0} | ceiling |\n\
             | fsync rate of the disk | {:.0}/s | |\n\
             {} queue entries and {} messages in {} parts; the move took {:.2} s and held the \
             account's requests for {} ms; the store was filled in {:.1} s\n",
            self.messages,
            self.build,
            std::thread::available_parallelism().map_or(0, usize::from),
            self.moved_per_second,
            self.share_of_ceiling * 100.0,
            self.export_per_second,
            self.apply_per_second,
            self.fsync_per_second,
            self.queue_entries,
            self.log_entries,
            self.parts,
            self.move_seconds,
            self.held_ms,
            self.fill_seconds,
        )
    }
}

/// Steps of a run, for a progress bar.
pub fn steps() -> u64 {
    3
}

/// Runs the benchmark on a runtime of its own, naming each step to `step`.
pub fn run_blocking(
    options: &HomeMoveOptions,
    step: &(dyn Fn(&str) + Sync),
) -> Result<HomeMoveReport, BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("starting a runtime in", Path::new(".")))?;
    runtime.block_on(run(options, step))
}

/// Parts kept in memory (the export half alone).
#[derive(Default)]
struct Collect(Vec<wire::ImportAccount>);

impl PartSink for &mut Collect {
    async fn send(&mut self, part: wire::ImportAccount) -> Result<(), ProtoError> {
        self.0.push(part);
        Ok(())
    }
}

/// Runs the benchmark.
pub async fn run(
    options: &HomeMoveOptions,
    step: &(dyn Fn(&str) + Sync),
) -> Result<HomeMoveReport, BenchError> {
    if options.messages == 0 {
        return Err(BenchError::Invalid("--messages must be at least 1".into()));
    }
    let folder = crate::messages::run_folder(options.data.as_deref())?;
    let root = folder.path();

    let old = open(&root.join("region-1"))?;
    step("filling alice's queues");
    let began = Instant::now();
    fill(&old, options.messages).await?;
    let fill_seconds = began.elapsed().as_secs_f64();
    let entries = 2 * options.messages;

    // The two halves alone.
    step("the ceilings: reading into parts and applying them alone");
    let mut parts = Collect::default();
    let began = Instant::now();
    let mut exporter = Exporter::new(&old, ALICE, RegionId(1), &mut parts);
    exporter
        .copy()
        .await
        .map_err(|error| BenchError::Invalid(format!("exporting: {error}")))?;
    exporter
        .flush()
        .await
        .map_err(|error| BenchError::Invalid(format!("exporting: {error}")))?;
    drop(exporter);
    let export_seconds = began.elapsed().as_secs_f64();
    let apply_db = open(&root.join("apply"))?;
    let began = Instant::now();
    for part in &parts.0 {
        apply_part(&apply_db, RegionId(2), part, 0)
            .await
            .map_err(|error| BenchError::Invalid(format!("applying: {error}")))?;
    }
    let apply_seconds = began.elapsed().as_secs_f64();
    drop(parts);
    let fsync_per_second = measure_fsync(
        &root.join("fsync-probe"),
        Timing {
            warmup: Duration::from_millis(200),
            window: Duration::from_secs(1),
        },
    )?;

    // The move itself, between two region services over QUIC.
    step("moving alice's home to region 2");
    let pki = Pki::open(&root.join("pki"))?;
    let new_db = open(&root.join("region-2"))?;
    let regions = TwoRegions::start(old, new_db.clone(), &pki)?;
    let began = Instant::now();
    let moved = ask_move(&pki, &regions.addresses).await;
    let move_seconds = began.elapsed().as_secs_f64();
    regions.stop().await;
    let moved = moved?;
    // Everything arrived: both queues whole at the new home.
    let first = DeviceAddress {
        account: ALICE,
        device: DeviceId(1),
    };
    let held = new_db
        .transact(|tx| async move { device_queue::depth(&tx, first).await })
        .await
        .map_err(store_error("reading the new home"))?;
    if held != options.messages || moved.queue_entries != entries {
        return Err(BenchError::Invalid(format!(
            "the new home holds {held} of {} messages for device 1, and the move carried {} of \
             {entries} entries",
            options.messages, moved.queue_entries
        )));
    }

    let moved_per_second = entries as f64 / move_seconds;
    let export_per_second = entries as f64 / export_seconds;
    let apply_per_second = entries as f64 / apply_seconds;
    Ok(HomeMoveReport {
        build: options.build.clone(),
        messages: options.messages,
        queue_entries: moved.queue_entries,
        log_entries: moved.log_entries,
        parts: moved.parts,
        move_seconds,
        held_ms: moved.held_ms,
        moved_per_second,
        export_per_second,
        apply_per_second,
        share_of_ceiling: moved_per_second / export_per_second.min(apply_per_second),
        fsync_per_second,
        fill_seconds,
    })
}

/// Asks region 1, with its own certificate, to move alice to region 2.
async fn ask_move(
    pki: &Pki,
    addresses: &Arc<Mutex<BTreeMap<u32, SocketAddr>>>,
) -> Result<wire::HomeMoved, BenchError> {
    let invalid = |what: &str| {
        let what = what.to_owned();
        move |error: relay_net::NetError| BenchError::Invalid(format!("{what}: {error}"))
    };
    let certs = pki.region(1)?;
    let identity =
        TlsIdentity::load(&certs.cert, &certs.key).map_err(invalid("the certificate"))?;
    let roots = relay_net::load_roots(&pki.ca_cert()).map_err(invalid("the CA"))?;
    let any: SocketAddr = "127.0.0.1:0"
        .parse()
        .map_err(|_| BenchError::Invalid("address".into()))?;
    let endpoint =
        relay_net::bind_endpoint(&TokioSockets, any, None).map_err(invalid("binding"))?;
    let client = relay_net::client_config(roots, Some(identity), relay_net::ALPN_INTERNAL)
        .map_err(invalid("the client configuration"))?;
    let known = addresses.clone();
    let resolver: PeerResolver = Box::new(move |peer| {
        known
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&peer)
            .copied()
    });
    let links = PeerLinks::new(
        endpoint.clone(),
        client,
        relay_net::REGION_SERVER_NAME,
        resolver,
    );
    let request = RegionRequest {
        body: Some(region_request::Body::MoveHome(wire::MoveHome {
            account: ALICE.0,
            to_region: 2,
        })),
    };
    let answer: Result<RegionResponse, relay_net::NetError> = links
        .request(1, &request, Duration::from_secs(MOVE_TIMEOUT_S))
        .await;
    endpoint.close(0u32.into(), b"done");
    match answer.map_err(invalid("the move"))?.body {
        Some(region_response::Body::HomeMoved(moved)) => Ok(moved),
        Some(region_response::Body::Error(error)) => Err(BenchError::Invalid(format!(
            "the move was refused: {}",
            ProtoError::from(error)
        ))),
        _ => Err(BenchError::Invalid(
            "an unexpected answer to the move".into(),
        )),
    }
}

/// Region 1's store: alice (homed there, two devices) and bob (homed in region 2), and
/// `messages` envelopes from bob queued for each of alice's devices.
async fn fill(db: &Database, messages: u64) -> Result<(), BenchError> {
    db.transact(|tx| async move {
        for (name, home) in [("alice", 1), ("bob", 2)] {
            let _ = directory::create_account(
                &tx,
                name,
                RegionId(home),
                &IdempotencyKey::new(7, [home as u8; 16]),
            )
            .await?;
        }
        directory::add_first_device(
            &tx,
            ALICE,
            &[1; 32],
            &[2; 32],
            &IdempotencyKey::new(7, [3; 16]),
        )
        .await?
        .map_err(|_| fdb_layers::StoreError::InvalidOptions("alice has devices".into()))?;
        directory::add_device(
            &tx,
            ALICE,
            &[4; 32],
            &[5; 32],
            &IdempotencyKey::new(7, [6; 16]),
        )
        .await?;
        directory::set_log_complete(&tx)
    })
    .await
    .map_err(store_error("creating the accounts"))?;
    let chat = ChatId::direct(ALICE, BOB);
    let bob = DeviceAddress {
        account: BOB,
        device: DeviceId(1),
    };
    let devices = [1, 2].map(|device| DeviceAddress {
        account: ALICE,
        device: DeviceId(device),
    });
    // Enqueued now: the regions' retention sweep must not expire them.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    let mut next = 1u64;
    while next <= messages {
        let first = next;
        let last = (first + FILL_BATCH - 1).min(messages);
        db.transact(|tx| async move {
            for seq in first..=last {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&seq.to_be_bytes());
                let envelope = envelope(chat, bob, seq, &devices);
                let entry = NewEntry {
                    chat,
                    sender: bob,
                    client_message_id: ClientMessageId(id),
                    sender_seq: seq,
                    sender_region: RegionId(2),
                    envelope_bytes: &envelope,
                };
                let AppendOutcome::Appended { chat_seq, .. } =
                    chat_log::append(&tx, &entry, now_ms).await?
                else {
                    return Err(fdb_layers::StoreError::InvalidOptions(
                        "a message was not appended".into(),
                    ));
                };
                let item = QueueItem::MessageRef {
                    chat,
                    chat_seq,
                    origin: Some(MessageOrigin {
                        sender: bob,
                        client_message_id: ClientMessageId(id),
                        sender_region: RegionId(2),
                        group: false,
                    }),
                    shown_seq: None,
                };
                for device in devices {
                    device_queue::append(&tx, device, &item, now_ms).await?;
                }
            }
            Ok(())
        })
        .await
        .map_err(store_error("queueing the messages"))?;
        next = last + 1;
    }
    Ok(())
}

/// A 1:1 envelope from `sender`, one ciphertext per device of `to`, encoded.
fn envelope(chat: ChatId, sender: DeviceAddress, seq: u64, to: &[DeviceAddress]) -> Vec<u8> {
    use prost::Message;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    wire::Envelope {
        chat: chat.0.to_vec(),
        sender: sender.into(),
        client_message_id: id.to_vec(),
        sender_seq: seq,
        recipient_accounts: vec![ALICE.0],
        ciphertexts: to
            .iter()
            .map(|device| wire::DeviceCiphertext {
                recipient: (*device).into(),
                message_type: wire::MESSAGE_TYPE_OLM_NORMAL,
                body: vec![0x42; CIPHERTEXT_BYTES],
            })
            .collect(),
        ..wire::Envelope::default()
    }
    .encode_to_vec()
}
