//! wss://: how a connection's bytes go through TLS.
//!
//! A [`crate::ws_conn::WsConn`] of a `wss://` URL holds a [`TlsConn`] on the same
//! non-blocking socket. The WebSocket bytes it would write to the socket go into
//! rustls's plaintext writer and leave as TLS records; the records read from the socket
//! come back as plaintext for the same upgrade and frame decoding a `ws://` connection
//! uses. [`config`] builds the one client configuration a process shares (trust, ALPN,
//! the session store of [`tickets`] that resumed handshakes draw on); [`stats`] counts
//! the handshakes.

pub mod config;
pub mod stats;
mod tickets;

pub use config::{ClientIdentity, Tickets, TlsDial, TlsError, Trust};
pub use stats::{Done, TlsReport, TlsStats};

use rustls::{ClientConnection, HandshakeKind};
use std::io::{self, Read, Write};
use std::time::Instant;

/// The TLS state of one `wss://` connection (boxed on the connection, so a `ws://` one
/// pays only for the empty pointer).
pub struct TlsConn {
    conn: ClientConnection,
    /// The end of the handshake was reported (once per connection).
    reported: bool,
    /// Our close_notify is queued (once per connection).
    notified: bool,
}

/// What one read of TLS records from the socket brought.
pub enum Pull {
    /// Records were read and processed: plaintext may be waiting.
    Records,
    /// The socket has nothing more now.
    Blocked,
    /// The peer closed the TCP connection.
    Eof,
    /// The socket failed.
    Io(io::Error),
    /// rustls refused what came (bad certificate, alert, not TLS at all): the report
    /// label, `tls: <rustls error>`.
    Failed(String),
}

/// What one read of plaintext brought.
pub enum Plain {
    /// This many bytes.
    Data(usize),
    /// Nothing until more records arrive.
    Empty,
    /// The peer ended the TLS stream (close_notify, or EOF without one).
    Closed,
}

impl TlsConn {
    /// Wraps a client session whose ClientHello is queued (written once connected).
    fn new(conn: ClientConnection) -> Box<TlsConn> {
        Box::new(TlsConn {
            conn,
            reported: false,
            notified: false,
        })
    }

    /// Whether the handshake is still under way.
    pub fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Moves what rustls takes of `plain` (the connection's outbound WebSocket bytes,
    /// in order) into TLS records and writes records until the socket would block. What
    /// rustls does not take yet (its buffer is full, or the handshake is still under way
    /// and its plaintext buffer full) stays in `plain`. With `finished` (our clean close
    /// is answered) and nothing left to send, a close_notify goes last, so the server
    /// sees a TLS-level end rather than a truncation.
    pub fn flush(
        &mut self,
        plain: &mut Vec<u8>,
        sock: &mut impl Write,
        finished: bool,
    ) -> io::Result<()> {
        if self.notified {
            // Both Close frames were exchanged and the TLS stream is ended: rustls would
            // still encrypt a late pong, which the peer must take for a protocol error.
            plain.clear();
        }
        loop {
            if !plain.is_empty() {
                let n = self.conn.writer().write(plain)?;
                plain.drain(..n);
            }
            if finished && plain.is_empty() && !self.notified {
                self.notified = true;
                self.conn.send_close_notify();
            }
            if !self.conn.wants_write() {
                return Ok(());
            }
            match self.conn.write_tls(sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads TLS records from the socket once and processes them.
    pub fn pull(&mut self, sock: &mut impl Read) -> Pull {
        match self.conn.read_tls(sock) {
            Ok(0) => Pull::Eof,
            Ok(_) => match self.conn.process_new_packets() {
                Ok(_) => Pull::Records,
                Err(e) => Pull::Failed(format!("tls: {e}")),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Pull::Blocked,
            // Nothing was read: the caller's loop simply reads again.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Pull::Records,
            Err(e) => Pull::Io(e),
        }
    }

    /// Reads decrypted bytes into `buf` (not empty).
    pub fn read_plain(&mut self, buf: &mut [u8]) -> Plain {
        match self.conn.reader().read(buf) {
            Ok(0) => Plain::Closed,
            Ok(n) => Plain::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Plain::Empty,
            // UnexpectedEof: the TCP connection ended without a close_notify, which for
            // a WebSocket (whose own Close came first, or not) is just the end.
            Err(_) => Plain::Closed,
        }
    }

    /// The finished handshake, the first time it is seen finished; `started` is when the
    /// connection attempt began.
    pub fn take_done(&mut self, started: Instant) -> Option<Done> {
        if self.reported || self.conn.is_handshaking() {
            return None;
        }
        self.reported = true;
        Some(Done {
            kind: self.conn.handshake_kind().unwrap_or(HandshakeKind::Full),
            us: started.elapsed().as_micros() as u64,
            version: self.conn.protocol_version(),
            suite: self.conn.negotiated_cipher_suite().map(|s| s.suite()),
        })
    }
}

#[cfg(test)]
mod tests;
