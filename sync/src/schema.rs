//! The layout of one epoch document, and the logical state it holds.
//!
//! **Challenge.** Every device of a user appends the same messages (each device receives every
//! envelope from the relay), edits, deletes, reacts and reads concurrently, and merges the
//! others' changes in any order; all of them must end with the same chat (I7), and the
//! resolution must not depend on automerge's own order of operations (an edit made earlier by
//! hybrid logical clock must lose even if automerge orders it last).
//!
//! **Layout.** Everything is a scalar under the document's root map; nothing is a nested
//! object. Two devices that create the same nested object concurrently create two objects, and
//! automerge shows only one of them: a device's edits to the other would vanish. Scalars under
//! fixed keys merge instead, and equal values written by several devices are simply equal. Keys
//! (sorted as strings, so a range read gives chat order):
//! - `meta.chat` (16 bytes), `meta.epoch` (uint), `meta.generation` (uint): written once, in
//!   the generation's first change (its *genesis*);
//! - `m{chat_seq:020}.who` (12 bytes: account and device, big-endian), `.cid` (16 bytes: client
//!   message id), `.srv` (uint: server time, ms), `.snt` (uint: sender's time, ms): fixed at
//!   append;
//! - `m{chat_seq:020}.txt`: the text register, an [`Hlc`] (24 bytes) then the UTF-8 text; the
//!   original text carries [`Hlc::zero`] of the sender; absent once deleted;
//! - `m{chat_seq:020}.att`: the attachment (bytes the client encodes: a blob reference and what
//!   the sender said of the file), written at append, absent once deleted;
//! - `m{chat_seq:020}.del`: the tombstone, the [`Hlc`] of the deletion (its device deleted);
//! - `m{chat_seq:020}.r.{account}.{device}`: that device's reaction register, an [`Hlc`] then
//!   the emoji (empty: no reaction);
//! - `read.{account}.{device}`: that device's read watermark (uint), in the epoch holding the
//!   chat sequence it read up to.
//!
//! **Resolution by value.** A register is written only with a stamp above every value it shows
//! (the writer checks first), so concurrent writes stay as automerge conflicts and a reader takes
//! the highest stamp among them: the highest stamp ever written is never overwritten, and every
//! device shows it whatever order the changes merged in. Watermarks take the maximum the same
//! way. A tombstone dominates the text: a text written concurrently with a deletion stays in
//! the document but is never shown, and the epoch is compacted (see `epoch`). Fixed fields are
//! equal on every device; should they differ (a bug), automerge's own winner is shown, which is
//! the same on every device too.
//!
//! **Bad values.** A value of the wrong type or shape (a bug or a hostile own device) is
//! ignored, the same way on every device, so views still agree.
//!
//! **Evolution.** New fields take new key suffixes; a reader ignores suffixes it does not know,
//! so older devices keep working on documents newer devices wrote.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, AutomergeError, ObjId, ROOT, ReadDoc, ScalarValue, Value};
use relay_planted::PlantedBug;
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId};

use crate::hlc::{HLC_BYTES, Hlc};
use crate::limits::{ATTACHMENT_BYTES_MAX, MESSAGE_TEXT_BYTES_MAX, REACTION_BYTES_MAX};

/// A value and the clock reading that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamped {
    pub at: Hlc,
    pub value: String,
}

/// One message as the document holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessageState {
    pub sender: DeviceAddress,
    pub client_message_id: ClientMessageId,
    pub server_time_ms: u64,
    pub sent_time_ms: u64,
    /// The text and its stamp; `None` once deleted.
    pub text: Option<Stamped>,
    /// The attachment (opaque to this crate); `None` when it has none or once deleted.
    pub attachment: Option<Vec<u8>>,
    /// The deletion's stamp (its device deleted).
    pub deleted: Option<Hlc>,
    /// Each reacting device's reaction (an empty value: none).
    pub reactions: BTreeMap<DeviceAddress, Stamped>,
}

impl MessageState {
    /// Whether the fixed fields (set at append) are the same.
    pub fn same_fixed_fields(&self, other: &MessageState) -> bool {
        self.sender == other.sender
            && self.client_message_id == other.client_message_id
            && self.server_time_ms == other.server_time_ms
            && self.sent_time_ms == other.sent_time_ms
    }
}

