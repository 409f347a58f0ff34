//! Fuzz entry points: one function per decoder of peer or file input. Each takes arbitrary
//! bytes and must never panic; where a decode succeeds, cheap properties are checked too
//! (re-encoding round-trips, a parsed envelope keeps its bounds).
//!
//! The `cargo fuzz` targets in `chaos/fuzz/` call these functions, and `cargo test` replays
//! every committed corpus file through them (`tests/fuzz_corpus.rs`), so a crash found once
//! stays fixed.

use std::net::{IpAddr, Ipv4Addr};

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
