//! Cluster mode on Redis (docs/protocol.md 5): the node's broker threads own every Redis
//! link, so no shard ever waits on Redis.
//!
//! - [`publisher`]: pushes from the API go through the sequencing [`script`] (dedup,
//!   `seq`, history, publish).
//! - [`presence`]: the node's heartbeat, its sessions per user in Redis, and the
//!   cluster-wide presence and stats the API asks for.
//! - [`subscriber`]: subscribes to the users and topics this node's shards serve (and
//!   broadcasts), loads a stream's `seq`, epoch and history when a shard starts serving
//!   it, and hands published pushes to the shards in Redis order.
//! - [`ingress`]: reads push commands from the `throng:push` stream with the consumer
//!   group, publishes them like the API does, and acknowledges them after.
//!
//! Shards ask for streams with [`Interest`] and receive [`Remote`] messages.

mod connector;
mod counters;
pub mod envelope;
pub(crate) mod held;
pub mod ingress;
pub mod keys;
pub mod presence;
mod publisher;
mod pubsub;
mod retries;
mod rewind;
pub mod script;
mod subscriber;
mod trim;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wire::Wire;
use crossbeam_channel::{Receiver, Sender};

use crate::api::ParsedPush;
use crate::command::Ticket;
use crate::config::{ClusterConfig, Config};
use crate::link::{Links, SendError};
use crate::metrics::Metrics;
use crate::shard::ReplySink;

pub use connector::RedisConnector;
pub use counters::BrokerCounters;
pub use presence::{
    ClusterView, NodeSessions, NodeTotals, PresenceChanges, PresenceQuery, PresenceShared,
    TopicOthers, ViewResult,
};
pub use publisher::PUBLISH_QUEUE;

/// A push from the API on its way to Redis.
pub struct PublishCmd {
    /// The push.
    pub push: ParsedPush,
    /// Answer wanted (`?wait=1`): the outcome goes back to the API.
    pub ticket: Option<Ticket>,
}

/// What a shard asks of the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// This shard serves the user: subscribe, then load its stream. `fresh`: a new
    /// user here (counted), not a reload of one already served.
    WatchUser {
        /// The user.
        user: Box<str>,
        /// Newly served (for the gauge).
        fresh: bool,
    },
    /// This shard serves the user already, its channel subscribed: load its stream again
    /// (a gap in its pushes, or a resume reaching past this node's history).
    ReloadUser(Box<str>),
    /// This shard no longer serves the user.
    UnwatchUser(Box<str>),
    /// Shard `shard` now has members of the topic: subscribe, then load its stream.
    WatchTopic {
        /// The shard.
        shard: usize,
        /// The topic.
        topic: Arc<str>,
    },
    /// Shard `shard` has no member of the topic left.
    UnwatchTopic {
        /// The shard.
        shard: usize,
        /// The topic.
        topic: Arc<str>,
    },
    /// Streams the shard serves, a slice of them at a time: their `seq` and epoch are kept
    /// in Redis while served, however quiet (`shard::keep`). Boxed: the other changes
    /// stay small in the queue. One a second per shard, counted in the queue's length
    /// like any change (`max_stream_changes_waiting`).
    Keep(Box<KeepSlice>),
    /// A stream went back in Redis under this shard: Redis shows a `seq` below one the
    /// shard had in the same epoch, or numbered a push again with other content (a
    /// failover to a replica that missed the last writes, a restart from an older
    /// snapshot). The subscriber gives it a new epoch, unless it has one already (another
    /// node asked first), then loads it again for the shard. Boxed: rare, and the other
    /// changes stay small in the queue.
    Rewound(Box<Rewind>),
}

/// A stream found gone back in Redis (`Interest::Rewound`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewind {
    /// The stream, and who gets it loaded again.
    pub stream: RewindOf,
    /// The epoch in which it went back (16 hex digits for a user stream).
    pub epoch: String,
    /// The highest `seq` the shard had in that epoch: the new epoch's numbering goes on
    /// above it.
    pub seq: u64,
}

