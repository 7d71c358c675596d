//! The subscriber's pub/sub link to Redis, on a socket and read buffer of its own.
//!
//! redis-rs's `PubSub` keeps what it has read in a buffer it does not show, so its owner
//! cannot tell that the next read will block: the last messages of a burst waited in the
//! shards' queues for the next message or for the read timeout, which the kernel rounds
//! up to whole jiffies (5 to 12 ms here). Here the subscriber takes every message already
//! read (`buffered`) and what has arrived since (`read_now`), wakes the shards once, and
//! only then waits on the socket (`read`).
//! Frames are cut with `frame_len` and decoded by redis-rs (`parse_redis_value`). Over
//! `rediss://` the link runs its own rustls client, with the roots the other links use.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, Msg, RedisResult, Value};
use rustls::pki_types::ServerName;

use super::IO_TIMEOUT;
use crate::config::RedisCa;

/// Largest frame accepted from Redis: a message is one push envelope (a push is at most
/// 1 MiB), so anything near this is a broken link, not a message.
const MAX_FRAME: usize = 16 << 20;
/// The read buffer's first size; it grows (by doubling) only for a larger frame.
const READ_BUFFER: usize = 64 << 10;

/// The link's bytes: plain TCP, or TLS over it (`rediss://`).
enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.sock,
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(t) => t.flush(),
        }
    }
}

/// The pub/sub link's TLS configuration for a `rediss://` URL (`None` for `redis://`):
/// verified against `redis_ca` when set, else against the system's roots, and presenting
/// the client certificate when one is set, as redis-rs does for the other links.
pub(crate) fn tls_config(
    url: &str,
    ca: Option<&RedisCa>,
    identity: Option<&crate::tls::Identity>,
) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    if !url.starts_with("rediss://") {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    let certs = match ca {
        Some(ca) => ca.certs.clone(),
        None => rustls_native_certs::load_native_certs().certs,
    };
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(match ca {
            Some(_) => "redis_ca holds no usable CA certificate".into(),
            None => {
                "no CA certificates in the system's store to verify rediss:// with; give redis_ca"
                    .into()
            }
        });
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| format!("redis_client_cert: {e}"))?,
    };
    Ok(Some(Arc::new(config)))
}

/// A pub/sub connection: subscriptions, pings and the messages they bring.
pub(crate) struct PubSubLink {
    stream: Transport,
    /// Bytes read land in `buf[end..]`; `buf[start..end]` is read and not yet taken.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Messages read while waiting for a command's confirmation, in order.
    queued: VecDeque<Msg>,
    read_timeout: Option<Duration>,
}

/// What one subscribed-mode frame was.
enum Frame {
    Message(Msg),
    /// `subscribe`, `unsubscribe`, `pong` (see `kind_is`).
    Reply(Value),
}

