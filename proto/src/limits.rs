//! Every bound of the protocol in one place, with units in the names.

/// Wire format version carried in every frame header.
pub const PROTOCOL_VERSION: u8 = 1;

/// Largest frame body (after the header) a peer may send, in bytes.
pub const FRAME_BYTES_MAX: usize = 1024 * 1024;

/// Largest encoded envelope a device may send, in bytes: a full group's message (an empty entry
/// for each of up to [`GROUP_ENVELOPE_RECIPIENT_DEVICES_MAX`] devices, with ids of the largest
/// encoding, and its Megolm ciphertext) fits, as asserted below.
pub const ENVELOPE_BYTES_MAX: usize = 512 * 1024;

/// Largest ciphertext for one recipient device, in bytes.
pub const CIPHERTEXT_BYTES_MAX: usize = 64 * 1024;

/// Most recipient devices one envelope that is not a group envelope may address (1:1 plus own
/// devices).
pub const ENVELOPE_RECIPIENT_DEVICES_MAX: usize = 1024;

/// Longest account name, in bytes of UTF-8.
pub const ACCOUNT_NAME_BYTES_MAX: usize = 64;

/// Most one-time keys uploaded in one request.
pub const ONE_TIME_KEYS_PER_UPLOAD_MAX: usize = 100;

/// One-time keys a device uploads at registration.
pub const ONE_TIME_KEYS_AT_REGISTRATION: usize = 50;

/// When a device's unclaimed one-time keys fall below this count, it is told to upload more.
pub const ONE_TIME_KEYS_LOW_WATERMARK: u32 = 20;

/// Most queue entries returned by one fetch: a device coming online with 10,000 queued
/// messages drains them in ten round trips.
pub const QUEUE_FETCH_ENTRIES_MAX: u32 = 1_024;

/// Most bytes of queue entries (as encoded) returned by one fetch; a page always holds at least
/// one entry, however large. Without it a page of large messages would not fit in a frame, and
/// the device could never fetch its queue again.
pub const QUEUE_FETCH_BYTES_MAX: usize = 512 * 1024;

/// Devices' acknowledgements an edge gathers into one `AckMany` to their home region.
pub const ACK_MANY_DEVICES_MAX: usize = 256;
/// Encoded bytes of the requests gathered into one `AckMany`: half a frame, so the request
/// always fits one.
pub const ACK_MANY_BYTES_MAX: usize = FRAME_BYTES_MAX / 2;

/// Most bytes of queue entries (as encoded) a push carries along with its hint: the entries a
/// commit appended, up to this budget (a push never holds an entry past it; the device fetches
/// what did not fit). Small: the edge holds them for each connection until its device reads
/// the push, so a device that reads slowly costs the edge this much more at most.
pub const QUEUE_PUSH_BYTES_MAX: usize = 16 * 1024;

/// Bytes a queue entry adds to its device's ciphertext at most (ids, sequences, times, the
/// sender, tags and lengths), for the relations below.
pub const QUEUE_ENTRY_OVERHEAD_BYTES_MAX: usize = 1_024;

/// Most bytes of one encoded queued receipt (two 16-byte ids, two device addresses, a state
/// and a time, with their tags and lengths), for the relation below.
pub const QUEUED_RECEIPT_ENCODED_BYTES_MAX: usize = 128;

/// Most receipts in one queue entry of receipts (`wire::QueuedReceipts`).
pub const RECEIPTS_PER_QUEUE_ENTRY_MAX: usize = 256;

/// An entry of receipts is no larger than the largest message entry, so the fetch page's
/// relations below hold for it.
const _: () = assert!(
    RECEIPTS_PER_QUEUE_ENTRY_MAX * (QUEUED_RECEIPT_ENCODED_BYTES_MAX + 3) <= CIPHERTEXT_BYTES_MAX
);

/// Most messages in one queue entry of messages (`wire::QueuedMessages`: the envelopes of one
/// chat a region commits in one transaction, for one device).
pub const MESSAGES_PER_QUEUE_ENTRY_MAX: usize = 64;

