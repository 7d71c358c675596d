//! Client message rate limits (`client_rate`, docs/protocol.md 6): a token bucket per
//! connection holding `client_rate` tokens and refilling as many per second. A bucket is
//! kept only while it is not full, so a quiet connection costs nothing here.
//!
//! A message takes a token, and its text (after decompression, at least `MIN_CHARGE`)
//! costs a token per `BYTES_PER_TOKEN` more, acks included (an ack takes no token, but
//! its text is charged): what a shard spends parsing one connection's
//! messages is bounded, not only how many it carries out (a 100-byte compressed ack can
//! hold 64 KiB of spaces). The text is paid after the fact, so a large message may leave
//! the bucket in debt (at most one bucket's worth), which the refill pays back before
//! anything more is taken: any message fits a bucket of one token. From a bucket a whole
//! bucket in debt (`at_floor`) only the smallest messages are read (an ack): padded acks
//! are refused unread there, however cheap they are compressed.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;

use crate::reactor::TICK_MS;

use super::ticks::moved;

/// Thousandths of a token: a tick refills `rate * TICK_MS` of them, exactly.
const MILLI: i64 = 1000;
/// Bytes of message text that cost a token.
pub(super) const BYTES_PER_TOKEN: i64 = 16 * 1024;
/// The least text a message is charged for: a flood of tiny acks costs a 64th of a token
/// each, not a thousandth.
const MIN_CHARGE: i64 = 256;
/// Ticks between sweeps of refilled buckets (one second).
const SWEEP_TICKS: u32 = (1000 / TICK_MS) as u32;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens left, in thousandths, as of `at`; below zero: debt.
    milli: i64,
    /// The tick `milli` was computed at.
    at: u32,
}

/// The buckets of one shard's connections.
pub(super) struct Rates {
    /// Tokens per second and bucket size; 0 = unlimited.
    rate: u32,
    buckets: HashMap<u32, Bucket, FxBuildHasher>,
    last_sweep: u32,
}

impl Rates {
    /// Buckets of `rate` tokens refilled at `rate` per second (0: no limit).
    pub(super) fn new(rate: u32) -> Rates {
        Rates {
            rate,
            buckets: HashMap::default(),
            last_sweep: 0,
        }
    }

    fn capacity(&self) -> i64 {
        i64::from(self.rate) * MILLI
    }

    fn refilled(&self, b: Bucket, tick: u32) -> i64 {
        let ticks = i64::from(tick.saturating_sub(b.at));
        let refill = ticks * i64::from(self.rate) * TICK_MS as i64;
        b.milli.saturating_add(refill).min(self.capacity())
    }

    /// What connection `key`'s bucket holds at `tick`, in thousandths of a token.
    fn credit(&self, key: u32, tick: u32) -> i64 {
        self.buckets
            .get(&key)
            .map_or(self.capacity(), |&b| self.refilled(b, tick))
    }

    fn set(&mut self, key: u32, tick: u32, milli: i64) {
        self.buckets.insert(key, Bucket { milli, at: tick });
    }

    /// Takes a token for connection `key` at `tick`; false (taking nothing) when its
    /// bucket holds less than one.
    pub(super) fn take(&mut self, key: u32, tick: u32) -> bool {
        if self.rate == 0 {
            return true;
        }
        let milli = self.credit(key, tick);
        if milli < MILLI {
            return false;
        }
        self.set(key, tick, milli - MILLI);
        true
    }

    /// Whether connection `key` is not in debt at `tick`: a message may be read.
    pub(super) fn has_credit(&self, key: u32, tick: u32) -> bool {
        self.rate == 0 || self.credit(key, tick) > 0
    }

    /// Whether connection `key` is a whole bucket in debt at `tick`: only the smallest of
    /// what it sends is read now (a charge goes at most a token further).
    pub(super) fn at_floor(&self, key: u32, tick: u32) -> bool {
        self.rate != 0 && self.credit(key, tick) <= -self.capacity()
    }

    /// Charges `len` bytes of message text read, into debt if need be.
    pub(super) fn charge_bytes(&mut self, key: u32, tick: u32, len: usize) {
        if self.rate == 0 {
            return;
        }
        let len = i64::try_from(len).unwrap_or(i64::MAX).max(MIN_CHARGE);
        let cost = len.saturating_mul(MILLI) / BYTES_PER_TOKEN;
        let milli = self.credit(key, tick);
        // A message read with credit (its token taken: 0 or more left) leaves at most a
        // bucket of debt: a second of silence clears it. One read in debt (at most 4 KiB, a quarter of a token: `inbound`) is
        // paid in full, down to a token below that, so a tick's refill never pays for it.
        let floor = if milli >= 0 {
            -self.capacity()
        } else {
            -self.capacity() - MILLI
        };
        self.set(key, tick, milli.saturating_sub(cost).max(floor));
    }

    /// Forgets a connection that ended.
    pub(super) fn forget(&mut self, key: u32) {
        self.buckets.remove(&key);
    }

    /// Once a second, drops the buckets that have refilled (taking from a missing bucket
    /// starts from a full one, so dropping them changes nothing).
    pub(super) fn sweep(&mut self, tick: u32) {
        if tick.wrapping_sub(self.last_sweep) < SWEEP_TICKS {
            return;
        }
        self.last_sweep = tick;
        let cap = self.capacity();
        let rate = self.rate;
        self.buckets.retain(|_, b| {
            let ticks = i64::from(tick.saturating_sub(b.at));
            b.milli
                .saturating_add(ticks * i64::from(rate) * TICK_MS as i64)
                < cap
        });
        super::compact::compact(&mut self.buckets);
    }

