//! Devices' acknowledgements gathered on their way to a region ([`AckGathering`]), as a
//! region's group commit gathers transactions: an ack that finds fewer than
//! [`ACK_GATHERINGS_IN_FLIGHT_MAX`] gatherings on their way to its home region starts one;
//! else it waits, and the next gathering to leave takes it along with every other ack waiting
//! then (at most [`ACK_MANY_DEVICES_MAX`] and [`ACK_MANY_BYTES_MAX`]). So under load a region
//! gets one `AckMany` request for many devices instead of a request per device, and a lone ack
//! goes at once. Sans-IO: the service sends what [`AckGathering::take`] hands out and answers
//! each waiter.
//!
//! **Why.** Under load a region and its edge spent most of their CPU on QUIC requests, one per
//! device per push acknowledged (README, "what does not limit W1 and W3"). An ack is small and
//! the region handles each one in a transaction of its own either way: gathered, a hundred
//! devices' acks cost the edge and the region one request instead of a hundred.

use std::collections::HashMap;

use prost::Message;
use relay_proto::RegionId;
use relay_proto::limits::{ACK_MANY_BYTES_MAX, ACK_MANY_DEVICES_MAX};
use relay_proto::wire::ForDevice;

pub use crate::limits::ACK_GATHERINGS_IN_FLIGHT_MAX;

/// The acks waiting for one region, and the gatherings on their way there.
#[derive(Debug)]
struct Waiting<W> {
    acks: Vec<(ForDevice, W)>,
    in_flight: usize,
}

impl<W> Default for Waiting<W> {
    fn default() -> Self {
        Self {
            acks: Vec::new(),
            in_flight: 0,
        }
    }
}

/// Acks waiting per region; `W` is what answers each one (the service's channel).
#[derive(Debug)]
pub struct AckGathering<W> {
    regions: HashMap<RegionId, Waiting<W>>,
}

impl<W> Default for AckGathering<W> {
    fn default() -> Self {
        Self {
            regions: HashMap::new(),
        }
    }
}

/// What [`AckGathering::add`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Start a gathering for the region: call [`AckGathering::take`] until it hands out
    /// nothing.
    Start,
    /// A gathering on its way will take the ack along.
    Waits,
}

impl<W> AckGathering<W> {
    /// An ack (`request`, answered through `waiter`) for `region`.
    pub fn add(&mut self, region: RegionId, request: ForDevice, waiter: W) -> Added {
        let waiting = self.regions.entry(region).or_default();
        waiting.acks.push((request, waiter));
        if waiting.in_flight < ACK_GATHERINGS_IN_FLIGHT_MAX {
            waiting.in_flight += 1;
            Added::Start
        } else {
            Added::Waits
        }
    }

    /// The next acks a started gathering sends to `region`, oldest first, within the bounds
    /// of one `AckMany` (at least one, however large); empty once none wait, and the gathering
    /// ends then.
    pub fn take(&mut self, region: RegionId) -> Vec<(ForDevice, W)> {
        let Some(waiting) = self.regions.get_mut(&region) else {
            return Vec::new();
        };
        if waiting.acks.is_empty() {
            waiting.in_flight = waiting.in_flight.saturating_sub(1);
            if waiting.in_flight == 0 {
                self.regions.remove(&region);
            }
            return Vec::new();
        }
        let mut count = 0;
        let mut bytes = 0;
        for (request, _) in &waiting.acks {
            let size = request.encoded_len();
            if count == ACK_MANY_DEVICES_MAX || (count > 0 && bytes + size > ACK_MANY_BYTES_MAX) {
                break;
            }
            count += 1;
            bytes += size;
        }
        waiting.acks.drain(..count).collect()
    }

