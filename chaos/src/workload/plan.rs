//! The plan: what each client does (its sends, restarts, reads, second device and its removal),
//! drawn from the seed, and the shape it is drawn to.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{
    GROUP_SENDS_PER_MEMBER_MAX, GROUP_WINDOW_MS_MAX, GROUP_WINDOW_MS_MIN, GROUPS_PER_RUN_MAX,
    REMOVAL_AT_MS_MAX,
};
use crate::history::{GroupMessageRef, MessageRef};
use crate::seed;

/// One planned send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSend {
    /// The message.
    pub message: MessageRef,
    /// Its recipient.
    pub recipient: u32,
    /// The pause before sending it, in ms.
    pub pause_ms: u64,
    /// Whether the client syncs (fetches its queue) right after.
    pub sync_after: bool,
    /// Whether it is only queued (composed offline), to go with the next send or sync: bursts
    /// of these make the outbox send several envelopes of a chat at once.
    pub compose: bool,
    /// The client's device that sends it: 0 the registered one, 1 the linked one (its first
    /// device sends it when the link did not happen). A linked client's second device sends
    /// the messages from a drawn point on.
    pub device: u32,
}

/// One client's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPlan {
    /// The client's number (its account is `c<number>`).
    pub client: u32,
    /// Its home region: it registers through that region's edge.
    pub region: u32,
    /// What it sends, in order.
    pub sends: Vec<PlannedSend>,
    /// When the app is killed and opened again on its store, in simulated ms (it happens
    /// between two actions, at the first one due).
    pub restarts: Vec<u64>,
    /// Chance, in percent, that it marks a peer's new messages read after a sync.
    pub read_percent: u32,
    /// Whether it links a second device before anyone sends.
    pub linked: bool,
    /// When (simulated ms) its first device removes the linked one while messages are on
    /// their way, if it does: the removed device stops, and senders meet the region's
    /// "mismatched devices" until they learn of it. A device to be removed makes no changes.
    pub removes_at_ms: Option<u64>,
}

/// One planned group message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedGroupSend {
    /// The message (its sender sends it from its first device).
    pub message: GroupMessageRef,
    /// When, in ms after its sender started sending (it waits for the group to exist, and an
    /// added member for its addition; a removed member drops what is due after its removal).
    pub at_ms: u64,
}

/// One planned group: created by one client at the start of its sends, with members drawn among
/// the run's accounts, each member sending a few texts, and one small membership change each
/// way at drawn moments while texts are on their way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    /// The workload's number of the group, from 1 (the directory assigns its id).
    pub group: u32,
    /// The client that creates it (its first admin); it makes the membership changes.
    pub creator: u32,
    /// The members it is created with, the creator first.
    pub members: Vec<u32>,
    /// Every member's texts, in each sender's order.
    pub sends: Vec<PlannedGroupSend>,
    /// A member (never the creator) removed at this many ms after the creator started sending.
    pub removal: Option<(u32, u64)>,
    /// A client (not a first member) added at this many ms after the creator started sending.
    pub addition: Option<(u32, u64)>,
}

impl GroupPlan {
    /// Whether `client` is ever a member (first, or added).
    pub fn ever_member(&self, client: u32) -> bool {
        self.members.contains(&client) || self.addition.is_some_and(|(added, _)| added == client)
    }
}

/// Every client's plan, drawn from the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One entry per client, by number.
    pub clients: Vec<ClientPlan>,
    /// The run's groups (none in runs without).
    pub groups: Vec<GroupPlan>,
}

/// How the workload is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadShape {
    /// Regions (clients are spread evenly over them).
    pub regions: u32,
    /// Clients homed in each region.
    pub clients_per_region: u32,
    /// Messages each client sends.
    pub messages_per_client: u32,
    /// Longest pause before a send, in ms.
    pub pause_ms_max: u64,
    /// Chance, in percent, that a client marks a peer's new messages read after a sync.
    pub read_percent: u32,
    /// Chance, in percent, that a client links a second device before anyone sends.
    pub linked_percent: u32,
    /// Chance, in percent, that a linked client's first device removes the second one while
    /// messages are on their way ([`ClientPlan::removes_at_ms`]).
    pub removed_percent: u32,
    /// Chance, in percent, that the run has groups ([`Plan::groups`]).
    pub group_percent: u32,
}

