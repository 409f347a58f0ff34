//! The edge's per-connection decisions, sans-IO: authentication of a device by a signature over
//! the edge's nonce and the connection's TLS keying material (and the refusal of a device whose
//! state went back: its queue cursor or envelope counter behind what its home region has seen),
//! which requests a connection may make, where each request goes, rate limits, and how the
//! destination regions' answers to one send combine into the device's answer.
//!
//! Inputs come through `handle_*` methods with the time as `now_ms`; randomness (the nonce) and
//! key lookups are done by the shell and passed in. No sockets, tasks or clocks here.

use std::collections::{BTreeMap, BTreeSet};

use relay_proto::limits::AUTH_NONCE_BYTES;
use relay_proto::wire::{
    self, AccountDevices, Authenticate, ClientRequest, GroupChanged, MismatchedDevices,
    ParsedEnvelope, ResendFrom, SendOutcome, SentEverywhere, client_request, send_outcome,
};
use relay_proto::{
    AccountId, DeviceAddress, ErrorCode, GroupId, PairingCode, ProtoError, RegionId,
};

use crate::keys::{DeviceKey, SIGNING_KEY_BYTES};
use crate::limits::{
    REQUESTS_BURST_DEFAULT, REQUESTS_PER_SECOND_DEFAULT, TYPING_BURST, TYPING_PER_SECOND,
};

/// Per-device limits enforced at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Sustained requests per second one connection may make.
    pub requests_per_second: u32,
    /// Requests one connection may make in a burst.
    pub requests_burst: u32,
    /// Sustained new connections per second one source address may open.
    pub connections_per_second_per_address: u32,
    /// New connections one source address may open in a burst.
    pub connections_burst_per_address: u32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            requests_per_second: REQUESTS_PER_SECOND_DEFAULT,
            requests_burst: REQUESTS_BURST_DEFAULT,
            connections_per_second_per_address:
                crate::limits::CONNECTIONS_PER_SECOND_PER_ADDRESS_DEFAULT,
            connections_burst_per_address: crate::limits::CONNECTIONS_BURST_PER_ADDRESS_DEFAULT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    New,
    Challenged {
        nonce: [u8; AUTH_NONCE_BYTES],
    },
    /// In; `unconfirmed` when the login was checked against the edge's key cache and the home
    /// region has not confirmed it yet (boxed: a confirmed session does not carry it).
    Authenticated {
        device: DeviceAddress,
        unconfirmed: Option<Box<Unconfirmed>>,
    },
    /// A confirmation refused the device after it logged in from the cache: every request gets
    /// the refusal.
    Refused {
        error: Box<ProtoError>,
    },
}

/// What a login from the key cache claimed, kept until the home region confirms it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unconfirmed {
    /// The key the signature was verified with.
    signing_key: [u8; SIGNING_KEY_BYTES],
    /// The `next_device_seq` the device reported.
    next_device_seq: Option<u64>,
}

/// What a device's home region has seen of it, reported with its signing key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeenMarks {
    /// The highest queue sequence the device acknowledged.
    pub acked_queue_seq: u64,
    /// The highest `device_seq` of the device's envelopes stored by the region.
    pub device_seq: u64,
}

/// Where the shell must take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To this edge's own region (registration, directory reads).
    OwnRegion,
    /// To the home region of `account`, naming the authenticated `claimer` (key claims are
    /// rate-limited per claimer there).
    Claim {
        /// The account whose keys are claimed.
        account: AccountId,
        /// The device claiming them.
        claimer: DeviceAddress,
    },
    /// To the home region of the connection's own device (queue, key upload, its account's
    /// devices).
    DeviceHome(DeviceAddress),
    /// To the region a pairing code names (a new device asking to be linked, unauthenticated).
    Region(RegionId),
    /// To the home regions of every listed account and of the sender, all in parallel.
    Fanout(Box<ParsedEnvelope>),
    /// A presence watch of `watcher`'s, begun or ended: to `account`'s home region, on this
    /// edge's subscription stream there.
    Watch {
        /// The authenticated device.
        watcher: DeviceAddress,
        /// The watched account.
        account: AccountId,
        /// Begun or ended.
        watch: bool,
    },
    /// A typing indicator of `from`'s for `to`: to `to`'s home region, on this edge's
    /// subscription stream there.
    Typing {
        /// The authenticated device.
        from: DeviceAddress,
        /// The peer account.
        to: AccountId,
        /// Typing or stopped.
        typing: bool,
    },
    /// A typing indicator of `from`'s in `group`'s chat: to every region, on this edge's
    /// subscription streams (each region passes it to the members homed there).
    GroupTyping {
        /// The authenticated device.
        from: DeviceAddress,
        /// The group.
        group: GroupId,
        /// Typing or stopped.
        typing: bool,
    },
    /// A blob request of `device`: to the region holding the blob (a download or a locate
    /// names it), else to the device's home region.
    Blob {
        /// The authenticated device.
        device: DeviceAddress,
        /// The region a download or a locate names; `None`: the device's home.
        region: Option<RegionId>,
    },
}

