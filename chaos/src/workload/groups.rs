//! A client's part in the run's groups ([`GroupTurns`]): the creator creates each of its groups
//! and, at the plan's moments, removes one member and adds another; every member sends its
//! group texts at their moments, once the group exists (an added member once its addition was
//! acknowledged; a removed member drops what falls due after its removal was acknowledged, and
//! what it sent before races the removal). The turns are taken between the client's other
//! actions, by its first device.
//!
//! Each change is recorded when first asked ([`What::GroupChangeAsked`]) and when the directory
//! writer's answer arrives ([`What::GroupChanged`]), each send when it starts
//! ([`What::GroupSend`]), and each of these moves the group clock of [`GroupProgress`], which
//! the other clients' waits read as the checker reads the trace.
//!
//! [`GroupProgress`]: super::progress::GroupProgress

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use super::{App, ClientSetup, Observer, PlannedGroupSend, SEND_ATTEMPTS_MAX, past, tolerate};
use crate::history::{GroupChange, What, client_name};
use crate::time::sim_elapsed_ms;

/// What one client still has to do in the run's groups.
pub(super) struct GroupTurns {
    /// When the client started sending (the plan's moments count from it), in simulated ms.
    started_ms: u64,
    /// Its group texts not sent yet, by moment, with the attempts made at the first.
    sends: VecDeque<PlannedGroupSend>,
    attempts: u32,
    /// Changes it asked for (recorded once), by group and kind.
    asked: Vec<(u32, ChangeKind)>,
    /// Changes the writer acknowledged, by group and kind.
    acknowledged: Vec<(u32, ChangeKind)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Create,
    Remove,
    Add,
}

impl GroupTurns {
    /// The client's group work, its moments counted from now.
    pub(super) fn new(setup: &ClientSetup) -> Self {
        let me = setup.plan.client;
        let mut sends: Vec<PlannedGroupSend> = setup
            .everyone
            .groups
            .iter()
            .flat_map(|group| &group.sends)
            .filter(|send| send.message.sender == me)
            .copied()
            .collect();
        // Stable: a sender's texts to one group keep their numbers' order.
        sends.sort_by_key(|send| send.at_ms);
        Self {
            started_ms: sim_elapsed_ms(),
            sends: sends.into(),
            attempts: 0,
            asked: Vec::new(),
            acknowledged: Vec::new(),
        }
    }

    /// Takes the turns that are due: the creator's changes, then the texts.
    pub(super) async fn take(
        &mut self,
        setup: &ClientSetup,
        app: &mut App,
        local: &Rc<RefCell<Observer>>,
    ) -> turmoil::Result {
        self.change(setup, app).await?;
        self.send(setup, app, local).await?;
        let me = setup.plan.client;
        let creates_all = setup
            .everyone
            .groups
            .iter()
            .filter(|group| group.creator == me)
            .all(|group| {
                let changes = 1
                    + usize::from(group.removal.is_some())
                    + usize::from(group.addition.is_some());
                self.acknowledged
                    .iter()
                    .filter(|(done, _)| *done == group.group)
                    .count()
                    == changes
            });
        if self.sends.is_empty() && creates_all {
            setup.shared.borrow_mut().progress.groups.done.insert(me);
        }
        Ok(())
    }

