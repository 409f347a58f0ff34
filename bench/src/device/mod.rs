//! A minimal opaque device, as the message and connection benchmarks drive it: it speaks the
//! device protocol exactly as the client library does (`client/src/connection.rs`), without a
//! store and without Olm sessions, because the servers never see plaintext and so cannot tell
//! opaque bytes from ciphertexts.
//!
//! - **Registration** through an edge with a vodozemac account's identity (Curve25519) and
//!   signing (Ed25519) keys. No one-time or fallback keys: nobody claims keys of a device that
//!   is sent opaque bytes, and the region does not require them (`core::register_device`).
//! - **Authentication** on the control stream: `Hello` → `Challenge` → `Authenticate`, signed
//!   over nonce ‖ the connection's TLS keying-material export, presenting the queue cursor and
//!   the next `device_seq`; then the edge writes `ServerPush` frames on that stream, which stays
//!   open for the life of the connection.
//! - **Envelopes** of one chat numbered by `sender_seq` from 1, a random client message id each
//!   (kept across retries), the `device_seq` counter over all the device's envelopes (a new one
//!   per transmission, as the client's), listing the peer's account and the sender's own (which
//!   has no other device, so it is covered by no ciphertext), one ciphertext for the peer's
//!   device: [`PAYLOAD_BYTES`] opaque bytes.
//! - **Group messages** ([`GroupTarget`], W3): the same counters in the group's chat, every
//!   member listed, an empty entry of type `MESSAGE_TYPE_HOLDS_GROUP_SESSION` for every member
//!   device but the sender, and the [`PAYLOAD_BYTES`] opaque bytes once as the group
//!   ciphertext. No key share goes before them: a region cannot tell whether a session was
//!   shared (it only sees the sender's statement), and there is no session to share.
//! - **Fetch and ack**: on a push, fetch after the queue cursor; what was processed is
//!   acknowledged in a request of its own, in flight while the next page is read (so reading
//!   never waits for the region to commit the acks and their delivered receipts), one ack
//!   request at a time, the acks processed meanwhile going with the next; stop when a fetch
//!   returns nothing or reaches the latest queue sequence read with it, and every ack was
//!   answered.
//! - **Presence and typing** (the presence benchmark): watch an account, send a typing
//!   indicator ([`EdgeLink::watch_presence`], [`EdgeLink::typing`]); the presence updates and
//!   typing notices the edge pushes on the control stream go, with the instant each arrived, to
//!   a [`SignalLog`] when the device authenticated with one ([`Device::authenticate_logging`]).
//!
//! The decisions are sans-IO cores, tested without a runtime: [`SendPipeline`] (which
//! `sender_seq` goes next with up to a window in flight, "resend from k", retries and their
//! delays) and [`Inbox`] (queue cursor, acks, a gapless queue, sender FIFO, duplicates).
//! [`Payload`] is the opaque content: the row it belongs to and the time it was composed travel
//! inside it, so the receiving side measures send → deliver. The shell: [`Endpoints`] (client
//! QUIC endpoints, each shared by up to [`DEVICES_PER_ENDPOINT_MAX`] devices), [`DeviceKeys`],
//! [`EdgeLink`] (one device's connection) and [`drain`].
//!
//! Files: this one holds the payload, the clock, the device's keys, registration and
//! envelopes; `sending` and `receiving` the two cores; `signals` what the control stream
//! brings besides queue pushes; `link` the endpoints, the connection and its calls.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::rustls::RootCertStore;
use rand::RngCore;
use relay_net::{
    ALPN_DEVICE, BufferedSockets, EDGE_SERVER_NAME, NetError, auth_keying_material, bind_endpoint,
    client_config, read_frame, request, write_frame,
};
use relay_proto::limits::{AUTH_NONCE_BYTES, QUEUE_FETCH_ENTRIES_MAX};
use relay_proto::wire::{
    AckQueue, Authenticate, ClientRequest, ClientResponse, DeviceAddr, DeviceCiphertext, Envelope,
    EnvelopeKind, FetchAndAck, FetchQueue, GroupCommand, GroupInfo, Hello,
    MESSAGE_TYPE_HOLDS_GROUP_SESSION, PresenceState, QueueBatch, QueueEntry, Register, SendOutcome,
    ServerPush, TypingSignal, WatchPresence, auth_signing_payload, client_request, client_response,
    group_command, queue_entry, send_outcome, server_push,
};
use relay_proto::{AccountId, ChatId, ClientMessageId, DeviceAddress, GroupId, ProtoError};
use tokio::sync::watch;

