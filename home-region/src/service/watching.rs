//! Presence and typing: edge streams subscribed to devices, presence changes pushed to the
//! watchers allowed to see them (per account privacy), typing indicators to a peer or a group.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use fdb_layers::directory;
use relay_net as net;
use relay_proto::frame::encode_frame_into;
use relay_proto::limits::SUBSCRIBED_DEVICES_PER_STREAM_MAX;
use relay_proto::wire::{self, RegionRequest, RegionResponse, region_request, region_response};
use relay_proto::{AccountId, DeviceAddress, GroupId, ProtoError};

use super::{PushSender, RegionService, lock, store_failure};
use crate::core::{self, GroupMembership};
use crate::limits::SUBSCRIPTION_WRITE_BYTES_MAX;
use crate::presence;

impl RegionService {
    pub(super) async fn serve_subscription(
        self,
        first: wire::Subscribe,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let stream_id = self.inner.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let push_sender = PushSender::default();
        lock(&self.inner.streams).insert(stream_id, push_sender.clone());
        let mut subscribed = 0;
        self.change_subscriptions(stream_id, &push_sender, &first, &mut subscribed);
        let writer = async {
            // The pushes waiting go out in one write, up to SUBSCRIPTION_WRITE_BYTES_MAX: quinn
            // keeps each write as a segment of the stream's send buffer and finds every packet's
            // bytes by scanning the unacknowledged segments from the oldest, so a presence change
            // told to thousands of watchers, one small write each, cost time quadratic in them.
            let mut bytes = Vec::new();
            loop {
                let mut waiting = push_sender.take().await.into_iter().peekable();
                while let Some(push) = waiting.next() {
                    encode_frame_into(&RegionResponse { body: Some(push) }, &mut bytes);
                    if bytes.len() >= SUBSCRIPTION_WRITE_BYTES_MAX || waiting.peek().is_none() {
                        if send.write_all(&bytes).await.is_err() {
                            return;
                        }
                        bytes.clear();
                    }
                }
            }
        };
        let reader = async {
            // After the writer started: the first frame's watches may answer more updates
            // than the push channel holds.
            self.presence_signals(stream_id, &first).await;
            loop {
                match net::read_frame::<RegionRequest>(&mut recv).await {
                    Ok(Some(RegionRequest {
                        body: Some(region_request::Body::Subscribe(change)),
                    })) => {
                        self.change_subscriptions(
                            stream_id,
                            &push_sender,
                            &change,
                            &mut subscribed,
                        );
                        self.presence_signals(stream_id, &change).await;
                    }
                    Ok(Some(_)) => {
                        tracing::warn!("ignoring a non-subscribe frame on a subscription stream")
                    }
                    Ok(None) | Err(_) => return,
                }
            }
        };
        tokio::select! {
            () = writer => {}
            () = reader => {}
        }
        lock(&self.inner.streams).remove(&stream_id);
        lock(&self.inner.presence).handle_stream_closed(stream_id);
        let mut left = Vec::new();
        lock(&self.inner.subscriptions).retain(|device, streams| {
            if streams.remove(&stream_id).is_some() && streams.is_empty() {
                left.push(*device);
            }
            !streams.is_empty()
        });
        for device in &left {
            self.inner.pusher.handle_left(&self.inner.db, *device);
        }
        self.presence_changed(&[], &left);
    }

    /// Applies one `Subscribe` frame of stream `stream_id`, which has `subscribed` devices: at
    /// most [`SUBSCRIBED_DEVICES_PER_STREAM_MAX`], further adds are ignored (and logged; the
    /// devices still fetch on their own, they only miss the hints).
    fn change_subscriptions(
        &self,
        stream_id: u64,
        sender: &PushSender,
        change: &wire::Subscribe,
        subscribed: &mut usize,
    ) {
        let mut subscriptions = lock(&self.inner.subscriptions);
        let mut ignored = 0;
        let mut arrived = Vec::new();
        let mut left = Vec::new();
        for device in change.add.iter().filter_map(|device| device.parse().ok()) {
            let streams = subscriptions.entry(device).or_default();
            if streams.contains_key(&stream_id) {
                continue;
            }
            if *subscribed >= SUBSCRIBED_DEVICES_PER_STREAM_MAX {
                ignored += 1;
                if streams.is_empty() {
                    subscriptions.remove(&device);
                }
                continue;
            }
            if streams.is_empty() {
                arrived.push(device);
                self.inner.pusher.handle_connected(device);
            }
            streams.insert(stream_id, sender.clone());
            *subscribed += 1;
        }
        for device in change
            .remove
            .iter()
            .filter_map(|device| device.parse().ok())
        {
            if let Some(streams) = subscriptions.get_mut(&device)
                && streams.remove(&stream_id).is_some()
            {
                *subscribed -= 1;
                if streams.is_empty() {
                    subscriptions.remove(&device);
                    left.push(device);
                    self.inner.pusher.handle_left(&self.inner.db, device);
                }
            }
        }
        drop(subscriptions);
        self.presence_changed(&arrived, &left);
        if ignored > 0 {
            tracing::warn!(
                ignored,
                subscribed = *subscribed,
                "an edge subscribed more devices than one stream may hold; their pushes are dropped"
            );
        }
    }

