//! What a run records, in simulation terms, and the invariants checked over it.
//!
//! The **trace** is the run as the workload sees it: who asked to send which numbered message
//! to whom and when, when it was acknowledged, who received what in which order under which
//! chat sequence, and the faults. It holds no random bytes (no ids, keys or ciphertexts), so two
//! runs of one seed can be compared line by line. At the end, each client's local history of
//! each chat is recorded too ([`ChatView`]).
//!
//! [`check`] verifies, over the trace and the final views (one device per account for now):
//! - **I1 no loss**: every message acknowledged as sent reached its recipient;
//! - **I2 order**: each device received a chat's messages with strictly increasing chat
//!   sequences, and those plus its own sent messages' sequences are gapless from 1;
//! - **I3 sender FIFO**: one sender's messages arrived in the order they were sent;
//! - **I4 idempotence**: no message arrived twice or is stored twice;
//! - **I8 no undecryptable messages**: every message decrypted, to the text that was sent to
//!   that device by that sender.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A message of the workload: its sender (client number) and the sender's count, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageRef {
    /// The sending client.
    pub sender: u32,
    /// The sender's count of its messages, from 1.
    pub number: u32,
}

impl MessageRef {
    /// The text the workload sends for this message; [`MessageRef::parse`] reads it back.
    pub fn text(&self) -> String {
        format!("{} #{}", client_name(self.sender), self.number)
    }

    /// The message a text names, if it is one of the workload's.
    pub fn parse(text: &str) -> Option<Self> {
        let (sender, number) = text.split_once(" #")?;
        Some(Self {
            sender: client_number(sender)?,
            number: number.parse().ok()?,
        })
    }
}

impl fmt::Display for MessageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", client_name(self.sender), self.number)
    }
}

/// The account name of client `number`.
pub fn client_name(number: u32) -> String {
    format!("c{number}")
}

/// The client number of an account name made by [`client_name`].
pub fn client_number(name: &str) -> Option<u32> {
    name.strip_prefix('c')?.parse().ok()
}

/// One thing that happened, at a simulated time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// Simulated time since the start, in ms.
    pub at_ms: u64,
    /// What happened.
    pub what: What,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A client registered its account (homed in `region`).
    Registered {
        /// The client.
        client: u32,
        /// Its account id.
        account: u64,
        /// Its home region.
        region: u32,
    },
    /// A client asked to send a message.
    Send {
        /// The message.
        message: MessageRef,
        /// Its recipient.
        recipient: u32,
    },
    /// The message entered the sender's durable outbox (it will be retried until settled).
    Queued {
        /// The message.
        message: MessageRef,
    },
    /// The sender saw the message acknowledged: its first tick past pending (✓, or ✓✓ when a
    /// delivered receipt overtook the answer to the send), so every destination region committed
    /// it.
    Acked {
        /// The message.
        message: MessageRef,
    },
    /// A device received and decrypted a message.
    Received {
        /// The receiving client.
        receiver: u32,
        /// The message its text names.
        message: MessageRef,
        /// The sending account, as the envelope says (0 when unreadable).
        from_account: u64,
        /// The receiving region's chat sequence.
        chat_seq: u64,
    },
    /// A device could not decrypt a message.
    Undecryptable {
        /// The receiving client.
        receiver: u32,
        /// The sender (account name).
        from: String,
    },
    /// A device received a message whose text is not one of the workload's.
    Garbled {
        /// The receiving client.
        receiver: u32,
        /// The sender (account name).
        from: String,
        /// The text.
        text: String,
    },
    /// The sender gave the message up (refused permanently).
    Failed {
        /// The message.
        message: MessageRef,
    },
    /// A region's host crashed (its process and unacknowledged state are gone).
    RegionCrashed {
        /// The region.
        region: u32,
    },
    /// A crashed region's host started again on the same disk.
    RegionRestarted {
        /// The region.
        region: u32,
    },
    /// A client finished its workload.
    Finished {
        /// The client.
        client: u32,
        /// Whether it saw everything it waited for before the time limit.
        complete: bool,
    },
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>8} ms  ", self.at_ms)?;
        match &self.what {
            What::Registered {
                client,
                account,
                region,
            } => write!(
                f,
                "{} registered as account {account} in region {region}",
                client_name(*client)
            ),
            What::Send { message, recipient } => {
                write!(f, "{message} sent to {}", client_name(*recipient))
            }
            What::Queued { message } => write!(f, "{message} queued in the outbox"),
            What::Acked { message } => write!(f, "{message} acknowledged"),
            What::Received {
                receiver,
                message,
                from_account,
                chat_seq,
            } => write!(
                f,
                "{} received {message} from account {from_account} at chat seq {chat_seq}",
                client_name(*receiver)
            ),
            What::Undecryptable { receiver, from } => write!(
                f,
                "{} could not decrypt a message from {from}",
                client_name(*receiver)
            ),
            What::Garbled {
                receiver,
                from,
                text,
            } => write!(
                f,
                "{} received an unknown text {text:?} from {from}",
                client_name(*receiver)
            ),
            What::Failed { message } => write!(f, "{message} given up"),
            What::RegionCrashed { region } => write!(f, "region {region} crashed"),
            What::RegionRestarted { region } => write!(f, "region {region} restarted"),
            What::Finished { client, complete } => write!(
                f,
                "{} finished{}",
                client_name(*client),
                if *complete { "" } else { " (time limit)" }
            ),
        }
    }
}

