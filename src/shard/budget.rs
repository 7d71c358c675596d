//! The process-wide memory budget (`max_outbound_total_bytes`): every shard keeps its exact
//! total of queued outbound and partial inbound bytes in plain integers, publishes it to
//! its gauges once per loop turn, and reads the other shards' gauges (a few relaxed loads)
//! to know the process total. Over the budget, each shard frees its proportional share by
//! closing its largest holders with 4008, largest first.
//!
//! A single frame larger than the whole budget is still queued (as on an empty queue under
//! `max_outbound_bytes`) and offered to the socket; whatever the socket does not take by
//! the end of the turn counts, so a client that cannot absorb it is the largest holder and
//! is closed with 4008: the budget wins, and no push is dropped from a connection that
//! stays open.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::frame::Close;

use super::Shard;

/// Past the budget, shards free down to `budget - budget / BUDGET_HEADROOM_DIVISOR`.
const BUDGET_HEADROOM_DIVISOR: u64 = 16;
/// A shard whose held bytes fell by this much since their high point asks the allocator
/// to give free memory back to the OS.
const TRIM_DROP_BYTES: u64 = 32 << 20;
/// A shard whose queues have all drained after a burst that allocated or grew this many
/// bytes of queues frees its spare queues and asks the allocator the same: the freed
/// queues otherwise stay resident as holes in its arena (about 1.6 MB per shard after
/// 100 broadcasts to 15,000 connections).
const TRIM_CHURN_BYTES: usize = 1 << 20;
/// A shard that built this many bytes of per-recipient frames (`users` pushes) since the
/// last trim asks the same once its queues have drained.
const TRIM_MADE_BYTES: usize = 8 << 20;
/// A shard whose side tables shrank by this many bytes since the last trim asks the same
/// (`compact_tables`): a crowd's tables are a few hundred KB per shard per 10,000.
const TRIM_COMPACTED_BYTES: usize = 256 << 10;
/// At most one such request per shard per this long: a trim walks the allocator's arenas.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// The values last stored in this shard's gauges, and the high point since the last trim.
#[derive(Default)]
pub(super) struct Published {
    outbound: u64,
    partial: u64,
    closing: u64,
    high: u64,
    /// Queue churn at the end of the previous turn: a burst is over once a turn adds none.
    churn: usize,
    /// Heap bytes freed by shrinking side tables since the last trim (`compact_tables`).
    compacted: usize,
    /// Bytes of per-recipient frames built since the last trim (a `users` push makes one
    /// per user): freed within the turn that wrote them, they never show in the queues,
    /// but their memory stays in the allocator's arena like the queues' churn.
    made: usize,
    /// `made` at the end of the previous turn: a burst is over once a turn adds none.
    made_seen: usize,
    last_trim: Option<Instant>,
}

impl Published {
    /// Counts `bytes` freed by shrinking tables towards the next trim.
    pub(super) fn compacted(&mut self, bytes: usize) {
        self.compacted = self.compacted.saturating_add(bytes);
    }

    /// Counts `bytes` of per-recipient frames built towards the next trim.
    pub(super) fn made(&mut self, bytes: usize) {
        self.made = self.made.saturating_add(bytes);
    }
}

impl Shard {
    /// Bytes this shard holds for clients: queued outbound plus partial inbound.
    /// What this shard's open connections hold: what closing some of them frees.
    /// Closing connections' queues are left out (closing them again frees nothing: counted,
    /// they made every shard close a healthy holder on every turn while they lingered);
    /// they are bounded by `max_outbound_bytes` each and the close linger, and a budget
    /// close with more than `CLOSING_KEEP_MAX` left drops the socket at once.
    fn held_bytes(&self) -> u64 {
        let open = self
            .conns
            .queued_bytes()
            .saturating_sub(self.conns.closing_bytes());
        (open + self.conns.partial_bytes()) as u64
    }

