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

use crate::faults::FaultKind;

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
    /// The sender's tick of one of its messages moved (0 pending, 1 sent, 2 delivered, 3 read).
    Tick {
        /// The message.
        message: MessageRef,
        /// The new tick.
        tick: u8,
    },
    /// A client marked a peer's messages read, sending `envelopes` read receipts (each takes a
    /// chat sequence number in the chat).
    MarkedRead {
        /// The reader.
        reader: u32,
        /// The peer whose messages were read.
        peer: u32,
        /// How many receipt envelopes that queued.
        envelopes: u32,
    },
    /// A fault started.
    FaultStarted {
        /// Its kind.
        kind: FaultKind,
        /// What it hits.
        label: String,
    },
    /// A fault ended.
    FaultEnded {
        /// Its kind.
        kind: FaultKind,
        /// What it hit.
        label: String,
    },
    /// A client app was killed and opened again on its store.
    ClientRestarted {
        /// The client.
        client: u32,
    },
    /// The safety phase ended: every fault is healed, and the liveness bound starts.
    Healed,
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
            What::Tick { message, tick } => {
                let name = match tick {
                    0 => "pending",
                    1 => "sent",
                    2 => "delivered",
                    3 => "read",
                    _ => "?",
                };
                write!(f, "{message} is {name}")
            }
            What::MarkedRead {
                reader,
                peer,
                envelopes,
            } => write!(
                f,
                "{} read {}'s messages ({envelopes} receipt envelope(s))",
                client_name(*reader),
                client_name(*peer)
            ),
            What::FaultStarted { kind, label } => write!(f, "fault: {label} ({kind})"),
            What::FaultEnded { kind, label } => write!(f, "fault over: {label} ({kind})"),
            What::ClientRestarted { client } => {
                write!(f, "{} killed and opened again", client_name(*client))
            }
            What::Healed => write!(f, "every fault healed; the liveness phase starts"),
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
    /// I5 blindness: no server stores plaintext.
    Blindness,
    /// I6 receipts move forward.
    ReceiptsForward,
    /// I8 no undecryptable messages.
    Decryptable,
    /// Liveness: once faults heal, every queued message is acknowledged and every acknowledged
    /// message arrives within [`LIVENESS_BOUND_MS`].
    Liveness,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invariant::NoLoss => "I1 no loss",
            Invariant::Order => "I2 order",
            Invariant::SenderFifo => "I3 sender FIFO",
            Invariant::Idempotence => "I4 idempotence",
            Invariant::Blindness => "I5 blindness",
            Invariant::ReceiptsForward => "I6 receipts move forward",
            Invariant::Decryptable => "I8 decryptable",
            Invariant::Liveness => "liveness",
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
    // Read receipts are envelopes of the chat too: each takes a chat sequence number that no
    // stored message holds.
    let mut receipts: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    for event in trace {
        if let What::MarkedRead {
            reader,
            peer,
            envelopes,
        } = event.what
        {
            let count = envelopes as usize;
            *receipts.entry((reader, peer)).or_default() += count;
            *receipts.entry((peer, reader)).or_default() += count;
        }
    }
    for view in views {
        let mut sequences = BTreeMap::new();
        let mut unsequenced_own = receipts
            .get(&(view.client, view.peer))
            .copied()
            .unwrap_or(0);
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
    check_receipts(trace, &mut violations);
    check_liveness(trace, planned, &mut violations);
    violations
}

/// I6: a message's tick never moves backwards.
fn check_receipts(trace: &[TraceEvent], violations: &mut Vec<Violation>) {
    let mut ticks: BTreeMap<MessageRef, u8> = BTreeMap::new();
    for event in trace {
        if let What::Tick { message, tick } = event.what {
            let highest = ticks.entry(message).or_default();
            if tick < *highest {
                violations.push(Violation {
                    invariant: Invariant::ReceiptsForward,
                    detail: format!(
                        "{message}'s tick moved back from {} to {} at {} ms",
                        tick_name(*highest),
                        tick_name(tick),
                        event.at_ms
                    ),
                });
            }
            *highest = (*highest).max(tick);
        }
    }
}

