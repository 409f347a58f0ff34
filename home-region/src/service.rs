//! The region's QUIC shell: accepts internal connections (mutual TLS), runs each request's
//! transaction through [`crate::core`], performs the effects after commit (pushes to the edges
//! holding the devices, cross-region receipt delivery), and forwards directory writes (account
//! creation, group commands) to the directory writer region.
//!
//! [`RegionService::open`] checks the store before binding anything ([`crate::store_check`]).
//! The shell keeps the set of quarantined devices: loaded from the store when it starts to
//! serve, grown when a device's queue turns out unreadable (recorded in the store too, best
//! effort, since the store is what is damaged), and passed to every commit and fetch.
//!
//! What it holds in memory is bounded ([`crate::limits`]): internal connections
//! ([`INTERNAL_CONNECTIONS_MAX`], then refused), devices subscribed per edge stream
//! ([`SUBSCRIBED_DEVICES_PER_STREAM_MAX`], further adds ignored and logged), pushes per stream
//! (dropped past [`SUBSCRIPTION_PUSHES_MAX`]: they are hints), key-claim buckets
//! ([`crate::claims`]) and the accounts whose cached copy it refreshed lately (at most
//! [`ACCOUNT_REFRESHES_TRACKED_MAX`]). Accounts cached from the directory writer are asked of it
//! again in the background once they are [`ACCOUNT_REFRESH_INTERVAL_MS`] old, so a home move
//! reaches this region's lookups without a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fdb_layers::keys::IdempotencyKey;
use fdb_layers::quarantine::{self, QuarantineRecord};
use fdb_layers::store_identity::{StoreId, StoreIdentity};
use fdb_layers::{Database, EmbeddedOptions, StoreError, directory, outbox};
use prost::Message;
use quinn::rustls::RootCertStore;
use relay_net::cache::TtlCache;
use relay_net::config::ConfigError;
use relay_net::{
    self as net, ConnectionSlots, NetError, PeerLinks, PeerResolver, SocketFactory, TlsIdentity,
    TokioSockets,
};
use relay_planted::PlantedBug;
use relay_proto::clock::{Clock, SystemClock};
use relay_proto::frame::encode_frame_into;
use relay_proto::limits::{REGION_PEER_REQUEST_TIMEOUT_MS, SUBSCRIBED_DEVICES_PER_STREAM_MAX};
use relay_proto::wire::{
    self, DeviceQueueAvailable, RegionRequest, RegionResponse, region_request, region_response,
};
use relay_proto::{AccountId, ChatId, DeviceAddress, ErrorCode, GroupId, ProtoError, RegionId};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use crate::blobs::{BlobLimits, BlobStore};
use crate::claims::ClaimLimiter;
use crate::config::{PeersFile, RegionConfig};
use crate::core::{self, CommitDecision, Effects, GroupMembership, GroupSource};
use crate::directory_replica;
use crate::groups;
use crate::handover::{self, Drain};
use moves::Moves;

mod moves;
use crate::lanes::{self, Arrival, ChatLanes, LanePoll, Ticket};
use crate::limits::{
    ACCOUNT_REFRESH_INTERVAL_MS, ACCOUNT_REFRESHES_IN_FLIGHT_MAX, ACCOUNT_REFRESHES_TRACKED_MAX,
    BLOB_SWEEP_INTERVAL_MS, GROUP_ASKERS_MAX, GROUP_CACHE_ENTRIES_MAX, GROUP_CACHE_TTL_MS,
    INTERNAL_CONNECTIONS_MAX, LOCAL_RECEIPTS_BATCH_MAX, OUTBOX_BATCH_ENTRIES_MAX,
    OUTBOX_IDLE_POLL_MS, OUTBOX_RETRY_DELAY_MS, PLANTED_COMMIT_DELAY_MS,
    QUARANTINE_LOAD_DEVICES_PER_TRANSACTION, REPLICA_READERS_MAX, RETENTION_SWEEP_INTERVAL_MS,
    RETENTION_SWEEP_TRANSACTIONS_MAX, SUBSCRIPTION_PUSHES_MAX, SUBSCRIPTION_WRITE_BYTES_MAX,
    WRITER_CENSUS_ATTEMPT_TIMEOUT_MS,
};
use crate::linking;
use crate::presence::{self, PresenceBoard};
use crate::push::Pusher;
use crate::store_check::{self, CensusSource, CheckInputs, Expected, LocalCensus, StoreCheckError};

/// The store's file in the region's data folder.
pub const STORE_FILE: &str = "region.redb";

/// Why the region cannot start or run.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The network shell failed.
    #[error("network: {0}")]
    Net(#[from] NetError),
    /// The standby link could not be set up.
    #[error("replication: {0}")]
    Replication(#[from] relay_replica::ReplicaError),
    /// The region's standby was promoted: this region's store is stale, and it stopped.
    #[error(
        "region {region} was failed over to its standby (epoch {epoch}): this process stopped \
         serving, its store is stale; make this machine the new primary's standby"
    )]
    Fenced {
        /// The region.
        region: u32,
        /// The failover epoch the standby was promoted at.
        epoch: u64,
    },
    /// The store is not one this region may start on (or could not be checked).
    #[error("region {region} cannot start on the store {}", store.display())]
    StoreCheck {
        /// This region.
        region: RegionId,
        /// The store's file.
        store: std::path::PathBuf,
        /// Why.
        source: StoreCheckError,
    },
}

/// What a region pushes on an edge's subscription stream: queue hints, presence updates and
/// typing notices.
type PushSender = mpsc::Sender<region_response::Body>;

/// What a region runs on, built by the caller: [`RegionService::open`] makes them from a
/// configuration (the embedded store, kernel sockets, PEM files, the system clock); a simulation
/// makes its own (a memory store, simulated sockets and time).
pub struct RegionParts<'a> {
    /// This region's number.
    pub region: RegionId,
    /// The region that writes the global directory.
    pub directory_writer: RegionId,
    /// The address the internal QUIC server binds.
    pub listen: SocketAddr,
    /// The open store.
    pub db: Database,
    /// Makes the UDP socket of the internal endpoint.
    pub sockets: &'a dyn SocketFactory,
    /// This region's certificate and key (server and client side of internal links).
    pub identity: TlsIdentity,
    /// The deployment's CA: peers must present a certificate it signed.
    pub roots: Arc<RootCertStore>,
    /// Where the other regions listen; asked again whenever a peer is unknown or unreachable.
    pub peers: PeerResolver,
    /// Wall-clock time (queue entry times, retention, idempotency keys).
    pub clock: Arc<dyn Clock>,
    /// A number unique to this start of the region: the first half of every idempotency key it
    /// issues, so that keys of a restarted process never meet those of the previous one.
    pub boot_nonce: u64,
    /// Where blobs' bytes live ([`crate::blobs`]: local files, S3, or memory).
    pub blob_objects: Arc<dyn object_store::ObjectStore>,
    /// The blob store's bounds.
    pub blob_limits: BlobLimits,
    /// Whether the store served an earlier run of this region (a restart, not a new store):
    /// the directory writer then cannot know which regions still cache a group's membership
    /// the earlier run gave out, and waits for those caches to expire before acknowledging
    /// a membership change made in its first [`GROUP_CACHE_TTL_MS`].
    pub served_before: bool,
    /// How to wake devices that have no connection (`None`: no push provider).
    pub push: Option<crate::push::PushSetup>,
    /// (The directory writer) whether a new account needs a registration token.
    pub tokens_required: bool,
    /// Ships every commit to the region's standby (started on `db` already); stopped when the
    /// region stops. `None` without a standby.
    pub replication: Option<Arc<relay_replica::Shipper>>,
    /// Whether `peers` may move a region to another address (a peers file a promoted standby
    /// rewrites): then connections to a peer that moved are closed within
    /// `PEER_MOVE_CHECK_INTERVAL_MS`.
    pub follow_peer_moves: bool,
}

/// A running region.
#[derive(Clone)]
pub struct RegionService {
    inner: Arc<Inner>,
}

struct Inner {
    region: RegionId,
    writer: RegionId,
    db: Database,
    peers: PeerLinks,
    endpoint: quinn::Endpoint,
    /// device → (subscription stream id → push channel of the edge holding it); ordered by
    /// stream, so pushes leave in the same order on every run.
    subscriptions: Mutex<HashMap<DeviceAddress, BTreeMap<u64, PushSender>>>,
    /// subscription stream id → its push channel (presence updates find their watcher's edge).
    streams: Mutex<HashMap<u64, PushSender>>,
    /// Who of this region's accounts is online, and who watches them (see [`crate::presence`]).
    presence: Mutex<PresenceBoard>,
    next_stream_id: AtomicU64,
    outbox_wake: Notify,
    /// Key claims per claimer (in memory; a restart starts every bucket full).
    claims: Mutex<ClaimLimiter>,
    /// The first half of every idempotency key this process issues: unique per process start.
    key_prefix: u64,
    /// The second half: a counter.
    next_key: AtomicU64,
    clock: Arc<dyn Clock>,
    /// Devices whose queue could not be read: nothing is accepted for them.
    quarantined: Mutex<BTreeSet<DeviceAddress>>,
    /// One ordered lane per chat (see [`crate::lanes`]).
    lanes: Mutex<ChatLanes>,
    /// The envelopes waiting in the lanes, with where to answer them.
    lane_waiters: Mutex<HashMap<Ticket, LaneWaiter>>,
    /// Wakes a running lane whose envelopes wait for a predecessor.
    lane_wakers: Mutex<HashMap<ChatId, Arc<Notify>>>,
    next_ticket: AtomicU64,
    /// Internal connections held now, against their bound.
    connections: ConnectionSlots,
    /// Accounts cached from the directory writer and asked of it lately (or being asked).
    refreshed: Mutex<TtlCache<AccountId, ()>>,
    /// Refreshes asked of the directory writer at once.
    refreshes: Arc<Semaphore>,
    /// (Regions that are not the directory writer) group memberships asked of the writer, by
    /// version: see [`RegionService::group_membership`].
    groups: Mutex<TtlCache<GroupId, Arc<GroupMembership>>>,
    /// (Regions that are not the directory writer) the lowest version of a group the writer
    /// said exists now (`GroupVersion`): an answer about an older one, asked before the change
    /// and answered after, is not cached or used.
    group_floors: Mutex<TtlCache<GroupId, u64>>,
    /// (The directory writer) the regions that asked for each group's membership, and when
    /// this writer answered (its clock, ms): told when the group changes.
    group_askers: Mutex<BTreeMap<GroupId, BTreeMap<RegionId, u64>>>,
    /// (The directory writer) the regions that polled its change logs, and when this writer
    /// last answered each (its clock, ms): each may check group envelopes against its copy of
    /// the groups for [`GROUP_CACHE_TTL_MS`] after, so each is told of every group change.
    replica_readers: Mutex<BTreeMap<RegionId, u64>>,
    /// (The directory writer) when a region's poll was last not remembered (the table was full;
    /// 0: never): group changes wait every copy out until that poll's lease ran out.
    replica_reader_forgotten_at_ms: std::sync::atomic::AtomicU64,
    /// (Regions that are not the directory writer) whether group envelopes may be checked
    /// against this region's copy of the groups (see [`directory_replica`]).
    group_lease: directory_replica::GroupLease,
    /// When this service started (ms) after an earlier run on its store: regions that asked
    /// that run may still hold a membership for [`GROUP_CACHE_TTL_MS`] (a new store's run
    /// counts as started that long ago).
    started_at_ms: u64,
    /// Encrypted media and history snapshots.
    blobs: BlobStore,
    /// Wakes devices with no connection (see [`crate::push`]).
    pusher: Arc<Pusher>,
    /// (The directory writer) whether a new account needs a registration token.
    tokens_required: bool,
    /// Ships every commit to the region's standby; stopped when the region stops.
    replication: Option<Arc<relay_replica::Shipper>>,
    /// See [`RegionParts::follow_peer_moves`].
    follow_peer_moves: bool,
    /// The region's own certificate: only its holder may hand the region over.
    own_cert: Option<rustls_pki_types::CertificateDer<'static>>,
    /// Holds new streams during a handover (see [`crate::handover`]).
    drain: Arc<Drain>,
    /// Home moves: held and moved-away accounts (see [`crate::home_move`]).
    moves: Moves,
}

/// An envelope waiting in its chat's lane.
struct LaneWaiter {
    envelope: wire::Envelope,
    sender: DeviceAddress,
    sender_seq: u64,
    sender_region: RegionId,
    /// The group's membership, for a group envelope at a region that is not the writer.
    group: Option<Arc<GroupMembership>>,
    answer: oneshot::Sender<Result<CommitDecision, ProtoError>>,
}

