//! Group commands reach the directory writer from another region: two region services in one
//! process, on loopback QUIC with mutual TLS under a test CA. Region 2 (not the writer) is
//! asked through [`RegionService::handle`], as its edge would ask it, and forwards each command
//! to region 1, which runs it; answers and refusals come back unchanged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use fdb_layers::{Database, MemoryOptions};
use home_region::blobs::{BlobLimits, memory_objects};
use home_region::{RegionParts, RegionService};
use quinn::rustls::RootCertStore;
use quinn::rustls::pki_types::PrivateKeyDer;
use rcgen::{Issuer, KeyPair, PKCS_ED25519};
use relay_net::{PeerResolver, TlsIdentity, TokioSockets};
use relay_proto::clock::SystemClock;
use relay_proto::wire::{
    self, ForGroup, GroupCommand, RegionRequest, RegionResponse, group_command::Command,
    region_request, region_response,
};
use relay_proto::{ChatId, ErrorCode, GroupId, RegionId};

const WRITER: RegionId = RegionId(1);
const OTHER: RegionId = RegionId(2);

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    roots: Arc<RootCertStore>,
}

impl TestCa {
    fn new() -> Self {
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

    fn region(&self, region: RegionId) -> TlsIdentity {
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
fn region(
    region: RegionId,
    ca: &TestCa,
    addresses: &Arc<Mutex<BTreeMap<u32, SocketAddr>>>,
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
    })
    .expect("region binds");
    addresses
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .insert(region.0, address);
    (service, db)
}

fn ask(account: u64, command: Command) -> RegionRequest {
    RegionRequest {
        body: Some(region_request::Body::Group(ForGroup {
            account,
            command: GroupCommand {
                command: Some(command),
            },
        })),
    }
}

fn group_of(response: RegionResponse) -> wire::GroupInfo {
    match response.body {
        Some(region_response::Body::Group(info)) => info,
        other => panic!("expected a group, got {other:?}"),
    }
}

fn error_of(response: RegionResponse) -> ErrorCode {
    match response.body {
        Some(region_response::Body::Error(error)) => ErrorCode::from_u32(error.code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_forwards_group_commands_to_the_directory_writer() {
    let ca = TestCa::new();
    let addresses = Arc::new(Mutex::new(BTreeMap::new()));
    let (writer, writer_db) = region(WRITER, &ca, &addresses);
    let (other, other_db) = region(OTHER, &ca, &addresses);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(writer.clone().run(async {
        let _ = stopped.await;
    }));

    // Accounts live at the writer: ada homed in region 2, bob in region 1.
    let key = |counter: u64| fdb_layers::keys::IdempotencyKey::new(1, [counter as u8; 16]);
    let (ada, bob) = writer_db
        .transact(|tx| async move {
            let ada = fdb_layers::directory::create_account(&tx, "ada", OTHER, &key(1)).await?;
            let bob = fdb_layers::directory::create_account(&tx, "bob", WRITER, &key(2)).await?;
            Ok((ada.expect("free").id, bob.expect("free").id))
        })
        .await
        .expect("accounts");

    let created = group_of(
        other
            .handle(ask(
                ada.0,
                Command::Create(wire::CreateGroup {
                    name: "across".into(),
                    members: vec![bob.0],
                    request_id: vec![5; 16],
                }),
            ))
            .await,
    );
    assert_eq!(created.group, 1);
    assert_eq!(created.chat, ChatId::group(GroupId(1)).0.to_vec());
    assert_eq!(created.home_region, OTHER.0, "the creator's home region");
    assert_eq!(created.member_count, 2);

    // The writer stored it; the forwarding region stored nothing of it.
    let (at_writer, at_other) = (
        writer_db
            .transact(|tx| async move { fdb_layers::directory::group(&tx, GroupId(1)).await })
            .await
            .expect("read"),
        other_db
            .transact(|tx| async move { fdb_layers::directory::group(&tx, GroupId(1)).await })
            .await
            .expect("read"),
    );
    assert_eq!(at_writer.map(|record| record.name), Some("across".into()));
    assert_eq!(at_other, None);

    // The writer's own members ask it directly; refusals travel back typed.
    let read = group_of(
        writer
            .handle(ask(bob.0, Command::Get(wire::GroupRef { group: 1 })))
            .await,
    );
    assert_eq!(read, created);
    let refused = other
        .handle(ask(
            bob.0,
            Command::Rename(wire::RenameGroup {
                group: 1,
                name: "mine".into(),
            }),
        ))
        .await;
    assert_eq!(error_of(refused), ErrorCode::NotGroupAdmin);
    let malformed = other
        .handle(ask(
            ada.0,
            Command::Rename(wire::RenameGroup {
                group: 1,
                name: String::new(),
            }),
        ))
        .await;
    assert_eq!(error_of(malformed), ErrorCode::Malformed);
    let renamed = group_of(
        other
            .handle(ask(
                ada.0,
                Command::Rename(wire::RenameGroup {
                    group: 1,
                    name: "renamed".into(),
                }),
            ))
            .await,
    );
    assert_eq!((renamed.name.as_str(), renamed.version), ("renamed", 2));

    // With the writer gone, a forwarded command is a typed, retryable refusal.
    let _ = stop.send(());
    serving.await.expect("writer task").expect("writer ran");
    let unavailable = other
        .handle(ask(ada.0, Command::Get(wire::GroupRef { group: 1 })))
        .await;
    assert_eq!(error_of(unavailable), ErrorCode::DirectoryUnavailable);
}
