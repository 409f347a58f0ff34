//! A region's standby: semi-synchronous replication of the embedded store.
//!
//! Each region may have a standby, a process of its own (`relayd standby`) with its own copy of
//! the region's store, which receives every committed change before the region acknowledges
//! it: on FoundationDB in production the cluster's own multi-region replication (satellite
//! logs) plays this role, and no standby is configured.
//!
//! - The region's embedded engine hands each durable group commit to a [`Shipper`] (its
//!   [`fdb_layers::ReplicationSink`]) and answers the group's requests only when the shipper
//!   calls back, in version order. The shipper keeps the groups the standby has not confirmed ([`ShipLog`]), a task
//!   ships them over one QUIC stream in order, and the standby confirms each once it is
//!   durable. A standby that connects says which version it holds: it gets the groups after
//!   it, or a full copy of the store when the log no longer has them.
//! - While the standby is away (unreachable, or not confirming within
//!   `ack_timeout_ms`), the region follows its [`AwayPolicy`]: refuse writes (nothing is
//!   acknowledged that the standby lacks) or go on alone.
//! - The [`StandbyServer`] accepts only a primary presenting the region's own certificate,
//!   applies each group in one durable transaction at the version it follows (a copy that
//!   missed a group refuses the next one), and installs full copies so that an interrupted one
//!   is never opened as a store. Its folder is an ordinary region data folder: promoting the
//!   standby is starting the region on it (`home_region::promote` by an operator,
//!   `home_region::failover` when the primary's lease expires: the [`StandbyHandle`]). A primary
//!   that dials a promoted standby hears it is fenced ([`Shipper::fenced`]).
//!
//! The wire is in [`wire`], the sans-IO decisions in [`ShipLog`], the bounds in [`limits`].

pub mod config;
pub mod limits;
mod log;
mod primary;
mod standby;
pub mod wire;

pub use config::{AwayPolicy, PromotionConfig, ReplicationConfig, StandbyConfig};
pub use log::{Next, Plan, ShipLog};
pub use primary::{HandedOver, Shipper, ShipperStats};
pub use standby::{
    CopyAt, MemoryStandby, STANDBY_STORE_FILE, StandbyHandle, StandbyServer, StandbyStats,
};

use relay_proto::frame::FrameError;

use crate::limits::REPLICATION_FRAME_BYTES_MAX;

/// Why replication failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The network failed (dialling, TLS, a stream).
    #[error("network: {0}")]
    Net(#[from] relay_net::NetError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] fdb_layers::StoreError),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    /// The peer broke the protocol (a malformed or unexpected frame).
    #[error("protocol: {0}")]
    Protocol(String),
    /// The standby refused the stream, saying why.
    #[error("the standby refused: {0}")]
    Refused(String),
    /// The peer took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

impl From<FrameError> for ReplicaError {
    fn from(error: FrameError) -> Self {
        ReplicaError::Protocol(error.to_string())
    }
}

/// Writes one replication frame.
async fn write_frame<M: prost::Message>(
    send: &mut quinn::SendStream,
    message: &M,
) -> Result<(), ReplicaError> {
    Ok(relay_net::write_frame(send, message).await?)
}

/// Reads one replication frame (at most [`REPLICATION_FRAME_BYTES_MAX`]); `None` when the peer
/// finished the stream between frames. A frame that does not decode is a protocol error.
async fn read_frame<M: prost::Message + Default>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<M>, ReplicaError> {
    match relay_net::read_frame_limited(recv, REPLICATION_FRAME_BYTES_MAX).await {
        Ok(frame) => Ok(frame),
        Err(relay_net::NetError::Frame(error)) => Err(error.into()),
        Err(error) => Err(error.into()),
    }
}
