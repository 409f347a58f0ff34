//! The edge's subscription stream to each region: the devices connected here that the region
//! pushes to, the watches and typing it forwards, and the pushes and presence it sends back.

use std::collections::BTreeSet;
use std::time::Duration;

use relay_net::{self as net, NetError};
use relay_proto::wire::{
    self, RegionRequest, RegionResponse, region_request, region_response, server_push,
};
use relay_proto::{AccountId, DeviceAddress, ProtoError, RegionId};

use super::EdgeService;
use crate::limits::RESUBSCRIBE_DELAY_MS;
use crate::subscriptions::{SubscriptionWork, change_frames, resync_frames, signal_frames};

/// Writes `frames` on a subscription stream, in order.
async fn write_subscribe_frames(
    send: &mut quinn::SendStream,
    frames: Vec<wire::Subscribe>,
) -> Result<(), NetError> {
    for frame in frames {
        let frame = RegionRequest {
            body: Some(region_request::Body::Subscribe(frame)),
        };
        net::write_frame(send, &frame).await?;
    }
    Ok(())
}

impl EdgeService {
    /// Keeps a subscription stream open to `region` for the devices homed there and connected
    /// here, re-opening it after a failure and then nudging those devices to fetch what they
    /// may have missed meanwhile.
    pub(super) async fn subscription(self, region: RegionId) {
        let Some(changes) = self.inner.subscriptions.get(&region).cloned() else {
            return;
        };
        let mut reconnecting = false;
        loop {
            if reconnecting {
                tokio::time::sleep(Duration::from_millis(RESUBSCRIBE_DELAY_MS)).await;
            }
            reconnecting = true;
            // The opening frames list every device connected from here on; a change made
            // meanwhile waits again and is sent after them (or found already sent).
            changes.clear();
            let connected = self.connected_homed_in(region);
            let connection = match self.inner.links.connection(region.0).await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::debug!(%region, %error, "region unreachable for subscriptions");
                    continue;
                }
            };
            let (mut send, recv) = match connection.open_bi().await {
                Ok(streams) => streams,
                Err(_) => {
                    self.inner.links.forget(region.0).await;
                    continue;
                }
            };
            let mut subscribed = BTreeSet::new();
            let mut opening = resync_frames(&mut subscribed, connected, true);
            let watched = self
                .inner
                .watches
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .watched_in(region);
            let watches = watched
                .into_iter()
                .map(|(watcher, account)| wire::PresenceWatchFrom {
                    watcher: watcher.into(),
                    account: account.0,
                    watch: true,
                })
                .collect();
            opening.extend(signal_frames(watches, Vec::new()));
            if write_subscribe_frames(&mut send, opening).await.is_err() {
                continue;
            }
            tracing::info!(%region, devices = subscribed.len(), "subscribed to region");
            for &device in &subscribed {
                self.push_to(device, 0, Vec::new());
            }
            // Read beside the writes below, so a read may be dropped halfway: it must lose
            // nothing (a `net::read_frame` dropped so lost the bytes it took, and the stream's
            // next read began inside a push: pushes went missing until the stream failed).
            let mut frames = net::FrameReader::new(recv);
            let mut reopen = false;
            loop {
                tokio::select! {
                    () = changes.wake.notified() => {
                        let frames = match changes.poll_work() {
                            None => continue,
                            Some(SubscriptionWork::Changes(pending)) => change_frames(&mut subscribed, pending),
                            Some(SubscriptionWork::Resync) => {
                                tracing::info!(%region, "many subscription changes at once; resyncing the stream");
                                resync_frames(&mut subscribed, self.connected_homed_in(region), false)
                            }
                            Some(SubscriptionWork::Signals(frames)) => frames,
                            Some(SubscriptionWork::Reopen) => {
                                tracing::info!(%region, "many presence watches changed at once; re-opening the stream");
                                reopen = true;
                                break;
                            }
                        };
                        // More may wait than one wake-up said.
                        changes.wake.notify_one();
                        if write_subscribe_frames(&mut send, frames).await.is_err() {
                            break;
                        }
                    }
                    frame = frames.read::<RegionResponse>() => {
                        match frame {
                            Ok(Some(RegionResponse { body: Some(region_response::Body::QueueAvailable(push)) })) => {
                                if let Ok(device) = push.device.parse() {
                                    self.push_to(device, push.latest_queue_seq, push.entries);
                                }
                            }
                            Ok(Some(RegionResponse { body: Some(region_response::Body::Presence(update)) })) => {
                                self.presence_update(region, update);
                            }
                            Ok(Some(RegionResponse { body: Some(region_response::Body::AccountMoved(moved)) })) => {
                                self.account_moved(region, &moved.account);
                            }
                            Ok(Some(RegionResponse { body: Some(region_response::Body::Typing(notice)) })) => {
                                if let Ok(device) = notice.to.parse() {
                                    self.event_to(device, server_push::Event::Typing(notice));
                                }
                            }
                            Ok(Some(_)) => tracing::warn!(%region, "unexpected frame on a subscription stream"),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            if reopen {
                // Only this stream starts over (the region drops what it held for it when it
                // ends); the link to the region and its other streams stay.
                let _ = send.finish();
                reconnecting = false;
                continue;
            }
            tracing::warn!(%region, "subscription stream lost; re-opening");
            self.inner.links.forget(region.0).await;
        }
    }

    /// `region`'s presence update for a watcher here: delivered if it still watches the
    /// account there.
    fn presence_update(&self, region: RegionId, update: wire::PresenceUpdate) {
        let Ok(watcher) = update.watcher.parse() else {
            return;
        };
        let watches = self
            .inner
            .watches
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .watches(watcher, AccountId(update.info.account), region);
        if watches {
            self.event_to(watcher, server_push::Event::Presence(update.info));
        }
    }

    /// `watcher` begins or ends a watch of `account`, passed to the account's home region.
    pub(super) async fn watch(
        &self,
        watcher: DeviceAddress,
        account: AccountId,
        watch: bool,
    ) -> Result<(), ProtoError> {
        let home = if watch {
            let home = self.home_of(account).await?;
            self.inner
                .watches
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .handle_watch(watcher, account, home)?;
            Some(home)
        } else {
            self.inner
                .watches
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .handle_unwatch(watcher, account)
        };
        // Watching again asks the region again: the device gets the state now either way.
        if let Some(subscription) = home.and_then(|home| self.inner.subscriptions.get(&home)) {
            subscription.handle_watch(watcher, account, watch);
        }
        Ok(())
    }

    /// The devices connected here whose home is `region`.
    fn connected_homed_in(&self, region: RegionId) -> BTreeSet<DeviceAddress> {
        let devices = self
            .inner
            .devices
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        devices
            .iter()
            .filter(|(_, connections)| connections.iter().any(|connected| connected.home == region))
            .map(|(device, _)| *device)
            .collect()
    }
}
