//! The parts of a stored envelope that a delivery needs, read without decoding the rest.
//!
//! A group message's envelope holds an entry per member device (up to thousands, each naming
//! its device), and every member's fetch and every member's ack reads that one stored envelope.
//! Decoding it whole for each member made the region's cost per delivery grow with the group's
//! size (a tenth of the region's time in W3 went to `Envelope::decode`). These views decode
//! only what they name: prost skips the other fields, and the per-device entries stay encoded
//! slices of the stored record ([`Bytes`], no copy) until the one for the recipient is found.
//!
//! Finding that one still walked every entry before it: a member's fetch of a message to a
//! 1,024-member group compared up to 1,023 entries, and every member fetched it, so a group's
//! catch-up cost grew with the square of its size (a fifth of the region's time in a W3 row to
//! 1,024 members). A group envelope is therefore stored [indexed](encode): a first field the
//! wire protocol does not use ([`INDEX_TAG`]) holds where the fields other than the entries end
//! and where each entry starts, the entries sorted by recipient; a lookup is a binary search.
//! Any protobuf decoder reads the stored form as the envelope it is (an unknown field is
//! skipped, fields may come in any order), and envelopes stored plain (1:1, small groups, any
//! store written before) are read as before.

use prost::{DecodeError, Message};
use relay_proto::wire::{DeviceAddr, DeviceCiphertext, Envelope};

use crate::limits::STORED_ENVELOPE_INDEX_ENTRIES_MIN;

/// `Envelope::ciphertexts`' tag.
const CIPHERTEXTS_TAG: u64 = 6;
/// The stored form's index field: a tag [`relay_proto::wire::Envelope`] does not use (its
/// tags stop at 13). Its bytes: the length of the fields after it other than the entries
/// (`u32`, little-endian), the length of the entries after those (`u32`), then where each
/// entry starts within the entries (`u32` each), in recipient order.
const INDEX_TAG: u64 = 2_047;
/// The tags of [`GroupFields`].
const GROUP_TAG: u64 = 8;
const KIND_TAG: u64 = 10;
const GROUP_CIPHERTEXT_TAG: u64 = 11;
const GROUP_SESSION_ID_TAG: u64 = 12;

/// The group fields of a stored envelope; prost skips the others, the per-device entries among
/// them, without decoding them. Tags are [`relay_proto::wire::Envelope`]'s.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct GroupFields {
    /// `Envelope::group`.
    #[prost(uint64, tag = "8")]
    pub group: u64,
    /// `Envelope::kind`.
    #[prost(int32, tag = "10")]
    pub kind: i32,
    /// `Envelope::group_ciphertext`.
    #[prost(bytes = "vec", tag = "11")]
    pub group_ciphertext: Vec<u8>,
    /// `Envelope::group_session_id`.
    #[prost(string, tag = "12")]
    pub group_session_id: String,
}

/// Whom a stored envelope is for; prost skips the other fields, the per-device entries among
/// them. Tags are [`relay_proto::wire::Envelope`]'s.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Recipients {
    /// `Envelope::recipient_accounts`.
    #[prost(uint64, repeated, tag = "5")]
    pub recipient_accounts: Vec<u64>,
    /// `Envelope::group`.
    #[prost(uint64, tag = "8")]
    pub group: u64,
}

/// A [`DeviceCiphertext`] read only as far as its recipient.
#[derive(Clone, PartialEq, Message)]
struct RecipientOnly {
    #[prost(message, optional, tag = "1")]
    recipient: Option<DeviceAddr>,
}

