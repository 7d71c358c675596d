//! WebSocket client connections on mio event loops for connect, push, churn, capacity,
//! resume and deploy: open them at the connect pace, subscribe after `welcome`, hold,
//! receive and account pushes, churn, close. The wire itself (connect, upgrade, frames)
//! is [`crate::ws_conn`].
//!
//! Memory per idle connection is the `Conn` struct in a slab (128 bytes) plus the socket
//! (and for wss:// its boxed TLS session): reads go into one scratch buffer per thread,
//! and only a partial frame left over is kept on the connection; outbound bytes are kept
//! only while the socket would block. With `--compression` a connection adds one bit;
//! the inflater and the wire counters are per thread ([`ws_conn::Inbound`]).

use crate::cli::{secs, SocketArgs};
use crate::deflate::WireStats;
use crate::frame::OP_TEXT;
use crate::progress::Progress;
use crate::server_msg::ServerMsg;
use crate::tls::{self, Tickets, TlsConn, TlsDial, TlsStats};
use crate::track::{Completeness, Judge, Numbers, RecvState};
use crate::util::{self, Url};
use crate::ws_conn::{self, io_cause, End, Handler, Inbound, State, WsConn};
use hdrhistogram::Histogram;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mio::{Events, Interest, Poll, Token};
use serde::{Deserialize, Serialize};
use slab::Slab;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed,
};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One read's buffer per event loop.
const SCRATCH: usize = 64 * 1024;
/// Most churn cycles started in one event-loop turn.
const CHURN_PER_TURN: usize = 256;
/// Most connections opened in one event-loop turn, so sockets already open are served
/// (and their handshakes finish) while a fast or unpaced ramp is under way.
const OPEN_PER_TURN: usize = 1024;

/// What the push driver targets; decides how receivers are accounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    User,
    Users,
    Topic,
    Broadcast,
}

impl Target {
    /// The name used on the command line and in reports (`user`, `topic`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Target::User => "user",
            Target::Users => "users",
            Target::Topic => "topic",
            Target::Broadcast => "broadcast",
        }
    }

    /// Whether pushes go to users (numbered per user) rather than topics or everyone.
    pub fn direct(self) -> bool {
        matches!(self, Target::User | Target::Users)
    }
}

/// Client-initiated disconnect+reconnect cycles (the `churn` subcommand).
#[derive(Debug, Clone, Copy)]
pub struct ChurnCfg {
    /// Cycles per second for this process, spread over its event loop threads.
    pub rate: f64,
    /// Share of connections that churn; see [`crate::churn::is_churner`].
    pub fraction: f64,
}

/// How the event loops of one process open and close their connections (every scenario).
#[derive(Debug, Clone)]
pub struct DialCfg {
    /// Where connections go: connection number g to `urls[g % n]` (several nodes).
    pub urls: Vec<Url>,
    /// Connection attempts per second for this process (0: as fast as possible).
    pub connect_rate: f64,
    /// Event loop threads.
    pub threads: usize,
    /// Connection number g binds `source_ips[(source_start + g) % n]` before connecting,
    /// when given.
    pub source_ips: Vec<IpAddr>,
    /// The global number of this process's first connection (a worker's share of a
    /// --procs run), so the addresses are shared evenly across the processes.
    pub source_start: u64,
    /// HS256 secret of the tokens.
    pub jwt_secret: String,
    /// The tokens' lifetime.
    pub token_ttl_secs: u64,
    /// Connect + upgrade + welcome deadline per connection.
    pub handshake_timeout: Duration,
    /// How long the clean close may take in all.
    pub close_timeout: Duration,
    /// The TLS configuration every wss:// connection of this process shares (so its
    /// sessions resume across them); `None` without `--ca` or `--insecure`.
    pub tls: Option<TlsDial>,
    /// Offer permessage-deflate in every upgrade request (`--compression`).
    pub compression: bool,
}

