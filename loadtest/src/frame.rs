//! Client side of RFC 6455 framing: masked encoding, unmasked decoding.

use thiserror::Error;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest frame payload the client accepts from the server; also the largest message,
/// reassembled or inflated.
pub const MAX_FRAME: u64 = 16 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("reserved bits RSV2/RSV3 set")]
    ReservedBits,
    #[error("RSV1 set without a negotiated permessage-deflate")]
    Rsv1NotNegotiated,
    #[error("RSV1 set on a control frame")]
    Rsv1OnControl,
    #[error("RSV1 set on a continuation frame")]
    Rsv1OnContinuation,
    #[error("reserved opcode {0:#x}")]
    BadOpcode(u8),
    #[error("server frame is masked")]
    Masked,
    #[error("control frame too long or fragmented")]
    BadControl,
    #[error("frame of {0} bytes is too large")]
    TooLarge(u64),
}

/// One decoded server frame, borrowing its payload from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    /// RSV1: a compressed message (permessage-deflate), on its first frame only.
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: &'a [u8],
}

/// Appends one masked client frame (FIN set) to `out`.
pub fn encode_masked(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | (opcode & 0x0f));
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// XORs `data` with the 4-byte mask (its own inverse).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Close frame payload: 2-byte code plus an optional reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(reason.as_bytes());
    p
}

/// The code of a Close payload; 1005 (no status) when it has none.
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

