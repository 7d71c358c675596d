//! The ingress thread: a `BaseConsumer` in the push topic's group, woken through a mio
//! waker by the consumer's non-empty callback and by the push API's answers.
//!
//! Each assigned partition keeps the records read and not yet taken, in order. At most one
//! batch per partition is at the push API at a time, so a refusal (shard queues full)
//! can be retried from the refused record without reordering, `RETRY_AFTER` later. Invalid
//! records at a partition's front go to the DLQ without waiting (see `dlq`); the records
//! behind them go once the broker confirmed the copies. The offsets of done records go to
//! librdkafka's offset store, and librdkafka commits them (asynchronously, every
//! `COMMIT_EVERY_MS`, when partitions are revoked and at close), counting an offset
//! committed only once the broker took it, and committing again what failed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use mio::{Events, Poll, Token, Waker};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::client_log;
use super::dlq::{Dlq, Invalid};
use super::partition::{should_pause, DlqWrite, Partition, Record, WriteState};
use crate::api::{parse_push, ParsedPush};
use crate::command::{IngressAnswer, IngressBatch};
use crate::config::{KafkaConfig, MAX_API_BODY_BYTES};
use crate::log_gate::LogGate;
use crate::metrics::Metrics;

/// The waker's token.
pub(super) const WAKER: Token = Token(0);
/// Most records in one batch to the push API.
const BATCH: usize = 512;
// Over all partitions the bound is `kafka_max_buffered_bytes` (128 MiB by default): the
// bound for the process (with per-partition bounds alone, a node assigned 100 partitions
// could hold 6.4 GiB). Reading stops at the record that reaches it, and the partitions
// are paused before the next read, so it is passed by at most one record.
/// Most of librdkafka's queue of prefetched records, for the whole consumer, in KiB (its
/// default); below it, the queue gets `kafka_max_buffered_bytes` too (a fetch may pass it
/// by one fetch's size).
const PREFETCH_KBYTES_MAX: usize = 65536;
/// Most time between the consumer's heartbeats to its group (librdkafka's default); a
/// short session timeout heartbeats three times within it.
const HEARTBEAT_MAX: Duration = Duration::from_secs(3);
/// librdkafka's default `max.poll.interval.ms`.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(300);
/// After a refusal, how long a partition waits before its records go again.
const RETRY_AFTER: Duration = Duration::from_millis(50);
/// How often librdkafka commits the stored offsets, in milliseconds.
const COMMIT_EVERY_MS: &str = "200";
/// How often librdkafka reports its statistics (the lag metrics, and whether the
/// consumer reaches its brokers), in milliseconds.
const STATS_EVERY_MS: &str = "5000";
/// Longest wait of a fetch for new records: pushes are latency-sensitive, and a broker
/// that holds a fetch until this passes would add it to every push.
const FETCH_WAIT_MS: &str = "10";
/// The longest wait for an event.
const TICK: Duration = Duration::from_millis(100);
/// The longest wait for an event while DLQ writes are in flight (their reports wake
/// nothing: they are polled).
const DLQ_TICK: Duration = Duration::from_millis(5);
/// Most records taken from the consumer per loop turn.
const READ_BUDGET: usize = 4096;
/// Polls in a row that return nothing before a read takes the consumer's queue for empty:
/// a poll that served an event (a commit's answer every `COMMIT_EVERY_MS`, a rebalance,
/// statistics) returns nothing too, with records possibly behind it, and librdkafka
/// wakes the loop only when its queue goes from empty to not empty.
const EMPTY_POLLS: usize = 4;
/// Most DLQ writes one partition starts per loop turn.
const DLQ_RUN: usize = 64;
/// A failing DLQ or commit is logged once, then at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// At stop, the least time the last DLQ writes and the close (with its commit) get,
/// whatever `shutdown_grace_ms`.
const MIN_FINISH: Duration = Duration::from_secs(1);
/// At stop, each wait for DLQ reports.
const FINISH_POLL: Duration = Duration::from_millis(20);
/// At start, how long the brokers may take to say whether the DLQ topic exists.
const DLQ_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The ingress's end of its link to the push API.
pub(super) struct ApiLink {
    /// Batches to the API.
    pub batches: Sender<IngressBatch>,
    /// Its answers.
    pub answers: Receiver<IngressAnswer>,
    /// Wakes the API thread.
    pub waker: Arc<Waker>,
}

