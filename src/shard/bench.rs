//! A shard driven from a benchmark (`benches/replay.rs`): one real `Shard` on a manual
//! clock whose user has retained pushes, and sessions that resume it over real loopback
//! sockets. Only the shard's turn that adopts a session is timed: the acceptor's handoff,
//! the client's reads and the teardown are not the shard's work. Not part of the API.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Poll};

use super::{ReplySink, Shard, ShardShared};
use crate::admission::Admission;
use crate::auth::Identity;
use crate::command::{Handoff, Push, Reply, Resume, ShardCmd};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::reactor::{self, Clock};

const USER: &str = "bench-user";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Turns a setup or teardown step may take before the bench gives up.
const MAX_TURNS: usize = 10_000;
/// Socket buffers big enough that one turn writes a whole replay, so the timed turn is
/// the whole of the shard's work for it.
const SOCKET_BUFFER: usize = 1 << 20;

/// Errors of the bench harness (its setup is checked, not assumed).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A socket call failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The configuration was refused.
    #[error("config: {0}")]
    Config(String),
    /// The shard did not do what the bench expects.
    #[error("unexpected: {0}")]
    Unexpected(String),
}

/// One shard whose user has `pushes` retained direct pushes, ready to be resumed.
#[doc(hidden)]
pub struct ReplayBench {
    shard: Shard,
    conns: Sender<Handoff>,
    admission: Arc<Admission>,
    listener: TcpListener,
    events: Events,
    fired: Vec<u32>,
    broken: Vec<u32>,
    /// The user's epoch and current `seq`, as `welcome` shows them.
    epoch: String,
    seq: u64,
    /// Bytes of the retained frames a full resume replays.
    history_bytes: u64,
    _keep: (Sender<ShardCmd>, Receiver<Reply>, Poll),
}

/// What one session's start cost the shard, and what its client got.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Resumed {
    /// The shard turn that adopted the session: 101, `welcome` and replay queued and written.
    pub shard_time: Duration,
    /// Bytes the client read (the 101 response head included).
    pub bytes: usize,
}

