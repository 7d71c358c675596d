//! permessage-deflate (RFC 7692) helpers for tests/deflate.rs: raw deflate with flate2
//! (sync flush, the `00 00 ff ff` tail dropped, as a client sends it; and back), a raw
//! WebSocket client whose upgrade carries any `Sec-WebSocket-Extensions` offers and that
//! sends hand-made frames with any RSV bits, the deflate counters of `/v1/stats`, and
//! tests/fixtures/deflate_client.py (Python `websockets`, which offers permessage-deflate
//! by default) as a child process.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use serde_json::{json, Value};

use super::{
    encode_frame, find, read_server_frame, tcp, Closed, Frame, TestServer, IO_TIMEOUT, OP_CLOSE,
    OP_PING, OP_PONG, OP_TEXT,
};

/// The server's answer to any valid offer without `server_max_window_bits`.
pub const AGREED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// What Chromium and Firefox offer.
pub const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The mask of every frame these clients send.
pub const MASK: [u8; 4] = [0x3a, 0x91, 0x5c, 0x07];

/// The bits of a frame's first byte.
pub const FIN: u8 = 0x80;
pub const RSV1: u8 = 0x40;
pub const RSV2: u8 = 0x20;
pub const RSV3: u8 = 0x10;

// ---------------------------------------------------------------------------------------
// Deflate

/// The empty stored block a sync flush ends with (RFC 7692 7.2.1).
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// `data` as a permessage-deflate payload: raw deflate at `level`, sync flush, tail dropped.
pub fn compress_level(data: &[u8], level: u32) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    let mut input = data;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(input.len().max(1024));
        }
        let before = c.total_in();
        c.compress_vec(input, &mut out, FlushCompress::Sync)
            .expect("deflate");
        let used = (c.total_in() - before) as usize;
        input = &input[used..];
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
    }
    assert!(out.ends_with(&TAIL), "a sync flush ends with 00 00 ff ff");
    out.truncate(out.len() - TAIL.len());
    out
}

/// `data` as a permessage-deflate payload at the default level.
pub fn compress(data: &[u8]) -> Vec<u8> {
    compress_level(data, 6)
}

/// A permessage-deflate payload inflated (the tail put back); an error names the problem.
pub fn inflate(payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(payload.len() * 4 + 64);
    let mut data = payload.to_vec();
    data.extend_from_slice(&TAIL);
    let mut input = &data[..];
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.len().max(4096));
        }
        let before = d.total_in();
        let status = d
            .decompress_vec(input, &mut out, FlushDecompress::Sync)
            .map_err(|e| format!("inflate: {e}"))?;
        let used = (d.total_in() - before) as usize;
        input = &input[used..];
        if status == Status::StreamEnd {
            // A final block (allowed, RFC 7692 7.2.3.3): the message ends there.
            return Ok(out);
        }
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(out);
        }
        if used == 0 && out.len() < out.capacity() {
            return Err(format!("inflate stalled with {} bytes left", input.len()));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Test data

/// Compressible JSON like an application's (orders), of about `bytes` bytes serialized.
pub fn orders(bytes: usize) -> Value {
    let mut items = Vec::new();
    let mut len = 2;
    let mut i = 0u64;
    const STATUS: [&str; 3] = ["filled", "open", "cancelled"];
    const SYMBOL: [&str; 4] = ["ACME", "INIT", "WIDG", "GADG"];
    while len < bytes {
        let (status, symbol) = (STATUS[(i % 3) as usize], SYMBOL[(i % 4) as usize]);
        let item = json!({
            "id": format!("order-{i:06}"),
            "status": status,
            "symbol": symbol,
            "qty": 100 + (i * 37) % 900,
            "price": format!("{}.{:02}", 10 + i % 90, (i * 13) % 100),
        });
        len += item.to_string().len() + 1;
        items.push(item);
        i += 1;
    }
    Value::Array(items)
}

// ---------------------------------------------------------------------------------------
// Stats

/// The deflate counters of `/v1/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    pub compressions: u64,
    pub sends: u64,
    pub inflated: u64,
}

