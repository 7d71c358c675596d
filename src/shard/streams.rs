//! The shard's topic streams (docs/protocol.md 4.1): per topic, its current `seq` and
//! epoch as numbered by the API's sequencer, and its recent pushes. Every shard gets every
//! topic push, so it keeps each topic's history even with no member here: a subscriber
//! resumes on its own shard at once. The frames are the `Wire` all shards share.
//!
//! Bounds: `history_size` pushes per topic, none older than `history_ttl_ms`, a stream is
//! forgotten a TTL after its last push, at most `MAX_TOPIC_STREAMS` streams (the least
//! recently pushed go first), and the frame bytes count in the shard's
//! `history_memory_bytes` together with user history.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::wire::Wire;
use rustc_hash::FxBuildHasher;
use slab::Slab;

use super::compact::compact;
use super::history::{first_seq, reserve_one, Limits};
use super::ticks::moved;
pub(crate) use crate::api::sequencer::MAX_TOPIC_STREAMS;

/// One topic's stream on this shard.
struct Stream {
    /// The topic (the key of `by_name` too).
    name: Arc<str>,
    epoch: Arc<str>,
    /// Numbers this life of the stream on this shard (a restart, a gap, a TTL): tells its
    /// records from a former life's, and from another stream's in a reused slot.
    life: u32,
    seq: u64,
    /// Tick of the last push.
    last: u32,
    /// Recent pushes, oldest first, contiguous seqs ending at `seq`.
    ring: VecDeque<Wire>,
}

/// One push, in accept order: 16 bytes, one per retained push (and one per push until
/// its stream moves on).
#[derive(Clone, Copy)]
struct Record {
    /// The stream's slot.
    key: u32,
    /// The stream's `life` when recorded (wraps: a stale record would need 2^32
    /// restarts to match).
    life: u32,
    /// The low 32 bits of the push's `seq` (with `life`, a false match would need 2^32
    /// pushes between a record and its push).
    seq: u32,
    at: u32,
}

/// Topic streams by name, with their history bookkeeping.
pub(super) struct Streams {
    by_name: HashMap<Arc<str>, u32, FxBuildHasher>,
    slots: Slab<Stream>,
    /// Retained frames in accept order, for TTL expiry and memory eviction; stale ones
    /// (a full ring let their frame go) are compacted once they outnumber `held`.
    frames: VecDeque<Record>,
    /// Frames held in all rings: the records of `frames` that are not stale.
    held: usize,
    /// `frames` is compacted again only once it is twice what the last compaction left.
    compact_at: usize,
    /// Every push in order, for forgetting streams (TTL, cap); stale ones are compacted.
    pushes: VecDeque<Record>,
    limits: Limits,
    cap: usize,
    bytes: u64,
    evictions: u64,
    /// The last `Stream::life` given.
    lives: u32,
}

impl Streams {
    /// No streams, with these history bounds and at most `cap` streams.
    pub(super) fn new(limits: Limits, cap: usize) -> Streams {
        Streams {
            by_name: HashMap::default(),
            slots: Slab::new(),
            frames: VecDeque::new(),
            held: 0,
            compact_at: 0,
            pushes: VecDeque::new(),
            limits,
            cap: cap.max(1),
            bytes: 0,
            evictions: 0,
            lives: 0,
        }
    }

    /// Frame bytes held.
    pub(super) fn history_bytes(&self) -> u64 {
        self.bytes
    }

    /// Shrinks the tables forgotten streams left mostly empty; returns the heap bytes
    /// freed, roughly.
    pub(super) fn compact(&mut self) -> usize {
        compact(&mut self.by_name) + compact(&mut self.frames) + compact(&mut self.pushes)
    }

    /// Pushes dropped before their TTL.
    pub(super) fn evictions(&self) -> u64 {
        self.evictions
    }

    fn get(&self, topic: &str) -> Option<&Stream> {
        self.by_name
            .get(topic)
            .and_then(|&k| self.slots.get(k as usize))
    }