/// A stored envelope whose fields do not frame.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ViewError {
    /// A field's key, length or value runs past the envelope or is not protobuf.
    #[error("the stored envelope does not frame: {0}")]
    Framing(&'static str),
    /// The field found does not decode.
    #[error("an entry of the stored envelope does not decode: {0}")]
    Decode(#[from] DecodeError),
}

/// `envelope` as the region stores it: indexed ([`INDEX_TAG`]: the index, the fields other
/// than the entries, then the entries sorted by recipient, those of one recipient in their
/// order) when it has at least [`STORED_ENVELOPE_INDEX_ENTRIES_MIN`] entries, else as prost
/// encodes it. Either form decodes to `envelope`, its entries perhaps in another order.
pub(crate) fn encode(envelope: &Envelope) -> Vec<u8> {
    if envelope.ciphertexts.len() < STORED_ENVELOPE_INDEX_ENTRIES_MIN {
        return envelope.encode_to_vec();
    }
    let Envelope {
        chat,
        sender,
        client_message_id,
        sender_seq,
        recipient_accounts,
        ciphertexts,
        device_seq,
        group,
        group_version,
        kind,
        group_ciphertext,
        group_session_id,
        group_prev_seq,
    } = envelope;
    // Listed field by field, so that a field added to the envelope is not left out here.
    let others = Envelope {
        chat: chat.clone(),
        sender: *sender,
        client_message_id: client_message_id.clone(),
        sender_seq: *sender_seq,
        recipient_accounts: recipient_accounts.clone(),
        ciphertexts: Vec::new(),
        device_seq: *device_seq,
        group: *group,
        group_version: *group_version,
        kind: *kind,
        group_ciphertext: group_ciphertext.clone(),
        group_session_id: group_session_id.clone(),
        group_prev_seq: *group_prev_seq,
    }
    .encode_to_vec();
    let mut order: Vec<&DeviceCiphertext> = ciphertexts.iter().collect();
    order.sort_by_key(|entry| address(Some(entry.recipient)));
    let mut entries = Vec::with_capacity(envelope.encoded_len());
    let mut index = Vec::with_capacity(8 + 4 * order.len());
    index.extend_from_slice(&[0; 8]);
    for entry in order {
        index.extend_from_slice(&index_u32(entries.len()).to_le_bytes());
        // `u32` tags: 6 fits.
        prost::encoding::message::encode(CIPHERTEXTS_TAG as u32, entry, &mut entries);
    }
    index[..4].copy_from_slice(&index_u32(others.len()).to_le_bytes());
    index[4..8].copy_from_slice(&index_u32(entries.len()).to_le_bytes());
    let mut stored = Vec::with_capacity(index.len() + others.len() + entries.len() + 8);
    // `u32` tags: 2,047 fits.
    prost::encoding::bytes::encode(INDEX_TAG as u32, &index, &mut stored);
    stored.extend_from_slice(&others);
    stored.extend_from_slice(&entries);
    stored
}

/// A length or offset of the index: envelopes are far smaller than 4 GiB (a frame is).
fn index_u32(value: usize) -> u32 {
    const _: () = assert!(relay_proto::limits::FRAME_BYTES_MAX <= u32::MAX as usize);
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// The group fields of a stored envelope.
pub(crate) fn group_fields(envelope: &[u8]) -> Result<GroupFields, ViewError> {
    decode_fields(envelope)
}

/// Whom a stored envelope is for (its accounts, and its group), read without decoding its
/// entries.
pub(crate) fn recipients(envelope: &[u8]) -> Result<Recipients, ViewError> {
    decode_fields(envelope)
}

/// The fields `M` names of a stored envelope: of an indexed one, read from its fields other
/// than the entries and from what was appended after them (as a whole decode reads them:
/// the last of a field stands, repeated ones gather).
fn decode_fields<M: Message + Default>(envelope: &[u8]) -> Result<M, ViewError> {
    match Indexed::parse(envelope)? {
        Some(indexed) => indexed.fields(),
        None => Ok(M::decode(envelope)?),
    }
}

/// An indexed stored envelope, split along its index.
struct Indexed<'a> {
    /// The fields other than the entries.
    others: &'a [u8],
    /// The entries, sorted by recipient.
    entries: &'a [u8],
    /// Where each entry starts in `entries` (`u32`, little-endian, each).
    starts: &'a [u8],
    /// What was appended after the entries (entries that complete a stored copy).
    appended: &'a [u8],
}

impl<'a> Indexed<'a> {
    /// `Some` when `envelope` starts with an index; an index that does not frame is an error.
    fn parse(envelope: &'a [u8]) -> Result<Option<Self>, ViewError> {
        if envelope.is_empty() {
            return Ok(None);
        }
        let (tag, wire_type, index, rest) = next_field(envelope)?;
        if tag != INDEX_TAG {
            return Ok(None);
        }
        let damaged = || ViewError::Framing("an entry index that does not frame");
        if wire_type != WIRE_LENGTH_DELIMITED || index.len() < 8 || index.len() % 4 != 0 {
            return Err(damaged());
        }
        let others_len = le_u32(&index[..4]) as usize;
        let entries_len = le_u32(&index[4..8]) as usize;
        let (others, rest) = split(rest, others_len).map_err(|_| damaged())?;
        let (entries, appended) = split(rest, entries_len).map_err(|_| damaged())?;
        Ok(Some(Indexed {
            others,
            entries,
            starts: &index[8..],
            appended,
        }))
    }

    fn len(&self) -> usize {
        self.starts.len() / 4
    }

    /// The fields `M` names, from the fields other than the entries and from what was appended
    /// after them (as a whole decode reads them: the last of a field stands).
    fn fields<M: Message + Default>(&self) -> Result<M, ViewError> {
        let mut fields = M::decode(self.others)?;
        fields.merge(self.appended)?;
        Ok(fields)
    }

    /// Entry `at` (< `len`), as [`entries`] yields it.
    fn entry(&self, at: usize) -> Result<&'a [u8], ViewError> {
        let start = le_u32(&self.starts[4 * at..4 * at + 4]) as usize;
        let damaged = ViewError::Framing("an entry index that points past its entries");
        let from = self.entries.get(start..).ok_or(damaged)?;
        match next_field(from)? {
            (CIPHERTEXTS_TAG, WIRE_LENGTH_DELIMITED, payload, _) => Ok(payload),
            _ => Err(ViewError::Framing(
                "an entry index that points at another field",
            )),
        }
    }

    /// The first entry for `recipient`: found by binary search among the indexed ones, else
    /// among those appended after them.
    fn find(&self, recipient: DeviceAddr) -> Result<Option<&'a [u8]>, ViewError> {
        let wanted = address(Some(recipient));
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            if address(RecipientOnly::decode(self.entry(middle)?)?.recipient) < wanted {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        if low < self.len() {
            let entry = self.entry(low)?;
            if address(RecipientOnly::decode(entry)?.recipient) == wanted {
                return Ok(Some(entry));
            }
        }
        scan_for(self.appended, recipient)
    }
}

