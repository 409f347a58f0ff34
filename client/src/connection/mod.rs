//! One QUIC connection to an edge: connecting, registering, authenticating on the control stream
//! (which then carries [`ServerPush`] frames), and one typed helper per request, each on its own
//! bidirectional stream. A [`Dialer`] says how edges are reached: through which sockets, and
//! whether the locator is asked or the edges are given. Blobs (their streams through the edge or
//! to a region's media endpoint, and the media endpoint's connections) are in `blobs`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::rustls::RootCertStore;
use relay_net::{
    DeviceTls, EDGE_SERVER_NAME, MEDIA_SERVER_NAME, NetError, SocketFactory, TokioSockets,
    auth_keying_material, bind_endpoint, load_roots, read_frame, request, system_roots,
    write_frame,
};
use relay_proto::clock::{Clock, SystemClock};
use relay_proto::limits::AUTH_NONCE_BYTES;
use relay_proto::wire::{
    AccountInfo, AckQueue, Authenticate, BlobAt, BlobCommand, BlobStatus, ClaimKeys, ClientRequest,
    ClientResponse, DeviceCommand, DeviceList, Envelope, FetchAndAck, FetchQueue, GroupCommand,
    GroupInfo, GroupList, Hello, KeyBundle, LinkRequests, LinkStatus, LookupAccount, LookupName,
    MediaAccess, MediaRequest, OneTimeKey, OneTimeKeyCount, Pairing, QueueBatch, Register,
    Registered, RequestLink, SendOutcome, ServerPush, UploadOneTimeKeys, auth_signing_payload,
    blob_command, client_request, client_response, device_command, group_command, server_push,
};
use relay_proto::{AccountId, DeviceAddress};
use tokio::sync::mpsc;

use crate::crypto::Crypto;
use crate::discovery::locate_edges;
use crate::error::{ClientError, Result};
use crate::limits::{
    BLOB_ANSWER_TIMEOUT_MS, CLOSE_WAIT_MS, CONNECT_TIMEOUT_MS, PUSHES_BUFFERED_MAX,
    REQUEST_TIMEOUT_MS,
};
use crate::media_reach::MediaReach;
use crate::store::Settings;

mod blobs;

pub use blobs::{BlobRoute, UploadSource};

/// The software name sent in `Hello`.
pub const CLIENT_VERSION: &str = concat!("relay-client/", env!("CARGO_PKG_VERSION"));

/// The counters a device presents when it authenticates, read from its store: a device whose
/// counters are behind what its home region has seen went back (a restored data directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceProgress {
    /// The highest queue sequence processed and stored.
    pub queue_cursor: u64,
    /// The `device_seq` the next envelope will get.
    pub next_device_seq: u64,
}

/// What the control stream says after authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// New entries wait in the device queue, up to `latest_queue_seq`; `entries` of them came
    /// along (a gapless run, possibly none).
    QueueAvailable {
        /// The highest queue sequence assigned.
        latest_queue_seq: u64,
        /// Entries sent along.
        entries: Vec<relay_proto::wire::QueueEntry>,
    },
    /// A watched account's presence.
    Presence(relay_proto::wire::PresenceInfo),
    /// A peer's typing indicator.
    Typing(relay_proto::wire::TypingNotice),
    /// The control stream ended: the connection is gone.
    Closed(String),
}

/// Where a client finds edges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeSource {
    /// Ask the edge locator of the settings over DNS, from the settings' address.
    Locator,
    /// These edges, best first, without asking anyone (tests and the simulation).
    Fixed(Vec<SocketAddr>),
}

/// How a client reaches edges: the sockets its QUIC endpoints bind through, where the edges
/// are found, and the device's TLS sessions. [`Dialer::default`] is the real world: kernel
/// sockets and the locator.
///
/// A device's connections through one dialer (and its clones) resume the TLS sessions earlier
/// ones left: a reconnect skips the edge's certificate chain and its check. The sessions live in
/// memory, made on the first connection for the deployment's trust roots (a settings change of
/// CA starts over).
#[derive(Clone)]
pub struct Dialer {
    sockets: Arc<dyn SocketFactory>,
    edges: EdgeSource,
    tls: Arc<Mutex<Option<SessionsFor>>>,
    /// Media endpoints its connections could not reach lately.
    media_reach: MediaReach,
}

