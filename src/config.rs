//! Server configuration: flags override the TOML file, which overrides environment
//! variables, which override defaults.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::topic::TopicPattern;

/// A configuration problem, always naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has a value that cannot be used.
    #[error(
        "config error: {} ({}): {problem}",
        file_spelling(key),
        flag_spelling(key)
    )]
    Invalid {
        /// The key, spelled as in the code (`jwt_secret`); shown as the file and flag spell it.
        key: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
    /// The config file could not be read or parsed.
    #[error("config error: {path}: {problem}")]
    File {
        /// The file as given.
        path: String,
        /// Why it could not be used.
        problem: String,
    },
    /// The config file does not parse, or a value has the wrong type, at this place.
    #[error("config error: {path}:{line}:{column}: {problem}")]
    FileAt {
        /// The file as given.
        path: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The key (`[table] key`, when one can be read from the line) and what is wrong.
        problem: String,
    },
    /// The command line could not be parsed.
    #[error("{0}")]
    Cli(#[from] clap::Error),
}

/// How the config file spells a key (the `[jwt]` table holds the JWT keys).
fn file_spelling(key: &str) -> String {
    match key {
        "jwt_public_key" => "[jwt] public_key_file".into(),
        "jwt_jwks" => "[jwt] jwks_file".into(),
        k => match k.strip_prefix("jwt_") {
            Some(rest) => format!("[jwt] {rest}"),
            None => k.into(),
        },
    }
}

/// The command-line flag for a key.
fn flag_spelling(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// Refuses the first of `given` keys (those set: `true`) that only `mode` uses, when
/// `mode` is not set.
fn only_with(mode: &'static str, given: &[(&'static str, bool)]) -> Result<(), ConfigError> {
    match given.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(invalid(
            key,
            format!(
                "is used only with {} ({}), which is not set",
                file_spelling(mode),
                flag_spelling(mode)
            ),
        )),
        None => Ok(()),
    }
}

/// A feature that is on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `throng serve`; every one is optional so that the file and defaults show through.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Client WebSocket listener address [default: 0.0.0.0:8700].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Push API listener address [default: 127.0.0.1:8701].
    #[arg(long)]
    pub api_listen: Option<SocketAddr>,
    /// Number of shard threads [default: available cores].
    #[arg(long)]
    pub shards: Option<usize>,
    /// Pin each shard thread to a core.
    #[arg(long)]
    pub pin_cores: Option<bool>,
    /// The client listener's backlog (the push API's is 1024) [default: 4096].
    #[arg(long)]
    pub backlog: Option<u32>,
    /// Unsent bytes the kernel holds per client socket (TCP_NOTSENT_LOWAT); the rest
    /// waits in Throng's queue, under its outbound bounds; 0 = the host's
    /// net.ipv4.tcp_notsent_lowat [default: 131072].
    #[arg(long, value_name = "BYTES")]
    pub tcp_notsent_lowat: Option<u32>,
    /// Shared JWT secret for HS256/384/512 (env THRONG_JWT_SECRET).
    #[arg(long)]
    pub jwt_secret: Option<String>,
    /// File of HS256/384/512 secrets, one per line, each accepted (a rotation);
    /// instead of --jwt-secret. SIGHUP reads it again.
    #[arg(long, value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// JWT algorithm: HS256, HS384, HS512, RS256 or ES256 [default: HS256].
    #[arg(long)]
    pub jwt_algorithm: Option<String>,
    /// PEM public key file for RS256/ES256 (several keys during a rotation). SIGHUP
    /// reads it again.
    #[arg(long, value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file (RFC 7517) of the RS256/ES256 public keys, picked by each token's `kid`;
    /// instead of --jwt-public-key. SIGHUP reads it again.
    #[arg(long, value_name = "FILE")]
    pub jwt_jwks: Option<PathBuf>,
    /// JWKS URL of the identity provider (http:// or https://), fetched at start, every
    /// --jwt-jwks-refresh-secs, on SIGHUP and after an unknown `kid`; instead of a file.
    #[arg(long, value_name = "URL")]
    pub jwt_jwks_url: Option<String>,
    /// How often --jwt-jwks-url is fetched again [default: 300].
    #[arg(long, value_name = "SECS")]
    pub jwt_jwks_refresh_secs: Option<u64>,
    /// PEM file of the CA certificates an https:// --jwt-jwks-url is verified against,
    /// instead of the bundled Mozilla roots (a private identity provider); read at every
    /// fetch.
    #[arg(long, value_name = "FILE")]
    pub jwt_jwks_ca: Option<PathBuf>,
    /// Whether tokens must carry `exp` [default: true].
    #[arg(long)]
    pub jwt_require_exp: Option<bool>,
    /// Clock leeway for `exp` and `nbf`, at most 86400 [default: 30].
    #[arg(long, value_name = "SECS")]
    pub jwt_leeway_secs: Option<u64>,
    /// Required `iss` claim [default: not checked].
    #[arg(long)]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim [default: not checked].
    #[arg(long)]
    pub jwt_audience: Option<String>,
    /// Push API key; requests need `Authorization: Bearer <key>` (env THRONG_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    /// File of push API keys, one per line, each accepted (a rotation); instead of
    /// --api-key. SIGHUP reads it again.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Silence before the server pings a client [default: 25000].
    #[arg(long)]
    pub ping_interval_ms: Option<u64>,
    /// Silence before the server closes a client with 4002 [default: 60000].
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Time allowed for a complete upgrade request head [default: 5000].
    #[arg(long)]
    pub handshake_timeout_ms: Option<u64>,
    /// Connections in all; handshakes in progress count toward it [default: 1000000].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Connections per client IP, 0 = unlimited [default: 0].
    #[arg(long)]
    pub max_connections_per_ip: Option<usize>,
    /// New connections per second per client IP, 0 = unlimited [default: 0].
    #[arg(long)]
    pub connect_rate_per_ip: Option<u32>,
    /// Largest client message after reassembly, at most 16777216 [default: 65536].
    #[arg(long)]
    pub max_message_size: Option<usize>,
    /// Outbound bytes queued per connection before it is closed with 4008 [default: 1048576].
    #[arg(long)]
    pub max_outbound_bytes: Option<usize>,
    /// Sessions per user; a new one beyond closes the oldest with 4009 [default: 16].
    #[arg(long)]
    pub max_sessions_per_user: Option<usize>,
    /// Topics one connection may subscribe to [default: 64].
    #[arg(long)]
    pub max_topics_per_connection: Option<usize>,
    /// Comma-separated topic patterns anyone may subscribe to (`news`, `room:*`).
    #[arg(long)]
    pub public_topics: Option<String>,
    /// Comma-separated topic patterns any client may publish to; none by default.
    #[arg(long)]
    pub public_publish: Option<String>,
    /// Client messages per second per connection (token bucket of as many), 0 = unlimited
    /// [default: 100].
    #[arg(long)]
    pub client_rate: Option<u32>,
    /// Largest `data` of a client `publish` or `send`, in bytes of JSON [default: 16384].
    #[arg(long)]
    pub max_client_data_bytes: Option<usize>,
    /// Standalone: where client `send` messages and lifecycle events are POSTed (a JSON
    /// array per request), `http://` or `https://`.
    #[arg(long)]
    pub events_url: Option<String>,
    /// Bearer token sent to `events_url` (env THRONG_EVENTS_KEY).
    #[arg(long)]
    pub events_key: Option<String>,
    /// File holding the bearer token for `events_url` (one line); instead of
    /// --events-key. SIGHUP reads it again.
    #[arg(long, value_name = "FILE")]
    pub events_key_file: Option<PathBuf>,
    /// PEM file of the CA certificates to trust for an `https://` `events_url`, instead of
    /// the bundled Mozilla roots (an upstream behind a private CA).
    #[arg(long)]
    pub events_ca: Option<PathBuf>,
    /// Also send `connect`, `disconnect`, `subscribe` and `unsubscribe` events.
    #[arg(long)]
    pub lifecycle_events: bool,
    /// Cluster mode: about how many entries `throng:events` keeps [default: 1000000].
    #[arg(long)]
    pub events_maxlen: Option<u64>,
    /// Events that may wait for delivery; beyond, `send` is answered `overloaded`
    /// [default: 65536].
    #[arg(long)]
    pub events_queue: Option<usize>,
    /// Comma-separated allowed `Origin` values; empty = any.
    #[arg(long)]
    pub allowed_origins: Option<String>,
    /// Capacity of each shard's command and connection queues [default: 65536].
    #[arg(long)]
    pub shard_queue_capacity: Option<usize>,
    /// Time given to flush outbound queues on shutdown, and in cluster mode pushes on their way to Redis [default: 5000].
    #[arg(long)]
    pub shutdown_grace_ms: Option<u64>,
    /// Outbound bytes queued on all connections together (plus partial inbound frames)
    /// before the largest queues are closed with 4008 [default: a quarter of memory, at most 4 GiB].
    #[arg(long)]
    pub max_outbound_total_bytes: Option<u64>,
    /// Upgrade requests in progress (accepted sockets without a complete head) [default: 16384].
    #[arg(long)]
    pub max_pending_handshakes: Option<usize>,
    /// Concurrent push API connections; more get 503 [default: 1024].
    #[arg(long)]
    pub api_max_connections: Option<usize>,
    /// Bytes all push API request buffers may hold together; bodies past it wait, unread,
    /// for room [default: 67108864].
    #[arg(long)]
    pub api_max_buffered_bytes: Option<usize>,
    /// Time allowed for a whole API request, head and body, and for an HTTPS API
    /// connection's TLS handshake [default: 10000].
    #[arg(long)]
    pub api_request_timeout_ms: Option<u64>,
    /// Time an idle keep-alive API connection stays open [default: 60000].
    #[arg(long)]
    pub api_idle_timeout_ms: Option<u64>,
    /// Allow the push API without an API key on a non-loopback address.
    #[arg(long)]
    pub insecure_api: bool,
    /// Serve `/metrics` without the API key (`/healthz` and `/readyz` never need it).
    #[arg(long)]
    pub metrics_public: bool,
    /// Drain window: reconnect hints spread over it, then 1001 per connection [default: 30000].
    #[arg(long)]
    pub drain_ms: Option<u64>,
    /// How long before the 4001 close the client gets `token_expiring`; 0 = never [default: 60000].
    #[arg(long)]
    pub refresh_ahead_ms: Option<u64>,
    /// Pushes kept for resume per user, and per topic; 0 = none [default: 100].
    #[arg(long)]
    pub history_size: Option<usize>,
    /// How long a push is kept, and a user without sessions with it [default: 300000].
    #[arg(long)]
    pub history_ttl_ms: Option<u64>,
    /// Bytes of history per shard; the oldest pushes go first [default: 67108864].
    #[arg(long)]
    pub history_memory_bytes: Option<u64>,
    /// How long a push `id` is remembered per stream to drop retried duplicates [default: 300000].
    #[arg(long)]
    pub dedup_window_ms: Option<u64>,
    /// Cluster mode: the Redis every node shares, `redis://[[user]:password@]host[:port][/db]`,
    /// or `rediss://` for TLS (docs/protocol.md 5).
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// This node's name in the cluster [default: the client listener's host:port].
    #[arg(long)]
    pub node_id: Option<String>,
    /// Cluster mode: how long a user's pushes wait in Redis for it to come back [default: 86400000].
    #[arg(long)]
    pub offline_ttl_ms: Option<u64>,
    /// Cluster mode: stream changes (users and topics started or stopped here) waiting for Redis at which new users and topics are refused until it catches up [default: 262144].
    #[arg(long)]
    pub max_stream_changes_waiting: Option<usize>,
    /// Cluster mode: how long a stream entry may sit with a dead node before another claims it [default: 30000].
    #[arg(long)]
    pub claim_idle_ms: Option<u64>,
    /// Cluster mode over rediss://: PEM CA certificates Redis's certificate is verified against [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    pub redis_ca: Option<PathBuf>,
    /// Cluster mode over rediss://: PEM client certificate chain for a Redis that asks for one (tls-auth-clients); needs --redis-client-key.
    #[arg(long, value_name = "FILE")]
    pub redis_client_cert: Option<PathBuf>,
    /// Cluster mode over rediss://: PEM private key of --redis-client-cert.
    #[arg(long, value_name = "FILE")]
    pub redis_client_key: Option<PathBuf>,
    /// Cluster mode: remove `throng:push` entries every consumer group has acknowledged [default: true].
    #[arg(long)]
    pub stream_trim: Option<bool>,
    /// Cluster mode: keep acknowledged `throng:push` entries at least this long before trimming [default: 0].
    #[arg(long)]
    pub stream_keep_ms: Option<u64>,
    /// Kafka ingress: bootstrap brokers, `host:port[,host:port]`.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// Kafka ingress: the topic of push commands [default: throng.push].
    #[arg(long)]
    pub kafka_topic: Option<String>,
    /// Kafka ingress: the consumer group [default: throng].
    #[arg(long)]
    pub kafka_group: Option<String>,
    /// Kafka ingress: bytes of records read and not yet handed to the shards, over all partitions, at which reading pauses; also the bound of one partition when below 64 MiB [default: 134217728].
    #[arg(long)]
    pub kafka_max_buffered_bytes: Option<usize>,
    /// Kafka ingress: how long the group waits for a member that stopped answering (a crashed server) before its partitions go to the others, in milliseconds [default: 10000].
    #[arg(long)]
    pub kafka_session_timeout_ms: Option<u64>,
    /// Acceptor threads sharing the client listener (upgrade and TLS handshakes) [default: a quarter of --shards, at least 1].
    #[arg(long)]
    pub acceptors: Option<usize>,
    /// permessage-deflate for clients that offer it: on or off [default: on].
    #[arg(long, value_enum)]
    pub compression: Option<Switch>,
    /// Smallest frame sent compressed, in bytes [default: 256].
    #[arg(long)]
    pub compression_min_bytes: Option<usize>,
    /// Deflate level for pushes, 1 (fastest) to 9 (smallest) [default: 1].
    #[arg(long)]
    pub compression_level: Option<u32>,
    /// TLS (wss://) on the client listener: PEM certificate chain, leaf first (with --tls-key).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: PEM private key of --tls-cert (RSA, ECDSA P-256/P-384 or Ed25519; PKCS#8, SEC1 or PKCS#1). SIGHUP reloads both.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// HTTPS on the push API: PEM certificate chain, leaf first (with --api-tls-key).
    #[arg(long, value_name = "FILE")]
    pub api_tls_cert: Option<PathBuf>,
    /// HTTPS on the push API: PEM private key of --api-tls-cert. SIGHUP reloads both.
    #[arg(long, value_name = "FILE")]
    pub api_tls_key: Option<PathBuf>,
    /// HTTPS on the push API: require client certificates issued by these PEM CA
    /// certificates (mTLS; then no API key is needed off loopback). SIGHUP reloads it.
    #[arg(long, value_name = "FILE")]
    pub api_tls_client_ca: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Development mode: random secret and API key unless given, printed with a token.
    #[arg(long)]
    pub dev: bool,
}

