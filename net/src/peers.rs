//! [`PeerLinks`]: lazily connected, cached QUIC links to numbered peers (regions), with mutual
//! TLS, that follow a peer to its new address when it moves (a standby that took over).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use relay_proto::ProtoError;

use crate::limits::{self, PEER_CONNECT_TIMEOUT_MS};
use crate::{NetError, request};

/// Resolves a peer number (a region) to its current address.
pub type PeerResolver = Box<dyn Fn(u32) -> Option<SocketAddr> + Send + Sync>;

/// One peer's cached connection; its lock is held while connecting, so concurrent users of the
/// same peer wait for one attempt instead of making their own.
type PeerSlot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// Lazily connected, cached QUIC links to numbered peers (regions), reconnecting after a
/// failure. Used by edges (to regions) and regions (to each other), always with mutual TLS.
/// Each peer is connected under its own lock: a peer that does not answer a handshake holds
/// back only the requests to that peer. Only peers the resolver knows get a link, so the links
/// are bounded by the configured regions, whatever peer numbers a request names.
pub struct PeerLinks {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    server_name: &'static str,
    resolve: PeerResolver,
    connections: std::sync::Mutex<std::collections::BTreeMap<u32, PeerSlot>>,
}

impl std::fmt::Debug for PeerLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLinks")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PeerLinks {
    /// Links made from `endpoint` with `config`, checking peers' certificates for `server_name`.
    pub fn new(
        endpoint: quinn::Endpoint,
        config: quinn::ClientConfig,
        server_name: &'static str,
        resolve: PeerResolver,
    ) -> Self {
        Self {
            endpoint,
            config,
            server_name,
            resolve,
            connections: Default::default(),
        }
    }

    /// The live connection to `peer`, connecting first if there is none.
    pub async fn connection(&self, peer: u32) -> Result<quinn::Connection, NetError> {
        let slot = match self.slot(peer) {
            Some(slot) => slot,
            None if (self.resolve)(peer).is_some() => self.new_slot(peer),
            None => return Err(unknown_peer(peer)),
        };
        let mut cached = slot.lock().await;
        if let Some(connection) = cached.as_ref()
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        *cached = None;
        let address = (self.resolve)(peer).ok_or_else(|| unknown_peer(peer))?;
        let connecting =
            self.endpoint
                .connect_with(self.config.clone(), address, self.server_name)?;
        let connection =
            tokio::time::timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS), connecting)
                .await
                .map_err(|_| NetError::Timeout)??;
        *cached = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets the connection to `peer` so the next use reconnects. Never waits: if a
    /// connection attempt to `peer` is under way, it replaces the connection anyway.
    pub async fn forget(&self, peer: u32) {
        if let Some(slot) = self.slot(peer)
            && let Ok(mut cached) = slot.try_lock()
        {
            *cached = None;
        }
    }

    /// Closes the cached connection of every peer the resolver now places at another address
    /// (a region that moved: a standby that took over), so that requests waiting on the old
    /// address fail at once and are retried at the new one; returns how many were closed.
    /// Never waits: a peer being connected to is looked at next time.
    pub fn close_moved(&self) -> usize {
        let slots: Vec<(u32, PeerSlot)> = self
            .connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .map(|(peer, slot)| (*peer, slot.clone()))
            .collect();
        let mut closed = 0;
        for (peer, slot) in slots {
            let Ok(mut cached) = slot.try_lock() else {
                continue;
            };
            let moved = cached.as_ref().is_some_and(|connection| {
                connection.close_reason().is_none()
                    && self.moved_from(peer, connection.remote_address())
            });
            if moved && let Some(connection) = cached.take() {
                connection.close(0u32.into(), b"the peer moved");
                closed += 1;
            }
        }
        closed
    }

    /// Closes, every [`limits::PEER_MOVE_CHECK_INTERVAL_MS`], the connections to peers that
    /// moved ([`Self::close_moved`]); runs until its task is dropped. For edges and regions whose
    /// resolver reads a peers file a promoted standby rewrites.
    pub async fn close_moved_forever(&self) {
        loop {
            tokio::time::sleep(Duration::from_millis(limits::PEER_MOVE_CHECK_INTERVAL_MS)).await;
            let moved = self.close_moved();
            if moved > 0 {
                tracing::warn!(moved, "a peer moved: its old connection is closed");
            }
        }
    }

    /// Whether a request whose connection to `peer` at `from` failed (not timed out) should be
    /// sent once more: the peer moved meanwhile, and this was the request's attempt number
    /// `attempts` (from 1) of at most [`limits::MOVED_PEER_ATTEMPTS_MAX`].
    pub fn retry_at_new_address(&self, peer: u32, from: SocketAddr, attempts: u32) -> bool {
        let retry = attempts < limits::MOVED_PEER_ATTEMPTS_MAX && self.moved_from(peer, from);
        if retry {
            tracing::info!(
                peer,
                "the peer moved during a request: sending it to its new address"
            );
        }
        retry
    }

    fn slot(&self, peer: u32) -> Option<PeerSlot> {
        self.connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&peer)
            .cloned()
    }

    fn new_slot(&self, peer: u32) -> PeerSlot {
        self.connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .entry(peer)
            .or_default()
            .clone()
    }

    /// Whether the resolver places `peer` at another address than `from` now: it moved (a
    /// standby took over) while a request was under way at `from`.
    pub fn moved_from(&self, peer: u32, from: std::net::SocketAddr) -> bool {
        (self.resolve)(peer).is_some_and(|now| now != from)
    }

    /// One request to `peer` within `timeout`; a transport failure drops the cached connection.
    /// A request whose connection failed because the peer moved meanwhile is sent once more to
    /// the new address, within what is left of `timeout` (a request must be safe to repeat, as
    /// every request between regions is: a lost answer is retried the same way).
    pub async fn request<Req: Message, Resp: Message + Default>(
        &self,
        peer: u32,
        message: &Req,
        timeout: Duration,
    ) -> Result<Resp, NetError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let connection = self.connection(peer).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let result = request(&connection, message, left).await;
            if !matches!(
                result,
                Err(NetError::Connection(_)
                    | NetError::Timeout
                    | NetError::Write(_)
                    | NetError::Read(_))
            ) {
                return result;
            }
            self.forget(peer).await;
            let retry = !matches!(result, Err(NetError::Timeout))
                && tokio::time::Instant::now() < deadline
                && self.retry_at_new_address(peer, connection.remote_address(), attempts);
            if !retry {
                return result;
            }
        }
    }
}

fn unknown_peer(peer: u32) -> NetError {
    NetError::Remote(ProtoError::new(
        relay_proto::ErrorCode::Unavailable,
        format!("no address known for region {peer}"),
    ))
}
