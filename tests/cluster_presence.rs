//! Presence and stats across a cluster (docs/protocol.md 5, "Presence"): each node
//! publishes its sessions per user to Redis, readers count every live node, a node that
//! stops gracefully removes its entries at once, a dead node's entries are ignored once
//! its heartbeat is stale and removed by the live nodes' heartbeat, and a node whose
//! entries Redis lost writes them again. Several nodes in this process share one real
//! `redis-server` per test.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::redis_server::RedisServer;
use common::*;
use serde_json::{json, Value};

/// A node named `id` on `redis`, ready (pushes and presence reach Redis).
fn node(redis: &RedisServer, id: &str) -> TestServer {
    let url = redis.url();
    let srv = TestServer::start(&["--redis", url.as_str(), "--node-id", id]);
    let ready = wait_until(WAIT, || {
        srv.api("GET", "/readyz", None).status == 200
            && srv.api("GET", "/v1/presence/probe", None).status == 200
    });
    assert!(ready, "node {id} never became ready");
    srv
}

fn presence(srv: &TestServer, user: &str) -> Value {
    let r = srv.api("GET", &format!("/v1/presence/{user}"), None);
    assert_eq!(r.status, 200, "presence {user}: {}", r.text());
    r.json()
}

/// Polls presence until it answers 200 and `cond` holds; panics with the last answer
/// after `WAIT`.
fn wait_presence(srv: &TestServer, user: &str, cond: impl Fn(&Value) -> bool) -> Value {
    wait_get(srv, &format!("/v1/presence/{user}"), cond)
}