/// When the ingress stops: once `flag` is set, taking at most `grace` then
/// (`shutdown_grace_ms`, at least `MIN_FINISH`).
pub(super) struct Stop {
    /// Set when the server stops.
    pub flag: Arc<AtomicBool>,
    /// How long the last DLQ writes and the close may take.
    pub grace: Duration,
    /// Stop at the drain's start too (standalone): a record taken during the drain would
    /// go to a server about to exit, for users whose sessions already went to the next
    /// one (review s18d: 356 of 6,400 records lost across a deploy). Leaving the group
    /// then hands the partitions to the next server at once. In cluster mode pushes go
    /// through Redis to wherever the users are, so the node reads on.
    pub at_drain: bool,
}

/// What the consumer's callbacks and the loop share (both run on the ingress thread, or
/// on the thread that closes the consumer; the lock is never contended).
struct Shared {
    partitions: HashMap<i32, Partition>,
    /// Failed commits, logged once a minute.
    commit_log: LogGate,
    /// Client and consumer errors other than a lost broker, each code logged once a
    /// minute (one gate for all would let a harmless error hide a serious one).
    error_logs: HashMap<i32, LogGate>,
    /// The current outage was logged (from the first sign of it, at start too, until the
    /// consumer reaches its brokers again).
    outage_said: bool,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            partitions: HashMap::new(),
            commit_log: LogGate::new(LOG_EVERY),
            error_logs: HashMap::new(),
            outage_said: false,
        }
    }
}

impl Shared {
    /// The consumer cannot reach its brokers (or its group's coordinator): `up` is 0, and
    /// the outage is logged once, whichever of librdkafka's signals comes first.
    fn outage(&mut self, metrics: &Metrics, reason: &str) {
        metrics.kafka.up.store(false, Relaxed);
        if !std::mem::replace(&mut self.outage_said, true) {
            tracing::warn!(%reason, "Kafka brokers unreachable; the consumer reconnects by itself");
        }
    }

    /// Logs a client or consumer error: a failed broker connection at debug (an outage
    /// is said once, by `outage`), others once a minute per error code.
    fn log_error(&mut self, error: &KafkaError, reason: &str) {
        if client_log::is_transport(error) {
            tracing::debug!(%error, %reason, "Kafka broker connection failed");
            return;
        }
        let code = error.rdkafka_error_code().map_or(i32::MIN, |c| c as i32);
        let gate = self
            .error_logs
            .entry(code)
            .or_insert_with(|| LogGate::new(LOG_EVERY));
        if let Some(held) = gate.fail(Instant::now()) {
            tracing::warn!(%error, %reason, held_back = held, "Kafka client error");
        }
    }
}

/// The consumer's callbacks: rebalances, commits, statistics and client errors.
struct Context {
    topic: String,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<Metrics>,
}

impl ClientContext for Context {
    /// From librdkafka's own statistics (every `STATS_EVERY_MS`, on this thread, with no
    /// request of its own): lag per partition (the high watermark minus the committed
    /// offset), and whether the consumer reaches its brokers, which an idle topic shows
    /// no other way.
    fn stats(&self, stats: rdkafka::Statistics) {
        // Up: a broker connected, the group's coordinator found, and the topic known.
        let up = stats.brokers.values().any(|b| b.state == "UP")
            && stats.cgrp.as_ref().is_some_and(|g| g.state == "up")
            && stats.topics.contains_key(&self.topic);
        if up {
            came_up(&self.metrics, &self.shared);
        } else if self.metrics.kafka.up.load(Relaxed) {
            if let Ok(mut shared) = self.shared.lock() {
                shared.outage(
                    &self.metrics,
                    "no broker or no group coordinator in its statistics",
                );
            }
        }
        let Some(topic) = stats.topics.get(&self.topic) else {
            return;
        };
        let mut lag: Vec<(i32, i64)> = topic
            .partitions
            .iter()
            .filter(|(&p, _)| p >= 0)
            .filter(|(p, _)| {
                self.shared
                    .lock()
                    .is_ok_and(|s| s.partitions.contains_key(p))
            })
            .map(|(&p, part)| (p, part.consumer_lag.max(0)))
            .collect();
        lag.sort_unstable();
        if let Ok(mut l) = self.metrics.kafka.lag.lock() {
            *l = lag;
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let Ok(mut shared) = self.shared.lock() else {
            return;
        };
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            shared.outage(&self.metrics, reason);
        } else {
            shared.log_error(&error, reason);
        }
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        client_log::librdkafka(level, facility, message);
    }
}

