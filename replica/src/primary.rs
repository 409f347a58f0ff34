//! The primary's side: the [`Shipper`] the engine hands each durable group, and the link task
//! that dials the standby and ships.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fdb_layers::{CommittedGroup, Database, Replicated, ReplicationSink, StoreError, StoreExport};
use relay_net::{SocketFactory, TlsIdentity, TokioSockets};
use rustls::RootCertStore;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{AwayPolicy, ReplicationConfig};
use crate::limits::{
    ALONE_WARNING_INTERVAL_MS, HANDOVER_TIMEOUT_MS, HANDSHAKE_TIMEOUT_MS, HEARTBEAT_INTERVAL_MS,
    INSTALL_CHUNK_BYTES, REDIAL_DELAY_MS_INITIAL, REDIAL_DELAY_MS_MAX, SHIP_LOG_BYTES_MAX,
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
    /// Wakes the link when a group arrives, and when the shipper stops.
    wake: Notify,
    /// Wakes the deadline task when a group starts waiting, and when the shipper stops.
    deadlines: Notify,
    /// Wakes whoever waits in [`Shipper::fenced`] when the region is fenced.
    fencing: Notify,
    groups_sent: AtomicU64,
    full_copies: AtomicU64,
    sessions: AtomicU64,
}

struct State {
    /// `None` until the shipper starts on its database (groups pushed before wait).
    log: Option<ShipLog>,
    /// Groups whose requests wait for the standby's confirmation, in version order.
    waiting: VecDeque<Waiting>,
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
    /// The standby was promoted at this epoch: this region is stale and acknowledges nothing.
    fenced: Option<u64>,
    /// A handover under way (a planned failover).
    handover: Option<Handover>,
}

/// A handover under way: groups up to `cutoff` are shipped, then the standby is asked to take
/// over; later groups wait unshipped (and are never acknowledged if it does).
struct Handover {
    cutoff: u64,
    answer: tokio::sync::oneshot::Sender<Result<u64, String>>,
}

/// A region handed over to its standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandedOver {
    /// The store's version the standby took over at.
    pub version: u64,
    /// The failover epoch the standby was promoted at.
    pub epoch: u64,
}

