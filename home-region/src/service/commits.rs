//! The commit path of envelopes: each chat's lane (envelopes of one chat committed in
//! `sender_seq` order, several in flight), a lane's batch committed as one transaction, a commit
//! whose answer was lost committed again under its idempotency key, and the quarantined devices
//! every commit and fetch leaves alone.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fdb_layers::StoreError;
use fdb_layers::keys::IdempotencyKey;
use fdb_layers::quarantine::{self, QuarantineRecord};
use prost::Message;
use relay_proto::wire::{self, region_response};
use relay_proto::{ChatId, DeviceAddress, ErrorCode, ProtoError, RegionId};
use tokio::sync::{Notify, oneshot};

use super::{LaneWaiter, RegionService, lock, store_failure};
use crate::core::{self, CommitDecision, Effects, GroupMembership, GroupSource};
use crate::lanes::{self, Arrival, LanePoll, Ticket};
use crate::limits::{PLANTED_COMMIT_DELAY_MS, QUARANTINE_LOAD_DEVICES_PER_TRANSACTION};

impl RegionService {
    /// Commits `envelope` in a retried transaction ([`core::commit_envelope`]) and performs its
    /// effects.
    pub(super) async fn commit(
        &self,
        envelope: &wire::Envelope,
        sender_region: RegionId,
        group: Option<&GroupMembership>,
        quarantined: &BTreeSet<DeviceAddress>,
        now_ms: u64,
    ) -> Result<CommitDecision, ProtoError> {
        let local = self.inner.region;
        let groups = self.group_source(group);
        self.transact(|tx| async move {
            core::commit_envelope(
                &tx,
                local,
                envelope,
                sender_region,
                groups,
                quarantined,
                now_ms,
            )
            .await
        })
        .await
    }

    /// The answer to a commit: a region's outcome, or the refusal of an envelope for a device
    /// whose queue turned out unreadable (quarantined now).
    pub(super) async fn commit_answer(
        &self,
        decision: CommitDecision,
    ) -> Result<wire::SendOutcome, ProtoError> {
        match decision {
            CommitDecision::Answer(outcome) => Ok(outcome),
            CommitDecision::RecipientQueueUnreadable { device, error } => {
                self.quarantine(device, &error).await;
                Err(core::quarantined_refusal(device))
            }
        }
    }

    /// How long an early envelope waits in its chat's lane for its predecessor, in ms (the
    /// default is [`lanes::HOLD_MS_MAX`], the most allowed). The simulation draws it, so that
    /// reordered envelopes also reach the chat log's own check.
    pub fn set_lane_hold_ms(&self, hold_ms: u64) {
        lock(&self.inner.lanes).set_hold_ms(hold_ms);
    }

    /// Commits an envelope through its chat's lane: it waits for the lane's turn (and for its
    /// predecessor from the same device, a bounded while), then commits in one transaction with
    /// whatever else of the chat is ready.
    pub(super) async fn commit_in_lane(
        &self,
        envelope: wire::Envelope,
        sender_region: RegionId,
    ) -> Result<CommitDecision, ProtoError> {
        let parsed = envelope.parse()?;
        // Asked before the lane: a lane never waits on the directory writer.
        let group = self.group_membership(&parsed).await?;
        let bytes = envelope.encoded_len();
        let ticket = self.inner.next_ticket.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        let waiter = LaneWaiter {
            envelope,
            sender: parsed.sender,
            sender_seq: parsed.sender_seq,
            sender_region,
            group,
            answer,
        };
        lock(&self.inner.lane_waiters).insert(ticket, waiter);
        let arrival = lock(&self.inner.lanes).handle_arrival(
            parsed.chat,
            ticket,
            parsed.sender,
            parsed.sender_seq,
            parsed.group.map(|group| group.prev_seq),
            bytes,
            self.inner.clock.now_ms(),
        );
        match arrival {
            Arrival::Full => {
                lock(&self.inner.lane_waiters).remove(&ticket);
                return Err(ProtoError::new(
                    ErrorCode::Overloaded,
                    format!(
                        "chat {} has {} envelopes waiting here; retry later",
                        parsed.chat,
                        lanes::LANE_ENVELOPES_MAX
                    ),
                )
                .with_retry_after_ms(lanes::HOLD_MS_MAX));
            }
            Arrival::Start => {
                let waker = Arc::new(Notify::new());
                lock(&self.inner.lane_wakers).insert(parsed.chat, waker.clone());
                tokio::spawn(self.clone().run_lane(parsed.chat, waker));
            }
            Arrival::Queued => {
                if let Some(waker) = lock(&self.inner.lane_wakers).get(&parsed.chat) {
                    waker.notify_one();
                }
            }
        }
        answered.await.map_err(|_| {
            ProtoError::new(ErrorCode::Internal, "the chat's lane stopped; retry later")
        })?
    }

