//! Presence (online, last seen) and typing indicators: ephemeral, never stored in a chat.
//!
//! A device watches an account while a chat with it is open ([`WatchPresence`]); its edge
//! passes the watch to the account's home region on its subscription stream there
//! ([`PresenceWatchFrom`] in [`super::Subscribe`]), and the region answers, then and on every
//! change, with a [`PresenceUpdate`] on the same stream, which the edge turns into a
//! [`super::ServerPush`] for the watcher. What a watcher sees follows the account's
//! [`PresencePrivacy`]. A typing indicator ([`TypingSignal`]) goes the same way to the peer's
//! home region ([`TypingForward`]), which pushes a [`TypingNotice`] to each connected device of
//! the peer; nothing of either is written to a store, except an account's last-seen time and
//! privacy setting.

use crate::ProtoError;
use crate::ids::{AccountId, DeviceAddress};
use crate::limits::PRESENCE_CONTACTS_MAX;

use super::DeviceAddr;

/// Who may see an account's presence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PresenceVisibility {
    /// Every account (the wire default).
    Everyone = 0,
    /// The accounts in the setting's contact list.
    Contacts = 1,
    /// No account (the account's own devices still see it).
    Nobody = 2,
}

impl PresenceVisibility {
    /// The lowercase name people type (`everyone`, `contacts`, `nobody`).
    pub fn name(self) -> &'static str {
        match self {
            PresenceVisibility::Everyone => "everyone",
            PresenceVisibility::Contacts => "contacts",
            PresenceVisibility::Nobody => "nobody",
        }
    }
}

impl std::str::FromStr for PresenceVisibility {
    type Err = ProtoError;

    fn from_str(name: &str) -> Result<Self, ProtoError> {
        match name {
            "everyone" => Ok(PresenceVisibility::Everyone),
            "contacts" => Ok(PresenceVisibility::Contacts),
            "nobody" => Ok(PresenceVisibility::Nobody),
            other => Err(ProtoError::invalid(format!(
                "presence visibility {other:?} is none of everyone, contacts, nobody"
            ))),
        }
    }
}

/// An account's presence privacy setting, kept by its home region.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PresencePrivacy {
    /// A [`PresenceVisibility`].
    #[prost(enumeration = "PresenceVisibility", tag = "1")]
    pub visibility: i32,
    /// With `Contacts`: the accounts that may see it (at most [`PRESENCE_CONTACTS_MAX`]).
    #[prost(uint64, repeated, tag = "2")]
    pub contacts: Vec<u64>,
}

impl PresencePrivacy {
    /// Checks the setting: a known visibility, at most [`PRESENCE_CONTACTS_MAX`] contacts, no
    /// zero account.
    pub fn validate(&self) -> Result<PresenceVisibility, ProtoError> {
        // prost's `visibility()` reads an unknown number as the default; a setting must not.
        let visibility = PresenceVisibility::try_from(self.visibility)
            .map_err(|_| ProtoError::invalid(format!("unknown visibility {}", self.visibility)))?;
        if self.contacts.len() > PRESENCE_CONTACTS_MAX {
            return Err(ProtoError::new(
                crate::ErrorCode::TooLarge,
                format!(
                    "{} contacts, at most {PRESENCE_CONTACTS_MAX}",
                    self.contacts.len()
                ),
            ));
        }
        if self.contacts.contains(&0) {
            return Err(ProtoError::invalid("account 0 in the contacts"));
        }
        Ok(visibility)
    }
}

/// (Device → edge) read the account's presence privacy setting, or set it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SetPresencePrivacy {
    /// The new setting; absent: only read it.
    #[prost(message, optional, tag = "1")]
    pub privacy: Option<PresencePrivacy>,
}

/// (Device → edge) start or stop watching an account's presence. Answered with the same
/// message; the state itself comes as a push, now and on each change.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct WatchPresence {
    /// The account.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// Watch (`true`) or stop (`false`).
    #[prost(bool, tag = "2")]
    pub watch: bool,
}

/// What a watcher may know of an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PresenceState {
    /// The region does not know the account (not homed there, or no such account).
    Unknown = 0,
    /// A device of the account is connected now.
    Online = 1,
    /// No device is connected; `last_seen_ms` says when one last was (0: never, as far as the
    /// region knows).
    Offline = 2,
    /// The account's privacy setting does not show it to this watcher.
    Hidden = 3,
}

/// An account's presence as one watcher may see it.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct PresenceInfo {
    /// The account.
    #[prost(uint64, tag = "1")]
    pub account: u64,
    /// A [`PresenceState`].
    #[prost(enumeration = "PresenceState", tag = "2")]
    pub state: i32,
    /// With `Offline`: when a device of the account was last connected, in milliseconds since
    /// the Unix epoch (0: unknown).
    #[prost(uint64, tag = "3")]
    pub last_seen_ms: u64,
}

