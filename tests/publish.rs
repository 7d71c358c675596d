//! docs/protocol.md 6: clients publishing to topics (the `publish` claim and
//! `public_publish`), `published` answers, `from` on the push, numbering shared with the
//! push API's topic pushes, the publish limits, and the client message rate limit.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A client whose token may subscribe to `topics` and publish to `publish`.
fn connect_with(srv: &TestServer, user: &str, topics: &[&str], publish: &[&str]) -> Client {
    let t = token_with(json!({
        "sub": user, "exp": now_secs() + 3600, "topics": topics, "publish": publish
    }));
    Client::connect(srv.ws, &t).unwrap_or_else(|e| panic!("connect {user}: {e}"))
}

fn subscribe(c: &mut Client, topic: &str) {
    c.send(json!({"type": "subscribe", "topic": topic, "ref": "s"}));
    let m = c.recv();
    assert_eq!(m["type"], "subscribed", "{m}");
}

/// The next message that is not a push (the publisher's answer), and the pushes before it.
fn answer(c: &mut Client) -> (Value, Vec<Value>) {
    let mut pushes = Vec::new();
    loop {
        let m = c.recv();
        if m["type"] == "push" {
            pushes.push(m);
        } else {
            return (m, pushes);
        }
    }
}

#[test]
fn subscribers_get_the_publish_with_from_and_the_publisher_its_seq() {
    // Four shards: the three users are spread, so the fan-out crosses shards.
    let srv = TestServer::start(&["--shards", "4"]);
    let mut alice = connect_with(&srv, "alice", &["room:*"], &["room:*"]);
    let mut bob = connect_with(&srv, "bob", &["room:*"], &[]);
    let mut carol = connect_with(&srv, "carol", &["room:*"], &[]);
    for c in [&mut alice, &mut bob, &mut carol] {
        subscribe(c, "room:1");
    }
    srv.wait_stats("members", |s| s["topics"].as_u64() >= Some(1));

    for (i, text) in ["hello", "again"].iter().enumerate() {
        let seq = i as u64 + 1;
        alice.send(json!({"type": "publish", "topic": "room:1",
                          "data": {"text": text}, "ref": format!("p{seq}")}));
        let (published, echo) = answer(&mut alice);
        assert_eq!(
            published,
            json!({"type": "published", "topic": "room:1", "seq": seq, "ref": format!("p{seq}")})
        );
        // The publisher is a subscriber too: its own push came first, on its shard.
        assert_eq!(echo.len(), 1, "{echo:?}");
        for (who, p) in [
            ("alice", echo[0].clone()),
            ("bob", bob.recv()),
            ("carol", carol.recv()),
        ] {
            assert_eq!(p["type"], "push", "{who}: {p}");
            assert_eq!(p["topic"], "room:1", "{who}: {p}");
            assert_eq!(p["seq"], seq, "{who}: {p}");
            assert_eq!(p["from"], "alice", "{who}: {p}");
            assert_eq!(p["data"], json!({"text": text}), "{who}: {p}");
            assert!(p["ts"].is_u64(), "{who}: {p}");
            assert!(p.get("id").is_none(), "{who}: {p}");
        }
    }
    assert_eq!(srv.counter("client_publishes"), 2);
}

#[test]
fn publishes_and_api_pushes_share_the_topic_stream_and_its_history() {
    let srv = TestServer::start(&[]);
    let mut alice = connect_with(&srv, "alice", &[], &["news"]);
    srv.push_wait(json!({"topic": "news", "data": "from the api"}));
    alice.send(json!({"type": "publish", "topic": "news", "data": "from alice"}));
    let (published, _) = answer(&mut alice);
    assert_eq!(published["seq"], 2, "{published}");
    assert!(published.get("ref").is_none(), "no ref sent: {published}");
    let r = srv.push_wait(json!({"topic": "news", "data": "api again"}));
    assert_eq!(r["delivered"], 0, "{r}");

    // A late subscriber resumes from the start and gets all three in order, from the
    // topic's history, the client's publish with its `from`.
    let mut bob = srv.connect_topics("bob", &["news"]);
    let info = srv.api("GET", "/v1/topics/news", None).json();
    assert_eq!(info["seq"], 3, "{info}");
    let epoch = info["epoch"].as_str().expect("epoch").to_string();
    bob.send(json!({"type": "subscribe", "topic": "news", "since": 0, "epoch": epoch}));
    let m = bob.recv();
    assert_eq!(m["resumed"], true, "{m}");
    let got: Vec<(Value, Value, Value)> = (0..3)
        .map(|_| {
            let p = bob.recv();
            (p["seq"].clone(), p["data"].clone(), p["from"].clone())
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (json!(1), json!("from the api"), Value::Null),
            (json!(2), json!("from alice"), json!("alice")),
            (json!(3), json!("api again"), Value::Null),
        ]
    );
}

