//! Address arithmetic for pools: families, parsed pool entries, and the mapping between
//! addresses and the dense "index space" the free sets work in.
//!
//! Every address is handled as a `u128` inside its family. A pool that avoids "buggy"
//! IPv4 addresses (x.x.x.0 and x.x.x.255, which some old firmware drops) is mapped onto a
//! gap-free index space with 254 usable indexes per /24, so that the allocator never has
//! to skip addresses one by one and never materialises a pool's addresses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

/// An IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of an address.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The other family.
    pub fn other(self) -> Family {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }

    /// Position in per-family arrays.
    pub fn idx(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// Bits in an address of this family.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// Kubernetes' spelling (`IPv4`, `IPv6`), as in `spec.ipFamilies`.
    pub fn as_k8s(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// Builds an address of this family from its numeric value.
    pub fn addr(self, value: u128) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_k8s())
    }
}

/// The numeric value of an address within its family.
pub fn addr_value(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// An inclusive range of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    pub family: Family,
    pub first: u128,
    pub last: u128,
}

impl AddrRange {
    /// A range from two addresses of the same family, `first <= last`.
    pub fn new(first: IpAddr, last: IpAddr) -> Option<AddrRange> {
        let family = Family::of(first);
        (family == Family::of(last) && addr_value(first) <= addr_value(last)).then(|| AddrRange {
            family,
            first: addr_value(first),
            last: addr_value(last),
        })
    }

    pub fn first_addr(&self) -> IpAddr {
        self.family.addr(self.first)
    }

    pub fn last_addr(&self) -> IpAddr {
        self.family.addr(self.last)
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        Family::of(addr) == self.family && (self.first..=self.last).contains(&addr_value(addr))
    }

    pub fn overlaps(&self, other: &AddrRange) -> bool {
        self.family == other.family && self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first_addr())
        } else {
            write!(f, "{}-{}", self.first_addr(), self.last_addr())
        }
    }
}

/// Why a pool entry could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EntryError {
    #[error(
        "{entry:?} is not an IP address, a CIDR (192.0.2.0/24) or a range (192.0.2.10-192.0.2.20)"
    )]
    Malformed { entry: String },
    #[error("{entry:?}: prefix length {len} is longer than {max} for {family}")]
    PrefixTooLong {
        entry: String,
        len: u32,
        max: u8,
        family: Family,
    },
    #[error("{entry:?} has host bits set; the network is {network}/{len}")]
    HostBitsSet {
        entry: String,
        network: IpAddr,
        len: u8,
    },
    #[error("{entry:?} is reversed: {first} comes after {last}")]
    Reversed {
        entry: String,
        first: IpAddr,
        last: IpAddr,
    },
    #[error("{entry:?} mixes IPv4 and IPv6; a range must stay in one family")]
    MixedFamily { entry: String },
}

/// Parses one `spec.addresses` entry: a CIDR, a `first-last` range or a single address.
///
/// Host bits in a CIDR are an error rather than silently masked: `192.0.2.5/24` is more
/// likely a typo than a request for the whole /24, and guessing would hand out addresses
/// the admin did not mean to give.
pub fn parse_entry(entry: &str) -> Result<AddrRange, EntryError> {
    let text = entry.trim();
    let malformed = || EntryError::Malformed {
        entry: entry.to_string(),
    };
    if let Some((addr, len)) = text.split_once('/') {
        let addr: IpAddr = addr.trim().parse().map_err(|_| malformed())?;
        let len: u32 = len.trim().parse().map_err(|_| malformed())?;
        let family = Family::of(addr);
        let bits = family.bits();
        if len > u32::from(bits) {
            return Err(EntryError::PrefixTooLong {
                entry: entry.to_string(),
                len,
                max: bits,
                family,
            });
        }
        let host_bits = u32::from(bits) - len;
        let host_mask: u128 = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let value = addr_value(addr);
        if value & host_mask != 0 {
            return Err(EntryError::HostBitsSet {
                entry: entry.to_string(),
                network: family.addr(value & !host_mask),
                len: len as u8,
            });
        }
        return Ok(AddrRange {
            family,
            first: value,
            last: value | host_mask,
        });
    }
    if let Some((first, last)) = text.split_once('-') {
        let first: IpAddr = first.trim().parse().map_err(|_| malformed())?;
        let last: IpAddr = last.trim().parse().map_err(|_| malformed())?;
        if Family::of(first) != Family::of(last) {
            return Err(EntryError::MixedFamily {
                entry: entry.to_string(),
            });
        }
        return AddrRange::new(first, last).ok_or(EntryError::Reversed {
            entry: entry.to_string(),
            first,
            last,
        });
    }
    let addr: IpAddr = text.parse().map_err(|_| malformed())?;
    Ok(AddrRange::new(addr, addr).expect("a single address is a valid range"))
}

/// Maps addresses of one family to a dense index space and back.
///
/// Without `avoid_buggy` the mapping is the identity. With it (IPv4 only), x.x.x.0 and
/// x.x.x.255 have no index and every /24 contributes 254 consecutive indexes, so a
/// contiguous address range maps to a contiguous index range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexMap {
    avoid_buggy: bool,
}