    /// The creator's changes that are due: creation at once, then the removal and the addition
    /// at their moments.
    async fn change(&mut self, setup: &ClientSetup, app: &mut App) -> turmoil::Result {
        let me = setup.plan.client;
        let elapsed = sim_elapsed_ms().saturating_sub(self.started_ms);
        for group in setup
            .everyone
            .groups
            .iter()
            .filter(|group| group.creator == me)
        {
            let number = group.group;
            let id = setup
                .shared
                .borrow()
                .progress
                .groups
                .ids
                .get(&number)
                .copied();
            let Some(id) = id else {
                let change = GroupChange::Create(group.members.clone());
                self.ask(setup, number, ChangeKind::Create, &change);
                let names: Vec<String> =
                    group.members[1..].iter().map(|&m| client_name(m)).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                match app.create_group(&format!("g{number}"), &names).await {
                    Ok((id, version)) => {
                        let mut shared = setup.shared.borrow_mut();
                        let groups = &mut shared.progress.groups;
                        let now = groups.tick();
                        groups.ids.insert(number, id);
                        for &member in &group.members {
                            groups.member_since.insert((number, member), now);
                        }
                        shared.record(What::GroupChanged {
                            group: number,
                            by: me,
                            change,
                            version,
                        });
                        self.acknowledged.push((number, ChangeKind::Create));
                    }
                    Err(error) => tolerate(Err(error))?,
                }
                continue;
            };
            let due = [
                (ChangeKind::Remove, group.removal),
                (ChangeKind::Add, group.addition),
            ];
            for (kind, planned) in due {
                let Some((member, at_ms)) = planned else {
                    continue;
                };
                if elapsed < at_ms || self.acknowledged.contains(&(number, kind)) {
                    continue;
                }
                let change = match kind {
                    ChangeKind::Remove => GroupChange::Remove(member),
                    _ => GroupChange::Add(member),
                };
                if self.ask(setup, number, kind, &change) && kind == ChangeKind::Remove {
                    let mut shared = setup.shared.borrow_mut();
                    let groups = &mut shared.progress.groups;
                    let now = groups.clock;
                    groups.removal_asked.insert((number, member), now);
                }
                let name = client_name(member);
                let answer = match kind {
                    ChangeKind::Remove => app.remove_group_member(id, &name).await,
                    _ => app.add_group_member(id, &name).await,
                };
                match answer {
                    Ok(version) => {
                        let mut shared = setup.shared.borrow_mut();
                        let groups = &mut shared.progress.groups;
                        let now = groups.tick();
                        match kind {
                            ChangeKind::Remove => groups.removed.insert((number, member)),
                            _ => groups.member_since.insert((number, member), now).is_none(),
                        };
                        shared.record(What::GroupChanged {
                            group: number,
                            by: me,
                            change,
                            version,
                        });
                        self.acknowledged.push((number, kind));
                    }
                    Err(error) => tolerate(Err(error))?,
                }
            }
        }
        Ok(())
    }

    /// Records the first ask of a change (and moves the group clock); false when it was asked
    /// before.
    fn ask(
        &mut self,
        setup: &ClientSetup,
        group: u32,
        kind: ChangeKind,
        change: &GroupChange,
    ) -> bool {
        if self.asked.contains(&(group, kind)) {
            return false;
        }
        self.asked.push((group, kind));
        let mut shared = setup.shared.borrow_mut();
        shared.progress.groups.tick();
        shared.record(What::GroupChangeAsked {
            group,
            by: setup.plan.client,
            change: change.clone(),
        });
        true
    }

    /// Sends the texts that are due, in order, while their group exists and this client is a
    /// member; a text still not in the outbox after [`SEND_ATTEMPTS_MAX`] turns is dropped.
    async fn send(
        &mut self,
        setup: &ClientSetup,
        app: &mut App,
        local: &Rc<RefCell<Observer>>,
    ) -> turmoil::Result {
        let me = setup.plan.client;
        while let Some(&send) = self.sends.front() {
            let message = send.message;
            if sim_elapsed_ms().saturating_sub(self.started_ms) < send.at_ms
                || past(setup.deadline_ms)
            {
                return Ok(());
            }
            let (id, member, removed) = {
                let groups = &setup.shared.borrow().progress.groups;
                (
                    groups.ids.get(&message.group).copied(),
                    groups.member_since.contains_key(&(message.group, me)),
                    groups.removed.contains(&(message.group, me)),
                )
            };
            if removed {
                // Not a member any more: what was due after the removal is never sent.
                self.sends.pop_front();
                continue;
            }
            let Some(id) = id.filter(|_| member) else {
                return Ok(()); // The group, or this member's addition, is not there yet.
            };
            if self.attempts == 0 {
                let mut shared = setup.shared.borrow_mut();
                let groups = &mut shared.progress.groups;
                let now = groups.tick();
                groups.sent_at.insert(message, now);
                shared.record(What::GroupSend { message, device: 0 });
            }
            self.attempts += 1;
            local.borrow_mut().sending_group = Some(message);
            let sent = app.send_group(id, &message.text()).await;
            local.borrow_mut().sending_group = None;
            tolerate(sent)?;
            let queued = setup
                .shared
                .borrow()
                .progress
                .groups
                .queued
                .contains(&message);
            if !queued && self.attempts < SEND_ATTEMPTS_MAX {
                return Ok(()); // Again at the next turn.
            }
            self.sends.pop_front();
            self.attempts = 0;
        }
        Ok(())
    }
}