    /// Runs the lane of `chat` until nothing waits in it.
    async fn run_lane(self, chat: ChatId, waker: Arc<Notify>) {
        loop {
            let poll = lock(&self.inner.lanes).poll(chat, self.inner.clock.now_ms());
            match poll {
                LanePoll::Idle => {
                    let mut wakers = lock(&self.inner.lane_wakers);
                    if wakers
                        .get(&chat)
                        .is_some_and(|current| Arc::ptr_eq(current, &waker))
                    {
                        wakers.remove(&chat);
                    }
                    return;
                }
                LanePoll::Lookup(sender) => {
                    let last = self
                        .inner
                        .db
                        .transact(|tx| async move {
                            fdb_layers::chat_log::last_sender_seq(&tx, chat, sender).await
                        })
                        .await;
                    let mut lanes = lock(&self.inner.lanes);
                    match last {
                        Ok(last) => lanes.handle_lookup(chat, sender, last),
                        Err(error) => {
                            tracing::warn!(%error, %chat, %sender, "cannot read a sender's last number; not holding its envelopes");
                            lanes.handle_lookup_failed(chat, sender);
                        }
                    }
                }
                LanePoll::WaitUntil(at_ms) => {
                    let wait = at_ms.saturating_sub(self.inner.clock.now_ms());
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                        () = waker.notified() => {}
                    }
                }
                LanePoll::Batch(tickets) => self.commit_batch(chat, tickets).await,
            }
        }
    }

    /// Commits the envelopes of `tickets`, in order, in one transaction, and answers each.
    async fn commit_batch(&self, chat: ChatId, tickets: Vec<Ticket>) {
        let waiters: Vec<LaneWaiter> = {
            let mut waiting = lock(&self.inner.lane_waiters);
            tickets
                .iter()
                .filter_map(|ticket| waiting.remove(ticket))
                .collect()
        };
        let local = self.inner.region;
        let quarantined = self.quarantined();
        let now = self.inner.clock.now_ms();
        let batch: Vec<(&wire::Envelope, RegionId, GroupSource<'_>)> = waiters
            .iter()
            .map(|waiter| {
                let groups = self.group_source(waiter.group.as_deref());
                (&waiter.envelope, waiter.sender_region, groups)
            })
            .collect();
        let committed = self
            .inner
            .db
            .transact(|tx| {
                let batch = batch.clone();
                let quarantined = &quarantined;
                async move {
                    let mut decisions = Vec::with_capacity(batch.len());
                    let mut effects = Effects::default();
                    // The batch's envelopes reach each recipient device as one queue entry.
                    let mut fan_out = core::FanOut::default();
                    for (envelope, sender_region, groups) in batch {
                        match core::commit_envelope_into(
                            &tx,
                            local,
                            envelope,
                            sender_region,
                            groups,
                            quarantined,
                            now,
                            &mut fan_out,
                        )
                        .await?
                        {
                            Ok((decision, more)) => {
                                effects.merge(more);
                                decisions.push(Ok(decision));
                            }
                            Err(refusal) => decisions.push(Err(refusal)),
                        }
                    }
                    fan_out.write(&tx, now, &mut effects).await?;
                    Ok((decisions, effects))
                }
            })
            .await;
        let mut outcomes = Vec::with_capacity(waiters.len());
        match committed {
            Ok((decisions, effects)) => {
                self.apply(effects);
                for (waiter, decision) in waiters.into_iter().zip(decisions) {
                    outcomes.push((waiter.sender, waiter.sender_seq, lane_outcome(&decision)));
                    let _ = waiter.answer.send(decision);
                }
            }
            Err(error) => {
                let refusal = store_failure(error);
                for waiter in waiters {
                    let _ = waiter.answer.send(Err(refusal.clone()));
                }
            }
        }
        lock(&self.inner.lanes).handle_committed(chat, &outcomes);
    }

    /// The quarantined devices now.
    pub(super) fn quarantined(&self) -> BTreeSet<DeviceAddress> {
        self.inner
            .quarantined
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Quarantines `device`, whose queue could not be read: in memory at once, in the store
    /// as well as the store allows.
    pub(super) async fn quarantine(&self, device: DeviceAddress, error: &StoreError) {
        let new = self
            .inner
            .quarantined
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(device);
        if !new {
            return;
        }
        tracing::error!(
            %device,
            %error,
            "the queue of device {device} cannot be read: quarantined, nothing is accepted for it until an operator repairs the store (relayd admin check-store)"
        );
        let record = QuarantineRecord {
            since_ms: self.inner.clock.now_ms(),
            reason: error.to_string(),
        };
        let recorded = self
            .inner
            .db
            .transact(|tx| {
                let record = record.clone();
                async move { quarantine::put(&tx, device, &record).await }
            })
            .await;
        if let Err(error) = recorded {
            tracing::error!(%device, %error, "could not record the quarantine in the store; it holds until this process stops");
        }
    }

    /// Loads the quarantined devices recorded in the store.
    pub(super) async fn load_quarantine(&self) {
        let mut after = None;
        loop {
            let page = self
                .inner
                .db
                .transact(|tx| async move {
                    quarantine::list(&tx, after, QUARANTINE_LOAD_DEVICES_PER_TRANSACTION).await
                })
                .await;
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::error!(%error, "cannot read the quarantined devices");
                    return;
                }
            };
            let Some(&(last, _)) = page.last() else {
                return;
            };
            let mut quarantined = self
                .inner
                .quarantined
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            for (device, record) in page {
                tracing::warn!(%device, since_ms = record.since_ms, reason = %record.reason, "device quarantined (its queue cannot be read); repair with relayd admin repair-store");
                quarantined.insert(device);
            }
            after = Some(last);
        }
    }

    /// A new idempotency key for one request: issued before its transaction, so every retry of
    /// that transaction carries it.
    pub(super) fn idempotency_key(&self) -> IdempotencyKey {
        let counter = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.inner.key_prefix.to_be_bytes());
        nonce[8..].copy_from_slice(&counter.to_be_bytes());
        IdempotencyKey::new(self.inner.clock.now_ms(), nonce)
    }

    /// Runs a core function in a retried transaction, then performs its effects.
    /// The planted bug [`PlantedBug::AckBeforeCommit`]: answers with what the commit would
    /// return, read in a transaction that is never committed, and commits for real
    /// [`PLANTED_COMMIT_DELAY_MS`] later (lost if the process dies in between).
    pub(super) async fn commit_late(
        &self,
        envelope: relay_proto::wire::Envelope,
        sender_region: RegionId,
        now: u64,
    ) -> Result<region_response::Body, ProtoError> {
        let local = self.inner.region;
        let quarantined = self.quarantined();
        let group = self.group_membership(&envelope.parse()?).await?;
        let groups = self.group_source(group.as_deref());
        let peek = self.inner.db.create_transaction().map_err(store_failure)?;
        let (decision, _) = core::commit_envelope(
            &peek,
            local,
            &envelope,
            sender_region,
            groups,
            &quarantined,
            now,
        )
        .await
        .map_err(store_failure)??;
        drop(peek);
        let outcome = self.commit_answer(decision).await?;
        let service = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(PLANTED_COMMIT_DELAY_MS)).await;
            let committed = service
                .commit(
                    &envelope,
                    sender_region,
                    group.as_deref(),
                    &quarantined,
                    now,
                )
                .await;
            if let Err(error) = committed {
                tracing::warn!(%error, "planted bug: a late commit failed");
            }
        });
        Ok(region_response::Body::Committed(outcome))
    }
}

/// What a commit's answer tells the lane about the sender's next number.
fn lane_outcome(decision: &Result<CommitDecision, ProtoError>) -> lanes::Committed {
    use relay_proto::wire::send_outcome::Outcome;
    match decision {
        Ok(CommitDecision::Answer(answer)) => match &answer.outcome {
            Some(Outcome::Sent(_)) => lanes::Committed::Stored,
            Some(Outcome::ResendFrom(resend)) => {
                lanes::Committed::Expects(resend.expected_sender_seq)
            }
            _ => lanes::Committed::Other,
        },
        _ => lanes::Committed::Other,
    }
}