/// Which stream went back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewindOf {
    /// A user's stream (loaded again for the user's shard).
    User(Box<str>),
    /// A topic's stream, loaded again for shard `shard`.
    Topic {
        /// The shard that found it.
        shard: usize,
        /// The topic.
        topic: Arc<str>,
    },
}

/// A slice of the streams a shard serves, to keep in Redis (`Interest::Keep`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepSlice {
    /// Users served.
    pub users: Vec<Box<str>>,
    /// Topics served.
    pub topics: Vec<Arc<str>>,
}

/// A stream as Redis holds it when a shard starts serving it (or after a reconnect).
#[derive(Debug, Clone, Default)]
pub struct StreamState {
    /// The stream's current `seq`.
    pub seq: u64,
    /// Its epoch.
    pub epoch: String,
    /// Recent pushes still within retention, oldest first, with their `seq`s.
    pub entries: Vec<(u64, Wire)>,
}

/// What the broker hands a shard.
pub enum Remote {
    /// A user's push, numbered by Redis.
    UserPush {
        /// The user.
        user: Box<str>,
        /// Its `seq`.
        seq: u64,
        /// The stream's epoch, as shards keep user epochs ([`user_epoch`]).
        epoch: u64,
        /// The client frame.
        frame: Wire,
        /// When it was accepted (from its timestamp), for the latency histogram.
        accepted_at: Instant,
    },
    /// A topic's push, numbered by Redis; the frame is shared by the shards.
    TopicPush {
        /// The topic.
        topic: Arc<str>,
        /// Its `seq`.
        seq: u64,
        /// The stream's epoch.
        epoch: Arc<str>,
        /// The client frame.
        frame: Wire,
        /// Its compressed form, made by the first shard that needs it.
        compressed: Arc<crate::deflate::Compressed>,
        /// When it was accepted.
        accepted_at: Instant,
    },
    /// A broadcast frame.
    Broadcast {
        /// The client frame.
        frame: Wire,
        /// Its compressed form, made by the first shard that needs it.
        compressed: Arc<crate::deflate::Compressed>,
        /// When it was accepted.
        accepted_at: Instant,
    },
    /// A user's stream as Redis holds it, or why it could not be read.
    UserLoaded {
        /// The user.
        user: Box<str>,
        /// The stream.
        state: Result<StreamState, String>,
    },
    /// The broker (re)connected: name every user served, with `Interest::WatchUser` (not fresh: the count of users served stays).
    Resync,
    /// A topic's stream as Redis holds it, or why it could not be read.
    TopicLoaded {
        /// The topic.
        topic: Arc<str>,
        /// The stream.
        state: Result<StreamState, String>,
    },
}

impl Remote {
    /// Bytes it holds while it waits in a shard's queue (frames shared with other shards'
    /// messages are counted in each).
    pub fn weight(&self) -> u64 {
        let state = |st: &Result<StreamState, String>| {
            st.as_ref().map_or(0, |st| {
                st.entries.iter().map(|(_, w)| w.len()).sum::<usize>() + st.epoch.len()
            })
        };
        let bytes = match self {
            Remote::UserPush { user, frame, .. } => user.len() + frame.len(),
            Remote::TopicPush { topic, frame, .. } => topic.len() + frame.len(),
            Remote::Broadcast { frame, .. } => frame.len(),
            Remote::UserLoaded { user, state: st } => user.len() + state(st),
            Remote::TopicLoaded { topic, state: st } => topic.len() + state(st),
            Remote::Resync => 0,
        };
        bytes as u64
    }
}

/// A user stream's epoch as shards keep it: the 16 hex digits Redis stores, as a number
/// (never 0, which marks a stream still loading). Parsed once per message, by the broker.
pub fn user_epoch(e: &str) -> u64 {
    u64::from_str_radix(e, 16).unwrap_or(1).max(1)
}

