//! TLS (wss://) on the client listener, black box: real servers with generated
//! certificates, real clients over loopback (Python `websockets` and `ssl`, `openssl
//! s_client`, rustls with tungstenite, and rustls driven by hand for raw records), the
//! handshake deadline and per-IP limit, slow consumers, tampered records, certificate
//! reload on SIGHUP and bad files at start.
//!
//! The Python clients need `python3` with the `websockets` package, and the s_client test
//! the `openssl` command: where they are missing those tests fail saying what to install.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::tls::*;
use common::*;
use serde_json::{json, Value};

/// A token for `user` that may subscribe to the topics these tests use.
fn tok(user: &str) -> String {
    token_with(json!({"sub": user, "exp": now_secs() + 3600, "topics": ["room:*", "feed"]}))
}

/// A TCP connection with a small receive buffer, so the server's writes block early.
fn small_buffer_stream(addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn wait_pending(srv: &TestServer, n: u64) {
    srv.wait_stats(&format!("{n} pending handshakes"), |s| {
        s["pending_handshakes"].as_u64() == Some(n)
    });
}

const MASK: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

fn handshakes(api: SocketAddr, outcome: &str) -> u64 {
    metric(
        api,
        &format!("throng_handshakes_total{{outcome=\"{outcome}\"}}"),
    )
}

/// 100 000 characters that change along the way, so a reordered or lost record shows.
fn big_text() -> String {
    (0..100_000u32)
        .map(|i| char::from(b'a' + ((i * 7 + i / 997) % 26) as u8))
        .collect()
}

// ---- Python websockets over wss:// -----------------------------------------------------

fn python_wss(version: &str, expect_version: &str) {
    require_python_websockets();
    let dir = TlsDir::new("py");
    let srv = dir.server(&[]);
    let big = big_text();
    let pushes = [
        json!({"topic": "room:1", "data": "hello", "id": "p1"}),
        json!({"topic": "room:1", "data": big, "id": "p2"}),
        json!({"topic": "room:1", "data": {"n": [1, 2, 3], "s": "ü€"}, "id": "p3"}),
        json!({"topic": "room:1", "data": "last", "id": "p4"}),
    ];
    let port = srv.ws.port().to_string();
    let token = tok("py");
    let n = pushes.len().to_string();
    let mut py = PyClient::connect(
        "ws",
        &port,
        dir.cert_path(),
        &token,
        version,
        &["--topic", "room:1", "--pushes", &n],
    );
    let w = py.expect("welcome");
    assert_eq!(w["msg"]["type"], "welcome", "{w}");
    assert_eq!(w["msg"]["user"], "py", "{w}");
    assert_eq!(w["tls_version"], expect_version, "{w}");
    let s = py.expect("subscribed");
    assert_eq!(s["msg"]["topic"], "room:1", "{s}");
    assert_eq!(s["msg"]["ref"], "s1", "{s}");

    for p in &pushes {
        srv.push(p.clone());
    }
    for (i, p) in pushes.iter().enumerate() {
        let e = py.expect("push");
        let m = &e["msg"];
        assert_eq!(m["topic"], "room:1");
        assert_eq!(m["id"], p["id"], "pushes arrive in order");
        assert_eq!(m["seq"], i as u64 + 1, "{}", e["raw_len"]);
        assert!(m["data"] == p["data"], "push {} arrived altered", p["id"]);
    }
    // The client closes with 1000: the server answers with 1000, then close_notify and
    // FIN, so Python sees a clean close without waiting out its close timeout.
    let c = py.expect("closed");
    assert_eq!(c["sent"], 1000, "{c}");
    assert_eq!(
        c["rcvd"], 1000,
        "the server answers the close with 1000: {c}"
    );
    assert_eq!(c["rcvd_then_sent"], false, "the client closed first: {c}");
    assert_eq!(c["close_code"], 1000, "{c}");
    assert_eq!(c["recv_exc"], "ConnectionClosedOK", "{c}");
    assert_eq!(c["cause"], Value::Null, "a clean TLS close, no error: {c}");
    assert_eq!(
        c["log_warnings"],
        json!([]),
        "websockets logged problems: {c}"
    );
    assert!(
        c["close_secs"].as_f64().unwrap() < 4.0,
        "the server closed the connection promptly after the close frame: {c}"
    );
    py.finish();
    srv.wait_connections(0);
    assert_eq!(metric(srv.api, "throng_tls_handshakes_full_total"), 1);
    assert_eq!(metric(srv.api, "throng_tls_record_errors_total"), 0);
}

#[test]
fn python_websockets_wss_tls13() {
    python_wss("1.3", "TLSv1.3");
}

#[test]
fn python_websockets_wss_tls12() {
    python_wss("1.2", "TLSv1.2");
}

// ---- Session resumption with Python's ssl ----------------------------------------------

#[test]
fn python_ssl_session_resumption_is_counted() {
    require_python_websockets();
    let dir = TlsDir::new("resume");
    let srv = dir.server(&[]);
    let port = srv.ws.port().to_string();
    let token = tok("resumer");
    let mut done = 0;
    for (version, name) in [("1.3", "TLSv1.3"), ("1.2", "TLSv1.2")] {
        let mut py = PyClient::connect("resume", &port, dir.cert_path(), &token, version, &[]);
        let first = py.expect("first");
        assert_eq!(first["tls_version"], name, "{first}");
        assert_eq!(first["session_reused"], false, "{first}");
        assert_eq!(
            first["has_ticket"], true,
            "the server issued a ticket: {first}"
        );
        let second = py.expect("second");
        assert_eq!(second["tls_version"], name, "{second}");
        assert_eq!(
            second["session_reused"], true,
            "TLS {version}: the second connection resumes the first one's session: {second}"
        );
        py.finish();
        done += 1;
        wait_metric(srv.api, "throng_tls_handshakes_full_total", done, WAIT);
        wait_metric(srv.api, "throng_tls_handshakes_resumed_total", done, WAIT);
    }
    let s = srv.stats();
    assert_eq!(s["tls"]["handshakes_full"], 2, "{s}");
    assert_eq!(s["tls"]["handshakes_resumed"], 2, "{s}");
    assert_eq!(s["tls"]["handshakes_failed"], 0, "{s}");
    assert_eq!(s["counters"]["handshakes_accepted"], 4, "{s}");
}

// ---- openssl s_client ------------------------------------------------------------------

#[test]
fn openssl_s_client_upgrades_and_pings() {
    require_openssl();
    let dir = TlsDir::new("sclient");
    let srv = dir.server(&[]);
    let cases: [&[&str]; 6] = [
        &["-tls1_3"],
        &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"],
        &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
        &["-tls1_2"],
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"],
    ];
    for (i, flags) in cases.iter().enumerate() {
        let user = format!("openssl-{i}");
        let mut s = SClient::spawn(srv.ws, dir.cert_path(), flags);
        let auth = format!("Authorization: Bearer {}", token(&user));
        s.write(&upgrade_request(srv.ws, "/ws", &[&auth], &[]));
        let status = s.wait_for(0, b"HTTP/1.1 101 ");
        assert_eq!(status, 0, "{flags:?}: the 101 comes first: {:?}", s.buf);
        let head_end = s.wait_for(0, b"\r\n\r\n") + 4;
        let head = String::from_utf8_lossy(&s.buf[..head_end]).to_string();
        let accept = tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        assert!(head.contains(&accept), "{flags:?}: {head}");
        let (welcome, end) = s.frame_at(head_end);
        assert_eq!(welcome.opcode, OP_TEXT, "{flags:?}");
        assert!(welcome.fin);
        let w = welcome.json();
        assert_eq!(w["type"], "welcome", "{flags:?}: {w}");
        assert_eq!(w["user"], user.as_str(), "{flags:?}: {w}");
        // And back: a masked frame typed through s_client gets its pong.
        let ping = json!({"type": "ping", "ref": i}).to_string();
        s.write(&encode_frame(true, 0, OP_TEXT, ping.as_bytes(), MASK));
        let (pong, _) = s.frame_at(end);
        assert_eq!(pong.json(), json!({"type": "pong", "ref": i}), "{flags:?}");
    }
    let full = metric(srv.api, "throng_tls_handshakes_full_total");
    assert_eq!(full, cases.len() as u64);
}

#[test]
fn an_rsa_certificate_serves_tls12_and_tls13() {
    require_openssl();
    let dir = TlsDir::new("rsa");
    // rcgen (on ring) cannot make RSA keys: openssl writes the pair over the ECDSA one.
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-keyout", dir.key_path(), "-out", dir.cert_path()])
        .output()
        .expect("run openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let srv = dir.server(&[]);
    let cases: [&[&str]; 2] = [
        &["-tls1_3"],
        &["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
    ];
    for (i, flags) in cases.iter().enumerate() {
        let user = format!("rsa-{i}");
        let mut s = SClient::spawn(srv.ws, dir.cert_path(), flags);
        let auth = format!("Authorization: Bearer {}", token(&user));
        s.write(&upgrade_request(srv.ws, "/ws", &[&auth], &[]));
        assert_eq!(s.wait_for(0, b"HTTP/1.1 101 "), 0, "{flags:?}: {:?}", s.buf);
        let head_end = s.wait_for(0, b"\r\n\r\n") + 4;
        let (welcome, _) = s.frame_at(head_end);
        assert_eq!(welcome.json()["user"], user.as_str(), "{flags:?}");
    }
    assert_eq!(metric(srv.api, "throng_tls_handshakes_full_total"), 2);
}

// ---- Not TLS on the TLS port -----------------------------------------------------------

#[test]
fn plain_http_and_garbage_on_the_tls_port_fail_alone() {
    let dir = TlsDir::new("garbage");
    let srv = dir.server(&[]);
    let cfg = dir.client(None);
    let mut before = TlsClient::connect(srv.ws, &cfg, &tok("before")).expect("TLS client");
    before.subscribe("room:g");

    // Plain HTTP: a plaintext 400 that says what to do.
    let auth = format!("Authorization: Bearer {}", token("plain"));
    let r = raw_http(srv.ws, &upgrade_request(srv.ws, "/ws", &[&auth], &[]));
    r.assert_refusal(400, "bad_request");
    let msg = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("wss://"), "the 400 names the problem: {msg:?}");
    assert!(msg.contains("TLS"), "{msg:?}");

    // Garbage: bytes that are no TLS record, and a handshake record with random content.
    let mut rng = Xorshift(0x7115_eed5);
    let mut junk = rng.bytes(300);
    junk[0] = 0;
    let mut fake_hello = vec![22, 3, 1, 0, 200];
    fake_hello.extend(rng.bytes(200));
    for bytes in [junk, fake_hello] {
        let mut s = tcp(srv.ws);
        s.write_all(&bytes).unwrap();
        let got = read_to_close(&mut s);
        assert!(
            got.is_empty() || got[0] == 21,
            "the server closes, at most with a TLS alert: {got:?}"
        );
    }

    assert_eq!(handshakes(srv.api, "tls_failed"), 3);
    assert_eq!(metric(srv.api, "throng_tls_handshakes_failed_total"), 3);
    assert_eq!(
        handshakes(srv.api, "bad_request"),
        0,
        "counted as tls_failed only"
    );

    // The server is fine: the client from before gets a push, a new one connects.
    let r = srv.push_wait(json!({"topic": "room:g", "data": "still here"}));
    assert_eq!(r["delivered"], 1, "{r}");
    assert_eq!(before.recv()["data"], "still here");
    let mut after = TlsClient::connect(srv.ws, &cfg, &tok("after")).expect("TLS client after");
    after.subscribe("room:g");
    srv.push(json!({"topic": "room:g", "data": "both"}));
    assert_eq!(before.recv()["data"], "both");
    assert_eq!(after.recv()["data"], "both");
    wait_pending(&srv, 0);
}

#[test]
fn refusals_are_answered_inside_tls() {
    let dir = TlsDir::new("refusal");
    let srv = dir.server(&[]);
    let cfg = dir.client(None);
    let bad = format!("Authorization: Bearer {}x", token("mallory"));
    let good = format!("Authorization: Bearer {}", token("alice"));
    let cases: [(Vec<u8>, u16); 3] = [
        (upgrade_request(srv.ws, "/ws", &[&bad], &[]), 401),
        (upgrade_request(srv.ws, "/ws", &[], &[]), 401),
        (upgrade_request(srv.ws, "/elsewhere", &[&good], &[]), 404),
    ];
    for (request, status) in cases {
        let mut c = RawTls::connect(srv.ws, &cfg);
        c.send(&request);
        let (plain, end) = c.read_all();
        let text = String::from_utf8_lossy(&plain).to_string();
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "expected {status} inside TLS, got {text:?}"
        );
        let body = &text[text.find("\r\n\r\n").expect("a complete head") + 4..];
        let j: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(j["error"].is_string() && j["message"].is_string(), "{j}");
        assert_eq!(
            end,
            TlsEnd::CloseNotify,
            "the refusal ends with close_notify"
        );
    }
    assert_eq!(handshakes(srv.api, "tls_failed"), 0);
    assert_eq!(metric(srv.api, "throng_tls_handshakes_full_total"), 3);
    wait_pending(&srv, 0);
}

#[test]
fn many_tls_clients_connect_at_once() {
    let dir = TlsDir::new("many");
    let srv = dir.server(&["--shards", "4"]);
    let cfg = dir.client(None);
    let n = 32;
    let ws = srv.ws;
    let joins: Vec<_> = (0..n)
        .map(|i| {
            let cfg = std::sync::Arc::clone(&cfg);
            std::thread::spawn(move || {
                TlsClient::connect(ws, &cfg, &token(&format!("many-{i}")))
                    .unwrap_or_else(|e| panic!("client {i}: {e}"))
            })
        })
        .collect();
    let mut clients: Vec<TlsClient> = joins
        .into_iter()
        .map(|j| j.join().expect("client thread"))
        .collect();
    srv.wait_connections(n as u64);
    let r = srv.push_wait(json!({"broadcast": true, "data": "all of you"}));
    assert_eq!(r["delivered"], n, "{r}");
    for c in &mut clients {
        assert_eq!(c.recv()["data"], "all of you");
    }
    assert_eq!(
        metric(srv.api, "throng_tls_handshakes_full_total"),
        n as u64
    );
}

// ---- Handshake deadline and per-IP limit -----------------------------------------------

#[test]
fn handshake_deadline_covers_tls() {
    let dir = TlsDir::new("deadline");
    let srv = dir.server(&["--handshake-timeout-ms", "1000"]);
    let cfg = dir.client(None);
    let start = Instant::now();
    // Sends nothing.
    let mut silent = tcp(srv.ws);
    // Sends half a ClientHello.
    let mut half = tcp(srv.ws);
    half.write_all(&client_hello_prefix(&cfg, 50)).unwrap();
    // Completes the TLS handshake, then sends no upgrade request.
    let mut mute = RawTls::connect(srv.ws, &cfg);

    for (what, s) in [("silent", &mut silent), ("half hello", &mut half)] {
        let got = read_to_close(s);
        let took = start.elapsed();
        assert!(
            got.is_empty(),
            "{what}: nothing is sent before the close: {got:?}"
        );
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(4),
            "{what}: closed after {took:?} with a 1 s deadline"
        );
    }
    mute.expect_end_without_data();
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "TLS done, no request: closed after {took:?}"
    );

    wait_pending(&srv, 0);
    assert_eq!(handshakes(srv.api, "timeout"), 3);
    assert_eq!(metric(srv.api, "throng_tls_handshakes_failed_total"), 0);
    // A prompt client still gets in.
    TlsClient::connect(srv.ws, &cfg, &tok("prompt")).expect("prompt client");
}