/// The order of entries in an indexed envelope (an entry without a recipient decodes as the
/// address 0/0, as prost reads it).
fn address(recipient: Option<DeviceAddr>) -> (u64, u32) {
    let recipient = recipient.unwrap_or_default();
    (recipient.account, recipient.device)
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(word)
}

/// Whether a stored envelope is a group envelope, read without decoding its entries.
pub(crate) fn is_group(envelope: &[u8]) -> bool {
    group_fields(envelope).is_ok_and(|fields| fields.group != 0)
}

/// The entry of a stored envelope for `recipient` (the first naming it), decoded whole.
///
/// The region stores envelopes as prost encodes them, where an entry for `recipient` starts
/// with the same bytes as `recipient`'s entry with nothing else set: entries are matched on
/// those bytes, and only the match is decoded. Should no entry match so (an envelope encoded
/// otherwise), each entry's recipient is decoded and compared.
pub(crate) fn ciphertext_for(
    envelope: &[u8],
    recipient: DeviceAddr,
) -> Result<Option<DeviceCiphertext>, ViewError> {
    let found = match Indexed::parse(envelope)? {
        Some(indexed) => indexed.find(recipient)?,
        None => scan_for(envelope, recipient)?,
    };
    Ok(found.map(DeviceCiphertext::decode).transpose()?)
}

