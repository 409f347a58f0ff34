//! Linked devices: a new device's request to join an account, the pairing code and its proof,
//! and the commands that list, approve and remove an account's devices.

use super::{AccountInfo, DeviceKeys, OneTimeKey};

/// The message a new device signs with its new signing key to prove it holds the keys it asks
/// to link, bound to the pairing code so the proof cannot be replayed for another pairing.
pub fn link_proof_payload(code: &str, identity_key: &[u8], signing_key: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(16 + identity_key.len() + signing_key.len() + code.len());
    payload.extend_from_slice(b"relay-link-v1");
    // The two keys have fixed lengths (checked before verifying): the code last keeps the
    // concatenation unambiguous.
    payload.extend_from_slice(identity_key);
    payload.extend_from_slice(signing_key);
    payload.extend_from_slice(code.as_bytes());
    payload
}

/// (From a new device, unauthenticated) asks to join the account that opened a pairing, with
/// the new device's keys and a proof it holds them. Sent again with the same keys, it answers
/// where the request stands.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RequestLink {
    /// The pairing code (canonical text, see `PairingCode`).
    #[prost(string, tag = "1")]
    pub code: String,
    /// Curve25519 identity key of the new device.
    #[prost(bytes = "vec", tag = "2")]
    pub identity_key: Vec<u8>,
    /// Ed25519 signing key of the new device.
    #[prost(bytes = "vec", tag = "3")]
    pub signing_key: Vec<u8>,
    /// The new device's one-time keys, published when it is approved.
    #[prost(message, repeated, tag = "4")]
    pub one_time_keys: Vec<OneTimeKey>,
    /// The new device's signed fallback key.
    #[prost(message, optional, tag = "5")]
    pub fallback_key: Option<OneTimeKey>,
    /// Signature by `signing_key` of [`link_proof_payload`].
    #[prost(bytes = "vec", tag = "6")]
    pub proof: Vec<u8>,
}

/// Where a link request stands.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LinkStatus {
    /// The account the new device joins.
    #[prost(message, required, tag = "1")]
    pub account: AccountInfo,
    /// The device number it got, 0 while no device of the account approved it.
    #[prost(uint32, tag = "2")]
    pub device: u32,
}

/// (Authenticated) a request about the asker's own account's devices.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DeviceCommand {
    /// The command.
    #[prost(oneof = "device_command::Command", tags = "1, 2, 3, 4, 5")]
    pub command: Option<device_command::Command>,
}

/// The variants of [`DeviceCommand`].
pub mod device_command {
    /// What to do with the account's devices.
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Command {
        /// Open a pairing (answered with `Pairing`).
        #[prost(message, tag = "1")]
        OpenPairing(super::OpenPairing),
        /// The link requests waiting for approval (answered with `LinkRequests`).
        #[prost(message, tag = "2")]
        LinkRequests(super::OpenPairing),
        /// Approve a link request (answered with `Devices`).
        #[prost(message, tag = "3")]
        Approve(super::ApproveLink),
        /// The account's devices (answered with `Devices`).
        #[prost(message, tag = "4")]
        List(super::OpenPairing),
        /// Remove a device (answered with `Devices`).
        #[prost(message, tag = "5")]
        Remove(super::RemoveDevice),
    }
}

/// No arguments.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct OpenPairing {}

/// An open pairing.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Pairing {
    /// The code to show (canonical text).
    #[prost(string, tag = "1")]
    pub code: String,
    /// When it stops being usable, in ms since the Unix epoch.
    #[prost(uint64, tag = "2")]
    pub expires_at_ms: u64,
}

/// A new device waiting for approval.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LinkRequestInfo {
    /// The pairing code it used.
    #[prost(string, tag = "1")]
    pub code: String,
    /// Its Curve25519 identity key (shown as a fingerprint to compare with the new device).
    #[prost(bytes = "vec", tag = "2")]
    pub identity_key: Vec<u8>,
    /// When it asked, in ms since the Unix epoch.
    #[prost(uint64, tag = "3")]
    pub requested_at_ms: u64,
}

/// The link requests waiting for approval.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LinkRequests {
    /// The requests, oldest first.
    #[prost(message, repeated, tag = "1")]
    pub requests: Vec<LinkRequestInfo>,
}

/// Approves the device that asked with `code` and `identity_key`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ApproveLink {
    /// The pairing code.
    #[prost(string, tag = "1")]
    pub code: String,
    /// The identity key the approver saw.
    #[prost(bytes = "vec", tag = "2")]
    pub identity_key: Vec<u8>,
}

/// Removes a device of the asker's account.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RemoveDevice {
    /// The device number.
    #[prost(uint32, tag = "1")]
    pub device: u32,
}

/// An account's current devices and their public keys.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DeviceList {
    /// The devices (no one-time keys).
    #[prost(message, repeated, tag = "1")]
    pub devices: Vec<DeviceKeys>,
}
