//! The push API's TLS handshakes, on a thread of their own. A full handshake costs the
//! server a signature (about 264 µs with an RSA-2048 key, 18 µs with ECDSA P-256): on the
//! API thread, a peer looping handshakes would hold up every push behind them. Here they
//! cost this thread's time only; each finished connection goes back to the API thread,
//! which reads and writes its records from then on.
//!
//! The API thread counts handshakes in progress toward `api_max_connections` until they
//! come back, ready or gone; a handshake not finished within `api_request_timeout_ms`
//! of its accept is closed and counted as failed. At the cap, with no served stranger to
//! close, the API thread hands a newcomer over with a request for room: this thread then
//! closes its oldest handshake (at least `EVICT_MIN_AGE` old), or else the newcomer, so
//! that peers which never finish a handshake cannot hold every slot.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::tls::{ApiStream, Handshake};
use crate::metrics::Metrics;
use crate::reactor::{self, WAKER};
use crate::tls::TlsServer;

/// How often handshakes are checked against their deadline; also the poll timeout.
const SWEEP: Duration = Duration::from_millis(100);
/// A handshake younger than this is not closed to make room: a client's handshake takes a
/// round trip or two.
const EVICT_MIN_AGE: Duration = super::EVICT_MIN_IDLE;

/// What a handshake became, for the API thread.
pub(super) enum Handed {
    /// Finished (or plain HTTP came): the API thread serves the connection.
    Ready(ApiStream),
    /// Failed, timed out, or the client left: the connection is closed.
    Gone,
    /// A request for room was served: a handshake (the oldest, or the newcomer that asked)
    /// was closed.
    Room,
}

/// The API thread's end of the handshake thread.
pub(super) struct Handshaker {
    /// Accepted sockets to shake hands on, each with whether room must be made for it;
    /// dropped to stop the thread.
    start: Option<Sender<(TcpStream, bool)>>,
    handed: Receiver<Handed>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    /// Started and not handed back yet.
    pending: usize,
}

impl Handshaker {
    /// Starts the thread; it wakes `api_waker` when it hands connections back.
    pub(super) fn spawn(
        tls: TlsServer,
        timeout: Duration,
        metrics: Arc<Metrics>,
        api_waker: Arc<Waker>,
    ) -> io::Result<Handshaker> {
        let poll = Poll::new()?;
        let waker = reactor::waker(&poll)?;
        let (start, incoming) = crossbeam_channel::unbounded();
        let (handed_tx, handed) = crossbeam_channel::unbounded();
        let worker = Worker {
            poll,
            incoming,
            handed: handed_tx,
            api_waker,
            tls,
            timeout,
            metrics,
            conns: Slab::new(),
            handed_any: false,
        };
        let thread = std::thread::Builder::new()
            .name("throng-api-tls".to_string())
            .spawn(move || worker.run())?;
        Ok(Handshaker {
            start: Some(start),
            handed,
            waker,
            thread: Some(thread),
            pending: 0,
        })
    }

    /// Hands an accepted socket over for its handshake, with `make_room` at the cap (the
    /// thread closes a handshake, answering `Handed::Room`); false (the socket closed) if
    /// the thread has ended.
    pub(super) fn start(&mut self, sock: TcpStream, make_room: bool) -> bool {
        let Some(start) = &self.start else {
            return false;
        };
        if start.send((sock, make_room)).is_err() {
            return false;
        }
        self.pending += 1;
        let _ = self.waker.wake();
        true
    }

