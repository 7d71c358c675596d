//! The ingress thread: a `BaseConsumer` in the push topic's group, woken through a mio
//! waker by the consumer's non-empty callback and by the push API's answers.
//!
//! Each assigned partition keeps the records read and not yet taken, in order. At most one
//! batch per partition is at the push API at a time, so a refusal (shard queues full)
//! can be retried from the refused record without reordering: the partition pauses for
//! `RETRY_AFTER` and is paused in the consumer too, so librdkafka stops fetching it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::{Events, Poll, Token, Waker};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::dlq::Dlq;
use super::offsets::Progress;
use crate::api::{parse_push, ParsedPush};
use crate::command::{IngressAnswer, IngressBatch};
use crate::config::{KafkaConfig, MAX_API_BODY_BYTES};
use crate::metrics::Metrics;

/// The waker's token.
pub(super) const WAKER: Token = Token(0);
/// Most records in one batch to the push API.
const BATCH: usize = 512;
/// Records read and not yet taken, per partition, above which it is paused.
const PENDING_HIGH: usize = 10_000;
/// Bytes of records read and not yet taken, per partition, above which it is paused
/// (10,000 records of up to 1 MiB would otherwise be 10 GiB).
const PENDING_BYTES_HIGH: usize = 64 << 20;
// Over all partitions the bound is `kafka_max_buffered_bytes` (128 MiB by default): the
// bound for the process (with per-partition bounds alone, a node assigned 100 partitions
// could hold 6.4 GiB). It may be passed by what one loop turn reads, which librdkafka's
// prefetch queue bounds (`PREFETCH_KBYTES`).
/// librdkafka's queue of prefetched records, for the whole consumer (its default, set
/// here so the bound above is written down; a fetch may pass it by one fetch's size).
const PREFETCH_KBYTES: &str = "65536";
/// After a refusal, how long a partition waits before its records go again.
const RETRY_AFTER: Duration = Duration::from_millis(50);
/// How often offsets are committed.
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// How often librdkafka reports its statistics (the lag metrics), in milliseconds.
const STATS_EVERY_MS: &str = "5000";
/// Longest wait of a fetch for new records: pushes are latency-sensitive, and a broker
/// that holds a fetch until this passes would add it to every push.
const FETCH_WAIT_MS: &str = "10";
/// The longest wait for an event.
const TICK: Duration = Duration::from_millis(100);
/// Most records taken from the consumer per loop turn.
const READ_BUDGET: usize = 4096;

/// The ingress's end of its link to the push API.
pub(super) struct ApiLink {
    /// Batches to the API.
    pub batches: Sender<IngressBatch>,
    /// Its answers.
    pub answers: Receiver<IngressAnswer>,
    /// Wakes the API thread.
    pub waker: Arc<Waker>,
}

/// A record read and not yet taken.
struct Record {
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
}

/// One assigned partition.
#[derive(Default)]
struct Partition {
    pending: VecDeque<Record>,
    /// Bytes of `pending`'s keys and values.
    pending_bytes: usize,
    progress: Progress,
    /// The batch at the push API: its id and how many records it holds.
    in_flight: Option<(u64, usize)>,
    /// After a refusal: not before then.
    retry_at: Option<Instant>,
    /// Paused in the consumer.
    paused: bool,
}

impl Record {
    fn size(&self) -> usize {
        self.value.len() + self.key.as_ref().map_or(0, Vec::len)
    }
}

/// Whether partition `p` should be paused in the consumer: while it waits to retry a
/// refused batch, while it holds too many records or bytes read and not yet taken, and
/// while all partitions together hold `total_bytes` at or above the process's bound
/// `max_total` (which bounds one partition too when it is the smaller).
fn should_pause(waiting: bool, p: &Partition, total_bytes: usize, max_total: usize) -> bool {
    waiting
        || p.pending.len() >= PENDING_HIGH
        || p.pending_bytes >= PENDING_BYTES_HIGH.min(max_total)
        || total_bytes >= max_total
}

impl Partition {
    /// Takes the oldest pending record.
    fn pop_front(&mut self) -> Option<Record> {
        let r = self.pending.pop_front()?;
        self.pending_bytes -= r.size();
        Some(r)
    }
}

/// What the rebalance callbacks and the loop share (both run on the ingress thread; the
/// lock is never contended).
#[derive(Default)]
struct Shared {
    partitions: HashMap<i32, Partition>,
}

/// The consumer's callbacks: rebalances and client errors.
struct Context {
    topic: String,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<Metrics>,
}