/// A device's TLS sessions, and the CA file (if any) whose roots they trust.
type SessionsFor = (Option<PathBuf>, DeviceTls);

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("edges", &self.edges)
            .finish_non_exhaustive()
    }
}

impl Default for Dialer {
    fn default() -> Self {
        Self::new(Arc::new(TokioSockets), EdgeSource::Locator)
    }
}

impl Dialer {
    /// Endpoints bound through `sockets`, edges found as `edges` says.
    pub fn new(sockets: Arc<dyn SocketFactory>, edges: EdgeSource) -> Self {
        Self {
            sockets,
            edges,
            tls: Arc::new(Mutex::new(None)),
            media_reach: MediaReach::default(),
        }
    }

    /// The device's TLS sessions for the settings' trust roots (its next connection's QUIC
    /// configuration, and its media connections'), made once.
    fn device_tls(&self, settings: &Settings) -> Result<DeviceTls> {
        let mut tls = self
            .tls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((ca_path, device)) = &*tls
            && *ca_path == settings.ca_path
        {
            return Ok(device.clone());
        }
        let device = DeviceTls::new(trusted_roots(settings)?)?;
        *tls = Some((settings.ca_path.clone(), device.clone()));
        Ok(device)
    }

    /// Edge certificates this dialer's connections checked in full: logins that did not resume
    /// a TLS session.
    pub fn certificates_verified(&self) -> u64 {
        self.tls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map_or(0, |(_, device)| device.certificates_verified())
    }

    /// The edges to try for `settings`, best first.
    pub async fn edges(&self, settings: &Settings) -> Result<Vec<SocketAddr>> {
        match &self.edges {
            EdgeSource::Locator => locate_edges(settings.locator, settings.bind_ip).await,
            EdgeSource::Fixed(edges) if edges.is_empty() => {
                Err(ClientError::EdgeUnreachable("no edge is configured".into()))
            }
            EdgeSource::Fixed(edges) => Ok(edges.clone()),
        }
    }

    /// Whether edges are found by asking the locator (rather than given).
    pub fn asks_locator(&self) -> bool {
        self.edges == EdgeSource::Locator
    }

    /// Finds the edges for the settings' address and connects to the first that answers.
    pub async fn connect_any(&self, settings: &Settings) -> Result<EdgeConnection> {
        let edges = self.edges(settings).await?;
        self.connect_first(settings, &edges).await
    }

    /// Connects to the first of `edges` that answers.
    pub async fn connect_first(
        &self,
        settings: &Settings,
        edges: &[SocketAddr],
    ) -> Result<EdgeConnection> {
        let mut problems = Vec::new();
        for &edge in edges {
            let connected = async {
                let tls = self.device_tls(settings)?;
                EdgeConnection::connect_with(&*self.sockets, edge, settings.bind_ip, tls.config())
                    .await
                    .map(|connection| connection.with_media(tls, self.media_reach.clone()))
            };
            match connected.await {
                Ok(connection) => return Ok(connection),
                Err(ClientError::Net(error)) => problems.push(format!("{edge}: {error}")),
                Err(error) => return Err(error),
            }
        }
        if problems.is_empty() {
            problems.push("no edge to try".to_owned());
        }
        Err(ClientError::EdgeUnreachable(problems.join("; ")))
    }
}

/// Connects to the first edge that answers of those the dialer names for the settings. When
/// the locator itself does not answer, the last edge a connection reached is tried instead
/// (saying so in the notes returned); the locator's answer always wins when there is one.
pub async fn dial(
    dialer: &Dialer,
    settings: &Settings,
    last_edge: Option<SocketAddr>,
    notes: &mut Vec<String>,
) -> Result<EdgeConnection> {
    let edges = match dialer.edges(settings).await {
        Ok(edges) => edges,
        Err(error @ ClientError::Discovery(_)) if dialer.asks_locator() => {
            let Some(edge) = last_edge else {
                return Err(error);
            };
            notes.push(format!("{error}; trying the last edge that worked, {edge}"));
            return dialer
                .connect_first(settings, &[edge])
                .await
                .map_err(|last| match last {
                    ClientError::EdgeUnreachable(problem) => ClientError::Discovery(format!(
                        "{error}; the last edge that worked did not answer either ({problem})"
                    )),
                    other => other,
                });
        }
        Err(error) => return Err(error),
    };
    dialer.connect_first(settings, &edges).await
}

