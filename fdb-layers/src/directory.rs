//! The directory layer: accounts (unique names, home region with epoch), their devices, and
//! groups with their members, each versioned so that caches can notice staleness.
//!
//! **Challenge.** Give every account a unique name and a numeric id, record which region is its
//! home (with the epoch that fences old primaries), list an account's devices with their
//! identity keys, and keep groups (owner, home region with epoch, members), so regions and
//! edges can check envelopes and route them. Edges and other regions cache these records; they
//! must be able to tell cheaply whether what they hold is still current.
//!
//! **Key layout** (subspace `("directory",)`):
//! - `("account_counter",)` → the last account id given (8 bytes LE);
//! - `("account", account)` → the account record (prost);
//! - `("name", name)` → the account id owning the name (8 bytes LE);
//! - `("device", account, device)` → the device record (prost): identity and signing keys;
//! - `("device_counter", account)` → the last device number given to the account;
//! - `("account_version", account)` → the account's version (8 bytes LE);
//! - `("group_counter",)` → the last group id given;
//! - `("group", group)` → the group record (prost): owner, home region, epoch;
//! - `("member", group, account)` → empty: one key per member;
//! - `("member_count", group)` → the number of members (8 bytes LE);
//! - `("group_of", account, group)` → empty: the reverse index, one key per membership;
//! - `("group_version", group)` → the group's version (8 bytes LE);
//! - `("changes",)` → the directory change counter (8 bytes LE, atomic add);
//! - `("homed", region)` → the number of accounts whose home is `region` in this copy (8 bytes
//!   LE, atomic add): the directory writer's answer to "do accounts live in region k?".
//!
//! Every lookup is a point read, except the lists: an account's devices, a group's members and
//! an account's groups are each one range read, because each list shares its key prefix and
//! sorts by id.
//!
//! **Versions.** Every change of an account (created, a device added or removed, home region or
//! epoch or name changed) adds one to its version; every change of a group (created, a member
//! added or removed, home moved) adds one to the group's version; every change of either adds
//! one to the change counter. A cache keeps `(record, version)`; the change counter unchanged
//! means nothing changed anywhere, else one point read of [`account_version`] or
//! [`group_version`] per cached record says which records are stale. Versions are per copy of
//! the directory (the writer and each replica count their own changes), so a cache compares
//! versions read from one copy.
//!
//! **Conflicts.** Account creation reads the name key (two creations of one name conflict, and
//! the retry sees [`NameTaken`]) and the account counter, so creations serialize: ids are dense
//! and never reused, and the directory is written rarely (registration only), so the hot
//! counter is acceptable here; group creation likewise serializes on the group counter. Device
//! changes of one account serialize on its device counter and version, membership changes of
//! one group on its version; changes of different accounts or groups never conflict. The change
//! counter and the per-region home counts are only ever changed with atomic adds, so they
//! conflict with no writer; a reader of them conflicts only with the changes it wants to see.
//!
//! **Idempotence.** [`create_account`], [`add_device`], [`add_first_device`], [`create_group`],
//! [`add_member`] and [`remove_member`] take an [`IdempotencyKey`]: retried after
//! `CommitUnknownResult` they answer with their first result (the same account, device number
//! or group id) and change nothing. [`put_account`] and [`remove_device`] are idempotent by
//! nature (they compare with what is stored), and [`move_home`] and [`move_group_home`] are
//! compare-and-sets on the epoch that recognise their own earlier success.
//!
//! **Limits.** Names are bounded by the protocol (64 bytes), records are small; an account's
//! device list is read whole, so the region bounds devices per account; a group has at most
//! [`GROUP_MEMBERS_MAX`] members, so its member list is one bounded read; an account's groups
//! are read in pages.
//!
//! **Evolution.** Copies written before the home counts existed have none: [`count_homes`]
//! tallies the accounts page by page and [`set_accounts_homed`] stores the result, once, before
//! the copy serves. One region writes the directory and others keep replicas through
//! [`put_account`], which refuses older epochs. Next: a change log for replicas and edges under
//! versionstamped keys (the change counter then becomes the commit version of the last change,
//! and versions become comparable across copies), group replicas like accounts, and member
//! roles as a new field of the member value (empty today).

use prost::Message;
use relay_proto::{AccountId, DeviceAddress, DeviceId, RegionId};

pub use crate::codec::IdempotencyKey;
use crate::codec::{
    decode_key, decode_record, decode_u64, encode_u64, increment, read_u64, recall, remember,
};
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
pub use crate::limits::GROUP_MEMBERS_MAX;
use crate::limits::LAYER_READ_ENTRIES_MAX;
use crate::tuple::{Subspace, TupleDecode, TupleEncode, TupleError};

/// The epoch of a newly created account or group.
pub const FIRST_EPOCH: u64 = 1;

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

/// A device of an account and its public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device's address.
    pub device: DeviceAddress,
    /// The device's identity key (Curve25519).
    pub identity_key: Vec<u8>,
    /// The device's signing key (Ed25519).
    pub signing_key: Vec<u8>,
}

/// The name asked for already belongs to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameTaken {
    /// The account owning the name.
    pub owner: AccountId,
}

/// [`add_first_device`] found the account already has devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountHasDevices;

