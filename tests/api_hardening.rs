//! Issue 7, push API: unread pipelined answers stay bounded, the connection cap answers
//! 503, request and idle timeouts, strict framing, repeated user ids, deep nesting; and
//! (review s15b) the key checked at the head, the input budget, `100 Continue`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Unsent response bytes above which the API stops serving a connection (api::MAX_UNSENT).
const MAX_UNSENT: u64 = throng::api::MAX_UNSENT as u64;

/// A connection with small kernel buffers both ways, so backpressure shows early.
fn small_buffer_stream(addr: SocketAddr) -> TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.set_send_buffer_size(4096).expect("SO_SNDBUF");
    sock.connect_timeout(&addr.into(), IO_TIMEOUT)
        .expect("connect");
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
    s
}

/// `/v1/stats` over an existing keep-alive connection (it does not add a connection).
fn stats_on(conn: &mut HttpConn) -> Value {
    let r = conn.request("GET", "/v1/stats", Some(API_KEY), None);
    assert_eq!(r.status, 200, "stats: {}", r.text());
    r.json()
}

/// Polls stats on `conn` until `cond` holds.
fn wait_stats_on(conn: &mut HttpConn, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = stats_on(conn);
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last stats: {s}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads until the peer closes; returns what arrived. Panics if it does not close in time.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!(
                "the server did not close the connection: {e}; got {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// Asserts `raw` (one whole response and then EOF) is a JSON error with `status`, `code`,
/// `Connection: close` and a message containing `needle`.
fn assert_closing_error(raw: &[u8], status: u16, code: &str, needle: &str) {
    let text = String::from_utf8_lossy(raw);
    assert!(
        text.starts_with(&format!("HTTP/1.1 {status} ")),
        "expected {status}, got {text:?}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close\r\n"),
        "{text:?}"
    );
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let j: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(j["error"], code, "{j}");
    let m = j["message"].as_str().unwrap_or_default();
    assert!(m.contains(needle), "message should say {needle:?}: {m:?}");
}

// ---------------------------------------------------------------------------------------
// 1. Pipelined requests whose answers are never read.

#[test]
fn a_head_never_holds_more_than_its_limit() {
    // 16,000 bytes of head and then 300 more once doubled the buffer to 32,000 bytes,
    // all counted in api_max_buffered_bytes (a client without the key could so hold twice
    // what the docs say).
    let srv = TestServer::start(&[]);
    let mut s = tcp(srv.api);
    let filler = format!("POST /v1/push HTTP/1.1\r\nX-Pad: {}", "p".repeat(16_300));
    s.write_all(&filler.as_bytes()[..16_000]).unwrap();
    srv.wait_stats("the first part held", |st| {
        st["api_input_bytes"].as_u64() >= Some(16_000)
    });
    s.write_all(&filler.as_bytes()[16_000..16_300]).unwrap();
    let st = srv.wait_stats("the rest held", |st| {
        st["api_input_bytes"].as_u64() >= Some(16_300)
    });
    assert!(
        st["api_input_bytes"].as_u64() <= Some(16 * 1024 + 1),
        "{st}"
    );
}

#[test]
fn pipelining_without_reading_keeps_output_bounded_and_others_served() {
    let srv = TestServer::start(&[]);
    let mut monitor = srv.api_conn();
    // One answer's size: the API may go past its bound by one answer at most.
    let one = monitor.request("GET", "/metrics", Some(API_KEY), None);
    assert_eq!(one.status, 200);
    let answer = one.body.len() as u64 + 512;

    // Thousands of requests whose answers (tens of MB) dwarf every kernel buffer on the
    // way back, sent at once by a client that does not read.
    const N: usize = 10_000;
    let request = format!("GET /metrics HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\n\r\n");
    let flood = small_buffer_stream(srv.api);
    let mut writer = flood.try_clone().expect("clone");
    let all = request.repeat(N).into_bytes();
    // It may block for good once the server stops reading; it ends with the test.
    std::thread::spawn(move || writer.write_all(&all));

    // The API serves what it can, then holds: its buffered output settles and stays
    // near the bound. Every sample is taken by the same API thread that serves the flood.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut most, mut last, mut same) = (0, u64::MAX, 0);
    while same < 20 {
        let s = stats_on(&mut monitor);
        let now = s["api_output_bytes"].as_u64().expect("api_output_bytes");
        most = most.max(now);
        same = if now == last && now > 0 { same + 1 } else { 0 };
        last = now;
        assert!(
            Instant::now() < deadline,
            "the API output never settled: {now} bytes"
        );
    }
    assert!(
        most <= MAX_UNSENT + answer,
        "the API held {most} unsent bytes for a client that does not read \
         (bound {MAX_UNSENT} plus one answer of {answer})"
    );
    assert!(
        last > MAX_UNSENT,
        "the flood should have filled the bound ({last} bytes held)"
    );
    // Other API clients are served meanwhile.
    for _ in 0..3 {
        assert_eq!(srv.api("GET", "/healthz", None).status, 200);
    }

    // The client reads at last: the connection resumes, answers in order.
    let mut reader = conn_over(srv.api, flood);
    for i in 0..200 {
        let r = reader.read();
        assert_eq!(r.status, 200, "answer {i} after resuming");
    }
    assert_eq!(
        monitor
            .request("GET", "/healthz", Some(API_KEY), None)
            .status,
        200
    );
}

// ---------------------------------------------------------------------------------------
// 2. Connection cap, request and idle timeouts.

/// A keyed push on a new connection, tried every 50 ms while the cap refuses it with 503
/// (or resets it first), until one is taken; its connection.
fn push_when_room(srv: &TestServer, user: &str) -> TcpStream {
    let deadline = Instant::now() + WAIT;
    let body = json!({"user": user, "data": 1}).to_string();
    let req = request_bytes(srv.api, "POST", "/v1/push", Some(API_KEY), Some(&body));
    loop {
        let mut c = tcp(srv.api);
        if c.write_all(&req).is_ok() {
            if let Ok((r, _)) = read_response(&mut c, Vec::new()) {
                if r.status == 202 {
                    return c;
                }
                assert_eq!(r.status, 503, "{}", r.text());
            }
        }
        assert!(Instant::now() < deadline, "no slot freed for {user}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An API connection that made a request with the key: trusted, so neither evicted at
/// the cap nor closed after the request timeout when idle.
fn keyed_conn(srv: &TestServer) -> HttpConn {
    let mut c = srv.api_conn();
    assert_eq!(
        c.request("GET", "/v1/stats", Some(API_KEY), None).status,
        200
    );
    c
}

#[test]
fn over_the_connection_cap_answers_503_and_counts_it() {
    let srv = TestServer::start(&["--api-max-connections", "4"]);
    // The monitor is connection 1 of 4; all four made keyed requests, so none of them is
    // a stranger a newcomer could take the place of.
    let mut monitor = keyed_conn(&srv);
    let mut silent: Vec<HttpConn> = (0..3).map(|_| keyed_conn(&srv)).collect();
    wait_stats_on(&mut monitor, "4 API connections", |s| {
        s["api_connections"] == 4
    });

    let mut over = tcp(srv.api);
    let raw = read_to_close(&mut over);
    assert_closing_error(&raw, 503, "over_capacity", "api_max_connections");
    assert!(
        String::from_utf8_lossy(&raw).contains("Retry-After: "),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    let s = wait_stats_on(&mut monitor, "the refusal counted", |s| {
        s["counters"]["api_refused_connections"] == 1
    });
    assert_eq!(
        s["api_connections"], 4,
        "refused sockets are not counted open"
    );

    // One leaves: the next one gets in.
    drop(silent.pop());
    wait_stats_on(&mut monitor, "3 API connections", |s| {
        s["api_connections"] == 3
    });
    let mut fresh = srv.api_conn();
    assert_eq!(
        fresh.request("GET", "/healthz", Some(API_KEY), None).status,
        200
    );
    assert_eq!(stats_on(&mut monitor)["api_connections"], 4);
}

#[test]
fn strangers_that_never_finish_a_request_cannot_hold_the_slots() {
    // Review s17a: connections that never send a byte held every slot for the idle
    // timeout, and pushes, /metrics and the probes got 503 all that time.
    let srv = TestServer::start(&[
        "--api-max-connections",
        "4",
        "--api-request-timeout-ms",
        "60000",
        "--api-idle-timeout-ms",
        "60000",
    ]);
    let mut monitor = keyed_conn(&srv);
    let mut trusted = keyed_conn(&srv);
    // A silent one, and one stuck in the middle of a head.
    let mut silent = tcp(srv.api);
    let mut midway = tcp(srv.api);
    midway
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    wait_stats_on(&mut monitor, "4 API connections", |s| {
        s["api_connections"] == 4
    });
    // A newcomer takes the place of the stranger that waited longest, once it has waited
    // 100 ms; until then the newcomer is refused.
    let first = push_when_room(&srv, "a");
    assert!(
        read_to_close(&mut silent).is_empty(),
        "the silent one, closed quietly"
    );
    let second = push_when_room(&srv, "b");
    assert!(
        read_to_close(&mut midway).is_empty(),
        "then the one stuck midway"
    );
    let s = stats_on(&mut monitor);
    assert_eq!(s["counters"]["api_evictions"], 2, "{s}");
    // Every slot now holds a connection that made a keyed request: nobody is evicted,
    // however long they idle, and a newcomer gets 503 at once.
    let mut over = tcp(srv.api);
    assert_closing_error(
        &read_to_close(&mut over),
        503,
        "over_capacity",
        "api_max_connections",
    );
    assert_eq!(trusted.request("GET", "/healthz", None, None).status, 200);
    assert_eq!(stats_on(&mut monitor)["counters"]["api_evictions"], 2);
    drop((first, second));
}

#[test]
fn a_stranger_lingering_after_its_401_makes_room_too() {
    // Review s17e: strangers lingering after a 401 (and those not reading their probes'
    // answers, shown by /tmp/review-s17e) were skipped by the eviction, so a peer without
    // the key could still hold the slots, reconnecting once per linger.
    let srv = TestServer::start(&[
        "--api-max-connections",
        "2",
        "--api-request-timeout-ms",
        "60000",
        "--api-idle-timeout-ms",
        "60000",
    ]);
    let mut monitor = keyed_conn(&srv);
    // A request without the key: answered 401, then the server lingers (2 s) for the peer
    // to close, which it does not.
    let mut refused = tcp(srv.api);
    refused
        .write_all(b"GET /v1/stats HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (r, _) = read_response(&mut refused, Vec::new()).expect("the 401");
    assert_eq!(r.status, 401);
    let pushed = push_when_room(&srv, "a");
    assert!(
        read_to_close(&mut refused).is_empty(),
        "closed after its 401"
    );
    let s = stats_on(&mut monitor);
    assert_eq!(
        s["counters"]["api_evictions"], 1,
        "taken before its linger ended: {s}"
    );
    drop(pushed);
}

#[test]
fn a_stranger_idles_for_the_request_timeout_a_trusted_client_for_the_idle_timeout() {
    let srv = TestServer::start(&[
        "--api-request-timeout-ms",
        "300",
        "--api-idle-timeout-ms",
        "60000",
    ]);
    let mut trusted = keyed_conn(&srv);
    // A probe needs no key, and earns no trust.
    let mut probe = srv.api_conn();
    assert_eq!(probe.request("GET", "/healthz", None, None).status, 200);
    let mut silent = tcp(srv.api);
    assert!(read_to_close(&mut silent).is_empty(), "closed quietly");
    assert!(
        read_to_close(&mut probe.stream).is_empty(),
        "closed quietly"
    );
    // Still open, past both closes.
    assert_eq!(
        trusted
            .request("GET", "/v1/stats", Some(API_KEY), None)
            .status,
        200
    );
    let s = srv.stats();
    assert_eq!(s["counters"]["api_idle_closes"], 2, "{s}");
}

#[test]
fn incomplete_requests_get_408_from_their_first_byte() {
    let srv = TestServer::start(&[
        "--api-request-timeout-ms",
        "300",
        "--api-idle-timeout-ms",
        "60000",
    ]);
    // Keyed at once: a stranger's idle connection closes after the request timeout too.
    let mut monitor = keyed_conn(&srv);

    // A head that never ends.
    let mut head = tcp(srv.api);
    head.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    // A body that never ends.
    let mut body = tcp(srv.api);
    body.write_all(
        format!("POST /v1/push HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: 50\r\n\r\n{{\"user\"")
            .as_bytes(),
    )
    .expect("write");
    for s in [&mut head, &mut body] {
        let raw = read_to_close(s);
        assert_closing_error(&raw, 408, "request_timeout", "300 ms");
    }

    // Bytes that keep trickling in do not extend the deadline: it runs from the first.
    let mut drip = tcp(srv.api);
    drip.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    drip.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        .expect("write");
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    let closed = loop {
        assert!(Instant::now() < deadline, "no 408 while dripping: {got:?}");
        if drip.write_all(b"a").is_err() {
            break true;
        }
        let mut chunk = [0u8; 1024];
        match drip.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
    };
    assert!(closed);
    assert!(
        got.starts_with(b"HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    wait_stats_on(&mut monitor, "3 request timeouts", |s| {
        s["counters"]["api_request_timeouts"] == 3
    });
    wait_stats_on(&mut monitor, "only the monitor left", |s| {
        s["api_connections"] == 1
    });
}

#[test]
fn the_request_timeout_holds_while_earlier_answers_are_unsent() {
    let srv = TestServer::start(&[
        "--api-request-timeout-ms",
        "500",
        "--api-idle-timeout-ms",
        "60000",
    ]);
    let mut monitor = srv.api_conn();
    let mut s = small_buffer_stream(srv.api);
    back_up_answers(&mut s, &mut monitor);
    // An incomplete request, a byte at a time: the 408 comes all the same.
    let part = b"POST /v1/push HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut bytes = part.iter();
    trickle_until(&mut s, &mut monitor, "api_request_timeouts", || {
        bytes.next().copied()
    });
}

#[test]
fn a_client_that_sends_but_never_reads_is_closed_after_the_idle_timeout() {
    let srv = TestServer::start(&[
        "--api-idle-timeout-ms",
        "500",
        "--api-request-timeout-ms",
        "60000",
    ]);
    let mut monitor = srv.api_conn();
    let mut s = small_buffer_stream(srv.api);
    back_up_answers(&mut s, &mut monitor);
    // A request that cannot be framed: its 400 queues behind the others and what follows
    // is discarded. The client keeps sending and never reads.
    s.write_all(b"BAD\r\n\r\n").expect("write");
    trickle_until(&mut s, &mut monitor, "api_idle_closes", || Some(b'x'));
}

/// Writes `next` byte by byte, 50 ms apart (the trickle is what is tested), until the
/// counter `counter` reaches 1; at most 6 s.
fn trickle_until(
    s: &mut TcpStream,
    monitor: &mut HttpConn,
    counter: &str,
    mut next: impl FnMut() -> Option<u8>,
) {
    let started = Instant::now();
    loop {
        if let Some(b) = next() {
            let _ = s.write_all(&[b]);
        }
        if stats_on(monitor)["counters"][counter] == 1 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{counter} never counted while the client trickled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends 404s that echo a long path on `s` (a small-buffer client that does not read)
/// until some of their answers wait in the server.
fn back_up_answers(s: &mut TcpStream, monitor: &mut HttpConn) {
    let req = format!(
        "GET /{} HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\n\r\n",
        "x".repeat(15_000)
    );
    for _ in 0..400 {
        s.write_all(req.as_bytes()).expect("write");
        if stats_on(monitor)["api_output_bytes"].as_u64() > Some(0) {
            return;
        }
    }
    panic!("the answers never backed up");
}

#[test]
fn idle_keep_alive_connections_close_quietly() {
    let srv = TestServer::start(&[
        "--api-idle-timeout-ms",
        "300",
        "--api-request-timeout-ms",
        "60000",
    ]);
    // Used once, then idle.
    let mut used = srv.api_conn();
    assert_eq!(
        used.request("GET", "/healthz", Some(API_KEY), None).status,
        200
    );
    // Never sends a byte: covered by the idle timeout.
    let mut silent = tcp(srv.api);
    // In the middle of a request: not idle, so it stays.
    let mut midway = tcp(srv.api);
    midway
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\n").as_bytes(),
        )
        .expect("write");

    assert!(read_to_close(&mut used.stream).is_empty(), "closed quietly");
    assert!(read_to_close(&mut silent).is_empty(), "closed quietly");
    midway.write_all(b"\r\n").expect("finish the request");
    let mut midway = conn_over(srv.api, midway);
    assert_eq!(
        midway.read().status,
        200,
        "a request in progress is not idle"
    );
    let s = srv.stats();
    assert!(
        s["counters"]["api_idle_closes"].as_u64() >= Some(2),
        "idle closes counted: {s}"
    );
}

#[test]
fn a_request_and_the_clients_fin_together_are_answered_and_closed() {
    // The API stops reading at a short read; a FIN that came with the request must still
    // be seen then, not at the idle timeout (60 s here, past the test's read timeout).
    let srv = TestServer::start(&[
        "--api-idle-timeout-ms",
        "60000",
        "--api-request-timeout-ms",
        "60000",
    ]);
    let mut alice = srv.connect("alice");
    let body = r#"{"user":"alice","data":"before the FIN"}"#;
    let push = format!(
        "POST /v1/push HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let health = format!("GET /healthz HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\n\r\n");
    for i in 0..20 {
        // A push waits on the shards before it is answered; a health check does not.
        let (request, status) = if i % 2 == 0 {
            (&push, "HTTP/1.1 202")
        } else {
            (&health, "HTTP/1.1 200")
        };
        let mut s = tcp(srv.api);
        s.write_all(request.as_bytes()).expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("FIN");
        let got = String::from_utf8_lossy(&read_to_close(&mut s)).to_string();
        assert!(got.starts_with(status), "{got}");
    }
    for _ in 0..10 {
        assert_eq!(alice.recv()["data"], "before the FIN");
    }
    // Only the connection asking is left.
    srv.wait_stats("no other API connection left", |s| {
        s["api_connections"] == 1
    });
}

#[test]
fn answers_owed_when_the_client_half_closes_are_still_sent() {
    let srv = TestServer::start(&[
        "--api-idle-timeout-ms",
        "60000",
        "--api-request-timeout-ms",
        "60000",
    ]);
    let mut alice = srv.connect("alice");
    srv.wait_online(1, 1);
    let body = r#"{"user":"alice","data":"waited"}"#;
    let push = format!(
        "POST /v1/push?wait=1 HTTP/1.0\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let presence =
        format!("GET /v1/presence/alice HTTP/1.0\r\nAuthorization: Bearer {API_KEY}\r\n\r\n");
    for i in 0..40 {
        let request = if i % 2 == 0 { &push } else { &presence };
        let mut s = tcp(srv.api);
        s.write_all(request.as_bytes()).expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("FIN");
        let got = String::from_utf8_lossy(&read_to_close(&mut s)).to_string();
        assert!(got.starts_with("HTTP/1.1 200"), "request {i}: {got:?}");
    }
    for _ in 0..20 {
        assert_eq!(alice.recv()["data"], "waited");
    }
}

#[test]
fn a_large_answer_is_written_whole_after_the_clients_fin() {
    let srv = TestServer::start(&[]);
    let mut monitor = srv.api_conn();
    // Every line is rejected: an answer of megabytes.
    let body = "{\"data\":1}\n".repeat(40_000);
    let mut s = small_buffer_stream(srv.api);
    s.write_all(
        format!(
            "POST /v1/push/batch HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\n\
             Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("write");
    // The answer is made and waits for the client.
    wait_stats_on(&mut monitor, "the answer waiting", |s| {
        s["api_output_bytes"].as_u64() > Some(MAX_BYTES_IN_FLIGHT)
    });
    s.shutdown(std::net::Shutdown::Write).expect("FIN");
    let (r, _) = read_response(&mut s, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["rejected"].as_array().map(Vec::len), Some(40_000));
}

/// More answer bytes than the kernel buffers on the way hold at first.
const MAX_BYTES_IN_FLIGHT: u64 = 256 * 1024;

/// An `HttpConn` reading from `stream`, a connection a test wrote to by hand.
fn conn_over(addr: SocketAddr, stream: TcpStream) -> HttpConn {
    let mut c = HttpConn::connect(addr);
    let _ = c.stream.shutdown(std::net::Shutdown::Both);
    c.stream = stream;
    c
}

// ---------------------------------------------------------------------------------------
// 3. Strict framing, against a real server.

/// Sends `raw` on a fresh connection (ignoring write errors once the server has answered)
/// and returns everything until the server closes.
fn answer_to(addr: SocketAddr, raw: &[u8], chunk: usize) -> Vec<u8> {
    let mut s = tcp(addr);
    for part in raw.chunks(chunk.max(1)) {
        if s.write_all(part).is_err() {
            break;
        }
    }
    read_to_close(&mut s)
}

#[test]
fn framing_is_strict() {
    let srv = TestServer::start(&[]);
    let post = |headers: &str, body: &str| {
        format!("POST /v1/push HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\n{headers}\r\n{body}")
            .into_bytes()
    };
    let body = r#"{"user":"f","data":1}"#;
    let n = body.len();
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (
            post(
                &format!("Content-Length: {n}\r\nContent-Length: {}\r\n", n + 1),
                body,
            ),
            400,
            "bad_request",
            "more than one Content-Length",
        ),
        (
            post(
                &format!("Content-Length: {n}\r\nContent-Length: {n}\r\n"),
                body,
            ),
            400,
            "bad_request",
            "more than one Content-Length",
        ),
        (
            post(&format!("Content-Length: +{n}\r\n"), body),
            400,
            "bad_request",
            "Content-Length",
        ),
        (
            post("Content-Length: -1\r\n", body),
            400,
            "bad_request",
            "Content-Length",
        ),
        (
            post("Content-Length: 1 0\r\n", body),
            400,
            "bad_request",
            "Content-Length",
        ),
        (
            post("Content-Length: 0x10\r\n", body),
            400,
            "bad_request",
            "Content-Length",
        ),
        (
            post("Transfer-Encoding: gzip\r\n", "0\r\n\r\n"),
            501,
            "not_implemented",
            "Content-Length or chunked",
        ),
        (
            post(
                &format!("Transfer-Encoding: chunked\r\nContent-Length: {n}\r\n"),
                body,
            ),
            400,
            "bad_request",
            "both Transfer-Encoding and Content-Length",
        ),
        (
            post("Transfer-Encoding: chunked\r\n", "3\r\nabcd\r\n"),
            400,
            "bad_request",
            "malformed chunked body",
        ),
    ];
    for (raw, status, code, needle) in cases {
        let answer = answer_to(srv.api, &raw, raw.len());
        assert_closing_error(&answer, status, code, needle);
    }

    // A 20 KiB head in one write, with a body behind it; and the same a byte at a time.
    let big = post(
        &format!(
            "X-Big: {}\r\nContent-Length: {n}\r\n",
            "b".repeat(20 * 1024)
        ),
        body,
    );
    assert_closing_error(
        &answer_to(srv.api, &big, big.len()),
        431,
        "header_too_large",
        "over 16 KiB",
    );
    assert_closing_error(
        &answer_to(srv.api, &big, 1),
        431,
        "header_too_large",
        "over 16 KiB",
    );

    // More header lines than the parser holds: a count, not a size.
    let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
    let raw = post(&format!("{many}Content-Length: {n}\r\n"), body);
    let answer = answer_to(srv.api, &raw, raw.len());
    assert_closing_error(
        &answer,
        431,
        "header_too_large",
        "too many headers (at most 32)",
    );
    assert!(!String::from_utf8_lossy(&answer).contains("16 KiB"));

    // None of that was delivered or hurt the API.
    assert_eq!(srv.counter("pushes_accepted"), 0);
    srv.push(json!({"user": "f", "data": 1}));
}

// ---------------------------------------------------------------------------------------
// 4. Repeated user ids.

#[test]
fn repeated_user_ids_deliver_once() {
    let srv = TestServer::start(&[]);
    let mut a = srv.connect("a");
    srv.wait_online(1, 1);
    let r = srv.push_wait(json!({"users": ["a", "a", "a"], "data": "first"}));
    assert_eq!(r["delivered"], 1, "{r}");
    srv.push_wait(json!({"user": "a", "data": "second"}));
    let m = a.recv();
    assert_eq!(
        (m["seq"].clone(), m["data"].clone()),
        (json!(1), json!("first"))
    );
    let m = a.recv();
    assert_eq!(
        (m["seq"].clone(), m["data"].clone()),
        (json!(2), json!("second")),
        "the repeated id was delivered twice"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Deep nesting.

fn deep(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

#[test]
fn deep_nesting_is_400_and_never_overflows() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("d");
    srv.wait_online(1, 1);
    let n = 100_000;
    for body in [
        format!(r#"{{"user":"d","data":{}}}"#, deep(n)),
        format!(r#"{{"user":"d","data":{}"#, "{\"a\":".repeat(n)),
        format!(r#"{{"users":{},"data":1}}"#, deep(n)),
        format!(r#"{{"user":"d","id":{},"data":1}}"#, deep(n)),
        format!(r#"{{"user":{},"data":1}}"#, deep(n)),
    ] {
        let r = srv.api("POST", "/v1/push", Some(&body));
        r.assert_error(400, "bad_request");
        let m = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(m.contains("too deep"), "{m}");
    }
    // Batch lines go through the same parser.
    let batch = format!("{{\"user\":\"d\",\"data\":{}}}\n", deep(n));
    let r = srv.api("POST", "/v1/push/batch", Some(&batch));
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["accepted"], 0, "{j}");
    assert!(j["rejected"][0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("too deep")));
    // Disconnect parses its own body.
    for body in [
        format!(r#"{{"user":{}}}"#, deep(n)),
        format!(r#"{{"user":"d","reason":{}}}"#, deep(n)),
    ] {
        let r = srv.api("POST", "/v1/disconnect", Some(&body));
        r.assert_error(400, "bad_request");
    }
    // At the limit it is delivered, and a serde_json client parses the frame.
    let ok = deep(throng::api::MAX_DATA_DEPTH);
    let body = format!(r#"{{"user":"d","data":{ok}}}"#);
    let r = srv.api("POST", "/v1/push?wait=1", Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    let m = c.recv();
    assert_eq!(m["data"].to_string(), ok);
    assert_eq!(srv.api("GET", "/healthz", None).status, 200);
}

// ---------------------------------------------------------------------------------------
// 6. The key is checked at the head; request buffers are bounded together.

/// A push body of exactly `len` bytes to `user`.
fn push_of_len(user: &str, len: usize) -> String {
    let head = format!(r#"{{"user":"{user}","data":""#);
    let pad = len - head.len() - 2;
    format!("{head}{}\"}}", "x".repeat(pad))
}

#[test]
fn a_request_without_the_key_is_answered_at_its_head_and_its_body_is_not_held() {
    let srv = TestServer::start(&["--api-request-timeout-ms", "60000"]);
    let mut monitor = srv.api_conn();
    for auth in ["", "Authorization: Bearer wrong\r\n"] {
        let mut s = tcp(srv.api);
        let head = format!("POST /v1/push HTTP/1.1\r\n{auth}Content-Length: 1048576\r\n\r\n");
        s.write_all(head.as_bytes()).expect("head");
        s.write_all(&[b'x'; 64 * 1024]).expect("part of the body");
        // Answered at once, the body far from complete.
        let (r, _) = read_response(&mut s, Vec::new()).unwrap_or_else(|e| panic!("{auth:?}: {e}"));
        r.assert_refusal(401, "unauthorized");
        // What it still sends is discarded, and the connection ends.
        let _ = s.write_all(&[b'x'; 64 * 1024]);
        read_to_close(&mut s);
    }
    // A public endpoint needs no key, and takes no body: answered at once, then closed.
    let mut s = tcp(srv.api);
    s.write_all(b"GET /healthz HTTP/1.1\r\nContent-Length: 1048576\r\n\r\nxx")
        .expect("write");
    let (r, _) = read_response(&mut s, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    read_to_close(&mut s);
    // Nothing of those bodies is held.
    let s = stats_on(&mut monitor);
    let held = s["api_input_bytes"].as_u64().expect("api_input_bytes");
    assert!(held < 64 * 1024, "{s}");
}

#[test]
fn bodies_past_the_input_budget_wait_for_room_and_none_is_lost() {
    const LIMIT: usize = 2_200_000;
    const BODY: usize = 1_000_000;
    let srv = TestServer::start(&["--api-max-buffered-bytes", "2200000"]);
    let mut monitor = srv.api_conn();
    let body = push_of_len("nobody", BODY);
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: {BODY}\r\n\r\n"
    );
    let part = 100_000;
    let mut conns: Vec<TcpStream> = Vec::new();
    for n in 1..=3u64 {
        let mut s = tcp(srv.api);
        s.write_all(head.as_bytes()).expect("head");
        s.write_all(&body.as_bytes()[..part]).expect("part");
        conns.push(s);
        // In order: two bodies fit and are read, the third finds no room.
        if n < 3 {
            wait_stats_on(&mut monitor, &format!("body {n} admitted"), |s| {
                s["api_input_bytes"].as_u64() >= Some(n * BODY as u64)
            });
        }
    }
    let s = wait_stats_on(&mut monitor, "the third body waiting", |s| {
        s["counters"]["api_input_pauses"] == 1
    });
    let held = s["api_input_bytes"].as_u64().expect("api_input_bytes");
    assert!(
        held <= (LIMIT + 3 * (16 * 1024 + 1)) as u64,
        "held {held} past the bound: {s}"
    );
    // The rest of every body: each push is accepted, the paused one once there is room.
    let writers: Vec<_> = conns
        .iter()
        .map(|s| {
            let mut w = s.try_clone().expect("clone");
            let rest = body.as_bytes()[part..].to_vec();
            std::thread::spawn(move || w.write_all(&rest))
        })
        .collect();
    for (i, s) in conns.into_iter().enumerate() {
        let mut c = HttpConn::over(s, srv.api);
        let r = c.read();
        assert_eq!(r.status, 202, "push {i}: {}", r.text());
    }
    for w in writers {
        w.join().expect("writer").expect("write");
    }
    let s = wait_stats_on(&mut monitor, "the buffers released", |s| {
        s["api_input_bytes"].as_u64().is_some_and(|b| b < 64 * 1024)
    });
    assert_eq!(s["counters"]["pushes_accepted"], 3, "{s}");
}

#[test]
fn expect_100_continue_is_answered_once_the_key_is_checked() {
    let srv = TestServer::start(&[]);
    let body = json!({"user": "nobody", "data": 1}).to_string();
    let mut s = tcp(srv.api);
    s.write_all(
        format!(
            "POST /v1/push HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nExpect: 100-continue\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .expect("head");
    let (r, rest) = read_response(&mut s, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 100, "{r:?}");
    s.write_all(body.as_bytes()).expect("body");
    let (r, _) = read_response(&mut s, rest).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 202, "{}", r.text());
    // A wrong key: the final answer, no 100 first.
    let mut s = tcp(srv.api);
    s.write_all(
        format!(
            "POST /v1/push HTTP/1.1\r\nAuthorization: Bearer wrong\r\nExpect: 100-continue\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .expect("head");
    let (r, _) = read_response(&mut s, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    r.assert_refusal(401, "unauthorized");
}

// ---------------------------------------------------------------------------------------
// Keys.

#[test]
fn an_api_key_file_rotates_on_sighup() {
    use common::tls::ServeProc;
    let dir = std::env::temp_dir().join(format!("throng-api-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("api-keys");
    std::fs::write(&file, "# the upstream's key\nkey-old\n").unwrap();
    let path = file.to_str().unwrap();
    let mut p = ServeProc::spawn_bare(&["--jwt-secret", SECRET, "--api-key-file", path]);
    let (_, api) = p.listening();
    let status = |key: &str| {
        HttpConn::connect(api)
            .request("GET", "/v1/stats", Some(key), None)
            .status
    };
    assert_eq!(status("key-old"), 200);
    assert_eq!(status("key-new"), 401);

    // Step one: both keys while the upstream moves to the new one. A connection opened
    // before the reload keeps working, and is checked against the new set.
    let mut kept = HttpConn::connect(api);
    assert_eq!(
        kept.request("GET", "/v1/stats", Some("key-old"), None)
            .status,
        200
    );
    std::fs::write(&file, "key-new\nkey-old\n").unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || status("key-new") == 200),
        "the new key never took; log:\n{}",
        p.seen.join("\n")
    );
    assert_eq!(status("key-old"), 200);
    // Step two: the old key retires, on a kept-alive connection too.
    std::fs::write(&file, "key-new\n").unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || status("key-old") == 401),
        "the old key stayed; log:\n{}",
        p.seen.join("\n")
    );
    assert_eq!(
        kept.request("GET", "/v1/stats", Some("key-old"), None)
            .status,
        401
    );
    // A file that cannot be used keeps the keys in use, and says why.
    std::fs::write(&file, "# emptied by mistake\n").unwrap();
    p.signal(libc::SIGHUP);
    let line = p.find(Duration::from_secs(10), |l| {
        l.contains("push API keys not reloaded")
            .then(|| l.to_string())
    });
    assert!(
        line.contains("holds no key") && line.contains(path),
        "{line}"
    );
    assert_eq!(status("key-new"), 200);
    let m = HttpConn::connect(api).request("GET", "/metrics", Some("key-new"), None);
    assert_eq!(
        common::tls::metric_in(&m, "throng_api_key_reloads_total"),
        2
    );
    assert_eq!(
        common::tls::metric_in(&m, "throng_api_key_reload_errors_total"),
        1
    );
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(10)).success());
    let _ = std::fs::remove_dir_all(dir);
}
