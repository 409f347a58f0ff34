//! The store identity layer: which region of which deployment a store belongs to, and (at the
//! directory writer) which store each region last registered.
//!
//! **Challenge.** A region must be able to prove, when it starts, that the store it opened is
//! the one it expects: not another deployment's store or another region's copied in, and not a
//! store that silently became empty (a truncated file opens as a new, empty database). Each
//! store therefore records, once, when it is created: the region it belongs to, the
//! deployment (a digest every process of a deployment shares), a random store id and the
//! creation time. The directory writer keeps, for every region, the id of the store that region
//! last registered, so that a region starting on an empty store can learn that a store existed
//! before it.
//!
//! **Key layout** (subspace `("store_identity",)`):
//! - `("self",)` → this store's identity (prost), written once by [`create`];
//! - `("writer_confirmed",)` → the store id the directory writer confirmed it registered for
//!   this store (16 bytes), so a restart does not ask again;
//! - `("region", region)` → (at the directory writer) the store the region registered last and
//!   when (prost).
//!
//! Every read is a point read, except [`store_is_empty`], one range read of one key over the
//! whole keyspace.
//!
//! **Conflicts.** [`create`] reads `("self",)` with a conflict, so two creations race and the
//! second sees the first's identity. [`register`] is a compare-and-set on a region's key: two
//! regions never write each other's keys, and two claims for one region serialize.
//!
//! **Idempotence.** [`create`] keeps an identity already there and returns it (the caller
//! compares it with the one it meant to write). [`register`] recognises its own earlier success
//! (the key already holds the claimed store) and answers it again. [`confirm`] is a plain set.
//!
//! **Limits.** A few small records; nothing grows with traffic (the registry holds one key per
//! region).
//!
//! **Evolution.** Stores written before this layer existed have no identity: the region adopts
//! them (it writes an identity for itself) when they hold data. New fields of the identity are
//! new prost tags; a store id is never reused. The identity records the layout version of
//! every layer's keys ([`LAYOUT_VERSION`]; absent in stores made before it was recorded, which
//! are version 1), so a change of layout is refused on a store of the old one, never misread.

use prost::Message;
use relay_proto::RegionId;

use crate::codec::decode_record;
use crate::engine::{RangeOptions, Transaction};
use crate::error::StoreError;
use crate::tuple::Subspace;

/// Bytes of a store id.
pub const STORE_ID_BYTES: usize = 16;
/// The layout of the layers' keys and values this code reads and writes. A store records the
/// version it was created with ([`StoreIdentity::layout_version`]); a region refuses a store of
/// another version before it serves (a newer one was written by a newer relayd; an older one
/// would need a migration). Stores created before the version was recorded are version 1.
pub const LAYOUT_VERSION: u32 = 1;
/// Bytes of a deployment id (a SHA-256 digest).
pub const DEPLOYMENT_ID_BYTES: usize = 32;

/// A random number naming one store, drawn when the store is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreId(pub [u8; STORE_ID_BYTES]);

/// The digest every process of one deployment shares (the region service uses the SHA-256 of
/// the deployment's CA certificates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeploymentId(pub [u8; DEPLOYMENT_ID_BYTES]);

/// What a store records about itself when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreIdentity {
    /// The region the store belongs to.
    pub region: RegionId,
    /// The deployment the region belongs to.
    pub deployment: DeploymentId,
    /// The store's own random id.
    pub store_id: StoreId,
    /// When the store was created, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The layout version the store's keys follow ([`LAYOUT_VERSION`] when it was created).
    pub layout_version: u32,
}

/// The store a region registered last at the directory writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// The registered store.
    pub store_id: StoreId,
    /// When it was registered, in milliseconds since the Unix epoch.
    pub registered_at_ms: u64,
}

/// What [`register`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// The claimed store is the region's registered store now (registered now, or before).
    Registered(Registration),
    /// Refused: the region's registered store is not the one the claim expected to replace.
    Held {
        /// What the writer holds for the region (`None`: nothing).
        current: Option<Registration>,
    },
}

