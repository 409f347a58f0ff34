//! The DNS edge locator: an authoritative DNS server for Relay's zone (`relay.test.` by default)
//! that tells a client which edges to connect to.
//!
//! This module owns the locator's configuration ([`LocatorConfig`], checked into a
//! [`ValidLocatorConfig`]), the decision logic ([`Locator`], sans-IO: a question and a client
//! address in, an [`Answer`] out) and the runtime shell ([`LocatorServer`]: hickory-server over
//! one UDP socket and one TCP listener on the same port).
//!
//! # Names in the zone
//! | name | types | answer |
//! |---|---|---|
//! | `<zone>` | SOA | the zone's SOA |
//! | `edge.<zone>` | A, AAAA | the addresses of the client's region's edges |
//! | `_relay._udp.edge.<zone>` | SRV | one record per edge of the client's region (port = the edge's QUIC port), target `edge-r<region>-<i>.<zone>`, addresses in the additional section |
//! | `edge-r<region>-<i>.<zone>` | A, AAAA | the address of the i-th edge (from 1, in config order) of that region |
//!
//! Other names in the zone get NXDOMAIN, other types on existing names get NODATA (NOERROR, no
//! answers); both carry the zone's SOA in the authority section. Names outside the zone, and
//! classes other than IN, get REFUSED. Answers inside the zone have the AA bit set and use the
//! configured TTL.
//!
//! # Choosing the client's region
//! The client address is the address of the EDNS Client Subnet option (RFC 7871) when the query
//! carries one with a non-zero source prefix length, otherwise the query's source address. The
//! region is the one owning the longest network prefix containing that address. **When no
//! network contains the address, the first region in config order (the default region)
//! answers.** A query's Client Subnet option is echoed back with a scope prefix length covering
//! exactly the addresses that would get the same answer, so resolvers cache it correctly.
//!
//! The locator serves the edges listed in its configuration; it does not probe their health.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, info, warn};

/// The most edges one region may list; bounds the size of an answer.
pub const EDGES_PER_REGION_MAX: usize = 32;

/// The largest TTL the locator hands out: answers must stay short-lived so failover is quick.
pub const TTL_SECONDS_MAX: u32 = 3_600;

/// The largest UDP response the locator sends to an EDNS client (the DNS flag day 2020 value).
pub const UDP_PAYLOAD_BYTES_MAX: u16 = 1_232;

/// How long a TCP connection may stay idle before the locator closes it.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`LocatorServer::serve`] waits for its tasks to stop after shutdown is requested.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How many responses may wait to be written on one TCP connection.
const TCP_RESPONSE_BUFFER_LEN: usize = 32;

/// How many random ports [`LocatorServer::bind`] tries when asked for port 0 and the port the
/// UDP socket got is already taken for TCP.
const BIND_ATTEMPTS_MAX: usize = 8;

/// The SOA timers (seconds). The zone is generated from config, never transferred, so only
/// `minimum` (the negative-caching TTL) matters; it is set to the configured TTL.
const SOA_SERIAL: u32 = 1;
const SOA_REFRESH_SECONDS: i32 = 3_600;
const SOA_RETRY_SECONDS: i32 = 600;
const SOA_EXPIRE_SECONDS: i32 = 86_400;

