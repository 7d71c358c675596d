//! Compressing a server frame into a permessage-deflate frame, and inflating a client's
//! compressed message under a bound. Each thread that needs one owns one of each and
//! resets it per message (no context takeover), so nothing is kept per connection.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::frame::{self, FrameError, MAX_HEADER};
use crate::wire::Wire;

/// What a sync flush ends with; RFC 7692 7.2.1 has the sender drop it and the receiver
/// put it back.
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];
/// The bit that marks a compressed message (RFC 7692 6).
const RSV1: u8 = 0x40;
/// Inflated bytes produced per step, so a small message never reserves the whole bound.
const STEP: usize = 16 * 1024;

/// Compresses frames; one per thread that sends pushes.
pub struct Deflater {
    c: Compress,
    out: Vec<u8>,
}

/// The default level: zlib-rs's fastest, about a third of the size for typical JSON at
/// a third of the CPU of level 2 (`cargo bench --bench deflate`).
pub const DEFAULT_LEVEL: u32 = 1;

impl Default for Deflater {
    fn default() -> Self {
        Deflater::new(DEFAULT_LEVEL)
    }
}

impl Deflater {
    /// A compressor at `level` (1 fastest to 9 smallest; clamped to that range).
    pub fn new(level: u32) -> Deflater {
        Deflater {
            c: Compress::new(Compression::new(level.clamp(1, 9)), false),
            out: Vec::new(),
        }
    }

    /// `frame` (an unfragmented server text or binary frame) as a compressed frame with
    /// RSV1 set; `None` for a control frame, or when compression would not make it
    /// smaller.
    pub fn frame(&mut self, frame: &[u8]) -> Option<Wire> {
        let (&b0, &b1) = (frame.first()?, frame.get(1)?);
        let opcode = b0 & 0x0f;
        if b0 & 0xf0 != 0x80 || !matches!(opcode, 1 | 2) || b1 & 0x80 != 0 {
            return None;
        }
        let offset = match b1 & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let payload = frame.get(offset..)?;
        // Room for the largest header before the compressed bytes, written once they
        // are known.
        self.out.clear();
        self.out.resize(MAX_HEADER, 0);
        self.compress(payload)?;
        let body = self.out.len() - MAX_HEADER - TAIL.len();
        let start = frame::write_header_before(&mut self.out, MAX_HEADER, opcode, body);
        self.out[start] |= RSV1;
        let end = MAX_HEADER + body;
        if end - start >= frame.len() {
            return None;
        }
        let wire = Wire::copy_from_slice(&self.out[start..end]);
        if self.out.capacity() > 4 * STEP {
            // A large push grew it: do not keep that much for the next small one.
            self.out = Vec::new();
        }
        Some(wire)
    }

    /// Raw deflate of `input` appended to `out`, ending with a sync flush's empty block.
    fn compress(&mut self, mut input: &[u8]) -> Option<()> {
        self.c.reset();
        self.out.reserve(input.len() / 2 + 64);
        loop {
            if self.out.capacity() - self.out.len() < 64 {
                self.out.reserve(input.len().max(64));
            }
            let before = self.c.total_in();
            self.c
                .compress_vec(input, &mut self.out, FlushCompress::Sync)
                .ok()?;
            let used = usize::try_from(self.c.total_in() - before).ok()?;
            input = &input[used..];
            // The flush is complete when the input is used and the output had room left.
            if input.is_empty() && self.out.len() < self.out.capacity() {
                break;
            }
        }
        self.out.ends_with(&TAIL).then_some(())
    }
}

/// Inflates client messages; one per shard.
pub struct Inflater {
    d: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

impl Inflater {
    /// An inflater for raw deflate with the largest window (which reads any smaller one).
    pub fn new() -> Inflater {
        Inflater {
            d: Decompress::new(false),
        }
    }

