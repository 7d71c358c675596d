//! The publisher thread: the API's pushes through the sequencing script, in batches of
//! whatever queued up during the last round trip. (The node's heartbeat is the presence
//! thread's, which keeps the entries the heartbeat vouches for.)
//!
//! A push answered 202 that Redis refuses for now (out of memory, loading, ...) waits in
//! the retry queue and is tried again, for the streams it has not reached, after a pause
//! that grows while Redis keeps refusing. Retries take at most a quarter of a round trip,
//! so new pushes, waiting (`?wait=1`) pushes and client publishes keep being answered;
//! a new push to a stream that a retry holds up waits behind it (a waiting one is told
//! so), so each stream's pushes are numbered in the order the node took them.
//!
//! A round trip that goes unanswered (the link lost, or Redis stalled past the timeout
//! after taking the commands) leaves its 202 pushes unknown: they go first in the next
//! round trip with the producer marks they had (`script`), so Redis applies each where it
//! had not yet, once. Its waiting pushes are answered that they may or may not have been
//! published.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::Connection;
use rustc_hash::FxBuildHasher;

use super::keys::StreamRef;
use super::retries::Retries;
use super::script::{
    narrowed, only, refused_by_a_replica, refused_for_now, streams, unreached, Outcome,
    PublishError, Published, Refused, Sending, Sequencer,
};
use super::{next_backoff, pause, BrokerCtx, PublishCmd, RECONNECT_MIN};
use crate::api::{ParsedPush, Target};
use crate::command::Reply;
use crate::shard::ReplySink;

/// Pushes that may wait for Redis; beyond, the API answers 503 `overloaded`.
pub const PUBLISH_QUEUE: usize = 8192;
/// A link lost sooner than this after it was made is made again only after a pause that
/// grows (a batch that makes Redis or a proxy close the link would loop otherwise).
const LINK_MIN_LIFE: Duration = Duration::from_secs(1);
/// How often an idle publisher checks that Redis is still there.
const LINK_CHECK: Duration = Duration::from_secs(1);
/// Most pushes in one pipelined round trip.
const BATCH: usize = 256;
/// Most retried pushes in one round trip while Redis keeps refusing them; the rest is for
/// new ones. Once retries go through, they may fill a round trip: the pushes held behind
/// them must not wait at a quarter of the pace new ones come in.
const RETRIES_PER_ROUND: usize = BATCH / 4;
/// Pushes waiting to be tried again at which the API stops taking pushes (503
/// `broker_unavailable`, `/readyz` 503) until half of them went; what the queue before
/// the publisher holds then still joins them, so at most twice this many wait.
const RETRY_MAX: usize = PUBLISH_QUEUE;

/// A push in a round trip: a command, and for one answered 202 its producer mark (given
/// when first sent, kept while its round trips go unanswered).
struct Outgoing {
    cmd: PublishCmd,
    mark: Option<u64>,
    /// The mark is one a round trip without an answer carried: Redis may have applied
    /// the push under it, so a retry after a refusal keeps it (under a new one the push
    /// would be applied twice).
    kept: bool,
}

impl From<PublishCmd> for Outgoing {
    fn from(cmd: PublishCmd) -> Outgoing {
        Outgoing {
            cmd,
            mark: None,
            kept: false,
        }
    }
}

/// A push answered 202 going out again: its retry (streams not reached), or its round
/// trip sent again, with the mark it keeps.
fn again(push: ParsedPush, mark: Option<u64>) -> Outgoing {
    Outgoing {
        cmd: PublishCmd { push, ticket: None },
        mark,
        kept: mark.is_some(),
    }
}