/// Everything that can go wrong configuring or running the locator.
#[derive(Debug, thiserror::Error)]
pub enum LocatorError {
    /// The configuration file is not valid TOML for a [`LocatorConfig`].
    #[error("locator config: {0}")]
    ParseConfig(#[from] toml::de::Error),
    /// The zone is not a valid absolute domain name.
    #[error("locator config: zone {zone:?} is invalid: {reason}")]
    InvalidZone {
        /// The zone as configured.
        zone: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The TTL is above [`TTL_SECONDS_MAX`].
    #[error("locator config: ttl_seconds = {ttl_seconds} is above the maximum {TTL_SECONDS_MAX}")]
    TtlTooLarge {
        /// The TTL as configured.
        ttl_seconds: u32,
    },
    /// No region is configured.
    #[error("locator config: no regions; at least one [[regions]] entry is needed")]
    NoRegions,
    /// Two region entries have the same region number.
    #[error("locator config: region {region} is listed more than once")]
    DuplicateRegion {
        /// The repeated region number.
        region: u32,
    },
    /// A network is not a CIDR like `127.0.1.0/24` or `fd00::/64`.
    #[error("locator config: region {region}: network {network:?} is invalid: {reason}")]
    InvalidNetwork {
        /// The region listing the network.
        region: u32,
        /// The network as configured.
        network: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The same network is listed twice, so the region it belongs to is ambiguous.
    #[error(
        "locator config: network {network} is listed by region {first_region} and by region {second_region}"
    )]
    DuplicateNetwork {
        /// The repeated network.
        network: String,
        /// The first region listing it.
        first_region: u32,
        /// The second region listing it.
        second_region: u32,
    },
    /// A region lists no edges.
    #[error("locator config: region {region} has no edges; list at least one edge address")]
    RegionWithoutEdges {
        /// The region without edges.
        region: u32,
    },
    /// A region lists more than [`EDGES_PER_REGION_MAX`] edges.
    #[error(
        "locator config: region {region} lists {count} edges, more than the maximum {EDGES_PER_REGION_MAX}"
    )]
    TooManyEdges {
        /// The region.
        region: u32,
        /// How many edges it lists.
        count: usize,
    },
    /// An edge address cannot be handed to clients.
    #[error("locator config: region {region}: edge {edge} is invalid: {reason}")]
    InvalidEdge {
        /// The region listing the edge.
        region: u32,
        /// The edge address.
        edge: SocketAddr,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The same edge address is listed twice.
    #[error("locator config: edge {edge} is listed more than once (last in region {region})")]
    DuplicateEdge {
        /// The repeated edge address.
        edge: SocketAddr,
        /// The region with the second listing.
        region: u32,
    },
    /// A socket could not be bound.
    #[error("locator: cannot bind {protocol} on {address}: {source}")]
    Bind {
        /// `UDP` or `TCP`.
        protocol: &'static str,
        /// The address asked for.
        address: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// The DNS server failed while serving.
    #[error("locator: server failed: {0}")]
    Server(#[from] NetError),
    /// The DNS server stopped although no shutdown was requested.
    #[error("locator: server stopped unexpectedly")]
    StoppedUnexpectedly,
    /// The DNS server did not stop within [`SHUTDOWN_TIMEOUT`].
    #[error("locator: server did not stop within {SHUTDOWN_TIMEOUT:?}")]
    ShutdownTimedOut,
}

/// The locator's configuration, as read from the `[locator]` part of `relayd`'s TOML file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocatorConfig {
    /// Address to serve DNS on, UDP and TCP on the same port; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The zone the locator is authoritative for, an absolute name such as `relay.test.`.
    pub zone: String,
    /// TTL of every answer, in seconds; short, so clients move quickly after a failover.
    pub ttl_seconds: u32,
    /// The region table; the first entry is the default region for clients no network matches.
    pub regions: Vec<RegionEntry>,
}

/// One region of the locator's table: which client networks it serves and with which edges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionEntry {
    /// The region number (region k serves 127.0.k.0/24 in the devnet).
    pub region: u32,
    /// Client networks of this region as CIDRs, IPv4 or IPv6, such as `127.0.1.0/24`.
    #[serde(default)]
    pub networks: Vec<String>,
    /// The QUIC addresses of the region's edges, in the order they are answered.
    pub edges: Vec<SocketAddr>,
}

impl Default for LocatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 5300)),
            zone: "relay.test.".to_owned(),
            ttl_seconds: 5,
            regions: Vec::new(),
        }
    }
}

