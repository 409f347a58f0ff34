//! The invariants over the run's groups, from the trace alone (positions in it order the
//! events: a send started, a membership change asked or acknowledged by the directory writer, an
//! acknowledgement of a message):
//! - **I1 no loss**: every acknowledged group message reached every device of every account
//!   that was a member from before its send started until after it was acknowledged (added
//!   and acknowledged before the send, its removal not asked before the acknowledgement), on
//!   every device linked before the send (a removed device is held to nothing);
//! - **I2**: at each device, a number of a group's chat names one message (a moved member goes
//!   on with its old home's numbers);
//! - **I3 sender FIFO**: at each device, one sender's texts to one group arrive in its order;
//! - **I4 idempotence**: no device receives a group message twice;
//! - **I6**: a group message's tick never moves back;
//! - **I8**: every group message decrypts, to a text its sender sent to that group, at a
//!   device of an account that is ever a member, attributed to the sender's account;
//! - **removal**: no member decrypts a group message whose send started after the writer
//!   acknowledged its removal, and no removed device one whose send started after its removal;
//! - **liveness**: after the heal, each queued group message (not given up) is acknowledged,
//!   and reaches each device I1 holds it to, within [`LIVENESS_BOUND_MS`]; a text whose
//!   sender's removal was asked while it was on its way settles too, acknowledged or failed
//!   ("not a member"): one that does not is a violation, and [`stuck_group_texts`] counts them
//!   (swarm seed 35 found the edge retrying such a text for ever).
//!
//! Like the other checks, one pass gathers the facts and each check does constant work per
//! event.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::liveness::LIVENESS_BOUND_MS;
use super::trace::{GroupChange, GroupMessageRef, TraceEvent, What, client_name, device_name};
use super::{Findings, Invariant, Violation};
use crate::workload::GroupPlan;

/// What the group checks read, gathered in one pass over the trace.
#[derive(Default)]
struct GroupFacts {
    /// client → its account id.
    accounts: HashMap<u32, u64>,
    /// Clients that linked a second device, with the trace position of the link.
    linked: HashMap<u32, usize>,
    /// Clients whose second device was removed, with the position of the removal.
    removed_devices: HashMap<u32, usize>,
    /// (group, client) → the position where the writer acknowledged it a member.
    member_since: HashMap<(u32, u32), usize>,
    /// (group, client) → the position where its removal was first asked.
    removal_asked: HashMap<(u32, u32), usize>,
    /// (group, client) → the position where its removal was acknowledged.
    removal_acked: HashMap<(u32, u32), usize>,
    /// message → the position where its send started.
    sent_at: HashMap<GroupMessageRef, usize>,
    /// message → when it was first queued, in ms.
    queued_ms: BTreeMap<GroupMessageRef, u64>,
    /// message → the position and time (ms) of its acknowledgement, in message order.
    acked: BTreeMap<GroupMessageRef, (usize, u64)>,
    /// Messages given up by their senders.
    failed: HashSet<GroupMessageRef>,
    /// (receiver, device) → arrivals in order, with the time (ms).
    arrivals: BTreeMap<(u32, u32), Vec<(GroupMessageRef, u64)>>,
    /// (receiver, device, message) → the time of its (first) arrival, in ms.
    arrived: HashMap<(u32, u32, GroupMessageRef), u64>,
    /// (receiver, device) → each arrival's message and the group chat number it came under.
    numbered: BTreeMap<(u32, u32), Vec<(GroupMessageRef, u64)>>,
    /// When every fault healed (0: none to heal), in ms.
    heal_ms: u64,
}

