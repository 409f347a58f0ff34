//! Finding an edge: one DNS question to the edge locator, `SRV _relay._udp.edge.relay.test.`,
//! answered with SRV records (port, target `edge-r<k>-<i>.relay.test.`) and the targets' A
//! records in the additional section.
//!
//! The message building and parsing are sans-IO ([`build_query`], [`parse_answer`]); the small
//! shell [`locate_edges`] asks over UDP from a socket bound to the client's address (the locator
//! answers by source address), with a timeout and a few attempts.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::error::{ClientError, Result};
use crate::limits::{DNS_ANSWER_BYTES_MAX, DNS_ATTEMPTS_MAX, DNS_TIMEOUT_MS};

/// The name every client asks the locator for.
pub const EDGE_SRV_NAME: &str = "_relay._udp.edge.relay.test.";

/// The encoded SRV query with this message id.
pub fn build_query(id: u16) -> Result<Vec<u8>> {
    let name = Name::from_ascii(EDGE_SRV_NAME)
        .map_err(|error| ClientError::Discovery(format!("bad query name: {error}")))?;
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(name, RecordType::SRV));
    message
        .to_vec()
        .map_err(|error| ClientError::Discovery(format!("encoding the query: {error}")))
}

/// The edge addresses in an answer to the query with message id `id`, best first (SRV priority
/// ascending, then weight descending). Targets without an A record are skipped.
pub fn parse_answer(bytes: &[u8], id: u16) -> Result<Vec<SocketAddr>> {
    let message = Message::from_vec(bytes)
        .map_err(|error| ClientError::Discovery(format!("undecodable answer: {error}")))?;
    if message.metadata.id != id || message.metadata.message_type != MessageType::Response {
        return Err(ClientError::Discovery(
            "the answer does not match the question".into(),
        ));
    }
    if message.metadata.response_code != ResponseCode::NoError {
        return Err(ClientError::Discovery(format!(
            "the locator answered {}",
            message.metadata.response_code
        )));
    }
    let mut addresses: HashMap<Name, Vec<Ipv4Addr>> = HashMap::new();
    for record in message.answers.iter().chain(&message.additionals) {
        if let RData::A(a) = &record.data {
            addresses.entry(record.name.clone()).or_default().push(a.0);
        }
    }
    let mut services: Vec<_> = message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv),
            _ => None,
        })
        .collect();
    services.sort_by_key(|srv| (srv.priority, std::cmp::Reverse(srv.weight)));
    let mut edges = Vec::new();
    for srv in services {
        for ip in addresses
            .get(&srv.target)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let edge = SocketAddr::new(IpAddr::V4(*ip), srv.port);
            if !edges.contains(&edge) {
                edges.push(edge);
            }
        }
    }
    if edges.is_empty() {
        return Err(ClientError::Discovery(
            "the locator named no reachable edge".into(),
        ));
    }
    Ok(edges)
}

/// Asks the locator at `locator`, from a UDP socket bound to `bind_ip`, for the nearest edges.
pub async fn locate_edges(locator: SocketAddr, bind_ip: IpAddr) -> Result<Vec<SocketAddr>> {
    locate_edges_within(locator, bind_ip, Duration::from_millis(DNS_TIMEOUT_MS)).await
}