impl LocatorConfig {
    /// A commented example configuration with the devnet's two regions.
    pub const EXAMPLE_TOML: &'static str = include_str!("../locator.example.toml");

    /// Parses a configuration from TOML text (not yet validated: see [`Self::validate`]).
    pub fn from_toml_str(text: &str) -> Result<Self, LocatorError> {
        Ok(toml::from_str(text)?)
    }

    /// Checks the configuration and turns it into the form the locator serves.
    pub fn validate(&self) -> Result<ValidLocatorConfig, LocatorError> {
        let zone = parse_zone(&self.zone)?;
        if self.ttl_seconds > TTL_SECONDS_MAX {
            return Err(LocatorError::TtlTooLarge {
                ttl_seconds: self.ttl_seconds,
            });
        }
        if self.regions.is_empty() {
            return Err(LocatorError::NoRegions);
        }
        let edge_name = child_name(&zone, &["edge"], &self.zone)?;
        let srv_name = child_name(&zone, &["_relay", "_udp", "edge"], &self.zone)?;
        let hostmaster_name = child_name(&zone, &["hostmaster"], &self.zone)?;

        let mut region_numbers = HashSet::new();
        let mut network_owners: HashMap<IpNetwork, u32> = HashMap::new();
        let mut edge_addresses = HashSet::new();
        let mut regions = Vec::with_capacity(self.regions.len());
        for entry in &self.regions {
            if !region_numbers.insert(entry.region) {
                return Err(LocatorError::DuplicateRegion {
                    region: entry.region,
                });
            }
            let mut networks = Vec::with_capacity(entry.networks.len());
            for text in &entry.networks {
                let network =
                    IpNetwork::parse(text).map_err(|reason| LocatorError::InvalidNetwork {
                        region: entry.region,
                        network: text.clone(),
                        reason,
                    })?;
                if let Some(first_region) = network_owners.insert(network, entry.region) {
                    return Err(LocatorError::DuplicateNetwork {
                        network: network.to_string(),
                        first_region,
                        second_region: entry.region,
                    });
                }
                networks.push(network);
            }
            if entry.edges.is_empty() {
                return Err(LocatorError::RegionWithoutEdges {
                    region: entry.region,
                });
            }
            if entry.edges.len() > EDGES_PER_REGION_MAX {
                return Err(LocatorError::TooManyEdges {
                    region: entry.region,
                    count: entry.edges.len(),
                });
            }
            let mut edges = Vec::with_capacity(entry.edges.len());
            for (index, &address) in entry.edges.iter().enumerate() {
                let invalid = |reason| LocatorError::InvalidEdge {
                    region: entry.region,
                    edge: address,
                    reason,
                };
                if address.port() == 0 {
                    return Err(invalid("port 0 cannot be connected to"));
                }
                let ip = address.ip();
                if ip.is_unspecified() || ip.is_multicast() {
                    return Err(invalid(
                        "the address must be a unicast address clients can connect to",
                    ));
                }
                if !edge_addresses.insert(address) {
                    return Err(LocatorError::DuplicateEdge {
                        edge: address,
                        region: entry.region,
                    });
                }
                let label = format!("edge-r{}-{}", entry.region, index + 1);
                let host_name = child_name(&zone, &[label.as_str()], &self.zone)?;
                edges.push(Edge { address, host_name });
            }
            regions.push(Region {
                number: entry.region,
                networks,
                edges,
            });
        }
        Ok(ValidLocatorConfig {
            listen: self.listen,
            zone,
            ttl_seconds: self.ttl_seconds,
            edge_name,
            srv_name,
            hostmaster_name,
            regions,
        })
    }
}

/// A checked [`LocatorConfig`]: parsed networks and names; only [`LocatorConfig::validate`]
/// makes one.
#[derive(Clone, Debug)]
pub struct ValidLocatorConfig {
    listen: SocketAddr,
    zone: Name,
    ttl_seconds: u32,
    edge_name: Name,
    srv_name: Name,
    /// The SOA's responsible-person name, `hostmaster.<zone>`.
    hostmaster_name: Name,
    regions: Vec<Region>,
}

