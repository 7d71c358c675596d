//! Command-line arguments of every subcommand, and their validation.

use crate::client::Target;
use crate::push::Via;
use crate::tls::{ClientIdentity, TlsError, Trust};
use crate::util::Url;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// The exit status, in every subcommand's --help.
pub const EXIT_STATUS: &str = "\
Exit status:
  0  the run passed (the summary ends with `result: OK`)
  1  the run failed; the summary's `result: FAILED` line and the JSON `failures` say why:
     a connection that never opened (capacity: none opened; its ramp stops at the
     first connect error); in every mode an open connection the server or network
     ended (deploy: not the first server's drain closes the clients follow); a churn,
     resume or deploy reconnect that failed; a push given up, a scheduled push never
     sent, a push due before the end sent late after it (not capacity), or no push
     accepted (capacity: its probes'); a message missing, duplicated or unexpected, a
     receiver lost; a deploy client that did not move; a chat member that connected
     but never joined its room; or (resume, deploy, chat) the delivery gate (resume,
     deploy: a push missing or duplicated; not one a resumed:false said would not be
     replayed)
  2  the run could not be made: bad flags, an unreachable setup, a worker that died";

/// The top-level command line.
#[derive(Parser, Debug)]
#[command(
    name = "throng-load",
    version,
    about = "Load generator for the Throng push server",
    after_help = EXIT_STATUS
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Open, hold and cleanly close WebSocket connections.
    #[command(after_help = EXIT_STATUS)]
    Connect(ConnectArgs),
    /// Hold connections and drive the push API; measure delivery and latency.
    #[command(after_help = EXIT_STATUS)]
    Push(PushArgs),
    /// Push like `push` while a share of the connections disconnect and reconnect.
    #[command(after_help = EXIT_STATUS)]
    Churn(ChurnArgs),
    /// Ramp connections up step by step, measuring memory and push latency per step.
    #[command(after_help = EXIT_STATUS)]
    Capacity(CapacityArgs),
    /// Push to users (and --topics) while a share of the connections drop abruptly and
    /// resume with since/epoch; prove nothing went missing or came twice (exit 1 if so).
    /// Pushes a resume answered resumed:false did not replay (history no longer held)
    /// are counted apart as not replayed, not missing, and do not fail the run.
    #[command(after_help = EXIT_STATUS)]
    Resume(ResumeArgs),
    /// Drain the server at --url (POST /v1/drain on --api) while its clients follow the
    /// reconnect hints to --reconnect-url; report the reconnect curve and delivery there.
    #[command(after_help = EXIT_STATUS)]
    Deploy(DeployArgs),
    /// Rooms of members who subscribe to their room and publish to it; prove every member
    /// got every accepted message exactly once, in order (exit 1 if not).
    #[command(after_help = EXIT_STATUS)]
    Chat(ChatArgs),
    /// Measure this host's floor: a minimal epoll server that makes only the system calls
    /// a heartbeat (2-byte Ping out, 6-byte Pong in), a broadcast delivery (one frame out)
    /// or a handshake (accept, read, register, answer) costs, against a child process of
    /// clients; its CPU per operation is what any epoll server pays here, to read Throng's
    /// figures against. Needs no server.
    #[command(after_help = FLOOR_EXIT_STATUS)]
    Floor(FloorArgs),
}

/// The exit status of `floor`.
pub const FLOOR_EXIT_STATUS: &str = "\
Exit status:
  0  the floor was measured (the summary ends with `result: OK`)
  1  it ran but its figure does not hold: heartbeat, fewer than 99% of the window's
     pings were answered; broadcast, under 90% of the asked broadcasts went out or a
     write did not take a whole frame (the host could not keep up)
  2  it could not be run: bad flags, too few open files, the clients' process failed";

/// What `floor` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FloorWorkload {
    /// Each connection is pinged (2 bytes) every --interval-ms and answers a 6-byte Pong.
    Heartbeat,
    /// --rate times a second a --frame-bytes frame is written to every connection.
    Broadcast,
    /// --connections clients connect at once (512 in flight) and send an upgrade request;
    /// each is accepted, read once, registered and answered with a 101 and a frame.
    Handshake,
    /// --in-flight API connections each send a push request, one at a time; each request
    /// is read, answered with a fixed 202 and its --frame-bytes frame written to one of
    /// --connections idle connections in turn (a unicast push through an HTTP API).
    Unicast,
}

/// `floor`'s flags.
#[derive(Args, Debug, Clone)]
pub struct FloorArgs {
    /// The per-connection work measured.
    #[arg(long, value_enum, default_value_t = FloorWorkload::Heartbeat)]
    pub workload: FloorWorkload,
    /// Connections held (the clients' process holds as many; each needs an open file in
    /// both processes).
    #[arg(long, default_value_t = 15000)]
    pub connections: u64,
    /// heartbeat: milliseconds between two pings of one connection (pings are spread
    /// evenly over the interval).
    #[arg(long, default_value_t = 2000)]
    pub interval_ms: u64,
    /// broadcast: frames written to every connection per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// broadcast and unicast: bytes per frame, header included (a push of throng-load's
    /// default 64-byte pad is about 150 bytes on the wire).
    #[arg(long, default_value_t = 150)]
    pub frame_bytes: usize,
    /// unicast: API connections, each with one request in flight (as `push
    /// --api-concurrency`).
    #[arg(long, default_value_t = 64)]
    pub in_flight: u64,
    /// Seconds measured, after one interval (heartbeat) or one second (broadcast) of
    /// warm-up.
    #[arg(long, default_value_t = 20.0)]
    pub window_secs: f64,
    /// Source addresses the clients bind round-robin (as for `connect`), to hold more
    /// connections than one address's local ports.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Internal: run as the clients' process, connecting to this address.
    #[arg(long, hide = true)]
    pub peer: Option<std::net::SocketAddr>,
    /// Internal, unicast: the clients' process's API connections go to this address.
    #[arg(long, hide = true)]
    pub api_peer: Option<std::net::SocketAddr>,
}

/// Checks `floor`'s flags.
pub fn validate_floor(a: &FloorArgs) -> Result<(), String> {
    if a.connections == 0 || a.connections > 10_000_000 {
        return Err(format!(
            "--connections must be 1 to 10000000 (got {})",
            a.connections
        ));
    }
    if !(10..=3_600_000).contains(&a.interval_ms) {
        return Err(format!(
            "--interval-ms must be 10 to 3600000 (got {})",
            a.interval_ms
        ));
    }
    if !(a.rate > 0.0 && a.rate <= 1000.0) {
        return Err(format!(
            "--rate must be a number of broadcasts per second above 0 and at most 1000 (got {})",
            a.rate
        ));
    }
    if !(2..=1 << 20).contains(&a.frame_bytes) {
        return Err(format!(
            "--frame-bytes must be 2 to 1048576 (got {})",
            a.frame_bytes
        ));
    }
    if !(1..=4096).contains(&a.in_flight) {
        return Err(format!(
            "--in-flight must be 1 to 4096 (got {})",
            a.in_flight
        ));
    }
    if !(a.window_secs > 0.0 && a.window_secs <= 3600.0) {
        return Err(format!(
            "--window-secs must be above 0 and at most 3600 (got {})",
            a.window_secs
        ));
    }
    if let Some(s) = &a.source_ips {
        let ips = crate::util::parse_source_ips(s).map_err(|e| format!("--source-ips: {e}"))?;
        if let Some(ip) = ips.iter().find(|ip| !ip.is_ipv4()) {
            return Err(format!(
                "--source-ips: {ip} is not IPv4; the floor listens on 127.0.0.1"
            ));
        }
    }
    Ok(())
}

