//! Waking devices that have no connection: the region's shell around `relay-push`.
//!
//! A device homed here may register a push endpoint (`SetPush`: a browser's WebPush
//! subscription, an APNs device token or an FCM registration token); it is parsed by
//! `relay_push::PushRegistration`, stored in `fdb_layers::push`, and the device is remembered in
//! memory as registered. When a commit puts something in the queue of a device that no edge
//! holds a connection for ([`Pusher::handle_unconnected`]), the device gets a content-free wake:
//! `relay_push::PushQueue` coalesces wakes per device (one push in flight, later wakes ride on
//! it), retries with backoff, and the sending task ([`Pusher::run`]) reads the registration from
//! the store and hands it to the configured provider. A device that connects cancels its
//! waiting wake ([`Pusher::handle_connected`]). A push service that answers that the
//! registration is gone has it deleted, unless the device replaced it meanwhile.
//!
//! Nothing of a message reaches a push service: the wake is the same constant for every
//! device and every message (`relay_push::wake`), and the device fetches over its own
//! end-to-end encrypted session once awake.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fdb_layers::Database;
use relay_proto::wire::{PushAction, PushState, SetPush};
use relay_proto::{DeviceAddress, ProtoError};
use relay_push::{
    PushProvider, PushQueue, PushQueueStats, PushRegistration, QueueLimits, RegistrationPolicy,
    Settled, Wake, WakeOutcome,
};
use tokio::sync::{Notify, Semaphore};

use crate::limits::{PUSH_REGISTERED_PAGE_DEVICES, PUSH_SENDS_IN_FLIGHT_MAX};

/// How a region pushes: the providers and what devices are told of them.
#[derive(Clone)]
pub struct PushSetup {
    /// The configured providers (normally `relay_push::PushProviders`).
    pub provider: Arc<dyn PushProvider>,
    /// The kinds of registration the providers serve (`webpush`, `apns`, `fcm`).
    pub kinds: Vec<String>,
    /// The WebPush VAPID public key (base64url), when WebPush is configured.
    pub vapid_public_key: String,
    /// Which endpoints registrations may name.
    pub policy: RegistrationPolicy,
}

impl PushSetup {
    /// The setup `config` describes; `None` when it configures no provider.
    pub fn from_config(
        config: &relay_push::PushConfig,
    ) -> Result<Option<PushSetup>, relay_push::PushError> {
        let providers = relay_push::PushProviders::from_config(config)?;
        let mut kinds = Vec::new();
        let mut vapid_public_key = String::new();
        if let Some(webpush) = &providers.webpush {
            kinds.push("webpush".to_owned());
            vapid_public_key = base64_url(webpush.vapid_public_key());
        }
        if providers.apns.is_some() {
            kinds.push("apns".to_owned());
        }
        if providers.fcm.is_some() {
            kinds.push("fcm".to_owned());
        }
        if kinds.is_empty() {
            return Ok(None);
        }
        Ok(Some(PushSetup {
            provider: Arc::new(providers),
            kinds,
            vapid_public_key,
            policy: config.registration_policy(),
        }))
    }
}

/// The region's push state: who registered, and the scheduler.
pub struct Pusher {
    setup: Option<PushSetup>,
    state: Mutex<State>,
    /// Wakes the sending task: a wake queued, or a result settled.
    wake: Notify,
    sends: Arc<Semaphore>,
}

struct State {
    queue: PushQueue<DeviceAddress>,
    /// Devices with a registration stored (loaded at start, kept as they change).
    registered: HashSet<DeviceAddress>,
}

impl Pusher {
    /// A pusher with `setup` (`None`: this region pushes nothing, and refuses registrations).
    pub fn new(setup: Option<PushSetup>) -> Pusher {
        Pusher {
            setup,
            state: Mutex::new(State {
                queue: PushQueue::new(QueueLimits::default()),
                registered: HashSet::new(),
            }),
            wake: Notify::new(),
            sends: Arc::new(Semaphore::new(PUSH_SENDS_IN_FLIGHT_MAX)),
        }
    }

    /// Whether this region pushes at all.
    pub fn enabled(&self) -> bool {
        self.setup.is_some()
    }

    /// Reads which devices registered, in pages, at start.
    pub async fn load(&self, db: &Database) -> Result<usize, fdb_layers::StoreError> {
        if self.setup.is_none() {
            return Ok(0);
        }
        let mut after = None;
        let mut loaded = 0;
        loop {
            let page = db
                .transact(|tx| async move {
                    fdb_layers::push::registered_page(&tx, after, PUSH_REGISTERED_PAGE_DEVICES)
                        .await
                })
                .await?;
            let Some(last) = page.last().copied() else {
                return Ok(loaded);
            };
            loaded += page.len();
            self.lock().registered.extend(page);
            after = Some(last);
        }
    }

