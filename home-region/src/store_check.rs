//! Whether the store a region opened is the one it expects, decided before the region serves.
//!
//! A store records its identity when the region creates it (region, deployment, a random store
//! id, creation time: `fdb_layers::store_identity`), and the region writes the store id into a
//! marker file beside it ([`STORE_MARKER_FILE`], fsynced). The deployment id is the SHA-256 of
//! the deployment's CA certificates ([`deployment_id`]), which every process of a deployment
//! already shares through its configuration. At start:
//!
//! - a store with an identity must name this region and this deployment, and the store the
//!   marker names (a store copied from another deployment or region, or an older copy, is
//!   refused);
//! - a store with data but no identity was made before identities existed: it is adopted;
//! - an empty store is refused when the marker says a store lived here; otherwise the directory
//!   writer is asked for its census of the region ([`wire::StoreCensusRequest`]: how many
//!   accounts are homed there, which store it registered last), waiting for it with bounded
//!   retries; if accounts live here or a store was registered, the empty store is refused. The
//!   writer region takes the census from its own store.
//!
//! `--accept-new-store` is the operator saying an empty store is really wanted: the region logs
//! what is lost, creates the new identity and registers it at the writer in place of the old
//! one. A foreign store is refused even then (it is not empty: move it away first).
//!
//! The decisions are functions of what was read ([`decide_local`], [`decide_census`]);
//! [`check_store`] reads, asks and writes around them.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fdb_layers::store_identity::{
    self, DeploymentId, LAYOUT_VERSION, Registration, StoreId, StoreIdentity,
};
use fdb_layers::{Database, StoreError, directory};
use relay_proto::wire;
use relay_proto::{ProtoError, RegionId};
use sha2::{Digest, Sha256};

use crate::core;
use crate::limits::{
    HOME_TALLY_ACCOUNTS_PER_TRANSACTION, WRITER_CENSUS_ATTEMPT_TIMEOUT_MS,
    WRITER_CENSUS_ATTEMPTS_MAX, WRITER_CENSUS_RETRY_DELAY_MS,
};

/// The marker file beside the store, holding the store id in hex.
pub const STORE_MARKER_FILE: &str = "store-id";

/// What a region expects of its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// This region.
    pub region: RegionId,
    /// This deployment.
    pub deployment: DeploymentId,
    /// The directory writer region.
    pub directory_writer: RegionId,
}

/// What the store holds, read before deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// An identity.
    Identified(StoreIdentity),
    /// No key at all: a new store, or an emptied file.
    Empty,
    /// Data but no identity: a store made before identities existed.
    Unidentified,
}

/// What the marker file beside the store says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// There is no marker file.
    Missing,
    /// The marker names a store.
    Names(StoreId),
}

/// The directory writer's census of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Accounts whose home is the region.
    pub accounts_homed: u64,
    /// The store the region registered last.
    pub registered: Option<Registration>,
}

/// The decision from what is on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalDecision {
    /// The store is the expected one; write the marker file when it is missing.
    Known {
        /// The store's identity.
        identity: StoreIdentity,
        /// Whether the marker file must be written.
        write_marker: bool,
    },
    /// A store made before identities existed: give it an identity.
    Adopt,
    /// An empty store: ask the directory writer whether accounts live here.
    AskCensus,
}

/// The decision about an empty store, once the directory writer's census is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewStore {
    /// The registered store the new one replaces (only with `--accept-new-store`).
    pub replacing: Option<Registration>,
    /// Accounts homed here that lose their devices, keys and queued messages (only with
    /// `--accept-new-store`).
    pub lost_accounts: u64,
}