#[test]
fn per_ip_limit_counts_tls_handshakes_in_progress() {
    let dir = TlsDir::new("perip");
    let srv = dir.server(&[
        "--max-connections-per-ip",
        "3",
        "--handshake-timeout-ms",
        "30000",
    ]);
    let cfg = dir.client(None);
    // Three handshakes in progress: the first bytes of a ClientHello, then a stall. (A
    // socket that says nothing waits in the kernel: the listener defers accepting.)
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut half = tcp(srv.ws);
            half.write_all(&client_hello_prefix(&cfg, 50)).unwrap();
            half
        })
        .collect();
    wait_pending(&srv, 3);

    // The 30 s window: a refusal at all proves it came at accept. A TLS client cannot
    // read a plaintext answer, so it sees the connection end during its handshake.
    match TlsClient::connect(srv.ws, &cfg, &tok("fourth")) {
        Ok(c) => panic!(
            "a fourth connection from the IP was admitted: {}",
            c.welcome
        ),
        Err(e) => assert!(e.contains("TLS handshake"), "{e}"),
    }
    assert_eq!(handshakes(srv.api, "rate_limited"), 1);
    wait_pending(&srv, 3);

    drop(held);
    wait_pending(&srv, 0);
    let mut c = TlsClient::connect(srv.ws, &cfg, &tok("admitted")).expect("admitted after");
    c.subscribe("room:ip");
    srv.wait_connections(1);
}

