//! The outbox's decisions, sans IO: which envelope goes next, when a failed one is retried, and
//! what each send outcome means. No sockets, no clock, no store: the caller feeds `now` and a
//! random source, persists what [`Next`] says, and performs the sends.
//!
//! Rules:
//! - One chat's entries go strictly in `sender_seq` order. Up to
//!   [`PIPELINE_WINDOW`](crate::limits::PIPELINE_WINDOW) of them are in flight at once, so a
//!   burst is not paced by the round trip (a phone far from its edge sends ten messages in one
//!   round trip, not ten); fewer when each reaches many devices (a large group,
//!   [`pipeline_window`]), so the deliveries in flight stay bounded. The network may deliver them
//!   out of order; the region holds an early one until its predecessor arrives, and refuses an
//!   envelope whose predecessor never comes with "resend from k" (that check is what keeps sender
//!   FIFO, invariant I3), and the entry waits for it.
//! - After any outcome other than "sent", the chat goes one at a time until its head is
//!   confirmed: trouble is handled with nothing else of the chat in flight.
//! - A retry reuses the same client message id and sender_seq (idempotence, I4); after a retryable
//!   failure the chat waits a jittered exponential backoff between [`RETRY_DELAY_MS_MIN`] and
//!   [`RETRY_DELAY_MS_MAX`], or longer when the server asked for a longer wait (up to the
//!   maximum).
//! - "Mismatched devices" asks the caller to re-encrypt the same content, then resends at once.
//! - "Resend from k": sending in order means the region lacks `k`, which this device does not
//!   hold either: an entry refused before it left (its envelope could not be built) left a gap.
//!   The chat's unconfirmed entries from `k` on are renumbered from `k`, keeping their order and
//!   ids, and resent in order. Entries below `k` keep their numbers: the region holds them (their
//!   answers were lost), so they are answered as duplicates. Numbers only ever move down to a
//!   `k` the region asked for, never onto one it already holds: a new envelope under a number
//!   the region holds is what a device restored from an older copy sends, and the region
//!   refuses that as rolled back.

use std::collections::{BTreeMap, BTreeSet};

use crate::limits::{
    MISMATCHES_IN_A_ROW_MAX, RESENDS_IN_A_ROW_MAX, RETRY_DELAY_MS_MAX, RETRY_DELAY_MS_MIN,
    pipeline_window,
};
use rand::Rng;
use relay_proto::{ChatId, ClientMessageId};

/// The delay before retry number `attempt` (from 1): exponential from the minimum, capped at the
/// maximum, with "equal jitter" (uniform in the upper half of the step), never below the minimum.
pub fn retry_delay_ms(attempt: u32, rng: &mut impl Rng) -> u64 {
    let exponent = attempt.saturating_sub(1).min(20);
    let step = RETRY_DELAY_MS_MIN
        .saturating_mul(1 << exponent)
        .min(RETRY_DELAY_MS_MAX);
    let low = (step / 2).max(RETRY_DELAY_MS_MIN);
    if low >= step {
        step
    } else {
        rng.random_range(low..=step)
    }
}

/// An entry waiting in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// The chat.
    pub chat: ChatId,
    /// The sender device's counter in the chat.
    pub sender_seq: u64,
    /// The idempotency key.
    pub client_message_id: ClientMessageId,
}

/// How a send of one entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every destination region stored it.
    Sent,
    /// The envelope did not cover exactly the current devices; the caller updated its device lists.
    Mismatched,
    /// The region expects this sender_seq next.
    ResendFrom(u64),
    /// A retryable error or a lost connection.
    Retry,
    /// A retryable error whose server asked to wait this long first (ms; at most
    /// [`RETRY_DELAY_MS_MAX`] is honoured, so no answer can hold the outbox back for long).
    RetryAfter(u64),
    /// A permanent refusal: the entry can never be sent as it is.
    Refused,
}