/// Why a region refuses to start on its store. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreRefusal {
    /// The store belongs to another deployment.
    #[error(
        "it belongs to another deployment (deployment {found}, this one is {expected}): it was \
         copied from elsewhere. Put this region's own store back; if this region's data is \
         really lost, move the file away and start once with --accept-new-store"
    )]
    OtherDeployment {
        /// The store's deployment.
        found: DeploymentId,
        /// This deployment.
        expected: DeploymentId,
    },
    /// The store belongs to another region of this deployment.
    #[error(
        "it is region {found}'s store, not region {expected}'s: put region {expected}'s own \
         store back (every region keeps its store in its own data_dir)"
    )]
    OtherRegion {
        /// The store's region.
        found: RegionId,
        /// This region.
        expected: RegionId,
    },
    /// The store's keys follow another layout than this relayd's.
    #[error(
        "its keys follow layout version {found} and this relayd reads version {expected}: a \
         newer version was written by a newer relayd (run that one), an older one needs a \
         migration this relayd does not have. Nothing was read or changed"
    )]
    OtherLayout {
        /// The store's layout version.
        found: u32,
        /// This relayd's ([`LAYOUT_VERSION`]).
        expected: u32,
    },
    /// The store is this region's, but not the one the marker file names.
    #[error(
        "it is store {found}, but the marker file {STORE_MARKER_FILE} beside it names store \
         {marker}: another copy of this region's store was put in place. Put store {marker} \
         back; if it is lost and this copy is what remains, delete the marker file to accept \
         this one"
    )]
    MarkerNamesAnother {
        /// The store's id.
        found: StoreId,
        /// The id in the marker file.
        marker: StoreId,
    },
    /// The store has data but no identity, while the marker file names a store.
    #[error(
        "it holds data but no identity, while the marker file {STORE_MARKER_FILE} beside it \
         names store {marker}: it is not the store that was here. Put store {marker} back"
    )]
    UnidentifiedWithMarker {
        /// The id in the marker file.
        marker: StoreId,
    },
    /// The store is empty, but the marker file says a store lived here.
    #[error(
        "it is empty, but the marker file {STORE_MARKER_FILE} says store {marker} lived here: \
         the store file was emptied or replaced, and the accounts homed here would lose their \
         devices and queued messages. Restore the store from a backup; if its data is really \
         lost, start once with --accept-new-store"
    )]
    EmptyWithMarker {
        /// The id in the marker file.
        marker: StoreId,
    },
    /// The store is empty, but the directory writer says accounts live here or a store was
    /// registered for this region.
    #[error(
        "it is empty, but the directory writer (region {writer}) says {accounts_homed} \
         account(s) are homed in region {region}{}: their devices and queued messages would be \
         gone. Restore the store from a backup; if its data is really lost, start once with \
         --accept-new-store",
        registered.map(|r| format!(" and store {} was registered for it", r.store_id)).unwrap_or_default()
    )]
    DirectoryKnowsThisRegion {
        /// The directory writer.
        writer: RegionId,
        /// This region.
        region: RegionId,
        /// Accounts homed here, by the writer's count.
        accounts_homed: u64,
        /// The store the writer holds for this region.
        registered: Option<Registration>,
    },
    /// The directory writer could not be asked.
    #[error(
        "it is empty, and the directory writer (region {writer}) could not be asked whether \
         accounts live here ({attempts} attempts; last error: {last_error}). Start the \
         directory writer first (and check peers_file); a region never starts on an empty store \
         without asking"
    )]
    WriterUnreachable {
        /// The directory writer.
        writer: RegionId,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last_error: String,
    },
    /// The directory writer holds another store for this region.
    #[error(
        "the directory writer (region {writer}) holds store {held} for region {region}, not \
         this store {ours}: a newer store was registered for this region, so this one is an \
         older copy. Put the registered store back; if it is lost, move this one away and \
         start once with --accept-new-store"
    )]
    WriterHoldsAnother {
        /// The directory writer.
        writer: RegionId,
        /// This region.
        region: RegionId,
        /// The store the writer holds.
        held: StoreId,
        /// This store.
        ours: StoreId,
    },
}

/// Why [`check_store`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreCheckError {
    /// The store is not one this region may start on.
    #[error(transparent)]
    Refused(#[from] StoreRefusal),
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The marker file could not be read or written.
    #[error("marker file {}", path.display())]
    Marker {
        /// The marker file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The marker file does not hold a store id.
    #[error(
        "marker file {} does not hold a store id (32 hex digits); it is written by the region: \
         restore it, or delete it if the store beside it is the right one",
        path.display()
    )]
    MarkerContent {
        /// The marker file.
        path: PathBuf,
    },
    /// The directory writer answered something else than a census.
    #[error("the directory writer answered: {0}")]
    Writer(ProtoError),
}

/// A store file of zero bytes, found before the store is opened. The engine refuses to open
/// one (it never makes an empty file), so the region decides here what the operator is told:
/// when the marker file names the store that lived here, the region refuses with
/// [`StoreRefusal::EmptyWithMarker`] (unless `accept_new_store`); otherwise the empty file,
/// which holds nothing, is moved aside (`region.redb.empty-<ms>`) and the region goes on as on
/// a missing store, asking the directory writer. Nothing to do for a missing or non-empty file.
pub fn set_aside_empty_file(
    store: &Path,
    data_dir: &Path,
    accept_new_store: bool,
    now_ms: u64,
) -> Result<(), StoreCheckError> {
    let empty = std::fs::metadata(store).is_ok_and(|metadata| metadata.len() == 0);
    if !empty {
        return Ok(());
    }
    if let (Marker::Names(marker), false) = (read_marker(data_dir)?, accept_new_store) {
        return Err(StoreRefusal::EmptyWithMarker { marker }.into());
    }
    let mut aside = store.as_os_str().to_owned();
    aside.push(format!(".empty-{now_ms}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(store, &aside).map_err(|source| StoreCheckError::Marker {
        path: aside.clone(),
        source,
    })?;
    tracing::warn!(
        store = %store.display(),
        aside = %aside.display(),
        "the store file was empty; moved aside, deciding as on a missing store"
    );
    Ok(())
}