/// A group, numbered by the directory from 1, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u64);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "group {}", self.0)
    }
}

/// A group id packs as its number, so a group's keys sort by id.
impl TupleEncode for GroupId {
    fn encode_into(&self, out: &mut Vec<u8>) {
        self.0.encode_into(out);
    }
}

impl TupleDecode for GroupId {
    fn decode_from(input: &mut &[u8]) -> Result<Self, TupleError> {
        u64::decode_from(input).map(GroupId)
    }
}

/// A group as the directory stores it (its members are listed by [`members`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRecord {
    /// The group's id.
    pub id: GroupId,
    /// The account that created the group.
    pub owner: AccountId,
    /// The region that is the group's home.
    pub home_region: RegionId,
    /// Bumped whenever the home moves.
    pub epoch: u64,
}

/// What [`add_member`] or [`remove_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// The membership changed; the group is now at `version`.
    Changed {
        /// The group's version after the change.
        version: u64,
    },
    /// Nothing to change (already a member, or not a member); the group is at `version`.
    Unchanged {
        /// The group's current version.
        version: u64,
    },
    /// No group has this id.
    UnknownGroup,
    /// Refused: the group has [`GROUP_MEMBERS_MAX`] members.
    Full {
        /// The members the group has.
        members: u64,
    },
}

/// What [`move_home`] or [`move_group_home`] did to a record `R`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeMove<R> {
    /// The home is now the one asked for, at the next epoch (moved now, or by an earlier
    /// attempt of the same move).
    Moved(R),
    /// Refused: the epoch is not the expected one; `current` is the stored record.
    StaleEpoch {
        /// The stored record.
        current: R,
    },
    /// No account or group has this id.
    Unknown,
}

/// Creates an account with the next account id, unless `name` is taken. Retried with the same
/// `idempotency` key after its commit, it returns the account it created.
pub async fn create_account(
    transaction: &Transaction,
    name: &str,
    home_region: RegionId,
    idempotency: &IdempotencyKey,
) -> Result<Result<AccountRecord, NameTaken>, StoreError> {
    let directory = Directory::new();
    if let Some(stored) = recall(transaction, "create_account", &(), idempotency).await? {
        let id = AccountId(decode_u64(&stored, "create_account result")?);
        return match read_account(transaction, &directory, id).await? {
            Some(record) => Ok(Ok(record)),
            None => Err(StoreError::corrupt(
                "create_account result",
                format!("account {id} created but missing"),
            )),
        };
    }
    if let Some(owner) = account_id_by_name(transaction, &directory, name).await? {
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
    write_account(transaction, &directory, &record)?;
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
    let directory = Directory::new();
    let stored = read_account(transaction, &directory, record.id).await?;
    if let Some(stored) = &stored {
        if stored.epoch > record.epoch {
            return Ok(false);
        }
        if stored == record {
            return Ok(true);
        }
        if stored.name != record.name {
            let old_name_key = directory.name_key(&stored.name);
            if account_id_by_name(transaction, &directory, &stored.name).await? == Some(record.id) {
                transaction.clear(&old_name_key);
            }
        }
    }
    write_account(transaction, &directory, record)?;
    let old_home = stored.map(|stored| stored.home_region);
    directory.home_moved(transaction, old_home, Some(record.home_region))?;
    directory.account_changed(transaction, record.id).await?;
    Ok(true)
}

/// Moves the home of `account` to `to_region` and bumps its epoch, if its epoch is still
/// `expected_epoch`. A retry of a move that committed finds the epoch one past `expected_epoch`
/// with the home at `to_region` and answers [`HomeMove::Moved`] again.
pub async fn move_home(
    transaction: &Transaction,
    account: AccountId,
    to_region: RegionId,
    expected_epoch: u64,
) -> Result<HomeMove<AccountRecord>, StoreError> {
    let directory = Directory::new();
    let Some(current) = read_account(transaction, &directory, account).await? else {
        return Ok(HomeMove::Unknown);
    };
    if current.epoch == expected_epoch.saturating_add(1) && current.home_region == to_region {
        return Ok(HomeMove::Moved(current));
    }
    if current.epoch != expected_epoch {
        return Ok(HomeMove::StaleEpoch { current });
    }
    let moved = AccountRecord {
        home_region: to_region,
        epoch: current.epoch + 1,
        ..current
    };
    write_account(transaction, &directory, &moved)?;
    directory.home_moved(transaction, Some(current.home_region), Some(to_region))?;
    directory.account_changed(transaction, account).await?;
    Ok(HomeMove::Moved(moved))
}

/// The account owning `name`.
pub async fn account_by_name(
    transaction: &Transaction,
    name: &str,
) -> Result<Option<AccountRecord>, StoreError> {
    let directory = Directory::new();
    match account_id_by_name(transaction, &directory, name).await? {
        Some(id) => read_account(transaction, &directory, id).await,
        None => Ok(None),
    }
}

/// The account with id `id`.
pub async fn account_by_id(
    transaction: &Transaction,
    id: AccountId,
) -> Result<Option<AccountRecord>, StoreError> {
    read_account(transaction, &Directory::new(), id).await
}

/// The version of `account` in this copy of the directory: 0 for an account it does not know,
/// then one more for every change of the account or its devices.
pub async fn account_version(
    transaction: &Transaction,
    account: AccountId,
) -> Result<u64, StoreError> {
    let directory = Directory::new();
    read_u64(
        transaction,
        &directory.account_version_key(account),
        "account version",
    )
    .await
}

/// The number of changes this copy of the directory has applied (accounts, devices, groups).
pub async fn change_count(transaction: &Transaction) -> Result<u64, StoreError> {
    let directory = Directory::new();
    crate::codec::read_count(
        transaction,
        &directory.changes_key(),
        false,
        "directory change counter",
    )
    .await
}

/// The number of accounts whose home is `region` in this copy of the directory (at the
/// directory writer: every account homed there).
pub async fn accounts_homed(
    transaction: &Transaction,
    region: RegionId,
) -> Result<u64, StoreError> {
    let directory = Directory::new();
    crate::codec::read_count(
        transaction,
        &directory.homed_key(region),
        false,
        "accounts homed",
    )
    .await
}

/// Tallies the homes of up to `limit` accounts after `after` (from the first with `None`), in id
/// order (at most [`LAYER_READ_ENTRIES_MAX`]): adds one to `tally` per account and region, and
/// returns the last account read (`None` when there were no more).
pub async fn count_homes(
    transaction: &Transaction,
    after: Option<AccountId>,
    limit: usize,
    tally: &mut std::collections::BTreeMap<RegionId, u64>,
) -> Result<Option<AccountId>, StoreError> {
    let directory = Directory::new();
    let accounts = directory.root.subspace(&("account",));
    let (first, end) = accounts.range();
    let begin = match after {
        Some(account) => accounts.subspace(&(account,)).range().1,
        None => first,
    };
    let limit = limit.clamp(1, LAYER_READ_ENTRIES_MAX);
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::limit(limit))
        .await?;
    let mut last = None;
    for (key, value) in &rows {
        let (id,): (AccountId,) = decode_key(&accounts, key, "account key")?;
        let stored: StoredAccount = decode_record(value, "account record")?;
        *tally.entry(RegionId(stored.home_region)).or_default() += 1;
        last = Some(id);
    }
    Ok(last)
}

