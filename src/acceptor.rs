//! The acceptor: accepts client sockets, reads each upgrade request head under a deadline,
//! judges it (origin, rate, token, capacity), answers refusals itself and hands accepted
//! sockets to the shard that owns the user.
//!
//! A socket is judged at accept too, before it costs more than a descriptor: the pending
//! handshake cap, `max_connections`, the descriptor ceiling (which keeps a reserve for the
//! push API) and the per-IP limit, which counts a handshake from accept so one address
//! cannot park silent sockets for the whole handshake window.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::admission::{Admission, ConnectRate};
use crate::auth::{AuthError, Verifier};
use crate::command::Handoff;
use crate::config::{Config, MAX_HEAD_BYTES};
use crate::fdlimit;
use crate::handshake::{self, Refusal, Upgrade};
use crate::link::{Links, SendError};
use crate::metrics::{HandshakeOutcome, Metrics};
use crate::reactor::{self, Clock, LISTENER, WAKER};
use crate::route::shard_of;
use crate::tls::{TlsAccept, TlsError, TlsServer};
use crate::wheel::{TimerId, Wheel};

/// How long a refused socket may take to read the response before it is dropped.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// How long to stop accepting when the process is out of file descriptors.
const EMFILE_PAUSE: Duration = Duration::from_millis(100);
/// TLS handshakes (about 9 KiB of rustls state each, freed when they end) after which a
/// quiet moment hands the freed memory back to the OS.
const TLS_HANDSHAKES_BEFORE_TRIM: u32 = 1024;

/// What every acceptor thread counts together, so the bounds hold for the process however
/// many acceptors share the listener.
pub(crate) struct Gate {
    /// Handshakes whose head is being read, on every acceptor (`max_pending_handshakes`;
    /// the `pending_handshakes` gauge).
    reading: AtomicUsize,
    /// Sockets the acceptors hold: handshakes being read and refused ones lingering (they
    /// hold descriptors too).
    held: AtomicUsize,
    /// New connections per second per IP (`connect_rate_per_ip`), one set of buckets.
    rate: Mutex<ConnectRate>,
    /// Client sockets (connections plus pending ones) the open-file limit allows once the
    /// push API's reserve is set aside; `usize::MAX` when the limit cannot be read. Read
    /// (and logged) once for all acceptors.
    fd_ceiling: usize,
}

impl Gate {
    /// Nothing counted yet.
    pub(crate) fn new(config: &Config) -> Gate {
        Gate {
            reading: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            rate: Mutex::new(ConnectRate::new(config.connect_rate_per_ip)),
            fd_ceiling: client_fd_ceiling(config),
        }
    }

    /// Takes one unit of `counter` if it stays within `max`.
    fn take(counter: &AtomicUsize, max: usize) -> bool {
        counter
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .is_ok()
    }
}

struct Pending {
    stream: TcpStream,
    buf: Vec<u8>,
    ip: IpAddr,
    timer: TimerId,
    /// A refusal was written; only the client's FIN is awaited. While false the head is
    /// being read: the socket counts in `in_progress`.
    refused: bool,
    /// The socket holds a count of its IP (`max_connections_per_ip`), from accept until it
    /// goes, lingering after a refusal included (or until it becomes a connection, which
    /// takes the count over): an address cannot hold more sockets than its limit by being
    /// refused over and over.
    holds_ip: bool,
    /// On the TLS listener: the handshake, whose plaintext goes to `buf`.
    tls: Option<Box<TlsAccept>>,
    /// Registered with the acceptor's poll: only once a first read left it waiting.
    registered: bool,
}

/// Everything the acceptor thread owns.
pub(crate) struct Acceptor {
    poll: Poll,
    listener: TcpListener,
    pending: Slab<Pending>,
    wheel: Wheel<u32>,
    clock: Clock,
    verifier: Verifier,
    /// The TLS listener's handshake configuration, when it speaks TLS.
    tls: Option<TlsServer>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
    /// Counts shared with the other acceptors.
    gate: Arc<Gate>,
    shards: Links<Handoff>,
    draining: Arc<AtomicBool>,
    /// Set once the shards are done: the acceptor answers what is pending and stops.
    stop: Arc<AtomicBool>,
    /// Handshakes in progress when the drain began have been answered.
    drain_answered: bool,
    paused_until: Option<Instant>,
    scratch: Vec<u8>,
    /// A descriptor held in reserve: when accept fails for want of descriptors, closing it
    /// lets the acceptor take one queued client and answer 503 instead of leaving the
    /// client hanging until its own timeout.
    spare_fd: Option<std::fs::File>,
    /// When running out of descriptors was last logged (at most once a second).
    out_of_files_logged: Option<Instant>,
    /// TLS handshakes started since freed memory was last handed back.
    tls_since_trim: u32,
    /// When freed memory was last handed back.
    last_trim: Instant,
}

