//! The correctness workload: what each simulated client does, planned from the seed, and the
//! client itself — the real client SDK ([`relay_client::Device`] driven by its one-command
//! [`relay_client::flows`]: its store, Olm sessions, envelope building, outbox and inbound
//! processing) on a simulated network and clock.
//!
//! Each client registers through its region's edge, waits until every client has, then sends
//! its planned messages (each to one other client, after a planned pause, sometimes followed
//! by a sync), and finally syncs until its outbox is empty and everything sent to it has
//! arrived, or the time limit passes. It records what it sees as [`What`] events, and at the
//! end its stored history of each chat ([`ChatView`]).
//!
//! A share of the clients (drawn from the seed) link a **second device** before anyone sends,
//! through the real linking flow: the first device opens a pairing, the new device asks with its
//! code ([`relay_client::link_accept_in`]) and the first device approves it. The client's planned
//! messages are split between its devices ([`PlannedSend::device`]): the second device sends its
//! share, receives everything meant for the account, and syncs until its first device has
//! finished and one more sync found nothing left. Both devices record what they send and
//! receive, so I1–I4, I6 and I8 hold per device. At the end every device's stored history
//! ([`ChatView`]) and relay-sync document ([`DocView`], for I7) of each chat is recorded.
//!
//! The linking itself ([`link_device`]) is shared with `relayd chaos`, whose clients link
//! mid-run ([`Plan::link_mid_run`]); [`Progress::link`] notes what was queued before, which a
//! device linked then need not receive.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_client::connection::{Dialer, EdgeSource};
use relay_client::events::Direction;
use relay_client::history::History;
use relay_client::limits::READ_RECEIPT_IDS_MAX;
use relay_client::store::{Store, Tick};
use relay_client::{
    ClientError, DATABASE_FILE, Device, Environment, Event, Events, LinkHistory, OpenOptions,
    Overrides, flows, link_accept_in, register_in,
};
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress};

use crate::faults::NetFaults;
use crate::history::{
    Change, ChatView, DocEntry, DocView, MessageRef, TraceEvent, ViewEntry, What, client_name,
    client_number, device_name,
};
use crate::net::{PacketLog, SimSockets};
use crate::seed;
use crate::time::{SimClock, sim_elapsed_ms};

/// Pause between two syncs while a client waits for the rest of its messages, in ms.
pub const SYNC_INTERVAL_MS: u64 = 250;
/// Pause between two checks that every client has registered, in ms.
pub const REGISTRATION_POLL_MS: u64 = 20;
/// Registration attempts before a client gives up.
pub const REGISTRATION_ATTEMPTS_MAX: u32 = 8;
/// How long a killed client app stays closed, in ms.
pub const CLIENT_RESTART_MS: u64 = 300;
/// Pause between two registration attempts, in ms.
pub const REGISTRATION_RETRY_MS: u64 = 500;
/// Attempts at a send that fails before the message enters the outbox (the peer's name cannot
/// be resolved, say), as a person would try again.
pub const SEND_ATTEMPTS_MAX: u32 = 20;
/// Pause before trying such a send again, in ms.
pub const SEND_RETRY_MS: u64 = 500;
/// Attempts at asking to link with a pairing code, and at approving the request, before a
/// client gives up its second device (a retry picks up the same request).
pub const LINK_ATTEMPTS_MAX: u32 = 40;
/// Pause between two such attempts, in ms.
pub const LINK_RETRY_MS: u64 = 250;
/// Edits and reactions each device of a linked client makes at most.
pub const CHANGES_PER_DEVICE_MAX: u32 = 3;
/// Chance, in percent, that a device of a linked client makes a change after one of its syncs.
pub const CHANGE_PERCENT: u32 = 40;
/// Of the changes a device makes to its account's own messages, the share (in percent) that
/// are edits and deletions for everyone; the rest are reactions.
pub const OWN_CHANGE_EDIT_PERCENT: u32 = 35;
/// See [`OWN_CHANGE_EDIT_PERCENT`].
pub const OWN_CHANGE_DELETE_PERCENT: u32 = 35;
/// How long, in simulated ms, the first device of a linked client waits once everything else
/// is settled for both of its devices to say their documents are in sync
/// ([`Device::history_in_sync`]) before it stops anyway; the trace notes it
/// ([`What::SyncUnconfirmed`]) and I7 compares the documents as they are.
pub const SYNC_CONFIRM_WAIT_MS: u64 = 10_000;
/// Longest a second device pauses its syncing (offline while the first device acts), in ms.
pub const LINKED_PAUSE_MS_MAX: u64 = 3_000;
const _: () = assert!(OWN_CHANGE_EDIT_PERCENT + OWN_CHANGE_DELETE_PERCENT <= 100);

/// Latest moment of such a removal, in simulated ms since the start (messages are still
/// being sent then).
pub const REMOVAL_AT_MS_MAX: u64 = 8_000;
/// The reactions the workload draws from.
pub const REACTIONS: [&str; 3] = ["👍", "❤️", "😂"];
/// The folder of a client's second device is its first device's with this suffix.
pub const LINKED_DIR_SUFFIX: &str = "-d1";

/// One planned send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSend {
    /// The message.
    pub message: MessageRef,
    /// Its recipient.
    pub recipient: u32,
    /// The pause before sending it, in ms.
    pub pause_ms: u64,
    /// Whether the client syncs (fetches its queue) right after.
    pub sync_after: bool,
    /// Whether it is only queued (composed offline), to go with the next send or sync: bursts
    /// of these make the outbox send several envelopes of a chat at once.
    pub compose: bool,
    /// The client's device that sends it: 0 the registered one, 1 the linked one (its first
    /// device sends it when the link did not happen). A linked client's second device sends
    /// the messages from a drawn point on.
    pub device: u32,
}

/// One client's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPlan {
    /// The client's number (its account is `c<number>`).
    pub client: u32,
    /// Its home region: it registers through that region's edge.
    pub region: u32,
    /// What it sends, in order.
    pub sends: Vec<PlannedSend>,
    /// When the app is killed and opened again on its store, in simulated ms (it happens
    /// between two actions, at the first one due).
    pub restarts: Vec<u64>,
    /// Chance, in percent, that it marks a peer's new messages read after a sync.
    pub read_percent: u32,
    /// Whether it links a second device before anyone sends.
    pub linked: bool,
    /// When (simulated ms) its first device removes the linked one while messages are on
    /// their way, if it does: the removed device stops, and senders meet the region's
    /// "mismatched devices" until they learn of it. A device to be removed makes no changes.
    pub removes_at_ms: Option<u64>,
}

/// Every client's plan, drawn from the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One entry per client, by number.
    pub clients: Vec<ClientPlan>,
}

/// How the workload is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadShape {
    /// Regions (clients are spread evenly over them).
    pub regions: u32,
    /// Clients homed in each region.
    pub clients_per_region: u32,
    /// Messages each client sends.
    pub messages_per_client: u32,
    /// Longest pause before a send, in ms.
    pub pause_ms_max: u64,
    /// Chance, in percent, that a client marks a peer's new messages read after a sync.
    pub read_percent: u32,
    /// Chance, in percent, that a client links a second device before anyone sends.
    pub linked_percent: u32,
    /// Chance, in percent, that a linked client's first device removes the second one while
    /// messages are on their way ([`ClientPlan::removes_at_ms`]).
    pub removed_percent: u32,
}

