//! Shared helpers for the integration tests: an in-process server on ephemeral ports,
//! token minting, a tungstenite client, a raw-frame WebSocket client, a tiny blocking
//! HTTP/1.1 client and condition polling. Every socket has a read timeout so no test hangs.
#![allow(dead_code)]

pub mod deflate;
pub mod hand_tls;
pub mod process;
pub mod redis_server;
pub mod tansu;
pub mod tls;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use throng::config::Config;
use throng::server::Server;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

pub const SECRET: &str = "test-secret-0123456789abcdef0123456";
pub const API_KEY: &str = "test-key";
/// Read/write timeout on every test socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Default deadline for `wait_until` style polling.
pub const WAIT: Duration = Duration::from_secs(5);

/// Starts this process's peak resident memory (`VmHWM`) over from what it holds now
/// (Linux's `clear_refs` 5), so tests of one binary run one after another each measure
/// their own peak.
pub fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("/proc/self/clear_refs");
}

/// This process's peak resident memory so far (`VmHWM`), in KiB: for a test binary of
/// its own, whose in-process server is all that runs.
pub fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

// ---------------------------------------------------------------------------------------
// Server

/// An in-process server. Dropping it shuts it down and joins its threads.
pub struct TestServer {
    server: Option<Server>,
    pub ws: SocketAddr,
    pub api: SocketAddr,
}

/// The flags every test server gets (in process, or as `throng serve`), unless `extra`
/// gives the same flag.
pub fn base_args(extra: &[&str]) -> Vec<String> {
    // A short drain window, so a test's server shuts down in a fraction of a second.
    let defaults: [(&str, &str); 6] = [
        ("--listen", "127.0.0.1:0"),
        ("--api-listen", "127.0.0.1:0"),
        ("--jwt-secret", SECRET),
        ("--api-key", API_KEY),
        ("--shards", "2"),
        ("--drain-ms", "100"),
    ];
    let mut args = Vec::new();
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.push(flag.to_string());
            args.push(value.to_string());
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

impl TestServer {
    /// Starts a server with the base flags plus `extra` (e.g. `["--shards", "4"]`).
    pub fn start(extra: &[&str]) -> TestServer {
        let args = base_args(extra);
        let config = Config::from_args(args.clone())
            .unwrap_or_else(|e| panic!("config {args:?} refused: {e}"));
        let server =
            Server::start(config).unwrap_or_else(|e| panic!("server failed to start: {e:?}"));
        let ws = server.client_addr();
        let api = server.api_addr();
        TestServer {
            server: Some(server),
            ws,
            api,
        }
    }

    /// Begins a graceful drain (like SIGTERM).
    pub fn shutdown(&self) {
        self.server
            .as_ref()
            .expect("server already waited")
            .shutdown();
    }

    /// Takes the server out (to call `wait()` on it elsewhere).
    pub fn take(&mut self) -> Server {
        self.server.take().expect("server already taken")
    }

    /// Connects a client for `user` and reads its welcome.
    pub fn connect(&self, user: &str) -> Client {
        Client::connect(self.ws, &token(user)).unwrap_or_else(|e| panic!("connect {user}: {e}"))
    }

    /// Connects a client with a token that carries a `topics` claim.
    pub fn connect_topics(&self, user: &str, topics: &[&str]) -> Client {
        let t = token_with(json!({"sub": user, "exp": now_secs() + 3600, "topics": topics}));
        Client::connect(self.ws, &t).unwrap_or_else(|e| panic!("connect {user}: {e}"))
    }

    /// A new keep-alive connection to the push API.
    pub fn api_conn(&self) -> HttpConn {
        HttpConn::connect(self.api)
    }

    /// One authorised API request on a fresh connection.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        self.api_conn().request(method, path, Some(API_KEY), body)
    }

    /// `POST /v1/push` (fire and forget); asserts 202 `{"accepted":true}`.
    pub fn push(&self, push: Value) {
        let r = self.api("POST", "/v1/push", Some(&push.to_string()));
        assert_eq!(r.status, 202, "push {push}: {}", r.text());
        assert_eq!(
            r.json()["accepted"],
            json!(true),
            "push {push}: {}",
            r.text()
        );
    }

    /// `POST /v1/push?wait=1`; asserts 200 and returns the JSON body.
    pub fn push_wait(&self, push: Value) -> Value {
        let r = self.api("POST", "/v1/push?wait=1", Some(&push.to_string()));
        assert_eq!(r.status, 200, "push?wait=1 {push}: {}", r.text());
        r.json()
    }

    /// `GET /v1/stats`.
    pub fn stats(&self) -> Value {
        let r = self.api("GET", "/v1/stats", None);
        assert_eq!(r.status, 200, "stats: {}", r.text());
        r.json()
    }

    /// A counter from `/v1/stats`.
    pub fn counter(&self, name: &str) -> u64 {
        let s = self.stats();
        s["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in stats {s}"))
    }

    /// Polls `/v1/stats` until `cond` holds; panics with the last stats after `WAIT`.
    pub fn wait_stats(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        self.wait_stats_within(what, WAIT, cond)
    }

    /// `wait_stats` for conditions that take longer than `WAIT` by nature (a Kafka group
    /// rebalance); panics with the last stats after `within`.
    pub fn wait_stats_within(
        &self,
        what: &str,
        within: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        poll_stats(what, within, || self.stats(), cond, String::new)
    }

    /// Waits until `/v1/stats` reports exactly `conns` connections and `users` users online.
    pub fn wait_online(&self, conns: u64, users: u64) -> Value {
        self.wait_stats(&format!("{conns} connections, {users} users online"), |s| {
            s["connections"].as_u64() == Some(conns) && s["users_online"].as_u64() == Some(users)
        })
    }

    /// Waits until `/v1/stats` reports exactly `n` connections.
    pub fn wait_connections(&self, n: u64) -> Value {
        self.wait_stats(&format!("{n} connections"), |s| {
            s["connections"].as_u64() == Some(n)
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
            // Do not hang a panicking test forever on a stuck join.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(s.wait_checked());
            });
            // A server thread that panicked (a debug_assert! on an invariant, say) fails
            // the test that ran it, unless that test is failing already.
            if let Ok(Err(e)) = rx.recv_timeout(Duration::from_secs(10)) {
                if !std::thread::panicking() {
                    panic!("{e}");
                }
            }
        }
    }
}

