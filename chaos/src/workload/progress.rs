//! What the clients of a run wait on ([`Progress`]): who registered and linked, what was queued,
//! given up and received, the changes made and fetched, and which accounts say they are in sync.

use std::collections::{BTreeMap, BTreeSet};

use super::{Observer, Plan};
use crate::history::{GroupMessageRef, MessageRef};

/// What a client waits on: who registered, who is done sending, and which messages are queued,
/// given up and received. Shared by every client of a run (they run on one thread).
#[derive(Debug, Default)]
pub struct Progress {
    /// Clients registered, with their account ids.
    pub accounts: BTreeMap<u32, u64>,
    /// Clients ready to send: registered, and their second device linked if they planned one.
    pub ready: BTreeSet<u32>,
    /// Clients whose second device linked.
    pub linked: BTreeSet<u32>,
    /// Clients whose first device has finished (its documents are recorded).
    pub finished: BTreeSet<u32>,
    /// Clients whose second device has made its last change and sent it.
    pub second_done: BTreeSet<u32>,
    /// For each linked client, the message its second device named as it went offline, which
    /// both of its devices edit while apart (see `name_contested`), and whether the first and
    /// the second device have.
    pub contested: BTreeMap<u32, (MessageRef, bool, bool)>,
    /// Devices (client, device) that have made every send planned for them.
    pub done_sending: BTreeSet<(u32, u32)>,
    /// Messages that entered an outbox (so they will be delivered unless given up).
    pub queued: BTreeSet<MessageRef>,
    /// Messages given up by their sender.
    pub failed: BTreeSet<MessageRef>,
    /// Messages each device (client, device) has received.
    pub received: BTreeMap<(u32, u32), BTreeSet<MessageRef>>,
    /// For each client that linked its second device after messages were queued, those
    /// messages: the linked device need not receive them (its history bootstrap brings them).
    pub queued_before_link: BTreeMap<u32, BTreeSet<MessageRef>>,
    /// Changes (edits, deletions, reactions) each device (client, device) has made.
    pub changes_made: BTreeMap<(u32, u32), u64>,
    /// For each device that has made changes, how many it had made at the first sync after its
    /// latest change that ended with an empty outbox (so they were all in their recipients'
    /// queues), and that sync's number in [`Progress::syncs`].
    pub changes_flushed: BTreeMap<(u32, u32), (u64, u64)>,
    /// Syncs finished by every device, counted: orders syncs across devices.
    pub syncs: u64,
    /// Devices (client, device) of linked clients whose history was in sync with the account's
    /// other device after their latest sync ([`Device::history_in_sync`]).
    ///
    /// [`Device::history_in_sync`]: relay_client::Device::history_in_sync
    pub in_sync: BTreeSet<(u32, u32)>,
    /// Linked clients whose first device stopped without both devices saying they were in
    /// sync ([`SYNC_CONFIRM_WAIT_MS`]).
    ///
    /// [`SYNC_CONFIRM_WAIT_MS`]: super::SYNC_CONFIRM_WAIT_MS
    pub unconfirmed: BTreeSet<u32>,
    /// Linked clients' second devices by number (their `DeviceId`), once opened.
    pub second_numbers: BTreeMap<u32, u32>,
    /// Clients whose first device removed the second one.
    pub removed: BTreeSet<u32>,
    /// What the clients know of the run's groups.
    pub groups: GroupProgress,
}

/// What the clients of a run know of its groups. Membership rules compare moments on the
/// group clock ([`GroupProgress::tick`]), which counts the group events the trace records, in
/// trace order: the checker's rules, over trace positions, are the same.
#[derive(Debug, Default)]
pub struct GroupProgress {
    /// Each group's id in the directory, once created, by the workload's number.
    pub ids: BTreeMap<u32, u64>,
    /// Group events so far (sends started, acknowledgements, membership changes asked and
    /// acknowledged).
    pub clock: u64,
    /// (group, client) → when the writer acknowledged the client a member (created or added).
    pub member_since: BTreeMap<(u32, u32), u64>,
    /// (group, client) → when its removal was first asked.
    pub removal_asked: BTreeMap<(u32, u32), u64>,
    /// (group, client) of every member whose removal the writer acknowledged.
    pub removed: BTreeSet<(u32, u32)>,
    /// Group messages whose send started, and when.
    pub sent_at: BTreeMap<GroupMessageRef, u64>,
    /// Group messages that entered their sender's outbox.
    pub queued: BTreeSet<GroupMessageRef>,
    /// Group messages acknowledged, and when.
    pub acked_at: BTreeMap<GroupMessageRef, u64>,
    /// Group messages their sender gave up.
    pub failed: BTreeSet<GroupMessageRef>,
    /// Group messages each device (client, device) has received.
    pub received: BTreeMap<(u32, u32), BTreeSet<GroupMessageRef>>,
    /// Clients that made every group send and change planned for them.
    pub done: BTreeSet<u32>,
}

impl GroupProgress {
    /// Moves the group clock on by one event and returns the new moment.
    pub fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Whether `client` must receive acknowledged group message `message`: it is not its
    /// sender, and it was a member from before the send started until after it was
    /// acknowledged (a removal asked meanwhile, or an addition acknowledged after the send
    /// started, excuses it either way).
    pub fn required(&self, client: u32, message: &GroupMessageRef) -> bool {
        let group = message.group;
        let (Some(&sent), Some(&acked)) = (self.sent_at.get(message), self.acked_at.get(message))
        else {
            return false;
        };
        client != message.sender
            && self
                .member_since
                .get(&(group, client))
                .is_some_and(|&since| since < sent)
            && self
                .removal_asked
                .get(&(group, client))
                .is_none_or(|&asked| asked > acked)
    }

