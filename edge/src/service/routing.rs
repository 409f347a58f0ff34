//! A device request's way to its regions: the account's home (cached, learned from answers,
//! followed when it moves), the request sent to the home or to every region it concerns and
//! the answers combined, sends committed in their home with the outcome handled, and blob
//! streams copied both ways.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_net::{self as net, NetError};
use relay_proto::limits::{
    BLOB_STREAM_IDLE_TIMEOUT_MS, EDGE_ANSWER_TIMEOUT_MS, EDGE_REGION_REQUEST_TIMEOUT_MS,
};
use relay_proto::wire::{
    self, ClientRequest, ClientResponse, RegionRequest, RegionResponse, client_request,
    client_response, region_request, region_response,
};
use relay_proto::{AccountId, DeviceAddress, DeviceId, ErrorCode, ProtoError, RegionId};
use tokio::task::JoinSet;

use super::{EdgeService, error_response};
use crate::cache::Home;
use crate::limits::{
    MOVED_HOME_UNKNOWN_RETRY_AFTER_MS, OVERLOADED_RETRY_AFTER_MS, SEND_ROUTE_ROUNDS_MAX,
};
use crate::session::{Route, SendAggregate, Session, fanout_regions};

/// What a device's request may teach the key cache once a region accepted it.
enum KeyNews {
    /// A registration: the new device's key and key counts.
    Registered {
        signing_key: Vec<u8>,
        one_time_keys: usize,
        fallback_key: bool,
    },
    /// A fetch that acknowledged entries up to `highest_acked` (0: none).
    Fetched { highest_acked: u64 },
    /// An envelope numbered `device_seq`.
    Sent { device_seq: u64 },
    /// The removal of the account's device number `device`.
    Removed { device: u32 },
    /// Nothing.
    Nothing,
}

impl KeyNews {
    fn of(request: &ClientRequest) -> Self {
        use client_request::Body as Req;
        match &request.body {
            Some(Req::Register(register)) => KeyNews::Registered {
                signing_key: register.signing_key.clone(),
                one_time_keys: register.one_time_keys.len(),
                fallback_key: register.fallback_key.is_some(),
            },
            Some(Req::FetchQueue(fetch)) => KeyNews::Fetched {
                highest_acked: fetch
                    .ack
                    .as_ref()
                    .and_then(|ack| ack.queue_seqs.iter().max().copied())
                    .unwrap_or(0),
            },
            Some(Req::Send(envelope)) => KeyNews::Sent {
                device_seq: envelope.device_seq,
            },
            Some(Req::Devices(wire::DeviceCommand {
                command: Some(wire::device_command::Command::Remove(remove)),
            })) => KeyNews::Removed {
                device: remove.device,
            },
            _ => KeyNews::Nothing,
        }
    }
}

/// What asking a region where an account it refused lives now (`EdgeService::follow_move`)
/// taught the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Followed {
    /// The account lives in another region now (cached).
    Elsewhere,
    /// The region says it lives there, or nowhere: its refusal stands.
    Nowhere,
    /// The region did not say (unreachable, failing, or naming a region this edge does not
    /// know): the account moved, but where to is not known yet.
    Unknown,
}

/// The answer to a request for `account` that `region` refused as not homed there when the
/// edge could not learn where it lives now: retryable, since the account exists and moved (a
/// device that took the refusal for good would give up a message that may be committed).
fn home_unknown(account: AccountId, region: RegionId) -> ProtoError {
    ProtoError::new(
        ErrorCode::Unavailable,
        format!(
            "account {account} moved away from region {region}, and its new home is not known \
             here yet; retry later"
        ),
    )
    .with_retry_after_ms(MOVED_HOME_UNKNOWN_RETRY_AFTER_MS)
}

/// Whether a region's `error` to a request of a device refuses the device itself (removed, or
/// its state went back), so that its cached key must go.
pub(super) fn is_refusal_of_the_device(error: &ProtoError) -> bool {
    matches!(
        error.code,
        ErrorCode::UnknownAccount | ErrorCode::DeviceRolledBack
    )
}