impl Plan {
    /// Draws a plan: each client sends to uniformly chosen other clients.
    pub fn draw(seed: u64, shape: WorkloadShape) -> Self {
        let mut rng = StdRng::seed_from_u64(seed::derive(seed, "plan", 0));
        let count = shape.regions * shape.clients_per_region;
        // Drawn apart from the sends, so a seed's messages stay the same with or without links.
        let mut links = StdRng::seed_from_u64(seed::derive(seed, "plan-links", 0));
        let mut devices = StdRng::seed_from_u64(seed::derive(seed, "plan-devices", 0));
        let mut removals = StdRng::seed_from_u64(seed::derive(seed, "plan-removals", 0));
        let clients = (0..count)
            .map(|client| {
                let mut sends: Vec<PlannedSend> = (1..=shape.messages_per_client)
                    .filter_map(|number| {
                        if count < 2 {
                            return None;
                        }
                        // Any other client: draw among count - 1 and skip over oneself.
                        let mut recipient = rng.random_range(0..count - 1);
                        if recipient >= client {
                            recipient += 1;
                        }
                        Some(PlannedSend {
                            message: MessageRef {
                                sender: client,
                                number,
                            },
                            recipient,
                            pause_ms: rng.random_range(0..=shape.pause_ms_max),
                            sync_after: rng.random_ratio(1, 4),
                            compose: rng.random_ratio(1, 2),
                            device: 0,
                        })
                    })
                    .collect();
                let linked = links.random_ratio(shape.linked_percent.min(100), 100);
                if linked {
                    // The second device sends a contiguous run (the later messages from a drawn
                    // point): both devices send concurrently, and each keeps its bursts of
                    // composed messages, which the sender FIFO check needs.
                    let split = devices.random_range(0..=sends.len());
                    for send in &mut sends[split..] {
                        send.device = 1;
                    }
                }
                let removes_at_ms = (linked
                    && removals.random_ratio(shape.removed_percent.min(100), 100))
                .then(|| removals.random_range(0..=REMOVAL_AT_MS_MAX));
                ClientPlan {
                    client,
                    region: client / shape.clients_per_region + 1,
                    sends,
                    restarts: Vec::new(),
                    read_percent: shape.read_percent,
                    linked,
                    removes_at_ms,
                }
            })
            .collect();
        Self { clients }
    }

    /// Makes client `client` link its second device between two of its sends: its first device
    /// makes the sends before a point drawn from `seed` strictly inside its plan (when it has
    /// two sends at least), the second device the rest, as [`Plan::draw`] splits them.
    pub fn link_mid_run(&mut self, seed: u64, client: u32) {
        let Some(plan) = self.clients.iter_mut().find(|plan| plan.client == client) else {
            return;
        };
        let mut devices =
            StdRng::seed_from_u64(seed::derive(seed, "plan-mid-run-link", client.into()));
        let split = match plan.sends.len() {
            0 | 1 => 0,
            sends => devices.random_range(1..sends),
        };
        for (index, send) in plan.sends.iter_mut().enumerate() {
            send.device = u32::from(index >= split);
        }
        plan.linked = true;
    }

    /// Every planned message with its recipient.
    pub fn recipients(&self) -> BTreeMap<MessageRef, u32> {
        self.clients
            .iter()
            .flat_map(|client| &client.sends)
            .map(|send| (send.message, send.recipient))
            .collect()
    }

    /// The clients `client` exchanges messages with, either way.
    pub fn peers_of(&self, client: u32) -> BTreeSet<u32> {
        let mut peers = BTreeSet::new();
        for plan in &self.clients {
            for send in &plan.sends {
                if plan.client == client {
                    peers.insert(send.recipient);
                } else if send.recipient == client {
                    peers.insert(plan.client);
                }
            }
        }
        peers
    }
}

/// What a client waits on: who registered, who is done sending, and which messages are queued,
/// given up and received. Shared by every client of a run (they run on one thread).
#[derive(Debug, Default)]
pub struct Progress {
    /// Clients registered, with their account ids.
    pub accounts: BTreeMap<u32, u64>,
    /// Clients ready to send: registered, and their second device linked if they planned one.
    pub ready: BTreeSet<u32>,
    /// Clients whose second device linked.
    pub linked: BTreeSet<u32>,
    /// Clients whose first device has finished (its documents are recorded).
    pub finished: BTreeSet<u32>,
    /// Clients whose second device has made its last change and sent it.
    pub second_done: BTreeSet<u32>,
    /// For each linked client, the message its second device named as it went offline, which
    /// both of its devices edit while apart (see `name_contested`), and whether the first and
    /// the second device have.
    pub contested: BTreeMap<u32, (MessageRef, bool, bool)>,
    /// Devices (client, device) that have made every send planned for them.
    pub done_sending: BTreeSet<(u32, u32)>,
    /// Messages that entered an outbox (so they will be delivered unless given up).
    pub queued: BTreeSet<MessageRef>,
    /// Messages given up by their sender.
    pub failed: BTreeSet<MessageRef>,
    /// Messages each device (client, device) has received.
    pub received: BTreeMap<(u32, u32), BTreeSet<MessageRef>>,
    /// For each client that linked its second device after messages were queued, those
    /// messages: the linked device need not receive them (its history bootstrap brings them).
    pub queued_before_link: BTreeMap<u32, BTreeSet<MessageRef>>,
    /// Changes (edits, deletions, reactions) each device (client, device) has made.
    pub changes_made: BTreeMap<(u32, u32), u64>,
    /// For each device that has made changes, how many it had made at the first sync after its
    /// latest change that ended with an empty outbox (so they were all in their recipients'
    /// queues), and that sync's number in [`Progress::syncs`].
    pub changes_flushed: BTreeMap<(u32, u32), (u64, u64)>,
    /// Syncs finished by every device, counted: orders syncs across devices.
    pub syncs: u64,
    /// Devices (client, device) of linked clients whose history was in sync with the account's
    /// other device after their latest sync ([`Device::history_in_sync`]).
    pub in_sync: BTreeSet<(u32, u32)>,
    /// Linked clients whose first device stopped without both devices saying they were in
    /// sync ([`SYNC_CONFIRM_WAIT_MS`]).
    pub unconfirmed: BTreeSet<u32>,
    /// Linked clients' second devices by number (their `DeviceId`), once opened.
    pub second_numbers: BTreeMap<u32, u32>,
    /// Clients whose first device removed the second one.
    pub removed: BTreeSet<u32>,
}

impl Progress {
    /// Whether every device of client `client` has made its planned sends.
    pub fn sent_all(&self, client: u32) -> bool {
        self.done_sending.contains(&(client, 0))
            && (!self.linked.contains(&client) || self.done_sending.contains(&(client, 1)))
    }

    /// Whether the device of `observer` (of client `me`) has fetched every change its peers'
    /// devices made: each such device has sent all of its changes (a sync of it ended with an
    /// empty outbox after its last change), and this device's latest sync started after that
    /// (its previous one ended later). A change does not say it arrived when it is superseded,
    /// so this waits on the queues instead.
    pub fn peers_changes_fetched(&self, me: u32, everyone: &Plan, observer: &Observer) -> bool {
        let peers = everyone.peers_of(me);
        self.changes_made
            .iter()
            .filter(|((client, _), _)| peers.contains(client))
            .all(|(changer, &made)| {
                self.changes_flushed
                    .get(changer)
                    .is_some_and(|&(flushed, at)| flushed == made && observer.syncs.0 > at)
            })
    }

    /// Whether both devices of linked client `client` said after their latest sync that the
    /// other holds their documents: their documents are equal (I7), unless one changed since.
    pub fn account_in_sync(&self, client: u32) -> bool {
        !self.linked.contains(&client)
            || self.removed.contains(&client)
            || (self.in_sync.contains(&(client, 0)) && self.in_sync.contains(&(client, 1)))
    }