/// The API's queue of pushes, as the publisher takes from it: each push taken comes off
/// `throng_broker_publish_queued_bytes` (the API counted it on; `BrokerLinks::try_publish`),
/// whatever path takes it, so the gauge is what waits in the channel.
struct Queue {
    rx: Receiver<PublishCmd>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Queue {
    fn taken(&self, cmd: PublishCmd) -> PublishCmd {
        let queued = &self.metrics.broker.publish_queued_bytes;
        queued.fetch_sub(cmd.push.weight(), Relaxed);
        cmd
    }

    fn try_recv(&self) -> Result<PublishCmd, crossbeam_channel::TryRecvError> {
        self.rx.try_recv().map(|c| self.taken(c))
    }

    fn recv_timeout(&self, d: Duration) -> Result<PublishCmd, RecvTimeoutError> {
        self.rx.recv_timeout(d).map(|c| self.taken(c))
    }
}

/// The publisher thread's state.
pub(crate) struct Publisher {
    ctx: BrokerCtx,
    rx: Queue,
    replies: ReplySink,
    up: Arc<AtomicBool>,
    sequencer: Sequencer,
    conn: Option<Connection>,
    backoff: Duration,
    /// The last round trip to Redis, for the idle link check.
    last_io: Instant,
    /// Whether the outage going on now was logged (once per outage, including one from
    /// the start: a node that never reaches Redis says why).
    told: bool,
    /// Pushes answered 202 that Redis refused for now, oldest first, each for the streams
    /// it has not reached, and those behind them on a stream.
    retry: Retries,
    /// The pushes answered 202 of the last round trip, when it went unanswered, with
    /// their marks: the next round trip starts with them.
    unanswered: Vec<(ParsedPush, u64)>,
    /// The producer mark of the next push answered 202 sent for the first time.
    next_mark: u64,
    /// When the retry queue is tried next.
    retry_at: Instant,
    /// The pause after the next refusal (grows while Redis keeps refusing).
    retry_pause: Duration,
    /// The link was dropped because that Redis takes no writes (a replica): reconnects
    /// are paced and quiet until a round trip goes through again.
    on_replica: bool,
    /// The retry queue reached `RETRY_MAX`: the API is told Redis is unavailable.
    saturated: bool,
    /// When the link in use was made.
    linked_at: Instant,
    /// The last link was lost within `LINK_MIN_LIFE`: the next is made after a pause.
    short_lived: bool,
    /// Nothing more can come: the API dropped its end of the queue (it stopped).
    closed: bool,
    /// Set at the stop: the publisher goes on until what it holds went to Redis, or
    /// until then (`shutdown_grace` later).
    flush_until: Option<Instant>,
    /// Redis refuses pushes for now (out of memory, ...): said once per spell, and again
    /// when they go through.
    refusing: bool,
}

impl Publisher {
    /// A publisher answering through `replies`; `up` tells the API whether Redis is there.
    pub(crate) fn new(
        ctx: BrokerCtx,
        rx: Receiver<PublishCmd>,
        replies: ReplySink,
        up: Arc<AtomicBool>,
    ) -> Publisher {
        let sequencer = Sequencer::new(ctx.retention, ctx.channels.clone());
        let rx = Queue {
            rx,
            metrics: Arc::clone(&ctx.metrics),
        };
        Publisher {
            ctx,
            rx,
            replies,
            up,
            sequencer,
            conn: None,
            backoff: RECONNECT_MIN,
            last_io: Instant::now(),
            told: false,
            refusing: false,
            retry: Retries::new(),
            unanswered: Vec::new(),
            next_mark: 1,
            retry_at: Instant::now(),
            retry_pause: RECONNECT_MIN,
            on_replica: false,
            saturated: false,
            linked_at: Instant::now(),
            short_lived: false,
            closed: false,
            flush_until: None,
        }
    }

