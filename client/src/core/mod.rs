//! The device's decisions, sans IO: what a person typed becomes outbox entries and drafts,
//! drafts wait for their names, entries become envelopes (claiming keys when a device has no
//! session), send outcomes move the outbox and the ticks, "mismatched devices" re-encrypts,
//! queue pages are classified and acknowledged, the fallback key is kept fresh, and a device
//! refused as rolled back gives up what it holds. The state machine owns the store (local,
//! synchronous, durable: every change is committed before the work it enables is handed out)
//! but no socket, no clock, no runtime and no randomness of its own.
//!
//! It is driven like `quinn-proto`: the shell feeds inputs (`handle_*`, typed calls such as
//! [`Core::type_text`]) with `now` (ms on the shell's monotonic clock) and `wall_ms` (the
//! environment's wall clock, for timestamps only), then takes the work out:
//! [`Core::poll_action`] (connect, disconnect, a request to send on the connection),
//! [`Core::poll_event`] (what to report), and [`Core::poll_timeout`] (when to call
//! [`Core::handle_timeout`]). Every request handed out is answered once with
//! [`Core::handle_answer`]; requests are independent and may be answered in any order, so
//! sends of many chats, a fetch, key claims and name lookups are in flight at once.
//!
//! Durability order, everywhere: a change is committed to the store before the server is told
//! (an ack, a send) and before it is reported as done. Events that name an account the device
//! cannot name yet wait (in order, per account) for one directory lookup.

mod bootstrap;
mod changes;
mod group_send;
mod incoming;
mod outgoing;
mod presence;
mod queries;

pub use presence::{TypingIn, TypingSent};
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use prost::Message as _;
use rand::SeedableRng;
use rand::rngs::StdRng;
use relay_proto::wire::{
    AccountInfo, Envelope, KeyBundle, OneTimeKey, OneTimeKeyCount, QueueBatch, QueueEntry,
    send_outcome, validate_account_name,
};
use relay_proto::{AccountId, ClientMessageId, DeviceAddress, DeviceId, ErrorCode};

use crate::blob::BlobRef;
use crate::connection::DeviceProgress;
use crate::error::{ClientError, Result};
use crate::events::{Direction, Event, Reaction};
use crate::history::History;
use crate::inbound::Inbound;
use crate::limits::{POLL_INTERVAL_MS, REQUESTS_IN_FLIGHT_MAX};
use crate::media::Attachment;
use crate::outbox::{Outbox, Pending, retry_delay_ms};
use crate::store::{Contact, Identity, RecipientState, Store, Tick};

/// Why an outbox entry is given up when the relay refuses this device as rolled back.
pub const ROLLED_BACK_FAILURE: &str = "not sent: this device's state went back (its data \
directory was restored from an older copy); register this device again in a new data directory";

/// Names a request handed out by [`Core::poll_action`].
pub type RequestId = u64;

/// How a device stays in touch with its edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Connected as long as it is open: messages and ticks arrive as they happen (pushes, and
    /// a fetch every [`POLL_INTERVAL_MS`]), and the outbox is sent as soon as it can be. What
    /// an app, a bot and `relay listen` use.
    Live,
    /// Connects only for work: a send (for a while, see [`crate::limits::FLUSH_BUDGET_MS`]),
    /// a flush, or a sync. What one-shot commands use.
    #[default]
    OnDemand,
}

/// What the core asks its shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Dial an edge (the locator's, or `last_edge` when the locator is silent) and authenticate
    /// presenting `progress`; report with [`Core::handle_connected`] or
    /// [`Core::handle_connect_failed`].
    Connect {
        /// The counters to present.
        progress: DeviceProgress,
        /// The edge the last connection reached.
        last_edge: Option<SocketAddr>,
    },
    /// Close the connection; requests still in flight on it will fail and be answered so.
    Disconnect,
    /// Download the history bootstrap `reference` names, keeping the connection meanwhile, and
    /// answer with [`Core::handle_bootstrap`].
    Bootstrap {
        /// The snapshot's blob.
        reference: BlobRef,
    },
    /// Send a request on the connection and answer it with [`Core::handle_answer`].
    Request {
        /// Its name.
        id: RequestId,
        /// What to send.
        request: Request,
    },
}

/// A request to the edge.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Send an envelope.
    Send(Envelope),
    /// Read the queue after `after_queue_seq`.
    Fetch {
        /// The cursor.
        after_queue_seq: u64,
    },
    /// Acknowledge queue entries processed and committed (and so delete them).
    Ack(Vec<u64>),
    /// Claim one-time keys of every current device of an account.
    ClaimKeys(AccountId),
    /// Resolve a name to an account.
    LookupName(String),
    /// Resolve an account to its name.
    LookupAccount(AccountId),
    /// Read a group's membership (this account must be a member).
    GroupInfo(u64),
    /// Start or stop watching an account's presence.
    WatchPresence {
        /// The account.
        account: AccountId,
        /// Start or stop.
        watch: bool,
    },
    /// Upload one-time keys and maybe a new signed fallback key.
    UploadKeys {
        /// One-time keys.
        one_time_keys: Vec<OneTimeKey>,
        /// The new fallback key.
        fallback_key: Option<OneTimeKey>,
    },
}

