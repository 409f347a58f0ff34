//! The push scheduler: which device to push, when, and what a result means. Sans-IO: no clock,
//! no sockets, no tasks; the region feeds it events with the time and drains work.
//!
//! **Inputs.** [`PushQueue::handle_wake`] (a device with no connection has something new),
//! [`PushQueue::handle_result`] (what its provider answered), [`PushQueue::handle_connected`]
//! (the device connected on its own, so a waiting push is moot).
//!
//! **Outputs.** [`PushQueue::poll_send`] hands out the next push that is due, and
//! [`PushQueue::poll_timeout`] says when the next one will be; [`Settled`], returned by
//! `handle_result`, says what the caller must do (delete the registration on
//! [`Settled::Gone`]).
//!
//! **Coalescing.** A device is in the queue at most once: waiting (due now or after a backoff)
//! or in flight. A wake for a waiting device changes nothing; a wake for a device in flight
//! marks it, and after that push succeeds one more is queued (the device may have fetched
//! before the newer message was stored). So any burst of wakes costs at most two pushes.
//!
//! **Retries.** A retryable failure ([`PushError::is_retryable`]) waits
//! `base · 2^(attempt-1)`, at most `retry_delay_max`, or the service's `Retry-After` if that
//! is longer (itself cut to `retry_after_max`); after `attempts_max` attempts the wake is
//! dropped and counted. Delays are deterministic: no jitter, so tests can name the instants.
//! Gone, rejected and configuration failures end the wake at once.
//!
//! **Bounds.** At most `devices_max` devices at once; a wake for another is refused
//! ([`WakeOutcome::Refused`]) and counted, never queued unboundedly.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::limits::{
    PUSH_ATTEMPTS_MAX, PUSH_QUEUE_DEVICES_MAX, PUSH_RETRY_AFTER_MS_MAX, PUSH_RETRY_DELAY_MS_BASE,
    PUSH_RETRY_DELAY_MS_MAX,
};
use crate::{Delivered, PushError};

/// The scheduler's bounds; [`Default`] takes them from [`crate::limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Devices held at once (waiting or in flight).
    pub devices_max: usize,
    /// Attempts of one wake, the first included.
    pub attempts_max: u32,
    /// Delay before the first retry.
    pub retry_delay_base: Duration,
    /// Longest backoff delay.
    pub retry_delay_max: Duration,
    /// Longest `Retry-After` honoured.
    pub retry_after_max: Duration,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            devices_max: PUSH_QUEUE_DEVICES_MAX,
            attempts_max: PUSH_ATTEMPTS_MAX,
            retry_delay_base: Duration::from_millis(PUSH_RETRY_DELAY_MS_BASE),
            retry_delay_max: Duration::from_millis(PUSH_RETRY_DELAY_MS_MAX),
            retry_after_max: Duration::from_millis(PUSH_RETRY_AFTER_MS_MAX),
        }
    }
}

/// What became of a wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeOutcome {
    /// The device was not queued; a push is now due.
    Queued,
    /// A push for the device was already waiting or in flight; this wake rides on it.
    Coalesced,
    /// The queue is full ([`QueueLimits::devices_max`]); the wake is dropped and counted.
    Refused,
}

/// A push to make now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSend<D> {
    /// The device to push.
    pub device: D,
    /// Which attempt this is, from 1.
    pub attempt: u32,
}

/// What a push result settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Delivered; nothing more to do for the device.
    Delivered,
    /// Delivered, and a wake arrived while it was in flight: another push is due now.
    DeliveredAndRequeued,
    /// Failed for now; the next attempt is due at `at`.
    Retrying {
        /// When the next attempt is due.
        at: Instant,
    },
    /// The push service no longer knows the device: delete its registration.
    Gone,
    /// The wake was dropped for `reason`.
    Dropped(DropReason),
    /// No push was in flight for this device (a duplicate or late result); ignored.
    NotInFlight,
}

/// Why a wake was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Every attempt failed with a retryable error.
    AttemptsExhausted,
    /// The push service refused it for good.
    Rejected,
    /// Our configuration cannot deliver it.
    Config,
}

