//! `relayd bench`: the command line of [`relay_bench`] (each workload next to its ceilings
//! measured in the same run): arguments in, a table or JSON out.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use relay_bench::blobs::{self, BlobsOptions};
use relay_bench::connections::{self, ConnectionsOptions};
use relay_bench::limits::{
    BACKLOG_MESSAGES, BACKLOG_MESSAGES_QUICK, BLOB_BYTES_DEFAULT, BLOB_BYTES_QUICK,
    BLOB_ROUNDS_DEFAULT, GROUP_MEMBERS_DEFAULT, IDLE_DEVICES_DEFAULT, IDLE_DEVICES_QUICK,
    MESSAGES_WINDOW_SECONDS_DEFAULT, MESSAGES_WINDOW_SECONDS_QUICK, SENDERS_DEFAULT,
    SYNC_COMPARE_MESSAGES_DEFAULT, SYNC_COMPARE_MESSAGES_QUICK, SYNC_MESSAGES_DEFAULT,
    SYNC_MESSAGES_QUICK,
};
use relay_bench::limits::{
    PRESENCE_ACCOUNTS_DEFAULT, PRESENCE_CEILING_SECONDS_DEFAULT, PRESENCE_CEILING_SECONDS_QUICK,
    PRESENCE_CYCLES_DEFAULT, PRESENCE_CYCLES_QUICK, PRESENCE_WATCHERS_DEFAULT,
    PRESENCE_WATCHERS_QUICK, TYPING_SENDERS_DEFAULT, TYPING_SENDERS_QUICK,
    TYPING_WINDOW_SECONDS_DEFAULT, TYPING_WINDOW_SECONDS_QUICK,
};
use relay_bench::messages::{self, ClientMode, MessagesOptions};
use relay_bench::presence::{self, PresenceOptions};
use relay_bench::storage::{self, StorageOptions, WINDOW_SECONDS_DEFAULT, WINDOW_SECONDS_QUICK};
use relay_bench::sync::{self, SyncOptions};

use crate::serve::shutdown_signal;

/// The benchmarks of `relayd bench`.
#[derive(Debug, Subcommand)]
pub enum Benchmark {
    /// Durable appends per second into chat log + device queues for several writer counts,
    /// next to raw redb (batched, and one fsync per message) and the disk's fsync rate.
    Storage(StorageArgs),
    /// Messages through a devnet's real processes (this executable, run as `relayd devnet`):
    /// W1 (N senders → N receivers, 1:1: closed loop, open loop at half its rate, across two
    /// regions), W4 (a backlog for an offline device) and, with opaque devices, W3 (one sender
    /// to a 100- and a 1,024-member group), with latencies, server CPU and the ceilings
    /// measured in the same run (raw QUIC, raw redb, Olm); opaque devices, or client SDK
    /// devices end to end encrypted (--mode e2ee, without W3). Needs a release build.
    Messages(MessagesArgs),
    /// Idle authenticated devices on one edge of a devnet (W2): the edge's memory per
    /// connection, connections per second, and memory given back when they leave, next to the
    /// same devices on a bare QUIC server with the edge's TLS and transport (the ceiling, in
    /// the same run). Needs a release build.
    Connections(ConnectionsArgs),
    /// The bare QUIC server `relayd bench connections` measures as its ceiling (started by it,
    /// not by hand): the edge's device TLS, transport, socket and runtime; each connection's
    /// first stream gets its first two frames echoed and is then held open. Prints
    /// "quic-server listening on ADDR"; stops on SIGINT or SIGTERM.
    #[command(hide = true)]
    QuicServer(QuicServerArgs),
    /// A phone with a long chat history links a laptop through a devnet's real processes: time
    /// until the laptop shows the whole history and bytes transferred (snapshot blob and sync
    /// messages), by snapshot and by the sync protocol only, next to automerge's own save and
    /// load of the same documents and a raw QUIC stream in the same run; and one remote
    /// operation applied to a history as long. Needs a release build.
    Sync(SyncArgs),
    /// A 20 MB blob uploaded and downloaded by a client SDK device through a devnet's real
    /// processes (sealed on the device, stored with fsync by the region), next to a raw QUIC
    /// stream moving the same bytes in the same run; with the edge's and region's CPU. Needs a
    /// release build.
    Blobs(BlobsArgs),
    /// Presence and typing through a two-region devnet's real processes: P1, watchers in
    /// region 2 watching accounts of region 1 (watches per second, time to every first state,
    /// then the accounts connecting and leaving: updates delivered per second and change →
    /// watcher latency); P2, many connections of region 1 typing to one receiver of region 2
    /// within the edge's typing rate (notices per second, send → receive latency); with the
    /// servers' CPU and raw QUIC request/response measured in the same run. Needs a release
    /// build.
    Presence(PresenceArgs),
    /// How fast a new region's directory replica catches up with the directory writer: N
    /// accounts pulled from the writer's change log over loopback QUIC (the writer's and the
    /// region's services in this process, on redb stores), next to its two halves alone in the
    /// same run (the writer reading the log, a store applying the pages) and the fsync rate.
    Directory(DirectoryArgs),
    /// How long an account's home move holds its requests and how fast it carries a backlog:
    /// an account with two devices and N messages queued for each moved from region 1 to
    /// region 2 (both regions' services in this process, on redb stores, over loopback QUIC,
    /// asked with region 1's own certificate as `relayd admin move-home` does), next to its two
    /// halves alone in the same run (the old home's store read into parts, the parts applied
    /// to an empty store) and the fsync rate.
    HomeMove(HomeMoveArgs),
    /// Wake-ups sent per second by the WebPush provider a region pushes with (encrypted,
    /// VAPID-signed, one HTTPS request each) to a loopback push service that verifies and
    /// decrypts each, next to plain HTTPS POSTs of the same size to the same server in the
    /// same run.
    Push(PushArgs),
}

