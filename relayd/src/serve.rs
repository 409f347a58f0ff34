//! The server subcommands: load the configuration (refusing a bad one before binding anything),
//! bind, print the "listening on" line, serve until SIGINT or SIGTERM.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use home_region::{RegionConfig, RegionService};
use relay_edge::locator::{LocatorConfig, LocatorServer};
use relay_edge::{EdgeConfig, EdgeService};

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

fn announce(line: String) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// `relayd region --config FILE [--accept-new-store]`.
pub fn region(config_path: &Path, accept_new_store: bool) -> Result<()> {
    let config = RegionConfig::load(config_path)?;
    runtime()?.block_on(async {
        let (service, address, _) = RegionService::open(&config, accept_new_store).await?;
        announce(format!("region {} listening on {address}", config.region));
        service.run(shutdown_signal()).await?;
        tracing::info!("region stopped");
        Ok(())
    })
}

/// `relayd edge --config FILE`.
pub fn edge(config_path: &Path) -> Result<()> {
    let config = EdgeConfig::load(config_path)?;
    runtime()?.block_on(async {
        let (service, address, subscriptions) = EdgeService::bind(&config)?;
        announce(format!("edge {} listening on {address}", config.region));
        service.run(subscriptions, shutdown_signal()).await?;
        tracing::info!("edge stopped");
        Ok(())
    })
}

/// `relayd locator --config FILE`.
pub fn locator(config_path: &Path) -> Result<()> {
    let config = LocatorConfig::load(config_path)?;
    runtime()?.block_on(async {
        let server = LocatorServer::bind(config).await?;
        announce(format!("locator listening on {}", server.local_addr()));
        server.serve(shutdown_signal()).await?;
        tracing::info!("locator stopped");
        Ok(())
    })
}