/// How the connections are opened and closed: the flags of every subcommand that holds
/// connections.
#[derive(Args, Debug, Clone)]
pub struct SocketArgs {
    /// Connection attempts per second (in all); 0 = as fast as possible.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Source addresses, bound round-robin before connect: 127.0.0.2-127.0.0.9,10.0.0.1.
    /// Connection g (counted across --procs) binds the (g mod n)th, so every address
    /// carries the same share whatever --procs is. Checked before the run: each must be
    /// of the --url's address family and bindable on this host, and no (source,
    /// destination) pair may need more connections than ip_local_port_range has ports.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Internal: the global number of this worker's first connection, so its connection
    /// g binds source address (start + g) mod n.
    #[arg(long, hide = true, default_value_t = 0)]
    pub source_ip_start: u64,
    /// Event loop threads (per process); default: the number of cores (divided by --procs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Connect + upgrade + welcome deadline per connection.
    #[arg(long, default_value_t = 10.0)]
    pub handshake_timeout_secs: f64,
    /// How long the clean close may take in all.
    #[arg(long, default_value_t = 10.0)]
    pub close_timeout_secs: f64,
    /// Token lifetime.
    #[arg(long, default_value_t = 3600)]
    pub token_ttl_secs: u64,
    /// How wss:// connections trust the server and resume their sessions.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Offer permessage-deflate (RFC 7692) in every upgrade request, as browsers do
    /// (`permessage-deflate; client_max_window_bits`), and inflate the compressed frames
    /// the server sends (one inflater per event loop, each message on its own, at most
    /// 16 MiB); this client's own messages stay uncompressed. An answer this client did
    /// not offer, or one that keeps the server's compression context between messages
    /// (no server_no_context_takeover), is a connect error; without this flag any
    /// extension in the answer is. The report's `compression` section counts wire and
    /// payload bytes and compressed frames with or without it.
    #[arg(long)]
    pub compression: bool,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    /// Whether it is on.
    pub fn on(self) -> bool {
        self == OnOff::On
    }

    /// The flag value (`on` or `off`).
    pub fn name(self) -> &'static str {
        match self {
            OnOff::On => "on",
            OnOff::Off => "off",
        }
    }
}

/// The help heading of the TLS flags.
const TLS: &str = "TLS (wss:// and https:// URLs)";

/// The flags of wss:// connections and an https:// push API (every subcommand that
/// holds connections).
#[derive(Args, Debug, Clone)]
pub struct TlsArgs {
    /// PEM file of the certificates to trust for wss:// URLs and an https:// --api: the server's own
    /// self-signed certificate, or the CA that issued it. The server's certificate must
    /// name the URL's host (a DNS name, or an IP address as a subjectAltName) and must not
    /// be a CA certificate itself (`openssl req -x509` makes one unless given
    /// `-addext basicConstraints=critical,CA:FALSE`).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure", help_heading = TLS)]
    pub ca: Option<PathBuf>,
    /// Accept any server certificate on wss:// and https:// URLs (test servers only): the handshake's
    /// signatures are still verified, the certificate's chain and name are not.
    #[arg(long, help_heading = TLS)]
    pub insecure: bool,
    /// Resume TLS sessions with the tickets of earlier handshakes: every connection of a
    /// process shares one session store (up to one ticket per connection per server
    /// name), so reconnects and later connections resume once earlier handshakes have
    /// left tickets; `off` makes every handshake a full one. The report counts full and
    /// resumed handshakes either way.
    #[arg(long, value_enum, value_name = "on|off", default_value_t = OnOff::On, help_heading = TLS)]
    pub tls_resume: OnOff,
    /// PEM certificate chain (leaf first) to show a server that asks for a client
    /// certificate: a push API with --api-tls-client-ca. With --client-key.
    #[arg(long, value_name = "FILE", requires = "client_key", help_heading = TLS)]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert", help_heading = TLS)]
    pub client_key: Option<PathBuf>,
}

impl TlsArgs {
    /// What the flags say to trust; `None` without `--ca` or `--insecure`.
    pub fn trust(&self) -> Option<Trust> {
        match (&self.ca, self.insecure) {
            (Some(path), _) => Some(Trust::Ca(path.clone())),
            (None, true) => Some(Trust::Insecure),
            (None, false) => None,
        }
    }

    /// The client certificate of `--client-cert` and `--client-key`, when given.
    pub fn identity(&self) -> Result<Option<ClientIdentity>, String> {
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => ClientIdentity::load(cert, key)
                .map(Some)
                .map_err(|e| e.to_string()),
            _ => Ok(None),
        }
    }

    /// Checks the TLS flags against `urls` (given as `flag`): a wss:// URL needs
    /// something to trust and a host a certificate can name, and `--ca` must hold
    /// certificates.
    fn check(&self, flag: &str, urls: &[Url]) -> Result<(), String> {
        if let Some(path) = &self.ca {
            crate::tls::config::load_roots(path).map_err(|e| e.to_string())?;
        }
        self.identity()?;
        for u in urls.iter().filter(|u| u.tls) {
            if self.trust().is_none() {
                return Err(format!("{flag}: {}", TlsError::NoTrust));
            }
            crate::tls::config::server_name(&u.host).map_err(|e| format!("{flag}: {e}"))?;
        }
        Ok(())
    }
}

impl SocketArgs {
    /// Checks the flags; a `worker`'s share of --connect-rate may be below [`MIN_RATE`].
    fn validate(&self, worker: bool) -> Result<(), String> {
        if !(self.connect_rate >= 0.0 && self.connect_rate.is_finite()) {
            return Err("--connect-rate must be a number, not negative".into());
        }
        check_min_rate("--connect-rate", self.connect_rate, worker)?;
        if self.token_ttl_secs > MAX_TOKEN_TTL_SECS {
            return Err(format!(
                "--token-ttl-secs must be at most {MAX_TOKEN_TTL_SECS} (100 years)"
            ));
        }
        check_secs("--handshake-timeout-secs", self.handshake_timeout_secs)?;
        check_secs("--close-timeout-secs", self.close_timeout_secs)
    }

    /// Seconds the connect pace takes for `n` connections (0 when unpaced).
    pub fn connect_secs(&self, n: u64) -> f64 {
        if self.connect_rate > 0.0 {
            n as f64 / self.connect_rate
        } else {
            0.0
        }
    }

    /// Parses a list of ws:// and wss:// URLs given as `flag`, and checks that the TLS
    /// flags can serve its wss:// ones.
    pub fn check_urls(&self, flag: &str, list: &str) -> Result<Vec<Url>, String> {
        let urls = crate::util::parse_ws_urls(list).map_err(|e| format!("{flag}: {e}"))?;
        self.tls.check(flag, &urls)?;
        Ok(urls)
    }

    /// Event loops for `units` connections or rooms: --threads or the cores, 1 to 256,
    /// no more than there are units.
    pub fn threads_for(&self, units: u64) -> usize {
        self.threads_of(1, units)
    }

    /// Event loops of one of `procs` processes that has `units` connections or rooms:
    /// as [`SocketArgs::threads_for`] in each worker, whose `--threads` is the parent's,
    /// or its share of the cores ([`crate::worker::sock_args`]).
    pub fn threads_of(&self, procs: usize, units: u64) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.threads
            .unwrap_or((cores / procs.max(1)).max(1))
            .clamp(1, 256)
            .min(units.max(1) as usize)
    }
}

/// Flags of `connect`, shared by `push` and `churn`.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// WebSocket URL of the server: ws:// or wss:// (TLS; port 443 unless given, trust
    /// from --ca or --insecure); several, comma separated: connection g goes to the
    /// (g mod n)th.
    #[arg(long, default_value = "ws://127.0.0.1:8700/ws")]
    pub url: String,
    /// Connections to open (in all, across --procs).
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    /// How the connections are opened and closed.
    #[command(flatten)]
    pub sock: SocketArgs,
    /// HS256 secret for the tokens.
    #[arg(long, env = "THRONG_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Sessions per user: connection i is user u{offset + i / sessions_per_user}.
    #[arg(long, default_value_t = 1)]
    pub sessions_per_user: u64,
    /// First user number.
    #[arg(long, default_value_t = 0)]
    pub user_offset: u64,
    /// Topics every connection subscribes to after welcome (comma separated); also put in
    /// the token's `topics` claim.
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
    /// Topic patterns put in the token's `topics` claim only, not subscribed (comma
    /// separated): what grants cost an idle connection.
    #[arg(long, value_delimiter = ',')]
    pub claim_topics: Vec<String>,
    /// Seconds to hold the connections once up (default: 10 for connect, 0 for push).
    #[arg(long)]
    pub hold_secs: Option<f64>,
    /// Seconds to wait after the last connection before measuring and holding.
    #[arg(long, default_value_t = 2.0)]
    pub settle_secs: f64,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Server process to measure RSS of (and kernel TCP memory) per connection.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Worker processes over disjoint user ranges; --source-ips are shared evenly by all.
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Internal: run as a worker of a --procs parent (commands on stdin, results on stdout).
    #[arg(long, hide = true)]
    pub worker: bool,
}

