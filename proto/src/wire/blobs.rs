//! Blobs: the commands of the blob store (encrypted media and history snapshots) and the
//! status of an upload.
//!
//! A blob is ciphertext the region stores for 30 days under an id it draws (128 random bits:
//! knowing the id is the grant to download). `Begin`, `Status`, `Finish` and `Locate` are
//! ordinary requests; `Upload` and `Download` open a stream of their own: after the request
//! frame, an upload stream carries the blob's raw bytes from the given offset to the end of the
//! stream, answered by one frame (the status, with the offset the region committed); a
//! download stream is answered by one frame (the status) followed by the raw bytes from the
//! offset to the end.
//!
//! Those streams go through the device's edge, or, when the blob's status names a media
//! endpoint ([`MediaAccess`]), straight to the region: a stream there opens with a
//! [`MediaRequest`] carrying the region's pass, and goes on as through an edge.

use super::DeviceAddr;

/// Begins an upload, or resumes one (`resume` set).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BlobBegin {
    /// The blob's size in bytes.
    #[prost(uint64, tag = "1")]
    pub size_bytes: u64,
    /// The digest of the blob's bytes under `digest_kind` (32 bytes), or empty: `Finish`
    /// declares it (a device that seals while it sends knows it only at the end). The region
    /// checks it at `Finish`.
    #[prost(bytes = "vec", tag = "2")]
    pub digest: Vec<u8>,
    /// The id of an upload this account began earlier, to resume it (empty: a new upload).
    #[prost(bytes = "vec", tag = "3")]
    pub resume: Vec<u8>,
    /// The hash the digest is taken with, for the whole upload (the region hashes the bytes
    /// with it as they are committed). Absent from older devices: SHA-256.
    #[prost(enumeration = "BlobDigest", tag = "4")]
    pub digest_kind: i32,
}

/// The hash of a blob's digest: what `Finish` checks the uploaded bytes against, and what the
/// downloader checks before it opens them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum BlobDigest {
    /// SHA-256 (blob format 1).
    Sha256 = 0,
    /// BLAKE3 with its default 32-byte output (blob format 2): about four times SHA-256's
    /// speed on one core with AVX2, so neither the device nor the region spends a fifth of an
    /// upload hashing.
    Blake3 = 1,
}

/// Names a blob, at an offset for the streams.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BlobAt {
    /// The blob's id (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    /// Where the stream starts, in bytes (`Upload`: the committed offset; ignored by `Status`
    /// and `Finish`).
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    /// (`Download`) the region holding the blob, as its status named it; 0: the device's home.
    #[prost(uint32, tag = "3")]
    pub region: u32,
    /// (`Finish`) the blob's digest, under the kind `Begin` named, when `Begin` left it out
    /// (32 bytes); empty otherwise, or the same as `Begin`'s.
    #[prost(bytes = "vec", tag = "4")]
    pub digest: Vec<u8>,
}

/// A request about a blob.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BlobCommand {
    /// The request.
    #[prost(oneof = "blob_command::Command", tags = "1, 2, 3, 4, 5, 6")]
    pub command: Option<blob_command::Command>,
}

/// The variants of [`BlobCommand`].
pub mod blob_command {
    /// A request about a blob.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Command {
        /// Begin or resume an upload (answered with its status).
        #[prost(message, tag = "1")]
        Begin(super::BlobBegin),
        /// Where an upload stands (after a dropped connection).
        #[prost(message, tag = "2")]
        Status(super::BlobAt),
        /// Finish an upload: the region checks its size and digest.
        #[prost(message, tag = "3")]
        Finish(super::BlobAt),
        /// (Own stream) the blob's bytes from `offset` follow the frame.
        #[prost(message, tag = "4")]
        Upload(super::BlobAt),
        /// (Own stream) send the blob's bytes from `offset` after the status.
        #[prost(message, tag = "5")]
        Download(super::BlobAt),
        /// A finished blob's status with a pass to download it from the media endpoint of
        /// the region holding it (`region`, as for `Download`); any device may ask, since
        /// knowing the id is the grant to download.
        #[prost(message, tag = "6")]
        Locate(super::BlobAt),
    }
}

impl BlobCommand {
    /// Whether the command opens a stream of its own (raw bytes after the frames).
    pub fn is_stream(&self) -> bool {
        matches!(
            self.command,
            Some(blob_command::Command::Upload(_) | blob_command::Command::Download(_))
        )
    }
}

/// Where a blob stands.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BlobStatus {
    /// The blob's id (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    /// Its size in bytes, as begun.
    #[prost(uint64, tag = "2")]
    pub size_bytes: u64,
    /// The bytes the region holds durably, from the start: an upload resumes here.
    #[prost(uint64, tag = "3")]
    pub committed_bytes: u64,
    /// Whether the upload is finished (size and hash checked): the blob can be downloaded.
    #[prost(bool, tag = "4")]
    pub finished: bool,
    /// When the region deletes it, in milliseconds since the Unix epoch.
    #[prost(uint64, tag = "5")]
    pub expires_at_ms: u64,
    /// The region holding it (downloads from other regions' devices go there).
    #[prost(uint32, tag = "6")]
    pub region: u32,
    /// Where the device may move this blob's bytes directly, without its edge: the region's
    /// media endpoint and a pass for this blob (an upload's, answering `Begin` and `Status`; a
    /// download's, answering `Locate`). Absent when the region has no media endpoint: the
    /// bytes then go through the edge.
    #[prost(message, optional, tag = "7")]
    pub media: Option<MediaAccess>,
    /// The digest the region checks this upload's bytes with: the `digest_kind` its `Begin`
    /// named. A region from before BLAKE3 leaves it out (SHA-256), which tells a device that
    /// began a BLAKE3 upload to seal it in blob format 1 instead.
    #[prost(enumeration = "BlobDigest", tag = "8")]
    pub digest_kind: i32,
}

/// A region's media endpoint and a pass for one blob there.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MediaAccess {
    /// The endpoint's UDP address (`host:port`); a device connects with ALPN `relay-media/1`
    /// and checks the server name `media.relay.test`.
    #[prost(string, tag = "1")]
    pub address: String,
    /// The pass to present in the stream's [`MediaRequest`]: opaque to the device, checked by
    /// the region that issued it (it names the device, the blob and the direction).
    #[prost(bytes = "vec", tag = "2")]
    pub pass: Vec<u8>,
    /// When the pass stops being accepted, in milliseconds since the Unix epoch; a transfer
    /// under way when it expires goes on.
    #[prost(uint64, tag = "3")]
    pub expires_at_ms: u64,
}

/// The first frame of a stream to a region's media endpoint: the pass, then the `Upload` or
/// `Download` command it grants. The stream then goes on as it would through an edge (an
/// upload's bytes follow and a `ClientResponse` answers; a download's `ClientResponse` comes
/// first, then the bytes).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MediaRequest {
    /// The pass from the blob's status.
    #[prost(bytes = "vec", tag = "1")]
    pub pass: Vec<u8>,
    /// `Upload` or `Download` of the blob the pass names.
    #[prost(message, required, tag = "2")]
    pub command: BlobCommand,
}

/// A blob request naming the device it acts for (the edge authenticated it).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ForBlob {
    /// The device.
    #[prost(message, required, tag = "1")]
    pub device: DeviceAddr,
    /// The request.
    #[prost(message, required, tag = "2")]
    pub command: BlobCommand,
}
