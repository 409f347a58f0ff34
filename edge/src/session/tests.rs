use super::*;
use relay_proto::wire::{Committed, DeviceAddr, DeviceCiphertext, Envelope};
use vodozemac::olm::Account;

const KEYING: [u8; 32] = [7; 32];

fn authenticated(account: &Account, device: DeviceAddr) -> Session {
    let mut session = Session::new(SessionLimits::default(), 0);
    let challenge = session.handle_hello([1; AUTH_NONCE_BYTES]).expect("hello");
    let signature = account.sign(wire::auth_signing_payload(&challenge.nonce, &KEYING));
    let auth = Authenticate {
        device,
        signature: signature.to_bytes().to_vec(),
        ..Authenticate::default()
    };
    let key = account.identity_keys().ed25519;
    session
        .handle_authenticate(&auth, &KEYING, key.as_bytes(), SeenMarks::default())
        .expect("authenticates");
    session
}

fn envelope(sender: DeviceAddr) -> Envelope {
    Envelope {
        chat: vec![0; 16],
        sender,
        client_message_id: vec![1; 16],
        sender_seq: 1,
        recipient_accounts: vec![2, sender.account],
        ciphertexts: vec![DeviceCiphertext {
            recipient: DeviceAddr {
                account: 2,
                device: 1,
            },
            message_type: 0,
            body: vec![9],
        }],
        device_seq: 1,
        ..Default::default()
    }
}

fn send(envelope: Envelope) -> ClientRequest {
    ClientRequest {
        body: Some(client_request::Body::Send(envelope)),
    }
}

#[test]
fn authenticates_with_a_signature_bound_to_the_connection() {
    let account = Account::new();
    let me = DeviceAddr {
        account: 1,
        device: 1,
    };
    let mut session = authenticated(&account, me);
    assert_eq!(session.device(), Some(me.parse().expect("valid")));
    assert!(matches!(
        session.handle_request(&send(envelope(me)), 0),
        Ok(Route::Fanout(_))
    ));
}

#[test]
fn refuses_a_signature_for_another_connection_or_key() {
    let account = Account::new();
    let me = DeviceAddr {
        account: 1,
        device: 1,
    };
    let mut session = Session::new(SessionLimits::default(), 0);
    let challenge = session.handle_hello([1; AUTH_NONCE_BYTES]).expect("hello");
    // Signed over another connection's keying material: a replayed proof.
    let signature = account.sign(wire::auth_signing_payload(&challenge.nonce, &[8; 32]));
    let auth = Authenticate {
        device: me,
        signature: signature.to_bytes().to_vec(),
        ..Authenticate::default()
    };
    let key = account.identity_keys().ed25519;
    let error = session
        .handle_authenticate(&auth, &KEYING, key.as_bytes(), SeenMarks::default())
        .expect_err("replay");
    assert_eq!(error.code, ErrorCode::BadSignature);
    // The right payload under someone else's registered key.
    let signature = account.sign(wire::auth_signing_payload(&challenge.nonce, &KEYING));
    let auth = Authenticate {
        device: me,
        signature: signature.to_bytes().to_vec(),
        ..Authenticate::default()
    };
    let other = Account::new().identity_keys().ed25519;
    assert!(
        session
            .handle_authenticate(&auth, &KEYING, other.as_bytes(), SeenMarks::default())
            .is_err()
    );
    // Garbage signature bytes and key bytes never panic.
    let auth = Authenticate {
        device: me,
        signature: vec![1, 2, 3],
        ..Authenticate::default()
    };
    assert!(
        session
            .handle_authenticate(&auth, &KEYING, &[0; 5], SeenMarks::default())
            .is_err()
    );
    assert_eq!(session.device(), None);
}

