//! The edge's cache of account homes, sans-IO: which region is an account's home, as the
//! directory said, with the record's epoch; the time comes in as `now_ms`.
//!
//! It is bounded ([`HOME_CACHE_ENTRIES_MAX`] entries, the least recently used forgotten first;
//! at most [`HOME_CACHE_ENTRY_BYTES_MAX`] bytes each) and versioned: an entry is used for
//! [`HOME_CACHE_TTL_MS`] after the lookup that stored it, a lookup answering an older epoch than
//! the one cached (a directory copy that has not seen a move yet) never moves an account back,
//! and a region answering that an account is not homed there (`UnknownAccount`) makes the edge
//! forget the entry that sent the request there, so a home move is followed without a restart.

use relay_net::cache::TtlCache;
use relay_proto::{AccountId, RegionId};

use crate::limits::{HOME_CACHE_ENTRIES_MAX, HOME_CACHE_ENTRY_BYTES_MAX, HOME_CACHE_TTL_MS};

/// An account's home as the directory answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Home {
    /// The home region.
    pub region: RegionId,
    /// The directory record's epoch: bumped by every home move.
    pub epoch: u64,
}

/// The home regions of the accounts an edge routes to.
#[derive(Debug, Clone)]
pub struct HomeCache {
    homes: TtlCache<AccountId, Home>,
}

impl Default for HomeCache {
    fn default() -> Self {
        Self::new(HOME_CACHE_ENTRIES_MAX, HOME_CACHE_TTL_MS)
    }
}

impl HomeCache {
    /// A cache of at most `entries` homes, each used for `ttl_ms`.
    pub fn new(entries: usize, ttl_ms: u64) -> Self {
        Self {
            homes: TtlCache::new(entries, ttl_ms),
        }
    }

    /// The cached home region of `account` at `now_ms`, if any.
    pub fn home(&mut self, account: AccountId, now_ms: u64) -> Option<RegionId> {
        self.homes.get(&account, now_ms).map(|home| home.region)
    }

    /// The directory answered `home` for `account` at `now_ms`: cached, unless the cache holds
    /// a newer epoch (then the answer is stale and the cached home stays). Returns the home to
    /// route to.
    pub fn handle_lookup(&mut self, account: AccountId, home: Home, now_ms: u64) -> RegionId {
        if let Some(cached) = self.homes.peek(&account, now_ms).copied()
            && cached.epoch > home.epoch
        {
            return cached.region;
        }
        self.homes.insert(account, home, now_ms);
        home.region
    }

    /// `region` answered at `now_ms` that `account` is not homed there: the entry that routed
    /// the request there is forgotten (a newer entry naming another region stays). Returns
    /// whether one was.
    pub fn handle_not_homed(&mut self, account: AccountId, region: RegionId, now_ms: u64) -> bool {
        let routed_there = self
            .homes
            .peek(&account, now_ms)
            .is_some_and(|home| home.region == region);
        routed_there && self.homes.remove(&account).is_some()
    }

    /// Homes cached now.
    pub fn len(&self) -> usize {
        self.homes.len()
    }

    /// Whether no home is cached.
    pub fn is_empty(&self) -> bool {
        self.homes.is_empty()
    }
}

// The memory bound of the cache is stated for the type it holds.
const _: () = assert!(HOME_CACHE_ENTRY_BYTES_MAX == TtlCache::<AccountId, Home>::ENTRY_BYTES_MAX);

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: AccountId = AccountId(1);

    fn home(region: u32, epoch: u64) -> Home {
        Home {
            region: RegionId(region),
            epoch,
        }
    }

    #[test]
    fn a_home_is_used_for_its_time_to_live() {
        let mut cache = HomeCache::new(8, 1_000);
        assert_eq!(cache.home(ALICE, 0), None);
        assert_eq!(cache.handle_lookup(ALICE, home(1, 1), 0), RegionId(1));
        assert_eq!(cache.home(ALICE, 999), Some(RegionId(1)));
        assert_eq!(cache.home(ALICE, 1_000), None, "asked again after its TTL");
        assert!(cache.is_empty());
    }

    #[test]
    fn an_older_epoch_never_moves_an_account_back() {
        let mut cache = HomeCache::new(8, 1_000);
        cache.handle_lookup(ALICE, home(2, 5), 0);
        // A directory copy that has not seen the move to region 2 yet.
        assert_eq!(cache.handle_lookup(ALICE, home(1, 4), 10), RegionId(2));
        assert_eq!(cache.home(ALICE, 10), Some(RegionId(2)));
        // A newer move is followed; so is any answer once the cached one expired.
        assert_eq!(cache.handle_lookup(ALICE, home(3, 6), 20), RegionId(3));
        assert_eq!(cache.handle_lookup(ALICE, home(1, 1), 5_000), RegionId(1));
    }

    #[test]
    fn a_region_refusing_the_account_makes_the_edge_forget_it() {
        let mut cache = HomeCache::new(8, 1_000);
        cache.handle_lookup(ALICE, home(1, 1), 0);
        // A late refusal from a region the cache no longer names changes nothing.
        assert!(!cache.handle_not_homed(ALICE, RegionId(2), 1));
        assert_eq!(cache.home(ALICE, 1), Some(RegionId(1)));
        assert!(cache.handle_not_homed(ALICE, RegionId(1), 1));
        assert_eq!(cache.home(ALICE, 1), None);
        // The next lookup stores what the directory says now, even at an older epoch.
        assert_eq!(cache.handle_lookup(ALICE, home(2, 1), 2), RegionId(2));
        assert!(!cache.handle_not_homed(AccountId(9), RegionId(2), 2));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let mut cache = HomeCache::new(16, 1_000);
        for account in 0..1_000 {
            cache.handle_lookup(AccountId(account), home(1, 1), 0);
            assert!(cache.len() <= 16);
        }
        assert_eq!(cache.home(AccountId(999), 0), Some(RegionId(1)));
        assert_eq!(cache.home(AccountId(0), 0), None, "forgotten long ago");
    }
}