/// One device connection's state.
#[derive(Debug, Clone)]
pub struct Session {
    state: State,
    limits: SessionLimits,
    requests: Bucket,
    typing: Bucket,
}

/// A token bucket counted in thousandths of a token: refilled at `per_second`, holding at most
/// `burst` tokens (the requests of a connection, its typing indicators, and the new
/// connections of a source address: [`crate::admission`]).
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    tokens_milli: u64,
    refilled_ms: u64,
}

impl Bucket {
    /// A full bucket of `burst` tokens at `now_ms`.
    pub(crate) fn full(burst: u32, now_ms: u64) -> Self {
        Bucket {
            tokens_milli: u64::from(burst) * 1000,
            refilled_ms: now_ms,
        }
    }

    /// Takes a token at `now_ms`; `Err` holds the time until a whole one has refilled (ms,
    /// rounded up).
    pub(crate) fn take(&mut self, now_ms: u64, per_second: u32, burst: u32) -> Result<(), u64> {
        self.tokens_milli = self.refilled(now_ms, per_second, burst);
        self.refilled_ms = self.refilled_ms.max(now_ms);
        if self.tokens_milli < 1000 {
            let rate = u64::from(per_second).max(1);
            return Err((1000 - self.tokens_milli).div_ceil(rate).max(1));
        }
        self.tokens_milli -= 1000;
        Ok(())
    }

    /// Whether the bucket is full again at `now_ms`.
    pub(crate) fn is_full(&self, now_ms: u64, per_second: u32, burst: u32) -> bool {
        self.refilled(now_ms, per_second, burst) == u64::from(burst) * 1000
    }

    /// The tokens (thousandths) at `now_ms`; a clock that steps back adds none.
    fn refilled(&self, now_ms: u64, per_second: u32, burst: u32) -> u64 {
        let elapsed = now_ms.saturating_sub(self.refilled_ms);
        self.tokens_milli
            .saturating_add(elapsed.saturating_mul(u64::from(per_second)))
            .min(u64::from(burst) * 1000)
    }
}

impl Session {
    /// A new connection, unauthenticated, with a full token bucket at `now_ms`.
    pub fn new(limits: SessionLimits, now_ms: u64) -> Self {
        Self {
            state: State::New,
            limits,
            requests: Bucket::full(limits.requests_burst, now_ms),
            typing: Bucket::full(TYPING_BURST, now_ms),
        }
    }

    /// The authenticated device, if any.
    pub fn device(&self) -> Option<DeviceAddress> {
        match self.state {
            State::Authenticated { device, .. } => Some(device),
            _ => None,
        }
    }

    /// A `Hello` opened the control stream: answer with this (shell-generated, random) nonce.
    pub fn handle_hello(
        &mut self,
        nonce: [u8; AUTH_NONCE_BYTES],
    ) -> Result<wire::Challenge, ProtoError> {
        if self.state != State::New {
            return Err(ProtoError::invalid("hello sent twice on one connection"));
        }
        self.state = State::Challenged { nonce };
        Ok(wire::Challenge {
            nonce: nonce.to_vec(),
        })
    }

    /// The device an `Authenticate` claims to be; the shell looks up its signing key next.
    pub fn claimed_device(&self, authenticate: &Authenticate) -> Result<DeviceAddress, ProtoError> {
        if !matches!(self.state, State::Challenged { .. }) {
            return Err(ProtoError::invalid("authenticate before hello, or twice"));
        }
        authenticate.device.parse()
    }

