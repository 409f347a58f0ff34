//! What travels inside each Olm ciphertext: the plaintext no server ever sees.
//!
//! A content is either a text message or a read receipt. Read receipts are ordinary envelopes to
//! the peer's devices and the sender's own other devices, so no server learns that anyone read
//! anything. Tags are never reused; a retired field keeps its number reserved in a comment.

use prost::Message;

use crate::error::{ClientError, Result};
use crate::limits::{READ_RECEIPT_IDS_MAX, TEXT_BYTES_MAX};

/// The plaintext of one envelope.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Content {
    /// What it is.
    #[prost(oneof = "body::Body", tags = "1, 2")]
    pub body: Option<body::Body>,
}

/// The variants of [`Content`].
pub mod body {
    /// What a content holds.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Body {
        /// A text message.
        #[prost(message, tag = "1")]
        Text(super::Text),
        /// Messages marked read.
        #[prost(message, tag = "2")]
        Read(super::ReadReceipt),
    }
}

/// A text message.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Text {
    /// The text.
    #[prost(string, tag = "1")]
    pub body: String,
    /// When the sender wrote it (ms since the Unix epoch, the sender's clock).
    #[prost(uint64, tag = "2")]
    pub sent_at_ms: u64,
    /// The other account of the 1:1 chat as the sender sees it, so the sender's own other
    /// devices can file the message under the right chat.
    #[prost(uint64, tag = "3")]
    pub peer_account: u64,
}

/// A read receipt: these messages of the chat were read.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ReadReceipt {
    /// Client message ids (16 bytes each) of the messages read.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub client_message_ids: Vec<Vec<u8>>,
    /// When they were read (ms since the Unix epoch, the reader's clock).
    #[prost(uint64, tag = "2")]
    pub read_at_ms: u64,
    /// The other account of the 1:1 chat as the reader sees it (for the reader's other devices).
    #[prost(uint64, tag = "3")]
    pub peer_account: u64,
}

impl Content {
    /// A text message content, refusing texts over [`TEXT_BYTES_MAX`].
    pub fn text(body: &str, sent_at_ms: u64, peer_account: u64) -> Result<Self> {
        if body.len() > TEXT_BYTES_MAX {
            return Err(ClientError::Invalid(format!(
                "the text is {} bytes; the limit is {TEXT_BYTES_MAX}",
                body.len()
            )));
        }
        Ok(Content {
            body: Some(body::Body::Text(Text {
                body: body.to_owned(),
                sent_at_ms,
                peer_account,
            })),
        })
    }

    /// A read receipt content for up to [`READ_RECEIPT_IDS_MAX`] client message ids.
    pub fn read(
        client_message_ids: Vec<[u8; 16]>,
        read_at_ms: u64,
        peer_account: u64,
    ) -> Result<Self> {
        if client_message_ids.is_empty() || client_message_ids.len() > READ_RECEIPT_IDS_MAX {
            return Err(ClientError::Invalid(format!(
                "a read receipt names 1 to {READ_RECEIPT_IDS_MAX} messages"
            )));
        }
        Ok(Content {
            body: Some(body::Body::Read(ReadReceipt {
                client_message_ids: client_message_ids.into_iter().map(Vec::from).collect(),
                read_at_ms,
                peer_account,
            })),
        })
    }

    /// The encoded plaintext.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes a plaintext, checking the bounds a well-behaved sender keeps.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let content = Content::decode(bytes)
            .map_err(|error| ClientError::Crypto(format!("undecodable content: {error}")))?;
        match &content.body {
            None => Err(ClientError::Crypto("content of an unknown kind".into())),
            Some(body::Body::Text(text)) if text.body.len() > TEXT_BYTES_MAX => {
                Err(ClientError::Crypto("text larger than its limit".into()))
            }
            Some(body::Body::Read(read))
                if read.client_message_ids.is_empty()
                    || read.client_message_ids.len() > READ_RECEIPT_IDS_MAX
                    || read.client_message_ids.iter().any(|id| id.len() != 16) =>
            {
                Err(ClientError::Crypto("malformed read receipt".into()))
            }
            Some(_) => Ok(content),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_read_round_trip() {
        let text = Content::text("héllo", 1_700_000_000_000, 7).expect("text");
        assert_eq!(Content::from_bytes(&text.to_bytes()).expect("decode"), text);
        let read = Content::read(vec![[1; 16], [2; 16]], 5, 7).expect("read");
        let decoded = Content::from_bytes(&read.to_bytes()).expect("decode");
        assert_eq!(decoded, read);
        match decoded.body {
            Some(body::Body::Read(receipt)) => {
                assert_eq!(receipt.client_message_ids[1], vec![2; 16])
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bounds_are_enforced_both_ways() {
        assert!(Content::text(&"x".repeat(TEXT_BYTES_MAX + 1), 0, 1).is_err());
        assert!(Content::read(Vec::new(), 0, 1).is_err());
        assert!(Content::read(vec![[0; 16]; READ_RECEIPT_IDS_MAX + 1], 0, 1).is_err());
        let bad = Content {
            body: Some(body::Body::Read(ReadReceipt {
                client_message_ids: vec![vec![1; 3]],
                read_at_ms: 0,
                peer_account: 1,
            })),
        };
        assert!(Content::from_bytes(&bad.to_bytes()).is_err());
        assert!(Content::from_bytes(&Content { body: None }.to_bytes()).is_err());
        assert!(Content::from_bytes(&[0xff, 0xff, 0xff]).is_err());
    }
}
