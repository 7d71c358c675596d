//! Chunked request bodies on the push API (RFC 9112 7.1): pushes sent chunked arrive as
//! with `Content-Length`, however the bytes are split and whatever follows on the
//! connection; bad chunking gets a clear error; chunked bodies count in the input budget
//! and wait for room like any other.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// `body` as chunks of at most `size` bytes, each with an extension on odd chunks, and a
/// trailer field after the last.
fn chunked(body: &str, size: usize) -> String {
    let mut out = String::new();
    for (i, part) in body.as_bytes().chunks(size.max(1)).enumerate() {
        let ext = if i % 2 == 1 { ";note=x" } else { "" };
        out.push_str(&format!("{:X}{ext}\r\n", part.len()));
        out.push_str(std::str::from_utf8(part).expect("ascii body"));
        out.push_str("\r\n");
    }
    out.push_str("0\r\nX-Checksum: none\r\n\r\n");
    out
}

fn chunked_post(path: &str, body: &str, size: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        chunked(body, size)
    )
}

/// Writes `raw` in pieces of `step` bytes, flushing each (the server sees many reads).
fn write_in_steps(s: &mut TcpStream, raw: &[u8], step: usize) {
    s.set_nodelay(true).expect("nodelay");
    for part in raw.chunks(step) {
        s.write_all(part).expect("write");
    }
}

#[test]
fn chunked_pushes_are_delivered_however_they_are_split_and_pipelined() {
    let srv = TestServer::start(&[]);
    let mut alice = srv.connect("alice");
    let mut n = 0;
    for (chunk, step) in [(1000, 100_000), (7, 100_000), (5, 1), (64, 13)] {
        n += 1;
        let body = json!({"user": "alice", "data": {"n": n, "pad": "p".repeat(300)}}).to_string();
        let mut s = tcp(srv.api);
        write_in_steps(
            &mut s,
            chunked_post("/v1/push?wait=1", &body, chunk).as_bytes(),
            step,
        );
        let mut c = HttpConn::over(s, srv.api);
        let r = c.read();
        assert_eq!(
            r.status,
            200,
            "chunks of {chunk}, writes of {step}: {}",
            r.text()
        );
        assert_eq!(r.json()["delivered"], 1, "{}", r.text());
        let m = alice.recv();
        assert_eq!(m["data"]["n"], n, "{m}");
    }

    // On one keep-alive connection, in one write: chunked, Content-Length, chunked.
    let pushes: Vec<String> = (1..=3)
        .map(|i| json!({"user": "alice", "data": {"seq": i}}).to_string())
        .collect();
    let mut raw = chunked_post("/v1/push", &pushes[0], 4);
    raw.push_str(&format!(
        "POST /v1/push HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: {}\r\n\r\n{}",
        pushes[1].len(),
        pushes[1]
    ));
    raw.push_str(&chunked_post("/v1/push", &pushes[2], 10));
    let mut c = srv.api_conn();
    c.write(raw.as_bytes());
    for i in 1..=3 {
        let r = c.read();
        assert_eq!(r.status, 202, "request {i}: {}", r.text());
        assert_eq!(alice.recv()["data"]["seq"], i);
    }
    // The connection is still good.
    let r = c.request("GET", "/v1/stats", Some(API_KEY), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["counters"]["pushes_accepted"], 7, "{}", r.text());
}

