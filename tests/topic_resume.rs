//! Topic streams (docs/protocol.md 4.1, 4.2): the API numbers topic pushes per topic
//! with one epoch, every shard keeps the topic's recent pushes, and `subscribe` with
//! `since`/`epoch` replays what was missed before live pushes.

mod common;

use common::*;
use serde_json::{json, Value};
use throng::route::shard_of;

/// Next push, asserting its type.
fn next_push(c: &mut Client) -> Value {
    let m = c.recv();
    assert_eq!(m["type"], "push", "expected a push, got {m}");
    m
}

/// Subscribes and returns the `subscribed` answer.
fn subscribe(c: &mut Client, topic: &str) -> Value {
    c.send(json!({"type": "subscribe", "topic": topic}));
    let m = c.recv();
    assert_eq!(m["type"], "subscribed", "{m}");
    m
}

/// Subscribes asking to resume after `since` in `epoch`; returns the answer.
fn resubscribe(c: &mut Client, topic: &str, since: u64, epoch: &str) -> Value {
    c.send(
        json!({"type": "subscribe", "topic": topic, "since": since, "epoch": epoch, "ref": "rs"}),
    );
    c.recv()
}

fn unsubscribe(c: &mut Client, topic: &str) {
    c.send(json!({"type": "unsubscribe", "topic": topic}));
    assert_eq!(c.recv()["type"], "unsubscribed");
}

