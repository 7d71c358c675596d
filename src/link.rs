//! The one way into a shard from another thread: a bounded queue per shard paired with
//! the shard's waker, sent on through a [`Links`] that exactly one thread owns.
//!
//! `Links` is not `Clone`, so "the API thread is the only sender of commands" is a fact of
//! the types, not a comment: room seen in a queue is still there when its one owner sends,
//! which is what lets a push reach all of its shards or none. (Each acceptor has links of
//! its own to the connection queues; a handoff is an admitted connection, which
//! `max_connections` bounds first.) Wakes are batched: one per shard per turn of the
//! owner's loop (`wake_pending`), or at once when a queue is half full so a busy shard does
//! not wait for the turn to end.
//!
//! A queue is a crossbeam list channel with its bound kept beside it ([`QueueTx`]): its
//! slots come in blocks of 31 as messages arrive and go as they are taken. A bounded
//! crossbeam channel allocates and writes all of its slots when it is made: 17 MB per
//! shard, resident from the start, at the default capacity of 65,536.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::Waker;

/// The sending half of a shard's queue: at most `capacity` messages wait in it.
pub struct QueueTx<T> {
    tx: Sender<T>,
    cap: usize,
}

impl<T> Clone for QueueTx<T> {
    fn clone(&self) -> Self {
        QueueTx {
            tx: self.tx.clone(),
            cap: self.cap,
        }
    }
}

impl<T> QueueTx<T> {
    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }

    /// The most messages that may wait.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Queues `msg` unless the queue is full or its receiver is gone; returns how many
    /// waited before it. With one sender the bound is exact; senders that share a queue may
    /// each overshoot it by one.
    pub fn try_send(&self, msg: T) -> Result<usize, TrySendError<T>> {
        let before = self.tx.len();
        if before >= self.cap {
            return Err(TrySendError::Full(msg));
        }
        self.tx.try_send(msg).map(|()| before)
    }
}

/// One shard's end of a link: its queue and the waker that rouses it.
struct Link<T> {
    tx: QueueTx<T>,
    waker: Arc<Waker>,
    /// Sent to since the last wake.
    pending_wake: bool,
}

/// Why a message could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The shard's queue is full: backpressure, answered to whoever asked.
    #[error("shard queue is full")]
    Full,
    /// The shard has stopped (shutdown is under way).
    #[error("shard has stopped")]
    Stopped,
}

/// The senders to every shard for one kind of message, owned by the one thread that sends
/// it. Deliberately not `Clone`.
pub struct Links<T> {
    links: Vec<Link<T>>,
}

/// Makes a queue of at most `capacity` messages for one shard: the sending half goes into
/// a [`Links`] with [`Links::from_parts`], the receiving half to the shard.
pub(crate) fn queue<T>(capacity: usize) -> (QueueTx<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (QueueTx { tx, cap: capacity }, rx)
}

impl<T> Links<T> {
    /// Links to shards `0..n` from their queues' sending halves and wakers, in shard order.
    pub fn from_parts(parts: Vec<(QueueTx<T>, Arc<Waker>)>) -> Links<T> {
        Links {
            links: parts
                .into_iter()
                .map(|(tx, waker)| Link {
                    tx,
                    waker,
                    pending_wake: false,
                })
                .collect(),
        }
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether there are no shards.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Whether `shard`'s queue has room for one more message. Only the owner sends, so the
    /// answer holds until it sends.
    pub fn has_room(&self, shard: usize) -> bool {
        self.links
            .get(shard)
            .is_some_and(|l| l.tx.len() < l.tx.capacity())
    }

    /// Sends `msg` to `shard`; the wake follows at the end of the owner's turn, or now if
    /// the queue is half full. On failure the message comes back.
    pub fn send(&mut self, shard: usize, msg: T) -> Result<(), (SendError, T)> {
        let Some(link) = self.links.get_mut(shard) else {
            return Err((SendError::Stopped, msg));
        };
        match link.tx.try_send(msg) {
            Ok(before) => {
                if (before + 1) * 2 >= link.tx.capacity() {
                    let _ = link.waker.wake();
                    link.pending_wake = false;
                } else {
                    link.pending_wake = true;
                }
                Ok(())
            }
            Err(TrySendError::Full(m)) => Err((SendError::Full, m)),
            Err(TrySendError::Disconnected(m)) => Err((SendError::Stopped, m)),
        }
    }

    /// Sends every `(shard, message)` or none of them: refuses with `Full` when any of the
    /// shards lacks room, before anything is sent. On an error the messages not sent come
    /// back (all of them, unless a shard stopped part way: shutdown is under way).
    pub fn send_all_or_none(&mut self, msgs: Vec<(usize, T)>) -> Result<(), (SendError, Vec<T>)> {
        // Room for several messages to one shard is checked in sum.
        let mut wanted = vec![0usize; self.links.len()];
        for (shard, _) in &msgs {
            match wanted.get_mut(*shard) {
                Some(w) => *w += 1,
                None => return Err((SendError::Stopped, unzip(msgs))),
            }
        }
        for (link, want) in self.links.iter().zip(&wanted) {
            if *want > 0 && link.tx.len() + want > link.tx.capacity() {
                return Err((SendError::Full, unzip(msgs)));
            }
        }
        let mut msgs = msgs.into_iter();
        while let Some((shard, msg)) = msgs.next() {
            // Only a shard that has stopped refuses now.
            if let Err((e, m)) = self.send(shard, msg) {
                let mut unsent = vec![m];
                unsent.extend(msgs.map(|(_, m)| m));
                return Err((e, unsent));
            }
        }
        Ok(())
    }

    /// Wakes every shard sent to since the last call, once each. Call at the end of each
    /// turn of the owner's loop.
    pub fn wake_pending(&mut self) {
        for link in &mut self.links {
            if std::mem::take(&mut link.pending_wake) {
                let _ = link.waker.wake();
            }
        }
    }
}

fn unzip<T>(msgs: Vec<(usize, T)>) -> Vec<T> {
    msgs.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};
    use std::time::Duration;

