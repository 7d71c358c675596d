//! Invalid records go to `<topic>.dlq` with the original key and bytes and the reason in
//! a header, so they never block the records behind them.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientConfig;

/// How long one DLQ write may wait for the broker's acknowledgement.
const DLQ_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps the outcome of the last delivery: flushing says only that none is pending.
#[derive(Default)]
struct Outcome {
    last: Mutex<Option<Result<(), String>>>,
}

impl ClientContext for Outcome {}

impl ProducerContext for Outcome {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let r = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        if let Ok(mut last) = self.last.lock() {
            *last = Some(r);
        }
    }
}

/// The DLQ producer.
pub(super) struct Dlq {
    producer: BaseProducer<Outcome>,
    topic: String,
}

impl Dlq {
    /// A producer for `<topic>.dlq` on `brokers`.
    pub(super) fn new(brokers: &str, topic: &str) -> Result<Dlq, rdkafka::error::KafkaError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("message.timeout.ms", "5000")
            .create_with_context(Outcome::default())?;
        Ok(Dlq {
            producer,
            topic: format!("{topic}.dlq"),
        })
    }

    /// Writes one invalid record and waits for the broker to have it.
    pub(super) fn send(
        &self,
        key: Option<&[u8]>,
        value: &[u8],
        error: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), String> {
        let (partition, offset) = (partition.to_string(), offset.to_string());
        let headers = OwnedHeaders::new()
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
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic)
            .payload(value)
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        self.producer
            .send(record)
            .map_err(|(e, _)| format!("cannot queue the record for {}: {e}", self.topic))?;
        self.producer
            .flush(DLQ_TIMEOUT)
            .map_err(|e| format!("{} did not take the record: {e}", self.topic))?;
        let outcome = self
            .producer
            .context()
            .last
            .lock()
            .ok()
            .and_then(|mut l| l.take());
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(format!("{} refused the record: {e}", self.topic)),
            None => Err(format!("{} did not answer", self.topic)),
        }
    }
}
