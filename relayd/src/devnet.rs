//! `relayd devnet`: wiring of [`relay_devnet`] (the launcher) to the command line: its events are
//! printed as sentences, or as JSON lines with `--json`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use relay_devnet::{DevnetEvent, DevnetOptions};
use relay_edge::config::LimitsConfig;

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
    /// Sustained requests per second each edge allows one device connection (default: the
    /// edge's own, 500).
    #[arg(long)]
    edge_requests_per_second: Option<u32>,
    /// Requests each edge allows one device connection in a burst (default: the edge's own,
    /// 12,000).
    #[arg(long)]
    edge_requests_burst: Option<u32>,
    /// Sustained new connections per second each edge admits from one source address
    /// (production's default is 20; a devnet's clients and benchmarks share a few loopback
    /// addresses, so by default a devnet admits 1,000,000).
    #[arg(long)]
    edge_connections_per_second_per_address: Option<u32>,
    /// New connections each edge admits from one source address in a burst (production's
    /// default is 100; a devnet's 1,000,000).
    #[arg(long)]
    edge_connections_burst_per_address: Option<u32>,
    /// A PEM file of CA certificates the regions trust for push services (a local WebPush
    /// service's). The regions always wake devices through WebPush, with the VAPID key in
    /// DATA/pki/vapid.pem, and accept push endpoints on loopback.
    #[arg(long, value_name = "PEM")]
    push_ca: Option<PathBuf>,
    /// Require a registration token to register, as a production deployment does (issue them
    /// with `relayd admin token --config DATA/region-1.toml`).
    #[arg(long)]
    require_tokens: bool,
    /// Give each region a standby (`standby-k` on 127.0.k.3, its copy under DATA/standby-k)
    /// that receives every commit before the region acknowledges it. To promote one, stop the
    /// devnet and start the region on the standby's folder (see the README's failover journey).
    #[arg(long)]
    standbys: bool,
    /// Serve no media endpoint at the regions: devices move blobs' bytes through their edges,
    /// as devices whose network reaches only the edges do (by default each region serves one
    /// on its host, 127.0.k.1, and devices upload and download there directly).
    #[arg(long)]
    no_media_endpoints: bool,
}

/// A devnet's per-address connection limits unless given: its clients and benchmarks share a
/// few loopback addresses.
const DEVNET_CONNECTIONS_PER_ADDRESS: u32 = 1_000_000;

/// `relayd devnet`.
pub fn run(args: DevnetArgs) -> Result<()> {
    let defaults = LimitsConfig::default();
    let options = DevnetOptions {
        regions: args.regions,
        data: args.data,
        relayd: std::env::current_exe().context("finding the relayd executable")?,
        edge_limits: LimitsConfig {
            requests_per_second: args
                .edge_requests_per_second
                .unwrap_or(defaults.requests_per_second),
            requests_burst: args.edge_requests_burst.unwrap_or(defaults.requests_burst),
            connections_per_second_per_address: args
                .edge_connections_per_second_per_address
                .unwrap_or(DEVNET_CONNECTIONS_PER_ADDRESS),
            connections_burst_per_address: args
                .edge_connections_burst_per_address
                .unwrap_or(DEVNET_CONNECTIONS_PER_ADDRESS),
        },
        push_ca: args.push_ca,
        require_tokens: args.require_tokens,
        standbys: args.standbys,
        media_endpoints: !args.no_media_endpoints,
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
        .block_on(async { relay_devnet::run(options, print, shutdown_signal()).await })?;
    Ok(())
}
