//! What waits to be written on one edge's subscription stream ([`StreamPushes`]): per device,
//! the highest queue sequence announced and the entries sent along, and the presence updates,
//! typing notices and move notices in the order they came.
//!
//! A queue push is never dropped. It used to wait in a bounded channel, one frame per commit
//! and device, dropped when the channel was full: under a 1,024-member group's fan-out, with the
//! edge reading slower than the region committed, pushes were lost and their devices heard of
//! their entries only from their periodic fetch, seconds later (the bench counted 8,432 such
//! deliveries in one 6-s row). A push says "fetch after your cursor, up to here", so the one
//! announcing the highest sequence says what the others did: a device keeps one number here,
//! and the entries of the pushes that wait for it join into one gapless run.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use prost::Message as _;
use relay_proto::DeviceAddress;
use relay_proto::wire::{self, DeviceQueueAvailable, region_response};
use tokio::sync::Notify;

use crate::limits::{SUBSCRIPTION_ENTRY_BYTES_MAX, SUBSCRIPTION_EVENTS_MAX};

/// The pushes waiting for one subscription stream's writer.
#[derive(Default)]
pub(super) struct StreamPushes {
    waiting: Mutex<Waiting>,
    wake: Notify,
}

#[derive(Default)]
struct Waiting {
    /// What to write, in the order it first waited: a device's queue push keeps the place of
    /// the first push that waited for it (the same order on every run: a simulation replays it).
    order: VecDeque<Slot>,
    /// device → its queue push waiting (a place in `order`).
    queues: HashMap<DeviceAddress, QueuePush>,
    /// Events in `order`.
    events: usize,
    /// Bytes of entries held in `queues`.
    entry_bytes: usize,
}

enum Slot {
    Queue(DeviceAddress),
    Event(region_response::Body),
}

struct QueuePush {
    latest_queue_seq: u64,
    entries: wire::EntryRun,
}

/// Why an event was not kept.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Full;

impl StreamPushes {
    /// A queue push for `device`: its queue reaches `latest_queue_seq`, and `entries` (a gapless
    /// run, possibly empty) go along. Kept whatever else waits: it joins the push already
    /// waiting for the device (the highest sequence stands; entries that follow its run join
    /// it, the rest are left for the device to fetch). Entries past
    /// [`SUBSCRIPTION_ENTRY_BYTES_MAX`] for the stream are left to a fetch too.
    pub(super) fn queue(
        &self,
        device: DeviceAddress,
        latest_queue_seq: u64,
        entries: Vec<wire::QueueEntry>,
    ) {
        {
            let mut waiting = lock(&self.waiting);
            let Waiting {
                order,
                queues,
                entry_bytes,
                ..
            } = &mut *waiting;
            let push = queues.entry(device).or_insert_with(|| {
                order.push_back(Slot::Queue(device));
                QueuePush {
                    latest_queue_seq,
                    entries: wire::EntryRun::default(),
                }
            });
            push.latest_queue_seq = push.latest_queue_seq.max(latest_queue_seq);
            for entry in entries {
                let bytes = entry.encoded_len();
                if *entry_bytes + bytes > SUBSCRIPTION_ENTRY_BYTES_MAX {
                    // Closed: nothing joins after a gap.
                    push.entries.push(entry.queue_seq, None);
                    break;
                }
                if !push.entries.join(entry) {
                    break;
                }
                *entry_bytes += bytes;
            }
        }
        self.wake.notify_one();
    }

    /// A presence update, typing notice or move notice, written after what waits already;
    /// refused when [`SUBSCRIPTION_EVENTS_MAX`] wait (they are ephemeral, or said again later).
    pub(super) fn event(&self, body: region_response::Body) -> Result<(), Full> {
        {
            let mut waiting = lock(&self.waiting);
            if waiting.events >= SUBSCRIPTION_EVENTS_MAX {
                return Err(Full);
            }
            waiting.events += 1;
            waiting.order.push_back(Slot::Event(body));
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Everything waiting, in order, once something does.
    pub(super) async fn take(&self) -> Vec<region_response::Body> {
        loop {
            let taken = std::mem::take(&mut *lock(&self.waiting));
            if !taken.order.is_empty() {
                return taken.into_bodies();
            }
            // `notify_one` leaves a permit when nobody waits, so nothing is missed in between.
            self.wake.notified().await;
        }
    }
}

impl Waiting {
    fn into_bodies(mut self) -> Vec<region_response::Body> {
        self.order
            .into_iter()
            .filter_map(|slot| match slot {
                Slot::Event(body) => Some(body),
                Slot::Queue(device) => self.queues.remove(&device).map(|mut push| {
                    region_response::Body::QueueAvailable(DeviceQueueAvailable {
                        device: device.into(),
                        latest_queue_seq: push.latest_queue_seq,
                        entries: push.entries.take(),
                    })
                }),
            })
            .collect()
    }
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use relay_proto::limits::QUEUE_PUSH_BYTES_MAX;
    use relay_proto::{AccountId, DeviceId};

    use super::*;

    fn device(account: u64) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(account),
            device: DeviceId(1),
        }
    }

