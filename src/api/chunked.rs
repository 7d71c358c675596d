//! Chunked request bodies (RFC 9112 section 7.1) on the push API. The body's end is not
//! known before it arrives, so a scan walks it as it comes and resumes where it stopped:
//! a body that arrives in many reads is walked once, chunk data is skipped, not read,
//! and a size line or trailer is looked at again only once a new line ending arrived.
//! When the scan finds the end, `decode` copies the data out in one allocation.

use crate::config::MAX_API_BODY_BYTES;

use super::request::{FrameError, MAX_HEADERS};

/// Most bytes of chunk framing (size lines, extensions, line ends, trailers) one body may
/// carry besides its data: a body sent as many tiny chunks is refused rather than walked
/// for ever.
pub const MAX_CHUNK_FRAMING: usize = 64 * 1024;

/// Where the scan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, `left` bytes of it still to come.
    Data { left: usize },
    /// At the line end after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    /// The request ends at this offset.
    Done(usize),
}

/// What a scan found in the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// The body is whole; the request ends at `end`.
    Done {
        /// Offset of the first byte after the request.
        end: usize,
    },
    /// More bytes are needed; nothing can complete before the buffer holds `need`.
    More {
        /// The least buffer length at which the scan can move on.
        need: usize,
    },
}

/// A chunked body being scanned; offsets count from the start of the request's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkScan {
    /// Offset of the next byte to look at.
    pos: usize,
    phase: Phase,
    /// Data bytes seen so far.
    data: usize,
    /// Framing bytes seen so far.
    framing: usize,
    /// Buffer length at the last incomplete line: it is parsed again only once a line
    /// end arrives after this.
    looked: usize,
    /// The error the scan stopped at: asked again, it answers the same.
    failed: Option<FrameError>,
}

impl ChunkScan {
    /// A scan of the body that starts at `start` (just after the request head).
    pub fn new(start: usize) -> ChunkScan {
        ChunkScan {
            pos: start,
            phase: Phase::Size,
            data: 0,
            framing: 0,
            looked: start,
            failed: None,
        }
    }