impl ReplayBench {
    /// A shard (history of `history_size` pushes per user) whose user got `pushes` direct
    /// pushes with `data_len`-byte JSON string data while it had one session, now closed.
    pub fn new(pushes: usize, data_len: usize) -> Result<ReplayBench, BenchError> {
        let size = pushes.max(1).to_string();
        let args = [
            "--jwt-secret",
            "bench-secret-0123456789abcdef-0123456789",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--history-size",
            &size,
        ];
        let config = Config::from_args(args).map_err(|e| BenchError::Config(e.to_string()))?;
        let api_poll = Poll::new()?;
        let api_waker = reactor::waker(&api_poll)?;
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let admission = Arc::new(Admission::new(1_000_000, 0));
        let shared = ShardShared {
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new(1)),
            admission: Arc::clone(&admission),
            draining: Arc::new(AtomicBool::new(false)),
            drain_end: Arc::new(super::DrainEnd::new()),
            replies: ReplySink {
                tx: reply_tx,
                waker: api_waker,
            },
            cluster: None,
            // The bench's clients never publish.
            publishes: crossbeam_channel::bounded(1).0,
            events: None,
            jwt_keys: None,
        };
        let poll = Poll::new()?;
        let _ = reactor::waker(&poll)?;
        let (conn_tx, conn_rx) = crossbeam_channel::unbounded();
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        // Time stands still: no heartbeat, expiry or TTL while the bench runs.
        let (clock, _time) = Clock::manual();
        let shard = Shard::new(0, poll, conn_rx, cmd_rx, shared, clock);
        let mut b = ReplayBench {
            shard,
            conns: conn_tx,
            admission,
            listener: TcpListener::bind("127.0.0.1:0")?,
            events: Events::with_capacity(64),
            fired: Vec::new(),
            broken: Vec::new(),
            epoch: String::new(),
            seq: 0,
            history_bytes: 0,
            _keep: (cmd_tx.clone(), reply_rx, api_poll),
        };
        // A first session makes the user known; the pushes go to it and into history.
        let first = b.start(None)?;
        let data = format!("\"{}\"", "x".repeat(data_len.saturating_sub(2)));
        for _ in 0..pushes {
            let cmd = ShardCmd::Users {
                push: Arc::new(Push {
                    data: data.as_str().into(),
                    id: None,
                    ts_ms: 1_767_225_600_000,
                    accepted_at: Instant::now(),
                }),
                users: vec![USER.into()],
                ticket: None,
            };
            b.shard
                .shared
                .metrics
                .command_bytes
                .fetch_add(cmd.weight(), Relaxed);
            cmd_tx
                .send(cmd)
                .map_err(|_| BenchError::Unexpected("command queue closed".into()))?;
        }
        b.turn();
        b.finish(first)?;
        let user = b
            .shard
            .users
            .find(USER)
            .and_then(|k| b.shard.users.get(k))
            .ok_or_else(|| BenchError::Unexpected("user not retained".into()))?;
        b.seq = user.seq;
        b.epoch = format!("{:016x}", user.epoch);
        b.history_bytes = b.shard.users.history_bytes();
        if b.seq != pushes as u64 {
            return Err(BenchError::Unexpected(format!(
                "{} pushes numbered, {pushes} sent",
                b.seq
            )));
        }
        // Check once that a resume replays every retained push.
        let got = b.resume()?;
        if (got.bytes as u64) < b.history_bytes {
            return Err(BenchError::Unexpected(format!(
                "resume gave {} bytes, history holds {}",
                got.bytes, b.history_bytes
            )));
        }
        Ok(b)
    }

    /// Bytes of the retained frames (what a full replay writes besides the 101 and welcome).
    pub fn history_bytes(&self) -> u64 {
        self.history_bytes
    }

    /// A session that resumes from `seq - pushes` (every retained push is replayed).
    pub fn resume(&mut self) -> Result<Resumed, BenchError> {
        let since = self
            .seq
            .saturating_sub(self.shard.shared.config.history_size as u64);
        let session = self.start(Some(since))?;
        let shard_time = session.shard_time;
        let bytes = self.finish(session)?;
        Ok(Resumed { shard_time, bytes })
    }

    /// A session that does not resume: the same start without the replay, for comparison.
    pub fn connect(&mut self) -> Result<Resumed, BenchError> {
        let session = self.start(None)?;
        let shard_time = session.shard_time;
        let bytes = self.finish(session)?;
        Ok(Resumed { shard_time, bytes })
    }

    fn turn(&mut self) -> bool {
        self.shard.turn(
            &mut self.events,
            &mut self.fired,
            &mut self.broken,
            Duration::ZERO,
        )
    }

    /// Connects a loopback pair, hands the server end to the shard and times the turn
    /// that adopts it.
    fn start(&mut self, since: Option<u64>) -> Result<Session, BenchError> {
        let addr = self.listener.local_addr()?;
        let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        client.set_recv_buffer_size(SOCKET_BUFFER)?;
        // A reset at the end instead of TIME_WAIT: thousands of sessions must not use up
        // the ephemeral ports.
        client.set_linger(Some(Duration::ZERO))?;
        client.connect(&addr.into())?;
        let client: TcpStream = client.into();
        client.set_read_timeout(Some(Duration::from_millis(100)))?;
        let (server, _) = self.listener.accept()?;
        socket2::SockRef::from(&server).set_send_buffer_size(SOCKET_BUFFER)?;
        server.set_nonblocking(true)?;
        self.admission
            .try_admit(LOCALHOST)
            .map_err(|_| BenchError::Unexpected("admission refused".into()))?;
        let key = self.shard.conns.vacant_key();
        let handoff = Handoff {
            stream: mio::net::TcpStream::from_std(server),
            identity: Identity {
                user: USER.into(),
                topics: Vec::new(),
                publish: Vec::new(),
                exp: None,
            },
            accept_key: "bench-accept".into(),
            leftover: Vec::new(),
            ip: LOCALHOST,
            resume: since.map(|since| Resume {
                since,
                epoch: self.epoch.as_str().into(),
            }),
            deflate: None,
            tls: None,
        };
        self.conns
            .send(handoff)
            .map_err(|_| BenchError::Unexpected("connection queue closed".into()))?;
        let t = Instant::now();
        self.turn();
        let shard_time = t.elapsed();
        match self.shard.conns.get(key) {
            Some(c) if c.out.is_none() => {}
            Some(_) => {
                return Err(BenchError::Unexpected(
                    "the adopting turn did not write everything".into(),
                ))
            }
            None => return Err(BenchError::Unexpected("session not adopted".into())),
        }
        Ok(Session { client, shard_time })
    }

    /// Ends a session from the client side and reads what it got, until the shard has
    /// dropped the connection; returns the bytes read.
    fn finish(&mut self, mut s: Session) -> Result<usize, BenchError> {
        s.client.shutdown(Shutdown::Write)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        for _ in 0..MAX_TURNS {
            self.turn();
            match s.client.read(&mut buf) {
                Ok(0) => {
                    if self.shard.conns.is_empty() {
                        return Ok(total);
                    }
                }
                Ok(n) => total += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(BenchError::Unexpected(format!(
            "session not closed in {MAX_TURNS} turns"
        )))
    }
}

/// A session started by the bench.
struct Session {
    client: TcpStream,
    shard_time: Duration,
}