/// Polls `GET path` until it answers 200 and `cond` holds; panics with the last answer
/// after `WAIT`.
fn wait_get(srv: &TestServer, path: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(WAIT, || {
        let r = srv.api("GET", path, None);
        last = if r.status == 200 {
            r.json()
        } else {
            json!({"status": r.status, "body": r.text()})
        };
        r.status == 200 && cond(&last)
    });
    assert!(ok, "GET {path} never matched; last: {last}");
    last
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn hexists(r: &mut redis::Connection, key: &str, field: &str) -> bool {
    redis::cmd("HEXISTS").arg(key).arg(field).query(r).unwrap()
}

fn exists(r: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query::<u64>(r).unwrap() == 1
}

fn hget(r: &mut redis::Connection, key: &str, field: &str) -> Option<u64> {
    redis::cmd("HGET").arg(key).arg(field).query(r).unwrap()
}

#[test]
fn presence_counts_one_users_sessions_on_every_node() {
    let redis = RedisServer::start();
    let a = node(&redis, "node-a");
    let b = node(&redis, "node-b");
    let phone = a.connect("alice");
    let _tablet = a.connect("alice");
    let laptop = b.connect("alice");
    let want = json!([{"node": "node-a", "sessions": 2}, {"node": "node-b", "sessions": 1}]);
    let p = wait_presence(&a, "alice", |p| p["nodes"] == want);
    assert_eq!(p["sessions"], 3, "{p}");
    assert_eq!(p["online"], true);
    // `details` are this node's sessions, as in standalone mode.
    assert_eq!(p["details"].as_array().map(Vec::len), Some(2), "{p}");
    let p = wait_presence(&b, "alice", |p| p["nodes"] == want);
    assert_eq!(p["sessions"], 3);
    assert_eq!(p["details"].as_array().map(Vec::len), Some(1), "{p}");
    // Nobody anywhere.
    let p = presence(&a, "nobody");
    assert_eq!(p["online"], false, "{p}");
    assert_eq!(p["sessions"], 0);
    assert_eq!(p["nodes"], json!([]));
    // Sessions ending on either node are seen from the other.
    drop(phone);
    wait_presence(&b, "alice", |p| {
        p["nodes"] == json!([{"node": "node-a", "sessions": 1}, {"node": "node-b", "sessions": 1}])
    });
    drop(laptop);
    let p = wait_presence(&a, "alice", |p| {
        p["nodes"] == json!([{"node": "node-a", "sessions": 1}])
    });
    assert_eq!(p["sessions"], 1);
    // A user with no session left on a node is removed from its hash, not kept at 0.
    let mut r = redis.conn();
    assert!(!hexists(&mut r, "throng:presence:node-b", "alice"));
    assert_eq!(hget(&mut r, "throng:presence:node-a", "alice"), Some(1));
}

#[test]
fn a_node_that_stops_gracefully_removes_its_entries_at_once() {
    let redis = RedisServer::start();
    let a = node(&redis, "node-a");
    let b = node(&redis, "node-b");
    let _carol = b.connect("carol");
    wait_presence(&a, "carol", |p| p["sessions"] == 1);
    a.wait_stats("both nodes", |s| {
        s["cluster"]["nodes"] == json!(["node-a", "node-b"])
    });
    let mut r = redis.conn();
    assert!(exists(&mut r, "throng:presence:node-b"));
    // Dropping the server drains it and joins its threads: when this returns, it is gone.
    drop(b);
    assert!(!hexists(&mut r, "throng:nodes", "node-b"));
    assert!(!hexists(&mut r, "throng:nodes:totals", "node-b"));
    assert!(!exists(&mut r, "throng:presence:node-b"));
    let p = presence(&a, "carol");
    assert_eq!(p["sessions"], 0, "{p}");
    assert_eq!(p["nodes"], json!([]));
    assert_eq!(a.stats()["cluster"]["nodes"], json!(["node-a"]));
}

#[test]
fn a_dead_nodes_entries_are_ignored_and_removed_and_expire() {
    let redis = RedisServer::start();
    let a = node(&redis, "node-a");
    let _dave = a.connect("dave");
    let mut r = redis.conn();
    // This node's hash carries a TTL a few heartbeats long: if the node died now, its
    // entries would vanish by themselves.
    let ok = wait_until(WAIT, || {
        hget(&mut r, "throng:presence:node-a", "dave") == Some(1)
    });
    assert!(ok, "node-a never wrote dave's session");
    let ttl: i64 = redis::cmd("PTTL")
        .arg("throng:presence:node-a")
        .query(&mut r)
        .unwrap();
    assert!(ttl > 0 && ttl <= 5_000, "presence TTL {ttl} ms");
    // Another live node (written by hand) and a dead one whose heartbeat is 10 s old.
    let now = now_ms();
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg("throng:nodes")
        .arg("ghost")
        .arg(now - 10_000)
        .arg("other")
        .arg(now)
        .cmd("HSET")
        .arg("throng:presence:ghost")
        .arg("dave")
        .arg(4)
        .cmd("HSET")
        .arg("throng:presence:other")
        .arg("dave")
        .arg(2)
        .cmd("HSET")
        .arg("throng:nodes:totals")
        .arg("ghost")
        .arg("9 9")
        .arg("other")
        .arg("5 1")
        .query(&mut r)
        .unwrap();
    let p = presence(&a, "dave");
    assert_eq!(
        p["nodes"],
        json!([{"node": "node-a", "sessions": 1}, {"node": "other", "sessions": 2}]),
        "the dead node is not counted: {p}"
    );
    assert_eq!(p["sessions"], 3);
    let s = a.stats();
    assert_eq!(s["cluster"]["nodes"], json!(["node-a", "other"]), "{s}");
    assert_eq!(s["cluster"]["connections"], 6, "{s}");
    // The live node's heartbeat removes the dead one (and, 3 s after its last
    // heartbeat, the hand-written one too, which nothing keeps alive).
    let ok = wait_until(WAIT, || !hexists(&mut r, "throng:nodes", "ghost"));
    assert!(ok, "the dead node was never removed from throng:nodes");
    assert!(!hexists(&mut r, "throng:nodes:totals", "ghost"));
    assert!(!exists(&mut r, "throng:presence:ghost"));
    assert!(
        hexists(&mut r, "throng:nodes", "node-a"),
        "the live node stays"
    );
    let ok = wait_until(Duration::from_secs(8), || {
        !hexists(&mut r, "throng:nodes", "other")
    });
    assert!(ok, "a node whose heartbeat stopped was never removed");
    assert_eq!(presence(&a, "dave")["sessions"], 1);
}

#[test]
fn a_node_whose_entries_were_removed_writes_them_again() {
    let redis = RedisServer::start();
    let a = node(&redis, "node-a");
    let _erin = a.connect("erin");
    let _erin2 = a.connect("erin");
    let mut r = redis.conn();
    let ok = wait_until(WAIT, || {
        hget(&mut r, "throng:presence:node-a", "erin") == Some(2)
    });
    assert!(ok, "node-a never wrote erin's sessions");
    // What another node does to one it takes for dead (a long pause, say).
    let _: () = redis::pipe()
        .cmd("HDEL")
        .arg("throng:nodes")
        .arg("node-a")
        .cmd("DEL")
        .arg("throng:presence:node-a")
        .query(&mut r)
        .unwrap();
    let ok = wait_until(WAIT, || {
        hget(&mut r, "throng:presence:node-a", "erin") == Some(2)
    });
    assert!(ok, "node-a never wrote its presence again");
    assert!(hexists(&mut r, "throng:nodes", "node-a"));
}

#[test]
fn stats_list_live_nodes_and_totals() {
    let redis = RedisServer::start();
    let a = node(&redis, "node-a");
    let b = node(&redis, "node-b");
    let c = node(&redis, "node-c");
    let _f1 = a.connect("frank");
    let _g1 = a.connect("grace");
    let _g2 = a.connect("grace");
    let _f2 = b.connect("frank");
    let s = a.wait_stats("three nodes and their totals", |s| {
        s["cluster"]["nodes"] == json!(["node-a", "node-b", "node-c"])
            && s["cluster"]["connections"] == 4
    });
    // A user on two nodes counts on each (a sum of the nodes' own totals).
    assert_eq!(s["cluster"]["users_online"], 3, "{s}");
    assert_eq!(
        s["cluster"]["node_totals"],
        json!([
            {"node": "node-a", "connections": 3, "users_online": 2},
            {"node": "node-b", "connections": 1, "users_online": 1},
            {"node": "node-c", "connections": 0, "users_online": 0},
        ]),
        "{s}"
    );
    // The local document is unchanged.
    assert_eq!(s["connections"], 3);
    assert_eq!(s["users_online"], 2);
    c.wait_stats("the same view from node-c", |s| {
        s["cluster"]["connections"] == 4 && s["cluster"]["users_online"] == 3
    });
    drop(c);
    assert_eq!(
        a.stats()["cluster"]["nodes"],
        json!(["node-a", "node-b"]),
        "a node that stopped is gone at once"
    );
}

#[test]
fn presence_is_503_and_stats_say_so_while_redis_is_down_then_resync() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let a = node(&redis, "node-a");
    let _hank = a.connect("hank");
    wait_presence(&a, "hank", |p| p["sessions"] == 1);
    let ok = wait_until(WAIT, || {
        hget(&mut redis.conn(), "throng:presence:node-a", "hank") == Some(1)
    });
    assert!(ok, "node-a never wrote hank's session");
    redis.kill();
    let mut last = String::new();
    let ok = wait_until(WAIT, || {
        let r = a.api("GET", "/v1/presence/hank", None);
        last = r.text();
        r.status == 503
    });
    assert!(ok, "presence never refused while Redis was down: {last}");
    assert!(last.contains("broker_unavailable"), "{last}");
    let s = a.stats();
    assert_eq!(s["connections"], 1, "local stats still answer: {s}");
    assert_eq!(s["cluster"]["nodes"], Value::Null, "{s}");
    assert!(s["cluster"]["view_error"].is_string(), "{s}");
    // Redis comes back empty (no persistence): the node writes its presence again.
    let redis = RedisServer::start_on(port);
    wait_presence(&a, "hank", |p| p["sessions"] == 1);
    let mut r = redis.conn();
    let ok = wait_until(WAIT, || {
        hget(&mut r, "throng:presence:node-a", "hank") == Some(1)
    });
    assert!(
        ok,
        "node-a never rewrote its presence after Redis came back"
    );
    assert!(hexists(&mut r, "throng:nodes", "node-a"));
}

