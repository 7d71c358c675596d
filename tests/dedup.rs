//! Push deduplication by `id` per stream (docs/protocol.md 4.3): a retried push is
//! accepted, answered `duplicate: true`, never delivered again and never numbered.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// `POST /v1/push`; asserts 202 and returns the body.
fn push(srv: &TestServer, p: Value) -> Value {
    let r = srv.api("POST", "/v1/push", Some(&p.to_string()));
    assert_eq!(r.status, 202, "push {p}: {}", r.text());
    r.json()
}

/// Next message, asserted to be a push.
fn next_push(c: &mut Client) -> Value {
    let m = c.recv();
    assert_eq!(m["type"], "push", "expected a push, got {m}");
    m
}

fn subscribe(c: &mut Client, topic: &str) {
    c.send(json!({"type": "subscribe", "topic": topic}));
    let m = c.recv();
    assert_eq!(m["type"], "subscribed", "{m}");
}

#[test]
fn same_id_twice_to_a_user_is_delivered_once_and_numbered_once() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("u");
    let first = push(&srv, json!({"user": "u", "id": "a", "data": 1}));
    assert_eq!(first, json!({"accepted": true}));
    let m = next_push(&mut c);
    assert_eq!((m["seq"].as_u64(), &m["id"]), (Some(1), &json!("a")));

    let again = push(&srv, json!({"user": "u", "id": "a", "data": 1}));
    assert_eq!(again, json!({"accepted": true, "duplicate": true}));
    let waited = srv.push_wait(json!({"user": "u", "id": "a", "data": 1}));
    assert_eq!(waited, json!({"delivered": 0, "duplicate": true}));

    // The next push is seq 2 and the very next message: the duplicates went nowhere.
    let r = srv.push_wait(json!({"user": "u", "id": "b", "data": 2}));
    assert_eq!(r["delivered"], 1, "{r}");
    assert!(r.get("duplicate").is_none(), "{r}");
    let m = next_push(&mut c);
    assert_eq!((m["seq"].as_u64(), &m["data"]), (Some(2), &json!(2)));
    c.barrier("end");

    assert_eq!(srv.counter("pushes_duplicate"), 2);
    assert_eq!(srv.counter("pushes_accepted"), 4);
    let metrics = srv.api("GET", "/metrics", None).text();
    assert!(
        metrics.contains("throng_pushes_duplicate_total 2"),
        "{metrics}"
    );
}

#[test]
fn pushes_without_id_and_broadcasts_are_never_deduplicated() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("u");
    for _ in 0..2 {
        assert_eq!(
            push(&srv, json!({"user": "u", "data": 0})),
            json!({"accepted": true})
        );
        assert_eq!(
            push(&srv, json!({"broadcast": true, "id": "b", "data": 0})),
            json!({"accepted": true})
        );
    }
    for _ in 0..4 {
        next_push(&mut c);
    }
    c.barrier("end");
    assert_eq!(srv.counter("pushes_duplicate"), 0);
}

#[test]
fn streams_are_independent() {
    let srv = TestServer::start(&[]);
    let mut u = srv.connect("u");
    let mut v = srv.connect("v");
    let mut t = srv.connect_topics("w", &["t"]);
    subscribe(&mut t, "t");
    // One id on a user, another user, and a topic named like the user: all new.
    for p in [
        json!({"user": "u", "id": "x", "data": "u"}),
        json!({"user": "v", "id": "x", "data": "v"}),
        json!({"topic": "u", "id": "x", "data": "tu"}),
        json!({"topic": "t", "id": "x", "data": "t"}),
    ] {
        assert_eq!(push(&srv, p), json!({"accepted": true}));
    }
    assert_eq!(next_push(&mut u)["data"], "u");
    assert_eq!(next_push(&mut v)["data"], "v");
    let m = next_push(&mut t);
    assert_eq!(
        (m["data"].as_str(), m["seq"].as_u64()),
        (Some("t"), Some(1))
    );
    assert_eq!(srv.counter("pushes_duplicate"), 0);
}

#[test]
fn topic_duplicate_takes_no_seq() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect_topics("w", &["t"]);
    subscribe(&mut c, "t");
    push(&srv, json!({"topic": "t", "id": "x", "data": 1}));
    assert_eq!(next_push(&mut c)["seq"], 1);
    let r = push(&srv, json!({"topic": "t", "id": "x", "data": 1}));
    assert_eq!(r, json!({"accepted": true, "duplicate": true}));
    push(&srv, json!({"topic": "t", "id": "y", "data": 2}));
    let m = next_push(&mut c);
    assert_eq!((m["seq"].as_u64(), &m["data"]), (Some(2), &json!(2)));
    let info = srv.api("GET", "/v1/topics/t", None).json();
    assert_eq!(info["seq"], 2, "{info}");
}