impl ValidLocatorConfig {
    /// The address to serve DNS on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The zone, lowercase and absolute.
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// The TTL of every answer, in seconds.
    pub fn ttl_seconds(&self) -> u32 {
        self.ttl_seconds
    }

    /// The name clients resolve to find edges: `edge.<zone>`.
    pub fn edge_name(&self) -> &Name {
        &self.edge_name
    }

    /// The SRV name clients resolve to learn edge ports: `_relay._udp.edge.<zone>`.
    pub fn srv_name(&self) -> &Name {
        &self.srv_name
    }
}

/// The client's part of a question: where the query came from and its Client Subnet option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryOrigin {
    /// The query's source address.
    pub source: IpAddr,
    /// The query's EDNS Client Subnet option, if any (RFC 7871).
    pub subnet: Option<ClientSubnet>,
}

/// What the locator answers to one question; the runtime shell turns it into a DNS message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The response code.
    pub response_code: ResponseCode,
    /// Whether the answer is authoritative (AA bit): true for every name in the zone.
    pub authoritative: bool,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the zone's SOA for NXDOMAIN and NODATA).
    pub authorities: Vec<Record>,
    /// The additional section (edge addresses for SRV answers).
    pub additionals: Vec<Record>,
    /// The Client Subnet option to echo, with its scope prefix length set.
    pub client_subnet: Option<ClientSubnet>,
    /// The region whose edges the answer depends on, if it depends on the client's address.
    pub region: Option<u32>,
}

impl Answer {
    /// An answer with only a response code: no records, not authoritative, no Client Subnet.
    pub fn error(response_code: ResponseCode) -> Self {
        Self {
            response_code,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            client_subnet: None,
            region: None,
        }
    }
}

/// The locator's decision logic, without sockets: a question and a [`QueryOrigin`] in, an
/// [`Answer`] out.
#[derive(Clone, Debug)]
pub struct Locator {
    config: ValidLocatorConfig,
    soa: Record,
    hosts: HashMap<Name, (usize, usize)>,
}

impl Locator {
    /// Builds the locator for a checked configuration.
    pub fn new(config: ValidLocatorConfig) -> Self {
        let soa = Record::from_rdata(
            config.zone.clone(),
            config.ttl_seconds,
            RData::SOA(SOA::new(
                config.zone.clone(),
                config.hostmaster_name.clone(),
                SOA_SERIAL,
                SOA_REFRESH_SECONDS,
                SOA_RETRY_SECONDS,
                SOA_EXPIRE_SECONDS,
                config.ttl_seconds,
            )),
        );
        let mut hosts = HashMap::new();
        for (region_index, region) in config.regions.iter().enumerate() {
            for (edge_index, edge) in region.edges.iter().enumerate() {
                hosts.insert(edge.host_name.clone(), (region_index, edge_index));
            }
        }
        Self { config, soa, hosts }
    }

    /// The checked configuration this locator serves.
    pub fn config(&self) -> &ValidLocatorConfig {
        &self.config
    }

