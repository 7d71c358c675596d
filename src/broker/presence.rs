//! The presence thread (docs/protocol.md 5, "Presence"): this node's liveness and its
//! sessions per user in Redis, and the cluster-wide view the API asks for.
//!
//! - Heartbeat: once per `HEARTBEAT`, `HSET throng:nodes <node> <unix ms>`, the node's
//!   totals in `throng:nodes:totals`, and a fresh TTL on its presence hash. Nodes whose
//!   heartbeat is older than `STALE` are removed from both hashes, with their presence
//!   hash (which also expires by itself, `TTL` after its dead node's last heartbeat).
//! - Presence: shards send the users whose session count changed (a batch per shard per
//!   ~100 ms, nothing per idle connection); they are coalesced here and written in one
//!   pipelined round trip per `FLUSH` into `throng:presence:<node>` (user -> sessions).
//! - After a reconnect, or when the node finds its heartbeat entry gone (another node
//!   took it for dead), the shards resend everything they hold (`resync`).
//! - Queries: the API's presence and stats requests are read here, never on the API
//!   thread, and answered through its reply channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use redis::Connection;

use super::keys::{self, NODES, NODE_RUNS, NODE_TOTALS, PRESENCE_PREFIX};
use super::script::now_ms;
use super::{next_backoff, pause, BrokerCtx, RECONNECT_MIN};
use crate::command::{MemberPage, Reply, Ticket};
use crate::shard::ReplySink;

/// How often the node writes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node whose heartbeat is older than this is dead: readers skip it, writers remove it.
pub const STALE: Duration = Duration::from_secs(3);
/// Lifetime of a node's presence hash, renewed by every heartbeat and write: a dead
/// node's sessions vanish this long after its last heartbeat at the latest.
pub const TTL: Duration = Duration::from_secs(5);
/// How often changed counts are written.
pub const FLUSH: Duration = Duration::from_millis(100);
/// Change batches that may wait (each is one shard's changes of ~100 ms).
pub const CHANGES_QUEUE: usize = 1024;
/// Queries that may wait; beyond, the API answers 503 `overloaded`.
pub const QUERY_QUEUE: usize = 256;
/// Most fields in one `HSET`/`HDEL`.
const CHUNK: usize = 1000;
/// A link that fails sooner than this after it was made is made again only after a pause.
const LINK_MIN_LIFE: Duration = Duration::from_secs(1);

/// One shard's changes since its last report, oldest first.
#[derive(Debug, Default)]
pub struct PresenceChanges {
    /// The reporting shard.
    pub shard: usize,
    /// Users whose session count on this node changed, with the count (0: none left).
    pub users: Vec<(Box<str>, u32)>,
    /// Topics whose member count on this shard changed, with the count (0: none left).
    pub topics: Vec<(Box<str>, u32)>,
    /// (topic, user) pairs whose membership on this node changed: a member now or not.
    pub members: Vec<(Box<str>, Box<str>, bool)>,
}

impl PresenceChanges {
    /// Nothing to report.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.topics.is_empty() && self.members.is_empty()
    }
}

/// What the API asks of the cluster.
#[derive(Debug)]
pub enum PresenceQuery {
    /// Sessions of `user` on the other live nodes.
    User {
        /// The user.
        user: String,
        /// Where the answer goes.
        ticket: Ticket,
    },
    /// The live nodes and their totals.
    Stats {
        /// Where the answer goes.
        ticket: Ticket,
    },
    /// A topic stream's `seq` and epoch as Redis holds them, and the other live nodes'
    /// subscribers (and with `page`, member users).
    Topic {
        /// The topic.
        topic: String,
        /// Where the answer goes.
        ticket: Ticket,
        /// The member page asked for.
        page: Option<MemberPage>,
    },
}

/// The other live nodes' part of a topic's presence.
#[derive(Debug, Clone, Default)]
pub struct TopicOthers {
    /// Their sessions subscribed to the topic.
    pub subscribers: u64,
    /// Their member users on the page asked for (each node's `limit + 1` at most).
    pub members: Vec<Box<str>>,
}

/// One live node's sessions of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSessions {
    /// The node id.
    pub node: String,
    /// Its sessions of the user.
    pub sessions: u64,
}

/// One live node's totals, as its last heartbeat wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTotals {
    /// The node id.
    pub node: String,
    /// Its open WebSocket connections.
    pub connections: u64,
    /// Its users with at least one session.
    pub users_online: u64,
}

