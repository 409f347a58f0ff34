//! A minimal opaque device, as the message and connection benchmarks drive it: it speaks the
//! device protocol exactly as the client library does (`client/src/connection.rs`), without a
//! store and without Olm sessions, because the servers never see plaintext and so cannot tell
//! opaque bytes from ciphertexts.
//!
//! - **Registration** through an edge with a vodozemac account's identity (Curve25519) and
//!   signing (Ed25519) keys. No one-time or fallback keys: nobody claims keys of a device that
//!   is sent opaque bytes, and the region does not require them (`core::register_device`).
//! - **Authentication** on the control stream: `Hello` → `Challenge` → `Authenticate`, signed
//!   over nonce ‖ the connection's TLS keying-material export, presenting the queue cursor and
//!   the next `device_seq`; then the edge writes `ServerPush` frames on that stream, which stays
//!   open for the life of the connection.
//! - **Envelopes** of one chat numbered by `sender_seq` from 1, a random client message id each
//!   (kept across retries), the `device_seq` counter over all the device's envelopes (a new one
//!   per transmission, as the client's), listing the peer's account and the sender's own (which
//!   has no other device, so it is covered by no ciphertext), one ciphertext for the peer's
//!   device: [`PAYLOAD_BYTES`] opaque bytes.
//! - **Group messages** ([`GroupTarget`], W3): the same counters in the group's chat, every
//!   member listed, an empty entry of type `MESSAGE_TYPE_HOLDS_GROUP_SESSION` for every member
//!   device but the sender, and the [`PAYLOAD_BYTES`] opaque bytes once as the group
//!   ciphertext. No key share goes before them: a region cannot tell whether a session was
//!   shared (it only sees the sender's statement), and there is no session to share.
//! - **Fetch and ack**: on a push, fetch after the queue cursor; what was processed is
//!   acknowledged in a request of its own, in flight while the next page is read (so reading
//!   never waits for the region to commit the acks and their delivered receipts), one ack
//!   request at a time, the acks processed meanwhile going with the next; stop when a fetch
//!   returns nothing or reaches the latest queue sequence read with it, and every ack was
//!   answered.
//! - **Presence and typing** (the presence benchmark): watch an account, send a typing
//!   indicator ([`EdgeLink::watch_presence`], [`EdgeLink::typing`]); the presence updates and
//!   typing notices the edge pushes on the control stream go, with the instant each arrived, to
//!   a [`SignalLog`] when the device authenticated with one ([`Device::authenticate_logging`]).
//!
//! The decisions are sans-IO cores, tested without a runtime: [`SendPipeline`] (which
//! `sender_seq` goes next with up to a window in flight, "resend from k", retries and their
//! delays) and [`Inbox`] (queue cursor, acks, a gapless queue, sender FIFO, duplicates).
//! [`Payload`] is the opaque content: the row it belongs to and the time it was composed travel
//! inside it, so the receiving side measures send → deliver. The shell: [`Endpoints`] (client
//! QUIC endpoints, each shared by up to [`DEVICES_PER_ENDPOINT_MAX`] devices), [`DeviceKeys`],
//! [`EdgeLink`] (one device's connection) and [`drain`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::rustls::RootCertStore;
use rand::RngCore;
use relay_net::{
    ALPN_DEVICE, BufferedSockets, EDGE_SERVER_NAME, NetError, auth_keying_material, bind_endpoint,
    client_config, read_frame, request, write_frame,
};
use relay_proto::limits::{AUTH_NONCE_BYTES, QUEUE_FETCH_ENTRIES_MAX};
use relay_proto::wire::{
    AckQueue, Authenticate, ClientRequest, ClientResponse, DeviceAddr, DeviceCiphertext, Envelope,
    EnvelopeKind, FetchAndAck, FetchQueue, GroupCommand, GroupInfo, Hello,
    MESSAGE_TYPE_HOLDS_GROUP_SESSION, PresenceState, QueueBatch, QueueEntry, Register, SendOutcome,
    ServerPush, TypingSignal, WatchPresence, auth_signing_payload, client_request, client_response,
    group_command, queue_entry, send_outcome, server_push,
};
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, GroupId, ProtoError};
use tokio::sync::watch;

use crate::BenchError;
use crate::limits::{
    ACKS_PER_REQUEST_MAX, CLOSE_WAIT_MS, CONNECT_TIMEOUT_MS, DEVICE_SOCKET_RECEIVE_BUFFER_BYTES,
    DEVICES_PER_ENDPOINT_MAX, FETCH_ATTEMPTS_MAX, FETCHES_PER_DRAIN_MAX, PAYLOAD_BYTES,
    REQUEST_TIMEOUT_MS, SEND_ATTEMPTS_MAX, SEND_RETRY_DELAY_MS_MAX, SEND_RETRY_DELAY_MS_MIN,
};

/// The software name a bench device sends in `Hello`.
pub const BENCH_CLIENT_VERSION: &str = concat!("relay-bench/", env!("CARGO_PKG_VERSION"));
/// Olm message type of a normal message on the wire (what an established session sends).
const MESSAGE_TYPE_NORMAL: u32 = 1;

// ---------------------------------------------------------------------------------------------
// The opaque payload

/// Bytes at the start of every payload, so that a foreign message is noticed.
const PAYLOAD_MAGIC: [u8; 4] = *b"rbp1";
/// Bytes of the payload's header: the magic, the row, the composition time.
const PAYLOAD_HEADER_BYTES: usize = PAYLOAD_MAGIC.len() + 1 + 8;
const _: () = assert!(PAYLOAD_HEADER_BYTES <= PAYLOAD_BYTES);

/// What a message's opaque bytes carry: the benchmark row it belongs to and when it was
/// composed (µs on the run's [`RunClock`]), then random filler up to [`PAYLOAD_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// The row of the benchmark that sent it.
    pub row: u8,
    /// When it was composed, in µs since the run's clock started.
    pub composed_at_us: u64,
}

