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

use std::collections::{BTreeMap, BTreeSet};

use relay_proto::DeviceAddress;
use relay_proto::limits::SUBSCRIBE_DEVICES_PER_FRAME_MAX;
use relay_proto::wire;

use crate::limits::SUBSCRIPTION_CHANGES_MAX;

/// The subscription changes waiting for one region's stream.
#[derive(Debug, Default)]
pub struct PendingSubscriptions {
    /// Device → whether it is connected here now.
    changes: BTreeMap<DeviceAddress, bool>,
    /// Changes were dropped: the stream must be resynced.
    overflowed: bool,
}

/// What a subscription stream has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionWork {
    /// Send these changes: device → whether it is connected here now.
    Changes(BTreeMap<DeviceAddress, bool>),
    /// Compare what the region has with every device connected now.
    Resync,
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

    /// Takes what waits, if anything.
    pub fn poll_work(&mut self) -> Option<SubscriptionWork> {
        if std::mem::take(&mut self.overflowed) {
            self.changes.clear();
            return Some(SubscriptionWork::Resync);
        }
        if self.changes.is_empty() {
            return None;
        }
        Some(SubscriptionWork::Changes(std::mem::take(&mut self.changes)))
    }

    /// Forgets what waits: the stream is (re-)opened with every device connected now.
    pub fn clear(&mut self) {
        self.changes.clear();
        self.overflowed = false;
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
        })
        .collect();
    frames.extend(remove.map(|remove| wire::Subscribe {
        add: Vec::new(),
        remove: remove.iter().map(|&device| device.into()).collect(),
    }));
    if frames.is_empty() {
        frames.push(wire::Subscribe::default());
    }
    frames
}

#[cfg(test)]
mod tests {
    use relay_proto::{AccountId, DeviceId};

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
}