/// A cluster node on the Redis at `url` with `extra` flags, ready.
pub fn cluster_node(url: &str, extra: &[&str]) -> TestServer {
    let mut args = vec!["--redis", url];
    args.extend_from_slice(extra);
    let srv = TestServer::start(&args);
    wait_ready(&srv);
    srv
}

/// Waits until `srv` is ready (in cluster mode: its publisher reached Redis).
pub fn wait_ready(srv: &TestServer) {
    let ready = wait_until(WAIT, || srv.api("GET", "/readyz", None).status == 200);
    assert!(
        ready,
        "node never became ready: {}",
        srv.api("GET", "/readyz", None).text()
    );
}

/// Polls `stats` every 10 ms until `cond` holds and returns them; after `within`, panics
/// with the last ones and `context` (a server's log, say).
pub fn poll_stats(
    what: &str,
    within: Duration,
    stats: impl Fn() -> Value,
    cond: impl Fn(&Value) -> bool,
    context: impl Fn() -> String,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = stats();
        if cond(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; last stats: {s}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// Tokens

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Asserts that each set of flags (with a valid secret added) is refused at startup with
/// an error that contains its needle (the key or value it names).
pub fn assert_config_refused(cases: &[(&[&str], &str)]) {
    for (args, needle) in cases {
        let mut all = vec!["--jwt-secret", "0123456789abcdef0123456789abcdef"];
        all.extend(args.iter().copied());
        let err = throng::config::Config::from_args(all)
            .err()
            .unwrap_or_else(|| panic!("{args:?} accepted"))
            .to_string();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Server flags that require an issuer, an audience and HS512 of every token.
pub const STRICT_JWT_FLAGS: [&str; 6] = [
    "--jwt-issuer",
    "https://auth.example",
    "--jwt-audience",
    "throng",
    "--jwt-algorithm",
    "HS512",
];

/// An HS256 token for `user`, valid for an hour, signed with `SECRET`.
pub fn token(user: &str) -> String {
    token_with(json!({"sub": user, "exp": now_secs() + 3600}))
}

/// An HS256 token with the given claims, signed with `SECRET`.
pub fn token_with(claims: Value) -> String {
    sign(Algorithm::HS256, SECRET, claims)
}

/// A token with any HMAC algorithm and secret.
pub fn sign(alg: Algorithm, secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).expect("hmac key"),
    )
    .expect("sign token")
}

/// The `(client_addr, api_addr)` of a server's JSON `listening` log line (`None` for any
/// other line), for tests that run the binary.
pub fn listening_addrs(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let msg = v["fields"]["message"].as_str().or(v["message"].as_str())?;
    if msg != "listening" {
        return None;
    }
    let get = |k: &str| {
        v["fields"][k]
            .as_str()
            .or(v[k].as_str())
            .and_then(|s| s.parse::<SocketAddr>().ok())
    };
    Some((get("client_addr")?, get("api_addr")?))
}

// ---------------------------------------------------------------------------------------
// tungstenite client

pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("tcp connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A WebSocket client (tungstenite) with its welcome message already read.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub welcome: Value,
}

/// How a read ended when a close was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// A Close frame with this code (None: a Close frame without a code).
    Code(Option<u16>),
    /// The socket ended (EOF or reset) without a Close frame.
    Eof,
}

impl Client {
    /// Upgrades with `Authorization: Bearer <token>` and reads the welcome.
    pub fn connect(addr: SocketAddr, token: &str) -> Result<Client, String> {
        Self::connect_with(
            addr,
            "/ws",
            &[("Authorization", &format!("Bearer {token}"))],
        )
    }

    /// Upgrades on `path` (may carry a query) with extra headers and reads the welcome.
    pub fn connect_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, String> {
        let mut req = format!("ws://{addr}{path}")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (ws, _resp) = tungstenite::client(req, tcp(addr)).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r)) => format!(
                "refused with {}: {}",
                r.status(),
                String::from_utf8_lossy(r.body().as_deref().unwrap_or_default())
            ),
            other => format!("handshake failed: {other}"),
        })?;
        let mut c = Client {
            ws,
            welcome: Value::Null,
        };
        let w = c.recv();
        assert_eq!(w["type"], "welcome", "first message must be welcome: {w}");
        c.welcome = w;
        Ok(c)
    }

    /// Sends one JSON text message.
    pub fn send(&mut self, v: Value) {
        self.send_text(&v.to_string());
    }

    pub fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).expect("send");
    }

    /// Next JSON message (pings/pongs skipped); panics on close or after `IO_TIMEOUT`.
    pub fn recv(&mut self) -> Value {
        match self.try_recv(IO_TIMEOUT) {
            Ok(Some(v)) => v,
            Ok(None) => panic!("no message within {IO_TIMEOUT:?}"),
            Err(c) => panic!("connection closed while waiting for a message: {c:?}"),
        }
    }

    /// Next JSON message within `timeout`: Ok(None) when none came, Err on close.
    pub fn try_recv(&mut self, timeout: Duration) -> Result<Option<Value>, Closed> {
        ws_try_recv(&mut self.ws, timeout, false, |s, t| {
            let _ = s.set_read_timeout(Some(t));
        })
    }

    /// Reads until the connection closes; returns the close code. Panics on timeout.
    pub fn expect_close(&mut self) -> Closed {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            match self.try_recv(IO_TIMEOUT) {
                Err(c) => return c,
                Ok(Some(_)) => {}
                Ok(None) => {}
            }
            if Instant::now() > deadline {
                panic!("connection did not close within {IO_TIMEOUT:?}");
            }
        }
    }

    /// Asserts that nothing arrives within `d` (and the connection stays open).
    pub fn expect_silence(&mut self, d: Duration) {
        match self.try_recv(d) {
            Ok(None) => {}
            Ok(Some(v)) => panic!("expected no message, got {v}"),
            Err(c) => panic!("expected no message, connection closed: {c:?}"),
        }
    }

    /// Round-trips a JSON `ping` and asserts the next message is its `pong`: proves the
    /// connection is open and nothing was queued before the pong.
    pub fn barrier(&mut self, r: &str) {
        self.send(json!({"type": "ping", "ref": r}));
        let m = self.recv();
        assert_eq!(m, json!({"type": "pong", "ref": r}), "expected pong {r}");
    }
}