/// How a broker thread backs off between reconnects.
pub(crate) const RECONNECT_MIN: Duration = Duration::from_millis(50);
/// Longest pause between reconnects.
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Deadline for connecting and for one Redis round trip.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a failed connect was refused, not unanswered: Redis answered with an error (a
/// wrong password, an ACL), or TLS failed (a certificate that does not verify, which
/// rustls reports as invalid data).
pub(crate) fn is_refusal(e: &redis::RedisError) -> bool {
    if !e.is_io_error() {
        return true;
    }
    // redis-rs keeps the io::Error in an Arc: its source is the Arc.
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<Shared>())
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
}

/// The `io::ErrorKind` behind a redis-rs error, if it is an I/O error.
fn io_kind(e: &redis::RedisError) -> Option<std::io::ErrorKind> {
    // redis-rs keeps the io::Error in an Arc: its source is the Arc.
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<Shared>())
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind)
}

/// A Redis error as the log tells it: a read that timed out (`EAGAIN` from the socket's
/// timeout) is "no answer from Redis within 2 s", with a hint over `rediss://` (a Redis
/// that does not speak TLS on that port never answers the handshake); a read a signal
/// interrupted says so.
pub(crate) fn describe(e: &redis::RedisError, tls: bool) -> String {
    use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
    match io_kind(e) {
        Some(WouldBlock | TimedOut) => {
            let mut s = format!("no answer from Redis within {} s", IO_TIMEOUT.as_secs());
            if tls {
                s.push_str(
                    " (over TLS: does Redis listen with TLS on this port? A plain port never \
                     answers the handshake)",
                );
            }
            s
        }
        Some(Interrupted) => {
            "a read from Redis was interrupted by a signal (the process stopped and continued?)"
                .into()
        }
        _ => e.to_string(),
    }
}

/// Whether the error is a read a signal interrupted (`EINTR`: a socket with a timeout is
/// not restarted after SIGSTOP and SIGCONT): nothing is wrong with Redis or the link.
pub(crate) fn is_interrupted(e: &redis::RedisError) -> bool {
    io_kind(e) == Some(std::io::ErrorKind::Interrupted)
}

/// The error's code (`NOPERM`, `OOM`, ...), also a pipeline's first.
pub(crate) fn error_code(e: &redis::RedisError) -> Option<String> {
    if let Some(c) = e.code() {
        return Some(c.to_string());
    }
    let errors = e.clone().into_server_errors()?;
    errors.first().map(|(_, err)| err.code().to_string())
}

/// Whether Redis itself answered with the error (a refusal: out of memory, loading, ...),
/// alone or within a pipeline, so that a new link would meet the same: the link is fine.
/// Not a replica's refusal (READONLY, MASTERDOWN): after a failover behind the same
/// address a new link reaches the primary.
pub(crate) fn answered_with_error(e: &redis::RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
        return false;
    }
    e.clone().into_server_errors().is_some_and(|errors| {
        !errors.is_empty()
            && errors
                .iter()
                .all(|(_, err)| !script::REPLICA_CODES.contains(&err.code()))
    })
}

/// A connection whose pipelines give up at the first reply that does not come within
/// the read timeout: no progress for `IO_TIMEOUT`, however many replies were left. (The
/// redis crate's own connection reads every reply after a timeout, each with the whole
/// timeout: a silent Redis held a round trip of N commands N times 2 s.) The connection
/// is out of step after such an error: every caller drops it.
pub(crate) struct Prompt<'a>(pub &'a mut redis::Connection);

impl redis::ConnectionLike for Prompt<'_> {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        self.0.send_packed_command(cmd)?;
        let mut values = Vec::with_capacity(count);
        let mut seen = 0;
        while seen < offset + count {
            match self.0.recv_response()? {
                // Out-of-band data of RESP3, not a reply.
                redis::Value::Push { .. } => continue,
                // Refusals come back as values, for the pipeline to judge.
                v if seen >= offset => values.push(v),
                _ => {}
            }
            seen += 1;
        }
        Ok(values)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }

    fn check_connection(&mut self) -> bool {
        self.0.check_connection()
    }

    fn is_open(&self) -> bool {
        self.0.is_open()
    }
}