/// A device authenticating with `queue_cursor` and `next_device_seq` against what its
/// region has `seen`.
fn authenticate_with(
    queue_cursor: Option<u64>,
    next_device_seq: Option<u64>,
    seen: SeenMarks,
) -> (Session, Result<DeviceAddress, ProtoError>) {
    let account = Account::new();
    let mut session = Session::new(SessionLimits::default(), 0);
    let challenge = session.handle_hello([1; AUTH_NONCE_BYTES]).expect("hello");
    let signature = account.sign(wire::auth_signing_payload(&challenge.nonce, &KEYING));
    let auth = Authenticate {
        device: DeviceAddr {
            account: 1,
            device: 1,
        },
        signature: signature.to_bytes().to_vec(),
        queue_cursor,
        next_device_seq,
    };
    let key = account.identity_keys().ed25519;
    let result = session.handle_authenticate(&auth, &KEYING, key.as_bytes(), seen);
    (session, result)
}

#[test]
fn a_device_behind_what_its_region_has_seen_is_refused_as_rolled_back() {
    let seen = SeenMarks {
        acked_queue_seq: 7,
        device_seq: 12,
    };
    // An honest device: its cursor at or past every ack, its next envelope past every one
    // stored; an older client that reports neither is not checked.
    for (cursor, next) in [(Some(7), Some(13)), (Some(9), Some(20)), (None, None)] {
        let (session, result) = authenticate_with(cursor, next, seen);
        assert!(result.is_ok(), "{cursor:?} {next:?}: {result:?}");
        assert!(session.device().is_some());
    }
    // A copy from before it stored entry 7, or before it sent envelope 12.
    for (cursor, next) in [(Some(6), Some(13)), (Some(7), Some(12)), (Some(0), Some(1))] {
        let (session, result) = authenticate_with(cursor, next, seen);
        let error = result.expect_err("rolled back");
        assert_eq!(
            error.code,
            ErrorCode::DeviceRolledBack,
            "{cursor:?} {next:?}"
        );
        assert!(!error.code.is_retryable());
        assert!(
            error.message.contains("register this device again"),
            "{error}"
        );
        assert_eq!(session.device(), None, "left unauthenticated");
    }
}

/// A session logged in from the key cache with `cached_seen` marks, the device reporting
/// `next_device_seq`; returns it with the key it signed with.
fn from_cache(
    account: &Account,
    next_device_seq: Option<u64>,
    cached_seen: SeenMarks,
) -> (Session, Result<DeviceAddress, ProtoError>, [u8; 32]) {
    let mut session = Session::new(SessionLimits::default(), 0);
    let challenge = session.handle_hello([1; AUTH_NONCE_BYTES]).expect("hello");
    let signature = account.sign(wire::auth_signing_payload(&challenge.nonce, &KEYING));
    let auth = Authenticate {
        device: DeviceAddr {
            account: 1,
            device: 1,
        },
        signature: signature.to_bytes().to_vec(),
        queue_cursor: Some(4),
        next_device_seq,
    };
    let signing_key = *account.identity_keys().ed25519.as_bytes();
    let cached = DeviceKey {
        signing_key,
        seen: cached_seen,
        one_time_keys_remaining: 3,
        fallback_key: 0,
    };
    let result = session.handle_authenticate_from_cache(&auth, &KEYING, &cached);
    (session, result, signing_key)
}

fn fetch() -> ClientRequest {
    ClientRequest {
        body: Some(client_request::Body::FetchQueue(
            wire::FetchAndAck::default(),
        )),
    }
}

#[test]
fn a_login_from_the_cache_fetches_at_once_and_sends_once_its_region_confirmed() {
    let account = Account::new();
    let me = DeviceAddr {
        account: 1,
        device: 1,
    };
    let (mut session, result, key) = from_cache(&account, Some(10), SeenMarks::default());
    assert!(result.is_ok(), "{result:?}");
    assert!(session.device().is_some());
    // A fetch goes at once (its region checks it); a send waits for the confirmation.
    assert!(!session.needs_confirmation(&fetch()));
    assert!(session.needs_confirmation(&send(envelope(me))));
    let seen = SeenMarks {
        acked_queue_seq: 6,
        device_seq: 9,
    };
    // The region's mark of acknowledged entries moved with this connection's own fetches:
    // only the envelope counter is compared.
    assert_eq!(session.handle_confirmation(Ok((&key, seen))), Ok(()));
    assert!(!session.needs_confirmation(&send(envelope(me))));
    assert!(matches!(
        session.handle_request(&send(envelope(me)), 0),
        Ok(Route::Fanout(_))
    ));
    // A later answer (this connection's own sends raised the mark) changes nothing.
    let later = SeenMarks {
        acked_queue_seq: 6,
        device_seq: 30,
    };
    assert_eq!(session.handle_confirmation(Ok((&key, later))), Ok(()));
    assert!(session.device().is_some());
}