/// The logical state of one epoch: what a view shows and what a compaction keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EpochState {
    pub messages: BTreeMap<u64, MessageState>,
    pub read_marks: BTreeMap<DeviceAddress, u64>,
}

impl EpochState {
    /// The highest clock reading in the state.
    pub fn max_hlc(&self) -> Option<Hlc> {
        self.messages
            .values()
            .flat_map(|message| {
                message
                    .text
                    .iter()
                    .map(|text| text.at)
                    .chain(message.deleted)
                    .chain(message.reactions.values().map(|reaction| reaction.at))
            })
            .max()
    }
}

/// Key of the chat id, in the genesis.
pub(crate) const META_CHAT_KEY: &str = "meta.chat";
/// Key of the epoch number, in the genesis.
pub(crate) const META_EPOCH_KEY: &str = "meta.epoch";
/// Key of the generation, in the genesis.
pub(crate) const META_GENERATION_KEY: &str = "meta.generation";

/// A message field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Sender,
    ClientMessageId,
    ServerTime,
    SentTime,
    Text,
    Attachment,
    Deleted,
    Reaction(DeviceAddress),
}

/// What a root key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    Message {
        chat_seq: u64,
        field: Field,
    },
    ReadMark(DeviceAddress),
    /// A genesis key, or a key this version does not know.
    Other,
}

/// The key of a message field.
pub(crate) fn message_key(chat_seq: u64, field: Field) -> String {
    let suffix = match field {
        Field::Sender => "who".to_owned(),
        Field::ClientMessageId => "cid".to_owned(),
        Field::ServerTime => "srv".to_owned(),
        Field::SentTime => "snt".to_owned(),
        Field::Text => "txt".to_owned(),
        Field::Attachment => "att".to_owned(),
        Field::Deleted => "del".to_owned(),
        Field::Reaction(device) => format!("r.{}.{}", device.account.0, device.device.0),
    };
    format!("m{chat_seq:020}.{suffix}")
}

/// The first key of a message's reactions, and the first key past them.
fn reaction_key_range(chat_seq: u64) -> (String, String) {
    (format!("m{chat_seq:020}.r."), format!("m{chat_seq:020}.r/"))
}

/// The key of a device's read watermark.
pub(crate) fn read_mark_key(device: DeviceAddress) -> String {
    format!("read.{}.{}", device.account.0, device.device.0)
}

fn parse_device(text: &str) -> Option<DeviceAddress> {
    let (account, device) = text.split_once('.')?;
    Some(DeviceAddress {
        account: AccountId(account.parse().ok()?),
        device: DeviceId(device.parse().ok()?),
    })
}

/// What `key` names.
pub(crate) fn parse_key(key: &str) -> Key {
    if let Some(device) = key.strip_prefix("read.") {
        return parse_device(device).map_or(Key::Other, Key::ReadMark);
    }
    let Some(rest) = key.strip_prefix('m') else {
        return Key::Other;
    };
    let Some((seq, suffix)) = rest.split_once('.') else {
        return Key::Other;
    };
    let Ok(chat_seq) = seq.parse::<u64>() else {
        return Key::Other;
    };
    if seq.len() != 20 {
        return Key::Other;
    }
    let field = match suffix {
        "who" => Field::Sender,
        "cid" => Field::ClientMessageId,
        "srv" => Field::ServerTime,
        "snt" => Field::SentTime,
        "txt" => Field::Text,
        "att" => Field::Attachment,
        "del" => Field::Deleted,
        _ => match suffix.strip_prefix("r.").and_then(parse_device) {
            Some(device) => Field::Reaction(device),
            None => return Key::Other,
        },
    };
    Key::Message { chat_seq, field }
}

/// The actor of generation `generation` of an epoch's genesis: the same on every device, so
/// every device that compacts the same state builds the very same change.
pub(crate) fn genesis_actor(chat: ChatId, epoch: u64, generation: u64) -> ActorId {
    let mut bytes = Vec::with_capacity(1 + 16 + 8 + 8);
    bytes.push(b'g');
    bytes.extend_from_slice(&chat.0);
    bytes.extend_from_slice(&epoch.to_be_bytes());
    bytes.extend_from_slice(&generation.to_be_bytes());
    ActorId::from(bytes)
}

