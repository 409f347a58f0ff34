//! Registration: a new data directory's device, with new Olm keys, an account at the edge the
//! locator names for the device's address, and the settings later commands reuse.
//!
//! A registration that fails leaves nothing behind when the account was certainly not created
//! (bad arguments, no edge, a refused name): every file it made is removed, and the data
//! directory too if it made it (a directory the user already had is never removed, nor
//! anything that was in it). When the request went out and no answer says it failed (a
//! timeout, a silent directory writer), the account may exist with these keys: they are kept,
//! and registering again in the same directory finishes it with the same device.

use std::path::{Path, PathBuf};

use relay_proto::limits::ONE_TIME_KEYS_AT_REGISTRATION;
use relay_proto::wire::{OneTimeKey, Register, validate_account_name};
use relay_proto::{AccountId, DeviceId};

use crate::connection::{EdgeConnection, dial, trusted_roots};
use crate::crypto::Crypto;
use crate::device::{CA_FILE, DATABASE_FILE, Environment, Overrides, resolve};
use crate::error::{ClientError, Result};
use crate::events::Event;
use crate::fallback::FallbackTimes;
use crate::secrets;
use crate::store::{Contact, Identity, Settings, Store};

/// Creates the data directory's device in the real world (kernel sockets, the locator, the
/// system clock, randomness from the operating system). Reports [`Event::Registered`].
pub async fn register(
    data_dir: &Path,
    name: &str,
    overrides: Overrides,
    registration_token: &str,
    sink: &mut dyn FnMut(Event),
) -> Result<Identity> {
    register_in(
        &Environment::default(),
        data_dir,
        name,
        overrides,
        registration_token,
        sink,
    )
    .await
}

/// [`register`] in a given environment.
pub async fn register_in(
    environment: &Environment,
    data_dir: &Path,
    name: &str,
    overrides: Overrides,
    registration_token: &str,
    sink: &mut dyn FnMut(Event),
) -> Result<Identity> {
    validate_account_name(name).map_err(|error| ClientError::Invalid(error.message))?;
    let key_path = overrides.device_key_path(data_dir);
    let made = Made::before(data_dir, &key_path);
    let mut sent = false;
    let registered = attempt(
        environment,
        data_dir,
        name,
        overrides,
        registration_token,
        sink,
        &mut sent,
    )
    .await;
    match &registered {
        Err(error) if !sent || definitely_refused(error) => made.undo(),
        Err(_) => sink(Event::Note {
            message: format!(
                "the registration may have gone through: {} keeps this device's keys, and \
                 registering again there finishes it",
                data_dir.display()
            ),
        }),
        Ok(_) => {}
    }
    registered
}

/// Whether the edge's answer says the account was not created.
pub(crate) fn definitely_refused(error: &ClientError) -> bool {
    matches!(error, ClientError::Remote(refusal) if !refusal.code.is_retryable())
}

async fn attempt(
    environment: &Environment,
    data_dir: &Path,
    name: &str,
    overrides: Overrides,
    registration_token: &str,
    sink: &mut dyn FnMut(Event),
    sent: &mut bool,
) -> Result<Identity> {
    let (mut store, settings) = prepare_data_dir(data_dir, overrides, "register", sink)?;

    let (identity_key, signing_key, one_time_keys, fallback_key) =
        new_device_keys(&mut store, environment.clock.now_ms())?;

    let connection = dial_new_device(environment, &settings, &store, sink).await?;
    let edge = connection.edge();
    let request = Register {
        name: name.into(),
        identity_key: identity_key.to_vec(),
        signing_key: signing_key.to_vec(),
        one_time_keys,
        registration_token: registration_token.into(),
        fallback_key,
    };
    *sent = true;
    let registered = connection.register(request).await;
    connection.close().await;
    let registered = registered?;
    if registered.device == 0 || registered.account.account == 0 || registered.account.name != name
    {
        return Err(ClientError::UnexpectedResponse(format!(
            "registration answered account {} device {} named {:?}",
            registered.account.account, registered.device, registered.account.name
        )));
    }
    let identity = Identity {
        account: AccountId(registered.account.account),
        device: DeviceId(registered.device),
        name: name.into(),
        region: registered.account.region,
        epoch: registered.account.epoch,
    };
    store.write_with_crypto(|writer, crypto| {
        crypto.mark_keys_published();
        writer.set_identity(&identity)?;
        writer.set_last_edge(edge)?;
        writer.upsert_contact(&Contact {
            account: identity.account,
            name: name.into(),
            region: identity.region,
        })
    })?;
    sink(Event::Registered {
        name: identity.name.clone(),
        account: identity.account.0,
        device: identity.device.0,
        region: identity.region,
    });
    Ok(identity)
}

