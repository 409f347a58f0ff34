//! The registration token layer: tokens an operator issued, which the directory writer asks of
//! a new account when it requires one. Stored by SHA-256 only: the store never holds a token
//! that would let its reader register.
//!
//! **Key layout** (subspace `("registration_tokens",)`): the token's SHA-256 (32 bytes) →
//! 20 bytes: registrations left (u32 BE), issued at (ms, u64 BE), expires at (ms, u64 BE).
//!
//! **Conflicts.** A registration reads its token with a conflicting read and writes it back
//! with one use fewer (or clears it at zero), so two registrations with the last use of a token
//! conflict and the retried one finds it spent. Tokens are read by nothing else.
//!
//! **Idempotence.** Consuming is not idempotent on its own: the writer consumes a use only
//! when it creates the account, in the same transaction, and a retried registration of an
//! account already created (same name, same home region) consumes nothing.
//!
//! **Limits.** 20 bytes per token; an expired token is cleared when presented.

use sha2::{Digest, Sha256};

use crate::engine::Transaction;
use crate::error::StoreError;
use crate::tuple::Subspace;

/// A stored token's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRecord {
    /// Registrations it still allows.
    pub uses_left: u32,
    /// When it was issued (ms since the Unix epoch).
    pub issued_at_ms: u64,
    /// When it expires (ms since the Unix epoch).
    pub expires_at_ms: u64,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No such token (never issued, or used up).
    Unknown,
    /// It expired.
    Expired,
}

/// Stores a newly issued `token`.
pub fn issue(
    transaction: &Transaction,
    token: &str,
    record: TokenRecord,
) -> Result<(), StoreError> {
    transaction.set(&key(token), &encode(record))
}

/// Takes one use of `token` at `now_ms`: the uses left after, or why it is refused (an expired
/// token is cleared).
pub async fn consume(
    transaction: &Transaction,
    token: &str,
    now_ms: u64,
) -> Result<Result<u32, TokenRefusal>, StoreError> {
    let key = key(token);
    let Some(bytes) = transaction.get(&key).await? else {
        return Ok(Err(TokenRefusal::Unknown));
    };
    let record = decode(&bytes)?;
    if record.expires_at_ms <= now_ms {
        transaction.clear(&key);
        return Ok(Err(TokenRefusal::Expired));
    }
    let uses_left = record.uses_left.saturating_sub(1);
    if uses_left == 0 {
        transaction.clear(&key);
    } else {
        transaction.set(
            &key,
            &encode(TokenRecord {
                uses_left,
                ..record
            }),
        )?;
    }
    Ok(Ok(uses_left))
}

/// The stored state of `token`, if any.
pub async fn read(
    transaction: &Transaction,
    token: &str,
) -> Result<Option<TokenRecord>, StoreError> {
    match transaction.snapshot_get(&key(token)).await? {
        Some(bytes) => Ok(Some(decode(&bytes)?)),
        None => Ok(None),
    }
}

fn key(token: &str) -> Vec<u8> {
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    Subspace::new(&("registration_tokens",)).pack(&(hash.to_vec(),))
}

fn encode(record: TokenRecord) -> [u8; 20] {
    let mut bytes = [0u8; 20];
    bytes[..4].copy_from_slice(&record.uses_left.to_be_bytes());
    bytes[4..12].copy_from_slice(&record.issued_at_ms.to_be_bytes());
    bytes[12..].copy_from_slice(&record.expires_at_ms.to_be_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> Result<TokenRecord, StoreError> {
    let bytes: &[u8; 20] = bytes
        .try_into()
        .map_err(|_| StoreError::corrupt("registration token", format!("{} bytes", bytes.len())))?;
    let (uses, rest) = bytes.split_at(4);
    let (issued, expires) = rest.split_at(8);
    let (Ok(uses), Ok(issued), Ok(expires)) =
        (uses.try_into(), issued.try_into(), expires.try_into())
    else {
        return Err(StoreError::corrupt("registration token", "field lengths"));
    };
    Ok(TokenRecord {
        uses_left: u32::from_be_bytes(uses),
        issued_at_ms: u64::from_be_bytes(issued),
        expires_at_ms: u64::from_be_bytes(expires),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temporary_database;

    #[tokio::test]
    async fn a_token_allows_its_uses_until_it_expires_and_is_stored_only_as_a_hash() {
        let (folder, database) = temporary_database(None);
        let record = TokenRecord {
            uses_left: 2,
            issued_at_ms: 100,
            expires_at_ms: 1_000,
        };
        for token in ["rt_twice", "rt_expiring"] {
            database
                .transact(|tx| async move { issue(&tx, token, record) })
                .await
                .expect("issue");
        }
        let consume_at = async |token: &'static str, now_ms: u64| {
            database
                .transact(|tx| async move { consume(&tx, token, now_ms).await })
                .await
                .expect("consume")
        };
        assert_eq!(consume_at("rt_twice", 500).await, Ok(1));
        assert_eq!(consume_at("rt_twice", 600).await, Ok(0));
        assert_eq!(
            consume_at("rt_twice", 700).await,
            Err(TokenRefusal::Unknown)
        );
        assert_eq!(
            consume_at("rt_other", 700).await,
            Err(TokenRefusal::Unknown)
        );
        assert_eq!(
            consume_at("rt_expiring", 1_000).await,
            Err(TokenRefusal::Expired)
        );
        assert_eq!(
            consume_at("rt_expiring", 10).await,
            Err(TokenRefusal::Unknown),
            "an expired token is cleared"
        );
        drop(database);
        // The token's text is in no file of the store.
        for entry in std::fs::read_dir(folder.path()).expect("folder").flatten() {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            assert!(!bytes.windows(8).any(|window| window == b"rt_twice"));
        }
    }
}