    /// Records that device `device` of client `me` finished a sync with `pending` entries left
    /// in its outbox (see [`Progress::changes_flushed`]).
    fn synced(&mut self, me: u32, device: u32, pending: usize, observer: &mut Observer) {
        self.syncs += 1;
        observer.syncs = (observer.syncs.1, self.syncs);
        // The first such sync after the device's latest change: later ones send nothing new.
        if pending == 0
            && let Some(&made) = self.changes_made.get(&(me, device))
            && self
                .changes_flushed
                .get(&(me, device))
                .is_none_or(|&(flushed, _)| flushed != made)
        {
            self.changes_flushed
                .insert((me, device), (made, self.syncs));
        }
    }

    /// Records that client `client` linked its second device now: the messages queued so far
    /// are not the new device's to receive.
    pub fn link(&mut self, client: u32) {
        self.linked.insert(client);
        if !self.queued.is_empty() {
            self.queued_before_link.insert(client, self.queued.clone());
        }
    }

    /// Whether device `device` of client `me` can stop: everyone has sent and made their last
    /// change, its outbox is empty, every message queued for its account (and not given up) has
    /// arrived on it (on a linked device, every one queued since the link), and so has every
    /// change its peers' devices made ([`Progress::peers_changes_fetched`]).
    pub fn settled(&self, me: u32, device: u32, everyone: &Plan, observer: &Observer) -> bool {
        let everyone_sent = everyone
            .clients
            .iter()
            .all(|plan| self.sent_all(plan.client));
        // A second device changes nothing after `second_done`, a first one nothing after its
        // sends but its edit of the contested message.
        let changes_over = self.linked.iter().all(|client| {
            self.second_done.contains(client)
                && self
                    .contested
                    .get(client)
                    .is_none_or(|&(_, first, _)| first)
        });
        if !everyone_sent
            || !changes_over
            || observer.pending != Some(0)
            || !self.peers_changes_fetched(me, everyone, observer)
        {
            return false;
        }
        let received = self.received.get(&(me, device));
        let recipients = everyone.recipients();
        let before_link = match device {
            0 => None,
            _ => self.queued_before_link.get(&me),
        };
        self.queued
            .iter()
            .filter(|message| {
                recipients.get(message) == Some(&me)
                    && !self.failed.contains(message)
                    && !before_link.is_some_and(|before| before.contains(message))
            })
            .all(|message| received.is_some_and(|received| received.contains(message)))
    }
}

/// Where [`observe`] writes: a trace and the run's [`Progress`] (the simulation's [`Shared`],
/// or a real-process run's record).
pub trait Ledger {
    /// Records an event now.
    fn record(&mut self, what: What);
    /// The run's progress.
    fn progress(&mut self) -> &mut Progress;
}

/// What the clients of one simulated run share: the recorded trace and final views, and their
/// progress (every simulated client runs on the one simulation thread).
#[derive(Debug, Default)]
pub struct Shared {
    /// The trace so far.
    pub trace: Vec<TraceEvent>,
    /// The final chat views, as clients finish.
    pub views: Vec<ChatView>,
    /// Every device's final relay-sync documents, as devices finish.
    pub docs: Vec<DocView>,
    /// What the clients wait on.
    pub progress: Progress,
}

impl Shared {
    /// Records an event at the current simulated time.
    pub fn record(&mut self, what: What) {
        self.trace.push(TraceEvent {
            at_ms: sim_elapsed_ms(),
            what,
        });
    }
}

impl Ledger for Shared {
    fn record(&mut self, what: What) {
        Shared::record(self, what);
    }

    fn progress(&mut self) -> &mut Progress {
        &mut self.progress
    }
}

/// Everything one simulated client needs.
#[derive(Debug, Clone)]
pub struct ClientSetup {
    /// The run's seed.
    pub seed: u64,
    /// What this client does.
    pub plan: ClientPlan,
    /// Every client's plan (to know what to wait for).
    pub everyone: Rc<Plan>,
    /// The turmoil host names of this client's region's edges, the preferred one first.
    pub edge_hosts: Vec<String>,
    /// The edge's device port.
    pub edge_port: u16,
    /// This client's data directory (created by registration).
    pub data_dir: PathBuf,
    /// The deployment's CA certificate.
    pub ca_path: PathBuf,
    /// Simulated time after which the client stops waiting, in ms since the start.
    pub deadline_ms: u64,
    /// The shared record.
    pub shared: Rc<RefCell<Shared>>,
    /// Where the client's sockets log their datagrams.
    pub packets: PacketLog,
    /// The run's datagram loss and duplication.
    pub net_faults: Arc<NetFaults>,
}

/// One client's view of its own events, kept by [`observe`].
#[derive(Debug, Default)]
pub struct Observer {
    /// The message whose send is in progress: its `pending` tick names its id.
    pub sending: Option<MessageRef>,
    /// Client message ids (as the events print them) of this client's messages.
    ids: BTreeMap<String, MessageRef>,
    /// This client's messages seen acknowledged.
    acked: BTreeSet<MessageRef>,
    /// Outbox entries left after the last sync.
    pub pending: Option<usize>,
    /// Peers whose messages arrived since this client last marked them read.
    pub unread: BTreeSet<u32>,
    /// Messages this device can change: (peer, message id, the message, sent by this account).
    pub changeable: Vec<(u32, String, MessageRef, bool)>,
    /// The numbers ([`Progress::syncs`]) of this device's two latest finished syncs, the
    /// earlier first.
    pub syncs: (u64, u64),
}

impl Observer {
    /// Notes a message this device can edit (if its account sent it) or react to.
    fn note_changeable(&mut self, peer: &str, id: &str, message: MessageRef, own: bool) {
        if let Some(peer) = client_number(peer) {
            self.changeable.push((peer, id.to_owned(), message, own));
        }
    }
}