// ---- Slow consumer ---------------------------------------------------------------------

#[test]
fn slow_tls_consumer_is_closed_while_another_gets_every_push() {
    let dir = TlsDir::new("slow");
    let srv = dir.server(&["--max-outbound-bytes", "131072"]);
    let cfg = dir.client(None);
    let stream = tls_handshake(small_buffer_stream(srv.ws), &cfg).expect("slow handshake");
    let mut slow = TlsClient::over(stream, srv.ws, &tok("slow")).expect("slow client");
    slow.subscribe("feed");
    let mut healthy = TlsClient::connect(srv.ws, &cfg, &tok("healthy")).expect("healthy");
    healthy.subscribe("feed");
    srv.wait_connections(2);

    let (tx, rx) = mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || loop {
        match healthy.try_recv(Duration::from_secs(10)) {
            Ok(Some(m)) => {
                let last = m["data"] == "end";
                if tx.send(m).is_err() || last {
                    return healthy;
                }
            }
            Ok(None) => panic!("healthy: no push within 10 s"),
            Err(c) => panic!("healthy: connection closed: {c:?}"),
        }
    });

    let data = "y".repeat(64 * 1024);
    let mut api = srv.api_conn();
    let mut seq = 0u64;
    let mut push = |id: String, data: &str| {
        seq += 1;
        let body = json!({"topic": "feed", "data": data, "id": id}).to_string();
        let r = api.request("POST", "/v1/push", Some(API_KEY), Some(&body));
        assert_eq!(r.status, 202, "push {id}: {}", r.text());
        let m = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("the healthy client did not get {id}: {e}"));
        assert_eq!(m["id"], id.as_str(), "in order, none lost");
        assert_eq!(m["seq"], seq);
        assert_eq!(m["data"].as_str().map(str::len), Some(data.len()));
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    loop {
        i += 1;
        push(format!("p{i}"), &data);
        if srv.counter("slow_consumer_closes") >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline && i < 400,
            "no slow-consumer close after {i} pushes of 64 KiB; stats {}",
            srv.stats()
        );
    }
    for j in 1..=3 {
        push(format!("after{j}"), &data);
    }
    push("end".into(), "end");
    let _healthy = reader.join().expect("healthy reader");

    // The slow reader gets what was sent before the close, every record intact, then 4008
    // or the end of the socket.
    let closed = slow.expect_close();
    assert!(
        closed == Closed::Code(Some(4008)) || closed == Closed::Eof,
        "slow consumer: {closed:?}"
    );
    srv.wait_connections(1);
    assert_eq!(srv.counter("slow_consumer_closes"), 1);
    assert_eq!(metric_sum(srv.api, "throng_slow_consumer_closes_total"), 1);
    assert_eq!(metric(srv.api, "throng_tls_record_errors_total"), 0);
}

