//! Linked devices: the region's decisions for pairing a new device with an account and for
//! listing and removing an account's devices, as functions over one storage transaction (like
//! [`crate::core`]: no socket, no clock, no randomness of their own).
//!
//! The path of a link (no device is primary; any current device of the account may act):
//! 1. a device opens a pairing ([`open_pairing`]): a code naming this region and a random
//!    secret the service drew, usable until `PAIRING_CODE_TTL_MS` from now;
//! 2. the new device asks with the code ([`request_link`]), its public keys, its one-time and
//!    fallback keys and a signature of [`wire::link_proof_payload`] by its new signing key,
//!    which proves it holds that key; asking again with the same keys answers where the request
//!    stands, a different device is refused (a code is single use);
//! 3. a device of the account approves the request it sees ([`approve_link`]), naming the
//!    identity key it showed the user: the new device joins the directory under the account's
//!    next device number, its keys are published, the pairing records the number and the new
//!    device learns it at its next ask.
//!
//! From then on [`crate::core::commit_envelope`] expects the new device among the account's
//! recipients, so senders that do not know it are answered "mismatched devices" with the
//! current list and encrypt to it (I8). A removed device ([`remove_device`]) leaves the
//! directory with its keys and marks: senders stop covering it, it cannot authenticate or
//! fetch again, and it receives nothing more.

use fdb_layers::keys::IdempotencyKey;
use fdb_layers::pairing::{self, PairingRecord};
use fdb_layers::{Transaction, device_state, directory, keys};
use relay_proto::limits::{
    DEVICES_PER_ACCOUNT_MAX, PAIRING_CODE_SECRET_BYTES, PAIRING_CODE_TTL_MS,
};
use relay_proto::wire::{self, device_command::Command};
use relay_proto::{DeviceAddress, DeviceId, ErrorCode, PairingCode, ProtoError, RegionId};

use crate::core::{Effects, Outcome, account_info, check_fallback_key, check_keys};

/// Runs a device's command on its own account's devices. `secret` is fresh randomness the
/// service drew for a pairing this command may open; `idempotency` names an approval.
pub async fn device_command(
    tx: &Transaction,
    local: RegionId,
    device: DeviceAddress,
    command: &wire::DeviceCommand,
    secret: [u8; PAIRING_CODE_SECRET_BYTES],
    idempotency: &IdempotencyKey,
    now_ms: u64,
) -> Outcome<Answer> {
    if directory::device(tx, device).await?.is_none() {
        return refuse(
            ErrorCode::Forbidden,
            format!("device {device} is not a device of its account (it was removed)"),
        );
    }
    match &command.command {
        None => refuse(
            ErrorCode::UnsupportedRequest,
            "an empty device command, or a kind this region does not know",
        ),
        Some(Command::OpenPairing(_)) => open_pairing(tx, local, device, secret, now_ms).await,
        Some(Command::LinkRequests(_)) => link_requests(tx, local, device, now_ms).await,
        Some(Command::Approve(approve)) => {
            approve_link(tx, local, device, approve, idempotency, now_ms).await
        }
        Some(Command::List(_)) => answer_devices(tx, device).await,
        Some(Command::Remove(remove)) => remove_device(tx, device, remove.device).await,
    }
}

/// What a device command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A pairing opened.
    Pairing(wire::Pairing),
    /// The requests waiting for approval.
    LinkRequests(wire::LinkRequests),
    /// The account's devices (after an approval or a removal).
    Devices(wire::DeviceList),
}

/// Opens a pairing for `device`'s account (step 1).
pub async fn open_pairing(
    tx: &Transaction,
    local: RegionId,
    device: DeviceAddress,
    secret: [u8; PAIRING_CODE_SECRET_BYTES],
    now_ms: u64,
) -> Outcome<Answer> {
    let code = PairingCode {
        region: local,
        secret,
    };
    let record = PairingRecord {
        secret: code.secret_text(),
        opened_by: device,
        expires_at_ms: now_ms.saturating_add(PAIRING_CODE_TTL_MS),
        request: None,
        linked: None,
    };
    if !pairing::open(tx, &record, now_ms).await? {
        return refuse(ErrorCode::Internal, "a pairing code drawn twice; ask again");
    }
    let answer = wire::Pairing {
        code: code.to_string(),
        expires_at_ms: record.expires_at_ms,
    };
    Ok(Ok((Answer::Pairing(answer), Effects::default())))
}

