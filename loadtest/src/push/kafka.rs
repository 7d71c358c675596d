//! The push driver's Kafka path (`--kafka`): each push becomes one record on the topic
//! the server's Kafka ingress reads (docs/protocol.md 7), its value the push object the
//! API would take and its key the push's target, so that one user's (or topic's) pushes
//! share a partition and keep their order.
//!
//! One producer serves every driver thread of the process. A push counts as accepted
//! when the broker acknowledges its record; the acknowledgements arrive on the
//! producer's polling thread, which accounts them like API answers.
//!
//! Kafka orders only the records of one partition, so a receiver subscribed to several
//! topics may get two topics' pushes in another order than they were produced. To keep
//! `out_of_order` meaningful, each (driver thread, topic) numbers its topic pushes as a
//! stream of its own: the order the server promises (per key) is the order checked.

use super::{account, give_up, push_json_as, short, target_key, Item, PushCfg, PushOut, Tgt};
use super::{PushProgress, Shared};
use crate::util;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records the producer may hold unacknowledged; past it the driver waits, so a broker
/// that falls behind slows the pushes down (the report shows the rate it took) instead
/// of filling this process's memory.
const MAX_IN_FLIGHT: i32 = 10_000;

/// How long a driver thread sleeps while the producer is full.
const FULL_WAIT: Duration = Duration::from_millis(1);

/// One producer for the run, shared by the driver threads.
pub struct KafkaSink {
    producer: ThreadedProducer<Acks>,
    topic: String,
    /// Topic pushes numbered so far per (driver thread, push topic), at
    /// `thread * topics + topic`: that index is the push's stream `s`.
    topic_streams: Vec<AtomicU64>,
    /// Push topics of the run (`--topics`).
    topics: usize,
}

/// Accounts the broker's acknowledgements (on the producer's polling thread).
struct Acks {
    sh: Arc<Shared>,
    prog: Arc<PushProgress>,
    /// Accepted pushes, their produce-to-acknowledgement latency, and refused records.
    out: Mutex<PushOut>,
}

/// What a record carries to its acknowledgement.
struct Sent {
    tgt: Tgt,
    /// Its stream and number in the push data (`s`, `n`).
    num: (usize, u64),
    /// When it was due: its schedule slot at --rate (when it was made, unpaced), so that
    /// the produce latency counts, as the API's does, the wait for room in the producer.
    due: Instant,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        // A poisoned lock means a panicking accountant; its figures are lost either way.
        let Ok(mut out) = self.out.lock() else {
            return;
        };
        match result {
            Ok(_) => {
                util::record(&mut out.api_latency, sent.due.elapsed().as_micros() as u64);
                account(&self.sh, &sent.tgt, sent.num, &mut out, &self.prog);
            }
            Err((e, _)) => give_up(&mut out, &self.prog, kafka_cause(e), 1),
        }
    }
}

