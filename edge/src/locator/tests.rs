//! The locator's tests: configuration checks, answers of the core, and the server over real
//! sockets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_server::proto::op::{Edns, Message, Query, ResponseCode};
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::oneshot;

use super::prefix::{AddressBits, IpNetwork};
use super::*;

const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

fn socket(text: &str) -> SocketAddr {
    SocketAddr::from_str(text).expect("test socket address")
}

fn ip(text: &str) -> IpAddr {
    IpAddr::from_str(text).expect("test IP address")
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("test name")
}

/// Region 1 (the default) on 127.0.1.0/24; region 2 on 127.0.2.0/24 and fd00:2::/48 with two
/// IPv4 edges and one IPv6 edge; region 3 on 127.0.2.128/25, nested in region 2's network.
fn config() -> LocatorConfig {
    LocatorConfig {
        listen: socket("127.0.0.1:0"),
        zone: "relay.test.".to_owned(),
        ttl_seconds: 5,
        regions: vec![
            RegionEntry {
                region: 1,
                networks: vec!["127.0.1.0/24".to_owned()],
                edges: vec![socket("127.0.1.1:4433")],
            },
            RegionEntry {
                region: 2,
                networks: vec!["127.0.2.0/24".to_owned(), "fd00:2::/48".to_owned()],
                edges: vec![
                    socket("127.0.2.1:4433"),
                    socket("127.0.2.2:4434"),
                    socket("[fd00:2::1]:4435"),
                ],
            },
            RegionEntry {
                region: 3,
                networks: vec!["127.0.2.128/25".to_owned()],
                edges: vec![socket("127.0.3.1:4433")],
            },
        ],
    }
}

fn locator() -> Locator {
    Locator::new(config().validate().expect("test config is valid"))
}

fn ask(locator: &Locator, query_name: &str, query_type: RecordType, source: &str) -> Answer {
    ask_with_subnet(locator, query_name, query_type, source, None)
}

fn ask_with_subnet(
    locator: &Locator,
    query_name: &str,
    query_type: RecordType,
    source: &str,
    subnet: Option<ClientSubnet>,
) -> Answer {
    let client = QueryOrigin {
        source: ip(source),
        subnet,
    };
    locator.answer(&Query::query(name(query_name), query_type), client)
}