/// Opens a connection with the broker's timeouts.
pub(crate) fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let conn = client.get_connection_with_timeout(IO_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

/// Doubles a backoff, up to `RECONNECT_MAX`.
pub(crate) fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(RECONNECT_MAX)
}

/// Sleeps `d` in short steps, returning early once `stop` is set.
pub(crate) fn pause(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10).min(end - Instant::now()));
    }
}

/// Why a node whose publisher reaches Redis is still not ready: set by the broker
/// threads, read by the API (`/readyz` and pushes answer 503 `broker_unavailable`).
#[derive(Debug, Default)]
pub struct Blocks {
    /// The subscriber cannot subscribe or load: Redis refuses its first commands
    /// (`NOPERM`, `NOAUTH`, `OOM`), so this node's sessions would get nothing.
    pub subscriber: AtomicBool,
    /// Redis (or something on the way) keeps dropping the subscriber's link before it has
    /// subscribed and reloaded.
    pub subscriber_cut: AtomicBool,
    /// The publisher holds as many pushes Redis refused for now as it may
    /// (`publisher::RETRY_MAX`, or `max_outbound_total_bytes` of them): Redis answers,
    /// but takes none (out of memory?).
    pub saturated: AtomicBool,
    /// Another live node runs under this node's id (`throng:nodes:run`). Not a block:
    /// pushes still go through both, only presence and stats are wrong, and a fleet
    /// started with one copied id must not go out of service on an upgrade. `/readyz`
    /// says it, the log and `throng_broker_duplicate_node_id` too.
    pub duplicate_id: AtomicBool,
}

impl Blocks {
    /// What keeps the node unready, if anything.
    pub fn why(&self) -> Option<&'static str> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.subscriber.load(Relaxed) {
            return Some(
                "Redis refuses the subscriber's commands (see the log); pushes are refused until it subscribes",
            );
        }
        if self.subscriber_cut.load(Relaxed) {
            return Some(
                "Redis keeps dropping the subscriber's link before it has subscribed and reloaded (see the log); pushes are refused until a link holds",
            );
        }
        if self.saturated.load(Relaxed) {
            return Some(
                "8,192 pushes wait for Redis, which answers but refuses them for now (out of memory? see the log); pushes are refused until half of them went",
            );
        }
        None
    }

    /// What is wrong though the node serves, if anything (`/readyz` shows it).
    pub fn warning(&self) -> Option<&'static str> {
        use std::sync::atomic::Ordering::Relaxed;
        self.duplicate_id.load(Relaxed).then_some(
            "another live node has this node's id: presence and stats are wrong; give each node its own --node-id",
        )
    }
}

/// What the broker threads share with the rest of the server.
pub struct BrokerLinks {
    /// The API's way to Redis.
    pub publish: Sender<PublishCmd>,
    /// Cleared while the publisher cannot reach Redis: pushes get 503 `broker_unavailable`.
    pub up: Arc<AtomicBool>,
    /// Set while something else keeps the node unready ([`Blocks`]).
    pub blocks: Arc<Blocks>,
    /// The API's presence and stats questions to the presence thread.
    pub presence: Sender<PresenceQuery>,
    /// Cleared while the presence thread cannot reach Redis: presence gets 503.
    pub presence_up: Arc<AtomicBool>,
    /// This node's id.
    pub node_id: Arc<str>,
}

impl BrokerLinks {
    /// Whether pushes can be taken: the publisher reaches Redis and nothing blocks.
    pub fn accepting(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.up.load(Relaxed) && self.blocks.why().is_none()
    }