/// The actor a device writes with during one session (`session_nonce` is fresh at every open,
/// so a device restored from an older copy never reuses an actor's sequence numbers).
pub(crate) fn device_actor(device: DeviceAddress, session_nonce: u64) -> ActorId {
    let mut bytes = Vec::with_capacity(1 + 8 + 4 + 8);
    bytes.push(b'd');
    bytes.extend_from_slice(&device.account.0.to_be_bytes());
    bytes.extend_from_slice(&device.device.0.to_be_bytes());
    bytes.extend_from_slice(&session_nonce.to_be_bytes());
    ActorId::from(bytes)
}

fn device_bytes(device: DeviceAddress) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(12);
    bytes.extend_from_slice(&device.account.0.to_be_bytes());
    bytes.extend_from_slice(&device.device.0.to_be_bytes());
    bytes
}

fn stamped_bytes(at: Hlc, value: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HLC_BYTES + value.len());
    bytes.extend_from_slice(&at.encode());
    bytes.extend_from_slice(value.as_bytes());
    bytes
}

fn as_bytes<'a>(value: &'a Value<'_>) -> Option<&'a [u8]> {
    match value.as_scalar()? {
        ScalarValue::Bytes(bytes) => Some(bytes),
        _ => None,
    }
}

fn as_uint(value: &Value<'_>) -> Option<u64> {
    match value.as_scalar()? {
        ScalarValue::Uint(n) => Some(*n),
        _ => None,
    }
}

fn decode_device(value: &Value<'_>) -> Option<DeviceAddress> {
    let bytes = as_bytes(value)?;
    let account: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let device: [u8; 4] = bytes.get(8..)?.try_into().ok()?;
    Some(DeviceAddress {
        account: AccountId(u64::from_be_bytes(account)),
        device: DeviceId(u32::from_be_bytes(device)),
    })
}

fn decode_stamped(value: &Value<'_>, max_bytes: usize) -> Option<Stamped> {
    let (at, rest) = Hlc::decode_prefix(as_bytes(value)?)?;
    if rest.len() > max_bytes {
        return None;
    }
    let value = std::str::from_utf8(rest).ok()?.to_owned();
    Some(Stamped { at, value })
}

fn decode_tombstone(value: &Value<'_>) -> Option<Hlc> {
    match Hlc::decode_prefix(as_bytes(value)?)? {
        (at, []) => Some(at),
        _ => None,
    }
}

/// Every value at `key` (automerge keeps concurrent writes as conflicts), with the actor of the
/// operation that wrote each.
fn values_at(doc: &AutoCommit, key: &str) -> Vec<(Value<'static>, Option<ActorId>)> {
    match doc.get_all(ROOT, key) {
        Ok(values) => values
            .into_iter()
            .map(|(value, id)| {
                let actor = match id {
                    ObjId::Id(_, actor, _) => Some(actor),
                    ObjId::Root => None,
                };
                (value.into_owned(), actor)
            })
            .collect(),
        // The root map always exists; a failed read shows nothing, the same on every device.
        Err(_) => Vec::new(),
    }
}

