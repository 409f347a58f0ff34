//! The device's Megolm group sessions, sans IO: one sending session per group it writes to,
//! the sessions other devices shared with it, and the rules for rotating and sharing. The
//! caller passes the group's current member devices and `now`; this module never reads a clock
//! or the directory. After each change it hands the changed pickles over with
//! [`GroupKeys::take_changes`], which the caller commits (sealed, see [`crate::store::groups`])
//! in the same transaction as the envelope or queue page the change belongs to: a ciphertext
//! whose ratchet step is not committed could reuse a message key after a crash.
//!
//! **Sending.** A group message is encrypted once, with the device's [`OutboundGroupSession`]
//! for the group. [`GroupKeys::prepare_send`] first replaces the session when [`rotation`] says
//! so, then names the member devices that do not hold its key yet and the [`GroupKey`] content
//! to send each of them over Olm, at the session's *current* index: a device added mid-stream
//! decrypts what follows and nothing before. The caller records the devices it shared with
//! ([`GroupKeys::mark_shared`]) before [`GroupKeys::encrypt`], which refuses while a member
//! device lacks the key or a rotation is due, so no message is ever made that a current member
//! cannot decrypt (I8) or that a former one can.
//!
//! **Rotation** (the Matrix rule since v1.19): a new session after
//! [`GROUP_SESSION_MESSAGES_MAX`] messages, after [`GROUP_SESSION_AGE_MS_MAX`], and whenever a
//! device the session was shared with is no longer among the group's member devices (its
//! account left or was removed, or the device was unlinked), so a removed member cannot read
//! the next message. A device joining needs no rotation: it gets the key at the current index.
//!
//! **Receiving.** A key is accepted only from the device that made the session, as the Olm
//! session it arrived on authenticates it: the caller passes that device, and a session is kept
//! under (group, sender device, session id). A key naming a session already held from another
//! device or for another group is refused, so no device can plant a session under another's
//! name. A second key of a held session replaces it only if it starts at a lower index (a later
//! export at a higher index would forget messages the device can still decrypt). Decryption
//! names the group, the sending device and the session id the envelope states, and each way it
//! can fail is a [`GroupKeyError`]: no key yet, the wrong sender, a message from before the key,
//! bytes that are not a Megolm message, a message that does not verify.
//!
//! **Bounds.** At most [`GROUP_INBOUND_SESSIONS_PER_SENDER_MAX`] sessions are kept per (group,
//! sending device); a newer one makes the device forget the one it received first. That many
//! sessions cover more messages than a region queues for one device, so a message still on its
//! way never finds its key forgotten. Replayed messages are not detected here: envelopes are
//! deduplicated by their client message id before decryption.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use relay_proto::DeviceAddress;
use vodozemac::megolm::{
    DecryptionError, GroupSession, GroupSessionPickle, InboundGroupSession,
    InboundGroupSessionPickle, MegolmMessage, SessionConfig, SessionOrdering,
};

use crate::content::GroupKey;
use crate::limits::{
    GROUP_INBOUND_SESSIONS_PER_SENDER_MAX, GROUP_SESSION_AGE_MS_MAX, GROUP_SESSION_MESSAGES_MAX,
};

/// What can go wrong with group sessions. Every input from a peer that does not fit is one of
/// these, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupKeyError {
    /// No key for the message's session has arrived (yet): its key travels over Olm and may
    /// still be on its way, or this device was never given it.
    #[error("no key for session {session_id} of device {sender} in group {group} yet")]
    UnknownSession {
        /// The group the message is for.
        group: u64,
        /// The device said to have sent it.
        sender: DeviceAddress,
        /// The session it names.
        session_id: String,
    },
    /// The session is held, but as another device's.
    #[error("session {session_id} is device {holder}'s, not device {claimed}'s")]
    WrongSender {
        /// The session.
        session_id: String,
        /// The device whose key it is.
        holder: DeviceAddress,
        /// The device that claimed it.
        claimed: DeviceAddress,
    },
    /// The session is held, but for another group.
    #[error("session {session_id} is of group {held}, not of group {claimed}")]
    WrongGroup {
        /// The session.
        session_id: String,
        /// The group it is held for.
        held: u64,
        /// The group it was named for.
        claimed: u64,
    },
    /// The message was encrypted before the index this device's key starts at (it became a
    /// member device after that message was sent).
    #[error(
        "message {index} of session {session_id} was sent before this device had the key \
         (it decrypts from message {first_known} on)"
    )]
    BeforeKey {
        /// The session.
        session_id: String,
        /// The first index the held key decrypts.
        first_known: u32,
        /// The message's index.
        index: u32,
    },
    /// The bytes are not a Megolm message.
    #[error("not a group message: {0}")]
    MalformedMessage(String),
    /// The message does not verify or decrypt under its session (damaged or forged).
    #[error("a message of session {session_id} does not decrypt: {reason}")]
    Undecryptable {
        /// The session.
        session_id: String,
        /// What failed.
        reason: String,
    },
    /// A group key that is not well formed (its signature, its session id, its group).
    #[error("not a group session key: {0}")]
    MalformedKey(String),
    /// A key with the id of a held session but another ratchet: not the same session.
    #[error("a key for session {0} does not match the session held under that id")]
    ConflictingKey(String),
    /// The device has no sending session for the group ([`GroupKeys::prepare_send`] first).
    #[error("group {0} has no sending session yet")]
    NoOutboundSession(u64),
    /// The sending session was replaced since its key was prepared for sharing.
    #[error("session {session_id} is no longer the sending session of group {group}")]
    SessionReplaced {
        /// The group.
        group: u64,
        /// The session that was replaced.
        session_id: String,
    },
    /// Member devices lack the sending session's key ([`GroupKeys::prepare_send`] first).
    #[error("the sending session of group {group} is not shared with {devices:?} yet")]
    NotShared {
        /// The group.
        group: u64,
        /// The member devices without the key.
        devices: Vec<DeviceAddress>,
    },
    /// The sending session must be replaced first ([`GroupKeys::prepare_send`] does it).
    #[error("the sending session of group {group} is due for rotation: {reason}")]
    RotationDue {
        /// The group.
        group: u64,
        /// Why.
        reason: RotationReason,
    },
    /// A stored session does not unpickle, or a session does not pickle.
    #[error("group session pickle: {0}")]
    Pickle(String),
}