impl GroupFacts {
    fn gather(trace: &[TraceEvent]) -> Self {
        let mut facts = Self::default();
        for (index, event) in trace.iter().enumerate() {
            match &event.what {
                What::Registered {
                    client, account, ..
                } => {
                    facts.accounts.insert(*client, *account);
                }
                What::Linked { client } => {
                    facts.linked.entry(*client).or_insert(index);
                }
                What::Removed { client } => {
                    facts.removed_devices.entry(*client).or_insert(index);
                }
                What::Healed => facts.heal_ms = event.at_ms,
                What::GroupChangeAsked {
                    group,
                    change: GroupChange::Remove(member),
                    ..
                } => {
                    facts
                        .removal_asked
                        .entry((*group, *member))
                        .or_insert(index);
                }
                What::GroupChanged { group, change, .. } => match change {
                    GroupChange::Create(members) => {
                        for member in members {
                            facts.member_since.entry((*group, *member)).or_insert(index);
                        }
                    }
                    GroupChange::Add(member) => {
                        facts.member_since.entry((*group, *member)).or_insert(index);
                    }
                    GroupChange::Remove(member) => {
                        facts
                            .removal_acked
                            .entry((*group, *member))
                            .or_insert(index);
                    }
                },
                What::GroupSend { message, .. } => {
                    facts.sent_at.entry(*message).or_insert(index);
                }
                What::GroupQueued { message } => {
                    facts.queued_ms.entry(*message).or_insert(event.at_ms);
                }
                What::GroupAcked { message } => {
                    facts.acked.entry(*message).or_insert((index, event.at_ms));
                }
                What::GroupFailed { message } => {
                    facts.failed.insert(*message);
                }
                What::GroupReceived {
                    receiver,
                    device,
                    message,
                    chat_seq,
                    ..
                } => {
                    facts
                        .numbered
                        .entry((*receiver, *device))
                        .or_default()
                        .push((*message, *chat_seq));
                    facts
                        .arrivals
                        .entry((*receiver, *device))
                        .or_default()
                        .push((*message, event.at_ms));
                    facts
                        .arrived
                        .entry((*receiver, *device, *message))
                        .or_insert(event.at_ms);
                }
                _ => {}
            }
        }
        facts
    }

    /// Whether `message` never settled at its sender (neither acknowledged nor given up) while
    /// its sender's removal from the group was asked: counted ([`stuck_group_texts`]), and a
    /// liveness violation like any text that never settles. The edge once answered a region's
    /// `UnknownGroup` for a text another region had stored before the removal as
    /// `Unavailable`, and the sender retried it for ever (swarm seed 35).
    fn stuck(&self, message: &GroupMessageRef) -> bool {
        !self.acked.contains_key(message)
            && !self.failed.contains(message)
            && self
                .removal_asked
                .contains_key(&(message.group, message.sender))
    }

    /// The devices of `client` that must receive acknowledged `message` (acknowledged at
    /// position `acked`): none unless the account was a member throughout (see the module
    /// doc); its first device, and its second if linked before the send and never removed.
    fn devices_held(
        &self,
        client: u32,
        message: &GroupMessageRef,
        acked: usize,
    ) -> std::ops::Range<u32> {
        let Some(&sent) = self.sent_at.get(message) else {
            return 0..0;
        };
        let member = client != message.sender
            && self
                .member_since
                .get(&(message.group, client))
                .is_some_and(|&since| since < sent)
            && self
                .removal_asked
                .get(&(message.group, client))
                .is_none_or(|&asked| asked > acked);
        if !member {
            return 0..0;
        }
        let second = self
            .linked
            .get(&client)
            .is_some_and(|&linked| linked < sent)
            && !self.removed_devices.contains_key(&client);
        0..1 + u32::from(second)
    }
}

/// Checks I1, I2, I3, I4, I6, I8, removal and liveness over the groups of a run (`groups`, as
/// planned) and its trace.
pub fn check_groups(groups: &[GroupPlan], trace: &[TraceEvent]) -> Vec<Violation> {
    let mut findings = Findings(Vec::new());
    if groups.is_empty() {
        return findings.0;
    }
    let facts = GroupFacts::gather(trace);
    let plans: HashMap<u32, &GroupPlan> = groups.iter().map(|group| (group.group, group)).collect();
    let planned: HashSet<GroupMessageRef> = groups
        .iter()
        .flat_map(|group| group.sends.iter().map(|send| send.message))
        .collect();
    check_decryptable(&facts, &plans, &planned, trace, &mut findings);
    check_arrival_order(&facts, &mut findings);
    check_numbers(&facts, &mut findings);
    check_no_loss(&facts, &plans, &mut findings);
    check_removal(&facts, &mut findings);
    check_ticks(trace, &mut findings);
    check_liveness(&facts, &plans, &mut findings);
    findings.0
}

