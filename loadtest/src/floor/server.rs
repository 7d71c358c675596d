//! The floor's server side: one thread, one poll, the accepted connections in a `Vec`,
//! and nothing but the system calls the measured work needs (no parsing, no routing, no
//! timers beyond the schedule).

use super::cpu;
use super::io::{accept_waiting, read_all, still_running, wait};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::process::Child;
use std::time::{Duration, Instant};

/// The listener's token; connections use their index.
const LISTENER: Token = Token(usize::MAX);
/// A WebSocket Ping with no payload, as Throng writes it.
pub const PING: [u8; 2] = [0x89, 0x00];
/// Bytes of a client's masked Pong with no payload.
const PONG_BYTES: usize = super::clients::PONG.len();
/// How often the heartbeat schedule is looked at (Throng's wheel ticks about this often).
const TICK: Duration = Duration::from_millis(10);

/// What one measured window did.
#[derive(Debug, Default)]
pub struct Tally {
    /// Round trips answered (heartbeat) or whole frames written (broadcast).
    pub ops: u64,
    /// Pings written (heartbeat) or frames due (broadcast) in the window.
    pub asked: u64,
    /// Broadcasts made in the window (broadcast only).
    pub rounds: u64,
    /// Broadcasts due in the window (broadcast only).
    pub rounds_due: u64,
    /// Writes that did not take their whole frame (partly or not at all).
    pub short_writes: u64,
    /// This process's CPU over the window.
    pub user: Duration,
    pub system: Duration,
    /// The clients' process's CPU over the window, when it could be read.
    pub clients: Option<Duration>,
    /// The window's length.
    pub elapsed: Duration,
}

/// The accepted connections and their poll.
pub struct Server {
    poll: Poll,
    events: Events,
    conns: Vec<TcpStream>,
    buf: Vec<u8>,
}

/// Where a measured window starts: the counters and CPU times to subtract.
struct Mark {
    at: Instant,
    own: (Duration, Duration),
    clients: Option<Duration>,
}

impl Mark {
    fn now(clients_pid: u32) -> Mark {
        Mark {
            at: Instant::now(),
            own: cpu::own(),
            clients: cpu::of_pid(clients_pid),
        }
    }

    /// Fills `t`'s CPU and elapsed fields with what passed since this mark.
    fn close(&self, t: &mut Tally, clients_pid: u32) {
        let (u, s) = cpu::own();
        t.user = u.saturating_sub(self.own.0);
        t.system = s.saturating_sub(self.own.1);
        t.clients = match (self.clients, cpu::of_pid(clients_pid)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        t.elapsed = self.at.elapsed();
    }
}

/// The measured window of a steady workload: it opens `warmup` after the start and
/// closes `length` after it opened, remembering the counters `S` it opened with.
struct Window<S> {
    opens: Instant,
    length: Duration,
    opened: Option<(Mark, S)>,
    clients_pid: u32,
}

impl<S: Copy> Window<S> {
    fn new(start: Instant, warmup: Duration, length: Duration, clients_pid: u32) -> Window<S> {
        Window {
            opens: start + warmup,
            length,
            opened: None,
            clients_pid,
        }
    }

