//! Cluster mode: the streams a shard serves are kept in Redis while it serves them,
//! however quiet. A stream's `seq` and epoch (its meta hash) expire 24 h (at least) after
//! its last push; a user or topic served and quiet for that long would lose them, and its
//! next push would start a new epoch under its live sessions: all closed 1012, their
//! resume positions void. A slice of the served streams goes to the broker every second
//! (`Interest::Keep`), so each is kept about once an hour, whatever their number.

use std::sync::Arc;

use super::Shard;
use crate::broker::Interest;
use crate::reactor::TICK_MS;

/// Ticks between two slices.
const KEEP_TICKS: u32 = (1000 / TICK_MS) as u32;
/// A sweep of every served stream takes about this many slices (seconds): well within
/// the meta TTL, and at most one PEXPIRE per stream per sweep.
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
        if k.topics.is_empty() {
            k.topics = c.topics.keys().cloned().collect();
            k.topics.shrink_to_fit();
        }
        let take = k.topics.len().div_ceil(SWEEP_SLICES);
        let topics = k.topics.split_off(k.topics.len() - take);
        if users.is_empty() && topics.is_empty() {
            return;
        }
        self.interest(Interest::Keep { users, topics });
    }
}