/// A new device asks to join the account that opened the pairing `request.code` (step 2).
pub async fn request_link(
    tx: &Transaction,
    local: RegionId,
    request: &wire::RequestLink,
    now_ms: u64,
) -> Outcome<wire::LinkStatus> {
    let code: PairingCode = match request.code.parse() {
        Ok(code) => code,
        Err(error) => return Ok(Err(error)),
    };
    if code.region != local {
        return refuse(
            ErrorCode::PairingRefused,
            format!("pairing code {code} belongs to region {}", code.region),
        );
    }
    if let Err(error) = check_request(request, &code) {
        return Ok(Err(error));
    }
    let Some(mut record) = pairing::pairing(tx, &code.secret_text()).await? else {
        return refuse(
            ErrorCode::PairingRefused,
            format!("no pairing has the code {code} (mistyped, or expired and forgotten)"),
        );
    };
    let Some(account) = directory::account_by_id(tx, record.opened_by.account).await? else {
        return refuse(
            ErrorCode::PairingRefused,
            format!("the account that opened pairing {code} no longer exists"),
        );
    };
    if account.home_region != local {
        // Pairings stay where they were opened; the account's devices now live elsewhere.
        return refuse(
            ErrorCode::PairingRefused,
            format!(
                "the account that opened pairing {code} moved to region {} since: open a new \
                 pairing",
                account.home_region
            ),
        );
    }
    let status = |device: Option<DeviceId>| wire::LinkStatus {
        account: account_info(&account),
        device: device.map_or(0, |device| device.0),
    };
    match &record.request {
        Some((asked, _))
            if asked.identity_key == request.identity_key
                && asked.signing_key == request.signing_key =>
        {
            // The same device asking again: where its request stands (approved or not; an
            // approved one is answered even after the code expired, so it learns its number).
            if record.linked.is_none() && record.expires_at_ms <= now_ms {
                return refuse(
                    ErrorCode::PairingRefused,
                    format!("pairing {code} expired before a device approved it"),
                );
            }
            Ok(Ok((status(record.linked), Effects::default())))
        }
        Some(_) => refuse(
            ErrorCode::PairingRefused,
            format!("pairing code {code} was used by another device"),
        ),
        None if record.expires_at_ms <= now_ms => refuse(
            ErrorCode::PairingRefused,
            format!("pairing code {code} expired"),
        ),
        None => {
            record.request = Some((request.clone(), now_ms));
            pairing::put(tx, &record)?;
            Ok(Ok((status(None), Effects::default())))
        }
    }
}

/// The requests of `device`'s account waiting for approval (unexpired, not yet approved).
pub async fn link_requests(
    tx: &Transaction,
    local: RegionId,
    device: DeviceAddress,
    now_ms: u64,
) -> Outcome<Answer> {
    let mut requests: Vec<wire::LinkRequestInfo> = pairing::of_account(tx, device.account)
        .await?
        .into_iter()
        .filter(|record| record.linked.is_none() && record.expires_at_ms > now_ms)
        .filter_map(|record| {
            let (request, requested_at_ms) = record.request?;
            let code = secret_code(local, &record.secret)?;
            Some(wire::LinkRequestInfo {
                code: code.to_string(),
                identity_key: request.identity_key,
                requested_at_ms,
            })
        })
        .collect();
    requests.sort_by_key(|request| request.requested_at_ms);
    let answer = wire::LinkRequests { requests };
    Ok(Ok((Answer::LinkRequests(answer), Effects::default())))
}

/// `device` approves the request made with `approve.code` by the device whose identity key is
/// `approve.identity_key` (step 3). Approving an approved request again answers the list.
pub async fn approve_link(
    tx: &Transaction,
    local: RegionId,
    device: DeviceAddress,
    approve: &wire::ApproveLink,
    idempotency: &IdempotencyKey,
    now_ms: u64,
) -> Outcome<Answer> {
    let code: PairingCode = match approve.code.parse() {
        Ok(code) => code,
        Err(error) => return Ok(Err(error)),
    };
    let refused = |message: String| refuse(ErrorCode::PairingRefused, message);
    if code.region != local {
        return refused(format!(
            "pairing code {code} belongs to region {}",
            code.region
        ));
    }
    let Some(mut record) = pairing::pairing(tx, &code.secret_text()).await? else {
        return refused(format!("no pairing has the code {code}"));
    };
    if record.opened_by.account != device.account {
        return refused(format!("pairing {code} is another account's"));
    }
    let Some((request, _)) = record.request.clone() else {
        return refused(format!("no device asked with pairing code {code} yet"));
    };
    if request.identity_key != approve.identity_key {
        return refused(format!(
            "the device that asked with {code} has another identity key than the one approved"
        ));
    }
    if record.linked.is_some() {
        return answer_devices(tx, device).await;
    }
    if record.expires_at_ms <= now_ms {
        return refused(format!("pairing {code} expired"));
    }
    let current = directory::devices(tx, device.account).await?;
    if current.len() >= DEVICES_PER_ACCOUNT_MAX {
        return refuse(
            ErrorCode::Forbidden,
            format!("an account has at most {DEVICES_PER_ACCOUNT_MAX} devices: remove one first"),
        );
    }
    let linked = directory::add_device(
        tx,
        device.account,
        &request.identity_key,
        &request.signing_key,
        idempotency,
    )
    .await?;
    let address = DeviceAddress {
        account: device.account,
        device: linked,
    };
    let one_time_keys: Vec<(String, Vec<u8>)> = request
        .one_time_keys
        .iter()
        .map(|key| (key.key_id.clone(), key.public_key.clone()))
        .collect();
    keys::add_one_time_keys(tx, address, &one_time_keys, idempotency).await?;
    if let Some(key) = &request.fallback_key {
        keys::set_fallback_key(tx, address, &key.key_id, &key.public_key, &key.signature)?;
    }
    record.linked = Some(linked);
    pairing::put(tx, &record)?;
    answer_devices(tx, device).await
}

