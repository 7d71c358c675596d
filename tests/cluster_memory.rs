//! Cluster mode: a `users` push is one script call per user, each carrying the body. The
//! publisher sends them to Redis in parts of a few MiB, so the node's peak memory stays
//! near one part rather than users x data (review s18b: one push of 900 KiB to 800 users
//! took a node to 1,422 MiB). A test binary of its own: the peak (`VmHWM`) is the whole
//! process's, and no other test runs beside it.

mod common;

use common::redis_server::RedisServer;
use common::*;
use serde_json::json;

#[test]
fn a_push_to_many_users_goes_to_redis_in_parts_not_held_whole() {
    const USERS: usize = 300;
    const DATA: usize = 600_000;
    let redis = RedisServer::start();
    let url = redis.url();
    let srv = TestServer::start(&["--redis", url.as_str(), "--shards", "1"]);
    let ready = wait_until(WAIT, || srv.api("GET", "/readyz", None).status == 200);
    assert!(ready, "{}", srv.api("GET", "/readyz", None).text());
    let users: Vec<String> = (0..USERS).map(|i| format!("fan{i}")).collect();
    let mut first = srv.connect(&users[0]);
    let mut last = srv.connect(&users[USERS - 1]);
    srv.wait_stats("both users' streams served", |s| {
        s["cluster"]["broker_streams"].as_u64() == Some(2)
    });
    let data = "x".repeat(DATA);
    let body = json!({"users": users, "data": data});
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
