//! Cluster mode on a shard (docs/protocol.md 5). Redis numbers and keeps every stream;
//! the shard keeps a copy of the streams it serves, loaded when it starts serving one and
//! kept current by the pushes the broker hands it.
//!
//! - A new user's first session is upgraded at once but gets `welcome` only when the
//!   user's stream has been loaded: until then it is parked (not read), so `welcome`
//!   carries the cluster's `seq` and epoch and a resume is answered from Redis history.
//! - A `subscribe` to a topic this shard does not serve yet parks the connection the same
//!   way until the topic's stream is loaded.
//! - A push whose `seq` is not the next one (a missed message, a stream that restarted)
//!   makes the shard load the stream again; sessions get what they missed, in order, or
//!   (new epoch) close with 1012 so they resume.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use crate::deflate::Compressed;
use crate::wire::Wire;
use crossbeam_channel::{Receiver, Sender};
use rustc_hash::FxBuildHasher;

use super::compact::compact;
use super::conn::{PARKED, WAITING_TOPIC};
use super::{Shard, CHANNEL_BATCH};
use crate::api::sequencer::NO_EPOCH;
use crate::broker::{user_epoch, Interest, Remote, Rewind, RewindOf, StreamState};
use crate::command::Resume;
use crate::events::Detail;
use crate::frame::Close;
use crate::messages;

/// The default of `max_stream_changes_waiting`: stream changes waiting for the broker
/// (all shards together) at which no new stream is asked for: a new user's first session
/// is refused (503) and a `subscribe` to a topic not served here gets
/// `broker_unavailable` until the broker catches up. Changes for streams already asked
/// for still go (they must not be lost): a stream's unwatch when its last member leaves,
/// and after a Redis reconnect one watch per stream served. So the queue holds at most
/// this many plus about two changes per stream the node serves (a resync's watch, then
/// its unwatch); this many alone is about 16 MB.
pub const MAX_INTERESTS_WAITING: usize = 1 << 18;

/// A shard's two ends of its node's broker.
pub struct ShardCluster {
    /// Which users and topics the shard serves.
    pub interest: Sender<Interest>,
    /// `max_stream_changes_waiting`.
    pub max_interests_waiting: usize,
    /// Pushes and stream states from the broker.
    pub remote: Receiver<Remote>,
    /// Changed session counts per user, to the presence thread.
    pub presence: Sender<crate::broker::PresenceChanges>,
    /// Tells the shard when to resend all its users' counts.
    pub presence_shared: crate::broker::PresenceShared,
}

/// A session whose `welcome` waits for its user's stream.
struct Parked {
    key: u32,
    resume: Option<Resume>,
    leftover: Vec<u8>,
}

/// A `subscribe` whose answer waits for the topic's stream.
struct PendingSub {
    key: u32,
    /// It joined the topic with this subscribe (not held before): told to the upstream
    /// (`subscribe` lifecycle event) once answered, taken out again if the load fails.
    joined: bool,
    reference: Option<Box<str>>,
    resume: Option<(u64, Box<str>)>,
}

/// Pushes held per user while its stream loads (a load is one Redis round trip).
pub(super) const MAX_BUFFERED: usize = 256;

/// A push that arrived while its user's stream was loading.
struct Buffered {
    seq: u64,
    epoch: u64,
    frame: Wire,
    accepted_at: Instant,
}

/// A user's stream on its way from Redis.
#[derive(Default)]
struct UserLoad {
    parked: Vec<Parked>,
    buffered: Vec<Buffered>,
    /// The `(epoch, seq)` the shard had before a reload, to tell sessions what they missed.
    prior: Option<(u64, u64)>,
    /// The stream was found gone back in Redis and a new epoch asked for: if the next
    /// load still shows it, the sessions start again without asking twice.
    rewound: bool,
}

/// A served topic's position in its cluster stream.
pub(super) struct TopicPos {
    seq: u64,
    epoch: Arc<str>,
}

impl TopicPos {
    /// No push yet: Redis holds nothing for the topic (the placeholder epoch at 0).
    pub(super) fn at_placeholder(&self) -> bool {
        self.seq == 0 && *self.epoch == *NO_EPOCH
    }
}

