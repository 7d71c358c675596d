//! Inflating the server's compressed messages: one [`Inflater`] per event loop, reset per
//! message (the server keeps no context between messages), bounded in what it produces.

use flate2::{Decompress, FlushDecompress, Status};
use thiserror::Error;

/// What a sync flush ends with; the sender drops it and the receiver puts it back
/// (RFC 7692 7.2.2).
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];
/// The least the output grows by at a time.
const STEP: usize = 16 * 1024;
/// Output kept between messages; a larger one (after a large message) is let go.
const KEEP: usize = 1 << 20;

/// Why a compressed message could not be inflated.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InflateError {
    #[error("compressed message inflates past {0} bytes")]
    TooBig(usize),
    #[error("compressed message is not valid deflate data")]
    Bad,
}

impl InflateError {
    /// The close code the client answers it with (1009 too big, 1007 bad data).
    pub fn close_code(&self) -> u16 {
        match self {
            InflateError::TooBig(_) => 1009,
            InflateError::Bad => 1007,
        }
    }
}

/// Inflates raw deflate messages; its output buffer is reused from message to message.
pub struct Inflater {
    d: Decompress,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

impl Inflater {
    /// Raw deflate (no zlib header) with the largest window, which reads any smaller one.
    pub fn new() -> Inflater {
        Inflater {
            d: Decompress::new(false),
            out: Vec::new(),
        }
    }

    /// Inflates one message's payload (as received, without the 00 00 ff ff tail). More
    /// than `max` bytes is `TooBig`, found before the output passes `max` + 1 bytes,
    /// however small the input (a zip bomb costs at most that); data that is not deflate
    /// is `Bad`. The inflater is ready for the next message either way.
    pub fn message(&mut self, payload: &[u8], max: usize) -> Result<&[u8], InflateError> {
        self.d.reset(false);
        if self.out.capacity() > KEEP {
            self.out = Vec::new();
        }
        self.out.clear();
        'inputs: for mut input in [payload, &TAIL[..]] {
            loop {
                if self.out.len() > max {
                    return Err(InflateError::TooBig(max));
                }
                if self.out.len() == self.out.capacity() {
                    // Doubling, but never past max + 1: the bound is on memory too.
                    let grow =
                        (self.out.capacity().max(STEP)).min(max.saturating_add(1) - self.out.len());
                    self.out.reserve_exact(grow.max(1));
                }
                let (in0, out0) = (self.d.total_in(), self.out.len());
                let status = self
                    .d
                    .decompress_vec(input, &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Bad)?;
                let used = usize::try_from(self.d.total_in() - in0).unwrap_or(input.len());
                input = &input[used.min(input.len())..];
                if status == Status::StreamEnd {
                    // A final block ends the message (RFC 7692 7.2.3.2): nothing follows.
                    break 'inputs;
                }
                let room_left = self.out.len() < self.out.capacity();
                if input.is_empty() && room_left {
                    break;
                }
                if used == 0 && self.out.len() == out0 && room_left {
                    // No progress with room to spare: the data ends mid-block.
                    break;
                }
            }
        }
        if self.out.len() > max {
            return Err(InflateError::TooBig(max));
        }
        Ok(&self.out)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// What the server sends for `data`: raw deflate, sync flush, the tail dropped.
    pub fn deflate(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(3), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        loop {
            let before = c.total_in() as usize;
            c.compress_vec(&data[before..], &mut out, FlushCompress::Sync)
                .unwrap();
            if c.total_in() as usize == data.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - TAIL.len());
        out
    }

    fn json(n: usize) -> Vec<u8> {
        let items: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"id":{i},"status":"filled","qty":{}}}"#, i * 7 % 13))
            .collect();
        format!("[{}]", items.join(",")).into_bytes()
    }

    #[test]
    fn messages_round_trip_one_by_one() {
        let mut i = Inflater::new();
        for n in [0, 1, 30, 5000] {
            let text = json(n);
            let z = deflate(&text);
            assert_eq!(i.message(&z, 16 << 20).unwrap(), &text[..], "{n}");
        }
        // The same inflater, reset per message: an earlier one's window is not needed.
        let z = deflate(&json(30));
        assert_eq!(i.message(&z, 1 << 20).unwrap(), &json(30)[..]);
        assert_eq!(i.message(&z, 1 << 20).unwrap(), &json(30)[..]);
        // An empty compressed message (just the empty stored block) is empty.
        assert_eq!(i.message(&[0x00], 10).unwrap(), b"");
    }

    #[test]
    fn a_final_block_ends_the_message() {
        // Raw deflate with BFINAL set (a plain finish, as RFC 7692 7.2.3.2 allows).
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(4096);
        c.compress_vec(&json(20), &mut out, FlushCompress::Finish)
            .unwrap();
        let mut i = Inflater::new();
        assert_eq!(i.message(&out, 1 << 20).unwrap(), &json(20)[..]);
    }

    #[test]
    fn a_zip_bomb_stops_at_the_bound() {
        let spaces = vec![b' '; 8 << 20];
        let z = deflate(&spaces);
        assert!(z.len() < 64 * 1024, "{}", z.len());
        let mut i = Inflater::new();
        let max = 100_000;
        assert_eq!(i.message(&z, max), Err(InflateError::TooBig(max)));
        assert!(i.out.capacity() <= max + 1, "{}", i.out.capacity());
        // Exactly at the bound is fine.
        let z = deflate(&spaces[..max]);
        assert_eq!(i.message(&z, max).unwrap().len(), max);
        // And the inflater is fine for the next message.
        let z = deflate(&json(10));
        assert_eq!(i.message(&z, max).unwrap(), &json(10)[..]);
    }

    #[test]
    fn garbage_is_bad_and_the_inflater_recovers() {
        let mut i = Inflater::new();
        assert_eq!(
            i.message(&[0xff, 0xff, 0xff, 0xff, 0x12], 1000),
            Err(InflateError::Bad)
        );
        assert_eq!(InflateError::Bad.close_code(), 1007);
        assert_eq!(InflateError::TooBig(1).close_code(), 1009);
        let z = deflate(b"hello hello hello");
        assert_eq!(i.message(&z, 1000).unwrap(), b"hello hello hello");
    }

    #[test]
    fn a_large_output_is_not_kept() {
        let mut i = Inflater::new();
        let big = json(100_000);
        assert!(big.len() > KEEP);
        assert_eq!(
            i.message(&deflate(&big), 16 << 20).unwrap().len(),
            big.len()
        );
        assert_eq!(i.message(&deflate(b"x"), 16).unwrap(), b"x");
        assert!(i.out.capacity() <= KEEP, "{}", i.out.capacity());
    }
}