/// The answer to a [`PresenceQuery`].
#[derive(Debug, Clone)]
pub enum ClusterView {
    /// The other live nodes holding sessions of the user.
    User(Vec<NodeSessions>),
    /// Every live node but this one, with its totals.
    Stats(Vec<NodeTotals>),
    /// A topic stream's position (`seq` 0 and no epoch when it was never pushed to), and
    /// its subscribers on the other live nodes.
    Topic {
        /// Its current `seq`.
        seq: u64,
        /// Its epoch, when the stream exists.
        epoch: Option<String>,
        /// The other nodes' subscribers and members.
        others: TopicOthers,
    },
}

/// The answer, or why Redis could not give it.
pub type ViewResult = Result<ClusterView, String>;

/// A node's presence hash.
pub fn presence_key(node: &str) -> String {
    format!("{PRESENCE_PREFIX}{node}")
}

/// The nodes of `throng:nodes` alive at `now` (Unix ms), with the ones to remove.
/// An entry whose value is not a time is dead too: nothing could keep it fresh.
pub fn split_alive(nodes: HashMap<String, String>, now: u64) -> (Vec<String>, Vec<String>) {
    let stale = STALE.as_millis() as u64;
    let (mut alive, mut dead) = (Vec::new(), Vec::new());
    for (node, beat) in nodes {
        match beat.parse::<u64>() {
            Ok(t) if now.saturating_sub(t) <= stale => alive.push(node),
            _ => dead.push(node),
        }
    }
    alive.sort_unstable();
    (alive, dead)
}

/// What the shards and the presence thread share.
#[derive(Clone, Default)]
pub struct PresenceShared {
    /// Bumped when Redis may have lost this node's presence: each shard then sends all
    /// its users once.
    pub resync: Arc<AtomicU64>,
}

/// The presence thread's state.
pub(crate) struct Presence {
    ctx: BrokerCtx,
    key: String,
    changes: Receiver<PresenceChanges>,
    queries: Receiver<PresenceQuery>,
    replies: ReplySink,
    shared: PresenceShared,
    up: Arc<AtomicBool>,
    conn: Option<Connection>,
    backoff: Duration,
    /// Counts to write, coalesced by user (last change wins).
    pending: HashMap<Box<str>, u32>,
    /// Topic session counts to write, by shard and topic (last change wins).
    pending_topics: HashMap<(usize, Box<str>), u32>,
    /// Topic memberships to write, by topic and user (last change wins).
    pending_members: HashMap<(Box<str>, Box<str>), bool>,
    last_flush: Instant,
    last_beat: Option<Instant>,
    /// When the heartbeat last renewed the TTL: past `TTL`, the hash may be gone.
    last_renewed: Option<Instant>,
    /// Redis refuses the writes (logged once until one goes through).
    refusing: bool,
    /// When the current (or last) link was made.
    linked_at: Option<Instant>,
    /// This process's run id, written beside its heartbeat (`NODE_RUNS`).
    run: String,
    /// When Redis last took this node's heartbeat.
    last_ok_beat: Option<Instant>,
    /// After a spell in which Redis took no heartbeat for longer than a beat or two (it
    /// refused writes, stalled, or was away), other nodes' beats may be old for the same
    /// reason: until then no node is removed, and views judge beats as of that long ago.
    settling_until: Option<Instant>,
    /// How long that spell was: beats are judged at now minus it while settling.
    settle_shift: Duration,
    /// When another run was last seen under this node's id: the verdict holds for `STALE`
    /// after, so two twins whose beats fall in step do not flip it.
    twin_seen: Option<Instant>,
}

impl Presence {
    /// A presence thread answering through `replies`; `up` tells the API whether it
    /// reaches Redis.
    pub(crate) fn new(
        ctx: BrokerCtx,
        changes: Receiver<PresenceChanges>,
        queries: Receiver<PresenceQuery>,
        replies: ReplySink,
        shared: PresenceShared,
        up: Arc<AtomicBool>,
    ) -> Presence {
        Presence {
            key: presence_key(&ctx.node_id),
            ctx,
            changes,
            queries,
            replies,
            shared,
            up,
            conn: None,
            backoff: RECONNECT_MIN,
            pending: HashMap::new(),
            pending_topics: HashMap::new(),
            pending_members: HashMap::new(),
            last_flush: Instant::now(),
            last_beat: None,
            last_renewed: None,
            refusing: false,
            linked_at: None,
            run: format!("{:016x}", rand::random::<u64>()),
            last_ok_beat: None,
            settling_until: None,
            settle_shift: Duration::ZERO,
            twin_seen: None,
        }
    }