/// Runs one simulated client to the end of its plan (call inside a turmoil client).
pub async fn run_client(setup: ClientSetup) -> turmoil::Result {
    let me = setup.plan.client;
    let edges: Vec<SocketAddr> = setup
        .edge_hosts
        .iter()
        .map(|host| SocketAddr::new(turmoil::lookup(host.as_str()), setup.edge_port))
        .collect();
    let edge = edges
        .first()
        .copied()
        .ok_or("a simulated client needs an edge")?;
    let environment = Environment {
        dialer: Dialer::new(
            Arc::new(
                SimSockets::new(seed::derive(setup.seed, "client-sockets", me.into()))
                    .with_log(setup.packets.clone())
                    .with_faults(setup.net_faults.clone()),
            ),
            EdgeSource::Fixed(edges.clone()),
        ),
        clock: Arc::new(SimClock::default()),
        rng_seed: Some(seed::derive(setup.seed, "client", me.into())),
    };
    register(&setup, &environment, edge).await?;

    let local = Rc::new(RefCell::new(Observer::default()));
    // Each run of the app draws fresh randomness (ids, jitter), as from the system's generator:
    // a reopened client must not repeat its first run's message ids.
    let open = opener(
        &setup,
        0,
        &environment,
        &setup.data_dir,
        &local,
        "client-run",
    );
    let mut client = open()?;
    let follower = match setup.plan.linked {
        true => link_second_device(&setup, &environment, &edges, &mut client).await?,
        false => None,
    };
    setup.shared.borrow_mut().progress.ready.insert(me);
    wait_for_everyone(&setup).await;
    let mut restarts = setup.plan.restarts.iter().copied().peekable();
    let mut reads = StdRng::seed_from_u64(seed::derive(setup.seed, "reads", me.into()));
    let linked = follower.is_some();
    let mut changes = StdRng::seed_from_u64(seed::derive(setup.seed, "changes", me.into()));
    let mut changes_left = CHANGES_PER_DEVICE_MAX;

    // Without a second device, the first sends its share too.
    let own_sends = setup
        .plan
        .sends
        .iter()
        .filter(|send| send.device == 0 || !linked);
    for send in own_sends {
        tokio::time::sleep(Duration::from_millis(send.pause_ms)).await;
        if past(setup.deadline_ms) {
            break;
        }
        if restarts.next_if(|&at| sim_elapsed_ms() >= at).is_some() {
            client = restart(&setup, client, &open).await?;
        }
        send_planned(&setup, 0, &mut client, &local, send).await?;
        if send.sync_after {
            tolerate(client.sync().await)?;
            read_some(&setup, &mut client, &local, &mut reads).await?;
            if linked {
                change_some(
                    &setup.shared,
                    (me, 0),
                    &mut client,
                    &local,
                    &mut changes,
                    &mut changes_left,
                )
                .await?;
                edit_contested(&setup, 0, &mut client, &local, false).await?;
                remove_second_if_due(&setup, &mut client).await?;
            }
        }
    }
    setup
        .shared
        .borrow_mut()
        .progress
        .done_sending
        .insert((me, 0));

    // When everything but the documents' sync was settled (see SYNC_CONFIRM_WAIT_MS).
    let mut settled_since = None;
    let complete = loop {
        if restarts.next_if(|&at| sim_elapsed_ms() >= at).is_some() {
            client = restart(&setup, client, &open).await?;
        }
        // Before the sync, which sends it (the others wait for it: `Progress::settled`).
        if linked {
            edit_contested(&setup, 0, &mut client, &local, false).await?;
            remove_second_if_due(&setup, &mut client).await?;
        }
        // The second device's last changes are in before this sync fetches them.
        let second_done = !linked || setup.shared.borrow().progress.second_done.contains(&me);
        // Before the sync, which sends the documents' new read mark to the second device.
        read_some(&setup, &mut client, &local, &mut reads).await?;
        // A sync that fails says nothing: what it left pending is not known.
        local.borrow_mut().pending = None;
        tolerate(client.sync().await)?;
        if linked {
            note_in_sync(&setup, 0, &mut client).await?;
        }
        let (settled, in_sync) = match second_done {
            true => {
                let progress = &setup.shared.borrow().progress;
                (
                    progress.settled(me, 0, &setup.everyone, &local.borrow()),
                    progress.account_in_sync(me),
                )
            }
            false => (false, false),
        };
        // A planned removal happens before the first device stops.
        let removal_pending = setup.plan.removes_at_ms.is_some()
            && !setup.shared.borrow().progress.removed.contains(&me);
        if settled && in_sync && !removal_pending {
            break true;
        }
        if !settled || removal_pending {
            settled_since = None;
        } else if sim_elapsed_ms() - *settled_since.get_or_insert(sim_elapsed_ms())
            >= SYNC_CONFIRM_WAIT_MS
        {
            let mut shared = setup.shared.borrow_mut();
            shared.record(What::SyncUnconfirmed { client: me });
            shared.progress.unconfirmed.insert(me);
            break true;
        }
        if past(setup.deadline_ms) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(SYNC_INTERVAL_MS)).await;
    };

    client.close().await;
    record_views(&setup, &setup.data_dir, 0)?;
    record_docs(&setup, &setup.data_dir, 0)?;
    setup.shared.borrow_mut().progress.finished.insert(me);
    if let Some(follower) = follower {
        follower.await??;
    }
    setup.shared.borrow_mut().record(What::Finished {
        client: me,
        complete,
    });
    Ok(())
}

/// Device `device` of the client sends one planned message, trying again (as a person would)
/// while the send fails before the message enters the outbox.
async fn send_planned(
    setup: &ClientSetup,
    device: u32,
    app: &mut App,
    local: &Rc<RefCell<Observer>>,
    send: &PlannedSend,
) -> turmoil::Result {
    setup.shared.borrow_mut().record(What::Send {
        message: send.message,
        recipient: send.recipient,
        device,
    });
    for attempt in 1..=SEND_ATTEMPTS_MAX {
        local.borrow_mut().sending = Some(send.message);
        let peer = client_name(send.recipient);
        let sent = match send.compose {
            // A contact not known yet needs the network to resolve: send it then.
            true => match app.compose(&peer, &send.message.text()).await {
                Err(ClientError::UnknownPeer(_)) => app.send(&peer, &send.message.text()).await,
                composed => composed,
            },
            false => app.send(&peer, &send.message.text()).await,
        };
        local.borrow_mut().sending = None;
        tolerate_on(setup, device, sent.map(|_| ()))?;
        let queued = setup
            .shared
            .borrow()
            .progress
            .queued
            .contains(&send.message);
        if queued || attempt == SEND_ATTEMPTS_MAX || past(setup.deadline_ms) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(SEND_RETRY_MS)).await;
    }
    Ok(())
}

/// One run of a client app: its device, opened on demand (it connects to send and to sync,
/// as a one-shot command does), and where its events go. Dropping it kills the app.
pub struct App {
    device: Device,
    events: Events,
    sink: Box<dyn FnMut(Event)>,
}

impl App {
    /// Opens the registered device of `data_dir` in `environment`; events go to `sink`.
    pub fn open(
        environment: Environment,
        data_dir: &Path,
        sink: Box<dyn FnMut(Event)>,
    ) -> Result<App, ClientError> {
        let (device, events) = Device::open(
            data_dir,
            OpenOptions {
                environment,
                ..OpenOptions::default()
            },
        )?;
        Ok(App {
            device,
            events,
            sink,
        })
    }

    /// `relay send` (without `--wait`).
    pub async fn send(&mut self, peer: &str, text: &str) -> Result<ClientMessageId, ClientError> {
        flows::send(
            &self.device,
            &mut self.events,
            peer,
            text,
            None,
            std::future::pending(),
            &mut *self.sink,
        )
        .await
    }

    /// Queues a text for a known contact, to go with the next send or sync.
    pub async fn compose(
        &mut self,
        peer: &str,
        text: &str,
    ) -> Result<ClientMessageId, ClientError> {
        self.events
            .drive(self.device.compose(peer, text), &mut *self.sink)
            .await
    }

    /// `relay sync`.
    pub async fn sync(&mut self) -> Result<(), ClientError> {
        flows::sync(&self.device, &mut self.events, &mut *self.sink).await
    }

    /// Opens a pairing for a new device of this account and returns its code.
    pub async fn open_pairing(&mut self) -> Result<String, ClientError> {
        let pairing = self
            .events
            .drive(self.device.link(), &mut *self.sink)
            .await?;
        Ok(pairing.code)
    }

    /// `relay approve CODE`.
    pub async fn approve(&mut self, code: &str) -> Result<(), ClientError> {
        flows::approve(
            &self.device,
            Some(code),
            LinkHistory::default(),
            &mut *self.sink,
        )
        .await
    }

    /// `relay edit PEER MESSAGE TEXT`.
    pub async fn edit(&mut self, peer: &str, message: &str, text: &str) -> Result<(), ClientError> {
        self.events
            .drive(self.device.edit(peer, message, text), &mut *self.sink)
            .await
            .map(|_| ())
    }

    /// `relay delete PEER MESSAGE --everyone`.
    pub async fn delete(&mut self, peer: &str, message: &str) -> Result<(), ClientError> {
        self.events
            .drive(
                self.device.delete_for_everyone(peer, message),
                &mut *self.sink,
            )
            .await
            .map(|_| ())
    }

    /// `relay react PEER MESSAGE REACTION`.
    pub async fn react(
        &mut self,
        peer: &str,
        message: &str,
        reaction: &str,
    ) -> Result<(), ClientError> {
        self.events
            .drive(self.device.react(peer, message, reaction), &mut *self.sink)
            .await
            .map(|_| ())
    }

