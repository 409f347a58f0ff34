//! The primary's side: the [`Shipper`] the engine hands each durable group, and the link task
//! that dials the standby and ships.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fdb_layers::{CommittedGroup, Database, ReplicationSink, StoreError, StoreExport};
use relay_net::{SocketFactory, TlsIdentity, TokioSockets};
use rustls::RootCertStore;
use tokio::sync::Notify;

use crate::config::{AwayPolicy, ReplicationConfig};
use crate::limits::{
    ALONE_WARNING_INTERVAL_MS, HANDSHAKE_TIMEOUT_MS, INSTALL_CHUNK_BYTES, REDIAL_DELAY_MS_INITIAL,
    REDIAL_DELAY_MS_MAX, SHIP_LOG_BYTES_MAX,
};
use crate::log::{Next, Plan, ShipLog};
use crate::wire::{
    ALPN_STANDBY, FromStandby, Hello, Pair, Pairs, ToStandby, from_standby, group_parts, to_standby,
};
use crate::{ReplicaError, read_frame, write_frame};

/// What the shipper has done, for logs, tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShipperStats {
    /// The newest version of the store.
    pub latest_version: u64,
    /// The newest version the standby confirmed durable.
    pub confirmed_version: u64,
    /// The standby has confirmed everything.
    pub caught_up: bool,
    /// Groups handed to the shipper.
    pub groups: u64,
    /// Groups sent to the standby (again after a reconnect, too).
    pub groups_sent: u64,
    /// Full copies sent.
    pub full_copies: u64,
    /// Sessions with the standby that reached its state.
    pub sessions: u64,
    /// Commits answered without the standby's confirmation: refused (`refuse_writes`) or
    /// acknowledged alone (`go_on_alone`).
    pub unconfirmed_commits: u64,
    /// Groups dropped from the log unconfirmed because it was full.
    pub dropped_groups: u64,
}

/// Ships a region's durable groups to its standby: the engine's [`ReplicationSink`].
///
/// Made before the database ([`Shipper::new`], handed to the engine's options), then started
/// on it ([`Shipper::start`]), which spawns the link on the current tokio runtime.
#[derive(Debug)]
pub struct Shipper {
    region: u32,
    config: ReplicationConfig,
    state: Mutex<State>,
    /// Signalled when the standby confirms a version, and when the shipper stops.
    confirmed: Condvar,
    /// Wakes the link when a group arrives, and when the shipper stops.
    wake: Notify,
    groups_sent: AtomicU64,
    full_copies: AtomicU64,
    sessions: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// `None` until the shipper starts on its database (groups pushed before wait).
    log: Option<ShipLog>,
    /// Groups pushed before the log existed.
    early: Vec<Arc<CommittedGroup>>,
    /// Since when the standby has been away (not connected, or not confirming in time);
    /// `None` while it keeps up.
    away_since: Option<Instant>,
    /// When the shipper last warned that it goes on alone.
    warned_alone_at: Option<Instant>,
    groups: u64,
    unconfirmed_commits: u64,
    stopped: bool,
}

impl Shipper {
    /// A shipper for `region`'s store, to the standby `config` names.
    pub fn new(region: u32, config: ReplicationConfig) -> Result<Arc<Shipper>, ReplicaError> {
        config.validate()?;
        Ok(Arc::new(Shipper {
            region,
            config,
            state: Mutex::new(State {
                log: None,
                early: Vec::new(),
                // An absent standby gets the grace from when the region starts.
                away_since: Some(Instant::now()),
                warned_alone_at: None,
                groups: 0,
                unconfirmed_commits: 0,
                stopped: false,
            }),
            confirmed: Condvar::new(),
            wake: Notify::new(),
            groups_sent: AtomicU64::new(0),
            full_copies: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
        }))
    }

    /// Starts shipping `database`'s groups: dials the standby from `bind` (port 0) with the
    /// region's `identity`, trusting `roots`. Spawns the link on the current tokio runtime;
    /// it runs until [`Shipper::stop`].
    pub fn start(
        self: &Arc<Self>,
        database: Database,
        bind: SocketAddr,
        roots: Arc<RootCertStore>,
        identity: TlsIdentity,
    ) -> Result<tokio::task::JoinHandle<()>, ReplicaError> {
        let export = database.export()?;
        {
            let mut state = self.lock();
            let mut log = ShipLog::new(export.version(), SHIP_LOG_BYTES_MAX);
            for group in state.early.drain(..) {
                log.push(group);
            }
            state.log = Some(log);
        }
        drop(export);
        let client = relay_net::client_config(roots, Some(identity), ALPN_STANDBY)?;
        let endpoint = relay_net::bind_endpoint(&TokioSockets as &dyn SocketFactory, bind, None)?;
        let link = Link {
            shipper: self.clone(),
            database,
            endpoint,
            client,
        };
        Ok(tokio::spawn(link.run()))
    }

