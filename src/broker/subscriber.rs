//! The subscriber thread: one pub/sub link carrying exactly the users and topics this
//! node's shards serve (and broadcasts), plus a command link that loads a stream's
//! `seq`, epoch and history once its channel is subscribed. Subscribing before loading
//! means no push can fall between the two: it is in the load, on the channel, or both
//! (the shard drops the second copy by `seq`).
//!
//! After a reconnect everything is subscribed again and every stream loaded again, so
//! shards deliver what their sessions missed while Redis was away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wire::Wire;
use crossbeam_channel::Receiver;
use redis::{Connection, Value};

use super::envelope;
use super::keys::StreamRef;
use super::pubsub::PubSubLink;
use super::rewind::Rewinds;
use super::script::now_ms;
use super::{
    connect, error_code, next_backoff, BrokerCtx, Interest, Remote, RewindOf, StreamState,
    RECONNECT_MIN,
};
use crate::link::{Links, SendError};
use crate::log_gate::LogGate;
use crate::route::shard_of;

/// How long one wait for a published message lasts before interests are looked at again.
const LISTEN: Duration = Duration::from_millis(5);
/// While messages keep arriving, shards are woken at most this often (a wake per read
/// would be a system call and a shard wakeup each).
const WAKE_EVERY: Duration = Duration::from_millis(1);
/// Messages taken per turn before interests get a look.
const MESSAGES_PER_TURN: usize = 1024;
/// Interest changes taken per turn.
const INTERESTS_PER_TURN: usize = 4096;
/// While Redis is away: how often what the shards asked for is answered.
const AWAY_STEP: Duration = Duration::from_millis(10);
/// Loads after which a quiet moment hands freed memory back (`memory::release_free_memory`).
const TRIM_AFTER_LOADS: usize = 1000;
/// How long loads must have stopped before that.
const TRIM_QUIET: Duration = Duration::from_secs(1);
/// Least time between two such trims.
const TRIM_INTERVAL: Duration = Duration::from_secs(10);
/// Streams loaded per pipelined round trip. Small enough that a connect storm's replies
/// and messages do not leave the subscriber's arena fragmented: 64 left about 4.5 B more
/// per idle connection on a node at 15,000 connections. At 16, a storm of 100,000 first
/// sessions is 6,250 round trips (about 0.6 s at 0.1 ms per round trip on loopback).
const LOADS_PER_TRIP: usize = 16;
/// Meta keys kept (PEXPIRE) per pipelined round trip.
const KEEPS_PER_TRIP: usize = 256;
/// A Redis refusing the keeps is logged at most this often.
const KEEP_REFUSED_LOG_EVERY: Duration = Duration::from_secs(60);
/// Channels per SUBSCRIBE command.
const CHANNELS_PER_COMMAND: usize = 1000;
/// A link that fails before it had subscribed and loaded is made again only after a
/// growing pause (as the publisher's and presence's); one that had, but fails sooner than
/// this, after the shortest pause (growing to `QUICK_LOSS_MAX` after `QUICK_LOSSES_FREE`
/// such losses in a row); one that lasted, at once.
const LINK_MIN_LIFE: Duration = Duration::from_secs(1);
/// Quick losses of settled links in a row that are made again after the shortest pause.
const QUICK_LOSSES_FREE: u32 = 3;
/// Links lost in a row before they subscribed and reloaded (not refused: cut) at which the
/// node is not ready: one such loss is a blip, a run of them means its sessions get
/// nothing.
const EARLY_LOSSES_UNREADY: u32 = 3;
/// Longest pause after quick losses of settled links: every reconnect reloads every
/// stream (Redis work), and every pause is pushes that history may not cover.
const QUICK_LOSS_MAX: Duration = Duration::from_millis(500);

/// The subscriber thread's state.
pub(crate) struct Subscriber {
    ctx: BrokerCtx,
    shards: Links<Remote>,
    interests: Receiver<Interest>,
    /// Set while a shard's queue is full, so the stream ingress stops reading.
    busy: Arc<AtomicBool>,
    /// Topics this node serves, with the shards that have members. Users are not kept
    /// here: the shards know theirs, so a served user costs the broker nothing.
    topics: HashMap<Arc<str>, Vec<usize>>,
    /// Channels subscribed now (a gauge; Redis keeps the set).
    channels: u64,
    /// Users watched now, as the shards counted them (a gauge).
    users: u64,
    /// Streams loaded since memory was last handed back.
    loaded_since_trim: usize,
    last_load: Instant,
    last_trim: Option<Instant>,
    backoff: Duration,
    /// The link in use has subscribed and loaded everything (its first commands went
    /// through).
    settled: bool,
    /// Redis refuses the first commands of every link (this spell's cause, logged once).
    refusing: Option<String>,
    /// A loss or refusal was logged: the next settled link says it is back.
    lost: bool,
    /// Settled links lost within `LINK_MIN_LIFE` in a row.
    quick_losses: u32,
    /// Redis refuses the keeps (a write) while it answers reads.
    keep_refused: LogGate,
    /// Links lost in a row before they settled (cut, not refused).
    early_losses: u32,
    /// Streams the shards found gone back in Redis, to give a new epoch as they load.
    rewinds: Rewinds,
}

/// A subscription change, applied in the order the shards asked.
enum Op {
    Subscribe(String),
    Unsubscribe(String),
}

/// Streams to load after this turn's subscriptions.
enum Load {
    User(Box<str>),
    Topic(Arc<str>, Vec<usize>),
}

