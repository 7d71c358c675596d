//! The push API: an HTTP/1.1 keep-alive server on its own thread and mio loop. It parses
//! requests, routes pushes to shards as one command per shard, and answers `?wait=1`,
//! disconnect and presence requests when every shard involved has replied.

mod budget;
pub mod chunked;
mod client_publish;
mod cluster_view;
pub mod dedup;
mod handshaker;
mod ingress;
pub mod keys;
mod push;
pub mod request;
mod routes;
pub mod sequencer;
mod tls;

pub use push::{
    parse as parse_push, route as route_push, ParsedPush, Target, MAX_DATA_DEPTH, MAX_ID_BYTES,
    MAX_USERS,
};

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::broker::script::PublishError;
use crate::command::Reply;
use crate::command::ShardCmd;
use crate::config::Config;
use crate::http;
use crate::link::Links;
use crate::metrics::Metrics;
use crate::reactor::{self, LISTENER, WAKER};
use request::{FrameError, Framed};
use tls::ApiStream;

/// How long a request may wait for shard replies before it is answered 504.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing API connection may take to read its last response.
const LINGER: Duration = Duration::from_secs(2);
/// Unsent response bytes above which a connection is neither read nor served until the
/// client reads: a client that pipelines without reading cannot grow this without bound.
pub const MAX_UNSENT: usize = 64 * 1024;
/// What the API answers a head with `Expect: 100-continue` before its body is read.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Input buffers emptied with more capacity than this are freed (a large body's memory
/// goes back); smaller ones are kept for the next request.
const KEEP_INBUF: usize = 16 * 1024;
/// How long a stranger (no keyed request yet) must have waited before a new connection at
/// the cap may take its place: a client's request follows its connect within a round
/// trip. Short, so that peers opening connections faster than `api_max_connections` in
/// this time (10,240 a second at the default cap) are needed to keep the slots full.
const EVICT_MIN_IDLE: Duration = Duration::from_millis(100);
/// Requests for room the handshake thread may have in flight at once (`Handed::Room`):
/// until it answers, the newcomers are counted beside the handshakes they replace.
const MAX_ROOM_REQUESTS: usize = 16;
/// How often timeouts are checked; also the poll timeout.
const SWEEP: Duration = Duration::from_millis(100);
/// How long accepting pauses after EMFILE/ENFILE or an unknown accept error.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Least time between two logged accept failures.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// What a waiting request is collecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitKind {
    Push,
    Disconnect,
    Presence,
    Topic,
    /// Cluster mode: what Redis did with a push (`users`: a `users` push, answered per
    /// user even when it names one).
    Published {
        users: bool,
    },
    /// Cluster mode: `/v1/stats` with the other nodes' totals.
    Stats,
}

struct Waiting {
    serial: u64,
    kind: WaitKind,
    remaining: usize,
    sessions: u64,
    users: u64,
    since: Instant,
    keep_alive: bool,
    /// A `HEAD` request: the answer goes without its body.
    head_only: bool,
    /// For presence: the user id to echo; for a topic: its name.
    user: Option<String>,
    /// For presence: the sessions the shard listed.
    details: Vec<crate::command::SessionDetail>,
    /// For a topic's member page: the users the shards (and other nodes) listed.
    members: Vec<Box<str>>,
    /// The member page asked for.
    page: Option<crate::command::MemberPage>,
    /// Cluster mode: the publisher's answer.
    published: Option<crate::broker::script::Published>,
    /// Cluster mode: the presence thread's answer (presence and stats).
    cluster: Option<crate::broker::ViewResult>,
}

struct ApiConn {
    stream: ApiStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    waiting: Option<Waiting>,
    close_after_write: bool,
    /// Set once the last response is out and the write half is shut: the client gets a
    /// moment to read it while what it still sends is discarded.
    lingering_since: Option<Instant>,
    /// The socket may hold bytes not read yet: reading last stopped at a bound rather
    /// than at `WouldBlock`, so no new readiness edge will come for them.
    unread: bool,
    /// The poll reported the peer's FIN or an error: read on to the end rather than stop
    /// at a short read (no later edge would report them again).
    peer_closed: bool,
    /// The client's FIN was read while it was still owed answers: those are served,
    /// then the connection closes.
    eof: bool,
    /// When the request at the front of `inbuf` began (its first byte), sweep clock.
    request_since: Option<Instant>,
    /// What `inbuf` counts in the input budget (`input_held`).
    charged: usize,
    /// Where the request at the front of `inbuf` ends when its head passed the key check
    /// and its body is admitted and still arriving; 0 otherwise.
    admitted_end: usize,
    /// The scan of the chunked body at the front of `inbuf`, while it arrives.
    chunks: Option<chunked::ChunkScan>,
    /// Its body waits for room in the input budget (the connection is in its queue).
    paused: bool,
    /// The request being read waited for room (counted once; its 408 says so).
    was_paused: bool,
    /// Last time bytes were read or written, sweep clock.
    active_at: Instant,
    /// Last time the client took some of its answers, or when they began to wait;
    /// sweep clock.
    out_since: Instant,
    /// The request at the front of `inbuf` is incomplete, as `process` last found it
    /// (false when it stopped before looking: complete requests may wait there).
    front_incomplete: bool,
    /// It made a request that needed the API key and had it (any request, without a
    /// key configured). Until then it is a stranger: idle, it is closed after
    /// `api_request_timeout_ms` rather than `api_idle_timeout_ms`, and it may be closed
    /// to make room for a new connection at the cap (`evict_stranger`).
    trusted: bool,
}

impl ApiConn {
    fn unsent(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// What its input buffer counts in the budget: the memory it takes, and at least the
    /// whole request whose body is admitted.
    fn input_held(&self) -> usize {
        self.inbuf.capacity().max(self.admitted_end)
    }
}

/// What the sweep found due on a connection.
enum Due {
    /// Lingered long enough after its last response.
    Linger,
    /// Shards did not answer in time a request waiting for this.
    Reply(WaitKind),
    /// A request did not complete in time.
    Request,
    /// Nothing happened for the idle timeout.
    Idle,
}

/// A parsed request, borrowed from the connection's buffer.
pub(crate) struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body: &'a [u8],
}

