//! The cross-region outbox: receipts and envelopes for other regions, delivered in batches by
//! a pump per destination and removed once the destination committed them.

use std::time::Duration;

use fdb_layers::outbox;
use prost::Message;
use relay_proto::limits::REGION_PEER_REQUEST_TIMEOUT_MS;
use relay_proto::wire::{self, RegionRequest, RegionResponse, region_request, region_response};
use relay_proto::{ErrorCode, ProtoError, RegionId};

use super::{RegionService, store_failure};
use crate::core;
use crate::limits::{
    LOCAL_RECEIPTS_BATCH_MAX, OUTBOX_BATCH_ENTRIES_MAX, OUTBOX_IDLE_POLL_MS, OUTBOX_RETRY_DELAY_MS,
};

impl RegionService {
    /// Delivers the cross-region outbox (delivered receipts for senders homed elsewhere), in
    /// order per destination, removing entries only after the destination stored them.
    pub(super) async fn outbox_pump(self) {
        loop {
            let mut backlog = false;
            let mut more = false;
            let destinations = match self
                .inner
                .db
                .transact(|tx| async move { outbox::destinations(&tx).await })
                .await
            {
                Ok(destinations) => destinations,
                Err(error) => {
                    tracing::error!(%error, "cannot read the outbox");
                    Vec::new()
                }
            };
            for destination in destinations {
                match self.deliver_outbox(destination).await {
                    Ok(full) => more |= full,
                    Err(error) => {
                        tracing::warn!(%destination, %error, "outbox delivery failed; will retry");
                        backlog = true;
                    }
                }
            }
            if more && !backlog {
                // A full batch went: the next one goes now, not after a pause.
                continue;
            }
            let pause = if backlog {
                OUTBOX_RETRY_DELAY_MS
            } else {
                OUTBOX_IDLE_POLL_MS
            };
            tokio::select! {
                () = self.inner.outbox_wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(pause)) => {}
            }
        }
    }

    async fn deliver_outbox(&self, destination: RegionId) -> Result<bool, ProtoError> {
        if destination == self.inner.region {
            // Group receipts for this region's own senders: applied here, a batch at a time.
            let local = self.inner.region;
            let now = self.inner.clock.now_ms();
            let applied = self
                .transact(|tx| async move {
                    let limits = (OUTBOX_BATCH_ENTRIES_MAX, LOCAL_RECEIPTS_BATCH_MAX);
                    core::deliver_local_receipts(&tx, local, limits, now).await
                })
                .await?;
            return Ok(applied.more);
        }
        let entries = self
            .inner
            .db
            .transact(
                |tx| async move { outbox::peek(&tx, destination, OUTBOX_BATCH_ENTRIES_MAX).await },
            )
            .await
            .map_err(store_failure)?;
        // Only what the standby holds leaves the region: an entry of a commit it has not
        // confirmed could be lost with this primary in a failover, while the other region
        // kept it, and its origin watermark (a versionstamp) would then shadow the entries the
        // promoted standby pushes at the same versions.
        let confirmed = self
            .inner
            .replication
            .as_ref()
            .and_then(|shipper| shipper.outgoing_bound());
        let shippable = core::confirmed_prefix(&entries, confirmed);
        let entries = &entries[..shippable];
        let Some(&(last_seq, _)) = entries.last() else {
            return Ok(false);
        };
        let mut receipts = Vec::with_capacity(entries.len());
        for (seq, bytes) in entries {
            let receipt = wire::QueuedReceipt::decode(&bytes[..]).map_err(|error| {
                ProtoError::new(
                    ErrorCode::Internal,
                    format!("corrupt outbox entry: {error}"),
                )
            })?;
            receipts.push(wire::ReceiptForward {
                receipt,
                origin_region: self.inner.region.0,
                origin_stamp: seq.to_bytes().to_vec(),
            });
        }
        let request = RegionRequest {
            body: Some(region_request::Body::Receipts(wire::ForwardReceipts {
                receipts,
            })),
        };
        let response = self
            .inner
            .peers
            .request::<_, RegionResponse>(
                destination.0,
                &request,
                Duration::from_millis(REGION_PEER_REQUEST_TIMEOUT_MS),
            )
            .await
            .map_err(|error| error.to_proto())?;
        match response.body {
            Some(region_response::Body::ReceiptsStored(_)) => {}
            Some(region_response::Body::Error(error)) => return Err(error.into()),
            _ => {
                return Err(ProtoError::new(
                    ErrorCode::Internal,
                    "unexpected answer to receipts",
                ));
            }
        }
        self.inner
            .db
            .transact(|tx| async move {
                outbox::remove_through(&tx, destination, last_seq);
                Ok(())
            })
            .await
            .map_err(store_failure)?;
        Ok(shippable == OUTBOX_BATCH_ENTRIES_MAX)
    }
}