    /// The registrations of devices whose account's home moved here (`true`) or away
    /// (`false`): woken from now on here, or no longer.
    pub fn handle_moved(&self, devices: &[DeviceAddress], here: bool) {
        if self.setup.is_none() {
            return;
        }
        let mut state = self.lock();
        for device in devices {
            if here {
                state.registered.insert(*device);
            } else {
                state.registered.remove(device);
            }
        }
    }

    /// A commit put something in the queue of `device`, which no edge holds a connection for:
    /// wake it if it registered.
    pub fn handle_unconnected(&self, device: DeviceAddress, now: Instant) {
        if self.setup.is_none() {
            return;
        }
        let mut state = self.lock();
        if !state.registered.contains(&device) {
            return;
        }
        match state.queue.handle_wake(device, now) {
            WakeOutcome::Queued => {
                drop(state);
                self.wake.notify_one();
            }
            WakeOutcome::Coalesced => {}
            WakeOutcome::Refused => {
                tracing::warn!(%device, "the push queue is full; a wake is dropped");
            }
        }
    }

    /// `device` left (no edge holds a connection for it any more): if entries are still queued
    /// for it (a connection that died while messages were hinted to it, an app killed before it
    /// fetched), wake it, so they do not wait for the app's next start.
    pub fn handle_left(self: &Arc<Self>, db: &Database, device: DeviceAddress) {
        if self.setup.is_none() || !self.lock().registered.contains(&device) {
            return;
        }
        let (pusher, db) = (self.clone(), db.clone());
        tokio::spawn(async move {
            let depth = db
                .transact(|tx| async move {
                    fdb_layers::device_queue::depth_snapshot(&tx, device).await
                })
                .await;
            match depth {
                Ok(0) => {}
                Ok(_) => pusher.handle_unconnected(device, Instant::now()),
                Err(error) => {
                    tracing::warn!(%device, %error, "push: reading a queue's depth failed")
                }
            }
        });
    }

    /// `device` connected: a wake still waiting for it is not needed.
    pub fn handle_connected(&self, device: DeviceAddress) {
        if self.setup.is_some() {
            self.lock().queue.handle_connected(&device);
        }
    }

    /// What the scheduler decided so far.
    pub fn stats(&self) -> PushQueueStats {
        self.lock().queue.stats()
    }

    /// Reads, sets or removes `device`'s registration (`SetPush`, checked first).
    pub async fn set(
        &self,
        db: &Database,
        device: DeviceAddress,
        request: &SetPush,
    ) -> Result<PushState, ProtoError> {
        let action = request.validate()?;
        let Some(setup) = &self.setup else {
            if action == PushAction::Set {
                return Err(ProtoError::new(
                    relay_proto::ErrorCode::UnsupportedRequest,
                    "this region sends no pushes (no [push] provider is configured)",
                ));
            }
            return Ok(PushState::default());
        };
        let registered = match action {
            PushAction::Read => {
                let stored = db
                    .transact(|tx| async move { fdb_layers::push::read(&tx, device).await })
                    .await
                    .map_err(crate::service::store_failure)?;
                stored
                    .and_then(|bytes| PushRegistration::decode(&bytes, setup.policy).ok())
                    .map(|registration| registration.kind().to_owned())
                    .unwrap_or_default()
            }
            PushAction::Set => {
                let registration = parse(request, setup.policy)?;
                if !setup.kinds.iter().any(|kind| kind == registration.kind()) {
                    return Err(ProtoError::new(
                        relay_proto::ErrorCode::UnsupportedRequest,
                        format!(
                            "this region does not push through {} (it offers: {})",
                            registration.kind(),
                            setup.kinds.join(", ")
                        ),
                    ));
                }
                let bytes = registration.encode();
                db.transact(|tx| {
                    let bytes = bytes.clone();
                    async move { fdb_layers::push::set(&tx, device, &bytes) }
                })
                .await
                .map_err(crate::service::store_failure)?;
                self.lock().registered.insert(device);
                registration.kind().to_owned()
            }
            PushAction::Remove => {
                db.transact(|tx| async move {
                    fdb_layers::push::clear(&tx, device);
                    Ok(())
                })
                .await
                .map_err(crate::service::store_failure)?;
                self.forget(device);
                String::new()
            }
        };
        Ok(PushState {
            registered,
            providers: setup.kinds.clone(),
            vapid_public_key: setup.vapid_public_key.clone(),
        })
    }