use crate::BenchError;
use crate::limits::{
    ACKS_PER_REQUEST_MAX, CLOSE_WAIT_MS, CONNECT_TIMEOUT_MS, DEVICE_SOCKET_RECEIVE_BUFFER_BYTES,
    DEVICES_PER_ENDPOINT_MAX, FETCH_ATTEMPTS_MAX, FETCHES_PER_DRAIN_MAX, PAYLOAD_BYTES,
    REQUEST_TIMEOUT_MS, SEND_ATTEMPTS_MAX, SEND_RETRY_DELAY_MS_MAX, SEND_RETRY_DELAY_MS_MIN,
};

mod link;
mod receiving;
mod sending;
mod signals;

pub use link::*;
pub use receiving::*;
pub use sending::*;
pub use signals::*;

/// The software name a bench device sends in `Hello`.
pub const BENCH_CLIENT_VERSION: &str = concat!("relay-bench/", env!("CARGO_PKG_VERSION"));
/// Olm message type of a normal message on the wire (what an established session sends).
const MESSAGE_TYPE_NORMAL: u32 = 1;

// ---------------------------------------------------------------------------------------------
// The opaque payload

/// Bytes at the start of every payload, so that a foreign message is noticed.
const PAYLOAD_MAGIC: [u8; 4] = *b"rbp1";
/// Bytes of the payload's header: the magic, the row, the composition time.
const PAYLOAD_HEADER_BYTES: usize = PAYLOAD_MAGIC.len() + 1 + 8;
const _: () = assert!(PAYLOAD_HEADER_BYTES <= PAYLOAD_BYTES);

/// What a message's opaque bytes carry: the benchmark row it belongs to and when it was
/// composed (µs on the run's [`RunClock`]), then random filler up to [`PAYLOAD_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// The row of the benchmark that sent it.
    pub row: u8,
    /// When it was composed, in µs since the run's clock started.
    pub composed_at_us: u64,
}

impl Payload {
    /// The payload's [`PAYLOAD_BYTES`] bytes, with fresh random filler (it looks like a
    /// ciphertext to anyone but the benchmark).
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; PAYLOAD_BYTES];
        bytes[..4].copy_from_slice(&PAYLOAD_MAGIC);
        bytes[4] = self.row;
        bytes[5..PAYLOAD_HEADER_BYTES].copy_from_slice(&self.composed_at_us.to_be_bytes());
        rand::rng().fill_bytes(&mut bytes[PAYLOAD_HEADER_BYTES..]);
        bytes
    }

    /// Reads a payload back; `None` for bytes a bench device did not write.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != PAYLOAD_BYTES || bytes[..4] != PAYLOAD_MAGIC {
            return None;
        }
        let composed_at_us = u64::from_be_bytes(bytes[5..PAYLOAD_HEADER_BYTES].try_into().ok()?);
        Some(Self {
            row: bytes[4],
            composed_at_us,
        })
    }
}

/// The run's clock: microseconds since it started, shared by the senders (which write it into
/// payloads) and the receivers (which read it back), all in this process.
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    origin: Instant,
}

impl RunClock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// Microseconds since the clock started, at `instant` (0 before it).
    pub fn us_at(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.origin).as_micros()).unwrap_or(0)
    }

    /// Microseconds since the clock started.
    pub fn now_us(&self) -> u64 {
        self.us_at(Instant::now())
    }

    /// The instant `us` microseconds after the clock started.
    pub fn instant_at(&self, us: u64) -> Instant {
        self.origin + Duration::from_micros(us)
    }

    /// Milliseconds since the clock started (the sans-IO cores' time).
    pub fn now_ms(&self) -> u64 {
        self.now_us() / 1_000
    }
}

