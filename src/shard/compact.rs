//! Gives back what a crowd left behind in the shard's side tables. A hash map or deque
//! keeps its peak capacity after its entries go: after 15,000 subscribers, TLS clients or
//! users with history have left, their maps would keep 16-40 bytes a slot for good. Once a
//! table is at most a quarter full it is rebuilt at twice its length, so a table that
//! keeps its size is never rebuilt and one that shrinks is rebuilt O(1) times per entry.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};

use crate::reactor::TICK_MS;

use super::Shard;

/// Tables with fewer slots than this are left alone: a rebuild would free next to nothing.
const MIN_CAPACITY: usize = 64;
/// The shard looks at its tables once a second: a look is a few loads per table.
const COMPACT_TICKS: u32 = (1000 / TICK_MS) as u32;

impl Shard {
    /// Once a second: shrinks the side tables that departed connections, users and topics
    /// left mostly empty, and counts what that freed towards handing memory back to the
    /// OS (`budget::maybe_trim`).
    pub(super) fn compact_tables(&mut self) {
        if self.tick.wrapping_sub(self.last_compact) < COMPACT_TICKS {
            return;
        }
        self.last_compact = self.tick;
        let freed = self.conns.compact()
            + self.users.compact()
            + self.topics.compact()
            + self.streams.compact()
            + compact(&mut self.acks);
        self.published.compacted(freed);
    }
}

/// A table whose capacity can outgrow its length.
pub(super) trait Sparse {
    /// Entries held.
    fn len(&self) -> usize;
    /// Entries it can hold without growing.
    fn capacity(&self) -> usize;
    /// Rebuilds it with room for at least `min` entries.
    fn shrink(&mut self, min: usize);
    /// Heap bytes per unit of capacity, roughly (a hash table's control byte included).
    fn slot_bytes(&self) -> usize;
}

/// Whether a table of `len` entries and room for `cap` is worth rebuilding at `2 * len`:
/// at most a quarter full, and not small.
pub(super) fn is_sparse(len: usize, cap: usize) -> bool {
    cap >= MIN_CAPACITY && len * 4 <= cap
}

/// Rebuilds `table` at twice its length when it is at most a quarter full; returns the
/// heap bytes that freed, roughly (0 when it was left alone).
pub(super) fn compact<T: Sparse>(table: &mut T) -> usize {
    let cap = table.capacity();
    if !is_sparse(table.len(), cap) {
        return 0;
    }
    table.shrink(table.len() * 2);
    cap.saturating_sub(table.capacity()) * table.slot_bytes()
}

impl<K: Hash + Eq, V, S: BuildHasher> Sparse for HashMap<K, V, S> {
    fn len(&self) -> usize {
        HashMap::len(self)
    }
    fn capacity(&self) -> usize {
        HashMap::capacity(self)
    }
    fn shrink(&mut self, min: usize) {
        self.shrink_to(min);
    }
    fn slot_bytes(&self) -> usize {
        std::mem::size_of::<(K, V)>() + 1
    }
}

impl<K: Hash + Eq, S: BuildHasher> Sparse for HashSet<K, S> {
    fn len(&self) -> usize {
        HashSet::len(self)
    }
    fn capacity(&self) -> usize {
        HashSet::capacity(self)
    }
    fn shrink(&mut self, min: usize) {
        self.shrink_to(min);
    }
    fn slot_bytes(&self) -> usize {
        std::mem::size_of::<K>() + 1
    }
}

impl<T> Sparse for VecDeque<T> {
    fn len(&self) -> usize {
        VecDeque::len(self)
    }
    fn capacity(&self) -> usize {
        VecDeque::capacity(self)
    }
    fn shrink(&mut self, min: usize) {
        self.shrink_to(min);
    }
    fn slot_bytes(&self) -> usize {
        std::mem::size_of::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustc_hash::FxBuildHasher;

    #[test]
    fn a_table_a_quarter_full_is_rebuilt_at_twice_its_length() {
        let mut m: HashMap<u32, u64, FxBuildHasher> = HashMap::default();
        m.extend((0..10_000).map(|k| (k, 0)));
        let peak = m.capacity();
        m.retain(|&k, _| k < 2_000);
        let freed = compact(&mut m);
        assert!(
            m.capacity() >= 4_000 && m.capacity() <= peak / 2,
            "{}",
            m.capacity()
        );
        assert_eq!(
            freed,
            (peak - m.capacity()) * (std::mem::size_of::<(u32, u64)>() + 1)
        );
        assert_eq!(m.len(), 2_000);
        assert!((0..2_000).all(|k| m.contains_key(&k)));
    }

    #[test]
    fn a_table_more_than_a_quarter_full_or_small_is_left_alone() {
        let mut m: HashSet<u32, FxBuildHasher> = HashSet::default();
        m.extend(0..10_000);
        let peak = m.capacity();
        m.retain(|&k| k < peak as u32 / 4 + 1);
        assert_eq!(compact(&mut m), 0);
        assert_eq!(m.capacity(), peak);

        let mut small: VecDeque<u64> = VecDeque::with_capacity(MIN_CAPACITY - 1);
        small.push_back(1);
        let cap = small.capacity();
        assert_eq!(compact(&mut small), 0);
        assert_eq!(small.capacity(), cap);
    }

    #[test]
    fn an_emptied_deque_gives_its_buffer_back() {
        let mut q: VecDeque<u64> = (0..5_000).collect();
        q.clear();
        let freed = compact(&mut q);
        assert_eq!(q.capacity(), 0);
        assert!(freed >= 5_000 * 8, "{freed}");
        // Compacting again finds nothing to do.
        assert_eq!(compact(&mut q), 0);
    }
}