/// The shard's cluster state.
pub(super) struct ClusterState {
    link: ShardCluster,
    loading_users: HashMap<u32, UserLoad, FxBuildHasher>,
    loading_topics: HashMap<Arc<str>, Vec<PendingSub>, FxBuildHasher>,
    /// The topic each waiting connection's subscribe waits for (one at most: nothing
    /// more is read from it meanwhile), so that a connection that goes is taken out of
    /// that one list, not looked for in all of them.
    waiting_for: HashMap<u32, Arc<str>, FxBuildHasher>,
    pub(super) topics: HashMap<Arc<str>, TopicPos, FxBuildHasher>,
    /// Served topics found gone back in Redis, a new epoch asked for, with the position
    /// the shard had: out of `topics` until loaded again (their pushes meanwhile are
    /// ignored: the members start again).
    rewinding: HashMap<Arc<str>, TopicPos, FxBuildHasher>,
    /// The sweep that keeps served streams in Redis.
    pub(super) keep: super::keep::Keeper,
    /// Users whose session count changed since the last presence report.
    pub(super) presence: super::presence::Tracker,
    /// Streams Redis would not load: while it refuses (out of memory, say) every stream
    /// of every reload fails, so one line per stream would flood the log.
    load_failures: crate::log_gate::LogGate,
}

impl ClusterState {
    /// The state for a shard linked to its broker.
    pub(super) fn new(link: ShardCluster) -> ClusterState {
        let presence =
            super::presence::Tracker::new(link.presence.clone(), link.presence_shared.clone());
        ClusterState {
            presence,
            link,
            loading_users: HashMap::default(),
            loading_topics: HashMap::default(),
            waiting_for: HashMap::default(),
            topics: HashMap::default(),
            rewinding: HashMap::default(),
            keep: super::keep::Keeper::default(),
            load_failures: crate::log_gate::LogGate::new(std::time::Duration::from_secs(10)),
        }
    }

    /// Logs a stream that could not be loaded: the first, then one per 10 s with how
    /// many failed meanwhile (the gate is not reset by a load that goes through: loads
    /// that fail and go through by turns would log two lines each time).
    fn load_failed(&mut self, stream: &str, e: &str) {
        if let Some(held) = self.load_failures.fail(std::time::Instant::now()) {
            tracing::warn!(
                stream,
                error = %e,
                "cannot load a stream from Redis (its sessions get 1013, its subscribes \
                 broker_unavailable; {held} more since the last such line)"
            );
        }
    }

    /// Whether the broker has messages waiting.
    pub(super) fn has_remote(&self) -> bool {
        !self.link.remote.is_empty()
    }
}

