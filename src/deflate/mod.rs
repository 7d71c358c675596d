//! permessage-deflate (RFC 7692) the dense way: no connection keeps a compression window.
//!
//! Both directions are negotiated without context takeover (`negotiate.rs`), so every
//! message is compressed on its own. A push frame is compressed once, by the first shard
//! that has a compressing recipient for it, and the compressed frame is kept with the
//! frame (`Wire::deflated`) for every other recipient, on every shard. A connection keeps
//! one byte: the window its client allows (0 when it did not negotiate). Inbound
//! compressed messages are inflated by the shard's one inflater, bounded by
//! `max_message_size` (`codec.rs`).

mod codec;
mod negotiate;

pub use codec::{Deflater, Inflater};
pub use negotiate::{negotiate, Agreed};
