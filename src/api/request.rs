//! Request framing for the push API: a pure function from buffered bytes to "a complete
//! request here", "need more bytes", or "this stream cannot be framed" (with the answer).
//! Pure so that it can be fuzzed and so that the answer never depends on how the bytes
//! were split across reads.

use std::ops::Range;

use crate::config::MAX_API_BODY_BYTES;

/// Largest request head (request line, headers and the blank line) on the API.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in one request head.
pub const MAX_HEADERS: usize = 32;

/// Why a request cannot be served; the stream cannot be framed after it, so the
/// connection is answered and closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// httparse refused the head.
    #[error("malformed HTTP request: {0}")]
    Malformed(httparse::Error),
    /// The head did not end within `MAX_HEAD` bytes.
    #[error("request head over 16 KiB")]
    HeadTooLarge,
    /// More header lines than `MAX_HEADERS`.
    #[error("too many headers (at most {MAX_HEADERS})")]
    TooManyHeaders,
    /// A `Transfer-Encoding` header with an empty value: malformed, not an unknown coding.
    #[error("empty Transfer-Encoding: send \"chunked\", or the body with Content-Length")]
    EmptyTransferEncoding,
    /// A transfer coding other than `chunked` alone.
    #[error(
        "Transfer-Encoding {0:?} is not supported: send the body with Content-Length or chunked"
    )]
    UnsupportedTransferEncoding(String),
    /// Both `Transfer-Encoding` and `Content-Length`: the framing would be ambiguous.
    #[error("both Transfer-Encoding and Content-Length: send one")]
    LengthAndChunked,
    /// `Transfer-Encoding` in an HTTP/1.0 request (RFC 9112 6.1: faulty framing).
    #[error("Transfer-Encoding in an HTTP/1.0 request: send the body with Content-Length")]
    ChunkedHttp10,
    /// More trailer fields after a chunked body than `MAX_HEADERS`.
    #[error("too many trailer fields (at most {MAX_HEADERS})")]
    TooManyTrailers,
    /// A chunked body that does not follow RFC 9112 7.1.
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
    /// More chunk framing than `MAX_CHUNK_FRAMING`.
    #[error(
        "chunked body framing (chunk-size lines, extensions, trailers) over {} bytes: send \
         larger chunks",
        super::chunked::MAX_CHUNK_FRAMING
    )]
    ChunkFramingTooLarge,
    /// More than one `Content-Length` header: the body length would be ambiguous.
    #[error("more than one Content-Length header")]
    DuplicateContentLength,
    /// A `Content-Length` that is not plain decimal digits.
    #[error("bad Content-Length {0:?}: must be decimal digits only")]
    BadContentLength(String),
    /// A body over `MAX_API_BODY_BYTES`.
    #[error("request body over {MAX_API_BODY_BYTES} bytes")]
    BodyTooLarge,
}

impl FrameError {
    /// The HTTP status that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            FrameError::Malformed(_)
            | FrameError::DuplicateContentLength
            | FrameError::BadContentLength(_)
            | FrameError::LengthAndChunked
            | FrameError::ChunkedHttp10
            | FrameError::EmptyTransferEncoding
            | FrameError::TooManyTrailers
            | FrameError::BadChunk(_) => 400,
            FrameError::HeadTooLarge | FrameError::TooManyHeaders => 431,
            FrameError::UnsupportedTransferEncoding(_) => 501,
            FrameError::BodyTooLarge | FrameError::ChunkFramingTooLarge => 413,
        }
    }

    /// The `error` code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self.status() {
            413 => "payload_too_large",
            431 => "header_too_large",
            501 => "not_implemented",
            _ => "bad_request",
        }
    }
}

/// A complete request at the front of the buffer, borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head<'a> {
    /// The method, e.g. `POST`.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The query string after `?`, or empty.
    pub query: &'a str,
    /// The `Authorization` value, when present and UTF-8.
    pub authorization: Option<&'a str>,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
    /// Where the body lies in the buffer; its end is where the next request starts.
    pub body: Range<usize>,
    /// HTTP/1.1 with `Expect: 100-continue`: the client waits for `100 Continue` before
    /// it sends the body (only looked at while the body is still to come).
    pub expect_continue: bool,
}