impl DialCfg {
    /// From the flags: `url` (a comma separated list), the tokens' secret, and the socket
    /// flags, with event loops for `units` connections or rooms and a TLS session store
    /// for `conns` connections.
    pub fn from_args(
        url: &str,
        jwt_secret: &str,
        s: &SocketArgs,
        units: u64,
        conns: u64,
    ) -> Result<DialCfg, String> {
        let urls = s.check_urls("--url", url)?;
        let tls = match s.tls.trust() {
            Some(trust) => {
                let resume = s.tls.tls_resume.on().then(|| Tickets {
                    names: urls.len(),
                    depth: usize::try_from(conns).unwrap_or(usize::MAX),
                });
                let identity = s.tls.identity()?;
                Some(TlsDial::new(&trust, resume, identity.as_ref()).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let source_ips = match &s.source_ips {
            Some(s) => util::parse_source_ips(s).map_err(|e| format!("--source-ips: {e}"))?,
            None => Vec::new(),
        };
        Ok(DialCfg {
            urls,
            connect_rate: s.connect_rate,
            threads: s.threads_for(units),
            source_ips,
            source_start: s.source_ip_start,
            jwt_secret: jwt_secret.to_string(),
            token_ttl_secs: s.token_ttl_secs,
            handshake_timeout: secs(s.handshake_timeout_secs),
            close_timeout: secs(s.close_timeout_secs),
            tls,
            compression: s.compression,
        })
    }

    /// The TLS session for a connection to `url`: none for ws://, a new one on the shared
    /// configuration for wss://. The error is a report label (`tls: ...`).
    pub fn tls_for(&self, url: &Url) -> Result<Option<Box<TlsConn>>, String> {
        if !url.tls {
            return Ok(None);
        }
        // Validation refuses a wss:// URL without trust; this only keeps it a label.
        let dial = self
            .tls
            .as_ref()
            .ok_or_else(|| format!("tls: {}", tls::TlsError::NoTrust))?;
        dial.connect(&url.host)
            .map(Some)
            .map_err(|e| format!("tls: {e}"))
    }

    /// The URL connection number `g` connects to: the (g mod n)th of `--url`'s list, so
    /// a user's sessions may land on different nodes (the multi-device case).
    pub fn url_for(&self, g: u64) -> &Url {
        &self.urls[(g % self.urls.len().max(1) as u64) as usize]
    }

    /// How long `n` connections may take to open: their connect pace plus one handshake
    /// timeout.
    pub fn connect_bound(&self, n: u64) -> Duration {
        let pace = if self.connect_rate > 0.0 {
            n as f64 / self.connect_rate
        } else {
            0.0
        };
        secs(pace) + self.handshake_timeout
    }

    /// The source address connection number `g` binds, if any.
    pub fn source_for(&self, g: u64) -> Option<IpAddr> {
        let n = self.source_ips.len() as u64;
        (n > 0).then(|| self.source_ips[(self.source_start.wrapping_add(g) % n) as usize])
    }
}

/// What the event loops of one process do.
#[derive(Debug, Clone)]
pub struct ClientCfg {
    /// How they open and close their connections.
    pub dial: DialCfg,
    /// Connections opened by this process.
    pub connections: u64,
    pub sessions_per_user: u64,
    /// The first user number of this process: connection g is user `user_offset + g / spu`.
    pub user_offset: u64,
    pub topics: Vec<String>,
    /// The token's `topics` claim: `topics` and the claim-only patterns.
    pub claim: Vec<String>,
    /// Set in push mode: how receivers are accounted when closing.
    pub target: Option<Target>,
    /// Set in churn mode.
    pub churn: Option<ChurnCfg>,
    /// Set in the `resume` and `deploy` scenarios: every connection number tracks its
    /// streams across its sockets (see [`crate::resume`]).
    pub streams: Option<crate::resume::StreamsCfg>,
}

impl ClientCfg {
    /// Users of this process.
    pub fn num_users(&self) -> u64 {
        self.connections.div_ceil(self.sessions_per_user.max(1))
    }
}

/// The event loops open and hold connections.
pub const PHASE_RUN: u8 = 0;
/// The event loops close every connection cleanly and end.
pub const PHASE_CLOSE: u8 = 1;
/// `Shared::step` when no capacity probe is running.
pub const NO_STEP: usize = usize::MAX;

/// Counters shared between the event loops, the push driver and the main thread.
pub struct Shared {
    pub start: Instant,
    pub phase: AtomicU8,
    pub attempted: AtomicU64,
    /// Connections that got their `welcome`.
    pub opened: AtomicU64,
    pub open_now: AtomicU64,
    /// Connections that failed before `welcome`.
    pub failed: AtomicU64,
    /// Open connections ended by the server or the network.
    pub disconnected: AtomicU64,
    pub subscribed: AtomicU64,
    pub push_received: AtomicU64,
    /// Distinct deliveries to connections that are open and count for completeness; a
    /// connection's share is taken back when it leaves, so drains compare like with like.
    pub push_unique: AtomicU64,
    /// Microseconds since `start` of the last welcome / last push received.
    pub last_welcome_us: AtomicU64,
    pub last_recv_us: AtomicU64,
    /// Open sessions per local user that count for completeness (never churned).
    pub user_sessions: Vec<AtomicU32>,
    /// Open connections that count for completeness (never churned).
    pub stable_open: AtomicU64,
    /// Direct pushes accepted by the API, per local user.
    pub accepted: Vec<AtomicU64>,
    /// Topic/broadcast pushes accepted by the API (every connection should get each).
    pub accepted_total: AtomicU64,
    pub threads_done: AtomicU64,
    /// Connection numbers below this may be attempted (the capacity ramp raises it).
    pub allowed: AtomicU64,
    /// Connect pacing restarts at connection `pace_base_g`, `pace_base_us` after `start`.
    pub pace_base_g: AtomicU64,
    pub pace_base_us: AtomicU64,
    /// Churn cycles are started while this is set.
    pub churn_on: AtomicBool,
    /// Churn cycles begun and not yet ended (reconnected or failed).
    pub churn_inflight: AtomicU64,
    pub churn_reconnects: AtomicU64,
    /// The capacity step whose probe is running ([`NO_STEP`] when none).
    pub step: AtomicUsize,
    /// Connect failures by cause so far (the capacity ramp reads them between steps).
    pub connect_errors: Mutex<BTreeMap<String, u64>>,
    /// Topic pushes accepted by the API, per `--topics` entry (resume and deploy).
    pub accepted_topic: Vec<AtomicU64>,
    /// Microseconds since `start` when the deploy scenario asked for the drain (0: not yet).
    pub drain_at_us: AtomicU64,
    /// Connections now open on the deploy scenario's second server.
    pub moved_open: AtomicU64,
    /// Topic and broadcast pushes: the numbers the driver had accepted per driver stream,
    /// set once the pushing is over (`None`: judged by count).
    pub numbers: Mutex<Option<Arc<Numbers>>>,
}

impl Shared {
    pub fn new(users: u64) -> Self {
        Shared {
            start: Instant::now(),
            phase: AtomicU8::new(PHASE_RUN),
            attempted: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            open_now: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            push_received: AtomicU64::new(0),
            push_unique: AtomicU64::new(0),
            last_welcome_us: AtomicU64::new(0),
            last_recv_us: AtomicU64::new(0),
            user_sessions: (0..users).map(|_| AtomicU32::new(0)).collect(),
            accepted: (0..users).map(|_| AtomicU64::new(0)).collect(),
            accepted_total: AtomicU64::new(0),
            threads_done: AtomicU64::new(0),
            stable_open: AtomicU64::new(0),
            allowed: AtomicU64::new(u64::MAX),
            pace_base_g: AtomicU64::new(0),
            pace_base_us: AtomicU64::new(0),
            churn_on: AtomicBool::new(false),
            churn_inflight: AtomicU64::new(0),
            churn_reconnects: AtomicU64::new(0),
            step: AtomicUsize::new(NO_STEP),
            connect_errors: Mutex::new(BTreeMap::new()),
            accepted_topic: Vec::new(),
            drain_at_us: AtomicU64::new(0),
            moved_open: AtomicU64::new(0),
            numbers: Mutex::new(None),
        }
    }

    /// Adds one accepted-push counter per topic.
    pub fn with_topics(mut self, topics: usize) -> Self {
        self.accepted_topic = (0..topics).map(|_| AtomicU64::new(0)).collect();
        self
    }

    /// Sets the numbers the driver accepted (topic and broadcast pushes).
    pub fn set_numbers(&self, n: Option<Numbers>) {
        let mut m = match self.numbers.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        *m = n.map(Arc::new);
    }

    /// The numbers the driver accepted, once set.
    pub fn numbers_now(&self) -> Option<Arc<Numbers>> {
        match self.numbers.lock() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Connect failures by cause so far.
    pub fn connect_errors_now(&self) -> BTreeMap<String, u64> {
        match self.connect_errors.lock() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn note_connect_error(&self, cause: &str) {
        let mut m = match self.connect_errors.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        bump(&mut m, cause);
    }

    /// Microseconds since `start`.
    pub fn since_start_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// The live connection counters, with the pushes `accepted` and their `retries` so far.
    pub fn progress(&self, accepted: u64, retries: u64) -> Progress {
        Progress {
            attempted: self.attempted.load(Relaxed),
            opened: self.opened.load(Relaxed),
            open_now: self.open_now.load(Relaxed),
            failed: self.failed.load(Relaxed),
            disconnected: self.disconnected.load(Relaxed),
            received: self.push_received.load(Relaxed),
            accepted,
            retries,
        }
    }

    /// Distinct deliveries the receivers should have now, given what the API accepted.
    pub fn expected_now(&self, target: Target) -> u64 {
        if target.direct() {
            self.accepted
                .iter()
                .zip(&self.user_sessions)
                .map(|(a, s)| a.load(Relaxed) * s.load(Relaxed) as u64)
                .sum()
        } else {
            self.accepted_total.load(Relaxed) * self.stable_open.load(Relaxed)
        }
    }
}

/// What one event loop thread measured.
pub struct ThreadOut {
    pub handshake: Histogram<u64>,
    pub latency: Histogram<u64>,
    pub connect_errors: BTreeMap<String, u64>,
    pub disconnects: BTreeMap<String, u64>,
    pub close_errors: BTreeMap<String, u64>,
    pub server_errors: BTreeMap<String, u64>,
    pub closed_clean: u64,
    pub open_at_close: u64,
    pub pings_answered: u64,
    pub completeness: Completeness,
    pub receivers_lost: u64,
    pub unnumbered: u64,
    /// Churn closes we began.
    pub churn_disconnects: u64,
    /// Churn reconnects that got `welcome`.
    pub churn_reconnects: u64,
    pub churn_reconnect_errors: BTreeMap<String, u64>,
    /// Connection numbers that churned at least once.
    pub churned_receivers: u64,
    /// Push-to-client latency per capacity step.
    pub step_latency: Vec<Histogram<u64>>,
    /// Resume and deploy: what every tracked stream got.
    pub delivery: crate::resume::Totals,
    /// wss://: handshakes full and resumed.
    pub tls: TlsStats,
    /// Bytes received on the wire and after inflation, compressed frames, deliveries.
    pub wire: WireStats,
}

impl ThreadOut {
    pub fn new() -> Self {
        ThreadOut {
            handshake: util::new_hist(),
            latency: util::new_hist(),
            connect_errors: BTreeMap::new(),
            disconnects: BTreeMap::new(),
            close_errors: BTreeMap::new(),
            server_errors: BTreeMap::new(),
            closed_clean: 0,
            open_at_close: 0,
            pings_answered: 0,
            completeness: Completeness::default(),
            receivers_lost: 0,
            unnumbered: 0,
            churn_disconnects: 0,
            churn_reconnects: 0,
            churn_reconnect_errors: BTreeMap::new(),
            churned_receivers: 0,
            step_latency: Vec::new(),
            delivery: crate::resume::Totals::default(),
            tls: TlsStats::default(),
            wire: WireStats::default(),
        }
    }

    /// Records a latency into the histogram of capacity step `step`.
    pub fn record_step(&mut self, step: usize, us: u64) {
        if step >= self.step_latency.len() {
            // Steps are few (target / step); the bound guards against a stray index.
            if step > 100_000 {
                return;
            }
            self.step_latency.resize_with(step + 1, util::new_hist);
        }
        util::record(&mut self.step_latency[step], us);
    }

    pub fn merge(&mut self, o: ThreadOut) {
        let _ = self.handshake.add(&o.handshake);
        let _ = self.latency.add(&o.latency);
        for (dst, src) in [
            (&mut self.connect_errors, o.connect_errors),
            (&mut self.disconnects, o.disconnects),
            (&mut self.close_errors, o.close_errors),
            (&mut self.server_errors, o.server_errors),
            (&mut self.churn_reconnect_errors, o.churn_reconnect_errors),
        ] {
            merge_counts(dst, src);
        }
        self.closed_clean += o.closed_clean;
        self.open_at_close += o.open_at_close;
        self.pings_answered += o.pings_answered;
        self.completeness.merge(&o.completeness);
        self.receivers_lost += o.receivers_lost;
        self.unnumbered += o.unnumbered;
        self.churn_disconnects += o.churn_disconnects;
        self.churn_reconnects += o.churn_reconnects;
        self.churned_receivers += o.churned_receivers;
        if o.step_latency.len() > self.step_latency.len() {
            self.step_latency
                .resize_with(o.step_latency.len(), util::new_hist);
        }
        for (dst, src) in self.step_latency.iter_mut().zip(&o.step_latency) {
            let _ = dst.add(src);
        }
        self.delivery.merge(&o.delivery);
        self.tls.merge(o.tls);
        self.wire.add(&o.wire);
    }
}

/// Adds the counts of `src` into `dst`.
pub fn merge_counts(dst: &mut BTreeMap<String, u64>, src: BTreeMap<String, u64>) {
    for (k, v) in src {
        *dst.entry(k).or_insert(0) += v;
    }
}

/// Adds one to the count of `k` (allocating its key only the first time).
pub fn bump(m: &mut BTreeMap<String, u64>, k: &str) {
    if let Some(v) = m.get_mut(k) {
        *v += 1;
    } else {
        m.insert(k.to_string(), 1);
    }
}

/// One socket of a connection number: its wire state (with its `F_CHURNED`,
/// `F_RECONNECT`, `F_CHURN_CLOSING` and `F_SECOND` bits in `ws.flags`) and what this
/// scenario tracks.
struct Conn {
    ws: WsConn,
    /// Connection number within this process (its user); a reconnect keeps it.
    serial: u32,
    /// Unique per socket opened by this thread, so a deadline set for an earlier socket
    /// at the same slab key and serial (a churn reconnect) never expires this one.
    incarnation: u32,
    welcome_seq: u64,
    recv: Option<Box<RecvState>>,
}

impl AsMut<WsConn> for Conn {
    fn as_mut(&mut self) -> &mut WsConn {
        &mut self.ws
    }
}

/// This connection number has churned: it no longer counts for completeness.
const F_CHURNED: u8 = 1;
/// This attempt is a churn reconnect.
const F_RECONNECT: u8 = 2;
/// We are closing it to churn it (it reconnects once closed).
const F_CHURN_CLOSING: u8 = 4;
/// This socket goes to the deploy scenario's second server.
const F_SECOND: u8 = 16;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    topics: &'a [String],
    /// Topic patterns the client may publish to (the `chat` scenario).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    publish: &'a [String],
}

/// Signs the HS256 token of user `sub`, valid for `ttl_secs` from now, with the `topics`
/// and `publish` claims (each left out when empty).
pub fn mint_token(
    key: &EncodingKey,
    sub: &str,
    ttl_secs: u64,
    topics: &[String],
    publish: &[String],
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub,
        exp: now.saturating_add(ttl_secs),
        iat: now,
        topics,
        publish,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
}

/// The load generator's own push payload; `pad` and unknown fields are skipped unread.
#[derive(Deserialize, Default)]
struct PushData {
    t: Option<u64>,
    n: Option<u64>,
    s: Option<usize>,
}

struct Ctx {
    cfg: Arc<ClientCfg>,
    sh: Arc<Shared>,
    out: ThreadOut,
    key: EncodingKey,
    closing: bool,
    /// Receivers the server or network disconnected: (user index, what they got), kept
    /// so the final accounting counts what they missed.
    lost: Vec<(u64, Option<Box<RecvState>>)>,
    /// Churning connection numbers now in the slab, to their slab key.
    churn_keys: HashMap<u32, usize>,
    /// Churned connection numbers whose close ended: reconnect them.
    reopen: Vec<u64>,
    /// Sockets opened so far by this thread (the next `Conn::incarnation`).
    opened: u32,
    /// Resume and deploy: each connection number's streams, kept across its sockets.
    book: Option<Box<crate::resume::Book>>,
    /// Connection numbers to reconnect at a time of their own (after a drain hint).
    later: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Pushes counted since the last `flush_tally`.
    tally: Tally,
    /// Topic and broadcast pushes: the numbers the driver accepted, taken when the close
    /// begins (the pushing is over then).
    numbers: Option<Arc<Numbers>>,
}

/// What a thread received since it last told the shared counters: they are told once per
/// turn of its event loop, not per message (that was three atomic writes to cache lines
/// all the threads share, and a clock read, for every message of a broadcast).
#[derive(Default)]
struct Tally {
    /// Push frames received.
    received: u64,
    /// Of which new (not a duplicate) on a connection that counts for completeness.
    unique: u64,
}

impl Ctx {
    /// Adds the pushes counted since the last call to the shared counters, and moves
    /// `last_recv_us` to now. Called at the end of each turn, and before a receiver's
    /// count is taken back out of `push_unique` (which must not run below what was
    /// added).
    fn flush_tally(&mut self) {
        let t = std::mem::take(&mut self.tally);
        if t.received == 0 {
            return;
        }
        let sh = &self.sh;
        sh.push_received.fetch_add(t.received, Relaxed);
        if t.unique > 0 {
            sh.push_unique.fetch_add(t.unique, Relaxed);
        }
        sh.last_recv_us.fetch_max(sh.since_start_us(), Relaxed);
    }
}

/// Starts the event loop threads; each returns what it measured once closed.
pub fn spawn(cfg: Arc<ClientCfg>, sh: Arc<Shared>) -> io::Result<Vec<JoinHandle<ThreadOut>>> {
    let mut hs = Vec::new();
    for tid in 0..cfg.dial.threads {
        let (cfg, sh) = (cfg.clone(), sh.clone());
        hs.push(
            std::thread::Builder::new()
                .name(format!("ws-{tid}"))
                .spawn(move || {
                    let out = run_thread(tid, cfg, sh.clone());
                    sh.threads_done.fetch_add(1, Relaxed);
                    out
                })?,
        );
    }
    Ok(hs)
}

fn run_thread(tid: usize, cfg: Arc<ClientCfg>, sh: Arc<Shared>) -> ThreadOut {
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("throng-load: thread {tid}: poll: {e}");
            let mut out = ThreadOut::new();
            out.connect_errors.insert(format!("poll_{e}"), 1);
            return out;
        }
    };
    let mut events = Events::with_capacity(1024);
    let mut conns: Slab<Conn> = Slab::new();
    let mut inbound = Inbound::new(SCRATCH, cfg.dial.compression);
    let key = match EncodingKey::from_secret(cfg.dial.jwt_secret.as_bytes()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("throng-load: jwt secret: {e}");
            let mut out = ThreadOut::new();
            out.connect_errors.insert("jwt_secret_unusable".into(), 1);
            return out;
        }
    };
    let mut ctx = Ctx {
        key,
        cfg: cfg.clone(),
        sh: sh.clone(),
        out: ThreadOut::new(),
        closing: false,
        lost: Vec::new(),
        churn_keys: HashMap::new(),
        reopen: Vec::new(),
        opened: 0,
        book: cfg
            .streams
            .as_ref()
            .map(|s| Box::new(crate::resume::Book::new(s, cfg.topics.len()))),
        later: BinaryHeap::new(),
        tally: Tally::default(),
        numbers: None,
    };
    let mut churn = crate::churn::Pacer::new(&cfg, tid);
    let mut churn_deadlines: VecDeque<Deadline> = VecDeque::new();
    let threads = cfg.dial.threads.max(1) as u64;
    let mut next_g = tid as u64;
    let mut deadlines: VecDeque<Deadline> = VecDeque::new();
    let mut close_deadline = None;
    let start = sh.start;
    // Pacing restarts where the capacity ramp last raised the allowance.
    let due = |g: u64| {
        let base = start + Duration::from_micros(sh.pace_base_us.load(Relaxed));
        if cfg.dial.connect_rate > 0.0 {
            let k = g.saturating_sub(sh.pace_base_g.load(Relaxed));
            base + Duration::from_secs_f64(k as f64 / cfg.dial.connect_rate)
        } else {
            base
        }
    };
    let limit = || cfg.connections.min(sh.allowed.load(Relaxed));

    loop {
        let now = Instant::now();
        if !ctx.closing && sh.phase.load(Relaxed) == PHASE_CLOSE {
            ctx.closing = true;
            close_deadline = Some(now + cfg.dial.close_timeout);
            begin_close(&mut conns, &poll, &mut ctx);
        }
        if ctx.closing {
            if conns.is_empty() || close_deadline.is_some_and(|d| now >= d) {
                for c in conns.drain() {
                    ctx.finish(c, Some("close_timeout".into()));
                }
                break;
            }
        } else {
            for _ in 0..OPEN_PER_TURN {
                if next_g >= limit() || due(next_g) > now {
                    break;
                }
                if let Some((key, inc)) = open(&mut conns, &poll, &mut ctx, next_g, false) {
                    // The full timeout from this socket's start, not the turn's: a turn
                    // of many opens takes a while.
                    deadlines.push_back((Instant::now() + cfg.dial.handshake_timeout, key, inc));
                }
                next_g += threads;
            }
            // Every cycle that is due, not one per turn: a turn can take longer than the
            // gap between cycles at storm rates. Bounded so sockets still get served.
            for _ in 0..CHURN_PER_TURN {
                if !churn.take(now, &sh) {
                    break;
                }
                let pick = churn.candidates().find_map(|g| {
                    let key = *ctx.churn_keys.get(&g)?;
                    let c = conns.get(key)?;
                    (c.serial == g && c.ws.state == State::Open).then_some(key)
                });
                let Some(key) = pick else {
                    break;
                };
                if ctx.cfg.streams.as_ref().is_some_and(|s| s.abrupt_churn) {
                    drop_abruptly(&mut conns, key, &poll, &mut ctx);
                    continue;
                }
                let c = &mut conns[key];
                let inc = c.incarnation;
                match churn_close(c, &mut ctx) {
                    Ok(()) => churn_deadlines.push_back((now + cfg.dial.close_timeout, key, inc)),
                    Err(e) => {
                        let mut c = conns.remove(key);
                        let _ = poll.registry().deregister(&mut c.ws.stream);
                        ctx.finish(c, Some(io_cause(&e)));
                    }
                }
            }
        }
        expire_due(
            &mut churn_deadlines,
            now,
            &mut conns,
            &poll,
            &mut ctx,
            |c| {
                (c.ws.flags & F_CHURN_CLOSING != 0 && matches!(c.ws.state, State::Closing(_)))
                    // `finish` files a churn close's cause as churn_<cause>.
                    .then_some("close_timeout")
            },
        );
        expire_due(&mut deadlines, now, &mut conns, &poll, &mut ctx, |c| {
            c.ws.handshake_overdue()
        });
        while let Some(&Reverse((at, g))) = ctx.later.peek() {
            if at > now || ctx.closing {
                break;
            }
            ctx.later.pop();
            if let Some((key, inc)) = open(&mut conns, &poll, &mut ctx, g as u64, true) {
                deadlines.push_back((Instant::now() + cfg.dial.handshake_timeout, key, inc));
            }
        }
        let mut timeout = Duration::from_millis(100);
        if let Some(&Reverse((at, _))) = ctx.later.peek() {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if !ctx.closing && next_g < limit() {
            timeout = timeout.min(due(next_g).saturating_duration_since(now));
        }
        if !ctx.closing {
            if let Some(d) = churn.due(&sh) {
                timeout = timeout.min(d.saturating_duration_since(now));
            }
        }
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                eprintln!("throng-load: thread {tid}: poll: {e}");
                break;
            }
        }
        for ev in events.iter() {
            let key = ev.token().0;
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            if let Some(end) = ws_conn::drive(c, &mut inbound, &mut ctx) {
                let mut c = conns.remove(key);
                let _ = poll.registry().deregister(&mut c.ws.stream);
                ctx.finish(c, end);
            }
        }
        ctx.flush_tally();
        for g in std::mem::take(&mut ctx.reopen) {
            if let Some((key, inc)) = open(&mut conns, &poll, &mut ctx, g, true) {
                deadlines.push_back((Instant::now() + cfg.dial.handshake_timeout, key, inc));
            }
        }
    }
    // Anything left (poll failure): count it.
    for c in conns.drain() {
        ctx.finish(c, Some("aborted".into()));
    }
    ctx.flush_tally();
    if let Some(book) = ctx.book.take() {
        ctx.out.delivery = book.finish(&sh, &cfg);
    }
    ctx.out.wire.add(&inbound.rx.stats);
    ctx.out
}

