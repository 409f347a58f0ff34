//! The shell around one device's connection: client QUIC endpoints shared by devices
//! ([`Endpoints`]), the connection and its calls ([`EdgeLink`]), and draining a queue ([`drain`]).

use super::*;

/// Why a device's request failed.
#[derive(Debug)]
pub enum CallError {
    /// No answer within [`REQUEST_TIMEOUT_MS`].
    Timeout,
    /// A typed refusal that may succeed later (the server's retry hint inside).
    Retryable(ProtoError),
    /// A typed refusal that retrying cannot fix.
    Refused(ProtoError),
    /// The connection failed.
    Broken(NetError),
    /// An answer the protocol does not allow there.
    Unexpected(String),
}

impl CallError {
    /// This failure as the benchmark's error, saying what was being done.
    pub fn into_bench(self, what: String) -> BenchError {
        match self {
            CallError::Timeout => {
                BenchError::Timeout(format!("{what}: no answer within {REQUEST_TIMEOUT_MS} ms"))
            }
            CallError::Retryable(error) | CallError::Refused(error) => {
                BenchError::Remote { what, error }
            }
            CallError::Broken(source) => BenchError::Net { what, source },
            CallError::Unexpected(message) => BenchError::Protocol(format!("{what}: {message}")),
        }
    }

    fn from_net(error: NetError) -> Self {
        match error {
            NetError::Timeout => CallError::Timeout,
            NetError::Remote(error) => CallError::from_proto(error),
            other => CallError::Broken(other),
        }
    }

    fn from_proto(error: ProtoError) -> Self {
        if error.code.is_retryable() {
            CallError::Retryable(error)
        } else {
            CallError::Refused(error)
        }
    }
}

/// Client QUIC endpoints on one address, each shared by up to [`DEVICES_PER_ENDPOINT_MAX`]
/// device connections (quinn routes by connection id), trusting one CA; each socket asks for
/// a receive buffer of [`DEVICE_SOCKET_RECEIVE_BUFFER_BYTES`].
pub struct Endpoints {
    bind_ip: IpAddr,
    config: quinn::ClientConfig,
    sockets: BufferedSockets,
    pool: Mutex<EndpointPool>,
}

#[derive(Default)]
struct EndpointPool {
    endpoints: Vec<quinn::Endpoint>,
    users_of_last: usize,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("bind_ip", &self.bind_ip)
            .finish_non_exhaustive()
    }
}

impl Endpoints {
    /// Endpoints binding `bind_ip` (a region's client address), trusting `roots`.
    pub fn new(bind_ip: IpAddr, roots: Arc<RootCertStore>) -> Result<Self, BenchError> {
        let config = client_config(roots, None, ALPN_DEVICE)
            .map_err(BenchError::net("the devices' TLS configuration"))?;
        Ok(Self {
            bind_ip,
            config,
            sockets: BufferedSockets {
                receive_buffer_bytes: DEVICE_SOCKET_RECEIVE_BUFFER_BYTES,
            },
            pool: Mutex::new(EndpointPool::default()),
        })
    }

