//! What the broker threads count, shown in `/metrics` and `/v1/stats` in cluster mode.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Broker counters and gauges; all zero (and not shown) in standalone mode.
#[derive(Default)]
pub struct BrokerCounters {
    /// Cluster mode is on.
    pub enabled: AtomicBool,
    /// The publisher's Redis link is up.
    pub up: AtomicBool,
    /// The subscriber's Redis links are up.
    pub subscriber_up: AtomicBool,
    /// Another live node runs under this node's id.
    pub duplicate_node_id: AtomicBool,
    /// Heartbeats Redis took from this node (one a second while its presence link is up).
    pub presence_beats: AtomicU64,
    /// Pushes published through the sequencing script (API and stream).
    pub published: AtomicU64,
    /// Redis errors of every broker thread (each one a reconnect, a refused push or a
    /// refused keep of served streams).
    pub errors: AtomicU64,
    /// Pushes answered 202 sent again because their round trip went unanswered (each time,
    /// answered or not).
    pub resent: AtomicU64,
    /// Streams on which such a push was there already (not applied again).
    pub resent_taken: AtomicU64,
    /// Pushes answered 202 waiting for Redis to take them: refused for now, behind such a
    /// push on a stream, or of a round trip that went unanswered (gauge).
    pub waiting: AtomicU64,
    /// Pushes answered 202 (or a part: some users of a `users` push) that waited behind an
    /// earlier push to the same stream that Redis had refused for now.
    pub held_behind: AtomicU64,
    /// Channels subscribed now (gauge).
    pub channels: AtomicU64,
    /// Users and topics this node serves (gauge).
    pub streams: AtomicU64,
    /// Streams the shards asked the subscriber to watch or drop that it has not taken
    /// yet (gauge).
    pub interests_waiting: AtomicU64,
    /// Bytes of pushes the API queued for the publisher, until it takes them (gauge; at
    /// most `max_outbound_total_bytes` of API pushes).
    pub publish_queued_bytes: AtomicU64,
    /// Bytes of pushes and stream states from Redis waiting in the shards' queues (gauge;
    /// at most `max_outbound_total_bytes`, one message always passes).
    pub queued_bytes: AtomicU64,
    /// Stream states loaded from Redis (first session, reconnects, gaps).
    pub loads: AtomicU64,
    /// Streams this node found gone back in Redis and gave a new epoch.
    pub rewound: AtomicU64,
    /// Messages received on subscribed channels.
    pub received: AtomicU64,
    /// Entries read from `throng:push`.
    pub stream_read: AtomicU64,
    /// Entries sent to `throng:push:dlq`.
    pub stream_dlq: AtomicU64,
    /// Entries claimed from other consumers (XAUTOCLAIM).
    pub stream_claimed: AtomicU64,
    /// This node's own pending entries read again: held ones tried again each claim
    /// cycle, and what a restart found unacknowledged.
    pub stream_retried: AtomicU64,
    /// Entries of `throng:push` read by some node and not acknowledged yet, as of the
    /// last claim (gauge; every node sees the group's whole figure).
    pub stream_pending: AtomicU64,
    /// Entries every consumer group had acknowledged, trimmed from the stream.
    pub stream_trimmed: AtomicU64,
    /// Ingress turns spent not reading because the shards were full.
    pub stream_paused: AtomicU64,
    /// New sessions and subscribes refused because too many stream changes waited for
    /// the broker (`shard::MAX_INTERESTS_WAITING`).
    pub behind_refusals: AtomicU64,
    /// `SIGHUP` reloads of `redis_ca` and the client certificate that took.
    pub tls_reloads: AtomicU64,
    /// Such reloads refused (a file that cannot be used; the files in use stay).
    pub tls_reload_errors: AtomicU64,
}

impl crate::metrics::FeatureCounters for BrokerCounters {
    const STATS_PREFIX: &'static str = "throng_";

    fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    fn fields(&self) -> Vec<crate::metrics::Field> {
        let b = |v: &AtomicBool| u64::from(v.load(Relaxed));
        let n = |v: &AtomicU64| v.load(Relaxed);
        vec![
            (
                "throng_broker_up",
                "gauge",
                "1 while the publisher's Redis link is up.",
                b(&self.up),
            ),
            (
                "throng_broker_subscriber_up",
                "gauge",
                "1 while the subscriber's Redis links are up.",
                b(&self.subscriber_up),
            ),
            (
                "throng_broker_duplicate_node_id",
                "gauge",
                "1 while another live node runs under this node's id (presence and stats are wrong).",
                b(&self.duplicate_node_id),
            ),
            (
                "throng_broker_presence_beats_total",
                "counter",
                "Heartbeats Redis took from this node (one a second while presence reaches Redis).",
                n(&self.presence_beats),
            ),
            (
                "throng_broker_published_total",
                "counter",
                "Pushes published through the sequencing script.",
                n(&self.published),
            ),
            (
                "throng_broker_errors_total",
                "counter",
                "Redis errors (reconnects, refused pushes and refused keeps of served streams).",
                n(&self.errors),
            ),
            (
                "throng_broker_resent_total",
                "counter",
                "Pushes answered 202 sent again because their round trip went unanswered (each time).",
                n(&self.resent),
            ),
            (
                "throng_broker_resent_taken_total",
                "counter",
                "Streams on which a push sent again was there already (not applied again).",
                n(&self.resent_taken),
            ),
            (
                "throng_broker_waiting",
                "gauge",
                "Pushes answered 202 waiting for Redis to take them (refused for now, behind one, or unanswered).",
                n(&self.waiting),
            ),
            (
                "throng_broker_held_behind_total",
                "counter",
                "Pushes answered 202 that waited behind an earlier push to the same stream Redis refused for now.",
                n(&self.held_behind),
            ),
            (
                "throng_broker_channels",
                "gauge",
                "Redis channels this node is subscribed to.",
                n(&self.channels),
            ),
            (
                "throng_broker_streams",
                "gauge",
                "Users and topics this node serves.",
                n(&self.streams),
            ),
            (
                "throng_broker_interests_waiting",
                "gauge",
                "Streams the shards asked to watch or drop, not yet taken by the subscriber.",
                n(&self.interests_waiting),
            ),
            (
                "throng_broker_publish_queued_bytes",
                "gauge",
                "Bytes of pushes queued for the publisher, not taken yet (API pushes at most max_outbound_total_bytes).",
                n(&self.publish_queued_bytes),
            ),
            (
                "throng_broker_queued_bytes",
                "gauge",
                "Bytes of pushes and stream states from Redis waiting in shard queues (at most max_outbound_total_bytes).",
                n(&self.queued_bytes),
            ),
            (
                "throng_broker_loads_total",
                "counter",
                "Stream states loaded from Redis.",
                n(&self.loads),
            ),
            (
                "throng_broker_rewound_streams_total",
                "counter",
                "Streams found gone back in Redis (a seq below one a node had, or a push numbered again) that this node gave a new epoch.",
                n(&self.rewound),
            ),
            (
                "throng_broker_received_total",
                "counter",
                "Pushes received on subscribed channels.",
                n(&self.received),
            ),
            (
                "throng_stream_read_total",
                "counter",
                "Entries read from the throng:push stream.",
                n(&self.stream_read),
            ),
            (
                "throng_stream_dlq_total",
                "counter",
                "Invalid entries sent to throng:push:dlq.",
                n(&self.stream_dlq),
            ),
            (
                "throng_stream_pending",
                "gauge",
                "throng:push entries read and not yet acknowledged, all nodes (at the last claim).",
                n(&self.stream_pending),
            ),
            (
                "throng_stream_claimed_total",
                "counter",
                "Entries claimed from dead consumers.",
                n(&self.stream_claimed),
            ),
            (
                "throng_stream_retried_total",
                "counter",
                "This node's own pending entries tried again (refused for now, or after a restart).",
                n(&self.stream_retried),
            ),
            (
                "throng_stream_trimmed_total",
                "counter",
                "Stream entries every consumer group had acknowledged, trimmed.",
                n(&self.stream_trimmed),
            ),
            (
                "throng_stream_paused_total",
                "counter",
                "Ingress turns not reading because shards were full.",
                n(&self.stream_paused),
            ),
            (
                "throng_broker_behind_refusals_total",
                "counter",
                "New sessions (503) and subscribes refused while the broker was behind.",
                n(&self.behind_refusals),
            ),
            (
                "throng_redis_tls_reloads_total",
                "counter",
                "SIGHUP reloads of redis_ca and the Redis client certificate.",
                n(&self.tls_reloads),
            ),
            (
                "throng_redis_tls_reload_errors_total",
                "counter",
                "Such reloads refused (the files in use stay).",
                n(&self.tls_reload_errors),
            ),
            (
                "throng_cluster",
                "gauge",
                "1 in cluster mode.",
                b(&self.enabled),
            ),
        ]
    }
}
