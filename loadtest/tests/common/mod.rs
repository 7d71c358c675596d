//! Shared helpers for the throng-load integration tests: an in-process Throng server on
//! ephemeral ports, a tiny blocking HTTP/1.1 client for its push API, and a runner for the
//! real `throng-load` binary that bounds its run time and parses its JSON report.
#![allow(dead_code)]

// The server tests' own helpers, shared rather than copied.
pub mod proxy;
#[path = "../../../tests/common/redis_server.rs"]
pub mod redis_server;
#[path = "../../../tests/common/tansu.rs"]
pub mod tansu;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use throng::config::Config;
use throng::server::Server;

pub const SECRET: &str = "loadtest-secret-0123456789abcdef01234";
pub const API_KEY: &str = "loadtest-key";
/// Read/write timeout on every HTTP socket of the tests.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on one `throng-load` run.
pub const RUN_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Server

/// An in-process server. Dropping it shuts it down and joins its threads (bounded).
pub struct TestServer {
    server: Option<Server>,
    pub ws: SocketAddr,
    pub api: SocketAddr,
}

impl TestServer {
    /// Starts a server on ephemeral loopback ports with 2 shards, `SECRET` and `API_KEY`,
    /// plus `extra` flags (e.g. `["--max-connections", "10"]`).
    pub fn start(extra: &[&str]) -> TestServer {
        let mut args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--shards",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
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

    /// The `--url` for throng-load.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }

    /// The `--api` for throng-load.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// The flags every throng-load run against this server needs: `--url`,
    /// `--jwt-secret`, no settle or hold time.
    pub fn connect_args(&self, connections: u64) -> Vec<String> {
        strings(&[
            "--url",
            &self.url(),
            "--jwt-secret",
            SECRET,
            "--connections",
            &connections.to_string(),
            "--settle-secs",
            "0",
            "--hold-secs",
            "0",
        ])
    }

    /// `connect_args` plus `--api` and `--api-key`.
    pub fn push_args(&self, connections: u64) -> Vec<String> {
        let mut a = self.connect_args(connections);
        a.extend(strings(&["--api", &self.api_url(), "--api-key", API_KEY]));
        a
    }

    /// One authorised request to the push API: (status, body).
    pub fn api_request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http(self.api, method, path, Some(API_KEY), body)
    }

    /// `GET /v1/stats`.
    pub fn stats(&self) -> Value {
        let (status, body) = self.api_request("GET", "/v1/stats", None);
        assert_eq!(status, 200, "GET /v1/stats: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("stats not JSON ({e}): {body}"))
    }

    /// A counter from `/v1/stats`.
    pub fn counter(&self, name: &str) -> u64 {
        let s = self.stats();
        s["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in stats {s}"))
    }