/// `device` removes device number `number` of its own account (itself included, unless it is
/// the last one: an account keeps a device).
pub async fn remove_device(
    tx: &Transaction,
    device: DeviceAddress,
    number: u32,
) -> Outcome<Answer> {
    let target = DeviceAddress {
        account: device.account,
        device: DeviceId(number),
    };
    let current = directory::devices(tx, device.account).await?;
    if !current.iter().any(|record| record.device == target) {
        // Numbers are never reused: one the account gave out is a device removed already (a
        // removal retried after its answer was lost), and removing it again changes nothing.
        if number >= 1 && number <= directory::last_device_number(tx, device.account).await? {
            return answer_devices(tx, device).await;
        }
        return refuse(
            ErrorCode::UnknownAccount,
            format!("the account has no device {number}"),
        );
    }
    if current.len() == 1 {
        return refuse(
            ErrorCode::Forbidden,
            "an account keeps at least one device: this is its last",
        );
    }
    directory::remove_device(tx, target).await?;
    keys::remove_device_keys(tx, target);
    device_state::remove_device(tx, target);
    fdb_layers::push::clear(tx, target);
    answer_devices(tx, device).await
}

/// The devices of `device`'s account.
async fn answer_devices(tx: &Transaction, device: DeviceAddress) -> Outcome<Answer> {
    let devices = directory::devices(tx, device.account)
        .await?
        .into_iter()
        .map(|record| wire::DeviceKeys {
            device: record.device.device.0,
            identity_key: record.identity_key,
            signing_key: record.signing_key,
            one_time_key: None,
        })
        .collect();
    let answer = wire::DeviceList { devices };
    Ok(Ok((Answer::Devices(answer), Effects::default())))
}

/// The keys and the proof of a link request, checked before anything is read.
fn check_request(request: &wire::RequestLink, code: &PairingCode) -> Result<(), ProtoError> {
    check_keys(
        &request.identity_key,
        &request.signing_key,
        &request.one_time_keys,
    )?;
    if let Some(key) = &request.fallback_key {
        check_fallback_key(&request.identity_key, &request.signing_key, key)?;
    }
    let bad = || {
        ProtoError::new(
            ErrorCode::BadSignature,
            "the link request's proof does not verify with its signing key",
        )
    };
    let signing_key: &[u8; 32] = request
        .signing_key
        .as_slice()
        .try_into()
        .map_err(|_| bad())?;
    let signing_key = vodozemac::Ed25519PublicKey::from_slice(signing_key).map_err(|_| bad())?;
    let signature = vodozemac::Ed25519Signature::from_slice(&request.proof).map_err(|_| bad())?;
    // The proof covers the canonical code, whatever the user typed.
    let payload = wire::link_proof_payload(
        &code.to_string(),
        &request.identity_key,
        &request.signing_key,
    );
    signing_key.verify(&payload, &signature).map_err(|_| bad())
}

/// The code of a stored secret (canonical text) in region `local`.
fn secret_code(local: RegionId, secret: &str) -> Option<PairingCode> {
    format!("{}-{secret}", local.0).parse().ok()
}

fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Outcome<T> {
    Ok(Err(ProtoError::new(code, message)))
}

#[cfg(test)]
mod tests {
    use fdb_layers::{Database, EmbeddedOptions};
    use vodozemac::olm::Account;

    use super::*;