#[test]
fn a_login_from_the_cache_is_refused_for_good_when_its_region_says_no() {
    let account = Account::new();
    let me = DeviceAddr {
        account: 1,
        device: 1,
    };
    // Rolled back: the cache was behind, the region is not.
    let (mut session, result, key) = from_cache(&account, Some(10), SeenMarks::default());
    assert!(result.is_ok());
    let seen = SeenMarks {
        acked_queue_seq: 0,
        device_seq: 12,
    };
    let error = session
        .handle_confirmation(Ok((&key, seen)))
        .expect_err("rolled back");
    assert_eq!(error.code, ErrorCode::DeviceRolledBack);
    assert!(
        error
            .message
            .contains("its next envelope would be number 10, but number 12 is stored"),
        "{error}"
    );
    assert_eq!(session.device(), None);
    for request in [send(envelope(me)), fetch()] {
        assert_eq!(session.handle_request(&request, 0), Err(error.clone()));
    }
    assert_eq!(session.handle_confirmation(Ok((&key, seen))), Err(error));

    // Removed: the region refuses the device.
    let (mut session, _, _) = from_cache(&account, Some(10), SeenMarks::default());
    let removed = ProtoError::new(ErrorCode::UnknownAccount, "unknown device 1/1");
    assert_eq!(
        session.handle_confirmation(Err(removed.clone())),
        Err(removed.clone())
    );
    assert_eq!(session.handle_request(&fetch(), 0), Err(removed));

    // Another key under the same device number.
    let (mut session, _, _) = from_cache(&account, Some(10), SeenMarks::default());
    let other = *Account::new().identity_keys().ed25519.as_bytes();
    let error = session
        .handle_confirmation(Ok((&other, SeenMarks::default())))
        .expect_err("another key");
    assert_eq!(error.code, ErrorCode::BadSignature);
    assert_eq!(session.device(), None);
}

#[test]
fn cached_marks_refuse_a_rolled_back_device_at_login() {
    let account = Account::new();
    let seen = SeenMarks {
        acked_queue_seq: 0,
        device_seq: 10,
    };
    let (session, result, _) = from_cache(&account, Some(10), seen);
    assert_eq!(
        result.map_err(|error| error.code),
        Err(ErrorCode::DeviceRolledBack)
    );
    assert_eq!(session.device(), None);
    let seen = SeenMarks {
        acked_queue_seq: 5,
        device_seq: 0,
    };
    let (_, result, _) = from_cache(&account, Some(10), seen);
    assert_eq!(
        result.map_err(|error| error.code),
        Err(ErrorCode::DeviceRolledBack),
        "cursor 4 behind an acknowledged entry 5"
    );
}

#[test]
fn claims_name_the_authenticated_claimer() {
    let account = Account::new();
    let me = DeviceAddr {
        account: 1,
        device: 1,
    };
    let mut session = authenticated(&account, me);
    let claim = ClientRequest {
        body: Some(client_request::Body::ClaimKeys(wire::ClaimKeys {
            account: 5,
            // Whatever the device says, the claimer is the authenticated device.
            claimer: Some(DeviceAddr {
                account: 9,
                device: 9,
            }),
        })),
    };
    assert_eq!(
        session.handle_request(&claim, 0),
        Ok(Route::Claim {
            account: AccountId(5),
            claimer: me.parse().expect("valid"),
        })
    );
}