    /// A new stream for `topic` (replacing any), at `seq` with an empty ring.
    fn start(&mut self, topic: &Arc<str>, epoch: &Arc<str>, seq: u64, tick: u32) -> u32 {
        self.forget(topic);
        self.lives = self.lives.wrapping_add(1);
        let key = self.slots.insert(Stream {
            name: Arc::clone(topic),
            epoch: Arc::clone(epoch),
            life: self.lives,
            seq,
            last: tick,
            ring: VecDeque::new(),
        }) as u32;
        self.by_name.insert(Arc::clone(topic), key);
        key
    }

    /// Keeps `frame`, push `seq` of `topic` in `epoch`, recorded at `tick`.
    pub(super) fn record(
        &mut self,
        topic: &Arc<str>,
        seq: u64,
        epoch: &Arc<str>,
        frame: &Wire,
        tick: u32,
    ) {
        let ttl = self.limits.ttl_ticks;
        let current = self.by_name.get(&**topic).copied().filter(|&k| {
            self.slots.get(k as usize).is_some_and(|s| {
                *s.epoch == **epoch && seq == s.seq + 1 && tick.saturating_sub(s.last) <= ttl
            })
        });
        // A new life (or a gap): what was held cannot be resumed across it.
        let key = match current {
            Some(k) => k,
            None => self.start(topic, epoch, 0, tick),
        };
        let Some(s) = self.slots.get_mut(key as usize) else {
            return;
        };
        s.seq = seq;
        s.last = tick;
        let rec = Record {
            key,
            life: s.life,
            seq: seq as u32,
            at: tick,
        };
        let size = self.limits.size;
        if size > 0 {
            if s.ring.len() >= size {
                if let Some(old) = s.ring.pop_front() {
                    self.bytes -= old.len() as u64;
                    self.held -= 1;
                    self.evictions += 1;
                }
            }
            reserve_one(&mut s.ring, size);
            s.ring.push_back(frame.clone());
            self.bytes += frame.len() as u64;
            self.held += 1;
            self.frames.push_back(rec);
            if self.frames.len() > (2 * self.held + 1024).max(self.compact_at) {
                let slots = &self.slots;
                self.frames.retain(|r| holds(slots, r));
                self.compact_at = 2 * self.frames.len();
            }
        }
        self.pushes.push_back(rec);
        while self.by_name.len() > self.cap {
            let Some(r) = self.pushes.pop_front() else {
                break;
            };
            self.forget_if_last(&r);
        }
        if self.pushes.len() > 2 * self.by_name.len() + 1024 {
            let slots = &self.slots;
            self.pushes.retain(|r| is_last(slots, r));
        }
    }

    /// Replaces the topic's stream with what the cluster holds: `seq`, `epoch`, and its
    /// recent pushes `entries` (contiguous, ending at `seq`, or empty).
    pub(super) fn load(
        &mut self,
        topic: &Arc<str>,
        seq: u64,
        epoch: &Arc<str>,
        entries: &[(u64, Wire)],
        tick: u32,
    ) {
        self.forget(topic);
        let skip = entries.len().saturating_sub(self.limits.size);
        for (s, frame) in &entries[skip..] {
            self.record(topic, *s, epoch, frame, tick);
        }
        match self.by_name.get(&**topic).copied() {
            Some(k) => {
                if let Some(s) = self.slots.get_mut(k as usize) {
                    s.seq = seq;
                }
            }
            None => {
                self.start(topic, epoch, seq, tick);
            }
        }
    }

    /// The frame of the topic's push `seq`, while it is held here (cluster mode: to tell
    /// a push Redis numbered again from one this shard had).
    pub(super) fn frame_at(&self, topic: &str, seq: u64) -> Option<&Wire> {
        let s = self.get(topic)?;
        let first = first_seq(s.seq, s.ring.len());
        if seq < first || seq > s.seq {
            return None;
        }
        s.ring.get((seq - first) as usize)
    }