/// What the link sends next.
enum Ship {
    /// What the log holds after the standby's version.
    Log(Next),
    /// Everything up to the handover's version is shipped: ask the standby to take over.
    HandOver(u64),
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("log", &self.log)
            .field("waiting", &self.waiting.len())
            .field("away_since", &self.away_since)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

/// A group whose requests wait for the standby.
struct Waiting {
    version: u64,
    /// When the away policy applies to it.
    deadline: Instant,
    /// When it was handed over.
    since: Instant,
    done: Replicated,
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
                waiting: VecDeque::new(),
                early: Vec::new(),
                // An absent standby gets the grace from when the region starts.
                away_since: Some(Instant::now()),
                warned_alone_at: None,
                groups: 0,
                unconfirmed_commits: 0,
                stopped: false,
                fenced: None,
                handover: None,
            }),
            wake: Notify::new(),
            deadlines: Notify::new(),
            fencing: Notify::new(),
            groups_sent: AtomicU64::new(0),
            full_copies: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
        }))
    }

    /// Starts shipping `database`'s groups: dials the standby from `bind` (port 0) with the
    /// region's `identity`, trusting `roots`. Spawns the link and the task that applies the
    /// away policy on the current tokio runtime; they run until [`Shipper::stop`].
    pub fn start(
        self: &Arc<Self>,
        database: Database,
        bind: SocketAddr,
        roots: Arc<RootCertStore>,
        identity: TlsIdentity,
    ) -> Result<tokio::task::JoinHandle<()>, ReplicaError> {
        self.start_on(&TokioSockets, database, bind, roots, identity)
    }

    /// [`Shipper::start`] with the link's UDP socket made by `sockets` (the simulator's).
    pub fn start_on(
        self: &Arc<Self>,
        sockets: &dyn SocketFactory,
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
        let endpoint = relay_net::bind_endpoint(sockets, bind, None)?;
        let link = Link {
            shipper: self.clone(),
            database,
            endpoint,
            client,
        };
        tokio::spawn(self.clone().apply_deadlines());
        Ok(tokio::spawn(link.run()))
    }

    /// Stops the link and answers every waiting commit (refused: the standby did not confirm
    /// them).
    pub fn stop(&self) {
        let waiting = {
            let mut state = self.lock();
            state.stopped = true;
            std::mem::take(&mut state.waiting)
        };
        for waiting in waiting {
            (waiting.done)(Err(StoreError::Unavailable(
                "the region is stopping; the standby did not confirm the commit".into(),
            )));
        }
        self.wake.notify_one();
        self.deadlines.notify_one();
    }

    /// Completes with the failover epoch once the standby answers that it was promoted: this
    /// region's store is stale, every waiting and later commit is refused, and the region must
    /// stop serving.
    pub async fn fenced(&self) -> u64 {
        loop {
            let notified = self.fencing.notified();
            if let Some(epoch) = self.lock().fenced {
                return epoch;
            }
            notified.await;
        }
    }

    /// The standby was promoted at `epoch`: refuse everything from now on.
    fn fence(&self, epoch: u64) {
        let waiting = {
            let mut state = self.lock();
            if state.fenced.is_none() {
                tracing::error!(
                    region = self.region,
                    epoch,
                    "the standby was promoted: this region is fenced and acknowledges nothing"
                );
            }
            state.fenced = Some(epoch);
            if let Some(handover) = state.handover.take() {
                // The standby serves as the region: what the handover asked for.
                let _ = handover.answer.send(Ok(epoch));
            }
            std::mem::take(&mut state.waiting)
        };
        for waiting in waiting {
            (waiting.done)(Err(fenced_error(epoch)));
        }
        self.fencing.notify_waiters();
    }

    /// Hands the region over to the standby (a planned failover): ships every group up to the
    /// newest, asks the standby to take over at that version, and completes once it serves as
    /// the region (the region is fenced then: every later commit is refused). Groups committed
    /// meanwhile wait unshipped and unanswered, whatever the away policy. The caller should
    /// stop taking requests first, so that few do.
    ///
    /// Fails, and the region ships and acknowledges as before, when the standby refuses (it is
    /// behind, or cannot serve as the region) or the handover takes longer than
    /// [`HANDOVER_TIMEOUT_MS`].
    pub async fn hand_over(&self) -> Result<HandedOver, ReplicaError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let cutoff = {
            let mut state = self.lock();
            if let Some(epoch) = state.fenced {
                return Err(ReplicaError::Refused(format!(
                    "the standby already took over (epoch {epoch})"
                )));
            }
            if state.stopped {
                return Err(ReplicaError::Refused("the region is stopping".into()));
            }
            if state.handover.is_some() {
                return Err(ReplicaError::Refused("a handover is under way".into()));
            }
            let Some(log) = &state.log else {
                return Err(ReplicaError::Refused(
                    "the shipper has not started on the store yet".into(),
                ));
            };
            let cutoff = log.latest();
            state.handover = Some(Handover { cutoff, answer });
            cutoff
        };
        tracing::warn!(
            region = self.region,
            version = cutoff,
            "handing the region over to the standby"
        );
        self.wake.notify_one();
        let outcome =
            tokio::time::timeout(Duration::from_millis(HANDOVER_TIMEOUT_MS), answered).await;
        let result = match outcome {
            Ok(Ok(Ok(epoch))) => Ok(HandedOver {
                version: cutoff,
                epoch,
            }),
            Ok(Ok(Err(reason))) => Err(ReplicaError::Refused(reason)),
            Ok(Err(_)) => Err(ReplicaError::Refused("the shipper stopped".into())),
            Err(_) => Err(ReplicaError::Timeout("the standby taking over")),
        };
        if result.is_err() {
            // Given up: ship and acknowledge as before (a standby promoted meanwhile is heard
            // on the next dial, and fences this region).
            self.lock().handover = None;
            self.wake.notify_one();
            self.deadlines.notify_one();
        }
        result
    }

    /// The handover under way failed for `reason`: the region ships and acknowledges again.
    fn handover_failed(&self, reason: &str) {
        let handover = self.lock().handover.take();
        if let Some(handover) = handover {
            tracing::warn!(region = self.region, reason, "the handover failed");
            let _ = handover.answer.send(Err(reason.to_owned()));
            self.wake.notify_one();
            self.deadlines.notify_one();
        }
    }

    /// Applies the away policy to each waiting group whose deadline passed, oldest first (a
    /// group is never answered before one handed over earlier).
    async fn apply_deadlines(self: Arc<Self>) {
        loop {
            let (expired, next) = {
                let mut state = self.lock();
                if state.stopped {
                    return;
                }
                let now = Instant::now();
                let mut expired = Vec::new();
                // During a handover every group waits: the standby is taking over, and one
                // acknowledged alone now would be lost with this region.
                let holding = state.handover.is_some();
                while !holding
                    && state
                        .waiting
                        .front()
                        .is_some_and(|front| front.deadline <= now)
                {
                    if let Some(waiting) = state.waiting.pop_front() {
                        expired.push(waiting);
                    }
                }
                if let Some(first) = expired.first() {
                    state.unconfirmed_commits += expired.len() as u64;
                    if state.away_since.is_none() {
                        state.away_since = Some(first.since);
                    }
                }
                let next = if holding {
                    None
                } else {
                    state.waiting.front().map(|front| front.deadline)
                };
                (expired, next)
            };
            for waiting in expired {
                let verdict = self.away_verdict(waiting.since);
                (waiting.done)(verdict);
            }
            match next {
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = self.deadlines.notified() => {}
                    }
                }
                None => self.deadlines.notified().await,
            }
        }
    }

    /// What a group the standby did not confirm in time gets, by the away policy.
    fn away_verdict(&self, since: Instant) -> Result<(), StoreError> {
        match self.config.when_standby_is_away {
            AwayPolicy::RefuseWrites => Err(StoreError::Unavailable(format!(
                "the standby ({}) did not confirm the commit within {} ms; writes are refused \
                 until it is back (when_standby_is_away = \"refuse_writes\")",
                self.config.standby,
                since.elapsed().as_millis()
            ))),
            AwayPolicy::GoOnAlone => {
                let mut state = self.lock();
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

    /// The newest store version whose effects may leave the region (be sent to other regions):
    /// what the standby confirmed, under `refuse_writes`; `None`, no bound, under `go_on_alone`
    /// (the region acknowledges without its standby, so what it sends may be lost with it too).
    pub fn outgoing_bound(&self) -> Option<u64> {
        match self.config.when_standby_is_away {
            AwayPolicy::GoOnAlone => None,
            AwayPolicy::RefuseWrites => {
                Some(self.lock().log.as_ref().map_or(0, ShipLog::confirmed))
            }
        }
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

    /// The standby confirmed `version` durable: the groups up to it are answered.
    fn confirm(&self, version: u64) {
        let mut confirmed = Vec::new();
        {
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
            while state
                .waiting
                .front()
                .is_some_and(|front| front.version <= version)
            {
                if let Some(waiting) = state.waiting.pop_front() {
                    confirmed.push(waiting);
                }
            }
        }
        for waiting in confirmed {
            (waiting.done)(Ok(()));
        }
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

    fn next_after(&self, version: u64) -> Result<Ship, ReplicaError> {
        let state = self.lock();
        if state.stopped {
            return Err(ReplicaError::Protocol("the shipper stopped".into()));
        }
        if let Some(handover) = &state.handover
            && version >= handover.cutoff
        {
            return Ok(Ship::HandOver(handover.cutoff));
        }
        Ok(Ship::Log(match &state.log {
            Some(log) => log.next_after(version),
            None => Next::Wait,
        }))
    }
}

impl ReplicationSink for Shipper {
    fn replicate(&self, group: CommittedGroup, done: Replicated) {
        let version = group.version;
        let now = Instant::now();
        let timeout = Duration::from_millis(self.config.ack_timeout_ms);
        let mut state = self.lock();
        if let Some(epoch) = state.fenced {
            drop(state);
            return done(Err(fenced_error(epoch)));
        }
        if state.stopped {
            drop(state);
            return done(Err(StoreError::Unavailable(
                "the region is stopping; the standby did not confirm the commit".into(),
            )));
        }
        state.groups += 1;
        let group = Arc::new(group);
        match &mut state.log {
            Some(log) => log.push(group),
            None => state.early.push(group),
        }
        // A standby that keeps up gets the timeout for this group; an away one only what is
        // left of its grace.
        let deadline = state.away_since.map_or(now, |since| since.min(now)) + timeout;
        let first = state.waiting.is_empty();
        state.waiting.push_back(Waiting {
            version,
            deadline,
            since: now,
            done,
        });
        drop(state);
        self.wake.notify_one();
        if first {
            self.deadlines.notify_one();
        }
    }

    fn skipped(&self, version: u64) {
        tracing::warn!(
            region = self.region,
            version,
            "a failed commit reached the store without being shipped: the standby gets a full copy"
        );
        let mut state = self.lock();
        // Before the start, the export the log begins at covers it.
        if let Some(log) = &mut state.log {
            log.skipped(version);
        }
        drop(state);
        self.wake.notify_one();
    }
}

fn fenced_error(epoch: u64) -> StoreError {
    StoreError::Unavailable(format!(
        "this region was failed over to its standby (epoch {epoch}): its store is stale"
    ))
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
            let mut reached = false;
            if let Err(error) = self.session(&mut reached).await {
                tracing::warn!(
                    region = self.shipper.region,
                    standby = %self.shipper.config.standby,
                    %error,
                    "replication link to the standby failed; dialling again"
                );
            }
            self.shipper.went_away();
            if reached {
                delay_ms = REDIAL_DELAY_MS_INITIAL;
            }
            if self.shipper.lock().stopped {
                break;
            }
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            delay_ms = (delay_ms * 2).min(REDIAL_DELAY_MS_MAX);
        }
        self.endpoint.close(0u32.into(), b"stopping");
    }

    /// One connection to the standby, until it fails (it never ends otherwise); `reached` is
    /// set once it got as far as the standby's state.
    async fn session(&self, reached: &mut bool) -> Result<(), ReplicaError> {
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
                    refuses_writes_alone: self.shipper.config.when_standby_is_away
                        == AwayPolicy::RefuseWrites,
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
                Some(FromStandby {
                    kind: Some(from_standby::Kind::Promoted(epoch)),
                }) => {
                    self.shipper.fence(epoch);
                    return Err(ReplicaError::Refused(format!(
                        "the standby was promoted (epoch {epoch}): this region is fenced"
                    )));
                }
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
        *reached = true;
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
            let mut handed_over = false;
            loop {
                match self.shipper.next_after(after)? {
                    Ship::Log(Next::Group(group)) => {
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
                    Ship::HandOver(version) if !handed_over => {
                        write_frame(
                            &mut send,
                            &ToStandby {
                                kind: Some(to_standby::Kind::Handover(version)),
                            },
                        )
                        .await?;
                        handed_over = true;
                    }
                    // Asked: nothing more is sent on this stream (the standby answers
                    // `Promoted` or `Refused`).
                    Ship::HandOver(_) => self.shipper.wake.notified().await,
                    Ship::Log(Next::Wait) => {
                        let heartbeat =
                            tokio::time::sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
                        tokio::select! {
                            () = self.shipper.wake.notified() => {}
                            () = heartbeat => {
                                write_frame(
                                    &mut send,
                                    &ToStandby {
                                        kind: Some(to_standby::Kind::Heartbeat(true)),
                                    },
                                )
                                .await?;
                            }
                        }
                    }
                    Ship::Log(Next::Gap) => after = self.full_copy(&mut send).await?,
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
                    }) => {
                        self.shipper.handover_failed(&reason);
                        return Err(ReplicaError::Refused(reason));
                    }
                    Some(FromStandby {
                        kind: Some(from_standby::Kind::Promoted(epoch)),
                    }) => {
                        // The standby took over (asked by a handover, or its lease expired).
                        self.shipper.fence(epoch);
                        return Err(ReplicaError::Refused(format!(
                            "the standby took over (epoch {epoch}): this region is fenced"
                        )));
                    }
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
        ended
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
            let chunk = if export.reads_files() {
                let (returned, chunk) = tokio::task::spawn_blocking(move || {
                    let chunk = export.next_chunk(INSTALL_CHUNK_BYTES);
                    (export, chunk)
                })
                .await
                .map_err(|error| ReplicaError::Protocol(format!("reading the copy: {error}")))?;
                export = returned;
                chunk?
            } else {
                export.next_chunk(INSTALL_CHUNK_BYTES)?
            };
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