impl Deflate {
    pub fn of(srv: &TestServer) -> Deflate {
        let s = srv.stats();
        let get = |k: &str| {
            s["counters"][k]
                .as_u64()
                .unwrap_or_else(|| panic!("no counter {k} in /v1/stats: {s}"))
        };
        Deflate {
            compressions: get("deflate_compressions"),
            sends: get("deflated_sends"),
            inflated: get("inflated_messages"),
        }
    }

    /// What rose since `before`.
    pub fn since(self, before: Deflate) -> Deflate {
        Deflate {
            compressions: self.compressions - before.compressions,
            sends: self.sends - before.sends,
            inflated: self.inflated - before.inflated,
        }
    }
}

// ---------------------------------------------------------------------------------------
// A raw client that negotiates (or not) permessage-deflate

/// One server message: its frame as it came, and its text (inflated when RSV1 was set).
#[derive(Debug, Clone)]
pub struct Msg {
    pub frame: Frame,
    pub text: Vec<u8>,
}

impl Msg {
    /// RSV1: the message came compressed.
    pub fn compressed(&self) -> bool {
        self.frame.rsv & 4 != 0
    }

    /// Bytes of payload on the wire.
    pub fn wire_len(&self) -> usize {
        self.frame.payload.len()
    }

    /// The length of the frame the server would have sent plain (header included).
    pub fn plain_frame_len(&self) -> usize {
        let n = self.text.len();
        n + if n < 126 {
            2
        } else if n <= 0xffff {
            4
        } else {
            10
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.text).unwrap_or_else(|e| {
            panic!(
                "message is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.text[..self.text.len().min(300)])
            )
        })
    }
}

/// A raw WebSocket client: a hand-made upgrade with the offers given, then hand-made
/// masked frames with any RSV bits; server messages are inflated when RSV1 is set.
pub struct DeflateWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The head of the 101.
    pub head: String,
    /// The 101's `Sec-WebSocket-Extensions`, if any.
    pub extensions: Option<String>,
    pub welcome: Value,
}

impl DeflateWs {
    /// Upgrades on `path` with one `Sec-WebSocket-Extensions` header per offer, checks the
    /// 101 and reads the welcome.
    pub fn connect(addr: SocketAddr, path: &str, token: &str, offers: &[&str]) -> DeflateWs {
        Self::connect_early(addr, path, token, offers, &[])
    }

    /// Like `connect`, with `early` bytes (frames) written together with the upgrade
    /// request, before the 101.
    pub fn connect_early(
        addr: SocketAddr,
        path: &str,
        token: &str,
        offers: &[&str],
        early: &[u8],
    ) -> DeflateWs {
        let mut stream = tcp(addr);
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n"
        );
        for o in offers {
            req.push_str(&format!("Sec-WebSocket-Extensions: {o}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(early);
        stream.write_all(&bytes).expect("write the upgrade");
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).expect("read the 101");
            assert!(
                n > 0,
                "EOF before the 101: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "expected 101 for offers {offers:?}, got {head:?}"
        );
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        assert!(
            head.contains(&format!("Sec-WebSocket-Accept: {accept}")),
            "bad Sec-WebSocket-Accept in {head:?}"
        );
        let found: Vec<String> = head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("Sec-WebSocket-Extensions"))
            .map(|(_, v)| v.trim().to_string())
            .collect();
        assert!(found.len() <= 1, "several extension headers in {head:?}");
        buf.drain(..head_end);
        let mut ws = DeflateWs {
            stream,
            buf,
            head,
            extensions: found.into_iter().next(),
            welcome: Value::Null,
        };
        let w = ws.read_json();
        assert_eq!(w["type"], "welcome", "first message must be welcome: {w}");
        ws.welcome = w;
        ws
    }

    /// A client offering what browsers offer; asserts the server agreed.
    pub fn offering(srv: &TestServer, user: &str) -> DeflateWs {
        let ws = Self::connect(srv.ws, "/ws", &super::token(user), &[BROWSER_OFFER]);
        assert_eq!(ws.extensions.as_deref(), Some(AGREED), "{}", ws.head);
        ws
    }

    /// A client that offers nothing.
    pub fn plain(srv: &TestServer, user: &str) -> DeflateWs {
        let ws = Self::connect(srv.ws, "/ws", &super::token(user), &[]);
        assert_eq!(ws.extensions, None, "{}", ws.head);
        ws
    }

    /// Whether the 101 agreed to permessage-deflate.
    pub fn negotiated(&self) -> bool {
        self.extensions.is_some()
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.stream.write_all(b).expect("write frame");
    }