/// Arguments of `relayd bench directory`.
#[derive(Debug, Args)]
pub struct DirectoryArgs {
    /// Accounts in the writer's directory (default 100,000; 5,000 with --quick).
    #[arg(long)]
    accounts: Option<u64>,
    /// Groups in the writer's directory (default 2,000; 100 with --quick), each of --members
    /// accounts.
    #[arg(long)]
    groups: Option<u64>,
    /// Members of each group (default 100; at most --accounts and a group's 1,024).
    #[arg(long)]
    members: Option<u64>,
    /// Folder for the stores (a temporary folder inside it, removed afterwards). Default: the
    /// system's temporary folder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A short run for CI.
    #[arg(long)]
    quick: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `relayd bench home-move`.
#[derive(Debug, Args)]
pub struct HomeMoveArgs {
    /// Messages queued for each of the account's two devices (default 10,000; 1,000 with
    /// --quick).
    #[arg(long)]
    messages: Option<u64>,
    /// Folder for the stores (a temporary folder inside it, removed afterwards). Default: the
    /// system's temporary folder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A short run for CI.
    #[arg(long)]
    quick: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `relayd bench push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Pushes to measure (default 5,000; 500 with --quick), and as many baseline POSTs.
    #[arg(long)]
    pushes: Option<usize>,
    /// Pushes in flight at once.
    #[arg(long, default_value_t = relay_bench::limits::PUSH_CONCURRENCY_DEFAULT)]
    concurrency: usize,
    /// A short run for CI.
    #[arg(long)]
    quick: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `relayd bench presence`.
#[derive(Debug, Args)]
pub struct PresenceArgs {
    /// P1's watcher devices, homed in region 2 (default 1,000; 100 with --quick).
    #[arg(long)]
    watchers: Option<usize>,
    /// P1's watched accounts, homed in region 1; every watcher watches each (1 to 64).
    #[arg(long, default_value_t = PRESENCE_ACCOUNTS_DEFAULT)]
    accounts: usize,
    /// Times every watched account's device connects and leaves (default 10; 3 with --quick).
    #[arg(long)]
    cycles: Option<u32>,
    /// P2's typing sender connections, homed in region 1, each sending one indicator a second
    /// (the edge's sustained typing rate) (default 1,000; 50 with --quick).
    #[arg(long)]
    typing_senders: Option<usize>,
    /// Measured seconds of P2 (default 10; 3 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Folder to run in; the run uses a temporary folder inside it and removes it afterwards
    /// (keeps it, and says so, when the run fails). Default: the system's temporary folder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// A short smoke run: 100 watchers, 3 cycles, 50 typing senders for 3 s, a 1 s ceiling.
    #[arg(long)]
    quick: bool,
    /// Run on a debug build of relayd anyway (its figures say nothing about Relay's speed).
    #[arg(long)]
    allow_debug: bool,
}

/// Arguments of `relayd bench blobs`.
#[derive(Debug, Args)]
pub struct BlobsArgs {
    /// Megabytes (10^6 bytes) of the blob (default 20; 4 with --quick).
    #[arg(long)]
    megabytes: Option<usize>,
    /// Rounds of each direction; the median is reported (default 3; 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Folder to run in; the run uses a temporary folder inside it and removes it afterwards
    /// (keeps it, and says so, when the run fails). Default: the system's temporary folder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// A short smoke run: a 4 MB blob, one round.
    #[arg(long)]
    quick: bool,
    /// Run on a debug build of relayd anyway (its figures say nothing about Relay's speed).
    #[arg(long)]
    allow_debug: bool,
}

/// Arguments of `relayd bench sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Messages in the long history, with edits, deletions, reactions and read marks (default
    /// 100,000; 2,000 with --quick).
    #[arg(long)]
    messages: Option<u64>,
    /// Messages of the history linked both by snapshot and by the sync protocol only (default
    /// 10,000; 1,000 with --quick; 0: no comparison).
    #[arg(long)]
    compare_messages: Option<u64>,
    /// Folder to run in; the run uses a temporary folder inside it and removes it afterwards
    /// (keeps it, and says so, when the run fails). Default: the system's temporary folder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// A short smoke run: 2,000 messages, compared at 1,000.
    #[arg(long)]
    quick: bool,
    /// Run on a debug build of relayd anyway (its figures say nothing about Relay's speed).
    #[arg(long)]
    allow_debug: bool,
}

/// Arguments of `relayd bench storage`.
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// Measured seconds of each cell (after a warm-up of a quarter of it, at most 1 s); the
    /// default run takes about 60 s.
    #[arg(long)]
    seconds: Option<f64>,
    /// Concurrent writer counts, one row each.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    writers: Vec<usize>,
    /// Folder on the disk to measure; the run uses a temporary folder inside it and removes it
    /// afterwards. Default: the system's temporary folder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// A short smoke run (about 10 s): 0.6 s per cell unless --seconds is given.
    #[arg(long)]
    quick: bool,
    /// Also run each row's layers shipping every commit to a standby (`relayd standby`, this
    /// executable, as a child process on loopback): what a standby costs in throughput and
    /// commit latency.
    #[arg(long)]
    standby: bool,
}

/// Arguments of `relayd bench messages`.
#[derive(Debug, Args)]
pub struct MessagesArgs {
    /// Measured seconds of each W1 row (after a warm-up of a quarter of it, at most 2 s); the
    /// default run takes about two minutes.
    #[arg(long)]
    seconds: Option<f64>,
    /// Senders (each with its own receiver) of the W1 rows.
    #[arg(long, default_value_t = SENDERS_DEFAULT)]
    senders: usize,
    /// Regions of the devnet: 2 adds the row across two regions.
    #[arg(long, default_value_t = 2)]
    regions: u32,
    /// Members of each W3 group, the sender included (up to 4 sizes, each 2 to 1,024; default
    /// 100,1024); the first size also gets the open-loop row. Opaque mode only.
    #[arg(long, value_delimiter = ',')]
    group_members: Option<Vec<usize>>,
    /// Leave out W3 (the group rows).
    #[arg(long, conflicts_with = "group_members")]
    no_groups: bool,
    /// Folder to run in; the run uses a temporary folder inside it and removes it afterwards
    /// (keeps it, and says so, when the run fails). Default: the system's temporary folder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// A short smoke run: 2 s per W1 row unless --seconds is given, a backlog of 300 messages.
    #[arg(long)]
    quick: bool,
    /// Run on a debug build of relayd anyway (its figures say nothing about Relay's speed).
    #[arg(long)]
    allow_debug: bool,
    /// Give each region a standby (`relayd devnet --standbys`): every commit is acknowledged
    /// once the standby has it durable too. Compare with a run without.
    #[arg(long)]
    standbys: bool,
    /// Which devices send and receive: `opaque` (minimal devices sending opaque payloads: the
    /// servers' capacity) or `e2ee` (real client SDK devices, each with Olm sessions and its
    /// own SQLite store in the run's folder: what people's devices cost, this process's CPU
    /// included). The servers cannot tell them apart.
    #[arg(long, value_enum, default_value_t = ModeArg::Opaque)]
    mode: ModeArg,
}

/// The devices of `relayd bench messages`, as the command line names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    /// Minimal devices sending opaque payloads.
    Opaque,
    /// Client SDK devices, end-to-end encrypted.
    E2ee,
}

