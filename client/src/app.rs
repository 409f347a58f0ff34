//! The flows a person runs — register, send, sync, read, listen, history — over one data
//! directory: the runtime shell around the sans-IO pieces ([`crate::outbox`], [`crate::inbound`],
//! [`crate::discovery`] parsing) that owns the connection, the store and the clock.
//!
//! Durability order, everywhere: a change is committed to the store before the server is told
//! (an ack, a send) and before it is reported as done. What a person types is committed before
//! any network attempt: a text for a known contact goes straight to the outbox; one for a name
//! not resolved yet is kept as a draft, which every flush tries to resolve and then moves to the
//! outbox under the same message id, in one transaction. A kill at any point after `send`
//! started loses nothing.
//!
//! Keys: registration uploads 50 one-time keys and a fallback key signed by the device; later
//! uploads top the one-time keys up and replace the fallback key when [`crate::fallback`] says
//! so. A claimed fallback key is used only if its signature verifies.
//!
//! A device whose state went back (its data directory restored from an older copy) is refused
//! by the relay with `DeviceRolledBack`; the device then records that, marks everything in its
//! outbox and its drafts failed with the reason, and every later command refuses to send or
//! receive with [`ClientError::DeviceRolledBack`], which says what happened and what to do.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_proto::clock::{Clock, SystemClock};
use relay_proto::limits::{
    ONE_TIME_KEYS_AT_REGISTRATION, ONE_TIME_KEYS_LOW_WATERMARK, ONE_TIME_KEYS_PER_UPLOAD_MAX,
    QUEUE_FETCH_ENTRIES_MAX,
};
use relay_proto::wire::{
    Committed, Envelope, FallbackKeyState, OneTimeKeyCount, Register, send_outcome,
    validate_account_name,
};
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId, ErrorCode};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::connection::{DeviceProgress, Dialer, EdgeConnection, Push};
use crate::content::Content;
use crate::limits::{READ_RECEIPT_IDS_MAX, RETRY_DELAY_MS_MAX};
use crate::crypto::{Crypto, verify_fallback_key};
use crate::envelope;
use crate::error::{ClientError, Result};
use crate::events::{Direction, Event};
use crate::fallback::{self, FallbackFacts, FallbackTimes};
use crate::inbound::{Inbound, process_entries};
use crate::outbox::{Next, Outbox, Outcome, Pending, retry_delay_ms};
use crate::secrets::{self, DEVICE_KEY_FILE};
use crate::store::{Contact, Draft, Identity, NewMessage, OutboxRow, Settings, Store, Tick};

/// The database file inside a data directory.
pub const DATABASE_FILE: &str = "relay.db";
/// The copy of the deployment's CA certificate inside a data directory.
pub const CA_FILE: &str = "ca.pem";
/// How long `send`, `read` and `sync` keep retrying the outbox before leaving entries pending, in
/// ms (twice the request timeout: a hung request still leaves time for a retry).
pub const FLUSH_BUDGET_MS: u64 = 20_000;
/// How long `sync` keeps retrying after a failure that follows a successful connection (a request
/// that timed out, a dropped connection), in ms. A first connection that fails is not retried.
pub const SYNC_RETRY_BUDGET_MS: u64 = 30_000;
/// While waiting or listening, how often the queue is fetched even without a push, in ms.
pub const POLL_INTERVAL_MS: u64 = 10_000;
/// Shortest time between two one-time key uploads prompted by low counts, in ms.
pub const KEY_UPLOAD_INTERVAL_MS: u64 = 60_000;
/// Queue pages fetched by one catch-up before handing control back to the caller.
pub const FETCH_ROUNDS_MAX: usize = 64;
/// Times a "rolled back" refusal is checked again when this device's counters moved meanwhile
/// (another process on the same data directory acknowledged or sent after this one read them).
pub const ROLLBACK_RECHECKS_MAX: u32 = 3;
/// Why an outbox entry is given up when the relay refuses this device as rolled back.
pub const ROLLED_BACK_FAILURE: &str = "not sent: this device's state went back (its data \
directory was restored from an older copy); register this device again in a new data directory";

/// Deployment settings given on the command line; they override the remembered ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// The edge locator's DNS address.
    pub locator: Option<SocketAddr>,
    /// The local address to bind.
    pub bind_ip: Option<IpAddr>,
    /// The CA certificate to trust.
    pub ca_path: Option<PathBuf>,
    /// Where the device key is kept, when not beside the database (see [`crate::secrets`]).
    pub device_key: Option<PathBuf>,
}

impl Overrides {
    /// The device key file of `data_dir`: the one given, else `device.key` inside it.
    pub fn device_key_path(&self, data_dir: &Path) -> PathBuf {
        self.device_key
            .clone()
            .unwrap_or_else(|| data_dir.join(DEVICE_KEY_FILE))
    }
}

/// What a client touches besides its data directory. The default is the real world: kernel
/// sockets and the locator, the system clock, randomness from the operating system; a
/// simulation supplies its own.
#[derive(Clone)]
pub struct Environment {
    /// How edges are reached.
    pub dialer: Dialer,
    /// Wall-clock time (message timestamps, never timers).
    pub clock: Arc<dyn Clock>,
    /// Seed of the client's randomness (client message ids, retry jitter); `None` draws one
    /// from the operating system.
    pub rng_seed: Option<u64>,
}

impl Default for Environment {
    fn default() -> Self {
        Self {
            dialer: Dialer::default(),
            clock: Arc::new(SystemClock),
            rng_seed: None,
        }
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment")
            .field("dialer", &self.dialer)
            .field("rng_seed", &self.rng_seed)
            .finish_non_exhaustive()
    }
}

/// Where a wait ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// Never: listen until the deadline or Ctrl-C.
    Forever,
    /// A message of this device reaches a tick.
    Tick(ClientMessageId, Tick),
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunEnd {
    Reached,
    TimedOut,
    Interrupted,
}

/// Creates the data directory's device: new Olm keys, an account named `name` at the edge the
/// locator names for `bind_ip`, and the settings later commands reuse. Reports [`Event::Registered`].
pub async fn register(
    data_dir: &Path,
    name: &str,
    overrides: Overrides,
    registration_token: &str,
    sink: &mut dyn FnMut(Event),
) -> Result<Identity> {
    register_in(
        &Environment::default(),
        data_dir,
        name,
        overrides,
        registration_token,
        sink,
    )
    .await
}

/// [`register`] in a given environment.
pub async fn register_in(
    environment: &Environment,
    data_dir: &Path,
    name: &str,
    overrides: Overrides,
    registration_token: &str,
    sink: &mut dyn FnMut(Event),
) -> Result<Identity> {
    validate_account_name(name).map_err(|error| ClientError::Invalid(error.message))?;
    create_private_dir(data_dir)?;
    let key_path = overrides.device_key_path(data_dir);
    for message in secrets::repair_permissions(data_dir, &[&key_path]) {
        sink(Event::Note { message });
    }
    let mut store = Store::create(&data_dir.join(DATABASE_FILE))?;
    store.unlock(&key_path)?;
    if let Some(identity) = store.identity()? {
        return Err(ClientError::AlreadyRegistered(identity.name));
    }
    let remembered = store.settings()?;
    let given = Settings {
        locator: overrides
            .locator
            .or(remembered.as_ref().map(|settings| settings.locator))
            .ok_or_else(|| ClientError::Invalid("register needs --locator ADDR".into()))?,
        bind_ip: overrides
            .bind_ip
            .or(remembered.as_ref().map(|settings| settings.bind_ip))
            .ok_or_else(|| ClientError::Invalid("register needs --bind IP".into()))?,
        ca_path: overrides
            .ca_path
            .or(remembered
                .as_ref()
                .map(|settings| resolve(data_dir, &settings.ca_path)))
            .ok_or_else(|| ClientError::Invalid("register needs --ca PATH".into()))?,
    };
    let ca_copy = data_dir.join(CA_FILE);
    if given.ca_path != ca_copy {
        std::fs::copy(&given.ca_path, &ca_copy).map_err(|error| {
            ClientError::Invalid(format!(
                "cannot copy the CA certificate {}: {error}",
                given.ca_path.display()
            ))
        })?;
    }
    relay_net::load_roots(&ca_copy)?;
    let stored = Settings {
        ca_path: PathBuf::from(CA_FILE),
        ..given.clone()
    };
    let settings = Settings {
        ca_path: ca_copy,
        ..given
    };

    // An earlier attempt (say, a taken name) left keys: reuse them rather than make new ones.
    let mut crypto = store.load_crypto()?.unwrap_or_default();
    if crypto.unpublished_one_time_keys().is_empty() {
        crypto.generate_one_time_keys(ONE_TIME_KEYS_AT_REGISTRATION);
    }
    let first_fallback_key = crypto.unpublished_fallback_key().is_none();
    if first_fallback_key {
        crypto.generate_fallback_key();
    }
    let changes = crypto.take_changes()?;
    let now_ms = environment.clock.now_ms();
    store.write(|writer| {
        writer.save_crypto(&changes)?;
        if first_fallback_key {
            writer.set_fallback_times(&FallbackTimes {
                made_at_ms: Some(now_ms),
                previous_kept: false,
            })?;
        }
        writer.set_settings(&stored)
    })?;

    let connection = dial(environment, &settings, store.last_edge()?, sink).await?;
    let edge = connection.edge();
    let request = Register {
        name: name.into(),
        identity_key: crypto.identity_key().to_vec(),
        signing_key: crypto.signing_key().to_vec(),
        one_time_keys: crypto.unpublished_one_time_keys(),
        registration_token: registration_token.into(),
        fallback_key: crypto.unpublished_fallback_key(),
    };
    let registered = connection.register(request).await;
    connection.close().await;
    let registered = registered?;
    if registered.device == 0 || registered.account.account == 0 || registered.account.name != name
    {
        return Err(ClientError::UnexpectedResponse(format!(
            "registration answered account {} device {} named {:?}",
            registered.account.account, registered.device, registered.account.name
        )));
    }
    crypto.mark_keys_published();
    let identity = Identity {
        account: AccountId(registered.account.account),
        device: DeviceId(registered.device),
        name: name.into(),
        region: registered.account.region,
        epoch: registered.account.epoch,
    };
    let changes = crypto.take_changes()?;
    store.write(|writer| {
        writer.save_crypto(&changes)?;
        writer.set_identity(&identity)?;
        writer.set_last_edge(edge)?;
        writer.upsert_contact(&Contact {
            account: identity.account,
            name: name.into(),
            region: identity.region,
        })
    })?;
    sink(Event::Registered {
        name: identity.name.clone(),
        account: identity.account.0,
        device: identity.device.0,
        region: identity.region,
    });
    Ok(identity)
}

