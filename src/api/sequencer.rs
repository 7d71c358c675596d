//! The topic-stream sequencer (docs/protocol.md 4.1): the API thread numbers every topic
//! push before it is encoded, so every shard gets the same frame with the same `seq`.
//!
//! Topic names come from upstreams, so entries are bounded: one is forgotten after
//! `history_ttl_ms` without a push (its numbering then restarts under a new epoch), and
//! past `MAX_TOPIC_STREAMS` entries the least recently pushed ones are forgotten first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxBuildHasher;

/// Most topic streams numbered at once; beyond it the least recently pushed is forgotten.
pub const MAX_TOPIC_STREAMS: usize = 1_000_000;

/// The epoch shown for a topic that has no stream (never pushed, or forgotten); it is
/// never the epoch of a stream, so resuming from it is never `true`.
pub const NO_EPOCH: &str = "0000000000000000";

/// A fresh random epoch, 16 hex digits, never `NO_EPOCH`.
pub fn new_epoch() -> Arc<str> {
    let n: u64 = rand::random::<u64>().max(1);
    format!("{n:016x}").into()
}

/// One topic's numbering.
struct Entry {
    /// The map's key, shared with the push records.
    name: Arc<str>,
    seq: u64,
    epoch: Arc<str>,
    last: Instant,
    /// `last` before the latest push, which a rollback puts back.
    prev_last: Instant,
}

/// One push, in push order: the entry's last push while `seq` matches (and the epoch is
/// the same life).
struct Record {
    topic: Arc<str>,
    epoch: Arc<str>,
    seq: u64,
    at: Instant,
}

/// Per-topic sequence numbers and epochs.
pub struct Sequencer {
    by_name: HashMap<Arc<str>, Entry, FxBuildHasher>,
    /// Pushes in order; stale ones (not an entry's last) are skipped or compacted away.
    order: VecDeque<Record>,
    ttl: Duration,
    cap: usize,
}

impl Sequencer {
    /// An empty sequencer forgetting a topic after `ttl` without a push, holding at most
    /// `cap` topics.
    pub fn new(ttl: Duration, cap: usize) -> Sequencer {
        Sequencer {
            by_name: HashMap::default(),
            order: VecDeque::new(),
            ttl,
            cap: cap.max(1),
        }
    }

    /// Numbers the next push to `topic` at `now`: its `seq` and the stream's epoch.
    pub fn next(&mut self, topic: &str, now: Instant) -> (u64, Arc<str>) {
        self.expire(now);
        let ttl = self.ttl;
        // One lookup on the hot path: a live stream is numbered in place.
        let (name, seq, epoch) = match self.by_name.get_mut(topic) {
            Some(e) if now.saturating_duration_since(e.last) < ttl => {
                e.seq += 1;
                e.prev_last = e.last;
                e.last = now;
                (Arc::clone(&e.name), e.seq, Arc::clone(&e.epoch))
            }
            _ => {
                let name: Arc<str> = Arc::from(topic);
                let epoch = new_epoch();
                self.by_name.insert(
                    Arc::clone(&name),
                    Entry {
                        name: Arc::clone(&name),
                        seq: 1,
                        epoch: Arc::clone(&epoch),
                        last: now,
                        prev_last: now,
                    },
                );
                (name, 1, epoch)
            }
        };
        self.order.push_back(Record {
            topic: name,
            epoch: Arc::clone(&epoch),
            seq,
            at: now,
        });
        while self.by_name.len() > self.cap {
            let Some(r) = self.order.pop_front() else {
                break;
            };
            self.forget_if_last(&r);
        }
        // Stale records are dropped once they outnumber entries: amortised O(1) a push.
        if self.order.len() > 2 * self.by_name.len() + 1024 {
            let map = &self.by_name;
            self.order.retain(|r| is_last(map, r));
        }
        (seq, epoch)
    }

    /// Takes back `seq` for `topic` when the push it numbered was not queued (it reached
    /// no shard), so the stream has no gap and ages from its previous push: the shards,
    /// which never had this one, forget the stream when the sequencer does.
    pub fn rollback(&mut self, topic: &str, seq: u64) {
        let Some(e) = self.by_name.get_mut(topic) else {
            return;
        };
        if e.seq != seq {
            return;
        }
        if seq == 1 {
            // It opened the stream: as if it never had been (its record is stale now).
            self.by_name.remove(topic);
            return;
        }
        e.seq -= 1;
        e.last = e.prev_last;
        if let Some(r) = self.order.back_mut() {
            if &*r.topic == topic && r.seq == seq {
                // Earlier than the records before it: the stream is swept a little later
                // than its TTL, while `current` and `next` judge it by `last` already.
                r.seq -= 1;
                r.at = e.prev_last;
            }
        }
    }

    /// The topic's current `seq` and epoch at `now`, if it has a stream.
    pub fn current(&self, topic: &str, now: Instant) -> Option<(u64, Arc<str>)> {
        self.by_name
            .get(topic)
            .filter(|e| now.saturating_duration_since(e.last) < self.ttl)
            .map(|e| (e.seq, Arc::clone(&e.epoch)))
    }