fn error_response(error: ProtoError) -> RegionResponse {
    RegionResponse {
        body: Some(region_response::Body::Error(error.into())),
    }
}

/// The answer to a request whose transaction failed in the store. A commit that failed in
/// storage (a full disk, an I/O error; it may or may not be durable) and the refusals after it
/// are `StorageUnavailable`: nothing is acknowledged, and the client retries under the same
/// ids, which the layers deduplicate.
pub(crate) fn store_failure(error: StoreError) -> ProtoError {
    match error {
        StoreError::Unavailable(_) | StoreError::Storage(_) => {
            tracing::warn!(%error, "store unavailable");
            ProtoError::new(
                ErrorCode::StorageUnavailable,
                "the region's storage is unavailable; retry later",
            )
        }
        // A damaged record outside a device queue (those quarantine the device): the request
        // is refused as storage trouble, never answered as if it had worked.
        StoreError::Corrupt { .. } => {
            tracing::error!(%error, "store failure");
            ProtoError::new(
                ErrorCode::StorageUnavailable,
                format!("a record of this region's store cannot be read ({error}); retry later"),
            )
        }
        error => {
            tracing::error!(%error, "store failure");
            ProtoError::new(ErrorCode::Internal, "storage failure; retry later")
        }
    }
}

fn shipper_standby(config: &RegionConfig) -> String {
    config
        .replication
        .as_ref()
        .map_or_else(String::new, |replication| replication.standby.to_string())
}

