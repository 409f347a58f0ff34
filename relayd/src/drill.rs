//! `relayd drill failover`: the command line of [`relay_chaos::drill`] (a region's primary
//! fails under load on a devnet with standbys; the report gives the recovery time and what was
//! lost): arguments, the data folder, printing.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use relay_chaos::drill::{self, DrillConfig, DrillKind};
use relay_chaos::real::netns::{self, Namespace};

/// The drills of `relayd drill`.
#[derive(Debug, Subcommand)]
pub enum Drill {
    /// Fail a region's primary under load and measure the failover: starts a devnet with a
    /// standby per region (`relayd devnet --standbys`) and a sender and a receiver device per
    /// region (each sender to the next region's receiver, every message waiting for its ✓),
    /// fails the primary of --region a third of the way through the load, and reports the RTO
    /// (the longest time a sender waited for a ✓ after the failure; target < 5 s on loopback,
    /// lease included) and, once the receivers synced, messages acknowledged but lost,
    /// duplicated, out of order or undecryptable. Exits non-zero on any loss or if a sender
    /// never recovered; a planned failover also on any failed send attempt.
    ///
    /// Example: relayd drill failover --region 1 --kind pause
    ///          relayd drill failover --region 2 --kind planned
    Failover(FailoverArgs),
}

/// Arguments of `relayd drill failover`.
#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// The region whose primary fails.
    #[arg(long, default_value_t = 1)]
    region: u32,
    /// How it fails: kill (SIGKILL; the devnet does not start it again, as a machine that is
    /// gone), pause (SIGSTOP, then SIGCONT after the load: the old primary must be fenced),
    /// partition (every packet from and to the primary dropped by nftables, healed after the
    /// load: it must be fenced; the drill runs in a network namespace of its own, so it needs
    /// root with `ip` and `nft`) or planned (the operator's `relayd admin failover`: no send
    /// may fail).
    #[arg(long, default_value = "kill", value_parser = parse_kind)]
    kind: DrillKind,
    /// Regions of the devnet.
    #[arg(long, default_value_t = 2)]
    regions: u32,
    /// Seconds of load; the primary fails at a third of them.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Folder for the devnet and the devices (new or empty; kept). Default: a temporary
    /// folder, deleted after a passing drill.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the report as one JSON object (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Set by `relayd drill` itself when it reruns inside the network namespace it made.
    #[arg(long, hide = true)]
    inside_netns: Option<String>,
}

fn parse_kind(name: &str) -> Result<DrillKind, String> {
    name.parse()
}

/// Runs a drill and prints its report.
pub fn run(drill: Drill) -> Result<()> {
    let Drill::Failover(args) = drill;
    if args.kind == DrillKind::Partition {
        match &args.inside_netns {
            Some(namespace) if !netns::is_current(namespace) => {
                bail!(
                    "--inside-netns is for relayd drill itself: this is not network namespace \
                     {namespace}"
                )
            }
            Some(_) => netns::nft_prepare().context("preparing the nftables rules")?,
            None => {
                if let Some(why) = netns::namespace_unavailable() {
                    bail!(
                        "--kind partition drops packets with nftables inside a network namespace \
                         of its own, and this process cannot make one: {why}"
                    );
                }
                let namespace = Namespace::create().context("making a network namespace")?;
                return rerun_inside(&namespace);
            }
        }
    }
    let (data, temporary) = match &args.data {
        Some(data) => {
            std::fs::create_dir_all(data)
                .with_context(|| format!("creating {}", data.display()))?;
            if std::fs::read_dir(data)?.next().is_some() {
                bail!(
                    "--data {} is not empty: give a new or empty folder",
                    data.display()
                );
            }
            (data.canonicalize().context("resolving --data")?, None)
        }
        None => {
            let temporary = tempfile::Builder::new()
                .prefix("relay-drill-")
                .tempdir()
                .context("making a temporary folder")?;
            (temporary.path().to_owned(), Some(temporary))
        }
    };
    let json = args.json;
    let bar = crate::progress::spinner("relayd drill failover", json);
    let shown = crate::progress::shown(json);
    let config = DrillConfig {
        region: args.region,
        kind: args.kind,
        regions: args.regions,
        load_seconds: args.seconds,
        data: data.clone(),
        relayd: std::env::current_exe().context("finding the relayd executable")?,
        progress: Arc::new(move |line: String| {
            if shown {
                bar.println(format!("drill: {line}"));
                bar.set_message(line);
            } else {
                eprintln!("drill: {line}");
            }
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime.block_on(drill::run(&config));
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            if let Some(temporary) = temporary {
                eprintln!("drill: data kept in {}", temporary.keep().display());
            }
            return Err(anyhow::Error::new(error).context("relayd drill failover"));
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if report.pass {
        drop(temporary);
        Ok(())
    } else {
        if let Some(temporary) = temporary {
            eprintln!(
                "drill: data and logs kept in {}",
                temporary.keep().display()
            );
        }
        bail!("the failover lost, duplicated or reordered messages, or a sender never recovered")
    }
}

/// Runs this same `relayd drill` inside `namespace`, where its partition's nftables rules touch
/// nothing outside; its report and exit status are this one's.
fn rerun_inside(namespace: &Namespace) -> Result<()> {
    let exe = std::env::current_exe().context("finding the relayd executable")?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.extend([
        std::ffi::OsString::from("--inside-netns"),
        std::ffi::OsString::from(namespace.name()),
    ]);
    eprintln!(
        "drill: running inside network namespace {} (the partition as nftables rules there)",
        namespace.name()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let status = runtime.block_on(async {
        namespace
            .run_inside(&exe, &args, crate::serve::shutdown_signal())
            .await
    })?;
    if !status.success() {
        bail!(
            "relayd drill exited with {status} inside network namespace {}",
            namespace.name()
        );
    }
    Ok(())
}
