//! A TLS handshake in the acceptor: rustls drives it over the acceptor's socket, the
//! upgrade request comes out as plaintext, and once the upgrade is admitted the session's
//! keys leave for the shard (`finish`) while rustls and its buffers are dropped.
//!
//! rustls is given complete records only, so when the handshake ends every byte it was
//! given is processed and the start of an incomplete record is still ours to hand on.

use std::io::{self, Read, Write};
use std::sync::Arc;

use super::capture::{self, Captured};
use super::record::{Session, MAX_PLAIN};
use super::TlsError;

/// A record header: type, version, length.
const HEADER: usize = 5;
/// Bytes a client may send before its handshake is over: rustls buffers an incomplete
/// handshake message up to 64 KiB, so this bounds what a pending handshake holds. Real
/// ClientHellos, even with a post-quantum key share, a ticket and a HelloRetryRequest's
/// second one, stay under 4 KiB.
pub(crate) const HANDSHAKE_BYTES: usize = 16 * 1024;
/// Longest record a client may send during the handshake: 2^14 bytes of plaintext,
/// plus TLS 1.3's 256 of expansion once encrypted (RFC 8446 section 5.2).
const MAX_HANDSHAKE_RECORD: usize = MAX_PLAIN + 256;
/// Longest record after it: TLS 1.2's limit for encrypted records (RFC 5246 6.2.3).
const MAX_RECORD: usize = MAX_PLAIN + 2048;

/// A handshake in progress.
pub(crate) struct TlsAccept {
    conn: rustls::ServerConnection,
    /// Received bytes not yet given to rustls: the start of an incomplete record.
    sealed_in: Vec<u8>,
    /// Bytes for the client that the socket has not taken yet.
    out: Vec<u8>,
    /// The TLS 1.3 traffic secrets, caught as rustls derived them.
    caught: Captured,
    /// Bytes given to rustls while the handshake was in progress (`HANDSHAKE_BYTES`).
    handshake_bytes: usize,
}

/// A handshake that ended: what the shard continues with.
pub(crate) struct Finished {
    /// The record layer's keys and sequence numbers.
    pub session: Session,
    /// Records for the client still to be written (session tickets, usually nothing).
    pub out: Vec<u8>,
    /// Received bytes of an incomplete record.
    pub sealed_in: Vec<u8>,
}

impl Finished {
    /// The bytes that end a connection refused after its handshake: records still to
    /// send, then `answer` and close_notify sealed with the session's keys.
    pub(crate) fn seal_last_words(mut self, answer: &[u8]) -> Vec<u8> {
        let mut sealed = std::mem::take(&mut self.out);
        if let Ok(mut sealer) = self.session.sealer(&mut sealed) {
            sealer.push(answer);
            let _ = sealer.close_notify();
        }
        sealed
    }
}

impl TlsAccept {
    pub(super) fn new(config: Arc<rustls::ServerConfig>) -> Result<TlsAccept, TlsError> {
        let mut conn = rustls::ServerConnection::new(config)?;
        // What is written before `finish` is bounded by the acceptor (refusals, the dev
        // demo page), not by rustls.
        conn.set_buffer_limit(None);
        Ok(TlsAccept {
            conn,
            sealed_in: Vec::new(),
            out: Vec::new(),
            caught: Captured::default(),
            handshake_bytes: 0,
        })
    }

    /// Takes bytes from the client: complete records go to rustls, and application data
    /// (the upgrade request) is appended to `plain`. After an error, `out` holds the
    /// alert for the client, if rustls wrote one. During the handshake at most
    /// `HANDSHAKE_BYTES` are taken, the incomplete record kept included.
    pub(crate) fn receive(&mut self, bytes: &[u8], plain: &mut Vec<u8>) -> Result<(), TlsError> {
        if self.sealed_in.is_empty() && self.conn.is_handshaking() && looks_like_http(bytes) {
            return Err(TlsError::PlainHttp);
        }
        self.sealed_in.extend_from_slice(bytes);
        let max_record = if self.conn.is_handshaking() {
            MAX_HANDSHAKE_RECORD
        } else {
            MAX_RECORD
        };
        let complete = complete_records(&self.sealed_in, max_record)?;
        let mut fed = 0;
        while fed < complete {
            capture::clear();
            // During the handshake rustls gets no more than is left of its allowance, so
            // it never buffers more of a ClientHello that does not end.
            let handshaking = self.conn.is_handshaking();
            let end = if handshaking {
                let room = HANDSHAKE_BYTES - self.handshake_bytes;
                if room == 0 {
                    return Err(too_long());
                }
                complete.min(fed + room)
            } else {
                complete
            };
            let mut records = &self.sealed_in[fed..end];
            let n = self
                .conn
                .read_tls(&mut records)
                .map_err(|e| TlsError::Record(io_reason(&e)))?;
            fed += n;
            if handshaking {
                self.handshake_bytes += n;
            }
            let processed = self.conn.process_new_packets();
            self.caught.absorb();
            self.drain_out();
            processed?;
            self.read_plain(plain)?;
            if n == 0 {
                break;
            }
        }
        self.sealed_in.drain(..fed);
        if self.conn.is_handshaking()
            && self.handshake_bytes + self.sealed_in.len() > HANDSHAKE_BYTES
        {
            return Err(too_long());
        }
        // Only an incomplete record stays: a read's worth of capacity would stay with it
        // for the rest of the handshake.
        if self.sealed_in.capacity() > self.sealed_in.len() + 1024 {
            self.sealed_in.shrink_to_fit();
        }
        Ok(())
    }