impl RegionService {
    /// Opens the store, checks it is the one this region expects ([`crate::store_check`]:
    /// asking the directory writer when it is empty), then binds the internal QUIC server from
    /// a configuration. A refused store fails before anything is bound. Nothing is served until
    /// [`Self::run`].
    pub async fn open(
        config: &RegionConfig,
        accept_new_store: bool,
    ) -> Result<(Self, SocketAddr, StoreIdentity), RegionError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ConfigError::Read {
            path: config.data_dir.clone(),
            source,
        })?;
        let store_path = config.data_dir.join(STORE_FILE);
        let store_check_failed = |source| RegionError::StoreCheck {
            region: RegionId(config.region),
            store: store_path.clone(),
            source,
        };
        store_check::set_aside_empty_file(
            &store_path,
            &config.data_dir,
            accept_new_store,
            SystemClock.now_ms(),
        )
        .map_err(store_check_failed)?;
        let roots = net::load_roots(&config.ca_cert)?;
        let identity = TlsIdentity::load(&config.cert, &config.key)?;
        let replication = config
            .replication
            .clone()
            .map(|replication| relay_replica::Shipper::new(config.region, replication))
            .transpose()?;
        let db = Database::open(
            &store_path,
            EmbeddedOptions {
                replication: replication
                    .clone()
                    .map(|shipper| shipper as Arc<dyn fdb_layers::ReplicationSink>),
                ..EmbeddedOptions::default()
            },
        )?;
        if let Some(shipper) = &replication {
            // Before the store check, whose first commit waits for the standby.
            shipper.start(
                db.clone(),
                SocketAddr::new(config.listen.ip(), 0),
                roots.clone(),
                identity.clone(),
            )?;
            tracing::info!(standby = %shipper_standby(config), "shipping every commit to the standby");
        }
        let region = RegionId(config.region);
        let expected = Expected {
            region,
            deployment: store_check::deployment_id(&config.ca_cert)?,
            directory_writer: RegionId(config.directory_writer),
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let now_ms = clock.now_ms();
        let new_store_id = StoreId(rand::random());
        let writer = if expected.directory_writer == region {
            WriterCensus::Local(LocalCensus { db: &db, now_ms })
        } else {
            WriterCensus::Remote(Box::new(RemoteCensus::connect(
                config,
                roots.clone(),
                identity.clone(),
            )?))
        };
        let inputs = CheckInputs {
            data_dir: &config.data_dir,
            expected,
            accept_new_store,
            new_store_id,
            now_ms,
            writer: &writer,
        };
        let checked = store_check::check_store(&db, inputs).await;
        if let WriterCensus::Remote(remote) = &writer {
            remote.close();
        }
        let store = checked.map_err(|source| RegionError::StoreCheck {
            region,
            store: store_path,
            source,
        })?;
        tracing::info!(store = %store.store_id, created_at_ms = store.created_at_ms, "the store is this region's");
        let blob_objects =
            crate::blobs::configured_objects(&config.blobs, &config.data_dir, &db, clock.clone())
                .map_err(ConfigError::Value)?;
        if config.replication.is_some()
            && config.blobs.s3.is_none()
            && config.blobs.keep_in == crate::config::BlobPlace::Files
        {
            tracing::warn!(
                "blobs are kept in local files, which the standby never receives: a failover \
                 loses them; set [blobs] keep_in = \"store\" (or use [blobs.s3])"
            );
        }
        let blob_limits = BlobLimits {
            account_bytes_max: config
                .blobs
                .account_bytes_max
                .unwrap_or(BlobLimits::default().account_bytes_max),
            ..BlobLimits::default()
        };
        let push = crate::push::PushSetup::from_config(&config.push)
            .map_err(|error| ConfigError::Value(format!("[push]: {error}")))?;
        let (service, address) = Self::new(RegionParts {
            region,
            directory_writer: expected.directory_writer,
            listen: config.listen,
            db,
            sockets: &TokioSockets,
            identity,
            roots,
            peers: PeersFile::resolver(config.peers_file.clone()),
            clock,
            boot_nonce: boot_nonce(),
            blob_objects,
            blob_limits,
            served_before: store.created_at_ms != now_ms,
            push,
            tokens_required: config.registration.tokens_required,
            replication,
            follow_peer_moves: true,
        })?;
        Ok((service, address, store))
    }

    /// Binds the internal QUIC server on the given parts. Nothing is served until
    /// [`Self::run`].
    pub fn new(parts: RegionParts<'_>) -> Result<(Self, SocketAddr), RegionError> {
        let RegionParts {
            region,
            directory_writer,
            listen,
            db,
            sockets,
            identity,
            roots,
            peers,
            clock,
            boot_nonce,
            blob_objects,
            blob_limits,
            served_before,
            push,
            tokens_required,
            replication,
            follow_peer_moves,
        } = parts;
        if region.0 == 0 || directory_writer.0 == 0 {
            return Err(ConfigError::Value("region numbers start at 1".into()).into());
        }
        let server = net::server_config(identity.clone(), Some(roots.clone()), net::ALPN_INTERNAL)?;
        let endpoint = net::bind_server_endpoint(sockets, listen, server, &identity)?;
        let address = endpoint.local_addr().map_err(NetError::Io)?;
        let own_cert = identity.cert_chain.first().cloned();
        let client = net::client_config(roots, Some(identity), net::ALPN_INTERNAL)?;
        let peers = PeerLinks::new(endpoint.clone(), client, net::REGION_SERVER_NAME, peers);
        let blobs = BlobStore::new(blob_objects, db.clone(), blob_limits);
        // A new store: no earlier run handed out memberships, so nothing to wait for.
        let started_at_ms = if served_before {
            clock.now_ms()
        } else {
            clock.now_ms().saturating_sub(GROUP_CACHE_TTL_MS)
        };
        let inner = Inner {
            region,
            writer: directory_writer,
            db,
            peers,
            endpoint,
            subscriptions: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            presence: Mutex::new(PresenceBoard::default()),
            next_stream_id: AtomicU64::new(1),
            outbox_wake: Notify::new(),
            claims: Mutex::new(ClaimLimiter::new()),
            key_prefix: boot_nonce,
            next_key: AtomicU64::new(1),
            clock,
            quarantined: Mutex::new(BTreeSet::new()),
            lanes: Mutex::new(ChatLanes::new()),
            lane_waiters: Mutex::new(HashMap::new()),
            lane_wakers: Mutex::new(HashMap::new()),
            next_ticket: AtomicU64::new(1),
            connections: ConnectionSlots::new(INTERNAL_CONNECTIONS_MAX),
            refreshed: Mutex::new(TtlCache::new(
                ACCOUNT_REFRESHES_TRACKED_MAX,
                ACCOUNT_REFRESH_INTERVAL_MS,
            )),
            refreshes: Arc::new(Semaphore::new(ACCOUNT_REFRESHES_IN_FLIGHT_MAX)),
            groups: Mutex::new(TtlCache::new(GROUP_CACHE_ENTRIES_MAX, GROUP_CACHE_TTL_MS)),
            group_floors: Mutex::new(TtlCache::new(GROUP_CACHE_ENTRIES_MAX, GROUP_CACHE_TTL_MS)),
            group_askers: Mutex::new(BTreeMap::new()),
            replica_readers: Mutex::new(BTreeMap::new()),
            replica_reader_forgotten_at_ms: std::sync::atomic::AtomicU64::new(0),
            group_lease: directory_replica::GroupLease::default(),
            started_at_ms,
            blobs,
            pusher: Arc::new(Pusher::new(push)),
            tokens_required,
            replication,
            follow_peer_moves,
            own_cert,
            drain: Arc::default(),
            moves: Moves::default(),
        };
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            address,
        ))
    }

    /// Serves until `shutdown` completes, then closes connections and flushes nothing further
    /// (every acknowledged write is already durable).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RegionError> {
        self.load_quarantine().await;
        self.load_away().await;
        match self.inner.pusher.load(&self.inner.db).await {
            Ok(registered) if self.inner.pusher.enabled() => {
                tracing::info!(registered, "push: devices registered for wakes");
            }
            Ok(_) => {}
            // Without the list no device is woken until it registers again; everything else
            // works.
            Err(error) => tracing::warn!(%error, "push: reading the registered devices failed"),
        }
        let replica = if self.inner.writer == self.inner.region {
            // Every account needs its change log entry before replicas read the log.
            if let Err(error) = directory_replica::complete_log(&self.inner.db).await {
                tracing::error!(%error, "could not complete the directory's change log; replicas miss the accounts without an entry until they change");
            }
            None
        } else {
            let service = self.clone();
            Some(tokio::spawn(async move {
                directory_replica::follow_writer(
                    service.inner.db.clone(),
                    &service.inner.peers,
                    service.inner.writer,
                    service.inner.region,
                    &*service.inner.clock,
                    &service.inner.group_lease,
                )
                .await;
            }))
        };
        let pusher = tokio::spawn(self.inner.pusher.clone().run(self.inner.db.clone()));
        let pump = tokio::spawn(self.clone().outbox_pump());
        let sweeper = tokio::spawn(self.clone().retention_sweeper());
        let blob_sweeper = tokio::spawn(self.clone().blob_sweeper());
        let moves = self.inner.follow_peer_moves.then(|| {
            let service = self.clone();
            tokio::spawn(async move { service.inner.peers.close_moved_forever().await })
        });
        let accept = async {
            while let Some(incoming) = self.inner.endpoint.accept().await {
                let service = self.clone();
                tokio::spawn(async move {
                    if let Some((connection, _slot)) =
                        net::accept_bounded(&service.inner.connections, incoming).await
                    {
                        service.serve_connection(connection).await;
                    }
                });
            }
        };
        let fenced = async {
            match &self.inner.replication {
                Some(shipper) => shipper.fenced().await,
                None => std::future::pending().await,
            }
        };
        let mut fenced_at = None;
        tokio::select! {
            () = accept => {}
            () = shutdown => {}
            epoch = fenced => fenced_at = Some(epoch),
        }
        pump.abort();
        pusher.abort();
        sweeper.abort();
        blob_sweeper.abort();
        if let Some(moves) = moves {
            moves.abort();
        }
        if let Some(replica) = replica {
            replica.abort();
        }
        if let Some(shipper) = &self.inner.replication {
            shipper.stop();
        }
        if fenced_at.is_some() {
            // Handed over: the operator hears it before the connections close.
            self.inner.drain.answer_written().await;
        }
        self.inner
            .endpoint
            .close(0u32.into(), b"region shutting down");
        // Lets the close reach the peers before the process exits: requests they have under
        // way here fail at once (and, after a failover, go to the standby) instead of waiting
        // for a timeout.
        let _ = tokio::time::timeout(
            Duration::from_millis(crate::limits::CLOSE_NOTICE_WAIT_MS),
            self.inner.endpoint.wait_idle(),
        )
        .await;
        match fenced_at {
            Some(epoch) => Err(RegionError::Fenced {
                region: self.inner.region.0,
                epoch,
            }),
            None => Ok(()),
        }
    }

    async fn serve_connection(self, connection: quinn::Connection) {
        let presented = net::peer_certificate(&connection);
        let from_own_cert = presented.is_some() && presented == self.inner.own_cert;
        loop {
            let (send, recv) = match connection.accept_bi().await {
                Ok(streams) => streams,
                Err(error) => {
                    tracing::debug!(%error, "internal connection ended");
                    return;
                }
            };
            let service = self.clone();
            tokio::spawn(async move { service.serve_stream(send, recv, from_own_cert).await });
        }
    }

    async fn serve_stream(
        self,
        send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        from_own_cert: bool,
    ) {
        let request = match net::read_frame::<RegionRequest>(&mut recv).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                let _ = net::respond(send, &error_response(error.to_proto())).await;
                return;
            }
        };
        if let Some(region_request::Body::HandOver(ask)) = &request.body {
            let inner = &self.inner;
            let shipper = inner.replication.as_ref();
            handover::serve(
                &inner.drain,
                inner.region.0,
                shipper,
                ask,
                from_own_cert,
                send,
            )
            .await;
            return;
        }
        if let Some(region_request::Body::MoveHome(ask)) = request.body {
            self.serve_move_home(ask, from_own_cert, send).await;
            return;
        }
        // Held while the region hands itself over, or while an account the request touches
        // moves; requests are counted until answered.
        let in_flight = match self.pass_gate(&request).await {
            Ok(in_flight) => in_flight,
            Err(error) => {
                let _ = net::respond(send, &error_response(error)).await;
                return;
            }
        };
        if let Some(region_request::Body::Subscribe(first)) = request.body {
            drop(in_flight);
            self.serve_subscription(first, send, recv).await;
            return;
        }
        if let Some(region_request::Body::Blob(blob)) = &request.body
            && blob.command.is_stream()
        {
            drop(in_flight);
            self.serve_blob_stream(blob.clone(), send, recv).await;
            return;
        }
        let response = self.handle(request).await;
        if let Err(error) = net::respond(send, &response).await {
            tracing::debug!(%error, "could not answer a request");
        }
    }

    /// Serves an upload or download stream: the blob's raw bytes follow the request frame
    /// (upload, answered by one status frame) or the status frame (download).
    async fn serve_blob_stream(
        self,
        request: wire::ForBlob,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        use wire::blob_command::Command;
        let now = self.inner.clock.now_ms();
        let device = match request.device.parse() {
            Ok(device) => device,
            Err(error) => {
                let _ = net::respond(send, &error_response(error)).await;
                return;
            }
        };
        let blobs = &self.inner.blobs;
        match request.command.command {
            Some(Command::Upload(at)) => {
                let answer = blobs.upload(device.account, &at, &mut recv, now).await;
                // Whatever was not read is not wanted: the answer says where to resume.
                let _ = recv.stop(0u32.into());
                let response = match answer {
                    Ok(status) => RegionResponse {
                        body: Some(region_response::Body::Blob(self.located(status))),
                    },
                    Err(error) => error_response(error),
                };
                if let Err(error) = net::respond(send, &response).await {
                    tracing::debug!(%error, "could not answer an upload");
                }
            }
            Some(Command::Download(at)) => {
                let _ = recv.stop(0u32.into());
                let (status, mut reader) = match blobs.open_download(&at.id, at.offset, now).await {
                    Ok(opened) => opened,
                    Err(error) => {
                        let _ = net::respond(send, &error_response(error)).await;
                        return;
                    }
                };
                let head = RegionResponse {
                    body: Some(region_response::Body::Blob(self.located(status))),
                };
                if net::write_frame(&mut send, &head).await.is_err() {
                    return;
                }
                loop {
                    match reader.next_piece().await {
                        Ok(Some(piece)) => {
                            if send.write_chunk(piece).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            let _ = send.finish();
                            return;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "a download broke off");
                            let _ = send.reset(1u32.into());
                            return;
                        }
                    }
                }
            }
            _ => {
                let _ = net::respond(
                    send,
                    &error_response(ProtoError::invalid("not a blob stream")),
                )
                .await;
            }
        }
    }

    /// A blob request that is not a stream: begin, status, finish.
    async fn blob_request(&self, request: wire::ForBlob) -> Result<wire::BlobStatus, ProtoError> {
        use wire::blob_command::Command;
        let now = self.inner.clock.now_ms();
        let device = request.device.parse()?;
        let blobs = &self.inner.blobs;
        let status = match request.command.command {
            Some(Command::Begin(begin)) => blobs.begin(device.account, &begin, now).await?,
            Some(Command::Status(at)) => blobs.status(device.account, &at.id, now).await?,
            Some(Command::Finish(at)) => {
                blobs
                    .finish(device.account, &at.id, &at.sha256, now)
                    .await?
            }
            Some(Command::Upload(_) | Command::Download(_)) => {
                return Err(ProtoError::invalid(
                    "uploads and downloads open a stream of their own",
                ));
            }
            None => {
                return Err(ProtoError::new(
                    ErrorCode::UnsupportedRequest,
                    "a kind of blob request this region does not know (it is older)",
                ));
            }
        };
        Ok(self.located(status))
    }

    /// `status`, naming this region as the blob's.
    fn located(&self, mut status: wire::BlobStatus) -> wire::BlobStatus {
        status.region = self.inner.region.0;
        status
    }

    /// Removes expired blobs every [`BLOB_SWEEP_INTERVAL_MS`] (and at start, with the objects a
    /// crash left without a record).
    async fn blob_sweeper(self) {
        loop {
            match self.inner.blobs.sweep(self.inner.clock.now_ms()).await {
                Ok(sweep) if sweep.expired_blobs + sweep.orphaned_blobs > 0 => {
                    tracing::info!(
                        expired = sweep.expired_blobs,
                        orphaned = sweep.orphaned_blobs,
                        "removed blobs"
                    );
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "blob sweep failed; will retry"),
            }
            tokio::time::sleep(Duration::from_millis(BLOB_SWEEP_INTERVAL_MS)).await;
        }
    }

    /// Answers one request.
    pub async fn handle(&self, request: RegionRequest) -> RegionResponse {
        match self.dispatch(request).await {
            Ok(body) => RegionResponse { body: Some(body) },
            Err(error) => error_response(error),
        }
    }

    async fn dispatch(&self, request: RegionRequest) -> Result<region_response::Body, ProtoError> {
        use region_request::Body as Req;
        use region_response::Body as Resp;
        let local = self.inner.region;
        let Some(body) = request.body else {
            // prost reads a kind it does not know as no body at all.
            return Err(ProtoError::new(
                ErrorCode::UnsupportedRequest,
                "an empty region request, or a kind this region does not know (it is older)",
            ));
        };
        match body {
            Req::Commit(commit) => {
                let sender_region = RegionId(commit.sender_region);
                let envelope = commit.envelope;
                let now = self.inner.clock.now_ms();
                if relay_planted::is_planted(PlantedBug::AckBeforeCommit) {
                    return self.commit_late(envelope, sender_region, now).await;
                }
                let decision = self.commit_in_lane(envelope, sender_region).await?;
                self.commit_answer(decision).await.map(Resp::Committed)
            }
            Req::Register(register) => self.register(register).await.map(Resp::Registered),
            Req::CreateAccount(create) => {
                if self.inner.writer != local {
                    return Err(ProtoError::new(
                        ErrorCode::Unavailable,
                        "this region is not the directory writer",
                    ));
                }
                let record = self
                    .create_account(
                        &create.name,
                        RegionId(create.home_region),
                        &create.registration_token,
                    )
                    .await?;
                Ok(Resp::Account(core::account_info(&record)))
            }
            Req::IssueTokens(issue) => {
                if self.inner.writer != local {
                    return Err(ProtoError::new(
                        ErrorCode::Unavailable,
                        "this region is not the directory writer: issue tokens there",
                    ));
                }
                self.issue_tokens(&issue)
                    .await
                    .map(Resp::RegistrationTokens)
            }
            Req::LookupName(lookup) => {
                let name = lookup.name.clone();
                self.lookup(
                    move |tx| {
                        let name = name.clone();
                        async move { directory::account_by_name(&tx, &name).await }
                    },
                    region_request::Body::LookupName(lookup),
                )
                .await
                .map(Resp::Account)
            }
            Req::LookupAccount(lookup) => {
                let account = AccountId(lookup.account);
                self.lookup(
                    move |tx| async move { directory::account_by_id(&tx, account).await },
                    region_request::Body::LookupAccount(lookup),
                )
                .await
                .map(Resp::Account)
            }
            Req::SigningKey(device) => {
                let device = device.parse()?;
                let key = self
                    .transact(|tx| async move { core::signing_key(&tx, device).await })
                    .await?;
                Ok(Resp::SigningKey(key))
            }
            Req::ClaimKeys(claim) => {
                let account = AccountId(claim.account);
                let claimer = claim.claimer.map(|claimer| claimer.parse()).transpose()?;
                self.inner
                    .claims
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .handle_claim(claimer, self.inner.clock.now_ms())?;
                let key = self.idempotency_key();
                let bundle = self
                    .transact(|tx| async move { core::claim_keys(&tx, local, account, &key).await })
                    .await?;
                Ok(Resp::Keys(bundle))
            }
            Req::UploadOneTimeKeys(for_device) => {
                let device = for_device.device.parse()?;
                let upload = for_device.upload.unwrap_or_default();
                let key = self.idempotency_key();
                let count = self
                    .transact(|tx| {
                        let upload = upload.clone();
                        async move { core::upload_one_time_keys(&tx, device, &upload, &key).await }
                    })
                    .await?;
                Ok(Resp::KeysUploaded(count))
            }
            Req::FetchQueue(for_device) => {
                let device = for_device.device.parse()?;
                let fetch = for_device.fetch.unwrap_or_default();
                let now = self.inner.clock.now_ms();
                let quarantined = self.quarantined();
                let fetched = self
                    .inner
                    .db
                    .transact(|tx| {
                        let fetch = fetch.clone();
                        let quarantined = &quarantined;
                        async move {
                            core::fetch_and_ack(&tx, local, device, &fetch, quarantined, now).await
                        }
                    })
                    .await;
                match fetched {
                    Ok(outcome) => {
                        let (batch, effects) = outcome?;
                        self.apply(effects);
                        Ok(Resp::Queue(batch))
                    }
                    // Anything of this device's queue that does not decode (an entry, the log
                    // entry it references, the envelope there) makes the queue unreadable.
                    Err(error @ StoreError::Corrupt { .. }) => {
                        self.quarantine(device, &error).await;
                        Err(core::quarantined_refusal(device))
                    }
                    Err(error) => Err(store_failure(error)),
                }
            }
            Req::Receipts(receipts) => {
                let count = receipts.receipts.len() as u32;
                let now = self.inner.clock.now_ms();
                self.transact(|tx| {
                    let receipts = receipts.clone();
                    async move { core::apply_forwarded_receipts(&tx, local, &receipts, now).await }
                })
                .await?;
                Ok(Resp::ReceiptsStored(wire::OneTimeKeyCount {
                    remaining: count,
                    fallback_key: wire::FallbackKeyState::Unknown as i32,
                    cached: false,
                }))
            }
            Req::RequestLink(request) => {
                let now = self.inner.clock.now_ms();
                let status = self
                    .transact(|tx| {
                        let request = request.clone();
                        async move { linking::request_link(&tx, local, &request, now).await }
                    })
                    .await?;
                Ok(Resp::LinkStatus(status))
            }
            Req::Blob(request) => self.blob_request(request).await.map(Resp::Blob),
            Req::Devices(for_device) => {
                let device = for_device.device.parse()?;
                let command = for_device.devices.unwrap_or_default();
                let now = self.inner.clock.now_ms();
                let key = self.idempotency_key();
                // Drawn once per request, outside the transaction: a retried commit opens the
                // same pairing.
                let secret = rand::random();
                let answer = self
                    .transact(|tx| {
                        let command = command.clone();
                        async move {
                            linking::device_command(&tx, local, device, &command, secret, &key, now)
                                .await
                        }
                    })
                    .await?;
                Ok(match answer {
                    linking::Answer::Pairing(pairing) => Resp::Pairing(pairing),
                    linking::Answer::LinkRequests(requests) => Resp::LinkRequests(requests),
                    linking::Answer::Devices(devices) => Resp::Devices(devices),
                })
            }
            Req::Group(for_group) => match self.group_command(for_group).await? {
                groups::Answer::Group(info) => Ok(Resp::Group(info)),
                groups::Answer::Groups(list) => Ok(Resp::Groups(list)),
            },
            Req::GroupMembers(group) => {
                if self.inner.writer != local {
                    return Err(ProtoError::new(
                        ErrorCode::Unavailable,
                        "this region is not the directory writer",
                    ));
                }
                let id = GroupId(group.group);
                // Remembered before the read: a change committing meanwhile tells this asker
                // (which refuses an answer older than the change), never misses it.
                self.record_group_asker(id, RegionId(group.region));
                let info = self
                    .transact(|tx| async move {
                        let info = groups::group_info(&tx, id, true).await?;
                        Ok(match info {
                            Some(info) => Ok((info, Effects::default())),
                            None => Err(ProtoError::new(
                                ErrorCode::UnknownGroup,
                                format!("unknown group {id}"),
                            )),
                        })
                    })
                    .await?;
                self.record_group_asker(id, RegionId(group.region));
                Ok(Resp::Group(info))
            }
            Req::GroupVersion(changed) => {
                let group = GroupId(changed.group);
                let now_ms = self.inner.clock.now_ms();
                lock(&self.inner.groups).remove(&group);
                self.inner.group_lease.changed(now_ms);
                let mut floors = lock(&self.inner.group_floors);
                let floor = floors
                    .peek(&group, now_ms)
                    .copied()
                    .unwrap_or(0)
                    .max(changed.version);
                floors.insert(group, floor, now_ms);
                Ok(Resp::GroupDropped(changed))
            }
            Req::Subscribe(_) => Err(ProtoError::invalid("subscribe opens its own stream")),
            Req::PresencePrivacy(for_device) => self
                .presence_privacy(for_device)
                .await
                .map(Resp::PresencePrivacy),
            Req::DirectoryChanges(ask) => {
                if self.inner.writer != local {
                    return Err(ProtoError::new(
                        ErrorCode::Unavailable,
                        "this region is not the directory writer: ask the writer for changes",
                    ));
                }
                // Remembered before the logs are read: a group change committed after that
                // read (and so missing from the answer) then tells this region, or waits out
                // the lease the answer gives.
                self.record_replica_reader(RegionId(ask.region));
                directory_replica::changes(&self.inner.db, &ask)
                    .await
                    .map(Resp::DirectoryChanges)
            }
            Req::ImportAccount(part) => self.import_account(&part).await.map(Resp::AccountImported),
            Req::MoveAccountHome(ask) => self.move_account_home(&ask).await.map(Resp::Account),
            Req::MoveHome(_) => Err(ProtoError::new(
                ErrorCode::UnsupportedRequest,
                "a home move is asked on its own stream of an internal connection",
            )),
            // Served on its own stream, where the connection's certificate is known.
            Req::HandOver(_) => Err(ProtoError::new(
                ErrorCode::UnsupportedRequest,
                "a handover is asked on its own stream of an internal connection",
            )),
            Req::Block(for_device) => {
                let device = for_device.device.parse()?;
                let request = for_device.block.unwrap_or_default();
                self.block(device.account, &request)
                    .await
                    .map(Resp::Blocked)
            }
            Req::Push(for_device) => {
                let device = for_device.device.parse()?;
                let request = for_device.push.unwrap_or_default();
                self.inner
                    .pusher
                    .set(&self.inner.db, device, &request)
                    .await
                    .map(Resp::Push)
            }
            Req::StoreCensus(request) => {
                if self.inner.writer != local {
                    return Err(ProtoError::new(
                        ErrorCode::Unavailable,
                        "this region is not the directory writer",
                    ));
                }
                let now = self.inner.clock.now_ms();
                let census = self
                    .transact(|tx| {
                        let request = request.clone();
                        async move { core::store_census(&tx, &request, now).await }
                    })
                    .await?;
                if let Some(claim) = &request.claim
                    && census.store_id == claim.store_id
                {
                    tracing::info!(
                        region = request.region,
                        accounts_homed = census.accounts_homed,
                        "a region registered its store"
                    );
                }
                Ok(Resp::StoreCensus(census))
            }
        }
    }

    /// Commits `envelope` in a retried transaction ([`core::commit_envelope`]) and performs its
    /// effects.
    async fn commit(
        &self,
        envelope: &wire::Envelope,
        sender_region: RegionId,
        group: Option<&GroupMembership>,
        quarantined: &BTreeSet<DeviceAddress>,
        now_ms: u64,
    ) -> Result<CommitDecision, ProtoError> {
        let local = self.inner.region;
        let groups = self.group_source(group);
        self.transact(|tx| async move {
            core::commit_envelope(
                &tx,
                local,
                envelope,
                sender_region,
                groups,
                quarantined,
                now_ms,
            )
            .await
        })
        .await
    }

    /// Where a commit finds a group's membership: the writer reads its own store in the
    /// commit's transaction, another region uses what [`Self::group_membership`] found.
    fn group_source<'a>(&self, group: Option<&'a GroupMembership>) -> GroupSource<'a> {
        if self.inner.writer == self.inner.region {
            GroupSource::Directory
        } else {
            GroupSource::Known(group)
        }
    }

    /// The membership a group envelope is checked against, at a region that is not the
    /// directory writer (`None` at the writer, which reads it in the commit, and for a 1:1
    /// envelope): the cached one unless it is older than [`GROUP_CACHE_TTL_MS`] or than the
    /// version the envelope names, else the writer's answer, cached. A group the writer does
    /// not know is `UnknownGroup`; a writer that does not answer `DirectoryUnavailable`.
    async fn group_membership(
        &self,
        parsed: &wire::ParsedEnvelope,
    ) -> Result<Option<Arc<GroupMembership>>, ProtoError> {
        let Some(group) = parsed.group else {
            return Ok(None);
        };
        if self.inner.writer == self.inner.region {
            return Ok(None);
        }
        self.known_membership(group.group, group.version)
            .await
            .map(Some)
    }

    /// (A region that is not the directory writer) the cached membership of `group`, if it is
    /// at `version` or newer and has not outlived [`GROUP_CACHE_TTL_MS`].
    fn cached_membership(&self, group: GroupId, version: u64) -> Option<Arc<GroupMembership>> {
        lock(&self.inner.groups)
            .get(&group, self.inner.clock.now_ms())
            .filter(|known| known.version >= version)
            .cloned()
    }

    /// Whether this region checks group envelopes against its copy of the groups now (a region
    /// that is not the directory writer, under its lease: see [`directory_replica`]).
    pub fn checks_groups_against_its_copy(&self) -> bool {
        self.inner.writer != self.inner.region
            && self.inner.group_lease.holds(self.inner.clock.now_ms())
    }

    /// (A region that is not the directory writer) `group`'s membership from this region's copy
    /// of the groups, if the copy holds it at `version` or newer (and at the newest version the
    /// writer said exists) and the region's lease on the copy holds; `None` sends the caller to
    /// the writer.
    async fn replicated_membership(
        &self,
        group: GroupId,
        version: u64,
    ) -> Result<Option<Arc<GroupMembership>>, ProtoError> {
        let now_ms = self.inner.clock.now_ms();
        if !self.inner.group_lease.holds(now_ms) {
            return Ok(None);
        }
        let Some(replicated) = self
            .inner
            .db
            .transact(|tx| async move { directory::group_replica(&tx, group).await })
            .await
            .map_err(store_failure)?
        else {
            return Ok(None);
        };
        let floor = lock(&self.inner.group_floors)
            .peek(&group, now_ms)
            .copied()
            .unwrap_or(0);
        // Read after the lease was checked: a change heard of meanwhile ends the lease.
        if replicated.version < version.max(floor)
            || !self.inner.group_lease.holds(self.inner.clock.now_ms())
        {
            return Ok(None);
        }
        Ok(Some(Arc::new(GroupMembership {
            group,
            version: replicated.version,
            members: replicated.members.into_iter().collect(),
        })))
    }

    /// (A region that is not the directory writer) `group`'s membership at `version` or newer:
    /// the cached one (see [`Self::group_membership`]), else the writer's answer, cached.
    async fn known_membership(
        &self,
        group: GroupId,
        version: u64,
    ) -> Result<Arc<GroupMembership>, ProtoError> {
        if let Some(known) = self.cached_membership(group, version) {
            return Ok(known);
        }
        if let Some(replicated) = self.replicated_membership(group, version).await? {
            return Ok(replicated);
        }
        let now_ms = self.inner.clock.now_ms();
        let request = RegionRequest {
            body: Some(region_request::Body::GroupMembers(wire::AskGroupMembers {
                group: group.0,
                region: self.inner.region.0,
            })),
        };
        let membership = match self.to_writer(&request).await?.body {
            Some(region_response::Body::Group(info)) => {
                Arc::new(GroupMembership::from_info(&info)?)
            }
            Some(region_response::Body::Error(error)) => return Err(error.into()),
            _ => {
                return Err(ProtoError::new(
                    ErrorCode::Internal,
                    "unexpected directory answer",
                ));
            }
        };
        if membership.group != group {
            return Err(ProtoError::new(
                ErrorCode::Internal,
                "the directory writer answered another group",
            ));
        }
        let floor = lock(&self.inner.group_floors)
            .peek(&group, self.inner.clock.now_ms())
            .copied()
            .unwrap_or(0);
        if membership.version < floor {
            // Asked before a change and answered after it: the device's retry asks again.
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                format!("group {} changed while its members were asked", group),
            ));
        }
        let mut groups = lock(&self.inner.groups);
        // Answers can cross: a newer membership cached meanwhile stays.
        let keep = groups
            .peek(&group, now_ms)
            .filter(|cached| cached.version > membership.version)
            .cloned();
        let membership = keep.unwrap_or(membership);
        groups.insert(group, membership.clone(), now_ms);
        Ok(membership)
    }

    /// The answer to a commit: a region's outcome, or the refusal of an envelope for a device
    /// whose queue turned out unreadable (quarantined now).
    async fn commit_answer(
        &self,
        decision: CommitDecision,
    ) -> Result<wire::SendOutcome, ProtoError> {
        match decision {
            CommitDecision::Answer(outcome) => Ok(outcome),
            CommitDecision::RecipientQueueUnreadable { device, error } => {
                self.quarantine(device, &error).await;
                Err(core::quarantined_refusal(device))
            }
        }
    }

    /// How long an early envelope waits in its chat's lane for its predecessor, in ms (the
    /// default is [`lanes::HOLD_MS_MAX`], the most allowed). The simulation draws it, so that
    /// reordered envelopes also reach the chat log's own check.
    pub fn set_lane_hold_ms(&self, hold_ms: u64) {
        lock(&self.inner.lanes).set_hold_ms(hold_ms);
    }

    /// Commits an envelope through its chat's lane: it waits for the lane's turn (and for its
    /// predecessor from the same device, a bounded while), then commits in one transaction with
    /// whatever else of the chat is ready.
    async fn commit_in_lane(
        &self,
        envelope: wire::Envelope,
        sender_region: RegionId,
    ) -> Result<CommitDecision, ProtoError> {
        let parsed = envelope.parse()?;
        // Asked before the lane: a lane never waits on the directory writer.
        let group = self.group_membership(&parsed).await?;
        let bytes = envelope.encoded_len();
        let ticket = self.inner.next_ticket.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        let waiter = LaneWaiter {
            envelope,
            sender: parsed.sender,
            sender_seq: parsed.sender_seq,
            sender_region,
            group,
            answer,
        };
        lock(&self.inner.lane_waiters).insert(ticket, waiter);
        let arrival = lock(&self.inner.lanes).handle_arrival(
            parsed.chat,
            ticket,
            parsed.sender,
            parsed.sender_seq,
            parsed.group.map(|group| group.prev_seq),
            bytes,
            self.inner.clock.now_ms(),
        );
        match arrival {
            Arrival::Full => {
                lock(&self.inner.lane_waiters).remove(&ticket);
                return Err(ProtoError::new(
                    ErrorCode::Overloaded,
                    format!(
                        "chat {} has {} envelopes waiting here; retry later",
                        parsed.chat,
                        lanes::LANE_ENVELOPES_MAX
                    ),
                )
                .with_retry_after_ms(lanes::HOLD_MS_MAX));
            }
            Arrival::Start => {
                let waker = Arc::new(Notify::new());
                lock(&self.inner.lane_wakers).insert(parsed.chat, waker.clone());
                tokio::spawn(self.clone().run_lane(parsed.chat, waker));
            }
            Arrival::Queued => {
                if let Some(waker) = lock(&self.inner.lane_wakers).get(&parsed.chat) {
                    waker.notify_one();
                }
            }
        }
        answered.await.map_err(|_| {
            ProtoError::new(ErrorCode::Internal, "the chat's lane stopped; retry later")
        })?
    }

    /// Runs the lane of `chat` until nothing waits in it.
    async fn run_lane(self, chat: ChatId, waker: Arc<Notify>) {
        loop {
            let poll = lock(&self.inner.lanes).poll(chat, self.inner.clock.now_ms());
            match poll {
                LanePoll::Idle => {
                    let mut wakers = lock(&self.inner.lane_wakers);
                    if wakers
                        .get(&chat)
                        .is_some_and(|current| Arc::ptr_eq(current, &waker))
                    {
                        wakers.remove(&chat);
                    }
                    return;
                }
                LanePoll::Lookup(sender) => {
                    let last = self
                        .inner
                        .db
                        .transact(|tx| async move {
                            fdb_layers::chat_log::last_sender_seq(&tx, chat, sender).await
                        })
                        .await;
                    let mut lanes = lock(&self.inner.lanes);
                    match last {
                        Ok(last) => lanes.handle_lookup(chat, sender, last),
                        Err(error) => {
                            tracing::warn!(%error, %chat, %sender, "cannot read a sender's last number; not holding its envelopes");
                            lanes.handle_lookup_failed(chat, sender);
                        }
                    }
                }
                LanePoll::WaitUntil(at_ms) => {
                    let wait = at_ms.saturating_sub(self.inner.clock.now_ms());
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                        () = waker.notified() => {}
                    }
                }
                LanePoll::Batch(tickets) => self.commit_batch(chat, tickets).await,
            }
        }
    }

    /// Commits the envelopes of `tickets`, in order, in one transaction, and answers each.
    async fn commit_batch(&self, chat: ChatId, tickets: Vec<Ticket>) {
        let waiters: Vec<LaneWaiter> = {
            let mut waiting = lock(&self.inner.lane_waiters);
            tickets
                .iter()
                .filter_map(|ticket| waiting.remove(ticket))
                .collect()
        };
        let local = self.inner.region;
        let quarantined = self.quarantined();
        let now = self.inner.clock.now_ms();
        let batch: Vec<(&wire::Envelope, RegionId, GroupSource<'_>)> = waiters
            .iter()
            .map(|waiter| {
                let groups = self.group_source(waiter.group.as_deref());
                (&waiter.envelope, waiter.sender_region, groups)
            })
            .collect();
        let committed = self
            .inner
            .db
            .transact(|tx| {
                let batch = batch.clone();
                let quarantined = &quarantined;
                async move {
                    let mut decisions = Vec::with_capacity(batch.len());
                    let mut effects = Effects::default();
                    // The batch's envelopes reach each recipient device as one queue entry.
                    let mut fan_out = core::FanOut::default();
                    for (envelope, sender_region, groups) in batch {
                        match core::commit_envelope_into(
                            &tx,
                            local,
                            envelope,
                            sender_region,
                            groups,
                            quarantined,
                            now,
                            &mut fan_out,
                        )
                        .await?
                        {
                            Ok((decision, more)) => {
                                effects.merge(more);
                                decisions.push(Ok(decision));
                            }
                            Err(refusal) => decisions.push(Err(refusal)),
                        }
                    }
                    fan_out.write(&tx, now, &mut effects).await?;
                    Ok((decisions, effects))
                }
            })
            .await;
        let mut outcomes = Vec::with_capacity(waiters.len());
        match committed {
            Ok((decisions, effects)) => {
                self.apply(effects);
                for (waiter, decision) in waiters.into_iter().zip(decisions) {
                    outcomes.push((waiter.sender, waiter.sender_seq, lane_outcome(&decision)));
                    let _ = waiter.answer.send(decision);
                }
            }
            Err(error) => {
                let refusal = store_failure(error);
                for waiter in waiters {
                    let _ = waiter.answer.send(Err(refusal.clone()));
                }
            }
        }
        lock(&self.inner.lanes).handle_committed(chat, &outcomes);
    }

    /// The quarantined devices now.
    fn quarantined(&self) -> BTreeSet<DeviceAddress> {
        self.inner
            .quarantined
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Quarantines `device`, whose queue could not be read: in memory at once, in the store
    /// as well as the store allows.
    async fn quarantine(&self, device: DeviceAddress, error: &StoreError) {
        let new = self
            .inner
            .quarantined
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(device);
        if !new {
            return;
        }
        tracing::error!(
            %device,
            %error,
            "the queue of device {device} cannot be read: quarantined, nothing is accepted for it until an operator repairs the store (relayd admin check-store)"
        );
        let record = QuarantineRecord {
            since_ms: self.inner.clock.now_ms(),
            reason: error.to_string(),
        };
        let recorded = self
            .inner
            .db
            .transact(|tx| {
                let record = record.clone();
                async move { quarantine::put(&tx, device, &record).await }
            })
            .await;
        if let Err(error) = recorded {
            tracing::error!(%device, %error, "could not record the quarantine in the store; it holds until this process stops");
        }
    }

    /// Loads the quarantined devices recorded in the store.
    async fn load_quarantine(&self) {
        let mut after = None;
        loop {
            let page = self
                .inner
                .db
                .transact(|tx| async move {
                    quarantine::list(&tx, after, QUARANTINE_LOAD_DEVICES_PER_TRANSACTION).await
                })
                .await;
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::error!(%error, "cannot read the quarantined devices");
                    return;
                }
            };
            let Some(&(last, _)) = page.last() else {
                return;
            };
            let mut quarantined = self
                .inner
                .quarantined
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            for (device, record) in page {
                tracing::warn!(%device, since_ms = record.since_ms, reason = %record.reason, "device quarantined (its queue cannot be read); repair with relayd admin repair-store");
                quarantined.insert(device);
            }
            after = Some(last);
        }
    }

    /// A new idempotency key for one request: issued before its transaction, so every retry of
    /// that transaction carries it.
    fn idempotency_key(&self) -> IdempotencyKey {
        let counter = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.inner.key_prefix.to_be_bytes());
        nonce[8..].copy_from_slice(&counter.to_be_bytes());
        IdempotencyKey::new(self.inner.clock.now_ms(), nonce)
    }

    /// Runs a core function in a retried transaction, then performs its effects.
    /// The planted bug [`PlantedBug::AckBeforeCommit`]: answers with what the commit would
    /// return, read in a transaction that is never committed, and commits for real
    /// [`PLANTED_COMMIT_DELAY_MS`] later (lost if the process dies in between).
    async fn commit_late(
        &self,
        envelope: relay_proto::wire::Envelope,
        sender_region: RegionId,
        now: u64,
    ) -> Result<region_response::Body, ProtoError> {
        let local = self.inner.region;
        let quarantined = self.quarantined();
        let group = self.group_membership(&envelope.parse()?).await?;
        let groups = self.group_source(group.as_deref());
        let peek = self.inner.db.create_transaction().map_err(store_failure)?;
        let (decision, _) = core::commit_envelope(
            &peek,
            local,
            &envelope,
            sender_region,
            groups,
            &quarantined,
            now,
        )
        .await
        .map_err(store_failure)??;
        drop(peek);
        let outcome = self.commit_answer(decision).await?;
        let service = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(PLANTED_COMMIT_DELAY_MS)).await;
            let committed = service
                .commit(
                    &envelope,
                    sender_region,
                    group.as_deref(),
                    &quarantined,
                    now,
                )
                .await;
            if let Err(error) = committed {
                tracing::warn!(%error, "planted bug: a late commit failed");
            }
        });
        Ok(region_response::Body::Committed(outcome))
    }

    async fn transact<T, F, Fut>(&self, body: F) -> Result<T, ProtoError>
    where
        F: FnMut(fdb_layers::Transaction) -> Fut,
        Fut: Future<Output = core::Outcome<T>>,
    {
        let (value, effects) = self
            .inner
            .db
            .transact(body)
            .await
            .map_err(store_failure)??;
        self.apply(effects);
        Ok(value)
    }

    fn apply(&self, effects: Effects) {
        if effects.outbox_pushed {
            self.inner.outbox_wake.notify_one();
        }
        if effects.notify.is_empty() {
            return;
        }
        let subscriptions = self
            .inner
            .subscriptions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut pushed = effects.pushed;
        for (device, latest_queue_seq) in effects.notify {
            let entries = pushed
                .remove(&device)
                .map(|mut pushed| pushed.take())
                .unwrap_or_default();
            let Some(streams) = subscriptions.get(&device) else {
                self.inner
                    .pusher
                    .handle_unconnected(device, std::time::Instant::now());
                continue;
            };
            let push = DeviceQueueAvailable {
                device: device.into(),
                latest_queue_seq,
                entries,
            };
            for sender in streams.values() {
                if sender
                    .try_send(region_response::Body::QueueAvailable(push.clone()))
                    .is_err()
                {
                    tracing::warn!(%device, "edge subscription is full; dropping a push hint");
                }
            }
        }
    }

    async fn register(&self, register: wire::Register) -> Result<wire::Registered, ProtoError> {
        wire::validate_account_name(&register.name)?;
        core::check_keys(
            &register.identity_key,
            &register.signing_key,
            &register.one_time_keys,
        )?;
        if let Some(key) = &register.fallback_key {
            core::check_fallback_key(&register.identity_key, &register.signing_key, key)?;
        }
        let local = self.inner.region;
        if register.registration_token.len() > relay_proto::limits::REGISTRATION_TOKEN_BYTES_MAX {
            return Err(ProtoError::new(
                ErrorCode::Forbidden,
                "the registration token is longer than any token issued",
            ));
        }
        let record = if self.inner.writer == local {
            self.create_account(&register.name, local, &register.registration_token)
                .await?
        } else {
            let request = RegionRequest {
                body: Some(region_request::Body::CreateAccount(wire::CreateAccount {
                    name: register.name.clone(),
                    home_region: local.0,
                    registration_token: register.registration_token.clone(),
                })),
            };
            match self.to_writer(&request).await?.body {
                Some(region_response::Body::Account(info)) => record_of(&info),
                Some(region_response::Body::Error(error)) => return Err(error.into()),
                _ => {
                    return Err(ProtoError::new(
                        ErrorCode::Internal,
                        "unexpected directory answer",
                    ));
                }
            }
        };
        let key = self.idempotency_key();
        self.transact(|tx| {
            let record = record.clone();
            let register = register.clone();
            async move { core::register_device(&tx, &record, &register, &key).await }
        })
        .await
    }

    /// Creates an account at the directory writer. Idempotent for a retried registration: an
    /// existing name homed in the same region is returned (consuming no token); the home region
    /// refuses it if the account already has a device. When this writer requires registration
    /// tokens, a new account takes one use of `token` in the same transaction.
    async fn create_account(
        &self,
        name: &str,
        home: RegionId,
        token: &str,
    ) -> Result<directory::AccountRecord, ProtoError> {
        wire::validate_account_name(name)?;
        let name = name.to_owned();
        let key = self.idempotency_key();
        let tokens_required = self.inner.tokens_required;
        let now_ms = self.inner.clock.now_ms();
        self.transact(|tx| {
            let name = name.clone();
            async move {
                if let Some(existing) = directory::account_by_name(&tx, &name).await? {
                    if existing.home_region == home {
                        return Ok(Ok((existing, Effects::default())));
                    }
                    return Ok(Err(ProtoError::new(
                        ErrorCode::NameTaken,
                        format!("the name {name} is taken"),
                    )));
                }
                if tokens_required {
                    if token.is_empty() {
                        return Ok(Err(ProtoError::new(
                            ErrorCode::Forbidden,
                            "this deployment requires a registration token (ask its operator \
                             for one: relayd admin token)",
                        )));
                    }
                    match fdb_layers::tokens::consume(&tx, token, now_ms).await? {
                        Ok(_) => {}
                        Err(fdb_layers::tokens::TokenRefusal::Unknown) => {
                            return Ok(Err(ProtoError::new(
                                ErrorCode::Forbidden,
                                "the registration token is not valid (never issued, or used up)",
                            )));
                        }
                        Err(fdb_layers::tokens::TokenRefusal::Expired) => {
                            return Ok(Err(ProtoError::new(
                                ErrorCode::Forbidden,
                                "the registration token expired",
                            )));
                        }
                    }
                }
                match directory::create_account(&tx, &name, home, &key).await? {
                    Ok(record) => Ok(Ok((record, Effects::default()))),
                    Err(_) => Ok(Err(ProtoError::new(
                        ErrorCode::NameTaken,
                        format!("the name {name} is taken"),
                    ))),
                }
            }
        })
        .await
    }

    /// Blocks or unblocks an account for `blocker` (homed here), then lists its blocks.
    async fn block(
        &self,
        blocker: AccountId,
        request: &wire::SetBlock,
    ) -> Result<wire::BlockedAccounts, ProtoError> {
        let action = request.validate()?;
        let target = AccountId(request.account);
        if action != wire::BlockAction::List && target == blocker {
            return Err(ProtoError::invalid("an account cannot block itself"));
        }
        let answer = self
            .inner
            .db
            .transact(|tx| async move {
                match action {
                    wire::BlockAction::List => {}
                    wire::BlockAction::Block => {
                        if fdb_layers::blocks::block(&tx, blocker, target).await?
                            == fdb_layers::blocks::Blocked::Full
                        {
                            return Ok(Err(()));
                        }
                    }
                    wire::BlockAction::Unblock => fdb_layers::blocks::unblock(&tx, blocker, target),
                }
                Ok(Ok(fdb_layers::blocks::list(&tx, blocker).await?))
            })
            .await
            .map_err(store_failure)?;
        match answer {
            Ok(accounts) => Ok(wire::BlockedAccounts {
                accounts: accounts.into_iter().map(|account| account.0).collect(),
            }),
            Err(()) => Err(ProtoError::new(
                ErrorCode::TooLarge,
                format!(
                    "at most {} accounts can be blocked",
                    fdb_layers::limits::BLOCKED_ACCOUNTS_MAX
                ),
            )),
        }
    }

    /// Issues registration tokens at the directory writer: fresh random tokens, stored by their
    /// SHA-256 only and returned once.
    async fn issue_tokens(
        &self,
        issue: &wire::IssueRegistrationTokens,
    ) -> Result<wire::RegistrationTokens, ProtoError> {
        use relay_proto::limits::{
            REGISTRATION_TOKEN_TTL_MS_MAX, REGISTRATION_TOKEN_USES_MAX,
            REGISTRATION_TOKENS_PER_REQUEST_MAX,
        };
        if !(1..=REGISTRATION_TOKENS_PER_REQUEST_MAX).contains(&issue.count)
            || !(1..=REGISTRATION_TOKEN_USES_MAX).contains(&issue.uses)
            || !(1..=REGISTRATION_TOKEN_TTL_MS_MAX).contains(&issue.ttl_ms)
        {
            return Err(ProtoError::invalid(format!(
                "tokens: 1 to {REGISTRATION_TOKENS_PER_REQUEST_MAX} at once, 1 to \
                 {REGISTRATION_TOKEN_USES_MAX} uses each, valid 1 ms to a year"
            )));
        }
        let now_ms = self.inner.clock.now_ms();
        let expires_at_ms = now_ms.saturating_add(issue.ttl_ms);
        let tokens: Vec<String> = (0..issue.count).map(|_| new_registration_token()).collect();
        let record = fdb_layers::tokens::TokenRecord {
            uses_left: issue.uses,
            issued_at_ms: now_ms,
            expires_at_ms,
        };
        self.inner
            .db
            .transact(|tx| {
                let tokens = tokens.clone();
                async move {
                    for token in &tokens {
                        fdb_layers::tokens::issue(&tx, token, record)?;
                    }
                    Ok(())
                }
            })
            .await
            .map_err(store_failure)?;
        tracing::info!(
            count = issue.count,
            uses = issue.uses,
            expires_at_ms,
            "issued registration tokens"
        );
        Ok(wire::RegistrationTokens {
            tokens,
            uses: issue.uses,
            expires_at_ms,
        })
    }

    /// Runs a group command at the directory writer ([`groups::group_command`], one
    /// transaction), or forwards it there unchanged from any other region, as account creation
    /// is. The command is checked here first, so a malformed one never travels.
    async fn group_command(&self, request: wire::ForGroup) -> Result<groups::Answer, ProtoError> {
        let action = request.command.parse()?;
        if request.account == 0 {
            return Err(ProtoError::invalid("a group command names no account"));
        }
        if self.inner.writer != self.inner.region {
            let forward = RegionRequest {
                body: Some(region_request::Body::Group(request)),
            };
            return match self.to_writer(&forward).await?.body {
                Some(region_response::Body::Group(info)) => Ok(groups::Answer::Group(info)),
                Some(region_response::Body::Groups(list)) => Ok(groups::Answer::Groups(list)),
                Some(region_response::Body::Error(error)) => Err(error.into()),
                _ => Err(ProtoError::new(
                    ErrorCode::Internal,
                    "unexpected directory answer",
                )),
            };
        }
        let actor = AccountId(request.account);
        let key = self.idempotency_key();
        let changes_members = matches!(
            action,
            wire::GroupAction::Add { .. }
                | wire::GroupAction::Remove { .. }
                | wire::GroupAction::Leave { .. }
        );
        let answer = self
            .transact(|tx| {
                let action = action.clone();
                async move { groups::group_command(&tx, actor, &action, &key).await }
            })
            .await?;
        if changes_members && let groups::Answer::Group(info) = &answer {
            // A leave answers only the group's id; the others its new version.
            let version = (info.version > 0).then_some(info.version);
            self.group_changed(GroupId(info.group), version).await?;
        }
        Ok(answer)
    }

    /// (Directory writer) remembers that `region` polled the change logs now.
    fn record_replica_reader(&self, region: RegionId) {
        let now_ms = self.inner.clock.now_ms();
        let mut readers = lock(&self.inner.replica_readers);
        if readers.len() >= REPLICA_READERS_MAX && !readers.contains_key(&region) {
            readers.retain(|_, at| now_ms < at.saturating_add(GROUP_CACHE_TTL_MS));
        }
        if readers.len() < REPLICA_READERS_MAX || readers.contains_key(&region) {
            readers.insert(region, now_ms);
        } else {
            // Not remembered: `group_changed` waits every copy out for a while (see there).
            self.inner
                .replica_reader_forgotten_at_ms
                .store(now_ms, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// (Directory writer) remembers that `region` asked for `group`'s membership now.
    fn record_group_asker(&self, group: GroupId, region: RegionId) {
        let now_ms = self.inner.clock.now_ms();
        let mut askers = lock(&self.inner.group_askers);
        if askers.len() >= GROUP_ASKERS_MAX && !askers.contains_key(&group) {
            askers.retain(|_, regions| {
                regions.retain(|_, at| now_ms < at.saturating_add(GROUP_CACHE_TTL_MS));
                !regions.is_empty()
            });
        }
        if askers.len() < GROUP_ASKERS_MAX || askers.contains_key(&group) {
            askers.entry(group).or_default().insert(region, now_ms);
        }
        // Else the asker is not remembered; `group_changed` then waits for every cache to
        // expire (see there).
    }

    /// (Directory writer) `group`'s members changed (committed): every region that may
    /// hold its older membership drops it before the change is acknowledged, so that no
    /// region accepts an envelope for a former member afterwards. A region that does not
    /// answer in time is waited out: the change is acknowledged once its cache expired.
    /// `version` is the group's new version when the command's answer carried it (else read).
    async fn group_changed(&self, group: GroupId, version: Option<u64>) -> Result<(), ProtoError> {
        let version = match version {
            Some(version) => version,
            None => {
                self.transact(|tx| async move {
                    Ok(Ok((
                        directory::group_version(&tx, group).await?,
                        Effects::default(),
                    )))
                })
                .await?
            }
        };
        let now_ms = self.inner.clock.now_ms();
        let (mut askers, mut forgotten) = {
            let mut all = lock(&self.inner.group_askers);
            let askers = all.remove(&group).unwrap_or_default();
            (askers, all.len() >= GROUP_ASKERS_MAX)
        };
        // Every region that polled the logs lately may check envelopes against its copy of the
        // groups: it is told too, or waited out.
        for (&region, &answered_at_ms) in lock(&self.inner.replica_readers).iter() {
            let at = askers.entry(region).or_insert(answered_at_ms);
            *at = (*at).max(answered_at_ms);
        }
        let reader_forgotten_at_ms = self
            .inner
            .replica_reader_forgotten_at_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if reader_forgotten_at_ms > 0
            && now_ms < reader_forgotten_at_ms.saturating_add(GROUP_CACHE_TTL_MS)
        {
            forgotten = true;
        }
        let mut wait_until_ms = 0;
        if now_ms < self.inner.started_at_ms.saturating_add(GROUP_CACHE_TTL_MS) {
            // Regions may have asked a run of this writer before its restart.
            wait_until_ms = self.inner.started_at_ms + GROUP_CACHE_TTL_MS;
        }
        if forgotten {
            // The table was full, so some askers may not be in it.
            wait_until_ms = wait_until_ms.max(now_ms + GROUP_CACHE_TTL_MS);
        }
        let request = RegionRequest {
            body: Some(region_request::Body::GroupVersion(wire::GroupVersion {
                group: group.0,
                version,
            })),
        };
        let mut told = tokio::task::JoinSet::new();
        for (region, asked_at_ms) in askers {
            if now_ms >= asked_at_ms.saturating_add(GROUP_CACHE_TTL_MS) {
                continue;
            }
            let service = self.clone();
            let request = request.clone();
            told.spawn(async move {
                let timeout = Duration::from_millis(REGION_PEER_REQUEST_TIMEOUT_MS);
                let answer = tokio::time::timeout(
                    timeout,
                    service
                        .inner
                        .peers
                        .request::<_, RegionResponse>(region.0, &request, timeout),
                )
                .await;
                let dropped = matches!(
                    answer,
                    Ok(Ok(RegionResponse {
                        body: Some(region_response::Body::GroupDropped(_))
                    }))
                );
                (region, asked_at_ms, dropped)
            });
        }
        while let Some(joined) = told.join_next().await {
            if let Ok((region, asked_at_ms, dropped)) = joined
                && !dropped
            {
                tracing::warn!(
                    %region,
                    group = group.0,
                    "a region did not drop a changed group's membership; waiting for its cache \
                     to expire"
                );
                wait_until_ms = wait_until_ms.max(asked_at_ms.saturating_add(GROUP_CACHE_TTL_MS));
            }
        }
        let now_ms = self.inner.clock.now_ms();
        if wait_until_ms > now_ms {
            tokio::time::sleep(Duration::from_millis(wait_until_ms - now_ms)).await;
        }
        Ok(())
    }

    /// Resolves an account locally (the writer, or this replica's cache), else asks the writer
    /// and caches the answer. A cached copy of an account homed elsewhere answers at once, and
    /// is asked of the writer again in the background once it is
    /// [`ACCOUNT_REFRESH_INTERVAL_MS`] old. An account this region moved away is answered at
    /// its new home even while the local copy still names this region.
    async fn lookup<F, Fut>(
        &self,
        local_read: F,
        forward: region_request::Body,
    ) -> Result<wire::AccountInfo, ProtoError>
    where
        F: FnMut(fdb_layers::Transaction) -> Fut,
        Fut: Future<Output = Result<Option<directory::AccountRecord>, StoreError>>,
    {
        let found = self
            .inner
            .db
            .transact(local_read)
            .await
            .map_err(store_failure)?;
        if let Some(record) = found {
            let mut info = core::account_info(&record);
            // An account this region moved away whose new record it could not write yet (a
            // failing disk; the replica brings it later): the move is known here all the same,
            // and an edge following the move asks here.
            let moved = match lock(&self.inner.moves.away).get(&record.id) {
                Some(moves::Away::Moved(to)) if record.home_region == self.inner.region => {
                    Some(*to)
                }
                _ => None,
            };
            if let Some(to) = moved {
                info.region = to.0;
            }
            if self.inner.writer != self.inner.region
                && (record.home_region != self.inner.region || moved.is_some())
            {
                self.refresh_in_background(record.id);
            }
            return Ok(info);
        }
        if self.inner.writer == self.inner.region {
            return Err(ProtoError::new(
                ErrorCode::UnknownAccount,
                "no such account",
            ));
        }
        let request = RegionRequest {
            body: Some(forward),
        };
        match self.to_writer(&request).await?.body {
            Some(region_response::Body::Account(info)) => {
                self.store_from_writer(&info).await?;
                Ok(info)
            }
            Some(region_response::Body::Error(error)) => Err(error.into()),
            _ => Err(ProtoError::new(
                ErrorCode::Internal,
                "unexpected directory answer",
            )),
        }
    }

    /// Caches an account as the directory writer answered it (a copy with a newer epoch stays),
    /// noting when.
    async fn store_from_writer(&self, info: &wire::AccountInfo) -> Result<(), ProtoError> {
        let record = record_of(info);
        self.inner
            .db
            .transact(|tx| {
                let record = record.clone();
                async move { directory::put_account(&tx, &record).await }
            })
            .await
            .map_err(store_failure)?;
        self.inner
            .refreshed
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(record.id, (), self.inner.clock.now_ms());
        Ok(())
    }

    /// Asks the directory writer for `account` again, in the background, unless it was asked
    /// within [`ACCOUNT_REFRESH_INTERVAL_MS`] or [`ACCOUNT_REFRESHES_IN_FLIGHT_MAX`] refreshes
    /// are under way (a later lookup asks then).
    fn refresh_in_background(&self, account: AccountId) {
        let now_ms = self.inner.clock.now_ms();
        let permit = {
            let mut refreshed = self
                .inner
                .refreshed
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if refreshed.peek(&account, now_ms).is_some() {
                return;
            }
            let Ok(permit) = self.inner.refreshes.clone().try_acquire_owned() else {
                return;
            };
            // Noted now, so the lookups meanwhile do not ask too; a failed refresh is tried
            // again an interval later.
            refreshed.insert(account, (), now_ms);
            permit
        };
        let service = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let request = RegionRequest {
                body: Some(region_request::Body::LookupAccount(wire::LookupAccount {
                    account: account.0,
                })),
            };
            let refreshed = match service.to_writer(&request).await.map(|answer| answer.body) {
                Ok(Some(region_response::Body::Account(info))) => {
                    service.store_from_writer(&info).await
                }
                Ok(Some(region_response::Body::Error(error))) => Err(error.into()),
                Ok(_) => Err(ProtoError::new(
                    ErrorCode::Internal,
                    "unexpected directory answer",
                )),
                Err(error) => Err(error),
            };
            if let Err(error) = refreshed {
                tracing::debug!(%account, %error, "could not refresh a cached account");
            }
        });
    }

    /// One request to the directory writer, answered within [`REGION_PEER_REQUEST_TIMEOUT_MS`]
    /// (connecting included), so the edge still hears from this region in time: a writer that
    /// cannot be reached or does not answer is `DirectoryUnavailable`.
    async fn to_writer(&self, request: &RegionRequest) -> Result<RegionResponse, ProtoError> {
        let writer = self.inner.writer;
        let timeout = Duration::from_millis(REGION_PEER_REQUEST_TIMEOUT_MS);
        let asked = tokio::time::timeout(
            timeout,
            self.inner.peers.request(writer.0, request, timeout),
        )
        .await;
        let problem = match asked {
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(error @ NetError::Frame(_))) => return Err(error.to_proto()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => {
                self.inner.peers.forget(writer.0).await;
                NetError::Timeout.to_string()
            }
        };
        tracing::warn!(%writer, %problem, "the directory writer did not answer");
        Err(ProtoError::new(
            ErrorCode::DirectoryUnavailable,
            format!("region {writer} did not answer"),
        ))
    }

    async fn serve_subscription(
        self,
        first: wire::Subscribe,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let stream_id = self.inner.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let (push_sender, mut pushes) = mpsc::channel(SUBSCRIPTION_PUSHES_MAX);
        lock(&self.inner.streams).insert(stream_id, push_sender.clone());
        let mut subscribed = 0;
        self.change_subscriptions(stream_id, &push_sender, &first, &mut subscribed);
        let writer = async {
            // The pushes waiting go out in one write, up to SUBSCRIPTION_WRITE_BYTES_MAX: quinn
            // keeps each write as a segment of the stream's send buffer and finds every packet's
            // bytes by scanning the unacknowledged segments from the oldest, so a presence change
            // told to thousands of watchers, one small write each, cost time quadratic in them.
            let mut bytes = Vec::new();
            while let Some(first) = pushes.recv().await {
                bytes.clear();
                let mut next = Some(first);
                while let Some(push) = next {
                    encode_frame_into(&RegionResponse { body: Some(push) }, &mut bytes);
                    next = (bytes.len() < SUBSCRIPTION_WRITE_BYTES_MAX)
                        .then(|| pushes.try_recv().ok())
                        .flatten();
                }
                if send.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        };
        let reader = async {
            // After the writer started: the first frame's watches may answer more updates
            // than the push channel holds.
            self.presence_signals(stream_id, &first).await;
            loop {
                match net::read_frame::<RegionRequest>(&mut recv).await {
                    Ok(Some(RegionRequest {
                        body: Some(region_request::Body::Subscribe(change)),
                    })) => {
                        self.change_subscriptions(
                            stream_id,
                            &push_sender,
                            &change,
                            &mut subscribed,
                        );
                        self.presence_signals(stream_id, &change).await;
                    }
                    Ok(Some(_)) => {
                        tracing::warn!("ignoring a non-subscribe frame on a subscription stream")
                    }
                    Ok(None) | Err(_) => return,
                }
            }
        };
        tokio::select! {
            () = writer => {}
            () = reader => {}
        }
        lock(&self.inner.streams).remove(&stream_id);
        lock(&self.inner.presence).handle_stream_closed(stream_id);
        let mut left = Vec::new();
        lock(&self.inner.subscriptions).retain(|device, streams| {
            if streams.remove(&stream_id).is_some() && streams.is_empty() {
                left.push(*device);
            }
            !streams.is_empty()
        });
        for device in &left {
            self.inner.pusher.handle_left(&self.inner.db, *device);
        }
        self.presence_changed(&[], &left);
    }

    /// Applies one `Subscribe` frame of stream `stream_id`, which has `subscribed` devices: at
    /// most [`SUBSCRIBED_DEVICES_PER_STREAM_MAX`], further adds are ignored (and logged; the
    /// devices still fetch on their own, they only miss the hints).
    fn change_subscriptions(
        &self,
        stream_id: u64,
        sender: &PushSender,
        change: &wire::Subscribe,
        subscribed: &mut usize,
    ) {
        let mut subscriptions = lock(&self.inner.subscriptions);
        let mut ignored = 0;
        let mut arrived = Vec::new();
        let mut left = Vec::new();
        for device in change.add.iter().filter_map(|device| device.parse().ok()) {
            let streams = subscriptions.entry(device).or_default();
            if streams.contains_key(&stream_id) {
                continue;
            }
            if *subscribed >= SUBSCRIBED_DEVICES_PER_STREAM_MAX {
                ignored += 1;
                if streams.is_empty() {
                    subscriptions.remove(&device);
                }
                continue;
            }
            if streams.is_empty() {
                arrived.push(device);
                self.inner.pusher.handle_connected(device);
            }
            streams.insert(stream_id, sender.clone());
            *subscribed += 1;
        }
        for device in change
            .remove
            .iter()
            .filter_map(|device| device.parse().ok())
        {
            if let Some(streams) = subscriptions.get_mut(&device)
                && streams.remove(&stream_id).is_some()
            {
                *subscribed -= 1;
                if streams.is_empty() {
                    subscriptions.remove(&device);
                    left.push(device);
                    self.inner.pusher.handle_left(&self.inner.db, device);
                }
            }
        }
        drop(subscriptions);
        self.presence_changed(&arrived, &left);
        if ignored > 0 {
            tracing::warn!(
                ignored,
                subscribed = *subscribed,
                "an edge subscribed more devices than one stream may hold; their pushes are dropped"
            );
        }
    }

    /// Devices of this region that connected (`arrived`) or left: their accounts' watchers are
    /// told, and an account whose last device left has its last-seen time stored (in the
    /// background; a failed write only leaves an older time for after a restart).
    fn presence_changed(&self, arrived: &[DeviceAddress], left: &[DeviceAddress]) {
        if arrived.is_empty() && left.is_empty() {
            return;
        }
        let now_ms = self.inner.clock.now_ms();
        let mut updates = Vec::new();
        let mut departures = Vec::new();
        {
            let mut board = lock(&self.inner.presence);
            for &device in arrived {
                updates.extend(board.handle_device_connected(device));
            }
            for &device in left {
                let (told, last_seen) = board.handle_device_left(device, now_ms);
                updates.extend(told);
                if let Some(last_seen_ms) = last_seen {
                    departures.push((device.account, last_seen_ms));
                }
            }
        }
        self.push_presence(updates);
        if departures.is_empty() {
            return;
        }
        let db = self.inner.db.clone();
        tokio::spawn(async move {
            let written = db
                .transact(|tx| {
                    let departures = departures.clone();
                    async move {
                        for (account, at_ms) in departures {
                            fdb_layers::presence::record_last_seen(&tx, account, at_ms)?;
                        }
                        Ok(())
                    }
                })
                .await;
            if let Err(error) = written {
                tracing::warn!(%error, "could not store last-seen times");
            }
        });
    }

    /// The presence watches and typing indicators of one `Subscribe` frame of stream
    /// `stream_id`, in order. A watch of an account not loaded yet reads its stored presence
    /// first, so this stream's later frames wait for that read (one snapshot read).
    async fn presence_signals(&self, stream_id: u64, change: &wire::Subscribe) {
        for watch in &change.watch {
            let Ok((watcher, account)) = watch.parse() else {
                tracing::warn!("ignoring a malformed presence watch");
                continue;
            };
            if !watch.watch {
                lock(&self.inner.presence).handle_unwatch(stream_id, watcher, account);
                continue;
            }
            let mut homed_here = true;
            if lock(&self.inner.presence).needs_load(account) {
                let local = self.inner.region;
                let loaded = self
                    .inner
                    .db
                    .transact(|tx| async move {
                        let home = directory::account_by_id(&tx, account).await?;
                        let record = fdb_layers::presence::read(&tx, account).await?;
                        Ok((home.is_some_and(|home| home.home_region == local), record))
                    })
                    .await;
                match loaded {
                    Ok((homed, record)) => {
                        homed_here = homed;
                        lock(&self.inner.presence).handle_loaded(account, &record);
                    }
                    Err(error) => {
                        // Not kept: the watcher sees `Unknown` and watches again later.
                        tracing::warn!(%error, %account, "could not read an account's presence");
                        homed_here = false;
                    }
                }
            }
            let update =
                lock(&self.inner.presence).handle_watch(stream_id, watcher, account, homed_here);
            self.push_presence(vec![update]);
        }
        for typing in &change.typing {
            let Ok(from) = typing.from.parse() else {
                tracing::warn!("ignoring a malformed typing indicator");
                continue;
            };
            if typing.group != 0 {
                self.group_typing(from, GroupId(typing.group), typing.typing)
                    .await;
                continue;
            }
            let devices = lock(&self.inner.presence).connected_devices(AccountId(typing.to));
            self.push_typing(devices, from, 0, typing.typing);
        }
    }

    /// A typing indicator of `from`'s in `group`'s chat: passed to the connected devices of the
    /// members homed here when `from`'s account is a member (else dropped, as a non-member sees
    /// nothing of a group). The writer reads the membership in its store; another region uses
    /// its cached membership (kept current by the writer's change notices) and, without one,
    /// asks the writer in a task of its own, so this stream's later frames never wait for
    /// another region, and passes the indicator on when the answer comes.
    async fn group_typing(&self, from: DeviceAddress, group: GroupId, typing: bool) {
        if self.inner.writer == self.inner.region {
            let found = self
                .inner
                .db
                .transact(|tx| async move { core::group_membership(&tx, group).await })
                .await;
            match found {
                Ok(Some(membership)) => self.push_group_typing(&membership, from, typing),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, %group, "could not read a group for typing"),
            }
            return;
        }
        if let Some(membership) = self.cached_membership(group, 0) {
            self.push_group_typing(&membership, from, typing);
            return;
        }
        let service = self.clone();
        tokio::spawn(async move {
            match service.known_membership(group, 0).await {
                Ok(membership) => service.push_group_typing(&membership, from, typing),
                Err(error) => tracing::debug!(%error, %group, "a group typing indicator dropped"),
            }
        });
    }

    /// Passes a group typing indicator to the connected devices of `membership`'s members
    /// homed here, when `from`'s account is a member.
    fn push_group_typing(&self, membership: &GroupMembership, from: DeviceAddress, typing: bool) {
        if !membership.members.contains(&from.account) {
            return;
        }
        let devices: Vec<DeviceAddress> = {
            let board = lock(&self.inner.presence);
            membership
                .members
                .iter()
                .flat_map(|&member| board.connected_devices(member))
                .collect()
        };
        self.push_typing(devices, from, membership.group.0, typing);
    }

    /// Pushes a typing notice of `from`'s (in `group`'s chat, or 1:1 with 0) to each of
    /// `devices` but `from` itself.
    fn push_typing(
        &self,
        devices: Vec<DeviceAddress>,
        from: DeviceAddress,
        group: u64,
        typing: bool,
    ) {
        let subscriptions = lock(&self.inner.subscriptions);
        for device in devices {
            if device == from {
                continue;
            }
            let notice = wire::TypingNotice {
                to: device.into(),
                from: from.into(),
                typing,
                group,
            };
            // Ephemeral: a full stream drops it, and the receiver's "typing…" expires.
            for sender in subscriptions
                .get(&device)
                .into_iter()
                .flat_map(BTreeMap::values)
            {
                let _ = sender.try_send(region_response::Body::Typing(notice));
            }
        }
    }

    /// Pushes presence updates to the streams of their watchers' edges.
    fn push_presence(&self, updates: Vec<presence::Update>) {
        if updates.is_empty() {
            return;
        }
        let streams = lock(&self.inner.streams);
        for update in updates {
            let Some(sender) = streams.get(&update.stream) else {
                continue;
            };
            let push = wire::PresenceUpdate {
                watcher: update.watcher.into(),
                info: update.info,
            };
            if sender
                .try_send(region_response::Body::Presence(push))
                .is_err()
            {
                tracing::warn!(watcher = %update.watcher, "edge subscription is full; dropping a presence update");
            }
        }
    }

    /// Reads or sets the presence privacy of `device`'s account (a device homed here).
    async fn presence_privacy(
        &self,
        for_device: wire::ForDevice,
    ) -> Result<wire::PresencePrivacy, ProtoError> {
        let device = for_device.device.parse()?;
        let account = device.account;
        let set = for_device
            .presence_privacy
            .and_then(|request| request.privacy);
        let Some(privacy) = set else {
            let record = self
                .inner
                .db
                .transact(|tx| async move { fdb_layers::presence::read(&tx, account).await })
                .await
                .map_err(store_failure)?;
            return Ok(record.privacy.unwrap_or_default());
        };
        privacy.validate()?;
        let mut privacy = privacy;
        privacy.contacts.sort_unstable();
        privacy.contacts.dedup();
        let stored = privacy.clone();
        self.inner
            .db
            .transact(|tx| {
                let stored = stored.clone();
                async move { fdb_layers::presence::set_privacy(&tx, account, &stored) }
            })
            .await
            .map_err(store_failure)?;
        let updates = lock(&self.inner.presence).handle_privacy(account, &privacy);
        self.push_presence(updates);
        Ok(privacy)
    }

    /// Delivers the cross-region outbox (delivered receipts for senders homed elsewhere), in
    /// order per destination, removing entries only after the destination stored them.
    async fn outbox_pump(self) {
        loop {
            let mut backlog = false;
            let mut more = false;
            let destinations = match self
                .inner
                .db
                .transact(|tx| async move { outbox::destinations(&tx).await })
                .await
            {
                Ok(destinations) => destinations,
                Err(error) => {
                    tracing::error!(%error, "cannot read the outbox");
                    Vec::new()
                }
            };
            for destination in destinations {
                match self.deliver_outbox(destination).await {
                    Ok(full) => more |= full,
                    Err(error) => {
                        tracing::warn!(%destination, %error, "outbox delivery failed; will retry");
                        backlog = true;
                    }
                }
            }
            if more && !backlog {
                // A full batch went: the next one goes now, not after a pause.
                continue;
            }
            let pause = if backlog {
                OUTBOX_RETRY_DELAY_MS
            } else {
                OUTBOX_IDLE_POLL_MS
            };
            tokio::select! {
                () = self.inner.outbox_wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(pause)) => {}
            }
        }
    }

    /// Expires queue entries older than the retention window, every
    /// [`RETENTION_SWEEP_INTERVAL_MS`], telling their senders (expired receipts).
    async fn retention_sweeper(self) {
        let local = self.inner.region;
        loop {
            let mut expired_entries = 0;
            for _ in 0..RETENTION_SWEEP_TRANSACTIONS_MAX {
                let now = self.inner.clock.now_ms();
                match self
                    .transact(|tx| async move { core::expire_queues(&tx, local, now).await })
                    .await
                {
                    Ok(expired) => {
                        expired_entries += expired.expired_entries;
                        if !expired.more {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "retention sweep failed; will retry");
                        break;
                    }
                }
            }
            if expired_entries > 0 {
                tracing::info!(expired_entries, "expired undelivered queue entries");
            }
            tokio::time::sleep(Duration::from_millis(RETENTION_SWEEP_INTERVAL_MS)).await;
        }
    }

    async fn deliver_outbox(&self, destination: RegionId) -> Result<bool, ProtoError> {
        if destination == self.inner.region {
            // Group receipts for this region's own senders: applied here, a batch at a time.
            let local = self.inner.region;
            let now = self.inner.clock.now_ms();
            let applied = self
                .transact(|tx| async move {
                    let limits = (OUTBOX_BATCH_ENTRIES_MAX, LOCAL_RECEIPTS_BATCH_MAX);
                    core::deliver_local_receipts(&tx, local, limits, now).await
                })
                .await?;
            return Ok(applied.more);
        }
        let entries = self
            .inner
            .db
            .transact(
                |tx| async move { outbox::peek(&tx, destination, OUTBOX_BATCH_ENTRIES_MAX).await },
            )
            .await
            .map_err(store_failure)?;
        // Only what the standby holds leaves the region: an entry of a commit it has not
        // confirmed could be lost with this primary in a failover, while the other region
        // kept it, and its origin watermark (a versionstamp) would then shadow the entries the
        // promoted standby pushes at the same versions.
        let confirmed = self
            .inner
            .replication
            .as_ref()
            .and_then(|shipper| shipper.outgoing_bound());
        let shippable = core::confirmed_prefix(&entries, confirmed);
        let entries = &entries[..shippable];
        let Some(&(last_seq, _)) = entries.last() else {
            return Ok(false);
        };
        let mut receipts = Vec::with_capacity(entries.len());
        for (seq, bytes) in entries {
            let receipt = wire::QueuedReceipt::decode(&bytes[..]).map_err(|error| {
                ProtoError::new(
                    ErrorCode::Internal,
                    format!("corrupt outbox entry: {error}"),
                )
            })?;
            receipts.push(wire::ReceiptForward {
                receipt,
                origin_region: self.inner.region.0,
                origin_stamp: seq.to_bytes().to_vec(),
            });
        }
        let request = RegionRequest {
            body: Some(region_request::Body::Receipts(wire::ForwardReceipts {
                receipts,
            })),
        };
        let response = self
            .inner
            .peers
            .request::<_, RegionResponse>(
                destination.0,
                &request,
                Duration::from_millis(REGION_PEER_REQUEST_TIMEOUT_MS),
            )
            .await
            .map_err(|error| error.to_proto())?;
        match response.body {
            Some(region_response::Body::ReceiptsStored(_)) => {}
            Some(region_response::Body::Error(error)) => return Err(error.into()),
            _ => {
                return Err(ProtoError::new(
                    ErrorCode::Internal,
                    "unexpected answer to receipts",
                ));
            }
        }
        self.inner
            .db
            .transact(|tx| async move {
                outbox::remove_through(&tx, destination, last_seq);
                Ok(())
            })
            .await
            .map_err(store_failure)?;
        Ok(shippable == OUTBOX_BATCH_ENTRIES_MAX)
    }
}

