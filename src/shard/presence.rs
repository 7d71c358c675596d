//! Cluster mode: the shard reports its users' session counts to the presence thread
//! (docs/protocol.md 5). A connect or disconnect only notes the user; at most once per
//! `REPORT_TICKS` the noted users go out in one batch with their current counts, so a
//! user who connects ten times in 100 ms is one entry, and an idle connection costs
//! nothing (the count is `UserEntry.sessions`, which exists anyway).

use crossbeam_channel::{Sender, TrySendError};

use super::Shard;
use crate::broker::{PresenceChanges, PresenceShared};

/// Least ticks (10 ms each) between two reports.
const REPORT_TICKS: u32 = 10;

/// What changed since the last report.
pub(super) struct Tracker {
    tx: Sender<PresenceChanges>,
    shared: PresenceShared,
    /// The resync generation last answered with a full report.
    seen: u64,
    /// User keys whose count went up or down but not to zero.
    changed: Vec<u32>,
    /// Users whose last session here ended, by id: their key may be reused before the
    /// report once the entry expires.
    offline: Vec<Box<str>>,
    /// A report the presence thread had no room for, sent first next time.
    unsent: PresenceChanges,
    last_tick: u32,
}

impl Tracker {
    /// A tracker reporting on `tx`.
    pub(super) fn new(tx: Sender<PresenceChanges>, shared: PresenceShared) -> Tracker {
        Tracker {
            tx,
            shared,
            seen: 0,
            changed: Vec::new(),
            offline: Vec::new(),
            unsent: Vec::new(),
            last_tick: 0,
        }
    }
}

impl Shard {
    /// A session of user `key` started or ended: note it for the next report.
    pub(super) fn presence_changed(&mut self, key: u32) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        match self.users.get(key) {
            Some(u) if u.sessions.is_empty() => c.presence.offline.push(u.id.as_str().into()),
            Some(_) => c.presence.changed.push(key),
            None => {}
        }
    }

    /// Sends what changed (everything after a resync) to the presence thread, at most
    /// once per `REPORT_TICKS`; never blocks: a full queue keeps the report for later.
    pub(super) fn report_presence(&mut self) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let t = &mut c.presence;
        if self.tick.wrapping_sub(t.last_tick) < REPORT_TICKS {
            return;
        }
        t.last_tick = self.tick;
        let generation = t.shared.resync.load(std::sync::atomic::Ordering::Relaxed);
        let full = generation != t.seen;
        if !full && t.changed.is_empty() && t.offline.is_empty() && t.unsent.is_empty() {
            return;
        }
        let mut out = std::mem::take(&mut t.unsent);
        out.extend(t.offline.drain(..).map(|id| (id, 0)));
        t.changed.sort_unstable();
        t.changed.dedup();
        for key in t.changed.drain(..) {
            // Went to zero since: then the id is in `offline` and this key may be another's.
            if let Some(u) = self.users.get(key).filter(|u| !u.sessions.is_empty()) {
                out.push((u.id.as_str().into(), count(u.sessions.len())));
            }
        }
        if full {
            t.seen = generation;
            out.extend(
                self.users
                    .online_sessions()
                    .map(|(id, n)| (Box::from(id), count(n))),
            );
        }
        if t.changed.capacity() > 4096 {
            t.changed.shrink_to(256);
        }
        if out.is_empty() {
            return;
        }
        match t.tx.try_send(out) {
            Ok(()) => {}
            Err(TrySendError::Full(back)) => t.unsent = back,
            // The presence thread is gone: the server is stopping.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