// ---------------------------------------------------------------------------------------------
// The device

/// A device's identity: a vodozemac Olm account, whose Curve25519 identity key and Ed25519
/// signing key are registered, and which signs the authentication proof.
pub struct DeviceKeys {
    account: vodozemac::olm::Account,
}

impl std::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("signing_key", &self.account.ed25519_key())
            .finish()
    }
}

impl DeviceKeys {
    /// Fresh keys.
    pub fn generate() -> Self {
        Self {
            account: vodozemac::olm::Account::new(),
        }
    }

    /// The registration of an account named `name` with these keys as its first device.
    pub fn register_request(&self, name: &str) -> Register {
        Register {
            name: name.to_owned(),
            identity_key: self.account.curve25519_key().to_bytes().to_vec(),
            signing_key: self.account.ed25519_key().as_bytes().to_vec(),
            one_time_keys: Vec::new(),
            registration_token: String::new(),
            fallback_key: None,
        }
    }

    /// Signs `message` with the Ed25519 key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.account.sign(message).to_bytes()
    }
}

/// A registered device: its address, its keys and the counter of its envelopes.
#[derive(Debug)]
pub struct Device {
    /// Its address.
    pub address: DeviceAddress,
    keys: DeviceKeys,
    next_device_seq: u64,
}

impl Device {
    /// Registers a new account named `name` over `link` (a new connection, not yet
    /// authenticated) and returns its first device.
    pub async fn register(link: &EdgeLink, name: &str) -> Result<Self, BenchError> {
        let keys = DeviceKeys::generate();
        let what = || format!("registering {name}");
        let body = client_request::Body::Register(keys.register_request(name));
        let registered = match link
            .call(body)
            .await
            .map_err(|error| error.into_bench(what()))?
        {
            client_response::Body::Registered(registered) => registered,
            other => return Err(unexpected(&what(), "Registered", &other)),
        };
        let address = DeviceAddr {
            account: registered.account.account,
            device: registered.device,
        }
        .parse()
        .map_err(|error| BenchError::Protocol(format!("{}: {error}", what())))?;
        Ok(Self {
            address,
            keys,
            next_device_seq: 1,
        })
    }

    /// Authenticates this device on `link` with its queue cursor; returns what the control
    /// stream says from then on.
    pub async fn authenticate(
        &self,
        link: &EdgeLink,
        queue_cursor: u64,
    ) -> Result<watch::Receiver<Pushes>, BenchError> {
        self.authenticate_logging(link, queue_cursor, None).await
    }

    /// [`Device::authenticate`], the presence updates and typing notices pushed to this
    /// connection going to `log` (when given) with the instant each arrived.
    pub async fn authenticate_logging(
        &self,
        link: &EdgeLink,
        queue_cursor: u64,
        log: Option<Arc<SignalLog>>,
    ) -> Result<watch::Receiver<Pushes>, BenchError> {
        link.authenticate(
            self.address,
            &self.keys,
            queue_cursor,
            self.next_device_seq,
            log,
        )
        .await
        .map_err(|error| error.into_bench(format!("authenticating {}", self.address)))
    }

    /// The envelope of `composed` for `peer`'s device in `chat`, taking the device's next
    /// `device_seq` (a retransmission takes a new one, as the client's does).
    pub fn envelope(
        &mut self,
        peer: DeviceAddress,
        chat: ChatId,
        composed: &Composed,
        row: u8,
    ) -> Envelope {
        let device_seq = self.take_device_seq();
        opaque_envelope(self.address, peer, chat, composed, row, device_seq)
    }

    /// The group message of `composed` to `group`, taking the device's next `device_seq`.
    pub fn group_envelope(
        &mut self,
        group: &GroupTarget,
        composed: &Composed,
        row: u8,
    ) -> Envelope {
        let device_seq = self.take_device_seq();
        opaque_group_envelope(self.address, group, composed, row, device_seq)
    }

    fn take_device_seq(&mut self) -> u64 {
        let device_seq = self.next_device_seq;
        self.next_device_seq += 1;
        device_seq
    }

