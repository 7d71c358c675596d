//! Bytes on their way to sockets, shared by every outbound queue, history ring and shard
//! that holds them: one allocation carrying its reference count and length in front of
//! the bytes, held through one pointer. A queued or retained frame thus costs 8 bytes per
//! holder plus 16 in its allocation, where `bytes::Bytes` cost 32 per holder plus a
//! separate 32-byte shared header and the spare capacity of the buffer it was built in.

use std::fmt;
use std::ops::Deref;

use triomphe::ThinArc;

/// An immutable, shared byte string (a frame, or a piece of the HTTP upgrade answer).
#[derive(Clone, PartialEq, Eq)]
pub struct Wire(ThinArc<(), u8>);

impl Wire {
    /// A copy of `b` in an allocation of exactly its size.
    pub fn copy_from_slice(b: &[u8]) -> Wire {
        Wire(ThinArc::from_header_and_slice((), b))
    }

    /// A copy of a constant.
    pub fn from_static(b: &'static [u8]) -> Wire {
        Wire::copy_from_slice(b)
    }
}

impl Deref for Wire {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0.slice
    }
}

impl AsRef<[u8]> for Wire {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl From<Vec<u8>> for Wire {
    fn from(v: Vec<u8>) -> Wire {
        Wire::copy_from_slice(&v)
    }
}

impl From<&[u8]> for Wire {
    fn from(b: &[u8]) -> Wire {
        Wire::copy_from_slice(b)
    }
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 200;
        let text = String::from_utf8_lossy(&self[..self.len().min(SHOWN)]);
        let more = if self.len() > SHOWN { "…" } else { "" };
        write!(f, "Wire({} bytes: {text:?}{more})", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pointer_shared_by_clones() {
        assert_eq!(std::mem::size_of::<Wire>(), 8);
        assert_eq!(std::mem::size_of::<Option<Wire>>(), 8, "niche for Option");
        let a = Wire::from(b"hello".to_vec());
        let b = a.clone();
        assert_eq!(&*b, b"hello");
        assert_eq!(a.as_ptr(), b.as_ptr(), "clones share the bytes");
        assert_eq!(a, Wire::from_static(b"hello"));
        assert_ne!(a, Wire::from_static(b"hellp"));
        let empty = Wire::copy_from_slice(&[]);
        assert!(empty.is_empty());
        assert_eq!(
            format!("{:?}", Wire::from_static(b"ab")),
            "Wire(2 bytes: \"ab\")"
        );
    }

    #[test]
    fn outlives_the_original_holder() {
        let w = {
            let a = Wire::from(vec![7u8; 1000]);
            let b = a.clone();
            drop(a);
            b
        };
        assert_eq!(w.len(), 1000);
        assert!(w.iter().all(|&x| x == 7));
    }
}