    /// Devices of this region that connected (`arrived`) or left: their accounts' watchers are
    /// told, and an account whose last device left has its last-seen time stored (in the
    /// background; a failed write only leaves an older time for after a restart).
    fn presence_changed(&self, arrived: &[DeviceAddress], left: &[DeviceAddress]) {
        if arrived.is_empty() && left.is_empty() {
            return;
        }
        let now_ms = self.inner.clock.now_ms();
        let mut updates = Vec::new();
        let mut departures = Vec::new();
        {
            let mut board = lock(&self.inner.presence);
            for &device in arrived {
                updates.extend(board.handle_device_connected(device));
            }
            for &device in left {
                let (told, last_seen) = board.handle_device_left(device, now_ms);
                updates.extend(told);
                if let Some(last_seen_ms) = last_seen {
                    departures.push((device.account, last_seen_ms));
                }
            }
        }
        self.push_presence(updates);
        if departures.is_empty() {
            return;
        }
        let db = self.inner.db.clone();
        tokio::spawn(async move {
            let written = db
                .transact(|tx| {
                    let departures = departures.clone();
                    async move {
                        for (account, at_ms) in departures {
                            fdb_layers::presence::record_last_seen(&tx, account, at_ms)?;
                        }
                        Ok(())
                    }
                })
                .await;
            if let Err(error) = written {
                tracing::warn!(%error, "could not store last-seen times");
            }
        });
    }

    /// The presence watches and typing indicators of one `Subscribe` frame of stream
    /// `stream_id`, in order. A watch of an account not loaded yet reads its stored presence
    /// first, so this stream's later frames wait for that read (one snapshot read).
    async fn presence_signals(&self, stream_id: u64, change: &wire::Subscribe) {
        for watch in &change.watch {
            let Ok((watcher, account)) = watch.parse() else {
                tracing::warn!("ignoring a malformed presence watch");
                continue;
            };
            if !watch.watch {
                lock(&self.inner.presence).handle_unwatch(stream_id, watcher, account);
                continue;
            }
            let mut homed_here = true;
            if lock(&self.inner.presence).needs_load(account) {
                let local = self.inner.region;
                let loaded = self
                    .inner
                    .db
                    .transact(|tx| async move {
                        let home = directory::account_by_id(&tx, account).await?;
                        let record = fdb_layers::presence::read(&tx, account).await?;
                        Ok((home.is_some_and(|home| home.home_region == local), record))
                    })
                    .await;
                match loaded {
                    Ok((homed, record)) => {
                        homed_here = homed;
                        lock(&self.inner.presence).handle_loaded(account, &record);
                    }
                    Err(error) => {
                        // Not kept: the watcher sees `Unknown` and watches again later.
                        tracing::warn!(%error, %account, "could not read an account's presence");
                        homed_here = false;
                    }
                }
            }
            let update =
                lock(&self.inner.presence).handle_watch(stream_id, watcher, account, homed_here);
            self.push_presence(vec![update]);
        }
        for typing in &change.typing {
            let Ok(from) = typing.from.parse() else {
                tracing::warn!("ignoring a malformed typing indicator");
                continue;
            };
            if typing.group != 0 {
                self.group_typing(from, GroupId(typing.group), typing.typing)
                    .await;
                continue;
            }
            let devices = lock(&self.inner.presence).connected_devices(AccountId(typing.to));
            self.push_typing(devices, from, 0, typing.typing);
        }
    }

