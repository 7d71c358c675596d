//! Push driver: paced pushes from a few threads, as HTTP/1.1 keep-alive requests to the
//! push API (over TLS with an https:// `--api`), with `--redis-stream` as pipelined `XADD`s to the cluster's push stream, or
//! with `--kafka` as records on the Kafka ingress's topic ([`kafka`]).

mod doc;
mod kafka;

use crate::client::{merge_counts, Shared, Target};
use crate::track::Numbers;
use crate::util::{self, Url};
use hdrhistogram::Histogram;
use kafka::KafkaSink;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The push API: its URL, and with an https:// one the TLS configuration to reach it.
#[derive(Debug, Clone)]
pub struct ApiTarget {
    pub url: Url,
    /// Its own configuration (no session store: the WebSocket connections' tickets are
    /// for another listener); `Some` exactly when `url` is https://.
    pub tls: Option<crate::tls::config::TlsDial>,
}

impl ApiTarget {
    /// `--api` (http:// or https://), trusting what `tls` says for https:// (`--ca` or
    /// `--insecure`, which https:// needs) and showing its `--client-cert`, if any.
    pub fn from_flags(api: &str, tls: &crate::cli::TlsArgs) -> Result<ApiTarget, String> {
        let url = util::parse_api_url(api)?;
        let tls = if url.tls {
            let trust = tls
                .trust()
                .ok_or_else(|| crate::tls::config::TlsError::NoTrust.to_string())?;
            crate::tls::config::server_name(&url.host).map_err(|e| e.to_string())?;
            let identity = tls.identity()?;
            let dial = crate::tls::config::TlsDial::new(&trust, None, identity.as_ref());
            Some(dial.map_err(|e| e.to_string())?)
        } else {
            None
        };
        Ok(ApiTarget { url, tls })
    }

    /// A plain http:// target (tests).
    #[cfg(test)]
    pub fn plain(url: Url) -> ApiTarget {
        ApiTarget { url, tls: None }
    }
}

/// Which way the driver hands its pushes to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// `POST /v1/push` (or `/v1/push/batch`) on the push API.
    Api,
    /// `XADD` to the cluster's push stream `throng:push` at this Redis URL, verified
    /// against `ca` (a PEM file) over rediss://.
    RedisStream {
        url: String,
        ca: Option<std::path::PathBuf>,
        /// The client certificate and key files, for a Redis that asks for one.
        identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    },
    /// Records on `topic` at the Kafka `brokers` (host:port, comma separated).
    Kafka { brokers: String, topic: String },
}