/// Drops open connection `key` the way a lost network does, without a Close frame: the
/// socket is closed with SO_LINGER 0 (a TCP reset), and the connection number reconnects
/// with `since`/`epoch` once its offline time has passed (resume scenario).
fn drop_abruptly(conns: &mut Slab<Conn>, key: usize, poll: &Poll, ctx: &mut Ctx) {
    let mut c = conns.remove(key);
    let _ = poll.registry().deregister(&mut c.ws.stream);
    let _ = socket2::SockRef::from(&c.ws.stream).set_linger(Some(Duration::ZERO));
    let sh = &ctx.sh;
    ctx.churn_keys.remove(&c.serial);
    ctx.out.churn_disconnects += 1;
    sh.churn_inflight.fetch_add(1, Relaxed);
    sh.open_now.fetch_sub(1, Relaxed);
    if c.ws.flags & F_CHURNED == 0 {
        ctx.out.churned_receivers += 1;
        sh.stable_open.fetch_sub(1, Relaxed);
        let u = c.serial as u64 / ctx.cfg.sessions_per_user.max(1);
        if let Some(s) = sh.user_sessions.get(u as usize) {
            s.fetch_sub(1, Relaxed);
        }
    }
    let offline = ctx
        .cfg
        .streams
        .as_ref()
        .map_or(Duration::ZERO, |s| s.offline);
    ctx.later
        .push(Reverse((Instant::now() + offline, c.serial)));
    // dropping `c` resets the connection
}