/// Sets the number of accounts homed in `region` (after a [`count_homes`] tally, for a copy
/// written before the counts existed).
pub fn set_accounts_homed(
    transaction: &Transaction,
    region: RegionId,
    accounts: u64,
) -> Result<(), StoreError> {
    transaction.set(&Directory::new().homed_key(region), &encode_u64(accounts))
}

/// Adds a device to `account` under the account's next device number (from 1, never reused,
/// even after [`remove_device`]). The caller checks that the account exists. Retried with the
/// same `idempotency` key after its commit, it returns the device it added.
pub async fn add_device(
    transaction: &Transaction,
    account: AccountId,
    identity_key: &[u8],
    signing_key: &[u8],
    idempotency: &IdempotencyKey,
) -> Result<DeviceId, StoreError> {
    if let Some(device) = recalled_device(transaction, account, idempotency).await? {
        return Ok(device);
    }
    insert_device(transaction, account, identity_key, signing_key, idempotency).await
}

/// Adds the first device of `account` (registration), unless the account already has a
/// device. Retried with the same `idempotency` key after its commit, it returns the device it
/// added rather than refusing.
pub async fn add_first_device(
    transaction: &Transaction,
    account: AccountId,
    identity_key: &[u8],
    signing_key: &[u8],
    idempotency: &IdempotencyKey,
) -> Result<Result<DeviceId, AccountHasDevices>, StoreError> {
    if let Some(device) = recalled_device(transaction, account, idempotency).await? {
        return Ok(Ok(device));
    }
    let directory = Directory::new();
    let (begin, end) = directory.devices.subspace(&(account,)).range();
    let any = transaction
        .get_range(&begin, &end, RangeOptions::limit(1))
        .await?;
    if !any.is_empty() {
        return Ok(Err(AccountHasDevices));
    }
    insert_device(transaction, account, identity_key, signing_key, idempotency)
        .await
        .map(Ok)
}

/// Removes the device at `address`; its number is never given again. Returns whether it was
/// there (removing a removed device does nothing). The caller clears the device's keys and
/// queue.
pub async fn remove_device(
    transaction: &Transaction,
    address: DeviceAddress,
) -> Result<bool, StoreError> {
    let directory = Directory::new();
    let key = directory.device_key(address);
    if transaction.get(&key).await?.is_none() {
        return Ok(false);
    }
    transaction.clear(&key);
    directory
        .account_changed(transaction, address.account)
        .await?;
    Ok(true)
}

/// Every device of `account`, in device order.
pub async fn devices(
    transaction: &Transaction,
    account: AccountId,
) -> Result<Vec<DeviceRecord>, StoreError> {
    let directory = Directory::new();
    let (begin, end) = directory.devices.subspace(&(account,)).range();
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::default())
        .await?;
    rows.iter()
        .map(|(key, value)| {
            let device: DeviceAddress = decode_key(&directory.devices, key, "device key")?;
            device_record(device, value)
        })
        .collect()
}