    /// `POST /v1/disconnect` for `user`; returns how many sessions the server closed.
    pub fn disconnect(&self, user: &str, code: u16) -> u64 {
        let body = serde_json::json!({"user": user, "code": code, "reason": "loadtest"});
        let (status, text) = self.api_request("POST", "/v1/disconnect", Some(&body.to_string()));
        assert_eq!(status, 200, "POST /v1/disconnect {body}: {text}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("disconnect answer not JSON ({e}): {text}"));
        v["closed"]
            .as_u64()
            .unwrap_or_else(|| panic!("disconnect answer without `closed`: {text}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
            // Do not hang a panicking test forever on a stuck join.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                s.wait();
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}

pub fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// One HTTP/1.1 request on a fresh connection (`Connection: close`): (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to the API");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(k) = key {
        req += &format!("Authorization: Bearer {k}\r\n");
    }
    if !body.is_empty() || method == "POST" {
        req += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    req += "\r\n";
    req += body;
    s.write_all(req.as_bytes()).expect("write the API request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (status, head_len, content_length) = loop {
        let n = s.read(&mut chunk).expect("read the API response");
        assert!(
            n > 0,
            "API closed the connection before a full response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("bad status line in {head:?}"));
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            break (status, end + 4, len);
        }
    };
    loop {
        let have = buf.len() - head_len;
        if content_length.is_some_and(|l| have >= l) {
            break;
        }
        let n = s.read(&mut chunk).expect("read the API response body");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = content_length.map_or(buf.len(), |l| (head_len + l).min(buf.len()));
    (
        status,
        String::from_utf8_lossy(&buf[head_len..end]).to_string(),
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// throng-load runs

static RUN_NO: AtomicU64 = AtomicU64::new(0);

/// A running `throng-load` child with its stdout and stderr collected in the background.
pub struct Load {
    child: Child,
    json: PathBuf,
    args: Vec<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(r: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(r);
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::BufRead::read_line(&mut r, &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => into.lock().unwrap().push_str(&line),
            }
        }
    })
}

impl Load {
    /// Starts `throng-load <args> --json <tempfile>`.
    pub fn spawn(args: Vec<String>) -> Load {
        let n = RUN_NO.fetch_add(1, Ordering::Relaxed);
        let json = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("throng-load-{}-{n}.json", std::process::id()));
        let _ = std::fs::remove_file(&json);
        let mut full = args.clone();
        full.push("--json".into());
        full.push(json.display().to_string());
        let mut child = Command::new(env!("CARGO_BIN_EXE_throng-load"))
            .args(&full)
            .env_remove("THRONG_JWT_SECRET")
            .env_remove("THRONG_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning throng-load {full:?}: {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Load {
            child,
            json,
            args: full,
            stdout,
            stderr,
            readers,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the child wrote to stderr so far (progress lines).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn output(&self) -> String {
        format!(
            "throng-load {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args.join(" "),
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// Waits at most `limit` for the child; kills it and panics past that. Panics when it
    /// exits unsuccessfully or writes no JSON report; returns the report.
    pub fn wait(self, limit: Duration) -> Report {
        let (code, r) = self.wait_code(limit);
        if code != Some(0) {
            r.fail(&format!("throng-load exited with {code:?}"));
        }
        r
    }

    /// [`Load::wait`] for a run that must fail (exit status 1) and still write its report.
    pub fn wait_failed(self, limit: Duration) -> Report {
        let (code, r) = self.wait_code(limit);
        r.check(
            code == Some(1),
            &format!("exit status {code:?}, expected 1 (a failed run)"),
        );
        r
    }

    /// [`Load::wait`] for a run that may fail its gate: the exit code with the report
    /// (it must still write one).
    pub fn wait_code(mut self, limit: Duration) -> (Option<i32>, Report) {
        let deadline = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    self.join_readers();
                    panic!(
                        "throng-load ran past {limit:?} and was killed\n{}",
                        self.output()
                    );
                }
                Err(e) => panic!("waiting for throng-load: {e}\n{}", self.output()),
            }
        };
        self.join_readers();
        let text = std::fs::read_to_string(&self.json).unwrap_or_else(|e| {
            panic!(
                "throng-load exited with {status} and no JSON report at {}: {e}\n{}",
                self.json.display(),
                self.output()
            )
        });
        let _ = std::fs::remove_file(&self.json);
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("report is not JSON ({e}): {text}\n{}", self.output()));
        let r = Report {
            v,
            output: self.output(),
        };
        (status.code(), r)
    }

    fn join_readers(&mut self) {
        // The pipes close when the child (and any worker it started) has exited.
        let deadline = Instant::now() + Duration::from_secs(5);
        for h in std::mem::take(&mut self.readers) {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // A test that panics while the child runs must not leave it behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.json);
    }
}

/// Runs `throng-load <args>` to the end (bounded by `RUN_LIMIT`) and returns its report.
pub fn run_load(args: Vec<String>) -> Report {
    Load::spawn(args).wait(RUN_LIMIT)
}

/// The push counters every complete run has: nothing missing, doubled, reordered or
/// unexpected, no receiver lost, no API error, a latency sample per message.
pub fn assert_complete(r: &Report, pushes: u64, expected: u64) {
    r.eq("pushes_sent", pushes);
    r.eq("messages_expected", expected);
    r.eq("messages_received", expected);
    r.eq("messages_missing", 0);
    r.eq("messages_duplicated", 0);
    r.eq("messages_out_of_order", 0);
    r.eq("messages_unexpected", 0);
    r.eq("receivers_lost", 0);
    r.eq("latency_us/count", expected);
    r.map_eq("push_errors", &[]);
    r.map_eq("disconnects", &[]);
    r.check(
        r.f("deliveries_per_sec") > 0.0,
        "deliveries_per_sec must be positive when messages arrived",
    );
}

/// A parsed JSON report, with the run's output for failure messages.
pub struct Report {
    pub v: Value,
    pub output: String,
}

impl Report {
    /// Panics with `msg`, the report and the run's output.
    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\nreport: {}\n{}",
            serde_json::to_string_pretty(&self.v).unwrap(),
            self.output
        )
    }

    /// The JSON value at a `/`-separated path (`latency_us/count`); panics when absent.
    pub fn get(&self, path: &str) -> &Value {
        let mut v = &self.v;
        for k in path.split('/') {
            v = match v {
                Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => v.get(k),
            }
            .unwrap_or_else(|| self.fail(&format!("report has no `{path}`")));
        }
        v
    }

    /// An unsigned integer field; panics when absent or not one.
    pub fn u(&self, path: &str) -> u64 {
        self.get(path)
            .as_u64()
            .unwrap_or_else(|| self.fail(&format!("`{path}` is not an unsigned integer")))
    }

    /// A number field (integer or float).
    pub fn f(&self, path: &str) -> f64 {
        self.get(path)
            .as_f64()
            .unwrap_or_else(|| self.fail(&format!("`{path}` is not a number")))
    }

    pub fn str(&self, path: &str) -> &str {
        self.get(path)
            .as_str()
            .unwrap_or_else(|| self.fail(&format!("`{path}` is not a string")))
    }

    /// A `{cause: count}` map field.
    pub fn map(&self, path: &str) -> Vec<(String, u64)> {
        let m = self
            .get(path)
            .as_object()
            .unwrap_or_else(|| self.fail(&format!("`{path}` is not an object")));
        m.iter()
            .map(|(k, v)| {
                let n = v
                    .as_u64()
                    .unwrap_or_else(|| self.fail(&format!("`{path}/{k}` is not a count")));
                (k.clone(), n)
            })
            .collect()
    }

    /// Asserts an unsigned integer field equals `want`.
    pub fn eq(&self, path: &str, want: u64) {
        let got = self.u(path);
        if got != want {
            self.fail(&format!("`{path}` is {got}, expected {want}"));
        }
    }

    /// Asserts each of the unsigned integer fields `under/<name>` (`<name>` when `under`
    /// is empty) equals `want`.
    pub fn all_eq(&self, under: &str, names: &[&str], want: u64) {
        for name in names {
            let path = [under, name].join("/");
            self.eq(path.trim_start_matches('/'), want);
        }
    }

    /// Asserts a `{cause: count}` map equals exactly `want`.
    pub fn map_eq(&self, path: &str, want: &[(&str, u64)]) {
        let mut got = self.map(path);
        got.sort();
        let mut want: Vec<(String, u64)> = want.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        want.sort();
        if got != want {
            self.fail(&format!("`{path}` is {got:?}, expected {want:?}"));
        }
    }

    /// Asserts `cond`, failing with `msg` and the report.
    pub fn check(&self, cond: bool, msg: &str) {
        if !cond {
            self.fail(msg);
        }
    }
}