impl Via {
    /// The name in reports: `api`, `redis_stream` or `kafka`.
    pub fn name(&self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::RedisStream { .. } => "redis_stream",
            Via::Kafka { .. } => "kafka",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PushCfg {
    pub api: ApiTarget,
    /// Where the pushes go: the API (`api`), the Redis stream or a Kafka topic.
    pub via: Via,
    pub api_key: Option<String>,
    /// Pushes per second from this process (0: unpaced).
    pub rate: f64,
    pub duration: Duration,
    pub count: Option<u64>,
    pub target: Target,
    pub payload_bytes: usize,
    /// `--payload-json`: `data` carries a JSON document (`doc`) instead of `pad`.
    pub payload_json: bool,
    pub batch: usize,
    pub concurrency: usize,
    pub users_per_push: usize,
    pub topics: Vec<String>,
    pub user_offset: u64,
    pub num_users: u64,
    /// How long 503 retries may go on after the run's end.
    pub retry_grace: Duration,
    /// `--push-ids`: every push carries an `id` unique to this run, so that the server
    /// drops a second copy (docs/protocol.md 4.4) and a request that timed out may be
    /// sent again; `Some(prefix)` of the ids.
    pub push_ids: Option<String>,
    /// With `Some(n)`, `--target user` pushes go only to users with `n` counted open
    /// sessions (a capacity probe must not push to users still connecting).
    pub full_sessions: Option<u32>,
    /// `--target user`: push `idx` goes to user `(user_base + idx) % user_span`, so that
    /// a capacity probe carries on from where the last one ended (`user_base`) and stays
    /// on the users connected now (`user_span`; all `num_users` when `None`).
    pub user_base: u64,
    pub user_span: Option<u64>,
}

pub struct PushOut {
    /// Pushes the API accepted (with `--kafka`: whose record the broker acknowledged).
    pub accepted: u64,
    /// Paced: the schedule slots the driver took on, every one before the end of
    /// --duration-secs (and within --count); unpaced: the pushes it began. Each is
    /// accepted, given up (`errors`) or `not_sent`.
    pub scheduled: u64,
    /// Paced: pushes whose slot came before the end but that were still unsent when the
    /// grace after it ran out (the API held the driver up to then): never sent, and
    /// each batch of them is in `api_latency` with its wait up to then (a lower bound).
    pub not_sent: u64,
    /// Topic and broadcast pushes: the numbers accepted per driver stream.
    pub numbers: Numbers,
    /// Requests, stream round trips, or Kafka records produced.
    pub requests: u64,
    /// Requests (or batch lines) answered 503 overloaded and sent again.
    pub retries: u64,
    /// Pushes given up, by cause.
    pub errors: BTreeMap<String, u64>,
    /// API (or stream, or produce) latency, counted from when each request was due at
    /// --rate (its schedule slot), not from when it was sent: a stalled server delays the
    /// pushes queued behind it, and that wait is in the figure.
    pub api_latency: Histogram<u64>,
    /// Pushes sent more than [`LATE_SEND`] after their schedule slot (the driver was held
    /// up by a slow or stalled API); 0 when unpaced.
    pub sent_late: u64,
    /// Of `sent_late`, those sent after the end of --duration-secs: the stall reached the
    /// end, so the schedule was not pushed within the run.
    pub sent_after_end: u64,
    /// The longest a push waited past its schedule slot before it was sent, in µs.
    pub max_send_lag_us: u64,
    /// Paced (--rate above 0): the latencies count from the schedule slots.
    pub paced: bool,
    pub secs: f64,
}

/// A push sent later than this after its schedule slot counts in `sent_late`.
pub const LATE_SEND: Duration = Duration::from_millis(100);

impl PushOut {
    pub fn new() -> Self {
        PushOut {
            accepted: 0,
            scheduled: 0,
            not_sent: 0,
            numbers: Numbers::default(),
            requests: 0,
            retries: 0,
            errors: BTreeMap::new(),
            api_latency: util::new_hist(),
            sent_late: 0,
            sent_after_end: 0,
            max_send_lag_us: 0,
            paced: false,
            secs: 0.0,
        }
    }
    /// Adds another driver's (or probe's) figures; `secs` is left to the caller.
    pub fn merge(&mut self, o: PushOut) {
        self.accepted += o.accepted;
        self.scheduled += o.scheduled;
        self.not_sent += o.not_sent;
        self.numbers.union(&o.numbers);
        self.requests += o.requests;
        self.retries += o.retries;
        self.sent_late += o.sent_late;
        self.sent_after_end += o.sent_after_end;
        self.max_send_lag_us = self.max_send_lag_us.max(o.max_send_lag_us);
        self.paced |= o.paced;
        merge_counts(&mut self.errors, o.errors);
        let _ = self.api_latency.add(&o.api_latency);
    }
}

/// Live counters for progress lines.
#[derive(Default)]
pub struct PushProgress {
    pub accepted: AtomicU64,
    pub retries: AtomicU64,
    pub errors: AtomicU64,
}

/// One push's target, kept for accounting once the API accepts it.
#[derive(Clone)]
enum Tgt {
    User(u64),
    Users(Vec<u64>),
    Topic(usize),
    Broadcast,
}

struct Item {
    tgt: Tgt,
    /// Counter within this driver stream.
    n: u64,
    /// When the push was due, in µs on [`util::now_us`]'s clock: its schedule slot at --rate
    /// (the first push of its batch), or when it was made when unpaced. It is the `t` of
    /// its data, so push-to-client latency counts the time it waited to be sent.
    due_us: u64,
}

/// Runs the driver to completion (count or duration reached); blocking.
pub fn run(cfg: Arc<PushCfg>, sh: Arc<Shared>, prog: Arc<PushProgress>) -> PushOut {
    let ticket = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut out = PushOut::new();
    out.paced = cfg.rate > 0.0;
    let sink = match &cfg.via {
        Via::Kafka { brokers, topic } => {
            match KafkaSink::new(&cfg, brokers, topic, sh.clone(), prog.clone()) {
                Ok(k) => Some(Arc::new(k)),
                Err(cause) => {
                    give_up(&mut out, &prog, cause, 1);
                    out.secs = start.elapsed().as_secs_f64();
                    return out;
                }
            }
        }
        _ => None,
    };
    let mut hs = Vec::new();
    for s in 0..cfg.concurrency.max(1) {
        let (cfg, sh, prog, ticket) = (cfg.clone(), sh.clone(), prog.clone(), ticket.clone());
        let sink = sink.clone();
        hs.push(std::thread::spawn(move || {
            stream(s, &cfg, &sh, &prog, &ticket, start, sink.as_deref())
        }));
    }
    for h in hs {
        match h.join() {
            Ok(o) => out.merge(o),
            Err(_) => {
                *out.errors
                    .entry("driver_thread_panicked".into())
                    .or_insert(0) += 1
            }
        }
    }
    // The threads are done with it, so this is the last reference.
    if let Some(k) = sink.and_then(Arc::into_inner) {
        out.merge(k.finish(cfg.retry_grace));
    }
    out.secs = start.elapsed().as_secs_f64();
    out
}

fn stream(
    s: usize,
    cfg: &PushCfg,
    sh: &Shared,
    prog: &PushProgress,
    ticket: &AtomicU64,
    start: Instant,
    kafka: Option<&KafkaSink>,
) -> PushOut {
    let mut out = PushOut::new();
    let mut conn: Option<ApiConn> = None;
    let mut redis = match &cfg.via {
        Via::RedisStream { url, ca, identity } => {
            Some(StreamSink::new(url, ca.as_deref(), identity.as_ref()))
        }
        _ => None,
    };
    let limit = cfg.count.unwrap_or(u64::MAX);
    let end = start + cfg.duration;
    let hard_end = end + cfg.retry_grace;
    let batch = cfg.batch.max(1) as u64;
    let mut n = 0u64;
    let path = if cfg.batch > 1 {
        "/v1/push/batch"
    } else {
        "/v1/push"
    };
    let pad = filler(cfg, s);
    let users = cfg.num_users.max(1);
    let span = cfg.user_span.unwrap_or(users).clamp(1, users);
    let paced = cfg.rate > 0.0;
    // `start` on the clock the receivers read, for the schedule slots in the pushes' data.
    let start_us = util::now_us().saturating_sub(start.elapsed().as_micros() as u64);
    loop {
        let i = ticket.fetch_add(batch, Relaxed);
        if i >= limit {
            break;
        }
        let k = batch.min(limit - i);
        let due = if paced {
            start + Duration::from_secs_f64(i as f64 / cfg.rate)
        } else {
            start
        };
        // Paced, every slot before the end is pushed, late if the API held the driver
        // up, so a stall that reaches the end is counted like one before it (review s23
        // B1); unpaced, there is no schedule and the run ends at the end.
        if due >= end || (!paced && Instant::now() >= end) {
            break;
        }
        out.scheduled += k;
        let now = Instant::now();
        if paced && now >= hard_end {
            // The grace is over too: never sent. Its wait so far is a lower bound.
            out.not_sent += k;
            let waited = hard_end.saturating_duration_since(due);
            util::record(&mut out.api_latency, waited.as_micros() as u64);
            continue;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        // Paced: the latencies count from the slot (no coordinated omission); unpaced,
        // there is no schedule and they count from now.
        let (due_us, t0) = if paced {
            let lag = now.saturating_duration_since(due);
            if lag > LATE_SEND {
                out.sent_late += k;
                if now >= end {
                    out.sent_after_end += k;
                }
            }
            out.max_send_lag_us = out.max_send_lag_us.max(lag.as_micros() as u64);
            (start_us + (due - start).as_micros() as u64, due)
        } else {
            (util::now_us(), Instant::now())
        };
        let mut items: Vec<Item> = (i..i + k)
            .map(|idx| {
                n += 1;
                let tgt = match cfg.target {
                    Target::User => {
                        Tgt::User(pick_user(cfg, sh, cfg.user_base.wrapping_add(idx) % span))
                    }
                    Target::Users => {
                        let m = (cfg.users_per_push as u64).clamp(1, users);
                        let first = (idx * m) % users;
                        Tgt::Users((0..m).map(|j| (first + j) % users).collect())
                    }
                    Target::Topic => Tgt::Topic(idx as usize % cfg.topics.len().max(1)),
                    Target::Broadcast => Tgt::Broadcast,
                };
                Item { tgt, n, due_us }
            })
            .collect();
        if let Some(r) = redis.as_mut() {
            r.send(cfg, sh, prog, &items, s, &pad, t0, &mut out);
            continue;
        }
        if let Some(k) = kafka {
            k.send(cfg, prog, items, s, &pad, t0, hard_end, &mut out);
            continue;
        }
        let mut attempts_left_io = 2;
        while !items.is_empty() {
            let mut body = String::with_capacity(items.len() * (cfg.payload_bytes + 96));
            for (j, it) in items.iter().enumerate() {
                if j > 0 {
                    body.push('\n');
                }
                push_json(&mut body, cfg, it, s, &pad);
            }
            let reused = conn.is_some();
            let resp = match conn.as_mut() {
                Some(c) => c.request(cfg, path, &body),
                None => match ApiConn::connect(&cfg.api) {
                    Ok(c) => conn.insert(c).request(cfg, path, &body),
                    Err(e) => Err(e),
                },
            };
            out.requests += 1;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    conn = None;
                    attempts_left_io -= 1;
                    let timeout = is_timeout(&e);
                    // A kept-alive connection the server closed: send again on a new one.
                    // Not after a timeout unless the pushes have ids: the server may
                    // still accept the first copy, and without an id it would deliver
                    // both (docs/protocol.md 4.4).
                    if reused
                        && attempts_left_io > 0
                        && Instant::now() < hard_end
                        && (!timeout || cfg.push_ids.is_some())
                    {
                        out.retries += items.len() as u64;
                        prog.retries.fetch_add(items.len() as u64, Relaxed);
                        continue;
                    }
                    let cause = if timeout {
                        "api_timeout".to_string()
                    } else {
                        format!("api_{}", crate::ws_conn::io_cause(&e))
                    };
                    give_up(&mut out, prog, cause, items.len() as u64);
                    break;
                }
            };
            util::record(&mut out.api_latency, t0.elapsed().as_micros() as u64);
            if resp.close {
                conn = None;
            }
            match resp.status {
                200 | 202 => {
                    let mut retry = Vec::new();
                    if cfg.batch > 1 {
                        let rejected = parse_rejected(&resp.body);
                        let mut keep = vec![true; items.len()];
                        for (line, err) in rejected {
                            // A line listed twice is still one push: count it once.
                            if line >= 1 && line <= items.len() && keep[line - 1] {
                                keep[line - 1] = false;
                                if err.contains("overload") {
                                    retry.push(line - 1);
                                } else {
                                    let cause = format!("rejected_{}", short(&err));
                                    give_up(&mut out, prog, cause, 1);
                                }
                            }
                        }
                        for (it, ok) in items.iter().zip(&keep) {
                            if *ok {
                                account(sh, &it.tgt, (s, it.n), &mut out, prog);
                            }
                        }
                    } else {
                        account(sh, &items[0].tgt, (s, items[0].n), &mut out, prog);
                    }
                    if retry.is_empty() || Instant::now() >= hard_end {
                        if !retry.is_empty() {
                            *out.errors.entry("overloaded_gave_up".into()).or_insert(0) +=
                                retry.len() as u64;
                        }
                        break;
                    }
                    out.retries += retry.len() as u64;
                    prog.retries.fetch_add(retry.len() as u64, Relaxed);
                    let mut old: Vec<Option<Item>> = items.into_iter().map(Some).collect();
                    items = retry.into_iter().filter_map(|j| old[j].take()).collect();
                    std::thread::sleep(Duration::from_millis(50));
                }
                503 => {
                    let code = error_code(&resp.body);
                    if code.as_deref() == Some("overloaded") && Instant::now() < hard_end {
                        out.retries += 1;
                        prog.retries.fetch_add(1, Relaxed);
                        let wait = resp.retry_after.unwrap_or(1).clamp(0, 5);
                        let wait = Duration::from_secs(wait).max(Duration::from_millis(20));
                        std::thread::sleep(
                            wait.min(hard_end.saturating_duration_since(Instant::now())),
                        );
                        continue;
                    }
                    let cause = format!("http_503_{}", code.unwrap_or_default());
                    give_up(&mut out, prog, cause, items.len() as u64);
                    break;
                }
                st => {
                    let cause = match error_code(&resp.body) {
                        Some(c) => format!("http_{st}_{c}"),
                        None => format!("http_{st}"),
                    };
                    give_up(&mut out, prog, cause, items.len() as u64);
                    break;
                }
            }
        }
    }
    out
}

/// The cluster's push stream (docs/protocol.md 5), which the nodes read with a group.
pub const PUSH_STREAM: &str = "throng:push";

/// How long the stream driver waits for Redis to connect or answer.
const REDIS_TIMEOUT: Duration = Duration::from_secs(10);

/// One driver stream's Redis connection to the push stream, opened on first use and
/// again after a failure.
struct StreamSink {
    client: Result<redis::Client, String>,
    conn: Option<redis::Connection>,
}

impl StreamSink {
    fn new(
        url: &str,
        ca: Option<&std::path::Path>,
        identity: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    ) -> Self {
        let read = |path: &std::path::Path, cause: &str| {
            std::fs::read(path).map_err(|_| cause.to_string())
        };
        let client = if ca.is_none() && identity.is_none() {
            redis::Client::open(url).map_err(|e| redis_cause(&e))
        } else {
            ca.map(|path| read(path, "redis_ca_unreadable"))
                .transpose()
                .and_then(|root_cert| {
                    let client_tls = identity
                        .map(|(cert, key)| {
                            Ok::<_, String>(redis::ClientTlsConfig {
                                client_cert: read(cert, "redis_client_cert_unreadable")?,
                                client_key: read(key, "redis_client_key_unreadable")?,
                            })
                        })
                        .transpose()?;
                    let certs = redis::TlsCertificates {
                        client_tls,
                        root_cert,
                    };
                    redis::Client::build_with_tls(url, certs).map_err(|e| redis_cause(&e))
                })
        };
        StreamSink { client, conn: None }
    }

