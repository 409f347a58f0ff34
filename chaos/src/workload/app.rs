//! One run of a client app ([`App`]: the device behind the one-command flows), what opens it again
//! and again with fresh randomness, and killing and reopening it.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use relay_client::store::Tick;
use relay_client::{
    ClientError, Device, Environment, Event, Events, LinkHistory, MessageState, OpenOptions, flows,
};
use relay_proto::ClientMessageId;

use super::observe::Unheard;
use super::{CLIENT_RESTART_MS, ClientSetup, Observer, observe};
use crate::history::What;
use crate::seed;

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

    /// `relay group create NAME MEMBERS...`: the group's id and version.
    pub async fn create_group(
        &mut self,
        name: &str,
        members: &[&str],
    ) -> Result<(u64, u64), ClientError> {
        let group = self
            .events
            .drive(self.device.create_group(name, members), &mut *self.sink)
            .await?;
        Ok((group.id, group.version))
    }

    /// `relay group add GROUP MEMBER`: the group's version after it.
    pub async fn add_group_member(&mut self, group: u64, member: &str) -> Result<u64, ClientError> {
        let group = self
            .events
            .drive(
                self.device.add_group_members(group, &[member]),
                &mut *self.sink,
            )
            .await?;
        Ok(group.version)
    }

    /// `relay group remove GROUP MEMBER`: the group's version after it.
    pub async fn remove_group_member(
        &mut self,
        group: u64,
        member: &str,
    ) -> Result<u64, ClientError> {
        let group = self
            .events
            .drive(
                self.device.remove_group_member(group, member),
                &mut *self.sink,
            )
            .await?;
        Ok(group.version)
    }

    /// `relay group send GROUP TEXT` (without `--wait`): stores the text (reported pending),
    /// then flushes the outbox as a one-shot send does. A text the relay refuses for good is
    /// reported by its [`Event::GroupFailed`], not as an error here.
    pub async fn send_group(&mut self, group: u64, text: &str) -> Result<(), ClientError> {
        self.events
            .drive(self.device.send_group(group, text), &mut *self.sink)
            .await?;
        self.events
            .drive(
                self.device
                    .flush(Duration::from_millis(relay_client::limits::FLUSH_BUDGET_MS)),
                &mut *self.sink,
            )
            .await
    }

    /// `relay read PEER`.
    pub async fn read(&mut self, peer: &str) -> Result<usize, ClientError> {
        flows::read(&self.device, &mut self.events, peer, &mut *self.sink).await
    }

    /// What an app shows when it opens: where each message whose outcome the killed run never
    /// passed on stands now, read from the device's store (an event is not kept across a kill:
    /// the store is), passed on as the event that would have said it.
    pub async fn recall(&mut self, unheard: &[Unheard]) -> Result<(), ClientError> {
        for message in unheard {
            let Some(id) = message_id(&message.id) else {
                continue;
            };
            let event = match (self.device.message_state(id).await?, &message.peer) {
                (MessageState::Ticked(Tick::Pending), _) => continue,
                (MessageState::Ticked(tick), Some(peer)) => Event::Tick {
                    id: message.id.clone(),
                    peer: peer.clone(),
                    tick,
                },
                (MessageState::Ticked(tick), None) => Event::GroupTick {
                    group: 0,
                    id: message.id.clone(),
                    tick,
                },
                (MessageState::Failed(reason), Some(peer)) => Event::Failed {
                    id: message.id.clone(),
                    peer: peer.clone(),
                    reason,
                },
                _ => continue,
            };
            (self.sink)(event);
        }
        Ok(())
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
pub(super) fn opener<'a>(
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
/// what its store already holds) and opens it again after a moment, showing where the messages
/// stand whose outcome the killed run had not passed on ([`App::recall`]).
pub(super) async fn restart(
    setup: &ClientSetup,
    client: App,
    open: &impl Fn() -> Result<App, ClientError>,
    local: &Rc<RefCell<Observer>>,
) -> Result<App, Box<dyn std::error::Error>> {
    drop(client);
    setup.shared.borrow_mut().record(What::ClientRestarted {
        client: setup.plan.client,
    });
    tokio::time::sleep(Duration::from_millis(CLIENT_RESTART_MS)).await;
    let mut app = open()?;
    let unheard = local.borrow().unheard(&setup.shared.borrow_mut().progress);
    app.recall(&unheard).await?;
    Ok(app)
}

/// A message id as events print it (32 hex digits).
fn message_id(hex: &str) -> Option<ClientMessageId> {
    let mut id = [0u8; 16];
    if hex.len() != 32 {
        return None;
    }
    for (byte, pair) in id.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(ClientMessageId(id))
}
