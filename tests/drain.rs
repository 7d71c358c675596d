//! Draining (docs/protocol.md 1.2 and 4.5): `POST /v1/drain` and SIGTERM make `/readyz`
//! 503, refuse new upgrades with 503 `draining`, give every connection a `reconnect` hint
//! spread over `drain_ms`, close each with 1001 on its turn, and end the server.

mod common;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::json;

fn start_drain(srv: &TestServer) {
    let r = srv.api("POST", "/v1/drain", None);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["draining"], true, "{}", r.text());
}

/// A refused upgrade's answer: the status line and body.
fn upgrade_answer(s: &mut std::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn drain_spreads_reconnect_hints_then_closes_each_1001() {
    let mut srv = TestServer::start(&["--drain-ms", "600"]);
    let mut clients: Vec<Client> = (0..20).map(|i| srv.connect(&format!("d{i}"))).collect();
    srv.wait_connections(20);
    start_drain(&srv);
    let mut afters = Vec::new();
    for c in &mut clients {
        let hint = c.recv();
        assert_eq!(hint["type"], "reconnect", "{hint}");
        let after = hint["after_ms"].as_u64().expect("after_ms");
        assert!(after < 600, "{hint}");
        afters.push(after);
    }
    // Spread over the window, not all at once (20 uniform draws: a range under a quarter of
    // the window has odds of about 1 in 10^10).
    let (min, max) = (afters.iter().min().unwrap(), afters.iter().max().unwrap());
    assert!(max - min >= 150, "turns not spread: {afters:?}");
    let r = srv.api("GET", "/readyz", None);
    r.assert_error(503, "draining");
    for c in &mut clients {
        assert_eq!(c.expect_close(), Closed::Code(Some(1001)));
    }
    // The clients hang up: the server is done without waiting out its grace period.
    drop(clients);
    let server = srv.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.wait_checked());
    });
    let ended = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server ended after the drain");
    assert_eq!(ended, Ok(()));
}

#[test]
fn while_draining_new_upgrades_get_503_and_waiting_clients_still_get_pushes() {
    let srv = TestServer::start(&["--drain-ms", "60000"]);
    let mut waiting = srv.connect("waiting");
    // A handshake in progress when the drain begins is answered 503 draining.
    let auth = format!("Authorization: Bearer {}", token("midway"));
    let request = upgrade_request(srv.ws, "/ws", &[&auth], &[]);
    let mut midway = tcp(srv.ws);
    midway.write_all(&request[..20]).unwrap();
    srv.wait_stats("handshake in progress", |s| s["pending_handshakes"] == 1);
    start_drain(&srv);
    assert_eq!(waiting.recv()["type"], "reconnect");
    midway.write_all(&request[20..]).unwrap();
    let answer = upgrade_answer(&mut midway);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("\"draining\""), "{answer}");
    let mut late = tcp(srv.ws);
    late.write_all(&request).unwrap();
    let answer = upgrade_answer(&mut late);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("Retry-After"), "{answer}");
    // The connection waiting for its turn is still served.
    srv.push(json!({"user": "waiting", "data": "still here"}));
    assert_eq!(waiting.recv()["data"], "still here");
    srv.api("GET", "/readyz", None)
        .assert_error(503, "draining");
    srv.api("GET", "/healthz", None);
}

/// A user id whose sessions live on shard `shard` of `n`.
fn user_on(shard: usize, n: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|u| throng::route::shard_of(u, n) == shard)
        .expect("some user lands on every shard")
}

#[test]
fn pushes_during_a_drain_reach_every_shard_once_while_one_shard_is_already_empty() {
    // Shard 1 has nobody from the start: it is drained at the first step, and must still
    // take its part of every push until the API stops (before, it ended at once and every
    // topic push, broadcast and users push got 503 after reaching shard 0, its seq
    // handed out again).
    let mut srv = TestServer::start(&["--drain-ms", "60000", "--shards", "2"]);
    let (u0, u1) = (user_on(0, 2, "zero"), user_on(1, 2, "one"));
    let mut c = srv.connect_topics(&u0, &["t"]);
    c.send(json!({"type": "subscribe", "topic": "t", "ref": "s"}));
    assert_eq!(c.recv()["type"], "subscribed");
    start_drain(&srv);
    assert_eq!(c.recv()["type"], "reconnect");
    for i in 1..=5u64 {
        srv.push(json!({"topic": "t", "data": i}));
        let m = c.recv();
        assert_eq!(
            (m["seq"].as_u64(), m["data"].as_u64()),
            (Some(i), Some(i)),
            "{m}"
        );
    }
    srv.push(json!({"broadcast": true, "data": "all"}));
    assert_eq!(c.recv()["data"], "all");
    let users = json!({"users": [u0, u1], "id": "order-1", "data": "shipped"});
    srv.push(users.clone());
    srv.push(users);
    let m = c.recv();
    assert_eq!(
        (m["seq"].as_u64(), m["id"].as_str()),
        (Some(1), Some("order-1")),
        "{m}"
    );
    c.barrier("after");
    let r = srv.api("GET", "/v1/topics/t", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["seq"], 5, "{}", r.text());
    // Once the client hangs up, both shards are drained and the server ends.
    drop(c);
    let server = srv.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.wait_checked());
    });
    let ended = rx.recv_timeout(Duration::from_secs(10)).expect("ended");
    assert_eq!(ended, Ok(()));
}

#[test]
fn drain_with_no_clients_ends_at_once() {
    let mut srv = TestServer::start(&["--drain-ms", "60000"]);
    start_drain(&srv);
    let server = srv.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.wait_checked());
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5))
            .expect("no connections: the drain ends at once"),
        Ok(())
    );
}
