//! The workload of a real-process run: the real-time twin of [`crate::workload`]. Each client is
//! the real client SDK ([`relay_client::Device`], as [`crate::workload::App`]) in this process, on kernel UDP sockets and
//! the system clock, finding its edge through the devnet's locator from its own address in
//! 127.0.k.0/24. It records what it sees as the simulation's [`What`] events, so the same
//! checker ([`crate::history::check`]) reads the run.
//!
//! A client registers (before any fault), sends its planned messages (each to one other client,
//! after a planned pause, sometimes followed by a sync), then syncs until everyone has sent, its
//! outbox is empty and everything queued for it has arrived, or the healing deadline passes.
//! Clients are not `Send` (their event sink is a plain closure), so they run on one thread, as
//! local tasks.
//!
//! A client the plan links (`ClientPlan::linked`) links its **second device mid-run**, under the
//! faults: at a moment of the fault phase drawn from the seed (or once its first device has made
//! its own share of the sends, if sooner), it links a new device through the workload's real flow ([`link_device`]: pairing, request with the code, approval),
//! retrying what a fault interrupts until it succeeds (after the heal at the latest). The new
//! device ([`run_second`]) sends the rest of the client's messages, receives what is meant for
//! the account from then on, and syncs until it is settled and the first device has finished.
//! Once linked, both devices of the user change messages as the simulation's do, through the
//! same code ([`change_some`]): after a planned sync, and while the account's other device still
//! sends, each device edits some of its account's messages, deletes some for everyone and
//! reacts to some of either account's, at most [`CHANGES_PER_DEVICE_MAX`] each. A change
//! refused or cut off by a fault is not recorded (a later draw may try again); a recorded one
//! goes out with the device's next sync, which comes before it says it is done or stops, and
//! I7 then holds it to be in both devices' documents.
//! At the end both devices' stored histories ([`views`]) and relay-sync documents ([`docs`], for
//! I7) are read.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use relay_client::{ClientError, Environment, Event, Overrides};
use tokio::time::Instant;

use super::RealChaosError;
use crate::history::{ChatView, DocView, TraceEvent, What, client_name, device_name};
use crate::seed;
use crate::workload::{
    App, CHANGES_PER_DEVICE_MAX, ClientPlan, LINK_RETRY_MS, Ledger, Observer, Plan, PlannedSend,
    Progress, REGISTRATION_RETRY_MS, SEND_ATTEMPTS_MAX, SEND_RETRY_MS, SYNC_INTERVAL_MS,
    change_some, chat_views, doc_views, link_device, linked_dir, observe, register_retrying,
};

/// Registration attempts before a client gives up.
pub const REGISTRATION_ATTEMPTS_MAX: u32 = 20;
/// Client errors kept word for word in the report (all are counted).
pub const CLIENT_ERRORS_KEPT_MAX: usize = 20;
/// The first host number of region k's clients: client i of the region binds 127.0.k.(10 + i).
pub const CLIENT_HOST_FIRST: u32 = 10;

/// Where the clients are and what they connect to.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The devnet's locator.
    pub locator: SocketAddr,
    /// The CA certificate to trust.
    pub ca: PathBuf,
    /// The folder holding each client's data directory (`c<n>`).
    pub clients_dir: PathBuf,
    /// The run's seed (client randomness is derived from it).
    pub seed: u64,
    /// Clients homed in each region.
    pub clients_per_region: u32,
    /// Attempts at each step of linking a second device, [`LINK_RETRY_MS`] apart: enough to
    /// outlast the faults, the recovery and the healing.
    pub link_attempts: u32,
    /// Latest moment, in ms after the load begins, at which a linked client starts linking its
    /// second device (each draws its own from the seed).
    pub link_delay_ms_max: u64,
}

impl Deployment {
    /// When, in ms after the load begins, client `client` starts linking its second device if
    /// the plan links it: drawn from the seed, at most [`Deployment::link_delay_ms_max`].
    pub fn link_delay_ms(&self, client: u32) -> u64 {
        seed::derive(self.seed, "link-at", client.into()) % (self.link_delay_ms_max + 1)
    }

    /// Client `client`'s data directory.
    pub fn data_dir(&self, client: u32) -> PathBuf {
        self.clients_dir.join(client_name(client))
    }

