//! The plan: what each client does (its sends, restarts, reads, second device and its removal),
//! drawn from the seed, and the shape it is drawn to.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::REMOVAL_AT_MS_MAX;
use crate::history::MessageRef;
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

/// Every client's plan, drawn from the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One entry per client, by number.
    pub clients: Vec<ClientPlan>,
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
        Self { clients }
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
}
