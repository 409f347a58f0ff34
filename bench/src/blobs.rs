//! The blob benchmark (`relayd bench blobs`, issue 14's media target): a blob of
//! [`BLOB_BYTES_DEFAULT`](crate::limits::BLOB_BYTES_DEFAULT) uploaded and downloaded by a
//! client SDK device through a devnet's real processes (sealed on the device, stored with fsync
//! by the region), against a raw QUIC stream measured in the same run: the same bytes written
//! to, and read from, an in-process server over loopback QUIC with TLS, one stream each way and
//! nothing else. The target is a blob throughput of at least [`BLOB_SHARE_OF_RAW_TARGET`] of
//! raw.
//!
//! Two routes are measured, each on a devnet of its own: the default one, device → the region's
//! media endpoint (the device's edge carries only the requests that give it a pass), and the
//! one devices take when they cannot reach that endpoint, device → edge → region (a devnet
//! started with `--no-media-endpoints`).
//!
//! Its ceilings, measured in the same run: sealing and opening the blob in memory in each blob
//! format (the device's crypto, digest included), and writing its ciphertext as the region's
//! store does (1 MiB files, each written and fsynced), beside the raw stream.
//!
//! Each direction is measured [`BlobsOptions::rounds`] times and the median round is reported
//! (the machines are shared and noisy). A round's time is the SDK call's, sealing or opening
//! and hashing included; the edge's and the region's CPU seconds over all rounds of a direction
//! are read from `/proc`, with this process's (the device's).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use relay_client::{BlobSource, Device, Mode, OpenOptions};
use relay_devnet::pki::Pki;
use relay_net::{NetError, TlsIdentity, TokioSockets, bind_endpoint};
use serde::Serialize;

use crate::BenchError;
use crate::device::Endpoints;
use crate::limits::{BLOB_ROUNDS_MAX, BLOB_SHARE_OF_RAW_TARGET};
use crate::measure::{CpuOf, cpu_time, ratio};
use crate::messages::run_folder;
use crate::servers::{ServerUsage, Servers};

/// The region the device lives in.
const REGION: u32 = 1;
/// Bytes written to a raw stream at a time (as the SDK writes an upload).
const RAW_WRITE_BYTES: usize = 256 * 1024;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BlobsOptions {
    /// The `relayd` executable the devnet runs (the one this runs as).
    pub relayd: PathBuf,
    /// Bytes of the blob (its plaintext).
    pub blob_bytes: usize,
    /// Rounds of each direction; the median is reported.
    pub rounds: usize,
    /// Folder on the disk to run in (a temporary folder is made inside it and removed);
    /// `None`: the system's temporary folder.
    pub data: Option<PathBuf>,
    /// How the `relayd` executable was built (`release` or `debug`), for the report.
    pub build: String,
}

/// One direction's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Direction {
    /// Raw QUIC stream, median round, in MB/s (10^6 bytes).
    pub raw_mb_per_second: f64,
    /// The blob through the relay, median round, in MB/s of plaintext.
    pub blob_mb_per_second: f64,
    /// `blob / raw`.
    pub share_of_raw: f64,
    /// Whether the share reaches [`BLOB_SHARE_OF_RAW_TARGET`].
    pub met: bool,
    /// Every round's blob throughput, in MB/s.
    pub blob_rounds_mb_per_second: Vec<f64>,
    /// Every round's raw throughput, in MB/s.
    pub raw_rounds_mb_per_second: Vec<f64>,
    /// CPU seconds of the edge and the region per blob (over every round, divided by the
    /// rounds).
    pub server_cpu_seconds: BTreeMap<String, f64>,
    /// CPU seconds of this process (the device: sealing or opening, hashing, QUIC) per blob.
    pub device_cpu_seconds: Option<f64>,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct BlobsReport {
    /// How the servers' executable was built.
    pub build: String,
    /// Cores available to this process.
    pub cores: usize,
    /// Bytes of the blob's plaintext.
    pub blob_bytes: usize,
    /// Bytes of its ciphertext (what is stored and moved).
    pub sealed_bytes: u64,
    /// Rounds of each direction.
    pub rounds: usize,
    /// The target share of raw.
    pub target_share_of_raw: f64,
    /// Device → the region's media endpoint (the default route; the target is for it).
    pub upload: Direction,
    /// The region's media endpoint → device.
    pub download: Direction,
    /// Device → edge → region, and back: the route of a device that cannot reach the media
    /// endpoint.
    pub through_edge: Route,
    /// What the device's crypto and the region's disk can do, measured in this run.
    pub ceilings: BlobCeilings,
    /// Whether every process kept its pid (none died or restarted) during the rounds.
    pub same_processes: bool,
}

