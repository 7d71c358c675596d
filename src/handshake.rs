//! Parsing and judging the HTTP upgrade request (docs/protocol.md 1.1, 1.2).

use crate::auth::AuthError;
use crate::command::Resume;
use crate::config::{MAX_HEAD_BYTES, WS_PATH};
use crate::http;
use crate::metrics::HandshakeOutcome;

/// Why an upgrade is refused; each maps onto one row of docs/protocol.md 1.2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: not GET, or a missing/malformed upgrade header.
    BadRequest(&'static str),
    /// 426: `Sec-WebSocket-Version` is not 13.
    UnsupportedVersion,
    /// 404: not the WebSocket path.
    NotFound,
    /// 401: token missing, invalid or expired.
    Auth(AuthError),
    /// 403: `Origin` not allowed.
    ForbiddenOrigin,
    /// 429: per-IP connection count or rate exceeded.
    RateLimited(&'static str),
    /// 431: head over 8 KiB, or more header fields than are parsed.
    HeaderTooLarge(HeadLimit),
    /// 503: `max_connections` reached or a shard queue is full.
    OverCapacity(&'static str),
    /// 503: the server is shutting down.
    Draining,
}

impl Refusal {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::UnsupportedVersion => 426,
            Refusal::NotFound => 404,
            Refusal::Auth(_) => 401,
            Refusal::ForbiddenOrigin => 403,
            Refusal::RateLimited(_) => 429,
            Refusal::HeaderTooLarge(_) => 431,
            Refusal::OverCapacity(_) | Refusal::Draining => 503,
        }
    }

    /// The metric outcome.
    pub fn outcome(&self) -> HandshakeOutcome {
        match self {
            Refusal::BadRequest(_) => HandshakeOutcome::BadRequest,
            Refusal::UnsupportedVersion => HandshakeOutcome::UnsupportedVersion,
            Refusal::NotFound => HandshakeOutcome::NotFound,
            Refusal::Auth(AuthError::Missing) => HandshakeOutcome::MissingToken,
            Refusal::Auth(AuthError::Expired) => HandshakeOutcome::TokenExpired,
            Refusal::Auth(AuthError::Invalid(_)) => HandshakeOutcome::InvalidToken,
            Refusal::ForbiddenOrigin => HandshakeOutcome::ForbiddenOrigin,
            Refusal::RateLimited(_) => HandshakeOutcome::RateLimited,
            Refusal::HeaderTooLarge(_) => HandshakeOutcome::HeaderTooLarge,
            Refusal::OverCapacity(_) => HandshakeOutcome::OverCapacity,
            Refusal::Draining => HandshakeOutcome::Draining,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Refusal::Auth(e) => e.code(),
            other => other.outcome().label(),
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::BadRequest(m) | Refusal::RateLimited(m) | Refusal::OverCapacity(m) => {
                (*m).to_string()
            }
            Refusal::UnsupportedVersion => "Sec-WebSocket-Version must be 13".into(),
            Refusal::NotFound => format!("the WebSocket endpoint is {WS_PATH}"),
            Refusal::Auth(e) => e.to_string(),
            Refusal::ForbiddenOrigin => "Origin is not allowed".into(),
            Refusal::HeaderTooLarge(HeadLimit::Bytes) => {
                format!("request head over {MAX_HEAD_BYTES} bytes")
            }
            Refusal::HeaderTooLarge(HeadLimit::Fields) => {
                format!("too many header fields (at most {MAX_HEADERS})")
            }
            Refusal::Draining => "server is shutting down; reconnect elsewhere or later".into(),
        }
    }

    /// The full HTTP response, ending with `Connection: close`.
    pub fn response(&self) -> Vec<u8> {
        let extra = match self {
            Refusal::UnsupportedVersion => "Sec-WebSocket-Version: 13\r\n",
            Refusal::RateLimited(_) => "Retry-After: 1\r\n",
            Refusal::OverCapacity(_) => "Retry-After: 5\r\n",
            Refusal::Draining => "Retry-After: 2\r\n",
            _ => "",
        };
        http::error_response(self.status(), self.code(), &self.message(), false, extra)
    }
}

/// Which bound of the request head was exceeded (both answered 431).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadLimit {
    /// More than `MAX_HEAD_BYTES` bytes.
    Bytes,
    /// More than `MAX_HEADERS` header fields.
    Fields,
}

/// Header fields parsed in an upgrade request; a browser sends about 15.
pub const MAX_HEADERS: usize = 48;

/// A well-formed upgrade request, not yet authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Accept` value to answer with.
    pub accept_key: String,
    /// The JWT, from the Authorization header or the `token` query parameter.
    pub token: Option<String>,
    /// The `Origin` header, when sent.
    pub origin: Option<String>,
    /// Bytes of the request head; anything after belongs to the WebSocket stream.
    pub head_len: usize,
    /// `since` and `epoch`, when the client resumes its user stream.
    pub resume: Option<Resume>,
    /// The client's first valid permessage-deflate offer, if any.
    pub deflate: Option<crate::deflate::Agreed>,
}

