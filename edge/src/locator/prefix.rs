//! Address arithmetic for routing: addresses as left-aligned bits, and client networks (CIDRs).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address as 128 bits aligned to the left (IPv4 in the top 32) and its width in bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct AddressBits {
    pub(super) bits: u128,
    pub(super) width: u8,
}

impl AddressBits {
    pub(super) fn of(address: IpAddr) -> Self {
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

    pub(super) fn masked(self, prefix_len: u8) -> Self {
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
    pub(super) fn common_prefix_len(self, other: Self) -> u8 {
        let common = (self.bits ^ other.bits).leading_zeros();
        // `common` is at most 128, so the conversion cannot fail.
        u8::try_from(common).unwrap_or(u8::MAX).min(self.width)
    }

    pub(super) fn to_ip(self) -> IpAddr {
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
pub(super) struct IpNetwork {
    pub(super) bits: AddressBits,
    pub(super) prefix_len: u8,
}

impl IpNetwork {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
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

    pub(super) fn contains(&self, address: AddressBits) -> bool {
        address.width == self.bits.width && address.masked(self.prefix_len) == self.bits
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.bits.to_ip(), self.prefix_len)
    }
}
