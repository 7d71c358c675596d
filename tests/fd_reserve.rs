//! The descriptor reserve: clients are refused 503 at RLIMIT_NOFILE less the headroom and
//! the push API's reserve, so the API still accepts when clients fill the WebSocket side;
//! and failed client accepts (out of descriptors) are counted.
//!
//! Its own test process: one test lowers the process-wide RLIMIT_NOFILE. The two tests
//! take `LIMIT` so neither runs while the other has the limit lowered.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

static LIMIT: Mutex<()> = Mutex::new(());

/// The open-file limit the binary runs under, and its API reserve.
const NOFILE: u64 = 400;
const API_MAX: usize = 40;

/// Kills the child on drop so a failing test leaves no process behind.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    /// `throng serve` with the test flags and `extra`, under `ulimit -n NOFILE` (soft and
    /// hard, so the raise stops there).
    fn spawn_limited(extra: &[&str]) -> Proc {
        let script = format!("ulimit -n {NOFILE} && exec \"$0\" \"$@\"");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_throng"))
            .arg("serve")
            .args(base_args(extra))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The next JSON log line whose message is `msg`.
    fn log(&mut self, msg: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("no {msg:?} log line; output:\n{}", self.seen.join("\n"));
            };
            self.seen.push(line.clone());
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let m = v["fields"]["message"].as_str().unwrap_or_default();
            if m.starts_with(msg) {
                return v["fields"].clone();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One upgrade attempt: Ok(socket) on 101, Err(the whole answer) otherwise.
fn attempt(addr: SocketAddr, user: &str) -> Result<TcpStream, String> {
    attempt_on(tcp(addr), addr, user)
}

#[test]
fn clients_stop_at_the_ceiling_and_the_push_api_still_accepts() {
    let _g = LIMIT.lock().unwrap_or_else(|p| p.into_inner());
    let api_max = API_MAX.to_string();
    let mut p = Proc::spawn_limited(&[
        "--shards",
        "2",
        "--api-max-connections",
        &api_max,
        "--log-format",
        "json",
    ]);
    let expected = throng::fdlimit::client_ceiling(NOFILE, API_MAX);
    assert!(expected > 10, "the test limit leaves room for clients");
    let logged = p.log("client connection ceiling");
    assert_eq!(
        logged["client_ceiling"].as_u64(),
        Some(expected),
        "{logged}"
    );
    assert_eq!(logged["rlimit_nofile"].as_u64(), Some(NOFILE), "{logged}");
    let listening = p.log("listening");
    let addr = |k: &str| -> SocketAddr {
        listening[k]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {listening}"))
    };
    let (ws, api) = (addr("client_addr"), addr("api_addr"));

    let mut held = Vec::new();
    let refusal = loop {
        assert!(
            (held.len() as u64) <= expected,
            "more clients than the ceiling of {expected} were let in"
        );
        match attempt(ws, &format!("u{}", held.len())) {
            Ok(s) => held.push(s),
            Err(r) => break r,
        }
    };
    assert_eq!(
        held.len() as u64,
        expected,
        "clients up to the ceiling get in"
    );
    assert!(
        refusal.starts_with("HTTP/1.1 503") && refusal.contains("over_capacity"),
        "beyond the ceiling: 503 over_capacity, got {refusal:?}"
    );
    assert!(
        refusal.contains("reserved for the push API"),
        "refused by the ceiling, not by running out: {refusal:?}"
    );

    // The API has its reserve: many connections at once are accepted and answered.
    let mut conns: Vec<HttpConn> = (0..API_MAX / 2).map(|_| HttpConn::connect(api)).collect();
    for c in &mut conns {
        let r = c.request("GET", "/healthz", Some(API_KEY), None);
        assert_eq!(r.status, 200, "healthz at the client ceiling: {}", r.text());
    }
    let r = conns[0].request(
        "POST",
        "/v1/push?wait=1",
        Some(API_KEY),
        Some(&json!({"broadcast": true, "data": "still here"}).to_string()),
    );
    assert_eq!(r.status, 200, "push at the client ceiling: {}", r.text());
    assert_eq!(
        r.json()["delivered"].as_u64(),
        Some(expected),
        "{}",
        r.text()
    );
}

#[test]
fn api_connections_stop_at_the_descriptor_reserve() {
    let _g = LIMIT.lock().unwrap_or_else(|p| p.into_inner());
    // api_max_connections above the reserve the limit leaves: the reserve is the cap.
    let mut p = Proc::spawn_limited(&[
        "--shards",
        "1",
        "--api-max-connections",
        "1000",
        "--log-format",
        "json",
    ]);
    let reserve = throng::fdlimit::api_reserve(NOFILE, 1000);
    assert!(reserve < 1000 && reserve > 4, "the test limit caps the API");
    let logged = p.log("push API connection cap");
    assert_eq!(
        logged["api_connection_cap"].as_u64(),
        Some(reserve),
        "{logged}"
    );
    assert_eq!(
        logged["api_max_connections"].as_u64(),
        Some(1000),
        "{logged}"
    );
    let listening = p.log("listening");
    let api: SocketAddr = listening["api_addr"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("api_addr in {listening}"));

    // Idle connections up to the cap are held (the first one asks, so all are accepted).
    let mut monitor = HttpConn::connect(api);
    let mut idle: Vec<TcpStream> = (1..reserve).map(|_| tcp(api)).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let s = monitor
            .request("GET", "/v1/stats", Some(API_KEY), None)
            .json();
        if s["api_connections"].as_u64() == Some(reserve) {
            break;
        }
        assert!(Instant::now() < deadline, "{reserve} API connections: {s}");
        std::thread::sleep(Duration::from_millis(10));
    }
    // One more is refused with the usual 503, which names the figure.
    let mut over = tcp(api);
    let mut answer = Vec::new();
    let _ = over.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("over_capacity"),
        "{answer}"
    );
    assert!(answer.contains(&reserve.to_string()), "{answer}");
    // One leaves: the next one is served.
    drop(idle.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let s = monitor
            .request("GET", "/v1/stats", Some(API_KEY), None)
            .json();
        if s["api_connections"].as_u64() == Some(reserve - 1) {
            break;
        }
        assert!(Instant::now() < deadline, "one left: {s}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = HttpConn::connect(api).request("GET", "/healthz", None, None);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn failed_client_accepts_are_counted() {
    let _g = LIMIT.lock().unwrap_or_else(|p| p.into_inner());
    let srv = TestServer::start(&[]);
    let _ = srv.stats();
    let before = srv.counter("accept_errors_client");
    let (mut placeholders, open) = squeeze_descriptors(40);
    let mut held = Vec::new();
    let mut refused = None;
    for i in 0..2000 {
        let s = match TcpStream::connect(srv.ws) {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                assert!(placeholders.pop().is_some(), "ran out of placeholders");
                continue;
            }
            Err(e) => panic!("connect: {e}"),
        };
        match attempt_on(s, srv.ws, &format!("u{i}")) {
            Ok(s) => held.push(s),
            Err(r) => {
                refused = Some(r);
                break;
            }
        }
    }
    drop(held);
    drop(placeholders);
    set_soft_nofile(open + 1000);
    let refused = refused.expect("the descriptor limit was never reached");
    assert!(refused.contains("file descriptors"), "{refused}");
    let after = srv.counter("accept_errors_client");
    assert!(
        after > before,
        "accepts that failed with EMFILE are counted: {before} -> {after}"
    );
}

/// `attempt` on a socket already connected.
fn attempt_on(mut s: TcpStream, addr: SocketAddr, user: &str) -> Result<TcpStream, String> {
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let auth = format!("Authorization: Bearer {}", token(user));
    s.write_all(&upgrade_request(addr, "/ws", &[&auth], &[]))
        .expect("write upgrade request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buf.starts_with(b"HTTP/1.1 101") && find(&buf, b"\r\n\r\n").is_some() {
            return Ok(s);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(String::from_utf8_lossy(&buf).into_owned()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