    /// Walks what `buf` (the request from its first byte) holds past where the scan
    /// stopped. The same bytes give the same answer however they were split, except that
    /// a bad size line or trailer may be found only once its line ends.
    pub fn advance(&mut self, buf: &[u8]) -> Result<Scanned, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let scanned = self.walk(buf, None);
        if let Err(e) = &scanned {
            self.failed = Some(e.clone());
        }
        scanned
    }

    fn walk(&mut self, buf: &[u8], mut out: Option<&mut Vec<u8>>) -> Result<Scanned, FrameError> {
        loop {
            match self.phase {
                Phase::Done(end) => return Ok(Scanned::Done { end }),
                Phase::Size => {
                    let Some(rest) = self.unparsed(buf, true) else {
                        return Ok(self.more(buf.len() + 1));
                    };
                    // httparse takes an empty size as 0: the RFC wants one hex digit.
                    if !rest[0].is_ascii_hexdigit() {
                        return Err(FrameError::BadChunk("a chunk size must be hexadecimal"));
                    }
                    let (n, size) = match httparse::parse_chunk_size(rest) {
                        Ok(httparse::Status::Complete(found)) => found,
                        Ok(httparse::Status::Partial) => return self.partial(buf, rest),
                        Err(_) => return Err(FrameError::BadChunk("invalid chunk-size line")),
                    };
                    // `n` counts the line's CRLF.
                    size_line_grammar(&rest[..n.saturating_sub(2)])?;
                    self.frame(n)?;
                    let size = usize::try_from(size)
                        .ok()
                        .filter(|&s| s <= MAX_API_BODY_BYTES - self.data)
                        .ok_or(FrameError::BodyTooLarge)?;
                    self.data += size;
                    self.phase = if size == 0 {
                        Phase::Trailers
                    } else {
                        Phase::Data { left: size }
                    };
                    self.looked = self.pos;
                }
                Phase::Data { left } => {
                    let here = (buf.len() - self.pos).min(left);
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(&buf[self.pos..self.pos + here]);
                    }
                    self.pos += here;
                    if here < left {
                        self.phase = Phase::Data { left: left - here };
                        // Its data, then the two bytes of its line end.
                        return Ok(Scanned::More {
                            need: self.pos + (left - here) + 2,
                        });
                    }
                    self.phase = Phase::DataEnd;
                }
                Phase::DataEnd => {
                    let rest = &buf[self.pos..];
                    if !b"\r\n".starts_with(&rest[..rest.len().min(2)]) {
                        return Err(FrameError::BadChunk(
                            "chunk data must be followed by CRLF (is the chunk size right?)",
                        ));
                    }
                    if rest.len() < 2 {
                        return Ok(Scanned::More { need: self.pos + 2 });
                    }
                    self.frame(2)?;
                    self.phase = Phase::Size;
                    self.looked = self.pos;
                }
                Phase::Trailers => {
                    let Some(rest) = self.unparsed(buf, false) else {
                        return Ok(self.more(buf.len() + 1));
                    };
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(rest, &mut fields) {
                        Ok(httparse::Status::Complete((n, _))) => {
                            if has_bare_lf(&rest[..n]) {
                                return Err(FrameError::BadChunk(
                                    "trailer lines must end with CRLF, not a bare LF",
                                ));
                            }
                            self.frame(n)?;
                            self.phase = Phase::Done(self.pos);
                        }
                        Ok(httparse::Status::Partial) => return self.partial(buf, rest),
                        Err(httparse::Error::TooManyHeaders) => {
                            return Err(FrameError::TooManyTrailers)
                        }
                        Err(e) => return Err(FrameError::Malformed(e)),
                    }
                }
            }
        }
    }

    /// The rest of the buffer from the scan's position when it is worth parsing: on the
    /// first look at a line, once a line end (CRLF, or LF when `crlf` is false) arrived
    /// since the last look, or once the bytes would pass the framing bound (the parse
    /// then tells a bad line from a long one). None when nothing new can be parsed.
    fn unparsed<'b>(&mut self, buf: &'b [u8], crlf: bool) -> Option<&'b [u8]> {
        let rest = &buf[self.pos..];
        if rest.is_empty() {
            return None;
        }
        // One byte back: a CR at the end of what was looked at, its LF new.
        let fresh = &buf[self.looked.max(self.pos + 1) - 1..];
        let ended = if crlf {
            fresh.windows(2).any(|w| w == b"\r\n")
        } else {
            fresh.contains(&b'\n')
        };
        if ended || self.looked <= self.pos || self.over(rest.len()) {
            return Some(rest);
        }
        self.looked = buf.len();
        None
    }

    /// A line (or the trailers) parsed and not whole yet: wait for more, unless what is
    /// held of it already passes the framing bound.
    fn partial(&mut self, buf: &[u8], rest: &[u8]) -> Result<Scanned, FrameError> {
        if self.over(rest.len()) {
            return Err(FrameError::ChunkFramingTooLarge);
        }
        self.looked = buf.len();
        Ok(self.more(buf.len() + 1))
    }

    /// Whether `n` more framing bytes would pass the bound.
    fn over(&self, n: usize) -> bool {
        self.framing + n > MAX_CHUNK_FRAMING
    }

    /// Counts `n` framing bytes at the scan's position and moves past them.
    fn frame(&mut self, n: usize) -> Result<(), FrameError> {
        self.framing += n;
        self.pos += n;
        if self.framing > MAX_CHUNK_FRAMING {
            return Err(FrameError::ChunkFramingTooLarge);
        }
        Ok(())
    }

    fn more(&self, need: usize) -> Scanned {
        Scanned::More { need }
    }

    /// Data bytes seen so far.
    pub fn data_len(&self) -> usize {
        self.data
    }
}

/// Refuses what httparse takes in a chunk-size line (`line`, without its CRLF) and RFC
/// 9112 7.1.1 does not: a bare LF, CR or other control byte (HTAB aside) in an extension,
/// and whitespace after the size with no extension behind it. httparse ends the line only
/// at CRLF; a front end that ends it at a bare LF would frame the body differently, so
/// what one of them takes as the next request the other takes as chunk data (request
/// smuggling). The extension itself is not tokenised: it is ignored.
fn size_line_grammar(line: &[u8]) -> Result<(), FrameError> {
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(FrameError::BadChunk(
            "chunk-size line holds a control character",
        ));
    }
    // httparse allowed only whitespace, then `;` and the extension, after the digits.
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let after = &line[digits..];
    if !after.is_empty() && !after.contains(&b';') {
        return Err(FrameError::BadChunk(
            "whitespace after the chunk size with no chunk extension (;) behind it",
        ));
    }
    Ok(())
}

/// Whether `fields` (a whole trailer section) ends a line with an LF that no CR precedes.
/// httparse takes bare LF line ends; a front end that wants CRLF would read the bytes
/// after `\n\n` as more trailer text, not as the next request.
fn has_bare_lf(fields: &[u8]) -> bool {
    fields
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || fields[i - 1] != b'\r'))
}

