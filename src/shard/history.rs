//! Types of the user-stream history (docs/protocol.md 4.1): each user's recent direct
//! pushes, and the shard-wide FIFO that expires and evicts them oldest first.

use std::collections::VecDeque;

use crate::wire::Wire;

// A retained push is its frame (a `Wire`, 8 bytes), shared with the sessions' queues
// (and, for a topic, with every shard). Its `seq` is not stored: a ring holds contiguous
// seqs ending at its stream's current one, so the position gives it (see `first_seq`).

/// A user's recent pushes, oldest first: the frames, and beside them their accept
/// stamps for the ack latency histogram (4 bytes each: kept apart, a stamp next to each
/// 8-byte frame pointer would cost 8 with padding).
#[derive(Default)]
pub(super) struct Ring {
    frames: VecDeque<Wire>,
    stamps: VecDeque<u32>,
}

impl Ring {
    /// Pushes held.
    pub(super) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether none is held.
    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Appends a push (the ring holds at most `size`; the caller made room).
    pub(super) fn push_back(&mut self, frame: Wire, stamp: u32, size: usize) {
        reserve_one(&mut self.frames, size);
        reserve_one(&mut self.stamps, size);
        self.frames.push_back(frame);
        self.stamps.push_back(stamp);
    }

    /// Drops the oldest push, returning its frame.
    pub(super) fn pop_front(&mut self) -> Option<Wire> {
        self.stamps.pop_front();
        self.frames.pop_front()
    }

    /// The accept stamp of the push at position `i`.
    pub(super) fn stamp(&self, i: usize) -> Option<u32> {
        self.stamps.get(i).copied()
    }

    /// The frame at position `i`.
    pub(super) fn frame(&self, i: usize) -> Option<&Wire> {
        self.frames.get(i)
    }

    /// The frames from position `skip` on.
    pub(super) fn frames_from(&self, skip: usize) -> impl Iterator<Item = &Wire> + '_ {
        self.frames.range(skip..)
    }

    /// Frame bytes held.
    pub(super) fn bytes(&self) -> u64 {
        self.frames.iter().map(|f| f.len() as u64).sum()
    }

    /// Slots allocated (for the no-spare-slots test).
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.frames.capacity()
    }
}

/// The stamp for `at`: milliseconds since this process's first stamp, wrapping after 49
/// days (compare stamps with `wrapping_sub`).
pub(super) fn stamp_of(at: std::time::Instant) -> u32 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    at.saturating_duration_since(origin).as_millis() as u32
}

/// The `seq` of the front of a ring of `len` pushes whose back is `last`.
pub(super) fn first_seq(last: u64, len: usize) -> u64 {
    (last + 1).saturating_sub(len as u64)
}

/// Makes room for one more push in a ring of at most `size`: doubling as `VecDeque`
/// would, but never past `size`, so a full ring has no spare slots (a ring of 100 grew to
/// 128 before: 11 bytes more per retained push).
pub(super) fn reserve_one<T>(ring: &mut VecDeque<T>, size: usize) {
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