impl Load {
    /// The stream it loads.
    fn stream(&self) -> StreamRef<'_> {
        match self {
            Load::User(u) => StreamRef::User(u),
            Load::Topic(t, _) => StreamRef::Topic(t),
        }
    }
}

impl Subscriber {
    /// A subscriber delivering to `shards`, told what to serve through `interests`.
    pub(crate) fn new(
        ctx: BrokerCtx,
        shards: Links<Remote>,
        interests: Receiver<Interest>,
        busy: Arc<AtomicBool>,
    ) -> Subscriber {
        Subscriber {
            ctx,
            shards,
            interests,
            busy,
            topics: HashMap::new(),
            channels: 0,
            users: 0,
            loaded_since_trim: 0,
            last_load: Instant::now(),
            last_trim: None,
            backoff: RECONNECT_MIN,
            settled: false,
            refusing: None,
            lost: false,
            quick_losses: 0,
            early_losses: 0,
            keep_refused: LogGate::new(KEEP_REFUSED_LOG_EVERY),
            rewinds: Rewinds::new(),
        }
    }

    /// Runs until the server stops.
    pub(crate) fn run(mut self) {
        // Why the next connect waits first: the last link failed before it subscribed and
        // loaded (Redis refused its first commands), or soon after it was made.
        let mut pause_for: Option<String> = None;
        while !self.ctx.stop.load(Relaxed) {
            if let Some(why) = pause_for.take() {
                // Spent answering the shards: sessions waiting for a stream get their
                // 1013 now, and interests do not pile up.
                self.wait_away(self.backoff, &why);
                self.backoff = next_backoff(self.backoff);
                continue;
            }
            let dial = self.ctx.redis.dial();
            let links = PubSubLink::open(&dial.client, dial.link_tls.as_ref())
                .and_then(|a| Ok((a, connect(&dial.client)?)));
            match links {
                Ok((mut link, mut cmd)) => {
                    let linked_at = Instant::now();
                    self.settled = false;
                    let r = self.serve(&mut link, &mut cmd);
                    self.ctx.metrics.broker.subscriber_up.store(false, Relaxed);
                    // The users served do not change with the link: the count stays (the
                    // shards name them again, not as new, after the reconnect).
                    self.channels = 0;
                    let Err(e) = r else { continue };
                    self.ctx.metrics.broker.errors.fetch_add(1, Relaxed);
                    let tls = self.ctx.redis.is_tls();
                    let why = format!("Redis is unavailable: {}", super::describe(&e, tls));
                    if !self.settled && redis_answered(&e) {
                        self.refused(&e);
                        pause_for = Some(why);
                    } else {
                        let e = super::describe(&e, self.ctx.redis.is_tls());
                        self.lost = true;
                        let quick = self.settled && linked_at.elapsed() < LINK_MIN_LIFE;
                        if quick {
                            self.quick_losses = self.quick_losses.saturating_add(1);
                        } else if self.settled {
                            // A link that lasted ends a spell of quick losses (a loss
                            // before settling does not: Redis is cutting still).
                            self.quick_losses = 0;
                        }
                        if self.quick_losses <= QUICK_LOSSES_FREE {
                            tracing::warn!(error = %e, "subscriber lost Redis; reconnecting");
                        } else if self.quick_losses == QUICK_LOSSES_FREE + 1 {
                            tracing::warn!(
                                error = %e,
                                "Redis cuts the subscriber's link again and again soon after it \
                                 subscribed and reloaded (client-output-buffer-limit pubsub?); \
                                 pausing up to 0.5 s between links until one lasts"
                            );
                        } else {
                            tracing::debug!(error = %e, "subscriber lost Redis again");
                        }
                        if !self.settled {
                            // Lost during its first commands: its streams are not served.
                            // A run of such losses makes the node unready until a link
                            // settles; their pauses start at the shortest.
                            self.early_losses = self.early_losses.saturating_add(1);
                            if self.early_losses == 1 {
                                self.backoff = RECONNECT_MIN;
                            }
                            if self.early_losses >= EARLY_LOSSES_UNREADY {
                                self.ctx.blocks.subscriber_cut.store(true, Relaxed);
                            }
                            pause_for = Some(why);
                        } else if quick {
                            // Redis took this link's first commands: a quick loss (a cut for
                            // the output buffer, a proxy, CLIENT KILL) waits the shortest
                            // pause, then one growing to 0.5 s if Redis keeps cutting: every
                            // pause is pushes that history may not cover (a session that
                            // cannot resume is closed), every link a reload of every stream.
                            let over = self.quick_losses.saturating_sub(QUICK_LOSSES_FREE);
                            self.backoff = (RECONNECT_MIN * 2u32.saturating_pow(over.min(8)))
                                .min(QUICK_LOSS_MAX);
                            pause_for = Some(why);
                        }
                    }
                }
                Err(e) => {
                    let e = super::describe(&e, self.ctx.redis.is_tls());
                    tracing::debug!(error = %e, "subscriber cannot reach Redis");
                    self.lost = true;
                    self.wait_away(self.backoff, &format!("Redis is unavailable: {e}"));
                    self.backoff = next_backoff(self.backoff);
                }
            }
        }
    }

