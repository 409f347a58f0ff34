//! `relayd chaos`: the command line of [`relay_chaos::real`] (the devnet's real processes under
//! load and faults, checked with the simulation's history checker): arguments, the network
//! namespace it reruns itself in for partitions, the data folder, and printing the report.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use relay_chaos::real::netns::{self, Namespace, Partitions};
use relay_chaos::real::schedule::FaultKind;
use relay_chaos::real::{self, Config, Report};

use crate::serve::shutdown_signal;

/// Arguments of `relayd chaos`.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Regions (each with its own edge), as in `relayd devnet`.
    #[arg(long, default_value_t = 2)]
    regions: u32,
    /// Clients homed in each region; client i of region k binds 127.0.k.(10 + i) and finds its
    /// edge through the devnet's locator.
    #[arg(long, default_value_t = 2)]
    clients_per_region: u32,
    /// Messages each client sends, each to a client drawn from the seed, spread over the fault
    /// phase.
    #[arg(long, default_value_t = 20)]
    messages: u32,
    /// Seconds of faults. The phase goes on until every selected kind has hit both a region and
    /// an edge at least once, so it may run a little longer.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds the clients may take, once every fault is lifted and every process runs, to
    /// receive everything (they stop as soon as they have).
    #[arg(long, default_value_t = 120)]
    heal_timeout: u64,
    /// Seed of the workload (who sends what to whom, and when) and of the fault schedule; drawn
    /// at random and printed when absent. Real timing varies, so a seed repeats the plan, not
    /// the exact interleaving.
    #[arg(long)]
    seed: Option<u64>,
    /// Which faults to inject (comma-separated): kill (SIGKILL; the devnet restarts the
    /// process), pause (SIGSTOP, later SIGCONT), partition (nftables drop rules between one
    /// region's 127.0.k.0/24 and the others', both ways or one way; needs root, `ip` and `nft`,
    /// else regions are paused instead).
    #[arg(long, value_delimiter = ',', default_value = "kill,pause,partition", value_parser = parse_fault_kind)]
    faults: Vec<FaultKind>,
    /// Folder for the devnet's data and logs and the clients' stores: new or empty. Default: a
    /// temporary folder, deleted after a clean run and kept (and printed) otherwise.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the report as one JSON object (progress goes to stderr either way).
    #[arg(long)]
    json: bool,
    /// Print the clients' recorded trace (every send, ack and arrival) to stderr at the end.
    #[arg(long)]
    trace: bool,
    /// Set by `relayd chaos` itself when it reruns inside the network namespace it made.
    #[arg(long, hide = true)]
    inside_netns: Option<String>,
}