    /// Drops the topic's stream and history here (cluster mode: no longer served).
    pub(super) fn forget(&mut self, topic: &str) {
        if let Some(k) = self.by_name.remove(topic) {
            if let Some(old) = self.slots.try_remove(k as usize) {
                self.bytes -= ring_bytes(&old.ring);
                self.held -= old.ring.len();
            }
        }
    }

    /// The tick of the oldest retained frame.
    pub(super) fn oldest(&self) -> Option<u32> {
        self.frames.front().map(|r| r.at)
    }

    /// Drops the oldest retained frame (for the memory cap); true if one was held.
    pub(super) fn evict_oldest(&mut self) -> bool {
        let Some(r) = self.frames.pop_front() else {
            return false;
        };
        let dropped = self.drop_front(&r);
        self.evictions += u64::from(dropped);
        dropped
    }

    fn drop_front(&mut self, r: &Record) -> bool {
        let Some(s) = self.slots.get_mut(r.key as usize) else {
            return false;
        };
        if s.life != r.life || s.ring.is_empty() || first_seq(s.seq, s.ring.len()) as u32 != r.seq {
            return false;
        }
        if let Some(h) = s.ring.pop_front() {
            self.bytes -= h.len() as u64;
            self.held -= 1;
        }
        if s.ring.is_empty() {
            s.ring = VecDeque::new();
        }
        true
    }

    fn forget_if_last(&mut self, r: &Record) {
        if is_last(&self.slots, r) {
            let s = self.slots.remove(r.key as usize);
            self.by_name.remove(&*s.name);
            self.bytes -= ring_bytes(&s.ring);
            self.held -= s.ring.len();
        }
    }

    /// The shard's ticks moved back by `by` (`Shard::rebase_ticks`).
    pub(super) fn rebase(&mut self, by: u32) {
        for r in self.frames.iter_mut().chain(self.pushes.iter_mut()) {
            r.at = moved(r.at, by);
        }
        for (_, s) in self.slots.iter_mut() {
            s.last = moved(s.last, by);
        }
    }

    /// Drops frames, and forgets streams, a TTL old; amortised O(1) per push.
    pub(super) fn expire(&mut self, tick: u32) {
        let ttl = self.limits.ttl_ticks;
        while self
            .frames
            .front()
            .is_some_and(|r| tick.saturating_sub(r.at) >= ttl)
        {
            if let Some(r) = self.frames.pop_front() {
                self.drop_front(&r);
            }
        }
        // A stream outlives its last push by a tick more than the TTL: the API's sequencer
        // counts it from the numbering, to the millisecond, a little before the shard's
        // tick; a shard that forgot the stream first would answer a subscribe with the
        // placeholder epoch while the sequencer goes on numbering in the old one.
        while self
            .pushes
            .front()
            .is_some_and(|r| tick.saturating_sub(r.at) > ttl)
        {
            if let Some(r) = self.pushes.pop_front() {
                self.forget_if_last(&r);
            }
        }
    }

    /// The topic's current `seq` and epoch at `tick`, when it has a live stream here.
    pub(super) fn current(&self, topic: &str, tick: u32) -> Option<(u64, &str)> {
        self.live(topic, tick).map(|s| (s.seq, &*s.epoch))
    }

    fn live(&self, topic: &str, tick: u32) -> Option<&Stream> {
        self.get(topic)
            .filter(|s| tick.saturating_sub(s.last) <= self.limits.ttl_ticks)
    }

    /// Whether a subscriber of `topic` can resume after `since` in `epoch`; if so, the
    /// frames to replay, in order, are appended to `out`.
    pub(super) fn resume(
        &self,
        topic: &str,
        since: u64,
        epoch: &str,
        tick: u32,
        out: &mut Vec<Wire>,
    ) -> bool {
        let Some(s) = self.live(topic, tick) else {
            return false;
        };
        if *s.epoch != *epoch || since > s.seq {
            return false;
        }
        if since == s.seq {
            return true;
        }
        if s.ring.is_empty() {
            return false;
        }
        let first = first_seq(s.seq, s.ring.len());
        if first > since + 1 {
            return false;
        }
        let skip = (since + 1 - first) as usize;
        out.extend(s.ring.range(skip..).cloned());
        true
    }
}

