//! One client WebSocket connection on a mio event loop: the non-blocking TCP connect, the
//! upgrade request and its answer, frames in (fragments reassembled, pings answered, the
//! server's Close echoed), masked frames out, and the clean close.
//!
//! The scenarios keep what they track per connection beside a [`WsConn`] and get its text
//! messages through a [`Handler`]: `client` for connect/push/churn/resume/deploy, `chat`
//! for its rooms. Reads go into one scratch buffer per event loop, and only a partial
//! frame left over is kept on the connection; outbound bytes are kept only while the
//! socket would block.
//!
//! A `wss://` connection carries a [`TlsConn`]: its bytes go through TLS on the same
//! socket (see [`crate::tls`]), and everything above the bytes is the same.
//!
//! With `--compression` the upgrade request offers permessage-deflate; an accepted answer
//! (checked by [`crate::deflate::negotiate`]) sets a bit on the connection, and its
//! compressed messages are inflated by the event loop's one inflater in [`Inbound`],
//! which also counts the bytes every connection of the loop received.

use crate::deflate::{self, Inflater, WireStats};
use crate::frame::{self, Frame, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use crate::tls::{self, Plain, Pull, TlsConn};
use base64::Engine as _;
use mio::net::TcpStream;
use rand::Rng as _;
use serde::Deserialize;
use sha1::{Digest, Sha1};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Instant;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The longest upgrade response head we wait for.
const MAX_HEAD: usize = 16 * 1024;
/// The most of a refused upgrade's body we wait for before naming the refusal.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The largest message handed to a scenario, reassembled or inflated.
const MAX_MESSAGE: usize = frame::MAX_FRAME as usize;

/// [`WsConn::bits`]: the fragmented message in `frag` is binary (not for the scenario).
const B_FRAG_BINARY: u8 = 1;
/// The fragmented message in `frag` is compressed (RSV1 on its first frame).
const B_FRAG_DEFLATED: u8 = 2;
/// The upgrade request offered permessage-deflate.
const B_OFFERED: u8 = 4;
/// The server accepted it: RSV1 data messages are inflated.
const B_DEFLATE: u8 = 8;

/// How a connection ended: `None` is a clean close.
pub type End = Option<String>;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// TCP connect in progress.
    Connecting,
    /// TLS handshake (wss://), request being written, response head awaited.
    Upgrading,
    /// 101 received, `welcome` awaited.
    Welcome,
    /// `welcome` received: messages flow.
    Open,
    /// We sent Close; `true` once the server's Close arrived (then we wait for its FIN).
    Closing(bool),
}

/// The socket and wire state of one connection.
pub struct WsConn {
    /// The socket, registered with the event loop's poll.
    pub stream: TcpStream,
    /// Where the connection is in its life.
    pub state: State,
    /// The wire's own bits (`B_*`): the fragmented message's kind, permessage-deflate
    /// offered and accepted. One byte, where a bool was before compression.
    bits: u8,
    /// Bits the owner keeps with the socket (`client`'s churn and move marks): here they
    /// fill what would be padding, so an idle `client` connection stays 128 bytes.
    pub flags: u8,
    /// When the attempt began (for the handshake latency).
    pub started: Instant,
    /// The `Sec-WebSocket-Key` sent, to check the server's accept value against.
    key: [u8; 16],
    /// Partial inbound data (a split frame or response head); empty while idle.
    rbuf: Vec<u8>,
    /// Outbound bytes the socket would not take yet; empty while idle.
    wbuf: Vec<u8>,
    /// A fragmented message being reassembled.
    #[allow(clippy::box_collection)] // 8 bytes while idle instead of 24
    frag: Option<Box<Vec<u8>>>,
    /// The TLS session of a wss:// connection; boxed, so a ws:// one pays 8 bytes.
    tls: Option<Box<TlsConn>>,
}

impl AsMut<WsConn> for WsConn {
    fn as_mut(&mut self) -> &mut WsConn {
        self
    }
}

