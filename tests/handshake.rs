//! docs/protocol.md 1.1 and 1.2: the upgrade, authentication, the welcome, and every refusal.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

#[test]
fn welcome_contents() {
    let srv = TestServer::start(&[
        "--ping-interval-ms",
        "1500",
        "--idle-timeout-ms",
        "4500",
        "--client-rate",
        "7",
        "--max-message-size",
        "9000",
        "--max-client-data-bytes",
        "3000",
    ]);
    let c = srv.connect("alice");
    let w = &c.welcome;
    assert_eq!(w["type"], "welcome");
    assert!(
        w["session"].as_str().is_some_and(|s| !s.is_empty()),
        "session: {w}"
    );
    assert_eq!(w["user"], "alice");
    assert!(
        w["epoch"].as_str().is_some_and(|s| !s.is_empty()),
        "epoch: {w}"
    );
    assert_eq!(w["seq"], json!(0), "fresh user has seq 0: {w}");
    assert_eq!(w["ping_interval_ms"], json!(1500));
    assert_eq!(w["idle_timeout_ms"], json!(4500));
    // The limits a client paces and sizes its messages to.
    assert_eq!(w["client_rate"], json!(7));
    assert_eq!(w["max_message_size"], json!(9000));
    assert_eq!(w["max_client_data_bytes"], json!(3000));
    assert_eq!(
        w.as_object().map(|o| o.len()),
        Some(10),
        "no other field: {w}"
    );

    // A second session has a different session id, the same user epoch.
    let c2 = srv.connect("alice");
    assert_ne!(c2.welcome["session"], w["session"]);
    assert_eq!(c2.welcome["epoch"], w["epoch"]);
    srv.wait_connections(2);
}

#[test]
fn welcome_seq_reflects_earlier_pushes() {
    let srv = TestServer::start(&[]);
    let mut a = srv.connect("bob");
    srv.push_wait(json!({"user": "bob", "data": 1}));
    srv.push_wait(json!({"user": "bob", "data": 2}));
    assert_eq!(a.recv()["seq"], 1);
    assert_eq!(a.recv()["seq"], 2);
    let b = srv.connect("bob");
    assert_eq!(
        b.welcome["seq"],
        json!(2),
        "welcome seq is the last push seq"
    );
}

#[test]
fn token_in_query_parameter() {
    let srv = TestServer::start(&[]);
    let t = token("carol");
    let c = Client::connect_with(srv.ws, &format!("/ws?token={t}"), &[]).expect("query token");
    assert_eq!(c.welcome["user"], "carol");
}

#[test]
fn integer_sub_is_decimal_string() {
    let srv = TestServer::start(&[]);
    let t = token_with(json!({"sub": 12345, "exp": now_secs() + 600}));
    let mut c = Client::connect(srv.ws, &t).expect("integer sub");
    assert_eq!(c.welcome["user"], "12345");
    // Direct pushes address the decimal string.
    let r = srv.push_wait(json!({"user": "12345", "data": "x"}));
    assert_eq!(r["delivered"], 1);
    assert_eq!(c.recv()["data"], "x");
}

#[test]
fn handshakes_are_counted() {
    let srv = TestServer::start(&[]);
    let before = srv.stats();
    let _c = srv.connect("u");
    let r = raw_http(srv.ws, &upgrade_request(srv.ws, "/ws", &[], &[]));
    r.assert_refusal(401, "missing_token");
    srv.wait_stats("counters", |s| {
        s["counters"]["handshakes_accepted"].as_u64() == Some(1)
            && s["counters"]["handshakes_refused"].as_u64() >= Some(1)
    });
    let s = srv.wait_online(1, 1);
    assert_eq!(before["counters"]["handshakes_accepted"], 0);
    assert_eq!(s["connections"], 1, "{s}");
    assert_eq!(s["users_online"], 1, "{s}");
}

// ---- 401 -------------------------------------------------------------------------------

#[test]
fn refuse_missing_token() {
    let srv = TestServer::start(&[]);
    let r = raw_http(srv.ws, &upgrade_request(srv.ws, "/ws", &[], &[]));
    r.assert_refusal(401, "missing_token");
}

#[test]
fn refuse_bad_signature() {
    let srv = TestServer::start(&[]);
    let t = sign(
        Algorithm::HS256,
        "not-the-secret",
        json!({"sub": "a", "exp": now_secs() + 600}),
    );
    let r = raw_http(
        srv.ws,
        &upgrade_request(srv.ws, "/ws", &[&format!("Authorization: Bearer {t}")], &[]),
    );
    r.assert_refusal(401, "invalid_token");
}

