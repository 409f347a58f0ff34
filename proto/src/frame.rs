//! Length-delimited frames: `version: u8 | body_length: u32 big-endian | body`.
//!
//! The header is checked before the body is buffered, so a peer announcing a frame larger than
//! [`FRAME_BYTES_MAX`](crate::limits::FRAME_BYTES_MAX) is refused without reading it.

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;

use crate::limits::{FRAME_BYTES_MAX, PROTOCOL_VERSION};

/// Bytes of the frame header.
pub const FRAME_HEADER_BYTES: usize = 5;

/// Why bytes from a peer are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame's version byte is not one this build speaks.
    #[error("unsupported wire version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    /// The frame announces a body larger than the limit.
    #[error("frame of {announced} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes announced by the header.
        announced: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The input ended inside a frame.
    #[error("frame truncated: needed {needed} bytes, had {had}")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes available.
        had: usize,
    },
    /// The body is not a valid message of the expected type.
    #[error("frame body does not decode: {0}")]
    Decode(String),
}

impl From<FrameError> for crate::ProtoError {
    fn from(error: FrameError) -> Self {
        let code = match error {
            FrameError::UnsupportedVersion(_) => crate::ErrorCode::UnsupportedVersion,
            FrameError::TooLarge { .. } => crate::ErrorCode::TooLarge,
            _ => crate::ErrorCode::Malformed,
        };
        crate::ProtoError::new(code, error.to_string())
    }
}

/// Encodes a message as one frame.
pub fn encode_frame<M: Message>(message: &M) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_into(message, &mut out);
    out
}

/// Appends a message as one frame to `out` (several frames gathered into one write).
pub fn encode_frame_into<M: Message>(message: &M, out: &mut Vec<u8>) {
    let body_length = message.encoded_len();
    out.reserve(FRAME_HEADER_BYTES + body_length);
    out.put_u8(PROTOCOL_VERSION);
    // A body larger than u32::MAX cannot be produced by our own messages (limits are far below).
    out.put_u32(u32::try_from(body_length).unwrap_or(u32::MAX));
    message.encode_raw(out);
}

/// Parses a frame header, returning the body length it announces.
pub fn decode_header(header: &[u8; FRAME_HEADER_BYTES], limit: usize) -> Result<usize, FrameError> {
    let mut buf = &header[..];
    let version = buf.get_u8();
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let announced = buf.get_u32() as usize;
    if announced > limit {
        return Err(FrameError::TooLarge { announced, limit });
    }
    Ok(announced)
}

/// Decodes exactly one frame holding an `M` from `bytes`; trailing bytes are an error.
pub fn decode_frame<M: Message + Default>(bytes: &[u8]) -> Result<M, FrameError> {
    let Some(header) = bytes.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Err(FrameError::Truncated {
            needed: FRAME_HEADER_BYTES,
            had: bytes.len(),
        });
    };
    let body_length = decode_header(header, FRAME_BYTES_MAX)?;
    let body = &bytes[FRAME_HEADER_BYTES..];
    if body.len() != body_length {
        return Err(FrameError::Truncated {
            needed: body_length,
            had: body.len(),
        });
    }
    M::decode(body).map_err(|error| FrameError::Decode(error.to_string()))
}

/// Incremental decoder: push bytes as they arrive, pop whole frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    limit: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(FRAME_BYTES_MAX)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames larger than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            limit,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received and not yet taken as a frame (0 between frames).
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next whole frame, if one is buffered.
    pub fn next_frame<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        let Some(header) = self.buffer.first_chunk::<FRAME_HEADER_BYTES>() else {
            return Ok(None);
        };
        let body_length = decode_header(header, self.limit)?;
        if self.buffer.len() < FRAME_HEADER_BYTES + body_length {
            return Ok(None);
        }
        self.buffer.advance(FRAME_HEADER_BYTES);
        let body = self.buffer.split_to(body_length);
        M::decode(&body[..])
            .map(Some)
            .map_err(|error| FrameError::Decode(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ErrorReply, FetchQueue};

    #[test]
    fn round_trips_and_streams() {
        let message = FetchQueue {
            after_queue_seq: 41,
            limit: 7,
        };
        let frame = encode_frame(&message);
        assert_eq!(decode_frame::<FetchQueue>(&frame), Ok(message.clone()));

        let mut decoder = FrameDecoder::default();
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        for byte in &two {
            decoder.push(std::slice::from_ref(byte));
        }
        assert_eq!(
            decoder.next_frame::<FetchQueue>(),
            Ok(Some(message.clone()))
        );
        assert_eq!(decoder.next_frame::<FetchQueue>(), Ok(Some(message)));
        assert_eq!(decoder.next_frame::<FetchQueue>(), Ok(None));
    }

    #[test]
    fn refuses_bad_headers_without_panicking() {
        assert!(matches!(
            decode_frame::<ErrorReply>(&[]),
            Err(FrameError::Truncated { .. })
        ));
        assert_eq!(
            decode_frame::<ErrorReply>(&[9, 0, 0, 0, 0]),
            Err(FrameError::UnsupportedVersion(9))
        );
        let huge = [PROTOCOL_VERSION, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode_frame::<ErrorReply>(&huge),
            Err(FrameError::TooLarge { .. })
        ));
        let mut garbage = vec![PROTOCOL_VERSION, 0, 0, 0, 3];
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_frame::<ErrorReply>(&garbage),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic sweep of pseudo-random inputs through every top-level decoder.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for length in 0..512usize {
            let mut bytes = Vec::with_capacity(length + FRAME_HEADER_BYTES);
            bytes.push(PROTOCOL_VERSION);
            bytes.extend_from_slice(&(length as u32).to_be_bytes());
            for _ in 0..length {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(state as u8);
            }
            let _ = decode_frame::<crate::wire::ClientRequest>(&bytes);
            let _ = decode_frame::<crate::wire::ClientResponse>(&bytes);
            let _ = decode_frame::<crate::wire::ServerPush>(&bytes);
            let _ = decode_frame::<crate::wire::RegionRequest>(&bytes);
            let _ = decode_frame::<crate::wire::RegionResponse>(&bytes);
            let _ = decode_frame::<crate::wire::Envelope>(&bytes);
        }
    }
}