    /// Sends one masked frame; `bits` are FIN and RSV bits of the first byte.
    pub fn send_frame(&mut self, bits: u8, opcode: u8, payload: &[u8]) {
        let fin = bits & FIN != 0;
        let rsv = (bits >> 4) & 7;
        let f = encode_frame(fin, rsv, opcode, payload, Some(MASK));
        self.send_raw(&f);
    }

    /// Sends `text` as one compressed text frame (FIN, RSV1).
    pub fn send_compressed(&mut self, text: &str) {
        let z = compress(text.as_bytes());
        self.send_frame(FIN | RSV1, OP_TEXT, &z);
    }

    /// Sends `v` as one plain text frame.
    pub fn send_json(&mut self, v: &Value) {
        self.send_frame(FIN, OP_TEXT, v.to_string().as_bytes());
    }

    /// One server frame; `None` on EOF or reset. Panics after the read timeout.
    pub fn read_frame(&mut self) -> Option<Frame> {
        read_server_frame(&mut self.stream, &mut self.buf)
    }

    /// The next text message (pings and pongs skipped), inflated when it came with RSV1.
    /// Asserts the server's frame rules: FIN, no RSV2/RSV3, RSV1 only when negotiated.
    pub fn read_msg(&mut self) -> Msg {
        loop {
            let f = self
                .read_frame()
                .expect("the connection ended while waiting for a message");
            assert!(f.fin, "the server fragmented a frame: {f:?}");
            assert_eq!(f.rsv & 3, 0, "RSV2/RSV3 from the server: {f:?}");
            match f.opcode {
                OP_TEXT => {
                    let text = if f.rsv & 4 != 0 {
                        assert!(
                            self.negotiated(),
                            "RSV1 on a connection that did not negotiate permessage-deflate"
                        );
                        inflate(&f.payload).unwrap_or_else(|e| {
                            panic!("a compressed frame does not inflate: {e}: {f:?}")
                        })
                    } else {
                        f.payload.clone()
                    };
                    return Msg { frame: f, text };
                }
                OP_PING | OP_PONG => assert_eq!(f.rsv, 0, "a compressed control frame: {f:?}"),
                OP_CLOSE => panic!("closed ({:?}) while waiting for a message", f.close_code()),
                _ => panic!("unexpected frame while waiting for a message: {f:?}"),
            }
        }
    }

    pub fn read_json(&mut self) -> Value {
        self.read_msg().json()
    }

    /// The next message, which must be of `kind`.
    pub fn expect(&mut self, kind: &str) -> Msg {
        let m = self.read_msg();
        let v = m.json();
        assert_eq!(v["type"], kind, "expected {kind}, got {v}");
        m
    }

    /// Reads until a Close frame (its code) or the end of the socket; a Close frame must
    /// not be compressed.
    pub fn read_until_close(&mut self) -> Closed {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no close within {IO_TIMEOUT:?}");
            match self.read_frame() {
                Some(f) if f.opcode == OP_CLOSE => {
                    assert_eq!(f.rsv, 0, "a compressed close frame: {f:?}");
                    return Closed::Code(f.close_code());
                }
                Some(_) => {}
                None => return Closed::Eof,
            }
        }
    }

    /// A JSON ping answered by its pong, nothing before it: the connection is open and
    /// everything queued before was read.
    pub fn barrier(&mut self, r: &str) {
        self.send_json(&json!({"type": "ping", "ref": r}));
        let m = self.read_json();
        assert_eq!(m, json!({"type": "pong", "ref": r}), "expected pong {r}");
    }

    /// Subscribes (plain frame) and reads the `subscribed`.
    pub fn subscribe(&mut self, topic: &str) -> Value {
        self.send_json(&json!({"type": "subscribe", "topic": topic, "ref": topic}));
        let m = self.read_json();
        assert_eq!(m["type"], "subscribed", "{m}");
        assert_eq!(m["topic"], topic, "{m}");
        m
    }

    /// Sends a Close 1000 and reads the echo.
    pub fn close(mut self) {
        self.send_frame(FIN, OP_CLOSE, &1000u16.to_be_bytes());
        assert_eq!(self.read_until_close(), Closed::Code(Some(1000)));
    }
}
