//! Hybrid logical clocks: the order of edits, deletions and reactions.
//!
//! An [`Hlc`] is a wall-clock time in milliseconds, a counter for events within one
//! millisecond (or while the wall clock lags behind what was seen), and the device that made
//! it. The derived order (time, then counter, then device) is total, so two devices that
//! changed the same register concurrently agree on the winner whatever order the changes
//! arrive in. The clock never reads the time itself: callers pass `now_ms`.

use relay_proto::{AccountId, DeviceAddress, DeviceId};

/// A hybrid logical clock reading, also a device's clock (its last reading).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc {
    /// Wall-clock time, in milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Events after `wall_ms` with no later wall-clock time.
    pub counter: u32,
    /// The device that made the reading: the last tie-breaker.
    pub device: DeviceAddress,
}

/// Bytes of an encoded [`Hlc`].
pub(crate) const HLC_BYTES: usize = 8 + 4 + 8 + 4;

impl Hlc {
    /// The lowest reading of `device`: a new clock, and the stamp of a message's original text.
    pub fn zero(device: DeviceAddress) -> Self {
        Hlc {
            wall_ms: 0,
            counter: 0,
            device,
        }
    }

    /// A local event at `now_ms`: the next reading, above every reading this clock has made or
    /// seen. The clock keeps it.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        if now_ms > self.wall_ms {
            self.wall_ms = now_ms;
            self.counter = 0;
        } else {
            self.bump();
        }
        *self
    }

    /// A reading from another device arrived at `now_ms`: the next reading is above both it and
    /// everything this clock made before. The clock keeps it.
    pub fn receive(&mut self, remote: Hlc, now_ms: u64) -> Hlc {
        self.observe(remote);
        self.tick(now_ms)
    }

    /// Remembers `remote` without making an event: the next [`Hlc::tick`] is above it.
    pub fn observe(&mut self, remote: Hlc) {
        if (remote.wall_ms, remote.counter) > (self.wall_ms, self.counter) {
            self.wall_ms = remote.wall_ms;
            self.counter = remote.counter;
        }
    }

    fn bump(&mut self) {
        match self.counter.checked_add(1) {
            Some(counter) => self.counter = counter,
            None => {
                // Four billion events in one millisecond: borrow the next millisecond.
                self.wall_ms = self.wall_ms.saturating_add(1);
                self.counter = 0;
            }
        }
    }

    /// The reading as bytes (big-endian, so byte order is clock order).
    pub(crate) fn encode(&self) -> [u8; HLC_BYTES] {
        let mut bytes = [0u8; HLC_BYTES];
        bytes[..8].copy_from_slice(&self.wall_ms.to_be_bytes());
        bytes[8..12].copy_from_slice(&self.counter.to_be_bytes());
        bytes[12..20].copy_from_slice(&self.device.account.0.to_be_bytes());
        bytes[20..24].copy_from_slice(&self.device.device.0.to_be_bytes());
        bytes
    }

    /// A reading at the start of `bytes`, and what follows it; `None` if `bytes` is too short.
    pub(crate) fn decode_prefix(bytes: &[u8]) -> Option<(Hlc, &[u8])> {
        let (head, rest) = bytes.split_at_checked(HLC_BYTES)?;
        let (wall, head) = head.split_at(8);
        let (counter, head) = head.split_at(4);
        let (account, device) = head.split_at(8);
        let hlc = Hlc {
            wall_ms: u64::from_be_bytes(wall.try_into().ok()?),
            counter: u32::from_be_bytes(counter.try_into().ok()?),
            device: DeviceAddress {
                account: AccountId(u64::from_be_bytes(account.try_into().ok()?)),
                device: DeviceId(u32::from_be_bytes(device.try_into().ok()?)),
            },
        };
        Some((hlc, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u32) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(7),
            device: DeviceId(n),
        }
    }

    #[test]
    fn ticks_move_forward_even_when_the_wall_clock_goes_back() {
        let mut clock = Hlc::zero(device(1));
        let first = clock.tick(1_000);
        let second = clock.tick(1_000);
        let third = clock.tick(900);
        assert!(first < second && second < third);
        assert_eq!(third.wall_ms, 1_000);
        assert_eq!(clock.tick(2_000).counter, 0);
    }

    #[test]
    fn receiving_a_reading_from_the_future_puts_the_next_tick_after_it() {
        let mut mine = Hlc::zero(device(1));
        let mut theirs = Hlc::zero(device(2));
        let remote = theirs.tick(50_000);
        let after = mine.receive(remote, 1_000);
        assert!(after > remote);
        assert!(mine.tick(1_001) > after);
    }

    #[test]
    fn equal_times_are_ordered_by_device() {
        let a = Hlc {
            wall_ms: 5,
            counter: 1,
            device: device(1),
        };
        let b = Hlc {
            wall_ms: 5,
            counter: 1,
            device: device(2),
        };
        assert!(a < b);
    }

    #[test]
    fn encoding_round_trips_and_keeps_the_order() {
        let a = Hlc {
            wall_ms: 5,
            counter: 9,
            device: device(3),
        };
        let b = Hlc {
            wall_ms: 6,
            counter: 0,
            device: device(1),
        };
        assert!(a.encode() < b.encode());
        let mut bytes = a.encode().to_vec();
        bytes.extend_from_slice(b"rest");
        assert_eq!(Hlc::decode_prefix(&bytes), Some((a, &b"rest"[..])));
        assert_eq!(Hlc::decode_prefix(&bytes[..HLC_BYTES - 1]), None);
    }

    #[test]
    fn a_full_counter_borrows_the_next_millisecond() {
        let mut clock = Hlc {
            wall_ms: 10,
            counter: u32::MAX,
            device: device(1),
        };
        let next = clock.tick(10);
        assert_eq!((next.wall_ms, next.counter), (11, 0));
    }
}
