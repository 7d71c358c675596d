//! Runs `throng serve` as a child process for the demo and the selftest: finds (or
//! builds) the binary, starts it wired to the upstream, learns its addresses from its
//! `listening` log line, and stops it (by its PID) at the end.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopping server may take (a drain of `DRAIN_MS` plus the close handshakes).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The drain window: short, because a chat demo has nothing to hand over.
const DRAIN_MS: &str = "500";
/// Log lines kept to explain a failure.
const LOG_TAIL: usize = 40;

pub struct ServeOptions {
    pub bin: PathBuf,
    pub listen: String,
    pub api_listen: String,
    pub secret: String,
    pub api_key: String,
    pub events_url: String,
    pub events_key: String,
    /// More `serve` flags (e.g. `--history-size 8`).
    pub extra: Vec<String>,
    /// Print the server's log lines as they come (the demo), or keep them quiet (the
    /// selftest, which shows them only when it fails).
    pub echo_log: bool,
}

pub struct Throng {
    child: Child,
    /// `ws://host:port/ws`
    pub ws_url: String,
    /// `http://host:port`
    pub api_url: String,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Throng {
    pub fn start(opts: &ServeOptions) -> Result<Throng, String> {
        let mut cmd = Command::new(&opts.bin);
        cmd.arg("serve")
            .args(["--listen", &opts.listen, "--api-listen", &opts.api_listen])
            .args(["--events-url", &opts.events_url, "--lifecycle-events"])
            .args(["--log-format", "json"])
            .args(["--drain-ms", DRAIN_MS, "--shutdown-grace-ms", DRAIN_MS])
            .args(&opts.extra)
            // Secrets go in the environment, not the command line that `ps` shows.
            .env("THRONG_JWT_SECRET", &opts.secret)
            .env("THRONG_API_KEY", &opts.api_key)
            .env("THRONG_EVENTS_KEY", &opts.events_key)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // prctl, which is async-signal-safe. It makes the kernel stop the server when
        // this process dies without stopping it (killed, or a test that panicked).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", opts.bin.display()))?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the server's stderr was not captured".into());
        };
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let (tail, echo) = (Arc::clone(&log), opts.echo_log);
        std::thread::spawn(move || read_log(stderr, &tx, &tail, echo));
        let mut throng = Throng {
            child,
            ws_url: String::new(),
            api_url: String::new(),
            log,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok((ws, api)) => {
                throng.ws_url = format!("ws://{ws}/ws");
                throng.api_url = format!("http://{api}");
                Ok(throng)
            }
            Err(_) => {
                let status = throng.child.try_wait().ok().flatten();
                throng.stop();
                let why = match status {
                    Some(s) => format!("throng serve exited ({s}) before listening"),
                    None => format!("throng serve did not listen within {START_TIMEOUT:?}"),
                };
                Err(format!("{why}; its last log lines:\n{}", throng.log_tail()))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last log lines, for an error message.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        log.into_iter().collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM (a drain of `DRAIN_MS`), then SIGKILL if it is still there after
    /// `STOP_TIMEOUT`. Only this child, by its PID.
    pub fn stop(&mut self) {
        if !self.running() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) with the PID of our own child, which we have not reaped
            // (try_wait above saw it running), so the PID cannot name another process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "throng serve (pid {}) did not stop within {STOP_TIMEOUT:?}; killing it",
            self.child.id()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Throng {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads the server's JSON log: sends the addresses of its `listening` line, keeps the
/// last lines, and prints them when asked to.
fn read_log(
    stderr: impl std::io::Read,
    listening: &mpsc::Sender<(String, String)>,
    tail: &Mutex<VecDeque<String>>,
    echo: bool,
) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else {
            return;
        };
        let shown = render_log_line(&line);
        if echo {
            eprintln!("[throng] {shown}");
        }
        if let Ok(mut t) = tail.lock() {
            if t.len() == LOG_TAIL {
                t.pop_front();
            }
            t.push_back(shown);
        }
        if let Some(addrs) = listening_addrs(&line) {
            let _ = listening.send(addrs);
        }
    }
}

/// `(client_addr, api_addr)` of the `listening` line, with an unspecified host
/// (`0.0.0.0`) replaced by loopback so that it can be connected to.
fn listening_addrs(line: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v["fields"]["message"] != "listening" {
        return None;
    }
    let addr = |k: &str| {
        let a: std::net::SocketAddr = v["fields"][k].as_str()?.parse().ok()?;
        Some(if a.ip().is_unspecified() {
            format!("127.0.0.1:{}", a.port())
        } else {
            a.to_string()
        })
    };
    Some((addr("client_addr")?, addr("api_addr")?))
}

/// `LEVEL message key=value ...` from a JSON log line (the line itself if it is not one).
fn render_log_line(line: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let mut out = format!(
        "{} {}",
        v["level"].as_str().unwrap_or("?"),
        v["fields"]["message"].as_str().unwrap_or("")
    );
    if let Some(fields) = v["fields"].as_object() {
        for (k, val) in fields.iter().filter(|(k, _)| *k != "message") {
            match val.as_str() {
                Some(s) => out.push_str(&format!(" {k}={s}")),
                None => out.push_str(&format!(" {k}={val}")),
            }
        }
    }
    out
}

/// The `throng` binary: `explicit` when given; otherwise the one next to this example's
/// target directory, built first with cargo (a no-op when it is up to date) so that the
/// demo runs the server of this checkout. When the build fails but an older binary
/// exists, that one is used, with a warning.
pub fn locate(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(bin) = explicit {
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("--throng {}: no such file", bin.display()))
        };
    }
    let (profile_dir, profile) = profile()?;
    let bin = profile_dir.join("throng");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--bin", "throng"])
        .args(profile_args(&profile));
    eprintln!("building the server: cargo build --bin throng ({profile} profile)");
    match cargo.status() {
        Ok(s) if s.success() && bin.is_file() => Ok(bin),
        Ok(s) if bin.is_file() => {
            eprintln!(
                "warning: cargo build failed ({s}); using the existing {}",
                bin.display()
            );
            Ok(bin)
        }
        Err(e) if bin.is_file() => {
            eprintln!(
                "warning: cannot run cargo ({e}); using the existing {}",
                bin.display()
            );
            Ok(bin)
        }
        Ok(s) => Err(format!(
            "cargo build --bin throng failed ({s}) and {} does not exist",
            bin.display()
        )),
        Err(e) => Err(format!(
            "cannot run cargo ({e}) and {} does not exist; build it with \
             `cargo build --release` or give --throng PATH",
            bin.display()
        )),
    }
}

/// This program's target directory (`target/<profile>`) and the profile's name, from
/// its own path (`target/<profile>/examples/chat`).
fn profile() -> Result<(PathBuf, String), String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this program's path ({e}); give --throng PATH"))?;
    let dir = exe.parent().and_then(Path::parent).ok_or_else(|| {
        format!(
            "cannot tell the target directory from {}; give --throng PATH",
            exe.display()
        )
    })?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    Ok((dir.to_path_buf(), name))
}

/// The cargo flags that select `profile`.
fn profile_args(profile: &str) -> Vec<String> {
    match profile {
        "debug" => Vec::new(),
        "release" => vec!["--release".into()],
        other => vec!["--profile".into(), other.into()],
    }
}

/// How to run this example again with cargo, in the profile it was built in: the
/// command the demo prints for clients.
pub fn cargo_run_command() -> String {
    let flags = profile()
        .map(|(_, p)| profile_args(&p))
        .unwrap_or_else(|_| vec!["--release".into()]);
    let mut cmd = String::from("cargo run");
    for f in flags {
        cmd.push(' ');
        cmd.push_str(&f);
    }
    cmd.push_str(" --example chat --");
    cmd
}

/// A random hex string of `bytes` random bytes: a fresh secret or key for each run.
pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}