impl Shard {
    /// Cluster mode: the broker is so far behind that no new stream may be asked for
    /// (`MAX_INTERESTS_WAITING`); counted, since the caller refuses.
    pub(super) fn broker_behind(&self) -> bool {
        let behind = self
            .cluster
            .as_ref()
            .is_some_and(|c| c.link.interest.len() >= c.link.max_interests_waiting);
        if behind {
            self.shared
                .metrics
                .broker
                .behind_refusals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        behind
    }

    /// Cluster mode: a `subscribe` to `topic` would ask the broker for a new stream while
    /// it is behind: the refusal to answer with.
    pub(super) fn refuse_new_topic(&self, topic: &str) -> Option<crate::messages::Refused> {
        let c = self.cluster.as_ref()?;
        let asked = c.topics.contains_key(topic) || c.loading_topics.contains_key(topic);
        (!asked && self.broker_behind()).then(|| crate::messages::Refused {
            code: "broker_unavailable",
            message: format!(
                "cannot subscribe to {topic:?} now: the broker is behind with Redis; \
                 try again later"
            ),
        })
    }

    pub(super) fn interest(&self, i: Interest) {
        if let Some(c) = &self.cluster {
            // The broker outlives the shards; a failed send means shutdown.
            let _ = c.link.interest.send(i);
        }
    }

    /// Cluster mode, a session of a user this shard does not serve yet (or is loading):
    /// returns true when the session was parked until the stream arrives.
    pub(super) fn park_if_loading(
        &mut self,
        key: u32,
        user: u32,
        created: bool,
        resume: Option<Resume>,
        leftover: Vec<u8>,
    ) -> Result<(), (Option<Resume>, Vec<u8>)> {
        let Some(c) = self.cluster.as_mut() else {
            return Err((resume, leftover));
        };
        let Some(entry) = self.users.get_mut(user) else {
            return Err((resume, leftover));
        };
        if created {
            // Epoch 0 marks "not loaded": Redis epochs are never 0.
            entry.epoch = 0;
            // A load left over from an earlier user under the same slab key is void.
            c.loading_users.remove(&user);
        }
        let mut reload = false;
        if entry.epoch != 0 {
            // Served here already: answered from this node's history, unless the resume
            // reaches back past it (older than `history_ttl_ms` here). Redis keeps the
            // user's pushes for `offline_ttl_ms`: the user is reloaded from there, as on a
            // gap, and the session answered from that (review s17f: a node holding the
            // user said `resumed:false` where any other node replayed).
            let short = resume
                .as_ref()
                .is_some_and(|r| self.users.falls_short(user, r.since, &r.epoch));
            if !short {
                return Err((resume, leftover));
            }
            let Some(entry) = self.users.get_mut(user) else {
                return Err((resume, leftover));
            };
            let load = c.loading_users.entry(user).or_default();
            if load.prior.is_none() {
                load.prior = Some((entry.epoch, entry.seq));
            }
            entry.epoch = 0;
            reload = true;
        }
        let Some(entry) = self.users.get(user) else {
            return Err((resume, leftover));
        };
        let id: Box<str> = entry.id.as_str().into();
        // An entry is there while a load is on its way (its sessions may all have gone).
        let first = !c.loading_users.contains_key(&user);
        let load = c.loading_users.entry(user).or_default();
        load.parked.push(Parked {
            key,
            resume,
            leftover,
        });
        if let Some(conn) = self.conns.get_mut(key) {
            conn.flags |= PARKED;
        }
        if reload {
            self.interest(Interest::ReloadUser(id));
        } else if first || created {
            self.interest(Interest::WatchUser {
                user: id,
                fresh: created,
            });
        }
        Ok(())
    }

    /// Drops what connection `key` of `user` waited for (it is gone): a new connection
    /// reusing its slot must not be answered with its `ref`, nor welcomed with its resume.
    /// Only its own user's load is searched: a mass reconnect parks sessions of many
    /// users at once, and each that left would otherwise search them all.
    pub(super) fn forget_waiting(&mut self, key: u32, user: u32) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if let Some(topic) = c.waiting_for.remove(&key) {
            if let Some(pending) = c.loading_topics.get_mut(&topic) {
                pending.retain(|p| p.key != key);
            }
        }
        // Parked under the user it attached to (`park_if_loading`).
        if let Some(load) = c.loading_users.get_mut(&user) {
            load.parked.retain(|p| p.key != key);
        }
        debug_assert!(
            c.loading_users
                .values()
                .all(|l| l.parked.iter().all(|p| p.key != key)),
            "connection {key} parked under another user"
        );
    }

    /// Cluster mode: answers a `subscribe` now when the topic is served here, or parks the
    /// connection until its stream is loaded. Returns false when it was not handled
    /// (standalone mode: the caller answers from the local streams).
    pub(super) fn subscribe_cluster(
        &mut self,
        key: u32,
        topic: &str,
        joined: bool,
        resume: Option<(u64, &str)>,
        reference: Option<&str>,
    ) -> bool {
        let Some(c) = self.cluster.as_mut() else {
            return false;
        };
        if let Some(pos) = c.topics.get(topic) {
            let (seq, epoch) = (pos.seq, Arc::clone(&pos.epoch));
            // Told before the answer: a replay that closes it (4008) is told after.
            if joined {
                self.lifecycle(key, "subscribe", Detail::Topic(topic));
            }
            self.answer_subscribe(key, topic, seq, &epoch, resume, reference);
            return true;
        }
        let name: Arc<str> = topic.into();
        // Reading stops at a subscribe that waits, so a connection waits for one topic.
        let before = c.waiting_for.insert(key, Arc::clone(&name));
        debug_assert!(before.is_none(), "connection {key} waits for two topics");
        let pending = c.loading_topics.entry(Arc::clone(&name)).or_default();
        let first = pending.is_empty();
        pending.push(PendingSub {
            key,
            joined,
            reference: reference.map(Into::into),
            resume: resume.map(|(s, e)| (s, e.into())),
        });
        if let Some(conn) = self.conns.get_mut(key) {
            conn.flags |= WAITING_TOPIC;
        }
        if first {
            let shard = self.id;
            self.interest(Interest::WatchTopic { shard, topic: name });
        }
        true
    }

    /// `subscribed` with the topic's position, then what the client missed.
    fn answer_subscribe(
        &mut self,
        key: u32,
        topic: &str,
        seq: u64,
        epoch: &str,
        resume: Option<(u64, &str)>,
        reference: Option<&str>,
    ) {
        let mut replay = Vec::new();
        let resumed = resume.map(|(since, e)| {
            (since == seq && e == epoch)
                || self.streams.resume(topic, since, e, self.tick, &mut replay)
        });
        let frame = messages::subscribed_frame(topic, seq, epoch, resumed, reference);
        self.send_frame(key, frame);
        for f in replay {
            if !self.deliver(key, f) {
                break;
            }
        }
    }