// ---------------------------------------------------------------------------------------
// Raw WebSocket client: hand-made frames

#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn close_code(&self) -> Option<u16> {
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "frame payload not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Encodes one client frame. `mask = None` sends it unmasked.
pub fn encode_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> Vec<u8> {
    let mut out = vec![((fin as u8) << 7) | ((rsv & 7) << 4) | (opcode & 0xF)];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let n = payload.len();
    if n < 126 {
        out.push(m | n as u8);
    } else if n <= 0xFFFF {
        out.push(m | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The welcome message.
    pub welcome: Value,
}

impl RawWs {
    /// Upgrades by hand with a bearer token, checks the 101, reads the welcome frame.
    pub fn connect(addr: SocketAddr, token: &str) -> RawWs {
        let stream = tcp(addr);
        Self::upgrade(stream, addr, token)
    }

    pub fn upgrade(mut stream: TcpStream, addr: SocketAddr, token: &str) -> RawWs {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).expect("read 101 response");
            assert!(
                n > 0,
                "EOF before the 101 response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "expected 101 Switching Protocols, got {head:?}"
        );
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        assert!(
            head.to_ascii_lowercase().contains(&format!(
                "sec-websocket-accept: {}",
                accept.to_ascii_lowercase()
            )),
            "bad or missing Sec-WebSocket-Accept in {head:?}"
        );
        buf.drain(..head_end);
        let mut raw = RawWs {
            stream,
            buf,
            welcome: Value::Null,
        };
        let f = raw.read_frame().expect("welcome frame");
        assert_eq!(f.opcode, OP_TEXT, "first frame must be text: {f:?}");
        let w = f.json();
        assert_eq!(w["type"], "welcome", "first message must be welcome: {w}");
        raw.welcome = w;
        raw
    }

    /// Sends raw bytes.
    pub fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).expect("write frame");
    }

    /// Sends a masked frame.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let b = encode_frame(fin, 0, opcode, payload, Some([0x12, 0x34, 0x56, 0x78]));
        self.send_bytes(&b);
    }

    /// Sends one masked text frame with this JSON.
    pub fn send_json(&mut self, v: Value) {
        self.send_frame(true, OP_TEXT, v.to_string().as_bytes());
    }

    /// Reads one server frame (None on EOF/reset/timeout). Asserts server frames are unmasked.
    pub fn read_frame(&mut self) -> Option<Frame> {
        read_server_frame(&mut self.stream, &mut self.buf)
    }

    /// Reads frames until a Close frame (returns its code) or the socket ends.
    pub fn read_until_close(&mut self) -> Closed {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no close within {IO_TIMEOUT:?}");
            match self.read_frame() {
                Some(f) if f.opcode == OP_CLOSE => return Closed::Code(f.close_code()),
                Some(_) => {}
                None => return Closed::Eof,
            }
        }
    }

    /// Reads frames until a text frame; returns it as JSON (skips pings).
    pub fn read_json(&mut self) -> Value {
        loop {
            let f = self
                .read_frame()
                .expect("connection ended while waiting for text");
            match f.opcode {
                OP_TEXT => return f.json(),
                OP_PING | OP_PONG => {}
                _ => panic!("unexpected frame while waiting for text: {f:?}"),
            }
        }
    }

    /// After a close was received: the socket ends (EOF or reset) within the timeout.
    pub fn expect_eof(&mut self) {
        let mut chunk = [0u8; 4096];
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("socket still open {IO_TIMEOUT:?} after the close")
                }
                Err(_) => return,
            }
            assert!(Instant::now() < deadline, "socket did not end");
        }
    }
}