impl Payload {
    /// The payload's [`PAYLOAD_BYTES`] bytes, with fresh random filler (it looks like a
    /// ciphertext to anyone but the benchmark).
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; PAYLOAD_BYTES];
        bytes[..4].copy_from_slice(&PAYLOAD_MAGIC);
        bytes[4] = self.row;
        bytes[5..PAYLOAD_HEADER_BYTES].copy_from_slice(&self.composed_at_us.to_be_bytes());
        rand::rng().fill_bytes(&mut bytes[PAYLOAD_HEADER_BYTES..]);
        bytes
    }

    /// Reads a payload back; `None` for bytes a bench device did not write.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != PAYLOAD_BYTES || bytes[..4] != PAYLOAD_MAGIC {
            return None;
        }
        let composed_at_us = u64::from_be_bytes(bytes[5..PAYLOAD_HEADER_BYTES].try_into().ok()?);
        Some(Self {
            row: bytes[4],
            composed_at_us,
        })
    }
}

/// The run's clock: microseconds since it started, shared by the senders (which write it into
/// payloads) and the receivers (which read it back), all in this process.
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    origin: Instant,
}

impl RunClock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// Microseconds since the clock started, at `instant` (0 before it).
    pub fn us_at(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.origin).as_micros()).unwrap_or(0)
    }

    /// Microseconds since the clock started.
    pub fn now_us(&self) -> u64 {
        self.us_at(Instant::now())
    }

    /// The instant `us` microseconds after the clock started.
    pub fn instant_at(&self, us: u64) -> Instant {
        self.origin + Duration::from_micros(us)
    }

    /// Milliseconds since the clock started (the sans-IO cores' time).
    pub fn now_ms(&self) -> u64 {
        self.now_us() / 1_000
    }
}

// ---------------------------------------------------------------------------------------------
// Sending, sans IO

/// A message composed for one chat and not yet confirmed by every destination region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Composed {
    /// Its number in the chat, from 1.
    pub sender_seq: u64,
    /// Its idempotency key, the same for every transmission.
    pub client_message_id: ClientMessageId,
    /// When it was composed, in µs on the run's clock.
    pub composed_at_us: u64,
}

/// How one transmission of an envelope ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    /// Every destination region stored it (✓).
    Sent,
    /// A region expects this `sender_seq` next: the envelope overtook its predecessor.
    ResendFrom(u64),
    /// A retryable refusal or a lost answer; wait at least this long (ms, 0: no hint).
    Retry {
        /// The server's hint, in ms.
        after_ms: u64,
    },
}

/// Why a [`SendPipeline`] cannot go on (a bug in the caller, or a server that keeps failing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// An outcome arrived for an envelope that is not in flight.
    #[error("an outcome for sender_seq {0}, which is not in flight")]
    NotInFlight(u64),
    /// An envelope failed [`SEND_ATTEMPTS_MAX`] times.
    #[error("sender_seq {sender_seq} failed {attempts} times")]
    GaveUp {
        /// The envelope.
        sender_seq: u64,
        /// Its transmissions.
        attempts: u32,
    },
    /// A region asked for a `sender_seq` this pipeline never composed, or for one beyond the
    /// envelope it refused: it holds what this device never sent.
    #[error("a region expects sender_seq {expected} after refusing {refused}")]
    ImpossibleResend {
        /// The envelope refused.
        refused: u64,
        /// What the region expects next.
        expected: u64,
    },
}

/// One chat's sending decisions: envelopes go strictly in `sender_seq` order with up to a
/// window in flight; after any outcome but "sent" the chat goes one at a time until the
/// envelope in trouble is confirmed (as the client's outbox does); "resend from k" resends at
/// once, a retryable failure waits an exponential delay (or the server's longer hint).
#[derive(Debug, Clone)]
pub struct SendPipeline {
    window: usize,
    next_sender_seq: u64,
    unconfirmed: BTreeMap<u64, (Composed, u32)>,
    in_flight: BTreeSet<u64>,
    next_transmit: u64,
    trouble_until: Option<u64>,
    failures_in_a_row: u32,
    retry_at_ms: u64,
    resends: u64,
    retries: u64,
}