    /// Redis answered the link's first commands (`SUBSCRIBE`, the reload) with an error:
    /// the node is not ready until a link gets through, and the cause is logged once per
    /// spell, with what fixes it.
    fn refused(&mut self, e: &redis::RedisError) {
        self.ctx.blocks.subscriber.store(true, Relaxed);
        self.lost = true;
        let code = error_code(e).unwrap_or_default();
        if self.refusing.as_deref() == Some(&*code) {
            tracing::debug!(error = %e, "Redis still refuses the subscriber");
            return;
        }
        let hint = match &*code {
            "NOPERM" => {
                "the Redis ACL user may not use throng's channels: give it channel rights, \
                 `&throng:*` (or `allchannels`); Redis 7 makes new users with `resetchannels`"
            }
            "NOAUTH" | "WRONGPASS" => {
                "Redis wants a password: put it in the Redis URL (redis://user:password@host)"
            }
            "OOM" => "Redis is out of memory (maxmemory): streams cannot be loaded",
            _ => "Redis answered with an error",
        };
        tracing::warn!(
            error = %e,
            "Redis refuses the subscriber's commands; not ready, trying again with a growing pause: {hint}"
        );
        self.refusing = Some(code);
    }

    /// One connected life: resubscribe and reload everything, then serve until an error.
    fn serve(&mut self, link: &mut PubSubLink, cmd: &mut Connection) -> redis::RedisResult<()> {
        let mut ops = vec![Op::Subscribe(self.ctx.channels.broadcast().to_string())];
        ops.extend(
            self.topics
                .keys()
                .map(|t| Op::Subscribe(self.ctx.channels.stream(StreamRef::Topic(t)))),
        );
        self.apply(link, ops)?;
        let reload: Vec<Load> = self
            .topics
            .iter()
            .map(|(t, s)| Load::Topic(Arc::clone(t), s.clone()))
            .collect();
        self.load(cmd, reload)?;
        // The shards name their users again (each a subscribe and a load, as for a first
        // session), so nothing they served is left unsubscribed or stale.
        for shard in 0..self.shards.len() {
            self.send(shard, Remote::Resync);
        }
        self.shards.wake_pending();
        self.settled = true;
        // Redis takes this link: a later loss starts its pauses over.
        self.backoff = RECONNECT_MIN;
        self.ctx.metrics.broker.subscriber_up.store(true, Relaxed);
        self.ctx.blocks.subscriber.store(false, Relaxed);
        self.ctx.blocks.subscriber_cut.store(false, Relaxed);
        self.early_losses = 0;
        self.refusing = None;
        if std::mem::take(&mut self.lost) {
            if self.quick_losses <= QUICK_LOSSES_FREE {
                tracing::info!("subscriber is back: subscribed and reloaded on Redis");
            } else {
                tracing::debug!("subscriber is back: subscribed and reloaded on Redis");
            }
        }
        let linked_at = Instant::now();
        let mut last_ping = Instant::now();
        while !self.ctx.stop.load(Relaxed) {
            if self.quick_losses > QUICK_LOSSES_FREE && linked_at.elapsed() >= LINK_MIN_LIFE {
                tracing::info!(
                    cuts = self.quick_losses,
                    "the subscriber's link holds again after a spell of quick cuts"
                );
                self.quick_losses = 0;
            }
            let (ops, loads, keeps) = self.take_interests();
            if let Err(e) = self.apply(link, ops) {
                // Sessions waiting for these streams learn now, not when Redis is back.
                self.fail(loads, &format!("Redis is unavailable: {e}"));
                return Err(e);
            }
            // Loads before keeps: a keep that loses the link must not strand this turn's
            // loads (their sessions learn from `load`'s own failure path).
            let loaded = !loads.is_empty();
            if loaded {
                self.loaded_since_trim += loads.len();
                self.last_load = Instant::now();
                self.load(cmd, loads)?;
            }
            if !keeps.is_empty() {
                self.keep(cmd, &keeps)?;
            }
            if !loaded
                && self.loaded_since_trim >= TRIM_AFTER_LOADS
                && self.last_load.elapsed() >= TRIM_QUIET
                && self.last_trim.is_none_or(|t| t.elapsed() >= TRIM_INTERVAL)
            {
                // A storm of first sessions is over (and the presence writes it caused):
                // the buffers it used go back to the OS instead of staying resident in
                // the broker threads' arenas.
                self.loaded_since_trim = 0;
                self.last_trim = Some(Instant::now());
                crate::memory::release_free_memory();
            }
            let mut got = 0;
            let mut last_wake = Instant::now();
            loop {
                while got < MESSAGES_PER_TURN {
                    let Some(msg) = link.buffered()? else { break };
                    got += 1;
                    self.route(&msg);
                }
                if got >= MESSAGES_PER_TURN {
                    break;
                }
                if link.read_now()? {
                    // More has arrived: a steady flow, whose shards hear of it every
                    // WAKE_EVERY.
                    if last_wake.elapsed() >= WAKE_EVERY {
                        self.shards.wake_pending();
                        last_wake = Instant::now();
                    }
                    continue;
                }
                // Everything that arrived is routed: the shards hear of it before the
                // wait, so a burst's last push does not wait for the next message.
                self.shards.wake_pending();
                last_wake = Instant::now();
                // Waiting interests are taken now rather than after the wait (messages
                // keep their turn: this is reached only once none are waiting).
                if !self.interests.is_empty() || !link.read(LISTEN)? {
                    break;
                }
            }
            self.shards.wake_pending();
            if got == 0 && last_ping.elapsed() > Duration::from_secs(1) {
                // A silent link may be a dead one: a round trip tells.
                last_ping = Instant::now();
                link.ping()?;
            }
        }
        Ok(())
    }

