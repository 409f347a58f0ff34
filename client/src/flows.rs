//! The one-command flows of the `relay` CLI (and of the simulation's and chaos runs' clients),
//! as thin functions over [`Device`]: each runs one call or a few, hands every event to a sink
//! as it comes (the CLI prints them), and adds the summary events a command ends with
//! (`still_pending`, `synced`, `marked_read`, `listening`, `history`).
//!
//! ```
//! # use relay_client::{Device, Event, OpenOptions, flows};
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
//! // What `relay send bob hi` and then `relay sync` (as bob) do.
//! let (alice, mut events) = Device::open(&alice_dir, OpenOptions::default())?;
//! let mut printed = Vec::new();
//! flows::send(&alice, &mut events, "bob", "hi", None, std::future::pending(), &mut |event| printed.push(event)).await?;
//! alice.close().await?;
//! assert!(printed.iter().any(|event| matches!(event, Event::Tick { tick: relay_client::Tick::Sent, .. })));
//!
//! let (bob, mut events) = Device::open(&bob_dir, OpenOptions::default())?;
//! let mut printed = Vec::new();
//! flows::sync(&bob, &mut events, &mut |event| printed.push(event)).await?;
//! bob.close().await?;
//! assert!(printed.iter().any(|event| matches!(event, Event::Message { text, .. } if text == "hi")));
//! assert!(matches!(printed.last(), Some(Event::Synced { received: 1, .. })));
//! # testbed.stop().await;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use relay_proto::ClientMessageId;
use relay_proto::wire::{DeviceKeys, LinkRequestInfo, PresenceVisibility};
use tokio::time::Instant;

use crate::content::Change;
use crate::core::MessageState;
use crate::device::{BootstrapSent, Device, Events, LinkHistory};
use crate::error::{ClientError, Result};
use crate::events::{Event, fingerprint};
use crate::groups::Group;
use crate::limits::{
    FLUSH_BUDGET_MS, LINK_POLL_INTERVAL_MS, LINK_POLLS_MAX, POLL_INTERVAL_MS,
    PRESENCE_ANSWER_WAIT_MS,
};
use crate::media::FileDescription;
use crate::store::Tick;
use crate::transfer::{BlobProgress, BlobSource};

/// What `send --wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// The tick to reach.
    pub until: Tick,
    /// How long to wait.
    pub timeout: Duration,
}

/// Sends a text to `peer`. Without `wait`, returns once it is sent (✓) or, if that is not
/// possible within [`FLUSH_BUDGET_MS`] (or no edge can be reached), reports it still pending
/// (it stays in the outbox for the next command). With `wait`, follows this message's ticks
/// (and shows messages received meanwhile; a live device is needed to see receipts) until it
/// reaches `wait.until` ([`ClientError::TimedOut`] after `wait.timeout`, [`ClientError::Interrupted`]
/// when `stop` completes first). A name no account has is [`ClientError::UnknownPeer`] once the
/// directory says so.
pub async fn send(
    device: &Device,
    events: &mut Events,
    peer: &str,
    text: &str,
    wait: Option<Wait>,
    stop: impl Future<Output = ()>,
    sink: &mut dyn FnMut(Event),
) -> Result<ClientMessageId> {
    // A one-shot send says nothing about its connection (a still-pending line says why it is
    // not sent); one that waits shows reconnects as notes.
    let id = events
        .drive(
            device.send(peer, text),
            &mut shown_while_sending(wait, &mut *sink),
        )
        .await?;
    follow(device, events, id, wait, stop, sink).await
}

/// Sends a text to group `group` as [`send`] sends one to a peer: without `wait`, returns once
/// it is sent (✓) or reports it still pending; with `wait`, follows its ticks (✓✓ once every
/// member device it went to has it) until `wait.until`.
pub async fn send_group(
    device: &Device,
    events: &mut Events,
    group: u64,
    text: &str,
    wait: Option<Wait>,
    stop: impl Future<Output = ()>,
    sink: &mut dyn FnMut(Event),
) -> Result<ClientMessageId> {
    let id = events
        .drive(
            device.send_group(group, text),
            &mut shown_while_sending(wait, &mut *sink),
        )
        .await?;
    let id = follow(device, events, id, wait, stop, sink).await?;
    // A text this account cannot send to the group (not a member, no such group) fails while
    // it is flushed: the command says so.
    if let MessageState::Failed(reason) = device.message_state(id).await? {
        return Err(ClientError::Invalid(format!(
            "message {id} to group {group} failed: {reason}"
        )));
    }
    Ok(id)
}