/// Most bytes an entry of messages holds, counting each message as its device ciphertext, its
/// group ciphertext and [`QUEUE_ENTRY_OVERHEAD_BYTES_MAX`]: no more than the largest entry of
/// one message, so the fetch page's relations below hold for it. A message that would take an
/// entry past it starts the next one.
pub const QUEUED_MESSAGES_BYTES_MAX: usize = CIPHERTEXT_BYTES_MAX + QUEUE_ENTRY_OVERHEAD_BYTES_MAX;

/// Size of the authentication nonce the edge sends, in bytes.
pub const AUTH_NONCE_BYTES: usize = 32;

/// Bytes of TLS keying material exported for binding an authentication proof to a connection.
pub const AUTH_KEYING_MATERIAL_BYTES: usize = 32;

/// Label of the TLS keying-material export used for device authentication (RFC 5705).
pub const AUTH_KEYING_MATERIAL_LABEL: &[u8] = b"EXPORTER-relay-device-auth";

/// Time allowed at each hop of a request (device → edge → region → directory writer) for the
/// network and the answering hop's own work, in ms: each hop waits this much longer than the
/// hop it asks may take, so a silent hop further on reaches the device as a typed answer.
pub const HOP_MARGIN_MS: u64 = 2_000;

/// How long a region waits for another region (the directory writer, a receipt's destination)
/// to answer one request, connecting included, in ms. Past it the region answers
/// `DirectoryUnavailable` for directory work.
pub const REGION_PEER_REQUEST_TIMEOUT_MS: u64 = 3_000;

/// How long an edge waits for a region to answer one request, connecting included, in ms. Past
/// it the edge answers `Overloaded` (a connected region that is slow) or `Unavailable` (a region
/// it cannot reach).
pub const EDGE_REGION_REQUEST_TIMEOUT_MS: u64 = 5_000;

/// Longest an edge takes to answer a device's request, whatever its regions do (a send may ask
/// for an account's home region, then commit), in ms. A device waits longer than this
/// (`HOP_MARGIN_MS` more at least) before it gives up on a request.
pub const EDGE_ANSWER_TIMEOUT_MS: u64 = 8_000;

/// How long an edge or a region serves a directory record it cached (an account's home region
/// and epoch) before asking the directory again, in ms. A home move is followed within twice
/// this long (a region's copy, then an edge's), and sooner where the old home refuses the
/// account (`UnknownAccount`) and the edge forgets what it cached.
pub const DIRECTORY_CACHE_TTL_MS: u64 = 60_000;

/// Most bytes one device address takes in a repeated field of a message: its field key and
/// length (1 byte each), then the account (key and a varint of up to 10 bytes) and the device
/// number (key and a varint of up to 5 bytes).
pub const DEVICE_ADDR_ENCODED_BYTES_MAX: usize = 2 + (1 + 10) + (1 + 5);

/// Most devices one `Subscribe` frame adds or removes (an edge splits longer lists).
pub const SUBSCRIBE_DEVICES_PER_FRAME_MAX: usize = 8_192;

/// Most presence watches, and most typing indicators, one `Subscribe` frame carries (an edge
/// splits longer lists; a frame with either carries no devices).
pub const SUBSCRIBE_SIGNALS_PER_FRAME_MAX: usize = 1_024;

/// Encoded size of one watch or typing entry in a `Subscribe` frame, at most: a device address,
/// an account, a flag and a group, each with its tag and length.
pub const SUBSCRIBE_SIGNAL_ENCODED_BYTES_MAX: usize =
    2 + DEVICE_ADDR_ENCODED_BYTES_MAX + 11 + 2 + 11;

/// Most accounts a device watches the presence of at once (one per open chat, with room).
pub const PRESENCE_WATCHES_PER_DEVICE_MAX: usize = 64;

/// Most accounts in a presence privacy setting's contact list.
pub const PRESENCE_CONTACTS_MAX: usize = 5_000;

/// How long a receiver shows "typing…" after the last typing indicator, unless a "stopped"
/// comes first.
pub const TYPING_SHOWN_MS: u64 = 6_000;

/// How often a typing device repeats its indicator while its user keeps typing: well within
/// [`TYPING_SHOWN_MS`], so one lost indicator does not blink the receiver's "typing…".
pub const TYPING_REPEAT_MS: u64 = 2_500;

