//! The edge's cache of device keys, sans-IO: the Ed25519 key a device authenticates with, the
//! marks its home region has seen of it (the highest queue entry it acknowledged and the highest
//! `device_seq` stored), and its key counts as last reported; the time comes in as `now_ms`.
//!
//! A login whose device is cached needs no round trip to the home region: the edge checks the
//! signature with the cached key and the device's counters against the cached marks. What keeps
//! that correct when the cache is behind (the device was removed, or it sent and acknowledged
//! through another edge):
//! - **Marks only move forward, and the cached ones never lead.** They come from the home
//!   region's answers and from the traffic this edge relays (acknowledgements the region
//!   accepted, envelopes every region committed), each only raising them, so a refusal from the
//!   cache is always right; a device the cache lets in may still be behind, and that is caught
//!   by the next two points.
//! - **Fetches are checked by the region on every request**: a removed device, or a cursor
//!   behind an acknowledged entry, is refused there before anything is delivered or
//!   acknowledged.
//! - **Every other request waits for one confirmation per connection**: the edge asks the home
//!   region for the device's key and marks (the lookup a login made before the cache) and checks
//!   the login's counters against them before the first send, key upload, claim or device
//!   command goes anywhere. A removed or rolled-back device gets its refusal there, never a ✓.
//! - **A refusal forgets the entry** (a region answering `UnknownAccount` or `DeviceRolledBack`
//!   for the device, a removal passing through this edge), so the next login asks the region.
//!
//! Registration fills the cache (the edge relays the new device's key and sees the region
//! accept it), so a device's first login is a cache hit too. The key counts are hints: the
//! device's first fetch reports the region's own.
//!
//! It is bounded ([`DEVICE_KEY_CACHE_ENTRIES_MAX`] entries, the least recently used forgotten
//! first; at most [`DEVICE_KEY_CACHE_ENTRY_BYTES_MAX`] bytes each) and an entry is used for
//! [`DEVICE_KEY_CACHE_TTL_MS`] after the lookup or registration that stored it.

use relay_net::cache::TtlCache;
use relay_proto::DeviceAddress;
use relay_proto::wire::{self, OneTimeKeyCount};

use crate::limits::{
    DEVICE_KEY_CACHE_ENTRIES_MAX, DEVICE_KEY_CACHE_ENTRY_BYTES_MAX, DEVICE_KEY_CACHE_TTL_MS,
};
use crate::session::SeenMarks;

/// Bytes of an Ed25519 public key.
pub const SIGNING_KEY_BYTES: usize = 32;

/// What the edge knows of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceKey {
    /// The device's Ed25519 public key.
    pub signing_key: [u8; SIGNING_KEY_BYTES],
    /// Lower bounds of what its home region has seen of it.
    pub seen: SeenMarks,
    /// Its unclaimed one-time keys, as last reported (a hint).
    pub one_time_keys_remaining: u32,
    /// The state of its fallback key, as last reported (a hint).
    pub fallback_key: i32,
}

impl DeviceKey {
    /// The key counts the edge tells the device when it logs in from the cache, marked as
    /// cached: a hint the device does not upload keys by.
    pub fn key_count(&self) -> OneTimeKeyCount {
        OneTimeKeyCount {
            remaining: self.one_time_keys_remaining,
            fallback_key: self.fallback_key,
            cached: true,
        }
    }
}

/// The keys of the devices that logged in or registered through an edge.
#[derive(Debug, Clone)]
pub struct DeviceKeyCache {
    keys: TtlCache<DeviceAddress, DeviceKey>,
}

impl Default for DeviceKeyCache {
    fn default() -> Self {
        Self::new(DEVICE_KEY_CACHE_ENTRIES_MAX, DEVICE_KEY_CACHE_TTL_MS)
    }
}

impl DeviceKeyCache {
    /// A cache of at most `entries` devices, each used for `ttl_ms`.
    pub fn new(entries: usize, ttl_ms: u64) -> Self {
        Self {
            keys: TtlCache::new(entries, ttl_ms),
        }
    }

    /// The cached key of `device` at `now_ms`, if any.
    pub fn key(&mut self, device: DeviceAddress, now_ms: u64) -> Option<DeviceKey> {
        self.keys.get(&device, now_ms).copied()
    }

