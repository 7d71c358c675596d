//! A shard: one thread owning a set of connections, their users and topics, its timing
//! wheel and their outbound queues. Connections arrive from the acceptor and commands from
//! the push API, each over a bounded channel paired with the shard's waker.

#[doc(hidden)]
pub mod bench;
mod budget;
mod cluster;
mod compact;
mod conn;
mod distinct;
mod drain;
mod grants;
mod history;
mod inbound;
mod keep;
mod presence;
mod publish;
mod rate;
mod refresh;
mod sessions;
mod streams;
mod ticks;
mod topics;
mod upstream;
mod users;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::deflate::Compressed;
use crate::wire::Wire;
use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxBuildHasher;

use crate::admission::Admission;
use crate::auth::Verifier;
use crate::command::{ClientPublish, Handoff, Reply, SessionDetail, ShardCmd, Ticket};
use crate::config::Config;
use crate::frame::{self, Close, CloseCause};
use crate::handshake::Refusal;
use crate::http;
use crate::messages;
use crate::metrics::{self, HandshakeOutcome, Metrics, ShardCounters};
use crate::reactor::{self, Clock, WAKER};
use crate::wheel::Core;

pub use cluster::{ShardCluster, MAX_INTERESTS_WAITING};
pub use conn::OutQueue;
use conn::{Conn, Conns, Sent, SessionStamp, DRAIN_DUE, EXPIRING_SENT, PARKED, PING_SENT};
pub use drain::DrainEnd;
use streams::Streams;
use topics::Topics;
use users::Users;

/// How long a closing connection may take to finish the close handshake.
const CLOSE_LINGER: Duration = Duration::from_secs(3);
/// Commands or connections taken from a channel per loop turn, so sockets are not starved.
const CHANNEL_BATCH: usize = 1024;
/// Reads per readiness event before the connection waits its turn again.
const READS_PER_EVENT: usize = 16;
/// Bytes of per-recipient frames (a `users` push makes one per user, numbered for that
/// user) built since the last flush, past which the shard writes them out and checks the
/// memory budget at once, mid-turn: one request listing 10,000 users of 1 MiB would
/// otherwise build 10 GB of frames before its first write.
const MADE_FLUSH_BYTES: usize = 4 << 20;
/// Bytes of per-recipient frames a turn's commands may build before the rest of the queue
/// waits for the next turn: a backlog of heavy `users` pushes would otherwise keep the
/// shard from its sockets, timers and a drain for 1,024 of them (minutes). Shared frames
/// (topics, broadcasts) do not count, so their bursts still coalesce per turn.
pub(super) const TURN_MADE_BYTES: usize = 16 << 20;
/// Most bytes a connection closed for its queue (4008) may keep queued through the close
/// linger; beyond, it is dropped without the close handshake.
const CLOSING_KEEP_MAX: usize = 64 * 1024;
/// Scratch read buffer shared by every connection of the shard.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Most connection (and user) slots a shard reserves up front: 4M slots of 64 (72) bytes
/// is 256 (288) MiB of address space; past it the tables grow by doubling.
const MAX_RESERVED_SLOTS: usize = 1 << 22;

/// The sending ends of a new shard's two queues and its waker: the connection queue goes
/// to the acceptor's `Links`, the command queue to the push API's.
pub struct ShardEnds {
    /// Upgraded connections from the acceptor.
    pub conns: crate::link::QueueTx<Handoff>,
    /// Commands from the push API.
    pub cmds: crate::link::QueueTx<ShardCmd>,
    /// Wakes the shard after a send.
    pub waker: Arc<Waker>,
}

/// Where shards send answers for the push API.
#[derive(Clone)]
pub struct ReplySink {
    /// The API's reply channel.
    pub tx: Sender<Reply>,
    /// Wakes the API thread.
    pub waker: Arc<Waker>,
}

/// What a shard shares with the rest of the server.
pub struct ShardShared {
    /// Configuration.
    pub config: Arc<Config>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Connection accounting.
    pub admission: Arc<Admission>,
    /// Set when shutdown begins.
    pub draining: Arc<AtomicBool>,
    /// How the server's shards end the drain together.
    pub drain_end: Arc<DrainEnd>,
    /// Answers to the push API.
    pub replies: ReplySink,
    /// Cluster mode: the links to the node's broker.
    pub cluster: Option<ShardCluster>,
    /// Client publishes, to the push API (woken through `replies.waker`).
    pub publishes: Sender<ClientPublish>,
    /// Client sends and lifecycle events, when they have a target.
    pub events: Option<crate::events::EventSink>,
    /// The JWT keys every verifier of the process shares (a reload reaches `refresh`
    /// too); `None`: the shard loads its own from the configuration.
    pub jwt_keys: Option<Arc<crate::auth::SharedKeys>>,
}

/// Creates shard `id`'s poll, channels and thread.
pub fn spawn(
    id: usize,
    shared: ShardShared,
    core: Option<core_affinity::CoreId>,
) -> io::Result<(ShardEnds, std::thread::JoinHandle<()>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let cap = shared.config.shard_queue_capacity;
    let (conn_tx, conn_rx) = crate::link::queue(cap);
    let (cmd_tx, cmd_rx) = crate::link::queue(cap);
    let thread = std::thread::Builder::new()
        .name(format!("throng-shard-{id}"))
        .spawn(move || {
            if let Some(core) = core {
                core_affinity::set_for_current(core);
            }
            let mut shard = Shard::new(id, poll, conn_rx, cmd_rx, shared, Clock::real());
            shard.run();
        })?;
    Ok((
        ShardEnds {
            conns: conn_tx,
            cmds: cmd_tx,
            waker,
        },
        thread,
    ))
}

