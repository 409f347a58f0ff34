//! I1 no loss: every message acknowledged as sent reached every device of its recipient, and
//! every arrival is stored as it arrived.

use super::facts::Facts;
use super::trace::device_name;
use super::{Findings, Invariant};

/// Every acknowledged message arrived at every device of its recipient.
pub(crate) fn check_acknowledged(facts: &Facts<'_>, findings: &mut Findings) {
    for message in &facts.acked {
        let Some(&recipient) = facts.planned.get(message) else {
            continue;
        };
        for device in facts.devices_of(recipient, message) {
            if !facts.arrived.contains(&(recipient, device, *message)) {
                findings.add(
                    Invariant::NoLoss,
                    format!(
                        "{message} was acknowledged but {} never received it",
                        device_name(recipient, device)
                    ),
                );
            }
        }
    }
}

/// Every arrival is in the receiving device's stored history of the chat, under the chat
/// sequence it arrived with (without its text, once its sender deleted it for everyone).
pub(crate) fn check_stored(facts: &Facts<'_>, findings: &mut Findings) {
    for ((receiver, device), received) in &facts.arrivals {
        for (message, chat_seq) in received {
            let stored = facts.stored_received.contains(&(
                *receiver,
                *device,
                message.sender,
                *message,
                *chat_seq,
            )) || (facts.deleted.contains(message)
                && facts
                    .textless
                    .contains(&(*receiver, *device, message.sender, *chat_seq)));
            if !stored {
                findings.add(
                    Invariant::NoLoss,
                    format!(
                        "{} received {message} at chat seq {chat_seq} but does not store it so",
                        device_name(*receiver, *device)
                    ),
                );
            }
        }
    }
}
