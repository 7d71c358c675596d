//! RFC 6455 framing: decoding client frames in place and encoding server frames once.

use crate::wire::Wire;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Close codes Throng sends (docs/protocol.md 3.2).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Binary data is not accepted.
    pub const UNSUPPORTED: u16 = 1003;
    /// Text that is not UTF-8.
    pub const INVALID_UTF8: u16 = 1007;
    /// Too many refused messages.
    pub const POLICY: u16 = 1008;
    /// Message over `max_message_size`.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// The service restarted: reconnect (a cluster stream's numbering restarted).
    pub const SERVICE_RESTART: u16 = 1012;
    /// Try again later (the cluster's Redis is unavailable).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Token expired while connected.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// No inbound traffic for `idle_timeout`.
    pub const HEARTBEAT_TIMEOUT: u16 = 4002;
    /// Disconnected by the push API.
    pub const DISCONNECTED: u16 = 4003;
    /// Outbound queue exceeded `max_outbound_bytes`.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Too many sessions for the user; this was the oldest.
    pub const TOO_MANY_SESSIONS: u16 = 4009;
    /// No close frame: the connection ended without one (never sent on the wire; used in
    /// `disconnect` events, as RFC 6455 7.1.5 reports it).
    pub const ABNORMAL: u16 = 1006;
    /// The client's close frame had no code (never sent; RFC 6455 7.1.5).
    pub const NO_STATUS: u16 = 1005;
}

/// What a server-initiated close counts as; each cause has one counter (or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The server is shutting down (1001).
    Shutdown,
    /// The client broke the protocol (1002, 1003, 1007, 1008, 1009).
    Protocol,
    /// The token expired while connected (4001).
    TokenExpired,
    /// No inbound traffic for `idle_timeout` (4002).
    Heartbeat,
    /// The push API asked for it (4003 or the code it gave).
    ApiDisconnect,
    /// The connection's own queue passed `max_outbound_bytes` (4008).
    SlowConsumer,
    /// The process passed `max_outbound_total_bytes` and this queue was among the largest
    /// (4008).
    Budget,
    /// A newer session of the same user took its place (4009).
    SessionEvicted,
    /// Cluster mode: Redis could not serve the session's stream (1012, 1013).
    Broker,
}

/// A server-initiated close as a value: the code and reason sent, and what it counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close<'a> {
    /// The close code sent to the client.
    pub code: u16,
    /// The reason sent with it (at most 123 bytes).
    pub reason: &'a str,
    /// What it counts as.
    pub cause: CloseCause,
}

impl Close<'_> {
    /// 1001: the server is shutting down.
    pub const SHUTDOWN: Close<'static> = Close {
        code: close::GOING_AWAY,
        reason: "server shutting down",
        cause: CloseCause::Shutdown,
    };
    /// 1008: more refused client messages in a row than allowed.
    pub const TOO_MANY_REFUSED: Close<'static> = Close {
        code: close::POLICY,
        reason: "too many refused messages",
        cause: CloseCause::Protocol,
    };
    /// 4001: the token expired while connected.
    pub const TOKEN_EXPIRED: Close<'static> = Close {
        code: close::TOKEN_EXPIRED,
        reason: "token expired",
        cause: CloseCause::TokenExpired,
    };
    /// 4002: heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: Close<'static> = Close {
        code: close::HEARTBEAT_TIMEOUT,
        reason: "heartbeat timeout",
        cause: CloseCause::Heartbeat,
    };
    /// 4008: the connection's outbound queue is full.
    pub const SLOW_CONSUMER: Close<'static> = Close {
        code: close::SLOW_CONSUMER,
        reason: "slow consumer: outbound queue full",
        cause: CloseCause::SlowConsumer,
    };
    /// 4008: the process-wide outbound budget is exceeded.
    pub const OVER_BUDGET: Close<'static> = Close {
        code: close::SLOW_CONSUMER,
        reason: "slow consumer: server memory budget exceeded",
        cause: CloseCause::Budget,
    };
    /// 1012, cluster mode: the user's stream restarted numbering under a live session.
    pub const STREAM_RESTARTED: Close<'static> = Close {
        code: close::SERVICE_RESTART,
        reason: "stream restarted in the cluster: reconnect and resume",
        cause: CloseCause::Broker,
    };
    /// Cluster mode: the stream could not be loaded from Redis.
    pub const BROKER_UNAVAILABLE: Close<'static> = Close {
        code: close::TRY_AGAIN_LATER,
        reason: "broker unavailable: try again later",
        cause: CloseCause::Broker,
    };
    /// 4009: too many sessions for this user; this was the oldest.
    pub const SESSION_EVICTED: Close<'static> = Close {
        code: close::TOO_MANY_SESSIONS,
        reason: "too many sessions for this user",
        cause: CloseCause::SessionEvicted,
    };

    /// Whether frames not yet started are dropped first: a slow consumer would never read
    /// them, and they hold memory.
    pub fn discards_queue(&self) -> bool {
        matches!(self.cause, CloseCause::SlowConsumer | CloseCause::Budget)
    }
}

