//! throng-load: the load generator for Throng.
//!
//! `connect` opens and holds many WebSocket connections and measures connect rate,
//! handshake latency, failures and (with `--server-pid`) memory per connection. `push`
//! holds connections and drives the push API, measuring delivery completeness and
//! push-to-client latency. `--procs K` runs K worker processes over disjoint user ranges
//! and source addresses and merges their results.

mod client;
mod frame;
mod push;
mod report;
mod track;
mod util;

use clap::{Args, Parser, Subcommand};
use client::{ClientCfg, Shared, Target, ThreadOut, PHASE_CLOSE};
use push::{PushCfg, PushOut, PushProgress};
use report::{Mem, Report};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "throng-load",
    version,
    about = "Load generator for the Throng push server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Open, hold and cleanly close WebSocket connections.
    Connect(ConnectArgs),
    /// Hold connections and drive the push API; measure delivery and latency.
    Push(PushArgs),
}

#[derive(Args, Debug, Clone)]
struct ConnectArgs {
    /// WebSocket URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8700/ws")]
    url: String,
    /// Connections to open (in all, across --procs).
    #[arg(long, default_value_t = 1000)]
    connections: u64,
    /// Connection attempts per second (in all); 0 = as fast as possible.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    /// HS256 secret for the tokens.
    #[arg(long, env = "THRONG_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Sessions per user: connection i is user u{offset + i / sessions_per_user}.
    #[arg(long, default_value_t = 1)]
    sessions_per_user: u64,
    /// First user number.
    #[arg(long, default_value_t = 0)]
    user_offset: u64,
    /// Topics every connection subscribes to after welcome (comma separated); also put in
    /// the token's `topics` claim.
    #[arg(long, value_delimiter = ',')]
    topics: Vec<String>,
    /// Source addresses, bound round-robin before connect: 127.0.0.2-127.0.0.9,10.0.0.1.
    #[arg(long)]
    source_ips: Option<String>,
    /// Event loop threads (per process); default: the number of cores (divided by --procs).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds to hold the connections once up (default: 10 for connect, 0 for push).
    #[arg(long)]
    hold_secs: Option<f64>,
    /// Seconds to wait after the last connection before measuring and holding.
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
    /// Connect + upgrade + welcome deadline per connection.
    #[arg(long, default_value_t = 10.0)]
    handshake_timeout_secs: f64,
    /// How long the clean close may take in all.
    #[arg(long, default_value_t = 10.0)]
    close_timeout_secs: f64,
    /// Token lifetime.
    #[arg(long, default_value_t = 3600)]
    token_ttl_secs: u64,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Server process to measure RSS of (and kernel TCP memory) per connection.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Worker processes over disjoint user ranges and source addresses.
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Internal: run as a worker of a --procs parent (commands on stdin, results on stdout).
    #[arg(long, hide = true)]
    worker: bool,
}

#[derive(Args, Debug, Clone)]
struct PushArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Push API base URL.
    #[arg(long, default_value = "http://127.0.0.1:8701")]
    api: String,
    /// Push API key.
    #[arg(long, env = "THRONG_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Pushes per second (in all); 0 = as fast as the API answers.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long to push.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Stop after this many pushes (in all) even if time is left.
    #[arg(long)]
    count: Option<u64>,
    /// Push target.
    #[arg(long, value_enum, default_value_t = Target::User)]
    target: Target,
    /// Length of the `pad` string in each push's data.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Pushes per request; above 1 uses POST /v1/push/batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Parallel keep-alive API connections (per pushing process).
    #[arg(long, default_value_t = 4)]
    api_concurrency: usize,
    /// Users per push with --target users.
    #[arg(long, default_value_t = 10)]
    users_per_push: usize,
    /// After the last push, wait at most this long for deliveries.
    #[arg(long, default_value_t = 10.0)]
    drain_secs: f64,
}

fn main() {
    let cli = Cli::parse();
    let res = match &cli.cmd {
        Cmd::Connect(c) => entry(c, None),
        Cmd::Push(p) => entry(&p.conn, Some(p)),
    };
    match res {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("throng-load: {e}");
            std::process::exit(2);
        }
    }
}

fn secs(x: f64) -> Duration {
    Duration::from_secs_f64(x.clamp(0.0, 1e7))
}