    fn read_plain(&mut self, plain: &mut Vec<u8>) -> Result<(), TlsError> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.conn.reader().read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(TlsError::Record(io_reason(&e))),
            }
        }
    }

    fn drain_out(&mut self) {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.out).is_err() {
                break;
            }
        }
    }

    /// Bytes waiting to be written to the client; the caller removes what it wrote.
    pub(crate) fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Encrypts `bytes` (a refusal, a page) for the client.
    pub(crate) fn write_plain(&mut self, bytes: &[u8]) -> Result<(), TlsError> {
        self.conn
            .writer()
            .write_all(bytes)
            .map_err(|e| TlsError::Record(io_reason(&e)))?;
        self.drain_out();
        Ok(())
    }

    /// Queues close_notify for the client.
    pub(crate) fn close_notify(&mut self) {
        self.conn.send_close_notify();
        self.drain_out();
    }

    /// Whether the handshake is still going on (no application data can flow yet).
    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the handshake resumed a session.
    pub(crate) fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Ends the handshake phase: the session for the shard, bytes still to write, and the
    /// start of an incomplete record.
    pub(crate) fn finish(mut self) -> Result<Finished, TlsError> {
        // A key update rustls owes the client (one it asked for with its own, before its
        // upgrade request reached us) is sealed already but waits in rustls for the next
        // record: an empty write puts it out. Our sending key has moved on without it.
        let _ = self.conn.writer().write(&[]);
        self.drain_out();
        let TlsAccept {
            conn,
            sealed_in,
            out,
            caught,
            ..
        } = self;
        let tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        let secrets = conn.dangerous_extract_secrets()?;
        Ok(Finished {
            session: Session::new(tls13, secrets, caught)?,
            out,
            sealed_in,
        })
    }
}

/// Bytes of the complete records at the start of `buf`. Something that is not a record
/// header counts as complete, so rustls sees it at once and refuses it; a record longer
/// than `max_record` is refused here, before it is buffered.
fn complete_records(buf: &[u8], max_record: usize) -> Result<usize, TlsError> {
    let mut pos = 0;
    while buf.len() - pos >= HEADER {
        let len = usize::from(u16::from_be_bytes([buf[pos + 3], buf[pos + 4]]));
        if !(20..=24).contains(&buf[pos]) || buf[pos + 1] != 3 {
            return Ok(buf.len());
        }
        if len > max_record {
            return Err(TlsError::Refused {
                alert: super::record::RECORD_OVERFLOW,
                reason: "record longer than TLS allows",
            });
        }
        if buf.len() - pos < HEADER + len {
            break;
        }
        pos += HEADER + len;
    }
    Ok(pos)
}

/// A client that sent more than `HANDSHAKE_BYTES` before its handshake was over.
fn too_long() -> TlsError {
    TlsError::Refused {
        alert: super::record::RECORD_OVERFLOW,
        reason: "more handshake bytes than a ClientHello needs",
    }
}

/// Whether the first bytes on a TLS port are an HTTP request line instead.
pub(crate) fn looks_like_http(bytes: &[u8]) -> bool {
    let method_end = bytes.iter().position(|&b| b == b' ');
    matches!(method_end, Some(n) if (3..=7).contains(&n)
        && bytes[..n].iter().all(u8::is_ascii_uppercase))
}

fn io_reason(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::InvalidData => "invalid TLS data",
        io::ErrorKind::UnexpectedEof => "the connection ended mid-record",
        _ => "TLS I/O failed",
    }
}
