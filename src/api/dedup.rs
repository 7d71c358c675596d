//! Push deduplication (docs/protocol.md 4.3): the API thread, the single ingress for every
//! push, remembers which push `id`s each stream (a user, or a topic) accepted within
//! `dedup_window_ms`, so an upstream's retry is accepted and not delivered again.
//!
//! Ids come from upstreams, so the table is bounded twice: an entry is forgotten once it is
//! a window old, and past `MAX_DEDUP_ENTRIES` the oldest is forgotten first. Entries are
//! kept in accept order in a queue, so expiry only looks at its front: amortised O(1).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxBuildHasher;

/// Most (stream, id) pairs remembered; beyond it the oldest is forgotten first.
pub const MAX_DEDUP_ENTRIES: usize = 1_000_000;

/// Which kind of stream an id belongs to; a user and a topic of the same name differ.
#[derive(Clone, Copy)]
pub enum Stream<'a> {
    /// A user's direct-push stream.
    User(&'a str),
    /// A topic's stream.
    Topic(&'a str),
}

/// One table key: kind, stream and id joined by NUL, which user ids (no control
/// characters) and topic names (printable ASCII) cannot contain, so keys never collide.
fn key_into(k: &mut String, stream: Stream<'_>, id: &str) {
    let (kind, name) = match stream {
        Stream::User(u) => ('u', u),
        Stream::Topic(t) => ('t', t),
    };
    k.clear();
    k.push(kind);
    k.push_str(name);
    k.push('\0');
    k.push_str(id);
}

/// Remembered (stream, id) pairs with their accept time.
pub struct Dedup {
    /// Key to accept time; every entry has exactly one record in `order`.
    by_key: HashMap<Arc<str>, Instant, FxBuildHasher>,
    /// Keys in accept order.
    order: VecDeque<(Arc<str>, Instant)>,
    window: Duration,
    cap: usize,
    /// Pairs forgotten within their window because `cap` were held: a retry of one of
    /// them is delivered again.
    forgotten_early: u64,
    /// Reused to build lookup keys, so checking a push allocates nothing.
    scratch: String,
}

impl Dedup {
    /// An empty table remembering an id for `window`, at most `cap` of them.
    pub fn new(window: Duration, cap: usize) -> Dedup {
        Dedup {
            by_key: HashMap::default(),
            order: VecDeque::new(),
            window,
            cap: cap.max(1),
            forgotten_early: 0,
            scratch: String::new(),
        }
    }

    /// Whether `stream` accepted `id` less than a window before `now`.
    pub fn seen(&mut self, stream: Stream<'_>, id: &str, now: Instant) -> bool {
        self.expire(now);
        key_into(&mut self.scratch, stream, id);
        self.by_key.contains_key(self.scratch.as_str())
    }

    /// Remembers that `stream` accepted `id` at `now` (a pair already remembered keeps its
    /// first accept time: the window counts from the original push).
    pub fn record(&mut self, stream: Stream<'_>, id: &str, now: Instant) {
        self.expire(now);
        key_into(&mut self.scratch, stream, id);
        if self.by_key.contains_key(self.scratch.as_str()) {
            return;
        }
        let k: Arc<str> = self.scratch.as_str().into();
        self.by_key.insert(Arc::clone(&k), now);
        self.order.push_back((k, now));
        while self.by_key.len() > self.cap {
            let Some((old, _)) = self.order.pop_front() else {
                break;
            };
            self.by_key.remove(&old);
            // `expire` ran first: whatever is left is within its window.
            self.forgotten_early += 1;
        }
    }

    /// Pairs forgotten within their window because the table was full, so far.
    pub fn forgotten_early(&self) -> u64 {
        self.forgotten_early
    }

    /// Pairs remembered now.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Forgets pairs a window old; queue and map hold the same keys, so only the front is
    /// looked at.
    fn expire(&mut self, now: Instant) {
        while let Some((_, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            if let Some((k, _)) = self.order.pop_front() {
                self.by_key.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_stream_and_kind() {
        let mut d = Dedup::new(Duration::from_secs(10), 100);
        let t = Instant::now();
        assert!(!d.seen(Stream::User("a"), "x", t));
        d.record(Stream::User("a"), "x", t);
        assert!(d.seen(Stream::User("a"), "x", t));
        assert!(!d.seen(Stream::User("b"), "x", t));
        assert!(!d.seen(Stream::Topic("a"), "x", t));
        assert!(!d.seen(Stream::User("a"), "y", t));
        // "a" + "b\0c" must not meet "a\0b" + "c" (cannot happen with valid names, but the
        // kind prefix and separator keep keys apart anyway).
        d.record(Stream::Topic("t"), "1", t);
        assert!(!d.seen(Stream::User("t"), "1", t));
    }

    #[test]
    fn window_counts_from_the_first_accept() {
        let w = Duration::from_secs(10);
        let mut d = Dedup::new(w, 100);
        let t = Instant::now();
        d.record(Stream::User("a"), "x", t);
        d.record(Stream::User("a"), "x", t + Duration::from_secs(5));
        assert!(d.seen(Stream::User("a"), "x", t + Duration::from_secs(9)));
        assert!(!d.seen(Stream::User("a"), "x", t + w));
        assert!(d.is_empty(), "expired entries are freed");
    }

    #[test]
    fn spraying_ids_stays_bounded_oldest_first() {
        let mut d = Dedup::new(Duration::from_secs(1000), 50);
        let t = Instant::now();
        for i in 0..10_000 {
            d.record(Stream::User("u"), &format!("id{i}"), t);
        }
        assert_eq!(d.len(), 50);
        assert_eq!(d.order.len(), 50);
        assert!(d.seen(Stream::User("u"), "id9999", t));
        assert!(
            !d.seen(Stream::User("u"), "id0", t),
            "oldest forgotten first"
        );
        // Counted, so an operator sees that retries of those would be delivered again.
        assert_eq!(d.forgotten_early(), 10_000 - 50);
        // Pairs that reach the end of their window are not early.
        let mut d = Dedup::new(Duration::from_secs(1), 2);
        d.record(Stream::User("u"), "a", t);
        d.record(Stream::User("u"), "b", t);
        d.record(Stream::User("u"), "c", t + Duration::from_secs(1));
        assert_eq!((d.len(), d.forgotten_early()), (1, 0));
    }
}
