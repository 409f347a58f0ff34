//! The standby's side: a QUIC server that accepts its region's primary and applies what it
//! ships to the standby's copy.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fdb_layers::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use fdb_layers::{CommittedGroup, MemoryDisk, Mutation, StandbyStore, StoreError};
use relay_net::{SocketFactory, TlsIdentity, TokioSockets};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::config::StandbyConfig;
use crate::limits::{
    GROUP_BYTES_MAX, HANDOVER_PROMOTION_TIMEOUT_MS, STANDBY_CONNECTIONS_MAX,
    STANDBY_STEPS_QUEUED_MAX,
};
use crate::wire::{
    ALPN_STANDBY, FromStandby, GroupPart, Hello, StandbyState, ToStandby, from_standby, from_wire,
    to_standby,
};
use crate::{ReplicaError, read_frame, write_frame};

/// The store file inside a standby's folder (the region's name for it, so the folder can be
/// a region's data folder once promoted).
pub const STANDBY_STORE_FILE: &str = "region.redb";

/// What the standby holds and has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StandbyStats {
    /// The version of its copy.
    pub version: u64,
    /// A full copy is being installed.
    pub installing: bool,
    /// Groups applied.
    pub groups_applied: u64,
    /// Full copies installed.
    pub installs: u64,
    /// Sessions with a primary.
    pub sessions: u64,
}

/// Where a standby keeps its copy.
#[derive(Debug, Clone)]
pub enum CopyAt {
    /// A store file (`relayd standby`): promoting it is opening it as the region's store.
    File(PathBuf),
    /// A memory disk (the simulator's standbys): promoting it is opening a memory database on
    /// it.
    Memory(MemoryDisk),
}

impl CopyAt {
    fn open(&self) -> Result<StandbyStore, StoreError> {
        match self {
            CopyAt::File(path) => StandbyStore::open(path),
            CopyAt::Memory(disk) => StandbyStore::memory(disk.clone()),
        }
    }

    /// Whether the copy's steps write a file (they run on blocking threads then).
    fn writes_files(&self) -> bool {
        matches!(self, CopyAt::File(_))
    }
}

/// What a standby whose copy is on a memory disk is made of (the simulator's standbys): no
/// files, and its socket from the caller's factory.
pub struct MemoryStandby<'a> {
    /// The region whose store it copies.
    pub region: u32,
    /// Where the copy is (it survives the standby's crash, as a file would).
    pub disk: MemoryDisk,
    /// The replication server's address.
    pub listen: SocketAddr,
    /// The region's own certificate and key: the only primary accepted presents it.
    pub identity: TlsIdentity,
    /// The deployment's CA.
    pub roots: Arc<RootCertStore>,
    /// Makes the server's UDP socket.
    pub sockets: &'a dyn SocketFactory,
    /// Whether it may serve as the region (it has a promotion to carry out).
    pub can_promote: bool,
}

/// The standby's server.
pub struct StandbyServer {
    inner: Arc<Inner>,
    endpoint: quinn::Endpoint,
}

struct Inner {
    region: u32,
    /// The region's certificate: the only one a primary may present.
    region_cert: CertificateDer<'static>,
    /// The copy; `None` once the standby was promoted (the region has the file).
    store: Mutex<Option<StandbyStore>>,
    /// The failover epoch the standby was promoted at; 0 while it is a standby.
    promoted: AtomicU64,
    /// Wakes a session waiting for the promotion it asked for (a handover).
    promoted_now: tokio::sync::Notify,
    /// The version its primary handed the region over at (a planned failover); 0 until then.
    handover: AtomicU64,
    /// Wakes the failover code when the primary hands the region over.
    handover_wanted: tokio::sync::Notify,
    /// The configuration has a `[promotion]` section: the standby can serve as the region.
    can_promote: bool,
    /// What the standby knows of its primary, for its lease.
    lease: Mutex<Lease>,
    /// Where the copy is.
    copy: CopyAt,
    /// The newest session; an older one stops applying once a newer one started (a restarted
    /// primary whose previous connection has not timed out yet).
    generation: AtomicU64,
    groups_applied: AtomicU64,
    installs: AtomicU64,
}

