//! Invalid records go to `<topic>.dlq` with the original key and bytes and the reason in
//! a header. Writes are asynchronous: the ingress thread queues them and collects their
//! delivery reports as it goes round its loop, so a slow or failing DLQ holds up only the
//! partitions whose records wait for it, never the thread.
//!
//! A copy keeps the first 1 MiB of the value (as the Redis ingress does); when the DLQ
//! topic's size limit refuses that, it is written again keeping 16 KiB. A cut copy carries
//! the original size in the header `size`.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use super::client_log;
use crate::config::MAX_API_BODY_BYTES;

/// Value bytes a copy keeps, per try after a size refusal: the first 1 MiB, then 16 KiB.
pub(super) const KEEP_VALUE: [usize; 2] = [MAX_API_BODY_BYTES, 16 << 10];
/// Key bytes a copy keeps, likewise.
const KEEP_KEY: [usize; 2] = [16 << 10, 1 << 10];
/// Bytes of the reason kept in the `error` header.
const KEEP_ERROR: usize = 1 << 10;
/// The producer's largest record: the largest copy and its headers, with room to spare
/// (librdkafka's default, 1,000,000 bytes, refused any copy near 1 MiB).
const MAX_RECORD_BYTES: &str = "1179648";
/// How long a write may wait for the broker before it fails (and is retried).
const WRITE_TIMEOUT_MS: &str = "10000";
/// How long librdkafka takes a topic the brokers do not know for one still being created:
/// below `WRITE_TIMEOUT_MS`, so a missing DLQ topic fails its writes as missing, not as
/// timed out (its default, 30 s, is longer than the write timeout).
const MISSING_AFTER_MS: &str = "2000";
/// Most writes in flight, all partitions together.
pub(super) const MAX_IN_FLIGHT: usize = 256;
/// Most bytes of writes in flight (one larger write may go alone).
const MAX_IN_FLIGHT_BYTES: usize = 16 << 20;
/// Rounds of delivery reports served per `poll` (each round serves one batch of them).
const POLL_ROUNDS: usize = 64;

/// Why a write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum DlqError {
    /// The copy is larger than the DLQ topic (or the producer) takes.
    #[error("{topic} refused a copy of {bytes} bytes as too large ({reason})")]
    TooLarge {
        /// The DLQ topic.
        topic: String,
        /// The copy's key and value bytes.
        bytes: usize,
        /// librdkafka's words.
        reason: String,
    },
    /// The DLQ topic does not exist.
    #[error("{topic} does not exist; create it (invalid records wait for it meanwhile)")]
    Missing {
        /// The DLQ topic.
        topic: String,
    },
    /// Any other failure: the broker unreachable, a timeout, a refusal.
    #[error("{topic}: {reason}")]
    Failed {
        /// The DLQ topic.
        topic: String,
        /// librdkafka's words.
        reason: String,
    },
}

/// One invalid record, as the DLQ takes it.
pub(super) struct Invalid<'a> {
    /// The original key.
    pub key: Option<&'a [u8]>,
    /// The original value.
    pub value: &'a [u8],
    /// Why it is invalid.
    pub error: &'a str,
    /// Where it was read.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

/// A write's outcome: `id` as given to `send`.
pub(super) struct Report {
    /// The write.
    pub id: u64,
    /// The source partition of its record.
    pub partition: i32,
    /// Whether the broker has the copy.
    pub result: Result<(), DlqError>,
}

/// What travels with a write to its delivery report.
struct Ticket {
    id: u64,
    partition: i32,
    bytes: usize,
}

/// Collects delivery reports (called on the ingress thread, from `poll`).
#[derive(Default)]
struct Reports {
    done: Mutex<Vec<(Ticket, Result<(), KafkaError>)>>,
}

impl ClientContext for Reports {
    /// At debug: a lost broker the consumer, on the same brokers, says once; any other
    /// error shows in the failed writes' reports.
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, %reason, "Kafka DLQ producer error");
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        client_log::librdkafka(level, facility, message);
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        let r = result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone());
        if let Ok(mut done) = self.done.lock() {
            done.push((*ticket, r));
        }
    }
}

/// The DLQ producer and its writes in flight.
pub(super) struct Dlq {
    producer: BaseProducer<Reports>,
    topic: String,
    in_flight: usize,
    in_flight_bytes: usize,
    /// Writes librdkafka refused at once, reported by the next `poll`.
    refused: Vec<Report>,
}

