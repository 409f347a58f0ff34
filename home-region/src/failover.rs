//! A standby that takes over its region by itself (unplanned failover).
//!
//! `relayd standby` runs [`serve_standby`]: the standby follows its primary
//! (`relay_replica::StandbyServer`) and, when its configuration has a `[promotion]` section,
//! watches its lease on the primary. The lease is renewed by every frame of a primary that
//! refuses writes without the standby (its groups, or a heartbeat every 250 ms). Once that
//! primary has been silent for `lease_ms` and the copy is whole, the standby:
//!
//! 1. stops following and closes its copy;
//! 2. opens it as a store and raises the store's failover epoch (`store_identity`);
//! 3. starts the region service on it, with the region's configuration, this standby's
//!    folder and `promotion.listen`, shipping to `promotion.standby` if it names one;
//! 4. writes its address into the region's peers file, where edges and other regions look up
//!    the region when it stops answering at the old address;
//! 5. answers the old primary, should it dial the standby again (a paused process resumed), that
//!    it was promoted at that epoch: the old primary is fenced and exits.
//!
//! A planned failover takes the same steps without the wait: the primary hands the region over
//! (`relayd admin failover`: it holds new requests, ships every commit, and sends the version
//! it stops at), and once the copy is at that version the standby takes over at once. The
//! primary hears `Promoted` after step 4, so requests it held go to the new address.
//!
//! Safety rests on the primary's `refuse_writes` policy: it acknowledges no commit the standby
//! has not confirmed, so the standby holds every acknowledged commit when it takes over, and a
//! primary cut off from it (or fenced) acknowledges nothing more. A primary that goes on alone
//! gives no lease, and its standby never promotes itself.

use std::future::Future;
use std::time::Duration;

use fdb_layers::store_identity;
use fdb_layers::{Database, EmbeddedOptions};
use relay_replica::limits::LEASE_CHECK_INTERVAL_MS;
use relay_replica::{CopyAt, PromotionConfig, StandbyConfig, StandbyHandle, StandbyServer};
use tokio::sync::watch;

use crate::config::{PeersFile, RegionConfig};
use crate::service::{RegionError, RegionService};

/// What a promoted standby announces, once it serves as the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    /// The region.
    pub region: u32,
    /// The store's failover epoch after the promotion.
    pub epoch: u64,
    /// The promoted region's internal address.
    pub address: std::net::SocketAddr,
}

/// What `relayd standby` runs: a standby following its primary, or, when its folder already
/// serves as the region (it was promoted before this process started), the region itself.
pub enum Standby {
    /// A standby, to [`serve_standby`].
    Following(StandbyServer),
    /// A standby promoted before: serve it with [`serve_promoted`].
    Promoted(StandbyServer, u64),
}

/// Opens `config`'s standby. A folder that served as the region since (a promoted standby's,
/// with the region's marker file) is the region's store now: with `[promotion]` it is served
/// as the region again (the standby was promoted, then its process restarted); without, it is
/// refused (following a primary there would overwrite the region's newer store with a copy of
/// the stale one).
pub async fn open_standby(
    config: &StandbyConfig,
) -> Result<(Standby, std::net::SocketAddr), RegionError> {
    let marker = config.data_dir.join(crate::store_check::STORE_MARKER_FILE);
    if !marker.exists() {
        let (server, address) = StandbyServer::open(config)?;
        return Ok((Standby::Following(server), address));
    }
    if config.promotion.is_none() {
        return Err(relay_net::config::ConfigError::Value(format!(
            "{} holds region {}'s store: this standby was promoted and served as the region. Run \
             it as the region (relayd admin promote moves it into the region's folder), or move \
             it aside to start a new standby",
            config.data_dir.display(),
            config.region
        ))
        .into());
    }
    let epoch = {
        let store = Database::open(
            &config.data_dir.join(relay_replica::STANDBY_STORE_FILE),
            EmbeddedOptions::default(),
        )?;
        store
            .transact(
                |transaction| async move { store_identity::failover_epoch(&transaction).await },
            )
            .await?
    };
    let (server, address) = StandbyServer::open_promoted(config, epoch)?;
    Ok((Standby::Promoted(server, epoch), address))
}

/// Serves a standby that was promoted before this process started: the region on its folder
/// (as [`serve_standby`] does after a promotion) and the replication server that tells an old
/// primary it is fenced, until `shutdown`.
pub async fn serve_promoted(
    server: StandbyServer,
    epoch: u64,
    config: &StandbyConfig,
    on_promoted: impl FnOnce(Promoted),
    shutdown: impl Future<Output = ()>,
) -> Result<(), RegionError> {
    let Some(promotion) = &config.promotion else {
        return Err(relay_net::config::ConfigError::Value(
            "a promoted standby needs its [promotion] section".into(),
        )
        .into());
    };
    let region_config = promoted_config(config, promotion)?;
    let (stop, mut stopping) = watch::channel(false);
    let fencing = tokio::spawn(server.run(async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    }));
    let started = async {
        let (service, address, _) = RegionService::open(&region_config, false).await?;
        PeersFile::set_address(&region_config.peers_file, config.region, address)?;
        Ok::<_, RegionError>((service, address))
    };
    let served = match started.await {
        Ok((service, address)) => {
            tracing::warn!(region = config.region, epoch, %address, "serving as the region again (promoted before)");
            on_promoted(Promoted {
                region: config.region,
                epoch,
                address,
            });
            service.run(shutdown).await
        }
        Err(error) => Err(error),
    };
    let _ = stop.send(true);
    let _ = fencing.await;
    served
}

