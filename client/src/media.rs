//! Files in messages: a message may carry an [`Attachment`], the reference to a blob the sender
//! sealed and uploaded ([`crate::transfer`]) plus what the sender says of the file (its name,
//! its media type, a small thumbnail), and the message's text is then the file's caption.
//!
//! The attachment travels inside the end-to-end encrypted content ([`crate::content::Text`],
//! [`crate::content::GroupText`]), so the region that stores the ciphertext never learns the
//! key, the name or the type; the recipient downloads the blob, checks its size and SHA-256,
//! and opens it chunk by chunk ([`crate::blob`]). On the devices it is stored, and kept in the
//! linked devices' shared history, as the bytes [`Attachment::to_bytes`] gives: a deletion for
//! everyone drops it with the text (and with it the key, the only way to read the blob).
//!
//! Thumbnails, dimensions and durations are the client's business: the thumbnail field holds
//! up to [`THUMBNAIL_BYTES_MAX`] bytes the sender chose, and tags from 10 up are left for such
//! fields. Forward compatible as every content is: a field this build does not know is skipped.

use std::path::Path;

use prost::Message;
use relay_proto::limits::{BLOB_BYTES_MAX, BLOB_DIGEST_BYTES, BLOB_ID_BYTES};

use crate::blob::{BLOB_KEY_BYTES, BlobFormat, BlobRef, sealed_size};
use crate::error::{ClientError, Result};
use crate::limits::{FILE_NAME_BYTES_MAX, MEDIA_TYPE_BYTES_MAX, THUMBNAIL_BYTES_MAX};

/// The media type of a file whose type the sender did not say.
pub const MEDIA_TYPE_DEFAULT: &str = "application/octet-stream";

/// A file attached to a message: where its sealed blob is, the key, what it must be, and what
/// the sender said of it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
#[prost(skip_debug)]
pub struct Attachment {
    /// The region holding the blob (not 0).
    #[prost(uint32, tag = "1")]
    pub region: u32,
    /// The blob's id there (`BLOB_ID_BYTES` bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub id: Vec<u8>,
    /// The key it is sealed under (`BLOB_KEY_BYTES` bytes).
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    /// The blob's size in bytes (of its ciphertext).
    #[prost(uint64, tag = "4")]
    pub size: u64,
    /// The digest of the ciphertext (`BLOB_DIGEST_BYTES` bytes), under `format`'s hash.
    #[prost(bytes = "vec", tag = "5")]
    pub digest: Vec<u8>,
    /// The file's size in bytes (of the plaintext).
    #[prost(uint64, tag = "6")]
    pub file_bytes: u64,
    /// The file's name as the sender had it (no directories; up to `FILE_NAME_BYTES_MAX` bytes).
    #[prost(string, tag = "7")]
    pub file_name: String,
    /// Its media type (`image/jpeg`; up to `MEDIA_TYPE_BYTES_MAX` bytes).
    #[prost(string, tag = "8")]
    pub media_type: String,
    /// A thumbnail of the sender's choosing (up to `THUMBNAIL_BYTES_MAX` bytes; may be empty).
    #[prost(bytes = "vec", tag = "9")]
    pub thumbnail: Vec<u8>,
    /// The blob's format ([`BlobFormat::number`]; 0, from a sender before the field: format 1).
    #[prost(uint32, tag = "10")]
    pub format: u32,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Attachment")
            .field("region", &self.region)
            .field("size", &self.size)
            .field("file_bytes", &self.file_bytes)
            .field("file_name", &self.file_name)
            .field("media_type", &self.media_type)
            .field("thumbnail_bytes", &self.thumbnail.len())
            .finish_non_exhaustive()
    }
}

/// What the sender says of a file it sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileDescription {
    /// The name to show (a path's last component is taken; empty: `file`).
    pub file_name: String,
    /// The media type (empty: guessed from the name's extension, else
    /// [`MEDIA_TYPE_DEFAULT`]).
    pub media_type: String,
    /// A thumbnail, if the sender made one.
    pub thumbnail: Vec<u8>,
}

impl FileDescription {
    /// A description of the file at `path`: its name, and its media type by extension.
    pub fn of_path(path: &Path) -> Self {
        FileDescription {
            file_name: path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ..FileDescription::default()
        }
    }
}

/// What a message's attachment shows: everything but the key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileInfo {
    /// The file's name as the sender gave it.
    pub name: String,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Whether the sender included a thumbnail.
    pub thumbnail: bool,
}