impl ConsumerContext for Context {
    /// Before partitions go to another member: store the offsets of what was done, which
    /// librdkafka commits as it unassigns them, holding the group's next assignment until
    /// the commit is answered, so the new owner starts right after it (records still at the
    /// push API may then come twice: push ids make that invisible to clients). Nothing here
    /// waits for the broker.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let Ok(mut shared) = self.shared.lock() else {
            return;
        };
        // Lost partitions may have another owner already: their offsets are not ours.
        let lost = consumer.assignment_lost();
        let mut store = TopicPartitionList::new();
        for e in tpl.elements() {
            if let Some(p) = shared.partitions.remove(&e.partition()) {
                if let (false, Some(next)) = (lost, p.progress.to_store()) {
                    let _ = store.add_partition_offset(
                        &self.topic,
                        e.partition(),
                        Offset::Offset(next),
                    );
                }
            }
        }
        if store.count() > 0 {
            if let Err(e) = consumer.store_offsets(&store) {
                tracing::warn!(error = %e, "could not store offsets before partitions were revoked");
            }
        }
        self.metrics
            .kafka
            .assigned
            .store(shared.partitions.len() as u64, Relaxed);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let n = {
            let Ok(mut shared) = self.shared.lock() else {
                return;
            };
            for e in tpl.elements() {
                shared.partitions.entry(e.partition()).or_default();
            }
            shared.partitions.len()
        };
        // librdkafka keeps a partition paused across its revoke and a new assignment, and
        // its `Partition` here starts unpaused: resume them so both agree (resuming a
        // partition that is not paused does nothing).
        if tpl.count() > 0 {
            if let Err(e) = consumer.resume(tpl) {
                tracing::warn!(error = %e, "could not resume the assigned Kafka partitions");
            }
        }
        came_up(&self.metrics, &self.shared);
        self.metrics.kafka.assigned.store(n as u64, Relaxed);
        tracing::info!(partitions = n, "Kafka partitions assigned");
    }

    /// A commit's answer. librdkafka counts an offset committed only once the broker took
    /// it, and commits again what was not: here it is counted and, when it failed, logged.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let failure = result.err().map(|e| e.to_string()).or_else(|| {
            offsets
                .elements()
                .iter()
                .find_map(|e| e.error().err().map(|e| e.to_string()))
        });
        let Ok(mut shared) = self.shared.lock() else {
            return;
        };
        match failure {
            Some(error) => {
                self.metrics.kafka.commit_failures.fetch_add(1, Relaxed);
                if let Some(held) = shared.commit_log.fail(Instant::now()) {
                    tracing::warn!(%error, held_back = held, "Kafka offset commit failed; librdkafka commits the offsets again");
                }
            }
            None => {
                self.metrics.kafka.commits.fetch_add(1, Relaxed);
                if shared.commit_log.recover() {
                    tracing::info!("Kafka offset commits go through again");
                }
            }
        }
    }
}

