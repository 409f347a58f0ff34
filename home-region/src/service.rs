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
//! ([`relay_proto::limits::SUBSCRIBED_DEVICES_PER_STREAM_MAX`], further adds ignored and
//! logged), pushes per stream (one queue push per device, never dropped; presence and typing
//! dropped past [`crate::limits::SUBSCRIPTION_EVENTS_MAX`]; see `stream_pushes`), key-claim
//! buckets ([`crate::claims`]) and the accounts whose cached copy it refreshed lately (at most
//! [`ACCOUNT_REFRESHES_TRACKED_MAX`]). Accounts cached from the directory writer are asked of it
//! again in the background once they are [`ACCOUNT_REFRESH_INTERVAL_MS`] old, so a home move
//! reaches this region's lookups without a restart.
//!
//! This file holds the service's state, its connections and streams, and the dispatch of each
//! request; the work of each concern is in a file of its own beside it: `commits` (the commit
//! path of envelopes: chat lanes and quarantine), `accounts` (registration, blocks, tokens,
//! lookups), `memberships` (groups), `watching` (presence and typing), `outbox_pump` (the
//! cross-region outbox), `blob_streams` and `moves` (home moves).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fdb_layers::store_identity::{StoreId, StoreIdentity};
use fdb_layers::{Database, EmbeddedOptions, StoreError, directory};
use quinn::rustls::RootCertStore;
use relay_net::cache::TtlCache;
use relay_net::config::ConfigError;
use relay_net::{
    self as net, ConnectionSlots, NetError, PeerLinks, PeerResolver, SocketFactory, TlsIdentity,
    TokioSockets,
};
use relay_planted::PlantedBug;
use relay_proto::clock::{Clock, SystemClock};
use relay_proto::limits::REGION_PEER_REQUEST_TIMEOUT_MS;
use relay_proto::wire::{self, RegionRequest, RegionResponse, region_request, region_response};
use relay_proto::{AccountId, ChatId, DeviceAddress, ErrorCode, GroupId, ProtoError, RegionId};
use tokio::sync::{Notify, Semaphore, oneshot};

use crate::blobs::{BlobLimits, BlobStore};
use crate::claims::ClaimLimiter;
use crate::config::{PeersFile, RegionConfig};
use crate::core::{self, CommitDecision, Effects, GroupMembership};
use crate::directory_replica;
use crate::groups;
use crate::handover::{self, Drain};
use moves::Moves;
use stream_pushes::StreamPushes;

mod accounts;
mod blob_streams;
mod commits;
mod media;
mod memberships;
mod moves;
mod outbox_pump;
mod queue_requests;
mod stream_pushes;
mod watching;
use crate::lanes::{ChatLanes, Ticket};
use crate::limits::{
    ACCOUNT_REFRESH_INTERVAL_MS, ACCOUNT_REFRESHES_IN_FLIGHT_MAX, ACCOUNT_REFRESHES_TRACKED_MAX,
    GROUP_CACHE_ENTRIES_MAX, GROUP_CACHE_TTL_MS, INTERNAL_CONNECTIONS_MAX,
    RETENTION_SWEEP_INTERVAL_MS, RETENTION_SWEEP_TRANSACTIONS_MAX,
    WRITER_CENSUS_ATTEMPT_TIMEOUT_MS,
};
use crate::linking;
use crate::presence::PresenceBoard;
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
type PushSender = Arc<StreamPushes>;

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
    /// The media endpoint to bind (see [`crate::config::MediaConfig`]); `None`: blobs go
    /// through the edges only.
    pub media: Option<crate::config::MediaConfig>,
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
    /// Where devices move blobs' bytes without their edge (see [`media`]).
    media: Option<media::MediaEndpoint>,
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
            media: config.media.clone(),
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
            media,
        } = parts;
        if region.0 == 0 || directory_writer.0 == 0 {
            return Err(ConfigError::Value("region numbers start at 1".into()).into());
        }
        let server = net::server_config(identity.clone(), Some(roots.clone()), net::ALPN_INTERNAL)?;
        let endpoint = net::bind_server_endpoint(sockets, listen, server, &identity)?;
        let address = endpoint.local_addr().map_err(NetError::Io)?;
        let media = match media {
            Some(media) => {
                let server = net::server_config(identity.clone(), None, net::ALPN_MEDIA)?;
                let endpoint = net::bind_endpoint(sockets, media.listen, Some(server))?;
                let media =
                    media::MediaEndpoint::new(endpoint, media.advertise).map_err(NetError::Io)?;
                if let Some(address) = media.local_addr() {
                    tracing::info!(%address, "media endpoint listening");
                }
                Some(media)
            }
            None => None,
        };
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
            media,
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
        let media = tokio::spawn(self.clone().accept_media());
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
        media.abort();
        if let Some(media) = &self.inner.media {
            media.endpoint.close(0u32.into(), b"region shutting down");
        }
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
            self.serve_blob_stream::<RegionResponse>(blob.clone(), send, recv)
                .await;
            return;
        }
        let response = self.handle(request).await;
        if let Err(error) = net::respond(send, &response).await {
            tracing::debug!(%error, "could not answer a request");
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
            Req::FetchQueue(for_device) => self.fetch_queue(for_device).await.map(Resp::Queue),
            Req::AckMany(many) => self.ack_many(many).await.map(Resp::AcksDone),
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
            let mut entries = pushed
                .remove(&device)
                .map(|mut pushed| pushed.take())
                .unwrap_or_default();
            let Some(streams) = subscriptions.get(&device) else {
                self.inner
                    .pusher
                    .handle_unconnected(device, std::time::Instant::now());
                continue;
            };
            let mut streams = streams.values().peekable();
            while let Some(sender) = streams.next() {
                let entries = if streams.peek().is_some() {
                    entries.clone()
                } else {
                    std::mem::take(&mut entries)
                };
                sender.queue(device, latest_queue_seq, entries);
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