impl PubSubLink {
    /// Connects to `client`'s Redis (over TLS with `tls`, which a `rediss://` URL needs)
    /// and authenticates as its URL says.
    pub(crate) fn open(
        client: &redis::Client,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> RedisResult<PubSubLink> {
        let info = client.get_connection_info();
        let (host, port, tls) = match (info.addr(), tls) {
            (ConnectionAddr::Tcp(host, port), _) => (host, port, None),
            (ConnectionAddr::TcpTls { host, port, .. }, Some(tls)) => (host, port, Some(tls)),
            _ => return Err(invalid("a rediss:// URL without a TLS configuration")),
        };
        let mut last = None;
        let mut stream = None;
        for addr in (host.as_str(), *port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(e.into()),
            (None, None) => return Err(invalid("the Redis host resolved to no address")),
        };
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let stream = match tls {
            None => Transport::Plain(stream),
            Some(config) => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| invalid(&format!("{host:?} is not a TLS server name: {e}")))?;
                let conn = rustls::ClientConnection::new(Arc::clone(config), name)
                    .map_err(|e| invalid(&format!("TLS: {e}")))?;
                let mut tls = rustls::StreamOwned::new(conn, stream);
                // The handshake now, under the connect deadline, so a certificate Redis
                // cannot prove fails here with its reason.
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock)?;
                }
                Transport::Tls(Box::new(tls))
            }
        };
        let mut link = PubSubLink {
            stream,
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
            queued: VecDeque::new(),
            read_timeout: Some(IO_TIMEOUT),
        };
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            link.send(&auth.get_packed_command())?;
            match link.next_value(Instant::now() + IO_TIMEOUT)? {
                Value::Okay => {}
                Value::SimpleString(s) if s == "OK" => {}
                Value::ServerError(e) => return Err(e.into()),
                other => return Err(invalid(&format!("AUTH answered {other:?}"))),
            }
        }
        Ok(link)
    }

    /// Subscribes to `channels` and returns once Redis confirmed each, so a stream loaded
    /// after this cannot miss a message published meanwhile.
    pub(crate) fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        self.command("SUBSCRIBE", b"subscribe", channels)
    }

    /// Unsubscribes from `channels`, once Redis confirmed each.
    pub(crate) fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        self.command("UNSUBSCRIBE", b"unsubscribe", channels)
    }

    /// A round trip: proves a silent link alive.
    pub(crate) fn ping(&mut self) -> RedisResult<()> {
        self.send(&redis::cmd("PING").get_packed_command())?;
        self.await_replies(b"pong", 1)
    }

    /// Writes a command whole (over TLS, out of rustls's buffer too).
    fn send(&mut self, bytes: &[u8]) -> RedisResult<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()?;
        Ok(())
    }

    fn command(&mut self, name: &str, kind: &[u8], channels: &[String]) -> RedisResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd(name);
        cmd.arg(channels);
        self.send(&cmd.get_packed_command())?;
        self.await_replies(kind, channels.len())
    }

    /// Reads until `n` replies of `kind` came, keeping the messages that came first.
    fn await_replies(&mut self, kind: &[u8], mut n: usize) -> RedisResult<()> {
        let deadline = Instant::now() + IO_TIMEOUT;
        while n > 0 {
            match frame(self.next_value(deadline)?)? {
                Frame::Message(m) => self.queued.push_back(m),
                Frame::Reply(v) if kind_is(&v, kind) => n -= 1,
                Frame::Reply(_) => {}
            }
        }
        Ok(())
    }

    /// The next message already read, if any; never waits.
    pub(crate) fn buffered(&mut self) -> RedisResult<Option<Msg>> {
        if let Some(m) = self.queued.pop_front() {
            return Ok(Some(m));
        }
        while let Some(v) = self.take_value()? {
            // Replies of commands already confirmed (none are outstanding here) are not
            // messages: skipped.
            if let Frame::Message(m) = frame(v)? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// Reads what has arrived, without waiting; false if nothing had.
    pub(crate) fn read_now(&mut self) -> RedisResult<bool> {
        if let Transport::Plain(_) = self.stream {
            return self.fill(true);
        }
        // rustls reads through the socket: non-blocking for this one read.
        self.stream.tcp().set_nonblocking(true)?;
        let got = self.fill(false);
        self.stream.tcp().set_nonblocking(false)?;
        got
    }

    /// Waits up to `timeout` for bytes from Redis; false if none came.
    pub(crate) fn read(&mut self, timeout: Duration) -> RedisResult<bool> {
        if self.read_timeout != Some(timeout) {
            self.stream.tcp().set_read_timeout(Some(timeout))?;
            self.read_timeout = Some(timeout);
        }
        self.fill(false)
    }

    /// One read into the buffer (`dontwait`: a plain socket's, without waiting): false on
    /// a timeout, or when nothing was there.
    fn fill(&mut self, dontwait: bool) -> RedisResult<bool> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            if self.buf.len() > READ_BUFFER {
                // A large frame is gone: its room goes back too.
                self.buf.truncate(READ_BUFFER);
                self.buf.shrink_to_fit();
            }
        }
        if self.end == self.buf.len() {
            // Full: move what is left to the front, and grow only if that is all of it
            // (a frame larger than the buffer; `take_value` bounds it).
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let space = &mut self.buf[self.end..];
        let got = match &mut self.stream {
            Transport::Plain(s) if dontwait => recv_dontwait(s, space),
            stream => stream.read(space),
        };
        match got {
            Ok(0) => {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "Redis closed the link").into())
            }
            Ok(n) => {
                self.end += n;
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// The next whole value, reading until `deadline`.
    fn next_value(&mut self, deadline: Instant) -> RedisResult<Value> {
        loop {
            if let Some(v) = self.take_value()? {
                return Ok(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer from Redis").into());
            }
            self.read(left.max(Duration::from_millis(1)))?;
        }
    }

    /// Cuts and decodes the next whole frame in the buffer.
    fn take_value(&mut self) -> RedisResult<Option<Value>> {
        let rest = &self.buf[self.start..self.end];
        let Some(len) = frame_len(rest).map_err(|e| invalid(&e))? else {
            if rest.len() > MAX_FRAME {
                return Err(invalid("a frame from Redis is larger than 16 MiB"));
            }
            return Ok(None);
        };
        let v = redis::parse_redis_value(&rest[..len])?;
        self.start += len;
        Ok(Some(v))
    }
}

/// One `recv(2)` with `MSG_DONTWAIT`: what has arrived, without waiting, and without
/// switching the socket to non-blocking and back (two more system calls per read).
fn recv_dontwait(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes for the whole call, and
    // the descriptor is `s`'s, which outlives the call.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// A message, or the kind of a reply; an error reply is an error.
fn frame(v: Value) -> RedisResult<Frame> {
    if let Value::ServerError(e) = v {
        return Err(redis::RedisError::from(e));
    }
    if kind_is(&v, b"message") || kind_is(&v, b"pmessage") {
        // One without its channel or payload is skipped, as any other reply.
        return Ok(Msg::from_owned_value(v).map_or(Frame::Reply(Value::Nil), Frame::Message));
    }
    Ok(Frame::Reply(v))
}

/// Whether `v` is a subscribed-mode frame of `kind` (its first element, any case),
/// compared in place: a message costs no copy of it.
fn kind_is(v: &Value, kind: &[u8]) -> bool {
    let Value::Array(items) = v else {
        return false;
    };
    matches!(items.first(), Some(Value::BulkString(k)) if k.eq_ignore_ascii_case(kind))
}

fn invalid(what: &str) -> redis::RedisError {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("Redis pub/sub link: {what}"),
    )
    .into()
}

/// The length of the whole RESP2 value at the start of `buf`; `None` while it is still
/// incomplete.
pub(crate) fn frame_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let mut pos = 0;
    // Values still to read: the top one, plus each array's elements as they are met.
    let mut need: u64 = 1;
    while need > 0 {
        let Some(kind) = buf.get(pos).copied() else {
            return Ok(None);
        };
        let Some(eol) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[pos + 1..pos + eol];
        pos += eol + 2;
        need -= 1;
        match kind {
            b'+' | b'-' | b':' => {}
            b'$' => {
                let n = number(line)?;
                if n >= 0 {
                    let n = usize::try_from(n).map_err(|_| "bulk length too large")?;
                    if n > MAX_FRAME {
                        return Err(format!("a bulk string of {n} bytes"));
                    }
                    if buf.len() < pos + n + 2 {
                        return Ok(None);
                    }
                    if &buf[pos + n..pos + n + 2] != b"\r\n" {
                        return Err("a bulk string without its CRLF".into());
                    }
                    pos += n + 2;
                }
            }
            b'*' => {
                let n = number(line)?;
                if n > 0 {
                    need = need
                        .checked_add(n as u64)
                        .filter(|&k| k <= MAX_FRAME as u64)
                        .ok_or("an array too long")?;
                }
            }
            other => return Err(format!("unexpected type byte {other:#04x}")),
        }
    }
    Ok(Some(pos))
}

fn number(line: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad length {:?}", String::from_utf8_lossy(line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"*3\r\n$7\r\nmessage\r\n$9\r\nthrong:b1\r\n$5\r\nhe\r\nl\r\n";

    #[test]
    fn whole_frames_have_their_length_and_every_prefix_is_incomplete() {
        let cases: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":42\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            MESSAGE,
            b"*3\r\n$9\r\nsubscribe\r\n$3\r\nabc\r\n:1\r\n",
            b"*2\r\n*2\r\n:1\r\n:2\r\n$1\r\nx\r\n",
        ];
        for c in cases {
            assert_eq!(
                frame_len(c),
                Ok(Some(c.len())),
                "{:?}",
                String::from_utf8_lossy(c)
            );
            for cut in 0..c.len() {
                assert_eq!(frame_len(&c[..cut]), Ok(None), "{cut} of {c:?}");
            }
            let mut two = c.to_vec();
            two.extend_from_slice(b"+next\r\n");
            assert_eq!(frame_len(&two), Ok(Some(c.len())));
        }
    }

    #[test]
    fn a_payload_may_hold_crlf() {
        // The bulk length decides, not the bytes: "he\r\nl" is one payload.
        let v = redis::parse_redis_value(&MESSAGE[..frame_len(MESSAGE).unwrap().unwrap()]).unwrap();
        let Ok(Frame::Message(m)) = frame(v) else {
            panic!("not a message");
        };
        assert_eq!(m.get_channel_name(), "throng:b1");
        assert_eq!(m.get_payload_bytes(), b"he\r\nl");
    }

    #[test]
    fn broken_frames_are_errors_not_waits() {
        for bad in [
            &b"?x\r\n"[..],
            b"$abc\r\n",
            b"$3\r\nabcde\r\n",
            b"*x\r\n",
            b"$99999999999\r\n",
            b"*99999999999\r\n",
        ] {
            assert!(
                frame_len(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn recv_dontwait_takes_what_arrived_and_never_waits() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut buf = [0u8; 8];
        let e = recv_dontwait(&server, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        client.write_all(b"abc").unwrap();
        // Loopback delivers within the write; a moment's slack for a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(5);
        let next = |buf: &mut [u8]| loop {
            match recv_dontwait(&server, buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                Err(e) => panic!("{e}"),
            }
        };
        let n = next(&mut buf);
        assert_eq!(&buf[..n], b"abc");
        drop(client);
        assert_eq!(next(&mut buf), 0, "EOF reads 0");
    }

    #[test]
    fn replies_and_errors_are_told_apart_from_messages() {
        let sub = redis::parse_redis_value(b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n:1\r\n").unwrap();
        assert!(matches!(frame(sub), Ok(Frame::Reply(v)) if kind_is(&v, b"subscribe")));
        let err = redis::parse_redis_value(b"-NOPERM no\r\n").unwrap();
        assert!(frame(err).is_err());
    }
}