/// Serves `server` as `config`'s standby until `shutdown`; with a `[promotion]` section, takes
/// over as the region when the primary's lease expires (calling `on_promoted` once it serves)
/// and serves as the region until `shutdown`.
pub async fn serve_standby(
    server: StandbyServer,
    config: &StandbyConfig,
    on_promoted: impl FnOnce(Promoted),
    shutdown: impl Future<Output = ()>,
) -> Result<(), RegionError> {
    let (stop, stopping) = watch::channel(false);
    let stopped = move || {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    };
    let handle = server.handle();
    let standby = tokio::spawn(server.run(stopped()));
    let Some(promotion) = config.promotion.clone() else {
        shutdown.await;
        let _ = stop.send(true);
        let _ = standby.await;
        return Ok(());
    };
    // Checked now, not when the primary is gone (a launcher may write the region's
    // configuration after starting its standby: then it is read at the promotion).
    if promotion.region_config.exists()
        && let Err(error) = promoted_config(config, &promotion)
    {
        let _ = stop.send(true);
        let _ = standby.await;
        return Err(error);
    }
    tokio::pin!(shutdown);
    let lease = Duration::from_millis(promotion.lease_ms);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                let _ = stop.send(true);
                let _ = standby.await;
                return Ok(());
            }
            () = handle.handover_requested() => {
                tracing::warn!(
                    region = config.region,
                    version = handle.handover_version(),
                    "the primary hands the region over (planned failover): taking over"
                );
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(LEASE_CHECK_INTERVAL_MS)) => {}
        }
        if handle.lease_expired(lease) {
            tracing::warn!(
                region = config.region,
                lease_ms = promotion.lease_ms,
                "the primary's lease expired: taking over as the region"
            );
            break;
        }
    }
    // Past this point the copy is the region's: a failure ends the process (its supervisor
    // starts it again as a standby, which a full copy from the primary, if any, brings back).
    let promoted = match promoted_config(config, &promotion) {
        Ok(region_config) => promote(&handle, config.region, &region_config).await,
        Err(error) => Err(error),
    };
    let served = match promoted {
        Ok((service, promoted)) => {
            on_promoted(promoted);
            // The standby's server stays up, telling a returning old primary it is fenced.
            service.run(&mut shutdown).await
        }
        Err(error) => Err(error),
    };
    let _ = stop.send(true);
    let _ = standby.await;
    served
}

/// The region's configuration as the promoted standby serves it: this standby's folder and
/// `promotion.listen`, `promotion.standby` as its own standby (with the region's
/// `[replication]` settings) or none, and a media endpoint on `promotion.listen`'s host (any
/// port) if the region had one.
fn promoted_config(
    config: &StandbyConfig,
    promotion: &PromotionConfig,
) -> Result<RegionConfig, RegionError> {
    let region_config = RegionConfig::load(&promotion.region_config)?;
    if region_config.region != config.region {
        return Err(relay_net::config::ConfigError::Value(format!(
            "promotion.region_config is region {}'s, this standby copies region {}",
            region_config.region, config.region
        ))
        .into());
    }
    let replication = promotion.standby.map(|standby| {
        let settings = region_config
            .replication
            .clone()
            .unwrap_or_else(|| relay_replica::ReplicationConfig::new(standby));
        relay_replica::ReplicationConfig {
            standby,
            ..settings
        }
    });
    // The region's media endpoint, if it had one, moves with it: on the promoted standby's
    // host, at a port of its own; devices learn it from the next pass.
    let media = region_config
        .media
        .as_ref()
        .map(|_| crate::config::MediaConfig {
            listen: std::net::SocketAddr::new(promotion.listen.ip(), 0),
            advertise: None,
        });
    Ok(RegionConfig {
        data_dir: config.data_dir.clone(),
        listen: promotion.listen,
        replication,
        media,
        ..region_config
    })
}

/// Opens the copy as the region's store at a new failover epoch and starts the region on it.
async fn promote(
    handle: &StandbyHandle,
    region: u32,
    region_config: &RegionConfig,
) -> Result<(RegionService, Promoted), RegionError> {
    let path = match handle.release_copy() {
        Some(CopyAt::File(path)) => path,
        Some(CopyAt::Memory(_)) => {
            return Err(RegionError::Store(fdb_layers::StoreError::InvalidOptions(
                "a standby process keeps its copy in a file".into(),
            )));
        }
        None => return Err(RegionError::Store(fdb_layers::StoreError::Closed)),
    };
    let epoch = {
        let store = Database::open(&path, EmbeddedOptions::default())?;
        store
            .transact(|transaction| async move {
                store_identity::raise_failover_epoch(&transaction).await
            })
            .await?
    };
    let (service, address, _) = RegionService::open(region_config, false).await?;
    PeersFile::set_address(&region_config.peers_file, region, address)?;
    // Only now is the old primary told (a handover's answer, or a resumed primary's dial): it
    // stops, and requests waiting on it go to the address just announced.
    handle.promoted(epoch);
    tracing::warn!(region, epoch, %address, "promoted: serving as the region");
    Ok((
        service,
        Promoted {
            region,
            epoch,
            address,
        },
    ))
}
