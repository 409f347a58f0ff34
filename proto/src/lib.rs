//! Relay's wire protocol: the messages devices, edges and regions exchange, how they are framed,
//! the ids they carry, the error codes they return and the limits that bound them.
//!
//! Everything here is sans-IO: it turns bytes into typed values and back, never touching a
//! socket or a clock. Decoding bytes from a peer never panics; it returns a [`FrameError`] or a
//! [`ProtoError`]. The runtime shell (QUIC endpoints, TLS, framed streams) is the `relay-net`
//! crate; the simulator's planted-bug switches are `relay-planted`.

pub mod clock;
pub mod digest;
pub mod error;
pub mod frame;
pub mod ids;
pub mod limits;
pub mod pairing;
pub mod wire;

pub use error::{ErrorCode, ProtoError};
pub use frame::{FrameDecoder, FrameError, decode_frame, encode_frame};
pub use ids::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId, GroupId, RegionId};
pub use pairing::PairingCode;
