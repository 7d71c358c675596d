//! HTTPS on the push API (`api_tls_cert`): an API connection's stream, plain or through
//! rustls, and what TLS counts there.
//!
//! API connections are few (`api_max_connections`) and busy, so unlike the client
//! listener's they keep their rustls connection for life. The stream reads and writes
//! plaintext; records go to the socket as it takes them, and what it cannot take yet
//! waits in rustls (one write's worth, at most its 64 KiB limit) until the next writable
//! event, and no more plaintext is taken meanwhile.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering::Relaxed;

use mio::net::TcpStream;

use crate::tls::ApiTlsCounters;

/// Bytes peeked at the start of a connection to tell plain HTTP from a ClientHello.
const PEEK: usize = 8;

/// An API connection's socket: plain HTTP, or HTTPS.
pub(super) enum ApiStream {
    /// Plain HTTP.
    Plain(TcpStream),
    /// HTTPS: the socket and its rustls connection.
    Tls(Box<TlsConn>),
}

/// A socket with its rustls connection.
pub(super) struct TlsConn {
    sock: TcpStream,
    conn: rustls::ServerConnection,
    /// The first bytes were looked at for plain HTTP.
    checked: bool,
    /// Plain HTTP arrived: the 400 that says so goes out unencrypted.
    plain_refusal: bool,
    /// close_notify was queued.
    closing: bool,
    /// The completed handshake was counted.
    counted: bool,
    /// Bytes the client may still send before its handshake is over: rustls would
    /// buffer up to 64 KiB of a handshake message that never ends.
    handshake_left: usize,
}

/// Where a connection's TLS handshake stands (`ApiStream::handshake`).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Handshake {
    /// More is needed from the client, or the socket must take what is waiting.
    Pending,
    /// The API thread serves it from here: the handshake finished (records still to
    /// send go with its first flush), or plain HTTP came, which its first read answers.
    Ready,
    /// The client closed before the handshake finished.
    Ended,
}

/// The error a handshake ends with when the client sends more than it may before the
/// handshake is over.
#[derive(Debug, thiserror::Error)]
#[error("the client sent more before its TLS handshake was over than a handshake needs")]
pub(super) struct HandshakeTooLong;

/// The error `read` gives when plain HTTP arrives on the HTTPS port.
#[derive(Debug, thiserror::Error)]
#[error("plain HTTP on the push API's HTTPS port")]
pub(super) struct PlainHttp;

impl ApiStream {
    /// HTTPS over `sock`; the client may send `handshake_bytes` before its handshake
    /// is over (`TlsServer::handshake_bytes`).
    pub(super) fn tls(
        sock: TcpStream,
        conn: rustls::ServerConnection,
        handshake_bytes: usize,
    ) -> ApiStream {
        ApiStream::Tls(Box::new(TlsConn {
            sock,
            conn,
            checked: false,
            plain_refusal: false,
            closing: false,
            counted: false,
            handshake_left: handshake_bytes,
        }))
    }

    /// The socket, to register or deregister.
    pub(super) fn socket(&mut self) -> &mut TcpStream {
        match self {
            ApiStream::Plain(s) => s,
            ApiStream::Tls(t) => &mut t.sock,
        }
    }

    /// Whether a read shorter than the buffer means the socket is empty: not through
    /// TLS, where a read returns at most what one pass over the records gave.
    pub(super) fn short_read_drains(&self) -> bool {
        matches!(self, ApiStream::Plain(_))
    }

    /// Moves the handshake on as far as the socket allows (on the handshake thread,
    /// `handshaker`). A failed handshake is an error and is counted; a finished one is
    /// counted full or resumed. A plain stream is always ready.
    pub(super) fn handshake(&mut self, counters: &ApiTlsCounters) -> io::Result<Handshake> {
        let t = match self {
            ApiStream::Plain(_) => return Ok(Handshake::Ready),
            ApiStream::Tls(t) => t,
        };
        let result = t.handshake();
        match &result {
            Ok(Handshake::Ready) if t.checked => t.count_completed(counters),
            Err(_) => {
                t.counted = true;
                counters.failed.fetch_add(1, Relaxed);
            }
            _ => {}
        }
        result
    }