impl SendPipeline {
    /// A chat with nothing sent yet, `window` envelopes in flight at most (at least 1).
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            next_sender_seq: 1,
            unconfirmed: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            next_transmit: 1,
            trouble_until: None,
            failures_in_a_row: 0,
            retry_at_ms: 0,
            resends: 0,
            retries: 0,
        }
    }

    /// Composes the chat's next message.
    pub fn compose(&mut self, client_message_id: ClientMessageId, composed_at_us: u64) -> Composed {
        let composed = Composed {
            sender_seq: self.next_sender_seq,
            client_message_id,
            composed_at_us,
        };
        self.next_sender_seq += 1;
        self.unconfirmed.insert(composed.sender_seq, (composed, 0));
        composed
    }

    /// The next envelope to transmit at `now_ms`, if the window and any retry delay allow one.
    pub fn poll_transmit(&mut self, now_ms: u64) -> Option<Composed> {
        if now_ms < self.retry_at_ms {
            return None;
        }
        let limit = if self.trouble_until.is_some() {
            1
        } else {
            self.window
        };
        if self.in_flight.len() >= limit {
            return None;
        }
        let in_flight = &self.in_flight;
        let (&sender_seq, entry) = self
            .unconfirmed
            .range_mut(self.next_transmit..)
            .find(|(sender_seq, _)| !in_flight.contains(sender_seq))?;
        entry.1 += 1;
        let composed = entry.0;
        self.in_flight.insert(sender_seq);
        self.next_transmit = sender_seq + 1;
        Some(composed)
    }

    /// When a delayed retry becomes due (ms), if one is waiting.
    pub fn poll_timeout(&self) -> Option<u64> {
        (self.retry_at_ms > 0 && !self.unconfirmed.is_empty()).then_some(self.retry_at_ms)
    }

    /// The outcome of transmitting `sender_seq`; returns the message when it is confirmed.
    pub fn handle_outcome(
        &mut self,
        sender_seq: u64,
        result: SendResult,
        now_ms: u64,
    ) -> Result<Option<Composed>, PipelineError> {
        if !self.in_flight.remove(&sender_seq) {
            return Err(PipelineError::NotInFlight(sender_seq));
        }
        let attempts = self
            .unconfirmed
            .get(&sender_seq)
            .map_or(0, |(_, attempts)| *attempts);
        match result {
            SendResult::Sent => {
                let confirmed = self
                    .unconfirmed
                    .remove(&sender_seq)
                    .map(|(composed, _)| composed);
                self.failures_in_a_row = 0;
                if let Some(until) = self.trouble_until
                    && !self.unconfirmed.contains_key(&until)
                {
                    self.trouble_until = None;
                }
                Ok(confirmed)
            }
            SendResult::ResendFrom(expected) => {
                if expected > sender_seq || expected == 0 {
                    return Err(PipelineError::ImpossibleResend {
                        refused: sender_seq,
                        expected,
                    });
                }
                self.resends += 1;
                self.trouble(sender_seq, attempts)?;
                Ok(None)
            }
            SendResult::Retry { after_ms } => {
                self.retries += 1;
                self.trouble(sender_seq, attempts)?;
                self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
                let exponent = self.failures_in_a_row.saturating_sub(1).min(16);
                let backoff_ms = SEND_RETRY_DELAY_MS_MIN.saturating_mul(1 << exponent);
                let delay_ms = backoff_ms.max(after_ms).min(SEND_RETRY_DELAY_MS_MAX);
                self.retry_at_ms = now_ms + delay_ms;
                Ok(None)
            }
        }
    }

    /// Goes one at a time from `sender_seq` until it is confirmed.
    fn trouble(&mut self, sender_seq: u64, attempts: u32) -> Result<(), PipelineError> {
        if attempts >= SEND_ATTEMPTS_MAX {
            return Err(PipelineError::GaveUp {
                sender_seq,
                attempts,
            });
        }
        self.trouble_until = Some(self.trouble_until.map_or(sender_seq, |t| t.max(sender_seq)));
        self.next_transmit = self.next_transmit.min(sender_seq);
        Ok(())
    }

    /// Whether every composed message is confirmed.
    pub fn is_idle(&self) -> bool {
        self.unconfirmed.is_empty()
    }

    /// Envelopes in flight at most.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Messages composed and not yet confirmed.
    pub fn unconfirmed(&self) -> usize {
        self.unconfirmed.len()
    }

    /// "Resend from k" answers so far.
    pub fn resends(&self) -> u64 {
        self.resends
    }

    /// Retryable failures so far.
    pub fn retries(&self) -> u64 {
        self.retries
    }
}

// ---------------------------------------------------------------------------------------------
// Receiving, sans IO

/// One queue entry as the device took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// A message, the first time it arrives.
    Message {
        /// The sending device.
        sender: DeviceAddress,
        /// The chat.
        chat: ChatId,
        /// Its number in the sender's chat.
        sender_seq: u64,
        /// Its opaque bytes (a bench [`Payload`] when a bench device sent it): this device's
        /// ciphertext, or a group message's group ciphertext.
        ciphertext: Vec<u8>,
    },
    /// A message that had arrived before (a redelivery).
    Duplicate {
        /// The sending device.
        sender: DeviceAddress,
        /// Its number in the sender's chat.
        sender_seq: u64,
        /// Its opaque bytes, as in [`Arrival::Message`].
        ciphertext: Vec<u8>,
    },
    /// Receipts for messages this device sent: how many the entry held (one, or a region's
    /// batch of them).
    Receipts(u64),
}

/// A device queue that broke a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    /// The queue skipped entries.
    #[error("queue sequence jumped from {cursor} to {got}")]
    QueueGap {
        /// The highest entry processed.
        cursor: u64,
        /// The entry that came next.
        got: u64,
    },
    /// One sender's messages of a chat arrived out of order (invariant I3).
    #[error("{sender}'s message {got} arrived after {last} in chat {chat}")]
    SenderGap {
        /// The sender.
        sender: DeviceAddress,
        /// The chat.
        chat: ChatId,
        /// The last of its messages delivered here.
        last: u64,
        /// The one that came.
        got: u64,
    },
    /// An entry does not decode.
    #[error("a queue entry is malformed: {0}")]
    Malformed(String),
}

/// One device's queue as it reads it: the cursor (the highest entry processed), the entries to
/// acknowledge (in a request of their own), and the last `sender_seq` of each sender's chat.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    cursor: u64,
    acks: Vec<u64>,
    last_sender_seq: HashMap<(DeviceAddress, ChatId), u64>,
}

impl Inbox {
    /// A queue read from `cursor` on.
    pub fn new(cursor: u64) -> Self {
        Self {
            cursor,
            ..Self::default()
        }
    }

    /// The highest entry processed.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Whether processed entries wait to be acknowledged.
    pub fn has_acks(&self) -> bool {
        !self.acks.is_empty()
    }

    /// The next fetch: read after the cursor. It acknowledges nothing: the acks go in their
    /// own request ([`Inbox::take_acks`]), so a page is read without waiting for the commit of
    /// the previous page's acks.
    pub fn next_fetch(&self) -> FetchAndAck {
        FetchAndAck {
            ack: None,
            fetch: Some(FetchQueue {
                after_queue_seq: self.cursor,
                limit: QUEUE_FETCH_ENTRIES_MAX,
            }),
        }
    }

