//! The push API: an HTTP/1.1 keep-alive server on its own thread and mio loop. It parses
//! requests, routes pushes to shards as one command per shard, and answers `?wait=1`,
//! disconnect and presence requests when every shard involved has replied.

mod push;
mod routes;

pub use push::{parse as parse_push, route as route_push, ParsedPush, Target};

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::command::Reply;
use crate::config::{Config, MAX_API_BODY_BYTES};
use crate::http;
use crate::metrics::Metrics;
use crate::shard::ShardHandle;

const LISTENER: Token = Token(usize::MAX - 1);
/// The API's waker token (replies from shards, shutdown).
pub const WAKER: Token = Token(usize::MAX);
/// Largest request head on the API.
const MAX_API_HEAD: usize = 16 * 1024;
/// Concurrent API connections; more are closed at accept.
const MAX_API_CONNS: usize = 4096;
/// How long a request may wait for shard replies before it is answered 503.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing API connection may take to read its last response.
const LINGER: Duration = Duration::from_secs(2);

/// What a waiting request is collecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitKind {
    Push,
    Disconnect,
    Presence,
}

struct Waiting {
    serial: u64,
    kind: WaitKind,
    remaining: usize,
    sessions: u64,
    users: u64,
    since: Instant,
    keep_alive: bool,
    /// For presence: the user id to echo.
    user: Option<String>,
}

struct ApiConn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    waiting: Option<Waiting>,
    close_after_write: bool,
    /// Set once the last response is out and the write half is shut: the client gets a
    /// moment to read it while what it still sends is discarded.
    lingering_since: Option<Instant>,
}

/// A parsed request, borrowed from the connection's buffer.
pub(crate) struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub authorization: Option<&'a str>,
    pub body: &'a [u8],
}

/// What a handler decided.
pub(crate) enum Outcome {
    /// Answer now.
    Respond(Vec<u8>),
    /// Answer when `expected` shard replies have arrived.
    Wait {
        kind: WaitKind,
        serial: u64,
        expected: usize,
        user: Option<String>,
    },
}

/// The API thread's state.
pub struct Api {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<ApiConn>,
    shards: Vec<ShardHandle>,
    replies: Receiver<Reply>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    serial: u64,
    scratch: Vec<u8>,
}