    fn links(caps: &[usize]) -> (Links<u32>, Vec<Receiver<u32>>, Vec<Poll>) {
        let mut parts = Vec::new();
        let mut rxs = Vec::new();
        let mut polls = Vec::new();
        for &cap in caps {
            let poll = Poll::new().unwrap();
            let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
            let (tx, rx) = queue(cap);
            parts.push((tx, waker));
            rxs.push(rx);
            polls.push(poll);
        }
        (Links::from_parts(parts), rxs, polls)
    }

    fn woken(poll: &mut Poll) -> bool {
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        !events.is_empty()
    }

    #[test]
    fn all_or_none_checks_room_in_sum_before_sending() {
        let (mut l, rxs, _polls) = links(&[2, 4]);
        assert_eq!(
            l.send_all_or_none(vec![(0, 1), (0, 2), (0, 3), (1, 4)]),
            Err((SendError::Full, vec![1, 2, 3, 4]))
        );
        assert!(rxs[0].is_empty() && rxs[1].is_empty(), "nothing was sent");
        assert_eq!(l.send_all_or_none(vec![(0, 1), (0, 2), (1, 3)]), Ok(()));
        assert_eq!(rxs[0].len(), 2);
        assert!(!l.has_room(0) && l.has_room(1));
        assert_eq!(
            l.send_all_or_none(vec![(5, 1)]),
            Err((SendError::Stopped, vec![1]))
        );
    }

    #[test]
    fn a_queue_holds_at_most_its_capacity_and_knows_when_its_shard_is_gone() {
        let (tx, rx) = queue::<u32>(2);
        let other = tx.clone();
        assert_eq!((tx.capacity(), tx.is_empty()), (2, true));
        assert_eq!(tx.try_send(1), Ok(0));
        assert_eq!(other.try_send(2), Ok(1));
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert!(matches!(other.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(tx.try_send(3), Ok(1));
        assert_eq!(tx.len(), 2);
        assert_eq!((rx.try_recv(), rx.try_recv()), (Ok(2), Ok(3)));
        drop(rx);
        assert!(matches!(tx.try_send(4), Err(TrySendError::Disconnected(4))));
    }

    #[test]
    fn wakes_once_per_turn_or_at_once_when_half_full() {
        let (mut l, rxs, mut polls) = links(&[8, 8]);
        l.send(0, 1).unwrap();
        l.send(0, 2).unwrap();
        assert!(
            !woken(&mut polls[0]),
            "the wake waits for the end of the turn"
        );
        l.wake_pending();
        assert!(woken(&mut polls[0]));
        assert!(!woken(&mut polls[1]), "a shard not sent to is not woken");
        l.wake_pending();
        assert!(!woken(&mut polls[0]), "one wake per turn");
        for i in 0..4 {
            l.send(1, i).unwrap();
        }
        assert!(woken(&mut polls[1]), "half full: woken at once");
        drop(rxs);
        assert!(matches!(l.send(0, 9), Err((SendError::Stopped, 9))));
    }
}