/// Most devices one edge's subscription stream keeps subscribed at a region; a region ignores
/// (and logs) adds beyond it, and an edge never holds more connected devices.
pub const SUBSCRIBED_DEVICES_PER_STREAM_MAX: usize = 1 << 20;

/// How long a pairing code stays usable after `relay link` showed it, in milliseconds.
pub const PAIRING_CODE_TTL_MS: u64 = 10 * 60 * 1000;

/// Random bytes in a pairing code (40 bits: eight base-32 characters). A code is single use,
/// expires after [`PAIRING_CODE_TTL_MS`], and its request still needs an existing device's
/// approval, so guessing one gains nothing without that approval.
pub const PAIRING_CODE_SECRET_BYTES: usize = 5;

/// Pairing codes open at once per account (the oldest is dropped to open another).
pub const PAIRINGS_PER_ACCOUNT_MAX: usize = 8;

/// Devices one account may have: its device list is read whole at every commit.
pub const DEVICES_PER_ACCOUNT_MAX: usize = 16;

/// Most members of one group (its creator included). Bounded like an envelope's recipient
/// devices, since a group message fans out to every member's devices.
pub const GROUP_MEMBERS_MAX: usize = 1_024;

/// Most recipient devices one group envelope may list: every device of every member.
pub const GROUP_ENVELOPE_RECIPIENT_DEVICES_MAX: usize = GROUP_MEMBERS_MAX * DEVICES_PER_ACCOUNT_MAX;

/// Largest group ciphertext (the Megolm message a group message carries once for all its
/// recipients), in bytes. A queued message carries it or its device's own ciphertext, never
/// both, so a queue entry stays within a device ciphertext's bound.
pub const GROUP_CIPHERTEXT_BYTES_MAX: usize = CIPHERTEXT_BYTES_MAX;

/// Longest Megolm session id a group envelope names, in bytes (vodozemac's are 43: unpadded
/// base64 of a 32-byte key).
pub const GROUP_SESSION_ID_BYTES_MAX: usize = 64;

/// Most bytes one device entry of a group message takes (a `DeviceCiphertext` with an empty
/// body): its field key and length (1 byte each), the device address
/// ([`DEVICE_ADDR_ENCODED_BYTES_MAX`]) and the message type (key and 1 byte).
pub const GROUP_MESSAGE_DEVICE_ENCODED_BYTES_MAX: usize = 2 + DEVICE_ADDR_ENCODED_BYTES_MAX + 2;

/// Most bytes an envelope takes apart from its device entries, recipient accounts, group
/// ciphertext and session id: chat, sender, client message id, counters, group, version and
/// kind with their keys (about 130), and room to spare.
pub const ENVELOPE_FIXED_BYTES_MAX: usize = 512;

/// Most bytes a group message to a full group takes: every device's empty entry, every member
/// listed (a packed varint of up to 10 bytes each, with key and length), the largest group
/// ciphertext and session id (with keys and lengths) and the fixed fields.
pub const GROUP_MESSAGE_ENVELOPE_BYTES_MAX: usize = GROUP_ENVELOPE_RECIPIENT_DEVICES_MAX
    * GROUP_MESSAGE_DEVICE_ENCODED_BYTES_MAX
    + (4 + GROUP_MEMBERS_MAX * 10)
    + (4 + GROUP_CIPHERTEXT_BYTES_MAX)
    + (2 + GROUP_SESSION_ID_BYTES_MAX)
    + ENVELOPE_FIXED_BYTES_MAX;

/// Longest group name, in bytes of UTF-8 (a name is shown to people, so it may use any script,
/// but no control characters).
pub const GROUP_NAME_BYTES_MAX: usize = 128;

/// Most groups one `List` group command answers (a device pages with `after_group`).
pub const GROUPS_PER_PAGE_MAX: u32 = 100;

/// Most bytes one group member takes in a `GroupInfo`: its field key and length (1 byte each),
/// the account (key and a varint of up to 10 bytes) and the admin flag (key and 1 byte).
pub const GROUP_MEMBER_ENCODED_BYTES_MAX: usize = 2 + (1 + 10) + (1 + 1);