/// The highest-stamped valid value among conflicting register values.
fn resolve_register(
    values: &[(Value<'static>, Option<ActorId>)],
    max_bytes: usize,
) -> Option<Stamped> {
    values
        .iter()
        .filter_map(|(value, _)| decode_stamped(value, max_bytes))
        .max_by(|a, b| a.at.cmp(&b.at).then_with(|| a.value.cmp(&b.value)))
}

/// The highest valid tombstone among conflicting ones.
fn resolve_tombstone(values: &[(Value<'static>, Option<ActorId>)]) -> Option<Hlc> {
    values
        .iter()
        .filter_map(|(value, _)| decode_tombstone(value))
        .max()
}

/// The highest valid watermark among conflicting ones.
fn resolve_mark(values: &[(Value<'static>, Option<ActorId>)]) -> Option<u64> {
    values.iter().filter_map(|(value, _)| as_uint(value)).max()
}

#[derive(Default)]
struct PartialMessage {
    sender: Option<DeviceAddress>,
    client_message_id: Option<ClientMessageId>,
    server_time_ms: Option<u64>,
    sent_time_ms: Option<u64>,
    text: Option<Stamped>,
    attachment: Option<Vec<u8>>,
    deleted: Option<Hlc>,
    reactions: BTreeMap<DeviceAddress, Stamped>,
}

impl PartialMessage {
    fn set(
        &mut self,
        field: Field,
        winner: &Value<'static>,
        all: impl FnOnce() -> Vec<(Value<'static>, Option<ActorId>)>,
    ) {
        match field {
            Field::Sender => self.sender = decode_device(winner),
            Field::ClientMessageId => {
                self.client_message_id = as_bytes(winner)
                    .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok())
                    .map(ClientMessageId)
            }
            Field::ServerTime => self.server_time_ms = as_uint(winner),
            Field::SentTime => self.sent_time_ms = as_uint(winner),
            Field::Text => self.text = resolve_register(&all(), MESSAGE_TEXT_BYTES_MAX),
            Field::Attachment => {
                self.attachment = as_bytes(winner)
                    .filter(|bytes| !bytes.is_empty() && bytes.len() <= ATTACHMENT_BYTES_MAX)
                    .map(<[u8]>::to_vec)
            }
            Field::Deleted => self.deleted = resolve_tombstone(&all()),
            Field::Reaction(device) => {
                // A reaction register holds only its own device's readings.
                if let Some(reaction) = resolve_register(&all(), REACTION_BYTES_MAX)
                    .filter(|reaction| reaction.at.device == device)
                {
                    self.reactions.insert(device, reaction);
                }
            }
        }
    }

    fn finish(self) -> Option<MessageState> {
        let deleted = self.deleted;
        Some(MessageState {
            sender: self.sender?,
            client_message_id: self.client_message_id?,
            server_time_ms: self.server_time_ms?,
            sent_time_ms: self.sent_time_ms?,
            // A tombstone dominates any text written concurrently with it.
            text: if deleted.is_some() { None } else { self.text },
            attachment: if deleted.is_some() {
                None
            } else {
                self.attachment
            },
            deleted,
            reactions: self.reactions,
        })
    }
}

/// Reads one root entry's values: the winner `map_range` gave, and every conflicting value
/// when there is a conflict.
fn conflicting(
    doc: &AutoCommit,
    key: &str,
    winner: &Value<'static>,
    conflict: bool,
) -> Vec<(Value<'static>, Option<ActorId>)> {
    if conflict {
        values_at(doc, key)
    } else {
        vec![(winner.clone(), None)]
    }
}

/// The whole logical state of an epoch document.
pub(crate) fn read_state(doc: &AutoCommit) -> EpochState {
    let mut state = EpochState::default();
    let mut current: Option<(u64, PartialMessage)> = None;
    for item in doc.map_range(ROOT, ..) {
        let key = item.key.to_string();
        let winner: Value<'static> = item.value.into();
        match parse_key(&key) {
            Key::Message { chat_seq, field } => {
                if current.as_ref().is_none_or(|(seq, _)| *seq != chat_seq) {
                    if let Some((seq, partial)) = current.take()
                        && let Some(message) = partial.finish()
                    {
                        state.messages.insert(seq, message);
                    }
                    current = Some((chat_seq, PartialMessage::default()));
                }
                if let Some((_, partial)) = current.as_mut() {
                    partial.set(field, &winner, || {
                        conflicting(doc, &key, &winner, item.conflict)
                    });
                }
            }
            Key::ReadMark(device) => {
                if relay_planted::is_planted(PlantedBug::ReadMarksStayLocal)
                    && !written_by(doc.get_actor(), device)
                {
                    continue;
                }
                if let Some(mark) = resolve_mark(&conflicting(doc, &key, &winner, item.conflict)) {
                    state.read_marks.insert(device, mark);
                }
            }
            Key::Other => {}
        }
    }
    if let Some((seq, partial)) = current
        && let Some(message) = partial.finish()
    {
        state.messages.insert(seq, message);
    }
    state
}

/// One message of an epoch document, read through its own keys only.
pub(crate) fn read_message(doc: &AutoCommit, chat_seq: u64) -> Option<MessageState> {
    let mut partial = PartialMessage::default();
    for field in [
        Field::Sender,
        Field::ClientMessageId,
        Field::ServerTime,
        Field::SentTime,
        Field::Text,
        Field::Attachment,
        Field::Deleted,
    ] {
        let key = message_key(chat_seq, field);
        let values = values_at(doc, &key);
        if let Some((winner, _)) = doc
            .get(ROOT, key.as_str())
            .ok()
            .flatten()
            .map(|(value, id)| (value.into_owned(), id))
        {
            partial.set(field, &winner, || values);
        }
    }
    let (start, end) = reaction_key_range(chat_seq);
    for item in doc.map_range(ROOT, start..end) {
        let key = item.key.to_string();
        let winner: Value<'static> = item.value.into();
        if let Key::Message {
            field: field @ Field::Reaction(_),
            ..
        } = parse_key(&key)
        {
            partial.set(field, &winner, || {
                conflicting(doc, &key, &winner, item.conflict)
            });
        }
    }
    partial.finish()
}

/// Whether `actor` is one of `device`'s (a device actor is `d`, the account, the device, then
/// the session). Only the planted [`PlantedBug::ReadMarksStayLocal`] asks.
fn written_by(actor: &ActorId, device: DeviceAddress) -> bool {
    let bytes = actor.to_bytes();
    bytes.first() == Some(&b'd') && bytes.get(1..13) == Some(&device_bytes(device)[..])
}

/// A device's read watermark in this document.
pub(crate) fn read_mark(doc: &AutoCommit, device: DeviceAddress) -> Option<u64> {
    resolve_mark(&values_at(doc, &read_mark_key(device)))
}

/// Whether the document holds a deleted text of `chat_seq` in its history: the message has a
/// tombstone, and either a text is still stored beside it (written concurrently with the
/// deletion) or the tombstone was written after the genesis (so the text was in this
/// generation before it).
pub(crate) fn holds_deleted_text(doc: &AutoCommit, chat_seq: u64, genesis: &ActorId) -> bool {
    let tombstones = values_at(doc, &message_key(chat_seq, Field::Deleted));
    if tombstones.is_empty() {
        return false;
    }
    let after_genesis = tombstones
        .iter()
        .any(|(_, actor)| actor.as_ref() != Some(genesis));
    after_genesis
        || !values_at(doc, &message_key(chat_seq, Field::Text)).is_empty()
        || !values_at(doc, &message_key(chat_seq, Field::Attachment)).is_empty()
}

/// Writes a message's fixed fields.
pub(crate) fn put_fixed_fields(
    doc: &mut AutoCommit,
    chat_seq: u64,
    message: &MessageState,
) -> Result<(), AutomergeError> {
    doc.put(
        ROOT,
        message_key(chat_seq, Field::Sender),
        ScalarValue::Bytes(device_bytes(message.sender)),
    )?;
    doc.put(
        ROOT,
        message_key(chat_seq, Field::ClientMessageId),
        ScalarValue::Bytes(message.client_message_id.0.to_vec()),
    )?;
    doc.put(
        ROOT,
        message_key(chat_seq, Field::ServerTime),
        ScalarValue::Uint(message.server_time_ms),
    )?;
    doc.put(
        ROOT,
        message_key(chat_seq, Field::SentTime),
        ScalarValue::Uint(message.sent_time_ms),
    )?;
    Ok(())
}

/// Writes the text register.
pub(crate) fn put_text(
    doc: &mut AutoCommit,
    chat_seq: u64,
    text: &Stamped,
) -> Result<(), AutomergeError> {
    doc.put(
        ROOT,
        message_key(chat_seq, Field::Text),
        ScalarValue::Bytes(stamped_bytes(text.at, &text.value)),
    )
}

/// Writes the attachment.
pub(crate) fn put_attachment(
    doc: &mut AutoCommit,
    chat_seq: u64,
    attachment: &[u8],
) -> Result<(), AutomergeError> {
    doc.put(
        ROOT,
        message_key(chat_seq, Field::Attachment),
        ScalarValue::Bytes(attachment.to_vec()),
    )
}

/// Writes the tombstone and removes the text register and the attachment.
pub(crate) fn put_tombstone(
    doc: &mut AutoCommit,
    chat_seq: u64,
    at: Hlc,
) -> Result<(), AutomergeError> {
    doc.put(
        ROOT,
        message_key(chat_seq, Field::Deleted),
        ScalarValue::Bytes(at.encode().to_vec()),
    )?;
    for field in [Field::Text, Field::Attachment] {
        let key = message_key(chat_seq, field);
        if doc.get(ROOT, key.as_str())?.is_some() {
            doc.delete(ROOT, key.as_str())?;
        }
    }
    Ok(())
}

/// Writes a device's reaction register.
pub(crate) fn put_reaction(
    doc: &mut AutoCommit,
    chat_seq: u64,
    reaction: &Stamped,
) -> Result<(), AutomergeError> {
    doc.put(
        ROOT,
        message_key(chat_seq, Field::Reaction(reaction.at.device)),
        ScalarValue::Bytes(stamped_bytes(reaction.at, &reaction.value)),
    )
}

/// Writes a device's read watermark.
pub(crate) fn put_read_mark(
    doc: &mut AutoCommit,
    device: DeviceAddress,
    chat_seq: u64,
) -> Result<(), AutomergeError> {
    doc.put(ROOT, read_mark_key(device), ScalarValue::Uint(chat_seq))
}

/// Writes a whole message (a genesis, or a message only another generation held).
pub(crate) fn put_message(
    doc: &mut AutoCommit,
    chat_seq: u64,
    message: &MessageState,
) -> Result<(), AutomergeError> {
    put_fixed_fields(doc, chat_seq, message)?;
    match message.deleted {
        Some(at) => doc.put(
            ROOT,
            message_key(chat_seq, Field::Deleted),
            ScalarValue::Bytes(at.encode().to_vec()),
        )?,
        None => {
            if let Some(text) = &message.text {
                put_text(doc, chat_seq, text)?;
            }
            if let Some(attachment) = &message.attachment {
                put_attachment(doc, chat_seq, attachment)?;
            }
        }
    }
    for reaction in message.reactions.values() {
        put_reaction(doc, chat_seq, reaction)?;
    }
    Ok(())
}

/// Writes the genesis keys.
pub(crate) fn put_meta(
    doc: &mut AutoCommit,
    chat: ChatId,
    epoch: u64,
    generation: u64,
) -> Result<(), AutomergeError> {
    doc.put(ROOT, META_CHAT_KEY, ScalarValue::Bytes(chat.0.to_vec()))?;
    doc.put(ROOT, META_EPOCH_KEY, ScalarValue::Uint(epoch))?;
    doc.put(ROOT, META_GENERATION_KEY, ScalarValue::Uint(generation))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u32) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(3),
            device: DeviceId(n),
        }
    }

    #[test]
    fn keys_round_trip() {
        for field in [
            Field::Sender,
            Field::ClientMessageId,
            Field::ServerTime,
            Field::SentTime,
            Field::Text,
            Field::Deleted,
            Field::Reaction(device(9)),
        ] {
            let key = message_key(12_345, field);
            assert_eq!(
                parse_key(&key),
                Key::Message {
                    chat_seq: 12_345,
                    field
                }
            );
        }
        assert_eq!(
            parse_key(&read_mark_key(device(2))),
            Key::ReadMark(device(2))
        );
        for other in [
            META_CHAT_KEY,
            "m12.txt",
            "mx.txt",
            "m00000000000000000001.zzz",
            "read.1",
            "read.a.b",
            "",
        ] {
            assert_eq!(parse_key(other), Key::Other, "{other}");
        }
    }

    #[test]
    fn message_keys_sort_in_chat_order() {
        assert!(message_key(9, Field::Text) < message_key(10, Field::Sender));
        let (start, end) = reaction_key_range(5);
        let reaction = message_key(5, Field::Reaction(device(u32::MAX)));
        assert!(start <= reaction && reaction < end);
        assert!(message_key(5, Field::Text) >= end || message_key(5, Field::Text) < start);
    }

    #[test]
    fn concurrent_registers_resolve_to_the_highest_stamp_whatever_the_merge_order() {
        let low = Stamped {
            at: Hlc {
                wall_ms: 10,
                counter: 0,
                device: device(1),
            },
            value: "low".into(),
        };
        let high = Stamped {
            at: Hlc {
                wall_ms: 20,
                counter: 0,
                device: device(2),
            },
            value: "high".into(),
        };
        let mut base = AutoCommit::new();
        put_meta(&mut base, ChatId([1; 16]), 0, 0).expect("a fresh document takes root keys");
        base.commit();
        for (first, second) in [(&low, &high), (&high, &low)] {
            let mut a = base.fork();
            let mut b = base.fork();
            put_text(&mut a, 1, first).expect("put");
            put_text(&mut b, 1, second).expect("put");
            a.merge(&mut b).expect("merge");
            let values = values_at(&a, &message_key(1, Field::Text));
            assert_eq!(values.len(), 2);
            assert_eq!(
                resolve_register(&values, MESSAGE_TEXT_BYTES_MAX),
                Some(high.clone())
            );
        }
    }
}