    /// Runs until the server stops, then removes this node's entries.
    pub(crate) fn run(mut self) {
        while !self.ctx.stop.load(Relaxed) {
            if self.conn.is_none() && !self.reconnect() {
                continue;
            }
            let due = self.next_due();
            crossbeam_channel::select! {
                recv(self.changes) -> m => match m {
                    Ok(batch) => self.merge(batch),
                    // The shards are gone: the server is stopping.
                    Err(_) => self.changes = crossbeam_channel::never(),
                },
                recv(self.queries) -> q => match q {
                    Ok(q) => self.answer(q),
                    Err(_) => self.queries = crossbeam_channel::never(),
                },
                default(due) => {}
            }
            self.take_changes();
            if self.last_flush.elapsed() >= FLUSH {
                self.flush();
            }
            self.heartbeat();
        }
        for q in self.queries.try_iter() {
            let ticket = ticket_of(&q);
            send_reply(&self.replies, ticket, Err("server is shutting down".into()));
        }
        let _ = self.replies.waker.wake();
        self.leave();
    }

    /// Time until the next flush or heartbeat.
    fn next_due(&self) -> Duration {
        let flush = FLUSH.saturating_sub(self.last_flush.elapsed());
        let beat = self
            .last_beat
            .map_or(Duration::ZERO, |t| HEARTBEAT.saturating_sub(t.elapsed()));
        flush.min(beat).max(Duration::from_millis(1))
    }

    fn merge(&mut self, batch: PresenceChanges) {
        for (user, n) in batch.users {
            self.pending.insert(user, n);
        }
        for (topic, n) in batch.topics {
            self.pending_topics.insert((batch.shard, topic), n);
        }
        for (topic, user, member) in batch.members {
            self.pending_members.insert((topic, user), member);
        }
    }

    /// This node's topic keys: the members set and one sessions hash per shard.
    fn topic_keys(&self) -> Vec<String> {
        let node = &*self.ctx.node_id;
        let mut keys = vec![keys::topic_members_key(node)];
        keys.extend((0..self.ctx.metrics.shards.len()).map(|s| keys::topic_sessions_key(node, s)));
        keys
    }

    /// Takes what queued up, a bounded number of batches.
    fn take_changes(&mut self) {
        for _ in 0..CHANGES_QUEUE {
            match self.changes.try_recv() {
                Ok(b) => self.merge(b),
                Err(_) => return,
            }
        }
    }

    /// Connects; false (after a pause) when Redis is not there. Queries that came in
    /// meanwhile learn it, and changes keep being coalesced.
    fn reconnect(&mut self) -> bool {
        // A link that failed soon after it was made (a replica's refusals, a reply that
        // cannot be read) is not made again at once: that would loop, hundreds a second.
        if self.linked_at.is_some_and(|t| t.elapsed() < LINK_MIN_LIFE) {
            pause(self.backoff, &self.ctx.stop);
            self.backoff = next_backoff(self.backoff);
        }
        match self.ctx.redis.connect() {
            Ok(c) => {
                self.conn = Some(c);
                self.linked_at = Some(Instant::now());
                self.last_beat = None;
                // Redis may have lost or expired this node's hash while it was away.
                self.shared.resync.fetch_add(1, Relaxed);
                self.up.store(true, Relaxed);
                tracing::info!(node = %self.ctx.node_id, "presence connected to Redis");
                true
            }
            Err(e) => {
                self.down(&e);
                for q in self.queries.try_iter() {
                    let ticket = ticket_of(&q);
                    send_reply(
                        &self.replies,
                        ticket,
                        Err(format!("cannot reach Redis: {e}")),
                    );
                }
                let _ = self.replies.waker.wake();
                self.take_changes();
                pause(self.backoff, &self.ctx.stop);
                self.backoff = next_backoff(self.backoff);
                false
            }
        }
    }