/// Counters of everything the scheduler decided, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushQueueStats {
    /// Wakes handled.
    pub wakes: u64,
    /// Wakes that rode on a push already waiting or in flight.
    pub coalesced: u64,
    /// Wakes refused because the queue was full.
    pub refused_full: u64,
    /// Pushes handed out by `poll_send` (attempts, retries included).
    pub sends: u64,
    /// Pushes delivered.
    pub delivered: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// Registrations reported gone.
    pub gone: u64,
    /// Wakes dropped after the last attempt failed.
    pub dropped_attempts: u64,
    /// Wakes dropped because the service rejected them.
    pub dropped_rejected: u64,
    /// Wakes dropped because of our configuration.
    pub dropped_config: u64,
    /// Waiting pushes cancelled because the device connected.
    pub cancelled: u64,
}

/// The coalescing push scheduler; `D` identifies a device.
#[derive(Debug)]
pub struct PushQueue<D> {
    limits: QueueLimits,
    devices: HashMap<D, DeviceState>,
    /// Waiting devices by due time; the sequence number keeps equal times in arrival order.
    due: BTreeMap<(Instant, u64), D>,
    sequence: u64,
    stats: PushQueueStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceState {
    /// Waiting for `due`; `attempts_done` attempts of this wake have failed.
    Waiting {
        key: (Instant, u64),
        attempts_done: u32,
    },
    /// A push is in flight; `rewake` if a wake arrived since it was handed out.
    InFlight { attempt: u32, rewake: bool },
}

impl<D: Clone + Eq + Hash> Default for PushQueue<D> {
    fn default() -> Self {
        Self::new(QueueLimits::default())
    }
}

impl<D: Clone + Eq + Hash> PushQueue<D> {
    /// An empty scheduler with `limits`.
    pub fn new(limits: QueueLimits) -> Self {
        assert!(limits.attempts_max >= 1, "at least one attempt");
        assert!(limits.devices_max >= 1, "room for one device");
        PushQueue {
            limits,
            devices: HashMap::new(),
            due: BTreeMap::new(),
            sequence: 0,
            stats: PushQueueStats::default(),
        }
    }

    /// `device` has something new and no connection: push it (once, however many wakes).
    pub fn handle_wake(&mut self, device: D, now: Instant) -> WakeOutcome {
        self.stats.wakes += 1;
        let full = self.devices.len() >= self.limits.devices_max;
        match self.devices.get_mut(&device) {
            Some(DeviceState::Waiting { .. }) => {
                self.stats.coalesced += 1;
                WakeOutcome::Coalesced
            }
            Some(DeviceState::InFlight { rewake, .. }) => {
                *rewake = true;
                self.stats.coalesced += 1;
                WakeOutcome::Coalesced
            }
            None if full => {
                self.stats.refused_full += 1;
                tracing::debug!(
                    devices = self.devices.len(),
                    "push queue full: a wake was refused"
                );
                WakeOutcome::Refused
            }
            None => {
                self.wait(device, now, 0);
                WakeOutcome::Queued
            }
        }
    }

    /// `device` connected by itself: a push still waiting for it is moot, and a wake that
    /// arrived during a push in flight needs no second push.
    pub fn handle_connected(&mut self, device: &D) {
        match self.devices.get_mut(device) {
            Some(DeviceState::Waiting { key, .. }) => {
                let key = *key;
                self.due.remove(&key);
                self.devices.remove(device);
                self.stats.cancelled += 1;
            }
            Some(DeviceState::InFlight { rewake, .. }) => *rewake = false,
            None => {}
        }
        self.check();
    }

    /// The next push due at `now`, if any; the device is then in flight until its result.
    pub fn poll_send(&mut self, now: Instant) -> Option<PushSend<D>> {
        let (&key, _) = self.due.first_key_value()?;
        if key.0 > now {
            return None;
        }
        let device = self.due.remove(&key)?;
        let state = self.devices.get_mut(&device)?;
        let DeviceState::Waiting { attempts_done, .. } = *state else {
            debug_assert!(false, "a device in the due index is waiting");
            return None;
        };
        let attempt = attempts_done + 1;
        *state = DeviceState::InFlight {
            attempt,
            rewake: false,
        };
        self.stats.sends += 1;
        self.check();
        Some(PushSend { device, attempt })
    }

    /// When the next waiting push is due (it may be in the past); `None` if none waits.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due.first_key_value().map(|(&(at, _), _)| at)
    }