fn tick_name(tick: u8) -> &'static str {
    match tick {
        0 => "pending",
        1 => "sent",
        2 => "delivered",
        _ => "read",
    }
}

/// How long after the heal (or after its own queueing or acknowledgement, if later) a message
/// may take to be acknowledged and to arrive, in simulated ms. Covers the client's longest retry
/// backoff (30 s), QUIC's idle timeout noticing a dead connection, and reconnection.
pub const LIVENESS_BOUND_MS: u64 = 120_000;

/// Liveness: after the heal, each message queued (and not given up) is acknowledged, and each
/// acknowledged message arrives, within [`LIVENESS_BOUND_MS`].
fn check_liveness(
    trace: &[TraceEvent],
    planned: &BTreeMap<MessageRef, u32>,
    violations: &mut Vec<Violation>,
) {
    let heal_ms = heal_ms(trace);
    let mut queued = BTreeMap::new();
    let mut acked = BTreeMap::new();
    let mut arrived = BTreeMap::new();
    let mut failed = BTreeSet::new();
    for event in trace {
        match event.what {
            What::Queued { message } => {
                queued.entry(message).or_insert(event.at_ms);
            }
            What::Acked { message } => {
                acked.entry(message).or_insert(event.at_ms);
            }
            What::Received {
                receiver, message, ..
            } if planned.get(&message) == Some(&receiver) => {
                arrived.entry(message).or_insert(event.at_ms);
            }
            What::Failed { message } => {
                failed.insert(message);
            }
            _ => {}
        }
    }
    for (message, &at) in &queued {
        if failed.contains(message) {
            continue;
        }
        let due = heal_ms.max(at) + LIVENESS_BOUND_MS;
        match acked.get(message) {
            Some(&when) if when <= due => {}
            Some(&when) => violations.push(Violation {
                invariant: Invariant::Liveness,
                detail: format!(
                    "{message} was acknowledged at {when} ms, after its bound of {due} ms"
                ),
            }),
            None => violations.push(Violation {
                invariant: Invariant::Liveness,
                detail: format!(
                    "{message} was queued at {at} ms and never acknowledged (healed at {heal_ms} ms)"
                ),
            }),
        }
    }
    for (message, &at) in &acked {
        let due = heal_ms.max(at) + LIVENESS_BOUND_MS;
        if let Some(&when) = arrived.get(message)
            && when > due
        {
            violations.push(Violation {
                invariant: Invariant::Liveness,
                detail: format!(
                    "{message} was acknowledged at {at} ms but arrived only at {when} ms, after its bound of {due} ms"
                ),
            });
        }
    }
}

/// When the safety phase ended (0: the run had no faults to heal).
fn heal_ms(trace: &[TraceEvent]) -> u64 {
    trace
        .iter()
        .find(|event| event.what == What::Healed)
        .map_or(0, |event| event.at_ms)
}

/// The slowest delivery after the heal: the longest time from `max(heal, acknowledgement)` to
/// arrival, in ms (how close a run came to [`LIVENESS_BOUND_MS`]).
pub fn slowest_delivery_ms(trace: &[TraceEvent], planned: &BTreeMap<MessageRef, u32>) -> u64 {
    let heal_ms = heal_ms(trace);
    let mut acked = BTreeMap::new();
    let mut slowest = 0;
    for event in trace {
        match event.what {
            What::Acked { message } => {
                acked.entry(message).or_insert(event.at_ms);
            }
            What::Received {
                receiver, message, ..
            } if planned.get(&message) == Some(&receiver) => {
                if let Some(&at) = acked.get(&message) {
                    slowest = slowest.max(event.at_ms.saturating_sub(heal_ms.max(at)));
                }
            }
            _ => {}
        }
    }
    slowest
}