#[test]
fn refuse_wrong_algorithm() {
    let srv = TestServer::start(&[]);
    let t = sign(
        Algorithm::HS384,
        SECRET,
        json!({"sub": "a", "exp": now_secs() + 600}),
    );
    let r = raw_http(
        srv.ws,
        &upgrade_request(srv.ws, "/ws", &[&format!("Authorization: Bearer {t}")], &[]),
    );
    r.assert_refusal(401, "invalid_token");
}

#[test]
fn refuse_garbage_token() {
    let srv = TestServer::start(&[]);
    let r = raw_http(
        srv.ws,
        &upgrade_request(srv.ws, "/ws", &["Authorization: Bearer not.a.jwt"], &[]),
    );
    r.assert_refusal(401, "invalid_token");
}

#[test]
fn refuse_token_without_sub() {
    let srv = TestServer::start(&[]);
    let t = token_with(json!({"exp": now_secs() + 600}));
    let r = raw_http(
        srv.ws,
        &upgrade_request(srv.ws, "/ws", &[&format!("Authorization: Bearer {t}")], &[]),
    );
    r.assert_refusal(401, "invalid_token");
}

#[test]
fn refuse_expired_token() {
    let srv = TestServer::start(&[]);
    // Well past the default 30 s leeway.
    let t = token_with(json!({"sub": "a", "exp": now_secs() - 3600}));
    let r = raw_http(
        srv.ws,
        &upgrade_request(srv.ws, "/ws", &[&format!("Authorization: Bearer {t}")], &[]),
    );
    r.assert_refusal(401, "token_expired");
    // Same through the query parameter.
    let r = raw_http(
        srv.ws,
        &upgrade_request(srv.ws, &format!("/ws?token={t}"), &[], &[]),
    );
    r.assert_refusal(401, "token_expired");
}

// ---- 403 -------------------------------------------------------------------------------

#[test]
fn origin_allow_list() {
    let srv = TestServer::start(&[
        "--allowed-origins",
        "https://good.example,https://also.example",
    ]);
    let auth = format!("Authorization: Bearer {}", token("o"));
    let r = raw_http(
        srv.ws,
        &upgrade_request(srv.ws, "/ws", &[&auth, "Origin: https://evil.example"], &[]),
    );
    r.assert_refusal(403, "forbidden_origin");

    // An allowed origin and no origin at all are accepted.
    let t = token("o");
    let c = Client::connect_with(
        srv.ws,
        "/ws",
        &[
            ("Authorization", &format!("Bearer {t}")),
            ("Origin", "https://also.example"),
        ],
    )
    .expect("allowed origin");
    assert_eq!(c.welcome["user"], "o");
    let c2 = Client::connect(srv.ws, &t).expect("no origin");
    assert_eq!(c2.welcome["user"], "o");
}

// ---- 400 / 404 / 426 -------------------------------------------------------------------

#[test]
fn refuse_not_an_upgrade() {
    let srv = TestServer::start(&[]);
    let auth = format!("Authorization: Bearer {}", token("a"));
    // Plain GET without Upgrade/Connection.
    let r = raw_http(
        srv.ws,
        &upgrade_request(srv.ws, "/ws", &[&auth], &["Upgrade", "Connection"]),
    );
    r.assert_refusal(400, "bad_request");
}

#[test]
fn refuse_missing_key() {
    let srv = TestServer::start(&[]);
    let auth = format!("Authorization: Bearer {}", token("a"));
    let r = raw_http(
        srv.ws,
        &upgrade_request(srv.ws, "/ws", &[&auth], &["Sec-WebSocket-Key"]),
    );
    r.assert_refusal(400, "bad_request");
}

#[test]
fn refuse_not_get() {
    let srv = TestServer::start(&[]);
    let auth = format!("Authorization: Bearer {}", token("a"));
    let mut req = upgrade_request(srv.ws, "/ws", &[&auth], &[]);
    req.splice(0..3, b"PUT".iter().copied());
    let r = raw_http(srv.ws, &req);
    r.assert_refusal(400, "bad_request");
}

#[test]
fn refuse_wrong_version() {
    let srv = TestServer::start(&[]);
    let auth = format!("Authorization: Bearer {}", token("a"));
    let r = raw_http(
        srv.ws,
        &upgrade_request(
            srv.ws,
            "/ws",
            &[&auth, "Sec-WebSocket-Version: 8"],
            &["Sec-WebSocket-Version"],
        ),
    );
    r.assert_refusal(426, "unsupported_version");
    assert_eq!(
        r.header("sec-websocket-version"),
        Some("13"),
        "426 must advertise Sec-WebSocket-Version: 13; headers {:?}",
        r.headers
    );
}