/// The roots a client of `settings` trusts: the deployment's CA, or the system's.
pub fn trusted_roots(settings: &Settings) -> Result<Arc<RootCertStore>> {
    Ok(match &settings.ca_path {
        Some(path) => load_roots(path)?,
        None => system_roots()?,
    })
}

/// An open connection to an edge.
#[derive(Debug)]
pub struct EdgeConnection {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    /// The control stream's sending half, held open for the life of the connection: finishing it
    /// would tell the edge this device is gone.
    control: std::sync::Mutex<Option<quinn::SendStream>>,
    edge: SocketAddr,
    /// The device's TLS, whose media configuration reaches regions' media endpoints, and the
    /// endpoints it could not reach lately; `None`: blobs go through the edge only.
    media: Option<(DeviceTls, MediaReach)>,
}

impl EdgeConnection {
    /// Connects from `bind_ip` to the edge at `edge`, trusting the CA certificate at `ca_path`.
    pub async fn connect(edge: SocketAddr, bind_ip: IpAddr, ca_path: &Path) -> Result<Self> {
        let roots = load_roots(ca_path)?;
        Self::connect_through(&TokioSockets, edge, bind_ip, roots).await
    }

    /// Connects from a socket on `bind_ip` made by `sockets` to the edge at `edge`, trusting
    /// `roots`.
    pub async fn connect_through(
        sockets: &dyn SocketFactory,
        edge: SocketAddr,
        bind_ip: IpAddr,
        roots: Arc<RootCertStore>,
    ) -> Result<Self> {
        let tls = DeviceTls::new(roots)?;
        Self::connect_with(sockets, edge, bind_ip, tls.config())
            .await
            .map(|connection| connection.with_media(tls, MediaReach::default()))
    }

    /// Connects from a socket on `bind_ip` made by `sockets` to the edge at `edge` with the QUIC
    /// configuration `config` (a device's, from its [`DeviceTls`], resumes its TLS sessions).
    pub async fn connect_with(
        sockets: &dyn SocketFactory,
        edge: SocketAddr,
        bind_ip: IpAddr,
        config: quinn::ClientConfig,
    ) -> Result<Self> {
        let endpoint = bind_endpoint(sockets, SocketAddr::new(bind_ip, 0), None)?;
        let connection = connect_within_timeout(&endpoint, config, edge, EDGE_SERVER_NAME).await?;
        Ok(Self {
            endpoint,
            connection,
            control: std::sync::Mutex::new(None),
            edge,
            media: None,
        })
    }

    /// The edge's address.
    pub fn edge(&self) -> SocketAddr {
        self.edge
    }

    /// Whether the connection is still open.
    pub fn is_open(&self) -> bool {
        self.connection.close_reason().is_none()
    }

    /// Sends one request on its own stream; an `Error` answer becomes [`ClientError::Remote`].
    pub async fn call(&self, body: client_request::Body) -> Result<client_response::Body> {
        let response: ClientResponse = request(
            &self.connection,
            &ClientRequest { body: Some(body) },
            Duration::from_millis(REQUEST_TIMEOUT_MS),
        )
        .await?;
        match response.body {
            Some(client_response::Body::Error(error)) => Err(error.into()),
            Some(body) => Ok(body),
            None => Err(ClientError::UnexpectedResponse("an empty answer".into())),
        }
    }

    /// Creates an account and its first device (no authentication needed).
    pub async fn register(&self, register: Register) -> Result<Registered> {
        match self.call(client_request::Body::Register(register)).await? {
            client_response::Body::Registered(registered) => Ok(registered),
            other => Err(unexpected("Registered", &other)),
        }
    }

    /// Asks, as a new device (no authentication), to be linked with a pairing code; asked again
    /// with the same keys, it answers where the request stands.
    pub async fn request_link(&self, request: RequestLink) -> Result<LinkStatus> {
        match self
            .call(client_request::Body::RequestLink(request))
            .await?
        {
            client_response::Body::LinkStatus(status) => Ok(status),
            other => Err(unexpected("LinkStatus", &other)),
        }
    }