impl KafkaSink {
    /// A producer to `topic` on `brokers` for the driver `cfg` (not connected yet:
    /// librdkafka connects on the first record). A record not acknowledged within
    /// `cfg.retry_grace` fails.
    pub fn new(
        cfg: &PushCfg,
        brokers: &str,
        topic: &str,
        sh: Arc<Shared>,
        prog: Arc<PushProgress>,
    ) -> Result<KafkaSink, String> {
        let acks = Acks {
            sh,
            prog,
            out: Mutex::new(PushOut::new()),
        };
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "throng-load")
            // Stored before it counts, as the API answers only once a shard took the push.
            .set("acks", "all")
            // A batch sent again after a lost answer is neither doubled nor reordered.
            .set("enable.idempotence", "true")
            // Batches still form under load; a lone push waits at most this long.
            .set("linger.ms", "1")
            .set("queue.buffering.max.messages", MAX_IN_FLIGHT.to_string())
            .set(
                "message.timeout.ms",
                cfg.retry_grace.as_millis().max(1).to_string(),
            )
            .create_with_context(acks)
            .map_err(|e| kafka_cause(&e))?;
        let topics = cfg.topics.len().max(1);
        Ok(KafkaSink {
            producer,
            topic: topic.to_string(),
            topic_streams: (0..cfg.concurrency.max(1) * topics)
                .map(|_| AtomicU64::new(0))
                .collect(),
            topics,
        })
    }

    /// The stream `s` and number `n` a push of driver thread `s` carries: topic pushes
    /// are numbered per (thread, topic), the others as the driver numbered them.
    fn numbered(&self, s: usize, it: &Item) -> (usize, u64) {
        let Tgt::Topic(i) = it.tgt else {
            return (s, it.n);
        };
        let at = s * self.topics + i;
        match self.topic_streams.get(at) {
            // Only thread `s` takes this counter: Relaxed keeps its own order.
            Some(c) => (at, c.fetch_add(1, Relaxed) + 1),
            None => (s, it.n),
        }
    }

    /// Produces `items`, due at `due` (their schedule slot), in order, each once: a
    /// record the local queue refuses, or that waits for room past `hard_end`, is given
    /// up and counted by cause.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &self,
        cfg: &PushCfg,
        prog: &PushProgress,
        items: Vec<Item>,
        s: usize,
        pad: &str,
        due: Instant,
        hard_end: Instant,
        out: &mut PushOut,
    ) {
        let mut body = String::with_capacity(cfg.payload_bytes + 96);
        for it in items {
            while self.producer.in_flight_count() >= MAX_IN_FLIGHT && Instant::now() < hard_end {
                std::thread::sleep(FULL_WAIT);
            }
            body.clear();
            let (stream, n) = self.numbered(s, &it);
            // The push's schedule slot (its send time when unpaced) is its data's `t`.
            push_json_as(&mut body, cfg, &it.tgt, n, stream, pad, it.due_us);
            let key = target_key(cfg, &it.tgt);
            out.requests += 1;
            let sent = Box::new(Sent {
                tgt: it.tgt,
                num: (stream, n),
                due,
            });
            let mut rec = BaseRecord::with_opaque_to(&self.topic, sent)
                .key(key.as_str())
                .payload(body.as_str());
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < hard_end =>
                    {
                        rec = back;
                        std::thread::sleep(FULL_WAIT);
                    }
                    Err((e, _)) => {
                        give_up(out, prog, kafka_cause(&e), 1);
                        break;
                    }
                }
            }
        }
    }

    /// Waits for the records still unacknowledged (each fails by itself `grace` after it
    /// was produced; a second more is for librdkafka to notice), fails the rest, and
    /// returns what the acknowledgements added up to.
    pub fn finish(self, grace: Duration) -> PushOut {
        if self.producer.flush(grace + Duration::from_secs(1)).is_err() {
            // Purged records fail with a `purge` cause; one the broker stored anyway
            // shows as an unexpected delivery.
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
            let _ = self.producer.flush(Duration::from_secs(1));
        }
        match self.producer.context().out.lock() {
            Ok(mut o) => std::mem::replace(&mut *o, PushOut::new()),
            Err(_) => {
                let mut o = PushOut::new();
                o.errors.insert("kafka_accounting_panicked".into(), 1);
                o
            }
        }
    }
}

/// A Kafka failure as an error cause: `kafka_` and librdkafka's code
/// (`kafka_messagetimedout`), or the error's own words.
fn kafka_cause(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(c) => format!("kafka_{}", short(&format!("{c:?}"))),
        None => format!("kafka_{}", short(&e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Target;
    use crate::push::{run, Via};

    #[test]
    fn causes_name_the_code() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(kafka_cause(&e), "kafka_messagetimedout");
    }

    #[test]
    fn records_no_broker_takes_are_errors_by_cause_not_pushes() {
        // A port nobody listens on: librdkafka keeps trying until the records time out.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut c = crate::push::tests::cfg(Target::User);
        c.via = Via::Kafka {
            brokers: format!("127.0.0.1:{port}"),
            topic: "throng.push".into(),
        };
        c.count = Some(3);
        c.duration = Duration::from_secs(30);
        c.retry_grace = Duration::from_secs(1);
        let sh = Arc::new(Shared::new(10));
        let out = run(Arc::new(c), sh.clone(), Arc::new(PushProgress::default()));
        assert_eq!(out.accepted, 0);
        assert_eq!(out.requests, 3, "one record per push");
        // Timed out, or purged at the end when librdkafka was slow to time them out.
        assert_eq!(out.errors.values().sum::<u64>(), 3, "{:?}", out.errors);
        assert!(
            out.errors.keys().all(|k| k.starts_with("kafka_")),
            "{:?}",
            out.errors
        );
        assert!(out.secs < 10.0, "bounded by the grace: {}", out.secs);
    }
}