#[test]
fn unauthenticated_and_spoofed_requests_are_refused() {
    let mut session = Session::new(SessionLimits::default(), 0);
    let me = DeviceAddr {
        account: 1,
        device: 1,
    };
    let error = session
        .handle_request(&send(envelope(me)), 0)
        .expect_err("not authenticated");
    assert_eq!(error.code, ErrorCode::Unauthenticated);
    let register = ClientRequest {
        body: Some(client_request::Body::Register(wire::Register::default())),
    };
    assert_eq!(session.handle_request(&register, 0), Ok(Route::OwnRegion));

    let account = Account::new();
    let mut session = authenticated(&account, me);
    let someone_else = DeviceAddr {
        account: 3,
        device: 1,
    };
    let error = session
        .handle_request(&send(envelope(someone_else)), 0)
        .expect_err("spoofed sender");
    assert_eq!(error.code, ErrorCode::Unauthenticated);
    let empty = ClientRequest { body: None };
    assert!(session.handle_request(&empty, 0).is_err());
}

/// A new device's link request needs no authentication and goes to the region its code
/// names; device commands go to the device's home; a kind this edge does not know (prost
/// reads it as no body) is a typed refusal.
#[test]
fn link_requests_go_to_the_code_s_region_and_unknown_kinds_are_typed() {
    let mut session = Session::new(SessionLimits::default(), 0);
    let link = |code: &str| ClientRequest {
        body: Some(client_request::Body::RequestLink(wire::RequestLink {
            code: code.into(),
            ..wire::RequestLink::default()
        })),
    };
    assert_eq!(
        session.handle_request(&link("2-K7QD-M2XA"), 0),
        Ok(Route::Region(RegionId(2)))
    );
    let error = session
        .handle_request(&link("two-K7QD"), 0)
        .expect_err("not a code");
    assert_eq!(error.code, ErrorCode::Malformed);
    let devices = ClientRequest {
        body: Some(client_request::Body::Devices(wire::DeviceCommand::default())),
    };
    let error = session
        .handle_request(&devices, 0)
        .expect_err("not authenticated");
    assert_eq!(error.code, ErrorCode::Unauthenticated);

    let me = DeviceAddr {
        account: 1,
        device: 1,
    };
    let mut session = authenticated(&Account::new(), me);
    assert_eq!(
        session.handle_request(&devices, 0),
        Ok(Route::DeviceHome(me.parse().expect("valid")))
    );
    let unknown_kind = ClientRequest { body: None };
    let error = session
        .handle_request(&unknown_kind, 0)
        .expect_err("unknown kind");
    assert_eq!(error.code, ErrorCode::UnsupportedRequest);
}

/// Group commands go to the device's home region (which forwards them to the directory
/// writer); a malformed one is refused here, and an unauthenticated one too.
#[test]
fn group_commands_go_to_the_device_s_home() {
    let group = |name: &str| ClientRequest {
        body: Some(client_request::Body::Group(wire::GroupCommand {
            command: Some(wire::group_command::Command::Rename(wire::RenameGroup {
                group: 1,
                name: name.into(),
            })),
        })),
    };
    let mut stranger = Session::new(SessionLimits::default(), 0);
    let error = stranger
        .handle_request(&group("friends"), 0)
        .expect_err("not authenticated");
    assert_eq!(error.code, ErrorCode::Unauthenticated);

    let me = DeviceAddr {
        account: 4,
        device: 2,
    };
    let mut session = authenticated(&Account::new(), me);
    assert_eq!(
        session.handle_request(&group("friends"), 0),
        Ok(Route::DeviceHome(me.parse().expect("valid")))
    );
    let error = session
        .handle_request(&group("two\nlines"), 0)
        .expect_err("malformed name");
    assert_eq!(error.code, ErrorCode::Malformed);
    let empty = ClientRequest {
        body: Some(client_request::Body::Group(wire::GroupCommand::default())),
    };
    let error = session.handle_request(&empty, 0).expect_err("no command");
    assert_eq!(error.code, ErrorCode::UnsupportedRequest);
}