    /// Runs a command on the authenticated device's account's devices.
    pub async fn device_command(&self, command: device_command::Command) -> Result<DeviceAnswer> {
        let body = client_request::Body::Devices(DeviceCommand {
            command: Some(command),
        });
        match self.call(body).await? {
            client_response::Body::Pairing(pairing) => Ok(DeviceAnswer::Pairing(pairing)),
            client_response::Body::LinkRequests(requests) => {
                Ok(DeviceAnswer::LinkRequests(requests))
            }
            client_response::Body::Devices(devices) => Ok(DeviceAnswer::Devices(devices)),
            other => Err(unexpected("Pairing, LinkRequests or Devices", &other)),
        }
    }

    /// Runs a group command as this connection's device (the edge names its account): answered
    /// Starts or stops watching `account`'s presence (the state comes as pushes).
    pub async fn watch_presence(&self, account: AccountId, watch: bool) -> Result<()> {
        let request = relay_proto::wire::WatchPresence {
            account: account.0,
            watch,
        };
        match self
            .call(client_request::Body::WatchPresence(request))
            .await?
        {
            client_response::Body::Watching(_) => Ok(()),
            other => Err(unexpected("a watch answer", &other)),
        }
    }

    /// A typing indicator in chat `to`.
    pub async fn typing(&self, to: crate::core::TypingIn, typing: bool) -> Result<()> {
        let signal = to.signal(typing);
        match self.call(client_request::Body::Typing(signal)).await? {
            client_response::Body::TypingSent(_) => Ok(()),
            other => Err(unexpected("a typing answer", &other)),
        }
    }

    /// Blocks or unblocks an account, or lists the blocked ones.
    pub async fn block(
        &self,
        request: relay_proto::wire::SetBlock,
    ) -> Result<relay_proto::wire::BlockedAccounts> {
        match self.call(client_request::Body::Block(request)).await? {
            client_response::Body::Blocked(list) => Ok(list),
            other => Err(unexpected("a block list", &other)),
        }
    }

    /// Reads, sets or removes this device's push registration.
    pub async fn push(
        &self,
        request: relay_proto::wire::SetPush,
    ) -> Result<relay_proto::wire::PushState> {
        match self.call(client_request::Body::Push(request)).await? {
            client_response::Body::Push(state) => Ok(state),
            other => Err(unexpected("a push registration", &other)),
        }
    }

    /// Reads the account's presence privacy, or sets it to `privacy`.
    pub async fn presence_privacy(
        &self,
        privacy: Option<relay_proto::wire::PresencePrivacy>,
    ) -> Result<relay_proto::wire::PresencePrivacy> {
        let request = relay_proto::wire::SetPresencePrivacy { privacy };
        match self
            .call(client_request::Body::PresencePrivacy(request))
            .await?
        {
            client_response::Body::PresencePrivacy(privacy) => Ok(privacy),
            other => Err(unexpected("a presence privacy setting", &other)),
        }
    }

    /// with the group, or a page of the device's groups for `List`.
    pub async fn group_command(&self, command: group_command::Command) -> Result<GroupAnswer> {
        let body = client_request::Body::Group(GroupCommand {
            command: Some(command),
        });
        match self.call(body).await? {
            client_response::Body::Group(info) => Ok(GroupAnswer::Group(info)),
            client_response::Body::Groups(list) => Ok(GroupAnswer::Groups(list)),
            other => Err(unexpected("Group or Groups", &other)),
        }
    }