    /// At `now`, the counters being `at`: opens the window once the warm-up is over; once
    /// it has lasted its length, fills `t`'s CPU and elapsed fields and returns the
    /// counters it opened with and when it opened.
    fn step(&mut self, now: Instant, at: S, t: &mut Tally) -> Option<(S, Instant)> {
        match &self.opened {
            None if now >= self.opens => {
                self.opened = Some((Mark::now(self.clients_pid), at));
                None
            }
            Some((m, at0)) if now >= m.at + self.length => {
                m.close(t, self.clients_pid);
                Some((*at0, m.at))
            }
            _ => None,
        }
    }
}

/// What the server side answers a handshake with: a 101 and a `welcome`-sized text frame,
/// in one write (Throng's answer is about this long).
pub fn handshake_answer() -> Vec<u8> {
    let mut a =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            .to_vec();
    let welcome = br#"{"type":"welcome","session":"s-0000000000000000","user":"u0","epoch":"e-00000000","seq":0,"ping_interval_ms":25000,"idle_timeout_ms":60000}"#;
    a.extend_from_slice(&[0x81, welcome.len() as u8]);
    a.extend_from_slice(welcome);
    a
}

/// A push request as `throng-load push` sends one (a user target, a 64-byte pad), which a
/// unicast floor's API connections send: the server counts it by length only.
pub fn push_request() -> Vec<u8> {
    let body = format!(
        r#"{{"user":"u00001","data":{{"t":1764000000000000,"n":1,"pad":"{}"}}}}"#,
        "x".repeat(64)
    );
    format!(
        "POST /v1/push HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        "k".repeat(32),
        body.len()
    )
    .into_bytes()
}

/// What the unicast floor answers each push request with, as Throng does.
pub const PUSH_ANSWER: &[u8] = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n\
    Content-Length: 17\r\n\r\n{\"accepted\":true}";

/// The end of a request head.
fn head_ends(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n")
}

/// Accepts `n` connections and answers each one's request head with `answer` (accept,
/// one read, the poll registration a server keeps the socket under, one write: what a
/// server does per handshake before any parsing or token check); measures from its first
/// accept to its last answer. The connections stay open until the returned `Vec` drops.
pub fn handshakes(
    mut listener: TcpListener,
    n: usize,
    deadline: Instant,
    child: &mut Child,
) -> Result<(Tally, Vec<TcpStream>), String> {
    let answer = handshake_answer();
    let mut poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| format!("epoll: {e}"))?;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 16 * 1024];
    let mut conns: Vec<TcpStream> = Vec::with_capacity(n);
    // Heads not whole at their first read (rare with TCP_DEFER_ACCEPT): their bytes so far.
    let mut partial: std::collections::HashMap<usize, Vec<u8>> = Default::default();
    let mut ready: Vec<usize> = Vec::new();
    let (mut answered, mut mark) = (0usize, None::<Mark>);
    let clients_pid = child.id();
    while answered < n {
        still_running(deadline, child, &format!("{answered} of {n} handshakes"))?;
        wait(&mut poll, &mut events, Duration::from_millis(200))?;
        ready.clear();
        for ev in events.iter() {
            if ev.token() == LISTENER {
                let first = conns.len();
                accept_waiting(&listener, &poll, &mut conns, n)?;
                if first == 0 && !conns.is_empty() {
                    mark = Some(Mark::now(clients_pid));
                }
                ready.extend(first..conns.len());
            } else if partial.contains_key(&ev.token().0) {
                ready.push(ev.token().0);
            }
        }
        for &i in &ready {
            let c = &mut conns[i];
            let k = match c.read(&mut buf) {
                Ok(0) => return Err(format!("the clients' process closed connection {i}")),
                Ok(k) => k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    partial.entry(i).or_default();
                    continue;
                }
                Err(e) => return Err(format!("connection {i}: {e}")),
            };
            // Whole at the first read, as nearly always: no copy kept.
            let whole = match partial.get_mut(&i) {
                None => head_ends(&buf[..k]),
                Some(head) => {
                    head.extend_from_slice(&buf[..k]);
                    head_ends(head)
                }
            };
            if !whole {
                partial.entry(i).or_insert_with(|| buf[..k].to_vec());
                continue;
            }
            partial.remove(&i);
            match c.write(&answer) {
                Ok(w) if w == answer.len() => answered += 1,
                Ok(w) => return Err(format!("an answer write took {w} bytes")),
                Err(e) => return Err(format!("connection {i}: {e}")),
            }
        }
    }
    let mut t = Tally {
        ops: answered as u64,
        asked: n as u64,
        ..Tally::default()
    };
    if let Some(m) = mark {
        m.close(&mut t, clients_pid);
    }
    Ok((t, conns))
}