/// Most bytes a `GroupInfo` takes apart from its members: id, chat id, name, version, home
/// region, epoch, member count, with their keys and lengths (and room to spare).
pub const GROUP_INFO_FIXED_BYTES_MAX: usize = GROUP_NAME_BYTES_MAX + 128;

/// Bytes of a client's request id for creating a group (drawn at random by the client; the
/// same id again is the same creation).
pub const GROUP_REQUEST_ID_BYTES: usize = 16;

/// Bytes of a blob id: 128 random bits drawn by the region, so an id cannot be guessed (knowing
/// it is the grant to download the ciphertext).
pub const BLOB_ID_BYTES: usize = 16;

/// Bytes of a blob's digest (SHA-256, or BLAKE3's default output).
pub const BLOB_DIGEST_BYTES: usize = 32;

/// Largest blob a region stores, in bytes (of ciphertext).
pub const BLOB_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Registration tokens one request issues at most.
pub const REGISTRATION_TOKENS_PER_REQUEST_MAX: u32 = 1_000;
/// Registrations one token allows at most.
pub const REGISTRATION_TOKEN_USES_MAX: u32 = 1_000_000;
/// Longest a registration token is valid, in ms (a year).
pub const REGISTRATION_TOKEN_TTL_MS_MAX: u64 = 365 * 24 * 3600 * 1000;
/// Longest registration token a device may present, in bytes.
pub const REGISTRATION_TOKEN_BYTES_MAX: usize = 128;

/// Longest WebPush endpoint URL a device may register, in bytes.
pub const WEBPUSH_ENDPOINT_BYTES_MAX: usize = 2_048;
/// Longest base64url key of a WebPush subscription (`p256dh`, `auth`), in characters.
pub const WEBPUSH_KEY_CHARS_MAX: usize = 128;
/// Longest APNs or FCM token a device may register, in bytes.
pub const PUSH_TOKEN_BYTES_MAX: usize = 1_024;

/// The unit a region commits an upload in, in bytes: an upload dropped mid-way resumes at a
/// multiple of it (or at the end). Each unit is one durable object and one store transaction.
pub const BLOB_COMMIT_UNIT_BYTES: u64 = 1024 * 1024;

/// How long an upload or download stream may stay silent before the edge or region gives it
/// up, in ms (a dropped connection is noticed sooner, by QUIC's idle timeout).
pub const BLOB_STREAM_IDLE_TIMEOUT_MS: u64 = 30_000;

const _: () =
    assert!(REGION_PEER_REQUEST_TIMEOUT_MS + HOP_MARGIN_MS <= EDGE_REGION_REQUEST_TIMEOUT_MS);
const _: () = assert!(EDGE_REGION_REQUEST_TIMEOUT_MS < EDGE_ANSWER_TIMEOUT_MS);
// A cached directory record outlives the request that looked it up.
const _: () = assert!(DIRECTORY_CACHE_TTL_MS > EDGE_ANSWER_TIMEOUT_MS);
// A `Subscribe` frame with both lists full fits one frame.
const _: () =
    assert!(2 * SUBSCRIBE_DEVICES_PER_FRAME_MAX * DEVICE_ADDR_ENCODED_BYTES_MAX <= FRAME_BYTES_MAX);