impl Head<'_> {
    /// Whether the client waits for `100 Continue`: HTTP/1.1 with `Expect: 100-continue`
    /// (RFC 9110 10.1.1: never a 100 to an HTTP/1.0 client).
    fn wants_continue(version: Option<u8>, headers: &[httparse::Header<'_>]) -> bool {
        version == Some(1)
            && crate::http::header(headers, "Expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    }
}

/// The result of framing the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framed<'a> {
    /// A whole request (head and body) is buffered.
    Complete(Head<'a>),
    /// The head is whole and the body is still to come: enough to check the key before
    /// the body is held.
    HeadOnly(Head<'a>),
    /// The head is whole and its body is chunked, from `body.start` (its end is found by
    /// scanning it: `chunked::ChunkScan`).
    Chunked(Head<'a>),
    /// More bytes are needed.
    Incomplete,
    /// The stream cannot be framed.
    Error(FrameError),
}

/// Frames the request at the front of `buf`.
pub fn frame(buf: &[u8]) -> Framed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    // Only the first MAX_HEAD bytes are ever parsed as a head, so the answer is the same
    // whether the head arrives a byte at a time or in one read with a body behind it.
    let limit = buf.len().min(MAX_HEAD);
    let head_len = match req.parse(&buf[..limit]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Framed::Error(FrameError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Framed::Incomplete,
        Err(httparse::Error::TooManyHeaders) => return Framed::Error(FrameError::TooManyHeaders),
        Err(e) => return Framed::Error(FrameError::Malformed(e)),
    };
    let header = |name: &str| crate::http::header(req.headers, name);
    let chunked = match chunked(req.headers, req.version) {
        Ok(chunked) => chunked,
        Err(e) => return Framed::Error(e),
    };
    let len = match content_length(req.headers) {
        Ok(n) => n,
        Err(e) => return Framed::Error(e),
    };
    let Some(end) = head_len
        .checked_add(len)
        .filter(|_| len <= MAX_API_BODY_BYTES)
    else {
        return Framed::Error(FrameError::BodyTooLarge);
    };
    let keep_alive = match (req.version, header("Connection")) {
        (_, Some(v)) if v.eq_ignore_ascii_case("close") => false,
        (Some(0), Some(v)) => v.eq_ignore_ascii_case("keep-alive"),
        (Some(0), None) => false,
        _ => true,
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = Head {
        method: req.method.unwrap_or(""),
        path,
        query,
        authorization: header("Authorization"),
        keep_alive,
        body: head_len..end,
        expect_continue: false,
    };
    if chunked {
        head.body = head_len..head_len;
        head.expect_continue = Head::wants_continue(req.version, req.headers);
        return Framed::Chunked(head);
    }
    if buf.len() < end {
        head.expect_continue = Head::wants_continue(req.version, req.headers);
        return Framed::HeadOnly(head);
    }
    Framed::Complete(head)
}

/// Whether the body is chunked: no `Transfer-Encoding`, or exactly one that says
/// `chunked`, in HTTP/1.1, without a `Content-Length`. Any other coding is refused, as is
/// a request with both (the framing a proxy in front picked may differ from ours).
fn chunked(headers: &[httparse::Header<'_>], version: Option<u8>) -> Result<bool, FrameError> {
    let codings = || {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("Transfer-Encoding"))
            .map(|h| h.value.trim_ascii())
    };
    let Some(value) = codings().next() else {
        return Ok(false);
    };
    if version == Some(0) {
        return Err(FrameError::ChunkedHttp10);
    }
    // An empty value is malformed rather than a coding not supported: 400, not 501.
    if codings().any(<[u8]>::is_empty) {
        return Err(FrameError::EmptyTransferEncoding);
    }
    if codings().nth(1).is_some() || !value.eq_ignore_ascii_case(b"chunked") {
        let all: Vec<String> = codings()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        return Err(FrameError::UnsupportedTransferEncoding(all.join(", ")));
    }
    if headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("Content-Length"))
    {
        return Err(FrameError::LengthAndChunked);
    }
    Ok(true)
}

/// The body length: 0 without the header; exactly one header of plain decimal digits.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<usize, FrameError> {
    let mut found = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Content-Length"));
    let Some(h) = found.next() else {
        return Ok(0);
    };
    // Even identical duplicates are refused: whoever else reads this stream might pick
    // a different one.
    if found.next().is_some() {
        return Err(FrameError::DuplicateContentLength);
    }
    let v = h.value.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(FrameError::BadContentLength(
            String::from_utf8_lossy(h.value).into_owned(),
        ));
    }
    // Digits only; saturating so a huge number is "too large", not an overflow.
    let n = v.iter().fold(0usize, |n, d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    });
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(raw: &[u8]) -> FrameError {
        match frame(raw) {
            Framed::Error(e) => e,
            other => panic!(
                "expected an error for {:?}..., got {other:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(80)])
            ),
        }
    }

    #[test]
    fn complete_with_body_and_pipelined_rest() {
        let raw = b"POST /v1/push?wait=1 HTTP/1.1\r\nContent-Length: 3\r\nAuthorization: Bearer k\r\n\r\nabcGET /";
        let Framed::Complete(h) = frame(raw) else {
            panic!("not complete")
        };
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/v1/push");
        assert_eq!(h.query, "wait=1");
        assert_eq!(h.authorization, Some("Bearer k"));
        assert!(h.keep_alive);
        assert_eq!(&raw[h.body.clone()], b"abc");
        // "a" of the body in: the head is whole, the body is not.
        let Framed::HeadOnly(h) = frame(&raw[..raw.len() - 7]) else {
            panic!("the head is whole")
        };
        assert_eq!(
            (h.authorization, h.body.end),
            (Some("Bearer k"), raw.len() - 5)
        );
        assert!(!h.expect_continue);
        assert_eq!(frame(&raw[..20]), Framed::Incomplete);
    }

    #[test]
    fn expect_continue_only_for_http11_with_a_body_to_come() {
        let expects = |raw: &[u8]| match frame(raw) {
            Framed::HeadOnly(h) => h.expect_continue,
            Framed::Complete(h) => h.expect_continue,
            other => panic!("{other:?}"),
        };
        assert!(expects(
            b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"
        ));
        assert!(!expects(
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
        ));
        assert!(!expects(
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"
        ));
        assert!(!expects(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n"));
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw: &[u8]| match frame(raw) {
            Framed::Complete(h) => h.keep_alive,
            other => panic!("{other:?}"),
        };
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn content_length_must_be_plain_digits_and_single() {
        for bad in ["+3", "-1", "1 2", "0x3", "", "3a", "١"] {
            let raw = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\nabc");
            let e = err(raw.as_bytes());
            assert!(
                matches!(e, FrameError::BadContentLength(_)),
                "{bad:?}: {e:?}"
            );
            assert_eq!(e.status(), 400);
        }
        let e = err(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd");
        assert_eq!(e, FrameError::DuplicateContentLength);
        let e = err(b"POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc");
        assert_eq!(e, FrameError::DuplicateContentLength);
        assert_eq!(e.status(), 400);
        let e = err(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n");
        assert_eq!(e, FrameError::BodyTooLarge);
        assert_eq!(e.status(), 413);
    }

    #[test]
    fn chunked_alone_in_http11_is_the_only_transfer_coding() {
        let Framed::Chunked(h) =
            frame(b"POST /v1/push HTTP/1.1\r\nTransfer-Encoding: Chunked \r\nExpect: 100-continue\r\n\r\n3\r\n")
        else {
            panic!("chunked")
        };
        assert_eq!((h.path, h.body.start, h.body.end), ("/v1/push", 77, 77));
        assert!(h.expect_continue);
        for (raw, status, code) in [
            (&b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..], 501, "not_implemented"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501, "not_implemented"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: \xff\r\n\r\n", 501, "not_implemented"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\nx", 400, "bad_request"),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "bad_request"),
            // Review s22b: an empty value is malformed, not a coding not supported.
            (b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n", 400, "bad_request"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: \t \r\n\r\n", 400, "bad_request"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \r\n\r\n", 400, "bad_request"),
        ] {
            let e = err(raw);
            assert_eq!((e.status(), e.code()), (status, code), "{e}");
        }
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n"),
            FrameError::EmptyTransferEncoding
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").to_string(),
            "Transfer-Encoding \"gzip, chunked\" is not supported: send the body with \
             Content-Length or chunked"
        );
    }

    #[test]
    fn head_limit_holds_however_the_head_arrives() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20 * 1024));
        // Whole, with a body behind it.
        let mut whole = big.clone().into_bytes();
        whole.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(err(&whole), FrameError::HeadTooLarge);
        // Just past the limit, still partial.
        assert_eq!(
            err(&big.as_bytes()[..MAX_HEAD + 1]),
            FrameError::HeadTooLarge
        );
        assert_eq!(frame(&big.as_bytes()[..MAX_HEAD]), Framed::Incomplete);
        assert!(FrameError::HeadTooLarge.to_string().contains("16 KiB"));
        // Exactly at the limit is fine.
        let pad = MAX_HEAD - "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
        let exact = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(pad));
        assert!(matches!(frame(exact.as_bytes()), Framed::Complete(_)));
    }

    #[test]
    fn too_many_headers_says_so() {
        let mut raw = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            raw.push_str(&format!("X-{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        let e = err(raw.as_bytes());
        assert_eq!(e, FrameError::TooManyHeaders);
        assert_eq!(e.status(), 431);
        assert!(
            e.to_string().contains("too many headers (at most 32)"),
            "{e}"
        );
    }
}
