//! `relayd devnet`: wiring of [`relay_devnet`] (the launcher) to the command line: its events are
//! printed as sentences, or as JSON lines with `--json`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use relay_devnet::{DevnetEvent, DevnetOptions};

use crate::serve::shutdown_signal;

/// Arguments of `relayd devnet`.
#[derive(Debug, Args)]
pub struct DevnetArgs {
    /// How many regions (each with its own edge).
    #[arg(long, default_value_t = 2)]
    regions: u32,
    /// Folder holding every process's store, config, certificates and logs.
    #[arg(long)]
    data: PathBuf,
    /// Print machine-readable JSON lines instead of the guide.
    #[arg(long)]
    json: bool,
}

/// `relayd devnet`.
pub fn run(args: DevnetArgs) -> Result<()> {
    let options = DevnetOptions {
        regions: args.regions,
        data: args.data,
        relayd: std::env::current_exe().context("finding the relayd executable")?,
    };
    let json = args.json;
    let print = move |event: DevnetEvent| {
        let mut stdout = std::io::stdout().lock();
        let _ = if json {
            writeln!(stdout, "{}", event.to_json())
        } else {
            writeln!(stdout, "{event}")
        };
        let _ = stdout.flush();
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(relay_devnet::run(options, print, shutdown_signal()))?;
    Ok(())
}