    fn conn(&mut self) -> Result<&mut redis::Connection, String> {
        if self.conn.is_none() {
            let client = self.client.as_ref().map_err(Clone::clone)?;
            let c = client
                .get_connection_with_timeout(REDIS_TIMEOUT)
                .map_err(|e| redis_cause(&e))?;
            c.set_read_timeout(Some(REDIS_TIMEOUT))
                .and_then(|()| c.set_write_timeout(Some(REDIS_TIMEOUT)))
                .map_err(|e| redis_cause(&e))?;
            self.conn = Some(c);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| "redis_not_connected".to_string())
    }

    /// Adds `items` to the stream in one pipeline (one round trip, `--batch` XADDs);
    /// each XADD answered with an entry id is accepted and accounted like an API push.
    /// Not sent again after a failure: a pipeline cut short may have added some entries,
    /// and the pushes carry no `id` that would make a second copy harmless.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        cfg: &PushCfg,
        sh: &Shared,
        prog: &PushProgress,
        items: &[Item],
        s: usize,
        pad: &str,
        t0: Instant,
        out: &mut PushOut,
    ) {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut body = String::with_capacity(cfg.payload_bytes + 96);
        for it in items {
            body.clear();
            push_json(&mut body, cfg, it, s, pad);
            pipe.cmd("XADD")
                .arg(PUSH_STREAM)
                .arg("*")
                .arg("push")
                .arg(body.as_str());
        }
        out.requests += 1;
        let answers = self.conn().and_then(|c| {
            pipe.query::<Vec<redis::RedisResult<Vec<u8>>>>(c)
                .map_err(|e| redis_cause(&e))
        });
        let answers = match answers {
            Ok(a) => a,
            Err(cause) => {
                self.conn = None;
                give_up(out, prog, cause, items.len() as u64);
                return;
            }
        };
        util::record(&mut out.api_latency, t0.elapsed().as_micros() as u64);
        let mut answers = answers.into_iter();
        for it in items {
            let cause = match answers.next() {
                Some(Ok(id)) if !id.is_empty() => {
                    account(sh, &it.tgt, (s, it.n), out, prog);
                    continue;
                }
                Some(Ok(_)) => "redis_empty_entry_id".to_string(),
                Some(Err(e)) => redis_cause(&e),
                None => "redis_missing_answer".to_string(),
            };
            give_up(out, prog, cause, 1);
        }
    }
}