/// Longest `epoch` a client may send back (docs/protocol.md 4.1).
pub const MAX_EPOCH_BYTES: usize = 32;

/// Reads `since` and `epoch` from the upgrade query: both or neither.
fn parse_resume(query: &str) -> Result<Option<Resume>, Refusal> {
    let mut since = None;
    let mut epoch = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "since" if since.is_none() => since = Some(v),
            "epoch" if epoch.is_none() => epoch = Some(v),
            _ => {}
        }
    }
    match (since, epoch) {
        (None, None) => Ok(None),
        (Some(since), Some(epoch)) => {
            let since = since
                .parse::<u64>()
                .map_err(|_| Refusal::BadRequest("since must be an unsigned 64-bit integer"))?;
            if epoch.is_empty()
                || epoch.len() > MAX_EPOCH_BYTES
                || !epoch.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(Refusal::BadRequest(
                    "epoch must be 1 to 32 printable ASCII characters",
                ));
            }
            Ok(Some(Resume {
                since,
                epoch: epoch.into(),
            }))
        }
        _ => Err(Refusal::BadRequest(
            "since and epoch must be given together",
        )),
    }
}

/// Parses the request head in `buf`: `Ok(None)` while incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<Upgrade>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD_BYTES {
                Err(Refusal::HeaderTooLarge(HeadLimit::Bytes))
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::HeaderTooLarge(HeadLimit::Fields))
        }
        Err(_) => return Err(Refusal::BadRequest("malformed HTTP request")),
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(Refusal::HeaderTooLarge(HeadLimit::Bytes));
    }
    // RFC 6455 4.1: the upgrade is an HTTP/1.1 mechanism; 1.0 has no `Upgrade`.
    if req.version != Some(1) {
        return Err(Refusal::BadRequest("WebSocket upgrades need HTTP/1.1"));
    }
    let target = req.path.unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != WS_PATH {
        return Err(Refusal::NotFound);
    }
    if req.method != Some("GET") {
        return Err(Refusal::BadRequest("the upgrade request must be GET"));
    }
    let header = |name: &str| crate::http::header(req.headers, name);
    let has_token = |name: &str, want: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
    };
    if !has_token("Upgrade", "websocket") {
        return Err(Refusal::BadRequest("missing Upgrade: websocket"));
    }
    if !has_token("Connection", "upgrade") {
        return Err(Refusal::BadRequest("missing Connection: Upgrade"));
    }
    // Fields that say one thing: with two copies, which one counts would depend on the
    // order (RFC 6455 4.1: Sec-WebSocket-Key and -Version appear once).
    for (name, twice) in [
        (
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Key given more than once",
        ),
        (
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Version given more than once",
        ),
        ("Authorization", "Authorization given more than once"),
    ] {
        let copies = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name));
        if copies.count() > 1 {
            return Err(Refusal::BadRequest(twice));
        }
    }
    if header("Sec-WebSocket-Version") != Some("13") {
        return Err(Refusal::UnsupportedVersion);
    }
    let key =
        header("Sec-WebSocket-Key").ok_or(Refusal::BadRequest("missing Sec-WebSocket-Key"))?;
    if !valid_key(key) {
        return Err(Refusal::BadRequest(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    let resume = parse_resume(query)?;
    let bearer = header("Authorization").and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_string())
    });
    let token = bearer.or_else(|| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    let extensions = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Extensions"))
        .filter_map(|h| std::str::from_utf8(h.value).ok());
    let deflate = crate::deflate::negotiate(extensions);
    Ok(Some(Upgrade {
        accept_key: tungstenite::handshake::derive_accept_key(key.as_bytes()),
        token: token.filter(|t| !t.is_empty()),
        origin: header("Origin").map(String::from),
        head_len,
        resume,
        deflate,
    }))
}