    fn down(&mut self, e: &redis::RedisError) {
        if super::answered_with_error(e) {
            // Redis answered, refusing (out of memory, a replica, ...): the link is fine,
            // and reconnecting at once would only loop. The heartbeat and the flush try
            // again on their own clocks; said once per such spell.
            if !std::mem::replace(&mut self.refusing, true) {
                tracing::warn!(error = %e, "Redis refuses the presence writes; trying again each heartbeat");
            }
            return;
        }
        if self.up.swap(false, Relaxed) {
            let e = super::describe(e, self.ctx.redis.is_tls());
            tracing::warn!(error = %e, "presence lost Redis; presence queries get 503");
        }
        self.conn = None;
        self.last_renewed = None;
    }

    /// Writes the coalesced counts in one round trip; kept for the next try on failure.
    fn flush(&mut self) {
        self.last_flush = Instant::now();
        if self.pending.is_empty()
            && self.pending_topics.is_empty()
            && self.pending_members.is_empty()
        {
            return;
        }
        let topic_keys = self.topic_keys();
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let mut set: Vec<(&str, u32)> = Vec::new();
        let mut del: Vec<&str> = Vec::new();
        for (user, &n) in &self.pending {
            if n > 0 {
                set.push((user, n));
            } else {
                del.push(user);
            }
        }
        let mut pipe = redis::pipe();
        for chunk in set.chunks(CHUNK) {
            let cmd = pipe.cmd("HSET").arg(&self.key);
            for (user, n) in chunk {
                cmd.arg(*user).arg(*n);
            }
            cmd.ignore();
        }
        for chunk in del.chunks(CHUNK) {
            pipe.cmd("HDEL").arg(&self.key).arg(chunk).ignore();
        }
        let node = &*self.ctx.node_id;
        for ((shard, topic), &n) in &self.pending_topics {
            let key = keys::topic_sessions_key(node, *shard);
            if n > 0 {
                pipe.cmd("HSET").arg(key).arg(&**topic).arg(n).ignore();
            } else {
                pipe.cmd("HDEL").arg(key).arg(&**topic).ignore();
            }
        }
        let members_key = keys::topic_members_key(node);
        for ((topic, user), &member) in &self.pending_members {
            let m = keys::topic_member(topic, user);
            if member {
                pipe.cmd("ZADD").arg(&members_key).arg(0).arg(m).ignore();
            } else {
                pipe.cmd("ZREM").arg(&members_key).arg(m).ignore();
            }
        }
        for key in std::iter::once(&self.key).chain(&topic_keys) {
            pipe.cmd("PEXPIRE")
                .arg(key)
                .arg(TTL.as_millis() as u64)
                .ignore();
        }
        match pipe.query::<()>(&mut super::Prompt(conn)) {
            Ok(()) => {
                if self.pending_topics.capacity() > 256 {
                    self.pending_topics = HashMap::new();
                } else {
                    self.pending_topics.clear();
                }
                if self.pending_members.capacity() > 256 {
                    self.pending_members = HashMap::new();
                } else {
                    self.pending_members.clear();
                }
                // A connect storm grows the map to its batch (50 KB for 15,000 users);
                // an idle node must not keep that table. Growing it again in the next
                // storm is a few allocations per flush.
                if self.pending.capacity() > 256 {
                    self.pending = HashMap::new();
                } else {
                    self.pending.clear();
                }
            }
            Err(e) => self.down(&e),
        }
    }

    /// This node's totals, read from the shards' gauges.
    fn totals(&self) -> (u64, u64) {
        self.ctx.metrics.shards.iter().fold((0, 0), |(c, u), s| {
            (
                c + s.counters.connections.load(Relaxed),
                u + s.counters.users.load(Relaxed),
            )
        })
    }