/// (Device → edge) this device's user is typing in the chat with `peer`, or in `group`'s chat
/// (`typing`), or stopped. Exactly one of `peer` and `group` is set. Answered with the same
/// message. Rate-limited at the edge.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TypingSignal {
    /// The peer account (0 with a group).
    #[prost(uint64, tag = "1")]
    pub peer: u64,
    /// Typing (`true`) or stopped (`false`).
    #[prost(bool, tag = "2")]
    pub typing: bool,
    /// The group (0 in a 1:1 chat).
    #[prost(uint64, tag = "3")]
    pub group: u64,
}

/// (Edge → region, on the subscription stream) a watch of `watcher`'s, or its end.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct PresenceWatchFrom {
    /// The watching device (authenticated by the edge).
    #[prost(message, required, tag = "1")]
    pub watcher: DeviceAddr,
    /// The watched account, homed in the region.
    #[prost(uint64, tag = "2")]
    pub account: u64,
    /// Watch (`true`) or stop (`false`).
    #[prost(bool, tag = "3")]
    pub watch: bool,
}

impl PresenceWatchFrom {
    /// The typed watcher and account.
    pub fn parse(&self) -> Result<(DeviceAddress, AccountId), ProtoError> {
        if self.account == 0 {
            return Err(ProtoError::invalid("a watch of account 0"));
        }
        Ok((self.watcher.parse()?, AccountId(self.account)))
    }
}

/// (Region → edge, on the subscription stream) what `watcher` may see of an account now.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct PresenceUpdate {
    /// The watching device.
    #[prost(message, required, tag = "1")]
    pub watcher: DeviceAddr,
    /// The presence.
    #[prost(message, required, tag = "2")]
    pub info: PresenceInfo,
}

/// (Edge → region, on the subscription stream) a typing indicator for an account homed there,
/// or in a group's chat (sent to every region: each passes it to the members homed there when
/// the typing device's account is a member).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TypingForward {
    /// The typing device (authenticated by the edge).
    #[prost(message, required, tag = "1")]
    pub from: DeviceAddr,
    /// The peer account (0 with a group).
    #[prost(uint64, tag = "2")]
    pub to: u64,
    /// Typing or stopped.
    #[prost(bool, tag = "3")]
    pub typing: bool,
    /// The group (0 in a 1:1 chat).
    #[prost(uint64, tag = "4")]
    pub group: u64,
}

/// (Region → edge → device) someone is typing to the device's account, or stopped. A receiver
/// shows it for at most [`crate::limits::TYPING_SHOWN_MS`] unless it is repeated.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TypingNotice {
    /// The device the notice is for.
    #[prost(message, required, tag = "1")]
    pub to: DeviceAddr,
    /// The typing device.
    #[prost(message, required, tag = "2")]
    pub from: DeviceAddr,
    /// Typing or stopped.
    #[prost(bool, tag = "3")]
    pub typing: bool,
    /// The group whose chat it is typing in (0: the 1:1 chat with the device's account).
    #[prost(uint64, tag = "4")]
    pub group: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_privacy_setting_is_checked() {
        let mut privacy = PresencePrivacy {
            visibility: PresenceVisibility::Contacts as i32,
            contacts: vec![2, 3],
        };
        assert_eq!(
            privacy.validate().expect("valid"),
            PresenceVisibility::Contacts
        );
        privacy.visibility = 7;
        assert!(privacy.validate().is_err());
        privacy.visibility = PresenceVisibility::Nobody as i32;
        privacy.contacts = vec![0];
        assert!(privacy.validate().is_err());
        privacy.contacts = vec![1; PRESENCE_CONTACTS_MAX + 1];
        assert_eq!(
            privacy.validate().expect_err("too many").code,
            crate::ErrorCode::TooLarge
        );
        for visibility in [
            PresenceVisibility::Everyone,
            PresenceVisibility::Contacts,
            PresenceVisibility::Nobody,
        ] {
            assert_eq!(
                visibility
                    .name()
                    .parse::<PresenceVisibility>()
                    .expect("its name"),
                visibility
            );
        }
        assert!("friends".parse::<PresenceVisibility>().is_err());
    }

    #[test]
    fn a_watch_of_nobody_is_refused() {
        let watch = PresenceWatchFrom {
            watcher: DeviceAddr {
                account: 1,
                device: 1,
            },
            account: 0,
            watch: true,
        };
        assert!(watch.parse().is_err());
        let state = PresenceInfo {
            account: 1,
            state: 42,
            last_seen_ms: 0,
        };
        assert_eq!(state.state(), PresenceState::Unknown);
    }
}