/// A file and what the sender says of it, for [`send_file`].
pub struct FileToSend<'a> {
    /// The file's bytes.
    pub source: BlobSource<'a>,
    /// Its name, type and thumbnail.
    pub description: FileDescription,
    /// The caption (may be empty).
    pub caption: &'a str,
}

/// Where a file goes.
#[derive(Debug, Clone, Copy)]
pub enum FileTo<'a> {
    /// A peer, by name.
    Peer(&'a str),
    /// A group, by id.
    Group(u64),
}

/// Sends a file: uploads it (reporting to `progress`, resuming after dropped connections),
/// then sends the message carrying it as [`send`] and [`send_group`] send a text, with the
/// same `wait`.
#[allow(clippy::too_many_arguments)]
pub async fn send_file(
    device: &Device,
    events: &mut Events,
    to: FileTo<'_>,
    file: FileToSend<'_>,
    progress: &mut dyn FnMut(BlobProgress),
    wait: Option<Wait>,
    stop: impl Future<Output = ()>,
    sink: &mut dyn FnMut(Event),
) -> Result<ClientMessageId> {
    let sending = async {
        match to {
            FileTo::Peer(peer) => {
                device
                    .send_file(peer, file.source, &file.description, file.caption, progress)
                    .await
            }
            FileTo::Group(group) => {
                device
                    .send_group_file(
                        group,
                        file.source,
                        &file.description,
                        file.caption,
                        progress,
                    )
                    .await
            }
        }
    };
    let id = events
        .drive(sending, &mut shown_while_sending(wait, &mut *sink))
        .await?;
    let id = follow(device, events, id, wait, stop, sink).await?;
    if let (FileTo::Group(group), MessageState::Failed(reason)) =
        (to, device.message_state(id).await?)
    {
        return Err(ClientError::Invalid(format!(
            "message {id} to group {group} failed: {reason}"
        )));
    }
    Ok(id)
}

/// What a send shows of the device's events: a one-shot send nothing of its connection (a
/// still-pending line says why it is not sent); one that waits shows reconnects as notes.
fn shown_while_sending(wait: Option<Wait>, sink: &mut dyn FnMut(Event)) -> impl FnMut(Event) + '_ {
    move |event: Event| match (event, wait) {
        (Event::Connected { .. } | Event::Disconnected { .. }, None) => {}
        (event, None) => sink(event),
        (event, Some(_)) => {
            if let Some(event) = connection_note(event, false) {
                sink(event);
            }
        }
    }
}

