//! The publisher thread: the API's pushes through the sequencing script, in batches of
//! whatever queued up during the last round trip. (The node's heartbeat is the presence
//! thread's, which keeps the entries the heartbeat vouches for.)

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::Connection;

use super::script::{
    only, refused_by_a_replica, refused_for_now, unreached, Published, Refused, Sequencer,
};
use super::{next_backoff, pause, BrokerCtx, PublishCmd, RECONNECT_MIN};
use crate::command::Reply;
use crate::shard::ReplySink;

/// Pushes that may wait for Redis; beyond, the API answers 503 `overloaded`.
pub const PUBLISH_QUEUE: usize = 8192;
/// How often an idle publisher checks that Redis is still there.
const LINK_CHECK: Duration = Duration::from_secs(1);
/// Most pushes in one pipelined round trip.
const BATCH: usize = 256;

/// The publisher thread's state.
pub(crate) struct Publisher {
    ctx: BrokerCtx,
    rx: Receiver<PublishCmd>,
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
}

impl Publisher {
    /// A publisher answering through `replies`; `up` tells the API whether Redis is there.
    pub(crate) fn new(
        ctx: BrokerCtx,
        rx: Receiver<PublishCmd>,
        replies: ReplySink,
        up: Arc<AtomicBool>,
    ) -> Publisher {
        let sequencer = Sequencer::new(ctx.retention);
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
        }
    }

    /// Runs until the server stops.
    pub(crate) fn run(mut self) {
        let mut batch: Vec<PublishCmd> = Vec::with_capacity(BATCH);
        while !self.ctx.stop.load(Relaxed) {
            if self.conn.is_none() && !self.reconnect() {
                continue;
            }
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(cmd) => batch.push(cmd),
                Err(RecvTimeoutError::Timeout) => {
                    self.check_link();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.publish(&mut batch);
        }
        // Still queued at shutdown: the ticketed ones learn it; the others were answered
        // 202 and are lost with the process, as pushes in shard queues are.
        for cmd in self.rx.try_iter().chain(batch.drain(..)) {
            if let Some(t) = cmd.ticket {
                self.answer(t, Err("server is shutting down".into()));
            }
        }
        let _ = self.replies.waker.wake();
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
        match self.ctx.redis.connect().and_then(|mut c| {
            self.sequencer.load(&mut c)?;
            Ok(c)
        }) {
            Ok(c) => {
                self.conn = Some(c);
                self.backoff = RECONNECT_MIN;
                self.up.store(true, Relaxed);
                self.told = false;
                self.ctx.metrics.broker.up.store(true, Relaxed);
                tracing::info!(node = %self.ctx.node_id, "publisher connected to Redis");
                true
            }
            Err(e) => {
                if super::is_refusal(&e) {
                    // Not an outage that passes by itself.
                    self.ctx.metrics.broker.errors.fetch_add(1, Relaxed);
                }
                self.down(&e);
                pause(self.backoff, &self.ctx.stop);
                self.backoff = next_backoff(self.backoff);
                false
            }
        }
    }

    fn down(&mut self, e: &dyn std::fmt::Display) {
        self.up.store(false, Relaxed);
        if !std::mem::replace(&mut self.told, true) {
            tracing::warn!(error = %e, "publisher cannot use Redis; pushes get 503 broker_unavailable until it can");
        }
        self.ctx.metrics.broker.up.store(false, Relaxed);
        self.conn = None;
    }

    /// Publishes the batch. Ticketed pushes get their outcome or the error (the upstream
    /// asked and retries); pushes already answered 202 are retried until Redis takes them:
    /// after a lost link, and after a refusal for now (out of memory, loading, ...), for
    /// the streams not reached yet, after a pause that grows while Redis keeps refusing.
    fn publish(&mut self, batch: &mut Vec<PublishCmd>) {
        let mut refusals_pause = RECONNECT_MIN;
        loop {
            let Some(conn) = self.conn.as_mut() else {
                if self.ctx.stop.load(Relaxed) {
                    return;
                }
                self.reconnect();
                continue;
            };
            let pushes: Vec<&crate::api::ParsedPush> = batch.iter().map(|c| &c.push).collect();
            match self
                .sequencer
                .publish_between(conn, redis::pipe(), &pushes, None)
            {
                Ok(between) => {
                    self.last_io = Instant::now();
                    self.ctx
                        .metrics
                        .broker
                        .published
                        .fetch_add(between.published.len() as u64, Relaxed);
                    let mut again = Vec::new();
                    let mut replica = None;
                    let outcomes = between.published.into_iter().zip(between.refused);
                    for (cmd, (r, refused)) in batch.drain(..).zip(outcomes) {
                        if r.is_err() {
                            self.ctx.metrics.broker.errors.fetch_add(1, Relaxed);
                        }
                        match (cmd.ticket, r, refused) {
                            (Some(t), r, _) => self.answer(t, r),
                            (None, Ok(_), _) => {}
                            (None, Err(_), Some(refused)) => {
                                if let Some((_, e)) =
                                    refused.errors.iter().find(|(_, e)| refused_by_a_replica(e))
                                {
                                    replica.get_or_insert_with(|| e.clone());
                                }
                                if let Some(push) = retry_part(&cmd.push, &refused) {
                                    again.push(PublishCmd { push, ticket: None });
                                }
                            }
                            (None, Err(e), None) => {
                                tracing::warn!(error = %e, "Redis refused a push; it is dropped");
                            }
                        }
                    }
                    let _ = self.replies.waker.wake();
                    if again.is_empty() || self.ctx.stop.load(Relaxed) {
                        return;
                    }
                    tracing::debug!(
                        count = again.len(),
                        "Redis refused pushes for now; trying them again"
                    );
                    if let Some(e) = replica {
                        // This Redis takes no writes: a new connection may reach the
                        // primary (after a failover behind the same address).
                        self.down(&format!("Redis refuses writes: {e}"));
                    }
                    *batch = again;
                    pause(refusals_pause, &self.ctx.stop);
                    refusals_pause = next_backoff(refusals_pause);
                    // What queued meanwhile goes in the same round trip, behind them:
                    // waiting pushes get their answers, broadcasts go out.
                    while batch.len() < BATCH {
                        match self.rx.try_recv() {
                            Ok(cmd) => batch.push(cmd),
                            Err(_) => break,
                        }
                    }
                }
                Err(e) => {
                    self.ctx.metrics.broker.errors.fetch_add(1, Relaxed);
                    self.down(&e);
                    batch.retain(|cmd| match cmd.ticket {
                        Some(t) => {
                            self.answer(t, Err(format!("Redis is unavailable: {e}")));
                            false
                        }
                        None => true,
                    });
                    let _ = self.replies.waker.wake();
                    if batch.is_empty() {
                        return;
                    }
                }
            }
        }
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

/// The part of a 202 push Redis refused that is worth trying again: its streams refused
/// for now (all those not reached, when every refusal was for now). Streams refused for
/// good (a key of the wrong type) are dropped with a warning naming them.
fn retry_part(push: &crate::api::ParsedPush, refused: &Refused) -> Option<crate::api::ParsedPush> {
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
