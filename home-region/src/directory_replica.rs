//! Every region's replica of the directory's accounts and groups, fed from the writer's change
//! logs, so that names and ids resolve, and group envelopes are checked, in every region while
//! the writer is unreachable.
//!
//! - **The writer** answers `DirectoryChanges` with the accounts changed after a position of its
//!   account log and the groups changed after a position of its group log
//!   (`fdb_layers::directory::account_changes`, `group_changes`: one entry per account or group,
//!   in commit order, so a new replica reading from the start gets every one). Before it serves,
//!   it gives the accounts and groups of a store written before the logs their entries
//!   ([`complete_log`]).
//! - **Every other region** runs [`follow_writer`]: it asks for the changes after the positions
//!   it applied, applies each page in one transaction with its new positions (`put_account`,
//!   which keeps a newer epoch and follows renames; `put_group_replica`, which keeps a newer
//!   version), and asks again at once while more follow, else after
//!   [`DIRECTORY_REPLICA_POLL_MS`]. Lookups read the local copy first (as they read the cache
//!   before), so an account in the replica resolves without the writer; one not in it yet is
//!   asked of the writer.
//!
//! The replica is versioned by the writer's log positions, kept in the region's store: a
//! restarted region goes on where it stopped. The writer role fails over like any region's (its
//! standby holds its store, logs included, and log positions stay ordered: the standby's
//! versions continue the primary's).
//!
//! **Groups need a freshness rule, not only a copy.** A stale copy must never widen a group:
//! once the writer acknowledged a member's removal, no region may accept a text for the old
//! membership. So a region checks a group envelope against its copy only under a lease
//! ([`GroupLease`]): for [`GROUP_CACHE_TTL_MS`] from the moment it *sent* a poll that caught up
//! with both logs, and never across a change it heard of but has not pulled yet. The writer
//! keeps its side: it remembers when it last answered each region's poll, and acknowledges a
//! group change only once every region that may hold a lease was told (`GroupVersion`, which
//! ends that region's lease until its next poll) or that lease ran out, as it already did for
//! regions that cached a membership. A poll sent after the region heard of a change reaches the
//! writer after the change committed, so the lease it renews covers the change. While the writer
//! is unreachable, no change can be acknowledged, and a region checks envelopes against its copy
//! until the lease ends; a promoted writer waits out the leases its previous run gave before
//! acknowledging a change (`served_before`).

use std::sync::Mutex;
use std::time::Duration;

use fdb_layers::directory::{self, LogPosition, ReplicatedGroup};
use fdb_layers::{Database, StoreError};
use relay_net::{NetError, PeerLinks};
use relay_proto::clock::Clock;
use relay_proto::limits::REGION_PEER_REQUEST_TIMEOUT_MS;
use relay_proto::wire::{self, RegionRequest, RegionResponse, region_request, region_response};
use relay_proto::{AccountId, ErrorCode, GroupId, ProtoError, RegionId};

use crate::core::account_info;
use crate::limits::{
    DIRECTORY_BACKFILL_PAGE, DIRECTORY_CHANGES_PAGE_MAX, DIRECTORY_REPLICA_POLL_MS,
    GROUP_CACHE_TTL_MS, GROUP_CHANGES_MEMBERS_MAX, GROUP_CHANGES_PAGE_MAX,
};
use crate::service::record_of;

/// A position of one of the writer's logs as a replica sent it (empty: from the start).
fn position(bytes: &[u8]) -> Result<Option<LogPosition>, ProtoError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    LogPosition::from_bytes(bytes).map(Some).ok_or_else(|| {
        ProtoError::new(
            ErrorCode::Malformed,
            "not a position of the directory's change log",
        )
    })
}

/// (The writer) the accounts changed after `ask.after` and the groups after `ask.groups_after`.
pub(crate) async fn changes(
    db: &Database,
    ask: &wire::AskDirectoryChanges,
) -> Result<wire::DirectoryChanges, ProtoError> {
    let after = position(&ask.after)?;
    let groups_after = position(&ask.groups_after)?;
    let limit = (ask.limit as usize).clamp(1, DIRECTORY_CHANGES_PAGE_MAX);
    let ((changed, more), (groups, groups_more)) = db
        .transact(|tx| async move {
            Ok((
                directory::account_changes(&tx, after, limit).await?,
                directory::group_changes(
                    &tx,
                    groups_after,
                    GROUP_CHANGES_PAGE_MAX,
                    GROUP_CHANGES_MEMBERS_MAX,
                )
                .await?,
            ))
        })
        .await
        .map_err(crate::service::store_failure)?;
    Ok(wire::DirectoryChanges {
        through: through(&changed),
        accounts: changed
            .iter()
            .map(|(_, record)| account_info(record))
            .collect(),
        more,
        groups_through: through(&groups),
        groups: groups
            .iter()
            .map(|(_, group)| wire::GroupMembersAt {
                group: group.group.0,
                version: group.version,
                members: group.members.iter().map(|member| member.0).collect(),
            })
            .collect(),
        groups_more,
    })
}