impl WsConn {
    /// A connection whose TCP connect is under way, its upgrade request for `path` on
    /// `authority` with bearer `token` queued (written once connected, through `tls` for
    /// a wss:// URL); with `deflate` it offers permessage-deflate.
    pub fn upgrading(
        stream: TcpStream,
        started: Instant,
        path: &str,
        authority: &str,
        token: &str,
        tls: Option<Box<TlsConn>>,
        deflate: bool,
    ) -> WsConn {
        let key: [u8; 16] = rand::rng().random();
        let ws_key = base64::engine::general_purpose::STANDARD.encode(key);
        let offer = if deflate {
            format!("Sec-WebSocket-Extensions: {}\r\n", deflate::OFFER)
        } else {
            String::new()
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {ws_key}\r\nSec-WebSocket-Version: 13\r\n\
             {offer}Authorization: Bearer {token}\r\n\r\n"
        );
        WsConn {
            stream,
            state: State::Connecting,
            bits: if deflate { B_OFFERED } else { 0 },
            flags: 0,
            started,
            key,
            rbuf: Vec::new(),
            wbuf: req.into_bytes(),
            frag: None,
            tls,
        }
    }

    /// Whether the server accepted permessage-deflate on this connection.
    pub fn deflate(&self) -> bool {
        self.bits & B_DEFLATE != 0
    }

    /// Queues one masked frame (written by the next [`WsConn::flush`]), uncompressed.
    pub fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mask: [u8; 4] = rand::rng().random();
        frame::encode_masked(&mut self.wbuf, opcode, payload, mask);
    }

    /// Writes what the socket takes of the queued bytes (through TLS for wss://).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.state == State::Connecting {
            return Ok(());
        }
        match self.tls.as_deref_mut() {
            Some(t) => {
                let finished = self.state == State::Closing(true);
                t.flush(&mut self.wbuf, &mut self.stream, finished)?;
            }
            None => write_plain(&mut self.stream, &mut self.wbuf)?,
        }
        // An idle connection holds no buffer.
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            self.wbuf = Vec::new();
        }
        Ok(())
    }

    /// Begins the clean close: Close 1000 sent, the server's answer awaited.
    pub fn start_close(&mut self) -> io::Result<()> {
        self.send(OP_CLOSE, &frame::close_payload(1000, ""));
        self.state = State::Closing(false);
        self.flush()
    }

    /// Whether this is a wss:// connection whose TLS handshake has not ended.
    fn tls_handshaking(&self) -> bool {
        self.tls.as_deref().is_some_and(TlsConn::handshaking)
    }

    /// The cause when a handshake deadline finds the connection still in it.
    pub fn handshake_overdue(&self) -> Option<&'static str> {
        match self.state {
            State::Connecting => Some("timeout_connect"),
            State::Upgrading if self.tls_handshaking() => Some("timeout_tls_handshake"),
            State::Upgrading => Some("timeout_upgrade"),
            State::Welcome => Some("timeout_welcome"),
            _ => None,
        }
    }

    /// How the connection ended when the server closed the socket.
    fn eof_cause(&self) -> End {
        match self.state {
            State::Closing(true) => None,
            State::Closing(false) => Some("eof_before_close_reply".into()),
            State::Open => Some("eof".into()),
            State::Upgrading if self.tls_handshaking() => {
                Some("tls: connection closed during the handshake".into())
            }
            State::Upgrading => {
                Some(http_failure(&self.rbuf, true).unwrap_or_else(|| "eof_during_upgrade".into()))
            }
            State::Welcome => Some("eof_before_welcome".into()),
            State::Connecting => Some("eof_during_connect".into()),
        }
    }
}

/// What a scenario does with its connections' messages; `C` is its connection, which
/// holds a [`WsConn`].
pub trait Handler<C> {
    /// A complete text message (the server's JSON); `Err` ends the connection.
    fn on_text(&mut self, c: &mut C, text: &[u8]) -> Result<(), End>;
    /// A complete binary message, which the server never sends.
    fn on_binary(&mut self);
    /// A ping, already answered.
    fn on_ping(&mut self);
    /// A wss:// connection's TLS handshake ended (once per connection).
    fn on_tls(&mut self, done: &tls::Done);
}

/// What an event loop reads its connections with: one scratch buffer for every read, and
/// [`Rx`], the inflater and the counters of everything its connections received.
pub struct Inbound {
    scratch: Vec<u8>,
    /// The inflater and the counters.
    pub rx: Rx,
}