// ---- Client to server over TLS ---------------------------------------------------------

#[test]
fn a_partial_record_is_held_and_counted_until_the_rest_comes() {
    // The shard keeps one incomplete record per TLS connection between reads; it counts in
    // `partial_bytes` (and the process budget) while held, and nothing of it is acted on.
    let dir = TlsDir::new("partial");
    let srv = dir.server(&[]);
    let cfg = dir.client(Some(Version::Tls13));
    let mut c = RawTls::upgraded(srv.ws, &cfg, &tok("halves"));
    let msg = json!({"type": "subscribe", "topic": "room:halves", "ref": "h"}).to_string();
    let record = c.seal(&encode_frame(true, 0, OP_TEXT, msg.as_bytes(), MASK));
    let (first, rest) = record.split_at(record.len() / 2);
    c.send_raw(first);
    let s = srv.wait_stats("half a record held", |s| {
        s["partial_bytes"].as_u64() >= Some(first.len() as u64)
    });
    assert_eq!(s["topics"], 0, "nothing acted on yet: {s}");
    c.send_raw(rest);
    let m = c.read_json();
    assert_eq!(
        (&m["type"], &m["topic"]),
        (&json!("subscribed"), &json!("room:halves"))
    );
    srv.wait_stats("the partial record released", |s| s["partial_bytes"] == 0);
}