fn parse_server_frame(b: &[u8]) -> Option<(Frame, usize)> {
    if b.len() < 2 {
        return None;
    }
    let fin = b[0] & 0x80 != 0;
    let rsv = (b[0] >> 4) & 7;
    let opcode = b[0] & 0xF;
    assert!(b[1] & 0x80 == 0, "server frames must not be masked");
    let (len, mut pos) = match b[1] & 0x7F {
        126 => {
            if b.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    if b.len() < pos + len {
        return None;
    }
    let payload = b[pos..pos + len].to_vec();
    pos += len;
    Some((
        Frame {
            fin,
            rsv,
            opcode,
            payload,
        },
        pos,
    ))
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// HTTP

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    /// Asserts a JSON error response: status, `Content-Type: application/json`, body
    /// `{"error": code, "message": <string>}`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "status; response {self:?} body {:?}",
            self.text()
        );
        let ct = self.header("content-type").unwrap_or_default();
        assert!(
            ct.to_ascii_lowercase().starts_with("application/json"),
            "Content-Type must be application/json, got {ct:?}"
        );
        let j = self.json();
        assert_eq!(j["error"], code, "error code in {j}");
        assert!(j["message"].is_string(), "message must be a string in {j}");
    }

    /// Like `assert_error` plus `Connection: close` (handshake refusals).
    pub fn assert_refusal(&self, status: u16, code: &str) {
        self.assert_error(status, code);
        let c = self.header("connection").unwrap_or_default();
        assert!(
            c.to_ascii_lowercase().contains("close"),
            "refusal must send Connection: close, got {c:?}"
        );
    }
}

