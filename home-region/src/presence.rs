//! Presence at an account's home region, sans-IO: which of its accounts are online (a device
//! of theirs is subscribed by an edge, see `service`), when each was last seen, who watches
//! whom, and what each watcher may see under the account's privacy setting.
//!
//! Nothing here is per contact list or per account in the directory: the board holds an entry
//! for an account only while one of its devices is connected or someone watches it, so its
//! size follows the connected devices and the watchers, never the accounts. What must outlive
//! a restart (the last-seen time, the privacy setting) is in the store
//! (`fdb_layers::presence`); the service loads it into an entry before the entry's first watch
//! ([`PresenceBoard::needs_load`], [`PresenceBoard::handle_loaded`]) and writes a departure's
//! time when [`PresenceBoard::handle_device_left`] returns one.
//!
//! Every change that a watcher may see comes out as an [`Update`] for the stream (the edge)
//! that holds the watcher; a watcher the setting hides sees `Hidden` once, then nothing of the
//! account's comings and goings.

use std::collections::{BTreeSet, HashMap};

use fdb_layers::presence::PresenceRecord;
use relay_proto::wire::{PresenceInfo, PresencePrivacy, PresenceState, PresenceVisibility};
use relay_proto::{AccountId, DeviceAddress, DeviceId};

use crate::limits::PRESENCE_WATCHES_PER_STREAM_MAX;

/// What to push: `watcher`, on subscription stream `stream`, may now see `info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update {
    /// The subscription stream of the edge holding the watcher.
    pub stream: u64,
    /// The watching device.
    pub watcher: DeviceAddress,
    /// What it may see.
    pub info: PresenceInfo,
}

/// The presence of a region's accounts, and their watchers.
#[derive(Debug, Default)]
pub struct PresenceBoard {
    accounts: HashMap<AccountId, Entry>,
    /// stream → its watches (watcher, watched account).
    by_stream: HashMap<u64, BTreeSet<(DeviceAddress, AccountId)>>,
}

#[derive(Debug, Default)]
struct Entry {
    /// Devices of the account connected (subscribed by some edge).
    connected: BTreeSet<DeviceId>,
    last_seen_ms: u64,
    /// The setting; `None` until loaded from the store.
    privacy: Option<Privacy>,
    /// (stream, watcher).
    watchers: BTreeSet<(u64, DeviceAddress)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Privacy {
    visibility: PresenceVisibility,
    contacts: BTreeSet<AccountId>,
}

impl Privacy {
    fn from_wire(privacy: Option<&PresencePrivacy>) -> Self {
        match privacy {
            None => Privacy {
                visibility: PresenceVisibility::Everyone,
                contacts: BTreeSet::new(),
            },
            Some(privacy) => Privacy {
                // A stored setting was validated before it was stored; an unknown number (a
                // newer build's) shows nothing rather than too much.
                visibility: PresenceVisibility::try_from(privacy.visibility)
                    .unwrap_or(PresenceVisibility::Nobody),
                contacts: privacy.contacts.iter().copied().map(AccountId).collect(),
            },
        }
    }

    fn shows_to(&self, watcher: AccountId) -> bool {
        match self.visibility {
            PresenceVisibility::Everyone => true,
            PresenceVisibility::Contacts => self.contacts.contains(&watcher),
            PresenceVisibility::Nobody => false,
        }
    }
}

impl Entry {
    fn info_for(&self, account: AccountId, watcher: AccountId) -> PresenceInfo {
        let shown = watcher == account
            || self
                .privacy
                .as_ref()
                .is_some_and(|privacy| privacy.shows_to(watcher));
        let (state, last_seen_ms) = if !shown {
            (PresenceState::Hidden, 0)
        } else if !self.connected.is_empty() {
            (PresenceState::Online, 0)
        } else {
            (PresenceState::Offline, self.last_seen_ms)
        };
        PresenceInfo {
            account: account.0,
            state: state as i32,
            last_seen_ms,
        }
    }