    /// Sockets (endpoints) bound so far.
    pub fn sockets(&self) -> usize {
        self.lock().endpoints.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EndpointPool> {
        self.pool
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn endpoint(&self) -> Result<quinn::Endpoint, BenchError> {
        let mut pool = self.lock();
        if let Some(last) = pool.endpoints.last()
            && pool.users_of_last < DEVICES_PER_ENDPOINT_MAX
        {
            let last = last.clone();
            pool.users_of_last += 1;
            return Ok(last);
        }
        let endpoint =
            bind_endpoint(&self.sockets, SocketAddr::new(self.bind_ip, 0), None).map_err(
                BenchError::net(format!("binding a client endpoint on {}", self.bind_ip)),
            )?;
        pool.endpoints.push(endpoint.clone());
        pool.users_of_last = 1;
        Ok(endpoint)
    }

    /// Opens a connection to the edge at `edge` (handshake within [`CONNECT_TIMEOUT_MS`]).
    /// Every connection opened this way shares one TLS session store.
    pub async fn connect(&self, edge: SocketAddr) -> Result<EdgeLink, BenchError> {
        self.connect_with(edge, self.config.clone()).await
    }

    /// Opens a connection to the edge at `edge` with a device's own `config` (its TLS sessions:
    /// `relay_net::DeviceTls`), handshake within [`CONNECT_TIMEOUT_MS`].
    pub async fn connect_with(
        &self,
        edge: SocketAddr,
        config: quinn::ClientConfig,
    ) -> Result<EdgeLink, BenchError> {
        let what = || format!("connecting to the edge at {edge}");
        let connecting = self
            .endpoint()?
            .connect_with(config, edge, EDGE_SERVER_NAME)
            .map_err(|error| BenchError::net(what())(NetError::from(error)))?;
        let connection =
            tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
                .await
                .map_err(|_| {
                    BenchError::Timeout(format!(
                        "{}: no handshake within {CONNECT_TIMEOUT_MS} ms",
                        what()
                    ))
                })?
                .map_err(|error| BenchError::net(what())(NetError::from(error)))?;
        Ok(EdgeLink {
            pushed: Arc::default(),
            connection,
            control: Mutex::new(None),
        })
    }

    /// Waits (up to [`CLOSE_WAIT_MS`] in all) for every endpoint's connections to be closed
    /// and their closes sent.
    pub async fn wait_idle(&self) {
        let endpoints = self.lock().endpoints.clone();
        let idle = async {
            for endpoint in &endpoints {
                endpoint.wait_idle().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(CLOSE_WAIT_MS), idle).await;
    }
}

/// One device's connection to an edge: requests on their own streams, and once authenticated
/// the control stream's sending half, held open (finishing it would tell the edge the device
/// left).
#[derive(Debug)]
pub struct EdgeLink {
    connection: quinn::Connection,
    control: Mutex<Option<quinn::SendStream>>,
    /// Entries the pushes brought along and the inbox has not taken, in the order they came
    /// (each push's a gapless run), at most [`PUSHED_ENTRIES_KEPT_MAX`]: past it they are
    /// dropped, and fetched.
    pushed: Arc<Mutex<Vec<QueueEntry>>>,
}

impl EdgeLink {
    /// Takes the entries pushes brought along that follow `cursor` without a gap (as the
    /// client library takes them); the others are dropped, and fetched.
    pub fn take_pushed(&self, cursor: u64) -> Vec<QueueEntry> {
        let pushed = std::mem::take(
            &mut *self
                .pushed
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        let mut taken: Vec<QueueEntry> = Vec::new();
        for entry in pushed {
            let next = taken.last().map_or(cursor, |last| last.queue_seq) + 1;
            if entry.queue_seq == next {
                taken.push(entry);
            }
        }
        taken
    }

    /// Sends one request on its own stream and reads its answer.
    pub async fn call(
        &self,
        body: client_request::Body,
    ) -> Result<client_response::Body, CallError> {
        let response: ClientResponse = request(
            &self.connection,
            &ClientRequest { body: Some(body) },
            Duration::from_millis(REQUEST_TIMEOUT_MS),
        )
        .await
        .map_err(CallError::from_net)?;
        match response.body {
            Some(client_response::Body::Error(error)) => Err(CallError::from_proto(error.into())),
            Some(body) => Ok(body),
            None => Err(CallError::Unexpected("an empty answer".into())),
        }
    }

    /// Sends an envelope.
    pub async fn send(&self, envelope: Envelope) -> Result<SendOutcome, CallError> {
        match self.call(client_request::Body::Send(envelope)).await? {
            client_response::Body::Sent(outcome) => Ok(outcome),
            other => Err(CallError::Unexpected(format!(
                "{} where Sent was expected",
                other.name()
            ))),
        }
    }

    /// Acknowledges and reads the queue.
    pub async fn fetch(&self, fetch: FetchAndAck) -> Result<QueueBatch, CallError> {
        match self.call(client_request::Body::FetchQueue(fetch)).await? {
            client_response::Body::Queue(batch) => Ok(batch),
            other => Err(CallError::Unexpected(format!(
                "{} where Queue was expected",
                other.name()
            ))),
        }
    }

    /// Starts (`watch`) or stops watching `account`'s presence; the state comes as pushes.
    pub async fn watch_presence(&self, account: AccountId, watch: bool) -> Result<(), CallError> {
        let request = WatchPresence {
            account: account.0,
            watch,
        };
        match self
            .call(client_request::Body::WatchPresence(request))
            .await?
        {
            client_response::Body::Watching(answer) if answer == request => Ok(()),
            other => Err(CallError::Unexpected(format!(
                "{} where Watching {request:?} was expected",
                other.name()
            ))),
        }
    }

    /// Tells `peer`'s devices that this device's user is typing to it (`typing`), or stopped.
    pub async fn typing(&self, peer: AccountId, typing: bool) -> Result<(), CallError> {
        let signal = TypingSignal {
            peer: peer.0,
            typing,
            group: 0,
        };
        match self.call(client_request::Body::Typing(signal)).await? {
            client_response::Body::TypingSent(answer) if answer == signal => Ok(()),
            other => Err(CallError::Unexpected(format!(
                "{} where TypingSent {signal:?} was expected",
                other.name()
            ))),
        }
    }

    /// Authenticates `device` on a new control stream (the proof signed over the edge's nonce
    /// and this connection's keying material), presenting its counters; returns the pushes.
    pub(super) async fn authenticate(
        &self,
        device: DeviceAddress,
        keys: &DeviceKeys,
        queue_cursor: u64,
        next_device_seq: u64,
        log: Option<Arc<SignalLog>>,
    ) -> Result<watch::Receiver<Pushes>, CallError> {
        let exchange = async {
            let (mut send, mut recv) = self
                .connection
                .open_bi()
                .await
                .map_err(|error| CallError::Broken(error.into()))?;
            let hello = ClientRequest {
                body: Some(client_request::Body::Hello(Hello {
                    client_version: BENCH_CLIENT_VERSION.into(),
                })),
            };
            write_frame(&mut send, &hello)
                .await
                .map_err(CallError::from_net)?;
            let nonce = match control_response(&mut recv).await? {
                client_response::Body::Challenge(challenge) => challenge.nonce,
                other => {
                    return Err(CallError::Unexpected(format!(
                        "{} where Challenge was expected",
                        other.name()
                    )));
                }
            };
            if nonce.len() != AUTH_NONCE_BYTES {
                return Err(CallError::Unexpected(format!(
                    "a {}-byte challenge (expected {AUTH_NONCE_BYTES})",
                    nonce.len()
                )));
            }
            let keying_material =
                auth_keying_material(&self.connection).map_err(CallError::Broken)?;
            let signature = keys.sign(&auth_signing_payload(&nonce, &keying_material));
            let authenticate = ClientRequest {
                body: Some(client_request::Body::Authenticate(Authenticate {
                    device: device.into(),
                    signature: signature.to_vec(),
                    queue_cursor: Some(queue_cursor),
                    next_device_seq: Some(next_device_seq),
                })),
            };
            write_frame(&mut send, &authenticate)
                .await
                .map_err(CallError::from_net)?;
            match control_response(&mut recv).await? {
                client_response::Body::Authenticated(_) => Ok((send, recv)),
                other => Err(CallError::Unexpected(format!(
                    "{} where Authenticated was expected",
                    other.name()
                ))),
            }
        };
        let (send, recv) =
            tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), exchange)
                .await
                .map_err(|_| CallError::Timeout)??;
        *self
            .control
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(send);
        let (sender, receiver) = watch::channel(Pushes::default());
        tokio::spawn(read_pushes(
            recv,
            sender,
            self.pushed.clone(),
            log.map(|log| (device, log)),
        ));
        Ok(receiver)
    }

    /// Closes the connection (the edge forgets the device); [`Endpoints::wait_idle`] waits
    /// for the close to leave.
    pub fn close(&self) {
        let control = self
            .control
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(mut control) = control {
            let _ = control.finish();
        }
        self.connection.close(0u32.into(), b"bye");
    }

    /// The QUIC connection (the raw QUIC ceiling sends its own frames on it).
    pub(crate) fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Whether the connection is still open.
    pub fn is_open(&self) -> bool {
        self.connection.close_reason().is_none()
    }
}

/// The outcome of one transmission as the [`SendPipeline`] takes it, and whether it was a
/// timeout (counted apart); a refusal retrying cannot fix (or a broken connection) is an error.
pub fn send_result(
    outcome: Result<SendOutcome, CallError>,
) -> Result<(SendResult, bool), CallError> {
    match outcome {
        Ok(SendOutcome {
            outcome: Some(send_outcome::Outcome::Sent(_)),
        }) => Ok((SendResult::Sent, false)),
        Ok(SendOutcome {
            outcome: Some(send_outcome::Outcome::ResendFrom(resend)),
        }) => Ok((SendResult::ResendFrom(resend.expected_sender_seq), false)),
        Ok(SendOutcome {
            outcome: Some(send_outcome::Outcome::Mismatched(mismatched)),
        }) => Err(CallError::Unexpected(format!(
            "mismatched devices ({:?}) for a device whose peer has one device",
            mismatched.accounts
        ))),
        Ok(SendOutcome {
            outcome: Some(send_outcome::Outcome::GroupChanged(changed)),
        }) => Err(CallError::Unexpected(format!(
            "group {} changed (now version {}, {} members), but no bench device changes a group \
             while it sends to it",
            changed.group,
            changed.version,
            changed.members.len()
        ))),
        Ok(SendOutcome { outcome: None }) => Err(CallError::Unexpected("an empty outcome".into())),
        Err(CallError::Timeout) => Ok((SendResult::Retry { after_ms: 0 }, true)),
        Err(CallError::Retryable(error)) => Ok((
            SendResult::Retry {
                after_ms: error.retry_after_ms,
            },
            false,
        )),
        Err(other) => Err(other),
    }
}

/// What one [`drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainStats {
    /// Fetch requests answered.
    pub fetches: u64,
    /// Fetches that timed out or were refused with a retryable code, then retried.
    pub retries: u64,
}

/// Fetches and acknowledges `link`'s queue until a fetch returns nothing or reaches the latest
/// queue sequence the region read with it (at most
/// [`FETCHES_PER_DRAIN_MAX`] fetches) and every ack was answered, handing each arrival and the
/// instant its page came to `arrived`. One fetch and one ack request are in flight at a time:
/// the pages are read in order, each while the acks of the pages before it commit. A retryable
/// failure is retried after a delay, at most [`FETCH_ATTEMPTS_MAX`] times in a row. Without
/// `fetch`, it only acknowledges what the inbox holds (entries a push brought along).
pub async fn drain(
    link: &EdgeLink,
    inbox: &mut Inbox,
    fetch: bool,
    mut arrived: impl FnMut(Arrival, Instant) -> Result<(), BenchError>,
) -> Result<DrainStats, BenchError> {
    let mut stats = DrainStats::default();
    let mut fetching = None;
    let mut acking = None;
    let mut at_end = !fetch;
    loop {
        if fetching.is_none() && !at_end {
            if stats.fetches < u64::from(FETCHES_PER_DRAIN_MAX) {
                fetching = Some(Box::pin(call_retrying(link, inbox.next_fetch())));
            } else {
                at_end = true;
            }
        }
        if acking.is_none()
            && let Some(acks) = inbox.take_acks()
        {
            acking = Some(Box::pin(call_retrying(link, acks)));
        }
        if fetching.is_none() && acking.is_none() {
            return Ok(stats);
        }
        tokio::select! {
            (fetched, retries) = in_flight(&mut fetching) => {
                fetching = None;
                stats.retries += retries;
                let batch =
                    fetched.map_err(|error| error.into_bench("fetching a device's queue".into()))?;
                stats.fetches += 1;
                let now = Instant::now();
                let arrivals = inbox
                    .handle_batch(&batch)
                    .map_err(|error| BenchError::Protocol(error.to_string()))?;
                // As the client library: a page that reaches the latest sequence read with it
                // is the queue's end then.
                at_end = arrivals.is_empty() || inbox.cursor() >= batch.latest_queue_seq;
                for arrival in arrivals {
                    arrived(arrival, now)?;
                }
            }
            (acked, retries) = in_flight(&mut acking) => {
                acking = None;
                stats.retries += retries;
                acked.map_err(|error| {
                    error.into_bench("acknowledging entries of a device's queue".into())
                })?;
            }
        }
    }
}

/// Sends `request` (a fetch or an ack), retrying a timeout or a retryable refusal after a
/// growing delay, at most [`FETCH_ATTEMPTS_MAX`] attempts; also says how many retries it took.
async fn call_retrying(
    link: &EdgeLink,
    request: FetchAndAck,
) -> (Result<QueueBatch, CallError>, u64) {
    let mut failures_in_a_row = 0u32;
    loop {
        match link.fetch(request.clone()).await {
            Err(CallError::Timeout | CallError::Retryable(_))
                if failures_in_a_row + 1 < FETCH_ATTEMPTS_MAX =>
            {
                failures_in_a_row += 1;
                let exponent = failures_in_a_row.saturating_sub(1).min(16);
                let delay_ms = SEND_RETRY_DELAY_MS_MIN
                    .saturating_mul(1 << exponent)
                    .min(SEND_RETRY_DELAY_MS_MAX);
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            answer => return (answer, u64::from(failures_in_a_row)),
        }
    }
}

/// The output of the request in `slot`; pending forever while there is none (a `select!`
/// branch that cannot fire).
async fn in_flight<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn control_response(
    recv: &mut quinn::RecvStream,
) -> Result<client_response::Body, CallError> {
    let response = read_frame::<ClientResponse>(recv)
        .await
        .map_err(CallError::from_net)?
        .ok_or(CallError::Broken(NetError::Closed))?;
    match response.body {
        Some(client_response::Body::Error(error)) => Err(CallError::from_proto(error.into())),
        Some(body) => Ok(body),
        None => Err(CallError::Unexpected("an empty answer".into())),
    }
}

/// Counts the pushes of a control stream until it ends (or nobody follows it any more); the
/// presence updates and typing notices go to `log` (as `device`'s), when there is one.
async fn read_pushes(
    mut recv: quinn::RecvStream,
    sender: watch::Sender<Pushes>,
    pushed: Arc<Mutex<Vec<QueueEntry>>>,
    log: Option<(DeviceAddress, Arc<SignalLog>)>,
) {
    let reason = loop {
        let frame = tokio::select! {
            frame = read_frame::<ServerPush>(&mut recv) => frame,
            () = sender.closed() => return,
        };
        let at = Instant::now();
        match frame {
            Ok(Some(ServerPush {
                event: Some(server_push::Event::QueueAvailable(available)),
            })) => sender.send_modify(|pushes| {
                pushes.received += 1;
                pushes.latest_queue_seq = pushes.latest_queue_seq.max(available.latest_queue_seq);
                // Kept before the watchers hear of the push.
                let mut pushed = pushed.lock().unwrap_or_else(|poison| poison.into_inner());
                if pushed.len() + available.entries.len() <= PUSHED_ENTRIES_KEPT_MAX {
                    pushed.extend(available.entries);
                }
            }),
            Ok(Some(ServerPush {
                event: Some(server_push::Event::Presence(info)),
            })) => {
                if let Some((receiver, log)) = &log {
                    log.record(Signal {
                        receiver: *receiver,
                        event: SignalEvent::Presence {
                            account: AccountId(info.account),
                            state: info.state(),
                        },
                        at,
                    });
                }
            }
            Ok(Some(ServerPush {
                event: Some(server_push::Event::Typing(notice)),
            })) => {
                if let Some((receiver, log)) = &log {
                    match notice.from.parse() {
                        Ok(from) => log.record(Signal {
                            receiver: *receiver,
                            event: SignalEvent::Typing {
                                from,
                                typing: notice.typing,
                            },
                            at,
                        }),
                        Err(_) => {
                            log.malformed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            // An event kind this build does not know: newer edges may send more.
            Ok(Some(ServerPush { event: None })) => {}
            Ok(None) => break "the edge closed the control stream".to_owned(),
            Err(error) => break error.to_string(),
        }
    };
    sender.send_modify(|pushes| pushes.closed = Some(reason));
}

pub(super) fn unexpected(what: &str, wanted: &str, got: &client_response::Body) -> BenchError {
    BenchError::Protocol(format!(
        "{what}: {} where {wanted} was expected",
        got.name()
    ))
}