impl StandbyServer {
    /// Opens the copy in `config.data_dir` and binds the server. Nothing is served until
    /// [`Self::run`].
    pub fn open(config: &StandbyConfig) -> Result<(StandbyServer, SocketAddr), ReplicaError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| {
            relay_net::config::ConfigError::Read {
                path: config.data_dir.clone(),
                source,
            }
        })?;
        let copy = CopyAt::File(store_path(config));
        let store = copy.open()?;
        tracing::info!(
            region = config.region,
            version = store.version(),
            installing = ?store.installing(),
            "standby copy opened"
        );
        Self::bind(config, Some(store), copy, 0)
    }

    /// A standby whose copy is on `parts.disk` (the simulator's). Nothing is served until
    /// [`Self::run`].
    pub fn on_memory(
        parts: MemoryStandby<'_>,
    ) -> Result<(StandbyServer, SocketAddr), ReplicaError> {
        let store = CopyAt::Memory(parts.disk.clone()).open()?;
        Self::on_memory_with(parts, Some(store), 0)
    }

    /// [`Self::open_promoted`] for the simulator: the server of a standby on `parts.disk` that
    /// was promoted at `epoch` (its disk is the region's store now), which only tells an old
    /// primary that dials it that it is fenced.
    pub fn on_memory_promoted(
        parts: MemoryStandby<'_>,
        epoch: u64,
    ) -> Result<(StandbyServer, SocketAddr), ReplicaError> {
        Self::on_memory_with(parts, None, epoch.max(1))
    }

    fn on_memory_with(
        parts: MemoryStandby<'_>,
        store: Option<StandbyStore>,
        promoted: u64,
    ) -> Result<(StandbyServer, SocketAddr), ReplicaError> {
        Self::serve_on(
            parts.region,
            parts.identity,
            parts.roots,
            parts.sockets,
            parts.listen,
            parts.can_promote,
            store,
            CopyAt::Memory(parts.disk),
            promoted,
        )
    }

    /// The server of a standby that was promoted at `epoch` and serves as the region now
    /// (started again after a restart): it holds no copy and only tells an old primary that
    /// dials it that it is fenced.
    pub fn open_promoted(
        config: &StandbyConfig,
        epoch: u64,
    ) -> Result<(StandbyServer, SocketAddr), ReplicaError> {
        config.validate()?;
        Self::bind(config, None, CopyAt::File(store_path(config)), epoch.max(1))
    }

    fn bind(
        config: &StandbyConfig,
        store: Option<StandbyStore>,
        copy: CopyAt,
        promoted: u64,
    ) -> Result<(StandbyServer, SocketAddr), ReplicaError> {
        let roots = relay_net::load_roots(&config.ca_cert)?;
        let identity = TlsIdentity::load(&config.cert, &config.key)?;
        Self::serve_on(
            config.region,
            identity,
            roots,
            &TokioSockets,
            config.listen,
            config.promotion.is_some(),
            store,
            copy,
            promoted,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn serve_on(
        region: u32,
        identity: TlsIdentity,
        roots: Arc<RootCertStore>,
        sockets: &dyn SocketFactory,
        listen: SocketAddr,
        can_promote: bool,
        store: Option<StandbyStore>,
        copy: CopyAt,
        promoted: u64,
    ) -> Result<(StandbyServer, SocketAddr), ReplicaError> {
        let region_cert = identity
            .cert_chain
            .first()
            .cloned()
            .ok_or_else(|| ReplicaError::Protocol("the certificate file holds none".into()))?;
        let server = relay_net::server_config(identity.clone(), Some(roots), ALPN_STANDBY)?;
        let endpoint = relay_net::bind_server_endpoint(sockets, listen, server, &identity)?;
        let address = endpoint
            .local_addr()
            .map_err(|error| ReplicaError::Net(error.into()))?;
        let inner = Arc::new(Inner {
            region,
            region_cert,
            store: Mutex::new(store),
            promoted: AtomicU64::new(promoted),
            promoted_now: tokio::sync::Notify::new(),
            handover: AtomicU64::new(0),
            handover_wanted: tokio::sync::Notify::new(),
            can_promote,
            lease: Mutex::new(Lease::default()),
            copy,
            generation: AtomicU64::new(0),
            groups_applied: AtomicU64::new(0),
            installs: AtomicU64::new(0),
        });
        Ok((StandbyServer { inner, endpoint }, address))
    }

    /// The handle the failover code watches and promotes the standby with.
    pub fn handle(&self) -> StandbyHandle {
        StandbyHandle {
            inner: self.inner.clone(),
        }
    }

    /// What the standby holds and has done; cheap to call while it runs.
    pub fn stats_handle(&self) -> impl Fn() -> StandbyStats + Send + Sync + 'static {
        let inner = self.inner.clone();
        move || inner.stats()
    }

    /// Serves primaries until `shutdown` completes; returns once every session ended and the
    /// copy is closed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut sessions = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
                incoming = self.endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            if sessions.len() >= STANDBY_CONNECTIONS_MAX {
                incoming.refuse();
                continue;
            }
            let inner = self.inner.clone();
            sessions.spawn(async move {
                if let Err(error) = inner.serve(incoming).await {
                    tracing::warn!(%error, "replication session ended");
                }
            });
        }
        self.endpoint.close(0u32.into(), b"standby stopping");
        // A session waiting on a blocking write finishes it; the rest end with the connection.
        while sessions.join_next().await.is_some() {}
    }
}

