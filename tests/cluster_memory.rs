//! Cluster mode, what a node holds at its peak (review s18b): a `users` push is one
//! script call per user, each carrying the body, sent to Redis in parts of a few MiB
//! (one push of 900 KiB to 800 users took a node to 1,422 MiB); the histories of users
//! new on a node are read from Redis one at a time (sixteen first sessions of users with
//! 20 MiB of history each took a node to 345 MiB). A test binary of its own: the peak
//! (`VmHWM`) is the whole process's; its tests run one at a time, each from a reset peak.

mod common;

use std::sync::Mutex;

use common::redis_server::RedisServer;
use common::*;
use serde_json::json;

/// One test at a time: the peak is the process's.
static ALONE: Mutex<()> = Mutex::new(());

/// A cluster node on `redis` with `extra` flags, ready.
fn node(redis: &RedisServer, extra: &[&str]) -> TestServer {
    cluster_node(&redis.url(), extra)
}

#[test]
fn first_sessions_read_their_users_histories_one_at_a_time() {
    const USERS: usize = 16;
    const PUSHES: usize = 10;
    const DATA: usize = 1_000_000;
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let redis = RedisServer::start();
    let budget = ["--max-outbound-total-bytes", "16777216"];
    let history = ["--history-memory-bytes", "16777216"];
    let a = node(&redis, &[&budget[..], &history[..]].concat());
    let users: Vec<String> = (0..USERS).map(|i| format!("hist{i}")).collect();
    let data = "h".repeat(DATA);
    for _ in 0..PUSHES {
        let r = a.push_wait(json!({"users": users, "data": data}));
        assert_eq!(r["users"].as_object().map(|m| m.len()), Some(USERS), "{r}");
    }
    // A node that serves none of them yet: their first sessions load all sixteen
    // histories (160 MB in Redis) in one trip.
    let b = node(&redis, &[&budget[..], &history[..]].concat());
    reset_peak_rss();
    let before = peak_rss_kib();
    // All at once, so the node asks for their streams together.
    let addr = b.ws;
    let clients: Vec<Client> = std::thread::scope(|scope| {
        let handshakes: Vec<_> = users
            .iter()
            .map(|u| {
                scope.spawn(move || {
                    let auth = format!("Bearer {}", token(u));
                    Client::connect_with(addr, "/ws", &[("Authorization", &auth)])
                        .unwrap_or_else(|e| panic!("{u}: {e}"))
                })
            })
            .collect();
        handshakes
            .into_iter()
            .map(|h| h.join().expect("handshake"))
            .collect()
    });
    let grown_kib = peak_rss_kib().saturating_sub(before);
    eprintln!("first sessions: peak grew by {grown_kib} KiB");
    for c in &clients {
        assert_eq!(c.welcome["seq"], PUSHES, "{}", c.welcome);
    }
    // Read whole, the trip was 16 x 10 MB of replies and as much again of frames; one
    // history at a time, about two of them (plus the shards' history budget).
    assert!(
        grown_kib < 96 * 1024,
        "peak memory grew by {grown_kib} KiB for {USERS} first sessions (histories: {} KiB)",
        USERS * PUSHES * DATA / 1024
    );
}

#[test]
fn a_push_to_many_users_goes_to_redis_in_parts_not_held_whole() {
    const USERS: usize = 300;
    const DATA: usize = 600_000;
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let redis = RedisServer::start();
    let srv = node(&redis, &["--shards", "1"]);
    let users: Vec<String> = (0..USERS).map(|i| format!("fan{i}")).collect();
    let mut first = srv.connect(&users[0]);
    let mut last = srv.connect(&users[USERS - 1]);
    srv.wait_stats("both users' streams served", |s| {
        s["cluster"]["broker_streams"].as_u64() == Some(2)
    });
    let data = "x".repeat(DATA);
    let body = json!({"users": users, "data": data});
    reset_peak_rss();
    let before = peak_rss_kib();
    let answer = srv.push_wait(body);
    let grown_kib = peak_rss_kib().saturating_sub(before);
    for u in [&users[0], &users[USERS - 1]] {
        assert_eq!(answer["users"][u]["seq"], 1, "{u}: {}", answer["users"][u]);
    }
    assert_eq!(
        answer["users"].as_object().map(|m| m.len()),
        Some(USERS),
        "every user numbered"
    );
    // Held whole, the script calls alone were USERS x DATA = 172 MiB, and the packed
    // pipeline as much again; in parts, a few MiB (plus the request and its answer).
    assert!(
        grown_kib < 48 * 1024,
        "peak memory grew by {grown_kib} KiB for one push (bodies sent: {} KiB)",
        USERS * DATA / 1024
    );
    for c in [&mut first, &mut last] {
        let m = c.recv();
        assert_eq!(m["seq"], 1, "{}", m["type"]);
        assert_eq!(m["data"].as_str().map(str::len), Some(DATA));
    }
}
