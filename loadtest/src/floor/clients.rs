//! The floor's clients' process: it opens the connections (from `--source-ips` when
//! given, with the load generator's own connect), answers each Ping with a masked Pong
//! (heartbeat), reads and drops what arrives (broadcast), sends an upgrade request and
//! reads the answer (handshake), or beside its idle connections sends push requests one
//! at a time on each API connection (unicast), and ends when the server side has closed
//! them all.

use super::io::{read_all, wait};
use crate::cli::{FloorArgs, FloorWorkload};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A masked Pong with no payload (the mask is arbitrary; nothing reads it).
pub const PONG: [u8; 6] = [0x8A, 0x80, 0x1f, 0x2e, 0x3d, 0x4c];
/// The longest run of Pongs written at once (a read that held many Pings).
const PONGS_AT_ONCE: usize = 1024;

/// Connections whose handshake is under way at once (the rest wait to connect).
const HANDSHAKES_IN_FLIGHT: usize = 512;

/// A WebSocket upgrade request about the size of a browser's with a token.
fn handshake_request() -> Vec<u8> {
    let token = "x".repeat(180);
    format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes()
}

/// The handshake workload's clients: `n` connections, at most [`HANDSHAKES_IN_FLIGHT`]
/// at once, each sending its request once connected and reading the whole answer, then
/// held until the server side closes them all.
fn run_handshakes(
    a: &FloorArgs,
    peer: SocketAddr,
    sources: &[std::net::IpAddr],
    deadline: Instant,
) -> Result<i32, String> {
    let n = a.connections as usize;
    let request = handshake_request();
    let answer_len = super::server::handshake_answer().len();
    let mut poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 16 * 1024];
    let mut conns: Vec<Option<TcpStream>> = Vec::with_capacity(n);
    // Per connection: request sent, answer bytes read.
    let mut sent = Vec::with_capacity(n);
    let mut got = Vec::with_capacity(n);
    let (mut answered, mut in_flight, mut open) = (0usize, 0usize, 0usize);
    loop {
        while conns.len() < n && in_flight < HANDSHAKES_IN_FLIGHT {
            let i = conns.len();
            let src = (!sources.is_empty()).then(|| sources[i % sources.len()]);
            let mut s = crate::ws_conn::connect(peer, src)
                .map_err(|e| format!("connection {i} of {n}: {e}"))?;
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| format!("epoll: {e}"))?;
            conns.push(Some(s));
            sent.push(false);
            got.push(0usize);
            in_flight += 1;
            open += 1;
        }
        if open == 0 {
            return Ok(0);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{answered} of {n} handshakes answered at the clients' deadline"
            ));
        }
        wait(&mut poll, &mut events, Duration::from_secs(1))?;
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(c) = conns.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            if ev.is_writable() && !sent[i] {
                match c.write(&request) {
                    Ok(w) if w == request.len() => sent[i] = true,
                    Ok(w) => return Err(format!("a request write took {w} bytes")),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("connection {i}: {e}")),
                }
            }
            if !ev.is_readable() {
                continue;
            }
            let closed = read_all(c, &mut buf, |_, k| {
                let before = got[i];
                got[i] += k;
                if before < answer_len && got[i] >= answer_len {
                    answered += 1;
                    in_flight -= 1;
                }
                Ok(())
            })
            .map_err(|e| format!("connection {i}: {e}"))?;
            if closed {
                conns[i] = None;
                open -= 1;
                if got[i] < answer_len {
                    return Err(format!("connection {i} closed before its answer"));
                }
            }
        }
    }
}