    /// Once per `HEARTBEAT`: says the node is alive with its totals, renews its hash's
    /// TTL, and removes nodes that stopped saying so.
    fn heartbeat(&mut self) {
        if self.last_beat.is_some_and(|t| t.elapsed() < HEARTBEAT) {
            return;
        }
        let first = self.last_beat.is_none();
        self.last_beat = Some(Instant::now());
        let (connections, users) = self.totals();
        let topic_keys = self.topic_keys();
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let node = &*self.ctx.node_id;
        let now = now_ms();
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(NODE_RUNS).arg(node);
        pipe.cmd("HSET")
            .arg(NODE_RUNS)
            .arg(node)
            .arg(&self.run)
            .ignore();
        pipe.cmd("HSET").arg(NODES).arg(node).arg(now);
        let shards = self.ctx.metrics.shards.len();
        pipe.cmd("HSET")
            .arg(NODE_TOTALS)
            .arg(node)
            .arg(format!("{connections} {users} {shards}"))
            .ignore();
        for key in std::iter::once(&self.key).chain(&topic_keys) {
            pipe.cmd("PEXPIRE")
                .arg(key)
                .arg(TTL.as_millis() as u64)
                .ignore();
        }
        pipe.cmd("HGETALL").arg(NODES);
        let (last_run, added, nodes): (Option<String>, u64, HashMap<String, String>) =
            match pipe.query(&mut super::Prompt(conn)) {
                Ok(r) => r,
                Err(e) => {
                    self.down(&e);
                    return;
                }
            };
        // The link works: the next reconnect, if any, starts at the shortest pause.
        self.backoff = RECONNECT_MIN;
        let taken = Instant::now();
        if let Some(gap) = self
            .last_ok_beat
            .map(|t| taken.duration_since(t))
            .filter(|&gap| gap > STALE - HEARTBEAT)
        {
            // Other nodes' beats were likely refused as long: they get `STALE` to beat
            // again before this node takes them for dead, and meanwhile beats are judged
            // as of the spell's length ago.
            self.settling_until = Some(taken + STALE);
            self.settle_shift = gap;
        }
        self.last_ok_beat = Some(taken);
        self.ctx.metrics.broker.presence_beats.fetch_add(1, Relaxed);
        if std::mem::replace(&mut self.refusing, false) {
            tracing::info!("Redis takes the presence writes again");
        }
        // A new entry after the first beat means another node took this one for dead and
        // removed its presence; a TTL not renewed in time may have let the hash expire.
        let lapsed = self.last_renewed.is_some_and(|t| t.elapsed() >= TTL);
        if (added == 1 && !first) || lapsed {
            tracing::warn!(node, "presence entries may be lost; shards resend them");
            self.shared.resync.fetch_add(1, Relaxed);
        }
        self.last_renewed = Some(Instant::now());
        // Another process beat under this id since this one's last beat: it is alive
        // (a node that restarted under its id is not: it beats no more). The first beat
        // of a link cannot tell (this process just wrote its run): it leaves the verdict
        // as it was, so a reconnect does not flip it. Nor does a beat that finds its own
        // run: twins whose beats fall in step may each write twice between the other's;
        // the verdict ends `STALE` after the other run was last seen.
        if !first && last_run.as_ref().is_some_and(|r| *r != self.run) {
            self.twin_seen = Some(taken);
        }
        let twin = match first {
            true => self.ctx.blocks.duplicate_id.load(Relaxed),
            false => self
                .twin_seen
                .is_some_and(|t| taken.duration_since(t) < STALE),
        };
        self.ctx
            .metrics
            .broker
            .duplicate_node_id
            .store(twin, Relaxed);
        if self.ctx.blocks.duplicate_id.swap(twin, Relaxed) != twin {
            if twin {
                tracing::error!(
                    node,
                    "another live node has this node id: presence and stats are wrong and the \
                     stream ingress consumer is shared (a restart may deliver an entry the \
                     other took twice); give each node its own --node-id (node_id)"
                );
            } else {
                tracing::info!(node, "no other node has this node id any more");
            }
        }
        if self.settling_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let (_, mut dead) = split_alive(nodes, now);
        dead.retain(|n| n != node);
        if dead.is_empty() {
            return;
        }
        tracing::info!(nodes = ?dead, "removing nodes whose heartbeat stopped");
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL").arg(NODES).arg(&dead).ignore();
        pipe.cmd("HDEL").arg(NODE_TOTALS).arg(&dead).ignore();
        pipe.cmd("HDEL").arg(NODE_RUNS).arg(&dead).ignore();
        for n in &dead {
            // Their per-shard topic hashes expire by themselves (`TTL`); readers skip
            // dead nodes anyway.
            pipe.cmd("DEL")
                .arg(presence_key(n))
                .arg(keys::topic_members_key(n))
                .ignore();
        }
        if let Err(e) = pipe.query::<()>(&mut super::Prompt(conn)) {
            self.down(&e);
        }
    }

    /// Right after a spell without heartbeats (`settling_until`).
    fn settling(&self) -> bool {
        self.settling_until.is_some_and(|t| Instant::now() < t)
    }

