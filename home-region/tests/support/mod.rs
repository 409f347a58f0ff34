//! Regions in one process for the integration tests: a test CA, and region services on
//! loopback QUIC with memory stores, each finding the others through a shared address book.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use fdb_layers::keys::IdempotencyKey;
use fdb_layers::{Database, MemoryOptions, directory};
use home_region::blobs::{BlobLimits, memory_objects};
use home_region::{RegionParts, RegionService};
use quinn::rustls::RootCertStore;
use quinn::rustls::pki_types::PrivateKeyDer;
use rcgen::{Issuer, KeyPair, PKCS_ED25519};
use relay_net::{PeerResolver, TlsIdentity, TokioSockets};
use relay_proto::clock::SystemClock;
use relay_proto::wire;
use relay_proto::{DeviceAddress, DeviceId, RegionId};

/// The directory writer.
pub const WRITER: RegionId = RegionId(1);
/// Another region.
pub const OTHER: RegionId = RegionId(2);

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub roots: Arc<RootCertStore>,
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ED25519).expect("CA key");
        let params = relay_net::pki::ca_params("Relay test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        Self {
            issuer: Issuer::new(params, key),
            roots: Arc::new(roots),
        }
    }

    pub fn region(&self, region: RegionId) -> TlsIdentity {
        let (_, params) = relay_net::pki::region_params(region.0).expect("params");
        let key = KeyPair::generate_for(&PKCS_ED25519).expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        TlsIdentity {
            cert_chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }
}

/// A region on loopback with a memory store; `addresses` is where every region listens (filled
/// in as they bind).
pub fn region(
    region: RegionId,
    ca: &TestCa,
    addresses: &Arc<Mutex<BTreeMap<u32, SocketAddr>>>,
) -> (RegionService, Database) {
    region_with_media(region, ca, addresses, None)
}

/// [`region`], serving a media endpoint when `media` says where.
pub fn region_with_media(
    region: RegionId,
    ca: &TestCa,
    addresses: &Arc<Mutex<BTreeMap<u32, SocketAddr>>>,
    media: Option<home_region::config::MediaConfig>,
) -> (RegionService, Database) {
    let db = Database::memory(MemoryOptions::default()).expect("memory store");
    let known = addresses.clone();
    let peers: PeerResolver = Box::new(move |peer| {
        known
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&peer)
            .copied()
    });
    let (service, address) = RegionService::new(RegionParts {
        region,
        directory_writer: WRITER,
        listen: "127.0.0.1:0".parse().expect("address"),
        db: db.clone(),
        sockets: &TokioSockets,
        identity: ca.region(region),
        roots: ca.roots.clone(),
        peers,
        clock: Arc::new(SystemClock),
        boot_nonce: u64::from(region.0),
        blob_objects: memory_objects(),
        blob_limits: BlobLimits::default(),
        served_before: false,
        push: None,
        tokens_required: false,
        replication: None,
        follow_peer_moves: false,
        media,
    })
    .expect("region binds");
    addresses
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .insert(region.0, address);
    (service, db)
}

/// Creates an account `name` homed in `home` with one registered device (number 1), as the
/// region's core does; `create` and `register` are the two requests' idempotency keys.
pub async fn account_with_device(
    db: &Database,
    home: RegionId,
    name: &str,
    create: IdempotencyKey,
    register: IdempotencyKey,
) -> DeviceAddress {
    let record = db
        .transact(|tx| async move { directory::create_account(&tx, name, home, &create).await })
        .await
        .expect("store")
        .expect("name free");
    let registration = wire::Register {
        name: name.into(),
        identity_key: vec![1; 32],
        signing_key: vec![2; 32],
        one_time_keys: vec![wire::OneTimeKey {
            key_id: format!("{name}-a"),
            public_key: vec![1; 32],
            ..wire::OneTimeKey::default()
        }],
        registration_token: String::new(),
        fallback_key: None,
    };
    let (record_ref, registration, register) = (&record, &registration, &register);
    db.transact(|tx| async move {
        home_region::core::register_device(&tx, record_ref, registration, register).await
    })
    .await
    .expect("store")
    .expect("registered");
    DeviceAddress {
        account: record.id,
        device: DeviceId(1),
    }
}

/// A 1:1 envelope from `sender` to `receiver`'s one device: `sender_seq` is also its device
/// sequence, and its ciphertext is `body_bytes` of filler.
pub fn direct_envelope(
    sender: DeviceAddress,
    receiver: DeviceAddress,
    sender_seq: u64,
    client_message_id: Vec<u8>,
    body_bytes: usize,
) -> wire::Envelope {
    wire::Envelope {
        chat: relay_proto::ChatId::direct(sender.account, receiver.account)
            .0
            .to_vec(),
        sender: sender.into(),
        client_message_id,
        sender_seq,
        recipient_accounts: vec![receiver.account.0],
        ciphertexts: vec![wire::DeviceCiphertext {
            recipient: receiver.into(),
            message_type: 1,
            body: vec![7; body_bytes],
        }],
        device_seq: sender_seq,
        ..Default::default()
    }
}