/// A registered device, open for one command.
pub struct Client {
    store: Store,
    /// The Olm account as opened, for signing only: every operation that changes Olm state reads
    /// the committed state inside its own transaction (another process may share the directory).
    signer: Crypto,
    identity: Identity,
    settings: Settings,
    outbox: Outbox,
    connection: Option<EdgeConnection>,
    pushes: Option<mpsc::Receiver<Push>>,
    rng: StdRng,
    environment: Environment,
    started: Instant,
    sink: Box<dyn FnMut(Event)>,
    last_problem: Option<String>,
    /// Drafts given up during this command because no account has their name: (id, name).
    unknown_drafts: Vec<(ClientMessageId, String)>,
    last_key_upload: Option<Instant>,
    /// Why the relay refused this device as rolled back (stored; nothing is sent or fetched).
    rolled_back: Option<String>,
    received: usize,
    ticks: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("identity", &self.identity)
            .field("settings", &self.settings)
            .field("outbox", &self.outbox)
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl Client {
    /// Opens the registered device of `data_dir`; events go to `sink`.
    pub fn open(
        data_dir: &Path,
        overrides: Overrides,
        sink: Box<dyn FnMut(Event)>,
    ) -> Result<Self> {
        Self::open_in(Environment::default(), data_dir, overrides, sink)
    }

    /// [`Client::open`] in a given environment.
    ///
    /// Only a data directory without a database is not registered: a database that is empty,
    /// not a database, or lacks its tables, identity, settings or Olm account is damaged, and a
    /// missing or wrong device key is its own error; none of them ever starts a new identity.
    pub fn open_in(
        environment: Environment,
        data_dir: &Path,
        overrides: Overrides,
        mut sink: Box<dyn FnMut(Event)>,
    ) -> Result<Self> {
        let database = data_dir.join(DATABASE_FILE);
        if !database.exists() {
            return Err(ClientError::NotRegistered);
        }
        let key_path = overrides.device_key_path(data_dir);
        for message in secrets::repair_permissions(data_dir, &[&key_path]) {
            sink(Event::Note { message });
        }
        let mut store = Store::open(&database)?;
        let identity = match store
            .identity()
            .map_err(|error| store.damaged(&error.to_string()))?
        {
            Some(identity) => identity,
            None if store.has_olm_account()? => return Err(ClientError::RegistrationUnfinished),
            None => return Err(store.damaged("it holds no registered device")),
        };
        if !store.has_olm_account()? {
            return Err(store.damaged("the Olm account is missing"));
        }
        let remembered = store
            .settings()
            .map_err(|error| store.damaged(&error.to_string()))?
            .ok_or_else(|| store.damaged("the deployment settings are missing"))?;
        store.unlock(&key_path)?;
        let settings = Settings {
            locator: overrides.locator.unwrap_or(remembered.locator),
            bind_ip: overrides.bind_ip.unwrap_or(remembered.bind_ip),
            ca_path: overrides
                .ca_path
                .unwrap_or_else(|| resolve(data_dir, &remembered.ca_path)),
        };
        let signer = store
            .load_crypto()?
            .ok_or_else(|| store.damaged("the Olm account is missing"))?;
        let rolled_back = store.rolled_back()?;
        store.write(|writer| writer.prune_seen(environment.clock.now_ms()))?;
        let mut outbox = Outbox::new();
        for row in store.outbox()? {
            outbox.insert(
                Pending {
                    chat: row.chat,
                    sender_seq: row.sender_seq,
                    client_message_id: row.client_message_id,
                },
                0,
            )?;
        }
        Ok(Self {
            store,
            signer,
            identity,
            settings,
            outbox,
            connection: None,
            pushes: None,
            rng: environment
                .rng_seed
                .map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64),
            environment,
            started: Instant::now(),
            sink,
            last_problem: None,
            unknown_drafts: Vec::new(),
            last_key_upload: None,
            rolled_back,
            received: 0,
            ticks: 0,
        })
    }

    /// The registered identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Sends a text to `peer`. The text is stored before any network attempt (in the outbox, or
    /// as a draft while `peer` is a name not resolved yet) and reported pending. Without `wait`,
    /// returns once it is sent (✓) or, if that is not possible within [`FLUSH_BUDGET_MS`],
    /// leaves it pending for the next command. With `wait`, stays connected (processing the
    /// queue) until the message reaches `until` or `timeout` passes. A name no account has is
    /// [`ClientError::UnknownPeer`] once the directory says so.
    pub async fn send(
        &mut self,
        peer: &str,
        text: &str,
        wait: Option<(Tick, Duration)>,
    ) -> Result<ClientMessageId> {
        self.refuse_if_rolled_back()?;
        let id = self.store_typed(peer, text)?;
        match wait {
            None => {
                let connect_error = self.connect().await.err();
                let flushed = self.flush_after_connect(connect_error).await;
                self.report_still_pending(Some(id)).await?;
                if let Some(error) = self.given_up(id) {
                    return Err(error);
                }
                flushed.map(|()| id)
            }
            Some((until, timeout)) => {
                let deadline = Instant::now() + timeout;
                match self
                    .run(Goal::Tick(id, until), Some(deadline), false)
                    .await?
                {
                    RunEnd::Reached => Ok(id),
                    RunEnd::Interrupted => Err(ClientError::Interrupted),
                    RunEnd::TimedOut => {
                        let tick = self
                            .store
                            .message(self.identity.address(), id)?
                            .map_or(Tick::Pending, |m| m.tick);
                        Err(ClientError::TimedOut(format!(
                            "message {id} is {} after {:.1} s; it did not reach {} (it stays in the outbox if unsent)",
                            tick.label(),
                            timeout.as_secs_f64(),
                            until.name()
                        )))
                    }
                }
            }
        }
    }

    /// Queues a text for `peer`, a contact this device already knows, without touching the
    /// network: what an app does when someone taps send with no connection. The next send, sync,
    /// read or listen delivers it (with whatever else waits, several of a chat at once).
    pub fn compose(&mut self, peer: &str, text: &str) -> Result<ClientMessageId> {
        self.refuse_if_rolled_back()?;
        let contact = self
            .store
            .contact_by_name(peer)?
            .ok_or_else(|| ClientError::UnknownPeer(peer.to_owned()))?;
        self.queue_text(&contact, text)
    }