/// The `[jwt]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJwt {
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    algorithm: Option<String>,
    public_key_file: Option<PathBuf>,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    jwks_refresh_secs: Option<u64>,
    jwks_ca: Option<PathBuf>,
    require_exp: Option<bool>,
    leeway_secs: Option<u64>,
    issuer: Option<String>,
    audience: Option<String>,
}

/// The TOML config file; unknown keys are errors so typos do not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    api_listen: Option<String>,
    shards: Option<usize>,
    pin_cores: Option<bool>,
    backlog: Option<u32>,
    tcp_notsent_lowat: Option<u32>,
    api_key: Option<String>,
    api_key_file: Option<PathBuf>,
    ping_interval_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    connect_rate_per_ip: Option<u32>,
    max_message_size: Option<usize>,
    max_outbound_bytes: Option<usize>,
    max_sessions_per_user: Option<usize>,
    max_topics_per_connection: Option<usize>,
    public_topics: Option<Vec<String>>,
    public_publish: Option<Vec<String>>,
    client_rate: Option<u32>,
    max_client_data_bytes: Option<usize>,
    events_url: Option<String>,
    events_key: Option<String>,
    events_key_file: Option<PathBuf>,
    events_ca: Option<PathBuf>,
    lifecycle_events: Option<bool>,
    events_maxlen: Option<u64>,
    events_queue: Option<usize>,
    allowed_origins: Option<Vec<String>>,
    shard_queue_capacity: Option<usize>,
    shutdown_grace_ms: Option<u64>,
    max_outbound_total_bytes: Option<u64>,
    max_pending_handshakes: Option<usize>,
    api_max_connections: Option<usize>,
    api_max_buffered_bytes: Option<usize>,
    api_request_timeout_ms: Option<u64>,
    api_idle_timeout_ms: Option<u64>,
    insecure_api: Option<bool>,
    metrics_public: Option<bool>,
    drain_ms: Option<u64>,
    refresh_ahead_ms: Option<u64>,
    history_size: Option<usize>,
    history_ttl_ms: Option<u64>,
    history_memory_bytes: Option<u64>,
    dedup_window_ms: Option<u64>,
    redis: Option<String>,
    kafka: Option<String>,
    kafka_topic: Option<String>,
    kafka_group: Option<String>,
    kafka_max_buffered_bytes: Option<usize>,
    kafka_session_timeout_ms: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    api_tls_cert: Option<PathBuf>,
    api_tls_key: Option<PathBuf>,
    api_tls_client_ca: Option<PathBuf>,
    compression: Option<Switch>,
    compression_min_bytes: Option<usize>,
    compression_level: Option<u32>,
    acceptors: Option<usize>,
    node_id: Option<String>,
    offline_ttl_ms: Option<u64>,
    max_stream_changes_waiting: Option<usize>,
    claim_idle_ms: Option<u64>,
    redis_ca: Option<PathBuf>,
    redis_client_cert: Option<PathBuf>,
    redis_client_key: Option<PathBuf>,
    stream_trim: Option<bool>,
    stream_keep_ms: Option<u64>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    jwt: FileJwt,
}

/// How tokens are verified.
#[derive(Clone)]
pub struct JwtConfig {
    /// The one accepted algorithm.
    pub algorithm: Algorithm,
    /// Shared secret (HS*): the one given, or the first of `secret_file`.
    pub secret: Option<String>,
    /// The other secrets of `secret_file`, also accepted (a rotation).
    pub extra_secrets: Vec<String>,
    /// Where the secrets came from, when a file: `SIGHUP` reads it again.
    pub secret_file: Option<PathBuf>,
    /// The public keys (RS256/ES256), as read at startup.
    pub public_keys: Option<PublicKeys>,
    /// Whether `exp` is required.
    pub require_exp: bool,
    /// Clock leeway for `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
}

/// Where the RS256/ES256 public keys come from, with the file's bytes as read at startup
/// (a reload reads the file again).
#[derive(Debug, Clone)]
pub enum PublicKeys {
    /// PEM: one public key, or several (a rotation); `path` is `None` for keys given as
    /// bytes (tests), which nothing reloads.
    Pem {
        /// The file.
        path: Option<PathBuf>,
        /// Its bytes.
        pem: Vec<u8>,
    },
    /// A JWKS document: keys picked by the token's `kid`.
    Jwks {
        /// The file.
        path: PathBuf,
        /// Its bytes.
        json: Vec<u8>,
    },
    /// A JWKS document fetched from `url` at startup, every `refresh`, on `SIGHUP` and
    /// after a token with an unknown `kid`.
    JwksUrl {
        /// `http://` or `https://`.
        url: String,
        /// How often it is fetched again.
        refresh: Duration,
        /// `jwks_ca`: the CA certificates `url` is verified against (else the bundled
        /// Mozilla roots), read at every fetch.
        ca: Option<PathBuf>,
    },
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("require_exp", &self.require_exp)
            .field("leeway_secs", &self.leeway_secs)
            .finish_non_exhaustive()
    }
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client WebSocket listener.
    pub listen: SocketAddr,
    /// Push API listener.
    pub api_listen: SocketAddr,
    /// Shard threads.
    pub shards: usize,
    /// Pin shard threads to cores.
    pub pin_cores: bool,
    /// The client listener's backlog.
    pub backlog: u32,
    /// `TCP_NOTSENT_LOWAT` of client sockets (set on the listener, which they inherit);
    /// 0 leaves the host's.
    pub tcp_notsent_lowat: u32,
    /// Token verification.
    pub jwt: JwtConfig,
    /// Push API key, when required: the one given, or the first of `api_key_file`.
    pub api_key: Option<String>,
    /// The other keys of `api_key_file`, also accepted (a rotation).
    pub extra_api_keys: Vec<String>,
    /// Where the API keys come from, read again on `SIGHUP`.
    pub api_key_file: Option<PathBuf>,
    /// Silence before a ping.
    pub ping_interval: Duration,
    /// Silence before close 4002.
    pub idle_timeout: Duration,
    /// Deadline for the upgrade request head.
    pub handshake_timeout: Duration,
    /// Connections in all.
    pub max_connections: usize,
    /// Connections per IP (0 = unlimited).
    pub max_connections_per_ip: usize,
    /// New connections per second per IP (0 = unlimited).
    pub connect_rate_per_ip: u32,
    /// Largest reassembled client message.
    pub max_message_size: usize,
    /// Outbound queue cap per connection.
    pub max_outbound_bytes: usize,
    /// Sessions per user.
    pub max_sessions_per_user: usize,
    /// Topics per connection.
    pub max_topics_per_connection: usize,
    /// Topics open to everyone.
    pub public_topics: Vec<TopicPattern>,
    /// Topics anyone may publish to.
    pub public_publish: Vec<TopicPattern>,
    /// Client messages per second per connection (0 = unlimited).
    pub client_rate: u32,
    /// Largest `data` of a client publish or send.
    pub max_client_data_bytes: usize,
    /// Standalone: where events are POSTed (`None`: `send` is refused).
    pub events_url: Option<String>,
    /// Bearer token for `events_url`: the one given, or `events_key_file`'s.
    pub events_key: Option<String>,
    /// Where the events key comes from, read again on `SIGHUP`.
    pub events_key_file: Option<PathBuf>,
    /// The roots an `https://` `events_url` is verified against (empty: the bundled
    /// Mozilla roots).
    pub events_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The file `events_ca` was read from, read again on `SIGHUP`.
    pub events_ca_path: Option<PathBuf>,
    /// Lifecycle events on.
    pub lifecycle_events: bool,
    /// Cluster mode: approximate length of `throng:events`.
    pub events_maxlen: u64,
    /// Events that may wait for delivery.
    pub events_queue: usize,
    /// Allowed `Origin` values (empty = any).
    pub allowed_origins: Vec<String>,
    /// Capacity of each shard queue.
    pub shard_queue_capacity: usize,
    /// Flush time on shutdown.
    pub shutdown_grace: Duration,
    /// Outbound (plus partial inbound) bytes on all connections together.
    pub max_outbound_total_bytes: u64,
    /// Upgrade requests in progress at once.
    pub max_pending_handshakes: usize,
    /// Concurrent push API connections.
    pub api_max_connections: usize,
    /// Bytes all push API request buffers may hold together.
    pub api_max_buffered_bytes: usize,
    /// Deadline for a whole API request (head and body), and for an API TLS handshake.
    pub api_request_timeout: Duration,
    /// How long an idle keep-alive API connection stays open.
    pub api_idle_timeout: Duration,
    /// The API may run without a key on a non-loopback address.
    pub insecure_api: bool,
    /// `/metrics` is served without the API key.
    pub metrics_public: bool,
    /// The drain window (reconnect hints spread over it).
    pub drain: Duration,
    /// How long before `exp` a connection gets `token_expiring`.
    pub refresh_ahead: Duration,
    /// Pushes kept per user, and per topic (0 = none).
    pub history_size: usize,
    /// How long pushes, and users without sessions, are kept.
    pub history_ttl: Duration,
    /// History bytes per shard.
    pub history_memory_bytes: u64,
    /// How long a push `id` accepted on a stream makes a repeat of it a duplicate.
    pub dedup_window: Duration,
    /// Cluster mode on Redis, when `--redis` is given.
    pub cluster: Option<ClusterConfig>,
    /// The Kafka ingress, when `--kafka` is given.
    pub kafka: Option<KafkaConfig>,
    /// TLS on the client listener, when `--tls-cert` and `--tls-key` are given.
    pub tls: Option<crate::tls::TlsFiles>,
    /// HTTPS on the push API, when `--api-tls-cert` and `--api-tls-key` are given.
    pub api_tls: Option<crate::tls::TlsFiles>,
    /// With `api_tls`: clients must present a certificate issued by this file's CAs.
    pub api_tls_client_ca: Option<PathBuf>,
    /// permessage-deflate is negotiated with clients that offer it.
    pub compression: bool,
    /// Frames shorter than this are sent plain even to compressing clients.
    pub compression_min_bytes: usize,
    /// Deflate level for pushes (1-9).
    pub compression_level: u32,
    /// Acceptor threads.
    pub acceptors: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Development mode.
    pub dev: bool,
}

