//! Resuming the user stream after a reconnect (docs/protocol.md 4.1, 4.2): history per
//! user, the offline buffer, `since`/`epoch` on the upgrade, `welcome.resumed`, replay
//! before live pushes, and the history bounds and gauges.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Connects `user` asking to resume after `since` in `epoch`.
fn resume(srv: &TestServer, user: &str, since: u64, epoch: &str) -> Client {
    Client::connect_with(
        srv.ws,
        &format!("/ws?since={since}&epoch={epoch}"),
        &[("Authorization", &format!("Bearer {}", token(user)))],
    )
    .unwrap_or_else(|e| panic!("resume {user}: {e}"))
}

fn epoch_of(c: &Client) -> String {
    c.welcome["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("welcome without epoch: {}", c.welcome))
        .to_string()
}

/// Next push, asserting its type.
fn next_push(c: &mut Client) -> Value {
    let m = c.recv();
    assert_eq!(m["type"], "push", "expected a push, got {m}");
    m
}

/// Closes a client and waits until the server has no session left.
fn leave(srv: &TestServer, mut c: Client) {
    let _ = c.ws.close(None);
    let _ = c.expect_close();
    srv.wait_online(0, 0);
}

/// Upgrade request refused before the handshake completes.
fn refused(srv: &TestServer, path: &str) -> Resp {
    let auth = format!("Authorization: Bearer {}", token("u"));
    raw_http(srv.ws, &upgrade_request(srv.ws, path, &[&auth], &[]))
}

#[test]
fn missed_pushes_are_replayed_in_order_then_live_without_duplicates() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("u");
    assert!(
        c.welcome.get("resumed").is_none(),
        "no resumed without since"
    );
    let epoch = epoch_of(&c);
    srv.push_wait(json!({"user": "u", "data": 1}));
    assert_eq!(next_push(&mut c)["seq"], 1);
    leave(&srv, c);

    // Away: numbered and kept, but the user is not online.
    for i in 2..=4 {
        let r = srv.push_wait(json!({"user": "u", "data": i}));
        assert_eq!(r["delivered"], 0, "{r}");
        assert_eq!(r["users_online"], 0, "{r}");
    }
    let p = srv.api("GET", "/v1/presence/u", None).json();
    assert_eq!(p["online"], false, "{p}");
    assert_eq!(p["sessions"], 0, "{p}");
    assert_eq!(srv.stats()["users_online"], 0);

    let mut c = resume(&srv, "u", 1, &epoch);
    assert_eq!(c.welcome["resumed"], true, "{}", c.welcome);
    assert_eq!(c.welcome["epoch"], epoch.as_str());
    assert_eq!(c.welcome["seq"], 4);
    srv.push(json!({"user": "u", "data": 5}));
    for i in 2..=5 {
        let m = next_push(&mut c);
        assert_eq!(m["seq"], i, "{m}");
        assert_eq!(m["data"], i, "{m}");
    }
    c.barrier("after-live");
}

#[test]
fn live_pushes_during_a_replay_come_after_it_with_no_gap() {
    let srv = TestServer::start(&["--history-size", "1000"]);
    let c = srv.connect("u");
    let epoch = epoch_of(&c);
    leave(&srv, c);
    const AWAY: u64 = 200;
    const LIVE: u64 = 100;
    let body: String = (1..=AWAY)
        .map(|i| json!({"user": "u", "data": i}).to_string() + "\n")
        .collect();
    let r = srv.api("POST", "/v1/push/batch", Some(&body));
    assert_eq!(r.json()["accepted"], AWAY, "{}", r.text());
    srv.wait_stats("the batch numbered", |s| {
        s["history_bytes"].as_u64().unwrap_or(0) > 0
    });
    // Pushes race with the reconnect and with the replay being written.
    let api = srv.api;
    let pusher = std::thread::spawn(move || {
        let mut conn = HttpConn::connect(api);
        for i in AWAY + 1..=AWAY + LIVE {
            let body = json!({"user": "u", "data": i}).to_string();
            let r = conn.request("POST", "/v1/push", Some(API_KEY), Some(&body));
            assert_eq!(r.status, 202, "{}", r.text());
        }
    });
    let mut c = resume(&srv, "u", 0, &epoch);
    assert_eq!(c.welcome["resumed"], true, "{}", c.welcome);
    let mut expect = 1;
    while expect <= AWAY + LIVE {
        let m = next_push(&mut c);
        // Every push the server numbered reached this session: the ones before its welcome
        // as replay, the rest live; exactly once each, in order.
        assert_eq!(m["seq"], expect, "{m}");
        assert_eq!(m["data"], expect, "{m}");
        expect += 1;
    }
    pusher.join().expect("pusher");
    c.barrier("done");
}

