//! Every bound of the protocol in one place, with units in the names.

/// Wire format version carried in every frame header.
pub const PROTOCOL_VERSION: u8 = 1;

/// Largest frame body (after the header) a peer may send, in bytes.
pub const FRAME_BYTES_MAX: usize = 1024 * 1024;

/// Largest encoded envelope a device may send, in bytes.
pub const ENVELOPE_BYTES_MAX: usize = 256 * 1024;

/// Largest ciphertext for one recipient device, in bytes.
pub const CIPHERTEXT_BYTES_MAX: usize = 64 * 1024;

/// Most recipient devices one envelope may address (1:1 plus own devices, groups later).
pub const ENVELOPE_RECIPIENT_DEVICES_MAX: usize = 1024;

/// Longest account name, in bytes of UTF-8.
pub const ACCOUNT_NAME_BYTES_MAX: usize = 64;

/// Most one-time keys uploaded in one request.
pub const ONE_TIME_KEYS_PER_UPLOAD_MAX: usize = 100;

/// One-time keys a device uploads at registration.
pub const ONE_TIME_KEYS_AT_REGISTRATION: usize = 50;

/// When a device's unclaimed one-time keys fall below this count, it is told to upload more.
pub const ONE_TIME_KEYS_LOW_WATERMARK: u32 = 20;

/// Most queue entries returned by one fetch.
pub const QUEUE_FETCH_ENTRIES_MAX: u32 = 256;

/// Size of the authentication nonce the edge sends, in bytes.
pub const AUTH_NONCE_BYTES: usize = 32;

/// Bytes of TLS keying material exported for binding an authentication proof to a connection.
pub const AUTH_KEYING_MATERIAL_BYTES: usize = 32;

/// Label of the TLS keying-material export used for device authentication (RFC 5705).
pub const AUTH_KEYING_MATERIAL_LABEL: &[u8] = b"EXPORTER-relay-device-auth";