/// Users that land on `n` different shards of `shards`.
fn users_on_distinct_shards(shards: usize, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for i in 0.. {
        let u = format!("user{i}");
        let s = shard_of(&u, shards);
        if !seen.contains(&s) {
            seen.push(s);
            out.push(u);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

#[test]
fn topic_pushes_are_numbered_once_for_every_shard() {
    let srv = TestServer::start(&["--shards", "3"]);
    let users = users_on_distinct_shards(3, 3);
    let mut cs: Vec<Client> = users
        .iter()
        .map(|u| srv.connect_topics(u, &["news"]))
        .collect();
    for c in cs.iter_mut() {
        let m = subscribe(c, "news");
        assert_eq!(m["seq"], 0, "{m}");
    }
    for i in 1..=3 {
        let r = srv.push_wait(json!({"topic": "news", "data": i}));
        assert_eq!(r["delivered"], 3, "{r}");
    }
    for c in cs.iter_mut() {
        for i in 1..=3u64 {
            let p = next_push(c);
            assert_eq!(p["seq"], i, "{p}");
            assert_eq!(p["data"], i, "{p}");
            assert_eq!(p["topic"], "news");
        }
    }
    // Every shard answers with the same stream position.
    let mut answer_epochs = Vec::new();
    for c in cs.iter_mut() {
        unsubscribe(c, "news");
        let m = subscribe(c, "news");
        assert_eq!(m["seq"], 3, "{m}");
        let e = m["epoch"].as_str().expect("epoch").to_string();
        assert_eq!(e.len(), 16, "{m}");
        assert_ne!(e, "0000000000000000");
        answer_epochs.push(e);
    }
    answer_epochs.dedup();
    assert_eq!(answer_epochs.len(), 1, "one epoch for all shards");
    // Other topics are numbered on their own.
    let mut c = srv.connect_topics("other", &["*"]);
    subscribe(&mut c, "sports");
    srv.push(json!({"topic": "sports", "data": 0}));
    assert_eq!(next_push(&mut c)["seq"], 1);
}

#[test]
fn resubscribe_replays_missed_pushes_then_live_without_duplicates() {
    let srv = TestServer::start(&["--shards", "2"]);
    let mut c = srv.connect_topics("u", &["room:*"]);
    subscribe(&mut c, "room:1");
    srv.push_wait(json!({"topic": "room:1", "data": 1}));
    let p = next_push(&mut c);
    assert_eq!(p["seq"], 1);
    unsubscribe(&mut c, "room:1");
    let m = subscribe(&mut c, "room:1");
    let epoch = m["epoch"].as_str().unwrap().to_string();
    unsubscribe(&mut c, "room:1");
    for i in 2..=4 {
        srv.push_wait(json!({"topic": "room:1", "data": i}));
    }
    c.barrier("away");
    let m = resubscribe(&mut c, "room:1", 1, &epoch);
    assert_eq!(
        m,
        json!({"type": "subscribed", "topic": "room:1", "seq": 4, "epoch": epoch,
               "resumed": true, "ref": "rs"})
    );
    srv.push(json!({"topic": "room:1", "data": 5}));
    for i in 2..=5u64 {
        let p = next_push(&mut c);
        assert_eq!(p["seq"], i, "{p}");
        assert_eq!(p["data"], i, "{p}");
    }
    c.barrier("no-dup");
}

#[test]
fn a_resume_on_a_topic_already_held_replays_nothing() {
    // Review s17d F2: the pushes the connection had live came again after `subscribed`.
    let srv = TestServer::start(&["--shards", "2"]);
    let mut c = srv.connect_topics("u", &["room:*"]);
    let m = subscribe(&mut c, "room:1");
    assert_eq!(m["seq"], 0);
    for i in 1..=3 {
        srv.push_wait(json!({"topic": "room:1", "data": i}));
    }
    let mut epoch = String::new();
    for i in 1..=3u64 {
        let p = next_push(&mut c);
        assert_eq!(p["seq"], i, "{p}");
        if i == 1 {
            epoch = p["epoch"].as_str().unwrap().to_string();
        }
    }
    let m = resubscribe(&mut c, "room:1", 1, &epoch);
    assert_eq!(
        m,
        json!({"type": "subscribed", "topic": "room:1", "seq": 3, "epoch": epoch, "ref": "rs"}),
        "the position, without a resume"
    );
    srv.push(json!({"topic": "room:1", "data": 4}));
    assert_eq!(
        next_push(&mut c)["seq"],
        4,
        "live, and nothing again before it"
    );
    c.barrier("no-dup");
}

#[test]
fn resume_during_live_pushes_has_no_gap_and_no_duplicate() {
    let srv = TestServer::start(&["--shards", "2", "--history-size", "1000"]);
    let mut c = srv.connect_topics("u", &["t"]);
    let first = subscribe(&mut c, "t");
    assert_eq!(first["seq"], 0);
    srv.push_wait(json!({"topic": "t", "data": 1}));
    next_push(&mut c);
    let epoch = next_epoch(&mut c, "t");
    // Pushes keep arriving from another thread while the client resubscribes.
    let api = srv.api;
    let pusher = std::thread::spawn(move || {
        let mut conn = HttpConn::connect(api);
        for i in 2..=200 {
            let body = json!({"topic": "t", "data": i}).to_string();
            let r = conn.request("POST", "/v1/push", Some(API_KEY), Some(&body));
            assert_eq!(r.status, 202, "{}", r.text());
        }
    });
    // Wait until some pushes were numbered while unsubscribed.
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        srv.counter("pushes_accepted") >= 21
    }));
    let m = resubscribe(&mut c, "t", 1, &epoch);
    assert_eq!(m["resumed"], true, "{m}");
    pusher.join().unwrap();
    // Every seq from 2 to 200 exactly once, in order.
    for i in 2..=200u64 {
        let p = next_push(&mut c);
        assert_eq!(p["seq"], i, "{p}");
        assert_eq!(p["data"], i, "{p}");
    }
    c.barrier("end");
}

/// Unsubscribes, resubscribes plainly and returns the topic's epoch, unsubscribed again.
fn next_epoch(c: &mut Client, topic: &str) -> String {
    unsubscribe(c, topic);
    let m = subscribe(c, topic);
    unsubscribe(c, topic);
    m["epoch"].as_str().expect("epoch").to_string()
}

