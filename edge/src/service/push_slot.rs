//! The push waiting for one device connection ([`PushSlot`]): the highest queue sequence
//! announced, the entries sent along as one gapless run, and the latest presence and typing
//! events, bounded, with a wake-up for the connection's writer.

use std::collections::BTreeMap;
use std::sync::Mutex;

use relay_proto::wire::{self, DeviceQueueAvailable, server_push};
use tokio::sync::Notify;

use crate::limits::DEVICE_EVENTS_WAITING_MAX;

/// The push waiting for one device connection. A push is a hint to fetch after the device's
/// cursor, so the one announcing the highest queue sequence says everything the others would:
/// a connection keeps that one number (and a wake-up) instead of a queue of frames, and never
/// drops a push. The entries the region sent along wait with it, as one gapless run of at most
/// [`relay_proto::limits::QUEUE_PUSH_BYTES_MAX`] (`wire::EntryRun`): an entry that does not follow the run, or does not fit, is left
/// for the device to fetch (it takes a run only where it follows its cursor).
///
/// Presence updates and typing notices wait beside it, the latest one per watched account and
/// per typing device and chat (a newer state replaces an older one nobody has read), at most
/// [`DEVICE_EVENTS_WAITING_MAX`].
#[derive(Default)]
pub(super) struct PushSlot {
    /// The queue push not written yet.
    queue: Mutex<WaitingQueue>,
    /// (kind, account, device, group) → the latest event of that key.
    events: Mutex<BTreeMap<(u8, u64, u32, u64), server_push::Event>>,
    wake: Notify,
}

/// What a connection's next queue push says.
#[derive(Default)]
struct WaitingQueue {
    /// The highest `latest_queue_seq` announced; `None`: no queue push waits.
    announced: Option<u64>,
    /// Entries sent along.
    entries: wire::EntryRun,
}

impl PushSlot {
    pub(super) fn handle_push(&self, latest_queue_seq: u64, entries: Vec<wire::QueueEntry>) {
        {
            let mut queue = self
                .queue
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let announced = queue
                .announced
                .map_or(latest_queue_seq, |known| known.max(latest_queue_seq));
            queue.announced = Some(announced);
            // An entry that does not join stays for the device to fetch, with those after it.
            for entry in entries {
                if !queue.entries.join(entry) {
                    break;
                }
            }
        }
        self.wake.notify_one();
    }

    /// A presence update or typing notice for the device.
    pub(super) fn handle_event(&self, event: server_push::Event) {
        let key = match &event {
            server_push::Event::Presence(info) => (1, info.account, 0, 0),
            server_push::Event::Typing(notice) => {
                (2, notice.from.account, notice.from.device, notice.group)
            }
            server_push::Event::QueueAvailable(_) => return,
        };
        {
            let mut events = self
                .events
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if events.len() >= DEVICE_EVENTS_WAITING_MAX && !events.contains_key(&key) {
                tracing::warn!("a device reads its events too slowly; dropping one");
                return;
            }
            events.insert(key, event);
        }
        self.wake.notify_one();
    }

