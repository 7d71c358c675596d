//! A user's session keys in 16 bytes: up to three inline (most users have one or two),
//! more in a boxed `Vec`. `SmallVec<[u32; 4]>` took 24 bytes of every user entry. A user
//! without sessions keeps, in the same 16 bytes, the tick its entry is removed at.

use std::ops::Deref;

/// Keys held inline before spilling to the heap.
const INLINE: usize = 3;

/// Connection keys of one user's sessions, oldest first.
#[derive(Clone, Debug)]
pub(super) enum Sessions {
    /// `len` keys in `keys[..len]`.
    Inline { len: u8, keys: [u32; INLINE] },
    /// More than fit inline.
    // Boxed on purpose: a `Vec` inline would make every user entry 8 bytes larger.
    #[allow(clippy::box_collection)]
    Spilled(Box<Vec<u32>>),
    /// No session since the last one left; the entry is removed at tick `until` (kept
    /// here, not in a field of every entry).
    Retained { until: u32 },
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::Inline {
            len: 0,
            keys: [0; INLINE],
        }
    }
}

impl Sessions {
    /// One session.
    pub(super) fn one(key: u32) -> Sessions {
        Sessions::Inline {
            len: 1,
            keys: [key, 0, 0],
        }
    }

    /// No session, the entry kept until tick `until`.
    pub(super) fn retained(until: u32) -> Sessions {
        Sessions::Retained { until }
    }

    /// The tick a user without sessions is removed at; `None` while it has some (or was
    /// never given one).
    pub(super) fn retained_until(&self) -> Option<u32> {
        match self {
            Sessions::Retained { until } => Some(*until),
            _ => None,
        }
    }

    /// Adds `key` as the newest.
    pub(super) fn push(&mut self, key: u32) {
        match self {
            Sessions::Retained { .. } => *self = Sessions::one(key),
            Sessions::Inline { len, keys } if usize::from(*len) < INLINE => {
                keys[usize::from(*len)] = key;
                *len += 1;
            }
            Sessions::Inline { keys, .. } => {
                let mut v = Vec::with_capacity(INLINE * 2);
                v.extend_from_slice(keys);
                v.push(key);
                *self = Sessions::Spilled(Box::new(v));
            }
            Sessions::Spilled(v) => v.push(key),
        }
    }

    /// Removes the key at `pos`, keeping the others' order; back inline when they fit.
    pub(super) fn remove(&mut self, pos: usize) {
        match self {
            Sessions::Retained { .. } => {}
            Sessions::Inline { len, keys } => {
                let n = usize::from(*len);
                if pos < n {
                    keys.copy_within(pos + 1..n, pos);
                    *len -= 1;
                }
            }
            Sessions::Spilled(v) => {
                if pos < v.len() {
                    v.remove(pos);
                }
                if v.len() <= INLINE {
                    let mut keys = [0; INLINE];
                    keys[..v.len()].copy_from_slice(v);
                    *self = Sessions::Inline {
                        len: v.len() as u8,
                        keys,
                    };
                }
            }
        }
    }
}

impl Deref for Sessions {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        match self {
            Sessions::Inline { len, keys } => &keys[..usize::from(*len)],
            Sessions::Spilled(v) => v,
            Sessions::Retained { .. } => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bytes_with_a_niche() {
        assert_eq!(std::mem::size_of::<Sessions>(), 16);
        assert_eq!(std::mem::size_of::<Option<Sessions>>(), 16);
    }

    #[test]
    fn keeps_order_through_spill_and_back() {
        let mut s = Sessions::one(10);
        for k in 11..16 {
            s.push(k);
        }
        assert!(matches!(s, Sessions::Spilled(_)));
        assert_eq!(&s[..], &[10, 11, 12, 13, 14, 15]);
        s.remove(0);
        s.remove(2);
        assert_eq!(&s[..], &[11, 12, 14, 15]);
        s.remove(3);
        assert!(
            matches!(s, Sessions::Inline { .. }),
            "three fit inline again"
        );
        assert_eq!(&s[..], &[11, 12, 14]);
        s.remove(1);
        assert_eq!(&s[..], &[11, 14]);
        s.push(20);
        assert_eq!(&s[..], &[11, 14, 20]);
        s.remove(9);
        assert_eq!(s.len(), 3, "a position past the end removes nothing");
        s.remove(0);
        s.remove(0);
        s.remove(0);
        assert!(s.is_empty());
        assert!(Sessions::default().is_empty());
    }

    #[test]
    fn a_retained_user_keeps_its_deadline_until_a_session_comes_back() {
        let mut s = Sessions::retained(700);
        assert!(s.is_empty());
        assert_eq!(s.retained_until(), Some(700));
        s.remove(0);
        assert_eq!(s.retained_until(), Some(700), "nothing to remove");
        s.push(5);
        assert_eq!(&s[..], &[5]);
        assert_eq!(s.retained_until(), None);
        assert_eq!(Sessions::one(1).retained_until(), None);
        assert_eq!(Sessions::default().retained_until(), None);
    }
}
