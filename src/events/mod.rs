//! Client messages and lifecycle events for the upstream (docs/protocol.md 6). Shards
//! queue them without waiting (bounded by `events_queue` events and 64 MiB: a `send` that does not fit is
//! refused with `overloaded`, never dropped), and one thread delivers them in batches, in
//! order: POSTed as a JSON array to `events_url` (standalone), or appended to the Redis
//! stream `throng:events` (cluster mode). An unreachable upstream is retried with backoff
//! for as long as it lasts, so it fills the queue and shows in the metrics; it never slows
//! pushes. A batch the upstream fails (a 5xx, no answer in time) is retried, then halved
//! down to one event, and an event that still fails alone is dropped: one event the
//! upstream cannot take never blocks the others for good.

mod counters;
mod http;
mod stream;

pub(crate) use http::read_ca;
pub use http::{read_key_file, CaReload, KeyReload};

pub use counters::EventCounters;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::config::Config;
use crate::metrics::Metrics;

/// Bytes of events that may wait for delivery.
pub const EVENTS_QUEUE_BYTES: u64 = 64 << 20;
/// Most events in one delivery.
const BATCH: usize = 1000;
/// Most bytes in one delivery (one event larger than this goes alone).
const BATCH_BYTES: usize = 1 << 20;
/// First pause after a failed delivery; doubled up to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between retries.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// At shutdown, how long what is still queued may take to deliver.
const FLUSH_AT_STOP: Duration = Duration::from_secs(3);
/// Past the flush time, how long the server still waits for the events thread to end.
const JOIN_SLACK: Duration = Duration::from_millis(500);
/// Failed tries of a batch, at one size, before it is halved (one when no answer came in
/// time).
const SPLIT_AFTER: u32 = 2;
/// Failed tries of one event alone before it is dropped, when the next event (another
/// session's) sent alone goes through: the upstream works, this event is what it cannot
/// take.
const EVENT_TRIES: u32 = 5;
/// Failed tries of one event alone before it is dropped when no other event shows the
/// upstream works (the next one fails too, or there is none to try): an upstream failing
/// every request (an outage answered 500) loses an event every few minutes at the
/// longest backoff, not one every few seconds.
const EVENT_TRIES_COLD: u32 = 30;
/// A repeated drop is logged once, then at most this often.
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

/// One event: a JSON object, as text.
pub struct Event(Box<str>);

