//! What an edge's subscription stream to one region has to send, sans-IO: the devices homed
//! there that connected or left since the last frame, and the `Subscribe` frames that bring the
//! region's view in line with the edge's.
//!
//! Changes wait in [`PendingSubscriptions`], one entry per device (its latest state: a device
//! that connects and leaves before the next frame costs nothing), at most
//! [`SUBSCRIPTION_CHANGES_MAX`] of them: past that the changes are dropped and the next frame
//! is a resync against the devices connected then, as after a reconnect. No change is ever
//! lost, and nothing grows with how fast devices come and go. Frames list at most
//! [`SUBSCRIBE_DEVICES_PER_FRAME_MAX`] devices each way, so any number of connected devices
//! fits the frame limit.
//!
//! The same stream carries the presence watches of devices connected here (of accounts homed in
//! the region) and typing indicators for those accounts ([`PendingSubscriptions::handle_watch`],
//! [`PendingSubscriptions::handle_typing`]). A watch change waits as a device change does (the
//! latest per watch); past the bound the stream is re-opened, which re-sends every watch. Typing
//! indicators are ephemeral: past [`TYPING_WAITING_MAX`] new ones are dropped.

use std::collections::{BTreeMap, BTreeSet};

use relay_proto::limits::{SUBSCRIBE_DEVICES_PER_FRAME_MAX, SUBSCRIBE_SIGNALS_PER_FRAME_MAX};
use relay_proto::wire;
use relay_proto::{AccountId, DeviceAddress};

use crate::limits::{SUBSCRIPTION_CHANGES_MAX, TYPING_WAITING_MAX};

/// The subscription changes waiting for one region's stream.
#[derive(Debug, Default)]
pub struct PendingSubscriptions {
    /// Device → whether it is connected here now.
    changes: BTreeMap<DeviceAddress, bool>,
    /// Changes were dropped: the stream must be resynced.
    overflowed: bool,
    /// (watcher, watched account) → whether it watches now.
    watches: BTreeMap<(DeviceAddress, AccountId), bool>,
    /// Watch changes were dropped: the stream must be re-opened (which sends every watch).
    watches_overflowed: bool,
    /// Typing indicators, oldest first.
    typing: Vec<wire::TypingForward>,
}

/// What a subscription stream has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionWork {
    /// Send these changes: device → whether it is connected here now.
    Changes(BTreeMap<DeviceAddress, bool>),
    /// Compare what the region has with every device connected now.
    Resync,
    /// Send these presence watch changes and typing indicators.
    Signals(Vec<wire::Subscribe>),
    /// Open the stream anew: the region's view is rebuilt from every device and watch now.
    Reopen,
}

impl PendingSubscriptions {
    /// `device` connected here (`true`) or left (`false`).
    pub fn handle_change(&mut self, device: DeviceAddress, connected: bool) {
        if self.overflowed {
            return;
        }
        self.changes.insert(device, connected);
        if self.changes.len() > SUBSCRIPTION_CHANGES_MAX {
            self.changes.clear();
            self.overflowed = true;
        }
    }

    /// `watcher` (connected here) began (`watch`) or ended a watch of `account`.
    pub fn handle_watch(&mut self, watcher: DeviceAddress, account: AccountId, watch: bool) {
        if self.watches_overflowed {
            return;
        }
        self.watches.insert((watcher, account), watch);
        if self.watches.len() > SUBSCRIPTION_CHANGES_MAX {
            self.watches.clear();
            self.watches_overflowed = true;
        }
    }

    /// A typing indicator for an account homed in the region (dropped past the bound).
    pub fn handle_typing(&mut self, typing: wire::TypingForward) {
        if self.typing.len() < TYPING_WAITING_MAX {
            self.typing.push(typing);
        }
    }

    /// Takes what waits, if anything.
    pub fn poll_work(&mut self) -> Option<SubscriptionWork> {
        if std::mem::take(&mut self.watches_overflowed) {
            self.clear();
            return Some(SubscriptionWork::Reopen);
        }
        if !self.watches.is_empty() || !self.typing.is_empty() {
            let watch: Vec<wire::PresenceWatchFrom> = std::mem::take(&mut self.watches)
                .into_iter()
                .map(|((watcher, account), watch)| wire::PresenceWatchFrom {
                    watcher: watcher.into(),
                    account: account.0,
                    watch,
                })
                .collect();
            let typing = std::mem::take(&mut self.typing);
            return Some(SubscriptionWork::Signals(signal_frames(watch, typing)));
        }
        if std::mem::take(&mut self.overflowed) {
            self.changes.clear();
            return Some(SubscriptionWork::Resync);
        }
        if self.changes.is_empty() {
            return None;
        }
        Some(SubscriptionWork::Changes(std::mem::take(&mut self.changes)))
    }