    /// The home region answered a key lookup for `device`. A key that is not an Ed25519 key's
    /// length is not cached (the login that asked refuses it). Marks never go back: a cached
    /// mark above the answer's (raised by traffic the answer raced with) stays.
    pub fn handle_lookup(&mut self, device: DeviceAddress, answer: &wire::SigningKey, now_ms: u64) {
        let Ok(signing_key) = <[u8; SIGNING_KEY_BYTES]>::try_from(answer.signing_key.as_slice())
        else {
            self.keys.remove(&device);
            return;
        };
        let mut seen = SeenMarks {
            acked_queue_seq: answer.acked_queue_seq,
            device_seq: answer.device_seq,
        };
        if let Some(cached) = self.keys.peek(&device, now_ms)
            && cached.signing_key == signing_key
        {
            seen.acked_queue_seq = seen.acked_queue_seq.max(cached.seen.acked_queue_seq);
            seen.device_seq = seen.device_seq.max(cached.seen.device_seq);
        }
        let key = DeviceKey {
            signing_key,
            seen,
            one_time_keys_remaining: answer.one_time_keys_remaining,
            fallback_key: answer.fallback_key,
        };
        self.keys.insert(device, key, now_ms);
    }

    /// A region registered `device` as the first device of a new account with `signing_key`,
    /// `one_time_keys` one-time keys and, or not, a fallback key: nothing seen yet.
    pub fn handle_registered(
        &mut self,
        device: DeviceAddress,
        signing_key: &[u8],
        one_time_keys: usize,
        fallback_key: bool,
        now_ms: u64,
    ) {
        let Ok(signing_key) = <[u8; SIGNING_KEY_BYTES]>::try_from(signing_key) else {
            return;
        };
        let fallback_key = if fallback_key {
            wire::FallbackKeyState::Unused
        } else {
            wire::FallbackKeyState::Missing
        };
        let key = DeviceKey {
            signing_key,
            seen: SeenMarks::default(),
            one_time_keys_remaining: u32::try_from(one_time_keys).unwrap_or(u32::MAX),
            fallback_key: fallback_key as i32,
        };
        self.keys.insert(device, key, now_ms);
    }

    /// The home region accepted a fetch of `device` that acknowledged entries up to
    /// `highest_acked` (0: none), and reported its key counts.
    pub fn handle_fetched(
        &mut self,
        device: DeviceAddress,
        highest_acked: u64,
        keys: OneTimeKeyCount,
        now_ms: u64,
    ) {
        if let Some(key) = self.keys.peek_mut(&device, now_ms) {
            key.seen.acked_queue_seq = key.seen.acked_queue_seq.max(highest_acked);
            key.one_time_keys_remaining = keys.remaining;
            key.fallback_key = keys.fallback_key;
        }
    }

    /// Every destination region committed an envelope of `device` numbered `device_seq`.
    pub fn handle_stored(&mut self, device: DeviceAddress, device_seq: u64, now_ms: u64) {
        if let Some(key) = self.keys.peek_mut(&device, now_ms) {
            key.seen.device_seq = key.seen.device_seq.max(device_seq);
        }
    }

    /// The home region reported `device`'s key counts after an upload.
    pub fn handle_keys_uploaded(
        &mut self,
        device: DeviceAddress,
        keys: OneTimeKeyCount,
        now_ms: u64,
    ) {
        if let Some(key) = self.keys.peek_mut(&device, now_ms) {
            key.one_time_keys_remaining = keys.remaining;
            key.fallback_key = keys.fallback_key;
        }
    }

    /// `device` was removed, refused by its region, or its cached key did not verify: the next
    /// login asks the region. Returns whether it was cached.
    pub fn forget(&mut self, device: DeviceAddress) -> bool {
        self.keys.remove(&device).is_some()
    }

    /// Devices cached now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no device is cached.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

// The memory bound of the cache is stated for the type it holds.
const _: () = assert!(
    DEVICE_KEY_CACHE_ENTRY_BYTES_MAX == TtlCache::<DeviceAddress, DeviceKey>::ENTRY_BYTES_MAX
);

#[cfg(test)]
mod tests {
    use super::*;
    use relay_proto::{AccountId, DeviceId};

    const DEVICE: DeviceAddress = DeviceAddress {
        account: AccountId(1),
        device: DeviceId(2),
    };