/// Runs `work` (requests to regions on a device's behalf) for at most
/// [`EDGE_ANSWER_TIMEOUT_MS`], so the device always gets an answer before its own request
/// timeout: past it, the regions are `Overloaded`. What the regions still do is idempotent
/// (a retried send is deduplicated by its client message id).
pub(super) async fn within_answer_timeout<T>(
    work: impl Future<Output = Result<T, ProtoError>>,
) -> Result<T, ProtoError> {
    tokio::time::timeout(Duration::from_millis(EDGE_ANSWER_TIMEOUT_MS), work)
        .await
        .unwrap_or_else(|_| {
            Err(ProtoError::new(
                ErrorCode::Overloaded,
                format!(
                    "the regions did not answer within {:.1} s",
                    EDGE_ANSWER_TIMEOUT_MS as f64 / 1000.0
                ),
            )
            .with_retry_after_ms(OVERLOADED_RETRY_AFTER_MS))
        })
}

/// Copies a stream's bytes to another until it finishes; an error when either side broke.
async fn copy_stream(
    from: &mut quinn::RecvStream,
    to: &mut quinn::SendStream,
) -> Result<(), NetError> {
    loop {
        let chunk = tokio::time::timeout(
            Duration::from_millis(BLOB_STREAM_IDLE_TIMEOUT_MS),
            from.read_chunk(usize::MAX, true),
        )
        .await
        .map_err(|_| NetError::Timeout)?
        .map_err(|error| NetError::Io(std::io::Error::other(error)))?;
        match chunk {
            Some(chunk) => to
                .write_chunk(chunk.bytes)
                .await
                .map_err(|error| NetError::Io(std::io::Error::other(error)))?,
            None => return Ok(()),
        }
    }
}

pub(super) fn unexpected_answer() -> ProtoError {
    ProtoError::new(ErrorCode::Internal, "unexpected answer from a region")
}

fn region_unreachable(region: RegionId, problem: &str) -> ProtoError {
    ProtoError::new(
        ErrorCode::Unavailable,
        format!("region {region} is unreachable ({problem})"),
    )
}

impl EdgeService {
    /// The home region of `account`: cached, else asked of this edge's region (see
    /// [`HomeCache`]).
    pub(super) async fn home_of(&self, account: AccountId) -> Result<RegionId, ProtoError> {
        let cached = self
            .inner
            .homes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .home(account, self.inner.clock.now_ms());
        if let Some(home) = cached {
            return Ok(home);
        }
        let lookup =
            region_request::Body::LookupAccount(wire::LookupAccount { account: account.0 });
        let info = match self.region_request(self.inner.region, lookup).await? {
            region_response::Body::Account(info) => info,
            _ => {
                return Err(ProtoError::new(
                    ErrorCode::Internal,
                    "unexpected answer to an account lookup",
                ));
            }
        };
        let home = RegionId(info.region);
        if !self.inner.regions.contains(&home) {
            return Err(ProtoError::new(
                ErrorCode::Unavailable,
                format!("account {account} lives in unknown region {home}"),
            ));
        }
        Ok(self.learn_home(&info))
    }

    /// `region` refused `account` as not homed there (the edge forgot the home that sent the
    /// request there): asks that region where the account lives now (it moved the account
    /// away, so its copy of the directory knows; this edge's own region's copy may not yet)
    /// and caches the answer.
    async fn follow_move(&self, account: AccountId, region: RegionId) -> Followed {
        let lookup =
            region_request::Body::LookupAccount(wire::LookupAccount { account: account.0 });
        let info = match self.region_request(region, lookup).await {
            Ok(region_response::Body::Account(info)) => info,
            Ok(_) => return Followed::Unknown,
            Err(error) if error.code == ErrorCode::UnknownAccount => return Followed::Nowhere,
            Err(_) => return Followed::Unknown,
        };
        let home = RegionId(info.region);
        if home == region {
            return Followed::Nowhere;
        }
        if !self.inner.regions.contains(&home) {
            return Followed::Unknown;
        }
        self.learn_home(&info);
        Followed::Elsewhere
    }

    /// Whether the cache names a home for `account` other than `region` now.
    fn cached_elsewhere(&self, account: AccountId, region: RegionId) -> bool {
        self.inner
            .homes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .home(account, self.inner.clock.now_ms())
            .is_some_and(|home| home != region)
    }

