//! What the Kafka ingress counts, shown in `/metrics` and `/v1/stats` when it runs.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::metrics::{FeatureCounters, Field};

/// Kafka ingress counters and gauges; not shown without `--kafka`.
#[derive(Default)]
pub struct KafkaCounters {
    /// `--kafka` is set.
    pub enabled: AtomicBool,
    /// The consumer reaches its brokers and its group's coordinator (from librdkafka's
    /// statistics every 5 s, a record, an assignment; 0 after "all brokers down").
    pub up: AtomicBool,
    /// Records read.
    pub consumed: AtomicU64,
    /// Records whose push the shards took (or that were duplicates of an `id`).
    pub delivered: AtomicU64,
    /// Records sent to `<topic>.dlq`.
    pub dlq: AtomicU64,
    /// DLQ writes that failed (each tried again after a backoff, its partition waiting).
    pub dlq_failures: AtomicU64,
    /// DLQ writes sent and not yet confirmed (gauge).
    pub dlq_in_flight: AtomicU64,
    /// Batches the push API could not take whole (shard queues full): retried.
    pub refused: AtomicU64,
    /// Offset commits the broker took.
    pub commits: AtomicU64,
    /// Offset commits that failed (librdkafka commits the offsets again).
    pub commit_failures: AtomicU64,
    /// Partitions paused now (backpressure) (gauge).
    pub paused: AtomicU64,
    /// Partitions assigned to this node (gauge).
    pub assigned: AtomicU64,
    /// Bytes of records read and not yet taken by the shards, all partitions (gauge).
    pub pending_bytes: AtomicU64,
    /// Lag per assigned partition: the high watermark minus the next offset to commit.
    pub lag: Mutex<Vec<(i32, i64)>>,
}

impl FeatureCounters for KafkaCounters {
    const STATS_PREFIX: &'static str = "throng_kafka_";

    fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    fn fields(&self) -> Vec<Field> {
        let n = |v: &AtomicU64| v.load(Relaxed);
        let lag: u64 = self
            .lag
            .lock()
            .map(|l| l.iter().map(|(_, n)| (*n).max(0) as u64).sum())
            .unwrap_or(0);
        vec![
            (
                "throng_kafka_up",
                "gauge",
                "1 while the Kafka consumer reaches its brokers and its group coordinator.",
                u64::from(self.up.load(Relaxed)),
            ),
            (
                "throng_kafka_consumed_total",
                "counter",
                "Records read from the push topic.",
                n(&self.consumed),
            ),
            (
                "throng_kafka_delivered_total",
                "counter",
                "Records whose push the shards took (or duplicates of an id).",
                n(&self.delivered),
            ),
            (
                "throng_kafka_dlq_total",
                "counter",
                "Invalid records sent to <topic>.dlq.",
                n(&self.dlq),
            ),
            (
                "throng_kafka_dlq_failures_total",
                "counter",
                "Failed writes to <topic>.dlq; each is tried again while its partition waits.",
                n(&self.dlq_failures),
            ),
            (
                "throng_kafka_dlq_in_flight",
                "gauge",
                "Writes to <topic>.dlq not yet confirmed (at most 256).",
                n(&self.dlq_in_flight),
            ),
            (
                "throng_kafka_refused_total",
                "counter",
                "Batches the shards could not take whole; their partitions paused and retried.",
                n(&self.refused),
            ),
            (
                "throng_kafka_commits_total",
                "counter",
                "Offset commits the broker took (past delivered records only).",
                n(&self.commits),
            ),
            (
                "throng_kafka_commit_failures_total",
                "counter",
                "Offset commits that failed; their offsets are committed again.",
                n(&self.commit_failures),
            ),
            (
                "throng_kafka_paused_partitions",
                "gauge",
                "Partitions paused for backpressure.",
                n(&self.paused),
            ),
            (
                "throng_kafka_pending_bytes",
                "gauge",
                "Bytes of records read and not yet taken by the shards (all partitions pause at kafka_max_buffered_bytes).",
                n(&self.pending_bytes),
            ),
            (
                "throng_kafka_assigned_partitions",
                "gauge",
                "Partitions of the push topic assigned to this node.",
                n(&self.assigned),
            ),
            (
                "throng_kafka_lag",
                "gauge",
                "Records of the assigned partitions not delivered yet (all partitions).",
                lag,
            ),
        ]
    }

    fn prometheus_labelled(&self, out: &mut String) {
        if let Ok(lag) = self.lag.lock() {
            let _ = writeln!(
                out,
                "# HELP throng_kafka_partition_lag Records of one assigned partition not delivered yet.\n# TYPE throng_kafka_partition_lag gauge"
            );
            for (p, n) in lag.iter() {
                let _ = writeln!(out, "throng_kafka_partition_lag{{partition=\"{p}\"}} {n}");
            }
        }
    }
}