    /// Verifies the proof with the device's registered Ed25519 key and the connection's keying
    /// material, then compares the device's counters with what its home region has `seen`: a
    /// queue cursor behind an entry it acknowledged, or a next `device_seq` not above one it
    /// already used, means its state went back (a data directory restored from a copy), and it
    /// is refused with [`ErrorCode::DeviceRolledBack`] before it can send or acknowledge
    /// anything. A device that does not report a counter is not checked on it. Any refusal
    /// leaves the session unauthenticated.
    pub fn handle_authenticate(
        &mut self,
        authenticate: &Authenticate,
        keying_material: &[u8],
        signing_key: &[u8],
        seen: SeenMarks,
    ) -> Result<DeviceAddress, ProtoError> {
        let device = self.verify(authenticate, keying_material, signing_key, seen)?;
        self.state = State::Authenticated {
            device,
            unconfirmed: None,
        };
        Ok(device)
    }

    /// As [`Session::handle_authenticate`], with the device's key and marks from the edge's
    /// cache (see [`crate::keys`]): the marks may be behind the home region's, so a refusal is
    /// certain but a pass is not. The session is in, unconfirmed: a fetch may go (its region
    /// checks it), and every other request waits until
    /// [`Session::handle_confirmation`] (see [`Session::needs_confirmation`]).
    pub fn handle_authenticate_from_cache(
        &mut self,
        authenticate: &Authenticate,
        keying_material: &[u8],
        cached: &DeviceKey,
    ) -> Result<DeviceAddress, ProtoError> {
        let device = self.verify(
            authenticate,
            keying_material,
            &cached.signing_key,
            cached.seen,
        )?;
        self.state = State::Authenticated {
            device,
            unconfirmed: Some(Box::new(Unconfirmed {
                signing_key: cached.signing_key,
                next_device_seq: authenticate.next_device_seq,
            })),
        };
        Ok(device)
    }

    /// Whether `request` must wait for the home region to confirm a login from the cache: every
    /// request of an unconfirmed session but a fetch, which its region checks itself (a removed
    /// device, a cursor behind an acknowledged entry) before delivering or acknowledging
    /// anything.
    pub fn needs_confirmation(&self, request: &ClientRequest) -> bool {
        let State::Authenticated {
            unconfirmed: Some(_),
            ..
        } = &self.state
        else {
            return false;
        };
        !matches!(
            request.body,
            Some(client_request::Body::FetchQueue(_))
                | Some(client_request::Body::Register(_))
                | Some(client_request::Body::RequestLink(_))
        )
    }

    /// The home region answered the confirmation of a login from the cache with the device's
    /// `signing_key` and what it has `seen` of it (`Err`: its refusal, such as a removed
    /// device's `UnknownAccount`). The key must be the one the login was verified with and the
    /// device's next `device_seq` above every one stored; otherwise the session is refused for
    /// good and every later request gets the same refusal. The queue cursor is not compared:
    /// this connection's own acknowledgements may have moved the region's mark since the login,
    /// and every fetch is checked against it by the region. A confirmed session ignores later
    /// answers.
    pub fn handle_confirmation(
        &mut self,
        answer: Result<(&[u8], SeenMarks), ProtoError>,
    ) -> Result<(), ProtoError> {
        let (device, unconfirmed) = match &self.state {
            State::Authenticated {
                unconfirmed: None, ..
            } => return Ok(()),
            State::Authenticated {
                device,
                unconfirmed: Some(unconfirmed),
            } => (*device, unconfirmed),
            State::Refused { error } => return Err((**error).clone()),
            State::New | State::Challenged { .. } => {
                return Err(ProtoError::new(
                    ErrorCode::Unauthenticated,
                    "authenticate on the control stream first",
                ));
            }
        };
        let checked = answer.and_then(|(signing_key, seen)| {
            if signing_key != unconfirmed.signing_key.as_slice() {
                return Err(ProtoError::new(
                    ErrorCode::BadSignature,
                    format!("device {device} no longer has the key it authenticated with"),
                ));
            }
            if let Some(next) = unconfirmed.next_device_seq
                && next <= seen.device_seq
            {
                return Err(rolled_back(
                    device,
                    format!(
                        "its next envelope would be number {next}, but number {} is stored",
                        seen.device_seq
                    ),
                ));
            }
            Ok(())
        });
        match checked {
            Ok(()) => {
                self.state = State::Authenticated {
                    device,
                    unconfirmed: None,
                };
                Ok(())
            }
            Err(error) => {
                self.state = State::Refused {
                    error: Box::new(error.clone()),
                };
                Err(error)
            }
        }
    }