/// Arguments of `relayd bench quic-server`.
#[derive(Debug, Args)]
pub struct QuicServerArgs {
    /// The server's certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// The certificate's private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Address to listen on (port 0: any free port, printed once bound).
    #[arg(long)]
    listen: std::net::SocketAddr,
}

/// Arguments of `relayd bench connections`.
#[derive(Debug, Args)]
pub struct ConnectionsArgs {
    /// Idle devices to connect (default 10,000; 200 with --quick).
    #[arg(long)]
    devices: Option<usize>,
    /// Folder to run in; the run uses a temporary folder inside it and removes it afterwards
    /// (keeps it, and says so, when the run fails). Default: the system's temporary folder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// A short smoke run: 200 devices unless --devices is given.
    #[arg(long)]
    quick: bool,
    /// Run on a debug build of relayd anyway (its figures say nothing about Relay's speed).
    #[arg(long)]
    allow_debug: bool,
}

/// How this executable was built.
fn build() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The `relayd` executable the devnet under test runs: this one. A debug build is refused
/// unless `allow_debug`.
fn servers_executable(benchmark: &str, allow_debug: bool) -> Result<PathBuf> {
    if cfg!(debug_assertions) && !allow_debug {
        bail!(
            "this relayd is a debug build, and `relayd bench {benchmark}` runs the servers as \
             processes of this very executable: unoptimized, they are many times slower, and \
             the figures would measure the debug build rather than Relay. Run the release \
             build: cargo run --release -p relayd -- bench {benchmark} (or pass --allow-debug \
             for a smoke run whose figures mean nothing)"
        );
    }
    std::env::current_exe().context("finding the relayd executable")
}