impl Acceptor {
    /// Builds the acceptor around a bound listener; `poll` owns `WAKER` already.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        poll: Poll,
        listener: std::net::TcpListener,
        verifier: Verifier,
        tls: Option<TlsServer>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        admission: Arc<Admission>,
        gate: Arc<Gate>,
        shards: Links<Handoff>,
        draining: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Acceptor> {
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Acceptor {
            poll,
            listener,
            pending: Slab::new(),
            wheel: Wheel::new(),
            clock: Clock::real(),
            verifier,
            tls,
            gate,
            config,
            metrics,
            admission,
            shards,
            draining,
            stop,
            drain_answered: false,
            paused_until: None,
            scratch: vec![0; MAX_HEAD_BYTES + 1024],
            spare_fd: std::fs::File::open("/dev/null").ok(),
            out_of_files_logged: None,
            tls_since_trim: 0,
            last_trim: Instant::now(),
        })
    }

    fn tick(&self) -> u64 {
        self.clock.tick()
    }

    fn ticks(d: Duration) -> u64 {
        reactor::ticks_ceil(d).max(1)
    }

    /// Runs until shutdown begins; then answers pending handshakes with 503 and returns.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut fired = Vec::new();
        loop {
            let mut timeout = Duration::from_millis(100);
            if let Some(next) = self.wheel.next_expiry() {
                timeout = timeout.min(self.clock.until_tick(next));
            }
            if let Err(e) = reactor::poll_step(&mut self.poll, &mut events, timeout) {
                tracing::error!(error = %e, "acceptor poll failed; no longer accepting");
                return;
            }
            if self.stop.load(Relaxed) {
                self.drain();
                return;
            }
            if !self.drain_answered && self.draining.load(Relaxed) {
                // Handshakes in progress are new upgrades too: 503 draining now, not when
                // (or if) their heads complete.
                self.drain_answered = true;
                let reading: Vec<usize> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| !p.refused)
                    .map(|(k, _)| k)
                    .collect();
                for key in reading {
                    self.refuse(key, Refusal::Draining);
                }
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(key) => self.on_readable(key),
                }
            }
            self.wheel.advance(self.tick(), &mut fired);
            for key in fired.drain(..) {
                self.expire(key as usize);
            }
            self.wake_shards();
            self.trim_after_tls_storm();
            if self.paused_until.is_some_and(|t| Instant::now() >= t) {
                self.paused_until = None;
                if let Err(e) =
                    self.poll
                        .registry()
                        .register(&mut self.listener, LISTENER, Interest::READABLE)
                {
                    tracing::error!(error = %e, "cannot resume accepting");
                }
                // Connections may have queued while paused; edge-triggered, so look now.
                self.accept();
            }
        }
    }

    /// After many TLS handshakes, once none is in progress: their rustls state was freed
    /// into this thread's allocator arena, which keeps it resident (hundreds of bytes per
    /// connection after a storm) unless it is handed back. At most once a second.
    fn trim_after_tls_storm(&mut self) {
        if self.tls_since_trim >= TLS_HANDSHAKES_BEFORE_TRIM
            && self.gate.reading.load(Relaxed) == 0
            && self.last_trim.elapsed() >= Duration::from_secs(1)
        {
            crate::memory::release_free_memory();
            self.tls_since_trim = 0;
            self.last_trim = Instant::now();
        }
    }

    fn accept(&mut self) {
        if self.paused_until.is_some() {
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    // On Linux the socket inherits TCP_NODELAY from the listener.
                    #[cfg(not(target_os = "linux"))]
                    let _ = stream.set_nodelay(true);
                    let ip = addr.ip();
                    if let Err(r) = self.admit_socket(ip) {
                        // Shed with an answer rather than tracking yet another socket.
                        self.shed(stream, r);
                        continue;
                    }
                    let tls = match self.tls.as_ref().map(TlsServer::accept).transpose() {
                        Ok(t) => {
                            self.tls_since_trim =
                                self.tls_since_trim.saturating_add(u32::from(t.is_some()));
                            t.map(Box::new)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot start a TLS handshake");
                            self.unadmit_socket(ip);
                            continue;
                        }
                    };
                    let deadline = self.tick() + Self::ticks(self.config.handshake_timeout);
                    let entry = self.pending.vacant_entry();
                    let key = entry.key();
                    let timer = self.wheel.insert(deadline, key as u32);
                    entry.insert(Pending {
                        stream,
                        buf: Vec::new(),
                        ip,
                        timer,
                        refused: false,
                        holds_ip: true,
                        tls,
                        registered: false,
                    });
                    self.publish_pending();
                    // The listener defers accepting until the client's first bytes are
                    // in (`server::defer_accept`), so the request is usually whole now:
                    // read it before paying for a registration it may not need.
                    self.on_readable(key);
                    self.register_if_waiting(key);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_client_gone(&e) => {
                    // The client reset before we took it; the next one may be fine.
                    self.metrics.accept_errors_client.fetch_add(1, Relaxed);
                }
                Err(e) if is_out_of_files(&e) && self.spare_fd.is_some() => {
                    self.metrics.accept_errors_client.fetch_add(1, Relaxed);
                    if !self.refuse_with_spare_fd(&e) {
                        return;
                    }
                }
                Err(e) => {
                    // EMFILE/ENFILE without a spare, or another error: the listener stays
                    // readable; pause instead of spinning.
                    self.metrics.accept_errors_client.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "accept failed; pausing accepts briefly");
                    let _ = self.poll.registry().deregister(&mut self.listener);
                    self.paused_until = Some(Instant::now() + EMFILE_PAUSE);
                    return;
                }
            }
        }
    }

    /// A socket still pending after its first read waits for more through the poll.
    fn register_if_waiting(&mut self, key: usize) {
        let Some(p) = self.pending.get_mut(key) else {
            return;
        };
        if p.registered {
            return;
        }
        // TLS handshakes write flights the socket may not take at once.
        let interest = if p.tls.is_some() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        // Registering reports bytes that came after the first read (the poll checks the
        // socket's state on registration), so none are missed.
        if self
            .poll
            .registry()
            .register(&mut p.stream, Token(key), interest)
            .is_ok()
        {
            p.registered = true;
        } else {
            self.remove(key);
        }
    }

    /// Judges a just-accepted socket by what it costs to hold, cheapest checks first;
    /// on success it counts as reading and held (`Gate`) and its IP holds one more count
    /// (see `Admission::reserve_ip`). Each count is taken only below its bound, so
    /// acceptors admitting at once cannot pass it together.
    fn admit_socket(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        let gate = &self.gate;
        if !Gate::take(&gate.reading, self.config.max_pending_handshakes) {
            return Err(Refusal::OverCapacity(
                "too many handshakes in progress (max_pending_handshakes)",
            ));
        }
        let open = self.admission.open();
        let reading = gate.reading.load(Relaxed);
        let refusal = if open + reading > self.config.max_connections {
            Some(Refusal::OverCapacity(
                "server is at max_connections (connections plus handshakes in progress)",
            ))
        } else if !Gate::take(&gate.held, gate.fd_ceiling.saturating_sub(open)) {
            // Refused sockets still lingering hold descriptors too.
            Some(Refusal::OverCapacity(
                "client sockets are at the open-file limit less the descriptors reserved \
                 for the push API",
            ))
        } else {
            None
        };
        if let Some(r) = refusal {
            gate.reading.fetch_sub(1, Relaxed);
            return Err(r);
        }
        if let Err(r) = self.admission.reserve_ip(ip) {
            gate.reading.fetch_sub(1, Relaxed);
            gate.held.fetch_sub(1, Relaxed);
            return Err(r);
        }
        Ok(())
    }

    /// Gives back what `admit_socket` took, for a socket that was not kept after all.
    fn unadmit_socket(&mut self, ip: IpAddr) {
        self.gate.reading.fetch_sub(1, Relaxed);
        self.gate.held.fetch_sub(1, Relaxed);
        self.admission.release_ip(ip);
    }

    /// Publishes the `pending_handshakes` gauge from the acceptors' shared count.
    fn publish_pending(&self) {
        self.metrics
            .pending_handshakes
            .store(self.gate.reading.load(Relaxed) as u64, Relaxed);
    }

    /// Ends the reading phase of `key`'s handshake, once: the gauge drops, and when the
    /// handshake became a connection (`admitted`) the IP's count carries over to it
    /// (otherwise the socket keeps it until it goes). Leaves the entry marked refused.
    fn end_reading(&mut self, key: usize, admitted: bool) {
        let Some(p) = self.pending.get_mut(key) else {
            return;
        };
        if p.refused {
            return;
        }
        p.refused = true;
        if admitted {
            p.holds_ip = false;
        }
        self.gate.reading.fetch_sub(1, Relaxed);
        self.publish_pending();
    }

    fn on_readable(&mut self, key: usize) {
        loop {
            let Some(p) = self.pending.get_mut(key) else {
                return;
            };
            match p.stream.read(&mut self.scratch) {
                Ok(0) => {
                    if !p.refused {
                        self.metrics.handshake(HandshakeOutcome::Aborted);
                    }
                    self.remove(key);
                    return;
                }
                Ok(n) => {
                    if p.refused {
                        continue;
                    }
                    match p.tls.as_mut() {
                        None => {
                            p.buf.extend_from_slice(&self.scratch[..n]);
                            // A short read that ends a head emptied the socket: a read
                            // more would only say WouldBlock. (Anything later, a FIN
                            // too, is a new edge for the poll or the shard.)
                            if n < self.scratch.len() && p.buf.ends_with(b"\r\n\r\n") {
                                break;
                            }
                        }
                        Some(tls) => {
                            let handshaking = tls.is_handshaking();
                            let received = tls.receive(&self.scratch[..n], &mut p.buf);
                            if handshaking && !tls.is_handshaking() {
                                let c = &self.metrics.tls;
                                let kind = if tls.resumed() { &c.resumed } else { &c.full };
                                kind.fetch_add(1, Relaxed);
                            }
                            if let Err(e) = received {
                                self.tls_failed(key, e);
                                return;
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    if !p.refused {
                        self.metrics.handshake(HandshakeOutcome::Aborted);
                    }
                    self.remove(key);
                    return;
                }
            }
            if p.buf.len() > MAX_HEAD_BYTES {
                break;
            }
        }
        self.flush_tls(key);
        let Some(p) = self.pending.get(key) else {
            return;
        };
        if p.refused || p.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
            return;
        }
        match handshake::parse(&p.buf) {
            Ok(None) => {}
            Ok(Some(up)) => self.decide(key, up),
            Err(Refusal::NotFound) if self.config.dev => match self.demo_page(key) {
                Some(page) => self.serve_page(key, &page),
                None => self.refuse(key, Refusal::NotFound),
            },
            Err(r) => self.refuse(key, r),
        }
    }

    /// Judges a complete upgrade request and hands it on or refuses it.
    fn decide(&mut self, key: usize, up: Upgrade) {
        let Some(p) = self.pending.get(key) else {
            return;
        };
        let ip = p.ip;
        // While draining, clients are told to go elsewhere rather than refused by the kernel.
        if self.draining.load(Relaxed) {
            return self.refuse(key, Refusal::Draining);
        }
        if !handshake::origin_allowed(&self.config.allowed_origins, up.origin.as_deref()) {
            return self.refuse(key, Refusal::ForbiddenOrigin);
        }
        let rate_ok = self.config.connect_rate_per_ip == 0
            || self
                .gate
                .rate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .allow(ip, Instant::now());
        if !rate_ok {
            return self.refuse(
                key,
                Refusal::RateLimited("too many new connections from this IP address"),
            );
        }
        let identity = match up.token.as_deref() {
            None => Err(AuthError::Missing),
            Some(t) => self.verifier.verify(t),
        };
        let identity = match identity {
            Ok(id) => id,
            Err(e) => return self.refuse(key, Refusal::Auth(e)),
        };
        if let Err(r) = self.admission.admit_reserved() {
            return self.refuse(key, r);
        }
        self.end_reading(key, true);
        let Some(mut p) = self.take_pending(key) else {
            return;
        };
        self.wheel.cancel(p.timer);
        if p.registered {
            // The socket lives on in a shard: this poll must stop reporting it.
            let _ = self.poll.registry().deregister(&mut p.stream);
        }
        // The session's keys go with the socket; rustls and its buffers stay here.
        let tls = match p.tls.take().map(|t| t.finish()).transpose() {
            Ok(t) => t.map(Box::new),
            Err(e) => {
                if matches!(e, TlsError::Refused { .. }) {
                    // The client's doing (more key updates than are followed): no warning
                    // a peer could repeat at will.
                    tracing::debug!(error = %e, "the TLS session could not be handed to a shard");
                } else {
                    tracing::warn!(error = %e, "the TLS session could not be handed to a shard");
                }
                self.metrics.handshake(HandshakeOutcome::TlsFailed);
                self.metrics.tls.failed.fetch_add(1, Relaxed);
                self.admission.release(ip);
                return;
            }
        };
        let shard_id = shard_of(&identity.user, self.shards.len());
        let leftover = p.buf.split_off(up.head_len);
        let handoff = Handoff {
            stream: p.stream,
            identity,
            accept_key: up.accept_key,
            leftover,
            ip,
            resume: up.resume,
            deflate: up.deflate.filter(|_| self.config.compression),
            tls,
        };
        // Counted by the shard as accepted once it takes the connection, or refused if it
        // does not after all: a counter never taken back.
        match self.shards.send(shard_id, handoff) {
            Ok(()) => {}
            Err((e, h)) => {
                let refusal = match e {
                    SendError::Full => Refusal::OverCapacity("shard queue is full"),
                    SendError::Stopped => Refusal::Draining,
                };
                self.admission.release(ip);
                self.readopt_refused(h.stream, ip, refusal, h.tls);
            }
        }
    }

    /// Wakes every shard that was handed connections this turn, once.
    fn wake_shards(&mut self) {
        self.shards.wake_pending();
    }

    /// Writes the refusal, shuts the write half, and lingers until the client's FIN.
    /// After an answer that ends the connection: shuts the write half and gives the
    /// client `REFUSAL_LINGER` to read it before the socket goes.
    fn linger_after_answer(&mut self, key: usize) {
        let Some(p) = self.pending.get_mut(key) else {
            return;
        };
        let _ = p.stream.shutdown(Shutdown::Write);
        p.buf = Vec::new();
        let timer = p.timer;
        self.wheel.cancel(timer);
        let deadline = self.tick() + Self::ticks(REFUSAL_LINGER);
        let t = self.wheel.insert(deadline, key as u32);
        if let Some(p) = self.pending.get_mut(key) {
            p.timer = t;
        }
    }

    /// `--dev`: the demo's page or script for this request, if it asks for one.
    fn demo_page(&self, key: usize) -> Option<Vec<u8>> {
        let p = self.pending.get(key)?;
        let path = crate::demo::get_path(&p.buf)?;
        // The secret in use now: a secret file's first line may have changed since start.
        let options = crate::auth::MintOptions::accepted_by(&self.config.jwt);
        crate::demo::response(&path, &self.verifier.signing_secret()?, options)
    }

    /// `--dev`: answers with a demo page and closes. The socket blocks for the write (for
    /// at most a second): the page is larger than a fresh socket's send buffer, and this
    /// is a development convenience, never on in production.
    fn serve_page(&mut self, key: usize, page: &[u8]) {
        self.end_reading(key, false);
        let Some(p) = self.pending.get_mut(key) else {
            return;
        };
        let bytes: std::borrow::Cow<[u8]> = match p.tls.as_mut() {
            None => page.into(),
            Some(tls) => {
                if tls.write_plain(page).is_ok() {
                    tls.close_notify();
                }
                std::mem::take(tls.out()).into()
            }
        };
        let sock = socket2::SockRef::from(&p.stream);
        if sock.set_nonblocking(false).is_ok()
            && sock.set_write_timeout(Some(Duration::from_secs(1))).is_ok()
        {
            let _ = (&p.stream).write_all(&bytes);
        }
        let _ = sock.set_nonblocking(true);
        self.linger_after_answer(key);
    }

    fn refuse(&mut self, key: usize, r: Refusal) {
        self.metrics.handshake(r.outcome());
        self.end_reading(key, false);
        self.answer(key, &r.response());
        self.linger_after_answer(key);
    }

    /// Writes an answer that ends the connection; on the TLS listener through TLS, with
    /// close_notify after it (before the handshake is over nothing can be said).
    fn answer(&mut self, key: usize, bytes: &[u8]) {
        let Some(p) = self.pending.get_mut(key) else {
            return;
        };
        match p.tls.as_mut() {
            None => {
                let _ = p.stream.write(bytes);
            }
            Some(tls) if !tls.is_handshaking() => {
                if tls.write_plain(bytes).is_ok() {
                    tls.close_notify();
                }
                self.flush_tls(key);
            }
            Some(_) => {}
        }
    }

    /// Writes what TLS has for the client, as far as the socket takes it now; the
    /// writable event brings the rest.
    fn flush_tls(&mut self, key: usize) {
        let Some(p) = self.pending.get_mut(key) else {
            return;
        };
        let Some(tls) = p.tls.as_mut() else {
            return;
        };
        let out = tls.out();
        let mut written = 0;
        while written < out.len() {
            match (&p.stream).write(&out[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: the writable event comes; a failure shows on the next read.
                Err(_) => break,
            }
        }
        out.drain(..written);
    }

    /// A TLS handshake failed: plain HTTP gets a plain 400 naming the problem, anything
    /// else the alert rustls wrote; then the socket lingers for the client's FIN.
    fn tls_failed(&mut self, key: usize, e: TlsError) {
        self.metrics.handshake(HandshakeOutcome::TlsFailed);
        self.metrics.tls.failed.fetch_add(1, Relaxed);
        tracing::debug!(error = %e, "TLS handshake failed");
        self.end_reading(key, false);
        if matches!(e, TlsError::PlainHttp) {
            if let Some(p) = self.pending.get_mut(key) {
                p.tls = None;
                let r = Refusal::BadRequest("plain HTTP on the TLS port: connect with wss://");
                let _ = p.stream.write(&r.response());
            }
        } else {
            self.flush_tls(key);
            // rustls's buffers (up to a handshake's worth) need not linger with the
            // socket once the alert is out.
            if let Some(p) = self.pending.get_mut(key) {
                if p.tls.as_mut().is_some_and(|t| t.out().is_empty()) {
                    p.tls = None;
                }
            }
        }
        self.linger_after_answer(key);
    }

    /// Out of descriptors: frees the spare, takes one queued client, answers it 503 and
    /// closes it, then takes the spare back. Each call drains one client from the backlog,
    /// so the accept loop ends when the backlog is empty; false when no client was taken.
    fn refuse_with_spare_fd(&mut self, e: &io::Error) -> bool {
        if self
            .out_of_files_logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.out_of_files_logged = Some(Instant::now());
            tracing::warn!(
                error = %e,
                "out of file descriptors (RLIMIT_NOFILE); refusing new clients with 503"
            );
        }
        self.spare_fd = None;
        let taken = self.listener.accept();
        let took = taken.is_ok();
        match taken {
            Ok((stream, _)) => self.shed(
                stream,
                Refusal::OverCapacity("the server has no file descriptors left"),
            ),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.metrics.accept_errors_client.fetch_add(1, Relaxed);
            }
        }
        self.spare_fd = std::fs::File::open("/dev/null").ok();
        if self.spare_fd.is_none() {
            // Someone else took the descriptor: fall back to pausing.
            let _ = self.poll.registry().deregister(&mut self.listener);
            self.paused_until = Some(Instant::now() + EMFILE_PAUSE);
            return false;
        }
        took
    }

    /// Answers a socket that will not be tracked with `r` and closes it, best effort and
    /// without waiting: a few reads of what already arrived, one write.
    fn shed(&mut self, mut stream: TcpStream, r: Refusal) {
        self.metrics.handshake(r.outcome());
        // Read what the client already sent so closing does not turn into a reset that
        // could overtake the answer.
        for _ in 0..4 {
            match stream.read(&mut self.scratch) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        // A TLS client cannot read an answer before a handshake, which shedding must not
        // pay for: it sees the connection close.
        if self.tls.is_none() {
            let _ = stream.write(&r.response());
        }
        let _ = stream.shutdown(Shutdown::Write);
    }

    /// A socket that was already taken out of `pending` must be refused after all; a TLS
    /// one is answered with the session's keys, which the handoff carried.
    fn readopt_refused(
        &mut self,
        mut stream: TcpStream,
        ip: IpAddr,
        r: Refusal,
        tls: Option<Box<crate::tls::Finished>>,
    ) {
        if let Some(f) = tls {
            // The answer goes out sealed now; the socket then only waits for the FIN.
            self.metrics.handshake(r.outcome());
            let _ = stream.write(&f.seal_last_words(&r.response()));
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
        let now = self.tick();
        let entry = self.pending.vacant_entry();
        let key = entry.key();
        if self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)
            .is_err()
        {
            self.metrics.handshake(r.outcome());
            let _ = stream.write(&r.response());
            return;
        }
        let timer = self.wheel.insert(now, key as u32);
        // Inserted as refused: its reading phase already ended when it was admitted.
        self.gate.held.fetch_add(1, Relaxed);
        entry.insert(Pending {
            stream,
            buf: Vec::new(),
            ip,
            timer,
            refused: true,
            // Its count went with the connection, and came back with it.
            holds_ip: false,
            tls: None,
            registered: true,
        });
        self.refuse(key, r);
    }

    /// A deadline passed: a head that never completed, or a refused socket that lingered.
    fn expire(&mut self, key: usize) {
        let Some(p) = self.pending.get(key) else {
            return;
        };
        if !p.refused {
            self.metrics.handshake(HandshakeOutcome::Timeout);
        }
        self.end_reading(key, false);
        // The timer already fired; removing must not cancel a reused id. Dropping the
        // socket closes it, which takes it out of the poll.
        self.take_pending(key);
    }

    /// Takes `key` out of the pending table; it no longer counts as held.
    fn take_pending(&mut self, key: usize) -> Option<Pending> {
        let p = self.pending.try_remove(key)?;
        self.gate.held.fetch_sub(1, Relaxed);
        if p.holds_ip {
            self.admission.release_ip(p.ip);
        }
        Some(p)
    }

    fn remove(&mut self, key: usize) {
        self.end_reading(key, false);
        if let Some(p) = self.take_pending(key) {
            // Dropping the socket closes it, which takes it out of the poll.
            self.wheel.cancel(p.timer);
        }
    }

    fn drain(&mut self) {
        self.wake_shards();
        let _ = self.poll.registry().deregister(&mut self.listener);
        let keys: Vec<usize> = self.pending.iter().map(|(k, _)| k).collect();
        for key in keys {
            let refused = self.pending.get(key).is_some_and(|p| p.refused);
            if !refused {
                self.metrics.handshake(HandshakeOutcome::Draining);
                self.answer(key, &Refusal::Draining.response());
                if let Some(p) = self.pending.get_mut(key) {
                    let _ = p.stream.shutdown(Shutdown::Write);
                }
            }
            self.remove(key);
        }
    }
}

fn is_out_of_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Errors `accept` reports for one queued client that failed (accept(2): "Linux passes
/// already-pending network errors on the new socket"): retry at once, do not pause.
fn is_client_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ConnectionAborted
        || matches!(
            e.raw_os_error(),
            Some(
                libc::EPROTO
                    | libc::ENETDOWN
                    | libc::ENOPROTOOPT
                    | libc::EHOSTDOWN
                    | libc::ENONET
                    | libc::EHOSTUNREACH
                    | libc::ENETUNREACH
            )
        )
}

/// The client socket ceiling under the current open-file limit (read once, at start, after
/// `main` raised it): `fdlimit::client_ceiling`, logged with what it came from.
fn client_fd_ceiling(config: &Config) -> usize {
    let Some((soft, _)) = fdlimit::current() else {
        tracing::warn!("cannot read RLIMIT_NOFILE; no descriptor ceiling for clients");
        return usize::MAX;
    };
    let ceiling = usize::try_from(fdlimit::client_ceiling(soft, config.api_max_connections))
        .unwrap_or(usize::MAX);
    tracing::info!(
        rlimit_nofile = soft,
        headroom = fdlimit::HEADROOM,
        api_reserve = fdlimit::api_reserve(soft, config.api_max_connections),
        max_connections = config.max_connections,
        client_ceiling = ceiling.min(config.max_connections),
        "client connection ceiling: clients beyond it get 503 over_capacity"
    );
    ceiling
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_accept_errors_are_retried_not_paused() {
        for errno in [libc::ECONNABORTED, libc::EPROTO, libc::ENETUNREACH] {
            assert!(is_client_gone(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(!is_client_gone(&io::Error::from_raw_os_error(errno)));
        }
    }
}