/// A Redis failure as an error cause: `redis_` and the server's error code (`redis_oom`),
/// or the I/O cause (`redis_connection_refused`), or the library's category.
fn redis_cause(e: &redis::RedisError) -> String {
    use std::error::Error as _;
    if let Some(io) = e.source().and_then(|s| s.downcast_ref::<io::Error>()) {
        return format!("redis_{}", crate::ws_conn::io_cause(io));
    }
    if e.is_timeout() {
        return "redis_timeout".into();
    }
    if e.is_connection_refusal() {
        return "redis_connection_refused".into();
    }
    if e.is_connection_dropped() {
        return "redis_connection_dropped".into();
    }
    match e.code() {
        Some(c) => format!("redis_{}", short(c)),
        None => format!("redis_{}", short(e.category())),
    }
}

/// User `u`, or with `full_sessions` the first user from `u` on, within the users pushed
/// to (`user_span`), whose sessions are all open (`u` itself when none is). The span
/// holds the users connected now, so this is a guard that finds `u` itself unless
/// connections dropped, not a search over users still to connect.
fn pick_user(cfg: &PushCfg, sh: &Shared, u: u64) -> u64 {
    let Some(n) = cfg.full_sessions else {
        return u;
    };
    let users = cfg.num_users.max(1);
    let span = cfg.user_span.unwrap_or(users).clamp(1, users);
    (0..span)
        .map(|k| (u + k) % span)
        .find(|&v| {
            sh.user_sessions
                .get(v as usize)
                .is_some_and(|s| s.load(Relaxed) >= n)
        })
        .unwrap_or(u)
}

