//! docs/protocol.md 2.1 `error` and 2.2 "more than 10 refused client messages in a row: 1008".

mod common;

use common::*;
use serde_json::json;

#[test]
fn bad_json_is_an_error_and_connection_stays_open() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("u");
    for bad in ["not json", "{\"type\":", "[1,2,3]", "42", "\"string\""] {
        c.send_text(bad);
        let e = c.recv();
        assert_eq!(e["type"], "error", "for {bad:?}: {e}");
        assert_eq!(e["code"], "bad_json", "for {bad:?}: {e}");
        assert!(e["message"].is_string(), "{e}");
    }
    c.barrier("open");
}

#[test]
fn unknown_type_is_an_error() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("u");
    c.send(json!({"type": "dance", "ref": "d1"}));
    let e = c.recv();
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "unknown_type");
    assert_eq!(e["ref"], "d1", "error echoes the ref: {e}");
    c.send(json!({"no_type": true}));
    let e = c.recv();
    assert_eq!(e["type"], "error");
    assert!(
        e["code"] == "unknown_type" || e["code"] == "bad_json",
        "object without type: {e}"
    );
    c.barrier("open");
}

#[test]
fn subscribe_without_topic_is_refused() {
    let srv = TestServer::start(&["--public-topics", "*"]);
    let mut c = srv.connect("u");
    c.send(json!({"type": "subscribe", "ref": "no-topic"}));
    let e = c.recv();
    assert_eq!(e["type"], "error", "{e}");
    assert!(
        e["code"] == "bad_topic" || e["code"] == "bad_json",
        "subscribe without topic: {e}"
    );
    c.barrier("open");
}

#[test]
fn ack_is_accepted_silently() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("u");
    srv.push(json!({"user": "u", "data": 1}));
    assert_eq!(c.recv()["seq"], 1);
    c.send(json!({"type": "ack", "seq": 1}));
    c.barrier("after-ack");
}

#[test]
fn ten_refused_messages_are_tolerated_and_a_good_one_resets() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("u");
    for round in 0..2 {
        for i in 0..10 {
            c.send_text("nope");
            let e = c.recv();
            assert_eq!(e["code"], "bad_json", "round {round} message {i}: {e}");
        }
        // A good message breaks the run.
        c.barrier(&format!("round-{round}"));
    }
}

#[test]
fn eleven_refused_messages_in_a_row_close_1008() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("u");
    for i in 0..10 {
        c.send(json!({"type": "bogus", "ref": i}));
        let e = c.recv();
        assert_eq!(e["code"], "unknown_type");
    }
    c.send(json!({"type": "bogus", "ref": 10}));
    assert_eq!(c.expect_close(), Closed::Code(Some(1008)));
}

#[test]
fn refused_subscriptions_count_toward_1008() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("u");
    for i in 0..11 {
        c.send(json!({"type": "subscribe", "topic": format!("private:{i}"), "ref": i}));
    }
    let mut errors = 0;
    let closed = loop {
        match c.try_recv(IO_TIMEOUT) {
            Ok(Some(e)) => {
                assert_eq!(e["code"], "forbidden_topic", "{e}");
                errors += 1;
            }
            Ok(None) => panic!("no close after 11 refused subscriptions"),
            Err(closed) => break closed,
        }
    };
    assert_eq!(closed, Closed::Code(Some(1008)));
    assert!(errors <= 11, "{errors}");
}