/// The data of the chunked body that starts at `start` and that a scan found whole in
/// `buf`, in one allocation.
pub fn decode(buf: &[u8], start: usize, data_len: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(data_len);
    match ChunkScan::new(start).walk(buf, Some(&mut out))? {
        Scanned::Done { .. } => Ok(out),
        Scanned::More { .. } => Err(FrameError::BadChunk("the body ended early")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `raw` fed in pieces of `step` bytes; the answer once all is in.
    fn scan_in_steps(raw: &[u8], step: usize) -> Result<Scanned, FrameError> {
        let mut scan = ChunkScan::new(0);
        let mut last = Ok(Scanned::More { need: 0 });
        let mut len = 0;
        while len < raw.len() {
            len = (len + step).min(raw.len());
            last = scan.advance(&raw[..len]);
            if !matches!(last, Ok(Scanned::More { .. })) {
                break;
            }
        }
        last
    }

    /// `raw` is refused with `want`, fed whole or in pieces of any size.
    fn refused_however_it_arrives(raw: &[u8], want: &FrameError) {
        for step in 1..=raw.len() {
            assert_eq!(
                scan_in_steps(raw, step),
                Err(want.clone()),
                "{:?} in steps of {step}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    fn body(raw: &[u8]) -> Vec<u8> {
        let Ok(Scanned::Done { end }) = scan_in_steps(raw, raw.len()) else {
            panic!("not whole: {:?}", String::from_utf8_lossy(raw));
        };
        decode(&raw[..end], 0, 0).unwrap_or_default()
    }

    #[test]
    fn chunks_with_extensions_and_trailers_decode_to_their_data() {
        assert_eq!(body(b"0\r\n\r\n"), b"");
        assert_eq!(body(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"), b"abcde");
        assert_eq!(
            body(b"A\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\n"),
            b"0123456789"
        );
        // What follows the request is the next request's.
        let raw = b"1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan_in_steps(raw, raw.len()), Ok(Scanned::Done { end: 11 }));
    }

    #[test]
    fn the_answer_does_not_depend_on_how_the_bytes_arrive() {
        let cases: [&[u8]; 4] = [
            b"3\r\nabc\r\n2;ext\r\nde\r\n0\r\nT: v\r\n\r\nrest",
            b"3\r\nabcd\r\n",
            b"zz\r\n",
            b"2\r\nab\r\n0\r\nbad trailer\r\n\r\n",
        ];
        for raw in cases {
            let whole = scan_in_steps(raw, raw.len());
            for step in 1..raw.len() {
                assert_eq!(
                    scan_in_steps(raw, step),
                    whole,
                    "{:?} in steps of {step}",
                    String::from_utf8_lossy(raw)
                );
            }
        }
    }

    #[test]
    fn malformed_chunks_are_named() {
        let bad = |raw: &[u8]| match scan_in_steps(raw, raw.len()) {
            Err(e) => e,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(raw)),
        };
        assert_eq!(
            bad(b"\r\n\r\n"),
            FrameError::BadChunk("a chunk size must be hexadecimal")
        );
        assert_eq!(
            bad(b"-1\r\n"),
            FrameError::BadChunk("a chunk size must be hexadecimal")
        );
        assert_eq!(
            bad(b"1x\r\n"),
            FrameError::BadChunk("invalid chunk-size line")
        );
        assert!(matches!(bad(b"1\r\nab\r\n"), FrameError::BadChunk(m) if m.contains("CRLF")));
        // A size past the body limit is refused when its line is read, before its data.
        assert_eq!(bad(b"100001\r\n"), FrameError::BodyTooLarge);
        assert_eq!(bad(b"ffffffffffffffff\r\n"), FrameError::BodyTooLarge);
        assert_eq!(
            bad(b"fffffffffffffffff\r\n"),
            FrameError::BadChunk("invalid chunk-size line")
        );
    }

    /// Review s22b finding 1: a size line is CRLF-ended, and nothing in it ends a line
    /// for a front end that takes a bare LF (request smuggling).
    #[test]
    fn a_size_line_with_a_control_byte_or_bare_lf_is_refused() {
        let control = FrameError::BadChunk("chunk-size line holds a control character");
        let smuggled: &[u8] =
            b"4;\naa\r\n\r\n47\r\n0\r\n\r\nGET /v1/stats HTTP/1.1\r\n\r\n\r\n0\r\n\r\n";
        for raw in [
            smuggled,
            b"2;\x00\x01\x7f\r\nab\r\n0\r\n\r\n",
            b"2;a=\x1b\r\nab\r\n0\r\n\r\n",
            b"2;a\nb\r\nab\r\n0\r\n\r\n",
            b"2\t;\x7f\r\nab\r\n0\r\n\r\n",
            b"1\r\na\r\n0;\n\r\n\r\n",
        ] {
            refused_however_it_arrives(raw, &control);
        }
        // Whitespace after the size is grammar only before an extension (RFC 9112 7.1.1
        // BWS before `;`); HTAB and obs-text inside one are fine.
        for raw in [&b"1  \r\na\r\n0\r\n\r\n"[..], b"1\t\r\na\r\n0\r\n\r\n"] {
            assert_eq!(
                scan_in_steps(raw, raw.len()),
                Err(FrameError::BadChunk(
                    "whitespace after the chunk size with no chunk extension (;) behind it"
                )),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(body(b"1 ;x\r\na\r\n0\r\n\r\n"), b"a");
        assert_eq!(body(b"1\t; x = \"y\tz\xe9\"\r\na\r\n0 ; e\r\n\r\n"), b"a");
    }

    /// Review s22b finding 2: trailer lines end with CRLF, never a bare LF.
    #[test]
    fn trailers_with_a_bare_lf_are_refused() {
        let bare = FrameError::BadChunk("trailer lines must end with CRLF, not a bare LF");
        for raw in [
            &b"1\r\na\r\n0\r\nX: y\n\nGET /healthz HTTP/1.1\r\n\r\n"[..],
            b"0\r\nX: y\n\r\n",
            b"0\r\nX: y\r\n\n",
            b"0\r\n\n",
            b"0\r\nX: y\r\nZ: w\n\r\n",
        ] {
            refused_however_it_arrives(raw, &bare);
        }
        assert_eq!(body(b"1\r\na\r\n0\r\nX: y\r\nZ: w\r\n\r\n"), b"a");
    }

    #[test]
    fn more_than_32_trailer_fields_are_a_bad_request() {
        let mut raw = b"0\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let e = scan_in_steps(&raw, raw.len());
        assert_eq!(e, Err(FrameError::TooManyTrailers));
        let e = FrameError::TooManyTrailers;
        assert_eq!((e.status(), e.code()), (400, "bad_request"));
        assert_eq!(e.to_string(), "too many trailer fields (at most 32)");
        // 32 are fine.
        let mut raw = b"0\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(body(&raw), b"");
    }

    #[test]
    fn framing_is_bounded_without_a_line_end_or_in_tiny_chunks() {
        // One endless chunk extension, sent without its line end.
        let mut raw = b"1;".to_vec();
        raw.resize(MAX_CHUNK_FRAMING + 1, b'x');
        assert_eq!(
            scan_in_steps(&raw, 4096),
            Err(FrameError::ChunkFramingTooLarge)
        );
        // A body of one-byte chunks: 5 framing bytes per data byte.
        let raw: Vec<u8> = (0..MAX_CHUNK_FRAMING / 5 + 1)
            .flat_map(|_| *b"1\r\nx\r\n")
            .collect();
        assert_eq!(
            scan_in_steps(&raw, 1000),
            Err(FrameError::ChunkFramingTooLarge)
        );
        // Up to the bound is fine.
        let raw: Vec<u8> = (0..1000)
            .flat_map(|_| *b"1\r\nx\r\n")
            .chain(*b"0\r\n\r\n")
            .collect();
        assert_eq!(body(&raw).len(), 1000);
    }

    #[test]
    fn a_body_over_the_limit_is_refused_across_chunks() {
        let chunk = format!("{:x}\r\n", MAX_API_BODY_BYTES / 2);
        let mut raw = chunk.clone().into_bytes();
        raw.resize(raw.len() + MAX_API_BODY_BYTES / 2, b'a');
        raw.extend_from_slice(b"\r\n");
        // Exactly at the limit: fine.
        let mut at = raw.clone();
        at.extend_from_slice(&raw);
        at.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(body(&at).len(), MAX_API_BODY_BYTES);
        // One byte more.
        let mut over = raw.clone();
        over.extend_from_slice(&raw);
        over.extend_from_slice(b"1\r\n");
        assert_eq!(scan_in_steps(&over, 65536), Err(FrameError::BodyTooLarge));
    }

    #[test]
    fn a_scan_asked_again_after_an_error_gives_the_same_error() {
        let mut raw: Vec<u8> = (0..MAX_CHUNK_FRAMING / 5 + 1)
            .flat_map(|_| *b"1\r\nx\r\n")
            .collect();
        let mut scan = ChunkScan::new(0);
        assert_eq!(scan.advance(&raw), Err(FrameError::ChunkFramingTooLarge));
        raw.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(scan.advance(&raw), Err(FrameError::ChunkFramingTooLarge));
    }

    #[test]
    fn need_points_past_the_data_still_to_come() {
        let mut scan = ChunkScan::new(10);
        let mut raw = vec![b'h'; 10];
        raw.extend_from_slice(b"400\r\nab");
        assert_eq!(
            scan.advance(&raw),
            Ok(Scanned::More {
                need: 10 + 5 + 1024 + 2
            })
        );
        // A line not ended yet: any byte more may end it.
        let mut scan = ChunkScan::new(0);
        assert_eq!(scan.advance(b"40"), Ok(Scanned::More { need: 3 }));
    }
}