    /// The address client `client` binds: its region's 127.0.k.0/24 is how the locator places it.
    pub fn bind_ip(&self, plan: &ClientPlan) -> IpAddr {
        let index = plan.client % self.clients_per_region.max(1);
        let host = u8::try_from(CLIENT_HOST_FIRST + index).unwrap_or(u8::MAX);
        let region = u8::try_from(plan.region).unwrap_or(u8::MAX);
        IpAddr::V4(Ipv4Addr::new(127, 0, region, host))
    }
}

/// What the clients of a run recorded (shared by the local tasks of one thread).
#[derive(Debug)]
pub struct Record {
    started: Instant,
    /// The trace so far.
    pub trace: Vec<TraceEvent>,
    /// What the clients wait on (as in the simulation).
    pub progress: Progress,
    /// Errors a retry could not be expected to fix, word for word (the first few).
    pub errors: Vec<String>,
    /// How many such errors there were.
    pub errors_total: usize,
    /// Clients that finished, and whether they saw everything they waited for.
    pub finished: BTreeMap<u32, bool>,
    /// Second devices that finished, by client, and whether they saw everything they waited
    /// for.
    pub second_finished: BTreeMap<u32, bool>,
    /// Clients whose second device never linked, with why.
    pub unlinked: BTreeMap<u32, String>,
}

impl Record {
    /// An empty record whose times count from `started`.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            trace: Vec::new(),
            progress: Progress::default(),
            errors: Vec::new(),
            errors_total: 0,
            finished: BTreeMap::new(),
            second_finished: BTreeMap::new(),
            unlinked: BTreeMap::new(),
        }
    }

    /// Records an event now.
    pub fn record(&mut self, what: What) {
        let at_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.trace.push(TraceEvent { at_ms, what });
    }

    fn error(&mut self, client: u32, what: &str, error: &ClientError) {
        self.errors_total += 1;
        if self.errors.len() < CLIENT_ERRORS_KEPT_MAX {
            self.errors
                .push(format!("{} {what}: {error}", client_name(client)));
        }
    }
}

impl Ledger for Record {
    fn record(&mut self, what: What) {
        Record::record(self, what);
    }

    fn progress(&mut self) -> &mut Progress {
        &mut self.progress
    }
}

/// When clients stop waiting: set once the faults are over and healing has begun.
#[derive(Debug, Default)]
pub struct Deadline(Cell<Option<Instant>>);

impl Deadline {
    /// Sets the deadline.
    pub fn set(&self, at: Instant) {
        self.0.set(Some(at));
    }

    fn passed(&self) -> bool {
        self.0.get().is_some_and(|at| Instant::now() >= at)
    }
}

/// Registers client `plan.client` through the locator, retrying while the deployment warms up.
pub async fn register(
    deployment: &Deployment,
    plan: &ClientPlan,
    record: &RefCell<Record>,
) -> Result<(), RealChaosError> {
    let me = plan.client;
    let environment = environment(deployment, me);
    let overrides = Overrides {
        locator: Some(deployment.locator),
        bind_ip: Some(deployment.bind_ip(plan)),
        ca_path: Some(deployment.ca.clone()),
        device_key: None,
    };
    let (account, region) = register_retrying(
        &environment,
        &deployment.data_dir(me),
        me,
        overrides,
        REGISTRATION_ATTEMPTS_MAX,
        Duration::from_millis(REGISTRATION_RETRY_MS),
    )
    .await
    .map_err(|error| {
        RealChaosError::Run(format!("{} cannot register: {error}", client_name(me)))
    })?;
    let mut record = record.borrow_mut();
    record.record(What::Registered {
        client: me,
        account,
        region,
    });
    record.progress.accounts.insert(me, account);
    Ok(())
}