/// Why a sending session is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationReason {
    /// It encrypted [`GROUP_SESSION_MESSAGES_MAX`] messages.
    MessagesMax,
    /// It is [`GROUP_SESSION_AGE_MS_MAX`] old.
    AgeMax,
    /// A device it was shared with is no longer a member device of the group.
    DeviceLeft(DeviceAddress),
}

impl fmt::Display for RotationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RotationReason::MessagesMax => {
                write!(f, "it encrypted {GROUP_SESSION_MESSAGES_MAX} messages")
            }
            RotationReason::AgeMax => write!(f, "it is {GROUP_SESSION_AGE_MS_MAX} ms old"),
            RotationReason::DeviceLeft(device) => {
                write!(f, "device {device} is no longer a member device")
            }
        }
    }
}

/// What the rotation rule looks at.
#[derive(Debug, Clone, Copy)]
pub struct RotationFacts<'a> {
    /// Messages the session encrypted (its next message index).
    pub messages_encrypted: u32,
    /// When the session was made, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The devices that were given its key.
    pub shared_with: &'a BTreeSet<DeviceAddress>,
    /// The group's current member devices.
    pub members: &'a BTreeSet<DeviceAddress>,
    /// Now, in ms since the Unix epoch.
    pub now_ms: u64,
}

/// Whether a sending session must be replaced before its next message, and why (see the
/// module doc). A clock that went back never rotates by age.
pub fn rotation(facts: RotationFacts<'_>) -> Option<RotationReason> {
    if let Some(gone) = facts
        .shared_with
        .iter()
        .find(|device| !facts.members.contains(device))
    {
        return Some(RotationReason::DeviceLeft(*gone));
    }
    if facts.messages_encrypted >= GROUP_SESSION_MESSAGES_MAX {
        return Some(RotationReason::MessagesMax);
    }
    if facts.now_ms.saturating_sub(facts.created_at_ms) >= GROUP_SESSION_AGE_MS_MAX {
        return Some(RotationReason::AgeMax);
    }
    None
}

/// The member devices that still need a session's key: every member device but `me` that was
/// not given it, in address order.
pub fn devices_needing_key(
    shared_with: &BTreeSet<DeviceAddress>,
    members: &BTreeSet<DeviceAddress>,
    me: DeviceAddress,
) -> Vec<DeviceAddress> {
    members
        .iter()
        .filter(|device| **device != me && !shared_with.contains(device))
        .copied()
        .collect()
}

/// The device's sending session for one group, and the devices holding its key.
pub struct OutboundGroupSession {
    group: u64,
    session: GroupSession,
    created_at_ms: u64,
    shared_with: BTreeSet<DeviceAddress>,
}

impl fmt::Debug for OutboundGroupSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundGroupSession")
            .field("group", &self.group)
            .field("session_id", &self.session.session_id())
            .field("message_index", &self.session.message_index())
            .field("created_at_ms", &self.created_at_ms)
            .field("shared_with", &self.shared_with)
            .finish()
    }
}

impl OutboundGroupSession {
    fn new(group: u64, now_ms: u64) -> Self {
        OutboundGroupSession {
            group,
            session: GroupSession::new(SessionConfig::version_1()),
            created_at_ms: now_ms,
            shared_with: BTreeSet::new(),
        }
    }

    /// The group.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// The session's id.
    pub fn session_id(&self) -> String {
        self.session.session_id()
    }

    /// The index of the next message (the number of messages encrypted so far).
    pub fn message_index(&self) -> u32 {
        self.session.message_index()
    }

    /// When the session was made, in ms since the Unix epoch.
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    /// The devices that were given the key.
    pub fn shared_with(&self) -> &BTreeSet<DeviceAddress> {
        &self.shared_with
    }

    /// Whether the session must be replaced before its next message (see [`rotation`]).
    pub fn rotation(
        &self,
        members: &BTreeSet<DeviceAddress>,
        now_ms: u64,
    ) -> Option<RotationReason> {
        rotation(RotationFacts {
            messages_encrypted: self.message_index(),
            created_at_ms: self.created_at_ms,
            shared_with: &self.shared_with,
            members,
            now_ms,
        })
    }

    /// The key content to give a device now: the session key at the current index.
    pub fn key(&self) -> GroupKey {
        GroupKey {
            group: self.group,
            session_id: self.session.session_id(),
            session_key: self.session.session_key().to_bytes(),
        }
    }
}

/// How [`GroupKeys::prepare_send`] came by the sending session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewSession {
    /// The device had none for the group.
    First,
    /// The previous one was replaced.
    Rotated(RotationReason),
}

/// What to do before the next message of a group: give `key` to `devices` over Olm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharePlan {
    /// The sending session's id.
    pub session_id: String,
    /// The index its next message gets (the index `key` starts at).
    pub index: u32,
    /// Whether the session is new, and why.
    pub new_session: Option<NewSession>,
    /// Member devices that need the key, in address order (empty: none).
    pub devices: Vec<DeviceAddress>,
    /// The key content for each of them.
    pub key: GroupKey,
}

/// One encrypted group message, for the envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMessage {
    /// The session that encrypted it (the envelope states it beside the ciphertext).
    pub session_id: String,
    /// Its index in the session.
    pub index: u32,
    /// The Megolm message.
    pub bytes: Vec<u8>,
}

/// A decrypted group message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDecrypted {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// Its index in the session.
    pub index: u32,
}

/// What [`GroupKeys::accept_key`] did with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAccepted {
    /// A session not held before.
    New,
    /// A held session now decrypts from an earlier index.
    Earlier,
    /// The held session already decrypts from this index or an earlier one; nothing changed.
    Kept,
}

/// Facts about a held session from another device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundInfo {
    /// The group.
    pub group: u64,
    /// The device that made the session.
    pub sender: DeviceAddress,
    /// The first index the held key decrypts.
    pub first_known_index: u32,
}

/// A stored sending session (the pickle is serde_json, to be sealed before it is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRow {
    /// The group.
    pub group: u64,
    /// The session's id.
    pub session_id: String,
    /// When the session was made, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The devices holding its key; `None` in changes when they did not change.
    pub shared_with: Option<Vec<DeviceAddress>>,
    /// The pickle.
    pub pickle: String,
}

/// A stored session from another device (the pickle is serde_json, to be sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRow {
    /// The session's id.
    pub session_id: String,
    /// The group.
    pub group: u64,
    /// The device that made it.
    pub sender: DeviceAddress,
    /// The first index it decrypts.
    pub first_known_index: u32,
    /// The order of arrival among all sessions this device received (the oldest is forgotten
    /// first).
    pub received_seq: u64,
    /// The pickle.
    pub pickle: String,
}

