//! throng-load against two Throng nodes in cluster mode sharing one real `redis-server`
//! (started per test): connections over both nodes' URLs, pushes through the Redis stream
//! `throng:push` or one node's HTTP API, every push delivered exactly once on both nodes.

mod common;

use std::time::Duration;

use common::redis_server::RedisServer;
use common::*;

/// A node on `redis`, ready (its broker reached Redis).
fn node(redis: &RedisServer) -> TestServer {
    node_with(redis, &[])
}

/// A node on `redis` with `extra` flags, ready.
fn node_with(redis: &RedisServer, extra: &[&str]) -> TestServer {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend_from_slice(extra);
    let srv = TestServer::start(&args);
    let mut last = (0, String::new());
    let ready = wait_until(Duration::from_secs(10), || {
        last = http(srv.api, "GET", "/readyz", None, None);
        last.0 == 200
    });
    assert!(ready, "node never became ready: {last:?}");
    srv
}

/// `--url` listing both nodes: connection i goes to `a` when i is even, `b` when odd.
fn both_urls(a: &TestServer, b: &TestServer) -> String {
    format!("{},{}", a.url(), b.url())
}

/// The flags of a push run of `connections` over both nodes, pushing with `--api` on `a`.
fn two_node_args(a: &TestServer, b: &TestServer, connections: u64, extra: &[&str]) -> Vec<String> {
    let mut args = strings(extra);
    args.extend(a.push_args(connections));
    set_flag(&mut args, "--url", &both_urls(a, b));
    args
}

/// Sets the value of `flag` (already in `args`) to `value`.
fn set_flag(args: &mut [String], flag: &str, value: &str) {
    let at = args.iter().position(|x| x == flag).unwrap();
    args[at + 1] = value.to_string();
}

/// Entries ever added to `throng:push` (`entries-added`: the nodes trim what they have
/// acknowledged, so its length tells less).
fn stream_added(redis: &RedisServer) -> u64 {
    let info: redis::RedisResult<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("XINFO")
            .arg("STREAM")
            .arg("throng:push")
            .query(&mut redis.conn());
    match info {
        Ok(fields) => match fields.get("entries-added") {
            Some(redis::Value::Int(n)) => *n as u64,
            other => panic!("XINFO STREAM entries-added: {other:?}"),
        },
        // No stream at all: nothing was added.
        Err(e) if e.to_string().contains("no such key") => 0,
        Err(e) => panic!("XINFO STREAM: {e}"),
    }
}

/// Nothing missing, doubled or unexpected (nor reordered when `ordered`); no push or
/// connection error.
fn assert_exact(r: &Report, pushes: u64, expected: u64, ordered: bool) {
    r.eq("pushes_sent", pushes);
    r.eq("messages_expected", expected);
    r.eq("messages_received", expected);
    r.eq("messages_missing", 0);
    r.eq("messages_duplicated", 0);
    if ordered {
        r.eq("messages_out_of_order", 0);
    }
    r.eq("messages_unexpected", 0);
    r.eq("receivers_lost", 0);
    r.eq("latency_us/count", expected);
    r.map_eq("push_errors", &[]);
    r.map_eq("connect_errors", &[]);
    r.map_eq("disconnects", &[]);
}

/// Waits until `srv`'s shards have delivered `n` pushes (the counter lags the client).
fn wait_delivered(srv: &TestServer, n: u64, r: &Report) {
    let mut got = 0;
    let ok = wait_until(Duration::from_secs(5), || {
        got = srv.counter("pushes_delivered");
        got == n
    });
    r.check(
        ok,
        &format!("node {} delivered {got}, expected {n}", srv.ws),
    );
}

#[test]
fn stream_pushes_reach_every_session_on_both_nodes_exactly_once() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    // 20 users with 2 sessions each: connection 2u on a, 2u+1 on b (a phone and a laptop).
    let mut args = two_node_args(
        &a,
        &b,
        40,
        &[
            "push",
            "--redis-stream",
            &redis.url(),
            "--target",
            "user",
            "--sessions-per-user",
            "2",
            "--count",
            "200",
            "--batch",
            "10",
            "--api-concurrency",
            "2",
        ],
    );
    // Idle first: each node's subscriber then checks its silent link with a PING.
    set_flag(&mut args, "--hold-secs", "3");
    let r = run_load(args);
    r.eq("connections_opened", 40);
    assert_exact(&r, 200, 400, true);
    // Ten XADDs per round trip, and every push went through the stream, not the API.
    r.eq("push_requests", 20);
    assert_eq!(stream_added(&redis), 200);
    assert_eq!(
        a.counter("pushes_accepted") + b.counter("pushes_accepted"),
        0
    );
    // Each user had one session on each node, so each node delivered each push once.
    wait_delivered(&a, 200, &r);
    wait_delivered(&b, 200, &r);
    // The links stayed up through the idle time: no reconnect, so each node loaded each
    // of its 20 users' streams once (a PING answered ["pong", ""] used to be taken for a
    // lost link, every second, each time resubscribing and reloading every stream).
    for n in [&a, &b] {
        let c = &n.stats()["cluster"];
        r.check(
            c["broker_errors"] == 0 && c["broker_loads"] == 20,
            &format!("node {}: {c}", n.ws),
        );
    }
}

#[test]
fn stream_pushes_through_a_redis_that_speaks_only_tls() {
    let redis = RedisServer::start_tls();
    let ca = ["--redis-ca", redis.ca_path()];
    let (a, b) = (node_with(&redis, &ca), node_with(&redis, &ca));
    let url = redis.url();
    let r = run_load(two_node_args(
        &a,
        &b,
        10,
        &[
            "push",
            "--redis-stream",
            &url,
            "--redis-ca",
            redis.ca_path(),
            "--target",
            "user",
            "--count",
            "50",
            "--batch",
            "5",
        ],
    ));
    assert_exact(&r, 50, 50, true);
    assert_eq!(stream_added(&redis), 50);
}

