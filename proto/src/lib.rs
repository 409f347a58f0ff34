//! Relay's wire protocol: the messages devices, edges and regions exchange, how they are framed,
//! the ids they carry, the error codes they return and the limits that bound them.
//!
//! Everything here is sans-IO: it turns bytes into typed values and back, never touching a
//! socket or a clock. Decoding bytes from a peer never panics; it returns a [`FrameError`] or a
//! [`ProtoError`]. The `net` feature adds the runtime shell used by every service: QUIC endpoints
//! made through one socket factory, TLS configuration, and framed streams over quinn.

pub mod clock;
pub mod error;
pub mod frame;
pub mod ids;
pub mod limits;
pub mod planted;
pub mod wire;

#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "pki")]
pub mod pki;

pub use error::{ErrorCode, ProtoError};
pub use frame::{FrameDecoder, FrameError, decode_frame, encode_frame};
pub use ids::{AccountId, ChatId, ClientMessageId, DeviceAddress, DeviceId, RegionId};