    /// Why the cluster's view cannot be told now, though Redis answers: this node's
    /// heartbeat has not gone through for `STALE` (Redis refuses writes), so the other
    /// nodes' are likely as old. (Once that spell ends, `settling` judges their beats as
    /// of the spell's length ago until they could beat again.)
    fn view_unknown(&self) -> Option<String> {
        let beat_age = self.last_ok_beat.map(|t| t.elapsed());
        if beat_age.is_none_or(|a| a > STALE) {
            let age = beat_age.map_or("since it started".to_string(), |a| {
                format!("for {:.1} s", a.as_secs_f64())
            });
            return Some(format!(
                "Redis has not taken this node's heartbeat {age} (it refuses writes, out of \
                 memory?): which nodes are alive is not known"
            ));
        }
        None
    }

    /// Answers one query from Redis.
    fn answer(&mut self, q: PresenceQuery) {
        let ticket = ticket_of(&q);
        let unknown = self.view_unknown();
        let judged_at = if self.settling() {
            now_ms().saturating_sub(self.settle_shift.as_millis() as u64)
        } else {
            now_ms()
        };
        let r = match self.conn.as_mut() {
            None => Err("cannot reach Redis".to_string()),
            Some(_) if unknown.is_some() => Err(unknown.unwrap_or_default()),
            Some(conn) => match query(conn, &self.ctx.node_id, &q, judged_at) {
                Ok(v) => Ok(v),
                Err(e) => {
                    let msg = format!("cannot read presence from Redis: {e}");
                    self.down(&e);
                    Err(msg)
                }
            },
        };
        send_reply(&self.replies, ticket, r);
        let _ = self.replies.waker.wake();
    }

    /// Graceful stop: this node's entries go at once rather than after `STALE`/`TTL`.
    fn leave(&mut self) {
        if self.conn.is_none() {
            if let Ok(c) = self.ctx.redis.connect() {
                self.conn = Some(c);
            }
        }
        let topic_keys = self.topic_keys();
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let node = &*self.ctx.node_id;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&self.key).arg(topic_keys).ignore();
        pipe.cmd("HDEL").arg(NODES).arg(node).ignore();
        pipe.cmd("HDEL").arg(NODE_TOTALS).arg(node).ignore();
        pipe.cmd("HDEL").arg(NODE_RUNS).arg(node).ignore();
        if let Err(e) = pipe.query::<()>(&mut super::Prompt(conn)) {
            tracing::warn!(error = %e, "could not remove this node's presence at shutdown");
        }
    }
}

