//! Presence and typing for an open [`Device`]: watch a peer's presence while a chat with it is
//! open, say that this user is typing, and choose who may see this account's presence.
//!
//! Presence comes as [`crate::Event::Presence`] while the device is connected: once when a watch
//! begins (and again after every reconnect, which watches again), then on every change the
//! peer's privacy setting shows this account. Typing indicators come as
//! [`crate::Event::Typing`], `typing: false` when the peer stops or is not heard from for
//! [`relay_proto::limits::TYPING_SHOWN_MS`]. Neither is stored anywhere: the peer's home region keeps only when it
//! was last seen and its setting.

use relay_proto::limits::PRESENCE_CONTACTS_MAX;
use relay_proto::wire::{PresencePrivacy, PresenceVisibility};
use relay_proto::{AccountId, GroupId};

use crate::core::{TypingIn, TypingSent};
use crate::device::{Command, Device};
use crate::error::{ClientError, Result};
use crate::groups::account_ids;

/// An account's presence privacy, as its home region keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PresenceSetting {
    /// Who may see the account's presence: `everyone`, `contacts` or `nobody`.
    pub visibility: String,
    /// With `contacts`: how many accounts are contacts (the accounts of this device's 1:1 chats
    /// when it was set).
    pub contacts: usize,
}

impl PresenceSetting {
    fn from_wire(privacy: &PresencePrivacy) -> Self {
        let visibility = PresenceVisibility::try_from(privacy.visibility)
            .map_or("unknown", PresenceVisibility::name);
        PresenceSetting {
            visibility: visibility.to_owned(),
            contacts: privacy.contacts.len(),
        }
    }
}

impl Device {
    /// Watches `peer`'s presence (while a chat with it is open; at most
    /// `PRESENCE_WATCHES_PER_DEVICE_MAX` at once). The state comes as [`crate::Event::Presence`]
    /// while the device is connected, which a watch does not cause by itself: a device in
    /// [`crate::Mode::Live`] is.
    pub async fn watch_presence(&self, peer: &str) -> Result<()> {
        let account = self.account_of(peer).await?;
        self.call(|reply| Command::WatchPresence(account, true, reply))
            .await
    }

    /// Stops watching `peer`'s presence.
    pub async fn unwatch_presence(&self, peer: &str) -> Result<()> {
        let account = self.account_of(peer).await?;
        self.call(|reply| Command::WatchPresence(account, false, reply))
            .await
    }

    /// Tells `peer` that this user is typing (`typing`) or stopped. Call it on every keystroke:
    /// an indicator said less than `TYPING_REPEAT_MS` ago is not sent again
    /// ([`TypingSent::Repeated`]). The edge refuses a flood (`Throttled`, with a retry-after).
    pub async fn set_typing(&self, peer: &str, typing: bool) -> Result<TypingSent> {
        let account = self.account_of(peer).await?;
        self.typing_in(TypingIn::Peer(account), typing).await
    }

    /// Tells the members of `group` (a group of this account's) that this user is typing in
    /// its chat, or stopped: each member's connected devices get [`crate::Event::Typing`] with
    /// the group, wherever the member is homed. Repeats and floods as [`Self::set_typing`]; a
    /// region passes it on only when this account is a member.
    pub async fn set_group_typing(&self, group: u64, typing: bool) -> Result<TypingSent> {
        if group == 0 {
            return Err(ClientError::Invalid("there is no group 0".into()));
        }
        self.typing_in(TypingIn::Group(GroupId(group)), typing)
            .await
    }

    async fn typing_in(&self, to: TypingIn, typing: bool) -> Result<TypingSent> {
        let decided = self
            .call(|reply| Command::Typing(to, typing, reply))
            .await?;
        if decided == TypingSent::Repeated {
            return Ok(decided);
        }
        let sent = async { self.request_connection().await?.typing(to, typing).await }.await;
        if let Err(error) = sent {
            // Forgotten, so the next keystroke tries again.
            let _ = self.commands.send(Command::TypingFailed(to)).await;
            return Err(error);
        }
        Ok(TypingSent::Sent)
    }

    /// This account's presence privacy, as its home region keeps it.
    pub async fn presence_privacy(&self) -> Result<PresenceSetting> {
        let connection = self.request_connection().await?;
        let privacy = connection.presence_privacy(None).await?;
        Ok(PresenceSetting::from_wire(&privacy))
    }

    /// Sets who may see this account's presence (online, last seen). `Contacts` means the
    /// accounts of this device's 1:1 chats now (at most `PRESENCE_CONTACTS_MAX`); set it again
    /// to include chats begun since. Watchers are told at once what they may see under it.
    pub async fn set_presence_privacy(
        &self,
        visibility: PresenceVisibility,
    ) -> Result<PresenceSetting> {
        let contacts = match visibility {
            PresenceVisibility::Contacts => self
                .call(Command::ChatPeers)
                .await?
                .into_iter()
                .map(|account| account.0)
                .take(PRESENCE_CONTACTS_MAX)
                .collect(),
            PresenceVisibility::Everyone | PresenceVisibility::Nobody => Vec::new(),
        };
        let privacy = PresencePrivacy {
            visibility: visibility as i32,
            contacts,
        };
        let connection = self.request_connection().await?;
        let stored = connection.presence_privacy(Some(privacy)).await?;
        Ok(PresenceSetting::from_wire(&stored))
    }

    /// The account named `peer`: a contact this device knows, else asked of the directory.
    pub(crate) async fn account_of(&self, peer: &str) -> Result<AccountId> {
        let name = peer.to_owned();
        if let Some(account) = self
            .call(|reply| Command::ContactAccount(name, reply))
            .await?
        {
            return Ok(account);
        }
        let connection = self.request_connection().await?;
        let ids = account_ids(&connection, &[peer]).await?;
        ids.first()
            .copied()
            .ok_or_else(|| ClientError::UnknownPeer(peer.to_owned()))
    }
}