/// Longest server frame header: 2 bytes + 8 bytes of length (no mask).
pub const MAX_HEADER: usize = 10;
/// Longest client frame header: 2 + 8 length + 4 mask.
pub const MAX_CLIENT_HEADER: usize = 14;

/// Why a client frame ends the connection, with its close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Client frames must be masked.
    #[error("client frame not masked")]
    Unmasked,
    /// An RSV bit was set without an extension.
    #[error("reserved bits set")]
    ReservedBits,
    /// Opcode 3-7 or 11-15.
    #[error("reserved opcode")]
    ReservedOpcode,
    /// Control frame fragmented or over 125 bytes.
    #[error("bad control frame")]
    BadControl,
    /// Continuation without a started message, or a new message inside one.
    #[error("bad fragmentation")]
    BadContinuation,
    /// The message would exceed `max_message_size`.
    #[error("message too big")]
    TooBig,
    /// A binary data message.
    #[error("binary messages are not accepted")]
    Binary,
    /// Text or close reason that is not UTF-8.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// A close frame with a bad code or a 1-byte payload.
    #[error("bad close frame")]
    BadClose,
    /// A compressed message that does not inflate.
    #[error("compressed message is not valid deflate data")]
    BadDeflate,
}

impl FrameError {
    /// The close code this error is answered with.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TooBig => close::TOO_BIG,
            FrameError::Binary => close::UNSUPPORTED,
            FrameError::InvalidUtf8 | FrameError::BadDeflate => close::INVALID_UTF8,
            _ => close::PROTOCOL,
        }
    }
}

/// The kind of a decoded client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// First frame of a text message.
    Text,
    /// Continuation of a fragmented message.
    Continue,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

/// A parsed client frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Final fragment.
    pub fin: bool,
    /// What the frame is.
    pub kind: Kind,
    /// Masking key.
    pub mask: [u8; 4],
    /// Header length in bytes.
    pub header_len: usize,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// RSV1 on the first frame of a message: compressed (permessage-deflate).
    pub compressed: bool,
}

impl Head {
    /// Header plus payload.
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Parses a client frame header; `Ok(None)` when more bytes are needed.
///
/// `max_payload` bounds one frame's payload (the message limit); it is checked before
/// the payload arrives, so an oversized frame is refused without being buffered. With
/// `deflate` (negotiated) RSV1 marks a compressed message, allowed on the first frame of
/// a data message only (RFC 7692 6.1); RSV2 and RSV3 are never allowed.
pub fn parse_head(
    buf: &[u8],
    max_payload: usize,
    deflate: bool,
) -> Result<Option<Head>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let compressed = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (compressed && !deflate) {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let kind = match OpCode::from(b0 & 0x0f) {
        OpCode::Data(Data::Text) => Kind::Text,
        OpCode::Data(Data::Continue) => Kind::Continue,
        OpCode::Data(Data::Binary) => return Err(FrameError::Binary),
        OpCode::Control(Control::Close) => Kind::Close,
        OpCode::Control(Control::Ping) => Kind::Ping,
        OpCode::Control(Control::Pong) => Kind::Pong,
        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
            return Err(FrameError::ReservedOpcode)
        }
    };
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let len7 = (b1 & 0x7f) as usize;
    let (payload_len, len_bytes) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 2)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n >> 63 != 0 {
                return Err(FrameError::TooBig);
            }
            (usize::try_from(n).unwrap_or(usize::MAX), 8)
        }
        n => (n, 0),
    };
    let is_control = matches!(kind, Kind::Close | Kind::Ping | Kind::Pong);
    if is_control && (!fin || payload_len > 125) {
        return Err(FrameError::BadControl);
    }
    if compressed && kind != Kind::Text {
        // On a control frame or a continuation RSV1 means nothing: a protocol error.
        return Err(FrameError::ReservedBits);
    }
    if !is_control && payload_len > max_payload {
        return Err(FrameError::TooBig);
    }
    let header_len = 2 + len_bytes + 4;
    if buf.len() < header_len {
        return Ok(None);
    }
    let m = &buf[2 + len_bytes..header_len];
    Ok(Some(Head {
        fin,
        kind,
        mask: [m[0], m[1], m[2], m[3]],
        header_len,
        payload_len,
        compressed,
    }))
}