/// The device at `address`.
pub async fn device(
    transaction: &Transaction,
    address: DeviceAddress,
) -> Result<Option<DeviceRecord>, StoreError> {
    let directory = Directory::new();
    match transaction.get(&directory.device_key(address)).await? {
        Some(value) => device_record(address, &value).map(Some),
        None => Ok(None),
    }
}

/// Creates a group owned by `owner` (its first member) with its home in `home_region`, under
/// the next group id. The caller checks that the owner exists. Retried with the same
/// `idempotency` key after its commit, it returns the group it created.
pub async fn create_group(
    transaction: &Transaction,
    owner: AccountId,
    home_region: RegionId,
    idempotency: &IdempotencyKey,
) -> Result<GroupId, StoreError> {
    if let Some(stored) = recall(transaction, "create_group", &(), idempotency).await? {
        return Ok(GroupId(decode_u64(&stored, "create_group result")?));
    }
    let directory = Directory::new();
    let counter_key = directory.root.pack(&("group_counter",));
    let id = GroupId(increment(transaction, &counter_key, "group counter").await?);
    let record = GroupRecord {
        id,
        owner,
        home_region,
        epoch: FIRST_EPOCH,
    };
    write_group(transaction, &directory, &record)?;
    transaction.set(&directory.member_key(id, owner), &[])?;
    transaction.set(&directory.group_of_key(owner, id), &[])?;
    transaction.set(&directory.member_count_key(id), &encode_u64(1))?;
    directory.group_changed(transaction, id).await?;
    remember(
        transaction,
        "create_group",
        &(),
        idempotency,
        &encode_u64(id.0),
    )?;
    Ok(id)
}

/// The group with id `id`.
pub async fn group(
    transaction: &Transaction,
    id: GroupId,
) -> Result<Option<GroupRecord>, StoreError> {
    read_group(transaction, &Directory::new(), id).await
}

/// Moves the home of `group` to `to_region` and bumps its epoch, if its epoch is still
/// `expected_epoch`; a retry of a move that committed answers [`HomeMove::Moved`] again.
pub async fn move_group_home(
    transaction: &Transaction,
    group: GroupId,
    to_region: RegionId,
    expected_epoch: u64,
) -> Result<HomeMove<GroupRecord>, StoreError> {
    let directory = Directory::new();
    let Some(current) = read_group(transaction, &directory, group).await? else {
        return Ok(HomeMove::Unknown);
    };
    if current.epoch == expected_epoch.saturating_add(1) && current.home_region == to_region {
        return Ok(HomeMove::Moved(current));
    }
    if current.epoch != expected_epoch {
        return Ok(HomeMove::StaleEpoch { current });
    }
    let moved = GroupRecord {
        home_region: to_region,
        epoch: current.epoch + 1,
        ..current
    };
    write_group(transaction, &directory, &moved)?;
    directory.group_changed(transaction, group).await?;
    Ok(HomeMove::Moved(moved))
}

/// Adds `account` to `group` (the caller checks the account exists). Retried with the same
/// `idempotency` key after its commit, it answers its first result, even if the member was
/// removed in between.
pub async fn add_member(
    transaction: &Transaction,
    group: GroupId,
    account: AccountId,
    idempotency: &IdempotencyKey,
) -> Result<MembershipChange, StoreError> {
    change_membership(transaction, group, account, true, idempotency).await
}

/// Removes `account` from `group`. Retried with the same `idempotency` key after its commit, it
/// answers its first result, even if the member was added again in between.
pub async fn remove_member(
    transaction: &Transaction,
    group: GroupId,
    account: AccountId,
    idempotency: &IdempotencyKey,
) -> Result<MembershipChange, StoreError> {
    change_membership(transaction, group, account, false, idempotency).await
}

/// Every member of `group`, in account order (at most [`GROUP_MEMBERS_MAX`]).
pub async fn members(
    transaction: &Transaction,
    group: GroupId,
) -> Result<Vec<AccountId>, StoreError> {
    let directory = Directory::new();
    let (begin, end) = directory.members.subspace(&(group,)).range();
    // Adds keep a group within GROUP_MEMBERS_MAX, so the limit only guards against a bug.
    let limit = usize::try_from(GROUP_MEMBERS_MAX).unwrap_or(usize::MAX);
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::limit(limit))
        .await?;
    rows.iter()
        .map(|(key, _)| {
            let (_, account): (GroupId, AccountId) =
                decode_key(&directory.members, key, "group member key")?;
            Ok(account)
        })
        .collect()
}

/// Up to `limit` groups of `account` after `after` (from the first when `None`), in group order
/// (at most [`LAYER_READ_ENTRIES_MAX`] per call).
pub async fn groups_of(
    transaction: &Transaction,
    account: AccountId,
    after: Option<GroupId>,
    limit: usize,
) -> Result<Vec<GroupId>, StoreError> {
    let directory = Directory::new();
    let memberships = directory.groups_of.subspace(&(account,));
    let (first, end) = memberships.range();
    let begin = match after {
        Some(group) => memberships.subspace(&(group,)).range().1,
        None => first,
    };
    let limit = limit.min(LAYER_READ_ENTRIES_MAX);
    let rows = transaction
        .get_range(&begin, &end, RangeOptions::limit(limit))
        .await?;
    rows.iter()
        .map(|(key, _)| {
            let (group,): (GroupId,) = decode_key(&memberships, key, "group membership key")?;
            Ok(group)
        })
        .collect()
}