    /// Queues a push for the publisher, its bytes counted on `queued` (the publisher
    /// takes them off as it takes the push). With a `limit`, a
    /// push that would take the bytes waiting past it is refused as if the queue were
    /// full (one always goes when none waits); without one (client publishes, bounded
    /// by count where they come from) it only counts. The queue's bound in pushes
    /// alone let 8,192 pushes of 1 MiB wait (review s18b).
    pub fn try_publish(
        &self,
        cmd: PublishCmd,
        queued: &AtomicU64,
        limit: Option<u64>,
    ) -> Result<(), SendError> {
        use std::sync::atomic::Ordering::Relaxed;
        let weight = cmd.push.weight();
        match limit {
            Some(limit) if !crate::command::reserve_backlog(queued, weight, limit) => {
                return Err(SendError::Full);
            }
            Some(_) => {}
            None => {
                queued.fetch_add(weight, Relaxed);
            }
        }
        self.publish.try_send(cmd).map_err(|e| {
            queued.fetch_sub(weight, Relaxed);
            match e {
                crossbeam_channel::TrySendError::Full(_) => SendError::Full,
                crossbeam_channel::TrySendError::Disconnected(_) => SendError::Stopped,
            }
        })
    }
}

/// The presence thread's ends that the shards share (made before the shards start).
pub struct PresenceEnds {
    /// Where the shards' changed session counts arrive.
    pub changes: Receiver<PresenceChanges>,
    /// Shared with the shards.
    pub shared: PresenceShared,
}

/// The cluster settings every broker thread needs.
#[derive(Clone)]
pub(crate) struct BrokerCtx {
    /// How every link connects (replaced by a reload).
    pub redis: Arc<RedisConnector>,
    pub node_id: Arc<str>,
    pub cluster: ClusterConfig,
    pub retention: script::Retention,
    pub metrics: Arc<Metrics>,
    pub stop: Arc<AtomicBool>,
    /// `shutdown_grace`: how long the publisher may go on after the stop to get what it
    /// holds to Redis.
    pub grace: Duration,
    /// What keeps the node unready (shared with the API).
    pub blocks: Arc<Blocks>,
    /// The channel names of the URL's database.
    pub channels: keys::Channels,
    /// The most bytes of pushes and stream states that may wait in the shards' queues
    /// (`max_outbound_total_bytes`): the queues' bound in messages alone would let
    /// 65,536 pushes of 1 MiB wait per shard.
    pub queue_bytes_limit: u64,
}

/// The broker threads' join handles.
pub struct BrokerThreads {
    /// Every broker thread.
    pub threads: Vec<std::thread::JoinHandle<()>>,
}