struct Shard {
    id: usize,
    poll: Poll,
    conn_rx: Receiver<Handoff>,
    cmd_rx: Receiver<ShardCmd>,
    shared: ShardShared,
    conns: Conns,
    users: Users,
    /// Topic streams: seq, epoch and recent pushes per topic (docs/protocol.md 4.1).
    streams: Streams,
    topics: Topics,
    /// Connection timers, kept in the connections' slots.
    wheel: Core,
    /// Time in wheel ticks (real, or manual in tests).
    clock: Clock,
    /// Current tick, refreshed once per loop turn.
    tick: u32,
    ping_ticks: u32,
    idle_ticks: u32,
    /// `refresh_ahead` in ticks: `token_expiring` goes out this long before the 4001.
    hint_ticks: u32,
    /// Verifies `refresh` tokens; the shard's own, so a refresh takes no lock. `None`
    /// only if the key stopped loading after startup checked it.
    verifier: Option<Verifier>,
    /// The empty Ping every heartbeat queues, shared: one allocation per shard rather
    /// than one per ping.
    ping: Wire,
    scratch: Vec<u8>,
    json: simd_json::Buffers,
    /// Compresses frames for permessage-deflate recipients (once per frame, see `Wire`).
    deflater: crate::deflate::Deflater,
    /// Inflates compressed client messages.
    inflater: crate::deflate::Inflater,
    /// Where an inflated client message goes (reused).
    inflated: Vec<u8>,
    /// Connections whose read budget ran out with bytes still waiting.
    backlog: Vec<u32>,
    /// Pushes handled this turn, for the latency histogram once written.
    written_at: Vec<Instant>,
    /// Accept stamps (`wire::stamp_of`) of pushes a session acked first this turn, for the
    /// ack latency histogram once the turn ends.
    acked_at: Vec<u32>,
    replies: Vec<Reply>,
    latency: Histogram<u64>,
    /// Push-accepted-to-ack latency, merged into the shared copy like `latency`.
    ack_latency: Histogram<u64>,
    last_publish: Instant,
    /// Numbers sessions for their ids; a u32 so each `Conn` can keep its own (it wraps
    /// after 4 billion sessions of one shard's life, with the random nonce in front).
    session_counter: u32,
    nonce: u32,
    /// The distinct users a fan-out reached, for the push API's answer.
    reached: distinct::Distinct,
    /// When a drain began: the shard clock's millisecond (`Clock::now_ms`) at which the
    /// connections still open are abandoned. On the shard's clock like every other
    /// deadline, so a test on a manual clock sees the same drain however slowly it runs.
    drain_deadline: Option<u64>,
    /// While draining: each open connection's turn to close.
    drain_turns: drain::Turns,
    /// Drained: no connection left (or the deadline passed); the shard ends once the
    /// server releases it (`DrainEnd`).
    drained: bool,
    /// Topic patterns from tokens that carry a `topics` claim, each distinct set shared;
    /// connections without grants pay nothing.
    grants: grants::Grants,
    /// The highest `seq` each session acked, only for sessions that acked (docs/protocol.md
    /// 4.3): an idle connection that never acks costs nothing here.
    acks: HashMap<u32, u64, FxBuildHasher>,
    /// Reused list of recipients for one fan-out, so a push does not allocate one (let go
    /// once a burst has drained, with the queues: `budget::maybe_trim`).
    targets: Vec<u32>,
    /// Bytes of per-recipient frames built since the last flush (`MADE_FLUSH_BYTES`).
    made: usize,
    /// Bytes of per-recipient frames built by this turn's commands (`TURN_MADE_BYTES`).
    turn_made: usize,
    /// The memory gauges as last published, so an unchanged value is not stored again.
    published: budget::Published,
    /// Cluster mode: streams loading and served, and the broker links.
    cluster: Option<Box<cluster::ClusterState>>,
    /// Client message rate limits, per connection while not full.
    rates: rate::Rates,
    /// Client publishes sent to the push API and not answered yet.
    publishing: usize,
    /// A client publish went to the push API this turn: wake it at the end.
    wake_api: bool,
    /// The tick of the last `compact_tables`.
    last_compact: u32,
}

