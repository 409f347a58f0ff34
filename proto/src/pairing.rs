//! Pairing codes: what `relay link` shows on an existing device and the new device types in.
//!
//! A code names the account's home region (so the new device's edge knows where to forward
//! its request without any account being named) and [`PAIRING_CODE_SECRET_BYTES`] random
//! bytes, written as eight characters of Crockford's base 32 in two groups: `1-K7QD-M2XA`.
//! Parsing is forgiving in the ways people mistype (case, `O` for `0`, `I`/`L` for `1`,
//! missing dashes) and refuses anything else with a typed error. The region decides whether a
//! code exists, expired or was used; this module only reads and writes the text.

use std::fmt;
use std::str::FromStr;

use crate::error::ProtoError;
use crate::ids::RegionId;
use crate::limits::PAIRING_CODE_SECRET_BYTES;

/// Crockford's base-32 alphabet (no I, L, O, U).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters of the secret part of a code.
const SECRET_CHARS: usize = PAIRING_CODE_SECRET_BYTES * 8 / 5;

/// A pairing code: the home region and the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairingCode {
    /// The home region of the account that opened the pairing.
    pub region: RegionId,
    /// The random part.
    pub secret: [u8; PAIRING_CODE_SECRET_BYTES],
}

impl PairingCode {
    /// The secret as the canonical eight characters (no dash): the region's key for the code.
    pub fn secret_text(&self) -> String {
        let mut bits = 0u64;
        for byte in self.secret {
            bits = (bits << 8) | u64::from(byte);
        }
        (0..SECRET_CHARS)
            .rev()
            .map(|index| char::from(ALPHABET[((bits >> (index * 5)) & 31) as usize]))
            .collect()
    }
}

impl fmt::Display for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = self.secret_text();
        write!(f, "{}-{}-{}", self.region.0, &secret[..4], &secret[4..])
    }
}

impl FromStr for PairingCode {
    type Err = ProtoError;

    fn from_str(text: &str) -> Result<Self, ProtoError> {
        let invalid = || {
            ProtoError::invalid(format!(
                "{text:?} is not a pairing code (a region number and eight characters, like 1-K7QD-M2XA)"
            ))
        };
        let text = text.trim();
        let (region, secret) = text.split_once('-').ok_or_else(invalid)?;
        let region: u32 = region.parse().map_err(|_| invalid())?;
        if region == 0 {
            return Err(invalid());
        }
        let mut bits = 0u64;
        let mut chars = 0;
        for character in secret.chars() {
            if character == '-' || character == ' ' {
                continue;
            }
            let value = match character.to_ascii_uppercase() {
                'O' => 0,
                'I' | 'L' => 1,
                upper => ALPHABET
                    .iter()
                    .position(|&letter| char::from(letter) == upper)
                    .ok_or_else(invalid)? as u64,
            };
            chars += 1;
            if chars > SECRET_CHARS {
                return Err(invalid());
            }
            bits = (bits << 5) | value;
        }
        if chars != SECRET_CHARS {
            return Err(invalid());
        }
        let mut secret = [0u8; PAIRING_CODE_SECRET_BYTES];
        for (index, byte) in secret.iter_mut().enumerate() {
            *byte = (bits >> (8 * (PAIRING_CODE_SECRET_BYTES - 1 - index))) as u8;
        }
        Ok(PairingCode {
            region: RegionId(region),
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_forgive_typing() {
        for secret in [[0u8; 5], [0xff; 5], [0x12, 0x34, 0x56, 0x78, 0x9a]] {
            let code = PairingCode {
                region: RegionId(3),
                secret,
            };
            let text = code.to_string();
            assert_eq!(text.len(), "3-XXXX-XXXX".len(), "{text}");
            assert_eq!(text.parse::<PairingCode>().expect("parses"), code);
            let sloppy = text.to_lowercase().replace('-', "").replacen('3', "3-", 1);
            assert_eq!(sloppy.parse::<PairingCode>().expect("parses"), code);
        }
        let code: PairingCode = "1-0000-0001".parse().expect("parses");
        assert_eq!("1-oooo-ooo1".parse::<PairingCode>().expect("parses"), code);
        assert_eq!("1-OOOO-OOOL".parse::<PairingCode>().expect("parses"), code);
    }

    #[test]
    fn anything_else_is_a_typed_error() {
        for bad in [
            "",
            "1",
            "0-0000-0000",
            "x-0000-0000",
            "1-0000-000",
            "1-0000-00000",
            "1-0000-000U",
            "1-ÄÄÄÄ-0000",
            "99999999999-0000-0000",
        ] {
            let error = bad.parse::<PairingCode>().expect_err(bad);
            assert_eq!(error.code, crate::ErrorCode::Malformed, "{bad}");
        }
    }
}