/// Starts the publisher, presence, subscriber and stream ingress threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    config: &Config,
    cluster: &ClusterConfig,
    node_id: Arc<str>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    replies: ReplySink,
    shards: Links<Remote>,
    interests: Receiver<Interest>,
    presence_ends: PresenceEnds,
    redis: Arc<RedisConnector>,
) -> std::io::Result<(BrokerLinks, BrokerThreads)> {
    let ctx = BrokerCtx {
        node_id: Arc::clone(&node_id),
        cluster: cluster.clone(),
        retention: script::Retention {
            history_size: config.history_size,
            user_ms: cluster.offline_ttl.as_millis() as u64,
            topic_ms: config.history_ttl.as_millis() as u64,
            dedup_ms: config.dedup_window.as_millis() as u64,
        },
        metrics,
        stop,
        grace: config.shutdown_grace,
        queue_bytes_limit: config.max_outbound_total_bytes,
        blocks: Arc::new(Blocks::default()),
        channels: keys::Channels::for_db(
            redis
                .dial()
                .client
                .get_connection_info()
                .redis_settings()
                .db(),
        ),
        redis,
    };
    let up = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(AtomicBool::new(false));
    let (publish_tx, publish_rx) = crossbeam_channel::bounded(PUBLISH_QUEUE);
    let mut threads = Vec::new();
    let p = publisher::Publisher::new(ctx.clone(), publish_rx, replies.clone(), Arc::clone(&up));
    threads.push(
        std::thread::Builder::new()
            .name("throng-publisher".into())
            .spawn(move || p.run())?,
    );
    let presence_up = Arc::new(AtomicBool::new(false));
    let (query_tx, query_rx) = crossbeam_channel::bounded(presence::QUERY_QUEUE);
    let pr = presence::Presence::new(
        ctx.clone(),
        presence_ends.changes,
        query_rx,
        replies,
        presence_ends.shared,
        Arc::clone(&presence_up),
    );
    threads.push(
        std::thread::Builder::new()
            .name("throng-presence".into())
            .spawn(move || pr.run())?,
    );
    let s = subscriber::Subscriber::new(ctx.clone(), shards, interests, Arc::clone(&busy));
    threads.push(
        std::thread::Builder::new()
            .name("throng-subscriber".into())
            .spawn(move || s.run())?,
    );
    let blocks = Arc::clone(&ctx.blocks);
    let i = ingress::Ingress::new(ctx, busy);
    threads.push(
        std::thread::Builder::new()
            .name("throng-ingress".into())
            .spawn(move || i.run())?,
    );
    Ok((
        BrokerLinks {
            publish: publish_tx,
            up,
            blocks,
            presence: query_tx,
            presence_up,
            node_id,
        },
        BrokerThreads { threads },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a reply of `resp` (a RESP error line) makes.
    fn server_error(resp: &[u8]) -> redis::RedisError {
        redis::parse_redis_value(resp)
            .expect("a RESP value")
            .extract_error()
            .expect_err("an error reply")
    }

    #[test]
    fn a_refusal_keeps_the_link_unless_it_comes_from_a_replica() {
        assert!(answered_with_error(&server_error(
            b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"
        )));
        assert!(answered_with_error(&server_error(
            b"-LOADING Redis is loading the dataset in memory\r\n"
        )));
        assert!(!answered_with_error(&server_error(
            b"-READONLY You can't write against a read only replica.\r\n"
        )));
        assert!(!answered_with_error(&server_error(
            b"-MASTERDOWN Link with MASTER is down\r\n"
        )));
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!answered_with_error(&io));
    }

    #[test]
    fn the_publish_queue_is_bounded_in_bytes_and_counts_what_it_holds() {
        use std::sync::atomic::Ordering::Relaxed;
        let (publish, rx) = crossbeam_channel::bounded(100);
        let links = BrokerLinks {
            publish,
            up: Arc::default(),
            blocks: Arc::default(),
            presence: crossbeam_channel::bounded(1).0,
            presence_up: Arc::default(),
            node_id: "n".into(),
        };
        let cmd = |data: usize| PublishCmd {
            push: crate::api::ParsedPush {
                target: crate::api::Target::User("ann".into()),
                data: "1".repeat(data),
                id: Some("id".into()),
                from: None,
            },
            ticket: None,
        };
        assert_eq!(cmd(1000).push.weight(), 1000 + 2 + 3);
        let queued = AtomicU64::new(0);
        // One always goes when none waits, however large.
        assert!(links.try_publish(cmd(5000), &queued, Some(4000)).is_ok());
        assert_eq!(queued.load(Relaxed), 5005);
        assert_eq!(
            links.try_publish(cmd(10), &queued, Some(4000)),
            Err(SendError::Full)
        );
        assert_eq!(queued.load(Relaxed), 5005, "a refused push counts nothing");
        assert_eq!(rx.len(), 1);
        // The publisher takes it off once its round trip is over: room again.
        queued.fetch_sub(5005, Relaxed);
        assert!(links.try_publish(cmd(1000), &queued, Some(4000)).is_ok());
        assert!(links.try_publish(cmd(1000), &queued, Some(4000)).is_ok());
        assert!(links.try_publish(cmd(1000), &queued, Some(4000)).is_ok());
        assert!(links.try_publish(cmd(1000), &queued, Some(4000)).is_err());
        // Without a limit (client publishes) it only counts.
        assert!(links.try_publish(cmd(1000), &queued, None).is_ok());
        assert_eq!(queued.load(Relaxed), 4 * 1005);
        // A send that fails gives its bytes back.
        drop(rx);
        assert_eq!(
            links.try_publish(cmd(1), &queued, None),
            Err(SendError::Stopped)
        );
        assert_eq!(queued.load(Relaxed), 4 * 1005);
    }
}