impl Shard {
    fn new(
        id: usize,
        poll: Poll,
        conn_rx: Receiver<Handoff>,
        cmd_rx: Receiver<ShardCmd>,
        mut shared: ShardShared,
        clock: Clock,
    ) -> Shard {
        let cluster = shared
            .cluster
            .take()
            .map(|link| Box::new(cluster::ClusterState::new(link)));
        let cfg = &shared.config;
        let ticks = ticks::span;
        let ping_ticks = ticks(cfg.ping_interval).clamp(1, ticks::MAX_SPAN - 1);
        let idle_ticks = ticks(cfg.idle_timeout).max(ping_ticks + 1);
        let max_outbound = cfg.max_outbound_bytes;
        let hint_ticks = ticks(cfg.refresh_ahead);
        let verifier = match &shared.jwt_keys {
            Some(keys) => Ok(Verifier::with_keys(&cfg.jwt, Arc::clone(keys))),
            None => Verifier::new(&cfg.jwt),
        };
        let verifier = match verifier {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(shard = id, error = %e, "token refresh disabled");
                None
            }
        };
        let limits = history::Limits {
            size: cfg.history_size,
            ttl_ticks: ticks(cfg.history_ttl).max(1),
            memory: cfg.history_memory_bytes,
        };
        // This shard's share of the connections the process can hold (`max_connections`,
        // or fewer under the open-file limit), bounded: reserved address space for the
        // connection and user slots, which become resident only as they fill.
        let fd_ceiling = crate::fdlimit::current().map_or(usize::MAX, |(soft, _)| {
            usize::try_from(crate::fdlimit::client_ceiling(
                soft,
                cfg.api_max_connections,
            ))
            .unwrap_or(usize::MAX)
        });
        let expected = cfg
            .max_connections
            .min(fd_ceiling)
            .div_ceil(cfg.shards.max(1))
            .min(MAX_RESERVED_SLOTS);
        let mut users = Users::with_capacity(limits, expected);
        let mut topics = Topics::default();
        if cluster.is_some() {
            users.track_gone();
            topics.track_gone();
        }
        Shard {
            id,
            poll,
            conn_rx,
            cmd_rx,
            conns: Conns::new(max_outbound, expected),
            users,
            streams: Streams::new(limits, streams::MAX_TOPIC_STREAMS),
            topics,
            wheel: Core::new(),
            clock,
            tick: 0,
            ping_ticks,
            idle_ticks,
            hint_ticks,
            verifier,
            ping: frame::ping(b""),
            scratch: vec![0; SCRATCH_BYTES],
            json: simd_json::Buffers::default(),
            deflater: crate::deflate::Deflater::new(shared.config.compression_level),
            inflater: crate::deflate::Inflater::new(),
            inflated: Vec::new(),
            backlog: Vec::new(),
            written_at: Vec::new(),
            acked_at: Vec::new(),
            replies: Vec::new(),
            latency: metrics::latency_histogram(),
            ack_latency: metrics::ack_latency_histogram(),
            last_publish: Instant::now(),
            session_counter: 0,
            nonce: rand::random(),
            reached: distinct::Distinct::default(),
            drain_deadline: None,
            drain_turns: drain::Turns::default(),
            drained: false,
            grants: grants::Grants::default(),
            acks: HashMap::default(),
            targets: Vec::new(),
            made: 0,
            turn_made: 0,
            published: budget::Published::default(),
            cluster,
            rates: rate::Rates::new(shared.config.client_rate),
            publishing: 0,
            wake_api: false,
            last_compact: 0,
            shared,
        }
    }

    fn counters(&self) -> &ShardCounters {
        &self.shared.metrics.shards[self.id].counters
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut fired = Vec::new();
        let mut broken = Vec::new();
        loop {
            let timeout = self.poll_timeout();
            if !self.turn(&mut events, &mut fired, &mut broken, timeout) {
                return;
            }
        }
    }

    /// One turn of the loop: wait up to `timeout`, then read, take connections and
    /// commands, fire timers, flush, publish. False when the shard is done.
    fn turn(
        &mut self,
        events: &mut Events,
        fired: &mut Vec<u32>,
        broken: &mut Vec<u32>,
        timeout: Duration,
    ) -> bool {
        if let Err(e) = reactor::poll_step(&mut self.poll, events, timeout) {
            tracing::error!(shard = self.id, error = %e, "poll failed; shard stops");
            self.abandon_all();
            return false;
        }
        self.refresh_tick();
        for backlogged in std::mem::take(&mut self.backlog) {
            self.on_readable(backlogged, true);
        }
        for event in events.iter() {
            if event.token() == WAKER {
                continue;
            }
            let key = event.token().0 as u32;
            if event.is_writable() && self.conns.flush(key).is_err() {
                self.abort(key);
                continue;
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                self.on_readable(key, event.is_read_closed() || event.is_error());
            }
        }
        // A connection read from the backlog and again for its event may have gone back
        // twice: once is its share of a turn.
        if self.backlog.len() > 1 {
            self.backlog.sort_unstable();
            self.backlog.dedup();
        }
        self.take_connections();
        self.take_commands();
        self.users.expire(self.tick);
        self.take_remote();
        self.streams.expire(self.tick);
        let now = self.conns.tick_base() + u64::from(self.tick);
        self.wheel.advance(&mut self.conns, now, fired);
        for key in fired.drain(..) {
            self.on_timer(key);
        }
        self.conns.flush_dirty(broken);
        for key in broken.drain(..) {
            self.abort(key);
        }
        debug_assert!(
            !self.conns.has_dirty(),
            "dirty connections left after the flush"
        );
        self.finish_turn();
        self.rebase_ticks();
        self.check_invariants();
        !(self.shared.draining.load(Relaxed) && self.drain_step())
    }

    fn poll_timeout(&self) -> Duration {
        if !self.backlog.is_empty()
            || !self.conn_rx.is_empty()
            || !self.cmd_rx.is_empty()
            || self.conns.has_dirty()
            || self.cluster.as_ref().is_some_and(|c| c.has_remote())
        {
            return Duration::ZERO;
        }
        // Wake at least every 100 ms to publish metrics and notice draining.
        let mut timeout = Duration::from_millis(100);
        if let Some(next) = self.wheel.next_expiry() {
            timeout = timeout.min(self.clock.until_tick(next));
        }
        timeout
    }

    fn refresh_tick(&mut self) {
        self.tick = self.relative_tick(self.clock.tick());
    }

    fn take_connections(&mut self) {
        for _ in 0..CHANNEL_BATCH {
            match self.conn_rx.try_recv() {
                Ok(h) => self.adopt(h),
                Err(_) => break,
            }
        }
    }

    fn take_commands(&mut self) {
        // What the API reserved for these commands, released once per turn.
        let mut released = 0;
        self.turn_made = 0;
        for _ in 0..CHANNEL_BATCH {
            if self.turn_made >= TURN_MADE_BYTES {
                break;
            }
            match self.cmd_rx.try_recv() {
                Ok(cmd) => {
                    released += cmd.weight();
                    self.command(cmd);
                }
                Err(_) => break,
            }
        }
        if released > 0 {
            self.shared
                .metrics
                .command_bytes
                .fetch_sub(released, Relaxed);
        }
    }

    /// Registers an upgraded socket, writes the 101 and `welcome`, and indexes the session.
    fn adopt(&mut self, mut h: Handoff) {
        if self.drain_deadline.is_some() {
            refuse_handoff(h, &self.shared, Refusal::Draining);
            return;
        }
        let created = self.users.find(&h.identity.user).is_none();
        // A user new here is a new stream to ask the broker for.
        if created && self.cluster.is_some() && self.broker_behind() {
            let busy = Refusal::OverCapacity("the cluster's Redis is behind; try again later");
            refuse_handoff(h, &self.shared, busy);
            return;
        }
        // Counted here, where the handshake's outcome is known, not by the acceptor: a
        // Prometheus counter must never be taken back.
        self.shared.metrics.handshake(HandshakeOutcome::Accepted);
        let ip = h.ip;
        let expires = h.identity.exp.map_or(u32::MAX, |exp| self.expiry_tick(exp));
        let mut stream = h.stream;
        let key = self.conns.vacant_key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key as usize),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(error = %e, "cannot register connection");
            self.shared.admission.release(ip);
            return;
        }
        let user = self.users.attach(&h.identity.user, key);
        self.presence_changed(user);
        self.session_counter = self.session_counter.wrapping_add(1);
        let stamp = SessionStamp {
            session: self.session_counter,
            connected: self.tick,
        };
        let grant = self.grants.intern(
            std::mem::take(&mut h.identity.topics),
            std::mem::take(&mut h.identity.publish),
        );
        let inserted = self.conns.insert(
            Conn::open(stream, user, self.tick, expires, stamp, grant),
            ip,
        );
        debug_assert_eq!(inserted, key, "registered under the key the slot got");
        if let Some(tls) = h.tls.take() {
            self.conns.adopt_tls(key, *tls);
        }
        if let (Some(agreed), Some(c)) = (h.deflate, self.conns.get_mut(key)) {
            c.set_deflate_bits(agreed.window_bits());
        }
        self.counters().connections.fetch_add(1, Relaxed);
        self.lifecycle(key, "connect", crate::events::Detail::None);
        let leftover = std::mem::take(&mut h.leftover);
        match self.park_if_loading(key, user, created, h.resume.take(), leftover) {
            Ok(()) => {
                // Upgraded now; `welcome` when the user's stream is loaded.
                self.conns.send(
                    key,
                    Wire::from(http::switching_protocols(&h.accept_key, h.deflate)),
                );
                self.arm(key);
            }
            Err((resume, leftover)) => {
                self.conns.send(
                    key,
                    Wire::from(http::switching_protocols(&h.accept_key, h.deflate)),
                );
                self.greet(key, resume, leftover);
            }
        }
    }

    /// Writes `welcome` (with `resumed` when asked) and the replay, arms the session's
    /// timer, evicts the user's oldest sessions over the limit, and processes what the
    /// client already sent.
    fn greet(&mut self, key: u32, resume: Option<crate::command::Resume>, leftover: Vec<u8>) {
        let Some(c) = self.conns.get(key) else {
            return;
        };
        let user = c.user;
        let counter = c.stamp.session;
        let Some(u) = self.users.get(user) else {
            return;
        };
        let (seq, epoch) = (u.seq, u.epoch);
        let id = u.id.clone();
        // Decided before anything else is queued: the replay follows `welcome` at once.
        let mut replay = Vec::new();
        let resumed = resume
            .as_ref()
            .map(|r| self.users.resume(user, r.since, &r.epoch, &mut replay));
        let cfg = &self.shared.config;
        let welcome = messages::welcome_frame(
            &self.session_id(counter),
            &id,
            &format!("{epoch:016x}"),
            seq,
            &messages::WelcomeLimits {
                ping_interval_ms: cfg.ping_interval.as_millis() as u64,
                idle_timeout_ms: cfg.idle_timeout.as_millis() as u64,
                client_rate: cfg.client_rate,
                max_message_size: cfg.max_message_size,
                max_client_data_bytes: cfg.max_client_data_bytes,
            },
            resumed,
        );
        self.conns.send(key, welcome);
        // Through the normal queue: a replay over `max_outbound_bytes` closes with 4008.
        for frame in replay {
            if !self.deliver(key, frame) {
                // Closed (4008, with its linger timer) or gone: it left the user's
                // sessions, so the others are within `max_sessions_per_user` again.
                return;
            }
        }
        // A token already within `refresh_ahead` of its end gets the hint right away, and
        // a session welcomed while draining its turn.
        self.hint_expiry(key);
        self.hint_reconnect_late(key);
        self.arm(key);
        // Over the limit: the oldest sessions go, with 4009.
        let max = self.shared.config.max_sessions_per_user;
        while let Some(oldest) = self
            .users
            .get(user)
            .filter(|u| u.sessions.len() > max)
            .map(|u| u.sessions[0])
        {
            self.close(oldest, Close::SESSION_EVICTED);
        }
        if !leftover.is_empty() {
            let mut leftover = leftover;
            self.ingest(key, &mut leftover);
        }
    }

    /// The id `welcome` gives the session numbered `counter`.
    fn session_id(&self, counter: u32) -> String {
        format!("{:08x}{:02x}{:x}", self.nonce, self.id, counter)
    }

    /// The tick at which a token with `exp` (plus leeway) expires: the 4001, which
    /// `token_expiring`'s `in_ms` counts down to.
    fn expiry_tick(&self, exp: u64) -> u32 {
        // In milliseconds, from the clock read now: the turn's tick with the wall clock
        // read a second boundary later closed up to a second before `exp`.
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let left_ms = exp
            .saturating_add(self.shared.config.jwt.leeway_secs)
            .saturating_mul(1000)
            .saturating_sub(now_ms);
        let t = self
            .clock
            .now_ms()
            .saturating_add(left_ms)
            .div_ceil(reactor::TICK_MS)
            .saturating_sub(self.conns.tick_base());
        // Beyond the u32 ticks (at least 248 days ahead, `ticks.rs`): never, on this
        // connection, rather than a deadline a rebase would move closer.
        u32::try_from(t).unwrap_or(u32::MAX)
    }

    fn command(&mut self, cmd: ShardCmd) {
        match cmd {
            ShardCmd::Users {
                push,
                users,
                ticket,
            } => {
                let mut sessions = 0u64;
                let mut online = 0u64;
                let mut targets = std::mem::take(&mut self.targets);
                let stamp = history::stamp_of(push.accepted_at);
                for id in &users {
                    let Some(k) = self.users.find(id) else {
                        continue;
                    };
                    let Some(u) = self.users.get_mut(k) else {
                        continue;
                    };
                    // A retained user without sessions is numbered too: its history is
                    // the offline buffer.
                    u.seq += 1;
                    let frame = messages::push_frame(
                        &push.data,
                        push.ts_ms,
                        Some(u.seq),
                        None,
                        push.id.as_deref(),
                    );
                    online += u64::from(!u.sessions.is_empty());
                    targets.clear();
                    targets.extend_from_slice(&u.sessions);
                    self.users.record(k, &frame, self.tick, stamp);
                    self.trim_history();
                    // Compressed at most once for all of the user's sessions.
                    let compressed = Compressed::default();
                    for &key in &targets {
                        sessions += u64::from(self.deliver_push(key, &frame, &compressed));
                    }
                    self.made_frame(frame.len());
                }
                targets.clear();
                self.targets = targets;
                self.delivered(sessions, push.accepted_at);
                self.answer_api(ticket, sessions, online);
            }
            ShardCmd::Topic {
                topic,
                frame,
                compressed,
                seq,
                epoch,
                accepted_at,
                ticket,
            } => self.topic_push(
                &topic,
                seq,
                &epoch,
                (&frame, &compressed),
                accepted_at,
                ticket,
            ),
            ShardCmd::Broadcast {
                frame,
                compressed,
                accepted_at,
                ticket,
            } => self.broadcast((&frame, &compressed), accepted_at, ticket),
            ShardCmd::Disconnect {
                user,
                code,
                reason,
                ticket,
            } => {
                let sessions = self
                    .users
                    .find(&user)
                    .and_then(|k| self.users.get(k))
                    .map(|u| u.sessions.clone())
                    .unwrap_or_default();
                let close = Close {
                    code,
                    reason: &reason,
                    cause: CloseCause::ApiDisconnect,
                };
                for &key in sessions.iter() {
                    self.close(key, close);
                }
                let n = sessions.len() as u64;
                self.answer_api(Some(ticket), n, u64::from(n > 0));
            }
            ShardCmd::TopicMembers {
                topic,
                ticket,
                page,
            } => {
                let t = self.topics.find(&topic);
                let n = t.map_or(0, |t| self.topics.count(t) as u64);
                let members = match (t, page) {
                    (Some(t), Some(page)) => {
                        let users = self
                            .topics
                            .members(t)
                            .filter_map(|k| self.conns.get(k))
                            .filter_map(|c| self.users.get(c.user))
                            .map(|u| u.id.as_str());
                        page.select(users)
                    }
                    _ => Vec::new(),
                };
                self.replies.push(Reply {
                    ticket,
                    sessions: n,
                    users: 0,
                    details: Vec::new(),
                    members,
                    published: None,
                    cluster: None,
                });
            }
            ShardCmd::Presence { user, ticket } => {
                let sessions = self
                    .users
                    .find(&user)
                    .and_then(|k| self.users.get(k))
                    .map_or(&[][..], |u| &u.sessions[..]);
                let details: Vec<SessionDetail> = sessions
                    .iter()
                    .filter_map(|&key| {
                        let s = self.conns.get(key)?.stamp;
                        Some(SessionDetail {
                            session: self.session_id(s.session),
                            acked: self.acks.get(&key).copied().unwrap_or(0),
                            connected_ms: u64::from(self.tick.saturating_sub(s.connected))
                                * reactor::TICK_MS,
                        })
                    })
                    .collect();
                let n = details.len() as u64;
                self.replies.push(Reply {
                    ticket,
                    sessions: n,
                    users: u64::from(n > 0),
                    details,
                    members: Vec::new(),
                    published: None,
                    cluster: None,
                });
            }
            ShardCmd::Published {
                origin,
                topic,
                outcome,
            } => self.published(origin, &topic, outcome),
        }
    }

    /// Keeps a numbered topic push and sends it to the topic's members here.
    fn topic_push(
        &mut self,
        topic: &Arc<str>,
        seq: u64,
        epoch: &Arc<str>,
        frame: (&Wire, &Compressed),
        accepted_at: Instant,
        ticket: Option<Ticket>,
    ) {
        // Kept even with no member here: a subscriber may resume on this shard. Stamped
        // with the clock read now, not the turn's start: the API numbered the push before
        // this shard took it, and a stamp from before that (a command taken late in a long
        // turn) would make the shard forget the stream before the API's sequencer does,
        // answering a subscribe with the placeholder epoch while the numbering goes on.
        let now = self.relative_tick(self.clock.tick()).max(self.tick);
        self.streams.record(topic, seq, epoch, frame.0, now);
        self.trim_history();
        let mut members = std::mem::take(&mut self.targets);
        if let Some(t) = self.topics.find(topic) {
            members.extend(self.topics.members(t));
        }
        let (sessions, users) = self.fan_out(&members, frame, ticket.is_some());
        members.clear();
        self.targets = members;
        self.delivered(sessions, accepted_at);
        self.answer_api(ticket, sessions, users);
    }

    /// Sends a broadcast frame to every open session here.
    fn broadcast(
        &mut self,
        frame: (&Wire, &Compressed),
        accepted_at: Instant,
        ticket: Option<Ticket>,
    ) {
        let mut all = std::mem::take(&mut self.targets);
        all.extend(self.conns.open_keys());
        let (sessions, _) = self.fan_out(&all, frame, false);
        all.clear();
        self.targets = all;
        self.delivered(sessions, accepted_at);
        self.answer_api(ticket, sessions, self.users.len() as u64);
    }

    /// Sends one shared frame (and its compressed form, to compressing sessions) to each
    /// of `keys`; counts sessions and, if asked, distinct users.
    fn fan_out(
        &mut self,
        keys: &[u32],
        (frame, compressed): (&Wire, &Compressed),
        count_users: bool,
    ) -> (u64, u64) {
        let mut sessions = 0;
        let mut users = 0;
        for &key in keys {
            let user = match self.conns.get(key) {
                // A parked session has no `welcome` yet: nothing may come before it.
                Some(c) if !c.closing() && c.flags & PARKED == 0 => c.user,
                _ => continue,
            };
            if !self.deliver_push(key, frame, compressed) {
                continue;
            }
            sessions += 1;
            if count_users && self.reached.insert(user) {
                users += 1;
            }
        }
        self.reached.clear();
        (sessions, users)
    }

    /// Queues a push frame. A connection that negotiated permessage-deflate gets its
    /// compressed form (made once, by whichever shard needs it first) when the frame is
    /// long enough and fits the window the client allows.
    fn deliver_push(&mut self, key: u32, frame: &Wire, compressed: &Compressed) -> bool {
        // The length first: most pushes are short, and then no slot is looked at.
        let compress = frame.len() >= self.shared.config.compression_min_bytes
            && self.conns.get(key).is_some_and(|c| {
                // A window smaller than the compressor's 32 KiB is respected by
                // compressing only messages that fit in it.
                let bits = c.deflate_bits();
                bits != 0 && (bits >= 15 || frame.len() <= 1 << bits)
            });
        if !compress {
            return self.deliver(key, frame.clone());
        }
        let (deflater, counters) = (
            &mut self.deflater,
            &self.shared.metrics.shards[self.id].counters,
        );
        let made = compressed.get_or_make(|| {
            counters.deflate_compressions.fetch_add(1, Relaxed);
            deflater.frame(frame)
        });
        match made {
            Some(z) => {
                counters.deflated_sends.fetch_add(1, Relaxed);
                let z = z.clone();
                self.deliver(key, z)
            }
            None => self.deliver(key, frame.clone()),
        }
    }

    /// Counts a frame built for one recipient (`MADE_FLUSH_BYTES`).
    fn made_frame(&mut self, len: usize) {
        self.made += len;
        self.turn_made += len;
        if self.made >= MADE_FLUSH_BYTES {
            self.flush_early();
        }
    }

    /// Writes what is queued and enforces the memory budget now, mid-turn: frames built
    /// for one recipient each are freed as the sockets take them, and what the sockets
    /// do not take counts against `max_outbound_total_bytes` before more are built.
    fn flush_early(&mut self) {
        self.published.made(std::mem::take(&mut self.made));
        let mut broken = Vec::new();
        self.conns.flush_dirty(&mut broken);
        for key in broken {
            self.abort(key);
        }
        self.enforce_budget();
    }

    /// Queues a frame; a connection that cannot take it is closed as a slow consumer.
    fn deliver(&mut self, key: u32, frame: Wire) -> bool {
        let sent = self.conns.send(key, frame);
        self.after_send(key, sent)
    }

    /// Answers a WebSocket Ping: its Pong takes the place of one still waiting unsent.
    fn answer_ping(&mut self, key: u32, payload: &[u8]) {
        let sent = self.conns.send_pong(key, frame::pong(payload));
        self.after_send(key, sent);
    }

    /// What a queued frame's outcome asks: a slow consumer is closed, a broken socket
    /// dropped; whether the frame was queued.
    fn after_send(&mut self, key: u32, sent: Sent) -> bool {
        match sent {
            Sent::Ok => true,
            Sent::Overflow => {
                self.close(key, Close::SLOW_CONSUMER);
                false
            }
            Sent::Broken => {
                self.abort(key);
                false
            }
        }
    }

    /// Queues a frame that is not a push (pong, error, subscribed, ping); overflow still
    /// means a slow consumer.
    fn send_frame(&mut self, key: u32, frame: Wire) {
        self.deliver(key, frame);
    }

    /// Counts a push written to `sessions` sockets of this shard. Only a push that reached
    /// a socket is timed: one that reached none (an offline user, a topic with no member
    /// here) took just the queue hop and would drag the latency percentiles toward zero.
    fn delivered(&mut self, sessions: u64, accepted_at: Instant) {
        if sessions > 0 {
            self.counters().delivered.fetch_add(sessions, Relaxed);
            self.written_at.push(accepted_at);
        }
    }

    /// Microseconds from the shard's start to `at` (0 for an earlier instant).
    /// Keeps user and topic history together under `history_memory_bytes`, dropping the
    /// oldest retained push of either first.
    fn trim_history(&mut self) {
        let cap = self.shared.config.history_memory_bytes;
        while self.users.history_bytes() + self.streams.history_bytes() > cap {
            let users_first = match (self.users.oldest(), self.streams.oldest()) {
                (Some(u), Some(t)) => u <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if users_first {
                self.users.evict_oldest();
            } else {
                self.streams.evict_oldest();
            }
        }
    }

    /// Queues the answer to a ticketed API command, sent to the API at the end of the turn.
    fn answer_api(&mut self, ticket: Option<Ticket>, sessions: u64, users: u64) {
        if let Some(ticket) = ticket {
            self.replies.push(Reply {
                ticket,
                sessions,
                users,
                details: Vec::new(),
                members: Vec::new(),
                published: None,
                cluster: None,
            });
        }
    }

    /// After the flush: latencies, answers to the API, gauges.
    fn finish_turn(&mut self) {
        if !self.written_at.is_empty() {
            let now = Instant::now();
            for at in self.written_at.drain(..) {
                let us = now.duration_since(at).as_micros() as u64;
                let _ = self.latency.record(us.clamp(1, metrics::LATENCY_MAX_US));
            }
        }
        if !self.acked_at.is_empty() {
            let now = history::stamp_of(Instant::now());
            for at in self.acked_at.drain(..) {
                // Stamps are milliseconds; the histogram counts microseconds.
                let us = u64::from(now.wrapping_sub(at)) * 1000;
                let _ = self
                    .ack_latency
                    .record(us.clamp(1, metrics::ACK_LATENCY_MAX_US));
            }
        }
        // Before the answers: a `?wait=1` push that is answered is in the gauges.
        self.published.made(std::mem::take(&mut self.made));
        self.enforce_budget();
        // Gauges: a few relaxed stores a turn keep /v1/stats exact without per-event work.
        let c = self.counters();
        c.users.store(self.users.len() as u64, Relaxed);
        c.topics.store(self.topics.len() as u64, Relaxed);
        c.history_bytes.store(
            self.users.history_bytes() + self.streams.history_bytes(),
            Relaxed,
        );
        c.history_evictions
            .store(self.users.evictions() + self.streams.evictions(), Relaxed);
        c.acked_sessions.store(self.acks.len() as u64, Relaxed);
        c.publishes_waiting.store(self.publishing as u64, Relaxed);
        let replied = !self.replies.is_empty();
        for r in self.replies.drain(..) {
            // The API outlives the shards; a failed send means it is gone already.
            let _ = self.shared.replies.tx.send(r);
        }
        // One wake for this turn's answers and client publishes together.
        if replied || std::mem::take(&mut self.wake_api) {
            let _ = self.shared.replies.waker.wake();
        }
        self.rates.sweep(self.tick);
        self.compact_tables();
        self.report_presence();
        self.keep_streams();
        if self.last_publish.elapsed() >= Duration::from_millis(100) {
            self.last_publish = Instant::now();
            if !self.latency.is_empty() {
                if let Ok(mut shared) = self.shared.metrics.shards[self.id].latency_us.lock() {
                    let _ = shared.add(&self.latency);
                }
                self.latency.reset();
            }
            if !self.ack_latency.is_empty() {
                let shared = &self.shared.metrics.shards[self.id].ack_latency_us;
                if let Ok(mut shared) = shared.lock() {
                    let _ = shared.add(&self.ack_latency);
                }
                self.ack_latency.reset();
            }
        }
    }

    /// End-of-turn invariant, checked in debug builds (tests): the connections gauge
    /// counts exactly the open slots.
    fn check_invariants(&self) {
        debug_assert_eq!(
            self.counters().connections.load(Relaxed),
            self.conns.open_count() as u64,
            "connections gauge differs from the open slots"
        );
        debug_assert!(
            self.wheel.len() <= self.conns.count(),
            "more timers than connections: a connection holds two"
        );
        #[cfg(debug_assertions)]
        self.conns.check_totals();
    }

    /// Arms the connection's one timer: the next heartbeat check, `token_expiring` hint
    /// or token expiry.
    fn arm(&mut self, key: u32) {
        let Some(c) = self.conns.get(key) else {
            return;
        };
        if c.closing() {
            // A send in `on_timer` closed it: the close armed the linger timer already.
            return;
        }
        // One timer per connection: a session parked in cluster mode was armed when parked
        // and is armed again at `welcome`; `insert` below moves the armed one.
        let mut deadline = if c.flags & PING_SENT != 0 {
            // Waiting for the pong: the 4002 deadline, and (when still ahead) one ping
            // interval after the ping went out, so that once the pong came the next ping
            // follows a ping interval of silence, not the idle deadline.
            let idle_at = c.last_rx.saturating_add(self.idle_ticks);
            let next_ping = c.last_rx.saturating_add(self.ping_ticks.saturating_mul(2));
            if next_ping > self.tick {
                idle_at.min(next_ping)
            } else {
                idle_at
            }
        } else {
            c.last_rx.saturating_add(self.ping_ticks)
        };
        deadline = deadline.min(c.expires);
        // A parked session's hint waits for its `welcome`, which arms this again.
        if c.expires != u32::MAX && c.flags & (EXPIRING_SENT | PARKED) == 0 {
            let lead = self.conns.hint_lead(key, self.hint_ticks);
            deadline = deadline.min(c.expires.saturating_sub(lead));
        }
        if c.flags & DRAIN_DUE != 0 {
            deadline = deadline.min(self.drain_turn(key).unwrap_or(self.tick));
        }
        let at = self.conns.tick_base() + u64::from(deadline);
        self.wheel.insert(&mut self.conns, key, at);
    }

    /// A timer fired: lazy re-arm after activity, ping, `token_expiring`, 4002, 4001, or
    /// the end of a close.
    fn on_timer(&mut self, key: u32) {
        let tick = self.tick;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.closing() {
            self.finalize(key);
            return;
        }
        if c.flags & DRAIN_DUE != 0 && self.drain_turns.get(&key).is_none_or(|&t| tick >= t) {
            self.close(key, Close::SHUTDOWN);
            return;
        }
        if tick >= c.expires {
            self.close(key, Close::TOKEN_EXPIRED);
            return;
        }
        let silent = tick.saturating_sub(c.last_rx);
        if silent >= self.idle_ticks {
            self.close(key, Close::HEARTBEAT_TIMEOUT);
            return;
        }
        if silent >= self.ping_ticks && c.flags & PING_SENT == 0 {
            c.flags |= PING_SENT;
            let ping = self.ping.clone();
            self.send_frame(key, ping);
            self.counters().pings.fetch_add(1, Relaxed);
        }
        self.hint_expiry(key);
        self.arm(key);
    }

    /// Begins the close handshake: counts the close by its cause (the one place closes
    /// are counted), leaves the indexes, queues the close frame (after dropping unstarted
    /// frames for a slow consumer), and gives the client `CLOSE_LINGER` to finish.
    fn close(&mut self, key: u32, close: Close<'_>) {
        match self.conns.get(key) {
            Some(c) if !c.closing() => {}
            _ => return,
        }
        self.count_close(close.cause);
        self.leave_indexes(key, close.code);
        self.conns.queue_close(
            key,
            frame::close_frame(close.code, close.reason),
            close.discards_queue(),
        );
        if close.discards_queue() && self.conns.footprint(key) > CLOSING_KEEP_MAX {
            // A slow consumer that still holds a started frame this large (or TLS records
            // sealed for it) would not read its close frame anyway: the socket goes now
            // instead of holding memory the budget cannot free through the linger.
            self.finalize(key);
            return;
        }
        let linger = match self.drain_deadline {
            Some(_) => self
                .shared
                .config
                .shutdown_grace
                .max(Duration::from_millis(reactor::TICK_MS)),
            None => CLOSE_LINGER,
        };
        self.rearm_at(key, self.tick.saturating_add(ticks::span_floor(linger)));
    }

    fn count_close(&self, cause: CloseCause) {
        let c = self.counters();
        let counter = match cause {
            CloseCause::Protocol => &c.protocol_closes,
            CloseCause::Heartbeat => &c.heartbeat_closes,
            CloseCause::SlowConsumer => &c.slow_consumer_closes,
            CloseCause::Budget => {
                c.budget_closes.fetch_add(1, Relaxed);
                &c.slow_consumer_closes
            }
            CloseCause::SessionEvicted => &c.session_evictions,
            CloseCause::ApiDisconnect => &c.api_disconnects,
            CloseCause::Shutdown | CloseCause::TokenExpired | CloseCause::Broker => return,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Answers a client's close (echoing its `code`) and waits for its FIN.
    fn close_echo(&mut self, key: u32, code: Option<u16>, frame: Wire) {
        match self.conns.get(key) {
            Some(c) if !c.closing() => {}
            _ => return,
        }
        self.leave_indexes(key, code.unwrap_or(frame::close::NO_STATUS));
        self.conns.queue_close(key, frame, false);
        self.rearm_at(
            key,
            self.tick.saturating_add(ticks::span_floor(CLOSE_LINGER)),
        );
    }

    /// TLS: the client sent close_notify. Ours answers it (RFC 8446 section 6.1), then
    /// the connection waits for the client's FIN as after a close. A connection already
    /// closing needs nothing: close_notify follows its close frame.
    fn answer_close_notify(&mut self, key: u32) {
        match self.conns.get(key) {
            Some(c) if !c.closing() => {}
            _ => return,
        }
        self.leave_indexes(key, frame::close::ABNORMAL);
        self.conns.queue_close_notify(key);
        self.rearm_at(
            key,
            self.tick.saturating_add(ticks::span_floor(CLOSE_LINGER)),
        );
    }

    /// Arms `key`'s one timer for `deadline`, a shard tick (the wheel counts absolute
    /// ones).
    fn rearm_at(&mut self, key: u32, deadline: u32) {
        if self.conns.get(key).is_some() {
            let at = self.conns.tick_base() + u64::from(deadline);
            self.wheel.insert(&mut self.conns, key, at);
        }
    }

    /// Takes session `key` of user `user` out of topic `t`'s members (its own list of
    /// topics is the caller's), noting the change for cluster presence.
    fn leave_topic(&mut self, t: u32, key: u32, user: u32) {
        let name = self
            .cluster
            .is_some()
            .then(|| self.topics.name(t).map(Box::<str>::from))
            .flatten();
        self.topics.leave(t, key);
        if let Some(name) = name {
            self.membership_changed(&name, user);
        }
    }

    /// Removes a connection from the user and topic indexes and the gauges, once per
    /// session: the session ends here, with close `code` (1006 when the socket vanished).
    fn leave_indexes(&mut self, key: u32, code: u16) {
        if !self.conns.begin_closing(key) {
            return;
        }
        self.lifecycle(key, "disconnect", crate::events::Detail::Code(code));
        let Some(user) = self.conns.get(key).map(|c| c.user) else {
            return;
        };
        for t in self.conns.take_topics(key) {
            self.leave_topic(t, key, user);
        }
        self.users.detach(user, key, self.tick);
        self.presence_changed(user);
        self.counters().connections.fetch_sub(1, Relaxed);
    }

    /// The socket is gone (reset, EOF mid-session, write error): forget it now.
    fn abort(&mut self, key: u32) {
        self.leave_indexes(key, frame::close::ABNORMAL);
        self.finalize(key);
    }

    /// Drops the socket and its slot.
    fn finalize(&mut self, key: u32) {
        if self.conns.get(key).is_none() {
            return;
        }
        // Out of the wheel before the slot goes: the wheel links through it.
        self.wheel.cancel(&mut self.conns, key);
        let topics = self.conns.take_topics(key);
        let Some((c, ip)) = self.conns.remove(key) else {
            return;
        };
        if c.flags & (conn::PARKED | conn::WAITING_TOPIC) != 0 {
            // Its slot may be reused before the stream it waited for loads.
            self.forget_waiting(key, c.user);
        }
        if !c.closing() {
            // Callers leave the indexes first; this keeps the gauge right if one did not.
            self.counters().connections.fetch_sub(1, Relaxed);
            for t in topics {
                self.leave_topic(t, key, c.user);
            }
            self.users.detach(c.user, key, self.tick);
            self.presence_changed(c.user);
        }
        self.grants.release(c.grant);
        self.acks.remove(&key);
        self.rates.forget(key);
        // Dropping `c` closes the socket, which takes it out of the poll: no
        // EPOLL_CTL_DEL per disconnect.
        drop(c);
        self.shared.admission.release(ip);
    }
}

/// Answers a connection that reached the shard after draining began.
fn refuse_handoff(h: Handoff, shared: &ShardShared, refusal: Refusal) {
    use std::io::Write;
    shared.metrics.handshake(refusal.outcome());
    let mut s = h.stream;
    let answer = refusal.response();
    let _ = match h.tls {
        None => s.write_all(&answer),
        Some(f) => s.write_all(&f.seal_last_words(&answer)),
    };
    let _ = s.shutdown(std::net::Shutdown::Write);
    shared.admission.release(h.ip);
}