/// The first decision: from the store's identity and the marker file alone.
pub fn decide_local(
    found: &Found,
    marker: &Marker,
    expected: &Expected,
    accept_new_store: bool,
) -> Result<LocalDecision, StoreRefusal> {
    match (found, marker) {
        (Found::Identified(identity), _) if identity.deployment != expected.deployment => {
            Err(StoreRefusal::OtherDeployment {
                found: identity.deployment,
                expected: expected.deployment,
            })
        }
        (Found::Identified(identity), _) if identity.region != expected.region => {
            Err(StoreRefusal::OtherRegion {
                found: identity.region,
                expected: expected.region,
            })
        }
        (Found::Identified(identity), _) if identity.layout_version != LAYOUT_VERSION => {
            Err(StoreRefusal::OtherLayout {
                found: identity.layout_version,
                expected: LAYOUT_VERSION,
            })
        }
        (Found::Identified(identity), Marker::Names(marker)) if *marker != identity.store_id => {
            Err(StoreRefusal::MarkerNamesAnother {
                found: identity.store_id,
                marker: *marker,
            })
        }
        (Found::Identified(identity), marker) => Ok(LocalDecision::Known {
            identity: *identity,
            write_marker: *marker == Marker::Missing,
        }),
        // Data without an identity and a marker naming a store: not the store that was here.
        (Found::Unidentified, Marker::Names(marker)) => {
            Err(StoreRefusal::UnidentifiedWithMarker { marker: *marker })
        }
        (Found::Unidentified, Marker::Missing) => Ok(LocalDecision::Adopt),
        (Found::Empty, Marker::Names(marker)) if !accept_new_store => {
            Err(StoreRefusal::EmptyWithMarker { marker: *marker })
        }
        (Found::Empty, _) => Ok(LocalDecision::AskCensus),
    }
}

/// The decision about an empty store from the directory writer's census.
pub fn decide_census(
    census: &Census,
    expected: &Expected,
    accept_new_store: bool,
) -> Result<NewStore, StoreRefusal> {
    let known = census.accounts_homed > 0 || census.registered.is_some();
    if known && !accept_new_store {
        return Err(StoreRefusal::DirectoryKnowsThisRegion {
            writer: expected.directory_writer,
            region: expected.region,
            accounts_homed: census.accounts_homed,
            registered: census.registered,
        });
    }
    Ok(NewStore {
        replacing: census.registered,
        lost_accounts: census.accounts_homed,
    })
}

/// Where a region gets the directory writer's census: the writer itself, or a link to it.
pub trait CensusSource {
    /// One census request (the runner retries).
    fn census(
        &self,
        request: wire::StoreCensusRequest,
    ) -> impl Future<Output = Result<wire::StoreCensus, ProtoError>>;
}

/// The directory writer's own store, for the writer region's check of itself.
pub struct LocalCensus<'a> {
    /// The writer's store.
    pub db: &'a Database,
    /// The time registrations are recorded at.
    pub now_ms: u64,
}

impl CensusSource for LocalCensus<'_> {
    async fn census(
        &self,
        request: wire::StoreCensusRequest,
    ) -> Result<wire::StoreCensus, ProtoError> {
        let now_ms = self.now_ms;
        let outcome = self
            .db
            .transact(|tx| {
                let request = request.clone();
                async move { core::store_census(&tx, &request, now_ms).await }
            })
            .await
            .map_err(|error| {
                ProtoError::new(
                    relay_proto::ErrorCode::StorageUnavailable,
                    error.to_string(),
                )
            })?;
        outcome.map(|(census, _)| census)
    }
}

/// What [`check_store`] needs besides the store.
pub struct CheckInputs<'a, S> {
    /// The folder of the store (the marker file lives there).
    pub data_dir: &'a Path,
    /// What the region expects.
    pub expected: Expected,
    /// The operator accepts an empty store (`--accept-new-store`).
    pub accept_new_store: bool,
    /// The id a new store gets (random, drawn by the caller).
    pub new_store_id: StoreId,
    /// The time now, in milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// Where the directory writer's census comes from.
    pub writer: &'a S,
}

