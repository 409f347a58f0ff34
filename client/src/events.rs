//! What the client reports while it works: one [`Event`] per thing a person (or a test) wants to
//! see. The CLI prints each as one line, human-readable or one JSON object (`--json`); the JSON
//! shape is `{"event": "<snake_case variant>", ...fields}` and is a stable interface.
//!
//! An open [`crate::Device`]'s stream carries what happens to the device: `tick`, `message`,
//! `undecryptable`, `expired`, `failed`, `connected`, `disconnected`, `rolled_back` and `note`.
//! The one-command flows ([`crate::flows`]) add their own: `registered`, `listening`,
//! `still_pending`, `marked_read`, `history` (and `receipt` after it, `relay info`), `setting`
//! and `synced`; `changed` reports an edit, a
//! deletion for everyone or a reaction; linking adds `pairing_code`,
//! `link_requested`, `linked` and `device`; a watched account's `presence` and a peer's
//! `typing` come while the device is connected.

use serde::Serialize;

use crate::media::FileInfo;
use crate::store::{RecipientState, Tick};

impl Serialize for Tick {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl Serialize for RecipientState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Received from the peer.
    In,
    /// Sent by this account (this device or another own device).
    Out,
}

/// One reaction to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reaction {
    /// The reacting account's name.
    pub from: String,
    /// The reaction.
    pub reaction: String,
}

/// What kind of change [`Event::Changed`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A new text.
    Edit,
    /// Deleted for everyone.
    Delete,
    /// A reaction.
    React,
}