/// What a handler decided.
pub(crate) enum Handled {
    /// Answer now.
    Respond(Vec<u8>),
    /// Answer when `expected` shard replies have arrived.
    Wait {
        kind: WaitKind,
        serial: u64,
        expected: usize,
        user: Option<String>,
        /// For a topic: the member page asked for.
        page: Option<crate::command::MemberPage>,
    },
}

/// The API thread's state.
pub struct Api {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<ApiConn>,
    shards: Links<ShardCmd>,
    replies: Receiver<Reply>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    serial: u64,
    scratch: Vec<u8>,
    /// The loop's clock, read once per poll: timeouts need no clock read per request.
    now: Instant,
    /// Accepting resumes then (after EMFILE/ENFILE: the listener stays readable).
    accept_paused_until: Option<Instant>,
    accept_error_logged: Option<Instant>,
    /// Connections served at once: `api_max_connections` within the descriptor reserve.
    conn_cap: usize,
    /// The 503 for connections over `conn_cap`, made once.
    over_capacity: Vec<u8>,
    /// Numbers topic pushes (docs/protocol.md 4.1).
    sequencer: sequencer::Sequencer,
    /// Push ids accepted per stream (docs/protocol.md 4.3).
    dedup: dedup::Dedup,
    /// Cluster mode: pushes go to Redis through the publisher, not to the shards.
    broker: Option<crate::broker::BrokerLinks>,
    /// Clients' publishes from the shards, numbered here like topic pushes.
    publishes: Receiver<crate::command::ClientPublish>,
    /// Answers to client publishes per shard, waiting for room in its command queue.
    publish_answers: client_publish::Answers,
    /// The Kafka ingress's batches, when it runs.
    ingress: Option<crate::command::IngressLink>,
    /// Cluster mode: ingress batches waiting for Redis.
    ingress_at_redis: ingress::AtRedis,
    /// What all request buffers hold together (`api_max_buffered_bytes`).
    budget: budget::InputBudget,
    /// HTTPS (`api_tls_cert`): the thread that shakes hands before a connection comes
    /// here (each connection's records are read and written here after).
    handshaker: Option<handshaker::Handshaker>,
    /// Newcomers handed to the handshake thread with a request for room, not answered
    /// yet: each takes the place of a handshake about to close.
    room_requests: usize,
    /// The keys `SIGHUP` may replace (`api_key_file`).
    keys: Arc<keys::ApiKeys>,
    /// The keys requests are checked against (none: no key needed), taken from `keys`
    /// when its generation moves, so a request takes no lock.
    key_set: Arc<[String]>,
    /// `keys`'s generation when `key_set` was taken.
    keys_seen: u64,
}

