//! The device's secrets at rest: the Olm account and session pickles are sealed with
//! XChaCha20-Poly1305 under a 32-byte **device key** kept apart from the database, so a copy of
//! `relay.db` alone (a backup, a synced folder, a stolen laptop image) holds no usable key.
//!
//! The key lives in a file of its own, `device.key` beside the database by default (64 hex
//! digits and a newline, mode 0600, in the 0700 data directory). To keep it elsewhere (another
//! disk, a secrets mount), point `RELAY_DEVICE_KEY_FILE` (or `relay --device-key PATH`) at it
//! for every command; registration creates it there. A missing or wrong key is a clear error:
//! the device never silently starts over with a new identity.
//!
//! A sealed value is `sealed1:` then the hex of a random 24-byte nonce and the ciphertext with
//! its tag. The associated data names what the value is (the account, or the sessions with one
//! device), so a sealed value copied to another row does not open. Values from builds before
//! sealing are plaintext JSON; [`crate::store`] seals them on the first open with a key.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroize;

use crate::error::{ClientError, Result};

/// The device key's file name inside a data directory (when not kept elsewhere).
pub const DEVICE_KEY_FILE: &str = "device.key";
/// Length of a device key, in bytes.
pub const DEVICE_KEY_BYTES: usize = 32;
/// Length of a sealed value's nonce, in bytes.
pub const NONCE_BYTES: usize = 24;
/// What starts every sealed value.
pub const SEALED_PREFIX: &str = "sealed1:";
/// Permission bits of the data directory: its owner only.
pub const DATA_DIR_MODE: u32 = 0o700;
/// Permission bits of the key file and the database files: its owner may read and write.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// The key that seals a device's secrets. Its bytes are wiped when it is dropped and never
/// printed.
pub struct DeviceKey {
    key: [u8; DEVICE_KEY_BYTES],
    path: PathBuf,
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Drop for DeviceKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl DeviceKey {
    /// Reads the key file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let mut text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClientError::DeviceKey(format!(
                    "the device key file {} is missing; the device's Olm keys are encrypted under \
                     it. If you keep it elsewhere, set RELAY_DEVICE_KEY_FILE (or --device-key) to \
                     its path",
                    path.display()
                )));
            }
            Err(error) => {
                return Err(ClientError::DeviceKey(format!(
                    "cannot read the device key file {}: {error}",
                    path.display()
                )));
            }
        };
        let parsed = parse_hex_key(text.trim());
        text.zeroize();
        let key = parsed.ok_or_else(|| {
            ClientError::DeviceKey(format!(
                "{} is not a device key (expected {} hex digits)",
                path.display(),
                DEVICE_KEY_BYTES * 2
            ))
        })?;
        Ok(Self {
            key,
            path: path.to_owned(),
        })
    }

    /// Creates a new random key in a new file at `path` (mode 0600), durably: the file and its
    /// directory entry are synced before anything is sealed with it. Refuses to replace a file.
    pub fn create(path: &Path) -> Result<Self> {
        let mut key = [0u8; DEVICE_KEY_BYTES];
        rand::rng().fill_bytes(&mut key);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(PRIVATE_FILE_MODE);
        }
        let written = (|| {
            let mut file = options.open(path)?;
            let mut text = hex(&key);
            text.push('\n');
            let result = file
                .write_all(text.as_bytes())
                .and_then(|()| file.sync_all());
            text.zeroize();
            result?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)?.sync_all()?;
            }
            Ok::<_, std::io::Error>(())
        })();
        written.map_err(|error| {
            ClientError::DeviceKey(format!(
                "cannot create the device key file {}: {error}",
                path.display()
            ))
        })?;
        Ok(Self {
            key,
            path: path.to_owned(),
        })
    }

    /// The key at `path`, created first if there is no file.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        if path.exists() {
            Self::load(path)
        } else {
            Self::create(path)
        }
    }

    /// Where the key is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Seals `plaintext`, bound to `what` (associated data naming the value).
    pub fn seal(&self, what: &str, plaintext: &str) -> Result<String> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: what.as_bytes(),
                },
            )
            .map_err(|_| ClientError::Crypto(format!("sealing {what} failed")))?;
        let mut text =
            String::with_capacity(SEALED_PREFIX.len() + 2 * (NONCE_BYTES + sealed.len()));
        text.push_str(SEALED_PREFIX);
        text.push_str(&hex(&nonce));
        text.push_str(&hex(&sealed));
        Ok(text)
    }

    /// Opens a value sealed by [`DeviceKey::seal`] for the same `what`; a wrong key, a value of
    /// another row or a damaged value is an error.
    pub fn open(&self, what: &str, sealed: &str) -> Result<String> {
        let bytes = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(unhex)
            .filter(|bytes| bytes.len() > NONCE_BYTES)
            .ok_or_else(|| ClientError::Corrupt(format!("the sealed {what} is not well formed")))?;
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let nonce = <[u8; NONCE_BYTES]>::try_from(nonce)
            .map_err(|_| ClientError::Corrupt(format!("the sealed {what} is not well formed")))?;
        let plaintext = self
            .cipher()
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: what.as_bytes(),
                },
            )
            .map_err(|_| {
                ClientError::DeviceKey(format!(
                    "the device key {} does not open the {what} (is it the key of another data \
                     directory?)",
                    self.path.display()
                ))
            })?;
        String::from_utf8(plaintext)
            .map_err(|_| ClientError::Corrupt(format!("the sealed {what} is not text")))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.key.into())
    }
}