/// Something the client reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The data directory now holds a registered device.
    Registered {
        /// Account name.
        name: String,
        /// Account id.
        account: u64,
        /// Device number.
        device: u32,
        /// Home region.
        region: u32,
    },
    /// Connected and authenticated; live events follow.
    Listening {
        /// Own account name.
        name: String,
    },
    /// A sent message's tick moved forward.
    Tick {
        /// The message id (32 hex digits).
        id: String,
        /// The other account of the chat.
        peer: String,
        /// The new state: `pending`, `sent`, `delivered` or `read`.
        tick: Tick,
    },
    /// A message arrived.
    Message {
        /// The message id (32 hex digits).
        id: String,
        /// The sender's account name.
        from: String,
        /// The other account of the chat.
        peer: String,
        /// `in`, or `out` for a copy sent by another device of this account.
        direction: Direction,
        /// The sending device (`account/device`).
        sender_device: String,
        /// The home region's chat sequence.
        chat_seq: u64,
        /// When the region committed it (ms since the Unix epoch).
        time_ms: u64,
        /// When the sender wrote it (ms since the Unix epoch, the sender's clock).
        sent_at_ms: u64,
        /// The text (a file's caption).
        text: String,
        /// The attached file, if any: `relay download ID` fetches it.
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<FileInfo>,
    },
    /// A message arrived that could not be decrypted (recorded, counted and acknowledged).
    Undecryptable {
        /// The message id (32 hex digits).
        id: String,
        /// The sender's account name.
        from: String,
        /// The sending device (`account/device`).
        sender_device: String,
        /// When the region committed it (ms since the Unix epoch).
        time_ms: u64,
        /// Why.
        reason: String,
    },
    /// A peer device's copy of a sent message expired undelivered.
    Expired {
        /// The message id.
        id: String,
        /// The other account of the chat.
        peer: String,
        /// The device whose copy expired (`account/device`).
        device: String,
    },
    /// A message was given up (the edge refused it permanently).
    Failed {
        /// The message id.
        id: String,
        /// The other account of the chat.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A message stays in the outbox; a later command retries it.
    StillPending {
        /// The message id.
        id: String,
        /// The other account of the chat.
        peer: String,
        /// Why it is not sent yet.
        reason: String,
    },
    /// Messages from a peer were marked read (and a read receipt queued for them, or only for
    /// this account's other devices while read receipts are off).
    MarkedRead {
        /// The peer.
        peer: String,
        /// How many messages.
        count: usize,
    },
    /// One message of a chat's history.
    History {
        /// The message id.
        id: String,
        /// `in` or `out`.
        direction: Direction,
        /// The sender's account name.
        from: String,
        /// The other account of the chat.
        peer: String,
        /// The region's commit time when known, else the sender's clock (ms since the Unix epoch).
        time_ms: u64,
        /// The text; absent when undecryptable.
        text: Option<String>,
        /// The attached file, if any (gone with a deletion for everyone).
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<FileInfo>,
        /// For outgoing messages: `pending`, `sent`, `delivered` or `read`.
        tick: Option<Tick>,
        /// For incoming messages: whether it was read here.
        read: Option<bool>,
        /// Why it could not be decrypted, if it could not.
        undecryptable: Option<String>,
        /// Why it was given up, if it was.
        failed: Option<String>,
        /// The home region's chat sequence, once known.
        chat_seq: Option<u64>,
        /// Whether the text shown is an edit of the original.
        edited: bool,
        /// Whether the sender deleted it for everyone (the text is gone).
        deleted: bool,
        /// Each reaction, by the name of the reacting account.
        reactions: Vec<Reaction>,
    },
    /// A message was edited, deleted for everyone or reacted to (by the peer, or by another
    /// own device or this one).
    Changed {
        /// The id of the message changed.
        id: String,
        /// Who changed it (an account name).
        from: String,
        /// The other account of the chat.
        peer: String,
        /// `edit`, `delete` or `react`.
        change: ChangeKind,
        /// The new text of an edit, or the reaction (empty: taken back).
        text: Option<String>,
    },
    /// `sync` finished.
    Synced {
        /// Messages received.
        received: usize,
        /// Tick changes seen.
        ticks: usize,
        /// Entries still in the outbox.
        pending: usize,
    },
    /// The device is connected to an edge and authenticated.
    Connected {
        /// The edge's address.
        edge: String,
    },
    /// The device lost its connection, or an attempt to connect failed.
    Disconnected {
        /// Why.
        reason: String,
        /// When the next attempt is made, if the device keeps trying (ms from now).
        retry_in_ms: Option<u64>,
        /// Whether no edge could be reached at all (the locator or every edge it named is
        /// silent), as opposed to an edge that answered but could not serve yet.
        unreachable: bool,
    },
    /// The relay refused this device because its state went back (its data directory was
    /// restored from an older copy); it can no longer send or receive.
    RolledBack {
        /// The relay's words.
        reason: String,
    },
    /// A pairing is open: the code to type on the new device (`relay link`).
    PairingCode {
        /// The code, like `1-K7QD-M2XA`.
        code: String,
        /// When it stops being usable, in ms since the Unix epoch.
        expires_at_ms: u64,
    },
    /// A new device asked to be linked with a pairing code; it waits for an approval. Shown
    /// on both devices, with the same fingerprint to compare.
    LinkRequested {
        /// The code it used.
        code: String,
        /// The account it asks to join.
        name: String,
        /// Its identity key's fingerprint.
        fingerprint: String,
    },
    /// This data directory is now a linked device of an account (`relay link-accept`).
    Linked {
        /// Account name.
        name: String,
        /// Account id.
        account: u64,
        /// Device number.
        device: u32,
        /// Home region.
        region: u32,
    },
    /// A device of an account, as `relay devices` lists it.
    Device {
        /// The account's name.
        name: String,
        /// The device number.
        device: u32,
        /// Its identity key's fingerprint (empty when this device never learned it).
        fingerprint: String,
        /// Whether it is among the account's current devices (a contact's former devices are
        /// listed too).
        current: bool,
        /// Whether it is the device running the command.
        this_device: bool,
    },
    /// A group, as a group command answers or `relay groups` lists it (its members follow as
    /// [`Event::GroupMember`] when the command names them).
    Group {
        /// The group's id.
        id: u64,
        /// Its name.
        name: String,
        /// One more for every change.
        version: u64,
        /// Its home region.
        home_region: u32,
        /// How many members it has.
        member_count: u32,
    },
    /// Where one recipient device stands with an outgoing message, after the message's
    /// [`Event::History`] (`relay info`).
    Receipt {
        /// The message id.
        id: String,
        /// The recipient device's account name (the peer, or this account for another own
        /// device).
        name: String,
        /// The recipient device (`account/device`).
        device: String,
        /// `pending`, `sent`, `delivered`, `read` or `expired`.
        state: RecipientState,
        /// When it reached that state (ms since the Unix epoch); absent while pending.
        at_ms: Option<u64>,
    },
    /// A setting of this device and its value (`relay settings`).
    Setting {
        /// The setting's name, as `relay settings` takes it (`read-receipts`).
        name: String,
        /// Its value (`on` or `off`).
        value: String,
    },
    /// What this device may see of a watched account's presence (on watching, and on every
    /// change while connected).
    Presence {
        /// The account's name.
        peer: String,
        /// The account's id.
        account: u64,
        /// `online`, `offline`, `hidden` (its privacy setting does not show it to this account)
        /// or `unknown` (no such account).
        state: String,
        /// With `offline`: when a device of the account was last connected (ms since the Unix
        /// epoch), when known.
        last_seen_ms: Option<u64>,
    },
    /// A peer's device started typing to this account, or stopped (told so, or not heard from
    /// for `TYPING_SHOWN_MS`).
    Typing {
        /// The peer's name.
        peer: String,
        /// The peer's account id.
        account: u64,
        /// The peer's typing device.
        device: u32,
        /// The group whose chat it is typing in (`None`: the 1:1 chat with this account).
        group: Option<u64>,
        /// Typing, or stopped.
        typing: bool,
    },
    /// This device told a peer, or a group's members, that its user is typing or stopped
    /// (`relay typing`, `relay group typing`).
    TypingSent {
        /// The peer's name (empty for a group).
        peer: String,
        /// The group (`None`: the 1:1 chat with `peer`).
        group: Option<u64>,
        /// Typing, or stopped.
        typing: bool,
        /// Said less than `TYPING_REPEAT_MS` ago already: nothing was sent this time.
        repeated: bool,
    },
    /// A member of a group, after its [`Event::Group`].
    GroupMember {
        /// The group's id.
        group: u64,
        /// The member's account name.
        name: String,
        /// The member's account id.
        account: u64,
        /// Whether it is an admin.
        admin: bool,
    },
    /// A message to a group arrived (or, with `direction` `out`, one sent by another own
    /// device; `relay group history` lists stored ones the same way).
    GroupMessage {
        /// The group's id.
        group: u64,
        /// The message id (32 hex digits).
        id: String,
        /// The sender's account name.
        from: String,
        /// `in`, or `out` for a copy sent by this account.
        direction: Direction,
        /// The sending device (`account/device`).
        sender_device: String,
        /// The home region's chat sequence (0 while a sent message waits for it).
        chat_seq: u64,
        /// When the region committed it (ms since the Unix epoch; 0 while pending).
        time_ms: u64,
        /// When the sender wrote it (ms since the Unix epoch, the sender's clock).
        sent_at_ms: u64,
        /// The text (empty when it could not be decrypted; see `undecryptable`); a file's
        /// caption.
        text: String,
        /// The attached file, if any: `relay download ID` fetches it.
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<FileInfo>,
        /// Why it could not be decrypted, when it could not.
        #[serde(skip_serializing_if = "Option::is_none")]
        undecryptable: Option<String>,
        /// A sent message's tick (absent for received ones).
        #[serde(skip_serializing_if = "Option::is_none")]
        tick: Option<Tick>,
    },
    /// A group message sent from this device moved its tick: `pending`, `sent`, or
    /// `delivered` once every member device it was sent to has it.
    GroupTick {
        /// The group's id.
        group: u64,
        /// The message id (32 hex digits).
        id: String,
        /// The new state.
        tick: Tick,
    },
    /// A group message was given up (the relay refused it for good).
    GroupFailed {
        /// The group's id.
        group: u64,
        /// The message id.
        id: String,
        /// Why.
        reason: String,
    },
    /// This account left a group (or was not in it).
    GroupLeft {
        /// The group's id.
        id: u64,
    },
    /// The approving device uploaded its history as an encrypted snapshot blob and sent its
    /// reference to the new device.
    BootstrapSent {
        /// The new device's number.
        device: u32,
        /// The blob's size in bytes (ciphertext).
        bytes: u64,
    },
    /// The history bootstrap's snapshot blob is downloading: bytes of its ciphertext so far.
    BootstrapProgress {
        /// Bytes downloaded.
        done_bytes: u64,
        /// The blob's size in bytes.
        total_bytes: u64,
    },
    /// This newly linked device took its history from the encrypted snapshot another own
    /// device uploaded when it approved the link; the sync protocol brings what came since.
    Bootstrapped {
        /// The own device that sent it (`account/device`).
        from: String,
        /// Chats loaded.
        chats: usize,
        /// Messages loaded.
        messages: usize,
        /// The snapshot's size in bytes (plaintext).
        bytes: u64,
    },
    /// A history bootstrap was not loaded (the download failed or expired, the snapshot did not
    /// decode, this device already holds history): the sync protocol brings the history
    /// instead, and nothing is lost.
    BootstrapSkipped {
        /// The own device that sent it (`account/device`).
        from: String,
        /// Why.
        reason: String,
    },
    /// Something worth telling on stderr (reconnects, warnings); never printed as JSON.
    Note {
        /// The text.
        message: String,
    },
}