/// The version of `group` in this copy of the directory: 0 for a group it does not know, then
/// one more for every change of the group or its members.
pub async fn group_version(transaction: &Transaction, group: GroupId) -> Result<u64, StoreError> {
    let directory = Directory::new();
    read_u64(
        transaction,
        &directory.group_version_key(group),
        "group version",
    )
    .await
}

/// The stored form of an account (its id is in the key).
#[derive(Clone, PartialEq, Message)]
struct StoredAccount {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(uint32, tag = "2")]
    home_region: u32,
    #[prost(uint64, tag = "3")]
    epoch: u64,
}

/// The stored form of a device (its address is in the key).
#[derive(Clone, PartialEq, Message)]
struct StoredDevice {
    #[prost(bytes = "vec", tag = "1")]
    identity_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    signing_key: Vec<u8>,
}

/// The stored form of a group (its id is in the key).
#[derive(Clone, PartialEq, Message)]
struct StoredGroup {
    #[prost(uint64, tag = "1")]
    owner: u64,
    #[prost(uint32, tag = "2")]
    home_region: u32,
    #[prost(uint64, tag = "3")]
    epoch: u64,
}

/// The stored result of a membership change, for answering retries.
#[derive(Clone, PartialEq, Message)]
struct StoredMembershipChange {
    #[prost(uint64, tag = "1")]
    version: u64,
}

struct Directory {
    root: Subspace,
    devices: Subspace,
    members: Subspace,
    groups_of: Subspace,
}

impl Directory {
    fn new() -> Self {
        let root = Subspace::new(&("directory",));
        let devices = root.subspace(&("device",));
        let members = root.subspace(&("member",));
        let groups_of = root.subspace(&("group_of",));
        Directory {
            root,
            devices,
            members,
            groups_of,
        }
    }

    fn account_key(&self, id: AccountId) -> Vec<u8> {
        self.root.pack(&("account", id))
    }

    fn name_key(&self, name: &str) -> Vec<u8> {
        self.root.pack(&("name", name))
    }

    fn device_key(&self, device: DeviceAddress) -> Vec<u8> {
        self.devices.pack(&device)
    }

    fn account_version_key(&self, account: AccountId) -> Vec<u8> {
        self.root.pack(&("account_version", account))
    }

    fn group_key(&self, group: GroupId) -> Vec<u8> {
        self.root.pack(&("group", group))
    }

    fn member_key(&self, group: GroupId, account: AccountId) -> Vec<u8> {
        self.members.pack(&(group, account))
    }

    fn member_count_key(&self, group: GroupId) -> Vec<u8> {
        self.root.pack(&("member_count", group))
    }

    fn group_of_key(&self, account: AccountId, group: GroupId) -> Vec<u8> {
        self.groups_of.pack(&(account, group))
    }

    fn group_version_key(&self, group: GroupId) -> Vec<u8> {
        self.root.pack(&("group_version", group))
    }

    fn changes_key(&self) -> Vec<u8> {
        self.root.pack(&("changes",))
    }

    fn homed_key(&self, region: RegionId) -> Vec<u8> {
        self.root.pack(&("homed", region))
    }

    /// Moves one account's count from the home `from` to the home `to` (`None`: no home, for
    /// a new account); nothing when they are the same.
    fn home_moved(
        &self,
        transaction: &Transaction,
        from: Option<RegionId>,
        to: Option<RegionId>,
    ) -> Result<(), StoreError> {
        if from == to {
            return Ok(());
        }
        if let Some(from) = from {
            transaction.atomic_add(&self.homed_key(from), -1)?;
        }
        if let Some(to) = to {
            transaction.atomic_add(&self.homed_key(to), 1)?;
        }
        Ok(())
    }

    /// Bumps the version of `account` and the change counter; returns the new version.
    async fn account_changed(
        &self,
        transaction: &Transaction,
        account: AccountId,
    ) -> Result<u64, StoreError> {
        transaction.atomic_add(&self.changes_key(), 1)?;
        increment(
            transaction,
            &self.account_version_key(account),
            "account version",
        )
        .await
    }

    /// Bumps the version of `group` and the change counter; returns the new version.
    async fn group_changed(
        &self,
        transaction: &Transaction,
        group: GroupId,
    ) -> Result<u64, StoreError> {
        transaction.atomic_add(&self.changes_key(), 1)?;
        increment(transaction, &self.group_version_key(group), "group version").await
    }
}

async fn recalled_device(
    transaction: &Transaction,
    account: AccountId,
    idempotency: &IdempotencyKey,
) -> Result<Option<DeviceId>, StoreError> {
    let Some(stored) = recall(transaction, "add_device", &(account,), idempotency).await? else {
        return Ok(None);
    };
    let number = decode_u64(&stored, "add_device result")?;
    let number = u32::try_from(number)
        .map_err(|_| StoreError::corrupt("add_device result", format!("{number} is past u32")))?;
    Ok(Some(DeviceId(number)))
}