/// Where a starting region gets the directory writer's census: its own store when it is the
/// writer, else the writer over QUIC.
enum WriterCensus<'a> {
    Local(LocalCensus<'a>),
    Remote(Box<RemoteCensus>),
}

impl CensusSource for WriterCensus<'_> {
    async fn census(
        &self,
        request: wire::StoreCensusRequest,
    ) -> Result<wire::StoreCensus, ProtoError> {
        match self {
            WriterCensus::Local(local) => local.census(request).await,
            WriterCensus::Remote(remote) => remote.census(request).await,
        }
    }
}

/// The directory writer's census over QUIC, from a client endpoint of its own: used before the
/// region binds its server, so a refused store binds nothing.
pub(crate) struct RemoteCensus {
    endpoint: quinn::Endpoint,
    pub(crate) links: PeerLinks,
    writer: RegionId,
}

impl RemoteCensus {
    /// A client endpoint of its own on `config`'s address, with links to the regions its
    /// peers file names.
    pub(crate) fn connect(
        config: &RegionConfig,
        roots: Arc<RootCertStore>,
        identity: TlsIdentity,
    ) -> Result<Self, NetError> {
        let address = SocketAddr::new(config.listen.ip(), 0);
        let endpoint = net::bind_endpoint(&TokioSockets, address, None)?;
        let client = net::client_config(roots, Some(identity), net::ALPN_INTERNAL)?;
        let links = PeerLinks::new(
            endpoint.clone(),
            client,
            net::REGION_SERVER_NAME,
            PeersFile::resolver(config.peers_file.clone()),
        );
        Ok(Self {
            endpoint,
            links,
            writer: RegionId(config.directory_writer),
        })
    }