/// When a socket must have got somewhere: (deadline, slab key, incarnation).
type Deadline = (Instant, usize, u32);

/// Pops the deadlines due at `now` (the queue is in time order) and ends each socket
/// still at its deadline's incarnation for which `overdue` names a cause.
fn expire_due(
    q: &mut VecDeque<Deadline>,
    now: Instant,
    conns: &mut Slab<Conn>,
    poll: &Poll,
    ctx: &mut Ctx,
    overdue: impl Fn(&Conn) -> Option<&'static str>,
) {
    while let Some(&(d, key, inc)) = q.front() {
        if d > now {
            break;
        }
        q.pop_front();
        let cause = conns
            .get(key)
            .filter(|c| c.incarnation == inc)
            .and_then(&overdue);
        if let Some(cause) = cause {
            let mut c = conns.remove(key);
            let _ = poll.registry().deregister(&mut c.ws.stream);
            ctx.finish(c, Some(cause.into()));
        }
    }
}

/// Opens connection number `g` of this process (again, for a churn `reconnect`); `None`
/// when it failed at once.
fn open(
    conns: &mut Slab<Conn>,
    poll: &Poll,
    ctx: &mut Ctx,
    g: u64,
    reconnect: bool,
) -> Option<(usize, u32)> {
    let cfg = &ctx.cfg;
    if !reconnect {
        ctx.sh.attempted.fetch_add(1, Relaxed);
    }
    let started = Instant::now();
    let fail = |ctx: &mut Ctx, cause: String| {
        ctx.handshake_failed(reconnect, &cause);
        None
    };
    let (url, query, second) = match ctx.book.as_deref() {
        Some(b) => {
            let (url, second) = b.url_for(g as u32, cfg.dial.url_for(g));
            (url, b.user_query(g as u32), second)
        }
        None => (cfg.dial.url_for(g), None, false),
    };
    let tls = match cfg.dial.tls_for(url) {
        Ok(t) => t,
        Err(cause) => return fail(ctx, cause),
    };
    let mut stream = match ws_conn::connect(url.addr, cfg.dial.source_for(g)) {
        Ok(s) => s,
        Err(cause) => return fail(ctx, cause),
    };
    if tls.is_some() {
        ctx.out.tls.attempts += 1;
    }
    if cfg.dial.compression {
        ctx.out.wire.offered += 1;
    }
    let entry = conns.vacant_entry();
    let key = entry.key();
    if let Err(e) = poll.registry().register(
        &mut stream,
        Token(key),
        Interest::READABLE | Interest::WRITABLE,
    ) {
        return fail(ctx, format!("register_{}", io_cause(&e)));
    }
    let user = cfg.user_offset + g / cfg.sessions_per_user.max(1);
    let sub = format!("u{user}");
    let token = match mint_token(&ctx.key, &sub, cfg.dial.token_ttl_secs, &cfg.claim, &[]) {
        Ok(t) => t,
        Err(e) => {
            let _ = poll.registry().deregister(&mut stream);
            return fail(ctx, format!("jwt_{e}"));
        }
    };
    let path = match query {
        Some(q) if url.path.contains('?') => format!("{}&{q}", url.path),
        Some(q) => format!("{}?{q}", url.path),
        None => url.path.clone(),
    };
    let serial = g as u32;
    let incarnation = ctx.opened;
    ctx.opened = ctx.opened.wrapping_add(1);
    let churner = cfg
        .churn
        .is_some_and(|ch| crate::churn::is_churner(g, ch.fraction));
    if churner {
        ctx.churn_keys.insert(serial, key);
    }
    let mut ws = WsConn::upgrading(
        stream,
        started,
        &path,
        &url.authority,
        &token,
        tls,
        cfg.dial.compression,
    );
    ws.flags = if reconnect {
        F_CHURNED | F_RECONNECT
    } else {
        0
    } | if second { F_SECOND } else { 0 };
    entry.insert(Conn {
        ws,
        serial,
        incarnation,
        welcome_seq: 0,
        recv: None,
    });
    Some((key, incarnation))
}