/// Pickles that changed since the last [`GroupKeys::take_changes`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GroupKeyChanges {
    /// Sending sessions made, advanced or shared further (one per group: a rotated session
    /// replaces the group's row).
    pub outbound: Vec<OutboundRow>,
    /// Sessions from other devices received or improved.
    pub inbound: Vec<InboundRow>,
    /// Sessions from other devices forgotten (by id).
    pub inbound_removed: Vec<String>,
}

impl GroupKeyChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.outbound.is_empty() && self.inbound.is_empty() && self.inbound_removed.is_empty()
    }
}

/// A session from another device as held.
struct Inbound {
    group: u64,
    sender: DeviceAddress,
    session: InboundGroupSession,
    received_seq: u64,
}

/// The device's group sessions: its sending sessions and those shared with it.
pub struct GroupKeys {
    me: DeviceAddress,
    outbound: BTreeMap<u64, OutboundGroupSession>,
    inbound: BTreeMap<String, Inbound>,
    /// Held session ids per (group, sender), by order of arrival.
    arrivals: BTreeMap<(u64, DeviceAddress), BTreeMap<u64, String>>,
    next_received_seq: u64,
    inbound_per_sender_max: usize,
    changed_outbound: BTreeSet<u64>,
    changed_shares: BTreeSet<u64>,
    changed_inbound: BTreeSet<String>,
    removed_inbound: BTreeSet<String>,
}

impl fmt::Debug for GroupKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupKeys")
            .field("me", &self.me)
            .field("outbound_groups", &self.outbound.keys().collect::<Vec<_>>())
            .field("inbound_sessions", &self.inbound.len())
            .finish()
    }
}

impl GroupKeys {
    /// No sessions yet, for the device `me`.
    pub fn new(me: DeviceAddress) -> Self {
        GroupKeys {
            me,
            outbound: BTreeMap::new(),
            inbound: BTreeMap::new(),
            arrivals: BTreeMap::new(),
            next_received_seq: 0,
            inbound_per_sender_max: GROUP_INBOUND_SESSIONS_PER_SENDER_MAX,
            changed_outbound: BTreeSet::new(),
            changed_shares: BTreeSet::new(),
            changed_inbound: BTreeSet::new(),
            removed_inbound: BTreeSet::new(),
        }
    }

    /// Restores the sessions from rows written from [`GroupKeys::take_changes`] (an outbound
    /// row's `shared_with` must be `Some`). A row that does not unpickle, or whose pickle is of
    /// another session than its id, is an error.
    pub fn from_rows(
        me: DeviceAddress,
        outbound: Vec<OutboundRow>,
        inbound: Vec<InboundRow>,
    ) -> Result<Self, GroupKeyError> {
        let mut keys = GroupKeys::new(me);
        for row in outbound {
            let pickle: GroupSessionPickle =
                serde_json::from_str(&row.pickle).map_err(|error| {
                    GroupKeyError::Pickle(format!(
                        "sending session of group {}: {error}",
                        row.group
                    ))
                })?;
            let session = GroupSession::from_pickle(pickle);
            if session.session_id() != row.session_id {
                return Err(GroupKeyError::Pickle(format!(
                    "the sending session of group {} is not session {}",
                    row.group, row.session_id
                )));
            }
            keys.outbound.insert(
                row.group,
                OutboundGroupSession {
                    group: row.group,
                    session,
                    created_at_ms: row.created_at_ms,
                    shared_with: row.shared_with.unwrap_or_default().into_iter().collect(),
                },
            );
        }
        for row in inbound {
            let pickle: InboundGroupSessionPickle =
                serde_json::from_str(&row.pickle).map_err(|error| {
                    GroupKeyError::Pickle(format!("session {}: {error}", row.session_id))
                })?;
            let session = InboundGroupSession::from_pickle(pickle);
            if session.session_id() != row.session_id {
                return Err(GroupKeyError::Pickle(format!(
                    "the pickle stored as session {} is of another session",
                    row.session_id
                )));
            }
            keys.next_received_seq = keys
                .next_received_seq
                .max(row.received_seq.saturating_add(1));
            keys.arrivals
                .entry((row.group, row.sender))
                .or_default()
                .insert(row.received_seq, row.session_id.clone());
            keys.inbound.insert(
                row.session_id,
                Inbound {
                    group: row.group,
                    sender: row.sender,
                    session,
                    received_seq: row.received_seq,
                },
            );
        }
        Ok(keys)
    }

    /// The same, keeping at most `max` sessions per (group, sender): tests of the bound.
    #[cfg(test)]
    pub(crate) fn with_inbound_per_sender_max(mut self, max: usize) -> Self {
        self.inbound_per_sender_max = max;
        self
    }

    /// The device these sessions belong to.
    pub fn me(&self) -> DeviceAddress {
        self.me
    }

    /// The sending session of `group`, if there is one.
    pub fn outbound(&self, group: u64) -> Option<&OutboundGroupSession> {
        self.outbound.get(&group)
    }

    /// What is known of the held session `session_id` from another device.
    pub fn inbound(&self, session_id: &str) -> Option<InboundInfo> {
        self.inbound.get(session_id).map(|held| InboundInfo {
            group: held.group,
            sender: held.sender,
            first_known_index: held.session.first_known_index(),
        })
    }

    /// Makes the sending session of `group` ready for its next message to `members` (the
    /// group's current member devices, with or without this one): replaces it if [`rotation`]
    /// says so (or makes the first), and says which devices need its key.
    pub fn prepare_send(
        &mut self,
        group: u64,
        members: &BTreeSet<DeviceAddress>,
        now_ms: u64,
    ) -> SharePlan {
        let made = || OutboundGroupSession::new(group, now_ms);
        let (session, new_session) = match self.outbound.entry(group) {
            Entry::Vacant(vacant) => (vacant.insert(made()), Some(NewSession::First)),
            Entry::Occupied(mut occupied) => {
                let rotated = occupied.get().rotation(members, now_ms);
                if rotated.is_some() {
                    occupied.insert(made());
                }
                (occupied.into_mut(), rotated.map(NewSession::Rotated))
            }
        };
        if new_session.is_some() {
            self.changed_outbound.insert(group);
            self.changed_shares.insert(group);
        }
        SharePlan {
            session_id: session.session_id(),
            index: session.message_index(),
            new_session,
            devices: devices_needing_key(&session.shared_with, members, self.me),
            key: session.key(),
        }
    }