impl Inbound {
    /// A scratch buffer of `scratch` bytes; `offer` says whether the loop offers
    /// permessage-deflate (kept with its counts for the report).
    pub fn new(scratch: usize, offer: bool) -> Inbound {
        Inbound {
            scratch: vec![0; scratch.max(1)],
            rx: Rx::new(offer),
        }
    }
}

/// The inflater one event loop shares among its connections, and its wire counters.
pub struct Rx {
    inflater: Inflater,
    /// What the loop's connections received.
    pub stats: WireStats,
}

impl Rx {
    /// A fresh inflater and counters; see [`Inbound::new`].
    pub fn new(offer: bool) -> Rx {
        Rx {
            inflater: Inflater::new(),
            stats: WireStats::new(offer),
        }
    }
}

/// Writes what the socket takes of `buf`, removing it from `buf`.
fn write_plain(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Handles readiness on connection `c`: finishes the connect, writes what is queued,
/// reads until the socket would block. `Some(end)` means it is over (remove it).
pub fn drive<C: AsMut<WsConn>, H: Handler<C>>(
    c: &mut C,
    inbound: &mut Inbound,
    h: &mut H,
) -> Option<End> {
    let Inbound { scratch, rx } = inbound;
    let ws = c.as_mut();
    if ws.state == State::Connecting {
        match ws.stream.take_error() {
            Ok(Some(e)) | Err(e) => return Some(Some(io_cause(&e))),
            Ok(None) => {}
        }
        match ws.stream.peer_addr() {
            Ok(_) => ws.state = State::Upgrading,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return None,
            Err(e) => return Some(Some(io_cause(&e))),
        }
    }
    if let Err(e) = ws.flush() {
        return Some(Some(io_cause(&e)));
    }
    if ws.tls.is_some() {
        return drive_tls(c, scratch, rx, h);
    }
    loop {
        match c.as_mut().stream.read(scratch) {
            Ok(0) => return Some(c.as_mut().eof_cause()),
            Ok(n) => {
                if let Err(end) = on_data(c, &scratch[..n], rx, h) {
                    let _ = c.as_mut().flush();
                    return Some(end);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Some(io_cause(&e))),
        }
    }
    if let Err(e) = c.as_mut().flush() {
        return Some(Some(io_cause(&e)));
    }
    None
}

/// The reading half of [`drive`] for a wss:// connection: TLS records from the socket
/// until it would block, their plaintext through the same decoding as a ws:// one.
fn drive_tls<C: AsMut<WsConn>, H: Handler<C>>(
    c: &mut C,
    scratch: &mut [u8],
    rx: &mut Rx,
    h: &mut H,
) -> Option<End> {
    loop {
        let ws = c.as_mut();
        let Some(t) = ws.tls.as_deref_mut() else {
            break;
        };
        match t.pull(&mut ws.stream) {
            Pull::Records => {}
            Pull::Blocked => break,
            Pull::Eof => return Some(ws.eof_cause()),
            Pull::Io(e) => return Some(Some(io_cause(&e))),
            Pull::Failed(cause) => {
                // rustls queued an alert saying why; the server may as well hear it.
                let _ = ws.flush();
                return Some(Some(cause));
            }
        }
        if let Some(done) = t.take_done(ws.started) {
            h.on_tls(&done);
        }
        loop {
            let ws = c.as_mut();
            let Some(t) = ws.tls.as_deref_mut() else {
                break;
            };
            match t.read_plain(scratch) {
                Plain::Data(n) => {
                    if let Err(end) = on_data(c, &scratch[..n], rx, h) {
                        let _ = c.as_mut().flush();
                        return Some(end);
                    }
                }
                Plain::Empty => break,
                Plain::Closed => return Some(ws.eof_cause()),
            }
        }
    }
    if let Err(e) = c.as_mut().flush() {
        return Some(Some(io_cause(&e)));
    }
    None
}

/// Consumes `data` after what was left over from earlier reads.
fn on_data<C: AsMut<WsConn>, H: Handler<C>>(
    c: &mut C,
    data: &[u8],
    rx: &mut Rx,
    h: &mut H,
) -> Result<(), End> {
    if c.as_mut().rbuf.is_empty() {
        let used = process(c, data, rx, h)?;
        if used < data.len() {
            c.as_mut().rbuf.extend_from_slice(&data[used..]);
        }
    } else {
        let ws = c.as_mut();
        ws.rbuf.extend_from_slice(data);
        let buf = std::mem::take(&mut ws.rbuf);
        let used = process(c, &buf, rx, h)?;
        if used < buf.len() {
            let ws = c.as_mut();
            ws.rbuf = buf;
            ws.rbuf.drain(..used);
        }
    }
    Ok(())
}

/// Consumes what it can of `buf` (the upgrade response, then frames, each counted in
/// `rx`); returns the bytes used.
fn process<C: AsMut<WsConn>, H: Handler<C>>(
    c: &mut C,
    buf: &[u8],
    rx: &mut Rx,
    h: &mut H,
) -> Result<usize, End> {
    let mut pos = 0;
    let ws = c.as_mut();
    if ws.state == State::Upgrading {
        match upgrade_answer(&ws.key, ws.bits & B_OFFERED != 0, buf)? {
            None => return Ok(0),
            Some((n, deflate)) => {
                ws.state = State::Welcome;
                if deflate {
                    ws.bits |= B_DEFLATE;
                    rx.stats.negotiated += 1;
                }
                pos = n;
            }
        }
    }
    let deflate = ws.deflate();
    loop {
        match frame::decode(&buf[pos..], deflate) {
            Ok(None) => break,
            Err(e) => {
                c.as_mut().send(OP_CLOSE, &frame::close_payload(1002, ""));
                return Err(Some(format!("protocol_error: {e}")));
            }
            Ok(Some((f, used))) => {
                pos += used;
                rx.stats.wire_bytes += used as u64;
                on_frame(c, f, rx, h)?;
            }
        }
    }
    Ok(pos)
}

/// Checks the upgrade response at the front of `buf` for the request with `key` that
/// `offered` permessage-deflate or not: the length of its head once complete and
/// accepted, with whether permessage-deflate is in use; `None` while more is needed.
fn upgrade_answer(key: &[u8; 16], offered: bool, buf: &[u8]) -> Result<Option<(usize, bool)>, End> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            Err(Some("bad_response_head_too_large".into()))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(Some("bad_http_response".into())),
        Ok(httparse::Status::Complete(n)) => {
            if resp.code != Some(101) {
                return match http_failure(buf, false) {
                    Some(cause) => Err(Some(cause)),
                    None => Ok(None),
                };
            }
            let want = accept_key(key);
            let ok = resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value == want.as_bytes()
            });
            if !ok {
                return Err(Some("bad_sec_websocket_accept".into()));
            }
            let extensions = resp
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                .map(|h| h.value);
            let agreed = deflate::negotiate(extensions, offered).map_err(Some)?;
            Ok(Some((n, agreed.is_some())))
        }
    }
}