/// `relayd chaos`.
pub fn run(args: ChaosArgs) -> Result<()> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let partitions_wanted = args.faults.contains(&FaultKind::Partition) && args.regions >= 2;
    let partitions = match &args.inside_netns {
        Some(namespace) if !netns::is_current(namespace) => {
            bail!(
                "--inside-netns is for relayd chaos itself: this is not network namespace {namespace}"
            )
        }
        Some(namespace) => match netns::nft_prepare() {
            Ok(()) => Partitions::Nftables {
                namespace: namespace.clone(),
            },
            Err(error) => Partitions::Pauses {
                why: format!("nftables failed inside the namespace: {error}"),
            },
        },
        None if partitions_wanted => match netns::namespace_unavailable() {
            None => match Namespace::create() {
                Ok(namespace) => return rerun_inside(&namespace, args.seed.is_none(), seed),
                Err(error) => Partitions::Pauses {
                    why: format!("no network namespace could be made: {error}"),
                },
            },
            Some(why) => Partitions::Pauses { why },
        },
        None => Partitions::Off {
            why: if args.regions < 2 {
                "one region has no other to be cut off from".into()
            } else {
                "not selected".into()
            },
        },
    };

    let mut config = Config {
        seed,
        regions: args.regions,
        clients_per_region: args.clients_per_region,
        messages: args.messages,
        duration: Duration::from_secs(args.duration),
        heal_timeout: Duration::from_secs(args.heal_timeout),
        faults: args.faults.clone(),
        partitions,
        data: PathBuf::new(),
        relayd: std::env::current_exe().context("finding the relayd executable")?,
        trace: args.trace,
        progress: Arc::new(progress_sink(args.json)),
    };
    config.validate()?;
    let (data, temporary) = match &args.data {
        Some(data) => {
            prepare_data(data)?;
            (data.canonicalize().context("resolving --data")?, None)
        }
        None => {
            let temporary = tempfile::Builder::new()
                .prefix("relay-chaos-")
                .tempdir()
                .context("making a temporary folder")?;
            (temporary.path().to_owned(), Some(temporary))
        }
    };
    config.data = data.clone();
    progress(format!(
        "seed {seed}: {} regions × {} clients, {} messages each, {} s of faults; partitions: {}; data in {}",
        config.regions,
        config.clients_per_region,
        config.messages,
        args.duration,
        config.partitions.describe(),
        data.display()
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let outcome = runtime.block_on(async { real::run(&config, shutdown_signal()).await });
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            if let Some(temporary) = temporary {
                let kept = temporary.keep();
                progress(format!("data kept in {}", kept.display()));
            }
            return Err(anyhow::Error::new(error).context(format!("relayd chaos with seed {seed}")));
        }
    };
    print_report(&report, args.json)?;
    if report.ok() {
        drop(temporary);
        Ok(())
    } else {
        if let Some(temporary) = temporary {
            let kept = temporary.keep();
            progress(format!("data and logs kept in {}", kept.display()));
        }
        bail!("the run broke invariants or did not finish cleanly; reproduce with --seed {seed}")
    }
}

fn parse_fault_kind(name: &str) -> Result<FaultKind, String> {
    name.parse()
}

/// Makes `--data` (it must be new or empty: clients register afresh).
fn prepare_data(data: &Path) -> Result<()> {
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let mut entries =
        std::fs::read_dir(data).with_context(|| format!("reading {}", data.display()))?;
    if entries.next().is_some() {
        bail!(
            "--data {} is not empty: give a new or empty folder",
            data.display()
        );
    }
    Ok(())
}

/// Runs this same command inside `namespace` and passes its exit status on.
fn rerun_inside(namespace: &Namespace, pass_seed: bool, seed: u64) -> Result<()> {
    let exe = std::env::current_exe().context("finding the relayd executable")?;
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if pass_seed {
        args.extend([OsString::from("--seed"), OsString::from(seed.to_string())]);
    }
    args.extend([
        OsString::from("--inside-netns"),
        OsString::from(namespace.name()),
    ]);
    progress(format!(
        "running inside network namespace {} (partitions as nftables rules there)",
        namespace.name()
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let status =
        runtime.block_on(async { namespace.run_inside(&exe, &args, shutdown_signal()).await })?;
    if !status.success() {
        bail!(
            "relayd chaos exited with {status} inside network namespace {}",
            namespace.name()
        );
    }
    Ok(())
}

fn print_report(report: &Report, json: bool) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    if json {
        writeln!(stdout, "{}", report.json())?;
    } else {
        write!(stdout, "{}", report.table())?;
    }
    stdout.flush()?;
    Ok(())
}

/// A progress line on stderr.
fn progress(line: String) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "chaos: {line}");
}

/// Where the run's progress goes: on a terminal, a spinner showing the latest line above the
/// lines so far; elsewhere (or with `--json`, where stdout is the report) plain lines on stderr.
fn progress_sink(json: bool) -> impl Fn(String) + Send + Sync {
    let spinner = crate::progress::spinner("relayd chaos", json);
    let shown = crate::progress::shown(json);
    move |line: String| {
        if shown {
            spinner.println(format!("chaos: {line}"));
            spinner.set_message(line);
        } else {
            progress(line);
        }
    }
}