impl StoreId {
    /// Reads a store id from its bytes (wire or file).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; STORE_ID_BYTES]>::try_from(bytes).ok().map(StoreId)
    }

    /// Reads a store id written by its `Display` (lowercase hex).
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex_decode(text.trim())?;
        Self::from_bytes(&bytes)
    }
}

impl std::fmt::Display for StoreId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_hex(f, &self.0)
    }
}

impl DeploymentId {
    /// Reads a deployment id from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; DEPLOYMENT_ID_BYTES]>::try_from(bytes)
            .ok()
            .map(DeploymentId)
    }
}

impl std::fmt::Display for DeploymentId {
    /// The first 8 bytes in hex: enough to tell deployments apart in a message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_hex(f, &self.0[..8])
    }
}

/// This store's identity, if it has one.
pub async fn identity(transaction: &Transaction) -> Result<Option<StoreIdentity>, StoreError> {
    let layer = Layer::new();
    match transaction.get(&layer.self_key()).await? {
        Some(bytes) => decode_identity(&bytes).map(Some),
        None => Ok(None),
    }
}

/// Records `identity` as this store's, unless the store already has one: returns the identity
/// the store holds afterwards (the caller compares it with `identity`).
pub async fn create(
    transaction: &Transaction,
    identity: &StoreIdentity,
) -> Result<StoreIdentity, StoreError> {
    let layer = Layer::new();
    if let Some(bytes) = transaction.get(&layer.self_key()).await? {
        return decode_identity(&bytes);
    }
    let stored = StoredIdentity {
        region: identity.region.0,
        deployment: identity.deployment.0.to_vec(),
        store_id: identity.store_id.0.to_vec(),
        created_at_ms: identity.created_at_ms,
        layout_version: identity.layout_version,
    };
    transaction.set(&layer.self_key(), &stored.encode_to_vec())?;
    Ok(*identity)
}

/// Whether the store holds no key at all (a new store, or an emptied file).
pub async fn store_is_empty(transaction: &Transaction) -> Result<bool, StoreError> {
    // Layer keys are tuples, whose first byte is a type code below 0xff; keys from 0xff are
    // the engine's own.
    let rows = transaction
        .get_range(&[0x00], &[0xff], RangeOptions::limit(1))
        .await?;
    Ok(rows.is_empty())
}

/// The store id the directory writer confirmed for this store, if it did.
pub async fn writer_confirmed(transaction: &Transaction) -> Result<Option<StoreId>, StoreError> {
    let layer = Layer::new();
    match transaction.get(&layer.confirmed_key()).await? {
        Some(bytes) => StoreId::from_bytes(&bytes)
            .map(Some)
            .ok_or_else(|| StoreError::corrupt("store writer confirmation", "not a store id")),
        None => Ok(None),
    }
}

/// Records that the directory writer registered `store_id` for this store's region.
pub fn confirm(transaction: &Transaction, store_id: StoreId) -> Result<(), StoreError> {
    transaction.set(&Layer::new().confirmed_key(), &store_id.0)
}

/// (At the directory writer) the store `region` registered last.
pub async fn registration(
    transaction: &Transaction,
    region: RegionId,
) -> Result<Option<Registration>, StoreError> {
    let layer = Layer::new();
    match transaction.get(&layer.region_key(region)).await? {
        Some(bytes) => decode_registration(&bytes).map(Some),
        None => Ok(None),
    }
}

/// (At the directory writer) registers `store_id` as the store of `region` if the region's
/// registered store is `previous` (`None`: no store registered yet), at `now_ms`. A claim of the
/// store already registered answers its registration again.
pub async fn register(
    transaction: &Transaction,
    region: RegionId,
    store_id: StoreId,
    previous: Option<StoreId>,
    now_ms: u64,
) -> Result<RegisterOutcome, StoreError> {
    let current = registration(transaction, region).await?;
    match current {
        Some(held) if held.store_id == store_id => return Ok(RegisterOutcome::Registered(held)),
        _ if current.map(|held| held.store_id) != previous => {
            return Ok(RegisterOutcome::Held { current });
        }
        _ => {}
    }
    let registration = Registration {
        store_id,
        registered_at_ms: now_ms,
    };
    let stored = StoredRegistration {
        store_id: store_id.0.to_vec(),
        registered_at_ms: now_ms,
    };
    transaction.set(&Layer::new().region_key(region), &stored.encode_to_vec())?;
    Ok(RegisterOutcome::Registered(registration))
}

