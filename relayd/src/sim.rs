//! `relayd sim`: sweeps of the deterministic simulation (relay-chaos) over many seeds, with a
//! summary table (or JSON) of runs, simulated time, faults injected by kind and violations.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use relay_chaos::history::LIVENESS_BOUND_MS;
use relay_chaos::{Report, Swarm, SwarmSummary};
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
    /// finds it: skip-sender-seq-check, ack-before-commit or receipt-moves-backwards.
    #[arg(long, value_parser = parse_bug)]
    plant: Option<PlantedBug>,
    /// Print the trace of every run that breaks an invariant (with --seeds 1, of the run).
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
    let real = started.elapsed();
    if args.json {
        println!("{}", json(&summary, first_seed, real, args.plant));
    } else {
        print!("{}", table(&summary, real, args.plant));
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

fn table(summary: &SwarmSummary, real: Duration, plant: Option<PlantedBug>) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| out.push_str(&format!("  {label:<36} {value}\n"));
    line("runs", summary.runs.to_string());
    line("simulated time", hours(summary.simulated));
    line("real time", format!("{:.1} s", real.as_secs_f64()));
    let (planned, acked, received) = summary.messages;
    line(
        "messages planned / acked / received",
        format!("{planned} / {acked} / {received}"),
    );
    line(
        "slowest delivery after a heal",
        format!(
            "{:.1} s (bound {} s)",
            summary.slowest_delivery_ms as f64 / 1000.0,
            LIVENESS_BOUND_MS / 1000
        ),
    );
    out.push_str("  faults injected\n");
    for (kind, count) in &summary.faults {
        out.push_str(&format!("    {:<34} {count}\n", kind.name()));
    }
    out.push_str(&format!(
        "    {:<34} {}\n",
        "store commits failed (disk)", summary.store_commits_failed
    ));
    let violations = summary.violations();
    let total: u64 = violations.values().sum();
    out.push_str(&format!("  {:<36} {total}\n", "violations"));
    for (invariant, count) in &violations {
        out.push_str(&format!("    {:<34} {count}\n", invariant.to_string()));
    }
    for failure in &summary.failures {
        if let Some(error) = &failure.error {
            out.push_str(&format!("  seed={}: {error}\n", failure.seed));
        }
        for violation in failure.violations.iter().take(10) {
            out.push_str(&format!("  seed={}: {violation}\n", failure.seed));
        }
        let planted = plant
            .map(|bug| format!(" --plant {bug}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  reproduce with seed={0}: relayd sim --first-seed {0} --seeds 1 --trace{planted}\n",
            failure.seed
        ));
    }
    out
}

fn json(
    summary: &SwarmSummary,
    first_seed: u64,
    real: Duration,
    plant: Option<PlantedBug>,
) -> serde_json::Value {
    let faults: serde_json::Map<String, serde_json::Value> = summary
        .faults
        .iter()
        .map(|(kind, count)| (kind.name().to_owned(), (*count).into()))
        .collect();
    let violations: serde_json::Map<String, serde_json::Value> = summary
        .violations()
        .iter()
        .map(|(invariant, count)| (invariant.to_string(), (*count).into()))
        .collect();
    let failures: Vec<serde_json::Value> = summary
        .failures
        .iter()
        .map(|failure| {
            serde_json::json!({
                "seed": failure.seed,
                "error": failure.error,
                "violations": failure.violations.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "first_seed": first_seed,
        "runs": summary.runs,
        "planted": plant.map(|bug| bug.name()),
        "simulated_s": summary.simulated.as_secs_f64(),
        "real_s": real.as_secs_f64(),
        "messages": {
            "planned": summary.messages.0,
            "acknowledged": summary.messages.1,
            "received": summary.messages.2,
        },
        "slowest_delivery_ms": summary.slowest_delivery_ms,
        "faults": faults,
        "store_commits_failed": summary.store_commits_failed,
        "violations": violations,
        "failures": failures,
        // Per seed: [seed, simulated ms, digest of the datagrams]; equal sweeps agree on each.
        "fingerprints": summary.fingerprints,
    })
}

fn hours(duration: Duration) -> String {
    let seconds = duration.as_secs();
    format!(
        "{}h {:02}m {:02}s",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}