impl Plan {
    /// Draws a plan: each client sends to uniformly chosen other clients.
    pub fn draw(seed: u64, shape: WorkloadShape) -> Self {
        let mut rng = StdRng::seed_from_u64(seed::derive(seed, "plan", 0));
        let count = shape.regions * shape.clients_per_region;
        // Drawn apart from the sends, so a seed's messages stay the same with or without links.
        let mut links = StdRng::seed_from_u64(seed::derive(seed, "plan-links", 0));
        let mut devices = StdRng::seed_from_u64(seed::derive(seed, "plan-devices", 0));
        let mut removals = StdRng::seed_from_u64(seed::derive(seed, "plan-removals", 0));
        let clients = (0..count)
            .map(|client| {
                let mut sends: Vec<PlannedSend> = (1..=shape.messages_per_client)
                    .filter_map(|number| {
                        if count < 2 {
                            return None;
                        }
                        // Any other client: draw among count - 1 and skip over oneself.
                        let mut recipient = rng.random_range(0..count - 1);
                        if recipient >= client {
                            recipient += 1;
                        }
                        Some(PlannedSend {
                            message: MessageRef {
                                sender: client,
                                number,
                            },
                            recipient,
                            pause_ms: rng.random_range(0..=shape.pause_ms_max),
                            sync_after: rng.random_ratio(1, 4),
                            compose: rng.random_ratio(1, 2),
                            device: 0,
                        })
                    })
                    .collect();
                let linked = links.random_ratio(shape.linked_percent.min(100), 100);
                if linked {
                    // The second device sends a contiguous run (the later messages from a drawn
                    // point): both devices send concurrently, and each keeps its bursts of
                    // composed messages, which the sender FIFO check needs.
                    let split = devices.random_range(0..=sends.len());
                    for send in &mut sends[split..] {
                        send.device = 1;
                    }
                }
                let removes_at_ms = (linked
                    && removals.random_ratio(shape.removed_percent.min(100), 100))
                .then(|| removals.random_range(0..=REMOVAL_AT_MS_MAX));
                ClientPlan {
                    client,
                    region: client / shape.clients_per_region + 1,
                    sends,
                    restarts: Vec::new(),
                    read_percent: shape.read_percent,
                    linked,
                    removes_at_ms,
                }
            })
            .collect();
        // Drawn apart from the rest, so a seed's other plans stay the same with or without.
        let groups = draw_groups(seed, shape, count);
        Self { clients, groups }
    }

    /// Whether `client` creates a group or sends to one.
    pub fn has_group_work(&self, client: u32) -> bool {
        self.groups.iter().any(|group| {
            group.creator == client || group.sends.iter().any(|send| send.message.sender == client)
        })
    }

    /// Every planned group message.
    pub fn group_messages(&self) -> impl Iterator<Item = GroupMessageRef> + '_ {
        self.groups
            .iter()
            .flat_map(|group| group.sends.iter().map(|send| send.message))
    }

    /// Makes client `client` link its second device between two of its sends: its first device
    /// makes the sends before a point drawn from `seed` strictly inside its plan (when it has
    /// two sends at least), the second device the rest, as [`Plan::draw`] splits them.
    pub fn link_mid_run(&mut self, seed: u64, client: u32) {
        let Some(plan) = self.clients.iter_mut().find(|plan| plan.client == client) else {
            return;
        };
        let mut devices =
            StdRng::seed_from_u64(seed::derive(seed, "plan-mid-run-link", client.into()));
        let split = match plan.sends.len() {
            0 | 1 => 0,
            sends => devices.random_range(1..sends),
        };
        for (index, send) in plan.sends.iter_mut().enumerate() {
            send.device = u32::from(index >= split);
        }
        plan.linked = true;
    }

    /// Every planned message with its recipient.
    pub fn recipients(&self) -> BTreeMap<MessageRef, u32> {
        self.clients
            .iter()
            .flat_map(|client| &client.sends)
            .map(|send| (send.message, send.recipient))
            .collect()
    }

    /// The clients `client` exchanges messages with, either way.
    pub fn peers_of(&self, client: u32) -> BTreeSet<u32> {
        let mut peers = BTreeSet::new();
        for plan in &self.clients {
            for send in &plan.sends {
                if plan.client == client {
                    peers.insert(send.recipient);
                } else if send.recipient == client {
                    peers.insert(plan.client);
                }
            }
        }
        peers
    }
}

