//! A `throng serve` child process on ephemeral ports, for what an in-process server
//! cannot show: a SIGKILL (a crash), a SIGTERM, and everything the process logs.
//! Dropping it kills the process (SIGKILL, by the PID the test started).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    kill_child, listening_addrs, poll_stats, token, Client, HttpConn, Resp, API_KEY, SECRET,
};

const BIN: &str = env!("CARGO_BIN_EXE_throng");
/// Deadline for the `listening` line.
const START_WAIT: Duration = Duration::from_secs(15);

/// A running `throng serve`.
pub struct ServerProcess {
    /// The process.
    pub child: Child,
    /// Its client listener.
    pub ws: SocketAddr,
    /// Its push API.
    pub api: SocketAddr,
    /// Every line it wrote, stdout and stderr.
    log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts `throng serve` with the test flags (key, secret, a short drain, JSON logs,
    /// loopback ephemeral ports and 2 shards unless `extra` gives `--listen`,
    /// `--api-listen` or `--shards`) plus `extra`, and waits for its `listening` line.
    pub fn start(extra: &[&str]) -> ServerProcess {
        let mut args: Vec<&str> = vec!["serve"];
        for (flag, value) in [
            ("--listen", "127.0.0.1:0"),
            ("--api-listen", "127.0.0.1:0"),
            ("--shards", "2"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend([
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--drain-ms",
            "100",
            "--shutdown-grace-ms",
            "1000",
            "--log-format",
            "json",
        ]);
        args.extend_from_slice(extra);
        let mut child = Command::new(BIN)
            .args(&args)
            .env_remove("THRONG_JWT_SECRET")
            .env_remove("THRONG_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn throng");
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        collect(out, &log);
        collect(err, &log);
        let deadline = Instant::now() + START_WAIT;
        let (ws, api) = loop {
            if let Some(addrs) = log.lock().unwrap().iter().find_map(|l| listening_addrs(l)) {
                break addrs;
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "throng {args:?} exited with {st} before listening:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "throng {args:?} did not report listening:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        ServerProcess {
            child,
            ws,
            api,
            log,
        }
    }

    /// Everything it logged so far.
    pub fn output(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Lines logged so far that contain `needle`.
    pub fn logged(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// One authorised API request on a fresh connection.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        HttpConn::connect(self.api).request(method, path, Some(API_KEY), body)
    }

    /// `/readyz`'s status.
    pub fn readyz(&self) -> u16 {
        self.api("GET", "/readyz", None).status
    }

    /// `/v1/stats`.
    pub fn stats(&self) -> Value {
        let r = self.api("GET", "/v1/stats", None);
        assert_eq!(r.status, 200, "stats: {}", r.text());
        r.json()
    }

    /// Polls `/v1/stats` until `cond` holds; panics with the last stats after `timeout`.
    pub fn wait_stats(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        poll_stats(
            what,
            timeout,
            || self.stats(),
            cond,
            || format!("server output:\n{}", self.output()),
        )
    }

    /// Connects a client for `user` and reads its welcome.
    pub fn connect(&self, user: &str) -> Client {
        Client::connect(self.ws, &token(user)).unwrap_or_else(|e| panic!("connect {user}: {e}"))
    }

    /// Local ports of this process's IPv4 TCP connections to `remote_port` (e.g. its
    /// links to a Redis), from `/proc`: its sockets' inodes, found in `/proc/net/tcp`.
    pub fn ports_to(&self, remote_port: u16) -> Vec<u16> {
        let pid = self.child.id();
        let inodes: std::collections::HashSet<String> =
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|t| {
                    let t = t.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
                    Some(t.to_string())
                })
                .collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        std::fs::read_to_string("/proc/net/tcp")
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (local, remote, inode) = (f.get(1)?, f.get(2)?, f.get(9)?);
                (port(remote)? == remote_port && inodes.contains(*inode))
                    .then(|| port(local))
                    .flatten()
            })
            .collect()
    }

    /// SIGKILL, like a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit (the drain is short in tests).
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: a signal to the child process this test spawned and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// Copies a child's output lines into `log` on a thread of their own (it ends at EOF).
fn collect(r: impl std::io::Read + Send + 'static, log: &Arc<Mutex<Vec<String>>>) {
    let log = Arc::clone(log);
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            log.lock().unwrap().push(l);
        }
    });
}