impl Handler<Conn> for Ctx {
    fn on_text(&mut self, c: &mut Conn, text: &[u8]) -> Result<(), End> {
        on_message(c, text, self)
    }

    fn on_binary(&mut self) {
        bump(&mut self.out.server_errors, "binary_message");
    }

    fn on_ping(&mut self) {
        self.out.pings_answered += 1;
    }

    fn on_tls(&mut self, done: &tls::Done) {
        self.out.tls.record(done);
    }
}

fn on_message(c: &mut Conn, text: &[u8], ctx: &mut Ctx) -> Result<(), End> {
    let Some(msg) = ServerMsg::<PushData>::parse(text) else {
        bump(&mut ctx.out.server_errors, "unparsable_message");
        return Ok(());
    };
    match &*msg.ty {
        "welcome" if c.ws.state == State::Welcome => {
            c.ws.state = State::Open;
            c.welcome_seq = msg.seq.unwrap_or(0);
            let sh = &ctx.sh;
            if c.ws.flags & F_RECONNECT != 0 {
                ctx.out.churn_reconnects += 1;
                sh.churn_reconnects.fetch_add(1, Relaxed);
                sh.churn_inflight.fetch_sub(1, Relaxed);
            } else {
                util::record(
                    &mut ctx.out.handshake,
                    c.ws.started.elapsed().as_micros() as u64,
                );
                sh.opened.fetch_add(1, Relaxed);
                sh.last_welcome_us.fetch_max(sh.since_start_us(), Relaxed);
            }
            sh.open_now.fetch_add(1, Relaxed);
            if c.ws.flags & F_CHURNED == 0 {
                sh.stable_open.fetch_add(1, Relaxed);
                let u = c.serial as u64 / ctx.cfg.sessions_per_user.max(1);
                if let Some(s) = sh.user_sessions.get(u as usize) {
                    s.fetch_add(1, Relaxed);
                }
            }
            if let Some(b) = ctx.book.as_deref_mut() {
                let epoch = msg.epoch.as_deref().unwrap_or("");
                b.on_welcome(c.serial, c.welcome_seq, epoch, msg.resumed);
                if c.ws.flags & F_SECOND != 0 {
                    sh.moved_open.fetch_add(1, Relaxed);
                    let drain_at = sh.drain_at_us.load(Relaxed);
                    b.count_move(sh.since_start_us().saturating_sub(drain_at));
                }
            }
            for (i, t) in ctx.cfg.topics.iter().enumerate() {
                let m = match ctx.book.as_deref() {
                    Some(b) => b.subscribe_msg(c.serial, i, t),
                    None => crate::resume::subscribe_json(t, None),
                };
                c.ws.send(OP_TEXT, m.as_bytes());
            }
        }
        "push" if ctx.book.is_some() && matches!(c.ws.state, State::Open | State::Closing(_)) => {
            ctx.tally.received += 1;
            ctx.out.wire.deliveries += 1;
            let topic = msg.topic.as_deref();
            let first = match (ctx.book.as_deref_mut(), msg.seq) {
                (Some(b), Some(seq)) => {
                    let named = (seq, msg.epoch.as_deref());
                    b.on_push(c.serial, topic, named, &ctx.cfg.topics)
                }
                _ => {
                    ctx.out.unnumbered += 1;
                    false
                }
            };
            if first {
                ctx.tally.unique += 1;
            }
            if let Some(t) = msg.data.and_then(|d| d.t) {
                util::record(&mut ctx.out.latency, util::since_us(t));
            }
        }
        "reconnect" => {
            if let Some(b) = ctx.book.as_deref_mut() {
                b.on_hint(c.serial, msg.after_ms.unwrap_or(0));
            }
        }
        "push" if matches!(c.ws.state, State::Open | State::Closing(_)) => {
            let st = c
                .recv
                .get_or_insert_with(|| Box::new(RecvState::new(c.welcome_seq)));
            let data = msg.data.unwrap_or_default();
            // Only the user stream's `seq` is tracked; topic pushes count by their payload.
            let new = if let Some(seq) = msg.seq.filter(|_| msg.topic.is_none()) {
                st.record_seq(seq)
            } else if let Some(n) = data.n {
                let s = data.s.unwrap_or(0).min(crate::track::MAX_STREAMS - 1);
                st.record_counter(s, n)
            } else {
                st.received += 1;
                ctx.out.unnumbered += 1;
                false
            };
            ctx.tally.received += 1;
            ctx.out.wire.deliveries += 1;
            if new && c.ws.flags & F_CHURNED == 0 {
                ctx.tally.unique += 1;
            }
            if let Some(t) = data.t {
                let us = util::since_us(t);
                util::record(&mut ctx.out.latency, us);
                let step = ctx.sh.step.load(Relaxed);
                if step != NO_STEP {
                    ctx.out.record_step(step, us);
                }
            }
        }
        "subscribed" => {
            ctx.sh.subscribed.fetch_add(1, Relaxed);
            if let (Some(b), Some(topic)) = (ctx.book.as_deref_mut(), msg.topic.as_deref()) {
                let epoch = msg.epoch.as_deref().unwrap_or("");
                let seq = msg.seq.unwrap_or(0);
                b.on_subscribed(c.serial, topic, seq, epoch, msg.resumed, &ctx.cfg.topics);
            }
        }
        "error" => {
            let code = msg.code.as_deref().unwrap_or("unknown");
            bump(&mut ctx.out.server_errors, &format!("error_{code}"));
        }
        _ => {}
    }
    Ok(())
}

