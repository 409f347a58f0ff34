//! A client's second device: linking it through the real flow ([`link_device`], shared with
//! `relayd chaos`), its folder, its removal by the first device, whether the two devices hold the
//! same documents, and its run ([`follow_account`]) with its time offline.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_client::connection::{Dialer, EdgeSource};
use relay_client::{ClientError, Environment, Overrides, link_accept_in};

use super::app::opener;
use super::changes::{edit_contested, name_contested};
use super::views::{record_docs, record_views};
use super::{
    App, CHANGES_PER_DEVICE_MAX, ClientSetup, LINK_ATTEMPTS_MAX, LINK_RETRY_MS, LINKED_DIR_SUFFIX,
    LINKED_PAUSE_MS_MAX, Observer, SYNC_INTERVAL_MS, change_some, past, retryable, send_planned,
    tolerate, tolerate_on, wait_for_everyone,
};
use crate::history::What;
use crate::net::SimSockets;
use crate::seed;
use crate::time::sim_elapsed_ms;

/// Links a second device to the client's account through the real flow (its first device opens
/// a pairing and approves the request the new device makes with the code, each retrying what a
/// fault interrupts), then starts it following the account ([`follow_account`]). `None` when
/// the link did not happen within the attempts (the run goes on with one device).
pub(super) async fn link_second_device(
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

/// The folder of client `data_dir`'s second device.
pub fn linked_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(LINKED_DIR_SUFFIX);
    PathBuf::from(name)
}

/// The first device of a linked client removes the second one once the plan's moment has come
/// ([`ClientPlan::removes_at_ms`]), trying again at its next turn when a fault interrupts.
///
/// [`ClientPlan::removes_at_ms`]: super::ClientPlan::removes_at_ms
pub(super) async fn remove_second_if_due(setup: &ClientSetup, app: &mut App) -> turmoil::Result {
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
pub(super) async fn note_in_sync(
    setup: &ClientSetup,
    device: u32,
    app: &mut App,
) -> turmoil::Result {
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
