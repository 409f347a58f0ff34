//! I4 idempotence: no message arrives twice, and no chat history stores one twice.

use std::collections::HashSet;

use super::facts::Facts;
use super::trace::{ChatView, client_name, device_name};
use super::{Findings, Invariant};

/// Each receiving device got each message at most once.
pub(crate) fn check_arrivals(facts: &Facts<'_>, findings: &mut Findings) {
    for ((receiver, device), received) in &facts.arrivals {
        let mut seen = HashSet::new();
        for (message, _) in received {
            if !seen.insert(*message) {
                findings.add(
                    Invariant::Idempotence,
                    format!(
                        "{} received {message} twice",
                        device_name(*receiver, *device)
                    ),
                );
            }
        }
    }
}

/// A stored chat history holds each message once.
pub(crate) fn check_view(view: &ChatView, findings: &mut Findings) {
    let mut seen = HashSet::new();
    for message in view.entries.iter().filter_map(|entry| entry.message) {
        if !seen.insert(message) {
            findings.add(
                Invariant::Idempotence,
                format!(
                    "{} stores {message} twice in the chat with {}",
                    device_name(view.client, view.device),
                    client_name(view.peer)
                ),
            );
        }
    }
}
