//! Cluster mode: the shard reports its users' session counts, and its topics' members, to
//! the presence thread (docs/protocol.md 5). A connect, disconnect, subscribe or
//! unsubscribe only notes the user (or topic and user); at most once per `REPORT_TICKS`
//! the noted ones go out in one batch with their current state, so a user who connects
//! ten times in 100 ms is one entry, and an idle connection costs nothing (the counts
//! come from the user and topic indexes, which exist anyway).

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
    /// (topic, user) pairs whose membership changed, by name: a topic key may be reused.
    memberships: Vec<(Box<str>, Box<str>)>,
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
            memberships: Vec::new(),
            unsent: PresenceChanges::default(),
            last_tick: 0,
        }
    }
}

impl Tracker {
    /// The shard's ticks moved back by `by` (`Shard::rebase_ticks`).
    pub(super) fn rebase(&mut self, by: u32) {
        self.last_tick = super::ticks::moved(self.last_tick, by);
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

    /// Session `conn` of user `user` joined or left topic `topic`: note it for the next
    /// report (cluster mode).
    pub(super) fn membership_changed(&mut self, topic: &str, user: u32) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if let Some(u) = self.users.get(user) {
            c.presence
                .memberships
                .push((topic.into(), u.id.as_str().into()));
        }
    }

    /// Whether some session of user `user` here is a member of topic `topic`.
    fn is_member(&self, topic: &str, user: u32) -> bool {
        let (Some(t), Some(u)) = (self.topics.find(topic), self.users.get(user)) else {
            return false;
        };
        u.sessions.iter().any(|&k| self.topics.has_member(t, k))
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
        if !full
            && t.changed.is_empty()
            && t.offline.is_empty()
            && t.memberships.is_empty()
            && t.unsent.is_empty()
        {
            return;
        }
        let mut out = std::mem::take(&mut t.unsent);
        out.shard = self.id;
        out.users.extend(t.offline.drain(..).map(|id| (id, 0)));
        t.changed.sort_unstable();
        t.changed.dedup();
        for key in t.changed.drain(..) {
            // Went to zero since: then the id is in `offline` and this key may be another's.
            if let Some(u) = self.users.get(key).filter(|u| !u.sessions.is_empty()) {
                out.users
                    .push((u.id.as_str().into(), count(u.sessions.len())));
            }
        }
        let mut memberships = std::mem::take(&mut t.memberships);
        if t.changed.capacity() > 4096 {
            t.changed.shrink_to(256);
        }
        if full {
            t.seen = generation;
            out.users.extend(
                self.users
                    .online_sessions()
                    .map(|(id, n)| (Box::from(id), count(n))),
            );
            for (name, members) in self.topics.all() {
                out.topics.push((name.into(), count(members.len())));
                for &k in members {
                    if let Some(u) = self.conns.get(k).and_then(|c| self.users.get(c.user)) {
                        memberships.push((name.into(), u.id.as_str().into()));
                    }
                }
            }
        }
        memberships.sort_unstable();
        memberships.dedup();
        let mut last_topic: Option<&str> = None;
        for (topic, user) in &memberships {
            if last_topic != Some(&**topic) {
                last_topic = Some(topic);
                if !full {
                    let n = self.topics.find(topic).map_or(0, |k| self.topics.count(k));
                    out.topics.push((topic.clone(), count(n)));
                }
            }
            let present = self
                .users
                .find(user)
                .is_some_and(|u| self.is_member(topic, u));
            out.members.push((topic.clone(), user.clone(), present));
        }
        let Some(t) = self.cluster.as_mut().map(|c| &mut c.presence) else {
            return;
        };
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