#[test]
fn wrong_epoch_or_since_beyond_current_is_not_resumed() {
    let srv = TestServer::start(&[]);
    let c = srv.connect("u");
    let epoch = epoch_of(&c);
    leave(&srv, c);
    srv.push_wait(json!({"user": "u", "data": 1}));
    srv.push_wait(json!({"user": "u", "data": 2}));

    let mut c = resume(&srv, "u", 0, "0123456789abcdef");
    assert_eq!(c.welcome["resumed"], false, "{}", c.welcome);
    assert_eq!(c.welcome["seq"], 2, "{}", c.welcome);
    c.barrier("nothing old");
    leave(&srv, c);

    let mut c = resume(&srv, "u", 3, &epoch);
    assert_eq!(c.welcome["resumed"], false, "{}", c.welcome);
    c.barrier("nothing old either");
    leave(&srv, c);

    // Up to date: resumed, nothing to replay.
    let mut c = resume(&srv, "u", 2, &epoch);
    assert_eq!(c.welcome["resumed"], true, "{}", c.welcome);
    c.barrier("nothing to replay");
}

#[test]
fn evicted_history_is_not_resumed() {
    let srv = TestServer::start(&["--history-size", "2"]);
    let c = srv.connect("u");
    let epoch = epoch_of(&c);
    leave(&srv, c);
    for i in 1..=5 {
        srv.push_wait(json!({"user": "u", "data": i}));
    }
    let mut c = resume(&srv, "u", 0, &epoch);
    assert_eq!(
        c.welcome["resumed"], false,
        "seqs 1-3 are gone: {}",
        c.welcome
    );
    c.barrier("nothing old");
    leave(&srv, c);
    // The last two are still held.
    let mut c = resume(&srv, "u", 3, &epoch);
    assert_eq!(c.welcome["resumed"], true, "{}", c.welcome);
    assert_eq!(next_push(&mut c)["seq"], 4);
    assert_eq!(next_push(&mut c)["seq"], 5);
    c.barrier("end");
    assert!(srv.counter("history_evictions") >= 3);
}

#[test]
fn retained_user_expires_after_ttl_with_a_new_epoch() {
    let srv = TestServer::start(&["--history-ttl-ms", "300"]);
    let mut c = srv.connect("u");
    let epoch = epoch_of(&c);
    srv.push_wait(json!({"user": "u", "data": 1}));
    next_push(&mut c);
    leave(&srv, c);
    // Kept while away, after the last session left: its history goes with the entry.
    srv.push_wait(json!({"user": "u", "data": 2}));
    srv.wait_stats("history and the user expired", |s| {
        s["history_bytes"].as_u64() == Some(0)
    });
    let c = resume(&srv, "u", 2, &epoch);
    assert_eq!(c.welcome["resumed"], false, "{}", c.welcome);
    assert_eq!(c.welcome["seq"], 0, "numbering restarted: {}", c.welcome);
    assert_ne!(epoch_of(&c), epoch, "a new life has a new epoch");
}