impl Api {
    /// Builds the API around a bound listener; `poll` owns `WAKER` already.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        poll: Poll,
        listener: std::net::TcpListener,
        shards: Links<ShardCmd>,
        replies: Receiver<Reply>,
        publishes: Receiver<crate::command::ClientPublish>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        draining: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
        broker: Option<crate::broker::BrokerLinks>,
        ingress: Option<crate::command::IngressLink>,
        tls: Option<crate::tls::TlsServer>,
        waker: Arc<Waker>,
        api_keys: Arc<keys::ApiKeys>,
    ) -> io::Result<Api> {
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let nofile = crate::fdlimit::current().map(|(soft, _)| soft);
        let conn_cap = crate::fdlimit::api_connection_cap(nofile, config.api_max_connections);
        tracing::info!(
            rlimit_nofile = nofile,
            api_max_connections = config.api_max_connections,
            api_connection_cap = conn_cap,
            "push API connection cap: connections beyond it get 503 over_capacity"
        );
        let why = if conn_cap < config.api_max_connections {
            format!(
                "api_max_connections is {}, but the open-file limit leaves the API {conn_cap} \
                 descriptors",
                config.api_max_connections
            )
        } else {
            "api_max_connections".to_string()
        };
        let over_capacity = http::error_response(
            503,
            "over_capacity",
            &format!(
                "the push API already has {conn_cap} connections open ({why}); retry later \
                 or reuse a keep-alive connection"
            ),
            false,
            "Retry-After: 1\r\n",
        );
        let sequencer = sequencer::Sequencer::new(config.history_ttl, sequencer::MAX_TOPIC_STREAMS);
        let dedup = dedup::Dedup::new(config.dedup_window, dedup::MAX_DEDUP_ENTRIES);
        let heads = (conn_cap as u64).saturating_mul(request::MAX_HEAD as u64 + 1);
        if heads > config.api_max_buffered_bytes as u64 / 2 {
            // Heads count in the budget (any client may send one), so they alone could
            // leave bodies one at a time.
            tracing::warn!(
                api_max_buffered_bytes = config.api_max_buffered_bytes,
                heads_at_most = heads,
                "api_max_buffered_bytes is under twice what the API's connections can hold in \
                 request heads (16 KiB each): clients without the key could slow pushes; \
                 raise it or lower api_max_connections"
            );
        }
        let budget = budget::InputBudget::new(config.api_max_buffered_bytes);
        let shards_len = shards.len();
        let handshaker = tls
            .map(|tls| {
                handshaker::Handshaker::spawn(
                    tls,
                    config.api_request_timeout,
                    Arc::clone(&metrics),
                    waker,
                )
            })
            .transpose()?;
        Ok(Api {
            sequencer,
            dedup,
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
            now: Instant::now(),
            accept_paused_until: None,
            accept_error_logged: None,
            conn_cap,
            over_capacity,
            publish_answers: client_publish::Answers::new(shards_len),
            broker,
            publishes,
            ingress,
            ingress_at_redis: ingress::AtRedis::default(),
            budget,
            handshaker,
            room_requests: 0,
            key_set: api_keys.current(),
            keys_seen: api_keys.generation(),
            keys: api_keys,
        })
    }

    /// Serves until `stop` is set (after the shards have finished).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut last_sweep = Instant::now();
        loop {
            if let Err(e) = reactor::poll_step(&mut self.poll, &mut events, SWEEP) {
                tracing::error!(error = %e, "push API poll failed; API stops");
                self.close_all();
                return;
            }
            self.now = Instant::now();
            if self.stop.load(Relaxed) {
                self.close_all();
                return;
            }
            if self.keys.generation() != self.keys_seen {
                self.keys_seen = self.keys.generation();
                self.key_set = self.keys.current();
            }
            // Before the requests: one that came after a handshake ended sees it counted.
            self.take_handshakes();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            if let Some(c) = self.conns.get_mut(key) {
                                c.unread = true;
                                c.peer_closed |= event.is_read_closed() || event.is_error();
                            }
                        }
                        self.drive(key);
                    }
                }
            }
            self.take_replies();
            self.take_publishes();
            self.take_ingress();
            // Buffers drained this turn may make room for a body that waits.
            self.resume_paused();
            if self.accept_paused_until.is_some_and(|t| self.now >= t) {
                self.accept_paused_until = None;
                // Connections may have queued while paused; edge-triggered, so look now.
                self.accept();
            }
            if self.now.saturating_duration_since(last_sweep) >= SWEEP {
                last_sweep = self.now;
                self.sweep();
            }
            // Commands sent this turn wake their shards, once each.
            self.shards.wake_pending();
            self.metrics
                .topic_streams
                .store(self.sequencer.len() as u64, Relaxed);
            self.metrics
                .dedup_entries
                .store(self.dedup.len() as u64, Relaxed);
            self.metrics
                .dedup_forgotten_early
                .store(self.dedup.forgotten_early(), Relaxed);
            self.metrics
                .api_input_bytes
                .store(self.budget.held() as u64, Relaxed);
        }
    }

    fn accept(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let handshaking = self.handshaker.as_ref().map_or(0, |h| h.pending());
                    // Newcomers waiting for room take the places of the handshakes they
                    // replace, so they are not counted twice.
                    let held = (self.conns.len() + handshaking).saturating_sub(self.room_requests);
                    let make_room = held >= self.conn_cap && !self.evict_stranger();
                    if make_room && !self.can_ask_for_room(handshaking) {
                        self.refuse(stream);
                        continue;
                    }
                    // On Linux the socket inherits TCP_NODELAY from the listener.
                    #[cfg(not(target_os = "linux"))]
                    let _ = stream.set_nodelay(true);
                    match &mut self.handshaker {
                        Some(h) => {
                            if h.start(stream, make_room) {
                                self.room_requests += usize::from(make_room);
                                // Counted from accept, like a plain connection.
                                self.metrics.api_connections.fetch_add(1, Relaxed);
                                self.metrics
                                    .api_pending_handshakes
                                    .store(h.pending() as u64, Relaxed);
                            } else {
                                self.metrics.api_refused_connections.fetch_add(1, Relaxed);
                            }
                        }
                        None => {
                            self.adopt(ApiStream::Plain(stream));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.metrics.accept_errors_api.fetch_add(1, Relaxed);
                    // That connection is gone; the next one may be fine.
                    if e.raw_os_error() == Some(libc::ECONNABORTED) {
                        continue;
                    }
                    if self
                        .accept_error_logged
                        .is_none_or(|t| self.now.saturating_duration_since(t) >= ACCEPT_LOG_EVERY)
                    {
                        self.accept_error_logged = Some(self.now);
                        tracing::warn!(
                            error = %e,
                            out_of_files = is_out_of_files(&e),
                            "push API accept failed; pausing accepts briefly"
                        );
                    }
                    // EMFILE/ENFILE (or worse) leaves the listener readable: retrying at
                    // once would spin, so accepting resumes after a pause.
                    self.accept_paused_until = Some(self.now + ACCEPT_PAUSE);
                    return;
                }
            }
        }
    }

    /// Connections whose handshakes ended on the handshake thread: the ready ones are
    /// served from now on; the gone ones leave the connection gauge.
    fn take_handshakes(&mut self) {
        while let Some(handed) = self.handshaker.as_mut().and_then(|h| h.next_handed()) {
            if let Some(h) = &self.handshaker {
                self.metrics
                    .api_pending_handshakes
                    .store(h.pending() as u64, Relaxed);
            }
            match handed {
                handshaker::Handed::Ready(stream) => {
                    self.metrics.api_connections.fetch_sub(1, Relaxed);
                    if let Some(key) = self.adopt(stream) {
                        // Plaintext may wait in rustls already, which no event announces.
                        if let Some(c) = self.conns.get_mut(key) {
                            c.unread = true;
                        }
                        self.drive(key);
                    }
                }
                handshaker::Handed::Gone => {
                    self.metrics.api_connections.fetch_sub(1, Relaxed);
                }
                handshaker::Handed::Room => {
                    self.room_requests = self.room_requests.saturating_sub(1);
                    self.metrics.api_connections.fetch_sub(1, Relaxed);
                }
            }
            // A handshake thread that ended answers no request for room: none is left.
            if self.handshaker.as_ref().is_some_and(|h| h.pending() == 0) {
                self.room_requests = 0;
            }
        }
    }

    /// Serves a connection from now on; its key, or None if it could not be polled.
    fn adopt(&mut self, mut stream: ApiStream) -> Option<usize> {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.poll
            .registry()
            .register(
                stream.socket(),
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .ok()?;
        entry.insert(ApiConn {
            stream,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            waiting: None,
            close_after_write: false,
            lingering_since: None,
            unread: false,
            peer_closed: false,
            eof: false,
            request_since: None,
            active_at: self.now,
            out_since: self.now,
            front_incomplete: false,
            charged: 0,
            admitted_end: 0,
            chunks: None,
            paused: false,
            was_paused: false,
            trusted: false,
        });
        self.metrics.api_connections.fetch_add(1, Relaxed);
        Some(key)
    }

    /// Whether a newcomer at the cap may go to the handshake thread with a request for
    /// room: over HTTPS, while it holds handshakes not already being replaced, and few
    /// such requests are in flight (each is a socket beside the cap until answered).
    fn can_ask_for_room(&self, handshaking: usize) -> bool {
        self.handshaker.is_some()
            && handshaking > self.room_requests
            && self.room_requests < MAX_ROOM_REQUESTS
    }

    /// At the connection cap: closes the stranger (no keyed request yet, see
    /// `ApiConn::trusted`) that has waited longest, at least `EVICT_MIN_IDLE`: silent,
    /// partway through a head, lingering after its 401, or not reading its probes'
    /// answers. So connections that never make a keyed request cannot hold every slot,
    /// and with them the upstream's pushes and the probes, for the timeouts. A stranger
    /// holds nothing a keyed client is owed (no body is read nor shard asked for it).
    /// True when one was closed.
    fn evict_stranger(&mut self) -> bool {
        let now = self.now;
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| !c.trusted)
            .map(|(key, c)| (c.request_since.unwrap_or(c.active_at), key))
            .filter(|&(since, _)| now.saturating_duration_since(since) >= EVICT_MIN_IDLE)
            .min()
            .map(|(_, key)| key);
        let Some(key) = oldest else {
            return false;
        };
        self.metrics.api_evictions.fetch_add(1, Relaxed);
        self.drop_conn(key);
        true
    }

    /// Answers a connection over `conn_cap` with 503 and closes it, best
    /// effort and without tracking it: a few reads of what already arrived (so closing
    /// does not turn into a reset that overtakes the answer), one write.
    fn refuse(&mut self, mut stream: TcpStream) {
        self.metrics.api_refused_connections.fetch_add(1, Relaxed);
        if self.handshaker.is_some() {
            // A plain answer would be garbage to a TLS client, and a handshake per
            // refusal is what capacity cannot afford: the connection just closes.
            return;
        }
        for _ in 0..4 {
            match stream.read(&mut self.scratch) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let _ = stream.write(&self.over_capacity);
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }

    /// Writes, reads and serves one connection until it would block or must wait.
    fn drive(&mut self, key: usize) {
        loop {
            if !self.write_out(key) {
                return;
            }
            let Some(read) = self.read_in(key) else {
                return;
            };
            let progress = self.process(key);
            if self.last_answer_at_eof(key) {
                // Write it out and close.
                continue;
            }
            // Nothing new: whatever stopped us (an empty socket, a full one, a shard reply
            // still to come, room in the input budget) brings its own wake-up.
            if read == 0 && progress == 0 {
                return;
            }
        }
    }

    /// After the client's FIN: once every complete request is served (none waits on the
    /// shards and output is under the bound, so `process` stopped at the end or at an
    /// incomplete request), the answers are the last. True when that happened now.
    fn last_answer_at_eof(&mut self, key: usize) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        if !c.eof || c.close_after_write || c.waiting.is_some() || c.unsent() > MAX_UNSENT {
            return false;
        }
        c.close_after_write = true;
        self.clear_input(key);
        true
    }

    /// Drops what a connection's input buffer holds: nothing more is parsed on it.
    fn clear_input(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        c.inbuf = Vec::new();
        c.request_since = None;
        c.paused = false;
        c.chunks = None;
        if std::mem::take(&mut c.admitted_end) != 0 {
            self.budget.release();
        }
        self.budget.charge(&mut c.charged, 0);
    }

    /// Drives the connections whose bodies wait for room, first come first served, as
    /// long as each finds it.
    fn resume_paused(&mut self) {
        while let Some(key) = self.budget.next_waiting() {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            // Not paused any more: it ended, or was answered and closed.
            if !std::mem::take(&mut c.paused) {
                continue;
            }
            self.drive(key);
            if self.conns.get(key).is_some_and(|c| c.paused) {
                // Still no room: it stays first in line, and those behind it wait too.
                self.budget.last_goes_first();
                return;
            }
        }
    }

    /// The body of the request at the front of `key`'s buffer, `end` bytes with its head,
    /// is to come: read it if the budget has room (with `100 Continue` first when the
    /// client waits for one), else wait for room. True when it was admitted.
    fn admit_body(&mut self, key: usize, end: usize, send_continue: bool) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        // A chunked body grows its admission as it comes: the one it had is given back
        // and the larger one asked for, as if new.
        if std::mem::take(&mut c.admitted_end) != 0 {
            self.budget.release();
        }
        if !self.budget.admit(c.charged, end) {
            if !std::mem::replace(&mut c.was_paused, true) {
                self.metrics.api_input_pauses.fetch_add(1, Relaxed);
            }
            if !std::mem::replace(&mut c.paused, true) {
                self.budget.wait(key);
            }
            return false;
        }
        c.admitted_end = end;
        // The whole request in one allocation, not doubled as it arrives.
        c.inbuf.reserve_exact(end.saturating_sub(c.inbuf.len()));
        let held = c.input_held();
        self.budget.charge(&mut c.charged, held);
        if send_continue {
            queue_out(c, &self.metrics, CONTINUE, self.now);
        }
        true
    }

    /// Reads what the bounds allow; returns the bytes read, or None if the connection ended.
    fn read_in(&mut self, key: usize) -> Option<usize> {
        let mut total = 0;
        loop {
            let c = self.conns.get_mut(key)?;
            if !c.unread {
                return Some(total);
            }
            let discard = c.close_after_write;
            // What this read may bring: anything when it is discarded; else at most a head
            // (one byte more, so that a head over the limit is refused), or the rest of a
            // body admitted to the input budget; nothing while answers pile up unread.
            // Reading stops there, with `unread` still set, so that `drive` reads again
            // once the head is looked at or there is room.
            let want = if discard {
                self.scratch.len()
            } else if c.unsent() > MAX_UNSENT {
                0
            } else if c.admitted_end > c.inbuf.len() {
                c.admitted_end - c.inbuf.len()
            } else {
                (request::MAX_HEAD + 1).saturating_sub(c.inbuf.len())
            }
            .min(self.scratch.len());
            if want == 0 {
                return Some(total);
            }
            match c
                .stream
                .read(&mut self.scratch[..want], &self.metrics.api_tls)
            {
                Ok(0) => {
                    // An answer still owed (waiting on the shards, or not all written) is
                    // sent before the connection closes, and so are the answers to
                    // requests that came before the FIN: the client may read after
                    // closing its half. `write_out` closes once they are out.
                    let owed = c.waiting.is_some() || c.unsent() > 0;
                    if !owed && (discard || c.inbuf.is_empty()) {
                        self.drop_conn(key);
                        return None;
                    }
                    c.eof = true;
                    c.unread = false;
                    return Some(total);
                }
                Ok(n) => {
                    c.active_at = self.now;
                    total += n;
                    // A short read emptied the socket: one more would only say WouldBlock
                    // (one recv per request instead of two), and new bytes bring a new
                    // edge.
                    let drained = n < want && !c.peer_closed && c.stream.short_read_drains();
                    if drained {
                        c.unread = false;
                    }
                    if !discard {
                        if c.inbuf.is_empty() {
                            c.request_since = Some(self.now);
                        }
                        // A head grows its buffer by doubling up to its limit, not past
                        // it: `extend_from_slice` would double a 16,000-byte head to
                        // 32,000 bytes of capacity, all counted in the input budget.
                        let need = c.inbuf.len() + n;
                        let head_limit = request::MAX_HEAD + 1;
                        if need > c.inbuf.capacity() && need <= head_limit {
                            let target = (c.inbuf.capacity() * 2).clamp(need, head_limit);
                            c.inbuf.reserve_exact(target - c.inbuf.len());
                        }
                        c.inbuf.extend_from_slice(&self.scratch[..n]);
                        let held = c.input_held();
                        self.budget.charge(&mut c.charged, held);
                    }
                    if drained {
                        return Some(total);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.unread = false;
                    return Some(total);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if tls::is_plain_http(&e) => {
                    c.unread = false;
                    let response = http::error_response(
                        400,
                        "plain_http",
                        "this port speaks HTTPS (api_tls_cert): use https://",
                        false,
                        "",
                    );
                    self.answer_and_close(key, &response);
                    return None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "push API connection failed");
                    self.drop_conn(key);
                    return None;
                }
            }
        }
    }

    /// Serves complete requests from the buffer, one at a time, while the connection
    /// is not waiting on shards and its unsent output is under `MAX_UNSENT`; a head whose
    /// body is still to come is checked and its body admitted (or made to wait). Returns
    /// how many requests it served and bodies it admitted.
    fn process(&mut self, key: usize) -> usize {
        let Some(c) = self.conns.get_mut(key) else {
            return 0;
        };
        let mut inbuf = std::mem::take(&mut c.inbuf);
        let mut pos = 0;
        let mut progress = 0;
        let mut body_to_come = None;
        let mut incomplete = false;
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return progress;
            };
            if c.waiting.is_some()
                || c.close_after_write
                || pos == inbuf.len()
                || c.unsent() > MAX_UNSENT
            {
                break;
            }
            // An admitted body still arriving: its head was looked at already. A chunked
            // one is scanned as it comes (its end is found there, not known before).
            if pos == 0
                && c.admitted_end > inbuf.len()
                && c.chunks.as_mut().is_none_or(|scan| {
                    matches!(scan.advance(&inbuf), Ok(chunked::Scanned::More { .. }))
                })
            {
                incomplete = true;
                break;
            }
            match self.one_request(key, &inbuf[pos..]) {
                Step::Incomplete => {
                    incomplete = true;
                    break;
                }
                Step::BodyToCome { end, send_continue } => {
                    body_to_come = Some((end, send_continue));
                    incomplete = true;
                    break;
                }
                Step::Done { used, response } => {
                    progress += 1;
                    pos += used;
                    let Some(c) = self.conns.get_mut(key) else {
                        return progress;
                    };
                    // What is left is the next request; its clock starts now at the latest.
                    c.request_since = Some(self.now);
                    c.was_paused = false;
                    // An admitted body is the front request's: this one.
                    if std::mem::take(&mut c.admitted_end) != 0 {
                        self.budget.release();
                    }
                    if let Some(r) = response {
                        queue_out(c, &self.metrics, &r, self.now);
                    }
                }
            }
        }
        let Some(c) = self.conns.get_mut(key) else {
            return progress;
        };
        c.front_incomplete = incomplete;
        if c.close_after_write {
            // Nothing after this is parsed: free it now rather than at close.
            c.inbuf = inbuf;
            self.clear_input(key);
            return progress;
        }
        // One shift per batch: draining per request would make pipelining quadratic.
        inbuf.drain(..pos);
        if inbuf.is_empty() && inbuf.capacity() > KEEP_INBUF {
            inbuf = Vec::new();
        } else if inbuf.capacity() > 256 * 1024 && inbuf.len() < 64 * 1024 && c.admitted_end == 0 {
            // (An admitted body keeps the room it was given.)
            inbuf.shrink_to(64 * 1024);
        }
        c.inbuf = inbuf;
        let held = c.input_held();
        self.budget.charge(&mut c.charged, held);
        if let Some((end, send_continue)) = body_to_come {
            if self.admit_body(key, end, send_continue) {
                progress += 1;
            }
        }
        progress
    }

    fn one_request(&mut self, key: usize, buf: &[u8]) -> Step {
        let (head, complete, chunked) = match request::frame(buf) {
            Framed::Complete(h) => (h, true, false),
            Framed::HeadOnly(h) => (h, false, false),
            Framed::Chunked(h) => (h, false, true),
            Framed::Incomplete => return Step::Incomplete,
            // The method is in the buffer even when the head cannot be framed.
            Framed::Error(e) => return self.fatal(key, &e, buf.starts_with(b"HEAD ")),
        };
        // Checked as soon as the head is in: no body is held for a client without the
        // key, and it is answered at once rather than after sending it all.
        if let Err(message) = self.authorize(head.path, head.authorization) {
            self.metrics.api_requests.fetch_add(1, Relaxed);
            let mut response = http::error_response(401, "unauthorized", message, false, "");
            if head.method == "HEAD" {
                response = http::head_only(response);
            }
            return self.closing(key, response);
        }
        // A probe needs no key, so it earns no trust where a key is required.
        if self.key_set.is_empty() || !self.is_public(head.path) {
            if let Some(c) = self.conns.get_mut(key) {
                c.trusted = true;
            }
        }
        if !complete {
            if !self.key_set.is_empty() && self.is_public(head.path) {
                // A probe that needs no key takes no body either: answered now and
                // closed, the body unread.
                return self.serve(key, &head, &[], false, 0);
            }
            if chunked {
                return self.chunked_request(key, &head, buf);
            }
            return Step::BodyToCome {
                end: head.body.end,
                // Not once the client has started on the body anyway.
                send_continue: head.expect_continue && buf.len() == head.body.start,
            };
        }
        self.serve(
            key,
            &head,
            &buf[head.body.clone()],
            head.keep_alive,
            head.body.end,
        )
    }

    /// A request with a chunked body, its head checked: served once the scan finds its
    /// end, else read on, its admission grown (doubling, so a large body is scanned and
    /// copied a few times, not once per read).
    fn chunked_request(&mut self, key: usize, head: &request::Head<'_>, buf: &[u8]) -> Step {
        let Some(c) = self.conns.get_mut(key) else {
            return Step::Incomplete;
        };
        let start = head.body.start;
        let scan = c
            .chunks
            .get_or_insert_with(|| chunked::ChunkScan::new(start));
        let scanned = scan.advance(buf);
        let data_len = scan.data_len();
        match scanned {
            Ok(chunked::Scanned::More { need }) => {
                let most = start + crate::config::MAX_API_BODY_BYTES + chunked::MAX_CHUNK_FRAMING;
                let grown = buf.len() + (buf.len() - start).max(KEEP_INBUF);
                Step::BodyToCome {
                    end: grown.min(most).max(need),
                    send_continue: head.expect_continue && buf.len() == start,
                }
            }
            Ok(chunked::Scanned::Done { end }) => {
                c.chunks = None;
                match chunked::decode(&buf[..end], start, data_len) {
                    Ok(body) => self.serve(key, head, &body, head.keep_alive, end),
                    Err(e) => self.fatal(key, &e, head.method == "HEAD"),
                }
            }
            Err(e) => {
                c.chunks = None;
                self.fatal(key, &e, head.method == "HEAD")
            }
        }
    }

    /// Handles a request whose head passed the key check; `used` is what it takes of the
    /// buffer.
    fn serve(
        &mut self,
        key: usize,
        head: &request::Head<'_>,
        body: &[u8],
        keep_alive: bool,
        used: usize,
    ) -> Step {
        // HEAD is answered as GET without the body on the read-only endpoints, and
        // everywhere else with the answer (405, 404, ...) a HEAD gets, its body left out
        // too.
        let head_only = head.method == "HEAD";
        let method = if head_only && routes::read_only(head.path) {
            "GET"
        } else {
            head.method
        };
        let request = Request {
            method,
            path: head.path,
            query: head.query,
            body,
        };
        self.metrics.api_requests.fetch_add(1, Relaxed);
        let outcome = self.handle(key, &request, keep_alive);
        let since = self.now;
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
            Handled::Respond(r) => Step::Done {
                used,
                response: Some(if head_only { http::head_only(r) } else { r }),
            },
            Handled::Wait {
                kind,
                serial,
                expected,
                user,
                page,
            } => {
                c.waiting = Some(Waiting {
                    serial,
                    kind,
                    remaining: expected,
                    sessions: 0,
                    users: 0,
                    since,
                    keep_alive,
                    head_only,
                    user,
                    details: Vec::new(),
                    members: Vec::new(),
                    page,
                    published: None,
                    cluster: None,
                });
                Step::Done {
                    used,
                    response: None,
                }
            }
        }
    }

    /// Answers with `response` and closes: what follows is not parsed, so nothing needs
    /// consuming.
    fn closing(&mut self, key: usize, response: Vec<u8>) -> Step {
        if let Some(c) = self.conns.get_mut(key) {
            c.close_after_write = true;
        }
        Step::Done {
            used: 0,
            response: Some(response),
        }
    }

    /// An error after which the rest of the stream cannot be framed: answer and close
    /// (a `HEAD` without the body, as every answer to one).
    fn fatal(&mut self, key: usize, e: &FrameError, head_only: bool) -> Step {
        let mut response = http::error_response(e.status(), e.code(), &e.to_string(), false, "");
        if head_only {
            response = http::head_only(response);
        }
        self.closing(key, response)
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn take_replies(&mut self) {
        while let Ok(r) = self.replies.try_recv() {
            let Some(r) = self.client_publish_reply(r) else {
                continue;
            };
            let Some(r) = self.ingress_reply(r) else {
                continue;
            };
            let Some(c) = self.conns.get_mut(r.ticket.conn) else {
                continue;
            };
            let Some(w) = c.waiting.as_mut().filter(|w| w.serial == r.ticket.serial) else {
                continue;
            };
            w.sessions += r.sessions;
            w.users += r.users;
            if !r.details.is_empty() {
                w.details.extend(r.details);
            }
            if !r.members.is_empty() {
                w.members.extend(r.members);
            }
            if r.published.is_some() {
                w.published = r.published;
            }
            if let Some(view) = r.cluster {
                w.cluster = Some(*view);
            }
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
        // Cluster mode: Redis refused, or could not be read.
        let broker_error = match (w.kind, &w.published, &w.cluster) {
            (WaitKind::Published { .. }, Some(Err(PublishError::NotPublished(e))), _) => {
                Some(format!("the push was not published: {e}"))
            }
            (WaitKind::Published { .. }, Some(Err(PublishError::Unanswered(e))), _) => Some(
                format!("the push may or may not have been published: {e}; an `id` makes sending it again harmless"),
            ),
            (WaitKind::Presence | WaitKind::Topic, _, Some(Err(e))) => {
                Some(format!("cannot read the cluster's view from Redis: {e}"))
            }
            _ => None,
        };
        if let Some(message) = broker_error {
            let mut response = http::error_response(
                503,
                "broker_unavailable",
                &message,
                w.keep_alive,
                "Retry-After: 1\r\n",
            );
            if w.head_only {
                response = http::head_only(response);
            }
            queue_out(c, &self.metrics, &response, self.now);
            c.request_since = Some(self.now);
            self.drive(key);
            return;
        }
        let body = match w.kind {
            WaitKind::Published { users } => published_body(w.published, users),
            WaitKind::Stats => {
                let mut stats = self.metrics.stats_value();
                let me = self.broker.as_ref().map_or("", |b| &*b.node_id);
                let view = w
                    .cluster
                    .unwrap_or_else(|| Err("no answer from the presence thread".into()));
                cluster_view::add_to_stats(&mut stats, me, view);
                stats
            }
            WaitKind::Push => serde_json::json!({"delivered": w.sessions, "users_online": w.users}),
            WaitKind::Disconnect => serde_json::json!({"closed": w.sessions}),
            WaitKind::Presence => {
                let me = self.broker.as_ref().map_or("", |b| &*b.node_id);
                let cluster = match w.cluster {
                    Some(Ok(crate::broker::ClusterView::User(nodes))) => Some((me, nodes)),
                    _ => None,
                };
                cluster_view::presence_body(
                    w.user.as_deref().unwrap_or_default(),
                    w.sessions,
                    &w.details,
                    cluster,
                )
            }
            WaitKind::Topic => {
                let topic = w.user.unwrap_or_default();
                let mut members = w.members;
                let mut subscribers = w.sessions;
                let (seq, epoch) = match w.cluster {
                    // Cluster mode: Redis numbers the topic and tells the other nodes'
                    // subscribers.
                    Some(Ok(crate::broker::ClusterView::Topic { seq, epoch, others })) => {
                        subscribers += others.subscribers;
                        members.extend(others.members);
                        (
                            seq,
                            epoch.map_or_else(|| sequencer::NO_EPOCH.into(), Into::into),
                        )
                    }
                    _ => self
                        .sequencer
                        .current(&topic, self.now)
                        .unwrap_or_else(|| (0, sequencer::NO_EPOCH.into())),
                };
                let mut body = serde_json::json!({
                    "topic": topic,
                    "subscribers": subscribers,
                    "seq": seq,
                    "epoch": &*epoch,
                });
                if let Some(page) = w.page {
                    // Each shard and node listed at most `limit + 1`; a user with sessions
                    // in several places is listed once.
                    members.sort_unstable();
                    members.dedup();
                    let more = members.len() > page.limit;
                    members.truncate(page.limit);
                    let next = if more { members.last().cloned() } else { None };
                    body["members"] = serde_json::json!(members);
                    body["next"] = serde_json::json!(next);
                }
                body
            }
        };
        let mut response = http::response(
            200,
            "application/json",
            body.to_string().as_bytes(),
            w.keep_alive,
            "",
        );
        if w.head_only {
            response = http::head_only(response);
        }
        queue_out(c, &self.metrics, &response, self.now);
        // A pipelined request behind this one was not looked at while it waited.
        c.request_since = Some(self.now);
        self.drive(key);
    }

    /// Finds what is due on each connection (every `SWEEP`, not per request) and acts.
    fn sweep(&mut self) {
        let now = self.now;
        let (request_timeout, idle_timeout) = (
            self.config.api_request_timeout,
            self.config.api_idle_timeout,
        );
        let older = |t: Instant, d: Duration| now.saturating_duration_since(t) >= d;
        let idle_limit = |c: &ApiConn| {
            if c.trusted {
                idle_timeout
            } else {
                request_timeout.min(idle_timeout)
            }
        };
        let due: Vec<(usize, Due)> = self
            .conns
            .iter()
            .filter_map(|(key, c)| {
                let due = if let Some(t) = c.lingering_since {
                    older(t, LINGER).then_some(Due::Linger)
                } else if let Some(w) = &c.waiting {
                    older(w.since, REPLY_TIMEOUT).then_some(Due::Reply(w.kind))
                } else if !c.inbuf.is_empty()
                    && !c.close_after_write
                    && (c.front_incomplete || c.unsent() == 0)
                {
                    // An incomplete request is buffered (complete ones are served unless
                    // answers pile up unread): its deadline holds whatever output waits,
                    // so trickling bytes behind unread answers cannot stretch it.
                    c.request_since
                        .is_some_and(|t| older(t, request_timeout))
                        .then_some(Due::Request)
                } else if c.unsent() > 0 {
                    // Answers are waiting and the client has taken none of them for the
                    // idle timeout (the request timeout for a stranger, whose answers are
                    // probes' or errors): it went idle without reading. Reads do not
                    // count, so one that keeps sending (or is discarded after a fatal
                    // error) is closed too.
                    older(c.out_since, idle_limit(c)).then_some(Due::Idle)
                } else {
                    // No request in progress and nothing to send. A connection that
                    // connects and never sends a byte ends here too (the request clock
                    // starts at a byte): idle, and closed after api_idle_timeout once it
                    // made a keyed request, after the request timeout before that, so
                    // that silent strangers cannot hold the slots for a minute each.
                    older(c.active_at, idle_limit(c)).then_some(Due::Idle)
                };
                due.map(|d| (key, d))
            })
            .collect();
        for (key, due) in due {
            match due {
                Due::Linger => self.drop_conn(key),
                Due::Idle => {
                    self.metrics.api_idle_closes.fetch_add(1, Relaxed);
                    self.drop_conn(key);
                }
                Due::Request => {
                    self.metrics.api_request_timeouts.fetch_add(1, Relaxed);
                    let mut message = format!(
                        "the request was not complete (head and body) within {} ms",
                        request_timeout.as_millis()
                    );
                    if self.conns.get(key).is_some_and(|c| c.was_paused) {
                        message.push_str(&format!(
                            "; its body waited, unread, while the push API's request buffers \
                             held api_max_buffered_bytes ({} bytes); retry later",
                            self.config.api_max_buffered_bytes
                        ));
                    }
                    let mut response =
                        http::error_response(408, "request_timeout", &message, false, "");
                    if self
                        .conns
                        .get(key)
                        .is_some_and(|c| c.inbuf.starts_with(b"HEAD "))
                    {
                        response = http::head_only(response);
                    }
                    self.answer_and_close(key, &response);
                }
                Due::Reply(kind) => {
                    self.metrics.api_reply_timeouts.fetch_add(1, Relaxed);
                    // Not 503 `overloaded` ("nothing was queued, retry"): what was asked
                    // for may have been done, and a blind retry may do it twice.
                    let mut response = http::error_response(
                        504,
                        "timeout",
                        &reply_timeout_message(kind),
                        false,
                        "",
                    );
                    if let Some(c) = self.conns.get_mut(key) {
                        if c.waiting.take().is_some_and(|w| w.head_only) {
                            response = http::head_only(response);
                        }
                    }
                    self.answer_and_close(key, &response);
                }
            }
        }
    }

    /// Sends `response` as the connection's last and closes it once written.
    fn answer_and_close(&mut self, key: usize, response: &[u8]) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        c.close_after_write = true;
        queue_out(c, &self.metrics, response, self.now);
        self.clear_input(key);
        self.drive(key);
    }

    /// Writes what the socket takes; returns false if the connection ended.
    fn write_out(&mut self, key: usize) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        while c.out_pos < c.out.len() {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(0) => {
                    self.drop_conn(key);
                    return false;
                }
                Ok(n) => {
                    c.out_pos += n;
                    c.active_at = self.now;
                    c.out_since = self.now;
                    self.metrics.api_output_bytes.fetch_sub(n as u64, Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.drop_conn(key);
                    return false;
                }
            }
        }
        c.out.clear();
        c.out_pos = 0;
        if c.out.capacity() > 4 * MAX_UNSENT {
            c.out.shrink_to(MAX_UNSENT);
        }
        // Through TLS, records may still wait for the socket: the writable event that
        // brings room brings us back here.
        match c.stream.flush() {
            Ok(true) => {}
            Ok(false) => return true,
            Err(_) => {
                self.drop_conn(key);
                return false;
            }
        }
        if c.close_after_write && c.waiting.is_none() && c.lingering_since.is_none() {
            if c.eof {
                // The client has closed its half already: nothing to linger for.
                self.drop_conn(key);
                return false;
            }
            match c.stream.shutdown_write() {
                Ok(true) => c.lingering_since = Some(self.now),
                // close_notify waits for room; the writable event brings us back.
                Ok(false) => return true,
                Err(_) => {
                    self.drop_conn(key);
                    return false;
                }
            }
        }
        true
    }

    fn drop_conn(&mut self, key: usize) {
        if let Some(mut c) = self.conns.try_remove(key) {
            if c.admitted_end != 0 {
                self.budget.release();
            }
            self.budget.charge(&mut c.charged, 0);
            let _ = self.poll.registry().deregister(c.stream.socket());
            self.metrics.api_connections.fetch_sub(1, Relaxed);
            self.metrics
                .api_output_bytes
                .fetch_sub(c.unsent() as u64, Relaxed);
        }
    }

    /// The API stops: its connections close and its gauges return to zero.
    fn close_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.drop_conn(key);
        }
        if let Some(h) = self.handshaker.take() {
            let handshaking = h.stop();
            self.metrics
                .api_connections
                .fetch_sub(handshaking as u64, Relaxed);
            self.metrics.api_pending_handshakes.store(0, Relaxed);
        }
    }
}