fn ring_bytes(ring: &VecDeque<Wire>) -> u64 {
    ring.iter().map(|h| h.len() as u64).sum()
}

/// Whether `r` is its stream's latest push (the stream has not moved on since).
/// Whether `r` names a frame its stream's ring still holds.
fn holds(slots: &Slab<Stream>, r: &Record) -> bool {
    slots.get(r.key as usize).is_some_and(|s| {
        s.life == r.life && (s.seq as u32).wrapping_sub(r.seq) < s.ring.len() as u32
    })
}

fn is_last(slots: &Slab<Stream>, r: &Record) -> bool {
    slots
        .get(r.key as usize)
        .is_some_and(|s| s.seq as u32 == r.seq && s.life == r.life)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(size: usize, ttl_ticks: u32, memory: u64) -> Limits {
        Limits {
            size,
            ttl_ticks,
            memory,
        }
    }

    fn push(s: &mut Streams, topic: &str, seq: u64, epoch: &Arc<str>, tick: u32) -> Wire {
        let frame = Wire::from(vec![seq as u8; 10]);
        s.record(&Arc::from(topic), seq, epoch, &frame, tick);
        frame
    }

    #[test]
    fn records_of_frames_a_full_ring_let_go_do_not_pile_up_for_the_ttl() {
        // One frame kept per topic, a TTL far away: 100,000 pushes once left 100,000
        // records (16-32 bytes each) for the TTL.
        let mut s = Streams::new(limits(1, 1_000_000, 1 << 30), 10);
        let e: Arc<str> = "e1".into();
        for n in 1..=100_000u64 {
            push(
                &mut s,
                if n % 2 == 0 { "a" } else { "b" },
                n.div_ceil(2),
                &e,
                0,
            );
        }
        assert_eq!(s.held, 2);
        assert!(s.frames.len() <= 2 * s.held + 1024, "{}", s.frames.len());
        // What is held still expires, and resumes, as before.
        let mut out = Vec::new();
        assert!(s.resume("a", 49_999, "e1", 0, &mut out));
        assert_eq!(out.len(), 1);
        s.expire(1_000_000);
        assert_eq!((s.history_bytes(), s.held), (0, 0));
        assert!(s.frames.is_empty());
    }

    #[test]
    fn keeps_history_size_and_resumes() {
        let mut s = Streams::new(limits(3, 100, 1 << 20), 10);
        let e: Arc<str> = "e1".into();
        let frames: Vec<Wire> = (1..=5).map(|n| push(&mut s, "t", n, &e, 0)).collect();
        assert_eq!(s.current("t", 0), Some((5, "e1")));
        assert_eq!(s.history_bytes(), 30);
        assert_eq!(s.evictions(), 2);
        let mut out = Vec::new();
        assert!(s.resume("t", 2, "e1", 0, &mut out));
        assert_eq!(out, frames[2..].to_vec());
        out.clear();
        assert!(!s.resume("t", 1, "e1", 0, &mut out), "seq 2 is gone");
        assert!(s.resume("t", 5, "e1", 0, &mut out));
        assert!(!s.resume("t", 6, "e1", 0, &mut out), "beyond current");
        assert!(!s.resume("t", 3, "e2", 0, &mut out), "other epoch");
        assert!(!s.resume("u", 0, "e1", 0, &mut out), "no stream");
        assert!(out.is_empty());
    }

    #[test]
    fn new_epoch_restarts_and_frees() {
        let mut s = Streams::new(limits(10, 100, 1 << 20), 10);
        let e1: Arc<str> = "e1".into();
        let e2: Arc<str> = "e2".into();
        push(&mut s, "t", 1, &e1, 0);
        push(&mut s, "t", 2, &e1, 0);
        push(&mut s, "t", 1, &e2, 1);
        assert_eq!(s.history_bytes(), 10);
        assert_eq!(s.current("t", 1), Some((1, "e2")));
        // Stale records of the old life are skipped.
        s.expire(100);
        assert_eq!(s.current("t", 100), Some((1, "e2")));
        s.expire(101);
        // The frames go at the TTL; the stream a tick later (the sequencer's margin).
        assert_eq!(s.history_bytes(), 0);
        assert_eq!(s.current("t", 101), Some((1, "e2")));
        s.expire(102);
        assert!(s.current("t", 102).is_none());
        assert!(s.by_name.is_empty());
    }

    #[test]
    fn ttl_and_memory_eviction() {
        let mut s = Streams::new(limits(10, 50, 1 << 20), 10);
        let e: Arc<str> = "e".into();
        push(&mut s, "a", 1, &e, 0);
        push(&mut s, "b", 1, &e, 10);
        assert_eq!(s.oldest(), Some(0));
        assert!(s.evict_oldest());
        assert_eq!(s.evictions(), 1);
        assert_eq!(s.history_bytes(), 10);
        let mut out = Vec::new();
        assert!(!s.resume("a", 0, "e", 10, &mut out));
        assert!(s.resume("a", 1, "e", 10, &mut out), "seq still known");
        s.expire(60);
        assert_eq!(s.history_bytes(), 0);
        s.expire(61);
        assert!(s.current("b", 61).is_none());
        assert_eq!(s.evictions(), 1, "TTL expiry is not eviction");
    }

    #[test]
    fn cap_bounds_streams_and_records() {
        let mut s = Streams::new(limits(1, 1000, 1 << 20), 20);
        let e: Arc<str> = "e".into();
        for i in 0..5000u64 {
            push(&mut s, &format!("t{i}"), 1, &e, 0);
            push(&mut s, "hot", i + 1, &e, 0);
        }
        assert!(s.by_name.len() <= 20);
        assert!(s.pushes.len() <= 2 * 20 + 1024 + 1);
        assert_eq!(s.current("hot", 0), Some((5000, "e")));
        assert!(s.history_bytes() <= 20 * 10);
    }

    #[test]
    fn records_name_the_stream_by_slot_in_16_bytes() {
        let mut s = Streams::new(limits(10, 100, 1 << 20), 10);
        let e: Arc<str> = "e".into();
        for n in 1..=5 {
            // A new `Arc` per push, as the API makes them.
            push(&mut s, "t", n, &e, 0);
        }
        let key = s.by_name["t"];
        assert!(s.frames.iter().all(|r| r.key == key));
        assert_eq!(s.frames.len(), 5);
        assert_eq!(std::mem::size_of::<Record>(), 16);
    }

    #[test]
    fn a_reused_slot_ignores_the_former_streams_records() {
        let mut s = Streams::new(limits(10, 100, 1 << 20), 10);
        let e: Arc<str> = "e".into();
        push(&mut s, "a", 1, &e, 0);
        s.forget("a");
        assert_eq!(s.history_bytes(), 0);
        // "b" takes a's slot, with its seq 1 too.
        push(&mut s, "b", 1, &e, 5);
        assert_eq!(s.by_name["b"], 0);
        // a's records reach the front first: skipped, b's push stays.
        assert!(!s.evict_oldest(), "a's frame record is stale");
        assert_eq!(s.history_bytes(), 10);
        s.expire(100);
        assert_eq!(
            s.current("b", 100),
            Some((1, "e")),
            "a's push record is stale"
        );
        s.expire(106);
        assert!(s.current("b", 106).is_none());
    }

    #[test]
    fn size_zero_keeps_seq_only() {
        let mut s = Streams::new(limits(0, 100, 1 << 20), 10);
        let e: Arc<str> = "e".into();
        push(&mut s, "t", 1, &e, 0);
        assert_eq!(s.current("t", 0), Some((1, "e")));
        assert_eq!(s.history_bytes(), 0);
        let mut out = Vec::new();
        assert!(!s.resume("t", 0, "e", 0, &mut out));
        assert!(s.resume("t", 1, "e", 0, &mut out));
    }
}
