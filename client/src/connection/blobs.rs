//! Blobs on a device's connections: the streams that carry a blob's bytes, through the edge or
//! straight to a region's media endpoint on a connection of its own, and the requests that
//! begin, look up and finish one.

use super::*;

/// Where an upload stream's bytes come from, piece by piece (a sealer working while the
/// stream sends: see [`EdgeConnection::upload_stream`]).
pub trait UploadSource {
    /// The next bytes to send; `None` once every byte went.
    fn next_piece(&mut self) -> impl Future<Output = Result<Option<bytes::Bytes>>>;
}

impl EdgeConnection {
    /// This connection, reaching regions' media endpoints with `tls`'s media configuration
    /// (from the same socket), and skipping those `reach` says did not answer lately.
    pub fn with_media(mut self, tls: DeviceTls, reach: MediaReach) -> Self {
        self.media = Some((tls, reach));
        self
    }

    /// A connection of its own to the media endpoint `access` names, for one transfer, from
    /// this connection's socket; refused at once for an endpoint that did not answer lately
    /// (see [`MediaReach`]).
    pub async fn connect_media(&self, access: &MediaAccess) -> Result<quinn::Connection> {
        let Some((tls, reach)) = &self.media else {
            return Err(NetError::Io(std::io::Error::other(
                "this connection reaches no media endpoint",
            ))
            .into());
        };
        let now_ms = SystemClock.now_ms();
        if reach.out_of_reach(&access.address, now_ms) {
            return Err(NetError::Io(std::io::Error::other(format!(
                "the media endpoint {} did not answer lately",
                access.address
            )))
            .into());
        }
        let connected = self.connect_media_at(tls, access).await;
        match &connected {
            Ok(_) => reach.reached(&access.address),
            Err(_) => reach.unreachable(&access.address, now_ms),
        }
        connected
    }

    async fn connect_media_at(
        &self,
        tls: &DeviceTls,
        access: &MediaAccess,
    ) -> Result<quinn::Connection> {
        let address = match access.address.parse::<SocketAddr>() {
            Ok(address) => address,
            Err(_) => tokio::net::lookup_host(access.address.as_str())
                .await
                .map_err(NetError::Io)?
                .next()
                .ok_or_else(|| {
                    NetError::Io(std::io::Error::other(format!(
                        "the media endpoint {:?} has no address",
                        access.address
                    )))
                })?,
        };
        connect_within_timeout(
            &self.endpoint,
            tls.media_config()?,
            address,
            MEDIA_SERVER_NAME,
        )
        .await
    }

    /// A blob stream along `route`, its first frame (carrying `command`) written.
    async fn open_blob_stream(
        &self,
        route: BlobRoute<'_>,
        command: blob_command::Command,
    ) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        let command = BlobCommand {
            command: Some(command),
        };
        match route {
            BlobRoute::Edge => {
                let (mut send, recv) = self.connection.open_bi().await.map_err(NetError::from)?;
                let request = ClientRequest {
                    body: Some(client_request::Body::Blob(command)),
                };
                write_frame(&mut send, &request).await?;
                Ok((send, recv))
            }
            BlobRoute::Media { connection, pass } => {
                let (mut send, recv) = connection.open_bi().await.map_err(NetError::from)?;
                let request = MediaRequest {
                    pass: pass.to_vec(),
                    command,
                };
                write_frame(&mut send, &request).await?;
                Ok((send, recv))
            }
        }
    }
}

impl EdgeConnection {
    /// A blob request that is not a stream (begin, status, finish), answered with the status.
    pub async fn blob(&self, command: blob_command::Command) -> Result<BlobStatus> {
        let body = client_request::Body::Blob(BlobCommand {
            command: Some(command),
        });
        match self.call(body).await? {
            client_response::Body::Blob(status) => Ok(status),
            other => Err(unexpected("a blob status", &other)),
        }
    }