#[test]
fn client_messages_in_fragments_and_split_records() {
    let dir = TlsDir::new("c2s");
    let srv = dir.server(&[]);
    for version in [Version::Tls13, Version::Tls12] {
        let cfg = dir.client(Some(version));
        let mut c = RawTls::upgraded(srv.ws, &cfg, &tok("writer"));

        // A subscribe in four WebSocket frames (text + continuations), each its own TLS
        // record, all in one write.
        let msg = json!({"type": "subscribe", "topic": "room:frag", "ref": "f"}).to_string();
        let parts: Vec<&[u8]> = msg.as_bytes().chunks(msg.len() / 4 + 1).collect();
        assert_eq!(parts.len(), 4);
        let mut records = Vec::new();
        for (k, part) in parts.iter().enumerate() {
            let op = if k == 0 { OP_TEXT } else { OP_CONT };
            let frame = encode_frame(k == parts.len() - 1, 0, op, part, MASK);
            records.extend(c.seal(&frame));
        }
        c.send_raw(&records);
        let m = c.read_json();
        assert_eq!(m["type"], "subscribed", "{version:?}: {m}");
        assert_eq!(m["topic"], "room:frag");

        // One frame over three records, written to the socket a few bytes at a time, so
        // the server reads records in pieces.
        let msg = json!({"type": "subscribe", "topic": "room:split", "ref": "s"}).to_string();
        let frame = encode_frame(true, 0, OP_TEXT, msg.as_bytes(), MASK);
        let mut sealed = Vec::new();
        for part in frame.chunks(frame.len() / 3 + 1) {
            sealed.extend(c.seal(part));
        }
        for piece in sealed.chunks(11) {
            c.send_raw(piece);
            std::thread::sleep(Duration::from_millis(2));
        }
        let m = c.read_json();
        assert_eq!(m["type"], "subscribed", "{version:?}: {m}");
        assert_eq!(m["topic"], "room:split");

        // A large message (a 40 KB ping ref) spans several records both ways.
        let long_ref = "r".repeat(40_000);
        let ping = json!({"type": "ping", "ref": long_ref}).to_string();
        let frame = encode_frame(true, 0, OP_TEXT, ping.as_bytes(), MASK);
        c.send(&frame);
        let m = c.read_json();
        assert_eq!(m["type"], "pong");
        assert!(
            m["ref"] == long_ref.as_str(),
            "{version:?}: the long ref came back"
        );

        if version == Version::Tls13 {
            // A key update from the client (asking for the server's): both directions
            // carry on under new keys.
            c.conn.refresh_traffic_keys().expect("key update");
            let ping = json!({"type": "ping", "ref": "rekeyed"}).to_string();
            c.send(&encode_frame(true, 0, OP_TEXT, ping.as_bytes(), MASK));
            assert_eq!(c.read_json(), json!({"type": "pong", "ref": "rekeyed"}));
        }

        for topic in ["room:frag", "room:split"] {
            let r = srv.push_wait(json!({"topic": topic, "data": topic}));
            assert_eq!(r["delivered"], 1, "{r}");
            let m = c.read_json();
            assert_eq!(m["topic"], topic, "{version:?}: {m}");
        }

        // A clean close: the server's Close, then close_notify and EOF.
        c.send(&encode_frame(
            true,
            0,
            OP_CLOSE,
            &1000u16.to_be_bytes(),
            MASK,
        ));
        let f = c.read_frame().expect("the server's close frame");
        assert_eq!(f.opcode, OP_CLOSE, "{version:?}: {f:?}");
        assert_eq!(f.close_code(), Some(1000), "{version:?}");
        assert_eq!(c.expect_end(), TlsEnd::CloseNotify, "{version:?}");
        srv.wait_connections(0);
    }

    // close_notify from the client ends the connection like a FIN.
    let cfg = dir.client(None);
    let mut c = RawTls::upgraded(srv.ws, &cfg, &tok("notifier"));
    srv.wait_connections(1);
    c.conn.send_close_notify();
    let bytes = c.seal(b"");
    c.send_raw(&bytes);
    srv.wait_connections(0);
    assert_eq!(metric(srv.api, "throng_tls_record_errors_total"), 0);
}