/// Cluster mode settings (docs/protocol.md 5).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The Redis URL, checked at startup.
    pub redis_url: String,
    /// This node's id; `None`: the client listener's bound `host:port`.
    pub node_id: Option<String>,
    /// How long a user's pushes are kept in Redis after they were pushed.
    pub offline_ttl: Duration,
    /// How long a pending stream entry waits before another node claims it.
    pub claim_idle: Duration,
    /// Stream changes waiting for the broker at which no new stream is asked for.
    pub max_stream_changes_waiting: usize,
    /// Trimming of `throng:push`: how long acknowledged entries are kept; `None`: never
    /// trimmed.
    pub stream_trim: Option<Duration>,
    /// `redis_ca`: the PEM file's bytes, for a `rediss://` Redis behind a private CA.
    pub redis_ca: Option<RedisCa>,
    /// `redis_client_cert` and `redis_client_key`: the certificate every Redis link
    /// presents, for a Redis that asks for one.
    pub redis_identity: Option<RedisIdentity>,
}

/// The client certificate Redis links present, with the files `SIGHUP` reads again.
#[derive(Debug, Clone)]
pub struct RedisIdentity {
    /// The certificate and key files.
    pub files: crate::tls::TlsFiles,
    /// Their contents, as read at startup.
    pub identity: crate::tls::Identity,
}

/// The CA certificates a `rediss://` Redis is verified against (`redis_ca`).
#[derive(Debug, Clone)]
pub struct RedisCa {
    /// The file, which `SIGHUP` reads again.
    pub path: PathBuf,
    /// The file as read (redis-rs takes PEM).
    pub pem: Vec<u8>,
    /// Its certificates (the pub/sub link's own TLS takes DER).
    pub certs: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// Checks an `events_url`: `http://` or `https://`, a valid URL (the parser the events
/// client uses) with a host, and a port from 1 to 65535 when one is given.
pub fn check_events_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{url:?} has no host"));
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| format!("{url:?} has no host"))?;
    // What follows the host is the port, when there is one (the parser takes any digits).
    let after_host = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, h)| h)
        .strip_prefix(authority.host())
        .unwrap_or("");
    if let Some(port) = after_host.strip_prefix(':') {
        if !port.is_empty() && !matches!(port.parse::<u16>(), Ok(1..)) {
            return Err(format!("{url:?}: the port must be from 1 to 65535"));
        }
    }
    Ok(())
}

/// Checks an `events_key`: sent in a header, it must be visible ASCII (a key read from a
/// file often ends with a newline).
pub fn check_events_key(key: &str) -> Result<(), String> {
    match key.bytes().position(|b| !b.is_ascii_graphic()) {
        None => Ok(()),
        Some(i) => Err(format!(
            "must be visible ASCII characters only (byte {i} is not; a trailing newline?)"
        )),
    }
}

/// The Kafka ingress (docs/protocol.md 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` separated by commas.
    pub brokers: String,
    /// The topic push commands are read from; invalid ones go to `<topic>.dlq`.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// Bytes of records read and not yet taken, over all partitions, at which every
    /// partition pauses.
    pub max_buffered_bytes: usize,
    /// How long the group waits for a silent member before it reassigns its partitions.
    pub session_timeout: Duration,
}

/// The client listener's backlog by default (`backlog`).
pub const DEFAULT_BACKLOG: u32 = 4096;

/// Unsent bytes the kernel holds per client socket by default (`tcp_notsent_lowat`):
/// past it a slow client's frames wait in Throng's queue, where the outbound bounds see
/// them, instead of in up to `tcp_wmem`'s max (4 MiB) of kernel memory.
pub const DEFAULT_TCP_NOTSENT_LOWAT: u32 = 131_072;

/// The default of `kafka_max_buffered_bytes`.
pub const KAFKA_MAX_BUFFERED_BYTES: usize = 128 << 20;
/// The default of `kafka_session_timeout_ms`: librdkafka's 45 s left a crashed server's
/// partitions unread that long; the consumer heartbeats from its own thread, so a busy
/// server is not taken for a dead one.
pub const KAFKA_SESSION_TIMEOUT_MS: u64 = 10_000;
/// The range of `kafka_session_timeout_ms` (Kafka brokers accept 6 s to 30 min by
/// default, `group.min.session.timeout.ms` and `group.max.session.timeout.ms`).
pub const KAFKA_SESSION_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1_000..=3_600_000;

/// Checks a broker list: one or more `host:port` separated by commas.
pub fn check_kafka_brokers(list: &str) -> Result<(), String> {
    if list.trim().is_empty() {
        return Err("is empty: give host:port[,host:port]".into());
    }
    for b in list.split(',') {
        let b = b.trim();
        let ok = b.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(format!("{b:?} is not host:port"));
        }
    }
    Ok(())
}

/// Checks a Kafka topic name: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn check_kafka_topic(t: &str) -> Result<(), String> {
    let valid = !t.is_empty()
        && t.len() <= 245
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{t:?} is not a Kafka topic name (1 to 245 of A-Z a-z 0-9 . _ -; its DLQ adds .dlq)"
        ))
    }
}

/// Checks a `--redis` URL: `redis://host[:port][/db]`, nothing else.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        return Err(format!(
            "{url:?} is not a Redis URL: expected redis://host[:port][/db] (or rediss:// for TLS)"
        ));
    }
    if url.contains('#') {
        // redis-rs reads `#insecure` as "do not verify the certificate".
        return Err(format!(
            "{url:?} has a #fragment; certificate checks cannot be turned off (give redis_ca \
             for a private CA)"
        ));
    }
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| format!("{url:?} is not a usable Redis URL: {e}"))
}

/// Checks that an API key can be sent as is in `Authorization: Bearer <key>`: visible
/// ASCII, with spaces or tabs only inside. Header values are trimmed on the way in, so a
/// key with whitespace around it could never match. The error never shows the key.
pub fn check_api_key(k: &str) -> Result<(), String> {
    if k.starts_with(|c: char| c.is_ascii_whitespace())
        || k.ends_with(|c: char| c.is_ascii_whitespace())
    {
        return Err(
            "has whitespace at its start or end (a newline from a file or an env \
                    file?); no request can send it, so it would never match: remove it"
                .into(),
        );
    }
    if let Some(c) = k
        .chars()
        .find(|&c| !(c.is_ascii_graphic() || c == ' ' || c == '\t'))
    {
        return Err(format!(
            "holds U+{:04X}, which an HTTP header value cannot carry as is; use visible \
             ASCII (e.g. head -c 24 /dev/urandom | base64)",
            u32::from(c)
        ));
    }
    Ok(())
}

/// Shortest HMAC secret accepted outside `--dev` (RFC 7518 3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest duration a `*_ms` key takes: ten years, as good as never. Redis refuses
/// expiries past its clock's range (every push and stream load in cluster mode failed
/// with `history_ttl_ms` or `offline_ttl_ms` near `u64::MAX`).
pub const MAX_DURATION_MS: u64 = 3650 * 86_400_000;

/// A duration that may be 0, at most [`MAX_DURATION_MS`].
fn ms_or_zero(key: &'static str, v: u64) -> Result<Duration, ConfigError> {
    if v > MAX_DURATION_MS {
        return Err(too_long(key, v));
    }
    Ok(Duration::from_millis(v))
}

/// The error for a duration above [`MAX_DURATION_MS`].
fn too_long(key: &'static str, v: u64) -> ConfigError {
    invalid(
        key,
        format!("is {v}; at most {MAX_DURATION_MS} (ten years) is taken"),
    )
}

/// Most pushes a stream's history keeps (`history_size`).
pub const MAX_HISTORY_SIZE: usize = 1_000_000;

/// Longest JWT clock leeway (`[jwt] leeway_secs`).
pub const MAX_LEEWAY_SECS: u64 = 86_400;
/// Largest request head, docs/protocol.md 1.1.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Largest push API request body, docs/protocol.md 4.2.
pub const MAX_API_BODY_BYTES: usize = 1024 * 1024;
/// The default of `api_max_connections`.
pub const API_MAX_CONNECTIONS: usize = 1024;
/// The default of `api_max_buffered_bytes`.
pub const API_MAX_BUFFERED_BYTES: usize = 64 << 20;
/// The least `api_max_buffered_bytes`: one request of the largest size, head and body.
pub const MIN_API_BUFFERED_BYTES: usize = crate::api::request::MAX_HEAD + MAX_API_BODY_BYTES;
/// The WebSocket path.
pub const WS_PATH: &str = "/ws";

#[derive(Parser)]
#[command(name = "serve", no_binary_name = false)]
struct ServeOnly {
    #[command(flatten)]
    args: ServeArgs,
}

impl Config {
    /// Parses `throng serve` flags (without program or subcommand name) and builds the config.
    pub fn from_args<I, S>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString> + Clone,
    {
        let argv = std::iter::once(OsString::from("serve")).chain(args.into_iter().map(Into::into));
        let parsed = ServeOnly::try_parse_from(argv)?;
        Config::from_serve_args(parsed.args, |k| std::env::var(k).ok())
    }

