//! Blob transfers of an open [`Device`]: [`Device::upload_blob`] seals a blob ([`crate::blob`])
//! and uploads its ciphertext to the device's home region on a stream of its own, so messages
//! keep flowing beside it; [`Device::download_blob`] fetches one by its [`BlobRef`] and opens it.
//!
//! Neither waits for the crypto before or after the bytes move: an upload seals each chunk as
//! the stream asks for it (a file is read as it goes, never held whole; a resumed attempt seals
//! again, to the same bytes, what the region did not commit) and declares the ciphertext's
//! digest at `Finish`, once the last chunk is sealed; a download hashes and opens each chunk as
//! it arrives ([`blob::Opener`]) and hands out the plaintext once the size and hash check.
//!
//! The bytes go straight to the region: the blob's status (asked through the edge, `Locate`
//! for a download) names the region's media endpoint and a pass, and the stream goes on a
//! connection of its own to that endpoint, so the edge relays none of it. Without a media
//! endpoint, or when it does not answer within the connect timeout (a network that lets only
//! the edge through), the same stream goes through the edge.
//!
//! Both resume after a dropped connection instead of starting over: an upload asks the region
//! where it stands (the committed offset, a multiple of the region's commit unit) and sends the
//! rest from there, under a new pass (a refused one, expired or from a region process that
//! restarted since, is one more dropped connection); a download asks for the bytes after those
//! it already holds. Each resumption is reported to the progress callback
//! ([`BlobProgress::resumed_from`]). A transfer gives up after [`BLOB_TRANSFER_ATTEMPTS_MAX`]
//! attempts, or at once on a refusal that a retry cannot change (a quota, a size limit, an
//! unknown blob).

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use relay_proto::limits::{BLOB_DIGEST_BYTES, BLOB_ID_BYTES};
use relay_proto::wire::{BlobAt, BlobBegin, BlobStatus, MediaAccess, blob_command};
use relay_proto::{ClientMessageId, ErrorCode};

use crate::blob::{self, BlobFormat, BlobRef, Sealer};
use crate::connection::{BlobRoute, EdgeConnection, UploadSource};
use crate::device::{Command, Device};
use crate::error::{ClientError, Result};
use crate::limits::{
    BLOB_ANSWER_TIMEOUT_MS, BLOB_FILE_READ_BYTES, BLOB_FILE_WRITE_BYTES,
    BLOB_MEMORY_RESERVE_BYTES_MAX, BLOB_RESUME_DELAY_MS, BLOB_TRANSFER_ATTEMPTS_MAX,
};
use crate::media::{Attachment, FileDescription};

/// What a blob transfer tells its progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobProgress {
    /// Bytes of the blob (its ciphertext) transferred or held by the region, from its start.
    pub done_bytes: u64,
    /// The blob's size in bytes (of its ciphertext).
    pub total_bytes: u64,
    /// Set on the report that starts a resumed attempt: the offset it resumes from (for an
    /// upload, the region's committed offset).
    pub resumed_from: Option<u64>,
}

/// What a download into a file does when the file exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    /// Replace it, once the download checks (atomically: the file is either the old one or
    /// the new one, never a mix).
    Replace,
    /// Refuse to replace it ([`ClientError::Invalid`]), checked before the download starts and
    /// again at the rename, so a file that appeared meanwhile is kept too.
    Keep,
}

/// What to upload: bytes in memory, or a file's.
#[derive(Debug, Clone, Copy)]
pub enum BlobSource<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// The bytes of this file.
    Path(&'a Path),
}

