//! docs/protocol.md 1.3 (topics claim), 2.1, 2.2: subscribe, unsubscribe, topic pushes,
//! permissions, public topics.

mod common;

use common::*;
use serde_json::json;

#[test]
fn subscribe_push_unsubscribe() {
    let srv = TestServer::start(&[]);
    let mut a = srv.connect_topics("alice", &["room:*"]);
    let mut b = srv.connect_topics("bob", &["room:1"]);

    a.send(json!({"type": "subscribe", "topic": "room:1", "ref": "r1"}));
    // A topic never pushed: seq 0 and the placeholder epoch (docs/protocol.md 4.2).
    assert_eq!(
        a.recv(),
        json!({"type": "subscribed", "topic": "room:1", "seq": 0,
               "epoch": "0000000000000000", "ref": "r1"})
    );
    b.send(json!({"type": "subscribe", "topic": "room:1"}));
    let m = b.recv();
    assert_eq!(m["type"], "subscribed");
    assert_eq!(m["topic"], "room:1");
    assert!(
        m.get("ref").is_none() || m["ref"].is_null(),
        "no ref sent: {m}"
    );
    srv.wait_stats("topic registered", |s| s["topics"].as_u64() == Some(1));

    let r = srv.push_wait(json!({"topic": "room:1", "data": {"hi": 1}, "id": "t1"}));
    assert_eq!(r["delivered"], 2, "{r}");
    for c in [&mut a, &mut b] {
        let p = c.recv();
        assert_eq!(p["type"], "push");
        assert_eq!(p["topic"], "room:1");
        assert_eq!(p["data"], json!({"hi": 1}));
        assert_eq!(p["id"], "t1");
        assert!(p["ts"].is_u64());
        assert_eq!(p["seq"], 1, "the topic stream's first push: {p}");
    }

    // A different topic goes nowhere.
    let r = srv.push_wait(json!({"topic": "room:2", "data": 0}));
    assert_eq!(r["delivered"], 0, "{r}");

    a.send(json!({"type": "unsubscribe", "topic": "room:1", "ref": "u1"}));
    assert_eq!(
        a.recv(),
        json!({"type": "unsubscribed", "topic": "room:1", "ref": "u1"})
    );
    let r = srv.push_wait(json!({"topic": "room:1", "data": "after"}));
    assert_eq!(r["delivered"], 1, "only bob is left: {r}");
    assert_eq!(b.recv()["data"], "after");
    // Nothing for alice: her next message is the pong.
    a.barrier("after-unsub");

    b.send(json!({"type": "unsubscribe", "topic": "room:1"}));
    assert_eq!(b.recv()["type"], "unsubscribed");
    srv.wait_stats("topic gone", |s| s["topics"].as_u64() == Some(0));
    let r = srv.push_wait(json!({"topic": "room:1", "data": "none"}));
    assert_eq!(r["delivered"], 0);
    b.barrier("b-done");
}

#[test]
fn topic_members_across_shards() {
    let srv = TestServer::start(&["--shards", "4", "--public-topics", "news"]);
    let mut cs: Vec<Client> = (0..8)
        .map(|i| srv.connect(&format!("reader-{i}")))
        .collect();
    for c in cs.iter_mut() {
        c.send(json!({"type": "subscribe", "topic": "news", "ref": 1}));
        assert_eq!(c.recv()["type"], "subscribed");
    }
    let r = srv.push_wait(json!({"topic": "news", "data": "extra"}));
    assert_eq!(r["delivered"], 8, "{r}");
    for c in cs.iter_mut() {
        let p = c.recv();
        assert_eq!(p["topic"], "news");
        assert_eq!(p["data"], "extra");
    }
}

#[test]
fn closing_connection_leaves_topics() {
    let srv = TestServer::start(&["--public-topics", "t"]);
    let mut a = srv.connect("a");
    a.send(json!({"type": "subscribe", "topic": "t"}));
    assert_eq!(a.recv()["type"], "subscribed");
    srv.wait_stats("1 topic", |s| s["topics"].as_u64() == Some(1));
    drop(a);
    srv.wait_stats("0 topics", |s| {
        s["topics"].as_u64() == Some(0) && s["connections"].as_u64() == Some(0)
    });
    let r = srv.push_wait(json!({"topic": "t", "data": 1}));
    assert_eq!(r["delivered"], 0);
}