    /// Builds the config from parsed flags, the config file they name, and the environment.
    pub fn from_serve_args(
        args: ServeArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        // Dev credentials are printed on the terminal: keep them off the network by default.
        let listen = pick_addr(
            "listen",
            args.listen,
            file.listen.as_deref(),
            if args.dev {
                "127.0.0.1:8700"
            } else {
                "0.0.0.0:8700"
            },
        )?;
        let api_listen = pick_addr(
            "api_listen",
            args.api_listen,
            file.api_listen.as_deref(),
            "127.0.0.1:8701",
        )?;
        // Both on one port would fail at the second bind as "address in use", which
        // reads as another server's fault; port 0 picks two different free ports.
        let overlap = listen.ip() == api_listen.ip()
            || listen.ip().is_unspecified()
            || api_listen.ip().is_unspecified();
        if listen.port() != 0 && listen.port() == api_listen.port() && overlap {
            return Err(invalid(
                "api_listen",
                format!(
                    "{api_listen} is the same address as listen ({listen}): listen and \
                     api_listen are the WebSocket and push API listeners and need a port each"
                ),
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = args.shards.or(file.shards).unwrap_or(cores);
        if shards == 0 || shards > 1024 {
            return Err(invalid("shards", "must be between 1 and 1024"));
        }
        let algorithm_name = args
            .jwt_algorithm
            .or(file.jwt.algorithm)
            .unwrap_or_else(|| "HS256".to_string());
        let algorithm = parse_algorithm(&algorithm_name)?;
        // Named in errors, as for the API key: the operator may never have given the flag.
        let secret_from = if args.jwt_secret.is_none() && file.jwt.secret.is_none() {
            " (the value of THRONG_JWT_SECRET)"
        } else {
            ""
        };
        let secret = args
            .jwt_secret
            .or(file.jwt.secret)
            .or_else(|| env("THRONG_JWT_SECRET"))
            .filter(|s| !s.is_empty());
        let secret_file = args.jwt_secret_file.or(file.jwt.secret_file);
        let (secret, extra_secrets) = match (&secret_file, secret) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "jwt_secret_file",
                    format!(
                        "give the secret one way: a file, or --jwt-secret ([jwt] secret, \
                         THRONG_JWT_SECRET), not both{secret_from}"
                    ),
                ))
            }
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        "jwt_secret_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let mut all = crate::auth::secrets_from_text(&text, MIN_SECRET_BYTES)
                    .map_err(|e| invalid("jwt_secret_file", format!("{}: {e}", path.display())))?
                    .into_iter();
                (all.next(), all.collect())
            }
            (None, secret) => (secret, Vec::new()),
        };
        let read = |key: &'static str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
        };
        let refresh_secs = args
            .jwt_jwks_refresh_secs
            .or(file.jwt.jwks_refresh_secs)
            .unwrap_or(300);
        if refresh_secs == 0 {
            return Err(invalid("jwt_jwks_refresh_secs", "must be greater than 0"));
        }
        if refresh_secs > MAX_DURATION_MS / 1000 {
            // The refresher adds it to the clock.
            return Err(invalid(
                "jwt_jwks_refresh_secs",
                format!(
                    "is {refresh_secs}; at most {} (ten years)",
                    MAX_DURATION_MS / 1000
                ),
            ));
        }
        let mut jwks_ca = args.jwt_jwks_ca.or(file.jwt.jwks_ca);
        let ways = (
            args.jwt_public_key.or(file.jwt.public_key_file),
            args.jwt_jwks.or(file.jwt.jwks_file),
            args.jwt_jwks_url.or(file.jwt.jwks_url),
        );
        let public_keys = match ways {
            (Some(path), None, None) => Some(PublicKeys::Pem {
                pem: read("jwt_public_key", &path)?,
                path: Some(path),
            }),
            (None, Some(path), None) => Some(PublicKeys::Jwks {
                json: read("jwt_jwks", &path)?,
                path,
            }),
            (None, None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(
                        "jwt_jwks_url",
                        format!("{url:?}: expected an http:// or https:// URL"),
                    ));
                }
                if let Some(path) = &jwks_ca {
                    if !url.starts_with("https://") {
                        return Err(invalid(
                            "jwt_jwks_ca",
                            "is for an https:// jwks_url (--jwt-jwks-url), and this one is http://",
                        ));
                    }
                    // At start too: a file that cannot be used exits now, not at a fetch.
                    crate::tls::read_pem_certs(path).map_err(|problem| {
                        invalid("jwt_jwks_ca", format!("{}: {problem}", path.display()))
                    })?;
                }
                Some(PublicKeys::JwksUrl {
                    url,
                    refresh: Duration::from_secs(refresh_secs),
                    ca: jwks_ca.take(),
                })
            }
            (None, None, None) => None,
            _ => {
                return Err(invalid(
                    "jwt_jwks",
                    "give the public keys one way: a PEM file (--jwt-public-key), a JWKS \
                     file (--jwt-jwks) or a JWKS URL (--jwt-jwks-url), not two",
                ))
            }
        };
        if jwks_ca.is_some() {
            return Err(invalid(
                "jwt_jwks_ca",
                "is for an https:// jwks_url (--jwt-jwks-url), and none is set",
            ));
        }
        if secret_file.is_some() && !is_hmac(algorithm) {
            return Err(invalid(
                "jwt_secret_file",
                format!("holds HMAC secrets, but the algorithm is {algorithm_name}"),
            ));
        }
        let key_flag = match public_keys {
            Some(PublicKeys::Jwks { .. }) => "jwt_jwks",
            _ => "jwt_public_key",
        };
        let mut secret = secret;
        // Named in errors, as for the events key: the operator may never have given the
        // flag the error's key names (an env-file line `THRONG_API_KEY=`).
        let api_key_from = if args.api_key.is_none() && file.api_key.is_none() {
            " (the value of THRONG_API_KEY)"
        } else {
            ""
        };
        let mut api_key = args
            .api_key
            .or(file.api_key)
            .or_else(|| env("THRONG_API_KEY"));
        let api_key_file = args.api_key_file.or(file.api_key_file);
        let mut extra_api_keys = Vec::new();
        if let Some(path) = &api_key_file {
            if api_key.is_some() {
                return Err(invalid(
                    "api_key_file",
                    format!(
                        "give the key one way: a file, or api_key (--api-key, \
                         THRONG_API_KEY), not both{api_key_from}"
                    ),
                ));
            }
            let mut keys = crate::api::keys::read_key_file(path)
                .map_err(|e| invalid("api_key_file", e))?
                .into_iter();
            api_key = keys.next();
            extra_api_keys = keys.collect();
        }
        if api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            // An empty key used to switch authentication off without a word.
            return Err(invalid(
                "api_key",
                format!(
                    "is empty{api_key_from}; give a key, or leave it unset (the API then \
                     needs a loopback api_listen or --insecure-api)"
                ),
            ));
        }
        if let Some(k) = api_key.as_deref() {
            check_api_key(k).map_err(|e| invalid("api_key", format!("{e}{api_key_from}")))?;
        }
        if args.dev {
            if secret.is_none() && public_keys.is_none() && is_hmac(algorithm) {
                secret = Some(random_token(32));
            }
            if api_key.is_none() {
                api_key = Some(random_token(24));
            }
        }
        if is_hmac(algorithm) {
            match &secret {
                None => {
                    return Err(invalid(
                        "jwt_secret",
                        format!("{algorithm_name} needs a secret (--jwt-secret, [jwt] secret, THRONG_JWT_SECRET or --jwt-secret-file)"),
                    ))
                }
                Some(s) if s.len() < MIN_SECRET_BYTES && !args.dev => {
                    return Err(invalid(
                        "jwt_secret",
                        format!(
                            "is {} bytes{secret_from}; an HMAC secret needs at least \
                             {MIN_SECRET_BYTES} (try: head -c 32 /dev/urandom | base64)",
                            s.len()
                        ),
                    ))
                }
                Some(_) => {}
            }
        } else if public_keys.is_none() {
            return Err(invalid(
                "jwt_public_key",
                format!(
                    "{algorithm_name} needs public keys: a PEM file, or a JWKS file (--jwt-jwks)"
                ),
            ));
        }
        let api_tls = match (
            args.api_tls_cert.or(file.api_tls_cert),
            args.api_tls_key.or(file.api_tls_key),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles { cert, key }),
            (Some(_), None) => return Err(invalid("api_tls_key", "is required with api_tls_cert")),
            (None, Some(_)) => return Err(invalid("api_tls_cert", "is required with api_tls_key")),
        };
        let api_tls_client_ca = args.api_tls_client_ca.or(file.api_tls_client_ca);
        if api_tls_client_ca.is_some() && api_tls.is_none() {
            return Err(invalid(
                "api_tls_client_ca",
                "needs api_tls_cert and api_tls_key (client certificates are a TLS feature)",
            ));
        }
        let insecure_api = args.insecure_api || file.insecure_api.unwrap_or(false);
        // A client certificate from a private CA authenticates as well as a key does.
        let authenticated = api_key.is_some() || api_tls_client_ca.is_some();
        if !authenticated && !api_listen.ip().is_loopback() && !insecure_api {
            return Err(invalid(
                "api_key",
                format!(
                    "the push API listens on {api_listen}, which is not loopback, and has no key; \
                     set api_key (or THRONG_API_KEY) or api_tls_client_ca, or pass \
                     --insecure-api to run it open"
                ),
            ));
        }
        let leeway_secs = args.jwt_leeway_secs.or(file.jwt.leeway_secs).unwrap_or(30);
        if leeway_secs > MAX_LEEWAY_SECS {
            // The verifier adds and subtracts it from the clock: past that, nonsense.
            return Err(invalid(
                "jwt_leeway_secs",
                format!("is {leeway_secs}; a clock leeway is at most {MAX_LEEWAY_SECS} (a day)"),
            ));
        }
        let claim = |key: &'static str, value: Option<String>| match value {
            Some(v) if v.is_empty() => {
                Err(invalid(key, "is empty; leave it unset to accept any value"))
            }
            v => Ok(v),
        };
        let jwt = JwtConfig {
            algorithm,
            secret,
            extra_secrets,
            secret_file,
            public_keys,
            require_exp: args
                .jwt_require_exp
                .or(file.jwt.require_exp)
                .unwrap_or(true),
            leeway_secs,
            issuer: claim("jwt_issuer", args.jwt_issuer.or(file.jwt.issuer))?,
            audience: claim("jwt_audience", args.jwt_audience.or(file.jwt.audience))?,
        };
        // Fail at startup, not on the first handshake, when the key does not parse.
        // (A JWKS URL is fetched when the server starts, not here.)
        if !matches!(jwt.public_keys, Some(PublicKeys::JwksUrl { .. })) {
            crate::auth::Verifier::new(&jwt).map_err(|e| invalid(key_flag, e.to_string()))?;
        }

        let ms = |key: &'static str, flag: Option<u64>, file: Option<u64>, default: u64| {
            let v = flag.or(file).unwrap_or(default);
            if v == 0 {
                Err(invalid(key, "must be greater than 0"))
            } else if v > MAX_DURATION_MS {
                Err(too_long(key, v))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        let ping_interval = ms(
            "ping_interval_ms",
            args.ping_interval_ms,
            file.ping_interval_ms,
            25_000,
        )?;
        let idle_timeout = ms(
            "idle_timeout_ms",
            args.idle_timeout_ms,
            file.idle_timeout_ms,
            60_000,
        )?;
        if idle_timeout <= ping_interval {
            return Err(invalid(
                "idle_timeout_ms",
                "must be greater than ping_interval_ms",
            ));
        }
        let handshake_timeout = ms(
            "handshake_timeout_ms",
            args.handshake_timeout_ms,
            file.handshake_timeout_ms,
            5_000,
        )?;
        let shutdown_grace = ms_or_zero(
            "shutdown_grace_ms",
            args.shutdown_grace_ms
                .or(file.shutdown_grace_ms)
                .unwrap_or(5_000),
        )?;
        let positive = |key: &'static str, v: usize| {
            if v == 0 {
                Err(invalid(key, "must be greater than 0"))
            } else {
                Ok(v)
            }
        };
        let max_connections = positive(
            "max_connections",
            args.max_connections
                .or(file.max_connections)
                .unwrap_or(1_000_000),
        )?;
        let max_message_size = positive(
            "max_message_size",
            args.max_message_size
                .or(file.max_message_size)
                .unwrap_or(64 * 1024),
        )?;
        if max_message_size > 16 * 1024 * 1024 {
            return Err(invalid("max_message_size", "must be at most 16777216"));
        }
        let max_outbound_bytes = positive(
            "max_outbound_bytes",
            args.max_outbound_bytes
                .or(file.max_outbound_bytes)
                .unwrap_or(1024 * 1024),
        )?;
        let max_sessions_per_user = positive(
            "max_sessions_per_user",
            args.max_sessions_per_user
                .or(file.max_sessions_per_user)
                .unwrap_or(16),
        )?;
        let max_topics_per_connection = positive(
            "max_topics_per_connection",
            args.max_topics_per_connection
                .or(file.max_topics_per_connection)
                .unwrap_or(64),
        )?;
        let shard_queue_capacity = positive(
            "shard_queue_capacity",
            args.shard_queue_capacity
                .or(file.shard_queue_capacity)
                .unwrap_or(65_536),
        )?;
        let max_outbound_total_bytes = match args
            .max_outbound_total_bytes
            .or(file.max_outbound_total_bytes)
        {
            Some(0) => {
                return Err(invalid(
                    "max_outbound_total_bytes",
                    "must be greater than 0",
                ))
            }
            Some(v) => v,
            None => default_outbound_total_bytes(),
        };
        let max_pending_handshakes = positive(
            "max_pending_handshakes",
            args.max_pending_handshakes
                .or(file.max_pending_handshakes)
                .unwrap_or(16_384),
        )?;
        let api_max_connections = positive(
            "api_max_connections",
            args.api_max_connections
                .or(file.api_max_connections)
                .unwrap_or(API_MAX_CONNECTIONS),
        )?;
        let api_max_buffered_bytes = args
            .api_max_buffered_bytes
            .or(file.api_max_buffered_bytes)
            .unwrap_or(API_MAX_BUFFERED_BYTES);
        if api_max_buffered_bytes < MIN_API_BUFFERED_BYTES {
            // Below one request of the largest size, such a request would always wait
            // for every other one.
            return Err(invalid(
                "api_max_buffered_bytes",
                format!(
                    "must be at least {MIN_API_BUFFERED_BYTES} (one request of the largest \
                     size, head and body)"
                ),
            ));
        }
        let api_request_timeout = ms(
            "api_request_timeout_ms",
            args.api_request_timeout_ms,
            file.api_request_timeout_ms,
            10_000,
        )?;
        let api_idle_timeout = ms(
            "api_idle_timeout_ms",
            args.api_idle_timeout_ms,
            file.api_idle_timeout_ms,
            60_000,
        )?;
        let metrics_public = args.metrics_public || file.metrics_public.unwrap_or(false);
        let drain = ms("drain_ms", args.drain_ms, file.drain_ms, 30_000)?;
        // 0 is allowed: no `token_expiring` hint.
        let refresh_ahead = ms_or_zero(
            "refresh_ahead_ms",
            args.refresh_ahead_ms
                .or(file.refresh_ahead_ms)
                .unwrap_or(60_000),
        )?;
        // 0 is allowed: no history, only `seq` and the epoch are kept.
        let history_size = args.history_size.or(file.history_size).unwrap_or(100);
        if history_size > MAX_HISTORY_SIZE {
            // Redis's LTRIM refused a larger count: every cluster push failed.
            return Err(invalid(
                "history_size",
                format!("is {history_size}; at most {MAX_HISTORY_SIZE} pushes per stream"),
            ));
        }
        let history_ttl = ms(
            "history_ttl_ms",
            args.history_ttl_ms,
            file.history_ttl_ms,
            300_000,
        )?;
        let history_memory_bytes = match args.history_memory_bytes.or(file.history_memory_bytes) {
            Some(0) => return Err(invalid("history_memory_bytes", "must be greater than 0")),
            Some(v) => v,
            None => 64 * 1024 * 1024,
        };
        let dedup_window = ms(
            "dedup_window_ms",
            args.dedup_window_ms,
            file.dedup_window_ms,
            300_000,
        )?;
        let cluster = match args.redis.or(file.redis) {
            None => {
                // A cluster key without `redis` is most often a forgotten `redis`: the node
                // would run on its own without a word.
                only_with(
                    "redis",
                    &[
                        ("node_id", args.node_id.is_some() || file.node_id.is_some()),
                        (
                            "offline_ttl_ms",
                            args.offline_ttl_ms.or(file.offline_ttl_ms).is_some(),
                        ),
                        (
                            "claim_idle_ms",
                            args.claim_idle_ms.or(file.claim_idle_ms).is_some(),
                        ),
                        (
                            "max_stream_changes_waiting",
                            args.max_stream_changes_waiting
                                .or(file.max_stream_changes_waiting)
                                .is_some(),
                        ),
                        (
                            "stream_trim",
                            args.stream_trim.or(file.stream_trim).is_some(),
                        ),
                        (
                            "stream_keep_ms",
                            args.stream_keep_ms.or(file.stream_keep_ms).is_some(),
                        ),
                        (
                            "redis_ca",
                            args.redis_ca.is_some() || file.redis_ca.is_some(),
                        ),
                        (
                            "redis_client_cert",
                            args.redis_client_cert.is_some() || file.redis_client_cert.is_some(),
                        ),
                        (
                            "redis_client_key",
                            args.redis_client_key.is_some() || file.redis_client_key.is_some(),
                        ),
                        (
                            "events_maxlen",
                            args.events_maxlen.or(file.events_maxlen).is_some(),
                        ),
                    ],
                )?;
                None
            }
            Some(url) => {
                check_redis_url(&url).map_err(|e| invalid("redis", e))?;
                let node_id = args.node_id.or(file.node_id);
                if let Some(id) = &node_id {
                    if id.is_empty()
                        || id.len() > 128
                        || id.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return Err(invalid("node_id", "must be 1 to 128 bytes without spaces"));
                    }
                }
                let redis_ca = redis_ca(&url, args.redis_ca.or(file.redis_ca))?;
                let redis_identity = redis_identity(
                    &url,
                    args.redis_client_cert.or(file.redis_client_cert),
                    args.redis_client_key.or(file.redis_client_key),
                )?;
                Some(ClusterConfig {
                    redis_url: url,
                    node_id,
                    offline_ttl: ms(
                        "offline_ttl_ms",
                        args.offline_ttl_ms,
                        file.offline_ttl_ms,
                        86_400_000,
                    )?,
                    claim_idle: ms(
                        "claim_idle_ms",
                        args.claim_idle_ms,
                        file.claim_idle_ms,
                        30_000,
                    )?,
                    max_stream_changes_waiting: positive(
                        "max_stream_changes_waiting",
                        args.max_stream_changes_waiting
                            .or(file.max_stream_changes_waiting)
                            .unwrap_or(crate::shard::MAX_INTERESTS_WAITING),
                    )?,
                    stream_trim: stream_trim(
                        args.stream_trim.or(file.stream_trim),
                        args.stream_keep_ms.or(file.stream_keep_ms),
                    )?,
                    redis_ca,
                    redis_identity,
                })
            }
        };
        let backlog = args.backlog.or(file.backlog).unwrap_or(DEFAULT_BACKLOG);
        if backlog == 0 || backlog > i32::MAX as u32 {
            return Err(invalid("backlog", "must be between 1 and 2147483647"));
        }
        let tcp_notsent_lowat = args
            .tcp_notsent_lowat
            .or(file.tcp_notsent_lowat)
            .unwrap_or(DEFAULT_TCP_NOTSENT_LOWAT);
        if tcp_notsent_lowat > i32::MAX as u32 {
            return Err(invalid(
                "tcp_notsent_lowat",
                "must be between 0 (the host's) and 2147483647",
            ));
        }
        let max_client_data_bytes = positive(
            "max_client_data_bytes",
            args.max_client_data_bytes
                .or(file.max_client_data_bytes)
                .unwrap_or(16384),
        )?;
        let kafka = match args.kafka.or(file.kafka) {
            None => {
                only_with(
                    "kafka",
                    &[
                        (
                            "kafka_topic",
                            args.kafka_topic.is_some() || file.kafka_topic.is_some(),
                        ),
                        (
                            "kafka_group",
                            args.kafka_group.is_some() || file.kafka_group.is_some(),
                        ),
                        (
                            "kafka_max_buffered_bytes",
                            args.kafka_max_buffered_bytes
                                .or(file.kafka_max_buffered_bytes)
                                .is_some(),
                        ),
                        (
                            "kafka_session_timeout_ms",
                            args.kafka_session_timeout_ms
                                .or(file.kafka_session_timeout_ms)
                                .is_some(),
                        ),
                    ],
                )?;
                None
            }
            Some(brokers) => {
                check_kafka_brokers(&brokers).map_err(|e| invalid("kafka", e))?;
                let topic = args
                    .kafka_topic
                    .or(file.kafka_topic)
                    .unwrap_or_else(|| "throng.push".into());
                check_kafka_topic(&topic).map_err(|e| invalid("kafka_topic", e))?;
                let group = args
                    .kafka_group
                    .or(file.kafka_group)
                    .unwrap_or_else(|| "throng".into());
                if group.is_empty() || group.len() > 255 || group.chars().any(char::is_control) {
                    return Err(invalid(
                        "kafka_group",
                        "must be 1 to 255 bytes without control characters",
                    ));
                }
                let max_buffered_bytes = args
                    .kafka_max_buffered_bytes
                    .or(file.kafka_max_buffered_bytes)
                    .unwrap_or(KAFKA_MAX_BUFFERED_BYTES);
                if max_buffered_bytes < MAX_API_BODY_BYTES {
                    // Below one record of the largest push, every such record would
                    // pause reading on its own.
                    return Err(invalid(
                        "kafka_max_buffered_bytes",
                        format!(
                            "must be at least {MAX_API_BODY_BYTES} (one push of the largest size)"
                        ),
                    ));
                }
                let session_ms = args
                    .kafka_session_timeout_ms
                    .or(file.kafka_session_timeout_ms)
                    .unwrap_or(KAFKA_SESSION_TIMEOUT_MS);
                if !KAFKA_SESSION_TIMEOUT_RANGE.contains(&session_ms) {
                    return Err(invalid(
                        "kafka_session_timeout_ms",
                        format!(
                            "must be between {} and {} (brokers accept 6000 to 1800000 by default)",
                            KAFKA_SESSION_TIMEOUT_RANGE.start(),
                            KAFKA_SESSION_TIMEOUT_RANGE.end()
                        ),
                    ));
                }
                Some(KafkaConfig {
                    brokers,
                    topic,
                    group,
                    max_buffered_bytes,
                    session_timeout: Duration::from_millis(session_ms),
                })
            }
        };
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles { cert, key }),
            (Some(_), None) => return Err(invalid("tls_key", "is required with tls_cert")),
            (None, Some(_)) => return Err(invalid("tls_cert", "is required with tls_key")),
        };
        let compression = args.compression.or(file.compression).unwrap_or(Switch::On) == Switch::On;
        let compression_min_bytes = args
            .compression_min_bytes
            .or(file.compression_min_bytes)
            .unwrap_or(256);
        let compression_level = args
            .compression_level
            .or(file.compression_level)
            .unwrap_or(crate::deflate::DEFAULT_LEVEL);
        if !(1..=9).contains(&compression_level) {
            return Err(invalid(
                "compression_level",
                "must be 1 (fastest) to 9 (smallest)",
            ));
        }
        let acceptors = args
            .acceptors
            .or(file.acceptors)
            .unwrap_or((shards / 4).max(1));
        if acceptors == 0 || acceptors > 64 {
            return Err(invalid("acceptors", "must be between 1 and 64"));
        }
        let events_url = args.events_url.or(file.events_url);
        if cluster.is_some() {
            // Events go to Redis there: an HTTP upstream's settings would be ignored.
            let http_upstream = [
                ("events_url", events_url.is_some()),
                (
                    "events_key",
                    args.events_key.is_some() || file.events_key.is_some(),
                ),
                (
                    "events_key_file",
                    args.events_key_file.is_some() || file.events_key_file.is_some(),
                ),
                (
                    "events_ca",
                    args.events_ca.is_some() || file.events_ca.is_some(),
                ),
            ];
            if let Some((key, _)) = http_upstream.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    key,
                    "is for a standalone server's HTTP events upstream; in cluster mode \
                     (redis) events go to the Redis stream throng:events: remove it",
                ));
            }
        }
        if let Some(url) = &events_url {
            check_events_url(url).map_err(|e| invalid("events_url", e))?;
        } else {
            // Settings for an upstream that is not set: most often a forgotten
            // `events_url`, and events would go nowhere without a word. (The environment's
            // THRONG_EVENTS_KEY may be set for a whole fleet: not counted.)
            only_with(
                "events_url",
                &[
                    (
                        "events_key",
                        args.events_key.is_some() || file.events_key.is_some(),
                    ),
                    (
                        "events_key_file",
                        args.events_key_file.is_some() || file.events_key_file.is_some(),
                    ),
                ],
            )?;
            if cluster.is_none() && args.events_queue.or(file.events_queue).is_some() {
                return Err(invalid(
                    "events_queue",
                    "is used only where events go: events_url (--events-url) or, in cluster \
                     mode, redis (--redis), and neither is set",
                ));
            }
        }
        // The environment comes after the file, as for the secret and the API key (clap's
        // `env` would have put it ahead of the file).
        let events_key_from_env = args.events_key.is_none() && file.events_key.is_none();
        let mut events_key = args
            .events_key
            .or(file.events_key)
            .or_else(|| env("THRONG_EVENTS_KEY"))
            .filter(|k| !k.is_empty());
        let events_key_file = args.events_key_file.or(file.events_key_file);
        if let Some(path) = &events_key_file {
            if events_key.is_some() {
                let from = if events_key_from_env {
                    " (the value of THRONG_EVENTS_KEY)"
                } else {
                    ""
                };
                return Err(invalid(
                    "events_key_file",
                    format!(
                        "give the key one way: a file, or events_key (--events-key, \
                         THRONG_EVENTS_KEY), not both{from}"
                    ),
                ));
            }
            events_key = Some(
                crate::events::read_key_file(path).map_err(|e| invalid("events_key_file", e))?,
            );
        }
        if let Some(key) = &events_key {
            check_events_key(key).map_err(|e| {
                let from = if events_key_from_env {
                    " (the value of THRONG_EVENTS_KEY)"
                } else {
                    ""
                };
                invalid("events_key", format!("{e}{from}"))
            })?;
        }
        let events_ca_path = args.events_ca.or(file.events_ca);
        let events_ca = match &events_ca_path {
            None => Vec::new(),
            Some(path) => {
                if !events_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://"))
                {
                    return Err(invalid(
                        "events_ca",
                        "is for an https:// events_url, and none is set",
                    ));
                }
                crate::events::read_ca(path).map_err(|e| invalid("events_ca", e))?
            }
        };
        let events_maxlen = args
            .events_maxlen
            .or(file.events_maxlen)
            .unwrap_or(1_000_000);
        if events_maxlen == 0 {
            return Err(invalid("events_maxlen", "must be greater than 0"));
        }
        let events_queue = positive(
            "events_queue",
            args.events_queue.or(file.events_queue).unwrap_or(65_536),
        )?;
        let public_topics = patterns("public_topics", args.public_topics, file.public_topics)?;
        let public_publish = patterns("public_publish", args.public_publish, file.public_publish)?;
        let allowed_origins = match args.allowed_origins {
            Some(s) => split_list(&s),
            None => file.allowed_origins.unwrap_or_default(),
        };
        Ok(Config {
            listen,
            api_listen,
            shards,
            pin_cores: args.pin_cores.or(file.pin_cores).unwrap_or(false),
            backlog,
            tcp_notsent_lowat,
            jwt,
            api_key,
            extra_api_keys,
            api_key_file,
            ping_interval,
            idle_timeout,
            handshake_timeout,
            max_connections,
            max_connections_per_ip: args
                .max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(0),
            connect_rate_per_ip: args
                .connect_rate_per_ip
                .or(file.connect_rate_per_ip)
                .unwrap_or(0),
            max_message_size,
            max_outbound_bytes,
            max_sessions_per_user,
            max_topics_per_connection,
            public_topics,
            public_publish,
            client_rate: args.client_rate.or(file.client_rate).unwrap_or(100),
            max_client_data_bytes,
            events_url,
            events_key,
            events_key_file,
            events_ca,
            events_ca_path,
            lifecycle_events: args.lifecycle_events || file.lifecycle_events.unwrap_or(false),
            events_maxlen,
            events_queue,
            kafka,
            tls,
            api_tls,
            api_tls_client_ca,
            compression,
            compression_min_bytes,
            compression_level,
            acceptors,
            allowed_origins,
            shard_queue_capacity,
            shutdown_grace,
            max_outbound_total_bytes,
            max_pending_handshakes,
            api_max_connections,
            api_max_buffered_bytes,
            api_request_timeout,
            api_idle_timeout,
            insecure_api,
            metrics_public,
            drain,
            refresh_ahead,
            history_size,
            history_ttl,
            history_memory_bytes,
            dedup_window,
            cluster,
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            dev: args.dev,
        })
    }
}