/// After a send: flushes and reports, or follows the message's ticks (see [`send`]).
async fn follow(
    device: &Device,
    events: &mut Events,
    id: ClientMessageId,
    wait: Option<Wait>,
    stop: impl Future<Output = ()>,
    sink: &mut dyn FnMut(Event),
) -> Result<ClientMessageId> {
    let mut shown = |event: Event| match (event, wait) {
        (Event::Connected { .. } | Event::Disconnected { .. }, None) => {}
        (event, None) => sink(event),
        (event, Some(_)) => {
            if let Some(event) = connection_note(event, false) {
                sink(event);
            }
        }
    };
    let Some(wait) = wait else {
        let flushed = events
            .drive(
                device.flush(Duration::from_millis(FLUSH_BUDGET_MS)),
                &mut shown,
            )
            .await;
        report_still_pending(device, Some(id), sink).await?;
        if let MessageState::UnknownPeer(name) = device.message_state(id).await? {
            return Err(ClientError::UnknownPeer(name));
        }
        return flushed.map(|()| id);
    };
    let deadline = Instant::now() + wait.timeout;
    let own = id.to_string();
    let mut stop = std::pin::pin!(stop);
    loop {
        if let Some(reason) = device.rolled_back().await? {
            return Err(ClientError::DeviceRolledBack(reason));
        }
        match device.message_state(id).await? {
            MessageState::Ticked(tick) if tick >= wait.until => {
                // What the device reported before it answered (the tick itself, if this
                // device saw it move) is shown before the command ends.
                while let Some(event) = events.try_next() {
                    if !is_other_tick(&event, &own) {
                        shown(event);
                    }
                }
                return Ok(id);
            }
            MessageState::Ticked(_) | MessageState::Draft => {}
            MessageState::Failed(reason) => {
                return Err(ClientError::Invalid(format!(
                    "message {id} failed: {reason}"
                )));
            }
            MessageState::UnknownPeer(name) => return Err(ClientError::UnknownPeer(name)),
            MessageState::Unknown => {
                return Err(ClientError::Corrupt(format!("message {id} vanished")));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let tick = match device.message_state(id).await? {
                MessageState::Ticked(tick) => tick,
                _ => Tick::Pending,
            };
            return Err(ClientError::TimedOut(format!(
                "message {id} is {} after {:.1} s; it did not reach {} (it stays in the outbox if unsent)",
                tick.label(),
                wait.timeout.as_secs_f64(),
                wait.until.name()
            )));
        }
        let wake = deadline.min(now + Duration::from_millis(POLL_INTERVAL_MS));
        tokio::select! {
            event = events.next() => match event {
                // Only this message's ticks: the others are not what the person waits for.
                Some(event) if is_other_tick(&event, &own) => {}
                Some(event) => shown(event),
                None => return Err(device.rolled_back().await.err().unwrap_or(ClientError::Closed)),
            },
            () = tokio::time::sleep_until(wake) => {}
            () = &mut stop => return Err(ClientError::Interrupted),
        }
    }
}

/// Whether `event` is the tick of another message than `own`.
fn is_other_tick(event: &Event, own: &str) -> bool {
    matches!(event, Event::Tick { id, .. } | Event::GroupTick { id, .. } if id != own)
}

/// Marks every unread message of group `group` read and sends the read receipts (see
/// [`Device::mark_group_read`]), like [`read`] for a 1:1 chat; reports `marked_read` with
/// `peer` "group G".
pub async fn read_group(
    device: &Device,
    events: &mut Events,
    group: u64,
    sink: &mut dyn FnMut(Event),
) -> Result<usize> {
    mark_and_flush(
        device,
        events,
        device.mark_group_read(group),
        format!("group {group}"),
        sink,
    )
    .await
}

/// Runs `marking` (a mark-read call naming what it marked `label`), reports
/// [`Event::MarkedRead`], then sends the read receipts it queued within [`FLUSH_BUDGET_MS`].
async fn mark_and_flush(
    device: &Device,
    events: &mut Events,
    marking: impl Future<Output = Result<usize>>,
    label: String,
    sink: &mut dyn FnMut(Event),
) -> Result<usize> {
    let quiet = |sink: &mut dyn FnMut(Event), event: Event| {
        if !matches!(event, Event::Disconnected { .. } | Event::Connected { .. }) {
            sink(event);
        }
    };
    let count = events
        .drive(marking, &mut |event| quiet(sink, event))
        .await?;
    sink(Event::MarkedRead { peer: label, count });
    if device.pending_count().await? > 0 {
        let flushed = events
            .drive(
                device.flush(Duration::from_millis(FLUSH_BUDGET_MS)),
                &mut |event| quiet(sink, event),
            )
            .await;
        report_still_pending(device, None, sink).await?;
        flushed?;
    }
    Ok(count)
}

/// The latest `limit` messages of group `group` on this device, oldest first.
pub async fn group_history(
    device: &Device,
    group: u64,
    limit: usize,
    sink: &mut dyn FnMut(Event),
) -> Result<()> {
    for event in device.group_history(group, limit).await? {
        sink(event);
    }
    Ok(())
}

/// Flushes the outbox, fetches and acknowledges everything queued, then reports what is still
/// pending and a [`Event::Synced`] summary.
pub async fn sync(device: &Device, events: &mut Events, sink: &mut dyn FnMut(Event)) -> Result<()> {
    let mut received = 0;
    let mut ticks = 0;
    events
        .drive(device.sync(), &mut |event| {
            match &event {
                Event::Message { .. }
                | Event::GroupMessage { .. }
                | Event::Undecryptable { .. } => received += 1,
                Event::Tick { .. } | Event::GroupTick { .. } => ticks += 1,
                // A first connection that finds no edge ends the sync with that error.
                Event::Disconnected {
                    unreachable: true, ..
                } => return,
                _ => {}
            }
            if let Some(event) = connection_note(event, false) {
                sink(event);
            }
        })
        .await?;
    // What the fetch called for (the answers of the history's sync with the own devices)
    // goes out before the summary.
    if device.pending_count().await? > 0 {
        let flushed = events
            .drive(
                device.flush(Duration::from_millis(FLUSH_BUDGET_MS)),
                &mut |event| {
                    if let Some(event) = connection_note(event, false) {
                        sink(event);
                    }
                },
            )
            .await;
        flushed?;
    }
    report_still_pending(device, None, sink).await?;
    sink(Event::Synced {
        received,
        ticks,
        pending: device.pending_count().await?,
    });
    Ok(())
}

/// `relay edit`, `relay delete --everyone` and `relay react`: makes the change (reported as
/// [`Event::Changed`]) and sends it within [`FLUSH_BUDGET_MS`] (else it stays pending and a
/// `still_pending` line says why); returns the id of the envelope that carries it.
pub async fn change(
    device: &Device,
    events: &mut Events,
    peer: &str,
    message: &str,
    change: Change,
    sink: &mut dyn FnMut(Event),
) -> Result<ClientMessageId> {
    let quiet = |sink: &mut dyn FnMut(Event), event: Event| {
        if !matches!(event, Event::Disconnected { .. } | Event::Connected { .. }) {
            sink(event);
        }
    };
    let made = match change {
        Change::Edit(text) => device.edit(peer, message, &text).await,
        Change::Delete => device.delete_for_everyone(peer, message).await,
        Change::React(reaction) => device.react(peer, message, &reaction).await,
    };
    while let Some(event) = events.try_next() {
        quiet(sink, event);
    }
    let id = made?;
    let flushed = events
        .drive(
            device.flush(Duration::from_millis(FLUSH_BUDGET_MS)),
            &mut |event| quiet(sink, event),
        )
        .await;
    report_still_pending(device, Some(id), sink).await?;
    flushed?;
    Ok(id)
}

/// Marks every unread message from `peer` read and sends the end-to-end encrypted receipt
/// (within [`FLUSH_BUDGET_MS`], else it stays pending); returns how many were marked.
pub async fn read(
    device: &Device,
    events: &mut Events,
    peer: &str,
    sink: &mut dyn FnMut(Event),
) -> Result<usize> {
    mark_and_flush(
        device,
        events,
        device.mark_read(peer),
        peer.to_owned(),
        sink,
    )
    .await
}

/// Stays connected, reporting messages and ticks as they arrive and reconnecting after a drop,
/// until `stop` completes or `timeout` passes. The first connection must succeed (an edge that
/// answers but cannot serve yet is waited for). Reports [`Event::Listening`] once connected.
pub async fn listen(
    device: &Device,
    events: &mut Events,
    timeout: Option<Duration>,
    stop: impl Future<Output = ()>,
    sink: &mut dyn FnMut(Event),
) -> Result<()> {
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    let mut stop = std::pin::pin!(stop);
    let mut connect = std::pin::pin!(device.connect());
    let mut connecting = true;
    let mut announced = false;
    loop {
        tokio::select! {
            answer = &mut connect, if connecting => {
                connecting = false;
                if let Err(error) = answer {
                    while let Some(event) = events.try_next() {
                        if let Some(event) = connection_note(event, announced) {
                            sink(event);
                        }
                    }
                    return Err(error);
                }
            }
            event = events.next() => match event {
                Some(Event::Connected { .. }) if !announced => {
                    announced = true;
                    sink(Event::Listening {
                        name: device.identity().name.clone(),
                    });
                }
                Some(Event::RolledBack { reason }) => return Err(ClientError::DeviceRolledBack(reason)),
                Some(event) => {
                    if let Some(event) = connection_note(event, announced) {
                        sink(event);
                    }
                }
                None => return Err(ClientError::Closed),
            },
            () = sleep_until(deadline) => return Ok(()),
            () = &mut stop => return Ok(()),
        }
    }
}

/// Reports the chat with `peer` in order (local only). On a device the relay refused as
/// rolled back, a note says so first.
pub async fn history(device: &Device, peer: &str, sink: &mut dyn FnMut(Event)) -> Result<()> {
    if let Some(reason) = device.rolled_back().await? {
        sink(Event::Note {
            message: ClientError::DeviceRolledBack(reason).to_string(),
        });
    }
    for entry in device.history(peer).await? {
        sink(entry);
    }
    Ok(())
}

/// `relay info MESSAGE`: the message and each recipient device's state, as
/// [`Device::message_info`] answers them.
pub async fn info(device: &Device, message: &str, sink: &mut dyn FnMut(Event)) -> Result<()> {
    for event in device.message_info(message).await? {
        sink(event);
    }
    Ok(())
}

/// `relay settings [read-receipts on|off]`: changes the read receipts setting when asked, then
/// reports every setting.
pub async fn settings(
    device: &Device,
    read_receipts: Option<bool>,
    presence: Option<PresenceVisibility>,
    sink: &mut dyn FnMut(Event),
) -> Result<()> {
    if let Some(on) = read_receipts {
        device.set_read_receipts(on).await?;
    }
    let on = device.read_receipts().await?;
    sink(Event::Setting {
        name: "read-receipts".into(),
        value: if on { "on" } else { "off" }.into(),
    });
    // Kept by the home region: shown when it answers, else a note says why not.
    let setting = match presence {
        Some(visibility) => device.set_presence_privacy(visibility).await.map(Some),
        None => device.presence_privacy().await.map(Some).or_else(|error| {
            sink(Event::Note {
                message: format!("presence: not known now ({error})"),
            });
            Ok::<_, ClientError>(None)
        }),
    }?;
    if let Some(setting) = setting {
        let value = match setting.visibility.as_str() {
            "contacts" if setting.contacts == 1 => "contacts (1 account)".to_owned(),
            "contacts" => format!("contacts ({} accounts)", setting.contacts),
            other => other.to_owned(),
        };
        sink(Event::Setting {
            name: "presence".into(),
            value,
        });
    }
    Ok(())
}

/// `relay presence PEER`: watches `peer`'s presence (the device is live), reports it, and with
/// `follow` keeps reporting its changes and `peer`'s typing for that long (or until `stop`).
/// Without a first answer within [`PRESENCE_ANSWER_WAIT_MS`] it fails.
pub async fn presence(
    device: &Device,
    events: &mut Events,
    peer: &str,
    follow: Option<Duration>,
    stop: impl Future<Output = ()>,
    sink: &mut dyn FnMut(Event),
) -> Result<()> {
    device.connect().await?;
    device.watch_presence(peer).await?;
    let mut stop = std::pin::pin!(stop);
    let first_by = Instant::now() + Duration::from_millis(PRESENCE_ANSWER_WAIT_MS);
    let mut follow_until = None;
    loop {
        let until = follow_until.unwrap_or(first_by);
        tokio::select! {
            event = events.next() => match event {
                Some(event @ Event::Presence { .. }) if event_peer(&event) == Some(peer) => {
                    sink(event);
                    match follow {
                        None => return Ok(()),
                        Some(follow) => {
                            follow_until.get_or_insert(Instant::now() + follow);
                        }
                    }
                }
                Some(event @ Event::Typing { group: None, .. }) if event_peer(&event) == Some(peer) => sink(event),
                Some(Event::RolledBack { reason }) => return Err(ClientError::DeviceRolledBack(reason)),
                Some(event @ Event::Note { .. }) => sink(event),
                Some(_) => {}
                None => return Err(ClientError::Closed),
            },
            () = tokio::time::sleep_until(until) => {
                return match follow_until {
                    Some(_) => Ok(()),
                    None => Err(ClientError::TimedOut(format!(
                        "{peer}'s home region did not say {peer}'s presence in time"
                    ))),
                };
            }
            () = &mut stop => return Ok(()),
        }
    }
}

/// The peer a presence or typing event is about.
fn event_peer(event: &Event) -> Option<&str> {
    match event {
        Event::Presence { peer, .. } | Event::Typing { peer, .. } => Some(peer),
        _ => None,
    }
}

/// `relay typing PEER [--stop]`: tells `peer` this user is typing, or stopped.
pub async fn typing(
    device: &Device,
    peer: &str,
    typing: bool,
    sink: &mut dyn FnMut(Event),
) -> Result<()> {
    let sent = device.set_typing(peer, typing).await?;
    sink(Event::TypingSent {
        peer: peer.to_owned(),
        group: None,
        typing,
        repeated: sent == crate::core::TypingSent::Repeated,
    });
    Ok(())
}

/// `relay group typing GROUP [--stop]`: tells `group`'s members this user is typing in its
/// chat, or stopped.
pub async fn group_typing(
    device: &Device,
    group: u64,
    typing: bool,
    sink: &mut dyn FnMut(Event),
) -> Result<()> {
    let sent = device.set_group_typing(group, typing).await?;
    sink(Event::TypingSent {
        peer: String::new(),
        group: Some(group),
        typing,
        repeated: sent == crate::core::TypingSent::Repeated,
    });
    Ok(())
}

/// `relay link`: opens a pairing and reports its code, waits (up to `timeout`, at most until
/// the code expires) for the new device's request, reports it with its fingerprint, approves
/// it (sending the history as `history` says), and reports the account's devices.
pub async fn link(
    device: &Device,
    timeout: Duration,
    history: LinkHistory,
    sink: &mut dyn FnMut(Event),
) -> Result<()> {
    let pairing = device.link().await?;
    sink(Event::PairingCode {
        code: pairing.code.clone(),
        expires_at_ms: pairing.expires_at_ms,
    });
    let deadline = Instant::now() + timeout;
    for _ in 0..LINK_POLLS_MAX {
        let requests = device.link_requests().await?;
        if let Some(request) = requests.iter().find(|request| request.code == pairing.code) {
            return approve_request(device, request, history, sink).await;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(LINK_POLL_INTERVAL_MS)).await;
    }
    Err(ClientError::TimedOut(format!(
        "no new device asked with pairing code {} in time",
        pairing.code
    )))
}

/// `relay approve [CODE]`: approves the new device waiting with `code` (or the only one
/// waiting), sending the history as `history` says, and reports the account's devices.
pub async fn approve(
    device: &Device,
    code: Option<&str>,
    history: LinkHistory,
    sink: &mut dyn FnMut(Event),
) -> Result<()> {
    let requests = device.link_requests().await?;
    let request = match code {
        Some(code) => {
            let code: relay_proto::PairingCode = code
                .parse()
                .map_err(|error: relay_proto::ProtoError| ClientError::Invalid(error.message))?;
            let code = code.to_string();
            requests.iter().find(|request| request.code == code)
        }
        None if requests.len() == 1 => requests.first(),
        None if requests.is_empty() => None,
        None => {
            return Err(ClientError::Invalid(format!(
                "{} new devices are waiting: name the code to approve",
                requests.len()
            )));
        }
    };
    let request = request
        .ok_or_else(|| ClientError::Invalid("no new device is waiting for an approval".into()))?;
    approve_request(device, request, history, sink).await
}

async fn approve_request(
    device: &Device,
    request: &LinkRequestInfo,
    history: LinkHistory,
    sink: &mut dyn FnMut(Event),
) -> Result<()> {
    sink(Event::LinkRequested {
        code: request.code.clone(),
        name: device.identity().name.clone(),
        fingerprint: fingerprint(&request.identity_key),
    });
    let approved = device
        .approve_link(&request.code, &request.identity_key, history)
        .await?;
    match approved.bootstrap {
        BootstrapSent::Sent { device, bytes } => sink(Event::BootstrapSent {
            device: device.0,
            bytes,
        }),
        BootstrapSent::Empty => {}
        BootstrapSent::Failed(reason) => sink(Event::Note {
            message: format!(
                "the history bootstrap was not sent ({reason}); the new device gets the \
                 history by sync instead"
            ),
        }),
    }
    report_own_devices(device, &approved.devices, sink);
    Ok(())
}

/// `relay devices [PEER]`: this account's devices as its region lists them, or the devices of
/// `peer` this device knows (current and former, with the identity keys it trusted).
pub async fn devices(
    device: &Device,
    peer: Option<&str>,
    sink: &mut dyn FnMut(Event),
) -> Result<()> {
    match peer {
        None => {
            let devices = device.own_devices().await?;
            report_own_devices(device, &devices, sink);
        }
        Some(peer) => {
            for known in device.known_devices(peer).await? {
                sink(Event::Device {
                    name: peer.to_owned(),
                    device: known.address.device.0,
                    fingerprint: known
                        .identity_key
                        .as_ref()
                        .map_or_else(String::new, |key| fingerprint(key)),
                    current: known.current,
                    this_device: false,
                });
            }
        }
    }
    Ok(())
}

/// `relay remove-device N`: removes device `number` of this account and reports the devices
/// left.
pub async fn remove_device(
    device: &Device,
    number: u32,
    sink: &mut dyn FnMut(Event),
) -> Result<()> {
    let devices = device.remove_device(number).await?;
    report_own_devices(device, &devices, sink);
    Ok(())
}

fn report_own_devices(device: &Device, devices: &[DeviceKeys], sink: &mut dyn FnMut(Event)) {
    let identity = device.identity();
    for listed in devices {
        sink(Event::Device {
            name: identity.name.clone(),
            device: listed.device,
            fingerprint: fingerprint(&listed.identity_key),
            current: true,
            this_device: listed.device == identity.device.0,
        });
    }
}

/// What `relay group ...` and `relay groups` ask of [`group`].
#[derive(Debug, Clone, Copy)]
pub enum GroupRequest<'a> {
    /// Create a group named `name` with `members` (names).
    Create {
        /// The group's name.
        name: &'a str,
        /// The other first members.
        members: &'a [&'a str],
    },
    /// Add members (admins).
    Add {
        /// The group.
        group: u64,
        /// The names to add.
        members: &'a [&'a str],
    },
    /// Remove a member (admins).
    Remove {
        /// The group.
        group: u64,
        /// The name to remove.
        member: &'a str,
    },
    /// Leave the group.
    Leave {
        /// The group.
        group: u64,
    },
    /// Rename the group (admins).
    Rename {
        /// The group.
        group: u64,
        /// The new name.
        name: &'a str,
    },
    /// Make a member an admin, or a plain member (admins).
    Admin {
        /// The group.
        group: u64,
        /// The member's name.
        member: &'a str,
        /// Admin or not.
        admin: bool,
    },
    /// The group with its members.
    Info {
        /// The group.
        group: u64,
    },
    /// This account's groups.
    List,
}