    /// Reads plaintext: `Ok(0)` at the end, `WouldBlock` when nothing more has come.
    /// Plain HTTP on the HTTPS port is an error carrying `PlainHttp`; after it the
    /// stream writes unencrypted, for the 400 that says so.
    pub(super) fn read(&mut self, buf: &mut [u8], counters: &ApiTlsCounters) -> io::Result<usize> {
        let t = match self {
            ApiStream::Plain(s) => return s.read(buf),
            // What follows the plain request is read (and discarded) as it came.
            ApiStream::Tls(t) if t.plain_refusal => return t.sock.read(buf),
            ApiStream::Tls(t) => t,
        };
        let result = t.read(buf);
        match &result {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                if !t.counted {
                    // Plain HTTP, a bad record, an alert or a reset before the handshake
                    // ended.
                    t.counted = true;
                    counters.failed.fetch_add(1, Relaxed);
                } else if e.kind() == io::ErrorKind::InvalidData {
                    // A bad record (rustls's errors); a reset is no TLS error.
                    counters.record_errors.fetch_add(1, Relaxed);
                }
            }
            _ if !t.counted && !t.conn.is_handshaking() => t.count_completed(counters),
            _ => {}
        }
        result
    }

    /// Writes plaintext; `WouldBlock` while earlier records wait for the socket.
    pub(super) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = match self {
            ApiStream::Plain(s) => return s.write(buf),
            ApiStream::Tls(t) if t.plain_refusal => return t.sock.write(buf),
            ApiStream::Tls(t) => t,
        };
        if !t.flush()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = t.conn.writer().write(buf)?;
        // Best effort now; what the socket does not take goes with the next writable
        // event (`flush`).
        t.flush()?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Writes records still waiting; true when none are left (always, for plain HTTP).
    pub(super) fn flush(&mut self) -> io::Result<bool> {
        match self {
            ApiStream::Plain(_) => Ok(true),
            ApiStream::Tls(t) if t.plain_refusal => Ok(true),
            ApiStream::Tls(t) => t.flush(),
        }
    }

    /// Ends the write half (after close_notify, through TLS); false while close_notify
    /// still waits for the socket (call again when it is writable).
    pub(super) fn shutdown_write(&mut self) -> io::Result<bool> {
        let t = match self {
            ApiStream::Plain(s) => {
                s.shutdown(std::net::Shutdown::Write)?;
                return Ok(true);
            }
            ApiStream::Tls(t) => t,
        };
        if !t.plain_refusal {
            if !t.closing {
                t.closing = true;
                t.conn.send_close_notify();
            }
            if !t.flush()? {
                return Ok(false);
            }
        }
        t.sock.shutdown(std::net::Shutdown::Write)?;
        Ok(true)
    }
}