/// Starts a clean close on every connection. A push receiver keeps counting until its
/// close ends (the server's Close, or the close timeout): what arrives meanwhile came
/// after the drain and counts as late, not missing ([`Ctx::finish`] accounts it).
fn begin_close(conns: &mut Slab<Conn>, poll: &Poll, ctx: &mut Ctx) {
    let mut dead = Vec::new();
    for (key, c) in conns.iter_mut() {
        if matches!(c.ws.state, State::Closing(_)) {
            continue; // a churn close under way ends by itself, and is not reopened
        }
        if c.ws.state != State::Open {
            dead.push((key, "not_open_at_close".to_string()));
            continue;
        }
        ctx.out.open_at_close += 1;
        if ctx.cfg.target.is_some() && c.ws.flags & F_CHURNED == 0 {
            let welcome = c.welcome_seq;
            c.recv
                .get_or_insert_with(|| Box::new(RecvState::new(welcome)))
                .draining = true;
        } else {
            c.recv = None;
        }
        c.ws.flags &= !F_CHURN_CLOSING;
        if let Err(e) = c.ws.start_close() {
            dead.push((key, io_cause(&e)));
        }
    }
    for (key, cause) in dead {
        let mut c = conns.remove(key);
        let _ = poll.registry().deregister(&mut c.ws.stream);
        ctx.finish(c, Some(cause));
    }
    // Reconnects still waiting for their time will not happen now.
    for Reverse((_, g)) in std::mem::take(&mut ctx.later) {
        ctx.sh.churn_inflight.fetch_sub(1, Relaxed);
        if let Some(b) = ctx.book.as_deref_mut() {
            b.not_reconnected(g);
        }
    }
    // Receivers the server dropped are judged against the same final counts.
    ctx.numbers = ctx.sh.numbers_now();
    for (u, st) in std::mem::take(&mut ctx.lost) {
        let expected = ctx.expected_for(u);
        let judge = judge(&ctx.cfg, ctx.numbers.as_deref());
        ctx.out
            .completeness
            .add_conn(expected, st.as_deref(), judge);
    }
}