/// The public keys a new device publishes: its identity and signing keys, one-time keys and a
/// signed fallback key. An earlier attempt (say, one whose answer was lost) left keys: they are
/// reused rather than made anew, so the region recognises the same device.
pub(crate) fn new_device_keys(store: &mut Store, now_ms: u64) -> Result<NewDeviceKeys> {
    if !store.has_olm_account()? {
        let changes = Crypto::new().take_changes()?;
        store.write(|writer| writer.save_crypto(&changes))?;
    }
    store.write_with_crypto(|writer, crypto| {
        if crypto.unpublished_one_time_keys().is_empty() {
            crypto.generate_one_time_keys(ONE_TIME_KEYS_AT_REGISTRATION);
        }
        if crypto.unpublished_fallback_key().is_none() {
            crypto.generate_fallback_key();
            writer.set_fallback_times(&FallbackTimes {
                made_at_ms: Some(now_ms),
                previous_kept: false,
            })?;
        }
        Ok((
            crypto.identity_key(),
            crypto.signing_key(),
            crypto.unpublished_one_time_keys(),
            crypto.unpublished_fallback_key(),
        ))
    })
}

/// A new device's identity key, signing key, one-time keys and fallback key.
pub(crate) type NewDeviceKeys = ([u8; 32], [u8; 32], Vec<OneTimeKey>, Option<OneTimeKey>);

/// Creates (or reopens) a new device's data directory: private, its database and device key,
/// no identity yet, and the settings later commands reuse (given ones first, then remembered
/// ones; the CA certificate copied in). For `register` and `link-accept`.
pub(crate) fn prepare_data_dir(
    data_dir: &Path,
    overrides: Overrides,
    command: &str,
    sink: &mut dyn FnMut(Event),
) -> Result<(Store, Settings)> {
    create_private_dir(data_dir)?;
    let key_path = overrides.device_key_path(data_dir);
    for message in secrets::repair_permissions(data_dir, &[&key_path]) {
        sink(Event::Note { message });
    }
    let mut store = Store::create(&data_dir.join(DATABASE_FILE))?;
    store.unlock(&key_path)?;
    if let Some(identity) = store.identity()? {
        return Err(ClientError::AlreadyRegistered(identity.name));
    }
    let remembered = store.settings()?;
    let ca_path = match (&overrides.ca_path, &remembered) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(settings)) => settings
            .ca_path
            .as_ref()
            .map(|path| resolve(data_dir, path)),
        (None, None) => None,
    };
    let given = Settings {
        locator: overrides
            .locator
            .or(remembered.as_ref().map(|settings| settings.locator))
            .ok_or_else(|| ClientError::Invalid(format!("{command} needs --locator ADDR")))?,
        bind_ip: overrides
            .bind_ip
            .or(remembered.as_ref().map(|settings| settings.bind_ip))
            .ok_or_else(|| ClientError::Invalid(format!("{command} needs --bind IP")))?,
        ca_path,
    };
    let ca_copy = data_dir.join(CA_FILE);
    if let Some(path) = &given.ca_path
        && *path != ca_copy
    {
        std::fs::copy(path, &ca_copy).map_err(|error| {
            ClientError::Invalid(format!(
                "cannot copy the CA certificate {}: {error}",
                path.display()
            ))
        })?;
    }
    let settings = Settings {
        ca_path: given.ca_path.as_ref().map(|_| ca_copy.clone()),
        ..given.clone()
    };
    trusted_roots(&settings)?;
    let stored = Settings {
        ca_path: given.ca_path.as_ref().map(|_| PathBuf::from(CA_FILE)),
        ..given
    };

    store.write(|writer| writer.set_settings(&stored))?;
    Ok((store, settings))
}

/// What a registration found before it began, so that a failed one removes exactly what it
/// made.
#[derive(Debug)]
pub(crate) struct Made {
    data_dir: PathBuf,
    /// Whether the data directory existed.
    dir_existed: bool,
    /// The files a registration makes, each with whether it existed before.
    files: Vec<(PathBuf, bool)>,
}

impl Made {
    pub(crate) fn before(data_dir: &Path, key_path: &Path) -> Self {
        let database = data_dir.join(DATABASE_FILE);
        let mut files = vec![
            key_path.to_path_buf(),
            data_dir.join(CA_FILE),
            database.clone(),
        ];
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut name = database.clone().into_os_string();
            name.push(suffix);
            files.push(PathBuf::from(name));
        }
        Self {
            data_dir: data_dir.to_owned(),
            dir_existed: data_dir.exists(),
            files: files
                .into_iter()
                .map(|path| {
                    let existed = path.exists();
                    (path, existed)
                })
                .collect(),
        }
    }

    /// Removes what the registration made: its files, then the directory if it made it and
    /// it is empty (never anything that was there before).
    pub(crate) fn undo(&self) {
        for (path, existed) in &self.files {
            if !existed {
                let _ = std::fs::remove_file(path);
            }
        }
        if !self.dir_existed {
            let _ = std::fs::remove_dir(&self.data_dir);
        }
    }
}

/// Creates the data directory readable only by its owner (it holds private keys).
fn create_private_dir(path: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)?;
    Ok(())
}

/// Dials an edge for a device being made (registered or linked), from the deployment settings
/// just stored, reporting what discovery noted on the way.
pub(crate) async fn dial_new_device(
    environment: &Environment,
    settings: &Settings,
    store: &Store,
    sink: &mut dyn FnMut(Event),
) -> Result<EdgeConnection> {
    let mut notes = Vec::new();
    let dialed = dial(
        &environment.dialer,
        settings,
        store.last_edge()?,
        &mut notes,
    )
    .await;
    for message in notes {
        sink(Event::Note { message });
    }
    dialed
}
