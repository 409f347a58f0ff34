//! The life of the device's fallback key, sans IO: when to make a new one and when the
//! previous one may be forgotten. The caller reads [`FallbackTimes`] and the region's
//! [`FallbackKeyState`] inside one store transaction, applies the [`FallbackPlan`] to the Olm
//! account there, stores the new times with it, and uploads the key afterwards.
//!
//! The fallback key is what a claimer gets once the device's one-time keys ran out, so nobody
//! is ever refused a session with it. It is reusable, which weakens the forward secrecy of the
//! sessions that start from it, so the device replaces it when the region reports it was handed
//! out (`Used`), when it is older than [`FALLBACK_KEY_MAX_AGE_MS`], or when the region has none
//! (`Missing`, a device registered before fallback keys were uploaded).
//!
//! **The rule for forgetting.** vodozemac keeps two fallback keys: the current one and the one
//! it replaced, for pre-key messages made from the old key that are still on their way (a
//! claimer took the key before the replacement and has not sent yet, or its message waits in
//! this device's queue). Replacing the key again drops that previous one, so both forgetting
//! it and making another key wait until
//! - the previous key was replaced at least [`FALLBACK_KEY_PREVIOUS_KEPT_MS`] ago: no claimer
//!   can have taken it since (the region hands out only the current key), and a claimer's
//!   message is sent right after its claim, so anything made from it was sent long ago; and
//! - this device has just fetched its queue to the end: every message already stored for it,
//!   made from either key, has been decrypted and stored before the key goes.
//!
//! What can still fail is a message made from a key that was replaced more than that long
//! before it reached the region (a sender that claimed, then stayed offline for a week with the
//! message in its outbox): the recipient records it as undecryptable, as it would any message
//! whose key is gone.

use relay_proto::wire::FallbackKeyState;

use crate::limits::{FALLBACK_KEY_MAX_AGE_MS, FALLBACK_KEY_PREVIOUS_KEPT_MS};

/// What the device stores about its fallback keys next to the Olm account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FallbackTimes {
    /// When the current fallback key was made (ms since the Unix epoch); `None` before the
    /// first. It is also when that key replaced the previous one.
    pub made_at_ms: Option<u64>,
    /// Whether the key the current one replaced is still kept.
    pub previous_kept: bool,
}

/// What to do to the Olm account's fallback keys now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FallbackPlan {
    /// Forget the previous fallback key.
    pub forget_previous: bool,
    /// Make a new fallback key (it becomes current; the current one becomes the previous one).
    pub generate: bool,
}

/// What a device knows when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackFacts {
    /// The stored times.
    pub times: FallbackTimes,
    /// What the region said of the current key.
    pub region_state: FallbackKeyState,
    /// Whether the account holds a fallback key that was never uploaded (it goes up first).
    pub unpublished: bool,
    /// Whether the device just fetched its queue to the end.
    pub queue_drained: bool,
    /// Now, in ms since the Unix epoch.
    pub now_ms: u64,
}

/// Decides what to do with the fallback keys (see the module doc for the rule).
pub fn plan(facts: FallbackFacts) -> FallbackPlan {
    let FallbackFacts {
        times,
        region_state,
        unpublished,
        queue_drained,
        now_ms,
    } = facts;
    let Some(made_at_ms) = times.made_at_ms else {
        // The first fallback key: there is no previous one to lose.
        return FallbackPlan {
            forget_previous: false,
            generate: !unpublished,
        };
    };
    let age_ms = now_ms.saturating_sub(made_at_ms);
    let previous_expired = !times.previous_kept || age_ms >= FALLBACK_KEY_PREVIOUS_KEPT_MS;
    let may_drop_previous = queue_drained && previous_expired;
    let wanted = match region_state {
        FallbackKeyState::Missing | FallbackKeyState::Used => true,
        FallbackKeyState::Unused | FallbackKeyState::Unknown => age_ms >= FALLBACK_KEY_MAX_AGE_MS,
    };
    FallbackPlan {
        forget_previous: may_drop_previous && times.previous_kept,
        generate: !unpublished && wanted && may_drop_previous,
    }
}