    /// Sends subscription changes in order, consecutive ones of a kind in one command
    /// (Redis applies them in order, so a user who left and came back ends subscribed).
    fn apply(&mut self, link: &mut PubSubLink, ops: Vec<Op>) -> redis::RedisResult<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut run: Vec<String> = Vec::new();
        let mut subscribing = true;
        for op in ops {
            let (sub, channel) = match op {
                Op::Subscribe(c) => (true, c),
                Op::Unsubscribe(c) => (false, c),
            };
            if sub != subscribing || run.len() >= CHANNELS_PER_COMMAND {
                self.flush_run(link, subscribing, &mut run)?;
                subscribing = sub;
            }
            run.push(channel);
        }
        self.flush_run(link, subscribing, &mut run)?;
        self.ctx
            .metrics
            .broker
            .channels
            .store(self.channels, Relaxed);
        Ok(())
    }

    fn flush_run(
        &mut self,
        link: &mut PubSubLink,
        subscribing: bool,
        run: &mut Vec<String>,
    ) -> redis::RedisResult<()> {
        if run.is_empty() {
            return Ok(());
        }
        if subscribing {
            link.subscribe(&run[..])?;
            self.channels += run.len() as u64;
        } else {
            link.unsubscribe(&run[..])?;
            self.channels = self.channels.saturating_sub(run.len() as u64);
        }
        run.clear();
        Ok(())
    }

    /// Takes waiting interest changes: the subscription changes in order, the streams
    /// to load once they are applied, and the meta keys of served streams to keep.
    fn take_interests(&mut self) -> (Vec<Op>, Vec<Load>, Vec<String>) {
        let mut ops = Vec::new();
        let mut loads = Vec::new();
        let mut keeps = Vec::new();
        for i in self.interests.try_iter().take(INTERESTS_PER_TURN) {
            match i {
                Interest::Keep(slice) => {
                    let users = slice.users.iter().map(|u| StreamRef::User(u).meta_key());
                    let topics = slice.topics.iter().map(|t| StreamRef::Topic(t).meta_key());
                    keeps.extend(users.chain(topics));
                }
                Interest::WatchUser { user: u, fresh } => {
                    ops.push(Op::Subscribe(self.ctx.channels.stream(StreamRef::User(&u))));
                    self.users += u64::from(fresh);
                    loads.push(Load::User(u));
                }
                // Subscribed already: a SUBSCRIBE again would count the channel twice.
                Interest::ReloadUser(u) => loads.push(Load::User(u)),
                Interest::UnwatchUser(u) => {
                    ops.push(Op::Unsubscribe(
                        self.ctx.channels.stream(StreamRef::User(&u)),
                    ));
                    self.users = self.users.saturating_sub(1);
                }
                Interest::WatchTopic { shard, topic } => {
                    let shards = self.topics.entry(Arc::clone(&topic)).or_default();
                    if shards.is_empty() {
                        ops.push(Op::Subscribe(
                            self.ctx.channels.stream(StreamRef::Topic(&topic)),
                        ));
                    }
                    if !shards.contains(&shard) {
                        shards.push(shard);
                    }
                    loads.push(Load::Topic(topic, vec![shard]));
                }
                Interest::Rewound(r) => {
                    let epoch = r.epoch;
                    match r.stream {
                        RewindOf::User(u) => {
                            self.rewinds.ask(StreamRef::User(&u), epoch, r.seq);
                            loads.push(Load::User(u));
                        }
                        RewindOf::Topic { shard, topic } => {
                            self.rewinds.ask(StreamRef::Topic(&topic), epoch, r.seq);
                            loads.push(Load::Topic(topic, vec![shard]));
                        }
                    }
                }
                Interest::UnwatchTopic { shard, topic } => {
                    if let Some(shards) = self.topics.get_mut(&topic) {
                        shards.retain(|&s| s != shard);
                        if shards.is_empty() {
                            self.topics.remove(&topic);
                            ops.push(Op::Unsubscribe(
                                self.ctx.channels.stream(StreamRef::Topic(&topic)),
                            ));
                        }
                    }
                }
            }
        }
        let broker = &self.ctx.metrics.broker;
        broker
            .streams
            .store(self.users + self.topics.len() as u64, Relaxed);
        broker
            .interests_waiting
            .store(self.interests.len() as u64, Relaxed);
        (ops, loads, keeps)
    }

    /// Keeps the meta hashes (`seq`, epoch) of streams a shard serves for the meta TTL
    /// from now: a push does so, but a stream served and quiet for that long would lose
    /// them, and its next push would start a new epoch under its sessions (1012). `GT`:
    /// never shortened (a node may keep them longer); a key that is gone stays gone.
    ///
    /// A refusal (`MISCONF`, `NOREPLICAS`, `READONLY`: Redis answers reads but not writes)
    /// is logged and skipped, not taken as a lost link: reconnecting would reload every
    /// served stream each second and keep nothing more. Only a lost link is returned.
    fn keep(&mut self, cmd: &mut Connection, keys: &[String]) -> redis::RedisResult<()> {
        let meta_ms = self.meta_ms();
        for chunk in keys.chunks(KEEPS_PER_TRIP) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("PEXPIRE").arg(k).arg(meta_ms).arg("GT").ignore();
            }
            match pipe.query::<()>(&mut super::Prompt(cmd)) {
                Ok(()) => {
                    if self.keep_refused.recover() {
                        tracing::info!("Redis keeps the served streams' seq and epoch again");
                    }
                }
                Err(e) if redis_answered(&e) => {
                    self.ctx.metrics.broker.errors.fetch_add(1, Relaxed);
                    if let Some(held) = self.keep_refused.fail(Instant::now()) {
                        tracing::warn!(
                            refusals_held_back = held,
                            "Redis refuses to keep the served streams' seq and epoch \
                             (PEXPIRE): {}; they expire after the meta TTL if this lasts",
                            error_code(&e).unwrap_or_default()
                        );
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits `d` before the next reconnect. Meanwhile, every `AWAY_STEP`, it takes all that
    /// the shards asked for, not one turn's worth, and tells the shards waiting for a
    /// stream that it cannot be loaded now: their clients learn at once (1013), not after
    /// the backoff, and sessions that come and go while Redis is away (two interests each)
    /// cannot pile up in the channel. The subscriptions taken are not lost: after the
    /// reconnect the shards name everything they serve again (`Remote::Resync`).
    fn wait_away(&mut self, d: Duration, why: &str) {
        let end = Instant::now() + d;
        loop {
            loop {
                let (_, loads, _) = self.take_interests();
                if !loads.is_empty() {
                    self.fail(loads, why);
                }
                if self.interests.is_empty() {
                    break;
                }
            }
            let now = Instant::now();
            if now >= end || self.ctx.stop.load(Relaxed) {
                return;
            }
            std::thread::sleep(AWAY_STEP.min(end - now));
        }
    }

    /// Reads each stream's state in one pipelined round trip and hands it to its shards.
    fn load(&mut self, cmd: &mut Connection, loads: Vec<Load>) -> redis::RedisResult<()> {
        for (n, chunk) in loads.chunks(LOADS_PER_TRIP).enumerate() {
            let done = n * LOADS_PER_TRIP;
            let mut pipe = redis::pipe();
            let now = now_ms();
            let mut rewound = [false; LOADS_PER_TRIP];
            for (l, rewound) in chunk.iter().zip(&mut rewound) {
                let s = l.stream();
                // A stream a shard found gone back gets its new epoch first.
                *rewound = self.rewinds.pipe(&mut pipe, s);
                if let Load::User(_) = l {
                    // A user's stream never pushed to gets its epoch now: `welcome` shows
                    // it and the user's pushes do not name it, so a client that connects
                    // before the first push resumes across it. A topic's is left alone
                    // (a subscribe writes nothing to Redis: a client allowed `room.*`
                    // cannot leave a key per name it tries): it shows the placeholder
                    // epoch until its first push, which names the epoch it starts.
                    pipe.cmd("HSETNX")
                        .arg(s.meta_key())
                        .arg("epoch")
                        .arg(format!("{:016x}", rand::random::<u64>()))
                        .ignore()
                        .cmd("PEXPIRE")
                        .arg(s.meta_key())
                        .arg(self.meta_ms())
                        .arg("NX")
                        .ignore();
                }
                pipe.cmd("HMGET")
                    .arg(s.meta_key())
                    .arg("seq")
                    .arg("epoch")
                    .cmd("LRANGE")
                    .arg(s.history_key())
                    .arg(0)
                    .arg(-1);
            }
            // Sent whole, read one stream at a time: each history becomes its state and
            // goes to its shard (waiting while the shards' queues hold their bytes)
            // before the next is read, so a trip holds one stream's history here, not
            // sixteen (review s18b: 16 first sessions of users with 20 MiB of history
            // each took a node to 345 MiB). The rest waits in the socket and in Redis.
            let sent = cmd.send_packed_command(&pipe.get_packed_pipeline());
            for (i, l) in chunk.iter().enumerate() {
                // The new epoch's script when asked, HSETNX and PEXPIRE for a user,
                // then HMGET and LRANGE.
                let asked = usize::from(rewound[i]);
                let writes = if let Load::User(_) = l { 2 } else { 0 };
                let replies = match &sent {
                    Ok(()) => (0..asked + writes + 2).map(|_| next_reply(cmd)).collect(),
                    Err(e) => Err(e.clone()),
                };
                let (meta, hist) = match replies {
                    Ok::<Vec<Value>, redis::RedisError>(mut r) => {
                        if asked == 1 && self.rewinds.answered(l.stream(), &r[0]) {
                            self.ctx.metrics.broker.rewound.fetch_add(1, Relaxed);
                        }
                        let hist = r.pop();
                        (r.pop(), hist)
                    }
                    Err(e) => {
                        // This stream and every one after it: nobody may wait for them.
                        self.fail(
                            chunk_owned(&loads[done + i..]),
                            &format!("Redis is unavailable: {e}"),
                        );
                        return Err(e);
                    }
                };
                let retention = match l {
                    Load::User(_) => self.ctx.retention.user_ms,
                    Load::Topic(..) => self.ctx.retention.topic_ms,
                };
                let topic = match l {
                    Load::User(_) => None,
                    Load::Topic(t, _) => Some(&**t),
                };
                let state = read_state(meta, hist, topic, now.saturating_sub(retention));
                self.ctx.metrics.broker.loads.fetch_add(1, Relaxed);
                self.deliver_state(l, state);
            }
        }
        self.shards.wake_pending();
        Ok(())
    }

    fn meta_ms(&self) -> u64 {
        let r = &self.ctx.retention;
        r.user_ms.max(r.topic_ms).max(86_400_000)
    }

    fn deliver_state(&mut self, l: &Load, state: Result<StreamState, String>) {
        match l {
            Load::User(u) => {
                let shard = shard_of(u, self.shards.len());
                self.send(
                    shard,
                    Remote::UserLoaded {
                        user: u.clone(),
                        state,
                    },
                );
            }
            Load::Topic(t, shards) => {
                for &shard in shards {
                    self.send(
                        shard,
                        Remote::TopicLoaded {
                            topic: Arc::clone(t),
                            state: state.clone(),
                        },
                    );
                }
            }
        }
    }

    /// Tells the shards waiting for these streams that they cannot be loaded now.
    fn fail(&mut self, loads: Vec<Load>, why: &str) {
        for l in &loads {
            self.rewinds.drop_ask(l.stream());
            self.deliver_state(l, Err(why.to_string()));
        }
        self.shards.wake_pending();
    }

    /// Hands one published message to the shards that serve its stream.
    fn route(&mut self, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        let Ok(payload) = std::str::from_utf8(msg.get_payload_bytes()) else {
            return;
        };
        let entry = match envelope::parse(payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(channel, error = %e, "ignored a foreign message");
                return;
            }
        };
        self.ctx.metrics.broker.received.fetch_add(1, Relaxed);
        let accepted_at = entry.accepted_at();
        if channel == self.ctx.channels.broadcast() {
            let frame = entry.frame(None);
            let compressed = Arc::new(crate::deflate::Compressed::default());
            for shard in 0..self.shards.len() {
                self.send(
                    shard,
                    Remote::Broadcast {
                        frame: frame.clone(),
                        compressed: Arc::clone(&compressed),
                        accepted_at,
                    },
                );
            }
            return;
        }
        match self.ctx.channels.stream_of(channel) {
            Some(StreamRef::User(u)) => {
                // A message for a user the shard has let go of is ignored there.
                let shard = shard_of(u, self.shards.len());
                let m = Remote::UserPush {
                    user: u.into(),
                    seq: entry.seq,
                    epoch: super::user_epoch(entry.epoch),
                    frame: entry.frame(None),
                    accepted_at,
                };
                self.send(shard, m);
            }
            Some(StreamRef::Topic(t)) => {
                // The map's own name, not a new one per message.
                let Some((name, list)) = self.topics.get_key_value(t) else {
                    return;
                };
                let topic = Arc::clone(name);
                // Copied out (sending needs `self`); inline for up to 16 shards.
                let shards: smallvec::SmallVec<[usize; 16]> = list.iter().copied().collect();
                // Encoded once for the node, shared by its shards.
                let frame = entry.frame(Some(t));
                let epoch: Arc<str> = entry.epoch.into();
                let compressed = Arc::new(crate::deflate::Compressed::default());
                for &shard in &shards {
                    self.send(
                        shard,
                        Remote::TopicPush {
                            topic: Arc::clone(&topic),
                            seq: entry.seq,
                            epoch: Arc::clone(&epoch),
                            frame: frame.clone(),
                            compressed: Arc::clone(&compressed),
                            accepted_at,
                        },
                    );
                }
            }
            None => {}
        }
    }

    /// Sends to a shard, waiting while its queue is full: a published push cannot be
    /// asked for again, so it waits here (and Redis buffers the channel) rather than drop.
    /// Also waits while the shards' queues hold `queue_bytes_limit` bytes (a shard takes
    /// its queue's bytes off the gauge as it takes the messages).
    fn send(&mut self, shard: usize, mut msg: Remote) {
        let weight = msg.weight();
        let queued = &self.ctx.metrics.broker.queued_bytes;
        while !crate::command::reserve_backlog(queued, weight, self.ctx.queue_bytes_limit) {
            self.busy.store(true, Relaxed);
            self.shards.wake_pending();
            if self.ctx.stop.load(Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        loop {
            match self.shards.send(shard, msg) {
                Ok(()) => {
                    self.busy.store(false, Relaxed);
                    return;
                }
                Err((SendError::Stopped, _)) => {
                    queued.fetch_sub(weight, Relaxed);
                    return;
                }
                Err((SendError::Full, back)) => {
                    msg = back;
                    self.busy.store(true, Relaxed);
                    self.shards.wake_pending();
                    if self.ctx.stop.load(Relaxed) {
                        queued.fetch_sub(weight, Relaxed);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

/// Whether Redis itself answered with the error (alone or within a pipeline), rather than
/// the link failing.
fn redis_answered(e: &redis::RedisError) -> bool {
    !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped()) && error_code(e).is_some()
}

/// The next reply on a command link whose pipeline is read a reply at a time (out-of-band
/// RESP3 data skipped, refusals kept as values, as `Prompt` does).
fn next_reply(conn: &mut Connection) -> redis::RedisResult<Value> {
    loop {
        match conn.recv_response()? {
            Value::Push { .. } => continue,
            v => return Ok(v),
        }
    }
}

fn chunk_owned(chunk: &[Load]) -> Vec<Load> {
    chunk
        .iter()
        .map(|l| match l {
            Load::User(u) => Load::User(u.clone()),
            Load::Topic(t, s) => Load::Topic(Arc::clone(t), s.clone()),
        })
        .collect()
}

/// A stream's state from `HMGET seq epoch` and `LRANGE 0 -1`; entries older than
/// `cutoff_ms` or from another epoch are left out.
fn read_state(
    meta: Option<Value>,
    hist: Option<Value>,
    topic: Option<&str>,
    cutoff_ms: u64,
) -> Result<StreamState, String> {
    let (seq, epoch): (Option<u64>, Option<String>) = meta
        .map(redis::from_redis_value)
        .transpose()
        .map_err(|e| format!("unexpected stream state in Redis: {e}"))?
        .unwrap_or((None, None));
    let (seq, epoch) = match (seq, epoch, topic) {
        (_, Some(e), _) => (seq.unwrap_or(0), e),
        // A topic never pushed to (or forgotten): no key until its first push.
        (None, None, Some(_)) => (0, crate::api::sequencer::NO_EPOCH.to_string()),
        _ => return Err("stream without an epoch in Redis".to_string()),
    };
    let raw: Vec<Vec<u8>> = hist
        .map(redis::from_redis_value)
        .transpose()
        .map_err(|e| format!("unexpected history in Redis: {e}"))?
        .unwrap_or_default();
    let mut entries: Vec<(u64, Wire)> = Vec::with_capacity(raw.len());
    for r in &raw {
        let Ok(text) = std::str::from_utf8(r) else {
            continue;
        };
        let Ok(e) = envelope::parse(text) else {
            continue;
        };
        if e.epoch != epoch || e.ts_ms < cutoff_ms || e.seq > seq {
            continue;
        }
        // Contiguous runs only: a hole means what is before it cannot be replayed.
        if entries.last().is_some_and(|&(s, _)| s + 1 != e.seq) {
            entries.clear();
        }
        entries.push((e.seq, e.frame(topic)));
    }
    // History that does not reach the current seq cannot serve a resume either.
    if entries.last().is_some_and(|&(s, _)| s != seq) {
        entries.clear();
    }
    Ok(StreamState {
        seq,
        epoch,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterConfig;
    use crate::metrics::Metrics;
    use mio::{Poll, Token, Waker};

    /// A subscriber for `shards` shards whose Redis is never reached, with the shards'
    /// ends of its links (and the polls their wakers are registered with).
    fn away_subscriber(
        shards: usize,
    ) -> (
        Subscriber,
        crossbeam_channel::Sender<Interest>,
        Vec<Receiver<Remote>>,
        Vec<Poll>,
    ) {
        let cluster = ClusterConfig {
            redis_url: "redis://127.0.0.1:1".into(),
            node_id: None,
            offline_ttl: Duration::from_secs(60),
            claim_idle: Duration::from_secs(30),
            max_stream_changes_waiting: 1 << 18,
            stream_trim: None,
            redis_ca: None,
            redis_identity: None,
        };
        let ctx = BrokerCtx {
            redis: Arc::new(crate::broker::RedisConnector::new(&cluster).expect("a valid URL")),
            node_id: "n1".into(),
            cluster,
            retention: super::super::script::Retention {
                history_size: 10,
                user_ms: 60_000,
                topic_ms: 60_000,
                dedup_ms: 0,
            },
            metrics: Arc::new(Metrics::new(shards)),
            stop: Arc::new(AtomicBool::new(false)),
            grace: Duration::from_secs(5),
            blocks: Arc::default(),
            channels: crate::broker::keys::Channels::for_db(0),
            queue_bytes_limit: 1 << 20,
        };
        let (mut parts, mut rxs, mut polls) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..shards {
            let poll = Poll::new().expect("poll");
            let waker = Arc::new(Waker::new(poll.registry(), Token(0)).expect("waker"));
            let (tx, rx) = crate::link::queue(1 << 16);
            parts.push((tx, waker));
            rxs.push(rx);
            polls.push(poll);
        }
        let (tx, interests) = crossbeam_channel::unbounded();
        let sub = Subscriber::new(
            ctx,
            Links::from_parts(parts),
            interests,
            Arc::new(AtomicBool::new(false)),
        );
        (sub, tx, rxs, polls)
    }

    #[test]
    fn while_redis_is_away_everything_the_shards_asked_for_is_answered_at_once() {
        let (mut sub, tx, rxs, _polls) = away_subscriber(2);
        // More than one turn takes, and a drop for every watch: sessions that came and
        // went while Redis was away.
        let n = 3 * INTERESTS_PER_TURN;
        for i in 0..n {
            let user: Box<str> = format!("u{i}").into();
            tx.send(Interest::WatchUser {
                user: user.clone(),
                fresh: true,
            })
            .expect("send");
            tx.send(Interest::UnwatchUser(user)).expect("send");
        }
        // One turn's worth first: the gauge shows what it left.
        let (_, loads, _) = sub.take_interests();
        sub.fail(loads, "Redis is unavailable: test");
        let waiting = &sub.ctx.metrics.broker.interests_waiting;
        assert_eq!(waiting.load(Relaxed), (2 * n - INTERESTS_PER_TURN) as u64);
        sub.wait_away(Duration::ZERO, "Redis is unavailable: test");
        assert!(sub.interests.is_empty(), "{} left", sub.interests.len());
        let failed: usize = rxs
            .iter()
            .map(|rx| {
                rx.try_iter()
                    .filter(|m| matches!(m, Remote::UserLoaded { state: Err(_), .. }))
                    .count()
            })
            .sum();
        assert_eq!(
            failed, n,
            "every waiting session is told its stream cannot load"
        );
        let broker = &sub.ctx.metrics.broker;
        assert_eq!(broker.interests_waiting.load(Relaxed), 0);
        assert_eq!(broker.streams.load(Relaxed), 0, "watched, then dropped");
    }

    #[test]
    fn pushes_wait_while_the_shard_queues_hold_their_bytes_limit() {
        let (sub, _tx, rxs, _polls) = away_subscriber(1);
        let limit = sub.ctx.queue_bytes_limit;
        let queued = Arc::clone(&sub.ctx.metrics);
        let busy = Arc::clone(&sub.busy);
        // The queue holds its limit already (a shard that has not taken it yet).
        queued.broker.queued_bytes.store(limit, Relaxed);
        let push = |seq: u64| Remote::UserPush {
            user: "ann".into(),
            seq,
            epoch: 1,
            frame: Wire::from(vec![b'x'; 1000]),
            accepted_at: Instant::now(),
        };
        let weight = push(1).weight();
        assert_eq!(weight, 3 + 1000);
        let sender = std::thread::spawn(move || {
            let mut sub = sub;
            sub.send(0, push(1));
            sub
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !busy.load(Relaxed) {
            assert!(Instant::now() < deadline, "the send never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(rxs[0].is_empty(), "sent past the bytes limit");
        // The shard takes what it held: the push goes, its bytes counted.
        queued.broker.queued_bytes.fetch_sub(limit, Relaxed);
        let mut sub = sender.join().expect("sender");
        assert!(matches!(
            rxs[0].try_recv(),
            Ok(Remote::UserPush { seq: 1, .. })
        ));
        assert_eq!(queued.broker.queued_bytes.load(Relaxed), weight);
        assert!(!busy.load(Relaxed));
        // With room, a push goes at once; one larger than the whole limit goes when none
        // waits, so it is slow, never stuck.
        queued.broker.queued_bytes.store(0, Relaxed);
        let big = Remote::Broadcast {
            frame: Wire::from(vec![b'x'; limit as usize + 1]),
            compressed: Arc::default(),
            accepted_at: Instant::now(),
        };
        sub.send(0, big);
        assert!(matches!(rxs[0].try_recv(), Ok(Remote::Broadcast { .. })));
        assert_eq!(queued.broker.queued_bytes.load(Relaxed), limit + 1);
    }

    fn entry(seq: u64, epoch: &str, ts: u64) -> Value {
        Value::BulkString(
            format!("{seq} {epoch} {ts} {}", envelope::body("1", None, None)).into_bytes(),
        )
    }

    fn meta(seq: Option<u64>, epoch: Option<&str>) -> Value {
        Value::Array(vec![
            seq.map_or(Value::Nil, |s| {
                Value::BulkString(s.to_string().into_bytes())
            }),
            epoch.map_or(Value::Nil, |e| Value::BulkString(e.as_bytes().to_vec())),
        ])
    }

    fn seqs(st: &StreamState) -> Vec<u64> {
        st.entries.iter().map(|e| e.0).collect()
    }

    #[test]
    fn state_keeps_the_contiguous_tail_within_retention_and_epoch() {
        let hist = Value::Array(vec![
            entry(3, "e", 100),
            entry(4, "old", 100),
            entry(5, "e", 100),
            entry(6, "e", 200),
            entry(7, "e", 200),
        ]);
        let st = read_state(Some(meta(Some(7), Some("e"))), Some(hist), None, 0).unwrap();
        assert_eq!((st.seq, st.epoch.as_str()), (7, "e"));
        // 4 is from another epoch: only 5..=7 are contiguous up to the current seq.
        assert_eq!(seqs(&st), vec![5, 6, 7]);
        let hist = Value::Array(vec![entry(6, "e", 100), entry(7, "e", 200)]);
        let st = read_state(Some(meta(Some(7), Some("e"))), Some(hist), None, 150).unwrap();
        assert_eq!(seqs(&st), vec![7], "older than retention");
    }

    #[test]
    fn history_short_of_the_current_seq_serves_no_resume() {
        let hist = Value::Array(vec![entry(4, "e", 1), entry(5, "e", 1)]);
        let st = read_state(Some(meta(Some(6), Some("e"))), Some(hist), None, 0).unwrap();
        assert!(st.entries.is_empty());
        assert_eq!(st.seq, 6);
    }

    #[test]
    fn a_new_stream_has_seq_zero_and_an_epoch_is_required() {
        let st = read_state(
            Some(meta(None, Some("e"))),
            Some(Value::Array(vec![])),
            None,
            0,
        )
        .unwrap();
        assert_eq!((st.seq, st.entries.len()), (0, 0));
        assert!(read_state(Some(meta(Some(1), None)), None, None, 0).is_err());
        // A user's stream gets its epoch at load; one without is not ours.
        assert!(read_state(Some(meta(None, None)), None, None, 0).is_err());
    }

    #[test]
    fn a_topic_without_a_key_is_the_placeholder_at_zero() {
        let none = Value::Array(vec![]);
        let st = read_state(Some(meta(None, None)), Some(none), Some("room"), 0).unwrap();
        assert_eq!(
            (st.seq, st.epoch.as_str(), st.entries.len()),
            (0, crate::api::sequencer::NO_EPOCH, 0)
        );
        // A seq without an epoch is no stream we wrote.
        assert!(read_state(Some(meta(Some(2), None)), None, Some("room"), 0).is_err());
    }

    #[test]
    fn topic_frames_carry_the_topic() {
        let hist = Value::Array(vec![entry(1, "e", 1)]);
        let st = read_state(Some(meta(Some(1), Some("e"))), Some(hist), Some("room"), 0).unwrap();
        let f = &st.entries[0].1;
        let text = String::from_utf8_lossy(&f[2..]);
        assert!(text.contains("\"topic\":\"room\""), "{text}");
        assert!(text.contains("\"seq\":1"), "{text}");
    }
}
