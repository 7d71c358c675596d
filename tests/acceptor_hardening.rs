//! Issue 7, acceptor side: pending handshakes count per IP from accept and are capped in
//! all, the `pending_handshakes` gauge stays exact, protocol edges of the upgrade parser
//! over real sockets, and a second server on a used address fails to start.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use throng::config::Config;
use throng::server::Server;

fn pending(s: &Value) -> Option<u64> {
    s["pending_handshakes"].as_u64()
}

/// Waits until the acceptor reports exactly `n` handshakes in progress.
fn wait_pending(srv: &TestServer, n: u64) -> Value {
    srv.wait_stats(&format!("{n} pending handshakes"), |s| {
        pending(s) == Some(n)
    })
}

/// A well-formed upgrade for `user` on a fresh connection; the response.
fn upgrade_as(srv: &TestServer, user: &str) -> Resp {
    let auth = format!("Authorization: Bearer {}", token(user));
    raw_http(srv.ws, &upgrade_request(srv.ws, "/ws", &[&auth], &[]))
}

/// Opens `n` sockets that send the start of a request line and stall (a slowloris), and
/// waits until the server tracks them. (Sockets that send nothing at all wait in the
/// kernel, not in the server: see `silent_sockets_wait_in_the_kernel_until_the_deadline`.)
fn stalled(srv: &TestServer, n: usize) -> Vec<TcpStream> {
    let before = pending(&srv.stats()).unwrap_or(0);
    let socks: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut s = tcp(srv.ws);
            s.write_all(b"GET /ws HT").unwrap();
            s
        })
        .collect();
    wait_pending(srv, before + n as u64);
    socks
}

fn message(r: &Resp) -> String {
    r.json()["message"].as_str().unwrap_or_default().to_string()
}

// ---- pending handshakes per IP and in all ----------------------------------------------

#[test]
fn refused_sockets_keep_their_ip_count_while_they_linger() {
    // Before, a refused socket stopped counting at once but held a descriptor for up to a
    // second: one address refused over and over held far more sockets than its limit.
    let srv = TestServer::start(&["--max-connections-per-ip", "2"]);
    let mut bad: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = tcp(srv.ws);
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s
        })
        .collect();
    // Each is answered 400 and the server waits for the client's FIN, which never comes.
    for s in &mut bad {
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 400");
    }
    wait_pending(&srv, 0);
    let r = upgrade_as(&srv, "third");
    r.assert_refusal(429, "rate_limited");
    assert!(message(&r).contains("too many connections"), "{r:?}");
    // Once they are gone, the address may connect again.
    drop(bad);
    let ok = wait_until(WAIT, || upgrade_as(&srv, "again").status == 101);
    assert!(ok, "still refused after the refused sockets went");
}

#[test]
fn stalled_sockets_count_per_ip_and_the_next_is_refused_at_once() {
    // 30 s handshake window: an answer at all proves it came at accept, not at the timeout.
    let srv = TestServer::start(&[
        "--max-connections-per-ip",
        "3",
        "--handshake-timeout-ms",
        "30000",
    ]);
    let held = stalled(&srv, 3);
    let r = upgrade_as(&srv, "fourth");
    r.assert_refusal(429, "rate_limited");
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "429 needs Retry-After in seconds: {r:?}"
    );
    assert!(message(&r).contains("IP address"), "{}", r.text());
    assert_eq!(
        pending(&srv.stats()),
        Some(3),
        "the refused one is not tracked"
    );

    // The stalled ones leave: their counts are released, and an upgraded connection counts
    // once (the pending count carries over), so exactly three upgrade.
    drop(held);
    wait_pending(&srv, 0);
    let _a = srv.connect("a");
    let _b = srv.connect("b");
    let _c = srv.connect("c");
    srv.wait_connections(3);
    upgrade_as(&srv, "d").assert_refusal(429, "rate_limited");
    wait_pending(&srv, 0);
}

#[test]
fn stalled_sockets_free_their_ip_count_when_they_time_out() {
    let srv = TestServer::start(&[
        "--max-connections-per-ip",
        "3",
        "--handshake-timeout-ms",
        "1500",
    ]);
    let mut held = stalled(&srv, 3);
    upgrade_as(&srv, "early").assert_refusal(429, "rate_limited");
    // The server closes each at its deadline; then the IP's count is back to zero.
    for s in &mut held {
        read_to_close(s);
    }
    wait_pending(&srv, 0);
    let c = srv.connect("late");
    assert_eq!(c.welcome["user"], "late");
}

#[test]
fn pending_handshakes_are_capped_in_all_and_the_gauge_is_exact() {
    let srv = TestServer::start(&[
        "--max-pending-handshakes",
        "5",
        "--handshake-timeout-ms",
        "30000",
    ]);
    let held = stalled(&srv, 5);
    let r = upgrade_as(&srv, "sixth");
    r.assert_refusal(503, "over_capacity");
    assert!(r.header("retry-after").is_some(), "503 needs Retry-After");
    assert!(
        message(&r).contains("max_pending_handshakes"),
        "the refusal names the limit: {}",
        r.text()
    );
    let s = srv.stats();
    assert_eq!(pending(&s), Some(5), "gauge after the cap: {s}");
    drop(held);
    wait_pending(&srv, 0);
    // Room again: a real client gets in.
    srv.connect("after");
}

