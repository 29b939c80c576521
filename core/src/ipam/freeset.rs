//! A set of free indexes stored as disjoint, non-adjacent intervals.
//!
//! Memory and time depend on how fragmented the free space is (at most one interval per
//! allocated address plus one per pool entry), never on the size of the pool: a /8 or a
//! /64 starts as a single interval. Every operation is O(log k) in the interval count.

use std::collections::BTreeMap;

/// Free indexes of one pool and family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FreeSet {
    /// start -> end (inclusive); intervals never overlap or touch.
    intervals: BTreeMap<u128, u128>,
    /// Number of free indexes, saturating at `u128::MAX`.
    count: u128,
}

impl FreeSet {
    pub fn new() -> FreeSet {
        FreeSet::default()
    }

    /// Number of free indexes.
    pub fn count(&self) -> u128 {
        self.count
    }

    /// Number of intervals (fragmentation), for tests and benchmarks.
    pub fn intervals(&self) -> usize {
        self.intervals.len()
    }

    /// The lowest free index.
    pub fn first(&self) -> Option<u128> {
        self.intervals.first_key_value().map(|(s, _)| *s)
    }

    /// Whether `i` is free.
    pub fn contains(&self, i: u128) -> bool {
        self.intervals
            .range(..=i)
            .next_back()
            .is_some_and(|(_, end)| *end >= i)
    }

    /// Whether any index in `[start, end]` is in the set.
    pub fn intersects(&self, start: u128, end: u128) -> bool {
        self.intervals
            .range(..=end)
            .next_back()
            .is_some_and(|(_, e)| *e >= start)
    }

    /// Adds the interval `[start, end]`, merging with neighbours. Indexes already free
    /// are not counted twice.
    pub fn insert_range(&mut self, start: u128, end: u128) {
        debug_assert!(start <= end);
        let (mut start, mut end) = (start, end);
        // Absorb every interval that overlaps or touches [start, end].
        let mut absorbed: Vec<(u128, u128)> = Vec::new();
        if let Some((s, e)) = self.intervals.range(..=start).next_back()
            && e.checked_add(1).is_none_or(|next| next >= start)
        {
            absorbed.push((*s, *e));
        }
        let upper = end.saturating_add(1);
        let predecessor = absorbed.first().map(|(s, _)| *s);
        absorbed.extend(
            self.intervals
                .range(start..=upper)
                .map(|(s, e)| (*s, *e))
                .filter(|(s, _)| Some(*s) != predecessor),
        );
        for (s, e) in absorbed {
            self.intervals.remove(&s);
            self.count = self.count.saturating_sub((e - s).saturating_add(1));
            start = start.min(s);
            end = end.max(e);
        }
        self.intervals.insert(start, end);
        self.count = self.count.saturating_add((end - start).saturating_add(1));
    }

    /// Marks `i` free. Returns false if it already was.
    pub fn insert(&mut self, i: u128) -> bool {
        if self.contains(i) {
            return false;
        }
        self.insert_range(i, i);
        true
    }

    /// Marks `i` used. Returns false if it was not free.
    pub fn remove(&mut self, i: u128) -> bool {
        let Some((&s, &e)) = self.intervals.range(..=i).next_back() else {
            return false;
        };
        if e < i {
            return false;
        }
        self.intervals.remove(&s);
        if s < i {
            self.intervals.insert(s, i - 1);
        }
        if i < e {
            self.intervals.insert(i + 1, e);
        }
        self.count = self.count.saturating_sub(1);
        true
    }

    /// Takes the lowest free index.
    pub fn take_first(&mut self) -> Option<u128> {
        let i = self.first()?;
        self.remove(i);
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_huge_range_is_one_interval() {
        let mut f = FreeSet::new();
        f.insert_range(0, u64::MAX as u128);
        assert_eq!(f.count(), 1u128 << 64);
        assert_eq!(f.take_first(), Some(0));
        assert!(f.remove(1 << 40));
        assert_eq!(f.intervals(), 2);
        assert!(f.insert(1 << 40));
        assert!(f.insert(0));
        assert_eq!(f.intervals(), 1);
        assert_eq!(f.count(), 1u128 << 64);
    }

    #[test]
    fn the_whole_ipv6_space_saturates_its_count() {
        let mut f = FreeSet::new();
        f.insert_range(0, u128::MAX);
        assert_eq!(f.count(), u128::MAX);
        assert!(f.remove(u128::MAX));
        assert!(f.contains(u128::MAX - 1));
        assert!(!f.contains(u128::MAX));
    }

    proptest! {
        #[test]
        fn matches_a_plain_set(ops in proptest::collection::vec((0u8..4, 0u128..64, 0u128..8), 1..200)) {
            let mut f = FreeSet::new();
            let mut model = BTreeSet::new();
            for (op, a, len) in ops {
                match op {
                    0 => { f.insert_range(a, a + len); model.extend(a..=a + len); }
                    1 => { prop_assert_eq!(f.insert(a), model.insert(a)); }
                    2 => { prop_assert_eq!(f.remove(a), model.remove(&a)); }
                    _ => {
                        let first = model.first().copied();
                        if let Some(x) = first { model.remove(&x); }
                        prop_assert_eq!(f.take_first(), first);
                    }
                }
                prop_assert_eq!(f.count(), model.len() as u128);
                for i in 0..80 { prop_assert_eq!(f.contains(i), model.contains(&i)); }
                // Intervals are disjoint and never touch.
                let mut prev: Option<u128> = None;
                for (s, e) in &f.intervals {
                    prop_assert!(s <= e);
                    if let Some(p) = prev { prop_assert!(*s > p + 1); }
                    prev = Some(*e);
                }
            }
        }
    }
}