/// Begins a churn cycle on open connection `c`: a clean close, then a reconnect once the
/// server has answered it.
fn churn_close(c: &mut Conn, ctx: &mut Ctx) -> io::Result<()> {
    ctx.flush_tally();
    let sh = &ctx.sh;
    if c.ws.flags & F_CHURNED == 0 {
        // From now on this connection number no longer counts for completeness.
        c.ws.flags |= F_CHURNED;
        ctx.out.churned_receivers += 1;
        sh.stable_open.fetch_sub(1, Relaxed);
        let u = c.serial as u64 / ctx.cfg.sessions_per_user.max(1);
        if let Some(s) = sh.user_sessions.get(u as usize) {
            s.fetch_sub(1, Relaxed);
        }
        if let Some(st) = c.recv.as_deref() {
            sh.push_unique.fetch_sub(st.unique(), Relaxed);
        }
    }
    c.recv = None;
    c.ws.flags |= F_CHURN_CLOSING;
    ctx.out.churn_disconnects += 1;
    sh.churn_inflight.fetch_add(1, Relaxed);
    c.ws.start_close()
}

/// How a receiver's delivery is judged: direct pushes by `seq`, topic and broadcast
/// pushes by the `numbers` the driver accepted (by count when they are not known).
fn judge<'a>(cfg: &ClientCfg, numbers: Option<&'a Numbers>) -> Judge<'a> {
    match (cfg.target, numbers) {
        (Some(t), _) if t.direct() => Judge::Direct,
        (_, Some(n)) => Judge::Numbers(n),
        _ => Judge::Count,
    }
}

impl Ctx {
    /// Direct pushes accepted for local user `u`, or topic/broadcast pushes in all.
    fn expected_for(&self, u: u64) -> u64 {
        match self.cfg.target {
            Some(t) if t.direct() => self
                .sh
                .accepted
                .get(u as usize)
                .map_or(0, |a| a.load(Relaxed)),
            Some(_) => self.sh.accepted_total.load(Relaxed),
            None => 0,
        }
    }

    /// Counts an attempt that ended before `welcome`.
    fn handshake_failed(&mut self, reconnect: bool, cause: &str) {
        if reconnect {
            bump(&mut self.out.churn_reconnect_errors, cause);
            self.sh.churn_inflight.fetch_sub(1, Relaxed);
        } else {
            bump(&mut self.out.connect_errors, cause);
            self.sh.note_connect_error(cause);
            self.sh.failed.fetch_add(1, Relaxed);
        }
    }

