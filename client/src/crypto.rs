//! End-to-end encryption of one device: its vodozemac Olm account (identity keys, one-time
//! keys, the signed fallback key, signing) and its Olm sessions with other devices, plus the
//! pickles that persist them.
//!
//! This module holds no trust decisions and does no I/O: the caller says which identity key it
//! expects from a device (trust on first use lives in the store), and after every change it takes
//! the changed pickles with [`Crypto::take_changes`] and commits them in the same transaction as
//! the message or outbox entry the change belongs to. Sending a ciphertext whose ratchet step is
//! not persisted could reuse a message key after a crash, so that order is a rule.

use std::collections::{BTreeMap, BTreeSet};

use relay_proto::DeviceAddress;
use relay_proto::wire::{OneTimeKey, fallback_key_signing_payload};
use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{Account, AccountPickle, OlmMessage, Session, SessionConfig, SessionPickle};

use crate::error::{ClientError, Result};
use crate::limits::SESSIONS_PER_DEVICE_MAX;

/// Olm message type of a pre-key message on the wire.
pub const MESSAGE_TYPE_PRE_KEY: u32 = 0;
/// Olm message type of a normal message on the wire.
pub const MESSAGE_TYPE_NORMAL: u32 = 1;

/// A decrypted message and, for a pre-key message, the identity key of the device that sent it.
#[derive(Debug)]
pub struct Decrypted {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// The sender device's Curve25519 identity key, carried by pre-key messages only (a normal
    /// message decrypts with a session whose peer was trusted when the session began).
    pub identity_key: Option<[u8; 32]>,
}

/// Pickles that changed since the last [`Crypto::take_changes`], to commit with what caused them.
#[derive(Debug, Default)]
pub struct CryptoChanges {
    /// The account pickle (serde_json), when the account changed.
    pub account: Option<String>,
    /// Every session of each changed device, most preferred first: (session id, pickle json).
    pub sessions: BTreeMap<DeviceAddress, Vec<(String, String)>>,
}

impl CryptoChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.account.is_none() && self.sessions.is_empty()
    }
}