/// What the caller must do after an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The entry is sent: remove it from the store and mark the message sent.
    Confirmed(Pending),
    /// Re-encrypt the same content for the current devices, store the new envelope, then call
    /// [`Outbox::handle_reencrypted`] (or report [`Outcome::Retry`] if that failed).
    Reencrypt(Pending),
    /// Store these new sender_seqs (and rewrite the stored envelopes); the chat resends at once.
    Renumber {
        /// The chat.
        chat: ChatId,
        /// Each moved entry: its id, old sender_seq and new sender_seq.
        moves: Vec<(ClientMessageId, u64, u64)>,
        /// The chat's next sender_seq after the renumbering.
        next_sender_seq: u64,
    },
    /// Nothing to store; the chat's head is retried at this time (ms).
    RetryAt(u64),
    /// The entry was given up: remove it from the store and mark the message failed.
    Dropped(Pending),
}

/// Why the caller's report does not fit the outbox's state (a bug in the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbox: {0}")]
pub struct OutboxError(String);

#[derive(Debug, Default)]
struct ChatQueue {
    entries: BTreeMap<u64, ClientMessageId>,
    /// The sender_seqs in flight.
    in_flight: BTreeSet<u64>,
    /// One at a time until the head is confirmed (after an outcome other than "sent").
    stalled: bool,
    /// Devices each of the chat's envelopes reaches, as last said (0: not said).
    fanout_devices: usize,
    /// The highest sender_seq confirmed sent.
    confirmed_through: u64,
    due_at_ms: u64,
    attempts: u32,
    mismatches: u32,
    resends: u32,
}

impl ChatQueue {
    /// The next entry that may go now (ignoring time): the first not in flight, if the window
    /// has room (a stalled chat sends nothing while anything is in flight).
    fn sendable(&self) -> Option<(u64, ClientMessageId)> {
        let window = if self.stalled {
            1
        } else {
            pipeline_window(self.fanout_devices)
        };
        if self.in_flight.len() >= window {
            return None;
        }
        self.entries
            .iter()
            .find(|(seq, _)| !self.in_flight.contains(seq))
            .map(|(seq, id)| (*seq, *id))
    }
}

/// The outbox state machine.
#[derive(Debug, Default)]
pub struct Outbox {
    chats: BTreeMap<ChatId, ChatQueue>,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry (a new message, or one loaded from the store); it is due at once.
    pub fn insert(&mut self, entry: Pending, now_ms: u64) -> Result<(), OutboxError> {
        let queue = self.chats.entry(entry.chat).or_default();
        if queue.entries.contains_key(&entry.sender_seq) {
            return Err(OutboxError(format!(
                "sender_seq {} is already queued",
                entry.sender_seq
            )));
        }
        if queue.entries.is_empty() {
            queue.due_at_ms = now_ms;
        }
        queue
            .entries
            .insert(entry.sender_seq, entry.client_message_id);
        Ok(())
    }

    /// Says how many devices each envelope of `chat` reaches (a group's member devices): the
    /// chat's window narrows as that grows ([`pipeline_window`]). Said again whenever the chat
    /// gets new entries, since an emptied chat forgets it.
    pub fn set_fanout(&mut self, chat: ChatId, devices: usize) {
        if let Some(queue) = self.chats.get_mut(&chat) {
            queue.fanout_devices = devices;
        }
    }

    /// Entries waiting, over all chats.
    pub fn len(&self) -> usize {
        self.chats.values().map(|queue| queue.entries.len()).sum()
    }

    /// Entries waiting in `chat`.
    pub fn chat_len(&self, chat: ChatId) -> usize {
        self.chats.get(&chat).map_or(0, |queue| queue.entries.len())
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.chats.values().all(|queue| queue.entries.is_empty())
    }

    /// The highest `sender_seq` of `chat` below `sender_seq` that still waits (0: none): in a
    /// group chat, the previous number a region must hold first (`Envelope::group_prev_seq`).
    pub fn waiting_below(&self, chat: ChatId, sender_seq: u64) -> u64 {
        self.chats
            .get(&chat)
            .and_then(|queue| queue.entries.range(..sender_seq).next_back())
            .map_or(0, |(&seq, _)| seq)
    }

    /// Whether an entry of `chat` at `sender_seq` waits.
    pub fn holds(&self, chat: ChatId, sender_seq: u64) -> bool {
        self.chats
            .get(&chat)
            .is_some_and(|queue| queue.entries.contains_key(&sender_seq))
    }