    /// A typing indicator of `from`'s in `group`'s chat: passed to the connected devices of the
    /// members homed here when `from`'s account is a member (else dropped, as a non-member sees
    /// nothing of a group). The writer reads the membership in its store; another region uses
    /// its cached membership (kept current by the writer's change notices) and, without one,
    /// asks the writer in a task of its own, so this stream's later frames never wait for
    /// another region, and passes the indicator on when the answer comes.
    async fn group_typing(&self, from: DeviceAddress, group: GroupId, typing: bool) {
        if self.inner.writer == self.inner.region {
            let found = self
                .inner
                .db
                .transact(|tx| async move { core::group_membership(&tx, group).await })
                .await;
            match found {
                Ok(Some(membership)) => self.push_group_typing(&membership, from, typing),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, %group, "could not read a group for typing"),
            }
            return;
        }
        if let Some(membership) = self.cached_membership(group, 0) {
            self.push_group_typing(&membership, from, typing);
            return;
        }
        let service = self.clone();
        tokio::spawn(async move {
            match service.known_membership(group, 0).await {
                Ok(membership) => service.push_group_typing(&membership, from, typing),
                Err(error) => tracing::debug!(%error, %group, "a group typing indicator dropped"),
            }
        });
    }

    /// Passes a group typing indicator to the connected devices of `membership`'s members
    /// homed here, when `from`'s account is a member.
    fn push_group_typing(&self, membership: &GroupMembership, from: DeviceAddress, typing: bool) {
        if !membership.members.contains(&from.account) {
            return;
        }
        let devices: Vec<DeviceAddress> = {
            let board = lock(&self.inner.presence);
            membership
                .members
                .iter()
                .flat_map(|&member| board.connected_devices(member))
                .collect()
        };
        self.push_typing(devices, from, membership.group.0, typing);
    }

    /// Pushes a typing notice of `from`'s (in `group`'s chat, or 1:1 with 0) to each of
    /// `devices` but `from` itself.
    fn push_typing(
        &self,
        devices: Vec<DeviceAddress>,
        from: DeviceAddress,
        group: u64,
        typing: bool,
    ) {
        let subscriptions = lock(&self.inner.subscriptions);
        for device in devices {
            if device == from {
                continue;
            }
            let notice = wire::TypingNotice {
                to: device.into(),
                from: from.into(),
                typing,
                group,
            };
            // Ephemeral: a full stream drops it, and the receiver's "typing…" expires.
            for sender in subscriptions
                .get(&device)
                .into_iter()
                .flat_map(BTreeMap::values)
            {
                let _ = sender.event(region_response::Body::Typing(notice));
            }
        }
    }

    /// Pushes presence updates to the streams of their watchers' edges.
    fn push_presence(&self, updates: Vec<presence::Update>) {
        if updates.is_empty() {
            return;
        }
        let streams = lock(&self.inner.streams);
        for update in updates {
            let Some(sender) = streams.get(&update.stream) else {
                continue;
            };
            let push = wire::PresenceUpdate {
                watcher: update.watcher.into(),
                info: update.info,
            };
            if sender.event(region_response::Body::Presence(push)).is_err() {
                tracing::warn!(watcher = %update.watcher, "edge subscription is full; dropping a presence update");
            }
        }
    }

    /// Reads or sets the presence privacy of `device`'s account (a device homed here).
    pub(super) async fn presence_privacy(
        &self,
        for_device: wire::ForDevice,
    ) -> Result<wire::PresencePrivacy, ProtoError> {
        let device = for_device.device.parse()?;
        let account = device.account;
        let set = for_device
            .presence_privacy
            .and_then(|request| request.privacy);
        let Some(privacy) = set else {
            let record = self
                .inner
                .db
                .transact(|tx| async move { fdb_layers::presence::read(&tx, account).await })
                .await
                .map_err(store_failure)?;
            return Ok(record.privacy.unwrap_or_default());
        };
        privacy.validate()?;
        let mut privacy = privacy;
        privacy.contacts.sort_unstable();
        privacy.contacts.dedup();
        let stored = privacy.clone();
        self.inner
            .db
            .transact(|tx| {
                let stored = stored.clone();
                async move { fdb_layers::presence::set_privacy(&tx, account, &stored) }
            })
            .await
            .map_err(store_failure)?;
        let updates = lock(&self.inner.presence).handle_privacy(account, &privacy);
        self.push_presence(updates);
        Ok(privacy)
    }
}
