//! Client message rate limits (`client_rate`, docs/protocol.md 6): a token bucket per
//! connection holding `client_rate` tokens and refilling as many per second. A bucket is
//! kept only while it is not full, so a quiet connection costs nothing here.
//!
//! A message costs a token, and its text (after decompression) a token per
//! `BYTES_PER_TOKEN`, acks included: what a shard spends parsing one connection's
//! messages is bounded, not only how many it carries out (a 100-byte compressed ack can
//! hold 64 KiB of spaces).

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;

use crate::reactor::TICK_MS;

use super::ticks::moved;

/// Thousandths of a token: a tick refills `rate * TICK_MS` of them, exactly.
const MILLI: u64 = 1000;
/// Bytes of message text that cost a token.
pub(super) const BYTES_PER_TOKEN: u64 = 4096;
/// Ticks between sweeps of refilled buckets (one second).
const SWEEP_TICKS: u32 = (1000 / TICK_MS) as u32;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens left, in thousandths, as of `at`.
    milli: u64,
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

    fn capacity(&self) -> u64 {
        u64::from(self.rate) * MILLI
    }

    fn refilled(&self, b: Bucket, tick: u32) -> u64 {
        let ticks = u64::from(tick.saturating_sub(b.at));
        let refill = ticks * u64::from(self.rate) * TICK_MS;
        b.milli.saturating_add(refill).min(self.capacity())
    }

    /// Takes a token for connection `key` at `tick`; false when its bucket is empty.
    pub(super) fn take(&mut self, key: u32, tick: u32) -> bool {
        self.take_milli(key, tick, MILLI)
    }

    /// Takes what `len` bytes of message text cost; false (taking nothing) when the
    /// bucket holds less.
    pub(super) fn take_bytes(&mut self, key: u32, tick: u32, len: usize) -> bool {
        let cost = (len as u64).saturating_mul(MILLI) / BYTES_PER_TOKEN;
        cost == 0 || self.take_milli(key, tick, cost)
    }

    /// The most bytes of message text connection `key` can pay for at `tick` (`None`:
    /// no limit).
    pub(super) fn affordable_bytes(&self, key: u32, tick: u32) -> Option<usize> {
        if self.rate == 0 {
            return None;
        }
        let milli = self
            .buckets
            .get(&key)
            .map_or(self.capacity(), |&b| self.refilled(b, tick));
        let bytes = milli.saturating_mul(BYTES_PER_TOKEN) / MILLI;
        Some(usize::try_from(bytes).unwrap_or(usize::MAX))
    }

    fn take_milli(&mut self, key: u32, tick: u32, cost: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        let full = Bucket {
            milli: self.capacity(),
            at: tick,
        };
        let b = self.buckets.get(&key).copied().unwrap_or(full);
        let milli = self.refilled(b, tick);
        let (left, taken) = match milli.checked_sub(cost) {
            Some(left) => (left, true),
            None => (milli, false),
        };
        self.buckets.insert(
            key,
            Bucket {
                milli: left,
                at: tick,
            },
        );
        taken
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
            let ticks = u64::from(tick.saturating_sub(b.at));
            b.milli.saturating_add(ticks * u64::from(rate) * TICK_MS) < cap
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
    fn message_text_costs_a_token_per_4_kib() {
        let mut r = Rates::new(2);
        // A small ack costs a hundredth of a token or less: thousands a second.
        for _ in 0..100 {
            assert!(r.take_bytes(1, 0, 30));
        }
        // 30 bytes cost 7 thousandths: 1.3 tokens are left, 5,324 bytes' worth.
        assert_eq!(r.affordable_bytes(1, 0), Some(1300 * 4096 / 1000));
        // 64 KiB of text is 16 tokens: more than this bucket holds, and nothing is taken.
        assert!(!r.take_bytes(1, 0, 65536));
        assert!(r.take(1, 0));
        assert_eq!(r.affordable_bytes(1, 0), Some(1228));
        assert!(r.take_bytes(1, 0, 1228));
        assert!(!r.take_bytes(1, 0, 30), "empty");
        assert_eq!(Rates::new(0).affordable_bytes(1, 0), None);
        assert!(Rates::new(0).take_bytes(1, 0, usize::MAX));
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