    /// Answers one question (name, type, class) asked from `origin`.
    pub fn answer(&self, query: &Query, origin: QueryOrigin) -> Answer {
        let name = query.name();
        if query.query_class() != DNSClass::IN || !self.config.zone.zone_of(name) {
            return Answer::error(ResponseCode::Refused);
        }
        let routing = match RoutingAddress::of(origin) {
            Ok(routing) => routing,
            Err(reason) => {
                debug!(%reason, "format error: malformed Client Subnet option");
                return Answer::error(ResponseCode::FormErr);
            }
        };
        let query_type = query.query_type();
        let wants =
            |record_type: RecordType| query_type == record_type || query_type == RecordType::ANY;
        let ttl = self.config.ttl_seconds;

        let mut answer = Answer {
            response_code: ResponseCode::NoError,
            authoritative: true,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            client_subnet: None,
            region: None,
        };
        let mut route = None;
        if *name == self.config.zone {
            if wants(RecordType::SOA) {
                answer.answers.push(self.soa.clone());
            }
        } else if *name == self.config.edge_name {
            if wants(RecordType::A) || wants(RecordType::AAAA) {
                let chosen = self.route(routing.address);
                for edge in &self.config.regions[chosen.region_index].edges {
                    if let Some(record) = address_record(name, edge.address.ip(), ttl, wants) {
                        answer.answers.push(record);
                    }
                }
                route = Some(chosen);
            }
        } else if *name == self.config.srv_name {
            if wants(RecordType::SRV) {
                let chosen = self.route(routing.address);
                for edge in &self.config.regions[chosen.region_index].edges {
                    answer.answers.push(Record::from_rdata(
                        name.clone(),
                        ttl,
                        RData::SRV(SRV::new(0, 0, edge.address.port(), edge.host_name.clone())),
                    ));
                    answer
                        .additionals
                        .push(host_record(&edge.host_name, edge.address.ip(), ttl));
                }
                route = Some(chosen);
            }
        } else if let Some(&(region_index, edge_index)) = self.hosts.get(name) {
            let edge = &self.config.regions[region_index].edges[edge_index];
            if let Some(record) = address_record(name, edge.address.ip(), ttl, wants) {
                answer.answers.push(record);
            }
        } else if !self.is_empty_non_terminal(name) {
            answer.response_code = ResponseCode::NXDomain;
        }

        if answer.answers.is_empty() {
            answer.authorities.push(self.soa.clone());
        }
        if let Some(chosen) = route {
            answer.region = Some(self.config.regions[chosen.region_index].number);
        }
        answer.client_subnet = origin.subnet.map(|subnet| {
            let scope_prefix = match (&route, routing.from_subnet) {
                (Some(chosen), true) => chosen.scope_prefix,
                // The answer does not depend on the address, or the option asked not to use it
                // (source prefix 0, RFC 7871 section 7.1.2): valid for everyone.
                _ => 0,
            };
            ClientSubnet::new(subnet.addr(), subnet.source_prefix(), scope_prefix)
        });
        answer
    }

    /// The region for `address` (longest matching prefix, else the default region) and the
    /// shortest prefix of `address` whose addresses all get that region.
    fn route(&self, address: IpAddr) -> Route {
        let key = AddressBits::of(address);
        let mut best: Option<(usize, u8)> = None;
        for (region_index, region) in self.config.regions.iter().enumerate() {
            for network in &region.networks {
                let longer = best.is_none_or(|(_, length)| network.prefix_len > length);
                if network.contains(key) && longer {
                    best = Some((region_index, network.prefix_len));
                }
            }
        }
        // No match: the default region, the first one (`validate` guarantees there is one).
        let (region_index, matched_len) = best.unwrap_or((0, 0));
        // Every more specific network of the family that does not contain the address must be
        // outside the scope; less specific ones are either the match's ancestors or disjoint.
        let mut scope_prefix = matched_len;
        for network in self.config.regions.iter().flat_map(|r| &r.networks) {
            if network.bits.width == key.width && network.prefix_len > matched_len {
                let common = key.common_prefix_len(network.bits);
                scope_prefix = scope_prefix.max((common + 1).min(key.width));
            }
        }
        Route {
            region_index,
            scope_prefix,
        }
    }

    /// Whether `name` has no records but owns names below it (RFC 8020: not NXDOMAIN).
    fn is_empty_non_terminal(&self, name: &Name) -> bool {
        name.zone_of(&self.config.edge_name)
            || name.zone_of(&self.config.srv_name)
            || self.hosts.keys().any(|host| name.zone_of(host))
    }
}

