//! The region's QUIC shell: accepts internal connections (mutual TLS), runs each request's
//! transaction through [`crate::core`], performs the effects after commit (pushes to the edges
//! holding the devices, cross-region receipt delivery), and forwards directory writes to the
//! directory writer region.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fdb_layers::keys::IdempotencyKey;
use fdb_layers::{Database, EmbeddedOptions, StoreError, directory, outbox};
use prost::Message;
use quinn::rustls::RootCertStore;
use relay_proto::clock::{Clock, SystemClock};
use relay_proto::net::{
    self, NetError, PeerLinks, PeerResolver, SocketFactory, TlsIdentity, TokioSockets,
};
use relay_proto::planted::PlantedBug;
use relay_proto::wire::{
    self, DeviceQueueAvailable, RegionRequest, RegionResponse, region_request, region_response,
};
use relay_proto::{AccountId, DeviceAddress, ErrorCode, ProtoError, RegionId};
use tokio::sync::{Notify, mpsc};

use crate::config::{ConfigError, PeersFile, RegionConfig};
use crate::core::{self, Effects};

/// How long a request to another region may take.
pub const PEER_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Receipts sent to another region in one request.
pub const OUTBOX_BATCH_ENTRIES_MAX: usize = 256;
/// Pause between outbox delivery attempts when a destination is unreachable.
pub const OUTBOX_RETRY_DELAY_MS: u64 = 500;
/// Pushes buffered for one subscribed edge stream before new ones are dropped (they are hints).
pub const SUBSCRIPTION_PUSHES_MAX: usize = 4096;
/// Pause between two retention sweeps of the device queues.
pub const RETENTION_SWEEP_INTERVAL_MS: u64 = 60_000;
/// Most sweep transactions in one retention sweep, so one sweep stays bounded.
pub const RETENTION_SWEEP_TRANSACTIONS_MAX: usize = 64;

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
}

type PushSender = mpsc::Sender<DeviceQueueAvailable>;

/// What a region runs on, built by the caller: [`RegionService::bind`] makes them from a
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
    next_stream_id: AtomicU64,
    outbox_wake: Notify,
    /// The first half of every idempotency key this process issues: unique per process start.
    key_prefix: u64,
    /// The second half: a counter.
    next_key: AtomicU64,
    clock: Arc<dyn Clock>,
}

fn error_response(error: ProtoError) -> RegionResponse {
    RegionResponse {
        body: Some(region_response::Body::Error(error.into())),
    }
}

/// How late the planted bug [`PlantedBug::AckBeforeCommit`] commits what it acknowledged.
const PLANTED_COMMIT_DELAY: Duration = Duration::from_millis(500);

/// The answer to a request whose transaction failed in the store. A commit that failed in
/// storage (a full disk, an I/O error; it may or may not be durable) and the refusals after it
/// are `StorageUnavailable`: nothing is acknowledged, and the client retries under the same
/// ids, which the layers deduplicate.
fn store_failure(error: StoreError) -> ProtoError {
    match error {
        StoreError::Unavailable(_) | StoreError::Storage(_) => {
            tracing::warn!(%error, "store unavailable");
            ProtoError::new(
                ErrorCode::StorageUnavailable,
                "the region's storage is unavailable; retry later",
            )
        }
        error => {
            tracing::error!(%error, "store failure");
            ProtoError::new(ErrorCode::Internal, "storage failure; retry later")
        }
    }
}

