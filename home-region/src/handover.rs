//! A planned failover (`relayd admin failover`): the region hands itself over to its standby
//! without losing or failing a request.
//!
//! 1. An operator asks the region with the region's own certificate ([`request_handover`]).
//! 2. The region holds every new request, subscription and blob stream (they wait, unanswered;
//!    a device sees a slower answer, never an error) and lets the requests under way finish
//!    (at most [`HANDOVER_DRAIN_WAIT_MS`]); see [`Drain`].
//! 3. Its shipper ships every commit up to the newest and asks the standby to take over at that
//!    version (`relay_replica::Shipper::hand_over`); commits made meanwhile by the region's
//!    own tasks wait unshipped and are never acknowledged.
//! 4. The standby takes over as in an unplanned failover but without waiting for a lease
//!    (`crate::failover`): new failover epoch, the region started on its copy, its address
//!    written into the peers file; then it tells the old primary.
//! 5. The old primary answers the operator and stops (fenced, exit status 3). The requests it
//!    held fail with the connection, and edges and regions send them again at once to the
//!    address in the peers file (`PeerLinks::moved_from`): every request is safe to repeat.
//!
//! If the standby refuses (it is behind, or has no `[promotion]` section) or does not take over
//! in time, the region lets the held requests through and serves on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use relay_net::{NetError, TlsIdentity};
use relay_proto::wire::{self, RegionRequest, RegionResponse, region_request, region_response};
use relay_proto::{ErrorCode, ProtoError};
use tokio::sync::Notify;

use crate::config::RegionConfig;
use crate::limits::{HANDOVER_ANSWER_WAIT_MS, HANDOVER_DRAIN_WAIT_MS, HANDOVER_REQUEST_TIMEOUT_MS};
use crate::service::{RegionError, RemoteCensus};

/// The region's gate for a handover: while it holds, every new stream waits; requests under
/// way are counted so the handover can wait for them.
#[derive(Debug, Default)]
pub struct Drain {
    holding: AtomicBool,
    in_flight: AtomicUsize,
    /// Wakes streams waiting at the gate, and the handover waiting for requests to finish.
    changed: Notify,
    /// A handover's answer was written (the region may close its endpoint).
    answered: AtomicBool,
    answered_now: Notify,
}

/// A request under way; the count drops with it.
#[derive(Debug)]
pub struct InFlight {
    drain: Arc<Drain>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.drain.in_flight.fetch_sub(1, Ordering::SeqCst);
        // Only a handover waits for the count (checked after the decrement: a handover that
        // closed the gate meanwhile reads the count after closing it, or is woken here).
        if self.drain.holding.load(Ordering::SeqCst) {
            self.drain.changed.notify_waiters();
        }
    }
}

impl Drain {
    /// Waits while the gate holds, then counts a request under way until the guard drops.
    pub async fn enter(self: &Arc<Self>) -> InFlight {
        loop {
            let changed = self.changed.notified();
            if !self.holding.load(Ordering::SeqCst) {
                self.in_flight.fetch_add(1, Ordering::SeqCst);
                if !self.holding.load(Ordering::SeqCst) {
                    return InFlight {
                        drain: self.clone(),
                    };
                }
                // The gate closed meanwhile: this request waits too.
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                self.changed.notify_waiters();
            }
            changed.await;
        }
    }

    /// Whether the gate holds (a handover is under way).
    pub fn holding(&self) -> bool {
        self.holding.load(Ordering::SeqCst)
    }

    /// Closes the gate; false if it was closed already (a handover is under way).
    pub(crate) fn hold(&self) -> bool {
        !self.holding.swap(true, Ordering::SeqCst)
    }

    /// Opens the gate: the streams that waited go on.
    pub(crate) fn release(&self) {
        self.holding.store(false, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits until no request is under way, at most `wait`; returns how many still are.
    pub(crate) async fn settled(&self, wait: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            let left = self.in_flight.load(Ordering::SeqCst);
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.in_flight.load(Ordering::SeqCst);
            }
        }
    }

    /// The handover's answer was written.
    pub fn mark_answered(&self) {
        self.answered.store(true, Ordering::SeqCst);
        self.answered_now.notify_waiters();
    }

