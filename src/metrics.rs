//! Counters and histograms: written by their owning thread, read by `/metrics` and `/v1/stats`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;

/// How a handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum HandshakeOutcome {
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
    /// The TLS handshake failed (bad records, an alert, plain HTTP on the TLS port).
    TlsFailed,
}

impl HandshakeOutcome {
    /// Every outcome, in label order.
    pub const ALL: [HandshakeOutcome; 15] = [
        HandshakeOutcome::Accepted,
        HandshakeOutcome::BadRequest,
        HandshakeOutcome::UnsupportedVersion,
        HandshakeOutcome::NotFound,
        HandshakeOutcome::MissingToken,
        HandshakeOutcome::InvalidToken,
        HandshakeOutcome::TokenExpired,
        HandshakeOutcome::ForbiddenOrigin,
        HandshakeOutcome::RateLimited,
        HandshakeOutcome::HeaderTooLarge,
        HandshakeOutcome::OverCapacity,
        HandshakeOutcome::Draining,
        HandshakeOutcome::Timeout,
        HandshakeOutcome::Aborted,
        HandshakeOutcome::TlsFailed,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeOutcome::Accepted => "accepted",
            HandshakeOutcome::BadRequest => "bad_request",
            HandshakeOutcome::UnsupportedVersion => "unsupported_version",
            HandshakeOutcome::NotFound => "not_found",
            HandshakeOutcome::MissingToken => "missing_token",
            HandshakeOutcome::InvalidToken => "invalid_token",
            HandshakeOutcome::TokenExpired => "token_expired",
            HandshakeOutcome::ForbiddenOrigin => "forbidden_origin",
            HandshakeOutcome::RateLimited => "rate_limited",
            HandshakeOutcome::HeaderTooLarge => "header_too_large",
            HandshakeOutcome::OverCapacity => "over_capacity",
            HandshakeOutcome::Draining => "draining",
            HandshakeOutcome::Timeout => "timeout",
            HandshakeOutcome::Aborted => "aborted",
            HandshakeOutcome::TlsFailed => "tls_failed",
        }
    }
}