    /// The entries processed and not acknowledged yet (the oldest [`ACKS_PER_REQUEST_MAX`]),
    /// as a request that only acknowledges; `None` when nothing is owed. Give them back with
    /// [`Inbox::restore_acks`] if it fails.
    pub fn take_acks(&mut self) -> Option<FetchAndAck> {
        if self.acks.is_empty() {
            return None;
        }
        let count = self.acks.len().min(ACKS_PER_REQUEST_MAX);
        Some(FetchAndAck {
            ack: Some(AckQueue {
                queue_seqs: self.acks.drain(..count).collect(),
            }),
            fetch: None,
        })
    }

    /// Acks of a failed request, to send with the next (acknowledging twice is harmless).
    pub fn restore_acks(&mut self, fetch: FetchAndAck) {
        if let Some(ack) = fetch.ack {
            self.acks.extend(ack.queue_seqs);
        }
    }

    /// Processes a fetched page: entries must continue the queue gaplessly, each sender's
    /// messages of a chat must continue its order (a repeat is a duplicate).
    pub fn handle_batch(&mut self, batch: &QueueBatch) -> Result<Vec<Arrival>, InboxError> {
        let mut arrivals = Vec::with_capacity(batch.entries.len());
        for entry in &batch.entries {
            if entry.queue_seq != self.cursor + 1 {
                return Err(InboxError::QueueGap {
                    cursor: self.cursor,
                    got: entry.queue_seq,
                });
            }
            match &entry.item {
                Some(queue_entry::Item::Message(message)) => {
                    arrivals.push(self.handle_message(message)?);
                }
                // The messages of one chat a region committed together.
                Some(queue_entry::Item::Messages(batch)) => {
                    for message in &batch.messages {
                        arrivals.push(self.handle_message(message)?);
                    }
                }
                Some(queue_entry::Item::Receipt(_)) => arrivals.push(Arrival::Receipts(1)),
                Some(queue_entry::Item::Receipts(batch)) => {
                    arrivals.push(Arrival::Receipts(batch.receipts.len() as u64));
                }
                None => return Err(InboxError::Malformed("an entry with no item".into())),
            }
            self.cursor = entry.queue_seq;
            self.acks.push(entry.queue_seq);
        }
        Ok(arrivals)
    }