impl RegionService {
    /// Opens the store and binds the internal QUIC server from a configuration. Nothing is
    /// served until [`Self::run`].
    pub fn bind(config: &RegionConfig) -> Result<(Self, SocketAddr), RegionError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ConfigError::Read {
            path: config.data_dir.clone(),
            source,
        })?;
        let db = Database::open(
            &config.data_dir.join("region.redb"),
            EmbeddedOptions::default(),
        )?;
        let roots = net::load_roots(&config.ca_cert)?;
        let identity = TlsIdentity::load(&config.cert, &config.key)?;
        Self::new(RegionParts {
            region: RegionId(config.region),
            directory_writer: RegionId(config.directory_writer),
            listen: config.listen,
            db,
            sockets: &TokioSockets,
            identity,
            roots,
            peers: PeersFile::resolver(config.peers_file.clone()),
            clock: Arc::new(SystemClock),
            boot_nonce: boot_nonce(),
        })
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
        } = parts;
        if region.0 == 0 || directory_writer.0 == 0 {
            return Err(ConfigError::Invalid("region numbers start at 1".into()).into());
        }
        let server = net::server_config(identity.clone(), Some(roots.clone()), net::ALPN_INTERNAL)?;
        let endpoint = net::bind_server_endpoint(sockets, listen, server, &identity)?;
        let address = endpoint.local_addr().map_err(NetError::Io)?;
        let client = net::client_config(roots, Some(identity), net::ALPN_INTERNAL)?;
        let peers = PeerLinks::new(endpoint.clone(), client, net::REGION_SERVER_NAME, peers);
        let inner = Inner {
            region,
            writer: directory_writer,
            db,
            peers,
            endpoint,
            subscriptions: Mutex::new(HashMap::new()),
            next_stream_id: AtomicU64::new(1),
            outbox_wake: Notify::new(),
            key_prefix: boot_nonce,
            next_key: AtomicU64::new(1),
            clock,
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
        let pump = tokio::spawn(self.clone().outbox_pump());
        let sweeper = tokio::spawn(self.clone().retention_sweeper());
        let accept = async {
            while let Some(incoming) = self.inner.endpoint.accept().await {
                let service = self.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(connection) => service.serve_connection(connection).await,
                        Err(error) => tracing::debug!(%error, "internal handshake failed"),
                    }
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = shutdown => {}
        }
        pump.abort();
        sweeper.abort();
        self.inner
            .endpoint
            .close(0u32.into(), b"region shutting down");
        Ok(())
    }

    async fn serve_connection(self, connection: quinn::Connection) {
        loop {
            let (send, recv) = match connection.accept_bi().await {
                Ok(streams) => streams,
                Err(error) => {
                    tracing::debug!(%error, "internal connection ended");
                    return;
                }
            };
            let service = self.clone();
            tokio::spawn(async move { service.serve_stream(send, recv).await });
        }
    }

    async fn serve_stream(self, send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let request = match net::read_frame::<RegionRequest>(&mut recv).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                let _ = net::respond(send, &error_response(error.to_proto())).await;
                return;
            }
        };
        if let Some(region_request::Body::Subscribe(first)) = request.body {
            self.serve_subscription(first, send, recv).await;
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
            return Err(ProtoError::invalid("empty region request"));
        };
        match body {
            Req::Commit(commit) => {
                let sender_region = RegionId(commit.sender_region);
                let envelope = commit.envelope;
                let now = self.inner.clock.now_ms();
                if relay_proto::planted::is_planted(PlantedBug::AckBeforeCommit) {
                    return self.commit_late(envelope, sender_region, now).await;
                }
                let outcome = self
                    .transact(|tx| {
                        let envelope = envelope.clone();
                        async move {
                            core::commit_envelope(&tx, local, &envelope, sender_region, now).await
                        }
                    })
                    .await?;
                Ok(Resp::Committed(outcome))
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
                    .create_account(&create.name, RegionId(create.home_region))
                    .await?;
                Ok(Resp::Account(core::account_info(&record)))
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
                let remaining = self
                    .transact(|tx| {
                        let upload = upload.clone();
                        async move { core::upload_one_time_keys(&tx, device, &upload, &key).await }
                    })
                    .await?;
                Ok(Resp::KeysUploaded(wire::OneTimeKeyCount { remaining }))
            }
            Req::FetchQueue(for_device) => {
                let device = for_device.device.parse()?;
                let fetch = for_device.fetch.unwrap_or_default();
                let now = self.inner.clock.now_ms();
                let batch = self
                    .transact(|tx| {
                        let fetch = fetch.clone();
                        async move { core::fetch_and_ack(&tx, local, device, &fetch, now).await }
                    })
                    .await?;
                Ok(Resp::Queue(batch))
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
                }))
            }
            Req::Subscribe(_) => Err(ProtoError::invalid("subscribe opens its own stream")),
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
    /// [`PLANTED_COMMIT_DELAY`] later (lost if the process dies in between).
    async fn commit_late(
        &self,
        envelope: relay_proto::wire::Envelope,
        sender_region: RegionId,
        now: u64,
    ) -> Result<region_response::Body, ProtoError> {
        let local = self.inner.region;
        let peek = self.inner.db.create_transaction().map_err(store_failure)?;
        let (outcome, _) = core::commit_envelope(&peek, local, &envelope, sender_region, now)
            .await
            .map_err(store_failure)??;
        drop(peek);
        let service = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(PLANTED_COMMIT_DELAY).await;
            let committed =
                service
                    .transact(|tx| {
                        let envelope = envelope.clone();
                        async move {
                            core::commit_envelope(&tx, local, &envelope, sender_region, now).await
                        }
                    })
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
        for (device, latest_queue_seq) in effects.notify {
            let Some(streams) = subscriptions.get(&device) else {
                continue;
            };
            let push = DeviceQueueAvailable {
                device: device.into(),
                latest_queue_seq,
            };
            for sender in streams.values() {
                if sender.try_send(push.clone()).is_err() {
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
        let local = self.inner.region;
        let record = if self.inner.writer == local {
            self.create_account(&register.name, local).await?
        } else {
            let request = RegionRequest {
                body: Some(region_request::Body::CreateAccount(wire::CreateAccount {
                    name: register.name.clone(),
                    home_region: local.0,
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
    /// existing name homed in the same region is returned; the home region refuses it if the
    /// account already has a device.
    async fn create_account(
        &self,
        name: &str,
        home: RegionId,
    ) -> Result<directory::AccountRecord, ProtoError> {
        wire::validate_account_name(name)?;
        let name = name.to_owned();
        let key = self.idempotency_key();
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

    /// Resolves an account locally (the writer, or this replica's cache), else asks the writer
    /// and caches the answer.
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
            return Ok(core::account_info(&record));
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
                let record = record_of(&info);
                self.inner
                    .db
                    .transact(|tx| {
                        let record = record.clone();
                        async move { directory::put_account(&tx, &record).await }
                    })
                    .await
                    .map_err(store_failure)?;
                Ok(info)
            }
            Some(region_response::Body::Error(error)) => Err(error.into()),
            _ => Err(ProtoError::new(
                ErrorCode::Internal,
                "unexpected directory answer",
            )),
        }
    }

    async fn to_writer(&self, request: &RegionRequest) -> Result<RegionResponse, ProtoError> {
        self.inner
            .peers
            .request(
                self.inner.writer.0,
                request,
                Duration::from_millis(PEER_REQUEST_TIMEOUT_MS),
            )
            .await
            .map_err(|error| error.to_proto())
    }

    async fn serve_subscription(
        self,
        first: wire::Subscribe,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let stream_id = self.inner.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let (push_sender, mut pushes) = mpsc::channel(SUBSCRIPTION_PUSHES_MAX);
        self.change_subscriptions(stream_id, &push_sender, &first);
        let writer = async {
            while let Some(push) = pushes.recv().await {
                let frame = RegionResponse {
                    body: Some(region_response::Body::QueueAvailable(push)),
                };
                if net::write_frame(&mut send, &frame).await.is_err() {
                    return;
                }
            }
        };
        let reader = async {
            loop {
                match net::read_frame::<RegionRequest>(&mut recv).await {
                    Ok(Some(RegionRequest {
                        body: Some(region_request::Body::Subscribe(change)),
                    })) => {
                        self.change_subscriptions(stream_id, &push_sender, &change);
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
        let mut subscriptions = self
            .inner
            .subscriptions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        subscriptions.retain(|_, streams| {
            streams.remove(&stream_id);
            !streams.is_empty()
        });
    }

    fn change_subscriptions(&self, stream_id: u64, sender: &PushSender, change: &wire::Subscribe) {
        let mut subscriptions = self
            .inner
            .subscriptions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for device in change.add.iter().filter_map(|device| device.parse().ok()) {
            subscriptions
                .entry(device)
                .or_default()
                .insert(stream_id, sender.clone());
        }
        for device in change
            .remove
            .iter()
            .filter_map(|device| device.parse().ok())
        {
            if let Some(streams) = subscriptions.get_mut(&device) {
                streams.remove(&stream_id);
                if streams.is_empty() {
                    subscriptions.remove(&device);
                }
            }
        }
    }

    /// Delivers the cross-region outbox (delivered receipts for senders homed elsewhere), in
    /// order per destination, removing entries only after the destination stored them.
    async fn outbox_pump(self) {
        loop {
            let mut backlog = false;
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
                    Ok(more) => backlog |= more,
                    Err(error) => {
                        tracing::warn!(%destination, %error, "outbox delivery failed; will retry");
                        backlog = true;
                    }
                }
            }
            let pause = if backlog {
                OUTBOX_RETRY_DELAY_MS
            } else {
                5_000
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
        let entries = self
            .inner
            .db
            .transact(
                |tx| async move { outbox::peek(&tx, destination, OUTBOX_BATCH_ENTRIES_MAX).await },
            )
            .await
            .map_err(store_failure)?;
        let Some(&(last_seq, _)) = entries.last() else {
            return Ok(false);
        };
        let mut receipts = Vec::with_capacity(entries.len());
        for (seq, bytes) in &entries {
            let receipt = wire::QueuedReceipt::decode(&bytes[..]).map_err(|error| {
                ProtoError::new(
                    ErrorCode::Internal,
                    format!("corrupt outbox entry: {error}"),
                )
            })?;
            receipts.push(wire::ReceiptForward {
                receipt,
                origin_region: self.inner.region.0,
                origin_seq: *seq,
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
                Duration::from_millis(PEER_REQUEST_TIMEOUT_MS),
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
        Ok(entries.len() == OUTBOX_BATCH_ENTRIES_MAX)
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

fn record_of(info: &wire::AccountInfo) -> directory::AccountRecord {
    directory::AccountRecord {
        id: AccountId(info.account),
        name: info.name.clone(),
        home_region: RegionId(info.region),
        epoch: info.epoch,
    }
}