    /// Uploads the blob's bytes from `offset` on, as `source` hands them out (sealed while the
    /// stream sends), on a stream of its own, telling `progress` the offset reached after each
    /// write; answers the region's status, whose `committed_bytes` says what it kept.
    pub async fn upload_stream<S: UploadSource>(
        &self,
        route: BlobRoute<'_>,
        id: &[u8],
        offset: u64,
        source: &mut S,
        progress: &mut dyn FnMut(u64),
    ) -> Result<BlobStatus> {
        let upload = blob_command::Command::Upload(BlobAt {
            id: id.to_vec(),
            offset,
            ..Default::default()
        });
        let (mut send, mut recv) = self.open_blob_stream(route, upload).await?;
        let mut written = offset;
        while let Some(piece) = source.next_piece().await? {
            let length = piece.len() as u64;
            let write = send.write_chunk(piece);
            if let Err(error) = tokio::time::timeout(blob_timeout(), write)
                .await
                .map_err(|_| NetError::Timeout)?
            {
                // The region may have refused early (a wrong offset): its answer says why.
                return match read_blob_answer(&mut recv).await {
                    Ok(_) | Err(ClientError::Net(_)) => {
                        Err(NetError::Io(std::io::Error::other(error)).into())
                    }
                    Err(refused) => Err(refused),
                };
            }
            written += length;
            progress(written);
        }
        let _ = send.finish();
        read_blob_answer(&mut recv).await
    }

    /// Downloads the blob `id` of `region` from `offset` on a stream of its own, handing its
    /// bytes to `into` as they arrive (a refusal there ends the download) and telling
    /// `progress` the offset reached; answers the blob's status.
    #[allow(clippy::too_many_arguments)]
    pub async fn download_stream<P: FnMut(u64) + ?Sized>(
        &self,
        route: BlobRoute<'_>,
        region: u32,
        id: &[u8],
        offset: u64,
        into: &mut (dyn FnMut(&[u8]) -> Result<()> + Send),
        progress: &mut P,
    ) -> Result<BlobStatus> {
        let download = blob_command::Command::Download(BlobAt {
            id: id.to_vec(),
            offset,
            region,
            ..Default::default()
        });
        let (mut send, mut recv) = self.open_blob_stream(route, download).await?;
        let _ = send.finish();
        let status = read_blob_answer(&mut recv).await?;
        let mut reached = offset;
        loop {
            let chunk = tokio::time::timeout(blob_timeout(), recv.read_chunk(usize::MAX, true))
                .await
                .map_err(|_| NetError::Timeout)?
                .map_err(|error| NetError::Io(std::io::Error::other(error)))?;
            let Some(chunk) = chunk else {
                return Ok(status);
            };
            reached += chunk.bytes.len() as u64;
            if reached > status.size_bytes {
                return Err(ClientError::UnexpectedResponse(format!(
                    "the download went on past the blob's {} bytes",
                    status.size_bytes
                )));
            }
            into(&chunk.bytes)?;
            progress(reached);
        }
    }
}

fn blob_timeout() -> Duration {
    Duration::from_millis(BLOB_ANSWER_TIMEOUT_MS)
}

/// Which way a blob stream goes.
#[derive(Debug, Clone, Copy)]
pub enum BlobRoute<'a> {
    /// Through the edge the device's connection reaches.
    Edge,
    /// Straight to a region's media endpoint: a connection to it
    /// ([`EdgeConnection::connect_media`]) and the pass from the blob's status.
    Media {
        /// The connection to the media endpoint.
        connection: &'a quinn::Connection,
        /// The pass ([`MediaAccess::pass`]).
        pass: &'a [u8],
    },
}

/// The one frame that answers a blob stream.
async fn read_blob_answer(recv: &mut quinn::RecvStream) -> Result<BlobStatus> {
    let answer = tokio::time::timeout(blob_timeout(), read_response(recv))
        .await
        .map_err(|_| NetError::Timeout)??;
    match answer {
        client_response::Body::Blob(status) => Ok(status),
        other => Err(unexpected("a blob status", &other)),
    }
}