    /// Caches a home the directory answered (an older epoch than the cached one never wins).
    pub(super) fn learn_home(&self, info: &wire::AccountInfo) -> RegionId {
        let home = Home {
            region: RegionId(info.region),
            epoch: info.epoch,
        };
        self.inner
            .homes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .handle_lookup(AccountId(info.account), home, self.inner.clock.now_ms())
    }

    /// `region` refused `account` as not homed there: forgets the cached home that sent the
    /// request there (a newer one, from the region's notice of a move, stays).
    fn forget_home(&self, account: AccountId, region: RegionId) {
        self.inner
            .homes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .handle_not_homed(account, region, self.inner.clock.now_ms());
    }

    /// One request to the home region of `account`, answered with that region. If the cached
    /// home refuses the account as not homed there, the edge forgets it, asks that region where
    /// the account lives now (unless the region's notice of the move told it already), and
    /// tries once more there.
    pub(super) async fn to_home(
        &self,
        account: AccountId,
        body: region_request::Body,
    ) -> Result<(RegionId, region_response::Body), ProtoError> {
        let home = self.home_of(account).await?;
        // Built once: the retry at a moved home sends the same request, not a copy of it.
        let request = RegionRequest { body: Some(body) };
        match self.exchange(home, &request).await {
            Err(error) if error.code == ErrorCode::UnknownAccount => {
                self.forget_home(account, home);
                if !self.cached_elsewhere(account, home)
                    && self.follow_move(account, home).await == Followed::Unknown
                {
                    return Err(home_unknown(account, home));
                }
                let now_home = self.home_of(account).await?;
                if now_home == home {
                    return Err(error);
                }
                tracing::info!(%account, from = %home, to = %now_home, "following a moved home");
                let answer = self.exchange(now_home, &request).await?;
                Ok((now_home, answer))
            }
            answer => answer.map(|answer| (home, answer)),
        }
    }

    /// One request to `region`, answered within [`EDGE_REGION_REQUEST_TIMEOUT_MS`] (connecting
    /// included): a region that cannot be reached is `Unavailable`; a connected region that does
    /// not answer in time is `Overloaded`, with a hint of when to retry. Either way the link is
    /// dropped, so the next request connects afresh.
    pub(super) async fn region_request(
        &self,
        region: RegionId,
        body: region_request::Body,
    ) -> Result<region_response::Body, ProtoError> {
        self.exchange(region, &RegionRequest { body: Some(body) })
            .await
    }

