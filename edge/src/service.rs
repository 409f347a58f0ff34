//! The edge's QUIC shell: terminates device connections, runs each through a
//! [`Session`], forwards requests to regions over mutual-TLS links (a device's group commands
//! to its home region, naming the authenticated device's account as the one that acts),
//! keeps one subscription stream per region so that regions can tell it when a connected
//! device's queue grew, and relays those pushes to the device's control stream.
//!
//! An edge holds no durable data: a crash loses connections, never messages. What it holds in
//! memory is bounded ([`crate::limits`]): device connections ([`DEVICE_CONNECTIONS_MAX`], then
//! refused), the homes of accounts ([`HomeCache`]: bounded, expiring, forgotten when a region
//! refuses an account), the keys of devices ([`DeviceKeyCache`]: bounded, expiring), one push
//! per device connection (pushes are hints: the one announcing the highest queue sequence
//! stands for all)
//! and subscription changes per region ([`PendingSubscriptions`]: a resync past their bound).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::rustls::RootCertStore;
use rand::RngCore;
use relay_net::config::ConfigError;
use relay_net::limits::DEVICE_SOCKET_RECEIVE_BUFFER_BYTES;
use relay_net::{
    self as net, BufferedSockets, ConnectionSlots, NetError, PeerLinks, SocketFactory, TlsIdentity,
    TokioSockets,
};
use relay_proto::clock::{Clock, SystemClock};
use relay_proto::limits::{
    AUTH_NONCE_BYTES, BLOB_STREAM_IDLE_TIMEOUT_MS, EDGE_ANSWER_TIMEOUT_MS,
    EDGE_REGION_REQUEST_TIMEOUT_MS,
};
use relay_proto::wire::{
    self, ClientRequest, ClientResponse, DeviceQueueAvailable, RegionRequest, RegionResponse,
    ServerPush, client_request, client_response, region_request, region_response, server_push,
};
use relay_proto::{AccountId, DeviceAddress, DeviceId, ErrorCode, ProtoError, RegionId};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::admission::{AddressLimiter, AdmissionLimits, Refusal};
use crate::cache::{Home, HomeCache};
use crate::config::EdgeConfig;
use crate::keys::DeviceKeyCache;
use crate::limits::{ADMISSION_OVERLOADED_RETRY_MS, ADMISSION_REFUSAL_WAIT_MS};
use crate::limits::{
    AUTH_TIMEOUT_MS, DEVICE_CONNECTIONS_MAX, DEVICE_EVENTS_WAITING_MAX,
    MOVED_HOME_UNKNOWN_RETRY_AFTER_MS, OVERLOADED_RETRY_AFTER_MS, RESUBSCRIBE_DELAY_MS,
    SEND_ROUTE_ROUNDS_MAX,
};
use crate::presence::Watches;
use crate::session::{Route, SeenMarks, SendAggregate, Session, SessionLimits, fanout_regions};
use crate::subscriptions::{
    PendingSubscriptions, SubscriptionWork, change_frames, resync_frames, signal_frames,
};

/// Why the edge cannot start or run.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The network shell failed.
    #[error("network: {0}")]
    Net(#[from] NetError),
}

/// Random bytes for authentication challenges.
pub trait NonceSource: Send + Sync + 'static {
    /// Fills `bytes` with fresh random bytes.
    fn fill(&self, bytes: &mut [u8]);
}

/// The operating system's randomness (through rand's thread-local generator).
#[derive(Debug, Clone, Copy, Default)]
pub struct OsNonces;

impl NonceSource for OsNonces {
    fn fill(&self, bytes: &mut [u8]) {
        rand::rng().fill_bytes(bytes);
    }
}

/// What an edge runs on, built by the caller: [`EdgeService::bind`] makes them from a
/// configuration (kernel sockets, PEM files, the system clock and randomness); a simulation
/// makes its own.
pub struct EdgeParts<'a> {
    /// The region this edge belongs to: devices registering through it are homed there.
    pub region: RegionId,
    /// The address devices connect to.
    pub listen: SocketAddr,
    /// The address the internal (edge → region) endpoint binds.
    pub internal_listen: SocketAddr,
    /// Per-connection limits.
    pub limits: SessionLimits,
    /// Makes the UDP socket of the device-facing endpoint.
    pub device_sockets: &'a dyn SocketFactory,
    /// Makes the UDP socket of the internal endpoint.
    pub internal_sockets: &'a dyn SocketFactory,
    /// The edge's certificate and key: presented to devices and to regions.
    pub identity: TlsIdentity,
    /// The deployment's CA: regions' certificates are checked against it.
    pub roots: Arc<RootCertStore>,
    /// Every region's internal address; must include the edge's own region.
    pub regions: BTreeMap<RegionId, SocketAddr>,
    /// Where regions may have moved, asked again on every connection to a region (a peers
    /// file read again, or the simulator's map): its addresses replace those of `regions` (a
    /// region that moved, a standby that took over), and connections to a region that moved
    /// are closed.
    pub moving_peers: Option<net::PeerResolver>,
    /// Wall-clock time (rate limits).
    pub clock: Arc<dyn Clock>,
    /// Randomness of the authentication challenges.
    pub nonces: Arc<dyn NonceSource>,
}

/// One region's subscription stream: the changes waiting for it, and its wake-up.
#[derive(Default)]
struct RegionSubscription {
    pending: Mutex<PendingSubscriptions>,
    wake: Notify,
}

impl RegionSubscription {
    /// Applies a change to what waits for the stream, and wakes the stream's task.
    fn change(&self, apply: impl FnOnce(&mut PendingSubscriptions)) {
        apply(&mut self.pending());
        self.wake.notify_one();
    }

    fn handle_change(&self, device: DeviceAddress, connected: bool) {
        self.change(|pending| pending.handle_change(device, connected));
    }

    fn handle_watch(&self, watcher: DeviceAddress, account: AccountId, watch: bool) {
        self.change(|pending| pending.handle_watch(watcher, account, watch));
    }

    fn handle_typing(&self, typing: wire::TypingForward) {
        self.change(|pending| pending.handle_typing(typing));
    }

    fn poll_work(&self) -> Option<SubscriptionWork> {
        self.pending().poll_work()
    }