    /// Drops what waits in the broker's queue (the shard stops), giving back its bytes.
    pub(super) fn release_remote(&mut self) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let released: u64 = c.link.remote.try_iter().map(|m| m.weight()).sum();
        let queued = &self.shared.metrics.broker.queued_bytes;
        queued.fetch_sub(released, Relaxed);
    }

    /// Takes what the broker sent, a batch per turn.
    pub(super) fn take_remote(&mut self) {
        if self.cluster.is_none() {
            return;
        }
        // Given back after the batch: the broker refills the queue by the next turn, so
        // what one turn takes is within the bound too.
        let mut released = 0;
        for _ in 0..CHANNEL_BATCH {
            // One message at a time: no batch buffer per turn.
            let Some(m) = self
                .cluster
                .as_ref()
                .and_then(|c| c.link.remote.try_recv().ok())
            else {
                break;
            };
            released += m.weight();
            match m {
                Remote::UserPush {
                    user,
                    seq,
                    epoch,
                    frame,
                    accepted_at,
                } => self.remote_user_push(&user, seq, epoch, frame, accepted_at),
                Remote::TopicPush {
                    topic,
                    seq,
                    epoch,
                    frame,
                    compressed,
                    accepted_at,
                } => {
                    self.remote_topic_push(&topic, seq, &epoch, (&frame, &compressed), accepted_at)
                }
                Remote::Broadcast {
                    frame,
                    compressed,
                    accepted_at,
                } => {
                    self.broadcast((&frame, &compressed), accepted_at, None);
                }
                Remote::UserLoaded { user, state } => self.user_loaded(&user, state),
                Remote::Resync => {
                    // Each user again: subscribed and reloaded, sessions told what they missed.
                    let ids: Vec<Box<str>> = self.users.ids().map(Into::into).collect();
                    for id in ids {
                        self.interest(Interest::WatchUser {
                            user: id,
                            fresh: false,
                        });
                    }
                }
                Remote::TopicLoaded { topic, state } => self.topic_loaded(&topic, state),
            }
        }
        if released > 0 {
            self.shared
                .metrics
                .broker
                .queued_bytes
                .fetch_sub(released, Relaxed);
        }
        // A burst of first sessions (a deploy, a reconnect storm) grows these maps; a
        // shard past it must not keep that capacity.
        if let Some(c) = self.cluster.as_mut() {
            compact(&mut c.loading_users);
            compact(&mut c.loading_topics);
            compact(&mut c.waiting_for);
            compact(&mut c.topics);
            compact(&mut c.rewinding);
        }
        // Streams this shard stopped serving: the broker may unsubscribe. A name back in
        // the same turn (a topic left and joined again by one read's unsubscribe and
        // subscribe, a user's new first session as its retained entry expired) is still
        // served: unwatched, its members would get nothing more, without a word.
        for id in self.users.take_gone() {
            if self.users.find(&id).is_some() {
                continue;
            }
            self.interest(Interest::UnwatchUser(id));
        }
        for name in self.topics.take_gone() {
            if self.topics.find(&name).is_some() {
                continue;
            }
            let topic: Arc<str> = name.into();
            if let Some(c) = self.cluster.as_mut() {
                c.topics.remove(&topic);
                c.rewinding.remove(&topic);
                if let Some(pending) = c.loading_topics.remove(&topic) {
                    for p in pending {
                        c.waiting_for.remove(&p.key);
                    }
                }
            }
            self.streams.forget(&topic);
            let shard = self.id;
            self.interest(Interest::UnwatchTopic { shard, topic });
        }
    }

    fn remote_user_push(
        &mut self,
        user: &str,
        seq: u64,
        epoch: u64,
        frame: Wire,
        accepted_at: Instant,
    ) {
        let Some(k) = self.users.find(user) else {
            return;
        };
        let Some(u) = self.users.get(k) else {
            return;
        };
        let (cur_epoch, cur_seq) = (u.epoch, u.seq);
        let loading = cur_epoch == 0;
        if !loading && epoch == cur_epoch && seq <= cur_seq {
            // Already had it (the load and the channel overlap), unless the frame held
            // under this `seq` is another push's: Redis numbered it again.
            if self
                .users
                .frame_at(k, seq)
                .is_some_and(|held| *held != frame)
            {
                self.rewind_user(k, (cur_epoch, cur_seq));
            }
            return;
        }
        if loading || epoch != cur_epoch || seq != cur_seq + 1 {
            // Loading, or something was missed: (re)load, and hold this push until then.
            let reload = !loading;
            let id: Box<str> = u.id.as_str().into();
            if let Some(c) = self.cluster.as_mut() {
                let load = c.loading_users.entry(k).or_default();
                if reload {
                    load.prior = Some((cur_epoch, cur_seq));
                }
                // Bounded: what does not fit is in Redis history, and a push after the
                // load that does not follow it is a gap, which loads again.
                if load.buffered.len() < MAX_BUFFERED {
                    load.buffered.push(Buffered {
                        seq,
                        epoch,
                        frame,
                        accepted_at,
                    });
                }
            }
            if reload {
                if let Some(u) = self.users.get_mut(k) {
                    u.epoch = 0;
                }
                self.interest(Interest::ReloadUser(id));
            }
            return;
        }
        self.apply_user_push(k, seq, frame, accepted_at);
    }

    /// Numbers, keeps and delivers one push that follows the user's current `seq`.
    fn apply_user_push(&mut self, k: u32, seq: u64, frame: Wire, accepted_at: Instant) {
        let Some(u) = self.users.get_mut(k) else {
            return;
        };
        u.seq = seq;
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        targets.extend(
            u.sessions
                .iter()
                .copied()
                .filter(|&s| self.conns.get(s).is_some_and(|c| c.flags & PARKED == 0)),
        );
        let stamp = super::history::stamp_of(accepted_at);
        self.users.record(k, &frame, self.tick, stamp);
        self.trim_history();
        let mut sessions = 0;
        // Compressed at most once for all of the user's sessions.
        let compressed = Compressed::default();
        for &key in &targets {
            sessions += u64::from(self.deliver_push(key, &frame, &compressed));
        }
        targets.clear();
        self.targets = targets;
        self.delivered(sessions, accepted_at);
        // A frame per user, as a `users` push builds them: a batch of them is written
        // out and weighed against the budget every 4 MiB, not only at the turn's end.
        self.made_frame(frame.len());
    }

    fn user_loaded(&mut self, user: &str, state: Result<StreamState, String>) {
        let Some(k) = self.users.find(user) else {
            return;
        };
        let load = self
            .cluster
            .as_mut()
            .and_then(|c| c.loading_users.remove(&k))
            .unwrap_or_default();
        let Some(u) = self.users.get(k) else {
            return;
        };
        // A load nobody waited for: the broker reconnected and reloads everything.
        let prior = load
            .prior
            .or_else(|| (u.epoch != 0).then_some((u.epoch, u.seq)));
        let st = match state {
            Ok(st) => st,
            Err(e) => {
                if let Some(c) = self.cluster.as_mut() {
                    c.load_failed(&format!("user {user}"), &e);
                }
                if let (Some((epoch, _)), Some(u)) = (prior, self.users.get_mut(k)) {
                    u.epoch = epoch;
                }
                if prior.is_some() {
                    // Served here already (a reload failed): what this node holds answers
                    // the sessions that waited (a resume it cannot cover: `false`), and
                    // the pushes that came meanwhile follow on where they can.
                    self.greet_parked(k, load.parked);
                    self.apply_buffered(k, load.buffered);
                    return;
                }
                for p in load.parked {
                    self.close(p.key, Close::BROKER_UNAVAILABLE);
                }
                return;
            }
        };
        let epoch = user_epoch(&st.epoch);
        // The highest `seq` seen in this epoch that Redis no longer has: this shard's,
        // or a resuming session's. A client can only have a `seq` Redis gave it (this
        // is Redis's own answer, read after the number was given: no race with the
        // channel), so one beyond is a stream that went back, or a client that lies
        // about its own user's stream, which then only starts its own sessions again.
        let mut seen = prior
            .filter(|&(e, s)| e == epoch && self.went_back(Held::User(k), s, &st))
            .map(|(_, s)| s);
        for r in load.parked.iter().filter_map(|p| p.resume.as_ref()) {
            if *r.epoch == *st.epoch && r.since > st.seq {
                seen = seen.max(Some(r.since));
            }
        }
        let mut rewound = false;
        if let Some(seen) = seen {
            if !load.rewound {
                // Put back as it was, to wait for the load after the new epoch.
                if let Some(c) = self.cluster.as_mut() {
                    c.loading_users.insert(k, load);
                }
                self.rewind_user(k, (epoch, seen));
                return;
            }
            // Asked already, and Redis still shows it in that epoch: the sessions
            // start again rather than ask without end, and what is held here under
            // those `seq`s goes.
            rewound = true;
            self.users.drop_history(k);
        }
        let Some(u) = self.users.get(k) else {
            return;
        };
        let live: Vec<u32> = u
            .sessions
            .iter()
            .copied()
            .filter(|&s| self.conns.get(s).is_some_and(|c| c.flags & PARKED == 0))
            .collect();
        // What the live sessions missed, from the cluster's history.
        let mut missed: Vec<Wire> = Vec::new();
        let mut restart = rewound;
        if let (Some((old_epoch, old_seq)), false) = (prior, rewound) {
            if old_epoch != epoch {
                restart = old_seq > 0 || st.seq > 0;
            } else if st.seq > old_seq {
                // What the live sessions missed, from Redis's history and from the pushes
                // that came on the channel while it loaded (a burst may have moved Redis's
                // short history past them): all of it, in order, or they start again.
                let mut held: std::collections::BTreeMap<u64, &Wire> = st
                    .entries
                    .iter()
                    .filter(|(s, _)| *s > old_seq)
                    .map(|(s, f)| (*s, f))
                    .collect();
                for b in &load.buffered {
                    if b.epoch == epoch && b.seq > old_seq && b.seq <= st.seq {
                        held.entry(b.seq).or_insert(&b.frame);
                    }
                }
                if held.len() as u64 == st.seq - old_seq {
                    missed.extend(held.into_values().cloned());
                } else {
                    restart = true; // Not held any more: they cannot be told in order.
                }
            }
        }
        // Loaded pushes count as accepted now (for the ack latency histogram).
        let now = super::history::stamp_of(Instant::now());
        self.users
            .load(k, st.seq, epoch, &st.entries, self.tick, now);
        self.trim_history();
        if load.prior.is_some() {
            // A reload: a resume from before this is not worth another. After the trim:
            // the history memory cap may have taken some of what was just loaded.
            let first = st.entries.first().map_or(st.seq + 1, |e| e.0);
            self.users.note_floor(k, epoch, first);
        }
        for &key in &live {
            if restart {
                self.close(key, Close::STREAM_RESTARTED);
                continue;
            }
            for f in &missed {
                if !self.deliver(key, f.clone()) {
                    break;
                }
            }
        }
        self.greet_parked(k, load.parked);
        self.apply_buffered(k, load.buffered);
    }

    /// Welcomes the sessions of user `k` that waited for its stream (those still here).
    fn greet_parked(&mut self, k: u32, parked: Vec<Parked>) {
        for p in parked {
            let parked_here = self
                .conns
                .get(p.key)
                .is_some_and(|c| c.user == k && c.flags & PARKED != 0 && !c.closing());
            if !parked_here {
                continue;
            }
            if let Some(c) = self.conns.get_mut(p.key) {
                c.flags &= !PARKED;
            }
            self.greet(p.key, p.resume, p.leftover);
            // Bytes it sent while parked are still in the socket.
            self.backlog.push(p.key);
        }
    }

    /// Applies the pushes of user `k` that came while its stream loaded and follow on from
    /// where it stands now; the others were in the load, or leave a gap (loaded again).
    fn apply_buffered(&mut self, k: u32, mut buffered: Vec<Buffered>) {
        buffered.sort_by_key(|b| b.seq);
        for b in buffered {
            let next = self.users.get(k).map(|u| (u.epoch, u.seq + 1));
            if next == Some((b.epoch, b.seq)) {
                self.apply_user_push(k, b.seq, b.frame, b.accepted_at);
            }
        }
    }

    fn remote_topic_push(
        &mut self,
        topic: &Arc<str>,
        seq: u64,
        epoch: &Arc<str>,
        frame: (&Wire, &Compressed),
        accepted_at: Instant,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some(pos) = c.topics.get_mut(&**topic) else {
            return; // Not served here (any more, or not loaded yet: the load covers it).
        };
        if *pos.epoch == **epoch && seq <= pos.seq {
            // Already had it, unless the frame held under this `seq` is another push's:
            // Redis numbered it again.
            if self
                .streams
                .frame_at(topic, seq)
                .is_some_and(|held| held != frame.0)
            {
                self.rewind_topic(topic);
            }
            return;
        }
        // A topic loaded before its first push shows the placeholder epoch at 0; its first
        // push names the epoch it starts (as it does for clients): taken over, no restart.
        let first_push = pos.at_placeholder() && seq == 1;
        let restarted = *pos.epoch != **epoch && !first_push;
        pos.seq = seq;
        pos.epoch = Arc::clone(epoch);
        if restarted {
            self.restart_topic(topic);
        }
        self.topic_push(topic, seq, epoch, frame, accepted_at, None);
    }

    /// The topic's numbering restarted in Redis (its stream was lost), or members here
    /// missed pushes Redis no longer holds: they close with 1012 like a user's sessions
    /// do, since a client keeping the old `seq` would drop the new epoch's first pushes as
    /// repeats (or never learn of the gap); they resubscribe and learn `resumed:false`.
    fn restart_topic(&mut self, topic: &str) {
        let Some(t) = self.topics.find(topic) else {
            return;
        };
        let members: Vec<u32> = self.topics.members(t).collect();
        for key in members {
            self.close(key, Close::STREAM_RESTARTED);
        }
    }

    fn topic_loaded(&mut self, topic: &Arc<str>, state: Result<StreamState, String>) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let pending = c.loading_topics.remove(&**topic).unwrap_or_default();
        for p in &pending {
            c.waiting_for.remove(&p.key);
        }
        if self.topics.find(topic).is_none() {
            // Its members left while it loaded: no longer served here (an unwatch is sent).
            return;
        }
        let st = match state {
            Ok(st) => st,
            Err(e) => {
                c.load_failed(&format!("topic {topic}"), &e);
                if c.rewinding.remove(&**topic).is_some() {
                    // Found gone back and not loaded again: its members start again.
                    self.restart_topic(topic);
                }
                for p in pending {
                    // The subscribe fails; the connection goes on.
                    let waiting = self
                        .conns
                        .get(p.key)
                        .is_some_and(|c| c.flags & WAITING_TOPIC != 0);
                    if let Some(c) = self.conns.get_mut(p.key) {
                        c.flags &= !WAITING_TOPIC;
                    }
                    // Refused, so not a member (pushes would reach it unannounced): the
                    // client retries, and resumes then. The upstream was never told of
                    // this subscribe, so it is not told of its end either.
                    if waiting && p.joined {
                        self.leave_unannounced(p.key, topic);
                    }
                    // Redis's words (WRONGTYPE, a timeout) are for the log, not clients.
                    let err = crate::messages::Refused {
                        code: "broker_unavailable",
                        message: format!(
                            "cannot subscribe to {topic:?} now: its stream cannot be loaded \
                             from the cluster's Redis; retry later"
                        ),
                    };
                    self.send_frame(p.key, messages::error_frame(&err, p.reference.as_deref()));
                    self.resume_reading(p.key);
                }
                return;
            }
        };
        let epoch: Arc<str> = st.epoch.as_str().into();
        // A reload of a topic served here: members get what they missed. One found gone
        // back in Redis waited for this load out of `topics`, its new epoch asked for.
        let (prior, asked) = match c.topics.get(&**topic) {
            Some(p) => (Some((Arc::clone(&p.epoch), p.seq)), false),
            None => match c.rewinding.remove(&**topic) {
                Some(p) => (Some((p.epoch, p.seq)), true),
                None => (None, false),
            },
        };
        let mut rewound = false;
        if let Some((old_epoch, old_seq)) = &prior {
            if **old_epoch == *epoch && self.went_back(Held::Topic(topic), *old_seq, &st) {
                if !asked {
                    // Put back to wait for the load after the new epoch.
                    if let Some(c) = self.cluster.as_mut() {
                        for p in &pending {
                            c.waiting_for.insert(p.key, Arc::clone(topic));
                        }
                        c.loading_topics.insert(Arc::clone(topic), pending);
                    }
                    self.rewind_topic(topic);
                    return;
                }
                // Asked already and still there: the members start again (their history
                // here goes with `streams.load` below) rather than ask without end.
                rewound = true;
            }
        }
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.topics.insert(
            Arc::clone(topic),
            TopicPos {
                seq: st.seq,
                epoch: Arc::clone(&epoch),
            },
        );
        if rewound {
            self.restart_topic(topic);
        } else if let Some((old_epoch, old_seq)) = prior {
            let first = st.entries.first().map_or(u64::MAX, |e| e.0);
            // Members at the placeholder (no push yet) go on into the topic's first epoch
            // like members of the same epoch at 0.
            let same = *old_epoch == *epoch || (old_seq == 0 && *old_epoch == *NO_EPOCH);
            if same && st.seq > old_seq && first > old_seq + 1 {
                // Pushes members missed are not held any more: they cannot be told in
                // order, so they start again (1012), as a user's sessions do.
                self.restart_topic(topic);
            } else if same {
                let missed: Vec<(u64, Wire)> = st
                    .entries
                    .iter()
                    .filter(|(s, _)| *s > old_seq)
                    .cloned()
                    .collect();
                let mut members = Vec::new();
                if let Some(t) = self.topics.find(topic) {
                    members.extend(self.topics.members(t));
                }
                for (_, f) in &missed {
                    self.fan_out(&members, (f, &Compressed::default()), false);
                }
            } else if old_seq > 0 || st.seq > 0 {
                self.restart_topic(topic);
            }
        }
        self.streams
            .load(topic, st.seq, &epoch, &st.entries, self.tick);
        self.trim_history();
        for p in pending {
            // Still waiting, and still a member (not a reused slot waiting for another).
            let member = self
                .topics
                .find(topic)
                .is_some_and(|t| self.topics.has_member(t, p.key));
            let here = member
                && self
                    .conns
                    .get(p.key)
                    .is_some_and(|c| c.flags & WAITING_TOPIC != 0 && !c.closing());
            if !here {
                continue;
            }
            if let Some(c) = self.conns.get_mut(p.key) {
                c.flags &= !WAITING_TOPIC;
            }
            let resume = p.resume.as_ref().map(|(s, e)| (*s, &**e));
            // A session closed meanwhile was told gone (`disconnect`): nothing after that.
            if p.joined && self.conns.get(p.key).is_some_and(|c| !c.closing()) {
                self.lifecycle(p.key, "subscribe", Detail::Topic(topic));
            }
            self.answer_subscribe(p.key, topic, st.seq, &epoch, resume, p.reference.as_deref());
            self.resume_reading(p.key);
        }
    }

    /// Whether the stream Redis shows (`st`, same epoch) went back from `old_seq`, the
    /// highest `seq` this shard had: it is below, or the push Redis holds under `old_seq`
    /// is not the one held here (pushes were numbered again past it). One comparison:
    /// numbering again anywhere below `old_seq` replaces the push at `old_seq` too.
    fn went_back(&self, held: Held<'_>, old_seq: u64, st: &StreamState) -> bool {
        if st.seq < old_seq {
            return true;
        }
        let Some((_, theirs)) = st.entries.iter().rev().find(|(s, _)| *s == old_seq) else {
            return false;
        };
        let ours = match held {
            Held::User(k) => self.users.frame_at(k, old_seq),
            Held::Topic(t) => self.streams.frame_at(t, old_seq),
        };
        ours.is_some_and(|f| f != theirs)
    }

    /// User `k`'s stream went back in Redis from `(epoch, seq)`: it waits (as loading) for
    /// the load after the new epoch the broker is asked for, which starts its sessions
    /// again (1012).
    fn rewind_user(&mut self, k: u32, (epoch, seq): (u64, u64)) {
        let Some(u) = self.users.get_mut(k) else {
            return;
        };
        u.epoch = 0;
        let id: Box<str> = u.id.as_str().into();
        if let Some(c) = self.cluster.as_mut() {
            let load = c.loading_users.entry(k).or_default();
            load.prior.get_or_insert((epoch, seq));
            load.rewound = true;
        }
        self.interest(Interest::Rewound(Box::new(Rewind {
            stream: RewindOf::User(id),
            epoch: format!("{epoch:016x}"),
            seq,
        })));
    }

    /// A served topic's stream went back in Redis: out of `topics` until the load after
    /// the new epoch the broker is asked for, which starts its members again (1012).
    fn rewind_topic(&mut self, topic: &Arc<str>) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some(pos) = c.topics.remove(&**topic) else {
            return;
        };
        let (epoch, seq) = (pos.epoch.to_string(), pos.seq);
        c.rewinding.insert(Arc::clone(topic), pos);
        let shard = self.id;
        self.interest(Interest::Rewound(Box::new(Rewind {
            stream: RewindOf::Topic {
                shard,
                topic: Arc::clone(topic),
            },
            epoch,
            seq,
        })));
    }
}

/// Where a shard holds a stream's recent pushes.
#[derive(Clone, Copy)]
enum Held<'a> {
    /// User `k`'s ring.
    User(u32),
    /// The topic's ring.
    Topic(&'a str),
}
