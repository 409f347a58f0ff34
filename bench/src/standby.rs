//! A standby process for the storage benchmark (`relayd bench storage --standby`): `relayd
//! standby` started on a fresh folder with a PKI of its own, and the shipper that makes a
//! measured database ship to it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;

use fdb_layers::Database;
use relay_devnet::pki::Pki;
use relay_net::TlsIdentity;
use relay_replica::{ReplicationConfig, Shipper, StandbyConfig};
use rustls::RootCertStore;

use crate::BenchError;

/// How long a commit waits for the standby in the benchmark: a standby that stops confirming
/// fails the run rather than being skipped.
const BENCH_ACK_TIMEOUT_MS: u64 = 60_000;

/// A running `relayd standby` child.
pub(crate) struct StandbyProcess {
    child: Child,
    address: SocketAddr,
    roots: Arc<RootCertStore>,
    identity: TlsIdentity,
}

impl StandbyProcess {
    /// Starts `relayd standby` (the executable `relayd`) with its folder, configuration and
    /// log in `folder`, and waits for its "listening on" line.
    pub(crate) fn start(relayd: &Path, folder: &Path) -> Result<StandbyProcess, BenchError> {
        std::fs::create_dir_all(folder).map_err(BenchError::io("creating", folder))?;
        let pki = Pki::open(&folder.join("pki"))?;
        let certs = pki.region(1)?;
        let config = StandbyConfig {
            region: 1,
            listen: "127.0.0.1:0"
                .parse()
                .map_err(|_| BenchError::Invalid("address".into()))?,
            data_dir: folder.join("copy"),
            ca_cert: pki.ca_cert(),
            cert: certs.cert.clone(),
            key: certs.key.clone(),
            promotion: None,
        };
        let config_path = folder.join("standby.toml");
        let text = toml::to_string(&config)
            .map_err(|error| BenchError::Invalid(format!("the standby's config: {error}")))?;
        std::fs::write(&config_path, text).map_err(BenchError::io("writing", &config_path))?;
        let (child, address) = crate::servers::spawn_listening(
            relayd,
            &[
                "standby".as_ref(),
                "--config".as_ref(),
                config_path.as_os_str(),
            ],
            &folder.join("standby.log"),
            "relayd standby",
        )?;
        let roots =
            relay_net::load_roots(&pki.ca_cert()).map_err(BenchError::net("the standby's CA"))?;
        let identity = TlsIdentity::load(&certs.cert, &certs.key)
            .map_err(BenchError::net("the region's certificate"))?;
        Ok(StandbyProcess {
            child,
            address,
            roots,
            identity,
        })
    }

    /// A shipper to this standby, for a database about to be opened.
    pub(crate) fn shipper(&self) -> Result<Arc<Shipper>, BenchError> {
        Shipper::new(
            1,
            ReplicationConfig {
                ack_timeout_ms: BENCH_ACK_TIMEOUT_MS,
                ..ReplicationConfig::new(self.address)
            },
        )
        .map_err(|error| BenchError::Refused(format!("the shipper: {error}")))
    }

    /// Starts `shipper` on `database` (inside the runtime).
    pub(crate) fn ship_to(
        &self,
        shipper: &Arc<Shipper>,
        database: &Database,
    ) -> Result<(), BenchError> {
        shipper
            .start(
                database.clone(),
                "127.0.0.1:0"
                    .parse()
                    .map_err(|_| BenchError::Invalid("address".into()))?,
                self.roots.clone(),
                self.identity.clone(),
            )
            .map(drop)
            .map_err(|error| BenchError::Refused(format!("the shipper: {error}")))
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends the child this benchmark started.
    pub(crate) fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
