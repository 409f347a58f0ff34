//! Devices and their keys: registration of an account's first device, one-time key uploads and
//! claims, and the signing key with the device's marks that an edge checks at authentication.

use super::*;

/// Registers the first device of an account homed here. `account` comes from the directory
/// writer (or this region, when it is the writer). Retried with the same `idempotency` key
/// after its commit, it answers the device it registered.
pub async fn register_device(
    tx: &Transaction,
    account: &directory::AccountRecord,
    request: &wire::Register,
    idempotency: &IdempotencyKey,
) -> Outcome<wire::Registered> {
    if let Err(error) = check_keys(
        &request.identity_key,
        &request.signing_key,
        &request.one_time_keys,
    )
    .and_then(|()| {
        request.fallback_key.as_ref().map_or(Ok(()), |key| {
            check_fallback_key(&request.identity_key, &request.signing_key, key)
        })
    }) {
        return Ok(Err(error));
    }
    directory::put_account(tx, account).await?;
    let Ok(device) = directory::add_first_device(
        tx,
        account.id,
        &request.identity_key,
        &request.signing_key,
        idempotency,
    )
    .await?
    else {
        // A registration retried after its answer was lost (a phone on a bad network) comes
        // back with the same keys: it is that device, not a stranger wanting the name.
        let devices = directory::devices(tx, account.id).await?;
        if let Some(same) = devices.iter().find(|existing| {
            existing.identity_key == request.identity_key
                && existing.signing_key == request.signing_key
        }) {
            let registered = wire::Registered {
                account: account_info(account),
                device: same.device.device.0,
            };
            return Ok(Ok((registered, Effects::default())));
        }
        return refuse(
            ErrorCode::NameTaken,
            format!("the name {} is taken", account.name),
        );
    };
    let address = DeviceAddress {
        account: account.id,
        device,
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
    let registered = wire::Registered {
        account: account_info(account),
        device: device.0,
    };
    Ok(Ok((registered, Effects::default())))
}

/// Validates public keys sent by a device.
pub fn check_keys(
    identity_key: &[u8],
    signing_key: &[u8],
    one_time_keys: &[wire::OneTimeKey],
) -> Result<(), ProtoError> {
    if identity_key.len() != 32 || signing_key.len() != 32 {
        return Err(ProtoError::invalid(
            "identity and signing keys are 32 bytes each",
        ));
    }
    check_one_time_keys(one_time_keys)
}

/// Validates a fallback key: a well-formed key flagged as a fallback key, signed by the
/// device's Ed25519 key over [`wire::fallback_key_signing_payload`] with its identity key. A
/// claimer checks the signature again; checking it here keeps a broken key from being handed
/// out at all.
pub fn check_fallback_key(
    identity_key: &[u8],
    signing_key: &[u8],
    key: &wire::OneTimeKey,
) -> Result<(), ProtoError> {
    check_one_time_keys(std::slice::from_ref(key))?;
    if !key.fallback {
        return Err(ProtoError::invalid("a fallback key must be flagged as one"));
    }
    let bad = || {
        ProtoError::new(
            ErrorCode::BadSignature,
            "the fallback key's signature does not verify",
        )
    };
    let signing_key: &[u8; 32] = signing_key.try_into().map_err(|_| bad())?;
    let signing_key = vodozemac::Ed25519PublicKey::from_slice(signing_key).map_err(|_| bad())?;
    let signature = vodozemac::Ed25519Signature::from_slice(&key.signature).map_err(|_| bad())?;
    let payload = wire::fallback_key_signing_payload(identity_key, &key.key_id, &key.public_key);
    signing_key.verify(&payload, &signature).map_err(|_| bad())
}

fn check_one_time_keys(one_time_keys: &[wire::OneTimeKey]) -> Result<(), ProtoError> {
    if one_time_keys.len() > ONE_TIME_KEYS_PER_UPLOAD_MAX {
        return Err(ProtoError::new(
            ErrorCode::TooLarge,
            format!("at most {ONE_TIME_KEYS_PER_UPLOAD_MAX} one-time keys per upload"),
        ));
    }
    if one_time_keys
        .iter()
        .any(|key| key.public_key.len() != 32 || key.key_id.is_empty() || key.key_id.len() > 64)
    {
        return Err(ProtoError::invalid(
            "one-time keys are 32 bytes with a short non-empty id",
        ));
    }
    Ok(())
}

/// Adds one-time keys of a device homed here, and replaces its fallback key when the upload
/// carries one; answers the new count and the fallback key's state.
pub async fn upload_one_time_keys(
    tx: &Transaction,
    device: DeviceAddress,
    upload: &wire::UploadOneTimeKeys,
    idempotency: &IdempotencyKey,
) -> Outcome<wire::OneTimeKeyCount> {
    if let Err(error) = check_one_time_keys(&upload.keys) {
        return Ok(Err(error));
    }
    let Some(record) = directory::device(tx, device).await? else {
        return refuse(
            ErrorCode::UnknownAccount,
            format!("unknown device {device}"),
        );
    };
    if let Some(key) = &upload.fallback_key {
        if let Err(error) = check_fallback_key(&record.identity_key, &record.signing_key, key) {
            return Ok(Err(error));
        }
        keys::set_fallback_key(tx, device, &key.key_id, &key.public_key, &key.signature)?;
    }
    let new_keys: Vec<(String, Vec<u8>)> = upload
        .keys
        .iter()
        .map(|key| (key.key_id.clone(), key.public_key.clone()))
        .collect();
    keys::add_one_time_keys(tx, device, &new_keys, idempotency).await?;
    let count = wire::OneTimeKeyCount {
        remaining: keys::one_time_key_count(tx, device).await?,
        fallback_key: keys::fallback_key_state(tx, device).await? as i32,
        cached: false,
    };
    Ok(Ok((count, Effects::default())))
}

/// Claims one one-time key of every current device of an account homed here (its signed
/// fallback key, flagged as such, when it has none left). Retried with the same `idempotency`
/// key after its commit, it answers the keys it claimed. Claims are rate-limited per claimer
/// before they get here ([`crate::claims`]).
pub async fn claim_keys(
    tx: &Transaction,
    local: RegionId,
    account: AccountId,
    idempotency: &IdempotencyKey,
) -> Outcome<KeyBundle> {
    match directory::account_by_id(tx, account).await? {
        Some(record) if record.home_region == local => {}
        _ => {
            return refuse(
                ErrorCode::UnknownAccount,
                format!("account {account} is not homed here"),
            );
        }
    }
    let mut bundle = KeyBundle {
        account: account.0,
        devices: Vec::new(),
    };
    for device in directory::devices(tx, account).await? {
        let address = device.device;
        let one_time_key = keys::claim_one_time_key(tx, address, idempotency)
            .await?
            .key
            .map(|key| wire::OneTimeKey {
                key_id: key.key_id,
                public_key: key.public_key,
                signature: key.signature,
                fallback: key.fallback,
            });
        bundle.devices.push(DeviceKeys {
            device: device.device.device.0,
            identity_key: device.identity_key,
            signing_key: device.signing_key,
            one_time_key,
        });
    }
    Ok(Ok((bundle, Effects::default())))
}

/// The signing key of a device homed here, for authentication at an edge, with what the edge
/// checks next: the highest queue sequence the device acknowledged and the highest
/// `device_seq` of its envelopes stored here (a device presenting lower ones went back).
pub async fn signing_key(tx: &Transaction, device: DeviceAddress) -> Outcome<wire::SigningKey> {
    let Some(record) = directory::device(tx, device).await? else {
        return refuse(
            ErrorCode::UnknownAccount,
            format!("unknown device {device}"),
        );
    };
    let marks = device_state::marks(tx, device).await?;
    let answer = wire::SigningKey {
        device: device.into(),
        signing_key: record.signing_key,
        one_time_keys_remaining: keys::one_time_key_count(tx, device).await?,
        fallback_key: keys::fallback_key_state(tx, device).await? as i32,
        acked_queue_seq: marks.acked_queue_seq,
        device_seq: marks.device_seq,
    };
    Ok(Ok((answer, Effects::default())))
}
