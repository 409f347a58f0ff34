//! I3 sender FIFO: one sending device's messages arrive in the order it sent them.

use std::collections::HashMap;

use super::facts::Facts;
use super::trace::{MessageRef, device_name};
use super::{Findings, Invariant};

/// At each receiving device, the message numbers of each sending device only grow (a client's
/// two devices send their shares of its numbers concurrently).
pub(crate) fn check(facts: &Facts<'_>, findings: &mut Findings) {
    for ((receiver, device), received) in &facts.arrivals {
        let mut last: HashMap<(u32, u32), u32> = HashMap::new();
        for (message, _) in received {
            let sender_device = facts.sent_by.get(message).copied().unwrap_or(0);
            if let Some(previous) = last.insert((message.sender, sender_device), message.number)
                && previous >= message.number
            {
                findings.add(
                    Invariant::SenderFifo,
                    format!(
                        "{} received {message} after {}",
                        device_name(*receiver, *device),
                        MessageRef {
                            sender: message.sender,
                            number: previous
                        }
                    ),
                );
            }
        }
    }
}