    fn finish(&mut self, mut c: Conn, end: End) {
        self.flush_tally();
        let sh = self.sh.clone();
        let was_open = matches!(c.ws.state, State::Open | State::Closing(_));
        let counted = c.ws.flags & F_CHURNED == 0;
        let u = c.serial as u64 / self.cfg.sessions_per_user.max(1);
        self.churn_keys.remove(&c.serial);
        match c.ws.state {
            State::Connecting | State::Upgrading | State::Welcome => {
                self.handshake_failed(
                    c.ws.flags & F_RECONNECT != 0,
                    end.as_deref().unwrap_or("closed"),
                );
            }
            State::Open
                if !self.closing
                    && self
                        .book
                        .as_deref()
                        .is_some_and(|b| b.follows_drain(end.as_deref())) =>
            {
                // A draining server's turn for this connection: reconnect elsewhere when
                // its hint says, plus jitter.
                if let Some(b) = self.book.as_deref_mut() {
                    let at = b.on_drain_close(c.serial, Instant::now());
                    self.later.push(Reverse((at, c.serial)));
                    sh.churn_inflight.fetch_add(1, Relaxed);
                }
            }
            State::Open => {
                bump(
                    &mut self.out.disconnects,
                    end.as_deref().unwrap_or("closed"),
                );
                sh.disconnected.fetch_add(1, Relaxed);
                if self.cfg.target.is_some() && counted {
                    // It was meant to stay up: what it never got counts as missing.
                    self.out.receivers_lost += 1;
                    if let Some(st) = c.recv.as_deref() {
                        sh.push_unique.fetch_sub(st.unique(), Relaxed);
                    }
                    self.lost.push((u, c.recv.take()));
                }
            }
            State::Closing(_) if c.ws.flags & F_CHURN_CLOSING != 0 => {
                if let Some(cause) = end {
                    bump(&mut self.out.close_errors, &format!("churn_{cause}"));
                }
                if self.closing {
                    sh.churn_inflight.fetch_sub(1, Relaxed);
                } else {
                    self.reopen.push(c.serial as u64);
                }
            }
            State::Closing(_) => {
                if self.cfg.target.is_some() && counted {
                    // Its close has ended: what it got is final (late included).
                    let expected = self.expected_for(u);
                    let judge = judge(&self.cfg, self.numbers.as_deref());
                    self.out
                        .completeness
                        .add_conn(expected, c.recv.as_deref(), judge);
                }
                match end {
                    None => self.out.closed_clean += 1,
                    Some(cause) => bump(&mut self.out.close_errors, &cause),
                }
            }
        }
        if was_open {
            if c.ws.flags & F_SECOND != 0 {
                sh.moved_open.fetch_sub(1, Relaxed);
            }
            sh.open_now.fetch_sub(1, Relaxed);
            if counted {
                sh.stable_open.fetch_sub(1, Relaxed);
                if let Some(s) = sh.user_sessions.get(u as usize) {
                    s.fetch_sub(1, Relaxed);
                }
            }
        }
        // dropping `c` closes the socket
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{self, Frame, OP_BINARY, OP_CONT};

    #[test]
    fn target_names_are_the_flag_values() {
        use clap::ValueEnum;
        for t in Target::value_variants() {
            assert_eq!(t.to_possible_value().unwrap().get_name(), t.name());
        }
    }

    #[test]
    fn push_message_parsing_skips_pad() {
        let m = ServerMsg::<PushData>::parse(
            br#"{"type":"push","data":{"t":5,"n":7,"s":1,"pad":"xxxxxxxx"},"ts":1,"seq":3}"#,
        )
        .unwrap();
        assert_eq!(m.ty, "push");
        assert_eq!(m.seq, Some(3));
        let d = m.data.unwrap();
        assert_eq!((d.t, d.n, d.s), (Some(5), Some(7), Some(1)));
        // Someone else's payload: a push without our data.
        let l = ServerMsg::<PushData>::parse(br#"{"type":"push","data":"hello","seq":2}"#);
        assert!(l.is_some_and(|l| l.seq == Some(2) && l.data.is_none()));
    }

    fn test_ctx() -> Ctx {
        let cfg = ClientCfg {
            dial: DialCfg {
                urls: vec![util::parse_ws_url("ws://127.0.0.1:1/ws").unwrap()],
                connect_rate: 0.0,
                threads: 1,
                source_ips: Vec::new(),
                source_start: 0,
                jwt_secret: "secret".into(),
                token_ttl_secs: 60,
                handshake_timeout: Duration::from_secs(1),
                close_timeout: Duration::from_secs(1),
                tls: None,
                compression: false,
            },
            connections: 1,
            sessions_per_user: 1,
            user_offset: 0,
            topics: Vec::new(),
            claim: Vec::new(),
            target: Some(Target::User),
            churn: None,
            streams: None,
        };
        Ctx {
            cfg: Arc::new(cfg),
            sh: Arc::new(Shared::new(1)),
            out: ThreadOut::new(),
            key: EncodingKey::from_secret(b"secret").unwrap(),
            closing: false,
            lost: Vec::new(),
            churn_keys: HashMap::new(),
            reopen: Vec::new(),
            opened: 0,
            book: None,
            later: BinaryHeap::new(),
            tally: Tally::default(),
            numbers: None,
        }
    }

    /// An open connection on a loopback socket (never read or written here).
    fn test_conn() -> (Conn, std::net::TcpListener) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut ws = WsConn::upgrading(
            mio::net::TcpStream::from_std(s),
            Instant::now(),
            "/ws",
            "127.0.0.1",
            "t",
            None,
            false,
        );
        ws.state = State::Open;
        let c = Conn {
            ws,
            serial: 0,
            incarnation: 0,
            welcome_seq: 0,
            recv: None,
        };
        (c, l)
    }

    fn fr(fin: bool, opcode: u8, payload: &[u8]) -> Frame<'_> {
        Frame {
            fin,
            rsv1: false,
            opcode,
            payload,
        }
    }

    #[test]
    fn fragmented_binary_is_not_a_push() {
        let (mut c, _l) = test_conn();
        let mut ctx = test_ctx();
        let mut rx = ws_conn::Rx::new(false);
        let push = br#"{"type":"push","seq":1,"data":{"t":1}}"#;
        ws_conn::on_frame(&mut c, fr(false, OP_BINARY, &push[..10]), &mut rx, &mut ctx).unwrap();
        ws_conn::on_frame(&mut c, fr(true, OP_CONT, &push[10..]), &mut rx, &mut ctx).unwrap();
        assert_eq!(ctx.out.server_errors.get("binary_message"), Some(&1));
        assert_eq!(ctx.sh.push_received.load(Relaxed), 0);
        assert!(c.recv.is_none());
        // A fragmented text push after it still counts.
        ws_conn::on_frame(&mut c, fr(false, OP_TEXT, &push[..10]), &mut rx, &mut ctx).unwrap();
        ws_conn::on_frame(&mut c, fr(true, OP_CONT, &push[10..]), &mut rx, &mut ctx).unwrap();
        assert_eq!(
            ctx.sh.push_received.load(Relaxed),
            0,
            "told at the end of the turn"
        );
        ctx.flush_tally();
        assert_eq!(ctx.sh.push_received.load(Relaxed), 1);
        assert_eq!(ctx.sh.push_unique.load(Relaxed), 1);
        assert_eq!(c.recv.as_ref().map(|r| r.unique()), Some(1));
        // The same push again: received, not new.
        ws_conn::on_frame(&mut c, fr(true, OP_TEXT, push), &mut rx, &mut ctx).unwrap();
        ctx.flush_tally();
        assert_eq!(ctx.sh.push_received.load(Relaxed), 2);
        assert_eq!(ctx.sh.push_unique.load(Relaxed), 1);
    }

    #[test]
    fn fragmented_message_is_bounded() {
        let (mut c, _l) = test_conn();
        let mut ctx = test_ctx();
        let mut rx = ws_conn::Rx::new(false);
        let big = vec![b' '; frame::MAX_FRAME as usize];
        ws_conn::on_frame(&mut c, fr(false, OP_TEXT, &big), &mut rx, &mut ctx).unwrap();
        let r = ws_conn::on_frame(&mut c, fr(false, OP_CONT, b"x"), &mut rx, &mut ctx);
        assert!(
            matches!(&r, Err(Some(e)) if e.contains("too large")),
            "{r:?}"
        );
    }

    #[test]
    fn idle_conn_is_small() {
        // A ws:// connection pays 8 bytes for the empty TLS pointer (120 bytes before
        // wss://); a wss:// one adds its boxed rustls session (and its buffers) beside
        // the slab. Debug builds of mio keep a selector id beside each socket (16 more).
        assert_eq!(std::mem::size_of::<Option<Box<TlsConn>>>(), 8);
        let limit = if cfg!(debug_assertions) { 144 } else { 128 };
        assert!(
            std::mem::size_of::<Conn>() <= limit,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }
}
