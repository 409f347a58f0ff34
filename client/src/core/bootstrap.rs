//! The history bootstrap in the core, on both sides of a link.
//!
//! **Approving.** The device that approves a link takes a snapshot of every chat's documents,
//! the shell uploads it sealed under a fresh key as a blob ([`crate::transfer`]), and
//! [`Core::queue_bootstrap`] queues the blob's reference for the new device only, as an
//! envelope of the account's chat with itself, *before* the new device joins the own devices
//! the sync protocol talks to: the new device's queue holds the bootstrap ahead of every sync
//! message for it. An empty history sends nothing.
//!
//! **Linked.** When a page brings a bootstrap for this device and the device holds no chat,
//! the core asks the shell to download it ([`Action::Bootstrap`]) and, until
//! [`Core::handle_bootstrap`] answers, keeps aside the page's and later pages' changes and
//! sync messages (at most [`BOOTSTRAP_DEFERRED_INBOUND_MAX`]) and appends no message to the
//! documents (the store keeps them; they are appended after the load). The snapshot loaded,
//! or refused, or never downloaded, the kept items apply in their order, so the sync protocol
//! converges from wherever the documents stand: a failed bootstrap loses nothing. A device that
//! already holds a chat ignores a bootstrap (the load would refuse it).
//!
//! Deferred items live in memory: a device closed before its download ends drops them after
//! their page was acknowledged; the sync protocol offers again what the peer holds when either
//! side changes next (the sender's own next change or the new device's first sync message).

use relay_proto::{ChatId, ClientMessageId, DeviceAddress, DeviceId};

use super::{Action, Core, Report};
use crate::blob::BlobRef;
use crate::content::Content;
use crate::error::{ClientError, Result};
use crate::events::Event;
use crate::inbound::Inbound;
use crate::limits::BOOTSTRAP_DEFERRED_INBOUND_MAX;

/// A bootstrap being downloaded, and what waits for it.
#[derive(Debug)]
pub(super) struct PendingBootstrap {
    /// The own device that sent it.
    from: DeviceAddress,
    /// Changes and sync messages that arrived since, in order.
    deferred: Vec<Inbound>,
}