    /// Authenticates `device` on a new control stream, presenting its queue cursor and next
    /// `device_seq` (the edge refuses a device behind what its region has seen), and returns the
    /// state of its keys and the receiver of the pushes that follow on that stream.
    pub async fn authenticate(
        &mut self,
        device: DeviceAddress,
        crypto: &Crypto,
        progress: DeviceProgress,
    ) -> Result<(OneTimeKeyCount, mpsc::Receiver<Push>)> {
        let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
        let exchange = async {
            let (mut send, mut recv) = self.connection.open_bi().await.map_err(NetError::from)?;
            let hello = ClientRequest {
                body: Some(client_request::Body::Hello(Hello {
                    client_version: CLIENT_VERSION.into(),
                })),
            };
            write_frame(&mut send, &hello).await?;
            let nonce = match read_response(&mut recv).await? {
                client_response::Body::Challenge(challenge) => challenge.nonce,
                other => return Err(unexpected("Challenge", &other)),
            };
            if nonce.len() != AUTH_NONCE_BYTES {
                return Err(ClientError::UnexpectedResponse(format!(
                    "a {}-byte challenge (expected {AUTH_NONCE_BYTES})",
                    nonce.len()
                )));
            }
            let keying_material = auth_keying_material(&self.connection)?;
            let signature = crypto.sign(&auth_signing_payload(&nonce, &keying_material));
            let authenticate = ClientRequest {
                body: Some(client_request::Body::Authenticate(Authenticate {
                    device: device.into(),
                    signature: signature.to_vec(),
                    queue_cursor: Some(progress.queue_cursor),
                    next_device_seq: Some(progress.next_device_seq),
                })),
            };
            write_frame(&mut send, &authenticate).await?;
            match read_response(&mut recv).await? {
                client_response::Body::Authenticated(count) => Ok((count, send, recv)),
                other => Err(unexpected("Authenticated", &other)),
            }
        };
        let (keys, send, recv) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| NetError::Timeout)??;
        *self
            .control
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(send);
        let (sender, receiver) = mpsc::channel(PUSHES_BUFFERED_MAX);
        tokio::spawn(read_pushes(recv, sender));
        Ok((keys, receiver))
    }

    /// Resolves a name to an account.
    pub async fn lookup_name(&self, name: &str) -> Result<AccountInfo> {
        match self
            .call(client_request::Body::LookupName(LookupName {
                name: name.into(),
            }))
            .await?
        {
            client_response::Body::Account(info) => Ok(info),
            other => Err(unexpected("Account", &other)),
        }
    }

    /// Resolves an account id to its name.
    pub async fn lookup_account(&self, account: AccountId) -> Result<AccountInfo> {
        let body = client_request::Body::LookupAccount(LookupAccount { account: account.0 });
        match self.call(body).await? {
            client_response::Body::Account(info) => Ok(info),
            other => Err(unexpected("Account", &other)),
        }
    }

    /// Claims one one-time key of every current device of `account`.
    pub async fn claim_keys(&self, account: AccountId) -> Result<KeyBundle> {
        match self
            .call(client_request::Body::ClaimKeys(ClaimKeys {
                account: account.0,
                claimer: None,
            }))
            .await?
        {
            client_response::Body::Keys(bundle) if bundle.account == account.0 => Ok(bundle),
            client_response::Body::Keys(_) => Err(ClientError::UnexpectedResponse(
                "keys of another account".into(),
            )),
            other => Err(unexpected("Keys", &other)),
        }
    }

    /// Uploads one-time keys and, if given, a new signed fallback key; returns the device's
    /// unclaimed count and the state of its fallback key.
    pub async fn upload_keys(
        &self,
        keys: Vec<OneTimeKey>,
        fallback_key: Option<OneTimeKey>,
    ) -> Result<OneTimeKeyCount> {
        let body =
            client_request::Body::UploadOneTimeKeys(UploadOneTimeKeys { keys, fallback_key });
        match self.call(body).await? {
            client_response::Body::KeysUploaded(count) => Ok(count),
            other => Err(unexpected("KeysUploaded", &other)),
        }
    }

    /// Sends an envelope.
    pub async fn send(&self, envelope: Envelope) -> Result<SendOutcome> {
        match self.call(client_request::Body::Send(envelope)).await? {
            client_response::Body::Sent(outcome) => Ok(outcome),
            other => Err(unexpected("Sent", &other)),
        }
    }

    /// Reads up to `limit` queue entries after `after_queue_seq` (acknowledging nothing).
    pub async fn fetch(&self, after_queue_seq: u64, limit: u32) -> Result<QueueBatch> {
        let body = client_request::Body::FetchQueue(FetchAndAck {
            ack: None,
            fetch: Some(FetchQueue {
                after_queue_seq,
                limit,
            }),
        });
        match self.call(body).await? {
            client_response::Body::Queue(batch) => Ok(batch),
            other => Err(unexpected("Queue", &other)),
        }
    }

    /// Acknowledges (and so deletes) queue entries; answers once the region committed that.
    pub async fn ack(&self, queue_seqs: Vec<u64>) -> Result<()> {
        let body = client_request::Body::FetchQueue(FetchAndAck {
            ack: Some(AckQueue { queue_seqs }),
            fetch: None,
        });
        match self.call(body).await? {
            client_response::Body::Queue(_) => Ok(()),
            other => Err(unexpected("Queue", &other)),
        }
    }

    /// Closes the connection and waits (briefly) for the close to reach the edge.
    pub async fn close(&self) {
        let control = self
            .control
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(mut control) = control {
            let _ = control.finish();
        }
        self.connection.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(
            Duration::from_millis(CLOSE_WAIT_MS),
            self.endpoint.wait_idle(),
        )
        .await;
    }
}

