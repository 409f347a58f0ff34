//! Accounts: a numeric id, a unique name and a home region with its epoch.
//!
//! **Key layout** (under `("directory",)`):
//! - `("account_counter",)` → the last account id given (8 bytes LE);
//! - `("account", account)` → the account record (prost);
//! - `("name", name)` → the account id owning the name (8 bytes LE).
//!
//! An account is found by id or by name with one or two point reads.
//!
//! **Conflicts.** Account creation reads the name key (two creations of one name conflict, and
//! the retry sees [`NameTaken`]) and the account counter, so creations serialize: ids are dense
//! and never reused, and the directory is written rarely (registration only), so the hot
//! counter is acceptable here.
//!
//! **Idempotence.** [`create_account`] takes an [`IdempotencyKey`]: retried after
//! `CommitUnknownResult` it answers with the account it created and changes nothing.
//! [`put_account`] is idempotent by nature (it compares with what is stored).
//!
//! **Limits.** Names are bounded by the protocol (64 bytes); records are small.
//!
//! **Evolution.** Replicas of the directory writer store the records it hands out through
//! [`put_account`], which refuses an older epoch than the one stored and follows renames.

use prost::Message;
use relay_proto::{AccountId, RegionId};

use super::{Directory, FIRST_EPOCH};
use crate::codec::{
    IdempotencyKey, decode_record, decode_u64, encode_u64, increment, recall, remember,
};
use crate::engine::Transaction;
use crate::error::StoreError;

/// An account as the directory stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// The account's id.
    pub id: AccountId,
    /// The account's unique name.
    pub name: String,
    /// The region that is the account's home.
    pub home_region: RegionId,
    /// Bumped whenever the home moves; fences a returning old primary.
    pub epoch: u64,
}

/// The name asked for already belongs to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameTaken {
    /// The account owning the name.
    pub owner: AccountId,
}

/// Creates an account with the next account id, unless `name` is taken. Retried with the same
/// `idempotency` key after its commit, it returns the account it created.
pub async fn create_account(
    transaction: &Transaction,
    name: &str,
    home_region: RegionId,
    idempotency: &IdempotencyKey,
) -> Result<Result<AccountRecord, NameTaken>, StoreError> {
    let directory = Directory::get();
    if let Some(stored) = recall(transaction, "create_account", &(), idempotency).await? {
        let id = AccountId(decode_u64(&stored, "create_account result")?);
        return match read_account(transaction, directory, id).await? {
            Some(record) => Ok(Ok(record)),
            None => Err(StoreError::corrupt(
                "create_account result",
                format!("account {id} created but missing"),
            )),
        };
    }
    if let Some(owner) = account_id_by_name(transaction, directory, name).await? {
        return Ok(Err(NameTaken { owner }));
    }
    let counter_key = directory.root.pack(&("account_counter",));
    let id = AccountId(increment(transaction, &counter_key, "account counter").await?);
    let record = AccountRecord {
        id,
        name: name.to_owned(),
        home_region,
        epoch: FIRST_EPOCH,
    };
    write_account(transaction, directory, &record)?;
    directory.home_moved(transaction, None, Some(home_region))?;
    directory.account_changed(transaction, id).await?;
    remember(
        transaction,
        "create_account",
        &(),
        idempotency,
        &encode_u64(id.0),
    )?;
    Ok(Ok(record))
}

/// Stores an account created elsewhere (a replica of the directory writer). Returns `false`
/// and changes nothing when the stored copy has a newer epoch. Storing the same record again
/// changes nothing (and keeps the version).
pub async fn put_account(
    transaction: &Transaction,
    record: &AccountRecord,
) -> Result<bool, StoreError> {
    let directory = Directory::get();
    let stored = read_account(transaction, directory, record.id).await?;
    if let Some(stored) = &stored {
        if stored.epoch > record.epoch {
            return Ok(false);
        }
        if stored == record {
            return Ok(true);
        }
        if stored.name != record.name {
            let old_name_key = directory.name_key(&stored.name);
            if account_id_by_name(transaction, directory, &stored.name).await? == Some(record.id) {
                transaction.clear(&old_name_key);
            }
        }
    }
    write_account(transaction, directory, record)?;
    let old_home = stored.map(|stored| stored.home_region);
    directory.home_moved(transaction, old_home, Some(record.home_region))?;
    directory.account_changed(transaction, record.id).await?;
    Ok(true)
}

/// The account owning `name`.
pub async fn account_by_name(
    transaction: &Transaction,
    name: &str,
) -> Result<Option<AccountRecord>, StoreError> {
    let directory = Directory::get();
    match account_id_by_name(transaction, directory, name).await? {
        Some(id) => read_account(transaction, directory, id).await,
        None => Ok(None),
    }
}

/// The account with id `id`.
pub async fn account_by_id(
    transaction: &Transaction,
    id: AccountId,
) -> Result<Option<AccountRecord>, StoreError> {
    read_account(transaction, Directory::get(), id).await
}

/// The stored form of an account (its id is in the key).
#[derive(Clone, PartialEq, Message)]
pub(super) struct StoredAccount {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(uint32, tag = "2")]
    pub(super) home_region: u32,
    #[prost(uint64, tag = "3")]
    epoch: u64,
}

impl Directory {
    fn account_key(&self, id: AccountId) -> Vec<u8> {
        self.root.pack(&("account", id))
    }

    fn name_key(&self, name: &str) -> Vec<u8> {
        self.root.pack(&("name", name))
    }
}

