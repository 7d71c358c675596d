//! Cluster mode on a real Redis (docs/protocol.md 5): several nodes in this process share
//! one `redis-server` started per test; pushes go through Redis, are numbered there, reach
//! every node that serves the user or topic, and resume on any node.

mod common;

use std::time::Duration;

use common::redis_server::{pending, wait_none_pending, RedisServer};
use common::*;
use serde_json::{json, Value};

/// A node on `redis`, ready (its publisher reached Redis).
/// The epoch a topic shows before its first push.
const NO_EPOCH: &str = "0000000000000000";

fn node(redis: &RedisServer, extra: &[&str]) -> TestServer {
    cluster_node(&redis.url(), extra)
}

fn connect_resume(srv: &TestServer, user: &str, since: u64, epoch: &str) -> Client {
    Client::connect_with(
        srv.ws,
        &format!("/ws?since={since}&epoch={epoch}"),
        &[("Authorization", &format!("Bearer {}", token(user)))],
    )
    .unwrap_or_else(|e| panic!("resume {user}: {e}"))
}

fn next_push(c: &mut Client) -> Value {
    let m = c.recv();
    assert_eq!(m["type"], "push", "expected a push, got {m}");
    m
}

fn epoch(c: &Client) -> String {
    c.welcome["epoch"].as_str().expect("epoch").to_string()
}

/// Waits until `srv` serves `n` streams (its subscriptions are in place).
fn wait_streams(srv: &TestServer, n: u64) {
    srv.wait_stats(&format!("{n} streams served"), |s| {
        s["cluster"]["broker_streams"].as_u64() == Some(n)
    });
}

#[test]
fn multi_device_across_nodes_gets_every_push_with_the_same_seq() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut phone = a.connect("alice");
    let mut laptop = b.connect("alice");
    assert_eq!(phone.welcome["seq"], 0);
    assert_eq!(
        phone.welcome["epoch"], laptop.welcome["epoch"],
        "one stream in Redis"
    );
    wait_streams(&a, 1);
    wait_streams(&b, 1);
    for i in 1..=5u64 {
        // Alternate the node the upstream talks to: numbering is Redis's.
        let api = if i % 2 == 0 { &a } else { &b };
        let r = api.push_wait(json!({"user": "alice", "data": {"n": i}}));
        assert_eq!(r["seq"], i, "{r}");
        assert_eq!(r["epoch"], phone.welcome["epoch"]);
    }
    for c in [&mut phone, &mut laptop] {
        for i in 1..=5u64 {
            let p = next_push(c);
            assert_eq!(p["seq"], i);
            assert_eq!(p["data"]["n"], i);
        }
    }
    // Another user on node B only: node A is not told.
    let mut bob = b.connect("bob");
    wait_streams(&b, 2);
    a.push_wait(json!({"user": "bob", "data": 1}));
    assert_eq!(next_push(&mut bob)["seq"], 1);
    laptop.expect_silence(Duration::from_millis(100));
    assert_eq!(a.stats()["cluster"]["broker_streams"], 1);
    // What waited for Redis, and from it for the shards, is counted off once taken.
    for (node, key) in [
        (&a, "broker_publish_queued_bytes"),
        (&b, "broker_queued_bytes"),
    ] {
        node.wait_stats(&format!("{key} back to 0"), |s| s["cluster"][key] == 0);
    }
}

#[test]
fn resume_on_another_node_from_redis_history() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut c = a.connect("carol");
    let e = epoch(&c);
    wait_streams(&a, 1);
    for i in 1..=3 {
        a.push_wait(json!({"user": "carol", "data": i}));
    }
    for _ in 1..=3 {
        next_push(&mut c);
    }
    drop(c);
    // While away (on no node at all once A lets go): kept in Redis.
    for i in 4..=6 {
        a.push_wait(json!({"user": "carol", "data": i, "id": format!("p{i}")}));
    }
    let mut c = connect_resume(&b, "carol", 3, &e);
    assert_eq!(c.welcome["resumed"], true, "{}", c.welcome);
    assert_eq!(c.welcome["seq"], 6);
    for i in 4..=6u64 {
        let p = next_push(&mut c);
        assert_eq!(p["seq"], i);
        assert_eq!(p["data"], i);
        assert_eq!(p["id"], format!("p{i}"));
    }
    // Live pushes follow the replay with no gap.
    b.push_wait(json!({"user": "carol", "data": 7}));
    assert_eq!(next_push(&mut c)["seq"], 7);
    // A resume from too far back, or another epoch: false, nothing old.
    let mut d = connect_resume(&a, "carol", 2, "0000000000000001");
    assert_eq!(d.welcome["resumed"], false);
    // Node A may be behind (the rest follows as live pushes then).
    let seq = d.welcome["seq"].as_u64().unwrap();
    assert!(seq <= 7, "{}", d.welcome);
    for want in seq + 1..=7 {
        assert_eq!(next_push(&mut d)["seq"], want);
    }
    d.barrier("r");
}

#[test]
fn offline_inbox_waits_in_redis_for_a_user_with_no_session_anywhere() {
    let redis = RedisServer::start();
    // Node history forgets at once; only Redis keeps the inbox.
    let a = node(&redis, &["--history-ttl-ms", "1"]);
    let c = a.connect("dave");
    let e = epoch(&c);
    drop(c);
    a.wait_connections(0);
    for i in 1..=4 {
        a.push_wait(json!({"user": "dave", "data": i}));
    }
    let b = node(&redis, &[]);
    let mut c = connect_resume(&b, "dave", 0, &e);
    assert_eq!(c.welcome["resumed"], true, "{}", c.welcome);
    for i in 1..=4u64 {
        assert_eq!(next_push(&mut c)["seq"], i);
    }
}

#[test]
fn duplicate_ids_are_dropped_cluster_wide() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut c = a.connect("erin");
    wait_streams(&a, 1);
    // An id that needs escaping in JSON survives the trip through Redis.
    let id = "order \"1\" \\ é";
    let r1 = a.push_wait(json!({"user": "erin", "data": 1, "id": id}));
    assert_eq!(r1["seq"], 1);
    // The upstream retries on the other node: Redis knows the id.
    let r2 = b.push_wait(json!({"user": "erin", "data": 1, "id": id}));
    assert_eq!(r2, json!({"duplicate": true}));
    let p = next_push(&mut c);
    assert_eq!((p["seq"].as_u64(), p["id"].as_str()), (Some(1), Some(id)));
    c.expect_silence(Duration::from_millis(150));
}

#[test]
fn a_users_push_is_answered_per_user_even_for_one_user() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let one = a.push_wait(json!({"users": ["ada"], "data": 1}));
    assert_eq!(one["users"]["ada"]["seq"], 1, "{one}");
    assert_eq!(one["duplicates"], json!([]), "{one}");
    let two = a.push_wait(json!({"users": ["ada", "bo"], "data": 2, "id": "x"}));
    assert_eq!(two["users"]["ada"]["seq"], 2, "{two}");
    assert_eq!(two["users"]["bo"]["seq"], 1, "{two}");
    let again = a.push_wait(json!({"users": ["bo"], "data": 2, "id": "x"}));
    assert_eq!(again, json!({"users": {}, "duplicates": ["bo"]}));
    // A user push keeps its own shape.
    assert_eq!(a.push_wait(json!({"user": "ada", "data": 3}))["seq"], 3);
}

#[test]
fn topics_are_numbered_once_and_resume_on_any_node() {
    let redis = RedisServer::start();
    let a = node(&redis, &["--public-topics", "room.*"]);
    let b = node(&redis, &["--public-topics", "room.*"]);
    let mut x = a.connect("x");
    let mut y = b.connect("y");
    for c in [&mut x, &mut y] {
        c.send(json!({"type": "subscribe", "topic": "room.1"}));
        let s = c.recv();
        assert_eq!(s["type"], "subscribed", "{s}");
        // No push yet: the placeholder, as on a standalone server.
        assert_eq!(
            (s["seq"].as_u64(), s["epoch"].as_str()),
            (Some(0), Some(NO_EPOCH))
        );
    }
    let mut e = String::new();
    for i in 1..=3u64 {
        let r = b.push_wait(json!({"topic": "room.1", "data": i}));
        assert_eq!(r["seq"], i, "{r}");
        if i == 1 {
            e = r["epoch"].as_str().unwrap().to_string();
        }
    }
    for c in [&mut x, &mut y] {
        for i in 1..=3u64 {
            let p = next_push(c);
            assert_eq!(
                (p["topic"].as_str(), p["seq"].as_u64()),
                (Some("room.1"), Some(i))
            );
            // The first push names the epoch it starts.
            let named = (i == 1).then_some(e.as_str());
            assert_eq!(p["epoch"].as_str(), named, "{p}");
        }
    }
    // Any node tells the topic's position from Redis, and its own subscribers.
    let info = a.api("GET", "/v1/topics/room.1", None).json();
    assert_eq!(
        (
            info["seq"].as_u64(),
            info["epoch"].as_str(),
            info["subscribers"].as_u64()
        ),
        (Some(3), Some(e.as_str()), Some(1)),
        "{info}"
    );
    let r = b.push_wait(json!({"topic": "room.2", "data": 0}));
    let info = a.api("GET", "/v1/topics/room.2", None).json();
    assert_eq!(
        (info["seq"].clone(), info["epoch"].clone()),
        (r["seq"].clone(), r["epoch"].clone())
    );
    // A subscriber on a third node resumes from Redis history.
    let c3 = node(&redis, &["--public-topics", "room.*"]);
    let mut z = c3.connect("z");
    z.send(json!({"type": "subscribe", "topic": "room.1", "since": 1, "epoch": e}));
    let s = z.recv();
    assert_eq!(s["resumed"], true, "{s}");
    assert_eq!(s["seq"], 3);
    assert_eq!(next_push(&mut z)["seq"], 2);
    assert_eq!(next_push(&mut z)["seq"], 3);
}

