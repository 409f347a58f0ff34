//! The directory on the region's side: registration and account creation (forwarded to the
//! directory writer), blocks, registration tokens, and lookups of accounts (the local store or
//! replica first, the writer otherwise, refreshed in the background).

use std::future::Future;
use std::time::Duration;

use fdb_layers::{StoreError, directory};
use relay_net::NetError;
use relay_proto::limits::REGION_PEER_REQUEST_TIMEOUT_MS;
use relay_proto::wire::{self, RegionRequest, RegionResponse, region_request, region_response};
use relay_proto::{AccountId, ErrorCode, ProtoError, RegionId};

use super::{RegionService, lock, moves, new_registration_token, record_of, store_failure};
use crate::core::{self, Effects};

impl RegionService {
    pub(super) async fn register(
        &self,
        register: wire::Register,
    ) -> Result<wire::Registered, ProtoError> {
        wire::validate_account_name(&register.name)?;
        core::check_keys(
            &register.identity_key,
            &register.signing_key,
            &register.one_time_keys,
        )?;
        if let Some(key) = &register.fallback_key {
            core::check_fallback_key(&register.identity_key, &register.signing_key, key)?;
        }
        let local = self.inner.region;
        if register.registration_token.len() > relay_proto::limits::REGISTRATION_TOKEN_BYTES_MAX {
            return Err(ProtoError::new(
                ErrorCode::Forbidden,
                "the registration token is longer than any token issued",
            ));
        }
        let record = if self.inner.writer == local {
            self.create_account(&register.name, local, &register.registration_token)
                .await?
        } else {
            let request = RegionRequest {
                body: Some(region_request::Body::CreateAccount(wire::CreateAccount {
                    name: register.name.clone(),
                    home_region: local.0,
                    registration_token: register.registration_token.clone(),
                })),
            };
            match self.to_writer(&request).await?.body {
                Some(region_response::Body::Account(info)) => record_of(&info),
                Some(region_response::Body::Error(error)) => return Err(error.into()),
                _ => {
                    return Err(ProtoError::new(
                        ErrorCode::Internal,
                        "unexpected directory answer",
                    ));
                }
            }
        };
        let key = self.idempotency_key();
        self.transact(|tx| {
            let record = record.clone();
            let register = register.clone();
            async move { core::register_device(&tx, &record, &register, &key).await }
        })
        .await
    }

    /// Creates an account at the directory writer. Idempotent for a retried registration: an
    /// existing name homed in the same region is returned (consuming no token); the home region
    /// refuses it if the account already has a device. When this writer requires registration
    /// tokens, a new account takes one use of `token` in the same transaction.
    pub(super) async fn create_account(
        &self,
        name: &str,
        home: RegionId,
        token: &str,
    ) -> Result<directory::AccountRecord, ProtoError> {
        wire::validate_account_name(name)?;
        let name = name.to_owned();
        let key = self.idempotency_key();
        let tokens_required = self.inner.tokens_required;
        let now_ms = self.inner.clock.now_ms();
        self.transact(|tx| {
            let name = name.clone();
            async move {
                if let Some(existing) = directory::account_by_name(&tx, &name).await? {
                    if existing.home_region == home {
                        return Ok(Ok((existing, Effects::default())));
                    }
                    return Ok(Err(ProtoError::new(
                        ErrorCode::NameTaken,
                        format!("the name {name} is taken"),
                    )));
                }
                if tokens_required {
                    if token.is_empty() {
                        return Ok(Err(ProtoError::new(
                            ErrorCode::Forbidden,
                            "this deployment requires a registration token (ask its operator \
                             for one: relayd admin token)",
                        )));
                    }
                    match fdb_layers::tokens::consume(&tx, token, now_ms).await? {
                        Ok(_) => {}
                        Err(fdb_layers::tokens::TokenRefusal::Unknown) => {
                            return Ok(Err(ProtoError::new(
                                ErrorCode::Forbidden,
                                "the registration token is not valid (never issued, or used up)",
                            )));
                        }
                        Err(fdb_layers::tokens::TokenRefusal::Expired) => {
                            return Ok(Err(ProtoError::new(
                                ErrorCode::Forbidden,
                                "the registration token expired",
                            )));
                        }
                    }
                }
                match directory::create_account(&tx, &name, home, &key).await? {
                    Ok(record) => Ok(Ok((record, Effects::default()))),
                    Err(_) => Ok(Err(ProtoError::new(
                        ErrorCode::NameTaken,
                        format!("the name {name} is taken"),
                    ))),
                }
            }
        })
        .await
    }