    fn clear(&self) {
        self.pending().clear();
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, PendingSubscriptions> {
        self.pending
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// One connection of a device, as the pushes find it.
struct Connected {
    id: u64,
    home: RegionId,
    pushes: Arc<PushSlot>,
}

/// The push waiting for one device connection. A push is a hint to fetch after the device's
/// cursor, so the one announcing the highest queue sequence says everything the others would:
/// a connection keeps that one number (and a wake-up) instead of a queue of frames, and never
/// drops a push. The entries the region sent along wait with it, as one gapless run of at most
/// [`relay_proto::limits::QUEUE_PUSH_BYTES_MAX`] (`wire::EntryRun`): an entry that does not follow the run, or does not fit, is left
/// for the device to fetch (it takes a run only where it follows its cursor).
///
/// Presence updates and typing notices wait beside it, the latest one per watched account and
/// per typing device and chat (a newer state replaces an older one nobody has read), at most
/// [`DEVICE_EVENTS_WAITING_MAX`].
#[derive(Default)]
struct PushSlot {
    /// The queue push not written yet.
    queue: Mutex<WaitingQueue>,
    /// (kind, account, device, group) → the latest event of that key.
    events: Mutex<BTreeMap<(u8, u64, u32, u64), server_push::Event>>,
    wake: Notify,
}

/// What a connection's next queue push says.
#[derive(Default)]
struct WaitingQueue {
    /// The highest `latest_queue_seq` announced; `None`: no queue push waits.
    announced: Option<u64>,
    /// Entries sent along.
    entries: wire::EntryRun,
}

impl PushSlot {
    fn handle_push(&self, latest_queue_seq: u64, entries: Vec<wire::QueueEntry>) {
        {
            let mut queue = self
                .queue
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let announced = queue
                .announced
                .map_or(latest_queue_seq, |known| known.max(latest_queue_seq));
            queue.announced = Some(announced);
            // An entry that does not join stays for the device to fetch, with those after it.
            for entry in entries {
                if !queue.entries.join(entry) {
                    break;
                }
            }
        }
        self.wake.notify_one();
    }

    /// A presence update or typing notice for the device.
    fn handle_event(&self, event: server_push::Event) {
        let key = match &event {
            server_push::Event::Presence(info) => (1, info.account, 0, 0),
            server_push::Event::Typing(notice) => {
                (2, notice.from.account, notice.from.device, notice.group)
            }
            server_push::Event::QueueAvailable(_) => return,
        };
        {
            let mut events = self
                .events
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if events.len() >= DEVICE_EVENTS_WAITING_MAX && !events.contains_key(&key) {
                tracing::warn!("a device reads its events too slowly; dropping one");
                return;
            }
            events.insert(key, event);
        }
        self.wake.notify_one();
    }

    /// The next push to write: the highest queue sequence announced since the last one, else
    /// the oldest-keyed event waiting.
    async fn next(&self) -> server_push::Event {
        loop {
            let waiting = {
                let mut queue = self
                    .queue
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                queue
                    .announced
                    .take()
                    .map(|latest| (latest, queue.entries.take()))
            };
            if let Some((latest_queue_seq, entries)) = waiting {
                return server_push::Event::QueueAvailable(DeviceQueueAvailable {
                    device: wire::DeviceAddr::default(),
                    latest_queue_seq,
                    entries,
                });
            }
            let event = self
                .events
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .pop_first();
            if let Some((_, event)) = event {
                return event;
            }
            // `notify_one` leaves a permit when nobody waits, so no push is missed in between.
            self.wake.notified().await;
        }
    }
}

/// A running edge.
#[derive(Clone)]
pub struct EdgeService {
    inner: Arc<Inner>,
}

struct Inner {
    region: RegionId,
    limits: SessionLimits,
    /// New connections per source address (see [`crate::admission`]).
    admission: Mutex<AddressLimiter>,
    device_endpoint: quinn::Endpoint,
    internal_endpoint: quinn::Endpoint,
    links: PeerLinks,
    /// The regions' addresses come from a peers file, so a region may move.
    follows_moving_peers: bool,
    regions: Vec<RegionId>,
    homes: Mutex<HomeCache>,
    /// The keys of devices that logged in or registered here (see [`crate::keys`]).
    keys: Mutex<DeviceKeyCache>,
    /// device → its connections, oldest first (a device rarely has more than one); ordered, so
    /// that pushes and subscriptions go out in the same order on every run.
    devices: Mutex<BTreeMap<DeviceAddress, Vec<Connected>>>,
    subscriptions: HashMap<RegionId, Arc<RegionSubscription>>,
    /// The presence watches of the devices connected here (see [`crate::presence`]).
    watches: Mutex<Watches>,
    connections: ConnectionSlots,
    next_connection: AtomicU64,
    clock: Arc<dyn Clock>,
    nonces: Arc<dyn NonceSource>,
}

/// Answers the first request of a connection its address may not open now with the typed
/// refusal (`Throttled` with the retry-after, or `Overloaded`), then closes it.
async fn refuse_connection(connection: quinn::Connection, refusal: Refusal) {
    let error = match refusal {
        Refusal::Throttled { retry_after_ms } => ProtoError::new(
            ErrorCode::Throttled,
            "too many new connections from your address",
        )
        .with_retry_after_ms(retry_after_ms),
        Refusal::Overloaded => ProtoError::new(
            ErrorCode::Overloaded,
            "the edge is admitting too many addresses at once",
        )
        .with_retry_after_ms(ADMISSION_OVERLOADED_RETRY_MS),
    };
    tracing::debug!(remote = %connection.remote_address(), ?refusal, "refusing a connection");
    let answered = tokio::time::timeout(
        std::time::Duration::from_millis(ADMISSION_REFUSAL_WAIT_MS),
        async {
            if let Ok((send, mut recv)) = connection.accept_bi().await {
                let _ = net::read_frame::<ClientRequest>(&mut recv).await;
                let _ = net::respond(send, &error_response(error)).await;
                // Closing at once would discard the answer: the client closes the connection
                // once it has read it (or the wait ends).
                connection.closed().await;
            }
        },
    )
    .await;
    let _ = answered;
    connection.close(
        0u32.into(),
        b"refused: too many connections from this address",
    );
}

fn error_response(error: ProtoError) -> ClientResponse {
    ClientResponse {
        body: Some(client_response::Body::Error(error.into())),
    }
}

impl EdgeService {
    /// Binds the device-facing server and the internal client endpoint from a configuration.
    pub fn bind(
        config: &EdgeConfig,
    ) -> Result<(Self, SocketAddr, SubscriptionsToStart), EdgeError> {
        config.validate()?;
        let roots = net::load_roots(&config.ca_cert)?;
        let identity = TlsIdentity::load(&config.cert, &config.key)?;
        Self::new(EdgeParts {
            region: RegionId(config.region),
            listen: config.listen,
            internal_listen: SocketAddr::new(config.listen.ip(), 0),
            limits: config.session_limits(),
            device_sockets: &BufferedSockets {
                receive_buffer_bytes: DEVICE_SOCKET_RECEIVE_BUFFER_BYTES,
            },
            internal_sockets: &TokioSockets,
            identity,
            roots,
            regions: config
                .regions
                .iter()
                .map(|entry| (RegionId(entry.region), entry.address))
                .collect(),
            moving_peers: config
                .peers_file
                .clone()
                .map(relay_net::config::PeersFile::resolver),
            clock: Arc::new(SystemClock),
            nonces: Arc::new(OsNonces),
        })
    }

    /// Binds the device-facing server and the internal client endpoint on the given parts.
    pub fn new(
        parts: EdgeParts<'_>,
    ) -> Result<(Self, SocketAddr, SubscriptionsToStart), EdgeError> {
        let EdgeParts {
            region,
            listen,
            internal_listen,
            limits,
            device_sockets,
            internal_sockets,
            identity,
            roots,
            regions,
            moving_peers,
            clock,
            nonces,
        } = parts;
        if !regions.contains_key(&region) {
            return Err(ConfigError::Value(format!(
                "regions must list the edge's own region {region}"
            ))
            .into());
        }
        let device_server = net::server_config(identity.clone(), None, net::ALPN_DEVICE)?;
        let device_endpoint =
            net::bind_server_endpoint(device_sockets, listen, device_server, &identity)?;
        let address = device_endpoint.local_addr().map_err(NetError::Io)?;
        let internal_endpoint = net::bind_endpoint(internal_sockets, internal_listen, None)?;
        let client = net::client_config(roots, Some(identity), net::ALPN_INTERNAL)?;
        let addresses = regions.clone();
        let follows_moving_peers = moving_peers.is_some();
        let listed = moving_peers;
        let resolve: net::PeerResolver = Box::new(move |region| {
            // Only the regions configured get a link, wherever the file says they are.
            let configured = addresses.get(&RegionId(region)).copied()?;
            Some(
                listed
                    .as_ref()
                    .and_then(|listed| listed(region))
                    .unwrap_or(configured),
            )
        });
        let links = PeerLinks::new(
            internal_endpoint.clone(),
            client,
            net::REGION_SERVER_NAME,
            resolve,
        );
        let subscriptions: HashMap<RegionId, Arc<RegionSubscription>> = regions
            .keys()
            .map(|&region| (region, Arc::default()))
            .collect();
        let inner = Inner {
            region,
            limits,
            follows_moving_peers,
            admission: Mutex::new(AddressLimiter::new(AdmissionLimits {
                per_second: limits.connections_per_second_per_address,
                burst: limits.connections_burst_per_address,
            })),
            device_endpoint,
            internal_endpoint,
            links,
            regions: regions.keys().copied().collect(),
            homes: Mutex::new(HomeCache::default()),
            keys: Mutex::new(DeviceKeyCache::default()),
            devices: Mutex::new(BTreeMap::new()),
            subscriptions,
            watches: Mutex::new(Watches::default()),
            connections: ConnectionSlots::new(DEVICE_CONNECTIONS_MAX),
            next_connection: AtomicU64::new(1),
            clock,
            nonces,
        };
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            address,
            SubscriptionsToStart(regions.keys().copied().collect()),
        ))
    }

    /// Serves devices until `shutdown` completes.
    pub async fn run(
        self,
        subscriptions: SubscriptionsToStart,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), EdgeError> {
        let mut tasks = JoinSet::new();
        for region in subscriptions.0 {
            tasks.spawn(self.clone().subscription(region));
        }
        if self.inner.follows_moving_peers {
            // A region that moved (its standby took over): requests waiting on the old address
            // fail at once and go to the new one.
            let service = self.clone();
            tasks.spawn(async move { service.inner.links.close_moved_forever().await });
        }
        let accept = async {
            while let Some(incoming) = self.inner.device_endpoint.accept().await {
                let service = self.clone();
                tokio::spawn(async move {
                    if let Some((connection, _slot)) =
                        net::accept_bounded(&service.inner.connections, incoming).await
                    {
                        service.serve_device(connection).await;
                    }
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = shutdown => {}
        }
        tasks.abort_all();
        self.inner
            .device_endpoint
            .close(0u32.into(), b"edge shutting down");
        self.inner
            .internal_endpoint
            .close(0u32.into(), b"edge shutting down");
        Ok(())
    }

    async fn serve_device(self, connection: quinn::Connection) {
        let admitted = self
            .inner
            .admission
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .handle_connection(connection.remote_address().ip(), self.inner.clock.now_ms());
        if let Err(refusal) = admitted {
            refuse_connection(connection, refusal).await;
            return;
        }
        let connection_id = self.inner.next_connection.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Mutex::new(Session::new(
            self.inner.limits,
            self.inner.clock.now_ms(),
        )));
        loop {
            let (send, recv) = match connection.accept_bi().await {
                Ok(streams) => streams,
                Err(error) => {
                    tracing::debug!(%error, "device connection ended");
                    break;
                }
            };
            let service = self.clone();
            let session = session.clone();
            let connection = connection.clone();
            tokio::spawn(async move {
                service
                    .serve_stream(connection_id, connection, session, send, recv)
                    .await
            });
        }
        let device = session
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .device();
        if let Some(device) = device {
            self.disconnect(device, connection_id);
        }
    }

    async fn serve_stream(
        self,
        connection_id: u64,
        connection: quinn::Connection,
        session: Arc<Mutex<Session>>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let request = match net::read_frame::<ClientRequest>(&mut recv).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                let _ = net::respond(send, &error_response(error.to_proto())).await;
                return;
            }
        };
        if let Some(client_request::Body::Hello(_)) = request.body {
            let nonce = {
                let mut nonce = [0u8; AUTH_NONCE_BYTES];
                self.inner.nonces.fill(&mut nonce);
                nonce
            };
            let challenge = session
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .handle_hello(nonce);
            match challenge {
                Ok(challenge) => {
                    let response = ClientResponse {
                        body: Some(client_response::Body::Challenge(challenge)),
                    };
                    if net::write_frame(&mut send, &response).await.is_ok() {
                        self.control(connection_id, connection, session, send, recv)
                            .await;
                    }
                }
                Err(error) => {
                    let _ = net::respond(send, &error_response(error)).await;
                }
            }
            return;
        }
        if let Some(client_request::Body::Blob(blob)) = &request.body
            && blob.is_stream()
        {
            let route = session
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .handle_request(&request, self.inner.clock.now_ms());
            let command = blob.clone();
            match route {
                Ok(Route::Blob { device, region }) => {
                    Box::pin(self.blob_stream(device, region, command, send, recv)).await;
                }
                Ok(_) => {
                    let error = ProtoError::new(ErrorCode::Internal, "a blob stream routed wrong");
                    let _ = net::respond(send, &error_response(error)).await;
                }
                Err(error) => {
                    let _ = net::respond(send, &error_response(error)).await;
                }
            }
            return;
        }
        // Boxed: a request's work (region requests, timers) is large and brief; unboxed it would
        // size every stream task, the control stream's included, for the life of the connection.
        let work = Box::pin(within_answer_timeout(
            self.handle_request(&session, request),
        ));
        let response = match work.await {
            Ok(body) => ClientResponse { body: Some(body) },
            Err(error) => error_response(error),
        };
        if let Err(error) = net::respond(send, &response).await {
            tracing::debug!(%error, "could not answer a device");
        }
    }

    /// The control stream after `Challenge`: authentication, then pushes until it closes.
    async fn control(
        &self,
        connection_id: u64,
        connection: quinn::Connection,
        session: Arc<Mutex<Session>>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        // Boxed, so that the key lookup's state is freed once the device is in, instead of
        // sizing the control stream's task for as long as the device stays connected.
        let authenticated = Box::pin(tokio::time::timeout(
            Duration::from_millis(AUTH_TIMEOUT_MS),
            self.authenticate(&connection, &session, &mut recv),
        ))
        .await
        .unwrap_or_else(|_| {
            Err(ProtoError::new(
                ErrorCode::Unauthenticated,
                "authentication timed out",
            ))
        });
        let (device, home, keys, from_cache) = match authenticated {
            Ok(result) => result,
            Err(error) => {
                tracing::info!(code = ?error.code, "device authentication refused");
                let _ = net::respond(send, &error_response(error)).await;
                return;
            }
        };
        let pushes = Arc::new(PushSlot::default());
        self.connect(device, home, connection_id, pushes.clone());
        let welcome = ClientResponse {
            body: Some(client_response::Body::Authenticated(keys)),
        };
        if net::write_frame(&mut send, &welcome).await.is_ok() {
            tracing::info!(%device, from_cache, "device connected");
            let forward = async {
                loop {
                    let mut event = pushes.next().await;
                    if let server_push::Event::QueueAvailable(available) = &mut event {
                        available.device = device.into();
                    }
                    let push = ServerPush { event: Some(event) };
                    if net::write_frame(&mut send, &push).await.is_err() {
                        return;
                    }
                }
            };
            let closed = async {
                // The device sends nothing more on this stream; its end means the session ended.
                let _ = net::read_frame::<ClientRequest>(&mut recv).await;
            };
            tokio::select! {
                () = forward => {}
                () = closed => {}
            }
        }
        self.disconnect(device, connection_id);
    }

    async fn authenticate(
        &self,
        connection: &quinn::Connection,
        session: &Mutex<Session>,
        recv: &mut quinn::RecvStream,
    ) -> Result<(DeviceAddress, RegionId, wire::OneTimeKeyCount, bool), ProtoError> {
        let frame = net::read_frame::<ClientRequest>(recv)
            .await
            .map_err(|error| error.to_proto())?;
        let Some(ClientRequest {
            body: Some(client_request::Body::Authenticate(authenticate)),
        }) = frame
        else {
            return Err(ProtoError::invalid(
                "expected authenticate after the challenge",
            ));
        };
        let device = session
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .claimed_device(&authenticate)?;
        let keying_material =
            net::auth_keying_material(connection).map_err(|error| error.to_proto())?;
        let cached = self.keys().key(device, self.inner.clock.now_ms());
        if let Some(cached) = cached {
            let home = within_answer_timeout(self.home_of(device.account)).await?;
            let verified = session
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .handle_authenticate_from_cache(&authenticate, &keying_material, &cached);
            match verified {
                Ok(_) => return Ok((device, home, cached.key_count(), true)),
                // The cached marks never lead the region's: this refusal is the region's too.
                Err(error) if error.code == ErrorCode::DeviceRolledBack => return Err(error),
                Err(_) => {
                    // A key that does not verify is asked of the region before refusing.
                    self.keys().forget(device);
                }
            }
        }
        let (home, key) = within_answer_timeout(self.signing_key(device)).await?;
        self.keys()
            .handle_lookup(device, &key, self.inner.clock.now_ms());
        let seen = SeenMarks {
            acked_queue_seq: key.acked_queue_seq,
            device_seq: key.device_seq,
        };
        session
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .handle_authenticate(&authenticate, &keying_material, &key.signing_key, seen)?;
        let keys = wire::OneTimeKeyCount {
            remaining: key.one_time_keys_remaining,
            fallback_key: key.fallback_key,
            cached: false,
        };
        Ok((device, home, keys, false))
    }

    /// The signing key of `device` and what its home region has seen of it, with that region.
    async fn signing_key(
        &self,
        device: DeviceAddress,
    ) -> Result<(RegionId, wire::SigningKey), ProtoError> {
        let signing_key = region_request::Body::SigningKey(device.into());
        match self.to_home(device.account, signing_key).await? {
            (home, region_response::Body::SigningKey(key)) => Ok((home, key)),
            _ => Err(ProtoError::new(
                ErrorCode::Internal,
                "unexpected answer to a key lookup",
            )),
        }
    }

    /// Asks the home region to confirm a login that was checked against the key cache, before
    /// the connection's first request that needs it (see [`Session::needs_confirmation`]). A
    /// region that cannot answer now leaves the session unconfirmed (the device retries); a
    /// refusal ends it and forgets the cached key.
    async fn confirm(
        &self,
        session: &Mutex<Session>,
        device: DeviceAddress,
    ) -> Result<(), ProtoError> {
        let answer = match self.signing_key(device).await {
            Ok((_, key)) => {
                self.keys()
                    .handle_lookup(device, &key, self.inner.clock.now_ms());
                Ok(key)
            }
            Err(error) if is_refusal_of_the_device(&error) => {
                self.keys().forget(device);
                Err(error)
            }
            Err(error) => return Err(error),
        };
        let confirmed = session
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .handle_confirmation(answer.as_ref().map_err(Clone::clone).map(|key| {
                let seen = SeenMarks {
                    acked_queue_seq: key.acked_queue_seq,
                    device_seq: key.device_seq,
                };
                (key.signing_key.as_slice(), seen)
            }));
        if let Err(error) = &confirmed {
            tracing::info!(%device, code = ?error.code, "a login from the key cache was refused by its home region");
            self.keys().forget(device);
        }
        confirmed
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, DeviceKeyCache> {
        self.inner
            .keys
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn connect(
        &self,
        device: DeviceAddress,
        home: RegionId,
        connection_id: u64,
        pushes: Arc<PushSlot>,
    ) {
        let first = {
            let mut devices = self
                .inner
                .devices
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let connections = devices.entry(device).or_default();
            connections.push(Connected {
                id: connection_id,
                home,
                pushes,
            });
            connections.len() == 1
        };
        if first && let Some(subscription) = self.inner.subscriptions.get(&home) {
            subscription.handle_change(device, true);
        }
    }

    fn disconnect(&self, device: DeviceAddress, connection_id: u64) {
        let home = {
            let mut devices = self
                .inner
                .devices
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let Some(connections) = devices.get_mut(&device) else {
                return;
            };
            let Some(index) = connections
                .iter()
                .position(|connected| connected.id == connection_id)
            else {
                return;
            };
            let removed = connections.remove(index);
            if !connections.is_empty() {
                return;
            }
            devices.remove(&device);
            removed.home
        };
        if let Some(subscription) = self.inner.subscriptions.get(&home) {
            subscription.handle_change(device, false);
        }
        let ended = self
            .inner
            .watches
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .handle_watcher_left(device);
        for (account, region) in ended {
            if let Some(subscription) = self.inner.subscriptions.get(&region) {
                subscription.handle_watch(device, account, false);
            }
        }
    }

    /// `from` moved the home of an account to another region: the edge routes to the new
    /// home, the account's devices connected here are subscribed there instead, so their
    /// queue hints come from the new home, and watches of its presence by devices here are
    /// placed there, so watchers go on seeing it come and go.
    fn account_moved(&self, from: RegionId, info: &wire::AccountInfo) {
        let account = AccountId(info.account);
        let to = self.learn_home(info);
        if to == from {
            return;
        }
        // Watches first: the old home then has no watcher left to tell that the account's
        // devices left it (and an update it sent anyway is stale, see `presence_update`).
        let watchers = self
            .inner
            .watches
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .handle_moved(account, from, to);
        let (old_home, new_home) = (
            self.inner.subscriptions.get(&from),
            self.inner.subscriptions.get(&to),
        );
        for watcher in watchers {
            if let Some(subscription) = old_home {
                subscription.handle_watch(watcher, account, false);
            }
            if let Some(subscription) = new_home {
                subscription.handle_watch(watcher, account, true);
            }
        }
        let mut moved = Vec::new();
        {
            let mut devices = self
                .inner
                .devices
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            for (device, connections) in devices.iter_mut() {
                if device.account != account {
                    continue;
                }
                let mut was_there = false;
                for connected in connections
                    .iter_mut()
                    .filter(|connected| connected.home == from)
                {
                    connected.home = to;
                    was_there = true;
                }
                if was_there {
                    moved.push(*device);
                }
            }
        }
        for device in moved {
            if let Some(subscription) = old_home {
                subscription.handle_change(device, false);
            }
            if let Some(subscription) = new_home {
                subscription.handle_change(device, true);
            }
        }
        tracing::info!(%account, %from, %to, "an account's home moved");
    }

    /// A presence update or typing notice for `device`'s connections here.
    fn event_to(&self, device: DeviceAddress, event: server_push::Event) {
        let devices = self
            .inner
            .devices
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for connected in devices.get(&device).into_iter().flatten() {
            connected.pushes.handle_event(event.clone());
        }
    }

    fn push_to(
        &self,
        device: DeviceAddress,
        latest_queue_seq: u64,
        entries: Vec<wire::QueueEntry>,
    ) {
        let devices = self
            .inner
            .devices
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let Some(connections) = devices.get(&device) else {
            return;
        };
        for connected in connections {
            connected
                .pushes
                .handle_push(latest_queue_seq, entries.clone());
        }
    }

    /// Keeps a subscription stream open to `region` for the devices homed there and connected
    /// here, re-opening it after a failure and then nudging those devices to fetch what they
    /// may have missed meanwhile.
    async fn subscription(self, region: RegionId) {
        let Some(changes) = self.inner.subscriptions.get(&region).cloned() else {
            return;
        };
        let mut reconnecting = false;
        loop {
            if reconnecting {
                tokio::time::sleep(Duration::from_millis(RESUBSCRIBE_DELAY_MS)).await;
            }
            reconnecting = true;
            // The opening frames list every device connected from here on; a change made
            // meanwhile waits again and is sent after them (or found already sent).
            changes.clear();
            let connected = self.connected_homed_in(region);
            let connection = match self.inner.links.connection(region.0).await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::debug!(%region, %error, "region unreachable for subscriptions");
                    continue;
                }
            };
            let (mut send, mut recv) = match connection.open_bi().await {
                Ok(streams) => streams,
                Err(_) => {
                    self.inner.links.forget(region.0).await;
                    continue;
                }
            };
            let mut subscribed = BTreeSet::new();
            let mut opening = resync_frames(&mut subscribed, connected, true);
            let watched = self
                .inner
                .watches
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .watched_in(region);
            let watches = watched
                .into_iter()
                .map(|(watcher, account)| wire::PresenceWatchFrom {
                    watcher: watcher.into(),
                    account: account.0,
                    watch: true,
                })
                .collect();
            opening.extend(signal_frames(watches, Vec::new()));
            if write_subscribe_frames(&mut send, opening).await.is_err() {
                continue;
            }
            tracing::info!(%region, devices = subscribed.len(), "subscribed to region");
            for &device in &subscribed {
                self.push_to(device, 0, Vec::new());
            }
            let mut reopen = false;
            loop {
                tokio::select! {
                    () = changes.wake.notified() => {
                        let frames = match changes.poll_work() {
                            None => continue,
                            Some(SubscriptionWork::Changes(pending)) => change_frames(&mut subscribed, pending),
                            Some(SubscriptionWork::Resync) => {
                                tracing::info!(%region, "many subscription changes at once; resyncing the stream");
                                resync_frames(&mut subscribed, self.connected_homed_in(region), false)
                            }
                            Some(SubscriptionWork::Signals(frames)) => frames,
                            Some(SubscriptionWork::Reopen) => {
                                tracing::info!(%region, "many presence watches changed at once; re-opening the stream");
                                reopen = true;
                                break;
                            }
                        };
                        // More may wait than one wake-up said.
                        changes.wake.notify_one();
                        if write_subscribe_frames(&mut send, frames).await.is_err() {
                            break;
                        }
                    }
                    frame = net::read_frame::<RegionResponse>(&mut recv) => {
                        match frame {
                            Ok(Some(RegionResponse { body: Some(region_response::Body::QueueAvailable(push)) })) => {
                                if let Ok(device) = push.device.parse() {
                                    self.push_to(device, push.latest_queue_seq, push.entries);
                                }
                            }
                            Ok(Some(RegionResponse { body: Some(region_response::Body::Presence(update)) })) => {
                                self.presence_update(region, update);
                            }
                            Ok(Some(RegionResponse { body: Some(region_response::Body::AccountMoved(moved)) })) => {
                                self.account_moved(region, &moved.account);
                            }
                            Ok(Some(RegionResponse { body: Some(region_response::Body::Typing(notice)) })) => {
                                if let Ok(device) = notice.to.parse() {
                                    self.event_to(device, server_push::Event::Typing(notice));
                                }
                            }
                            Ok(Some(_)) => tracing::warn!(%region, "unexpected frame on a subscription stream"),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            if reopen {
                // Only this stream starts over (the region drops what it held for it when it
                // ends); the link to the region and its other streams stay.
                let _ = send.finish();
                reconnecting = false;
                continue;
            }
            tracing::warn!(%region, "subscription stream lost; re-opening");
            self.inner.links.forget(region.0).await;
        }
    }

    /// `region`'s presence update for a watcher here: delivered if it still watches the
    /// account there.
    fn presence_update(&self, region: RegionId, update: wire::PresenceUpdate) {
        let Ok(watcher) = update.watcher.parse() else {
            return;
        };
        let watches = self
            .inner
            .watches
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .watches(watcher, AccountId(update.info.account), region);
        if watches {
            self.event_to(watcher, server_push::Event::Presence(update.info));
        }
    }

    /// `watcher` begins or ends a watch of `account`, passed to the account's home region.
    async fn watch(
        &self,
        watcher: DeviceAddress,
        account: AccountId,
        watch: bool,
    ) -> Result<(), ProtoError> {
        let home = if watch {
            let home = self.home_of(account).await?;
            self.inner
                .watches
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .handle_watch(watcher, account, home)?;
            Some(home)
        } else {
            self.inner
                .watches
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .handle_unwatch(watcher, account)
        };
        // Watching again asks the region again: the device gets the state now either way.
        if let Some(subscription) = home.and_then(|home| self.inner.subscriptions.get(&home)) {
            subscription.handle_watch(watcher, account, watch);
        }
        Ok(())
    }

    /// The devices connected here whose home is `region`.
    fn connected_homed_in(&self, region: RegionId) -> BTreeSet<DeviceAddress> {
        let devices = self
            .inner
            .devices
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        devices
            .iter()
            .filter(|(_, connections)| connections.iter().any(|connected| connected.home == region))
            .map(|(device, _)| *device)
            .collect()
    }

    /// The home region of `account`: cached, else asked of this edge's region (see
    /// [`HomeCache`]).
    async fn home_of(&self, account: AccountId) -> Result<RegionId, ProtoError> {
        let cached = self
            .inner
            .homes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .home(account, self.inner.clock.now_ms());
        if let Some(home) = cached {
            return Ok(home);
        }
        let lookup =
            region_request::Body::LookupAccount(wire::LookupAccount { account: account.0 });
        let info = match self.region_request(self.inner.region, lookup).await? {
            region_response::Body::Account(info) => info,
            _ => {
                return Err(ProtoError::new(
                    ErrorCode::Internal,
                    "unexpected answer to an account lookup",
                ));
            }
        };
        let home = RegionId(info.region);
        if !self.inner.regions.contains(&home) {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                format!("account {account} lives in unknown region {home}"),
            ));
        }
        Ok(self.learn_home(&info))
    }

    /// `region` refused `account` as not homed there (the edge forgot the home that sent the
    /// request there): asks that region where the account lives now (it moved the account
    /// away, so its copy of the directory knows; this edge's own region's copy may not yet)
    /// and caches the answer.
    async fn follow_move(&self, account: AccountId, region: RegionId) -> Followed {
        let lookup =
            region_request::Body::LookupAccount(wire::LookupAccount { account: account.0 });
        let info = match self.region_request(region, lookup).await {
            Ok(region_response::Body::Account(info)) => info,
            Ok(_) => return Followed::Unknown,
            Err(error) if error.code == ErrorCode::UnknownAccount => return Followed::Nowhere,
            Err(_) => return Followed::Unknown,
        };
        let home = RegionId(info.region);
        if home == region {
            return Followed::Nowhere;
        }
        if !self.inner.regions.contains(&home) {
            return Followed::Unknown;
        }
        self.learn_home(&info);
        Followed::Elsewhere
    }

    /// Whether the cache names a home for `account` other than `region` now.
    fn cached_elsewhere(&self, account: AccountId, region: RegionId) -> bool {
        self.inner
            .homes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .home(account, self.inner.clock.now_ms())
            .is_some_and(|home| home != region)
    }

    /// Caches a home the directory answered (an older epoch than the cached one never wins).
    fn learn_home(&self, info: &wire::AccountInfo) -> RegionId {
        let home = Home {
            region: RegionId(info.region),
            epoch: info.epoch,
        };
        self.inner
            .homes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .handle_lookup(AccountId(info.account), home, self.inner.clock.now_ms())
    }

    /// `region` refused `account` as not homed there: forgets the cached home that sent the
    /// request there (a newer one, from the region's notice of a move, stays).
    fn forget_home(&self, account: AccountId, region: RegionId) {
        self.inner
            .homes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .handle_not_homed(account, region, self.inner.clock.now_ms());
    }

    /// One request to the home region of `account`, answered with that region. If the cached
    /// home refuses the account as not homed there, the edge forgets it, asks that region where
    /// the account lives now (unless the region's notice of the move told it already), and
    /// tries once more there.
    async fn to_home(
        &self,
        account: AccountId,
        body: region_request::Body,
    ) -> Result<(RegionId, region_response::Body), ProtoError> {
        let home = self.home_of(account).await?;
        // Built once: the retry at a moved home sends the same request, not a copy of it.
        let request = RegionRequest { body: Some(body) };
        match self.exchange(home, &request).await {
            Err(error) if error.code == ErrorCode::UnknownAccount => {
                self.forget_home(account, home);
                if !self.cached_elsewhere(account, home)
                    && self.follow_move(account, home).await == Followed::Unknown
                {
                    return Err(home_unknown(account, home));
                }
                let now_home = self.home_of(account).await?;
                if now_home == home {
                    return Err(error);
                }
                tracing::info!(%account, from = %home, to = %now_home, "following a moved home");
                let answer = self.exchange(now_home, &request).await?;
                Ok((now_home, answer))
            }
            answer => answer.map(|answer| (home, answer)),
        }
    }

    /// One request to `region`, answered within [`EDGE_REGION_REQUEST_TIMEOUT_MS`] (connecting
    /// included): a region that cannot be reached is `Unavailable`; a connected region that does
    /// not answer in time is `Overloaded`, with a hint of when to retry. Either way the link is
    /// dropped, so the next request connects afresh.
    async fn region_request(
        &self,
        region: RegionId,
        body: region_request::Body,
    ) -> Result<region_response::Body, ProtoError> {
        self.exchange(region, &RegionRequest { body: Some(body) })
            .await
    }

    /// [`Self::region_request`] of a request built by the caller, which may send it again (to a
    /// moved home) or to several regions (an envelope's commit) without copying it.
    async fn exchange(
        &self,
        region: RegionId,
        request: &RegionRequest,
    ) -> Result<region_response::Body, ProtoError> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(EDGE_REGION_REQUEST_TIMEOUT_MS);
        let links = &self.inner.links;
        let mut attempts = 0;
        let response: RegionResponse = loop {
            attempts += 1;
            let connection =
                match tokio::time::timeout_at(deadline, links.connection(region.0)).await {
                    Ok(Ok(connection)) => connection,
                    Ok(Err(NetError::Remote(error))) => return Err(error),
                    Ok(Err(NetError::Timeout)) | Err(_) => {
                        return Err(region_unreachable(
                            region,
                            "it does not answer the handshake",
                        ));
                    }
                    Ok(Err(error)) => return Err(region_unreachable(region, &error.to_string())),
                };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match net::request(&connection, request, left).await {
                Ok(response) => break response,
                Err(NetError::Timeout) => {
                    links.forget(region.0).await;
                    return Err(ProtoError::new(
                        ErrorCode::Overloaded,
                        format!(
                            "region {region} did not answer within {:.1} s",
                            EDGE_REGION_REQUEST_TIMEOUT_MS as f64 / 1000.0
                        ),
                    )
                    .with_retry_after_ms(OVERLOADED_RETRY_AFTER_MS));
                }
                Err(error @ (NetError::Frame(_) | NetError::Remote(_))) => {
                    return Err(error.to_proto());
                }
                Err(error) => {
                    links.forget(region.0).await;
                    // The region moved while the request was under way (its standby took
                    // over, planned or not): the request goes to the new address at once,
                    // instead of failing back to the device. Every region request is safe to
                    // repeat: the device would send it again the same way.
                    if links.retry_at_new_address(region.0, connection.remote_address(), attempts) {
                        continue;
                    }
                    return Err(region_unreachable(region, &error.to_string()));
                }
            }
        };
        match response.body {
            Some(region_response::Body::Error(error)) => Err(error.into()),
            Some(body) => Ok(body),
            None => Err(ProtoError::new(
                ErrorCode::Internal,
                "empty answer from a region",
            )),
        }
    }

    /// Answers one request of a device: waits for the confirmation of a login from the key
    /// cache where the request needs it, routes it, and keeps the key cache in step with what
    /// the regions answered.
    async fn handle_request(
        &self,
        session: &Mutex<Session>,
        request: ClientRequest,
    ) -> Result<client_response::Body, ProtoError> {
        let (needs_confirmation, device) = {
            let session = session.lock().unwrap_or_else(|poison| poison.into_inner());
            (session.needs_confirmation(&request), session.device())
        };
        if needs_confirmation && let Some(device) = device {
            self.confirm(session, device).await?;
        }
        let news = KeyNews::of(&request);
        let answer = self.route_request(session, request).await;
        let now_ms = self.inner.clock.now_ms();
        match (&answer, device) {
            (Ok(body), _) => self.learn(news, device, body, now_ms),
            (Err(error), Some(device)) if is_refusal_of_the_device(error) => {
                self.keys().forget(device);
            }
            (Err(_), _) => {}
        }
        answer
    }

    /// Keeps the key cache in step with a region's answer `body` to a request of `device` (if
    /// authenticated) that carried `news`.
    fn learn(
        &self,
        news: KeyNews,
        device: Option<DeviceAddress>,
        body: &client_response::Body,
        now_ms: u64,
    ) {
        use client_response::Body as Resp;
        match (news, body, device) {
            (
                KeyNews::Registered {
                    signing_key,
                    one_time_keys,
                    fallback_key,
                },
                Resp::Registered(registered),
                _,
            ) => {
                let account = AccountId(registered.account.account);
                let new_device = DeviceAddress {
                    account,
                    device: DeviceId(registered.device),
                };
                self.keys().handle_registered(
                    new_device,
                    &signing_key,
                    one_time_keys,
                    fallback_key,
                    now_ms,
                );
                let home = Home {
                    region: RegionId(registered.account.region),
                    epoch: registered.account.epoch,
                };
                if self.inner.regions.contains(&home.region) {
                    self.inner
                        .homes
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner())
                        .handle_lookup(account, home, now_ms);
                }
            }
            (KeyNews::Fetched { highest_acked }, Resp::Queue(batch), Some(device)) => {
                let counts = wire::OneTimeKeyCount {
                    remaining: batch.one_time_keys_remaining,
                    fallback_key: batch.fallback_key,
                    cached: false,
                };
                // No entry above the queue's latest was ever acknowledged.
                let highest_acked = highest_acked.min(batch.latest_queue_seq);
                self.keys()
                    .handle_fetched(device, highest_acked, counts, now_ms);
            }
            (KeyNews::Sent { device_seq }, Resp::Sent(outcome), Some(device)) => {
                if let Some(wire::send_outcome::Outcome::Sent(_)) = outcome.outcome {
                    self.keys().handle_stored(device, device_seq, now_ms);
                }
            }
            (KeyNews::Removed { device: removed }, Resp::Devices(_), Some(device)) => {
                self.keys().forget(DeviceAddress {
                    account: device.account,
                    device: DeviceId(removed),
                });
            }
            (_, Resp::KeysUploaded(counts), Some(device)) => {
                self.keys()
                    .handle_keys_uploaded(device, counts.clone(), now_ms);
            }
            _ => {}
        }
    }

    async fn route_request(
        &self,
        session: &Mutex<Session>,
        request: ClientRequest,
    ) -> Result<client_response::Body, ProtoError> {
        use client_request::Body as Req;
        use client_response::Body as Resp;
        let route = session
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .handle_request(&request, self.inner.clock.now_ms())?;
        let Some(body) = request.body else {
            return Err(crate::session::unsupported_request());
        };
        let unexpected = || ProtoError::new(ErrorCode::Internal, "unexpected answer from a region");
        match (route, body) {
            (Route::OwnRegion, Req::Register(register)) => {
                match self
                    .region_request(self.inner.region, region_request::Body::Register(register))
                    .await?
                {
                    region_response::Body::Registered(registered) => {
                        Ok(Resp::Registered(registered))
                    }
                    _ => Err(unexpected()),
                }
            }
            (Route::OwnRegion, Req::LookupName(lookup)) => {
                match self
                    .region_request(self.inner.region, region_request::Body::LookupName(lookup))
                    .await?
                {
                    region_response::Body::Account(info) => Ok(Resp::Account(info)),
                    _ => Err(unexpected()),
                }
            }
            (Route::OwnRegion, Req::LookupAccount(lookup)) => {
                match self
                    .region_request(
                        self.inner.region,
                        region_request::Body::LookupAccount(lookup),
                    )
                    .await?
                {
                    region_response::Body::Account(info) => Ok(Resp::Account(info)),
                    _ => Err(unexpected()),
                }
            }
            (Route::Claim { account, claimer }, Req::ClaimKeys(mut claim)) => {
                claim.claimer = Some(claimer.into());
                match self
                    .to_home(account, region_request::Body::ClaimKeys(claim))
                    .await?
                {
                    (_, region_response::Body::Keys(bundle)) => Ok(Resp::Keys(bundle)),
                    _ => Err(unexpected()),
                }
            }
            (Route::DeviceHome(device), Req::UploadOneTimeKeys(upload)) => {
                let request = wire::ForDevice {
                    device: device.into(),
                    upload: Some(upload),
                    fetch: None,
                    devices: None,
                    presence_privacy: None,
                    push: None,
                    block: None,
                };
                match self
                    .to_home(
                        device.account,
                        region_request::Body::UploadOneTimeKeys(request),
                    )
                    .await?
                {
                    (_, region_response::Body::KeysUploaded(count)) => {
                        Ok(Resp::KeysUploaded(count))
                    }
                    _ => Err(unexpected()),
                }
            }
            (Route::DeviceHome(device), Req::FetchQueue(fetch)) => {
                let request = wire::ForDevice {
                    device: device.into(),
                    upload: None,
                    fetch: Some(fetch),
                    devices: None,
                    presence_privacy: None,
                    push: None,
                    block: None,
                };
                match self
                    .to_home(device.account, region_request::Body::FetchQueue(request))
                    .await?
                {
                    (_, region_response::Body::Queue(batch)) => Ok(Resp::Queue(batch)),
                    _ => Err(unexpected()),
                }
            }
            (Route::Region(region), Req::RequestLink(link)) => {
                match self
                    .region_request(region, region_request::Body::RequestLink(link))
                    .await?
                {
                    region_response::Body::LinkStatus(status) => Ok(Resp::LinkStatus(status)),
                    _ => Err(unexpected()),
                }
            }
            (Route::DeviceHome(device), Req::Devices(command)) => {
                let request = wire::ForDevice {
                    device: device.into(),
                    upload: None,
                    fetch: None,
                    devices: Some(command),
                    presence_privacy: None,
                    push: None,
                    block: None,
                };
                match self
                    .to_home(device.account, region_request::Body::Devices(request))
                    .await?
                {
                    (_, region_response::Body::Pairing(pairing)) => Ok(Resp::Pairing(pairing)),
                    (_, region_response::Body::LinkRequests(requests)) => {
                        Ok(Resp::LinkRequests(requests))
                    }
                    (_, region_response::Body::Devices(devices)) => Ok(Resp::Devices(devices)),
                    _ => Err(unexpected()),
                }
            }
            (Route::DeviceHome(device), Req::Group(command)) => {
                // The account acts as the authenticated device's, whatever the request says.
                let request = wire::ForGroup {
                    account: device.account.0,
                    command,
                };
                // Not `to_home`: a group command's `UnknownAccount` names an account to add,
                // not a home that moved, and any region would forward the command to the
                // directory writer anyway.
                let home = self.home_of(device.account).await?;
                match self
                    .region_request(home, region_request::Body::Group(request))
                    .await?
                {
                    region_response::Body::Group(info) => Ok(Resp::Group(info)),
                    region_response::Body::Groups(list) => Ok(Resp::Groups(list)),
                    _ => Err(unexpected()),
                }
            }
            (Route::Blob { device, region }, Req::Blob(command)) => {
                let request = region_request::Body::Blob(wire::ForBlob {
                    device: device.into(),
                    command,
                });
                let answer = match region {
                    Some(region) => self.region_request(region, request).await?,
                    None => self.to_home(device.account, request).await?.1,
                };
                match answer {
                    region_response::Body::Blob(status) => Ok(Resp::Blob(status)),
                    _ => Err(unexpected()),
                }
            }
            (Route::DeviceHome(device), Req::Block(request)) => {
                let request = wire::ForDevice {
                    device: device.into(),
                    block: Some(request),
                    ..wire::ForDevice::default()
                };
                match self
                    .to_home(device.account, region_request::Body::Block(request))
                    .await?
                {
                    (_, region_response::Body::Blocked(list)) => Ok(Resp::Blocked(list)),
                    _ => Err(unexpected()),
                }
            }
            (Route::DeviceHome(device), Req::Push(request)) => {
                let request = wire::ForDevice {
                    device: device.into(),
                    push: Some(request),
                    ..wire::ForDevice::default()
                };
                match self
                    .to_home(device.account, region_request::Body::Push(request))
                    .await?
                {
                    (_, region_response::Body::Push(state)) => Ok(Resp::Push(state)),
                    _ => Err(unexpected()),
                }
            }
            (Route::DeviceHome(device), Req::PresencePrivacy(request)) => {
                let request = wire::ForDevice {
                    device: device.into(),
                    presence_privacy: Some(request),
                    ..wire::ForDevice::default()
                };
                match self
                    .to_home(
                        device.account,
                        region_request::Body::PresencePrivacy(request),
                    )
                    .await?
                {
                    (_, region_response::Body::PresencePrivacy(privacy)) => {
                        Ok(Resp::PresencePrivacy(privacy))
                    }
                    _ => Err(unexpected()),
                }
            }
            (
                Route::Watch {
                    watcher,
                    account,
                    watch,
                },
                Req::WatchPresence(request),
            ) => {
                self.watch(watcher, account, watch).await?;
                Ok(Resp::Watching(request))
            }
            (Route::Typing { from, to, typing }, Req::Typing(signal)) => {
                let home = self.home_of(to).await?;
                // Ephemeral: a region this edge cannot reach now never hears of it.
                if let Some(subscription) = self.inner.subscriptions.get(&home) {
                    subscription.handle_typing(wire::TypingForward {
                        from: from.into(),
                        to: to.0,
                        typing,
                        group: 0,
                    });
                }
                Ok(Resp::TypingSent(signal))
            }
            (
                Route::GroupTyping {
                    from,
                    group,
                    typing,
                },
                Req::Typing(signal),
            ) => {
                // The edge does not know where the members are homed: every region hears it
                // and passes it to the members homed there (ephemeral: a region this edge
                // cannot reach now never does).
                for subscription in self.inner.subscriptions.values() {
                    subscription.handle_typing(wire::TypingForward {
                        from: from.into(),
                        to: 0,
                        typing,
                        group: group.0,
                    });
                }
                Ok(Resp::TypingSent(signal))
            }
            (Route::Fanout(parsed), Req::Send(envelope)) => {
                self.send(*parsed, envelope).await.map(Resp::Sent)
            }
            _ => Err(ProtoError::new(
                ErrorCode::Internal,
                "request routed inconsistently",
            )),
        }
    }

    /// Carries a device's upload or download stream to the region: the request frame, then the
    /// raw bytes one way and the region's answer the other. A device stream that breaks resets
    /// the region's, so the region keeps only the units it committed.
    async fn blob_stream(
        &self,
        device: DeviceAddress,
        region: Option<RegionId>,
        command: wire::BlobCommand,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let upload = matches!(
            command.command,
            Some(wire::blob_command::Command::Upload(_))
        );
        let opened = within_answer_timeout(async {
            let region = match region {
                Some(region) => region,
                None => self.home_of(device.account).await?,
            };
            let connection = self
                .inner
                .links
                .connection(region.0)
                .await
                .map_err(|error| region_unreachable(region, &error.to_string()))?;
            let (mut region_send, region_recv) = connection
                .open_bi()
                .await
                .map_err(|error| region_unreachable(region, &error.to_string()))?;
            let request = RegionRequest {
                body: Some(region_request::Body::Blob(wire::ForBlob {
                    device: device.into(),
                    command,
                })),
            };
            net::write_frame(&mut region_send, &request)
                .await
                .map_err(|error| region_unreachable(region, &error.to_string()))?;
            Ok((region_send, region_recv))
        })
        .await;
        let (mut region_send, mut region_recv) = match opened {
            Ok(streams) => streams,
            Err(error) => {
                let _ = net::respond(send, &error_response(error)).await;
                return;
            }
        };
        if upload && copy_stream(&mut recv, &mut region_send).await.is_ok() {
            let _ = region_send.finish();
        } else if upload {
            // The device's stream broke (the region keeps what it committed), or the region
            // stopped reading (a refusal): either way the region's answer says where the upload
            // stands, and goes to the device if it is still there.
            let _ = region_send.reset(0u32.into());
        } else {
            let _ = region_send.finish();
        }
        let head = match tokio::time::timeout(
            Duration::from_millis(BLOB_STREAM_IDLE_TIMEOUT_MS),
            net::read_frame::<RegionResponse>(&mut region_recv),
        )
        .await
        {
            Ok(Ok(Some(RegionResponse {
                body: Some(region_response::Body::Blob(status)),
            }))) => client_response::Body::Blob(status),
            Ok(Ok(Some(RegionResponse {
                body: Some(region_response::Body::Error(error)),
            }))) => client_response::Body::Error(error),
            Ok(Ok(_)) => client_response::Body::Error(
                ProtoError::new(ErrorCode::Internal, "unexpected answer from a region").into(),
            ),
            Ok(Err(error)) => client_response::Body::Error(
                ProtoError::new(
                    ErrorCode::Unavailable,
                    format!("the region's stream broke: {error}"),
                )
                .into(),
            ),
            Err(_) => client_response::Body::Error(
                ProtoError::new(
                    ErrorCode::Overloaded,
                    "the region did not answer the blob stream",
                )
                .with_retry_after_ms(OVERLOADED_RETRY_AFTER_MS)
                .into(),
            ),
        };
        let failed = matches!(head, client_response::Body::Error(_));
        let head = ClientResponse { body: Some(head) };
        if upload || failed {
            let _ = net::respond(send, &head).await;
            return;
        }
        if net::write_frame(&mut send, &head).await.is_err() {
            return;
        }
        if copy_stream(&mut region_recv, &mut send).await.is_ok() {
            let _ = send.finish();
        } else {
            let _ = send.reset(0u32.into());
        }
    }

    /// Forwards an envelope to every destination region in parallel; "sent" only when all
    /// of them committed. A region refusing an account the edge routed there as not homed
    /// there (it moved) is asked where the account lives now, and the envelope goes again to
    /// the regions as they are then (those that committed answer it as a duplicate), up to
    /// [`SEND_ROUTE_ROUNDS_MAX`] times. A commit is refused `UnknownAccount` only for an
    /// account that moved (a region skips recipients it does not hold, and the sender is
    /// authenticated), so a refusal the edge could not route around is answered `Unavailable`,
    /// never passed on: a device takes `UnknownAccount` for good and would give up an envelope
    /// that may be committed.
    async fn send(
        &self,
        parsed: wire::ParsedEnvelope,
        envelope: wire::Envelope,
    ) -> Result<wire::SendOutcome, ProtoError> {
        let mut commit = RegionRequest {
            body: Some(region_request::Body::Commit(wire::CommitEnvelope {
                envelope,
                sender_region: 0,
                routed: Vec::new(),
            })),
        };
        let mut round = 1;
        loop {
            let (outcome, refused) = self.send_once(&parsed, &mut commit).await?;
            let Some(&(first, first_region)) = refused.first() else {
                return outcome;
            };
            let mut moved = false;
            for (account, region) in refused {
                // The region's notice of the move may have taught the cache already.
                moved |= self.cached_elsewhere(account, region)
                    || self.follow_move(account, region).await == Followed::Elsewhere;
            }
            if !moved || round == SEND_ROUTE_ROUNDS_MAX {
                return Err(home_unknown(first, first_region));
            }
            round += 1;
        }
    }

    /// One round of [`Self::send`]: the outcome, and the accounts a region refused as not
    /// homed there (with that region), which the edge has forgotten.
    async fn send_once(
        &self,
        parsed: &wire::ParsedEnvelope,
        commit: &mut RegionRequest,
    ) -> Result<
        (
            Result<wire::SendOutcome, ProtoError>,
            Vec<(AccountId, RegionId)>,
        ),
        ProtoError,
    > {
        let mut homes = BTreeMap::new();
        for &account in parsed
            .recipient_accounts
            .iter()
            .chain(std::iter::once(&parsed.sender.account))
        {
            homes.insert(account, self.home_of(account).await?);
        }
        let regions = fanout_regions(parsed, &homes)?;
        let sender_region = homes
            .get(&parsed.sender.account)
            .copied()
            .unwrap_or(self.inner.region);
        if let Some(region_request::Body::Commit(body)) = &mut commit.body {
            body.sender_region = sender_region.0;
            body.routed = homes
                .iter()
                .map(|(account, region)| wire::RoutedHome {
                    account: account.0,
                    region: region.0,
                })
                .collect();
        }
        let mut aggregate = SendAggregate::new(regions.clone());
        let mut refused = Vec::new();
        if let Some(&region) = regions.first()
            && regions.len() == 1
        {
            // The usual case (every account homed in one region): committed in this task, as
            // a task of its own would only add a spawn and a wake-up.
            let outcome = self.commit(region, commit).await;
            self.handle_commit_outcome(&homes, &mut aggregate, &mut refused, region, outcome);
        } else {
            // One request for every destination: the regions share it instead of a copy each.
            let shared = Arc::new(std::mem::take(commit));
            let mut commits = JoinSet::new();
            for region in regions {
                let service = self.clone();
                let shared = shared.clone();
                commits.spawn(async move { (region, service.commit(region, &shared).await) });
            }
            let mut failed = None;
            while let Some(joined) = commits.join_next().await {
                match joined {
                    Ok((region, outcome)) => {
                        self.handle_commit_outcome(
                            &homes,
                            &mut aggregate,
                            &mut refused,
                            region,
                            outcome,
                        );
                    }
                    Err(error) => failed = Some(error),
                }
            }
            // Every task ended: the request is the edge's alone again.
            *commit = Arc::try_unwrap(shared).unwrap_or_else(|shared| (*shared).clone());
            if let Some(error) = failed {
                return Err(ProtoError::new(
                    ErrorCode::Internal,
                    format!("commit task failed: {error}"),
                ));
            }
        }
        let mut outcome = aggregate.poll_result().unwrap_or_else(|| {
            Err(ProtoError::new(
                ErrorCode::Internal,
                "a destination region never answered",
            ))
        });
        if let Ok(wire::SendOutcome {
            outcome: Some(wire::send_outcome::Outcome::Sent(everywhere)),
        }) = &mut outcome
        {
            everywhere.home_region = sender_region.0;
        }
        Ok((outcome, refused))
    }

    /// One destination region's commit of an envelope (`request`, a `Commit`).
    async fn commit(
        &self,
        region: RegionId,
        request: &RegionRequest,
    ) -> Result<wire::SendOutcome, ProtoError> {
        match self.exchange(region, request).await? {
            region_response::Body::Committed(outcome) => Ok(outcome),
            _ => Err(ProtoError::new(
                ErrorCode::Internal,
                "unexpected answer to a commit",
            )),
        }
    }

    /// Counts `region`'s `outcome` of a send whose accounts live in `homes`. A region that
    /// holds none of the accounts sent there makes the edge forget the homes that named it
    /// (noted in `refused`), so the send is routed afresh.
    fn handle_commit_outcome(
        &self,
        homes: &BTreeMap<AccountId, RegionId>,
        aggregate: &mut SendAggregate,
        refused: &mut Vec<(AccountId, RegionId)>,
        region: RegionId,
        outcome: Result<wire::SendOutcome, ProtoError>,
    ) {
        if let Err(error) = &outcome
            && error.code == ErrorCode::UnknownAccount
        {
            for (&account, &home) in homes {
                if home == region {
                    self.forget_home(account, home);
                    refused.push((account, region));
                }
            }
        }
        aggregate.handle_region_outcome(region, outcome);
    }
}

/// What a device's request may teach the key cache once a region accepted it.
enum KeyNews {
    /// A registration: the new device's key and key counts.
    Registered {
        signing_key: Vec<u8>,
        one_time_keys: usize,
        fallback_key: bool,
    },
    /// A fetch that acknowledged entries up to `highest_acked` (0: none).
    Fetched { highest_acked: u64 },
    /// An envelope numbered `device_seq`.
    Sent { device_seq: u64 },
    /// The removal of the account's device number `device`.
    Removed { device: u32 },
    /// Nothing.
    Nothing,
}

impl KeyNews {
    fn of(request: &ClientRequest) -> Self {
        use client_request::Body as Req;
        match &request.body {
            Some(Req::Register(register)) => KeyNews::Registered {
                signing_key: register.signing_key.clone(),
                one_time_keys: register.one_time_keys.len(),
                fallback_key: register.fallback_key.is_some(),
            },
            Some(Req::FetchQueue(fetch)) => KeyNews::Fetched {
                highest_acked: fetch
                    .ack
                    .as_ref()
                    .and_then(|ack| ack.queue_seqs.iter().max().copied())
                    .unwrap_or(0),
            },
            Some(Req::Send(envelope)) => KeyNews::Sent {
                device_seq: envelope.device_seq,
            },
            Some(Req::Devices(wire::DeviceCommand {
                command: Some(wire::device_command::Command::Remove(remove)),
            })) => KeyNews::Removed {
                device: remove.device,
            },
            _ => KeyNews::Nothing,
        }
    }
}

/// What asking a region where an account it refused lives now (`EdgeService::follow_move`)
/// taught the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Followed {
    /// The account lives in another region now (cached).
    Elsewhere,
    /// The region says it lives there, or nowhere: its refusal stands.
    Nowhere,
    /// The region did not say (unreachable, failing, or naming a region this edge does not
    /// know): the account moved, but where to is not known yet.
    Unknown,
}