/// The ceilings of a blob transfer besides the raw stream, in MB/s of plaintext (10^6 bytes).
#[derive(Debug, Clone, Serialize)]
pub struct BlobCeilings {
    /// Sealing the blob in memory (encryption and digest), by format (`format 1`: ChaCha20-
    /// Poly1305 and SHA-256; `format 2`: AES-256-GCM and BLAKE3, what new blobs take).
    pub seal_mb_per_second: BTreeMap<String, f64>,
    /// Opening it in memory (digest check and decryption), by format.
    pub open_mb_per_second: BTreeMap<String, f64>,
    /// Its ciphertext written as the region's local store writes it: 1 MiB files, each
    /// written and fsynced. On a virtual machine whose memory was never touched, the page
    /// cache's first use of each page costs the host's fault too, and this shows it.
    pub unit_files_mb_per_second: f64,
}

/// One route's two directions.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    /// Device → region.
    pub upload: Direction,
    /// Region → device.
    pub download: Direction,
}

/// Steps the progress bar counts.
pub fn steps(options: &BlobsOptions) -> u64 {
    8 + 6 * options.rounds as u64
}

/// Runs the benchmark on a devnet of `options.relayd`, stopping early when `shutdown`
/// completes.
pub fn run(
    options: &BlobsOptions,
    step: &(dyn Fn(&str) + Sync),
    shutdown: impl Future<Output = ()>,
) -> Result<BlobsReport, BenchError> {
    if options.rounds == 0 || options.rounds > BLOB_ROUNDS_MAX {
        return Err(BenchError::Invalid(format!(
            "--rounds must be within 1..={BLOB_ROUNDS_MAX}, not {}",
            options.rounds
        )));
    }
    if options.blob_bytes == 0 {
        return Err(BenchError::Invalid("--megabytes must be above 0".into()));
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
    options: &BlobsOptions,
    folder: &Path,
    step: &(dyn Fn(&str) + Sync),
) -> Result<BlobsReport, BenchError> {
    let plaintext: Vec<u8> = (0..options.blob_bytes)
        .map(|_| rand::random::<u8>())
        .collect();
    step("measuring the crypto and the disk");
    let ceilings = ceilings(&plaintext, &folder.join("units"))?;
    step("measuring the raw QUIC stream");
    let mut raw_upload = Vec::new();
    let mut raw_download = Vec::new();
    let raw = RawServer::start(folder).await?;
    for _ in 0..options.rounds {
        raw_upload.push(raw.upload(&plaintext).await?);
        step("raw upload");
        raw_download.push(raw.download(plaintext.len()).await?);
        step("raw download");
    }
    raw.stop().await;

    step("starting the devnet (media endpoints)");
    let servers = Servers::start(&options.relayd, 1, &folder.join("devnet")).await?;
    let measured = measure_blobs(options, &folder.join("direct"), &servers, &plaintext, step).await;
    step("stopping the devnet");
    servers.stop().await;
    let (upload_rounds, download_rounds, upload_usage, download_usage, sealed_bytes, cpu) =
        measured?;
    step("starting a devnet without media endpoints");
    let servers =
        Servers::start_without_media(&options.relayd, 1, &folder.join("devnet-edges")).await?;
    let measured = measure_blobs(options, &folder.join("edges"), &servers, &plaintext, step).await;
    step("stopping the devnet");
    servers.stop().await;
    let (edge_upload, edge_download, edge_upload_usage, edge_download_usage, _, edge_cpu) =
        measured?;
    let mb = |seconds: &[f64]| -> Vec<f64> {
        seconds
            .iter()
            .map(|seconds| options.blob_bytes as f64 / 1e6 / seconds)
            .collect()
    };
    let direction = |raw: &[f64], blob: &[f64], usage: &ServerUsage, device: Option<f64>| {
        let raw_rounds = mb(raw);
        let blob_rounds = mb(blob);
        let raw_median = median(&raw_rounds);
        let blob_median = median(&blob_rounds);
        let share = ratio(blob_median, raw_median);
        Direction {
            raw_mb_per_second: raw_median,
            blob_mb_per_second: blob_median,
            share_of_raw: share,
            met: share >= BLOB_SHARE_OF_RAW_TARGET,
            blob_rounds_mb_per_second: blob_rounds,
            raw_rounds_mb_per_second: raw_rounds,
            server_cpu_seconds: usage
                .cpu_seconds_by_process
                .iter()
                .map(|(name, seconds)| (name.clone(), seconds / options.rounds as f64))
                .collect(),
            device_cpu_seconds: device.map(|seconds| seconds / options.rounds as f64),
        }
    };
    Ok(BlobsReport {
        build: options.build.clone(),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        blob_bytes: options.blob_bytes,
        sealed_bytes,
        rounds: options.rounds,
        target_share_of_raw: BLOB_SHARE_OF_RAW_TARGET,
        upload: direction(&raw_upload, &upload_rounds, &upload_usage, cpu.0),
        download: direction(&raw_download, &download_rounds, &download_usage, cpu.1),
        through_edge: Route {
            upload: direction(&raw_upload, &edge_upload, &edge_upload_usage, edge_cpu.0),
            download: direction(
                &raw_download,
                &edge_download,
                &edge_download_usage,
                edge_cpu.1,
            ),
        },
        ceilings,
        same_processes: upload_usage.same_processes
            && download_usage.same_processes
            && edge_upload_usage.same_processes
            && edge_download_usage.same_processes,
    })
}

/// Seals and opens `plaintext` in each format, and writes its ciphertext into `folder` as the
/// region's store would.
fn ceilings(plaintext: &[u8], folder: &Path) -> Result<BlobCeilings, BenchError> {
    use relay_client::blob::{self, BlobFormat};
    let megabytes = plaintext.len() as f64 / 1e6;
    let mut seal_mb_per_second = BTreeMap::new();
    let mut open_mb_per_second = BTreeMap::new();
    let mut ciphertext = Vec::new();
    for format in [BlobFormat::V1, BlobFormat::V2] {
        let name = format!("format {}", format.number());
        let began = Instant::now();
        let mut sealed = blob::seal_with_key(format, plaintext, rand::random());
        seal_mb_per_second.insert(name.clone(), megabytes / began.elapsed().as_secs_f64());
        let reference = relay_client::BlobRef {
            format,
            region: REGION,
            id: [0; relay_proto::limits::BLOB_ID_BYTES],
            key: sealed.key,
            size: sealed.ciphertext.len() as u64,
            digest: sealed.digest,
        };
        let began = Instant::now();
        let opened = blob::open(&reference, &sealed.ciphertext)
            .map_err(|error| BenchError::Protocol(format!("opening the sealed blob: {error}")))?;
        open_mb_per_second.insert(name, megabytes / began.elapsed().as_secs_f64());
        if opened != plaintext {
            return Err(BenchError::Protocol(
                "the blob opened to other bytes than it was sealed from".into(),
            ));
        }
        ciphertext = std::mem::take(&mut sealed.ciphertext);
    }
    std::fs::create_dir_all(folder).map_err(BenchError::io("creating", folder))?;
    let began = Instant::now();
    for (index, unit) in ciphertext
        .chunks(relay_proto::limits::BLOB_COMMIT_UNIT_BYTES as usize)
        .enumerate()
    {
        use std::io::Write;
        let path = folder.join(format!("unit-{index}"));
        let mut file = std::fs::File::create(&path).map_err(BenchError::io("creating", &path))?;
        file.write_all(unit)
            .and_then(|()| file.sync_all())
            .map_err(BenchError::io("writing", &path))?;
    }
    let unit_files_mb_per_second = megabytes / began.elapsed().as_secs_f64();
    std::fs::remove_dir_all(folder).map_err(BenchError::io("removing", folder))?;
    Ok(BlobCeilings {
        seal_mb_per_second,
        open_mb_per_second,
        unit_files_mb_per_second,
    })
}

type BlobRounds = (
    Vec<f64>,
    Vec<f64>,
    ServerUsage,
    ServerUsage,
    u64,
    (Option<f64>, Option<f64>),
);

/// Registers a device, then uploads and downloads the blob `rounds` times each.
async fn measure_blobs(
    options: &BlobsOptions,
    folder: &Path,
    servers: &Servers,
    plaintext: &[u8],
    step: &(dyn Fn(&str) + Sync),
) -> Result<BlobRounds, BenchError> {
    step("registering the device");
    std::fs::create_dir_all(folder).map_err(BenchError::io("creating", folder))?;
    let dir = folder.join("device");
    let overrides = relay_client::Overrides {
        locator: Some(servers.locator()),
        bind_ip: Some(servers.edge(REGION)?.1),
        ca_path: Some(servers.ca().to_path_buf()),
        device_key: None,
    };
    relay_client::register(&dir, "blobber", overrides, "", &mut |_| {})
        .await
        .map_err(BenchError::client("registering the device"))?;
    let options_open = OpenOptions {
        mode: Mode::Live,
        ..OpenOptions::default()
    };
    let (device, _events) =
        Device::open(&dir, options_open).map_err(BenchError::client("opening the device"))?;
    device
        .connect()
        .await
        .map_err(BenchError::client("connecting the device"))?;
    let process_cpu = || cpu_time(CpuOf::Process);
    let mut upload_rounds = Vec::new();
    let mut references = Vec::new();
    let before = servers.mark();
    let cpu_before = process_cpu();
    for _ in 0..options.rounds {
        let began = Instant::now();
        let reference = device
            .upload_blob(BlobSource::Bytes(plaintext), &mut |_| {})
            .await
            .map_err(BenchError::client("uploading the blob"))?;
        upload_rounds.push(began.elapsed().as_secs_f64());
        references.push(reference);
        step("blob upload");
    }
    let upload_usage = servers.usage(&before, &servers.mark());
    let upload_cpu = seconds_between(cpu_before, process_cpu());
    let sealed_bytes = references.first().map_or(0, |reference| reference.size);

    let mut download_rounds = Vec::new();
    let before = servers.mark();
    let cpu_before = process_cpu();
    for reference in &references {
        let began = Instant::now();
        let downloaded = device
            .download_blob(reference, &mut |_| {})
            .await
            .map_err(BenchError::client("downloading the blob"))?;
        download_rounds.push(began.elapsed().as_secs_f64());
        if downloaded != plaintext {
            return Err(BenchError::Protocol(
                "the downloaded blob differs from the uploaded one".into(),
            ));
        }
        step("blob download");
    }
    let download_usage = servers.usage(&before, &servers.mark());
    let download_cpu = seconds_between(cpu_before, process_cpu());
    let _ = device.close().await;
    Ok((
        upload_rounds,
        download_rounds,
        upload_usage,
        download_usage,
        sealed_bytes,
        (upload_cpu, download_cpu),
    ))
}

fn seconds_between(before: Option<Duration>, after: Option<Duration>) -> Option<f64> {
    Some(after?.saturating_sub(before?).as_secs_f64())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// The raw baseline: a server in this process that reads an upload stream to its end (then
/// answers one byte) or writes the number of bytes a download stream asks for.
pub(crate) struct RawServer {
    server: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
    link: crate::device::EdgeLink,
}

impl RawServer {
    pub(crate) async fn start(folder: &Path) -> Result<RawServer, BenchError> {
        let pki = Pki::open(&folder.join("raw-pki"))?;
        let certs = pki.edge(1)?;
        let identity = TlsIdentity::load(&certs.cert, &certs.key)
            .map_err(BenchError::net("the raw server's certificate"))?;
        let roots = relay_net::load_roots(&pki.ca_cert()).map_err(BenchError::net("the raw CA"))?;
        let config = relay_net::server_config(identity, None, relay_net::ALPN_DEVICE)
            .map_err(BenchError::net("the raw server's TLS configuration"))?;
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let server = bind_endpoint(&TokioSockets, SocketAddr::new(localhost, 0), Some(config))
            .map_err(BenchError::net("binding the raw server"))?;
        let address = server
            .local_addr()
            .map_err(|error| BenchError::net("the raw server's address")(NetError::Io(error)))?;
        let task = tokio::spawn(serve_raw(server.clone()));
        let link = Endpoints::new(localhost, roots)?.connect(address).await?;
        Ok(RawServer { server, task, link })
    }

    /// Seconds to write `bytes` on a stream and have the server confirm it read them all.
    pub(crate) async fn upload(&self, bytes: &[u8]) -> Result<f64, BenchError> {
        let failed = |error: String| BenchError::Protocol(format!("raw upload: {error}"));
        let began = Instant::now();
        let (mut send, mut recv) = self
            .link
            .connection()
            .open_bi()
            .await
            .map_err(|error| failed(error.to_string()))?;
        send.write_all(b"U")
            .await
            .map_err(|error| failed(error.to_string()))?;
        for piece in bytes.chunks(RAW_WRITE_BYTES) {
            send.write_chunk(Bytes::copy_from_slice(piece))
                .await
                .map_err(|error| failed(error.to_string()))?;
        }
        let _ = send.finish();
        let answer = recv
            .read_to_end(16)
            .await
            .map_err(|error| failed(error.to_string()))?;
        let read = u64::from_le_bytes(
            answer
                .try_into()
                .map_err(|_| failed("short answer".into()))?,
        );
        if read != bytes.len() as u64 {
            return Err(failed(format!("the server read {read} bytes")));
        }
        Ok(began.elapsed().as_secs_f64())
    }

    /// Seconds to ask for `length` bytes and read them all.
    pub(crate) async fn download(&self, length: usize) -> Result<f64, BenchError> {
        let failed = |error: String| BenchError::Protocol(format!("raw download: {error}"));
        let began = Instant::now();
        let (mut send, mut recv) = self
            .link
            .connection()
            .open_bi()
            .await
            .map_err(|error| failed(error.to_string()))?;
        let mut request = b"D".to_vec();
        request.extend_from_slice(&(length as u64).to_le_bytes());
        send.write_all(&request)
            .await
            .map_err(|error| failed(error.to_string()))?;
        let _ = send.finish();
        let mut read = 0;
        while let Some(chunk) = recv
            .read_chunk(usize::MAX, true)
            .await
            .map_err(|error| failed(error.to_string()))?
        {
            read += chunk.bytes.len();
        }
        if read != length {
            return Err(failed(format!("read {read} of {length} bytes")));
        }
        Ok(began.elapsed().as_secs_f64())
    }

    pub(crate) async fn stop(self) {
        self.link.close();
        self.server.close(0u32.into(), b"done");
        self.task.abort();
    }
}

async fn serve_raw(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                tokio::spawn(async move {
                    let mut kind = [0u8; 1];
                    if recv.read_exact(&mut kind).await.is_err() {
                        return;
                    }
                    if kind == *b"U" {
                        let mut read = 0u64;
                        while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                            read += chunk.bytes.len() as u64;
                        }
                        let _ = send.write_all(&read.to_le_bytes()).await;
                        let _ = send.finish();
                    } else {
                        let mut length = [0u8; 8];
                        if recv.read_exact(&mut length).await.is_err() {
                            return;
                        }
                        let piece = Bytes::from(vec![7u8; RAW_WRITE_BYTES]);
                        let mut left = usize::try_from(u64::from_le_bytes(length)).unwrap_or(0);
                        while left > 0 {
                            let take = left.min(RAW_WRITE_BYTES);
                            if send.write_chunk(piece.slice(..take)).await.is_err() {
                                return;
                            }
                            left -= take;
                        }
                        let _ = send.finish();
                    }
                });
            }
        });
    }
}

