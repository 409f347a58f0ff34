//! The locator's runtime shell: hickory-server over one UDP socket and one TCP listener on the
//! same port, answering through [`Locator`].

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, info, warn};

use super::LocatorError;
use super::config::ValidLocatorConfig;
use super::core::{Answer, Locator, QueryOrigin};
use crate::limits::{
    LOCATOR_BIND_ATTEMPTS_MAX, LOCATOR_SHUTDOWN_TIMEOUT_MS, LOCATOR_TCP_IDLE_TIMEOUT_MS,
    LOCATOR_TCP_RESPONSES_WAITING_MAX, UDP_PAYLOAD_BYTES_MAX,
};

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

    /// Serves DNS until `shutdown` completes, then stops within
    /// [`LOCATOR_SHUTDOWN_TIMEOUT_MS`].
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), LocatorError> {
        let mut server = Server::new(LocatorHandler {
            locator: self.locator,
        });
        server.register_socket(self.udp);
        server.register_listener(
            self.tcp,
            Duration::from_millis(LOCATOR_TCP_IDLE_TIMEOUT_MS),
            LOCATOR_TCP_RESPONSES_WAITING_MAX,
        );

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
                tokio::time::timeout(
                    Duration::from_millis(LOCATOR_SHUTDOWN_TIMEOUT_MS),
                    server.shutdown_gracefully(),
                )
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
/// already taken is given up and another one tried, at most [`LOCATOR_BIND_ATTEMPTS_MAX`] times.
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
                    && attempt < LOCATOR_BIND_ATTEMPTS_MAX =>
            {
                debug!(%udp_addr, attempt, "TCP port taken; trying another port");
                attempt += 1;
            }
            Err(source) => return Err(bind_error("TCP", udp_addr)(source)),
        }
    }
}
