//! I1 no loss: every message acknowledged as sent reached its recipient, and every arrival is
//! stored as it arrived.

use super::facts::Facts;
use super::trace::client_name;
use super::{Findings, Invariant};

/// Every acknowledged message arrived at its recipient.
pub(crate) fn check_acknowledged(facts: &Facts<'_>, findings: &mut Findings) {
    for message in &facts.acked {
        let Some(recipient) = facts.planned.get(message) else {
            continue;
        };
        if !facts.arrived.contains(&(*recipient, *message)) {
            findings.add(
                Invariant::NoLoss,
                format!(
                    "{message} was acknowledged but {} never received it",
                    client_name(*recipient)
                ),
            );
        }
    }
}

/// Every arrival is in the receiver's stored history of the chat, under the chat sequence it
/// arrived with.
pub(crate) fn check_stored(facts: &Facts<'_>, findings: &mut Findings) {
    for (receiver, received) in &facts.arrivals {
        for (message, chat_seq) in received {
            let stored =
                facts
                    .stored_received
                    .contains(&(*receiver, message.sender, *message, *chat_seq));
            if !stored {
                findings.add(
                    Invariant::NoLoss,
                    format!(
                        "{} received {message} at chat seq {chat_seq} but does not store it so",
                        client_name(*receiver)
                    ),
                );
            }
        }
    }
}
