//! The region's side of home moves (see [`crate::home_move`]): the gate that holds and turns
//! away requests of moving and moved accounts, the move an operator asks of the old home, the
//! parts the new home applies, and the directory writer's compare-and-set.

use std::collections::HashMap;
use std::time::Duration;

use fdb_layers::{directory, home_move as layer};
use relay_net::NetError;
use relay_proto::limits::REGION_PEER_REQUEST_TIMEOUT_MS;
use relay_proto::wire::{self, RegionRequest, RegionResponse, region_request, region_response};
use relay_proto::{AccountId, ErrorCode, ProtoError, RegionId};

use super::{RegionService, error_response, lock, store_failure};
use crate::handover::InFlight;
use crate::home_move::{self, AccountHolds, Exporter, MoveStats, PartSink};
use crate::limits::{
    HANDOVER_ANSWER_WAIT_MS, HANDOVER_DRAIN_WAIT_MS, MOVE_ACTIVATE_ATTEMPTS_MAX,
    MOVE_PART_RETRY_MS, MOVE_PEER_ATTEMPTS_MAX, MOVE_RECORD_ATTEMPTS_HELD, MOVE_RECORD_RETRY_MS,
    MOVE_SETTLE_RETRY_MS, MOVE_UNMARK_ATTEMPTS_MAX,
};

/// An account that left this region (or is leaving it: its move's flip is unsettled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Away {
    /// The directory moved it to this region.
    Moved(RegionId),
    /// Its move to this region wrote the away mark, but whether the directory moved it is not
    /// known yet: its requests are refused `Unavailable` until the region settles it.
    Unsettled(RegionId),
}

/// What the region keeps in memory of home moves.
#[derive(Debug, Default)]
pub(super) struct Moves {
    /// Accounts whose requests wait while their home moves.
    pub(super) holds: AccountHolds,
    /// Accounts that moved away (loaded from the away marks at start).
    pub(super) away: std::sync::Mutex<HashMap<AccountId, Away>>,
    /// One move at a time.
    pub(super) running: tokio::sync::Mutex<()>,
    /// Accounts that moved away whose keys are still being cleared: one cannot move back here
    /// until that is done (the clearing would remove what it brings).
    pub(super) clearing: std::sync::Mutex<std::collections::BTreeSet<AccountId>>,
}

/// Releases a held account when the move ends, however it ends.
struct HoldGuard<'a> {
    holds: &'a AccountHolds,
    account: AccountId,
}

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        self.holds.release(self.account);
    }
}

/// The parts of a move, sent to the new home (each one again on a failed exchange or a
/// retryable refusal, such as a commit its storage failed: applying a part twice changes
/// nothing).
struct PeerSink<'a> {
    service: &'a RegionService,
    to: RegionId,
}

impl PartSink for PeerSink<'_> {
    async fn send(&mut self, part: wire::ImportAccount) -> Result<(), ProtoError> {
        let request = RegionRequest {
            body: Some(region_request::Body::ImportAccount(part)),
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error: ProtoError = match self.service.ask_peer(self.to, &request).await?.body {
                Some(region_response::Body::AccountImported(_)) => return Ok(()),
                Some(region_response::Body::Error(error)) => error.into(),
                _ => {
                    return Err(ProtoError::new(
                        ErrorCode::Internal,
                        "unexpected answer to a part of a home move",
                    ));
                }
            };
            if !error.code.is_retryable() || attempts >= MOVE_PEER_ATTEMPTS_MAX {
                return Err(error);
            }
            tracing::warn!(to = %self.to, %error, "the new home refused a part of a home move for now; sending it again");
            tokio::time::sleep(Duration::from_millis(MOVE_PART_RETRY_MS)).await;
        }
    }
}