/// `relay group ...` / `relay groups`: runs `request` and reports the group (then its members)
/// or the groups.
pub async fn group(
    device: &Device,
    request: GroupRequest<'_>,
    sink: &mut dyn FnMut(Event),
) -> Result<()> {
    let group = match request {
        GroupRequest::Create { name, members } => device.create_group(name, members).await?,
        GroupRequest::Add { group, members } => device.add_group_members(group, members).await?,
        GroupRequest::Remove { group, member } => device.remove_group_member(group, member).await?,
        GroupRequest::Leave { group } => {
            device.leave_group(group).await?;
            sink(Event::GroupLeft { id: group });
            return Ok(());
        }
        GroupRequest::Rename { group, name } => device.rename_group(group, name).await?,
        GroupRequest::Admin {
            group,
            member,
            admin,
        } => device.set_group_admin(group, member, admin).await?,
        GroupRequest::Info { group } => device.group(group).await?,
        GroupRequest::List => {
            for group in device.groups().await? {
                report_group(&group, sink);
            }
            return Ok(());
        }
    };
    report_group(&group, sink);
    Ok(())
}

fn report_group(group: &Group, sink: &mut dyn FnMut(Event)) {
    sink(Event::Group {
        id: group.id,
        name: group.name.clone(),
        version: group.version,
        home_region: group.home_region,
        member_count: group.member_count,
    });
    for member in &group.members {
        sink(Event::GroupMember {
            group: group.id,
            name: member.name.clone(),
            account: member.account,
            admin: member.admin,
        });
    }
}

/// Reports outbox entries and drafts still waiting (all, or just `only`), with the last
/// problem seen.
async fn report_still_pending(
    device: &Device,
    only: Option<ClientMessageId>,
    sink: &mut dyn FnMut(Event),
) -> Result<()> {
    for pending in device.still_pending(only).await? {
        sink(Event::StillPending {
            id: pending.id.to_string(),
            peer: pending.peer,
            reason: pending.reason,
        });
    }
    Ok(())
}

/// A connection event as a command shows it: a note (`reconnected` only once `listening` was
/// announced), or nothing; every other event as it is.
fn connection_note(event: Event, listening: bool) -> Option<Event> {
    match event {
        Event::Connected { edge } => listening.then(|| Event::Note {
            message: format!("reconnected to the edge at {edge}"),
        }),
        Event::Disconnected {
            reason,
            retry_in_ms: Some(delay),
            ..
        } => Some(Event::Note {
            message: format!("{reason}; retrying in {delay} ms"),
        }),
        Event::Disconnected { reason, .. } => Some(Event::Note {
            message: format!("connection to the edge lost ({reason}); reconnecting"),
        }),
        Event::RolledBack { .. } => None,
        other => Some(other),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
