//! I7 convergence: the devices of one account that exchanged the same operations hold identical
//! chat documents.
//!
//! The workload records each device's relay-sync view of each chat ([`DocView`]) after its final
//! sync, once every device of the account has finished acting; then every device of an account
//! must show each chat exactly as the account's first device does (text, edited, deleted,
//! reactions, message by message). The check reports the first difference of each chat.

use std::collections::BTreeMap;

use super::trace::{DocEntry, DocView, client_name, device_name};
use super::{Findings, Invariant};

/// Compares, per (account, chat), every device's document with the first device's.
pub(crate) fn check(docs: &[DocView], findings: &mut Findings) {
    let mut by_chat: BTreeMap<(u32, u32), Vec<&DocView>> = BTreeMap::new();
    for doc in docs {
        by_chat.entry((doc.client, doc.peer)).or_default().push(doc);
    }
    for ((client, peer), mut devices) in by_chat {
        devices.sort_by_key(|doc| doc.device);
        let Some((first, others)) = devices.split_first() else {
            continue;
        };
        for other in others {
            if let Some(difference) = first_difference(&first.entries, &other.entries) {
                findings.add(
                    Invariant::Convergence,
                    format!(
                        "{}'s chat with {}: {} and {} differ first at {difference}",
                        client_name(client),
                        client_name(peer),
                        device_name(client, first.device),
                        device_name(client, other.device),
                    ),
                );
            }
        }
    }
}

/// The first entry at which two documents differ, described (`None` when they are equal).
fn first_difference(left: &[DocEntry], right: &[DocEntry]) -> Option<String> {
    let shown =
        |entry: Option<&DocEntry>| entry.map_or_else(|| "nothing".into(), |e| e.to_string());
    let at = left
        .iter()
        .zip(right)
        .position(|(l, r)| l != r)
        .or_else(|| (left.len() != right.len()).then(|| left.len().min(right.len())))?;
    Some(format!(
        "message {}: {} against {}",
        at + 1,
        shown(left.get(at)),
        shown(right.get(at))
    ))
}