    /// Publishes this shard's gauges and, when the process is over budget, closes this
    /// shard's largest holders until its share of the excess is freed. Once per turn.
    pub(super) fn enforce_budget(&mut self) {
        self.publish_memory();
        // The trim follows every byte held, closing queues included: it is about the
        // memory, freed only once they are gone.
        let all = (self.conns.queued_bytes() + self.conns.partial_bytes()) as u64;
        self.maybe_trim(all);
        let local = self.held_bytes();
        if local == 0 {
            return;
        }
        let others: u64 = self
            .shared
            .metrics
            .shards
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != self.id)
            .map(|(_, s)| {
                let c = &s.counters;
                (c.outbound_bytes.load(Relaxed) + c.partial_bytes.load(Relaxed))
                    .saturating_sub(c.closing_bytes.load(Relaxed))
            })
            .sum();
        let total = local.saturating_add(others);
        let budget = self.shared.config.max_outbound_total_bytes;
        if total <= budget {
            return;
        }
        // Each shard frees `over * local / total` (rounded up), so together they free the
        // excess without talking to each other; stale gauges are corrected next turn. Once
        // over, they go a sixteenth below the budget, so a steady stream of pushes does
        // not sort the holders again on every turn.
        let over = total - (budget - budget / BUDGET_HEADROOM_DIVISOR);
        let share = (u128::from(over) * u128::from(local)).div_ceil(u128::from(total)) as u64;
        let target = local - share.min(local);
        let mut holders = self.conns.holders();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        for (_, key) in holders {
            if self.held_bytes() <= target {
                break;
            }
            self.close(key, Close::OVER_BUDGET);
        }
        self.publish_memory();
    }

    /// Stores the gauges when they changed (a store per turn would bounce the cache line
    /// the other shards read).
    fn publish_memory(&mut self) {
        let outbound = self.conns.queued_bytes() as u64;
        let partial = self.conns.partial_bytes() as u64;
        let c = &self.shared.metrics.shards[self.id].counters;
        if outbound != self.published.outbound {
            c.outbound_bytes.store(outbound, Relaxed);
            self.published.outbound = outbound;
        }
        if partial != self.published.partial {
            c.partial_bytes.store(partial, Relaxed);
            self.published.partial = partial;
        }
        let closing = self.conns.closing_bytes() as u64;
        if closing != self.published.closing {
            c.closing_bytes.store(closing, Relaxed);
            self.published.closing = closing;
        }
    }
}

impl Shard {
    /// After a large release (queues of closed slow consumers), or once a burst's queues
    /// have all drained, hands free memory back to the OS: glibc keeps freed chunks in its
    /// arenas otherwise (2,000 never-reading clients left 1.4 GB resident after they were
    /// gone).
    fn maybe_trim(&mut self, held: u64) {
        let p = &mut self.published;
        p.high = p.high.max(held);
        let dropped = p.high - held >= TRIM_DROP_BYTES && held <= p.high / 2;
        let churn = self.conns.churn();
        let quiet = churn == std::mem::replace(&mut p.churn, churn)
            && p.made == std::mem::replace(&mut p.made_seen, p.made);
        let drained =
            held == 0 && quiet && (churn >= TRIM_CHURN_BYTES || p.made >= TRIM_MADE_BYTES);
        // Tables shrunk after a crowd left: their old storage is holes in the arena too.
        let compacted = p.compacted >= TRIM_COMPACTED_BYTES;
        if !dropped && !drained && !compacted {
            return;
        }
        if p.last_trim.is_some_and(|t| t.elapsed() < TRIM_INTERVAL) {
            return;
        }
        p.last_trim = Some(Instant::now());
        p.high = held;
        p.compacted = 0;
        if drained {
            p.churn = 0;
            p.made = 0;
            p.made_seen = 0;
            self.conns.shed();
            // Sized for the burst's largest fan-out (every connection, for a broadcast).
            self.targets = Vec::new();
        }
        crate::memory::release_free_memory();
    }
}