/// The edge's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// To [`Request::Send`].
    Sent(send_outcome::Outcome),
    /// To [`Request::Fetch`].
    Queue(QueueBatch),
    /// To [`Request::Ack`]: the region committed the acks.
    Acked,
    /// To [`Request::ClaimKeys`].
    Keys(KeyBundle),
    /// To [`Request::LookupName`] and [`Request::LookupAccount`].
    Account(AccountInfo),
    /// To [`Request::UploadKeys`].
    KeysUploaded(OneTimeKeyCount),
    /// To [`Request::GroupInfo`].
    Group(relay_proto::wire::GroupInfo),
    /// To [`Request::WatchPresence`]: the edge passed it on.
    Passed,
}

/// Where a message of this device stands, as the store says (another process on the same data
/// directory may have moved it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageState {
    /// Typed for a name not resolved yet.
    Draft,
    /// In the chat with this tick.
    Ticked(Tick),
    /// Given up, with the reason.
    Failed(String),
    /// Given up because no account has the name it was typed for.
    UnknownPeer(String),
    /// Not known to this device.
    Unknown,
}

/// A message still waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StillPending {
    /// The message id.
    pub id: ClientMessageId,
    /// The peer's name (or `#account`).
    pub peer: String,
    /// Why it is not sent yet.
    pub reason: String,
}

/// Queues `content` to `peer` in `chat` under `id` as the chat's next sender_seq (the
/// envelope is built when it goes out); returns its place in the outbox.
fn enqueue(
    writer: &crate::store::Writer<'_>,
    chat: relay_proto::ChatId,
    peer: AccountId,
    id: ClientMessageId,
    content: Vec<u8>,
    wall_ms: u64,
) -> Result<Pending> {
    let sender_seq = writer.take_sender_seq(chat)?;
    writer.insert_outbox(
        &crate::store::OutboxRow {
            chat,
            sender_seq,
            client_message_id: id,
            peer,
            content,
            envelope: None,
            group: 0,
        },
        wall_ms,
    )?;
    Ok(Pending {
        chat,
        sender_seq,
        client_message_id: id,
    })
}

/// What a name lookup came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameState {
    /// To be asked of the directory once connected.
    Wanted,
    /// Asked; the answer is awaited.
    Asking,
    /// An account has it.
    Known(Contact),
    /// No account has it.
    Unknown,
    /// The directory could not be asked, or not answered usably.
    Failed(NameFailure),
}

/// Why a name lookup failed: the error itself, so the caller still sees whether a retry can fix
/// it (a throttled or unreachable lookup is retryable; it was once turned into a plain
/// `Invalid` text, which a caller had to treat as final).
#[derive(Debug)]
pub struct NameFailure(ClientError);

impl NameFailure {
    /// The failure as an error for a caller (a copy: see [`ClientError::duplicate`]).
    pub fn error(&self) -> ClientError {
        self.0.duplicate()
    }
}

impl Clone for NameFailure {
    fn clone(&self) -> Self {
        Self(self.0.duplicate())
    }
}

impl PartialEq for NameFailure {
    fn eq(&self, other: &Self) -> bool {
        self.0.code() == other.0.code() && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for NameFailure {}

/// What a request was for.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per request in flight, at most REQUESTS_IN_FLIGHT_MAX
enum Purpose {
    Send {
        entry: Pending,
        envelope: Envelope,
        row: crate::store::OutboxRow,
    },
    Fetch {
        cursor: u64,
    },
    Ack(Vec<u64>),
    Claim(AccountId),
    LookupName(String),
    LookupAccount(AccountId),
    GroupInfo(u64),
    UploadKeys,
    Watch(AccountId),
}

/// The connection, as the core sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Link {
    /// Not connected; the next attempt may start at `retry_at_ms`.
    Down { retry_at_ms: u64, failures: u32 },
    /// The shell is connecting with these counters, after `failures` failed attempts in a row.
    Connecting {
        presented: DeviceProgress,
        rechecks: u32,
        failures: u32,
    },
    /// Connected and authenticated.
    Up { edge: SocketAddr },
}

/// Something to report once every account it names has a name.
#[derive(Debug)]
enum Report {
    Event(Event),
    Inbound(Inbound),
    Tick {
        id: ClientMessageId,
        peer: AccountId,
        tick: Tick,
    },
    Failed {
        id: ClientMessageId,
        peer: AccountId,
        reason: String,
    },
    /// A note naming `peer` where `{peer}` stands in `text`.
    NoteAbout {
        peer: AccountId,
        text: String,
    },
    Presence {
        account: AccountId,
        info: relay_proto::wire::PresenceInfo,
    },
    Typing {
        from: DeviceAddress,
        /// The group whose chat it is, 0 in the 1:1 chat.
        group: u64,
        typing: bool,
    },
}

/// A name for an account, as far as the device knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AccountName {
    Asking,
    Known(String),
    Unknown,
}