impl Core {
    /// The snapshot to upload for a device being linked: `None` when this device holds no
    /// chat (nothing to bootstrap).
    pub fn bootstrap_snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let snapshot = self.history_snapshot()?;
        if self.history.replica().chats().is_empty() {
            return Ok(None);
        }
        Ok(Some(snapshot))
    }

    /// Queues the bootstrap `reference` for the new own device `device` (see the module doc),
    /// then takes `devices` as the account's devices.
    pub fn queue_bootstrap(
        &mut self,
        device: DeviceId,
        reference: &BlobRef,
        devices: &[DeviceId],
        now_ms: u64,
    ) -> Result<()> {
        let me = self.identity.address();
        if device == me.device {
            return Err(ClientError::Invalid(
                "a device does not bootstrap itself".into(),
            ));
        }
        let chat = ChatId::direct(me.account, me.account);
        let content = Content::bootstrap(device, reference);
        let id = ClientMessageId(rand::Rng::random(&mut self.rng));
        let wall_ms = self.wall_ms;
        let pending = self.store.write(|writer| {
            super::enqueue(writer, chat, me.account, id, content.to_bytes(), wall_ms)
        })?;
        self.outbox.insert(pending, now_ms)?;
        self.handle_own_devices(devices)
    }

    /// Whether a bootstrap is being downloaded (a sync waits for it).
    pub fn bootstrapping(&self) -> bool {
        self.bootstrap.is_some()
    }

    /// The shell's answer to [`Action::Bootstrap`]: the snapshot's plaintext, or why it could
    /// not be had. Loads it if it can, reports either way, then applies what waited.
    pub fn handle_bootstrap(&mut self, downloaded: Result<Vec<u8>>) {
        let Some(pending) = self.bootstrap.take() else {
            return; // Given up meanwhile (too much waited): the sync protocol took over.
        };
        let from = pending.from.to_string();
        let loaded = downloaded.and_then(|snapshot| {
            self.load_history_snapshot(&snapshot)?;
            Ok(snapshot.len() as u64)
        });
        let event = match loaded {
            Ok(bytes) => {
                let chats = self.history.replica().chats();
                let messages = chats
                    .iter()
                    .map(|chat| self.history.view(*chat).messages.len())
                    .sum();
                Event::Bootstrapped {
                    from,
                    chats: chats.len(),
                    messages,
                    bytes,
                }
            }
            Err(error) => Event::BootstrapSkipped {
                from,
                reason: format!("{error}; the history comes by sync instead"),
            },
        };
        self.reports.push_back(Report::Event(event));
        self.name_history_peers();
        if let Err(error) = self.apply_to_history(&pending.deferred) {
            self.fail(error);
        }
    }

    /// Asks the directory (while connected) for the name of every account the history's chats
    /// are with and this device has no contact for: a linked device's history holds chats with
    /// accounts it never met, and the name is how a person asks for the chat.
    pub(super) fn name_history_peers(&mut self) {
        let me = self.identity.account;
        let mut peers = std::collections::BTreeSet::new();
        for chat in self.history.replica().chats() {
            let view = self.history.view(chat);
            let accounts = view
                .messages
                .iter()
                .map(|message| message.sender.account)
                .chain(view.read_marks.keys().map(|device| device.account));
            for account in accounts {
                if account != me && ChatId::direct(me, account) == chat {
                    peers.insert(account);
                }
            }
        }
        for peer in peers {
            self.named(peer);
        }
    }

    /// Whether a name this device asked the directory for has not been answered yet.
    pub fn naming(&self) -> bool {
        self.account_names
            .values()
            .any(|name| matches!(name, super::AccountName::Asking))
    }

    /// Takes the bootstraps out of a page's `inbound` (starting a download, or ignoring one),
    /// keeps aside what must wait for a download, and returns what applies now.
    pub(super) fn sort_bootstraps(&mut self, inbound: &[Inbound]) -> Result<Vec<Inbound>> {
        let mut now = Vec::with_capacity(inbound.len());
        for item in inbound {
            match item {
                Inbound::Bootstrap { from, reference } => {
                    let skipped = if self.bootstrap.is_some() {
                        Some("another bootstrap is being loaded")
                    } else if self.holds_history()? {
                        Some("this device already holds history")
                    } else {
                        None
                    };
                    if let Some(reason) = skipped {
                        self.reports
                            .push_back(Report::Event(Event::BootstrapSkipped {
                                from: from.to_string(),
                                reason: format!("{reason}; it converges by sync"),
                            }));
                        continue;
                    }
                    self.bootstrap = Some(PendingBootstrap {
                        from: *from,
                        deferred: Vec::new(),
                    });
                    self.actions.push_back(Action::Bootstrap {
                        reference: reference.clone(),
                    });
                }
                Inbound::Change { .. } | Inbound::Sync { .. } if self.bootstrap.is_some() => {
                    let pending = self.bootstrap.as_mut().map(|p| &mut p.deferred);
                    if let Some(deferred) = pending {
                        deferred.push(item.clone());
                        if deferred.len() > BOOTSTRAP_DEFERRED_INBOUND_MAX {
                            self.give_up_bootstrap(&mut now);
                        }
                    }
                }
                other => now.push(other.clone()),
            }
        }
        Ok(now)
    }

    /// Gives the download up: what waited applies now, ahead of the rest of the page.
    fn give_up_bootstrap(&mut self, now: &mut Vec<Inbound>) {
        if let Some(pending) = self.bootstrap.take() {
            self.reports
                .push_back(Report::Event(Event::BootstrapSkipped {
                    from: pending.from.to_string(),
                    reason: format!(
                        "more than {BOOTSTRAP_DEFERRED_INBOUND_MAX} changes and sync messages \
                         arrived during its download; the history comes by sync instead"
                    ),
                }));
            now.extend(pending.deferred);
        }
    }

    /// Whether the documents hold a chat. (Messages of the page that brought the bootstrap
    /// are in the store but not yet in the documents: they are appended after the load.)
    fn holds_history(&mut self) -> Result<bool> {
        self.history.refresh()?;
        Ok(!self.history.replica().chats().is_empty())
    }
}