    /// Records that the key of `group`'s sending session `session_id` was given to `devices`
    /// (in the transaction that stores the Olm messages carrying it).
    pub fn mark_shared(
        &mut self,
        group: u64,
        session_id: &str,
        devices: &[DeviceAddress],
    ) -> Result<(), GroupKeyError> {
        let session = self
            .outbound
            .get_mut(&group)
            .ok_or(GroupKeyError::NoOutboundSession(group))?;
        if session.session_id() != session_id {
            return Err(GroupKeyError::SessionReplaced {
                group,
                session_id: session_id.to_owned(),
            });
        }
        let before = session.shared_with.len();
        session
            .shared_with
            .extend(devices.iter().filter(|device| **device != self.me));
        if session.shared_with.len() != before {
            self.changed_outbound.insert(group);
            self.changed_shares.insert(group);
        }
        Ok(())
    }

    /// Encrypts `plaintext` for `group`, whose current member devices are `members`. Refuses
    /// while a rotation is due or a member device lacks the key: [`GroupKeys::prepare_send`]
    /// and [`GroupKeys::mark_shared`] come first.
    pub fn encrypt(
        &mut self,
        group: u64,
        members: &BTreeSet<DeviceAddress>,
        now_ms: u64,
        plaintext: &[u8],
    ) -> Result<GroupMessage, GroupKeyError> {
        let session = self
            .outbound
            .get_mut(&group)
            .ok_or(GroupKeyError::NoOutboundSession(group))?;
        if let Some(reason) = session.rotation(members, now_ms) {
            return Err(GroupKeyError::RotationDue { group, reason });
        }
        let missing = devices_needing_key(&session.shared_with, members, self.me);
        if !missing.is_empty() {
            return Err(GroupKeyError::NotShared {
                group,
                devices: missing,
            });
        }
        let message = session.session.encrypt(plaintext);
        self.changed_outbound.insert(group);
        Ok(GroupMessage {
            session_id: session.session_id(),
            index: message.message_index(),
            bytes: message.to_bytes(),
        })
    }

    /// Accepts `key`, which arrived over the Olm session with `sender` (the authenticated
    /// sending device), under (group, sender, session id); see the module doc for what is
    /// refused and when a held session is replaced.
    pub fn accept_key(
        &mut self,
        sender: DeviceAddress,
        key: &GroupKey,
    ) -> Result<KeyAccepted, GroupKeyError> {
        let session_key = key.session_key()?;
        let mut session = InboundGroupSession::new(&session_key, SessionConfig::version_1());
        let session_id = session.session_id();
        if let Some(held) = self.inbound.get_mut(&session_id) {
            if held.sender != sender {
                return Err(GroupKeyError::WrongSender {
                    session_id,
                    holder: held.sender,
                    claimed: sender,
                });
            }
            if held.group != key.group {
                return Err(GroupKeyError::WrongGroup {
                    session_id,
                    held: held.group,
                    claimed: key.group,
                });
            }
            return match held.session.compare(&mut session) {
                SessionOrdering::Equal | SessionOrdering::Better => Ok(KeyAccepted::Kept),
                SessionOrdering::Worse => {
                    held.session = session;
                    self.changed_inbound.insert(session_id);
                    Ok(KeyAccepted::Earlier)
                }
                SessionOrdering::Unconnected => Err(GroupKeyError::ConflictingKey(session_id)),
            };
        }
        let received_seq = self.next_received_seq;
        self.next_received_seq += 1;
        let arrivals = self.arrivals.entry((key.group, sender)).or_default();
        arrivals.insert(received_seq, session_id.clone());
        while arrivals.len() > self.inbound_per_sender_max {
            let Some((_, oldest)) = arrivals.pop_first() else {
                break;
            };
            self.inbound.remove(&oldest);
            self.changed_inbound.remove(&oldest);
            self.removed_inbound.insert(oldest);
        }
        self.inbound.insert(
            session_id.clone(),
            Inbound {
                group: key.group,
                sender,
                session,
                received_seq,
            },
        );
        self.removed_inbound.remove(&session_id);
        self.changed_inbound.insert(session_id);
        Ok(KeyAccepted::New)
    }

    /// Decrypts `message`, which an envelope of `group` from `sender` says session
    /// `session_id` encrypted.
    pub fn decrypt(
        &mut self,
        group: u64,
        sender: DeviceAddress,
        session_id: &str,
        message: &[u8],
    ) -> Result<GroupDecrypted, GroupKeyError> {
        let Some(held) = self.inbound.get_mut(session_id) else {
            return Err(GroupKeyError::UnknownSession {
                group,
                sender,
                session_id: session_id.to_owned(),
            });
        };
        if held.sender != sender {
            return Err(GroupKeyError::WrongSender {
                session_id: session_id.to_owned(),
                holder: held.sender,
                claimed: sender,
            });
        }
        if held.group != group {
            return Err(GroupKeyError::WrongGroup {
                session_id: session_id.to_owned(),
                held: held.group,
                claimed: group,
            });
        }
        let message = MegolmMessage::from_bytes(message)
            .map_err(|error| GroupKeyError::MalformedMessage(error.to_string()))?;
        // Decryption moves only a cache of the ratchet, not the pickled state: nothing to save.
        match held.session.decrypt(&message) {
            Ok(decrypted) => Ok(GroupDecrypted {
                plaintext: decrypted.plaintext,
                index: decrypted.message_index,
            }),
            Err(DecryptionError::UnknownMessageIndex(first_known, index)) => {
                Err(GroupKeyError::BeforeKey {
                    session_id: session_id.to_owned(),
                    first_known,
                    index,
                })
            }
            Err(error) => Err(GroupKeyError::Undecryptable {
                session_id: session_id.to_owned(),
                reason: error.to_string(),
            }),
        }
    }