/// Keys of topic streams in Redis.
fn topic_keys(redis: &RedisServer) -> Vec<String> {
    redis::cmd("KEYS")
        .arg("throng:{t:*")
        .query(&mut redis.conn())
        .unwrap()
}

#[test]
fn subscribes_to_topics_never_pushed_write_nothing_to_redis() {
    // Each subscribe to a new name wrote the topic's epoch to Redis for a day: a client
    // allowed `room.*` could leave a key per name it tried, 100 a second.
    let redis = RedisServer::start();
    let a = node(&redis, &["--public-topics", "room.*"]);
    let mut x = a.connect("x");
    for i in 0..50 {
        let topic = format!("room.probe{i}");
        x.send(json!({"type": "subscribe", "topic": topic}));
        let s = x.recv();
        assert_eq!(
            (s["seq"].as_u64(), s["epoch"].as_str()),
            (Some(0), Some(NO_EPOCH)),
            "{s}"
        );
        x.send(json!({"type": "unsubscribe", "topic": topic}));
        assert_eq!(x.recv()["type"], "unsubscribed");
    }
    assert_eq!(topic_keys(&redis), Vec::<String>::new());
    // A member from before the first push takes it (and the epoch it names) and resumes
    // with that epoch on another node.
    x.send(json!({"type": "subscribe", "topic": "room.1"}));
    assert_eq!(x.recv()["epoch"], NO_EPOCH);
    let r = a.push_wait(json!({"topic": "room.1", "data": 1}));
    let p = next_push(&mut x);
    assert_eq!(
        (p["seq"].as_u64(), &p["epoch"]),
        (Some(1), &r["epoch"]),
        "{p}"
    );
    a.push_wait(json!({"topic": "room.1", "data": 2}));
    assert_eq!(next_push(&mut x)["seq"], 2);
    let b = node(&redis, &["--public-topics", "room.*"]);
    let mut y = b.connect("x");
    y.send(json!({"type": "subscribe", "topic": "room.1", "since": 1, "epoch": r["epoch"]}));
    let s = y.recv();
    assert_eq!(s["resumed"], true, "{s}");
    assert_eq!(next_push(&mut y)["seq"], 2);
}

#[test]
fn client_publishes_are_numbered_in_redis_and_reach_every_node() {
    let redis = RedisServer::start();
    let flags = ["--public-topics", "room.*", "--public-publish", "room.*"];
    let a = node(&redis, &flags);
    let b = node(&redis, &flags);
    let mut x = a.connect("x");
    let mut y = b.connect("y");
    for c in [&mut x, &mut y] {
        c.send(json!({"type": "subscribe", "topic": "room.1"}));
        assert_eq!(c.recv()["type"], "subscribed");
    }
    let mut first_epoch = Value::Null;
    for i in 1..=2u64 {
        x.send(json!({"type": "publish", "topic": "room.1", "data": {"n": i}, "ref": i}));
        // The answer and x's own copy (it is subscribed) come in either order: one goes
        // through Redis's reply, the other through the node's subscription.
        let mut answered = false;
        let mut echoed = false;
        while !(answered && echoed) {
            let m = x.recv();
            match m["type"].as_str() {
                Some("published") => {
                    assert_eq!(
                        m,
                        json!({"type": "published", "topic": "room.1", "seq": i, "ref": i})
                    );
                    answered = true;
                }
                Some("push") => {
                    assert_eq!(
                        (m["seq"].as_u64(), m["from"].as_str()),
                        (Some(i), Some("x")),
                        "{m}"
                    );
                    echoed = true;
                }
                _ => panic!("unexpected {m}"),
            }
        }
        let p = next_push(&mut y);
        assert_eq!(
            (
                p["seq"].as_u64(),
                p["from"].as_str(),
                p["data"]["n"].as_u64()
            ),
            (Some(i), Some("x"), Some(i)),
            "{p}"
        );
        if i == 1 {
            first_epoch = p["epoch"].clone();
        }
    }
    // The push API continues the same stream, whose epoch its first push named.
    let r = b.push_wait(json!({"topic": "room.1", "data": 3}));
    assert_eq!(r["seq"], 3, "{r}");
    let e = r["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(first_epoch, json!(e));
    // A third node resumes from Redis history, `from` included.
    let c3 = node(&redis, &flags);
    let mut z = c3.connect("z");
    z.send(json!({"type": "subscribe", "topic": "room.1", "since": 0, "epoch": e}));
    assert_eq!(z.recv()["resumed"], true);
    let got: Vec<Value> = (0..3).map(|_| next_push(&mut z)["from"].clone()).collect();
    assert_eq!(got, vec![json!("x"), json!("x"), Value::Null]);
}

/// Every event in `throng:events`, oldest first.
fn events_in(conn: &mut redis::Connection) -> Vec<Value> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("throng:events")
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("XRANGE");
    entries
        .into_iter()
        .map(|(_, fields)| {
            assert_eq!(fields.len(), 1, "{fields:?}");
            assert_eq!(fields[0].0, "event");
            serde_json::from_str(&fields[0].1).expect("event JSON")
        })
        .collect()
}

#[test]
fn sends_and_lifecycle_events_go_to_the_events_stream_of_every_node() {
    let redis = RedisServer::start();
    let flags = ["--lifecycle-events", "--events-maxlen", "1000"];
    let a = node(&redis, &flags);
    let b = node(&redis, &flags);
    let mut x = a.connect("x");
    let mut y = b.connect("y");
    x.send(json!({"type": "send", "data": {"from": "a"}, "ref": 1}));
    assert_eq!(x.recv(), json!({"type": "sent", "ref": 1}));
    y.send(json!({"type": "send", "data": [2], "ref": 2}));
    assert_eq!(y.recv(), json!({"type": "sent", "ref": 2}));
    drop(x);
    let mut conn = redis.conn();
    let mut got = Vec::new();
    assert!(
        wait_until(WAIT, || {
            got = events_in(&mut conn);
            got.len() >= 5
        }),
        "{got:?}"
    );
    let kinds = |user: &str| -> Vec<(String, Value)> {
        got.iter()
            .filter(|e| e["user"] == user)
            .map(|e| (e["type"].as_str().unwrap().to_string(), e["node"].clone()))
            .collect()
    };
    let (na, nb) = (json!(a.ws.to_string()), json!(b.ws.to_string()));
    assert_eq!(
        kinds("x"),
        vec![
            ("connect".to_string(), na.clone()),
            ("send".to_string(), na.clone()),
            ("disconnect".to_string(), na)
        ]
    );
    assert_eq!(
        kinds("y"),
        vec![
            ("connect".to_string(), nb.clone()),
            ("send".to_string(), nb)
        ]
    );
    let send = got
        .iter()
        .find(|e| e["type"] == "send" && e["user"] == "x")
        .unwrap();
    assert_eq!(send["data"], json!({"from": "a"}));
    let connect = got
        .iter()
        .find(|e| e["type"] == "connect" && e["user"] == "x")
        .unwrap();
    assert_eq!(send["session"], connect["session"]);
}

#[test]
fn broadcast_reaches_every_node() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut x = a.connect("x");
    let mut y = b.connect("y");
    let r = a.push_wait(json!({"broadcast": true, "data": "hi"}));
    assert_eq!(r["nodes"], 2, "{r}");
    for c in [&mut x, &mut y] {
        let p = next_push(c);
        assert_eq!(p["data"], "hi");
        assert!(p.get("seq").is_none(), "broadcasts are not numbered: {p}");
    }
}

/// Two nodes on `redis` started with `extra`, and every Redis link of theirs at work:
/// b's subscriber hears what a published, a stream push added by the test is read by an
/// ingress, and (with `events`) b's client event reaches `throng:events`.
fn nodes_deliver_through(redis: &RedisServer, extra: &[&str], events: bool) {
    let a = node(redis, extra);
    let b = node(redis, extra);
    let mut phone = b.connect("alice");
    wait_streams(&b, 1);
    let r = a.push_wait(json!({"user": "alice", "data": "api"}));
    assert_eq!(r["seq"], 1, "{r}");
    assert_eq!(next_push(&mut phone)["data"], "api");
    let _: String = redis::cmd("XADD")
        .arg("throng:push")
        .arg("*")
        .arg("push")
        .arg(json!({"user": "alice", "data": "stream"}).to_string())
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(next_push(&mut phone)["data"], "stream");
    if events {
        phone.send(json!({"type": "send", "data": "up", "ref": 1}));
        assert_eq!(phone.recv()["type"], "sent");
        b.wait_stats("the event delivered", |s| {
            s["events"]["delivered"].as_u64() >= Some(1)
        });
    }
}

#[test]
fn nodes_work_with_a_redis_that_requires_a_password() {
    let redis = RedisServer::start_with_password("s3cret-pass");
    // Every link authenticated.
    nodes_deliver_through(&redis, &[], false);
    // A wrong password is an error the node reports, not a ready node.
    let wrong = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let c = TestServer::start(&["--redis", wrong.as_str()]);
    c.wait_stats("Redis errors counted", |s| {
        s["cluster"]["broker_errors"].as_u64() > Some(0)
    });
    assert_eq!(c.api("GET", "/readyz", None).status, 503);
    assert_eq!(c.stats()["cluster"]["broker_subscriber_up"], 0);
}

#[test]
fn nodes_work_with_a_redis_that_speaks_only_tls() {
    let redis = RedisServer::start_tls();
    // Every link is TLS.
    nodes_deliver_through(&redis, &["--redis-ca", redis.ca_path()], true);
    // Verified against the system's roots instead, the self-signed certificate fails:
    // counted as an error, and the node stays unready.
    let c = TestServer::start(&["--redis", redis.url().as_str()]);
    c.wait_stats("Redis errors counted", |s| {
        s["cluster"]["broker_errors"].as_u64() > Some(0)
    });
    assert_eq!(c.api("GET", "/readyz", None).status, 503);
}