fn short(s: &str) -> String {
    s.chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether an API socket error is its read or write timeout (SO_RCVTIMEO and
/// SO_SNDTIMEO end a blocking call with EAGAIN, which Rust calls `WouldBlock`).
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The `--push-ids` prefix of this process: its pid and a random word, so that the ids
/// of two runs (or two workers) never meet in the server's deduplication window.
pub fn id_prefix() -> String {
    format!("tl{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// Counts `n` pushes given up for `cause`.
fn give_up(out: &mut PushOut, prog: &PushProgress, cause: String, n: u64) {
    *out.errors.entry(cause).or_insert(0) += n;
    prog.errors.fetch_add(n, Relaxed);
}

/// Counts an accepted push to `tgt`, numbered `n` in driver stream `s` (`num`).
fn account(sh: &Shared, tgt: &Tgt, num: (usize, u64), out: &mut PushOut, prog: &PushProgress) {
    out.accepted += 1;
    prog.accepted.fetch_add(1, Relaxed);
    match tgt {
        Tgt::User(u) => {
            if let Some(a) = sh.accepted.get(*u as usize) {
                a.fetch_add(1, Relaxed);
            }
        }
        Tgt::Users(us) => {
            for u in us {
                if let Some(a) = sh.accepted.get(*u as usize) {
                    a.fetch_add(1, Relaxed);
                }
            }
        }
        Tgt::Topic(i) => {
            sh.accepted_total.fetch_add(1, Relaxed);
            out.numbers.insert(num.0, num.1);
            if let Some(a) = sh.accepted_topic.get(*i) {
                a.fetch_add(1, Relaxed);
            }
        }
        Tgt::Broadcast => {
            sh.accepted_total.fetch_add(1, Relaxed);
            out.numbers.insert(num.0, num.1);
        }
    }
}

/// What fills a push's data beside its counters: `"pad":"xxx..."` of --payload-bytes, or
/// with --payload-json `"doc":{...}` of about that size (one per driver stream `s`).
fn filler(cfg: &PushCfg, s: usize) -> String {
    if cfg.payload_json {
        format!(
            "\"doc\":{}",
            doc::json_doc(cfg.payload_bytes, 0x7468_726f_6e67 ^ s as u64)
        )
    } else {
        format!("\"pad\":\"{}\"", "x".repeat(cfg.payload_bytes))
    }
}

/// Appends the push object of `it`, numbered `it.n` in driver stream `s`; its data's `t`
/// is `it.due_us` (when it was due, µs on [`util::now_us`]'s clock, so that push-to-client
/// latency counts the wait behind a stalled API), `pad` the [`filler`].
fn push_json(out: &mut String, cfg: &PushCfg, it: &Item, s: usize, pad: &str) {
    push_json_as(out, cfg, &it.tgt, it.n, s, pad, it.due_us)
}

/// [`push_json`] of a push to `tgt` numbered `n` in driver stream `s`, due at `due_us`.
fn push_json_as(
    out: &mut String,
    cfg: &PushCfg,
    tgt: &Tgt,
    n: u64,
    s: usize,
    pad: &str,
    due_us: u64,
) {
    use std::fmt::Write as _;
    out.push('{');
    match tgt {
        Tgt::User(u) => {
            let _ = write!(out, "\"user\":\"u{}\"", cfg.user_offset + u);
        }
        Tgt::Users(us) => {
            out.push_str("\"users\":[");
            for (j, u) in us.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                let _ = write!(out, "\"u{}\"", cfg.user_offset + u);
            }
            out.push(']');
        }
        Tgt::Topic(i) => {
            let _ = write!(
                out,
                "\"topic\":{}",
                serde_json::to_string(topic_name(cfg, *i)).unwrap_or_default()
            );
        }
        Tgt::Broadcast => out.push_str("\"broadcast\":true"),
    }
    if let Some(prefix) = &cfg.push_ids {
        let _ = write!(out, ",\"id\":\"{prefix}-{s}-{n}\"");
    }
    let _ = write!(
        out,
        ",\"data\":{{\"t\":{},\"n\":{n},\"s\":{s},{pad}}}}}",
        due_us
    );
}

/// Topic `i` of the run.
fn topic_name(cfg: &PushCfg, i: usize) -> &str {
    cfg.topics.get(i).map(String::as_str).unwrap_or("load")
}

/// The Kafka record key of a push: its target, so that the pushes one receiver counts in
/// order share a partition. Several users go by the first (each receiver orders them by
/// its own `seq`, whatever the partition); every broadcast has the one key `broadcast`.
fn target_key(cfg: &PushCfg, tgt: &Tgt) -> String {
    match tgt {
        Tgt::User(u) => format!("u{}", cfg.user_offset + u),
        Tgt::Users(us) => format!("u{}", cfg.user_offset + us.first().copied().unwrap_or(0)),
        Tgt::Topic(i) => topic_name(cfg, *i).to_string(),
        Tgt::Broadcast => "broadcast".to_string(),
    }
}

fn error_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct E {
        error: Option<String>,
    }
    serde_json::from_slice::<E>(body).ok()?.error
}

fn parse_rejected(body: &[u8]) -> Vec<(usize, String)> {
    #[derive(serde::Deserialize)]
    struct R {
        #[serde(default)]
        rejected: Vec<Line>,
    }
    #[derive(serde::Deserialize)]
    struct Line {
        line: usize,
        #[serde(default)]
        error: String,
    }
    serde_json::from_slice::<R>(body)
        .map(|r| r.rejected.into_iter().map(|l| (l.line, l.error)).collect())
        .unwrap_or_default()
}

struct Resp {
    status: u16,
    retry_after: Option<u64>,
    close: bool,
    body: Vec<u8>,
}

/// A connection to the push API: plain, or TLS (blocking rustls over the socket).
enum ApiStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for ApiStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ApiStream::Plain(s) => s.read(buf),
            ApiStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for ApiStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ApiStream::Plain(s) => s.write(buf),
            ApiStream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ApiStream::Plain(s) => s.flush(),
            ApiStream::Tls(s) => s.flush(),
        }
    }
}

/// How long an API request may wait for its answer (1 s in unit tests).
const API_TIMEOUT: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(10)
};

struct ApiConn {
    stream: ApiStream,
    buf: Vec<u8>,
    /// The request being sent, kept for the next one.
    req: Vec<u8>,
}