#[test]
fn silent_sockets_wait_in_the_kernel_until_the_deadline() {
    // The listener defers accepting until a client's first bytes arrive
    // (TCP_DEFER_ACCEPT): sockets that say nothing hold neither a descriptor nor a
    // pending place, so three of them cannot fill two places and crowd out a client that
    // talks. After about one handshake deadline the kernel hands them over anyway, and
    // the server's own bounds and deadline close them.
    let srv = TestServer::start(&[
        "--max-pending-handshakes",
        "2",
        "--handshake-timeout-ms",
        "300",
    ]);
    let mut silent: Vec<TcpStream> = (0..3).map(|_| tcp(srv.ws)).collect();
    let c = srv.connect("talker");
    assert_eq!(c.welcome["user"], "talker");
    assert_eq!(
        pending(&srv.stats()),
        Some(0),
        "silent sockets are not held"
    );
    for s in &mut silent {
        // Closed without a word at the deadline, or 503 if both places were taken.
        let got = String::from_utf8_lossy(&read_to_close(s)).to_string();
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 503"), "{got}");
    }
    let timeouts = r#"throng_handshakes_total{outcome="timeout"}"#;
    assert!(common::tls::metric(srv.api, timeouts) >= 1);
    wait_pending(&srv, 0);
}

#[test]
fn every_end_of_a_handshake_releases_its_counts() {
    // Each way a handshake can end (upgrade, refusal, abort, timeout) must drop the gauge
    // and give back the IP's count: afterwards the IP can still open its full four.
    let srv = TestServer::start(&[
        "--max-connections-per-ip",
        "4",
        "--handshake-timeout-ms",
        "500",
    ]);
    let _first = srv.connect("first");
    raw_http(srv.ws, &upgrade_request(srv.ws, "/ws", &[], &[]))
        .assert_refusal(401, "missing_token");
    let huge = format!("X-Big: {}", "a".repeat(9000));
    raw_http(srv.ws, &upgrade_request(srv.ws, "/ws", &[&huge], &[]))
        .assert_refusal(431, "header_too_large");
    {
        let mut aborted = tcp(srv.ws);
        aborted
            .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
    }
    let mut timed_out = tcp(srv.ws);
    timed_out.write_all(b"GET /ws HTTP/1.1\r\n").unwrap();
    read_to_close(&mut timed_out);
    let s = wait_pending(&srv, 0);
    assert!(
        s["counters"]["handshakes_refused"].as_u64() >= Some(2),
        "refusals counted: {s}"
    );
    let _b = srv.connect("b");
    let _c = srv.connect("c");
    let _d = srv.connect("d");
    upgrade_as(&srv, "e").assert_refusal(429, "rate_limited");
}