impl Dlq {
    /// A producer for `<topic>.dlq` on `brokers`.
    pub(super) fn new(brokers: &str, topic: &str) -> Result<Dlq, KafkaError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("message.timeout.ms", WRITE_TIMEOUT_MS)
            .set("topic.metadata.propagation.max.ms", MISSING_AFTER_MS)
            .set("message.max.bytes", MAX_RECORD_BYTES)
            .create_with_context(Reports::default())?;
        Ok(Dlq {
            producer,
            topic: format!("{topic}.dlq"),
            in_flight: 0,
            in_flight_bytes: 0,
            refused: Vec::new(),
        })
    }

    /// The DLQ topic's name.
    pub(super) fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes not yet reported (in flight, or refused at once and reported by `poll`).
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight + self.refused.len()
    }

    /// Whether the DLQ topic exists, asked of the brokers within `timeout`; `None` when
    /// they did not answer.
    pub(super) fn topic_exists(&self, timeout: Duration) -> Option<bool> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .ok()?;
        let t = md.topics().iter().find(|t| t.name() == self.topic)?;
        Some(t.error().is_none() && !t.partitions().is_empty())
    }

    /// Queues a copy of `r`, cut to try `cut` (an index of `KEEP_VALUE`): its report, named
    /// `id`, comes from a later `poll`. `false` when the writes in flight are at their
    /// bound: try again after a `poll`.
    pub(super) fn send(&mut self, id: u64, r: &Invalid<'_>, cut: usize) -> bool {
        let cut = cut.min(KEEP_VALUE.len() - 1);
        let value = &r.value[..r.value.len().min(KEEP_VALUE[cut])];
        let key = r.key.map(|k| &k[..k.len().min(KEEP_KEY[cut])]);
        let bytes = value.len() + key.map_or(0, <[u8]>::len);
        if self.in_flight >= MAX_IN_FLIGHT
            || (self.in_flight > 0 && self.in_flight_bytes + bytes > MAX_IN_FLIGHT_BYTES)
        {
            return false;
        }
        let (partition, offset) = (r.partition.to_string(), r.offset.to_string());
        let error = cut_str(r.error, KEEP_ERROR);
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "error",
                value: Some(error),
            })
            .insert(Header {
                key: "partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "offset",
                value: Some(&offset),
            });
        if value.len() < r.value.len() {
            headers = headers.insert(Header {
                key: "size",
                value: Some(&r.value.len().to_string()),
            });
        }
        let ticket = Box::new(Ticket {
            id,
            partition: r.partition,
            bytes,
        });
        let mut record = BaseRecord::<[u8], [u8], Box<Ticket>>::with_opaque_to(&self.topic, ticket)
            .payload(value)
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        match self.producer.send(record) {
            Ok(()) => {}
            Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                return false;
            }
            Err((e, _)) => {
                // Refused before it left (too large, unknown topic): reported like any
                // other outcome, so it is handled in one place.
                self.refused.push(Report {
                    id,
                    partition: r.partition,
                    result: Err(self.error(&e, bytes)),
                });
                return true;
            }
        }
        self.in_flight += 1;
        self.in_flight_bytes += bytes;
        true
    }

    /// The reports that came (waiting up to `wait` for the first).
    pub(super) fn poll(&mut self, wait: Duration) -> Vec<Report> {
        let mut out = std::mem::take(&mut self.refused);
        if self.in_flight == 0 {
            return out;
        }
        // One poll serves one batch of reports; serve what else is ready too.
        self.producer.poll(wait);
        let mut taken = 0;
        for _ in 0..POLL_ROUNDS {
            self.producer.poll(Duration::ZERO);
            let n = self.producer.context().done.lock().map_or(0, |d| d.len());
            if n == taken {
                break;
            }
            taken = n;
        }
        let done = self
            .producer
            .context()
            .done
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        for (t, result) in done {
            self.in_flight = self.in_flight.saturating_sub(1);
            self.in_flight_bytes = self.in_flight_bytes.saturating_sub(t.bytes);
            out.push(Report {
                id: t.id,
                partition: t.partition,
                result: result.map_err(|e| self.error(&e, t.bytes)),
            });
        }
        out
    }

    fn error(&self, e: &KafkaError, bytes: usize) -> DlqError {
        let topic = self.topic.clone();
        match e.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge,
            ) => DlqError::TooLarge {
                topic,
                bytes,
                reason: e.to_string(),
            },
            Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition) => {
                DlqError::Missing { topic }
            }
            _ => DlqError::Failed {
                topic,
                reason: e.to_string(),
            },
        }
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut_str(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_on_a_character_boundary() {
        assert_eq!(cut_str("abc", 10), "abc");
        assert_eq!(cut_str("aé", 2), "a", "é is two bytes");
        assert_eq!(cut_str("aé", 3), "aé");
    }
}