impl TlsConn {
    /// Counts the finished handshake, full or resumed, once.
    fn count_completed(&mut self, counters: &ApiTlsCounters) {
        self.counted = true;
        let counter = match self.conn.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => &counters.resumed,
            _ => &counters.full,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// `ApiStream::handshake` before counting. Plain HTTP is left unchecked for `read`.
    fn handshake(&mut self) -> io::Result<Handshake> {
        if !self.checked {
            let mut head = [0u8; PEEK];
            let n = match self.sock.peek(&mut head) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Handshake::Pending),
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(Handshake::Ended);
            }
            if crate::tls::looks_like_http(&head[..n]) {
                return Ok(Handshake::Ready);
            }
            self.checked = true;
        }
        loop {
            // Flights go out as they are made; what the socket does not take waits for
            // its writable event, while reading goes on.
            self.flush()?;
            if !self.conn.is_handshaking() {
                return Ok(Handshake::Ready);
            }
            if self.handshake_left == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, HandshakeTooLong));
            }
            // rustls reads no more than is left of the allowance.
            let left = self.handshake_left as u64;
            match self.conn.read_tls(&mut (&mut self.sock).take(left)) {
                Ok(0) => return Ok(Handshake::Ended),
                Ok(n) => self.handshake_left = self.handshake_left.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Handshake::Pending),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                // The alert that says why, best effort.
                let _ = self.flush();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.checked {
            let mut head = [0u8; PEEK];
            let n = self.sock.peek(&mut head)?;
            if n == 0 {
                return Ok(0);
            }
            self.checked = true;
            if crate::tls::looks_like_http(&head[..n]) {
                self.plain_refusal = true;
                return Err(io::Error::new(io::ErrorKind::InvalidData, PlainHttp));
            }
        }
        let mut at_eof = false;
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && at_eof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: the end, as HTTP clients do.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => at_eof = true,
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            let processed = self.conn.process_new_packets();
            // Handshake messages, tickets and alerts go out now, best effort; the rest
            // with the next writable event.
            let _ = self.flush();
            if let Err(e) = processed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    fn flush(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Whether `e` says plain HTTP arrived on the HTTPS port.
pub(super) fn is_plain_http(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<PlainHttp>())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::tls::TlsServer;

    /// A client socket with a small receive buffer, the server's end with a small send
    /// buffer (as `ApiStream` over a mio socket), both nonblocking.
    fn pair() -> (std::net::TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        sock.connect(&listener.local_addr().expect("addr").into())
            .expect("connect");
        let client: std::net::TcpStream = sock.into();
        let (server, _) = listener.accept().expect("accept");
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .expect("SO_SNDBUF");
        client.set_nonblocking(true).expect("nonblocking");
        server.set_nonblocking(true).expect("nonblocking");
        (client, TcpStream::from_std(server))
    }

    fn client_config(
        root: &rustls::pki_types::CertificateDer<'static>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.clone()).expect("root");
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }

    /// Moves the client's records both ways; appends the plaintext it got to `plain`.
    /// True once it read close_notify.
    fn pump_client(
        c: &mut rustls::ClientConnection,
        sock: &mut std::net::TcpStream,
        plain: &mut Vec<u8>,
    ) -> bool {
        while c.wants_write() {
            match c.write_tls(sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("client write: {e}"),
            }
        }
        match c.read_tls(sock) {
            Ok(_) => {
                c.process_new_packets()
                    .expect("the server's records are valid");
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("client read: {e}"),
        }
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match c.reader().read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => panic!("client plaintext: {e}"),
            }
        }
    }

    /// Runs `step` until it returns true, for at most five seconds.
    fn until(what: &str, mut step: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !step() {
            assert!(Instant::now() < deadline, "not within 5 s: {what}");
        }
    }

    #[test]
    fn close_notify_waits_behind_records_the_socket_has_not_taken() {
        let (files, root) = crate::tls::tests::test_files("api-stream");
        let server = TlsServer::load_api(&files, None).expect("load");
        let (mut sock, srv) = pair();
        let mut stream = ApiStream::tls(
            srv,
            server.connection().expect("connection"),
            server.handshake_bytes(),
        );
        let counters = ApiTlsCounters::default();
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut client = rustls::ClientConnection::new(client_config(&root), name).expect("client");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        until("handshake", || {
            pump_client(&mut client, &mut sock, &mut got);
            match stream.read(&mut buf, &counters) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => panic!("no plaintext yet: {other:?}"),
            }
            !client.is_handshaking() && counters.full.load(Relaxed) == 1
        });
        // The client does not read: the records fill the socket and wait in rustls.
        let chunk = vec![b'a'; 16 * 1024];
        let mut written = 0;
        loop {
            match stream.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("server write: {e}"),
            }
        }
        assert!(written >= chunk.len(), "{written}");
        assert!(
            !stream.flush().expect("flush"),
            "records wait for the socket"
        );
        assert!(
            !stream.shutdown_write().expect("shutdown"),
            "close_notify waits behind them"
        );
        // The client reads: every byte, then close_notify.
        let mut closed = false;
        until("everything read", || {
            if !closed {
                closed = stream.shutdown_write().expect("shutdown");
            }
            pump_client(&mut client, &mut sock, &mut got)
        });
        assert!(closed);
        assert_eq!(got.len(), written);
        assert!(got.iter().all(|&b| b == b'a'));
    }

    #[test]
    fn plain_http_is_told_apart_and_answered_plainly() {
        let (files, _) = crate::tls::tests::test_files("api-plain");
        let server = TlsServer::load_api(&files, None).expect("load");
        let (mut sock, srv) = pair();
        let mut stream = ApiStream::tls(
            srv,
            server.connection().expect("connection"),
            server.handshake_bytes(),
        );
        let counters = ApiTlsCounters::default();
        io::Write::write_all(&mut sock, b"GET /healthz HTTP/1.1\r\n\r\n").expect("write");
        let mut buf = [0u8; 1024];
        let mut err = None;
        until("the request read", || {
            match stream.read(&mut buf, &counters) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                other => {
                    err = Some(other);
                    true
                }
            }
        });
        let e = err.and_then(Result::err).expect("an error");
        assert!(is_plain_http(&e), "{e}");
        assert_eq!(counters.failed.load(Relaxed), 1);
        // What follows is plain both ways: the rest of the request, then the answer.
        assert_eq!(stream.read(&mut buf, &counters).expect("read"), 25);
        assert_eq!(stream.write(b"HTTP/1.1 400 ").expect("write"), 13);
        let mut answer = [0u8; 13];
        until("the answer", || {
            sock.peek(&mut answer).is_ok_and(|n| n == 13)
        });
        assert_eq!(&answer, b"HTTP/1.1 400 ");
    }
}