/// Flags of `push`, shared by `churn`.
#[derive(Args, Debug, Clone)]
pub struct PushArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Push API base URL: http://, or https:// (TLS, port 443 unless given, trust from --ca
    /// or --insecure).
    #[arg(long, default_value = "http://127.0.0.1:8701")]
    pub api: String,
    /// Push API key.
    #[arg(long, env = "THRONG_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Cluster mode: add the pushes to the Redis stream `throng:push` at this URL
    /// (redis://host:port[/db], or rediss:// for TLS) with `XADD throng:push * push
    /// <json>`, --batch XADDs per round trip, instead of POSTing them to --api.
    #[arg(long, conflicts_with = "kafka")]
    pub redis_stream: Option<String>,
    /// With a rediss:// --redis-stream: PEM CA certificates Redis's certificate is
    /// verified against [default: the system's roots].
    #[arg(long, value_name = "FILE", requires = "redis_stream")]
    pub redis_ca: Option<std::path::PathBuf>,
    /// With a rediss:// --redis-stream: PEM client certificate chain for a Redis that
    /// asks for one (tls-auth-clients). With --redis-client-key.
    #[arg(long, value_name = "FILE", requires_all = ["redis_stream", "redis_client_key"])]
    pub redis_client_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --redis-client-cert.
    #[arg(long, value_name = "FILE", requires = "redis_client_cert")]
    pub redis_client_key: Option<std::path::PathBuf>,
    /// Kafka ingress (docs/protocol.md 7): produce each push as a record on --kafka-topic
    /// at these brokers (host:port[,host:port]), keyed by its target, instead of POSTing
    /// it to --api; a push counts as sent once the broker acknowledges it.
    #[arg(long)]
    pub kafka: Option<String>,
    /// The topic the server's Kafka ingress reads (its --kafka-topic).
    #[arg(long, default_value = "throng.push")]
    pub kafka_topic: String,
    /// Pushes per second (in all); 0 = as fast as the API answers. Paced, each push has a
    /// schedule slot (start + i / rate), and push-to-client and API latency count from
    /// that slot, not from the send: when the server stalls, the pushes due meanwhile
    /// wait and that wait is in the percentiles (no coordinated omission). Every slot
    /// before the end of --duration-secs is pushed, late if need be, for up to 10 s
    /// after it; `pushes_scheduled` counts the slots, `pushes_sent_late` those sent over
    /// 100 ms past their slot, `pushes_sent_after_end` and `pushes_not_sent` those of a
    /// stall that reached the end (either fails the run). Unpaced, latencies count from
    /// the send. The report's `latency_from` says which.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long to push; 0 with --count: until the count is sent.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Stop after this many pushes (in all) even if time is left.
    #[arg(long)]
    pub count: Option<u64>,
    /// Push target.
    #[arg(long, value_enum, default_value_t = Target::User)]
    pub target: Target,
    /// Length of the `pad` string in each push's data (with --payload-json: the size of
    /// its `doc`).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Fill each push's data with `doc`, a JSON document of about --payload-bytes,
    /// instead of a `pad` string of one repeated letter (which deflate shrinks a
    /// hundredfold, a best case no real push reaches): an array of order-like records
    /// that repeat their field names with varying values (random ids, account and
    /// symbol codes, quantities, prices, timestamps, a few status words) and a note of
    /// random words, so it compresses like typical API JSON: deflate at the server's
    /// default level 1 shrinks the push frames about 2.1:1 at 2,000 bytes (1.3:1 at 300,
    /// 2.8:1 at 20,000; the report's inflated_bytes over deflated_bytes).
    #[arg(long)]
    pub payload_json: bool,
    /// Pushes per request; above 1 uses POST /v1/push/batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Parallel keep-alive API connections (per pushing process).
    #[arg(long, default_value_t = 4)]
    pub api_concurrency: usize,
    /// Users per push with --target users.
    #[arg(long, default_value_t = 10)]
    pub users_per_push: usize,
    /// After the last push, wait at most this long for deliveries.
    #[arg(long, default_value_t = 10.0)]
    pub drain_secs: f64,
    /// Give every push an `id` unique to the run (`tl<pid>-<random>-<stream>-<n>`), so
    /// that the server drops a second copy (docs/protocol.md 4.4): a request that timed
    /// out is then sent again. Without it a timed-out request is given up (`api_timeout`,
    /// the server may still deliver it: `unexpected`), and only a kept-alive connection
    /// the server closed is retried. Off by default: the server's deduplication window
    /// then costs memory and time per push. Broadcasts are never deduplicated.
    #[arg(long)]
    pub push_ids: bool,
}

impl PushArgs {
    /// Where the pushes go: --kafka, else --redis-stream, else the API.
    pub fn via(&self) -> Via {
        match (&self.kafka, &self.redis_stream) {
            (Some(brokers), _) => Via::Kafka {
                brokers: brokers.clone(),
                topic: self.kafka_topic.clone(),
            },
            (None, Some(url)) => Via::RedisStream {
                url: url.clone(),
                ca: self.redis_ca.clone(),
                identity: self
                    .redis_client_cert
                    .clone()
                    .zip(self.redis_client_key.clone()),
            },
            (None, None) => Via::Api,
        }
    }
}

/// Flags of `churn`: everything `push` takes plus the churn pace and share.
#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub push: PushArgs,
    /// Client-initiated disconnect+reconnect cycles per second (in all, across --procs).
    #[arg(long, default_value_t = 10.0)]
    pub churn_rate: f64,
    /// Share of the connections that churn (0 < F <= 1), a fixed subset by connection number.
    #[arg(long, default_value_t = 0.2)]
    pub churn_fraction: f64,
}

/// Flags of `resume`: `churn`'s flags (the drop pace and share) plus the topic push rate.
#[derive(Args, Debug, Clone)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub churn: ChurnArgs,
    /// Topic pushes per second (in all, spread over --topics) alongside the user pushes.
    #[arg(long, default_value_t = 10.0)]
    pub topic_rate: f64,
    /// How long a dropped connection stays away before it reconnects, in ms.
    #[arg(long, default_value_t = 200)]
    pub offline_ms: u64,
}

/// Flags of `deploy`: `push`'s flags (--api is the drained server's API) plus the second
/// server and the clients' jitter.
#[derive(Args, Debug, Clone)]
pub struct DeployArgs {
    #[command(flatten)]
    pub push: PushArgs,
    /// WebSocket URL of the server the clients move to: ws:// or wss:// (TLS, trust from
    /// --ca or --insecure).
    #[arg(long)]
    pub reconnect_url: String,
    /// Push API of the server the clients move to (the pushes after the move go there).
    #[arg(long)]
    pub reconnect_api: String,
    /// Topic pushes per second (in all, spread over --topics) alongside the user pushes.
    #[arg(long, default_value_t = 10.0)]
    pub topic_rate: f64,
    /// Most jitter (ms) a client adds to its hint's after_ms before reconnecting.
    #[arg(long, default_value_t = 100)]
    pub jitter_ms: u64,
    /// How long all clients may take to reach the second server after the drain begins.
    #[arg(long, default_value_t = 120.0)]
    pub move_timeout_secs: f64,
}

