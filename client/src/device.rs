//! The async shell around [`crate::core`]: an open device is a task that owns the core, the
//! connection to the edge and the clock, and a [`Device`] handle (cheap to clone, `Send`) that
//! programs call, with one [`Events`] stream of what happens.
//!
//! ```
//! # use relay_client::{Device, Event, OpenOptions, Mode};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let testbed = relay_devnet::testbed::Testbed::start(2).await?;
//! # let dir = tempfile::tempdir()?;
//! # let (alice_dir, bob_dir) = (dir.path().join("alice"), dir.path().join("bob"));
//! # let overrides = |region| relay_client::Overrides {
//! #     locator: Some(testbed.locator()),
//! #     bind_ip: Some(testbed.client_bind(region)),
//! #     ca_path: Some(testbed.ca().to_path_buf()),
//! #     device_key: None,
//! # };
//! # relay_client::register(&alice_dir, "alice", overrides(1), "", &mut |_| {}).await?;
//! # relay_client::register(&bob_dir, "bob", overrides(2), "", &mut |_| {}).await?;
//! # let options = |mode| OpenOptions { mode, ..OpenOptions::default() };
//! // A bot stays connected, sends without waiting, and takes events as they come.
//! let (alice, mut alice_events) = Device::open(&alice_dir, options(Mode::Live))?;
//! let (bob, mut bob_events) = Device::open(&bob_dir, options(Mode::Live))?;
//! let id = alice.send("bob", "hello bob").await?; // stored and queued: no waiting for the network
//! loop {
//!     match bob_events.next().await {
//!         Some(Event::Message { from, text, .. }) => {
//!             assert_eq!((from.as_str(), text.as_str()), ("alice", "hello bob"));
//!             break;
//!         }
//!         Some(_) => continue,
//!         None => panic!("bob's device stopped"),
//!     }
//! }
//! // bob's device acknowledged the message: alice sees it delivered (✓✓).
//! while let Some(event) = alice_events.next().await {
//!     if let Event::Tick { id: tick_id, tick: relay_client::Tick::Delivered, .. } = event {
//!         assert_eq!(tick_id, id.to_string());
//!         break;
//!     }
//! }
//! alice.close().await?;
//! bob.close().await?;
//! # testbed.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! The device's task runs on the tokio runtime [`Device::open`] is called in. Calls are
//! answered as soon as what they change is stored (a send returns its message id before
//! anything reaches the network); the network work runs meanwhile, many requests at once.
//! The events must be read (or the [`Events`] dropped): a device whose reader falls
//! [`EVENTS_BUFFERED_MAX`] events behind waits for it. Dropping every [`Device`] handle stops
//! the task at once, as a killed app would; [`Device::close`] says goodbye to the edge first.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use relay_proto::clock::{Clock, SystemClock};
use relay_proto::wire::device_command::Command as Cmd;
use relay_proto::wire::{
    ApproveLink, DeviceKeys, LinkRequestInfo, OneTimeKeyCount, OpenPairing, Pairing, RemoveDevice,
    validate_account_name,
};
use relay_proto::{AccountId, ClientMessageId, DeviceAddress, DeviceId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::blob::BlobRef;
use crate::connection::{DeviceAnswer, Dialer, EdgeConnection, Push, dial};
use crate::content::Change;
use crate::core::{
    Action, Core, MessageState, Mode, NameState, Request, RequestId, Response, StillPending,
};
use crate::crypto::Crypto;
use crate::error::{ClientError, Result};
use crate::events::Event;
use crate::history::SyncTraffic;
use crate::limits::{
    BOOTSTRAP_DOWNLOAD_HOLD_MS, BOOTSTRAP_PROGRESS_REPORTS_MAX, COMMANDS_BUFFERED_MAX,
    EVENTS_BUFFERED_MAX, FETCH_PAGE_ENTRIES_MAX, FLUSH_BUDGET_MS, SYNC_RETRY_BUDGET_MS,
};
use crate::media::Attachment;
use crate::secrets::{self, DEVICE_KEY_FILE};
use crate::store::{Identity, KnownDevice, Settings, Store};
use crate::transfer::{self, BlobProgress, BlobSource, Connections};

/// The database file inside a data directory.
pub const DATABASE_FILE: &str = "relay.db";
/// The copy of the deployment's CA certificate inside a data directory.
pub const CA_FILE: &str = "ca.pem";

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

/// How to open a device.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Deployment settings that override the remembered ones.
    pub overrides: Overrides,
    /// Sockets, clock and randomness.
    pub environment: Environment,
    /// How the device stays in touch with its edge.
    pub mode: Mode,
}

/// A handle on an open device (see the module doc). Clones share the device.
#[derive(Debug, Clone)]
pub struct Device {
    pub(crate) commands: mpsc::Sender<Command>,
    identity: Identity,
    shared: Arc<Shared>,
}

/// The stream of what happens to an open device.
#[derive(Debug)]
pub struct Events {
    receiver: mpsc::Receiver<Event>,
}

/// What the handles and the task share.
#[derive(Debug)]
struct Shared {
    /// The local failure that stopped the device, if one did.
    failure: Mutex<Option<ClientError>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle is gone: stop at once, as a killed app would.
        if let Some(task) = self.task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T>>;

pub(crate) enum Command {
    Send(
        String,
        String,
        Option<Box<Attachment>>,
        bool,
        Reply<ClientMessageId>,
    ),
    SendGroup(u64, String, Option<Box<Attachment>>, Reply<ClientMessageId>),
    Attachment(String, Reply<Attachment>),
    MarkGroupRead(u64, Reply<usize>),
    LearnGroup(
        relay_proto::wire::GroupInfo,
        Vec<crate::store::Contact>,
        Reply<()>,
    ),
    GroupHistory(u64, usize, Reply<Vec<Event>>),
    MarkRead(String, Reply<usize>),
    Change(String, String, Change, Reply<ClientMessageId>),
    HistorySnapshot(Reply<Vec<u8>>),
    SyncTraffic(Reply<SyncTraffic>),
    BootstrapSnapshot(Reply<Option<Vec<u8>>>),
    QueueBootstrap(DeviceId, BlobRef, Vec<DeviceId>, Reply<()>),
    LoadHistorySnapshot(Vec<u8>, Reply<()>),
    Flush(Duration, Reply<()>),
    Sync(Reply<()>),
    Connect(Reply<()>),
    StillPending(Option<ClientMessageId>, Reply<Vec<StillPending>>),
    PendingCount(Reply<usize>),
    SendAttemptsFailed(Reply<u64>),
    HistoryInSync(Reply<bool>),
    MessageState(ClientMessageId, Reply<MessageState>),
    History(String, Reply<Vec<Event>>),
    MessageInfo(String, Reply<Vec<Event>>),
    ReadReceipts(Option<bool>, Reply<bool>),
    RolledBack(Reply<Option<String>>),
    Devices(Cmd, Reply<DeviceAnswer>),
    OwnDevices(Vec<DeviceId>, Reply<()>),
    KnownDevices(String, Reply<Vec<KnownDevice>>),
    /// The account of a contact known by name, if any.
    ContactAccount(String, Reply<Option<AccountId>>),
    /// The accounts of this device's 1:1 chats (presence "contacts").
    ChatPeers(Reply<Vec<AccountId>>),
    WatchPresence(AccountId, bool, Reply<()>),
    Typing(crate::core::TypingIn, bool, Reply<crate::core::TypingSent>),
    TypingFailed(crate::core::TypingIn),
    /// The open connection, held for the given time (a blob transfer uses it directly).
    Connection(Duration, Reply<Arc<EdgeConnection>>),
    Close(oneshot::Sender<()>),
}

/// What [`Device::approve_link`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approved {
    /// The account's devices, the new one among them.
    pub devices: Vec<DeviceKeys>,
    /// What became of the new device's history bootstrap.
    pub bootstrap: BootstrapSent,
}