impl Event {
    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What an event carries beyond its type, user, session, node and time.
#[derive(Debug, Clone, Copy)]
pub enum Detail<'a> {
    /// `send`: the client's `data`, JSON text.
    Data(&'a str),
    /// `disconnect`: the close code.
    Code(u16),
    /// `subscribe`, `unsubscribe`: the topic.
    Topic(&'a str),
    /// `connect`.
    None,
}

/// Why an event was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue is full (by count or bytes): the upstream is slow or unreachable.
    #[error("the event queue is full")]
    Full,
    /// Delivery has stopped (shutdown).
    #[error("event delivery has stopped")]
    Stopped,
}

/// A shard's way to the events thread.
pub struct EventSink {
    tx: Sender<Event>,
    /// `events_queue`: most events waiting.
    capacity: u64,
    lifecycle: bool,
    node: Arc<str>,
    metrics: Arc<Metrics>,
}

impl Clone for EventSink {
    fn clone(&self) -> EventSink {
        EventSink {
            tx: self.tx.clone(),
            capacity: self.capacity,
            lifecycle: self.lifecycle,
            node: Arc::clone(&self.node),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The event's JSON: `{"type","user","session","node","ts"}` and its detail.
pub fn encode(kind: &str, user: &str, session: &str, node: &str, ts: u64, d: Detail<'_>) -> Event {
    let extra = match d {
        Detail::Data(s) | Detail::Topic(s) => s.len(),
        Detail::Code(_) | Detail::None => 0,
    };
    let mut out = Vec::with_capacity(96 + user.len() + session.len() + node.len() + extra);
    out.extend_from_slice(b"{\"type\":");
    json_str(&mut out, kind);
    out.extend_from_slice(b",\"user\":");
    json_str(&mut out, user);
    out.extend_from_slice(b",\"session\":");
    json_str(&mut out, session);
    out.extend_from_slice(b",\"node\":");
    json_str(&mut out, node);
    let _ = write!(out, ",\"ts\":{ts}");
    match d {
        Detail::Data(data) => {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data.as_bytes());
        }
        Detail::Code(code) => {
            let _ = write!(out, ",\"code\":{code}");
        }
        Detail::Topic(t) => {
            out.extend_from_slice(b",\"topic\":");
            json_str(&mut out, t);
        }
        Detail::None => {}
    }
    out.push(b'}');
    // Built from JSON text and serialised strings only.
    Event(String::from_utf8(out).unwrap_or_default().into_boxed_str())
}

impl EventSink {
    /// Whether lifecycle events (`connect`, `disconnect`, `subscribe`, `unsubscribe`) are on.
    pub fn lifecycle(&self) -> bool {
        self.lifecycle
    }

    /// Queues one event without waiting.
    pub fn emit(
        &self,
        kind: &str,
        user: &str,
        session: &str,
        d: Detail<'_>,
    ) -> Result<(), QueueError> {
        let e = encode(kind, user, session, &self.node, now_ms(), d);
        let c = &self.metrics.events;
        let len = e.0.len() as u64;
        // Reserved before sending; several shards may pass the checks together, so each
        // bound can be passed by at most one event per shard.
        let queued = c.queued.load(Relaxed);
        if queued >= self.capacity
            || (queued > 0 && c.queued_bytes.load(Relaxed).saturating_add(len) > EVENTS_QUEUE_BYTES)
        {
            return Err(QueueError::Full);
        }
        c.queued_bytes.fetch_add(len, Relaxed);
        c.queued.fetch_add(1, Relaxed);
        match self.tx.try_send(e) {
            Ok(()) => Ok(()),
            Err(err) => {
                c.queued_bytes.fetch_sub(len, Relaxed);
                c.queued.fetch_sub(1, Relaxed);
                Err(match err {
                    TrySendError::Full(_) => QueueError::Full,
                    TrySendError::Disconnected(_) => QueueError::Stopped,
                })
            }
        }
    }
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliverError {
    /// The upstream could not be reached or is busy (a connection error, 429, 502, 503):
    /// not the batch's fault, so retried for as long as it lasts.
    #[error("{0}")]
    Unreachable(String),
    /// The upstream failed on this batch (408, another 5xx): retried, halved, and an
    /// event that keeps failing alone is dropped.
    #[error("{0}")]
    Failed(String),
    /// The upstream took the batch and did not answer in time: as `Failed`, but halved at
    /// once (a batch too long to process would be as long again).
    #[error("{0}")]
    TooSlow(String),
    /// The upstream refused these events for good (another 4xx, a 3xx): retrying cannot
    /// help.
    #[error("{0}")]
    Refused(String),
}

/// Why events were dropped (`throng_events_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The upstream refused them (a 4xx other than 408 and 429, or a redirect).
    Refused,
    /// The upstream failed on the event alone `EVENT_TRIES` times.
    Failed,
    /// Still waiting when the server stopped.
    Stopped,
}

/// Where events go.
pub(crate) trait Target: Send {
    /// Delivers a batch, in order, all or none; at shutdown, giving up at `until` (the
    /// end of `FLUSH_AT_STOP`) where the target can bound its wait.
    fn deliver(&mut self, batch: &[Event], until: Option<Instant>) -> Result<(), DeliverError>;
    /// Names the target in logs.
    fn describe(&self) -> String;
}

/// The running events thread and what the rest of the server holds of it.
pub struct EventsThread {
    /// The sink for the shards (one clone each).
    pub sink: EventSink,
    /// The thread.
    pub thread: Running,
    /// Reads `events_ca` again, when one is set.
    pub ca_reload: Option<CaReload>,
    /// Reads `events_key_file` again, when one is set.
    pub key_reload: Option<KeyReload>,
}

/// The events thread's handle, and the flag that says its loss at a stop was logged.
pub struct Running {
    thread: JoinHandle<()>,
    /// Set by the first to log the events lost at a stop (the thread, or the server that
    /// stopped waiting for it): one warning, not two.
    loss_said: Arc<AtomicBool>,
}

impl Running {
    /// The events thread, once it has ended, when it does within the flush time after
    /// the server stopped (at `stopped`). A try in flight may wait up to 30 s for the
    /// upstream's answer, and a deploy must not: a thread still busy then is left to end
    /// with the process (in a process that goes on, it ends by itself after that try),
    /// and what it held is lost and logged (None).
    pub fn ended_within_flush(self, stopped: Instant, metrics: &Metrics) -> Option<JoinHandle<()>> {
        let until = stopped + FLUSH_AT_STOP + JOIN_SLACK;
        while !self.thread.is_finished() {
            if Instant::now() >= until {
                // In flight and waiting alike: an event leaves the gauge once delivered.
                let dropped = metrics.events.queued.load(Relaxed);
                if dropped > 0 && !self.loss_said.swap(true, Relaxed) {
                    tracing::warn!(
                        dropped,
                        "server stopped before the events upstream took every event (a \
                         batch was still waiting for its answer)"
                    );
                }
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(self.thread)
    }
}

/// Starts the events thread when the configuration gives events a target. `node` names
/// this server in events; in cluster mode `redis` connects to the cluster's Redis.
pub fn spawn(
    config: &Config,
    node: Arc<str>,
    metrics: &Arc<Metrics>,
    stop: &Arc<AtomicBool>,
    redis: Option<&Arc<crate::broker::RedisConnector>>,
) -> std::io::Result<Option<EventsThread>> {
    let mut ca_reload = None;
    let mut key_reload = None;
    let target: Box<dyn Target> = match (redis, &config.events_url) {
        (Some(redis), _) => Box::new(stream::StreamTarget::new(
            Arc::clone(redis),
            config.events_maxlen,
        )),
        (None, Some(url)) => {
            let updates = config.events_ca_path.clone().map(|path| {
                let (reload, rx) = CaReload::new(path);
                ca_reload = Some(reload);
                rx
            });
            let key_updates = config.events_key_file.clone().map(|path| {
                let (reload, rx) = KeyReload::new(path);
                key_reload = Some(reload);
                rx
            });
            Box::new(http::PostTarget::new(
                url,
                config.events_key.as_deref(),
                &config.events_ca,
                updates,
                key_updates,
            ))
        }
        (None, None) => return Ok(None),
    };
    metrics.events.enabled.store(true, Relaxed);
    metrics.events.up.store(true, Relaxed);
    // A list channel bounded by the counts above: an array channel of `events_queue`
    // slots would take its whole size (1.5 MB by default) at startup.
    let (tx, rx) = crossbeam_channel::unbounded();
    let sink = EventSink {
        tx,
        capacity: config.events_queue as u64,
        lifecycle: config.lifecycle_events,
        node,
        metrics: Arc::clone(metrics),
    };
    let loss_said = Arc::new(AtomicBool::new(false));
    let runner = Runner {
        rx,
        target,
        metrics: Arc::clone(metrics),
        stop: Arc::clone(stop),
        backoff: BACKOFF_MIN,
        logged_down: false,
        drop_log: crate::log_gate::LogGate::new(DROP_LOG_EVERY),
        loss_said: Arc::clone(&loss_said),
    };
    let thread = std::thread::Builder::new()
        .name("throng-events".into())
        .spawn(move || runner.run())?;
    Ok(Some(EventsThread {
        sink,
        thread: Running { thread, loss_said },
        ca_reload,
        key_reload,
    }))
}

struct Runner {
    rx: Receiver<Event>,
    target: Box<dyn Target>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    backoff: Duration,
    logged_down: bool,
    /// Drops, logged once a minute.
    drop_log: crate::log_gate::LogGate,
    /// Shared with `Running`: the loss at a stop was logged.
    loss_said: Arc<AtomicBool>,
}

impl Runner {
    /// Delivers until every sink is gone (the shards have ended) or, after `stop`, until
    /// `FLUSH_AT_STOP` has passed.
    fn run(mut self) {
        let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
        let mut stop_at: Option<Instant> = None;
        loop {
            if stop_at.is_none() && self.stop.load(Relaxed) {
                stop_at = Some(Instant::now() + FLUSH_AT_STOP);
            }
            if stop_at.is_some_and(|at| Instant::now() >= at) {
                // Out of time with events still coming in (a steady upstream stream of
                // them would otherwise hold the process past the flush time).
                self.drop_at_stop(&mut batch);
                return;
            }
            if batch.is_empty() {
                match self.rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(e) => batch.push(e),
                    Err(RecvTimeoutError::Timeout) => {
                        if stop_at.is_some() {
                            return;
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            let mut bytes: usize = batch.iter().map(|e| e.0.len()).sum();
            while batch.len() < BATCH && bytes < BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(e) => {
                        bytes += e.0.len();
                        batch.push(e);
                    }
                    Err(_) => break,
                }
            }
            if !self.deliver(&mut batch, stop_at) {
                self.drop_at_stop(&mut batch);
                return;
            }
        }
    }

    /// Stopping and out of time: what `batch` holds and what is still queued is lost with
    /// the process, counted and logged.
    fn drop_at_stop(&mut self, batch: &mut Vec<Event>) {
        let held = batch.len();
        self.drop_front(batch, held, Dropped::Stopped, "");
        let mut rest: Vec<Event> = self.rx.try_iter().collect();
        let queued = rest.len();
        self.drop_front(&mut rest, queued, Dropped::Stopped, "");
        let dropped = held + queued;
        if dropped > 0 && !self.loss_said.swap(true, Relaxed) {
            tracing::warn!(
                dropped,
                "server stopped before the events upstream took every event"
            );
        }
    }

    /// The first `n` events of `batch` leave the queue.
    fn take_out(&self, batch: &mut Vec<Event>, n: usize) {
        let c = &self.metrics.events;
        let bytes: u64 = batch[..n].iter().map(|e| e.0.len() as u64).sum();
        c.queued_bytes.fetch_sub(bytes, Relaxed);
        c.queued.fetch_sub(n as u64, Relaxed);
        batch.drain(..n);
    }

    /// Whether the upstream takes other events while the first fails: the second, alone,
    /// when it is another session's (its order after the first does not matter); taken out
    /// of `batch` when it went through.
    fn probe(&mut self, batch: &mut Vec<Event>, until: Option<Instant>) -> bool {
        if batch.len() == 1 {
            // The batch may have been taken before anything else was queued.
            if let Ok(e) = self.rx.try_recv() {
                batch.push(e);
            }
        }
        let (Some(first), Some(second)) = (batch.first(), batch.get(1)) else {
            return false;
        };
        let sessions = (session_of(first), session_of(second));
        if !matches!(&sessions, (Some(a), Some(b)) if a != b) {
            return false;
        }
        if self.target.deliver(&batch[1..2], until).is_err() {
            return false;
        }
        let c = &self.metrics.events;
        c.delivered.fetch_add(1, Relaxed);
        c.queued_bytes.fetch_sub(batch[1].0.len() as u64, Relaxed);
        c.queued.fetch_sub(1, Relaxed);
        batch.remove(1);
        true
    }

    /// Drops the first `n` events of `batch` for `why` (the upstream's words, `error`):
    /// counted, and logged once a minute.
    fn drop_front(&mut self, batch: &mut Vec<Event>, n: usize, why: Dropped, error: &str) {
        if n == 0 {
            return;
        }
        let first = match why {
            Dropped::Failed => batch.first().map(describe).unwrap_or_default(),
            _ => String::new(),
        };
        self.take_out(batch, n);
        self.metrics.events.count_dropped(why, n as u64);
        if why == Dropped::Stopped {
            return;
        }
        let Some(held) = self.drop_log.fail(Instant::now()) else {
            return;
        };
        let target = self.target.describe();
        match why {
            Dropped::Refused => tracing::error!(
                %target, %error, events = n, held_back = held,
                "events upstream refused a batch; its events are dropped"
            ),
            _ => tracing::error!(
                %target, %error, event = %first, held_back = held,
                "events upstream failed an event every time it was sent alone; it is dropped"
            ),
        }
    }

    /// Delivers `batch`, in order, emptying it: retried with backoff while the upstream is
    /// unreachable; a failing batch is halved after `SPLIT_AFTER` tries, and one event that
    /// fails alone `EVENT_TRIES` times is dropped. False when the server stopped and the
    /// flush time ran out first (what is left stays in `batch`).
    fn deliver(&mut self, batch: &mut Vec<Event>, mut stop_at: Option<Instant>) -> bool {
        let metrics = Arc::clone(&self.metrics);
        let c = &metrics.events;
        // Events sent per try, from the front; failed tries at that size.
        let mut size = batch.len();
        let mut tries = 0;
        while !batch.is_empty() {
            if stop_at.is_none() && self.stop.load(Relaxed) {
                stop_at = Some(Instant::now() + FLUSH_AT_STOP);
            }
            if stop_at.is_some_and(|at| Instant::now() >= at) {
                return false;
            }
            let n = size.min(batch.len());
            let error = match self.target.deliver(&batch[..n], stop_at) {
                Ok(()) => {
                    c.delivered.fetch_add(n as u64, Relaxed);
                    c.up.store(true, Relaxed);
                    self.backoff = BACKOFF_MIN;
                    if std::mem::take(&mut self.logged_down) {
                        tracing::info!(target = %self.target.describe(), "events upstream reachable again");
                    }
                    self.take_out(batch, n);
                    // A size that was halved stays so until the event the upstream cannot
                    // take is found: back to the whole batch, the search would start over
                    // and the events before it go again and again.
                    tries = 0;
                    continue;
                }
                Err(DeliverError::Refused(e)) => {
                    self.drop_front(batch, n, Dropped::Refused, &e);
                    (size, tries) = (batch.len(), 0);
                    continue;
                }
                Err(DeliverError::Unreachable(e)) => e,
                Err(err @ (DeliverError::Failed(_) | DeliverError::TooSlow(_))) => {
                    let split_after = match err {
                        DeliverError::TooSlow(_) => 1,
                        _ => SPLIT_AFTER,
                    };
                    let e = err.to_string();
                    tries += 1;
                    // A delivery before this failure says nothing: the outage may have
                    // begun since. The next event, alone, says whether the upstream works.
                    let proven = n == 1 && tries >= EVENT_TRIES && self.probe(batch, stop_at);
                    if n == 1 && (proven || tries >= EVENT_TRIES_COLD) {
                        c.failures.fetch_add(1, Relaxed);
                        self.drop_front(batch, 1, Dropped::Failed, &e);
                        (size, tries) = (batch.len(), 0);
                        self.backoff = BACKOFF_MIN;
                        continue;
                    }
                    if n > 1 && tries >= split_after {
                        // One event may be what the upstream cannot take, or the batch too
                        // much for its time: the first half goes alone.
                        (size, tries) = (n.div_ceil(2), 0);
                        self.backoff = BACKOFF_MIN;
                    }
                    e
                }
            };
            c.failures.fetch_add(1, Relaxed);
            c.up.store(false, Relaxed);
            if !std::mem::replace(&mut self.logged_down, true) {
                tracing::warn!(
                    target = %self.target.describe(),
                    %error,
                    "cannot deliver events; retrying with backoff (client sends get \
                     `overloaded` once the queue is full)"
                );
            }
            if stop_at.is_none() && self.stop.load(Relaxed) {
                stop_at = Some(Instant::now() + FLUSH_AT_STOP);
            }
            if let Some(at) = stop_at {
                let now = Instant::now();
                if now >= at {
                    return false;
                }
                std::thread::sleep(self.backoff.min(at - now));
            } else {
                crate::broker::pause(self.backoff, &self.stop);
            }
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
        true
    }
}

/// An event's type, user and session (not its data).
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a str>,
    #[serde(borrow)]
    user: Option<&'a str>,
    #[serde(borrow)]
    session: Option<&'a str>,
}

/// The session an event is about.
fn session_of(e: &Event) -> Option<&str> {
    serde_json::from_str::<Head<'_>>(e.as_str()).ok()?.session
}

/// An event's type, user and session, for a log line (not its data).
fn describe(e: &Event) -> String {
    match serde_json::from_str::<Head<'_>>(e.as_str()) {
        Ok(h) => format!(
            "{} of user {:?}, session {}, {} bytes",
            h.kind.unwrap_or("?"),
            h.user.unwrap_or("?"),
            h.session.unwrap_or("?"),
            e.as_str().len()
        ),
        Err(_) => format!("{} bytes", e.as_str().len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_json_object_each() {
        let v = |e: Event| serde_json::from_str::<serde_json::Value>(e.as_str()).unwrap();
        assert_eq!(
            v(encode(
                "send",
                "al\"ice",
                "s1",
                "n1",
                5,
                Detail::Data(r#"{"a":[1]}"#)
            )),
            serde_json::json!({"type":"send","user":"al\"ice","session":"s1","node":"n1","ts":5,"data":{"a":[1]}})
        );
        assert_eq!(
            v(encode("disconnect", "u", "s", "n", 6, Detail::Code(4002))),
            serde_json::json!({"type":"disconnect","user":"u","session":"s","node":"n","ts":6,"code":4002})
        );
        assert_eq!(
            v(encode(
                "subscribe",
                "u",
                "s",
                "n",
                7,
                Detail::Topic("room:1")
            )),
            serde_json::json!({"type":"subscribe","user":"u","session":"s","node":"n","ts":7,"topic":"room:1"})
        );
        assert_eq!(
            v(encode("connect", "u", "s", "n", 8, Detail::None)),
            serde_json::json!({"type":"connect","user":"u","session":"s","node":"n","ts":8})
        );
    }
}