/// Flags of `chat`: rooms of members who publish to their own room over their WebSocket.
#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    /// WebSocket URL of the server: ws:// or wss:// (TLS; port 443 unless given, trust
    /// from --ca or --insecure); several, comma separated: member g goes to the (g mod n)th.
    #[arg(long, default_value = "ws://127.0.0.1:8700/ws")]
    pub url: String,
    /// HS256 secret for the tokens (each has `topics` and `publish` claims for the rooms).
    #[arg(long, env = "THRONG_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Rooms (in all, across --procs); room i is the topic <room-prefix><room-offset + i>.
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    /// Members per room: each is one connection that subscribes to its room and publishes.
    #[arg(long, default_value_t = 10)]
    pub members: u64,
    /// Topic name prefix of the rooms; the tokens grant `<prefix>*`.
    #[arg(long, default_value = "room:")]
    pub room_prefix: String,
    /// First room number.
    #[arg(long, default_value_t = 0)]
    pub room_offset: u64,
    /// First user number: member m of room i is user u{offset + i * members + m}.
    #[arg(long, default_value_t = 0)]
    pub user_offset: u64,
    /// Messages per second each member publishes. Each message has a schedule slot, and
    /// its publish and fan-out latencies count from that slot, not from its send, so a
    /// load generator that falls behind shows in them (`publishes_sent_late` counts the
    /// messages sent over 100 ms past their slot).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Messages per second in all, spread evenly over the members (instead of --rate).
    #[arg(long, conflicts_with = "rate")]
    pub total_rate: Option<f64>,
    /// How long the members publish; 0 with --count: until the count is sent.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Stop after this many publishes in all (spread evenly over the members).
    #[arg(long)]
    pub count: Option<u64>,
    /// Length of the `pad` string in each message's data.
    #[arg(long, default_value_t = 32)]
    pub payload_bytes: usize,
    /// Leave the `publish` claim out of the tokens (to test the server's --public-publish).
    #[arg(long)]
    pub no_publish_claim: bool,
    /// After the last publish, wait at most this long for answers and deliveries.
    #[arg(long, default_value_t = 10.0)]
    pub drain_secs: f64,
    /// How the connections are opened and closed.
    #[command(flatten)]
    pub sock: SocketArgs,
    /// Worker processes, each with whole rooms.
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Internal: run as a worker of a --procs parent (commands on stdin, results on stdout).
    #[arg(long, hide = true)]
    pub worker: bool,
}

impl ChatArgs {
    /// Members in all (rooms times members per room).
    pub fn connections(&self) -> u64 {
        self.rooms.saturating_mul(self.members)
    }

    /// Messages per second per member: --rate, or --total-rate spread over the members.
    pub fn rate_per_member(&self) -> f64 {
        match self.total_rate {
            Some(t) => t / self.connections().max(1) as f64,
            None => self.rate,
        }
    }
}

/// Flags of `capacity`: a ramp of connection steps with a push probe per step.
#[derive(Args, Debug, Clone)]
pub struct CapacityArgs {
    /// WebSocket URL of the server: ws:// or wss:// (TLS; port 443 unless given, trust
    /// from --ca or --insecure).
    #[arg(long, default_value = "ws://127.0.0.1:8700/ws")]
    pub url: String,
    /// HS256 secret for the tokens.
    #[arg(long, env = "THRONG_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// How the connections are opened and closed.
    #[command(flatten)]
    pub sock: SocketArgs,
    /// Sessions per user: connection i is user u{offset + i / sessions_per_user}.
    #[arg(long, default_value_t = 1)]
    pub sessions_per_user: u64,
    /// First user number.
    #[arg(long, default_value_t = 0)]
    pub user_offset: u64,
    /// Worker processes over disjoint user ranges; --source-ips are shared evenly by all.
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Server process to measure RSS of (and kernel TCP and slab memory) per step.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Push API base URL for the probes: http://, or https:// (trust from --ca or --insecure).
    #[arg(long, default_value = "http://127.0.0.1:8701")]
    pub api: String,
    /// Push API key.
    #[arg(long, env = "THRONG_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Connections to reach in all.
    #[arg(long)]
    pub target: u64,
    /// Connections added per step.
    #[arg(long, default_value_t = 1000)]
    pub step: u64,
    /// Direct pushes per second to connected users during each step's probe; 0 = no probe.
    /// Each probe carries on over the users connected at its step from where the last
    /// one ended; one whose pushes are given up, never sent or none accepted stops the
    /// ramp and fails the run.
    #[arg(long, default_value_t = 200.0)]
    pub probe_rate: f64,
    /// How long each step's probe pushes.
    #[arg(long, default_value_t = 2.0)]
    pub probe_secs: f64,
    /// Seconds to wait after a step's connections before measuring memory.
    #[arg(long, default_value_t = 1.0)]
    pub settle_secs: f64,
    /// Overall bound on the ramp.
    #[arg(long, default_value_t = 600.0)]
    pub max_secs: f64,
    /// Draw latency and memory per connection against connections into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Internal: run as a worker of a --procs parent (commands on stdin, results on stdout).
    #[arg(long, hide = true)]
    pub worker: bool,
}

impl CapacityArgs {
    /// The connection flags in the shape the shared drivers take.
    pub fn connect_args(&self) -> ConnectArgs {
        ConnectArgs {
            url: self.url.clone(),
            connections: self.target,
            sock: self.sock.clone(),
            jwt_secret: self.jwt_secret.clone(),
            sessions_per_user: self.sessions_per_user,
            user_offset: self.user_offset,
            topics: Vec::new(),
            claim_topics: Vec::new(),
            hold_secs: Some(0.0),
            settle_secs: self.settle_secs,
            json: self.json.clone(),
            server_pid: self.server_pid,
            procs: self.procs,
            worker: self.worker,
        }
    }

    /// The probe as a push run: direct pushes to users at the probe rate.
    pub fn push_args(&self) -> PushArgs {
        PushArgs {
            conn: self.connect_args(),
            api: self.api.clone(),
            api_key: self.api_key.clone(),
            redis_stream: None,
            redis_ca: None,
            redis_client_cert: None,
            redis_client_key: None,
            kafka: None,
            kafka_topic: "throng.push".into(),
            rate: self.probe_rate,
            duration_secs: self.probe_secs,
            count: None,
            target: Target::User,
            payload_bytes: 64,
            payload_json: false,
            batch: 1,
            api_concurrency: 4,
            users_per_push: 1,
            // A probe's deliveries should arrive within this; longer means they are lost.
            drain_secs: 5.0,
            push_ids: false,
        }
    }
}

/// A duration from seconds given on the command line (negative or NaN is zero).
pub fn secs(x: f64) -> Duration {
    if x.is_nan() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(x.clamp(0.0, 1e7))
}

/// The smallest rate above 0 a run accepts (per second, in all): slower paces put
/// connection, push and churn deadlines past what a `Duration` or `Instant` can hold.
pub const MIN_RATE: f64 = 0.001;

/// The largest push request body (payload and JSON framing times --batch) we build; the
/// server itself takes 1 MiB, so this leaves room to test its refusal.
const MAX_BODY_BYTES: u128 = 64 * 1024 * 1024;

/// The most API connections (threads) per process; the server accepts 4096 in all.
const MAX_API_CONCURRENCY: usize = 4096;

/// The longest token lifetime (100 years); `exp` is now plus this.
const MAX_TOKEN_TTL_SECS: u64 = 100 * 365 * 24 * 3600;

/// Checks a seconds flag: any number (negative is zero), but not NaN.
fn check_secs(flag: &str, x: f64) -> Result<(), String> {
    if x.is_nan() {
        return Err(format!("{flag} must be a number of seconds (got NaN)"));
    }
    Ok(())
}

/// Checks that a rate already known to be a number, not negative, is 0 or at least
/// [`MIN_RATE`]. Workers get shares of the parent's rate, which may be smaller.
fn check_min_rate(flag: &str, x: f64, worker: bool) -> Result<(), String> {
    if !worker && x > 0.0 && x < MIN_RATE {
        return Err(format!(
            "{flag} must be 0 or at least {MIN_RATE} per second (got {x})"
        ));
    }
    Ok(())
}

