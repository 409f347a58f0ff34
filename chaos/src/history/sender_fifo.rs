//! I3 sender FIFO: one sender's messages arrive in the order they were sent.

use std::collections::HashMap;

use super::facts::Facts;
use super::trace::{MessageRef, client_name};
use super::{Findings, Invariant};

/// At each receiver, each sender's message numbers only grow.
pub(crate) fn check(facts: &Facts<'_>, findings: &mut Findings) {
    for (receiver, received) in &facts.arrivals {
        let mut last: HashMap<u32, u32> = HashMap::new();
        for (message, _) in received {
            if let Some(previous) = last.insert(message.sender, message.number)
                && previous >= message.number
            {
                findings.add(
                    Invariant::SenderFifo,
                    format!(
                        "{} received {message} after {}",
                        client_name(*receiver),
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