#[test]
fn nodes_present_a_client_certificate_to_a_redis_that_asks_for_one() {
    let redis = RedisServer::start_mtls();
    // redis-rs's links (publish, stream ingress, events) and the pub/sub link alike.
    nodes_deliver_through(&redis, &redis.mtls_args(), true);
    // Without a certificate Redis refuses the node: counted, and it stays unready.
    let c = TestServer::start(&[
        "--redis",
        redis.url().as_str(),
        "--redis-ca",
        redis.ca_path(),
    ]);
    c.wait_stats("Redis errors counted", |s| {
        s["cluster"]["broker_errors"].as_u64() > Some(0)
    });
    assert_eq!(c.api("GET", "/readyz", None).status, 503);
}

#[test]
fn the_redis_client_certificate_is_read_again_on_sighup() {
    use common::tls::{metric, ClientCa, ServeProc};
    let redis = RedisServer::start_mtls();
    let dir = std::env::temp_dir().join(format!("throng-redis-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("node.pem"), dir.join("node.key"));
    // A certificate from a CA Redis does not trust: the node cannot get in.
    let stranger = ClientCa::generate("another CA").issue("node");
    std::fs::write(&cert, &stranger.cert_pem).unwrap();
    std::fs::write(&key, &stranger.key_pem).unwrap();
    let url = redis.url();
    let mut p = ServeProc::spawn(&[
        "--redis",
        &url,
        "--redis-ca",
        redis.ca_path(),
        "--redis-client-cert",
        cert.to_str().unwrap(),
        "--redis-client-key",
        key.to_str().unwrap(),
    ]);
    let (_, api) = p.listening();
    let ready = || {
        HttpConn::connect(api)
            .request("GET", "/readyz", None, None)
            .status
            == 200
    };
    assert!(wait_until(WAIT, || metric(
        api,
        "throng_broker_errors_total"
    ) > 0));
    assert!(!ready());
    // A file that cannot be used: logged naming it, counted, the files in use stay.
    std::fs::write(&key, "not a key").unwrap();
    p.signal(libc::SIGHUP);
    let line = p.find(WAIT, |l| {
        l.contains("Redis TLS files not reloaded")
            .then(|| l.to_string())
    });
    assert!(line.contains("node.key"), "names the file: {line}");
    assert_eq!(metric(api, "throng_redis_tls_reload_errors_total"), 1);
    // The certificate Redis trusts arrives: the next reconnects get in.
    std::fs::copy(redis.client_cert_path(), &cert).unwrap();
    std::fs::copy(redis.client_key_path(), &key).unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(WAIT, ready),
        "never ready after the reload; log:\n{}",
        p.seen.join("\n")
    );
    assert_eq!(metric(api, "throng_redis_tls_reloads_total"), 1);
    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit {st:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn stream_ingress_publishes_and_sends_bad_entries_to_the_dlq() {
    let redis = RedisServer::start();
    let a = node(&redis, &["--node-id", "node-a"]);
    let mut c = a.connect("frank");
    wait_streams(&a, 1);
    let mut r = redis.conn();
    let add = |r: &mut redis::Connection, fields: &[(&str, &str)]| -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg("throng:push").arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query(r).unwrap()
    };
    add(&mut r, &[("push", r#"{"user":"frank","data":{"k":1}}"#)]);
    add(&mut r, &[("push", "not json")]);
    add(&mut r, &[("other", "x")]);
    add(&mut r, &[("push", r#"{"data":1}"#)]);
    let huge = json!({"user": "frank", "data": "x".repeat(1_100_000)}).to_string();
    add(&mut r, &[("push", &huge)]);
    add(&mut r, &[("push", r#"{"user":"frank","data":{"k":2}}"#)]);
    // The bad ones in the middle block nothing behind them.
    for k in 1..=2 {
        match c.try_recv(Duration::from_secs(3)).unwrap() {
            Some(m) => assert_eq!(m["data"]["k"], k, "{m}"),
            None => panic!("push {k} missing; stats {}", a.stats()),
        }
    }
    a.wait_stats("4 dead entries", |s| s["cluster"]["stream_dlq"] == 4);
    let dlq: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("throng:push:dlq")
        .arg("-")
        .arg("+")
        .query(&mut r)
        .unwrap();
    assert_eq!(dlq.len(), 4);
    let errors: Vec<String> = dlq
        .iter()
        .map(|(_, f)| {
            let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            assert_eq!(get("node").as_deref(), Some("node-a"));
            get("error").unwrap()
        })
        .collect();
    assert!(errors[0].contains("must be a JSON object"), "{errors:?}");
    assert!(errors[1].contains("no `push` field"), "{errors:?}");
    assert!(errors[2].contains("target"), "{errors:?}");
    assert!(
        errors[3].contains("larger than 1048576 bytes"),
        "{errors:?}"
    );
    // Everything gets acknowledged: nothing stays pending in the group (an entry is
    // acknowledged just after its DLQ copy is written, so this may take a moment).
    wait_none_pending(&mut r);
    // No error loop (a batch of only bad entries once re-read itself thousands of times;
    // a reconnect on a loaded machine may read a pending entry once more).
    let s = a.stats();
    assert!(s["cluster"]["stream_read"].as_u64().unwrap() <= 10, "{s}");
}

/// Sets Redis's `maxmemory`: "1" makes it refuse every write for lack of memory, "0"
/// lifts the limit.
fn set_maxmemory(r: &mut redis::Connection, limit: impl redis::ToRedisArgs) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(limit)
        .query(r)
        .unwrap();
}

/// The next message of `c` is a push of `data` (a string) numbered `seq`.
fn expect_push(c: &mut Client, data: &str, seq: u64) {
    let m = next_push(c);
    assert_eq!(
        (m["data"].as_str(), m["seq"].as_u64()),
        (Some(data), Some(seq)),
        "{m}"
    );
}

/// Each user's direct-push `seq` in Redis (0 for none yet), in one round trip.
fn user_seqs(r: &mut redis::Connection, users: &[String]) -> Vec<u64> {
    let mut pipe = redis::pipe();
    for u in users {
        pipe.cmd("HGET").arg(format!("throng:{{u:{u}}}")).arg("seq");
    }
    let got: Vec<Option<u64>> = pipe.query(r).unwrap();
    got.into_iter().map(|s| s.unwrap_or(0)).collect()
}

/// Makes Redis refuse every copy to the DLQ (WRONGTYPE: its key holds a string), as an
/// out-of-memory Redis refuses writes.
fn refuse_dlq_copies(r: &mut redis::Connection) {
    let _: () = redis::cmd("SET")
        .arg("throng:push:dlq")
        .arg("not a stream")
        .query(r)
        .unwrap();
}

/// Adds one entry with `push` (any value Redis takes) to `throng:push`; its id.
fn xadd_push(r: &mut redis::Connection, push: impl redis::ToRedisArgs) -> String {
    redis::cmd("XADD")
        .arg("throng:push")
        .arg("*")
        .arg("push")
        .arg(push)
        .query(r)
        .unwrap()
}

#[test]
fn a_dlq_that_refuses_copies_keeps_the_entry_pending_and_publishes_nothing_twice() {
    let redis = RedisServer::start();
    let a = node(&redis, &["--claim-idle-ms", "300"]);
    let mut c = a.connect("gus");
    wait_streams(&a, 1);
    let mut r = redis.conn();
    // The DLQ key holds a string: every copy to it is refused (WRONGTYPE), as an
    // out-of-memory Redis refuses writes.
    refuse_dlq_copies(&mut r);
    // One producer pipeline: a read may come at its first entry (the bad one), the rest
    // coming with that batch's round trip, so the bad entry's refused copy rides with the
    // publish of the good ones; or it finds them all at once.
    let mut pipe = redis::pipe();
    pipe.cmd("XADD")
        .arg("throng:push")
        .arg("*")
        .arg("push")
        .arg("not json");
    for k in 1..=5 {
        let push = json!({"user": "gus", "data": {"k": k}}).to_string();
        pipe.cmd("XADD")
            .arg("throng:push")
            .arg("*")
            .arg("push")
            .arg(push);
    }
    let _: Vec<String> = pipe.query(&mut r).unwrap();
    // Each good push once, numbered 1 to 5: no batch was read and published again.
    for k in 1..=5 {
        let m = next_push(&mut c);
        let got = (m["data"]["k"].as_u64(), m["seq"].as_u64());
        assert_eq!(got, (Some(k), Some(k)), "{m}");
    }
    // The bad entry, whose copy was refused, is not acknowledged without it: it stays
    // pending (claimed again and refused again meanwhile).
    a.wait_stats("the refused copy counted", |s| {
        s["cluster"]["broker_errors"].as_u64() >= Some(1)
    });
    assert!(wait_until(Duration::from_secs(10), || pending(&mut r) == 1));
    a.wait_stats("the waiting entry shown", |s| {
        s["cluster"]["stream_pending"] == 1
    });
    // The DLQ mended: the next claim copies it and acknowledges it.
    let _: () = redis::cmd("DEL")
        .arg("throng:push:dlq")
        .query(&mut r)
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || pending(&mut r) == 0),
        "never copied; stats {}",
        a.stats()
    );
    a.wait_stats("nothing waiting", |s| s["cluster"]["stream_pending"] == 0);
    let dlq: usize = redis::cmd("XLEN")
        .arg("throng:push:dlq")
        .query(&mut r)
        .unwrap();
    assert_eq!(dlq, 1);
    xadd_push(&mut r, json!({"user": "gus", "data": {"k": 6}}).to_string());
    let m = next_push(&mut c);
    assert_eq!(
        (m["data"]["k"].as_u64(), m["seq"].as_u64()),
        (Some(6), Some(6)),
        "{m}"
    );
}

#[test]
fn pushes_refused_while_redis_is_out_of_memory_wait_and_go_out_once_it_recovers() {
    let redis = RedisServer::start();
    let a = node(&redis, &["--claim-idle-ms", "300"]);
    let mut c = a.connect("ida");
    wait_streams(&a, 1);
    let mut r = redis.conn();
    let add = |r: &mut redis::Connection, k: u64| {
        let push = json!({"user": "ida", "data": {"k": k}}).to_string();
        let _: String = redis::cmd("XADD")
            .arg("throng:push")
            .arg("*")
            .arg("push")
            .arg(push)
            .query(r)
            .unwrap();
    };
    add(&mut r, 1);
    assert_eq!(next_push(&mut c)["data"]["k"], 1);
    // Out of memory: Redis refuses every write but the ingress's reads go on. The entry
    // added under the old limit is read, its publish refused (OOM), and it waits.
    let config = |r: &mut redis::Connection, limit: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(limit)
            .query(r)
            .unwrap();
    };
    let _: () = redis::cmd("MULTI").query(&mut r).unwrap();
    let _: () = redis::cmd("XADD")
        .arg("throng:push")
        .arg("*")
        .arg("push")
        .arg(json!({"user": "ida", "data": {"k": 2}}).to_string())
        .query(&mut r)
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query(&mut r)
        .unwrap();
    let _: Vec<redis::Value> = redis::cmd("EXEC").query(&mut r).unwrap();
    a.wait_stats("the refused push counted", |s| {
        s["cluster"]["broker_errors"].as_u64() >= Some(1)
    });
    assert_eq!(
        pending(&mut r),
        1,
        "waiting, neither acknowledged nor dead-lettered"
    );
    config(&mut r, "0");
    // Claimed again once memory is back: delivered once, next in its stream.
    let m = next_push(&mut c);
    assert_eq!(
        (m["data"]["k"].as_u64(), m["seq"].as_u64()),
        (Some(2), Some(2)),
        "{m}"
    );
    wait_none_pending(&mut r);
    let dlq: usize = redis::cmd("XLEN")
        .arg("throng:push:dlq")
        .query(&mut r)
        .unwrap();
    assert_eq!(dlq, 0);
}

#[test]
fn an_entry_left_pending_holds_up_nothing_when_its_node_restarts() {
    let redis = RedisServer::start();
    let mut r = redis.conn();
    // Every DLQ copy refused: a bad entry stays pending in n1's name.
    refuse_dlq_copies(&mut r);
    let flags = ["--node-id", "n1", "--claim-idle-ms", "300"];
    let a = node(&redis, &flags);
    xadd_push(&mut r, "not json");
    a.wait_stats("the refused copy counted", |s| {
        s["cluster"]["broker_errors"].as_u64() >= Some(1)
    });
    assert_eq!(pending(&mut r), 1);
    drop(a);
    // The same node again: at start it reads what it left pending, passes the entry it
    // still cannot finish, and goes on to new pushes.
    let a = node(&redis, &flags);
    let mut c = a.connect("gus");
    wait_streams(&a, 1);
    xadd_push(&mut r, json!({"user": "gus", "data": {"k": 1}}).to_string());
    let m = next_push(&mut c);
    assert_eq!(m["data"]["k"], 1, "{m}");
    // The held entry is tried once per claim cycle, not in a loop (which made tens of
    // thousands of attempts a second), and counted as this node's own retry.
    a.wait_stats("retried", |s| {
        s["cluster"]["stream_retried"].as_u64() >= Some(3)
    });
    let s = a.stats();
    assert!(
        s["cluster"]["broker_errors"].as_u64() < Some(1000),
        "a retry loop: {s}"
    );
    assert_eq!(
        s["cluster"]["stream_claimed"], 0,
        "its own entry is no claim: {s}"
    );
    assert_eq!(pending(&mut r), 1);
}

#[test]
fn a_users_push_redis_refuses_partway_reaches_each_user_once() {
    let redis = RedisServer::start();
    let mut r = redis.conn();
    let a = node(&redis, &["--claim-idle-ms", "300"]);
    let used = |r: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("memory").query(r).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory")
    };
    // Each user's script keeps the 100 KB push as history: with room for a few of them,
    // Redis numbers the first users and refuses the rest (OOM). The room is found by
    // trying: too little refuses every user, too much numbers them all.
    let data = "x".repeat(100_000);
    for (attempt, room) in (2..=16u64).map(|k| k * 100_000).enumerate() {
        let users: Vec<String> = (0..8).map(|i| format!("a{attempt}u{i}")).collect();
        let push = json!({"users": users, "data": data}).to_string();
        let stats = a.stats();
        let errors = stats["cluster"]["broker_errors"].as_u64();
        let read = stats["cluster"]["stream_read"].as_u64();
        let before = used(&mut r);
        let _: () = redis::cmd("MULTI").query(&mut r).unwrap();
        let _: () = redis::cmd("XADD")
            .arg("throng:push")
            .arg("*")
            .arg("push")
            .arg(&push)
            .query(&mut r)
            .unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(before + room)
            .query(&mut r)
            .unwrap();
        let _: Vec<redis::Value> = redis::cmd("EXEC").query(&mut r).unwrap();
        // Tried once (read: the ingress polls, so not at once): acknowledged (every user
        // numbered) or refused (some or all users).
        let tried = wait_until(Duration::from_secs(10), || {
            let s = a.stats();
            s["cluster"]["stream_read"].as_u64() > read
                && (pending(&mut r) == 0 || s["cluster"]["broker_errors"].as_u64() > errors)
        });
        assert!(tried, "entry {attempt} never tried");
        let first = user_seqs(&mut r, &users);
        set_maxmemory(&mut r, 0);
        assert!(
            wait_until(Duration::from_secs(10), || pending(&mut r) == 0),
            "entry {attempt} never finished"
        );
        let after = user_seqs(&mut r, &users);
        assert_eq!(
            after,
            vec![1; 8],
            "each user numbered once (first try {first:?})"
        );
        if first.contains(&1) && first.contains(&0) {
            // Refused partway, then finished without repeating anyone.
            eprintln!("refused partway at {room} B of room: {first:?}");
            return;
        }
    }
    panic!("Redis never refused a push partway: no room between none and all");
}

#[test]
fn a_users_push_dead_after_reaching_some_users_is_not_repeated_while_its_copy_waits() {
    let redis = RedisServer::start();
    let mut r = redis.conn();
    // w2's stream key is of another type (a refusal for good), and the DLQ refuses every
    // copy: the entry stays pending, tried again every claim cycle.
    let _: () = redis::cmd("SET")
        .arg("throng:{u:w2}")
        .arg("not a hash")
        .query(&mut r)
        .unwrap();
    refuse_dlq_copies(&mut r);
    let a = node(&redis, &["--claim-idle-ms", "300"]);
    let mut w0 = a.connect("w0");
    wait_streams(&a, 1);
    let push = json!({"users": ["w0", "w1", "w2"], "data": "once"}).to_string();
    xadd_push(&mut r, push);
    assert_eq!(next_push(&mut w0)["data"], "once");
    a.wait_stats("tried again", |s| {
        s["cluster"]["stream_retried"].as_u64() >= Some(3)
    });
    assert_eq!(pending(&mut r), 1, "its copy still refused");
    // The retries left w0 and w1 out: each was numbered once.
    assert_eq!(user_seqs(&mut r, &["w0".into(), "w1".into()]), [1, 1]);
    xadd_push(&mut r, json!({"user": "w0", "data": "next"}).to_string());
    assert_eq!(next_push(&mut w0)["data"], "next", "no repeat before it");
}

#[test]
fn a_batch_after_redis_lost_its_scripts_sends_its_broadcast_once() {
    let redis = RedisServer::start();
    let mut r = redis.conn();
    let a = node(&redis, &[]);
    let mut bo = a.connect("bo");
    wait_streams(&a, 1);
    // As after a Redis restart: the script cache is empty. One transaction adds a
    // broadcast and a user push, so that one read takes both into one batch.
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut r).unwrap();
    let _: () = redis::cmd("MULTI").query(&mut r).unwrap();
    for push in [
        json!({"broadcast": true, "data": "b1"}),
        json!({"user": "bo", "data": "u1"}),
    ] {
        let _: () = redis::cmd("XADD")
            .arg("throng:push")
            .arg("*")
            .arg("push")
            .arg(push.to_string())
            .query(&mut r)
            .unwrap();
    }
    let _: Vec<redis::Value> = redis::cmd("EXEC").query(&mut r).unwrap();
    xadd_push(&mut r, json!({"user": "bo", "data": "m"}).to_string());
    // The user push ran again once the script was loaded; the broadcast, a plain
    // PUBLISH that had gone out, did not.
    let got: Vec<Value> = (0..3).map(|_| next_push(&mut bo)["data"].clone()).collect();
    assert_eq!(got, [json!("b1"), json!("u1"), json!("m")]);
}

#[test]
fn a_push_answered_202_that_redis_refuses_for_now_goes_out_once_it_can() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let mut c = a.connect("oz");
    wait_streams(&a, 1);
    let mut r = redis.conn();
    // Out of memory: the script is refused (OOM), the push was answered 202 already.
    set_maxmemory(&mut r, "1");
    let errors = a.stats()["cluster"]["broker_errors"].as_u64();
    a.push(json!({"user": "oz", "data": "later"}));
    a.wait_stats("the refusal counted", |s| {
        s["cluster"]["broker_errors"].as_u64() > errors
    });
    c.expect_silence(Duration::from_millis(200));
    // Memory back: tried again, it goes out, once.
    set_maxmemory(&mut r, "0");
    expect_push(&mut c, "later", 1);
    a.push(json!({"user": "oz", "data": "next"}));
    expect_push(&mut c, "next", 2);
}

#[test]
fn pushes_behind_one_redis_refused_for_now_wait_for_it_and_keep_their_order() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let mut oz = a.connect("oz");
    let mut ok = a.connect("ok");
    wait_streams(&a, 2);
    let mut r = redis.conn();
    set_maxmemory(&mut r, "1");
    let errors = a.stats()["cluster"]["broker_errors"].as_u64().unwrap();
    a.push(json!({"user": "oz", "data": "first"}));
    // Refused again and again, its next try is a second or more away: the pushes below
    // come while it waits (before, they went first: "second" was numbered 1).
    a.wait_stats("refused several times", |s| {
        s["cluster"]["broker_errors"].as_u64() >= Some(errors + 8)
    });
    assert_eq!(a.stats()["cluster"]["broker_waiting"], 1);
    set_maxmemory(&mut r, "0");
    let told = a.api(
        "POST",
        "/v1/push?wait=1",
        Some(&json!({"user": "oz", "data": "asks"}).to_string()),
    );
    told.assert_error(503, "broker_unavailable");
    assert!(
        told.text().contains("an earlier push to user oz waits"),
        "{}",
        told.text()
    );
    a.push(json!({"user": "oz", "data": "second"}));
    a.push(json!({"users": ["ok", "oz"], "data": "both"}));
    a.wait_stats("both held behind it", |s| {
        s["cluster"]["broker_held_behind"] == 2
    });
    // ok's part was not held up; oz gets all three in the order they were taken.
    expect_push(&mut ok, "both", 1);
    expect_push(&mut oz, "first", 1);
    expect_push(&mut oz, "second", 2);
    expect_push(&mut oz, "both", 3);
    a.wait_stats("none waits", |s| s["cluster"]["broker_waiting"] == 0);
}

#[test]
fn more_refused_pushes_to_a_stream_than_a_round_trip_retries_keep_their_order() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let mut oz = a.connect("oz");
    wait_streams(&a, 1);
    let mut r = redis.conn();
    set_maxmemory(&mut r, "1");
    // 100 pushes wait; a round trip tries 64 of them again, and those refused go back
    // ahead of the other 36 (before, behind them: 65 was numbered 1).
    for i in 1..=100 {
        a.push(json!({"user": "oz", "data": i.to_string()}));
    }
    a.wait_stats("all waiting", |s| s["cluster"]["broker_waiting"] == 100);
    let errors = a.stats()["cluster"]["broker_errors"].as_u64().unwrap();
    a.wait_stats("retried", |s| {
        s["cluster"]["broker_errors"].as_u64() >= Some(errors + 128)
    });
    set_maxmemory(&mut r, "0");
    for i in 1..=100 {
        expect_push(&mut oz, &i.to_string(), i);
    }
}

#[test]
fn a_push_waiting_for_redis_to_take_it_holds_up_no_other() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let mut g1 = a.connect("g1");
    wait_streams(&a, 1);
    let mut r = redis.conn();
    // bad's stream key is of another type: a refusal for good, for bad only.
    let _: () = redis::cmd("SET")
        .arg("throng:{u:bad}")
        .arg("not a hash")
        .query(&mut r)
        .unwrap();
    set_maxmemory(&mut r, "1");
    let errors = a.stats()["cluster"]["broker_errors"].as_u64();
    a.push(json!({"users": ["g1", "bad"], "data": "later"}));
    // More refused pushes than one round trip holds.
    let many: Vec<String> = (0..300).map(|i| format!("q{i}")).collect();
    for user in &many {
        a.push(json!({"user": user, "data": "waits"}));
    }
    a.wait_stats("the refusals counted", |s| {
        s["cluster"]["broker_errors"].as_u64() > errors.map(|e| e + 300)
    });
    // While that push waits for Redis, others are still published or answered at once:
    // a waiting push is refused with Redis's reason, not left to time out.
    let refused = a.api(
        "POST",
        "/v1/push?wait=1",
        Some(&json!({"user": "g2", "data": 1}).to_string()),
    );
    refused.assert_error(503, "broker_unavailable");
    assert!(refused.text().contains("OOM"), "{}", refused.text());
    let sent = a.push_wait(json!({"broadcast": true, "data": "all"}));
    assert_eq!(sent["nodes"], 1, "{sent}");
    assert_eq!(next_push(&mut g1)["data"], "all");
    // Memory back: g1 gets the waiting push once; bad's part is dropped for good.
    set_maxmemory(&mut r, "0");
    expect_push(&mut g1, "later", 1);
    a.push(json!({"user": "g1", "data": "next"}));
    expect_push(&mut g1, "next", 2);
    // And every one of the 300, once.
    let seqs = |r: &mut redis::Connection| user_seqs(r, &many);
    let once = wait_until(Duration::from_secs(20), || {
        seqs(&mut r).iter().all(|&s| s == 1)
    });
    assert!(once, "{:?}", seqs(&mut r));
}

#[test]
fn when_too_many_refused_pushes_wait_the_node_refuses_new_ones_until_they_went() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let mut r = redis.conn();
    set_maxmemory(&mut r, "1");
    // Batches of pushes Redis refuses (out of memory) until the node says it takes no
    // more: past 8,192 waiting, it is not ready and new pushes get 503 at once.
    let mut accepted: Vec<String> = Vec::new();
    let ready = |a: &TestServer| a.api("GET", "/readyz", None).status == 200;
    for round in 0..8 {
        if round > 0 && !ready(&a) {
            break;
        }
        let users: Vec<String> = (0..3000).map(|i| format!("s{round}x{i}")).collect();
        let body: String = users
            .iter()
            .map(|u| json!({"user": u, "data": "w"}).to_string() + "\n")
            .collect();
        let answer = a.api("POST", "/v1/push/batch", Some(&body));
        assert_eq!(answer.status, 200, "{}", answer.text());
        let rejected: std::collections::HashSet<u64> = answer.json()["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["line"].as_u64())
            .collect();
        for (i, u) in users.into_iter().enumerate() {
            if !rejected.contains(&(i as u64 + 1)) {
                accepted.push(u);
            }
        }
        // Until the publisher has taken them all in.
        let taken = wait_until(Duration::from_secs(20), || {
            a.stats()["cluster"]["broker_errors"].as_u64() >= Some(accepted.len() as u64)
                || !ready(&a)
        });
        assert!(taken, "{}", a.stats());
    }
    assert!(!ready(&a), "never refused: {} waiting", accepted.len());
    assert!(accepted.len() >= 8192, "{}", accepted.len());
    a.api(
        "POST",
        "/v1/push",
        Some(&json!({"user": "late", "data": 1}).to_string()),
    )
    .assert_error(503, "broker_unavailable");
    // Memory back: every accepted push goes out once, and the node takes pushes again.
    set_maxmemory(&mut r, "0");
    let seqs = |r: &mut redis::Connection| user_seqs(r, &accepted);
    let all = wait_until(Duration::from_secs(60), || {
        seqs(&mut r).iter().all(|&s| s == 1)
    });
    let now = seqs(&mut r);
    assert!(
        all,
        "{} of {} not numbered once",
        now.iter().filter(|&&s| s != 1).count(),
        now.len()
    );
    assert!(wait_until(Duration::from_secs(10), || ready(&a)));
    a.push(json!({"user": "late", "data": 2}));
}

#[test]
fn a_redis_out_of_memory_does_not_make_the_node_reconnect_in_a_loop() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let _c = a.connect("pres");
    wait_streams(&a, 1);
    let mut r = redis.conn();
    let info = |r: &mut redis::Connection, section: &str, field: &str| -> u64 {
        let text: String = redis::cmd("INFO").arg(section).query(r).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let ooms = |r: &mut redis::Connection| info(r, "errorstats", "errorstat_OOM:count=");
    let connections = |r: &mut redis::Connection| info(r, "stats", "total_connections_received:");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query(&mut r)
        .unwrap();
    // The presence heartbeat is refused (OOM); the link is fine, so the node keeps it
    // and tries again at the next beat, instead of reconnecting at once, hundreds of
    // times a second.
    let before = ooms(&mut r);
    assert!(wait_until(Duration::from_secs(10), || ooms(&mut r) > before));
    let opened = connections(&mut r);
    let storm = wait_until(Duration::from_millis(1500), || {
        connections(&mut r) > opened + 30
    });
    assert!(!storm, "{} connections", connections(&mut r) - opened);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(&mut r)
        .unwrap();
}

#[test]
fn a_node_on_a_replica_reconnects_and_publishes_once_it_is_a_primary() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let mut rp = a.connect("rp");
    wait_streams(&a, 1);
    let mut r = redis.conn();
    // As after a failover behind the node's address: this Redis becomes a replica (of a
    // primary that is not there), which refuses writes with READONLY.
    let nowhere = common::redis_server::free_port().to_string();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(&nowhere)
        .query(&mut r)
        .unwrap();
    let errors = a.stats()["cluster"]["broker_errors"].as_u64();
    a.push(json!({"user": "rp", "data": "after the failover"}));
    // The publisher drops the link and reconnects until writes go through: meanwhile
    // waiting pushes are answered 503 broker_unavailable, not left to time out.
    a.wait_stats("the refusal counted", |s| {
        s["cluster"]["broker_errors"].as_u64() > errors
    });
    let refused = a.api(
        "POST",
        "/v1/push?wait=1",
        Some(&json!({"user": "rp", "data": 0}).to_string()),
    );
    refused.assert_error(503, "broker_unavailable");
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut r)
        .unwrap();
    expect_push(&mut rp, "after the failover", 1);
    a.push(json!({"user": "rp", "data": "next"}));
    expect_push(&mut rp, "next", 2);
}