/// The answer to a request for `account` that `region` refused as not homed there when the
/// edge could not learn where it lives now: retryable, since the account exists and moved (a
/// device that took the refusal for good would give up a message that may be committed).
fn home_unknown(account: AccountId, region: RegionId) -> ProtoError {
    ProtoError::new(
        ErrorCode::Unavailable,
        format!(
            "account {account} moved away from region {region}, and its new home is not known \
             here yet; retry later"
        ),
    )
    .with_retry_after_ms(MOVED_HOME_UNKNOWN_RETRY_AFTER_MS)
}

/// Whether a region's `error` to a request of a device refuses the device itself (removed, or
/// its state went back), so that its cached key must go.
fn is_refusal_of_the_device(error: &ProtoError) -> bool {
    matches!(
        error.code,
        ErrorCode::UnknownAccount | ErrorCode::DeviceRolledBack
    )
}

/// Runs `work` (requests to regions on a device's behalf) for at most
/// [`EDGE_ANSWER_TIMEOUT_MS`], so the device always gets an answer before its own request
/// timeout: past it, the regions are `Overloaded`. What the regions still do is idempotent
/// (a retried send is deduplicated by its client message id).
async fn within_answer_timeout<T>(
    work: impl Future<Output = Result<T, ProtoError>>,
) -> Result<T, ProtoError> {
    tokio::time::timeout(Duration::from_millis(EDGE_ANSWER_TIMEOUT_MS), work)
        .await
        .unwrap_or_else(|_| {
            Err(ProtoError::new(
                ErrorCode::Overloaded,
                format!(
                    "the regions did not answer within {:.1} s",
                    EDGE_ANSWER_TIMEOUT_MS as f64 / 1000.0
                ),
            )
            .with_retry_after_ms(OVERLOADED_RETRY_AFTER_MS))
        })
}