/// I8: no undecryptable group message; each one decrypted names a planned message, arrived
/// at an account that is ever a member of its group, from its sender's account.
fn check_decryptable(
    facts: &GroupFacts,
    plans: &HashMap<u32, &GroupPlan>,
    planned: &HashSet<GroupMessageRef>,
    trace: &[TraceEvent],
    findings: &mut Findings,
) {
    for event in trace {
        match &event.what {
            What::GroupUndecryptable {
                receiver,
                device,
                from,
                reason,
            } => findings.add(
                Invariant::Decryptable,
                format!(
                    "{} could not decrypt a group message from {from}: {reason}",
                    device_name(*receiver, *device)
                ),
            ),
            What::GroupReceived {
                receiver,
                device,
                message,
                from_account,
                ..
            } => {
                let member = plans
                    .get(&message.group)
                    .is_some_and(|plan| plan.ever_member(*receiver));
                let problem = if !planned.contains(message) {
                    Some("which nobody sent".to_owned())
                } else if !member {
                    Some(format!("but was never a member of g{}", message.group))
                } else if facts.accounts.get(&message.sender) != Some(from_account) {
                    Some(format!("as coming from account {from_account}"))
                } else {
                    None
                };
                if let Some(problem) = problem {
                    findings.add(
                        Invariant::Decryptable,
                        format!(
                            "{} received {message}, {problem}",
                            device_name(*receiver, *device)
                        ),
                    );
                }
            }
            _ => {}
        }
    }
}

/// I3 and I4: at each device, each sender's texts to a group arrive once each, in its order.
fn check_arrival_order(facts: &GroupFacts, findings: &mut Findings) {
    for ((receiver, device), received) in &facts.arrivals {
        let mut seen = HashSet::new();
        let mut last: HashMap<(u32, u32), u32> = HashMap::new();
        for (message, _) in received {
            if !seen.insert(*message) {
                findings.add(
                    Invariant::Idempotence,
                    format!(
                        "{} received {message} twice",
                        device_name(*receiver, *device)
                    ),
                );
                continue;
            }
            if let Some(previous) = last.insert((message.group, message.sender), message.number)
                && previous >= message.number
            {
                let previous = GroupMessageRef {
                    number: previous,
                    ..*message
                };
                findings.add(
                    Invariant::SenderFifo,
                    format!(
                        "{} received {message} after {previous}",
                        device_name(*receiver, *device)
                    ),
                );
            }
        }
    }
}

/// I2 for a group's chat: at each device, a number of the chat names one message. A device
/// gets a group's texts under its home region's numbers of the chat, and an account that moved
/// goes on under the old home's (the new home's view of the chat for it, `chat_log::views`).
fn check_numbers(facts: &GroupFacts, findings: &mut Findings) {
    for ((receiver, device), received) in &facts.numbered {
        let mut named: HashMap<(u32, u64), GroupMessageRef> = HashMap::new();
        for &(message, chat_seq) in received {
            if chat_seq == 0 {
                continue;
            }
            match named.insert((message.group, chat_seq), message) {
                Some(other) if other != message => findings.add(
                    Invariant::Order,
                    format!(
                        "{} received {message} as number {chat_seq} of its group's chat, the \
                         number {other} came under",
                        device_name(*receiver, *device)
                    ),
                ),
                _ => {}
            }
        }
    }
}

/// I1: every acknowledged group message reached every device held to it.
fn check_no_loss(facts: &GroupFacts, plans: &HashMap<u32, &GroupPlan>, findings: &mut Findings) {
    for (message, &(acked, _)) in &facts.acked {
        let Some(plan) = plans.get(&message.group) else {
            continue;
        };
        for client in members_ever(plan) {
            for device in facts.devices_held(client, message, acked) {
                if !facts.arrived.contains_key(&(client, device, *message)) {
                    findings.add(
                        Invariant::NoLoss,
                        format!(
                            "{message} was acknowledged but {}, a member throughout, never \
                             received it",
                            device_name(client, device)
                        ),
                    );
                }
            }
        }
    }
}

/// Removal: no arrival of a group message whose send started after the receiving member's
/// removal from its group, or after the receiving device's removal, was acknowledged.
fn check_removal(facts: &GroupFacts, findings: &mut Findings) {
    for ((receiver, device), received) in &facts.arrivals {
        for (message, _) in received {
            let Some(&sent) = facts.sent_at.get(message) else {
                continue;
            };
            let member_removed = facts
                .removal_acked
                .get(&(message.group, *receiver))
                .is_some_and(|&removed| removed < sent);
            let device_removed = *device == 1
                && facts
                    .removed_devices
                    .get(receiver)
                    .is_some_and(|&removed| removed < sent);
            let whom = match (member_removed, device_removed) {
                (true, _) => format!(
                    "{} was removed from g{}",
                    client_name(*receiver),
                    message.group
                ),
                (false, true) => format!("{} was removed", device_name(*receiver, *device)),
                (false, false) => continue,
            };
            findings.add(
                Invariant::Removal,
                format!(
                    "{} decrypted {message}, whose send started after {whom}",
                    device_name(*receiver, *device)
                ),
            );
        }
    }
}

