//! [`IdRanges`]: a set of u64 ids stored as disjoint, non-adjacent inclusive
//! ranges. It holds the "resolved above the watermark" ids (acked or
//! dead-lettered out of order), so its size is the number of *gaps* in the
//! delivery order, not the number of acks.
//!
//! Invariant: ranges in the map never overlap and never touch (`end + 1 <
//! next.start`); `insert` and `remove_through` restore it by merging/splitting.

use std::collections::BTreeMap;

/// A set of ids as merged inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IdRanges {
    /// start -> end (inclusive).
    map: BTreeMap<u64, u64>,
}

impl IdRanges {
    /// True if `id` is in the set.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.map
            .range(..=id)
            .next_back()
            .is_some_and(|(_, &end)| end >= id)
    }

    /// Adds `id`; merges with neighbouring ranges.
    pub(crate) fn insert(&mut self, id: u64) {
        self.insert_range(id, id);
    }

    /// Adds every id in `start..=end` (no-op if `start > end`).
    pub(crate) fn insert_range(&mut self, start: u64, end: u64) {
        if start > end {
            return;
        }
        let mut lo = start;
        let mut hi = end;
        // Merge with a range that starts before `start` and reaches it.
        if let Some((&s, &e)) = self.map.range(..start).next_back() {
            if e.saturating_add(1) >= start {
                lo = s;
                hi = hi.max(e);
            }
        }
        // Absorb every range that starts inside or right after [lo, hi].
        loop {
            let next = self
                .map
                .range(lo..)
                .next()
                .filter(|(&s, _)| s <= hi.saturating_add(1))
                .map(|(&s, &e)| (s, e));
            match next {
                Some((s, e)) => {
                    self.map.remove(&s);
                    hi = hi.max(e);
                }
                None => break,
            }
        }
        self.map.insert(lo, hi);
    }

    /// Removes every id `<= w`.
    pub(crate) fn remove_through(&mut self, w: u64) {
        let Some(cut) = w.checked_add(1) else {
            self.map.clear();
            return;
        };
        let mut upper = self.map.split_off(&cut);
        if let Some((_, &e)) = self.map.iter().next_back() {
            if e >= cut {
                upper.insert(cut, e);
            }
        }
        self.map = upper;
    }

    /// The ranges in ascending order.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&s, &e)| (s, e))
    }

    /// Number of stored ranges.
    pub(crate) fn range_count(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::IdRanges;

    #[test]
    fn merges_adjacent_and_overlapping_ids_into_one_range() {
        let mut r = IdRanges::default();
        for id in [5, 7, 6, 1, 2, 10] {
            r.insert(id);
        }
        assert_eq!(
            r.ranges().collect::<Vec<_>>(),
            vec![(1, 2), (5, 7), (10, 10)]
        );
        r.insert_range(3, 9);
        assert_eq!(r.ranges().collect::<Vec<_>>(), vec![(1, 10)]);
        assert!(r.contains(4) && !r.contains(11) && !r.contains(0));
    }

    #[test]
    fn remove_through_splits_a_straddling_range() {
        let mut r = IdRanges::default();
        r.insert_range(1, 10);
        r.insert_range(20, 30);
        r.remove_through(5);
        assert_eq!(r.ranges().collect::<Vec<_>>(), vec![(6, 10), (20, 30)]);
        r.remove_through(u64::MAX);
        assert_eq!(r.range_count(), 0);
    }
}
