//! The presence watches of the devices connected to an edge, sans-IO: which accounts each
//! watches and where those accounts live. The edge passes each watch to the watched account's
//! home region on its subscription stream there, re-sends them all when that stream re-opens
//! ([`Watches::watched_in`]), ends them when the watcher's last connection here closes
//! ([`Watches::handle_watcher_left`]), and delivers a region's presence update only to a device
//! that still watches ([`Watches::watches`]).

use std::collections::BTreeMap;

use relay_proto::limits::PRESENCE_WATCHES_PER_DEVICE_MAX;
use relay_proto::{AccountId, DeviceAddress, ErrorCode, ProtoError, RegionId};

/// The watches of the devices connected here.
#[derive(Debug, Default)]
pub struct Watches {
    /// watcher → watched account → its home region.
    by_watcher: BTreeMap<DeviceAddress, BTreeMap<AccountId, RegionId>>,
}

impl Watches {
    /// `watcher` watches `account`, homed in `home`; at most
    /// [`PRESENCE_WATCHES_PER_DEVICE_MAX`] accounts per device (watching one again is fine).
    pub fn handle_watch(
        &mut self,
        watcher: DeviceAddress,
        account: AccountId,
        home: RegionId,
    ) -> Result<(), ProtoError> {
        let watched = self.by_watcher.entry(watcher).or_default();
        if !watched.contains_key(&account) && watched.len() >= PRESENCE_WATCHES_PER_DEVICE_MAX {
            return Err(ProtoError::new(
                ErrorCode::Throttled,
                format!(
                    "a device watches at most {PRESENCE_WATCHES_PER_DEVICE_MAX} accounts' \
                     presence; stop watching one first"
                ),
            ));
        }
        watched.insert(account, home);
        Ok(())
    }

    /// `watcher` stops watching `account`: the home region to tell, if it watched.
    pub fn handle_unwatch(
        &mut self,
        watcher: DeviceAddress,
        account: AccountId,
    ) -> Option<RegionId> {
        let watched = self.by_watcher.get_mut(&watcher)?;
        let home = watched.remove(&account);
        if watched.is_empty() {
            self.by_watcher.remove(&watcher);
        }
        home
    }

    /// `watcher`'s last connection here closed: its watches end, with the regions to tell.
    pub fn handle_watcher_left(&mut self, watcher: DeviceAddress) -> Vec<(AccountId, RegionId)> {
        self.by_watcher
            .remove(&watcher)
            .map(|watched| watched.into_iter().collect())
            .unwrap_or_default()
    }

    /// Every watch of an account homed in `region` (to send when its stream opens).
    pub fn watched_in(&self, region: RegionId) -> Vec<(DeviceAddress, AccountId)> {
        self.by_watcher
            .iter()
            .flat_map(|(&watcher, watched)| {
                watched
                    .iter()
                    .filter(move |&(_, &home)| home == region)
                    .map(move |(&account, _)| (watcher, account))
            })
            .collect()
    }

    /// Whether `watcher` watches `account` now, at `region` (an update from a region the
    /// account left is stale: its watch moved with it, see [`Watches::handle_moved`]).
    pub fn watches(&self, watcher: DeviceAddress, account: AccountId, region: RegionId) -> bool {
        self.by_watcher
            .get(&watcher)
            .and_then(|watched| watched.get(&account))
            .is_some_and(|&home| home == region)
    }

    /// `account`'s home moved from `from` to `to`: every watch of it placed at `from` is
    /// placed at `to` now. Returns the watchers, whose watches the edge ends at `from` and
    /// begins at `to`.
    pub fn handle_moved(
        &mut self,
        account: AccountId,
        from: RegionId,
        to: RegionId,
    ) -> Vec<DeviceAddress> {
        let mut moved = Vec::new();
        for (&watcher, watched) in &mut self.by_watcher {
            if let Some(home) = watched.get_mut(&account)
                && *home == from
            {
                *home = to;
                moved.push(watcher);
            }
        }
        moved
    }
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

    #[test]
    fn watches_are_bounded_per_device_and_end_with_the_watcher() {
        let mut watches = Watches::default();
        for account in 1..=PRESENCE_WATCHES_PER_DEVICE_MAX as u64 {
            let home = RegionId(1 + (account % 2) as u32);
            watches
                .handle_watch(device(100), AccountId(account), home)
                .expect("within the bound");
        }
        let refused = watches
            .handle_watch(device(100), AccountId(1_000), RegionId(1))
            .expect_err("past the bound");
        assert_eq!(refused.code, ErrorCode::Throttled);
        watches
            .handle_watch(device(100), AccountId(1), RegionId(2))
            .expect("watching again is fine");
        watches
            .handle_watch(device(200), AccountId(7), RegionId(1))
            .expect("another device");
        assert!(watches.watches(device(100), AccountId(1), RegionId(2)));
        assert!(!watches.watches(device(100), AccountId(1), RegionId(1)));
        assert!(!watches.watches(device(200), AccountId(1), RegionId(2)));
        let in_region_1 = watches.watched_in(RegionId(1));
        assert_eq!(in_region_1.len(), PRESENCE_WATCHES_PER_DEVICE_MAX / 2 + 1);
        assert!(in_region_1.contains(&(device(200), AccountId(7))));
        assert_eq!(
            watches.handle_unwatch(device(200), AccountId(7)),
            Some(RegionId(1))
        );
        assert_eq!(watches.handle_unwatch(device(200), AccountId(7)), None);
        let ended = watches.handle_watcher_left(device(100));
        assert_eq!(ended.len(), PRESENCE_WATCHES_PER_DEVICE_MAX);
        assert!(watches.watched_in(RegionId(1)).is_empty());
        assert!(watches.watched_in(RegionId(2)).is_empty());
    }

    #[test]
    fn watches_follow_a_moved_account_and_updates_from_its_old_home_are_stale() {
        let mut watches = Watches::default();
        let (alice, bob) = (AccountId(1), AccountId(2));
        watches
            .handle_watch(device(100), alice, RegionId(1))
            .expect("watch");
        watches
            .handle_watch(device(200), alice, RegionId(1))
            .expect("watch");
        watches
            .handle_watch(device(200), bob, RegionId(1))
            .expect("watch");
        let moved = watches.handle_moved(alice, RegionId(1), RegionId(2));
        assert_eq!(moved, [device(100), device(200)]);
        for watcher in [device(100), device(200)] {
            assert!(watches.watches(watcher, alice, RegionId(2)));
            assert!(!watches.watches(watcher, alice, RegionId(1)), "stale");
        }
        assert!(watches.watches(device(200), bob, RegionId(1)), "bob stays");
        assert_eq!(watches.watched_in(RegionId(2)).len(), 2);
        assert_eq!(watches.watched_in(RegionId(1)), [(device(200), bob)]);
        // A notice of the same move again (another edge's stream, a re-sent one): nothing.
        assert!(
            watches
                .handle_moved(alice, RegionId(1), RegionId(2))
                .is_empty()
        );
    }
}
