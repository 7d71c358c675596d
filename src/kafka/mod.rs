//! The Kafka ingress (docs/protocol.md 7): push commands read from a Kafka topic with a
//! consumer group, each record's value one push object. One thread owns the consumer; it
//! hands each partition's pushes, in order, to the push API thread (the one router of
//! pushes), commits a partition's offsets only past records the shards took (or that went
//! to the DLQ), sends invalid records to `<topic>.dlq`, and pauses partitions while the
//! shards cannot take more. No Kafka I/O happens on shards or the API thread, and none
//! blocks the ingress thread: DLQ writes and commits are asynchronous.

mod client_log;
mod consumer;
mod counters;
mod dlq;
mod offsets;
mod partition;

pub use counters::KafkaCounters;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Poll, Waker};

use crate::command::IngressLink;
use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// Batches that may wait for the push API (each one partition's next records).
const BATCH_QUEUE: usize = 256;

/// Why the ingress could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// librdkafka refused the configuration.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The thread or its poll could not be made.
    #[error("kafka ingress: {0}")]
    Io(#[from] std::io::Error),
}

/// Starts the ingress thread: the push API's end of its link, and the thread. At stop,
/// its last commit and its close take at most `grace` (`shutdown_grace_ms`, at least 1 s).
/// With `at_drain` (standalone) it stops when a drain begins, not when it ends.
pub fn spawn(
    config: &KafkaConfig,
    node: &str,
    metrics: &Arc<Metrics>,
    stop: &Arc<AtomicBool>,
    api_waker: Arc<Waker>,
    grace: Duration,
    at_drain: bool,
) -> Result<(IngressLink, JoinHandle<()>), StartError> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), consumer::WAKER)?);
    let (batch_tx, batch_rx) = crossbeam_channel::bounded(BATCH_QUEUE);
    let (answer_tx, answer_rx) = crossbeam_channel::unbounded();
    metrics.kafka.enabled.store(true, Relaxed);
    let ingress = consumer::Ingress::new(
        config,
        node,
        poll,
        Arc::clone(&waker),
        consumer::ApiLink {
            batches: batch_tx,
            answers: answer_rx,
            waker: api_waker,
        },
        Arc::clone(metrics),
        consumer::Stop {
            flag: Arc::clone(stop),
            grace,
            at_drain,
        },
    )?;
    let thread = std::thread::Builder::new()
        .name("throng-kafka".into())
        .spawn(move || ingress.run())?;
    Ok((
        IngressLink {
            batches: batch_rx,
            answers: answer_tx,
            waker,
        },
        thread,
    ))
}
