//! The server subcommands: load the configuration (refusing a bad one before binding anything),
//! bind, print the "listening on" line, serve until SIGINT or SIGTERM.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use home_region::{RegionConfig, RegionService};
use relay_edge::locator::{LocatorConfig, LocatorServer};
use relay_edge::{EdgeConfig, EdgeService};

/// The exit status of a region fenced by its promoted standby (`relayd devnet` does not
/// start it again).
pub const FENCED_EXIT_CODE: i32 = relay_devnet::FENCED_EXIT_CODE;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// The runtime of an edge, whose every thread allocates from one jemalloc arena.
///
/// An edge's memory comes and goes with its device connections (about 40 KB each, mostly
/// quinn's), allocated on whichever worker runs a handshake: with jemalloc's default of four
/// arenas per core, each arena keeps the pages its freed connections left partly used. With 10,000
/// devices gone, one arena kept about 10 MiB less (39.6 MiB against 49.6-49.9 MiB, back to back,
/// `relayd bench connections`), with the same edge CPU per login; the edge's allocations are
/// small and short, served from per-thread caches.
fn edge_runtime() -> Result<tokio::runtime::Runtime> {
    fn use_arena_zero() {
        use tikv_jemalloc_ctl::{Access, AsName};
        if let Err(error) = b"thread.arena\0".name().write(0u32) {
            tracing::debug!(%error, "this thread keeps its own allocator arena");
        }
    }
    use_arena_zero();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(use_arena_zero)
        .build()
        .context("starting the runtime")
}

/// Listens for SIGINT and SIGTERM from the moment it is called, and completes on the first.
///
/// Call it inside the runtime (the handlers need its reactor) and before announcing "listening
/// on": a supervisor that sends SIGTERM right after that line must stop the server cleanly, not
/// kill it by the signal's default action because no handler was installed yet.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    async fn first(signal: Option<Signal>) {
        match signal {
            Some(mut signal) => {
                signal.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    let terminate = first(signal(SignalKind::terminate()).ok());
    let interrupt = first(signal(SignalKind::interrupt()).ok());
    async move {
        tokio::select! {
            () = interrupt => {}
            () = terminate => {}
        }
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
        let shutdown = shutdown_signal();
        let (service, address, _) = RegionService::open(&config, accept_new_store).await?;
        announce(format!("region {} listening on {address}", config.region));
        if let Some(media) = service.media_address() {
            announce(format!(
                "region {} media endpoint on {media}",
                config.region
            ));
        }
        exit_if_fenced(service.run(shutdown).await)?;
        tracing::info!("region stopped");
        Ok(())
    })
}

/// A region that was fenced (its standby took over) exits with [`FENCED_EXIT_CODE`]: a
/// supervisor must not start it again on its stale store. Any other outcome is returned.
fn exit_if_fenced(
    served: Result<(), home_region::RegionError>,
) -> Result<(), home_region::RegionError> {
    if let Err(error @ home_region::RegionError::Fenced { .. }) = &served {
        tracing::error!(%error, "fenced");
        eprintln!("relayd: {error}");
        std::process::exit(FENCED_EXIT_CODE);
    }
    served
}

/// `relayd standby --config FILE`: follows the region's primary; with `[promotion]`, takes
/// over as the region when the primary's lease expires.
pub fn standby(config_path: &Path) -> Result<()> {
    let config = relay_replica::StandbyConfig::load(config_path)?;
    runtime()?.block_on(async {
        let shutdown = shutdown_signal();
        let (standby, address) = home_region::failover::open_standby(&config).await?;
        announce(format!("standby {} listening on {address}", config.region));
        let on_promoted = |promoted: home_region::failover::Promoted| {
            announce(format!(
                "region {} promoted at epoch {}, serving on {}",
                promoted.region, promoted.epoch, promoted.address
            ));
        };
        match standby {
            // Promoted, the standby serves as the region, and is fenced like one when the
            // region moves on to its own standby.
            home_region::failover::Standby::Following(server) => {
                exit_if_fenced(
                    home_region::failover::serve_standby(server, &config, on_promoted, shutdown)
                        .await,
                )?;
            }
            home_region::failover::Standby::Promoted(server, epoch) => {
                exit_if_fenced(
                    home_region::failover::serve_promoted(
                        server,
                        epoch,
                        &config,
                        on_promoted,
                        shutdown,
                    )
                    .await,
                )?;
            }
        }
        tracing::info!("standby stopped");
        Ok(())
    })
}

/// `relayd edge --config FILE`.
pub fn edge(config_path: &Path) -> Result<()> {
    let config = EdgeConfig::load(config_path)?;
    edge_runtime()?.block_on(async {
        let shutdown = shutdown_signal();
        #[cfg(feature = "heap-profile")]
        tokio::spawn(dump_heap_on_sigusr1());
        let (service, address, subscriptions) = EdgeService::bind(&config)?;
        announce(format!("edge {} listening on {address}", config.region));
        service.run(subscriptions, shutdown).await?;
        tracing::info!("edge stopped");
        Ok(())
    })
}

/// `relayd bench quic-server`: the connection benchmark's bare QUIC server, on the runtime an
/// edge runs on.
pub fn bare_quic(cert: &Path, key: &Path, listen: SocketAddr) -> Result<()> {
    edge_runtime()?.block_on(async {
        let shutdown = shutdown_signal();
        let (endpoint, address) = relay_bench::bare_quic::bind(cert, key, listen)?;
        announce(relay_bench::bare_quic::listening_line(address));
        relay_bench::bare_quic::serve(endpoint, shutdown).await;
        Ok(())
    })
}

/// With `--features heap-profile` and `_RJEM_MALLOC_CONF=prof:true`: each SIGUSR1 writes a
/// heap profile of what is allocated now (jemalloc's `prof.dump`, named by `prof_prefix`), for
/// `jeprof`. What an edge still holds once its devices left shows only in a running process: a
/// profile at exit (`prof_final`) comes after everything was dropped.
#[cfg(feature = "heap-profile")]
#[allow(unsafe_code)]
async fn dump_heap_on_sigusr1() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut signals) = signal(SignalKind::user_defined1()) else {
        tracing::warn!("no SIGUSR1 handler: heap profiles are written at exit only");
        return;
    };
    while signals.recv().await.is_some() {
        // SAFETY: `prof.dump` takes a file name or null (jemalloc's own naming); null it is.
        let dumped = unsafe {
            tikv_jemalloc_ctl::raw::write(b"prof.dump\0", std::ptr::null::<std::ffi::c_char>())
        };
        match dumped {
            Ok(()) => tracing::info!("heap profile written"),
            Err(error) => tracing::warn!(%error, "no heap profile (is prof:true set?)"),
        }
    }
}

/// `relayd locator --config FILE`.
pub fn locator(config_path: &Path) -> Result<()> {
    let config = LocatorConfig::load(config_path)?;
    runtime()?.block_on(async {
        let shutdown = shutdown_signal();
        let server = LocatorServer::bind(config).await?;
        announce(format!("locator listening on {}", server.local_addr()));
        server.serve(shutdown).await?;
        tracing::info!("locator stopped");
        Ok(())
    })
}