/// Runs client `plan.client`'s sends (its first device's share, then, if the plan links it, it
/// links its second device, which makes the rest), then syncs until it is settled or `deadline`
/// passes.
pub async fn run(
    deployment: Rc<Deployment>,
    plan: ClientPlan,
    everyone: Rc<Plan>,
    record: Rc<RefCell<Record>>,
    deadline: Rc<Deadline>,
) {
    let me = plan.client;
    let local = Rc::new(RefCell::new(Observer::default()));
    let sink = sink(me, 0, &record, &local);
    let mut client = match App::open(environment(&deployment, me), &deployment.data_dir(me), sink) {
        Ok(client) => client,
        Err(error) => {
            let mut record = record.borrow_mut();
            record.error(me, "cannot open its store", &error);
            record.progress.done_sending.insert((me, 0));
            record.finished.insert(me, false);
            return;
        }
    };

    // A linked client links at its first send due after its drawn moment of the fault phase,
    // or once it made its own share, if sooner: under the faults, with the load going on.
    let link_at = Instant::now() + Duration::from_millis(deployment.link_delay_ms(me));
    let mut link_due = plan.linked;
    let mut second = None;
    let mut changes = Changes::new(deployment.seed, "changes", me);
    for send in plan.sends.iter().filter(|send| send.device == 0) {
        tokio::time::sleep(Duration::from_millis(send.pause_ms)).await;
        if deadline.passed() {
            break;
        }
        if link_due && Instant::now() >= link_at {
            link_due = false;
            second = link_second(
                &deployment,
                &plan,
                &everyone,
                &mut client,
                &record,
                &deadline,
            )
            .await;
        }
        send_planned(me, 0, &mut client, send, &local, &record, &deadline).await;
        if send.sync_after && second.is_some() {
            changes.maybe(me, 0, &mut client, &local, &record).await;
        }
    }
    // Linked before this device is done sending: nobody settles while the account's second
    // device may still send.
    if link_due {
        second = link_second(
            &deployment,
            &plan,
            &everyone,
            &mut client,
            &record,
            &deadline,
        )
        .await;
    }
    record.borrow_mut().progress.done_sending.insert((me, 0));

    let complete = loop {
        // The second device's last sends and changes are in before this sync fetches them.
        let (second_done, second_sending) = {
            let progress = &record.borrow().progress;
            (
                second.is_none() || progress.second_done.contains(&me),
                second.is_some() && !progress.sent_all(me),
            )
        };
        // Nobody settles while the second device sends; this sync sends the change.
        if second_sending {
            changes.maybe(me, 0, &mut client, &local, &record).await;
        }
        tolerate(me, "sync", client.sync().await, &record);
        let settled = record
            .borrow()
            .progress
            .settled(me, 0, &everyone, &local.borrow());
        if second_done && settled {
            break true;
        }
        if deadline.passed() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(SYNC_INTERVAL_MS)).await;
    };
    client.close().await;
    {
        let mut record = record.borrow_mut();
        record.record(What::Finished {
            client: me,
            complete,
        });
        record.finished.insert(me, complete);
        record.progress.finished.insert(me);
    }
    if let Some(second) = second {
        // A panic of the second device's task is the run's to report: it did not finish.
        let _ = second.await;
    }
}

/// Device `device` of client `me` sends one planned message, trying again (as a person would)
/// while the send fails before the message enters the outbox; syncs after it if planned.
async fn send_planned(
    me: u32,
    device: u32,
    client: &mut App,
    send: &PlannedSend,
    local: &RefCell<Observer>,
    record: &RefCell<Record>,
    deadline: &Deadline,
) {
    record.borrow_mut().record(What::Send {
        message: send.message,
        recipient: send.recipient,
        device,
    });
    for attempt in 1..=SEND_ATTEMPTS_MAX {
        local.borrow_mut().sending = Some(send.message);
        let sent = client
            .send(&client_name(send.recipient), &send.message.text())
            .await;
        local.borrow_mut().sending = None;
        tolerate(me, "send", sent.map(|_| ()), record);
        let queued = record.borrow().progress.queued.contains(&send.message);
        if queued || attempt == SEND_ATTEMPTS_MAX || deadline.passed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(SEND_RETRY_MS)).await;
    }
    if send.sync_after {
        tolerate(me, "sync", client.sync().await, record);
    }
}