/// I6: a group message's tick never moves back.
fn check_ticks(trace: &[TraceEvent], findings: &mut Findings) {
    let mut ticks: HashMap<GroupMessageRef, u8> = HashMap::new();
    for event in trace {
        if let What::GroupTick { message, tick } = event.what {
            let highest = ticks.entry(message).or_default();
            if tick < *highest {
                findings.add(
                    Invariant::ReceiptsForward,
                    format!(
                        "{message}'s tick moved back from {} to {tick} at {} ms",
                        *highest, event.at_ms
                    ),
                );
            }
            *highest = (*highest).max(tick);
        }
    }
}

/// Liveness: after the heal, every queued group message not given up is acknowledged, and
/// reaches every device I1 holds it to, within [`LIVENESS_BOUND_MS`].
fn check_liveness(facts: &GroupFacts, plans: &HashMap<u32, &GroupPlan>, findings: &mut Findings) {
    for (message, &queued) in &facts.queued_ms {
        if facts.failed.contains(message) {
            continue;
        }
        let due = facts.heal_ms.max(queued) + LIVENESS_BOUND_MS;
        match facts.acked.get(message) {
            Some(&(_, when)) if when <= due => {}
            Some(&(_, when)) => findings.add(
                Invariant::Liveness,
                format!("{message} was acknowledged at {when} ms, after its bound of {due} ms"),
            ),
            None => findings.add(
                Invariant::Liveness,
                format!(
                    "{message} was queued at {queued} ms and never acknowledged (healed at {} ms)",
                    facts.heal_ms
                ),
            ),
        }
    }
    for arrival in held_arrivals(facts, plans) {
        let due = facts.heal_ms.max(arrival.acked_ms) + LIVENESS_BOUND_MS;
        if arrival.arrived_ms > due {
            findings.add(
                Invariant::Liveness,
                format!(
                    "{} was acknowledged at {} ms but reached {} only at {} ms, after its bound                      of {due} ms",
                    arrival.message,
                    arrival.acked_ms,
                    device_name(arrival.client, arrival.device),
                    arrival.arrived_ms
                ),
            );
        }
    }
}

/// An acknowledged group message's arrival at a device I1 holds it to.
struct HeldArrival {
    message: GroupMessageRef,
    acked_ms: u64,
    client: u32,
    device: u32,
    arrived_ms: u64,
}

/// Every arrival of an acknowledged message of a group in `plans` at a device I1 holds it to,
/// in message order.
fn held_arrivals<'a>(
    facts: &'a GroupFacts,
    plans: &'a HashMap<u32, &GroupPlan>,
) -> impl Iterator<Item = HeldArrival> + 'a {
    facts.acked.iter().flat_map(move |(message, &(acked, at))| {
        plans
            .get(&message.group)
            .into_iter()
            .flat_map(|plan| members_ever(plan))
            .flat_map(move |client| {
                facts
                    .devices_held(client, message, acked)
                    .filter_map(move |device| {
                        let arrived_ms = *facts.arrived.get(&(client, device, *message))?;
                        Some(HeldArrival {
                            message: *message,
                            acked_ms: at,
                            client,
                            device,
                            arrived_ms,
                        })
                    })
            })
    })
}

/// Every client that is ever a member of the group (first members, then the added one).
fn members_ever(plan: &GroupPlan) -> BTreeSet<u32> {
    plan.members
        .iter()
        .copied()
        .chain(plan.addition.map(|(added, _)| added))
        .collect()
}

/// Group texts queued by a member whose removal was asked meanwhile that never settled at their
/// sender (neither acknowledged nor given up): each is a liveness violation too.
pub fn stuck_group_texts(trace: &[TraceEvent]) -> usize {
    let facts = GroupFacts::gather(trace);
    facts
        .queued_ms
        .keys()
        .filter(|message| facts.stuck(message))
        .count()
}

/// The slowest arrival of a group message at a device I1 holds it to, after the heal (or its
/// acknowledgement, if later), in ms.
pub fn slowest_group_delivery_ms(groups: &[GroupPlan], trace: &[TraceEvent]) -> u64 {
    if groups.is_empty() {
        return 0;
    }
    let facts = GroupFacts::gather(trace);
    let plans: HashMap<u32, &GroupPlan> = groups.iter().map(|group| (group.group, group)).collect();
    held_arrivals(&facts, &plans)
        .map(|arrival| {
            arrival
                .arrived_ms
                .saturating_sub(facts.heal_ms.max(arrival.acked_ms))
        })
        .max()
        .unwrap_or(0)
}