/// Handles one server frame: messages (reassembled, and inflated when compressed) go to
/// `h`, pings are answered, the server's Close is echoed (ending the connection) or ends
/// our own close. `rx` inflates and counts.
pub fn on_frame<C: AsMut<WsConn>, H: Handler<C>>(
    c: &mut C,
    f: Frame<'_>,
    rx: &mut Rx,
    h: &mut H,
) -> Result<(), End> {
    let ws = c.as_mut();
    match f.opcode {
        OP_TEXT | OP_BINARY => {
            if ws.frag.is_some() {
                return Err(Some(
                    "protocol_error: new message inside a fragmented one".into(),
                ));
            }
            let binary = f.opcode == OP_BINARY;
            if !f.fin {
                ws.frag = Some(Box::new(f.payload.to_vec()));
                ws.bits &= !(B_FRAG_BINARY | B_FRAG_DEFLATED);
                if binary {
                    ws.bits |= B_FRAG_BINARY;
                }
                if f.rsv1 {
                    ws.bits |= B_FRAG_DEFLATED;
                }
            } else {
                deliver(c, binary, f.rsv1, f.payload, rx, h)?;
            }
        }
        OP_CONT => {
            let Some(fr) = ws.frag.as_mut() else {
                return Err(Some(
                    "protocol_error: continuation without a message".into(),
                ));
            };
            // Each frame is bounded by the decoder; the message as a whole is bounded here.
            if (fr.len() + f.payload.len()) as u64 > frame::MAX_FRAME {
                return Err(Some("protocol_error: fragmented message too large".into()));
            }
            fr.extend_from_slice(f.payload);
            if f.fin {
                let m = ws.frag.take().unwrap_or_default();
                let binary = ws.bits & B_FRAG_BINARY != 0;
                let deflated = ws.bits & B_FRAG_DEFLATED != 0;
                ws.bits &= !(B_FRAG_BINARY | B_FRAG_DEFLATED);
                deliver(c, binary, deflated, &m, rx, h)?;
            }
        }
        OP_PING => {
            ws.send(OP_PONG, f.payload);
            h.on_ping();
        }
        OP_PONG => {}
        OP_CLOSE => {
            let code = frame::close_code(f.payload);
            match ws.state {
                State::Closing(_) => ws.state = State::Closing(true),
                _ => {
                    // Echo the code, as RFC 6455 5.5.1 asks, and end.
                    let echo = if code == 1005 {
                        Vec::new()
                    } else {
                        frame::close_payload(code, "")
                    };
                    ws.send(OP_CLOSE, &echo);
                    return Err(Some(format!("close_{code}")));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Hands one complete data message to `h`, inflating it first when it came compressed
/// (RSV1, which the decoder lets through only on a connection that negotiated it); counts
/// it in `rx`. Data that does not inflate, or inflates past [`MAX_MESSAGE`], ends the
/// connection with 1007 or 1009.
fn deliver<C: AsMut<WsConn>, H: Handler<C>>(
    c: &mut C,
    binary: bool,
    deflated: bool,
    payload: &[u8],
    rx: &mut Rx,
    h: &mut H,
) -> Result<(), End> {
    let msg = if deflated {
        rx.stats.compressed_frames += 1;
        rx.stats.deflated_bytes += payload.len() as u64;
        match rx.inflater.message(payload, MAX_MESSAGE) {
            Ok(m) => {
                rx.stats.inflated_bytes += m.len() as u64;
                m
            }
            Err(e) => {
                c.as_mut()
                    .send(OP_CLOSE, &frame::close_payload(e.close_code(), ""));
                return Err(Some(format!("protocol_error: {e}")));
            }
        }
    } else {
        payload
    };
    rx.stats.payload_bytes += msg.len() as u64;
    if binary {
        h.on_binary();
        Ok(())
    } else {
        h.on_text(c, msg)
    }
}

/// A non-blocking TCP connect to `addr`, from `source` when given; the error is a report
/// label (see [`io_cause`]).
pub fn connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, String> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(|e| io_cause(&e))?;
    sock.set_nonblocking(true).map_err(|e| io_cause(&e))?;
    let _ = sock.set_tcp_nodelay(true);
    if let Some(ip) = source {
        // Let connect() pick the port, so each source address has a full port range per
        // destination.
        let one: libc::c_int = 1;
        // SAFETY: a valid fd and a pointer to a c_int of the given size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(&SocketAddr::new(ip, 0).into())
            .map_err(|e| format!("bind_{}", io_cause(&e)))?;
    }
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(io_cause(&e)),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(sock)))
}

/// A report label for an I/O error: `connection_refused`, `io_broken_pipe`, never a debug
/// rendering of the error.
pub fn io_cause(e: &io::Error) -> String {
    use io::ErrorKind::*;
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => return "connection_refused".into(),
        Some(libc::ECONNRESET) => return "connection_reset".into(),
        Some(libc::EADDRNOTAVAIL) => return "addr_not_available".into(),
        Some(libc::EADDRINUSE) => return "addr_in_use".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => return "too_many_open_files".into(),
        Some(libc::ETIMEDOUT) => return "tcp_timeout".into(),
        Some(libc::EPIPE) => return "broken_pipe".into(),
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => return "unreachable".into(),
        _ => {}
    }
    match e.kind() {
        ConnectionRefused => "connection_refused".into(),
        ConnectionReset => "connection_reset".into(),
        ConnectionAborted => "connection_aborted".into(),
        TimedOut => "tcp_timeout".into(),
        k => format!("io_{}", k.to_string().replace([' ', '-'], "_")).to_lowercase(),
    }
}

/// The cause for a refused upgrade whose head is in `buf`, once the body is complete (or
/// `eof`).
fn http_failure(buf: &[u8], eof: bool) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let status = resp.code.unwrap_or(0);
    let len = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let body = &buf[n..];
    let complete = match len {
        Some(l) => body.len() >= l,
        None => false,
    };
    if !complete && !eof && buf.len() < MAX_ERROR_BODY {
        return None;
    }
    let body = &body[..len.unwrap_or(body.len()).min(body.len())];
    #[derive(Deserialize)]
    struct ErrBody {
        error: Option<String>,
    }
    Some(
        match serde_json::from_slice::<ErrBody>(body)
            .ok()
            .and_then(|b| b.error)
        {
            Some(code) => format!("http_{status}_{code}"),
            None => format!("http_{status}"),
        },
    )
}