    /// What the provider answered for `device`'s push in flight.
    pub fn handle_result(
        &mut self,
        device: &D,
        result: &Result<Delivered, PushError>,
        now: Instant,
    ) -> Settled {
        let Some(&DeviceState::InFlight { attempt, rewake }) = self.devices.get(device) else {
            return Settled::NotInFlight;
        };
        let settled = match result {
            Ok(_) => {
                self.stats.delivered += 1;
                self.devices.remove(device);
                if rewake {
                    self.wait(device.clone(), now, 0);
                    Settled::DeliveredAndRequeued
                } else {
                    Settled::Delivered
                }
            }
            Err(error) if error.is_retryable() => {
                if attempt >= self.limits.attempts_max {
                    self.devices.remove(device);
                    self.stats.dropped_attempts += 1;
                    tracing::debug!(attempt, %error, "a wake was dropped after its last attempt");
                    Settled::Dropped(DropReason::AttemptsExhausted)
                } else {
                    let asked = error
                        .retry_after()
                        .unwrap_or(Duration::ZERO)
                        .min(self.limits.retry_after_max);
                    let at = now + self.backoff(attempt).max(asked);
                    self.devices.remove(device);
                    self.wait(device.clone(), at, attempt);
                    self.stats.retries += 1;
                    Settled::Retrying { at }
                }
            }
            Err(PushError::Gone { .. }) => {
                self.devices.remove(device);
                self.stats.gone += 1;
                Settled::Gone
            }
            Err(PushError::Config(_)) => {
                self.devices.remove(device);
                self.stats.dropped_config += 1;
                Settled::Dropped(DropReason::Config)
            }
            Err(_) => {
                self.devices.remove(device);
                self.stats.dropped_rejected += 1;
                Settled::Dropped(DropReason::Rejected)
            }
        };
        self.check();
        settled
    }

    /// The backoff after `attempts_done` failed attempts: base · 2^(n-1), at most the max.
    pub fn backoff(&self, attempts_done: u32) -> Duration {
        let doublings = attempts_done.saturating_sub(1).min(31);
        self.limits
            .retry_delay_base
            .saturating_mul(1u32 << doublings)
            .min(self.limits.retry_delay_max)
    }

    /// The counters so far.
    pub fn stats(&self) -> PushQueueStats {
        self.stats
    }

    /// Devices held (waiting or in flight).
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether no device is held.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    fn wait(&mut self, device: D, at: Instant, attempts_done: u32) {
        let key = (at, self.sequence);
        self.sequence += 1;
        self.due.insert(key, device.clone());
        let previous = self
            .devices
            .insert(device, DeviceState::Waiting { key, attempts_done });
        debug_assert!(previous.is_none(), "a device is in the queue at most once");
        self.check();
    }