    /// What every watcher may see now.
    fn updates(&self, account: AccountId) -> impl Iterator<Item = Update> + '_ {
        self.watchers.iter().map(move |&(stream, watcher)| Update {
            stream,
            watcher,
            info: self.info_for(account, watcher.account),
        })
    }

    /// The updates of every watcher the change is shown to.
    fn shown_updates(&self, account: AccountId) -> Vec<Update> {
        self.updates(account)
            .filter(|update| update.info.state() != PresenceState::Hidden)
            .collect()
    }

    fn is_idle(&self) -> bool {
        self.connected.is_empty() && self.watchers.is_empty()
    }
}

impl PresenceBoard {
    /// Whether `account`'s stored presence must be loaded before a watch of it.
    pub fn needs_load(&self, account: AccountId) -> bool {
        self.accounts
            .get(&account)
            .is_none_or(|entry| entry.privacy.is_none())
    }

    /// The store's record of `account`, loaded for a watch (a setting changed meanwhile wins).
    pub fn handle_loaded(&mut self, account: AccountId, record: &PresenceRecord) {
        let entry = self.accounts.entry(account).or_default();
        entry.last_seen_ms = entry.last_seen_ms.max(record.last_seen_ms);
        if entry.privacy.is_none() {
            entry.privacy = Some(Privacy::from_wire(record.privacy.as_ref()));
        }
    }

    /// `device` connected (its first subscription at this region).
    pub fn handle_device_connected(&mut self, device: DeviceAddress) -> Vec<Update> {
        let account = device.account;
        let entry = self.accounts.entry(account).or_default();
        if !entry.connected.insert(device.device) || entry.connected.len() > 1 {
            return Vec::new();
        }
        entry.shown_updates(account)
    }

    /// `device` left at `now_ms` (its last subscription here ended). When it was the account's
    /// last, returns the time to store as last seen, with the updates.
    pub fn handle_device_left(
        &mut self,
        device: DeviceAddress,
        now_ms: u64,
    ) -> (Vec<Update>, Option<u64>) {
        let account = device.account;
        let Some(entry) = self.accounts.get_mut(&account) else {
            return (Vec::new(), None);
        };
        if !entry.connected.remove(&device.device) || !entry.connected.is_empty() {
            return (Vec::new(), None);
        }
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
        let updates = entry.shown_updates(account);
        let last_seen_ms = entry.last_seen_ms;
        if entry.is_idle() {
            self.accounts.remove(&account);
        }
        (updates, Some(last_seen_ms))
    }

    /// `watcher` on `stream` watches `account` (loaded first, see [`Self::needs_load`];
    /// `homed_here` is whether the account exists and is homed in this region). Returns what
    /// the watcher may see now; a watch of an unknown account, or past the stream's limit, is
    /// answered `Unknown` and not kept.
    pub fn handle_watch(
        &mut self,
        stream: u64,
        watcher: DeviceAddress,
        account: AccountId,
        homed_here: bool,
    ) -> Update {
        let unknown = Update {
            stream,
            watcher,
            info: PresenceInfo {
                account: account.0,
                state: PresenceState::Unknown as i32,
                last_seen_ms: 0,
            },
        };
        if !homed_here {
            self.forget_if_idle(account);
            return unknown;
        }
        let watches = self.by_stream.entry(stream).or_default();
        if !watches.contains(&(watcher, account)) {
            if watches.len() >= PRESENCE_WATCHES_PER_STREAM_MAX {
                tracing::warn!(
                    stream,
                    "an edge watches more accounts than one stream may hold"
                );
                return unknown;
            }
            watches.insert((watcher, account));
        }
        let entry = self.accounts.entry(account).or_default();
        entry.watchers.insert((stream, watcher));
        Update {
            stream,
            watcher,
            info: entry.info_for(account, watcher.account),
        }
    }

    /// `watcher` on `stream` stops watching `account`.
    pub fn handle_unwatch(&mut self, stream: u64, watcher: DeviceAddress, account: AccountId) {
        if let Some(watches) = self.by_stream.get_mut(&stream) {
            watches.remove(&(watcher, account));
            if watches.is_empty() {
                self.by_stream.remove(&stream);
            }
        }
        if let Some(entry) = self.accounts.get_mut(&account) {
            entry.watchers.remove(&(stream, watcher));
        }
        self.forget_if_idle(account);
    }