/// One metric of a family shown only while its feature is on: name, type, help, value.
pub type Field = (&'static str, &'static str, &'static str, u64);

/// Counters of an optional feature (cluster mode, events for the upstream): in `/metrics`
/// and `/v1/stats` only while it is on.
pub trait FeatureCounters {
    /// What `/v1/stats` drops from the front of each name (as well as `_total`).
    const STATS_PREFIX: &'static str;

    /// Whether the feature is on.
    fn enabled(&self) -> bool;

    /// Its metrics, read now.
    fn fields(&self) -> Vec<Field>;

    /// Appends the Prometheus lines, when on.
    fn prometheus(&self, out: &mut String) {
        if !self.enabled() {
            return;
        }
        for (name, kind, help, v) in self.fields() {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        self.prometheus_labelled(out);
    }

    /// Appends families with labels (one line per label value), when there are any.
    fn prometheus_labelled(&self, _out: &mut String) {}

    /// The `/v1/stats` object, `null` when off.
    fn json(&self) -> serde_json::Value {
        if !self.enabled() {
            return serde_json::Value::Null;
        }
        let mut m = serde_json::Map::new();
        for (name, _, _, v) in self.fields() {
            let key = name
                .trim_start_matches(Self::STATS_PREFIX)
                .trim_end_matches("_total");
            m.insert(key.to_string(), v.into());
        }
        serde_json::Value::Object(m)
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
    /// Bytes queued for clients that the sockets have not taken yet (gauge).
    pub outbound_bytes: AtomicU64,
    /// Bytes of incomplete inbound frames and messages held for clients (gauge).
    pub partial_bytes: AtomicU64,
    /// The part of `outbound_bytes` queued on connections already closing (gauge): the
    /// memory budget leaves it out.
    pub closing_bytes: AtomicU64,
    /// Sessions closed with 4008 because the process-wide outbound budget was exceeded.
    pub budget_closes: AtomicU64,
    /// Bytes of push frames (direct and topic) kept for resume; a shared topic frame
    /// counts on every shard that keeps it (gauge).
    pub history_bytes: AtomicU64,
    /// Pushes dropped from history before their TTL (`history_size`, `history_memory_bytes`).
    pub history_evictions: AtomicU64,
    /// Client `ack` messages recorded (docs/protocol.md 4.3).
    pub acks: AtomicU64,
    /// WebSocket Pings sent for heartbeats.
    pub pings: AtomicU64,
    /// Client publishes numbered and fanned out (answered `published`).
    pub client_publishes: AtomicU64,
    /// Client messages refused with `rate_limited` (`client_rate`).
    pub rate_limited: AtomicU64,
    /// Client publishes sent to the push API and not answered yet (gauge; at most 1,024).
    pub publishes_waiting: AtomicU64,
    /// Sessions with an ack recorded (gauge): entries of the shard's ack table, which
    /// leave with their connection.
    pub acked_sessions: AtomicU64,
    /// Frames compressed for permessage-deflate (at most once per frame, on whichever
    /// shard needed it first).
    pub deflate_compressions: AtomicU64,
    /// Frames sent compressed (permessage-deflate) instead of plain.
    pub deflated_sends: AtomicU64,
    /// Compressed client messages inflated.
    pub inflated_messages: AtomicU64,
}

/// One shard's metrics.
pub struct ShardMetrics {
    /// Counters and gauges.
    pub counters: CachePadded<ShardCounters>,
    /// Push-to-socket latency in microseconds, merged from the shard's local copy.
    pub latency_us: Mutex<Histogram<u64>>,
    /// Push-accepted-to-ack latency in microseconds, merged from the shard's local copy.
    pub ack_latency_us: Mutex<Histogram<u64>>,
}

/// Longest push-to-socket latency recorded, in µs (longer ones count as this).
pub const LATENCY_MAX_US: u64 = 60_000_000;
/// Longest ack latency recorded, in µs: an hour, past any sensible `history_ttl_ms`
/// (a push is observed only while history still holds it).
pub const ACK_LATENCY_MAX_US: u64 = 3_600_000_000;

/// A latency histogram from 1 µs to 60 s at 3 significant figures.
pub fn latency_histogram() -> Histogram<u64> {
    bounded_histogram(LATENCY_MAX_US)
}

/// An ack latency histogram from 1 µs to an hour at 3 significant figures.
pub fn ack_latency_histogram() -> Histogram<u64> {
    bounded_histogram(ACK_LATENCY_MAX_US)
}

fn bounded_histogram(max_us: u64) -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; failure would be a programming error.
    Histogram::new_with_bounds(1, max_us, 3).expect("valid histogram bounds")
}

/// A Prometheus histogram family: what it is called and says, and its bucket bounds.
struct HistogramFamily {
    name: &'static str,
    help: &'static str,
    bounds_us: &'static [u64],
}

/// Push-to-socket latency.
const PUSH_LATENCY: HistogramFamily = HistogramFamily {
    name: "throng_push_latency_seconds",
    help: "Time from push accepted by the API to written to the sockets of a shard; observed only when the push reached at least one socket of that shard.",
    bounds_us: &[
        50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
        1_000_000, 5_000_000,
    ],
};

/// Push-accepted-to-ack latency (docs/protocol.md 4.3).
const ACK_LATENCY: HistogramFamily = HistogramFamily {
    name: "throng_ack_latency_seconds",
    help: "Time from a direct push accepted by the API to the first ack of a session covering it (observed for the acked seq, while history holds it).",
    bounds_us: &[
        1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
        5_000_000, 10_000_000, 30_000_000, 60_000_000, 300_000_000,
    ],
};

/// Everything the server counts.
pub struct Metrics {
    /// Per shard.
    pub shards: Vec<ShardMetrics>,
    /// Handshakes by outcome, indexed by `HandshakeOutcome as usize`.
    pub handshakes: CachePadded<[AtomicU64; 15]>,
    /// Push objects accepted by the API.
    pub pushes_accepted: AtomicU64,
    /// Push objects refused as malformed.
    pub pushes_rejected: AtomicU64,
    /// Pushes accepted as duplicates of an `id` already accepted on their stream.
    pub pushes_duplicate: AtomicU64,
    /// Pushes refused because a shard queue was full.
    pub queue_full_refusals: AtomicU64,
    /// API requests served.
    pub api_requests: AtomicU64,
    /// Bytes of push payload in commands waiting in shard queues (gauge).
    pub command_bytes: AtomicU64,
    /// Topic streams the API's sequencer is numbering (gauge).
    pub topic_streams: AtomicU64,
    /// (stream, push id) pairs held for deduplication (gauge).
    pub dedup_entries: AtomicU64,
    /// Pairs forgotten within `dedup_window_ms` because the table was full.
    pub dedup_forgotten_early: AtomicU64,
    /// Open push API connections (gauge).
    pub api_connections: AtomicU64,
    /// Response bytes the push API holds for clients that have not read them yet (gauge).
    pub api_output_bytes: AtomicU64,
    /// Bytes the push API's request buffers take, all connections together (gauge).
    pub api_input_bytes: AtomicU64,
    /// Push API request bodies that waited for room under `api_max_buffered_bytes`.
    pub api_input_pauses: AtomicU64,
    /// Push API requests answered 504: the shards (or Redis) did not answer in time.
    pub api_reply_timeouts: AtomicU64,
    /// Push API connections answered 503 because `api_max_connections` were open.
    pub api_refused_connections: AtomicU64,
    /// Push API connections closed because a request did not complete in time (408).
    pub api_request_timeouts: AtomicU64,
    /// Idle keep-alive push API connections closed.
    pub api_idle_closes: AtomicU64,
    /// Idle push API connections that never made a keyed request, closed to make room
    /// for a new connection at `api_max_connections`.
    pub api_evictions: AtomicU64,
    /// JWT key file reloads (`SIGHUP`) and `jwks_url` fetches that took effect.
    pub jwt_key_reloads: AtomicU64,
    /// JWT key file reloads that failed (the keys in use stayed).
    pub jwt_key_reload_errors: AtomicU64,
    /// `api_key_file` reloads (`SIGHUP`) that took effect.
    pub api_key_reloads: AtomicU64,
    /// `api_key_file` reloads that failed (the keys in use stayed).
    pub api_key_reload_errors: AtomicU64,
    /// Failed `accept` calls on the client listener.
    pub accept_errors_client: AtomicU64,
    /// Failed `accept` calls on the push API listener.
    pub accept_errors_api: AtomicU64,
    /// Upgrade requests in progress in the acceptor (gauge).
    pub pending_handshakes: AtomicU64,
    /// Push API TLS handshakes in progress on their thread (gauge; in `api_connections`
    /// too).
    pub api_pending_handshakes: AtomicU64,
    /// Set when shutdown begins.
    pub draining: AtomicBool,
    /// Cluster mode: the broker threads' counters.
    pub broker: crate::broker::BrokerCounters,
    /// Client sends and lifecycle events on their way upstream.
    pub events: crate::events::EventCounters,
    /// The Kafka ingress.
    pub kafka: crate::kafka::KafkaCounters,
    /// TLS on the client listener.
    pub tls: crate::tls::TlsCounters,
    /// TLS on the push API.
    pub api_tls: crate::tls::ApiTlsCounters,
}

impl Metrics {
    /// Zeroed metrics for `shards` shards.
    pub fn new(shards: usize) -> Metrics {
        Metrics {
            shards: (0..shards)
                .map(|_| ShardMetrics {
                    counters: CachePadded::new(ShardCounters::default()),
                    latency_us: Mutex::new(latency_histogram()),
                    ack_latency_us: Mutex::new(ack_latency_histogram()),
                })
                .collect(),
            handshakes: CachePadded::new(Default::default()),
            pushes_accepted: AtomicU64::new(0),
            pushes_rejected: AtomicU64::new(0),
            pushes_duplicate: AtomicU64::new(0),
            queue_full_refusals: AtomicU64::new(0),
            api_requests: AtomicU64::new(0),
            command_bytes: AtomicU64::new(0),
            topic_streams: AtomicU64::new(0),
            dedup_entries: AtomicU64::new(0),
            dedup_forgotten_early: AtomicU64::new(0),
            api_connections: AtomicU64::new(0),
            api_output_bytes: AtomicU64::new(0),
            api_input_bytes: AtomicU64::new(0),
            api_input_pauses: AtomicU64::new(0),
            api_reply_timeouts: AtomicU64::new(0),
            api_refused_connections: AtomicU64::new(0),
            api_request_timeouts: AtomicU64::new(0),
            api_idle_closes: AtomicU64::new(0),
            api_evictions: AtomicU64::new(0),
            jwt_key_reloads: AtomicU64::new(0),
            jwt_key_reload_errors: AtomicU64::new(0),
            api_key_reloads: AtomicU64::new(0),
            api_key_reload_errors: AtomicU64::new(0),
            accept_errors_client: AtomicU64::new(0),
            accept_errors_api: AtomicU64::new(0),
            pending_handshakes: AtomicU64::new(0),
            api_pending_handshakes: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            broker: crate::broker::BrokerCounters::default(),
            events: crate::events::EventCounters::default(),
            kafka: crate::kafka::KafkaCounters::default(),
            tls: crate::tls::TlsCounters::default(),
            api_tls: crate::tls::ApiTlsCounters::default(),
        }
    }

    /// Counts one handshake outcome.
    pub fn handshake(&self, o: HandshakeOutcome) {
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
        HandshakeOutcome::ALL[1..]
            .iter()
            .map(|o| self.handshakes[*o as usize].load(Relaxed))
            .sum()
    }

    /// The `/v1/stats` document.
    pub fn stats_json(&self) -> String {
        self.stats_value().to_string()
    }

    /// The `/v1/stats` document as JSON (cluster mode adds the cluster's view to it).
    pub fn stats_value(&self) -> serde_json::Value {
        // Each gauge is read once: the totals are sums of the very values shown per shard.
        let (mut connections, mut users, mut topics) = (0u64, 0u64, 0u64);
        let shards: Vec<serde_json::Value> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let c = s.counters.connections.load(Relaxed);
                let u = s.counters.users.load(Relaxed);
                let t = s.counters.topics.load(Relaxed);
                connections += c;
                users += u;
                topics += t;
                serde_json::json!({"shard": i, "connections": c, "users": u, "topics": t})
            })
            .collect();
        serde_json::json!({
            "connections": connections,
            "users_online": users,
            "topics": topics,
            "draining": self.draining.load(Relaxed),
            "shards": shards,
            "counters": {
                "handshakes_accepted": self.handshakes[HandshakeOutcome::Accepted as usize].load(Relaxed),
                "handshakes_refused": self.refused(),
                "pushes_accepted": self.pushes_accepted.load(Relaxed),
                "pushes_rejected": self.pushes_rejected.load(Relaxed),
                "pushes_duplicate": self.pushes_duplicate.load(Relaxed),
                "dedup_forgotten_early": self.dedup_forgotten_early.load(Relaxed),
                "pushes_delivered": self.sum(|c| &c.delivered),
                "slow_consumer_closes": self.sum(|c| &c.slow_consumer_closes),
                "heartbeat_closes": self.sum(|c| &c.heartbeat_closes),
                "protocol_closes": self.sum(|c| &c.protocol_closes),
                "session_evictions": self.sum(|c| &c.session_evictions),
                "api_disconnects": self.sum(|c| &c.api_disconnects),
                "queue_full_refusals": self.queue_full_refusals.load(Relaxed),
                "budget_closes": self.sum(|c| &c.budget_closes),
                "history_evictions": self.sum(|c| &c.history_evictions),
                "acks": self.sum(|c| &c.acks),
                "pings": self.sum(|c| &c.pings),
                "deflate_compressions": self.sum(|c| &c.deflate_compressions),
                "deflated_sends": self.sum(|c| &c.deflated_sends),
                "inflated_messages": self.sum(|c| &c.inflated_messages),
                "client_publishes": self.sum(|c| &c.client_publishes),
                "rate_limited": self.sum(|c| &c.rate_limited),
                "api_refused_connections": self.api_refused_connections.load(Relaxed),
                "api_request_timeouts": self.api_request_timeouts.load(Relaxed),
                "api_idle_closes": self.api_idle_closes.load(Relaxed),
                "api_evictions": self.api_evictions.load(Relaxed),
                "api_input_pauses": self.api_input_pauses.load(Relaxed),
                "api_reply_timeouts": self.api_reply_timeouts.load(Relaxed),
                "jwt_key_reloads": self.jwt_key_reloads.load(Relaxed),
                "jwt_key_reload_errors": self.jwt_key_reload_errors.load(Relaxed),
                "api_key_reloads": self.api_key_reloads.load(Relaxed),
                "api_key_reload_errors": self.api_key_reload_errors.load(Relaxed),
                "accept_errors_client": self.accept_errors_client.load(Relaxed),
                "accept_errors_api": self.accept_errors_api.load(Relaxed),
            },
            "api_connections": self.api_connections.load(Relaxed),
            "topic_streams": self.topic_streams.load(Relaxed),
            "dedup_entries": self.dedup_entries.load(Relaxed),
            "command_bytes": self.command_bytes.load(Relaxed),
            "api_output_bytes": self.api_output_bytes.load(Relaxed),
            "api_input_bytes": self.api_input_bytes.load(Relaxed),
            "pending_handshakes": self.pending_handshakes.load(Relaxed),
            "api_pending_handshakes": self.api_pending_handshakes.load(Relaxed),
            "outbound_bytes": self.sum(|c| &c.outbound_bytes),
            "partial_bytes": self.sum(|c| &c.partial_bytes),
            "closing_bytes": self.sum(|c| &c.closing_bytes),
            "history_bytes": self.sum(|c| &c.history_bytes),
            "cluster": self.broker.json(),
            "events": self.events.json(),
            "kafka": self.kafka.json(),
            "tls": self.tls.json(),
            "api_tls": self.api_tls.json(),
        })
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
        per_shard(
            &mut out,
            "throng_outbound_bytes",
            "gauge",
            "Bytes queued for clients that their sockets have not taken yet.",
            &|c| &c.outbound_bytes,
        );
        per_shard(
            &mut out,
            "throng_partial_bytes",
            "gauge",
            "Bytes of incomplete inbound frames and messages held for clients.",
            &|c| &c.partial_bytes,
        );
        per_shard(
            &mut out,
            "throng_closing_bytes",
            "gauge",
            "Of the outbound bytes, those queued on connections already closing (outside the memory budget).",
            &|c| &c.closing_bytes,
        );
        per_shard(
            &mut out,
            "throng_budget_closes_total",
            "counter",
            "Sessions closed with 4008 because max_outbound_total_bytes was exceeded.",
            &|c| &c.budget_closes,
        );
        per_shard(
            &mut out,
            "throng_acks_total",
            "counter",
            "Client acks of the user stream recorded.",
            &|c| &c.acks,
        );
        per_shard(
            &mut out,
            "throng_pings_total",
            "counter",
            "WebSocket Pings sent to silent connections (heartbeats).",
            &|c| &c.pings,
        );
        per_shard(
            &mut out,
            "throng_deflate_compressions_total",
            "counter",
            "Frames compressed for permessage-deflate (once per frame across shards).",
            &|c| &c.deflate_compressions,
        );
        per_shard(
            &mut out,
            "throng_deflated_sends_total",
            "counter",
            "Frames sent compressed (permessage-deflate) instead of plain.",
            &|c| &c.deflated_sends,
        );
        per_shard(
            &mut out,
            "throng_inflated_messages_total",
            "counter",
            "Compressed client messages inflated.",
            &|c| &c.inflated_messages,
        );
        per_shard(
            &mut out,
            "throng_client_publishes_total",
            "counter",
            "Client publishes numbered and delivered to the topic (answered published).",
            &|c| &c.client_publishes,
        );
        per_shard(
            &mut out,
            "throng_client_publishes_waiting",
            "gauge",
            "Client publishes waiting for the push API to number them (at most 1,024 per shard).",
            &|c| &c.publishes_waiting,
        );
        per_shard(
            &mut out,
            "throng_rate_limited_total",
            "counter",
            "Client messages refused with rate_limited (client_rate).",
            &|c| &c.rate_limited,
        );
        per_shard(
            &mut out,
            "throng_acked_sessions",
            "gauge",
            "Sessions with an ack recorded (their entries leave with the connection).",
            &|c| &c.acked_sessions,
        );
        per_shard(
            &mut out,
            "throng_history_bytes",
            "gauge",
            "Bytes of push frames (direct and topic) this shard keeps for resume; a topic frame shared by several shards counts on each.",
            &|c| &c.history_bytes,
        );
        per_shard(
            &mut out,
            "throng_history_evictions_total",
            "counter",
            "Pushes dropped from history before their TTL (history_size or history_memory_bytes).",
            &|c| &c.history_evictions,
        );
        let _ = writeln!(
            out,
            "# HELP throng_handshakes_total Upgrade requests by outcome.\n# TYPE throng_handshakes_total counter"
        );
        for o in HandshakeOutcome::ALL {
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
                "throng_pushes_duplicate_total",
                "Pushes accepted but not delivered: their id was already accepted on the stream.",
                &self.pushes_duplicate,
            ),
            (
                "throng_dedup_forgotten_early_total",
                "Push ids forgotten before dedup_window_ms because 1,000,000 were held: a retry of one would be delivered again.",
                &self.dedup_forgotten_early,
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
            (
                "throng_api_refused_connections_total",
                "Push API connections answered 503 at api_max_connections.",
                &self.api_refused_connections,
            ),
            (
                "throng_api_request_timeouts_total",
                "Push API requests that did not complete within api_request_timeout_ms (408).",
                &self.api_request_timeouts,
            ),
            (
                "throng_api_idle_closes_total",
                "Idle push API connections closed: after api_idle_timeout_ms, or api_request_timeout_ms for one that never made a keyed request.",
                &self.api_idle_closes,
            ),
            (
                "throng_api_evictions_total",
                "Idle push API connections that never made a keyed request, closed to make room for a new one at api_max_connections.",
                &self.api_evictions,
            ),
            (
                "throng_api_reply_timeouts_total",
                "Push API requests answered 504: the shards (or Redis) did not answer within 10 s.",
                &self.api_reply_timeouts,
            ),
            (
                "throng_api_input_pauses_total",
                "Push API request bodies that waited, unread, for room under api_max_buffered_bytes.",
                &self.api_input_pauses,
            ),
            (
                "throng_jwt_key_reloads_total",
                "JWT key file reloads (SIGHUP) and jwks_url fetches that took effect.",
                &self.jwt_key_reloads,
            ),
            (
                "throng_jwt_key_reload_errors_total",
                "JWT key file reloads and jwks_url fetches that failed; the keys in use stayed.",
                &self.jwt_key_reload_errors,
            ),
            (
                "throng_api_key_reloads_total",
                "api_key_file reloads (SIGHUP) that took effect.",
                &self.api_key_reloads,
            ),
            (
                "throng_api_key_reload_errors_total",
                "api_key_file reloads that failed; the keys in use stayed.",
                &self.api_key_reload_errors,
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
            "# HELP throng_accept_errors_total Failed accept calls by listener.\n# TYPE throng_accept_errors_total counter\nthrong_accept_errors_total{{listener=\"client\"}} {}\nthrong_accept_errors_total{{listener=\"api\"}} {}",
            self.accept_errors_client.load(Relaxed),
            self.accept_errors_api.load(Relaxed)
        );
        for (name, help, v) in [
            (
                "throng_api_connections",
                "Open push API connections.",
                &self.api_connections,
            ),
            (
                "throng_api_output_bytes",
                "Response bytes held for push API clients that have not read them yet.",
                &self.api_output_bytes,
            ),
            (
                "throng_api_input_bytes",
                "Bytes the push API's request buffers take (bodies admitted up to api_max_buffered_bytes).",
                &self.api_input_bytes,
            ),
            (
                "throng_command_queue_bytes",
                "Bytes of push payload waiting in shard command queues.",
                &self.command_bytes,
            ),
            (
                "throng_topic_streams",
                "Topic streams numbered by the sequencer (at most 1,000,000; least recently pushed forgotten first).",
                &self.topic_streams,
            ),
            (
                "throng_dedup_entries",
                "Push ids held for deduplication (at most 1,000,000; oldest forgotten first).",
                &self.dedup_entries,
            ),
            (
                "throng_pending_handshakes",
                "Upgrade requests in progress (accepted sockets without a complete head).",
                &self.pending_handshakes,
            ),
            (
                "throng_api_pending_handshakes",
                "Push API TLS handshakes in progress (also counted in throng_api_connections).",
                &self.api_pending_handshakes,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP throng_draining 1 while the server shuts down.\n# TYPE throng_draining gauge\nthrong_draining {}",
            u8::from(self.draining.load(Relaxed))
        );
        self.histogram_prometheus(&mut out, &PUSH_LATENCY, latency_histogram(), |s| {
            &s.latency_us
        });
        self.histogram_prometheus(&mut out, &ACK_LATENCY, ack_latency_histogram(), |s| {
            &s.ack_latency_us
        });
        self.broker.prometheus(&mut out);
        self.events.prometheus(&mut out);
        self.kafka.prometheus(&mut out);
        self.tls.prometheus(&mut out);
        self.api_tls.prometheus(&mut out);
        out
    }

    /// Writes one histogram family: the shards' histograms (`pick`) merged into `all`,
    /// an empty histogram with their bounds.
    fn histogram_prometheus(
        &self,
        out: &mut String,
        family: &HistogramFamily,
        mut all: Histogram<u64>,
        pick: impl Fn(&ShardMetrics) -> &Mutex<Histogram<u64>>,
    ) {
        for s in &self.shards {
            if let Ok(h) = pick(s).lock() {
                // Same bounds on both sides, so adding cannot fail.
                let _ = all.add(&*h);
            }
        }
        let HistogramFamily {
            name,
            help,
            bounds_us,
        } = family;
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for &b in *bounds_us {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {}",
                b as f64 / 1e6,
                all.count_between(0, b)
            );
        }
        // A fold from +0.0: `Sum` for floats starts at -0.0, which printed "-0" before any push.
        let sum_us = all.iter_recorded().fold(0.0f64, |acc, v| {
            acc + v.value_iterated_to() as f64 * v.count_at_value() as f64
        });
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", all.len());
        let _ = writeln!(out, "{name}_sum {}", sum_us / 1e6);
        let _ = writeln!(out, "{name}_count {}", all.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_sum_is_plain_zero_before_any_push() {
        let text = Metrics::new(1).prometheus();
        assert!(
            text.contains("throng_push_latency_seconds_sum 0\n"),
            "{}",
            text.lines()
                .find(|l| l.starts_with("throng_push_latency_seconds_sum"))
                .unwrap_or("no sum line")
        );
    }

    #[test]
    fn prometheus_has_families() {
        let m = Metrics::new(2);
        m.handshake(HandshakeOutcome::Accepted);
        m.shards[1].counters.connections.fetch_add(3, Relaxed);
        m.shards[0].latency_us.lock().unwrap().record(800).unwrap();
        let text = m.prometheus();
        assert!(text.contains("throng_connections{shard=\"1\"} 3"));
        assert!(text.contains("throng_handshakes_total{outcome=\"accepted\"} 1"));
        assert!(text.contains("throng_push_latency_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("throng_push_latency_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("throng_push_latency_seconds_count 1"));
        m.shards[1]
            .ack_latency_us
            .lock()
            .unwrap()
            .record(2_000_000)
            .unwrap();
        let text = m.prometheus();
        assert!(text.contains("throng_ack_latency_seconds_bucket{le=\"1\"} 0"));
        assert!(text.contains("throng_ack_latency_seconds_bucket{le=\"2.5\"} 1"));
        assert!(text.contains("throng_ack_latency_seconds_count 1"));
        assert!(text.contains("throng_ack_latency_seconds_sum 2.00"));
        assert!(text.contains("throng_acked_sessions{shard=\"0\"} 0"));
        assert!(text.contains("throng_accept_errors_total{listener=\"api\"} 0"));
        assert!(text.contains("throng_pending_handshakes 0"));
        let stats: serde_json::Value = serde_json::from_str(&m.stats_json()).unwrap();
        assert_eq!(stats["connections"], 3);
        assert_eq!(stats["shards"][1]["connections"], 3);
        assert_eq!(stats["counters"]["handshakes_accepted"], 1);
    }
}