/// The first of the entries among `fields` (top-level envelope fields) for `recipient`.
fn scan_for(fields: &[u8], recipient: DeviceAddr) -> Result<Option<&[u8]>, ViewError> {
    let prefix = DeviceCiphertext {
        recipient,
        message_type: 0,
        body: Vec::new(),
    }
    .encode_to_vec();
    for entry in entries(fields) {
        let entry = entry?;
        if entry.starts_with(&prefix) && RecipientOnly::decode(entry)?.recipient == Some(recipient)
        {
            return Ok(Some(entry));
        }
    }
    for entry in entries(fields) {
        let entry = entry?;
        if RecipientOnly::decode(entry)?.recipient == Some(recipient) {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

/// What a member's fetch needs of a stored envelope, in one walk over its fields: the group
/// fields and the entry for `recipient` (as [`group_fields`] and [`ciphertext_for`] find them).
pub(crate) fn member_view(
    envelope: &[u8],
    recipient: DeviceAddr,
) -> Result<(GroupFields, Option<DeviceCiphertext>), ViewError> {
    if let Some(indexed) = Indexed::parse(envelope)? {
        let fields = indexed.fields()?;
        let found = indexed.find(recipient)?;
        return Ok((fields, found.map(DeviceCiphertext::decode).transpose()?));
    }
    let prefix = DeviceCiphertext {
        recipient,
        message_type: 0,
        body: Vec::new(),
    }
    .encode_to_vec();
    let mut fields = GroupFields::default();
    let mut found = None;
    let mut rest = envelope;
    while !rest.is_empty() {
        let (tag, wire_type, payload, after) = next_field(rest)?;
        rest = after;
        match (tag, wire_type) {
            (CIPHERTEXTS_TAG, WIRE_LENGTH_DELIMITED)
                if found.is_none() && payload.starts_with(&prefix) =>
            {
                let decoded = DeviceCiphertext::decode(payload)?;
                if decoded.recipient == recipient {
                    found = Some(decoded);
                }
            }
            (GROUP_TAG, WIRE_VARINT) => fields.group = varint(payload)?.0,
            (KIND_TAG, WIRE_VARINT) => fields.kind = varint(payload)?.0 as i32,
            (GROUP_CIPHERTEXT_TAG, WIRE_LENGTH_DELIMITED) => {
                fields.group_ciphertext = payload.to_vec();
            }
            (GROUP_SESSION_ID_TAG, WIRE_LENGTH_DELIMITED) => {
                fields.group_session_id = String::from_utf8(payload.to_vec())
                    .map_err(|_| ViewError::Framing("a session id that is not UTF-8"))?;
            }
            (GROUP_TAG | KIND_TAG | GROUP_CIPHERTEXT_TAG | GROUP_SESSION_ID_TAG, _) => {
                return Err(ViewError::Framing("a group field of the wrong wire type"));
            }
            _ => {}
        }
    }
    match found {
        Some(found) => Ok((fields, Some(found))),
        // An envelope encoded otherwise: each entry's recipient decoded and compared.
        None => Ok((fields, ciphertext_for(envelope, recipient)?)),
    }
}

/// The entries of `offered` (another copy of the envelope `stored`, with the same sender and
/// client message id) for the devices `wanted` names that `stored` has no entry for, encoded as
/// `Envelope::ciphertexts` fields: appended to `stored`, they complete it (protobuf extends a
/// repeated field with every occurrence). Empty when nothing is missing.
pub(crate) fn missing_entries<'a>(
    stored: &[u8],
    offered: impl IntoIterator<Item = &'a DeviceCiphertext>,
    wanted: impl Fn(&DeviceAddr) -> bool,
) -> Result<Vec<u8>, ViewError> {
    let mut fields = Vec::new();
    for ciphertext in offered {
        if wanted(&ciphertext.recipient) && ciphertext_for(stored, ciphertext.recipient)?.is_none()
        {
            // `u32` tags: 6 fits.
            prost::encoding::message::encode(CIPHERTEXTS_TAG as u32, ciphertext, &mut fields);
        }
    }
    Ok(fields)
}

/// The encoded per-device entries of an envelope, in order: the payloads of its
/// length-delimited fields with the entries' tag.
fn entries(envelope: &[u8]) -> impl Iterator<Item = Result<&[u8], ViewError>> {
    let mut rest = envelope;
    std::iter::from_fn(move || {
        while !rest.is_empty() {
            match next_field(rest) {
                Ok((tag, wire_type, payload, after)) => {
                    rest = after;
                    if tag == CIPHERTEXTS_TAG && wire_type == WIRE_LENGTH_DELIMITED {
                        return Some(Ok(payload));
                    }
                }
                Err(error) => {
                    rest = &[];
                    return Some(Err(error));
                }
            }
        }
        None
    })
}

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LENGTH_DELIMITED: u64 = 2;
const WIRE_FIXED32: u64 = 5;

/// One top-level field: its tag, wire type, payload (a length-delimited field's bytes, else
/// the value's bytes) and what follows it.
type Field<'a> = (u64, u64, &'a [u8], &'a [u8]);

/// The first top-level field of `bytes`.
fn next_field(bytes: &[u8]) -> Result<Field<'_>, ViewError> {
    let (key, rest) = varint(bytes)?;
    let (tag, wire_type) = (key >> 3, key & 7);
    let (payload, after) = match wire_type {
        WIRE_VARINT => {
            let (_, after) = varint(rest)?;
            (&rest[..rest.len() - after.len()], after)
        }
        WIRE_FIXED64 => split(rest, 8)?,
        WIRE_FIXED32 => split(rest, 4)?,
        WIRE_LENGTH_DELIMITED => {
            let (len, rest) = varint(rest)?;
            let len = usize::try_from(len)
                .map_err(|_| ViewError::Framing("a length beyond the address space"))?;
            split(rest, len)?
        }
        _ => return Err(ViewError::Framing("a wire type envelopes do not use")),
    };
    Ok((tag, wire_type, payload, after))
}

/// The first `len` bytes of `bytes`, and the rest.
fn split(bytes: &[u8], len: usize) -> Result<(&[u8], &[u8]), ViewError> {
    if len <= bytes.len() {
        Ok(bytes.split_at(len))
    } else {
        Err(ViewError::Framing("a field runs past the envelope"))
    }
}

/// A base-128 varint at the start of `bytes`, and what follows it.
fn varint(bytes: &[u8]) -> Result<(u64, &[u8]), ViewError> {
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok((value, &bytes[index + 1..]));
        }
    }
    Err(ViewError::Framing(
        "a varint runs past the envelope or 10 bytes",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_proto::wire::{Envelope, EnvelopeKind};

    fn entry(account: u64, device: u32, body: &[u8]) -> DeviceCiphertext {
        DeviceCiphertext {
            recipient: DeviceAddr { account, device },
            message_type: 1,
            body: body.to_vec(),
        }
    }

    #[test]
    fn missing_entries_complete_a_stored_copy_and_nothing_else() {
        let mut stored = group_envelope();
        stored.ciphertexts.truncate(1); // 2/1 only: stored before 3/1 and 3/2 were checked here
        let stored = stored.encode_to_vec();
        let offered = group_envelope();
        let fields = missing_entries(&stored, &offered.ciphertexts, |device| device.account == 3)
            .expect("frames");
        let mut completed = stored.clone();
        completed.extend_from_slice(&fields);
        let decoded = Envelope::decode(completed.as_slice()).expect("decodes");
        assert_eq!(decoded.ciphertexts, offered.ciphertexts);
        assert_eq!(decoded.group_ciphertext, offered.group_ciphertext);
        let again = missing_entries(&completed, &offered.ciphertexts, |_| true).expect("frames");
        assert!(again.is_empty(), "nothing is missing twice");
        let unwanted = missing_entries(&stored, &offered.ciphertexts, |device| device.account == 9)
            .expect("frames");
        assert!(unwanted.is_empty(), "only the devices asked for");
    }

    fn group_envelope() -> Envelope {
        Envelope {
            chat: vec![7; 16],
            sender: DeviceAddr {
                account: 1,
                device: 1,
            },
            client_message_id: vec![3; 16],
            sender_seq: 4,
            recipient_accounts: vec![2, 3, 4],
            ciphertexts: vec![entry(2, 1, b""), entry(3, 1, b"x"), entry(3, 2, b"yz")],
            device_seq: 9,
            group: 42,
            group_version: 5,
            kind: EnvelopeKind::Message.into(),
            group_ciphertext: b"megolm".to_vec(),
            group_session_id: "session".into(),
            group_prev_seq: 3,
        }
    }

    #[test]
    fn the_member_view_agrees_with_the_two_views_in_one_walk() {
        let mut plain = group_envelope();
        plain.group = 0;
        plain.kind = 0;
        plain.group_ciphertext.clear();
        plain.group_session_id.clear();
        for envelope in [group_envelope(), plain] {
            let stored = envelope.encode_to_vec();
            let stranger = DeviceAddr {
                account: 9,
                device: 1,
            };
            let recipients = envelope.ciphertexts.iter().map(|entry| entry.recipient);
            for recipient in recipients.chain([stranger]) {
                let (fields, found) = member_view(&stored, recipient).expect("decodes");
                assert_eq!(fields, group_fields(&stored).expect("decodes"));
                assert_eq!(found, ciphertext_for(&stored, recipient).expect("decodes"));
            }
        }
        // Cut anywhere, it is an error, never a view of something else.
        let stored = group_envelope().encode_to_vec();
        for cut in 1..stored.len() {
            let recipient = group_envelope().ciphertexts[2].recipient;
            if let Ok((fields, found)) = member_view(&stored[..cut], recipient) {
                // A cut between fields leaves whole fields: what they hold is the envelope's.
                let full = group_fields(&stored).expect("decodes");
                assert!(fields.group == 0 || fields.group == full.group);
                assert!(found.is_none() || found == ciphertext_for(&stored, recipient).expect("x"));
            }
        }
    }

    #[test]
    fn the_view_holds_what_a_full_decode_holds_for_each_recipient() {
        let envelope = group_envelope();
        let stored = envelope.encode_to_vec();
        let fields = group_fields(&stored).expect("the group fields decode");
        assert_eq!(fields.group, 42);
        assert_eq!(fields.kind, i32::from(EnvelopeKind::Message));
        assert_eq!(fields.group_ciphertext, b"megolm");
        assert_eq!(fields.group_session_id, "session");
        for expected in &envelope.ciphertexts {
            let found = ciphertext_for(&stored, expected.recipient).expect("the entries decode");
            assert_eq!(found.as_ref(), Some(expected));
        }
        let stranger = DeviceAddr {
            account: 9,
            device: 1,
        };
        assert_eq!(ciphertext_for(&stored, stranger).expect("decodes"), None);
        assert!(is_group(&stored));
        let direct = Envelope {
            group: 0,
            ..envelope
        };
        assert!(!is_group(&direct.encode_to_vec()));
    }

    fn stranger() -> DeviceAddr {
        DeviceAddr {
            account: 9,
            device: 1,
        }
    }

    #[test]
    fn an_entry_encoded_otherwise_is_still_found() {
        // The recipient's fields in the other order: no prefix match, found by decoding.
        let entry = [
            0x0a, 0x04, 0x10, 0x02, 0x08, 0x05, 0x10, 0x01, 0x1a, 0x01, 0x61,
        ];
        let mut envelope = vec![0x32, entry.len() as u8];
        envelope.extend_from_slice(&entry);
        let recipient = DeviceAddr {
            account: 5,
            device: 2,
        };
        let found = ciphertext_for(&envelope, recipient).expect("decodes");
        assert_eq!(
            found,
            Some(DeviceCiphertext {
                recipient,
                message_type: 1,
                body: b"a".to_vec(),
            })
        );
        assert_eq!(
            ciphertext_for(&envelope, stranger()).expect("decodes"),
            None
        );
    }

    #[test]
    fn a_damaged_entry_is_an_error_not_a_miss() {
        let mut envelope = group_envelope();
        envelope.ciphertexts.truncate(1);
        let mut bytes = envelope.encode_to_vec();
        let inner = envelope.ciphertexts[0].encode_to_vec();
        let at = bytes
            .windows(inner.len())
            .position(|window| window == inner.as_slice())
            .expect("the entry is in the envelope");
        // The entry's recipient (its field 1) now claims more bytes than the entry has.
        bytes[at + 1] = 0x7f;
        let recipient = DeviceAddr {
            account: 2,
            device: 1,
        };
        ciphertext_for(&bytes, recipient).expect_err("a damaged entry does not decode");
        // Cut short: the last field runs past the end.
        let whole = group_envelope().encode_to_vec();
        let cut = &whole[..whole.len() - 1];
        ciphertext_for(cut, stranger()).expect_err("a cut envelope does not frame");
    }

    /// A group envelope of `members` member devices in a scrambled order, with a repeated
    /// recipient (the first of its entries is the one that counts).
    fn large_group_envelope(members: u64) -> Envelope {
        let mut envelope = group_envelope();
        envelope.ciphertexts = (0..members)
            .map(|n| {
                let account = (n * 7_919) % members + 2;
                entry(account, (n % 3) as u32 + 1, &n.to_le_bytes())
            })
            .collect();
        let repeated = envelope.ciphertexts[5].recipient;
        envelope.ciphertexts.push(DeviceCiphertext {
            recipient: repeated,
            message_type: 1,
            body: b"a later entry for the same device".to_vec(),
        });
        envelope
    }

    #[test]
    fn an_indexed_envelope_is_the_same_envelope_found_by_binary_search() {
        let envelope = large_group_envelope(300);
        let plain = envelope.encode_to_vec();
        let indexed = encode(&envelope);
        assert!(Indexed::parse(&indexed).expect("frames").is_some());
        assert!(Indexed::parse(&plain).expect("frames").is_none());
        // Any protobuf decoder reads it as the envelope, entries sorted by recipient (the
        // entries of one recipient in their order).
        let decoded = Envelope::decode(indexed.as_slice()).expect("decodes");
        let mut sorted = envelope.clone();
        sorted
            .ciphertexts
            .sort_by_key(|entry| (entry.recipient.account, entry.recipient.device));
        assert_eq!(decoded, sorted);
        // Every view agrees with the plain form's, for every recipient and for a stranger.
        let devices = envelope.ciphertexts.iter().map(|entry| entry.recipient);
        for recipient in devices.chain([stranger(), DeviceAddr::default()]) {
            let expected = ciphertext_for(&plain, recipient).expect("decodes");
            assert_eq!(
                ciphertext_for(&indexed, recipient).expect("decodes"),
                expected
            );
            let (fields, found) = member_view(&indexed, recipient).expect("decodes");
            assert_eq!(found, expected);
            assert_eq!(fields, group_fields(&plain).expect("decodes"));
        }
        assert_eq!(
            ciphertext_for(&indexed, envelope.ciphertexts[5].recipient)
                .expect("decodes")
                .map(|entry| entry.body),
            Some(5u64.to_le_bytes().to_vec()),
            "the first entry of a repeated recipient"
        );
        assert_eq!(
            group_fields(&indexed).expect("decodes"),
            group_fields(&plain).expect("x")
        );
        assert_eq!(
            recipients(&indexed).expect("decodes"),
            recipients(&plain).expect("x")
        );
        assert!(is_group(&indexed));
        // A small envelope stays plain.
        assert_eq!(encode(&group_envelope()), group_envelope().encode_to_vec());
    }

    #[test]
    fn entries_appended_to_an_indexed_envelope_are_found_too() {
        let mut envelope = large_group_envelope(100);
        let late = entry(5_000, 1, b"late");
        let stored = encode(&envelope);
        let fields = missing_entries(&stored, [&late], |_| true).expect("frames");
        assert!(!fields.is_empty(), "the late device is missing");
        let mut completed = stored.clone();
        completed.extend_from_slice(&fields);
        assert_eq!(
            ciphertext_for(&completed, late.recipient).expect("x"),
            Some(late.clone())
        );
        let (_, found) = member_view(&completed, late.recipient).expect("decodes");
        assert_eq!(found, Some(late.clone()));
        let again = missing_entries(&completed, [&late], |_| true).expect("frames");
        assert!(again.is_empty(), "nothing is missing twice");
        envelope.ciphertexts.push(late);
        assert_eq!(
            recipients(&completed).expect("decodes"),
            recipients(&envelope.encode_to_vec()).expect("decodes")
        );
    }

    #[test]
    fn a_damaged_index_is_an_error_or_a_view_of_the_envelope_never_a_panic() {
        let envelope = large_group_envelope(64);
        let indexed = encode(&envelope);
        let probes = [
            envelope.ciphertexts[0].recipient,
            envelope.ciphertexts[40].recipient,
        ];
        let check = |bytes: &[u8]| {
            for recipient in probes.into_iter().chain([stranger()]) {
                if let Ok(Some(found)) = ciphertext_for(bytes, recipient) {
                    // Whatever it finds is an entry of the envelope, not bytes of another.
                    assert!(envelope.ciphertexts.contains(&found) || found.recipient == recipient);
                }
                let _ = member_view(bytes, recipient);
                let _ = group_fields(bytes);
                let _ = recipients(bytes);
            }
        };
        for cut in 0..indexed.len() {
            check(&indexed[..cut]);
        }
        for at in 0..indexed.len().min(400) {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = indexed.clone();
                damaged[at] ^= flip;
                check(&damaged);
            }
        }
        // An index pointing past its entries, or at a field that is not an entry.
        // (The index field's key and length take 2 + 2 bytes; its first entry start follows
        // the two lengths.)
        let (_, _, index, rest) = next_field(&indexed).expect("frames");
        let first_start = indexed.len() - rest.len() - index.len() + 8;
        for start in [u32::MAX, 1] {
            let mut damaged = indexed.clone();
            damaged[first_start..first_start + 4].copy_from_slice(&start.to_le_bytes());
            ciphertext_for(&damaged, DeviceAddr::default())
                .expect_err("an index pointing past its entries, or into one");
        }
    }
}