    /// Blocks or unblocks an account for `blocker` (homed here), then lists its blocks.
    pub(super) async fn block(
        &self,
        blocker: AccountId,
        request: &wire::SetBlock,
    ) -> Result<wire::BlockedAccounts, ProtoError> {
        let action = request.validate()?;
        let target = AccountId(request.account);
        if action != wire::BlockAction::List && target == blocker {
            return Err(ProtoError::invalid("an account cannot block itself"));
        }
        let answer = self
            .inner
            .db
            .transact(|tx| async move {
                match action {
                    wire::BlockAction::List => {}
                    wire::BlockAction::Block => {
                        if fdb_layers::blocks::block(&tx, blocker, target).await?
                            == fdb_layers::blocks::Blocked::Full
                        {
                            return Ok(Err(()));
                        }
                    }
                    wire::BlockAction::Unblock => fdb_layers::blocks::unblock(&tx, blocker, target),
                }
                Ok(Ok(fdb_layers::blocks::list(&tx, blocker).await?))
            })
            .await
            .map_err(store_failure)?;
        match answer {
            Ok(accounts) => Ok(wire::BlockedAccounts {
                accounts: accounts.into_iter().map(|account| account.0).collect(),
            }),
            Err(()) => Err(ProtoError::new(
                ErrorCode::TooLarge,
                format!(
                    "at most {} accounts can be blocked",
                    fdb_layers::limits::BLOCKED_ACCOUNTS_MAX
                ),
            )),
        }
    }

    /// Issues registration tokens at the directory writer: fresh random tokens, stored by their
    /// SHA-256 only and returned once.
    pub(super) async fn issue_tokens(
        &self,
        issue: &wire::IssueRegistrationTokens,
    ) -> Result<wire::RegistrationTokens, ProtoError> {
        use relay_proto::limits::{
            REGISTRATION_TOKEN_TTL_MS_MAX, REGISTRATION_TOKEN_USES_MAX,
            REGISTRATION_TOKENS_PER_REQUEST_MAX,
        };
        if !(1..=REGISTRATION_TOKENS_PER_REQUEST_MAX).contains(&issue.count)
            || !(1..=REGISTRATION_TOKEN_USES_MAX).contains(&issue.uses)
            || !(1..=REGISTRATION_TOKEN_TTL_MS_MAX).contains(&issue.ttl_ms)
        {
            return Err(ProtoError::invalid(format!(
                "tokens: 1 to {REGISTRATION_TOKENS_PER_REQUEST_MAX} at once, 1 to \
                 {REGISTRATION_TOKEN_USES_MAX} uses each, valid 1 ms to a year"
            )));
        }
        let now_ms = self.inner.clock.now_ms();
        let expires_at_ms = now_ms.saturating_add(issue.ttl_ms);
        let tokens: Vec<String> = (0..issue.count).map(|_| new_registration_token()).collect();
        let record = fdb_layers::tokens::TokenRecord {
            uses_left: issue.uses,
            issued_at_ms: now_ms,
            expires_at_ms,
        };
        self.inner
            .db
            .transact(|tx| {
                let tokens = tokens.clone();
                async move {
                    for token in &tokens {
                        fdb_layers::tokens::issue(&tx, token, record)?;
                    }
                    Ok(())
                }
            })
            .await
            .map_err(store_failure)?;
        tracing::info!(
            count = issue.count,
            uses = issue.uses,
            expires_at_ms,
            "issued registration tokens"
        );
        Ok(wire::RegistrationTokens {
            tokens,
            uses: issue.uses,
            expires_at_ms,
        })
    }