/// The ingress thread's state.
pub(super) struct Ingress {
    consumer: BaseConsumer<Context>,
    dlq: Dlq,
    topic: String,
    poll: Poll,
    api: ApiLink,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<Metrics>,
    stop: Stop,
    /// Names the next batch to the API, or DLQ write.
    next_id: u64,
    /// `kafka_max_buffered_bytes`.
    max_buffered: usize,
    /// Failed DLQ writes, logged once a minute.
    dlq_log: LogGate,
    /// The last read stopped before the consumer's queue was empty (its budget, or a
    /// bound reached): the next turn reads again without waiting for a wake-up, which
    /// librdkafka gives only when its queue goes from empty to not empty.
    unread: bool,
}

impl Ingress {
    /// A consumer in `config.group` subscribed to `config.topic`, woken by `waker`.
    pub(super) fn new(
        config: &KafkaConfig,
        node: &str,
        poll: Poll,
        waker: Arc<Waker>,
        api: ApiLink,
        metrics: Arc<Metrics>,
        stop: Stop,
    ) -> Result<Ingress, KafkaError> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let context = Context {
            topic: config.topic.clone(),
            shared: Arc::clone(&shared),
            metrics: Arc::clone(&metrics),
        };
        let mut consumer: BaseConsumer<Context> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group)
            .set("client.id", format!("throng-{node}"))
            // Offsets are stored by hand, only past what the shards took; librdkafka
            // commits what is stored.
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", COMMIT_EVERY_MS)
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", FETCH_WAIT_MS)
            .set(
                "queued.max.messages.kbytes",
                prefetch_kbytes(config.max_buffered_bytes).to_string(),
            )
            .set(
                "session.timeout.ms",
                config.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                heartbeat(config.session_timeout).as_millis().to_string(),
            )
            .set(
                "max.poll.interval.ms",
                max_poll_interval(config.session_timeout)
                    .as_millis()
                    .to_string(),
            )
            .set("statistics.interval.ms", STATS_EVERY_MS)
            .create_with_context(context)?;
        consumer.set_nonempty_callback(move || {
            let _ = waker.wake();
        });
        consumer.subscribe(&[&config.topic])?;
        let dlq = Dlq::new(&config.brokers, &config.topic)?;
        Ok(Ingress {
            consumer,
            dlq,
            topic: config.topic.clone(),
            poll,
            api,
            shared,
            metrics,
            stop,
            next_id: 1,
            max_buffered: config.max_buffered_bytes,
            dlq_log: LogGate::new(LOG_EVERY),
            unread: false,
        })
    }

    /// Runs until the server stops, then closes the consumer, which commits what was done.
    pub(super) fn run(mut self) {
        self.check_dlq_topic();
        let mut events = Events::with_capacity(8);
        while !self.stop.flag.load(Relaxed) {
            if self.drain_stops() {
                tracing::info!(
                    "draining: the Kafka ingress takes no more records and leaves its group, \
                     so the next server reads them"
                );
                break;
            }
            let wait = self.next_wait();
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "Kafka ingress poll failed; it stops");
                    break;
                }
            }
            self.read();
            self.take_answers();
            self.take_dlq_reports(Duration::ZERO);
            // A drain that began during this turn's wait: what was read is left to the
            // next server, not sent as one more batch.
            if !self.drain_stops() {
                self.dispatch();
            }
            self.store();
        }
        self.finish();
    }

    /// Whether a drain has begun and this ingress stops at its start (standalone).
    fn drain_stops(&self) -> bool {
        self.stop.at_drain && self.metrics.draining.load(Relaxed)
    }

    /// How long the loop may wait for an event: until the next partition's retry is due,
    /// and not long while DLQ reports are awaited (they wake nothing: they are polled).
    fn next_wait(&self) -> Duration {
        if self.unread {
            return Duration::ZERO;
        }
        let tick = if self.dlq.in_flight() > 0 {
            DLQ_TICK
        } else {
            TICK
        };
        let now = Instant::now();
        self.shared
            .lock()
            .ok()
            .and_then(|s| s.partitions.values().filter_map(|p| p.retry_at).min())
            .map_or(tick, |t| tick.min(t.saturating_duration_since(now)))
    }

    /// Says at start when `<topic>.dlq` is missing: invalid records would wait for it.
    fn check_dlq_topic(&self) {
        match self.dlq.topic_exists(DLQ_CHECK_TIMEOUT) {
            Some(false) => tracing::error!(
                topic = self.dlq.topic(),
                "the Kafka DLQ topic does not exist: create it. Until then an invalid record \
                 stops its partition (it waits for the DLQ; throng_kafka_dlq_failures_total counts the tries)"
            ),
            Some(true) => {}
            None => tracing::debug!(
                topic = self.dlq.topic(),
                "could not check that the Kafka DLQ topic exists: no broker answered"
            ),
        }
    }

    /// Takes what the consumer has (serving rebalances, commits and errors on the way),
    /// up to the record that makes its partition, or all of them, reach their bound:
    /// `dispatch` pauses them before the next read, so the bound is passed by at most one
    /// record. (librdkafka drops what it prefetched of a partition when it is paused, and
    /// fetches it again from the next offset when it resumes.) Sets the pending-bytes
    /// gauge to what is held then.
    fn read(&mut self) {
        let total = self.read_records();
        self.metrics
            .kafka
            .pending_bytes
            .store(total as u64, Relaxed);
    }

    /// `read`'s loop; the bytes held after it.
    fn read_records(&mut self) -> usize {
        let mut total: usize = self
            .shared
            .lock()
            .map_or(0, |s| s.partitions.values().map(|p| p.pending_bytes).sum());
        self.unread = true;
        let mut empty_polls = 0;
        for _ in 0..READ_BUDGET {
            match self.consumer.poll(Duration::ZERO) {
                // Also what a poll says when it served an event (a commit's answer, a
                // rebalance, statistics) that may have records behind it.
                None => {
                    empty_polls += 1;
                    if empty_polls == EMPTY_POLLS {
                        self.unread = false;
                        return total;
                    }
                }
                Some(Err(e)) => {
                    // librdkafka puts its client errors on the consumer's queue too.
                    if let Ok(mut shared) = self.shared.lock() {
                        shared.log_error(&e, "on the consumer's queue");
                    }
                    return total;
                }
                Some(Ok(m)) => {
                    empty_polls = 0;
                    self.metrics.kafka.consumed.fetch_add(1, Relaxed);
                    let record = Record {
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    };
                    let partition = m.partition();
                    let Ok(mut shared) = self.shared.lock() else {
                        self.unread = false;
                        return total;
                    };
                    // A record of a partition revoked meanwhile is the new owner's.
                    if let Some(p) = shared.partitions.get_mut(&partition) {
                        total += record.size();
                        p.push(record);
                        if should_pause(p, total, self.max_buffered) {
                            return total;
                        }
                    }
                }
            }
        }
        total
    }

    /// Applies the push API's answers: taken records are done; after a refusal the rest
    /// waits and goes again, in order.
    /// Applies the API's answers; true once the API is gone (nothing more can come).
    fn take_answers(&mut self) -> bool {
        let Ok(mut shared) = self.shared.lock() else {
            return false;
        };
        loop {
            let a = match self.api.answers.try_recv() {
                Ok(a) => a,
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            };
            let Some(p) = shared
                .partitions
                .values_mut()
                .find(|p| p.in_flight.is_some_and(|(id, _)| id == a.id))
            else {
                // Its partition was revoked meanwhile.
                continue;
            };
            p.in_flight = None;
            p.taken(a.accepted);
            self.metrics
                .kafka
                .delivered
                .fetch_add(a.accepted as u64, Relaxed);
            if let Some(why) = a.refused {
                self.metrics.kafka.refused.fetch_add(1, Relaxed);
                tracing::debug!(reason = %why, "push API refused part of a Kafka batch; retrying");
                p.retry_at = Some(Instant::now() + RETRY_AFTER);
            }
        }
    }

    /// Applies the DLQ's delivery reports (waiting up to `wait` for the first): confirmed
    /// copies make their records done, front first; a copy too large goes again cut
    /// further; any other failure makes its partition wait, and goes again later.
    fn take_dlq_reports(&mut self, wait: Duration) {
        let reports = self.dlq.poll(wait);
        self.metrics
            .kafka
            .dlq_in_flight
            .store(self.dlq.in_flight() as u64, Relaxed);
        if reports.is_empty() {
            return;
        }
        let now = Instant::now();
        let Ok(mut shared) = self.shared.lock() else {
            return;
        };
        for r in reports {
            // Its partition may have been revoked (and even assigned again) meanwhile.
            let Some(p) = shared.partitions.get_mut(&r.partition) else {
                continue;
            };
            if let Some(error) = p.dlq_report(r.id, r.result, now) {
                self.metrics.kafka.dlq_failures.fetch_add(1, Relaxed);
                if let Some(held) = self.dlq_log.fail(now) {
                    tracing::warn!(
                        %error,
                        partition = r.partition,
                        held_back = held,
                        "could not write an invalid Kafka record to the DLQ; its partition \
                         waits and the write is tried again"
                    );
                }
            }
        }
        let mut done = 0;
        for p in shared.partitions.values_mut() {
            done += p.finish_dlq();
        }
        self.metrics.kafka.dlq.fetch_add(done as u64, Relaxed);
        if !shared.partitions.values().any(|p| p.stalled) && self.dlq_log.recover() {
            tracing::info!(
                topic = self.dlq.topic(),
                "the Kafka DLQ takes records again"
            );
        }
    }

    /// Sends each ready partition's next records to the push API, or its invalid front
    /// records to the DLQ. Pauses and resumes partitions in the consumer for backpressure.
    fn dispatch(&mut self) {
        let now = Instant::now();
        let shared = Arc::clone(&self.shared);
        let Ok(mut shared) = shared.lock() else {
            return;
        };
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        let mut sent = false;
        let mut paused = 0;
        let total_bytes: usize = shared.partitions.values().map(|p| p.pending_bytes).sum();
        self.metrics
            .kafka
            .pending_bytes
            .store(total_bytes as u64, Relaxed);
        for (&partition, p) in shared.partitions.iter_mut() {
            if p.retry_at.is_some_and(|t| now >= t) {
                p.retry_at = None;
            }
            if p.in_flight.is_none() && p.retry_at.is_none() {
                if p.at_dlq.is_empty() {
                    if let Some(batch) = self.next_batch(p) {
                        match self.api.batches.try_send(batch) {
                            Ok(()) => sent = true,
                            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                                // The API is behind: the records stay, in order.
                                p.in_flight = None;
                            }
                        }
                    }
                }
                if p.in_flight.is_none() {
                    self.send_to_dlq(partition, p);
                }
            }
            let want_paused = should_pause(p, total_bytes, self.max_buffered);
            if want_paused != p.paused {
                let list = if want_paused { &mut pause } else { &mut resume };
                let _ = list.add_partition(&self.topic, partition);
                p.paused = want_paused;
            }
            paused += u64::from(p.paused);
        }
        drop(shared);
        if pause.count() > 0 {
            if let Err(e) = self.consumer.pause(&pause) {
                tracing::warn!(error = %e, "could not pause Kafka partitions");
            }
        }
        if resume.count() > 0 {
            if let Err(e) = self.consumer.resume(&resume) {
                tracing::warn!(error = %e, "could not resume Kafka partitions");
            }
        }
        self.metrics.kafka.paused.store(paused, Relaxed);
        self.metrics
            .kafka
            .dlq_in_flight
            .store(self.dlq.in_flight() as u64, Relaxed);
        if sent {
            let _ = self.api.waker.wake();
        }
    }

    /// The partition's next batch: its valid records from the front, up to `BATCH`; none
    /// when the front record is invalid (it goes to the DLQ first).
    fn next_batch(&mut self, p: &mut Partition) -> Option<IngressBatch> {
        let mut pushes: Vec<ParsedPush> = Vec::new();
        while pushes.len() < BATCH {
            let Some(r) = p.pending.get(pushes.len()) else {
                break;
            };
            match parse_record(&r.value) {
                Ok(push) => pushes.push(push),
                // Goes to the DLQ after the valid ones before it are taken.
                Err(_) => break,
            }
        }
        if pushes.is_empty() {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        p.in_flight = Some((id, pushes.len()));
        Some(IngressBatch { id, pushes })
    }

    /// Writes the partition's invalid front records to the DLQ: again those that failed,
    /// once every write has its report, or else the next ones, up to the first valid record.
    fn send_to_dlq(&mut self, partition: i32, p: &mut Partition) {
        if p.dlq_retry_due() {
            for i in 0..p.at_dlq.len() {
                if p.at_dlq[i].state != WriteState::Failed {
                    continue;
                }
                let Some(r) = p.pending.get(i) else {
                    return;
                };
                let id = self.next_id;
                let error = parse_record(&r.value).err().unwrap_or_default();
                let invalid = invalid(r, &error, partition);
                if !self.dlq.send(id, &invalid, p.at_dlq[i].cut) {
                    return;
                }
                self.next_id += 1;
                p.at_dlq[i].id = id;
                p.at_dlq[i].state = WriteState::InFlight;
            }
            return;
        }
        if p.at_dlq.iter().any(|w| w.state == WriteState::Failed) {
            // Waits for the rest of its reports before going again.
            return;
        }
        for _ in 0..DLQ_RUN {
            let Some(r) = p.pending.get(p.at_dlq.len()) else {
                return;
            };
            let Err(error) = parse_record(&r.value) else {
                return;
            };
            let id = self.next_id;
            if !self.dlq.send(id, &invalid(r, &error, partition), 0) {
                return;
            }
            self.next_id += 1;
            p.at_dlq.push_back(DlqWrite {
                id,
                state: WriteState::InFlight,
                cut: 0,
            });
        }
    }

    /// Hands each partition's offset past its done records to the offset store, when it
    /// moved. The lock is not held across the call into librdkafka.
    fn store(&mut self) {
        let mut tpl = TopicPartitionList::new();
        let mut moved = Vec::new();
        if let Ok(shared) = self.shared.lock() {
            for (&partition, p) in &shared.partitions {
                if let Some(next) = p.progress.to_store() {
                    let _ = tpl.add_partition_offset(&self.topic, partition, Offset::Offset(next));
                    moved.push((partition, next));
                }
            }
        }
        if moved.is_empty() {
            return;
        }
        match self.consumer.store_offsets(&tpl) {
            Ok(()) => {
                if let Ok(mut shared) = self.shared.lock() {
                    for (partition, next) in moved {
                        if let Some(p) = shared.partitions.get_mut(&partition) {
                            p.progress.stored(next);
                        }
                    }
                }
            }
            // A partition revoked meanwhile: its next owner starts from its last commit.
            Err(e) => tracing::debug!(error = %e, "could not store Kafka offsets"),
        }
    }

    /// At stop: within `shutdown_grace_ms` (at least `MIN_FINISH`), waits for the DLQ's
    /// reports and stores the offsets of what was done, then closes the consumer, which
    /// commits them and leaves the group; with the brokers unreachable the close is left
    /// to finish by itself, rather than hold the process up to `session.timeout.ms`.
    fn finish(mut self) {
        let deadline = Instant::now() + self.stop.grace.max(MIN_FINISH);
        // What the API took is done once it answers: the answers to batches it was handed
        // are waited for too, with the DLQ's reports, until the API is gone (it stops on
        // the same flag, and answers nothing after) or the grace is over. A batch never
        // answered was not taken: its records come again after a restart.
        loop {
            let api_gone = self.take_answers();
            let at_api = !api_gone
                && self
                    .shared
                    .lock()
                    .is_ok_and(|s| s.partitions.values().any(|p| p.in_flight.is_some()));
            if (!at_api && self.dlq.in_flight() == 0) || Instant::now() >= deadline {
                break;
            }
            if self.dlq.in_flight() > 0 {
                self.take_dlq_reports(FINISH_POLL);
            } else {
                std::thread::sleep(FINISH_POLL);
            }
        }
        self.store();
        let Ingress { consumer, dlq, .. } = self;
        close(consumer, deadline);
        // Drops what it holds within 0.5 s (rdkafka's flush on drop).
        drop(dlq);
    }
}

