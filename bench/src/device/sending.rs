//! Sending, sans IO: which `sender_seq` goes next with up to a window in flight, "resend from
//! k", retries and their delays ([`SendPipeline`]).

use super::*;

/// A message composed for one chat and not yet confirmed by every destination region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Composed {
    /// Its number in the chat, from 1.
    pub sender_seq: u64,
    /// Its idempotency key, the same for every transmission.
    pub client_message_id: ClientMessageId,
    /// When it was composed, in µs on the run's clock.
    pub composed_at_us: u64,
}

/// How one transmission of an envelope ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    /// Every destination region stored it (✓).
    Sent,
    /// A region expects this `sender_seq` next: the envelope overtook its predecessor.
    ResendFrom(u64),
    /// A retryable refusal or a lost answer; wait at least this long (ms, 0: no hint).
    Retry {
        /// The server's hint, in ms.
        after_ms: u64,
    },
}

/// Why a [`SendPipeline`] cannot go on (a bug in the caller, or a server that keeps failing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// An outcome arrived for an envelope that is not in flight.
    #[error("an outcome for sender_seq {0}, which is not in flight")]
    NotInFlight(u64),
    /// An envelope failed [`SEND_ATTEMPTS_MAX`] times.
    #[error("sender_seq {sender_seq} failed {attempts} times")]
    GaveUp {
        /// The envelope.
        sender_seq: u64,
        /// Its transmissions.
        attempts: u32,
    },
    /// A region asked for a `sender_seq` this pipeline never composed, or for one beyond the
    /// envelope it refused: it holds what this device never sent.
    #[error("a region expects sender_seq {expected} after refusing {refused}")]
    ImpossibleResend {
        /// The envelope refused.
        refused: u64,
        /// What the region expects next.
        expected: u64,
    },
}

/// One chat's sending decisions: envelopes go strictly in `sender_seq` order with up to a
/// window in flight; after any outcome but "sent" the chat goes one at a time until the
/// envelope in trouble is confirmed (as the client's outbox does); "resend from k" resends at
/// once, a retryable failure waits an exponential delay (or the server's longer hint).
#[derive(Debug, Clone)]
pub struct SendPipeline {
    window: usize,
    next_sender_seq: u64,
    unconfirmed: BTreeMap<u64, (Composed, u32)>,
    in_flight: BTreeSet<u64>,
    next_transmit: u64,
    trouble_until: Option<u64>,
    failures_in_a_row: u32,
    retry_at_ms: u64,
    resends: u64,
    retries: u64,
}

