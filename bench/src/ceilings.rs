//! The ceilings the message benchmark is compared with, measured in the same run on the same
//! machine, each alone (the devnet is stopped by then):
//!
//! - **raw QUIC request/response**: an echo server and its clients in this process over
//!   loopback QUIC+TLS with the project's own TLS configurations (`relay_net`), one stream per
//!   request carrying the same frame a W1 send carries, each requester on its own connection
//!   sending its next request when the previous one is answered: what the transport alone
//!   allows, without edges, regions or storage.
//! - **raw redb**: the keys a message writes (chat log append, two device queue appends: the
//!   message's entry and, later, its receipt's) with the W1 envelope's size, batched as many
//!   per fsync as there are senders, and the disk's fsync rate ([`crate::storage`]).
//! - **Olm**: vodozemac encrypting and decrypting payload-sized messages on an established
//!   session, in one thread: what end-to-end encryption costs a real device per message.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_devnet::pki::Pki;
use relay_net::{NetError, TlsIdentity, TokioSockets, bind_endpoint, read_frame, respond};
use relay_proto::wire::ClientRequest;
use serde::Serialize;
use vodozemac::olm::{Account, OlmMessage, SessionConfig};

use crate::BenchError;
use crate::device::Endpoints;
use crate::limits::{OLM_MESSAGES_MAX, REQUEST_TIMEOUT_MS};
use crate::measure::{Percentiles, Timing, latency_us, measure_fsync};
use crate::storage::{KEYS_PER_MESSAGE, measure_raw_messages};

/// The raw QUIC ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct QuicCeiling {
    /// Concurrent requesters, each on its own connection.
    pub requesters: usize,
    /// Bytes of each request frame's body (a W1 send), echoed back as the answer.
    pub request_bytes: usize,
    /// Requests answered per second.
    pub per_second: f64,
    /// Round-trip latency of one request.
    pub latency: Percentiles,
}

/// The raw redb ceiling and the disk's fsync rate.
#[derive(Debug, Clone, Serialize)]
pub struct RedbCeiling {
    /// Messages per durable write transaction (one fsync each).
    pub batch: usize,
    /// Keys each message writes.
    pub keys_per_message: usize,
    /// Bytes of each message's envelope.
    pub envelope_bytes: usize,
    /// Messages written per second.
    pub per_second: f64,
    /// 512-byte overwrites + fdatasync per second on the same disk.
    pub fsync_per_second: f64,
}

/// The Olm ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct OlmCeiling {
    /// Bytes of each plaintext.
    pub payload_bytes: usize,
    /// Messages encrypted per second (one thread).
    pub encrypt_per_second: f64,
    /// Messages decrypted per second (one thread).
    pub decrypt_per_second: f64,
}

/// Every ceiling of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Ceilings {
    /// Raw QUIC request/response.
    pub quic: QuicCeiling,
    /// Raw redb and the fsync rate.
    pub redb: RedbCeiling,
    /// Olm encrypt and decrypt.
    pub olm: OlmCeiling,
}

/// Runs `requesters` closed-loop requesters against an in-process echo server over loopback
/// QUIC+TLS (certificates from a PKI made in `folder`), each request being `request`.
pub async fn measure_quic(
    folder: &Path,
    requesters: usize,
    request: ClientRequest,
    timing: Timing,
) -> Result<QuicCeiling, BenchError> {
    let pki = Pki::open(&folder.join("pki"))?;
    let certs = pki.edge(1)?;
    let identity = TlsIdentity::load(&certs.cert, &certs.key)
        .map_err(BenchError::net("the echo server's certificate"))?;
    let roots = relay_net::load_roots(&pki.ca_cert()).map_err(BenchError::net("the echo CA"))?;
    let server_config = relay_net::server_config(identity, None, relay_net::ALPN_DEVICE)
        .map_err(BenchError::net("the echo server's TLS configuration"))?;
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let server = bind_endpoint(
        &TokioSockets,
        SocketAddr::new(localhost, 0),
        Some(server_config),
    )
    .map_err(BenchError::net("binding the echo server"))?;
    let address = server
        .local_addr()
        .map_err(|error| BenchError::net("the echo server's address")(NetError::Io(error)))?;
    let echo = tokio::spawn(serve_echo(server.clone()));

    let endpoints = Endpoints::new(localhost, roots)?;
    let mut links = Vec::with_capacity(requesters);
    for _ in 0..requesters {
        links.push(endpoints.connect(address).await?);
    }
    let request = Arc::new(request);
    let (window_start, window_end) = timing.schedule();
    let mut tasks = tokio::task::JoinSet::new();
    for link in &links {
        let connection = link.connection().clone();
        let request = request.clone();
        tasks.spawn(async move {
            let mut latencies_us = Vec::new();
            loop {
                let began = Instant::now();
                if began >= window_end {
                    return Ok(latencies_us);
                }
                let answer: ClientRequest = relay_net::request(
                    &connection,
                    &*request,
                    Duration::from_millis(REQUEST_TIMEOUT_MS),
                )
                .await
                .map_err(BenchError::net("an echo request"))?;
                if answer != *request {
                    return Err(BenchError::Protocol(
                        "the echo server answered something else than it was sent".into(),
                    ));
                }
                let finished = Instant::now();
                if finished >= window_start && finished <= window_end {
                    latencies_us.push(latency_us(finished - began));
                }
            }
        });
    }
    let mut latencies_us = Vec::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(latencies)) => latencies_us.extend(latencies),
            Ok(Err(error)) => failure = Some(error),
            Err(error) => {
                failure = Some(BenchError::Refused(format!("a requester failed: {error}")))
            }
        }
    }
    for link in &links {
        link.close();
    }
    endpoints.wait_idle().await;
    server.close(0u32.into(), b"done");
    echo.abort();
    if let Some(error) = failure {
        return Err(error);
    }
    let per_second = latencies_us.len() as f64 / timing.window.as_secs_f64();
    Ok(QuicCeiling {
        requesters,
        request_bytes: prost::Message::encoded_len(&*request),
        per_second,
        latency: Percentiles::of(latencies_us),
    })
}