async fn insert_device(
    transaction: &Transaction,
    account: AccountId,
    identity_key: &[u8],
    signing_key: &[u8],
    idempotency: &IdempotencyKey,
) -> Result<DeviceId, StoreError> {
    let directory = Directory::new();
    let counter_key = directory.root.pack(&("device_counter", account));
    let next = increment(transaction, &counter_key, "device counter").await?;
    let number = u32::try_from(next)
        .map_err(|_| StoreError::corrupt("device counter", format!("{next} is past u32")))?;
    let device = DeviceAddress {
        account,
        device: DeviceId(number),
    };
    let stored = StoredDevice {
        identity_key: identity_key.to_vec(),
        signing_key: signing_key.to_vec(),
    };
    transaction.set(&directory.device_key(device), &stored.encode_to_vec())?;
    directory.account_changed(transaction, account).await?;
    remember(
        transaction,
        "add_device",
        &(account,),
        idempotency,
        &encode_u64(next),
    )?;
    Ok(device.device)
}

async fn change_membership(
    transaction: &Transaction,
    group: GroupId,
    account: AccountId,
    add: bool,
    idempotency: &IdempotencyKey,
) -> Result<MembershipChange, StoreError> {
    let operation = if add { "add_member" } else { "remove_member" };
    if let Some(stored) = recall(transaction, operation, &(group, account), idempotency).await? {
        let stored: StoredMembershipChange = decode_record(&stored, "membership change result")?;
        return Ok(MembershipChange::Changed {
            version: stored.version,
        });
    }
    let directory = Directory::new();
    if read_group(transaction, &directory, group).await?.is_none() {
        return Ok(MembershipChange::UnknownGroup);
    }
    let member_key = directory.member_key(group, account);
    let is_member = transaction.get(&member_key).await?.is_some();
    if is_member == add {
        let version = read_u64(
            transaction,
            &directory.group_version_key(group),
            "group version",
        )
        .await?;
        return Ok(MembershipChange::Unchanged { version });
    }
    let count_key = directory.member_count_key(group);
    let members = read_u64(transaction, &count_key, "group member count").await?;
    let members = if add {
        if members >= GROUP_MEMBERS_MAX {
            return Ok(MembershipChange::Full { members });
        }
        transaction.set(&member_key, &[])?;
        transaction.set(&directory.group_of_key(account, group), &[])?;
        members + 1
    } else {
        transaction.clear(&member_key);
        transaction.clear(&directory.group_of_key(account, group));
        members.checked_sub(1).ok_or_else(|| {
            StoreError::corrupt("group member count", format!("{group} counts no member"))
        })?
    };
    transaction.set(&count_key, &encode_u64(members))?;
    let version = directory.group_changed(transaction, group).await?;
    let stored = StoredMembershipChange { version };
    remember(
        transaction,
        operation,
        &(group, account),
        idempotency,
        &stored.encode_to_vec(),
    )?;
    Ok(MembershipChange::Changed { version })
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

async fn read_account(
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

fn write_account(
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

async fn read_group(
    transaction: &Transaction,
    directory: &Directory,
    id: GroupId,
) -> Result<Option<GroupRecord>, StoreError> {
    let Some(value) = transaction.get(&directory.group_key(id)).await? else {
        return Ok(None);
    };
    let stored: StoredGroup = decode_record(&value, "group record")?;
    Ok(Some(GroupRecord {
        id,
        owner: AccountId(stored.owner),
        home_region: RegionId(stored.home_region),
        epoch: stored.epoch,
    }))
}

fn write_group(
    transaction: &Transaction,
    directory: &Directory,
    record: &GroupRecord,
) -> Result<(), StoreError> {
    let stored = StoredGroup {
        owner: record.owner.0,
        home_region: record.home_region.0,
        epoch: record.epoch,
    };
    transaction.set(&directory.group_key(record.id), &stored.encode_to_vec())
}

fn device_record(device: DeviceAddress, value: &[u8]) -> Result<DeviceRecord, StoreError> {
    let stored: StoredDevice = decode_record(value, "device record")?;
    Ok(DeviceRecord {
        device,
        identity_key: stored.identity_key,
        signing_key: stored.signing_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
    async fn accounts_are_counted_by_home_region() {
        let (_folder, database) = temporary_database(None);
        let homed = async || {
            database
                .transact(|tx| async move {
                    Ok([
                        accounts_homed(&tx, RegionId(1)).await?,
                        accounts_homed(&tx, RegionId(2)).await?,
                    ])
                })
                .await
                .expect("counts")
        };
        for (index, (name, home)) in [("a", 1), ("b", 2), ("c", 2)].into_iter().enumerate() {
            database
                .transact(|tx| async move {
                    create_account(&tx, name, RegionId(home), &idempotency_key(index as u64)).await
                })
                .await
                .expect("transaction")
                .expect("name free");
        }
        // A retried creation counts once.
        database
            .transact(|tx| async move {
                create_account(&tx, "a", RegionId(1), &idempotency_key(0)).await
            })
            .await
            .expect("transaction")
            .expect("the first result");
        assert_eq!(homed().await, [1, 2]);

        let moved = database
            .transact(
                |tx| async move { move_home(&tx, AccountId(2), RegionId(1), FIRST_EPOCH).await },
            )
            .await
            .expect("move");
        assert!(matches!(moved, HomeMove::Moved(_)));
        assert_eq!(homed().await, [2, 1]);

        // A replica's copy follows the records it is given.
        let record = AccountRecord {
            id: AccountId(9),
            name: "z".into(),
            home_region: RegionId(2),
            epoch: 1,
        };
        let moved_record = AccountRecord {
            home_region: RegionId(1),
            epoch: 2,
            ..record.clone()
        };
        database
            .transact(|tx| {
                let (record, moved_record) = (record.clone(), moved_record.clone());
                async move {
                    put_account(&tx, &record).await?;
                    put_account(&tx, &record).await?;
                    put_account(&tx, &moved_record).await
                }
            })
            .await
            .expect("put");
        assert_eq!(homed().await, [3, 1]);

        // The tally of the records agrees with the counters, page by page.
        let mut tally = std::collections::BTreeMap::new();
        let mut after = None;
        loop {
            let last = database
                .transact(|tx| {
                    let mut page = std::collections::BTreeMap::new();
                    async move {
                        let last = count_homes(&tx, after, 2, &mut page).await?;
                        Ok((last, page))
                    }
                })
                .await
                .expect("tally");
            for (region, count) in last.1 {
                *tally.entry(region).or_default() += count;
            }
            match last.0 {
                Some(account) => after = Some(account),
                None => break,
            }
        }
        assert_eq!(
            tally,
            std::collections::BTreeMap::from([(RegionId(1), 3), (RegionId(2), 1)])
        );
        database
            .transact(|tx| async move { set_accounts_homed(&tx, RegionId(2), 5) })
            .await
            .expect("set");
        assert_eq!(homed().await, [3, 5]);
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

    #[tokio::test]
    async fn a_home_moves_once_per_epoch() {
        let (_folder, database) = temporary_database(None);
        let alice = database
            .transact(|tx| async move {
                create_account(&tx, "alice", RegionId(1), &idempotency_key(1)).await
            })
            .await
            .expect("transaction")
            .expect("name free");
        let move_to = |region: u32, expected_epoch: u64| {
            let database = database.clone();
            async move {
                database
                    .transact(|tx| async move {
                        move_home(&tx, alice.id, RegionId(region), expected_epoch).await
                    })
                    .await
                    .expect("move")
            }
        };
        let moved = AccountRecord {
            home_region: RegionId(2),
            epoch: 2,
            ..alice.clone()
        };
        assert_eq!(move_to(2, 1).await, HomeMove::Moved(moved.clone()));
        assert_eq!(
            move_to(2, 1).await,
            HomeMove::Moved(moved.clone()),
            "a retry"
        );
        assert_eq!(
            move_to(3, 1).await,
            HomeMove::StaleEpoch {
                current: moved.clone()
            }
        );
        let unknown = database
            .transact(|tx| async move { move_home(&tx, AccountId(9), RegionId(2), 1).await })
            .await
            .expect("move");
        assert_eq!(unknown, HomeMove::Unknown);
        let version = database
            .transact(|tx| async move { account_version(&tx, alice.id).await })
            .await
            .expect("version");
        assert_eq!(version, 2, "created, then moved once");
    }

    #[tokio::test]
    async fn devices_are_numbered_from_one_per_account_and_never_reused() {
        let (_folder, database) = temporary_database(None);
        let numbers = database
            .transact(|tx| async move {
                Ok([
                    add_device(&tx, AccountId(1), b"id-1", b"sig-1", &idempotency_key(1)).await?,
                    add_device(&tx, AccountId(1), b"id-2", b"sig-2", &idempotency_key(2)).await?,
                    add_device(&tx, AccountId(2), b"id-3", b"sig-3", &idempotency_key(3)).await?,
                    // A retry of the second add.
                    add_device(&tx, AccountId(1), b"id-2", b"sig-2", &idempotency_key(2)).await?,
                ])
            })
            .await
            .expect("adds");
        assert_eq!(
            numbers,
            [DeviceId(1), DeviceId(2), DeviceId(1), DeviceId(2)]
        );

        let second = DeviceAddress {
            account: AccountId(1),
            device: DeviceId(2),
        };
        let (listed, found, missing) = database
            .transact(|tx| async move {
                let missing = DeviceAddress {
                    account: AccountId(1),
                    device: DeviceId(3),
                };
                Ok((
                    devices(&tx, AccountId(1)).await?,
                    device(&tx, second).await?,
                    device(&tx, missing).await?,
                ))
            })
            .await
            .expect("reads");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].device.device, DeviceId(1));
        assert_eq!(listed[0].identity_key, b"id-1");
        assert_eq!(
            found.map(|record| record.signing_key),
            Some(b"sig-2".to_vec())
        );
        assert_eq!(missing, None);

        let (removed, removed_again, next, remaining, version) = database
            .transact(|tx| async move {
                Ok((
                    remove_device(&tx, second).await?,
                    remove_device(&tx, second).await?,
                    add_device(&tx, AccountId(1), b"id-4", b"sig-4", &idempotency_key(4)).await?,
                    devices(&tx, AccountId(1)).await?,
                    account_version(&tx, AccountId(1)).await?,
                ))
            })
            .await
            .expect("removal");
        assert!(removed && !removed_again);
        assert_eq!(next, DeviceId(3), "device numbers are never reused");
        let numbers: Vec<_> = remaining
            .iter()
            .map(|record| record.device.device)
            .collect();
        assert_eq!(numbers, [DeviceId(1), DeviceId(3)]);
        assert_eq!(version, 4, "two adds, one removal, one add");
    }

    #[tokio::test]
    async fn the_first_device_is_added_once() {
        let (_folder, database) = temporary_database(None);
        let first = |key: u64| {
            let database = database.clone();
            async move {
                database
                    .transact(|tx| async move {
                        add_first_device(&tx, AccountId(5), b"id", b"sig", &idempotency_key(key))
                            .await
                    })
                    .await
                    .expect("transaction")
            }
        };
        assert_eq!(first(1).await, Ok(DeviceId(1)));
        assert_eq!(first(1).await, Ok(DeviceId(1)), "a retry gets its device");
        assert_eq!(first(2).await, Err(AccountHasDevices));
    }

    #[tokio::test]
    async fn groups_track_members_both_ways_with_versions() {
        let (_folder, database) = temporary_database(None);
        let owner = AccountId(1);
        let (group, retried, other) = database
            .transact(|tx| async move {
                Ok((
                    create_group(&tx, owner, RegionId(1), &idempotency_key(10)).await?,
                    create_group(&tx, owner, RegionId(1), &idempotency_key(10)).await?,
                    create_group(&tx, AccountId(2), RegionId(2), &idempotency_key(11)).await?,
                ))
            })
            .await
            .expect("creations");
        assert_eq!(
            (group, retried, other),
            (GroupId(1), GroupId(1), GroupId(2))
        );

        let changes = database
            .transact(|tx| async move {
                Ok([
                    add_member(&tx, group, AccountId(2), &idempotency_key(20)).await?,
                    add_member(&tx, group, AccountId(3), &idempotency_key(21)).await?,
                    add_member(&tx, group, AccountId(3), &idempotency_key(22)).await?,
                    remove_member(&tx, group, AccountId(2), &idempotency_key(23)).await?,
                    // Retries of the first add and of the removal, after each other's commit.
                    add_member(&tx, group, AccountId(2), &idempotency_key(20)).await?,
                    remove_member(&tx, group, AccountId(2), &idempotency_key(23)).await?,
                    remove_member(&tx, group, AccountId(9), &idempotency_key(24)).await?,
                    add_member(&tx, GroupId(99), AccountId(2), &idempotency_key(25)).await?,
                    add_member(&tx, other, AccountId(3), &idempotency_key(26)).await?,
                ])
            })
            .await
            .expect("membership changes");
        use MembershipChange::{Changed, Unchanged, UnknownGroup};
        assert_eq!(
            changes,
            [
                Changed { version: 2 },
                Changed { version: 3 },
                Unchanged { version: 3 },
                Changed { version: 4 },
                Changed { version: 2 },
                Changed { version: 4 },
                Unchanged { version: 4 },
                UnknownGroup,
                Changed { version: 2 },
            ]
        );
        let (listed, of_three, of_three_after_first, record, version) = database
            .transact(|tx| async move {
                Ok((
                    members(&tx, group).await?,
                    groups_of(&tx, AccountId(3), None, 10).await?,
                    groups_of(&tx, AccountId(3), Some(group), 10).await?,
                    super::group(&tx, other).await?,
                    group_version(&tx, group).await?,
                ))
            })
            .await
            .expect("reads");
        assert_eq!(listed, [owner, AccountId(3)]);
        assert_eq!(of_three, [group, other]);
        assert_eq!(of_three_after_first, [other]);
        assert_eq!(
            record,
            Some(GroupRecord {
                id: other,
                owner: AccountId(2),
                home_region: RegionId(2),
                epoch: FIRST_EPOCH,
            })
        );
        assert_eq!(version, 4);

        let moves = database
            .transact(|tx| async move {
                Ok([
                    move_group_home(&tx, group, RegionId(3), 1).await?,
                    move_group_home(&tx, group, RegionId(3), 1).await?,
                    move_group_home(&tx, group, RegionId(4), 1).await?,
                ])
            })
            .await
            .expect("moves");
        let moved = GroupRecord {
            id: group,
            owner,
            home_region: RegionId(3),
            epoch: 2,
        };
        assert_eq!(
            moves,
            [
                HomeMove::Moved(moved),
                HomeMove::Moved(moved),
                HomeMove::StaleEpoch { current: moved }
            ]
        );
    }

    #[tokio::test]
    async fn a_full_group_refuses_members() {
        let (_folder, database) = temporary_database(None);
        let outcome = database
            .transact(|tx| async move {
                let group =
                    create_group(&tx, AccountId(1), RegionId(1), &idempotency_key(1)).await?;
                // Stand in for GROUP_MEMBERS_MAX members without writing them all.
                let directory = Directory::new();
                tx.set(
                    &directory.member_count_key(group),
                    &encode_u64(GROUP_MEMBERS_MAX),
                )?;
                add_member(&tx, group, AccountId(2), &idempotency_key(2)).await
            })
            .await
            .expect("add");
        assert_eq!(
            outcome,
            MembershipChange::Full {
                members: GROUP_MEMBERS_MAX
            }
        );
    }
}
