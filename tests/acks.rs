//! Client acks of the user stream (docs/protocol.md 4.3): recorded per session, counted in
//! `throng_acks_total`, timed in `throng_ack_latency_seconds`, shown in
//! `GET /v1/presence/<user>` `details`, and forgotten with their session
//! (`throng_acked_sessions`).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn presence(srv: &TestServer, user: &str) -> Value {
    let r = srv.api("GET", &format!("/v1/presence/{user}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The presence detail of `session`, if listed.
fn detail(p: &Value, session: &str) -> Option<Value> {
    p["details"]
        .as_array()?
        .iter()
        .find(|d| d["session"] == session)
        .cloned()
}

/// Polls presence until `cond` holds; panics with the last answer.
fn wait_presence(srv: &TestServer, user: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(10), || {
        last = presence(srv, user);
        cond(&last)
    });
    assert!(ok, "presence never matched; last: {last}");
    last
}

fn session_of(c: &Client) -> String {
    c.welcome["session"]
        .as_str()
        .unwrap_or_else(|| panic!("welcome without session: {}", c.welcome))
        .to_string()
}

#[test]
fn acks_are_recorded_per_session_counted_and_shown_in_presence() {
    let srv = TestServer::start(&[]);
    let p = presence(&srv, "u");
    assert_eq!(p["details"], json!([]), "{p}");

    let mut a = srv.connect("u");
    let mut b = srv.connect("u");
    let (sa, sb) = (session_of(&a), session_of(&b));
    assert_ne!(sa, sb);
    for i in 1..=3 {
        srv.push_wait(json!({"user": "u", "data": i}));
    }
    for c in [&mut a, &mut b] {
        for _ in 0..3 {
            assert_eq!(c.recv()["type"], "push");
        }
    }
    a.send(json!({"type": "ack", "seq": 2}));
    a.barrier("a1");

    let p = presence(&srv, "u");
    assert_eq!(p["sessions"], 2, "{p}");
    assert_eq!(p["details"].as_array().map(Vec::len), Some(2), "{p}");
    let da = detail(&p, &sa).unwrap_or_else(|| panic!("no {sa} in {p}"));
    let db = detail(&p, &sb).unwrap_or_else(|| panic!("no {sb} in {p}"));
    assert_eq!(da["acked"], 2, "{p}");
    assert_eq!(db["acked"], 0, "no ack yet: {p}");
    assert!(
        da["connected_ms"].is_u64() && db["connected_ms"].is_u64(),
        "{p}"
    );

    // The highest ack stays; a lower one is counted but does not go back.
    a.send(json!({"type": "ack", "seq": 3}));
    a.send(json!({"type": "ack", "seq": 1}));
    b.send(json!({"type": "ack", "seq": 3}));
    a.barrier("a2");
    b.barrier("b2");
    let p = presence(&srv, "u");
    assert_eq!(
        detail(&p, &sa).map(|d| d["acked"].clone()),
        Some(json!(3)),
        "{p}"
    );
    assert_eq!(
        detail(&p, &sb).map(|d| d["acked"].clone()),
        Some(json!(3)),
        "{p}"
    );

    assert_eq!(srv.counter("acks"), 4);
    let metrics = srv.api("GET", "/metrics", None).text();
    let total: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("throng_acks_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(total, 4, "{metrics}");
}

#[test]
fn an_ack_beyond_the_stream_is_refused_and_not_recorded() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("u");
    let s = session_of(&c);
    srv.push_wait(json!({"user": "u", "data": 1}));
    assert_eq!(c.recv()["seq"], 1);
    c.send(json!({"type": "ack", "seq": 1}));
    c.send(json!({"type": "ack", "seq": 5, "ref": "r"}));
    let m = c.recv();
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["code"], "bad_json", "{m}");
    assert_eq!(m["ref"], "r", "{m}");
    let msg = m["message"].as_str().unwrap_or_default();
    assert!(msg.contains('5') && msg.contains("current seq 1"), "{m}");
    c.barrier("open");
    let p = presence(&srv, "u");
    assert_eq!(
        detail(&p, &s).map(|d| d["acked"].clone()),
        Some(json!(1)),
        "{p}"
    );
    assert_eq!(srv.counter("acks"), 1);
}

#[test]
fn a_closed_session_leaves_the_details() {
    let srv = TestServer::start(&[]);
    let mut a = srv.connect("u");
    let b = srv.connect("u");
    let (sa, sb) = (session_of(&a), session_of(&b));
    srv.push_wait(json!({"user": "u", "data": 1}));
    assert_eq!(a.recv()["seq"], 1);
    a.send(json!({"type": "ack", "seq": 1}));
    a.barrier("a");
    let _ = a.ws.close(None);
    let _ = a.expect_close();
    let p = wait_presence(&srv, "u", |p| p["sessions"] == 1);
    assert_eq!(p["details"].as_array().map(Vec::len), Some(1), "{p}");
    assert!(detail(&p, &sa).is_none(), "{p}");
    assert_eq!(
        detail(&p, &sb).map(|d| d["acked"].clone()),
        Some(json!(0)),
        "{p}"
    );
    drop(b);
    let p = wait_presence(&srv, "u", |p| p["sessions"] == 0);
    assert_eq!(p["details"], json!([]), "{p}");
}

