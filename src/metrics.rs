//! Counters and histograms: written by their owning thread, read by `/metrics` and `/v1/stats`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;

/// How a handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Outcome {
    /// Upgraded and handed to a shard.
    Accepted,
    /// 400.
    BadRequest,
    /// 426.
    UnsupportedVersion,
    /// 404.
    NotFound,
    /// 401 missing_token.
    MissingToken,
    /// 401 invalid_token.
    InvalidToken,
    /// 401 token_expired.
    TokenExpired,
    /// 403.
    ForbiddenOrigin,
    /// 429.
    RateLimited,
    /// 431.
    HeaderTooLarge,
    /// 503 over_capacity.
    OverCapacity,
    /// 503 draining.
    Draining,
    /// The head did not arrive within the handshake timeout.
    Timeout,
    /// The client went away or the socket failed mid-handshake.
    Aborted,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 14] = [
        Outcome::Accepted,
        Outcome::BadRequest,
        Outcome::UnsupportedVersion,
        Outcome::NotFound,
        Outcome::MissingToken,
        Outcome::InvalidToken,
        Outcome::TokenExpired,
        Outcome::ForbiddenOrigin,
        Outcome::RateLimited,
        Outcome::HeaderTooLarge,
        Outcome::OverCapacity,
        Outcome::Draining,
        Outcome::Timeout,
        Outcome::Aborted,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::BadRequest => "bad_request",
            Outcome::UnsupportedVersion => "unsupported_version",
            Outcome::NotFound => "not_found",
            Outcome::MissingToken => "missing_token",
            Outcome::InvalidToken => "invalid_token",
            Outcome::TokenExpired => "token_expired",
            Outcome::ForbiddenOrigin => "forbidden_origin",
            Outcome::RateLimited => "rate_limited",
            Outcome::HeaderTooLarge => "header_too_large",
            Outcome::OverCapacity => "over_capacity",
            Outcome::Draining => "draining",
            Outcome::Timeout => "timeout",
            Outcome::Aborted => "aborted",
        }
    }
}

/// Counters one shard writes.
#[derive(Default)]
pub struct ShardCounters {
    /// Open sessions (gauge).
    pub connections: AtomicU64,
    /// Users with at least one session (gauge).
    pub users: AtomicU64,
    /// Topics with at least one member on this shard (gauge).
    pub topics: AtomicU64,
    /// Push frames handed to sessions.
    pub delivered: AtomicU64,
    /// Closes with 4008.
    pub slow_consumer_closes: AtomicU64,
    /// Closes with 4002.
    pub heartbeat_closes: AtomicU64,
    /// Closes for protocol violations (1002, 1003, 1007, 1008, 1009).
    pub protocol_closes: AtomicU64,
    /// Sessions closed with 4009.
    pub session_evictions: AtomicU64,
    /// Sessions closed with 4003 by the push API.
    pub api_disconnects: AtomicU64,
}

/// One shard's metrics.
pub struct ShardMetrics {
    /// Counters and gauges.
    pub counters: CachePadded<ShardCounters>,
    /// Push-to-socket latency in microseconds, merged from the shard's local copy.
    pub latency_us: Mutex<Histogram<u64>>,
}

/// A latency histogram from 1 µs to 60 s at 3 significant figures.
pub fn latency_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; failure would be a programming error.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Everything the server counts.
pub struct Metrics {
    /// Per shard.
    pub shards: Vec<ShardMetrics>,
    /// Handshakes by outcome, indexed by `Outcome as usize`.
    pub handshakes: CachePadded<[AtomicU64; 14]>,
    /// Push objects accepted by the API.
    pub pushes_accepted: AtomicU64,
    /// Push objects refused as malformed.
    pub pushes_rejected: AtomicU64,
    /// Pushes refused because a shard queue was full.
    pub queue_full_refusals: AtomicU64,
    /// API requests served.
    pub api_requests: AtomicU64,
    /// Set when shutdown begins.
    pub draining: AtomicBool,
}