/// Checks the flags every subcommand shares, and the push flags when given.
pub fn validate(c: &ConnectArgs, p: Option<&PushArgs>) -> Result<(), String> {
    if c.sessions_per_user == 0 {
        return Err("--sessions-per-user must be at least 1".into());
    }
    if c.connections > u32::MAX as u64 {
        return Err("--connections too large".into());
    }
    if c.connections == 0 && !c.worker {
        // Nothing to measure: connect would hold nothing, push would push to nobody.
        return Err("--connections must be at least 1".into());
    }
    if c.procs == 0 || c.procs > 64 {
        return Err("--procs must be 1 to 64".into());
    }
    c.sock.validate(c.worker)?;
    let users = c.connections.div_ceil(c.sessions_per_user);
    if !c.worker && c.procs > 1 && users < c.procs as u64 {
        return Err(format!(
            "--procs {} needs at least {} users, but {} connections at {} per user \
             (--sessions-per-user) make {users}",
            c.procs, c.procs, c.connections, c.sessions_per_user
        ));
    }
    if c.user_offset.checked_add(users).is_none() {
        return Err("--user-offset too large".into());
    }
    if let Some(h) = c.hold_secs {
        check_secs("--hold-secs", h)?;
    }
    check_secs("--settle-secs", c.settle_secs)?;
    let urls = c.sock.check_urls("--url", &c.url)?;
    if !c.worker {
        // Once, in the parent: the workers get shares of the same list.
        crate::sources::check(c.sock.source_ips.as_deref(), "--url", &urls, c.connections)?;
    }
    if let Some(p) = p {
        if !(p.rate >= 0.0 && p.rate.is_finite()) {
            return Err(format!(
                "--rate must be a number of pushes per second, not negative (got {})",
                p.rate
            ));
        }
        check_min_rate("--rate", p.rate, c.worker)?;
        check_secs("--duration-secs", p.duration_secs)?;
        check_secs("--drain-secs", p.drain_secs)?;
        if p.target == Target::Topic && c.topics.is_empty() {
            return Err("--target topic needs --topics".into());
        }
        if p.count.is_none() && p.duration_secs <= 0.0 {
            return Err("give --duration-secs or --count".into());
        }
        check_api("--api", &p.api, &c.sock.tls)?;
        if let Some(r) = &p.redis_stream {
            check_redis_url(r)?;
        }
        if let Some(ca) = &p.redis_ca {
            check_redis_ca(p.redis_stream.as_deref().unwrap_or_default(), ca)?;
        }
        if let (Some(cert), Some(key)) = (&p.redis_client_cert, &p.redis_client_key) {
            if !p
                .redis_stream
                .as_deref()
                .unwrap_or_default()
                .starts_with("rediss://")
            {
                return Err("--redis-client-cert: only a rediss:// --redis-stream uses TLS".into());
            }
            let flags = ["--redis-client-cert", "--redis-client-key"];
            crate::tls::config::ClientIdentity::load_for(flags, cert, key)
                .map_err(|e| e.to_string())?;
        }
        if let Some(k) = &p.kafka {
            check_kafka_brokers(k)?;
            check_kafka_topic(&p.kafka_topic)?;
            // Each (driver thread, topic) is a numbered stream of its own (push::kafka).
            let streams = p.api_concurrency.saturating_mul(c.topics.len());
            if p.target == Target::Topic && streams > crate::track::MAX_STREAMS {
                return Err(format!(
                    "--api-concurrency {} times {} --topics is more than the {} numbered \
                     streams a receiver tells apart with --kafka",
                    p.api_concurrency,
                    c.topics.len(),
                    crate::track::MAX_STREAMS
                ));
            }
        }
        if p.batch == 0 || p.api_concurrency == 0 {
            return Err("--batch and --api-concurrency must be at least 1".into());
        }
        if p.api_concurrency > MAX_API_CONCURRENCY {
            return Err(format!(
                "--api-concurrency must be at most {MAX_API_CONCURRENCY}"
            ));
        }
        let body = (p.payload_bytes as u128 + 96) * p.batch as u128;
        if body > MAX_BODY_BYTES {
            return Err(format!(
                "--payload-bytes {} with --batch {} makes request bodies of about {body} \
                 bytes; at most {MAX_BODY_BYTES} (the server takes 1 MiB)",
                p.payload_bytes, p.batch
            ));
        }
    }
    if !c.worker {
        // Once, in the parent, with the whole run: a worker's own check could only
        // suggest the --procs it was given.
        let api = p.map_or(0, |p| p.api_concurrency as u64);
        crate::local::check_nofile_procs(
            c.connections,
            c.procs,
            api,
            |k| {
                let split = crate::worker::split_users(c.connections, c.sessions_per_user, 0, k);
                split.iter().map(|s| s.0).max().unwrap_or(0)
            },
            |k, conns| c.sock.threads_of(k, conns) as u64,
        )?;
    }
    Ok(())
}

/// Checks `--redis-stream`: a redis:// URL the client library takes (not connected yet).
fn check_redis_url(s: &str) -> Result<(), String> {
    if !s.starts_with("redis://") && !s.starts_with("rediss://") {
        return Err(format!(
            "--redis-stream: {s:?}: expected a redis://host:port[/db] (or rediss://) URL"
        ));
    }
    redis::Client::open(s)
        .map(drop)
        .map_err(|e| format!("--redis-stream: {s:?}: {e}").replace('\n', " "))
}

/// Checks `--redis-ca`: a readable PEM file with a certificate, for a rediss:// URL.
fn check_redis_ca(url: &str, ca: &std::path::Path) -> Result<(), String> {
    if !url.starts_with("rediss://") {
        return Err("--redis-ca: only a rediss:// --redis-stream uses TLS".into());
    }
    // The check --ca has for wss://: a file rustls can take roots from.
    crate::tls::config::load_roots_for("--redis-ca", ca)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Checks `--kafka`: one or more host:port, comma separated (not connected yet).
fn check_kafka_brokers(list: &str) -> Result<(), String> {
    let host_port = |b: &str| {
        b.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
    };
    match list.split(',').map(str::trim).find(|b| !host_port(b)) {
        Some(b) => Err(format!(
            "--kafka: {b:?} is not host:port (give host:port[,host:port])"
        )),
        None => Ok(()),
    }
}

/// Checks `--kafka-topic`: a name Kafka takes (1 to 249 of `A-Za-z0-9._-`, not `.` or
/// `..`), which is also what keeps it free of the NUL librdkafka cannot take.
fn check_kafka_topic(t: &str) -> Result<(), String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if t.is_empty() || t.len() > 249 || t == "." || t == ".." || !t.chars().all(legal) {
        return Err(format!(
            "--kafka-topic: {t:?} is not a Kafka topic name (1 to 249 of A-Za-z0-9._-)"
        ));
    }
    Ok(())
}

/// Checks the churn flags.
pub fn validate_churn(ch: &ChurnArgs) -> Result<(), String> {
    if !(ch.churn_rate >= 0.0 && ch.churn_rate.is_finite()) {
        return Err(format!(
            "--churn-rate must be a number of cycles per second, not negative (got {})",
            ch.churn_rate
        ));
    }
    check_min_rate("--churn-rate", ch.churn_rate, ch.push.conn.worker)?;
    if !(ch.churn_fraction > 0.0 && ch.churn_fraction <= 1.0) {
        return Err(format!(
            "--churn-fraction must be above 0 and at most 1 (got {})",
            ch.churn_fraction
        ));
    }
    Ok(())
}

/// Checks what `resume` and `deploy` share: one process, user pushes through the API,
/// a topic rate.
fn validate_streams(p: &PushArgs, topic_rate: f64) -> Result<(), String> {
    if p.kafka.is_some() {
        return Err("--kafka is for push and churn; resume and deploy push through the API".into());
    }
    if p.conn.procs != 1 || p.conn.worker {
        return Err(
            "--procs must be 1 for resume and deploy: every connection's streams are \
             tracked in one process (10,000 connections fit in one)"
                .into(),
        );
    }
    if p.target != Target::User {
        return Err(format!(
            "--target {} does not apply: resume and deploy push to users, and to --topics \
             at --topic-rate",
            p.target.name()
        ));
    }
    if !(topic_rate >= 0.0 && topic_rate.is_finite()) {
        return Err(format!(
            "--topic-rate must be a number of pushes per second, not negative (got {topic_rate})"
        ));
    }
    check_min_rate("--topic-rate", topic_rate, false)?;
    if p.count.is_some() && p.duration_secs <= 0.0 && topic_rate > 0.0 && !p.conn.topics.is_empty()
    {
        return Err("--topic-rate needs --duration-secs (the topic pushes run for it)".into());
    }
    Ok(())
}

