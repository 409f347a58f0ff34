//! The directory layer: accounts (unique names, home region with epoch), their devices, and
//! groups with their members, each versioned so that caches can notice staleness.
//!
//! **Challenge.** Give every account a unique name and a numeric id, record which region is its
//! home (with the epoch that fences old primaries), list an account's devices with their
//! identity keys, and keep groups (owner, name, home region with epoch, members with their
//! roles), so regions and
//! edges can check envelopes and route them. Edges and other regions cache these records; they
//! must be able to tell cheaply whether what they hold is still current.
//!
//! **Parts**, one module per record kind, each with its own recipe (key layout, conflicts,
//! idempotence, limits, evolution), all under the subspace `("directory",)`:
//! - `accounts`: `("account_counter",)`, `("account", account)`, `("name", name)`;
//! - `devices`: `("device", account, device)`, `("device_counter", account)`;
//! - `groups`: `("group_counter",)`, `("group", group)`, `("member", group, account)` (the
//!   value is the member's role), `("member_count", group)`, `("group_of", account, group)`,
//!   `("group_request", owner, request id)`;
//! - `versions`: `("account_version", account)`, `("group_version", group)`, `("changes",)`;
//! - `log`: `("log", versionstamp, account)`, `("log_at", account)`, `("replica_cursor",)`,
//!   `("log_complete",)`: the change log replicas follow ([`account_changes`]);
//! - `homes`: `("homed", region)`, and the epoch compare-and-set that moves an account's or a
//!   group's home ([`move_home`], [`move_group_home`]).
//!
//! Every lookup is a point read, except the lists: an account's devices, a group's members and
//! an account's groups are each one range read, because each list shares its key prefix and
//! sorts by id. Changes of different accounts or groups never conflict; the counters every
//! change touches (the change counter, the per-region home counts) are only changed with
//! atomic adds.
//!
//! **Evolution.** One region writes the directory and others keep replicas of its accounts,
//! fed from its change log ([`account_changes`]) through [`put_account`], which refuses older
//! epochs. Next: group replicas like accounts, the edges' caches on the same log, and member
//! roles as a new field of the member value (empty today).

mod accounts;
mod devices;
mod groups;
mod homes;
mod log;
mod versions;

pub use accounts::{
    AccountRecord, NameTaken, account_by_id, account_by_name, create_account, put_account,
};
pub use devices::{
    AccountHasDevices, DeviceRecord, add_device, add_first_device, device, devices,
    last_device_number, remove_device,
};
pub use groups::{
    GROUP_REQUEST_ID_BYTES, GroupChange, GroupId, GroupMember, GroupRecord, NewGroup,
    TooManyMembers, add_member, create_group, group, group_members, groups_of, member,
    member_count, members, remove_member, rename_group, set_admin,
};
pub use homes::{
    HomeMove, accounts_homed, count_homes, move_group_home, move_home, set_accounts_homed,
};
pub use log::{
    LogPosition, ReplicatedGroup, account_changes, backfill_group_log, backfill_log, group_changes,
    group_log_complete, group_replica, group_replica_cursor, log_complete, put_group_replica,
    replica_cursor, set_group_log_complete, set_group_replica_cursor, set_log_complete,
    set_replica_cursor,
};
pub use versions::{account_version, change_count, group_version};

pub use crate::codec::IdempotencyKey;
pub use crate::limits::GROUP_MEMBERS_MAX;
use crate::tuple::Subspace;

/// The epoch of a newly created account or group.
pub const FIRST_EPOCH: u64 = 1;

/// The directory's subspaces; each part adds the keys it owns in its own `impl Directory`.
struct Directory {
    root: Subspace,
    devices: Subspace,
    members: Subspace,
    groups_of: Subspace,
}

impl Directory {
    /// The directory's subspaces, packed once per process: every read and write of an account,
    /// device or group starts here (a region's profile showed building them on each call at
    /// about 1 % of its CPU).
    fn get() -> &'static Self {
        static DIRECTORY: std::sync::LazyLock<Directory> = std::sync::LazyLock::new(|| {
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
        });
        &DIRECTORY
    }
}
