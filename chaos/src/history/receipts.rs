//! I6 receipts move forward: a message's tick never moves back (pending < sent < delivered <
//! read).

use std::collections::BTreeMap;

use super::trace::{MessageRef, TraceEvent, What};
use super::{Invariant, Violation};

/// I6: a message's tick never moves backwards.
pub(crate) fn check_receipts(trace: &[TraceEvent], violations: &mut Vec<Violation>) {
    let mut ticks: BTreeMap<MessageRef, u8> = BTreeMap::new();
    for event in trace {
        if let What::Tick { message, tick } = event.what {
            let highest = ticks.entry(message).or_default();
            if tick < *highest {
                violations.push(Violation {
                    invariant: Invariant::ReceiptsForward,
                    detail: format!(
                        "{message}'s tick moved back from {} to {} at {} ms",
                        super::trace::tick_label(*highest),
                        super::trace::tick_label(tick),
                        event.at_ms
                    ),
                });
            }
            *highest = (*highest).max(tick);
        }
    }
}
