//! Linking a new device to an existing account, on the new device: its data directory, new
//! Olm keys, a request to the region the pairing code names, signed with the new signing key
//! (the proof it holds the keys it asks to link), then asking again until a device of the
//! account approves it. The other side (opening a pairing, approving, listing and removing
//! devices) is [`crate::Device::link`] and its siblings.
//!
//! Like a registration, a link that is certainly refused (a mistyped, expired or used code, a
//! bad proof) leaves nothing behind; one interrupted while waiting keeps its keys, and running
//! `link-accept` again with the same code in the same directory picks up the same request.

use std::path::Path;
use std::time::Duration;

use relay_proto::wire::{RequestLink, link_proof_payload};
use relay_proto::{AccountId, DeviceId, PairingCode};

use crate::device::{Environment, Overrides};
use crate::error::{ClientError, Result};
use crate::events::{Event, fingerprint};
use crate::limits::{LINK_POLL_INTERVAL_MS, LINK_POLLS_MAX};
use crate::register::{
    Made, definitely_refused, dial_new_device, new_device_keys, prepare_data_dir,
};
use crate::store::{Contact, Identity};

/// Makes `data_dir` a new device of the account that showed `code`, in the real world (kernel
/// sockets, the locator, the system clock). Reports [`Event::LinkRequested`] once the request
/// is in (with the fingerprint to compare on the approving device), then [`Event::Linked`].
pub async fn link_accept(
    data_dir: &Path,
    code: &str,
    overrides: Overrides,
    sink: &mut dyn FnMut(Event),
) -> Result<Identity> {
    link_accept_in(&Environment::default(), data_dir, code, overrides, sink).await
}

/// [`link_accept`] in a given environment.
pub async fn link_accept_in(
    environment: &Environment,
    data_dir: &Path,
    code: &str,
    overrides: Overrides,
    sink: &mut dyn FnMut(Event),
) -> Result<Identity> {
    let code: PairingCode = code
        .parse()
        .map_err(|error: relay_proto::ProtoError| ClientError::Invalid(error.message))?;
    let key_path = overrides.device_key_path(data_dir);
    let made = Made::before(data_dir, &key_path);
    let linked = attempt(environment, data_dir, code, overrides, sink).await;
    match &linked {
        Err(error) if definitely_refused(error) || matches!(error, ClientError::Invalid(_)) => {
            made.undo()
        }
        Err(_) => sink(Event::Note {
            message: format!(
                "{} keeps this device's keys: `link-accept {code}` there again picks up the \
                 same request while the code is valid",
                data_dir.display()
            ),
        }),
        Ok(_) => {}
    }
    linked
}

async fn attempt(
    environment: &Environment,
    data_dir: &Path,
    code: PairingCode,
    overrides: Overrides,
    sink: &mut dyn FnMut(Event),
) -> Result<Identity> {
    let (mut store, settings) = prepare_data_dir(data_dir, overrides, "link-accept", sink)?;
    let (identity_key, signing_key, one_time_keys, fallback_key) =
        new_device_keys(&mut store, environment.clock.now_ms())?;
    let code_text = code.to_string();
    let proof = store
        .load_crypto()?
        .ok_or_else(|| store.damaged("the Olm account is missing"))?
        .sign(&link_proof_payload(&code_text, &identity_key, &signing_key));
    let request = RequestLink {
        code: code_text.clone(),
        identity_key: identity_key.to_vec(),
        signing_key: signing_key.to_vec(),
        one_time_keys,
        fallback_key,
        proof: proof.to_vec(),
    };

    let connection = dial_new_device(environment, &settings, &store, sink).await?;
    let edge = connection.edge();
    let mut announced = false;
    let mut status = None;
    for _ in 0..LINK_POLLS_MAX {
        let answer = match connection.request_link(request.clone()).await {
            Ok(answer) => answer,
            Err(error) => {
                connection.close().await;
                return Err(error);
            }
        };
        if answer.device != 0 {
            status = Some(answer);
            break;
        }
        if !announced {
            announced = true;
            sink(Event::LinkRequested {
                code: code_text.clone(),
                name: answer.account.name.clone(),
                fingerprint: fingerprint(&identity_key),
            });
        }
        tokio::time::sleep(Duration::from_millis(LINK_POLL_INTERVAL_MS)).await;
    }
    connection.close().await;
    let status = status.ok_or_else(|| {
        ClientError::TimedOut(format!(
            "no device of the account approved the request before pairing code {code_text} expired"
        ))
    })?;
    let account = &status.account;
    if account.account == 0 || account.region != code.region.0 {
        return Err(ClientError::UnexpectedResponse(format!(
            "the link answered account {} in region {} for a code of region {}",
            account.account, account.region, code.region
        )));
    }
    let identity = Identity {
        account: AccountId(account.account),
        device: DeviceId(status.device),
        name: account.name.clone(),
        region: account.region,
        epoch: account.epoch,
    };
    store.write_with_crypto(|writer, crypto| {
        crypto.mark_keys_published();
        writer.set_identity(&identity)?;
        writer.set_last_edge(edge)?;
        writer.upsert_contact(&Contact {
            account: identity.account,
            name: identity.name.clone(),
            region: identity.region,
        })
    })?;
    sink(Event::Linked {
        name: identity.name.clone(),
        account: identity.account.0,
        device: identity.device.0,
        region: identity.region,
    });
    Ok(identity)
}
