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

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use relay_client::{ClientError, Environment, Event, Overrides};
use tokio::time::Instant;

use super::RealChaosError;
use crate::history::{ChatView, TraceEvent, What, client_name};
use crate::seed;
use crate::workload::{
    App, ClientPlan, Ledger, Observer, Plan, Progress, REGISTRATION_RETRY_MS, SEND_ATTEMPTS_MAX,
    SEND_RETRY_MS, SYNC_INTERVAL_MS, chat_views, observe, register_retrying,
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
}

impl Deployment {
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

/// Runs client `plan.client`'s sends, then syncs until it is settled or `deadline` passes.
pub async fn run(
    deployment: Rc<Deployment>,
    plan: ClientPlan,
    everyone: Rc<Plan>,
    record: Rc<RefCell<Record>>,
    deadline: Rc<Deadline>,
) {
    let me = plan.client;
    let local = Rc::new(RefCell::new(Observer::default()));
    let sink = {
        let record = record.clone();
        let local = local.clone();
        Box::new(move |event: Event| {
            observe(
                me,
                0,
                event,
                &mut local.borrow_mut(),
                &mut *record.borrow_mut(),
            )
        })
    };
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

    for send in &plan.sends {
        tokio::time::sleep(Duration::from_millis(send.pause_ms)).await;
        if deadline.passed() {
            break;
        }
        record.borrow_mut().record(What::Send {
            message: send.message,
            recipient: send.recipient,
            device: 0,
        });
        for attempt in 1..=SEND_ATTEMPTS_MAX {
            local.borrow_mut().sending = Some(send.message);
            let sent = client
                .send(&client_name(send.recipient), &send.message.text())
                .await;
            local.borrow_mut().sending = None;
            tolerate(me, "send", sent.map(|_| ()), &record);
            let queued = record.borrow().progress.queued.contains(&send.message);
            if queued || attempt == SEND_ATTEMPTS_MAX || deadline.passed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(SEND_RETRY_MS)).await;
        }
        if send.sync_after {
            tolerate(me, "sync", client.sync().await, &record);
        }
    }
    record.borrow_mut().progress.done_sending.insert((me, 0));

    let complete = loop {
        tolerate(me, "sync", client.sync().await, &record);
        if record
            .borrow()
            .progress
            .settled(me, 0, &everyone, &local.borrow())
        {
            break true;
        }
        if deadline.passed() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(SYNC_INTERVAL_MS)).await;
    };
    client.close().await;
    let mut record = record.borrow_mut();
    record.record(What::Finished {
        client: me,
        complete,
    });
    record.finished.insert(me, complete);
}

/// Each client's stored history of each chat, read from its store by account (names may not
/// have resolved: a device stores a message from an account it could not name).
pub fn views(
    deployment: &Deployment,
    everyone: &Plan,
    record: &Record,
) -> Result<Vec<ChatView>, RealChaosError> {
    let mut views = Vec::new();
    for plan in &everyone.clients {
        let me = plan.client;
        if !record.progress.accounts.contains_key(&me) {
            continue;
        }
        let read = chat_views(
            &deployment.data_dir(me),
            me,
            0,
            everyone,
            &record.progress.accounts,
        )
        .map_err(|error| {
            RealChaosError::Run(format!("reading {}'s history: {error}", client_name(me)))
        })?;
        views.extend(read);
    }
    Ok(views)
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
