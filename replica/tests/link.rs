//! A primary store shipping to a standby over loopback QUIC, through every path: streaming,
//! catching up from the log after the standby restarts, a full copy for a new standby, the
//! away policies, and refusals of a wrong peer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fdb_layers::{Database, EmbeddedOptions, StandbyStore, StoreError};
use rcgen::{Issuer, KeyPair, PKCS_ED25519};
use relay_net::TlsIdentity;
use relay_replica::{
    AwayPolicy, ReplicationConfig, Shipper, StandbyConfig, StandbyServer, StandbyStats,
};
use rustls::RootCertStore;
use tempfile::TempDir;

/// Generous: only bounds how long a broken test hangs.
const WAIT: Duration = Duration::from_secs(60);

struct Pki {
    folder: TempDir,
    roots: Arc<RootCertStore>,
}

impl Pki {
    /// A CA with region 1's certificate (`region-1.pem`) and an edge's (`edge-1.pem`).
    fn new() -> Pki {
        let folder = tempfile::tempdir().expect("folder");
        let key = KeyPair::generate_for(&PKCS_ED25519).expect("key");
        let params = relay_net::pki::ca_params("Relay test CA");
        let cert = params.self_signed(&key).expect("CA");
        std::fs::write(folder.path().join("ca.pem"), cert.pem()).expect("write");
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        let issuer = Issuer::new(params, key);
        for (name, params) in [
            relay_net::pki::region_params(1).expect("params"),
            relay_net::pki::edge_params(1).expect("params"),
        ] {
            let key = KeyPair::generate_for(&PKCS_ED25519).expect("key");
            let cert = params.signed_by(&key, &issuer).expect("cert");
            std::fs::write(folder.path().join(format!("{name}.pem")), cert.pem()).expect("write");
            std::fs::write(
                folder.path().join(format!("{name}.key")),
                key.serialize_pem(),
            )
            .expect("write");
        }
        Pki {
            folder,
            roots: Arc::new(roots),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.folder.path().join(name)
    }

    fn identity(&self, name: &str) -> TlsIdentity {
        TlsIdentity::load(
            &self.path(&format!("{name}.pem")),
            &self.path(&format!("{name}.key")),
        )
        .expect("identity")
    }
}

/// A running standby and how to stop it.
struct Standby {
    address: SocketAddr,
    stats: Box<dyn Fn() -> StandbyStats + Send + Sync>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Standby {
    async fn start(pki: &Pki, data_dir: &Path, listen: SocketAddr, region: u32) -> Standby {
        let config = StandbyConfig {
            region,
            listen,
            data_dir: data_dir.to_path_buf(),
            ca_cert: pki.path("ca.pem"),
            cert: pki.path("region-1.pem"),
            key: pki.path("region-1.key"),
            promotion: None,
        };
        let (server, address) = StandbyServer::open(&config).expect("the standby opens");
        let stats = Box::new(server.stats_handle());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Standby {
            address,
            stats,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the standby stops")
            .expect("joins");
    }
}

struct Primary {
    database: Database,
    shipper: Arc<Shipper>,
}

fn primary(pki: &Pki, folder: &Path, config: ReplicationConfig, identity: &str) -> Primary {
    std::fs::create_dir_all(folder).expect("folder");
    let shipper = Shipper::new(1, config).expect("shipper");
    let database = Database::open(
        &folder.join("primary.redb"),
        EmbeddedOptions {
            replication: Some(shipper.clone()),
            ..EmbeddedOptions::default()
        },
    )
    .expect("opens");
    shipper
        .start(
            database.clone(),
            "127.0.0.1:0".parse().expect("address"),
            pki.roots.clone(),
            pki.identity(identity),
        )
        .expect("starts");
    Primary { database, shipper }
}

async fn put(database: &Database, key: &str, value: &str) -> Result<(), StoreError> {
    let (key, value) = (key.as_bytes().to_vec(), value.as_bytes().to_vec());
    database
        .transact(move |transaction| {
            let (key, value) = (key.clone(), value.clone());
            async move { transaction.set(&key, &value) }
        })
        .await
}

async fn put_many(database: &Database, prefix: &str, count: usize) {
    let mut tasks = Vec::new();
    for index in 0..count {
        let database = database.clone();
        let key = format!("{prefix}/{index:05}");
        tasks.push(tokio::spawn(
            async move { put(&database, &key, "value").await },
        ));
    }
    for task in tasks {
        task.await.expect("joins").expect("commits");
    }
}

fn pairs_of(database: &Database) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut export = database.export().expect("exports");
    let mut pairs = Vec::new();
    loop {
        let chunk = export.next_chunk(1 << 20).expect("reads");
        if chunk.is_empty() {
            return pairs;
        }
        pairs.extend(chunk);
    }
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The standby's copy holds exactly the primary's pairs (read after the standby stopped).
fn assert_same(primary: &Primary, standby_dir: &Path) {
    let copy = StandbyStore::open(&standby_dir.join("region.redb")).expect("the copy opens");
    assert_eq!(copy.installing(), None);
    assert_eq!(copy.pairs().expect("reads"), pairs_of(&primary.database));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_commit_is_on_the_standby_across_its_restarts() {
    let pki = Pki::new();
    let folder = tempfile::tempdir().expect("folder");
    let standby_dir = folder.path().join("standby");
    let standby = Standby::start(&pki, &standby_dir, "127.0.0.1:0".parse().expect("a"), 1).await;
    let address = standby.address;
    let primary = primary(
        &pki,
        folder.path(),
        ReplicationConfig::new(address),
        "region-1",
    );
    put_many(&primary.database, "first", 200).await;
    // Acknowledged means confirmed: no waiting needed.
    let stats = primary.shipper.stats();
    assert!(stats.caught_up, "{stats:?}");
    assert_eq!((standby.stats)().version, stats.latest_version);
    assert_eq!(
        stats.full_copies, 0,
        "a new standby of a new store needs no copy"
    );

    // The standby restarts within the grace: commits wait for it, and none is refused.
    standby.stop().await;
    let restarted = {
        let pki_dir = standby_dir.clone();
        let database = primary.database.clone();
        let writes = tokio::spawn(async move { put_many(&database, "second", 50).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let restarted = Standby::start(&pki, &pki_dir, address, 1).await;
        writes.await.expect("every commit waited for the standby");
        restarted
    };
    let stats = primary.shipper.stats();
    assert!(stats.caught_up, "{stats:?}");
    assert_eq!(
        stats.full_copies, 0,
        "the log brought it up to date: {stats:?}"
    );
    assert_eq!(stats.unconfirmed_commits, 0, "{stats:?}");
    restarted.stop().await;
    primary.shipper.stop();
    assert_same(&primary, &standby_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_standby_gets_a_full_copy_then_the_groups_after_it() {
    let pki = Pki::new();
    let folder = tempfile::tempdir().expect("folder");
    // Nobody listens there yet: go on alone meanwhile.
    let reserved = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let address = reserved.local_addr().expect("address");
    drop(reserved);
    let config = ReplicationConfig {
        ack_timeout_ms: 200,
        when_standby_is_away: AwayPolicy::GoOnAlone,
        ..ReplicationConfig::new(address)
    };
    // A store that had no standby: over 2 MiB of data, so the copy takes several chunks.
    {
        let database = Database::open(
            &folder.path().join("primary.redb"),
            EmbeddedOptions::default(),
        )
        .expect("opens");
        let big = "x".repeat(60_000);
        for index in 0..40 {
            put(&database, &format!("big/{index}"), &big)
                .await
                .expect("commits");
        }
    }
    let primary = primary(&pki, folder.path(), config, "region-1");
    put_many(&primary.database, "alone", 300).await;
    let stats = primary.shipper.stats();
    assert!(
        !stats.caught_up && stats.unconfirmed_commits > 0,
        "{stats:?}"
    );

    let standby_dir = folder.path().join("standby");
    let standby = Standby::start(&pki, &standby_dir, address, 1).await;
    wait_for("the standby to catch up", || {
        primary.shipper.stats().caught_up
    })
    .await;
    put_many(&primary.database, "after", 50).await;
    let stats = primary.shipper.stats();
    assert!(stats.caught_up, "{stats:?}");
    assert_eq!(stats.full_copies, 1, "{stats:?}");
    assert_eq!((standby.stats)().installs, 1);
    assert!(
        (standby.stats)().groups_applied > 0,
        "the groups after the copy"
    );
    standby.stop().await;
    primary.shipper.stop();
    assert_same(&primary, &standby_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_standby_a_region_refuses_writes_then_ships_them_when_it_is_back() {
    let pki = Pki::new();
    let folder = tempfile::tempdir().expect("folder");
    let reserved = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let address = reserved.local_addr().expect("address");
    drop(reserved);
    let config = ReplicationConfig {
        ack_timeout_ms: 300,
        ..ReplicationConfig::new(address)
    };
    let primary = primary(&pki, folder.path(), config, "region-1");
    let refused = put(&primary.database, "refused", "but durable here").await;
    assert!(
        matches!(&refused, Err(StoreError::Unavailable(reason)) if reason.contains("refuse_writes")),
        "{refused:?}"
    );
    // Nothing of the refused commit may leave the region (it is not on a standby yet).
    let latest = primary.shipper.stats().latest_version;
    assert!(
        primary
            .shipper
            .outgoing_bound()
            .is_some_and(|bound| bound < latest),
        "{:?} against {latest}",
        primary.shipper.outgoing_bound()
    );
    let standby_dir = folder.path().join("standby");
    let standby = Standby::start(&pki, &standby_dir, address, 1).await;
    wait_for("the standby to catch up", || {
        primary.shipper.stats().caught_up
    })
    .await;
    put(&primary.database, "accepted", "yes")
        .await
        .expect("commits with the standby back");
    assert_eq!(
        primary.shipper.outgoing_bound(),
        Some(primary.shipper.stats().latest_version),
        "everything confirmed may leave"
    );
    standby.stop().await;
    primary.shipper.stop();
    assert_same(&primary, &standby_dir);
    let copy = StandbyStore::open(&standby_dir.join("region.redb")).expect("opens");
    assert_eq!(
        copy.get(b"refused").expect("reads"),
        Some(b"but durable here".to_vec()),
        "the refused commit was durable on the primary, so the standby has it too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_refuses_another_certificate_and_another_region() {
    let pki = Pki::new();
    let folder = tempfile::tempdir().expect("folder");
    let standby_dir = folder.path().join("standby");
    // Region 2's standby, and region 1's primary dialling it.
    let standby = Standby::start(&pki, &standby_dir, "127.0.0.1:0".parse().expect("a"), 2).await;
    let config = ReplicationConfig {
        ack_timeout_ms: 300,
        ..ReplicationConfig::new(standby.address)
    };
    let wrong_region = primary(&pki, &folder.path().join("a"), config.clone(), "region-1");
    assert!(put(&wrong_region.database, "k", "v").await.is_err());
    // An edge's certificate is signed by the same CA, but is not the region's.
    let edge = primary(&pki, &folder.path().join("b"), config, "edge-1");
    assert!(put(&edge.database, "k", "v").await.is_err());
    assert_eq!((standby.stats)().version, 0);
    assert_eq!(
        (standby.stats)().sessions,
        0,
        "neither got as far as a session"
    );
    wrong_region.shipper.stop();
    edge.shipper.stop();
    standby.stop().await;
}

/// A running standby that may serve as the region (with `promotion`, a `[promotion]` section
/// whose region configuration is never read here: the test plays the failover code through
/// the handle), and region 1's primary shipping to it.
struct HandoverRig {
    handle: relay_replica::StandbyHandle,
    primary: Primary,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<()>,
}

impl HandoverRig {
    fn start(pki: &Pki, folder: &Path, promotion: bool) -> HandoverRig {
        let data_dir = folder.join("standby");
        let config = StandbyConfig {
            region: 1,
            listen: "127.0.0.1:0".parse().expect("address"),
            data_dir: data_dir.clone(),
            ca_cert: pki.path("ca.pem"),
            cert: pki.path("region-1.pem"),
            key: pki.path("region-1.key"),
            promotion: promotion.then(|| relay_replica::PromotionConfig {
                region_config: data_dir.join("region.toml"),
                listen: "127.0.0.1:0".parse().expect("address"),
                lease_ms: relay_replica::limits::LEASE_MS_DEFAULT,
                standby: None,
            }),
        };
        let (server, address) = StandbyServer::open(&config).expect("the standby opens");
        let handle = server.handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let primary = primary(pki, folder, ReplicationConfig::new(address), "region-1");
        HandoverRig {
            handle,
            primary,
            stop,
            serving,
        }
    }

    /// Stops the standby and the primary's shipper; returns the primary.
    async fn stop(self) -> Primary {
        let _ = self.stop.send(());
        self.serving.await.expect("joins");
        drop(self.handle);
        self.primary.shipper.stop();
        self.primary
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_ships_everything_then_the_standby_takes_over_and_the_primary_is_fenced() {
    let pki = Pki::new();
    let folder = tempfile::tempdir().expect("folder");
    let rig = HandoverRig::start(&pki, folder.path(), true);
    let (handle, primary) = (rig.handle.clone(), &rig.primary);
    put_many(&primary.database, "before", 100).await;
    // The failover code's part: promote once asked (the region would start on the copy here).
    let promoting = {
        let handle = handle.clone();
        tokio::spawn(async move {
            handle.handover_requested().await;
            let version = handle.handover_version().expect("a version");
            let path = handle.release_copy().expect("the copy");
            handle.promoted(7);
            (version, path)
        })
    };
    // Commits keep coming while the region is handed over: none is acknowledged after the
    // version handed over.
    let late = {
        let database = primary.database.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for index in 0..20 {
                outcomes.push(put(&database, &format!("late/{index:03}"), "value").await);
            }
            outcomes
        })
    };
    let handed = tokio::time::timeout(WAIT, primary.shipper.hand_over())
        .await
        .expect("the handover ends")
        .expect("the standby took over");
    assert_eq!(handed.epoch, 7);
    let (version, path) = tokio::time::timeout(WAIT, promoting)
        .await
        .expect("promoted")
        .expect("joins");
    assert_eq!(version, handed.version);
    tokio::time::timeout(WAIT, primary.shipper.fenced())
        .await
        .expect("the primary is fenced");
    let outcomes = late.await.expect("joins");
    let after = put(&primary.database, "after", "value").await;
    assert!(
        matches!(after, Err(StoreError::Unavailable(_))),
        "a fenced region acknowledges nothing: {after:?}"
    );
    drop(handle);
    rig.stop().await;
    // The copy holds every commit the primary acknowledged, and only those up to the version.
    let relay_replica::CopyAt::File(path) = path else {
        panic!("a standby process keeps its copy in a file");
    };
    let copy = StandbyStore::open(&path).expect("the copy opens");
    assert_eq!(copy.version(), handed.version);
    let pairs = copy.pairs().expect("reads");
    for index in 0..100 {
        let key = format!("before/{index:05}").into_bytes();
        assert!(
            pairs.iter().any(|(k, _)| *k == key),
            "before/{index} is on the copy"
        );
    }
    for (index, outcome) in outcomes.iter().enumerate() {
        let key = format!("late/{index:03}").into_bytes();
        if outcome.is_ok() {
            assert!(
                pairs.iter().any(|(k, _)| *k == key),
                "late/{index} was acknowledged, so it is on the copy"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_cannot_serve_refuses_the_handover_and_the_primary_goes_on() {
    let pki = Pki::new();
    let folder = tempfile::tempdir().expect("folder");
    let rig = HandoverRig::start(&pki, folder.path(), false);
    let (handle, primary) = (&rig.handle, &rig.primary);
    put_many(&primary.database, "before", 10).await;
    let refused = tokio::time::timeout(WAIT, primary.shipper.hand_over())
        .await
        .expect("the handover ends");
    let Err(error) = refused else {
        panic!("a standby without [promotion] cannot take over: {refused:?}");
    };
    assert!(error.to_string().contains("promotion"), "{error}");
    assert_eq!(handle.handover_version(), None);
    // The region ships and acknowledges as before (the link dials the standby again).
    put_many(&primary.database, "after", 10).await;
    let stats = primary.shipper.stats();
    assert!(stats.caught_up, "{stats:?}");
    let primary = rig.stop().await;
    assert_same(&primary, &folder.path().join("standby"));
}