    /// Forgets what waits: the stream is (re-)opened with every device connected now and
    /// every watch (typing indicators waiting are dropped: they are ephemeral).
    pub fn clear(&mut self) {
        self.changes.clear();
        self.overflowed = false;
        self.watches.clear();
        self.watches_overflowed = false;
        self.typing.clear();
    }
}

/// `watch` and `typing` in frames of at most [`SUBSCRIBE_SIGNALS_PER_FRAME_MAX`] of each (no
/// frame when both are empty).
pub fn signal_frames(
    watch: Vec<wire::PresenceWatchFrom>,
    typing: Vec<wire::TypingForward>,
) -> Vec<wire::Subscribe> {
    let mut watch = watch.chunks(SUBSCRIBE_SIGNALS_PER_FRAME_MAX);
    let mut typing = typing.chunks(SUBSCRIBE_SIGNALS_PER_FRAME_MAX);
    let mut frames = Vec::new();
    loop {
        let (next_watch, next_typing) = (watch.next(), typing.next());
        if next_watch.is_none() && next_typing.is_none() {
            return frames;
        }
        frames.push(wire::Subscribe {
            watch: next_watch.map(<[_]>::to_vec).unwrap_or_default(),
            typing: next_typing.map(<[_]>::to_vec).unwrap_or_default(),
            ..wire::Subscribe::default()
        });
    }
}

/// The frames that tell the region `changes`, updating `subscribed` (what the region has); no
/// frame when nothing differs.
pub fn change_frames(
    subscribed: &mut BTreeSet<DeviceAddress>,
    changes: BTreeMap<DeviceAddress, bool>,
) -> Vec<wire::Subscribe> {
    let mut add = Vec::new();
    let mut remove = Vec::new();
    for (device, connected) in changes {
        if connected && subscribed.insert(device) {
            add.push(device);
        } else if !connected && subscribed.remove(&device) {
            remove.push(device);
        }
    }
    if add.is_empty() && remove.is_empty() {
        return Vec::new();
    }
    frames(&add, &remove)
}

/// The frames that bring `subscribed` (what the region has) to `connected`, updating it. With
/// `opening`, at least one frame (a stream opens with a `Subscribe`), else none when nothing
/// differs.
pub fn resync_frames(
    subscribed: &mut BTreeSet<DeviceAddress>,
    connected: BTreeSet<DeviceAddress>,
    opening: bool,
) -> Vec<wire::Subscribe> {
    let add: Vec<DeviceAddress> = connected.difference(subscribed).copied().collect();
    let remove: Vec<DeviceAddress> = subscribed.difference(&connected).copied().collect();
    *subscribed = connected;
    if !opening && add.is_empty() && remove.is_empty() {
        return Vec::new();
    }
    frames(&add, &remove)
}

/// `add` and `remove` split into frames of at most [`SUBSCRIBE_DEVICES_PER_FRAME_MAX`] devices
/// each way; one frame at least.
fn frames(add: &[DeviceAddress], remove: &[DeviceAddress]) -> Vec<wire::Subscribe> {
    let add = add.chunks(SUBSCRIBE_DEVICES_PER_FRAME_MAX);
    let mut remove = remove.chunks(SUBSCRIBE_DEVICES_PER_FRAME_MAX);
    let mut frames: Vec<wire::Subscribe> = add
        .map(|add| wire::Subscribe {
            add: add.iter().map(|&device| device.into()).collect(),
            remove: remove
                .next()
                .map(|remove| remove.iter().map(|&device| device.into()).collect())
                .unwrap_or_default(),
            ..wire::Subscribe::default()
        })
        .collect();
    frames.extend(remove.map(|remove| wire::Subscribe {
        remove: remove.iter().map(|&device| device.into()).collect(),
        ..wire::Subscribe::default()
    }));
    if frames.is_empty() {
        frames.push(wire::Subscribe::default());
    }
    frames
}

#[cfg(test)]
mod tests {
    use relay_proto::DeviceId;

    use super::*;

