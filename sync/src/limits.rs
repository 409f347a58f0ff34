//! Every bound of the sync crate in one place, with units in the names, and their relations
//! asserted at compile time.

use relay_proto::limits::CIPHERTEXT_BYTES_MAX;

/// Most chat sequences one epoch covers: epoch `k` holds chat sequences
/// `k * EPOCH_MESSAGES_MAX + 1 ..= (k + 1) * EPOCH_MESSAGES_MAX`, so an epoch holds at most this
/// many messages and every device puts a message in the same epoch without asking anyone.
///
/// The size sets what one remote operation costs: automerge 0.12 applies a change by walking
/// the document's root map in key order up to the key changed (`BatchApply`'s map walker), and
/// every field of every message is a key of the root map, so a change costs time linear in its
/// epoch's operations. On the shared 2-core machine one remote edit took 19.7 ms (median of 30)
/// on an epoch of 10,000 messages, 1.9 ms on 2,000 and 0.8 ms on 1,000; the issue asks for
/// under [`REMOTE_OPERATION_APPLY_MS_TARGET`]. A snapshot holds 100 documents per 100,000
/// messages at this size, and the sync protocol visits each once per round.
pub const EPOCH_MESSAGES_MAX: u64 = 1_000;

/// The largest epoch the issue allows ("epochs of at most 10,000 messages").
pub const EPOCH_MESSAGES_CEILING: u64 = 10_000;

/// The target for applying one remote operation to a long chat, in ms.
pub const REMOTE_OPERATION_APPLY_MS_TARGET: u64 = 5;

/// Longest message text (an append or an edit), in bytes of UTF-8. Longer texts are refused
/// with [`crate::SyncError::TextTooLong`]; they travel as media.
pub const MESSAGE_TEXT_BYTES_MAX: usize = 32 * 1024;

/// Largest attachment of a message (a blob reference, a file name, a media type and a small
/// thumbnail, as the client encodes them), in bytes. Larger ones are refused with
/// [`crate::SyncError::AttachmentTooLarge`]; a document value over it is ignored.
pub const ATTACHMENT_BYTES_MAX: usize = 64 * 1024;

/// Longest reaction (one emoji, possibly a sequence of code points), in bytes of UTF-8.
pub const REACTION_BYTES_MAX: usize = 64;

/// Largest sync message [`crate::Replica::generate_message`] hands out, in bytes: one such
/// message travels as the plaintext of one end-to-end encrypted ciphertext to one device.
pub const SYNC_MESSAGE_BYTES_MAX: usize = 48 * 1024;

/// Room left in one ciphertext around a sync message, in bytes: the client's content framing
/// and Olm's own overhead (header, padding, MAC) fit in it.
pub const SYNC_MESSAGE_ENVELOPE_MARGIN_BYTES: usize = 16 * 1024;

/// Largest automerge sync message for one epoch that a peer may send in fragments, in bytes
/// once reassembled. A whole epoch of messages at their longest text fits.
pub const SYNC_PART_BYTES_MAX: usize = 512 * 1024 * 1024;

/// Most probes per entry a peer's Bloom filter may ask for (automerge's own use 7): automerge
/// allocates that many for every hash it checks against the filter.
pub const SYNC_BLOOM_PROBES_MAX: u64 = 64;

/// Higher generations of one epoch received at once, each from its first part until its
/// genesis arrives. A peer that names a generation it cannot deliver holds one place; the
/// lowest place goes to a higher generation when all are taken.
pub const INCOMING_GENERATIONS_MAX: usize = 4;

/// Bytes of a sync message's header (magic, session, number, part count).
pub(crate) const SYNC_MESSAGE_HEADER_BYTES: usize = 4 + 8 + 8 + 2;

/// Bytes of one part's header (chat, epoch, generation, genesis hash, fragment index and count,
/// payload length).
pub(crate) const SYNC_PART_HEADER_BYTES: usize = 16 + 8 + 8 + 32 + 4 + 4 + 4;

/// Smallest payload worth starting a fragment for, in bytes: below it a message goes out with
/// what it holds and the next message carries the part.
pub(crate) const SYNC_FRAGMENT_BYTES_MIN: usize = 1024;

const _: () =
    assert!(SYNC_MESSAGE_BYTES_MAX + SYNC_MESSAGE_ENVELOPE_MARGIN_BYTES <= CIPHERTEXT_BYTES_MAX);
const _: () = assert!(
    SYNC_MESSAGE_HEADER_BYTES + SYNC_PART_HEADER_BYTES + SYNC_FRAGMENT_BYTES_MIN
        <= SYNC_MESSAGE_BYTES_MAX
);
const _: () = assert!(EPOCH_MESSAGES_MAX >= 1 && EPOCH_MESSAGES_MAX <= EPOCH_MESSAGES_CEILING);
const _: () =
    assert!(SYNC_PART_BYTES_MAX as u64 >= EPOCH_MESSAGES_MAX * MESSAGE_TEXT_BYTES_MAX as u64);
const _: () = assert!(MESSAGE_TEXT_BYTES_MAX < SYNC_MESSAGE_BYTES_MAX);
const _: () = assert!(REACTION_BYTES_MAX < MESSAGE_TEXT_BYTES_MAX);
// Fragment counts travel as u32.
const _: () = assert!((SYNC_PART_BYTES_MAX / SYNC_FRAGMENT_BYTES_MIN) < u32::MAX as usize);
