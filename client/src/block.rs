//! Blocking of an open [`Device`]: a blocked account's messages are stopped at this account's
//! home region (stored and answered as usual, so the sender learns nothing and sees ✓ but never
//! ✓✓; queued for none of this account's devices). The list lives in the home region, so it
//! holds for every device of the account, linked ones included.

use relay_proto::AccountId;
use relay_proto::wire::{BlockAction, SetBlock};

use crate::device::Device;
use crate::error::{ClientError, Result};

impl Device {
    /// Blocks `peer` (a name); returns the names of every account blocked now.
    pub async fn block(&self, peer: &str) -> Result<Vec<String>> {
        let account = self.account_of(peer).await?;
        self.block_request(BlockAction::Block, account).await
    }

    /// Unblocks `peer` (a name); returns the names of every account still blocked.
    pub async fn unblock(&self, peer: &str) -> Result<Vec<String>> {
        let account = self.account_of(peer).await?;
        self.block_request(BlockAction::Unblock, account).await
    }

    /// The names of the accounts this account has blocked.
    pub async fn blocked(&self) -> Result<Vec<String>> {
        self.block_request(BlockAction::List, AccountId(0)).await
    }

    async fn block_request(&self, action: BlockAction, account: AccountId) -> Result<Vec<String>> {
        let request = SetBlock {
            action: action as i32,
            account: account.0,
        };
        request
            .validate()
            .map_err(|error| ClientError::Invalid(error.to_string()))?;
        let connection = self.request_connection().await?;
        let list = connection.block(request).await?;
        let accounts: Vec<AccountId> = list.accounts.into_iter().map(AccountId).collect();
        let names = crate::groups::account_names(&connection, &accounts).await?;
        Ok(accounts
            .iter()
            .map(|account| {
                names.get(account).map_or_else(
                    || format!("account {}", account.0),
                    |contact| contact.name.clone(),
                )
            })
            .collect())
    }
}
