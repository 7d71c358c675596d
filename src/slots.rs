//! A slab without a per-slot tag: values whose type has a niche (an enum, a non-null
//! pointer, a file descriptor) are kept as `Option<T>` at `T`'s own size, and the vacant
//! keys wait in a side heap. `slab::Slab` spends 8 bytes per slot on its entry tag and
//! free-list link, which for the shard's connection and user tables was 8 bytes on every
//! idle connection, twice.
//!
//! The lowest vacant key is filled first, so the values stay packed at the low end, and
//! once a crowd has gone the vacant end of the table can give its pages back to the OS
//! (`release_tail`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A vacant tail smaller than this is kept: not worth a system call.
const RELEASE_MIN_BYTES: usize = 64 << 10;

/// Values by `u32` key; a removed key is reused by a later insert (lowest first).
pub struct Slots<T> {
    entries: Vec<Option<T>>,
    /// Vacant keys below `entries.len()`, the lowest on top.
    free: BinaryHeap<Reverse<u32>>,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Slots<T> {
    /// No values.
    pub fn new() -> Self {
        Slots {
            entries: Vec::new(),
            free: BinaryHeap::new(),
            len: 0,
        }
    }

    /// No values, with room for `n` before the table first grows. A large table's room
    /// is address space only (the allocator maps it; pages become resident as slots
    /// fill), and it spares the shard the copy of every slot at each doubling, and the
    /// holes the old copies leave in the heap.
    pub fn with_capacity(n: usize) -> Self {
        Slots {
            entries: Vec::with_capacity(n),
            free: BinaryHeap::new(),
            len: 0,
        }
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the highest key a value may hold now.
    pub fn key_bound(&self) -> u32 {
        self.entries.len() as u32
    }

    /// The key the next `insert` will use.
    pub fn vacant_key(&self) -> u32 {
        // Keys are u32: a shard holds far fewer than 2^32 connections or users.
        self.free
            .peek()
            .map_or(self.entries.len() as u32, |&Reverse(k)| k)
    }

    /// Stores `value` and returns its key (`vacant_key` before the call).
    pub fn insert(&mut self, value: T) -> u32 {
        self.len += 1;
        match self.free.pop() {
            Some(Reverse(key)) => {
                self.entries[key as usize] = Some(value);
                key
            }
            None => {
                self.entries.push(Some(value));
                (self.entries.len() - 1) as u32
            }
        }
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: u32) -> Option<&T> {
        self.entries.get(key as usize)?.as_ref()
    }

    /// The value at `key`, if any, for change.
    pub fn get_mut(&mut self, key: u32) -> Option<&mut T> {
        self.entries.get_mut(key as usize)?.as_mut()
    }

    /// Takes the value at `key` out, if any; the key becomes vacant.
    pub fn remove(&mut self, key: u32) -> Option<T> {
        let value = self.entries.get_mut(key as usize)?.take()?;
        self.len -= 1;
        self.free.push(Reverse(key));
        Some(value)
    }

    /// Drops the vacant slots at the end of the table and gives their pages back to the
    /// OS, when they span at least 64 KiB: the table keeps its room (address space), and
    /// a page is resident again only once a value is stored in it. Returns the bytes
    /// given back.
    pub fn release_tail(&mut self) -> usize {
        let size = std::mem::size_of::<Option<T>>();
        let vacant = self
            .entries
            .iter()
            .rev()
            .take_while(|e| e.is_none())
            .count();
        if vacant * size < RELEASE_MIN_BYTES {
            return 0;
        }
        let old = self.entries.len();
        let new = old - vacant;
        self.entries.truncate(new);
        let mut free = std::mem::take(&mut self.free).into_vec();
        free.retain(|&Reverse(k)| (k as usize) < new);
        free.shrink_to(free.len() * 2);
        self.free = BinaryHeap::from(free);
        discard_spare(&mut self.entries, old)
    }

    /// Every value with its key, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(k, v)| Some((k as u32, v.as_ref()?)))
    }

    /// Every value with its key, in key order, for change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut T)> + '_ {
        self.entries
            .iter_mut()
            .enumerate()
            .filter_map(|(k, v)| Some((k as u32, v.as_mut()?)))
    }
}