fn store_path(config: &StandbyConfig) -> PathBuf {
    config.data_dir.join(STANDBY_STORE_FILE)
}

/// What the reader hands the applier, in stream order.
enum Step {
    Group(CommittedGroup),
    InstallBegin(u64),
    InstallChunk(Vec<(Vec<u8>, Vec<u8>)>),
    InstallEnd,
    /// The primary hands the region over at this version.
    Handover(u64),
}

/// What a standby knows of its primary.
#[derive(Debug, Default)]
struct Lease {
    /// When the last frame of a primary that refuses writes without the standby arrived;
    /// `None` until one connected (a primary that goes on alone gives no lease: it may have
    /// acknowledged what the standby lacks).
    last_heard: Option<tokio::time::Instant>,
}

/// What the failover code may do with a running standby: watch its lease on the primary and
/// promote it. Clones share the standby.
#[derive(Clone)]
pub struct StandbyHandle {
    inner: Arc<Inner>,
}

impl StandbyHandle {
    /// How long the primary has been silent, if a primary that refuses writes without this
    /// standby ever connected.
    pub fn primary_silent_for(&self) -> Option<std::time::Duration> {
        self.inner
            .lease
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .last_heard
            .map(|heard| heard.elapsed())
    }

    /// Whether the standby may take over by itself now: a primary that refuses writes without
    /// it has been silent for `lease`, and the copy is whole.
    pub fn lease_expired(&self, lease: std::time::Duration) -> bool {
        self.primary_silent_for()
            .is_some_and(|silent| silent >= lease)
            && self.copy_is_whole()
    }

    /// Whether the copy is a whole store (it has received one, and no full copy is half
    /// installed).
    pub fn copy_is_whole(&self) -> bool {
        self.inner
            .lock()
            .as_ref()
            .is_some_and(|store| store.installing().is_none() && store.version() > 0)
    }

    /// Stops following the primary and closes the copy, so that it can be opened as the
    /// region's store; returns where it is. Sessions stop applying from here on.
    pub fn release_copy(&self) -> Option<CopyAt> {
        let inner = &self.inner;
        let mut store = inner.lock();
        inner.generation.fetch_add(1, Ordering::SeqCst);
        store.take().map(|copy| {
            drop(copy);
            inner.copy.clone()
        })
    }

    /// Follows a primary again after a promotion that failed (the copy is opened again).
    pub fn resume(&self) -> Result<(), StoreError> {
        let mut store = self.inner.lock();
        if store.is_none() {
            *store = Some(self.inner.copy.open()?);
        }
        Ok(())
    }

    /// The standby was promoted at `epoch` and serves as the region: from now on every
    /// primary that dials it is told it is fenced, and a primary that handed the region over
    /// hears that it did.
    pub fn promoted(&self, epoch: u64) {
        self.inner.promoted.store(epoch.max(1), Ordering::SeqCst);
        self.inner.promoted_now.notify_waiters();
    }

    /// Completes once the primary hands the region over (a planned failover) with the copy at
    /// its newest version: the standby should take over now.
    pub async fn handover_requested(&self) {
        loop {
            let wanted = self.inner.handover_wanted.notified();
            if self.handover_version().is_some() {
                return;
            }
            wanted.await;
        }
    }

    /// The version the primary handed the region over at, if it did.
    pub fn handover_version(&self) -> Option<u64> {
        match self.inner.handover.load(Ordering::SeqCst) {
            0 => None,
            version => Some(version),
        }
    }
}

/// A group whose parts are arriving.
struct Gathering {
    group: CommittedGroup,
    bytes: usize,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Option<StandbyStore>> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn heard(&self, refuses_writes_alone: bool) {
        let mut lease = self
            .lease
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lease.last_heard = refuses_writes_alone.then(tokio::time::Instant::now);
    }