/// How a device approving a link gives the new device the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkHistory {
    /// An encrypted snapshot blob, then the sync protocol for what came since.
    #[default]
    Snapshot,
    /// The sync protocol only.
    SyncOnly,
}

/// What became of a history bootstrap on the approving device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapSent {
    /// The snapshot's blob (this many bytes of ciphertext) is uploaded and its reference is
    /// on its way to `device`.
    Sent {
        /// The new device.
        device: DeviceId,
        /// The blob's size in bytes.
        bytes: u64,
    },
    /// Nothing was sent: this device holds no history, or the link asked for
    /// [`LinkHistory::SyncOnly`].
    Empty,
    /// The snapshot could not be uploaded or queued (why): the new device converges by sync.
    Failed(String),
}

fn unexpected_answer(wanted: &str, got: &DeviceAnswer) -> ClientError {
    ClientError::UnexpectedResponse(format!("{got:?} where {wanted} was expected"))
}

impl Device {
    /// Opens the registered device of `data_dir` and starts its task on the current tokio
    /// runtime.
    ///
    /// Only a data directory without a database is not registered: a database that is empty,
    /// not a database, or lacks its tables, identity, settings or Olm account is damaged, and a
    /// missing or wrong device key is its own error; none of them ever starts a new identity.
    pub fn open(data_dir: &Path, options: OpenOptions) -> Result<(Device, Events)> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ClientError::Invalid("a device runs on a tokio runtime; open it inside one".into())
        })?;
        let OpenOptions {
            overrides,
            environment,
            mode,
        } = options;
        let (event_sender, receiver) = mpsc::channel(EVENTS_BUFFERED_MAX);
        let mut notes = Vec::new();
        let (store, identity, settings) = open_store(data_dir, &overrides, &mut notes)?;
        let signer = Arc::new(
            store
                .load_crypto()?
                .ok_or_else(|| store.damaged("the Olm account is missing"))?,
        );
        let started = Instant::now();
        let rng_seed = environment.rng_seed.unwrap_or_else(rand::random);
        let wall_ms = environment.clock.now_ms();
        let core = Core::new(store, identity.clone(), mode, rng_seed, 0, wall_ms)?;
        for message in notes {
            let _ = event_sender.try_send(Event::Note { message });
        }
        let (commands, command_receiver) = mpsc::channel(COMMANDS_BUFFERED_MAX);
        let shared = Arc::new(Shared {
            failure: Mutex::new(None),
            task: Mutex::new(None),
        });
        let actor = Actor {
            core,
            address: identity.address(),
            environment,
            settings,
            signer,
            started,
            connection: None,
            pushes: None,
            connecting: None,
            bootstrapping: None,
            requests: Vec::new(),
            events: Some(event_sender),
            waiters: Vec::new(),
            failure: Arc::downgrade(&shared),
        };
        let task = runtime.spawn(actor.run(command_receiver));
        *lock(&shared.task) = Some(task);
        Ok((
            Device {
                commands,
                identity,
                shared,
            },
            Events { receiver },
        ))
    }

    /// The registered identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Sends a text to `peer` (a name). The text is stored before any network attempt (in the
    /// outbox, or as a draft while `peer` is a name not resolved yet) and reported pending;
    /// the id is returned then. The device sends it as soon as it can: a live device at once,
    /// an on-demand one for up to [`FLUSH_BUDGET_MS`] (then with the next send, flush or sync).
    pub async fn send(&self, peer: &str, text: &str) -> Result<ClientMessageId> {
        self.call(|reply| Command::Send(peer.into(), text.into(), None, true, reply))
            .await
    }

    /// Sends a text to group `group`, encrypted once with this device's Megolm session for
    /// the group (key shares first to member devices that lack its key). Stored before any
    /// network attempt and reported pending ([`Event::GroupTick`]); the id is returned then,
    /// and the device sends it as [`Device::send`] does. The membership comes from the
    /// directory's answer, so a text for a group this account is not in fails
    /// ([`Event::GroupFailed`]).
    pub async fn send_group(&self, group: u64, text: &str) -> Result<ClientMessageId> {
        self.call(|reply| Command::SendGroup(group, text.into(), None, reply))
            .await
    }

    /// Marks every unread message of group `group` read and sends each sender a read receipt
    /// (to the sender alone, end-to-end encrypted; none with read receipts off, when only this
    /// account's other devices learn it); returns how many were marked. A sent message's tick
    /// moves to read once every member it went to read it on some device.
    pub async fn mark_group_read(&self, group: u64) -> Result<usize> {
        self.call(|reply| Command::MarkGroupRead(group, reply))
            .await
    }

    /// Records a group's membership as the directory answered it (see [`crate::groups`]).
    pub(crate) async fn learn_group(
        &self,
        info: relay_proto::wire::GroupInfo,
        members: Vec<crate::store::Contact>,
    ) -> Result<()> {
        self.call(|reply| Command::LearnGroup(info, members, reply))
            .await
    }

    /// The latest `limit` messages of group `group` on this device, oldest first, as
    /// [`Event::GroupMessage`] entries (local only).
    pub async fn group_history(&self, group: u64, limit: usize) -> Result<Vec<Event>> {
        self.call(|reply| Command::GroupHistory(group, limit, reply))
            .await
    }

    /// Queues a text for `peer`, a contact this device already knows, without waking the
    /// network: it goes with the next send, flush or sync (a live device sends it at once).
    pub async fn compose(&self, peer: &str, text: &str) -> Result<ClientMessageId> {
        self.call(|reply| Command::Send(peer.into(), text.into(), None, false, reply))
            .await
    }

    /// Replaces the text of message `message` (this account's, named by its id or a prefix
    /// of at least [`crate::limits::MESSAGE_ID_PREFIX_CHARS_MIN`] hex digits, as
    /// [`Device::history`] shows it) in the chat with `peer`, for everyone: shown here at
    /// once, sent like a message to the peer's devices and the own devices. Returns the id of
    /// the envelope that carries the edit.
    pub async fn edit(&self, peer: &str, message: &str, text: &str) -> Result<ClientMessageId> {
        self.change(peer, message, Change::Edit(text.to_owned()))
            .await
    }

    /// Deletes message `message` (this account's; named as for [`Device::edit`]) of the chat
    /// with `peer` for everyone: its text leaves this device's saved state at once, and every
    /// other device's when the deletion reaches it.
    pub async fn delete_for_everyone(&self, peer: &str, message: &str) -> Result<ClientMessageId> {
        self.change(peer, message, Change::Delete).await
    }

    /// Reacts to message `message` (either account's; named as for [`Device::edit`]) of the
    /// chat with `peer` with `reaction` (one emoji or a short word); an empty reaction takes
    /// this device's reaction back.
    pub async fn react(
        &self,
        peer: &str,
        message: &str,
        reaction: &str,
    ) -> Result<ClientMessageId> {
        self.change(peer, message, Change::React(reaction.to_owned()))
            .await
    }

    async fn change(&self, peer: &str, message: &str, change: Change) -> Result<ClientMessageId> {
        self.call(|reply| Command::Change(peer.into(), message.into(), change, reply))
            .await
    }

    /// Every chat's history documents as one snapshot (plaintext: encrypt it before it leaves
    /// the device), for a device linked after this one (see [`Device::load_history_snapshot`]).
    pub async fn history_snapshot(&self) -> Result<Vec<u8>> {
        self.call(Command::HistorySnapshot).await
    }

    /// The sync messages this device's history exchanged with the account's other devices
    /// since the device opened: counts and plaintext bytes (for measurements).
    pub async fn sync_traffic(&self) -> Result<SyncTraffic> {
        self.call(Command::SyncTraffic).await
    }

    /// Takes another own device's [`Device::history_snapshot`] as this device's history (only
    /// while this device holds none), then converges with the own devices by sync for what
    /// happened since.
    pub async fn load_history_snapshot(&self, snapshot: Vec<u8>) -> Result<()> {
        self.call(|reply| Command::LoadHistorySnapshot(snapshot, reply))
            .await
    }

    /// Marks every unread message from `peer` read and queues the end-to-end encrypted read
    /// receipt (sent like a message) for the peer's devices and this account's other devices,
    /// or for the latter only while read receipts are off ([`Device::set_read_receipts`]);
    /// returns how many were marked.
    pub async fn mark_read(&self, peer: &str) -> Result<usize> {
        self.call(|reply| Command::MarkRead(peer.into(), reply))
            .await
    }

    /// Sends what waits in the outbox and returns once nothing is in flight and nothing is due
    /// within `budget` (entries backing off longer stay in the outbox), or at once when no edge
    /// can be reached.
    pub async fn flush(&self, budget: Duration) -> Result<()> {
        self.call(|reply| Command::Flush(budget, reply)).await
    }

    /// Flushes the outbox (for up to [`FLUSH_BUDGET_MS`]), then fetches and acknowledges
    /// everything queued for this device. Retries for up to [`SYNC_RETRY_BUDGET_MS`] after a
    /// failure; a first connection that finds no edge at all fails at once.
    pub async fn sync(&self) -> Result<()> {
        self.call(Command::Sync).await
    }

    /// Waits until the device is connected and authenticated; fails when the first attempt
    /// finds no edge at all (or cannot work for another reason), keeps trying otherwise for up
    /// to [`FLUSH_BUDGET_MS`], then fails with the last error (ask again to keep trying).
    pub async fn connect(&self) -> Result<()> {
        self.call(Command::Connect).await
    }

    /// Messages still waiting to be sent (all, or just `only`), with the last problem seen.
    pub async fn still_pending(&self, only: Option<ClientMessageId>) -> Result<Vec<StillPending>> {
        self.call(|reply| Command::StillPending(only, reply)).await
    }

    /// Entries in the outbox and drafts.
    pub async fn pending_count(&self) -> Result<usize> {
        self.call(Command::PendingCount).await
    }

    /// Attempts to send (messages, receipts, changes) that failed with a retryable error or a
    /// lost connection since this device opened, each retried by itself: how rough the way to
    /// the relay has been. A planned failover of a region adds none.
    pub async fn send_attempts_failed(&self) -> Result<u64> {
        self.call(Command::SendAttemptsFailed).await
    }

    /// Whether the account's other devices hold this device's chat documents (edits,
    /// deletions, reactions, read marks), as far as this device has heard from them: true once
    /// they answered its latest change, false again after its next one (see
    /// [`relay_sync::Replica::in_sync_with`]). With no other device, true.
    pub async fn history_in_sync(&self) -> Result<bool> {
        self.call(Command::HistoryInSync).await
    }

    /// Where message `id` of this device stands, read from the store (another process on the
    /// same data directory may have moved it).
    pub async fn message_state(&self, id: ClientMessageId) -> Result<MessageState> {
        self.call(|reply| Command::MessageState(id, reply)).await
    }

    /// The chat with `peer` in order, as [`Event::History`] entries (local only).
    pub async fn history(&self, peer: &str) -> Result<Vec<Event>> {
        self.call(|reply| Command::History(peer.into(), reply))
            .await
    }

    /// Message `message` (its id or a prefix of it, as `relay history` shows it; of any chat)
    /// as its [`Event::History`] entry, followed for an outgoing message by one
    /// [`Event::Receipt`] per recipient device: the peer's devices and this account's other
    /// devices, each `pending`, `sent`, `delivered`, `read` or `expired` and since when (local
    /// only). An unknown or ambiguous prefix is [`ClientError::Invalid`].
    pub async fn message_info(&self, message: &str) -> Result<Vec<Event>> {
        self.call(|reply| Command::MessageInfo(message.into(), reply))
            .await
    }

    /// Whether this device sends read receipts to peers and shows theirs (on unless turned
    /// off; local only).
    pub async fn read_receipts(&self) -> Result<bool> {
        self.call(|reply| Command::ReadReceipts(None, reply)).await
    }

    /// Turns read receipts on or off, persisted. Off: [`Device::mark_read`] still marks
    /// messages read here and on this account's other devices but sends the peer nothing, and
    /// read receipts from peers are not shown (ticks stop at delivered); one that arrives while
    /// off is dropped and stays unseen after turning them on again.
    pub async fn set_read_receipts(&self, on: bool) -> Result<()> {
        self.call(|reply| Command::ReadReceipts(Some(on), reply))
            .await
            .map(|_| ())
    }

    /// Opens a pairing for a new device of this account: the code to show, usable once until
    /// it expires. The new device asks with it ([`crate::link::link_accept`]); any device of the
    /// account approves the request ([`Device::approve_link`]).
    pub async fn link(&self) -> Result<Pairing> {
        match self
            .device_command(Cmd::OpenPairing(OpenPairing {}))
            .await?
        {
            DeviceAnswer::Pairing(pairing) => Ok(pairing),
            other => Err(unexpected_answer("a pairing", &other)),
        }
    }

    /// The new devices waiting for an approval on this account, oldest first.
    pub async fn link_requests(&self) -> Result<Vec<LinkRequestInfo>> {
        match self
            .device_command(Cmd::LinkRequests(OpenPairing {}))
            .await?
        {
            DeviceAnswer::LinkRequests(requests) => Ok(requests.requests),
            other => Err(unexpected_answer("the link requests", &other)),
        }
    }

    /// Approves the new device that asked with `code` and showed `identity_key`, and sends it
    /// this device's history: a snapshot of every chat uploaded as an encrypted blob, its
    /// reference in an Olm envelope for the new device only (nothing when the history is
    /// empty; see `core::bootstrap`). Returns the account's devices and what became of the
    /// bootstrap; a failed bootstrap fails nothing (the new device converges by sync).
    /// With [`LinkHistory::SyncOnly`] it sends no snapshot: the sync protocol alone brings the
    /// history (slower for a long one; the way to compare).
    pub async fn approve_link(
        &self,
        code: &str,
        identity_key: &[u8],
        history: LinkHistory,
    ) -> Result<Approved> {
        let approve = Cmd::Approve(ApproveLink {
            code: code.into(),
            identity_key: identity_key.to_vec(),
        });
        let devices = match self.device_command(approve).await? {
            DeviceAnswer::Devices(list) => list.devices,
            other => return Err(unexpected_answer("the device list", &other)),
        };
        let numbers: Vec<DeviceId> = devices
            .iter()
            .map(|device| DeviceId(device.device))
            .collect();
        let linked = devices
            .iter()
            .find(|device| device.identity_key == identity_key)
            .map(|device| DeviceId(device.device));
        let bootstrap = match linked {
            Some(_) if history == LinkHistory::SyncOnly => {
                self.call(|reply| Command::OwnDevices(numbers, reply))
                    .await?;
                return Ok(Approved {
                    devices,
                    bootstrap: BootstrapSent::Empty,
                });
            }
            Some(linked) => self.send_bootstrap(linked, numbers.clone()).await,
            None => Err(ClientError::UnexpectedResponse(
                "the approved device is not among the account's devices".into(),
            )),
        };
        let bootstrap = match bootstrap {
            Ok(sent) => sent,
            Err(error) => {
                self.call(|reply| Command::OwnDevices(numbers, reply))
                    .await?;
                BootstrapSent::Failed(error.to_string())
            }
        };
        Ok(Approved { devices, bootstrap })
    }

    /// Uploads the history snapshot for `linked` and queues its reference, then takes
    /// `numbers` as the account's devices (see [`Device::approve_link`]).
    async fn send_bootstrap(
        &self,
        linked: DeviceId,
        numbers: Vec<DeviceId>,
    ) -> Result<BootstrapSent> {
        let Some(snapshot) = self.call(Command::BootstrapSnapshot).await? else {
            self.call(|reply| Command::OwnDevices(numbers, reply))
                .await?;
            return Ok(BootstrapSent::Empty);
        };
        let reference = self
            .upload_blob(BlobSource::Bytes(&snapshot), &mut |_| {})
            .await?;
        drop(snapshot);
        let bytes = reference.size;
        self.call(|reply| Command::QueueBootstrap(linked, reference, numbers, reply))
            .await?;
        // Out before the command ends: an on-demand device goes quiet when it closes.
        self.flush(Duration::from_millis(FLUSH_BUDGET_MS)).await?;
        Ok(BootstrapSent::Sent {
            device: linked,
            bytes,
        })
    }

    /// This account's devices, as its home region lists them.
    pub async fn own_devices(&self) -> Result<Vec<DeviceKeys>> {
        self.device_list(Cmd::List(OpenPairing {})).await
    }

    /// Removes device `device` of this account (this one included, unless it is the last);
    /// returns the account's devices. The removed device receives nothing more.
    pub async fn remove_device(&self, device: u32) -> Result<Vec<DeviceKeys>> {
        self.device_list(Cmd::Remove(RemoveDevice { device })).await
    }

    /// The devices of `peer` (a contact) this device knows, current and former, with the
    /// identity keys it trusted on first use (local only).
    pub async fn known_devices(&self, peer: &str) -> Result<Vec<KnownDevice>> {
        self.call(|reply| Command::KnownDevices(peer.into(), reply))
            .await
    }

    async fn device_list(&self, command: Cmd) -> Result<Vec<DeviceKeys>> {
        match self.device_command(command).await? {
            DeviceAnswer::Devices(list) => {
                let numbers = list
                    .devices
                    .iter()
                    .map(|device| DeviceId(device.device))
                    .collect();
                self.call(|reply| Command::OwnDevices(numbers, reply))
                    .await?;
                Ok(list.devices)
            }
            other => Err(unexpected_answer("the device list", &other)),
        }
    }

    async fn device_command(&self, command: Cmd) -> Result<DeviceAnswer> {
        self.connect().await?;
        self.call(|reply| Command::Devices(command, reply)).await
    }

    /// The device's open connection, kept for at least `hold` (an on-demand device would
    /// otherwise let it go while a blob transfer uses it). Connects first if needed.
    pub(crate) async fn held_connection(&self, hold: Duration) -> Result<Arc<EdgeConnection>> {
        self.connect().await?;
        self.call(|reply| Command::Connection(hold, reply)).await
    }

    /// The open connection, held for one request's answer (twice the request timeout): what
    /// a call sent straight to the edge (a group command, a typing indicator) goes on.
    pub(crate) async fn request_connection(&self) -> Result<Arc<EdgeConnection>> {
        self.held_connection(Duration::from_millis(2 * crate::limits::REQUEST_TIMEOUT_MS))
            .await
    }

    /// Why the relay refused this device as rolled back, if it did.
    pub async fn rolled_back(&self) -> Result<Option<String>> {
        self.call(Command::RolledBack).await
    }

    /// Closes the device: the edge is told, the task ends, the events stream ends after what
    /// it holds. Returns the local failure that stopped the device, if one did.
    pub async fn close(self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Close(reply)).await.is_ok() {
            let _ = done.await;
        }
        let task = lock(&self.shared.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        match lock(&self.shared.failure).take() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    pub(crate) async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(command(reply)).await.is_err() {
            return Err(self.stopped());
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(self.stopped()),
        }
    }

    fn stopped(&self) -> ClientError {
        lock(&self.shared.failure)
            .as_ref()
            .map_or(ClientError::Closed, ClientError::duplicate)
    }
}