/// Runs a benchmark under a progress bar of `steps` named `title` (hidden under `--json`),
/// then prints its report: as JSON, or as the table `table` makes of it.
fn report<R: serde::Serialize>(
    steps: u64,
    title: &str,
    json: bool,
    run: impl FnOnce(&(dyn Fn(&str) + Sync)) -> std::result::Result<R, relay_bench::BenchError>,
    table: impl FnOnce(&R) -> String,
) -> Result<()> {
    let bar = crate::progress::bar(steps, title, json);
    let report = run(&|step| {
        bar.inc(1);
        bar.set_message(step.to_owned());
    })?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// `given`, else the quick run's value or the default.
fn quick_or<T>(given: Option<T>, quick: bool, quick_value: T, default: T) -> T {
    given.unwrap_or(if quick { quick_value } else { default })
}

/// Runs one benchmark and prints its report.
pub fn run(benchmark: Benchmark) -> Result<()> {
    match benchmark {
        Benchmark::Storage(args) => {
            let options = StorageOptions {
                window_seconds: match (args.seconds, args.quick) {
                    (Some(seconds), _) => seconds,
                    (None, true) => WINDOW_SECONDS_QUICK,
                    (None, false) => WINDOW_SECONDS_DEFAULT,
                },
                writers: args.writers,
                data: args.data,
                standby: if args.standby {
                    Some(std::env::current_exe().context("finding this executable")?)
                } else {
                    None
                },
            };
            report(
                storage::steps(&options),
                "relayd bench storage",
                args.json,
                |step| storage::run(&options, step),
                |report| report.table(),
            )
        }
        Benchmark::Messages(args) => {
            let options = MessagesOptions {
                relayd: servers_executable("messages", args.allow_debug)?,
                senders: args.senders,
                regions: args.regions,
                window_seconds: match (args.seconds, args.quick) {
                    (Some(seconds), _) => seconds,
                    (None, true) => MESSAGES_WINDOW_SECONDS_QUICK,
                    (None, false) => MESSAGES_WINDOW_SECONDS_DEFAULT,
                },
                backlog_messages: if args.quick {
                    BACKLOG_MESSAGES_QUICK
                } else {
                    BACKLOG_MESSAGES
                },
                data: args.data,
                build: build().into(),
                mode: match args.mode {
                    ModeArg::Opaque => ClientMode::Opaque,
                    ModeArg::E2ee => ClientMode::E2ee,
                },
                standbys: args.standbys,
                group_members: match (args.no_groups, args.group_members) {
                    (true, _) => Vec::new(),
                    (false, Some(sizes)) => sizes,
                    (false, None) => GROUP_MEMBERS_DEFAULT.to_vec(),
                },
            };
            report(
                messages::steps(&options),
                "relayd bench messages",
                args.json,
                |step| messages::run(&options, step, async { shutdown_signal().await }),
                |report| report.table(),
            )
        }
        Benchmark::Connections(args) => {
            let options = ConnectionsOptions {
                relayd: servers_executable("connections", args.allow_debug)?,
                devices: quick_or(
                    args.devices,
                    args.quick,
                    IDLE_DEVICES_QUICK,
                    IDLE_DEVICES_DEFAULT,
                ),
                data: args.data,
                build: build().into(),
            };
            report(
                connections::steps(),
                "relayd bench connections",
                args.json,
                |step| connections::run(&options, step, async { shutdown_signal().await }),
                |report| report.table(),
            )
        }
        Benchmark::QuicServer(args) => crate::serve::bare_quic(&args.cert, &args.key, args.listen),
        Benchmark::Blobs(args) => {
            let options = BlobsOptions {
                relayd: servers_executable("blobs", args.allow_debug)?,
                blob_bytes: match (args.megabytes, args.quick) {
                    (Some(megabytes), _) => megabytes.saturating_mul(1_000_000),
                    (None, true) => BLOB_BYTES_QUICK,
                    (None, false) => BLOB_BYTES_DEFAULT,
                },
                rounds: args
                    .rounds
                    .unwrap_or(if args.quick { 1 } else { BLOB_ROUNDS_DEFAULT }),
                data: args.data,
                build: build().into(),
            };
            report(
                blobs::steps(&options),
                "relayd bench blobs",
                args.json,
                |step| {
                    blobs::run(
                        &options,
                        step,
                        // Made inside the run's runtime: tokio's signals need its reactor.
                        async { shutdown_signal().await },
                    )
                },
                |report| report.table(),
            )
        }
        Benchmark::Directory(args) => {
            let options = relay_bench::directory::DirectoryOptions {
                accounts: quick_or(
                    args.accounts,
                    args.quick,
                    relay_bench::limits::DIRECTORY_ACCOUNTS_QUICK,
                    relay_bench::limits::DIRECTORY_ACCOUNTS_DEFAULT,
                ),
                groups: quick_or(
                    args.groups,
                    args.quick,
                    relay_bench::limits::DIRECTORY_GROUPS_QUICK,
                    relay_bench::limits::DIRECTORY_GROUPS_DEFAULT,
                ),
                members: args
                    .members
                    .unwrap_or(relay_bench::limits::DIRECTORY_GROUP_MEMBERS),
                data: args.data,
                build: build().into(),
            };
            report(
                relay_bench::directory::steps(),
                "relayd bench directory",
                args.json,
                |step| relay_bench::directory::run_blocking(&options, step),
                relay_bench::directory::DirectoryReport::table,
            )
        }
        Benchmark::HomeMove(args) => {
            let options = relay_bench::home_move::HomeMoveOptions {
                messages: quick_or(
                    args.messages,
                    args.quick,
                    relay_bench::limits::HOME_MOVE_MESSAGES_QUICK,
                    relay_bench::limits::HOME_MOVE_MESSAGES_DEFAULT,
                ),
                data: args.data,
                build: build().into(),
            };
            report(
                relay_bench::home_move::steps(),
                "relayd bench home-move",
                args.json,
                |step| relay_bench::home_move::run_blocking(&options, step),
                relay_bench::home_move::HomeMoveReport::table,
            )
        }
        Benchmark::Push(args) => {
            let options = relay_bench::push::PushOptions {
                pushes: quick_or(
                    args.pushes,
                    args.quick,
                    relay_bench::limits::PUSHES_QUICK,
                    relay_bench::limits::PUSHES_DEFAULT,
                ),
                concurrency: args.concurrency,
                build: build().into(),
            };
            report(
                relay_bench::push::steps(),
                "relayd bench push",
                args.json,
                |step| relay_bench::push::run(&options, step),
                relay_bench::push::PushReport::table,
            )
        }
        Benchmark::Presence(args) => {
            let quick = args.quick;
            let options = PresenceOptions {
                relayd: servers_executable("presence", args.allow_debug)?,
                watchers: quick_or(
                    args.watchers,
                    quick,
                    PRESENCE_WATCHERS_QUICK,
                    PRESENCE_WATCHERS_DEFAULT,
                ),
                accounts: args.accounts,
                cycles: quick_or(
                    args.cycles,
                    quick,
                    PRESENCE_CYCLES_QUICK,
                    PRESENCE_CYCLES_DEFAULT,
                ),
                typing_senders: quick_or(
                    args.typing_senders,
                    quick,
                    TYPING_SENDERS_QUICK,
                    TYPING_SENDERS_DEFAULT,
                ),
                typing_seconds: quick_or(
                    args.seconds,
                    quick,
                    TYPING_WINDOW_SECONDS_QUICK,
                    TYPING_WINDOW_SECONDS_DEFAULT,
                ),
                ceiling_seconds: if quick {
                    PRESENCE_CEILING_SECONDS_QUICK
                } else {
                    PRESENCE_CEILING_SECONDS_DEFAULT
                },
                data: args.data,
                build: build().into(),
            };
            report(
                presence::steps(),
                "relayd bench presence",
                args.json,
                |step| presence::run(&options, step, async { shutdown_signal().await }),
                |report| report.table(),
            )
        }
        Benchmark::Sync(args) => {
            let options = SyncOptions {
                relayd: servers_executable("sync", args.allow_debug)?,
                messages: quick_or(
                    args.messages,
                    args.quick,
                    SYNC_MESSAGES_QUICK,
                    SYNC_MESSAGES_DEFAULT,
                ),
                compare_messages: quick_or(
                    args.compare_messages,
                    args.quick,
                    SYNC_COMPARE_MESSAGES_QUICK,
                    SYNC_COMPARE_MESSAGES_DEFAULT,
                ),
                data: args.data,
                build: build().into(),
            };
            report(
                sync::steps(&options),
                "relayd bench sync",
                args.json,
                |step| sync::run(&options, step, async { shutdown_signal().await }),
                |report| report.table(),
            )
        }
    }
}