/// A key is 16 bytes in base64: 22 characters and `==`.
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b[22..] == *b"=="
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// Whether `origin` passes the configured list (empty list or absent header: yes).
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    match origin {
        Some(o) if !allowed.is_empty() => allowed.iter().any(|a| a.eq_ignore_ascii_case(o)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn req(extra: &str) -> String {
        format!("GET /ws?token=abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n")
    }

    #[test]
    fn good_request() {
        let r = req("Origin: https://a\r\n");
        let u = parse(r.as_bytes()).unwrap().unwrap();
        assert_eq!(u.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(u.token.as_deref(), Some("abc"));
        assert_eq!(u.origin.as_deref(), Some("https://a"));
        assert_eq!(u.head_len, r.len());
    }

    #[test]
    fn deflate_offers_over_several_headers() {
        let r = req("Sec-WebSocket-Extensions: foo\r\nSec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=11\r\n");
        let u = parse(r.as_bytes()).unwrap().unwrap();
        assert_eq!(u.deflate.map(|a| a.window_bits()), Some(11));
        let u = parse(req("").as_bytes()).unwrap().unwrap();
        assert_eq!(u.deflate, None);
    }

    #[test]
    fn resume_parameters() {
        let q = |query: &str| parse_resume(query);
        assert_eq!(q("token=a"), Ok(None));
        assert_eq!(
            q("since=7&epoch=00ab"),
            Ok(Some(Resume {
                since: 7,
                epoch: "00ab".into()
            }))
        );
        for bad in [
            "since=-1&epoch=a",
            "since=x&epoch=a",
            "since=18446744073709551616&epoch=a",
            "since=1&epoch=",
            "since=1&epoch=a%20b",
            "since=1&epoch=%C3%A9",
            "since=1",
            "epoch=a",
        ] {
            assert!(
                matches!(q(bad), Err(Refusal::BadRequest(_))),
                "{bad} must be refused"
            );
        }
        let long = format!("since=1&epoch={}", "a".repeat(33));
        assert!(matches!(q(&long), Err(Refusal::BadRequest(_))));
        let max = format!("since=1&epoch={}", "a".repeat(32));
        assert!(q(&max).unwrap().is_some());
    }

    #[test]
    fn header_token_wins() {
        let r = req("Authorization: Bearer xyz\r\n");
        assert_eq!(
            parse(r.as_bytes()).unwrap().unwrap().token.as_deref(),
            Some("xyz")
        );
    }

    #[test]
    fn partial_then_too_large() {
        let r = req("");
        assert_eq!(parse(&r.as_bytes()[..20]), Ok(None));
        let big = format!("GET /ws HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(
            parse(big.as_bytes()),
            Err(Refusal::HeaderTooLarge(HeadLimit::Bytes))
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            parse(b"GET /other HTTP/1.1\r\n\r\n"),
            Err(Refusal::NotFound)
        );
        assert!(matches!(
            parse(b"POST /ws HTTP/1.1\r\n\r\n"),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"),
            Err(Refusal::BadRequest(_))
        ));
        let v12 = req("").replace("Version: 13", "Version: 12");
        assert_eq!(parse(v12.as_bytes()), Err(Refusal::UnsupportedVersion));
        let badkey = req("").replace(KEY, "short");
        assert!(matches!(
            parse(badkey.as_bytes()),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"\x00\x01garbage\r\n\r\n"),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn repeated_single_fields_are_refused() {
        for (extra, refusal) in [
            (
                format!("Sec-WebSocket-Key: {KEY}\r\n"),
                "Sec-WebSocket-Key given more than once",
            ),
            (
                "sec-websocket-version: 8\r\n".to_string(),
                "Sec-WebSocket-Version given more than once",
            ),
            (
                "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n".to_string(),
                "Authorization given more than once",
            ),
        ] {
            let r = req(&extra);
            assert_eq!(
                parse(r.as_bytes()),
                Err(Refusal::BadRequest(refusal)),
                "{extra}"
            );
        }
        // Once each is fine, in any case.
        assert!(parse(req("authorization: Bearer a\r\n").as_bytes()).is_ok());
    }

    #[test]
    fn http_1_0_is_refused() {
        let r = req("").replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(
            parse(r.as_bytes()),
            Err(Refusal::BadRequest("WebSocket upgrades need HTTP/1.1"))
        );
    }

    #[test]
    fn too_many_fields_says_so() {
        let many: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let r = req(&many);
        assert!(r.len() < MAX_HEAD_BYTES, "small head, many fields");
        let refusal = parse(r.as_bytes()).unwrap_err();
        assert_eq!(refusal, Refusal::HeaderTooLarge(HeadLimit::Fields));
        let body = String::from_utf8(refusal.response()).unwrap();
        assert!(body.starts_with("HTTP/1.1 431 "), "{body}");
        assert!(body.contains("header_too_large"), "{body}");
        assert!(
            body.contains(&format!("too many header fields (at most {MAX_HEADERS})")),
            "{body}"
        );
        // Exactly MAX_HEADERS fields are fine.
        let fields: String = (0..MAX_HEADERS - 6)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert!(parse(req(&fields).as_bytes()).unwrap().is_some());
        let bytes = Refusal::HeaderTooLarge(HeadLimit::Bytes).response();
        assert!(String::from_utf8(bytes)
            .unwrap()
            .contains("request head over 8192 bytes"));
    }

    #[test]
    fn refusal_responses() {
        let r = String::from_utf8(Refusal::UnsupportedVersion.response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 426 "));
        assert!(r.contains("Sec-WebSocket-Version: 13\r\n"));
        let r = String::from_utf8(Refusal::Auth(AuthError::Expired).response()).unwrap();
        assert!(r.contains("\"error\":\"token_expired\""));
        let r = String::from_utf8(Refusal::OverCapacity("full").response()).unwrap();
        assert!(r.contains("Retry-After: 5\r\n") && r.contains("over_capacity"));
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://a.example".to_string()];
        assert!(origin_allowed(&allowed, Some("https://a.example")));
        assert!(!origin_allowed(&allowed, Some("https://evil")));
        assert!(origin_allowed(&allowed, None));
        assert!(origin_allowed(&[], Some("https://evil")));
    }
}