// A `Subscribe` frame with both signal lists full fits one frame.
const _: () = assert!(
    2 * SUBSCRIBE_SIGNALS_PER_FRAME_MAX * SUBSCRIBE_SIGNAL_ENCODED_BYTES_MAX <= FRAME_BYTES_MAX
);
// A privacy setting with every contact fits one frame (a varint is at most 10 bytes).
const _: () = assert!(PRESENCE_CONTACTS_MAX * 10 + 64 <= FRAME_BYTES_MAX);
// A typing device repeats itself before its receivers stop showing it.
const _: () = assert!(2 * TYPING_REPEAT_MS <= TYPING_SHOWN_MS);
// An envelope's recipient devices are announced by one frame.
const _: () = assert!(ENVELOPE_RECIPIENT_DEVICES_MAX <= SUBSCRIBE_DEVICES_PER_FRAME_MAX);
// A new device's recipients list (all its account's devices and a contact's) fits an envelope.
const _: () = assert!(2 * DEVICES_PER_ACCOUNT_MAX <= ENVELOPE_RECIPIENT_DEVICES_MAX);
// A group message's recipients are its members' devices, which one envelope addresses (one
// device per member at least).
const _: () = assert!(GROUP_MEMBERS_MAX <= ENVELOPE_RECIPIENT_DEVICES_MAX);
const _: () = assert!(ENVELOPE_RECIPIENT_DEVICES_MAX <= GROUP_ENVELOPE_RECIPIENT_DEVICES_MAX);
// A message to a full group (every member with the most devices, the largest ids) fits one
// envelope, and an envelope fits one frame with the request around it.
const _: () = assert!(GROUP_MESSAGE_ENVELOPE_BYTES_MAX <= ENVELOPE_BYTES_MAX);
const _: () = assert!(ENVELOPE_BYTES_MAX + 1_024 <= FRAME_BYTES_MAX);
// A push with its entries fits one frame, with the frame's own fields; it is a page's part.
const _: () = assert!(QUEUE_PUSH_BYTES_MAX + 1_024 <= FRAME_BYTES_MAX);
// An `AckMany`'s requests and framing fit one frame.
const _: () = assert!(ACK_MANY_BYTES_MAX + 64 * ACK_MANY_DEVICES_MAX <= FRAME_BYTES_MAX);
const _: () = assert!(QUEUE_PUSH_BYTES_MAX <= QUEUE_FETCH_BYTES_MAX);
// A queued group message (the group ciphertext, session id and group fields instead of a
// device ciphertext) stays within the queue entry bounds below.
const _: () = assert!(GROUP_CIPHERTEXT_BYTES_MAX <= CIPHERTEXT_BYTES_MAX);
const _: () = assert!(GROUP_SESSION_ID_BYTES_MAX + 64 <= QUEUE_ENTRY_OVERHEAD_BYTES_MAX / 4);
// A group with all its members, and a page of groups (listed without their members), each fit
// one frame, with the frame's own fields.
const _: () = assert!(
    GROUP_MEMBERS_MAX * GROUP_MEMBER_ENCODED_BYTES_MAX + GROUP_INFO_FIXED_BYTES_MAX
        <= FRAME_BYTES_MAX / 2
);
const _: () = assert!(
    GROUPS_PER_PAGE_MAX as usize * (GROUP_INFO_FIXED_BYTES_MAX + 16) <= FRAME_BYTES_MAX / 2
);
// A request naming every member (account ids of up to 11 bytes each) fits one frame.
const _: () = assert!(GROUP_MEMBERS_MAX * 11 + GROUP_NAME_BYTES_MAX <= FRAME_BYTES_MAX / 2);
// A code outlives the requests that use it.
const _: () = assert!(PAIRING_CODE_TTL_MS > 10 * EDGE_ANSWER_TIMEOUT_MS);
// Five bytes are eight base-32 characters exactly.
const _: () = assert!(PAIRING_CODE_SECRET_BYTES * 8 == 8 * 5);
// A page within its byte budget plus the one entry that crosses it, and the batch's own fields,
// fit in one frame.
const _: () = assert!(
    QUEUE_FETCH_BYTES_MAX + CIPHERTEXT_BYTES_MAX + 2 * QUEUE_ENTRY_OVERHEAD_BYTES_MAX
        <= FRAME_BYTES_MAX
);
// A blob is many commit units; a commit unit (one object put, one transaction) fits in the
// region's 10 MB transaction limit with room to spare, though only its offset is written there.
const _: () = assert!(BLOB_COMMIT_UNIT_BYTES * 4 <= BLOB_BYTES_MAX);
const _: () = assert!(BLOB_COMMIT_UNIT_BYTES <= 8 * 1024 * 1024);
// 128 bits at least make an id unguessable.
const _: () = assert!(BLOB_ID_BYTES * 8 >= 128);
// A silent blob stream is given up after a request would have been.
const _: () = assert!(BLOB_STREAM_IDLE_TIMEOUT_MS > EDGE_ANSWER_TIMEOUT_MS);