/// A bound locator, ready to serve: bind first to learn the port, then [`Self::serve`].
pub struct LocatorServer {
    locator: Locator,
    udp: UdpSocket,
    tcp: TcpListener,
    local_addr: SocketAddr,
}

impl fmt::Debug for LocatorServer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("LocatorServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl LocatorServer {
    /// Binds UDP, then TCP on the same port, and logs `locator listening on <addr>`.
    pub async fn bind(config: ValidLocatorConfig) -> Result<Self, LocatorError> {
        let listen = config.listen;
        let (udp, tcp) = bind_sockets(listen).await?;
        let local_addr = udp.local_addr().map_err(|source| LocatorError::Bind {
            protocol: "UDP",
            address: listen,
            source,
        })?;
        info!("locator listening on {local_addr}");
        Ok(Self {
            locator: Locator::new(config),
            udp,
            tcp,
            local_addr,
        })
    }

    /// The bound address (UDP and TCP share it), with the real port when 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves DNS until `shutdown` completes, then stops within [`SHUTDOWN_TIMEOUT`].
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), LocatorError> {
        let mut server = Server::new(LocatorHandler {
            locator: self.locator,
        });
        server.register_socket(self.udp);
        server.register_listener(self.tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER_LEN);

        let stopped_by_itself = {
            let done = server.block_until_done();
            tokio::pin!(done, shutdown);
            tokio::select! {
                result = &mut done => Some(result),
                () = &mut shutdown => None,
            }
        };
        match stopped_by_itself {
            Some(Ok(())) => Err(LocatorError::StoppedUnexpectedly),
            Some(Err(error)) => Err(LocatorError::Server(error)),
            None => {
                tokio::time::timeout(SHUTDOWN_TIMEOUT, server.shutdown_gracefully())
                    .await
                    .map_err(|_| LocatorError::ShutdownTimedOut)??;
                info!(address = %self.local_addr, "locator stopped");
                Ok(())
            }
        }
    }
}

/// Binds and serves the locator until `shutdown` completes (see [`LocatorServer`] to learn the
/// bound address before serving).
pub async fn serve(
    config: ValidLocatorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LocatorError> {
    LocatorServer::bind(config).await?.serve(shutdown).await
}

/// The hickory request handler: decodes what [`Locator::answer`] needs from a request and
/// encodes its [`Answer`].
struct LocatorHandler {
    locator: Locator,
}

impl LocatorHandler {
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let response_edns = request.edns.as_ref().map(|request_edns| {
            let mut edns = Edns::new();
            edns.set_max_payload(request_edns.max_payload().clamp(512, UDP_PAYLOAD_BYTES_MAX));
            edns.set_version(0);
            edns
        });
        let answer = self.decide(request);

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = answer.authoritative;
        metadata.response_code = answer.response_code;
        let response_edns = response_edns.map(|mut edns| {
            if let Some(subnet) = answer.client_subnet {
                edns.options_mut().insert(EdnsOption::Subnet(subnet));
            }
            edns
        });
        let response = MessageResponseBuilder::new(&request.queries, response_edns.as_ref()).build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                warn!(%error, source = %request.src(), "cannot send a locator response");
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }

    fn decide(&self, request: &Request) -> Answer {
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            return Answer::error(ResponseCode::NotImp);
        }
        if request.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
            return Answer::error(ResponseCode::BADVERS);
        }
        let [query] = request.queries.queries() else {
            return Answer::error(ResponseCode::FormErr);
        };
        let subnet = request
            .edns
            .as_ref()
            .and_then(|edns| match edns.option(EdnsCode::Subnet) {
                Some(EdnsOption::Subnet(subnet)) => Some(*subnet),
                _ => None,
            });
        let client = QueryOrigin {
            source: request.src().ip(),
            subnet,
        };
        let answer = self.locator.answer(query.original(), client);
        debug!(
            name = %query.name(),
            query_type = %query.query_type(),
            source = %client.source,
            region = ?answer.region,
            response_code = %answer.response_code,
            "locator answer"
        );
        answer
    }
}