/// The consumer reaches its brokers (partitions were assigned, or its statistics say
/// so): said once when it had not.
fn came_up(metrics: &Metrics, shared: &Mutex<Shared>) {
    if !metrics.kafka.up.swap(true, Relaxed) {
        if let Ok(mut shared) = shared.lock() {
            shared.outage_said = false;
            shared.error_logs.clear();
        }
        tracing::info!("Kafka consumer reaches its brokers");
    }
}

/// librdkafka's prefetch queue, in KiB, for a node that holds at most `max_buffered`
/// bytes of records.
fn prefetch_kbytes(max_buffered: usize) -> usize {
    (max_buffered >> 10).clamp(1, PREFETCH_KBYTES_MAX)
}

/// librdkafka's `max.poll.interval.ms` for a session timeout: its default, 5 minutes (the
/// loop polls every 100 ms at most), or the session timeout when longer, which
/// librdkafka requires.
fn max_poll_interval(session: Duration) -> Duration {
    session.max(MAX_POLL_INTERVAL)
}

/// The heartbeat interval for a session timeout: a third of it, at most `HEARTBEAT_MAX`.
fn heartbeat(session: Duration) -> Duration {
    (session / 3).min(HEARTBEAT_MAX)
}

/// Closes the consumer (leaving its group) on a thread of its own, waiting for it until
/// `deadline`: with the brokers unreachable the close waits for the group's coordinator,
/// and the process need not.
fn close(consumer: BaseConsumer<Context>, deadline: Instant) {
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    let closing = std::thread::Builder::new()
        .name("throng-kafka-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = tx.send(());
        });
    if let Err(e) = closing {
        // The consumer was dropped with the closure, here.
        tracing::warn!(error = %e, "could not start a thread to close the Kafka consumer");
        return;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if rx.recv_timeout(left).is_err() {
        tracing::warn!(
            "the Kafka consumer did not commit and leave its group in time; it is left to \
             close by itself, and records taken since the last commit may be delivered again \
             after a restart"
        );
    }
}

