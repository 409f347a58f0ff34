//! A device's `FetchQueue` (its acks committed, then a page read) and an edge's `AckMany` (several
//! devices' acks gathered, each handled as its own `FetchQueue`).

use std::collections::BTreeSet;

use fdb_layers::StoreError;
use relay_proto::limits::ACK_MANY_DEVICES_MAX;
use relay_proto::wire;
use relay_proto::{DeviceAddress, ProtoError};

use super::{RegionService, store_failure};
use crate::core;

impl RegionService {
    /// A device's `FetchQueue`: its acks committed (and their delivered receipts), then the
    /// page after its cursor. A queue that does not decode quarantines the device.
    pub(super) async fn fetch_queue(
        &self,
        for_device: wire::ForDevice,
    ) -> Result<wire::QueueBatch, ProtoError> {
        self.fetch_queue_with(for_device, &self.quarantined()).await
    }

    /// [`Self::fetch_queue`] against `quarantined`, read once for a whole `AckMany`.
    async fn fetch_queue_with(
        &self,
        for_device: wire::ForDevice,
        quarantined: &BTreeSet<DeviceAddress>,
    ) -> Result<wire::QueueBatch, ProtoError> {
        let local = self.inner.region;
        let device = for_device.device.parse()?;
        let fetch = for_device.fetch.unwrap_or_default();
        let now = self.inner.clock.now_ms();
        let fetched =
            self.inner
                .db
                .transact(|tx| {
                    let fetch = fetch.clone();
                    async move {
                        core::fetch_and_ack(&tx, local, device, &fetch, quarantined, now).await
                    }
                })
                .await;
        match fetched {
            Ok(outcome) => {
                let (batch, effects) = outcome?;
                self.apply(effects);
                Ok(batch)
            }
            // Anything of this device's queue that does not decode (an entry, the log
            // entry it references, the envelope there) makes the queue unreadable.
            Err(error @ StoreError::Corrupt { .. }) => {
                self.quarantine(device, &error).await;
                Err(core::quarantined_refusal(device))
            }
            Err(error) => Err(store_failure(error)),
        }
    }

    /// An edge's `AckMany`: each device's request handled as its own `FetchQueue`, all at
    /// once, answered in order. Acks only: a request that also reads a page is refused (its
    /// answer could outgrow the frame), as is a gathering past its bounds.
    pub(super) async fn ack_many(&self, many: wire::AckMany) -> Result<wire::AcksDone, ProtoError> {
        use wire::ack_outcome::Outcome;
        if many.acks.len() > ACK_MANY_DEVICES_MAX {
            return Err(ProtoError::invalid(format!(
                "{} acknowledgements in one AckMany; at most {ACK_MANY_DEVICES_MAX}",
                many.acks.len()
            )));
        }
        let quarantined = &self.quarantined();
        let answers = many.acks.into_iter().map(|for_device| async move {
            let reads = for_device
                .fetch
                .as_ref()
                .is_some_and(|fetch| fetch.fetch.is_some());
            let answer = if reads {
                Err(ProtoError::invalid(
                    "an AckMany carries acknowledgements only; fetch a page with FetchQueue",
                ))
            } else {
                self.fetch_queue_with(for_device, quarantined).await
            };
            wire::AckOutcome {
                outcome: Some(match answer {
                    Ok(batch) => Outcome::Queue(batch),
                    Err(error) => Outcome::Error(error.into()),
                }),
            }
        });
        Ok(wire::AcksDone {
            outcomes: futures_util::future::join_all(answers).await,
        })
    }
}