    /// Whether group message `message` may never settle at its sender: not acknowledged, not
    /// given up, and its sender's removal from the group was asked. Such a text committed in a
    /// region before the removal and refused by another after it is retried for ever (the edge
    /// answers the region's `UnknownGroup` as `Unavailable`); receivers do not wait for it.
    pub fn stuck(&self, message: &GroupMessageRef) -> bool {
        !self.acked_at.contains_key(message)
            && !self.failed.contains(message)
            && self
                .removal_asked
                .contains_key(&(message.group, message.sender))
    }

    /// Whether device `device` of client `me` has every group message it must receive (none
    /// for a removed second device), and no group message it may have to receive is still
    /// unsettled at its sender.
    fn settled(&self, me: u32, device: u32, removed_device: bool, everyone: &Plan) -> bool {
        if removed_device {
            return true;
        }
        let received = self.received.get(&(me, device));
        self.queued.iter().all(|message| {
            let may_receive = message.sender != me
                && everyone
                    .groups
                    .iter()
                    .any(|group| group.group == message.group && group.ever_member(me));
            if !may_receive || self.failed.contains(message) || self.stuck(message) {
                return true;
            }
            match self.acked_at.contains_key(message) {
                false => false,
                true => {
                    !self.required(me, message)
                        || received.is_some_and(|received| received.contains(message))
                }
            }
        })
    }
}

impl Progress {
    /// Whether every device of client `client` has made its planned sends.
    pub fn sent_all(&self, client: u32) -> bool {
        self.done_sending.contains(&(client, 0))
            && (!self.linked.contains(&client) || self.done_sending.contains(&(client, 1)))
    }

    /// Whether the device of `observer` (of client `me`) has fetched every change its peers'
    /// devices made: each such device has sent all of its changes (a sync of it ended with an
    /// empty outbox after its last change), and this device's latest sync started after that
    /// (its previous one ended later). A change does not say it arrived when it is superseded,
    /// so this waits on the queues instead.
    pub fn peers_changes_fetched(&self, me: u32, everyone: &Plan, observer: &Observer) -> bool {
        let peers = everyone.peers_of(me);
        self.changes_made
            .iter()
            .filter(|((client, _), _)| peers.contains(client))
            .all(|(changer, &made)| {
                self.changes_flushed
                    .get(changer)
                    .is_some_and(|&(flushed, at)| flushed == made && observer.syncs.0 > at)
            })
    }

    /// Whether both devices of linked client `client` said after their latest sync that the
    /// other holds their documents: their documents are equal (I7), unless one changed since.
    pub fn account_in_sync(&self, client: u32) -> bool {
        !self.linked.contains(&client)
            || self.removed.contains(&client)
            || (self.in_sync.contains(&(client, 0)) && self.in_sync.contains(&(client, 1)))
    }

    /// Records that device `device` of client `me` finished a sync with `pending` entries left
    /// in its outbox (see [`Progress::changes_flushed`]).
    pub(super) fn synced(&mut self, me: u32, device: u32, pending: usize, observer: &mut Observer) {
        self.syncs += 1;
        observer.syncs = (observer.syncs.1, self.syncs);
        // The first such sync after the device's latest change: later ones send nothing new.
        if pending == 0
            && let Some(&made) = self.changes_made.get(&(me, device))
            && self
                .changes_flushed
                .get(&(me, device))
                .is_none_or(|&(flushed, _)| flushed != made)
        {
            self.changes_flushed
                .insert((me, device), (made, self.syncs));
        }
    }

    /// Records that client `client` linked its second device now: the messages queued so far
    /// are not the new device's to receive.
    pub fn link(&mut self, client: u32) {
        self.linked.insert(client);
        if !self.queued.is_empty() {
            self.queued_before_link.insert(client, self.queued.clone());
        }
    }

    /// Whether device `device` of client `me` can stop: everyone has sent and made their last
    /// change, its outbox is empty, every message queued for its account (and not given up) has
    /// arrived on it (on a linked device, every one queued since the link), and so has every
    /// change its peers' devices made ([`Progress::peers_changes_fetched`]).
    pub fn settled(&self, me: u32, device: u32, everyone: &Plan, observer: &Observer) -> bool {
        let everyone_sent = everyone.clients.iter().all(|plan| {
            self.sent_all(plan.client)
                && (!everyone.has_group_work(plan.client)
                    || self.groups.done.contains(&plan.client))
        });
        // A second device changes nothing after `second_done`, a first one nothing after its
        // sends but its edit of the contested message.
        let changes_over = self.linked.iter().all(|client| {
            self.second_done.contains(client)
                && self
                    .contested
                    .get(client)
                    .is_none_or(|&(_, first, _)| first)
        });
        // A member removed from a group may keep texts it sent meanwhile for ever.
        let outbox_settled = observer.pending == Some(0)
            || (observer.pending.is_some()
                && self
                    .groups
                    .removal_asked
                    .keys()
                    .any(|&(_, member)| member == me)
                && observer.only_stuck_texts_pending(self));
        if !everyone_sent
            || !changes_over
            || !outbox_settled
            || !self.peers_changes_fetched(me, everyone, observer)
        {
            return false;
        }
        let removed_device = device == 1 && self.removed.contains(&me);
        if !self.groups.settled(me, device, removed_device, everyone) {
            return false;
        }
        let received = self.received.get(&(me, device));
        let recipients = everyone.recipients();
        let before_link = match device {
            0 => None,
            _ => self.queued_before_link.get(&me),
        };
        self.queued
            .iter()
            .filter(|message| {
                recipients.get(message) == Some(&me)
                    && !self.failed.contains(message)
                    && !before_link.is_some_and(|before| before.contains(message))
            })
            .all(|message| received.is_some_and(|received| received.contains(message)))
    }
}