    fn stats(&self) -> StandbyStats {
        let store = self.lock();
        StandbyStats {
            version: store.as_ref().map_or(0, StandbyStore::version),
            installing: store
                .as_ref()
                .is_some_and(|store| store.installing().is_some()),
            groups_applied: self.groups_applied.load(Ordering::Relaxed),
            installs: self.installs.load(Ordering::Relaxed),
            sessions: self.generation.load(Ordering::Relaxed),
        }
    }

    async fn serve(self: Arc<Self>, incoming: quinn::Incoming) -> Result<(), ReplicaError> {
        let connection = incoming
            .await
            .map_err(|error| ReplicaError::Net(error.into()))?;
        let presented = relay_net::peer_certificate(&connection);
        if presented.as_ref() != Some(&self.region_cert) {
            connection.close(
                1u32.into(),
                b"only the region's primary may ship to its standby",
            );
            return Err(ReplicaError::Refused(format!(
                "a peer at {} presented another certificate than the region's",
                connection.remote_address()
            )));
        }
        let (mut send, mut recv) = connection
            .accept_bi()
            .await
            .map_err(|error| ReplicaError::Net(error.into()))?;
        let hello: Hello = read_frame(&mut recv)
            .await?
            .ok_or_else(|| ReplicaError::Protocol("the primary ended before its hello".into()))?;
        if hello.region != self.region {
            let reason = format!(
                "this is region {}'s standby, not region {}'s",
                self.region, hello.region
            );
            write_frame(&mut send, &refused(&reason)).await?;
            finish(&mut send).await;
            return Err(ReplicaError::Refused(reason));
        }
        let promoted = self.promoted.load(Ordering::SeqCst);
        if promoted > 0 {
            tracing::warn!(
                primary = %connection.remote_address(),
                epoch = promoted,
                "the old primary dialled its promoted standby: telling it it is fenced"
            );
            write_frame(&mut send, &fenced(promoted)).await?;
            finish(&mut send).await;
            return Ok(());
        }
        self.heard(hello.refuses_writes_alone);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let state = {
            let store = self.lock();
            let Some(store) = store.as_ref() else {
                return Err(ReplicaError::Protocol("the copy is being promoted".into()));
            };
            StandbyState {
                version: store.version(),
                installing: store.installing().is_some(),
            }
        };
        tracing::info!(
            region = self.region,
            primary = %connection.remote_address(),
            version = state.version,
            installing = state.installing,
            "primary connected"
        );
        write_frame(
            &mut send,
            &FromStandby {
                kind: Some(from_standby::Kind::State(state)),
            },
        )
        .await?;
        let outcome = self
            .follow(generation, hello.refuses_writes_alone, &mut send, &mut recv)
            .await;
        let promoted = self.promoted.load(Ordering::SeqCst);
        if promoted > 0 {
            let _ = write_frame(&mut send, &fenced(promoted)).await;
            finish(&mut send).await;
        } else if let Err(error) = &outcome
            && !matches!(error, ReplicaError::Net(_))
        {
            // The primary dials again and asks what the copy holds.
            let _ = write_frame(&mut send, &refused(&error.to_string())).await;
            finish(&mut send).await;
        }
        outcome
    }