#[test]
fn a_users_push_cut_by_a_lost_script_cache_reaches_every_user_once() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let mut r = redis.conn();
    // How many commands Redis refused with NOSCRIPT so far (INFO errorstats).
    let noscripts = |r: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("errorstats").query(r).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("errorstat_NOSCRIPT:count="))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    // The script cache goes while Redis runs a 10,000-user push, one script per user: the
    // flush comes once the first user is numbered, so the users before it were reached
    // and the ones after it refused. The timing is Redis's, so a few tries may be needed.
    for attempt in 0..5 {
        let users: Vec<String> = (0..10_000).map(|i| format!("c{attempt}u{i}")).collect();
        let before = noscripts(&mut r);
        let first = format!("throng:{{u:{}}}", users[0]);
        let mut flush = redis.conn();
        let flusher = std::thread::spawn(move || {
            let numbered = wait_until(Duration::from_secs(10), || {
                redis::cmd("HEXISTS")
                    .arg(&first)
                    .arg("seq")
                    .query::<bool>(&mut flush)
                    .unwrap_or(false)
            });
            assert!(numbered, "the push never started");
            let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut flush).unwrap();
        });
        a.push(json!({"users": users, "data": "x"}));
        flusher.join().unwrap();
        // Every user numbered, and once.
        let seqs = |r: &mut redis::Connection| user_seqs(r, &users);
        let all = wait_until(Duration::from_secs(10), || {
            seqs(&mut r).iter().all(|&s| s >= 1)
        });
        let now = seqs(&mut r);
        let missing = now.iter().filter(|&&s| s == 0).count();
        assert!(all, "{missing} of 10,000 users never numbered");
        let twice = now.iter().filter(|&&s| s > 1).count();
        assert_eq!(twice, 0, "users numbered more than once");
        if noscripts(&mut r) > before {
            return;
        }
    }
    panic!("the flush never came while the push ran");
}