    fn entries(seqs: std::ops::Range<u64>, payload_bytes: usize) -> Vec<wire::QueueEntry> {
        seqs.map(|queue_seq| wire::QueueEntry {
            queue_seq,
            item: Some(wire::queue_entry::Item::Message(wire::QueuedMessage {
                ciphertext: vec![7; payload_bytes],
                ..Default::default()
            })),
        })
        .collect()
    }

    fn queue(body: &region_response::Body) -> (u64, u64, Vec<u64>) {
        let region_response::Body::QueueAvailable(push) = body else {
            panic!("a queue push, not {body:?}");
        };
        (
            push.device.account,
            push.latest_queue_seq,
            push.entries.iter().map(|entry| entry.queue_seq).collect(),
        )
    }

    fn typing(account: u64) -> region_response::Body {
        region_response::Body::Typing(wire::TypingNotice {
            to: device(account).into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn queue_pushes_are_never_dropped_and_one_per_device_waits() {
        let pushes = StreamPushes::default();
        // Far more pushes than the old channel held (16,384), for a group's worth of devices.
        for round in 0..40u64 {
            for account in 0..1_024 {
                pushes.queue(
                    device(account),
                    round + 1,
                    entries(round + 1..round + 2, 10),
                );
            }
        }
        let taken = pushes.take().await;
        assert_eq!(taken.len(), 1_024, "one push per device");
        for (account, body) in taken.iter().enumerate() {
            let (pushed_to, latest, seqs) = queue(body);
            assert_eq!(pushed_to, account as u64, "in the order they first waited");
            assert_eq!(latest, 40, "the highest announcement stands");
            assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "the runs joined");
        }
        let waiting = lock(&pushes.waiting);
        assert!(waiting.order.is_empty() && waiting.queues.is_empty() && waiting.entry_bytes == 0);
    }

    #[tokio::test]
    async fn events_keep_their_place_and_are_bounded_but_queue_pushes_are_not() {
        let pushes = Arc::new(StreamPushes::default());
        pushes.queue(device(1), 3, Vec::new());
        pushes.event(typing(2)).expect("room");
        pushes.queue(device(3), 5, Vec::new());
        pushes.queue(device(1), 4, Vec::new());
        let taken = pushes.take().await;
        assert_eq!(taken.len(), 3);
        assert_eq!(queue(&taken[0]), (1, 4, vec![]));
        assert_eq!(taken[1], typing(2));
        assert_eq!(queue(&taken[2]), (3, 5, vec![]));

        for _ in 0..SUBSCRIPTION_EVENTS_MAX {
            pushes.event(typing(2)).expect("room");
        }
        assert_eq!(pushes.event(typing(2)), Err(Full));
        pushes.queue(device(9), 1, Vec::new());
        let taken = pushes.take().await;
        assert_eq!(taken.len(), SUBSCRIPTION_EVENTS_MAX + 1);
        assert_eq!(queue(&taken[SUBSCRIPTION_EVENTS_MAX]), (9, 1, vec![]));

        // A writer waiting is woken by the next push.
        let writer = tokio::spawn({
            let pushes = pushes.clone();
            async move { pushes.take().await }
        });
        pushes.queue(device(4), 8, Vec::new());
        let taken = writer.await.expect("writer");
        assert_eq!(queue(&taken[0]), (4, 8, vec![]));
    }

    #[tokio::test]
    async fn entries_that_do_not_follow_or_do_not_fit_are_left_to_a_fetch() {
        let pushes = StreamPushes::default();
        pushes.queue(device(1), 4, entries(3..5, 10));
        // A gap: not joined, the announcement still stands.
        pushes.queue(device(1), 9, entries(7..10, 10));
        let taken = pushes.take().await;
        assert_eq!(queue(&taken[0]), (1, 9, vec![3, 4]));

        // The stream's budget: devices past it get the announcement alone.
        let per_device = QUEUE_PUSH_BYTES_MAX / 2;
        let devices = (SUBSCRIPTION_ENTRY_BYTES_MAX / per_device + 8) as u64;
        for account in 0..devices {
            pushes.queue(device(account), 1, entries(1..2, per_device));
        }
        let held = lock(&pushes.waiting).entry_bytes;
        assert!(held <= SUBSCRIPTION_ENTRY_BYTES_MAX && held > SUBSCRIPTION_ENTRY_BYTES_MAX / 2);
        // A device left without its entries takes none later in this push either.
        let last = device(devices - 1);
        pushes.queue(last, 2, entries(2..3, 1));
        let taken = pushes.take().await;
        assert_eq!(taken.len(), devices as usize, "every device announced");
        let (_, latest, seqs) = queue(&taken[taken.len() - 1]);
        assert_eq!((latest, seqs), (2, vec![]));
        assert_eq!(queue(&taken[0]).2, vec![1]);
    }
}