/// Whether a stored value is sealed (as opposed to a plaintext pickle of an older build).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// Makes the data directory and the given files private to their owner where they are not,
/// returning one warning per repair (to show the person: something had opened them up).
pub fn repair_permissions(data_dir: &Path, files: &[&Path]) -> Vec<String> {
    let mut warnings = Vec::new();
    restrict(data_dir, DATA_DIR_MODE, &mut warnings);
    for file in files {
        restrict(file, PRIVATE_FILE_MODE, &mut warnings);
    }
    warnings
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32, warnings: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = std::fs::metadata(path) else {
        return;
    };
    let current = metadata.permissions().mode() & 0o777;
    if current & 0o077 == 0 {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        Ok(()) => warnings.push(format!(
            "{} was open to other users (mode {current:o}); it is now {mode:o}",
            path.display()
        )),
        Err(error) => warnings.push(format!(
            "{} is open to other users (mode {current:o}) and could not be restricted: {error}",
            path.display()
        )),
    }
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32, _warnings: &mut Vec<String>) {}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            u8::try_from(high * 16 + low).ok()
        })
        .collect()
}

fn parse_hex_key(text: &str) -> Option<[u8; DEVICE_KEY_BYTES]> {
    let mut bytes = unhex(text)?;
    let key = <[u8; DEVICE_KEY_BYTES]>::try_from(bytes.as_slice()).ok();
    bytes.zeroize();
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_label() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DEVICE_KEY_FILE);
        let key = DeviceKey::create(&path).expect("create");
        let sealed = key.seal("olm account", "{\"secret\":1}").expect("seal");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("secret"));
        assert_ne!(
            sealed,
            key.seal("olm account", "{\"secret\":1}").expect("seal"),
            "a fresh nonce every time"
        );
        let reloaded = DeviceKey::load(&path).expect("load");
        assert_eq!(
            reloaded.open("olm account", &sealed).expect("open"),
            "{\"secret\":1}"
        );
        assert!(
            reloaded.open("olm sessions with 1/2", &sealed).is_err(),
            "bound to what it seals"
        );
        let other = DeviceKey::create(&dir.path().join("other.key")).expect("create");
        assert!(matches!(
            other.open("olm account", &sealed),
            Err(ClientError::DeviceKey(_))
        ));
        let mut damaged = sealed.clone();
        damaged.truncate(damaged.len() - 2);
        assert!(key.open("olm account", &damaged).is_err());
        assert!(key.open("olm account", "sealed1:zz").is_err());
        assert!(key.open("olm account", "{\"plain\":true}").is_err());
        assert!(
            DeviceKey::create(&path).is_err(),
            "an existing key is never replaced"
        );
    }

    #[test]
    fn key_files_are_private_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DEVICE_KEY_FILE);
        let missing = DeviceKey::load(&path).expect_err("missing");
        assert!(
            missing.to_string().contains("RELAY_DEVICE_KEY_FILE"),
            "{missing}"
        );
        DeviceKey::create(&path).expect("create");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, PRIVATE_FILE_MODE);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            let warnings = repair_permissions(dir.path(), &[&path]);
            assert!(warnings.iter().any(|w| w.contains("644")), "{warnings:?}");
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, PRIVATE_FILE_MODE);
            assert!(repair_permissions(dir.path(), &[&path]).is_empty());
        }
        std::fs::write(&path, "not a key\n").expect("write");
        let malformed = DeviceKey::load(&path).expect_err("malformed");
        assert!(malformed.to_string().contains("hex digits"), "{malformed}");
        std::fs::write(&path, "ab".repeat(31)).expect("write");
        assert!(DeviceKey::load(&path).is_err(), "too short");
    }
}
