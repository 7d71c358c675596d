//! Types of the user-stream history (docs/protocol.md 4.1): each user's recent direct
//! pushes, and the shard-wide FIFO that expires and evicts them oldest first.

use bytes::Bytes;

/// One retained direct push: the exact frame sent, shared with the sessions' queues.
pub(super) struct Held {
    /// Its sequence number in the user's stream.
    pub seq: u64,
    /// The frame.
    pub frame: Bytes,
}

/// Where one retained push sits, in the shard-wide FIFO (accept order across users).
/// A record whose push already left its user's ring (by `history_size`, or with the
/// user) is stale and skipped when it reaches the front.
pub(super) struct Record {
    /// The user key.
    pub user: u32,
    /// The user's epoch when stored: tells a reused slab key from the same user.
    pub epoch: u64,
    /// The push's sequence number.
    pub seq: u64,
    /// The tick it was accepted.
    pub at: u32,
}

/// The history bounds, in the shard's units.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Pushes kept per user (0: none).
    pub size: usize,
    /// How long a push, and a user without sessions, is kept, in ticks.
    pub ttl_ticks: u32,
    /// Bytes of frames kept by the whole shard.
    pub memory: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            size: 100,
            ttl_ticks: 30_000,
            memory: 64 << 20,
        }
    }
}

/// A user's retained entry leaves at this tick if it still has no session then.
pub(super) struct Idle {
    /// The user key.
    pub user: u32,
    /// The user's epoch, as for `Record`.
    pub epoch: u64,
    /// Removal tick.
    pub until: u32,
}