    /// Runs a group command as this device's account over `link` (authenticated as this
    /// device); the directory answers with the group.
    pub async fn group_command(
        &self,
        link: &EdgeLink,
        command: group_command::Command,
    ) -> Result<GroupInfo, BenchError> {
        let what = || format!("a group command of {}", self.address);
        let body = client_request::Body::Group(GroupCommand {
            command: Some(command),
        });
        match link
            .call(body)
            .await
            .map_err(|error| error.into_bench(what()))?
        {
            client_response::Body::Group(info) => Ok(info),
            other => Err(unexpected(&what(), "Group", &other)),
        }
    }
}

/// A group as its sender encrypts for it: the membership version, every member (the sender's
/// account among them) and every member device but the sender's own, each holding (so the
/// sender states) its current session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTarget {
    /// The group.
    pub group: GroupId,
    /// The membership version the directory answered last.
    pub version: u64,
    /// Every member, in account id order.
    pub members: Vec<AccountId>,
    /// The entries of a group message: one empty entry per member device but the sender.
    entries: Vec<DeviceCiphertext>,
}

impl GroupTarget {
    /// The group `info` describes (the directory's answer, members included), whose members'
    /// devices are `devices` (the sender's own is left out); an error when a member has no
    /// device here or a device belongs to no member.
    pub fn new(
        info: &GroupInfo,
        sender: DeviceAddress,
        devices: &[DeviceAddress],
    ) -> Result<Self, BenchError> {
        let members: BTreeSet<AccountId> = info
            .members
            .iter()
            .map(|member| AccountId(member.account))
            .collect();
        if info.group == 0 || info.version == 0 || members.len() != info.members.len() {
            return Err(BenchError::Protocol(format!(
                "the directory answered a group that cannot be: {info:?}"
            )));
        }
        let devices: BTreeSet<DeviceAddress> = devices
            .iter()
            .copied()
            .filter(|&device| device != sender)
            .collect();
        let with_devices: BTreeSet<AccountId> = devices
            .iter()
            .map(|device| device.account)
            .chain([sender.account])
            .collect();
        if with_devices != members {
            return Err(BenchError::Refused(format!(
                "group {} has {} members, and the devices given belong to {} accounts (the \
                 sender's included): they must be the same",
                info.group,
                members.len(),
                with_devices.len()
            )));
        }
        Ok(Self {
            group: GroupId(info.group),
            version: info.version,
            members: members.into_iter().collect(),
            entries: devices
                .into_iter()
                .map(|device| DeviceCiphertext {
                    recipient: device.into(),
                    message_type: MESSAGE_TYPE_HOLDS_GROUP_SESSION,
                    body: Vec::new(),
                })
                .collect(),
        })
    }

    /// The group's chat.
    pub fn chat(&self) -> ChatId {
        ChatId::group(self.group)
    }

    /// Member devices a message reaches (every member device but the sender's).
    pub fn receiving_devices(&self) -> usize {
        self.entries.len()
    }
}

/// An envelope from `sender` to `peer` carrying a fresh [`Payload`]: the peer's account and the
/// sender's own are listed (the sender has no other device, so its account is covered by no
/// ciphertext), one ciphertext for the peer's device.
pub fn opaque_envelope(
    sender: DeviceAddress,
    peer: DeviceAddress,
    chat: ChatId,
    composed: &Composed,
    row: u8,
    device_seq: u64,
) -> Envelope {
    let payload = Payload {
        row,
        composed_at_us: composed.composed_at_us,
    };
    Envelope {
        chat: chat.0.to_vec(),
        sender: sender.into(),
        client_message_id: composed.client_message_id.0.to_vec(),
        sender_seq: composed.sender_seq,
        recipient_accounts: vec![peer.account.0, sender.account.0],
        ciphertexts: vec![DeviceCiphertext {
            recipient: peer.into(),
            message_type: MESSAGE_TYPE_NORMAL,
            body: payload.encode(),
        }],
        device_seq,
        ..Default::default()
    }
}

