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
//!
//! This file holds the service's state, device connections, their streams and the control
//! stream; beside it, `routing` (a request's way to its regions: homes, sends, answers combined,
//! blob streams), `region_links` (the subscription stream to each region) and `push_slot` (the
//! push waiting for one device connection).

use std::collections::{BTreeMap, HashMap};
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
use relay_proto::limits::AUTH_NONCE_BYTES;
use relay_proto::wire::{
    self, ClientRequest, ClientResponse, ServerPush, client_request, client_response,
    region_request, region_response, server_push,
};
use relay_proto::{AccountId, DeviceAddress, ErrorCode, ProtoError, RegionId};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::acks::AckGathering;
use crate::admission::{AddressLimiter, AdmissionLimits, Refusal};
use crate::cache::HomeCache;
use crate::config::EdgeConfig;
use crate::keys::DeviceKeyCache;
use crate::limits::{ADMISSION_OVERLOADED_RETRY_MS, ADMISSION_REFUSAL_WAIT_MS};
use crate::limits::{AUTH_TIMEOUT_MS, DEVICE_CONNECTIONS_MAX};
use crate::presence::Watches;
use crate::session::{Route, SeenMarks, Session, SessionLimits};
use crate::subscriptions::{PendingSubscriptions, SubscriptionWork};

mod push_slot;
mod queue_requests;
mod region_links;
mod routing;

use push_slot::PushSlot;
use routing::{is_refusal_of_the_device, within_answer_timeout};

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
    /// Devices' acks on their way to their home regions (see [`crate::acks`]).
    acks: Mutex<AckGathering<AckWaiter>>,
}

/// Where the answer to one gathered ack goes.
type AckWaiter = tokio::sync::oneshot::Sender<Result<wire::QueueBatch, ProtoError>>;

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
            acks: Mutex::new(AckGathering::default()),
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
}

/// The per-region subscription tasks, started by [`EdgeService::run`].
pub struct SubscriptionsToStart(Vec<RegionId>);
