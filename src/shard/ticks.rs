//! The shard's time as u32 ticks of 10 ms, counted from a base that moves forward.
//!
//! A u32 keeps every connection slot at 56 bytes (a last read, an expiry, a timer
//! deadline and a connect time each), but 2^32 ticks is only 497 days of uptime. So the
//! shard counts from `Conns::tick_base` (an absolute tick of its clock, which the wheel
//! keeps using): once the relative tick reaches `REBASE_AT` (248 days), the turn ends by
//! moving the base forward and every stored tick back by the same amount, in one pass
//! over the shard's state about every 124 days. Times further back than the move become
//! 0, "long ago", which no comparison can tell apart: every span the shard measures
//! (`span`) is shorter than the move.

use std::time::Duration;

use crate::reactor;

use super::Shard;

/// The relative tick at which the base moves (2^31 ticks, 248 days).
pub(super) const REBASE_AT: u32 = 1 << 31;
/// Where a rebase leaves the relative tick (2^30 ticks, 124 days).
pub(super) const REBASE_TO: u32 = 1 << 30;
/// The longest span the shard measures in ticks (124 days): a TTL, an interval or a
/// linger longer than that is capped. Never more than a rebase moves, so that a time
/// moved to 0 is always at least this far in the past.
pub(super) const MAX_SPAN: u32 = REBASE_AT - REBASE_TO;

/// `d` in whole ticks, rounded up (a deadline never fires early), capped at `MAX_SPAN`.
pub(super) fn span(d: Duration) -> u32 {
    reactor::ticks_ceil(d).min(u64::from(MAX_SPAN)) as u32
}

/// `d` in whole ticks, rounded down, capped at `MAX_SPAN`.
pub(super) fn span_floor(d: Duration) -> u32 {
    reactor::ticks_floor(d).min(u64::from(MAX_SPAN)) as u32
}

/// A stored tick after the base moved forward by `by`: earlier by `by`, or 0 ("long ago")
/// when it was further back.
pub(super) fn moved(tick: u32, by: u32) -> u32 {
    tick.saturating_sub(by)
}

/// A stored deadline after the base moved by `by`, where `u32::MAX` means never.
pub(super) fn moved_deadline(tick: u32, by: u32) -> u32 {
    if tick == u32::MAX {
        tick
    } else {
        moved(tick, by)
    }
}

impl Shard {
    /// The relative tick for the clock's absolute `tick`; a tick beyond the u32 range
    /// (only a clock that jumped more than 248 days in one turn) is reached over turns.
    pub(super) fn relative_tick(&self, tick: u64) -> u32 {
        tick.saturating_sub(self.conns.tick_base())
            .min(u64::from(u32::MAX - 1)) as u32
    }

    /// At the end of a turn (every timer due by `self.tick` fired, so each armed one
    /// lies ahead of it): once the tick has reached `REBASE_AT`, moves the base forward
    /// so that the tick is `REBASE_TO` again, and every stored tick back with it.
    pub(super) fn rebase_ticks(&mut self) {
        if self.tick < REBASE_AT {
            return;
        }
        let by = self.tick - REBASE_TO;
        self.conns.rebase(by);
        self.users.rebase(by);
        self.streams.rebase(by);
        self.rates.rebase(by);
        if let Some(c) = self.cluster.as_mut() {
            c.presence.rebase(by);
        }
        self.rebase_turns(by);
        self.last_compact = moved(self.last_compact, by);
        self.tick -= by;
        tracing::debug!(shard = self.id, by, "shard ticks rebased");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_capped_below_a_rebase() {
        assert_eq!(span(Duration::from_millis(25_001)), 2501);
        assert_eq!(span_floor(Duration::from_millis(25_009)), 2500);
        assert_eq!(span(Duration::from_secs(10 * 365 * 86_400)), MAX_SPAN);
        assert_eq!(span(Duration::MAX), MAX_SPAN);
    }

    #[test]
    fn moved_ticks_keep_their_distance_or_become_long_ago() {
        assert_eq!(moved(REBASE_AT + 5, REBASE_AT - REBASE_TO), REBASE_TO + 5);
        assert_eq!(moved(3, 10), 0);
        assert_eq!(moved_deadline(u32::MAX, 10), u32::MAX, "never stays never");
        assert_eq!(moved_deadline(u32::MAX - 1, 10), u32::MAX - 11);
    }
}
