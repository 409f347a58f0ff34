//! One ordered lane per chat: the envelopes of a chat are committed one batch at a time, in each
//! sender's `sender_seq` order, so a device can keep several envelopes of one chat in flight
//! without having them bounced. Sans-IO: envelopes come in through [`ChatLanes::handle_arrival`]
//! with the time, batches and lookups go out through [`ChatLanes::poll`], and what a batch's
//! commit said comes back through [`ChatLanes::handle_committed`]; the service runs the
//! transactions and the timers.
//!
//! **Why.** Envelopes of one chat sent back to back travel on separate QUIC streams and, through
//! the edge, as separate requests: they reach the region in any order, and each used to run its
//! own transaction. One that overtook its predecessor was refused with "resend from k", and two
//! that ran at once conflicted on the chat's sequence counter. Now a lane runs one transaction at
//! a time per chat holding every envelope that is ready, sorted per sender, so a burst costs one
//! group commit instead of one each.
//!
//! **Ready, held, released.** The lane knows the `sender_seq` each sender device should send
//! next in the chat (learned from commits, or asked of the store the first time, see
//! [`LanePoll::Lookup`]). An envelope at that number is ready, and so is each one after it that
//! arrived (a contiguous run); an envelope below it is ready too (a retry or a rolled-back
//! device: the chat log answers it). An envelope above it waits for its predecessor, at most
//! [`HOLD_MS_MAX`]; then it is released anyway and the chat log answers "resend from k", which is
//! what a real gap gets (the hold runs from the first of the sender's waiting envelopes). So "resend from k" stays for real gaps, and the chat log still checks
//! every envelope: the lane only orders, it never decides.
//!
//! **Bounds.** At most [`LANE_ENVELOPES_MAX`] envelopes wait in one lane (more is refused as
//! overloaded, with a retry hint); a batch holds at most [`BATCH_ENVELOPES_MAX`] envelopes and
//! [`BATCH_BYTES_MAX`] bytes (far below a transaction's 10 MB); the next-number memory keeps at
//! most [`EXPECTED_ENTRIES_MAX`] (chat, sender) pairs, forgetting the least recently used half
//! when full (a forgotten pair is asked of the store again).

use std::collections::{BTreeMap, HashMap};

use relay_proto::{ChatId, DeviceAddress};

pub use crate::limits::{
    BATCH_BYTES_MAX, BATCH_ENVELOPES_MAX, EXPECTED_ENTRIES_MAX, HOLD_MS_MAX, LANE_ENVELOPES_MAX,
};

/// A waiting envelope's handle: the service keeps the envelope and its answer under it.
pub type Ticket = u64;

/// What [`ChatLanes::handle_arrival`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The lane was idle: start running it (poll it until [`LanePoll::Idle`]).
    Start,
    /// The lane is running: the envelope waits its turn.
    Queued,
    /// The lane is full: refuse the envelope (overloaded, retry later).
    Full,
}

/// What a lane wants next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LanePoll {
    /// Commit these envelopes, in this order, in one transaction, then report what each got.
    Batch(Vec<Ticket>),
    /// Read the last `sender_seq` stored for this sender in the chat, then report it with
    /// [`ChatLanes::handle_lookup`].
    Lookup(DeviceAddress),
    /// Nothing is ready: poll again at this time (ms), or when an envelope arrives.
    WaitUntil(u64),
    /// Nothing waits: the lane stopped (the next arrival starts it again).
    Idle,
}

/// What a commit said about one envelope, as far as ordering goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Stored (or stored before: a duplicate).
    Stored,
    /// Refused with "resend from": the chat log expects this number next.
    Expects(u64),
    /// Refused for another reason: nothing learned.
    Other,
}

#[derive(Debug, Clone)]
struct Waiting {
    ticket: Ticket,
    sender: DeviceAddress,
    sender_seq: u64,
    /// The previous number the sender says must be stored first (a group envelope's
    /// `group_prev_seq`); `None`: the one before (1:1).
    prev: Option<u64>,
    bytes: usize,
    arrived_ms: u64,
}

#[derive(Debug, Default)]
struct Lane {
    /// Envelopes waiting, in arrival order.
    waiting: Vec<Waiting>,
    /// A batch or a lookup is out.
    busy: bool,
}

/// Every chat's lane, and the next `sender_seq` of each (chat, sender) seen lately.
#[derive(Debug)]
pub struct ChatLanes {
    /// How long an envelope waits for its predecessor, in ms (at most [`HOLD_MS_MAX`]).
    hold_ms: u64,
    lanes: HashMap<ChatId, Lane>,
    /// Recently used next numbers; `older` is the generation before, consulted and promoted.
    expected: HashMap<(ChatId, DeviceAddress), u64>,
    older: HashMap<(ChatId, DeviceAddress), u64>,
}