/// Links client `plan.client`'s second device through `first` ([`link_device`], retrying for
/// [`Deployment::link_attempts`]) and starts it ([`run_second`]); `None`, noted in the record,
/// when it did not link.
async fn link_second(
    deployment: &Rc<Deployment>,
    plan: &ClientPlan,
    everyone: &Rc<Plan>,
    first: &mut App,
    record: &Rc<RefCell<Record>>,
    deadline: &Rc<Deadline>,
) -> Option<tokio::task::JoinHandle<()>> {
    let me = plan.client;
    let data_dir = linked_dir(&deployment.data_dir(me));
    let environment = Environment {
        rng_seed: Some(seed::derive(deployment.seed, "linked", me.into())),
        ..Environment::default()
    };
    let overrides = Overrides {
        locator: Some(deployment.locator),
        bind_ip: Some(deployment.bind_ip(plan)),
        ca_path: Some(deployment.ca.clone()),
        device_key: None,
    };
    let linked = link_device(
        first,
        &environment,
        &data_dir,
        overrides,
        deployment.link_attempts,
        Duration::from_millis(LINK_RETRY_MS),
    )
    .await;
    let mut recorded = record.borrow_mut();
    match linked {
        Ok(true) => {}
        Ok(false) => {
            recorded.unlinked.insert(
                me,
                format!("not linked after {} attempts", deployment.link_attempts),
            );
            return None;
        }
        Err(error) => {
            recorded.error(me, "link", &error);
            recorded.unlinked.insert(me, error.to_string());
            return None;
        }
    }
    recorded.record(What::Linked { client: me });
    recorded.progress.link(me);
    drop(recorded);
    Some(tokio::task::spawn_local(run_second(
        deployment.seed,
        environment,
        data_dir,
        plan.clone(),
        everyone.clone(),
        record.clone(),
        deadline.clone(),
    )))
}

/// Runs client `plan.client`'s second device, linked in `data_dir` (its draws from the run's
/// `seed`): it sends its share of the planned messages and changes some of the account's (see
/// the module's documentation), says it is done after a sync that found its outbox empty, then
/// syncs until the first device has finished and it is settled itself (everything queued for
/// the account since the link arrived on it), or `deadline` passes.
async fn run_second(
    seed: u64,
    environment: Environment,
    data_dir: PathBuf,
    plan: ClientPlan,
    everyone: Rc<Plan>,
    record: Rc<RefCell<Record>>,
    deadline: Rc<Deadline>,
) {
    let me = plan.client;
    let local = Rc::new(RefCell::new(Observer::default()));
    let sink = sink(me, 1, &record, &local);
    let mut device = match App::open(environment, &data_dir, sink) {
        Ok(device) => device,
        Err(error) => {
            let mut record = record.borrow_mut();
            record.error(me, "cannot open its second device", &error);
            record.progress.done_sending.insert((me, 1));
            record.progress.second_done.insert(me);
            record.second_finished.insert(me, false);
            return;
        }
    };
    let mut changes = Changes::new(seed, "linked-changes", me);
    for send in plan.sends.iter().filter(|send| send.device == 1) {
        tokio::time::sleep(Duration::from_millis(send.pause_ms)).await;
        if deadline.passed() {
            break;
        }
        send_planned(me, 1, &mut device, send, &local, &record, &deadline).await;
        if send.sync_after {
            changes.maybe(me, 1, &mut device, &local, &record).await;
        }
    }
    record.borrow_mut().progress.done_sending.insert((me, 1));
    let complete = loop {
        let (sent_all, first_finished) = {
            let record = record.borrow();
            (
                record.progress.sent_all(me),
                record.progress.finished.contains(&me),
            )
        };
        // Only while the first device still sends: this sync sends the change, and
        // `second_done` (which the others wait on) follows a clean sync after the last one.
        if !sent_all {
            changes.maybe(me, 1, &mut device, &local, &record).await;
        }
        local.borrow_mut().pending = None;
        let synced = device.sync().await;
        let clean = synced.is_ok() && local.borrow().pending == Some(0);
        tolerate(me, "sync", synced, &record);
        if sent_all && clean {
            record.borrow_mut().progress.second_done.insert(me);
        }
        let settled = clean
            && record
                .borrow()
                .progress
                .settled(me, 1, &everyone, &local.borrow());
        if first_finished && settled {
            break true;
        }
        if deadline.passed() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(SYNC_INTERVAL_MS)).await;
    };
    device.close().await;
    let mut record = record.borrow_mut();
    // Done, complete or not: the first device stops waiting for it.
    record.progress.second_done.insert(me);
    record.second_finished.insert(me, complete);
}

