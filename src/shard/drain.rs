//! Shutdown on a shard (docs/protocol.md 4.5): every open connection gets a turn within
//! `drain_ms`, told at once with a `reconnect` hint and closed 1001 when it comes, while
//! its token expiry and heartbeat still hold; what is left at the deadline is abandoned.
//!
//! Shards end the drain together ([`DrainEnd`]): a shard with no connection left keeps
//! taking commands until the server lets it go, after the push API stopped. One that
//! ended on its own would make the API's "every shard or none" sends fail partway: a
//! topic push delivered on some shards and answered 503, its `seq` handed out again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::FxBuildHasher;

use super::conn::{DRAIN_DUE, PARKED};
use super::{ticks, Shard};
use crate::{messages, reactor};

/// Each open connection's turn to close, as a shard tick (only while draining).
pub(super) type Turns = HashMap<u32, u32, FxBuildHasher>;

/// How the shards of a server end a drain together: each says when it has no connection
/// left (or its deadline passed), and all end once released.
#[derive(Default)]
pub struct DrainEnd {
    /// The ids of the shards that said they are drained.
    drained: Mutex<Vec<usize>>,
    changed: Condvar,
    released: AtomicBool,
}

impl DrainEnd {
    /// Nothing drained, nothing released.
    pub fn new() -> DrainEnd {
        DrainEnd::default()
    }

    /// Shards that said they are drained.
    pub fn drained(&self) -> usize {
        self.drained.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits at most `d` for every shard of `0..n` that is not `gone` (its thread ended:
    /// it will never say so) to be drained; whether they are.
    pub fn wait_drained(&self, n: usize, gone: impl Fn(usize) -> bool, d: Duration) -> bool {
        let done = |ids: &[usize]| (0..n).all(|i| gone(i) || ids.contains(&i));
        let ids = self.drained.lock().unwrap_or_else(|e| e.into_inner());
        let (ids, _) = self
            .changed
            .wait_timeout_while(ids, d, |ids| !done(ids))
            .unwrap_or_else(|e| e.into_inner());
        done(&ids)
    }

    /// Lets the drained shards end (nothing sends them commands any more); wake them after.
    pub fn release(&self) {
        self.released.store(true, Relaxed);
    }

    fn released(&self) -> bool {
        self.released.load(Relaxed)
    }

    fn say_drained(&self, shard: usize) {
        self.drained
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(shard);
        self.changed.notify_all();
    }
}

impl Shard {
    /// One step of shutdown; true when the shard may end (drained and released).
    pub(super) fn drain_step(&mut self) -> bool {
        // The turn's work may have taken a while: turns and the deadline count from now.
        self.refresh_tick();
        let now = self.clock.now_ms();
        let deadline = match self.drain_deadline {
            Some(d) => d,
            None => {
                let cfg = &self.shared.config;
                let window = cfg.drain;
                // The window for the turns, then the grace for the last close handshakes.
                let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                let d = now
                    .saturating_add(ms(window))
                    .saturating_add(ms(cfg.shutdown_grace));
                self.drain_deadline = Some(d);
                self.spread_reconnects(window);
                let mut broken = Vec::new();
                self.conns.flush_dirty(&mut broken);
                for key in broken {
                    self.abort(key);
                }
                d
            }
        };
        // Refuse handoffs that raced with the drain; commands go on (to nobody, once the
        // connections are gone) until the release.
        self.take_connections();
        self.take_commands();
        self.finish_turn();
        let now = self.clock.now_ms();
        if !self.drained && (self.conns.is_empty() || now >= deadline) {
            self.abandon_all();
            self.drained = true;
            self.drain_turns = Turns::default();
            self.shared.drain_end.say_drained(self.id);
        }
        self.drained && self.shared.drain_end.released()
    }

    /// Gives every open connection a turn, uniformly at random within `window`: a
    /// `reconnect` hint with its `after_ms` now, close 1001 when the turn comes. Clients
    /// that honour the hint reconnect spread over the window instead of all at once.
    fn spread_reconnects(&mut self, window: Duration) {
        use rand::Rng;
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut rng = rand::rng();
        let open: Vec<u32> = self.conns.open_keys().collect();
        self.drain_turns.reserve(open.len());
        for key in open {
            let after_ms = rng.random_range(0..window_ms);
            // A session still waiting for its stream (cluster mode) gets nothing before its
            // `welcome`: it is told its turn when welcomed (`hint_reconnect_late`).
            if self.conns.get(key).is_some_and(|c| c.flags & PARKED == 0) {
                self.send_frame(key, messages::reconnect_frame(after_ms));
            }
            let turn = self
                .tick
                .saturating_add(ticks::span(Duration::from_millis(after_ms)));
            if let Some(c) = self.conns.get_mut(key) {
                c.flags |= DRAIN_DUE;
                self.drain_turns.insert(key, turn);
            }
            // The earliest of its turn, its token's expiry and its heartbeat.
            self.arm(key);
        }
    }

    /// Tells a session welcomed while the shard drains the time left to its turn: it was
    /// given one while it waited for its stream, but nothing goes before `welcome`.
    pub(super) fn hint_reconnect_late(&mut self, key: u32) {
        let Some(c) = self.conns.get(key) else {
            return;
        };
        if c.flags & DRAIN_DUE == 0 || c.closing() {
            return;
        }
        let Some(turn) = self.drain_turn(key) else {
            return;
        };
        let after_ms = u64::from(turn.saturating_sub(self.tick)) * reactor::TICK_MS;
        self.send_frame(key, messages::reconnect_frame(after_ms));
    }

    /// The connection's turn to close, while draining.
    pub(super) fn drain_turn(&self, key: u32) -> Option<u32> {
        self.drain_turns.get(&key).copied()
    }

    /// Moves the stored turns back with the shard's ticks (`ticks::rebase`).
    pub(super) fn rebase_turns(&mut self, by: u32) {
        for t in self.drain_turns.values_mut() {
            *t = ticks::moved(*t, by);
        }
    }

    pub(super) fn abandon_all(&mut self) {
        let keys = self.conns.all_keys();
        for key in keys {
            self.abort(key);
        }
        // Merge the last latencies.
        self.last_publish = Instant::now() - Duration::from_secs(1);
        self.finish_turn();
        // What the broker queued for this shard is never taken now: its bytes come off
        // the gauge the broker waits on, or the other shards' pushes would wait for ever.
        self.release_remote();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_waits_for_every_shard_to_say_it_is_drained() {
        let end = std::sync::Arc::new(DrainEnd::new());
        let none_gone = |_| false;
        assert!(!end.wait_drained(2, none_gone, Duration::ZERO));
        end.say_drained(0);
        assert!(!end.wait_drained(2, none_gone, Duration::from_millis(1)));
        // A shard whose thread ended never says so; one that said so and then ended counts
        // once (it does not stand in for another).
        assert!(end.wait_drained(2, |i| i == 1, Duration::ZERO));
        assert!(!end.wait_drained(2, |i| i == 0, Duration::ZERO));
        let other = std::sync::Arc::clone(&end);
        let t = std::thread::spawn(move || other.say_drained(1));
        assert!(end.wait_drained(2, none_gone, Duration::from_secs(30)));
        t.join().unwrap();
        assert_eq!(end.drained(), 2);
        assert!(!end.released());
        end.release();
        assert!(end.released());
    }
}