    fn device(account: u64) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(account),
            device: DeviceId(1),
        }
    }

    fn listed(frames: &[wire::Subscribe]) -> (usize, usize) {
        frames.iter().fold((0, 0), |(add, remove), frame| {
            (add + frame.add.len(), remove + frame.remove.len())
        })
    }

    #[test]
    fn a_device_that_comes_and_goes_between_frames_costs_nothing() {
        let mut pending = PendingSubscriptions::default();
        assert_eq!(pending.poll_work(), None);
        pending.handle_change(device(1), true);
        pending.handle_change(device(2), true);
        pending.handle_change(device(2), false);
        let Some(SubscriptionWork::Changes(changes)) = pending.poll_work() else {
            panic!("changes wait");
        };
        let mut subscribed = BTreeSet::new();
        let frames = change_frames(&mut subscribed, changes);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].add, vec![device(1).into()]);
        assert!(frames[0].remove.is_empty(), "2 was never subscribed");
        assert_eq!(pending.poll_work(), None, "taken");
        // Telling the region what it has already sends nothing.
        assert!(change_frames(&mut subscribed, BTreeMap::from([(device(1), true)])).is_empty());
        let frames = change_frames(&mut subscribed, BTreeMap::from([(device(1), false)]));
        assert_eq!(listed(&frames), (0, 1));
        assert!(subscribed.is_empty());
    }

    #[test]
    fn too_many_changes_turn_into_a_resync_and_lose_nothing() {
        let mut pending = PendingSubscriptions::default();
        for account in 0..=SUBSCRIPTION_CHANGES_MAX as u64 {
            pending.handle_change(device(account), true);
        }
        pending.handle_change(device(u64::MAX), true);
        assert_eq!(pending.poll_work(), Some(SubscriptionWork::Resync));
        assert_eq!(pending.poll_work(), None);
        // The resync brings the region's view to the devices connected now, whatever it was.
        let mut subscribed: BTreeSet<DeviceAddress> = (0..10).map(device).collect();
        let connected: BTreeSet<DeviceAddress> = (5..20_000).map(device).collect();
        let frames = resync_frames(&mut subscribed, connected.clone(), false);
        assert_eq!(listed(&frames), (20_000 - 10, 5));
        assert!(frames.iter().all(|frame| {
            frame.add.len() <= SUBSCRIBE_DEVICES_PER_FRAME_MAX
                && frame.remove.len() <= SUBSCRIBE_DEVICES_PER_FRAME_MAX
        }));
        assert_eq!(subscribed, connected);
        assert!(resync_frames(&mut subscribed, connected.clone(), false).is_empty());
        // A stream opens with a frame even when no device is connected.
        let frames = resync_frames(&mut BTreeSet::new(), BTreeSet::new(), true);
        assert_eq!(frames, vec![wire::Subscribe::default()]);
        // Clearing forgets an overflow too.
        for account in 0..=SUBSCRIPTION_CHANGES_MAX as u64 {
            pending.handle_change(device(account), false);
        }
        pending.clear();
        assert_eq!(pending.poll_work(), None);
    }

    #[test]
    fn watches_wait_as_their_latest_state_and_typing_is_bounded() {
        let mut pending = PendingSubscriptions::default();
        pending.handle_watch(device(1), AccountId(9), true);
        pending.handle_watch(device(1), AccountId(9), false);
        pending.handle_watch(device(2), AccountId(9), true);
        for _ in 0..TYPING_WAITING_MAX + 10 {
            pending.handle_typing(wire::TypingForward {
                from: device(1).into(),
                to: 9,
                typing: true,
                group: 0,
            });
        }
        pending.handle_change(device(3), true);
        let Some(SubscriptionWork::Signals(frames)) = pending.poll_work() else {
            panic!("signals first");
        };
        let watches: Vec<(u64, bool)> = frames
            .iter()
            .flat_map(|frame| {
                frame
                    .watch
                    .iter()
                    .map(|watch| (watch.watcher.account, watch.watch))
            })
            .collect();
        assert_eq!(watches, vec![(1, false), (2, true)], "the latest per watch");
        let typing: usize = frames.iter().map(|frame| frame.typing.len()).sum();
        assert_eq!(typing, TYPING_WAITING_MAX, "the rest were dropped");
        assert!(frames.iter().all(|frame| frame.add.is_empty()
            && frame.watch.len() <= SUBSCRIBE_SIGNALS_PER_FRAME_MAX
            && frame.typing.len() <= SUBSCRIBE_SIGNALS_PER_FRAME_MAX));
        assert!(matches!(
            pending.poll_work(),
            Some(SubscriptionWork::Changes(_))
        ));
        assert_eq!(pending.poll_work(), None);
        // Too many watch changes at once re-open the stream, which re-sends every watch.
        for account in 0..=SUBSCRIPTION_CHANGES_MAX as u64 {
            pending.handle_watch(device(1), AccountId(account + 1), true);
        }
        assert_eq!(pending.poll_work(), Some(SubscriptionWork::Reopen));
        assert_eq!(pending.poll_work(), None);
    }
}