    /// One queued message: the next of its sender's chat, a repeat, or out of order.
    fn handle_message(
        &mut self,
        message: &relay_proto::wire::QueuedMessage,
    ) -> Result<Arrival, InboxError> {
        let sender = message
            .sender
            .parse()
            .map_err(|error| InboxError::Malformed(error.message))?;
        let chat = ChatId::from_bytes(&message.chat)
            .map_err(|error| InboxError::Malformed(error.message))?;
        // A group message carries its bytes once for every member device.
        let ciphertext = if message.group == 0 {
            &message.ciphertext
        } else {
            &message.group_ciphertext
        };
        let last = self.last_sender_seq.entry((sender, chat)).or_insert(0);
        if message.sender_seq <= *last {
            Ok(Arrival::Duplicate {
                sender,
                sender_seq: message.sender_seq,
                ciphertext: ciphertext.clone(),
            })
        } else if message.sender_seq == *last + 1 {
            *last = message.sender_seq;
            Ok(Arrival::Message {
                sender,
                chat,
                sender_seq: message.sender_seq,
                ciphertext: ciphertext.clone(),
            })
        } else {
            Err(InboxError::SenderGap {
                sender,
                chat,
                last: *last,
                got: message.sender_seq,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The shell

/// A device's identity: a vodozemac Olm account, whose Curve25519 identity key and Ed25519
/// signing key are registered, and which signs the authentication proof.
pub struct DeviceKeys {
    account: vodozemac::olm::Account,
}

impl std::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("signing_key", &self.account.ed25519_key())
            .finish()
    }
}

impl DeviceKeys {
    /// Fresh keys.
    pub fn generate() -> Self {
        Self {
            account: vodozemac::olm::Account::new(),
        }
    }

    /// The registration of an account named `name` with these keys as its first device.
    pub fn register_request(&self, name: &str) -> Register {
        Register {
            name: name.to_owned(),
            identity_key: self.account.curve25519_key().to_bytes().to_vec(),
            signing_key: self.account.ed25519_key().as_bytes().to_vec(),
            one_time_keys: Vec::new(),
            registration_token: String::new(),
            fallback_key: None,
        }
    }

    /// Signs `message` with the Ed25519 key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.account.sign(message).to_bytes()
    }
}

/// A registered device: its address, its keys and the counter of its envelopes.
#[derive(Debug)]
pub struct Device {
    /// Its address.
    pub address: DeviceAddress,
    keys: DeviceKeys,
    next_device_seq: u64,
}

impl Device {
    /// Registers a new account named `name` over `link` (a new connection, not yet
    /// authenticated) and returns its first device.
    pub async fn register(link: &EdgeLink, name: &str) -> Result<Self, BenchError> {
        let keys = DeviceKeys::generate();
        let what = || format!("registering {name}");
        let body = client_request::Body::Register(keys.register_request(name));
        let registered = match link
            .call(body)
            .await
            .map_err(|error| error.into_bench(what()))?
        {
            client_response::Body::Registered(registered) => registered,
            other => return Err(unexpected(&what(), "Registered", &other)),
        };
        let address = DeviceAddr {
            account: registered.account.account,
            device: registered.device,
        }
        .parse()
        .map_err(|error| BenchError::Protocol(format!("{}: {error}", what())))?;
        Ok(Self {
            address,
            keys,
            next_device_seq: 1,
        })
    }

    /// Authenticates this device on `link` with its queue cursor; returns what the control
    /// stream says from then on.
    pub async fn authenticate(
        &self,
        link: &EdgeLink,
        queue_cursor: u64,
    ) -> Result<watch::Receiver<Pushes>, BenchError> {
        self.authenticate_logging(link, queue_cursor, None).await
    }

    /// [`Device::authenticate`], the presence updates and typing notices pushed to this
    /// connection going to `log` (when given) with the instant each arrived.
    pub async fn authenticate_logging(
        &self,
        link: &EdgeLink,
        queue_cursor: u64,
        log: Option<Arc<SignalLog>>,
    ) -> Result<watch::Receiver<Pushes>, BenchError> {
        link.authenticate(
            self.address,
            &self.keys,
            queue_cursor,
            self.next_device_seq,
            log,
        )
        .await
        .map_err(|error| error.into_bench(format!("authenticating {}", self.address)))
    }

    /// The envelope of `composed` for `peer`'s device in `chat`, taking the device's next
    /// `device_seq` (a retransmission takes a new one, as the client's does).
    pub fn envelope(
        &mut self,
        peer: DeviceAddress,
        chat: ChatId,
        composed: &Composed,
        row: u8,
    ) -> Envelope {
        let device_seq = self.take_device_seq();
        opaque_envelope(self.address, peer, chat, composed, row, device_seq)
    }

    /// The group message of `composed` to `group`, taking the device's next `device_seq`.
    pub fn group_envelope(
        &mut self,
        group: &GroupTarget,
        composed: &Composed,
        row: u8,
    ) -> Envelope {
        let device_seq = self.take_device_seq();
        opaque_group_envelope(self.address, group, composed, row, device_seq)
    }

    fn take_device_seq(&mut self) -> u64 {
        let device_seq = self.next_device_seq;
        self.next_device_seq += 1;
        device_seq
    }

    /// Runs a group command as this device's account over `link` (authenticated as this
    /// device); the directory answers with the group.
    pub async fn group_command(
        &self,
        link: &EdgeLink,
        command: group_command::Command,
    ) -> Result<GroupInfo, BenchError> {
        let what = || format!("a group command of {}", self.address);
        let body = client_request::Body::Group(GroupCommand {
            command: Some(command),
        });
        match link
            .call(body)
            .await
            .map_err(|error| error.into_bench(what()))?
        {
            client_response::Body::Group(info) => Ok(info),
            other => Err(unexpected(&what(), "Group", &other)),
        }
    }
}

/// A group as its sender encrypts for it: the membership version, every member (the sender's
/// account among them) and every member device but the sender's own, each holding (so the
/// sender states) its current session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTarget {
    /// The group.
    pub group: GroupId,
    /// The membership version the directory answered last.
    pub version: u64,
    /// Every member, in account id order.
    pub members: Vec<AccountId>,
    /// The entries of a group message: one empty entry per member device but the sender.
    entries: Vec<DeviceCiphertext>,
}

impl GroupTarget {
    /// The group `info` describes (the directory's answer, members included), whose members'
    /// devices are `devices` (the sender's own is left out); an error when a member has no
    /// device here or a device belongs to no member.
    pub fn new(
        info: &GroupInfo,
        sender: DeviceAddress,
        devices: &[DeviceAddress],
    ) -> Result<Self, BenchError> {
        let members: BTreeSet<AccountId> = info
            .members
            .iter()
            .map(|member| AccountId(member.account))
            .collect();
        if info.group == 0 || info.version == 0 || members.len() != info.members.len() {
            return Err(BenchError::Protocol(format!(
                "the directory answered a group that cannot be: {info:?}"
            )));
        }
        let devices: BTreeSet<DeviceAddress> = devices
            .iter()
            .copied()
            .filter(|&device| device != sender)
            .collect();
        let with_devices: BTreeSet<AccountId> = devices
            .iter()
            .map(|device| device.account)
            .chain([sender.account])
            .collect();
        if with_devices != members {
            return Err(BenchError::Refused(format!(
                "group {} has {} members, and the devices given belong to {} accounts (the \
                 sender's included): they must be the same",
                info.group,
                members.len(),
                with_devices.len()
            )));
        }
        Ok(Self {
            group: GroupId(info.group),
            version: info.version,
            members: members.into_iter().collect(),
            entries: devices
                .into_iter()
                .map(|device| DeviceCiphertext {
                    recipient: device.into(),
                    message_type: MESSAGE_TYPE_HOLDS_GROUP_SESSION,
                    body: Vec::new(),
                })
                .collect(),
        })
    }

    /// The group's chat.
    pub fn chat(&self) -> ChatId {
        ChatId::group(self.group)
    }

    /// Member devices a message reaches (every member device but the sender's).
    pub fn receiving_devices(&self) -> usize {
        self.entries.len()
    }
}

/// An envelope from `sender` to `peer` carrying a fresh [`Payload`]: the peer's account and the
/// sender's own are listed (the sender has no other device, so its account is covered by no
/// ciphertext), one ciphertext for the peer's device.
pub fn opaque_envelope(
    sender: DeviceAddress,
    peer: DeviceAddress,
    chat: ChatId,
    composed: &Composed,
    row: u8,
    device_seq: u64,
) -> Envelope {
    let payload = Payload {
        row,
        composed_at_us: composed.composed_at_us,
    };
    Envelope {
        chat: chat.0.to_vec(),
        sender: sender.into(),
        client_message_id: composed.client_message_id.0.to_vec(),
        sender_seq: composed.sender_seq,
        recipient_accounts: vec![peer.account.0, sender.account.0],
        ciphertexts: vec![DeviceCiphertext {
            recipient: peer.into(),
            message_type: MESSAGE_TYPE_NORMAL,
            body: payload.encode(),
        }],
        device_seq,
        ..Default::default()
    }
}

/// A group message from `sender` to `group` carrying a fresh [`Payload`] once, as its group
/// ciphertext: every member listed, an empty entry for every member device but the sender's,
/// and a session id that names the sender (there is no session: the bytes are opaque).
pub fn opaque_group_envelope(
    sender: DeviceAddress,
    group: &GroupTarget,
    composed: &Composed,
    row: u8,
    device_seq: u64,
) -> Envelope {
    let payload = Payload {
        row,
        composed_at_us: composed.composed_at_us,
    };
    Envelope {
        chat: group.chat().0.to_vec(),
        sender: sender.into(),
        client_message_id: composed.client_message_id.0.to_vec(),
        sender_seq: composed.sender_seq,
        recipient_accounts: group.members.iter().map(|account| account.0).collect(),
        ciphertexts: group.entries.clone(),
        device_seq,
        group: group.group.0,
        group_version: group.version,
        kind: EnvelopeKind::Message.into(),
        group_ciphertext: payload.encode(),
        group_session_id: format!("bench-{sender}"),
        // Every earlier number is in flight or stored at the one region: strictly in order.
        group_prev_seq: composed.sender_seq.saturating_sub(1),
    }
}

/// A fresh random client message id.
pub fn client_message_id() -> ClientMessageId {
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    ClientMessageId(id)
}

/// What the control stream said since authentication: every push counts (the edge may drop
/// a push when its device is slow to read, so each one means "fetch", whatever queue sequence
/// it names), the highest queue sequence named is a hint, and the stream's end is the
/// connection's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pushes {
    /// Pushes received.
    pub received: u64,
    /// The highest queue sequence a push named.
    pub latest_queue_seq: u64,
    /// Why the control stream ended, once it did.
    pub closed: Option<String>,
}

