//! Promoting a region's standby, offline: the standby's copy becomes the region's store.
//!
//! `relayd admin promote --standby-config STANDBY.toml --region-config REGION.toml` runs this
//! once the primary is lost (or stopped) and the standby is stopped:
//!
//! 1. the copy must be whole (not an unfinished full copy), pass the engine's integrity check,
//!    and carry the identity of this region's store in this deployment;
//! 2. a region process still holding its store file is refused: promoting then would leave two
//!    primaries (a primary on another machine cannot be seen from here; the region's lease and
//!    epoch will fence it);
//! 3. when the region's `data_dir` is another folder than the standby's, the region's folder is
//!    moved aside (`<data_dir>.replaced-<unix seconds>`, never deleted) and the standby's folder
//!    moved into its place, so the region starts on the copy with its usual configuration. The
//!    region then writes its marker file and serves from the copy's last version; a new
//!    standby is brought up to date by a full copy.
//!
//! Blobs (media and history snapshots) are not in the store: in production they live in an
//! object store that replicates itself (S3); with local files, the replaced folder's `blobs/`
//! is carried over when it is still there.

use std::path::{Path, PathBuf};

use fdb_layers::store_identity::{self, StoreIdentity};
use fdb_layers::{Database, EmbeddedOptions, StoreError};
use relay_proto::RegionId;
use serde::Serialize;

use crate::config::RegionConfig;
use crate::service::STORE_FILE;
use crate::store_check::deployment_id;

/// The folder of blobs inside a data folder.
const BLOBS_FOLDER: &str = "blobs";

/// What a promotion did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Promoted {
    /// The region.
    pub region: u32,
    /// The store id (hex) the copy carries: the region's store.
    pub store_id: String,
    /// The copy's commit version: the region goes on from it.
    pub version: u64,
    /// Keys in the copy.
    pub keys: u64,
    /// The region's data folder, now holding the copy.
    pub data_dir: PathBuf,
    /// Where the region's previous folder was moved, if there was one.
    pub replaced: Option<PathBuf>,
    /// Whether the previous folder's blobs were carried over.
    pub blobs_carried_over: bool,
}

