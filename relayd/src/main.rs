//! `relayd`: runs Relay's servers (regions, edges, the edge locator) and the devnet launcher.
//! Wiring only: parse the command line and configuration, build, run.

mod admin;
mod bench;
mod chaos;
mod devnet;
mod drill;
mod progress;
mod serve;
mod sim;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc, tuned by [`tune_allocator`]: with 10,000 devices gone from an edge it handed back
/// all but 34 MB of 424 MB, where glibc's allocator kept 388 MB and mimalloc's 401 MB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Relay's server daemon.
#[derive(Debug, Parser)]
#[command(
    name = "relayd",
    version,
    about = "Relay's servers: regions, edges, the edge locator, and a devnet that runs them all on loopback",
    long_about = "Relay's servers.\n\n\
        Start everything on one machine:   relayd devnet --regions 2 --data ./devnet-data\n\
        Run one server from a config file: relayd region --config region.toml\n\
                                           relayd edge --config edge.toml\n\
                                           relayd locator --config locator.toml\n\
        Check a stopped region's store:    relayd admin check-store --data ./devnet-data/region-2\n\n\
        Each server prints '<role> listening on <address>' once it is bound. Logs go to stderr\n\
        (filter with RELAY_LOG, e.g. RELAY_LOG=debug)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole topology as separate processes on loopback: the locator, N regions (each
    /// with its embedded store under --data) and one edge per region. Region k's services and
    /// clients use 127.0.k.0/24. Ctrl-C stops every child; restarting on the same --data keeps
    /// all data (and, when free, the same ports).
    Devnet(devnet::DevnetArgs),
    /// Run a region (home of accounts: chat logs, device queues, key directory).
    ///
    /// Before binding, the region checks that its store is the one it expects: the store's
    /// recorded region and deployment (the SHA-256 of the CA certificate), the store id in the
    /// marker file beside it, and, for an empty store, the directory writer's census of the
    /// region. A store that fails is refused with a message that says what to do.
    Region {
        /// The region's TOML configuration (see home-region/region.example.toml).
        #[arg(long)]
        config: PathBuf,
        /// Start on an empty store although a store or accounts lived in this region: they are
        /// lost (logged loudly) and the new store is registered at the directory writer.
        #[arg(long)]
        accept_new_store: bool,
    },
    /// Run a region's standby: a copy of the region's store that receives every commit before
    /// the region acknowledges it (the region's `[replication] standby` names this address).
    ///
    /// The standby accepts only a primary presenting the region's own certificate. A new or
    /// lagging standby is brought up to date by the region (the groups it lacks, or a full
    /// copy). Its folder is a region data folder: to promote it, stop it and start the region
    /// with `data_dir` set to it (see home-region/standby.example.toml).
    Standby {
        /// The standby's TOML configuration (see home-region/standby.example.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run an edge (QUIC for devices; forwards to regions).
    Edge {
        /// The edge's TOML configuration (see edge/edge.example.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the DNS edge locator (answers edge.relay.test with the nearest edge).
    Locator {
        /// The locator's TOML configuration (see edge/locator.example.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Sweep the deterministic simulation over many seeds: each seed picks a topology, a
    /// workload and a mix of faults (crashes, partitions, clogs, pauses, loss, duplication,
    /// clock skew, store faults), runs the real regions, edges and clients over simulated QUIC
    /// in one thread, heals, and checks every invariant. Prints runs, simulated time, faults by
    /// kind and violations; a failure prints the seed and the command that reruns it.
    /// Example: relayd sim --seeds 1000
    Sim(sim::SimArgs),
    /// Run the devnet's real processes under load and faults, then check what the clients saw.
    ///
    /// Starts `relayd devnet`, registers in-process clients (client i of region k binds
    /// 127.0.k.(10+i)), and while they send their messages SIGKILLs (the devnet restarts them),
    /// pauses (SIGSTOP/SIGCONT) and partitions regions and edges. Partitions are nftables drop
    /// rules between 127.0.k.0/24 and the other regions inside a network namespace of its own
    /// (as root with `ip` and `nft`), else pauses of the whole region. Then every fault is
    /// lifted, the clients sync until everything has arrived, and the simulation's history
    /// checker prints lost / duplicated / out-of-order / undecryptable counts; any non-zero count
    /// (or a crash) exits non-zero.
    ///
    /// Example: relayd chaos --regions 2 --clients-per-region 2 --messages 20 --duration 20 --seed 7
    Chaos(chaos::ChaosArgs),
    /// Operator commands on a stopped region's store: `check-store` (integrity and every device
    /// queue, listing damaged and quarantined devices) and `repair-store`.
    Admin {
        /// The command.
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// Run a drill on a devnet of real processes and print its report (`relayd drill failover`).
    Drill {
        /// The drill to run.
        #[command(subcommand)]
        drill: drill::Drill,
    },
    /// Run a benchmark and print its table (e.g. `relayd bench storage`).
    Bench {
        /// The benchmark to run.
        #[command(subcommand)]
        benchmark: bench::Benchmark,
    },
}

/// How long jemalloc keeps freed pages before handing them back to the system, in ms.
const ALLOCATOR_DIRTY_DECAY_MS: isize = 1_000;

/// Lets jemalloc hand freed memory back to the system within about
/// [`ALLOCATOR_DIRTY_DECAY_MS`], from a background thread: an edge whose devices left is
/// otherwise idle, and idle threads return nothing. The decay is set for arena 0, made before
/// `main` (an edge's threads all use it: `serve::edge_runtime`), and for the arenas made later.
fn tune_allocator() -> Result<(), String> {
    use tikv_jemalloc_ctl::{Access, AsName};
    let set = |name: &[u8], value: isize| {
        name.name()
            .write(value)
            .map_err(|error| format!("{}: {error}", String::from_utf8_lossy(name)))
    };
    set(b"arena.0.dirty_decay_ms\0", ALLOCATOR_DIRTY_DECAY_MS)?;
    set(b"arena.0.muzzy_decay_ms\0", 0)?;
    set(b"arenas.dirty_decay_ms\0", ALLOCATOR_DIRTY_DECAY_MS)?;
    set(b"arenas.muzzy_decay_ms\0", 0)?;
    tikv_jemalloc_ctl::background_thread::write(true)
        .map_err(|error| format!("background_thread: {error}"))
}

fn main() -> ExitCode {
    if let Err(error) = tune_allocator() {
        eprintln!("relayd: the allocator keeps its defaults: {error}");
    }
    let cli = Cli::parse();
    // Every command that prints for a person takes --json; its errors then come as JSON too.
    let json = std::env::args_os()
        .skip(1)
        .any(|argument| argument == "--json");
    // A sweep runs thousands of simulated services whose logs would drown its summary (the
    // run's trace is what explains a failure); RELAY_LOG still turns them on.
    let default_filter = match cli.command {
        Command::Sim(_) => "off",
        _ => "info,hickory_server=warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Devnet(args) => devnet::run(args),
        Command::Region {
            config,
            accept_new_store,
        } => serve::region(&config, accept_new_store),
        Command::Standby { config } => serve::standby(&config),
        Command::Edge { config } => serve::edge(&config),
        Command::Locator { config } => serve::locator(&config),
        Command::Sim(args) => sim::run(args),
        Command::Drill { drill } => drill::run(drill),
        Command::Bench { benchmark } => bench::run(benchmark),
        Command::Chaos(args) => chaos::run(args),
        Command::Admin { command } => admin::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            print_error(&format!("{error:#}"), json);
            ExitCode::FAILURE
        }
    }
}

/// Prints a failed command's error on stderr: `relayd: …`, or with `--json` one JSON object,
/// `{"event":"error","message":M,"exit_code":1}`, as the `relay` client does.
fn print_error(message: &str, json: bool) {
    if json {
        let line = serde_json::json!({
            "event": "error",
            "message": message,
            "exit_code": 1,
        });
        eprintln!("{line}");
    } else {
        eprintln!("relayd: {message}");
    }
}