/// The position a page of changes ends at, as the replica sends it back (empty for none).
fn through<T>(changes: &[(LogPosition, T)]) -> Vec<u8> {
    changes
        .last()
        .map_or_else(Vec::new, |(position, _)| position.to_bytes())
}

/// (The writer, before it serves) gives every account and group of a store written before the
/// change logs its entry, a page per transaction, once.
pub(crate) async fn complete_log(db: &Database) -> Result<(), StoreError> {
    if !db
        .transact(|tx| async move { directory::log_complete(&tx).await })
        .await?
    {
        let mut after = AccountId(0);
        while let Some(last) = db
            .transact(|tx| async move {
                directory::backfill_log(&tx, after, DIRECTORY_BACKFILL_PAGE).await
            })
            .await?
        {
            after = last;
        }
        db.transact(|tx| async move { directory::set_log_complete(&tx) })
            .await?;
        tracing::info!(
            "the directory's change log holds every account (written before the log: backfilled)"
        );
    }
    if !db
        .transact(|tx| async move { directory::group_log_complete(&tx).await })
        .await?
    {
        let mut after = GroupId(0);
        while let Some(last) = db
            .transact(|tx| async move {
                directory::backfill_group_log(&tx, after, DIRECTORY_BACKFILL_PAGE).await
            })
            .await?
        {
            after = last;
        }
        db.transact(|tx| async move { directory::set_group_log_complete(&tx) })
            .await?;
        tracing::info!(
            "the directory's group log holds every group (written before the log: backfilled)"
        );
    }
    Ok(())
}

/// (A region that is not the writer) whether it may check group envelopes against its copy of
/// the groups: see the module's notes. Times are this region's clock, in ms.
#[derive(Debug, Default)]
pub(crate) struct GroupLease {
    state: Mutex<LeaseState>,
}

#[derive(Debug, Default)]
struct LeaseState {
    /// When the last poll that caught up with both logs was sent, unless a change was heard of
    /// since.
    caught_up_at_ms: Option<u64>,
    /// When this region last heard of a group change (`GroupVersion`).
    changed_at_ms: u64,
}

impl GroupLease {
    /// A poll sent at `asked_at_ms` caught up with the writer's logs: the lease runs from then,
    /// unless a change was heard of since it was sent (its answer may predate the change).
    pub(crate) fn caught_up(&self, asked_at_ms: u64) {
        let mut state = crate::service::lock(&self.state);
        if asked_at_ms > state.changed_at_ms {
            state.caught_up_at_ms = Some(state.caught_up_at_ms.unwrap_or(0).max(asked_at_ms));
        }
    }

    /// The writer told this region of a group change at `now_ms`: the lease ends until a poll
    /// sent after now catches up.
    pub(crate) fn changed(&self, now_ms: u64) {
        let mut state = crate::service::lock(&self.state);
        state.changed_at_ms = state.changed_at_ms.max(now_ms);
        state.caught_up_at_ms = None;
    }

    /// Whether the copy may be checked against at `now_ms`.
    pub(crate) fn holds(&self, now_ms: u64) -> bool {
        crate::service::lock(&self.state)
            .caught_up_at_ms
            .is_some_and(|at| now_ms < at.saturating_add(GROUP_CACHE_TTL_MS))
    }
}

/// What one round of [`follow_writer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Accounts applied.
    pub accounts: usize,
    /// Groups applied.
    pub groups: usize,
    /// The writer has more after them (accounts or groups).
    pub more: bool,
}

/// (A region that is not the writer) asks the writer for the changes after this replica's
/// positions and applies them with the new positions, in one transaction.
pub(crate) async fn pull_once(
    db: &Database,
    peers: &PeerLinks,
    writer: RegionId,
    region: RegionId,
) -> Result<Applied, ProtoError> {
    let (cursor, groups_cursor) = db
        .transact(|tx| async move {
            Ok((
                directory::replica_cursor(&tx).await?,
                directory::group_replica_cursor(&tx).await?,
            ))
        })
        .await
        .map_err(crate::service::store_failure)?;
    let request = RegionRequest {
        body: Some(region_request::Body::DirectoryChanges(
            wire::AskDirectoryChanges {
                after: cursor.map_or_else(Vec::new, |position| position.to_bytes()),
                limit: DIRECTORY_CHANGES_PAGE_MAX as u32,
                region: region.0,
                groups_after: groups_cursor.map_or_else(Vec::new, |position| position.to_bytes()),
            },
        )),
    };
    let answer: Result<RegionResponse, NetError> = peers
        .request(
            writer.0,
            &request,
            Duration::from_millis(REGION_PEER_REQUEST_TIMEOUT_MS),
        )
        .await;
    let changes = match answer.map_err(|error| error.to_proto())?.body {
        Some(region_response::Body::DirectoryChanges(changes)) => changes,
        Some(region_response::Body::Error(error)) => return Err(error.into()),
        _ => {
            return Err(ProtoError::new(
                ErrorCode::Internal,
                "unexpected answer to a directory change request",
            ));
        }
    };
    let through = answered_position(&changes.through, changes.accounts.is_empty())?;
    let groups_through = answered_position(&changes.groups_through, changes.groups.is_empty())?;
    let records: Vec<directory::AccountRecord> = changes.accounts.iter().map(record_of).collect();
    let groups = changes
        .groups
        .iter()
        .map(replicated_group)
        .collect::<Result<Vec<_>, _>>()?;
    let applied = Applied {
        accounts: records.len(),
        groups: groups.len(),
        more: changes.more || changes.groups_more,
    };
    if records.is_empty() && groups.is_empty() {
        return Ok(applied);
    }
    db.transact(|tx| {
        let (records, groups) = (records.clone(), groups.clone());
        async move {
            for record in &records {
                directory::put_account(&tx, record).await?;
            }
            for group in &groups {
                directory::put_group_replica(&tx, group).await?;
            }
            if let Some(through) = through {
                directory::set_replica_cursor(&tx, &through)?;
            }
            if let Some(through) = groups_through {
                directory::set_group_replica_cursor(&tx, &through)?;
            }
            Ok(())
        }
    })
    .await
    .map_err(crate::service::store_failure)?;
    Ok(applied)
}