/// Checks the resume flags.
pub fn validate_resume(a: &ResumeArgs) -> Result<(), String> {
    validate_churn(&a.churn)?;
    if a.offline_ms > MAX_PAUSE_MS {
        return Err(format!(
            "--offline-ms must be at most {MAX_PAUSE_MS} (got {})",
            a.offline_ms
        ));
    }
    validate(&a.churn.push.conn, Some(&a.churn.push))?;
    validate_streams(&a.churn.push, a.topic_rate)
}

/// The longest jitter (deploy) or offline time (resume) a client may take (a minute).
const MAX_PAUSE_MS: u64 = 60_000;

/// Checks the deploy flags.
pub fn validate_deploy(a: &DeployArgs) -> Result<(), String> {
    validate(&a.push.conn, Some(&a.push))?;
    validate_streams(&a.push, a.topic_rate)?;
    let sock = &a.push.conn.sock;
    if a.reconnect_url.contains(',') {
        return Err("--reconnect-url: one URL, not a list".into());
    }
    let second = sock.check_urls("--reconnect-url", &a.reconnect_url)?;
    // Every client moves there from the same source address.
    let n = a.push.conn.connections;
    crate::sources::check(sock.source_ips.as_deref(), "--reconnect-url", &second, n)?;
    check_api("--reconnect-api", &a.reconnect_api, &sock.tls)?;
    if a.jitter_ms > MAX_PAUSE_MS {
        return Err(format!(
            "--jitter-ms must be at most {MAX_PAUSE_MS} (got {})",
            a.jitter_ms
        ));
    }
    check_secs("--move-timeout-secs", a.move_timeout_secs)?;
    Ok(())
}

/// The most publishes one chat run may plan: each accepted one is remembered until the
/// end (some 100 bytes with its receipts), so this bounds the load generator's memory.
pub const MAX_CHAT_PUBLISHES: u64 = 20_000_000;

/// The longest `pad` of a chat message (the server refuses large ones with `too_large`,
/// which a run may want to see; beyond this it only costs memory).
const MAX_CHAT_PAYLOAD: usize = 16 << 20;

/// Checks the chat flags.
pub fn validate_chat(a: &ChatArgs) -> Result<(), String> {
    if a.rooms == 0 || a.members == 0 {
        return Err("--rooms and --members must be at least 1".into());
    }
    let n = a
        .rooms
        .checked_mul(a.members)
        .filter(|&n| n <= u32::MAX as u64);
    let Some(n) = n else {
        return Err("--rooms times --members is too large".into());
    };
    if a.procs == 0 || a.procs > 64 {
        return Err("--procs must be 1 to 64".into());
    }
    if !a.worker && a.procs as u64 > a.rooms {
        return Err(format!(
            "--procs {} needs at least as many --rooms (each worker takes whole rooms), got {}",
            a.procs, a.rooms
        ));
    }
    if a.user_offset.checked_add(n).is_none() {
        return Err("--user-offset too large".into());
    }
    let end = a
        .room_offset
        .checked_add(a.rooms)
        .ok_or("--room-offset too large")?;
    check_room_prefix(&a.room_prefix, end - 1)?;
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        return Err(format!(
            "--rate must be a number of messages per second above 0 (got {})",
            a.rate
        ));
    }
    check_min_rate("--rate", a.rate, a.worker)?;
    if let Some(t) = a.total_rate {
        if !(t > 0.0 && t.is_finite()) {
            return Err(format!(
                "--total-rate must be a number of messages per second above 0 (got {t})"
            ));
        }
        if a.rate_per_member() < MIN_RATE {
            return Err(format!(
                "--total-rate {t} over {n} members is below {MIN_RATE} per member"
            ));
        }
    }
    check_secs("--duration-secs", a.duration_secs)?;
    check_secs("--drain-secs", a.drain_secs)?;
    if a.count.is_none() && a.duration_secs <= 0.0 {
        return Err("give --duration-secs or --count".into());
    }
    let per_member = (a.duration_secs.max(0.0) * a.rate_per_member()).ceil();
    let by_time = if a.duration_secs > 0.0 {
        per_member * n as f64
    } else {
        f64::INFINITY
    };
    let planned = by_time.min(a.count.map_or(f64::INFINITY, |c| c as f64));
    if planned > MAX_CHAT_PUBLISHES as f64 {
        return Err(format!(
            "--duration-secs, --rate and --count plan about {planned:.0} publishes; at most \
             {MAX_CHAT_PUBLISHES} (each is remembered until the end), so lower one of them"
        ));
    }
    if a.payload_bytes > MAX_CHAT_PAYLOAD {
        return Err(format!(
            "--payload-bytes must be at most {MAX_CHAT_PAYLOAD}"
        ));
    }
    a.sock.validate(a.worker)?;
    let urls = a.sock.check_urls("--url", &a.url)?;
    if !a.worker {
        crate::sources::check(a.sock.source_ips.as_deref(), "--url", &urls, n)?;
        // Each worker takes whole rooms.
        crate::local::check_nofile_procs(
            n,
            a.procs,
            0,
            |k| a.rooms.div_ceil(k as u64) * a.members,
            // A chat process's loops are per room.
            |k, _| a.sock.threads_of(k, a.rooms.div_ceil(k as u64)) as u64,
        )?;
    }
    Ok(())
}

/// Checks `--room-prefix`: with the largest room number, `last_room`, it must make a topic name the
/// server takes (1 to 200 bytes of `!` to `~`, no `*`, PROTOCOL.md 2.3).
fn check_room_prefix(prefix: &str, last_room: u64) -> Result<(), String> {
    if let Some(b) = prefix
        .bytes()
        .find(|b| !(b'!'..=b'~').contains(b) || *b == b'*')
    {
        return Err(format!(
            "--room-prefix {prefix:?}: {:?} is not allowed in a topic name (printable ASCII \
             without spaces or `*`)",
            b as char
        ));
    }
    if prefix.len() + last_room.to_string().len() > 200 {
        return Err(format!(
            "--room-prefix {prefix:?}: topic names would pass 200 bytes"
        ));
    }
    Ok(())
}

/// Checks the capacity flags.
pub fn validate_capacity(a: &CapacityArgs) -> Result<(), String> {
    if a.target == 0 {
        return Err("--target must be at least 1 connection".into());
    }
    if a.step == 0 {
        return Err("--step must be at least 1 connection".into());
    }
    if !(a.probe_rate >= 0.0 && a.probe_rate.is_finite()) {
        return Err(format!(
            "--probe-rate must not be negative (got {})",
            a.probe_rate
        ));
    }
    check_min_rate("--probe-rate", a.probe_rate, a.worker)?;
    check_secs("--probe-secs", a.probe_secs)?;
    if a.probe_rate > 0.0 && a.probe_secs <= 0.0 {
        return Err("--probe-secs must be above 0 when --probe-rate is above 0".into());
    }
    if a.max_secs.is_nan() || a.max_secs <= 0.0 {
        return Err(format!("--max-secs must be above 0 (got {})", a.max_secs));
    }
    if a.settle_secs.is_nan() || a.settle_secs < 0.0 {
        return Err("--settle-secs must not be negative".into());
    }
    check_api("--api", &a.api, &a.sock.tls)?;
    Ok(())
}

