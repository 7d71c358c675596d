//! Cluster mode: the streams a shard serves are kept in Redis while it serves them,
//! however quiet. A stream's `seq` and epoch (its meta hash) expire 24 h (at least) after
//! its last push; a user or topic served and quiet for that long would lose them, and its
//! next push would start a new epoch under its live sessions: all closed 1012, their
//! resume positions void. A slice of the served streams goes to the broker every second
//! (`Interest::Keep`), so each topic is kept about once an hour, whatever their number,
//! and each user at least that often: the user sweep walks the shard's user slots, a
//! 3600th of them a second, so a shard with fewer than 3600 slots goes around sooner
//! (one PEXPIRE a second at most; cheaper than keeping a list of them per sweep).

use std::sync::Arc;

use super::Shard;
use crate::broker::{Interest, KeepSlice};
use crate::reactor::TICK_MS;

/// Ticks between two slices.
const KEEP_TICKS: u32 = (1000 / TICK_MS) as u32;
/// A sweep of every served stream takes about this many slices (seconds, fewer for users
/// on a shard with fewer user slots): well within the meta TTL.
const SWEEP_SLICES: usize = 3600;

/// Where the sweep stands.
#[derive(Default)]
pub(super) struct Keeper {
    /// The tick of the last slice.
    last_tick: u32,
    /// The next user key to look at.
    user_cursor: u32,
    /// Topics served when this sweep began, not yet kept.
    topics: Vec<Arc<str>>,
    /// Topics kept per slice in this sweep: its first length over `SWEEP_SLICES`, so a
    /// sweep takes about `SWEEP_SLICES` seconds however many topics it began with.
    topics_per_slice: usize,
    /// Slices since this sweep began: the next begins `SWEEP_SLICES` after it, so a
    /// few topics are not kept every few seconds.
    slices: usize,
    /// A sweep of the topics has begun.
    swept: bool,
}

impl Keeper {
    /// The next slice of topics to keep; `served` names them all when a sweep begins.
    fn next_topics(&mut self, served: impl FnOnce() -> Vec<Arc<str>>) -> Vec<Arc<str>> {
        self.slices = self.slices.saturating_add(1);
        if self.topics.is_empty() && (!self.swept || self.slices > SWEEP_SLICES) {
            self.swept = true;
            self.slices = 1;
            self.topics = served();
            self.topics.shrink_to_fit();
            self.topics_per_slice = self.topics.len().div_ceil(SWEEP_SLICES);
        }
        let take = self.topics_per_slice.min(self.topics.len());
        self.topics.split_off(self.topics.len() - take)
    }
}

impl Shard {
    /// Sends the next slice of served streams to keep, once a second.
    pub(super) fn keep_streams(&mut self) {
        let tick = self.tick;
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let k = &mut c.keep;
        if tick.wrapping_sub(k.last_tick) < KEEP_TICKS {
            return;
        }
        k.last_tick = tick;
        let slots = self.users.key_bound() as usize;
        let (users, next) = self
            .users
            .served_ids(k.user_cursor, slots.div_ceil(SWEEP_SLICES));
        k.user_cursor = next;
        // A topic at the placeholder has no key in Redis to keep (none before a push).
        let topics = k.next_topics(|| {
            let pushed = c.topics.iter().filter(|(_, p)| !p.at_placeholder());
            pushed.map(|(t, _)| Arc::clone(t)).collect()
        });
        if users.is_empty() && topics.is_empty() {
            return;
        }
        self.interest(Interest::Keep(Box::new(KeepSlice { users, topics })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_of_topics_takes_its_slices_however_many_it_began_with() {
        // Review s22a: the slice was sized from what was left, so a sweep of n topics
        // took about 3600 * (1 + ln(n / 3600)) slices (6.6 h for a million).
        let n = 4 * SWEEP_SLICES - 3;
        let served = || (0..n).map(|i| Arc::from(format!("t{i}"))).collect();
        let mut k = Keeper::default();
        let mut seen = 0;
        let mut slices = 0;
        while seen < n {
            let got = k.next_topics(served).len();
            assert!(got > 0 && got <= 4, "slice of {got}");
            seen += got;
            slices += 1;
        }
        assert_eq!(seen, n, "each topic once per sweep");
        assert_eq!(slices, SWEEP_SLICES, "one sweep, {SWEEP_SLICES} slices");
        assert!(k.topics.is_empty());
        assert_eq!(k.next_topics(served).len(), 4, "the next sweep");
        // A small set is kept once per sweep too, not every few slices.
        let mut k = Keeper::default();
        let few = || vec![Arc::from("a"), Arc::from("b")];
        let got: Vec<usize> = (0..2 * SWEEP_SLICES)
            .map(|_| k.next_topics(few).len())
            .collect();
        assert_eq!(got.iter().sum::<usize>(), 4, "twice in two sweeps");
        assert_eq!((got[0], got[1], got[2]), (1, 1, 0));
        assert_eq!(got[SWEEP_SLICES], 1, "the second sweep begins on time");
    }
}