#[test]
fn refuse_wrong_path() {
    let srv = TestServer::start(&[]);
    let auth = format!("Authorization: Bearer {}", token("a"));
    let r = raw_http(srv.ws, &upgrade_request(srv.ws, "/chat", &[&auth], &[]));
    r.assert_refusal(404, "not_found");
    let r = raw_http(srv.ws, &upgrade_request(srv.ws, "/", &[&auth], &[]));
    r.assert_refusal(404, "not_found");
}

// ---- 431 and the handshake deadline ----------------------------------------------------

#[test]
fn refuse_oversized_head() {
    let srv = TestServer::start(&[]);
    let auth = format!("Authorization: Bearer {}", token("a"));
    let pad = format!("X-Pad: {}", "p".repeat(9 * 1024));
    let r = raw_http(srv.ws, &upgrade_request(srv.ws, "/ws", &[&auth, &pad], &[]));
    r.assert_refusal(431, "header_too_large");
}

#[test]
fn head_at_limit_is_accepted() {
    // A head a little under 8 KiB is fine.
    let srv = TestServer::start(&[]);
    let t = token("a");
    let pad = "p".repeat(7 * 1024);
    let c = Client::connect_with(
        srv.ws,
        "/ws",
        &[("Authorization", &format!("Bearer {t}")), ("X-Pad", &pad)],
    )
    .expect("7 KiB head accepted");
    assert_eq!(c.welcome["user"], "a");
}

#[test]
fn slow_head_is_closed_after_handshake_timeout() {
    let srv = TestServer::start(&["--handshake-timeout-ms", "300"]);
    let mut s = tcp(srv.ws);
    let start = Instant::now();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    // Never finish the head: the server must close the socket (it may send a response first).
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("socket still open after {:?}", start.elapsed())
            }
            Err(_) => break,
        }
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed too early ({took:?}) for a 300 ms handshake timeout"
    );
    assert!(took < Duration::from_secs(3), "closed too late: {took:?}");
}

#[test]
fn slow_head_trickled_is_closed_too() {
    // Bytes arriving slowly do not extend the deadline: the head must be complete in time.
    let srv = TestServer::start(&["--handshake-timeout-ms", "300"]);
    let mut s = tcp(srv.ws);
    let start = Instant::now();
    let head = b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    for b in head.iter() {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !closed {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!(
                        "trickled head kept the socket open for {:?}",
                        start.elapsed()
                    )
                }
                Err(_) => break,
            }
        }
    }
    assert!(start.elapsed() < Duration::from_secs(4));
}

// ---- 503 / 429 -------------------------------------------------------------------------

#[test]
fn refuse_over_capacity() {
    let srv = TestServer::start(&["--max-connections", "2"]);
    let _a = srv.connect("a");
    let _b = srv.connect("b");
    srv.wait_connections(2);
    let auth = format!("Authorization: Bearer {}", token("c"));
    let r = raw_http(srv.ws, &upgrade_request(srv.ws, "/ws", &[&auth], &[]));
    r.assert_refusal(503, "over_capacity");
    let ra = r.header("retry-after").expect("503 needs Retry-After");
    assert!(
        ra.parse::<u64>().is_ok(),
        "Retry-After must be seconds: {ra:?}"
    );
}

#[test]
fn refuse_when_half_open_handshakes_fill_capacity() {
    // Sockets that start a request and stall count against max_connections until their
    // handshake deadline; the next client is answered 503, not dropped silently. (Ones
    // that say nothing at all wait in the kernel: the listener defers accepting.)
    let srv = TestServer::start(&["--max-connections", "2", "--handshake-timeout-ms", "30000"]);
    let mut stalled1 = tcp(srv.ws);
    let mut stalled2 = tcp(srv.ws);
    stalled1.write_all(b"GET /").unwrap();
    stalled2.write_all(b"GET /").unwrap();
    srv.wait_stats("2 pending handshakes", |s| s["pending_handshakes"] == 2);
    let auth = format!("Authorization: Bearer {}", token("c"));
    let r = raw_http(srv.ws, &upgrade_request(srv.ws, "/ws", &[&auth], &[]));
    r.assert_refusal(503, "over_capacity");
    assert!(r.header("retry-after").is_some(), "503 needs Retry-After");
    assert!(
        r.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("handshakes in progress")),
        "refused by the acceptor's pending cap: {}",
        r.json()
    );
}

#[test]
fn capacity_frees_when_a_client_leaves() {
    let srv = TestServer::start(&["--max-connections", "1"]);
    let a = srv.connect("a");
    srv.wait_connections(1);
    drop(a);
    srv.wait_connections(0);
    let b = srv.connect("b");
    assert_eq!(b.welcome["user"], "b");
}