    /// Checks an `Authenticate` against `signing_key` and `seen`; see
    /// [`Session::handle_authenticate`].
    fn verify(
        &mut self,
        authenticate: &Authenticate,
        keying_material: &[u8],
        signing_key: &[u8],
        seen: SeenMarks,
    ) -> Result<DeviceAddress, ProtoError> {
        let device = self.claimed_device(authenticate)?;
        let State::Challenged { nonce } = self.state else {
            return Err(ProtoError::invalid("authenticate before hello"));
        };
        let bad = || {
            ProtoError::new(
                ErrorCode::BadSignature,
                "the authentication signature does not verify",
            )
        };
        let key_bytes: &[u8; 32] = signing_key.try_into().map_err(|_| bad())?;
        let key = vodozemac::Ed25519PublicKey::from_slice(key_bytes).map_err(|_| bad())?;
        let signature =
            vodozemac::Ed25519Signature::from_slice(&authenticate.signature).map_err(|_| bad())?;
        let payload = wire::auth_signing_payload(&nonce, keying_material);
        key.verify(&payload, &signature).map_err(|_| bad())?;
        if let Some(cursor) = authenticate.queue_cursor
            && cursor < seen.acked_queue_seq
        {
            return Err(rolled_back(
                device,
                format!(
                    "queue cursor {cursor}, but it acknowledged entry {}",
                    seen.acked_queue_seq
                ),
            ));
        }
        if let Some(next) = authenticate.next_device_seq
            && next <= seen.device_seq
        {
            return Err(rolled_back(
                device,
                format!(
                    "its next envelope would be number {next}, but number {} is stored",
                    seen.device_seq
                ),
            ));
        }
        Ok(device)
    }

    /// Decides whether a request may proceed and where it goes.
    pub fn handle_request(
        &mut self,
        request: &ClientRequest,
        now_ms: u64,
    ) -> Result<Route, ProtoError> {
        use client_request::Body;
        let Some(body) = &request.body else {
            // prost reads a kind it does not know as no body at all.
            return Err(unsupported_request());
        };
        if let State::Refused { error } = &self.state {
            return Err((**error).clone());
        }
        self.take_token(now_ms)?;
        match body {
            Body::Register(_) => return Ok(Route::OwnRegion),
            Body::RequestLink(link) => {
                let code: PairingCode = link.code.parse()?;
                return Ok(Route::Region(code.region));
            }
            _ => {}
        }
        let device = self.device().ok_or_else(|| {
            ProtoError::new(
                ErrorCode::Unauthenticated,
                "authenticate on the control stream first",
            )
        })?;
        match body {
            Body::Hello(_) | Body::Authenticate(_) => Err(ProtoError::invalid(
                "hello and authenticate belong on the control stream",
            )),
            Body::Register(_) | Body::LookupName(_) | Body::LookupAccount(_) => {
                Ok(Route::OwnRegion)
            }
            Body::ClaimKeys(claim) => Ok(Route::Claim {
                account: AccountId(claim.account),
                claimer: device,
            }),
            Body::UploadOneTimeKeys(_)
            | Body::FetchQueue(_)
            | Body::Devices(_)
            | Body::PresencePrivacy(_)
            | Body::Push(_)
            | Body::Block(_) => Ok(Route::DeviceHome(device)),
            Body::WatchPresence(watch) => {
                if watch.account == 0 {
                    return Err(ProtoError::invalid("a watch of account 0"));
                }
                Ok(Route::Watch {
                    watcher: device,
                    account: AccountId(watch.account),
                    watch: watch.watch,
                })
            }
            Body::Typing(signal) if signal.group != 0 => {
                if signal.peer != 0 {
                    return Err(ProtoError::invalid(
                        "a typing indicator names a peer or a group, not both",
                    ));
                }
                self.take_typing_token(now_ms)?;
                Ok(Route::GroupTyping {
                    from: device,
                    group: GroupId(signal.group),
                    typing: signal.typing,
                })
            }
            Body::Typing(signal) => {
                if signal.peer == 0 {
                    return Err(ProtoError::invalid("a typing indicator for account 0"));
                }
                self.take_typing_token(now_ms)?;
                Ok(Route::Typing {
                    from: device,
                    to: AccountId(signal.peer),
                    typing: signal.typing,
                })
            }
            // Checked here so a malformed command never travels; the region checks again, and
            // acts as the authenticated device's account (the service sets it).
            Body::Group(command) => {
                command.parse()?;
                Ok(Route::DeviceHome(device))
            }
            Body::RequestLink(_) => Err(ProtoError::invalid(
                "a link request comes from a new device, before it authenticates",
            )),
            Body::Blob(blob) => {
                let region = match &blob.command {
                    Some(
                        wire::blob_command::Command::Download(at)
                        | wire::blob_command::Command::Locate(at),
                    ) if at.region != 0 => Some(RegionId(at.region)),
                    Some(_) => None,
                    None => return Err(unsupported_request()),
                };
                Ok(Route::Blob { device, region })
            }
            Body::Send(envelope) => {
                let parsed = envelope.parse()?;
                if parsed.sender != device {
                    return Err(ProtoError::new(
                        ErrorCode::Unauthenticated,
                        "an envelope's sender must be the authenticated device",
                    ));
                }
                Ok(Route::Fanout(Box::new(parsed)))
            }
        }
    }

