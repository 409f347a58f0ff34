//! A bounded cache whose entries expire, sans-IO: the time comes in as `now_ms`, nothing here
//! reads a clock. Services keep what they learn from peers in one (an edge the home regions of
//! accounts, a region when it last asked the directory writer about an account), so no cache
//! grows with what peers send and none serves an entry forever.
//!
//! A [`TtlCache`] holds at most its capacity: inserting a new key into a full cache evicts the
//! least recently used entry. An entry stored `ttl_ms` or more ago is never returned; it goes
//! when its key is next asked for, or as the least recently used. Every operation takes
//! O(log n): a hash map of the entries and an ordered index of their last use. Memory is
//! bounded by the capacity times [`TtlCache::ENTRY_BYTES_MAX`].

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::mem::size_of;

/// A cache of at most `capacity` entries, each served for `ttl_ms` after it was stored.
#[derive(Debug, Clone)]
pub struct TtlCache<K, V> {
    capacity: usize,
    ttl_ms: u64,
    entries: HashMap<K, Slot<V>>,
    /// Last use → key, oldest first.
    by_use: BTreeMap<u64, K>,
    next_use: u64,
}

#[derive(Debug, Clone)]
struct Slot<V> {
    value: V,
    stored_at_ms: u64,
    last_use: u64,
}

impl<K: Hash + Eq + Clone, V> TtlCache<K, V> {
    /// Most heap bytes one entry takes, overheads included: the key and slot in the hash map,
    /// counted twice for its worst load factor after growing, plus its control byte; and the
    /// use index's key and tick, counted twice for B-tree nodes half full.
    pub const ENTRY_BYTES_MAX: usize =
        2 * (size_of::<K>() + size_of::<Slot<V>>() + 1) + 2 * (size_of::<u64>() + size_of::<K>());

    /// An empty cache of at most `capacity` entries (at least one), each served for `ttl_ms`.
    pub fn new(capacity: usize, ttl_ms: u64) -> Self {
        Self {
            capacity: capacity.max(1),
            ttl_ms,
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            next_use: 0,
        }
    }

    /// The value of `key` if it is stored and was stored less than the time to live before
    /// `now_ms`; it becomes the most recently used. An expired entry is removed.
    pub fn get(&mut self, key: &K, now_ms: u64) -> Option<&V> {
        let expired = self.is_expired(self.entries.get(key)?, now_ms);
        if expired {
            self.remove(key);
            return None;
        }
        let use_now = self.tick();
        let slot = self.entries.get_mut(key)?;
        self.by_use.remove(&slot.last_use);
        slot.last_use = use_now;
        self.by_use.insert(use_now, key.clone());
        Some(&slot.value)
    }

    /// The value of `key` if it is stored and not expired at `now_ms`, without using it.
    pub fn peek(&self, key: &K, now_ms: u64) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|slot| !self.is_expired(slot, now_ms))
            .map(|slot| &slot.value)
    }

    /// The value of `key` to change in place, if it is stored and not expired at `now_ms`,
    /// without using it: its time to live and its place in the eviction order stay.
    pub fn peek_mut(&mut self, key: &K, now_ms: u64) -> Option<&mut V> {
        let ttl_ms = self.ttl_ms;
        self.entries
            .get_mut(key)
            .filter(|slot| now_ms.saturating_sub(slot.stored_at_ms) < ttl_ms)
            .map(|slot| &mut slot.value)
    }

    /// Stores `value` under `key` at `now_ms` (its time to live starts again), as the most
    /// recently used; a new key in a full cache evicts the least recently used entry.
    pub fn insert(&mut self, key: K, value: V, now_ms: u64) {
        let last_use = self.tick();
        if let Some(old) = self.entries.remove(&key) {
            self.by_use.remove(&old.last_use);
        } else if self.entries.len() >= self.capacity {
            self.evict_least_recently_used();
        }
        self.by_use.insert(last_use, key.clone());
        self.entries.insert(
            key,
            Slot {
                value,
                stored_at_ms: now_ms,
                last_use,
            },
        );
    }

    /// Removes `key`, returning its value (expired or not).
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let slot = self.entries.remove(key)?;
        self.by_use.remove(&slot.last_use);
        Some(slot.value)
    }

    /// Entries stored now, expired ones not yet removed included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most entries this cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn is_expired(&self, slot: &Slot<V>, now_ms: u64) -> bool {
        // A clock that steps back makes an entry look younger, never older.
        now_ms.saturating_sub(slot.stored_at_ms) >= self.ttl_ms
    }

    fn tick(&mut self) -> u64 {
        self.next_use += 1;
        self.next_use
    }

    fn evict_least_recently_used(&mut self) {
        if let Some((_, key)) = self.by_use.pop_first() {
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_their_time_to_live() {
        let mut cache = TtlCache::new(4, 1_000);
        cache.insert("a", 1, 10_000);
        assert_eq!(cache.get(&"a", 10_999), Some(&1));
        assert_eq!(cache.peek(&"a", 10_999), Some(&1));
        if let Some(value) = cache.peek_mut(&"a", 10_999) {
            *value = 10;
        }
        assert_eq!(cache.peek(&"a", 10_999), Some(&10), "changed in place");
        assert_eq!(cache.peek_mut(&"a", 11_000), None, "expired");
        *cache.peek_mut(&"a", 10_000).expect("stored") = 1;
        assert_eq!(cache.peek(&"a", 11_000), None, "expired, not used");
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&"a", 11_000), None);
        assert!(cache.is_empty(), "an expired entry goes when asked for");
        // Storing again starts the time to live again; a clock stepping back keeps it.
        cache.insert("a", 2, 20_000);
        cache.insert("a", 3, 20_500);
        assert_eq!(cache.get(&"a", 21_400), Some(&3));
        assert_eq!(cache.get(&"a", 5), Some(&3));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_full_cache_evicts_the_least_recently_used() {
        let mut cache = TtlCache::new(3, u64::MAX);
        for (key, value) in [("a", 1), ("b", 2), ("c", 3)] {
            cache.insert(key, value, 0);
        }
        // Using "a" makes "b" the least recently used; peeking uses nothing.
        assert_eq!(cache.get(&"a", 0), Some(&1));
        assert_eq!(cache.peek(&"b", 0), Some(&2));
        cache.insert("d", 4, 0);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.peek(&"b", 0), None, "evicted");
        assert_eq!(cache.peek(&"a", 0), Some(&1));
        // Replacing a stored key evicts nothing.
        cache.insert("c", 30, 0);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.remove(&"c"), Some(30));
        assert_eq!(cache.remove(&"c"), None);
        cache.insert("e", 5, 0);
        cache.insert("f", 6, 0);
        assert_eq!(cache.peek(&"a", 0), None, "a was used before d, e and f");
        assert_eq!(cache.len(), cache.capacity());
    }

    #[test]
    fn it_stays_bounded_under_many_keys() {
        let mut cache = TtlCache::new(100, 1_000);
        for key in 0..10_000u64 {
            cache.insert(key, key, key);
            assert!(cache.len() <= 100);
        }
        assert_eq!(cache.len(), 100);
        assert_eq!(cache.get(&9_999, 9_999), Some(&9_999));
        assert_eq!(cache.get(&9_899, 9_999), None, "evicted long ago");
        assert_eq!(TtlCache::<u64, u64>::new(0, 1).capacity(), 1);
    }
}