async fn locate_edges_within(
    locator: SocketAddr,
    bind_ip: IpAddr,
    attempt_timeout: Duration,
) -> Result<Vec<SocketAddr>> {
    let socket = tokio::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0))
        .await
        .map_err(|error| {
            ClientError::Discovery(format!("binding a UDP socket on {bind_ip}: {error}"))
        })?;
    socket
        .connect(locator)
        .await
        .map_err(|error| ClientError::Discovery(format!("locator {locator}: {error}")))?;
    let mut last_problem = String::from("no answer");
    for _ in 0..DNS_ATTEMPTS_MAX {
        let id: u16 = rand::random();
        let query = build_query(id)?;
        if let Err(error) = socket.send(&query).await {
            last_problem = error.to_string();
            tokio::time::sleep(attempt_timeout).await;
            continue;
        }
        let deadline = tokio::time::Instant::now() + attempt_timeout;
        loop {
            let mut buffer = vec![0u8; DNS_ANSWER_BYTES_MAX];
            match tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await {
                Err(_) => {
                    last_problem = format!("no answer within {} ms", attempt_timeout.as_millis());
                    break;
                }
                Ok(Err(error)) => {
                    // An ICMP "port unreachable" surfaces here; wait out the attempt and retry.
                    last_problem = error.to_string();
                    tokio::time::sleep_until(deadline).await;
                    break;
                }
                Ok(Ok(length)) => match parse_answer(&buffer[..length], id) {
                    Ok(edges) => return Ok(edges),
                    // A stray or late datagram for an earlier query: keep waiting for ours.
                    Err(ClientError::Discovery(problem)) if problem.contains("does not match") => {}
                    Err(error) => return Err(error),
                },
            }
        }
    }
    Err(ClientError::Discovery(format!(
        "the edge locator at {locator} is unreachable after {DNS_ATTEMPTS_MAX} attempts ({last_problem})"
    )))
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, SRV};

    use super::*;

    fn answer(id: u16) -> Message {
        let mut message = Message::response(id, OpCode::Query);
        let name = Name::from_ascii(EDGE_SRV_NAME).expect("name");
        let first = Name::from_ascii("edge-r1-1.relay.test.").expect("name");
        let second = Name::from_ascii("edge-r1-2.relay.test.").expect("name");
        let orphan = Name::from_ascii("edge-r1-3.relay.test.").expect("name");
        message.add_query(Query::query(name.clone(), RecordType::SRV));
        message.add_answer(Record::from_rdata(
            name.clone(),
            5,
            RData::SRV(SRV::new(20, 1, 4434, second.clone())),
        ));
        message.add_answer(Record::from_rdata(
            name.clone(),
            5,
            RData::SRV(SRV::new(10, 1, 4433, first.clone())),
        ));
        message.add_answer(Record::from_rdata(
            name,
            5,
            RData::SRV(SRV::new(5, 1, 4435, orphan)),
        ));
        message.add_additional(Record::from_rdata(
            first,
            5,
            RData::A(A(Ipv4Addr::new(127, 0, 1, 10))),
        ));
        message.add_additional(Record::from_rdata(
            second,
            5,
            RData::A(A(Ipv4Addr::new(127, 0, 1, 11))),
        ));
        message
    }

    #[test]
    fn query_asks_for_the_edge_srv_record() {
        let bytes = build_query(77).expect("query");
        let message = Message::from_vec(&bytes).expect("decode");
        assert_eq!(message.metadata.id, 77);
        assert_eq!(message.queries.len(), 1);
        assert_eq!(message.queries[0].query_type(), RecordType::SRV);
        assert_eq!(message.queries[0].name().to_ascii(), EDGE_SRV_NAME);
    }

    #[test]
    fn answer_gives_edges_by_priority_with_their_a_records() {
        let bytes = answer(9).to_vec().expect("encode");
        let edges = parse_answer(&bytes, 9).expect("edges");
        assert_eq!(
            edges,
            vec![
                "127.0.1.10:4433".parse().expect("addr"),
                "127.0.1.11:4434".parse().expect("addr")
            ]
        );
    }

    #[test]
    fn bad_answers_are_errors_not_panics() {
        let bytes = answer(9).to_vec().expect("encode");
        assert!(parse_answer(&bytes, 10).is_err(), "other id");
        assert!(
            parse_answer(&bytes[..bytes.len() / 2], 9).is_err(),
            "truncated"
        );
        assert!(parse_answer(&[], 9).is_err());
        let refused = Message::error_msg(9, OpCode::Query, ResponseCode::Refused)
            .to_vec()
            .expect("encode");
        assert!(parse_answer(&refused, 9).is_err());
        let mut empty = answer(9);
        empty.additionals.clear();
        assert!(
            parse_answer(&empty.to_vec().expect("encode"), 9).is_err(),
            "no A records"
        );
    }

    #[tokio::test]
    async fn an_unreachable_locator_is_a_clear_error() {
        // Nothing listens on this port of the loopback address: every attempt fails or times out.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let locator = silent.local_addr().expect("addr");
        drop(silent);
        let bind = "127.0.0.1".parse().expect("ip");
        let error = locate_edges_within(locator, bind, Duration::from_millis(50))
            .await
            .expect_err("fails");
        assert!(error.to_string().contains("unreachable"), "{error}");
    }
}