/// The times after `plan` was applied at `now_ms`.
pub fn after(times: FallbackTimes, plan: FallbackPlan, now_ms: u64) -> FallbackTimes {
    let mut times = times;
    if plan.forget_previous {
        times.previous_kept = false;
    }
    if plan.generate {
        times.previous_kept = times.made_at_ms.is_some();
        times.made_at_ms = Some(now_ms);
    }
    times
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 24 * 3600 * 1000;
    const T0: u64 = 1_000 * DAY_MS;

    fn facts(times: FallbackTimes, region_state: FallbackKeyState) -> FallbackFacts {
        FallbackFacts {
            times,
            region_state,
            unpublished: false,
            queue_drained: true,
            now_ms: T0,
        }
    }

    const NOTHING: FallbackPlan = FallbackPlan {
        forget_previous: false,
        generate: false,
    };
    const GENERATE: FallbackPlan = FallbackPlan {
        forget_previous: false,
        generate: true,
    };

    #[test]
    fn the_first_key_is_made_at_once_and_uploaded_until_it_is_up() {
        let none = FallbackTimes::default();
        for state in [
            FallbackKeyState::Missing,
            FallbackKeyState::Unknown,
            FallbackKeyState::Used,
        ] {
            let mut early = facts(none, state);
            early.queue_drained = false;
            assert_eq!(plan(early), GENERATE, "{state:?}");
        }
        let mut pending = facts(none, FallbackKeyState::Missing);
        pending.unpublished = true;
        assert_eq!(plan(pending), NOTHING, "the made key goes up first");
    }

    #[test]
    fn a_used_or_old_key_is_replaced_once_the_previous_one_may_go() {
        let fresh = FallbackTimes {
            made_at_ms: Some(T0 - DAY_MS),
            previous_kept: false,
        };
        assert_eq!(plan(facts(fresh, FallbackKeyState::Unused)), NOTHING);
        assert_eq!(plan(facts(fresh, FallbackKeyState::Unknown)), NOTHING);
        assert_eq!(plan(facts(fresh, FallbackKeyState::Used)), GENERATE);
        assert_eq!(plan(facts(fresh, FallbackKeyState::Missing)), GENERATE);
        let old = FallbackTimes {
            made_at_ms: Some(T0 - FALLBACK_KEY_MAX_AGE_MS),
            previous_kept: false,
        };
        assert_eq!(plan(facts(old, FallbackKeyState::Unused)), GENERATE);
        assert_eq!(plan(facts(old, FallbackKeyState::Unknown)), GENERATE);

        // Not before the queue was fetched to the end, nor with an unpublished key pending.
        let mut busy = facts(fresh, FallbackKeyState::Used);
        busy.queue_drained = false;
        assert_eq!(plan(busy), NOTHING);
        let mut pending = facts(fresh, FallbackKeyState::Used);
        pending.unpublished = true;
        assert_eq!(plan(pending), NOTHING);
    }

    #[test]
    fn the_previous_key_is_kept_its_full_time_then_forgotten() {
        let replaced = |ago_ms: u64| FallbackTimes {
            made_at_ms: Some(T0 - ago_ms),
            previous_kept: true,
        };
        // Replaced a day ago and already used again: the previous key is still kept, so no new
        // key either (making one would drop it).
        assert_eq!(
            plan(facts(replaced(DAY_MS), FallbackKeyState::Used)),
            NOTHING
        );
        // Once the keeping time has passed, the previous key goes, and the current key (as old
        // as that) is replaced in the same step.
        let kept_out = replaced(FALLBACK_KEY_PREVIOUS_KEPT_MS);
        assert_eq!(
            plan(facts(kept_out, FallbackKeyState::Unused)),
            FallbackPlan {
                forget_previous: true,
                generate: true,
            }
        );
        assert_eq!(
            plan(facts(kept_out, FallbackKeyState::Used)),
            FallbackPlan {
                forget_previous: true,
                generate: true,
            }
        );
        // Never while messages may wait in the queue.
        let mut busy = facts(kept_out, FallbackKeyState::Used);
        busy.queue_drained = false;
        assert_eq!(plan(busy), NOTHING);
    }

    #[test]
    fn the_times_follow_the_plan() {
        let first = after(FallbackTimes::default(), GENERATE, 10);
        assert_eq!(
            first,
            FallbackTimes {
                made_at_ms: Some(10),
                previous_kept: false
            }
        );
        let second = after(first, GENERATE, 20);
        assert_eq!(
            second,
            FallbackTimes {
                made_at_ms: Some(20),
                previous_kept: true
            }
        );
        let forgotten = after(
            second,
            FallbackPlan {
                forget_previous: true,
                generate: false,
            },
            30,
        );
        assert!(!forgotten.previous_kept);
        assert_eq!(after(forgotten, NOTHING, 40), forgotten);
    }
}
