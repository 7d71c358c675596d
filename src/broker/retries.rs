//! The publisher's retry queue: pushes answered 202 that Redis refused for now, oldest
//! first, each for the streams it has not reached, and which streams they hold up. A later
//! push to a held stream waits behind them (the publisher queues it here too), so a
//! stream's pushes are numbered in the order the node took them, also across a refusal.
//!
//! Streams are counted by a keyed hash, not by name: a `users` push can name 10,000, and
//! the queue already keeps the names once. Two streams with one hash only make a push
//! wait that did not have to.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use rustc_hash::FxBuildHasher;

use super::keys::StreamRef;
use super::script::streams;
use crate::api::ParsedPush;

/// A push waiting to be tried again, with the producer mark it keeps (one from a round trip
/// that went unanswered: Redis may have applied it then, so it goes again under that mark).
pub(crate) type Retry = (ParsedPush, Option<u64>);

/// Pushes waiting to be tried again, and the streams they hold up.
pub(crate) struct Retries {
    queue: VecDeque<Retry>,
    /// Entries in `queue` per stream key.
    held: HashMap<u64, u32, FxBuildHasher>,
    /// Keys the hash of stream names (a hash the API's callers cannot aim at).
    keys: RandomState,
    /// Bytes the pushes in `queue` hold ([`ParsedPush::weight`]).
    bytes: u64,
}

impl Retries {
    /// An empty queue.
    pub(crate) fn new() -> Retries {
        Retries {
            queue: VecDeque::new(),
            held: HashMap::default(),
            keys: RandomState::new(),
            bytes: 0,
        }
    }

    /// Bytes the waiting pushes hold.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Pushes waiting.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues `push` last: the newest.
    pub(crate) fn push_back(&mut self, push: ParsedPush, mark: Option<u64>) {
        self.count(&push, true);
        self.queue.push_back((push, mark));
    }

    /// Queues `pushes` first, in their order: they are older than every push waiting (taken
    /// from the front, or sent before these were queued).
    pub(crate) fn put_first(&mut self, pushes: Vec<Retry>) {
        for retry in pushes.into_iter().rev() {
            self.count(&retry.0, true);
            self.queue.push_front(retry);
        }
    }

    /// Takes the oldest push; its streams are no longer held by it.
    pub(crate) fn pop_front(&mut self) -> Option<Retry> {
        let retry = self.queue.pop_front()?;
        self.count(&retry.0, false);
        Some(retry)
    }

    /// The key a stream is counted under.
    pub(crate) fn key(&self, s: StreamRef<'_>) -> u64 {
        self.keys.hash_one(s)
    }

    /// Whether a waiting push holds up the stream with key `key`.
    pub(crate) fn holds(&self, key: u64) -> bool {
        self.held.contains_key(&key)
    }

    fn count(&mut self, push: &ParsedPush, add: bool) {
        if add {
            self.bytes += push.weight();
        } else {
            self.bytes -= push.weight();
        }
        for s in streams(&push.target) {
            let key = self.keys.hash_one(s);
            if add {
                *self.held.entry(key).or_insert(0) += 1;
            } else if let Some(n) = self.held.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.held.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Target;

    fn push(target: Target) -> ParsedPush {
        ParsedPush {
            target,
            data: "1".into(),
            id: None,
            from: None,
        }
    }

    fn users(names: &[&str]) -> Target {
        Target::Users(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_stream_is_held_while_a_push_to_it_waits() {
        let mut r = Retries::new();
        let ann = r.key(StreamRef::User("ann"));
        let room = r.key(StreamRef::Topic("ann"));
        r.push_back(push(users(&["ann", "bo"])), None);
        r.push_back(push(Target::User("ann".into())), Some(3));
        r.push_back(push(Target::Broadcast), None);
        // Data and names: "1" + two listed ids (each a 24-byte `String` and a 32-byte
        // chunk), "1" + "ann", "1".
        assert_eq!(r.bytes(), (1 + 2 * 56) + 4 + 1);
        assert!(r.holds(ann));
        assert!(!r.holds(room), "a topic is not the user of the same name");
        r.pop_front();
        assert!(r.holds(ann), "one push to ann still waits");
        assert!(!r.holds(r.key(StreamRef::User("bo"))));
        assert_eq!(r.pop_front().map(|(_, mark)| mark), Some(Some(3)));
        assert!(!r.holds(ann));
        assert_eq!(r.len(), 1);
        r.pop_front();
        assert!(r.is_empty() && r.held.is_empty());
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn pushes_put_first_keep_their_order_ahead_of_the_queue() {
        let mut r = Retries::new();
        r.push_back(push(Target::User("c".into())), None);
        r.put_first(vec![
            (push(Target::User("a".into())), None),
            (push(Target::Topic("b".into())), None),
        ]);
        let order: Vec<Target> =
            std::iter::from_fn(|| r.pop_front().map(|(p, _)| p.target)).collect();
        assert_eq!(
            order,
            [
                Target::User("a".into()),
                Target::Topic("b".into()),
                Target::User("c".into())
            ]
        );
        assert!(r.held.is_empty());
    }
}