#[test]
fn frames_pipelined_after_the_upgrade_request_are_kept() {
    let dir = TlsDir::new("pipeline");
    let srv = dir.server(&[]);
    let mut kept = Vec::new();
    for version in [Version::Tls13, Version::Tls12] {
        let cfg = dir.client(Some(version));
        let mut c = RawTls::connect(srv.ws, &cfg);
        let ping = |r: &str| {
            let text = json!({"type": "ping", "ref": r}).to_string();
            encode_frame(true, 0, OP_TEXT, text.as_bytes(), MASK)
        };
        // The request and a first frame in one record (plaintext left over after the
        // head), then a record of which only the start arrives with them (a record
        // incomplete when the acceptor hands the connection over).
        let mut first = RawTls::request(srv.ws, &tok("pipeliner"));
        first.extend(ping("one"));
        let mut bytes = c.seal(&first);
        let second = c.seal(&ping("two"));
        let cut = second.len() / 2;
        bytes.extend_from_slice(&second[..cut]);
        c.send_raw(&bytes);
        let w = c.read_upgrade();
        assert_eq!(w["user"], "pipeliner", "{version:?}");
        assert_eq!(
            c.read_json(),
            json!({"type": "pong", "ref": "one"}),
            "{version:?}"
        );
        c.send_raw(&second[cut..]);
        assert_eq!(
            c.read_json(),
            json!({"type": "pong", "ref": "two"}),
            "{version:?}"
        );
        c.send(&ping("three"));
        assert_eq!(
            c.read_json(),
            json!({"type": "pong", "ref": "three"}),
            "{version:?}"
        );
        kept.push(c);
    }
    assert_eq!(metric(srv.api, "throng_tls_record_errors_total"), 0);
    srv.wait_connections(2);
}

