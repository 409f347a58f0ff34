//! Every region's replica of the directory's accounts, fed from the writer's change log, so
//! that names and ids resolve in every region while the writer is unreachable.
//!
//! - **The writer** answers `DirectoryChanges` with the accounts changed after a position of its
//!   log (`fdb_layers::directory::account_changes`: one entry per account, in commit order, so
//!   a new replica reading from the start gets every account). Before it serves, it gives the
//!   accounts of a store written before the log their entries ([`complete_log`]).
//! - **Every other region** runs [`follow_writer`]: it asks for the changes after the position
//!   it applied, applies each page in one transaction with its new position
//!   (`put_account`, which keeps a newer epoch and follows renames), and asks again at once
//!   while more follow, else after [`DIRECTORY_REPLICA_POLL_MS`]. Lookups read the local copy
//!   first (as they read the cache before), so an account in the replica resolves without the
//!   writer; one not in it yet is asked of the writer.
//!
//! The replica is versioned by the writer's log position, kept in the region's store
//! (`("directory", "replica_cursor")`): a restarted region goes on where it stopped. The writer
//! role fails over like any region's (its standby holds its store, log included, and log
//! positions stay ordered: the standby's versions continue the primary's).
//!
//! Groups are not replicated yet: group commands and memberships still need the writer.

use std::time::Duration;

use fdb_layers::directory::{self, LogPosition};
use fdb_layers::{Database, StoreError};
use relay_net::{NetError, PeerLinks};
use relay_proto::limits::REGION_PEER_REQUEST_TIMEOUT_MS;
use relay_proto::wire::{self, RegionRequest, RegionResponse, region_request, region_response};
use relay_proto::{AccountId, ErrorCode, ProtoError, RegionId};

use crate::core::account_info;
use crate::limits::{
    DIRECTORY_BACKFILL_PAGE, DIRECTORY_CHANGES_PAGE_MAX, DIRECTORY_REPLICA_POLL_MS,
};
use crate::service::record_of;

/// (The writer) the accounts changed after `ask.after`.
pub(crate) async fn changes(
    db: &Database,
    ask: &wire::AskDirectoryChanges,
) -> Result<wire::DirectoryChanges, ProtoError> {
    let after = if ask.after.is_empty() {
        None
    } else {
        Some(LogPosition::from_bytes(&ask.after).ok_or_else(|| {
            ProtoError::new(
                ErrorCode::Malformed,
                "not a position of the directory's change log",
            )
        })?)
    };
    let limit = (ask.limit as usize).clamp(1, DIRECTORY_CHANGES_PAGE_MAX);
    let (changed, more) = db
        .transact(|tx| async move { directory::account_changes(&tx, after, limit).await })
        .await
        .map_err(crate::service::store_failure)?;
    Ok(wire::DirectoryChanges {
        through: changed
            .last()
            .map_or_else(Vec::new, |(position, _)| position.to_bytes()),
        accounts: changed
            .iter()
            .map(|(_, record)| account_info(record))
            .collect(),
        more,
    })
}

/// (The writer, before it serves) gives every account of a store written before the change
/// log its entry, a page per transaction, once.
pub(crate) async fn complete_log(db: &Database) -> Result<(), StoreError> {
    if db
        .transact(|tx| async move { directory::log_complete(&tx).await })
        .await?
    {
        return Ok(());
    }
    let mut after = AccountId(0);
    loop {
        let page = db
            .transact(|tx| async move {
                directory::backfill_log(&tx, after, DIRECTORY_BACKFILL_PAGE).await
            })
            .await?;
        match page {
            Some(last) => after = last,
            None => break,
        }
    }
    db.transact(|tx| async move { directory::set_log_complete(&tx) })
        .await?;
    tracing::info!(
        "the directory's change log holds every account (written before the log: backfilled)"
    );
    Ok(())
}

/// What one round of [`follow_writer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Accounts applied.
    pub accounts: usize,
    /// The writer has more after them.
    pub more: bool,
}

/// (A region that is not the writer) asks the writer for the changes after this replica's
/// position and applies them with the new position, in one transaction.
pub(crate) async fn pull_once(
    db: &Database,
    peers: &PeerLinks,
    writer: RegionId,
) -> Result<Applied, ProtoError> {
    let cursor = db
        .transact(|tx| async move { directory::replica_cursor(&tx).await })
        .await
        .map_err(crate::service::store_failure)?;
    let request = RegionRequest {
        body: Some(region_request::Body::DirectoryChanges(
            wire::AskDirectoryChanges {
                after: cursor.map_or_else(Vec::new, |position| position.to_bytes()),
                limit: DIRECTORY_CHANGES_PAGE_MAX as u32,
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
    let Some(through) = LogPosition::from_bytes(&changes.through) else {
        if changes.accounts.is_empty() {
            return Ok(Applied {
                accounts: 0,
                more: false,
            });
        }
        return Err(ProtoError::new(
            ErrorCode::Malformed,
            "directory changes without their log position",
        ));
    };
    let records: Vec<directory::AccountRecord> = changes.accounts.iter().map(record_of).collect();
    let accounts = records.len();
    db.transact(|tx| {
        let records = records.clone();
        async move {
            for record in &records {
                directory::put_account(&tx, record).await?;
            }
            directory::set_replica_cursor(&tx, &through)
        }
    })
    .await
    .map_err(crate::service::store_failure)?;
    Ok(Applied {
        accounts,
        more: changes.more,
    })
}

/// (A region that is not the writer) keeps the replica up to date until the task is dropped.
pub(crate) async fn follow_writer(db: Database, peers: &PeerLinks, writer: RegionId) {
    let mut failing = false;
    loop {
        match pull_once(&db, peers, writer).await {
            Ok(applied) => {
                if failing {
                    tracing::info!(%writer, "the directory replica follows the writer again");
                    failing = false;
                }
                if applied.accounts > 0 {
                    tracing::debug!(accounts = applied.accounts, "directory replica updated");
                }
                if applied.more {
                    continue;
                }
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