/// One device's Olm account and its sessions with other devices.
pub struct Crypto {
    account: Account,
    /// Sessions per remote device, most preferred (most recently used) first.
    sessions: BTreeMap<DeviceAddress, Vec<Session>>,
    account_changed: bool,
    changed_devices: BTreeSet<DeviceAddress>,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crypto")
            .field("identity_key", &self.account.curve25519_key())
            .field("session_devices", &self.sessions.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Crypto {
    /// A new device identity with fresh keys.
    pub fn new() -> Self {
        Self {
            account: Account::new(),
            sessions: BTreeMap::new(),
            account_changed: true,
            changed_devices: BTreeSet::new(),
        }
    }

    /// Restores an account and its sessions from pickles written by [`Crypto::take_changes`].
    pub fn from_pickles(
        account_pickle: &str,
        sessions: Vec<(DeviceAddress, Vec<String>)>,
    ) -> Result<Self> {
        let pickle: AccountPickle = serde_json::from_str(account_pickle)
            .map_err(|error| ClientError::Corrupt(format!("olm account pickle: {error}")))?;
        let mut restored = BTreeMap::new();
        for (device, pickles) in sessions {
            let mut list = Vec::with_capacity(pickles.len());
            for pickle in pickles {
                let pickle: SessionPickle = serde_json::from_str(&pickle).map_err(|error| {
                    ClientError::Corrupt(format!("olm session pickle of {device}: {error}"))
                })?;
                list.push(Session::from_pickle(pickle));
            }
            restored.insert(device, list);
        }
        Ok(Self {
            account: Account::from_pickle(pickle),
            sessions: restored,
            account_changed: false,
            changed_devices: BTreeSet::new(),
        })
    }

    /// The Curve25519 identity key.
    pub fn identity_key(&self) -> [u8; 32] {
        self.account.curve25519_key().to_bytes()
    }

    /// The Ed25519 signing key.
    pub fn signing_key(&self) -> [u8; 32] {
        *self.account.ed25519_key().as_bytes()
    }

    /// Signs `message` with the device's Ed25519 key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.account.sign(message).to_bytes()
    }

    /// Generates `count` one-time keys (unpublished until [`Crypto::mark_keys_published`]).
    pub fn generate_one_time_keys(&mut self, count: usize) {
        self.account.generate_one_time_keys(count);
        self.account_changed = true;
    }

    /// The one-time keys not yet marked published, in key-id order.
    pub fn unpublished_one_time_keys(&self) -> Vec<OneTimeKey> {
        let mut keys: Vec<_> = self.account.one_time_keys().into_iter().collect();
        keys.sort_by_key(|(key_id, _)| *key_id);
        keys.into_iter()
            .map(|(key_id, key)| OneTimeKey {
                key_id: key_id.to_base64(),
                public_key: key.to_vec(),
                ..OneTimeKey::default()
            })
            .collect()
    }

    /// Makes a new fallback key, unpublished until [`Crypto::mark_keys_published`]. The current
    /// one becomes the previous one (still able to start sessions); the previous one before it
    /// is forgotten (see `crate::fallback` for when that is safe).
    pub fn generate_fallback_key(&mut self) {
        self.account.generate_fallback_key();
        self.account_changed = true;
    }

    /// The fallback key not yet marked published, signed by this device for upload.
    pub fn unpublished_fallback_key(&self) -> Option<OneTimeKey> {
        let (key_id, key) = self.account.fallback_key().into_iter().next()?;
        let key_id = key_id.to_base64();
        let payload = fallback_key_signing_payload(&self.identity_key(), &key_id, key.as_bytes());
        Some(OneTimeKey {
            key_id,
            public_key: key.to_vec(),
            signature: self.sign(&payload).to_vec(),
            fallback: true,
        })
    }

    /// Forgets the previous fallback key; whether there was one.
    pub fn forget_previous_fallback_key(&mut self) -> bool {
        let forgotten = self.account.forget_fallback_key();
        self.account_changed |= forgotten;
        forgotten
    }

    /// Marks every generated one-time key, and the fallback key, as published (after the
    /// server stored them: upload them together).
    pub fn mark_keys_published(&mut self) {
        self.account.mark_keys_as_published();
        self.account_changed = true;
    }

    /// Whether a session with `device` exists.
    pub fn has_session(&self, device: DeviceAddress) -> bool {
        self.sessions
            .get(&device)
            .is_some_and(|list| !list.is_empty())
    }

    /// Starts an outbound session with `device` from its identity key and a claimed one-time key;
    /// it becomes the session used for sending to that device.
    pub fn create_outbound_session(
        &mut self,
        device: DeviceAddress,
        identity_key: &[u8],
        one_time_key: &[u8],
    ) -> Result<()> {
        let identity_key = public_key(identity_key, "identity key")?;
        let one_time_key = public_key(one_time_key, "one-time key")?;
        let session = self
            .account
            .create_outbound_session(SessionConfig::version_1(), identity_key, one_time_key)
            .map_err(|error| ClientError::Crypto(format!("session with {device}: {error}")))?;
        self.push_front(device, session);
        Ok(())
    }

    /// Encrypts `plaintext` for `device` with its preferred session: (message type, body).
    pub fn encrypt(&mut self, device: DeviceAddress, plaintext: &[u8]) -> Result<(u32, Vec<u8>)> {
        let session = self
            .sessions
            .get_mut(&device)
            .and_then(|list| list.first_mut())
            .ok_or_else(|| ClientError::Crypto(format!("no session with {device}")))?;
        let message = session
            .encrypt(plaintext)
            .map_err(|error| ClientError::Crypto(format!("encrypting for {device}: {error}")))?;
        self.changed_devices.insert(device);
        let (message_type, body) = message.to_parts();
        let message_type = if message_type == 0 {
            MESSAGE_TYPE_PRE_KEY
        } else {
            MESSAGE_TYPE_NORMAL
        };
        Ok((message_type, body))
    }

    /// Decrypts a message from `device`. A pre-key message that matches no session creates one,
    /// trusting the identity key inside it unless `expected_identity` says otherwise.
    pub fn decrypt(
        &mut self,
        device: DeviceAddress,
        expected_identity: Option<[u8; 32]>,
        message_type: u32,
        body: &[u8],
    ) -> Result<Decrypted> {
        let message_type = usize::try_from(message_type).unwrap_or(usize::MAX);
        let message = OlmMessage::from_parts(message_type, body)
            .map_err(|error| ClientError::Crypto(format!("undecodable olm message: {error}")))?;
        match &message {
            OlmMessage::PreKey(pre_key) => {
                let identity = pre_key.identity_key();
                if let Some(expected) = expected_identity
                    && expected != identity.to_bytes()
                {
                    return Err(ClientError::IdentityChanged(device));
                }
                let session_id = pre_key.session_id();
                let known = self.sessions.get(&device).and_then(|list| {
                    list.iter()
                        .position(|session| session.session_id() == session_id)
                });
                if let Some(index) = known {
                    let plaintext = self.decrypt_with(device, index, &message)?;
                    return Ok(Decrypted {
                        plaintext,
                        identity_key: Some(identity.to_bytes()),
                    });
                }
                let created = self
                    .account
                    .create_inbound_session(SessionConfig::version_1(), identity, pre_key)
                    .map_err(|error| {
                        ClientError::Crypto(format!("new session from {device}: {error}"))
                    })?;
                self.account_changed = true;
                self.push_front(device, created.session);
                Ok(Decrypted {
                    plaintext: created.plaintext,
                    identity_key: Some(identity.to_bytes()),
                })
            }
            OlmMessage::Normal(_) => {
                let count = self.sessions.get(&device).map_or(0, Vec::len);
                let mut last_error = None;
                for index in 0..count {
                    match self.decrypt_with(device, index, &message) {
                        Ok(plaintext) => {
                            return Ok(Decrypted {
                                plaintext,
                                identity_key: None,
                            });
                        }
                        Err(error) => last_error = Some(error),
                    }
                }
                Err(last_error
                    .unwrap_or_else(|| ClientError::Crypto(format!("no session with {device}"))))
            }
        }
    }

    /// Pickles of everything that changed since the last call.
    pub fn take_changes(&mut self) -> Result<CryptoChanges> {
        let mut changes = CryptoChanges::default();
        if self.account_changed {
            let json = serde_json::to_string(&self.account.pickle())
                .map_err(|error| ClientError::Crypto(format!("pickling the account: {error}")))?;
            changes.account = Some(json);
        }
        for device in &self.changed_devices {
            let mut pickles = Vec::new();
            for session in self
                .sessions
                .get(device)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let json = serde_json::to_string(&session.pickle()).map_err(|error| {
                    ClientError::Crypto(format!("pickling a session with {device}: {error}"))
                })?;
                pickles.push((session.session_id(), json));
            }
            changes.sessions.insert(*device, pickles);
        }
        self.account_changed = false;
        self.changed_devices.clear();
        Ok(changes)
    }