    /// Stores a text typed for `peer`, without touching the network: in the outbox when `peer`
    /// is a known contact, else as a draft for the name. Reports it pending.
    fn store_typed(&mut self, peer: &str, text: &str) -> Result<ClientMessageId> {
        validate_account_name(peer).map_err(|_| ClientError::UnknownPeer(peer.into()))?;
        if peer == self.identity.name {
            return Err(ClientError::Invalid(
                "a message to yourself has no recipient device".into(),
            ));
        }
        if let Some(contact) = self.store.contact_by_name(peer)? {
            return self.queue_text(&contact, text);
        }
        let now = self.wall_ms();
        // The same checks the outbox entry will make, so a draft always becomes one.
        Content::text(text, now, 0)?;
        let draft = Draft {
            client_message_id: ClientMessageId(self.rng.random()),
            peer_name: peer.to_owned(),
            text: text.to_owned(),
            sent_at_ms: now,
        };
        self.store.write(|writer| writer.insert_draft(&draft))?;
        self.emit(Event::Tick {
            id: draft.client_message_id.to_string(),
            peer: draft.peer_name.clone(),
            tick: Tick::Pending,
        });
        Ok(draft.client_message_id)
    }

    /// Puts a text for `contact` in the outbox (after any draft for it) and reports it pending.
    fn queue_text(&mut self, contact: &Contact, text: &str) -> Result<ClientMessageId> {
        if contact.account == self.identity.account {
            return Err(ClientError::Invalid(
                "a message to yourself has no recipient device".into(),
            ));
        }
        let content = Content::text(text, self.wall_ms(), contact.account.0)?;
        self.queue_known_drafts()?;
        let id = ClientMessageId(self.rng.random());
        self.enqueue(contact.account, &content, Some(text), id, false)?;
        self.emit(Event::Tick {
            id: id.to_string(),
            peer: contact.name.clone(),
            tick: Tick::Pending,
        });
        Ok(id)
    }