/// Reads the view a query asks for: the live nodes first, then what they hold.
///
/// `judged_at` is the time (Unix ms) nodes' beats are judged at: now, or right after a
/// spell without heartbeats now minus that spell (their beats were held up as long as this
/// node's).
fn query(
    conn: &mut Connection,
    me: &str,
    q: &PresenceQuery,
    judged_at: u64,
) -> redis::RedisResult<ClusterView> {
    match q {
        PresenceQuery::User { user, .. } => {
            let nodes: HashMap<String, String> = redis::cmd("HGETALL").arg(NODES).query(conn)?;
            let (mut alive, _) = split_alive(nodes, judged_at);
            alive.retain(|n| n != me);
            if alive.is_empty() {
                return Ok(ClusterView::User(Vec::new()));
            }
            let mut pipe = redis::pipe();
            for n in &alive {
                pipe.cmd("HGET").arg(presence_key(n)).arg(user);
            }
            let counts: Vec<Option<u64>> = pipe.query(&mut super::Prompt(conn))?;
            Ok(ClusterView::User(
                alive
                    .into_iter()
                    .zip(counts)
                    .filter_map(|(node, n)| {
                        n.filter(|&n| n > 0)
                            .map(|sessions| NodeSessions { node, sessions })
                    })
                    .collect(),
            ))
        }
        PresenceQuery::Topic { topic, page, .. } => {
            let (nodes, totals): (HashMap<String, String>, HashMap<String, String>) = redis::pipe()
                .cmd("HGETALL")
                .arg(NODES)
                .cmd("HGETALL")
                .arg(NODE_TOTALS)
                .query(&mut super::Prompt(conn))?;
            let (mut alive, _) = split_alive(nodes, judged_at);
            alive.retain(|n| n != me);
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET")
                .arg(keys::StreamRef::Topic(topic).meta_key())
                .arg("seq")
                .arg("epoch");
            let mut hashes = 0;
            for n in &alive {
                let shards = totals.get(n).map_or(0, |t| parse_shards(t));
                for s in 0..shards {
                    pipe.cmd("HGET")
                        .arg(keys::topic_sessions_key(n, s))
                        .arg(topic);
                    hashes += 1;
                }
            }
            if let Some(p) = page {
                // Users after `after` in this topic: from "<topic>\n<after>" (exclusive)
                // to the first name past the topic's prefix ('\n' + 1).
                let min = match &p.after {
                    Some(a) => format!("({}", keys::topic_member(topic, a)),
                    None => format!("[{topic}\n"),
                };
                let max = format!("({topic}\u{b}");
                for n in &alive {
                    pipe.cmd("ZRANGEBYLEX")
                        .arg(keys::topic_members_key(n))
                        .arg(&min)
                        .arg(&max)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(p.limit.saturating_add(1));
                }
            }
            let mut values: Vec<redis::Value> = pipe.query(&mut super::Prompt(conn))?;
            let mut rest = values.split_off(1);
            let (seq, epoch): (Option<u64>, Option<String>) =
                redis::from_redis_value(values.pop().unwrap_or(redis::Value::Nil))?;
            let pages = rest.split_off(hashes.min(rest.len()));
            let mut others = TopicOthers::default();
            for v in rest {
                others.subscribers += redis::from_redis_value::<Option<u64>>(v)?.unwrap_or(0);
            }
            let prefix = format!("{topic}\n");
            for v in pages {
                for m in redis::from_redis_value::<Vec<String>>(v)? {
                    if let Some(user) = m.strip_prefix(&prefix) {
                        others.members.push(user.into());
                    }
                }
            }
            Ok(ClusterView::Topic {
                seq: seq.unwrap_or(0),
                epoch,
                others,
            })
        }
        PresenceQuery::Stats { .. } => {
            let (nodes, totals): (HashMap<String, String>, HashMap<String, String>) = redis::pipe()
                .cmd("HGETALL")
                .arg(NODES)
                .cmd("HGETALL")
                .arg(NODE_TOTALS)
                .query(&mut super::Prompt(conn))?;
            let (mut alive, _) = split_alive(nodes, judged_at);
            alive.retain(|n| n != me);
            Ok(ClusterView::Stats(
                alive
                    .into_iter()
                    .map(|node| {
                        let (connections, users_online) =
                            totals.get(&node).map_or((0, 0), |t| parse_totals(t));
                        NodeTotals {
                            node,
                            connections,
                            users_online,
                        }
                    })
                    .collect(),
            ))
        }
    }
}

/// `"<connections> <users>"` as the heartbeat writes it; zeros for anything else.
pub fn parse_totals(s: &str) -> (u64, u64) {
    let mut it = s.split(' ').map(|p| p.parse::<u64>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The shard count from a totals entry (`"<connections> <users> <shards>"`); 0 for an
/// entry without one (no topic hashes to read).
pub fn parse_shards(s: &str) -> usize {
    s.split(' ')
        .nth(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn ticket_of(q: &PresenceQuery) -> Ticket {
    match q {
        PresenceQuery::User { ticket, .. }
        | PresenceQuery::Stats { ticket }
        | PresenceQuery::Topic { ticket, .. } => *ticket,
    }
}

fn send_reply(replies: &ReplySink, ticket: Ticket, view: ViewResult) {
    let _ = replies.tx.send(Reply {
        ticket,
        sessions: 0,
        users: 0,
        details: Vec::new(),
        members: Vec::new(),
        published: None,
        cluster: Some(Box::new(view)),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_nodes_are_recent_and_the_rest_is_dead() {
        let now = 100_000;
        let nodes = HashMap::from([
            ("a".to_string(), (now - 500).to_string()),
            ("b".to_string(), (now - 3_000).to_string()),
            ("c".to_string(), (now - 3_001).to_string()),
            ("d".to_string(), "garbage".to_string()),
            // A clock a little ahead of ours is alive.
            ("e".to_string(), (now + 200).to_string()),
        ]);
        let (alive, mut dead) = split_alive(nodes, now);
        dead.sort();
        assert_eq!(alive, ["a", "b", "e"]);
        assert_eq!(dead, ["c", "d"]);
    }

    #[test]
    fn totals_parse_and_default_to_zero() {
        assert_eq!(parse_totals("12 7"), (12, 7));
        assert_eq!(parse_totals("x"), (0, 0));
        assert_eq!(parse_totals(""), (0, 0));
    }
}
