//! How idle nodes wait on the `throng:push` stream (docs/protocol.md 5): a blocking read
//! that takes nothing from the group, after which the read script takes what came. Blocked
//! XREADGROUPs of one entry each handed a producer's MULTI out one entry per node, whose
//! pushes then went out in either order (review s18f: 11 pairs swapped out of 200).

mod common;

use common::redis_server::{wait_none_pending, RedisServer};
use common::*;
use serde_json::{json, Value};

/// How many Redis clients are blocked in a read of a stream.
fn blocked_readers(r: &mut redis::Connection) -> usize {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(r).unwrap();
    list.lines()
        .filter(|l| {
            let field = |k: &str| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix(k))
                    .unwrap_or_default()
            };
            field("flags=").contains('b') && field("cmd=").starts_with("xread")
        })
        .count()
}

/// Waits until `n` nodes wait on the stream.
fn wait_blocked(r: &mut redis::Connection, n: usize) {
    let mut seen = 0;
    let ok = wait_until(WAIT, || {
        seen = blocked_readers(r);
        seen == n
    });
    assert!(ok, "{seen} nodes wait on the stream, not {n}");
}

fn stream_read(srv: &TestServer) -> u64 {
    srv.stats()["cluster"]["stream_read"].as_u64().unwrap()
}

#[test]
fn a_producers_multi_is_read_whole_by_one_node_and_goes_out_in_its_order() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = cluster_node(&url, &["--node-id", "node-a"]);
    let b = cluster_node(&url, &["--node-id", "node-b"]);
    let mut c = a.connect("mia");
    a.wait_stats("mia's stream served", |s| {
        s["cluster"]["broker_streams"] == 1
    });
    let mut r = redis.conn();
    let mut last_seq = 0;
    for round in 0..10u64 {
        // Both nodes wait, as an idle cluster does, when the producer's MULTI lands.
        wait_blocked(&mut r, 2);
        let (read_a, read_b) = (stream_read(&a), stream_read(&b));
        let mut pipe = redis::pipe();
        pipe.atomic();
        for k in 0..10 {
            pipe.cmd("XADD")
                .arg("throng:push")
                .arg("*")
                .arg("push")
                .arg(json!({"user": "mia", "data": round * 10 + k}).to_string())
                .ignore();
        }
        let () = pipe.query(&mut r).unwrap();
        for k in 0..10 {
            let m: Value = c.recv();
            assert_eq!(m["type"], "push", "{m}");
            assert_eq!(m["data"], round * 10 + k, "round {round}: {m}");
            let seq = m["seq"].as_u64().unwrap();
            assert_eq!(seq, last_seq + 1, "{m}");
            last_seq = seq;
        }
        let (by_a, by_b) = (stream_read(&a) - read_a, stream_read(&b) - read_b);
        assert!(
            (by_a, by_b) == (10, 0) || (by_a, by_b) == (0, 10),
            "round {round}: node-a read {by_a} entries, node-b {by_b}"
        );
    }
}

#[test]
fn a_node_on_a_resp3_link_waits_on_the_stream_and_delivers_at_once() {
    let redis = RedisServer::start();
    let url = format!("{}/?protocol=resp3", redis.url());
    let a = cluster_node(&url, &[]);
    let mut c = a.connect_topics("rio", &["news"]);
    c.send(json!({"type": "subscribe", "topic": "news"}));
    assert_eq!(c.recv()["type"], "subscribed");
    a.wait_stats("rio's streams served", |s| {
        s["cluster"]["broker_streams"] == 2
    });
    let mut r = redis.conn();
    for k in 0..3 {
        wait_blocked(&mut r, 1);
        let _: String = redis::cmd("XADD")
            .arg("throng:push")
            .arg("*")
            .arg("push")
            .arg(json!({"user": "rio", "data": k}).to_string())
            .query(&mut r)
            .unwrap();
        let m = c.recv();
        assert_eq!(m["data"], k, "{m}");
    }
    // Read by the wait's turn, not left pending for the next claim cycle's retry.
    let s = a.stats();
    assert_eq!(s["cluster"]["stream_retried"], 0, "{s}");
    // The push API, topics and acknowledgements work on that link too.
    let seq = a.push_wait(json!({"topic": "news", "data": "t"}));
    assert_eq!(seq["seq"], 1, "{seq}");
    let m = c.recv();
    assert_eq!(
        (m["topic"].as_str(), m["data"].as_str()),
        (Some("news"), Some("t"))
    );
    wait_none_pending(&mut r);
}

#[test]
fn a_group_moved_back_under_an_idle_node_is_read_again_without_a_new_entry() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = cluster_node(&url, &["--stream-keep-ms", "600000"]);
    let mut c = a.connect("sid");
    a.wait_stats("sid's stream served", |s| {
        s["cluster"]["broker_streams"] == 1
    });
    let mut r = redis.conn();
    wait_blocked(&mut r, 1);
    let _: String = redis::cmd("XADD")
        .arg("throng:push")
        .arg("*")
        .arg("push")
        .arg(json!({"user": "sid", "data": "once"}).to_string())
        .query(&mut r)
        .unwrap();
    assert_eq!(c.recv()["data"], "once");
    a.wait_stats("the entry read", |s| s["cluster"]["stream_read"] == 1);
    wait_blocked(&mut r, 1);
    // An operator replays the stream: the idle node reads it again, with no new entry
    // to wake its wait.
    let () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg("throng:push")
        .arg("throng")
        .arg("0")
        .query(&mut r)
        .unwrap();
    let m = c.recv();
    assert_eq!(m["data"], "once", "{m}");
    assert_eq!(m["seq"], 2, "{m}");
}