/// The sum over shards of the `/metrics` samples of `family` (a name without labels, or
/// one of a histogram's `_count`/`_sum` lines).
fn metric(srv: &TestServer, family: &str) -> f64 {
    let text = srv.api("GET", "/metrics", None).text();
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `family` reads `want`, then returns what it reads.
fn wait_metric(srv: &TestServer, family: &str, cond: impl Fn(f64) -> bool) -> f64 {
    let mut last = f64::NAN;
    let ok = wait_until(Duration::from_secs(10), || {
        last = metric(srv, family);
        cond(last)
    });
    assert!(ok, "{family} never matched; last {last}");
    last
}

#[test]
fn the_first_ack_covering_a_held_push_is_timed() {
    // History keeps 2 pushes per user: after 3, seq 1 is no longer held.
    let srv = TestServer::start(&["--history-size", "2"]);
    let count = "throng_ack_latency_seconds_count";
    assert_eq!(metric(&srv, count), 0.0);
    let mut a = srv.connect("u");
    let mut b = srv.connect("u");
    for i in 1..=3 {
        srv.push_wait(json!({"user": "u", "data": i}));
    }
    for c in [&mut a, &mut b] {
        for _ in 0..3 {
            assert_eq!(c.recv()["type"], "push");
        }
    }
    // Not timed: seq 0 covers no push, seq 1 left history, a repeat is not a first ack.
    // Timed: seq 3, last on this connection, so whatever the acks before it recorded is
    // merged no later than it is.
    for seq in [0, 1, 1, 3] {
        a.send(json!({"type": "ack", "seq": seq}));
    }
    a.barrier("a");
    wait_metric(&srv, count, |n| n >= 1.0);
    assert_eq!(metric(&srv, count), 1.0, "only the ack of seq 3 is timed");
    let inf = metric(&srv, "throng_ack_latency_seconds_bucket{le=\"+Inf\"}");
    assert_eq!(inf, 1.0);
    assert!(metric(&srv, "throng_ack_latency_seconds_sum") > 0.0);

    // Each session's first ack covering a held push counts: b's ack of seq 2; a's lower
    // ack of seq 2 does not (seq 3 already covered it for a).
    a.send(json!({"type": "ack", "seq": 2}));
    b.send(json!({"type": "ack", "seq": 2}));
    a.barrier("a2");
    b.barrier("b2");
    wait_metric(&srv, count, |n| n >= 2.0);
    assert_eq!(metric(&srv, count), 2.0);
    assert_eq!(srv.counter("acks"), 6, "every ack is counted, timed or not");
}

#[test]
fn a_closed_sessions_ack_is_forgotten_and_its_slot_starts_at_zero() {
    let srv = TestServer::start(&[]);
    let gauge = "throng_acked_sessions";
    let mut a = srv.connect("u");
    srv.push_wait(json!({"user": "u", "data": 1}));
    assert_eq!(a.recv()["seq"], 1);
    a.send(json!({"type": "ack", "seq": 1}));
    a.barrier("a");
    wait_metric(&srv, gauge, |n| n == 1.0);
    let _ = a.ws.close(None);
    let _ = a.expect_close();
    drop(a);
    // The entry goes when the connection's slot does, not just out of presence.
    wait_metric(&srv, gauge, |n| n == 0.0);
    srv.wait_connections(0);

    // The next connection takes the freed slot: it must not inherit the old ack.
    let b = srv.connect("u");
    let sb = session_of(&b);
    let p = wait_presence(&srv, "u", |p| p["sessions"] == 1);
    assert_eq!(
        detail(&p, &sb).map(|d| d["acked"].clone()),
        Some(json!(0)),
        "{p}"
    );
    assert_eq!(metric(&srv, gauge), 0.0);
}

#[test]
fn many_sessions_that_ack_and_go_leave_no_entry() {
    let srv = TestServer::start(&[]);
    let users: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
    let mut clients: Vec<Client> = users.iter().map(|u| srv.connect(u)).collect();
    for u in &users {
        srv.push(json!({"user": u, "data": 1}));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.recv()["seq"], 1);
        c.send(json!({"type": "ack", "seq": 1}));
        c.barrier(&format!("c{i}"));
    }
    wait_metric(&srv, "throng_acked_sessions", |n| n == 40.0);
    // Half close cleanly, half vanish without a close frame.
    for (i, mut c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            let _ = c.ws.close(None);
            let _ = c.expect_close();
        }
        drop(c);
    }
    srv.wait_connections(0);
    wait_metric(&srv, "throng_acked_sessions", |n| n == 0.0);
    assert_eq!(srv.counter("acks"), 40);
    for u in &users[..3] {
        assert_eq!(presence(&srv, u)["details"], json!([]));
    }
}

#[test]
fn a_client_that_acks_every_push_at_a_low_rate_is_not_closed() {
    // At client_rate 1 a bucket holds one token and small acks cost 15 thousandths each:
    // 300 acks in one read take it past a whole bucket in debt. There only small messages
    // are read (padded acks are refused unread, tests/deflate.rs); an ack is one, so acking
    // every push of a replay does not end in 1008.
    let srv = TestServer::start(&["--client-rate", "1"]);
    let mut ws = RawWs::connect(srv.ws, &token("alice"));
    for i in 0..300 {
        srv.push(json!({"user": "alice", "data": i}));
    }
    let mut last = 0;
    while last < 300 {
        let m = ws.read_json();
        assert_eq!(m["type"], "push", "{m}");
        last = m["seq"].as_u64().unwrap();
    }
    let acks: Vec<u8> = (1..=300)
        .flat_map(|seq| {
            let m = json!({"type": "ack", "seq": seq}).to_string();
            encode_frame(true, 0, OP_TEXT, m.as_bytes(), Some([1, 2, 3, 4]))
        })
        .collect();
    ws.send_bytes(&acks);
    let session = ws.welcome["session"].as_str().unwrap().to_string();
    wait_presence(&srv, "alice", |p| {
        detail(p, &session).is_some_and(|d| d["acked"] == 300)
    });
    assert_eq!(srv.stats()["connections"], 1);
}
