//! Forensics for the promise that a deletion really deletes: renderings of saved snapshots and
//! of sync traffic in which every text the bytes hold is findable by a plain byte search.
//!
//! Automerge compresses the columns of a saved document (DEFLATE), so a deleted text could hide
//! in compressed bytes from a naive scan. These functions re-encode every document they find
//! without compression, history included (automerge saves every operation ever made, so a
//! text overwritten or deleted without compaction is still in there), and keep the raw bytes
//! too. Tests scan them for deleted texts; so can a journey scanning a device's files.

use automerge::sync::Message;
use automerge::{AutoCommit, LoadOptions, OnPartialLoad};

use crate::error::SyncError;
use crate::replica::{Reassembly, reassemble};
use crate::wire::{self, SyncMessage};

/// A snapshot's raw bytes followed by each of its documents saved without compression.
pub fn snapshot_plaintext(snapshot: &[u8]) -> Result<Vec<u8>, SyncError> {
    let mut out = snapshot.to_vec();
    for (key, document) in wire::decode_snapshot(snapshot)? {
        let mut doc = AutoCommit::load(document)
            .map_err(|source| SyncError::document(key.chat, key.epoch, source))?;
        out.extend_from_slice(&doc.save_nocompress());
    }
    Ok(out)
}

/// The sync messages one device sent another, in order, rendered searchable: raw bytes, and
/// every document or change the reassembled automerge messages carry, without compression.
#[derive(Debug, Default)]
pub struct SyncTranscript {
    reassembly: Option<Reassembly>,
    plaintext: Vec<u8>,
    documents: usize,
}

impl SyncTranscript {
    /// An empty transcript.
    pub fn new() -> Self {
        SyncTranscript::default()
    }

    /// Adds the next message of the stream.
    pub fn record(&mut self, message: &[u8]) -> Result<(), SyncError> {
        self.plaintext.extend_from_slice(message);
        for part in SyncMessage::decode(message)?.parts {
            let Some((key, whole)) = reassemble(&mut self.reassembly, part)? else {
                continue;
            };
            let message = Message::decode(&whole).map_err(|error| {
                SyncError::malformed(
                    "sync message",
                    format!("chat {} epoch {}: {error}", key.chat, key.epoch),
                )
            })?;
            for chunk in message.changes.iter() {
                self.plaintext.extend_from_slice(chunk);
                let options = LoadOptions::new().on_partial_load(OnPartialLoad::Ignore);
                if let Ok(mut doc) = AutoCommit::load_with_options(chunk, options) {
                    self.plaintext.extend_from_slice(&doc.save_nocompress());
                    self.documents += 1;
                }
            }
        }
        Ok(())
    }

    /// Everything recorded, searchable.
    pub fn plaintext(&self) -> &[u8] {
        &self.plaintext
    }

    /// How many documents or change sets were decompressed.
    pub fn documents(&self) -> usize {
        self.documents
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}
