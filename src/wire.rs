//! Bytes on their way to sockets, shared by every outbound queue, history ring and shard
//! that holds them: one allocation carrying its reference count and length in front of
//! the bytes, held through one pointer. A queued or retained frame thus costs 8 bytes per
//! holder plus 16 in its allocation, where `bytes::Bytes` cost 32 per holder plus a
//! separate 32-byte shared header and the spare capacity of the buffer it was built in.
//!
//! The allocation also has room for the frame's permessage-deflate form (16 bytes), made
//! by the first sender with a compressing recipient and then shared by all the others.

use std::fmt;
use std::ops::Deref;
use std::sync::OnceLock;

use triomphe::ThinArc;

/// An immutable, shared byte string (a frame, or a piece of the HTTP upgrade answer).
#[derive(Clone)]
pub struct Wire(ThinArc<Deflated, u8>);

/// A frame's compressed form: unset until a compressing recipient needs it, then the
/// compressed frame, or `None` when the frame does not compress (or is not a data frame).
#[derive(Default)]
struct Deflated(OnceLock<Option<Wire>>);

impl Wire {
    /// A copy of `b` in an allocation of exactly its size.
    pub fn copy_from_slice(b: &[u8]) -> Wire {
        Wire(ThinArc::from_header_and_slice(Deflated::default(), b))
    }

    /// A copy of a constant.
    pub fn from_static(b: &'static [u8]) -> Wire {
        Wire::copy_from_slice(b)
    }

    /// The frame compressed for permessage-deflate, made with `deflate` by the first
    /// caller (concurrent callers wait for it rather than compress it again) and kept
    /// with the frame for every later one, on any thread.
    pub fn deflated(&self, deflate: impl FnOnce(&[u8]) -> Option<Wire>) -> Option<&Wire> {
        self.0
            .header
            .header
            .0
            .get_or_init(|| deflate(self))
            .as_ref()
    }

    /// The compressed form, if one was made.
    pub fn deflated_if_made(&self) -> Option<&Wire> {
        self.0.header.header.0.get().and_then(Option::as_ref)
    }
}

/// Two frames are equal when their bytes are (whether a compressed form was made or not).
impl PartialEq for Wire {
    fn eq(&self, other: &Wire) -> bool {
        self[..] == other[..]
    }
}

impl Eq for Wire {}

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
    fn the_compressed_form_is_made_once_and_shared() {
        let a = Wire::from(vec![b'a'; 100]);
        let b = a.clone();
        assert!(a.deflated_if_made().is_none());
        let mut calls = 0;
        let z = a.deflated(|bytes| {
            calls += 1;
            assert_eq!(bytes.len(), 100);
            Some(Wire::from_static(b"z"))
        });
        assert_eq!(z.map(|w| &w[..]), Some(&b"z"[..]));
        let again = b.deflated(|_| panic!("made twice"));
        assert_eq!(again.map(|w| &w[..]), Some(&b"z"[..]));
        assert_eq!(calls, 1);
        assert_eq!(a, Wire::from(vec![b'a'; 100]), "equality is by bytes");
        // A frame that does not compress is remembered as such.
        let c = Wire::from_static(b"x");
        assert!(c.deflated(|_| None).is_none());
        assert!(c.deflated(|_| panic!("asked twice")).is_none());
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