/// The default process-wide outbound budget: a quarter of physical memory, at most 4 GiB
/// (1 GiB when memory cannot be read).
pub fn default_outbound_total_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    outbound_total_for(meminfo.as_deref().and_then(mem_total_bytes))
}

/// The outbound budget default for a host with `mem_total` bytes of memory.
pub fn outbound_total_for(mem_total: Option<u64>) -> u64 {
    const GIB: u64 = 1 << 30;
    match mem_total {
        Some(total) => (total / 4).clamp(64 << 20, 4 * GIB),
        None => GIB,
    }
}

/// `MemTotal` in bytes from the text of `/proc/meminfo`.
pub fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: shown.clone(),
        problem: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| file_error(shown, &text, e.message(), e.span()))
}

/// A TOML error at its `line:column`, with the key. Serde's type errors name only the
/// value ("invalid type: string, expected u64"), so the key is taken from the line the
/// error points at, with its `[table]`; a message that names its key already keeps it.
fn file_error(
    path: String,
    text: &str,
    message: &str,
    span: Option<std::ops::Range<usize>>,
) -> ConfigError {
    let Some(before) = span.and_then(|s| text.get(..s.start)) else {
        return ConfigError::File {
            path,
            problem: message.to_string(),
        };
    };
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let this_line = text[line_start..].lines().next().unwrap_or("");
    let key = this_line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches(|c| c == '"' || c == '\''))
        .filter(|k| !k.is_empty() && !k.starts_with('[') && !k.starts_with('#'))
        .filter(|k| !message.contains(&format!("`{k}`")));
    // The table the line is in: the last `[name]` header above it.
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .and_then(|l| l.trim_start_matches('[').split(']').next())
        .map(str::trim);
    let problem = match (key, table) {
        (Some(k), Some(t)) => format!("[{t}] {k}: {message}"),
        (Some(k), None) => format!("{k}: {message}"),
        (None, _) => message.to_string(),
    };
    ConfigError::FileAt {
        path,
        line,
        column,
        problem,
    }
}

