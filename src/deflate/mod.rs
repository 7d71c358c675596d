//! permessage-deflate (RFC 7692) the dense way: no connection keeps a compression window.
//!
//! Both directions are negotiated without context takeover (`negotiate.rs`), so every
//! message is compressed on its own. A push frame is compressed once, by the first shard
//! that has a compressing recipient for it, and the compressed frame travels with the
//! push (`Compressed`, shared by the shards' commands) for every other recipient, on
//! every shard. A connection keeps one byte: the window its client allows (0 when it did
//! not negotiate). Inbound compressed messages are inflated by the shard's one inflater,
//! bounded by `max_message_size` (`codec.rs`).

mod codec;
mod negotiate;

pub use codec::{Deflater, Inflater, DEFAULT_LEVEL};
pub use negotiate::{negotiate, Agreed};

use std::sync::OnceLock;

use crate::wire::Wire;

/// A push frame's compressed form, made at most once: by the first shard with a
/// compressing recipient for it (the others wait for it rather than compress it again),
/// then shared by every compressing recipient. `None` inside: the frame does not shrink.
#[derive(Default)]
pub struct Compressed(OnceLock<Option<Wire>>);

impl Compressed {
    /// The compressed form, made with `make` by the first caller.
    pub fn get_or_make(&self, make: impl FnOnce() -> Option<Wire>) -> Option<&Wire> {
        self.0.get_or_init(make).as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compressed_form_is_made_once() {
        let c = Compressed::default();
        let mut calls = 0;
        let z = c.get_or_make(|| {
            calls += 1;
            Some(Wire::from_static(b"z"))
        });
        assert_eq!(z.map(|w| &w[..]), Some(&b"z"[..]));
        assert!(c.get_or_make(|| panic!("made twice")).is_some());
        assert_eq!(calls, 1);
        let none = Compressed::default();
        assert!(none.get_or_make(|| None).is_none());
        assert!(none.get_or_make(|| panic!("asked twice")).is_none());
    }
}