/// I5: finds plaintext of the workload's messages in what a server stored. `stored` yields each
/// key and value; every occurrence of a planned message's text is a violation.
pub fn check_blindness<'a>(
    place: &str,
    planned: &BTreeMap<MessageRef, u32>,
    stored: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (key, value) in stored {
        for bytes in [key, value] {
            for message in plaintexts_in(bytes) {
                if planned.contains_key(&message) {
                    violations.push(Violation {
                        invariant: Invariant::Blindness,
                        detail: format!(
                            "{place} stores the plaintext of {message} under key {}",
                            printable(key)
                        ),
                    });
                }
            }
        }
    }
    violations
}

/// The workload's message texts ("c<n> #<m>") found in `bytes`, in time linear in its length.
fn plaintexts_in(bytes: &[u8]) -> Vec<MessageRef> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = bytes[at..].windows(2).position(|pair| pair == b" #") {
        let hash = at + offset;
        let digits_before = bytes[..hash]
            .iter()
            .rev()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        let start = hash - digits_before;
        let digits_after = bytes[hash + 2..]
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        if digits_before > 0 && digits_after > 0 && start > 0 && bytes[start - 1] == b'c' {
            let text = String::from_utf8_lossy(&bytes[start - 1..hash + 2 + digits_after]);
            if let Some(message) = MessageRef::parse(&text) {
                found.push(message);
            }
        }
        at = hash + 2;
    }
    found
}

fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&byte| {
            if byte.is_ascii_graphic() {
                char::from(byte).to_string()
            } else {
                format!("\\x{byte:02x}")
            }
        })
        .collect()
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

    #[test]
    fn ticks_moving_back_late_acks_and_stuck_messages_are_reported() {
        let m = message(0, 1);
        let stuck = message(0, 2);
        let late = message(1, 1);
        let mut planned = planned();
        planned.insert(late, 0);
        let bound = LIVENESS_BOUND_MS;
        let trace = vec![
            at(10, What::Queued { message: m }),
            at(
                20,
                What::Tick {
                    message: m,
                    tick: 1,
                },
            ),
            at(
                30,
                What::Tick {
                    message: m,
                    tick: 3,
                },
            ),
            at(
                40,
                What::Tick {
                    message: m,
                    tick: 2,
                },
            ),
            at(50, What::Healed),
            at(60, What::Queued { message: stuck }),
            at(70, What::Queued { message: late }),
            at(80, What::Acked { message: late }),
            at(80 + bound + 1, received(0, late, 1)),
        ];
        let found: Vec<String> = {
            let mut violations = Vec::new();
            check_receipts(&trace, &mut violations);
            check_liveness(&trace, &planned, &mut violations);
            violations.iter().map(ToString::to_string).collect()
        };
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].contains("moved back from read to delivered"));
        assert!(
            found
                .iter()
                .any(|v| v.contains("c0#1 was queued") && v.contains("never acknowledged"))
        );
        assert!(found.iter().any(|v| v.contains("c0#2 was queued")));
        assert!(
            found
                .iter()
                .any(|v| v.contains("c1#1") && v.contains("arrived only"))
        );
        assert_eq!(slowest_delivery_ms(&trace, &planned), bound + 1);
    }

    #[test]
    fn plaintext_in_a_store_is_found_and_ciphertext_is_not() {
        let planned = planned();
        let stored: Vec<(&[u8], &[u8])> = vec![
            (b"chat/1", b"\x01\x02opaque"),
            (b"chat/2", b"...c0 #1..."),
            (b"c0 #2", b"key holds it"),
            (b"chat/3", b"c0 #99 is not planned, nor is #1 or c #1"),
        ];
        let found = check_blindness("region 1", &planned, stored);
        let found: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].contains("plaintext of c0#1 under key chat/2"));
        assert!(found[1].contains("plaintext of c0#2"));
    }
}
