//! Assembling the envelope of an outbox entry, sans IO: one Olm ciphertext of the same content per
//! recipient device, the routing metadata the server may read, and nothing else.
//!
//! After "mismatched devices" the same content is encrypted again for exactly the current devices:
//! a ciphertext already made for a device that is still current is kept (a second one would spend
//! a ratchet step the device never sees), devices no longer current are dropped, new ones get a
//! fresh ciphertext.

use std::collections::BTreeSet;

use relay_proto::wire::{
    DeviceCiphertext, Envelope, EnvelopeKind, MESSAGE_TYPE_HOLDS_GROUP_SESSION,
};
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, GroupId};

use crate::crypto::Crypto;
use crate::error::{ClientError, Result};
use crate::store::OutboxRow;

/// The envelope of `row` sent by `me` to `targets` (the current devices of the peer and of this
/// account, never `me`), numbered `device_seq` among all of this device's envelopes, reusing
/// the ciphertexts of `reuse` for targets it covers. Fails without encrypting anything when a
/// target has neither a ciphertext to reuse nor a session.
pub fn assemble(
    crypto: &mut Crypto,
    me: DeviceAddress,
    row: &OutboxRow,
    targets: &[DeviceAddress],
    reuse: Option<&Envelope>,
    device_seq: u64,
) -> Result<Envelope> {
    let reused = |device: DeviceAddress| {
        reuse.and_then(|envelope| {
            envelope
                .ciphertexts
                .iter()
                .find(|ciphertext| ciphertext.recipient == device.into())
                .cloned()
        })
    };
    let mut plan = Vec::with_capacity(targets.len());
    for &device in targets {
        if device == me {
            continue;
        }
        match reused(device) {
            Some(ciphertext) => plan.push((device, Some(ciphertext))),
            None if crypto.has_session(device) => plan.push((device, None)),
            None => return Err(ClientError::NoOneTimeKey(device)),
        }
    }
    if !plan.iter().any(|(device, _)| device.account == row.peer) {
        return Err(ClientError::Invalid(format!(
            "account {} has no devices to send to",
            row.peer
        )));
    }
    let mut ciphertexts = Vec::with_capacity(plan.len());
    for (device, ciphertext) in plan {
        match ciphertext {
            Some(ciphertext) => ciphertexts.push(ciphertext),
            None => {
                let (message_type, body) = crypto.encrypt(device, &row.content)?;
                ciphertexts.push(DeviceCiphertext {
                    recipient: device.into(),
                    message_type,
                    body,
                });
            }
        }
    }
    let envelope = Envelope {
        chat: row.chat.0.to_vec(),
        sender: me.into(),
        client_message_id: row.client_message_id.0.to_vec(),
        sender_seq: row.sender_seq,
        recipient_accounts: recipient_accounts(row.peer, me.account)
            .iter()
            .map(|account| account.0)
            .collect(),
        ciphertexts,
        device_seq,
        ..Default::default()
    };
    envelope
        .parse()
        .map_err(|error| ClientError::Invalid(format!("envelope: {}", error.message)))?;
    Ok(envelope)
}

/// What a group envelope names besides its ciphertexts.
#[derive(Debug, Clone, Copy)]
pub struct GroupHeader<'a> {
    /// The group.
    pub group: u64,
    /// The membership version the envelope is encrypted for.
    pub version: u64,
    /// The sending Megolm session.
    pub session_id: &'a str,
    /// The chat sender_seq.
    pub sender_seq: u64,
    /// The envelope's id.
    pub client_message_id: ClientMessageId,
    /// The device's counter over all its envelopes.
    pub device_seq: u64,
}

/// A group message from `me`: the Megolm ciphertext once, and an empty entry for each of
/// `devices` (the group's current member devices but `me`), stating each holds the session.
/// `members` are the group's members; this account is listed only when it has other devices.
pub fn group_message(
    me: DeviceAddress,
    header: GroupHeader<'_>,
    members: &[AccountId],
    devices: &BTreeSet<DeviceAddress>,
    group_ciphertext: Vec<u8>,
) -> Result<Envelope> {
    let own_devices = devices.iter().any(|device| device.account == me.account);
    let envelope = Envelope {
        chat: ChatId::group(GroupId(header.group)).0.to_vec(),
        sender: me.into(),
        client_message_id: header.client_message_id.0.to_vec(),
        sender_seq: header.sender_seq,
        recipient_accounts: members
            .iter()
            .filter(|account| **account != me.account || own_devices)
            .map(|account| account.0)
            .collect(),
        ciphertexts: devices
            .iter()
            .filter(|device| **device != me)
            .map(|device| DeviceCiphertext {
                recipient: (*device).into(),
                message_type: MESSAGE_TYPE_HOLDS_GROUP_SESSION,
                body: Vec::new(),
            })
            .collect(),
        device_seq: header.device_seq,
        group: header.group,
        group_version: header.version,
        kind: EnvelopeKind::Message as i32,
        group_ciphertext,
        group_session_id: header.session_id.to_owned(),
        // Said when it is sent (what waits before it then).
        group_prev_seq: 0,
    };
    checked(envelope)
}