/// The `Sec-WebSocket-Accept` value the server must answer for `key` (RFC 6455 4.2.2).
fn accept_key(key: &[u8; 16]) -> String {
    let mut h = Sha1::new();
    h.update(
        base64::engine::general_purpose::STANDARD
            .encode(key)
            .as_bytes(),
    );
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::server_deflate;

    /// Keeps the messages a connection hands over.
    #[derive(Default)]
    struct Texts {
        got: Vec<Vec<u8>>,
        binary: usize,
    }

    impl Handler<WsConn> for Texts {
        fn on_text(&mut self, _c: &mut WsConn, text: &[u8]) -> Result<(), End> {
            self.got.push(text.to_vec());
            Ok(())
        }
        fn on_binary(&mut self) {
            self.binary += 1;
        }
        fn on_ping(&mut self) {}
        fn on_tls(&mut self, _done: &tls::Done) {}
    }

    /// A connection whose upgrade request (offering permessage-deflate with `offer`) is
    /// sent and whose answer is awaited; its socket is never read or written here.
    fn upgrading(offer: bool) -> (WsConn, std::net::TcpListener) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut ws = WsConn::upgrading(
            TcpStream::from_std(s),
            Instant::now(),
            "/ws",
            "127.0.0.1",
            "t",
            None,
            offer,
        );
        ws.state = State::Upgrading;
        (ws, l)
    }

    /// The server's 101 for `ws`'s request, with `ext` as its Sec-WebSocket-Extensions.
    fn answer(ws: &WsConn, ext: Option<&str>) -> Vec<u8> {
        let ext = ext.map_or(String::new(), |e| {
            format!("Sec-WebSocket-Extensions: {e}\r\n")
        });
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n{ext}\r\n",
            accept_key(&ws.key)
        )
        .into_bytes()
    }

    /// Throng's answer to an offer.
    const THRONG: &str =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    /// An unmasked server frame with first byte `b0`.
    fn server_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xffff => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    fn push_json(n: usize) -> Vec<u8> {
        let items: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"id":{i},"status":"filled","qty":{}}}"#, i * 7 % 13))
            .collect();
        format!(r#"{{"type":"push","seq":1,"data":[{}]}}"#, items.join(",")).into_bytes()
    }

    /// The Close frame (masked, from this client) queued last on `ws`: its code.
    fn queued_close(ws: &WsConn) -> Option<u16> {
        let b = &ws.wbuf;
        let at = b.windows(2).rposition(|w| w == [0x88, 0x82])?;
        let mask = [b[at + 2], b[at + 3], b[at + 4], b[at + 5]];
        Some(u16::from_be_bytes([
            b[at + 6] ^ mask[0],
            b[at + 7] ^ mask[1],
        ]))
    }

    #[test]
    fn the_offer_is_what_browsers_send_and_only_with_the_flag() {
        let (ws, _l) = upgrading(true);
        let req = String::from_utf8(ws.wbuf.clone()).unwrap();
        assert!(
            req.contains(
                "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            ),
            "{req}"
        );
        let (ws, _l) = upgrading(false);
        let req = String::from_utf8(ws.wbuf.clone()).unwrap();
        assert!(!req.to_ascii_lowercase().contains("extensions"), "{req}");
    }

    #[test]
    fn the_extension_answer_is_checked() {
        let (ws, _l) = upgrading(true);
        let key = ws.key;
        let ok = answer(&ws, Some(THRONG));
        assert_eq!(upgrade_answer(&key, true, &ok), Ok(Some((ok.len(), true))));
        let declined = answer(&ws, None);
        assert_eq!(
            upgrade_answer(&key, true, &declined),
            Ok(Some((declined.len(), false)))
        );
        assert_eq!(
            upgrade_answer(&key, false, &declined),
            Ok(Some((declined.len(), false)))
        );
        let cause =
            |offered: bool, ext: &str| match upgrade_answer(&key, offered, &answer(&ws, Some(ext)))
            {
                Err(Some(c)) => c,
                other => panic!("{ext:?} (offered {offered}): {other:?}"),
            };
        // Not offered: any extension fails the connection (RFC 6455 4.1).
        let c = cause(false, THRONG);
        assert!(c.starts_with("extension_not_offered:"), "{c}");
        assert!(cause(true, "x-webkit-deflate-frame").contains("x-webkit-deflate-frame"));
        // Offered, but in a form this client cannot take.
        let c = cause(true, "permessage-deflate; client_no_context_takeover");
        assert!(
            c.starts_with("bad_extension_answer:") && c.contains("server_no_context_takeover"),
            "{c}"
        );
        let c = cause(
            true,
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=16",
        );
        assert!(c.contains("server_max_window_bits=16"), "{c}");
    }

    #[test]
    fn compressed_messages_are_inflated_and_counted() {
        let (mut ws, _l) = upgrading(true);
        let mut rx = Rx::new(true);
        let mut h = Texts::default();
        let big = push_json(100);
        let z = server_deflate(&big);
        assert!(z.len() < big.len() / 3);
        let compressed = server_frame(0xc1, &z);
        let plain = server_frame(0x81, br#"{"type":"welcome"}"#);
        let mut wire = answer(&ws, Some(THRONG));
        let head = wire.len();
        wire.extend_from_slice(&plain);
        wire.extend_from_slice(&compressed);
        wire.extend_from_slice(&compressed);
        // In pieces, as reads cut it.
        for piece in wire.chunks(7) {
            on_data(&mut ws, piece, &mut rx, &mut h).unwrap();
        }
        assert_eq!(ws.state, State::Welcome);
        assert!(ws.deflate());
        assert_eq!(h.got.len(), 3);
        assert_eq!(h.got[0], br#"{"type":"welcome"}"#);
        assert_eq!(h.got[1], big);
        assert_eq!(h.got[2], big);
        let st = rx.stats;
        assert_eq!(st.negotiated, 1);
        assert_eq!(
            st.wire_bytes,
            (wire.len() - head) as u64,
            "frames after the 101"
        );
        assert_eq!(st.compressed_frames, 2);
        assert_eq!(st.deflated_bytes, 2 * z.len() as u64);
        assert_eq!(st.inflated_bytes, 2 * big.len() as u64);
        assert_eq!(st.payload_bytes, (18 + 2 * big.len()) as u64);
    }

    #[test]
    fn a_fragmented_compressed_message_is_inflated_whole() {
        let (mut ws, _l) = upgrading(true);
        let mut rx = Rx::new(true);
        let mut h = Texts::default();
        let big = push_json(50);
        let z = server_deflate(&big);
        let (a, b) = z.split_at(z.len() / 2);
        let mut wire = answer(&ws, Some(THRONG));
        wire.extend(server_frame(0x41, a)); // RSV1, text, not FIN
        wire.extend(server_frame(0x89, b"hi")); // a ping between the fragments
        wire.extend(server_frame(0x80, b)); // FIN continuation, no RSV1
        wire.extend(server_frame(0x41, a));
        wire.extend(server_frame(0x82, b"x")); // a new message inside the fragmented one
        on_data(&mut ws, &wire[..wire.len() - 3], &mut rx, &mut h).unwrap();
        assert_eq!(h.got, vec![big]);
        assert_eq!(rx.stats.compressed_frames, 1);
        let e = on_data(&mut ws, &wire[wire.len() - 3..], &mut rx, &mut h);
        assert!(
            matches!(&e, Err(Some(c)) if c.contains("inside a fragmented")),
            "{e:?}"
        );
    }

    fn rsv1_cause(offer: bool, ext: Option<&str>, frame: &[u8]) -> (String, WsConn) {
        let (mut ws, _l) = upgrading(offer);
        let mut rx = Rx::new(offer);
        let mut h = Texts::default();
        let mut wire = answer(&ws, ext);
        wire.extend_from_slice(frame);
        let e = on_data(&mut ws, &wire, &mut rx, &mut h);
        assert!(h.got.is_empty());
        match e {
            Err(Some(c)) => (c, ws),
            other => panic!("{frame:?} was taken: {other:?}"),
        }
    }

    #[test]
    fn rsv1_where_it_may_not_be_is_a_protocol_error() {
        let z = server_frame(0xc1, &server_deflate(b"hello hello hello"));
        // Not negotiated: not offered, or offered and declined.
        for (offer, ext) in [(false, None), (true, None)] {
            let (c, ws) = rsv1_cause(offer, ext, &z);
            assert_eq!(
                c,
                "protocol_error: RSV1 set without a negotiated permessage-deflate"
            );
            assert_eq!(queued_close(&ws), Some(1002));
        }
        let (c, _) = rsv1_cause(true, Some(THRONG), &server_frame(0xc9, b""));
        assert_eq!(c, "protocol_error: RSV1 set on a control frame");
        let mut frag = server_frame(0x01, b"ab");
        frag.extend(server_frame(0xc0, b"cd"));
        let (c, _) = rsv1_cause(true, Some(THRONG), &frag);
        assert_eq!(c, "protocol_error: RSV1 set on a continuation frame");
    }

    #[test]
    fn bad_or_huge_compressed_data_ends_the_connection() {
        let (c, ws) = rsv1_cause(true, Some(THRONG), &server_frame(0xc1, &[0xff; 8]));
        assert_eq!(
            c,
            "protocol_error: compressed message is not valid deflate data"
        );
        assert_eq!(queued_close(&ws), Some(1007));
        // A zip bomb: a few KiB that inflate past the 16 MiB a message may have.
        let z = server_deflate(&vec![b' '; MAX_MESSAGE + 1]);
        assert!(z.len() < 64 * 1024, "{}", z.len());
        let (c, ws) = rsv1_cause(true, Some(THRONG), &server_frame(0xc1, &z));
        assert_eq!(
            c,
            format!("protocol_error: compressed message inflates past {MAX_MESSAGE} bytes")
        );
        assert_eq!(queued_close(&ws), Some(1009));
        // Exactly the most a message may have is fine.
        let (mut ws, _l) = upgrading(true);
        let mut rx = Rx::new(true);
        let mut h = Texts::default();
        let mut wire = answer(&ws, Some(THRONG));
        wire.extend(server_frame(
            0xc1,
            &server_deflate(&vec![b' '; MAX_MESSAGE]),
        ));
        on_data(&mut ws, &wire, &mut rx, &mut h).unwrap();
        assert_eq!(h.got[0].len(), MAX_MESSAGE);
    }

    #[test]
    fn error_labels_are_words_not_debug_renderings() {
        let e = io::Error::from(io::ErrorKind::BrokenPipe);
        assert_eq!(io_cause(&e), "io_broken_pipe");
        let e = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(io_cause(&e), "io_unexpected_end_of_file");
        assert_eq!(
            io_cause(&io::Error::from_raw_os_error(libc::ECONNREFUSED)),
            "connection_refused"
        );
    }

    #[test]
    fn accept_key_rfc_example() {
        // RFC 6455 1.3: key "dGhlIHNhbXBsZSBub25jZQ==" -> "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        let key = base64::engine::general_purpose::STANDARD
            .decode("dGhlIHNhbXBsZSBub25jZQ==")
            .unwrap();
        let key: [u8; 16] = key.try_into().unwrap();
        assert_eq!(accept_key(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn http_failure_causes() {
        let r = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 49\r\nRetry-After: 1\r\n\r\n{\"error\":\"over_capacity\",\"message\":\"full, sorry\"}";
        assert_eq!(
            http_failure(r, false).as_deref(),
            Some("http_503_over_capacity")
        );
        // incomplete body: wait, unless eof
        assert_eq!(http_failure(&r[..r.len() - 5], false), None);
        assert_eq!(
            http_failure(&r[..r.len() - 5], true).as_deref(),
            Some("http_503")
        );
        let r = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno";
        assert_eq!(http_failure(r, false).as_deref(), Some("http_401"));
    }
}