#[test]
fn blob_requests_go_home_and_downloads_and_locates_to_the_blob_s_region() {
    let account = Account::new();
    let me = DeviceAddr {
        account: 7,
        device: 1,
    };
    let mut session = authenticated(&account, me);
    let device = me.parse().expect("valid");
    let blob = |command| ClientRequest {
        body: Some(client_request::Body::Blob(wire::BlobCommand {
            command: Some(command),
        })),
    };
    let at = |region| wire::BlobAt {
        id: vec![1; 16],
        offset: 0,
        region,
        ..Default::default()
    };
    use wire::blob_command::Command;
    assert_eq!(
        session.handle_request(&blob(Command::Upload(at(0))), 0),
        Ok(Route::Blob {
            device,
            region: None
        })
    );
    for command in [Command::Download(at(2)), Command::Locate(at(2))] {
        assert_eq!(
            session.handle_request(&blob(command), 0),
            Ok(Route::Blob {
                device,
                region: Some(RegionId(2))
            })
        );
    }
    assert_eq!(
        session.handle_request(&blob(Command::Locate(at(0))), 0),
        Ok(Route::Blob {
            device,
            region: None
        }),
        "a locate without a region asks the device's home"
    );
    let unknown = ClientRequest {
        body: Some(client_request::Body::Blob(wire::BlobCommand {
            command: None,
        })),
    };
    assert_eq!(
        session
            .handle_request(&unknown, 0)
            .map_err(|error| error.code),
        Err(ErrorCode::UnsupportedRequest)
    );
    let mut stranger = Session::new(SessionLimits::default(), 0);
    assert_eq!(
        stranger
            .handle_request(&blob(Command::Download(at(2))), 0)
            .map_err(|error| error.code),
        Err(ErrorCode::Unauthenticated),
        "a download needs an authenticated device"
    );
}

#[test]
fn rate_limit_refuses_then_refills() {
    let limits = SessionLimits {
        requests_per_second: 10,
        requests_burst: 3,
        ..SessionLimits::default()
    };
    let mut session = Session::new(limits, 0);
    let register = ClientRequest {
        body: Some(client_request::Body::Register(wire::Register::default())),
    };
    for _ in 0..3 {
        assert!(session.handle_request(&register, 0).is_ok());
    }
    let refused = session
        .handle_request(&register, 0)
        .expect_err("the burst is spent");
    assert_eq!(refused.code, ErrorCode::Throttled);
    assert_eq!(
        refused.retry_after_ms, 100,
        "one token refills in 100 ms at 10/s"
    );
    let refused = session
        .handle_request(&register, 40)
        .expect_err("40 ms refill 0.4 of a token");
    assert_eq!(refused.retry_after_ms, 60, "the rest of the token");
    assert!(
        session.handle_request(&register, 100).is_ok(),
        "one token after 100 ms at 10/s"
    );
}

#[test]
fn fanout_includes_the_senders_home_and_refuses_unknown_accounts() {
    let me = DeviceAddr {
        account: 1,
        device: 1,
    };
    let parsed = envelope(me).parse().expect("valid");
    let homes = BTreeMap::from([(AccountId(1), RegionId(1)), (AccountId(2), RegionId(2))]);
    assert_eq!(
        fanout_regions(&parsed, &homes),
        Ok(BTreeSet::from([RegionId(1), RegionId(2)]))
    );
    let only_one = BTreeMap::from([(AccountId(1), RegionId(1))]);
    assert_eq!(
        fanout_regions(&parsed, &only_one).map_err(|e| e.code),
        Err(ErrorCode::UnknownAccount)
    );
}

/// A message from `sender` to group 5, whose members are accounts 1, 2 and 3 (one device
/// each but the sender's).
fn group_message(sender: DeviceAddr) -> Envelope {
    let group = relay_proto::GroupId(5);
    Envelope {
        chat: relay_proto::ChatId::group(group).0.to_vec(),
        recipient_accounts: vec![1, 2, 3],
        ciphertexts: [2, 3]
            .into_iter()
            .map(|account| DeviceCiphertext {
                recipient: DeviceAddr { account, device: 1 },
                message_type: wire::MESSAGE_TYPE_HOLDS_GROUP_SESSION,
                body: Vec::new(),
            })
            .collect(),
        group: group.0,
        group_version: 2,
        kind: wire::EnvelopeKind::Message as i32,
        group_ciphertext: vec![4; 64],
        group_session_id: "session".into(),
        ..envelope(sender)
    }
}