/// What a group command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupAnswer {
    /// The group (for `Leave`, only its id and chat).
    Group(GroupInfo),
    /// A page of the asker's groups.
    Groups(GroupList),
}

/// What a device command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAnswer {
    /// A pairing opened.
    Pairing(Pairing),
    /// The link requests waiting for approval.
    LinkRequests(LinkRequests),
    /// The account's devices.
    Devices(DeviceList),
}

/// A connection from `endpoint` to `server` (answering to `server_name`), or
/// [`NetError::Timeout`] after [`CONNECT_TIMEOUT_MS`].
async fn connect_within_timeout(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    server: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection> {
    let connecting = endpoint
        .connect_with(config, server, server_name)
        .map_err(NetError::from)?;
    let connection = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
        .await
        .map_err(|_| NetError::Timeout)?
        .map_err(NetError::from)?;
    Ok(connection)
}

async fn read_response(recv: &mut quinn::RecvStream) -> Result<client_response::Body> {
    let response = read_frame::<ClientResponse>(recv)
        .await?
        .ok_or(NetError::Closed)?;
    match response.body {
        Some(client_response::Body::Error(error)) => Err(error.into()),
        Some(body) => Ok(body),
        None => Err(ClientError::UnexpectedResponse("an empty answer".into())),
    }
}

async fn read_pushes(mut recv: quinn::RecvStream, sender: mpsc::Sender<Push>) {
    let reason = loop {
        match read_frame::<ServerPush>(&mut recv).await {
            Ok(Some(ServerPush {
                event: Some(server_push::Event::QueueAvailable(available)),
            })) => {
                // Waits for room rather than dropping it: the device takes entries sent along
                // as the queue's end when they reach the highest sequence announced, so none
                // may go unseen (the edge meanwhile keeps one push, with the highest number).
                let push = Push::QueueAvailable {
                    latest_queue_seq: available.latest_queue_seq,
                    entries: available.entries,
                };
                if sender.send(push).await.is_err() {
                    return;
                }
            }
            Ok(Some(ServerPush {
                event: Some(server_push::Event::Presence(info)),
            })) => {
                // A full buffer drops it: the watch's next change (or re-watch) says it again.
                if let Err(mpsc::error::TrySendError::Closed(_)) =
                    sender.try_send(Push::Presence(info))
                {
                    return;
                }
            }
            Ok(Some(ServerPush {
                event: Some(server_push::Event::Typing(notice)),
            })) => {
                // Ephemeral: a full buffer drops it, and a shown "typing…" expires by itself.
                if let Err(mpsc::error::TrySendError::Closed(_)) =
                    sender.try_send(Push::Typing(notice))
                {
                    return;
                }
            }
            // An event kind this build does not know: newer edges may send more.
            Ok(Some(ServerPush { event: None })) => {}
            Ok(None) => break "the edge closed the control stream".to_owned(),
            Err(error) => break error.to_string(),
        }
    };
    let _ = sender.send(Push::Closed(reason)).await;
}

fn unexpected(wanted: &str, got: &client_response::Body) -> ClientError {
    let kind = got.name();
    ClientError::UnexpectedResponse(format!("{kind} where {wanted} was expected"))
}