/// A key share from `me`: the Olm `ciphertexts` (each carrying the session key) for some of
/// the group's member devices. It lists every member (`members`), not only those it carries
/// keys for: it takes a number in the group's chat, so every region homing a member must
/// store it, or the next envelope would find a gap there.
pub fn key_share(
    me: DeviceAddress,
    header: GroupHeader<'_>,
    members: &[AccountId],
    ciphertexts: Vec<DeviceCiphertext>,
) -> Result<Envelope> {
    let mut accounts: BTreeSet<u64> = members.iter().map(|account| account.0).collect();
    accounts.extend(
        ciphertexts
            .iter()
            .map(|ciphertext| ciphertext.recipient.account),
    );
    let envelope = Envelope {
        chat: ChatId::group(GroupId(header.group)).0.to_vec(),
        sender: me.into(),
        client_message_id: header.client_message_id.0.to_vec(),
        sender_seq: header.sender_seq,
        recipient_accounts: accounts.into_iter().collect(),
        ciphertexts,
        device_seq: header.device_seq,
        group: header.group,
        group_version: header.version,
        kind: EnvelopeKind::GroupKeyShare as i32,
        group_ciphertext: Vec::new(),
        group_session_id: header.session_id.to_owned(),
        // Said when it is sent (what waits before it then).
        group_prev_seq: 0,
    };
    checked(envelope)
}

fn checked(envelope: Envelope) -> Result<Envelope> {
    envelope
        .parse()
        .map_err(|error| ClientError::Invalid(format!("envelope: {}", error.message)))?;
    Ok(envelope)
}

/// The accounts an envelope of a 1:1 chat must cover: the peer and this account (whose other
/// devices are recipients too; with none, it is covered by zero ciphertexts). In the account's
/// chat with itself (sync messages between its devices), the account alone.
pub fn recipient_accounts(peer: AccountId, own: AccountId) -> Vec<AccountId> {
    if peer == own {
        vec![own]
    } else {
        vec![peer, own]
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::DeviceId;

    use super::*;
    use crate::content::Content;

    fn device(account: u64, device: u32) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(account),
            device: DeviceId(device),
        }
    }

    /// A device with one published one-time key.
    fn peer_device() -> (Crypto, Vec<u8>) {
        let mut crypto = Crypto::new();
        crypto.generate_one_time_keys(1);
        let key = crypto.unpublished_one_time_keys().remove(0).public_key;
        (crypto, key)
    }

    #[test]
    fn mismatched_devices_reencrypt_for_exactly_the_current_ones() {
        let me = device(1, 1);
        let (old_bob, old_bob_key) = peer_device();
        let (mut bob, bob_key) = peer_device();
        let (mut new_bob, new_bob_key) = peer_device();
        let (mut own_other, own_other_key) = peer_device();
        let mut alice = Crypto::new();
        alice
            .create_outbound_session(device(2, 1), &bob.identity_key(), &bob_key)
            .expect("session");
        alice
            .create_outbound_session(device(2, 3), &old_bob.identity_key(), &old_bob_key)
            .expect("session");
        let content = Content::text("same words", 5, 2)
            .expect("content")
            .to_bytes();
        let row = OutboxRow {
            chat: ChatId::direct(AccountId(1), AccountId(2)),
            sender_seq: 7,
            client_message_id: ClientMessageId([3; 16]),
            peer: AccountId(2),
            content: content.clone(),
            envelope: None,
            group: 0,
        };

        let first = assemble(
            &mut alice,
            me,
            &row,
            &[device(2, 1), device(2, 3), me],
            None,
            1,
        )
        .expect("first");
        assert_eq!(first.recipient_accounts, vec![2, 1]);
        assert_eq!(first.sender_seq, 7);
        assert_eq!(first.ciphertexts.len(), 2, "never addressed to its sender");

        // The region says: bob's devices are now 1 and 2 (3 is gone), and alice has a device 2.
        let targets = [device(2, 1), device(2, 2), device(1, 2)];
        assert!(matches!(
            assemble(&mut alice, me, &row, &targets, Some(&first), 2),
            Err(ClientError::NoOneTimeKey(_))
        ));
        alice
            .create_outbound_session(device(2, 2), &new_bob.identity_key(), &new_bob_key)
            .expect("session");
        alice
            .create_outbound_session(device(1, 2), &own_other.identity_key(), &own_other_key)
            .expect("session");
        let second = assemble(&mut alice, me, &row, &targets, Some(&first), 2).expect("second");
        assert_eq!(
            second.client_message_id, first.client_message_id,
            "the same id"
        );
        assert_eq!(second.sender_seq, first.sender_seq, "the same sender_seq");
        assert_eq!(
            (first.device_seq, second.device_seq),
            (1, 2),
            "each build takes the device's next number"
        );
        let recipients: Vec<DeviceAddress> = second
            .ciphertexts
            .iter()
            .map(|c| c.recipient.parse().expect("address"))
            .collect();
        assert_eq!(recipients, targets.to_vec());
        assert_eq!(
            second.ciphertexts[0], first.ciphertexts[0],
            "kept for the device still current"
        );

        // Each current device reads the same content.
        for (crypto, ciphertext) in [
            (&mut bob, &second.ciphertexts[0]),
            (&mut new_bob, &second.ciphertexts[1]),
            (&mut own_other, &second.ciphertexts[2]),
        ] {
            let plaintext = crypto
                .decrypt(me, None, ciphertext.message_type, &ciphertext.body)
                .expect("decrypt");
            assert_eq!(plaintext.plaintext, content);
        }

        // A peer without devices cannot be sent to.
        assert!(matches!(
            assemble(&mut alice, me, &row, &[device(1, 2)], None, 3),
            Err(ClientError::Invalid(_))
        ));
    }
}
