//! Fuzz entry points: one function per decoder of peer or file input. Each takes arbitrary
//! bytes and must never panic; where a decode succeeds, cheap properties are checked too
//! (re-encoding round-trips, a parsed envelope keeps its bounds).
//!
//! The `cargo fuzz` targets in `chaos/fuzz/` call these functions, and `cargo test` replays
//! every committed corpus file through them (`tests/fuzz_corpus.rs`), so a crash found once
//! stays fixed.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use fdb_layers::{Database, EmbeddedOptions, RangeOptions, StoreError};
use prost::Message as _;
use relay_proto::decode_frame;
use relay_proto::frame::FrameDecoder;
use relay_proto::limits::{ENVELOPE_BYTES_MAX, ENVELOPE_RECIPIENT_DEVICES_MAX};
use relay_proto::wire::{
    ClientRequest, ClientResponse, Envelope, RegionRequest, RegionResponse, ServerPush,
    client_request, region_request,
};

/// A named fuzz target.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by the name of its `cargo fuzz` binary and corpus folder.
pub const TARGETS: &[Target] = &[
    ("client_frames", client_frames),
    ("region_frames", region_frames),
    ("envelope", envelope),
    ("content", content),
    ("dns_answer", dns_answer),
    ("locator_query", locator_query),
    ("region_config", region_config),
    ("edge_config", edge_config),
    ("locator_config", locator_config),
    ("store_file", store_file),
];

/// Checks the bounds a successfully parsed envelope promises.
fn check_envelope(envelope: &Envelope) {
    if let Ok(parsed) = envelope.parse() {
        assert!(envelope.encoded_len() <= ENVELOPE_BYTES_MAX);
        assert!(!parsed.recipient_devices.is_empty());
        assert!(parsed.recipient_devices.len() <= ENVELOPE_RECIPIENT_DEVICES_MAX);
        assert!(!parsed.recipient_devices.contains(&parsed.sender));
        assert!(parsed.sender_seq >= 1);
    }
}

/// Feeds `data` to a streaming decoder in chunks whose sizes come from the data itself.
fn stream<M: prost::Message + Default>(data: &[u8]) {
    let mut decoder = FrameDecoder::default();
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for chunk in data.chunks(step) {
        decoder.push(chunk);
        while let Ok(Some(_)) = decoder.next_frame::<M>() {}
    }
}

/// Frames a device sends to an edge and an edge sends back.
pub fn client_frames(data: &[u8]) {
    if let Ok(request) = decode_frame::<ClientRequest>(data) {
        if let Some(client_request::Body::Send(envelope)) = &request.body {
            check_envelope(envelope);
        }
        let again = relay_proto::encode_frame(&request);
        assert_eq!(decode_frame::<ClientRequest>(&again).ok(), Some(request));
    }
    let _ = decode_frame::<ClientResponse>(data);
    let _ = decode_frame::<ServerPush>(data);
    stream::<ClientRequest>(data);
}

/// Frames between edges and regions, and between regions.
pub fn region_frames(data: &[u8]) {
    if let Ok(request) = decode_frame::<RegionRequest>(data) {
        if let Some(region_request::Body::Commit(commit)) = &request.body {
            check_envelope(&commit.envelope);
        }
        let again = relay_proto::encode_frame(&request);
        assert_eq!(decode_frame::<RegionRequest>(&again).ok(), Some(request));
    }
    let _ = decode_frame::<RegionResponse>(data);
    stream::<RegionRequest>(data);
}

/// An envelope body, as the edge and the regions parse it.
pub fn envelope(data: &[u8]) {
    if let Ok(envelope) = Envelope::decode(data) {
        check_envelope(&envelope);
    }
}

/// The decrypted plaintext another device sent (peer input once decrypted).
pub fn content(data: &[u8]) {
    if let Ok(content) = relay_client::content::Content::from_bytes(data) {
        let again = content.to_bytes();
        assert!(relay_client::content::Content::from_bytes(&again).is_ok());
    }
}

/// The locator's answer, as the client parses it (the first two bytes pick the query id).
pub fn dns_answer(data: &[u8]) {
    let id = match data {
        [high, low, ..] => u16::from_be_bytes([*high, *low]),
        _ => 0,
    };
    let _ = relay_client::discovery::parse_answer(data, id);
}

/// A DNS query, as the locator's core answers it.
pub fn locator_query(data: &[u8]) {
    use hickory_proto::op::Message;
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    use relay_edge::locator::{Locator, LocatorConfig, QueryOrigin};

    let Ok(message) = Message::from_vec(data) else {
        return;
    };
    let Ok(config) = LocatorConfig::from_toml_str(LocatorConfig::EXAMPLE_TOML) else {
        return;
    };
    let Ok(valid) = config.validate() else { return };
    let locator = Locator::new(valid);
    let subnet =
        message
            .edns
            .as_ref()
            .and_then(|edns| match edns.options().get(EdnsCode::Subnet) {
                Some(EdnsOption::Subnet(subnet)) => Some(*subnet),
                _ => None,
            });
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 10));
    for query in &message.queries {
        let _ = locator.answer(query, QueryOrigin { source, subnet });
    }
}

/// A region's configuration file.
pub fn region_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<home_region::RegionConfig>(text) {
        let _ = config.validate();
    }
}

/// An edge's configuration file.
pub fn edge_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<relay_edge::EdgeConfig>(text) {
        let _ = config.validate();
    }
}