async fn account_id_by_name(
    transaction: &Transaction,
    directory: &Directory,
    name: &str,
) -> Result<Option<AccountId>, StoreError> {
    match transaction.get(&directory.name_key(name)).await? {
        Some(value) => Ok(Some(AccountId(decode_u64(&value, "name index")?))),
        None => Ok(None),
    }
}

pub(super) async fn read_account(
    transaction: &Transaction,
    directory: &Directory,
    id: AccountId,
) -> Result<Option<AccountRecord>, StoreError> {
    let Some(value) = transaction.get(&directory.account_key(id)).await? else {
        return Ok(None);
    };
    let stored: StoredAccount = decode_record(&value, "account record")?;
    Ok(Some(AccountRecord {
        id,
        name: stored.name,
        home_region: RegionId(stored.home_region),
        epoch: stored.epoch,
    }))
}

pub(super) fn write_account(
    transaction: &Transaction,
    directory: &Directory,
    record: &AccountRecord,
) -> Result<(), StoreError> {
    let stored = StoredAccount {
        name: record.name.clone(),
        home_region: record.home_region.0,
        epoch: record.epoch,
    };
    transaction.set(&directory.account_key(record.id), &stored.encode_to_vec())?;
    transaction.set(&directory.name_key(&record.name), &encode_u64(record.id.0))
}

#[cfg(test)]
mod tests {
    use relay_proto::{AccountId, RegionId};

    use crate::directory::*;
    use crate::test_support::{idempotency_key, temporary_database};

    #[tokio::test]
    async fn accounts_get_dense_ids_and_unique_names() {
        let (_folder, database) = temporary_database(None);
        let alice = database
            .transact(|tx| async move {
                create_account(&tx, "alice", RegionId(1), &idempotency_key(1)).await
            })
            .await
            .expect("transaction")
            .expect("name free");
        let bob = database
            .transact(|tx| async move {
                create_account(&tx, "bob", RegionId(2), &idempotency_key(2)).await
            })
            .await
            .expect("transaction")
            .expect("name free");
        assert_eq!((alice.id, bob.id), (AccountId(1), AccountId(2)));
        assert_eq!(alice.epoch, FIRST_EPOCH);
        let again = database
            .transact(|tx| async move {
                create_account(&tx, "alice", RegionId(3), &idempotency_key(3)).await
            })
            .await
            .expect("transaction");
        assert_eq!(again, Err(NameTaken { owner: alice.id }));
        // The first creation retried (its commit result was unknown) gets its own account.
        let retried = database
            .transact(|tx| async move {
                create_account(&tx, "alice", RegionId(1), &idempotency_key(1)).await
            })
            .await
            .expect("transaction");
        assert_eq!(retried, Ok(alice.clone()));

        let (by_name, by_id, missing, versions, changes) = database
            .transact(|tx| async move {
                Ok((
                    account_by_name(&tx, "bob").await?,
                    account_by_id(&tx, AccountId(1)).await?,
                    account_by_name(&tx, "carol").await?,
                    [
                        account_version(&tx, AccountId(1)).await?,
                        account_version(&tx, AccountId(3)).await?,
                    ],
                    change_count(&tx).await?,
                ))
            })
            .await
            .expect("reads");
        assert_eq!(by_name, Some(bob));
        assert_eq!(by_id, Some(alice));
        assert_eq!(missing, None);
        assert_eq!(versions, [1, 0]);
        assert_eq!(
            changes, 2,
            "two creations, the refusal and the retry changed nothing"
        );
    }

    #[tokio::test]
    async fn concurrent_creations_of_one_name_give_it_once() {
        let (_folder, database) = temporary_database(None);
        let tasks: Vec<_> = (0..8u64)
            .map(|index| {
                let database = database.clone();
                tokio::spawn(async move {
                    database
                        .transact(|tx| async move {
                            create_account(&tx, "dup", RegionId(1), &idempotency_key(index)).await
                        })
                        .await
                })
            })
            .collect();
        let mut created = 0;
        for task in tasks {
            if task.await.expect("task").expect("transaction").is_ok() {
                created += 1;
            }
        }
        assert_eq!(created, 1);
    }

    #[tokio::test]
    async fn a_replica_keeps_the_newest_epoch_and_follows_renames() {
        let (_folder, database) = temporary_database(None);
        let first = AccountRecord {
            id: AccountId(7),
            name: "dora".to_owned(),
            home_region: RegionId(1),
            epoch: 2,
        };
        let moved = AccountRecord {
            name: "dora2".to_owned(),
            epoch: 3,
            ..first.clone()
        };
        let (applied, version) = database
            .transact(|tx| {
                let (first, moved) = (first.clone(), moved.clone());
                async move {
                    let applied = [
                        put_account(&tx, &first).await?,
                        put_account(&tx, &moved).await?,
                        put_account(&tx, &moved).await?,
                        put_account(&tx, &first).await?,
                    ];
                    Ok((applied, account_version(&tx, AccountId(7)).await?))
                }
            })
            .await
            .expect("puts");
        assert_eq!(applied, [true, true, true, false]);
        assert_eq!(
            version, 2,
            "the same record again and a stale one change nothing"
        );
        let (by_old_name, by_new_name) = database
            .transact(|tx| async move {
                Ok((
                    account_by_name(&tx, "dora").await?,
                    account_by_name(&tx, "dora2").await?,
                ))
            })
            .await
            .expect("reads");
        assert_eq!(by_old_name, None);
        assert_eq!(by_new_name, Some(moved));
    }
}