#[test]
fn publishing_needs_the_claim_or_public_publish() {
    let srv = TestServer::start(&["--public-publish", "lobby,open:*", "--public-topics", "*"]);
    // Subscribing to a topic is not a right to publish to it.
    let mut eve = connect_with(&srv, "eve", &["room:*"], &["other:*"]);
    let mut bob = srv.connect("bob");
    subscribe(&mut bob, "room:1");
    subscribe(&mut bob, "lobby");
    eve.send(json!({"type": "publish", "topic": "room:1", "data": 1, "ref": 9}));
    let e = eve.recv();
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "forbidden_topic", "{e}");
    assert_eq!(e["ref"], 9, "{e}");
    assert!(e["message"].as_str().unwrap().contains("room:1"), "{e}");
    // The public pattern lets anyone publish, claim or not.
    let mut anon = srv.connect("anon");
    anon.send(json!({"type": "publish", "topic": "lobby", "data": "hi", "ref": 1}));
    assert_eq!(answer(&mut anon).0["type"], "published");
    let p = bob.recv();
    assert_eq!(
        (p["topic"].clone(), p["from"].clone()),
        (json!("lobby"), json!("anon"))
    );
    // Nothing of the refused publish reached the subscriber.
    bob.expect_silence(Duration::from_millis(100));
}

#[test]
fn bad_publishes_get_a_named_error_and_the_connection_stays() {
    let srv = TestServer::start(&["--max-client-data-bytes", "64"]);
    let mut a = connect_with(&srv, "a", &["t"], &["*"]);
    let cases = [
        (
            json!({"type": "publish", "topic": "t", "data": "x".repeat(100), "ref": 1}),
            "too_large",
            "max_client_data_bytes",
        ),
        (
            json!({"type": "publish", "topic": "t", "ref": 2}),
            "bad_json",
            "data",
        ),
        (
            json!({"type": "publish", "data": 1, "ref": 3}),
            "bad_topic",
            "topic",
        ),
        (
            json!({"type": "publish", "topic": "a b", "data": 1, "ref": 4}),
            "bad_topic",
            "",
        ),
        (
            json!({"type": "publish", "topic": 7, "data": 1, "ref": 5}),
            "bad_topic",
            "topic",
        ),
    ];
    for (msg, code, needle) in cases {
        a.send(msg.clone());
        let e = a.recv();
        assert_eq!(e["type"], "error", "{msg}: {e}");
        assert_eq!(e["code"], code, "{msg}: {e}");
        assert_eq!(e["ref"], msg["ref"], "{msg}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{msg}: {e}"
        );
    }
    // Exactly at the limit is fine (the data's JSON text is what counts).
    let data = "y".repeat(62);
    a.send(json!({"type": "publish", "topic": "t", "data": data, "ref": 6}));
    assert_eq!(answer(&mut a).0["type"], "published");
    a.barrier("still open");
}

#[test]
fn a_flood_is_rate_limited_then_closed_with_1008_and_others_carry_on() {
    let srv = TestServer::start(&["--client-rate", "5"]);
    let mut flooder = connect_with(&srv, "flooder", &["room"], &["room"]);
    let mut calm = connect_with(&srv, "calm", &["room"], &["room"]);
    subscribe(&mut calm, "room");
    // Subscribing took one of the flooder's five tokens; the first publishes get through.
    for i in 0..40 {
        flooder.send(json!({"type": "publish", "topic": "room", "data": i, "ref": i}));
    }
    let mut limited = 0;
    let closed = loop {
        match flooder.try_recv(Duration::from_secs(5)) {
            // Answers to the accepted ones may come before the close, or be dropped with
            // the closing connection.
            Ok(Some(m)) if m["type"] == "published" => {}
            Ok(Some(m)) if m["code"] == "rate_limited" => {
                assert!(
                    m["message"].as_str().unwrap().contains("client_rate"),
                    "{m}"
                );
                limited += 1;
            }
            Ok(Some(m)) => panic!("unexpected {m}"),
            Ok(None) => panic!("neither closed nor answered"),
            Err(c) => break c,
        }
    };
    assert_eq!(closed, Closed::Code(Some(1008)));
    // Ten refusals in a row are answered; the eleventh closes.
    assert_eq!(limited, 10, "rate_limited errors before the close");
    assert!(srv.counter("rate_limited") >= 11);
    // The calm client got what the bucket let through, in order, and still works.
    calm.send(json!({"type": "publish", "topic": "room", "data": "calm", "ref": "c"}));
    let (ans, pushes) = answer(&mut calm);
    assert_eq!(ans["type"], "published", "{ans}");
    let accepted = pushes.len() as u64 - 1;
    assert!((1..=5).contains(&accepted), "{pushes:?}");
    for (i, p) in pushes.iter().enumerate() {
        let (from, data) = if i as u64 == accepted {
            ("calm", json!("calm"))
        } else {
            ("flooder", json!(i))
        };
        assert_eq!((&p["from"], &p["data"]), (&json!(from), &data), "{p}");
        assert_eq!(p["seq"], i as u64 + 1, "{p}");
    }
}