    /// `stream` ended: its watches end with it.
    pub fn handle_stream_closed(&mut self, stream: u64) {
        for (watcher, account) in self.by_stream.remove(&stream).unwrap_or_default() {
            if let Some(entry) = self.accounts.get_mut(&account) {
                entry.watchers.remove(&(stream, watcher));
            }
            self.forget_if_idle(account);
        }
    }

    /// `account`'s privacy setting is now `privacy` (stored already): every watcher is told
    /// what it may see under it.
    pub fn handle_privacy(&mut self, account: AccountId, privacy: &PresencePrivacy) -> Vec<Update> {
        let Some(entry) = self.accounts.get_mut(&account) else {
            return Vec::new();
        };
        entry.privacy = Some(Privacy::from_wire(Some(privacy)));
        entry.updates(account).collect()
    }

    /// The devices of `account` connected now (where typing indicators for it go).
    pub fn connected_devices(&self, account: AccountId) -> Vec<DeviceAddress> {
        self.accounts.get(&account).map_or_else(Vec::new, |entry| {
            entry
                .connected
                .iter()
                .map(|&device| DeviceAddress { account, device })
                .collect()
        })
    }

    /// Accounts with an entry (online or watched), for tests and metrics.
    pub fn accounts_held(&self) -> usize {
        self.accounts.len()
    }