    /// The next push to write: the highest queue sequence announced since the last one, else
    /// the oldest-keyed event waiting.
    pub(super) async fn next(&self) -> server_push::Event {
        loop {
            let waiting = {
                let mut queue = self
                    .queue
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                queue
                    .announced
                    .take()
                    .map(|latest| (latest, queue.entries.take()))
            };
            if let Some((latest_queue_seq, entries)) = waiting {
                return server_push::Event::QueueAvailable(DeviceQueueAvailable {
                    device: wire::DeviceAddr::default(),
                    latest_queue_seq,
                    entries,
                });
            }
            let event = self
                .events
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .pop_first();
            if let Some((_, event)) = event {
                return event;
            }
            // `notify_one` leaves a permit when nobody waits, so no push is missed in between.
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message as _;
    use relay_proto::limits::QUEUE_PUSH_BYTES_MAX;

    use super::*;

    fn queue(latest_queue_seq: u64) -> server_push::Event {
        queue_with(latest_queue_seq, &[])
    }

    /// A queue push with receipts numbered `seqs` along.
    fn queue_with(latest_queue_seq: u64, seqs: &[u64]) -> server_push::Event {
        server_push::Event::QueueAvailable(DeviceQueueAvailable {
            device: wire::DeviceAddr::default(),
            latest_queue_seq,
            entries: entries(seqs),
        })
    }

    fn entries(seqs: &[u64]) -> Vec<wire::QueueEntry> {
        seqs.iter()
            .map(|&queue_seq| wire::QueueEntry {
                queue_seq,
                item: Some(wire::queue_entry::Item::Receipt(wire::QueuedReceipt {
                    chat: vec![7; 32],
                    client_message_id: vec![1; 16],
                    recipient: wire::DeviceAddr {
                        account: 2,
                        device: 1,
                    },
                    state: wire::ReceiptState::Delivered as i32,
                    at_ms: 5,
                    sender: wire::DeviceAddr {
                        account: 1,
                        device: 1,
                    },
                })),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_push_slot_keeps_the_highest_announcement_and_misses_none() {
        let slot = PushSlot::default();
        // Announced before anyone waits: kept, the highest standing for the others.
        slot.handle_push(3, Vec::new());
        slot.handle_push(9, Vec::new());
        slot.handle_push(4, Vec::new());
        assert_eq!(slot.next().await, queue(9));
        // A nudge without a sequence (0) is still a push.
        slot.handle_push(0, Vec::new());
        assert_eq!(slot.next().await, queue(0));
        // Nothing waiting: the next push wakes the writer.
        let slot = Arc::new(slot);
        let writer = tokio::spawn({
            let slot = slot.clone();
            async move { slot.next().await }
        });
        slot.handle_push(12, Vec::new());
        assert_eq!(writer.await.expect("writer"), queue(12));
        let queue = slot.queue.lock().expect("queue");
        assert!(
            queue.announced.is_none() && queue.entries.entries().is_empty(),
            "nothing left over"
        );
    }

    #[tokio::test]
    async fn a_push_slot_keeps_one_gapless_run_of_entries_within_its_budget() {
        let slot = PushSlot::default();
        // Runs that follow each other join; the highest announcement stands.
        slot.handle_push(4, entries(&[3, 4]));
        slot.handle_push(6, entries(&[5, 6]));
        assert_eq!(slot.next().await, queue_with(6, &[3, 4, 5, 6]));
        // One that does not follow (a gap, or a repeat) stays for the device to fetch, and so
        // does everything after it: the device takes only a run that follows its cursor.
        slot.handle_push(8, entries(&[7, 8]));
        slot.handle_push(11, entries(&[10, 11]));
        slot.handle_push(12, entries(&[8, 9]));
        slot.handle_push(13, Vec::new());
        assert_eq!(slot.next().await, queue_with(13, &[7, 8]));
        // A hint alone, after entries went: nothing is sent along again.
        slot.handle_push(13, Vec::new());
        assert_eq!(slot.next().await, queue(13));
        // The budget: entries stop at QUEUE_PUSH_BYTES_MAX encoded.
        let many: Vec<u64> = (100..100 + QUEUE_PUSH_BYTES_MAX as u64).collect();
        slot.handle_push(many[many.len() - 1], entries(&many));
        let server_push::Event::QueueAvailable(available) = slot.next().await else {
            panic!("a queue push");
        };
        let bytes: usize = available
            .entries
            .iter()
            .map(|entry| entry.encoded_len())
            .sum();
        assert!(bytes <= QUEUE_PUSH_BYTES_MAX, "{bytes} bytes along");
        assert!(available.entries.len() > 1 && available.entries.len() < many.len());
        assert_eq!(available.entries[0].queue_seq, 100);
        assert_eq!(available.latest_queue_seq, many[many.len() - 1]);
    }

    #[tokio::test]
    async fn a_push_slot_keeps_the_latest_presence_and_typing_of_each_and_is_bounded() {
        let slot = PushSlot::default();
        let presence = |account: u64, state: wire::PresenceState| {
            server_push::Event::Presence(wire::PresenceInfo {
                account,
                state: state as i32,
                last_seen_ms: 0,
            })
        };
        let typing_in = |account: u64, group: u64, typing: bool| {
            server_push::Event::Typing(wire::TypingNotice {
                to: wire::DeviceAddr::default(),
                from: wire::DeviceAddr { account, device: 1 },
                typing,
                group,
            })
        };
        let typing = |account: u64, typing: bool| typing_in(account, 0, typing);
        slot.handle_event(presence(5, wire::PresenceState::Online));
        slot.handle_event(typing(5, true));
        slot.handle_event(typing_in(5, 3, true));
        slot.handle_event(presence(5, wire::PresenceState::Offline));
        slot.handle_event(typing(5, false));
        slot.handle_push(7, Vec::new());
        // The queue hint first, then the latest of each event (a group's typing apart).
        assert_eq!(slot.next().await, queue(7));
        assert_eq!(slot.next().await, presence(5, wire::PresenceState::Offline));
        assert_eq!(slot.next().await, typing(5, false));
        assert_eq!(slot.next().await, typing_in(5, 3, true));
        // A device that reads nothing holds at most the bound.
        for account in 0..(DEVICE_EVENTS_WAITING_MAX as u64 + 50) {
            slot.handle_event(presence(account, wire::PresenceState::Online));
        }
        let held = slot.events.lock().expect("events").len();
        assert_eq!(held, DEVICE_EVENTS_WAITING_MAX);
    }
}
