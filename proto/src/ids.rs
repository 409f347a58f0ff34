//! Identifiers: accounts, devices, groups, chats, client message ids, regions.

use std::fmt;

use sha2::{Digest, Sha256};

/// A person's identity on Relay, assigned by the directory writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountId(pub u64);

/// One installation of an account, numbered from 1 within its account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u32);

/// A region: a home for accounts (its service plus its store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionId(pub u32);

/// A device anywhere: its account and its number within that account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceAddress {
    /// The account owning the device.
    pub account: AccountId,
    /// The device's number within the account.
    pub device: DeviceId,
}

/// A group of accounts, numbered by the directory writer from 1, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u64);

/// A chat: a 1:1 conversation ([`ChatId::direct`]) or a group ([`ChatId::group`]). 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChatId(pub [u8; 16]);

/// The sender device's id for an envelope: the idempotency key of a send. 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientMessageId(pub [u8; 16]);

impl ChatId {
    /// The chat of two accounts: the same whichever of them asks.
    pub fn direct(a: AccountId, b: AccountId) -> Self {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let mut hasher = Sha256::new();
        hasher.update(b"relay-direct-chat-v1");
        hasher.update(low.0.to_be_bytes());
        hasher.update(high.0.to_be_bytes());
        let digest = hasher.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        ChatId(id)
    }

    /// The chat of a group: the first 16 bytes of SHA-256("relay-group-chat-v1" ‖ the group id
    /// as 8 bytes big-endian). A different prefix from [`ChatId::direct`]'s keeps the two kinds
    /// apart.
    pub fn group(group: GroupId) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"relay-group-chat-v1");
        hasher.update(group.0.to_be_bytes());
        let digest = hasher.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        ChatId(id)
    }

    /// Parses a chat id from wire bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::ProtoError> {
        <[u8; 16]>::try_from(bytes)
            .map(ChatId)
            .map_err(|_| crate::ProtoError::invalid("chat id must be 16 bytes"))
    }
}

impl ClientMessageId {
    /// Parses a client message id from wire bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::ProtoError> {
        <[u8; 16]>::try_from(bytes)
            .map(ClientMessageId)
            .map_err(|_| crate::ProtoError::invalid("client message id must be 16 bytes"))
    }
}

fn hex(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for byte in bytes {
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(&self.0, f)
    }
}

impl fmt::Display for ClientMessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(&self.0, f)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group {}", self.0)
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.account.0, self.device.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_chat_is_symmetric_and_distinct() {
        let a = AccountId(1);
        let b = AccountId(2);
        assert_eq!(ChatId::direct(a, b), ChatId::direct(b, a));
        assert_ne!(ChatId::direct(a, b), ChatId::direct(a, AccountId(3)));
    }

    #[test]
    fn group_chats_are_distinct_and_pinned() {
        assert_ne!(ChatId::group(GroupId(1)), ChatId::group(GroupId(2)));
        // A group and a 1:1 chat with the same numbers never share a chat id.
        assert_ne!(
            ChatId::group(GroupId(1)),
            ChatId::direct(AccountId(0), AccountId(1))
        );
        // Clients derive it too: its definition is fixed.
        let mut hasher = Sha256::new();
        hasher.update(b"relay-group-chat-v1");
        hasher.update([0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(ChatId::group(GroupId(7)).0, hasher.finalize()[..16]);
        assert_eq!(GroupId(7).to_string(), "group 7");
    }

    #[test]
    fn ids_reject_wrong_lengths() {
        assert!(ChatId::from_bytes(&[0; 15]).is_err());
        assert!(ClientMessageId::from_bytes(&[0; 17]).is_err());
        assert!(ClientMessageId::from_bytes(&[7; 16]).is_ok());
    }
}