    /// [`Self::region_request`] of a request built by the caller, which may send it again (to a
    /// moved home) or to several regions (an envelope's commit) without copying it.
    async fn exchange(
        &self,
        region: RegionId,
        request: &RegionRequest,
    ) -> Result<region_response::Body, ProtoError> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(EDGE_REGION_REQUEST_TIMEOUT_MS);
        let links = &self.inner.links;
        let mut attempts = 0;
        let response: RegionResponse = loop {
            attempts += 1;
            let connection =
                match tokio::time::timeout_at(deadline, links.connection(region.0)).await {
                    Ok(Ok(connection)) => connection,
                    Ok(Err(NetError::Remote(error))) => return Err(error),
                    Ok(Err(NetError::Timeout)) | Err(_) => {
                        return Err(region_unreachable(
                            region,
                            "it does not answer the handshake",
                        ));
                    }
                    Ok(Err(error)) => return Err(region_unreachable(region, &error.to_string())),
                };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match net::request(&connection, request, left).await {
                Ok(response) => break response,
                Err(NetError::Timeout) => {
                    links.forget(region.0).await;
                    return Err(ProtoError::new(
                        ErrorCode::Overloaded,
                        format!(
                            "region {region} did not answer within {:.1} s",
                            EDGE_REGION_REQUEST_TIMEOUT_MS as f64 / 1000.0
                        ),
                    )
                    .with_retry_after_ms(OVERLOADED_RETRY_AFTER_MS));
                }
                Err(error @ (NetError::Frame(_) | NetError::Remote(_))) => {
                    return Err(error.to_proto());
                }
                Err(error) => {
                    links.forget(region.0).await;
                    // The region moved while the request was under way (its standby took
                    // over, planned or not): the request goes to the new address at once,
                    // instead of failing back to the device. Every region request is safe to
                    // repeat: the device would send it again the same way.
                    if links.retry_at_new_address(region.0, connection.remote_address(), attempts) {
                        continue;
                    }
                    return Err(region_unreachable(region, &error.to_string()));
                }
            }
        };
        match response.body {
            Some(region_response::Body::Error(error)) => Err(error.into()),
            Some(body) => Ok(body),
            None => Err(ProtoError::new(
                ErrorCode::Internal,
                "empty answer from a region",
            )),
        }
    }

    /// Answers one request of a device: waits for the confirmation of a login from the key
    /// cache where the request needs it, routes it, and keeps the key cache in step with what
    /// the regions answered.
    pub(super) async fn handle_request(
        &self,
        session: &Mutex<Session>,
        request: ClientRequest,
    ) -> Result<client_response::Body, ProtoError> {
        let (needs_confirmation, device) = {
            let session = session.lock().unwrap_or_else(|poison| poison.into_inner());
            (session.needs_confirmation(&request), session.device())
        };
        if needs_confirmation && let Some(device) = device {
            self.confirm(session, device).await?;
        }
        let news = KeyNews::of(&request);
        let answer = self.route_request(session, request).await;
        let now_ms = self.inner.clock.now_ms();
        match (&answer, device) {
            (Ok(body), _) => self.learn(news, device, body, now_ms),
            (Err(error), Some(device)) if is_refusal_of_the_device(error) => {
                self.keys().forget(device);
            }
            (Err(_), _) => {}
        }
        answer
    }

    /// Keeps the key cache in step with a region's answer `body` to a request of `device` (if
    /// authenticated) that carried `news`.
    fn learn(
        &self,
        news: KeyNews,
        device: Option<DeviceAddress>,
        body: &client_response::Body,
        now_ms: u64,
    ) {
        use client_response::Body as Resp;
        match (news, body, device) {
            (
                KeyNews::Registered {
                    signing_key,
                    one_time_keys,
                    fallback_key,
                },
                Resp::Registered(registered),
                _,
            ) => {
                let account = AccountId(registered.account.account);
                let new_device = DeviceAddress {
                    account,
                    device: DeviceId(registered.device),
                };
                self.keys().handle_registered(
                    new_device,
                    &signing_key,
                    one_time_keys,
                    fallback_key,
                    now_ms,
                );
                let home = Home {
                    region: RegionId(registered.account.region),
                    epoch: registered.account.epoch,
                };
                if self.inner.regions.contains(&home.region) {
                    self.inner
                        .homes
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner())
                        .handle_lookup(account, home, now_ms);
                }
            }
            (KeyNews::Fetched { highest_acked }, Resp::Queue(batch), Some(device)) => {
                let counts = wire::OneTimeKeyCount {
                    remaining: batch.one_time_keys_remaining,
                    fallback_key: batch.fallback_key,
                    cached: false,
                };
                // No entry above the queue's latest was ever acknowledged.
                let highest_acked = highest_acked.min(batch.latest_queue_seq);
                self.keys()
                    .handle_fetched(device, highest_acked, counts, now_ms);
            }
            (KeyNews::Sent { device_seq }, Resp::Sent(outcome), Some(device)) => {
                if let Some(wire::send_outcome::Outcome::Sent(_)) = outcome.outcome {
                    self.keys().handle_stored(device, device_seq, now_ms);
                }
            }
            (KeyNews::Removed { device: removed }, Resp::Devices(_), Some(device)) => {
                self.keys().forget(DeviceAddress {
                    account: device.account,
                    device: DeviceId(removed),
                });
            }
            (_, Resp::KeysUploaded(counts), Some(device)) => {
                self.keys()
                    .handle_keys_uploaded(device, counts.clone(), now_ms);
            }
            _ => {}
        }
    }

    async fn route_request(
        &self,
        session: &Mutex<Session>,
        request: ClientRequest,
    ) -> Result<client_response::Body, ProtoError> {
        use client_request::Body as Req;
        use client_response::Body as Resp;
        let route = session
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .handle_request(&request, self.inner.clock.now_ms())?;
        let Some(body) = request.body else {
            return Err(crate::session::unsupported_request());
        };
        match (route, body) {
            (Route::OwnRegion, Req::Register(register)) => {
                match self
                    .region_request(self.inner.region, region_request::Body::Register(register))
                    .await?
                {
                    region_response::Body::Registered(registered) => {
                        Ok(Resp::Registered(registered))
                    }
                    _ => Err(unexpected_answer()),
                }
            }
            (Route::OwnRegion, Req::LookupName(lookup)) => {
                match self
                    .region_request(self.inner.region, region_request::Body::LookupName(lookup))
                    .await?
                {
                    region_response::Body::Account(info) => Ok(Resp::Account(info)),
                    _ => Err(unexpected_answer()),
                }
            }
            (Route::OwnRegion, Req::LookupAccount(lookup)) => {
                match self
                    .region_request(
                        self.inner.region,
                        region_request::Body::LookupAccount(lookup),
                    )
                    .await?
                {
                    region_response::Body::Account(info) => Ok(Resp::Account(info)),
                    _ => Err(unexpected_answer()),
                }
            }
            (Route::Claim { account, claimer }, Req::ClaimKeys(mut claim)) => {
                claim.claimer = Some(claimer.into());
                match self
                    .to_home(account, region_request::Body::ClaimKeys(claim))
                    .await?
                {
                    (_, region_response::Body::Keys(bundle)) => Ok(Resp::Keys(bundle)),
                    _ => Err(unexpected_answer()),
                }
            }
            (Route::DeviceHome(device), Req::UploadOneTimeKeys(upload)) => {
                let request = wire::ForDevice {
                    device: device.into(),
                    upload: Some(upload),
                    fetch: None,
                    devices: None,
                    presence_privacy: None,
                    push: None,
                    block: None,
                };
                match self
                    .to_home(
                        device.account,
                        region_request::Body::UploadOneTimeKeys(request),
                    )
                    .await?
                {
                    (_, region_response::Body::KeysUploaded(count)) => {
                        Ok(Resp::KeysUploaded(count))
                    }
                    _ => Err(unexpected_answer()),
                }
            }
            (Route::DeviceHome(device), Req::FetchQueue(fetch)) => {
                let acks_only = fetch.fetch.is_none() && fetch.ack.is_some();
                let request = wire::ForDevice {
                    device: device.into(),
                    upload: None,
                    fetch: Some(fetch),
                    devices: None,
                    presence_privacy: None,
                    push: None,
                    block: None,
                };
                if acks_only {
                    self.ack_gathered(device.account, request).await
                } else {
                    self.fetch_at_home(device.account, request).await
                }
                .map(Resp::Queue)
            }
            (Route::Region(region), Req::RequestLink(link)) => {
                match self
                    .region_request(region, region_request::Body::RequestLink(link))
                    .await?
                {
                    region_response::Body::LinkStatus(status) => Ok(Resp::LinkStatus(status)),
                    _ => Err(unexpected_answer()),
                }
            }
            (Route::DeviceHome(device), Req::Devices(command)) => {
                let request = wire::ForDevice {
                    device: device.into(),
                    upload: None,
                    fetch: None,
                    devices: Some(command),
                    presence_privacy: None,
                    push: None,
                    block: None,
                };
                match self
                    .to_home(device.account, region_request::Body::Devices(request))
                    .await?
                {
                    (_, region_response::Body::Pairing(pairing)) => Ok(Resp::Pairing(pairing)),
                    (_, region_response::Body::LinkRequests(requests)) => {
                        Ok(Resp::LinkRequests(requests))
                    }
                    (_, region_response::Body::Devices(devices)) => Ok(Resp::Devices(devices)),
                    _ => Err(unexpected_answer()),
                }
            }
            (Route::DeviceHome(device), Req::Group(command)) => {
                // The account acts as the authenticated device's, whatever the request says.
                let request = wire::ForGroup {
                    account: device.account.0,
                    command,
                };
                // Not `to_home`: a group command's `UnknownAccount` names an account to add,
                // not a home that moved, and any region would forward the command to the
                // directory writer anyway.
                let home = self.home_of(device.account).await?;
                match self
                    .region_request(home, region_request::Body::Group(request))
                    .await?
                {
                    region_response::Body::Group(info) => Ok(Resp::Group(info)),
                    region_response::Body::Groups(list) => Ok(Resp::Groups(list)),
                    _ => Err(unexpected_answer()),
                }
            }
            (Route::Blob { device, region }, Req::Blob(command)) => {
                let request = region_request::Body::Blob(wire::ForBlob {
                    device: device.into(),
                    command,
                });
                let answer = match region {
                    Some(region) => self.region_request(region, request).await?,
                    None => self.to_home(device.account, request).await?.1,
                };
                match answer {
                    region_response::Body::Blob(status) => Ok(Resp::Blob(status)),
                    _ => Err(unexpected_answer()),
                }
            }
            (Route::DeviceHome(device), Req::Block(request)) => {
                let request = wire::ForDevice {
                    device: device.into(),
                    block: Some(request),
                    ..wire::ForDevice::default()
                };
                match self
                    .to_home(device.account, region_request::Body::Block(request))
                    .await?
                {
                    (_, region_response::Body::Blocked(list)) => Ok(Resp::Blocked(list)),
                    _ => Err(unexpected_answer()),
                }
            }
            (Route::DeviceHome(device), Req::Push(request)) => {
                let request = wire::ForDevice {
                    device: device.into(),
                    push: Some(request),
                    ..wire::ForDevice::default()
                };
                match self
                    .to_home(device.account, region_request::Body::Push(request))
                    .await?
                {
                    (_, region_response::Body::Push(state)) => Ok(Resp::Push(state)),
                    _ => Err(unexpected_answer()),
                }
            }
            (Route::DeviceHome(device), Req::PresencePrivacy(request)) => {
                let request = wire::ForDevice {
                    device: device.into(),
                    presence_privacy: Some(request),
                    ..wire::ForDevice::default()
                };
                match self
                    .to_home(
                        device.account,
                        region_request::Body::PresencePrivacy(request),
                    )
                    .await?
                {
                    (_, region_response::Body::PresencePrivacy(privacy)) => {
                        Ok(Resp::PresencePrivacy(privacy))
                    }
                    _ => Err(unexpected_answer()),
                }
            }
            (
                Route::Watch {
                    watcher,
                    account,
                    watch,
                },
                Req::WatchPresence(request),
            ) => {
                self.watch(watcher, account, watch).await?;
                Ok(Resp::Watching(request))
            }
            (Route::Typing { from, to, typing }, Req::Typing(signal)) => {
                let home = self.home_of(to).await?;
                // Ephemeral: a region this edge cannot reach now never hears of it.
                if let Some(subscription) = self.inner.subscriptions.get(&home) {
                    subscription.handle_typing(wire::TypingForward {
                        from: from.into(),
                        to: to.0,
                        typing,
                        group: 0,
                    });
                }
                Ok(Resp::TypingSent(signal))
            }
            (
                Route::GroupTyping {
                    from,
                    group,
                    typing,
                },
                Req::Typing(signal),
            ) => {
                // The edge does not know where the members are homed: every region hears it
                // and passes it to the members homed there (ephemeral: a region this edge
                // cannot reach now never does).
                for subscription in self.inner.subscriptions.values() {
                    subscription.handle_typing(wire::TypingForward {
                        from: from.into(),
                        to: 0,
                        typing,
                        group: group.0,
                    });
                }
                Ok(Resp::TypingSent(signal))
            }
            (Route::Fanout(parsed), Req::Send(envelope)) => {
                self.send(*parsed, envelope).await.map(Resp::Sent)
            }
            _ => Err(ProtoError::new(
                ErrorCode::Internal,
                "request routed inconsistently",
            )),
        }
    }

    /// Carries a device's upload or download stream to the region: the request frame, then the
    /// raw bytes one way and the region's answer the other. A device stream that breaks resets
    /// the region's, so the region keeps only the units it committed.
    pub(super) async fn blob_stream(
        &self,
        device: DeviceAddress,
        region: Option<RegionId>,
        command: wire::BlobCommand,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let upload = matches!(
            command.command,
            Some(wire::blob_command::Command::Upload(_))
        );
        let opened = within_answer_timeout(async {
            let region = match region {
                Some(region) => region,
                None => self.home_of(device.account).await?,
            };
            let connection = self
                .inner
                .links
                .connection(region.0)
                .await
                .map_err(|error| region_unreachable(region, &error.to_string()))?;
            let (mut region_send, region_recv) = connection
                .open_bi()
                .await
                .map_err(|error| region_unreachable(region, &error.to_string()))?;
            let request = RegionRequest {
                body: Some(region_request::Body::Blob(wire::ForBlob {
                    device: device.into(),
                    command,
                })),
            };
            net::write_frame(&mut region_send, &request)
                .await
                .map_err(|error| region_unreachable(region, &error.to_string()))?;
            Ok((region_send, region_recv))
        })
        .await;
        let (mut region_send, mut region_recv) = match opened {
            Ok(streams) => streams,
            Err(error) => {
                let _ = net::respond(send, &error_response(error)).await;
                return;
            }
        };
        if upload && copy_stream(&mut recv, &mut region_send).await.is_ok() {
            let _ = region_send.finish();
        } else if upload {
            // The device's stream broke (the region keeps what it committed), or the region
            // stopped reading (a refusal): either way the region's answer says where the upload
            // stands, and goes to the device if it is still there.
            let _ = region_send.reset(0u32.into());
        } else {
            let _ = region_send.finish();
        }
        let head = match tokio::time::timeout(
            Duration::from_millis(BLOB_STREAM_IDLE_TIMEOUT_MS),
            net::read_frame::<RegionResponse>(&mut region_recv),
        )
        .await
        {
            Ok(Ok(Some(RegionResponse {
                body: Some(region_response::Body::Blob(status)),
            }))) => client_response::Body::Blob(status),
            Ok(Ok(Some(RegionResponse {
                body: Some(region_response::Body::Error(error)),
            }))) => client_response::Body::Error(error),
            Ok(Ok(_)) => client_response::Body::Error(
                ProtoError::new(ErrorCode::Internal, "unexpected answer from a region").into(),
            ),
            Ok(Err(error)) => client_response::Body::Error(
                ProtoError::new(
                    ErrorCode::Unavailable,
                    format!("the region's stream broke: {error}"),
                )
                .into(),
            ),
            Err(_) => client_response::Body::Error(
                ProtoError::new(
                    ErrorCode::Overloaded,
                    "the region did not answer the blob stream",
                )
                .with_retry_after_ms(OVERLOADED_RETRY_AFTER_MS)
                .into(),
            ),
        };
        let failed = matches!(head, client_response::Body::Error(_));
        let head = ClientResponse { body: Some(head) };
        if upload || failed {
            let _ = net::respond(send, &head).await;
            return;
        }
        if net::write_frame(&mut send, &head).await.is_err() {
            return;
        }
        if copy_stream(&mut region_recv, &mut send).await.is_ok() {
            let _ = send.finish();
        } else {
            let _ = send.reset(0u32.into());
        }
    }

    /// Forwards an envelope to every destination region in parallel; "sent" only when all
    /// of them committed. A region refusing an account the edge routed there as not homed
    /// there (it moved) is asked where the account lives now, and the envelope goes again to
    /// the regions as they are then (those that committed answer it as a duplicate), up to
    /// [`SEND_ROUTE_ROUNDS_MAX`] times. A commit is refused `UnknownAccount` only for an
    /// account that moved (a region skips recipients it does not hold, and the sender is
    /// authenticated), so a refusal the edge could not route around is answered `Unavailable`,
    /// never passed on: a device takes `UnknownAccount` for good and would give up an envelope
    /// that may be committed.
    async fn send(
        &self,
        parsed: wire::ParsedEnvelope,
        envelope: wire::Envelope,
    ) -> Result<wire::SendOutcome, ProtoError> {
        let mut commit = RegionRequest {
            body: Some(region_request::Body::Commit(wire::CommitEnvelope {
                envelope,
                sender_region: 0,
                routed: Vec::new(),
            })),
        };
        let mut round = 1;
        loop {
            let (outcome, refused) = self.send_once(&parsed, &mut commit).await?;
            let Some(&(first, first_region)) = refused.first() else {
                return outcome;
            };
            let mut moved = false;
            for (account, region) in refused {
                // The region's notice of the move may have taught the cache already.
                moved |= self.cached_elsewhere(account, region)
                    || self.follow_move(account, region).await == Followed::Elsewhere;
            }
            if !moved || round == SEND_ROUTE_ROUNDS_MAX {
                return Err(home_unknown(first, first_region));
            }
            round += 1;
        }
    }

    /// One round of [`Self::send`]: the outcome, and the accounts a region refused as not
    /// homed there (with that region), which the edge has forgotten.
    async fn send_once(
        &self,
        parsed: &wire::ParsedEnvelope,
        commit: &mut RegionRequest,
    ) -> Result<
        (
            Result<wire::SendOutcome, ProtoError>,
            Vec<(AccountId, RegionId)>,
        ),
        ProtoError,
    > {
        let mut homes = BTreeMap::new();
        for &account in parsed
            .recipient_accounts
            .iter()
            .chain(std::iter::once(&parsed.sender.account))
        {
            homes.insert(account, self.home_of(account).await?);
        }
        let regions = fanout_regions(parsed, &homes)?;
        let sender_region = homes
            .get(&parsed.sender.account)
            .copied()
            .unwrap_or(self.inner.region);
        if let Some(region_request::Body::Commit(body)) = &mut commit.body {
            body.sender_region = sender_region.0;
            body.routed = homes
                .iter()
                .map(|(account, region)| wire::RoutedHome {
                    account: account.0,
                    region: region.0,
                })
                .collect();
        }
        let mut aggregate = SendAggregate::new(regions.clone());
        let mut refused = Vec::new();
        if let Some(&region) = regions.first()
            && regions.len() == 1
        {
            // The usual case (every account homed in one region): committed in this task, as
            // a task of its own would only add a spawn and a wake-up.
            let outcome = self.commit(region, commit).await;
            self.handle_commit_outcome(&homes, &mut aggregate, &mut refused, region, outcome);
        } else {
            // One request for every destination: the regions share it instead of a copy each.
            let shared = Arc::new(std::mem::take(commit));
            let mut commits = JoinSet::new();
            for region in regions {
                let service = self.clone();
                let shared = shared.clone();
                commits.spawn(async move { (region, service.commit(region, &shared).await) });
            }
            let mut failed = None;
            while let Some(joined) = commits.join_next().await {
                match joined {
                    Ok((region, outcome)) => {
                        self.handle_commit_outcome(
                            &homes,
                            &mut aggregate,
                            &mut refused,
                            region,
                            outcome,
                        );
                    }
                    Err(error) => failed = Some(error),
                }
            }
            // Every task ended: the request is the edge's alone again.
            *commit = Arc::try_unwrap(shared).unwrap_or_else(|shared| (*shared).clone());
            if let Some(error) = failed {
                return Err(ProtoError::new(
                    ErrorCode::Internal,
                    format!("commit task failed: {error}"),
                ));
            }
        }
        let mut outcome = aggregate.poll_result().unwrap_or_else(|| {
            Err(ProtoError::new(
                ErrorCode::Internal,
                "a destination region never answered",
            ))
        });
        if let Ok(wire::SendOutcome {
            outcome: Some(wire::send_outcome::Outcome::Sent(everywhere)),
        }) = &mut outcome
        {
            everywhere.home_region = sender_region.0;
        }
        Ok((outcome, refused))
    }

    /// One destination region's commit of an envelope (`request`, a `Commit`).
    async fn commit(
        &self,
        region: RegionId,
        request: &RegionRequest,
    ) -> Result<wire::SendOutcome, ProtoError> {
        match self.exchange(region, request).await? {
            region_response::Body::Committed(outcome) => Ok(outcome),
            _ => Err(ProtoError::new(
                ErrorCode::Internal,
                "unexpected answer to a commit",
            )),
        }
    }

    /// Counts `region`'s `outcome` of a send whose accounts live in `homes`. A region that
    /// holds none of the accounts sent there makes the edge forget the homes that named it
    /// (noted in `refused`), so the send is routed afresh.
    fn handle_commit_outcome(
        &self,
        homes: &BTreeMap<AccountId, RegionId>,
        aggregate: &mut SendAggregate,
        refused: &mut Vec<(AccountId, RegionId)>,
        region: RegionId,
        outcome: Result<wire::SendOutcome, ProtoError>,
    ) {
        if let Err(error) = &outcome
            && error.code == ErrorCode::UnknownAccount
        {
            for (&account, &home) in homes {
                if home == region {
                    self.forget_home(account, home);
                    refused.push((account, region));
                }
            }
        }
        aggregate.handle_region_outcome(region, outcome);
    }
}