#[test]
fn stream_pushes_with_a_client_certificate_from_two_procs() {
    let redis = RedisServer::start_mtls();
    let tls = redis.mtls_args();
    let (a, b) = (node_with(&redis, &tls), node_with(&redis, &tls));
    let url = redis.url();
    let mut args = vec!["push", "--redis-stream", &url, "--procs", "2"];
    args.extend(tls);
    args.extend(["--target", "user", "--count", "40", "--batch", "4"]);
    // Each worker process dials Redis with the certificate its parent passed on.
    let r = run_load(two_node_args(&a, &b, 10, &args));
    r.eq("procs", 2);
    assert_exact(&r, 40, 40, true);
    assert_eq!(stream_added(&redis), 40);
}

#[test]
fn stream_topic_pushes_reach_subscribers_on_both_nodes() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    let r = run_load(two_node_args(
        &a,
        &b,
        10,
        &[
            "push",
            "--redis-stream",
            &redis.url(),
            "--target",
            "topic",
            "--topics",
            "news,sport",
            "--count",
            "30",
            "--batch",
            "4",
        ],
    ));
    // Every subscribe answered, though a connection sends both at once and both topics'
    // streams load from Redis (a node used to answer only the first).
    r.eq("subscriptions_confirmed", 20);
    // 30 pushes, each to the 10 subscribers of its topic, 5 on each node. Their order is
    // not asserted: both nodes consume the stream's group, so entries one driver thread
    // added in order may be sequenced in another (topic pushes are checked by payload
    // counter; user pushes by `seq`, which is Redis's order).
    assert_exact(&r, 30, 300, false);
    assert_eq!(stream_added(&redis), 30);
    wait_delivered(&a, 150, &r);
    wait_delivered(&b, 150, &r);
}

#[test]
fn api_pushes_on_one_node_reach_sessions_on_both_in_two_procs() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    // 10 users of 3 sessions over two workers: the second starts at connection 15, an odd
    // number, and must still send its first connection to b.
    let r = run_load(two_node_args(
        &a,
        &b,
        30,
        &[
            "push",
            "--procs",
            "2",
            "--target",
            "user",
            "--sessions-per-user",
            "3",
            "--count",
            "200",
        ],
    ));
    r.eq("procs", 2);
    r.eq("connections_opened", 30);
    assert_exact(&r, 200, 600, true);
    assert_eq!(a.counter("pushes_accepted"), 200);
    assert_eq!(b.counter("pushes_accepted"), 0);
    assert_eq!(stream_added(&redis), 0);
    // Connection i on node i mod 2: even users have two sessions on a and one on b, odd
    // users the other way round; each user got 20 pushes.
    wait_delivered(&a, 300, &r);
    wait_delivered(&b, 300, &r);
}

#[test]
fn a_lone_invalid_stream_entry_goes_to_the_dlq_and_blocks_nothing() {
    let redis = RedisServer::start();
    let a = node(&redis);
    // Read alone, with no valid entry beside it (the ingress used to send an empty
    // pipeline for the valid ones, fail, and read the entry again forever).
    let _: String = redis::cmd("XADD")
        .arg("throng:push")
        .arg("*")
        .arg("other")
        .arg("x")
        .query(&mut redis.conn())
        .unwrap();
    let mut c = serde_json::Value::Null;
    let dead = wait_until(Duration::from_secs(10), || {
        c = a.stats()["cluster"].clone();
        c["stream_dlq"] == 1
    });
    assert!(dead, "the entry never reached the DLQ: {c}");
    let dlq: u64 = redis::cmd("XLEN")
        .arg("throng:push:dlq")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(dlq, 1);
    let mut args = strings(&[
        "push",
        "--redis-stream",
        &redis.url(),
        "--count",
        "50",
        "--batch",
        "5",
    ]);
    args.extend(a.push_args(10));
    let r = run_load(args);
    assert_exact(&r, 50, 50, true);
    let c = &a.stats()["cluster"];
    r.check(
        c["broker_errors"] == 0 && c["stream_dlq"] == 1,
        &format!("{c}"),
    );
}

#[test]
fn stream_errors_are_counted_by_cause() {
    let srv = TestServer::start(&[]);
    // Nothing listens on a port just freed: every push fails to connect.
    let dead = format!("redis://127.0.0.1:{}", common::redis_server::free_port());
    let mut args = strings(&[
        "push",
        "--redis-stream",
        &dead,
        "--count",
        "5",
        "--api-concurrency",
        "1",
        "--drain-secs",
        "0",
    ]);
    args.extend(srv.push_args(2));
    // Pushes given up fail the run (exit 1); the report still counts them.
    let r = Load::spawn(args).wait_failed(RUN_LIMIT);
    r.eq("pushes_sent", 0);
    r.map_eq("push_errors", &[("redis_connection_refused", 5)]);

    // A key of another type where the stream should be: Redis refuses each XADD alone.
    let redis = RedisServer::start();
    let _: () = redis::cmd("SET")
        .arg("throng:push")
        .arg("not a stream")
        .query(&mut redis.conn())
        .unwrap();
    let mut args = strings(&[
        "push",
        "--redis-stream",
        &redis.url(),
        "--count",
        "6",
        "--batch",
        "3",
        "--api-concurrency",
        "1",
        "--drain-secs",
        "0",
    ]);
    args.extend(srv.push_args(2));
    let r = Load::spawn(args).wait_failed(RUN_LIMIT);
    r.eq("pushes_sent", 0);
    r.eq("push_requests", 2);
    r.map_eq("push_errors", &[("redis_wrongtype", 6)]);
}