/// Runs the clients' process against `peer`; returns the exit status.
pub fn run(a: &FloorArgs, peer: SocketAddr) -> Result<i32, String> {
    let sources = match &a.source_ips {
        Some(s) => crate::util::parse_source_ips(s).map_err(|e| format!("--source-ips: {e}"))?,
        None => Vec::new(),
    };
    let n = a.connections as usize;
    let limit = crate::util::raise_nofile_limit();
    if limit < a.connections + 32 {
        return Err(format!(
            "the clients' process needs {} open files for --connections {}; the limit here is {limit}",
            a.connections + 32,
            a.connections
        ));
    }
    // Bounded: the server side closes every connection after its window; should it die
    // without closing them, this process still ends.
    let warmup = Duration::from_millis(a.interval_ms) + Duration::from_secs(1);
    let deadline = Instant::now()
        + warmup
        + Duration::from_secs_f64(a.window_secs)
        + Duration::from_secs(120 + a.connections / 1000);
    if a.workload == FloorWorkload::Handshake {
        return run_handshakes(a, peer, &sources, deadline);
    }
    let api = match (a.workload, a.api_peer) {
        (FloorWorkload::Unicast, None) => return Err("unicast needs --api-peer".into()),
        (FloorWorkload::Unicast, Some(api)) => Some((api, a.in_flight as usize)),
        _ => None,
    };
    let mut poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let src = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let mut s = crate::ws_conn::connect(peer, src)
            .map_err(|e| format!("connection {i} of {n}: {e}"))?;
        poll.registry()
            .register(&mut s, Token(i), Interest::READABLE)
            .map_err(|e| format!("epoll: {e}"))?;
        conns.push(Some(s));
    }
    // unicast: API connections after the idle ones, each sending its first request once
    // connected and the next one when the answer to the last is whole.
    let request = super::server::push_request();
    let answer_len = super::server::PUSH_ANSWER.len();
    let mut started = Vec::new();
    let mut answer_bytes = Vec::new();
    if let Some((api, k)) = api {
        for j in 0..k {
            let mut s = crate::ws_conn::connect(api, None)
                .map_err(|e| format!("API connection {j} of {k}: {e}"))?;
            poll.registry()
                .register(
                    &mut s,
                    Token(n + j),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| format!("epoll: {e}"))?;
            conns.push(Some(s));
        }
        started = vec![false; k];
        answer_bytes = vec![0usize; k];
    }
    let mut open = conns.len();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let pongs = PONG.repeat(PONGS_AT_ONCE);
    // Ping bytes seen modulo 2 per connection, so a Ping split over two reads is one Pong.
    let mut odd = vec![false; n];
    let heartbeat = a.workload == FloorWorkload::Heartbeat;
    let ping = super::server::PING.len();
    while open > 0 {
        if Instant::now() >= deadline {
            return Err(format!(
                "{open} connections still open at the clients' deadline"
            ));
        }
        wait(&mut poll, &mut events, Duration::from_secs(1))?;
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(c) = conns.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            if let Some(j) = i.checked_sub(n) {
                // The server side closes these at its window's end, maybe while a request
                // is on its way: a write it refuses then is the close, not a failure.
                let mut gone = false;
                if ev.is_writable() && !started[j] {
                    started[j] = true;
                    gone = !send_request(c, &request)?;
                }
                let closed = read_all(c, &mut buf, |c, k| {
                    answer_bytes[j] += k;
                    while answer_bytes[j] >= answer_len && !gone {
                        answer_bytes[j] -= answer_len;
                        gone = !send_request(c, &request)?;
                    }
                    Ok(())
                })
                .map_err(|e| format!("API connection {j}: {e}"))?;
                if closed || gone {
                    conns[i] = None;
                    open -= 1;
                }
                continue;
            }
            let closed = read_all(c, &mut buf, |c, k| {
                if heartbeat {
                    let bytes = k + usize::from(odd[i]);
                    odd[i] = bytes % ping == 1;
                    answer(c, bytes / ping, &pongs)?;
                }
                Ok(())
            })
            .map_err(|e| format!("connection {i}: {e}"))?;
            if closed {
                conns[i] = None;
                open -= 1;
            }
        }
    }
    Ok(0)
}

/// Writes one push request whole (a socket with nothing in flight takes it at once);
/// false when the server side has closed the connection.
fn send_request(c: &mut TcpStream, request: &[u8]) -> Result<bool, String> {
    match c.write(request) {
        Ok(w) if w == request.len() => Ok(true),
        Ok(w) => Err(format!(
            "a request write took {w} of {} bytes",
            request.len()
        )),
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
            Ok(false)
        }
        Err(e) => Err(format!("a request write failed: {e}")),
    }
}

/// Writes `count` Pongs, at most [`PONGS_AT_ONCE`] a write.
fn answer(c: &mut TcpStream, mut count: usize, pongs: &[u8]) -> Result<(), String> {
    while count > 0 {
        let k = count.min(PONGS_AT_ONCE);
        match c.write(&pongs[..k * PONG.len()]) {
            Ok(w) if w == k * PONG.len() => count -= k,
            Ok(w) => return Err(format!("a Pong write took {w} of {} bytes", k * PONG.len())),
            Err(e) => return Err(format!("a Pong write failed: {e}")),
        }
    }
    Ok(())
}