    const HERE: RegionId = RegionId(1);
    const NOW_MS: u64 = 1_000_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        db: Database,
        phone: DeviceAddress,
    }

    fn key(counter: u64) -> IdempotencyKey {
        let mut nonce = [0u8; 16];
        nonce[8..].copy_from_slice(&counter.to_be_bytes());
        IdempotencyKey::new(NOW_MS, nonce)
    }

    /// An account homed here with one device, the phone.
    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dir.path().join("region.redb"), EmbeddedOptions::default())
            .expect("open");
        let phone = db
            .transact(|tx| async move {
                let record = directory::create_account(&tx, "ada", HERE, &key(1))
                    .await?
                    .expect("name free");
                let device =
                    directory::add_first_device(&tx, record.id, &[1; 32], &[2; 32], &key(2))
                        .await?
                        .expect("first device");
                Ok(DeviceAddress {
                    account: record.id,
                    device,
                })
            })
            .await
            .expect("store");
        Fixture {
            _dir: dir,
            db,
            phone,
        }
    }

    async fn command(
        fixture: &Fixture,
        device: DeviceAddress,
        command: Command,
        now_ms: u64,
    ) -> Result<Answer, ProtoError> {
        let command = wire::DeviceCommand {
            command: Some(command),
        };
        fixture
            .db
            .transact(|tx| {
                let command = command.clone();
                async move {
                    device_command(&tx, HERE, device, &command, [7; 5], &key(3), now_ms).await
                }
            })
            .await
            .expect("store")
            .map(|(answer, _)| answer)
    }

    async fn ask(
        fixture: &Fixture,
        request: &wire::RequestLink,
        now_ms: u64,
    ) -> Result<wire::LinkStatus, ProtoError> {
        fixture
            .db
            .transact(|tx| {
                let request = request.clone();
                async move { request_link(&tx, HERE, &request, now_ms).await }
            })
            .await
            .expect("store")
            .map(|(status, _)| status)
    }

    /// A new device's request with `code`, signed with its new keys.
    fn request_from(new_device: &Account, code: &str) -> wire::RequestLink {
        let identity_key = new_device.curve25519_key().to_bytes().to_vec();
        let signing_key = new_device.ed25519_key().as_bytes().to_vec();
        let proof = new_device
            .sign(wire::link_proof_payload(code, &identity_key, &signing_key))
            .to_bytes()
            .to_vec();
        wire::RequestLink {
            code: code.into(),
            identity_key,
            signing_key,
            one_time_keys: vec![wire::OneTimeKey {
                key_id: "laptop-1".into(),
                public_key: vec![9; 32],
                ..wire::OneTimeKey::default()
            }],
            fallback_key: None,
            proof,
        }
    }

    fn pairing_code(answer: Answer) -> String {
        match answer {
            Answer::Pairing(pairing) => {
                assert_eq!(pairing.expires_at_ms, NOW_MS + PAIRING_CODE_TTL_MS);
                pairing.code
            }
            other => panic!("expected a pairing, got {other:?}"),
        }
    }

    fn device_numbers(answer: Answer) -> Vec<u32> {
        match answer {
            Answer::Devices(list) => list.devices.iter().map(|device| device.device).collect(),
            other => panic!("expected a device list, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_device_links_with_a_code_and_an_approval_then_is_removed() {
        let fixture = fixture().await;
        let phone = fixture.phone;
        let open = Command::OpenPairing(wire::OpenPairing {});
        let code = pairing_code(command(&fixture, phone, open, NOW_MS).await.expect("open"));
        assert_eq!(code, "1-0W3G-E1R7", "region 1 and the secret drawn");

        let laptop = Account::new();
        let mut forged = request_from(&laptop, &code);
        forged.proof = request_from(&Account::new(), &code).proof;
        let refused = ask(&fixture, &forged, NOW_MS + 1)
            .await
            .expect_err("forged");
        assert_eq!(refused.code, ErrorCode::BadSignature);

        let request = request_from(&laptop, &code);
        let status = ask(&fixture, &request, NOW_MS + 1).await.expect("asked");
        assert_eq!((status.account.name.as_str(), status.device), ("ada", 0));
        let intruder = request_from(&Account::new(), &code);
        let refused = ask(&fixture, &intruder, NOW_MS + 2)
            .await
            .expect_err("used");
        assert_eq!(refused.code, ErrorCode::PairingRefused);

        let waiting = command(
            &fixture,
            phone,
            Command::LinkRequests(wire::OpenPairing {}),
            NOW_MS + 3,
        )
        .await
        .expect("requests");
        let Answer::LinkRequests(waiting) = waiting else {
            panic!("expected requests")
        };
        assert_eq!(waiting.requests.len(), 1);
        assert_eq!(waiting.requests[0].code, code);
        assert_eq!(waiting.requests[0].identity_key, request.identity_key);

        let wrong = Command::Approve(wire::ApproveLink {
            code: code.clone(),
            identity_key: intruder.identity_key.clone(),
        });
        let refused = command(&fixture, phone, wrong, NOW_MS + 4)
            .await
            .expect_err("not that device");
        assert_eq!(refused.code, ErrorCode::PairingRefused);
        let approve = Command::Approve(wire::ApproveLink {
            code: code.clone(),
            identity_key: request.identity_key.clone(),
        });
        let devices = command(&fixture, phone, approve.clone(), NOW_MS + 4)
            .await
            .expect("approved");
        assert_eq!(device_numbers(devices), vec![1, 2]);
        let again = command(&fixture, phone, approve, NOW_MS + 5)
            .await
            .expect("approved again");
        assert_eq!(
            device_numbers(again),
            vec![1, 2],
            "approving twice adds once"
        );
        let status = ask(&fixture, &request, NOW_MS + PAIRING_CODE_TTL_MS + 1)
            .await
            .expect("asked again after the expiry");
        assert_eq!(status.device, 2, "the new device learns its number");
        let laptop_address = DeviceAddress {
            account: phone.account,
            device: DeviceId(2),
        };
        let keys_left = fixture
            .db
            .transact(|tx| async move { keys::one_time_key_count(&tx, laptop_address).await })
            .await
            .expect("store");
        assert_eq!(keys_left, 1, "the new device's one-time key is published");

        // The new device may act too; then the phone removes it.
        let listed = command(
            &fixture,
            laptop_address,
            Command::List(wire::OpenPairing {}),
            0,
        )
        .await
        .expect("the laptop lists");
        assert_eq!(device_numbers(listed), vec![1, 2]);
        let removed = command(
            &fixture,
            phone,
            Command::Remove(wire::RemoveDevice { device: 2 }),
            NOW_MS + 6,
        )
        .await
        .expect("removed");
        assert_eq!(device_numbers(removed), vec![1]);
        let refused = command(
            &fixture,
            laptop_address,
            Command::List(wire::OpenPairing {}),
            0,
        )
        .await
        .expect_err("a removed device acts no more");
        assert_eq!(refused.code, ErrorCode::Forbidden);
        let refused = command(
            &fixture,
            phone,
            Command::Remove(wire::RemoveDevice { device: 1 }),
            NOW_MS + 7,
        )
        .await
        .expect_err("the last device stays");
        assert_eq!(refused.code, ErrorCode::Forbidden);
        // A removal retried after its answer was lost succeeds and changes nothing; a number
        // the account never gave out is refused.
        let again = command(
            &fixture,
            phone,
            Command::Remove(wire::RemoveDevice { device: 2 }),
            NOW_MS + 8,
        )
        .await
        .expect("removed already");
        assert_eq!(device_numbers(again), vec![1]);
        let refused = command(
            &fixture,
            phone,
            Command::Remove(wire::RemoveDevice { device: 3 }),
            NOW_MS + 9,
        )
        .await
        .expect_err("never a device");
        assert_eq!(refused.code, ErrorCode::UnknownAccount);
    }

    #[tokio::test]
    async fn an_expired_or_unknown_code_is_refused() {
        let fixture = fixture().await;
        let open = Command::OpenPairing(wire::OpenPairing {});
        let code = pairing_code(
            command(&fixture, fixture.phone, open, NOW_MS)
                .await
                .expect("open"),
        );
        let request = request_from(&Account::new(), &code);
        let refused = ask(&fixture, &request, NOW_MS + PAIRING_CODE_TTL_MS)
            .await
            .expect_err("expired");
        assert_eq!(refused.code, ErrorCode::PairingRefused);
        let unknown = request_from(&Account::new(), "1-ZZZZ-ZZZZ");
        let refused = ask(&fixture, &unknown, NOW_MS).await.expect_err("unknown");
        assert_eq!(refused.code, ErrorCode::PairingRefused);
        let elsewhere = request_from(&Account::new(), "2-ZZZZ-ZZZZ");
        let refused = ask(&fixture, &elsewhere, NOW_MS)
            .await
            .expect_err("elsewhere");
        assert_eq!(refused.code, ErrorCode::PairingRefused);
        let mistyped = request_from(&Account::new(), "1-ZZZZ");
        let refused = ask(&fixture, &mistyped, NOW_MS)
            .await
            .expect_err("mistyped");
        assert_eq!(refused.code, ErrorCode::Malformed);
    }
}