/// Answers every request stream of every connection with the frame it carried.
async fn serve_echo(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            while let Ok((send, mut recv)) = connection.accept_bi().await {
                tokio::spawn(async move {
                    if let Ok(Some(request)) = read_frame::<ClientRequest>(&mut recv).await {
                        let _ = respond(send, &request).await;
                    }
                });
            }
        });
    }
}

/// Raw redb writing `batch` messages with `envelope_bytes` envelopes per fsync, and the fsync
/// rate, on fresh files in `folder`.
pub fn measure_redb(
    folder: &Path,
    batch: usize,
    envelope_bytes: usize,
    timing: Timing,
) -> Result<RedbCeiling, BenchError> {
    let path = folder.join("raw-ceiling.redb");
    let per_second = measure_raw_messages(&path, batch, envelope_bytes, timing)?;
    let fsync_per_second = measure_fsync(&folder.join("fsync.probe"), timing)?;
    Ok(RedbCeiling {
        batch,
        keys_per_message: KEYS_PER_MESSAGE,
        envelope_bytes,
        per_second,
        fsync_per_second,
    })
}

/// Olm on an established session (a pre-key message answered, so the sender's messages are
/// normal ones): encrypts `payload_bytes` plaintexts for the timing's window, then decrypts
/// every one of them in order; both in this thread.
pub fn measure_olm(payload_bytes: usize, timing: Timing) -> Result<OlmCeiling, BenchError> {
    let olm_error = |what: &str| {
        let what = what.to_owned();
        move |error: String| BenchError::Refused(format!("Olm ceiling: {what}: {error}"))
    };
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let one_time_key = bob
        .one_time_keys()
        .into_values()
        .next()
        .ok_or_else(|| olm_error("a one-time key")("none was generated".into()))?;
    bob.mark_keys_as_published();
    let mut outbound = alice
        .create_outbound_session(
            SessionConfig::version_1(),
            bob.curve25519_key(),
            one_time_key,
        )
        .map_err(|error| olm_error("the outbound session")(error.to_string()))?;
    let first = outbound
        .encrypt(b"hello")
        .map_err(|error| olm_error("the first message")(error.to_string()))?;
    let OlmMessage::PreKey(pre_key) = first else {
        return Err(olm_error("the first message")(
            "not a pre-key message".into(),
        ));
    };
    let mut inbound = bob
        .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &pre_key)
        .map_err(|error| olm_error("the inbound session")(error.to_string()))?
        .session;
    let reply = inbound
        .encrypt(b"hi")
        .map_err(|error| olm_error("the reply")(error.to_string()))?;
    outbound
        .decrypt(&reply)
        .map_err(|error| olm_error("the reply")(error.to_string()))?;

    let plaintext = vec![0x42u8; payload_bytes];
    let (window_start, window_end) = timing.schedule();
    let mut messages = Vec::new();
    let mut encrypted_in_window = 0u64;
    while messages.len() < OLM_MESSAGES_MAX {
        let now = Instant::now();
        if now >= window_end {
            break;
        }
        let message = outbound
            .encrypt(&plaintext)
            .map_err(|error| olm_error("encrypting")(error.to_string()))?;
        if now >= window_start {
            encrypted_in_window += 1;
        }
        messages.push(message);
    }
    let window = window_end
        .saturating_duration_since(window_start)
        .as_secs_f64();
    let encrypt_per_second = encrypted_in_window as f64 / window;

    let began = Instant::now();
    for message in &messages {
        let decrypted = inbound
            .decrypt(message)
            .map_err(|error| olm_error("decrypting")(error.to_string()))?;
        if decrypted.len() != payload_bytes {
            return Err(olm_error("decrypting")(
                "a plaintext of the wrong size".into(),
            ));
        }
    }
    let decrypt_seconds = began.elapsed().as_secs_f64();
    let decrypt_per_second = if decrypt_seconds > 0.0 {
        messages.len() as f64 / decrypt_seconds
    } else {
        0.0
    };
    Ok(OlmCeiling {
        payload_bytes,
        encrypt_per_second,
        decrypt_per_second,
    })
}

#[cfg(test)]
mod tests {
    use relay_proto::wire::client_request;

    use super::*;

    #[test]
    fn olm_encrypts_and_decrypts_on_an_established_session() {
        let timing = Timing {
            warmup: Duration::from_millis(5),
            window: Duration::from_millis(30),
        };
        let ceiling = measure_olm(100, timing).expect("olm");
        assert!(ceiling.encrypt_per_second > 0.0);
        assert!(ceiling.decrypt_per_second > 0.0);
    }

    #[test]
    fn the_echo_server_answers_with_what_it_was_sent() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let folder = tempfile::tempdir().expect("folder");
        let timing = Timing {
            warmup: Duration::from_millis(50),
            window: Duration::from_millis(200),
        };
        let request = ClientRequest {
            body: Some(client_request::Body::Hello(relay_proto::wire::Hello {
                client_version: "echo".into(),
            })),
        };
        let ceiling = runtime
            .block_on(measure_quic(folder.path(), 2, request, timing))
            .expect("quic");
        assert_eq!(ceiling.requesters, 2);
        assert!(ceiling.per_second > 0.0);
        assert!(ceiling.latency.samples > 0);
    }
}