    /// Whether the account's other devices hold this one's documents, as far as it knows.
    pub async fn history_in_sync(&mut self) -> Result<bool, ClientError> {
        self.events
            .drive(self.device.history_in_sync(), &mut *self.sink)
            .await
    }

    /// This device's number in its account.
    pub fn device_number(&self) -> u32 {
        self.device.identity().device.0
    }

    /// `relay remove-device N`.
    pub async fn remove_device(&mut self, number: u32) -> Result<(), ClientError> {
        flows::remove_device(&self.device, number, &mut *self.sink).await
    }

    /// `relay read PEER`.
    pub async fn read(&mut self, peer: &str) -> Result<usize, ClientError> {
        flows::read(&self.device, &mut self.events, peer, &mut *self.sink).await
    }

    /// Closes the device (the edge is told), reporting what it still had to say.
    pub async fn close(mut self) {
        let _ = self.device.close().await;
        while let Some(event) = self.events.next().await {
            (self.sink)(event);
        }
    }
}

/// What opens device `device` (0 the first, 1 the linked one) of the client in `data_dir`,
/// again and again: its events go to `local` and the shared record, and each run draws fresh
/// randomness (message ids, jitter, the documents' session) from the seed stream `runs`, as an
/// app does from the system's generator, so a reopened app never repeats its earlier runs' ids.
fn opener<'a>(
    setup: &'a ClientSetup,
    device: u32,
    environment: &'a Environment,
    data_dir: &'a Path,
    local: &'a Rc<RefCell<Observer>>,
    runs: &'static str,
) -> impl Fn() -> Result<App, ClientError> + 'a {
    let me = setup.plan.client;
    let incarnations = std::cell::Cell::new(0u64);
    move || {
        let shared = setup.shared.clone();
        let local = local.clone();
        let sink = Box::new(move |event: Event| {
            observe(
                me,
                device,
                event,
                &mut local.borrow_mut(),
                &mut *shared.borrow_mut(),
            )
        });
        let incarnation = incarnations.get() + 1;
        incarnations.set(incarnation);
        let mut environment = environment.clone();
        environment.rng_seed = Some(seed::derive(
            setup.seed,
            runs,
            u64::from(me) << 32 | incarnation,
        ));
        App::open(environment, data_dir, sink)
    }
}

/// Kills the client app between two actions (no goodbye to the edge, nothing flushed beyond
/// what its store already holds) and opens it again after a moment.
async fn restart(
    setup: &ClientSetup,
    client: App,
    open: &impl Fn() -> Result<App, ClientError>,
) -> Result<App, Box<dyn std::error::Error>> {
    drop(client);
    setup.shared.borrow_mut().record(What::ClientRestarted {
        client: setup.plan.client,
    });
    tokio::time::sleep(Duration::from_millis(CLIENT_RESTART_MS)).await;
    Ok(open()?)
}

/// Links a second device to the client's account through the real flow (its first device opens
/// a pairing and approves the request the new device makes with the code, each retrying what a
/// fault interrupts), then starts it following the account ([`follow_account`]). `None` when
/// the link did not happen within the attempts (the run goes on with one device).
async fn link_second_device(
    setup: &ClientSetup,
    environment: &Environment,
    edges: &[SocketAddr],
    client: &mut App,
) -> Result<Option<tokio::task::JoinHandle<turmoil::Result>>, Box<dyn std::error::Error>> {
    let me = setup.plan.client;
    let data_dir = linked_dir(&setup.data_dir);
    let mut linked_environment = environment.clone();
    linked_environment.dialer = Dialer::new(
        Arc::new(
            SimSockets::new(seed::derive(setup.seed, "linked-sockets", me.into()))
                .with_log(setup.packets.clone())
                .with_faults(setup.net_faults.clone()),
        ),
        EdgeSource::Fixed(edges.to_vec()),
    );
    linked_environment.rng_seed = Some(seed::derive(setup.seed, "linked", me.into()));
    let overrides = Overrides {
        // Never asked: the dialer's edges are fixed.
        locator: edges.first().copied(),
        bind_ip: Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ca_path: Some(setup.ca_path.clone()),
        device_key: None,
    };
    let linked = link_device(
        client,
        &linked_environment,
        &data_dir,
        overrides,
        LINK_ATTEMPTS_MAX,
        Duration::from_millis(LINK_RETRY_MS),
    )
    .await?;
    if !linked {
        return Ok(None);
    }
    {
        let mut shared = setup.shared.borrow_mut();
        shared.record(What::Linked { client: me });
        shared.progress.link(me);
    }
    Ok(Some(tokio::task::spawn_local(follow_account(
        setup.clone(),
        linked_environment,
        data_dir,
    ))))
}

/// Links a new device in `data_dir` to the account of `first` through the real flow: `first`
/// opens a pairing, the new device (in `environment`, with `overrides`) asks with its code and
/// `first` approves the request, each trying up to `attempts` times `pause` apart while what
/// fails is a fault a retry can outlast (a retry picks up the same pairing and request).
/// `Ok(false)` when the attempts ran out; other errors end it. The simulation's linked clients
/// and `relayd chaos`'s (mid-run) both link through it.
pub async fn link_device(
    first: &mut App,
    environment: &Environment,
    data_dir: &Path,
    overrides: Overrides,
    attempts: u32,
    pause: Duration,
) -> Result<bool, ClientError> {
    let mut code = None;
    for _ in 1..=attempts {
        match first.open_pairing().await {
            Ok(opened) => {
                code = Some(opened);
                break;
            }
            Err(error) => retryable(error)?,
        }
        tokio::time::sleep(pause).await;
    }
    let Some(code) = code else {
        return Ok(false);
    };
    let ask = async {
        for _ in 1..=attempts {
            match link_accept_in(environment, data_dir, &code, overrides.clone(), &mut |_| {}).await
            {
                Ok(_) => return Ok(true),
                Err(error) => retryable(error)?,
            }
            tokio::time::sleep(pause).await;
        }
        Ok::<_, ClientError>(false)
    };
    let approve = async {
        for _ in 1..=attempts {
            tokio::time::sleep(pause).await;
            match first.approve(&code).await {
                Ok(()) => return Ok(true),
                // Not asked yet: the new device's request is still on its way.
                Err(ClientError::Invalid(_)) => {}
                Err(error) => retryable(error)?,
            }
        }
        Ok::<_, ClientError>(false)
    };
    let (asked, approved) = tokio::join!(ask, approve);
    Ok(asked? && approved?)
}

/// Passes an error a retry can outlast; returns the rest.
fn retryable(error: ClientError) -> Result<(), ClientError> {
    match error.is_retryable() || error.needs_reconnect() || error.is_unreachable() {
        true => Ok(()),
        false => Err(error),
    }
}

/// Maybe (by [`CHANGE_PERCENT`], while it has changes left) changes one message device `device`
/// of client `me` saw: edits it or deletes it for everyone if the account sent it and the draw
/// says so, else reacts to it. A message the documents do not hold yet is left alone. The
/// simulation's linked clients and `relayd chaos`'s both change through it.
pub async fn change_some<L: Ledger>(
    ledger: &RefCell<L>,
    (me, device): (u32, u32),
    app: &mut App,
    local: &RefCell<Observer>,
    rng: &mut StdRng,
    changes_left: &mut u32,
) -> Result<(), ClientError> {
    let candidates = local.borrow().changeable.len();
    if *changes_left == 0 || candidates == 0 || !rng.random_ratio(CHANGE_PERCENT, 100) {
        return Ok(());
    }
    let (peer, id, message, own) =
        local.borrow().changeable[rng.random_range(0..candidates)].clone();
    let draw = rng.random_range(0..100);
    let reaction = REACTIONS[rng.random_range(0..REACTIONS.len())];
    let change = match own {
        true if draw < OWN_CHANGE_EDIT_PERCENT => Change::Edit,
        true if draw < OWN_CHANGE_EDIT_PERCENT + OWN_CHANGE_DELETE_PERCENT => Change::Delete,
        _ => Change::React(reaction.to_owned()),
    };
    if make_change(ledger, (me, device), app, (peer, &id, message), change).await? {
        *changes_left -= 1;
    }
    Ok(())
}

