//! Framed request/response streams over quinn: one length-prefixed prost message per frame
//! (`relay_proto::frame`), a request on its own bidirectional stream answered by one frame, and
//! a cancel-safe [`FrameReader`] for long-lived streams read beside other work.

use std::time::Duration;

use prost::Message;
use relay_proto::FrameError;
use relay_proto::frame::{FRAME_HEADER_BYTES, FrameDecoder, decode_header, encode_frame};
use relay_proto::limits::FRAME_BYTES_MAX;

use crate::NetError;

/// Writes one frame.
pub async fn write_frame<M: Message>(
    send: &mut quinn::SendStream,
    message: &M,
) -> Result<(), NetError> {
    send.write_all(&encode_frame(message)).await?;
    Ok(())
}

/// Reads one frame; `None` when the peer finished the stream cleanly between frames. Not
/// cancel-safe: a read dropped halfway (a `select!` whose other branch won) loses the bytes it
/// took, and the stream's next read starts inside a frame. A stream read beside other work
/// takes a [`FrameReader`].
pub async fn read_frame<M: Message + Default>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<M>, NetError> {
    read_frame_limited(recv, FRAME_BYTES_MAX).await
}

/// Reads one frame of at most `limit` bytes (a stream of its own protocol, such as
/// replication's); `None` when the peer finished the stream cleanly between frames.
pub async fn read_frame_limited<M: Message + Default>(
    recv: &mut quinn::RecvStream,
    limit: usize,
) -> Result<Option<M>, NetError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let body_length = decode_header(&header, limit)?;
    let mut body = vec![0u8; body_length];
    recv.read_exact(&mut body).await?;
    M::decode(&body[..])
        .map(Some)
        .map_err(|error| FrameError::Decode(error.to_string()).into())
}

/// Reads the frames of one stream, and may be dropped halfway through a read without losing
/// anything: what a dropped read took from the stream stays buffered for the next one (quinn's
/// `read_exact`, under [`read_frame`], is not cancel-safe; `read_chunk` is). For a long-lived
/// stream read in a `select!` beside other work, such as an edge's subscription stream.
pub struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl FrameReader {
    /// Frames of at most [`FRAME_BYTES_MAX`] bytes from `recv`.
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(FRAME_BYTES_MAX),
        }
    }

    /// The next frame; `None` when the peer finished the stream cleanly between frames.
    /// Cancel-safe.
    pub async fn read<M: Message + Default>(&mut self) -> Result<Option<M>, NetError> {
        loop {
            if let Some(frame) = self.decoder.next_frame::<M>()? {
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => self.decoder.push(&chunk.bytes),
                Ok(None) if self.decoder.buffered() == 0 => return Ok(None),
                Ok(None) => {
                    return Err(
                        quinn::ReadExactError::FinishedEarly(self.decoder.buffered()).into(),
                    );
                }
                Err(error) => return Err(quinn::ReadExactError::ReadError(error).into()),
            }
        }
    }
}

/// Sends one request on a new bidirectional stream and reads its one response.
pub async fn request<Req: Message, Resp: Message + Default>(
    connection: &quinn::Connection,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, NetError> {
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        write_frame(&mut send, request).await?;
        // The peer may already have closed its side; a failed finish is reported by the read.
        let _ = send.finish();
        read_frame::<Resp>(&mut recv).await?.ok_or(NetError::Closed)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| NetError::Timeout)?
}

/// Answers one request stream with one frame and finishes it.
pub async fn respond<M: Message>(mut send: quinn::SendStream, message: &M) -> Result<(), NetError> {
    write_frame(&mut send, message).await?;
    let _ = send.finish();
    Ok(())
}