#[test]
fn refuse_per_ip_connection_limit() {
    let srv = TestServer::start(&["--max-connections-per-ip", "2"]);
    let _a = srv.connect("a");
    let _b = srv.connect("b");
    srv.wait_connections(2);
    let auth = format!("Authorization: Bearer {}", token("c"));
    let r = raw_http(srv.ws, &upgrade_request(srv.ws, "/ws", &[&auth], &[]));
    r.assert_refusal(429, "rate_limited");
    let ra = r.header("retry-after").expect("429 needs Retry-After");
    assert!(
        ra.parse::<u64>().is_ok(),
        "Retry-After must be seconds: {ra:?}"
    );
}

#[test]
fn refuse_per_ip_connect_rate() {
    let srv = TestServer::start(&["--connect-rate-per-ip", "2"]);
    let auth = format!("Authorization: Bearer {}", token("r"));
    let mut statuses = Vec::new();
    let mut refusal = None;
    for _ in 0..10 {
        let r = raw_http(srv.ws, &upgrade_request(srv.ws, "/ws", &[&auth], &[]));
        statuses.push(r.status);
        if r.status == 429 && refusal.is_none() {
            refusal = Some(r);
        }
    }
    assert_eq!(
        statuses[0], 101,
        "first connection is within the rate: {statuses:?}"
    );
    let r =
        refusal.unwrap_or_else(|| panic!("10 quick connects at 2/s: none refused: {statuses:?}"));
    r.assert_refusal(429, "rate_limited");
    assert!(r.header("retry-after").is_some(), "429 needs Retry-After");
}

// ---- accepted variants -----------------------------------------------------------------

#[test]
fn browser_style_headers_accepted() {
    // Firefox sends `Connection: keep-alive, Upgrade`; header names and the Upgrade value
    // are case-insensitive.
    let srv = TestServer::start(&[]);
    let t = token("fx");
    let req = format!(
        "GET /ws?token={t} HTTP/1.1\r\nhost: {}\r\nupgrade: WebSocket\r\n\
         connection: keep-alive, Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         sec-websocket-version: 13\r\nOrigin: http://localhost\r\n\r\n",
        srv.ws
    );
    let mut s = tcp(srv.ws);
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while find(&buf, b"\r\n\r\n").is_none() {
        let n = s.read(&mut chunk).expect("response");
        assert!(n > 0, "EOF: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

#[test]
fn query_token_among_other_parameters() {
    let srv = TestServer::start(&[]);
    let t = token("q");
    let c = Client::connect_with(srv.ws, &format!("/ws?foo=bar&token={t}&x=1"), &[])
        .expect("token among other query parameters");
    assert_eq!(c.welcome["user"], "q");
}

#[test]
fn head_split_across_writes_within_timeout() {
    let srv = TestServer::start(&["--handshake-timeout-ms", "2000"]);
    let auth = format!("Authorization: Bearer {}", token("split"));
    let req = upgrade_request(srv.ws, "/ws", &[&auth], &[]);
    let mut s = tcp(srv.ws);
    for part in req.chunks(20) {
        s.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut raw_head = Vec::new();
    let mut chunk = [0u8; 4096];
    while find(&raw_head, b"\r\n\r\n").is_none() {
        let n = s.read(&mut chunk).expect("response");
        assert!(n > 0);
        raw_head.extend_from_slice(&chunk[..n]);
    }
    assert!(
        raw_head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&raw_head)
    );
}

#[test]
fn frame_sent_together_with_the_upgrade_request() {
    // Bytes after the request head (a client frame sent eagerly) must not be lost.
    let srv = TestServer::start(&[]);
    let auth = format!("Authorization: Bearer {}", token("eager"));
    let mut bytes = upgrade_request(srv.ws, "/ws", &[&auth], &[]);
    bytes.extend(encode_frame(
        true,
        0,
        OP_TEXT,
        br#"{"type":"ping","ref":"early"}"#,
        Some([1, 2, 3, 4]),
    ));
    let mut s = tcp(srv.ws);
    s.write_all(&bytes).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + IO_TIMEOUT;
    // Expect the 101, then the welcome, then the pong.
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if text.contains(r#""ref":"early""#) {
            assert!(text.starts_with("HTTP/1.1 101"), "{text}");
            let w = text.find("welcome").expect("welcome first");
            let p = text.find("pong").expect("pong");
            assert!(w < p, "welcome before pong: {text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no pong for the early frame: {text:?}"
        );
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "EOF: {text:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}