/// Copies a stream's bytes to another until it finishes; an error when either side broke.
async fn copy_stream(
    from: &mut quinn::RecvStream,
    to: &mut quinn::SendStream,
) -> Result<(), NetError> {
    loop {
        let chunk = tokio::time::timeout(
            Duration::from_millis(BLOB_STREAM_IDLE_TIMEOUT_MS),
            from.read_chunk(usize::MAX, true),
        )
        .await
        .map_err(|_| NetError::Timeout)?
        .map_err(|error| NetError::Io(std::io::Error::other(error)))?;
        match chunk {
            Some(chunk) => to
                .write_chunk(chunk.bytes)
                .await
                .map_err(|error| NetError::Io(std::io::Error::other(error)))?,
            None => return Ok(()),
        }
    }
}

fn region_unreachable(region: RegionId, problem: &str) -> ProtoError {
    ProtoError::new(
        ErrorCode::Unavailable,
        format!("region {region} is unreachable ({problem})"),
    )
}

/// Writes `frames` on a subscription stream, in order.
async fn write_subscribe_frames(
    send: &mut quinn::SendStream,
    frames: Vec<wire::Subscribe>,
) -> Result<(), NetError> {
    for frame in frames {
        let frame = RegionRequest {
            body: Some(region_request::Body::Subscribe(frame)),
        };
        net::write_frame(send, &frame).await?;
    }
    Ok(())
}