    /// Whether an entry with this id waits.
    pub fn contains(&self, client_message_id: ClientMessageId) -> bool {
        self.chats
            .values()
            .any(|queue| queue.entries.values().any(|id| *id == client_message_id))
    }

    /// Every waiting entry, by chat and sender_seq.
    pub fn entries(&self) -> Vec<Pending> {
        self.chats
            .iter()
            .flat_map(|(chat, queue)| {
                queue
                    .entries
                    .iter()
                    .map(|(&sender_seq, &client_message_id)| Pending {
                        chat: *chat,
                        sender_seq,
                        client_message_id,
                    })
            })
            .collect()
    }

    /// Forgets an entry that is not in flight (another process sent or renumbered it); `false`
    /// if it is unknown or in flight.
    pub fn remove(&mut self, entry: Pending) -> bool {
        let Some(queue) = self.chats.get_mut(&entry.chat) else {
            return false;
        };
        if queue.in_flight.contains(&entry.sender_seq)
            || queue.entries.get(&entry.sender_seq) != Some(&entry.client_message_id)
        {
            return false;
        }
        queue.entries.remove(&entry.sender_seq);
        if queue.entries.is_empty() {
            self.chats.remove(&entry.chat);
        }
        true
    }

    /// The next entry to send now: the first entry not in flight of a due chat whose window
    /// has room (earliest due first). It counts as in flight until its outcome is handled.
    pub fn poll_transmit(&mut self, now_ms: u64) -> Option<Pending> {
        let (chat, queue, (sender_seq, client_message_id)) = self
            .chats
            .iter_mut()
            .filter(|(_, queue)| queue.due_at_ms <= now_ms)
            .filter_map(|(chat, queue)| queue.sendable().map(|next| (chat, queue, next)))
            .min_by_key(|(_, queue, _)| queue.due_at_ms)?;
        queue.in_flight.insert(sender_seq);
        Some(Pending {
            chat: *chat,
            sender_seq,
            client_message_id,
        })
    }