impl Events {
    /// The next event; `None` once the device is closed (or stopped) and every event was read.
    pub async fn next(&mut self) -> Option<Event> {
        self.receiver.recv().await
    }

    /// The next event if one waits.
    pub fn try_next(&mut self) -> Option<Event> {
        self.receiver.try_recv().ok()
    }

    /// Runs `call` (a call on the device) while handing each event to `sink` as it comes, and
    /// every event the device reported before answering it; returns the call's answer.
    pub async fn drive<T>(
        &mut self,
        call: impl Future<Output = T>,
        sink: &mut dyn FnMut(Event),
    ) -> T {
        let mut call = std::pin::pin!(call);
        let mut open = true;
        let answer = loop {
            tokio::select! {
                answer = &mut call => break answer,
                event = self.receiver.recv(), if open => match event {
                    Some(event) => sink(event),
                    None => open = false,
                },
            }
        };
        while let Some(event) = self.try_next() {
            sink(event);
        }
        answer
    }
}

/// Opens the store of a registered data directory: checks it, unlocks it, and reads the
/// identity and the settings (`overrides` win over the remembered ones).
fn open_store(
    data_dir: &Path,
    overrides: &Overrides,
    notes: &mut Vec<String>,
) -> Result<(Store, Identity, Settings)> {
    let database = data_dir.join(DATABASE_FILE);
    if !database.exists() {
        return Err(ClientError::NotRegistered);
    }
    let key_path = overrides.device_key_path(data_dir);
    notes.extend(secrets::repair_permissions(data_dir, &[&key_path]));
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
        ca_path: match &overrides.ca_path {
            Some(path) => Some(path.clone()),
            None => remembered.ca_path.map(|path| resolve(data_dir, &path)),
        },
    };
    Ok((store, identity, settings))
}