    /// Takes a token of the typing bucket ([`TYPING_BURST`], [`TYPING_PER_SECOND`]).
    fn take_typing_token(&mut self, now_ms: u64) -> Result<(), ProtoError> {
        self.typing
            .take(now_ms, TYPING_PER_SECOND, TYPING_BURST)
            .map_err(|wait_ms| {
                ProtoError::new(
                    ErrorCode::Throttled,
                    format!(
                        "too many typing indicators ({TYPING_PER_SECOND} a second, \
                         {TYPING_BURST} at once); slow down"
                    ),
                )
                .with_retry_after_ms(wait_ms)
            })
    }

    fn take_token(&mut self, now_ms: u64) -> Result<(), ProtoError> {
        let SessionLimits {
            requests_per_second,
            requests_burst,
            ..
        } = self.limits;
        self.requests
            .take(now_ms, requests_per_second, requests_burst)
            .map_err(|wait_ms| {
                ProtoError::new(
                    ErrorCode::Throttled,
                    format!(
                        "too many requests ({requests_per_second} a second, {requests_burst} at \
                         once); slow down"
                    ),
                )
                .with_retry_after_ms(wait_ms)
            })
    }
}

/// The refusal of a device whose state went back, as `what` shows.
fn rolled_back(device: DeviceAddress, what: String) -> ProtoError {
    ProtoError::new(
        ErrorCode::DeviceRolledBack,
        format!(
            "device {device} is behind what its home region has seen ({what}); register this \
             device again in a new data directory (linking a new device to an account is \
             coming)"
        ),
    )
}

/// The refusal of a request this edge cannot read: empty, or of a kind added after it was
/// built (prost decodes an unknown kind as no body).
pub fn unsupported_request() -> ProtoError {
    ProtoError::new(
        ErrorCode::UnsupportedRequest,
        "an empty request, or a kind of request this edge does not know (the client is newer)",
    )
}

/// The destination regions of an envelope: every listed account's home and the sender's.
pub fn fanout_regions(
    parsed: &ParsedEnvelope,
    home_of: &BTreeMap<AccountId, RegionId>,
) -> Result<BTreeSet<RegionId>, ProtoError> {
    let mut regions = BTreeSet::new();
    for account in parsed
        .recipient_accounts
        .iter()
        .chain(std::iter::once(&parsed.sender.account))
    {
        let region = home_of.get(account).ok_or_else(|| {
            ProtoError::new(
                ErrorCode::UnknownAccount,
                format!("unknown account {account}"),
            )
        })?;
        regions.insert(*region);
    }
    Ok(regions)
}

/// Combines the destination regions' answers to one envelope. The device hears "sent" only
/// when every region committed; a region saying the device rolled back wins over everything
/// (nothing it sends can be trusted to decrypt, so no retry or re-encryption may follow), then
/// a refusal from any region (a changed group first, carrying every device any region
/// reported, then re-encryption, then a sender_seq gap), then any failure
/// (the device retries; regions that committed deduplicate).
#[derive(Debug, Clone)]
pub struct SendAggregate {
    waiting: BTreeSet<RegionId>,
    commits: Vec<wire::Committed>,
    mismatched: BTreeMap<u64, AccountDevices>,
    group_changed: Option<GroupChanged>,
    resend_from: Option<u64>,
    rolled_back: Option<ProtoError>,
    failure: Option<ProtoError>,
}