    fn answer(acked_queue_seq: u64, device_seq: u64) -> wire::SigningKey {
        wire::SigningKey {
            device: DEVICE.into(),
            signing_key: vec![7; SIGNING_KEY_BYTES],
            one_time_keys_remaining: 40,
            fallback_key: wire::FallbackKeyState::Unused as i32,
            acked_queue_seq,
            device_seq,
        }
    }

    #[test]
    fn marks_only_move_forward_and_traffic_raises_them() {
        let mut cache = DeviceKeyCache::new(8, 1_000);
        cache.handle_lookup(DEVICE, &answer(5, 9), 0);
        let key = cache.key(DEVICE, 10).expect("cached");
        assert_eq!(key.signing_key, [7; SIGNING_KEY_BYTES]);
        assert_eq!(
            key.seen,
            SeenMarks {
                acked_queue_seq: 5,
                device_seq: 9
            }
        );
        // Relayed traffic raises the marks and refreshes the counts; lower values change nothing.
        let counts = OneTimeKeyCount {
            remaining: 12,
            fallback_key: wire::FallbackKeyState::Used as i32,
            cached: false,
        };
        cache.handle_fetched(DEVICE, 8, counts.clone(), 20);
        cache.handle_fetched(DEVICE, 0, counts.clone(), 20);
        cache.handle_stored(DEVICE, 11, 20);
        cache.handle_stored(DEVICE, 3, 20);
        let key = cache.key(DEVICE, 30).expect("cached");
        assert_eq!(
            key.seen,
            SeenMarks {
                acked_queue_seq: 8,
                device_seq: 11
            }
        );
        assert_eq!(
            key.key_count(),
            OneTimeKeyCount {
                cached: true,
                ..counts.clone()
            },
            "the counts as relayed, marked as the cache's hint"
        );
        // A lookup that raced with that traffic does not take the marks back.
        cache.handle_lookup(DEVICE, &answer(6, 10), 40);
        let key = cache.key(DEVICE, 50).expect("cached");
        assert_eq!(key.seen.acked_queue_seq, 8);
        assert_eq!(key.seen.device_seq, 11);
        assert_eq!(key.one_time_keys_remaining, 40, "the lookup's counts");
    }

    #[test]
    fn entries_expire_are_forgotten_and_stay_bounded() {
        let mut cache = DeviceKeyCache::new(2, 1_000);
        cache.handle_lookup(DEVICE, &answer(0, 0), 0);
        // Traffic does not extend an entry's life: it is looked up again after its time.
        cache.handle_stored(DEVICE, 4, 900);
        assert!(cache.key(DEVICE, 999).is_some());
        assert!(cache.key(DEVICE, 1_000).is_none(), "expired");
        cache.handle_stored(DEVICE, 5, 1_000);
        assert!(cache.is_empty(), "traffic does not bring an entry back");
        cache.handle_lookup(DEVICE, &answer(0, 0), 2_000);
        assert!(cache.forget(DEVICE));
        assert!(!cache.forget(DEVICE));
        assert!(cache.key(DEVICE, 2_000).is_none());
        for device in 1..=10 {
            let other = DeviceAddress {
                account: AccountId(9),
                device: DeviceId(device),
            };
            cache.handle_lookup(other, &answer(0, 0), 3_000);
            assert!(cache.len() <= 2);
        }
    }

    #[test]
    fn registration_fills_the_cache_and_bad_keys_are_never_cached() {
        let mut cache = DeviceKeyCache::default();
        cache.handle_registered(DEVICE, &[3; SIGNING_KEY_BYTES], 50, true, 0);
        let key = cache.key(DEVICE, 1).expect("cached at registration");
        assert_eq!(key.seen, SeenMarks::default());
        assert_eq!(key.one_time_keys_remaining, 50);
        assert_eq!(key.fallback_key, wire::FallbackKeyState::Unused as i32);

        let mut bad = answer(0, 0);
        bad.signing_key = vec![1; 5];
        cache.handle_lookup(DEVICE, &bad, 2);
        assert!(
            cache.key(DEVICE, 3).is_none(),
            "a short key drops the entry"
        );
        cache.handle_registered(DEVICE, &[3; 31], 50, true, 4);
        assert!(cache.is_empty());
    }
}