impl Attachment {
    /// The attachment for a blob uploaded as `reference`, holding a file of `file_bytes` bytes
    /// described by `description`; checks every bound.
    pub fn new(
        reference: &BlobRef,
        file_bytes: u64,
        description: &FileDescription,
    ) -> Result<Attachment> {
        let file_name = clean_file_name(&description.file_name);
        let media_type = if description.media_type.is_empty() {
            guess_media_type(&file_name).to_owned()
        } else {
            description.media_type.clone()
        };
        let attachment = Attachment {
            region: reference.region,
            id: reference.id.to_vec(),
            key: reference.key.to_vec(),
            size: reference.size,
            digest: reference.digest.to_vec(),
            file_bytes,
            file_name,
            media_type,
            thumbnail: description.thumbnail.clone(),
            format: reference.format.number(),
        };
        attachment.check().map_err(ClientError::Invalid)?;
        Ok(attachment)
    }

    /// Checks the bounds a well-behaved sender keeps; says what is wrong.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.region == 0 {
            return Err("an attachment in region 0".into());
        }
        if self.id.len() != BLOB_ID_BYTES
            || self.key.len() != BLOB_KEY_BYTES
            || self.digest.len() != BLOB_DIGEST_BYTES
        {
            return Err("an attachment whose id, key or digest has the wrong length".into());
        }
        if BlobFormat::from_number(self.format).is_none() {
            return Err(format!(
                "an attachment in blob format {}, which this version does not know: update it \
                 to open the file",
                self.format
            ));
        }
        // The plaintext is never larger than its ciphertext: bounded before it is sealed.
        if self.size == 0
            || self.size > BLOB_BYTES_MAX
            || self.file_bytes > self.size
            || sealed_size(self.file_bytes) != self.size
        {
            return Err(format!(
                "an attachment of {} bytes sealed in {} (up to {BLOB_BYTES_MAX})",
                self.file_bytes, self.size
            ));
        }
        if self.file_name.len() > FILE_NAME_BYTES_MAX {
            return Err(format!(
                "a file name of {} bytes (up to {FILE_NAME_BYTES_MAX})",
                self.file_name.len()
            ));
        }
        if self.media_type.len() > MEDIA_TYPE_BYTES_MAX {
            return Err(format!(
                "a media type of {} bytes (up to {MEDIA_TYPE_BYTES_MAX})",
                self.media_type.len()
            ));
        }
        if self.thumbnail.len() > THUMBNAIL_BYTES_MAX {
            return Err(format!(
                "a thumbnail of {} bytes (up to {THUMBNAIL_BYTES_MAX})",
                self.thumbnail.len()
            ));
        }
        Ok(())
    }

    /// The blob reference it carries (checked by [`Attachment::check`] first).
    pub fn reference(&self) -> Option<BlobRef> {
        self.check().ok()?;
        BlobRef::from_parts(
            self.format,
            self.region,
            &self.id,
            &self.key,
            self.size,
            &self.digest,
        )
    }

    /// What it shows, without the key.
    pub fn info(&self) -> FileInfo {
        FileInfo {
            name: self.file_name.clone(),
            media_type: self.media_type.clone(),
            bytes: self.file_bytes,
            thumbnail: !self.thumbnail.is_empty(),
        }
    }

    /// The encoded form a device stores and its history documents hold.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes [`Attachment::to_bytes`], checking every bound.
    pub fn from_bytes(bytes: &[u8]) -> Result<Attachment> {
        let attachment = Attachment::decode(bytes)
            .map_err(|error| ClientError::Crypto(format!("undecodable attachment: {error}")))?;
        attachment
            .check()
            .map_err(|reason| ClientError::Crypto(format!("malformed attachment: {reason}")))?;
        Ok(attachment)
    }
}

/// Encoded bytes of the largest attachment a device sends.
pub const ATTACHMENT_ENCODED_BYTES_MAX: usize = 9 * 2
    + 4
    + BLOB_ID_BYTES
    + BLOB_KEY_BYTES
    + 8
    + BLOB_DIGEST_BYTES
    + 8
    + 2
    + FILE_NAME_BYTES_MAX
    + 1
    + MEDIA_TYPE_BYTES_MAX
    + 3
    + THUMBNAIL_BYTES_MAX
    + 2
    + 32;

/// A name safe to show and to write in a directory: the last path component, without control
/// characters, at most [`FILE_NAME_BYTES_MAX`] bytes (cut at a character boundary); `file`
/// when nothing is left.
pub fn clean_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut clean = String::new();
    for character in last.chars().filter(|c| !c.is_control()) {
        if clean.len() + character.len_utf8() > FILE_NAME_BYTES_MAX {
            break;
        }
        clean.push(character);
    }
    let clean = clean.trim().to_owned();
    if clean.is_empty() || clean == "." || clean == ".." {
        "file".to_owned()
    } else {
        clean
    }
}