/// Reads `redis_ca`, which only a `rediss://` URL can use.
fn redis_ca(url: &str, path: Option<PathBuf>) -> Result<Option<RedisCa>, ConfigError> {
    let Some(path) = path else {
        return Ok(None);
    };
    if !url.starts_with("rediss://") {
        return Err(invalid(
            "redis_ca",
            "is for a rediss:// (TLS) redis URL, and the URL is redis://",
        ));
    }
    // Read once: redis-rs takes the PEM, the pub/sub link the certificates in it.
    let (pem, certs) = crate::tls::read_pem_file(&path)
        .map_err(|p| invalid("redis_ca", format!("{}: {p}", path.display())))?;
    Ok(Some(RedisCa { path, pem, certs }))
}

/// Reads `redis_client_cert` and `redis_client_key`, which come together and only with a
/// `rediss://` URL.
fn redis_identity(
    url: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<RedisIdentity>, ConfigError> {
    let files = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => crate::tls::TlsFiles { cert, key },
        (Some(_), None) => {
            return Err(invalid(
                "redis_client_key",
                "is required with redis_client_cert",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "redis_client_cert",
                "is required with redis_client_key",
            ))
        }
    };
    if !url.starts_with("rediss://") {
        return Err(invalid(
            "redis_client_cert",
            "is for a rediss:// (TLS) redis URL, and the URL is redis://",
        ));
    }
    let provider = rustls::crypto::ring::default_provider();
    let identity = crate::tls::Identity::read(&files, &provider)
        .map_err(|e| invalid("redis_client_cert", e.to_string()))?;
    Ok(Some(RedisIdentity { files, identity }))
}

/// `stream_trim` and `stream_keep_ms`: how long acknowledged `throng:push` entries stay,
/// or `None` when the stream is not trimmed.
fn stream_trim(trim: Option<bool>, keep: Option<u64>) -> Result<Option<Duration>, ConfigError> {
    if trim.unwrap_or(true) {
        ms_or_zero("stream_keep_ms", keep.unwrap_or(0)).map(Some)
    } else if keep.is_some() {
        Err(invalid(
            "stream_keep_ms",
            "has no effect while stream_trim is false; remove one of them",
        ))
    } else {
        Ok(None)
    }
}

fn pick_addr(
    key: &'static str,
    flag: Option<SocketAddr>,
    file: Option<&str>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    if let Some(a) = flag {
        return Ok(a);
    }
    let text = file.unwrap_or(default);
    text.parse()
        .map_err(|_| invalid(key, format!("{text:?} is not an IP:port address")))
}