/// Reads the store's identity and the marker file, decides, asks the directory writer when
/// the store is empty, and records a new identity when one is due. Returns the identity the
/// region serves with.
pub async fn check_store<S: CensusSource>(
    db: &Database,
    inputs: CheckInputs<'_, S>,
) -> Result<StoreIdentity, StoreCheckError> {
    let CheckInputs {
        data_dir,
        expected,
        accept_new_store,
        new_store_id,
        now_ms,
        writer,
    } = inputs;
    let found = db
        .transact(|tx| async move {
            Ok(match store_identity::identity(&tx).await? {
                Some(identity) => Found::Identified(identity),
                None if store_identity::store_is_empty(&tx).await? => Found::Empty,
                None => Found::Unidentified,
            })
        })
        .await?;
    let marker = read_marker(data_dir)?;
    let fresh = StoreIdentity {
        region: expected.region,
        deployment: expected.deployment,
        store_id: new_store_id,
        created_at_ms: now_ms,
        layout_version: LAYOUT_VERSION,
    };
    match decide_local(&found, &marker, &expected, accept_new_store)? {
        LocalDecision::Known {
            identity,
            write_marker,
        } => {
            if write_marker {
                tracing::warn!(store = %identity.store_id, "the store's marker file was missing; writing it again");
                write_marker_file(data_dir, identity.store_id)?;
            }
            if accept_new_store {
                tracing::info!("--accept-new-store has nothing to do: the store is known");
            }
            confirm_at_writer(db, &expected, identity.store_id, None, writer, 1).await?;
            Ok(identity)
        }
        LocalDecision::Adopt => {
            tracing::warn!(
                store = %fresh.store_id,
                "the store holds data but no identity (made before store identities existed); adopting it as this region's"
            );
            if expected.region == expected.directory_writer {
                tally_homes(db).await?;
            }
            let identity = record_identity(db, data_dir, fresh).await?;
            confirm_at_writer(db, &expected, identity.store_id, None, writer, 1).await?;
            Ok(identity)
        }
        LocalDecision::AskCensus => {
            let census = ask_census(&expected, writer).await?;
            let new_store = decide_census(&census, &expected, accept_new_store)?;
            if new_store.replacing.is_some()
                || new_store.lost_accounts > 0
                || marker != Marker::Missing
            {
                let previous = new_store
                    .replacing
                    .map(|registration| registration.store_id.to_string())
                    .or_else(|| match marker {
                        Marker::Names(id) => Some(id.to_string()),
                        Marker::Missing => None,
                    })
                    .unwrap_or_else(|| "none registered".into());
                tracing::error!(
                    region = %expected.region,
                    lost_accounts = new_store.lost_accounts,
                    %previous,
                    new_store = %fresh.store_id,
                    "--accept-new-store: STARTING REGION {} ON AN EMPTY STORE. The {} account(s) homed here lose their devices, keys and queued messages (their owners must register again); the previous store {} is replaced",
                    expected.region,
                    new_store.lost_accounts,
                    previous,
                );
            }
            let identity = record_identity(db, data_dir, fresh).await?;
            let replacing = new_store
                .replacing
                .map(|registration| registration.store_id);
            confirm_at_writer(
                db,
                &expected,
                identity.store_id,
                replacing,
                writer,
                WRITER_CENSUS_ATTEMPTS_MAX,
            )
            .await?;
            Ok(identity)
        }
    }
}

/// The deployment id: the SHA-256 of the DER of every certificate in the deployment's CA file,
/// each preceded by its length.
pub fn deployment_id(ca_cert: &Path) -> Result<DeploymentId, relay_net::NetError> {
    let certificates = relay_net::load_certificates(ca_cert)?;
    let mut hasher = Sha256::new();
    hasher.update(b"relay-deployment-v1");
    for certificate in &certificates {
        hasher.update((certificate.len() as u64).to_be_bytes());
        hasher.update(certificate.as_ref());
    }
    Ok(DeploymentId(hasher.finalize().into()))
}

/// Reads the marker file in `data_dir`.
pub fn read_marker(data_dir: &Path) -> Result<Marker, StoreCheckError> {
    let path = data_dir.join(STORE_MARKER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => StoreId::from_hex(&text)
            .map(Marker::Names)
            .ok_or(StoreCheckError::MarkerContent { path }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Marker::Missing),
        Err(source) => Err(StoreCheckError::Marker { path, source }),
    }
}