#[test]
fn resume_refused_for_wrong_epoch_evicted_or_beyond_sends_nothing_old() {
    let srv = TestServer::start(&["--history-size", "2"]);
    let mut c = srv.connect_topics("u", &["t"]);
    subscribe(&mut c, "t");
    srv.push_wait(json!({"topic": "t", "data": 1}));
    next_push(&mut c);
    let epoch = next_epoch(&mut c, "t");
    for i in 2..=4 {
        srv.push_wait(json!({"topic": "t", "data": i}));
    }
    for (since, e) in [
        (1, "ffffffffffffffff"), // other epoch
        (1, epoch.as_str()),     // seq 2 evicted (history_size 2)
        (9, epoch.as_str()),     // beyond the current seq
    ] {
        let m = resubscribe(&mut c, "t", since, e);
        assert_eq!(m["type"], "subscribed", "{m}");
        assert_eq!(m["resumed"], false, "since {since} epoch {e}: {m}");
        assert_eq!(m["seq"], 4);
        assert_eq!(m["epoch"], epoch.as_str());
        c.barrier("nothing-old");
        unsubscribe(&mut c, "t");
    }
    // Still held: 3 and 4.
    let m = resubscribe(&mut c, "t", 2, &epoch);
    assert_eq!(m["resumed"], true, "{m}");
    assert_eq!(next_push(&mut c)["seq"], 3);
    assert_eq!(next_push(&mut c)["seq"], 4);
    c.barrier("held");
    assert!(srv.counter("history_evictions") >= 2);
}

#[test]
fn forbidden_topic_with_since_leaks_nothing() {
    let srv = TestServer::start(&[]);
    let mut owner = srv.connect_topics("owner", &["secret"]);
    subscribe(&mut owner, "secret");
    srv.push_wait(json!({"topic": "secret", "data": "x"}));
    next_push(&mut owner);
    let epoch = next_epoch(&mut owner, "secret");
    let mut spy = srv.connect_topics("spy", &["public"]);
    spy.send(
        json!({"type": "subscribe", "topic": "secret", "since": 0, "epoch": epoch, "ref": "s"}),
    );
    let m = spy.recv();
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["code"], "forbidden_topic", "{m}");
    assert!(m.get("seq").is_none() && m.get("epoch").is_none(), "{m}");
    spy.barrier("leak");
}

#[test]
fn sequencer_ttl_restarts_numbering_with_a_new_epoch() {
    let srv = TestServer::start(&["--history-ttl-ms", "300"]);
    let mut c = srv.connect_topics("u", &["t"]);
    subscribe(&mut c, "t");
    srv.push_wait(json!({"topic": "t", "data": 1}));
    srv.push_wait(json!({"topic": "t", "data": 2}));
    assert_eq!(next_push(&mut c)["seq"], 1);
    assert_eq!(next_push(&mut c)["seq"], 2);
    let old = next_epoch(&mut c, "t");
    // After a TTL without pushes the sequencer and the shard forget the stream...
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        srv.api("GET", "/v1/topics/t", None).json()["seq"] == 0
    }));
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        let m = subscribe(&mut c, "t");
        unsubscribe(&mut c, "t");
        m["seq"] == 0
    }));
    // ... and numbering restarts: seq 1 in a new epoch.
    subscribe(&mut c, "t");
    srv.push_wait(json!({"topic": "t", "data": 3}));
    assert_eq!(next_push(&mut c)["seq"], 1);
    let new = next_epoch(&mut c, "t");
    assert_ne!(new, old);
    let m = resubscribe(&mut c, "t", 2, &old);
    assert_eq!(m["resumed"], false, "{m}");
    c.barrier("fresh");
}

#[test]
fn malformed_since_or_epoch_is_bad_json() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect_topics("u", &["t"]);
    for (msg, needle) in [
        (
            json!({"type": "subscribe", "topic": "t", "since": 1}),
            "epoch",
        ),
        (
            json!({"type": "subscribe", "topic": "t", "epoch": "e"}),
            "since",
        ),
        (
            json!({"type": "subscribe", "topic": "t", "since": -1, "epoch": "e"}),
            "since",
        ),
        (
            json!({"type": "subscribe", "topic": "t", "since": 1.5, "epoch": "e"}),
            "since",
        ),
        (
            json!({"type": "subscribe", "topic": "t", "since": 1, "epoch": 5}),
            "epoch",
        ),
        (
            json!({"type": "subscribe", "topic": "t", "since": 1, "epoch": "e".repeat(33)}),
            "epoch",
        ),
    ] {
        c.send(msg.clone());
        let m = c.recv();
        assert_eq!(m["type"], "error", "{msg}: {m}");
        assert_eq!(m["code"], "bad_json", "{msg}: {m}");
        assert!(
            m["message"].as_str().unwrap().contains(needle),
            "{msg}: {m}"
        );
    }
    // Not subscribed by any of them.
    srv.push_wait(json!({"topic": "t", "data": 1}));
    c.barrier("none");
}