    /// Flushes the outbox, fetches and acknowledges everything queued, then reports a summary.
    pub async fn sync(&mut self) -> Result<()> {
        let retry_until = Instant::now() + Duration::from_millis(SYNC_RETRY_BUDGET_MS);
        let mut attempts = 0;
        let mut reached_edge = false;
        loop {
            let worked = async {
                self.connect().await?;
                reached_edge = true;
                self.flush(Some(
                    Instant::now() + Duration::from_millis(FLUSH_BUDGET_MS),
                ))
                .await?;
                self.fetch_all().await
            }
            .await;
            match worked {
                Ok(()) => break,
                Err(error)
                    if (error.is_retryable() || error.needs_reconnect())
                        && (reached_edge || !error.is_unreachable())
                        && Instant::now() < retry_until =>
                {
                    attempts += 1;
                    let delay = retry_delay_ms(attempts, &mut self.rng)
                        .max(error.retry_after_ms().unwrap_or(0).min(RETRY_DELAY_MS_MAX));
                    self.emit(Event::Note {
                        message: format!("{error}; retrying in {delay} ms"),
                    });
                    self.disconnect().await;
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                Err(error) => return Err(error),
            }
        }
        self.report_still_pending(None).await?;
        let event = Event::Synced {
            received: self.received,
            ticks: self.ticks,
            pending: self.outbox.len() + self.store.drafts()?.len(),
        };
        self.emit(event);
        Ok(())
    }

    /// Marks every unread message from `peer` read and sends the end-to-end encrypted receipt;
    /// returns how many were marked.
    pub async fn read(&mut self, peer: &str) -> Result<usize> {
        self.refuse_if_rolled_back()?;
        let contact = self.resolve_peer(peer).await?;
        self.queue_known_drafts()?;
        let unread = self.store.unread_from(contact.account)?;
        let ids: Vec<ClientMessageId> = unread
            .iter()
            .map(|message| message.client_message_id)
            .collect();
        let now = self.wall_ms();
        let chat = ChatId::direct(self.identity.account, contact.account);
        let mut entries = Vec::new();
        let mut contents = Vec::new();
        for chunk in ids.chunks(READ_RECEIPT_IDS_MAX) {
            let content = Content::read(
                chunk.iter().map(|id| id.0).collect(),
                now,
                contact.account.0,
            )?;
            contents.push((ClientMessageId(self.rng.random()), content.to_bytes()));
        }
        self.store.write(|writer| {
            writer.mark_read_locally(contact.account, &ids, now)?;
            for (id, content) in &contents {
                let sender_seq = writer.take_sender_seq(chat)?;
                let row = OutboxRow {
                    chat,
                    sender_seq,
                    client_message_id: *id,
                    peer: contact.account,
                    content: content.clone(),
                    envelope: None,
                };
                writer.insert_outbox(&row, now)?;
                entries.push(Pending {
                    chat,
                    sender_seq,
                    client_message_id: *id,
                });
            }
            Ok(())
        })?;
        for entry in &entries {
            self.outbox.insert(*entry, self.now_ms())?;
        }
        self.emit(Event::MarkedRead {
            peer: contact.name.clone(),
            count: ids.len(),
        });
        if !self.outbox.is_empty() {
            let connect_error = self.connect().await.err();
            let flushed = self.flush_after_connect(connect_error).await;
            self.report_still_pending(None).await?;
            flushed?;
        }
        Ok(ids.len())
    }

    /// Stays connected, reporting messages and ticks as pushes arrive, reconnecting with jittered
    /// backoff after a drop, until Ctrl-C or `timeout`. The first connection must succeed.
    pub async fn listen(&mut self, timeout: Option<Duration>) -> Result<()> {
        // No edge at all is a clear failure; an edge that cannot serve yet is waited for.
        if let Err(error) = self.connect().await {
            if error.is_unreachable() || !(error.is_retryable() || error.needs_reconnect()) {
                return Err(error);
            }
            self.emit(Event::Note {
                message: format!("{error}; retrying"),
            });
        }
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        self.run(Goal::Forever, deadline, true).await?;
        Ok(())
    }

    /// Reports the chat with `peer` in order (local only). On a device the relay refused as
    /// rolled back, a note says so first.
    pub async fn history(&mut self, peer: &str) -> Result<()> {
        if let Err(error) = self.refuse_if_rolled_back() {
            self.emit(Event::Note {
                message: error.to_string(),
            });
        }
        let contact = self
            .store
            .contact_by_name(peer)?
            .ok_or_else(|| ClientError::UnknownPeer(peer.into()))?;
        for message in self.store.history(contact.account)? {
            let from = if message.outgoing {
                self.identity.name.clone()
            } else {
                contact.name.clone()
            };
            self.emit(Event::History {
                id: message.client_message_id.to_string(),
                direction: if message.outgoing {
                    Direction::Out
                } else {
                    Direction::In
                },
                from,
                peer: contact.name.clone(),
                time_ms: message.time_ms(),
                text: message.text.clone(),
                tick: message.outgoing.then_some(message.tick),
                read: (!message.outgoing).then_some(message.read_at_ms.is_some()),
                undecryptable: message.undecryptable.clone(),
                failed: message.failed.clone(),
                chat_seq: message.chat_seq,
            });
        }
        Ok(())
    }

    /// Closes the connection, if any, letting the edge know.
    pub async fn close(mut self) {
        self.disconnect().await;
    }

    // -----------------------------------------------------------------------------------------
    // Connection

    /// Connects and authenticates if not connected, presenting this device's queue cursor and
    /// envelope counter; tops up one-time keys when they run low and uploads a fallback key
    /// the region lacks. A refusal as rolled back is recorded (see [`Client::roll_back`])
    /// unless the counters moved meanwhile (another process on this data directory), in which
    /// case it connects again.
    async fn connect(&mut self) -> Result<()> {
        self.refuse_if_rolled_back()?;
        if self
            .connection
            .as_ref()
            .is_some_and(EdgeConnection::is_open)
        {
            return Ok(());
        }
        self.disconnect().await;
        let mut rechecks = 0;
        let (connection, keys, pushes) = loop {
            let last_edge = self.store.last_edge()?;
            let mut connection = dial(
                &self.environment,
                &self.settings,
                last_edge,
                &mut *self.sink,
            )
            .await?;
            if last_edge != Some(connection.edge()) {
                let edge = connection.edge();
                self.store.write(|writer| writer.set_last_edge(edge))?;
            }
            let progress = self.progress()?;
            match connection
                .authenticate(self.identity.address(), &self.signer, progress)
                .await
            {
                Ok((keys, pushes)) => break (connection, keys, pushes),
                Err(error) => {
                    connection.close().await;
                    let Some(refusal) = rolled_back_refusal(&error) else {
                        return Err(error);
                    };
                    if rechecks < ROLLBACK_RECHECKS_MAX && self.progress()? != progress {
                        rechecks += 1;
                        continue;
                    }
                    return Err(self.roll_back(refusal).await);
                }
            }
        };
        self.connection = Some(connection);
        self.pushes = Some(pushes);
        self.last_key_upload = None;
        self.keep_keys(keys, false).await
    }

    /// The counters this device presents when it authenticates.
    fn progress(&self) -> Result<DeviceProgress> {
        Ok(DeviceProgress {
            queue_cursor: self.store.queue_cursor()?,
            next_device_seq: self.store.next_device_seq()?,
        })
    }

    /// Fails with [`ClientError::DeviceRolledBack`] once the relay refused this device as
    /// rolled back (in this command or an earlier one).
    fn refuse_if_rolled_back(&self) -> Result<()> {
        match &self.rolled_back {
            Some(reason) => Err(ClientError::DeviceRolledBack(reason.clone())),
            None => Ok(()),
        }
    }

    /// The relay refused this device because its state went back: records that (so every later
    /// command refuses too), gives up every outbox entry with the reason (reported as failed,
    /// never dropped silently) and disconnects. Returns the error to end the command with.
    async fn roll_back(&mut self, refusal: String) -> ClientError {
        let me = self.identity.address();
        let drafts = match self.store.drafts() {
            Ok(drafts) => drafts,
            Err(error) => return error,
        };
        let recorded = self.store.write(|writer| {
            writer.set_rolled_back(&refusal)?;
            let mut given_up = Vec::new();
            for row in writer.outbox()? {
                writer.remove_outbox(row.client_message_id)?;
                writer.mark_failed(me, row.client_message_id, ROLLED_BACK_FAILURE)?;
                given_up.push(row);
            }
            let mut drafts_given_up = Vec::new();
            for draft in &drafts {
                if writer.remove_draft(draft.client_message_id)? {
                    drafts_given_up.push(draft.clone());
                }
            }
            Ok((given_up, drafts_given_up))
        });
        self.outbox = Outbox::new();
        self.disconnect().await;
        let (given_up, drafts_given_up) = match recorded {
            Ok(given_up) => given_up,
            Err(error) => return error,
        };
        self.rolled_back = Some(refusal.clone());
        for draft in drafts_given_up {
            self.emit(Event::Failed {
                id: draft.client_message_id.to_string(),
                peer: draft.peer_name,
                reason: ROLLED_BACK_FAILURE.to_owned(),
            });
        }
        for row in given_up {
            let peer = self.name_of(row.peer).await;
            let is_message = matches!(self.store.message(me, row.client_message_id), Ok(Some(_)));
            if is_message {
                self.emit(Event::Failed {
                    id: row.client_message_id.to_string(),
                    peer,
                    reason: ROLLED_BACK_FAILURE.to_owned(),
                });
            } else {
                self.emit(Event::Note {
                    message: format!(
                        "a read receipt to {peer} was not sent: {ROLLED_BACK_FAILURE}"
                    ),
                });
            }
        }
        ClientError::DeviceRolledBack(refusal)
    }

    async fn disconnect(&mut self) {
        self.pushes = None;
        if let Some(connection) = self.connection.take() {
            connection.close().await;
        }
    }

    fn connection(&self) -> Result<&EdgeConnection> {
        self.connection
            .as_ref()
            .ok_or_else(|| ClientError::EdgeUnreachable("not connected".into()))
    }

    /// Keeps the published keys in shape after the region reported `keys`: fresh one-time keys
    /// when fewer than the low watermark are left, and a new signed fallback key when
    /// [`fallback::plan`] says so (the region has none, it was handed out, or it is old), or
    /// one made earlier that never went up; the previous fallback key is forgotten when that
    /// is safe (`queue_drained`: the queue was just fetched to the end). At most one upload
    /// every [`KEY_UPLOAD_INTERVAL_MS`] per connection; a failed upload is reported and retried
    /// later, it never fails the command.
    async fn keep_keys(&mut self, keys: OneTimeKeyCount, queue_drained: bool) -> Result<()> {
        if self
            .last_key_upload
            .is_some_and(|at| at.elapsed() < Duration::from_millis(KEY_UPLOAD_INTERVAL_MS))
        {
            return Ok(());
        }
        let region_state =
            FallbackKeyState::try_from(keys.fallback_key).unwrap_or(FallbackKeyState::Unknown);
        let low = keys.remaining < ONE_TIME_KEYS_LOW_WATERMARK;
        let wanted = (ONE_TIME_KEYS_AT_REGISTRATION as u32).saturating_sub(keys.remaining);
        let count = (wanted as usize).clamp(1, ONE_TIME_KEYS_PER_UPLOAD_MAX);
        let now_ms = self.wall_ms();
        // The private halves are durable before the public halves leave the device. Keys left
        // unpublished by an earlier failed upload go first, instead of new ones; they go up
        // with whatever else is uploaded, since a successful upload marks every key published.
        let (mut one_time_keys, fallback_key) = self.store.write(|writer| {
            let mut crypto = writer.load_crypto()?;
            let times = writer.fallback_times()?;
            let plan = fallback::plan(FallbackFacts {
                times,
                region_state,
                unpublished: crypto.unpublished_fallback_key().is_some(),
                queue_drained,
                now_ms,
            });
            if plan.forget_previous {
                crypto.forget_previous_fallback_key();
            }
            if plan.generate {
                crypto.generate_fallback_key();
            }
            if plan != fallback::FallbackPlan::default() {
                writer.set_fallback_times(&fallback::after(times, plan, now_ms))?;
            }
            if low && crypto.unpublished_one_time_keys().is_empty() {
                crypto.generate_one_time_keys(count);
            }
            writer.save_crypto(&crypto.take_changes()?)?;
            Ok((
                crypto.unpublished_one_time_keys(),
                crypto.unpublished_fallback_key(),
            ))
        })?;
        if one_time_keys.is_empty() && fallback_key.is_none() {
            return Ok(());
        }
        self.last_key_upload = Some(Instant::now());
        one_time_keys.truncate(ONE_TIME_KEYS_PER_UPLOAD_MAX);
        match self
            .connection()?
            .upload_keys(one_time_keys, fallback_key)
            .await
        {
            Ok(_) => self.store.write(|writer| {
                let mut crypto = writer.load_crypto()?;
                crypto.mark_keys_published();
                writer.save_crypto(&crypto.take_changes()?)
            })?,
            Err(error) if error.is_retryable() || matches!(error, ClientError::Remote(_)) => {
                self.emit(Event::Note {
                    message: format!("uploading keys failed: {error}"),
                });
            }
            Err(error) => return Err(error),
        }
        Ok(())
    }

    /// The account named `name`: a known contact, else asked of the directory (and remembered).
    async fn resolve_peer(&mut self, name: &str) -> Result<Contact> {
        validate_account_name(name).map_err(|_| ClientError::UnknownPeer(name.into()))?;
        if let Some(contact) = self.store.contact_by_name(name)? {
            return Ok(contact);
        }
        self.connect().await?;
        let info = match self.connection()?.lookup_name(name).await {
            Ok(info) => info,
            Err(ClientError::Remote(error)) if error.code == ErrorCode::UnknownAccount => {
                return Err(ClientError::UnknownPeer(name.into()));
            }
            Err(error) => return Err(error),
        };
        if info.account == 0 || info.name != name {
            return Err(ClientError::UnexpectedResponse(format!(
                "lookup of {name} answered {:?}",
                info.name
            )));
        }
        let contact = Contact {
            account: AccountId(info.account),
            name: info.name,
            region: info.region,
        };
        self.store.write(|writer| writer.upsert_contact(&contact))?;
        Ok(contact)
    }

    /// A name for `account` to show: own name, a contact, or the directory's answer.
    async fn name_of(&mut self, account: AccountId) -> String {
        if account == self.identity.account {
            return self.identity.name.clone();
        }
        if let Ok(Some(contact)) = self.store.contact_by_account(account) {
            return contact.name;
        }
        if let Some(connection) = &self.connection
            && let Ok(info) = connection.lookup_account(account).await
            && info.account == account.0
        {
            let contact = Contact {
                account,
                name: info.name,
                region: info.region,
            };
            if self
                .store
                .write(|writer| writer.upsert_contact(&contact))
                .is_ok()
            {
                return contact.name;
            }
        }
        format!("#{}", account.0)
    }

    // -----------------------------------------------------------------------------------------
    // Outbox

    /// Turns drafts into outbox entries once their recipient's name resolves: from the contacts,
    /// else by asking the directory. A name no account has gives the draft up (reported as
    /// failed); any other failure leaves the drafts for a later flush, noting why.
    async fn resolve_drafts(&mut self) -> Result<()> {
        self.queue_known_drafts()?;
        // Every draft left needs the directory (or a contact learnt meanwhile).
        for draft in self.store.drafts()? {
            let contact = match self.resolve_peer(&draft.peer_name).await {
                Ok(contact) => contact,
                Err(ClientError::UnknownPeer(name)) => {
                    let id = draft.client_message_id;
                    if self.store.write(|writer| writer.remove_draft(id))? {
                        self.emit(Event::Failed {
                            id: id.to_string(),
                            peer: name.clone(),
                            reason: format!("no account is named {name}"),
                        });
                        self.unknown_drafts.push((id, name));
                    }
                    continue;
                }
                Err(error)
                    if error.is_retryable()
                        || error.needs_reconnect()
                        || matches!(error, ClientError::UnexpectedResponse(_)) =>
                {
                    // The others would meet the same trouble: leave them all for later.
                    self.last_problem = Some(error.to_string());
                    return Ok(());
                }
                Err(error) => return Err(error),
            };
            self.queue_draft(&contact, &draft)?;
        }
        Ok(())
    }

    /// Moves every draft whose name is now a known contact to the outbox, oldest first, without
    /// the network. Runs before anything else is queued, so that nothing overtakes a message
    /// typed earlier for the same chat (sender FIFO, I3): a contact can become known (say, by a
    /// message from it) while a draft for its name still waits.
    fn queue_known_drafts(&mut self) -> Result<()> {
        for draft in self.store.drafts()? {
            if let Some(contact) = self.store.contact_by_name(&draft.peer_name)? {
                self.queue_draft(&contact, &draft)?;
            }
        }
        Ok(())
    }

    /// Moves one draft for `contact` to the outbox under its id, or gives it up (reported as
    /// failed) if it can never be sent as it is, so it cannot hold the others back.
    fn queue_draft(&mut self, contact: &Contact, draft: &Draft) -> Result<()> {
        let content = if contact.account == self.identity.account {
            Err("a message to yourself has no recipient device".to_owned())
        } else {
            Content::text(&draft.text, draft.sent_at_ms, contact.account.0)
                .map_err(|error| error.to_string())
        };
        match content {
            Ok(content) => {
                self.enqueue(
                    contact.account,
                    &content,
                    Some(&draft.text),
                    draft.client_message_id,
                    true,
                )?;
            }
            Err(reason) => {
                let id = draft.client_message_id;
                if self.store.write(|writer| writer.remove_draft(id))? {
                    self.emit(Event::Failed {
                        id: id.to_string(),
                        peer: draft.peer_name.clone(),
                        reason,
                    });
                }
            }
        }
        Ok(())
    }

    /// The error for a message of this command whose draft was given up, if it was.
    fn given_up(&mut self, id: ClientMessageId) -> Option<ClientError> {
        let index = self
            .unknown_drafts
            .iter()
            .position(|(given_up, _)| *given_up == id)?;
        let (_, name) = self.unknown_drafts.remove(index);
        Some(ClientError::UnknownPeer(name))
    }

    /// Puts a content in the outbox of the chat with `peer` under the chat's next sender_seq and
    /// the id `id`; a text is also recorded as a pending outgoing message. With `from_draft`, the
    /// draft with that id is taken in the same transaction (`None` if another process took it).
    fn enqueue(
        &mut self,
        peer: AccountId,
        content: &Content,
        text: Option<&str>,
        id: ClientMessageId,
        from_draft: bool,
    ) -> Result<Option<Pending>> {
        let me = self.identity.address();
        let chat = ChatId::direct(me.account, peer);
        let now = self.wall_ms();
        let sent_at_ms = match &content.body {
            Some(crate::content::body::Body::Text(text)) => text.sent_at_ms,
            _ => now,
        };
        let bytes = content.to_bytes();
        let sender_seq = self.store.write(|writer| {
            if from_draft && !writer.remove_draft(id)? {
                return Ok(None);
            }
            let sender_seq = writer.take_sender_seq(chat)?;
            if let Some(text) = text {
                writer.insert_message(&NewMessage {
                    chat,
                    peer,
                    outgoing: true,
                    sender: me,
                    client_message_id: id,
                    sender_seq,
                    chat_seq: None,
                    text: Some(text),
                    sent_at_ms,
                    server_time_ms: None,
                    tick: Tick::Pending,
                    undecryptable: None,
                })?;
            }
            let row = OutboxRow {
                chat,
                sender_seq,
                client_message_id: id,
                peer,
                content: bytes,
                envelope: None,
            };
            writer.insert_outbox(&row, now)?;
            Ok(Some(sender_seq))
        })?;
        let Some(sender_seq) = sender_seq else {
            return Ok(None);
        };
        let pending = Pending {
            chat,
            sender_seq,
            client_message_id: id,
        };
        self.outbox.insert(pending, self.now_ms())?;
        Ok(Some(pending))
    }

    /// Flushes the outbox for up to [`FLUSH_BUDGET_MS`] after a connection attempt that ended with
    /// `connect_error`: skipped (noting why) when no edge can be reached at all; an error that no
    /// retry can fix fails the command (the entries stay in the outbox either way).
    async fn flush_after_connect(&mut self, connect_error: Option<ClientError>) -> Result<()> {
        match connect_error {
            Some(error) if error.is_unreachable() => {
                self.last_problem = Some(error.to_string());
                Ok(())
            }
            Some(error) if !(error.is_retryable() || error.needs_reconnect()) => Err(error),
            _ => {
                self.flush(Some(
                    Instant::now() + Duration::from_millis(FLUSH_BUDGET_MS),
                ))
                .await
            }
        }
    }

    /// Moves resolvable drafts to the outbox, then sends every due outbox entry; with `until`,
    /// also waits for retries due before it.
    async fn flush(&mut self, until: Option<Instant>) -> Result<()> {
        self.resolve_drafts().await?;
        self.sync_outbox()?;
        loop {
            let now = self.now_ms();
            let batch: Vec<Pending> =
                std::iter::from_fn(|| self.outbox.poll_transmit(now)).collect();
            if !batch.is_empty() {
                self.transmit(batch).await?;
                continue;
            }
            let Some(due) = self.outbox.poll_timeout() else {
                return Ok(());
            };
            let due = self.instant_of(due);
            match until {
                Some(limit) if due <= limit => tokio::time::sleep_until(due).await,
                _ => return Ok(()),
            }
        }
    }

    /// Brings the in-memory outbox in line with the stored one, which another process using the
    /// same data directory (say `relay read` while `relay listen` runs) may have changed.
    fn sync_outbox(&mut self) -> Result<()> {
        let rows: Vec<Pending> = self
            .store
            .outbox()?
            .into_iter()
            .map(|row| Pending {
                chat: row.chat,
                sender_seq: row.sender_seq,
                client_message_id: row.client_message_id,
            })
            .collect();
        for entry in self.outbox.entries() {
            if !rows.contains(&entry) {
                self.outbox.remove(entry);
            }
        }
        let now = self.now_ms();
        for row in rows {
            if !self.outbox.entries().contains(&row) {
                self.outbox.insert(row, now)?;
            }
        }
        Ok(())
    }

    /// One send attempt of each of a batch of outbox entries (several of one chat, in order,
    /// when it pipelines), all in flight at once, then everything each outcome asks for, in
    /// the batch's order.
    async fn transmit(&mut self, batch: Vec<Pending>) -> Result<()> {
        let mut prepared = Vec::new();
        for pending in batch {
            let Some(row) = self.store.outbox_entry(pending.client_message_id)? else {
                // Gone from the store (nothing else removes entries, but never loop on it).
                let now = self.now_ms();
                self.outbox
                    .handle_outcome(pending, Outcome::Refused, now, &mut self.rng)?;
                continue;
            };
            let envelope = self.envelope_to_send(&row).await;
            prepared.push((pending, row, envelope));
        }
        let results = match self.connection() {
            Ok(connection) => {
                join_all(prepared.iter().map(|(_, _, envelope)| async move {
                    let envelope = match envelope {
                        Ok(envelope) => envelope.clone(),
                        Err(_) => return None,
                    };
                    Some(connection.send(envelope).await.and_then(|outcome| {
                        outcome.outcome.ok_or_else(|| {
                            ClientError::UnexpectedResponse("a send outcome with no result".into())
                        })
                    }))
                }))
                .await
            }
            Err(_) => prepared.iter().map(|_| None).collect(),
        };
        for ((pending, row, envelope), result) in prepared.into_iter().zip(results) {
            let (result, sent) = match (envelope, result) {
                (Err(error), _) => (Err(error), None),
                (Ok(envelope), Some(result)) => (result, Some(envelope)),
                (Ok(envelope), None) => (
                    Err(ClientError::EdgeUnreachable("not connected".into())),
                    Some(envelope),
                ),
            };
            self.settle(pending, &row, sent, result).await?;
        }
        Ok(())
    }

    /// Everything the outcome of one send attempt asks for.
    async fn settle(
        &mut self,
        pending: Pending,
        row: &OutboxRow,
        sent: Option<Envelope>,
        result: Result<send_outcome::Outcome>,
    ) -> Result<()> {
        let mut commits = Vec::new();
        let mut problem = String::new();
        if let Err(error) = &result
            && let Some(refusal) = rolled_back_refusal(error)
        {
            return Err(self.roll_back(refusal).await);
        }
        let outcome = match result {
            Ok(send_outcome::Outcome::Sent(everywhere)) => {
                commits = everywhere.commits;
                Outcome::Sent
            }
            Ok(send_outcome::Outcome::Mismatched(mismatched)) => {
                let me = self.identity.account;
                self.store.write(|writer| {
                    for account in &mismatched.accounts {
                        if account.account == row.peer.0 || account.account == me.0 {
                            let devices: Vec<DeviceId> =
                                account.devices.iter().map(|d| DeviceId(*d)).collect();
                            writer.set_current_devices(AccountId(account.account), &devices)?;
                        }
                    }
                    Ok(())
                })?;
                Outcome::Mismatched
            }
            Ok(send_outcome::Outcome::ResendFrom(resend)) => {
                Outcome::ResendFrom(resend.expected_sender_seq)
            }
            Err(error) => match self.classify(&error).await {
                Some(outcome) => {
                    problem = error.to_string();
                    outcome
                }
                None => return Err(error),
            },
        };
        let now = self.now_ms();
        let mut next = self
            .outbox
            .handle_outcome(pending, outcome, now, &mut self.rng)?;
        loop {
            match next {
                Next::Confirmed(entry) => {
                    self.confirm(row, entry, &commits).await?;
                    return Ok(());
                }
                Next::Reencrypt(entry) => match self.build_envelope(row, sent.as_ref()).await {
                    Ok(_) => {
                        self.outbox.handle_reencrypted(entry, self.now_ms())?;
                        return Ok(());
                    }
                    Err(error) => {
                        let Some(outcome) = self.classify(&error).await else {
                            return Err(error);
                        };
                        problem = error.to_string();
                        let now = self.now_ms();
                        next = self
                            .outbox
                            .handle_outcome(entry, outcome, now, &mut self.rng)?;
                    }
                },
                Next::Renumber {
                    chat,
                    moves,
                    next_sender_seq,
                } => {
                    let me = self.identity.address();
                    self.store
                        .write(|writer| writer.renumber(chat, me, &moves, next_sender_seq))?;
                    return Ok(());
                }
                Next::RetryAt(_) => {
                    if !problem.is_empty() {
                        self.last_problem = Some(problem);
                    }
                    return Ok(());
                }
                Next::Dropped(entry) => {
                    let me = self.identity.address();
                    let reason = if problem.is_empty() {
                        "refused".to_owned()
                    } else {
                        problem
                    };
                    let known = self.store.message(me, entry.client_message_id)?.is_some();
                    self.store.write(|writer| {
                        writer.remove_outbox(entry.client_message_id)?;
                        writer.mark_failed(me, entry.client_message_id, &reason)
                    })?;
                    let peer = self.name_of(row.peer).await;
                    if known {
                        self.emit(Event::Failed {
                            id: entry.client_message_id.to_string(),
                            peer,
                            reason,
                        });
                    } else {
                        self.emit(Event::Note {
                            message: format!("a read receipt to {peer} was refused: {reason}"),
                        });
                    }
                    return Ok(());
                }
            }
        }
    }

    /// What a failed attempt means for the entry: retry later, give up, or (`None`) stop the
    /// command because the failure is local (the store).
    async fn classify(&mut self, error: &ClientError) -> Option<Outcome> {
        if error.needs_reconnect() {
            self.disconnect().await;
        }
        match error {
            _ if error.is_retryable() || error.needs_reconnect() => Some(
                error
                    .retry_after_ms()
                    .map_or(Outcome::Retry, Outcome::RetryAfter),
            ),
            ClientError::UnexpectedResponse(_) => Some(Outcome::Retry),
            ClientError::Remote(_)
            | ClientError::IdentityChanged(_)
            | ClientError::BadFallbackKey(_)
            | ClientError::Crypto(_)
            | ClientError::Invalid(_)
            | ClientError::UnknownPeer(_) => Some(Outcome::Refused),
            _ => None,
        }
    }

    /// Connects if needed and returns an entry's stored envelope, building it first if it has
    /// none.
    async fn envelope_to_send(&mut self, row: &OutboxRow) -> Result<Envelope> {
        self.connect().await?;
        match &row.envelope {
            Some(bytes) => Envelope::decode(bytes.as_slice())
                .map_err(|error| ClientError::Corrupt(format!("stored envelope: {error}"))),
            None => self.build_envelope(row, None).await,
        }
    }

    /// Records a confirmed send: out of the outbox, sequenced, ticked ✓.
    async fn confirm(
        &mut self,
        row: &OutboxRow,
        entry: Pending,
        commits: &[Committed],
    ) -> Result<()> {
        let me = self.identity.address();
        let own = commits
            .iter()
            .find(|commit| commit.region == self.identity.region);
        let moved = self.store.write(|writer| {
            writer.remove_outbox(entry.client_message_id)?;
            writer.set_sequenced(
                me,
                entry.client_message_id,
                own.map(|commit| commit.chat_seq),
                own.map(|commit| commit.server_time_ms),
            )?;
            writer.advance_tick(me, entry.client_message_id, Tick::Sent)
        })?;
        if moved {
            let peer = self.name_of(row.peer).await;
            self.emit(Event::Tick {
                id: entry.client_message_id.to_string(),
                peer,
                tick: Tick::Sent,
            });
        }
        Ok(())
    }

    /// Current devices of `account` to encrypt for (never this device).
    fn targets(&self, account: AccountId) -> Result<Vec<DeviceAddress>> {
        let me = self.identity.address();
        Ok(self
            .store
            .known_devices(account)?
            .into_iter()
            .filter(|device| device.current && device.address != me)
            .map(|device| device.address)
            .collect())
    }

    /// Encrypts an outbox entry's content for exactly the current devices of the peer and of this
    /// account (other than this device), claiming keys for devices without a session. Ciphertexts
    /// of `reuse` for devices still current are kept. Stores the envelope with the Olm state, in
    /// one transaction, before it can be sent.
    async fn build_envelope(
        &mut self,
        row: &OutboxRow,
        reuse: Option<&Envelope>,
    ) -> Result<Envelope> {
        let me = self.identity.address();
        let accounts = envelope::recipient_accounts(row.peer, me.account);
        let reused = |device: DeviceAddress| {
            reuse.and_then(|envelope| {
                envelope
                    .ciphertexts
                    .iter()
                    .find(|ciphertext| ciphertext.recipient == device.into())
                    .cloned()
            })
        };
        let mut claimed = Vec::new();
        for account in accounts {
            let targets = self.targets(account)?;
            let mut missing = account == row.peer && targets.is_empty();
            for device in &targets {
                missing |= reused(*device).is_none() && !self.store.has_session(*device)?;
            }
            if missing {
                claimed.extend(self.claim_keys(account).await?);
            }
        }
        self.store.write(|writer| {
            let mut crypto = writer.load_crypto()?;
            for (device, identity_key, one_time_key) in &claimed {
                if !crypto.has_session(*device)
                    && let Some(one_time_key) = one_time_key
                {
                    crypto.create_outbound_session(*device, identity_key, one_time_key)?;
                }
            }
            let mut targets = Vec::new();
            for account in accounts {
                for known in writer.known_devices(account)? {
                    if known.current {
                        targets.push(known.address);
                    }
                }
            }
            let device_seq = writer.take_device_seq()?;
            let envelope = envelope::assemble(&mut crypto, me, row, &targets, reuse, device_seq)?;
            writer.save_crypto(&crypto.take_changes()?)?;
            writer.set_envelope(row.client_message_id, &envelope.encode_to_vec())?;
            Ok(envelope)
        })
    }

    /// Claims keys of `account`'s current devices, trusts their identity keys on first use and
    /// records them as the current devices; returns each other device's identity key and claimed
    /// one-time key (sessions start when the envelope is built). A fallback key (handed out when
    /// a device's one-time keys ran out) is used only if that device signed it.
    async fn claim_keys(
        &mut self,
        account: AccountId,
    ) -> Result<Vec<(DeviceAddress, [u8; 32], Option<Vec<u8>>)>> {
        let me = self.identity.address();
        let bundle = self.connection()?.claim_keys(account).await?;
        let mut devices = Vec::new();
        let mut keyed = Vec::new();
        for keys in &bundle.devices {
            if keys.device == 0 {
                return Err(ClientError::UnexpectedResponse(
                    "a device numbered 0".into(),
                ));
            }
            let device = DeviceAddress {
                account,
                device: DeviceId(keys.device),
            };
            devices.push(device.device);
            if device == me {
                continue;
            }
            let identity_key =
                <[u8; 32]>::try_from(keys.identity_key.as_slice()).map_err(|_| {
                    ClientError::UnexpectedResponse(format!("identity key of {device}"))
                })?;
            if let Some(key) = keys.one_time_key.as_ref().filter(|key| key.fallback) {
                verify_fallback_key(device, &identity_key, &keys.signing_key, key)?;
            }
            keyed.push((
                device,
                identity_key,
                keys.one_time_key.as_ref().map(|key| key.public_key.clone()),
            ));
        }
        self.store.write(|writer| {
            for (device, identity_key, _) in &keyed {
                writer.trust_device(*device, identity_key, true)?;
            }
            writer.set_current_devices(account, &devices)
        })?;
        Ok(keyed)
    }

    /// Reports outbox entries and drafts still waiting (all, or just `only`), with the last
    /// problem seen.
    async fn report_still_pending(&mut self, only: Option<ClientMessageId>) -> Result<()> {
        let reason = self
            .last_problem
            .clone()
            .unwrap_or_else(|| "not sent yet".into());
        for draft in self.store.drafts()? {
            if only.is_some_and(|id| id != draft.client_message_id) {
                continue;
            }
            self.emit(Event::StillPending {
                id: draft.client_message_id.to_string(),
                peer: draft.peer_name,
                reason: reason.clone(),
            });
        }
        for row in self.store.outbox()? {
            if only.is_some_and(|id| id != row.client_message_id) {
                continue;
            }
            let peer = self.name_of(row.peer).await;
            self.emit(Event::StillPending {
                id: row.client_message_id.to_string(),
                peer,
                reason: reason.clone(),
            });
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Queue

    /// Fetches and processes the queue until it is empty, acknowledging what was committed.
    async fn fetch_all(&mut self) -> Result<()> {
        self.connect().await?;
        let mut rechecks = 0;
        for _ in 0..FETCH_ROUNDS_MAX {
            let acks = self.store.pending_acks()?;
            let cursor = self.store.queue_cursor()?;
            let fetched = self
                .connection()?
                .fetch(acks.clone(), cursor, QUEUE_FETCH_ENTRIES_MAX)
                .await;
            let batch = match fetched {
                Ok(batch) => batch,
                Err(error) => {
                    let Some(refusal) = rolled_back_refusal(&error) else {
                        return Err(error);
                    };
                    // Another process on this data directory may have stored and acked
                    // entries since the cursor was read: it raised the cursor first.
                    if rechecks < ROLLBACK_RECHECKS_MAX && self.store.queue_cursor()? > cursor {
                        rechecks += 1;
                        continue;
                    }
                    return Err(self.roll_back(refusal).await);
                }
            };
            if !acks.is_empty() {
                self.store.write(|writer| writer.acked(&acks))?;
            }
            let count = batch.entries.len();
            if count > 0 {
                let me = self.identity.address();
                let now = self.wall_ms();
                let reports = self
                    .store
                    .write(|writer| process_entries(writer, me, cursor, &batch.entries, now))?;
                self.report(reports).await;
            }
            let keys = OneTimeKeyCount {
                remaining: batch.one_time_keys_remaining,
                fallback_key: batch.fallback_key,
            };
            self.keep_keys(keys, count == 0).await?;
            if count == 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn report(&mut self, reports: Vec<Inbound>) {
        for report in reports {
            let event = match report {
                Inbound::Message {
                    id,
                    sender,
                    peer,
                    outgoing,
                    chat_seq,
                    time_ms,
                    sent_at_ms,
                    text,
                } => {
                    self.received += 1;
                    Event::Message {
                        id: id.to_string(),
                        from: self.name_of(sender.account).await,
                        peer: self.name_of(peer).await,
                        direction: if outgoing {
                            Direction::Out
                        } else {
                            Direction::In
                        },
                        sender_device: sender.to_string(),
                        chat_seq,
                        time_ms,
                        sent_at_ms,
                        text,
                    }
                }
                Inbound::Undecryptable {
                    id,
                    sender,
                    time_ms,
                    reason,
                } => {
                    self.received += 1;
                    Event::Undecryptable {
                        id: id.to_string(),
                        from: self.name_of(sender.account).await,
                        sender_device: sender.to_string(),
                        time_ms,
                        reason,
                    }
                }
                Inbound::Tick { id, peer, tick } => Event::Tick {
                    id: id.to_string(),
                    peer: self.name_of(peer).await,
                    tick,
                },
                Inbound::Expired { id, peer, device } => Event::Expired {
                    id: id.to_string(),
                    peer: self.name_of(peer).await,
                    device: device.to_string(),
                },
                Inbound::ReadElsewhere { peer, count } => Event::Note {
                    message: format!(
                        "{count} message(s) from {} were read on another device",
                        self.name_of(peer).await
                    ),
                },
                Inbound::Warning(message) => Event::Note { message },
            };
            self.emit(event);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Waiting

    /// Stays connected until `goal`, the deadline or Ctrl-C: flushes due outbox entries, fetches
    /// on every push (and every [`POLL_INTERVAL_MS`]), reconnects with jittered backoff.
    async fn run(
        &mut self,
        goal: Goal,
        deadline: Option<Instant>,
        listening: bool,
    ) -> Result<RunEnd> {
        // Without a signal handler (it failed to register) the wait is only ended by the others.
        let mut interrupted = pin!(async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        });
        let mut reconnects = 0u32;
        let mut announced = false;
        loop {
            if self.goal_reached(goal)? {
                return Ok(RunEnd::Reached);
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Ok(RunEnd::TimedOut);
            }
            if self.connection.is_none() {
                match self.connect().await {
                    Ok(()) => {
                        if reconnects > 0 && listening {
                            let edge = self
                                .connection
                                .as_ref()
                                .map(|c| c.edge().to_string())
                                .unwrap_or_default();
                            self.emit(Event::Note {
                                message: format!("reconnected to the edge at {edge}"),
                            });
                        }
                        reconnects = 0;
                    }
                    Err(error) if error.is_retryable() || error.needs_reconnect() => {
                        reconnects += 1;
                        let delay = retry_delay_ms(reconnects, &mut self.rng);
                        self.emit(Event::Note {
                            message: format!("{error}; retrying in {delay} ms"),
                        });
                        let wake =
                            earliest(Instant::now() + Duration::from_millis(delay), deadline);
                        tokio::select! {
                            _ = tokio::time::sleep_until(wake) => {}
                            _ = &mut interrupted => return Ok(RunEnd::Interrupted),
                        }
                        continue;
                    }
                    Err(error) => return Err(error),
                }
            }
            if listening && !announced {
                announced = true;
                self.emit(Event::Listening {
                    name: self.identity.name.clone(),
                });
            }
            let worked = async {
                self.flush(None).await?;
                self.fetch_all().await
            }
            .await;
            match worked {
                Ok(()) => {}
                Err(error) if error.is_retryable() || error.needs_reconnect() => {
                    self.emit(Event::Note {
                        message: format!("connection to the edge lost ({error}); reconnecting"),
                    });
                    self.disconnect().await;
                    continue;
                }
                Err(error) => return Err(error),
            }
            if self.goal_reached(goal)? {
                return Ok(RunEnd::Reached);
            }
            let mut wake = Instant::now() + Duration::from_millis(POLL_INTERVAL_MS);
            if let Some(due) = self.outbox.poll_timeout() {
                wake = wake.min(self.instant_of(due));
            }
            let wake = earliest(wake, deadline);
            tokio::select! {
                push = next_push(&mut self.pushes) => match push {
                    Some(Push::QueueAvailable(_)) => {}
                    Some(Push::Closed(reason)) => {
                        self.emit(Event::Note { message: format!("connection to the edge lost ({reason}); reconnecting") });
                        self.disconnect().await;
                    }
                    None => self.disconnect().await,
                },
                _ = tokio::time::sleep_until(wake) => {}
                _ = &mut interrupted => return Ok(RunEnd::Interrupted),
            }
        }
    }

    fn goal_reached(&mut self, goal: Goal) -> Result<bool> {
        let Goal::Tick(id, until) = goal else {
            return Ok(false);
        };
        let Some(message) = self.store.message(self.identity.address(), id)? else {
            if self.store.draft(id)?.is_some() {
                return Ok(false);
            }
            return Err(self
                .given_up(id)
                .unwrap_or_else(|| ClientError::Corrupt(format!("message {id} vanished"))));
        };
        if let Some(reason) = message.failed {
            return Err(ClientError::Invalid(format!(
                "message {id} failed: {reason}"
            )));
        }
        Ok(message.tick >= until)
    }

    // -----------------------------------------------------------------------------------------
    // Small things

    fn emit(&mut self, event: Event) {
        if matches!(event, Event::Tick { .. }) {
            self.ticks += 1;
        }
        (self.sink)(event);
    }

    /// Wall-clock milliseconds since the Unix epoch (message timestamps only, never timers).
    fn wall_ms(&self) -> u64 {
        self.environment.clock.now_ms()
    }

    /// Milliseconds since this client opened: the outbox's clock.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn instant_of(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }
}

/// Connects to the first edge that answers of those the locator names for the settings. When
/// the locator itself does not answer, the last edge a connection reached is tried instead
/// (saying so on `sink`); the locator's answer always wins when there is one.
async fn dial(
    environment: &Environment,
    settings: &Settings,
    last_edge: Option<SocketAddr>,
    sink: &mut dyn FnMut(Event),
) -> Result<EdgeConnection> {
    let dialer = &environment.dialer;
    let edges = match dialer.edges(settings).await {
        Ok(edges) => edges,
        Err(error @ ClientError::Discovery(_)) if dialer.asks_locator() => {
            let Some(edge) = last_edge else {
                return Err(error);
            };
            sink(Event::Note {
                message: format!("{error}; trying the last edge that worked, {edge}"),
            });
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

/// Runs `futures` concurrently on this task and returns their outputs in order.
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// The relay's words when `error` is its refusal of this device as rolled back.
fn rolled_back_refusal(error: &ClientError) -> Option<String> {
    match error {
        ClientError::Remote(refusal) if refusal.code == ErrorCode::DeviceRolledBack => {
            Some(refusal.message.clone())
        }
        _ => None,
    }
}

async fn next_push(pushes: &mut Option<mpsc::Receiver<Push>>) -> Option<Push> {
    match pushes {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

fn earliest(instant: Instant, deadline: Option<Instant>) -> Instant {
    deadline.map_or(instant, |deadline| instant.min(deadline))
}

fn resolve(data_dir: &Path, path: &Path) -> PathBuf {
    if path.is_relative() {
        data_dir.join(path)
    } else {
        path.to_path_buf()
    }
}

/// Creates the data directory readable only by its owner (it holds private keys).
fn create_private_dir(path: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use relay_net::TokioSockets;

    use super::*;
    use crate::connection::EdgeSource;

    /// A data directory registered as alice (account 1, region 1) knowing bob (account 2),
    /// written directly: no deployment needed.
    fn registered(dir: &Path) {
        let mut store = Store::create(&dir.join(DATABASE_FILE)).expect("create");
        store.unlock(&dir.join(DEVICE_KEY_FILE)).expect("unlock");
        let mut crypto = Crypto::new();
        let changes = crypto.take_changes().expect("pickle");
        store
            .write(|writer| {
                writer.save_crypto(&changes)?;
                writer.set_settings(&Settings {
                    locator: "127.0.0.1:9".parse().expect("addr"),
                    bind_ip: "127.0.0.1".parse().expect("ip"),
                    ca_path: PathBuf::from(CA_FILE),
                })?;
                writer.set_identity(&Identity {
                    account: AccountId(1),
                    device: DeviceId(1),
                    name: "alice".into(),
                    region: 1,
                    epoch: 1,
                })?;
                writer.upsert_contact(&Contact {
                    account: AccountId(2),
                    name: "bob".into(),
                    region: 1,
                })
            })
            .expect("write");
    }

    /// A client of `dir` that can reach no edge, and the events it reports. Each opening needs
    /// its own `seed`, as each run of an app draws fresh ids.
    fn offline(dir: &Path, seed: u64) -> (Client, Rc<RefCell<Vec<Event>>>) {
        let events = Rc::new(RefCell::new(Vec::new()));
        let sink = {
            let events = events.clone();
            Box::new(move |event| events.borrow_mut().push(event))
        };
        let environment = Environment {
            dialer: Dialer::new(Arc::new(TokioSockets), EdgeSource::Fixed(Vec::new())),
            rng_seed: Some(seed),
            ..Environment::default()
        };
        let client = Client::open_in(environment, dir, Overrides::default(), sink).expect("open");
        (client, events)
    }

    #[tokio::test]
    async fn what_is_typed_is_stored_before_any_network_attempt() {
        let dir = tempfile::tempdir().expect("tempdir");
        registered(dir.path());
        let (mut client, events) = offline(dir.path(), 1);

        let to_bob = client.send("bob", "hi bob", None).await.expect("send");
        let to_carol = client.send("carol", "hi carol", None).await.expect("send");
        let reported: Vec<String> = events
            .borrow()
            .iter()
            .filter_map(|event| match event {
                Event::Tick { id, peer, tick } => Some(format!("{id} {peer} {}", tick.name())),
                Event::StillPending { id, peer, reason } => {
                    Some(format!("{id} {peer} still: {reason}"))
                }
                // The temporary directory is not private: the client closes it and says so.
                Event::Note { message } if message.contains("open to other users") => None,
                other => Some(format!("{other:?}")),
            })
            .collect();
        assert_eq!(
            reported,
            vec![
                format!("{to_bob} bob pending"),
                format!("{to_bob} bob still: cannot reach an edge (no edge is configured)"),
                format!("{to_carol} carol pending"),
                format!("{to_carol} carol still: cannot reach an edge (no edge is configured)"),
            ]
        );
        client.close().await;

        // Both are in the store: bob's in the outbox, carol's as a draft under its final id.
        let store = Store::open(&dir.path().join(DATABASE_FILE)).expect("open");
        let outbox = store.outbox().expect("outbox");
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].client_message_id, to_bob);
        let drafts = store.drafts().expect("drafts");
        assert_eq!(drafts.len(), 1);
        assert_eq!(
            (
                drafts[0].client_message_id,
                drafts[0].peer_name.as_str(),
                drafts[0].text.as_str()
            ),
            (to_carol, "carol", "hi carol")
        );

        // carol becomes a contact (say, a message from her named her) while her draft waits:
        // the next text for her goes after the draft, never before it (sender FIFO).
        let (mut client, _) = offline(dir.path(), 2);
        client
            .store
            .write(|writer| {
                writer.upsert_contact(&Contact {
                    account: AccountId(3),
                    name: "carol".into(),
                    region: 1,
                })
            })
            .expect("contact");
        let later = client.send("carol", "again", None).await.expect("send");
        client.close().await;
        let store = Store::open(&dir.path().join(DATABASE_FILE)).expect("open");
        assert!(store.drafts().expect("drafts").is_empty());
        let to_carol_chat: Vec<(u64, ClientMessageId)> = store
            .outbox()
            .expect("outbox")
            .iter()
            .filter(|row| row.peer == AccountId(3))
            .map(|row| (row.sender_seq, row.client_message_id))
            .collect();
        assert_eq!(to_carol_chat, vec![(1, to_carol), (2, later)]);
        drop(store);

        // Refused before anything is stored: a name that cannot be an account, and oneself.
        let (mut client, _) = offline(dir.path(), 3);
        assert!(matches!(
            client.send("Not A Name", "x", None).await,
            Err(ClientError::UnknownPeer(_))
        ));
        assert!(matches!(
            client.send("alice", "x", None).await,
            Err(ClientError::Invalid(_))
        ));
        client.close().await;
        let store = Store::open(&dir.path().join(DATABASE_FILE)).expect("open");
        assert!(store.drafts().expect("drafts").is_empty());
        assert_eq!(store.outbox().expect("outbox").len(), 3);
    }

    #[test]
    fn an_unfinished_registration_and_a_damaged_database_are_told_apart() {
        let open =
            |dir: &Path| Client::open(dir, Overrides::default(), Box::new(|_| {})).map(|_| ());
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(open(dir.path()), Err(ClientError::NotRegistered)));

        // Keys and settings, no identity: a registration that stopped half way.
        let mut store = Store::create(&dir.path().join(DATABASE_FILE)).expect("create");
        store
            .unlock(&dir.path().join(DEVICE_KEY_FILE))
            .expect("unlock");
        let changes = Crypto::new().take_changes().expect("pickle");
        store
            .write(|writer| writer.save_crypto(&changes))
            .expect("write");
        drop(store);
        assert!(matches!(
            open(dir.path()),
            Err(ClientError::RegistrationUnfinished)
        ));

        // Tables but no rows at all: damaged, not "not registered".
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::create(&dir.path().join(DATABASE_FILE)).expect("create"));
        let error = open(dir.path()).expect_err("damaged");
        assert!(
            matches!(&error, ClientError::Damaged { problem, .. } if problem.contains("no registered device")),
            "{error}"
        );

        // Registered, then the device key is lost: a clear error, and no new key appears.
        let dir = tempfile::tempdir().expect("tempdir");
        registered(dir.path());
        std::fs::remove_file(dir.path().join(DEVICE_KEY_FILE)).expect("remove the key");
        assert!(matches!(open(dir.path()), Err(ClientError::DeviceKey(_))));
        assert!(!dir.path().join(DEVICE_KEY_FILE).exists());
    }
}