    /// Before a fenced region closes its endpoint: if a handover is under way, waits (at most
    /// [`HANDOVER_ANSWER_WAIT_MS`]) until its answer reached the operator.
    pub async fn answer_written(&self) {
        if !self.holding() {
            return;
        }
        let written = async {
            loop {
                let now = self.answered_now.notified();
                if self.answered.load(Ordering::SeqCst) {
                    return;
                }
                now.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(HANDOVER_ANSWER_WAIT_MS), written).await;
    }
}

/// The region's side of a handover: `region` asked by a peer that presented `from_own_cert`
/// (the region's own certificate), with `shipper` the region's shipper if it has a standby.
pub(crate) async fn hand_over(
    drain: &Drain,
    region: u32,
    shipper: Option<&Arc<relay_replica::Shipper>>,
    ask: &wire::HandOver,
    from_own_cert: bool,
) -> Result<wire::HandedOver, ProtoError> {
    if !from_own_cert {
        return Err(ProtoError::new(
            ErrorCode::Forbidden,
            "only a holder of the region's own certificate may hand it over",
        ));
    }
    if ask.region != region {
        return Err(ProtoError::new(
            ErrorCode::Malformed,
            format!(
                "this is region {region}, not region {}: check the configuration",
                ask.region
            ),
        ));
    }
    let Some(shipper) = shipper else {
        return Err(ProtoError::new(
            ErrorCode::Unavailable,
            format!("region {region} has no standby to hand over to (no [replication] section)"),
        ));
    };
    if !drain.hold() {
        return Err(ProtoError::new(
            ErrorCode::Unavailable,
            "a handover is already under way",
        ));
    }
    let began = std::time::Instant::now();
    let left = drain
        .settled(Duration::from_millis(HANDOVER_DRAIN_WAIT_MS))
        .await;
    if left > 0 {
        tracing::warn!(
            region,
            left,
            "requests still under way after the drain wait: handing over anyway (they are \
             answered or fail with the connection, and are sent again)"
        );
    }
    match shipper.hand_over().await {
        Ok(handed) => {
            tracing::warn!(
                region,
                epoch = handed.epoch,
                version = handed.version,
                held_ms = began.elapsed().as_millis() as u64,
                "handed over to the standby: this region stops"
            );
            Ok(wire::HandedOver {
                region,
                epoch: handed.epoch,
                version: handed.version,
                held_ms: u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
        }
        Err(error) => {
            drain.release();
            tracing::warn!(region, %error, "the handover failed: serving on");
            Err(ProtoError::new(
                ErrorCode::Unavailable,
                format!("the handover failed, and region {region} serves on: {error}"),
            ))
        }
    }
}

/// Serves a handover asked on `send`'s stream: [`hand_over`], then its answer, waiting (at most
/// [`HANDOVER_ANSWER_WAIT_MS`]) until the operator received it before the region may close
/// its connections.
pub(crate) async fn serve(
    drain: &Drain,
    region: u32,
    shipper: Option<&Arc<relay_replica::Shipper>>,
    ask: &wire::HandOver,
    from_own_cert: bool,
    mut send: quinn::SendStream,
) {
    let answer = hand_over(drain, region, shipper, ask, from_own_cert).await;
    let handed_over = answer.is_ok();
    let response = RegionResponse {
        body: Some(match answer {
            Ok(handed) => region_response::Body::HandedOver(handed),
            Err(error) => region_response::Body::Error(error.into()),
        }),
    };
    if relay_net::write_frame(&mut send, &response).await.is_ok() && send.finish().is_ok() {
        let _ = tokio::time::timeout(
            Duration::from_millis(HANDOVER_ANSWER_WAIT_MS),
            send.stopped(),
        )
        .await;
    }
    if handed_over {
        drain.mark_answered();
    }
}

/// Asks the region `config` describes to hand itself over to its standby, as its operator:
/// connects with the region's own certificate to the address the peers file gives, and waits
/// for the answer (the standby serves as the region then).
pub async fn request_handover(config: &RegionConfig) -> Result<wire::HandedOver, RegionError> {
    let roots = relay_net::load_roots(&config.ca_cert)?;
    let identity = TlsIdentity::load(&config.cert, &config.key)?;
    let remote = RemoteCensus::connect(config, roots, identity)?;
    let request = RegionRequest {
        body: Some(region_request::Body::HandOver(wire::HandOver {
            region: config.region,
        })),
    };
    // Not `PeerLinks::request`: sent again to the new address, it would reach the standby.
    let asked = async {
        let connection = remote.links.connection(config.region).await?;
        relay_net::request::<_, RegionResponse>(
            &connection,
            &request,
            Duration::from_millis(HANDOVER_REQUEST_TIMEOUT_MS),
        )
        .await
    };
    let answer: Result<RegionResponse, NetError> = asked.await;
    remote.close();
    match answer?.body {
        Some(region_response::Body::HandedOver(handed)) => Ok(handed),
        Some(region_response::Body::Error(error)) => {
            Err(RegionError::Net(NetError::Remote(error.into())))
        }
        _ => Err(RegionError::Net(NetError::Remote(ProtoError::new(
            ErrorCode::Internal,
            "unexpected answer to a handover",
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_holds_new_requests_and_waits_for_those_under_way() {
        let drain = Arc::new(Drain::default());
        let under_way = drain.enter().await;
        assert!(drain.hold(), "closed now");
        assert!(!drain.hold(), "a second handover is refused");
        // A new request waits at the gate.
        let waiting = tokio::spawn({
            let drain = drain.clone();
            async move { drain.enter().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The drain waits for the request under way, and ends when it does.
        let settling = tokio::spawn({
            let drain = drain.clone();
            async move { drain.settled(Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        assert!(!settling.is_finished());
        drop(under_way);
        assert_eq!(settling.await.expect("joins"), 0);
        // Given up, it bounds its wait and says how many are left.
        let stuck = drain.in_flight.fetch_add(1, Ordering::SeqCst);
        assert_eq!(stuck, 0);
        assert_eq!(drain.settled(Duration::from_millis(1)).await, 1);
        drain.in_flight.fetch_sub(1, Ordering::SeqCst);
        // Opened again (the handover failed): the held request goes on.
        drain.release();
        let released = waiting.await.expect("joins");
        assert_eq!(drain.in_flight.load(Ordering::SeqCst), 1);
        drop(released);
        assert_eq!(drain.in_flight.load(Ordering::SeqCst), 0);
    }
}