/// The position a page of changes ends at; `None` for an empty page, refused when a page that
/// is not empty names none.
fn answered_position(bytes: &[u8], empty: bool) -> Result<Option<LogPosition>, ProtoError> {
    match LogPosition::from_bytes(bytes) {
        Some(position) => Ok(Some(position)),
        None if empty => Ok(None),
        None => Err(ProtoError::new(
            ErrorCode::Malformed,
            "directory changes without their log position",
        )),
    }
}

/// A group of the writer's answer, checked.
fn replicated_group(group: &wire::GroupMembersAt) -> Result<ReplicatedGroup, ProtoError> {
    if group.group == 0
        || group.version == 0
        || group.members.len() > relay_proto::limits::GROUP_MEMBERS_MAX
    {
        return Err(ProtoError::new(
            ErrorCode::Malformed,
            "the directory writer's log names a group that cannot be",
        ));
    }
    Ok(ReplicatedGroup {
        group: GroupId(group.group),
        version: group.version,
        members: group.members.iter().copied().map(AccountId).collect(),
    })
}

/// (A region that is not the writer) keeps the replica up to date, and its lease on the groups
/// renewed, until the task is dropped.
pub(crate) async fn follow_writer(
    db: Database,
    peers: &PeerLinks,
    writer: RegionId,
    region: RegionId,
    clock: &dyn Clock,
    lease: &GroupLease,
) {
    let mut failing = false;
    loop {
        let asked_at_ms = clock.now_ms();
        match pull_once(&db, peers, writer, region).await {
            Ok(applied) => {
                if failing {
                    tracing::info!(%writer, "the directory replica follows the writer again");
                    failing = false;
                }
                if applied.accounts > 0 || applied.groups > 0 {
                    tracing::debug!(
                        accounts = applied.accounts,
                        groups = applied.groups,
                        "directory replica updated"
                    );
                }
                if applied.more {
                    continue;
                }
                lease.caught_up(asked_at_ms);
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%writer, %error, "the directory replica cannot follow the writer; lookups answer from it meanwhile");
                    failing = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(DIRECTORY_REPLICA_POLL_MS)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_from_a_caught_up_poll_and_ends_at_a_change_heard_of() {
        let lease = GroupLease::default();
        assert!(!lease.holds(0), "no lease before a poll caught up");
        lease.caught_up(1_000);
        assert!(lease.holds(1_000 + GROUP_CACHE_TTL_MS - 1));
        assert!(!lease.holds(1_000 + GROUP_CACHE_TTL_MS));
        // A change heard of ends it; a poll sent before (or as) it was heard does not renew it.
        lease.changed(2_000);
        assert!(!lease.holds(2_001));
        lease.caught_up(1_500);
        lease.caught_up(2_000);
        assert!(!lease.holds(2_001));
        // One sent after does.
        lease.caught_up(2_001);
        assert!(lease.holds(2_002));
        // An older poll answered late does not shorten it.
        lease.caught_up(1_000);
        assert!(lease.holds(2_001 + GROUP_CACHE_TTL_MS - 1));
    }

    #[test]
    fn a_writer_answer_naming_an_impossible_group_is_refused() {
        let group = |group, version, members: usize| wire::GroupMembersAt {
            group,
            version,
            members: vec![1; members],
        };
        assert!(replicated_group(&group(1, 1, 2)).is_ok());
        assert!(replicated_group(&group(0, 1, 2)).is_err());
        assert!(replicated_group(&group(1, 0, 2)).is_err());
        assert!(
            replicated_group(&group(1, 1, relay_proto::limits::GROUP_MEMBERS_MAX + 1)).is_err()
        );
        assert_eq!(answered_position(b"", true).expect("empty"), None);
        assert!(answered_position(b"", false).is_err());
    }
}