/// A relative path of the data directory's settings, made absolute.
pub(crate) fn resolve(data_dir: &Path, path: &Path) -> PathBuf {
    if path.is_relative() {
        data_dir.join(path)
    } else {
        path.to_path_buf()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Connected = (EdgeConnection, OneTimeKeyCount, mpsc::Receiver<Push>);

/// A call waiting for the device to get somewhere.
enum Waiter {
    Flush {
        deadline_ms: u64,
        reply: Reply<()>,
    },
    Sync {
        started_ms: u64,
        flush_deadline_ms: u64,
        fetched_target: Option<u64>,
        reply: Reply<()>,
    },
    Connect {
        started_ms: u64,
        reply: Reply<()>,
    },
    MarkRead {
        name: String,
        reply: Reply<usize>,
    },
}

impl Waiter {
    /// Whether this is a sync that flushed and asked for its fetch.
    fn asked_for_fetch(&self) -> bool {
        matches!(
            self,
            Waiter::Sync {
                fetched_target: Some(_),
                ..
            }
        )
    }
}

/// The device's task.
struct Actor {
    core: Core,
    address: DeviceAddress,
    environment: Environment,
    settings: Settings,
    /// The Olm account as opened, for signing authentication challenges only.
    signer: Arc<Crypto>,
    started: Instant,
    connection: Option<Arc<EdgeConnection>>,
    pushes: Option<mpsc::Receiver<Push>>,
    connecting: Option<BoxFuture<(Vec<String>, Result<Connected>)>>,
    /// The history bootstrap's download, while one runs (see `core::bootstrap`).
    bootstrapping: Option<BoxFuture<Result<Vec<u8>>>>,
    requests: Vec<BoxFuture<(RequestId, Result<Response>)>>,
    events: Option<mpsc::Sender<Event>>,
    waiters: Vec<Waiter>,
    failure: std::sync::Weak<Shared>,
}

impl Actor {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let now = self.now_ms();
            self.pump(now).await;
            if let Some(failure) = self.core.failure() {
                let failure = failure.duplicate();
                self.stop(failure).await;
                return;
            }
            // Never before the next millisecond: a timer that is due and changes nothing must
            // not spin the task at one instant.
            let wake = self
                .wake_at(now)
                .map(|at| self.started + Duration::from_millis(at.max(now + 1)));
            tokio::select! {
                command = commands.recv() => match command {
                    // Every handle is gone: the task is being aborted.
                    None => return,
                    Some(Command::Close(reply)) => {
                        self.disconnect().await;
                        // Pages the log holds older copies of (an outbox entry sent since, a
                        // text deleted for everyone) leave the files with it; a failure only
                        // leaves them for the next checkpoint.
                        let _ = self.core.store().checkpoint();
                        if let Err(error) = self.core.save_history() {
                            // The store keeps the messages: the next open appends them again.
                            if let Some(events) = &self.events {
                                let _ = events.try_send(Event::Note {
                                    message: format!("saving the history failed: {error}"),
                                });
                            }
                        }
                        self.events = None;
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.command(command).await,
                },
                (notes, connected) = poll_slot(&mut self.connecting) => {
                    self.connecting = None;
                    let now = self.now_ms();
                    self.core.set_wall_ms(self.environment.clock.now_ms());
                    for message in notes {
                        self.core.handle_note(message);
                    }
                    match connected {
                        Ok((connection, keys, pushes)) => {
                            let edge = connection.edge();
                            self.connection = Some(Arc::new(connection));
                            self.pushes = Some(pushes);
                            self.core.handle_connected(edge, keys, now);
                        }
                        Err(error) => self.core.handle_connect_failed(error, now),
                    }
                }
                downloaded = poll_slot(&mut self.bootstrapping) => {
                    self.bootstrapping = None;
                    self.core.set_wall_ms(self.environment.clock.now_ms());
                    self.core.handle_bootstrap(downloaded);
                }
                (id, answer) = poll_any(&mut self.requests) => {
                    let now = self.now_ms();
                    self.core.set_wall_ms(self.environment.clock.now_ms());
                    self.core.handle_answer(id, answer, now);
                }
                push = next_push(&mut self.pushes) => {
                    let now = self.now_ms();
                    match push {
                        Some(Push::QueueAvailable { latest_queue_seq, entries }) => {
                            self.core.set_wall_ms(self.environment.clock.now_ms());
                            self.core.handle_push(latest_queue_seq, entries);
                        }
                        Some(Push::Presence(info)) => self.core.handle_presence(info),
                        Some(Push::Typing(notice)) => self.core.handle_typing(notice, now),
                        Some(Push::Closed(reason)) => {
                            self.pushes = None;
                            self.core.handle_connection_lost(&reason, now);
                        }
                        None => {
                            self.pushes = None;
                            self.core.handle_connection_lost("the edge closed the control stream", now);
                        }
                    }
                }
                () = sleep_until(wake) => {
                    let now = self.now_ms();
                    self.core.set_wall_ms(self.environment.clock.now_ms());
                    self.core.handle_timeout(now);
                }
            }
        }
    }

    /// Milliseconds since the device opened: the core's clock.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// When something is due: the core's timers and the waiting calls' deadlines.
    fn wake_at(&self, now_ms: u64) -> Option<u64> {
        let mut due = self.core.poll_timeout(now_ms);
        let mut consider = |at: u64| {
            if at > now_ms {
                due = Some(due.map_or(at, |due| due.min(at)));
            }
        };
        for waiter in &self.waiters {
            match waiter {
                Waiter::Flush { deadline_ms, .. } => consider(*deadline_ms),
                Waiter::Sync {
                    started_ms,
                    flush_deadline_ms,
                    ..
                } => {
                    consider(*flush_deadline_ms);
                    consider(started_ms + SYNC_RETRY_BUDGET_MS);
                }
                Waiter::Connect { started_ms, .. } => consider(started_ms + FLUSH_BUDGET_MS),
                Waiter::MarkRead { .. } => {}
            }
        }
        due
    }

    /// Does what the core asks, hands its events out, and answers the calls that got where
    /// they waited to, until nothing moves.
    async fn pump(&mut self, now_ms: u64) {
        self.core.set_wall_ms(self.environment.clock.now_ms());
        loop {
            let mut moved = false;
            while let Some(action) = self.core.poll_action(now_ms) {
                moved = true;
                self.perform(action, now_ms).await;
            }
            while let Some(event) = self.core.poll_event() {
                moved = true;
                if let Some(events) = &self.events
                    && events.send(event).await.is_err()
                {
                    // Nobody reads the events any more: stop keeping them.
                    self.events = None;
                }
            }
            moved |= self.answer_waiters(now_ms);
            if !moved {
                return;
            }
        }
    }

    async fn perform(&mut self, action: Action, now_ms: u64) {
        match action {
            Action::Connect {
                progress,
                last_edge,
            } => {
                let dialer = self.environment.dialer.clone();
                let settings = self.settings.clone();
                let signer = self.signer.clone();
                let device = self.address;
                self.connecting = Some(Box::pin(async move {
                    let mut notes = Vec::new();
                    let connected = async {
                        let mut connection =
                            dial(&dialer, &settings, last_edge, &mut notes).await?;
                        match connection.authenticate(device, &signer, progress).await {
                            Ok((keys, pushes)) => Ok((connection, keys, pushes)),
                            Err(error) => {
                                connection.close().await;
                                Err(error)
                            }
                        }
                    }
                    .await;
                    (notes, connected)
                }));
            }
            Action::Bootstrap { reference } => {
                self.core
                    .want_connection(now_ms.saturating_add(BOOTSTRAP_DOWNLOAD_HOLD_MS));
                let Some(connection) = self.connection.clone() else {
                    let error = ClientError::EdgeUnreachable("not connected".into());
                    self.core.handle_bootstrap(Err(error));
                    return;
                };
                let events = self.events.clone();
                self.bootstrapping = Some(Box::pin(async move {
                    let mut reported = None;
                    let mut progress = |report: BlobProgress| {
                        // One report per percent: a progress bar needs no more.
                        let total = report.total_bytes.max(1);
                        let step = report.done_bytes * BOOTSTRAP_PROGRESS_REPORTS_MAX / total;
                        if reported == Some(step) {
                            return;
                        }
                        reported = Some(step);
                        if let Some(events) = &events {
                            // Dropped if the reader lags: the next report says as much.
                            let _ = events.try_send(Event::BootstrapProgress {
                                done_bytes: report.done_bytes,
                                total_bytes: report.total_bytes,
                            });
                        }
                    };
                    let connections = Connections::Fixed(connection);
                    transfer::download(connections, &reference, &mut progress).await
                }));
            }
            Action::Disconnect => self.disconnect().await,
            Action::Request { id, request } => match self.connection.clone() {
                Some(connection) => self.requests.push(Box::pin(async move {
                    (id, perform_request(&connection, request).await)
                })),
                None => {
                    let error = ClientError::EdgeUnreachable("not connected".into());
                    self.core.handle_answer(id, Err(error), now_ms);
                }
            },
        }
    }

    async fn disconnect(&mut self) {
        self.pushes = None;
        self.connecting = None;
        if let Some(connection) = self.connection.take() {
            connection.close().await;
        }
    }

    async fn command(&mut self, command: Command) {
        let now = self.now_ms();
        let wall_ms = self.environment.clock.now_ms();
        self.core.set_wall_ms(wall_ms);
        match command {
            Command::Send(peer, text, attachment, wake, reply) => {
                let attachment = attachment.as_deref();
                let typed = if wake {
                    self.core
                        .type_message(&peer, &text, attachment, wall_ms, now)
                } else {
                    self.core
                        .compose_message(&peer, &text, attachment, wall_ms, now)
                };
                if typed.is_ok() && wake {
                    self.core.open_flush_window(now + FLUSH_BUDGET_MS);
                }
                self.pump(now).await;
                let _ = reply.send(typed);
            }
            Command::SendGroup(group, text, attachment, reply) => {
                let typed = self.core.compose_group_message(
                    group,
                    &text,
                    attachment.as_deref(),
                    wall_ms,
                    now,
                );
                if typed.is_ok() {
                    self.core.open_flush_window(now + FLUSH_BUDGET_MS);
                }
                self.pump(now).await;
                let _ = reply.send(typed);
            }
            Command::MarkGroupRead(group, reply) => {
                let marked = self.core.mark_group_read(group, wall_ms, now);
                if marked.is_ok() {
                    self.core.open_flush_window(now + FLUSH_BUDGET_MS);
                }
                self.pump(now).await;
                let _ = reply.send(marked);
            }
            Command::LearnGroup(info, members, reply) => {
                let learned = self
                    .core
                    .learn_group_info(&info)
                    .and_then(|()| self.core.learn_contacts(&members));
                let _ = reply.send(learned);
            }
            Command::GroupHistory(group, limit, reply) => {
                let _ = reply.send(self.core.group_history(group, limit));
            }
            Command::Attachment(message, reply) => {
                let _ = reply.send(self.core.attachment(&message));
            }
            Command::Change(peer, message, change, reply) => {
                let changed = self
                    .core
                    .change_message(&peer, &message, change, wall_ms, now);
                if changed.is_ok() {
                    self.core.open_flush_window(now + FLUSH_BUDGET_MS);
                }
                self.pump(now).await;
                let _ = reply.send(changed);
            }
            Command::HistorySnapshot(reply) => {
                let _ = reply.send(self.core.history_snapshot());
            }
            Command::SyncTraffic(reply) => {
                let _ = reply.send(Ok(self.core.sync_traffic()));
            }
            Command::BootstrapSnapshot(reply) => {
                let _ = reply.send(self.core.bootstrap_snapshot());
            }
            Command::QueueBootstrap(device, reference, devices, reply) => {
                let queued = self.core.queue_bootstrap(device, &reference, &devices, now);
                if queued.is_ok() {
                    self.core.open_flush_window(now + FLUSH_BUDGET_MS);
                }
                self.pump(now).await;
                let _ = reply.send(queued);
            }
            Command::LoadHistorySnapshot(snapshot, reply) => {
                let loaded = self.core.load_history_snapshot(&snapshot);
                self.pump(now).await;
                let _ = reply.send(loaded);
            }
            Command::MarkRead(peer, reply) => {
                if let Err(error) = self.core.refuse_if_rolled_back() {
                    let _ = reply.send(Err(error));
                    return;
                }
                if validate_account_name(&peer).is_err() {
                    let _ = reply.send(Err(ClientError::UnknownPeer(peer)));
                    return;
                }
                match self.core.store().contact_by_name(&peer) {
                    Ok(Some(contact)) => {
                        let marked = self.core.mark_read(&contact, wall_ms, now);
                        if marked.is_ok() {
                            self.core.open_flush_window(now + FLUSH_BUDGET_MS);
                        }
                        self.pump(now).await;
                        let _ = reply.send(marked);
                    }
                    Ok(None) => {
                        self.core.want_name(&peer);
                        self.waiters.push(Waiter::MarkRead { name: peer, reply });
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::Flush(budget, reply) => {
                let deadline_ms = now + u64::try_from(budget.as_millis()).unwrap_or(u64::MAX / 2);
                self.core.open_flush_window(deadline_ms);
                self.waiters.push(Waiter::Flush { deadline_ms, reply });
            }
            Command::Sync(reply) => {
                let flush_deadline_ms = now + FLUSH_BUDGET_MS;
                self.core.start_sync(flush_deadline_ms);
                self.waiters.push(Waiter::Sync {
                    started_ms: now,
                    flush_deadline_ms,
                    fetched_target: None,
                    reply,
                });
            }
            Command::Connect(reply) => {
                // An on-demand device connects for this call, for as long as a flush would.
                self.core.want_connection(now + FLUSH_BUDGET_MS);
                self.waiters.push(Waiter::Connect {
                    started_ms: now,
                    reply,
                });
            }
            Command::StillPending(only, reply) => {
                let _ = reply.send(self.core.still_pending(only));
            }
            Command::PendingCount(reply) => {
                let _ = reply.send(self.core.pending_count());
            }
            Command::SendAttemptsFailed(reply) => {
                let _ = reply.send(Ok(self.core.send_attempts_failed()));
            }
            Command::HistoryInSync(reply) => {
                let _ = reply.send(self.core.history_in_sync());
            }
            Command::MessageState(id, reply) => {
                let _ = reply.send(self.core.message_state(id));
            }
            Command::History(peer, reply) => {
                let _ = reply.send(self.core.history(&peer));
            }
            Command::MessageInfo(message, reply) => {
                let _ = reply.send(self.core.message_info(&message));
            }
            Command::ReadReceipts(change, reply) => {
                let answer = match change {
                    Some(on) => self.core.set_read_receipts(on).map(|()| on),
                    None => self.core.read_receipts(),
                };
                let _ = reply.send(answer);
            }
            Command::RolledBack(reply) => {
                let _ = reply.send(Ok(self.core.rolled_back().map(str::to_owned)));
            }
            Command::Devices(command, reply) => match self.connection.clone() {
                // On its own task: the answer takes a round trip the actor does not wait for.
                Some(connection) => {
                    tokio::spawn(async move {
                        let _ = reply.send(connection.device_command(command).await);
                    });
                }
                None => {
                    let _ = reply.send(Err(ClientError::Invalid(
                        "the device lost its connection before the command went out; try again"
                            .into(),
                    )));
                }
            },
            Command::Connection(hold, reply) => {
                let hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX / 2);
                self.core.want_connection(now.saturating_add(hold_ms));
                let answer = match &self.connection {
                    Some(connection) if connection.is_open() => Ok(connection.clone()),
                    _ => Err(ClientError::Network(
                        "the device lost its connection; it is connecting again".into(),
                    )),
                };
                let _ = reply.send(answer);
            }
            Command::OwnDevices(devices, reply) => {
                let _ = reply.send(self.core.handle_own_devices(&devices));
            }
            Command::KnownDevices(peer, reply) => {
                let store = self.core.store();
                let known = store
                    .contact_by_name(&peer)
                    .and_then(|contact| match contact {
                        Some(contact) => store.known_devices(contact.account),
                        None => Err(ClientError::UnknownPeer(peer)),
                    });
                let _ = reply.send(known);
            }
            Command::ContactAccount(name, reply) => {
                let contact = self.core.store().contact_by_name(&name);
                let _ = reply.send(contact.map(|contact| contact.map(|contact| contact.account)));
            }
            Command::ChatPeers(reply) => {
                let peers = self
                    .core
                    .store()
                    .chat_peers(relay_proto::limits::PRESENCE_CONTACTS_MAX);
                let _ = reply.send(peers);
            }
            Command::WatchPresence(account, watch, reply) => {
                let _ = reply.send(self.core.watch_presence(account, watch));
            }
            Command::Typing(to, typing, reply) => {
                let _ = reply.send(Ok(self.core.send_typing(to, typing, now)));
            }
            Command::TypingFailed(to) => self.core.typing_failed(to),
            Command::Close(_) => {}
        }
    }

    /// Answers the calls that got where they waited to; whether any was answered or asked for
    /// more work.
    fn answer_waiters(&mut self, now_ms: u64) -> bool {
        let mut moved = false;
        for waiter in std::mem::take(&mut self.waiters) {
            let fetching = waiter.asked_for_fetch();
            match self.check(waiter, now_ms) {
                // A sync that just asked for its fetch moved too: the fetch goes out on the
                // next step, not when something else wakes the device (a push, a timer).
                Some(waiter) => {
                    moved |= waiter.asked_for_fetch() != fetching;
                    self.waiters.push(waiter);
                }
                None => moved = true,
            }
        }
        moved
    }

    /// Answers `waiter` if it got where it waited to; else hands it back.
    fn check(&mut self, waiter: Waiter, now_ms: u64) -> Option<Waiter> {
        let common = if let Some(failure) = self.core.failure() {
            Some(failure.duplicate())
        } else {
            self.core
                .rolled_back()
                .map(|reason| ClientError::DeviceRolledBack(reason.to_owned()))
        };
        match waiter {
            Waiter::Flush { deadline_ms, reply } => {
                if let Some(error) = common {
                    let _ = reply.send(Err(error));
                } else if self.core.flush_settled(now_ms, deadline_ms)
                    && !self.core.reports_pending()
                {
                    let _ = reply.send(Ok(()));
                } else {
                    return Some(Waiter::Flush { deadline_ms, reply });
                }
                None
            }
            Waiter::Sync {
                started_ms,
                flush_deadline_ms,
                fetched_target,
                reply,
            } => {
                if let Some(error) = common.or_else(|| self.sync_failure(started_ms, now_ms)) {
                    let _ = reply.send(Err(error));
                    return None;
                }
                match fetched_target {
                    None if self.core.flush_settled(now_ms, flush_deadline_ms) => {
                        self.core.want_fetch();
                        Some(Waiter::Sync {
                            started_ms,
                            flush_deadline_ms,
                            fetched_target: Some(self.core.caught_up() + 1),
                            reply,
                        })
                    }
                    Some(target)
                        if self.core.caught_up() >= target
                            && !self.core.bootstrapping()
                            && !self.core.naming()
                            && !self.core.reports_pending()
                            && !self.core.uploading_keys() =>
                    {
                        let _ = reply.send(Ok(()));
                        None
                    }
                    _ => Some(Waiter::Sync {
                        started_ms,
                        flush_deadline_ms,
                        fetched_target,
                        reply,
                    }),
                }
            }
            Waiter::Connect { started_ms, reply } => {
                if let Some(error) = common {
                    let _ = reply.send(Err(error));
                } else if self.core.is_connected() {
                    let _ = reply.send(Ok(()));
                } else if let Some((error, at)) = self.core.last_error()
                    && at >= started_ms
                    && (error.is_unreachable()
                        || !(error.is_retryable() || error.needs_reconnect()))
                {
                    let _ = reply.send(Err(error.duplicate()));
                } else if now_ms >= started_ms + FLUSH_BUDGET_MS {
                    // The device wanted a connection for this long only: past it, it stops
                    // trying, so waiting longer would wait forever (a simulated client once
                    // did, its edges down and every attempt timing out).
                    let why = match self.core.last_error() {
                        Some((error, at)) if at >= started_ms => format!(": {error}"),
                        _ => String::new(),
                    };
                    let _ = reply.send(Err(ClientError::Network(format!(
                        "no connection to the relay within {} s{why}",
                        FLUSH_BUDGET_MS / 1_000
                    ))));
                } else {
                    return Some(Waiter::Connect { started_ms, reply });
                }
                None
            }
            Waiter::MarkRead { name, reply } => {
                if let Some(error) = common {
                    self.core.release_name(&name);
                    let _ = reply.send(Err(error));
                    return None;
                }
                let answer = match self.core.name_state(&name) {
                    Some(NameState::Known(contact)) => {
                        let contact = contact.clone();
                        let wall_ms = self.environment.clock.now_ms();
                        let marked = self.core.mark_read(&contact, wall_ms, now_ms);
                        if marked.is_ok() {
                            self.core.open_flush_window(now_ms + FLUSH_BUDGET_MS);
                        }
                        marked
                    }
                    Some(NameState::Unknown) => Err(ClientError::UnknownPeer(name.clone())),
                    Some(NameState::Failed(failure)) => Err(failure.error()),
                    _ => return Some(Waiter::MarkRead { name, reply }),
                };
                self.core.release_name(&name);
                let _ = reply.send(answer);
                None
            }
        }
    }

    /// Why a sync started at `started_ms` fails now, if it does: its queue cannot be read, no
    /// edge answered its first connection, or errors went on past its retry budget.
    fn sync_failure(&mut self, started_ms: u64, now_ms: u64) -> Option<ClientError> {
        if let Some(error) = self.core.take_fetch_error() {
            return Some(error);
        }
        let (error, at) = self.core.last_error()?;
        if at < started_ms {
            return None;
        }
        let reached_edge = self
            .core
            .connected_at()
            .is_some_and(|connected| connected >= started_ms)
            || self.core.is_connected();
        let hopeless = !(error.is_retryable() || error.needs_reconnect());
        if hopeless
            || (error.is_unreachable() && !reached_edge)
            || now_ms >= started_ms + SYNC_RETRY_BUDGET_MS
        {
            return Some(error.duplicate());
        }
        None
    }

    /// The device stopped on a local failure: every call waiting is told, the handles learn
    /// why, and the events stream ends.
    async fn stop(&mut self, failure: ClientError) {
        for waiter in std::mem::take(&mut self.waiters) {
            let error = failure.duplicate();
            match waiter {
                Waiter::Flush { reply, .. }
                | Waiter::Sync { reply, .. }
                | Waiter::Connect { reply, .. } => {
                    let _ = reply.send(Err(error));
                }
                Waiter::MarkRead { reply, .. } => {
                    let _ = reply.send(Err(error));
                }
            }
        }
        if let Some(shared) = self.failure.upgrade() {
            *lock(&shared.failure) = Some(failure);
        }
        self.disconnect().await;
        self.events = None;
    }
}

/// Sends one request on `connection` and types its answer.
async fn perform_request(connection: &EdgeConnection, request: Request) -> Result<Response> {
    match request {
        Request::Send(envelope) => {
            let outcome = connection.send(envelope).await?;
            outcome.outcome.map(Response::Sent).ok_or_else(|| {
                ClientError::UnexpectedResponse("a send outcome with no result".into())
            })
        }
        Request::Fetch { after_queue_seq } => connection
            .fetch(after_queue_seq, FETCH_PAGE_ENTRIES_MAX)
            .await
            .map(Response::Queue),
        Request::Ack(queue_seqs) => connection.ack(queue_seqs).await.map(|()| Response::Acked),
        Request::ClaimKeys(account) => connection.claim_keys(account).await.map(Response::Keys),
        Request::GroupInfo(group) => {
            let command =
                relay_proto::wire::group_command::Command::Get(relay_proto::wire::GroupRef {
                    group,
                });
            match connection.group_command(command).await? {
                crate::connection::GroupAnswer::Group(info) => Ok(Response::Group(info)),
                crate::connection::GroupAnswer::Groups(_) => Err(ClientError::UnexpectedResponse(
                    "a list of groups for one group".into(),
                )),
            }
        }
        Request::LookupName(name) => connection.lookup_name(&name).await.map(Response::Account),
        Request::LookupAccount(account) => connection
            .lookup_account(account)
            .await
            .map(Response::Account),
        Request::WatchPresence { account, watch } => connection
            .watch_presence(account, watch)
            .await
            .map(|()| Response::Passed),
        Request::UploadKeys {
            one_time_keys,
            fallback_key,
        } => connection
            .upload_keys(one_time_keys, fallback_key)
            .await
            .map(Response::KeysUploaded),
    }
}

/// The output of the future in `slot`, once it is ready; pending while there is none.
async fn poll_slot<T>(slot: &mut Option<BoxFuture<T>>) -> T {
    std::future::poll_fn(|cx| match slot {
        Some(future) => future.as_mut().poll(cx),
        None => Poll::Pending,
    })
    .await
}

/// The output of the first of `futures` to be ready (removed from the set); pending while the
/// set is empty.
async fn poll_any<T>(futures: &mut Vec<BoxFuture<T>>) -> T {
    std::future::poll_fn(|cx| {
        for index in 0..futures.len() {
            if let Poll::Ready(output) = futures[index].as_mut().poll(cx) {
                drop(futures.swap_remove(index));
                return Poll::Ready(output);
            }
        }
        Poll::Pending
    })
    .await
}

async fn next_push(pushes: &mut Option<mpsc::Receiver<Push>>) -> Option<Push> {
    match pushes {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use relay_net::TokioSockets;
    use relay_proto::{AccountId, DeviceId};

    use super::*;
    use crate::connection::EdgeSource;
    use crate::flows;
    use crate::store::Contact;

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
                    ca_path: Some(PathBuf::from(CA_FILE)),
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

    /// A device of `dir` that can reach no edge. Each opening needs its own `seed`, as each
    /// run of an app draws fresh ids.
    fn offline(dir: &Path, seed: u64) -> (Device, Events) {
        let environment = Environment {
            dialer: Dialer::new(Arc::new(TokioSockets), EdgeSource::Fixed(Vec::new())),
            rng_seed: Some(seed),
            ..Environment::default()
        };
        Device::open(
            dir,
            OpenOptions {
                environment,
                ..OpenOptions::default()
            },
        )
        .expect("open")
    }

    // Moved from app.rs with the one-command client: the same checks, through Device and
    // flows::send.
    #[tokio::test]
    async fn what_is_typed_is_stored_before_any_network_attempt() {
        let dir = tempfile::tempdir().expect("tempdir");
        registered(dir.path());
        let (device, mut events) = offline(dir.path(), 1);
        let seen = Rc::new(RefCell::new(Vec::new()));
        let mut sink = {
            let seen = seen.clone();
            move |event: Event| seen.borrow_mut().push(event)
        };
        let never = std::future::pending::<()>;
        let to_bob = flows::send(
            &device,
            &mut events,
            "bob",
            "hi bob",
            None,
            never(),
            &mut sink,
        )
        .await
        .expect("send");
        let to_carol = flows::send(
            &device,
            &mut events,
            "carol",
            "hi carol",
            None,
            never(),
            &mut sink,
        )
        .await
        .expect("send");
        let reported: Vec<String> = seen
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
        device.close().await.expect("close");

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
        let (device, mut events) = offline(dir.path(), 2);
        let mut store = Store::open(&dir.path().join(DATABASE_FILE)).expect("open");
        store
            .write(|writer| {
                writer.upsert_contact(&Contact {
                    account: AccountId(3),
                    name: "carol".into(),
                    region: 1,
                })
            })
            .expect("contact");
        let later = flows::send(
            &device,
            &mut events,
            "carol",
            "again",
            None,
            never(),
            &mut |_| {},
        )
        .await
        .expect("send");
        device.close().await.expect("close");
        assert!(store.drafts().expect("drafts").is_empty());
        let to_carol_chat: Vec<(u64, ClientMessageId)> = store
            .outbox()
            .expect("outbox")
            .iter()
            .filter(|row| row.peer == AccountId(3))
            .map(|row| (row.sender_seq, row.client_message_id))
            .collect();
        assert_eq!(to_carol_chat, vec![(1, to_carol), (2, later)]);

        // Refused before anything is stored: a name that cannot be an account, and oneself.
        let (device, _events) = offline(dir.path(), 3);
        assert!(matches!(
            device.send("Not A Name", "x").await,
            Err(ClientError::UnknownPeer(_))
        ));
        assert!(matches!(
            device.send("alice", "x").await,
            Err(ClientError::Invalid(_))
        ));
        device.close().await.expect("close");
        assert!(store.drafts().expect("drafts").is_empty());
        assert_eq!(store.outbox().expect("outbox").len(), 3);
    }

    // Moved from app.rs: Device::open tells the same errors apart as Client::open did.
    #[tokio::test]
    async fn an_unfinished_registration_and_a_damaged_database_are_told_apart() {
        let open = |dir: &Path| Device::open(dir, OpenOptions::default()).map(|_| ());
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

    #[test]
    fn a_device_needs_a_runtime_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        registered(dir.path());
        let error = Device::open(dir.path(), OpenOptions::default()).expect_err("no runtime");
        assert!(error.to_string().contains("tokio runtime"), "{error}");
    }
}