#[test]
fn renewing_held_entries_touches_only_the_nodes_own() {
    let redis = RedisServer::start();
    let mut r = redis.conn();
    group_create(&mut r, "throng");
    let mine = xadd_push(&mut r, "one");
    let theirs = xadd_push(&mut r, "two");
    for (consumer, id) in [("n1", &mine), ("n2", &theirs)] {
        group_read(&mut r, "throng", consumer, 1);
        assert_eq!(idle(&mut r, id).0, consumer);
    }
    // Both idle a while; n1 renews both ids: only its own is renewed, n2 keeps its entry.
    assert!(wait_until(Duration::from_secs(5), || idle(&mut r, &theirs)
        .1
        >= 300));
    let renewed = throng::broker::ingress::renew_mine(&mut r, "n1", &[&mine, &theirs]).unwrap();
    assert_eq!(renewed, 1);
    let (owner, their_idle) = idle(&mut r, &theirs);
    assert_eq!(owner, "n2", "not taken from the node that holds it");
    assert!(their_idle >= 300, "its idle time untouched: {their_idle}");
    let (owner, my_idle) = idle(&mut r, &mine);
    assert_eq!(owner, "n1");
    assert!(
        my_idle < their_idle,
        "renewed: {my_idle} against {their_idle}"
    );
}