/// Decodes one server-to-client frame from the front of `buf`; `deflate` says whether
/// permessage-deflate was negotiated (RSV1 may then start a data message).
/// `Ok(None)` means more bytes are needed; `Ok(Some((frame, used)))` consumed `used` bytes.
pub fn decode(buf: &[u8], deflate: bool) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x30 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let rsv1 = b0 & 0x40 != 0;
    let opcode = b0 & 0x0f;
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        other => return Err(FrameError::BadOpcode(other)),
    }
    if rsv1 {
        if !deflate {
            return Err(FrameError::Rsv1NotNegotiated);
        }
        if opcode >= OP_CLOSE {
            return Err(FrameError::Rsv1OnControl);
        }
        if opcode == OP_CONT {
            return Err(FrameError::Rsv1OnContinuation);
        }
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let (len, hdr) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n as u64, 2),
    };
    if opcode >= OP_CLOSE && (len > 125 || !fin) {
        return Err(FrameError::BadControl);
    }
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let total = hdr + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            fin,
            rsv1,
            opcode,
            payload: &buf[hdr..total],
        },
        total,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a masked (client) frame the way a server would, for round trips.
    fn server_side_decode(buf: &[u8]) -> (u8, Vec<u8>, usize) {
        assert!(buf[0] & 0x80 != 0, "FIN");
        assert!(buf[1] & 0x80 != 0, "client frames must be masked");
        let (len, mut pos) = match buf[1] & 0x7f {
            126 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let mask: [u8; 4] = buf[pos..pos + 4].try_into().unwrap();
        pos += 4;
        let mut p = buf[pos..pos + len].to_vec();
        apply_mask(&mut p, mask);
        (buf[0] & 0x0f, p, pos + len)
    }

    #[test]
    fn masked_roundtrip_all_length_forms() {
        for len in [0usize, 1, 125, 126, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut out = Vec::new();
            encode_masked(&mut out, OP_TEXT, &payload, [0x12, 0x34, 0x56, 0x78]);
            let (op, p, used) = server_side_decode(&out);
            assert_eq!(op, OP_TEXT);
            assert_eq!(p, payload);
            assert_eq!(used, out.len());
        }
    }

    #[test]
    fn masking_changes_bytes_and_is_reversible() {
        let mut out = Vec::new();
        encode_masked(&mut out, OP_PONG, b"abcd", [1, 2, 3, 4]);
        assert_eq!(&out[..2], &[0x8A, 0x84]);
        assert_eq!(&out[2..6], &[1, 2, 3, 4]);
        assert_eq!(&out[6..], &[b'a' ^ 1, b'b' ^ 2, b'c' ^ 3, b'd' ^ 4]);
        // rfc 6455 5.7 example: "Hello" masked with 37 fa 21 3d
        let mut out = Vec::new();
        encode_masked(&mut out, OP_TEXT, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn decode_unmasked_server_frames() {
        // rfc 6455 5.7: single-frame unmasked text "Hello"
        let buf = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0xff];
        let (f, used) = decode(&buf, false).unwrap().unwrap();
        assert_eq!(used, 7);
        assert!(f.fin);
        assert_eq!(f.opcode, OP_TEXT);
        assert_eq!(f.payload, b"Hello");
        // fragmented: "Hel" + "lo"
        let buf = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        let (f, used) = decode(&buf, false).unwrap().unwrap();
        assert!(!f.fin);
        assert_eq!(f.payload, b"Hel");
        let (f2, _) = decode(&buf[used..], false).unwrap().unwrap();
        assert!(f2.fin);
        assert_eq!(f2.opcode, OP_CONT);
        assert_eq!(f2.payload, b"lo");
        // 16-bit and 64-bit lengths
        let mut buf = vec![0x82, 126, 0x01, 0x00];
        buf.extend(vec![9u8; 256]);
        let (f, used) = decode(&buf, false).unwrap().unwrap();
        assert_eq!((f.payload.len(), used), (256, 260));
        let mut buf = vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        buf.extend(vec![9u8; 65536]);
        let (f, _) = decode(&buf, false).unwrap().unwrap();
        assert_eq!(f.payload.len(), 65536);
    }

    #[test]
    fn decode_incomplete_and_errors() {
        assert_eq!(decode(&[], false), Ok(None));
        assert_eq!(decode(&[0x81], false), Ok(None));
        assert_eq!(decode(&[0x81, 0x05, b'H'], false), Ok(None));
        assert_eq!(decode(&[0x82, 126, 0x01], false), Ok(None));
        assert_eq!(decode(&[0xA1, 0x00], true), Err(FrameError::ReservedBits));
        assert_eq!(decode(&[0x91, 0x00], true), Err(FrameError::ReservedBits));
        assert_eq!(decode(&[0x83, 0x00], false), Err(FrameError::BadOpcode(3)));
        assert_eq!(
            decode(&[0x81, 0x81, 0, 0, 0, 0, 0], false),
            Err(FrameError::Masked)
        );
        assert_eq!(decode(&[0x09, 0x00], false), Err(FrameError::BadControl));
        assert_eq!(
            decode(&[0x89, 126, 0, 200], false),
            Err(FrameError::BadControl)
        );
        let mut big = vec![0x82, 127];
        big.extend_from_slice(&(MAX_FRAME + 1).to_be_bytes());
        assert_eq!(
            decode(&big, false),
            Err(FrameError::TooLarge(MAX_FRAME + 1))
        );
    }

    #[test]
    fn rsv1_only_starts_a_data_message_when_negotiated() {
        // A compressed text message: RSV1 on the (first) data frame.
        let (f, used) = decode(&[0xC1, 0x02, 0xab, 0xcd], true).unwrap().unwrap();
        assert!(f.rsv1 && f.fin && f.opcode == OP_TEXT && used == 4);
        let (f, _) = decode(&[0x42, 0x00], true).unwrap().unwrap();
        assert!(f.rsv1 && !f.fin && f.opcode == OP_BINARY);
        let (f, _) = decode(&[0x81, 0x00], true).unwrap().unwrap();
        assert!(!f.rsv1);
        assert_eq!(
            decode(&[0xC1, 0x00], false),
            Err(FrameError::Rsv1NotNegotiated)
        );
        assert_eq!(decode(&[0xC9, 0x00], true), Err(FrameError::Rsv1OnControl));
        assert_eq!(decode(&[0xC8, 0x00], true), Err(FrameError::Rsv1OnControl));
        assert_eq!(
            decode(&[0xC0, 0x00], true),
            Err(FrameError::Rsv1OnContinuation)
        );
        assert!(FrameError::Rsv1NotNegotiated
            .to_string()
            .contains("without a negotiated permessage-deflate"));
    }

    #[test]
    fn close_payload_and_code() {
        let p = close_payload(4009, "bye");
        assert_eq!(close_code(&p), 4009);
        assert_eq!(&p[2..], b"bye");
        assert_eq!(close_code(&[]), 1005);
    }
}