impl Metrics {
    /// Zeroed metrics for `shards` shards.
    pub fn new(shards: usize) -> Metrics {
        Metrics {
            shards: (0..shards)
                .map(|_| ShardMetrics {
                    counters: CachePadded::new(ShardCounters::default()),
                    latency_us: Mutex::new(latency_histogram()),
                })
                .collect(),
            handshakes: CachePadded::new(Default::default()),
            pushes_accepted: AtomicU64::new(0),
            pushes_rejected: AtomicU64::new(0),
            queue_full_refusals: AtomicU64::new(0),
            api_requests: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// Counts one handshake outcome.
    pub fn handshake(&self, o: Outcome) {
        self.handshakes[o as usize].fetch_add(1, Relaxed);
    }

    fn sum(&self, f: impl Fn(&ShardCounters) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| f(&s.counters).load(Relaxed))
            .sum()
    }

    /// Open sessions on all shards.
    pub fn connections(&self) -> u64 {
        self.sum(|c| &c.connections)
    }

    fn refused(&self) -> u64 {
        Outcome::ALL[1..]
            .iter()
            .map(|o| self.handshakes[*o as usize].load(Relaxed))
            .sum()
    }

    /// The `/v1/stats` document.
    pub fn stats_json(&self) -> String {
        let shards: Vec<serde_json::Value> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::json!({
                    "shard": i,
                    "connections": s.counters.connections.load(Relaxed),
                    "users": s.counters.users.load(Relaxed),
                    "topics": s.counters.topics.load(Relaxed),
                })
            })
            .collect();
        serde_json::json!({
            "connections": self.connections(),
            "users_online": self.sum(|c| &c.users),
            "topics": self.sum(|c| &c.topics),
            "draining": self.draining.load(Relaxed),
            "shards": shards,
            "counters": {
                "handshakes_accepted": self.handshakes[Outcome::Accepted as usize].load(Relaxed),
                "handshakes_refused": self.refused(),
                "pushes_accepted": self.pushes_accepted.load(Relaxed),
                "pushes_rejected": self.pushes_rejected.load(Relaxed),
                "pushes_delivered": self.sum(|c| &c.delivered),
                "slow_consumer_closes": self.sum(|c| &c.slow_consumer_closes),
                "heartbeat_closes": self.sum(|c| &c.heartbeat_closes),
                "protocol_closes": self.sum(|c| &c.protocol_closes),
                "session_evictions": self.sum(|c| &c.session_evictions),
                "api_disconnects": self.sum(|c| &c.api_disconnects),
                "queue_full_refusals": self.queue_full_refusals.load(Relaxed),
            }
        })
        .to_string()
    }

    /// Prometheus text exposition.
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        let per_shard = |out: &mut String,
                         name: &str,
                         kind: &str,
                         help: &str,
                         f: &dyn Fn(&ShardCounters) -> &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, s) in self.shards.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{i}\"}} {}",
                    f(&s.counters).load(Relaxed)
                );
            }
        };
        per_shard(
            &mut out,
            "throng_connections",
            "gauge",
            "Open WebSocket sessions.",
            &|c| &c.connections,
        );
        per_shard(
            &mut out,
            "throng_users_online",
            "gauge",
            "Users with at least one session.",
            &|c| &c.users,
        );
        per_shard(
            &mut out,
            "throng_topics",
            "gauge",
            "Topics with members on the shard.",
            &|c| &c.topics,
        );
        per_shard(
            &mut out,
            "throng_pushes_delivered_total",
            "counter",
            "Push frames handed to sessions.",
            &|c| &c.delivered,
        );
        per_shard(
            &mut out,
            "throng_slow_consumer_closes_total",
            "counter",
            "Sessions closed with 4008 (outbound queue full).",
            &|c| &c.slow_consumer_closes,
        );
        per_shard(
            &mut out,
            "throng_heartbeat_closes_total",
            "counter",
            "Sessions closed with 4002 (idle timeout).",
            &|c| &c.heartbeat_closes,
        );
        per_shard(
            &mut out,
            "throng_protocol_closes_total",
            "counter",
            "Sessions closed for protocol violations.",
            &|c| &c.protocol_closes,
        );
        per_shard(
            &mut out,
            "throng_session_evictions_total",
            "counter",
            "Sessions closed with 4009 (too many sessions for the user).",
            &|c| &c.session_evictions,
        );
        let _ = writeln!(
            out,
            "# HELP throng_handshakes_total Upgrade requests by outcome.\n# TYPE throng_handshakes_total counter"
        );
        for o in Outcome::ALL {
            let _ = writeln!(
                out,
                "throng_handshakes_total{{outcome=\"{}\"}} {}",
                o.label(),
                self.handshakes[o as usize].load(Relaxed)
            );
        }
        for (name, help, v) in [
            (
                "throng_pushes_accepted_total",
                "Push objects accepted by the API.",
                &self.pushes_accepted,
            ),
            (
                "throng_pushes_rejected_total",
                "Push objects refused as malformed.",
                &self.pushes_rejected,
            ),
            (
                "throng_queue_full_refusals_total",
                "Pushes refused with 503 because a shard queue was full.",
                &self.queue_full_refusals,
            ),
            (
                "throng_api_requests_total",
                "Push API requests served.",
                &self.api_requests,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP throng_draining 1 while the server shuts down.\n# TYPE throng_draining gauge\nthrong_draining {}",
            u8::from(self.draining.load(Relaxed))
        );
        self.latency_prometheus(&mut out);
        out
    }

    fn latency_prometheus(&self, out: &mut String) {
        let mut all = latency_histogram();
        for s in &self.shards {
            if let Ok(h) = s.latency_us.lock() {
                // Same bounds on both sides, so adding cannot fail.
                let _ = all.add(&*h);
            }
        }
        const BOUNDS_US: [u64; 14] = [
            50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
            1_000_000, 5_000_000,
        ];
        let name = "throng_push_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from push accepted by the API to written to the sockets of a shard.\n# TYPE {name} histogram"
        );
        for b in BOUNDS_US {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {}",
                b as f64 / 1e6,
                all.count_between(0, b)
            );
        }
        let sum_us: f64 = all
            .iter_recorded()
            .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
            .sum();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", all.len());
        let _ = writeln!(out, "{name}_sum {}", sum_us / 1e6);
        let _ = writeln!(out, "{name}_count {}", all.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_has_families() {
        let m = Metrics::new(2);
        m.handshake(Outcome::Accepted);
        m.shards[1].counters.connections.fetch_add(3, Relaxed);
        m.shards[0].latency_us.lock().unwrap().record(800).unwrap();
        let text = m.prometheus();
        assert!(text.contains("throng_connections{shard=\"1\"} 3"));
        assert!(text.contains("throng_handshakes_total{outcome=\"accepted\"} 1"));
        assert!(text.contains("throng_push_latency_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("throng_push_latency_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("throng_push_latency_seconds_count 1"));
        let stats: serde_json::Value = serde_json::from_str(&m.stats_json()).unwrap();
        assert_eq!(stats["connections"], 3);
        assert_eq!(stats["shards"][1]["connections"], 3);
        assert_eq!(stats["counters"]["handshakes_accepted"], 1);
    }
}
