//! Types of the user-stream history (docs/protocol.md 4.1): each user's recent direct
//! pushes, and the shard-wide FIFO that expires and evicts them oldest first.

use std::collections::VecDeque;

use bytes::Bytes;

/// One retained push: the exact frame sent, shared with the sessions' queues (and, for a
/// topic, with every shard). Its `seq` is not stored: a ring holds contiguous seqs ending
/// at its stream's current one, so the position gives it (see `first_seq`), and the word
/// holds the accept time instead, for the ack latency histogram.
pub(super) struct Held {
    /// When the API accepted it, in microseconds since the shard started.
    pub accepted_us: u64,
    /// The frame.
    pub frame: Bytes,
}

/// The `seq` of the front of a ring of `len` pushes whose back is `last`.
pub(super) fn first_seq(last: u64, len: usize) -> u64 {
    (last + 1).saturating_sub(len as u64)
}

/// Makes room for one more push in a ring of at most `size`: doubling as `VecDeque`
/// would, but never past `size`, so a full ring has no spare slots (a ring of 100 grew to
/// 128 before: 11 bytes more per retained push).
pub(super) fn reserve_one(ring: &mut VecDeque<Held>, size: usize) {
    if ring.len() == ring.capacity() {
        let want = (ring.capacity() * 2).max(4).min(size.max(1));
        ring.reserve_exact(want.saturating_sub(ring.len()).max(1));
    }
}

/// Where one retained push sits, in the shard-wide FIFO (accept order across users).
/// A record whose push already left its user's ring (by `history_size`, or with the
/// user) is stale and skipped when it reaches the front.
///
/// 16 bytes, one per retained push: the epoch and `seq` keep their low halves only. A
/// stale record could match a live push only with a reused user key whose random epoch
/// has the same low 32 bits, or after 2^32 pushes to one user within the history TTL; the
/// cost of such a match would be one push dropped early, never a wrong one replayed.
pub(super) struct Record {
    /// The user key.
    pub user: u32,
    /// The low half of the user's epoch when stored: tells a reused slab key from the
    /// same user.
    pub epoch: u32,
    /// The low half of the push's sequence number.
    pub seq: u32,
    /// The tick it was accepted.
    pub at: u32,
}

impl Record {
    /// Whether this record names push `seq` of the user life with `epoch`.
    pub(super) fn names(&self, epoch: u64, seq: u64) -> bool {
        self.epoch == epoch as u32 && self.seq == seq as u32
    }
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
