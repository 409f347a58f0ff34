//! Admission of new device connections per source address, sans-IO: a token bucket per address
//! (an IPv4 address, or the /64 an IPv6 address is in: one subscriber's), so one address cannot
//! flood an edge with handshakes and logins while everyone else connects. QUIC validates a
//! client's address before the edge does any work for it, so the address is the sender's.
//!
//! A connection over its address's rate is answered, on its first request, with `Throttled`
//! and the milliseconds until its address may connect again, then closed: the client shows it
//! and waits. At most [`ADMISSION_ADDRESSES_MAX`] addresses are tracked; when the table is full,
//! addresses whose buckets refilled are forgotten first, and if none has, the new address is
//! refused with `Overloaded` (a flood from that many addresses is the edge's limit, not one
//! address's).

use std::collections::HashMap;
use std::net::IpAddr;

use crate::limits::ADMISSION_ADDRESSES_MAX;
use crate::session::Bucket;

/// How fast one address may open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Sustained connections per second.
    pub per_second: u32,
    /// Connections in a burst.
    pub burst: u32,
}

/// Why a connection is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address connected too often: retry after this many ms.
    Throttled {
        /// Milliseconds until one connection is allowed again.
        retry_after_ms: u64,
    },
    /// Too many addresses are being tracked.
    Overloaded,
}

/// The per-address buckets.
#[derive(Debug)]
pub struct AddressLimiter {
    limits: AdmissionLimits,
    capacity: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl AddressLimiter {
    /// A limiter admitting `limits` per address, tracking at most [`ADMISSION_ADDRESSES_MAX`].
    pub fn new(limits: AdmissionLimits) -> Self {
        Self::with_capacity(limits, ADMISSION_ADDRESSES_MAX)
    }

    /// A limiter tracking at most `capacity` addresses.
    pub fn with_capacity(limits: AdmissionLimits, capacity: usize) -> Self {
        AddressLimiter {
            limits,
            capacity: capacity.max(1),
            buckets: HashMap::new(),
        }
    }

    /// A new connection from `address` at `now_ms`: admitted (taking one token), or refused.
    pub fn handle_connection(&mut self, address: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        let key = key(address);
        let (per_second, burst) = (self.limits.per_second.max(1), self.limits.burst.max(1));
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.capacity {
            // Forget the addresses whose buckets have refilled: they would start full anyway.
            self.buckets
                .retain(|_, bucket| !bucket.is_full(now_ms, per_second, burst));
            if self.buckets.len() >= self.capacity {
                return Err(Refusal::Overloaded);
            }
        }
        self.buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(burst, now_ms))
            .take(now_ms, per_second, burst)
            .map_err(|retry_after_ms| Refusal::Throttled { retry_after_ms })
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// The key of an address: itself for IPv4 (an IPv4-mapped IPv6 address counts as its IPv4
/// address), its /64 for IPv6.
fn key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const LIMITS: AdmissionLimits = AdmissionLimits {
        per_second: 2,
        burst: 3,
    };

    #[test]
    fn an_address_gets_its_burst_then_its_rate_and_others_are_untouched() {
        let mut limiter = AddressLimiter::new(LIMITS);
        let one = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        for _ in 0..3 {
            assert_eq!(limiter.handle_connection(one, 1_000), Ok(()));
        }
        assert_eq!(
            limiter.handle_connection(one, 1_000),
            Err(Refusal::Throttled {
                retry_after_ms: 500
            })
        );
        assert_eq!(limiter.handle_connection(other, 1_000), Ok(()));
        // Half a second refills one connection (2 a second).
        assert_eq!(limiter.handle_connection(one, 1_500), Ok(()));
        assert!(limiter.handle_connection(one, 1_500).is_err());
        // A clock that steps back takes nothing away.
        assert!(limiter.handle_connection(one, 900).is_err());
        assert_eq!(limiter.handle_connection(one, 3_000), Ok(()));
    }

    #[test]
    fn an_ipv6_subscriber_is_its_slash_64_and_a_mapped_ipv4_is_its_ipv4() {
        let mut limiter = AddressLimiter::new(LIMITS);
        let base: Ipv6Addr = "2001:db8:1:2::1".parse().expect("address");
        for host in 1..=3u16 {
            let mut segments = base.segments();
            segments[7] = host;
            assert_eq!(
                limiter.handle_connection(IpAddr::V6(segments.into()), 0),
                Ok(())
            );
        }
        let same_64: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().expect("address");
        assert!(limiter.handle_connection(IpAddr::V6(same_64), 0).is_err());
        let next_64: Ipv6Addr = "2001:db8:1:3::1".parse().expect("address");
        assert_eq!(limiter.handle_connection(IpAddr::V6(next_64), 0), Ok(()));
        let v4 = Ipv4Addr::new(198, 51, 100, 7);
        for _ in 0..3 {
            assert_eq!(limiter.handle_connection(IpAddr::V4(v4), 0), Ok(()));
        }
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        assert!(limiter.handle_connection(mapped, 0).is_err());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_refilled_addresses_first() {
        let mut limiter = AddressLimiter::with_capacity(LIMITS, 2);
        let address = |last| IpAddr::V4(Ipv4Addr::new(203, 0, 113, last));
        assert_eq!(limiter.handle_connection(address(1), 0), Ok(()));
        assert_eq!(limiter.handle_connection(address(2), 0), Ok(()));
        // Neither bucket refilled: a third address is refused, not tracked.
        assert_eq!(
            limiter.handle_connection(address(3), 100),
            Err(Refusal::Overloaded)
        );
        assert_eq!(limiter.tracked(), 2);
        // Once they refilled they are forgotten and the third is admitted.
        assert_eq!(limiter.handle_connection(address(3), 10_000), Ok(()));
        assert!(limiter.tracked() <= 2);
    }
}
