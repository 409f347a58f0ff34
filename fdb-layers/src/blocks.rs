//! The block layer: which accounts each account homed here has blocked. A blocked account's
//! messages are stopped at the blocker's home region: the envelope is stored and answered as
//! usual (the sender learns nothing, and sees ✓ but never ✓✓), and no entry is queued for any
//! of the blocker's devices.
//!
//! **Key layout** (subspace `("blocks", blocker)`): `(blocked,)` → empty. One range per
//! blocker, in account order, so the list reads as one range.
//!
//! **Conflicts.** Written blind by the blocker's own devices; read by fan-out with snapshot
//! reads, one per (recipient, sender) pair and transaction: a block committed while a send is
//! in flight may let that one message through, never stop a message sent after the block was
//! acknowledged.
//!
//! **Idempotence.** By nature: setting or clearing the same key again.
//!
//! **Limits.** At most [`BLOCKED_ACCOUNTS_MAX`] per blocker (checked when one is added).

use relay_proto::AccountId;

use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::limits::BLOCKED_ACCOUNTS_MAX;
use crate::tuple::Subspace;

/// What [`block`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// `blocked` is blocked now (or was already).
    Done,
    /// The blocker has blocked [`BLOCKED_ACCOUNTS_MAX`] accounts already.
    Full,
}

/// `blocker` blocks `blocked`.
pub async fn block(
    transaction: &Transaction,
    blocker: AccountId,
    blocked: AccountId,
) -> Result<Blocked, StoreError> {
    let root = root(blocker);
    let key = root.pack(&(blocked.0,));
    if transaction.get(&key).await?.is_some() {
        return Ok(Blocked::Done);
    }
    if list(transaction, blocker).await?.len() >= BLOCKED_ACCOUNTS_MAX {
        return Ok(Blocked::Full);
    }
    transaction.set(&key, &[])?;
    Ok(Blocked::Done)
}

/// `blocker` unblocks `blocked`.
pub fn unblock(transaction: &Transaction, blocker: AccountId, blocked: AccountId) {
    transaction.clear(&root(blocker).pack(&(blocked.0,)));
}

/// Whether `blocker` blocked `sender` (snapshot read).
pub async fn is_blocked(
    transaction: &Transaction,
    blocker: AccountId,
    sender: AccountId,
) -> Result<bool, StoreError> {
    Ok(transaction
        .snapshot_get(&root(blocker).pack(&(sender.0,)))
        .await?
        .is_some())
}

/// The accounts `blocker` blocked, in order.
pub async fn list(
    transaction: &Transaction,
    blocker: AccountId,
) -> Result<Vec<AccountId>, StoreError> {
    let root = root(blocker);
    let (begin, end) = root.range();
    let options = RangeOptions {
        limit: Some(BLOCKED_ACCOUNTS_MAX),
        reverse: false,
        snapshot: false,
    };
    let mut accounts = Vec::new();
    for (key, _) in transaction.get_range(&begin, &end, options).await? {
        let (account,): (u64,) = root
            .unpack(&key)
            .map_err(|error| StoreError::corrupt("blocked account key", error))?;
        accounts.push(AccountId(account));
    }
    Ok(accounts)
}

fn root(blocker: AccountId) -> Subspace {
    Subspace::new(&("blocks", blocker.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temporary_database;

    #[tokio::test]
    async fn blocks_are_per_blocker_listed_in_order_and_undone() {
        let (_folder, database) = temporary_database(None);
        let (alice, bob, carol) = (AccountId(1), AccountId(2), AccountId(3));
        for blocked in [carol, bob] {
            let done = database
                .transact(|tx| async move { block(&tx, alice, blocked).await })
                .await
                .expect("block");
            assert_eq!(done, Blocked::Done);
        }
        let check = async |blocker, sender| {
            database
                .transact(|tx| async move { is_blocked(&tx, blocker, sender).await })
                .await
                .expect("read")
        };
        assert!(check(alice, bob).await);
        assert!(!check(bob, alice).await, "a block is one way");
        let listed = database
            .transact(|tx| async move { list(&tx, alice).await })
            .await
            .expect("list");
        assert_eq!(listed, vec![bob, carol]);
        database
            .transact(|tx| async move {
                unblock(&tx, alice, bob);
                Ok(())
            })
            .await
            .expect("unblock");
        assert!(!check(alice, bob).await);
        assert!(check(alice, carol).await);
    }
}