/// Writes the marker file in `data_dir` durably: a temporary file, fsynced, renamed over the
/// marker, and the folder fsynced.
pub fn write_marker_file(data_dir: &Path, store_id: StoreId) -> Result<(), StoreCheckError> {
    let path = data_dir.join(STORE_MARKER_FILE);
    let temporary = data_dir.join(format!("{STORE_MARKER_FILE}.tmp"));
    let failed = |source| StoreCheckError::Marker {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::File::create(&temporary).map_err(failed)?;
    file.write_all(format!("{store_id}\n").as_bytes())
        .map_err(failed)?;
    file.sync_all().map_err(failed)?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(failed)?;
    std::fs::File::open(data_dir)
        .and_then(|folder| folder.sync_all())
        .map_err(failed)
}

/// Records `identity` in the store (keeping one that a concurrent start wrote first), then the
/// marker file.
async fn record_identity(
    db: &Database,
    data_dir: &Path,
    identity: StoreIdentity,
) -> Result<StoreIdentity, StoreCheckError> {
    let kept = db
        .transact(|tx| async move { store_identity::create(&tx, &identity).await })
        .await?;
    write_marker_file(data_dir, kept.store_id)?;
    tracing::info!(store = %kept.store_id, region = %kept.region, "recorded the store's identity");
    Ok(kept)
}

/// Asks the directory writer's census, up to [`WRITER_CENSUS_ATTEMPTS_MAX`] times.
async fn ask_census<S: CensusSource>(
    expected: &Expected,
    writer: &S,
) -> Result<Census, StoreCheckError> {
    let request = wire::StoreCensusRequest {
        region: expected.region.0,
        claim: None,
    };
    let census = with_retries(expected, writer, request, WRITER_CENSUS_ATTEMPTS_MAX).await?;
    let registered = registration_of(&census);
    Ok(Census {
        accounts_homed: census.accounts_homed,
        registered,
    })
}

/// Registers `store_id` at the directory writer (replacing `replacing`) unless the store says
/// the writer confirmed it already, and records the confirmation. With one attempt, a writer
/// that cannot be reached is left for the next start.
async fn confirm_at_writer<S: CensusSource>(
    db: &Database,
    expected: &Expected,
    store_id: StoreId,
    replacing: Option<StoreId>,
    writer: &S,
    attempts: u32,
) -> Result<(), StoreCheckError> {
    let confirmed = db
        .transact(|tx| async move { store_identity::writer_confirmed(&tx).await })
        .await?;
    if confirmed == Some(store_id) {
        return Ok(());
    }
    let request = wire::StoreCensusRequest {
        region: expected.region.0,
        claim: Some(wire::StoreClaim {
            store_id: store_id.0.to_vec(),
            previous_store_id: replacing.map(|id| id.0.to_vec()).unwrap_or_default(),
        }),
    };
    let census = match with_retries(expected, writer, request, attempts).await {
        Ok(census) => census,
        Err(StoreCheckError::Refused(StoreRefusal::WriterUnreachable { last_error, .. }))
            if attempts == 1 =>
        {
            tracing::warn!(
                %last_error,
                "could not register this store at the directory writer; will try again at the next start"
            );
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    match registration_of(&census) {
        Some(registration) if registration.store_id == store_id => {
            db.transact(|tx| async move { store_identity::confirm(&tx, store_id) })
                .await?;
            Ok(())
        }
        Some(registration) => Err(StoreRefusal::WriterHoldsAnother {
            writer: expected.directory_writer,
            region: expected.region,
            held: registration.store_id,
            ours: store_id,
        }
        .into()),
        None => Err(StoreCheckError::Writer(ProtoError::new(
            relay_proto::ErrorCode::Internal,
            "the census holds no store after a claim",
        ))),
    }
}

/// One census request, retried up to `attempts` times with a bounded wait for each.
async fn with_retries<S: CensusSource>(
    expected: &Expected,
    writer: &S,
    request: wire::StoreCensusRequest,
    attempts: u32,
) -> Result<wire::StoreCensus, StoreCheckError> {
    let mut last_error = String::new();
    for attempt in 1..=attempts {
        let answer = tokio::time::timeout(
            Duration::from_millis(WRITER_CENSUS_ATTEMPT_TIMEOUT_MS),
            writer.census(request.clone()),
        )
        .await;
        match answer {
            Ok(Ok(census)) => return Ok(census),
            Ok(Err(error)) if !error.code.is_retryable() => {
                return Err(StoreCheckError::Writer(error));
            }
            Ok(Err(error)) => last_error = error.to_string(),
            Err(_) => {
                last_error = format!("no answer within {WRITER_CENSUS_ATTEMPT_TIMEOUT_MS} ms")
            }
        }
        tracing::info!(attempt, %last_error, "waiting for the directory writer's census");
        if attempt < attempts {
            tokio::time::sleep(Duration::from_millis(WRITER_CENSUS_RETRY_DELAY_MS)).await;
        }
    }
    Err(StoreRefusal::WriterUnreachable {
        writer: expected.directory_writer,
        attempts,
        last_error,
    }
    .into())
}

fn registration_of(census: &wire::StoreCensus) -> Option<Registration> {
    StoreId::from_bytes(&census.store_id).map(|store_id| Registration {
        store_id,
        registered_at_ms: census.registered_at_ms,
    })
}

/// Counts the accounts of a directory copy made before the home counts existed, by home
/// region, and stores the counts.
async fn tally_homes(db: &Database) -> Result<(), StoreError> {
    let mut tally = BTreeMap::new();
    let mut after = None;
    loop {
        let (last, page) = db
            .transact(|tx| async move {
                let mut page = BTreeMap::new();
                let last = directory::count_homes(
                    &tx,
                    after,
                    HOME_TALLY_ACCOUNTS_PER_TRANSACTION,
                    &mut page,
                )
                .await?;
                Ok((last, page))
            })
            .await?;
        for (region, accounts) in page {
            *tally.entry(region).or_insert(0u64) += accounts;
        }
        match last {
            Some(account) => after = Some(account),
            None => break,
        }
    }
    tracing::info!(?tally, "counted the accounts of each home region");
    db.transact(|tx| {
        let tally = tally.clone();
        async move {
            for (region, accounts) in tally {
                directory::set_accounts_homed(&tx, region, accounts)?;
            }
            Ok(())
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use fdb_layers::EmbeddedOptions;
    use fdb_layers::keys::IdempotencyKey;
    use fdb_layers::store_identity::{DEPLOYMENT_ID_BYTES, STORE_ID_BYTES};

    use super::*;

    const WRITER: RegionId = RegionId(1);
    const HERE: RegionId = RegionId(2);
    const DEPLOYMENT: DeploymentId = DeploymentId([5; DEPLOYMENT_ID_BYTES]);

    fn expected(region: RegionId) -> Expected {
        Expected {
            region,
            deployment: DEPLOYMENT,
            directory_writer: WRITER,
        }
    }

    fn store(id: u8) -> StoreId {
        StoreId([id; STORE_ID_BYTES])
    }

    fn identity(region: RegionId, deployment: DeploymentId, id: u8) -> StoreIdentity {
        StoreIdentity {
            region,
            deployment,
            store_id: store(id),
            created_at_ms: 1,
            layout_version: LAYOUT_VERSION,
        }
    }

    #[test]
    fn a_store_must_name_this_region_this_deployment_and_the_marker() {
        let here = expected(HERE);
        let ours = identity(HERE, DEPLOYMENT, 1);
        let decide = |found, marker| decide_local(&found, &marker, &here, false);
        assert_eq!(
            decide(Found::Identified(ours), Marker::Names(store(1))),
            Ok(LocalDecision::Known {
                identity: ours,
                write_marker: false
            })
        );
        assert_eq!(
            decide(Found::Identified(ours), Marker::Missing),
            Ok(LocalDecision::Known {
                identity: ours,
                write_marker: true
            }),
            "a lost marker is written again"
        );
        let elsewhere = DeploymentId([6; DEPLOYMENT_ID_BYTES]);
        assert!(matches!(
            decide(
                Found::Identified(identity(HERE, elsewhere, 1)),
                Marker::Names(store(1))
            ),
            Err(StoreRefusal::OtherDeployment { .. })
        ));
        assert_eq!(
            decide(
                Found::Identified(identity(WRITER, DEPLOYMENT, 3)),
                Marker::Missing
            ),
            Err(StoreRefusal::OtherRegion {
                found: WRITER,
                expected: HERE
            })
        );
        for other in [LAYOUT_VERSION + 1, LAYOUT_VERSION - 1] {
            let written = StoreIdentity {
                layout_version: other,
                ..ours
            };
            assert_eq!(
                decide(Found::Identified(written), Marker::Names(store(1))),
                Err(StoreRefusal::OtherLayout {
                    found: other,
                    expected: LAYOUT_VERSION
                }),
                "a store of another layout is refused before anything reads it"
            );
        }
        assert_eq!(
            decide(Found::Identified(ours), Marker::Names(store(2))),
            Err(StoreRefusal::MarkerNamesAnother {
                found: store(1),
                marker: store(2)
            })
        );
        assert_eq!(
            decide(Found::Empty, Marker::Names(store(1))),
            Err(StoreRefusal::EmptyWithMarker { marker: store(1) })
        );
        assert_eq!(
            decide(Found::Empty, Marker::Missing),
            Ok(LocalDecision::AskCensus)
        );
        assert_eq!(
            decide(Found::Unidentified, Marker::Missing),
            Ok(LocalDecision::Adopt)
        );
        assert!(matches!(
            decide(Found::Unidentified, Marker::Names(store(1))),
            Err(StoreRefusal::UnidentifiedWithMarker { .. })
        ));
        // --accept-new-store accepts an empty store only, never a foreign one.
        assert_eq!(
            decide_local(&Found::Empty, &Marker::Names(store(1)), &here, true),
            Ok(LocalDecision::AskCensus)
        );
        assert!(matches!(
            decide_local(
                &Found::Identified(identity(WRITER, DEPLOYMENT, 3)),
                &Marker::Missing,
                &here,
                true
            ),
            Err(StoreRefusal::OtherRegion { .. })
        ));
    }

    #[test]
    fn an_empty_store_starts_only_where_the_directory_knows_nothing() {
        let here = expected(HERE);
        let nothing = Census {
            accounts_homed: 0,
            registered: None,
        };
        assert_eq!(
            decide_census(&nothing, &here, false),
            Ok(NewStore {
                replacing: None,
                lost_accounts: 0
            })
        );
        let registered = Registration {
            store_id: store(1),
            registered_at_ms: 9,
        };
        for census in [
            Census {
                accounts_homed: 3,
                registered: None,
            },
            Census {
                accounts_homed: 0,
                registered: Some(registered),
            },
        ] {
            let refusal = decide_census(&census, &here, false).expect_err("refused");
            assert!(
                refusal.to_string().contains("--accept-new-store"),
                "the message says what to do: {refusal}"
            );
            assert_eq!(
                decide_census(&census, &here, true),
                Ok(NewStore {
                    replacing: census.registered,
                    lost_accounts: census.accounts_homed
                })
            );
        }
    }

    struct Stores {
        folder: tempfile::TempDir,
        writer: Database,
    }

    impl Stores {
        fn new() -> Self {
            let folder = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir_all(folder.path().join("writer")).expect("folder");
            let writer = Database::open(
                &folder.path().join("writer/region.redb"),
                EmbeddedOptions::default(),
            )
            .expect("open");
            Stores { folder, writer }
        }

        fn region_dir(&self) -> PathBuf {
            let dir = self.folder.path().join("here");
            std::fs::create_dir_all(&dir).expect("folder");
            dir
        }

        fn open_region(&self) -> Database {
            Database::open(
                &self.region_dir().join("region.redb"),
                EmbeddedOptions::default(),
            )
            .expect("open")
        }

        /// Starts region 2 on `db`, asking the writer's own store for its census.
        async fn check(
            &self,
            db: &Database,
            new_store: u8,
            accept_new_store: bool,
        ) -> Result<StoreIdentity, StoreCheckError> {
            let writer = LocalCensus {
                db: &self.writer,
                now_ms: 50,
            };
            let data_dir = self.region_dir();
            let inputs = CheckInputs {
                data_dir: &data_dir,
                expected: expected(HERE),
                accept_new_store,
                new_store_id: store(new_store),
                now_ms: 40,
                writer: &writer,
            };
            check_store(db, inputs).await
        }

        async fn registered(&self) -> Option<StoreId> {
            self.writer
                .transact(|tx| async move { store_identity::registration(&tx, HERE).await })
                .await
                .expect("read")
                .map(|registration| registration.store_id)
        }
    }

    #[tokio::test]
    async fn a_new_store_registers_then_restarts_and_an_emptied_one_is_refused() {
        let stores = Stores::new();
        let db = stores.open_region();
        let created = stores
            .check(&db, 1, false)
            .await
            .expect("a new store starts");
        let expected_identity = StoreIdentity {
            created_at_ms: 40,
            ..identity(HERE, DEPLOYMENT, 1)
        };
        assert_eq!(created, expected_identity);
        assert_eq!(
            read_marker(&stores.region_dir()).expect("marker"),
            Marker::Names(store(1))
        );
        assert_eq!(stores.registered().await, Some(store(1)));

        // A restart keeps the identity (the new id it was offered is not used).
        let again = stores.check(&db, 9, false).await.expect("restarts");
        assert_eq!(again.store_id, store(1));
        drop(db);

        // The store file emptied: the marker tells, before the engine is asked to open it.
        let file = stores.region_dir().join("region.redb");
        std::fs::write(&file, b"").expect("truncate");
        let refused =
            set_aside_empty_file(&file, &stores.region_dir(), false, 50).expect_err("refused");
        assert!(
            matches!(
                refused,
                StoreCheckError::Refused(StoreRefusal::EmptyWithMarker { marker }) if marker == store(1)
            ),
            "{refused}"
        );
        assert_eq!(
            std::fs::metadata(&file).expect("kept").len(),
            0,
            "left as it was"
        );
        // The marker gone too: the empty file goes aside, and the directory writer tells.
        std::fs::remove_file(stores.region_dir().join(STORE_MARKER_FILE)).expect("rm");
        set_aside_empty_file(&file, &stores.region_dir(), false, 50).expect("set aside");
        assert!(stores.region_dir().join("region.redb.empty-50").exists());
        let db = stores.open_region();
        let refused = stores.check(&db, 2, false).await.expect_err("refused");
        assert!(
            matches!(
                refused,
                StoreCheckError::Refused(StoreRefusal::DirectoryKnowsThisRegion {
                    registered: Some(_),
                    ..
                })
            ),
            "{refused}"
        );

        // The operator accepts the loss: a new store, registered in place of the old one.
        let accepted = stores.check(&db, 2, true).await.expect("accepted");
        assert_eq!(accepted.store_id, store(2));
        assert_eq!(stores.registered().await, Some(store(2)));
        assert_eq!(
            read_marker(&stores.region_dir()).expect("marker"),
            Marker::Names(store(2))
        );
    }

    #[tokio::test]
    async fn an_empty_store_is_refused_where_accounts_live() {
        let stores = Stores::new();
        // The writer created an account homed here before this region ever registered a store.
        stores
            .writer
            .transact(|tx| async move {
                directory::create_account(&tx, "bob", HERE, &IdempotencyKey::new(1, [1; 16])).await
            })
            .await
            .expect("store")
            .expect("name free");
        let db = stores.open_region();
        let refused = stores.check(&db, 1, false).await.expect_err("refused");
        let StoreCheckError::Refused(refusal) = refused else {
            panic!("expected a refusal, got {refused}");
        };
        assert_eq!(
            refusal,
            StoreRefusal::DirectoryKnowsThisRegion {
                writer: WRITER,
                region: HERE,
                accounts_homed: 1,
                registered: None
            }
        );
        assert!(
            refusal
                .to_string()
                .contains("1 account(s) are homed in region 2")
        );
        let empty = db
            .transact(|tx| async move { store_identity::store_is_empty(&tx).await })
            .await
            .expect("read");
        assert!(empty, "a refused store is left as it was");
    }

    #[tokio::test]
    async fn the_writer_checks_itself_and_a_store_of_another_region_is_refused() {
        let stores = Stores::new();
        let writer_dir = stores.folder.path().join("writer");
        let local = LocalCensus {
            db: &stores.writer,
            now_ms: 50,
        };
        let inputs = CheckInputs {
            data_dir: &writer_dir,
            expected: expected(WRITER),
            accept_new_store: false,
            new_store_id: store(7),
            now_ms: 40,
            writer: &local,
        };
        let writer_identity = check_store(&stores.writer, inputs)
            .await
            .expect("the writer starts");
        assert_eq!(writer_identity.region, WRITER);
        let own = stores
            .writer
            .transact(|tx| async move {
                Ok((
                    store_identity::registration(&tx, WRITER).await?,
                    store_identity::writer_confirmed(&tx).await?,
                ))
            })
            .await
            .expect("read");
        assert_eq!(
            own.0.map(|registration| registration.store_id),
            Some(store(7))
        );
        assert_eq!(own.1, Some(store(7)));

        // The writer's store copied into region 2's folder.
        std::fs::copy(
            writer_dir.join("region.redb"),
            stores.region_dir().join("region.redb"),
        )
        .expect("copy");
        let db = stores.open_region();
        let refused = stores.check(&db, 1, false).await.expect_err("refused");
        assert!(
            matches!(
                refused,
                StoreCheckError::Refused(StoreRefusal::OtherRegion {
                    found: WRITER,
                    expected: HERE
                })
            ),
            "{refused}"
        );
    }

    #[test]
    fn a_marker_that_is_not_a_store_id_is_a_clear_error() {
        let folder = tempfile::tempdir().expect("tempdir");
        std::fs::write(folder.path().join(STORE_MARKER_FILE), "hello\n").expect("write");
        let error = read_marker(folder.path()).expect_err("refused");
        assert!(
            error.to_string().contains("does not hold a store id"),
            "{error}"
        );
        write_marker_file(folder.path(), store(3)).expect("write");
        assert_eq!(
            read_marker(folder.path()).expect("read"),
            Marker::Names(store(3))
        );
    }
}