    fn forget_if_idle(&mut self, account: AccountId) {
        if self.accounts.get(&account).is_some_and(Entry::is_idle) {
            self.accounts.remove(&account);
        }
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::DeviceId;

    use super::*;

    const ALICE: AccountId = AccountId(1);

    fn device(account: u64) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(account),
            device: DeviceId(1),
        }
    }

    fn alice(device: u32) -> DeviceAddress {
        DeviceAddress {
            account: ALICE,
            device: DeviceId(device),
        }
    }

    fn record(visibility: PresenceVisibility, contacts: &[u64]) -> PresenceRecord {
        PresenceRecord {
            last_seen_ms: 500,
            privacy: Some(PresencePrivacy {
                visibility: visibility as i32,
                contacts: contacts.to_vec(),
            }),
        }
    }

    fn watch(board: &mut PresenceBoard, stream: u64, watcher: u64) -> PresenceState {
        if board.needs_load(ALICE) {
            board.handle_loaded(ALICE, &PresenceRecord::default());
        }
        board
            .handle_watch(stream, device(watcher), ALICE, true)
            .info
            .state()
    }

    #[test]
    fn watchers_see_comings_and_goings_with_the_last_seen_time() {
        let mut board = PresenceBoard::default();
        assert!(board.needs_load(ALICE));
        board.handle_loaded(
            ALICE,
            &PresenceRecord {
                last_seen_ms: 500,
                privacy: None,
            },
        );
        let now = board.handle_watch(7, device(2), ALICE, true);
        assert_eq!(now.info.state(), PresenceState::Offline);
        assert_eq!(now.info.last_seen_ms, 500, "from the store");
        let online = board.handle_device_connected(alice(1));
        assert_eq!(online.len(), 1);
        assert_eq!((online[0].stream, online[0].watcher), (7, device(2)));
        assert_eq!(online[0].info.state(), PresenceState::Online);
        assert!(
            board.handle_device_connected(alice(2)).is_empty(),
            "a second device"
        );
        assert!(
            board.handle_device_connected(alice(2)).is_empty(),
            "the same again"
        );
        assert_eq!(board.connected_devices(ALICE), vec![alice(1), alice(2)]);
        assert_eq!(board.handle_device_left(alice(1), 900), (Vec::new(), None));
        assert_eq!(
            board.handle_device_left(alice(1), 950),
            (Vec::new(), None),
            "gone already"
        );
        let (left, last_seen) = board.handle_device_left(alice(2), 1_000);
        assert_eq!(last_seen, Some(1_000), "stored by the service");
        assert_eq!(left[0].info.state(), PresenceState::Offline);
        assert_eq!(left[0].info.last_seen_ms, 1_000);
        // A departure the board never saw arrive (after a restart) changes nothing.
        assert_eq!(
            board.handle_device_left(device(9), 2_000),
            (Vec::new(), None)
        );
        assert!(board.connected_devices(ALICE).is_empty());
    }

    #[test]
    fn each_privacy_setting_shows_what_it_says_to_whom() {
        // Everyone: anyone sees.
        let mut board = PresenceBoard::default();
        board.handle_device_connected(alice(1));
        assert_eq!(watch(&mut board, 1, 2), PresenceState::Online);
        // Contacts: account 2 is one, account 3 is not; alice's own other device always sees.
        let mut board = PresenceBoard::default();
        board.handle_loaded(ALICE, &record(PresenceVisibility::Contacts, &[2]));
        board.handle_device_connected(alice(1));
        assert_eq!(watch(&mut board, 1, 2), PresenceState::Online);
        assert_eq!(watch(&mut board, 1, 3), PresenceState::Hidden);
        assert_eq!(watch(&mut board, 1, 1), PresenceState::Online);
        // A hidden watcher hears nothing of what follows.
        let (updates, _) = board.handle_device_left(alice(1), 2_000);
        let told: Vec<u64> = updates
            .iter()
            .map(|update| update.watcher.account.0)
            .collect();
        assert_eq!(told, vec![1, 2]);
        // Nobody: hidden from everyone else, also the last-seen time.
        let mut board = PresenceBoard::default();
        board.handle_loaded(ALICE, &record(PresenceVisibility::Nobody, &[2]));
        assert_eq!(watch(&mut board, 1, 2), PresenceState::Hidden);
        let hidden = board.handle_watch(1, device(3), ALICE, true).info;
        assert_eq!(
            (hidden.state(), hidden.last_seen_ms),
            (PresenceState::Hidden, 0)
        );
        assert!(board.handle_device_connected(alice(1)).is_empty());
    }

    #[test]
    fn a_setting_changed_tells_every_watcher_what_it_may_see_now() {
        let mut board = PresenceBoard::default();
        board.handle_device_connected(alice(1));
        assert_eq!(watch(&mut board, 1, 2), PresenceState::Online);
        assert_eq!(watch(&mut board, 2, 3), PresenceState::Online);
        let nobody = PresencePrivacy {
            visibility: PresenceVisibility::Contacts as i32,
            contacts: vec![3],
        };
        let updates = board.handle_privacy(ALICE, &nobody);
        let seen: Vec<(u64, PresenceState)> = updates
            .iter()
            .map(|update| (update.watcher.account.0, update.info.state()))
            .collect();
        assert_eq!(
            seen,
            vec![(2, PresenceState::Hidden), (3, PresenceState::Online)]
        );
        // A setting loaded later (a slow store read) does not undo the newer one.
        board.handle_loaded(ALICE, &PresenceRecord::default());
        assert_eq!(watch(&mut board, 1, 2), PresenceState::Hidden);
    }

    #[test]
    fn the_board_holds_only_connected_or_watched_accounts() {
        let mut board = PresenceBoard::default();
        board.handle_device_connected(alice(1));
        watch(&mut board, 1, 2);
        watch(&mut board, 2, 3);
        let unknown = board.handle_watch(1, device(2), AccountId(44), false);
        assert_eq!(unknown.info.state(), PresenceState::Unknown);
        assert_eq!(board.accounts_held(), 1, "an unknown account is not kept");
        board.handle_device_left(alice(1), 10);
        board.handle_unwatch(1, device(2), ALICE);
        assert_eq!(board.accounts_held(), 1, "still watched on stream 2");
        board.handle_stream_closed(2);
        assert_eq!(board.accounts_held(), 0);
        // Watches end with their stream: nothing is pushed to a closed one.
        assert!(board.handle_device_connected(alice(1)).is_empty());
    }
}