/// Gives the OS back the whole pages of `v`'s spare room up to `to` elements: they hold no
/// value, and read as zeros if touched again. Returns the bytes given back.
#[cfg(target_os = "linux")]
fn discard_spare<T>(v: &mut Vec<T>, to: usize) -> usize {
    let size = std::mem::size_of::<T>();
    // SAFETY: sysconf only reads a system constant.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let base = v.as_mut_ptr() as usize;
    let start = (base + v.len() * size).next_multiple_of(page);
    let end = (base + to.min(v.capacity()) * size) / page * page;
    if end <= start {
        return 0;
    }
    // SAFETY: [start, end) lies inside the vector's allocation, past its length: spare
    // room that holds no value (Rust treats it as uninitialized) and no allocator
    // bookkeeping (that lives outside the block). MADV_DONTNEED only swaps those pages for
    // zero-filled ones on their next touch, which a later push then writes over.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    if rc == 0 {
        end - start
    } else {
        0
    }
}

/// Elsewhere the pages stay: only the table's length shrinks.
#[cfg(not(target_os = "linux"))]
fn discard_spare<T>(_v: &mut Vec<T>, _to: usize) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_of_a_niche_type_costs_nothing() {
        assert_eq!(
            std::mem::size_of::<Option<Box<u64>>>(),
            std::mem::size_of::<Box<u64>>()
        );
        assert_eq!(
            std::mem::size_of::<Option<std::net::TcpStream>>(),
            std::mem::size_of::<std::net::TcpStream>()
        );
    }

    #[test]
    fn keys_are_reused_lowest_first() {
        let mut s = Slots::new();
        let a = s.insert("a");
        let b = s.insert("b");
        let c = s.insert("c");
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(s.remove(c), Some("c"));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(c), None, "a vacant key holds nothing");
        assert_eq!(s.len(), 1);
        assert_eq!(s.vacant_key(), a);
        assert_eq!(s.insert("d"), a);
        assert_eq!(s.vacant_key(), c);
        assert_eq!(s.insert("e"), c);
        assert_eq!(s.vacant_key(), 3);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![(0, &"d"), (1, &"b"), (2, &"e")]
        );
    }

    /// Pages of `v`'s spare room from `from` to `to` elements that are resident.
    fn resident_pages(v: &[Option<[u64; 8]>], from: usize, to: usize) -> usize {
        let page = 4096;
        let base = v.as_ptr() as usize;
        let start = (base + from * 72).next_multiple_of(page);
        let end = (base + to * 72) / page * page;
        let mut vec = vec![0u8; (end - start) / page];
        // SAFETY: mincore reads the residency of pages of this process's own mapping into
        // `vec`, which has one byte per page of the range.
        let rc =
            unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_vacant_tail_gives_its_pages_back_and_the_rest_stays() {
        let mut s: Slots<[u64; 8]> = Slots::with_capacity(20_000);
        assert_eq!(std::mem::size_of::<Option<[u64; 8]>>(), 72);
        for i in 0..10_000u64 {
            s.insert([i; 8]);
        }
        // A crowd at the end leaves, and some of the others.
        for k in (1_000..10_000).chain((0..1_000).step_by(2)) {
            assert!(s.remove(k).is_some());
        }
        assert!(resident_pages(&s.entries, 1_000, 10_000) > 100);
        let given = s.release_tail();
        assert!(given >= (9_000 * 72 / 4096 - 2) * 4096, "{given}");
        assert_eq!(resident_pages(&s.entries, 1_000, 10_000), 0);
        // What stayed is intact, and the vacant keys below the tail are used first.
        assert_eq!(s.len(), 500);
        assert!((1..1_000u32)
            .step_by(2)
            .all(|k| s.get(k) == Some(&[u64::from(k); 8])));
        assert_eq!(s.vacant_key(), 0);
        for _ in 0..500 {
            assert!(s.insert([7; 8]) < 1_000);
        }
        assert_eq!(s.insert([8; 8]), 1_000);
        assert_eq!(s.get(1_000), Some(&[8; 8]));
        // A short vacant tail is kept.
        s.remove(1_000);
        assert_eq!(s.release_tail(), 0);
        assert_eq!(s.vacant_key(), 1_000);
    }

    #[test]
    fn missing_keys_answer_none() {
        let mut s: Slots<u8> = Slots::new();
        assert!(s.is_empty());
        assert_eq!(s.get(7), None);
        assert_eq!(s.get_mut(u32::MAX), None);
        assert_eq!(s.remove(0), None);
        s.insert(1);
        for (_, v) in s.iter_mut() {
            *v += 1;
        }
        assert_eq!(s.get(0), Some(&2));
    }
}