/// A media type for a file name, by its extension (the common ones a messenger sends).
pub fn guess_media_type(file_name: &str) -> &'static str {
    let extension = file_name
        .rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" | "opus" => "audio/ogg",
        "m4a" => "audio/mp4",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "zip" => "application/zip",
        _ => MEDIA_TYPE_DEFAULT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::seal;

    fn uploaded(plaintext: &[u8]) -> BlobRef {
        let sealed = seal(plaintext);
        BlobRef {
            format: sealed.format,
            region: 2,
            id: [7; BLOB_ID_BYTES],
            key: sealed.key,
            size: sealed.ciphertext.len() as u64,
            digest: sealed.digest,
        }
    }

    #[test]
    fn an_attachment_round_trips_and_gives_back_its_reference() {
        let reference = uploaded(b"a photo");
        let attachment = Attachment::new(
            &reference,
            7,
            &FileDescription {
                file_name: "holiday/Photo.JPG".into(),
                media_type: String::new(),
                thumbnail: vec![1, 2, 3],
            },
        )
        .expect("attachment");
        assert_eq!(attachment.file_name, "Photo.JPG");
        assert_eq!(attachment.media_type, "image/jpeg");
        let decoded = Attachment::from_bytes(&attachment.to_bytes()).expect("decodes");
        assert_eq!(decoded, attachment);
        assert!(decoded.reference() == Some(reference));
        assert!(decoded.info().thumbnail);
        assert!(!format!("{decoded:?}").contains("key:"), "{decoded:?}");
    }

    #[test]
    fn malformed_attachments_are_refused_with_the_reason() {
        let reference = uploaded(b"bytes");
        let good = Attachment::new(&reference, 5, &FileDescription::default()).expect("good");
        assert_eq!(good.file_name, "file");
        assert_eq!(good.media_type, MEDIA_TYPE_DEFAULT);
        let mut wrong_size = good.clone();
        wrong_size.file_bytes = 6;
        assert!(Attachment::from_bytes(&wrong_size.to_bytes()).is_err());
        let mut newer = good.clone();
        newer.format = 3;
        assert!(Attachment::from_bytes(&newer.to_bytes()).is_err());
        let mut older = good.clone();
        older.format = 0;
        assert_eq!(
            Attachment::from_bytes(&older.to_bytes())
                .expect("a sender before formats")
                .reference()
                .map(|reference| reference.format),
            Some(BlobFormat::V1)
        );
        let mut short_key = good.clone();
        short_key.key.pop();
        assert!(Attachment::from_bytes(&short_key.to_bytes()).is_err());
        let mut big_thumbnail = good.clone();
        big_thumbnail.thumbnail = vec![0; THUMBNAIL_BYTES_MAX + 1];
        assert!(Attachment::from_bytes(&big_thumbnail.to_bytes()).is_err());
        let mut huge = good.clone();
        huge.file_bytes = u64::MAX;
        assert!(
            Attachment::from_bytes(&huge.to_bytes()).is_err(),
            "no overflow either"
        );
        assert!(Attachment::from_bytes(b"\xff\xff\xff").is_err());
        let described = FileDescription {
            file_name: "x".repeat(FILE_NAME_BYTES_MAX + 10),
            ..FileDescription::default()
        };
        let long = Attachment::new(&reference, 5, &described).expect("the name is cut");
        assert_eq!(long.file_name.len(), FILE_NAME_BYTES_MAX);
    }

    #[test]
    fn file_names_lose_directories_and_control_characters() {
        assert_eq!(clean_file_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_file_name("C:\\Users\\a\\b.txt"), "b.txt");
        assert_eq!(clean_file_name("a\u{0}b\nc"), "abc");
        assert_eq!(clean_file_name(".."), "file");
        assert_eq!(clean_file_name(""), "file");
        assert_eq!(clean_file_name(&"é".repeat(200)).len(), 254);
    }

    #[test]
    fn the_largest_attachment_fits_its_bound_and_the_history_documents() {
        let reference = uploaded(&[0; 10]);
        let largest = Attachment {
            region: u32::MAX,
            file_name: "x".repeat(FILE_NAME_BYTES_MAX),
            media_type: "y".repeat(MEDIA_TYPE_BYTES_MAX),
            thumbnail: vec![0xff; THUMBNAIL_BYTES_MAX],
            ..Attachment::new(&reference, 10, &FileDescription::default()).expect("attachment")
        };
        let mut largest = largest;
        largest.size = BLOB_BYTES_MAX;
        largest.file_bytes = u64::MAX;
        assert!(largest.to_bytes().len() <= ATTACHMENT_ENCODED_BYTES_MAX);
    }
}