    /// `device` was removed (its registration is cleared in the same transaction).
    pub fn forget(&self, device: DeviceAddress) {
        let mut state = self.lock();
        state.registered.remove(&device);
        state.queue.handle_connected(&device);
    }

    /// Sends the pushes the scheduler hands out, for ever: at most
    /// [`PUSH_SENDS_IN_FLIGHT_MAX`] at once, each result fed back.
    pub async fn run(self: Arc<Self>, db: Database) {
        let Some(setup) = self.setup.clone() else {
            return;
        };
        loop {
            let now = Instant::now();
            let (next, timeout) = {
                let mut state = self.lock();
                (state.queue.poll_send(now), state.queue.poll_timeout())
            };
            let Some(send) = next else {
                match timeout {
                    Some(at) => {
                        let sleep = tokio::time::sleep_until(at.into());
                        tokio::select! {
                            () = sleep => {}
                            () = self.wake.notified() => {}
                        }
                    }
                    None => self.wake.notified().await,
                }
                continue;
            };
            let Ok(permit) = self.sends.clone().acquire_owned().await else {
                return;
            };
            let (pusher, setup, db) = (self.clone(), setup.clone(), db.clone());
            tokio::spawn(async move {
                pusher
                    .send_one(&setup, &db, send.device, send.attempt)
                    .await;
                drop(permit);
            });
        }
    }

    /// One push to `device`: its registration read, sent, the result settled.
    async fn send_one(
        &self,
        setup: &PushSetup,
        db: &Database,
        device: DeviceAddress,
        attempt: u32,
    ) {
        let stored = db
            .transact(|tx| async move { fdb_layers::push::read(&tx, device).await })
            .await;
        let bytes = match stored {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                // Removed meanwhile: nothing to push to.
                self.forget(device);
                return;
            }
            Err(error) => {
                tracing::warn!(%device, %error, "reading a push registration failed");
                let failed = Err(relay_push::PushError::Transport(error.to_string()));
                self.settle(device, &failed);
                return;
            }
        };
        let registration = match PushRegistration::decode(&bytes, setup.policy) {
            Ok(registration) => registration,
            Err(error) => {
                // Damaged, or written under a policy since tightened: drop the wake and the
                // registration (the device registers again when it next starts).
                tracing::warn!(%device, %error, "a stored push registration does not decode");
                let unusable =
                    relay_push::PushError::Config(format!("stored registration: {error}"));
                self.settle(device, &Err(unusable));
                self.remove_if_unchanged(db, device, &bytes).await;
                return;
            }
        };
        let result = setup.provider.send(&registration, &Wake::default()).await;
        match &result {
            Ok(_) => tracing::debug!(%device, attempt, kind = registration.kind(), "pushed a wake"),
            Err(error) => {
                tracing::info!(%device, attempt, kind = registration.kind(), %error, "a push failed")
            }
        }
        if self.settle(device, &result) == Settled::Gone {
            self.remove_if_unchanged(db, device, &bytes).await;
        }
    }

    fn settle(
        &self,
        device: DeviceAddress,
        result: &Result<relay_push::Delivered, relay_push::PushError>,
    ) -> Settled {
        let settled = self
            .lock()
            .queue
            .handle_result(&device, result, Instant::now());
        if !matches!(settled, Settled::NotInFlight) {
            self.wake.notify_one();
        }
        settled
    }

    /// The push service said `device`'s registration is gone: delete it, unless the device
    /// registered anew meanwhile.
    async fn remove_if_unchanged(&self, db: &Database, device: DeviceAddress, bytes: &[u8]) {
        let removed = db
            .transact(|tx| {
                let bytes = bytes.to_vec();
                async move { fdb_layers::push::clear_if(&tx, device, &bytes).await }
            })
            .await;
        match removed {
            Ok(true) => {
                self.lock().registered.remove(&device);
                tracing::info!(%device, "the push service no longer knows a device: registration removed");
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%device, %error, "removing a gone push registration failed")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The registration a `SetPush` names, parsed under `policy`.
fn parse(request: &SetPush, policy: RegistrationPolicy) -> Result<PushRegistration, ProtoError> {
    let parsed = if let Some(webpush) = &request.webpush {
        PushRegistration::parse_webpush(&webpush.endpoint, &webpush.p256dh, &webpush.auth, policy)
    } else if !request.apns_token.is_empty() {
        PushRegistration::parse_apns(&request.apns_token)
    } else {
        PushRegistration::parse_fcm(&request.fcm_token)
    };
    parsed.map_err(|error| ProtoError::invalid(format!("push registration: {error}")))
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