fn addresses(records: &[Record]) -> Vec<IpAddr> {
    records
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

fn assert_soa_only_authority(answer: &Answer) {
    assert_eq!(answer.authorities.len(), 1, "{answer:?}");
    assert_eq!(answer.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(answer.authorities[0].name, name("relay.test."));
}

#[test]
fn source_address_picks_the_region_of_its_network() {
    let locator = locator();

    let answer = ask(&locator, "edge.relay.test.", RecordType::A, "127.0.1.10");
    assert_eq!(answer.response_code, ResponseCode::NoError);
    assert!(answer.authoritative);
    assert_eq!(answer.region, Some(1));
    assert_eq!(addresses(&answer.answers), [ip("127.0.1.1")]);
    assert!(answer.answers.iter().all(|record| record.ttl == 5));
    assert!(answer.authorities.is_empty());
    assert_eq!(answer.client_subnet, None);

    let answer = ask(&locator, "edge.relay.test.", RecordType::A, "127.0.2.10");
    assert_eq!(answer.region, Some(2));
    assert_eq!(
        addresses(&answer.answers),
        [ip("127.0.2.1"), ip("127.0.2.2")]
    );

    let answer = ask(&locator, "edge.relay.test.", RecordType::AAAA, "127.0.2.10");
    assert_eq!(addresses(&answer.answers), [ip("fd00:2::1")]);

    let answer = ask(&locator, "edge.relay.test.", RecordType::A, "fd00:2::99");
    assert_eq!(answer.region, Some(2));

    // An IPv4-mapped source (dual-stack socket) routes as its IPv4 address.
    let answer = ask(
        &locator,
        "edge.relay.test.",
        RecordType::A,
        "::ffff:127.0.2.10",
    );
    assert_eq!(answer.region, Some(2));
}

#[test]
fn longest_prefix_wins() {
    let locator = locator();
    let answer = ask(&locator, "edge.relay.test.", RecordType::A, "127.0.2.200");
    assert_eq!(answer.region, Some(3));
    assert_eq!(addresses(&answer.answers), [ip("127.0.3.1")]);
    let answer = ask(&locator, "edge.relay.test.", RecordType::A, "127.0.2.127");
    assert_eq!(answer.region, Some(2));
}

#[test]
fn unmatched_clients_get_the_first_region() {
    let locator = locator();
    for source in ["10.1.2.3", "127.0.9.1", "::1", "2001:db8::1"] {
        let answer = ask(&locator, "edge.relay.test.", RecordType::A, source);
        assert_eq!(answer.response_code, ResponseCode::NoError, "{source}");
        assert_eq!(answer.region, Some(1), "{source}");
        assert_eq!(addresses(&answer.answers), [ip("127.0.1.1")], "{source}");
    }
    // Region 1 has no IPv6 edge: NODATA, still region 1's answer.
    let answer = ask(&locator, "edge.relay.test.", RecordType::AAAA, "10.1.2.3");
    assert_eq!(answer.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
    assert_soa_only_authority(&answer);
    assert_eq!(answer.region, Some(1));
}

#[test]
fn client_subnet_overrides_the_source_and_is_echoed_with_its_scope() {
    let locator = locator();
    let subnet = ClientSubnet::new(ip("127.0.2.0"), 24, 0);
    let answer = ask_with_subnet(
        &locator,
        "edge.relay.test.",
        RecordType::A,
        "127.0.1.10",
        Some(subnet),
    );
    assert_eq!(answer.region, Some(2));
    assert_eq!(
        addresses(&answer.answers),
        [ip("127.0.2.1"), ip("127.0.2.2")]
    );
    // 127.0.2.128/25 belongs to region 3, so region 2's answer covers only 127.0.2.0/25.
    assert_eq!(
        answer.client_subnet,
        Some(ClientSubnet::new(ip("127.0.2.0"), 24, 25))
    );

    let subnet = ClientSubnet::new(ip("127.0.1.0"), 24, 0);
    let answer = ask_with_subnet(
        &locator,
        "edge.relay.test.",
        RecordType::A,
        "127.0.2.10",
        Some(subnet),
    );
    assert_eq!(answer.region, Some(1));
    assert_eq!(
        answer.client_subnet,
        Some(ClientSubnet::new(ip("127.0.1.0"), 24, 24))
    );

    let subnet = ClientSubnet::new(ip("127.0.2.128"), 25, 0);
    let answer = ask_with_subnet(
        &locator,
        "edge.relay.test.",
        RecordType::A,
        "127.0.1.10",
        Some(subnet),
    );
    assert_eq!(answer.region, Some(3));
    assert_eq!(answer.client_subnet.map(|s| s.scope_prefix()), Some(25));

    // The default region's answer holds for 0.0.0.0/2: no configured network is in there.
    let subnet = ClientSubnet::new(ip("10.0.0.0"), 8, 0);
    let answer = ask_with_subnet(
        &locator,
        "edge.relay.test.",
        RecordType::A,
        "127.0.2.10",
        Some(subnet),
    );
    assert_eq!(answer.region, Some(1));
    assert_eq!(answer.client_subnet.map(|s| s.scope_prefix()), Some(2));
}

#[test]
fn client_subnet_with_source_prefix_zero_routes_by_source_with_scope_zero() {
    let locator = locator();
    let subnet = ClientSubnet::new(ip("0.0.0.0"), 0, 0);
    let answer = ask_with_subnet(
        &locator,
        "edge.relay.test.",
        RecordType::A,
        "127.0.2.10",
        Some(subnet),
    );
    assert_eq!(answer.region, Some(2));
    assert_eq!(
        answer.client_subnet,
        Some(ClientSubnet::new(ip("0.0.0.0"), 0, 0))
    );
}

#[test]
fn client_subnet_is_echoed_with_scope_zero_when_the_answer_does_not_depend_on_it() {
    let locator = locator();
    let subnet = ClientSubnet::new(ip("127.0.2.0"), 24, 0);
    let answer = ask_with_subnet(
        &locator,
        "edge-r1-1.relay.test.",
        RecordType::A,
        "127.0.2.10",
        Some(subnet),
    );
    assert_eq!(answer.region, None);
    assert_eq!(answer.client_subnet.map(|s| s.scope_prefix()), Some(0));
}

#[test]
fn malformed_client_subnet_is_a_format_error() {
    let locator = locator();
    let host_bits_set = ClientSubnet::new(ip("127.0.2.1"), 24, 0);
    let too_long = ClientSubnet::new(ip("127.0.2.1"), 33, 0);
    for subnet in [host_bits_set, too_long] {
        let answer = ask_with_subnet(
            &locator,
            "edge.relay.test.",
            RecordType::A,
            "127.0.1.10",
            Some(subnet),
        );
        assert_eq!(answer.response_code, ResponseCode::FormErr, "{subnet:?}");
        assert!(answer.answers.is_empty());
    }
}

#[test]
fn srv_lists_the_region_edges_with_ports_and_addresses() {
    let locator = locator();
    let answer = ask(
        &locator,
        "_relay._udp.edge.relay.test.",
        RecordType::SRV,
        "127.0.2.10",
    );
    assert_eq!(answer.response_code, ResponseCode::NoError);
    assert!(answer.authoritative);
    assert_eq!(answer.region, Some(2));
    let services: Vec<(u16, u16, u16, Name)> = answer
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some((srv.priority, srv.weight, srv.port, srv.target.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        services,
        [
            (0, 0, 4433, name("edge-r2-1.relay.test.")),
            (0, 0, 4434, name("edge-r2-2.relay.test.")),
            (0, 0, 4435, name("edge-r2-3.relay.test.")),
        ]
    );
    let additional: Vec<(Name, IpAddr)> = answer
        .additionals
        .iter()
        .map(|record| record.name.clone())
        .zip(addresses(&answer.additionals))
        .collect();
    assert_eq!(
        additional,
        [
            (name("edge-r2-1.relay.test."), ip("127.0.2.1")),
            (name("edge-r2-2.relay.test."), ip("127.0.2.2")),
            (name("edge-r2-3.relay.test."), ip("fd00:2::1")),
        ]
    );
}

#[test]
fn srv_targets_resolve_from_anywhere() {
    let locator = locator();
    let answer = ask(
        &locator,
        "edge-r2-1.relay.test.",
        RecordType::A,
        "127.0.1.10",
    );
    assert_eq!(addresses(&answer.answers), [ip("127.0.2.1")]);
    assert!(answer.authoritative);
    let answer = ask(
        &locator,
        "EDGE-R2-3.Relay.Test.",
        RecordType::AAAA,
        "10.0.0.1",
    );
    assert_eq!(addresses(&answer.answers), [ip("fd00:2::1")]);
    // The owner name echoes the question's spelling.
    assert_eq!(answer.answers[0].name, name("EDGE-R2-3.Relay.Test."));

    let answer = ask(&locator, "edge-r2-3.relay.test.", RecordType::A, "10.0.0.1");
    assert_eq!(answer.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
    assert_soa_only_authority(&answer);
}

#[test]
fn unknown_names_in_the_zone_are_nxdomain_with_the_soa() {
    let locator = locator();
    for query_name in [
        "nope.relay.test.",
        "edge-r9-1.relay.test.",
        "edge-r1-2.relay.test.",
        "x.edge.relay.test.",
        "_tcp.edge.relay.test.",
    ] {
        let answer = ask(&locator, query_name, RecordType::A, "127.0.1.10");
        assert_eq!(answer.response_code, ResponseCode::NXDomain, "{query_name}");
        assert!(answer.authoritative, "{query_name}");
        assert!(answer.answers.is_empty(), "{query_name}");
        assert_soa_only_authority(&answer);
    }
}

#[test]
fn other_types_on_existing_names_are_nodata_with_the_soa() {
    let locator = locator();
    for (query_name, query_type) in [
        ("edge.relay.test.", RecordType::TXT),
        ("edge.relay.test.", RecordType::SRV),
        ("_relay._udp.edge.relay.test.", RecordType::A),
        ("relay.test.", RecordType::A),
        // An empty non-terminal exists (RFC 8020).
        ("_udp.edge.relay.test.", RecordType::SRV),
    ] {
        let answer = ask(&locator, query_name, query_type, "127.0.1.10");
        assert_eq!(answer.response_code, ResponseCode::NoError, "{query_name}");
        assert!(answer.authoritative, "{query_name}");
        assert!(answer.answers.is_empty(), "{query_name}");
        assert_eq!(answer.region, None, "{query_name}");
        assert_soa_only_authority(&answer);
    }
}

#[test]
fn apex_answers_its_soa() {
    let locator = locator();
    let answer = ask(&locator, "relay.test.", RecordType::SOA, "127.0.1.10");
    assert_eq!(answer.answers.len(), 1);
    let RData::SOA(soa) = &answer.answers[0].data else {
        panic!("expected an SOA, got {answer:?}");
    };
    assert_eq!(soa.minimum, 5);
    assert!(answer.authorities.is_empty());
}

#[test]
fn names_outside_the_zone_and_other_classes_are_refused() {
    let locator = locator();
    for query_name in ["example.com.", "relay.test.example.", "test.", "."] {
        let answer = ask(&locator, query_name, RecordType::A, "127.0.1.10");
        assert_eq!(answer.response_code, ResponseCode::Refused, "{query_name}");
        assert!(!answer.authoritative, "{query_name}");
        assert!(answer.answers.is_empty() && answer.authorities.is_empty());
    }
    let mut query = Query::query(name("edge.relay.test."), RecordType::A);
    query.set_query_class(DNSClass::CH);
    let client = QueryOrigin {
        source: ip("127.0.1.10"),
        subnet: None,
    };
    assert_eq!(
        locator.answer(&query, client).response_code,
        ResponseCode::Refused
    );
}

#[test]
fn example_toml_loads_and_validates() {
    let config = LocatorConfig::from_toml_str(LocatorConfig::EXAMPLE_TOML).expect("example parses");
    let valid = config.validate().expect("example is valid");
    assert_eq!(valid.listen(), socket("127.0.0.1:5300"));
    assert_eq!(valid.zone(), &name("relay.test."));
    assert_eq!(valid.edge_name(), &name("edge.relay.test."));
    assert_eq!(valid.srv_name(), &name("_relay._udp.edge.relay.test."));
    assert_eq!(valid.ttl_seconds(), 5);
}

#[test]
fn toml_defaults_and_unknown_fields() {
    let config =
        LocatorConfig::from_toml_str("[[regions]]\nregion = 7\nedges = [\"127.0.7.1:4433\"]\n")
            .expect("minimal config parses");
    assert_eq!(config.zone, "relay.test.");
    assert_eq!(config.ttl_seconds, 5);
    assert!(config.validate().is_ok());

    let error = LocatorConfig::from_toml_str("zone = \"relay.test.\"\nzoen = 1\n")
        .expect_err("unknown field is rejected");
    assert!(error.to_string().contains("zoen"), "{error}");
    let error = LocatorConfig::from_toml_str(
        "[[regions]]\nregion = 1\nedges = []\nedge = \"127.0.0.1:1\"\n",
    )
    .expect_err("unknown region field is rejected");
    assert!(error.to_string().contains("edge"), "{error}");
}

#[test]
fn bad_configs_are_rejected_with_clear_messages() {
    type Mutation = fn(&mut LocatorConfig);
    let cases: [(Mutation, &str); 17] = [
        (|c| c.zone = "relay.test".into(), "must be absolute"),
        (|c| c.zone = ".".into(), "root zone"),
        (|c| c.zone = "re lay.test.".into(), "label \"re lay\""),
        (|c| c.zone = "relay..test.".into(), "label \"\""),
        (|c| c.zone = format!("{}.", "a".repeat(64)), "1 to 63"),
        (|c| c.ttl_seconds = 86_400, "ttl_seconds = 86400"),
        (|c| c.regions.clear(), "no regions"),
        (
            |c| c.regions[2].region = 1,
            "region 1 is listed more than once",
        ),
        (
            |c| c.regions[0].networks = vec!["127.0.1.0".into()],
            "expected a CIDR",
        ),
        (
            |c| c.regions[0].networks = vec!["127.0.1.0/33".into()],
            "not a number from 0 to 32",
        ),
        (
            |c| c.regions[0].networks = vec!["fd00::/129".into()],
            "not a number from 0 to 128",
        ),
        (
            |c| c.regions[0].networks = vec!["127.0.1.5/24".into()],
            "did you mean 127.0.1.0/24",
        ),
        (
            |c| c.regions[0].networks = vec!["relay/8".into()],
            "not an IPv4 or IPv6 address",
        ),
        (
            |c| c.regions[2].networks = vec!["127.0.1.0/24".into()],
            "network 127.0.1.0/24 is listed by region 1 and by region 3",
        ),
        (|c| c.regions[1].edges.clear(), "region 2 has no edges"),
        (
            |c| c.regions[1].edges[0] = socket("0.0.0.0:4433"),
            "edge 0.0.0.0:4433 is invalid",
        ),
        (
            |c| c.regions[2].edges[0] = socket("127.0.1.1:4433"),
            "edge 127.0.1.1:4433 is listed more than once",
        ),
    ];
    for (mutate, expected) in cases {
        let mut broken = config();
        mutate(&mut broken);
        let error = broken.validate().expect_err(expected);
        let message = error.to_string();
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message:?}"
        );
    }

    let mut port_zero = config();
    port_zero.regions[0].edges[0] = socket("127.0.1.1:0");
    let message = port_zero.validate().expect_err("port 0").to_string();
    assert!(message.contains("port 0"), "{message}");

    let mut crowded = config();
    crowded.regions[0].edges = (1..=33)
        .map(|port| SocketAddr::from((Ipv4Addr::new(127, 0, 1, 1), port)))
        .collect();
    let message = crowded.validate().expect_err("too many edges").to_string();
    assert!(message.contains("33 edges"), "{message}");
}

#[test]
fn networks_parse_and_match_both_families() {
    let v4 = IpNetwork::parse("127.0.1.0/24").expect("IPv4 CIDR");
    assert!(v4.contains(AddressBits::of(ip("127.0.1.255"))));
    assert!(!v4.contains(AddressBits::of(ip("127.0.2.0"))));
    assert!(!v4.contains(AddressBits::of(ip("::7f00:10a"))));
    let v6 = IpNetwork::parse("fd00:2::/48").expect("IPv6 CIDR");
    assert!(v6.contains(AddressBits::of(ip("fd00:2:0:ffff::1"))));
    assert!(!v6.contains(AddressBits::of(ip("fd00:3::1"))));
    let everything = IpNetwork::parse("0.0.0.0/0").expect("IPv4 default route");
    assert!(everything.contains(AddressBits::of(ip("203.0.113.9"))));
    assert_eq!(v6.to_string(), "fd00:2::/48");
}

/// Sends `message` over UDP from a socket bound to `from` and decodes the reply.
async fn udp_exchange(server: SocketAddr, from: IpAddr, message: &Message) -> Message {
    let client = UdpSocket::bind((from, 0))
        .await
        .expect("bind client UDP socket");
    let bytes = message.to_vec().expect("encode query");
    client.send_to(&bytes, server).await.expect("send query");
    let mut buffer = vec![0; 4096];
    let (length, _) = tokio::time::timeout(EXCHANGE_TIMEOUT, client.recv_from(&mut buffer))
        .await
        .expect("reply within the timeout")
        .expect("receive reply");
    Message::from_vec(&buffer[..length]).expect("decode reply")
}

/// Sends `message` over TCP from `from` and decodes the reply.
async fn tcp_exchange(server: SocketAddr, from: IpAddr, message: &Message) -> Message {
    let exchange = async {
        let socket = TcpSocket::new_v4().expect("TCP socket");
        socket
            .bind((from, 0).into())
            .expect("bind client TCP socket");
        let mut stream = socket.connect(server).await.expect("connect");
        let bytes = message.to_vec().expect("encode query");
        let length = u16::try_from(bytes.len()).expect("small query");
        stream
            .write_all(&length.to_be_bytes())
            .await
            .expect("send length");
        stream.write_all(&bytes).await.expect("send query");
        let mut length = [0; 2];
        stream.read_exact(&mut length).await.expect("read length");
        let mut reply = vec![0; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut reply).await.expect("read reply");
        Message::from_vec(&reply).expect("decode reply")
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .expect("reply within the timeout")
}

fn query_message(query_name: &str, query_type: RecordType) -> Message {
    let mut message = Message::query();
    message.add_query(Query::query(name(query_name), query_type));
    message
}

#[tokio::test]
async fn serves_each_region_its_edges_over_real_sockets() {
    let mut config = config();
    config.regions.truncate(2);
    let server = LocatorServer::bind(config.validate().expect("valid config"))
        .await
        .expect("bind locator");
    let address = server.local_addr();
    assert_eq!(address.ip(), ip("127.0.0.1"));
    assert_ne!(address.port(), 0);
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    let query = query_message("edge.relay.test.", RecordType::A);
    let reply = udp_exchange(address, ip("127.0.1.10"), &query).await;
    assert_eq!(reply.metadata.id, query.metadata.id);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.authoritative);
    assert_eq!(addresses(&reply.answers), [ip("127.0.1.1")]);

    let reply = udp_exchange(address, ip("127.0.2.10"), &query).await;
    assert_eq!(
        addresses(&reply.answers),
        [ip("127.0.2.1"), ip("127.0.2.2")]
    );

    // Client Subnet beats the source address and comes back with its scope.
    let mut query = query_message("edge.relay.test.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(1_232);
    edns.options_mut()
        .insert(EdnsOption::Subnet(ClientSubnet::new(
            ip("127.0.2.0"),
            24,
            0,
        )));
    query.set_edns(edns);
    let reply = udp_exchange(address, ip("127.0.1.10"), &query).await;
    assert_eq!(
        addresses(&reply.answers),
        [ip("127.0.2.1"), ip("127.0.2.2")]
    );
    let echoed = reply
        .edns
        .as_ref()
        .and_then(|edns| edns.option(EdnsCode::Subnet));
    assert_eq!(
        echoed,
        Some(&EdnsOption::Subnet(ClientSubnet::new(
            ip("127.0.2.0"),
            24,
            24
        )))
    );

    // TCP on the same port; SRV with the addresses in the additional section.
    let query = query_message("_relay._udp.edge.relay.test.", RecordType::SRV);
    let reply = tcp_exchange(address, ip("127.0.1.10"), &query).await;
    assert_eq!(reply.answers.len(), 1);
    let RData::SRV(srv) = &reply.answers[0].data else {
        panic!("expected an SRV record, got {reply:?}");
    };
    assert_eq!(srv.port, 4433);
    assert_eq!(srv.target, name("edge-r1-1.relay.test."));
    assert_eq!(addresses(&reply.additionals), [ip("127.0.1.1")]);

    let query = query_message("nope.relay.test.", RecordType::A);
    let reply = udp_exchange(address, ip("127.0.2.10"), &query).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(reply.authorities.len(), 1);

    let query = query_message("example.com.", RecordType::A);
    let reply = udp_exchange(address, ip("127.0.2.10"), &query).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);

    stop.send(()).expect("server still running");
    tokio::time::timeout(EXCHANGE_TIMEOUT, serving)
        .await
        .expect("server stops within the timeout")
        .expect("server task did not panic")
        .expect("server stops cleanly");
}