impl ApiConn {
    fn connect(api: &ApiTarget) -> io::Result<Self> {
        let sock = TcpStream::connect_timeout(&api.url.addr, Duration::from_secs(5))?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(API_TIMEOUT))?;
        sock.set_write_timeout(Some(API_TIMEOUT))?;
        let stream = match &api.tls {
            None => ApiStream::Plain(sock),
            Some(dial) => {
                let name = crate::tls::config::server_name(&api.url.host)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let conn = rustls::ClientConnection::new(dial.config(), name)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                // The handshake runs with the first request's write.
                ApiStream::Tls(Box::new(rustls::StreamOwned::new(conn, sock)))
            }
        };
        Ok(ApiConn {
            stream,
            buf: Vec::with_capacity(4096),
            req: Vec::new(),
        })
    }

    fn request(&mut self, cfg: &PushCfg, path: &str, body: &str) -> io::Result<Resp> {
        let ctype = if cfg.batch > 1 {
            "application/x-ndjson"
        } else {
            "application/json"
        };
        let req = &mut self.req;
        req.clear();
        write!(
            req,
            "POST {path} HTTP/1.1\r\nHost: {}\r\n",
            cfg.api.url.authority
        )?;
        if let Some(k) = &cfg.api_key {
            write!(req, "Authorization: Bearer {k}\r\n")?;
        }
        write!(
            req,
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        req.extend_from_slice(body.as_bytes());
        self.stream.write_all(req)?;
        self.stream.flush()?;
        read_response(&mut self.stream, &mut self.buf)
    }
}

/// One request to the API on a fresh connection (`POST /v1/drain`, a priming push):
/// (status, body).
pub fn post(
    api: &ApiTarget,
    key: Option<&str>,
    path: &str,
    body: &str,
) -> io::Result<(u16, Vec<u8>)> {
    let mut c = ApiConn::connect(api)?;
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {}\r\n", api.url.authority);
    if let Some(k) = key {
        req += &format!("Authorization: Bearer {k}\r\n");
    }
    req += &format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.stream.write_all(req.as_bytes())?;
    c.stream.flush()?;
    let r = read_response(&mut c.stream, &mut c.buf)?;
    Ok((r.status, r.body))
}