#[test]
fn drain_answers_pending_handshakes_and_zeroes_the_gauge() {
    let mut srv = TestServer::start(&["--handshake-timeout-ms", "30000"]);
    let mut held = stalled(&srv, 3);
    srv.shutdown();
    for s in &mut held {
        let got = String::from_utf8_lossy(&read_to_close(s)).to_string();
        assert!(
            got.starts_with("HTTP/1.1 503") && got.contains("draining"),
            "{got}"
        );
    }
    let server = srv.take();
    let metrics = std::sync::Arc::clone(server.metrics());
    server.wait();
    assert_eq!(
        metrics
            .pending_handshakes
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn max_connections_counts_pending_handshakes_and_open_connections_together() {
    // One connection plus one stalled handshake fill two places: the third is refused at
    // accept; when the stalled one leaves, a client gets in.
    let srv = TestServer::start(&["--max-connections", "2", "--handshake-timeout-ms", "30000"]);
    let _a = srv.connect("a");
    srv.wait_connections(1);
    let held = stalled(&srv, 1);
    let r = upgrade_as(&srv, "c");
    r.assert_refusal(503, "over_capacity");
    assert!(message(&r).contains("max_connections"), "{}", r.text());
    drop(held);
    wait_pending(&srv, 0);
    srv.connect("b");
}

// ---- protocol edges --------------------------------------------------------------------

#[test]
fn http_1_0_upgrade_is_refused() {
    let srv = TestServer::start(&[]);
    let auth = format!("Authorization: Bearer {}", token("old"));
    let req = String::from_utf8(upgrade_request(srv.ws, "/ws", &[&auth], &[]))
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    let r = raw_http(srv.ws, req.as_bytes());
    r.assert_refusal(400, "bad_request");
    assert_eq!(message(&r), "WebSocket upgrades need HTTP/1.1");
}

#[test]
fn too_many_header_fields_is_431_and_says_so() {
    let srv = TestServer::start(&[]);
    let auth = format!("Authorization: Bearer {}", token("many"));
    let fields: Vec<String> = (0..60).map(|i| format!("X-F{i}: v")).collect();
    let mut extra: Vec<&str> = fields.iter().map(String::as_str).collect();
    extra.push(&auth);
    let req = upgrade_request(srv.ws, "/ws", &extra, &[]);
    assert!(
        req.len() < 8192,
        "a small head: only the field count is over"
    );
    let r = raw_http(srv.ws, &req);
    r.assert_refusal(431, "header_too_large");
    let m = message(&r);
    assert!(
        m.contains("too many header fields (at most ") && !m.contains("bytes"),
        "the message says which limit: {m}"
    );
    // The same request with fewer fields upgrades.
    let few: Vec<&str> = vec![fields[0].as_str(), fields[1].as_str(), auth.as_str()];
    let ok = raw_http(srv.ws, &upgrade_request(srv.ws, "/ws", &few, &[]));
    assert_eq!(ok.status, 101, "{ok:?}");
}

// ---- startup safety --------------------------------------------------------------------

fn config_on(listen: SocketAddr) -> Config {
    Config::from_args([
        "--listen".to_string(),
        listen.to_string(),
        "--api-listen".into(),
        "127.0.0.1:0".into(),
        "--jwt-secret".into(),
        SECRET.into(),
        "--api-key".into(),
        API_KEY.into(),
    ])
    .expect("config")
}

#[test]
fn second_server_on_the_same_listen_address_fails_to_start() {
    let srv = TestServer::start(&[]);
    let err = match Server::start(config_on(srv.ws)) {
        Ok(_) => panic!("a second server on {} must not start", srv.ws),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("in use") && err.contains(&srv.ws.to_string()),
        "error names the problem and the address: {err}"
    );
    // The first server still owns every client.
    let mut c = srv.connect("still-here");
    srv.push(json!({"user": "still-here", "data": 1}));
    assert_eq!(c.recv()["data"], 1);
}

#[test]
fn throng_serve_exits_nonzero_when_the_address_is_in_use() {
    let srv = TestServer::start(&[]);
    let addr = srv.ws.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_throng"))
        .arg("serve")
        .args(base_args(&["--listen", &addr, "--shards", "1"]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn throng");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("throng kept running on an address already in use");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        !status.success(),
        "exit status {status:?}; stderr: {stderr}"
    );
    assert!(
        stderr.contains("in use") && stderr.contains(&addr),
        "stderr names the problem and the address: {stderr}"
    );
}

#[test]
fn several_acceptors_keep_every_bound_exact() {
    // Three acceptor threads share the listener and the counts behind the bounds.
    let srv = TestServer::start(&[
        "--acceptors",
        "3",
        "--max-pending-handshakes",
        "5",
        "--max-connections",
        "8",
        "--handshake-timeout-ms",
        "30000",
    ]);
    // The pending cap holds in all, whichever acceptor took each socket.
    let held = stalled(&srv, 5);
    upgrade_as(&srv, "sixth").assert_refusal(503, "over_capacity");
    assert_eq!(pending(&srv.stats()), Some(5));
    drop(held);
    wait_pending(&srv, 0);
    // Many upgrades at once, each kept open: exactly max_connections get in.
    let upgraded: Vec<(u16, TcpStream)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..24)
            .map(|i| {
                let srv = &srv;
                s.spawn(move || held_upgrade(srv, &format!("racer-{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let outcomes: Vec<u16> = upgraded.iter().map(|(c, _)| *c).collect();
    let admitted = outcomes.iter().filter(|&&c| c == 101).count();
    let refused = outcomes.iter().filter(|&&c| c == 503).count();
    assert_eq!((admitted, refused), (8, 16), "{outcomes:?}");
    let s = srv.wait_stats("8 connections", |s| s["connections"] == 8);
    assert_eq!(s["connections"], 8, "{s}");
}

#[test]
fn several_acceptors_share_the_per_ip_limits() {
    let srv = TestServer::start(&[
        "--acceptors",
        "3",
        "--max-connections-per-ip",
        "3",
        "--handshake-timeout-ms",
        "30000",
    ]);
    let _held = stalled(&srv, 3);
    upgrade_as(&srv, "fourth").assert_refusal(429, "rate_limited");
    let srv = TestServer::start(&["--acceptors", "3", "--connect-rate-per-ip", "4"]);
    let statuses: Vec<u16> = (0..10)
        .map(|i| upgrade_as(&srv, &format!("burst-{i}")).status)
        .collect();
    let admitted = statuses.iter().filter(|&&c| c == 101).count();
    // A bucket of 4, refilled at 4/s: the burst gets 4, perhaps one more if it is slow.
    assert!((4..=6).contains(&admitted), "{statuses:?}");
}

/// An upgrade for `user` whose socket stays open: the status and the socket.
fn held_upgrade(srv: &TestServer, user: &str) -> (u16, TcpStream) {
    let auth = format!("Authorization: Bearer {}", token(user));
    let mut s = tcp(srv.ws);
    s.write_all(&upgrade_request(srv.ws, "/ws", &[&auth], &[]))
        .unwrap();
    let head = read_head(&mut s);
    let text = String::from_utf8_lossy(&head);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, s)
}