impl Device {
    /// Seals `source` under a fresh key, uploads the ciphertext to this device's home region
    /// (resuming after dropped connections) and returns the reference to share, in an end-to-end
    /// encrypted message, with whoever may read it. The region never sees the key.
    pub async fn upload_blob(
        &self,
        source: BlobSource<'_>,
        progress: &mut dyn FnMut(BlobProgress),
    ) -> Result<BlobRef> {
        let mut plaintext = Plaintext::open(source).await?;
        let mut sealer = Sealer::new(plaintext.len());
        let total_bytes = sealer.sealed_bytes();
        let mut begun: Option<BlobStatus> = None;
        let mut last_error = None;
        for attempt in 0..BLOB_TRANSFER_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(BLOB_RESUME_DELAY_MS)).await;
            }
            let connection = match self.held_connection(transfer_hold()).await {
                Ok(connection) => connection,
                Err(error) if error.is_retryable() => {
                    last_error = Some(error);
                    continue;
                }
                Err(error) => return Err(error),
            };
            let mut sealing = Sealing {
                sealer: &mut sealer,
                plaintext: &mut plaintext,
                next_chunk: 0,
                skip: 0,
            };
            let attempted =
                upload_attempt(&connection, &mut sealing, &mut begun, attempt > 0, progress).await;
            match attempted {
                Ok((finished, digest)) => {
                    return reference(&finished, &sealer, digest, total_bytes);
                }
                Err(error) if error.is_retryable() => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(gave_up("upload", last_error))
    }

    /// Downloads the blob `reference` names (resuming after dropped connections), checks its
    /// size and hash, and opens it.
    pub async fn download_blob(
        &self,
        reference: &BlobRef,
        progress: &mut dyn FnMut(BlobProgress),
    ) -> Result<Vec<u8>> {
        download(Connections::Device(self), reference, progress).await
    }

    /// Downloads the blob `reference` names into the file `out`, as
    /// [`Device::download_blob`] does, without holding it: the plaintext is written as it is
    /// opened to a temporary file beside `out`, which becomes `out` only once the size and hash
    /// check (a file already there is replaced or kept, as `existing` says); after a failure
    /// nothing is left behind and `out` is untouched. Returns the file's size in bytes.
    pub async fn download_blob_to(
        &self,
        reference: &BlobRef,
        out: &Path,
        existing: IfExists,
        progress: &mut dyn FnMut(BlobProgress),
    ) -> Result<u64> {
        download_to_file(
            Connections::Device(self),
            reference,
            out,
            existing,
            progress,
        )
        .await
    }

    /// Sends a file to `peer` (a name): seals and uploads it ([`Device::upload_blob`], resuming
    /// after dropped connections), then sends a message carrying its [`Attachment`] with
    /// `caption` as its text, as [`Device::send`] sends a text. The caption and the peer's name
    /// are checked before anything is uploaded. Returns the message's id.
    pub async fn send_file(
        &self,
        peer: &str,
        source: BlobSource<'_>,
        description: &FileDescription,
        caption: &str,
        progress: &mut dyn FnMut(BlobProgress),
    ) -> Result<ClientMessageId> {
        crate::content::check_text(caption)?;
        crate::core::check_peer_name(self.identity(), peer)?;
        let attachment = self.upload_file(source, description, progress).await?;
        self.call(|reply| {
            Command::Send(
                peer.into(),
                caption.into(),
                Some(Box::new(attachment)),
                true,
                reply,
            )
        })
        .await
    }

    /// Sends a file to group `group` as [`Device::send_file`] sends one to a peer: uploaded
    /// once, its [`Attachment`] (with the key) encrypted once with this device's Megolm session
    /// for the group ([`Device::send_group`]).
    pub async fn send_group_file(
        &self,
        group: u64,
        source: BlobSource<'_>,
        description: &FileDescription,
        caption: &str,
        progress: &mut dyn FnMut(BlobProgress),
    ) -> Result<ClientMessageId> {
        crate::content::check_text(caption)?;
        if group == 0 {
            return Err(ClientError::Invalid("there is no group 0".into()));
        }
        let attachment = self.upload_file(source, description, progress).await?;
        self.call(|reply| {
            Command::SendGroup(group, caption.into(), Some(Box::new(attachment)), reply)
        })
        .await
    }

    /// The attachment of message `message` (its id or a prefix of at least
    /// [`crate::limits::MESSAGE_ID_PREFIX_CHARS_MIN`] hex digits, of any chat or group).
    pub async fn attachment(&self, message: &str) -> Result<Attachment> {
        self.call(|reply| Command::Attachment(message.into(), reply))
            .await
    }

    /// Downloads the file attached to message `message` (see [`Device::attachment`]),
    /// resuming after dropped connections, checks its size and hash, and opens it; returns the
    /// attachment (its name, type, size) and the file's bytes.
    pub async fn download_file(
        &self,
        message: &str,
        progress: &mut dyn FnMut(BlobProgress),
    ) -> Result<(Attachment, Vec<u8>)> {
        let (attachment, reference) = self.attached_blob(message).await?;
        let bytes = self.download_blob(&reference, progress).await?;
        Ok((attachment, bytes))
    }

    /// Downloads the file attached to message `message` into the file `out`, as
    /// [`Device::download_file`] does, written as it arrives and renamed into place once it
    /// checks ([`Device::download_blob_to`]; a file already there is replaced or kept, as
    /// `existing` says); returns the attachment.
    pub async fn download_file_to(
        &self,
        message: &str,
        out: &Path,
        existing: IfExists,
        progress: &mut dyn FnMut(BlobProgress),
    ) -> Result<Attachment> {
        let (attachment, reference) = self.attached_blob(message).await?;
        self.download_blob_to(&reference, out, existing, progress)
            .await?;
        Ok(attachment)
    }

    /// The attachment of message `message` and the blob holding its file, checked before a
    /// byte moves: a blob that checks on download holds exactly `plaintext_size(size)` bytes,
    /// so one whose size cannot hold the file the message describes is refused here, and the
    /// downloaded file is then the described size.
    async fn attached_blob(&self, message: &str) -> Result<(Attachment, BlobRef)> {
        let attachment = self.attachment(message).await?;
        let reference = attachment.reference().ok_or_else(|| {
            ClientError::Corrupt(format!("the attachment of message {message} is malformed"))
        })?;
        if blob::plaintext_size(reference.size) != Some(attachment.file_bytes) {
            return Err(ClientError::Crypto(format!(
                "the file's blob has {} bytes, which cannot hold the {} bytes its message says",
                reference.size, attachment.file_bytes
            )));
        }
        Ok((attachment, reference))
    }

    /// Uploads a file and describes it.
    async fn upload_file(
        &self,
        source: BlobSource<'_>,
        description: &FileDescription,
        progress: &mut dyn FnMut(BlobProgress),
    ) -> Result<Attachment> {
        let reference = self.upload_blob(source, progress).await?;
        let file_bytes = blob::plaintext_size(reference.size).ok_or_else(|| {
            ClientError::Corrupt(format!("an upload of {} bytes", reference.size))
        })?;
        Attachment::new(&reference, file_bytes, description)
    }
}