    /// Runs until the server stops and what the publisher holds went to Redis (or
    /// `shutdown_grace` passed): a push answered 202 just before a stop is not lost while
    /// Redis answers.
    pub(crate) fn run(mut self) {
        let mut batch: Vec<Outgoing> = Vec::with_capacity(BATCH);
        while !self.done() {
            if self.conn.is_none() {
                self.answer_while_down();
                if !self.reconnect() {
                    continue;
                }
            }
            // An unanswered round trip goes first, whole: no later mark of this run
            // reaches a stream before its marks were sent again.
            let resent = self.unanswered.len();
            batch.extend(self.unanswered.drain(..).map(|(p, m)| again(p, Some(m))));
            let now = Instant::now();
            let mut retried = 0;
            if now >= self.retry_at {
                let share = if self.retry_pause == RECONNECT_MIN {
                    BATCH
                } else {
                    RETRIES_PER_ROUND
                };
                while retried < share && batch.len() < BATCH {
                    let Some((push, mark)) = self.retry.pop_front() else {
                        break;
                    };
                    batch.push(again(push, mark));
                    retried += 1;
                }
            }
            // The streams of pushes sent again: a new waiting push to one waits behind them
            // (a 202 one goes on behind them in this round trip: `BEHIND` keeps it after).
            let sent_again: Streams = if batch.is_empty() {
                Streams::default()
            } else {
                let pushes = batch.iter().flat_map(|o| streams(&o.cmd.push.target));
                pushes.map(|s| self.retry.key(s)).collect()
            };
            if batch.is_empty() {
                let mut wait = Duration::from_millis(100);
                if !self.retry.is_empty() {
                    wait = wait.min(self.retry_at.saturating_duration_since(now));
                }
                if self.closed {
                    // Only retries are left: their time.
                    self.pause(wait);
                    continue;
                }
                match self.rx.recv_timeout(wait) {
                    Ok(cmd) => self.take_new(cmd, &mut batch, &sent_again),
                    Err(RecvTimeoutError::Timeout) => {
                        self.check_link();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        self.closed = true;
                        continue;
                    }
                }
            }
            while batch.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(cmd) => self.take_new(cmd, &mut batch, &sent_again),
                    Err(_) => break,
                }
            }
            self.publish(&mut batch, resent, retried);
            self.saturate();
        }
        // Still held after the grace: the ticketed ones learn it; the others were answered
        // 202 and are lost with the process (retries too); those of an unanswered round
        // trip may have been taken.
        let mut lost = self.retry.len();
        let waiting = std::iter::from_fn(|| self.rx.try_recv().ok()).collect::<Vec<_>>();
        for cmd in waiting.into_iter().chain(batch.drain(..).map(|o| o.cmd)) {
            match cmd.ticket {
                Some(t) => self.answer(t, Err("the server is shutting down".into())),
                None => lost += 1,
            }
        }
        if lost > 0 {
            tracing::warn!(
                pushes = lost,
                "shutting down with pushes answered 202 that Redis did not take within shutdown_grace_ms; they are lost"
            );
        }
        if !self.unanswered.is_empty() {
            tracing::warn!(
                pushes = self.unanswered.len(),
                "shutting down with pushes answered 202 whose round trip Redis did not answer; it may or may not have taken them"
            );
        }
        let _ = self.replies.waker.wake();
    }

    /// Adds a new push to the round trip, unless an earlier push to one of its streams
    /// waits to be tried again: a push answered 202 then waits behind the ones in the
    /// retry queue for those streams (in the queue, after them; behind one sent again in
    /// this round trip it goes on, its producer mark keeping it after), and a waiting push,
    /// which has no mark, is answered that it was not published.
    fn take_new(&mut self, cmd: PublishCmd, batch: &mut Vec<Outgoing>, sent_again: &Streams) {
        let ticketed = cmd.ticket.is_some();
        if self.retry.is_empty() && (sent_again.is_empty() || !ticketed) {
            batch.push(cmd.into());
            return;
        }
        let held = |s: StreamRef<'_>| {
            let key = self.retry.key(s);
            self.retry.holds(key) || (ticketed && sent_again.contains(&key))
        };
        let Some(first) = streams(&cmd.push.target).find(|&s| held(s)) else {
            batch.push(cmd.into());
            return;
        };
        if let Some(t) = cmd.ticket {
            let why = format!(
                "an earlier push to {} waits for Redis to take it (Redis refused it for now); try again shortly",
                describe(first)
            );
            self.answer(t, Err(PublishError::NotPublished(why)));
            return;
        }
        self.ctx.metrics.broker.held_behind.fetch_add(1, Relaxed);
        match &cmd.push.target {
            Target::Users(_) => {
                let now = narrowed(&cmd.push, |u| !held(StreamRef::User(u)));
                let later = narrowed(&cmd.push, |u| held(StreamRef::User(u)));
                if !matches!(&now.target, Target::Users(list) if list.is_empty()) {
                    batch.push(
                        PublishCmd {
                            push: now,
                            ticket: None,
                        }
                        .into(),
                    );
                }
                self.retry.push_back(later, None);
            }
            _ => self.retry.push_back(cmd.push, None),
        }
    }

    /// Whether to end: after the stop (or once nothing more can come), when the queue is
    /// closed and empty and no retry is left, or when the grace is over.
    fn done(&mut self) -> bool {
        if !self.closed && !self.ctx.stop.load(Relaxed) {
            return false;
        }
        let grace = self.ctx.grace;
        let until = *self
            .flush_until
            .get_or_insert_with(|| Instant::now() + grace);
        let empty = self.closed && self.retry.is_empty() && self.unanswered.is_empty();
        empty || Instant::now() >= until
    }

    /// Sleeps `d`; at most until the stop before it, at most until the flush ends after.
    fn pause(&self, d: Duration) {
        match self.flush_until {
            Some(until) => {
                std::thread::sleep(d.min(until.saturating_duration_since(Instant::now())))
            }
            None => pause(d, &self.ctx.stop),
        }
    }

    /// Tells the API that Redis is unavailable while the retry queue is at its bound (it
    /// takes no more pushes), and that it is back once half of the queue went; shows how
    /// many pushes wait.
    fn saturate(&mut self) {
        let waiting = self.retry.len() + self.unanswered.len();
        let broker = &self.ctx.metrics.broker;
        broker.waiting.store(waiting as u64, Relaxed);
        let was = self.saturated;
        // In pushes and in bytes: 8,192 refused pushes of 1 MiB would be 8 GiB.
        let (n, bytes) = (self.retry.len(), self.retry.bytes());
        let limit = self.ctx.queue_bytes_limit;
        if n >= RETRY_MAX || bytes >= limit {
            self.saturated = true;
        } else if n < RETRY_MAX / 2 && bytes < limit / 2 {
            self.saturated = false;
        }
        if self.saturated != was {
            if self.saturated {
                tracing::warn!(
                    waiting = self.retry.len(),
                    "Redis keeps refusing pushes; the API refuses new ones until half of these went"
                );
            } else {
                tracing::info!(
                    "the pushes Redis refused are going out; the API takes pushes again"
                );
            }
            self.show_up();
        }
    }

    /// Tells the API (and `/readyz`) whether pushes can be taken: a link, and room.
    fn show_up(&self) {
        let up = self.conn.is_some() && !self.saturated;
        self.ctx.blocks.saturated.store(self.saturated, Relaxed);
        self.up.store(up, Relaxed);
        self.ctx.metrics.broker.up.store(up, Relaxed);
    }

    /// While idle, a PING every `LINK_CHECK`: `/readyz` and the API's 503 then follow a
    /// Redis that went away even when no push came to find out.
    fn check_link(&mut self) {
        if self.last_io.elapsed() < LINK_CHECK {
            return;
        }
        self.last_io = Instant::now();
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(e) = redis::cmd("PING").query::<String>(conn) {
            self.down(&e);
        }
    }

    /// Connects and loads the script; false (after a pause) when Redis is not there.
    fn reconnect(&mut self) -> bool {
        // Taken once: a connect that fails pauses on its own below.
        let quick = std::mem::take(&mut self.short_lived);
        if self.on_replica || quick {
            // That Redis answered, it just takes no writes: a failover takes seconds, so
            // asking again at once would only open thousands of connections a second. So
            // does one that drops each link as soon as a round trip goes.
            self.pause(self.backoff);
            self.backoff = next_backoff(self.backoff);
        }
        match self.ctx.redis.connect().and_then(|mut c| {
            self.sequencer.load(&mut c)?;
            Ok(c)
        }) {
            Ok(c) => {
                self.conn = Some(c);
                // The backoff starts over once a link lasted (`down`) or a replica's spell
                // ended, not when one is made.
                self.linked_at = Instant::now();
                self.show_up();
                if self.on_replica {
                    // Said once already; said again when writes go through.
                    tracing::debug!(node = %self.ctx.node_id, "publisher connected to Redis again");
                } else {
                    self.told = false;
                    tracing::info!(node = %self.ctx.node_id, "publisher connected to Redis");
                }
                true
            }
            Err(e) => {
                if super::is_refusal(&e) {
                    // Not an outage that passes by itself.
                    self.ctx.metrics.broker.errors.fetch_add(1, Relaxed);
                }
                self.down(&e);
                self.pause(self.backoff);
                self.backoff = next_backoff(self.backoff);
                false
            }
        }
    }

    fn down(&mut self, e: &redis::RedisError) {
        // A lost link is an outage of its own, told and retried as one, after a replica's
        // spell too.
        self.on_replica = false;
        if self.conn.is_some() {
            self.short_lived = self.linked_at.elapsed() < LINK_MIN_LIFE;
            if !self.short_lived {
                // A link that lasted ends any spell of quick losses: the next outage starts
                // at the shortest pause.
                self.backoff = RECONNECT_MIN;
            }
        }
        if !std::mem::replace(&mut self.told, true) {
            let e = self.ctx.redis.describe(e);
            tracing::warn!(error = %e, "publisher cannot use Redis; pushes get 503 broker_unavailable until it can");
        }
        self.conn = None;
        self.show_up();
    }

    /// That Redis takes no writes (a replica): the link goes, and reconnects (paced) look
    /// for a primary; said once per such spell.
    fn on_a_replica(&mut self, e: &str) {
        if !std::mem::replace(&mut self.on_replica, true) {
            self.backoff = RECONNECT_MIN;
            tracing::warn!(error = %e, "Redis refuses writes (a replica?); reconnecting until a primary answers");
        }
        self.conn = None;
        self.show_up();
    }

    /// Publishes the batch in one round trip: its first `resent` pushes are an unanswered
    /// round trip's, the next `retried` are retries. Ticketed pushes get their outcome or
    /// the error (the upstream asked and retries); pushes already answered 202 are
    /// retried until Redis takes them: after a refusal for now, for the streams not
    /// reached yet (the retry queue), and after an unanswered round trip, whole, with
    /// their marks. A refusal from a Redis that takes no writes (a replica) drops the
    /// link: the next one may reach the primary.
    fn publish(&mut self, batch: &mut Vec<Outgoing>, resent: usize, retried: usize) {
        let Some(conn) = self.conn.as_mut() else {
            self.lost(batch, "Redis is unavailable");
            return;
        };
        for o in batch.iter_mut().filter(|o| o.cmd.ticket.is_none()) {
            if o.mark.is_none() {
                o.mark = Some(self.next_mark);
                self.next_mark += 1;
            }
        }
        let pushes: Vec<Sending<'_>> = batch
            .iter()
            .map(|o| Sending {
                push: &o.cmd.push,
                mark: o.mark,
            })
            .collect();
        // Counted as sent, answered or not.
        let broker = &self.ctx.metrics.broker;
        broker.resent.fetch_add(resent as u64, Relaxed);
        let between = match self
            .sequencer
            .publish_between(conn, redis::pipe(), &pushes, None)
        {
            Ok(between) => between,
            Err(e) => {
                self.ctx.metrics.broker.errors.fetch_add(1, Relaxed);
                self.down(&e);
                self.unanswered(batch, &e);
                return;
            }
        };
        self.last_io = Instant::now();
        let (mut published, mut failed) = (0u64, 0u64);
        let mut refusals = 0;
        let mut retries_refused = 0;
        let mut taken_before = 0u64;
        let mut replica = None;
        // Refused pushes that were sent again go back ahead of the queue: they are older
        // than every push waiting there.
        let mut older = Vec::new();
        let mut why: Option<String> = None;
        let outcomes = between.published.into_iter().zip(between.refused);
        for (i, (o, (r, refused))) in batch.drain(..).zip(outcomes).enumerate() {
            if r.is_ok() {
                published += 1;
            } else {
                failed += 1;
                if (resent..resent + retried).contains(&i) {
                    retries_refused += 1;
                }
            }
            if i < resent {
                taken_before += taken(&r, refused.as_ref());
            }
            if let Some(rf) = &refused {
                if let Some((_, e)) = rf.errors.iter().find(|(_, e)| refused_by_a_replica(e)) {
                    replica.get_or_insert_with(|| e.clone());
                }
            }
            match (o.cmd.ticket, r, refused) {
                (Some(t), r, _) => self.answer(t, r),
                (None, Ok(_), _) => {}
                (None, Err(e), Some(refused)) => {
                    why.get_or_insert_with(|| e.to_string());
                    if let Some(push) = retry_part(&o.cmd.push, &refused) {
                        // A refusal of a push sent again under its kept mark says nothing
                        // of the round trip that went unanswered: it keeps the mark.
                        let mark = o.mark.filter(|_| o.kept);
                        if i < resent + retried {
                            older.push((push, mark));
                        } else {
                            self.retry.push_back(push, mark);
                        }
                        refusals += 1;
                    }
                }
                (None, Err(e), None) => {
                    tracing::warn!(error = %e, "Redis refused a push; it is dropped");
                }
            }
        }
        self.retry.put_first(older);
        let _ = self.replies.waker.wake();
        let broker = &self.ctx.metrics.broker;
        broker.published.fetch_add(published, Relaxed);
        broker.errors.fetch_add(failed, Relaxed);
        broker.resent_taken.fetch_add(taken_before, Relaxed);
        if resent > 0 {
            tracing::info!(
                pushes = resent,
                streams_taken_before = taken_before,
                "sent the pushes of an unanswered round trip again; Redis had taken them on this many streams already"
            );
        }
        if refusals > 0 {
            if std::mem::replace(&mut self.refusing, true) {
                tracing::debug!(
                    refused = refusals,
                    waiting = self.retry.len(),
                    "Redis refused pushes for now; they are tried again"
                );
            } else {
                tracing::warn!(
                    refused = refusals,
                    waiting = self.retry.len(),
                    error = why.as_deref().unwrap_or(""),
                    "Redis refuses pushes for now; they wait and are tried again"
                );
            }
        } else if published > 0 && retries_refused == 0 && self.refusing {
            self.refusing = false;
            tracing::info!(waiting = self.retry.len(), "Redis takes pushes again");
        }
        // The pause grows while retries keep being refused and starts over once they
        // go through; new pushes refused meanwhile wait for the retry already planned.
        let now = Instant::now();
        if retries_refused > 0 {
            self.retry_at = now + self.retry_pause;
            self.retry_pause = next_backoff(self.retry_pause);
        } else {
            if retried > 0 {
                self.retry_pause = RECONNECT_MIN;
            }
            if refusals > 0 && self.retry_at <= now {
                self.retry_at = now + self.retry_pause;
            }
        }
        match replica {
            Some(e) => self.on_a_replica(&e),
            None if self.on_replica => {
                self.on_replica = false;
                self.backoff = RECONNECT_MIN;
                tracing::info!(node = %self.ctx.node_id, "publisher writes to Redis again");
            }
            None => {}
        }
    }

    /// While there is no link: pushes that wait for an answer get it now (the API refuses
    /// new ones meanwhile), pushes answered 202 join the retry queue.
    fn answer_while_down(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd.ticket {
                Some(t) => self.answer(t, Err("Redis is unavailable".into())),
                None => self.retry.push_back(cmd.push, None),
            }
        }
        let _ = self.replies.waker.wake();
        self.saturate();
    }

    /// There is no link to send the batch on: ticketed pushes are answered with `why`,
    /// and the others go first in the next round trip as they were (an unanswered round
    /// trip's with their marks; the others get theirs when sent).
    fn lost(&mut self, batch: &mut Vec<Outgoing>, why: &str) {
        let mut first = Vec::new();
        for o in batch.drain(..).rev() {
            match (o.cmd.ticket, o.mark) {
                (Some(t), _) => self.answer(t, Err(why.into())),
                (None, Some(mark)) => self.unanswered.insert(0, (o.cmd.push, mark)),
                (None, _) => first.push((o.cmd.push, None)),
            }
        }
        first.reverse();
        self.retry.put_first(first);
        self.retry_at = Instant::now();
        let _ = self.replies.waker.wake();
    }

    /// The round trip was sent and no answer came: Redis may have applied any part of
    /// it. Ticketed pushes are answered so; the others go first, whole, in the next round
    /// trip, with their marks.
    fn unanswered(&mut self, batch: &mut Vec<Outgoing>, e: &redis::RedisError) {
        let why = format!("no answer from Redis ({e})");
        let mut unmarked = Vec::new();
        for o in batch.drain(..) {
            match (o.cmd.ticket, o.mark) {
                (Some(t), _) => self.answer(t, Err(PublishError::Unanswered(why.clone()))),
                (None, Some(mark)) => self.unanswered.push((o.cmd.push, mark)),
                // Every push answered 202 has its mark by now.
                (None, None) => unmarked.push((o.cmd.push, None)),
            }
        }
        self.retry.put_first(unmarked);
        let _ = self.replies.waker.wake();
    }

    fn answer(&self, ticket: crate::command::Ticket, published: Published) {
        let _ = self.replies.tx.send(Reply {
            ticket,
            sessions: 0,
            users: 0,
            details: Vec::new(),
            members: Vec::new(),
            published: Some(published),
            cluster: None,
        });
    }
}