#[test]
fn a_group_message_goes_to_every_members_region_from_its_sending_device_only() {
    let account = Account::new();
    let me = DeviceAddr {
        account: 1,
        device: 1,
    };
    let mut session = authenticated(&account, me);
    let Ok(Route::Fanout(parsed)) = session.handle_request(&send(group_message(me)), 0) else {
        panic!("a group message from the authenticated device is routed");
    };
    let homes = BTreeMap::from([
        (AccountId(1), RegionId(1)),
        (AccountId(2), RegionId(2)),
        (AccountId(3), RegionId(3)),
    ]);
    assert_eq!(
        fanout_regions(&parsed, &homes),
        Ok(BTreeSet::from([RegionId(1), RegionId(2), RegionId(3)]))
    );
    // Another device of the same account, or of another member, cannot send as it.
    for sender in [
        DeviceAddr {
            account: 1,
            device: 2,
        },
        DeviceAddr {
            account: 4,
            device: 1,
        },
    ] {
        let mut message = group_message(sender);
        message.recipient_accounts = vec![1, 2, 3, 4];
        assert_eq!(
            session
                .handle_request(&send(message), 0)
                .map_err(|error| error.code),
            Err(ErrorCode::Unauthenticated)
        );
    }
    // A malformed group envelope never leaves the edge.
    let mut message = group_message(me);
    message.group_ciphertext.clear();
    assert_eq!(
        session
            .handle_request(&send(message), 0)
            .map_err(|error| error.code),
        Err(ErrorCode::Malformed)
    );
}

#[test]
fn a_changed_group_wins_and_carries_every_regions_devices() {
    let regions = BTreeSet::from([RegionId(1), RegionId(2), RegionId(3)]);
    let mut aggregate = SendAggregate::new(regions);
    let changed = |version, devices: Vec<AccountDevices>| SendOutcome {
        outcome: Some(send_outcome::Outcome::GroupChanged(GroupChanged {
            group: 5,
            version,
            members: if version == 3 {
                vec![1, 2, 3, 4]
            } else {
                vec![1, 2, 3]
            },
            devices,
        })),
    };
    let devices = |account, devices: Vec<u32>| AccountDevices { account, devices };
    aggregate.handle_region_outcome(RegionId(1), Ok(changed(3, vec![devices(4, vec![1])])));
    aggregate.handle_region_outcome(
        RegionId(2),
        Ok(SendOutcome {
            outcome: Some(send_outcome::Outcome::Mismatched(MismatchedDevices {
                accounts: vec![devices(2, vec![1, 2])],
            })),
        }),
    );
    aggregate.handle_region_outcome(RegionId(3), Ok(changed(2, vec![devices(3, vec![1])])));
    assert_eq!(
        aggregate.poll_result(),
        Some(Ok(changed(
            3,
            vec![
                devices(2, vec![1, 2]),
                devices(3, vec![1]),
                devices(4, vec![1]),
            ]
        )))
    );
}

fn sent(region: u32, chat_seq: u64) -> SendOutcome {
    let commit = Committed {
        region,
        chat_seq,
        duplicate: false,
        server_time_ms: 5,
    };
    SendOutcome {
        outcome: Some(send_outcome::Outcome::Sent(SentEverywhere {
            commits: vec![commit],
            home_region: 0,
        })),
    }
}

#[test]
fn sent_only_when_every_region_committed() {
    let mut aggregate = SendAggregate::new(BTreeSet::from([RegionId(1), RegionId(2)]));
    aggregate.handle_region_outcome(RegionId(1), Ok(sent(1, 4)));
    assert_eq!(aggregate.poll_result(), None);
    aggregate.handle_region_outcome(RegionId(2), Ok(sent(2, 9)));
    let Some(Ok(SendOutcome {
        outcome: Some(send_outcome::Outcome::Sent(all)),
    })) = aggregate.poll_result()
    else {
        panic!("expected sent");
    };
    assert_eq!(all.commits.len(), 2);
}

