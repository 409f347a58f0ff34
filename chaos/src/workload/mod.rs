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
//!
//! Where things are: the client's run ([`run_client`], its first device's loop), what ties it
//! together and the limits are here; `plan.rs` draws what each client does, `progress.rs` is
//! what clients wait on and `ledger.rs` where they record it, `observe.rs` turns a device's
//! events into both, `app.rs` is one run of a client app, `register.rs` registers a client,
//! `linked.rs` links, runs and removes a client's second device, `changes.rs` makes edits,
//! deletions and reactions, and `views.rs` records each device's final history and documents.
//!
//! [`ChatView`]: crate::history::ChatView
//! [`DocView`]: crate::history::DocView

mod app;
mod changes;
mod groups;
mod ledger;
mod linked;
mod observe;
mod plan;
mod progress;
mod register;
mod views;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_client::connection::{Dialer, EdgeSource};
use relay_client::{ClientError, Environment};

use crate::faults::NetFaults;
use crate::history::{What, client_name};
use crate::net::{PacketLog, SimSockets};
use crate::seed;
use crate::time::{SimClock, sim_elapsed_ms};

pub use app::App;
pub use changes::change_some;
pub use ledger::{Ledger, Shared};
pub use linked::{link_device, linked_dir};
pub use observe::{Observer, account_of, observe};
pub use plan::{ClientPlan, GroupPlan, Plan, PlannedGroupSend, PlannedSend, WorkloadShape};
pub use progress::{GroupProgress, Progress};
pub use register::register_retrying;
pub use views::{chat_views, doc_views};

use app::{opener, restart};
use changes::edit_contested;
use groups::GroupTurns;
use linked::{link_second_device, note_in_sync, remove_second_if_due};
use register::register;
use views::{record_docs, record_views};

/// Pause between two syncs while a client waits for the rest of its messages, in ms.
pub const SYNC_INTERVAL_MS: u64 = 250;
/// Pause between two checks that every client has registered, in ms.
pub const REGISTRATION_POLL_MS: u64 = 20;
/// Registration attempts before a client gives up: with [`REGISTRATION_RETRY_MS`] between
/// them, 15 s, longer than its home region may refuse writes when its standby is down (a fault
/// of up to 5 s) and a failover follows (a hang of up to 5 s, then the standby's lease). With 8
/// (4 s), failover seed 2144 ended in "c2 cannot register: StorageUnavailable".
pub const REGISTRATION_ATTEMPTS_MAX: u32 = 30;
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
///
/// [`Device::history_in_sync`]: relay_client::Device::history_in_sync
pub const SYNC_CONFIRM_WAIT_MS: u64 = 10_000;
/// Longest a second device pauses its syncing (offline while the first device acts), in ms.
pub const LINKED_PAUSE_MS_MAX: u64 = 3_000;
const _: () = assert!(OWN_CHANGE_EDIT_PERCENT + OWN_CHANGE_DELETE_PERCENT <= 100);

/// Latest moment of a drawn device removal (`ClientPlan::removes_at_ms`), in simulated ms since the start (messages are still
/// being sent then).
pub const REMOVAL_AT_MS_MAX: u64 = 8_000;
/// Groups a run has at most (runs with groups have one, or this many in a quarter of them).
pub const GROUPS_PER_RUN_MAX: u32 = 2;
/// Texts each member sends to a group at most.
pub const GROUP_SENDS_PER_MEMBER_MAX: u32 = 3;
/// Shortest span, in ms after a client starts sending, over which its group texts and the
/// creator's membership changes are drawn.
pub const GROUP_WINDOW_MS_MIN: u64 = 500;
/// Longest such span, in ms (half of the 1:1 sends' span, bounded by this).
pub const GROUP_WINDOW_MS_MAX: u64 = 6_000;
const _: () = assert!(GROUP_WINDOW_MS_MIN <= GROUP_WINDOW_MS_MAX);
const _: () = assert!(GROUPS_PER_RUN_MAX >= 1 && GROUP_SENDS_PER_MEMBER_MAX >= 1);

/// The reactions the workload draws from.
pub const REACTIONS: [&str; 3] = ["👍", "❤️", "😂"];
/// The folder of a client's second device is its first device's with this suffix.
pub const LINKED_DIR_SUFFIX: &str = "-d1";

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
    let mut group_turns = GroupTurns::new(&setup);

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
            client = restart(&setup, client, &open, &local).await?;
        }
        group_turns.take(&setup, &mut client, &local).await?;
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
            client = restart(&setup, client, &open, &local).await?;
        }
        group_turns.take(&setup, &mut client, &local).await?;
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

/// Passes an error a retry can outlast; returns the rest.
fn retryable(error: ClientError) -> Result<(), ClientError> {
    match error.is_retryable() || error.needs_reconnect() || error.is_unreachable() {
        true => Ok(()),
        false => Err(error),
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

/// Waits until every client has registered (and linked its second device, if it planned one),
/// so that every name resolves and every message goes to every device.
async fn wait_for_everyone(setup: &ClientSetup) {
    let everyone = setup.everyone.clients.len();
    while setup.shared.borrow().progress.ready.len() < everyone && !past(setup.deadline_ms) {
        tokio::time::sleep(Duration::from_millis(REGISTRATION_POLL_MS)).await;
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

fn past(deadline_ms: u64) -> bool {
    sim_elapsed_ms() >= deadline_ms
}