impl Server {
    /// Accepts `n` connections on `listener` (the clients' process `child` makes them);
    /// fails by `deadline` or when the child exits first.
    pub fn accept(
        mut listener: TcpListener,
        n: usize,
        deadline: Instant,
        child: &mut Child,
    ) -> Result<Server, String> {
        let mut poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| format!("epoll: {e}"))?;
        let mut events = Events::with_capacity(1024);
        let mut conns = Vec::with_capacity(n);
        while conns.len() < n {
            still_running(
                deadline,
                child,
                &format!("{} of {n} connections", conns.len()),
            )?;
            wait(&mut poll, &mut events, Duration::from_millis(200))?;
            accept_waiting(&listener, &poll, &mut conns, n)?;
        }
        Ok(Server {
            poll,
            events,
            conns,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Pings every connection once per `interval`, spread evenly, and reads the Pongs;
    /// measures `window` after `warmup`.
    pub fn heartbeat(
        &mut self,
        interval: Duration,
        warmup: Duration,
        window: Duration,
        clients_pid: u32,
    ) -> Result<Tally, String> {
        let n = self.conns.len() as u128;
        let start = Instant::now();
        let (mut sent, mut pong_bytes) = (0u64, 0u64);
        let mut t = Tally::default();
        let mut w = Window::new(start, warmup, window, clients_pid);
        loop {
            let now = Instant::now();
            let due = (n * now.duration_since(start).as_nanos() / interval.as_nanos()) as u64;
            while sent < due {
                let c = &mut self.conns[(sent % n as u64) as usize];
                if !matches!(c.write(&PING), Ok(2)) {
                    t.short_writes += 1;
                }
                sent += 1;
            }
            let at = (sent, pong_bytes, t.short_writes);
            if let Some(((sent0, pong0, short0), _)) = w.step(now, at, &mut t) {
                t.asked = sent - sent0;
                t.ops = (pong_bytes - pong0) / PONG_BYTES as u64;
                t.short_writes -= short0;
                return Ok(t);
            }
            let next = start
                + TICK * (now.duration_since(start).as_millis() / TICK.as_millis() + 1) as u32;
            pong_bytes += self.read_ready(next.saturating_duration_since(Instant::now()))?;
        }
    }

    /// Writes `frame` to every connection `rate` times a second; measures `window`
    /// after `warmup`.
    pub fn broadcast(
        &mut self,
        rate: f64,
        frame: &[u8],
        warmup: Duration,
        window: Duration,
        clients_pid: u32,
    ) -> Result<Tally, String> {
        let period = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now();
        let (mut rounds, mut written) = (0u64, 0u64);
        let mut t = Tally::default();
        let mut w = Window::new(start, warmup, window, clients_pid);
        // Broadcasts due by `at`: one at the start, then one every period.
        let scheduled = |at: Instant| (at.duration_since(start).as_secs_f64() * rate) as u64 + 1;
        loop {
            let now = Instant::now();
            if now >= start + period.mul_f64(rounds as f64) {
                for c in &mut self.conns {
                    match c.write(frame) {
                        Ok(k) if k == frame.len() => written += 1,
                        _ => t.short_writes += 1,
                    }
                }
                rounds += 1;
            }
            let now = Instant::now();
            let at = (rounds, written, t.short_writes);
            if let Some(((rounds0, written0, short0), opened)) = w.step(now, at, &mut t) {
                t.rounds = rounds - rounds0;
                t.rounds_due = scheduled(now) - scheduled(opened);
                t.ops = written - written0;
                t.asked = t.rounds_due * self.conns.len() as u64;
                t.short_writes -= short0;
                return Ok(t);
            }
            let next = start + period.mul_f64(rounds as f64);
            let wait = next
                .saturating_duration_since(now)
                .min(Duration::from_millis(100));
            self.read_ready(wait)?;
        }
    }

    /// Accepts `k` API connections on `api` (after the idle ones), then answers each push
    /// request on them with [`PUSH_ANSWER`] and writes `frame` to the idle connections in
    /// turn: one read, two writes per push, as Throng's API and shard make. Measures
    /// `window` after `warmup`; the operations are the pushes answered.
    pub fn unicast(
        &mut self,
        mut api: TcpListener,
        k: usize,
        frame: &[u8],
        (warmup, window): (Duration, Duration),
        deadline: Instant,
        child: &mut Child,
    ) -> Result<Tally, String> {
        let n = self.conns.len();
        self.poll
            .registry()
            .register(&mut api, LISTENER, Interest::READABLE)
            .map_err(|e| format!("epoll: {e}"))?;
        // API connections go after the idle ones, under tokens n.. (accept_waiting
        // registers each under its index).
        let mut all = std::mem::take(&mut self.conns);
        while all.len() < n + k {
            let done = format!("{} of {k} API connections", all.len() - n);
            still_running(deadline, child, &done)?;
            wait(&mut self.poll, &mut self.events, Duration::from_millis(200))?;
            accept_waiting(&api, &self.poll, &mut all, n + k)?;
        }
        let mut api_conns = all.split_off(n);
        self.conns = all;
        let request = push_request().len();
        // Bytes of each API connection's next request read so far.
        let mut partial = vec![0usize; k];
        let (mut answered, mut next) = (0u64, 0usize);
        let mut t = Tally::default();
        let mut w = Window::new(Instant::now(), warmup, window, child.id());
        loop {
            if let Some(((answered0, short0), _)) =
                w.step(Instant::now(), (answered, t.short_writes), &mut t)
            {
                t.ops = answered - answered0;
                t.asked = t.ops;
                t.short_writes -= short0;
                return Ok(t);
            }
            wait(&mut self.poll, &mut self.events, Duration::from_millis(10))?;
            for ev in self.events.iter() {
                let Some(j) = ev.token().0.checked_sub(n).filter(|&j| j < k) else {
                    continue; // an idle connection: its clients send nothing
                };
                let (idle, buf) = (&mut self.conns, &mut self.buf);
                let closed = read_all(&mut api_conns[j], buf, |c, bytes| {
                    partial[j] += bytes;
                    while partial[j] >= request {
                        partial[j] -= request;
                        if !matches!(c.write(PUSH_ANSWER), Ok(w) if w == PUSH_ANSWER.len()) {
                            t.short_writes += 1;
                        }
                        if !matches!(idle[next].write(frame), Ok(w) if w == frame.len()) {
                            t.short_writes += 1;
                        }
                        next = (next + 1) % n;
                        answered += 1;
                    }
                    Ok(())
                })
                .map_err(|e| format!("API connection {j}: {e}"))?;
                if closed {
                    return Err(format!("the clients' process closed API connection {j}"));
                }
            }
        }
    }

    /// Waits at most `timeout` for readable connections and reads them; returns the bytes
    /// read. A read that does not fill the buffer ends a connection's reads (as in Throng).
    fn read_ready(&mut self, timeout: Duration) -> Result<u64, String> {
        wait(&mut self.poll, &mut self.events, timeout)?;
        let mut total = 0u64;
        for ev in self.events.iter() {
            let i = ev.token().0;
            let Some(c) = self.conns.get_mut(i) else {
                continue;
            };
            let closed = read_all(c, &mut self.buf, |_, k| {
                total += k as u64;
                Ok(())
            })
            .map_err(|e| format!("connection {i}: {e}"))?;
            if closed {
                return Err(format!("the clients' process closed connection {i}"));
            }
        }
        Ok(total)
    }
}