#[test]
fn an_unavailable_recipient_is_never_sent_and_its_code_passes_through() {
    let mut aggregate = SendAggregate::new(BTreeSet::from([RegionId(1), RegionId(2)]));
    aggregate.handle_region_outcome(RegionId(1), Ok(sent(1, 4)));
    let refusal = ProtoError::new(ErrorCode::RecipientUnavailable, "queue of 2/1 unreadable")
        .with_retry_after_ms(30_000);
    aggregate.handle_region_outcome(RegionId(2), Err(refusal));
    let Some(Err(error)) = aggregate.poll_result() else {
        panic!("a refusal, never sent: {:?}", aggregate.poll_result());
    };
    assert_eq!(error.code, ErrorCode::RecipientUnavailable);
    assert!(error.code.is_retryable(), "the client keeps the message");
    assert_eq!(error.retry_after_ms, 30_000);
    assert!(error.message.contains("region 2"), "{}", error.message);
}

#[test]
fn typing_indicators_have_their_own_bucket_and_watches_route_to_the_watched() {
    let account = Account::new();
    let device = DeviceAddr {
        account: 3,
        device: 1,
    };
    let mut session = authenticated(&account, device);
    let typing = |peer: u64| ClientRequest {
        body: Some(client_request::Body::Typing(wire::TypingSignal {
            peer,
            typing: true,
            group: 0,
        })),
    };
    let in_group = |peer: u64, group: u64| ClientRequest {
        body: Some(client_request::Body::Typing(wire::TypingSignal {
            peer,
            typing: false,
            group,
        })),
    };
    let at = 1_000;
    for _ in 0..TYPING_BURST {
        assert!(matches!(
            session.handle_request(&typing(4), at),
            Ok(Route::Typing {
                to: AccountId(4),
                typing: true,
                ..
            })
        ));
    }
    let refused = session
        .handle_request(&typing(4), at)
        .expect_err("past the burst");
    assert_eq!(refused.code, ErrorCode::Throttled);
    assert_eq!(refused.retry_after_ms, 1_000 / u64::from(TYPING_PER_SECOND));
    // Other requests are not held back by a typing flood.
    let watch = ClientRequest {
        body: Some(client_request::Body::WatchPresence(wire::WatchPresence {
            account: 4,
            watch: true,
        })),
    };
    assert!(matches!(
        session.handle_request(&watch, at),
        Ok(Route::Watch {
            account: AccountId(4),
            watch: true,
            ..
        })
    ));
    // A second later one more indicator fits; a group's indicators share the bucket.
    assert!(session.handle_request(&typing(4), at + 1_000).is_ok());
    assert_eq!(
        session
            .handle_request(&in_group(0, 9), at + 1_000)
            .expect_err("the bucket is empty")
            .code,
        ErrorCode::Throttled
    );
    assert!(matches!(
        session.handle_request(&in_group(0, 9), at + 2_000),
        Ok(Route::GroupTyping {
            group: GroupId(9),
            typing: false,
            ..
        })
    ));
    assert!(
        session.handle_request(&in_group(4, 9), at + 3_000).is_err(),
        "a peer and a group"
    );
    assert!(
        session.handle_request(&typing(0), at + 5_000).is_err(),
        "account 0"
    );
    let nobody = ClientRequest {
        body: Some(client_request::Body::WatchPresence(wire::WatchPresence {
            account: 0,
            watch: true,
        })),
    };
    assert_eq!(
        session
            .handle_request(&nobody, at)
            .expect_err("account 0")
            .code,
        ErrorCode::Malformed
    );
}