/// The changes one device makes ([`change_some`]): its draws, from the run's seed, and how many
/// it may still make.
struct Changes {
    rng: StdRng,
    left: u32,
}

impl Changes {
    /// Client `client`'s device whose draws `name` names (the simulation's names).
    fn new(seed: u64, name: &str, client: u32) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed::derive(seed, name, client.into())),
            left: CHANGES_PER_DEVICE_MAX,
        }
    }

    /// Device `device` of client `me` maybe changes a message it saw; an error a retry cannot
    /// outlast goes into `record`.
    async fn maybe(
        &mut self,
        me: u32,
        device: u32,
        app: &mut App,
        local: &RefCell<Observer>,
        record: &RefCell<Record>,
    ) {
        let changed = change_some(
            record,
            (me, device),
            app,
            local,
            &mut self.rng,
            &mut self.left,
        )
        .await;
        tolerate(me, "change", changed, record);
    }
}

/// Where device `device` of client `me` sends its events: [`observe`], into `record`.
fn sink(
    me: u32,
    device: u32,
    record: &Rc<RefCell<Record>>,
    local: &Rc<RefCell<Observer>>,
) -> Box<dyn FnMut(Event)> {
    let (record, local) = (record.clone(), local.clone());
    Box::new(move |event: Event| {
        observe(
            me,
            device,
            event,
            &mut local.borrow_mut(),
            &mut *record.borrow_mut(),
        )
    })
}

/// Each client's stored history of each chat, read from its store by account (names may not
/// have resolved: a device stores a message from an account it could not name).
pub fn views(
    deployment: &Deployment,
    everyone: &Plan,
    record: &Record,
) -> Result<Vec<ChatView>, RealChaosError> {
    let mut views = Vec::new();
    for (me, device, data_dir) in devices(deployment, everyone, record) {
        let read = chat_views(&data_dir, me, device, everyone, &record.progress.accounts).map_err(
            |error| {
                RealChaosError::Run(format!(
                    "reading {}'s history: {error}",
                    device_name(me, device)
                ))
            },
        )?;
        views.extend(read);
    }
    Ok(views)
}

/// The relay-sync documents of each chat of both devices of every client that linked a second
/// one (what I7 compares), read from their closed data directories.
pub fn docs(
    deployment: &Deployment,
    everyone: &Plan,
    record: &Record,
) -> Result<Vec<DocView>, RealChaosError> {
    let mut docs = Vec::new();
    for (me, device, data_dir) in devices(deployment, everyone, record) {
        if !record.progress.linked.contains(&me) {
            continue;
        }
        let read = doc_views(&data_dir, me, device, everyone, &record.progress.accounts).map_err(
            |error| {
                RealChaosError::Run(format!(
                    "reading {}'s documents: {error}",
                    device_name(me, device)
                ))
            },
        )?;
        docs.extend(read);
    }
    Ok(docs)
}

/// Every device of the run: (client, device, its data directory), first devices of registered
/// clients and the second devices that linked.
fn devices(deployment: &Deployment, everyone: &Plan, record: &Record) -> Vec<(u32, u32, PathBuf)> {
    let mut devices = Vec::new();
    for plan in &everyone.clients {
        let me = plan.client;
        if !record.progress.accounts.contains_key(&me) {
            continue;
        }
        let data_dir = deployment.data_dir(me);
        if record.progress.linked.contains(&me) {
            devices.push((me, 1, linked_dir(&data_dir)));
        }
        devices.push((me, 0, data_dir));
    }
    devices.sort_by_key(|(me, device, _)| (*me, *device));
    devices
}

/// The real world, with the client's randomness derived from the run's seed.
fn environment(deployment: &Deployment, client: u32) -> Environment {
    Environment {
        rng_seed: Some(seed::derive(deployment.seed, "client", client.into())),
        ..Environment::default()
    }
}

/// Passes errors the client recovers from by itself (a later sync retries); records the rest.
fn tolerate(me: u32, what: &str, result: Result<(), ClientError>, record: &RefCell<Record>) {
    if let Err(error) = result
        && !(error.is_retryable() || error.needs_reconnect() || error.is_unreachable())
    {
        record.borrow_mut().error(me, what, &error);
    }
}

/// The data folder of all clients under a run's folder.
pub fn clients_dir(data: &Path) -> PathBuf {
    data.join("clients")
}