/// The device's state machine (see the module doc).
pub struct Core {
    store: Store,
    identity: Identity,
    mode: Mode,
    rng: StdRng,
    outbox: Outbox,
    rolled_back: Option<String>,
    link: Link,
    next_request: RequestId,
    in_flight: BTreeMap<RequestId, Purpose>,
    actions: VecDeque<Action>,
    reports: VecDeque<Report>,
    /// Until when (ms) the outbox may send in [`Mode::OnDemand`].
    flush_until: Option<u64>,
    /// Until when (ms) a call asked for the connection itself ([`Core::want_connection`]).
    connection_wanted_until: Option<u64>,
    /// The last reason an entry could not be sent, for "still pending" reports.
    last_problem: Option<String>,
    /// The last error that kept the device from its edge or its queue, and when (ms).
    last_error: Option<(ClientError, u64)>,
    /// Send attempts that failed and were retried (see [`Core::send_attempts_failed`]).
    send_attempts_failed: u64,
    /// When the device last became connected (ms).
    connected_at: Option<u64>,
    /// A local failure that stops the device (the store failed).
    failure: Option<ClientError>,
    outgoing: outgoing::Outgoing,
    group_sending: group_send::GroupSending,
    incoming: incoming::Incoming,
    account_names: BTreeMap<AccountId, AccountName>,
    /// In [`Mode::Live`], when the queue is fetched next without a push (ms).
    next_poll_at: Option<u64>,
    /// The wall clock as the shell last told it (ms since the Unix epoch; timestamps only).
    wall_ms: u64,
    /// The chats as relay-sync documents.
    history: History,
    /// Whether sync messages for the own devices may be due (see `changes`).
    sync_wanted: bool,
    /// Whether this run of the device has told its own devices its documents' heads: a run
    /// starts knowing nothing of theirs (automerge keeps that only in memory), so its first
    /// sync says them once, and their answers tell it again whether they hold what it holds.
    history_announced: bool,
    /// The history bootstrap being downloaded, if one is (see `bootstrap`).
    bootstrap: Option<bootstrap::PendingBootstrap>,
    /// Presence watched and typing shown (see `presence`).
    presence: presence::PresenceState,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("identity", &self.identity)
            .field("mode", &self.mode)
            .field("link", &self.link)
            .field("outbox", &self.outbox)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// The core of the registered device whose unlocked store is `store`, with randomness from
    /// `rng_seed`, at `now_ms`; `wall_ms` prunes the seen-set.
    pub fn new(
        mut store: Store,
        identity: Identity,
        mode: Mode,
        rng_seed: u64,
        now_ms: u64,
        wall_ms: u64,
    ) -> Result<Self> {
        let rolled_back = store.rolled_back()?;
        store.write(|writer| writer.prune_seen(wall_ms))?;
        let mut rng = StdRng::seed_from_u64(rng_seed);
        let data_dir = store
            .path()
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let history = History::open(&data_dir, identity.address(), rand::Rng::random(&mut rng))?;
        let mut outbox = Outbox::new();
        // A group's stored envelopes say how many devices each reaches: its window is sized by
        // that from the first send after a restart, as before it.
        let mut fanouts: BTreeMap<relay_proto::ChatId, usize> = BTreeMap::new();
        for row in store.outbox()? {
            outbox.insert(
                Pending {
                    chat: row.chat,
                    sender_seq: row.sender_seq,
                    client_message_id: row.client_message_id,
                },
                now_ms,
            )?;
            let devices = match row.envelope.as_deref() {
                Some(bytes) if row.group != 0 => Envelope::decode(bytes)
                    .map(|envelope| envelope.ciphertexts.len())
                    .unwrap_or(0),
                _ => 0,
            };
            let fanout = fanouts.entry(row.chat).or_default();
            *fanout = (*fanout).max(devices);
        }
        for (chat, devices) in fanouts {
            outbox.set_fanout(chat, devices);
        }
        Ok(Self {
            store,
            identity,
            mode,
            rng,
            outbox,
            rolled_back,
            link: Link::Down {
                retry_at_ms: now_ms,
                failures: 0,
            },
            next_request: 1,
            in_flight: BTreeMap::new(),
            actions: VecDeque::new(),
            reports: VecDeque::new(),
            flush_until: None,
            connection_wanted_until: None,
            last_problem: None,
            last_error: None,
            send_attempts_failed: 0,
            connected_at: None,
            failure: None,
            outgoing: outgoing::Outgoing::default(),
            group_sending: group_send::GroupSending::default(),
            incoming: incoming::Incoming::default(),
            account_names: BTreeMap::new(),
            next_poll_at: None,
            wall_ms,
            history,
            sync_wanted: false,
            history_announced: false,
            bootstrap: None,
            presence: presence::PresenceState::default(),
        })
    }

    /// The registered identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The store (reads only: every change goes through the core).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// How the device stays in touch.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why the relay refused this device as rolled back, if it did.
    pub fn rolled_back(&self) -> Option<&str> {
        self.rolled_back.as_deref()
    }

    /// Fails with [`ClientError::DeviceRolledBack`] once the relay refused this device as
    /// rolled back (now or in an earlier run).
    pub fn refuse_if_rolled_back(&self) -> Result<()> {
        match &self.rolled_back {
            Some(reason) => Err(ClientError::DeviceRolledBack(reason.clone())),
            None => Ok(()),
        }
    }

    /// The local failure that stopped the device, if one did.
    pub fn failure(&self) -> Option<&ClientError> {
        self.failure.as_ref()
    }

