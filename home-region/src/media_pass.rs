//! Media passes: what lets a device move one blob's bytes at the region's media endpoint,
//! without its edge.
//!
//! A device asks for a blob's status through its edge, which authenticated it; the region
//! answers with a pass naming that device, the blob and the direction (upload or download),
//! valid for [`MEDIA_PASS_TTL_MS`]. At the media endpoint, where the device presents no
//! certificate, the pass is the whole authentication: the region checks its tag under a key
//! only this process holds (drawn at start, never stored), so a pass is good at the process
//! that issued it and nowhere else. After a restart or a failover the device asks for the
//! status again and gets a new pass, as it does after any dropped transfer.
//!
//! A pass is [`PASS_BYTES`] long: account (8 bytes, big-endian), device (4), direction (1),
//! expiry in milliseconds since the Unix epoch (8), blob id (16), then the HMAC-SHA-256 of
//! those 37 bytes (32).

use relay_proto::{AccountId, DeviceAddress, DeviceId, ErrorCode, ProtoError};
use ring::hmac;

use crate::limits::MEDIA_PASS_TTL_MS;

/// A blob id's length in bytes.
const ID_BYTES: usize = 16;
/// The bytes a pass's tag covers.
const BODY_BYTES: usize = 8 + 4 + 1 + 8 + ID_BYTES;
/// The tag's length (HMAC-SHA-256).
const TAG_BYTES: usize = 32;
/// A pass's length in bytes.
pub const PASS_BYTES: usize = BODY_BYTES + TAG_BYTES;

/// Which way a pass lets the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The device sends an upload's bytes.
    Upload,
    /// The device receives a finished blob's bytes.
    Download,
}

impl Direction {
    fn byte(self) -> u8 {
        match self {
            Direction::Upload => 1,
            Direction::Download => 2,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Direction::Upload),
            2 => Some(Direction::Download),
            _ => None,
        }
    }
}

/// What a checked pass grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The device the pass was issued to (through its edge).
    pub device: DeviceAddress,
    /// The blob's id.
    pub id: Vec<u8>,
    /// Which way.
    pub direction: Direction,
}

/// Issues and checks the passes of one region process.
pub struct MediaPasses {
    key: hmac::Key,
}

impl std::fmt::Debug for MediaPasses {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("MediaPasses { .. }")
    }
}

impl MediaPasses {
    /// Passes under a key drawn now.
    pub fn new() -> Self {
        Self::with_key(&rand::random::<[u8; 32]>())
    }

    /// Passes under `key` (tests).
    pub fn with_key(key: &[u8; 32]) -> Self {
        MediaPasses {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// A pass for `device` to move blob `id` the way `direction` says, issued at `now_ms`;
    /// returns it and its expiry. `None` for an id that is not a blob id.
    pub fn issue(
        &self,
        device: DeviceAddress,
        id: &[u8],
        direction: Direction,
        now_ms: u64,
    ) -> Option<(Vec<u8>, u64)> {
        if id.len() != ID_BYTES {
            return None;
        }
        let expires_at_ms = now_ms.saturating_add(MEDIA_PASS_TTL_MS);
        let mut pass = Vec::with_capacity(PASS_BYTES);
        pass.extend_from_slice(&device.account.0.to_be_bytes());
        pass.extend_from_slice(&device.device.0.to_be_bytes());
        pass.push(direction.byte());
        pass.extend_from_slice(&expires_at_ms.to_be_bytes());
        pass.extend_from_slice(id);
        let tag = hmac::sign(&self.key, &pass);
        pass.extend_from_slice(tag.as_ref());
        Some((pass, expires_at_ms))
    }

    /// What `pass` grants at `now_ms`: refused (`Unauthenticated`, which a device answers by
    /// asking for the blob's status again) when it is not one this process issued, was
    /// altered, or expired.
    pub fn check(&self, pass: &[u8], now_ms: u64) -> Result<Grant, ProtoError> {
        let refused = |why: &str| {
            ProtoError::new(
                ErrorCode::Unauthenticated,
                format!("the media pass {why}: ask for the blob's status again"),
            )
        };
        if pass.len() != PASS_BYTES {
            return Err(refused("has the wrong length"));
        }
        let (body, tag) = pass.split_at(BODY_BYTES);
        hmac::verify(&self.key, body, tag)
            .map_err(|_| refused("was not issued by this region process"))?;
        let (account, rest) = body.split_at(8);
        let (device, rest) = rest.split_at(4);
        let (direction, rest) = rest.split_at(1);
        let (expires_at_ms, id) = rest.split_at(8);
        let number = |bytes: &[u8]| {
            let mut wide = [0u8; 8];
            wide[8 - bytes.len()..].copy_from_slice(bytes);
            u64::from_be_bytes(wide)
        };
        if number(expires_at_ms) <= now_ms {
            return Err(refused("expired"));
        }
        let direction = direction
            .first()
            .copied()
            .and_then(Direction::from_byte)
            .ok_or_else(|| refused("names no direction"))?;
        let device = u32::try_from(number(device)).map_err(|_| refused("names no device"))?;
        Ok(Grant {
            device: DeviceAddress {
                account: AccountId(number(account)),
                device: DeviceId(device),
            },
            id: id.to_vec(),
            direction,
        })
    }
}

impl Default for MediaPasses {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceAddress {
        DeviceAddress {
            account: AccountId(77),
            device: DeviceId(3),
        }
    }

    #[test]
    fn an_issued_pass_grants_its_device_blob_and_direction_until_it_expires() {
        let passes = MediaPasses::with_key(&[7; 32]);
        let id = [9u8; ID_BYTES];
        for direction in [Direction::Upload, Direction::Download] {
            let (pass, expires_at_ms) =
                passes.issue(device(), &id, direction, 1_000).expect("pass");
            assert_eq!(pass.len(), PASS_BYTES);
            assert_eq!(expires_at_ms, 1_000 + MEDIA_PASS_TTL_MS);
            let grant = passes.check(&pass, expires_at_ms - 1).expect("valid");
            assert_eq!(
                grant,
                Grant {
                    device: device(),
                    id: id.to_vec(),
                    direction
                }
            );
            let expired = passes.check(&pass, expires_at_ms).expect_err("expired");
            assert_eq!(expired.code, ErrorCode::Unauthenticated);
            assert!(expired.message.contains("expired"), "{}", expired.message);
        }
    }

    #[test]
    fn altered_foreign_and_malformed_passes_are_refused() {
        let passes = MediaPasses::with_key(&[7; 32]);
        let (pass, _) = passes
            .issue(device(), &[9; ID_BYTES], Direction::Download, 0)
            .expect("pass");
        // Every byte matters: flipping any one (the device, the direction, the expiry, the id
        // or the tag) breaks the pass.
        for index in 0..pass.len() {
            let mut altered = pass.clone();
            altered[index] ^= 1;
            let error = passes.check(&altered, 1).expect_err("altered");
            assert_eq!(error.code, ErrorCode::Unauthenticated, "byte {index}");
        }
        let other = MediaPasses::with_key(&[8; 32]);
        let error = other.check(&pass, 1).expect_err("another process's key");
        assert!(error.message.contains("not issued"), "{}", error.message);
        for length in [0, 1, PASS_BYTES - 1, PASS_BYTES + 1] {
            let garbage = vec![0u8; length];
            assert_eq!(
                passes.check(&garbage, 1).map_err(|error| error.code),
                Err(ErrorCode::Unauthenticated)
            );
        }
        assert!(
            passes
                .issue(device(), &[1; 15], Direction::Upload, 0)
                .is_none(),
            "a blob id is 16 bytes"
        );
    }
}