/// An HTTP/1.1 request to `addr`: a bearer `key` and a JSON `body` (with Content-Length)
/// when given.
pub fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(k) = key {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    req.into_bytes()
}

/// Reads an HTTP head (a request's or a response's) from `s` a byte at a time, leaving
/// what follows unread: complete when it ends with the blank line, else what came before
/// the stream ended or failed.
pub fn read_head(s: &mut impl Read) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    head
}

/// Reads one HTTP response from `s` (TCP, or TLS over it), with `buf` as already-buffered
/// bytes. Returns the response and any bytes after it.
pub fn read_response<S: Read>(s: &mut S, mut buf: Vec<u8>) -> Result<(Resp, Vec<u8>), String> {
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(0) => {
                return Err(format!(
                    "EOF before response head; got {:?}",
                    String::from_utf8_lossy(&buf)
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                return Err(format!(
                    "reading response head: {e}; got {:?}",
                    String::from_utf8_lossy(&buf)
                ))
            }
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    if !status_line.starts_with("HTTP/1.1 ") {
        return Err(format!("not HTTP/1.1: {status_line:?}"));
    }
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut rest = buf[head_end..].to_vec();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let fill = |s: &mut S, rest: &mut Vec<u8>, need: usize| -> Result<(), String> {
        while rest.len() < need {
            let mut chunk = [0u8; 65536];
            match s.read(&mut chunk) {
                Ok(0) => return Err("EOF in body".into()),
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading body: {e}")),
            }
        }
        Ok(())
    };
    let body;
    if let Some(cl) = get("content-length") {
        let n: usize = cl
            .parse()
            .map_err(|_| format!("bad Content-Length {cl:?}"))?;
        fill(s, &mut rest, n)?;
        body = rest[..n].to_vec();
        rest.drain(..n);
    } else if get("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked")) {
        let mut out = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&rest, b"\r\n") {
                    break p;
                }
                let need = rest.len() + 1;
                fill(s, &mut rest, need)?;
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            fill(s, &mut rest, line_end + 2 + size + 2)?;
            out.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
        body = out;
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        body = Vec::new();
    } else {
        // Body until EOF.
        let mut chunk = [0u8; 65536];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err("response without length never ended".into())
                }
                Err(_) => break,
            }
        }
        body = std::mem::take(&mut rest);
    }
    Ok((
        Resp {
            status,
            headers,
            body,
        },
        rest,
    ))
}

/// Sends `raw` bytes on a fresh connection and reads one response.
pub fn raw_http(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = tcp(addr);
    s.write_all(raw).expect("write request");
    read_response(&mut s, Vec::new())
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

/// A hand-made upgrade request with the given path and extra header lines
/// (each "Name: value"). The standard upgrade headers are included unless `omit` names them.
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &[&str], omit: &[&str]) -> Vec<u8> {
    let std_headers = [
        ("Host", addr.to_string()),
        ("Upgrade", "websocket".to_string()),
        ("Connection", "Upgrade".to_string()),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".to_string()),
        ("Sec-WebSocket-Version", "13".to_string()),
    ];
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    for (k, v) in std_headers {
        if !omit.iter().any(|o| o.eq_ignore_ascii_case(k)) {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// A keep-alive HTTP/1.1 connection: over TCP, or TLS (`tls::HttpsConn`).
pub struct HttpConn<S = TcpStream> {
    pub stream: S,
    addr: SocketAddr,
    buf: Vec<u8>,
}

impl HttpConn {
    pub fn connect(addr: SocketAddr) -> HttpConn {
        HttpConn::over(tcp(addr), addr)
    }
}

impl<S: Read + Write> HttpConn<S> {
    /// Requests to `addr` on an established `stream`.
    pub fn over(stream: S, addr: SocketAddr) -> HttpConn<S> {
        HttpConn {
            stream,
            addr,
            buf: Vec::new(),
        }
    }

    /// Sends a request (Content-Length body when given) and reads the response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Resp {
        let req = request_bytes(self.addr, method, path, key, body);
        self.send_raw(&req)
    }

    /// Sends raw bytes and reads one response.
    pub fn send_raw(&mut self, raw: &[u8]) -> Resp {
        self.write(raw);
        self.read()
    }

    /// Sends raw bytes without reading.
    pub fn write(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).expect("write request");
        self.stream.flush().expect("flush request");
    }

    /// Reads one response.
    pub fn read(&mut self) -> Resp {
        let buf = std::mem::take(&mut self.buf);
        let (r, rest) = read_response(&mut self.stream, buf).unwrap_or_else(|e| panic!("{e}"));
        self.buf = rest;
        r
    }
}

// ---------------------------------------------------------------------------------------
// This process's file descriptors (for the tests that run out of them on purpose, each in
// its own test binary because the limit is process-wide)

/// (open descriptors, highest descriptor number) of this process.
pub fn open_fds() -> (u64, u64) {
    let mut count = 0;
    let mut max = 0;
    for e in std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
    {
        if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
            count += 1;
            max = max.max(n);
        }
    }
    // The directory handle itself was one of them.
    (count - 1, max)
}