fn entry(c: &ConnectArgs, p: Option<&PushArgs>) -> Result<i32, String> {
    validate(c, p)?;
    util::parse_url(&c.url, "ws", 80).map_err(|e| format!("--url: {e}"))?;
    let mut rep = if c.worker {
        return run_worker(c, p).map(|_| 0);
    } else if c.procs > 1 {
        run_parent(c, p)?
    } else {
        run_single(c, p)?
    };
    println!("{}", rep.summary().trim_end());
    rep.strip_raw();
    if let Some(path) = &c.json {
        let j = serde_json::to_string_pretty(&rep).map_err(|e| e.to_string())?;
        std::fs::write(path, j + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("throng-load: wrote {}", path.display());
    }
    Ok(0)
}

fn validate(c: &ConnectArgs, p: Option<&PushArgs>) -> Result<(), String> {
    if c.sessions_per_user == 0 {
        return Err("--sessions-per-user must be at least 1".into());
    }
    if c.connections > u32::MAX as u64 {
        return Err("--connections too large".into());
    }
    if c.procs == 0 || c.procs > 64 {
        return Err("--procs must be 1 to 64".into());
    }
    if c.connect_rate < 0.0 {
        return Err("--connect-rate must not be negative".into());
    }
    if let Some(p) = p {
        if p.target == Target::Topic && c.topics.is_empty() {
            return Err("--target topic needs --topics".into());
        }
        if p.count.is_none() && p.duration_secs <= 0.0 {
            return Err("give --duration-secs or --count".into());
        }
        util::parse_url(&p.api, "http", 80).map_err(|e| format!("--api: {e}"))?;
        if p.batch == 0 || p.api_concurrency == 0 {
            return Err("--batch and --api-concurrency must be at least 1".into());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// One process: the connections, the driver and the phases.

/// Parent commands when running as a worker.
struct WorkerIo {
    rx: mpsc::Receiver<String>,
}

impl WorkerIo {
    fn send(line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

struct Local {
    cfg: Arc<ClientCfg>,
    sh: Arc<Shared>,
    handles: Vec<JoinHandle<ThreadOut>>,
    worker: bool,
    last_tick: Instant,
    prog: Arc<PushProgress>,
}

impl Local {
    fn start(c: &ConnectArgs, p: Option<&PushArgs>, worker: bool) -> Result<Local, String> {
        let nofile = util::raise_nofile_limit();
        let need = c.connections + 64 + p.map_or(0, |p| p.api_concurrency as u64);
        if need > nofile {
            return Err(format!(
                "{} connections need about {need} open files, but RLIMIT_NOFILE is {nofile}; \
                 use --procs {}",
                c.connections,
                (c.connections + 64 + 200).div_ceil(nofile.saturating_sub(200).max(1))
            ));
        }
        let url = util::parse_url(&c.url, "ws", 80)?;
        let source_ips = match &c.source_ips {
            Some(s) => util::parse_source_ips(s)?,
            None => Vec::new(),
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = c
            .threads
            .unwrap_or(cores)
            .clamp(1, 256)
            .min(c.connections.max(1) as usize);
        let cfg = Arc::new(ClientCfg {
            url,
            connections: c.connections,
            connect_rate: c.connect_rate,
            threads,
            sessions_per_user: c.sessions_per_user,
            user_offset: c.user_offset,
            topics: c.topics.clone(),
            source_ips,
            jwt_secret: c.jwt_secret.clone(),
            token_ttl_secs: c.token_ttl_secs,
            handshake_timeout: secs(c.handshake_timeout_secs),
            close_timeout: secs(c.close_timeout_secs),
            target: p.map(|p| p.target),
        });
        let sh = Arc::new(Shared::new(cfg.num_users()));
        let handles =
            client::spawn(cfg.clone(), sh.clone()).map_err(|e| format!("threads: {e}"))?;
        Ok(Local {
            cfg,
            sh,
            handles,
            worker,
            last_tick: Instant::now(),
            prog: Arc::new(PushProgress::default()),
        })
    }

    /// Prints a progress line once a second (stderr; stdout `PROGRESS` lines as a worker).
    fn tick(&mut self) {
        if self.last_tick.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_tick = Instant::now();
        let s = &self.sh;
        let v = Progress {
            attempted: s.attempted.load(Relaxed),
            opened: s.opened.load(Relaxed),
            open_now: s.open_now.load(Relaxed),
            failed: s.failed.load(Relaxed),
            disconnected: s.disconnected.load(Relaxed),
            received: s.push_received.load(Relaxed),
            accepted: self.prog.accepted.load(Relaxed),
            retries: self.prog.retries.load(Relaxed),
        };
        if self.worker {
            WorkerIo::send(&format!("PROGRESS {}", v.encode()));
        } else {
            eprintln!("[{:7.1}s] {}", s.start.elapsed().as_secs_f64(), v.line());
        }
    }

    fn sleep_ticking(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
            self.tick();
        }
    }

    /// Waits until every connection attempt has succeeded or failed (bounded).
    fn wait_connected(&mut self) {
        let n = self.cfg.connections;
        let pace = if self.cfg.connect_rate > 0.0 {
            n as f64 / self.cfg.connect_rate
        } else {
            0.0
        };
        let deadline =
            Instant::now() + secs(pace) + self.cfg.handshake_timeout + Duration::from_secs(5);
        while Instant::now() < deadline {
            let s = &self.sh;
            if s.opened.load(Relaxed) + s.failed.load(Relaxed) >= n
                || s.threads_done.load(Relaxed) as usize >= self.cfg.threads
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            self.tick();
        }
        if !self.cfg.topics.is_empty() {
            let per = self.cfg.topics.len() as u64;
            let want = move |s: &Shared| s.open_now.load(Relaxed) * per;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && self.sh.subscribed.load(Relaxed) < want(&self.sh) {
                std::thread::sleep(Duration::from_millis(20));
                self.tick();
            }
        }
    }

    fn connect_secs(&self) -> f64 {
        self.sh.last_welcome_us.load(Relaxed) as f64 / 1e6
    }

    fn push(&mut self, p: &PushArgs, rate: f64, count: Option<u64>) -> PushOut {
        let cfg = Arc::new(PushCfg {
            api: util::parse_url(&p.api, "http", 80).expect("validated --api"),
            api_key: p.api_key.clone(),
            rate,
            duration: secs(p.duration_secs),
            count,
            target: p.target,
            payload_bytes: p.payload_bytes,
            batch: p.batch,
            concurrency: p.api_concurrency,
            users_per_push: p.users_per_push,
            topics: self.cfg.topics.clone(),
            user_offset: self.cfg.user_offset,
            num_users: self.cfg.num_users(),
            retry_grace: Duration::from_secs(10),
        });
        let (sh, prog) = (self.sh.clone(), self.prog.clone());
        let h = std::thread::spawn(move || push::run(cfg, sh, prog));
        while !h.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            self.tick();
        }
        h.join().unwrap_or_else(|_| {
            let mut o = PushOut::new();
            o.errors.insert("driver_panicked".into(), 1);
            o
        })
    }

    /// Waits until receivers have what the API accepted, or `max`.
    fn drain(&mut self, target: Target, max: Duration) {
        let end = Instant::now() + max;
        while Instant::now() < end {
            if self.sh.push_unique.load(Relaxed) >= self.sh.expected_now(target) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            self.tick();
        }
    }

    /// Closes every connection cleanly and collects the threads' measurements.
    fn close(self) -> ThreadOut {
        self.sh.phase.store(PHASE_CLOSE, Relaxed);
        let mut all = None::<ThreadOut>;
        for h in self.handles {
            if let Ok(o) = h.join() {
                match all.as_mut() {
                    Some(a) => a.merge(o),
                    None => all = Some(o),
                }
            }
        }
        all.unwrap_or_else(|| {
            let mut o = ThreadOut::new();
            o.connect_errors.insert("thread_panicked".into(), 1);
            o
        })
    }
}

#[derive(Default, Clone, Copy)]
struct Progress {
    attempted: u64,
    opened: u64,
    open_now: u64,
    failed: u64,
    disconnected: u64,
    received: u64,
    accepted: u64,
    retries: u64,
}

impl Progress {
    fn encode(&self) -> String {
        format!(
            "{} {} {} {} {} {} {} {}",
            self.attempted,
            self.opened,
            self.open_now,
            self.failed,
            self.disconnected,
            self.received,
            self.accepted,
            self.retries
        )
    }
    fn decode(s: &str) -> Option<Progress> {
        let v: Vec<u64> = s
            .split_whitespace()
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        if v.len() != 8 {
            return None;
        }
        Some(Progress {
            attempted: v[0],
            opened: v[1],
            open_now: v[2],
            failed: v[3],
            disconnected: v[4],
            received: v[5],
            accepted: v[6],
            retries: v[7],
        })
    }
    fn add(&mut self, o: &Progress) {
        self.attempted += o.attempted;
        self.opened += o.opened;
        self.open_now += o.open_now;
        self.failed += o.failed;
        self.disconnected += o.disconnected;
        self.received += o.received;
        self.accepted += o.accepted;
        self.retries += o.retries;
    }
    fn line(&self) -> String {
        let mut s = format!(
            "attempted {} opened {} open {} failed {} disconnected {}",
            self.attempted, self.opened, self.open_now, self.failed, self.disconnected
        );
        if self.accepted > 0 || self.received > 0 {
            s += &format!(
                " | pushes accepted {} retries {} | received {}",
                self.accepted, self.retries, self.received
            );
        }
        s
    }
}

/// The whole run in this process (no workers).
fn run_single(c: &ConnectArgs, p: Option<&PushArgs>) -> Result<Report, String> {
    if let Some(pid) = c.server_pid {
        if util::read_rss_bytes(&pid.to_string()).is_none() {
            return Err(format!(
                "--server-pid {pid}: no such process (or no /proc/{pid}/status)"
            ));
        }
    }
    let mem0 = Mem::read(c.server_pid);
    let own0 = util::read_rss_bytes("self").unwrap_or(0);
    let mut l = Local::start(c, p, false)?;
    eprintln!(
        "throng-load: {} connections to {} at {}/s on {} threads{}",
        c.connections,
        c.url,
        c.connect_rate,
        l.cfg.threads,
        if l.cfg.source_ips.is_empty() {
            String::new()
        } else {
            format!(" from {} source addresses", l.cfg.source_ips.len())
        }
    );
    l.wait_connected();
    let connect_secs = l.connect_secs();
    l.sleep_ticking(secs(c.settle_secs));
    let mut rep = Report {
        mode: if p.is_some() { "push" } else { "connect" }.into(),
        procs: 1,
        connections_target: c.connections,
        connections_opened: l.sh.opened.load(Relaxed),
        connect_secs,
        subscriptions_confirmed: l.sh.subscribed.load(Relaxed),
        target: p.map(|p| format!("{:?}", p.target).to_lowercase()),
        ..Default::default()
    };
    let open = l.sh.open_now.load(Relaxed);
    let own1 = util::read_rss_bytes("self").unwrap_or(0);
    rep.client_rss_delta_bytes = own1.saturating_sub(own0);
    if open > 0 {
        rep.client_rss_bytes_per_conn =
            Some((rep.client_rss_delta_bytes as f64 / open as f64 * 10.0).round() / 10.0);
    }
    if c.server_pid.is_some() {
        let mem1 = Mem::read(c.server_pid);
        rep.set_memory(open, mem0, mem1);
        eprintln!("throng-load: {open} connections up; memory before {mem0:?}, after {mem1:?}");
    }
    let hold = c.hold_secs.unwrap_or(if p.is_some() { 0.0 } else { 10.0 });
    l.sleep_ticking(secs(hold));
    let mut pushed = None;
    let mut delivery_secs = 0.0;
    if let Some(p) = p {
        let t0 = l.sh.start.elapsed().as_micros() as u64;
        let out = l.push(p, p.rate, p.count);
        l.drain(p.target, secs(p.drain_secs));
        let last = l.sh.last_recv_us.load(Relaxed);
        delivery_secs = last.saturating_sub(t0) as f64 / 1e6;
        pushed = Some(out);
    }
    let close_start = Instant::now();
    let t = l.close();
    eprintln!(
        "throng-load: closed in {:.2}s",
        close_start.elapsed().as_secs_f64()
    );
    rep.fill_clients(&t);
    rep.set_connect_rate();
    if p.is_some() {
        rep.fill_push(&t, pushed.as_ref(), delivery_secs);
    }
    Ok(rep)
}

// ---------------------------------------------------------------------------------------
// Worker processes (--procs K).
//
// Parent -> worker (stdin): PUSH | DRAIN <accepted_total> | CLOSE
// Worker -> parent (stdout): PROGRESS <8 numbers> | READY <open> | PUSHED <accepted_total>
//                            | DRAINED | RESULT <json>

fn run_worker(c: &ConnectArgs, p: Option<&PushArgs>) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
        let _ = tx.send("EOF".into());
    });
    let io = WorkerIo { rx };
    let own0 = util::read_rss_bytes("self").unwrap_or(0);
    let mut l = Local::start(c, p, true)?;
    l.wait_connected();
    let connect_secs = l.connect_secs();
    let own1 = util::read_rss_bytes("self").unwrap_or(0);
    let mut rep = Report {
        mode: if p.is_some() { "push" } else { "connect" }.into(),
        procs: 1,
        connections_target: c.connections,
        connections_opened: l.sh.opened.load(Relaxed),
        connect_secs,
        subscriptions_confirmed: l.sh.subscribed.load(Relaxed),
        client_rss_delta_bytes: own1.saturating_sub(own0),
        target: p.map(|p| format!("{:?}", p.target).to_lowercase()),
        ..Default::default()
    };
    WorkerIo::send(&format!("READY {}", l.sh.open_now.load(Relaxed)));
    let mut pushed = None;
    let mut t0 = 0u64;
    // Bounded: the parent drives the phases; a silent parent ends the run.
    let bound = Instant::now()
        + secs(c.hold_secs.unwrap_or(0.0) + c.settle_secs + 600.0)
        + p.map_or(Duration::ZERO, |p| {
            secs(p.duration_secs + p.drain_secs + 60.0)
        });
    loop {
        if Instant::now() > bound {
            eprintln!("throng-load worker: no command from the parent in time; closing");
            break;
        }
        let cmd = match io.rx.recv_timeout(Duration::from_millis(200)) {
            Ok(cmd) => cmd,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                l.tick();
                continue;
            }
            Err(_) => break,
        };
        let mut words = cmd.split_whitespace();
        match (words.next(), p) {
            (Some("PUSH"), Some(p)) => {
                t0 = l.sh.start.elapsed().as_micros() as u64;
                let out = l.push(p, p.rate, p.count);
                WorkerIo::send(&format!("PUSHED {}", l.sh.accepted_total.load(Relaxed)));
                pushed = Some(out);
            }
            (Some("DRAIN"), Some(p)) => {
                if !p.target.direct() {
                    let total = words.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    l.sh.accepted_total.store(total, Relaxed);
                }
                l.drain(p.target, secs(p.drain_secs));
                WorkerIo::send("DRAINED");
            }
            (Some("CLOSE"), _) | (Some("EOF"), _) => break,
            _ => {}
        }
    }
    let delivery_secs = l.sh.last_recv_us.load(Relaxed).saturating_sub(t0) as f64 / 1e6;
    let t = l.close();
    rep.fill_clients(&t);
    rep.set_connect_rate();
    if p.is_some() {
        rep.fill_push(&t, pushed.as_ref(), delivery_secs);
    }
    WorkerIo::send(&format!(
        "RESULT {}",
        serde_json::to_string(&rep).map_err(|e| e.to_string())?
    ));
    Ok(())
}

struct WorkerProc {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    progress: Progress,
    ready: Option<u64>,
    pushed: Option<u64>,
    drained: bool,
    result: Option<Report>,
    eof: bool,
}

fn worker_args(
    c: &ConnectArgs,
    p: Option<&PushArgs>,
    i: usize,
    conns: u64,
    offset: u64,
) -> Vec<String> {
    let k = c.procs as u64;
    let mut a: Vec<String> = vec![if p.is_some() { "push" } else { "connect" }.into()];
    let mut kv = |k: &str, v: String| {
        a.push(format!("--{k}"));
        a.push(v);
    };
    kv("url", c.url.clone());
    kv("connections", conns.to_string());
    let share = if c.connections > 0 {
        conns as f64 / c.connections as f64
    } else {
        0.0
    };
    kv("connect-rate", (c.connect_rate * share).to_string());
    kv("sessions-per-user", c.sessions_per_user.to_string());
    kv("user-offset", offset.to_string());
    if !c.topics.is_empty() {
        kv("topics", c.topics.join(","));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    kv(
        "threads",
        c.threads.unwrap_or((cores / c.procs).max(1)).to_string(),
    );
    kv("settle-secs", "0".into());
    kv(
        "handshake-timeout-secs",
        c.handshake_timeout_secs.to_string(),
    );
    kv("close-timeout-secs", c.close_timeout_secs.to_string());
    kv("token-ttl-secs", c.token_ttl_secs.to_string());
    if let Some(h) = c.hold_secs {
        kv("hold-secs", h.to_string());
    }
    if let Some(p) = p {
        kv("api", p.api.clone());
        let (rate, count) = if p.target.direct() {
            // every worker pushes to its own users
            (
                p.rate / k as f64,
                p.count.map(|n| n / k + u64::from((i as u64) < n % k)),
            )
        } else if i == 0 {
            // one driver, so every receiver sees one numbered stream per API connection
            (p.rate, p.count)
        } else {
            (0.0, Some(0))
        };
        kv("rate", rate.to_string());
        if let Some(n) = count {
            kv("count", n.to_string());
        }
        kv("duration-secs", p.duration_secs.to_string());
        kv("target", format!("{:?}", p.target).to_lowercase());
        kv("payload-bytes", p.payload_bytes.to_string());
        kv("batch", p.batch.to_string());
        kv("api-concurrency", p.api_concurrency.to_string());
        kv("users-per-push", p.users_per_push.to_string());
        kv("drain-secs", p.drain_secs.to_string());
    }
    a.push("--worker".into());
    a
}

fn run_parent(c: &ConnectArgs, p: Option<&PushArgs>) -> Result<Report, String> {
    let k = c.procs;
    let source_ips = match &c.source_ips {
        Some(s) => util::parse_source_ips(s)?,
        None => Vec::new(),
    };
    if let Some(pid) = c.server_pid {
        if util::read_rss_bytes(&pid.to_string()).is_none() {
            return Err(format!("--server-pid {pid}: no such process"));
        }
    }
    let mem0 = Mem::read(c.server_pid);
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let spu = c.sessions_per_user;
    let users = c.connections.div_ceil(spu);
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut ws: Vec<WorkerProc> = Vec::new();
    let mut users_before = 0u64;
    let mut conns_before = 0u64;
    for i in 0..k {
        let my_users = users / k as u64 + u64::from((i as u64) < users % k as u64);
        let my_conns = (my_users * spu).min(c.connections - conns_before);
        let mut args = worker_args(c, p, i, my_conns, c.user_offset + users_before);
        if !source_ips.is_empty() {
            let mine = util::split_source_ips(&source_ips, k, i);
            args.push("--source-ips".into());
            args.push(
                mine.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        users_before += my_users;
        conns_before += my_conns;
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env("THRONG_JWT_SECRET", &c.jwt_secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(key) = p.and_then(|p| p.api_key.as_ref()) {
            cmd.env("THRONG_API_KEY", key);
        }
        let mut child = match cmd.spawn() {
            Ok(ch) => ch,
            Err(e) => {
                stop_workers(&mut ws);
                return Err(format!("spawning worker {i}: {e}"));
            }
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((i, line)).is_err() {
                    break;
                }
            }
            let _ = tx.send((i, "EOF".into()));
        });
        eprintln!(
            "throng-load: worker {i} pid {}: {my_conns} connections, users u{}..",
            child.id(),
            c.user_offset + users_before - my_users
        );
        ws.push(WorkerProc {
            child,
            stdin,
            progress: Progress::default(),
            ready: None,
            pushed: None,
            drained: false,
            result: None,
            eof: false,
        });
    }
    drop(tx);
    let start = Instant::now();
    let mut last_tick = Instant::now();
    // Pumps worker lines until `done` holds or the deadline; Err when a worker died early.
    let mut pump = |ws: &mut Vec<WorkerProc>,
                    deadline: Instant,
                    done: &dyn Fn(&[WorkerProc]) -> bool|
     -> Result<(), String> {
        while !done(ws) {
            if Instant::now() > deadline {
                return Err("workers did not answer in time".into());
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((i, line)) => {
                    let w = &mut ws[i];
                    let (head, rest) = line.split_once(' ').unwrap_or((&line, ""));
                    match head {
                        "PROGRESS" => {
                            if let Some(pr) = Progress::decode(rest) {
                                w.progress = pr;
                            }
                        }
                        "READY" => w.ready = Some(rest.trim().parse().unwrap_or(0)),
                        "PUSHED" => w.pushed = Some(rest.trim().parse().unwrap_or(0)),
                        "DRAINED" => w.drained = true,
                        "RESULT" => match serde_json::from_str::<Report>(rest) {
                            Ok(r) => w.result = Some(r),
                            Err(e) => return Err(format!("worker {i}: bad result: {e}")),
                        },
                        "EOF" => {
                            w.eof = true;
                            if w.result.is_none() {
                                return Err(format!("worker {i} exited early"));
                            }
                        }
                        _ => eprintln!("worker {i}: {line}"),
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => return Err("all workers gone".into()),
            }
            if last_tick.elapsed() >= Duration::from_secs(1) {
                last_tick = Instant::now();
                let mut sum = Progress::default();
                for w in ws.iter() {
                    sum.add(&w.progress);
                }
                eprintln!("[{:7.1}s] {}", start.elapsed().as_secs_f64(), sum.line());
            }
        }
        Ok(())
    };
    let send = |ws: &mut Vec<WorkerProc>, line: &str| {
        for w in ws.iter_mut() {
            if let Some(s) = w.stdin.as_mut() {
                let _ = writeln!(s, "{line}");
                let _ = s.flush();
            }
        }
    };
    let pace = if c.connect_rate > 0.0 {
        c.connections as f64 / c.connect_rate
    } else {
        0.0
    };
    type Measured = (u64, Mem);
    let r = (|| -> Result<Measured, String> {
        pump(
            &mut ws,
            Instant::now() + secs(pace + c.handshake_timeout_secs + 60.0),
            &|ws| ws.iter().all(|w| w.ready.is_some()),
        )?;
        let open: u64 = ws.iter().map(|w| w.ready.unwrap_or(0)).sum();
        pump(&mut ws, Instant::now() + secs(c.settle_secs), &|_| false).ok();
        let mem1 = Mem::read(c.server_pid);
        let hold = c.hold_secs.unwrap_or(if p.is_some() { 0.0 } else { 10.0 });
        pump(&mut ws, Instant::now() + secs(hold), &|_| false).ok();
        if let Some(p) = p {
            send(&mut ws, "PUSH");
            pump(
                &mut ws,
                Instant::now() + secs(p.duration_secs + 60.0),
                &|ws| ws.iter().all(|w| w.pushed.is_some()),
            )?;
            let total: u64 = ws.iter().map(|w| w.pushed.unwrap_or(0)).sum();
            send(&mut ws, &format!("DRAIN {total}"));
            pump(&mut ws, Instant::now() + secs(p.drain_secs + 30.0), &|ws| {
                ws.iter().all(|w| w.drained)
            })?;
        }
        Ok((open, mem1))
    })();
    send(&mut ws, "CLOSE");
    let closed = pump(
        &mut ws,
        Instant::now() + secs(c.close_timeout_secs + 30.0),
        &|ws| ws.iter().all(|w| w.result.is_some()),
    );
    stop_workers(&mut ws);
    let (open, mem1) = r?;
    closed?;
    let reports: Vec<Report> = ws.iter_mut().filter_map(|w| w.result.take()).collect();
    let mut m = Report::merge(&reports);
    if c.server_pid.is_some() {
        m.set_memory(open, mem0, mem1);
    }
    Ok(m)
}

/// Waits briefly for workers to exit, then kills the ones still running (by their PID).
fn stop_workers(ws: &mut [WorkerProc]) {
    for w in ws.iter_mut() {
        w.stdin = None; // EOF: a worker waiting for commands closes and exits
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for w in ws.iter_mut() {
        loop {
            match w.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = w.child.kill();
                    let _ = w.child.wait();
                    break;
                }
            }
        }
    }
}