/// XORs `data` with the masking key, eight bytes at a time.
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the mask phase is still 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Parses a close payload into (code, reason); empty payload means no code.
pub fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::BadClose),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            // The codes an endpoint may send (RFC 6455 7.4 and the IANA registry, as
            // Autobahn checks them): 1004-1006 and 1015 are reserved, 1016-2999 unassigned.
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(FrameError::BadClose);
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Writes a FIN server header for `len` bytes ending exactly at `buf[end]`; returns its start.
pub(crate) fn write_header_before(buf: &mut [u8], end: usize, opcode: u8, len: usize) -> usize {
    let (start, b1) = if len < 126 {
        (end - 2, len as u8)
    } else if len <= u16::MAX as usize {
        buf[end - 2..end].copy_from_slice(&(len as u16).to_be_bytes());
        (end - 4, 126)
    } else {
        buf[end - 8..end].copy_from_slice(&(len as u64).to_be_bytes());
        (end - 10, 127)
    };
    buf[start] = 0x80 | opcode;
    buf[start + 1] = b1;
    start
}

/// Builds frames in a reused per-thread buffer, the payload written after reserved header
/// room; the finished frame is one exact-size allocation (and one copy of its bytes).
pub struct FrameBuilder {
    buf: Vec<u8>,
}

