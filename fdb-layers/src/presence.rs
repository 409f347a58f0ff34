//! The presence layer: what a region keeps of its accounts' presence. Being online is not
//! stored (it is which devices hold a connection now, known from the edges' subscriptions);
//! what must outlive a restart is when each account was last seen and who may see it.
//!
//! **Key layout** (subspace `("presence", account)`):
//! - `("last_seen_ms",)` → when a device of the account was last connected, in milliseconds
//!   since the Unix epoch (8 bytes LE), written when the account's last device leaves;
//! - `("privacy",)` → the account's [`PresencePrivacy`] (protobuf), absent: everyone.
//!
//! **Conflicts.** The last-seen time is raised with atomic max (no read), so departures never
//! conflict with each other or with a reader; the setting is written blind by its account's
//! device, and read with a snapshot read by whoever needs it.
//!
//! **Idempotence.** By nature: a maximum raised again, a setting written again.
//!
//! **Limits.** 8 bytes and one setting (at most `PRESENCE_CONTACTS_MAX` contacts, about 50 kB)
//! per account.

use relay_proto::AccountId;
use relay_proto::wire::PresencePrivacy;

use crate::codec::{decode_record, decode_u64, encode_u64};
use crate::engine::Transaction;
use crate::error::StoreError;
use crate::tuple::Subspace;

/// What the store holds of an account's presence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceRecord {
    /// When a device of the account was last connected (0: never recorded).
    pub last_seen_ms: u64,
    /// Who may see it; `None`: never set (everyone).
    pub privacy: Option<PresencePrivacy>,
}

/// Records that `account`'s last connected device left at `at_ms` (an earlier time than the
/// one stored changes nothing).
pub fn record_last_seen(
    transaction: &Transaction,
    account: AccountId,
    at_ms: u64,
) -> Result<(), StoreError> {
    transaction.atomic_max(&Keys::new(account).last_seen_ms(), &encode_u64(at_ms))
}

/// Sets `account`'s presence privacy.
pub fn set_privacy(
    transaction: &Transaction,
    account: AccountId,
    privacy: &PresencePrivacy,
) -> Result<(), StoreError> {
    transaction.set(
        &Keys::new(account).privacy(),
        &prost::Message::encode_to_vec(privacy),
    )
}

/// What the store holds of `account`'s presence (snapshot reads).
pub async fn read(
    transaction: &Transaction,
    account: AccountId,
) -> Result<PresenceRecord, StoreError> {
    let keys = Keys::new(account);
    let last_seen_ms = match transaction.snapshot_get(&keys.last_seen_ms()).await? {
        Some(bytes) => decode_u64(&bytes, "presence last seen")?,
        None => 0,
    };
    let privacy = match transaction.snapshot_get(&keys.privacy()).await? {
        Some(bytes) => Some(decode_record::<PresencePrivacy>(
            &bytes,
            "presence privacy",
        )?),
        None => None,
    };
    Ok(PresenceRecord {
        last_seen_ms,
        privacy,
    })
}

struct Keys {
    root: Subspace,
}

impl Keys {
    fn new(account: AccountId) -> Self {
        Keys {
            root: Subspace::new(&("presence", account)),
        }
    }

    fn last_seen_ms(&self) -> Vec<u8> {
        self.root.pack(&("last_seen_ms",))
    }

    fn privacy(&self) -> Vec<u8> {
        self.root.pack(&("privacy",))
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::wire::PresenceVisibility;

    use super::*;
    use crate::test_support::temporary_database;

    #[tokio::test]
    async fn last_seen_only_moves_forward_and_the_setting_is_kept() {
        let (_folder, database) = temporary_database(None);
        let account = AccountId(5);
        let read_back = async || {
            database
                .transact(|tx| async move { read(&tx, account).await })
                .await
                .expect("read")
        };
        assert_eq!(read_back().await, PresenceRecord::default());
        for at_ms in [1_000, 3_000, 2_000] {
            database
                .transact(|tx| async move { record_last_seen(&tx, account, at_ms) })
                .await
                .expect("record");
        }
        let privacy = PresencePrivacy {
            visibility: PresenceVisibility::Contacts as i32,
            contacts: vec![7, 9],
        };
        let stored = privacy.clone();
        database
            .transact(|tx| {
                let stored = stored.clone();
                async move { set_privacy(&tx, account, &stored) }
            })
            .await
            .expect("set");
        assert_eq!(
            read_back().await,
            PresenceRecord {
                last_seen_ms: 3_000,
                privacy: Some(privacy),
            }
        );
        let other = database
            .transact(|tx| async move { read(&tx, AccountId(6)).await })
            .await
            .expect("read");
        assert_eq!(other, PresenceRecord::default(), "per account");
    }
}