/// Keys of streams (`Retries::key`).
type Streams = HashSet<u64, FxBuildHasher>;

/// A stream as an answer names it.
fn describe(s: StreamRef<'_>) -> String {
    match s {
        StreamRef::User(u) => format!("user {u}"),
        StreamRef::Topic(t) => format!("topic {t}"),
    }
}

/// The streams on which a push sent again was there already (its mark, or its `id`).
fn taken(r: &Published, refused: Option<&Refused>) -> u64 {
    let reached = match (r, refused) {
        (Ok(outcomes), _) => outcomes.as_slice(),
        (Err(_), Some(refused)) => refused.reached.as_slice(),
        (Err(_), None) => &[],
    };
    reached
        .iter()
        .filter(|o| matches!(o, Outcome::Duplicate { .. }))
        .count() as u64
}

/// The part of a 202 push Redis refused that is worth trying again: its streams refused
/// for now (all those not reached, when every refusal was for now). Streams refused for
/// good (a key of the wrong type) are dropped with a warning naming them.
fn retry_part(push: &ParsedPush, refused: &Refused) -> Option<ParsedPush> {
    if refused.all_for_now() {
        return Some(unreached(push, &refused.reached));
    }
    let mut later: Vec<&str> = Vec::new();
    for (stream, e) in &refused.errors {
        if refused_for_now(e) {
            later.push(stream);
        } else {
            tracing::warn!(stream = %stream, error = %e, "Redis refused a push on this stream; dropped there");
        }
    }
    (!later.is_empty()).then(|| only(push, &later))
}