/// One message of a client's local history of a chat, at the end of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewEntry {
    /// Sent by this client (else received).
    pub outgoing: bool,
    /// The message its text names (`None`: undecryptable or not the workload's).
    pub message: Option<MessageRef>,
    /// The home region's chat sequence, once known.
    pub chat_seq: Option<u64>,
}

/// A client's local history of its chat with one peer, at the end of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatView {
    /// The client.
    pub client: u32,
    /// The peer.
    pub peer: u32,
    /// The messages, in the client's order.
    pub entries: Vec<ViewEntry>,
}

/// Which invariant a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// I1 no loss.
    NoLoss,
    /// I2 order.
    Order,
    /// I3 sender FIFO.
    SenderFifo,
    /// I4 idempotence.
    Idempotence,
    /// I8 no undecryptable messages.
    Decryptable,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invariant::NoLoss => "I1 no loss",
            Invariant::Order => "I2 order",
            Invariant::SenderFifo => "I3 sender FIFO",
            Invariant::Idempotence => "I4 idempotence",
            Invariant::Decryptable => "I8 decryptable",
        })
    }
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant.
    pub invariant: Invariant,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// Checks I1–I4 and I8 over a run's trace and final chat views; `planned` maps every message
/// the workload could send to its recipient.
pub fn check(
    planned: &BTreeMap<MessageRef, u32>,
    trace: &[TraceEvent],
    views: &[ChatView],
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut violation =
        |invariant, detail: String| violations.push(Violation { invariant, detail });

    let accounts: BTreeMap<u32, u64> = trace
        .iter()
        .filter_map(|event| match event.what {
            What::Registered {
                client, account, ..
            } => Some((client, account)),
            _ => None,
        })
        .collect();
    let mut acked = BTreeSet::new();
    // receiver → received messages with their chat sequence, in arrival order.
    let mut arrivals: BTreeMap<u32, Vec<(MessageRef, u64)>> = BTreeMap::new();
    for event in trace {
        match &event.what {
            What::Acked { message } => {
                acked.insert(*message);
            }
            What::Received {
                receiver,
                message,
                from_account,
                chat_seq,
            } => {
                if planned.get(message) != Some(receiver) {
                    violation(
                        Invariant::Decryptable,
                        format!(
                            "{} received {message}, which was not sent to it",
                            client_name(*receiver)
                        ),
                    );
                } else if accounts.get(&message.sender) != Some(from_account) {
                    violation(
                        Invariant::Decryptable,
                        format!(
                            "{} received {message} as coming from account {from_account}",
                            client_name(*receiver)
                        ),
                    );
                }
                arrivals
                    .entry(*receiver)
                    .or_default()
                    .push((*message, *chat_seq));
            }
            What::Undecryptable { receiver, from } => violation(
                Invariant::Decryptable,
                format!(
                    "{} could not decrypt a message from {from}",
                    client_name(*receiver)
                ),
            ),
            What::Garbled {
                receiver,
                from,
                text,
            } => violation(
                Invariant::Decryptable,
                format!(
                    "{} decrypted {text:?} from {from}, which nobody sent",
                    client_name(*receiver)
                ),
            ),
            _ => {}
        }
    }

    // I4: nothing arrives twice.
    for (receiver, received) in &arrivals {
        let mut seen = BTreeSet::new();
        for (message, _) in received {
            if !seen.insert(*message) {
                violation(
                    Invariant::Idempotence,
                    format!("{} received {message} twice", client_name(*receiver)),
                );
            }
        }
    }

    // I1: every acknowledged message arrived.
    for message in &acked {
        let Some(recipient) = planned.get(message) else {
            continue;
        };
        let arrived = arrivals
            .get(recipient)
            .is_some_and(|received| received.iter().any(|(m, _)| m == message));
        if !arrived {
            violation(
                Invariant::NoLoss,
                format!(
                    "{message} was acknowledged but {} never received it",
                    client_name(*recipient)
                ),
            );
        }
    }

    // I3: one sender's messages arrive in send order.
    for (receiver, received) in &arrivals {
        let mut last: BTreeMap<u32, u32> = BTreeMap::new();
        for (message, _) in received {
            if let Some(previous) = last.insert(message.sender, message.number)
                && previous >= message.number
            {
                violation(
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

    // I2: per chat, arrivals in strictly increasing chat sequence, and together with the
    // device's own sent messages, gapless from 1.
    for (receiver, received) in &arrivals {
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for (message, chat_seq) in received {
            if let Some(previous) = last.insert(message.sender, *chat_seq)
                && previous >= *chat_seq
            {
                violation(
                    Invariant::Order,
                    format!(
                        "{} received {message} at chat seq {chat_seq} after chat seq {previous}",
                        client_name(*receiver)
                    ),
                );
            }
        }
    }
    // The stored histories agree with what happened: every arrival is stored, under the chat
    // sequence it arrived with, and every acknowledged message is stored by its sender with a
    // chat sequence.
    let view_of = |client: u32, peer: u32| {
        views
            .iter()
            .find(|view| view.client == client && view.peer == peer)
    };
    for (receiver, received) in &arrivals {
        for (message, chat_seq) in received {
            let stored = view_of(*receiver, message.sender).is_some_and(|view| {
                view.entries.iter().any(|entry| {
                    !entry.outgoing
                        && entry.message == Some(*message)
                        && entry.chat_seq == Some(*chat_seq)
                })
            });
            if !stored {
                violation(
                    Invariant::NoLoss,
                    format!(
                        "{} received {message} at chat seq {chat_seq} but does not store it so",
                        client_name(*receiver)
                    ),
                );
            }
        }
    }
    for message in &acked {
        let Some(recipient) = planned.get(message) else {
            continue;
        };
        let sequenced = view_of(message.sender, *recipient).is_some_and(|view| {
            view.entries.iter().any(|entry| {
                entry.outgoing && entry.message == Some(*message) && entry.chat_seq.is_some()
            })
        });
        if !sequenced {
            violation(
                Invariant::Order,
                format!("{message} was acknowledged but its sender stores no chat seq for it",),
            );
        }
    }
    for view in views {
        let mut sequences = BTreeMap::new();
        let mut unsequenced_own = 0usize;
        for entry in &view.entries {
            match entry.chat_seq {
                Some(chat_seq) => {
                    if let Some(other) = sequences.insert(chat_seq, entry.message) {
                        violation(
                            Invariant::Order,
                            format!(
                                "{} holds two messages at chat seq {chat_seq} of the chat with {} ({} and {})",
                                client_name(view.client),
                                client_name(view.peer),
                                describe(other),
                                describe(entry.message)
                            ),
                        );
                    }
                }
                None if entry.outgoing => unsequenced_own += 1,
                None => violation(
                    Invariant::Order,
                    format!(
                        "{} holds a received message without a chat seq ({})",
                        client_name(view.client),
                        describe(entry.message)
                    ),
                ),
            }
        }
        let highest = sequences.keys().next_back().copied().unwrap_or(0);
        let missing = (1..=highest)
            .filter(|chat_seq| !sequences.contains_key(chat_seq))
            .count();
        if missing > unsequenced_own {
            violation(
                Invariant::Order,
                format!(
                    "{}'s chat with {} misses {missing} of chat seqs 1..={highest}",
                    client_name(view.client),
                    client_name(view.peer)
                ),
            );
        }
        // I4 on the stored history: each message once.
        let mut seen = BTreeSet::new();
        for message in view.entries.iter().filter_map(|entry| entry.message) {
            if !seen.insert(message) {
                violation(
                    Invariant::Idempotence,
                    format!(
                        "{} stores {message} twice in the chat with {}",
                        client_name(view.client),
                        client_name(view.peer)
                    ),
                );
            }
        }
    }
    violations
}

fn describe(message: Option<MessageRef>) -> String {
    message.map_or_else(|| "an unknown message".into(), |m| m.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(sender: u32, number: u32) -> MessageRef {
        MessageRef { sender, number }
    }

    fn at(at_ms: u64, what: What) -> TraceEvent {
        TraceEvent { at_ms, what }
    }

    fn received(receiver: u32, m: MessageRef, chat_seq: u64) -> What {
        What::Received {
            receiver,
            message: m,
            from_account: u64::from(m.sender) + 100,
            chat_seq,
        }
    }

    fn registered() -> Vec<TraceEvent> {
        (0..2)
            .map(|client| {
                at(
                    0,
                    What::Registered {
                        client,
                        account: u64::from(client) + 100,
                        region: 1,
                    },
                )
            })
            .collect()
    }

    fn planned() -> BTreeMap<MessageRef, u32> {
        [(message(0, 1), 1), (message(0, 2), 1), (message(1, 1), 0)]
            .into_iter()
            .collect()
    }

    /// The receiver's view of its chat with c0, and c0's view holding its two messages.
    fn views(receiver_entries: Vec<ViewEntry>) -> Vec<ChatView> {
        vec![
            ChatView {
                client: 1,
                peer: 0,
                entries: receiver_entries,
            },
            ChatView {
                client: 0,
                peer: 1,
                entries: vec![entry(true, message(0, 1), 1), entry(true, message(0, 2), 2)],
            },
        ]
    }

    fn entry(outgoing: bool, m: MessageRef, chat_seq: u64) -> ViewEntry {
        ViewEntry {
            outgoing,
            message: Some(m),
            chat_seq: Some(chat_seq),
        }
    }

    #[test]
    fn texts_round_trip() {
        let m = message(3, 17);
        assert_eq!(MessageRef::parse(&m.text()), Some(m));
        assert_eq!(MessageRef::parse("hello"), None);
    }

    #[test]
    fn a_clean_run_passes() {
        let mut trace = registered();
        trace.extend([
            at(
                1,
                What::Acked {
                    message: message(0, 1),
                },
            ),
            at(2, received(1, message(0, 1), 1)),
            at(
                3,
                What::Acked {
                    message: message(0, 2),
                },
            ),
            at(4, received(1, message(0, 2), 3)),
        ]);
        // c1's own message took chat seq 2.
        let views = views(vec![
            entry(false, message(0, 1), 1),
            entry(true, message(1, 1), 2),
            entry(false, message(0, 2), 3),
        ]);
        assert_eq!(check(&planned(), &trace, &views), Vec::new());
    }

    #[test]
    fn loss_reorder_duplicates_gaps_and_garbage_are_caught() {
        let mut trace = registered();
        trace.extend([
            at(
                1,
                What::Acked {
                    message: message(0, 1),
                },
            ),
            at(
                2,
                What::Acked {
                    message: message(0, 2),
                },
            ),
            at(3, received(1, message(0, 2), 2)),
            at(4, received(1, message(0, 2), 2)),
            at(5, received(0, message(0, 1), 1)),
            at(
                6,
                What::Undecryptable {
                    receiver: 1,
                    from: "c0".into(),
                },
            ),
        ]);
        let views = views(vec![entry(false, message(0, 2), 2)]);
        let found: BTreeSet<Invariant> = check(&planned(), &trace, &views)
            .into_iter()
            .map(|violation| violation.invariant)
            .collect();
        let expected: BTreeSet<Invariant> = [
            Invariant::NoLoss,
            Invariant::Order,
            Invariant::SenderFifo,
            Invariant::Idempotence,
            Invariant::Decryptable,
        ]
        .into_iter()
        .collect();
        assert_eq!(found, expected);
    }
}