#[test]
fn an_id_is_new_again_after_the_window() {
    let srv = TestServer::start(&["--dedup-window-ms", "200"]);
    let mut c = srv.connect("u");
    push(&srv, json!({"user": "u", "id": "x", "data": 1}));
    assert_eq!(next_push(&mut c)["seq"], 1);
    // Retry until the window has passed: each retry is a duplicate or, at last, new.
    let mut dups = 0;
    let new_again = wait_until(Duration::from_secs(10), || {
        let r = push(&srv, json!({"user": "u", "id": "x", "data": 1}));
        if r.get("duplicate").is_some() {
            dups += 1;
            false
        } else {
            true
        }
    });
    assert!(new_again, "the id stayed a duplicate past the window");
    let m = next_push(&mut c);
    assert_eq!((m["seq"].as_u64(), &m["id"]), (Some(2), &json!("x")));
    c.barrier("end");
    assert_eq!(srv.counter("pushes_duplicate"), dups);
}

#[test]
fn batch_counts_duplicates_as_accepted() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("u");
    push(&srv, json!({"user": "u", "id": "a", "data": "a"}));
    let body = [
        json!({"user": "u", "id": "a", "data": "a"}).to_string(),
        json!({"user": "u", "id": "b", "data": "b"}).to_string(),
        json!({"user": "u", "id": "b", "data": "b"}).to_string(),
        "{not json".to_string(),
        json!({"user": "u", "data": "c"}).to_string(),
    ]
    .join("\n");
    let r = srv.api("POST", "/v1/push/batch", Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["accepted"], 4, "{v}");
    assert_eq!(v["duplicates"], 2, "{v}");
    assert_eq!(v["rejected"].as_array().map(Vec::len), Some(1), "{v}");
    let got: Vec<(u64, Value)> = (0..3)
        .map(|_| {
            let m = next_push(&mut c);
            (m["seq"].as_u64().unwrap_or(0), m["data"].clone())
        })
        .collect();
    assert_eq!(got, vec![(1, json!("a")), (2, json!("b")), (3, json!("c"))]);
    c.barrier("end");
}

#[test]
fn users_target_delivers_only_to_users_new_to_the_id() {
    let srv = TestServer::start(&[]);
    let mut a = srv.connect("a");
    let mut b = srv.connect("b");
    let mut d = srv.connect("d");
    push(&srv, json!({"user": "a", "id": "x", "data": 0}));
    assert_eq!(next_push(&mut a)["seq"], 1);

    let r = srv.push_wait(json!({"users": ["a", "b", "d"], "id": "x", "data": 1}));
    assert_eq!(r["delivered"], 2, "only b and d are new: {r}");
    assert!(r.get("duplicate").is_none(), "{r}");
    assert_eq!(next_push(&mut b)["seq"], 1);
    assert_eq!(next_push(&mut d)["seq"], 1);

    let r = push(
        &srv,
        json!({"users": ["d", "b", "a"], "id": "x", "data": 1}),
    );
    assert_eq!(r, json!({"accepted": true, "duplicate": true}));

    // Nothing more reached anyone: each next push is seq 2.
    srv.push_wait(json!({"users": ["a", "b", "d"], "data": 2}));
    for c in [&mut a, &mut b, &mut d] {
        let m = next_push(c);
        assert_eq!((m["seq"].as_u64(), &m["data"]), (Some(2), &json!(2)));
        c.barrier("end");
    }
    assert_eq!(srv.counter("pushes_duplicate"), 1);
}

/// The API's two tables are visible and bounded in time: `dedup_entries` counts
/// (stream, id) pairs, `topic_streams` the topics being numbered; both shrink once their
/// windows pass.
#[test]
fn dedup_and_sequencer_tables_are_gauged_and_expire() {
    let srv = TestServer::start(&["--dedup-window-ms", "200", "--history-ttl-ms", "200"]);
    push(
        &srv,
        json!({"users": ["a", "b", "c"], "id": "i1", "data": 1}),
    );
    push(&srv, json!({"topic": "t1", "id": "i1", "data": 1}));
    push(&srv, json!({"topic": "t2", "data": 1}));
    let s = srv.wait_stats("tables published", |s| s["dedup_entries"] == 4);
    assert_eq!(s["topic_streams"], 2, "{s}");
    // Once the windows pass, a new push finds the old entries expired.
    let expired = wait_until(Duration::from_secs(10), || {
        push(&srv, json!({"topic": "t3", "id": "i9", "data": 1}));
        let s = srv.stats();
        s["dedup_entries"] == 1 && s["topic_streams"] == 1
    });
    assert!(expired, "tables did not shrink: {}", srv.stats());
    // Forgotten at the end of their window, not early (that is counted: at the cap).
    assert_eq!(srv.counter("dedup_forgotten_early"), 0);
    let metrics = srv.api("GET", "/metrics", None).text();
    assert!(
        metrics.contains("\nthrong_dedup_forgotten_early_total 0\n"),
        "{metrics}"
    );
}