/// Adds `n` valid pushes for `user` to `throng:push` in one pipeline; their ids, in order.
fn add_pushes(r: &mut redis::Connection, user: &str, ids: &[String]) -> Vec<String> {
    let mut pipe = redis::pipe();
    for (k, id) in ids.iter().enumerate() {
        pipe.cmd("XADD")
            .arg("throng:push")
            .arg(id)
            .arg("push")
            .arg(json!({"user": user, "data": {"k": k}}).to_string());
    }
    pipe.query(r).unwrap()
}

fn xlen(r: &mut redis::Connection) -> u64 {
    redis::cmd("XLEN").arg("throng:push").query(r).unwrap()
}

/// Entries of `throng:push` from `from` on.
fn entries_from(r: &mut redis::Connection, from: &str) -> usize {
    let v: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg("throng:push")
        .arg(from)
        .arg("+")
        .query(r)
        .unwrap();
    v.len()
}

/// What `srv` trimmed stopped below `ids[from]`, which is there with every entry after it,
/// and the stream holds exactly what was not trimmed.
fn assert_kept_from(
    srv: &TestServer,
    r: &mut redis::Connection,
    ids: &[String],
    from: usize,
    what: &str,
) {
    let trimmed = srv.stats()["cluster"]["stream_trimmed"].as_u64().unwrap();
    assert!(trimmed <= from as u64, "trimmed {trimmed}, past {what}");
    assert_eq!(
        entries_from(r, &ids[from]),
        ids.len() - from,
        "{what}: one is gone"
    );
    assert_eq!(xlen(r), ids.len() as u64 - trimmed);
}

/// Waits until node `srv` has read and acknowledged `n` stream entries.
fn wait_ingested(srv: &TestServer, r: &mut redis::Connection, n: u64) {
    srv.wait_stats(&format!("{n} entries read"), |s| {
        s["cluster"]["stream_read"].as_u64() == Some(n)
    });
    let acked = wait_until(WAIT, || {
        let p: Vec<redis::Value> = redis::cmd("XPENDING")
            .arg("throng:push")
            .arg("throng")
            .query(r)
            .unwrap();
        p.first() == Some(&redis::Value::Int(0))
    });
    assert!(acked, "throng left entries pending");
}

/// Group `group` reads `count` new entries of `throng:push` as consumer `c`.
/// Creates consumer group `group` on `throng:push` (and the stream), reading from its
/// start.
fn group_create(r: &mut redis::Connection, group: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("throng:push")
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query(r)
        .unwrap();
}

/// The consumer that holds pending entry `id` of group `throng`, and how long it has been
/// idle (ms).
fn idle(r: &mut redis::Connection, id: &str) -> (String, u64) {
    let p: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg("throng:push")
        .arg("throng")
        .arg(id)
        .arg(id)
        .arg(1)
        .query(r)
        .unwrap();
    (p[0].1.clone(), p[0].2)
}

/// `consumer` of `group` reads the next `count` new entries of `throng:push`.
fn group_read(r: &mut redis::Connection, group: &str, consumer: &str, count: usize) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg("throng:push")
        .arg(">")
        .query(r)
        .unwrap();
}

fn group_ack(r: &mut redis::Connection, group: &str, ids: &[String]) {
    let _: u64 = redis::cmd("XACK")
        .arg("throng:push")
        .arg(group)
        .arg(ids)
        .query(r)
        .unwrap();
}

#[test]
fn stream_entries_go_once_every_group_acknowledged_them_and_not_before() {
    let redis = RedisServer::start();
    let mut r = redis.conn();
    // Two other readers of the stream, as an upstream's audit or replay tools would be.
    for group in ["audit", "late"] {
        group_create(&mut r, group);
    }
    let a = node(&redis, &["--node-id", "node-a"]);
    let ids = add_pushes(&mut r, "nobody", &vec!["*".to_string(); 1000]);
    wait_ingested(&a, &mut r, 1000);
    // `audit` has read 600 and acknowledged 300 (301 onwards pending or unread); `late`
    // has read and acknowledged 800. The oldest entry anyone still needs is the 301st.
    group_read(&mut r, "audit", "c", 600);
    group_ack(&mut r, "audit", &ids[..300]);
    group_read(&mut r, "late", "c", 800);
    group_ack(&mut r, "late", &ids[..800]);
    a.wait_stats("entries trimmed", |s| {
        s["cluster"]["stream_trimmed"].as_u64() > Some(0)
    });
    assert_kept_from(&a, &mut r, &ids, 300, "audit's pending entries");
    // `audit` acknowledges what it read: now its unread entries (601 on) hold the floor.
    group_ack(&mut r, "audit", &ids[300..600]);
    // Whole radix nodes go (at most 100 entries each): at least 500 of the 600.
    let moved = wait_until(WAIT, || {
        a.stats()["cluster"]["stream_trimmed"].as_u64() >= Some(500)
    });
    assert!(moved, "the floor did not follow audit: {}", a.stats());
    assert_kept_from(&a, &mut r, &ids, 600, "audit's unread entries");
}

#[test]
fn stream_keep_ms_keeps_acknowledged_entries_that_young() {
    let redis = RedisServer::start();
    let mut r = redis.conn();
    let a = node(&redis, &["--stream-keep-ms", "600000"]);
    // 300 entries with ids of an hour ago, then 300 of now: all acknowledged at once,
    // only the old ones may go.
    let hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        - 3_600_000;
    let old: Vec<String> = (0..300).map(|i| format!("{hour_ago}-{i}")).collect();
    let mut ids = add_pushes(&mut r, "nobody", &old);
    ids.extend(add_pushes(&mut r, "nobody", &vec!["*".to_string(); 300]));
    wait_ingested(&a, &mut r, 600);
    // `~` trims whole radix nodes (at most 100 entries), so the one that holds the last
    // old entries and the first new ones stays.
    a.wait_stats("the old entries trimmed", |s| {
        s["cluster"]["stream_trimmed"].as_u64() >= Some(200)
    });
    assert_kept_from(&a, &mut r, &ids, 300, "the entries younger than 600 s");
}

/// The push messages `c` gets up to and including the one with `data` `last`.
fn pushes_until(c: &mut Client, last: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let p = next_push(c);
        let done = p["data"] == last;
        got.push(p);
        if done {
            return got;
        }
    }
}

/// A node on `redis` with `user` connected and one push, "before", delivered as seq 1: the
/// publisher has just made a round trip, so its idle link check does not meet a stall
/// that follows.
fn node_after_one_push(redis: &RedisServer, user: &str) -> (TestServer, Client) {
    let a = node(redis, &[]);
    let mut c = a.connect(user);
    wait_streams(&a, 1);
    a.push_wait(json!({"user": user, "data": "before"}));
    expect_push(&mut c, "before", 1);
    (a, c)
}