    /// When the earliest chat with an entry ready to go becomes due (ms), if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.chats
            .values()
            .filter(|queue| queue.sendable().is_some())
            .map(|queue| queue.due_at_ms)
            .min()
    }

    /// Handles how the send of an entry returned by [`Outbox::poll_transmit`] ended.
    pub fn handle_outcome(
        &mut self,
        entry: Pending,
        outcome: Outcome,
        now_ms: u64,
        rng: &mut impl Rng,
    ) -> Result<Next, OutboxError> {
        let queue = self.in_flight_queue(entry)?;
        if outcome != Outcome::Sent {
            queue.stalled = true;
        }
        match outcome {
            Outcome::Sent | Outcome::Refused => {
                let was_head =
                    queue.entries.first_key_value().map(|(seq, _)| *seq) == Some(entry.sender_seq);
                queue.entries.remove(&entry.sender_seq);
                queue.in_flight.remove(&entry.sender_seq);
                if outcome == Outcome::Sent {
                    queue.confirmed_through = queue.confirmed_through.max(entry.sender_seq);
                }
                if was_head {
                    queue.due_at_ms = queue.due_at_ms.min(now_ms);
                    queue.attempts = 0;
                    queue.mismatches = 0;
                    queue.resends = 0;
                    // The trouble is behind: pipeline again (a refused head leaves the chat
                    // careful until the next one is confirmed).
                    queue.stalled = outcome == Outcome::Refused;
                }
                if queue.entries.is_empty() {
                    self.chats.remove(&entry.chat);
                }
                Ok(if outcome == Outcome::Sent {
                    Next::Confirmed(entry)
                } else {
                    Next::Dropped(entry)
                })
            }
            Outcome::Mismatched => {
                queue.mismatches += 1;
                if queue.mismatches > MISMATCHES_IN_A_ROW_MAX {
                    queue.mismatches = 0;
                    return Ok(Self::back_off(queue, entry, now_ms, rng));
                }
                Ok(Next::Reencrypt(entry))
            }
            Outcome::ResendFrom(expected)
                if expected < entry.sender_seq && queue.entries.contains_key(&expected) =>
            {
                // The predecessor is still on its way (the network reordered them): this entry
                // goes again once the chat, now one at a time, reaches it.
                queue.in_flight.remove(&entry.sender_seq);
                Ok(Next::RetryAt(queue.due_at_ms))
            }
            Outcome::ResendFrom(expected)
                if expected < entry.sender_seq && expected <= queue.confirmed_through =>
            {
                // A stale answer: the predecessor it asked for has been confirmed since (the
                // region looked before that commit). Resend as it is.
                queue.in_flight.remove(&entry.sender_seq);
                Ok(Next::RetryAt(queue.due_at_ms))
            }
            Outcome::ResendFrom(_) if queue.in_flight.len() > 1 => {
                // Renumbering moves entries that are in flight: wait for their outcomes, then
                // resend this one alone, which asks again.
                queue.in_flight.remove(&entry.sender_seq);
                Ok(Next::RetryAt(queue.due_at_ms))
            }
            Outcome::ResendFrom(expected) => {
                queue.resends += 1;
                if expected == 0
                    || expected == entry.sender_seq
                    || queue.resends > RESENDS_IN_A_ROW_MAX
                {
                    queue.resends = 0;
                    return Ok(Self::back_off(queue, entry, now_ms, rng));
                }
                let old = std::mem::take(&mut queue.entries);
                let mut moves = Vec::new();
                let mut next_sender_seq = expected;
                for (old_seq, id) in old {
                    if old_seq < expected {
                        // Stored by the region already (the answer was lost): renumbering it
                        // would leave the gap at `expected` open for good.
                        queue.entries.insert(old_seq, id);
                        continue;
                    }
                    if old_seq != next_sender_seq {
                        moves.push((id, old_seq, next_sender_seq));
                    }
                    queue.entries.insert(next_sender_seq, id);
                    next_sender_seq += 1;
                }
                queue.in_flight.clear();
                queue.due_at_ms = now_ms;
                Ok(Next::Renumber {
                    chat: entry.chat,
                    moves,
                    next_sender_seq,
                })
            }
            Outcome::Retry => Ok(Self::back_off(queue, entry, now_ms, rng)),
            Outcome::RetryAfter(wait_ms) => {
                let next = Self::back_off(queue, entry, now_ms, rng);
                let hinted = now_ms.saturating_add(wait_ms.min(RETRY_DELAY_MS_MAX));
                queue.due_at_ms = queue.due_at_ms.max(hinted);
                Ok(match next {
                    Next::RetryAt(_) => Next::RetryAt(queue.due_at_ms),
                    other => other,
                })
            }
        }
    }

    /// The caller stored a re-encrypted envelope after [`Next::Reencrypt`]; resend at once.
    pub fn handle_reencrypted(&mut self, entry: Pending, now_ms: u64) -> Result<(), OutboxError> {
        let queue = self.in_flight_queue(entry)?;
        queue.in_flight.remove(&entry.sender_seq);
        queue.due_at_ms = now_ms;
        Ok(())
    }

    fn in_flight_queue(&mut self, entry: Pending) -> Result<&mut ChatQueue, OutboxError> {
        let queue = self
            .chats
            .get_mut(&entry.chat)
            .ok_or_else(|| OutboxError(format!("no entries for chat {}", entry.chat)))?;
        if !queue.in_flight.contains(&entry.sender_seq)
            || queue.entries.get(&entry.sender_seq) != Some(&entry.client_message_id)
        {
            return Err(OutboxError(format!(
                "entry {} (sender_seq {}) is not the chat's entry in flight",
                entry.client_message_id, entry.sender_seq
            )));
        }
        Ok(queue)
    }

    /// Takes `entry` out of flight and holds the chat back for a jittered, growing delay (the
    /// chat's other entries in flight still report their outcomes).
    fn back_off(queue: &mut ChatQueue, entry: Pending, now_ms: u64, rng: &mut impl Rng) -> Next {
        queue.attempts = queue.attempts.saturating_add(1);
        queue.in_flight.remove(&entry.sender_seq);
        queue.due_at_ms = now_ms.saturating_add(retry_delay_ms(queue.attempts, rng));
        Next::RetryAt(queue.due_at_ms)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::limits::PIPELINE_WINDOW;

    fn chat(byte: u8) -> ChatId {
        ChatId([byte; 16])
    }

    fn entry(chat_byte: u8, sender_seq: u64) -> Pending {
        let mut id = [0u8; 16];
        id[0] = chat_byte;
        id[8..].copy_from_slice(&sender_seq.to_be_bytes());
        Pending {
            chat: chat(chat_byte),
            sender_seq,
            client_message_id: ClientMessageId(id),
        }
    }

    #[test]
    fn a_chat_to_many_devices_keeps_fewer_in_flight() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut outbox = Outbox::new();
        let last = PIPELINE_WINDOW as u64 + 2;
        for seq in 1..=last {
            outbox.insert(entry(1, seq), 0).expect("insert");
        }
        // A group whose envelopes reach 1,023 devices: the deliveries in flight stay bounded.
        outbox.set_fanout(chat(1), 1_023);
        let narrow = crate::limits::pipeline_window(1_023);
        assert!(narrow < PIPELINE_WINDOW);
        assert!(narrow * 1_023 <= crate::limits::PIPELINE_DELIVERIES_IN_FLIGHT_MAX);
        let mut sent = Vec::new();
        while let Some(next) = outbox.poll_transmit(0) {
            sent.push(next.sender_seq);
        }
        assert_eq!(sent, (1..=narrow as u64).collect::<Vec<_>>());

        // One ✓ frees one place; a smaller group's fan-out widens the window to the full one.
        outbox
            .handle_outcome(entry(1, 1), Outcome::Sent, 0, &mut rng)
            .expect("sent");
        assert_eq!(
            outbox.poll_transmit(0).map(|e| e.sender_seq),
            Some(narrow as u64 + 1)
        );
        assert_eq!(outbox.poll_transmit(0), None);
        outbox.set_fanout(chat(1), 99);
        let mut more = 0;
        while outbox.poll_transmit(0).is_some() {
            more += 1;
        }
        assert_eq!(narrow + more, PIPELINE_WINDOW);

        // An unknown fan-out (a 1:1 chat) is the full window; so is a small group's; the
        // narrowest window still overlaps a round trip.
        assert_eq!(crate::limits::pipeline_window(0), PIPELINE_WINDOW);
        assert_eq!(crate::limits::pipeline_window(2), PIPELINE_WINDOW);
        assert_eq!(crate::limits::pipeline_window(128), PIPELINE_WINDOW);
        assert_eq!(
            crate::limits::pipeline_window(usize::MAX),
            crate::limits::PIPELINE_WINDOW_MIN
        );
    }

    #[test]
    fn one_chat_goes_in_order_up_to_the_window_at_once() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut outbox = Outbox::new();
        // Chat 1 holds the window and two more; they are inserted out of order.
        let window = PIPELINE_WINDOW as u64;
        let last = window + 2;
        for seq in [3, 1, 2].into_iter().chain(4..=last) {
            outbox.insert(entry(1, seq), 0).expect("insert");
        }
        outbox.insert(entry(2, 1), 0).expect("insert");
        assert!(
            outbox.insert(entry(2, 1), 0).is_err(),
            "duplicate sender_seq"
        );
        assert_eq!(outbox.len(), PIPELINE_WINDOW + 3);

        let mut sent = Vec::new();
        while let Some(next) = outbox.poll_transmit(0) {
            sent.push(next);
        }
        // Chat 1's first ones in order (the window), and chat 2's one.
        let chat_1: Vec<u64> = sent
            .iter()
            .filter(|e| e.chat == chat(1))
            .map(|e| e.sender_seq)
            .collect();
        assert_eq!(chat_1, (1..=window).collect::<Vec<_>>());
        assert_eq!(sent.len(), PIPELINE_WINDOW + 1);
        assert!(sent.contains(&entry(2, 1)));
        assert!(
            outbox
                .handle_outcome(entry(1, window + 1), Outcome::Sent, 0, &mut rng)
                .is_err(),
            "not in flight"
        );
        assert!(!outbox.remove(entry(1, 2)), "in flight");

        // Outcomes may come back in any order.
        assert_eq!(
            outbox.handle_outcome(entry(1, 2), Outcome::Sent, 0, &mut rng),
            Ok(Next::Confirmed(entry(1, 2)))
        );
        assert_eq!(
            outbox.poll_transmit(0),
            Some(entry(1, window + 1)),
            "room again"
        );
        assert_eq!(outbox.poll_transmit(0), None, "the window is full");
        for seq in [1].into_iter().chain(3..=window + 1) {
            outbox
                .handle_outcome(entry(1, seq), Outcome::Sent, 0, &mut rng)
                .expect("sent");
        }
        outbox
            .handle_outcome(entry(2, 1), Outcome::Sent, 0, &mut rng)
            .expect("sent");
        assert_eq!(outbox.entries(), vec![entry(1, last)]);
        assert!(!outbox.remove(entry(1, last + 1)), "unknown");
        assert_eq!(outbox.poll_transmit(0), Some(entry(1, last)));
        outbox
            .handle_outcome(entry(1, last), Outcome::Sent, 0, &mut rng)
            .expect("sent");
        assert!(outbox.is_empty());
        assert_eq!(outbox.poll_timeout(), None);
    }

    #[test]
    fn an_entry_that_overtook_its_predecessor_waits_for_it() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut outbox = Outbox::new();
        for seq in 1..=3 {
            outbox.insert(entry(1, seq), 0).expect("insert");
        }
        for seq in 1..=3 {
            assert_eq!(outbox.poll_transmit(0), Some(entry(1, seq)));
        }
        // 2 reached the region before 1: refused, no renumbering, no backoff.
        assert_eq!(
            outbox.handle_outcome(entry(1, 2), Outcome::ResendFrom(1), 0, &mut rng),
            Ok(Next::RetryAt(0))
        );
        assert_eq!(
            outbox.poll_transmit(0),
            None,
            "one at a time now, and 1 and 3 are in flight"
        );
        assert_eq!(
            outbox.handle_outcome(entry(1, 3), Outcome::ResendFrom(1), 0, &mut rng),
            Ok(Next::RetryAt(0))
        );
        assert_eq!(outbox.poll_transmit(0), None, "1 is still in flight");
        assert_eq!(
            outbox.handle_outcome(entry(1, 1), Outcome::Sent, 5, &mut rng),
            Ok(Next::Confirmed(entry(1, 1)))
        );
        // The head is confirmed: the chat pipelines again, from 2, same ids and sender_seqs.
        assert_eq!(outbox.poll_transmit(5), Some(entry(1, 2)));
        assert_eq!(outbox.poll_transmit(5), Some(entry(1, 3)));
        outbox
            .handle_outcome(entry(1, 2), Outcome::Sent, 5, &mut rng)
            .expect("sent");
        // 3's answer was made before 2 committed: stale, so 3 goes again unchanged.
        assert!(matches!(
            outbox.handle_outcome(entry(1, 3), Outcome::ResendFrom(2), 5, &mut rng),
            Ok(Next::RetryAt(due)) if due <= 5
        ));
        assert_eq!(outbox.poll_transmit(5), Some(entry(1, 3)));
    }

    #[test]
    fn a_failed_entry_holds_its_chat_back_to_one_at_a_time() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut outbox = Outbox::new();
        for seq in 1..=3 {
            outbox.insert(entry(1, seq), 0).expect("insert");
        }
        for seq in 1..=3 {
            assert_eq!(outbox.poll_transmit(0), Some(entry(1, seq)));
        }
        let Ok(Next::RetryAt(at)) = outbox.handle_outcome(entry(1, 1), Outcome::Retry, 0, &mut rng)
        else {
            panic!("a retry time");
        };
        // 2 and 3 still report: say 2 was refused for lack of 1, 3 was lost too.
        outbox
            .handle_outcome(entry(1, 2), Outcome::ResendFrom(1), 0, &mut rng)
            .expect("waits");
        outbox
            .handle_outcome(entry(1, 3), Outcome::Retry, 0, &mut rng)
            .expect("retry");
        let due = outbox.poll_timeout().expect("due later");
        assert!(due >= at);
        assert_eq!(
            outbox.poll_transmit(due),
            Some(entry(1, 1)),
            "the head alone"
        );
        assert_eq!(outbox.poll_transmit(due), None);
        outbox
            .handle_outcome(entry(1, 1), Outcome::Sent, due, &mut rng)
            .expect("sent");
        assert_eq!(outbox.poll_transmit(due), Some(entry(1, 2)));
        assert_eq!(outbox.poll_transmit(due), Some(entry(1, 3)));
    }

    #[test]
    fn backoff_stays_within_its_bounds_and_grows() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut previous_cap = 0;
        for attempt in 1..=40 {
            let cap = RETRY_DELAY_MS_MIN
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(RETRY_DELAY_MS_MAX);
            assert!(cap >= previous_cap);
            previous_cap = cap;
            for _ in 0..50 {
                let delay = retry_delay_ms(attempt, &mut rng);
                assert!(
                    (RETRY_DELAY_MS_MIN..=RETRY_DELAY_MS_MAX).contains(&delay),
                    "{delay}"
                );
                assert!(delay <= cap && delay >= (cap / 2).max(RETRY_DELAY_MS_MIN));
            }
        }
        let late: Vec<u64> = (0..20).map(|_| retry_delay_ms(30, &mut rng)).collect();
        assert!(late.iter().any(|d| *d != late[0]), "jittered");
    }

    #[test]
    fn retry_waits_then_resends_the_same_entry() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut outbox = Outbox::new();
        outbox.insert(entry(1, 1), 1_000).expect("insert");
        outbox.insert(entry(1, 2), 1_000).expect("insert");
        let head = outbox.poll_transmit(1_000).expect("head");
        let Ok(Next::RetryAt(at)) = outbox.handle_outcome(head, Outcome::Retry, 1_000, &mut rng)
        else {
            panic!("expected a retry time");
        };
        assert!((1_000 + RETRY_DELAY_MS_MIN..=1_000 + RETRY_DELAY_MS_MAX).contains(&at));
        assert_eq!(outbox.poll_timeout(), Some(at));
        assert_eq!(outbox.poll_transmit(at - 1), None, "not before its time");
        assert_eq!(
            outbox.poll_transmit(at),
            Some(head),
            "same id and sender_seq again"
        );
    }

    #[test]
    fn mismatched_reencrypts_the_same_entry_then_backs_off() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut outbox = Outbox::new();
        outbox.insert(entry(1, 1), 0).expect("insert");
        for _ in 0..MISMATCHES_IN_A_ROW_MAX {
            let head = outbox.poll_transmit(0).expect("head");
            assert_eq!(head, entry(1, 1));
            assert_eq!(
                outbox.handle_outcome(head, Outcome::Mismatched, 0, &mut rng),
                Ok(Next::Reencrypt(head))
            );
            assert_eq!(
                outbox.poll_transmit(0),
                None,
                "in flight until re-encrypted"
            );
            outbox.handle_reencrypted(head, 0).expect("reencrypted");
        }
        let head = outbox.poll_transmit(0).expect("head");
        assert!(matches!(
            outbox.handle_outcome(head, Outcome::Mismatched, 0, &mut rng),
            Ok(Next::RetryAt(_))
        ));
        assert!(
            outbox.handle_reencrypted(head, 0).is_err(),
            "not in flight any more"
        );
    }

    #[test]
    fn a_server_hint_delays_the_retry_within_bounds() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut outbox = Outbox::new();
        outbox.insert(entry(1, 1), 0).expect("insert");
        let head = outbox.poll_transmit(0).expect("head");
        assert_eq!(
            outbox.handle_outcome(head, Outcome::RetryAfter(5_000), 100, &mut rng),
            Ok(Next::RetryAt(5_100)),
            "the hint is longer than the first backoff step"
        );
        assert_eq!(outbox.poll_transmit(5_099), None);
        let head = outbox.poll_transmit(5_100).expect("due at the hint");
        let next = outbox
            .handle_outcome(head, Outcome::RetryAfter(u64::MAX), 5_100, &mut rng)
            .expect("retry");
        assert_eq!(
            next,
            Next::RetryAt(5_100 + RETRY_DELAY_MS_MAX),
            "a hostile hint is capped"
        );
        let head = outbox
            .poll_transmit(5_100 + RETRY_DELAY_MS_MAX)
            .expect("due");
        let Ok(Next::RetryAt(due)) =
            outbox.handle_outcome(head, Outcome::RetryAfter(1), 0, &mut rng)
        else {
            panic!("a retry");
        };
        assert!(
            due >= RETRY_DELAY_MS_MIN,
            "a short hint never shortens the backoff"
        );
    }

    #[test]
    fn resend_from_renumbers_the_unconfirmed_entries_in_order() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut outbox = Outbox::new();
        for seq in [5, 6, 7] {
            outbox.insert(entry(1, seq), 0).expect("insert");
        }
        let head = outbox.poll_transmit(0).expect("head");
        let next = outbox
            .handle_outcome(head, Outcome::ResendFrom(3), 0, &mut rng)
            .expect("renumber");
        let ids: Vec<_> = [5, 6, 7]
            .iter()
            .map(|seq| entry(1, *seq).client_message_id)
            .collect();
        assert_eq!(
            next,
            Next::Renumber {
                chat: chat(1),
                moves: vec![(ids[0], 5, 3), (ids[1], 6, 4), (ids[2], 7, 5)],
                next_sender_seq: 6,
            }
        );
        let resent = outbox.poll_transmit(0).expect("resend at once");
        assert_eq!((resent.sender_seq, resent.client_message_id), (3, ids[0]));
        // Nonsense (resend from the seq just sent) backs off instead of looping.
        assert!(matches!(
            outbox.handle_outcome(resent, Outcome::ResendFrom(3), 0, &mut rng),
            Ok(Next::RetryAt(_))
        ));
    }

    /// An entry the region stored whose answer was lost sits below the number a later entry is
    /// asked to resend from (the entry in between was refused before it left): it keeps its
    /// number, and only the entries from the gap on move into it.
    #[test]
    fn entries_below_the_gap_keep_their_numbers() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut outbox = Outbox::new();
        for seq in [15, 17, 18] {
            outbox.insert(entry(1, seq), 0).expect("insert");
        }
        let stored = outbox.poll_transmit(0).expect("15");
        let after_gap = outbox.poll_transmit(0).expect("17");
        assert!(matches!(
            outbox.handle_outcome(stored, Outcome::Retry, 0, &mut rng),
            Ok(Next::RetryAt(_))
        ));
        let next = outbox
            .handle_outcome(after_gap, Outcome::ResendFrom(16), 0, &mut rng)
            .expect("renumber");
        assert_eq!(
            next,
            Next::Renumber {
                chat: chat(1),
                moves: vec![
                    (entry(1, 17).client_message_id, 17, 16),
                    (entry(1, 18).client_message_id, 18, 17)
                ],
                next_sender_seq: 18,
            }
        );
        let order: Vec<(u64, ClientMessageId)> = outbox
            .entries()
            .iter()
            .map(|pending| (pending.sender_seq, pending.client_message_id))
            .collect();
        assert_eq!(
            order,
            [
                (15, entry(1, 15).client_message_id),
                (16, entry(1, 17).client_message_id),
                (17, entry(1, 18).client_message_id)
            ]
        );
    }

    #[test]
    fn refused_entries_are_dropped_and_the_chat_moves_on() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut outbox = Outbox::new();
        outbox.insert(entry(1, 1), 0).expect("insert");
        outbox.insert(entry(1, 2), 0).expect("insert");
        let head = outbox.poll_transmit(0).expect("head");
        assert_eq!(
            outbox.handle_outcome(head, Outcome::Refused, 0, &mut rng),
            Ok(Next::Dropped(head))
        );
        assert!(!outbox.contains(head.client_message_id));
        assert!(outbox.contains(entry(1, 2).client_message_id));
        assert!(outbox.remove(entry(1, 2)), "sent by another process");
        assert!(outbox.is_empty());
    }
}
