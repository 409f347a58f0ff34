//! The parts of a stored envelope that a delivery needs, read without decoding the rest.
//!
//! A group message's envelope holds an entry per member device (up to thousands, each naming
//! its device), and every member's fetch and every member's ack reads that one stored envelope.
//! Decoding it whole for each member made the region's cost per delivery grow with the group's
//! size (a tenth of the region's time in W3 went to `Envelope::decode`). These views decode
//! only what they name: prost skips the other fields, and the per-device entries stay encoded
//! slices of the stored record ([`Bytes`], no copy) until the one for the recipient is found.

use prost::{DecodeError, Message};
use relay_proto::wire::{DeviceAddr, DeviceCiphertext};

/// `Envelope::ciphertexts`' tag.
const CIPHERTEXTS_TAG: u64 = 6;
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

/// The group fields of a stored envelope.
pub(crate) fn group_fields(envelope: &[u8]) -> Result<GroupFields, ViewError> {
    Ok(GroupFields::decode(envelope)?)
}

/// Whom a stored envelope is for (its accounts, and its group), read without decoding its
/// entries.
pub(crate) fn recipients(envelope: &[u8]) -> Result<Recipients, ViewError> {
    Ok(Recipients::decode(envelope)?)
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
    let prefix = DeviceCiphertext {
        recipient,
        message_type: 0,
        body: Vec::new(),
    }
    .encode_to_vec();
    for entry in entries(envelope) {
        let entry = entry?;
        if entry.starts_with(&prefix) {
            let decoded = DeviceCiphertext::decode(entry)?;
            if decoded.recipient == recipient {
                return Ok(Some(decoded));
            }
        }
    }
    for entry in entries(envelope) {
        let entry = entry?;
        if RecipientOnly::decode(entry)?.recipient == Some(recipient) {
            return Ok(Some(DeviceCiphertext::decode(entry)?));
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
}