/// Sets this process's soft RLIMIT_NOFILE to `n` (at most the hard limit).
pub fn set_soft_nofile(n: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = n.min(r.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
    }
}

/// Leaves this process `spare` descriptors (and never less than its highest one) and
/// returns 4 placeholders (when the test's client side runs out first, closing one gives
/// the client its socket while the server in this process is left with none) and the
/// number of descriptors that were open.
pub fn squeeze_descriptors(spare: u64) -> (Vec<std::fs::File>, u64) {
    let placeholders = (0..4)
        .map(|_| std::fs::File::open("/dev/null").expect("/dev/null"))
        .collect();
    let (open, max_fd) = open_fds();
    set_soft_nofile((open + spare).max(max_fd + 1));
    (placeholders, open)
}

// ---------------------------------------------------------------------------------------
// Random input for the fuzz tests against real servers

/// xorshift64*: a small deterministic generator, so a failure can be replayed from its seed.
pub struct Xorshift(pub u64);

impl Xorshift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One server frame from `stream`, `buf` holding what was read beyond it; `None` on EOF
/// or reset. Panics after the socket's read timeout.
pub fn read_server_frame(stream: &mut impl Read, buf: &mut Vec<u8>) -> Option<Frame> {
    loop {
        if let Some((f, used)) = parse_server_frame(buf) {
            buf.drain(..used);
            return Some(f);
        }
        let mut chunk = [0u8; 65536];
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no frame within the read timeout")
            }
            Err(_) => return None,
        }
    }
}

/// The next JSON message on `ws` within `timeout`: Ok(None) when none came, Err on close.
/// `set_timeout` sets the socket's read timeout (put back to `IO_TIMEOUT` after). With
/// `strict`, data the client cannot read (a TLS record that does not open) fails the test
/// instead of counting as the end.
pub fn ws_try_recv<S: Read + Write>(
    ws: &mut WebSocket<S>,
    timeout: Duration,
    strict: bool,
    set_timeout: impl Fn(&S, Duration),
) -> Result<Option<Value>, Closed> {
    set_timeout(ws.get_ref(), timeout.max(Duration::from_millis(1)));
    let deadline = Instant::now() + timeout;
    let out = loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("server sent non-JSON text {t:?}: {e}"));
                break Ok(Some(v));
            }
            Ok(Message::Close(f)) => break Err(Closed::Code(f.map(|f| u16::from(f.code)))),
            Ok(Message::Binary(b)) => panic!("server sent a binary message: {b:?}"),
            Ok(_) => {
                if Instant::now() > deadline {
                    break Ok(None);
                }
            }
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                break Ok(None)
            }
            Err(tungstenite::Error::Io(e)) if strict && e.kind() == ErrorKind::InvalidData => {
                panic!("the client could not read the server's records: {e}")
            }
            Err(_) => break Err(Closed::Eof),
        }
    };
    set_timeout(ws.get_ref(), IO_TIMEOUT);
    out
}

/// Kills a child process that is still running and reaps it (for `Drop`).
pub fn kill_child(child: &mut std::process::Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Reads until the server closes `s` (EOF or reset); what arrived before. Panics if it
/// stays open for the socket's read timeout.
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("socket still open; got {:?}", String::from_utf8_lossy(&out))
            }
            Err(_) => return out,
        }
    }
}