    /// The shard's ticks moved back by `by` (`Shard::rebase_ticks`).
    pub(super) fn rebase(&mut self, by: u32) {
        for b in self.buckets.values_mut() {
            b.at = moved(b.at, by);
        }
        self.last_sweep = moved(self.last_sweep, by);
    }

    /// Connections with a bucket that is not full.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PER_SEC: u32 = (1000 / TICK_MS) as u32;

    #[test]
    fn a_burst_of_rate_then_refill_at_rate() {
        let mut r = Rates::new(5);
        for i in 0..5 {
            assert!(r.take(1, 100), "token {i} of the burst");
        }
        assert!(!r.take(1, 100), "the bucket is empty");
        assert!(!r.take(1, 100));
        // 5 per second: one token per 200 ms.
        assert!(!r.take(1, 100 + PER_SEC / 5 - 1));
        assert!(r.take(1, 100 + PER_SEC / 5));
        assert!(!r.take(1, 100 + PER_SEC / 5));
        // Other connections have their own bucket.
        assert!(r.take(2, 100));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn refusals_do_not_spend_and_refill_caps_at_the_rate() {
        let mut r = Rates::new(2);
        assert!(r.take(1, 0) && r.take(1, 0));
        for _ in 0..100 {
            assert!(!r.take(1, 0));
        }
        // A long silence refills to 2, not more.
        let later = 10 * PER_SEC;
        assert!(r.take(1, later) && r.take(1, later));
        assert!(!r.take(1, later));
    }

    #[test]
    fn a_whole_bucket_in_debt_is_the_floor_until_a_tick_refills_it() {
        let mut r = Rates::new(4);
        assert!(!r.at_floor(1, 0), "a full bucket");
        // 16 KiB x 8: eight tokens of text from a bucket of four, clamped at minus four.
        r.charge_bytes(1, 0, 8 * 16 * 1024);
        assert!(r.at_floor(1, 0));
        assert_eq!(r.credit(1, 0), -4 * MILLI);
        // A tick's refill lifts it off the floor; a small message read then is paid in
        // full (not forgiven down to the floor), and the floor holds it again.
        assert!(!r.at_floor(1, 1));
        r.charge_bytes(1, 1, 4000);
        assert!(r.at_floor(1, 1));
        assert!(r.credit(1, 1) < -4 * MILLI);
        // Charges in debt stop a token below the floor.
        for _ in 0..100 {
            r.charge_bytes(1, 1, 4000);
        }
        assert_eq!(r.credit(1, 1), -5 * MILLI);
        assert!(!r.has_credit(1, 1 + PER_SEC), "still in debt");
        assert!(!Rates::new(0).at_floor(1, 0), "no limit, no floor");
    }

    #[test]
    fn sweep_drops_refilled_buckets_only() {
        let mut r = Rates::new(10);
        assert!(r.take(1, 0));
        for _ in 0..10 {
            r.take(2, PER_SEC / 2);
        }
        r.sweep(PER_SEC + 1);
        // Bucket 1 refilled long ago; bucket 2 was emptied half a second ago: 5 of 10.
        assert_eq!(r.len(), 1);
        r.forget(2);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn message_text_costs_a_token_per_16_kib_and_may_leave_a_debt() {
        let mut r = Rates::new(1);
        // A bucket of one token takes a message of any size...
        assert!(r.has_credit(1, 0) && r.take(1, 0));
        r.charge_bytes(1, 0, 64 * 1024);
        // ...and owes its 64 KiB (4 tokens), at most a bucket: nothing is taken for 1 s.
        assert!(!r.has_credit(1, 0));
        assert!(!r.has_credit(1, PER_SEC));
        assert!(r.has_credit(1, PER_SEC + 1));
        assert!(!r.take(1, PER_SEC + 1), "credit, but not a whole token");
        assert!(r.take(1, 2 * PER_SEC));
        // Small texts cost a little: a 30-byte ack is charged as 256 bytes, 15 thousandths
        // of a token; the debt stops at one bucket.
        let mut r = Rates::new(2);
        for _ in 0..134 {
            assert!(r.has_credit(1, 0));
            r.charge_bytes(1, 0, 30);
        }
        assert!(!r.has_credit(1, 0), "134 small acks empty a bucket of two");
        for _ in 0..10_000 {
            r.charge_bytes(1, 0, 60_000);
        }
        // Charges made in debt go a token past the bucket: 1.5 s of refill at 2 a second.
        assert!(!r.has_credit(1, PER_SEC * 3 / 2));
        assert!(
            r.has_credit(1, PER_SEC * 3 / 2 + 1),
            "a bucket and a token of debt at most"
        );
        let mut unlimited = Rates::new(0);
        unlimited.charge_bytes(1, 0, usize::MAX);
        assert!(unlimited.has_credit(1, 0) && unlimited.take(1, 0));
    }

    #[test]
    fn zero_is_unlimited_and_keeps_nothing() {
        let mut r = Rates::new(0);
        for _ in 0..10_000 {
            assert!(r.take(1, 0));
        }
        assert_eq!(r.len(), 0);
    }
}