#[test]
fn a_region_with_unavailable_storage_makes_the_send_retryable() {
    let regions = BTreeSet::from([RegionId(1), RegionId(2)]);
    let mut aggregate = SendAggregate::new(regions);
    aggregate.handle_region_outcome(RegionId(1), Ok(sent(1, 4)));
    aggregate.handle_region_outcome(
        RegionId(2),
        Err(
            ProtoError::new(ErrorCode::StorageUnavailable, "the disk is full")
                .with_retry_after_ms(20),
        ),
    );
    let Some(Err(error)) = aggregate.poll_result() else {
        panic!("a send one region could not store is not sent");
    };
    assert_eq!(error.code, ErrorCode::StorageUnavailable);
    assert!(error.code.is_retryable());
    assert_eq!(error.retry_after_ms, 20);
    assert!(error.message.contains("region 2"), "{}", error.message);
}

#[test]
fn refusals_and_failures_win_over_commits() {
    let regions = BTreeSet::from([RegionId(1), RegionId(2)]);
    let mut aggregate = SendAggregate::new(regions.clone());
    aggregate.handle_region_outcome(RegionId(1), Ok(sent(1, 4)));
    aggregate.handle_region_outcome(
        RegionId(2),
        Err(ProtoError::new(ErrorCode::Internal, "boom")),
    );
    assert!(matches!(aggregate.poll_result(), Some(Err(error)) if error.code.is_retryable()));

    // A sender removed from the group while its text was on the way: one region stored it,
    // the other refuses it as from a non-member, which no retry changes.
    let mut aggregate = SendAggregate::new(regions.clone());
    aggregate.handle_region_outcome(RegionId(1), Ok(sent(1, 4)));
    aggregate.handle_region_outcome(
        RegionId(2),
        Err(ProtoError::new(
            ErrorCode::UnknownGroup,
            "not a member of group 7",
        )),
    );
    let refused = aggregate.poll_result();
    assert!(
        matches!(&refused, Some(Err(error)) if error.code == ErrorCode::UnknownGroup),
        "{refused:?}"
    );

    // An overloaded region's code and retry hint reach the device.
    let mut aggregate = SendAggregate::new(regions.clone());
    aggregate.handle_region_outcome(RegionId(1), Ok(sent(1, 4)));
    aggregate.handle_region_outcome(
        RegionId(2),
        Err(ProtoError::new(
            ErrorCode::Overloaded,
            "region 2 did not answer within 5.0 s",
        )
        .with_retry_after_ms(2_000)),
    );
    assert_eq!(
        aggregate.poll_result(),
        Some(Err(ProtoError::new(
            ErrorCode::Overloaded,
            "region 2 did not answer within 5.0 s"
        )
        .with_retry_after_ms(2_000)))
    );

    let mut aggregate = SendAggregate::new(regions);
    let mismatch = MismatchedDevices {
        accounts: vec![AccountDevices {
            account: 2,
            devices: vec![1, 2],
        }],
    };
    aggregate.handle_region_outcome(RegionId(1), Ok(sent(1, 4)));
    aggregate.handle_region_outcome(
        RegionId(2),
        Ok(SendOutcome {
            outcome: Some(send_outcome::Outcome::Mismatched(mismatch.clone())),
        }),
    );
    assert_eq!(
        aggregate.poll_result(),
        Some(Ok(SendOutcome {
            outcome: Some(send_outcome::Outcome::Mismatched(mismatch))
        }))
    );
}

#[test]
fn a_rolled_back_device_is_told_so_whatever_the_other_regions_said() {
    let regions = BTreeSet::from([RegionId(1), RegionId(2), RegionId(3)]);
    let mut aggregate = SendAggregate::new(regions);
    aggregate.handle_region_outcome(RegionId(1), Ok(sent(1, 4)));
    aggregate.handle_region_outcome(
        RegionId(2),
        Err(ProtoError::new(ErrorCode::DeviceRolledBack, "went back")),
    );
    aggregate.handle_region_outcome(
        RegionId(3),
        Ok(SendOutcome {
            outcome: Some(send_outcome::Outcome::ResendFrom(ResendFrom {
                expected_sender_seq: 2,
            })),
        }),
    );
    let Some(Err(error)) = aggregate.poll_result() else {
        panic!("a refusal")
    };
    assert_eq!(error.code, ErrorCode::DeviceRolledBack);
    assert_eq!(
        error.message, "went back",
        "passed on as the region said it"
    );
}