/// The locator's configuration file.
pub fn locator_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = relay_edge::locator::LocatorConfig::from_toml_str(text) {
        let _ = config.validate();
    }
}

/// A region's store file, damaged: a valid small store (built once, [`seed_store`]) with the
/// mutations `data` describes ([`mutate_store`]) is written as a file, opened as a region opens
/// it (integrity check first), read through, and written to. A damaged file must be refused or
/// met as a typed error, never a panic; a file that opens reads back exactly what the seed
/// store holds, never fewer pairs or silently changed bytes. (The fuzzer found that an empty
/// file opened as an empty store: the engine now refuses it.)
pub fn store_file(data: &[u8]) {
    let bytes = mutate_store(seed_store(), data);
    let Ok(folder) = tempfile::tempdir() else {
        return;
    };
    let path = folder.path().join("store.redb");
    if std::fs::write(&path, &bytes).is_err() {
        return;
    }
    store_runtime().block_on(async {
        let Ok(database) = Database::open(&path, EmbeddedOptions::default()) else {
            return;
        };
        if let Ok(pairs) = read_store(&database).await {
            assert!(
                pairs == seed_pairs(),
                "a damaged store that opened read back {} pairs, not the seed store's",
                pairs.len()
            );
        }
        let _ = database
            .transact(|tx| async move { tx.set(b"fuzz/written", b"after the damage") })
            .await;
    });
}

/// Bytes of one mutation of the seed store: an operation, a little-endian offset (taken modulo
/// the file's length) and a byte.
pub const STORE_MUTATION_BYTES: usize = 6;

/// The seed store with `data`'s mutations applied, [`STORE_MUTATION_BYTES`] each (a shorter
/// rest is ignored): operation % 4 is 0 to set the byte at the offset, 1 to flip its bits with
/// the byte, 2 to cut the file there, 3 to set 8 bytes from there.
pub fn mutate_store(seed: &[u8], data: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for mutation in data.chunks_exact(STORE_MUTATION_BYTES) {
        if bytes.is_empty() {
            break;
        }
        let offset_bytes = [mutation[1], mutation[2], mutation[3], mutation[4]];
        let offset = u32::from_le_bytes(offset_bytes) as usize % bytes.len();
        let byte = mutation[5];
        match mutation[0] % 4 {
            0 => bytes[offset] = byte,
            1 => bytes[offset] ^= byte,
            2 => bytes.truncate(offset),
            _ => {
                let end = (offset + 8).min(bytes.len());
                bytes[offset..end].fill(byte);
            }
        }
    }
    bytes
}

/// The value the seed store holds under `key`, if it holds the key: keys name their value's
/// length, and a value repeats its key.
pub fn store_value(key: &[u8]) -> Option<Vec<u8>> {
    let length = match key.first()? {
        b's' => 24,
        b'm' => 5_000,
        b'l' => 90_000,
        _ => return None,
    };
    Some(key.iter().copied().cycle().take(length).collect())
}

/// The keys of the seed store's three commits: small values, values over a page, one near the
/// value limit.
fn seed_commits() -> [Vec<String>; 3] {
    [
        (0..40).map(|index| format!("s/{index:03}")).collect(),
        ["m/0", "m/1", "m/2", "l/0"].map(str::to_owned).to_vec(),
        (40..60).map(|index| format!("s/{index:03}")).collect(),
    ]
}

/// Every pair of the seed store, in key order.
fn seed_pairs() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = seed_commits()
        .into_iter()
        .flatten()
        .map(|key| {
            let value = store_value(key.as_bytes()).unwrap_or_default();
            (key.into_bytes(), value)
        })
        .collect();
    pairs.sort();
    pairs
}

/// The seed store's file ([`seed_commits`]), built once per process with the embedded engine
/// and closed cleanly.
pub fn seed_store() -> &'static [u8] {
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    SEED.get_or_init(|| {
        // The harness's own folder and engine: failing here is not about the input.
        let folder = tempfile::tempdir().expect("a folder for the seed store");
        let path = folder.path().join("seed.redb");
        store_runtime().block_on(async {
            let database =
                Database::open(&path, EmbeddedOptions::default()).expect("the seed store opens");
            for keys in seed_commits() {
                database
                    .transact(|tx| {
                        let keys = keys.clone();
                        async move {
                            for key in &keys {
                                let value = store_value(key.as_bytes()).unwrap_or_default();
                                tx.set(key.as_bytes(), &value)?;
                            }
                            Ok(())
                        }
                    })
                    .await
                    .expect("the seed store commits");
            }
        });
        std::fs::read(&path).expect("the seed store is readable")
    })
}

/// Every pair of `database`, read in pages; the first error ends it.
async fn read_store(database: &Database) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
    /// Pairs read per transaction.
    const PAGE_PAIRS: usize = 16;
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    loop {
        let begin = pairs
            .last()
            .map(|(key, _)| [key.as_slice(), &[0]].concat())
            .unwrap_or_default();
        let page = database
            .transact(|tx| {
                let begin = begin.clone();
                async move {
                    tx.get_range(&begin, b"\xff", RangeOptions::limit(PAGE_PAIRS))
                        .await
                }
            })
            .await?;
        if page.is_empty() {
            return Ok(pairs);
        }
        pairs.extend(page);
    }
}

/// The runtime the store target runs the engine's futures on.
fn store_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime for the store target")
    })
}
