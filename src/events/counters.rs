//! What the events thread counts, shown in `/metrics` and `/v1/stats`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use super::Dropped;

/// The dropped events' family: one line per reason in `/metrics`; in `/v1/stats` the sum
/// (`dropped`) and one entry per reason (`dropped_<reason>`).
const DROPPED: &str = "throng_events_dropped_total";

impl EventCounters {
    /// `n` events were dropped for `why`.
    pub(crate) fn count_dropped(&self, why: Dropped, n: u64) {
        let c = match why {
            Dropped::Refused => &self.dropped_refused,
            Dropped::Failed => &self.dropped_failed,
            Dropped::Stopped => &self.dropped_stopped,
        };
        c.fetch_add(n, Relaxed);
    }

    /// Each reason's count, by its label.
    fn dropped(&self) -> [(&'static str, u64); 3] {
        [
            ("refused", self.dropped_refused.load(Relaxed)),
            ("failed", self.dropped_failed.load(Relaxed)),
            ("stopped", self.dropped_stopped.load(Relaxed)),
        ]
    }
}

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
    /// Events the target refused for good (an HTTP 4xx other than 408/429, or a redirect).
    pub dropped_refused: AtomicU64,
    /// Events the target failed on every time they were sent alone.
    pub dropped_failed: AtomicU64,
    /// Events still waiting when the server stopped.
    pub dropped_stopped: AtomicU64,
    /// `send` messages refused with `overloaded` because the queue was full.
    pub refused: AtomicU64,
    /// Lifecycle events not queued because the queue was full.
    pub lifecycle_skipped: AtomicU64,
    /// `events_ca` reloads (`SIGHUP`) that took effect.
    pub ca_reloads: AtomicU64,
    /// `events_ca` reloads that failed (the roots in use stayed).
    pub ca_reload_errors: AtomicU64,
    /// `events_key_file` reloads (`SIGHUP`) that took effect.
    pub key_reloads: AtomicU64,
    /// `events_key_file` reloads that failed (the key in use stayed).
    pub key_reload_errors: AtomicU64,
}

impl crate::metrics::FeatureCounters for EventCounters {
    const STATS_PREFIX: &'static str = "throng_events_";

    fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// As the default, but dropped events are one family labelled by reason.
    fn prometheus(&self, out: &mut String) {
        if !self.enabled() {
            return;
        }
        for (name, kind, help, v) in self.fields() {
            if name == DROPPED {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (reason, n) in self.dropped() {
                    let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
                }
            } else if !name.starts_with("throng_events_dropped_") {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
                );
            }
        }
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
                DROPPED,
                "counter",
                "Events dropped, by reason: refused (HTTP 4xx, a redirect), failed (5xx or no answer every time sent alone), stopped (waiting at shutdown).",
                self.dropped().iter().map(|(_, n)| n).sum(),
            ),
            (
                "throng_events_dropped_refused_total",
                "counter",
                "",
                n(&self.dropped_refused),
            ),
            (
                "throng_events_dropped_failed_total",
                "counter",
                "",
                n(&self.dropped_failed),
            ),
            (
                "throng_events_dropped_stopped_total",
                "counter",
                "",
                n(&self.dropped_stopped),
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
            (
                "throng_events_key_reloads_total",
                "counter",
                "events_key_file reloads (SIGHUP) that took effect.",
                n(&self.key_reloads),
            ),
            (
                "throng_events_key_reload_errors_total",
                "counter",
                "events_key_file reloads (SIGHUP) that failed; the key in use stayed.",
                n(&self.key_reload_errors),
            ),
        ]
    }
}
