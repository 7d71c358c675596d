//! A real `redis-server` per test (Debian's package), on a free loopback port, with no
//! persistence unless asked ([`RedisServer::start_persistent`]: an append-only file synced
//! on every write, so a [`RedisServer::restart`] after a kill keeps every stream). Dropping
//! it kills the process (by its PID, which we started).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: std::path::PathBuf,
    /// Append-only file on, synced on every write.
    persistent: bool,
    /// `requirepass`, when set.
    password: Option<String>,
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_on(free_port())
    }

    /// Starts one on `port` (to restart on the same address) and waits for PING.
    pub fn start_on(port: u16) -> RedisServer {
        Self::launch(port, false)
    }

    /// Starts one on a free port that writes every change to its append-only file before
    /// answering, so [`RedisServer::restart`] after a kill finds every stream again.
    pub fn start_persistent() -> RedisServer {
        Self::launch(free_port(), true)
    }

    /// Starts one on a free port that requires `password` (`requirepass`); `url` and
    /// `conn` carry it.
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::launch_with(free_port(), false, Some(password.to_string()))
    }

    fn launch(port: u16, persistent: bool) -> RedisServer {
        Self::launch_with(port, persistent, None)
    }

    fn launch_with(port: u16, persistent: bool, password: Option<String>) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("throng-redis-{}-{port}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let mut r = RedisServer {
            child: None,
            port,
            dir,
            persistent,
            password,
        };
        r.spawn();
        r
    }

    /// Starts the process on this server's port and directory and waits for PING.
    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut args = vec!["--port", &port, "--bind", "127.0.0.1", "--save", ""];
        if self.persistent {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            args.extend(["--appendonly", "no"]);
        }
        if let Some(p) = &self.password {
            args.extend(["--requirepass", p]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server; .ci/run does it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} never answered",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on the same port and directory after [`RedisServer::kill`] (a
    /// persistent one loads its append-only file; any other comes back empty).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `redis://127.0.0.1:<port>`, with `:<password>@` when it has one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Whether it answers PING now.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let auth = self
            .password
            .as_ref()
            .map(|p| format!("AUTH {p}\r\n"))
            .unwrap_or_default();
        if s.write_all(format!("{auth}PING\r\n").as_bytes()).is_err() {
            return false;
        }
        // +OK first when it authenticated; both replies may take two reads.
        let want: &[u8] = if auth.is_empty() {
            b"+PONG"
        } else {
            b"+OK\r\n+PONG"
        };
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < want.len() {
            match s.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => return false,
            }
        }
        got.starts_with(want)
    }

    /// A client connection for the test's own commands.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("connect to the test's redis")
    }

    /// Kills it at once (SIGKILL), like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
