//! The byte formats of the crate: sync messages between a user's devices, snapshots for a new
//! device, and persisted per-peer sync states. Every decoder checks lengths before it reads or
//! allocates and returns [`SyncError::Malformed`], never panics.
//!
//! A **sync message** (at most `SYNC_MESSAGE_BYTES_MAX`):
//! `"RSM2"`, session (u64), number (u64), part count (u16), then each part: chat (16 bytes),
//! epoch (u64), generation (u64), genesis hash (32 bytes), fragment index (u32), last fragment
//! (u8: 0 or 1), payload length (u32), payload. A part carries one automerge sync message for
//! one generation of one epoch, whole or as consecutive fragments across consecutive messages.
//! Integers are big-endian.
//!
//! A **snapshot**: `"RSS2"`, epoch count (u32), then each epoch: chat, epoch, generation,
//! genesis hash, length (u64), automerge's saved document.
//!
//! A **peer state**: `"RSP2"`, entry count (u32), then each entry: chat, epoch, generation,
//! genesis hash, length (u32), automerge's encoded sync state.
//!
//! The magic's last byte is the layout's version: version 2 cut epochs from 10,000 chat
//! sequences to `EPOCH_MESSAGES_MAX`, so bytes of version 1 (whose epoch numbers name other
//! ranges of chat sequences) are refused with an error that says so, never read as version 2.

use relay_proto::ChatId;

use crate::epoch::GenerationId;
use crate::error::SyncError;
use crate::limits::{SYNC_MESSAGE_BYTES_MAX, SYNC_MESSAGE_HEADER_BYTES, SYNC_PART_HEADER_BYTES};

const SYNC_MESSAGE_MAGIC: &[u8; 4] = b"RSM2";
const SNAPSHOT_MAGIC: &[u8; 4] = b"RSS2";
const PEER_STATE_MAGIC: &[u8; 4] = b"RSP2";

/// One generation of one epoch of one chat: what a part, a snapshot entry or a sync state is
/// about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct EpochKey {
    pub chat: ChatId,
    pub epoch: u64,
    pub generation: GenerationId,
}

/// A part of a sync message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    pub key: EpochKey,
    pub fragment_index: u32,
    pub last: bool,
    pub payload: Vec<u8>,
}

/// A decoded sync message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncMessage {
    pub session: u64,
    pub number: u64,
    pub parts: Vec<Part>,
}

/// Bytes of a part carrying `payload_bytes`.
pub(crate) fn part_bytes(payload_bytes: usize) -> usize {
    SYNC_PART_HEADER_BYTES + payload_bytes
}

fn put_key(out: &mut Vec<u8>, key: &EpochKey) {
    out.extend_from_slice(&key.chat.0);
    out.extend_from_slice(&key.epoch.to_be_bytes());
    out.extend_from_slice(&key.generation.generation.to_be_bytes());
    out.extend_from_slice(&key.generation.genesis);
}

fn length_u32(length: usize) -> [u8; 4] {
    // Every payload and sync state is far below 4 GiB: parts are bounded by
    // SYNC_MESSAGE_BYTES_MAX and sync states hold a few heads.
    u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes()
}

impl SyncMessage {
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let payload: usize = self
            .parts
            .iter()
            .map(|part| part_bytes(part.payload.len()))
            .sum();
        let mut out = Vec::with_capacity(SYNC_MESSAGE_HEADER_BYTES + payload);
        out.extend_from_slice(SYNC_MESSAGE_MAGIC);
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.number.to_be_bytes());
        let count = u16::try_from(self.parts.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for part in self.parts.iter().take(usize::from(count)) {
            put_key(&mut out, &part.key);
            out.extend_from_slice(&part.fragment_index.to_be_bytes());
            out.push(u8::from(part.last));
            out.extend_from_slice(&length_u32(part.payload.len()));
            out.extend_from_slice(&part.payload);
        }
        debug_assert!(out.len() <= SYNC_MESSAGE_BYTES_MAX);
        out
    }

    /// Decodes a peer's message.
    pub fn decode(bytes: &[u8]) -> Result<SyncMessage, SyncError> {
        const WHAT: &str = "sync message";
        if bytes.len() > SYNC_MESSAGE_BYTES_MAX {
            return Err(SyncError::malformed(
                WHAT,
                format!(
                    "{} bytes, more than the {SYNC_MESSAGE_BYTES_MAX} allowed",
                    bytes.len()
                ),
            ));
        }
        let mut reader = Reader::new(WHAT, bytes);
        reader.magic(SYNC_MESSAGE_MAGIC)?;
        let session = reader.u64()?;
        let number = reader.u64()?;
        let count = reader.u16()?;
        let mut parts =
            Vec::with_capacity(usize::from(count).min(bytes.len() / SYNC_PART_HEADER_BYTES));
        for _ in 0..count {
            let key = reader.key()?;
            let fragment_index = reader.u32()?;
            let last = match reader.u8()? {
                0 => false,
                1 => true,
                other => {
                    return Err(SyncError::malformed(
                        WHAT,
                        format!("last-fragment flag {other}"),
                    ));
                }
            };
            let length = reader.u32()?;
            let payload = reader
                .bytes(usize::try_from(length).unwrap_or(usize::MAX))?
                .to_vec();
            parts.push(Part {
                key,
                fragment_index,
                last,
                payload,
            });
        }
        reader.end()?;
        Ok(SyncMessage {
            session,
            number,
            parts,
        })
    }
}