// `RequestHandler` is declared with `#[async_trait]`; this is that macro's expansion written out,
// so the edge crate needs no `async-trait` dependency.
impl RequestHandler for LocatorHandler {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: 'async_trait + ResponseHandler,
        T: 'async_trait + Time,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.respond(request, response_handle))
    }
}

/// Binds UDP on `listen`, then TCP on the port UDP got. With port 0, a port whose TCP side is
/// already taken is given up and another one tried, at most [`BIND_ATTEMPTS_MAX`] times.
async fn bind_sockets(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), LocatorError> {
    let bind_error = |protocol, address| {
        move |source| LocatorError::Bind {
            protocol,
            address,
            source,
        }
    };
    let mut attempt = 1;
    loop {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(bind_error("UDP", listen))?;
        let udp_addr = udp.local_addr().map_err(bind_error("UDP", listen))?;
        match TcpListener::bind(udp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source)
                if listen.port() == 0
                    && source.kind() == io::ErrorKind::AddrInUse
                    && attempt < BIND_ATTEMPTS_MAX =>
            {
                debug!(%udp_addr, attempt, "TCP port taken; trying another port");
                attempt += 1;
            }
            Err(source) => return Err(bind_error("TCP", udp_addr)(source)),
        }
    }
}

/// A region as served: its number, client networks and edges.
#[derive(Clone, Debug)]
struct Region {
    number: u32,
    networks: Vec<IpNetwork>,
    edges: Vec<Edge>,
}

/// One edge: its QUIC address and its name in the zone (`edge-r<region>-<i>.<zone>`).
#[derive(Clone, Debug)]
struct Edge {
    address: SocketAddr,
    host_name: Name,
}

/// The outcome of routing a client address.
#[derive(Clone, Copy, Debug)]
struct Route {
    region_index: usize,
    /// The Client Subnet scope prefix length for the answer.
    scope_prefix: u8,
}

/// The address to route on, and whether it came from a Client Subnet option.
struct RoutingAddress {
    address: IpAddr,
    from_subnet: bool,
}

impl RoutingAddress {
    /// Picks the routing address of `client`; a malformed Client Subnet option is an error
    /// (RFC 7871 section 7.1.2 asks for FORMERR).
    fn of(origin: QueryOrigin) -> Result<Self, String> {
        let source = Self {
            address: origin.source.to_canonical(),
            from_subnet: false,
        };
        let Some(subnet) = origin.subnet else {
            return Ok(source);
        };
        let bits = AddressBits::of(subnet.addr());
        if subnet.source_prefix() > bits.width {
            return Err(format!(
                "source prefix length {} is longer than the address",
                subnet.source_prefix()
            ));
        }
        if bits.masked(subnet.source_prefix()) != bits {
            return Err("address bits set beyond the source prefix length".to_owned());
        }
        if subnet.source_prefix() == 0 {
            return Ok(source);
        }
        Ok(Self {
            address: subnet.addr(),
            from_subnet: true,
        })
    }
}

/// An address as 128 bits aligned to the left (IPv4 in the top 32) and its width in bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct AddressBits {
    bits: u128,
    width: u8,
}

impl AddressBits {
    fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(v4) => Self {
                bits: u128::from(u32::from(v4)) << 96,
                width: 32,
            },
            IpAddr::V6(v6) => Self {
                bits: u128::from(v6),
                width: 128,
            },
        }
    }

    fn masked(self, prefix_len: u8) -> Self {
        let mask = match u32::from(prefix_len) {
            0 => 0,
            length => u128::MAX << (128 - length.min(128)),
        };
        Self {
            bits: self.bits & mask,
            width: self.width,
        }
    }

    /// How many leading bits `self` and `other` (same family) have in common.
    fn common_prefix_len(self, other: Self) -> u8 {
        let common = (self.bits ^ other.bits).leading_zeros();
        // `common` is at most 128, so the conversion cannot fail.
        u8::try_from(common).unwrap_or(u8::MAX).min(self.width)
    }

    fn to_ip(self) -> IpAddr {
        if self.width == 32 {
            // The low 96 bits of an IPv4 value are zero, so the shift keeps all of it.
            IpAddr::V4(Ipv4Addr::from((self.bits >> 96) as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.bits))
        }
    }
}

