//! Churn: which connections disconnect and reconnect, and how fast each event loop
//! starts those cycles.

use crate::client::{ClientCfg, Shared};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Whether connection number `g` belongs to the churning share `fraction` (0..=1).
///
/// A fixed, evenly spread subset: `g` churns when `floor((g + 1) F)` steps past
/// `floor(g F)`, so every run and every worker picks the same connections, and any
/// `n` consecutive numbers hold `n F` churners, give or take one. Integer arithmetic
/// (in millionths) keeps the choice exact.
pub fn is_churner(g: u64, fraction: f64) -> bool {
    let f = (fraction.clamp(0.0, 1.0) * 1e6).round() as u128;
    let g = g as u128;
    (g + 1) * f / 1_000_000 > g * f / 1_000_000
}

/// Event loop `tid`'s churning connection numbers (of `connections`, taken round-robin
/// by `threads` loops) and its share of `rate`.
///
/// The rate is shared in proportion to churners, not threads: churners are spread by
/// number, so one loop can hold more than its share (all of them at F = 0.5 on 2 loops).
fn thread_share(
    connections: u64,
    threads: usize,
    tid: usize,
    fraction: f64,
    rate: f64,
) -> (f64, Vec<u32>) {
    let mine: Vec<u32> = (tid as u64..connections)
        .step_by(threads.max(1))
        .filter(|&g| is_churner(g, fraction))
        .map(|g| g as u32)
        .collect();
    let all = (0..connections)
        .filter(|&g| is_churner(g, fraction))
        .count();
    if all == 0 {
        return (0.0, mine);
    }
    (rate * mine.len() as f64 / all as f64, mine)
}

/// One event loop's churn schedule: cycles at its share of the rate, over its own
/// churning connection numbers in round-robin order.
pub struct Pacer {
    /// Cycles per second for this thread.
    rate: f64,
    /// This thread's churning connection numbers.
    mine: Vec<u32>,
    cursor: usize,
    /// When churning (re)started, and cycles started since.
    started: Option<Instant>,
    done: u64,
}

impl Pacer {
    /// The schedule for event loop `tid` (idle when `cfg.churn` is unset).
    pub fn new(cfg: &ClientCfg, tid: usize) -> Pacer {
        let (rate, mine) = match cfg.churn {
            Some(ch) if ch.rate > 0.0 => {
                thread_share(cfg.connections, cfg.dial.threads, tid, ch.fraction, ch.rate)
            }
            _ => (0.0, Vec::new()),
        };
        Pacer {
            rate,
            mine,
            cursor: 0,
            started: None,
            done: 0,
        }
    }

    fn active(&self, sh: &Shared) -> bool {
        self.rate > 0.0 && !self.mine.is_empty() && sh.churn_on.load(Relaxed)
    }

    /// When the next cycle is due, while churning is on.
    pub fn due(&self, sh: &Shared) -> Option<Instant> {
        if !self.active(sh) {
            return None;
        }
        match self.started {
            Some(s) => Some(s + Duration::from_secs_f64(self.done as f64 / self.rate)),
            None => Some(Instant::now()),
        }
    }

    /// Whether a cycle is due at `now`; counts it as started when so.
    pub fn take(&mut self, now: Instant, sh: &Shared) -> bool {
        if !self.active(sh) {
            self.started = None;
            return false;
        }
        let start = *self.started.get_or_insert_with(|| {
            self.done = 0;
            now
        });
        let on_time = (now.duration_since(start).as_secs_f64() * self.rate) as u64;
        // A thread that fell behind (no open churner for a while) does not burst to
        // catch up by more than a second's worth.
        let behind = self.rate.ceil() as u64;
        if on_time > self.done + behind {
            self.done = on_time - behind;
        }
        if self.done <= on_time {
            self.done += 1;
            true
        } else {
            false
        }
    }

    /// This thread's churning connection numbers, starting after the last one tried
    /// (each at most once per call).
    pub fn candidates(&mut self) -> impl Iterator<Item = u32> + '_ {
        let n = self.mine.len();
        (0..n).map(move |_| {
            let g = self.mine[self.cursor % n];
            self.cursor = (self.cursor + 1) % n;
            g
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_subset_is_fixed_and_even() {
        let picked: Vec<u64> = (0..20).filter(|&g| is_churner(g, 0.2)).collect();
        assert_eq!(picked, vec![4, 9, 14, 19]);
        assert_eq!((0..1000).filter(|&g| is_churner(g, 0.2)).count(), 200);
        assert_eq!((0..1000).filter(|&g| is_churner(g, 1.0)).count(), 1000);
        assert_eq!((0..1000).filter(|&g| is_churner(g, 0.001)).count(), 1);
        assert_eq!((0..10).filter(|&g| is_churner(g, 0.0)).count(), 0);
        // Any window holds its share, give or take one.
        for start in [0u64, 7, 123, 4096] {
            let n = (start..start + 100).filter(|&g| is_churner(g, 0.3)).count();
            assert!((29..=31).contains(&n), "{start}: {n}");
        }
    }

    #[test]
    fn rate_follows_the_churners_not_the_threads() {
        // F = 0.5 on 2 loops: every churner is odd, so loop 1 has them all and all the rate.
        let (r0, m0) = thread_share(1000, 2, 0, 0.5, 5000.0);
        let (r1, m1) = thread_share(1000, 2, 1, 0.5, 5000.0);
        assert!(m0.is_empty() && r0 == 0.0, "{r0} {m0:?}");
        assert_eq!(m1.len(), 500);
        assert!((r1 - 5000.0).abs() < 1e-9, "{r1}");
        // Otherwise the rates add up to the whole.
        let total: f64 = (0..3).map(|t| thread_share(1000, 3, t, 0.2, 300.0).0).sum();
        assert!((total - 300.0).abs() < 1e-9, "{total}");
        assert_eq!(thread_share(0, 2, 0, 0.5, 10.0).0, 0.0);
    }

    #[test]
    fn candidates_round_robin() {
        let mut p = Pacer {
            rate: 1.0,
            mine: vec![3, 5, 8],
            cursor: 0,
            started: None,
            done: 0,
        };
        assert_eq!(p.candidates().take(2).collect::<Vec<_>>(), vec![3, 5]);
        assert_eq!(p.candidates().collect::<Vec<_>>(), vec![8, 3, 5]);
    }

    #[test]
    fn pacer_follows_rate_and_switch() {
        let sh = Shared::new(0);
        let mut p = Pacer {
            rate: 10.0,
            mine: vec![1],
            cursor: 0,
            started: None,
            done: 0,
        };
        let t0 = Instant::now();
        assert!(!p.take(t0, &sh), "off until churning is switched on");
        assert!(p.due(&sh).is_none());
        sh.churn_on.store(true, Relaxed);
        assert!(p.take(t0, &sh));
        assert!(!p.take(t0 + Duration::from_millis(50), &sh));
        assert!(p.take(t0 + Duration::from_millis(100), &sh));
        // Far behind: at most a second's worth (10) plus the one due now.
        let late = t0 + Duration::from_secs(60);
        let n = (0..100).filter(|_| p.take(late, &sh)).count();
        assert_eq!(n, 11);
        sh.churn_on.store(false, Relaxed);
        assert!(!p.take(late, &sh));
    }
}
