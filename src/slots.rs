//! A slab without a per-slot tag: values whose type has a niche (an enum, a non-null
//! pointer, a file descriptor) are kept as `Option<T>` at `T`'s own size, and the vacant
//! keys wait on a side stack. `slab::Slab` spends 8 bytes per slot on its entry tag and
//! free-list link, which for the shard's connection and user tables was 8 bytes on every
//! idle connection, twice.

/// Values by `u32` key; a removed key is reused by the next insert (last freed first).
pub struct Slots<T> {
    entries: Vec<Option<T>>,
    /// Vacant keys, the next one to fill last.
    free: Vec<u32>,
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
            free: Vec::new(),
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
            free: Vec::new(),
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

    /// The key the next `insert` will use.
    pub fn vacant_key(&self) -> u32 {
        // Keys are u32: a shard holds far fewer than 2^32 connections or users.
        self.free
            .last()
            .copied()
            .unwrap_or(self.entries.len() as u32)
    }

    /// Stores `value` and returns its key (`vacant_key` before the call).
    pub fn insert(&mut self, value: T) -> u32 {
        self.len += 1;
        match self.free.pop() {
            Some(key) => {
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
        self.free.push(key);
        Some(value)
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
    fn keys_are_reused_last_freed_first() {
        let mut s = Slots::new();
        let a = s.insert("a");
        let b = s.insert("b");
        let c = s.insert("c");
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(c), Some("c"));
        assert_eq!(s.remove(c), None, "a vacant key holds nothing");
        assert_eq!(s.len(), 1);
        assert_eq!(s.vacant_key(), c);
        assert_eq!(s.insert("d"), c);
        assert_eq!(s.vacant_key(), a);
        assert_eq!(s.insert("e"), a);
        assert_eq!(s.vacant_key(), 3);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![(0, &"e"), (1, &"b"), (2, &"d")]
        );
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