/// Where a transfer gets its connection: from a device handle (which reconnects), or one
/// connection it is given (the device's own task, which cannot call itself: the history
/// bootstrap's download); a transfer over a closed given connection gives up.
pub(crate) enum Connections<'a> {
    /// Whatever connection the device holds.
    Device(&'a Device),
    /// This connection only.
    Fixed(Arc<EdgeConnection>),
}

impl Connections<'_> {
    async fn connection(&self) -> Result<Arc<EdgeConnection>> {
        match self {
            Connections::Device(device) => device.held_connection(transfer_hold()).await,
            Connections::Fixed(connection) if connection.is_open() => Ok(connection.clone()),
            // Not retryable: the same connection will not open again.
            Connections::Fixed(_) => Err(ClientError::TimedOut(
                "the connection the download used closed".into(),
            )),
        }
    }
}

/// [`Device::download_blob`] over `connections`.
pub(crate) async fn download<P: FnMut(BlobProgress) + ?Sized>(
    connections: Connections<'_>,
    reference: &BlobRef,
    progress: &mut P,
) -> Result<Vec<u8>> {
    let reserve = blob::plaintext_size(reference.size)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .unwrap_or(0)
        .min(BLOB_MEMORY_RESERVE_BYTES_MAX);
    let mut plaintext = Vec::with_capacity(reserve);
    download_into(
        connections,
        reference,
        &mut |opened| {
            plaintext.extend_from_slice(opened);
            Ok(())
        },
        progress,
    )
    .await?;
    Ok(plaintext)
}

/// [`Device::download_blob_to`] over `connections`.
async fn download_to_file<P: FnMut(BlobProgress) + ?Sized>(
    connections: Connections<'_>,
    reference: &BlobRef,
    out: &Path,
    existing: IfExists,
    progress: &mut P,
) -> Result<u64> {
    if existing == IfExists::Keep && out.exists() {
        return Err(already_there(out));
    }
    let mut part = PartFile::beside(out)?;
    download_into(
        connections,
        reference,
        &mut |opened| part.write(opened),
        progress,
    )
    .await?;
    // Dropped without being kept on the way out of an error above: the temporary file goes.
    part.keep_as(out, existing)
}