    /// Pickles of everything that changed since the last call.
    pub fn take_changes(&mut self) -> Result<GroupKeyChanges, GroupKeyError> {
        let mut changes = GroupKeyChanges::default();
        for group in &self.changed_outbound {
            let Some(session) = self.outbound.get(group) else {
                continue;
            };
            let pickle = serde_json::to_string(&session.session.pickle()).map_err(|error| {
                GroupKeyError::Pickle(format!("sending session of group {group}: {error}"))
            })?;
            changes.outbound.push(OutboundRow {
                group: *group,
                session_id: session.session_id(),
                created_at_ms: session.created_at_ms,
                shared_with: self
                    .changed_shares
                    .contains(group)
                    .then(|| session.shared_with.iter().copied().collect()),
                pickle,
            });
        }
        for session_id in &self.changed_inbound {
            let Some(held) = self.inbound.get(session_id) else {
                continue;
            };
            let pickle = serde_json::to_string(&held.session.pickle())
                .map_err(|error| GroupKeyError::Pickle(format!("session {session_id}: {error}")))?;
            changes.inbound.push(InboundRow {
                session_id: session_id.clone(),
                group: held.group,
                sender: held.sender,
                first_known_index: held.session.first_known_index(),
                received_seq: held.received_seq,
                pickle,
            });
        }
        changes.inbound_removed = self.removed_inbound.iter().cloned().collect();
        self.changed_outbound.clear();
        self.changed_shares.clear();
        self.changed_inbound.clear();
        self.removed_inbound.clear();
        Ok(changes)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::content::Content;
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};
    use relay_proto::{AccountId, DeviceId};

    pub(crate) const GROUP: u64 = 7;
    const DAY_MS: u64 = 24 * 3600 * 1000;
    pub(crate) const T0: u64 = 1_000 * DAY_MS;