impl SendPipeline {
    /// A chat with nothing sent yet, `window` envelopes in flight at most (at least 1).
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            next_sender_seq: 1,
            unconfirmed: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            next_transmit: 1,
            trouble_until: None,
            failures_in_a_row: 0,
            retry_at_ms: 0,
            resends: 0,
            retries: 0,
        }
    }

    /// Composes the chat's next message.
    pub fn compose(&mut self, client_message_id: ClientMessageId, composed_at_us: u64) -> Composed {
        let composed = Composed {
            sender_seq: self.next_sender_seq,
            client_message_id,
            composed_at_us,
        };
        self.next_sender_seq += 1;
        self.unconfirmed.insert(composed.sender_seq, (composed, 0));
        composed
    }

    /// The next envelope to transmit at `now_ms`, if the window and any retry delay allow one.
    pub fn poll_transmit(&mut self, now_ms: u64) -> Option<Composed> {
        if now_ms < self.retry_at_ms {
            return None;
        }
        let limit = if self.trouble_until.is_some() {
            1
        } else {
            self.window
        };
        if self.in_flight.len() >= limit {
            return None;
        }
        let in_flight = &self.in_flight;
        let (&sender_seq, entry) = self
            .unconfirmed
            .range_mut(self.next_transmit..)
            .find(|(sender_seq, _)| !in_flight.contains(sender_seq))?;
        entry.1 += 1;
        let composed = entry.0;
        self.in_flight.insert(sender_seq);
        self.next_transmit = sender_seq + 1;
        Some(composed)
    }

    /// When a delayed retry becomes due (ms), if one is waiting.
    pub fn poll_timeout(&self) -> Option<u64> {
        (self.retry_at_ms > 0 && !self.unconfirmed.is_empty()).then_some(self.retry_at_ms)
    }

    /// The outcome of transmitting `sender_seq`; returns the message when it is confirmed.
    pub fn handle_outcome(
        &mut self,
        sender_seq: u64,
        result: SendResult,
        now_ms: u64,
    ) -> Result<Option<Composed>, PipelineError> {
        if !self.in_flight.remove(&sender_seq) {
            return Err(PipelineError::NotInFlight(sender_seq));
        }
        let attempts = self
            .unconfirmed
            .get(&sender_seq)
            .map_or(0, |(_, attempts)| *attempts);
        match result {
            SendResult::Sent => {
                let confirmed = self
                    .unconfirmed
                    .remove(&sender_seq)
                    .map(|(composed, _)| composed);
                self.failures_in_a_row = 0;
                if let Some(until) = self.trouble_until
                    && !self.unconfirmed.contains_key(&until)
                {
                    self.trouble_until = None;
                }
                Ok(confirmed)
            }
            SendResult::ResendFrom(expected) => {
                if expected > sender_seq || expected == 0 {
                    return Err(PipelineError::ImpossibleResend {
                        refused: sender_seq,
                        expected,
                    });
                }
                self.resends += 1;
                self.trouble(sender_seq, attempts)?;
                Ok(None)
            }
            SendResult::Retry { after_ms } => {
                self.retries += 1;
                self.trouble(sender_seq, attempts)?;
                self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
                let exponent = self.failures_in_a_row.saturating_sub(1).min(16);
                let backoff_ms = SEND_RETRY_DELAY_MS_MIN.saturating_mul(1 << exponent);
                let delay_ms = backoff_ms.max(after_ms).min(SEND_RETRY_DELAY_MS_MAX);
                self.retry_at_ms = now_ms + delay_ms;
                Ok(None)
            }
        }
    }

    /// Goes one at a time from `sender_seq` until it is confirmed.
    fn trouble(&mut self, sender_seq: u64, attempts: u32) -> Result<(), PipelineError> {
        if attempts >= SEND_ATTEMPTS_MAX {
            return Err(PipelineError::GaveUp {
                sender_seq,
                attempts,
            });
        }
        self.trouble_until = Some(self.trouble_until.map_or(sender_seq, |t| t.max(sender_seq)));
        self.next_transmit = self.next_transmit.min(sender_seq);
        Ok(())
    }

    /// Whether every composed message is confirmed.
    pub fn is_idle(&self) -> bool {
        self.unconfirmed.is_empty()
    }

    /// Envelopes in flight at most.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Messages composed and not yet confirmed.
    pub fn unconfirmed(&self) -> usize {
        self.unconfirmed.len()
    }

    /// "Resend from k" answers so far.
    pub fn resends(&self) -> u64 {
        self.resends
    }

    /// Retryable failures so far.
    pub fn retries(&self) -> u64 {
        self.retries
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::id;
    use super::*;

    #[test]
    fn a_window_of_one_waits_for_each_confirmation() {
        let mut pipeline = SendPipeline::new(1);
        let first = pipeline.compose(id(1), 10);
        let second = pipeline.compose(id(2), 20);
        assert_eq!((first.sender_seq, second.sender_seq), (1, 2));
        assert_eq!(pipeline.poll_transmit(0), Some(first));
        assert_eq!(pipeline.poll_transmit(0), None, "one in flight");
        assert_eq!(
            pipeline.handle_outcome(1, SendResult::Sent, 0),
            Ok(Some(first))
        );
        assert_eq!(pipeline.poll_transmit(0), Some(second));
        assert_eq!(
            pipeline.handle_outcome(2, SendResult::Sent, 0),
            Ok(Some(second))
        );
        assert!(pipeline.is_idle());
        assert_eq!(pipeline.poll_transmit(0), None);
        assert_eq!(
            pipeline.handle_outcome(2, SendResult::Sent, 0),
            Err(PipelineError::NotInFlight(2))
        );
    }

    #[test]
    fn an_overtaking_envelope_is_resent_after_its_predecessor_one_at_a_time() {
        let mut pipeline = SendPipeline::new(4);
        for n in 1..=6 {
            pipeline.compose(id(n), 0);
        }
        let sent: Vec<u64> = std::iter::from_fn(|| pipeline.poll_transmit(0))
            .map(|composed| composed.sender_seq)
            .collect();
        assert_eq!(sent, vec![1, 2, 3, 4], "the window");
        // 2 overtook 1 at the region; 1, 3 and 4 are stored.
        assert_eq!(
            pipeline.handle_outcome(2, SendResult::ResendFrom(1), 0),
            Ok(None)
        );
        assert!(pipeline.handle_outcome(1, SendResult::Sent, 0).is_ok());
        assert!(pipeline.handle_outcome(3, SendResult::Sent, 0).is_ok());
        assert!(pipeline.handle_outcome(4, SendResult::Sent, 0).is_ok());
        // Trouble: one at a time from 2, skipping what is confirmed, until 2 is confirmed.
        assert_eq!(pipeline.poll_transmit(0).map(|c| c.sender_seq), Some(2));
        assert_eq!(pipeline.poll_transmit(0), None);
        assert!(pipeline.handle_outcome(2, SendResult::Sent, 0).is_ok());
        let sent: Vec<u64> = std::iter::from_fn(|| pipeline.poll_transmit(0))
            .map(|composed| composed.sender_seq)
            .collect();
        assert_eq!(sent, vec![5, 6], "the window again");
        assert_eq!(pipeline.resends(), 1);
        assert_eq!(
            pipeline.handle_outcome(5, SendResult::ResendFrom(9), 0),
            Err(PipelineError::ImpossibleResend {
                refused: 5,
                expected: 9
            })
        );
    }

    #[test]
    fn retries_wait_longer_each_time_and_give_up() {
        let mut pipeline = SendPipeline::new(1);
        pipeline.compose(id(1), 0);
        let mut now_ms = 0;
        let mut delays = Vec::new();
        for attempt in 1..=SEND_ATTEMPTS_MAX {
            assert!(
                pipeline.poll_transmit(now_ms).is_some(),
                "attempt {attempt}"
            );
            let result = pipeline.handle_outcome(1, SendResult::Retry { after_ms: 0 }, now_ms);
            if attempt == SEND_ATTEMPTS_MAX {
                assert_eq!(
                    result,
                    Err(PipelineError::GaveUp {
                        sender_seq: 1,
                        attempts: SEND_ATTEMPTS_MAX
                    })
                );
                break;
            }
            assert_eq!(result, Ok(None));
            let due = pipeline.poll_timeout().expect("a retry is due later");
            assert_eq!(pipeline.poll_transmit(due - 1), None, "not before its time");
            delays.push(due - now_ms);
            now_ms = due;
        }
        assert_eq!(delays[0], SEND_RETRY_DELAY_MS_MIN);
        assert_eq!(delays[1], 2 * SEND_RETRY_DELAY_MS_MIN);
        assert_eq!(*delays.last().expect("delays"), SEND_RETRY_DELAY_MS_MAX);
        // A server's longer hint wins, capped.
        let mut pipeline = SendPipeline::new(1);
        pipeline.compose(id(1), 0);
        pipeline.poll_transmit(0);
        pipeline
            .handle_outcome(1, SendResult::Retry { after_ms: 700 }, 0)
            .expect("retry");
        assert_eq!(pipeline.poll_timeout(), Some(700));
    }
}