/// A client network (CIDR) with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct IpNetwork {
    bits: AddressBits,
    prefix_len: u8,
}

impl IpNetwork {
    fn parse(text: &str) -> Result<Self, String> {
        let Some((address, length)) = text.trim().split_once('/') else {
            return Err("expected a CIDR such as 127.0.1.0/24 or fd00::/64".to_owned());
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IPv4 or IPv6 address"))?;
        let bits = AddressBits::of(address);
        let prefix_len: u8 = length
            .parse()
            .ok()
            .filter(|&prefix_len| prefix_len <= bits.width)
            .ok_or_else(|| {
                format!(
                    "prefix length {length:?} is not a number from 0 to {}",
                    bits.width
                )
            })?;
        let network = bits.masked(prefix_len);
        if network != bits {
            return Err(format!(
                "host bits are set; did you mean {}/{prefix_len}?",
                network.to_ip()
            ));
        }
        Ok(Self { bits, prefix_len })
    }

    fn contains(&self, address: AddressBits) -> bool {
        address.width == self.bits.width && address.masked(self.prefix_len) == self.bits
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.bits.to_ip(), self.prefix_len)
    }
}

/// Checks the zone text (letters, digits and hyphens; absolute; not the root) and parses it.
fn parse_zone(text: &str) -> Result<Name, LocatorError> {
    let invalid = |reason: String| LocatorError::InvalidZone {
        zone: text.to_owned(),
        reason,
    };
    let Some(relative) = text.strip_suffix('.') else {
        return Err(invalid(
            "it must be absolute, ending with a dot, such as \"relay.test.\"".to_owned(),
        ));
    };
    if relative.is_empty() {
        return Err(invalid("the root zone cannot be served".to_owned()));
    }
    for label in relative.split('.') {
        let well_formed = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !well_formed {
            return Err(invalid(format!(
                "label {label:?} must be 1 to 63 letters, digits or inner hyphens"
            )));
        }
    }
    Name::from_ascii(text)
        .map(|name| name.to_lowercase())
        .map_err(|error| invalid(error.to_string()))
}

/// `labels` prepended to `zone`; fails when the result is longer than a name may be.
fn child_name(zone: &Name, labels: &[&str], zone_text: &str) -> Result<Name, LocatorError> {
    Name::from_labels(labels.iter().copied())
        .and_then(|relative| relative.append_domain(zone))
        .map_err(|error| LocatorError::InvalidZone {
            zone: zone_text.to_owned(),
            reason: format!("{}.<zone> is not a valid name: {error}", labels.join(".")),
        })
}

/// The A or AAAA record of `address` at `name`, if `wants` its type.
fn address_record(
    name: &Name,
    address: IpAddr,
    ttl: u32,
    wants: impl Fn(RecordType) -> bool,
) -> Option<Record> {
    match address {
        IpAddr::V4(_) if !wants(RecordType::A) => None,
        IpAddr::V6(_) if !wants(RecordType::AAAA) => None,
        _ => Some(host_record(name, address, ttl)),
    }
}

/// The A or AAAA record of `address` at `name`.
fn host_record(name: &Name, address: IpAddr, ttl: u32) -> Record {
    let data = match address {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, data)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_server::proto::op::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;
    use tokio::sync::oneshot;

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
        let config =
            LocatorConfig::from_toml_str(LocatorConfig::EXAMPLE_TOML).expect("example parses");
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
}