thread_local! {
    /// The buffer frames are built in, reused: a finished frame is copied into an
    /// allocation of exactly its size, so the build buffer's spare room is not retained.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Largest build buffer kept for the next frame (a larger one is freed after use).
const SCRATCH_KEEP: usize = 256 * 1024;

impl FrameBuilder {
    /// Starts a text frame with room for `payload_hint` bytes.
    pub fn text(payload_hint: usize) -> Self {
        let mut buf = SCRATCH.with(std::cell::Cell::take);
        buf.clear();
        buf.reserve(MAX_HEADER + payload_hint);
        buf.resize(MAX_HEADER, 0);
        FrameBuilder { buf }
    }

    /// The payload written so far is everything after the reserved header room.
    pub fn payload(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Finishes the frame.
    pub fn finish(self) -> Wire {
        let mut buf = self.buf;
        let len = buf.len() - MAX_HEADER;
        let start = write_header_before(&mut buf, MAX_HEADER, OP_TEXT, len);
        let frame = Wire::copy_from_slice(&buf[start..]);
        if buf.capacity() <= SCRATCH_KEEP {
            SCRATCH.with(|s| s.set(buf));
        }
        frame
    }
}

fn control(opcode: u8, payload: &[u8]) -> Wire {
    let mut buf = Vec::with_capacity(2 + payload.len());
    buf.push(0x80 | opcode);
    buf.push(payload.len().min(125) as u8);
    buf.extend_from_slice(&payload[..payload.len().min(125)]);
    Wire::from(buf)
}

/// A text frame carrying `payload`.
pub fn text(payload: &[u8]) -> Wire {
    let mut b = FrameBuilder::text(payload.len());
    b.payload().extend_from_slice(payload);
    b.finish()
}

/// A close frame with `code` and a reason cut to fit 125 bytes on a char boundary.
pub fn close_frame(code: u16, reason: &str) -> Wire {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    control(OP_CLOSE, &payload)
}

/// An empty close frame (echo of a close without a code).
pub fn close_empty() -> Wire {
    control(OP_CLOSE, &[])
}

/// A ping frame.
pub fn ping(payload: &[u8]) -> Wire {
    control(OP_PING, payload)
}

/// A pong frame echoing a ping's payload.
pub fn pong(payload: &[u8]) -> Wire {
    control(OP_PONG, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_carry_their_codes_and_only_slow_consumers_discard() {
        let all = [
            (Close::SHUTDOWN, 1001),
            (Close::TOO_MANY_REFUSED, 1008),
            (Close::TOKEN_EXPIRED, 4001),
            (Close::HEARTBEAT_TIMEOUT, 4002),
            (Close::SLOW_CONSUMER, 4008),
            (Close::OVER_BUDGET, 4008),
            (Close::SESSION_EVICTED, 4009),
        ];
        for (c, code) in all {
            assert_eq!(c.code, code, "{c:?}");
            assert!(c.reason.len() <= 123, "{c:?}");
            assert_eq!(c.discards_queue(), code == 4008, "{c:?}");
        }
    }

    fn client_frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut v = vec![b0];
        let m = if mask.is_some() { 0x80 } else { 0 };
        if payload.len() < 126 {
            v.push(m | payload.len() as u8);
        } else if payload.len() <= 65535 {
            v.push(m | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            v.push(m | 127);
            v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        match mask {
            Some(k) => {
                v.extend_from_slice(&k);
                v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => v.extend_from_slice(payload),
        }
        v
    }

    #[test]
    fn decodes_masked_text_of_each_length_form() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut f = client_frame(0x81, &payload, Some([1, 2, 3, 4]));
            // Every prefix short of the header is incomplete, never an error.
            for cut in 0..f.len().min(14) {
                let r = parse_head(&f[..cut], 1 << 20, false).unwrap();
                if let Some(h) = r {
                    assert!(cut >= h.header_len);
                }
            }
            let h = parse_head(&f, 1 << 20, false).unwrap().unwrap();
            assert_eq!(h.kind, Kind::Text);
            assert!(h.fin);
            assert_eq!(h.payload_len, len);
            assert_eq!(h.total_len(), f.len());
            let body = &mut f[h.header_len..];
            unmask(body, h.mask);
            assert_eq!(body, &payload[..]);
        }
    }

    #[test]
    fn refusals_map_to_close_codes() {
        let unmasked = client_frame(0x81, b"hi", None);
        assert_eq!(parse_head(&unmasked, 100, false), Err(FrameError::Unmasked));
        assert_eq!(FrameError::Unmasked.close_code(), 1002);
        let rsv = client_frame(0xC1, b"hi", Some([0; 4]));
        assert_eq!(parse_head(&rsv, 100, false), Err(FrameError::ReservedBits));
        // With permessage-deflate, RSV1 marks the first frame of a compressed message only.
        let head = parse_head(&rsv, 100, true).unwrap().unwrap();
        assert!(head.compressed && head.kind == Kind::Text);
        let first_fragment = client_frame(0x41, b"hi", Some([0; 4]));
        assert!(
            parse_head(&first_fragment, 100, true)
                .unwrap()
                .unwrap()
                .compressed
        );
        for (b0, what) in [
            (0xC0, "a continuation"),
            (0xC9, "a ping"),
            (0xCA, "a pong"),
            (0xC8, "a close"),
            (0xA1, "RSV2"),
            (0x91, "RSV3"),
        ] {
            let f = client_frame(b0, b"hi", Some([0; 4]));
            assert_eq!(
                parse_head(&f, 100, true),
                Err(FrameError::ReservedBits),
                "{what}"
            );
            assert_eq!(FrameError::ReservedBits.close_code(), 1002);
        }
        let reserved_op = client_frame(0x83, b"hi", Some([0; 4]));
        assert_eq!(
            parse_head(&reserved_op, 100, false),
            Err(FrameError::ReservedOpcode)
        );
        let reserved_ctl = client_frame(0x8B, b"", Some([0; 4]));
        assert_eq!(
            parse_head(&reserved_ctl, 100, false),
            Err(FrameError::ReservedOpcode)
        );
        let binary = client_frame(0x82, b"hi", Some([0; 4]));
        assert_eq!(parse_head(&binary, 100, false), Err(FrameError::Binary));
        assert_eq!(FrameError::Binary.close_code(), 1003);
        let big = client_frame(0x81, &[b'a'; 200], Some([0; 4]));
        assert_eq!(parse_head(&big, 100, false), Err(FrameError::TooBig));
        assert_eq!(FrameError::TooBig.close_code(), 1009);
        let frag_ping = client_frame(0x09, b"", Some([0; 4]));
        assert_eq!(
            parse_head(&frag_ping, 100, false),
            Err(FrameError::BadControl)
        );
        let long_ping = client_frame(0x89, &[0; 126], Some([0; 4]));
        assert_eq!(
            parse_head(&long_ping, 1000, false),
            Err(FrameError::BadControl)
        );
    }

    #[test]
    fn unmask_matches_bytewise() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn server_frames() {
        let f = text(b"hello");
        assert_eq!(&f[..], b"\x81\x05hello");
        let long = text(&[b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(long.len(), 304);
        let huge = text(&vec![b'x'; 70_000]);
        assert_eq!(huge[1], 127);
        assert_eq!(&huge[2..10], &70_000u64.to_be_bytes());
        assert_eq!(&close_frame(4002, "idle")[..], b"\x88\x06\x0f\xa2idle");
        assert_eq!(&pong(b"p")[..], b"\x8a\x01p");
        let long_reason = "é".repeat(100);
        let c = close_frame(1000, &long_reason);
        assert!(c.len() <= 127);
        assert!(std::str::from_utf8(&c[4..]).is_ok());
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close(b""), Ok(None));
        assert_eq!(parse_close(b"\x03"), Err(FrameError::BadClose));
        assert_eq!(parse_close(b"\x03\xe8bye"), Ok(Some((1000, "bye"))));
        assert_eq!(parse_close(b"\x03\xed"), Err(FrameError::BadClose)); // 1005
        assert_eq!(parse_close(b"\x00\x10"), Err(FrameError::BadClose));
        assert_eq!(parse_close(b"\x0f\xa0"), Ok(Some((4000, ""))));
        assert_eq!(parse_close(b"\x03\xe8\xff"), Err(FrameError::InvalidUtf8));
        // Every code an endpoint may send, and none of the others.
        for code in 0..=u16::MAX {
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            let payload = code.to_be_bytes();
            assert_eq!(parse_close(&payload).is_ok(), valid, "{code}");
        }
    }
}