    /// Acks waiting for `region`.
    pub fn waiting(&self, region: RegionId) -> usize {
        self.regions
            .get(&region)
            .map_or(0, |waiting| waiting.acks.len())
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::wire::{AckQueue, DeviceAddr, FetchAndAck};

    use super::*;

    const REGION: RegionId = RegionId(1);

    fn ack(account: u64, seqs: usize) -> ForDevice {
        ForDevice {
            device: DeviceAddr { account, device: 1 },
            fetch: Some(FetchAndAck {
                ack: Some(AckQueue {
                    queue_seqs: (1..=seqs as u64).collect(),
                }),
                fetch: None,
            }),
            ..ForDevice::default()
        }
    }

    #[test]
    fn a_lone_ack_goes_at_once_and_the_gathering_ends_when_none_wait() {
        let mut gathering = AckGathering::default();
        assert_eq!(gathering.add(REGION, ack(1, 1), 1u32), Added::Start);
        let taken = gathering.take(REGION);
        assert_eq!(taken.len(), 1);
        assert!(gathering.take(REGION).is_empty(), "nothing more: it ends");
        assert_eq!(
            gathering.add(REGION, ack(2, 1), 2),
            Added::Start,
            "a new one starts"
        );
    }

    #[test]
    fn acks_past_the_gatherings_in_flight_wait_and_leave_together_in_order() {
        let mut gathering = AckGathering::default();
        for waiter in 0..ACK_GATHERINGS_IN_FLIGHT_MAX as u32 {
            assert_eq!(
                gathering.add(REGION, ack(u64::from(waiter), 1), waiter),
                Added::Start
            );
            assert_eq!(gathering.take(REGION).len(), 1);
        }
        for waiter in 100..400u32 {
            assert_eq!(
                gathering.add(REGION, ack(u64::from(waiter), 1), waiter),
                Added::Waits
            );
        }
        // The first gathering back takes the oldest, as many as one AckMany holds.
        let taken: Vec<u32> = gathering
            .take(REGION)
            .into_iter()
            .map(|(_, waiter)| waiter)
            .collect();
        assert_eq!(
            taken,
            (100..100 + ACK_MANY_DEVICES_MAX as u32).collect::<Vec<_>>()
        );
        assert_eq!(gathering.waiting(REGION), 300 - ACK_MANY_DEVICES_MAX);
        let rest = gathering.take(REGION);
        assert_eq!(rest.len(), 300 - ACK_MANY_DEVICES_MAX);
        // Every gathering ends once nothing waits; then an ack starts one again.
        for _ in 0..ACK_GATHERINGS_IN_FLIGHT_MAX {
            assert!(gathering.take(REGION).is_empty());
        }
        assert_eq!(gathering.add(REGION, ack(9, 1), 9), Added::Start);
    }

    #[test]
    fn a_gathering_stays_within_the_bytes_of_one_ack_many_but_always_takes_one() {
        let mut gathering = AckGathering::default();
        for _ in 0..ACK_GATHERINGS_IN_FLIGHT_MAX {
            gathering.add(REGION, ack(0, 1), 0u32);
            gathering.take(REGION);
        }
        // Acks of 20,000 sequences each: about 60 KB encoded.
        let large = ack(1, 20_000);
        let per_ack = large.encoded_len();
        for waiter in 1..=20u32 {
            gathering.add(REGION, large.clone(), waiter);
        }
        let taken = gathering.take(REGION);
        assert_eq!(taken.len(), ACK_MANY_BYTES_MAX / per_ack);
        assert!(taken.len() * per_ack <= ACK_MANY_BYTES_MAX);
        // One larger than the budget still goes, alone.
        let mut huge = AckGathering::default();
        for _ in 0..ACK_GATHERINGS_IN_FLIGHT_MAX {
            huge.add(REGION, ack(0, 1), 0u32);
            huge.take(REGION);
        }
        huge.add(REGION, ack(1, 200_000), 1);
        huge.add(REGION, ack(2, 1), 2);
        assert_eq!(huge.take(REGION).len(), 1);
        assert_eq!(huge.take(REGION).len(), 1);
    }

    #[test]
    fn regions_gather_apart() {
        let mut gathering = AckGathering::default();
        assert_eq!(gathering.add(RegionId(1), ack(1, 1), 1u32), Added::Start);
        assert_eq!(gathering.add(RegionId(2), ack(2, 1), 2), Added::Start);
        assert_eq!(gathering.take(RegionId(2)).len(), 1);
        assert_eq!(gathering.take(RegionId(1)).len(), 1);
    }
}
