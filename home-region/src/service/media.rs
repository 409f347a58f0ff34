//! The region's media endpoint: devices move a blob's bytes here directly, without their edge,
//! under a pass the region gave them through it ([`crate::media_pass`]).
//!
//! A blob's bytes through an edge cross two QUIC connections, and the edge's CPU goes into
//! relaying them; the edge also holds device connections with small windows (kept small for
//! the ten thousand idle devices it holds). At the media endpoint a device opens a connection
//! of its own for one transfer, with quinn's generous windows, and the stream goes on exactly
//! as it would through an edge. A device that cannot reach the endpoint sends through its
//! edge, as before.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_net::{self as net, ConnectionSlots};
use relay_proto::wire::{self, ClientResponse, MediaAccess, MediaRequest, RegionRequest};
use relay_proto::{DeviceAddress, ErrorCode, ProtoError};

use super::RegionService;
use super::blob_streams::BlobAnswer;
use crate::limits::{
    MEDIA_CONNECTIONS_MAX, MEDIA_IDLE_CLOSE_MS, MEDIA_REQUEST_TIMEOUT_MS,
    MEDIA_THROTTLED_RETRY_AFTER_MS, MEDIA_TRANSFERS_PER_DEVICE_MAX,
};
use crate::media_pass::{Direction, MediaPasses};

/// The application error code a media connection is closed with when it has been idle (no
/// transfer under way) for [`MEDIA_IDLE_CLOSE_MS`].
const MEDIA_IDLE_CLOSE_CODE: u32 = 1;

/// A region's media endpoint: its QUIC server for devices, the address devices are told, and
/// the passes it accepts.
pub(super) struct MediaEndpoint {
    pub(super) endpoint: quinn::Endpoint,
    /// What a status tells devices (`host:port`).
    advertised: String,
    passes: MediaPasses,
    connections: ConnectionSlots,
    /// Transfers under way, by device.
    transfers: Arc<Mutex<HashMap<DeviceAddress, usize>>>,
}

/// One transfer of a device counted as under way, until dropped.
struct Transfer {
    device: DeviceAddress,
    transfers: Arc<Mutex<HashMap<DeviceAddress, usize>>>,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let mut transfers = self
            .transfers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = transfers.get_mut(&self.device) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                transfers.remove(&self.device);
            }
        }
    }
}

impl MediaEndpoint {
    /// Counts a transfer of `device` as under way, or refuses it (`Throttled`) when the device
    /// has [`MEDIA_TRANSFERS_PER_DEVICE_MAX`] under way already.
    fn start_transfer(&self, device: DeviceAddress) -> Result<Transfer, ProtoError> {
        let mut transfers = self
            .transfers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = transfers.entry(device).or_insert(0);
        if *count >= MEDIA_TRANSFERS_PER_DEVICE_MAX {
            return Err(ProtoError::new(
                ErrorCode::Throttled,
                format!(
                    "{MEDIA_TRANSFERS_PER_DEVICE_MAX} transfers of this device are under way \
                     already"
                ),
            )
            .with_retry_after_ms(MEDIA_THROTTLED_RETRY_AFTER_MS));
        }
        *count += 1;
        Ok(Transfer {
            device,
            transfers: self.transfers.clone(),
        })
    }

    /// Wraps `endpoint` (bound already), told to devices as `advertised` (its own address when
    /// `None`).
    pub(super) fn new(
        endpoint: quinn::Endpoint,
        advertised: Option<String>,
    ) -> std::io::Result<Self> {
        let address = endpoint.local_addr()?;
        Ok(MediaEndpoint {
            endpoint,
            advertised: advertised.unwrap_or_else(|| address.to_string()),
            passes: MediaPasses::new(),
            connections: ConnectionSlots::new(MEDIA_CONNECTIONS_MAX),
            transfers: Arc::default(),
        })
    }

    /// The address the endpoint is bound to.
    pub(super) fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }
}

impl RegionService {
    /// The address the region's media endpoint is bound to, if it has one.
    pub fn media_address(&self) -> Option<SocketAddr> {
        self.inner
            .media
            .as_ref()
            .and_then(MediaEndpoint::local_addr)
    }

    /// Where and under which pass `device` may move blob `id`'s bytes the way `direction`
    /// says; `None` without a media endpoint.
    pub(super) fn media_access(
        &self,
        device: DeviceAddress,
        id: &[u8],
        direction: Direction,
        now_ms: u64,
    ) -> Option<MediaAccess> {
        let media = self.inner.media.as_ref()?;
        let (pass, expires_at_ms) = media.passes.issue(device, id, direction, now_ms)?;
        Some(MediaAccess {
            address: media.advertised.clone(),
            pass,
            expires_at_ms,
        })
    }