/// Device `device` of client `me` makes `change` to `message` (its id `id` in the chat with
/// `peer`) and records it in `ledger`; whether it was made. A change refused (a message deleted
/// meanwhile) or cut off by a fault a retry can outlast is not recorded; other errors end it.
async fn make_change<L: Ledger>(
    ledger: &RefCell<L>,
    (me, device): (u32, u32),
    app: &mut App,
    (peer, id, message): (u32, &str, MessageRef),
    change: Change,
) -> Result<bool, ClientError> {
    let peer = client_name(peer);
    let changed = match &change {
        Change::Edit => {
            let text = message.edited_text(&device_name(me, device));
            app.edit(&peer, id, &text).await
        }
        Change::Delete => app.delete(&peer, id).await,
        Change::React(reaction) => app.react(&peer, id, reaction).await,
    };
    match changed {
        Ok(()) => {
            let mut ledger = ledger.borrow_mut();
            *ledger
                .progress()
                .changes_made
                .entry((me, device))
                .or_default() += 1;
            ledger.record(What::Changed {
                client: me,
                device,
                message,
                change,
            });
            Ok(true)
        }
        Err(ClientError::Invalid(_)) => Ok(false),
        Err(error) => retryable(error).map(|()| false),
    }
}

/// The second device of a linked client, going offline: names one of its account's messages as
/// contested (the first it can change), for the first device to edit while this one is away
/// ([`edit_contested`]) and this one to edit as it comes back, before it fetches the first
/// device's edit ([`edit_contested_back`]): two concurrent edits, of which the later one by
/// hybrid logical clock must win on both devices. Once per run.
fn name_contested(setup: &ClientSetup, local: &Rc<RefCell<Observer>>) {
    let me = setup.plan.client;
    if setup.plan.removes_at_ms.is_some()
        || setup.shared.borrow().progress.contested.contains_key(&me)
    {
        return;
    }
    let own = local
        .borrow()
        .changeable
        .iter()
        .find(|(_, _, _, own)| *own)
        .map(|(_, _, message, _)| *message);
    if let Some(message) = own {
        setup
            .shared
            .borrow_mut()
            .progress
            .contested
            .insert(me, (message, false, false));
    }
}

/// Device `device` (0 the first, 1 the linked one) of a linked client edits the contested
/// message ([`name_contested`]) if it has not yet and knows the message; the second device only
/// once the first has (or `now` says it cannot wait longer).
async fn edit_contested(
    setup: &ClientSetup,
    device: u32,
    app: &mut App,
    local: &Rc<RefCell<Observer>>,
    now: bool,
) -> turmoil::Result {
    let me = setup.plan.client;
    let Some((message, first, second)) = setup.shared.borrow().progress.contested.get(&me).copied()
    else {
        return Ok(());
    };
    let due = match device {
        0 => !first,
        _ => !second && (first || now),
    };
    if !due {
        return Ok(());
    }
    let known = local
        .borrow()
        .changeable
        .iter()
        .find(|(_, _, known, _)| *known == message)
        .cloned();
    let Some((peer, id, _, _)) = known else {
        return Ok(());
    };
    // Made or refused (deleted meanwhile), it is done.
    make_change(
        &setup.shared,
        (me, device),
        app,
        (peer, &id, message),
        Change::Edit,
    )
    .await?;
    if let Some(contested) = setup.shared.borrow_mut().progress.contested.get_mut(&me) {
        match device {
            0 => contested.1 = true,
            _ => contested.2 = true,
        }
    }
    Ok(())
}

/// The folder of client `data_dir`'s second device.
pub fn linked_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(LINKED_DIR_SUFFIX);
    PathBuf::from(name)
}

/// The first device of a linked client removes the second one once the plan's moment has come
/// ([`ClientPlan::removes_at_ms`]), trying again at its next turn when a fault interrupts.
async fn remove_second_if_due(setup: &ClientSetup, app: &mut App) -> turmoil::Result {
    let me = setup.plan.client;
    if setup
        .plan
        .removes_at_ms
        .is_none_or(|at| sim_elapsed_ms() < at)
    {
        return Ok(());
    }
    let number = {
        let progress = &setup.shared.borrow().progress;
        match progress.removed.contains(&me) {
            true => None,
            false => progress.second_numbers.get(&me).copied(),
        }
    };
    let Some(number) = number else {
        return Ok(());
    };
    match app.remove_device(number).await {
        Ok(()) => {
            let mut shared = setup.shared.borrow_mut();
            shared.record(What::Removed { client: me });
            shared.progress.removed.insert(me);
            Ok(())
        }
        Err(error) => tolerate(Err(error)),
    }
}

/// Whether client `me`'s second device was removed; if so, marks it done sending and changing
/// (it stops, so nobody waits for it).
fn stop_if_removed(setup: &ClientSetup) -> bool {
    let me = setup.plan.client;
    let mut shared = setup.shared.borrow_mut();
    if !shared.progress.removed.contains(&me) {
        return false;
    }
    shared.progress.done_sending.insert((me, 1));
    shared.progress.second_done.insert(me);
    true
}

/// Notes whether device `device` of a linked client holds the same documents as the other,
/// as far as it knows after its latest sync (its documents keep changing until both do).
async fn note_in_sync(setup: &ClientSetup, device: u32, app: &mut App) -> turmoil::Result {
    let me = setup.plan.client;
    let in_sync = match app.history_in_sync().await {
        Ok(in_sync) => in_sync,
        Err(error) => {
            tolerate_on(setup, device, Err(error))?;
            false
        }
    };
    let mut shared = setup.shared.borrow_mut();
    match in_sync {
        true => shared.progress.in_sync.insert((me, device)),
        false => shared.progress.in_sync.remove(&(me, device)),
    };
    Ok(())
}

/// The second device of a linked client goes offline until `until_ms` (simulated): the app
/// is closed and opened again on its store, and makes no send or sync meanwhile (it connects
/// only for those). It names the contested message ([`name_contested`]) and edits it once the
/// first device has (or as it comes back), before it fetches that edit: two concurrent edits.
async fn go_offline(
    setup: &ClientSetup,
    device: App,
    open: &impl Fn() -> Result<App, ClientError>,
    local: &Rc<RefCell<Observer>>,
    until_ms: u64,
) -> Result<App, Box<dyn std::error::Error>> {
    device.close().await;
    let mut device = open()?;
    name_contested(setup, local);
    while sim_elapsed_ms() < until_ms && !past(setup.deadline_ms) {
        edit_contested(setup, 1, &mut device, local, false).await?;
        tokio::time::sleep(Duration::from_millis(SYNC_INTERVAL_MS)).await;
    }
    edit_contested(setup, 1, &mut device, local, true).await?;
    Ok(device)
}