#[test]
fn topic_info_counts_subscribers_across_shards_with_seq_and_epoch() {
    let srv = TestServer::start(&["--shards", "3"]);
    let r = srv.api("GET", "/v1/topics/news", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"topic": "news", "subscribers": 0, "seq": 0, "epoch": "0000000000000000"})
    );
    let users = users_on_distinct_shards(3, 3);
    let mut cs: Vec<Client> = users
        .iter()
        .map(|u| srv.connect_topics(u, &["news"]))
        .collect();
    for c in cs.iter_mut() {
        subscribe(c, "news");
    }
    srv.push_wait(json!({"topic": "news", "data": 1}));
    srv.push_wait(json!({"topic": "news", "data": 2}));
    let info = srv.api("GET", "/v1/topics/news", None).json();
    assert_eq!(info["subscribers"], 3, "{info}");
    assert_eq!(info["seq"], 2, "{info}");
    let answer = subscribe(&mut srv.connect_topics("x", &["news"]), "news");
    assert_eq!(info["epoch"], answer["epoch"], "{info} {answer}");
    let bad = srv.api("GET", "/v1/topics/a%20b", None);
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("topic"), "{}", bad.text());
}

#[test]
fn topic_history_is_kept_without_subscribers_within_the_shared_memory_cap() {
    let srv = TestServer::start(&[
        "--shards",
        "2",
        "--history-memory-bytes",
        "2000",
        "--history-size",
        "1000",
    ]);
    // No subscriber anywhere: every shard still keeps the topic's pushes.
    let pad = "x".repeat(200);
    for i in 0..30 {
        srv.push_wait(json!({"topic": "quiet", "data": {"i": i, "pad": pad}}));
    }
    let s = srv.wait_stats("topic history held", |s| {
        s["history_bytes"].as_u64().unwrap_or(0) > 0
    });
    assert!(
        s["history_bytes"].as_u64().unwrap() <= 2 * 2000,
        "capped per shard: {s}"
    );
    assert!(srv.counter("history_evictions") >= 2 * 20, "{s}");
    // A late subscriber on either shard resumes from what is still held.
    let info = srv.api("GET", "/v1/topics/quiet", None).json();
    let epoch = info["epoch"].as_str().unwrap().to_string();
    let mut c = srv.connect_topics("late", &["quiet"]);
    let m = resubscribe(&mut c, "quiet", 27, &epoch);
    assert_eq!(m["resumed"], true, "{m}");
    assert_eq!(next_push(&mut c)["seq"], 28);
    assert_eq!(next_push(&mut c)["seq"], 29);
    assert_eq!(next_push(&mut c)["seq"], 30);
    c.barrier("late");
    unsubscribe(&mut c, "quiet");
    let m = resubscribe(&mut c, "quiet", 0, &epoch);
    assert_eq!(m["resumed"], false, "evicted by the memory cap: {m}");
}

#[test]
fn a_subscriber_from_before_the_first_push_learns_the_epoch_from_it_and_can_resume() {
    let srv = TestServer::start(&["--public-topics", "*"]);
    let mut c = srv.connect("early");
    let s = subscribe(&mut c, "fresh");
    assert_eq!(s["epoch"], "0000000000000000", "no stream yet: {s}");
    srv.push(json!({"topic": "fresh", "data": 1}));
    srv.push(json!({"topic": "fresh", "data": 2}));
    let first = next_push(&mut c);
    let epoch = first["epoch"]
        .as_str()
        .expect("seq 1 names its epoch")
        .to_string();
    assert_eq!(first["seq"], 1);
    let second = next_push(&mut c);
    assert!(
        second.get("epoch").is_none(),
        "only the first push carries it: {second}"
    );
    // With that epoch the subscriber resumes after a gap.
    unsubscribe(&mut c, "fresh");
    srv.push(json!({"topic": "fresh", "data": 3}));
    let r = resubscribe(&mut c, "fresh", 2, &epoch);
    assert_eq!(r["resumed"], true, "{r}");
    assert_eq!(next_push(&mut c)["data"], 3);
}