    /// Accepts devices at the media endpoint until it closes (never, without one).
    pub(super) async fn accept_media(self) {
        let Some(media) = self.inner.media.as_ref() else {
            return std::future::pending().await;
        };
        while let Some(incoming) = media.endpoint.accept().await {
            let service = self.clone();
            tokio::spawn(async move {
                let Some(media) = service.inner.media.as_ref() else {
                    return;
                };
                if let Some((connection, _slot)) =
                    net::accept_bounded(&media.connections, incoming).await
                {
                    service.serve_media_connection(connection).await;
                }
            });
        }
        std::future::pending().await
    }

    /// Serves a device's streams until it leaves, or until it has had no stream under way for
    /// [`MEDIA_IDLE_CLOSE_MS`]: a connection holds one of the endpoint's slots, and one that
    /// moves nothing (a peer with no pass, keeping it open with keep-alives) gives it back.
    async fn serve_media_connection(self, connection: quinn::Connection) {
        let mut streams = tokio::task::JoinSet::new();
        loop {
            let idle = streams.is_empty();
            let accepted = tokio::select! {
                accepted = connection.accept_bi() => accepted,
                Some(_) = streams.join_next(), if !idle => continue,
                () = tokio::time::sleep(Duration::from_millis(MEDIA_IDLE_CLOSE_MS)), if idle => {
                    connection.close(MEDIA_IDLE_CLOSE_CODE.into(), b"no transfer under way");
                    return;
                }
            };
            let (send, recv) = match accepted {
                Ok(streams) => streams,
                Err(error) => {
                    tracing::debug!(%error, "media connection ended");
                    return;
                }
            };
            let service = self.clone();
            streams.spawn(async move { service.serve_media_stream(send, recv).await });
        }
    }

    /// One transfer: the pass and the command, checked, then the stream as an edge's.
    async fn serve_media_stream(self, send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let first = tokio::time::timeout(
            Duration::from_millis(MEDIA_REQUEST_TIMEOUT_MS),
            net::read_frame::<MediaRequest>(&mut recv),
        )
        .await;
        let request = match first {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                let _ = net::respond(send, &ClientResponse::of(Err(error.to_proto()))).await;
                return;
            }
            Err(_) => {
                let refused = ProtoError::invalid("no media request arrived in time");
                let _ = net::respond(send, &ClientResponse::of(Err(refused))).await;
                return;
            }
        };
        let Some(media) = self.inner.media.as_ref() else {
            return;
        };
        let started = self
            .granted(media, &request)
            .and_then(|(for_blob, device)| Ok((for_blob, media.start_transfer(device)?)));
        let (for_blob, _transfer) = match started {
            Ok(started) => started,
            Err(error) => {
                let _ = recv.stop(0u32.into());
                let _ = net::respond(send, &ClientResponse::of(Err(error))).await;
                return;
            }
        };
        // Held while the region hands itself over or the account moves, as through an edge.
        let gate = RegionRequest {
            body: Some(wire::region_request::Body::Blob(for_blob.clone())),
        };
        match self.pass_gate(&gate).await {
            Ok(in_flight) => drop(in_flight),
            Err(error) => {
                let _ = net::respond(send, &ClientResponse::of(Err(error))).await;
                return;
            }
        }
        self.serve_blob_stream::<ClientResponse>(for_blob, send, recv)
            .await;
    }

    /// The blob request `request`'s pass grants, and the device it names: its device's, if
    /// the pass is good and its command the stream it names.
    fn granted(
        &self,
        media: &MediaEndpoint,
        request: &MediaRequest,
    ) -> Result<(wire::ForBlob, DeviceAddress), ProtoError> {
        use wire::blob_command::Command;
        let grant = media
            .passes
            .check(&request.pass, self.inner.clock.now_ms())?;
        let (at, direction) = match &request.command.command {
            Some(Command::Upload(at)) => (at, Direction::Upload),
            Some(Command::Download(at)) => (at, Direction::Download),
            _ => {
                return Err(ProtoError::invalid(
                    "a media stream carries an upload or a download",
                ));
            }
        };
        if at.id != grant.id || direction != grant.direction {
            return Err(ProtoError::new(
                ErrorCode::Unauthenticated,
                "the media pass is for another blob or the other direction",
            ));
        }
        if direction == Direction::Download && at.region != 0 && at.region != self.inner.region.0 {
            return Err(ProtoError::invalid(format!(
                "this is region {}'s media endpoint, not region {}'s",
                self.inner.region.0, at.region
            )));
        }
        let for_blob = wire::ForBlob {
            device: grant.device.into(),
            command: request.command.clone(),
        };
        Ok((for_blob, grant.device))
    }
}