/// The store's failover epoch: 0 for a store that never took over from another, raised by
/// one each time a standby's copy of it is promoted to be the region's store.
pub async fn failover_epoch(transaction: &Transaction) -> Result<u64, StoreError> {
    match transaction.get(&Layer::new().epoch_key()).await? {
        Some(bytes) => bytes
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::corrupt("failover epoch", "not 8 bytes")),
        None => Ok(0),
    }
}

/// Raises the failover epoch by one (a standby's copy becomes the region's store); returns the
/// new epoch.
pub async fn raise_failover_epoch(transaction: &Transaction) -> Result<u64, StoreError> {
    let epoch = failover_epoch(transaction).await? + 1;
    transaction.set(&Layer::new().epoch_key(), &epoch.to_be_bytes())?;
    Ok(epoch)
}

/// The stored form of an identity.
#[derive(Clone, PartialEq, Message)]
struct StoredIdentity {
    #[prost(uint32, tag = "1")]
    region: u32,
    #[prost(bytes = "vec", tag = "2")]
    deployment: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    store_id: Vec<u8>,
    #[prost(uint64, tag = "4")]
    created_at_ms: u64,
    /// Absent (0) in stores created before the version was recorded: version 1.
    #[prost(uint32, tag = "5")]
    layout_version: u32,
}

/// The stored form of a registration (its region is in the key).
#[derive(Clone, PartialEq, Message)]
struct StoredRegistration {
    #[prost(bytes = "vec", tag = "1")]
    store_id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    registered_at_ms: u64,
}

struct Layer {
    root: Subspace,
}

impl Layer {
    fn new() -> Self {
        Layer {
            root: Subspace::new(&("store_identity",)),
        }
    }

    fn self_key(&self) -> Vec<u8> {
        self.root.pack(&("self",))
    }

    fn epoch_key(&self) -> Vec<u8> {
        self.root.pack(&("failover_epoch",))
    }

    fn confirmed_key(&self) -> Vec<u8> {
        self.root.pack(&("writer_confirmed",))
    }

    fn region_key(&self, region: RegionId) -> Vec<u8> {
        self.root.pack(&("region", region))
    }
}

fn decode_identity(bytes: &[u8]) -> Result<StoreIdentity, StoreError> {
    let stored: StoredIdentity = decode_record(bytes, "store identity")?;
    let deployment = DeploymentId::from_bytes(&stored.deployment)
        .ok_or_else(|| StoreError::corrupt("store identity", "deployment id of a wrong length"))?;
    let store_id = StoreId::from_bytes(&stored.store_id)
        .ok_or_else(|| StoreError::corrupt("store identity", "store id of a wrong length"))?;
    Ok(StoreIdentity {
        region: RegionId(stored.region),
        deployment,
        store_id,
        created_at_ms: stored.created_at_ms,
        layout_version: stored.layout_version.max(1),
    })
}

fn decode_registration(bytes: &[u8]) -> Result<Registration, StoreError> {
    let stored: StoredRegistration = decode_record(bytes, "store registration")?;
    let store_id = StoreId::from_bytes(&stored.store_id)
        .ok_or_else(|| StoreError::corrupt("store registration", "store id of a wrong length"))?;
    Ok(Registration {
        store_id,
        registered_at_ms: stored.registered_at_ms,
    })
}