    /// Inflates one message's payload into `out` (cleared first). More than `max` bytes
    /// inflated is `TooBig`, found after at most `max` + 16 KiB were produced, however
    /// small the input; data that is not deflate is `BadDeflate`.
    pub fn message(
        &mut self,
        payload: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        self.d.reset(false);
        out.clear();
        for mut input in [payload, &TAIL[..]] {
            loop {
                if out.len() > max {
                    return Err(FrameError::TooBig);
                }
                if out.capacity() == out.len() {
                    out.reserve_exact(STEP.min(max + 1 - out.len()).max(1));
                }
                let (in0, out0) = (self.d.total_in(), out.len());
                let status = self
                    .d
                    .decompress_vec(input, out, FlushDecompress::Sync)
                    .map_err(|_| FrameError::BadDeflate)?;
                let used = usize::try_from(self.d.total_in() - in0).unwrap_or(input.len());
                input = &input[used.min(input.len())..];
                if status == Status::StreamEnd {
                    break;
                }
                // Done with this input once it is used and the output was not the limit.
                if input.is_empty() && out.len() < out.capacity() {
                    break;
                }
                if used == 0 && out.len() == out0 && out.len() < out.capacity() {
                    break;
                }
            }
        }
        if out.len() > max {
            return Err(FrameError::TooBig);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    /// The payload of an unmasked server frame.
    fn payload(f: &[u8]) -> &[u8] {
        match f[1] & 0x7f {
            126 => &f[4..],
            127 => &f[10..],
            _ => &f[2..],
        }
    }

    fn json(n: usize) -> String {
        let items: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"id":{i},"status":"filled","symbol":"ACME","qty":100}}"#))
            .collect();
        format!("[{}]", items.join(","))
    }

    #[test]
    fn frames_round_trip_and_shrink() {
        let mut d = Deflater::default();
        let mut i = Inflater::new();
        for n in [5, 40, 2000] {
            let text = json(n);
            let plain = frame::text(text.as_bytes());
            let z = d.frame(&plain).expect("compressible");
            assert!(z.len() < plain.len() / 2, "{} of {}", z.len(), plain.len());
            assert_eq!(z[0], 0xc1, "FIN, RSV1, text");
            let mut out = Vec::new();
            i.message(payload(&z), 1 << 20, &mut out).expect("inflate");
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn control_frames_and_incompressible_data_stay_plain() {
        let mut d = Deflater::default();
        assert!(d.frame(&frame::pong(b"x")).is_none());
        assert!(d.frame(&frame::close_frame(1000, "")).is_none());
        assert!(d.frame(&frame::text(b"hi")).is_none(), "would not shrink");
        assert!(d.frame(&[]).is_none());
    }

    #[test]
    fn a_zip_bomb_is_stopped_at_the_bound() {
        let zeros = vec![b' '; 10 << 20];
        // The smallest level packs 10 MiB into about 10 KiB.
        let mut d = Deflater::new(9);
        let z = d.frame(&frame::text(&zeros)).expect("compressible");
        assert!(z.len() < 64 * 1024, "{}", z.len());
        let mut i = Inflater::new();
        let mut out = Vec::new();
        let e = i.message(payload(&z), 65536, &mut out);
        assert_eq!(e, Err(FrameError::TooBig));
        assert!(out.capacity() <= 65536 + STEP, "{}", out.capacity());
        // The inflater is fine for the next message.
        let small = d.frame(&frame::text(json(10).as_bytes())).expect("z");
        i.message(payload(&small), 65536, &mut out)
            .expect("inflate");
        assert_eq!(out, json(10).as_bytes());
    }

    #[test]
    fn garbage_is_bad_deflate() {
        let mut i = Inflater::new();
        let mut out = Vec::new();
        assert_eq!(
            i.message(&[0xff, 0xff, 0xff, 0xff, 0x12], 1000, &mut out),
            Err(FrameError::BadDeflate)
        );
    }
}