/// The per-region subscription tasks, started by [`EdgeService::run`].
pub struct SubscriptionsToStart(Vec<RegionId>);

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use relay_proto::limits::QUEUE_PUSH_BYTES_MAX;

    use super::*;

    fn queue(latest_queue_seq: u64) -> server_push::Event {
        queue_with(latest_queue_seq, &[])
    }

    /// A queue push with receipts numbered `seqs` along.
    fn queue_with(latest_queue_seq: u64, seqs: &[u64]) -> server_push::Event {
        server_push::Event::QueueAvailable(DeviceQueueAvailable {
            device: wire::DeviceAddr::default(),
            latest_queue_seq,
            entries: entries(seqs),
        })
    }

    fn entries(seqs: &[u64]) -> Vec<wire::QueueEntry> {
        seqs.iter()
            .map(|&queue_seq| wire::QueueEntry {
                queue_seq,
                item: Some(wire::queue_entry::Item::Receipt(wire::QueuedReceipt {
                    chat: vec![7; 32],
                    client_message_id: vec![1; 16],
                    recipient: wire::DeviceAddr {
                        account: 2,
                        device: 1,
                    },
                    state: wire::ReceiptState::Delivered as i32,
                    at_ms: 5,
                    sender: wire::DeviceAddr {
                        account: 1,
                        device: 1,
                    },
                })),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_push_slot_keeps_the_highest_announcement_and_misses_none() {
        let slot = PushSlot::default();
        // Announced before anyone waits: kept, the highest standing for the others.
        slot.handle_push(3, Vec::new());
        slot.handle_push(9, Vec::new());
        slot.handle_push(4, Vec::new());
        assert_eq!(slot.next().await, queue(9));
        // A nudge without a sequence (0) is still a push.
        slot.handle_push(0, Vec::new());
        assert_eq!(slot.next().await, queue(0));
        // Nothing waiting: the next push wakes the writer.
        let slot = Arc::new(slot);
        let writer = tokio::spawn({
            let slot = slot.clone();
            async move { slot.next().await }
        });
        slot.handle_push(12, Vec::new());
        assert_eq!(writer.await.expect("writer"), queue(12));
        let queue = slot.queue.lock().expect("queue");
        assert!(
            queue.announced.is_none() && queue.entries.entries().is_empty(),
            "nothing left over"
        );
    }

    #[tokio::test]
    async fn a_push_slot_keeps_one_gapless_run_of_entries_within_its_budget() {
        let slot = PushSlot::default();
        // Runs that follow each other join; the highest announcement stands.
        slot.handle_push(4, entries(&[3, 4]));
        slot.handle_push(6, entries(&[5, 6]));
        assert_eq!(slot.next().await, queue_with(6, &[3, 4, 5, 6]));
        // One that does not follow (a gap, or a repeat) stays for the device to fetch, and so
        // does everything after it: the device takes only a run that follows its cursor.
        slot.handle_push(8, entries(&[7, 8]));
        slot.handle_push(11, entries(&[10, 11]));
        slot.handle_push(12, entries(&[8, 9]));
        slot.handle_push(13, Vec::new());
        assert_eq!(slot.next().await, queue_with(13, &[7, 8]));
        // A hint alone, after entries went: nothing is sent along again.
        slot.handle_push(13, Vec::new());
        assert_eq!(slot.next().await, queue(13));
        // The budget: entries stop at QUEUE_PUSH_BYTES_MAX encoded.
        let many: Vec<u64> = (100..100 + QUEUE_PUSH_BYTES_MAX as u64).collect();
        slot.handle_push(many[many.len() - 1], entries(&many));
        let server_push::Event::QueueAvailable(available) = slot.next().await else {
            panic!("a queue push");
        };
        let bytes: usize = available
            .entries
            .iter()
            .map(|entry| entry.encoded_len())
            .sum();
        assert!(bytes <= QUEUE_PUSH_BYTES_MAX, "{bytes} bytes along");
        assert!(available.entries.len() > 1 && available.entries.len() < many.len());
        assert_eq!(available.entries[0].queue_seq, 100);
        assert_eq!(available.latest_queue_seq, many[many.len() - 1]);
    }

    #[tokio::test]
    async fn a_push_slot_keeps_the_latest_presence_and_typing_of_each_and_is_bounded() {
        let slot = PushSlot::default();
        let presence = |account: u64, state: wire::PresenceState| {
            server_push::Event::Presence(wire::PresenceInfo {
                account,
                state: state as i32,
                last_seen_ms: 0,
            })
        };
        let typing_in = |account: u64, group: u64, typing: bool| {
            server_push::Event::Typing(wire::TypingNotice {
                to: wire::DeviceAddr::default(),
                from: wire::DeviceAddr { account, device: 1 },
                typing,
                group,
            })
        };
        let typing = |account: u64, typing: bool| typing_in(account, 0, typing);
        slot.handle_event(presence(5, wire::PresenceState::Online));
        slot.handle_event(typing(5, true));
        slot.handle_event(typing_in(5, 3, true));
        slot.handle_event(presence(5, wire::PresenceState::Offline));
        slot.handle_event(typing(5, false));
        slot.handle_push(7, Vec::new());
        // The queue hint first, then the latest of each event (a group's typing apart).
        assert_eq!(slot.next().await, queue(7));
        assert_eq!(slot.next().await, presence(5, wire::PresenceState::Offline));
        assert_eq!(slot.next().await, typing(5, false));
        assert_eq!(slot.next().await, typing_in(5, 3, true));
        // A device that reads nothing holds at most the bound.
        for account in 0..(DEVICE_EVENTS_WAITING_MAX as u64 + 50) {
            slot.handle_event(presence(account, wire::PresenceState::Online));
        }
        let held = slot.events.lock().expect("events").len();
        assert_eq!(held, DEVICE_EVENTS_WAITING_MAX);
    }
}