    pub(crate) fn close(&self) {
        self.endpoint.close(0u32.into(), b"done");
    }
}

/// Issues registration tokens at the deployment's directory writer, as its operator: connects
/// with the certificate and key of the region `config` describes (peers trust the deployment's
/// CA) to the writer its peers file names, and asks once.
pub async fn issue_registration_tokens(
    config: &RegionConfig,
    issue: wire::IssueRegistrationTokens,
) -> Result<wire::RegistrationTokens, RegionError> {
    let roots = net::load_roots(&config.ca_cert)?;
    let identity = TlsIdentity::load(&config.cert, &config.key)?;
    let remote = RemoteCensus::connect(config, roots, identity)?;
    let request = RegionRequest {
        body: Some(region_request::Body::IssueTokens(issue)),
    };
    let asked: Result<RegionResponse, NetError> = remote
        .links
        .request(
            remote.writer.0,
            &request,
            Duration::from_millis(REGION_PEER_REQUEST_TIMEOUT_MS),
        )
        .await;
    remote.close();
    match asked?.body {
        Some(region_response::Body::RegistrationTokens(tokens)) => Ok(tokens),
        Some(region_response::Body::Error(error)) => {
            Err(RegionError::Net(NetError::Remote(error.into())))
        }
        _ => Err(RegionError::Net(NetError::Remote(ProtoError::new(
            ErrorCode::Internal,
            "unexpected answer to a token request",
        )))),
    }
}