/// The DLQ's view of record `r`, invalid for `error`.
fn invalid<'a>(r: &'a Record, error: &'a str, partition: i32) -> Invalid<'a> {
    Invalid {
        key: r.key.as_deref(),
        value: &r.value,
        error,
        partition,
        offset: r.offset,
    }
}

/// A record's push, or why it is invalid (its DLQ header).
fn parse_record(value: &[u8]) -> Result<ParsedPush, String> {
    if value.is_empty() {
        return Err("empty record: the value must be one push object".into());
    }
    if value.len() > MAX_API_BODY_BYTES {
        return Err(format!(
            "record of {} bytes: a push object is at most {MAX_API_BODY_BYTES}",
            value.len()
        ));
    }
    parse_push(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefetch_queue_follows_the_buffer_bound_up_to_librdkafka_s_default() {
        assert_eq!(prefetch_kbytes(1 << 20), 1024);
        assert_eq!(prefetch_kbytes(128 << 20), PREFETCH_KBYTES_MAX);
        assert_eq!(prefetch_kbytes(usize::MAX), PREFETCH_KBYTES_MAX);
    }

    #[test]
    fn the_poll_interval_is_never_below_the_session_timeout() {
        assert_eq!(
            max_poll_interval(Duration::from_secs(10)),
            MAX_POLL_INTERVAL
        );
        let hour = Duration::from_secs(3600);
        assert_eq!(max_poll_interval(hour), hour);
    }

    #[test]
    fn heartbeats_come_three_times_a_session_at_most_every_three_seconds() {
        assert_eq!(heartbeat(Duration::from_secs(10)), HEARTBEAT_MAX);
        assert_eq!(heartbeat(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(heartbeat(Duration::from_secs(1)).as_millis(), 333);
    }
}