/// Why a standby cannot be promoted.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    /// The two configurations do not describe the same region and deployment.
    #[error("{0}")]
    Mismatch(String),
    /// The copy is not a whole store of this region.
    #[error("the standby's copy cannot be promoted: {0}")]
    Copy(String),
    /// The region still runs on its store.
    #[error(
        "the region still holds its store ({0}): stop it first, or it would be a second primary"
    )]
    RegionRunning(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Moving a folder failed.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA certificate could not be read.
    #[error("reading the CA certificate: {0}")]
    Ca(#[from] relay_net::NetError),
}

/// Promotes the standby `standby` describes to be region `region`'s store; `now_secs` names
/// the folder the region's previous one is moved to.
pub async fn promote_standby(
    standby: &relay_replica::StandbyConfig,
    region: &RegionConfig,
    now_secs: u64,
) -> Result<Promoted, PromoteError> {
    if standby.region != region.region {
        return Err(PromoteError::Mismatch(format!(
            "the standby copies region {}, the region configuration is region {}'s",
            standby.region, region.region
        )));
    }
    let deployment = deployment_id(&region.ca_cert)?;
    if deployment_id(&standby.ca_cert)? != deployment {
        return Err(PromoteError::Mismatch(
            "the standby and the region trust different CAs: another deployment".into(),
        ));
    }
    let copy_path = standby.data_dir.join(STORE_FILE);
    if !copy_path.exists() {
        return Err(PromoteError::Copy(format!(
            "{} does not exist: the standby never received a store",
            copy_path.display()
        )));
    }
    let (identity, report) = check_copy(&copy_path, RegionId(region.region), deployment).await?;
    let same_folder = same_path(&standby.data_dir, &region.data_dir);
    let region_store = region.data_dir.join(STORE_FILE);
    if !same_folder && region_store.exists() {
        // The lock redb holds while a process has the file open tells a running region.
        // Closed again at once when it opens; a damaged old store is being replaced anyway.
        if let Err(StoreError::InUse(path)) = Database::open(
            &region_store,
            EmbeddedOptions {
                check_integrity_on_open: false,
                ..EmbeddedOptions::default()
            },
        ) {
            return Err(PromoteError::RegionRunning(path));
        }
    }
    let mut replaced = None;
    let mut blobs_carried_over = false;
    if !same_folder {
        if region.data_dir.exists() {
            let mut name = region.data_dir.as_os_str().to_owned();
            name.push(format!(".replaced-{now_secs}"));
            let aside = PathBuf::from(name);
            rename(
                &region.data_dir,
                &aside,
                "moving the region's folder aside to",
            )?;
            replaced = Some(aside);
        }
        rename(
            &standby.data_dir,
            &region.data_dir,
            "moving the standby's folder to",
        )?;
        if let Some(aside) = &replaced {
            let blobs = aside.join(BLOBS_FOLDER);
            let target = region.data_dir.join(BLOBS_FOLDER);
            if blobs.is_dir() && !target.exists() {
                rename(&blobs, &target, "carrying the blobs over to")?;
                blobs_carried_over = true;
            }
        }
        sync_folder(region.data_dir.parent().unwrap_or(Path::new(".")))?;
    }
    tracing::warn!(
        region = region.region,
        version = report.version,
        data_dir = %region.data_dir.display(),
        "the standby's copy is now the region's store"
    );
    Ok(Promoted {
        region: region.region,
        store_id: identity.store_id.to_string(),
        version: report.version,
        keys: report.keys,
        data_dir: region.data_dir.clone(),
        replaced,
        blobs_carried_over,
    })
}

/// Opens the copy as a store (refused if an install is unfinished or the standby runs),
/// checks its integrity and identity.
async fn check_copy(
    path: &Path,
    region: RegionId,
    deployment: store_identity::DeploymentId,
) -> Result<(StoreIdentity, fdb_layers::IntegrityReport), PromoteError> {
    let copy = match Database::open(path, EmbeddedOptions::default()) {
        Ok(copy) => copy,
        Err(StoreError::InUse(path)) => {
            return Err(PromoteError::Copy(format!(
                "{path} is open: stop the standby first"
            )));
        }
        Err(error @ StoreError::Corrupt { .. }) => {
            return Err(PromoteError::Copy(error.to_string()));
        }
        Err(error) => return Err(error.into()),
    };
    let report = copy.check_integrity().await?;
    let identity = copy
        .transact(|transaction| async move { store_identity::identity(&transaction).await })
        .await?;
    let Some(identity) = identity else {
        return Err(PromoteError::Copy(
            "it holds no store identity: the standby never received this region's store".into(),
        ));
    };
    if identity.region != region {
        return Err(PromoteError::Copy(format!(
            "it is region {}'s store, not region {}'s",
            identity.region.0, region.0
        )));
    }
    if identity.deployment != deployment {
        return Err(PromoteError::Copy(format!(
            "it is a store of deployment {}, not of this one ({deployment})",
            identity.deployment
        )));
    }
    Ok((identity, report))
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn rename(from: &Path, to: &Path, what: &'static str) -> Result<(), PromoteError> {
    std::fs::rename(from, to).map_err(|source| PromoteError::File {
        what,
        path: to.to_path_buf(),
        source,
    })
}

fn sync_folder(folder: &Path) -> Result<(), PromoteError> {
    std::fs::File::open(folder)
        .and_then(|folder| folder.sync_all())
        .map_err(|source| PromoteError::File {
            what: "syncing",
            path: folder.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use fdb_layers::StandbyStore;
    use fdb_layers::store_identity::{LAYOUT_VERSION, StoreId};
    use relay_replica::StandbyConfig;

    use super::*;

    struct Setup {
        _folder: tempfile::TempDir,
        root: PathBuf,
        standby: StandbyConfig,
        region: RegionConfig,
    }

    fn setup() -> Setup {
        let folder = tempfile::tempdir().expect("folder");
        let root = folder.path().to_path_buf();
        let key = rcgen::KeyPair::generate().expect("key");
        let ca = relay_net::pki::ca_params("promote test CA")
            .self_signed(&key)
            .expect("CA");
        let ca_cert = root.join("ca.pem");
        std::fs::write(&ca_cert, ca.pem()).expect("write");
        let standby = StandbyConfig {
            region: 1,
            listen: "127.0.0.1:0".parse().expect("address"),
            data_dir: root.join("standby-1"),
            ca_cert: ca_cert.clone(),
            cert: root.join("unused.pem"),
            key: root.join("unused.key"),
            promotion: None,
        };
        let region = RegionConfig {
            region: 1,
            listen: "127.0.0.1:0".parse().expect("address"),
            data_dir: root.join("region-1"),
            directory_writer: 1,
            peers_file: root.join("peers.toml"),
            ca_cert,
            cert: root.join("unused.pem"),
            key: root.join("unused.key"),
            blobs: Default::default(),
            push: Default::default(),
            registration: Default::default(),
            replication: None,
            media: None,
        };
        Setup {
            _folder: folder,
            root,
            standby,
            region,
        }
    }

    /// Makes the standby's copy a store with `region`'s identity in this deployment.
    async fn identified_copy(setup: &Setup, region: u32) {
        std::fs::create_dir_all(&setup.standby.data_dir).expect("folder");
        let copy = Database::open(
            &setup.standby.data_dir.join(STORE_FILE),
            EmbeddedOptions::default(),
        )
        .expect("opens");
        let identity = StoreIdentity {
            region: RegionId(region),
            deployment: deployment_id(&setup.region.ca_cert).expect("deployment"),
            store_id: StoreId([7; 16]),
            created_at_ms: 1,
            layout_version: LAYOUT_VERSION,
        };
        copy.transact(|transaction| async move {
            store_identity::create(&transaction, &identity).await?;
            transaction.set(b"a message", b"kept")
        })
        .await
        .expect("commits");
    }

    #[tokio::test]
    async fn the_copy_takes_the_regions_place_with_its_blobs() {
        let setup = setup();
        identified_copy(&setup, 1).await;
        std::fs::create_dir_all(setup.region.data_dir.join(BLOBS_FOLDER)).expect("folder");
        std::fs::write(setup.region.data_dir.join(BLOBS_FOLDER).join("b"), b"blob").expect("w");
        let promoted = promote_standby(&setup.standby, &setup.region, 42)
            .await
            .expect("promotes");
        assert_eq!(
            promoted.replaced,
            Some(setup.root.join("region-1.replaced-42"))
        );
        assert!(promoted.blobs_carried_over);
        assert!(promoted.version > 0 && promoted.keys >= 2, "{promoted:?}");
        assert!(!setup.standby.data_dir.exists());
        let store = Database::open(
            &setup.region.data_dir.join(STORE_FILE),
            EmbeddedOptions::default(),
        )
        .expect("the region's store opens");
        let kept = store
            .transact(|transaction| async move { transaction.get(b"a message").await })
            .await
            .expect("reads");
        assert_eq!(kept, Some(b"kept".to_vec()));
        assert!(setup.region.data_dir.join(BLOBS_FOLDER).join("b").exists());
    }

    #[tokio::test]
    async fn a_copy_that_is_not_this_regions_whole_store_is_refused() {
        let setup = setup();
        let never = promote_standby(&setup.standby, &setup.region, 1).await;
        assert!(matches!(never, Err(PromoteError::Copy(_))), "{never:?}");
        // A copy that never got a store, and one whose full copy did not finish.
        std::fs::create_dir_all(&setup.standby.data_dir).expect("folder");
        drop(StandbyStore::open(&setup.standby.data_dir.join(STORE_FILE)).expect("opens"));
        let empty = promote_standby(&setup.standby, &setup.region, 1).await;
        assert!(
            matches!(&empty, Err(PromoteError::Copy(reason)) if reason.contains("never received")),
            "{empty:?}"
        );
        let mut copy = StandbyStore::open(&setup.standby.data_dir.join(STORE_FILE)).expect("opens");
        copy.begin_install(5).expect("begins");
        drop(copy);
        let unfinished = promote_standby(&setup.standby, &setup.region, 1).await;
        assert!(
            matches!(&unfinished, Err(PromoteError::Copy(reason)) if reason.contains("did not finish")),
            "{unfinished:?}"
        );
        // Another region's store, and another region's standby configuration.
        std::fs::remove_dir_all(&setup.standby.data_dir).expect("remove");
        identified_copy(&setup, 2).await;
        let other = promote_standby(&setup.standby, &setup.region, 1).await;
        assert!(
            matches!(&other, Err(PromoteError::Copy(reason)) if reason.contains("region 2's store")),
            "{other:?}"
        );
        let mismatch = StandbyConfig {
            region: 2,
            ..setup.standby.clone()
        };
        assert!(matches!(
            promote_standby(&mismatch, &setup.region, 1).await,
            Err(PromoteError::Mismatch(_))
        ));
        assert!(setup.standby.data_dir.exists(), "nothing was moved");
    }

    #[tokio::test]
    async fn a_running_region_or_standby_is_refused() {
        let setup = setup();
        identified_copy(&setup, 1).await;
        std::fs::create_dir_all(&setup.region.data_dir).expect("folder");
        let running = Database::open(
            &setup.region.data_dir.join(STORE_FILE),
            EmbeddedOptions::default(),
        )
        .expect("opens");
        let refused = promote_standby(&setup.standby, &setup.region, 1).await;
        assert!(
            matches!(refused, Err(PromoteError::RegionRunning(_))),
            "{refused:?}"
        );
        drop(running);
        let standby = Database::open(
            &setup.standby.data_dir.join(STORE_FILE),
            EmbeddedOptions::default(),
        )
        .expect("opens");
        let refused = promote_standby(&setup.standby, &setup.region, 1).await;
        assert!(
            matches!(&refused, Err(PromoteError::Copy(reason)) if reason.contains("stop the standby first")),
            "{refused:?}"
        );
        drop(standby);
        promote_standby(&setup.standby, &setup.region, 1)
            .await
            .expect("promotes once both stopped");
    }
}