#[test]
fn a_chunked_body_waits_for_the_key_check_and_100_continue() {
    let srv = TestServer::start(&[]);
    let body = json!({"user": "nobody", "data": 1}).to_string();
    let mut s = tcp(srv.api);
    s.write_all(
        format!(
            "POST /v1/push HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nExpect: 100-continue\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("head");
    let (r, rest) = read_response(&mut s, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 100, "{r:?}");
    s.write_all(chunked(&body, 8).as_bytes()).expect("body");
    let (r, _) = read_response(&mut s, rest).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 202, "{}", r.text());

    // A wrong key is answered at the head; the chunks are not read.
    let mut s = tcp(srv.api);
    s.write_all(b"POST /v1/push HTTP/1.1\r\nAuthorization: Bearer wrong\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab")
        .expect("head");
    let (r, _) = read_response(&mut s, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    r.assert_refusal(401, "unauthorized");
}

/// Sends `raw` and expects a closing error `status`/`code` whose message has `needle`.
fn refused(srv: &TestServer, raw: &[u8], status: u16, code: &str, needle: &str) {
    let mut s = tcp(srv.api);
    // The server may answer and close before all of it is written.
    let _ = s.write_all(raw);
    let (r, _) = read_response(&mut s, Vec::new()).unwrap_or_else(|e| panic!("{needle}: {e}"));
    r.assert_refusal(status, code);
    let message = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

/// Sends `raw` and reads to the close: exactly one answer, a 400 whose message has
/// `needle`; nothing that followed in `raw` is answered.
fn only_refused(srv: &TestServer, raw: &[u8], needle: &str) {
    let mut s = tcp(srv.api);
    let _ = s.write_all(raw);
    let all = read_to_close(&mut s);
    let text = String::from_utf8_lossy(&all).to_string();
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "one answer only: {text:?}"
    );
    let (r, rest) = read_response(&mut &all[..], Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    r.assert_refusal(400, "bad_request");
    let message = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
    assert!(rest.is_empty(), "{text:?}");
}

#[test]
fn bad_chunking_is_refused_with_what_is_wrong() {
    let srv = TestServer::start(&[]);
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let with = |body: &[u8]| [head.as_bytes(), body].concat();
    refused(&srv, &with(b"xyz\r\n"), 400, "bad_request", "hexadecimal");
    refused(&srv, &with(b"\r\n\r\n"), 400, "bad_request", "hexadecimal");
    refused(
        &srv,
        &with(b"2\r\nabc\r\n"),
        400,
        "bad_request",
        "followed by CRLF",
    );
    refused(
        &srv,
        &with(b"1 2\r\nab\r\n"),
        400,
        "bad_request",
        "chunk-size line",
    );
    // A chunk that would take the body past 1 MiB: refused at its size line.
    refused(
        &srv,
        &with(b"100001\r\n"),
        413,
        "payload_too_large",
        "over 1048576",
    );
    // A body of one-byte chunks: more framing than data.
    let tiny: Vec<u8> = (0..20_000).flat_map(|_| *b"1\r\nx\r\n").collect();
    refused(
        &srv,
        &with(&tiny),
        413,
        "payload_too_large",
        "send larger chunks",
    );
    // Codings other than chunked alone, and chunked in HTTP/1.0.
    let coded = format!(
        "POST /v1/push HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    );
    refused(
        &srv,
        coded.as_bytes(),
        501,
        "not_implemented",
        "\"gzip, chunked\"",
    );
    let mut s = tcp(srv.api);
    s.write_all(coded.as_bytes()).expect("write");
    let mut line = [0u8; 30];
    std::io::Read::read_exact(&mut s, &mut line).expect("status line");
    assert_eq!(&line, b"HTTP/1.1 501 Not Implemented\r\n");
    let old = format!(
        "POST /v1/push HTTP/1.0\r\nAuthorization: Bearer {API_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    refused(&srv, old.as_bytes(), 400, "bad_request", "HTTP/1.0");
    // Review s22b: what RFC 9112 7.1.1 leaves out of a size line, and too many trailers.
    refused(
        &srv,
        &with(b"2;\x00\x01\x7f\r\nab\r\n0\r\n\r\n"),
        400,
        "bad_request",
        "chunk-size line holds a control character",
    );
    refused(
        &srv,
        &with(b"1  \r\na\r\n0\r\n\r\n"),
        400,
        "bad_request",
        "whitespace after the chunk size",
    );
    let mut many = b"0\r\n".to_vec();
    for i in 0..33 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    refused(
        &srv,
        &with(&many),
        400,
        "bad_request",
        "too many trailer fields (at most 32)",
    );
    let empty = format!(
        "POST /v1/push HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nTransfer-Encoding:\r\n\r\n0\r\n\r\n"
    );
    refused(
        &srv,
        empty.as_bytes(),
        400,
        "bad_request",
        "empty Transfer-Encoding",
    );

    // Review s22b finding 1 (request smuggling): a front end that ends a size line at a
    // bare LF reads this as one push whose second chunk holds the GET. Throng must not
    // take the GET as a request of its own: one 400, then close.
    let smuggled =
        format!("GET /v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\r\n");
    let hidden = format!("0\r\n\r\n{smuggled}");
    let body = format!("4;\naa\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len());
    only_refused(&srv, &with(body.as_bytes()), "control character");
    // Finding 2: trailer lines that end at a bare LF. A front end that wants CRLF takes
    // what follows `\n\n` as more of this request; Throng must not answer it apart.
    only_refused(
        &srv,
        &with(b"1\r\na\r\n0\r\nX: y\n\nGET /healthz HTTP/1.1\r\n\r\n"),
        "bare LF",
    );

    // A chunked body whose data is not a push is judged like any other body.
    let r = srv
        .api_conn()
        .send_raw(chunked_post("/v1/push", "{\"user\":", 3).as_bytes());
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "bad_request");
    // The server is fine.
    srv.push(json!({"user": "nobody", "data": 1}));
}

fn input_bytes(s: &Value) -> u64 {
    s["api_input_bytes"].as_u64().expect("api_input_bytes")
}

#[test]
fn chunked_bodies_count_in_the_input_budget_and_wait_for_room() {
    const LIMIT: u64 = 2_200_000;
    const BODY: usize = 900_000;
    let srv = TestServer::start(&["--api-max-buffered-bytes", "2200000"]);
    let body = json!({"user": "nobody", "data": "x".repeat(BODY)}).to_string();
    let raw = chunked_post("/v1/push", &body, 32 * 1024);
    // Each connection sends its head and most of its body, then holds the rest back until
    // one has waited for room: the bodies read so far cannot finish and free theirs.
    let part = raw.len() - 100;
    let (go, ready) = std::sync::mpsc::channel::<()>();
    let ready = std::sync::Arc::new(std::sync::Mutex::new(ready));
    let mut conns = Vec::new();
    for _ in 0..4 {
        let s = tcp(srv.api);
        let mut w = s.try_clone().expect("clone");
        let raw = raw.clone().into_bytes();
        let ready = std::sync::Arc::clone(&ready);
        // From a thread: a body that waits for room is not read, so its write blocks
        // until the server takes it.
        let writer = std::thread::spawn(move || {
            w.write_all(&raw[..part])?;
            let _ = ready.lock().map(|r| r.recv());
            w.write_all(&raw[part..])
        });
        conns.push((s, writer));
    }
    let s = srv.wait_stats("a chunked body waiting for room", |s| {
        s["counters"]["api_input_pauses"].as_u64() >= Some(1)
    });
    let held = input_bytes(&s);
    // Admitted bodies plus what those waiting read before they had to wait.
    assert!(
        held <= LIMIT + 4 * (64 * 1024),
        "held {held} past the bound: {s}"
    );
    for _ in 0..4 {
        go.send(()).expect("writers wait");
    }
    for (s, writer) in conns {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut c = HttpConn::over(s, srv.api);
        let r = c.read();
        assert_eq!(r.status, 202, "{}", r.text());
        writer.join().expect("writer").expect("write");
    }
    let s = srv.wait_stats("the buffers released", |s| input_bytes(s) < 64 * 1024);
    assert_eq!(s["counters"]["pushes_accepted"], 4, "{s}");
}

/// Review s22b finding 4: chunked bodies cut off midway (their clients close, or time out
/// while waiting for room) give back what they held of the input budget, bytes and
/// admission both: near-limit bodies are then read at once, one with `Content-Length` and
/// a chunked one that outgrows the budget (admitted only while no other body is).
#[test]
fn chunked_bodies_cut_off_midway_give_their_input_budget_back() {
    const PART: usize = 700_000;
    let limit = throng::config::MIN_API_BUFFERED_BYTES;
    let max_body = throng::config::MAX_API_BODY_BYTES;
    // A short request timeout: a body paused for room is not read, and may see its
    // client's close only then.
    let srv = TestServer::start(&[
        "--api-max-buffered-bytes",
        &limit.to_string(),
        "--api-request-timeout-ms",
        "2000",
    ]);
    // Each declares a chunk of 1 MiB and sends 700 KB of it.
    let mut raw = format!(
        "POST /v1/push HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n{max_body:x}\r\n"
    )
    .into_bytes();
    raw.resize(raw.len() + PART, b'x');
    let mut conns = Vec::new();
    for _ in 0..6 {
        let s = tcp(srv.api);
        let mut w = s.try_clone().expect("clone");
        let raw = raw.clone();
        // From a thread: a body that waits for room is not read, so its write may block.
        let writer = std::thread::spawn(move || w.write_all(&raw));
        conns.push((s, writer));
    }
    // Each asks for its whole declared chunk at once: one is read, the five others wait
    // for room (all six are in, so none comes in after the close).
    srv.wait_stats("one body read and five waiting for room", |s| {
        s["counters"]["api_input_pauses"].as_u64() >= Some(5) && input_bytes(s) >= 1_000_000
    });
    // The clients give up.
    for (s, writer) in conns {
        s.shutdown(std::net::Shutdown::Both).expect("shutdown");
        drop(s);
        // Written, or cut off by the shutdown: either way it is over.
        let _ = writer.join().expect("writer");
    }
    let s = srv.wait_stats_within(
        "the cut-off bodies' buffers released",
        Duration::from_secs(15),
        |s| input_bytes(s) == 0,
    );
    assert_eq!(s["counters"]["pushes_accepted"], 0, "{s}");
    let pauses = s["counters"]["api_input_pauses"].clone();
    // A body of the largest size fits, head and all, in what is free again.
    let head = r#"{"user":"nobody","data":""#;
    let body = format!("{head}{}\"}}", "x".repeat(max_body - head.len() - 2));
    assert_eq!(body.len(), max_body);
    let mut c = srv.api_conn();
    let r = c.request("POST", "/v1/push", Some(API_KEY), Some(&body));
    assert_eq!(r.status, 202, "{}", r.text());
    // A chunked one in small chunks: its admission grows past the budget (the framing of
    // 2,048 chunks on top of 1 MiB), so it is read on only if no other body is counted as
    // admitted, a cut-off one included.
    let body = format!("{head}{}\"}}", "x".repeat(max_body - head.len() - 2));
    let raw = chunked_post("/v1/push", &body, 512);
    assert!(raw.len() > limit, "{} bytes fit", raw.len());
    let r = c.send_raw(raw.as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    let s = srv.stats();
    assert_eq!(s["counters"]["pushes_accepted"], 2, "{s}");
    assert_eq!(
        s["counters"]["api_input_pauses"], pauses,
        "none waited: {s}"
    );
}

#[test]
fn a_head_refused_as_it_closes_gets_the_head_without_the_body() {
    // Review s23: a HEAD ending in a framing error (400, 413, 501) or a request timeout
    // (408) got the JSON body after the head, unlike every other answer to a HEAD.
    let srv = TestServer::start(&["--api-request-timeout-ms", "1000"]);
    let auth = format!("Authorization: Bearer {API_KEY}\r\n");
    for (raw, status) in [
        (
            format!("HEAD /v1/stats HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n1;\x01\r\nx\r\n0\r\n\r\n"),
            400,
        ),
        (
            format!("HEAD /v1/stats HTTP/1.1\r\n{auth}Content-Length: 2000000\r\n\r\n"),
            413,
        ),
        (
            format!("HEAD /v1/stats HTTP/1.1\r\n{auth}Transfer-Encoding: gzip\r\n\r\n"),
            501,
        ),
        (
            format!("HEAD /v1/stats HTTP/1.1\r\n{auth}Content-Length: 10\r\n\r\nabc"),
            408,
        ),
        // A head that cannot be parsed: the method is still known.
        ("HEAD /v1/stats HTTP/1.1\r\nBad Header\r\n\r\n".to_string(), 400),
    ] {
        let mut s = tcp(srv.api);
        let _ = s.write_all(raw.as_bytes());
        let all = read_to_close(&mut s);
        let text = String::from_utf8_lossy(&all).to_string();
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{raw:?}: {text:?}"
        );
        let length: usize = text
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().to_string()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(length > 0, "the GET's length is told: {text:?}");
        assert!(text.ends_with("\r\n\r\n"), "no body after the head: {text:?}");
    }
}
