//! Worker processes (--procs K): spawning them, the line protocol between parent and
//! workers, and the connect/push/churn runs over it. The capacity ramp drives workers
//! through the same machinery (see `capacity`).
//!
//! Parent -> worker (stdin): PUSH | DRAIN <accepted_total> <numbers> | CLOSE
//!                           | STEP <allowed> | PROBE <step>            (capacity)
//! Worker -> parent (stdout): PROGRESS <8 numbers> | READY <open>
//!                           | PUSHED <accepted_total> <numbers> | DRAINED | RESULT <json>
//!                           | STEPPED <open> <failed> <errors json>
//!                           | PROBED <pushes> <missing> <not sent> <errors json>
//!
//! `<numbers>` are the topic and broadcast pushes' numbers accepted per driver stream
//! ([`crate::track::Numbers::to_wire`]; `-` when not known, and deliveries are then
//! judged by count).

use crate::cli::{secs, ChurnArgs, ConnectArgs, PushArgs, SocketArgs};
use crate::local::{mode_name, push_duration};
use crate::progress::{Progress, Ticker};
use crate::report::{Mem, Report};
use crate::track::Numbers;
use crate::util;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A worker's side of the protocol: commands from stdin, answers on stdout.
pub struct WorkerIo {
    rx: mpsc::Receiver<String>,
}

impl WorkerIo {
    /// Starts reading commands; a closed stdin reads as `EOF`.
    pub fn start() -> WorkerIo {
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
        WorkerIo { rx }
    }

    /// The next command, or `None` after `wait` without one.
    pub fn recv(&self, wait: Duration) -> Option<String> {
        match self.rx.recv_timeout(wait) {
            Ok(cmd) => Some(cmd),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some("EOF".into()),
        }
    }