#[test]
fn a_tampered_record_drops_only_its_connection() {
    let dir = TlsDir::new("tamper");
    let srv = dir.server(&[]);
    let mut other =
        TlsClient::connect(srv.ws, &dir.client(None), &tok("other")).expect("other client");
    other.subscribe("room:t");
    let mut dropped = 0;
    for version in [Version::Tls13, Version::Tls12] {
        let cfg = dir.client(Some(version));
        let mut victim = RawTls::upgraded(srv.ws, &cfg, &tok("victim"));
        srv.wait_connections(2);
        // A good record first: the session works.
        let ping = json!({"type": "ping", "ref": "ok"}).to_string();
        victim.send(&encode_frame(true, 0, OP_TEXT, ping.as_bytes(), MASK));
        assert_eq!(victim.read_json()["type"], "pong");
        // Then one with a flipped ciphertext byte.
        let ping = json!({"type": "ping", "ref": "tampered"}).to_string();
        let mut rec = victim.seal(&encode_frame(true, 0, OP_TEXT, ping.as_bytes(), MASK));
        let at = rec.len() - 20;
        rec[at] ^= 0x40;
        victim.send_raw(&rec);
        let end = victim.expect_end_without_data();
        assert_ne!(
            end,
            TlsEnd::CloseNotify,
            "{version:?}: dropped, not closed politely"
        );
        dropped += 1;
        wait_metric(srv.api, "throng_tls_record_errors_total", dropped, WAIT);
        srv.wait_connections(1);
    }

    // The other TLS connection is untouched, both ways.
    other.send(json!({"type": "ping", "ref": "other"}));
    assert_eq!(other.recv(), json!({"type": "pong", "ref": "other"}));
    let r = srv.push_wait(json!({"topic": "room:t", "data": "after"}));
    assert_eq!(r["delivered"], 1, "{r}");
    assert_eq!(other.recv()["data"], "after");
    assert_eq!(metric(srv.api, "throng_tls_handshakes_failed_total"), 0);
}

// ---- Certificate reload (the binary, SIGHUP) -------------------------------------------

