//! The locator's decisions, sans-IO: a question and where it came from in, an [`Answer`] out.

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_server::proto::op::{Query, ResponseCode};
use hickory_server::proto::rr::rdata::opt::ClientSubnet;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tracing::debug;

use super::config::ValidLocatorConfig;
use super::prefix::AddressBits;

/// The SOA timers (seconds). The zone is generated from config, never transferred, so only
/// `minimum` (the negative-caching TTL) matters; it is set to the configured TTL.
const SOA_SERIAL: u32 = 1;
const SOA_REFRESH_SECONDS: i32 = 3_600;
const SOA_RETRY_SECONDS: i32 = 600;
const SOA_EXPIRE_SECONDS: i32 = 86_400;

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
