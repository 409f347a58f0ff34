//! Liveness: once every fault healed, each queued message is acknowledged and each acknowledged
//! message arrives within [`LIVENESS_BOUND_MS`].

use std::collections::{BTreeMap, BTreeSet};

use super::trace::{MessageRef, TraceEvent, What};
use super::{Invariant, Violation};

/// How long after the heal (or after its own queueing or acknowledgement, if later) a message
/// may take to be acknowledged and to arrive, in simulated ms. Covers the client's longest retry
/// backoff (30 s), QUIC's idle timeout noticing a dead connection, and reconnection.
pub const LIVENESS_BOUND_MS: u64 = 120_000;

/// Liveness: after the heal, each message queued (and not given up) is acknowledged, and each
/// acknowledged message arrives, within [`LIVENESS_BOUND_MS`].
pub(crate) fn check_liveness(
    trace: &[TraceEvent],
    planned: &BTreeMap<MessageRef, u32>,
    violations: &mut Vec<Violation>,
) {
    let heal_ms = heal_ms(trace);
    let mut queued = BTreeMap::new();
    let mut acked = BTreeMap::new();
    let mut arrived = BTreeMap::new();
    let mut failed = BTreeSet::new();
    let mut removed = BTreeSet::new();
    let mut sent_by = BTreeMap::new();
    for event in trace {
        match event.what {
            What::Removed { client } => {
                removed.insert(client);
            }
            What::Send {
                message, device, ..
            } => {
                sent_by.insert(message, device);
            }
            What::Queued { message } => {
                queued.entry(message).or_insert(event.at_ms);
            }
            What::Acked { message } => {
                acked.entry(message).or_insert(event.at_ms);
            }
            // The last arrival: every device of the recipient is held to the bound.
            What::Received {
                receiver, message, ..
            } if planned.get(&message) == Some(&receiver) => {
                arrived.insert(message, event.at_ms);
            }
            What::Failed { message, .. } => {
                failed.insert(message);
            }
            _ => {}
        }
    }
    for (message, &at) in &queued {
        // A removed device's outbox stays where it was: only what it had sent is held.
        let from_removed = removed.contains(&message.sender) && sent_by.get(message) == Some(&1);
        if failed.contains(message) || (from_removed && !acked.contains_key(message)) {
            continue;
        }
        let due = heal_ms.max(at) + LIVENESS_BOUND_MS;
        match acked.get(message) {
            Some(&when) if when <= due => {}
            Some(&when) => violations.push(Violation {
                invariant: Invariant::Liveness,
                detail: format!(
                    "{message} was acknowledged at {when} ms, after its bound of {due} ms"
                ),
            }),
            None => violations.push(Violation {
                invariant: Invariant::Liveness,
                detail: format!(
                    "{message} was queued at {at} ms and never acknowledged (healed at {heal_ms} ms)"
                ),
            }),
        }
    }
    for (message, &at) in &acked {
        let due = heal_ms.max(at) + LIVENESS_BOUND_MS;
        if let Some(&when) = arrived.get(message)
            && when > due
        {
            violations.push(Violation {
                invariant: Invariant::Liveness,
                detail: format!(
                    "{message} was acknowledged at {at} ms but arrived only at {when} ms, after its bound of {due} ms"
                ),
            });
        }
    }
}

/// When the safety phase ended (0: the run had no faults to heal).
fn heal_ms(trace: &[TraceEvent]) -> u64 {
    trace
        .iter()
        .find(|event| event.what == What::Healed)
        .map_or(0, |event| event.at_ms)
}

/// The slowest delivery after the heal: the longest time from `max(heal, acknowledgement)` to
/// arrival, in ms (how close a run came to [`LIVENESS_BOUND_MS`]).
pub fn slowest_delivery_ms(trace: &[TraceEvent], planned: &BTreeMap<MessageRef, u32>) -> u64 {
    let heal_ms = heal_ms(trace);
    let mut acked = BTreeMap::new();
    let mut slowest = 0;
    for event in trace {
        match event.what {
            What::Acked { message } => {
                acked.entry(message).or_insert(event.at_ms);
            }
            What::Received {
                receiver, message, ..
            } if planned.get(&message) == Some(&receiver) => {
                if let Some(&at) = acked.get(&message) {
                    slowest = slowest.max(event.at_ms.saturating_sub(heal_ms.max(at)));
                }
            }
            _ => {}
        }
    }
    slowest
}