/// Runs a client's second device: it sends its share of the client's planned messages (each
/// after its pause, some followed by a sync) and, while the account's devices send, makes a few
/// changes (edits and deletions of the account's messages, reactions) and goes offline once for
/// a drawn period ([`go_offline`], where it edits a message the first device edits too); it
/// says it is done changing after a sync that found its outbox empty, then syncs until the
/// first device has finished and it is settled itself (everything meant for the account
/// arrived on it, its outbox is empty), or the time limit passes. It records what it sends and receives, and at the end its views and documents.
async fn follow_account(
    setup: ClientSetup,
    environment: Environment,
    data_dir: PathBuf,
) -> turmoil::Result {
    let me = setup.plan.client;
    let local = Rc::new(RefCell::new(Observer::default()));
    let open = opener(&setup, 1, &environment, &data_dir, &local, "linked-run");
    let mut device = open()?;
    setup
        .shared
        .borrow_mut()
        .progress
        .second_numbers
        .insert(me, device.device_number());
    let mut changes = StdRng::seed_from_u64(seed::derive(setup.seed, "linked-changes", me.into()));
    // A device to be removed makes no changes: what it had not sent when removed never
    // arrives anywhere, and the checker holds every change made to be in the documents.
    let mut changes_left = match setup.plan.removes_at_ms {
        Some(_) => 0,
        None => CHANGES_PER_DEVICE_MAX,
    };
    let pause_from = sim_elapsed_ms() + changes.random_range(0..=LINKED_PAUSE_MS_MAX);
    let pause_until = pause_from + changes.random_range(0..=LINKED_PAUSE_MS_MAX);
    // Offline once, from the first action due after `pause_from`, while it still changes.
    let mut offline_done = false;
    let due_offline = |offline_done: bool| !offline_done && sim_elapsed_ms() >= pause_from;
    wait_for_everyone(&setup).await;
    let mut stopped = false;
    for send in setup.plan.sends.iter().filter(|send| send.device == 1) {
        tokio::time::sleep(Duration::from_millis(send.pause_ms)).await;
        if past(setup.deadline_ms) {
            break;
        }
        if stop_if_removed(&setup) {
            stopped = true;
            break;
        }
        if due_offline(offline_done) {
            device = go_offline(&setup, device, &open, &local, pause_until).await?;
            offline_done = true;
        }
        send_planned(&setup, 1, &mut device, &local, send).await?;
        if send.sync_after {
            tolerate_on(&setup, 1, device.sync().await)?;
            change_some(
                &setup.shared,
                (me, 1),
                &mut device,
                &local,
                &mut changes,
                &mut changes_left,
            )
            .await?;
        }
    }
    setup
        .shared
        .borrow_mut()
        .progress
        .done_sending
        .insert((me, 1));
    let mut done_changing = false;
    loop {
        if stopped || stop_if_removed(&setup) {
            break;
        }
        let (sent_all, first_finished) = {
            let shared = setup.shared.borrow();
            (
                shared.progress.sent_all(me),
                shared.progress.finished.contains(&me),
            )
        };
        if !sent_all {
            change_some(
                &setup.shared,
                (me, 1),
                &mut device,
                &local,
                &mut changes,
                &mut changes_left,
            )
            .await?;
        }
        // Its edits must reach the first device, which stops after second_done.
        if !done_changing && due_offline(offline_done) {
            device = go_offline(&setup, device, &open, &local, pause_until).await?;
            offline_done = true;
        }
        local.borrow_mut().pending = None;
        let synced = device.sync().await;
        let clean = synced.is_ok() && local.borrow().pending == Some(0);
        tolerate_on(&setup, 1, synced)?;
        note_in_sync(&setup, 1, &mut device).await?;
        if !done_changing && ((sent_all && clean) || past(setup.deadline_ms)) {
            done_changing = true;
            setup.shared.borrow_mut().progress.second_done.insert(me);
        }
        let settled = clean && {
            let progress = &setup.shared.borrow().progress;
            progress.settled(me, 1, &setup.everyone, &local.borrow())
                && (progress.in_sync.contains(&(me, 1)) || progress.unconfirmed.contains(&me))
        };
        if (first_finished && settled) || past(setup.deadline_ms) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(SYNC_INTERVAL_MS)).await;
    }
    let removed = setup.shared.borrow().progress.removed.contains(&me);
    device.close().await;
    record_views(&setup, &data_dir, 1)?;
    // A removed device's documents stopped syncing: I7 does not hold it to them.
    match removed {
        true => Ok(()),
        false => record_docs(&setup, &data_dir, 1),
    }
}

/// Marks some peers' new messages read, as a person opening those chats would.
async fn read_some(
    setup: &ClientSetup,
    client: &mut App,
    local: &Rc<RefCell<Observer>>,
    rng: &mut StdRng,
) -> turmoil::Result {
    let unread: Vec<u32> = local.borrow().unread.iter().copied().collect();
    for peer in unread {
        if !rng.random_ratio(setup.plan.read_percent.min(100), 100) {
            continue;
        }
        local.borrow_mut().unread.remove(&peer);
        tolerate(client.read(&client_name(peer)).await.map(|_| ()))?;
    }
    Ok(())
}

/// Records the stored history of each chat of device `device` (0 the first, 1 the linked one)
/// of the client, read from its store in `data_dir` by account (names may not have resolved: a
/// device stores a message from an account it could not name).
fn record_views(setup: &ClientSetup, data_dir: &Path, device: u32) -> turmoil::Result {
    let accounts = setup.shared.borrow().progress.accounts.clone();
    let views = chat_views(
        data_dir,
        setup.plan.client,
        device,
        &setup.everyone,
        &accounts,
    )?;
    setup.shared.borrow_mut().views.extend(views);
    Ok(())
}

/// Records the relay-sync documents of device `device` (0 the first, 1 the linked one) of the
/// client, from its closed data directory.
fn record_docs(setup: &ClientSetup, data_dir: &Path, device: u32) -> turmoil::Result {
    let accounts = setup.shared.borrow().progress.accounts.clone();
    let docs = doc_views(
        data_dir,
        setup.plan.client,
        device,
        &setup.everyone,
        &accounts,
    )?;
    setup.shared.borrow_mut().docs.extend(docs);
    Ok(())
}

/// Device `device` of client `me`: its relay-sync document of its chat with each peer of the
/// plan that registered, read from the saved history in `data_dir` (the device is closed).
pub fn doc_views(
    data_dir: &Path,
    me: u32,
    device: u32,
    everyone: &Plan,
    accounts: &BTreeMap<u32, u64>,
) -> Result<Vec<DocView>, ClientError> {
    let store = Store::open(&data_dir.join(DATABASE_FILE))?;
    let identity = store
        .identity()?
        .ok_or_else(|| ClientError::Invalid(format!("{} holds no device", data_dir.display())))?;
    let address = DeviceAddress {
        account: identity.account,
        device: identity.device,
    };
    // Read only: nothing is saved, so the nonce of this open never reaches a document.
    let history = History::open(data_dir, address, u64::MAX)?;
    let mut docs = Vec::new();
    for peer in everyone.peers_of(me) {
        let Some(&account) = accounts.get(&peer) else {
            continue;
        };
        let view = history.view(ChatId::direct(identity.account, AccountId(account)));
        let entries = view
            .messages
            .into_iter()
            .map(|message| DocEntry {
                chat_seq: message.chat_seq,
                text: message.text,
                edited: message.edited,
                deleted: message.deleted.is_some(),
                reactions: message
                    .reactions
                    .iter()
                    .map(|(by, reaction)| (by.to_string(), reaction.clone()))
                    .collect(),
            })
            .collect();
        docs.push(DocView {
            client: me,
            device,
            peer,
            entries,
            read_marks: view
                .read_marks
                .iter()
                .map(|(device, mark)| (device.to_string(), *mark))
                .collect(),
        });
    }
    Ok(docs)
}