#[test]
fn forbidden_topic_is_refused_and_connection_stays_open() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect_topics("u", &["room:1"]);
    c.send(json!({"type": "subscribe", "topic": "secret", "ref": "s1"}));
    let e = c.recv();
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "forbidden_topic");
    assert_eq!(e["ref"], "s1");
    assert!(e["message"].is_string(), "{e}");
    // A prefix pattern is not granted by an exact one.
    c.send(json!({"type": "subscribe", "topic": "room:10", "ref": "s2"}));
    let e = c.recv();
    assert_eq!(e["code"], "forbidden_topic");
    assert_eq!(e["ref"], "s2");
    // Still open and the allowed topic works.
    c.send(json!({"type": "subscribe", "topic": "room:1", "ref": "s3"}));
    assert_eq!(
        c.recv(),
        json!({"type": "subscribed", "topic": "room:1", "seq": 0, "epoch": "0000000000000000", "ref": "s3"})
    );
    // A refused subscription does not deliver.
    let r = srv.push_wait(json!({"topic": "secret", "data": 1}));
    assert_eq!(r["delivered"], 0);
    c.barrier("open");
}

#[test]
fn no_topics_claim_means_no_private_topics() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("u");
    c.send(json!({"type": "subscribe", "topic": "anything", "ref": 1}));
    let e = c.recv();
    assert_eq!(e["code"], "forbidden_topic");
    assert_eq!(e["ref"], 1);
}

#[test]
fn public_topics_allowed_to_everyone() {
    let srv = TestServer::start(&["--public-topics", "news,lobby:*"]);
    let mut c = srv.connect("u");
    for (t, r) in [("news", "p1"), ("lobby:1", "p2"), ("lobby:abc", "p3")] {
        c.send(json!({"type": "subscribe", "topic": t, "ref": r}));
        assert_eq!(
            c.recv(),
            json!({"type": "subscribed", "topic": t, "seq": 0, "epoch": "0000000000000000", "ref": r})
        );
    }
    c.send(json!({"type": "subscribe", "topic": "newsroom", "ref": "p4"}));
    let e = c.recv();
    assert_eq!(e["code"], "forbidden_topic", "{e}");
    assert_eq!(e["ref"], "p4");
    srv.push(json!({"topic": "lobby:abc", "data": "x"}));
    let p = c.recv();
    assert_eq!(p["topic"], "lobby:abc");
}

#[test]
fn bad_topic_names() {
    let srv = TestServer::start(&["--public-topics", "*"]);
    let mut c = srv.connect("u");
    let long = "x".repeat(201);
    for (i, t) in ["", "a b", "room:*", long.as_str(), "tab\there", "caf\u{e9}"]
        .iter()
        .enumerate()
    {
        c.send(json!({"type": "subscribe", "topic": t, "ref": i}));
        let e = c.recv();
        assert_eq!(e["type"], "error", "topic {t:?}: {e}");
        assert_eq!(e["code"], "bad_topic", "topic {t:?}: {e}");
        assert_eq!(e["ref"], i, "topic {t:?}: {e}");
        c.barrier(&format!("b{i}"));
    }
    // 200 bytes is fine.
    let ok = "y".repeat(200);
    c.send(json!({"type": "subscribe", "topic": ok, "ref": "ok"}));
    assert_eq!(c.recv()["type"], "subscribed");
}

#[test]
fn too_many_topics() {
    let srv = TestServer::start(&["--max-topics-per-connection", "2", "--public-topics", "t:*"]);
    let mut c = srv.connect("u");
    for t in ["t:1", "t:2"] {
        c.send(json!({"type": "subscribe", "topic": t}));
        assert_eq!(c.recv()["type"], "subscribed");
    }
    c.send(json!({"type": "subscribe", "topic": "t:3", "ref": "third"}));
    let e = c.recv();
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "too_many_topics");
    assert_eq!(e["ref"], "third");
    // Subscribing again to a topic already held is not a new topic.
    c.send(json!({"type": "subscribe", "topic": "t:2", "ref": "again"}));
    let m = c.recv();
    assert_eq!(m["type"], "subscribed", "resubscribe to a held topic: {m}");
    // After leaving one there is room again.
    c.send(json!({"type": "unsubscribe", "topic": "t:1"}));
    assert_eq!(c.recv()["type"], "unsubscribed");
    c.send(json!({"type": "subscribe", "topic": "t:3", "ref": "now"}));
    assert_eq!(
        c.recv(),
        json!({"type": "subscribed", "topic": "t:3", "seq": 0, "epoch": "0000000000000000", "ref": "now"})
    );
}