impl Api {
    /// Builds the API around a bound listener; `poll` owns `WAKER` already.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        poll: Poll,
        listener: std::net::TcpListener,
        shards: Vec<ShardHandle>,
        replies: Receiver<Reply>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        draining: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Api> {
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Api {
            poll,
            listener,
            conns: Slab::new(),
            shards,
            replies,
            config,
            metrics,
            draining,
            stop,
            serial: 0,
            scratch: vec![0; 64 * 1024],
        })
    }

    /// Serves until `stop` is set (after the shards have finished).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut last_sweep = Instant::now();
        loop {
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(100)))
            {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "push API poll failed; API stops");
                    return;
                }
            }
            if self.stop.load(Relaxed) {
                return;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(key) => {
                        if event.is_writable() {
                            self.write_out(key);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key);
                        }
                    }
                }
            }
            self.take_replies();
            if last_sweep.elapsed() >= Duration::from_millis(100) {
                last_sweep = Instant::now();
                self.expire_waits();
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    if self.conns.len() >= MAX_API_CONNS {
                        continue;
                    }
                    let entry = self.conns.vacant_entry();
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut stream,
                            Token(entry.key()),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_ok()
                    {
                        entry.insert(ApiConn {
                            stream,
                            inbuf: Vec::new(),
                            out: Vec::new(),
                            out_pos: 0,
                            waiting: None,
                            close_after_write: false,
                            lingering_since: None,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "push API accept failed");
                    return;
                }
            }
        }
    }

    fn on_readable(&mut self, key: usize) {
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            match c.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.drop_conn(key);
                    return;
                }
                Ok(n) => {
                    if c.close_after_write {
                        continue;
                    }
                    c.inbuf.extend_from_slice(&self.scratch[..n]);
                    // Bound what one connection may make us hold.
                    if c.inbuf.len() > MAX_API_HEAD + MAX_API_BODY_BYTES + 1024 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.drop_conn(key);
                    return;
                }
            }
        }
        self.process(key);
    }

    /// Serves every complete request in the buffer, one at a time.
    fn process(&mut self, key: usize) {
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            if c.waiting.is_some() || c.close_after_write || c.inbuf.is_empty() {
                break;
            }
            let mut inbuf = std::mem::take(&mut c.inbuf);
            let step = self.one_request(key, &inbuf);
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            match step {
                Step::Incomplete => {
                    c.inbuf = inbuf;
                    break;
                }
                Step::Done { used, response } => {
                    inbuf.drain(..used);
                    if inbuf.capacity() > 256 * 1024 && inbuf.len() < 64 * 1024 {
                        inbuf.shrink_to(64 * 1024);
                    }
                    c.inbuf = inbuf;
                    if let Some(r) = response {
                        c.out.extend_from_slice(&r);
                    }
                }
            }
        }
        self.write_out(key);
    }

    fn one_request(&mut self, key: usize, buf: &[u8]) -> Step {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_API_HEAD {
                    return self.fatal(key, 431, "header_too_large", "request head over 16 KiB");
                }
                return Step::Incomplete;
            }
            Err(e) => {
                return self.fatal(
                    key,
                    400,
                    "bad_request",
                    &format!("malformed HTTP request: {e}"),
                )
            }
        };
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::trim)
        };
        if header("Transfer-Encoding").is_some() {
            return self.fatal(
                key,
                411,
                "length_required",
                "send the body with Content-Length; chunked bodies are not accepted",
            );
        }
        let len = match header("Content-Length") {
            None => 0,
            Some(v) => match v.parse::<usize>() {
                Ok(n) => n,
                Err(_) => return self.fatal(key, 400, "bad_request", "bad Content-Length"),
            },
        };
        if len > MAX_API_BODY_BYTES {
            return self.fatal(
                key,
                413,
                "payload_too_large",
                &format!("request body over {MAX_API_BODY_BYTES} bytes"),
            );
        }
        if buf.len() < head_len + len {
            return Step::Incomplete;
        }
        let keep_alive = match (req.version, header("Connection")) {
            (_, Some(v)) if v.eq_ignore_ascii_case("close") => false,
            (Some(0), Some(v)) => v.eq_ignore_ascii_case("keep-alive"),
            (Some(0), None) => false,
            _ => true,
        };
        let target = req.path.unwrap_or("/");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let request = Request {
            method: req.method.unwrap_or(""),
            path,
            query,
            authorization: header("Authorization"),
            body: &buf[head_len..head_len + len],
        };
        self.metrics.api_requests.fetch_add(1, Relaxed);
        let outcome = self.handle(key, &request, keep_alive);
        let used = head_len + len;
        let Some(c) = self.conns.get_mut(key) else {
            return Step::Done {
                used,
                response: None,
            };
        };
        if !keep_alive {
            c.close_after_write = true;
        }
        match outcome {
            Outcome::Respond(r) => Step::Done {
                used,
                response: Some(r),
            },
            Outcome::Wait {
                kind,
                serial,
                expected,
                user,
            } => {
                c.waiting = Some(Waiting {
                    serial,
                    kind,
                    remaining: expected,
                    sessions: 0,
                    users: 0,
                    since: Instant::now(),
                    keep_alive,
                    user,
                });
                Step::Done {
                    used,
                    response: None,
                }
            }
        }
    }

    /// An error after which the rest of the stream cannot be framed: answer and close.
    fn fatal(&mut self, key: usize, status: u16, code: &str, message: &str) -> Step {
        if let Some(c) = self.conns.get_mut(key) {
            c.close_after_write = true;
        }
        // Nothing more is parsed on this connection, so nothing needs consuming.
        Step::Done {
            used: 0,
            response: Some(http::error_response(status, code, message, false, "")),
        }
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn take_replies(&mut self) {
        while let Ok(r) = self.replies.try_recv() {
            let Some(c) = self.conns.get_mut(r.ticket.conn) else {
                continue;
            };
            let Some(w) = c.waiting.as_mut().filter(|w| w.serial == r.ticket.serial) else {
                continue;
            };
            w.sessions += r.sessions;
            w.users += r.users;
            w.remaining = w.remaining.saturating_sub(1);
            if w.remaining == 0 {
                self.complete(r.ticket.conn);
            }
        }
    }

    /// All replies are in: write the answer and go on with pipelined requests.
    fn complete(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let Some(w) = c.waiting.take() else {
            return;
        };
        let body = match w.kind {
            WaitKind::Push => serde_json::json!({"delivered": w.sessions, "users_online": w.users}),
            WaitKind::Disconnect => serde_json::json!({"closed": w.sessions}),
            WaitKind::Presence => serde_json::json!({
                "user": w.user.unwrap_or_default(),
                "online": w.sessions > 0,
                "sessions": w.sessions,
            }),
        };
        c.out.extend_from_slice(&http::response(
            200,
            "application/json",
            body.to_string().as_bytes(),
            w.keep_alive,
            "",
        ));
        self.process(key);
    }

    fn expire_waits(&mut self) {
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.waiting
                    .as_ref()
                    .is_some_and(|w| w.since.elapsed() >= REPLY_TIMEOUT)
            })
            .map(|(k, _)| k)
            .collect();
        let lingered: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.lingering_since.is_some_and(|t| t.elapsed() >= LINGER))
            .map(|(k, _)| k)
            .collect();
        for key in lingered {
            self.drop_conn(key);
        }
        for key in late {
            if let Some(c) = self.conns.get_mut(key) {
                c.waiting = None;
                c.close_after_write = true;
                c.out.extend_from_slice(&http::error_response(
                    503,
                    "overloaded",
                    "shards did not answer in time; the push may or may not have been delivered",
                    false,
                    "Retry-After: 1\r\n",
                ));
            }
            self.write_out(key);
        }
    }

    fn write_out(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        while c.out_pos < c.out.len() {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(0) => {
                    self.drop_conn(key);
                    return;
                }
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.drop_conn(key);
                    return;
                }
            }
        }
        c.out.clear();
        c.out_pos = 0;
        if c.close_after_write && c.waiting.is_none() && c.lingering_since.is_none() {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            c.lingering_since = Some(Instant::now());
        }
    }

    fn drop_conn(&mut self, key: usize) {
        if let Some(mut c) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }
}

enum Step {
    Incomplete,
    Done {
        used: usize,
        response: Option<Vec<u8>>,
    },
}

/// The API's waker, made before the thread starts so shards and shutdown can reach it.
pub fn waker(poll: &Poll) -> io::Result<Arc<Waker>> {
    Ok(Arc::new(Waker::new(poll.registry(), WAKER)?))
}
