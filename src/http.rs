//! Small HTTP/1.1 response writers shared by the acceptor and the push API.

use std::fmt::Write as _;

/// The reason phrase for the statuses Throng sends.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// The first header called `name` (any case), trimmed; None if absent or not UTF-8.
pub(crate) fn header<'h>(headers: &[httparse::Header<'h>], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

/// `{"error":code,"message":message}`, JSON-escaped.
pub(crate) fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({ "error": code, "message": message }).to_string()
}

/// A complete response with a body; `extra` holds ready-made header lines ending in CRLF.
pub(crate) fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra: &str,
) -> Vec<u8> {
    let mut head = String::with_capacity(160 + extra.len());
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n{extra}\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// `response` without its body, for a `HEAD` request: the head, `Content-Length` and all,
/// stays as a `GET` would get it (RFC 9110 9.3.2).
pub(crate) fn head_only(mut response: Vec<u8>) -> Vec<u8> {
    if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
        response.truncate(end + 4);
    }
    response
}

/// A JSON error response.
pub(crate) fn error_response(
    status: u16,
    code: &str,
    message: &str,
    keep_alive: bool,
    extra: &str,
) -> Vec<u8> {
    response(
        status,
        "application/json",
        error_body(code, message).as_bytes(),
        keep_alive,
        extra,
    )
}

/// The 101 response that completes an upgrade, with the extension agreed, if any.
pub(crate) fn switching_protocols(
    accept_key: &str,
    deflate: Option<crate::deflate::Agreed>,
) -> Vec<u8> {
    let extensions = deflate.map_or(String::new(), |a| {
        format!("Sec-WebSocket-Extensions: {}\r\n", a.response())
    });
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n{extensions}\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_shape() {
        let r = error_response(
            429,
            "rate_limited",
            "slow \"down\"",
            false,
            "Retry-After: 1\r\n",
        );
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains("Retry-After: 1\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "rate_limited");
        assert_eq!(v["message"], "slow \"down\"");
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        let head = String::from_utf8(head_only(text.clone().into_bytes())).unwrap();
        assert_eq!(head, text[..text.find("\r\n\r\n").unwrap() + 4]);
    }
}
