//! What the events thread counts, shown in `/metrics` and `/v1/stats`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Event delivery counters and gauges; all zero (and not shown) without a target.
#[derive(Default)]
pub struct EventCounters {
    /// Events go somewhere (`events_url`, or Redis in cluster mode).
    pub enabled: AtomicBool,
    /// The last delivery succeeded (1) or is being retried (0).
    pub up: AtomicBool,
    /// Bytes of events waiting (gauge; bounded by `EVENTS_QUEUE_BYTES`).
    pub queued_bytes: AtomicU64,
    /// Events waiting (gauge).
    pub queued: AtomicU64,
    /// Events the target took.
    pub delivered: AtomicU64,
    /// Failed delivery attempts (each one followed by a backoff and a retry).
    pub failures: AtomicU64,
    /// Events the target refused for good (an HTTP 4xx other than 408/429) or that were
    /// still waiting when the server stopped.
    pub dropped: AtomicU64,
    /// `send` messages refused with `overloaded` because the queue was full.
    pub refused: AtomicU64,
    /// Lifecycle events not queued because the queue was full.
    pub lifecycle_skipped: AtomicU64,
    /// `events_ca` reloads (`SIGHUP`) that took effect.
    pub ca_reloads: AtomicU64,
    /// `events_ca` reloads that failed (the roots in use stayed).
    pub ca_reload_errors: AtomicU64,
}

impl crate::metrics::FeatureCounters for EventCounters {
    const STATS_PREFIX: &'static str = "throng_events_";

    fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    fn fields(&self) -> Vec<crate::metrics::Field> {
        let n = |v: &AtomicU64| v.load(Relaxed);
        vec![
            (
                "throng_events_up",
                "gauge",
                "1 while events reach the upstream; 0 while deliveries are retried.",
                u64::from(self.up.load(Relaxed)),
            ),
            (
                "throng_events_queued",
                "gauge",
                "Client sends and lifecycle events waiting for delivery.",
                n(&self.queued),
            ),
            (
                "throng_events_queued_bytes",
                "gauge",
                "Bytes of events waiting for delivery.",
                n(&self.queued_bytes),
            ),
            (
                "throng_events_delivered_total",
                "counter",
                "Events the upstream took (events_url, or throng:events in cluster mode).",
                n(&self.delivered),
            ),
            (
                "throng_events_failures_total",
                "counter",
                "Failed event deliveries, each retried after a backoff.",
                n(&self.failures),
            ),
            (
                "throng_events_dropped_total",
                "counter",
                "Events the upstream refused for good (HTTP 4xx) or still waiting at shutdown.",
                n(&self.dropped),
            ),
            (
                "throng_events_refused_total",
                "counter",
                "Client sends answered overloaded because the event queue was full.",
                n(&self.refused),
            ),
            (
                "throng_events_lifecycle_skipped_total",
                "counter",
                "Lifecycle events not queued because the event queue was full.",
                n(&self.lifecycle_skipped),
            ),
            (
                "throng_events_ca_reloads_total",
                "counter",
                "events_ca reloads (SIGHUP) that took effect.",
                n(&self.ca_reloads),
            ),
            (
                "throng_events_ca_reload_errors_total",
                "counter",
                "events_ca reloads (SIGHUP) that failed; the roots in use stayed.",
                n(&self.ca_reload_errors),
            ),
        ]
    }
}
