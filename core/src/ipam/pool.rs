//! A pool's configuration as the allocator uses it: parsed, validated and normalised
//! from an [`AddressPoolSpec`].

use std::net::IpAddr;

use thiserror::Error;

use super::range::{AddrRange, EntryError, Family, IndexMap, parse_entry};
use crate::crd::AddressPoolSpec;
use crate::selector::{Selector, SelectorError};

/// A validated pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    /// Creation time in seconds since the epoch; with the name it orders pools, and the
    /// later of two overlapping pools is the one in conflict. `None` sorts last.
    pub created: Option<i64>,
    /// Entries as ranges, sorted; they never overlap.
    pub ranges: Vec<AddrRange>,
    pub avoid_buggy_ips: bool,
    pub disabled: bool,
    pub auto_assign: bool,
    pub priority: Option<i32>,
    pub service_selector: Selector,
    pub namespace_selector: Selector,
}

/// Why an AddressPool spec is unusable. Messages name the offending field and entry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PoolConfigError {
    #[error("spec.addresses is empty")]
    Empty,
    #[error("spec.addresses[{index}]: {error}")]
    Entry { index: usize, error: EntryError },
    #[error("spec.addresses[{index}] {entry:?} overlaps spec.addresses[{other_index}] {other:?}")]
    Overlap {
        index: usize,
        entry: String,
        other_index: usize,
        other: String,
    },
    #[error("spec.{field}: {error}")]
    Selector {
        field: &'static str,
        error: SelectorError,
    },
}

impl PoolConfig {
    /// Parses and validates a pool spec.
    pub fn from_spec(
        name: &str,
        created: Option<i64>,
        spec: &AddressPoolSpec,
    ) -> Result<PoolConfig, PoolConfigError> {
        if spec.addresses.is_empty() {
            return Err(PoolConfigError::Empty);
        }
        let mut parsed: Vec<(AddrRange, usize)> = Vec::with_capacity(spec.addresses.len());
        for (index, entry) in spec.addresses.iter().enumerate() {
            let range =
                parse_entry(entry).map_err(|error| PoolConfigError::Entry { index, error })?;
            parsed.push((range, index));
        }
        parsed.sort();
        for pair in parsed.windows(2) {
            let ((a, ai), (b, bi)) = (pair[0], pair[1]);
            if a.overlaps(&b) {
                let (index, other_index) = (ai.max(bi), ai.min(bi));
                return Err(PoolConfigError::Overlap {
                    index,
                    entry: spec.addresses[index].clone(),
                    other_index,
                    other: spec.addresses[other_index].clone(),
                });
            }
        }
        let selector = |field, sel: &Option<_>| match sel {
            Some(sel) => {
                Selector::from_k8s(sel).map_err(|error| PoolConfigError::Selector { field, error })
            }
            None => Ok(Selector::default()),
        };
        Ok(PoolConfig {
            name: name.to_string(),
            created,
            ranges: parsed.into_iter().map(|(r, _)| r).collect(),
            avoid_buggy_ips: spec.avoid_buggy_ips.unwrap_or(false),
            disabled: spec.disabled.unwrap_or(false),
            auto_assign: spec.auto_assign.unwrap_or(true),
            priority: spec.priority,
            service_selector: selector("serviceSelector", &spec.service_selector)?,
            namespace_selector: selector("namespaceSelector", &spec.namespace_selector)?,
        })
    }

    /// A pool over `entries` with default settings (tests, benchmarks, examples).
    pub fn simple(name: &str, entries: &[&str]) -> Result<PoolConfig, PoolConfigError> {
        let spec = AddressPoolSpec {
            addresses: entries.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        };
        PoolConfig::from_spec(name, None, &spec)
    }

    /// Key that orders pools by age; the later of two overlapping pools is in conflict.
    pub fn age_key(&self) -> (i64, &str) {
        (self.created.unwrap_or(i64::MAX), &self.name)
    }

    /// Key that orders pools for automatic allocation: lower priority first, pools without
    /// a priority last, then by name.
    pub fn allocation_key(&self) -> (bool, i32, &str) {
        (
            self.priority.is_none(),
            self.priority.unwrap_or(0),
            &self.name,
        )
    }

    /// The index mapping of a family.
    pub fn index_map(&self, family: Family) -> IndexMap {
        IndexMap::new(family, self.avoid_buggy_ips)
    }

    /// Ranges of one family.
    pub fn ranges_of(&self, family: Family) -> impl Iterator<Item = &AddrRange> {
        self.ranges.iter().filter(move |r| r.family == family)
    }

    /// Whether the pool has any address of `family`.
    pub fn has_family(&self, family: Family) -> bool {
        self.ranges_of(family).next().is_some()
    }

    /// Whether `addr` lies in one of the pool's ranges (ignoring `avoidBuggyIPs`).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let i = self.ranges.partition_point(|r| r.last_addr() < addr);
        self.ranges.get(i).is_some_and(|r| r.contains(addr))
    }

    /// Number of assignable addresses of a family, saturating.
    pub fn size(&self, family: Family) -> u128 {
        let map = self.index_map(family);
        self.ranges_of(family)
            .fold(0u128, |n, r| n.saturating_add(map.usable(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_overlapping_entries() {
        let err = PoolConfig::simple("p", &["192.0.2.0/24", "198.51.100.1", "192.0.2.128/25"])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.addresses[2] \"192.0.2.128/25\" overlaps spec.addresses[0] \"192.0.2.0/24\""
        );
    }

    #[test]
    fn names_the_bad_entry_by_index() {
        let err = PoolConfig::simple("p", &["192.0.2.0/24", "192.0.2.300"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.addresses[1]: \"192.0.2.300\""),
            "{err}"
        );
        assert_eq!(
            PoolConfig::simple("p", &[]).unwrap_err(),
            PoolConfigError::Empty
        );
    }

    #[test]
    fn sizes_mixed_family_pools() {
        let p =
            PoolConfig::simple("p", &["2001:db8::/64", "192.0.2.0/24", "198.51.100.7"]).unwrap();
        assert_eq!(p.size(Family::V4), 257);
        assert_eq!(p.size(Family::V6), 1 << 64);
        assert!(p.contains("198.51.100.7".parse().unwrap()));
        assert!(!p.contains("198.51.100.8".parse().unwrap()));
        assert_eq!(
            p.ranges[0].family,
            Family::V4,
            "ranges are sorted, IPv4 first"
        );
    }
}