impl RegionService {
    /// Loads the accounts that moved away from this region (their away marks).
    pub(super) async fn load_away(&self) {
        let local = self.inner.region;
        let mut after = None;
        loop {
            let page = self
                .inner
                .db
                .transact(|tx| async move {
                    let marks =
                        layer::away_accounts(&tx, after, home_move::MOVE_KEYS_PER_READ).await?;
                    let mut page = Vec::with_capacity(marks.len());
                    for (account, to) in marks {
                        // Still homed here: the move's flip was not settled (its epoch then).
                        let unsettled = directory::account_by_id(&tx, account)
                            .await?
                            .filter(|record| record.home_region == local)
                            .map(|record| record.epoch);
                        page.push((account, to, unsettled));
                    }
                    Ok(page)
                })
                .await;
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::error!(%error, "cannot read the accounts that moved away");
                    return;
                }
            };
            let Some(&(last, _, _)) = page.last() else {
                return;
            };
            let mut away = lock(&self.inner.moves.away);
            for (account, to, epoch) in page {
                match epoch {
                    None => {
                        away.insert(account, Away::Moved(to));
                    }
                    Some(epoch) => {
                        tracing::warn!(%account, to = %to, "a home move was left unsettled: finishing it");
                        away.insert(account, Away::Unsettled(to));
                        tokio::spawn(self.clone().settle(account, to, epoch));
                    }
                }
            }
            after = Some(last);
        }
    }

    /// The gate every request passes (after the handover gate): a request touching an account
    /// whose home is moving waits until the move ends; one routed here for an account that
    /// moved away is refused with where it went.
    pub(super) async fn pass_gate(&self, request: &RegionRequest) -> Result<InFlight, ProtoError> {
        let moves = &self.inner.moves;
        loop {
            let in_flight = self.inner.drain.enter().await;
            let held = moves.holds.any();
            if !held && lock(&moves.away).is_empty() {
                return Ok(in_flight);
            }
            let Some(body) = &request.body else {
                return Ok(in_flight);
            };
            let touched = home_move::touched_accounts(body, self.inner.region);
            if touched.accounts.is_empty() {
                return Ok(in_flight);
            }
            if touched.refused_when_away {
                let away = lock(&moves.away);
                for account in &touched.accounts {
                    match away.get(account) {
                        Some(Away::Moved(to)) => {
                            return Err(ProtoError::new(
                                ErrorCode::UnknownAccount,
                                format!("account {account} moved to region {to}"),
                            ));
                        }
                        Some(Away::Unsettled(to)) => {
                            return Err(ProtoError::new(
                                ErrorCode::Unavailable,
                                format!("account {account} is moving to region {to}; retry later"),
                            ));
                        }
                        None => {}
                    }
                }
            }
            if !held {
                return Ok(in_flight);
            }
            let released = moves.holds.released();
            tokio::pin!(released);
            released.as_mut().enable();
            if !moves.holds.holds_any(&touched.accounts) {
                return Ok(in_flight);
            }
            drop(in_flight);
            released.await;
        }
    }

    /// Serves `relayd admin move-home` on its own stream: only the region's own certificate
    /// may ask.
    pub(super) async fn serve_move_home(
        &self,
        ask: wire::MoveHome,
        from_own_cert: bool,
        mut send: quinn::SendStream,
    ) {
        let answer = if from_own_cert {
            self.move_home(AccountId(ask.account), RegionId(ask.to_region))
                .await
        } else {
            Err(ProtoError::new(
                ErrorCode::Forbidden,
                "only a holder of the region's own certificate may move an account's home",
            ))
        };
        let response = match answer {
            Ok(moved) => RegionResponse {
                body: Some(region_response::Body::HomeMoved(moved)),
            },
            Err(error) => error_response(error),
        };
        if relay_net::write_frame(&mut send, &response).await.is_ok() && send.finish().is_ok() {
            let _ = tokio::time::timeout(
                Duration::from_millis(HANDOVER_ANSWER_WAIT_MS),
                send.stopped(),
            )
            .await;
        }
    }

    /// Moves the home of `account`, homed here, to region `to` (see [`crate::home_move`]).
    async fn move_home(
        &self,
        account: AccountId,
        to: RegionId,
    ) -> Result<wire::HomeMoved, ProtoError> {
        let local = self.inner.region;
        if to == local {
            return Err(ProtoError::invalid(format!(
                "account {account} is homed in region {local} already"
            )));
        }
        let Ok(_one_at_a_time) = self.inner.moves.running.try_lock() else {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                "another home move is under way in this region; retry when it ends",
            ));
        };
        let record = self
            .inner
            .db
            .transact(|tx| async move { directory::account_by_id(&tx, account).await })
            .await
            .map_err(store_failure)?;
        let record = match record {
            Some(record) if record.home_region == local => record,
            Some(record) => {
                return Err(ProtoError::new(
                    ErrorCode::UnknownAccount,
                    format!(
                        "account {account} is homed in region {}, not here: ask that region",
                        record.home_region
                    ),
                ));
            }
            None => {
                return Err(ProtoError::new(
                    ErrorCode::UnknownAccount,
                    format!("no account {account}"),
                ));
            }
        };
        if let Some(device) = self
            .quarantined()
            .iter()
            .find(|device| device.account == account)
        {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                format!(
                    "device {device} is quarantined (its queue cannot be read): repair the store \
                     before moving the account"
                ),
            ));
        }

        // The injected clock: a simulated run measures simulated time, the same on every run.
        let began_ms = self.inner.clock.now_ms();
        let moves = &self.inner.moves;
        if !moves.holds.hold(account) {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                format!("a move of account {account} is under way"),
            ));
        }
        let _hold = HoldGuard {
            holds: &moves.holds,
            account,
        };
        // The requests that passed the gate before the hold finish first; the region's gate
        // closes only while they do.
        if !self.inner.drain.hold() {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                "a handover is under way",
            ));
        }
        let left = self
            .inner
            .drain
            .settled(Duration::from_millis(HANDOVER_DRAIN_WAIT_MS))
            .await;
        self.inner.drain.release();
        if left > 0 {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                format!("{left} requests were still under way; retry the move"),
            ));
        }

        let sink = PeerSink { service: self, to };
        let mut exporter = Exporter::new(&self.inner.db, account, local, sink);
        let copied = async {
            exporter.copy().await?;
            exporter.fence(to).await?;
            exporter.flush().await
        }
        .await;
        if let Err(error) = copied {
            self.unmark(account, to).await;
            return Err(error);
        }

        let moved = match self.flip(account, to, record.epoch).await {
            Ok(moved) => moved,
            Err(Flip::Refused(error)) => {
                self.unmark(account, to).await;
                return Err(error);
            }
            Err(Flip::Unsettled(error)) => {
                lock(&moves.away).insert(account, Away::Unsettled(to));
                tracing::warn!(%account, %to, %error, "a home move's flip is unsettled: finishing it when the directory writer answers");
                tokio::spawn(self.clone().settle(account, to, record.epoch));
                return Err(ProtoError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the directory writer did not answer ({error}); the region finishes the \
                         move when it does"
                    ),
                ));
            }
        };
        let stats = match exporter.activate(moved.clone()).await {
            Ok(stats) => stats,
            Err(error) => {
                // The new home's replica of the directory hears of the move within seconds;
                // the activation (which also marks when the account arrived there, so what was
                // stored there before is queued for it when sent again) follows.
                tracing::warn!(%account, %to, %error, "the new home did not take the account at once");
                tokio::spawn(self.clone().activate_until_taken(moved.clone(), to));
                MoveStats::default()
            }
        };
        // The flip moved the account: whatever fails from here on, it is served elsewhere. Its
        // requests are turned away from now on, and a record this store cannot take yet is
        // written in the background (the directory replica brings it too).
        lock(&moves.away).insert(account, Away::Moved(to));
        let held = self
            .take_record(&moved, MOVE_RECORD_ATTEMPTS_HELD, MOVE_RECORD_RETRY_MS)
            .await;
        if let Err(error) = held {
            tracing::warn!(%account, %to, %error, "cannot record here that the account moved yet; trying again in the background");
            let service = self.clone();
            let moved = moved.clone();
            tokio::spawn(async move {
                let background = service
                    .take_record(&moved, MOVE_UNMARK_ATTEMPTS_MAX, MOVE_SETTLE_RETRY_MS)
                    .await;
                match background {
                    Ok(()) => tracing::info!(%account, "recorded here that the account moved"),
                    Err(error) => {
                        tracing::error!(%account, %error, "gave up recording that the account moved: the directory replica brings the record")
                    }
                }
            });
        }
        self.no_longer_woken_here(account).await;
        self.tell_edges_moved(&moved);
        let held_ms = self.inner.clock.now_ms().saturating_sub(began_ms);
        // Nothing reaches the account's keys here any more (requests are turned away, receipts
        // forwarded): they are cleared after the hold ends.
        lock(&moves.clearing).insert(account);
        let service = self.clone();
        tokio::spawn(async move {
            if let Err(error) = home_move::clear(&service.inner.db, account).await {
                tracing::warn!(%account, %error, "cannot clear a moved account; what is left is unused");
            }
            lock(&service.inner.moves.clearing).remove(&account);
        });
        tracing::info!(%account, from = %local, %to, epoch = moved.epoch, held_ms, ?stats, "account moved");
        Ok(wire::HomeMoved {
            account: moved,
            from_region: local.0,
            keys: stats.keys,
            queue_entries: stats.queue_entries,
            log_entries: stats.log_entries,
            chats: stats.chats,
            parts: stats.parts,
            held_ms,
        })
    }

    /// Finishes a move whose flip was not settled (the writer did not answer, or the region
    /// stopped after the away mark): asks the writer again every second until it answers. The
    /// mark is written only once the new home holds every part, so a flip that succeeds is
    /// finished (activated there, let go here); one the writer refuses leaves the account here.
    async fn settle(self, account: AccountId, to: RegionId, epoch: u64) {
        loop {
            match self.flip(account, to, epoch).await {
                Ok(moved) => {
                    if let Err(error) = self.activate_at(&moved, to).await {
                        tracing::warn!(%account, %to, %error, "the new home did not take the account at once");
                        tokio::spawn(self.clone().activate_until_taken(moved.clone(), to));
                    }
                    self.no_longer_woken_here(account).await;
                    if let Err(error) = home_move::let_go(
                        &self.inner.db,
                        &moved,
                        self.inner.writer == self.inner.region,
                    )
                    .await
                    {
                        tracing::warn!(%account, %error, "cannot clear a moved account yet");
                    }
                    lock(&self.inner.moves.away).insert(account, Away::Moved(to));
                    self.tell_edges_moved(&moved);
                    tracing::info!(%account, %to, epoch = moved.epoch, "an unsettled home move finished");
                    return;
                }
                Err(Flip::Refused(error)) => {
                    tracing::warn!(%account, %to, %error, "an unsettled home move was refused: the account stays");
                    self.unmark(account, to).await;
                    return;
                }
                Err(Flip::Unsettled(_)) => {
                    tokio::time::sleep(Duration::from_millis(MOVE_SETTLE_RETRY_MS)).await;
                }
            }
        }
    }

    /// Takes the directory's record of a moved account into this store, in up to `attempts`
    /// tries `wait_ms` apart: first while the account's requests are still held, then in the
    /// background (swarm seed 17 with failovers: a disk that failed this one commit left the
    /// account served by its old home after the directory had moved it).
    async fn take_record(
        &self,
        moved: &wire::AccountInfo,
        attempts: u32,
        wait_ms: u64,
    ) -> Result<(), ProtoError> {
        let writer = self.inner.writer == self.inner.region;
        let mut attempt = 1;
        loop {
            match home_move::take_record(&self.inner.db, moved, writer).await {
                Err(error) if attempt < attempts => {
                    tracing::debug!(account = moved.account, attempt, %error, "cannot record here that the account moved yet");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                }
                taken => return taken,
            }
        }
    }

    /// Sends the new home the last part of a move, which activates the account there.
    async fn activate_at(&self, moved: &wire::AccountInfo, to: RegionId) -> Result<(), ProtoError> {
        let mut sink = PeerSink { service: self, to };
        let activate = wire::ImportAccount {
            account: moved.account,
            from_region: self.inner.region.0,
            part: u32::MAX,
            activate: Some(moved.clone()),
            ..wire::ImportAccount::default()
        };
        sink.send(activate).await
    }

    /// Sends the activation again every [`MOVE_SETTLE_RETRY_MS`] until the new home takes it
    /// (at most [`MOVE_ACTIVATE_ATTEMPTS_MAX`] times): the directory moved the account, and
    /// the new home learns that from its replica too, but only the activation marks when the
    /// account arrived (`home_move::set_arrived`), which the new home needs to queue for it an
    /// envelope it stored before and that is sent again.
    async fn activate_until_taken(self, moved: wire::AccountInfo, to: RegionId) {
        let account = AccountId(moved.account);
        for _ in 0..MOVE_ACTIVATE_ATTEMPTS_MAX {
            tokio::time::sleep(Duration::from_millis(MOVE_SETTLE_RETRY_MS)).await;
            match self.activate_at(&moved, to).await {
                Ok(()) => {
                    tracing::info!(%account, %to, "the new home took the account");
                    return;
                }
                Err(error) if error.code.is_retryable() => {}
                Err(error) => {
                    tracing::warn!(%account, %to, %error, "the new home refused the account's activation");
                    return;
                }
            }
        }
        tracing::error!(%account, %to, "the new home never took the account's activation; envelopes it stored before the move may not reach the account");
    }

    /// A moved account's devices are no longer woken by this region.
    async fn no_longer_woken_here(&self, account: AccountId) {
        let devices = self
            .inner
            .db
            .transact(|tx| async move { directory::devices(&tx, account).await })
            .await;
        match devices {
            Ok(devices) => {
                let devices: Vec<_> = devices.into_iter().map(|device| device.device).collect();
                self.inner.pusher.handle_moved(&devices, false);
            }
            Err(error) => {
                tracing::warn!(%account, %error, "cannot read a moved account's devices");
            }
        }
    }

    /// Removes the away mark of a move that did not happen. A store that cannot remove it
    /// leaves the account refused as moving meanwhile, and the region tries again in the
    /// background ([`Self::unmark_until_done`]); should it stop first, it settles the mark when
    /// it starts again (the mark is written only once the new home holds everything, so
    /// finishing is safe).
    async fn unmark(&self, account: AccountId, to: RegionId) {
        if let Err(error) = self.clear_away(account).await {
            tracing::error!(%account, %error, "cannot remove the away mark of a failed move yet");
            lock(&self.inner.moves.away).insert(account, Away::Unsettled(to));
            tokio::spawn(self.clone().unmark_until_done(account, to));
        }
    }

    /// Removes the away mark of a failed move once the store takes it, every
    /// [`MOVE_SETTLE_RETRY_MS`], at most [`MOVE_UNMARK_ATTEMPTS_MAX`] times, unless something
    /// else settled the account meanwhile (swarm seed 2319: a failing disk refused the removal,
    /// and the account was refused as moving until its region restarted).
    async fn unmark_until_done(self, account: AccountId, to: RegionId) {
        for _ in 0..MOVE_UNMARK_ATTEMPTS_MAX {
            tokio::time::sleep(Duration::from_millis(MOVE_SETTLE_RETRY_MS)).await;
            if !matches!(lock(&self.inner.moves.away).get(&account), Some(Away::Unsettled(unsettled)) if *unsettled == to)
            {
                return;
            }
            match self.clear_away(account).await {
                Ok(()) => {
                    tracing::info!(%account, %to, "the away mark of a failed move is removed");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%account, %error, "cannot remove the away mark of a failed move yet");
                }
            }
        }
        tracing::error!(%account, %to, "gave up removing the away mark of a failed move: the region settles it when it starts again");
    }

    /// Clears the away mark of `account` and forgets it here.
    async fn clear_away(&self, account: AccountId) -> Result<(), fdb_layers::StoreError> {
        self.inner
            .db
            .transact(|tx| async move {
                layer::clear_away(&tx, account);
                Ok(())
            })
            .await?;
        lock(&self.inner.moves.away).remove(&account);
        Ok(())
    }

    /// The directory's compare-and-set of the move (here when this region is the writer).
    async fn flip(
        &self,
        account: AccountId,
        to: RegionId,
        epoch: u64,
    ) -> Result<wire::AccountInfo, Flip> {
        let refused = |current: &wire::AccountInfo| {
            Flip::Refused(ProtoError::new(
                ErrorCode::Forbidden,
                format!(
                    "account {account} changed meanwhile: it is homed in region {} at epoch {} \
                     (the move expected epoch {epoch})",
                    current.region, current.epoch
                ),
            ))
        };
        let ask = wire::MoveAccountHome {
            account: account.0,
            to_region: to.0,
            expected_epoch: epoch,
        };
        let mut last = None;
        for _ in 0..MOVE_PEER_ATTEMPTS_MAX {
            let answer = if self.inner.writer == self.inner.region {
                self.move_account_home(&ask).await
            } else {
                let request = RegionRequest {
                    body: Some(region_request::Body::MoveAccountHome(ask.clone())),
                };
                match self.ask_peer(self.inner.writer, &request).await {
                    Ok(RegionResponse {
                        body: Some(region_response::Body::Account(info)),
                    }) => Ok(info),
                    Ok(RegionResponse {
                        body: Some(region_response::Body::Error(error)),
                    }) => Err(error.into()),
                    Ok(_) => Err(ProtoError::new(
                        ErrorCode::Internal,
                        "unexpected answer to a home move",
                    )),
                    Err(error) => Err(error),
                }
            };
            match answer {
                Ok(info) if info.region == to.0 && info.epoch == epoch + 1 => return Ok(info),
                Ok(info) => return Err(refused(&info)),
                Err(error) if error.code.is_retryable() => last = Some(error),
                Err(error) => return Err(Flip::Refused(error)),
            }
        }
        Err(Flip::Unsettled(last.unwrap_or_else(|| {
            ProtoError::new(
                ErrorCode::Unavailable,
                "the directory writer did not answer",
            )
        })))
    }

    /// (The directory writer) the epoch compare-and-set of a home move: answers the record
    /// now, moved or not.
    pub(super) async fn move_account_home(
        &self,
        ask: &wire::MoveAccountHome,
    ) -> Result<wire::AccountInfo, ProtoError> {
        if self.inner.writer != self.inner.region {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                "this region is not the directory writer",
            ));
        }
        let account = AccountId(ask.account);
        let to = RegionId(ask.to_region);
        let expected = ask.expected_epoch;
        let moved = self
            .inner
            .db
            .transact(|tx| async move { directory::move_home(&tx, account, to, expected).await })
            .await
            .map_err(store_failure)?;
        match moved {
            directory::HomeMove::Moved(record)
            | directory::HomeMove::StaleEpoch { current: record } => {
                Ok(crate::core::account_info(&record))
            }
            directory::HomeMove::Unknown => Err(ProtoError::new(
                ErrorCode::UnknownAccount,
                format!("no account {account}"),
            )),
        }
    }

    /// (The new home) applies a part of a move.
    pub(super) async fn import_account(
        &self,
        part: &wire::ImportAccount,
    ) -> Result<wire::AccountImported, ProtoError> {
        if part.part == 0 && lock(&self.inner.moves.clearing).contains(&AccountId(part.account)) {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                format!(
                    "account {} left this region a moment ago and is still being cleared here; \
                     retry the move",
                    part.account
                ),
            ));
        }
        let now_ms = self.inner.clock.now_ms();
        home_move::apply_part(&self.inner.db, self.inner.region, part, now_ms).await?;
        let account = AccountId(part.account);
        if part.activate.is_some() {
            lock(&self.inner.moves.away).remove(&account);
            // Its devices' push registrations came with it: they are woken here now.
            let registered = self
                .inner
                .db
                .transact(|tx| async move {
                    let mut registered = Vec::new();
                    for device in directory::devices(&tx, account).await? {
                        if fdb_layers::push::read(&tx, device.device).await?.is_some() {
                            registered.push(device.device);
                        }
                    }
                    Ok(registered)
                })
                .await
                .map_err(store_failure)?;
            self.inner.pusher.handle_moved(&registered, true);
            tracing::info!(%account, from = part.from_region, "account moved here");
        }
        Ok(wire::AccountImported {
            account: part.account,
            part: part.part,
        })
    }

    /// Tells every edge subscribed here that an account moved.
    fn tell_edges_moved(&self, info: &wire::AccountInfo) {
        let notice = region_response::Body::AccountMoved(wire::AccountMoved {
            account: info.clone(),
        });
        // In stream order: the same on every run (a simulated run replays it exactly).
        let mut streams: Vec<(u64, _)> = lock(&self.inner.streams)
            .iter()
            .map(|(stream, sender)| (*stream, sender.clone()))
            .collect();
        streams.sort_unstable_by_key(|(stream, _)| *stream);
        for (stream, sender) in streams {
            if sender.event(notice.clone()).is_err() {
                tracing::warn!(
                    stream,
                    "edge subscription is full; it hears of the move when refused"
                );
            }
        }
    }

    /// One request to a peer region, sent again (up to [`MOVE_PEER_ATTEMPTS_MAX`] times) when
    /// the exchange fails: every request of a move is safe to repeat.
    async fn ask_peer(
        &self,
        region: RegionId,
        request: &RegionRequest,
    ) -> Result<RegionResponse, ProtoError> {
        let timeout = Duration::from_millis(REGION_PEER_REQUEST_TIMEOUT_MS);
        let mut last = None;
        for _ in 0..MOVE_PEER_ATTEMPTS_MAX {
            // Connecting included: a peer that is down or paused takes the timeout, not longer.
            let asked = tokio::time::timeout(
                timeout,
                self.inner.peers.request(region.0, request, timeout),
            )
            .await
            .unwrap_or(Err(NetError::Timeout));
            match asked {
                Ok(response) => return Ok(response),
                Err(error @ NetError::Frame(_)) => return Err(error.to_proto()),
                Err(error) => {
                    tracing::warn!(%region, %error, "a request of a home move failed; sending it again");
                    self.inner.peers.forget(region.0).await;
                    last = Some(error);
                }
            }
        }
        Err(ProtoError::new(
            ErrorCode::Unavailable,
            format!(
                "region {region} did not answer: {}",
                last.map_or_else(String::new, |error| error.to_string())
            ),
        ))
    }
}

/// Why a move's flip failed.
enum Flip {
    /// The writer refused, or moved nothing: the account stays here.
    Refused(ProtoError),
    /// The writer could not be asked: it may have moved the account.
    Unsettled(ProtoError),
}