    /// Cheap invariants: every due entry is a waiting device, and the bound holds.
    fn check(&self) {
        debug_assert!(self.due.len() <= self.devices.len());
        debug_assert!(self.devices.len() <= self.limits.devices_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> QueueLimits {
        QueueLimits {
            devices_max: 3,
            attempts_max: 4,
            retry_delay_base: Duration::from_secs(1),
            retry_delay_max: Duration::from_secs(5),
            retry_after_max: Duration::from_secs(60),
        }
    }

    fn delivered() -> Result<Delivered, PushError> {
        Ok(Delivered {
            status: 201,
            message_id: None,
        })
    }

    fn throttled(retry_after: Option<u64>) -> Result<Delivered, PushError> {
        Err(PushError::Throttled {
            status: 429,
            retry_after: retry_after.map(Duration::from_secs),
            reason: "slow down".into(),
        })
    }

    fn seconds(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    #[test]
    fn wakes_coalesce_while_waiting_and_one_push_goes_out() {
        let start = Instant::now();
        let mut queue = PushQueue::new(limits());
        assert_eq!(queue.handle_wake(7u32, start), WakeOutcome::Queued);
        for _ in 0..10 {
            assert_eq!(queue.handle_wake(7, start), WakeOutcome::Coalesced);
        }
        assert_eq!(queue.poll_timeout(), Some(start));
        let send = queue.poll_send(start).expect("a push is due");
        assert_eq!(
            send,
            PushSend {
                device: 7,
                attempt: 1
            }
        );
        assert_eq!(
            queue.poll_send(start),
            None,
            "one push in flight per device"
        );
        assert_eq!(
            queue.handle_result(&7, &delivered(), start),
            Settled::Delivered
        );
        assert!(queue.is_empty());
        assert_eq!(queue.poll_timeout(), None);
        let stats = queue.stats();
        assert_eq!(
            (stats.wakes, stats.coalesced, stats.sends, stats.delivered),
            (11, 10, 1, 1)
        );
    }

    #[test]
    fn a_wake_during_flight_brings_exactly_one_more_push() {
        let start = Instant::now();
        let mut queue = PushQueue::new(limits());
        queue.handle_wake(1u32, start);
        queue.poll_send(start).expect("due");
        for _ in 0..5 {
            assert_eq!(
                queue.handle_wake(1, seconds(start, 1)),
                WakeOutcome::Coalesced
            );
        }
        assert_eq!(
            queue.handle_result(&1, &delivered(), seconds(start, 2)),
            Settled::DeliveredAndRequeued
        );
        assert_eq!(queue.poll_timeout(), Some(seconds(start, 2)));
        let again = queue
            .poll_send(seconds(start, 2))
            .expect("the coalesced push");
        assert_eq!(again.attempt, 1);
        assert_eq!(
            queue.handle_result(&1, &delivered(), seconds(start, 3)),
            Settled::Delivered
        );
        assert_eq!(queue.poll_send(seconds(start, 100)), None);
        assert_eq!(queue.stats().sends, 2);
    }

    #[test]
    fn retries_back_off_deterministically_and_honour_retry_after_then_drop() {
        let start = Instant::now();
        let mut queue = PushQueue::new(limits());
        queue.handle_wake(1u32, start);
        let mut now = start;
        // Attempt 1 fails → 1 s; attempt 2 fails with Retry-After 30 s → 30 s; attempt 3
        // fails → 4 s (base · 2²); attempt 4 is the last.
        let expected_delays = [1, 30, 4];
        let results = [
            throttled(None),
            throttled(Some(30)),
            Err(PushError::Transport("reset".into())),
        ];
        for (attempt, (result, delay)) in results.iter().zip(expected_delays).enumerate() {
            let send = queue.poll_send(now).expect("due");
            assert_eq!(send.attempt, attempt as u32 + 1);
            let settled = queue.handle_result(&1, result, now);
            assert_eq!(
                settled,
                Settled::Retrying {
                    at: now + Duration::from_secs(delay)
                }
            );
            assert_eq!(
                queue.poll_send(now + Duration::from_secs(delay) - Duration::from_millis(1)),
                None
            );
            assert_eq!(queue.poll_timeout(), Some(now + Duration::from_secs(delay)));
            now += Duration::from_secs(delay);
        }
        let last = queue.poll_send(now).expect("the last attempt");
        assert_eq!(last.attempt, 4);
        assert_eq!(
            queue.handle_result(&1, &throttled(None), now),
            Settled::Dropped(DropReason::AttemptsExhausted)
        );
        assert!(queue.is_empty());
        let stats = queue.stats();
        assert_eq!(
            (stats.retries, stats.dropped_attempts, stats.sends),
            (3, 1, 4)
        );
    }

    #[test]
    fn backoff_doubles_to_its_ceiling_and_retry_after_is_bounded() {
        let queue: PushQueue<u32> = PushQueue::new(limits());
        let delays: Vec<u64> = (1..=6).map(|n| queue.backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5, 5]);
        let defaults: PushQueue<u32> = PushQueue::default();
        assert_eq!(defaults.backoff(1), Duration::from_secs(1));
        assert_eq!(defaults.backoff(40), Duration::from_secs(300));

        let start = Instant::now();
        let mut queue = PushQueue::new(limits());
        queue.handle_wake(1u32, start);
        queue.poll_send(start).expect("due");
        let settled = queue.handle_result(&1, &throttled(Some(86_400)), start);
        assert_eq!(
            settled,
            Settled::Retrying {
                at: seconds(start, 60)
            }
        );
    }

    #[test]
    fn gone_rejected_and_config_end_the_wake_and_are_counted() {
        let start = Instant::now();
        let mut queue = PushQueue::new(limits());
        let outcomes = [
            (
                Err(PushError::Gone {
                    status: 410,
                    reason: "unsubscribed".into(),
                }),
                Settled::Gone,
            ),
            (
                Err(PushError::Rejected {
                    status: 413,
                    reason: "too large".into(),
                }),
                Settled::Dropped(DropReason::Rejected),
            ),
            (
                Err(PushError::Config("no provider".into())),
                Settled::Dropped(DropReason::Config),
            ),
        ];
        for (device, (result, expected)) in outcomes.into_iter().enumerate() {
            queue.handle_wake(device, start);
            let send = queue.poll_send(start).expect("due");
            assert_eq!(send.device, device);
            // A wake during flight does not revive a gone or rejected device.
            queue.handle_wake(device, start);
            assert_eq!(queue.handle_result(&device, &result, start), expected);
            assert_eq!(queue.poll_send(seconds(start, 1_000)), None);
        }
        let stats = queue.stats();
        assert_eq!(
            (stats.gone, stats.dropped_rejected, stats.dropped_config),
            (1, 1, 1)
        );
        assert_eq!(
            queue.handle_result(&0, &delivered(), start),
            Settled::NotInFlight
        );
    }

    #[test]
    fn a_full_queue_refuses_new_devices_but_coalesces_known_ones() {
        let start = Instant::now();
        let mut queue = PushQueue::new(limits());
        for device in 0..3u32 {
            assert_eq!(queue.handle_wake(device, start), WakeOutcome::Queued);
        }
        assert_eq!(queue.handle_wake(3, start), WakeOutcome::Refused);
        assert_eq!(queue.handle_wake(0, start), WakeOutcome::Coalesced);
        assert_eq!(queue.stats().refused_full, 1);
        // Devices leave in arrival order; room frees when one settles.
        let first = queue.poll_send(start).expect("due");
        assert_eq!(first.device, 0);
        assert_eq!(
            queue.handle_wake(3, start),
            WakeOutcome::Refused,
            "in flight still counts"
        );
        queue.handle_result(&0, &delivered(), start);
        assert_eq!(queue.handle_wake(3, start), WakeOutcome::Queued);
        let order: Vec<u32> = std::iter::from_fn(|| queue.poll_send(start))
            .map(|send| send.device)
            .collect();
        assert_eq!(order, [1, 2, 3]);
    }

    #[test]
    fn a_device_that_connects_needs_no_push() {
        let start = Instant::now();
        let mut queue = PushQueue::new(limits());
        queue.handle_wake(1u32, start);
        queue.handle_connected(&1);
        assert_eq!(queue.poll_send(start), None);
        assert_eq!(queue.stats().cancelled, 1);

        queue.handle_wake(2, start);
        queue.poll_send(start).expect("due");
        queue.handle_wake(2, start);
        queue.handle_connected(&2);
        assert_eq!(
            queue.handle_result(&2, &delivered(), start),
            Settled::Delivered
        );
        assert!(queue.is_empty());
    }

    /// A long seeded run: whatever the interleaving, a device is never handed out twice
    /// without a result between, and the bound always holds.
    #[test]
    fn random_events_keep_one_push_in_flight_per_device() {
        let seed = 0x5eed_u64;
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let start = Instant::now();
        let mut queue = PushQueue::new(limits());
        let mut in_flight: Vec<u32> = Vec::new();
        let mut now = start;
        for step in 0..20_000 {
            now += Duration::from_millis(next() % 700);
            match next() % 4 {
                0 | 1 => {
                    queue.handle_wake((next() % 5) as u32, now);
                }
                2 => {
                    while let Some(send) = queue.poll_send(now) {
                        assert!(!in_flight.contains(&send.device), "seed={seed} step={step}");
                        in_flight.push(send.device);
                    }
                }
                _ => {
                    if !in_flight.is_empty() {
                        let device = in_flight.remove((next() % in_flight.len() as u64) as usize);
                        let result = match next() % 4 {
                            0 => delivered(),
                            1 => throttled(Some(next() % 3)),
                            2 => Err(PushError::Transport("reset".into())),
                            _ => Err(PushError::Gone {
                                status: 410,
                                reason: String::new(),
                            }),
                        };
                        let settled = queue.handle_result(&device, &result, now);
                        assert_ne!(settled, Settled::NotInFlight, "seed={seed} step={step}");
                    }
                }
            }
            assert!(queue.len() <= 3, "seed={seed} step={step}");
        }
    }
}