    /// Handshakes started and not handed back yet.
    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    /// The next handshake that ended, if any. After the thread has ended (its poll
    /// failed), every handshake it had, or had not taken yet, is gone.
    pub(super) fn next_handed(&mut self) -> Option<Handed> {
        let handed = match self.handed.try_recv() {
            Ok(handed) => handed,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) if self.pending > 0 => Handed::Gone,
            Err(TryRecvError::Disconnected) => return None,
        };
        self.pending -= 1;
        Some(handed)
    }

    /// Stops the thread, closing handshakes in progress and connections not taken yet;
    /// returns how many there were.
    pub(super) fn stop(mut self) -> usize {
        self.shut_down();
        self.pending
    }

    fn shut_down(&mut self) {
        self.start = None;
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Handshaker {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The handshake thread's state.
struct Worker {
    poll: Poll,
    incoming: Receiver<(TcpStream, bool)>,
    handed: Sender<Handed>,
    api_waker: Arc<Waker>,
    tls: TlsServer,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// Handshakes in progress, with their deadlines.
    conns: Slab<(ApiStream, Instant)>,
    /// Something was handed back this turn: the API thread is woken once for it.
    handed_any: bool,
}

impl Worker {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut last_sweep = Instant::now();
        loop {
            if let Err(e) = reactor::poll_step(&mut self.poll, &mut events, SWEEP) {
                tracing::error!(
                    error = %e,
                    "push API TLS handshake poll failed; HTTPS connections to the API are closed from now on"
                );
                self.close_all();
                return;
            }
            for event in events.iter() {
                let token = event.token();
                if token != WAKER {
                    self.advance(token.0);
                }
            }
            loop {
                match self.incoming.try_recv() {
                    Ok((sock, make_room)) => {
                        if !make_room || self.make_room() {
                            self.adopt(sock);
                        } else {
                            self.metrics.api_refused_connections.fetch_add(1, Relaxed);
                            self.hand(Handed::Room);
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.close_all();
                        return;
                    }
                }
            }
            let now = Instant::now();
            if now.saturating_duration_since(last_sweep) >= SWEEP {
                last_sweep = now;
                self.sweep(now);
            }
            if std::mem::take(&mut self.handed_any) {
                let _ = self.api_waker.wake();
            }
        }
    }

    fn adopt(&mut self, sock: TcpStream) {
        let conn = match self.tls.connection() {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "push API: cannot start a TLS connection");
                self.hand(Handed::Gone);
                return;
            }
        };
        let mut stream = ApiStream::tls(sock, conn, self.tls.handshake_bytes());
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if self
            .poll
            .registry()
            .register(
                stream.socket(),
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.hand(Handed::Gone);
            return;
        }
        entry.insert((stream, Instant::now() + self.timeout));
        // The ClientHello is usually there already.
        self.advance(key);
    }

    /// Moves one handshake on; hands the connection back once it is ready or gone.
    fn advance(&mut self, key: usize) {
        let Some((stream, _)) = self.conns.get_mut(key) else {
            return;
        };
        match stream.handshake(&self.metrics.api_tls) {
            Ok(Handshake::Pending) => {}
            Ok(Handshake::Ready) => {
                let stream = self.remove(key);
                self.hand(Handed::Ready(stream));
            }
            Ok(Handshake::Ended) | Err(_) => self.give_up(key),
        }
    }

    /// Closes the oldest handshake, at least `EVICT_MIN_AGE` old, to make room for a
    /// newcomer at the cap (`Handed::Room`); false when none is that old.
    fn make_room(&mut self) -> bool {
        let now = Instant::now();
        let oldest = self
            .conns
            .iter()
            .map(|(key, (_, deadline))| (*deadline, key))
            .filter(|&(deadline, _)| {
                // The deadline is the accept plus the timeout.
                (deadline + EVICT_MIN_AGE).saturating_duration_since(now) <= self.timeout
            })
            .min()
            .map(|(_, key)| key);
        let Some(key) = oldest else {
            return false;
        };
        self.metrics.api_evictions.fetch_add(1, Relaxed);
        let stream = self.remove(key);
        self.hand(Handed::Room);
        drop(stream);
        true
    }

    /// Closes handshakes past their deadline, counting each as failed.
    fn sweep(&mut self, now: Instant) {
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, (_, deadline))| now >= *deadline)
            .map(|(key, _)| key)
            .collect();
        for key in late {
            self.metrics.api_tls.failed.fetch_add(1, Relaxed);
            self.give_up(key);
        }
    }

    /// Closes a handshake's socket, after telling the API thread (so that whoever sees
    /// the close and asks the API finds it counted out).
    fn give_up(&mut self, key: usize) {
        let stream = self.remove(key);
        self.hand(Handed::Gone);
        let _ = self.api_waker.wake();
        drop(stream);
    }

    fn remove(&mut self, key: usize) -> ApiStream {
        let (mut stream, _) = self.conns.remove(key);
        let _ = self.poll.registry().deregister(stream.socket());
        stream
    }

    fn hand(&mut self, handed: Handed) {
        // Only fails once the API thread has stopped, which drops everything anyway.
        let _ = self.handed.send(handed);
        self.handed_any = true;
    }

    /// The API thread stopped: every handshake closes.
    fn close_all(&mut self) {
        self.conns.clear();
    }
}