/// An identity key's fingerprint, to compare on two screens: its 32 bytes in hex, in groups of
/// four digits.
pub fn fingerprint(identity_key: &[u8]) -> String {
    let hex: Vec<String> = identity_key
        .chunks(2)
        .map(|pair| pair.iter().map(|byte| format!("{byte:02x}")).collect())
        .collect();
    hex.join(" ")
}

/// Formats ms since the Unix epoch as RFC 3339 UTC with milliseconds (`2025-06-01T12:00:00.123Z`).
pub fn format_time_ms(ms: u64) -> String {
    let seconds = ms / 1000;
    let millis = ms % 1000;
    let days = seconds / 86_400;
    let second_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            format_time_ms(1_748_779_200_123),
            "2025-06-01T12:00:00.123Z"
        );
    }

    #[test]
    fn events_serialize_with_a_tag() {
        let event = Event::Tick {
            id: "00".into(),
            peer: "bob".into(),
            tick: Tick::Delivered,
        };
        let json = serde_json::to_string(&event).expect("json");
        assert_eq!(
            json,
            r#"{"event":"tick","id":"00","peer":"bob","tick":"delivered"}"#
        );
        let event = Event::MarkedRead {
            peer: "bob".into(),
            count: 2,
        };
        assert_eq!(
            serde_json::to_string(&event).expect("json"),
            r#"{"event":"marked_read","peer":"bob","count":2}"#
        );
    }
}