#[test]
fn the_bucket_refills_and_small_acks_cost_little() {
    let srv = TestServer::start(&["--client-rate", "2"]);
    let mut c = srv.connect("acker");
    // A client acks every push it processes: an ack takes no token, only its text (at
    // least 256 bytes' worth, 15 thousandths of a token), so 40 of them cost 0.6...
    for _ in 0..40 {
        c.send(json!({"type": "ack", "seq": 0}));
    }
    c.send(json!({"type": "ping", "ref": "one"}));
    assert_eq!(c.recv()["type"], "pong");
    // ...and the second message of the two-token bucket is refused.
    c.send(json!({"type": "ping", "ref": "over"}));
    let e = c.recv();
    assert_eq!(
        (e["code"].clone(), e["ref"].clone()),
        (json!("rate_limited"), json!("over"))
    );
    // Small acks are never refused for the rate, in debt too (refusals would end in 1008).
    for _ in 0..20 {
        c.send(json!({"type": "ack", "seq": 0}));
    }
    c.expect_silence(Duration::from_millis(200));
    // Two tokens a second: one is back within half a second. Asked every 200 ms, fewer
    // times than the ten refusals in a row that would close the connection.
    let mut refused = 0;
    loop {
        c.send(json!({"type": "ping", "ref": "again"}));
        let m = c.recv();
        if m["type"] == "pong" {
            break;
        }
        assert_eq!(m["code"], "rate_limited", "{m}");
        refused += 1;
        assert!(refused < 8, "no token back after {refused} tries");
        c.expect_silence(Duration::from_millis(200));
    }
}

#[test]
fn an_ack_after_each_flooded_message_does_not_keep_a_flooder_open() {
    let srv = TestServer::start(&["--client-rate", "100"]);
    let mut c = srv.connect("interleaver");
    // Before, each accepted ack ended the run of refusals: 2,000 pings got 1,900
    // rate_limited answers and the connection stayed.
    for i in 0..300 {
        c.send(json!({"type": "ping", "ref": i}));
        c.send(json!({"type": "ack", "seq": 0}));
    }
    let mut limited = 0;
    let closed = loop {
        match c.try_recv(Duration::from_secs(5)) {
            Ok(Some(m)) if m["type"] == "pong" => {}
            Ok(Some(m)) if m["code"] == "rate_limited" => limited += 1,
            Ok(Some(m)) => panic!("unexpected {m}"),
            Ok(None) => panic!("neither closed nor answered"),
            Err(closed) => break closed,
        }
    };
    assert_eq!(closed, Closed::Code(Some(1008)));
    assert_eq!(limited, 10);
}

#[test]
fn a_large_publish_fits_a_bucket_of_one_and_a_burst_of_them_the_default_bucket() {
    let data = "d".repeat(14_000);
    // A bucket of one token takes a message of any size; its 14 KB of text is then a debt
    // the refill pays back before the next is taken.
    let srv = TestServer::start(&["--client-rate", "1"]);
    let mut c = connect_with(&srv, "one", &["room"], &["room"]);
    c.send(json!({"type": "publish", "topic": "room", "data": data, "ref": 1}));
    assert_eq!(answer(&mut c).0["type"], "published");
    c.send(json!({"type": "publish", "topic": "room", "data": 2, "ref": 2}));
    let e = answer(&mut c).0;
    assert_eq!(
        (&e["code"], &e["ref"]),
        (&json!("rate_limited"), &json!(2)),
        "{e}"
    );
    // At the default 100 a second, 40 such publishes at once all go out (a token and
    // 14 KB / 16 KiB each).
    let srv = TestServer::start(&[]);
    let mut c = connect_with(&srv, "many", &["room"], &["room"]);
    for i in 0..40 {
        c.send(json!({"type": "publish", "topic": "room", "data": data, "ref": i}));
    }
    for i in 0..40 {
        let a = answer(&mut c).0;
        assert_eq!(
            (&a["type"], &a["ref"]),
            (&json!("published"), &json!(i)),
            "{a}"
        );
    }
}

#[test]
fn client_rate_zero_is_unlimited() {
    let srv = TestServer::start(&["--client-rate", "0"]);
    let mut c = srv.connect("fast");
    for i in 0..300 {
        c.send(json!({"type": "ping", "ref": i}));
    }
    for i in 0..300 {
        assert_eq!(c.recv(), json!({"type": "pong", "ref": i}));
    }
}