impl IndexMap {
    pub fn new(family: Family, avoid_buggy_ips: bool) -> IndexMap {
        IndexMap {
            avoid_buggy: avoid_buggy_ips && family == Family::V4,
        }
    }

    /// Whether the address is excluded from allocation by this mapping.
    pub fn excluded(&self, value: u128) -> bool {
        self.avoid_buggy && matches!(value & 0xff, 0 | 0xff)
    }

    /// The index of an address, or `None` when it is excluded.
    pub fn index(&self, value: u128) -> Option<u128> {
        if !self.avoid_buggy {
            return Some(value);
        }
        let low = value & 0xff;
        (low != 0 && low != 0xff).then(|| (value >> 8) * 254 + (low - 1))
    }

    /// The address of an index.
    pub fn value(&self, index: u128) -> u128 {
        if !self.avoid_buggy {
            return index;
        }
        ((index / 254) << 8) | (index % 254 + 1)
    }

    /// The index range covering the usable addresses of `range`, or `None` when it has
    /// no usable address.
    pub fn index_range(&self, range: &AddrRange) -> Option<(u128, u128)> {
        if !self.avoid_buggy {
            return Some((range.first, range.last));
        }
        let first = match range.first & 0xff {
            0 => range.first + 1,
            0xff => range.first + 2,
            _ => range.first,
        };
        let last = match range.last & 0xff {
            0xff => range.last - 1,
            0 => range.last.checked_sub(2)?,
            _ => range.last,
        };
        if first > last {
            return None;
        }
        Some((self.index(first)?, self.index(last)?))
    }

    /// How many usable addresses `range` has, saturating at `u128::MAX`.
    pub fn usable(&self, range: &AddrRange) -> u128 {
        self.index_range(range)
            .map_or(0, |(a, b)| (b - a).saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_the_three_entry_forms_in_both_families() {
        let cidr = parse_entry("192.0.2.0/24").unwrap();
        assert_eq!(
            (cidr.first_addr(), cidr.last_addr()),
            (ip("192.0.2.0"), ip("192.0.2.255"))
        );
        let range = parse_entry(" 198.51.100.10 - 198.51.100.20 ").unwrap();
        assert_eq!(range.to_string(), "198.51.100.10-198.51.100.20");
        let single = parse_entry("203.0.113.7").unwrap();
        assert_eq!((single.first, single.last), (single.first, single.first));
        let v6 = parse_entry("2001:db8::/64").unwrap();
        assert_eq!(v6.family, Family::V6);
        assert_eq!(v6.last - v6.first, u64::MAX as u128);
        let v6range = parse_entry("2001:db8::1-2001:db8::ff").unwrap();
        assert_eq!(v6range.last - v6range.first, 0xfe);
        let all = parse_entry("::/0").unwrap();
        assert_eq!((all.first, all.last), (0, u128::MAX));
    }

    #[test]
    fn rejects_bad_entries_naming_them() {
        for (entry, wanted) in [
            ("192.0.2.0/33", "prefix length 33 is longer than 32"),
            ("192.0.2.5/24", "host bits set; the network is 192.0.2.0/24"),
            ("192.0.2.20-192.0.2.10", "reversed"),
            ("192.0.2.1-2001:db8::1", "mixes IPv4 and IPv6"),
            ("192.0.2", "is not an IP address"),
            ("", "is not an IP address"),
            ("192.0.2.0/x", "is not an IP address"),
            ("a-b", "is not an IP address"),
        ] {
            let err = parse_entry(entry).unwrap_err().to_string();
            assert!(err.contains(wanted), "{entry}: {err}");
            assert!(err.contains(&format!("{entry:?}")), "{entry}: {err}");
        }
    }

    #[test]
    fn buggy_index_map_skips_dot_zero_and_dot_255() {
        let m = IndexMap::new(Family::V4, true);
        let v = |s: &str| addr_value(ip(s));
        assert!(m.excluded(v("192.0.2.0")) && m.excluded(v("192.0.2.255")));
        assert_eq!(m.index(v("192.0.2.0")), None);
        let i1 = m.index(v("192.0.2.1")).unwrap();
        let i254 = m.index(v("192.0.2.254")).unwrap();
        assert_eq!(i254 - i1, 253);
        assert_eq!(m.value(i254 + 1), v("192.0.3.1"));
        let r = parse_entry("192.0.2.255-192.0.4.0").unwrap();
        assert_eq!(m.usable(&r), 254);
        assert_eq!(m.usable(&parse_entry("192.0.2.0/24").unwrap()), 254);
        assert_eq!(m.usable(&parse_entry("192.0.2.255/32").unwrap()), 0);
        assert_eq!(m.usable(&parse_entry("192.0.2.255-192.0.3.0").unwrap()), 0);
        assert_eq!(m.usable(&parse_entry("0.0.0.0/32").unwrap()), 0);
        // IPv6 is never affected.
        let m6 = IndexMap::new(Family::V6, true);
        assert_eq!(m6.index(0), Some(0));
        for i in 0..2000u128 {
            assert_eq!(m.index(m.value(i)), Some(i));
        }
    }
}