fn read_response(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Resp> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                let mut len = 0usize;
                let mut retry_after = None;
                let mut close = false;
                for h in resp.headers.iter() {
                    let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        len = v
                            .parse()
                            .map_err(|_| io::Error::other("bad content-length"))?;
                    } else if h.name.eq_ignore_ascii_case("retry-after") {
                        retry_after = v.parse().ok();
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = v.eq_ignore_ascii_case("close");
                    }
                }
                if len > 16 << 20 {
                    return Err(io::Error::other("response too large"));
                }
                while buf.len() < n + len {
                    let r = stream.read(&mut chunk)?;
                    if r == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    buf.extend_from_slice(&chunk[..r]);
                }
                return Ok(Resp {
                    status,
                    retry_after,
                    close,
                    body: buf[n..n + len].to_vec(),
                });
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > 64 * 1024 {
                    return Err(io::Error::other("response head too large"));
                }
            }
            Err(e) => return Err(io::Error::other(format!("bad response: {e}"))),
        }
        let r = stream.read(&mut chunk)?;
        if r == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..r]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings for driver tests: the API at a closed port, 10 users from u100.
    pub(super) fn cfg(target: Target) -> PushCfg {
        PushCfg {
            api: ApiTarget::plain(util::parse_url("http://127.0.0.1:1", "http", 80).unwrap()),
            via: Via::Api,
            api_key: None,
            rate: 0.0,
            duration: Duration::from_secs(1),
            count: None,
            target,
            payload_bytes: 3,
            payload_json: false,
            batch: 1,
            concurrency: 1,
            users_per_push: 2,
            topics: vec!["room:a".into()],
            user_offset: 100,
            num_users: 10,
            full_sessions: None,
            user_base: 0,
            user_span: None,
            retry_grace: Duration::from_secs(1),
            push_ids: None,
        }
    }

    #[test]
    fn kafka_keys_are_the_targets() {
        let c = cfg(Target::User);
        assert_eq!(target_key(&c, &Tgt::User(17)), "u117");
        assert_eq!(target_key(&c, &Tgt::Users(vec![3, 4])), "u103");
        assert_eq!(target_key(&c, &Tgt::Topic(0)), "room:a");
        assert_eq!(target_key(&c, &Tgt::Broadcast), "broadcast");
    }

    #[test]
    fn push_bodies() {
        let c = cfg(Target::User);
        let mut s = String::new();
        let t = util::now_us();
        push_json_as(&mut s, &c, &Tgt::User(17), 5, 2, &filler(&c, 2), t);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["user"], "u117");
        assert_eq!(v["data"]["n"], 5);
        assert_eq!(v["data"]["s"], 2);
        assert_eq!(v["data"]["pad"], "xxx");
        assert_eq!(v["data"]["t"], t);
        let mut s = String::new();
        push_json_as(
            &mut s,
            &c,
            &Tgt::Users(vec![1, 2]),
            1,
            0,
            "\"pad\":\"\"",
            util::now_us(),
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["users"], serde_json::json!(["u101", "u102"]));
        let mut s = String::new();
        push_json_as(
            &mut s,
            &c,
            &Tgt::Topic(0),
            1,
            0,
            "\"pad\":\"\"",
            util::now_us(),
        );
        assert!(s.starts_with("{\"topic\":\"room:a\","));
        let mut s = String::new();
        push_json_as(
            &mut s,
            &c,
            &Tgt::Broadcast,
            1,
            0,
            "\"pad\":\"\"",
            util::now_us(),
        );
        assert!(s.starts_with("{\"broadcast\":true,"));
        // --payload-json: a document of about --payload-bytes in `doc`, no `pad`; the
        // receivers' counters still parse.
        let mut j = cfg(Target::Broadcast);
        j.payload_json = true;
        j.payload_bytes = 2000;
        let mut s = String::new();
        push_json_as(
            &mut s,
            &j,
            &Tgt::Broadcast,
            9,
            1,
            &filler(&j, 1),
            util::now_us(),
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert!(v["data"].get("pad").is_none());
        assert_eq!(v["data"]["n"], 9);
        let doc = &s[s.find("\"doc\":").unwrap() + 6..s.len() - 2];
        assert!(
            doc.starts_with("{\"items\":[") && doc.ends_with('}'),
            "{doc}"
        );
        assert_eq!(doc.len(), 2000);
        assert_ne!(
            filler(&j, 0),
            filler(&j, 1),
            "each driver stream its own document"
        );
    }

    /// Answers one request per connection with each of `bodies` (200, then close), and
    /// returns the requests' bodies.
    fn fake_api(bodies: Vec<&'static str>) -> (Url, std::thread::JoinHandle<Vec<String>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url =
            util::parse_url(&format!("http://{}", l.local_addr().unwrap()), "http", 80).unwrap();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for b in bodies {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let n = s.read(&mut chunk).unwrap();
                    assert!(n > 0, "request cut short");
                    buf.extend_from_slice(&chunk[..n]);
                    let mut hs = [httparse::EMPTY_HEADER; 16];
                    let mut req = httparse::Request::new(&mut hs);
                    if let httparse::Status::Complete(at) = req.parse(&buf).unwrap() {
                        let len: usize = req
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                            .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                            .unwrap();
                        if buf.len() >= at + len {
                            break String::from_utf8(buf[at..at + len].to_vec()).unwrap();
                        }
                    }
                };
                seen.push(body);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                    b.len()
                );
                s.write_all(resp.as_bytes()).unwrap();
            }
            seen
        });
        (url, h)
    }

    #[test]
    fn push_ids_are_unique_per_push() {
        let mut c = cfg(Target::User);
        c.push_ids = Some("tl1-ab".into());
        let mut s = String::new();
        push_json_as(&mut s, &c, &Tgt::User(3), 7, 2, "\"pad\":\"\"", 1);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["id"], "tl1-ab-2-7");
        assert_ne!(id_prefix(), id_prefix(), "each process its own prefix");
        // Off by default: no id, so the server keeps no deduplication entry.
        let mut s = String::new();
        push_json_as(
            &mut s,
            &cfg(Target::User),
            &Tgt::User(3),
            7,
            2,
            "\"pad\":\"\"",
            1,
        );
        assert!(serde_json::from_str::<serde_json::Value>(&s)
            .unwrap()
            .get("id")
            .is_none());
    }

    /// An API that answers the first request on a kept-alive connection, then takes the
    /// second and never answers it; a later connection is answered. Returns how many
    /// connections it accepted.
    fn stalling_api() -> (Url, std::thread::JoinHandle<usize>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url =
            util::parse_url(&format!("http://{}", l.local_addr().unwrap()), "http", 80).unwrap();
        let h = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(4);
            let mut held = Vec::new();
            let mut accepted = 0;
            while Instant::now() < end {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                accepted += 1;
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let ok = b"HTTP/1.1 202 Accepted\r\nContent-Length: 17\r\n\r\n{\"accepted\":true}";
                let mut buf = [0u8; 8192];
                // First connection: answer one request, swallow the next. Later: answer.
                let answers = if accepted == 1 { 1 } else { 8 };
                for _ in 0..answers {
                    if !matches!(s.read(&mut buf), Ok(n) if n > 0) {
                        break;
                    }
                    let _ = s.write_all(ok);
                }
                held.push(s);
            }
            accepted
        });
        (url, h)
    }

    /// An API on one kept-alive connection at a time that answers 202 to each of
    /// `expect` requests, the `slow`th (from 1) only after `delay`; returns the requests'
    /// bodies (fewer when the driver stops short: it gives up 5 s after the last).
    /// Requests are small and sent whole, one at a time (concurrency 1).
    fn recording_api(
        expect: usize,
        slow: usize,
        delay: Duration,
    ) -> (Url, std::thread::JoinHandle<Vec<String>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url =
            util::parse_url(&format!("http://{}", l.local_addr().unwrap()), "http", 80).unwrap();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut idle_since = Instant::now();
            while seen.len() < expect && idle_since.elapsed() < Duration::from_secs(5) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 16384];
                while seen.len() < expect {
                    let n = match s.read(&mut buf) {
                        Ok(n) if n > 0 => n,
                        _ => break,
                    };
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let body = req.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                    seen.push(body.to_string());
                    if seen.len() == slow {
                        std::thread::sleep(delay);
                    }
                    let ok =
                        "HTTP/1.1 202 Accepted\r\nContent-Length: 17\r\n\r\n{\"accepted\":true}";
                    if s.write_all(ok.as_bytes()).is_err() {
                        break;
                    }
                }
                idle_since = Instant::now();
            }
            seen
        });
        (url, h)
    }

    #[test]
    fn a_stall_that_reaches_the_end_is_counted() {
        // 30 slots at 100/s over 0.3 s; the API takes 0.6 s over the second request.
        // Review s23 B1: the driver stopped at the end once the stall was over, and the
        // 28 slots behind it were neither sent nor counted anywhere.
        let paced = |grace: Duration| {
            let mut c = cfg(Target::User);
            c.rate = 100.0;
            c.duration = Duration::from_millis(300);
            c.retry_grace = grace;
            c
        };
        // With the grace (5 s) still running after the stall, every slot is sent, late.
        let (api, h) = recording_api(30, 2, Duration::from_millis(600));
        let mut c = paced(Duration::from_secs(5));
        c.api = ApiTarget::plain(api);
        let out = run(Arc::new(c), Arc::new(Shared::new(10)), Arc::default());
        assert_eq!(h.join().unwrap().len(), 30);
        assert_eq!((out.scheduled, out.accepted, out.not_sent), (30, 30, 0));
        assert_eq!(
            out.sent_late, 28,
            "every slot behind the stall went out late"
        );
        assert_eq!(out.sent_after_end, 28, "and after the end");
        assert!(out.max_send_lag_us >= 300_000, "{}", out.max_send_lag_us);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        // With the grace (0.2 s) over by the time the stall ends, the rest is never sent,
        // and counted: as not sent, and in the API latency with its wait (lower bound).
        let (api, h) = recording_api(2, 2, Duration::from_millis(600));
        let mut c = paced(Duration::from_millis(200));
        c.api = ApiTarget::plain(api);
        let out = run(Arc::new(c), Arc::new(Shared::new(10)), Arc::default());
        assert_eq!(h.join().unwrap().len(), 2);
        assert_eq!((out.scheduled, out.accepted, out.not_sent), (30, 2, 28));
        assert_eq!(out.requests, 2);
        assert_eq!(out.api_latency.len(), 2 + 28);
        // Those slots waited at least until the grace ran out, 0.2 s after the last one.
        let waited = out.api_latency.count_between(190_000, u64::MAX);
        assert!(waited >= 28, "{waited} samples of 0.19 s or more");
        assert!(out.errors.is_empty(), "{:?}", out.errors);
    }

    #[test]
    fn probe_pushes_carry_on_over_the_users_connected_now() {
        // Review s23 R1: each probe pushed to users 0.. again, and pushes past the users
        // connected (here 4 of 10) fell on user 0.
        let (api, h) = recording_api(8, 0, Duration::ZERO);
        let mut c = cfg(Target::User);
        c.api = ApiTarget::plain(api);
        c.count = Some(8);
        c.duration = Duration::from_secs(30);
        c.full_sessions = Some(1);
        c.user_base = 5;
        c.user_span = Some(4);
        let sh = Arc::new(Shared::new(10));
        for s in &sh.user_sessions[..4] {
            s.store(1, Relaxed);
        }
        let out = run(Arc::new(c), sh, Arc::default());
        assert_eq!(out.accepted, 8);
        let users: Vec<String> = h
            .join()
            .unwrap()
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                v["user"].as_str().unwrap().to_string()
            })
            .collect();
        // (5 + i) % 4 for i in 0..8, in order (one driver stream): each connected user
        // twice, from user 1 on.
        assert_eq!(
            users,
            ["u101", "u102", "u103", "u100", "u101", "u102", "u103", "u100"]
        );
    }

    #[test]
    fn a_timed_out_push_is_not_sent_twice_without_ids() {
        let (api, h) = stalling_api();
        let mut c = cfg(Target::User);
        c.api = ApiTarget::plain(api);
        c.count = Some(2);
        c.duration = Duration::from_secs(30);
        let sh = Arc::new(Shared::new(10));
        let out = run(Arc::new(c), sh, Arc::new(PushProgress::default()));
        assert_eq!(out.accepted, 1);
        assert_eq!(out.requests, 2);
        assert_eq!(out.retries, 0);
        assert_eq!(out.errors.get("api_timeout"), Some(&1), "{:?}", out.errors);
        assert_eq!(h.join().unwrap(), 1, "no second copy on a new connection");
    }

    #[test]
    fn a_timed_out_push_with_an_id_is_sent_again_and_counted() {
        let (api, h) = stalling_api();
        let mut c = cfg(Target::User);
        c.api = ApiTarget::plain(api);
        c.count = Some(2);
        c.duration = Duration::from_secs(30);
        c.push_ids = Some(id_prefix());
        let sh = Arc::new(Shared::new(10));
        let out = run(Arc::new(c), sh, Arc::new(PushProgress::default()));
        assert_eq!(out.accepted, 2);
        assert_eq!(out.requests, 3);
        assert_eq!(out.retries, 1, "the re-send is a retry");
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(h.join().unwrap(), 2);
    }

    #[test]
    fn batch_line_rejected_twice_counts_once() {
        let (api, h) = fake_api(vec![
            r#"{"rejected":[{"line":1,"error":"bad user"},{"line":1,"error":"bad user"},{"line":2,"error":"overloaded"},{"line":2,"error":"overloaded"}]}"#,
            r#"{"rejected":[]}"#,
        ]);
        let mut c = cfg(Target::User);
        c.api = ApiTarget::plain(api);
        c.api_key = Some("k".into());
        c.batch = 2;
        c.count = Some(2);
        c.duration = Duration::from_secs(30);
        let sh = Arc::new(Shared::new(10));
        let out = run(Arc::new(c), sh.clone(), Arc::new(PushProgress::default()));
        let seen = h.join().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].lines().count(), 2);
        assert_eq!(seen[1].lines().count(), 1, "only the overloaded line again");
        assert_eq!(out.requests, 2);
        assert_eq!(out.accepted, 1);
        assert_eq!(out.retries, 1);
        assert_eq!(out.errors.values().sum::<u64>(), 1, "{:?}", out.errors);
        assert_eq!(sh.accepted.iter().map(|a| a.load(Relaxed)).sum::<u64>(), 1);
    }

    #[test]
    fn responses() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 22\r\n\r\n{\"error\":\"overloaded\"}";
        let mut r: &[u8] = raw;
        let mut buf = Vec::new();
        let resp = read_response(&mut r, &mut buf).unwrap();
        assert_eq!(resp.status, 503);
        assert_eq!(resp.retry_after, Some(2));
        assert_eq!(error_code(&resp.body).as_deref(), Some("overloaded"));
        let rej = parse_rejected(br#"{"accepted":1,"rejected":[{"line":2,"error":"bad json"}]}"#);
        assert_eq!(rej, vec![(2, "bad json".to_string())]);
        let mut r: &[u8] = b"HTTP/1.1 202 Accepted\r\nContent-Length: 5\r\n\r\n{\"a\"";
        assert!(read_response(&mut r, &mut buf).is_err());
    }
}