impl CensusSource for RemoteCensus {
    async fn census(
        &self,
        request: wire::StoreCensusRequest,
    ) -> Result<wire::StoreCensus, ProtoError> {
        let request = RegionRequest {
            body: Some(region_request::Body::StoreCensus(request)),
        };
        let response: RegionResponse = self
            .links
            .request(
                self.writer.0,
                &request,
                Duration::from_millis(WRITER_CENSUS_ATTEMPT_TIMEOUT_MS),
            )
            .await
            .map_err(|error| error.to_proto())?;
        match response.body {
            Some(region_response::Body::StoreCensus(census)) => Ok(census),
            Some(region_response::Body::Error(error)) => Err(error.into()),
            _ => Err(ProtoError::new(
                ErrorCode::Internal,
                "unexpected answer to a store census",
            )),
        }
    }
}

/// Locks a mutex of the service; every update completes under the lock, so a poisoned one (a
/// panicking task) still holds a usable state.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// What a commit's answer tells the lane about the sender's next number.
fn lane_outcome(decision: &Result<CommitDecision, ProtoError>) -> lanes::Committed {
    use relay_proto::wire::send_outcome::Outcome;
    match decision {
        Ok(CommitDecision::Answer(answer)) => match &answer.outcome {
            Some(Outcome::Sent(_)) => lanes::Committed::Stored,
            Some(Outcome::ResendFrom(resend)) => {
                lanes::Committed::Expects(resend.expected_sender_seq)
            }
            _ => lanes::Committed::Other,
        },
        _ => lanes::Committed::Other,
    }
}

/// A number unique to this process start: the wall clock in nanoseconds at start mixed with the
/// process id, so two processes started in one nanosecond still differ.
fn boot_nonce() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32).rotate_left(17)
}

pub(crate) fn record_of(info: &wire::AccountInfo) -> directory::AccountRecord {
    directory::AccountRecord {
        id: AccountId(info.account),
        name: info.name.clone(),
        home_region: RegionId(info.region),
        epoch: info.epoch,
    }
}

/// A fresh registration token: `rt_` then 128 random bits in hex.
fn new_registration_token() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut token = String::with_capacity(3 + 32);
    token.push_str("rt_");
    for byte in bytes {
        token.push_str(&format!("{byte:02x}"));
    }
    token
}
