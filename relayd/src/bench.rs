//! `relayd bench`: the command line of [`relay_bench`] (each workload next to its ceilings
//! measured in the same run): arguments in, a table or JSON out.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use relay_bench::storage::{self, StorageOptions, WINDOW_SECONDS_DEFAULT, WINDOW_SECONDS_QUICK};
use relay_bench::sync;

/// The benchmarks of `relayd bench`.
#[derive(Debug, Subcommand)]
pub enum Benchmark {
    /// Durable appends per second into chat log + device queues for several writer counts,
    /// next to raw redb (batched, and one fsync per message) and the disk's fsync rate.
    Storage(StorageArgs),
    /// A new device's bootstrap of a long chat history from a snapshot (saved size, load time)
    /// and one remote operation applied, next to automerge's own save and load of the same
    /// documents.
    Sync(SyncArgs),
}

/// Arguments of `relayd bench sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Messages in the history (with edits, deletions, reactions and read marks).
    #[arg(long, default_value_t = sync::MESSAGES_DEFAULT)]
    messages: u64,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
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
            };
            let bar =
                crate::progress::bar(storage::steps(&options), "relayd bench storage", args.json);
            let report = storage::run(&options, &|step| {
                bar.inc(1);
                bar.set_message(step.to_owned());
            })?;
            bar.finish_and_clear();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Benchmark::Sync(args) => {
            let report = sync::run(args.messages)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
    }
}