/// A group message from `sender` to `group` carrying a fresh [`Payload`] once, as its group
/// ciphertext: every member listed, an empty entry for every member device but the sender's,
/// and a session id that names the sender (there is no session: the bytes are opaque).
pub fn opaque_group_envelope(
    sender: DeviceAddress,
    group: &GroupTarget,
    composed: &Composed,
    row: u8,
    device_seq: u64,
) -> Envelope {
    let payload = Payload {
        row,
        composed_at_us: composed.composed_at_us,
    };
    Envelope {
        chat: group.chat().0.to_vec(),
        sender: sender.into(),
        client_message_id: composed.client_message_id.0.to_vec(),
        sender_seq: composed.sender_seq,
        recipient_accounts: group.members.iter().map(|account| account.0).collect(),
        ciphertexts: group.entries.clone(),
        device_seq,
        group: group.group.0,
        group_version: group.version,
        kind: EnvelopeKind::Message.into(),
        group_ciphertext: payload.encode(),
        group_session_id: format!("bench-{sender}"),
        // Every earlier number is in flight or stored at the one region: strictly in order.
        group_prev_seq: composed.sender_seq.saturating_sub(1),
    }
}

/// A fresh random client message id.
pub fn client_message_id() -> ClientMessageId {
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    ClientMessageId(id)
}

/// What the tests of the device's files share.
#[cfg(test)]
mod test_support {
    use relay_proto::{AccountId, ClientMessageId, DeviceAddress, DeviceId};

    /// A client message id of the byte `n`.
    pub(super) fn id(n: u8) -> ClientMessageId {
        ClientMessageId([n; 16])
    }

    /// The first device of `account`.
    pub(super) fn device(account: u64) -> DeviceAddress {
        DeviceAddress {
            account: AccountId(account),
            device: DeviceId(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use relay_proto::AccountId;

    use super::test_support::{device, id};
    use super::*;

    #[test]
    fn payloads_carry_their_row_and_time() {
        let payload = Payload {
            row: 3,
            composed_at_us: 123_456_789,
        };
        let bytes = payload.encode();
        assert_eq!(bytes.len(), PAYLOAD_BYTES);
        assert_eq!(Payload::decode(&bytes), Some(payload));
        assert_ne!(payload.encode(), bytes, "the filler is fresh each time");
        assert_eq!(Payload::decode(&bytes[..50]), None);
        assert_eq!(Payload::decode(&[0u8; PAYLOAD_BYTES]), None);
    }

    #[test]
    fn a_group_message_lists_every_member_and_parses_as_one() {
        use relay_proto::GroupId;
        use relay_proto::wire::GroupMemberInfo;

        let sender = device(1);
        let members: Vec<DeviceAddress> = (2..=4).map(device).collect();
        let info = GroupInfo {
            group: 7,
            version: 3,
            members: (1..=4)
                .map(|account| GroupMemberInfo {
                    account,
                    admin: account == 1,
                })
                .collect(),
            member_count: 4,
            ..GroupInfo::default()
        };
        let target = GroupTarget::new(&info, sender, &members).expect("a group");
        assert_eq!(target.receiving_devices(), 3);
        let composed = Composed {
            sender_seq: 1,
            client_message_id: id(1),
            composed_at_us: 42,
        };
        let envelope = opaque_group_envelope(sender, &target, &composed, 8, 1);
        let parsed = envelope
            .parse()
            .expect("a group message the protocol accepts");
        assert_eq!(parsed.recipient_devices, members);
        assert_eq!(
            parsed.recipient_accounts,
            (1..=4).map(AccountId).collect::<Vec<_>>()
        );
        assert_eq!(
            parsed
                .group
                .map(|group| (group.group, group.version, group.kind)),
            Some((GroupId(7), 3, EnvelopeKind::Message))
        );
        assert_eq!(
            Payload::decode(&envelope.group_ciphertext),
            Some(Payload {
                row: 8,
                composed_at_us: 42
            })
        );
        // A member without a device here, or a device of an account that is not a member.
        assert!(GroupTarget::new(&info, sender, &members[..2]).is_err());
        let stranger = [members.clone(), vec![device(9)]].concat();
        assert!(GroupTarget::new(&info, sender, &stranger).is_err());
    }
}