    /// Decrypts with the session at `index` of `device`'s list and makes it the preferred one.
    fn decrypt_with(
        &mut self,
        device: DeviceAddress,
        index: usize,
        message: &OlmMessage,
    ) -> Result<Vec<u8>> {
        let list = self
            .sessions
            .get_mut(&device)
            .ok_or_else(|| ClientError::Crypto(format!("no session with {device}")))?;
        let session = list
            .get_mut(index)
            .ok_or_else(|| ClientError::Crypto(format!("no session with {device}")))?;
        let plaintext = session
            .decrypt(message)
            .map_err(|error| ClientError::Crypto(format!("decrypting from {device}: {error}")))?;
        let session = list.remove(index);
        list.insert(0, session);
        self.changed_devices.insert(device);
        Ok(plaintext)
    }

    fn push_front(&mut self, device: DeviceAddress, session: Session) {
        let list = self.sessions.entry(device).or_default();
        list.insert(0, session);
        list.truncate(SESSIONS_PER_DEVICE_MAX);
        self.changed_devices.insert(device);
    }
}

impl Default for Crypto {
    fn default() -> Self {
        Self::new()
    }
}

/// Checks that a claimed fallback key of `device` was signed by that device's Ed25519
/// `signing_key`, with its `identity_key`, before any session starts from it.
pub fn verify_fallback_key(
    device: DeviceAddress,
    identity_key: &[u8; 32],
    signing_key: &[u8],
    key: &OneTimeKey,
) -> Result<()> {
    let bad = || ClientError::BadFallbackKey(device);
    let signing_key: &[u8; 32] = signing_key.try_into().map_err(|_| bad())?;
    let signing_key = vodozemac::Ed25519PublicKey::from_slice(signing_key).map_err(|_| bad())?;
    let signature = vodozemac::Ed25519Signature::from_slice(&key.signature).map_err(|_| bad())?;
    let payload = fallback_key_signing_payload(identity_key, &key.key_id, &key.public_key);
    signing_key.verify(&payload, &signature).map_err(|_| bad())
}