    /// Topics numbered now (some may be past their TTL until the next push sweeps them).
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no topic is numbered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Forgets topics whose last push is a TTL old; only the queue's front is looked at.
    fn expire(&mut self, now: Instant) {
        while let Some(r) = self.order.front() {
            if now.saturating_duration_since(r.at) < self.ttl {
                break;
            }
            if let Some(r) = self.order.pop_front() {
                self.forget_if_last(&r);
            }
        }
    }

    fn forget_if_last(&mut self, r: &Record) {
        if is_last(&self.by_name, r) {
            self.by_name.remove(&*r.topic);
        }
    }
}

/// Whether `r` is its topic's last push.
fn is_last(map: &HashMap<Arc<str>, Entry, FxBuildHasher>, r: &Record) -> bool {
    map.get(&*r.topic)
        .is_some_and(|e| e.seq == r.seq && Arc::ptr_eq(&e.epoch, &r.epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_per_topic_with_one_epoch() {
        let mut s = Sequencer::new(Duration::from_secs(10), 100);
        let t = Instant::now();
        let (a1, ea) = s.next("a", t);
        let (a2, ea2) = s.next("a", t);
        let (b1, eb) = s.next("b", t);
        assert_eq!((a1, a2, b1), (1, 2, 1));
        assert_eq!(ea, ea2);
        assert_ne!(ea, eb);
        assert_eq!(ea.len(), 16);
        assert_ne!(&*ea, NO_EPOCH);
        assert_eq!(s.current("a", t), Some((2, ea)));
        assert_eq!(s.current("c", t), None);
    }

    #[test]
    fn ttl_restarts_numbering_with_a_new_epoch_and_frees_entries() {
        let ttl = Duration::from_secs(10);
        let mut s = Sequencer::new(ttl, 100);
        let t = Instant::now();
        let (_, e1) = s.next("a", t);
        s.next("a", t + Duration::from_secs(5));
        // The TTL counts from the last push.
        assert_eq!(s.next("a", t + Duration::from_secs(14)).0, 3);
        assert!(s.current("a", t + Duration::from_secs(24)).is_none());
        let (seq, e2) = s.next("a", t + Duration::from_secs(24));
        assert_eq!(seq, 1);
        assert_ne!(e1, e2);
        // Other topics go without being pushed again.
        s.next("b", t + Duration::from_secs(24));
        s.next("c", t + Duration::from_secs(40));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn cap_forgets_the_least_recently_pushed() {
        let mut s = Sequencer::new(Duration::from_secs(1000), 3);
        let t = Instant::now();
        for name in ["a", "b", "c"] {
            s.next(name, t);
        }
        s.next("a", t);
        s.next("d", t);
        assert_eq!(s.len(), 3);
        assert!(s.current("b", t).is_none(), "b was least recently pushed");
        assert_eq!(s.current("a", t).map(|c| c.0), Some(2));
    }

    #[test]
    fn spraying_names_stays_bounded() {
        let mut s = Sequencer::new(Duration::from_secs(1000), 50);
        let t = Instant::now();
        for i in 0..10_000 {
            s.next(&format!("t{i}"), t);
            s.next("hot", t);
        }
        assert!(s.len() <= 50);
        assert!(s.order.len() <= 2 * 50 + 1024 + 1);
        assert_eq!(s.current("hot", t).map(|c| c.0), Some(10_000));
    }

    #[test]
    fn rollback_leaves_no_gap() {
        let mut s = Sequencer::new(Duration::from_secs(10), 10);
        let t = Instant::now();
        s.next("a", t);
        let (seq, _) = s.next("a", t);
        s.rollback("a", seq);
        assert_eq!(s.next("a", t).0, 2);
        s.rollback("a", 1);
        assert_eq!(
            s.current("a", t).map(|c| c.0),
            Some(2),
            "only the last is taken back"
        );
    }

    #[test]
    fn a_rolled_back_push_does_not_keep_the_stream_alive() {
        // Review s17d F3: the refused push's time kept the old epoch showing for up to
        // another TTL after the shards had forgotten the stream.
        let ttl = Duration::from_millis(1000);
        let mut s = Sequencer::new(ttl, 10);
        let t0 = Instant::now();
        let (_, epoch) = s.next("news", t0);
        let t1 = t0 + Duration::from_millis(800);
        let (seq, _) = s.next("news", t1);
        s.rollback("news", seq);
        let t2 = t0 + Duration::from_millis(1150);
        assert_eq!(
            s.current("news", t2),
            None,
            "forgotten a TTL after the push that went"
        );
        let (seq, fresh) = s.next("news", t2);
        assert_eq!(seq, 1);
        assert_ne!(fresh, epoch);
        // A push that opened a stream and was refused leaves no stream at all.
        let (seq, _) = s.next("quiet", t2);
        s.rollback("quiet", seq);
        assert_eq!(s.current("quiet", t2), None);
        assert_eq!(s.next("quiet", t2).0, 1);
    }
}