/// Encodes a snapshot from each epoch's key and saved document.
pub(crate) fn encode_snapshot(epochs: &[(EpochKey, Vec<u8>)]) -> Vec<u8> {
    let size: usize = epochs.iter().map(|(_, bytes)| 64 + 8 + bytes.len()).sum();
    let mut out = Vec::with_capacity(8 + size);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(
        &u32::try_from(epochs.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for (key, bytes) in epochs {
        put_key(&mut out, key);
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// Decodes a snapshot into each epoch's key and saved document (borrowed).
pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<Vec<(EpochKey, &[u8])>, SyncError> {
    const WHAT: &str = "snapshot";
    let mut reader = Reader::new(WHAT, bytes);
    reader.magic(SNAPSHOT_MAGIC)?;
    let count = reader.u32()?;
    let mut epochs = Vec::new();
    for _ in 0..count {
        let key = reader.key()?;
        let length = reader.u64()?;
        let document = reader.bytes(usize::try_from(length).unwrap_or(usize::MAX))?;
        epochs.push((key, document));
    }
    reader.end()?;
    Ok(epochs)
}

/// Encodes a peer's persisted sync states.
pub(crate) fn encode_peer_state(states: &[(EpochKey, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(PEER_STATE_MAGIC);
    out.extend_from_slice(
        &u32::try_from(states.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for (key, bytes) in states {
        put_key(&mut out, key);
        out.extend_from_slice(&length_u32(bytes.len()));
        out.extend_from_slice(bytes);
    }
    out
}

/// Decodes a peer's persisted sync states.
pub(crate) fn decode_peer_state(bytes: &[u8]) -> Result<Vec<(EpochKey, &[u8])>, SyncError> {
    const WHAT: &str = "peer state";
    let mut reader = Reader::new(WHAT, bytes);
    reader.magic(PEER_STATE_MAGIC)?;
    let count = reader.u32()?;
    let mut states = Vec::new();
    for _ in 0..count {
        let key = reader.key()?;
        let length = reader.u32()?;
        states.push((
            key,
            reader.bytes(usize::try_from(length).unwrap_or(usize::MAX))?,
        ));
    }
    reader.end()?;
    Ok(states)
}

/// Reads big-endian fields off a byte slice, refusing to read past its end.
struct Reader<'a> {
    what: &'static str,
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn new(what: &'static str, bytes: &'a [u8]) -> Self {
        Reader {
            what,
            bytes,
            offset: 0,
        }
    }

    fn bytes(&mut self, length: usize) -> Result<&'a [u8], SyncError> {
        let remaining = self.bytes.len() - self.offset;
        if length > remaining {
            return Err(SyncError::malformed(
                self.what,
                format!(
                    "{length} bytes announced at offset {} but {remaining} left",
                    self.offset
                ),
            ));
        }
        let slice = &self.bytes[self.offset..self.offset + length];
        self.offset += length;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SyncError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.bytes(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, SyncError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, SyncError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, SyncError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, SyncError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn magic(&mut self, magic: &[u8; 4]) -> Result<(), SyncError> {
        let found = self.array::<4>()?;
        if &found == magic {
            Ok(())
        } else if found[..3] == magic[..3] {
            Err(SyncError::malformed(
                self.what,
                format!(
                    "it has layout version {}, this build reads version {} only (epochs of {} \
                     chat sequences)",
                    char::from(found[3]).escape_default(),
                    char::from(magic[3]),
                    crate::limits::EPOCH_MESSAGES_MAX,
                ),
            ))
        } else {
            Err(SyncError::malformed(
                self.what,
                "it does not start with the expected magic",
            ))
        }
    }

    fn key(&mut self) -> Result<EpochKey, SyncError> {
        let chat = ChatId(self.array()?);
        let epoch = self.u64()?;
        let generation = self.u64()?;
        let genesis = self.array()?;
        Ok(EpochKey {
            chat,
            epoch,
            generation: GenerationId {
                generation,
                genesis,
            },
        })
    }

    fn end(&self) -> Result<(), SyncError> {
        if self.offset == self.bytes.len() {
            Ok(())
        } else {
            Err(SyncError::malformed(
                self.what,
                format!(
                    "{} bytes left after the last field",
                    self.bytes.len() - self.offset
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> EpochKey {
        EpochKey {
            chat: ChatId([n; 16]),
            epoch: u64::from(n),
            generation: GenerationId {
                generation: 2,
                genesis: [n; 32],
            },
        }
    }

    #[test]
    fn sync_messages_round_trip_and_refuse_every_truncation() {
        let message = SyncMessage {
            session: 7,
            number: 9,
            parts: vec![
                Part {
                    key: key(1),
                    fragment_index: 0,
                    last: true,
                    payload: b"abc".to_vec(),
                },
                Part {
                    key: key(2),
                    fragment_index: 3,
                    last: false,
                    payload: vec![],
                },
            ],
        };
        let bytes = message.encode();
        assert_eq!(SyncMessage::decode(&bytes).expect("round trip"), message);
        for cut in 0..bytes.len() {
            assert!(SyncMessage::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(SyncMessage::decode(&longer).is_err());
    }

    #[test]
    fn snapshots_and_peer_states_round_trip() {
        let epochs = vec![(key(1), b"doc one".to_vec()), (key(2), Vec::new())];
        let bytes = encode_snapshot(&epochs);
        let decoded = decode_snapshot(&bytes).expect("round trip");
        assert_eq!(decoded, vec![(key(1), &b"doc one"[..]), (key(2), &b""[..])]);
        assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
        let states = encode_peer_state(&epochs);
        assert_eq!(decode_peer_state(&states).expect("round trip").len(), 2);
        assert!(
            decode_peer_state(&bytes).is_err(),
            "a snapshot is not a peer state"
        );
    }
}