fn public_key(bytes: &[u8], what: &str) -> Result<Curve25519PublicKey> {
    Curve25519PublicKey::from_slice(bytes)
        .map_err(|error| ClientError::Crypto(format!("bad {what}: {error}")))
}

#[cfg(test)]
mod tests {
    use relay_proto::{AccountId, DeviceId};

    use super::*;

    fn address(account: u64, device: u32) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(account),
            device: DeviceId(device),
        }
    }

    /// Persists and restores a crypto instance, as the store does between commands.
    fn round_trip(
        crypto: &mut Crypto,
        saved: &mut (String, BTreeMap<DeviceAddress, Vec<String>>),
    ) -> Crypto {
        let changes = crypto.take_changes().expect("pickle");
        if let Some(account) = changes.account {
            saved.0 = account;
        }
        for (device, sessions) in changes.sessions {
            saved.1.insert(
                device,
                sessions.into_iter().map(|(_, pickle)| pickle).collect(),
            );
        }
        let sessions = saved
            .1
            .iter()
            .map(|(device, list)| (*device, list.clone()))
            .collect();
        Crypto::from_pickles(&saved.0, sessions).expect("unpickle")
    }

    #[test]
    fn two_devices_talk_both_ways_through_pickles() {
        let alice_address = address(1, 1);
        let bob_address = address(2, 1);
        let mut alice = Crypto::new();
        let mut bob = Crypto::new();
        let mut alice_saved = (String::new(), BTreeMap::new());
        let mut bob_saved = (String::new(), BTreeMap::new());
        bob.generate_one_time_keys(3);
        let bob_keys = bob.unpublished_one_time_keys();
        assert_eq!(bob_keys.len(), 3);
        bob.mark_keys_published();
        assert!(bob.unpublished_one_time_keys().is_empty());
        let mut bob = round_trip(&mut bob, &mut bob_saved);

        alice
            .create_outbound_session(bob_address, &bob.identity_key(), &bob_keys[0].public_key)
            .expect("outbound");
        let (kind, first) = alice.encrypt(bob_address, b"hello bob").expect("encrypt");
        assert_eq!(kind, MESSAGE_TYPE_PRE_KEY);
        let (kind, second) = alice
            .encrypt(bob_address, b"still there?")
            .expect("encrypt");
        assert_eq!(kind, MESSAGE_TYPE_PRE_KEY, "pre-key until alice hears back");
        let mut alice = round_trip(&mut alice, &mut alice_saved);

        let decrypted = bob
            .decrypt(alice_address, None, MESSAGE_TYPE_PRE_KEY, &first)
            .expect("first");
        assert_eq!(decrypted.plaintext, b"hello bob");
        assert_eq!(decrypted.identity_key, Some(alice.identity_key()));
        let mut bob = round_trip(&mut bob, &mut bob_saved);
        // The second pre-key message belongs to the session the first one created.
        let decrypted = bob
            .decrypt(
                alice_address,
                Some(alice.identity_key()),
                MESSAGE_TYPE_PRE_KEY,
                &second,
            )
            .expect("second");
        assert_eq!(decrypted.plaintext, b"still there?");
        // Replaying a message whose key was used fails instead of decrypting twice.
        assert!(
            bob.decrypt(alice_address, None, MESSAGE_TYPE_PRE_KEY, &second)
                .is_err()
        );

        let (kind, reply) = bob.encrypt(alice_address, b"hi alice").expect("reply");
        assert_eq!(kind, MESSAGE_TYPE_NORMAL);
        let mut bob = round_trip(&mut bob, &mut bob_saved);
        let decrypted = alice
            .decrypt(bob_address, None, kind, &reply)
            .expect("reply");
        assert_eq!(decrypted.plaintext, b"hi alice");
        assert_eq!(
            decrypted.identity_key, None,
            "normal messages carry no identity key"
        );
        let mut alice = round_trip(&mut alice, &mut alice_saved);

        let (kind, third) = alice.encrypt(bob_address, b"normal now").expect("encrypt");
        assert_eq!(kind, MESSAGE_TYPE_NORMAL);
        let decrypted = bob
            .decrypt(alice_address, None, kind, &third)
            .expect("third");
        assert_eq!(decrypted.plaintext, b"normal now");
    }

    #[test]
    fn identity_changes_and_garbage_are_refused() {
        let alice_address = address(1, 1);
        let bob_address = address(2, 1);
        let mut alice = Crypto::new();
        let mut bob = Crypto::new();
        bob.generate_one_time_keys(1);
        let key = bob.unpublished_one_time_keys().remove(0);
        alice
            .create_outbound_session(bob_address, &bob.identity_key(), &key.public_key)
            .expect("outbound");
        let (kind, body) = alice.encrypt(bob_address, b"x").expect("encrypt");
        let wrong = Crypto::new().identity_key();
        assert!(matches!(
            bob.decrypt(alice_address, Some(wrong), kind, &body),
            Err(ClientError::IdentityChanged(_))
        ));
        assert!(bob.decrypt(alice_address, None, 7, &body).is_err());
        assert!(
            bob.decrypt(alice_address, None, MESSAGE_TYPE_NORMAL, &[1, 2, 3])
                .is_err()
        );
        assert!(
            bob.decrypt(alice_address, None, MESSAGE_TYPE_PRE_KEY, &[])
                .is_err()
        );
        assert!(
            alice
                .create_outbound_session(bob_address, &[0; 5], &key.public_key)
                .is_err()
        );
        assert!(alice.encrypt(address(9, 9), b"x").is_err());
    }

    #[test]
    fn simultaneous_sessions_keep_working() {
        let alice_address = address(1, 1);
        let bob_address = address(2, 1);
        let mut alice = Crypto::new();
        let mut bob = Crypto::new();
        alice.generate_one_time_keys(1);
        bob.generate_one_time_keys(1);
        let alice_key = alice.unpublished_one_time_keys().remove(0);
        let bob_key = bob.unpublished_one_time_keys().remove(0);
        alice
            .create_outbound_session(bob_address, &bob.identity_key(), &bob_key.public_key)
            .expect("a");
        bob.create_outbound_session(alice_address, &alice.identity_key(), &alice_key.public_key)
            .expect("b");
        let (a_kind, from_alice) = alice.encrypt(bob_address, b"from alice").expect("a");
        let (b_kind, from_bob) = bob.encrypt(alice_address, b"from bob").expect("b");
        assert_eq!(
            bob.decrypt(alice_address, None, a_kind, &from_alice)
                .expect("b")
                .plaintext,
            b"from alice"
        );
        assert_eq!(
            alice
                .decrypt(bob_address, None, b_kind, &from_bob)
                .expect("a")
                .plaintext,
            b"from bob"
        );
        for round in 0..3 {
            let text = format!("round {round}");
            let (kind, body) = alice.encrypt(bob_address, text.as_bytes()).expect("a");
            assert_eq!(
                bob.decrypt(alice_address, None, kind, &body)
                    .expect("b")
                    .plaintext,
                text.as_bytes()
            );
            let (kind, body) = bob.encrypt(alice_address, text.as_bytes()).expect("b");
            assert_eq!(
                alice
                    .decrypt(bob_address, None, kind, &body)
                    .expect("a")
                    .plaintext,
                text.as_bytes()
            );
        }
    }

    /// One-time keys run out: many senders start sessions from the one signed fallback key,
    /// which keeps working after a replacement until the previous key is forgotten.
    #[test]
    fn sessions_start_from_the_signed_fallback_key_until_it_is_forgotten() {
        let bob_address = address(2, 1);
        let mut bob = Crypto::new();
        let mut bob_saved = (String::new(), BTreeMap::new());
        assert!(bob.unpublished_fallback_key().is_none());
        bob.generate_fallback_key();
        let first = bob.unpublished_fallback_key().expect("unpublished");
        assert!(first.fallback);
        verify_fallback_key(bob_address, &bob.identity_key(), &bob.signing_key(), &first)
            .expect("signed by bob");
        bob.mark_keys_published();
        assert!(bob.unpublished_fallback_key().is_none());
        let mut bob = round_trip(&mut bob, &mut bob_saved);

        // Three senders use the same key; each session decrypts.
        let open_from = |key: &OneTimeKey, bob: &mut Crypto, sender: u64| {
            let mut alice = Crypto::new();
            alice
                .create_outbound_session(bob_address, &bob.identity_key(), &key.public_key)
                .expect("outbound");
            let (kind, body) = alice
                .encrypt(bob_address, b"from the fallback key")
                .expect("e");
            bob.decrypt(address(sender, 1), None, kind, &body)
                .map(|decrypted| decrypted.plaintext)
        };
        for sender in 10..13 {
            assert_eq!(
                open_from(&first, &mut bob, sender).expect("decrypts"),
                b"from the fallback key"
            );
        }
        // Replaced: a sender that claimed the old key before still gets through.
        bob.generate_fallback_key();
        let second = bob.unpublished_fallback_key().expect("new key");
        assert_ne!(second.public_key, first.public_key);
        bob.mark_keys_published();
        let mut bob = round_trip(&mut bob, &mut bob_saved);
        assert!(
            open_from(&first, &mut bob, 20).is_ok(),
            "the previous key is kept"
        );
        assert!(open_from(&second, &mut bob, 21).is_ok());
        // Forgotten: the old key starts nothing more.
        assert!(bob.forget_previous_fallback_key());
        assert!(!bob.forget_previous_fallback_key());
        assert!(open_from(&first, &mut bob, 30).is_err());
        assert!(open_from(&second, &mut bob, 31).is_ok());
    }

    #[test]
    fn a_fallback_key_not_signed_by_its_device_is_refused() {
        let device = address(2, 1);
        let mut bob = Crypto::new();
        bob.generate_fallback_key();
        let key = bob.unpublished_fallback_key().expect("key");
        let mallory = Crypto::new();
        let checks = [
            // Signed by someone else.
            verify_fallback_key(device, &bob.identity_key(), &mallory.signing_key(), &key),
            // Moved to another identity.
            verify_fallback_key(device, &mallory.identity_key(), &bob.signing_key(), &key),
            // Swapped key under bob's signature.
            verify_fallback_key(
                device,
                &bob.identity_key(),
                &bob.signing_key(),
                &OneTimeKey {
                    public_key: mallory.identity_key().to_vec(),
                    ..key.clone()
                },
            ),
            // Garbage never panics.
            verify_fallback_key(
                device,
                &bob.identity_key(),
                &[1, 2],
                &OneTimeKey {
                    signature: vec![0; 3],
                    ..key.clone()
                },
            ),
        ];
        for check in checks {
            assert!(matches!(check, Err(ClientError::BadFallbackKey(d)) if d == device));
        }
    }

    #[test]
    fn signatures_verify_with_the_published_key() {
        let crypto = Crypto::new();
        let signature = crypto.sign(b"payload");
        let key = vodozemac::Ed25519PublicKey::from_slice(&crypto.signing_key()).expect("key");
        let signature = vodozemac::Ed25519Signature::from_slice(&signature).expect("signature");
        assert!(key.verify(b"payload", &signature).is_ok());
    }
}