/// The run's groups: none unless the seed draws them (`group_percent`); else one, or two in a
/// quarter of those runs, among `count` clients (two at least).
fn draw_groups(seed: u64, shape: WorkloadShape, count: u32) -> Vec<GroupPlan> {
    let mut rng = StdRng::seed_from_u64(seed::derive(seed, "plan-groups", 0));
    if count < 2 || !rng.random_ratio(shape.group_percent.min(100), 100) {
        return Vec::new();
    }
    let groups = if rng.random_ratio(1, 4) {
        GROUPS_PER_RUN_MAX
    } else {
        1
    };
    // The texts and changes fall in the first part of the 1:1 sends, so they race them.
    let window_ms = (u64::from(shape.messages_per_client) * shape.pause_ms_max / 2)
        .clamp(GROUP_WINDOW_MS_MIN, GROUP_WINDOW_MS_MAX);
    (1..=groups)
        .map(|group| {
            let creator = rng.random_range(0..count);
            let mut members = vec![creator];
            let mut outside = Vec::new();
            for client in (0..count).filter(|&client| client != creator) {
                match rng.random_ratio(2, 3) {
                    true => members.push(client),
                    false => outside.push(client),
                }
            }
            // A member besides the creator, and (with three clients or more) one left to add.
            if members.len() < 2 {
                members.push(outside.remove(rng.random_range(0..outside.len())));
            }
            if outside.is_empty() && members.len() >= 4 {
                let index = rng.random_range(1..members.len());
                outside.push(members.remove(index));
            }
            let removable: Vec<u32> = members[1..].to_vec();
            // The group keeps two members after the removal.
            let removal = (members.len() >= 3 && rng.random_ratio(3, 4)).then(|| {
                (
                    removable[rng.random_range(0..removable.len())],
                    rng.random_range(0..=window_ms),
                )
            });
            let addition = (!outside.is_empty() && rng.random_ratio(3, 4)).then(|| {
                (
                    outside[rng.random_range(0..outside.len())],
                    rng.random_range(0..=window_ms),
                )
            });
            let mut sends = Vec::new();
            let senders = members
                .iter()
                .copied()
                .chain(addition.map(|(added, _)| added));
            for sender in senders {
                let texts = rng.random_range(1..=GROUP_SENDS_PER_MEMBER_MAX);
                let mut at: Vec<u64> = (0..texts)
                    .map(|_| rng.random_range(0..=window_ms))
                    .collect();
                at.sort_unstable();
                for (number, at_ms) in (1..).zip(at) {
                    sends.push(PlannedGroupSend {
                        message: GroupMessageRef {
                            group,
                            sender,
                            number,
                        },
                        at_ms,
                    });
                }
            }
            GroupPlan {
                group,
                creator,
                members,
                sends,
                removal,
                addition,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: WorkloadShape = WorkloadShape {
        regions: 2,
        clients_per_region: 2,
        messages_per_client: 10,
        pause_ms_max: 300,
        read_percent: 50,
        linked_percent: 50,
        removed_percent: 30,
        group_percent: 100,
    };

    #[test]
    fn plans_repeat_per_seed_and_never_send_to_oneself() {
        let plan = Plan::draw(9, SHAPE);
        assert_eq!(plan, Plan::draw(9, SHAPE));
        assert_ne!(plan, Plan::draw(10, SHAPE));
        assert_eq!(plan.clients.len(), 4);
        assert_eq!(plan.clients[3].region, 2);
        for client in &plan.clients {
            assert_eq!(client.sends.len(), 10);
            assert!(
                client
                    .sends
                    .iter()
                    .all(|send| send.recipient != client.client)
            );
        }
        assert_eq!(plan.recipients().len(), 40);
    }

    #[test]
    fn groups_have_a_member_besides_the_creator_and_change_by_one_member() {
        for seed in 0..200 {
            let plan = Plan::draw(seed, SHAPE);
            assert!(!plan.groups.is_empty(), "seed {seed}");
            for group in &plan.groups {
                assert!(group.members.len() >= 2, "seed {seed}: {group:?}");
                if let Some((removed, _)) = group.removal {
                    assert_ne!(removed, group.creator);
                    assert!(group.members.contains(&removed));
                    assert!(group.members.len() >= 3);
                }
                if let Some((added, _)) = group.addition {
                    assert!(!group.members.contains(&added));
                }
                for send in &group.sends {
                    assert!(group.ever_member(send.message.sender));
                }
            }
        }
        let none = WorkloadShape {
            group_percent: 0,
            ..SHAPE
        };
        assert!(Plan::draw(9, none).groups.is_empty());
    }
}