fn write_hex(f: &mut std::fmt::Formatter<'_>, bytes: &[u8]) -> std::fmt::Result {
    for byte in bytes {
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temporary_database;

    fn identity_of(region: u32, id: u8) -> StoreIdentity {
        StoreIdentity {
            region: RegionId(region),
            deployment: DeploymentId([7; DEPLOYMENT_ID_BYTES]),
            store_id: StoreId([id; STORE_ID_BYTES]),
            created_at_ms: 1_000,
            layout_version: LAYOUT_VERSION,
        }
    }

    /// A store created before the layout version was recorded holds version 1.
    #[test]
    fn an_identity_without_a_layout_version_is_version_1() {
        let old = StoredIdentity {
            region: 2,
            deployment: vec![7; DEPLOYMENT_ID_BYTES],
            store_id: vec![1; STORE_ID_BYTES],
            created_at_ms: 1_000,
            layout_version: 0,
        };
        let decoded = decode_identity(&old.encode_to_vec()).expect("decodes");
        assert_eq!(decoded.layout_version, 1);
        let current = StoredIdentity {
            layout_version: 9,
            ..old
        };
        let decoded = decode_identity(&current.encode_to_vec()).expect("decodes");
        assert_eq!(decoded.layout_version, 9);
    }

    #[tokio::test]
    async fn an_identity_is_written_once_and_read_back() {
        let (_folder, database) = temporary_database(None);
        let empty = database
            .transact(|tx| async move { Ok((identity(&tx).await?, store_is_empty(&tx).await?)) })
            .await
            .expect("read");
        assert_eq!(empty, (None, true));
        let first = identity_of(2, 1);
        let kept = database
            .transact(|tx| async move { create(&tx, &first).await })
            .await
            .expect("created");
        assert_eq!(kept, first);
        // A second creation keeps the first identity.
        let second = identity_of(2, 9);
        let kept = database
            .transact(|tx| async move { create(&tx, &second).await })
            .await
            .expect("kept");
        assert_eq!(kept, first);
        let read = database
            .transact(|tx| async move { Ok((identity(&tx).await?, store_is_empty(&tx).await?)) })
            .await
            .expect("read");
        assert_eq!(read, (Some(first), false));
    }

    #[tokio::test]
    async fn registrations_are_compare_and_set() {
        let (_folder, database) = temporary_database(None);
        let register_as = async |store: u8, previous: Option<u8>, now_ms: u64| {
            database
                .transact(|tx| async move {
                    register(
                        &tx,
                        RegionId(2),
                        StoreId([store; STORE_ID_BYTES]),
                        previous.map(|id| StoreId([id; STORE_ID_BYTES])),
                        now_ms,
                    )
                    .await
                })
                .await
                .expect("register")
        };
        let first = Registration {
            store_id: StoreId([1; STORE_ID_BYTES]),
            registered_at_ms: 10,
        };
        assert_eq!(
            register_as(1, None, 10).await,
            RegisterOutcome::Registered(first)
        );
        // Claimed again (a retry): the first registration, unchanged.
        assert_eq!(
            register_as(1, None, 20).await,
            RegisterOutcome::Registered(first)
        );
        // Another store expecting nothing there is refused.
        assert_eq!(
            register_as(2, None, 30).await,
            RegisterOutcome::Held {
                current: Some(first)
            }
        );
        // Replacing the registered store, named, is accepted.
        assert_eq!(
            register_as(2, Some(1), 40).await,
            RegisterOutcome::Registered(Registration {
                store_id: StoreId([2; STORE_ID_BYTES]),
                registered_at_ms: 40
            })
        );
        let other_region = database
            .transact(|tx| async move { registration(&tx, RegionId(3)).await })
            .await
            .expect("read");
        assert_eq!(other_region, None);
    }

    #[tokio::test]
    async fn the_writer_confirmation_is_remembered() {
        let (_folder, database) = temporary_database(None);
        let store = StoreId([4; STORE_ID_BYTES]);
        database
            .transact(|tx| async move { confirm(&tx, store) })
            .await
            .expect("confirm");
        let confirmed = database
            .transact(|tx| async move { writer_confirmed(&tx).await })
            .await
            .expect("read");
        assert_eq!(confirmed, Some(store));
    }

    #[test]
    fn store_ids_print_and_parse_as_hex() {
        let id = StoreId([0xab; STORE_ID_BYTES]);
        let text = id.to_string();
        assert_eq!(text.len(), 2 * STORE_ID_BYTES);
        assert_eq!(StoreId::from_hex(&format!("{text}\n")), Some(id));
        assert_eq!(StoreId::from_hex("zz"), None);
        assert_eq!(StoreId::from_hex("abcd"), None, "too short");
        assert_eq!(StoreId::from_hex("é"), None);
    }
}
