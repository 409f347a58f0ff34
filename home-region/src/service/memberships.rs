//! Groups on the region's side: membership read through a cache (from the store on the
//! directory writer, from the replica or the writer elsewhere), group commands forwarded to
//! the writer, and the regions told when a group they asked about changed.

use std::sync::Arc;
use std::time::Duration;

use fdb_layers::directory;
use relay_proto::limits::REGION_PEER_REQUEST_TIMEOUT_MS;
use relay_proto::wire::{self, RegionRequest, RegionResponse, region_request, region_response};
use relay_proto::{AccountId, ErrorCode, GroupId, ProtoError, RegionId};

use super::{RegionService, lock, store_failure};
use crate::core::{Effects, GroupMembership, GroupSource};
use crate::groups;
use crate::limits::{GROUP_ASKERS_MAX, GROUP_CACHE_TTL_MS, REPLICA_READERS_MAX};

impl RegionService {
    /// Where a commit finds a group's membership: the writer reads its own store in the
    /// commit's transaction, another region uses what [`Self::group_membership`] found.
    pub(super) fn group_source<'a>(&self, group: Option<&'a GroupMembership>) -> GroupSource<'a> {
        if self.inner.writer == self.inner.region {
            GroupSource::Directory
        } else {
            GroupSource::Known(group)
        }
    }

    /// The membership a group envelope is checked against, at a region that is not the
    /// directory writer (`None` at the writer, which reads it in the commit, and for a 1:1
    /// envelope): the cached one unless it is older than [`GROUP_CACHE_TTL_MS`] or than the
    /// version the envelope names, else the writer's answer, cached. A group the writer does
    /// not know is `UnknownGroup`; a writer that does not answer `DirectoryUnavailable`.
    pub(super) async fn group_membership(
        &self,
        parsed: &wire::ParsedEnvelope,
    ) -> Result<Option<Arc<GroupMembership>>, ProtoError> {
        let Some(group) = parsed.group else {
            return Ok(None);
        };
        if self.inner.writer == self.inner.region {
            return Ok(None);
        }
        self.known_membership(group.group, group.version)
            .await
            .map(Some)
    }

    /// (A region that is not the directory writer) the cached membership of `group`, if it is
    /// at `version` or newer and has not outlived [`GROUP_CACHE_TTL_MS`].
    pub(super) fn cached_membership(
        &self,
        group: GroupId,
        version: u64,
    ) -> Option<Arc<GroupMembership>> {
        lock(&self.inner.groups)
            .get(&group, self.inner.clock.now_ms())
            .filter(|known| known.version >= version)
            .cloned()
    }

    /// Whether this region checks group envelopes against its copy of the groups now (a region
    /// that is not the directory writer, under its lease: see [`directory_replica`]).
    pub fn checks_groups_against_its_copy(&self) -> bool {
        self.inner.writer != self.inner.region
            && self.inner.group_lease.holds(self.inner.clock.now_ms())
    }

    /// (A region that is not the directory writer) `group`'s membership from this region's copy
    /// of the groups, if the copy holds it at `version` or newer (and at the newest version the
    /// writer said exists) and the region's lease on the copy holds; `None` sends the caller to
    /// the writer.
    async fn replicated_membership(
        &self,
        group: GroupId,
        version: u64,
    ) -> Result<Option<Arc<GroupMembership>>, ProtoError> {
        let now_ms = self.inner.clock.now_ms();
        if !self.inner.group_lease.holds(now_ms) {
            return Ok(None);
        }
        let Some(replicated) = self
            .inner
            .db
            .transact(|tx| async move { directory::group_replica(&tx, group).await })
            .await
            .map_err(store_failure)?
        else {
            return Ok(None);
        };
        let floor = lock(&self.inner.group_floors)
            .peek(&group, now_ms)
            .copied()
            .unwrap_or(0);
        // Read after the lease was checked: a change heard of meanwhile ends the lease.
        if replicated.version < version.max(floor)
            || !self.inner.group_lease.holds(self.inner.clock.now_ms())
        {
            return Ok(None);
        }
        Ok(Some(Arc::new(GroupMembership {
            group,
            version: replicated.version,
            members: replicated.members.into_iter().collect(),
        })))
    }

    /// (A region that is not the directory writer) `group`'s membership at `version` or newer:
    /// the cached one (see [`Self::group_membership`]), else the writer's answer, cached.
    pub(super) async fn known_membership(
        &self,
        group: GroupId,
        version: u64,
    ) -> Result<Arc<GroupMembership>, ProtoError> {
        if let Some(known) = self.cached_membership(group, version) {
            return Ok(known);
        }
        if let Some(replicated) = self.replicated_membership(group, version).await? {
            return Ok(replicated);
        }
        let now_ms = self.inner.clock.now_ms();
        let request = RegionRequest {
            body: Some(region_request::Body::GroupMembers(wire::AskGroupMembers {
                group: group.0,
                region: self.inner.region.0,
            })),
        };
        let membership = match self.to_writer(&request).await?.body {
            Some(region_response::Body::Group(info)) => {
                Arc::new(GroupMembership::from_info(&info)?)
            }
            Some(region_response::Body::Error(error)) => return Err(error.into()),
            _ => {
                return Err(ProtoError::new(
                    ErrorCode::Internal,
                    "unexpected directory answer",
                ));
            }
        };
        if membership.group != group {
            return Err(ProtoError::new(
                ErrorCode::Internal,
                "the directory writer answered another group",
            ));
        }
        let floor = lock(&self.inner.group_floors)
            .peek(&group, self.inner.clock.now_ms())
            .copied()
            .unwrap_or(0);
        if membership.version < floor {
            // Asked before a change and answered after it: the device's retry asks again.
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                format!("group {} changed while its members were asked", group),
            ));
        }
        let mut groups = lock(&self.inner.groups);
        // Answers can cross: a newer membership cached meanwhile stays.
        let keep = groups
            .peek(&group, now_ms)
            .filter(|cached| cached.version > membership.version)
            .cloned();
        let membership = keep.unwrap_or(membership);
        groups.insert(group, membership.clone(), now_ms);
        Ok(membership)
    }

    /// Runs a group command at the directory writer ([`groups::group_command`], one
    /// transaction), or forwards it there unchanged from any other region, as account creation
    /// is. The command is checked here first, so a malformed one never travels.
    pub(super) async fn group_command(
        &self,
        request: wire::ForGroup,
    ) -> Result<groups::Answer, ProtoError> {
        let action = request.command.parse()?;
        if request.account == 0 {
            return Err(ProtoError::invalid("a group command names no account"));
        }
        if self.inner.writer != self.inner.region {
            let forward = RegionRequest {
                body: Some(region_request::Body::Group(request)),
            };
            return match self.to_writer(&forward).await?.body {
                Some(region_response::Body::Group(info)) => Ok(groups::Answer::Group(info)),
                Some(region_response::Body::Groups(list)) => Ok(groups::Answer::Groups(list)),
                Some(region_response::Body::Error(error)) => Err(error.into()),
                _ => Err(ProtoError::new(
                    ErrorCode::Internal,
                    "unexpected directory answer",
                )),
            };
        }
        let actor = AccountId(request.account);
        let key = self.idempotency_key();
        let changes_members = matches!(
            action,
            wire::GroupAction::Add { .. }
                | wire::GroupAction::Remove { .. }
                | wire::GroupAction::Leave { .. }
        );
        let answer = self
            .transact(|tx| {
                let action = action.clone();
                async move { groups::group_command(&tx, actor, &action, &key).await }
            })
            .await?;
        if changes_members && let groups::Answer::Group(info) = &answer {
            // A leave answers only the group's id; the others its new version.
            let version = (info.version > 0).then_some(info.version);
            self.group_changed(GroupId(info.group), version).await?;
        }
        Ok(answer)
    }

    /// (Directory writer) remembers that `region` polled the change logs now.
    pub(super) fn record_replica_reader(&self, region: RegionId) {
        let now_ms = self.inner.clock.now_ms();
        let mut readers = lock(&self.inner.replica_readers);
        if readers.len() >= REPLICA_READERS_MAX && !readers.contains_key(&region) {
            readers.retain(|_, at| now_ms < at.saturating_add(GROUP_CACHE_TTL_MS));
        }
        if readers.len() < REPLICA_READERS_MAX || readers.contains_key(&region) {
            readers.insert(region, now_ms);
        } else {
            // Not remembered: `group_changed` waits every copy out for a while (see there).
            self.inner
                .replica_reader_forgotten_at_ms
                .store(now_ms, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// (Directory writer) remembers that `region` asked for `group`'s membership now.
    pub(super) fn record_group_asker(&self, group: GroupId, region: RegionId) {
        let now_ms = self.inner.clock.now_ms();
        let mut askers = lock(&self.inner.group_askers);
        if askers.len() >= GROUP_ASKERS_MAX && !askers.contains_key(&group) {
            askers.retain(|_, regions| {
                regions.retain(|_, at| now_ms < at.saturating_add(GROUP_CACHE_TTL_MS));
                !regions.is_empty()
            });
        }
        if askers.len() < GROUP_ASKERS_MAX || askers.contains_key(&group) {
            askers.entry(group).or_default().insert(region, now_ms);
        }
        // Else the asker is not remembered; `group_changed` then waits for every cache to
        // expire (see there).
    }

    /// (Directory writer) `group`'s members changed (committed): every region that may
    /// hold its older membership drops it before the change is acknowledged, so that no
    /// region accepts an envelope for a former member afterwards. A region that does not
    /// answer in time is waited out: the change is acknowledged once its cache expired.
    /// `version` is the group's new version when the command's answer carried it (else read).
    pub(super) async fn group_changed(
        &self,
        group: GroupId,
        version: Option<u64>,
    ) -> Result<(), ProtoError> {
        let version = match version {
            Some(version) => version,
            None => {
                self.transact(|tx| async move {
                    Ok(Ok((
                        directory::group_version(&tx, group).await?,
                        Effects::default(),
                    )))
                })
                .await?
            }
        };
        let now_ms = self.inner.clock.now_ms();
        let (mut askers, mut forgotten) = {
            let mut all = lock(&self.inner.group_askers);
            let askers = all.remove(&group).unwrap_or_default();
            (askers, all.len() >= GROUP_ASKERS_MAX)
        };
        // Every region that polled the logs lately may check envelopes against its copy of the
        // groups: it is told too, or waited out.
        for (&region, &answered_at_ms) in lock(&self.inner.replica_readers).iter() {
            let at = askers.entry(region).or_insert(answered_at_ms);
            *at = (*at).max(answered_at_ms);
        }
        let reader_forgotten_at_ms = self
            .inner
            .replica_reader_forgotten_at_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if reader_forgotten_at_ms > 0
            && now_ms < reader_forgotten_at_ms.saturating_add(GROUP_CACHE_TTL_MS)
        {
            forgotten = true;
        }
        let mut wait_until_ms = 0;
        if now_ms < self.inner.started_at_ms.saturating_add(GROUP_CACHE_TTL_MS) {
            // Regions may have asked a run of this writer before its restart.
            wait_until_ms = self.inner.started_at_ms + GROUP_CACHE_TTL_MS;
        }
        if forgotten {
            // The table was full, so some askers may not be in it.
            wait_until_ms = wait_until_ms.max(now_ms + GROUP_CACHE_TTL_MS);
        }
        let request = RegionRequest {
            body: Some(region_request::Body::GroupVersion(wire::GroupVersion {
                group: group.0,
                version,
            })),
        };
        let mut told = tokio::task::JoinSet::new();
        for (region, asked_at_ms) in askers {
            if now_ms >= asked_at_ms.saturating_add(GROUP_CACHE_TTL_MS) {
                continue;
            }
            let service = self.clone();
            let request = request.clone();
            told.spawn(async move {
                let timeout = Duration::from_millis(REGION_PEER_REQUEST_TIMEOUT_MS);
                let answer = tokio::time::timeout(
                    timeout,
                    service
                        .inner
                        .peers
                        .request::<_, RegionResponse>(region.0, &request, timeout),
                )
                .await;
                let dropped = matches!(
                    answer,
                    Ok(Ok(RegionResponse {
                        body: Some(region_response::Body::GroupDropped(_))
                    }))
                );
                (region, asked_at_ms, dropped)
            });
        }
        while let Some(joined) = told.join_next().await {
            if let Ok((region, asked_at_ms, dropped)) = joined
                && !dropped
            {
                tracing::warn!(
                    %region,
                    group = group.0,
                    "a region did not drop a changed group's membership; waiting for its cache \
                     to expire"
                );
                wait_until_ms = wait_until_ms.max(asked_at_ms.saturating_add(GROUP_CACHE_TTL_MS));
            }
        }
        let now_ms = self.inner.clock.now_ms();
        if wait_until_ms > now_ms {
            tokio::time::sleep(Duration::from_millis(wait_until_ms - now_ms)).await;
        }
        Ok(())
    }
}