/// Checks a push API URL (`flag`): http://, or https:// with something to trust.
fn check_api(flag: &str, api: &str, tls: &TlsArgs) -> Result<(), String> {
    let url = crate::util::parse_api_url(api).map_err(|e| format!("{flag}: {e}"))?;
    tls.check(flag, &[url])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a command line and runs the checks `main` runs before any connection.
    fn check(args: &[&str]) -> Result<(), String> {
        let mut v = vec!["throng-load"];
        v.extend_from_slice(args);
        v.extend_from_slice(&["--jwt-secret", "s"]);
        let cli = Cli::try_parse_from(v).map_err(|e| e.to_string())?;
        match &cli.cmd {
            Cmd::Connect(c) => validate(c, None),
            Cmd::Push(p) => validate(&p.conn, Some(p)),
            Cmd::Churn(ch) => {
                validate_churn(ch)?;
                validate(&ch.push.conn, Some(&ch.push))
            }
            Cmd::Capacity(a) => {
                validate_capacity(a)?;
                validate(&a.connect_args(), None)
            }
            Cmd::Resume(a) => validate_resume(a),
            Cmd::Deploy(a) => validate_deploy(a),
            Cmd::Chat(a) => validate_chat(a),
            Cmd::Floor(a) => validate_floor(a),
        }
    }

    #[test]
    fn chat_flags_are_checked() {
        check(&["chat"]).unwrap();
        check(&["chat", "--rooms", "3", "--members", "4", "--procs", "3"]).unwrap();
        check(&[
            "chat",
            "--total-rate",
            "50",
            "--duration-secs",
            "0",
            "--count",
            "9",
        ])
        .unwrap();
        check(&["chat", "--room-prefix", "a/b:"]).unwrap();
        err(&["chat", "--rooms", "0"], "--rooms");
        err(&["chat", "--members", "0"], "--members");
        err(
            &["chat", "--rooms", "100000", "--members", "100000"],
            "--rooms",
        );
        err(&["chat", "--rooms", "2", "--procs", "3"], "--procs");
        err(&["chat", "--rate", "0"], "--rate");
        err(&["chat", "--rate", "nan"], "--rate");
        err(&["chat", "--rate=-1"], "--rate");
        err(&["chat", "--rate", "1e-30"], "--rate");
        err(&["chat", "--total-rate", "inf"], "--total-rate");
        err(
            &["chat", "--rooms", "1000", "--total-rate", "0.01"],
            "--total-rate",
        );
        // --rate has a default, so only an explicit --rate conflicts.
        assert!(check(&["chat", "--rate", "2", "--total-rate", "5"]).is_err());
        err(&["chat", "--duration-secs", "0"], "--duration-secs");
        err(&["chat", "--duration-secs", "nan"], "--duration-secs");
        err(&["chat", "--drain-secs", "nan"], "--drain-secs");
        err(
            &["chat", "--rate", "1000", "--duration-secs", "100000"],
            "--duration-secs",
        );
        err(&["chat", "--room-prefix", "room *"], "--room-prefix");
        err(&["chat", "--room-prefix", "r*"], "--room-prefix");
        check(&["chat", "--room-prefix", &"x".repeat(199)]).unwrap(); // room:9 is 200 bytes
        err(
            &["chat", "--room-prefix", &"x".repeat(200)],
            "--room-prefix",
        );
        err(
            &["chat", "--room-offset", &u64::MAX.to_string()],
            "--room-offset",
        );
        err(
            &["chat", "--user-offset", &u64::MAX.to_string()],
            "--user-offset",
        );
        err(&["chat", "--payload-bytes", "999999999"], "--payload-bytes");
        err(&["chat", "--source-ips", "x"], "--source-ips");
        err(&["chat", "--url", "http://127.0.0.1:1/ws"], "--url");
    }

    /// A `deploy` command line with its required flags.
    const DEPLOY: [&str; 5] = [
        "deploy",
        "--reconnect-url",
        "ws://127.0.0.1:9/ws",
        "--reconnect-api",
        "http://127.0.0.1:10",
    ];

    #[test]
    fn resume_and_deploy_flags_are_checked() {
        check(&["resume", "--topics", "a,b", "--topic-rate", "5"]).unwrap();
        let d = DEPLOY;
        check(&d).unwrap();
        err(&["resume", "--procs", "2"], "--procs");
        err(&["resume", "--kafka", "h:1"], "--kafka");
        err(
            &["resume", "--target", "topic", "--topics", "a"],
            "--target",
        );
        err(&["resume", "--topic-rate", "nan"], "--topic-rate");
        err(&["resume", "--churn-fraction", "0"], "--churn-fraction");
        err(&["resume", "--offline-ms", "99999999"], "--offline-ms");
        let mut bad = d.to_vec();
        bad[2] = "http://x/ws";
        err(&bad, "--reconnect-url");
        let mut j = d.to_vec();
        j.extend(["--jitter-ms", "99999999"]);
        err(&j, "--jitter-ms");
    }

    #[test]
    fn client_certificate_flags_come_in_pairs_and_name_a_bad_file() {
        let e = check(&["push", "--client-cert", "c.pem"]).unwrap_err();
        assert!(e.contains("--client-key"), "{e}");
        err(
            &[
                "push",
                "--client-cert",
                "/nonexistent/c.pem",
                "--client-key",
                "/nonexistent/k.pem",
            ],
            "--client-cert /nonexistent/c.pem",
        );
    }

    fn err(args: &[&str], flag: &str) {
        match check(args) {
            Ok(()) => panic!("{args:?} was accepted"),
            Err(e) => {
                assert!(e.contains(flag), "{args:?}: {e:?} does not name {flag}");
                assert!(!e.contains('\n'), "{args:?}: not one line: {e:?}");
            }
        }
    }

    #[test]
    fn redis_stream_kafka_and_url_lists_are_checked() {
        check(&["push", "--redis-stream", "redis://127.0.0.1:6379"]).unwrap();
        check(&[
            "push",
            "--redis-stream",
            "redis://127.0.0.1:6379/2",
            "--batch",
            "50",
        ])
        .unwrap();
        err(
            &["push", "--redis-stream", "http://127.0.0.1:6379"],
            "--redis-stream",
        );
        err(&["push", "--redis-stream", "redis://"], "--redis-stream");
        err(
            &["push", "--redis-stream", "redis://h:notaport"],
            "--redis-stream",
        );
        check(&["push", "--redis-stream", "rediss://redis.example:6380"]).unwrap();
        // --redis-ca: a PEM file, for rediss:// only.
        let dir = std::env::temp_dir().join(format!("throng-load-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (pem, other) = (dir.join("ca.pem"), dir.join("other.txt"));
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&pem, cert.cert.pem()).unwrap();
        std::fs::write(&other, "not a certificate").unwrap();
        let (pem, other) = (pem.to_str().unwrap(), other.to_str().unwrap());
        check(&[
            "push",
            "--redis-stream",
            "rediss://h:6380",
            "--redis-ca",
            pem,
        ])
        .unwrap();
        for (url, ca) in [
            ("redis://h:6379", pem),
            ("rediss://h:6380", other),
            ("rediss://h:6380", "/no/ca.pem"),
        ] {
            err(
                &["push", "--redis-stream", url, "--redis-ca", ca],
                "--redis-ca",
            );
        }
        // --redis-client-cert and --redis-client-key: a pair, for rediss:// only.
        let key = dir.join("key.pem");
        std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
        let key = key.to_str().unwrap();
        fn mtls<'a>(url: &'a str, cert: &'a str, key: &'a str) -> Vec<&'a str> {
            let flags = ["--redis-client-cert", cert, "--redis-client-key", key];
            let mut v = vec!["push", "--redis-stream", url];
            v.extend(flags);
            v
        }
        check(&mtls("rediss://h:6380", pem, key)).unwrap();
        err(&mtls("redis://h:6379", pem, key), "--redis-client-cert");
        err(&mtls("rediss://h:6380", other, key), "--redis-client-cert");
        err(&mtls("rediss://h:6380", pem, other), "--redis-client-key");
        let e = check(&[
            "push",
            "--redis-stream",
            "rediss://h",
            "--redis-client-cert",
            pem,
        ]);
        assert!(e.unwrap_err().contains("--redis-client-key"));
        std::fs::remove_dir_all(&dir).unwrap();
        check(&["push", "--kafka", "127.0.0.1:9092,broker:9093"]).unwrap();
        check(&["push", "--kafka", "h:1", "--kafka-topic", "a.b_c-1"]).unwrap();
        err(&["push", "--kafka", "127.0.0.1"], "--kafka");
        err(&["push", "--kafka", "h:1,h:0"], "--kafka");
        err(&["push", "--kafka", "h:1,"], "--kafka");
        err(
            &["push", "--kafka", "h:1", "--kafka-topic", "a b"],
            "--kafka-topic",
        );
        err(
            &["push", "--kafka", "h:1", "--kafka-topic", ".."],
            "--kafka-topic",
        );
        err(
            &["push", "--kafka", "h:1", "--kafka-topic", ""],
            "--kafka-topic",
        );
        let many = [
            "push",
            "--kafka",
            "h:1",
            "--target",
            "topic",
            "--topics",
            "a,b",
            "--api-concurrency",
            "3000",
        ];
        err(&many, "--api-concurrency");
        let r = "redis://127.0.0.1:6379";
        assert!(check(&["push", "--kafka", "h:1", "--redis-stream", r]).is_err());
        let two = "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws";
        check(&["push", "--url", two]).unwrap();
        assert!(crate::util::parse_ws_urls(two).is_ok());
        assert!(crate::util::parse_ws_urls("ws://127.0.0.1:1/ws,").is_err());
    }

    #[test]
    fn wss_needs_something_to_trust() {
        let wss = "wss://127.0.0.1:1/ws";
        for cmd in [
            vec!["connect", "--url", wss],
            vec!["push", "--url", wss],
            vec!["churn", "--url", wss],
            vec!["capacity", "--target", "5", "--url", wss],
            vec!["resume", "--url", wss],
            vec!["chat", "--url", wss],
            vec![
                "connect",
                "--url",
                "ws://127.0.0.1:1/ws,wss://127.0.0.1:2/ws",
            ],
        ] {
            err(&cmd, "--url");
            let e = check(&cmd).unwrap_err();
            assert!(e.contains("--ca") && e.contains("--insecure"), "{e}");
        }
        let deploy = [
            "deploy",
            "--reconnect-url",
            wss,
            "--reconnect-api",
            "http://127.0.0.1:10",
        ];
        err(&deploy, "--reconnect-url");
        let mut d = deploy.to_vec();
        d.push("--insecure");
        check(&d).unwrap();
        d[2] = "wss://127.0.0.1:1/ws,wss://127.0.0.1:2/ws";
        err(&d, "--reconnect-url");
        check(&["connect", "--url", wss, "--insecure"]).unwrap();
        check(&["chat", "--url", wss, "--insecure", "--tls-resume", "off"]).unwrap();
        check(&["connect", "--url", "wss://localhost/ws", "--insecure"]).unwrap();
        err(
            &["connect", "--url", wss, "--ca", "/no/such/ca.pem"],
            "--ca",
        );
        // One or the other.
        assert!(check(&["connect", "--url", wss, "--insecure", "--ca", "x.pem"]).is_err());
        assert!(check(&["connect", "--tls-resume", "maybe"]).is_err());
        err(&["connect", "--url", "https://127.0.0.1/ws"], "--url");
    }

    #[test]
    fn compression_is_a_flag_of_every_scenario_with_connections() {
        let d = DEPLOY;
        for cmd in [
            vec!["connect"],
            vec!["push"],
            vec!["churn"],
            vec!["capacity", "--target", "5"],
            vec!["resume"],
            d.to_vec(),
            vec!["chat"],
        ] {
            let mut v = vec!["throng-load"];
            v.extend_from_slice(&cmd);
            v.extend_from_slice(&["--jwt-secret", "s", "--compression"]);
            let cli = Cli::try_parse_from(&v).unwrap_or_else(|e| panic!("{v:?}: {e}"));
            let sock = match &cli.cmd {
                Cmd::Connect(c) => &c.sock,
                Cmd::Push(p) => &p.conn.sock,
                Cmd::Churn(ch) => &ch.push.conn.sock,
                Cmd::Capacity(a) => &a.sock,
                Cmd::Resume(a) => &a.churn.push.conn.sock,
                Cmd::Deploy(a) => &a.push.conn.sock,
                Cmd::Chat(a) => &a.sock,
                Cmd::Floor(_) => unreachable!("floor opens no WebSocket connection"),
            };
            assert!(sock.compression, "{v:?}");
            check(&[&cmd[..], &["--compression"]].concat()).unwrap();
        }
        let cli = Cli::try_parse_from(["throng-load", "connect", "--jwt-secret", "s"]).unwrap();
        let Cmd::Connect(c) = cli.cmd else {
            unreachable!()
        };
        assert!(!c.sock.compression, "off unless asked");
        check(&["push", "--payload-json", "--payload-bytes", "2000"]).unwrap();
        check(&["churn", "--payload-json"]).unwrap();
    }

    #[test]
    fn good_lines_pass() {
        check(&["connect"]).unwrap();
        check(&["push", "--rate", "0", "--procs", "4"]).unwrap();
        check(&["churn", "--churn-rate", "0"]).unwrap();
        check(&["capacity", "--target", "10", "--procs", "2"]).unwrap();
        // A worker's share of a slow rate is below the minimum, and must still run.
        check(&["push", "--rate", "0.0001", "--worker"]).unwrap();
        check(&[
            "capacity",
            "--target",
            "1",
            "--probe-rate",
            "0.0002",
            "--worker",
        ])
        .unwrap();
    }

    #[test]
    fn negative_nan_and_tiny_push_rates_are_refused() {
        err(&["push", "--rate=-5"], "--rate");
        err(&["push", "--rate", "NaN"], "--rate");
        err(&["push", "--rate", "inf"], "--rate");
        err(&["push", "--rate", "1e-30"], "--rate");
        err(&["connect", "--connect-rate", "1e-30"], "--connect-rate");
        err(&["churn", "--churn-rate", "1e-30"], "--churn-rate");
        err(
            &["capacity", "--target", "5", "--probe-rate", "1e-30"],
            "--probe-rate",
        );
    }

    #[test]
    fn nan_seconds_are_refused_not_a_panic() {
        err(&["connect", "--hold-secs", "nan"], "--hold-secs");
        err(&["connect", "--settle-secs", "nan"], "--settle-secs");
        err(
            &["connect", "--handshake-timeout-secs", "nan"],
            "--handshake-timeout-secs",
        );
        err(
            &["connect", "--close-timeout-secs", "nan"],
            "--close-timeout-secs",
        );
        err(&["push", "--duration-secs", "nan"], "--duration-secs");
        err(&["push", "--drain-secs", "nan"], "--drain-secs");
        err(
            &["capacity", "--target", "5", "--probe-secs", "nan"],
            "--probe-secs",
        );
        err(
            &["capacity", "--target", "5", "--settle-secs", "nan"],
            "--settle-secs",
        );
        assert_eq!(secs(f64::NAN), Duration::ZERO);
        assert_eq!(secs(-3.0), Duration::ZERO);
    }

    #[test]
    fn more_procs_than_users_is_refused() {
        err(
            &["connect", "--connections", "3", "--procs", "4"],
            "--procs",
        );
        err(
            &[
                "connect",
                "--connections",
                "10",
                "--sessions-per-user",
                "10",
                "--procs",
                "2",
            ],
            "--procs",
        );
        // A capacity worker with no users used to fail its own --target check.
        err(&["capacity", "--target", "1", "--procs", "2"], "--procs");
        check(&["connect", "--connections", "4", "--procs", "4"]).unwrap();
    }

    #[test]
    fn sizes_that_overflow_are_refused() {
        err(
            &["push", "--payload-bytes", &usize::MAX.to_string()],
            "--payload-bytes",
        );
        err(
            &["push", "--batch", "1000000", "--payload-bytes", "1000"],
            "--batch",
        );
        err(
            &["push", "--api-concurrency", "1000000"],
            "--api-concurrency",
        );
        err(
            &["connect", "--token-ttl-secs", &u64::MAX.to_string()],
            "--token-ttl-secs",
        );
        err(
            &["connect", "--user-offset", &u64::MAX.to_string()],
            "--user-offset",
        );
        err(&["connect", "--procs", "0"], "--procs");
        err(&["capacity", "--target", "5", "--step", "0"], "--step");
    }
}