    /// Applies frames until the stream ends: a reader gathers them into steps, and the steps
    /// are applied in order, consecutive groups that arrived meanwhile together (one write
    /// and one confirmation for all of them).
    async fn follow(
        self: &Arc<Self>,
        generation: u64,
        refuses_writes_alone: bool,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) -> Result<(), ReplicaError> {
        let (steps, arriving) = tokio::sync::mpsc::channel::<Step>(STANDBY_STEPS_QUEUED_MAX);
        let reading = async move {
            let mut gathering: Option<Gathering> = None;
            while let Some(frame) = read_frame::<ToStandby>(recv).await? {
                if self.promoted.load(Ordering::SeqCst) > 0 {
                    // A primary that was paused through the promotion: it hears it is fenced.
                    return Err(ReplicaError::Protocol("the standby was promoted".into()));
                }
                if self.generation.load(Ordering::SeqCst) == generation {
                    self.heard(refuses_writes_alone);
                }
                let step = match frame.kind {
                    Some(to_standby::Kind::Heartbeat(_)) => continue,
                    Some(to_standby::Kind::Handover(version)) => {
                        // The primary's last frame: the applier checks the copy is at its
                        // version once everything before it is applied.
                        let _ = steps.send(Step::Handover(version)).await;
                        break;
                    }
                    Some(to_standby::Kind::Group(part)) => match gather(&mut gathering, part)? {
                        Some(group) => Step::Group(group),
                        None => continue,
                    },
                    Some(to_standby::Kind::InstallBegin(version)) => {
                        gathering = None;
                        Step::InstallBegin(version)
                    }
                    Some(to_standby::Kind::InstallChunk(chunk)) => {
                        let mut pairs = Vec::with_capacity(chunk.pairs.len());
                        for pair in chunk.pairs {
                            check_pair(&pair.key, Some(&pair.value))?;
                            pairs.push((pair.key, pair.value));
                        }
                        Step::InstallChunk(pairs)
                    }
                    Some(to_standby::Kind::InstallEnd(_)) => Step::InstallEnd,
                    None => {
                        return Err(ReplicaError::Protocol(
                            "a frame from the primary carries nothing".into(),
                        ));
                    }
                };
                if steps.send(step).await.is_err() {
                    break;
                }
            }
            Ok::<(), ReplicaError>(())
        };
        let applying = async {
            let mut arriving = arriving;
            let mut held: Option<Step> = None;
            loop {
                let step = match held.take() {
                    Some(step) => step,
                    None => match arriving.recv().await {
                        Some(step) => step,
                        None => return Ok::<(), ReplicaError>(()),
                    },
                };
                let applied = match step {
                    Step::Group(group) => {
                        let mut groups = vec![group];
                        let mut bytes = groups[0].bytes();
                        while bytes < GROUP_BYTES_MAX {
                            match arriving.try_recv() {
                                Ok(Step::Group(group)) => {
                                    bytes += group.bytes();
                                    groups.push(group);
                                }
                                Ok(other) => {
                                    held = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        let count = groups.len() as u64;
                        let version = self
                            .blocking(generation, move |store| {
                                store.apply_all(&groups)?;
                                Ok(store.version())
                            })
                            .await?;
                        self.groups_applied.fetch_add(count, Ordering::Relaxed);
                        Some(version)
                    }
                    Step::InstallBegin(version) => {
                        self.blocking(generation, move |store| store.begin_install(version))
                            .await?;
                        None
                    }
                    Step::InstallChunk(pairs) => {
                        self.blocking(generation, move |store| store.install_chunk(&pairs))
                            .await?;
                        None
                    }
                    Step::InstallEnd => {
                        let version = self
                            .blocking(generation, |store| {
                                store.finish_install()?;
                                Ok(store.version())
                            })
                            .await?;
                        self.installs.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(region = self.region, version, "full copy installed");
                        Some(version)
                    }
                    Step::Handover(version) => return self.take_over(version).await,
                };
                if let Some(version) = applied {
                    write_frame(
                        send,
                        &FromStandby {
                            kind: Some(from_standby::Kind::Applied(version)),
                        },
                    )
                    .await?;
                }
            }
        };
        tokio::pin!(reading, applying);
        tokio::select! {
            // The stream ended: what was read is still applied (the applier ends once the
            // reader's queue is empty and gone).
            read = &mut reading => {
                read?;
                applying.await
            }
            // The applier failed (a group that does not follow, a newer session): stop reading.
            applied = &mut applying => applied,
        }
    }

    /// The primary hands the region over at `version`: once the copy is whole at exactly that
    /// version, the failover code is asked to promote the standby, and this waits (at most
    /// [`HANDOVER_PROMOTION_TIMEOUT_MS`]) until it serves as the region. The session then tells
    /// the primary it was promoted.
    async fn take_over(&self, version: u64) -> Result<(), ReplicaError> {
        let at = {
            let store = self.lock();
            store
                .as_ref()
                .filter(|store| store.installing().is_none())
                .map(StandbyStore::version)
        };
        if at != Some(version) || version == 0 {
            return Err(ReplicaError::Refused(format!(
                "asked to take over at version {version}, but the copy is {}",
                at.map_or_else(|| "not whole".to_owned(), |at| format!("at {at}"))
            )));
        }
        if !self.can_promote {
            return Err(ReplicaError::Refused(
                "this standby has no [promotion] section, so it cannot serve as the region by \
                 itself: stop the primary and promote the copy with relayd admin promote"
                    .into(),
            ));
        }
        tracing::warn!(
            region = self.region,
            version,
            "the primary hands the region over: taking over"
        );
        self.handover.store(version, Ordering::SeqCst);
        self.handover_wanted.notify_waiters();
        let promoted = async {
            loop {
                let now = self.promoted_now.notified();
                if self.promoted.load(Ordering::SeqCst) > 0 {
                    return;
                }
                now.await;
            }
        };
        tokio::time::timeout(
            Duration::from_millis(HANDOVER_PROMOTION_TIMEOUT_MS),
            promoted,
        )
        .await
        .map_err(|_| ReplicaError::Timeout("the promotion the primary asked for"))
    }

    /// Runs `work` on the copy on a blocking thread (each step fsyncs), unless a newer
    /// session took over.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        generation: u64,
        work: impl FnOnce(&mut StandbyStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ReplicaError> {
        let inner = self.clone();
        let step = move || {
            let mut store = inner.lock();
            if inner.generation.load(Ordering::SeqCst) != generation {
                return Err(ReplicaError::Protocol(
                    "a newer session with the primary took over".into(),
                ));
            }
            let Some(store) = store.as_mut() else {
                return Err(ReplicaError::Protocol("the standby was promoted".into()));
            };
            work(store).map_err(ReplicaError::Store)
        };
        if !self.copy.writes_files() {
            // A memory copy (the simulator's): quick, and in the caller's task keeps a run
            // repeatable.
            return step();
        }
        tokio::task::spawn_blocking(step)
            .await
            .map_err(|error| ReplicaError::Protocol(format!("applying: {error}")))?
    }
}

/// Adds `part` to the group being gathered; returns the group when its last part arrived.
fn gather(
    gathering: &mut Option<Gathering>,
    part: GroupPart,
) -> Result<Option<CommittedGroup>, ReplicaError> {
    let current = gathering.get_or_insert_with(|| Gathering {
        group: CommittedGroup {
            previous_version: part.previous_version,
            version: part.version,
            mutations: Vec::new(),
        },
        bytes: 0,
    });
    if current.group.previous_version != part.previous_version
        || current.group.version != part.version
    {
        return Err(ReplicaError::Protocol(format!(
            "a part of the group to version {} arrived inside the group to version {}",
            part.version, current.group.version
        )));
    }
    for mutation in part.mutations {
        let mutation = from_wire(mutation)
            .ok_or_else(|| ReplicaError::Protocol("a mutation carries nothing".into()))?;
        match &mutation {
            Mutation::Put { key, value } => check_pair(key, Some(value))?,
            Mutation::Remove { key } => check_pair(key, None)?,
            Mutation::RemoveRange { begin, end } => {
                if begin.len() > KEY_BYTES_MAX + 1 || end.len() > KEY_BYTES_MAX + 1 {
                    return Err(ReplicaError::Protocol(
                        "a cleared range's key is too long".into(),
                    ));
                }
            }
        }
        current.bytes += mutation.bytes();
        if current.bytes > GROUP_BYTES_MAX {
            return Err(ReplicaError::Protocol(format!(
                "the group to version {} is over {GROUP_BYTES_MAX} bytes",
                part.version
            )));
        }
        current.group.mutations.push(mutation);
    }
    if part.more {
        return Ok(None);
    }
    Ok(gathering.take().map(|gathering| gathering.group))
}

fn check_pair(key: &[u8], value: Option<&[u8]>) -> Result<(), ReplicaError> {
    if key.len() > KEY_BYTES_MAX || value.is_some_and(|value| value.len() > VALUE_BYTES_MAX) {
        return Err(ReplicaError::Protocol(
            "a key or value is over the store's limits".into(),
        ));
    }
    Ok(())
}

/// Finishes a stream whose last frame the primary must read, and waits (briefly) until it has:
/// the connection closes when the session ends, and would take unread frames with it.
async fn finish(send: &mut quinn::SendStream) {
    let _ = send.finish();
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(crate::limits::HANDSHAKE_TIMEOUT_MS),
        send.stopped(),
    )
    .await;
}

/// What a promoted standby answers its old primary.
fn fenced(epoch: u64) -> FromStandby {
    FromStandby {
        kind: Some(from_standby::Kind::Promoted(epoch)),
    }
}

fn refused(reason: &str) -> FromStandby {
    FromStandby {
        kind: Some(from_standby::Kind::Refused(reason.to_owned())),
    }
}