/// The `?wait=1` answer in cluster mode (docs/protocol.md 5): the `seq` and epoch Redis
/// gave a user or topic push, each user's for a `users` push, the node count for a
/// broadcast; `duplicate` where the stream already had the push's `id`.
fn published_body(p: Option<crate::broker::script::Published>, users: bool) -> serde_json::Value {
    use crate::broker::script::Outcome;
    let outcomes = match p {
        Some(Ok(o)) => o,
        _ => Vec::new(),
    };
    if let (false, [one]) = (users, outcomes.as_slice()) {
        return match one {
            Outcome::Numbered { seq, epoch, .. } => serde_json::json!({"seq": seq, "epoch": epoch}),
            Outcome::Duplicate { .. } => serde_json::json!({"duplicate": true}),
            Outcome::Broadcast { nodes } => serde_json::json!({"nodes": nodes}),
        };
    }
    let mut seqs = serde_json::Map::new();
    let mut duplicates = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Numbered { stream, seq, epoch } => {
                seqs.insert(stream, serde_json::json!({"seq": seq, "epoch": epoch}));
            }
            Outcome::Duplicate { stream } => duplicates.push(stream),
            Outcome::Broadcast { .. } => {}
        }
    }
    serde_json::json!({"users": seqs, "duplicates": duplicates})
}