    /// Sends one line to the parent.
    pub fn send(line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Runs this process as a connect/push/churn worker until the parent says CLOSE.
pub fn run_worker(
    c: &ConnectArgs,
    p: Option<&PushArgs>,
    ch: Option<&ChurnArgs>,
) -> Result<(), String> {
    let io = WorkerIo::start();
    let own0 = util::read_rss_bytes("self").unwrap_or(0);
    let mut l = crate::local::Local::start(c, p, ch, false)?;
    l.wait_connected();
    let connect_secs = l.connect_secs();
    let own1 = util::read_rss_bytes("self").unwrap_or(0);
    let mut rep = l.report_start(p, ch, connect_secs);
    rep.client_rss_delta_bytes = own1.saturating_sub(own0);
    WorkerIo::send(&format!("READY {}", l.sh.open_now.load(Relaxed)));
    let mut pushed = None;
    let mut t0 = 0u64;
    // Bounded: the parent drives the phases; a silent parent ends the run.
    let bound = Instant::now()
        + secs(c.hold_secs.unwrap_or(0.0) + c.settle_secs + 600.0)
        + p.map_or(Duration::ZERO, |p| {
            push_duration(p.duration_secs, p.count, p.rate) + secs(p.drain_secs + 60.0)
        });
    loop {
        if Instant::now() > bound {
            eprintln!("throng-load worker: no command from the parent in time; closing");
            break;
        }
        let Some(cmd) = io.recv(Duration::from_millis(200)) else {
            l.tick();
            continue;
        };
        let mut words = cmd.split_whitespace();
        match (words.next(), p) {
            (Some("PUSH"), Some(p)) => {
                t0 = l.sh.start.elapsed().as_micros() as u64;
                let out = l.push(p, ch.is_some(), None);
                l.wait_churn_settled();
                WorkerIo::send(&format!(
                    "PUSHED {} {}",
                    l.sh.accepted_total.load(Relaxed),
                    out.numbers.to_wire()
                ));
                pushed = Some(out);
            }
            (Some("DRAIN"), Some(p)) => {
                if !p.target.direct() {
                    let total = words.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    l.sh.accepted_total.store(total, Relaxed);
                    // Every worker's receivers judge by the pushing worker's numbers.
                    l.sh.set_numbers(words.next().and_then(Numbers::from_wire));
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
    rep.fill_closed(
        &t,
        p.map(|_| (pushed.as_ref(), delivery_secs)),
        ch.is_some(),
    );
    WorkerIo::send(&format!(
        "RESULT {}",
        serde_json::to_string(&rep).map_err(|e| e.to_string())?
    ));
    Ok(())
}

/// The accepted total and numbers of the workers' `PUSHED` answers; `None` for the
/// numbers when a worker's are not known.
fn pushed_totals(answers: &[String]) -> (u64, Option<Numbers>) {
    let mut total = 0;
    let mut numbers = Some(Numbers::default());
    for a in answers {
        let mut w = a.split_whitespace();
        total += w.next().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        match (numbers.as_mut(), w.next().and_then(Numbers::from_wire)) {
            (Some(all), Some(n)) => all.union(&n),
            _ => numbers = None,
        }
    }
    (total, numbers)
}

/// How the connections and users of a run split over K workers: (connections, first user
/// offset) per worker. Users are never split, so each worker owns whole users.
pub fn split_users(connections: u64, spu: u64, user_offset: u64, k: usize) -> Vec<(u64, u64)> {
    let spu = spu.max(1);
    let k64 = k.max(1) as u64;
    let users = connections.div_ceil(spu);
    let mut out = Vec::new();
    let (mut users_before, mut conns_before) = (0u64, 0u64);
    for i in 0..k.max(1) as u64 {
        let my_users = users / k64 + u64::from(i < users % k64);
        let my_conns = (my_users * spu).min(connections - conns_before);
        out.push((my_conns, user_offset + users_before));
        users_before += my_users;
        conns_before += my_conns;
    }
    out
}

/// One worker process as the parent sees it.
struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    progress: Progress,
    /// The latest unread answer per head word (READY, PUSHED, STEPPED, ...).
    answers: HashMap<String, String>,
    result: Option<Report>,
    /// Its output ended (it exited, or is about to).
    exited: bool,
}

/// The parent's side: the worker processes and their answers.
pub struct Workers {
    ws: Vec<WorkerProc>,
    rx: mpsc::Receiver<(usize, String)>,
    ticker: Ticker,
}

impl Workers {
    /// Spawns one worker per (argument list, description); `env` is set on each (secrets
    /// stay off the command line). `target` sizes the progress bar.
    pub fn spawn(
        args: Vec<(Vec<String>, String)>,
        env: &[(&str, &str)],
        target: u64,
    ) -> Result<Workers, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        Workers::spawn_exe(&exe, args, env, target)
    }

    /// [`Workers::spawn`] running `exe`.
    fn spawn_exe(
        exe: &std::path::Path,
        args: Vec<(Vec<String>, String)>,
        env: &[(&str, &str)],
        target: u64,
    ) -> Result<Workers, String> {
        let (tx, rx) = mpsc::channel::<(usize, String)>();
        let mut me = Workers {
            ws: Vec::new(),
            rx,
            ticker: Ticker::new(target, false),
        };
        for (i, (a, what)) in args.into_iter().enumerate() {
            let mut cmd = Command::new(exe);
            cmd.args(&a)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = match cmd.spawn() {
                Ok(ch) => ch,
                Err(e) => {
                    me.stop();
                    return Err(format!("spawning worker {i}: {e}"));
                }
            };
            let Some(stdout) = child.stdout.take() else {
                let _ = child.kill();
                let _ = child.wait();
                me.stop();
                return Err(format!("worker {i}: no stdout pipe"));
            };
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
            me.ticker.note(&format!(
                "throng-load: worker {i} pid {}: {what}",
                child.id()
            ));
            me.ws.push(WorkerProc {
                child,
                stdin,
                progress: Progress::default(),
                answers: HashMap::new(),
                result: None,
                exited: false,
            });
        }
        Ok(me)
    }

    /// Prints a message without garbling the progress bar.
    pub fn note(&self, msg: &str) {
        self.ticker.note(msg);
    }

    /// Sends a line to every worker.
    pub fn send_all(&mut self, line: &str) {
        for i in 0..self.ws.len() {
            self.send(i, line);
        }
    }

    /// Sends a line to worker `i`.
    pub fn send(&mut self, i: usize, line: &str) {
        if let Some(s) = self.ws.get_mut(i).and_then(|w| w.stdin.as_mut()) {
            let _ = writeln!(s, "{line}");
            let _ = s.flush();
        }
    }

    /// Reads worker lines until `deadline`, or until every worker has answered `head`
    /// (when given); returns the answers in worker order. Err when a worker died early
    /// or the deadline passed while waiting for answers.
    pub fn await_all(
        &mut self,
        head: Option<&str>,
        deadline: Instant,
    ) -> Result<Vec<String>, String> {
        loop {
            if let Some(h) = head {
                if self.ws.iter().all(|w| w.answers.contains_key(h)) {
                    return Ok(self
                        .ws
                        .iter_mut()
                        .map(|w| w.answers.remove(h).unwrap_or_default())
                        .collect());
                }
            }
            if let Some(h) = head {
                // One that ended (after its RESULT, say on its own time bound) never will.
                if let Some(i) = self
                    .ws
                    .iter()
                    .position(|w| w.exited && !w.answers.contains_key(h))
                {
                    return Err(format!("worker {i} exited without answering {h}"));
                }
            }
            if Instant::now() > deadline {
                return match head {
                    Some(h) => Err(format!("workers did not answer {h} in time")),
                    None => Ok(Vec::new()),
                };
            }
            self.pump_one()?;
        }
    }

    /// Handles at most one worker line (waiting up to 100 ms), and shows progress.
    fn pump_one(&mut self) -> Result<(), String> {
        match self.rx.recv_timeout(Duration::from_millis(100)) {
            Ok((i, line)) => {
                let Some(w) = self.ws.get_mut(i) else {
                    return Ok(());
                };
                let (head, rest) = line.split_once(' ').unwrap_or((&line, ""));
                match head {
                    "PROGRESS" => {
                        if let Some(pr) = Progress::decode(rest) {
                            w.progress = pr;
                        }
                    }
                    "RESULT" => match serde_json::from_str::<Report>(rest) {
                        Ok(r) => w.result = Some(r),
                        Err(e) => return Err(format!("worker {i}: bad result: {e}")),
                    },
                    "EOF" => {
                        w.exited = true;
                        if w.result.is_none() {
                            return Err(format!(
                                "worker {i} exited early ({}; its messages are above)",
                                exit_status(&mut w.child)
                            ));
                        }
                    }
                    "READY" | "PUSHED" | "DRAINED" | "STEPPED" | "PROBED" => {
                        w.answers.insert(head.to_string(), rest.to_string());
                    }
                    _ => self.ticker.note(&format!("worker {i}: {line}")),
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => return Err("all workers gone".into()),
        }
        if self.ticker.due() {
            let mut sum = Progress::default();
            for w in self.ws.iter() {
                sum.add(&w.progress);
            }
            self.ticker.show(&sum);
        }
        Ok(())
    }

    /// Says CLOSE, collects every RESULT (bounded by `timeout`), and ends the workers.
    pub fn close(mut self, timeout: Duration) -> Result<Vec<Report>, String> {
        self.send_all("CLOSE");
        let deadline = Instant::now() + timeout;
        let mut r = Ok(());
        while !self.ws.iter().all(|w| w.result.is_some()) {
            // A worker whose output already ended sends nothing more: no use waiting.
            if let Some(i) = self.ws.iter().position(|w| w.exited && w.result.is_none()) {
                r = Err(format!("worker {i} exited early without its result"));
                break;
            }
            if Instant::now() > deadline {
                r = Err("workers did not send their results in time".to_string());
                break;
            }
            if let Err(e) = self.pump_one() {
                r = Err(e);
                break;
            }
        }
        self.ticker.finish();
        self.stop();
        r?;
        Ok(self.ws.iter_mut().filter_map(|w| w.result.take()).collect())
    }

    /// Waits briefly for workers to exit, then kills the ones still running (by their
    /// child handle, so only processes this run started).
    fn stop(&mut self) {
        for w in self.ws.iter_mut() {
            w.stdin = None; // EOF: a worker waiting for commands closes and exits
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for w in self.ws.iter_mut() {
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
}

/// How a worker whose output ended exited, waiting a moment for it.
fn exit_status(child: &mut Child) -> String {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.to_string(),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => return "still running".into(),
            Err(e) => return format!("status unknown: {e}"),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The command line of connect/push/churn worker `i` of K.
fn worker_args(
    c: &ConnectArgs,
    p: Option<&PushArgs>,
    ch: Option<&ChurnArgs>,
    i: usize,
    conns: u64,
    offset: u64,
) -> Result<Vec<String>, String> {
    let k = c.procs as u64;
    let mut a: Vec<String> = vec![mode_name(p, ch).into()];
    let mut kv = |k: &str, v: String| {
        a.push(format!("--{k}"));
        a.push(v);
    };
    // Rotated so that the worker's connection g (global number first + g) goes where the
    // parent's connection first + g would: URL (first + g) mod n.
    let first = offset.saturating_sub(c.user_offset) * c.sessions_per_user;
    kv("url", util::rotate_url_list(&c.url, first));
    kv("connections", conns.to_string());
    let share = if c.connections > 0 {
        conns as f64 / c.connections as f64
    } else {
        0.0
    };
    kv("sessions-per-user", c.sessions_per_user.to_string());
    kv("user-offset", offset.to_string());
    if !c.topics.is_empty() {
        kv("topics", c.topics.join(","));
    }
    if !c.claim_topics.is_empty() {
        kv("claim-topics", c.claim_topics.join(","));
    }
    // The parent settles; a worker only counts it in its bound on a silent parent.
    kv("settle-secs", c.settle_secs.to_string());
    if let Some(h) = c.hold_secs {
        kv("hold-secs", h.to_string());
    }
    if let Some(p) = p {
        kv("api", p.api.clone());
        if let Some(r) = &p.redis_stream {
            kv("redis-stream", r.clone());
        }
        if let Some(ca) = &p.redis_ca {
            kv("redis-ca", ca.display().to_string());
        }
        if let (Some(cert), Some(key)) = (&p.redis_client_cert, &p.redis_client_key) {
            kv("redis-client-cert", cert.display().to_string());
            kv("redis-client-key", key.display().to_string());
        }
        if let Some(k) = &p.kafka {
            kv("kafka", k.clone());
            kv("kafka-topic", p.kafka_topic.clone());
        }
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
        kv("target", p.target.name().to_string());
        kv("payload-bytes", p.payload_bytes.to_string());
        kv("batch", p.batch.to_string());
        kv("api-concurrency", p.api_concurrency.to_string());
        kv("users-per-push", p.users_per_push.to_string());
        kv("drain-secs", p.drain_secs.to_string());
    }
    if let Some(ch) = ch {
        // each worker churns its own connections at its share of the rate
        kv("churn-rate", (ch.churn_rate / k as f64).to_string());
        kv("churn-fraction", ch.churn_fraction.to_string());
    }
    if p.is_some_and(|p| p.payload_json) {
        a.push("--payload-json".into());
    }
    if p.is_some_and(|p| p.push_ids) {
        a.push("--push-ids".into());
    }
    a.extend(sock_args(&c.sock, share, c.procs, first));
    a.push("--worker".into());
    Ok(a)
}

/// The socket flags of a worker of `k`, which opens `share` of the connections starting
/// at global connection number `first`: its share of --connect-rate and of the cores, and
/// where it starts in the source address list.
pub fn sock_args(s: &SocketArgs, share: f64, k: usize, first: u64) -> Vec<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = s.threads.unwrap_or((cores / k.max(1)).max(1));
    let mut a: Vec<String> = [
        ("--connect-rate", (s.connect_rate * share).to_string()),
        ("--threads", threads.to_string()),
        (
            "--handshake-timeout-secs",
            s.handshake_timeout_secs.to_string(),
        ),
        ("--close-timeout-secs", s.close_timeout_secs.to_string()),
        ("--token-ttl-secs", s.token_ttl_secs.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect();
    // Each worker has its own TLS configuration and session store, trusting the same.
    if let Some(ca) = &s.tls.ca {
        a.push("--ca".into());
        a.push(ca.display().to_string());
    }
    if s.tls.insecure {
        a.push("--insecure".into());
    }
    if let (Some(cert), Some(key)) = (&s.tls.client_cert, &s.tls.client_key) {
        a.push("--client-cert".into());
        a.push(cert.display().to_string());
        a.push("--client-key".into());
        a.push(key.display().to_string());
    }
    a.push("--tls-resume".into());
    a.push(s.tls.tls_resume.name().into());
    // Each worker offers permessage-deflate (and inflates with its own loops) the same.
    if s.compression {
        a.push("--compression".into());
    }
    // The whole list to every worker, each starting where its first connection falls, so
    // connection g of the run binds address g mod n whatever the number of workers.
    if let Some(spec) = &s.source_ips {
        a.push("--source-ips".into());
        a.push(spec.clone());
        a.push("--source-ip-start".into());
        a.push(first.to_string());
    }
    a
}

/// A connect/push/churn run over K worker processes.
pub fn run_parent(
    c: &ConnectArgs,
    p: Option<&PushArgs>,
    ch: Option<&ChurnArgs>,
) -> Result<Report, String> {
    let k = c.procs;
    crate::local::check_server_pid(c.server_pid)?;
    let mem0 = Mem::read(c.server_pid);
    let mut args = Vec::new();
    for (i, (conns, offset)) in split_users(c.connections, c.sessions_per_user, c.user_offset, k)
        .into_iter()
        .enumerate()
    {
        let a = worker_args(c, p, ch, i, conns, offset)?;
        args.push((a, format!("{conns} connections, users u{offset}..")));
    }
    let mut env = vec![("THRONG_JWT_SECRET", c.jwt_secret.as_str())];
    if let Some(key) = p.and_then(|p| p.api_key.as_deref()) {
        env.push(("THRONG_API_KEY", key));
    }
    let mut ws = Workers::spawn(args, &env, c.connections)?;
    let pace = c.sock.connect_secs(c.connections);
    let r = (|| -> Result<(u64, Mem), String> {
        let ready = ws.await_all(
            Some("READY"),
            Instant::now() + secs(pace + c.sock.handshake_timeout_secs + 60.0),
        )?;
        let open: u64 = ready.iter().map(|r| r.trim().parse().unwrap_or(0)).sum();
        if open == 0 {
            // Nobody to hold or push to: straight to the report (review s23-load N6).
            eprintln!("{}", crate::local::NONE_OPEN);
            return Ok((open, Mem::read(c.server_pid)));
        }
        ws.await_all(None, Instant::now() + secs(c.settle_secs))?;
        let mem1 = Mem::read(c.server_pid);
        let hold = c.hold_secs.unwrap_or(if p.is_some() { 0.0 } else { 10.0 });
        ws.await_all(None, Instant::now() + secs(hold))?;
        if let Some(p) = p {
            ws.send_all("PUSH");
            let pushed = ws.await_all(
                Some("PUSHED"),
                Instant::now()
                    + push_duration(p.duration_secs, p.count, p.rate)
                    + secs(c.sock.close_timeout_secs + c.sock.handshake_timeout_secs + 60.0),
            )?;
            let (total, numbers) = pushed_totals(&pushed);
            let wire = numbers.map_or_else(|| "-".to_string(), |n| n.to_wire());
            ws.send_all(&format!("DRAIN {total} {wire}"));
            ws.await_all(Some("DRAINED"), Instant::now() + secs(p.drain_secs + 30.0))?;
        }
        Ok((open, mem1))
    })();
    let results = ws.close(secs(c.sock.close_timeout_secs + 30.0));
    let (open, mem1) = r?;
    let reports = results?;
    let mut m = Report::merge(&reports);
    if c.server_pid.is_some() {
        m.set_memory(open, mem0, mem1);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushed_answers_add_up_with_their_numbers() {
        let mut a = Numbers::default();
        a.insert(0, 1);
        a.insert(0, 2);
        let answers = vec![
            format!("2 {}", a.to_wire()),
            format!("0 {}", Numbers::default().to_wire()),
        ];
        let (total, n) = pushed_totals(&answers);
        assert_eq!(total, 2);
        assert_eq!(n, Some(a));
        // A worker whose numbers are not known (or an older answer without them): by count.
        let (total, n) = pushed_totals(&["2 -".to_string(), "3".to_string()]);
        assert_eq!((total, n), (5, None));
    }

    #[test]
    fn users_split_whole() {
        assert_eq!(split_users(10, 1, 0, 3), vec![(4, 0), (3, 4), (3, 7)]);
        // 5 users of 2 sessions (the last has one): 3 users, then 2 users
        assert_eq!(split_users(9, 2, 100, 2), vec![(6, 100), (3, 103)]);
        assert_eq!(split_users(0, 1, 0, 2), vec![(0, 0), (0, 0)]);
    }

    /// Connections per source address when `args` (a connect command line) runs over
    /// its --procs workers: each worker's own flags, as it would parse them.
    fn per_source(args: &[&str]) -> std::collections::BTreeMap<std::net::IpAddr, u64> {
        let mut v = vec!["throng-load", "connect", "--jwt-secret", "s"];
        v.extend_from_slice(args);
        let cli = <crate::cli::Cli as clap::Parser>::parse_from(v);
        let crate::cli::Cmd::Connect(c) = cli.cmd else {
            unreachable!()
        };
        let mut out = std::collections::BTreeMap::new();
        let split = split_users(c.connections, c.sessions_per_user, c.user_offset, c.procs);
        for (i, (conns, offset)) in split.into_iter().enumerate() {
            let mut w = vec!["throng-load".to_string()];
            w.extend(worker_args(&c, None, None, i, conns, offset).unwrap());
            // The parent passes the secret in the environment.
            w.extend(["--jwt-secret".to_string(), "s".to_string()]);
            let cli = <crate::cli::Cli as clap::Parser>::parse_from(w);
            let crate::cli::Cmd::Connect(wc) = cli.cmd else {
                unreachable!()
            };
            let dial = crate::client::DialCfg::from_args(
                &wc.url,
                &wc.jwt_secret,
                &wc.sock,
                wc.connections,
                wc.connections,
            )
            .unwrap();
            for g in 0..wc.connections {
                *out.entry(dial.source_for(g).unwrap()).or_default() += 1;
            }
        }
        out
    }

    #[test]
    fn source_addresses_carry_equal_shares_whatever_the_procs() {
        // The review's case: 11 workers, 8 addresses. Each worker used to get one
        // address, so three of them carried twice the load of the others.
        let spread = per_source(&[
            "--connections",
            "1100",
            "--procs",
            "11",
            "--source-ips",
            "127.0.0.2-127.0.0.9",
        ]);
        assert_eq!(spread.len(), 8, "{spread:?}");
        assert!(spread.values().all(|&n| n == 137 || n == 138), "{spread:?}");
        assert_eq!(spread.values().sum::<u64>(), 1100);
        // Three workers over eight addresses (used to be 167 against 111), with two
        // sessions per user so the split is by users.
        let spread = per_source(&[
            "--connections",
            "1000",
            "--procs",
            "3",
            "--sessions-per-user",
            "2",
            "--source-ips",
            "127.0.0.2-127.0.0.9",
        ]);
        assert!(spread.values().all(|&n| n == 125), "{spread:?}");
    }

    /// Workers running `sh -c SCRIPT sh RESULT_JSON`, one per script.
    fn sh_workers(scripts: &[&str]) -> Workers {
        let json = serde_json::to_string(&Report::default()).unwrap();
        let args = scripts
            .iter()
            .map(|s| {
                let a = vec!["-c".into(), s.to_string(), "sh".into(), json.clone()];
                (a, "test".to_string())
            })
            .collect();
        Workers::spawn_exe(std::path::Path::new("sh"), args, &[], 0).unwrap()
    }

    /// Answers CLOSE with its result, then waits for stdin to end.
    const GOOD: &str = r#"read x; echo "RESULT $1"; read y"#;

    #[test]
    fn a_dead_worker_fails_fast_and_says_so() {
        let mut ws = sh_workers(&["exit 3", GOOD]);
        let e = ws
            .await_all(Some("READY"), Instant::now() + Duration::from_secs(20))
            .unwrap_err();
        assert!(e.contains("worker 0 exited early"), "{e}");
        assert!(e.contains('3'), "the exit status is missing: {e}");
        // Closing must not wait out its timeout for a result that cannot come.
        let t0 = Instant::now();
        let e = ws.close(Duration::from_secs(20)).unwrap_err();
        assert!(e.contains("worker 0 exited early"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    }

    #[test]
    fn a_worker_gone_after_its_result_cannot_answer() {
        let mut ws = sh_workers(&[r#"echo "RESULT $1""#, GOOD]);
        let t0 = Instant::now();
        let e = ws
            .await_all(Some("PUSHED"), Instant::now() + Duration::from_secs(20))
            .unwrap_err();
        assert!(
            e.contains("worker 0 exited without answering PUSHED"),
            "{e}"
        );
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        let reports = ws.close(Duration::from_secs(20)).unwrap();
        assert_eq!(reports.len(), 2);
    }

    #[test]
    fn workers_get_the_tls_flags() {
        let parse = |extra: &[&str]| {
            let mut v = vec![
                "throng-load",
                "connect",
                "--jwt-secret",
                "s",
                "--procs",
                "2",
            ];
            v.extend_from_slice(extra);
            let cli = <crate::cli::Cli as clap::Parser>::parse_from(v);
            let crate::cli::Cmd::Connect(c) = cli.cmd else {
                unreachable!()
            };
            worker_args(&c, None, None, 1, 500, 0).unwrap()
        };
        let a = parse(&["--ca", "/etc/ca.pem", "--tls-resume", "off"]);
        let at = a.iter().position(|x| x == "--ca").unwrap();
        assert_eq!(a[at + 1], "/etc/ca.pem");
        let at = a.iter().position(|x| x == "--tls-resume").unwrap();
        assert_eq!(a[at + 1], "off");
        assert!(!a.iter().any(|x| x == "--insecure"));
        let a = parse(&["--insecure"]);
        assert!(a.iter().any(|x| x == "--insecure"));
        assert!(!a.iter().any(|x| x == "--ca"));
        assert!(!a.iter().any(|x| x == "--compression"));
        let a = parse(&["--compression"]);
        assert!(a.iter().any(|x| x == "--compression"));
    }

    #[test]
    fn workers_get_the_compression_and_payload_flags() {
        let cli = <crate::cli::Cli as clap::Parser>::parse_from([
            "throng-load",
            "push",
            "--jwt-secret",
            "s",
            "--procs",
            "2",
            "--compression",
            "--payload-json",
            "--payload-bytes",
            "2000",
        ]);
        let crate::cli::Cmd::Push(p) = cli.cmd else {
            unreachable!()
        };
        let a = worker_args(&p.conn, Some(&p), None, 1, 500, 0).unwrap();
        assert!(a.iter().any(|x| x == "--compression"), "{a:?}");
        assert!(a.iter().any(|x| x == "--payload-json"), "{a:?}");
        let at = a.iter().position(|x| x == "--payload-bytes").unwrap();
        assert_eq!(a[at + 1], "2000");
        // What the parent gives a worker, the worker's own parser takes (the secret goes
        // by the environment).
        let mut line = vec!["throng-load".to_string()];
        line.extend(a);
        line.extend(["--jwt-secret".to_string(), "s".to_string()]);
        let w = <crate::cli::Cli as clap::Parser>::try_parse_from(line).unwrap();
        let crate::cli::Cmd::Push(w) = w.cmd else {
            unreachable!()
        };
        assert!(w.conn.sock.compression && w.payload_json && w.conn.worker);
    }

    #[test]
    fn workers_get_the_settle_time_for_their_bound() {
        let cli = <crate::cli::Cli as clap::Parser>::parse_from([
            "throng-load",
            "connect",
            "--jwt-secret",
            "s",
            "--settle-secs",
            "900",
            "--procs",
            "2",
        ]);
        let crate::cli::Cmd::Connect(c) = cli.cmd else {
            unreachable!()
        };
        let a = worker_args(&c, None, None, 0, 500, 0).unwrap();
        let at = a.iter().position(|x| x == "--settle-secs").unwrap();
        assert_eq!(a[at + 1], "900");
    }
}