impl SendAggregate {
    /// Waits for an answer from each of `regions`.
    pub fn new(regions: BTreeSet<RegionId>) -> Self {
        Self {
            waiting: regions,
            commits: Vec::new(),
            mismatched: BTreeMap::new(),
            group_changed: None,
            resend_from: None,
            rolled_back: None,
            failure: None,
        }
    }

    /// One region's answer (or the failure to get one).
    pub fn handle_region_outcome(
        &mut self,
        region: RegionId,
        outcome: Result<SendOutcome, ProtoError>,
    ) {
        if !self.waiting.remove(&region) {
            return;
        }
        match outcome.map(|outcome| outcome.outcome) {
            Ok(Some(send_outcome::Outcome::Sent(sent))) => self.commits.extend(sent.commits),
            Ok(Some(send_outcome::Outcome::Mismatched(mismatched))) => {
                for account in mismatched.accounts {
                    self.mismatched.insert(account.account, account);
                }
            }
            Ok(Some(send_outcome::Outcome::GroupChanged(changed))) => {
                // Each region names the members (the newest version wins) and the devices of
                // the members homed there (kept from every region, like mismatched devices).
                for account in &changed.devices {
                    self.mismatched.insert(account.account, account.clone());
                }
                let newer = self
                    .group_changed
                    .as_ref()
                    .is_none_or(|known| changed.version > known.version);
                if newer {
                    self.group_changed = Some(GroupChanged {
                        devices: Vec::new(),
                        ..changed
                    });
                }
            }
            Ok(Some(send_outcome::Outcome::ResendFrom(resend))) => {
                let expected = resend.expected_sender_seq;
                self.resend_from = Some(
                    self.resend_from
                        .map_or(expected, |current| current.min(expected)),
                );
            }
            Ok(None) => {
                self.failure = Some(ProtoError::new(
                    ErrorCode::Internal,
                    "region gave no outcome",
                ))
            }
            Err(error) if error.code == ErrorCode::DeviceRolledBack => {
                self.rolled_back = Some(error);
            }
            Err(error) => {
                let retryable = if error.code.is_retryable() {
                    error.code
                } else {
                    ErrorCode::Unavailable
                };
                // Final refusals pass through as they are: among them a group's `UnknownGroup`,
                // whose sender is no member any more (removed while its text was on the way: a
                // region that had the removal refuses what another may have stored before it).
                let keep = if error.code == ErrorCode::UnknownAccount
                    || error.code == ErrorCode::Malformed
                    || error.code == ErrorCode::TooLarge
                    || error.code == ErrorCode::UnknownGroup
                {
                    error
                } else {
                    // Retryable codes pass through with their hint: an overloaded region says when
                    // to come back, a region whose storage is unavailable too, and a recipient
                    // whose queue is unreadable stays `RecipientUnavailable`, so the client keeps
                    // the message and says why.
                    let message = if error.message.starts_with(&format!("region {region} ")) {
                        error.message
                    } else {
                        format!("region {region}: {}", error.message)
                    };
                    ProtoError::new(retryable, message).with_retry_after_ms(error.retry_after_ms)
                };
                self.failure = Some(keep);
            }
        }
    }

    /// The device's answer once every region answered.
    pub fn poll_result(&self) -> Option<Result<SendOutcome, ProtoError>> {
        if !self.waiting.is_empty() {
            return None;
        }
        if let Some(rolled_back) = &self.rolled_back {
            return Some(Err(rolled_back.clone()));
        }
        let outcome = if let Some(changed) = &self.group_changed {
            // The group changed: the sender re-shares and re-encrypts for every member, with
            // the devices of each member any region reported (mismatched ones included).
            send_outcome::Outcome::GroupChanged(GroupChanged {
                devices: self.mismatched.values().cloned().collect(),
                ..changed.clone()
            })
        } else if !self.mismatched.is_empty() {
            send_outcome::Outcome::Mismatched(MismatchedDevices {
                accounts: self.mismatched.values().cloned().collect(),
            })
        } else if let Some(expected_sender_seq) = self.resend_from {
            send_outcome::Outcome::ResendFrom(ResendFrom {
                expected_sender_seq,
            })
        } else if let Some(failure) = &self.failure {
            return Some(Err(failure.clone()));
        } else {
            send_outcome::Outcome::Sent(SentEverywhere {
                commits: self.commits.clone(),
                home_region: 0,
            })
        };
        Some(Ok(SendOutcome {
            outcome: Some(outcome),
        }))
    }
}

#[cfg(test)]
mod tests;