/// Appends a response to a connection's output, keeping the output gauge exact.
fn queue_out(c: &mut ApiConn, metrics: &Metrics, bytes: &[u8], now: Instant) {
    if c.unsent() == 0 {
        // The client's clock for taking its answers starts now.
        c.out_since = now;
    }
    c.out.extend_from_slice(bytes);
    metrics
        .api_output_bytes
        .fetch_add(bytes.len() as u64, Relaxed);
}

/// The 504's message for a request that waited `REPLY_TIMEOUT` in vain: what is known of
/// its outcome, in the words of what it asked.
fn reply_timeout_message(kind: WaitKind) -> String {
    let secs = REPLY_TIMEOUT.as_secs();
    match kind {
        WaitKind::Push => format!(
            "the shards did not answer within {secs} s; the push was queued and may or may \
             not have been delivered (an `id` makes sending it again harmless)"
        ),
        WaitKind::Published { .. } => format!(
            "no answer from Redis within {secs} s; the push may or may not have been \
             published (an `id` makes sending it again harmless)"
        ),
        WaitKind::Disconnect => format!(
            "the shards did not answer within {secs} s; the disconnect was queued and the \
             user's connections may or may not have been closed"
        ),
        WaitKind::Presence | WaitKind::Topic => {
            format!("the shards did not answer within {secs} s; the outcome is unknown, ask again")
        }
        WaitKind::Stats => format!(
            "the cluster's totals did not come within {secs} s; the outcome is unknown, ask \
             again"
        ),
    }
}

fn is_out_of_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

enum Step {
    Incomplete,
    /// The head passed the key check; its body (the request ends at `end`) is to come.
    BodyToCome {
        end: usize,
        send_continue: bool,
    },
    Done {
        used: usize,
        response: Option<Vec<u8>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_timeout_says_what_is_known_of_what_was_asked() {
        let push = reply_timeout_message(WaitKind::Push);
        assert!(
            push.contains("10 s") && push.contains("push was queued"),
            "{push}"
        );
        let published = reply_timeout_message(WaitKind::Published { users: false });
        assert!(published.contains("may or may not have been published"));
        let disconnect = reply_timeout_message(WaitKind::Disconnect);
        assert!(disconnect.contains("disconnect was queued"), "{disconnect}");
        for kind in [WaitKind::Presence, WaitKind::Topic, WaitKind::Stats] {
            let m = reply_timeout_message(kind);
            assert!(m.contains("ask again") && !m.contains("push"), "{m}");
        }
        assert_eq!(http::reason(504), "Gateway Timeout");
    }
}