fn parse_algorithm(name: &str) -> Result<Algorithm, ConfigError> {
    match name.to_ascii_uppercase().as_str() {
        "HS256" => Ok(Algorithm::HS256),
        "HS384" => Ok(Algorithm::HS384),
        "HS512" => Ok(Algorithm::HS512),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        _ => Err(invalid(
            "jwt_algorithm",
            format!("{name:?} is not one of HS256, HS384, HS512, RS256, ES256"),
        )),
    }
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// A list of topic patterns from the flag (comma-separated) or else the file; the error
/// names the key and the pattern.
fn patterns(
    key: &'static str,
    flag: Option<String>,
    file: Option<Vec<String>>,
) -> Result<Vec<TopicPattern>, ConfigError> {
    match flag {
        Some(s) => split_list(&s),
        None => file.unwrap_or_default(),
    }
    .iter()
    .map(|p| TopicPattern::parse(p).map_err(|e| invalid(key, format!("{p:?}: {e}"))))
    .collect()
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

/// A random URL-safe token of `len` characters, for dev secrets and keys.
pub fn random_token(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "0123456789abcdef0123456789abcdef";

    fn cfg(args: &[&str]) -> Result<Config, ConfigError> {
        let parsed =
            ServeOnly::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))?;
        Config::from_serve_args(parsed.args, |_| None)
    }

    #[test]
    fn tcp_notsent_lowat_defaults_to_128_kib_and_is_bounded() {
        assert_eq!(
            cfg(&["--jwt-secret", S]).unwrap().tcp_notsent_lowat,
            131_072
        );
        let off = cfg(&["--jwt-secret", S, "--tcp-notsent-lowat", "0"]).unwrap();
        assert_eq!(off.tcp_notsent_lowat, 0);
        let err = cfg(&["--jwt-secret", S, "--tcp-notsent-lowat", "2147483648"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tcp_notsent_lowat") && err.contains("2147483647"),
            "{err}"
        );
    }

    #[test]
    fn defaults_need_a_secret() {
        let err = cfg(&[]).unwrap_err().to_string();
        assert!(err.contains("jwt-secret"), "{err}");
    }

    #[test]
    fn a_short_secret_from_the_environment_is_named_as_such() {
        let from_env = |args: &[&str]| {
            let parsed =
                ServeOnly::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
                    .unwrap();
            Config::from_serve_args(parsed.args, |k| {
                (k == "THRONG_JWT_SECRET").then(|| "short".into())
            })
            .unwrap_err()
            .to_string()
        };
        let e = from_env(&[]);
        assert!(
            e.contains("is 5 bytes (the value of THRONG_JWT_SECRET)"),
            "{e}"
        );
        let e = from_env(&["--jwt-secret-file", "/nonexistent"]);
        assert!(
            e.contains("not both (the value of THRONG_JWT_SECRET)"),
            "{e}"
        );
        // Given on the command line, the flag names it.
        let e = cfg(&["--jwt-secret", "short"]).unwrap_err().to_string();
        assert!(!e.contains("THRONG_JWT_SECRET)"), "{e}");
    }

    #[test]
    fn public_keys_come_one_way_and_a_bad_jwks_is_named() {
        let dir = std::env::temp_dir().join(format!("throng-config-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("k.pem");
        let json = dir.join("k.json");
        std::fs::write(&pem, include_str!("testdata/rs256-public.pem")).unwrap();
        std::fs::write(&json, "{\"keys\": []}").unwrap();
        let (pem, json) = (pem.to_str().unwrap(), json.to_str().unwrap());
        let rs = |extra: &[&str]| {
            let mut a = vec!["--jwt-algorithm", "RS256"];
            a.extend_from_slice(extra);
            cfg(&a).map_err(|e| e.to_string())
        };
        let c = rs(&["--jwt-public-key", pem]).unwrap();
        assert!(matches!(
            c.jwt.public_keys,
            Some(PublicKeys::Pem { path: Some(_), .. })
        ));
        let e = rs(&["--jwt-public-key", pem, "--jwt-jwks", json]).unwrap_err();
        assert!(e.contains("(--jwt-jwks)") && e.contains("not two"), "{e}");
        let e = rs(&["--jwt-jwks-url", "ftp://idp/keys"]).unwrap_err();
        assert!(
            e.contains("(--jwt-jwks-url)") && e.contains("http://"),
            "{e}"
        );
        let e = rs(&[
            "--jwt-jwks-url",
            "http://idp/k",
            "--jwt-jwks-refresh-secs",
            "0",
        ]);
        assert!(e.unwrap_err().contains("(--jwt-jwks-refresh-secs)"));
        let e = rs(&[
            "--jwt-jwks-url",
            "http://idp/k",
            "--jwt-jwks-refresh-secs",
            "18446744073709551615",
        ]);
        assert!(e.unwrap_err().contains("ten years"));
        let c = rs(&[
            "--jwt-jwks-url",
            "https://idp.example/.well-known/jwks.json",
        ])
        .unwrap();
        assert!(matches!(
            c.jwt.public_keys,
            Some(PublicKeys::JwksUrl { refresh, .. }) if refresh == Duration::from_secs(300)
        ));
        let e = rs(&["--jwt-jwks", json]).unwrap_err();
        assert!(
            e.contains("(--jwt-jwks)") && e.contains("no RS256 signing key"),
            "{e}"
        );
        let e = rs(&["--jwt-jwks", "/nonexistent/k.json"]).unwrap_err();
        assert!(e.contains("cannot read /nonexistent/k.json"), "{e}");
        let e = rs(&[]).unwrap_err();
        assert!(e.contains("a JWKS file (--jwt-jwks)"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_events_key_file_is_read_and_named_when_wrong() {
        let dir =
            std::env::temp_dir().join(format!("throng-config-eventskey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("events.key");
        let path = file.to_str().unwrap();
        let base = ["--jwt-secret", S, "--events-url", "http://127.0.0.1:9/ev"];
        let with = |extra: &[&str]| cfg(&[&base[..], extra].concat());
        std::fs::write(&file, "# upstream key\r\nev-key\r\n").unwrap();
        let c = with(&["--events-key-file", path]).unwrap();
        assert_eq!(c.events_key.as_deref(), Some("ev-key"));
        assert_eq!(c.events_key_file.as_deref(), Some(file.as_path()));
        let e = with(&["--events-key-file", path, "--events-key", "k"]).unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        std::fs::write(&file, "one\ntwo\n").unwrap();
        let e = with(&["--events-key-file", path]).unwrap_err().to_string();
        assert!(
            e.contains("events_key_file") && e.contains("line 2") && !e.contains("two"),
            "{e}"
        );
        std::fs::write(&file, "two words\n").unwrap();
        let e = with(&["--events-key-file", path]).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("visible ASCII"), "{e}");
        std::fs::write(&file, "\n#\n").unwrap();
        let e = with(&["--events-key-file", path]).unwrap_err().to_string();
        assert!(e.contains("holds no key"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_api_key_file_is_read_and_named_when_wrong() {
        let dir =
            std::env::temp_dir().join(format!("throng-config-apikeys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("api-keys");
        let path = file.to_str().unwrap();
        std::fs::write(&file, "# new first\nkey-new\nkey-old\n").unwrap();
        let public = [
            "--jwt-secret",
            S,
            "--api-listen",
            "0.0.0.0:8701",
            "--api-key-file",
            path,
        ];
        let c = cfg(&public).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("key-new"));
        assert_eq!(c.extra_api_keys, vec!["key-old".to_string()]);
        assert_eq!(c.api_key_file.as_deref(), Some(file.as_path()));
        let e = cfg(&["--jwt-secret", S, "--api-key-file", path, "--api-key", "k"]).unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        // From the environment too, named as such.
        let parsed =
            ServeOnly::try_parse_from(["serve", "--jwt-secret", S, "--api-key-file", path])
                .unwrap();
        let e = Config::from_serve_args(parsed.args, |k| {
            (k == "THRONG_API_KEY").then(|| "env-key".into())
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("not both") && e.contains("THRONG_API_KEY"),
            "{e}"
        );
        std::fs::write(&file, "good\nbad \n").unwrap();
        let e = cfg(&public).unwrap_err().to_string();
        assert!(
            e.contains("api_key_file") && e.contains("line 2") && e.contains(path),
            "{e}"
        );
        std::fs::write(&file, "# none yet\n").unwrap();
        let e = cfg(&public).unwrap_err().to_string();
        assert!(e.contains("holds no key"), "{e}");
        let e = cfg(&["--jwt-secret", S, "--api-key-file", "/nonexistent/keys"]).unwrap_err();
        assert!(
            e.to_string().contains("cannot read /nonexistent/keys"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_secret_file_is_read_and_named_when_wrong() {
        let dir =
            std::env::temp_dir().join(format!("throng-config-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secrets");
        let path = file.to_str().unwrap();
        let other = "z".repeat(48);
        std::fs::write(&file, format!("{S}\n# retired soon\n{other}\n")).unwrap();
        let c = cfg(&["--jwt-secret-file", path]).unwrap();
        assert_eq!(c.jwt.secret.as_deref(), Some(S));
        assert_eq!(c.jwt.extra_secrets, vec![other]);
        assert_eq!(c.jwt.secret_file.as_deref(), Some(file.as_path()));
        let e = cfg(&["--jwt-secret-file", path, "--jwt-secret", S]).unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        let e = cfg(&["--jwt-secret-file", path, "--jwt-algorithm", "ES256"]).unwrap_err();
        assert!(e.to_string().contains("(--jwt-secret-file)"), "{e}");
        std::fs::write(&file, format!("{S}\nshort\n")).unwrap();
        let e = cfg(&["--jwt-secret-file", path]).unwrap_err().to_string();
        assert!(e.contains("line 2 is 5 bytes") && e.contains(path), "{e}");
        std::fs::write(&file, "\n# none yet\n").unwrap();
        let e = cfg(&["--jwt-secret-file", path]).unwrap_err().to_string();
        assert!(e.contains("holds no secret"), "{e}");
        let e = cfg(&["--jwt-secret-file", "/nonexistent/secrets"]).unwrap_err();
        assert!(
            e.to_string().contains("cannot read /nonexistent/secrets"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn jwt_claim_checks_come_from_flags_too_and_are_bounded() {
        let c = cfg(&[
            "--jwt-secret",
            S,
            "--jwt-require-exp",
            "false",
            "--jwt-leeway-secs",
            "5",
            "--jwt-issuer",
            "https://idp.example",
            "--jwt-audience",
            "chat",
        ])
        .unwrap();
        assert!(!c.jwt.require_exp);
        assert_eq!(c.jwt.leeway_secs, 5);
        assert_eq!(c.jwt.issuer.as_deref(), Some("https://idp.example"));
        assert_eq!(c.jwt.audience.as_deref(), Some("chat"));
        let c = cfg(&["--jwt-secret", S]).unwrap();
        assert!(c.jwt.require_exp && c.jwt.issuer.is_none() && c.jwt.audience.is_none());
        assert_eq!(c.jwt.leeway_secs, 30);
        cfg(&["--jwt-secret", S, "--jwt-leeway-secs", "86400"]).unwrap();
        // Past a day the verifier's clock arithmetic would overflow: refused, named.
        let e = cfg(&["--jwt-secret", S, "--jwt-leeway-secs", "10000000000"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("[jwt] leeway_secs (--jwt-leeway-secs)"),
            "{e}"
        );
        for flag in ["--jwt-issuer", "--jwt-audience"] {
            let e = cfg(&["--jwt-secret", S, flag, ""]).unwrap_err().to_string();
            assert!(e.contains(flag) && e.contains("is empty"), "{e}");
        }
    }

    #[test]
    fn durations_are_at_most_ten_years() {
        let max = MAX_DURATION_MS.to_string();
        let over = (MAX_DURATION_MS + 1).to_string();
        let redis = ["--redis", "redis://127.0.0.1:1"];
        for key in [
            "--history-ttl-ms",
            "--dedup-window-ms",
            "--offline-ttl-ms",
            "--claim-idle-ms",
            "--stream-keep-ms",
            "--handshake-timeout-ms",
            "--shutdown-grace-ms",
            "--refresh-ahead-ms",
        ] {
            let with = |v: &str| {
                let mut a = vec!["--jwt-secret", S];
                a.extend(redis);
                a.extend([key, v]);
                cfg(&a)
            };
            with(&max).unwrap_or_else(|e| panic!("{key} {max}: {e}"));
            let e = with(&over).unwrap_err().to_string();
            assert!(
                e.contains(&format!("({key})")) && e.contains("ten years"),
                "{e}"
            );
        }
    }

    #[test]
    fn stream_changes_waiting_has_a_default_and_no_zero() {
        let redis = ["--jwt-secret", S, "--redis", "redis://127.0.0.1:1"];
        let c = cfg(&redis).unwrap();
        let waiting = |c: Config| c.cluster.map(|c| c.max_stream_changes_waiting);
        assert_eq!(waiting(c), Some(crate::shard::MAX_INTERESTS_WAITING));
        let mut a = redis.to_vec();
        a.extend(["--max-stream-changes-waiting", "1000"]);
        assert_eq!(waiting(cfg(&a).unwrap()), Some(1000));
        a.pop();
        a.push("0");
        let e = cfg(&a).unwrap_err().to_string();
        assert!(e.contains("(--max-stream-changes-waiting)"), "{e}");
    }

    #[test]
    fn kafka_buffer_bound_has_a_default_and_a_floor() {
        let kafka = ["--jwt-secret", S, "--kafka", "127.0.0.1:9092"];
        let bound = |extra: &[&str]| {
            let mut a = kafka.to_vec();
            a.extend_from_slice(extra);
            cfg(&a).map(|c| c.kafka.map(|k| k.max_buffered_bytes))
        };
        assert_eq!(bound(&[]).unwrap(), Some(KAFKA_MAX_BUFFERED_BYTES));
        let two = (2 << 20).to_string();
        assert_eq!(
            bound(&["--kafka-max-buffered-bytes", &two]).unwrap(),
            Some(2 << 20)
        );
        let e = bound(&["--kafka-max-buffered-bytes", "1000"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("(--kafka-max-buffered-bytes): must be at least"),
            "{e}"
        );
    }

    #[test]
    fn kafka_session_timeout_has_a_default_and_a_range() {
        let session = |extra: &[&str]| {
            let mut a = vec!["--jwt-secret", S, "--kafka", "127.0.0.1:9092"];
            a.extend_from_slice(extra);
            cfg(&a).map(|c| c.kafka.map(|k| k.session_timeout.as_millis()))
        };
        assert_eq!(session(&[]).unwrap(), Some(10_000));
        assert_eq!(
            session(&["--kafka-session-timeout-ms", "6000"]).unwrap(),
            Some(6_000)
        );
        for bad in ["999", "3600001"] {
            let e = session(&["--kafka-session-timeout-ms", bad]).unwrap_err();
            assert!(
                e.to_string()
                    .contains("(--kafka-session-timeout-ms): must be between 1000 and 3600000"),
                "{e}"
            );
        }
    }

    #[test]
    fn defaults_with_secret() {
        let c = cfg(&["--jwt-secret", S]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8700".parse().unwrap());
        assert_eq!(c.api_listen, "127.0.0.1:8701".parse().unwrap());
        assert_eq!(c.ping_interval, Duration::from_secs(25));
        assert_eq!(c.max_sessions_per_user, 16);
        assert!(c.api_key.is_none());
    }

    #[test]
    fn zero_interval_names_key() {
        let err = cfg(&["--jwt-secret", S, "--ping-interval-ms", "0"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config error: ping_interval_ms (--ping-interval-ms): must be greater than 0"
        );
    }

    #[test]
    fn compression_and_tls_keys() {
        let c = cfg(&["--jwt-secret", S]).unwrap();
        assert!(c.compression);
        assert_eq!((c.compression_min_bytes, c.compression_level), (256, 1));
        assert!(c.tls.is_none());
        let c = cfg(&[
            "--jwt-secret",
            S,
            "--compression",
            "off",
            "--compression-level",
            "9",
        ])
        .unwrap();
        assert!(!c.compression);
        assert_eq!(c.compression_level, 9);
        for bad in ["0", "10"] {
            let err = cfg(&["--jwt-secret", S, "--compression-level", bad])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("compression_level (--compression-level)"),
                "{err}"
            );
        }
        let err = cfg(&["--jwt-secret", S, "--compression", "maybe"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--compression"), "{err}");
        let err = cfg(&["--jwt-secret", S, "--tls-cert", "c.pem"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls_key (--tls-key)"), "{err}");
        assert!(c.api_tls.is_none());
        let err = cfg(&["--jwt-secret", S, "--api-tls-key", "k.pem"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_tls_cert (--api-tls-cert)"), "{err}");
        let c = cfg(&[
            "--jwt-secret",
            S,
            "--api-tls-cert",
            "c.pem",
            "--api-tls-key",
            "k.pem",
        ])
        .unwrap();
        let files = c.api_tls.expect("api_tls");
        assert_eq!(
            (files.cert.to_str(), files.key.to_str()),
            (Some("c.pem"), Some("k.pem"))
        );
        assert!(c.tls.is_none(), "the client listener stays plain");
        assert!(c.api_tls_client_ca.is_none());
        let err = cfg(&["--jwt-secret", S, "--api-tls-client-ca", "ca.pem"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("api_tls_client_ca (--api-tls-client-ca): needs api_tls_cert"),
            "{err}"
        );
        // Client certificates authenticate: no key needed off loopback.
        let mtls = [
            "--jwt-secret",
            S,
            "--api-listen",
            "0.0.0.0:8701",
            "--api-tls-cert",
            "c.pem",
            "--api-tls-key",
            "k.pem",
        ];
        let err = cfg(&mtls).unwrap_err().to_string();
        assert!(err.contains("api_tls_client_ca"), "{err}");
        let c = cfg(&[&mtls[..], &["--api-tls-client-ca", "ca.pem"]].concat()).unwrap();
        assert_eq!(c.api_tls_client_ca.as_deref(), Some(Path::new("ca.pem")));
        assert!(c.api_key.is_none());
    }

    #[test]
    fn stream_trim_keys() {
        let trim = |extra: &[&str]| {
            let mut args = vec!["--jwt-secret", S, "--redis", "redis://127.0.0.1:6379"];
            args.extend_from_slice(extra);
            cfg(&args).map(|c| c.cluster.map(|k| k.stream_trim))
        };
        assert_eq!(trim(&[]).unwrap(), Some(Some(Duration::ZERO)));
        assert_eq!(
            trim(&["--stream-keep-ms", "60000"]).unwrap(),
            Some(Some(Duration::from_secs(60)))
        );
        assert_eq!(trim(&["--stream-trim", "false"]).unwrap(), Some(None));
        let err = trim(&["--stream-trim", "false", "--stream-keep-ms", "1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("stream_keep_ms (--stream-keep-ms)"), "{err}");
    }

    #[test]
    fn history_keys() {
        let c = cfg(&["--jwt-secret", S]).unwrap();
        assert_eq!(c.history_size, 100);
        assert_eq!(c.history_ttl, Duration::from_secs(300));
        assert_eq!(c.history_memory_bytes, 64 << 20);
        assert_eq!(c.dedup_window, Duration::from_secs(300));
        let c = cfg(&["--jwt-secret", S, "--dedup-window-ms", "250"]).unwrap();
        assert_eq!(c.dedup_window, Duration::from_millis(250));
        let c = cfg(&["--jwt-secret", S, "--history-size", "0"]).unwrap();
        assert_eq!(c.history_size, 0, "0 keeps no history");
        let c = cfg(&["--jwt-secret", S, "--history-size", "1000000"]).unwrap();
        assert_eq!(c.history_size, MAX_HISTORY_SIZE);
        let e = cfg(&["--jwt-secret", S, "--history-size", "1000001"]).unwrap_err();
        assert!(
            e.to_string().contains("(--history-size): is 1000001"),
            "{e}"
        );
        for (flag, key) in [
            ("--history-ttl-ms", "history_ttl_ms"),
            ("--history-memory-bytes", "history_memory_bytes"),
            ("--dedup-window-ms", "dedup_window_ms"),
        ] {
            let err = cfg(&["--jwt-secret", S, flag, "0"])
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("greater than 0"), "{err}");
        }
    }

    #[test]
    fn cluster_and_kafka_keys_need_their_mode() {
        let secret = ["--jwt-secret", "cli-secret-cli-secret-cli-secret-123"];
        for (extra, key, mode) in [
            (["--node-id", "a"], "node_id (--node-id)", "redis (--redis)"),
            (["--claim-idle-ms", "0"], "claim_idle_ms", "redis (--redis)"),
            (["--stream-trim", "false"], "stream_trim", "redis (--redis)"),
            (
                ["--redis-ca", "/nonexistent"],
                "redis_ca",
                "redis (--redis)",
            ),
            (
                ["--events-maxlen", "10"],
                "events_maxlen",
                "redis (--redis)",
            ),
            (
                ["--kafka-topic", "bad topic"],
                "kafka_topic",
                "kafka (--kafka)",
            ),
            (["--kafka-group", "g"], "kafka_group", "kafka (--kafka)"),
            // Review s21c: an upstream's settings without the upstream went unnoticed.
            (
                ["--events-key", "k"],
                "events_key",
                "events_url (--events-url)",
            ),
            (
                ["--events-key-file", "/nonexistent"],
                "events_key_file",
                "events_url (--events-url)",
            ),
        ] {
            let args: Vec<&str> = secret.iter().chain(extra.iter()).copied().collect();
            let err = cfg(&args).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(&format!("used only with {mode}")),
                "{extra:?}: {err}"
            );
        }
        // With their mode the same keys are taken (or checked on their own terms).
        let c = cfg(&[
            secret[0],
            secret[1],
            "--redis",
            "redis://127.0.0.1:1",
            "--node-id",
            "a",
        ])
        .expect("cluster keys with redis");
        assert_eq!(c.cluster.and_then(|k| k.node_id).as_deref(), Some("a"));
        // `events_queue` bounds events on their way to `events_url` or Redis: with neither
        // it says so, with either it is taken.
        let err = cfg(&[secret[0], secret[1], "--events-queue", "10"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("events_queue") && err.contains("neither is set"),
            "{err}"
        );
        for place in [
            ["--redis", "redis://127.0.0.1:1"],
            ["--events-url", "http://127.0.0.1:1/e"],
        ] {
            let c = cfg(&[
                secret[0],
                secret[1],
                place[0],
                place[1],
                "--events-queue",
                "10",
            ])
            .expect("events_queue where events go");
            assert_eq!(c.events_queue, 10);
        }
        let c = cfg(&[
            secret[0],
            secret[1],
            "--events-url",
            "http://127.0.0.1:1/e",
            "--events-key",
            "k",
        ])
        .expect("events_key with events_url");
        assert_eq!(c.events_key.as_deref(), Some("k"));
        // Review s22b: in cluster mode events go to Redis; the HTTP upstream's settings
        // were ignored without a word (and `events_key` alone was told to add one).
        for extra in [
            &["--events-url", "http://127.0.0.1:1/e"][..],
            &["--events-key", "k"],
            &["--events-url", "http://127.0.0.1:1/e", "--events-key", "k"],
            &["--events-key-file", "/nonexistent"],
            &["--events-ca", "/nonexistent"],
        ] {
            let mut args = vec![secret[0], secret[1], "--redis", "redis://127.0.0.1:1"];
            args.extend_from_slice(extra);
            let err = cfg(&args).unwrap_err().to_string();
            assert!(
                err.contains(&extra[0][2..].replace('-', "_"))
                    && err.contains("cluster mode")
                    && err.contains("throng:events"),
                "{extra:?}: {err}"
            );
        }
        let err = cfg(&[
            secret[0],
            secret[1],
            "--kafka",
            "127.0.0.1:1",
            "--kafka-topic",
            "bad topic",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("kafka_topic") && !err.contains("used only"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_file_override_env() {
        let dir = std::env::temp_dir().join(format!("throng-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.toml");
        std::fs::write(
            &path,
            "ping_interval_ms = 1000\nidle_timeout_ms = 3000\napi_key = \"filekey\"\nevents_url = \"http://127.0.0.1:1/e\"\nevents_key = \"fileevents\"\n[jwt]\nsecret = \"filesecret-filesecret-filesecret-12\"\n",
        )
        .unwrap();
        let parsed = ServeOnly::try_parse_from([
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--ping-interval-ms",
            "2000",
        ])
        .unwrap();
        let c = Config::from_serve_args(parsed.args, |k| match k {
            "THRONG_JWT_SECRET" => Some("envsecret".into()),
            "THRONG_API_KEY" => Some("envkey".into()),
            "THRONG_EVENTS_KEY" => Some("envevents".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.ping_interval, Duration::from_millis(2000));
        assert_eq!(c.idle_timeout, Duration::from_millis(3000));
        assert_eq!(
            c.jwt.secret.as_deref(),
            Some("filesecret-filesecret-filesecret-12")
        );
        assert_eq!(c.api_key.as_deref(), Some("filekey"));
        assert_eq!(c.events_key.as_deref(), Some("fileevents"));
        // Without the file's key the environment's is taken, and named when it is bad.
        let env = |bad: bool| {
            move |k: &str| match k {
                "THRONG_EVENTS_KEY" if bad => Some("env key".to_string()),
                "THRONG_EVENTS_KEY" => Some("envevents".to_string()),
                _ => None,
            }
        };
        let base = [
            "serve",
            "--jwt-secret",
            "cli-secret-cli-secret-cli-secret-123",
        ];
        let c = Config::from_serve_args(ServeOnly::try_parse_from(base).unwrap().args, env(false))
            .unwrap();
        assert_eq!(c.events_key.as_deref(), Some("envevents"));
        let err = Config::from_serve_args(ServeOnly::try_parse_from(base).unwrap().args, env(true))
            .unwrap_err()
            .to_string();
        assert!(err.contains("THRONG_EVENTS_KEY"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unknown_file_key_is_named() {
        let dir = std::env::temp_dir().join(format!("throng-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.toml");
        std::fs::write(&path, "ping_intervall_ms = 5\n").unwrap();
        let err = cfg(&["--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ping_intervall_ms"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unsafe_startup_settings_are_refused() {
        let err = cfg(&["--jwt-secret", S, "--api-key", ""])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config error: api_key (--api-key): is empty"),
            "{err}"
        );
        for (key, needle) in [
            ("k ", "whitespace at its start or end"),
            (" k", "whitespace at its start or end"),
            ("k\n", "whitespace at its start or end"),
            ("k\r\n", "whitespace at its start or end"),
            ("k\u{7f}x", "U+007F"),
            ("k\u{e4}x", "U+00E4"),
            ("k\nx", "U+000A"),
        ] {
            let err = cfg(&["--jwt-secret", S, "--api-key", key])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("config error: api_key (--api-key): ") && err.contains(needle),
                "{key:?}: {err}"
            );
            assert!(!err.contains(key), "the error shows the key: {err}");
        }
        // Inside, a space is a valid header character.
        assert!(cfg(&["--jwt-secret", S, "--api-key", "a b~!"]).is_ok());
        let err = cfg(&["--jwt-secret", "short"]).unwrap_err().to_string();
        assert!(
            err.starts_with("config error: [jwt] secret (--jwt-secret): is 5 bytes"),
            "{err}"
        );
        let err = cfg(&["--jwt-secret", S, "--api-listen", "0.0.0.0:8701"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--insecure-api"), "{err}");
        assert!(cfg(&[
            "--jwt-secret",
            S,
            "--api-listen",
            "0.0.0.0:8701",
            "--insecure-api"
        ])
        .is_ok());
        assert!(cfg(&[
            "--jwt-secret",
            S,
            "--api-listen",
            "0.0.0.0:8701",
            "--api-key",
            "k"
        ])
        .is_ok());
        // --dev accepts a short secret and keeps the client listener on loopback.
        let c = cfg(&["--dev", "--jwt-secret", "short"]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8700".parse().unwrap());
    }

    #[test]
    fn outbound_budget_default_is_a_quarter_of_memory_capped() {
        let gib = 1u64 << 30;
        assert_eq!(outbound_total_for(Some(24 * gib)), 4 * gib);
        assert_eq!(outbound_total_for(Some(8 * gib)), 2 * gib);
        assert_eq!(outbound_total_for(Some(gib / 8)), 64 << 20);
        assert_eq!(outbound_total_for(None), gib);
        assert_eq!(mem_total_bytes("MemTotal:  1024 kB\n"), Some(1 << 20));
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn dev_makes_secret_and_key() {
        let c = cfg(&["--dev"]).unwrap();
        assert!(c.jwt.secret.is_some());
        assert!(c.api_key.is_some());
    }

    #[test]
    fn bad_algorithm_and_pattern() {
        let err = cfg(&["--jwt-secret", S, "--jwt-algorithm", "none"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("jwt-algorithm"), "{err}");
        let err = cfg(&["--jwt-secret", S, "--public-topics", "a b"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("public_topics"), "{err}");
    }
}
