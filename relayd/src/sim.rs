//! `relayd sim`: sweeps of the deterministic simulation (relay-chaos) over many seeds, with a
//! summary table (or JSON) of runs, simulated time, faults injected by kind and violations.

use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use relay_chaos::{Report, Swarm};
use relay_planted::PlantedBug;

/// Options of `relayd sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed (default: drawn from the clock and printed, so each sweep explores new
    /// seeds and any failure can be rerun).
    #[arg(long)]
    first_seed: Option<u64>,
    /// Simulations run at once (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Plant a known bug in every run and stop at the first violation, to show the checker
    /// finds it: skip-sender-seq-check, ack-before-commit, receipt-moves-backwards,
    /// read-marks-stay-local or group-membership-unchecked.
    #[arg(long, value_parser = parse_bug)]
    plant: Option<PlantedBug>,
    /// Leave out the home moves each seed draws (an operator's `relayd admin move-home` of one
    /// or two accounts, in half the runs with two regions or more); the seed's other faults
    /// stay the same, so a failing seed can be tried without them.
    #[arg(long)]
    no_home_moves: bool,
    /// Give every region a standby (its own host and disk, the real replication over the
    /// simulated network: a region acknowledges only what its standby holds) and crash the
    /// standbys each seed draws; at the end every standby's copy must equal its region's store.
    #[arg(long)]
    standbys: bool,
    /// Give every region a standby and fail one region over in each run: it hangs for 2.5-5 s,
    /// past its standby's 2 s lease; the standby takes over on its own host, edges and regions
    /// follow it, and the old primary is fenced when it comes back. The checker holds the run
    /// to every invariant (nothing acknowledged lost).
    #[arg(long)]
    failovers: bool,
    /// Print the trace of every run that breaks an invariant or fails (with --seeds 1, of the run).
    #[arg(long)]
    trace: bool,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_bug(name: &str) -> Result<PlantedBug, String> {
    PlantedBug::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = PlantedBug::ALL.iter().map(|bug| bug.name()).collect();
        format!(
            "no planted bug {name:?}; choose one of {}",
            names.join(", ")
        )
    })
}

/// Runs the sweep and prints its summary; fails when an invariant broke (or, with `--plant`,
/// when the planted bug went unnoticed).
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let first_seed = match args.first_seed {
        Some(seed) => seed,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the system clock is before 1970")?
            .as_secs(),
    };
    let mut swarm = Swarm::new(first_seed, args.seeds);
    if let Some(threads) = args.threads {
        swarm.threads = threads.max(1);
    }
    swarm.home_moves = !args.no_home_moves;
    swarm.standbys = args.standbys;
    swarm.failovers = args.failovers;
    if let Some(bug) = args.plant {
        swarm.planted = vec![bug];
        swarm.stop_at_first_violation = true;
    }
    if !args.json {
        println!(
            "relayd sim: seeds {first_seed}..{} on {} thread(s){}",
            first_seed.saturating_add(args.seeds),
            swarm.threads,
            args.plant
                .map(|bug| format!(", planted bug {bug}"))
                .unwrap_or_default()
        );
    }
    let started = Instant::now();
    let trace = args.trace;
    let single = args.seeds == 1;
    let bar = crate::progress::bar(args.seeds, "relayd sim", args.json);
    let summary = swarm.run(|report: &Report| {
        bar.inc(1);
        if !report.violations.is_empty() {
            bar.set_message(format!("violations at seed={}", report.seed));
        }
        if trace && (single || !report.violations.is_empty()) {
            bar.suspend(|| {
                eprintln!("--- trace of seed={} ---", report.seed);
                eprint!("{}", report.trace_text());
            });
        }
    });
    bar.finish_and_clear();
    if trace {
        for failure in summary
            .failures
            .iter()
            .filter(|failure| failure.error.is_some())
        {
            eprintln!("--- trace of seed={} until it failed ---", failure.seed);
            eprint!("{}", failure.trace);
        }
    }
    let real = started.elapsed();
    if args.json {
        println!("{}", summary.json(first_seed, real, args.plant));
    } else {
        print!("{}", summary.table(real, args.plant));
    }
    match args.plant {
        Some(bug) if summary.failures.is_empty() => {
            bail!(
                "the planted bug {bug} went unnoticed in {} run(s)",
                summary.runs
            )
        }
        Some(_) => Ok(()),
        None if summary.is_clean() => Ok(()),
        None => bail!(
            "{} of {} run(s) broke an invariant or failed",
            summary.failures.len(),
            summary.runs
        ),
    }
}
