//! I8 no undecryptable messages: every arrival decrypted, to a text the workload sent to that
//! device from that sender's account.

use super::facts::Facts;
use super::trace::{TraceEvent, What, device_name};
use super::{Findings, Invariant};

/// Reports, in trace order, every arrival that was undecryptable, garbled, not addressed to its
/// receiver, or attributed to another account.
pub(crate) fn check(facts: &Facts<'_>, trace: &[TraceEvent], findings: &mut Findings) {
    for event in trace {
        match &event.what {
            What::Received {
                receiver,
                device,
                message,
                from_account,
                ..
            } => {
                if facts.planned.get(message) != Some(receiver) {
                    findings.add(
                        Invariant::Decryptable,
                        format!(
                            "{} received {message}, which was not sent to it",
                            device_name(*receiver, *device)
                        ),
                    );
                } else if facts.accounts.get(&message.sender) != Some(from_account) {
                    findings.add(
                        Invariant::Decryptable,
                        format!(
                            "{} received {message} as coming from account {from_account}",
                            device_name(*receiver, *device)
                        ),
                    );
                }
            }
            What::Undecryptable {
                receiver,
                device,
                from,
                ..
            } => findings.add(
                Invariant::Decryptable,
                format!(
                    "{} could not decrypt a message from {from}",
                    device_name(*receiver, *device)
                ),
            ),
            What::Garbled {
                receiver,
                device,
                from,
                text,
            } => findings.add(
                Invariant::Decryptable,
                format!(
                    "{} decrypted {text:?} from {from}, which nobody sent",
                    device_name(*receiver, *device)
                ),
            ),
            _ => {}
        }
    }
}
