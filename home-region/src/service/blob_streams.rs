//! Blob streams (uploads and downloads on streams of their own), blob commands, and the sweep
//! of expired blobs.

use std::time::Duration;

use relay_net as net;
use relay_proto::wire::{self, ClientResponse, RegionResponse, client_response, region_response};
use relay_proto::{ErrorCode, ProtoError};

use super::{RegionService, error_response};
use crate::limits::BLOB_SWEEP_INTERVAL_MS;
use crate::media_pass::Direction;

/// The frame that answers a blob stream: a [`RegionResponse`] to an edge, which carries the
/// stream for its device, or a [`ClientResponse`] to a device at the media endpoint.
pub(super) trait BlobAnswer: prost::Message + Sized {
    /// The answer carrying `answer`.
    fn of(answer: Result<wire::BlobStatus, ProtoError>) -> Self;
}

impl BlobAnswer for RegionResponse {
    fn of(answer: Result<wire::BlobStatus, ProtoError>) -> Self {
        match answer {
            Ok(status) => RegionResponse {
                body: Some(region_response::Body::Blob(status)),
            },
            Err(error) => error_response(error),
        }
    }
}

impl BlobAnswer for ClientResponse {
    fn of(answer: Result<wire::BlobStatus, ProtoError>) -> Self {
        ClientResponse {
            body: Some(match answer {
                Ok(status) => client_response::Body::Blob(status),
                Err(error) => client_response::Body::Error(error.into()),
            }),
        }
    }
}

impl RegionService {
    /// Serves an upload or download stream: the blob's raw bytes follow the request frame
    /// (upload, answered by one status frame) or the status frame (download). `A` is the
    /// answer's kind: to an edge, or to a device at the media endpoint.
    pub(super) async fn serve_blob_stream<A: BlobAnswer>(
        self,
        request: wire::ForBlob,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        use wire::blob_command::Command;
        let now = self.inner.clock.now_ms();
        let device = match request.device.parse() {
            Ok(device) => device,
            Err(error) => {
                let _ = net::respond(send, &A::of(Err(error))).await;
                return;
            }
        };
        let blobs = &self.inner.blobs;
        match request.command.command {
            Some(Command::Upload(at)) => {
                let answer = blobs.upload(device.account, &at, &mut recv, now).await;
                // Whatever was not read is not wanted: the answer says where to resume.
                let _ = recv.stop(0u32.into());
                let response = A::of(answer.map(|status| self.located(status)));
                if let Err(error) = net::respond(send, &response).await {
                    tracing::debug!(%error, "could not answer an upload");
                }
            }
            Some(Command::Download(at)) => {
                let _ = recv.stop(0u32.into());
                let (status, mut reader) = match blobs.open_download(&at.id, at.offset, now).await {
                    Ok(opened) => opened,
                    Err(error) => {
                        let _ = net::respond(send, &A::of(Err(error))).await;
                        return;
                    }
                };
                let head = A::of(Ok(self.located(status)));
                if net::write_frame(&mut send, &head).await.is_err() {
                    return;
                }
                loop {
                    match reader.next_piece().await {
                        Ok(Some(piece)) => {
                            if send.write_chunk(piece).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            let _ = send.finish();
                            return;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "a download broke off");
                            let _ = send.reset(1u32.into());
                            return;
                        }
                    }
                }
            }
            _ => {
                let _ =
                    net::respond(send, &A::of(Err(ProtoError::invalid("not a blob stream")))).await;
            }
        }
    }

    /// A blob request that is not a stream: begin, status, finish, locate. With a media
    /// endpoint, the status of an unfinished upload (to its owner) or of a finished blob
    /// (located) carries a pass to move its bytes there.
    pub(super) async fn blob_request(
        &self,
        request: wire::ForBlob,
    ) -> Result<wire::BlobStatus, ProtoError> {
        use wire::blob_command::Command;
        let now = self.inner.clock.now_ms();
        let device = request.device.parse()?;
        let blobs = &self.inner.blobs;
        let (status, direction) = match request.command.command {
            Some(Command::Begin(begin)) => (
                blobs.begin(device.account, &begin, now).await?,
                Some(Direction::Upload),
            ),
            Some(Command::Status(at)) => (
                blobs.status(device.account, &at.id, now).await?,
                Some(Direction::Upload),
            ),
            Some(Command::Finish(at)) => (
                blobs
                    .finish(device.account, &at.id, &at.digest, now)
                    .await?,
                None,
            ),
            Some(Command::Locate(at)) => {
                // The same checks as a download's (finished, its bytes here), without its
                // reader.
                let (status, _) = blobs.open_download(&at.id, 0, now).await?;
                (status, Some(Direction::Download))
            }
            Some(Command::Upload(_) | Command::Download(_)) => {
                return Err(ProtoError::invalid(
                    "uploads and downloads open a stream of their own",
                ));
            }
            None => {
                return Err(ProtoError::new(
                    ErrorCode::UnsupportedRequest,
                    "a kind of blob request this region does not know (it is older)",
                ));
            }
        };
        let mut status = self.located(status);
        // A pass for what is left to do: an unfinished upload's bytes, a finished blob's.
        let direction = direction.filter(|direction| match direction {
            Direction::Upload => !status.finished,
            Direction::Download => status.finished,
        });
        if let Some(direction) = direction {
            status.media = self.media_access(device, &status.id, direction, now);
        }
        Ok(status)
    }

    /// `status`, naming this region as the blob's.
    fn located(&self, mut status: wire::BlobStatus) -> wire::BlobStatus {
        status.region = self.inner.region.0;
        status
    }

    /// Removes expired blobs every [`BLOB_SWEEP_INTERVAL_MS`] (and at start, with the objects a
    /// crash left without a record).
    pub(super) async fn blob_sweeper(self) {
        loop {
            match self.inner.blobs.sweep(self.inner.clock.now_ms()).await {
                Ok(sweep) if sweep.expired_blobs + sweep.orphaned_blobs > 0 => {
                    tracing::info!(
                        expired = sweep.expired_blobs,
                        orphaned = sweep.orphaned_blobs,
                        "removed blobs"
                    );
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "blob sweep failed; will retry"),
            }
            tokio::time::sleep(Duration::from_millis(BLOB_SWEEP_INTERVAL_MS)).await;
        }
    }
}