/// The refusal of a download into a file that exists and is to be kept.
fn already_there(out: &Path) -> ClientError {
    ClientError::Invalid(format!("{} exists and is kept", out.display()))
}

/// A download's file while it arrives: a temporary file in the destination's folder (so the
/// rename that makes it the destination stays on one filesystem and is atomic), removed if it
/// is dropped before [`PartFile::keep_as`].
struct PartFile {
    file: std::io::BufWriter<tempfile::NamedTempFile>,
    written: u64,
}

impl PartFile {
    fn beside(out: &Path) -> Result<PartFile> {
        let folder = match out.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let name = out
            .file_name()
            .ok_or_else(|| ClientError::Invalid(format!("{} names no file", out.display())))?;
        let file = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".part")
            .tempfile_in(folder)?;
        Ok(PartFile {
            file: std::io::BufWriter::with_capacity(BLOB_FILE_WRITE_BYTES, file),
            written: 0,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Makes the file durable and renames it to `out` (over a file there only with
    /// [`IfExists::Replace`]); returns its size.
    fn keep_as(self, out: &Path, existing: IfExists) -> Result<u64> {
        let file = self
            .file
            .into_inner()
            .map_err(|error| ClientError::Io(error.into_error()))?;
        file.as_file().sync_all()?;
        let kept = match existing {
            IfExists::Replace => file.persist(out),
            IfExists::Keep => file.persist_noclobber(out),
        };
        // A refused rename hands the temporary file back; dropping it removes it.
        kept.map_err(|error| match error.error.kind() {
            std::io::ErrorKind::AlreadyExists => already_there(out),
            _ => ClientError::Io(error.error),
        })?;
        Ok(self.written)
    }
}

/// Downloads the blob `reference` names over `connections` (resuming after dropped
/// connections), opening it as it arrives, and hands each piece of plaintext opened to
/// `write`: once every byte arrived and the size and hash check, the download succeeded; an
/// error from `write` ends it.
async fn download_into<P: FnMut(BlobProgress) + ?Sized>(
    connections: Connections<'_>,
    reference: &BlobRef,
    write: &mut (dyn FnMut(&[u8]) -> Result<()> + Send),
    progress: &mut P,
) -> Result<()> {
    let total_bytes = reference.size;
    // Hashed and opened as it arrives: nothing is left to do after the last byte but
    // compare the hash.
    let mut opener = blob::Opener::new(reference);
    let mut last_error = None;
    for attempt in 0..BLOB_TRANSFER_ATTEMPTS_MAX {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(BLOB_RESUME_DELAY_MS)).await;
        }
        let connection = match connections.connection().await {
            Ok(connection) => connection,
            Err(error) if error.is_retryable() => {
                last_error = Some(error);
                continue;
            }
            Err(error) => return Err(error),
        };
        let offset = opener.received();
        if attempt > 0 {
            progress(BlobProgress {
                done_bytes: offset,
                total_bytes,
                resumed_from: Some(offset),
            });
        }
        let mut report = |reached| {
            progress(BlobProgress {
                done_bytes: reached,
                total_bytes,
                resumed_from: None,
            });
        };
        // Straight from the region's media endpoint when it gives a pass (one more request
        // through the edge); through the edge otherwise.
        let media = match locate(&connection, reference).await {
            Ok(Some(access)) => MediaRoute::connect(&connection, &access).await,
            Ok(None) => None,
            Err(error) if error.is_retryable() => {
                last_error = Some(error);
                continue;
            }
            Err(error) => return Err(error),
        };
        let route = media.as_ref().map_or(BlobRoute::Edge, MediaRoute::route);
        let downloaded = connection
            .download_stream(
                route,
                reference.region,
                &reference.id,
                offset,
                &mut |bytes| {
                    opener.feed(bytes)?;
                    let opened = opener.take_opened();
                    if opened.is_empty() {
                        Ok(())
                    } else {
                        write(&opened)
                    }
                },
                &mut report,
            )
            .await;
        let downloaded = MediaRoute::over(media, downloaded);
        match downloaded {
            Ok(status) if status.size_bytes != total_bytes => {
                return Err(blob::BlobCryptoError::WrongSize {
                    expected: total_bytes,
                    found: status.size_bytes,
                }
                .into());
            }
            Ok(_) if opener.received() == total_bytes => return write(&opener.finish()?),
            // The stream ended early: resume after what arrived.
            Ok(_) => {
                last_error = Some(ClientError::Network(format!(
                    "the download stopped at byte {} of {total_bytes}",
                    opener.received()
                )));
            }
            Err(error) if error.is_retryable() => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(gave_up("download", last_error))
}

/// One attempt of an upload: begins it (first time) or asks where it stands, sends the rest
/// from the committed offset, sealed as it goes, and finishes it with the ciphertext's digest
/// (which the upload began without: it is known once the last chunk is sealed).
async fn upload_attempt(
    connection: &Arc<EdgeConnection>,
    sealing: &mut Sealing<'_, '_>,
    begun: &mut Option<BlobStatus>,
    resuming: bool,
    progress: &mut dyn FnMut(BlobProgress),
) -> Result<(BlobStatus, [u8; BLOB_DIGEST_BYTES])> {
    let total_bytes = sealing.sealer.sealed_bytes();
    let current = match begun.as_ref() {
        None => {
            let begin = BlobBegin {
                size_bytes: total_bytes,
                digest: Vec::new(),
                resume: Vec::new(),
                digest_kind: sealing.sealer.format().digest().into(),
            };
            let status = connection.blob(blob_command::Command::Begin(begin)).await?;
            // A region from before BLAKE3 checks SHA-256 (it does not echo the kind): the
            // blob is sealed in format 1 for it. Nothing was sealed for this upload yet.
            let format = sealing.sealer.format();
            match BlobFormat::for_region(status.digest_kind) {
                Some(taken) if taken == format => {}
                Some(taken) if sealing.sealer.hashed_chunks() == 0 => {
                    *sealing.sealer = sealing.sealer.renewed_in(taken);
                }
                _ => {
                    return Err(ClientError::UnexpectedResponse(format!(
                        "the region checks the upload with digest kind {}",
                        status.digest_kind
                    )));
                }
            }
            *begun = Some(status.clone());
            status
        }
        Some(status) => {
            connection
                .blob(blob_command::Command::Status(at(&status.id, Vec::new())))
                .await?
        }
    };
    // A resumption of the bytes: an attempt that finds them all committed (the stream went
    // through, and only the finish met a dropped connection) resumes nothing.
    if resuming && current.committed_bytes < total_bytes {
        progress(BlobProgress {
            done_bytes: current.committed_bytes,
            total_bytes,
            resumed_from: Some(current.committed_bytes),
        });
    }
    let committed = current.committed_bytes;
    if committed > total_bytes {
        return Err(ClientError::UnexpectedResponse(format!(
            "the region says {committed} bytes of {total_bytes} are committed"
        )));
    }
    if !current.finished && committed < total_bytes {
        sealing.start_at(committed);
        let mut report = |reached| {
            progress(BlobProgress {
                done_bytes: reached,
                total_bytes,
                resumed_from: None,
            });
        };
        let media = match &current.media {
            Some(access) => MediaRoute::connect(connection, access).await,
            None => None,
        };
        let route = media.as_ref().map_or(BlobRoute::Edge, MediaRoute::route);
        let sent = connection
            .upload_stream(route, &current.id, committed, sealing, &mut report)
            .await;
        let after = MediaRoute::over(media, sent)?;
        if after.committed_bytes < total_bytes {
            return Err(ClientError::Network(format!(
                "the upload stream ended with {} of {total_bytes} bytes committed",
                after.committed_bytes
            )));
        }
    }
    // Every chunk was sealed once before the region could commit it; this only reads and
    // seals what an earlier attempt (or none) left unhashed.
    let digest = sealing.digest().await?;
    if current.finished {
        return Ok((current, digest));
    }
    let finished = connection
        .blob(blob_command::Command::Finish(at(
            &current.id,
            digest.to_vec(),
        )))
        .await?;
    Ok((finished, digest))
}

/// One transfer's way to a region's media endpoint: a connection of its own and the pass.
struct MediaRoute {
    to_region: quinn::Connection,
    pass: Vec<u8>,
}

impl MediaRoute {
    /// A connection to the media endpoint `access` names; `None` (the transfer goes through
    /// the edge) when the endpoint cannot be reached from here.
    async fn connect(connection: &EdgeConnection, access: &MediaAccess) -> Option<MediaRoute> {
        // Out of reach (a network that lets only the edge through, a region behind a
        // firewall): the edge still carries the bytes, only slower.
        let to_region = connection.connect_media(access).await.ok()?;
        Some(MediaRoute {
            to_region,
            pass: access.pass.clone(),
        })
    }

    fn route(&self) -> BlobRoute<'_> {
        BlobRoute::Media {
            connection: &self.to_region,
            pass: &self.pass,
        }
    }

    /// The outcome of a transfer that went along `media` (the edge when `None`), once it is
    /// over: the media connection closed, and a refused pass (expired, or issued by a region
    /// process that has restarted since) made one more dropped connection, which the
    /// transfer's retry answers by asking for the blob's status, with a new pass, again.
    fn over<T>(media: Option<MediaRoute>, outcome: Result<T>) -> Result<T> {
        let Some(media) = media else {
            return outcome;
        };
        media.to_region.close(0u32.into(), b"transfer over");
        outcome.map_err(|error| match error {
            ClientError::Remote(refused) if refused.code == ErrorCode::Unauthenticated => {
                ClientError::Network(format!(
                    "the region's media endpoint refused the pass: {}",
                    refused.message
                ))
            }
            other => other,
        })
    }
}

/// Where to download `reference` without the edge: the media endpoint of the region holding
/// it and a pass, or `None` (through the edge) when that region has no media endpoint or
/// refuses the request. A refusal is left for the download through the edge to give: an
/// older region does not know the request, and an older edge sends it to the device's home
/// instead of the blob's region, which does not know the blob.
async fn locate(connection: &EdgeConnection, reference: &BlobRef) -> Result<Option<MediaAccess>> {
    let located = connection
        .blob(blob_command::Command::Locate(BlobAt {
            id: reference.id.to_vec(),
            region: reference.region,
            ..Default::default()
        }))
        .await;
    match located {
        Ok(status) => Ok(status.media),
        Err(ClientError::Remote(error)) if !error.code.is_retryable() => Ok(None),
        Err(error) => Err(error),
    }
}

/// The plaintext of an upload: bytes in memory, or a file read as it is sealed (never held
/// whole).
enum Plaintext<'a> {
    Bytes(&'a [u8]),
    File {
        reader: tokio::io::BufReader<tokio::fs::File>,
        /// Where the reader stands in the file.
        position: u64,
        /// The file's length when the upload began.
        length: u64,
        /// For errors.
        path: &'a Path,
    },
}

impl<'a> Plaintext<'a> {
    async fn open(source: BlobSource<'a>) -> Result<Plaintext<'a>> {
        match source {
            BlobSource::Bytes(bytes) => Ok(Plaintext::Bytes(bytes)),
            BlobSource::Path(path) => {
                let invalid = |error: std::io::Error| {
                    ClientError::Invalid(format!("{}: {error}", path.display()))
                };
                let file = tokio::fs::File::open(path).await.map_err(invalid)?;
                let length = file.metadata().await.map_err(invalid)?.len();
                Ok(Plaintext::File {
                    reader: tokio::io::BufReader::with_capacity(BLOB_FILE_READ_BYTES, file),
                    position: 0,
                    length,
                    path,
                })
            }
        }
    }

    fn len(&self) -> u64 {
        match self {
            Plaintext::Bytes(bytes) => bytes.len() as u64,
            Plaintext::File { length, .. } => *length,
        }
    }

    /// The plaintext bytes of `range` (within the length).
    async fn read(&mut self, range: std::ops::Range<u64>) -> Result<Cow<'a, [u8]>> {
        match self {
            Plaintext::Bytes(bytes) => {
                let bytes: &'a [u8] = bytes;
                usize::try_from(range.start)
                    .ok()
                    .zip(usize::try_from(range.end).ok())
                    .and_then(|(start, end)| bytes.get(start..end))
                    .map(Cow::Borrowed)
                    .ok_or_else(|| ClientError::Invalid("a blob read past its end".into()))
            }
            Plaintext::File {
                reader,
                position,
                path,
                ..
            } => {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let failed = |error: std::io::Error| {
                    ClientError::Invalid(format!(
                        "{}: {error} (did the file change during the upload?)",
                        path.display()
                    ))
                };
                if *position != range.start {
                    reader
                        .seek(std::io::SeekFrom::Start(range.start))
                        .await
                        .map_err(failed)?;
                }
                let mut chunk = vec![0; usize::try_from(range.end - range.start).unwrap_or(0)];
                reader.read_exact(&mut chunk).await.map_err(failed)?;
                *position = range.end;
                Ok(Cow::Owned(chunk))
            }
        }
    }
}

/// An upload's bytes, sealed chunk by chunk as the stream asks for them, from a committed
/// offset on.
struct Sealing<'s, 'a> {
    sealer: &'s mut Sealer,
    plaintext: &'s mut Plaintext<'a>,
    /// The chunk the stream gets next.
    next_chunk: u64,
    /// Bytes of that chunk the region already holds.
    skip: usize,
}

impl Sealing<'_, '_> {
    /// The stream starts at ciphertext byte `offset`.
    fn start_at(&mut self, offset: u64) {
        let (chunk, within) = self.sealer.chunk_at(offset);
        self.next_chunk = chunk;
        self.skip = within;
    }

    /// Seals chunk `index` from the plaintext.
    async fn seal(&mut self, index: u64) -> Result<Vec<u8>> {
        let plaintext = self
            .plaintext
            .read(self.sealer.chunk_plaintext(index))
            .await?;
        Ok(self.sealer.seal_chunk(index, &plaintext)?)
    }

    /// The ciphertext's digest, sealing (without sending) the chunks not hashed yet.
    async fn digest(&mut self) -> Result<[u8; BLOB_DIGEST_BYTES]> {
        while self.sealer.hashed_chunks() < self.sealer.chunks() {
            self.seal(self.sealer.hashed_chunks()).await?;
        }
        self.sealer
            .digest()
            .ok_or_else(|| ClientError::Invalid("a blob's hash is missing chunks".into()))
    }
}

impl UploadSource for Sealing<'_, '_> {
    async fn next_piece(&mut self) -> Result<Option<bytes::Bytes>> {
        if self.next_chunk >= self.sealer.chunks() {
            return Ok(None);
        }
        // The hash takes chunks in order: one the stream starts past is sealed for it first.
        while self.sealer.hashed_chunks() < self.next_chunk {
            self.seal(self.sealer.hashed_chunks()).await?;
        }
        let index = self.next_chunk;
        let sealed = bytes::Bytes::from(self.seal(index).await?);
        self.next_chunk += 1;
        let skip = std::mem::take(&mut self.skip).min(sealed.len());
        Ok(Some(sealed.slice(skip..)))
    }
}

fn at(id: &[u8], digest: Vec<u8>) -> BlobAt {
    BlobAt {
        id: id.to_vec(),
        digest,
        ..Default::default()
    }
}

fn reference(
    finished: &BlobStatus,
    sealer: &Sealer,
    digest: [u8; BLOB_DIGEST_BYTES],
    total_bytes: u64,
) -> Result<BlobRef> {
    let id = <[u8; BLOB_ID_BYTES]>::try_from(finished.id.as_slice()).map_err(|_| {
        ClientError::UnexpectedResponse(format!("a blob id of {} bytes", finished.id.len()))
    })?;
    if !finished.finished || finished.size_bytes != total_bytes || finished.region == 0 {
        return Err(ClientError::UnexpectedResponse(
            "the region did not confirm the finished upload".into(),
        ));
    }
    Ok(BlobRef {
        format: sealer.format(),
        region: finished.region,
        id,
        key: sealer.key(),
        size: total_bytes,
        digest,
    })
}

/// How long one attempt asks the device to keep its connection.
fn transfer_hold() -> Duration {
    Duration::from_millis(4 * BLOB_ANSWER_TIMEOUT_MS)
}

fn gave_up(what: &str, last_error: Option<ClientError>) -> ClientError {
    let reason = last_error.map_or_else(|| "no attempt ran".to_owned(), |error| error.to_string());
    ClientError::Network(format!(
        "the blob {what} gave up after {BLOB_TRANSFER_ATTEMPTS_MAX} attempts: {reason}"
    ))
}