/// Entries sent along with pushes that a link keeps until its inbox takes them.
pub const PUSHED_ENTRIES_KEPT_MAX: usize = 4_096;

/// A presence update or typing notice as a device's control stream brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// A watched account's presence, as the watcher may see it.
    Presence {
        /// The watched account.
        account: AccountId,
        /// Its state.
        state: PresenceState,
    },
    /// A device typing to the receiver's account, or stopped.
    Typing {
        /// The typing device.
        from: DeviceAddress,
        /// Typing or stopped.
        typing: bool,
    },
}

/// One push of a [`SignalEvent`]: which device got it, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    /// The device whose control stream brought it.
    pub receiver: DeviceAddress,
    /// What it said.
    pub event: SignalEvent,
    /// When it was read off the stream.
    pub at: Instant,
}

/// The presence and typing pushes of the devices that authenticated with it, in arrival order:
/// every one counted, the first `capacity` kept (later ones are counted, not kept, so memory
/// stays bounded however long a run is).
#[derive(Debug)]
pub struct SignalLog {
    kept: Mutex<Vec<Signal>>,
    capacity: usize,
    presence: AtomicU64,
    typing: AtomicU64,
    /// Typing notices whose sender did not parse (not kept).
    malformed: AtomicU64,
}

impl SignalLog {
    /// An empty log keeping at most `capacity` pushes.
    pub fn new(capacity: usize) -> Self {
        Self {
            kept: Mutex::new(Vec::new()),
            capacity,
            presence: AtomicU64::new(0),
            typing: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        }
    }

