//! permessage-deflate (RFC 7692) on the client side, for `--compression`.
//!
//! The upgrade request offers what browsers send ([`OFFER`]); [`negotiate`] checks the
//! server's answer: only an answer whose compressed messages this client can inflate one
//! by one (`server_no_context_takeover`) is accepted, so no connection keeps an inflate
//! window. Compressed frames (RSV1) are inflated by one [`Inflater`] per event loop,
//! reset per message and bounded. The client's own messages stay uncompressed, which
//! RFC 7692 allows. [`stats`] counts the bytes on the wire and after inflation for the
//! report, with or without `--compression`.

mod inflate;
mod negotiate;
pub mod stats;

pub use inflate::Inflater;
pub use negotiate::{negotiate, OFFER};
pub use stats::{CompressionReport, WireStats};

/// What the server sends for a message: raw deflate, sync flush, the tail dropped.
#[cfg(test)]
pub use inflate::tests::deflate as server_deflate;
