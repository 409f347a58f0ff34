//! Presence and typing for the core, sans-IO: the accounts this device watches (re-watched on
//! every new connection, so a reconnect or another edge loses nothing), typing indicators it
//! sends (repeated at most every [`TYPING_REPEAT_MS`] while its user keeps typing, so the edge's
//! limit is never the one that speaks), and the ones it shows (each until a "stopped" or
//! [`TYPING_SHOWN_MS`] after the last, with an event when it ends either way). Nothing here is
//! stored: presence and typing are ephemeral.

use std::collections::{BTreeMap, BTreeSet};

use relay_proto::limits::{PRESENCE_WATCHES_PER_DEVICE_MAX, TYPING_REPEAT_MS, TYPING_SHOWN_MS};
use relay_proto::wire::{PresenceInfo, TypingNotice};
use relay_proto::{AccountId, DeviceAddress, GroupId};

use super::{Core, Purpose, Report, Request, Response};
use crate::error::{ClientError, Result};
use crate::events::Event;

/// The presence and typing state of the core.
#[derive(Debug, Default)]
pub(super) struct PresenceState {
    /// Accounts watched while a chat with them is open.
    watching: BTreeSet<AccountId>,
    /// chat → (typing or stopped, when it was last sent in ms).
    typing_sent: BTreeMap<TypingIn, (bool, u64)>,
    /// (typing device, its group or 0 in the 1:1 chat) → until when (ms) it is shown as typing.
    typing_shown: BTreeMap<(DeviceAddress, u64), u64>,
}

/// The chat a typing indicator is said in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TypingIn {
    /// The 1:1 chat with a peer account.
    Peer(AccountId),
    /// A group's chat: every member's connected devices are told.
    Group(GroupId),
}

impl TypingIn {
    /// The wire form of an indicator said here.
    pub fn signal(self, typing: bool) -> relay_proto::wire::TypingSignal {
        let (peer, group) = match self {
            TypingIn::Peer(peer) => (peer.0, 0),
            TypingIn::Group(group) => (0, group.0),
        };
        relay_proto::wire::TypingSignal {
            peer,
            typing,
            group,
        }
    }
}

/// What became of a typing indicator ([`Core::send_typing`], `Device::set_typing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TypingSent {
    /// Handed to the edge, which passed it on.
    Sent,
    /// Said recently enough already: nothing was sent (a typing device repeats itself every
    /// `TYPING_REPEAT_MS` at most).
    Repeated,
}

impl Core {
    /// Starts (`watch`) or stops watching `account`'s presence. While connected the edge is told
    /// at once; either way every new connection watches again. The state comes as
    /// [`Event::Presence`], now and on every change.
    pub fn watch_presence(&mut self, account: AccountId, watch: bool) -> Result<()> {
        if watch {
            if !self.presence.watching.contains(&account)
                && self.presence.watching.len() >= PRESENCE_WATCHES_PER_DEVICE_MAX
            {
                return Err(ClientError::Invalid(format!(
                    "a device watches at most {PRESENCE_WATCHES_PER_DEVICE_MAX} accounts' \
                     presence; stop watching one first"
                )));
            }
            self.presence.watching.insert(account);
        } else {
            self.presence.watching.remove(&account);
        }
        if self.is_connected() {
            self.request_watch(account, watch);
        }
        Ok(())
    }

    /// The accounts this device watches.
    pub fn watched(&self) -> Vec<AccountId> {
        self.presence.watching.iter().copied().collect()
    }

    /// This device's user is typing in chat `to` (`typing`) or stopped, at `now_ms`: whether to
    /// send the indicator (recorded as sent), or whether it was said recently enough already.
    pub fn send_typing(&mut self, to: TypingIn, typing: bool, now_ms: u64) -> TypingSent {
        let repeated = match self.presence.typing_sent.get(&to) {
            Some(&(true, at_ms)) if typing => now_ms < at_ms.saturating_add(TYPING_REPEAT_MS),
            Some(&(false, _)) | None => !typing,
            Some(_) => false,
        };
        if repeated {
            return TypingSent::Repeated;
        }
        self.presence.typing_sent.insert(to, (typing, now_ms));
        TypingSent::Sent
    }

    /// A typing indicator for chat `to` did not reach the edge: forgotten, so the next
    /// keystroke tries again.
    pub fn typing_failed(&mut self, to: TypingIn) {
        self.presence.typing_sent.remove(&to);
    }

    /// The edge pushed a watched account's presence.
    pub fn handle_presence(&mut self, info: PresenceInfo) {
        let account = AccountId(info.account);
        if self.presence.watching.contains(&account) {
            self.reports.push_back(Report::Presence { account, info });
        }
    }

    /// The edge pushed a typing indicator (at `now_ms`).
    pub fn handle_typing(&mut self, notice: TypingNotice, now_ms: u64) {
        let Ok(from) = notice.from.parse() else {
            return;
        };
        let key = (from, notice.group);
        let shown = if notice.typing {
            self.presence
                .typing_shown
                .insert(key, now_ms.saturating_add(TYPING_SHOWN_MS))
                .is_some()
        } else {
            self.presence.typing_shown.remove(&key).is_none()
        };
        // Only a change is reported: a repeat extends what is shown.
        if !shown {
            self.reports.push_back(Report::Typing {
                from,
                group: notice.group,
                typing: notice.typing,
            });
        }
    }

    /// When a shown "typing…" ends by itself, if one is shown.
    pub(super) fn typing_timeout(&self) -> Option<u64> {
        self.presence.typing_shown.values().min().copied()
    }

    /// Ends the "typing…" of devices not heard from for [`TYPING_SHOWN_MS`].
    pub(super) fn expire_typing(&mut self, now_ms: u64) {
        let expired: Vec<(DeviceAddress, u64)> = self
            .presence
            .typing_shown
            .iter()
            .filter(|&(_, &until)| until <= now_ms)
            .map(|(&key, _)| key)
            .collect();
        for (from, group) in expired {
            self.presence.typing_shown.remove(&(from, group));
            self.reports.push_back(Report::Typing {
                from,
                group,
                typing: false,
            });
        }
    }

    /// A new connection: every watch again (the edge forgot them with the old one).
    pub(super) fn rewatch(&mut self) {
        let watching: Vec<AccountId> = self.presence.watching.iter().copied().collect();
        for account in watching {
            self.request_watch(account, true);
        }
    }

    fn request_watch(&mut self, account: AccountId, watch: bool) {
        self.request(
            Request::WatchPresence { account, watch },
            Purpose::Watch(account),
        );
    }

    /// The edge's answer to a watch of `account`.
    pub(super) fn handle_watched(&mut self, account: AccountId, answer: Result<Response>) {
        match answer {
            Ok(_) => {}
            Err(error) => {
                // Left in the set: the next connection asks again.
                self.reports.push_back(Report::NoteAbout {
                    peer: account,
                    text: format!("could not watch {{peer}}'s presence: {error}"),
                });
            }
        }
    }

    /// The event for a presence report.
    pub(super) fn presence_event(&self, account: AccountId, info: PresenceInfo) -> Event {
        use relay_proto::wire::PresenceState as State;
        let state = info.state();
        Event::Presence {
            peer: self.name_of(account),
            account: account.0,
            state: match state {
                State::Online => "online",
                State::Offline => "offline",
                State::Hidden => "hidden",
                State::Unknown => "unknown",
            }
            .to_owned(),
            last_seen_ms: (state == State::Offline && info.last_seen_ms > 0)
                .then_some(info.last_seen_ms),
        }
    }
}