    /// Counts `signal`, and keeps it while there is room.
    pub fn record(&self, signal: Signal) {
        let counter = match signal.event {
            SignalEvent::Presence { .. } => &self.presence,
            SignalEvent::Typing { .. } => &self.typing,
        };
        let mut kept = self.lock();
        if kept.len() < self.capacity {
            kept.push(signal);
        }
        // Counted under the lock, so that a count read is never ahead of what is kept.
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Presence updates received so far.
    pub fn presence_received(&self) -> u64 {
        self.presence.load(Ordering::Relaxed)
    }

    /// Typing notices received so far.
    pub fn typing_received(&self) -> u64 {
        self.typing.load(Ordering::Relaxed)
    }

    /// Typing notices whose typing device did not parse.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Pushes received but not kept (past the capacity).
    pub fn not_kept(&self) -> u64 {
        let kept = self.lock().len() as u64;
        (self.presence_received() + self.typing_received()).saturating_sub(kept)
    }

    /// A copy of the pushes kept so far, in arrival order.
    pub fn kept(&self) -> Vec<Signal> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Signal>> {
        self.kept
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

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
    async fn authenticate(
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

fn unexpected(what: &str, wanted: &str, got: &client_response::Body) -> BenchError {
    BenchError::Protocol(format!(
        "{what}: {} where {wanted} was expected",
        got.name()
    ))
}

#[cfg(test)]
mod tests {
    use relay_proto::wire::{QueueEntry, QueuedMessage, QueuedReceipt};
    use relay_proto::{AccountId, DeviceId};

    use super::*;

    fn id(n: u8) -> ClientMessageId {
        ClientMessageId([n; 16])
    }

    fn device(account: u64) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(account),
            device: DeviceId(1),
        }
    }

    #[test]
    fn payloads_carry_their_row_and_time() {
        let payload = Payload {
            row: 3,
            composed_at_us: 123_456_789,
        };
        let bytes = payload.encode();
        assert_eq!(bytes.len(), PAYLOAD_BYTES);
        assert_eq!(Payload::decode(&bytes), Some(payload));
        assert_ne!(payload.encode(), bytes, "the filler is fresh each time");
        assert_eq!(Payload::decode(&bytes[..50]), None);
        assert_eq!(Payload::decode(&[0u8; PAYLOAD_BYTES]), None);
    }

    #[test]
    fn a_window_of_one_waits_for_each_confirmation() {
        let mut pipeline = SendPipeline::new(1);
        let first = pipeline.compose(id(1), 10);
        let second = pipeline.compose(id(2), 20);
        assert_eq!((first.sender_seq, second.sender_seq), (1, 2));
        assert_eq!(pipeline.poll_transmit(0), Some(first));
        assert_eq!(pipeline.poll_transmit(0), None, "one in flight");
        assert_eq!(
            pipeline.handle_outcome(1, SendResult::Sent, 0),
            Ok(Some(first))
        );
        assert_eq!(pipeline.poll_transmit(0), Some(second));
        assert_eq!(
            pipeline.handle_outcome(2, SendResult::Sent, 0),
            Ok(Some(second))
        );
        assert!(pipeline.is_idle());
        assert_eq!(pipeline.poll_transmit(0), None);
        assert_eq!(
            pipeline.handle_outcome(2, SendResult::Sent, 0),
            Err(PipelineError::NotInFlight(2))
        );
    }

    #[test]
    fn an_overtaking_envelope_is_resent_after_its_predecessor_one_at_a_time() {
        let mut pipeline = SendPipeline::new(4);
        for n in 1..=6 {
            pipeline.compose(id(n), 0);
        }
        let sent: Vec<u64> = std::iter::from_fn(|| pipeline.poll_transmit(0))
            .map(|composed| composed.sender_seq)
            .collect();
        assert_eq!(sent, vec![1, 2, 3, 4], "the window");
        // 2 overtook 1 at the region; 1, 3 and 4 are stored.
        assert_eq!(
            pipeline.handle_outcome(2, SendResult::ResendFrom(1), 0),
            Ok(None)
        );
        assert!(pipeline.handle_outcome(1, SendResult::Sent, 0).is_ok());
        assert!(pipeline.handle_outcome(3, SendResult::Sent, 0).is_ok());
        assert!(pipeline.handle_outcome(4, SendResult::Sent, 0).is_ok());
        // Trouble: one at a time from 2, skipping what is confirmed, until 2 is confirmed.
        assert_eq!(pipeline.poll_transmit(0).map(|c| c.sender_seq), Some(2));
        assert_eq!(pipeline.poll_transmit(0), None);
        assert!(pipeline.handle_outcome(2, SendResult::Sent, 0).is_ok());
        let sent: Vec<u64> = std::iter::from_fn(|| pipeline.poll_transmit(0))
            .map(|composed| composed.sender_seq)
            .collect();
        assert_eq!(sent, vec![5, 6], "the window again");
        assert_eq!(pipeline.resends(), 1);
        assert_eq!(
            pipeline.handle_outcome(5, SendResult::ResendFrom(9), 0),
            Err(PipelineError::ImpossibleResend {
                refused: 5,
                expected: 9
            })
        );
    }

    #[test]
    fn retries_wait_longer_each_time_and_give_up() {
        let mut pipeline = SendPipeline::new(1);
        pipeline.compose(id(1), 0);
        let mut now_ms = 0;
        let mut delays = Vec::new();
        for attempt in 1..=SEND_ATTEMPTS_MAX {
            assert!(
                pipeline.poll_transmit(now_ms).is_some(),
                "attempt {attempt}"
            );
            let result = pipeline.handle_outcome(1, SendResult::Retry { after_ms: 0 }, now_ms);
            if attempt == SEND_ATTEMPTS_MAX {
                assert_eq!(
                    result,
                    Err(PipelineError::GaveUp {
                        sender_seq: 1,
                        attempts: SEND_ATTEMPTS_MAX
                    })
                );
                break;
            }
            assert_eq!(result, Ok(None));
            let due = pipeline.poll_timeout().expect("a retry is due later");
            assert_eq!(pipeline.poll_transmit(due - 1), None, "not before its time");
            delays.push(due - now_ms);
            now_ms = due;
        }
        assert_eq!(delays[0], SEND_RETRY_DELAY_MS_MIN);
        assert_eq!(delays[1], 2 * SEND_RETRY_DELAY_MS_MIN);
        assert_eq!(*delays.last().expect("delays"), SEND_RETRY_DELAY_MS_MAX);
        // A server's longer hint wins, capped.
        let mut pipeline = SendPipeline::new(1);
        pipeline.compose(id(1), 0);
        pipeline.poll_transmit(0);
        pipeline
            .handle_outcome(1, SendResult::Retry { after_ms: 700 }, 0)
            .expect("retry");
        assert_eq!(pipeline.poll_timeout(), Some(700));
    }

    fn message_entry(queue_seq: u64, sender: DeviceAddress, sender_seq: u64) -> QueueEntry {
        QueueEntry {
            queue_seq,
            item: Some(queue_entry::Item::Message(QueuedMessage {
                chat: vec![7; 16],
                chat_seq: sender_seq,
                sender: sender.into(),
                client_message_id: vec![1; 16],
                sender_seq,
                server_time_ms: 0,
                message_type: 1,
                ciphertext: vec![9; 4],
                ..Default::default()
            })),
        }
    }

    fn batch(entries: Vec<QueueEntry>) -> QueueBatch {
        QueueBatch {
            entries,
            ..QueueBatch::default()
        }
    }

    #[test]
    fn an_entry_of_messages_arrives_message_by_message_under_one_ack() {
        let alice = device(1);
        let mut inbox = Inbox::new(0);
        let messages = (1..=3)
            .map(
                |sender_seq| match message_entry(1, alice, sender_seq).item {
                    Some(queue_entry::Item::Message(message)) => message,
                    other => unreachable!("a message entry, not {other:?}"),
                },
            )
            .collect();
        let entry = QueueEntry {
            queue_seq: 1,
            item: Some(queue_entry::Item::Messages(
                relay_proto::wire::QueuedMessages { messages },
            )),
        };
        let arrivals = inbox.handle_batch(&batch(vec![entry])).expect("in order");
        let numbers: Vec<u64> = arrivals
            .iter()
            .map(|arrival| match arrival {
                Arrival::Message { sender_seq, .. } => *sender_seq,
                other => panic!("a message, not {other:?}"),
            })
            .collect();
        assert_eq!(numbers, vec![1, 2, 3]);
        assert_eq!(inbox.cursor(), 1);
        let acks = inbox.take_acks().and_then(|acks| acks.ack).expect("acks");
        assert_eq!(acks.queue_seqs, vec![1], "one ack for the entry");
    }

    #[test]
    fn the_inbox_acknowledges_what_it_processed_in_its_own_request() {
        let alice = device(1);
        let mut inbox = Inbox::new(0);
        let first = inbox.next_fetch();
        assert_eq!(first.ack, None, "a fetch acknowledges nothing");
        assert_eq!(first.fetch.map(|fetch| fetch.after_queue_seq), Some(0));
        assert_eq!(inbox.take_acks(), None, "nothing is owed yet");
        let receipt = QueueEntry {
            queue_seq: 3,
            item: Some(queue_entry::Item::Receipt(QueuedReceipt::default())),
        };
        let arrivals = inbox
            .handle_batch(&batch(vec![
                message_entry(1, alice, 1),
                message_entry(2, alice, 2),
                receipt,
            ]))
            .expect("gapless");
        assert_eq!(arrivals.len(), 3);
        assert!(matches!(
            arrivals[1],
            Arrival::Message { sender_seq: 2, .. }
        ));
        assert_eq!(arrivals[2], Arrival::Receipts(1));
        assert_eq!(inbox.cursor(), 3);
        let second = inbox.next_fetch();
        assert_eq!(second.ack, None);
        assert_eq!(
            second.fetch.as_ref().map(|fetch| fetch.after_queue_seq),
            Some(3),
            "the next page is read before the acks are answered"
        );
        let acks = inbox.take_acks().expect("acks owed");
        assert_eq!(
            acks.ack.clone().map(|ack| ack.queue_seqs),
            Some(vec![1, 2, 3])
        );
        assert_eq!(acks.fetch, None, "an ack reads nothing");
        assert!(!inbox.has_acks());
        inbox.restore_acks(acks);
        assert!(inbox.has_acks(), "a failed ack gives its acks back");
    }

    #[test]
    fn an_ack_request_holds_at_most_its_limit_the_oldest_first() {
        let alice = device(1);
        let mut inbox = Inbox::new(0);
        let owed = ACKS_PER_REQUEST_MAX as u64 + 2;
        let entries = (1..=owed)
            .map(|seq| message_entry(seq, alice, seq))
            .collect();
        inbox.handle_batch(&batch(entries)).expect("gapless");
        let first = inbox.take_acks().and_then(|acks| acks.ack).expect("acks");
        assert_eq!(first.queue_seqs.len(), ACKS_PER_REQUEST_MAX);
        assert_eq!(first.queue_seqs.first(), Some(&1));
        let rest = inbox
            .take_acks()
            .and_then(|acks| acks.ack)
            .expect("the rest");
        assert_eq!(rest.queue_seqs, vec![owed - 1, owed]);
        assert_eq!(inbox.take_acks(), None);
    }

    #[test]
    fn a_group_message_lists_every_member_and_parses_as_one() {
        use relay_proto::GroupId;
        use relay_proto::wire::GroupMemberInfo;

        let sender = device(1);
        let members: Vec<DeviceAddress> = (2..=4).map(device).collect();
        let info = GroupInfo {
            group: 7,
            version: 3,
            members: (1..=4)
                .map(|account| GroupMemberInfo {
                    account,
                    admin: account == 1,
                })
                .collect(),
            member_count: 4,
            ..GroupInfo::default()
        };
        let target = GroupTarget::new(&info, sender, &members).expect("a group");
        assert_eq!(target.receiving_devices(), 3);
        let composed = Composed {
            sender_seq: 1,
            client_message_id: id(1),
            composed_at_us: 42,
        };
        let envelope = opaque_group_envelope(sender, &target, &composed, 8, 1);
        let parsed = envelope
            .parse()
            .expect("a group message the protocol accepts");
        assert_eq!(parsed.recipient_devices, members);
        assert_eq!(
            parsed.recipient_accounts,
            (1..=4).map(AccountId).collect::<Vec<_>>()
        );
        assert_eq!(
            parsed
                .group
                .map(|group| (group.group, group.version, group.kind)),
            Some((GroupId(7), 3, EnvelopeKind::Message))
        );
        assert_eq!(
            Payload::decode(&envelope.group_ciphertext),
            Some(Payload {
                row: 8,
                composed_at_us: 42
            })
        );
        // A member without a device here, or a device of an account that is not a member.
        assert!(GroupTarget::new(&info, sender, &members[..2]).is_err());
        let stranger = [members.clone(), vec![device(9)]].concat();
        assert!(GroupTarget::new(&info, sender, &stranger).is_err());
    }

    #[test]
    fn the_inbox_reads_a_group_message_from_its_group_ciphertext() {
        let mut entry = message_entry(1, device(1), 1);
        if let Some(queue_entry::Item::Message(message)) = &mut entry.item {
            message.group = 7;
            message.ciphertext.clear();
            message.group_ciphertext = vec![5; 8];
        }
        let arrivals = Inbox::new(0)
            .handle_batch(&batch(vec![entry]))
            .expect("gapless");
        assert!(
            matches!(&arrivals[0], Arrival::Message { ciphertext, .. } if *ciphertext == [5; 8]),
            "{arrivals:?}"
        );
    }

    #[test]
    fn the_inbox_finds_duplicates_gaps_and_reordering() {
        let alice = device(1);
        let mut inbox = Inbox::new(0);
        inbox
            .handle_batch(&batch(vec![message_entry(1, alice, 1)]))
            .expect("first");
        let arrivals = inbox
            .handle_batch(&batch(vec![message_entry(2, alice, 1)]))
            .expect("a redelivery");
        assert!(matches!(
            arrivals[0],
            Arrival::Duplicate { sender_seq: 1, .. }
        ));
        assert_eq!(
            inbox.handle_batch(&batch(vec![message_entry(4, alice, 2)])),
            Err(InboxError::QueueGap { cursor: 2, got: 4 })
        );
        assert!(matches!(
            inbox.handle_batch(&batch(vec![message_entry(3, alice, 3)])),
            Err(InboxError::SenderGap {
                last: 1,
                got: 3,
                ..
            })
        ));
    }
}