impl ClientContext for Context {
    /// Lag per partition from librdkafka's own statistics (every `STATS_EVERY_MS`, on this
    /// thread, with no request of its own): the high watermark minus the committed offset.
    fn stats(&self, stats: rdkafka::Statistics) {
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
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            if self.metrics.kafka.up.swap(false, Relaxed) {
                tracing::warn!(%reason, "Kafka brokers unreachable; the consumer reconnects by itself");
            }
        } else {
            tracing::warn!(error = %error, %reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for Context {
    /// Before partitions go to another member: commit what was delivered, so the new
    /// owner starts right after it (records still at the push API may then come twice:
    /// push ids make that invisible to clients).
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let Ok(mut shared) = self.shared.lock() else {
            return;
        };
        let mut commit = TopicPartitionList::new();
        for e in tpl.elements() {
            if let Some(p) = shared.partitions.remove(&e.partition()) {
                if let Some(next) = p.progress.position() {
                    let _ = commit.add_partition_offset(
                        &self.topic,
                        e.partition(),
                        Offset::Offset(next),
                    );
                }
            }
        }
        if commit.count() > 0 {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(error = %e, "could not commit before partitions were revoked");
            }
            self.metrics.kafka.commits.fetch_add(1, Relaxed);
        }
        self.metrics
            .kafka
            .assigned
            .store(shared.partitions.len() as u64, Relaxed);
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let Ok(mut shared) = self.shared.lock() else {
            return;
        };
        for e in tpl.elements() {
            shared.partitions.entry(e.partition()).or_default();
        }
        self.metrics.kafka.up.store(true, Relaxed);
        self.metrics
            .kafka
            .assigned
            .store(shared.partitions.len() as u64, Relaxed);
        tracing::info!(
            partitions = shared.partitions.len(),
            "Kafka partitions assigned"
        );
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
    stop: Arc<AtomicBool>,
    next_batch: u64,
    last_commit: Instant,
    /// `kafka_max_buffered_bytes`.
    max_buffered: usize,
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
        stop: Arc<AtomicBool>,
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
            // Offsets are committed by hand, only past what the shards took.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", FETCH_WAIT_MS)
            .set("queued.max.messages.kbytes", PREFETCH_KBYTES)
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
            next_batch: 1,
            last_commit: Instant::now(),
            max_buffered: config.max_buffered_bytes,
        })
    }

    /// Runs until the server stops, then commits what was delivered.
    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(8);
        while !self.stop.load(Relaxed) {
            if let Err(e) = self.poll.poll(&mut events, Some(TICK)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "Kafka ingress poll failed; it stops");
                    break;
                }
            }
            self.read();
            self.take_answers();
            self.dispatch();
            if self.last_commit.elapsed() >= COMMIT_EVERY {
                self.last_commit = Instant::now();
                self.commit(CommitMode::Async);
            }
        }
        // What the API took before it stopped is delivered: commit it.
        self.take_answers();
        self.commit(CommitMode::Sync);
    }

    /// Takes what the consumer has (serving rebalances and errors on the way).
    fn read(&mut self) {
        for _ in 0..READ_BUDGET {
            match self.consumer.poll(Duration::ZERO) {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error");
                    return;
                }
                Some(Ok(m)) => {
                    self.metrics.kafka.consumed.fetch_add(1, Relaxed);
                    self.metrics.kafka.up.store(true, Relaxed);
                    let record = Record {
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    };
                    let partition = m.partition();
                    if let Ok(mut shared) = self.shared.lock() {
                        // A record of a partition revoked meanwhile is the new owner's.
                        if let Some(p) = shared.partitions.get_mut(&partition) {
                            p.pending_bytes += record.size();
                            p.pending.push_back(record);
                        }
                    }
                }
            }
        }
    }

    /// Applies the push API's answers: taken records are done; after a refusal the rest
    /// waits and goes again, in order.
    fn take_answers(&mut self) {
        let Ok(mut shared) = self.shared.lock() else {
            return;
        };
        while let Ok(a) = self.api.answers.try_recv() {
            let Some(p) = shared
                .partitions
                .values_mut()
                .find(|p| p.in_flight.is_some_and(|(id, _)| id == a.id))
            else {
                // Its partition was revoked meanwhile.
                continue;
            };
            p.in_flight = None;
            for _ in 0..a.accepted {
                if let Some(r) = p.pop_front() {
                    p.progress.done(r.offset);
                }
            }
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

    /// Sends each ready partition's next records to the push API; invalid ones go to the
    /// DLQ first. Pauses and resumes partitions in the consumer for backpressure.
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
            let waiting = p.retry_at.is_some_and(|t| now < t);
            if !waiting {
                p.retry_at = None;
            }
            if p.in_flight.is_none() && !waiting && !p.pending.is_empty() {
                if let Some(batch) = self.next_batch(partition, p) {
                    match self.api.batches.try_send(batch) {
                        Ok(()) => sent = true,
                        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                            // The API is behind: the records stay, in order.
                            p.in_flight = None;
                        }
                    }
                }
            }
            let want_paused = should_pause(waiting, p, total_bytes, self.max_buffered);
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
        if sent {
            let _ = self.api.waker.wake();
        }
    }

    /// The partition's next batch: its valid records from the front, up to `BATCH`; an
    /// invalid record at the front goes to the DLQ (and is done) first.
    fn next_batch(&mut self, partition: i32, p: &mut Partition) -> Option<IngressBatch> {
        let mut pushes: Vec<ParsedPush> = Vec::new();
        while pushes.len() < BATCH {
            let Some(r) = p.pending.get(pushes.len()) else {
                break;
            };
            match parse_record(&r.value) {
                Ok(push) => pushes.push(push),
                Err(error) if pushes.is_empty() => {
                    if let Err(e) =
                        self.dlq
                            .send(r.key.as_deref(), &r.value, &error, partition, r.offset)
                    {
                        tracing::warn!(error = %e, "could not write to the DLQ; retrying");
                        p.retry_at = Some(Instant::now() + RETRY_AFTER);
                        return None;
                    }
                    self.metrics.kafka.dlq.fetch_add(1, Relaxed);
                    if let Some(r) = p.pop_front() {
                        p.progress.done(r.offset);
                    }
                }
                // Sent after the valid ones before it are taken.
                Err(_) => break,
            }
        }
        if pushes.is_empty() {
            return None;
        }
        let id = self.next_batch;
        self.next_batch += 1;
        p.in_flight = Some((id, pushes.len()));
        Some(IngressBatch { id, pushes })
    }

    /// Commits each partition's offset past its delivered records. The lock is not held
    /// across the call into librdkafka, whose callbacks take it too.
    fn commit(&mut self, mode: CommitMode) {
        let mut tpl = TopicPartitionList::new();
        let mut moved = Vec::new();
        if let Ok(shared) = self.shared.lock() {
            for (&partition, p) in &shared.partitions {
                if let Some(next) = p.progress.to_commit() {
                    let _ = tpl.add_partition_offset(&self.topic, partition, Offset::Offset(next));
                    moved.push((partition, next));
                }
            }
        }
        if moved.is_empty() {
            return;
        }
        match self.consumer.commit(&tpl, mode) {
            Ok(()) => {
                self.metrics.kafka.commits.fetch_add(1, Relaxed);
                if let Ok(mut shared) = self.shared.lock() {
                    for (partition, next) in moved {
                        if let Some(p) = shared.partitions.get_mut(&partition) {
                            p.progress.committed(next);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "Kafka offset commit failed; retried"),
        }
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

    fn holding(records: usize, bytes: usize) -> Partition {
        let mut p = Partition::default();
        for i in 0..records {
            p.pending.push_back(Record {
                offset: i as i64,
                key: None,
                value: Vec::new(),
            });
        }
        p.pending_bytes = bytes;
        p
    }

    #[test]
    fn a_partition_pauses_for_its_own_backlog_or_for_the_process_s() {
        const TOTAL: usize = crate::config::KAFKA_MAX_BUFFERED_BYTES;
        let pause = |waiting, p: &Partition, total| should_pause(waiting, p, total, TOTAL);
        let small = holding(10, 1 << 10);
        assert!(!pause(false, &small, 1 << 10));
        assert!(pause(true, &small, 1 << 10), "waiting to retry");
        assert!(pause(false, &holding(PENDING_HIGH, 0), 0));
        assert!(pause(
            false,
            &holding(1, PENDING_BYTES_HIGH),
            PENDING_BYTES_HIGH
        ));
        // Three partitions just under their own bound hold more than the process's:
        // every one pauses, even one that holds little.
        let total = 3 * (PENDING_BYTES_HIGH - 1);
        assert!(total >= TOTAL);
        assert!(pause(false, &holding(1, PENDING_BYTES_HIGH - 1), total));
        assert!(pause(false, &small, total));
        assert!(!pause(false, &small, TOTAL - 1));
        // A process bound below a partition's own bounds that one partition too.
        let tight = 4 << 20;
        assert!(should_pause(false, &holding(1, tight), tight, tight));
        assert!(!should_pause(
            false,
            &holding(1, tight - 1),
            tight - 1,
            tight
        ));
    }
}