/// Device `device` of client `me`: its stored history of its chat with each peer of the plan
/// that registered, read from the store in `data_dir` by account (names may not have resolved:
/// a device stores a message from an account it could not name).
pub fn chat_views(
    data_dir: &Path,
    me: u32,
    device: u32,
    everyone: &Plan,
    accounts: &BTreeMap<u32, u64>,
) -> Result<Vec<ChatView>, ClientError> {
    let store = Store::open(&data_dir.join(DATABASE_FILE))?;
    let mut views = Vec::new();
    for peer in everyone.peers_of(me) {
        let Some(&account) = accounts.get(&peer) else {
            continue;
        };
        let entries = store
            .history(AccountId(account))?
            .into_iter()
            .map(|stored| ViewEntry {
                outgoing: stored.outgoing,
                message: stored.text.as_deref().and_then(MessageRef::parse),
                chat_seq: stored.chat_seq,
            })
            .collect();
        views.push(ChatView {
            client: me,
            device,
            peer,
            entries,
        });
    }
    Ok(views)
}

/// Registers the client's account through its edge, retrying while the deployment starts.
async fn register(
    setup: &ClientSetup,
    environment: &Environment,
    edge: SocketAddr,
) -> turmoil::Result {
    let me = setup.plan.client;
    let overrides = Overrides {
        // Never asked: the dialer's edges are fixed.
        locator: Some(edge),
        bind_ip: Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ca_path: Some(setup.ca_path.clone()),
        device_key: None,
    };
    let (account, region) = register_retrying(
        environment,
        &setup.data_dir,
        me,
        overrides,
        REGISTRATION_ATTEMPTS_MAX,
        Duration::from_millis(REGISTRATION_RETRY_MS),
    )
    .await
    .map_err(|error| format!("{} cannot register: {error}", client_name(me)))?;
    let mut shared = setup.shared.borrow_mut();
    shared.record(What::Registered {
        client: me,
        account,
        region,
    });
    shared.progress.accounts.insert(me, account);
    Ok(())
}

/// Registers client `me` (named `c<me>`) in `data_dir`, retrying up to `attempts` times while
/// the error is one a retry can fix; returns its account id and home region.
pub async fn register_retrying(
    environment: &Environment,
    data_dir: &Path,
    me: u32,
    overrides: Overrides,
    attempts: u32,
    pause: Duration,
) -> Result<(u64, u32), ClientError> {
    let mut attempt = 1;
    loop {
        let mut registration = None;
        let mut sink = |event: Event| {
            if let Event::Registered {
                account, region, ..
            } = event
            {
                registration = Some((account, region));
            }
        };
        let registered = register_in(
            environment,
            data_dir,
            &client_name(me),
            overrides.clone(),
            "",
            &mut sink,
        )
        .await;
        match registered {
            Ok(_) => return Ok(registration.unwrap_or_default()),
            Err(error)
                if attempt < attempts && (error.is_retryable() || error.needs_reconnect()) =>
            {
                attempt += 1;
                tokio::time::sleep(pause).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Waits until every client has registered (and linked its second device, if it planned one),
/// so that every name resolves and every message goes to every device.
async fn wait_for_everyone(setup: &ClientSetup) {
    let everyone = setup.everyone.clients.len();
    while setup.shared.borrow().progress.ready.len() < everyone && !past(setup.deadline_ms) {
        tokio::time::sleep(Duration::from_millis(REGISTRATION_POLL_MS)).await;
    }
}

/// Turns one event of device `device` of client `me` into trace events, progress and the
/// device's own state (the simulation's clients and `relayd chaos`'s real ones alike).
pub fn observe(me: u32, device: u32, event: Event, local: &mut Observer, shared: &mut impl Ledger) {
    match event {
        Event::Tick { id, tick, peer } => match tick {
            Tick::Pending => {
                if let Some(message) = local.sending.take() {
                    local.ids.insert(id, message);
                    shared.progress().queued.insert(message);
                    shared.record(What::Queued { message });
                }
            }
            Tick::Sent | Tick::Delivered | Tick::Read => {
                if let Some(&message) = local.ids.get(&id) {
                    if local.acked.insert(message) {
                        local.note_changeable(&peer, &id, message, true);
                        shared.record(What::Acked { message });
                    }
                    shared.record(What::Tick {
                        message,
                        tick: tick as u8,
                    });
                }
            }
        },
        Event::MarkedRead { peer, count } => {
            if let Some(peer) = client_number(&peer) {
                shared.record(What::MarkedRead {
                    reader: me,
                    peer,
                    envelopes: count.div_ceil(READ_RECEIPT_IDS_MAX) as u32,
                });
            }
        }
        Event::Message {
            id,
            from,
            direction: Direction::In,
            sender_device,
            chat_seq,
            text,
            ..
        } => match MessageRef::parse(&text) {
            Some(message) => {
                local.note_changeable(&from, &id, message, false);
                shared
                    .progress()
                    .received
                    .entry((me, device))
                    .or_default()
                    .insert(message);
                local.unread.insert(message.sender);
                shared.record(What::Received {
                    receiver: me,
                    device,
                    message,
                    from_account: account_of(&sender_device),
                    chat_seq,
                });
            }
            None => shared.record(What::Garbled {
                receiver: me,
                device,
                from,
                text,
            }),
        },
        // The account's other device sent it: this one can edit it too.
        Event::Message {
            id,
            peer,
            direction: Direction::Out,
            text,
            ..
        } => {
            if let Some(message) = MessageRef::parse(&text) {
                local.note_changeable(&peer, &id, message, true);
            }
        }
        Event::Undecryptable { from, .. } => {
            shared.record(What::Undecryptable {
                receiver: me,
                device,
                from,
            });
        }
        Event::Failed { id, .. } => {
            if let Some(&message) = local.ids.get(&id) {
                shared.progress().failed.insert(message);
                shared.record(What::Failed { message });
            }
        }
        Event::Synced { pending, .. } => {
            local.pending = Some(pending);
            shared.progress().synced(me, device, pending, local);
        }
        _ => {}
    }
}

/// Passes, for device `device` of the client, what [`tolerate`] passes, and any error once the
/// plan's removal of a second device is under way (a removed device is refused as unknown
/// before its first device hears the removal committed).
fn tolerate_on(
    setup: &ClientSetup,
    device: u32,
    result: Result<(), ClientError>,
) -> turmoil::Result {
    let removal_under_way = device == 1
        && setup
            .plan
            .removes_at_ms
            .is_some_and(|at| sim_elapsed_ms() >= at);
    match (result, removal_under_way) {
        (Err(_), true) => Ok(()),
        (result, _) => tolerate(result),
    }
}

/// Passes errors the client recovers from by itself (a later sync retries); fails on the rest.
fn tolerate(result: Result<(), ClientError>) -> turmoil::Result {
    match result {
        Ok(()) => Ok(()),
        Err(error) if error.is_retryable() || error.needs_reconnect() || error.is_unreachable() => {
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// The account of a device address printed as `account/device` (0 when unreadable).
pub fn account_of(device: &str) -> u64 {
    device
        .split_once('/')
        .and_then(|(account, _)| account.parse().ok())
        .unwrap_or(0)
}

fn past(deadline_ms: u64) -> bool {
    sim_elapsed_ms() >= deadline_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: WorkloadShape = WorkloadShape {
        regions: 2,
        clients_per_region: 2,
        messages_per_client: 10,
        pause_ms_max: 300,
        read_percent: 50,
        linked_percent: 50,
        removed_percent: 30,
    };

    #[test]
    fn plans_repeat_per_seed_and_never_send_to_oneself() {
        let plan = Plan::draw(9, SHAPE);
        assert_eq!(plan, Plan::draw(9, SHAPE));
        assert_ne!(plan, Plan::draw(10, SHAPE));
        assert_eq!(plan.clients.len(), 4);
        assert_eq!(plan.clients[3].region, 2);
        for client in &plan.clients {
            assert_eq!(client.sends.len(), 10);
            assert!(
                client
                    .sends
                    .iter()
                    .all(|send| send.recipient != client.client)
            );
        }
        assert_eq!(plan.recipients().len(), 40);
    }
}