#[test]
fn pushes_redis_took_while_stalled_past_the_timeout_go_out_once() {
    let redis = RedisServer::start();
    let (a, mut c) = node_after_one_push(&redis, "vic");
    let stall = redis.stall(3.0);
    // One request: its pushes reach the publisher together, so the round trip Redis takes
    // only when it wakes (2 s after the node gave up on an answer) holds some of them.
    let lines = [
        json!({"users": ["vic", "wen"], "data": "both"}),
        json!({"user": "vic", "data": "p1"}),
        json!({"user": "vic", "data": "p2"}),
        json!({"user": "vic", "data": "p3"}),
    ];
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let r = a.api("POST", "/v1/push/batch", Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["accepted"], 4, "{}", r.text());
    stall.join().unwrap();
    wait_ready(&a);
    a.push(json!({"user": "vic", "data": "after"}));
    // Each once: numbered 2 to 5 in order, then "after" as 6.
    let got = pushes_until(&mut c, "after");
    let data: Vec<&str> = got.iter().filter_map(|p| p["data"].as_str()).collect();
    let mut sorted = data.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["after", "both", "p1", "p2", "p3"], "{got:?}");
    let seqs: Vec<u64> = got.iter().filter_map(|p| p["seq"].as_u64()).collect();
    assert_eq!(seqs, [2, 3, 4, 5, 6], "{got:?}");
    let mut r = redis.conn();
    assert_eq!(user_seqs(&mut r, &["wen".to_string()]), [1]);
    // The round trip did go unanswered, and was sent again to no effect.
    let s = a.stats();
    assert!(s["cluster"]["broker_resent"].as_u64() >= Some(1), "{s}");
    assert!(
        s["cluster"]["broker_resent_taken"].as_u64() >= Some(1),
        "{s}"
    );
}

#[test]
fn a_waiting_push_whose_answer_a_stall_lost_is_told_it_may_have_gone_out() {
    let redis = RedisServer::start();
    let (a, mut c) = node_after_one_push(&redis, "xan");
    let stall = redis.stall(3.0);
    let push = json!({"user": "xan", "data": "maybe"}).to_string();
    let r = a.api("POST", "/v1/push?wait=1", Some(&push));
    r.assert_error(503, "broker_unavailable");
    let message = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("may or may not"), "{message}");
    stall.join().unwrap();
    // Redis took it when it woke: it went out, once.
    wait_ready(&a);
    a.push(json!({"user": "xan", "data": "after"}));
    expect_push(&mut c, "maybe", 2);
    expect_push(&mut c, "after", 3);
}

#[test]
fn pushes_answered_202_just_before_a_shutdown_reach_redis_once_it_answers() {
    let redis = RedisServer::start();
    let mut a = node(&redis, &[]);
    a.push_wait(json!({"user": "yul", "data": "before"}));
    // Redis stalls: the first push's round trip waits for it, the others queue behind.
    let stall = redis.stall(2.0);
    for i in 0..5 {
        a.push(json!({"user": "yul", "data": format!("q{i}")}));
    }
    // The node stops meanwhile; it goes on until Redis took them (within the 5 s grace).
    a.shutdown();
    a.take().wait();
    stall.join().unwrap();
    let mut r = redis.conn();
    let history: Vec<String> = redis::cmd("LRANGE")
        .arg("throng:{u:yul}:h")
        .arg(0)
        .arg(-1)
        .query(&mut r)
        .unwrap();
    let data: Vec<&str> = history.iter().filter_map(|m| m.split(' ').nth(3)).collect();
    assert_eq!(
        data,
        [
            "{\"data\":\"before\"}",
            "{\"data\":\"q0\"}",
            "{\"data\":\"q1\"}",
            "{\"data\":\"q2\"}",
            "{\"data\":\"q3\"}",
            "{\"data\":\"q4\"}"
        ],
        "{history:?}"
    );
}

#[test]
fn a_silent_redis_is_given_up_on_after_one_timeout_not_one_per_command() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let users: Vec<String> = (0..200).map(|i| format!("z{i}")).collect();
    a.push_wait(json!({"user": "z0", "data": "before"}));
    // Silent, not gone: the node's round trip of 200 scripts gets no answer and no error.
    redis.freeze();
    a.push(json!({"users": users, "data": "x"}));
    // Queued behind that round trip: the publisher takes them when it finds the link
    // gone (into its retry queue), and they come off the bytes waiting for it then.
    for n in 1..=3 {
        a.push(json!({"user": "z0", "data": n}));
    }
    // The node says so within a few seconds (not 200 times the 2 s timeout).
    let down = wait_until(Duration::from_secs(15), || {
        a.api("GET", "/readyz", None).status == 503
    });
    redis.thaw();
    assert!(down, "the node kept waiting on a silent Redis");
    // Back: every user numbered once (the round trip went out again, marked).
    wait_ready(&a);
    let mut r = redis.conn();
    let done = wait_until(WAIT, || {
        user_seqs(&mut r, &users[1..]).iter().all(|&s| s == 1)
    });
    assert!(done, "{:?}", user_seqs(&mut r, &users));
    let done = wait_until(WAIT, || user_seqs(&mut r, &users[..1]) == [5]);
    assert!(done, "{:?}", user_seqs(&mut r, &users[..1]));
    // Nothing waits, so nothing is counted as waiting (review s18e: pushes the publisher
    // took while down stayed counted, and the API refused pushes for good).
    a.wait_stats("no bytes waiting for the publisher", |s| {
        s["cluster"]["broker_publish_queued_bytes"] == 0
    });
}

#[test]
fn links_killed_mid_round_trip_are_made_again_at_a_growing_pause_and_each_user_gets_it_once() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let users: Vec<String> = (0..5_000).map(|i| format!("k{i}")).collect();
    // Every other client of Redis is killed every 20 ms for 3 s: the node's round trip of
    // 5,000 scripts is cut again and again, partway.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut killer = redis.conn();
    let stopped = std::sync::Arc::clone(&stop);
    let kills = std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let _: redis::RedisResult<u64> = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .arg("SKIPME")
                .arg("yes")
                .query(&mut killer);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    // Refused (503) only while the node has no link; taken once it has one again.
    let push = json!({"users": users, "data": "x"}).to_string();
    let taken = wait_until(WAIT, || {
        a.api("POST", "/v1/push", Some(&push)).status == 202
    });
    assert!(taken, "the push was never taken");
    // Its round trip is cut and sent again, and again.
    a.wait_stats("the round trip sent again twice", |s| {
        s["cluster"]["broker_resent"].as_u64() >= Some(2)
    });
    let resent = a.stats()["cluster"]["broker_resent"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(3));
    let tries = a.stats()["cluster"]["broker_resent"].as_u64().unwrap_or(0) - resent;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    kills.join().unwrap();
    // Paced (50 ms doubling to 2 s): a handful in 3 s, not one per kill.
    assert!(tries <= 12, "sent again {tries} times in about 3 s");
    // Redis keeps the link now: the push goes out, to each user once.
    let mut r = redis.conn();
    let done = wait_until(Duration::from_secs(30), || {
        user_seqs(&mut r, &users).iter().all(|&s| s == 1)
    });
    let seqs = user_seqs(&mut r, &users);
    assert!(
        done,
        "{} users not numbered once",
        seqs.iter().filter(|&&s| s != 1).count()
    );
}

#[test]
fn unsubscribe_and_subscribe_in_one_read_keep_the_topic_served() {
    // Review s17f: a connection alone on its shard with a topic that unsubscribed and
    // subscribed again in one read was answered twice but got nothing more: the shard's end
    // of turn unwatched the topic it had left, though it had joined it again.
    let redis = RedisServer::start();
    let a = node(&redis, &["--public-topics", "room.*"]);
    let c = node(&redis, &["--public-topics", "room.*"]);
    for round in 0..5 {
        let topic = format!("room.r{round}");
        let mut x = RawWs::connect(c.ws, &token(&format!("x{round}")));
        x.send_json(json!({"type": "subscribe", "topic": topic, "ref": "s1"}));
        assert_eq!(x.read_json()["ref"], "s1");
        a.push_wait(json!({"topic": topic, "data": "before"}));
        assert_eq!(x.read_json()["data"], "before");
        let mut both = encode_frame(
            true,
            0,
            OP_TEXT,
            json!({"type": "unsubscribe", "topic": topic, "ref": "u"})
                .to_string()
                .as_bytes(),
            Some([1, 2, 3, 4]),
        );
        both.extend(encode_frame(
            true,
            0,
            OP_TEXT,
            json!({"type": "subscribe", "topic": topic, "ref": "s2"})
                .to_string()
                .as_bytes(),
            Some([1, 2, 3, 4]),
        ));
        x.send_bytes(&both);
        assert_eq!(x.read_json()["ref"], "u");
        assert_eq!(x.read_json()["ref"], "s2");
        for i in 0..3 {
            a.push_wait(json!({"topic": topic, "data": i}));
            let p = x.read_json();
            assert_eq!(
                (p["type"].as_str(), p["data"].as_u64()),
                (Some("push"), Some(i)),
                "round {round}: {p}"
            );
        }
    }
}