impl Default for ChatLanes {
    fn default() -> Self {
        Self::new()
    }
}

impl ChatLanes {
    /// No lane yet; an early envelope waits [`HOLD_MS_MAX`] for its predecessor.
    pub fn new() -> Self {
        Self::with_hold_ms(HOLD_MS_MAX)
    }

    /// No lane yet; an early envelope waits `hold_ms` (at most [`HOLD_MS_MAX`]) for its
    /// predecessor. With 0 nothing is held: an envelope that overtook its predecessor is
    /// answered "resend from k" at once, as before lanes (the simulation runs both).
    pub fn with_hold_ms(hold_ms: u64) -> Self {
        Self {
            hold_ms: hold_ms.min(HOLD_MS_MAX),
            lanes: HashMap::new(),
            expected: HashMap::new(),
            older: HashMap::new(),
        }
    }

    /// Changes how long an early envelope waits (at most [`HOLD_MS_MAX`]).
    pub fn set_hold_ms(&mut self, hold_ms: u64) {
        self.hold_ms = hold_ms.min(HOLD_MS_MAX);
    }

    /// An envelope of `chat` from `sender` at `sender_seq`, `bytes` long, arrived at `now_ms`;
    /// a group envelope names the previous number that must be stored first (`prev`, 0: none),
    /// so it is in order once that one is, whatever numbers went to other regions in between.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_arrival(
        &mut self,
        chat: ChatId,
        ticket: Ticket,
        sender: DeviceAddress,
        sender_seq: u64,
        prev: Option<u64>,
        bytes: usize,
        now_ms: u64,
    ) -> Arrival {
        let lane = self.lanes.entry(chat).or_default();
        if lane.waiting.len() >= LANE_ENVELOPES_MAX {
            return Arrival::Full;
        }
        lane.waiting.push(Waiting {
            ticket,
            sender,
            sender_seq,
            prev,
            bytes,
            arrived_ms: now_ms,
        });
        if lane.busy {
            Arrival::Queued
        } else {
            lane.busy = true;
            Arrival::Start
        }
    }

    /// What the lane of `chat` wants now. A [`LanePoll::Batch`] or [`LanePoll::Lookup`] keeps
    /// the lane busy until its answer comes back; [`LanePoll::Idle`] stops it.
    pub fn poll(&mut self, chat: ChatId, now_ms: u64) -> LanePoll {
        let Some(lane) = self.lanes.get(&chat) else {
            return LanePoll::Idle;
        };
        if lane.waiting.is_empty() {
            self.lanes.remove(&chat);
            return LanePoll::Idle;
        }
        // Senders in the order their first waiting envelope arrived.
        let mut senders: Vec<DeviceAddress> = Vec::new();
        for waiting in &lane.waiting {
            if !senders.contains(&waiting.sender) {
                senders.push(waiting.sender);
            }
        }
        let mut next: BTreeMap<DeviceAddress, u64> = BTreeMap::new();
        for &sender in &senders {
            match self.next_expected(chat, sender) {
                Some(expected) => {
                    next.insert(sender, expected);
                }
                None => return LanePoll::Lookup(sender),
            }
        }
        let Some(lane) = self.lanes.get_mut(&chat) else {
            return LanePoll::Idle;
        };
        let mut batch: Vec<usize> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut earliest_release: Option<u64> = None;
        'senders: for sender in senders {
            let mut mine: Vec<usize> = (0..lane.waiting.len())
                .filter(|&index| lane.waiting[index].sender == sender)
                .collect();
            mine.sort_by_key(|&index| lane.waiting[index].sender_seq);
            let mut expected = next[&sender];
            // A sender's envelopes wait together from the first that arrived: once that one
            // has waited its bound, the run goes, in order, and the chat log answers the gap.
            let waiting_since = mine
                .iter()
                .map(|&index| lane.waiting[index].arrived_ms)
                .min()
                .unwrap_or(now_ms);
            let released = now_ms.saturating_sub(waiting_since) >= self.hold_ms;
            for index in mine {
                let waiting = &lane.waiting[index];
                let in_order = waiting.sender_seq <= expected
                    || waiting.prev.is_some_and(|prev| prev < expected);
                if !in_order && !released {
                    let release = waiting_since + self.hold_ms;
                    earliest_release = Some(earliest_release.map_or(release, |e| e.min(release)));
                    // Everything after a held envelope of this sender waits behind it.
                    continue 'senders;
                }
                if batch.len() == BATCH_ENVELOPES_MAX
                    || (!batch.is_empty() && batch_bytes + waiting.bytes > BATCH_BYTES_MAX)
                {
                    break 'senders;
                }
                batch_bytes += waiting.bytes;
                batch.push(index);
                expected = expected.max(waiting.sender_seq + 1);
            }
        }
        if batch.is_empty() {
            return match earliest_release {
                Some(at) => LanePoll::WaitUntil(at),
                // Unreachable: a waiting envelope is either taken or held.
                None => LanePoll::Idle,
            };
        }
        let tickets = batch
            .iter()
            .map(|&index| lane.waiting[index].ticket)
            .collect();
        let mut taken = batch;
        taken.sort_unstable();
        for index in taken.into_iter().rev() {
            lane.waiting.remove(index);
        }
        LanePoll::Batch(tickets)
    }

    /// The batch of `chat` was committed (or failed): what each of its envelopes got, as
    /// (sender, sender_seq, what it says). The lane is free for its next batch.
    pub fn handle_committed(&mut self, chat: ChatId, outcomes: &[(DeviceAddress, u64, Committed)]) {
        for &(sender, sender_seq, outcome) in outcomes {
            match outcome {
                Committed::Stored => {
                    let expected = self.next_expected(chat, sender).unwrap_or(0);
                    self.remember(chat, sender, expected.max(sender_seq + 1));
                }
                Committed::Expects(expected) => self.remember(chat, sender, expected),
                Committed::Other => {}
            }
        }
    }

    /// The store says `sender`'s last stored `sender_seq` in `chat` is `last` (0: none).
    pub fn handle_lookup(&mut self, chat: ChatId, sender: DeviceAddress, last: u64) {
        self.remember(chat, sender, last + 1);
    }

    /// The store could not say `sender`'s last number in `chat`: its envelopes are not held
    /// (each goes when its turn comes, and the chat log answers any gap).
    pub fn handle_lookup_failed(&mut self, chat: ChatId, sender: DeviceAddress) {
        self.remember(chat, sender, u64::MAX);
    }

    /// Envelopes waiting in `chat`'s lane.
    pub fn waiting(&self, chat: ChatId) -> usize {
        self.lanes.get(&chat).map_or(0, |lane| lane.waiting.len())
    }

    fn next_expected(&mut self, chat: ChatId, sender: DeviceAddress) -> Option<u64> {
        if let Some(&expected) = self.expected.get(&(chat, sender)) {
            return Some(expected);
        }
        let promoted = self.older.remove(&(chat, sender))?;
        self.remember(chat, sender, promoted);
        Some(promoted)
    }

    fn remember(&mut self, chat: ChatId, sender: DeviceAddress, expected: u64) {
        if self.expected.len() >= EXPECTED_ENTRIES_MAX / 2
            && !self.expected.contains_key(&(chat, sender))
        {
            // The generation before is forgotten; this one becomes it.
            self.older = std::mem::take(&mut self.expected);
        }
        self.expected.insert((chat, sender), expected);
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::{AccountId, DeviceId};

    use super::*;

    const CHAT: ChatId = ChatId([1; 16]);

    fn device(account: u64) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(account),
            device: DeviceId(1),
        }
    }

    fn arrive(lanes: &mut ChatLanes, ticket: Ticket, sender: u64, seq: u64, now: u64) -> Arrival {
        lanes.handle_arrival(CHAT, ticket, device(sender), seq, None, 100, now)
    }

    #[test]
    fn an_unknown_sender_is_looked_up_then_its_burst_goes_in_order_in_one_batch() {
        let mut lanes = ChatLanes::new();
        assert_eq!(arrive(&mut lanes, 3, 1, 3, 0), Arrival::Start);
        assert_eq!(arrive(&mut lanes, 1, 1, 1, 0), Arrival::Queued);
        assert_eq!(arrive(&mut lanes, 2, 1, 2, 0), Arrival::Queued);
        assert_eq!(lanes.poll(CHAT, 0), LanePoll::Lookup(device(1)));
        lanes.handle_lookup(CHAT, device(1), 0);
        assert_eq!(lanes.poll(CHAT, 0), LanePoll::Batch(vec![1, 2, 3]));
        lanes.handle_committed(
            CHAT,
            &[
                (device(1), 1, Committed::Stored),
                (device(1), 2, Committed::Stored),
                (device(1), 3, Committed::Stored),
            ],
        );
        assert_eq!(lanes.poll(CHAT, 1), LanePoll::Idle);
        // The next number is remembered after the lane stopped.
        assert_eq!(arrive(&mut lanes, 4, 1, 4, 5), Arrival::Start);
        assert_eq!(lanes.poll(CHAT, 5), LanePoll::Batch(vec![4]));
    }

    #[test]
    fn an_early_envelope_waits_for_its_predecessor_then_is_released_to_meet_the_gap() {
        let mut lanes = ChatLanes::new();
        lanes.handle_lookup(CHAT, device(1), 4);
        assert_eq!(arrive(&mut lanes, 7, 1, 7, 10), Arrival::Start);
        assert_eq!(arrive(&mut lanes, 6, 1, 6, 11), Arrival::Queued);
        // 5 is missing: 6 and 7 wait.
        assert_eq!(lanes.poll(CHAT, 20), LanePoll::WaitUntil(10 + HOLD_MS_MAX));
        // It arrives: all three go, in order.
        assert_eq!(arrive(&mut lanes, 5, 1, 5, 30), Arrival::Queued);
        assert_eq!(lanes.poll(CHAT, 30), LanePoll::Batch(vec![5, 6, 7]));
        lanes.handle_committed(CHAT, &[(device(1), 5, Committed::Stored)]);
        // A real gap: 9 never comes; 10 is released after the hold, and the chat log answers.
        assert_eq!(arrive(&mut lanes, 10, 1, 10, 100), Arrival::Queued);
        assert_eq!(
            lanes.poll(CHAT, 100),
            LanePoll::WaitUntil(100 + HOLD_MS_MAX)
        );
        assert_eq!(
            lanes.poll(CHAT, 100 + HOLD_MS_MAX),
            LanePoll::Batch(vec![10])
        );
        lanes.handle_committed(CHAT, &[(device(1), 10, Committed::Expects(8))]);
        assert_eq!(arrive(&mut lanes, 8, 1, 8, 2_000), Arrival::Queued);
        assert_eq!(lanes.poll(CHAT, 2_000), LanePoll::Batch(vec![8]));
    }

    #[test]
    fn a_group_envelope_is_not_held_for_numbers_that_went_to_other_regions() {
        let mut lanes = ChatLanes::new();
        // This region never held the sender's 1..=6 (they went to other regions only).
        lanes.handle_lookup(CHAT, device(1), 0);
        assert_eq!(
            lanes.handle_arrival(CHAT, 8, device(1), 8, Some(7), 100, 10),
            Arrival::Start
        );
        assert_eq!(
            lanes.poll(CHAT, 10),
            LanePoll::WaitUntil(10 + HOLD_MS_MAX),
            "8 waits for 7"
        );
        assert_eq!(
            lanes.handle_arrival(CHAT, 7, device(1), 7, Some(0), 100, 11),
            Arrival::Queued
        );
        assert_eq!(lanes.poll(CHAT, 11), LanePoll::Batch(vec![7, 8]));
    }

    #[test]
    fn retries_and_other_senders_are_never_held() {
        let mut lanes = ChatLanes::new();
        lanes.handle_lookup(CHAT, device(1), 5);
        lanes.handle_lookup(CHAT, device(2), 0);
        arrive(&mut lanes, 1, 1, 9, 0); // early: held
        arrive(&mut lanes, 2, 2, 1, 0); // another sender, in order
        arrive(&mut lanes, 3, 1, 3, 0); // a retry below the next number
        assert_eq!(lanes.poll(CHAT, 0), LanePoll::Batch(vec![3, 2]));
        assert_eq!(lanes.waiting(CHAT), 1);
    }

    #[test]
    fn batches_and_lanes_are_bounded() {
        let mut lanes = ChatLanes::new();
        lanes.handle_lookup(CHAT, device(1), 0);
        for seq in 1..=LANE_ENVELOPES_MAX as u64 {
            assert_ne!(arrive(&mut lanes, seq, 1, seq, 0), Arrival::Full);
        }
        assert_eq!(arrive(&mut lanes, 0, 1, 0, 0), Arrival::Full);
        let LanePoll::Batch(first) = lanes.poll(CHAT, 0) else {
            panic!("a batch");
        };
        assert_eq!(first.len(), BATCH_ENVELOPES_MAX);
        assert_eq!(first[0], 1);
        // Big envelopes: a batch stops at its byte bound (one envelope always goes).
        let other = ChatId([2; 16]);
        lanes.handle_lookup(other, device(1), 0);
        for seq in 1..=3 {
            lanes.handle_arrival(
                other,
                100 + seq,
                device(1),
                seq,
                None,
                BATCH_BYTES_MAX / 2,
                0,
            );
        }
        assert_eq!(lanes.poll(other, 0), LanePoll::Batch(vec![101, 102]));
    }

    #[test]
    fn the_next_number_memory_is_bounded_and_keeps_what_is_in_use() {
        let mut lanes = ChatLanes::new();
        let sender = device(1);
        for chat in 0..EXPECTED_ENTRIES_MAX as u64 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&chat.to_be_bytes());
            lanes.handle_lookup(ChatId(id), sender, chat);
        }
        assert!(lanes.expected.len() + lanes.older.len() <= EXPECTED_ENTRIES_MAX);
        let mut last = [0u8; 16];
        last[..8].copy_from_slice(&(EXPECTED_ENTRIES_MAX as u64 - 1).to_be_bytes());
        assert_eq!(
            lanes.next_expected(ChatId(last), sender),
            Some(EXPECTED_ENTRIES_MAX as u64)
        );
    }
}