impl BlobsReport {
    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "blob {:.1} MB ({} bytes sealed), {} rounds each way, median; {} build, {} cores\n",
            self.blob_bytes as f64 / 1e6,
            self.sealed_bytes,
            self.rounds,
            self.build,
            self.cores
        ));
        out.push_str(
            "| route | direction | raw QUIC stream | blob | share of raw | target | edge CPU s / blob | region CPU s / blob | device CPU s / blob |\n",
        );
        out.push_str("|---|---|---|---|---|---|---|---|---|\n");
        let direct = "device ↔ region's media endpoint";
        let edge = "device ↔ edge ↔ region";
        for (route, name, direction) in [
            (direct, "upload", &self.upload),
            (direct, "download", &self.download),
            (edge, "upload", &self.through_edge.upload),
            (edge, "download", &self.through_edge.download),
        ] {
            let cpu = |process: &str| {
                direction
                    .server_cpu_seconds
                    .get(process)
                    .map_or("?".to_owned(), |seconds| format!("{seconds:.2}"))
            };
            out.push_str(&format!(
                "| {route} | {name} | {:.0} MB/s | {:.0} MB/s | {:.0} % | ≥ {:.0} % {} | {} | {} | {} |\n",
                direction.raw_mb_per_second,
                direction.blob_mb_per_second,
                100.0 * direction.share_of_raw,
                100.0 * self.target_share_of_raw,
                if direction.met { "✓" } else { "✗" },
                cpu("edge-1"),
                cpu("region-1"),
                direction
                    .device_cpu_seconds
                    .map_or("?".to_owned(), |seconds| format!("{seconds:.2}")),
            ));
        }
        let rates = |rates: &BTreeMap<String, f64>| {
            rates
                .iter()
                .map(|(format, rate)| format!("{format} {rate:.0} MB/s"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "ceilings in this run: sealing {}; opening {}; 1 MiB files written and fsynced {:.0} MB/s\n",
            rates(&self.ceilings.seal_mb_per_second),
            rates(&self.ceilings.open_mb_per_second),
            self.ceilings.unit_files_mb_per_second,
        ));
        if !self.same_processes {
            out.push_str("a server process restarted during the rounds: its CPU is not counted\n");
        }
        out
    }
}