#[test]
fn history_bytes_gauge_is_exact() {
    let srv = TestServer::start(&["--shards", "1"]);
    let mut c = srv.connect("u");
    let mut expect = 0;
    for data in [json!("a"), json!({"k": [1, 2, 3]})] {
        srv.push_wait(json!({"user": "u", "data": data}));
        let m = next_push(&mut c);
        let text = format!(
            "{{\"type\":\"push\",\"seq\":{},\"ts\":{},\"data\":{}}}",
            m["seq"], m["ts"], data
        );
        // A text frame under 126 bytes has a 2-byte header.
        expect += text.len() as u64 + 2;
    }
    let s = srv.stats();
    assert_eq!(s["history_bytes"], expect, "{s}");
    let metrics = srv.api("GET", "/metrics", None).text();
    assert!(
        metrics.contains(&format!("throng_history_bytes{{shard=\"0\"}} {expect}")),
        "{metrics}"
    );
    assert!(metrics.contains("throng_history_evictions_total{shard=\"0\"} 0"));
}

#[test]
fn history_memory_cap_evicts_oldest_and_counts() {
    let srv = TestServer::start(&["--shards", "1", "--history-memory-bytes", "1000"]);
    let mut a = srv.connect("a");
    let mut b = srv.connect("b");
    let data = "x".repeat(100);
    for _ in 0..10 {
        srv.push_wait(json!({"user": "a", "data": data}));
        srv.push_wait(json!({"user": "b", "data": data}));
    }
    for _ in 0..10 {
        next_push(&mut a);
        next_push(&mut b);
    }
    let s = srv.stats();
    let held = s["history_bytes"].as_u64().unwrap();
    assert!(held <= 1000 && held > 0, "{s}");
    assert!(
        s["counters"]["history_evictions"].as_u64().unwrap() >= 10,
        "{s}"
    );
    // The oldest went first, across users: a's first push is gone, its last ones are not.
    let epoch = epoch_of(&a);
    leave_one(a);
    let c = resume(&srv, "a", 0, &epoch);
    assert_eq!(c.welcome["resumed"], false, "{}", c.welcome);
    let mut c = resume(&srv, "a", 9, &epoch);
    assert_eq!(c.welcome["resumed"], true, "{}", c.welcome);
    assert_eq!(next_push(&mut c)["seq"], 10);
}

fn leave_one(mut c: Client) {
    let _ = c.ws.close(None);
    let _ = c.expect_close();
}

#[test]
fn malformed_resume_parameters_are_refused() {
    let srv = TestServer::start(&[]);
    for (path, names) in [
        ("/ws?since=x&epoch=abc", "since"),
        ("/ws?since=-1&epoch=abc", "since"),
        ("/ws?since=1&epoch=", "epoch"),
        (
            "/ws?since=1&epoch=0123456789abcdef0123456789abcdef0",
            "epoch",
        ),
        ("/ws?since=1&epoch=a%0Ab", "epoch"),
        ("/ws?since=1", "together"),
        ("/ws?epoch=abc", "together"),
    ] {
        let r = refused(&srv, path);
        r.assert_refusal(400, "bad_request");
        let msg = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(
            msg.contains(names),
            "{path}: message {msg:?} must name {names}"
        );
    }
}

#[test]
fn replay_over_max_outbound_bytes_closes_4008() {
    let srv = TestServer::start(&["--max-outbound-bytes", "65536", "--history-size", "1000"]);
    let c = srv.connect("u");
    let epoch = epoch_of(&c);
    leave(&srv, c);
    let data = "z".repeat(16 * 1024);
    for _ in 0..200 {
        srv.push(json!({"user": "u", "data": data}));
    }
    srv.wait_stats("200 pushes held", |s| {
        s["history_bytes"].as_u64().unwrap_or(0) > 200 * 16 * 1024
    });
    // A client that never reads, with a small receive buffer.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&srv.ws.into(), IO_TIMEOUT).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let auth = format!("Authorization: Bearer {}", token("u"));
    let path = format!("/ws?since=0&epoch={epoch}");
    s.write_all(&upgrade_request(srv.ws, &path, &[&auth], &[]))
        .unwrap();
    srv.wait_stats("the replay overflowed", |s| {
        s["counters"]["slow_consumer_closes"].as_u64() == Some(1)
    });
    srv.wait_connections(0);
    // The socket ends: whatever made it, then the close (or a reset).
    let mut sink = vec![0u8; 1 << 16];
    assert!(wait_until(Duration::from_secs(10), || !matches!(
        s.read(&mut sink),
        Ok(n) if n > 0
    )));
}