#[test]
fn sighup_reloads_the_certificate_and_keeps_it_when_the_file_is_bad() {
    let dir = TlsDir::new("reload");
    let a = dir.pair.der.clone();
    let b = CertPair::generate();
    let cfg = client_config(&[&a, &b.der], None);
    let mut p = ServeProc::spawn(&["--tls-cert", dir.cert_path(), "--tls-key", dir.key_path()]);
    let (ws, api) = p.listening();

    let mut first = TlsClient::connect(ws, &cfg, &token("first")).expect("first client");
    assert!(peer_leaf(first.tls()) == a.as_ref(), "serves A at start");

    let leaf_now = || {
        let s = tls_connect(ws, &cfg).unwrap_or_else(|e| panic!("new connection: {e}"));
        peer_leaf(&s.conn)
    };
    let push_first = |data: &str| {
        let body = json!({"user": "first", "data": data}).to_string();
        let r = HttpConn::connect(api).request("POST", "/v1/push", Some(API_KEY), Some(&body));
        assert_eq!(r.status, 202, "{}", r.text());
    };

    // Certificate B, SIGHUP: new connections get B, the open one carries on.
    dir.write(&b);
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || leaf_now() == b.der.as_ref()),
        "new connections never got certificate B; log:\n{}",
        p.seen.join("\n")
    );
    p.find(Duration::from_secs(5), |l| {
        l.contains("TLS certificate reloaded").then_some(())
    });
    wait_metric(api, "throng_tls_reloads_total", 1, WAIT);
    push_first("after reload");
    assert_eq!(first.recv()["data"], "after reload");

    // A bad file: the reload fails, says so, and B stays.
    std::fs::write(
        &dir.cert,
        "-----BEGIN CERTIFICATE-----\nthis is not base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    let line = p.find(Duration::from_secs(10), |l| {
        l.contains("not reloaded").then(|| l.to_string())
    });
    assert!(
        line.contains(dir.cert_path()),
        "the log names the file: {line}"
    );
    assert!(
        line.contains("previous one stays"),
        "the log says the old certificate stays: {line}"
    );
    wait_metric(api, "throng_tls_reload_errors_total", 1, WAIT);
    assert_eq!(metric(api, "throng_tls_reloads_total"), 1);
    for _ in 0..3 {
        assert!(
            leaf_now() == b.der.as_ref(),
            "still B after the failed reload"
        );
    }
    push_first("after the failed reload");
    assert_eq!(first.recv()["data"], "after the failed reload");
    let mut late = TlsClient::connect(ws, &cfg, &token("late")).expect("late client");
    late.send(json!({"type": "ping", "ref": 1}));
    assert_eq!(late.recv()["type"], "pong");

    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit {st:?}; log:\n{}", p.seen.join("\n"));
}

// ---- Bad files at start ----------------------------------------------------------------

#[test]
fn bad_certificate_or_key_at_start_exits_2_naming_the_file() {
    let dir = TlsDir::new("badstart");
    let cert = dir.cert_path().to_string();
    let key = dir.key_path().to_string();
    let missing = dir.path("missing.pem");
    let other_key = dir.path("other-key.pem");
    std::fs::write(&other_key, CertPair::generate().key_pem).unwrap();
    let junk = dir.path("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();

    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["--tls-cert", &missing, "--tls-key", &key],
            &[&missing, "config error: tls_cert, tls_key (--tls-cert"],
        ),
        (&["--tls-cert", &cert, "--tls-key", &missing], &[&missing]),
        (&["--tls-cert", &junk, "--tls-key", &key], &[&junk]),
        (
            &["--tls-cert", &cert, "--tls-key", &other_key],
            &[&cert, &other_key, "does not belong"],
        ),
        (&["--tls-cert", &cert], &["--tls-key"]),
        (&["--tls-key", &key], &["--tls-cert"]),
    ];
    for (args, needles) in cases {
        let (status, stderr) = serve_refused(args);
        assert_eq!(
            status.code(),
            Some(2),
            "{args:?}: {status:?}; stderr: {stderr}"
        );
        for n in needles {
            assert!(
                stderr.contains(n),
                "{args:?}: stderr must name {n:?}: {stderr}"
            );
        }
    }
}
