//! Blocking on the wire: a device asks its home region to stop an account's messages to its
//! account (`fdb_layers::blocks` keeps the list; fan-out queues nothing from a blocked sender).

use crate::ProtoError;

/// (Device → edge → its home region) block or unblock an account, or only list the blocked
/// ones. Answered with [`BlockedAccounts`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SetBlock {
    /// What to do.
    #[prost(enumeration = "BlockAction", tag = "1")]
    pub action: i32,
    /// The account to block or unblock (0 for `List`).
    #[prost(uint64, tag = "2")]
    pub account: u64,
}

/// What a [`SetBlock`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum BlockAction {
    /// Only list the blocked accounts.
    List = 0,
    /// Block the account: its messages are no longer queued for this account's devices.
    Block = 1,
    /// Unblock the account.
    Unblock = 2,
}

/// (Region → device) the accounts this account has blocked, in order.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BlockedAccounts {
    /// The accounts.
    #[prost(uint64, repeated, tag = "1")]
    pub accounts: Vec<u64>,
}

impl SetBlock {
    /// Checks the action, and that only a block or an unblock names an account (not 0).
    pub fn validate(&self) -> Result<BlockAction, ProtoError> {
        let action = BlockAction::try_from(self.action)
            .map_err(|_| ProtoError::invalid("an unknown block action"))?;
        match (action, self.account) {
            (BlockAction::List, 0) => Ok(action),
            (BlockAction::List, _) => Err(ProtoError::invalid("a block list names no account")),
            (_, 0) => Err(ProtoError::invalid("a block names account 0")),
            _ => Ok(action),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_names_an_account_and_a_list_names_none() {
        let block = |action: BlockAction, account| SetBlock {
            action: action as i32,
            account,
        };
        assert_eq!(
            block(BlockAction::Block, 4).validate(),
            Ok(BlockAction::Block)
        );
        assert_eq!(
            block(BlockAction::Unblock, 4).validate(),
            Ok(BlockAction::Unblock)
        );
        assert_eq!(SetBlock::default().validate(), Ok(BlockAction::List));
        assert!(block(BlockAction::Block, 0).validate().is_err());
        assert!(block(BlockAction::List, 4).validate().is_err());
        let unknown = SetBlock {
            action: 7,
            account: 4,
        };
        assert!(unknown.validate().is_err());
    }
}