#[test]
fn requests_read_behind_a_subscribe_that_waits_for_its_topic_are_answered_in_order() {
    // Review s17f: while a topic loaded from Redis, a second subscribe read in the same
    // buffer got no answer, and a subscribe overtaken by an unsubscribe got none either.
    let redis = RedisServer::start();
    let a = node(&redis, &["--public-topics", "room.*"]);
    let c = node(&redis, &["--public-topics", "room.*"]);
    let mut x = RawWs::connect(c.ws, &token("x"));
    let one = |v: Value| {
        encode_frame(
            true,
            0,
            OP_TEXT,
            v.to_string().as_bytes(),
            Some([9, 8, 7, 6]),
        )
    };
    let batch = |msgs: Vec<Value>| msgs.into_iter().flat_map(one).collect::<Vec<u8>>();
    let answers = |x: &mut RawWs, n: usize| {
        (0..n)
            .map(|_| {
                let m = x.read_json();
                (
                    m["ref"].as_u64().unwrap_or(0),
                    m["type"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    x.send_bytes(&batch(vec![
        json!({"type": "subscribe", "topic": "room.a", "ref": 1}),
        json!({"type": "subscribe", "topic": "room.a", "ref": 2}),
    ]));
    assert_eq!(
        answers(&mut x, 2),
        [(1, "subscribed".into()), (2, "subscribed".into())]
    );
    x.send_bytes(&batch(vec![
        json!({"type": "subscribe", "topic": "room.b", "ref": 3}),
        json!({"type": "unsubscribe", "topic": "room.b", "ref": 4}),
        json!({"type": "subscribe", "topic": "room.b", "ref": 5}),
        json!({"type": "subscribe", "topic": "room.c", "ref": 6}),
        json!({"type": "unsubscribe", "topic": "room.c", "ref": 7}),
    ]));
    assert_eq!(
        answers(&mut x, 5),
        [
            (3, "subscribed".into()),
            (4, "unsubscribed".into()),
            (5, "subscribed".into()),
            (6, "subscribed".into()),
            (7, "unsubscribed".into())
        ]
    );
    // room.a and room.b are held, room.c is not: its push, published first, would come
    // first (the node hears Redis in publish order).
    for topic in ["room.c", "room.a", "room.b"] {
        a.push_wait(json!({"topic": topic, "data": topic}));
    }
    let got: Vec<Value> = (0..2).map(|_| x.read_json()["data"].clone()).collect();
    assert_eq!(got, [json!("room.a"), json!("room.b")]);
}

#[test]
fn a_node_serving_the_user_resumes_from_redis_when_its_own_history_falls_short() {
    // Review s17f: the node holding the user answered `resumed:false` once its own history
    // (history_ttl_ms) had let go of the pushes, where any other node replayed them from
    // Redis (kept offline_ttl_ms).
    let redis = RedisServer::start();
    let a = node(&redis, &["--history-ttl-ms", "300"]);
    let mut desk = a.connect("uu");
    wait_streams(&a, 1);
    let epoch = epoch(&desk);
    for i in 1..=5u64 {
        a.push_wait(json!({"user": "uu", "data": i}));
        assert_eq!(next_push(&mut desk)["seq"], i);
    }
    // This node's history of them is gone; Redis still has them.
    let s = a.wait_stats("the node's own history expired", |s| {
        s["history_bytes"] == 0
    });
    let channels = s["cluster"]["broker_channels"].clone();
    assert!(channels.as_u64() > Some(0), "{s}");
    let mut phone = connect_resume(&a, "uu", 2, &epoch);
    assert_eq!(phone.welcome["resumed"], true, "{}", phone.welcome);
    for i in 3..=5u64 {
        assert_eq!(next_push(&mut phone)["seq"], i);
    }
    // Reloaded, not subscribed twice (review s17g: the gauge grew by one per reload).
    assert_eq!(a.stats()["cluster"]["broker_channels"], channels);
    // The session that stayed goes on, and so does the new one, without a gap.
    a.push_wait(json!({"user": "uu", "data": 6}));
    assert_eq!(next_push(&mut desk)["seq"], 6);
    assert_eq!(next_push(&mut phone)["seq"], 6);
    desk.expect_silence(Duration::from_millis(100));
}

#[test]
fn a_subscribe_refused_while_redis_is_away_leaves_no_membership() {
    // Review s17g: the refused connection stayed a member, got the topic's pushes without
    // a `subscribed`, and its retry was answered without a replay of what came between.
    let redis = RedisServer::start();
    let a = node(&redis, &["--public-topics", "room.*"]);
    let c = node(&redis, &["--public-topics", "room.*", "--lifecycle-events"]);
    let mut x = c.connect("x");
    wait_streams(&c, 1);
    // Its `connect` event is in before Redis stops answering (a batch cut off may go twice).
    let mut conn = redis.conn();
    assert!(wait_until(WAIT, || events_in(&mut conn).len() == 1));
    redis.freeze();
    x.send(json!({"type": "subscribe", "topic": "room.e", "ref": "s1"}));
    let m = x.recv();
    redis.thaw();
    assert_eq!(
        (m["type"].as_str(), m["code"].as_str()),
        (Some("error"), Some("broker_unavailable")),
        "{m}"
    );
    // Redis's own words stay in the log (review s21a: a WRONGTYPE reached the client).
    let said = m["message"].as_str().unwrap_or_default();
    assert!(
        said.contains("retry later") && !said.contains("Redis:"),
        "{m}"
    );
    wait_ready(&a);
    wait_ready(&c);
    // A topic push, then a direct one on the same Redis connection: were x still a member,
    // the topic push would come first.
    a.push_wait(json!({"topic": "room.e", "data": "topic"}));
    a.push_wait(json!({"user": "x", "data": "direct"}));
    assert_eq!(next_push(&mut x)["data"], "direct");
    // The retry is answered, and the topic's pushes follow.
    x.send(json!({"type": "subscribe", "topic": "room.e", "ref": "s2"}));
    let s = x.recv();
    assert_eq!(
        (s["type"].as_str(), s["seq"].as_u64()),
        (Some("subscribed"), Some(1)),
        "{s}"
    );
    a.push_wait(json!({"topic": "room.e", "data": "after"}));
    assert_eq!(next_push(&mut x)["data"], "after");
    // The upstream heard of the subscribe that was answered, not of the refused one
    // (review s21a: it got `subscribe` then `unsubscribe` for it).
    let mut told = Vec::new();
    assert!(
        wait_until(WAIT, || {
            told = events_in(&mut conn)
                .into_iter()
                .filter(|e| e["user"] == "x")
                .map(|e| (e["type"].clone(), e["topic"].clone()))
                .collect();
            told.len() >= 2
        }),
        "{told:?}"
    );
    assert_eq!(
        told,
        vec![
            (json!("connect"), Value::Null),
            (json!("subscribe"), json!("room.e"))
        ]
    );
}

#[test]
fn a_node_keeps_the_streams_it_serves_in_redis_however_quiet() {
    // A stream's `seq` and epoch expire 24 h after its last push: one served that long
    // without a push (a quiet user, a quiet room) restarted at its next push, and its
    // sessions were closed 1012. The node keeps them while it serves them.
    let redis = RedisServer::start();
    let a = node(&redis, &["--public-topics", "room.*"]);
    let mut x = a.connect("quiet");
    x.send(json!({"type": "subscribe", "topic": "room.quiet", "ref": 1}));
    assert_eq!(x.recv()["type"], "subscribed");
    // A topic has its key from its first push on.
    a.push_wait(json!({"topic": "room.quiet", "data": 1}));
    assert_eq!(next_push(&mut x)["seq"], 1);
    let mut r = redis.conn();
    let keys = ["throng:{u:quiet}", "throng:{t:room.quiet}"];
    // As if a day had passed without a push: a minute left.
    for k in keys {
        let set: i64 = redis::cmd("PEXPIRE")
            .arg(k)
            .arg(60_000)
            .query(&mut r)
            .unwrap();
        assert_eq!(set, 1, "{k} exists");
    }
    let mut left = Vec::new();
    let kept = wait_until(WAIT, || {
        left = keys
            .iter()
            .map(|k| redis::cmd("PTTL").arg(k).query::<i64>(&mut r).unwrap())
            .collect();
        left.iter().all(|&ms| ms > 3_600_000)
    });
    assert!(kept, "PTTL {left:?}");
    // Nothing restarted: the next push goes on in the same epoch.
    let epoch = epoch(&x);
    let p = a.push_wait(json!({"user": "quiet", "data": 1}));
    assert_eq!(
        (p["seq"].as_u64(), p["epoch"].as_str()),
        (Some(1), Some(&*epoch))
    );
    assert_eq!(next_push(&mut x)["seq"], 1);
}

#[test]
fn a_redis_refusing_writes_does_not_make_the_node_reload_what_it_serves() {
    // Review s22a: a refused keep (PEXPIRE, a write; here NOREPLICAS, as with MISCONF or
    // READONLY) was taken as a lost link: the node reconnected and loaded every stream it
    // served again, about once a second, for as long as Redis refused writes.
    use common::tls::metric;
    let redis = RedisServer::start();
    let a = node(&redis, &["--public-topics", "room.*"]);
    let mut x = a.connect("wary");
    x.send(json!({"type": "subscribe", "topic": "room.wary", "ref": 1}));
    assert_eq!(x.recv()["type"], "subscribed");
    let loads = metric(a.api, "throng_broker_loads_total");
    let errors = metric(a.api, "throng_broker_errors_total");
    let mut r = redis.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("min-replicas-to-write")
        .arg(1)
        .query(&mut r)
        .unwrap();
    // Three keeps refused (one a second per shard; each counts as an error)...
    assert!(
        wait_until(WAIT, || metric(a.api, "throng_broker_errors_total")
            >= errors + 3),
        "no keep refused"
    );
    // ...and not one stream loaded again, the link kept.
    assert_eq!(metric(a.api, "throng_broker_loads_total"), loads);
    assert_eq!(metric(a.api, "throng_broker_subscriber_up"), 1);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("min-replicas-to-write")
        .arg(0)
        .query(&mut r)
        .unwrap();
    // Still served: a push reaches the session.
    a.push_wait(json!({"user": "wary", "data": 1}));
    assert_eq!(next_push(&mut x)["seq"], 1);
}

#[test]
fn a_head_answered_after_waiting_on_redis_has_no_body_and_keeps_the_connection_in_step() {
    // Review s23: HEAD on the endpoints that wait (topics ask Redis, stats the presence
    // thread) had only the standalone 200 tested; a waited 503 must also go without its
    // body, or the pipelined request after it is read out of step.
    use std::io::Write;
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let mut r = redis.conn();
    // The topic's meta key of the wrong type: Redis refuses the read (WRONGTYPE).
    let _: () = redis::cmd("SET")
        .arg("throng:{t:room.odd}")
        .arg("x")
        .query(&mut r)
        .unwrap();
    for (path, status) in [("/v1/topics/room.odd", 503), ("/v1/stats", 200)] {
        let mut s = tcp(a.api);
        let raw = format!(
            "HEAD {path} HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\n\r\n\
             GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
        );
        s.write_all(raw.as_bytes()).unwrap();
        let all = String::from_utf8_lossy(&read_to_close(&mut s)).to_string();
        assert!(all.starts_with(&format!("HTTP/1.1 {status} ")), "{all:?}");
        let (head, rest) = all.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_ascii_lowercase().contains("content-length: ")
                && !head.to_ascii_lowercase().contains("content-length: 0\r"),
            "{head:?}"
        );
        assert!(rest.starts_with("HTTP/1.1 200 "), "in step: {rest:?}");
    }
}
