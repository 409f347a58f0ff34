//! A removed device receives nothing more: no message that entered an outbox after its
//! account's first device removed it reached it (its region refuses it from then on, and every
//! envelope committed since names the account's current devices only).

use super::facts::Facts;
use super::trace::device_name;
use super::{Findings, Invariant};

/// No arrival at a removed device of a message queued after the removal.
pub(crate) fn check(facts: &Facts<'_>, findings: &mut Findings) {
    for (&client, &removed_at) in &facts.removed {
        let Some(received) = facts.arrivals.get(&(client, 1)) else {
            continue;
        };
        for (message, chat_seq) in received {
            if facts
                .queued_at
                .get(message)
                .is_some_and(|&queued| queued > removed_at)
            {
                findings.add(
                    Invariant::Removal,
                    format!(
                        "{} received {message} (chat seq {chat_seq}), queued after it was removed",
                        device_name(client, 1)
                    ),
                );
            }
        }
    }
}