/// A node with `room:*` public, ready.
fn room_node(redis: &RedisServer, id: &str) -> TestServer {
    let url = redis.url();
    let srv = TestServer::start(&[
        "--redis",
        url.as_str(),
        "--node-id",
        id,
        "--public-topics",
        "room:*",
    ]);
    assert!(
        wait_until(WAIT, || srv.api("GET", "/readyz", None).status == 200),
        "node {id} never became ready"
    );
    srv
}

/// Polls `GET /v1/topics/room:1?members=1...` on `srv` until `cond` holds.
fn wait_room(srv: &TestServer, query: &str, cond: impl Fn(&Value) -> bool) -> Value {
    wait_get(srv, &format!("/v1/topics/room:1?members=1{query}"), cond)
}

#[test]
fn room_presence_counts_and_lists_every_nodes_members() {
    let redis = RedisServer::start();
    let a = room_node(&redis, "a");
    let b = room_node(&redis, "b");
    let mut clients = vec![
        a.connect("alice"),
        b.connect("alice"),
        a.connect("bob"),
        b.connect("carol"),
    ];
    for c in &mut clients {
        c.send(json!({"type": "subscribe", "topic": "room:1"}));
        assert_eq!(c.recv()["type"], "subscribed");
    }
    let mut dave = b.connect("dave");
    dave.send(json!({"type": "subscribe", "topic": "room:2"}));
    assert_eq!(dave.recv()["type"], "subscribed");

    for srv in [&a, &b] {
        let v = wait_room(srv, "", |v| v["subscribers"] == 4);
        assert_eq!(v["members"], json!(["alice", "bob", "carol"]), "{v}");
        assert_eq!(v["next"], Value::Null);
    }
    // Pages of one, across nodes: alice (on both) once.
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..5 {
        let q = if after.is_empty() {
            "&limit=1".to_string()
        } else {
            format!("&limit=1&after={after}")
        };
        let v = wait_room(&a, &q, |_| true);
        seen.extend(v["members"].as_array().unwrap().iter().cloned());
        match v["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, vec![json!("alice"), json!("bob"), json!("carol")]);

    // carol leaves; then node b's entries are lost from Redis and written again.
    drop(clients.pop());
    let v = wait_room(&a, "", |v| v["subscribers"] == 3);
    assert_eq!(v["members"], json!(["alice", "bob"]), "{v}");
    let mut r = redis.conn();
    let _: () = redis::cmd("HDEL")
        .arg("throng:nodes")
        .arg("b")
        .query(&mut r)
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg("throng:tmembers:b")
        .arg("throng:tsessions:b:0")
        .arg("throng:tsessions:b:1")
        .query(&mut r)
        .unwrap();
    let v = wait_room(&a, "", |v| {
        v["subscribers"] == 3 && v["members"] == json!(["alice", "bob"])
    });
    assert_eq!(v["topic"], "room:1");
    assert!(
        exists(&mut r, "throng:tmembers:b"),
        "b wrote its members again"
    );

    // A node that stops takes its members with it.
    drop(clients.remove(1));
    drop(dave);
    drop(b);
    let v = wait_room(&a, "", |v| v["subscribers"] == 2);
    assert_eq!(v["members"], json!(["alice", "bob"]), "{v}");
    assert!(
        !exists(&mut r, "throng:tmembers:b"),
        "b removed its members when it stopped"
    );
}