    /// Stops the link and answers every waiting commit.
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.confirmed.notify_all();
        self.wake.notify_one();
    }

    /// What the shipper has done.
    pub fn stats(&self) -> ShipperStats {
        let state = self.lock();
        let (latest_version, confirmed_version, caught_up, dropped_groups) = match &state.log {
            Some(log) => (
                log.latest(),
                log.confirmed(),
                log.caught_up(),
                log.dropped(),
            ),
            None => (0, 0, false, 0),
        };
        ShipperStats {
            latest_version,
            confirmed_version,
            caught_up,
            groups: state.groups,
            groups_sent: self.groups_sent.load(Ordering::Relaxed),
            full_copies: self.full_copies.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            unconfirmed_commits: state.unconfirmed_commits,
            dropped_groups,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The standby confirmed `version` durable.
    fn confirm(&self, version: u64) {
        let mut state = self.lock();
        if let Some(log) = &mut state.log {
            log.confirm(version);
            if log.caught_up() {
                if state.away_since.take().is_some() {
                    tracing::info!(region = self.region, version, "the standby is caught up");
                }
                state.warned_alone_at = None;
            }
        }
        drop(state);
        self.confirmed.notify_all();
    }

    /// The link to the standby is down.
    fn went_away(&self) {
        let mut state = self.lock();
        if state.away_since.is_none() {
            state.away_since = Some(Instant::now());
        }
    }

    /// What to send a standby that holds `version`.
    fn plan(&self, version: u64, installing: bool) -> Plan {
        match &self.lock().log {
            Some(log) => log.plan(version, installing),
            None => Plan::FullCopy,
        }
    }

    fn next_after(&self, version: u64) -> Result<Next, ReplicaError> {
        let state = self.lock();
        if state.stopped {
            return Err(ReplicaError::Protocol("the shipper stopped".into()));
        }
        Ok(match &state.log {
            Some(log) => log.next_after(version),
            None => Next::Wait,
        })
    }
}

impl ReplicationSink for Shipper {
    fn replicate(&self, group: CommittedGroup) -> Result<(), StoreError> {
        let version = group.version;
        let started = Instant::now();
        let timeout = Duration::from_millis(self.config.ack_timeout_ms);
        let mut state = self.lock();
        state.groups += 1;
        let group = Arc::new(group);
        match &mut state.log {
            Some(log) => log.push(group),
            None => state.early.push(group),
        }
        self.wake.notify_one();
        // A standby that keeps up gets the timeout for this group; an away one only what is
        // left of its grace.
        let deadline = state.away_since.map_or(started, |since| since.min(started)) + timeout;
        loop {
            let confirmed = state.log.as_ref().map_or(0, ShipLog::confirmed);
            if confirmed >= version {
                return Ok(());
            }
            if state.stopped {
                return Err(StoreError::Unavailable(
                    "the region is stopping; the standby did not confirm the commit".into(),
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .confirmed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        state.unconfirmed_commits += 1;
        let away_since = *state.away_since.get_or_insert(started);
        match self.config.when_standby_is_away {
            AwayPolicy::RefuseWrites => Err(StoreError::Unavailable(format!(
                "the standby ({}) has not confirmed commits for {} ms; writes are refused \
                 until it is back (when_standby_is_away = \"refuse_writes\")",
                self.config.standby,
                away_since.elapsed().as_millis()
            ))),
            AwayPolicy::GoOnAlone => {
                let warn = state.warned_alone_at.is_none_or(|at| {
                    at.elapsed() >= Duration::from_millis(ALONE_WARNING_INTERVAL_MS)
                });
                if warn {
                    state.warned_alone_at = Some(Instant::now());
                    tracing::warn!(
                        region = self.region,
                        standby = %self.config.standby,
                        "the standby is away; acknowledging commits it lacks (go_on_alone)"
                    );
                }
                Ok(())
            }
        }
    }
}

/// The task that dials the standby and ships to it, again after every failure.
struct Link {
    shipper: Arc<Shipper>,
    database: Database,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
}

impl Link {
    async fn run(self) {
        let mut delay_ms = REDIAL_DELAY_MS_INITIAL;
        loop {
            if self.shipper.lock().stopped {
                break;
            }
            let outcome = self.session().await;
            self.shipper.went_away();
            match outcome {
                Ok(reached) => {
                    if reached {
                        delay_ms = REDIAL_DELAY_MS_INITIAL;
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        region = self.shipper.region,
                        standby = %self.shipper.config.standby,
                        %error,
                        "replication link to the standby failed; dialling again"
                    );
                }
            }
            if self.shipper.lock().stopped {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                _ = self.shipper.wake.notified() => {
                    // A group arrived: still wait out the pause, the standby is not back yet.
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
            }
            delay_ms = (delay_ms * 2).min(REDIAL_DELAY_MS_MAX);
        }
        self.endpoint.close(0u32.into(), b"stopping");
    }

    /// One connection to the standby, until it fails. `Ok(true)` when it got as far as the
    /// standby's state.
    async fn session(&self) -> Result<bool, ReplicaError> {
        let standby = self.shipper.config.standby;
        let handshake = async {
            let connection = self
                .endpoint
                .connect_with(self.client.clone(), standby, relay_net::REGION_SERVER_NAME)
                .map_err(|error| ReplicaError::Net(error.into()))?
                .await
                .map_err(|error| ReplicaError::Net(error.into()))?;
            let (mut send, mut recv) = connection
                .open_bi()
                .await
                .map_err(|error| ReplicaError::Net(error.into()))?;
            write_frame(
                &mut send,
                &Hello {
                    region: self.shipper.region,
                },
            )
            .await?;
            let state = match read_frame::<FromStandby>(&mut recv).await? {
                Some(FromStandby {
                    kind: Some(from_standby::Kind::State(state)),
                }) => state,
                Some(FromStandby {
                    kind: Some(from_standby::Kind::Refused(reason)),
                }) => return Err(ReplicaError::Refused(reason)),
                other => {
                    return Err(ReplicaError::Protocol(format!(
                        "expected the standby's state, got {other:?}"
                    )));
                }
            };
            Ok((connection, send, recv, state))
        };
        let (connection, mut send, mut recv, state) =
            tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), handshake)
                .await
                .map_err(|_| ReplicaError::Timeout("dialling the standby"))??;
        self.shipper.sessions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            region = self.shipper.region,
            standby = %standby,
            version = state.version,
            installing = state.installing,
            "replication link up"
        );
        let shipping = async {
            let mut after = match self.shipper.plan(state.version, state.installing) {
                Plan::Stream { after } => {
                    self.shipper.confirm(after);
                    after
                }
                Plan::FullCopy => self.full_copy(&mut send).await?,
            };
            loop {
                match self.shipper.next_after(after)? {
                    Next::Group(group) => {
                        for part in group_parts(&group) {
                            write_frame(
                                &mut send,
                                &ToStandby {
                                    kind: Some(to_standby::Kind::Group(part)),
                                },
                            )
                            .await?;
                        }
                        self.shipper.groups_sent.fetch_add(1, Ordering::Relaxed);
                        after = group.version;
                    }
                    Next::Wait => self.shipper.wake.notified().await,
                    Next::Gap => after = self.full_copy(&mut send).await?,
                }
            }
        };
        let confirming = async {
            loop {
                match read_frame::<FromStandby>(&mut recv).await? {
                    Some(FromStandby {
                        kind: Some(from_standby::Kind::Applied(version)),
                    }) => self.shipper.confirm(version),
                    Some(FromStandby {
                        kind: Some(from_standby::Kind::Refused(reason)),
                    }) => return Err(ReplicaError::Refused(reason)),
                    None => {
                        return Err(ReplicaError::Protocol(
                            "the standby ended the stream".into(),
                        ));
                    }
                    Some(other) => {
                        return Err(ReplicaError::Protocol(format!(
                            "unexpected frame from the standby: {other:?}"
                        )));
                    }
                }
            }
        };
        let ended: Result<(), ReplicaError> = tokio::select! {
            shipped = shipping => shipped,
            confirmed = confirming => confirmed,
        };
        connection.close(0u32.into(), b"replication link ended");
        ended.map(|()| true)
    }

    /// Sends a full copy of the store; returns the version it was read at.
    async fn full_copy(&self, send: &mut quinn::SendStream) -> Result<u64, ReplicaError> {
        let mut export: StoreExport = self.database.export()?;
        let version = export.version();
        tracing::info!(
            region = self.shipper.region,
            version,
            "sending the standby a full copy of the store"
        );
        write_frame(
            send,
            &ToStandby {
                kind: Some(to_standby::Kind::InstallBegin(version)),
            },
        )
        .await?;
        loop {
            let (returned, chunk) = tokio::task::spawn_blocking(move || {
                let chunk = export.next_chunk(INSTALL_CHUNK_BYTES);
                (export, chunk)
            })
            .await
            .map_err(|error| ReplicaError::Protocol(format!("reading the copy: {error}")))?;
            export = returned;
            let chunk = chunk?;
            if chunk.is_empty() {
                break;
            }
            let pairs = chunk
                .into_iter()
                .map(|(key, value)| Pair { key, value })
                .collect();
            write_frame(
                send,
                &ToStandby {
                    kind: Some(to_standby::Kind::InstallChunk(Pairs { pairs })),
                },
            )
            .await?;
        }
        write_frame(
            send,
            &ToStandby {
                kind: Some(to_standby::Kind::InstallEnd(true)),
            },
        )
        .await?;
        self.shipper.full_copies.fetch_add(1, Ordering::Relaxed);
        Ok(version)
    }
}
