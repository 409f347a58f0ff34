//! What a run records, in simulation terms, and the invariants checked over it.
//!
//! The **trace** ([`trace`]) is the run as the workload sees it: who asked to send which
//! numbered message to whom and when, when it was acknowledged, who received what in which order
//! under which chat sequence, and the faults. It holds no random bytes (no ids, keys or
//! ciphertexts), so two runs of one seed can be compared line by line. At the end, each client's
//! local history of each chat is recorded too ([`ChatView`]).
//!
//! [`check`] verifies, over the trace and the final views of every device (a client that linked
//! a second device sends from both, and both receive what is meant for the account), one
//! module per invariant:
//! - **I1 no loss** ([`no_loss`]): every message acknowledged as sent reached every device of
//!   its recipient and is stored as it arrived;
//! - **I2 order** ([`order`]): each device received a chat's messages with strictly increasing
//!   chat sequences, those plus its account's sent messages' sequences are gapless from 1, and
//!   every device of the sender's account stores each acknowledged message with its sequence;
//! - **I3 sender FIFO** ([`sender_fifo`]): one sending device's messages arrived in the order
//!   it sent them;
//! - **I4 idempotence** ([`idempotence`]): no message arrived twice or is stored twice;
//! - **I6 receipts move forward** ([`receipts`]): a message's tick never moves back;
//! - **I8 no undecryptable messages** ([`decryptable`]): every message decrypted, to the text
//!   that was sent to that device by that sender;
//! - **removal** ([`removal`]): a device its account removed receives nothing queued after;
//! - **liveness** ([`liveness`]): after the heal, everything queued is acknowledged and
//!   everything acknowledged arrives within [`LIVENESS_BOUND_MS`].
//!
//! The run's groups are checked apart ([`check_groups`], in [`groups`]): I1, I3, I4, I6, I8,
//! removal (a removed member or device decrypts nothing sent after its removal) and liveness
//! for group messages, over membership changes recorded when asked and when acknowledged.
//!
//! **I5 blindness** ([`check_blindness`], [`check_group_blindness`]) reads the servers' stores instead of the trace, and
//! **I7 convergence** ([`check_convergence`], in [`convergence`]) the relay-sync documents of
//! the devices of each account ([`DocView`]).
//!
//! Every check reads [`Facts`], gathered in one pass over the trace and the views, and does a
//! constant amount of work (hash lookups) per event or stored entry: the whole check is linear
//! in the size of the run, so long sweeps stay cheap.

mod blindness;
mod convergence;
mod decryptable;
mod facts;
#[cfg(test)]
mod group_tests;
mod groups;
mod idempotence;
mod liveness;
mod no_loss;
mod order;
mod receipts;
mod removal;
mod sender_fifo;
mod standby;
#[cfg(test)]
mod tests;
pub mod trace;

use std::collections::BTreeMap;
use std::fmt;

pub use blindness::{check_blindness, check_group_blindness};
pub(crate) use convergence::chat_of;
use facts::Facts;
pub use groups::{check_groups, slowest_group_delivery_ms, stuck_group_texts};
pub use liveness::{LIVENESS_BOUND_MS, slowest_delivery_ms};
pub use standby::{check_standby, standby_caught_up};
pub use trace::{
    Change, ChatView, DocEntry, DocView, GroupChange, GroupMessageRef, MessageRef, TraceEvent,
    ViewEntry, What, client_name, client_number, device_name,
};

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
    /// I7 convergence: the devices of an account hold identical chat documents.
    Convergence,
    /// I8 no undecryptable messages.
    Decryptable,
    /// A removed device receives nothing more.
    Removal,
    /// Liveness: once faults heal, every queued message is acknowledged and every acknowledged
    /// message arrives within [`LIVENESS_BOUND_MS`].
    Liveness,
    /// A region's standby holds the region's store once the run settles (runs with standbys).
    Standby,
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
            Invariant::Convergence => "I7 convergence",
            Invariant::Decryptable => "I8 decryptable",
            Invariant::Removal => "removal",
            Invariant::Liveness => "liveness",
            Invariant::Standby => "standby copy",
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

/// Where the checks put what they find.
pub(crate) struct Findings(Vec<Violation>);

impl Findings {
    /// Records a violation of `invariant`.
    pub(crate) fn add(&mut self, invariant: Invariant, detail: String) {
        self.0.push(Violation { invariant, detail });
    }
}

/// Checks I1–I4, I6, I8 and liveness over a run's trace and final chat views (and, of I7, that
/// a text deleted for everyone left its account's stores); `planned` maps every message the
/// workload could send to its recipient.
pub fn check(
    planned: &BTreeMap<MessageRef, u32>,
    trace: &[TraceEvent],
    views: &[ChatView],
) -> Vec<Violation> {
    let mut findings = Findings(Vec::new());
    let facts = Facts::gather(planned, trace, views);
    decryptable::check(&facts, trace, &mut findings);
    idempotence::check_arrivals(&facts, &mut findings);
    no_loss::check_acknowledged(&facts, &mut findings);
    sender_fifo::check(&facts, &mut findings);
    order::check_arrivals(&facts, &mut findings);
    no_loss::check_stored(&facts, &mut findings);
    order::check_senders_stored(&facts, &mut findings);
    removal::check(&facts, &mut findings);
    convergence::check_deleted_views(&facts, views, &mut findings);
    for view in views {
        order::check_view(&facts, view, &mut findings);
        idempotence::check_view(view, &mut findings);
    }
    receipts::check_receipts(trace, &mut findings.0);
    liveness::check_liveness(trace, planned, &mut findings.0);
    findings.0
}

/// Checks I7 over the relay-sync documents the devices of each account hold after their final
/// syncs: every device of an account shows each chat as the account's first device does, and
/// shows every change (edit, deletion for everyone, reaction) the account's devices made in the
/// `trace` (`planned` maps every message the workload could send to its recipient).
pub fn check_convergence(
    planned: &BTreeMap<MessageRef, u32>,
    trace: &[TraceEvent],
    docs: &[DocView],
) -> Vec<Violation> {
    let mut findings = Findings(Vec::new());
    convergence::check(docs, &mut findings);
    convergence::check_changes(planned, trace, docs, &mut findings);
    findings.0
}

/// A message for a report: its name, or that it is not one of the workload's.
fn describe(message: Option<MessageRef>) -> String {
    message.map_or_else(|| "an unknown message".into(), |m| m.to_string())
}