    /// Resolves an account locally (the writer, or this replica's cache), else asks the writer
    /// and caches the answer. A cached copy of an account homed elsewhere answers at once, and
    /// is asked of the writer again in the background once it is
    /// [`ACCOUNT_REFRESH_INTERVAL_MS`] old. An account this region moved away is answered at
    /// its new home even while the local copy still names this region.
    pub(super) async fn lookup<F, Fut>(
        &self,
        local_read: F,
        forward: region_request::Body,
    ) -> Result<wire::AccountInfo, ProtoError>
    where
        F: FnMut(fdb_layers::Transaction) -> Fut,
        Fut: Future<Output = Result<Option<directory::AccountRecord>, StoreError>>,
    {
        let found = self
            .inner
            .db
            .transact(local_read)
            .await
            .map_err(store_failure)?;
        if let Some(record) = found {
            let mut info = core::account_info(&record);
            // An account this region moved away whose new record it could not write yet (a
            // failing disk; the replica brings it later): the move is known here all the same,
            // and an edge following the move asks here.
            let moved = match lock(&self.inner.moves.away).get(&record.id) {
                Some(moves::Away::Moved(to)) if record.home_region == self.inner.region => {
                    Some(*to)
                }
                _ => None,
            };
            if let Some(to) = moved {
                info.region = to.0;
            }
            if self.inner.writer != self.inner.region
                && (record.home_region != self.inner.region || moved.is_some())
            {
                self.refresh_in_background(record.id);
            }
            return Ok(info);
        }
        if self.inner.writer == self.inner.region {
            return Err(ProtoError::new(
                ErrorCode::UnknownAccount,
                "no such account",
            ));
        }
        let request = RegionRequest {
            body: Some(forward),
        };
        match self.to_writer(&request).await?.body {
            Some(region_response::Body::Account(info)) => {
                self.store_from_writer(&info).await?;
                Ok(info)
            }
            Some(region_response::Body::Error(error)) => Err(error.into()),
            _ => Err(ProtoError::new(
                ErrorCode::Internal,
                "unexpected directory answer",
            )),
        }
    }

    /// Caches an account as the directory writer answered it (a copy with a newer epoch stays),
    /// noting when.
    async fn store_from_writer(&self, info: &wire::AccountInfo) -> Result<(), ProtoError> {
        let record = record_of(info);
        self.inner
            .db
            .transact(|tx| {
                let record = record.clone();
                async move { directory::put_account(&tx, &record).await }
            })
            .await
            .map_err(store_failure)?;
        self.inner
            .refreshed
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(record.id, (), self.inner.clock.now_ms());
        Ok(())
    }

    /// Asks the directory writer for `account` again, in the background, unless it was asked
    /// within [`ACCOUNT_REFRESH_INTERVAL_MS`] or [`ACCOUNT_REFRESHES_IN_FLIGHT_MAX`] refreshes
    /// are under way (a later lookup asks then).
    fn refresh_in_background(&self, account: AccountId) {
        let now_ms = self.inner.clock.now_ms();
        let permit = {
            let mut refreshed = self
                .inner
                .refreshed
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if refreshed.peek(&account, now_ms).is_some() {
                return;
            }
            let Ok(permit) = self.inner.refreshes.clone().try_acquire_owned() else {
                return;
            };
            // Noted now, so the lookups meanwhile do not ask too; a failed refresh is tried
            // again an interval later.
            refreshed.insert(account, (), now_ms);
            permit
        };
        let service = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let request = RegionRequest {
                body: Some(region_request::Body::LookupAccount(wire::LookupAccount {
                    account: account.0,
                })),
            };
            let refreshed = match service.to_writer(&request).await.map(|answer| answer.body) {
                Ok(Some(region_response::Body::Account(info))) => {
                    service.store_from_writer(&info).await
                }
                Ok(Some(region_response::Body::Error(error))) => Err(error.into()),
                Ok(_) => Err(ProtoError::new(
                    ErrorCode::Internal,
                    "unexpected directory answer",
                )),
                Err(error) => Err(error),
            };
            if let Err(error) = refreshed {
                tracing::debug!(%account, %error, "could not refresh a cached account");
            }
        });
    }

    /// One request to the directory writer, answered within [`REGION_PEER_REQUEST_TIMEOUT_MS`]
    /// (connecting included), so the edge still hears from this region in time: a writer that
    /// cannot be reached or does not answer is `DirectoryUnavailable`.
    pub(super) async fn to_writer(
        &self,
        request: &RegionRequest,
    ) -> Result<RegionResponse, ProtoError> {
        let writer = self.inner.writer;
        let timeout = Duration::from_millis(REGION_PEER_REQUEST_TIMEOUT_MS);
        let asked = tokio::time::timeout(
            timeout,
            self.inner.peers.request(writer.0, request, timeout),
        )
        .await;
        let problem = match asked {
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(error @ NetError::Frame(_))) => return Err(error.to_proto()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => {
                self.inner.peers.forget(writer.0).await;
                NetError::Timeout.to_string()
            }
        };
        tracing::warn!(%writer, %problem, "the directory writer did not answer");
        Err(ProtoError::new(
            ErrorCode::DirectoryUnavailable,
            format!("region {writer} did not answer"),
        ))
    }
}