    /// Whether the device is connected and authenticated.
    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }

    /// When the device last became connected (ms), if it ever did.
    pub fn connected_at(&self) -> Option<u64> {
        self.connected_at
    }

    /// Attempts to send an outbox entry (a message, a receipt, a change) that failed with a
    /// retryable error or a lost connection since the device opened; each entry was tried
    /// again. A measure of how rough the way to the relay is: a planned failover of a region
    /// adds none.
    pub fn send_attempts_failed(&self) -> u64 {
        self.send_attempts_failed
    }

    /// The last error that kept the device from its edge or its queue, and when (ms).
    pub fn last_error(&self) -> Option<(&ClientError, u64)> {
        self.last_error.as_ref().map(|(error, at)| (error, *at))
    }

    /// The counters this device presents when it authenticates.
    pub fn progress(&self) -> Result<DeviceProgress> {
        Ok(DeviceProgress {
            queue_cursor: self.store.queue_cursor()?,
            next_device_seq: self.store.next_device_seq()?,
        })
    }

    /// Tells the core the wall clock (ms since the Unix epoch), before feeding it inputs: it
    /// stamps what it stores (when a message was seen, when a key was made), never a timer.
    pub fn set_wall_ms(&mut self, wall_ms: u64) {
        self.wall_ms = wall_ms;
    }

    // -----------------------------------------------------------------------------------------
    // Work out

    /// The next thing for the shell to do, if any.
    pub fn poll_action(&mut self, now_ms: u64) -> Option<Action> {
        if self.actions.is_empty()
            && let Err(error) = self.step(now_ms)
        {
            self.fail(error);
        }
        self.actions.pop_front()
    }

    /// The next event to report, if any. An event that names an account this device cannot
    /// name yet waits for a directory lookup (handed out by [`Core::poll_action`]) while
    /// connected, and so does every later event naming that account (their order is kept);
    /// events about other accounts go ahead of it.
    pub fn poll_event(&mut self) -> Option<Event> {
        let mut waiting: BTreeSet<AccountId> = BTreeSet::new();
        let mut index = 0;
        while index < self.reports.len() {
            let accounts = self.reports[index].accounts();
            let mut ready = !accounts.iter().any(|account| waiting.contains(account));
            if ready {
                for account in &accounts {
                    ready &= self.named(*account);
                }
            }
            if ready {
                let report = self.reports.remove(index)?;
                return Some(self.name_report(report));
            }
            waiting.extend(accounts);
            index += 1;
        }
        None
    }

    /// Whether events wait to be reported (some for a name lookup): a call that reports what it
    /// did is answered only once they are out.
    pub fn reports_pending(&self) -> bool {
        !self.reports.is_empty()
    }

    /// When [`Core::handle_timeout`] is next due (ms), if anything waits for time.
    pub fn poll_timeout(&self, now_ms: u64) -> Option<u64> {
        let mut due: Option<u64> = None;
        let mut consider = |at: u64| due = Some(due.map_or(at, |due| due.min(at)));
        if self.failure.is_some() || self.rolled_back.is_some() {
            return None;
        }
        if let Some(at) = self.typing_timeout() {
            consider(at);
        }
        match &self.link {
            Link::Down { retry_at_ms, .. } if self.wants_connection(now_ms) => {
                consider(*retry_at_ms);
            }
            Link::Up { .. } => {
                if self.window_open(now_ms)
                    && let Some(at) = self.outbox.poll_timeout()
                {
                    consider(at);
                }
                // A group's next text waiting out a backoff (a failed claim or membership
                // read): nothing else may come to wake the device.
                if self.window_open(now_ms)
                    && let Some(at) = self.group_sending.next_retry_after(now_ms)
                {
                    consider(at);
                }
                if let Some(at) = self.next_poll_at {
                    consider(at);
                }
            }
            _ => {}
        }
        if let Some(until) = self.flush_until {
            consider(until);
        }
        if let Some(until) = self.connection_wanted_until {
            consider(until);
        }
        due
    }

    /// Time passed: polls the queue when it is due (live), closes a flush window that ended.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.expire_typing(now_ms);
        if self.flush_until.is_some_and(|until| now_ms >= until) {
            self.flush_until = None;
        }
        if self
            .connection_wanted_until
            .is_some_and(|until| now_ms >= until)
        {
            self.connection_wanted_until = None;
        }
        if self.next_poll_at.is_some_and(|at| now_ms >= at) && self.is_connected() {
            self.next_poll_at = Some(now_ms + POLL_INTERVAL_MS);
            self.incoming.want();
            self.outgoing.want_draft_names(&self.store);
        }
    }

    // -----------------------------------------------------------------------------------------
    // The connection

    /// The shell connected to `edge` and authenticated; the region reported `keys`, or the edge
    /// its cached hint of them. A hint may be stale-low (claims through other edges, answers
    /// passing the edge out of order), so it asks for no new one-time keys: the first fetch's
    /// exact count does. An upload made on a stale count would also hold back the fallback
    /// key's replacement for `KEY_UPLOAD_INTERVAL_MS`. Keys an earlier failed upload left
    /// unpublished still go up.
    pub fn handle_connected(&mut self, edge: SocketAddr, keys: OneTimeKeyCount, now_ms: u64) {
        self.link = Link::Up { edge };
        self.connected_at = Some(now_ms);
        self.incoming.key_upload_at = None;
        self.incoming.acks_may_be_owed();
        self.incoming.connected();
        if self.store.last_edge().ok().flatten() != Some(edge)
            && let Err(error) = self.store.write(|writer| writer.set_last_edge(edge))
        {
            self.fail(error);
            return;
        }
        self.reports.push_back(Report::Event(Event::Connected {
            edge: edge.to_string(),
        }));
        if self.mode == Mode::Live {
            self.incoming.want();
            self.next_poll_at = Some(now_ms + POLL_INTERVAL_MS);
        }
        self.outgoing.want_draft_names(&self.store);
        let keys = if keys.cached {
            OneTimeKeyCount {
                remaining: keys
                    .remaining
                    .max(relay_proto::limits::ONE_TIME_KEYS_LOW_WATERMARK),
                ..keys
            }
        } else {
            keys
        };
        if let Err(error) = self.keep_keys(keys, false, now_ms) {
            self.fail(error);
        }
        self.rewatch();
    }

    /// Connecting (or authenticating) failed with `error`. A refusal as rolled back is
    /// recorded unless this device's counters moved since they were presented (another
    /// process on the same data directory), in which case it connects again at once.
    pub fn handle_connect_failed(&mut self, error: ClientError, now_ms: u64) {
        let Link::Connecting {
            presented,
            rechecks,
            failures,
        } = self.link
        else {
            return;
        };
        if let Some(refusal) = rolled_back_refusal(&error) {
            let moved = match self.progress() {
                Ok(progress) => progress != presented,
                Err(error) => {
                    self.fail(error);
                    return;
                }
            };
            if moved && rechecks < crate::limits::ROLLBACK_RECHECKS_MAX {
                match (self.progress(), self.store.last_edge()) {
                    (Ok(progress), Ok(last_edge)) => {
                        self.link = Link::Connecting {
                            presented: progress,
                            rechecks: rechecks + 1,
                            failures,
                        };
                        self.actions.push_back(Action::Connect {
                            progress,
                            last_edge,
                        });
                    }
                    (Err(error), _) | (_, Err(error)) => self.fail(error),
                }
                return;
            }
            self.roll_back(refusal);
            return;
        }
        let failures = failures.saturating_add(1);
        let delay = retry_delay_ms(failures, &mut self.rng)
            .max(error.retry_after_ms().unwrap_or(0))
            .min(crate::limits::RETRY_DELAY_MS_MAX);
        self.link = Link::Down {
            retry_at_ms: now_ms + delay,
            failures,
        };
        let unreachable = error.is_unreachable();
        if unreachable || !(error.is_retryable() || error.needs_reconnect()) {
            // Nothing can go now: a one-shot send stops trying and says why.
            self.flush_until = None;
            self.connection_wanted_until = None;
            self.last_problem = Some(error.to_string());
            self.outgoing.names_failed(&error);
        }
        self.reports.push_back(Report::Event(Event::Disconnected {
            reason: error.to_string(),
            retry_in_ms: Some(delay),
            unreachable,
        }));
        self.last_error = Some((error, now_ms));
    }

    /// The connection ended (the edge closed it, a request found it broken).
    pub fn handle_connection_lost(&mut self, reason: &str, now_ms: u64) {
        self.drop_connection(reason, None, now_ms);
    }

    /// Drops the connection, connecting again at once or after `retry_in_ms`.
    fn drop_connection(&mut self, reason: &str, retry_in_ms: Option<u64>, now_ms: u64) {
        if !self.is_connected() {
            return;
        }
        self.link = Link::Down {
            retry_at_ms: now_ms + retry_in_ms.unwrap_or(0),
            failures: 0,
        };
        self.next_poll_at = None;
        self.actions.push_back(Action::Disconnect);
        self.reports.push_back(Report::Event(Event::Disconnected {
            reason: reason.to_owned(),
            retry_in_ms,
            unreachable: false,
        }));
    }

    /// Something the shell noticed that is worth telling (say, the locator did not answer and
    /// the last edge that worked is tried).
    pub fn handle_note(&mut self, message: String) {
        self.reports
            .push_back(Report::Event(Event::Note { message }));
    }

    /// The edge said new entries wait in the queue, up to `latest_queue_seq`, and sent
    /// `entries` of them along (a gapless run, possibly none). A run that follows the cursor
    /// is taken as a fetched page would be, when no fetch is in flight; what it does not reach
    /// is fetched.
    pub fn handle_push(&mut self, latest_queue_seq: u64, entries: Vec<QueueEntry>) {
        if self.mode != Mode::Live || self.rolled_back.is_some() || self.failure.is_some() {
            return;
        }
        if let Err(error) = self.handle_pushed(latest_queue_seq, entries) {
            self.fail(error);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Answers

    /// The answer to request `id`.
    pub fn handle_answer(&mut self, id: RequestId, answer: Result<Response>, now_ms: u64) {
        let Some(purpose) = self.in_flight.remove(&id) else {
            return;
        };
        let handled = match purpose {
            Purpose::LookupAccount(account) => {
                self.handle_account_lookup(account, answer);
                Ok(())
            }
            // Once refused as rolled back, nothing else is acted on.
            _ if self.rolled_back.is_some() => Ok(()),
            Purpose::Send {
                entry,
                envelope,
                row,
            } => self.handle_sent(entry, envelope, row, answer, now_ms),
            Purpose::Fetch { cursor } => self.handle_fetched(cursor, answer, now_ms),
            Purpose::Ack(acks) => self.handle_acked(acks, answer, now_ms),
            Purpose::Claim(account) => self.handle_claimed(account, answer, now_ms),
            Purpose::LookupName(name) => self.handle_name_lookup(name, answer, now_ms),
            Purpose::UploadKeys => self.handle_keys_uploaded(answer, now_ms),
            Purpose::GroupInfo(group) => self.handle_group_info(group, answer, now_ms),
            Purpose::Watch(account) => {
                self.handle_watched(account, answer);
                Ok(())
            }
        };
        if let Err(error) = handled {
            self.fail(error);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Calls

    /// Whether nothing of the outbox is in flight or due before `deadline_ms` (or the device
    /// cannot send at all now): what a one-shot send or sync waits for.
    pub fn flush_settled(&self, now_ms: u64, deadline_ms: u64) -> bool {
        if self.rolled_back.is_some() || self.failure.is_some() {
            return true;
        }
        if self.outgoing.busy(&self.in_flight) || self.group_sending.busy() {
            return false;
        }
        if now_ms >= deadline_ms || !self.window_open(now_ms) {
            return true;
        }
        if self.outgoing.names_waiting() || self.group_texts_waiting() {
            return false;
        }
        self.outbox
            .poll_timeout()
            .is_none_or(|due| due >= deadline_ms)
    }

    /// A sync of this run ([`Core::open_flush_window`]): the first one also says the
    /// documents' heads to the own devices.
    pub fn start_sync(&mut self, until_ms: u64) {
        if !self.history_announced {
            self.history_announced = true;
            self.sync_wanted = true;
        }
        self.open_flush_window(until_ms);
    }

    /// Opens the outbox for sending until `until_ms` ([`Mode::OnDemand`]; a live device always
    /// sends), and asks for the names its drafts wait for.
    pub fn open_flush_window(&mut self, until_ms: u64) {
        self.flush_until = Some(self.flush_until.map_or(until_ms, |at| at.max(until_ms)));
        self.last_problem = None;
        if let Err(error) = self.sync_outbox(until_ms.saturating_sub(1)) {
            self.fail(error);
        }
        self.outgoing.want_draft_names(&self.store);
    }

    /// The account's devices as its region listed them (after this device approved or removed
    /// one): the next envelopes cover exactly them, without a "mismatched devices" round trip.
    pub fn handle_own_devices(&mut self, devices: &[DeviceId]) -> Result<()> {
        let me = self.identity.account;
        let before = self.own_peers()?;
        self.store
            .write(|writer| writer.set_current_devices(me, devices))?;
        // A device linked since starts its sync (the whole history, for a new one).
        self.sync_wanted |= self.own_peers()? != before;
        Ok(())
    }

    /// Keeps an on-demand device connected until `until_ms`, for calls that talk to the edge
    /// themselves (managing the account's devices); a live device is connected anyway.
    pub fn want_connection(&mut self, until_ms: u64) {
        self.connection_wanted_until = Some(
            self.connection_wanted_until
                .map_or(until_ms, |at| at.max(until_ms)),
        );
    }

    /// Asks for the queue to be fetched to its end; [`Core::caught_up`] counts such ends.
    pub fn want_fetch(&mut self) {
        self.incoming.want();
    }

    /// How many times a fetch reached the end of the queue (or its round limit).
    pub fn caught_up(&self) -> u64 {
        self.incoming.caught_up
    }

    /// Whether keys are being uploaded (a sync waits for that too: the queue's end is when a
    /// used fallback key is replaced).
    pub fn uploading_keys(&self) -> bool {
        self.incoming.uploading()
    }

    /// A fetch that failed for good (not a retryable error), taken.
    pub fn take_fetch_error(&mut self) -> Option<ClientError> {
        self.incoming.error.take()
    }

    /// Asks the directory for `name` (while connected), for a call that needs its account.
    pub fn want_name(&mut self, name: &str) {
        self.outgoing.want_name(name);
    }

    /// What a lookup of `name` came to; `None` when it was never asked for.
    pub fn name_state(&self, name: &str) -> Option<&NameState> {
        self.outgoing.names.get(name)
    }

    // -----------------------------------------------------------------------------------------
    // Inside

    fn step(&mut self, now_ms: u64) -> Result<()> {
        if self.failure.is_some() || self.rolled_back.is_some() {
            return Ok(());
        }
        match self.link {
            Link::Down {
                retry_at_ms,
                failures,
            } if now_ms >= retry_at_ms && self.wants_connection(now_ms) => {
                let progress = self.progress()?;
                let last_edge = self.store.last_edge()?;
                self.link = Link::Connecting {
                    presented: progress,
                    rechecks: 0,
                    failures,
                };
                self.actions.push_back(Action::Connect {
                    progress,
                    last_edge,
                });
            }
            Link::Up { .. } => {
                self.step_sync(now_ms)?;
                self.step_names(now_ms)?;
                if self.window_open(now_ms) {
                    self.step_groups(now_ms)?;
                    self.step_outbox(now_ms)?;
                }
                self.step_fetch()?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the device needs its connection now.
    fn wants_connection(&self, now_ms: u64) -> bool {
        if self.mode == Mode::Live
            || self.incoming.wanted
            || self.outgoing.names_for_calls()
            || self
                .connection_wanted_until
                .is_some_and(|until| now_ms < until)
        {
            return true;
        }
        self.window_open(now_ms)
            && (!self.outbox.is_empty()
                || self.store.drafts().is_ok_and(|d| !d.is_empty())
                || self.group_texts_waiting())
    }

    /// Whether the outbox may send now.
    fn window_open(&self, now_ms: u64) -> bool {
        self.mode == Mode::Live || self.flush_until.is_some_and(|until| now_ms < until)
    }

    fn has_room(&self) -> bool {
        self.in_flight.len() < REQUESTS_IN_FLIGHT_MAX
    }

    /// Hands out a request for `purpose`.
    fn request(&mut self, request: Request, purpose: Purpose) {
        let id = self.next_request;
        self.next_request += 1;
        self.in_flight.insert(id, purpose);
        self.actions.push_back(Action::Request { id, request });
    }

    /// A local failure (the store): the device stops and says why.
    fn fail(&mut self, error: ClientError) {
        if self.failure.is_none() {
            self.reports.push_back(Report::Event(Event::Note {
                message: format!("the device stopped: {error}"),
            }));
            self.failure = Some(error);
            self.actions.push_back(Action::Disconnect);
        }
    }

    /// A connection-level error seen by a request: drops the connection when it needs a new
    /// one, and remembers the error for calls waiting on the edge.
    fn note_request_error(&mut self, error: &ClientError, now_ms: u64) {
        if error.needs_reconnect() {
            self.handle_connection_lost(&error.to_string(), now_ms);
        }
        if error.is_retryable() || error.needs_reconnect() {
            self.last_error = Some((error.duplicate(), now_ms));
        }
    }

    /// The relay refused this device because its state went back: records that (so every later
    /// call refuses too), gives up every outbox entry and draft with the reason (reported as
    /// failed, never dropped silently) and disconnects.
    fn roll_back(&mut self, refusal: String) {
        let me = self.identity.address();
        let recorded = self.store.drafts().and_then(|drafts| {
            self.store.write(|writer| {
                writer.set_rolled_back(&refusal)?;
                let mut given_up = Vec::new();
                for row in writer.outbox()? {
                    writer.remove_outbox(row.client_message_id)?;
                    if row.group != 0 {
                        if writer.mark_group_failed(
                            me,
                            row.client_message_id,
                            ROLLED_BACK_FAILURE,
                        )? {
                            given_up.push(row);
                        }
                        continue;
                    }
                    writer.mark_failed(me, row.client_message_id, ROLLED_BACK_FAILURE)?;
                    given_up.push(row);
                }
                for (group, id) in writer.fail_unnumbered_group_texts(me, ROLLED_BACK_FAILURE)? {
                    given_up.push(crate::store::OutboxRow {
                        chat: relay_proto::ChatId::group(relay_proto::GroupId(group)),
                        sender_seq: 0,
                        client_message_id: id,
                        peer: AccountId(0),
                        group,
                        content: Vec::new(),
                        envelope: None,
                    });
                }
                let mut drafts_given_up = Vec::new();
                for draft in drafts {
                    if writer.remove_draft(draft.client_message_id)? {
                        drafts_given_up.push(draft);
                    }
                }
                Ok((given_up, drafts_given_up))
            })
        });
        self.outbox = Outbox::new();
        self.outgoing = outgoing::Outgoing::default();
        self.group_sending = group_send::GroupSending::default();
        self.incoming.wanted = false;
        if self.is_connected() || matches!(self.link, Link::Connecting { .. }) {
            self.actions.push_back(Action::Disconnect);
        }
        self.link = Link::Down {
            retry_at_ms: u64::MAX,
            failures: 0,
        };
        let (given_up, drafts_given_up) = match recorded {
            Ok(given_up) => given_up,
            Err(error) => {
                self.fail(error);
                return;
            }
        };
        self.rolled_back = Some(refusal.clone());
        for draft in drafts_given_up {
            self.reports.push_back(Report::Event(Event::Failed {
                id: draft.client_message_id.to_string(),
                peer: draft.peer_name,
                reason: ROLLED_BACK_FAILURE.to_owned(),
            }));
        }
        for row in given_up {
            if row.group != 0 {
                self.reports.push_back(Report::Event(Event::GroupFailed {
                    group: row.group,
                    id: row.client_message_id.to_string(),
                    reason: ROLLED_BACK_FAILURE.to_owned(),
                }));
                continue;
            }
            let is_message = matches!(self.store.message(me, row.client_message_id), Ok(Some(_)));
            if is_message {
                self.reports.push_back(Report::Failed {
                    id: row.client_message_id,
                    peer: row.peer,
                    reason: ROLLED_BACK_FAILURE.to_owned(),
                });
            } else {
                self.reports.push_back(Report::NoteAbout {
                    peer: row.peer,
                    text: format!("a read receipt to {{peer}} was not sent: {ROLLED_BACK_FAILURE}"),
                });
            }
        }
        self.reports
            .push_back(Report::Event(Event::RolledBack { reason: refusal }));
    }

    // -----------------------------------------------------------------------------------------
    // Names

    /// Whether `account` can be named now; asks the directory (once) while connected.
    fn named(&mut self, account: AccountId) -> bool {
        if account == self.identity.account {
            return true;
        }
        match self.account_names.get(&account) {
            Some(AccountName::Known(_) | AccountName::Unknown) => return true,
            Some(AccountName::Asking) => return false,
            None => {}
        }
        if let Ok(Some(contact)) = self.store.contact_by_account(account) {
            self.account_names
                .insert(account, AccountName::Known(contact.name));
            return true;
        }
        if !self.is_connected() {
            return true;
        }
        self.account_names.insert(account, AccountName::Asking);
        self.request(
            Request::LookupAccount(account),
            Purpose::LookupAccount(account),
        );
        false
    }

    /// A name for `account` to show: own name, a contact, or `#account`.
    fn name_of(&self, account: AccountId) -> String {
        if account == self.identity.account {
            return self.identity.name.clone();
        }
        if let Some(AccountName::Known(name)) = self.account_names.get(&account) {
            return name.clone();
        }
        match self.store.contact_by_account(account) {
            Ok(Some(contact)) => contact.name,
            _ => format!("#{}", account.0),
        }
    }

    fn handle_account_lookup(&mut self, account: AccountId, answer: Result<Response>) {
        let name = match answer {
            Ok(Response::Account(info)) if info.account == account.0 => {
                let contact = Contact {
                    account,
                    name: info.name,
                    region: info.region,
                };
                match self.store.write(|writer| writer.upsert_contact(&contact)) {
                    Ok(()) => AccountName::Known(contact.name),
                    Err(_) => AccountName::Unknown,
                }
            }
            _ => AccountName::Unknown,
        };
        self.account_names.insert(account, name);
    }

    fn name_report(&mut self, report: Report) -> Event {
        match report {
            Report::Event(event) => event,
            Report::Tick { id, peer, tick } => Event::Tick {
                id: id.to_string(),
                peer: self.name_of(peer),
                tick,
            },
            Report::Failed { id, peer, reason } => Event::Failed {
                id: id.to_string(),
                peer: self.name_of(peer),
                reason,
            },
            Report::NoteAbout { peer, text } => Event::Note {
                message: text.replace("{peer}", &self.name_of(peer)),
            },
            Report::Inbound(inbound) => self.inbound_event(inbound),
            Report::Presence { account, info } => self.presence_event(account, info),
            Report::Typing {
                from,
                group,
                typing,
            } => Event::Typing {
                peer: self.name_of(from.account),
                account: from.account.0,
                device: from.device.0,
                group: (group != 0).then_some(group),
                typing,
            },
        }
    }

    fn inbound_event(&self, inbound: Inbound) -> Event {
        match inbound {
            Inbound::Message {
                id,
                sender,
                peer,
                outgoing,
                chat_seq,
                time_ms,
                sent_at_ms,
                text,
                attachment,
            } => Event::Message {
                id: id.to_string(),
                from: self.name_of(sender.account),
                peer: self.name_of(peer),
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
                file: attachment.as_ref().map(Attachment::info),
            },
            Inbound::GroupMessage {
                group,
                id,
                sender,
                outgoing,
                chat_seq,
                time_ms,
                sent_at_ms,
                text,
                attachment,
            } => Event::GroupMessage {
                group,
                id: id.to_string(),
                from: self.name_of(sender.account),
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
                file: attachment.as_ref().map(Attachment::info),
                undecryptable: None,
                tick: None,
            },
            Inbound::GroupTick { group, id, tick } => Event::GroupTick {
                group,
                id: id.to_string(),
                tick,
            },
            Inbound::Undecryptable {
                id,
                sender,
                time_ms,
                reason,
            } => Event::Undecryptable {
                id: id.to_string(),
                from: self.name_of(sender.account),
                sender_device: sender.to_string(),
                time_ms,
                reason,
            },
            Inbound::Tick { id, peer, tick } => Event::Tick {
                id: id.to_string(),
                peer: self.name_of(peer),
                tick,
            },
            Inbound::Expired { id, peer, device } => Event::Expired {
                id: id.to_string(),
                peer: self.name_of(peer),
                device: device.to_string(),
            },
            Inbound::ReadElsewhere { peer, count } => Event::Note {
                message: format!(
                    "{count} message(s) from {} were read on another device",
                    self.name_of(peer)
                ),
            },
            Inbound::Warning(message) => Event::Note { message },
            // Applied to the history, which reports them (see `changes`).
            Inbound::Change { .. } | Inbound::Sync { .. } | Inbound::Bootstrap { .. } => {
                Event::Note {
                    message: String::new(),
                }
            }
        }
    }
}

impl Report {
    /// The accounts the report names.
    fn accounts(&self) -> Vec<AccountId> {
        match self {
            Report::Event(_) => Vec::new(),
            Report::Tick { peer, .. }
            | Report::Failed { peer, .. }
            | Report::NoteAbout { peer, .. } => vec![*peer],
            Report::Presence { account, .. } => vec![*account],
            Report::Typing { from, .. } => vec![from.account],
            Report::Inbound(inbound) => match inbound {
                Inbound::Message { sender, peer, .. } => vec![sender.account, *peer],
                Inbound::GroupMessage { sender, .. } => vec![sender.account],
                Inbound::GroupTick { .. } => Vec::new(),
                Inbound::Undecryptable { sender, .. } => vec![sender.account],
                Inbound::Tick { peer, .. }
                | Inbound::Expired { peer, .. }
                | Inbound::ReadElsewhere { peer, .. } => vec![*peer],
                Inbound::Warning(_)
                | Inbound::Change { .. }
                | Inbound::Sync { .. }
                | Inbound::Bootstrap { .. } => Vec::new(),
            },
        }
    }
}

/// The relay's words when `error` is its refusal of this device as rolled back.
pub fn rolled_back_refusal(error: &ClientError) -> Option<String> {
    match error {
        ClientError::Remote(refusal) if refusal.code == ErrorCode::DeviceRolledBack => {
            Some(refusal.message.clone())
        }
        _ => None,
    }
}

/// Checks a name someone typed as a peer's: an account name, and not this device's own.
pub(crate) fn check_peer_name(identity: &Identity, peer: &str) -> Result<()> {
    validate_account_name(peer).map_err(|_| ClientError::UnknownPeer(peer.into()))?;
    if peer == identity.name {
        return Err(ClientError::Invalid(
            "a message to yourself has no recipient device".into(),
        ));
    }
    Ok(())
}

/// What a stored attachment shows; a damaged one shows nothing (the text still shows).
pub(super) fn file_info(attachment: Option<&[u8]>) -> Option<crate::media::FileInfo> {
    attachment
        .and_then(|bytes| Attachment::from_bytes(bytes).ok())
        .map(|attachment| attachment.info())
}