    pub(crate) fn device(account: u64, device: u32) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(account),
            device: DeviceId(device),
        }
    }

    pub(crate) const ALICE: DeviceAddress = DeviceAddress {
        account: AccountId(1),
        device: DeviceId(1),
    };
    const BOB_1: DeviceAddress = DeviceAddress {
        account: AccountId(2),
        device: DeviceId(1),
    };
    const BOB_2: DeviceAddress = DeviceAddress {
        account: AccountId(2),
        device: DeviceId(2),
    };
    const CAROL: DeviceAddress = DeviceAddress {
        account: AccountId(3),
        device: DeviceId(1),
    };
    const DAVE: DeviceAddress = DeviceAddress {
        account: AccountId(4),
        device: DeviceId(1),
    };

    fn members(devices: &[DeviceAddress]) -> BTreeSet<DeviceAddress> {
        devices.iter().copied().collect()
    }

    /// A sending device and the receiving devices, each with its own [`GroupKeys`]; keys go
    /// from the sender to the receivers as Olm would carry them: encoded as contents and
    /// decoded on arrival.
    pub(crate) struct Group {
        pub(crate) sender: GroupKeys,
        pub(crate) receivers: BTreeMap<DeviceAddress, GroupKeys>,
        pub(crate) members: BTreeSet<DeviceAddress>,
    }

    impl Group {
        pub(crate) fn new(sender: DeviceAddress, others: &[DeviceAddress]) -> Self {
            let mut all = members(others);
            all.insert(sender);
            Group {
                sender: GroupKeys::new(sender),
                receivers: others.iter().map(|d| (*d, GroupKeys::new(*d))).collect(),
                members: all,
            }
        }

        /// Prepares, shares the key with whoever needs it, encrypts: what the send path does.
        pub(crate) fn send(&mut self, text: &str, now_ms: u64) -> (SharePlan, GroupMessage) {
            let plan = self.sender.prepare_send(GROUP, &self.members, now_ms);
            let wire = Content::group_key(plan.key.clone()).to_bytes();
            for device in &plan.devices {
                let content = Content::from_bytes(&wire).expect("a group key decodes");
                let Some(crate::content::body::Body::GroupKey(key)) = content.body else {
                    panic!("not a group key");
                };
                let receiver = self.receivers.get_mut(device).expect("a receiver");
                assert_eq!(
                    receiver.accept_key(self.sender.me(), &key),
                    Ok(KeyAccepted::New)
                );
            }
            self.sender
                .mark_shared(GROUP, &plan.session_id, &plan.devices)
                .expect("mark shared");
            let message = self
                .sender
                .encrypt(GROUP, &self.members, now_ms, text.as_bytes())
                .expect("encrypt");
            assert_eq!(message.session_id, plan.session_id);
            assert_eq!(message.index, plan.index);
            (plan, message)
        }

        pub(crate) fn open(
            &mut self,
            device: DeviceAddress,
            message: &GroupMessage,
        ) -> Result<GroupDecrypted, GroupKeyError> {
            let sender = self.sender.me();
            self.receivers
                .get_mut(&device)
                .expect("a receiver")
                .decrypt(GROUP, sender, &message.session_id, &message.bytes)
        }
    }

    // --- The rules on their own ---

    #[test]
    fn rotation_follows_count_age_and_departures_only() {
        let shared = members(&[BOB_1, BOB_2, CAROL]);
        let current = members(&[ALICE, BOB_1, BOB_2, CAROL]);
        let facts = |messages_encrypted, created_at_ms, members| RotationFacts {
            messages_encrypted,
            created_at_ms,
            shared_with: &shared,
            members,
            now_ms: T0,
        };
        assert_eq!(rotation(facts(0, T0, &current)), None);
        assert_eq!(
            rotation(facts(GROUP_SESSION_MESSAGES_MAX - 1, T0, &current)),
            None
        );
        assert_eq!(
            rotation(facts(GROUP_SESSION_MESSAGES_MAX, T0, &current)),
            Some(RotationReason::MessagesMax)
        );
        let young = T0 - GROUP_SESSION_AGE_MS_MAX + 1;
        assert_eq!(rotation(facts(5, young, &current)), None);
        assert_eq!(
            rotation(facts(5, T0 - GROUP_SESSION_AGE_MS_MAX, &current)),
            Some(RotationReason::AgeMax)
        );
        assert_eq!(
            rotation(facts(5, T0 + DAY_MS, &current)),
            None,
            "a clock that went back does not rotate"
        );

        // A device leaving (Bob unlinked his second device), or a member (Carol).
        let without_bob_2 = members(&[ALICE, BOB_1, CAROL]);
        assert_eq!(
            rotation(facts(5, T0, &without_bob_2)),
            Some(RotationReason::DeviceLeft(BOB_2))
        );
        let without_carol = members(&[ALICE, BOB_1, BOB_2]);
        assert_eq!(
            rotation(facts(5, T0, &without_carol)),
            Some(RotationReason::DeviceLeft(CAROL))
        );
        // Joining needs none: the newcomer gets the key at the current index.
        let with_dave = members(&[ALICE, BOB_1, BOB_2, CAROL, DAVE]);
        assert_eq!(rotation(facts(5, T0, &with_dave)), None);
        // A departure is named first, whatever else is due.
        assert_eq!(
            rotation(facts(GROUP_SESSION_MESSAGES_MAX, 0, &without_carol)),
            Some(RotationReason::DeviceLeft(CAROL))
        );
    }

    #[test]
    fn the_devices_needing_the_key_are_the_members_without_it_but_me() {
        let shared = members(&[BOB_1]);
        let current = members(&[ALICE, BOB_1, BOB_2, CAROL]);
        assert_eq!(
            devices_needing_key(&shared, &current, ALICE),
            vec![BOB_2, CAROL]
        );
        assert_eq!(
            devices_needing_key(&current, &current, ALICE),
            Vec::<DeviceAddress>::new()
        );
        // A former member that still holds the key needs nothing (rotation handles it).
        let shared = members(&[BOB_1, BOB_2, CAROL, DAVE]);
        assert!(devices_needing_key(&shared, &current, ALICE).is_empty());
    }

    // --- Real sessions ---

    #[test]
    fn alice_shares_with_bobs_two_devices_and_carol_and_all_decrypt() {
        let mut group = Group::new(ALICE, &[BOB_1, BOB_2, CAROL]);
        let (plan, first) = group.send("hello group", T0);
        assert_eq!(plan.new_session, Some(NewSession::First));
        assert_eq!(plan.devices, vec![BOB_1, BOB_2, CAROL]);
        assert_eq!(plan.index, 0);
        for device in [BOB_1, BOB_2, CAROL] {
            let opened = group.open(device, &first).expect("decrypts");
            assert_eq!(opened.plaintext, b"hello group");
            assert_eq!(opened.index, 0);
        }
        // The next message needs no sharing: the same session at the next index.
        let (plan, second) = group.send("again", T0 + 1);
        assert_eq!(plan.new_session, None);
        assert!(plan.devices.is_empty());
        assert_eq!(second.index, 1);
        for device in [BOB_1, BOB_2, CAROL] {
            assert_eq!(group.open(device, &second).expect("decrypts").index, 1);
        }
        let outbound = group.sender.outbound(GROUP).expect("a session");
        assert_eq!(outbound.shared_with(), &members(&[BOB_1, BOB_2, CAROL]));
        assert_eq!(outbound.message_index(), 2);
        let info = group.receivers[&CAROL]
            .inbound(&second.session_id)
            .expect("held");
        assert_eq!(
            info,
            InboundInfo {
                group: GROUP,
                sender: ALICE,
                first_known_index: 0
            }
        );
    }

    #[test]
    fn a_session_rotates_after_its_hundredth_message() {
        let mut group = Group::new(ALICE, &[BOB_1, CAROL]);
        let mut first_session = None;
        for n in 0..GROUP_SESSION_MESSAGES_MAX {
            let (_, message) = group.send(&format!("message {n}"), T0 + u64::from(n));
            first_session.get_or_insert(message.session_id.clone());
            assert_eq!(Some(&message.session_id), first_session.as_ref());
            assert_eq!(message.index, n);
        }
        // The 101st may not go out in the old session...
        let error = group
            .sender
            .encrypt(GROUP, &group.members, T0 + 200, b"too many")
            .expect_err("rotation due");
        assert_eq!(
            error,
            GroupKeyError::RotationDue {
                group: GROUP,
                reason: RotationReason::MessagesMax
            }
        );
        // ...it goes in a new one, whose key goes to every member device again.
        let (plan, message) = group.send("message 100", T0 + 200);
        assert_eq!(
            plan.new_session,
            Some(NewSession::Rotated(RotationReason::MessagesMax))
        );
        assert_eq!(plan.devices, vec![BOB_1, CAROL]);
        assert_ne!(Some(&message.session_id), first_session.as_ref());
        assert_eq!(message.index, 0);
        for device in [BOB_1, CAROL] {
            assert_eq!(
                group.open(device, &message).expect("decrypts").plaintext,
                b"message 100"
            );
        }
    }

    #[test]
    fn a_session_rotates_after_seven_days() {
        let mut group = Group::new(ALICE, &[BOB_1, BOB_2]);
        let (_, old) = group.send("monday", T0);
        let (plan, _) = group.send("almost a week", T0 + GROUP_SESSION_AGE_MS_MAX - 1);
        assert_eq!(plan.new_session, None);
        let (plan, new) = group.send("a week later", T0 + GROUP_SESSION_AGE_MS_MAX);
        assert_eq!(
            plan.new_session,
            Some(NewSession::Rotated(RotationReason::AgeMax))
        );
        assert_ne!(new.session_id, old.session_id);
        assert_eq!(
            group
                .sender
                .outbound(GROUP)
                .expect("session")
                .created_at_ms(),
            T0 + GROUP_SESSION_AGE_MS_MAX
        );
        for device in [BOB_1, BOB_2] {
            assert_eq!(
                group.open(device, &new).expect("decrypts").plaintext,
                b"a week later"
            );
            // The old session still opens its own messages (still on their way, say).
            assert_eq!(group.open(device, &old).expect("decrypts").index, 0);
        }
    }

    #[test]
    fn carol_removed_cannot_read_the_next_message() {
        let carol_2 = device(3, 2);
        let mut group = Group::new(ALICE, &[BOB_1, BOB_2, CAROL, carol_2]);
        let (_, before) = group.send("carol is here", T0);
        for device in [BOB_1, BOB_2, CAROL, carol_2] {
            assert!(group.open(device, &before).is_ok());
        }

        group.members.remove(&CAROL);
        group.members.remove(&carol_2);
        let error = group
            .sender
            .encrypt(GROUP, &group.members, T0 + 1, b"x")
            .expect_err("rotation due");
        assert!(matches!(
            error,
            GroupKeyError::RotationDue {
                reason: RotationReason::DeviceLeft(_),
                ..
            }
        ));
        let (plan, after) = group.send("carol is gone", T0 + 1);
        assert_eq!(
            plan.new_session,
            Some(NewSession::Rotated(RotationReason::DeviceLeft(CAROL)))
        );
        assert_eq!(
            plan.devices,
            vec![BOB_1, BOB_2],
            "Carol's devices get nothing"
        );
        assert_ne!(after.session_id, before.session_id);
        for device in [BOB_1, BOB_2] {
            assert_eq!(
                group.open(device, &after).expect("decrypts").plaintext,
                b"carol is gone"
            );
        }
        for device in [CAROL, carol_2] {
            let error = group.open(device, &after).expect_err("no key");
            assert_eq!(
                error,
                GroupKeyError::UnknownSession {
                    group: GROUP,
                    sender: ALICE,
                    session_id: after.session_id.clone(),
                }
            );
            assert!(error.to_string().contains("no key for session"), "{error}");
            assert!(
                group.receivers[&device]
                    .inbound(&after.session_id)
                    .is_none()
            );
        }
        // Her old key opens nothing new either: the new session is another ratchet entirely.
        let carol_keys = group.receivers.get_mut(&CAROL).expect("carol");
        let forged = carol_keys.decrypt(GROUP, ALICE, &before.session_id, &after.bytes);
        assert!(
            matches!(forged, Err(GroupKeyError::Undecryptable { .. })),
            "{forged:?}"
        );
    }

    #[test]
    fn a_device_added_mid_stream_decrypts_from_its_first_message_on() {
        let mut group = Group::new(ALICE, &[BOB_1]);
        group.receivers.insert(DAVE, GroupKeys::new(DAVE));
        let mut earlier = Vec::new();
        for n in 0..3 {
            earlier.push(group.send(&format!("before dave {n}"), T0 + n).1);
        }
        group.members.insert(DAVE);
        let error = group
            .sender
            .encrypt(GROUP, &group.members, T0 + 3, b"x")
            .expect_err("dave lacks the key");
        assert_eq!(
            error,
            GroupKeyError::NotShared {
                group: GROUP,
                devices: vec![DAVE]
            }
        );
        let (plan, first) = group.send("welcome dave", T0 + 3);
        assert_eq!(plan.new_session, None, "joining does not rotate");
        assert_eq!(plan.devices, vec![DAVE]);
        assert_eq!(plan.index, 3);
        assert_eq!(first.session_id, earlier[0].session_id);
        let (_, next) = group.send("and more", T0 + 4);
        assert_eq!(group.open(DAVE, &first).expect("decrypts").index, 3);
        assert_eq!(
            group.open(DAVE, &next).expect("decrypts").plaintext,
            b"and more"
        );
        for (n, message) in earlier.iter().enumerate() {
            assert_eq!(
                group.open(DAVE, message).expect_err("sent before dave"),
                GroupKeyError::BeforeKey {
                    session_id: message.session_id.clone(),
                    first_known: 3,
                    index: n as u32,
                }
            );
            assert!(group.open(BOB_1, message).is_ok(), "bob had it all along");
        }
    }

    #[test]
    fn a_key_is_kept_under_its_sender_and_a_later_index_never_replaces_an_earlier() {
        let mut alice = GroupKeys::new(ALICE);
        let mut bob = GroupKeys::new(BOB_1);
        let everyone = members(&[ALICE, BOB_1]);
        let plan = alice.prepare_send(GROUP, &everyone, T0);
        let at_zero = plan.key.clone();
        alice
            .mark_shared(GROUP, &plan.session_id, &[BOB_1])
            .expect("shared");
        let mut sent = Vec::new();
        for n in 0..5u8 {
            sent.push(alice.encrypt(GROUP, &everyone, T0, &[n]).expect("encrypt"));
        }
        let at_five = alice.outbound(GROUP).expect("session").key();

        // Mallory forwards Alice's key as his own: refused once Bob holds it from Alice, and
        // Alice's own key cannot be taken over afterwards either.
        let mallory = device(66, 1);
        assert_eq!(bob.accept_key(ALICE, &at_five), Ok(KeyAccepted::New));
        assert_eq!(
            bob.accept_key(mallory, &at_zero),
            Err(GroupKeyError::WrongSender {
                session_id: plan.session_id.clone(),
                holder: ALICE,
                claimed: mallory,
            })
        );
        assert!(matches!(
            bob.decrypt(GROUP, mallory, &sent[4].session_id, &sent[4].bytes),
            Err(GroupKeyError::WrongSender { .. })
        ));
        // The same session named for another group is refused too.
        let mut elsewhere = at_zero.clone();
        elsewhere.group = GROUP + 1;
        assert!(matches!(
            bob.accept_key(ALICE, &elsewhere),
            Err(GroupKeyError::WrongGroup { held: GROUP, .. })
        ));
        assert!(matches!(
            bob.decrypt(GROUP + 1, ALICE, &sent[4].session_id, &sent[4].bytes),
            Err(GroupKeyError::WrongGroup { .. })
        ));

        // Bob holds the key from index 5; the key from index 0 improves it...
        assert!(matches!(
            bob.decrypt(GROUP, ALICE, &sent[0].session_id, &sent[0].bytes),
            Err(GroupKeyError::BeforeKey { first_known: 5, .. })
        ));
        bob.take_changes().expect("changes");
        assert_eq!(bob.accept_key(ALICE, &at_zero), Ok(KeyAccepted::Earlier));
        assert_eq!(bob.take_changes().expect("changes").inbound.len(), 1);
        // ...and a later export at index 5 never takes that back.
        assert_eq!(bob.accept_key(ALICE, &at_five), Ok(KeyAccepted::Kept));
        assert_eq!(bob.accept_key(ALICE, &at_zero), Ok(KeyAccepted::Kept));
        assert!(bob.take_changes().expect("changes").is_empty());
        assert_eq!(
            bob.inbound(&plan.session_id)
                .expect("held")
                .first_known_index,
            0
        );
        for (n, message) in sent.iter().enumerate() {
            let opened = bob
                .decrypt(GROUP, ALICE, &message.session_id, &message.bytes)
                .expect("decrypts");
            assert_eq!(opened.plaintext, vec![n as u8]);
        }
    }

    #[test]
    fn sharing_goes_to_the_current_session_only() {
        let mut alice = GroupKeys::new(ALICE);
        assert_eq!(
            alice.encrypt(GROUP, &members(&[ALICE]), T0, b"x"),
            Err(GroupKeyError::NoOutboundSession(GROUP))
        );
        let everyone = members(&[ALICE, BOB_1]);
        let old = alice.prepare_send(GROUP, &everyone, T0);
        let new = alice.prepare_send(GROUP, &everyone, T0 + GROUP_SESSION_AGE_MS_MAX);
        assert_ne!(old.session_id, new.session_id);
        assert_eq!(
            alice.mark_shared(GROUP, &old.session_id, &[BOB_1]),
            Err(GroupKeyError::SessionReplaced {
                group: GROUP,
                session_id: old.session_id.clone()
            })
        );
        alice
            .mark_shared(GROUP, &new.session_id, &[BOB_1, ALICE])
            .expect("shared");
        assert_eq!(
            alice.outbound(GROUP).expect("session").shared_with(),
            &members(&[BOB_1]),
            "the device itself is never a holder"
        );
    }

    #[test]
    fn garbage_gives_typed_errors_and_never_panics() {
        let mut group = Group::new(ALICE, &[BOB_1]);
        let (plan, message) = group.send("real", T0);
        let bob = group.receivers.get_mut(&BOB_1).expect("bob");

        // Not a Megolm message at all; a real one damaged; an unknown session.
        assert!(matches!(
            bob.decrypt(GROUP, ALICE, &message.session_id, b"garbage"),
            Err(GroupKeyError::MalformedMessage(_))
        ));
        let mut flipped = message.bytes.clone();
        flipped[4] ^= 0x01;
        assert!(matches!(
            bob.decrypt(GROUP, ALICE, &message.session_id, &flipped),
            Err(GroupKeyError::Undecryptable { .. } | GroupKeyError::MalformedMessage(_))
        ));
        let mut bad_signature = message.bytes.clone();
        let last = bad_signature.len() - 1;
        bad_signature[last] ^= 0x80;
        assert!(matches!(
            bob.decrypt(GROUP, ALICE, &message.session_id, &bad_signature),
            Err(GroupKeyError::Undecryptable { .. })
        ));
        assert!(matches!(
            bob.decrypt(GROUP, ALICE, "no such session", &message.bytes),
            Err(GroupKeyError::UnknownSession { .. })
        ));

        // Keys: a damaged signature, a session id that is not the key's, group 0, nothing.
        let mut damaged = plan.key.clone();
        damaged.session_key[10] ^= 0x01;
        let mut misnamed = plan.key.clone();
        misnamed.session_id = "another".into();
        let mut group_zero = plan.key.clone();
        group_zero.group = 0;
        let empty = GroupKey {
            group: GROUP,
            session_id: String::new(),
            session_key: Vec::new(),
        };
        for key in [damaged, misnamed, group_zero, empty] {
            assert!(
                matches!(
                    bob.accept_key(ALICE, &key),
                    Err(GroupKeyError::MalformedKey(_))
                ),
                "{key:?}"
            );
        }

        // Random bytes, of random lengths, as messages and as keys: errors, never panics.
        let mut rng = StdRng::seed_from_u64(13);
        for _ in 0..2_000 {
            let mut bytes = vec![0u8; rng.random_range(0..400)];
            rng.fill_bytes(&mut bytes);
            assert!(
                bob.decrypt(GROUP, ALICE, &message.session_id, &bytes)
                    .is_err()
            );
            let key = GroupKey {
                group: GROUP,
                session_id: plan.session_id.clone(),
                session_key: bytes,
            };
            assert!(matches!(
                bob.accept_key(ALICE, &key),
                Err(GroupKeyError::MalformedKey(_))
            ));
        }
        // Truncations of the real message and of the real key.
        for cut in 0..message.bytes.len() {
            assert!(
                bob.decrypt(GROUP, ALICE, &message.session_id, &message.bytes[..cut])
                    .is_err()
            );
        }
        for cut in 0..plan.key.session_key.len() {
            let mut key = plan.key.clone();
            key.session_key.truncate(cut);
            assert!(bob.accept_key(ALICE, &key).is_err());
        }
        // Through it all the real message still opens.
        assert_eq!(
            bob.decrypt(GROUP, ALICE, &message.session_id, &message.bytes)
                .expect("decrypts")
                .plaintext,
            b"real"
        );
    }

    #[test]
    fn sessions_survive_their_pickles_and_a_sender_keeps_a_bounded_number() {
        let mut group = Group::new(ALICE, &[BOB_1]);
        let (_, first) = group.send("one", T0);
        let changes = group.sender.take_changes().expect("changes");
        assert_eq!(changes.outbound.len(), 1);
        assert_eq!(changes.outbound[0].shared_with, Some(vec![BOB_1]));
        let mut sender =
            GroupKeys::from_rows(ALICE, changes.outbound, Vec::new()).expect("restores");
        let second = sender
            .encrypt(GROUP, &group.members, T0, b"two")
            .expect("continues");
        assert_eq!(second.index, 1, "the next index, never a reused one");
        // Only the ratchet moved: the shares are not written again.
        let changes = sender.take_changes().expect("changes");
        assert_eq!(changes.outbound[0].shared_with, None);

        let bob_changes = group
            .receivers
            .get_mut(&BOB_1)
            .expect("bob")
            .take_changes()
            .expect("changes");
        let mut bob = GroupKeys::from_rows(BOB_1, Vec::new(), bob_changes.inbound).expect("bob");
        for message in [&first, &second] {
            assert!(
                bob.decrypt(GROUP, ALICE, &message.session_id, &message.bytes)
                    .is_ok()
            );
        }

        // A row whose pickle is of another session is refused.
        let mut other = GroupKeys::new(ALICE);
        other.prepare_send(GROUP + 1, &members(&[ALICE]), T0);
        let mut rows = other.take_changes().expect("changes").outbound;
        rows[0].session_id = first.session_id.clone();
        assert!(matches!(
            GroupKeys::from_rows(ALICE, rows, Vec::new()),
            Err(GroupKeyError::Pickle(_))
        ));

        // The bound: the oldest session of a sender goes first, and is reported removed.
        let mut carol = GroupKeys::new(CAROL).with_inbound_per_sender_max(3);
        let mut ids = Vec::new();
        for n in 0..5 {
            let mut alice = GroupKeys::new(ALICE);
            let plan = alice.prepare_send(GROUP, &members(&[ALICE, CAROL]), T0 + n);
            carol.accept_key(ALICE, &plan.key).expect("accepted");
            ids.push(plan.session_id);
        }
        let changes = carol.take_changes().expect("changes");
        assert_eq!(changes.inbound_removed, {
            let mut gone = vec![ids[0].clone(), ids[1].clone()];
            gone.sort();
            gone
        });
        assert_eq!(changes.inbound.len(), 3);
        assert!(carol.inbound(&ids[0]).is_none() && carol.inbound(&ids[1]).is_none());
        assert!(ids[2..].iter().all(|id| carol.inbound(id).is_some()));
        // Another sender's sessions count apart.
        let mut bob_sender = GroupKeys::new(BOB_1);
        let plan = bob_sender.prepare_send(GROUP, &members(&[BOB_1, CAROL]), T0);
        carol.accept_key(BOB_1, &plan.key).expect("accepted");
        assert!(ids[2..].iter().all(|id| carol.inbound(id).is_some()));
        // Restored, the arrival order goes on where it was.
        let restored = GroupKeys::from_rows(CAROL, Vec::new(), changes.inbound).expect("restored");
        assert_eq!(restored.next_received_seq, 5);
    }
}
