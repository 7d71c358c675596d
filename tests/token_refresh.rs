//! docs/protocol.md 2.1/2.2, issue 9 item 5: `token_expiring` ahead of the 4001 close,
//! and `refresh`, which swaps in a new token of the same user with new grants.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A config file with `[jwt] leeway_secs = 0`, so the 4001 comes at `exp` itself.
fn no_leeway(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("throng-refresh-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("throng.toml");
    std::fs::write(
        &p,
        format!("[jwt]\nsecret = \"{SECRET}\"\nleeway_secs = 0\n"),
    )
    .unwrap();
    p
}

/// A server without JWT leeway, plus `extra` flags.
fn server(name: &str, extra: &[&str]) -> TestServer {
    let cfg = no_leeway(name);
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

fn connect(srv: &TestServer, claims: Value) -> Client {
    Client::connect(srv.ws, &token_with(claims)).expect("connect")
}

/// Sends a `refresh` with `token` and returns the answer (the next message).
fn refresh(c: &mut Client, token: &str, reference: &str) -> Value {
    c.send(json!({"type": "refresh", "token": token, "ref": reference}));
    c.recv()
}

fn subscribe(c: &mut Client, topic: &str) -> Value {
    c.send(json!({"type": "subscribe", "topic": topic, "ref": topic}));
    c.recv()
}

fn assert_error(answer: &Value, code: &str, reference: &str) {
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], code, "{answer}");
    assert_eq!(answer["ref"], reference, "{answer}");
    assert!(
        answer["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{answer}"
    );
}

/// Collects every message until the connection closes; returns them and the close.
fn until_close(c: &mut Client) -> (Vec<Value>, Closed) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match c.try_recv(Duration::from_millis(200)) {
            Ok(Some(v)) => seen.push(v),
            Ok(None) => {}
            Err(closed) => return (seen, closed),
        }
    }
    panic!("no close within 10 s; got {seen:?}");
}

#[test]
fn token_expiring_comes_refresh_ahead_before_the_4001_and_only_once() {
    let srv = server("hint", &["--refresh-ahead-ms", "1500"]);
    let exp = now_secs() + 3;
    let connected = Instant::now();
    let mut c = connect(&srv, json!({"sub": "hinted", "exp": exp}));
    let hint = c.recv();
    let hinted = Instant::now();
    assert_eq!(hint["type"], "token_expiring", "{hint}");
    let in_ms = hint["in_ms"].as_u64().expect("in_ms");
    assert!(in_ms > 0 && in_ms <= 1500, "in_ms {in_ms}");
    // The close is 2 to 3 s away at connect (exp is whole seconds): the hint waited for
    // the last 1.5 s instead of coming with the welcome.
    assert!(
        hinted - connected >= Duration::from_millis(400),
        "hint after {:?}",
        hinted - connected
    );
    let (rest, closed) = until_close(&mut c);
    assert_eq!(closed, Closed::Code(Some(4001)), "then {rest:?}");
    assert!(
        rest.is_empty(),
        "one hint per token, then the close: {rest:?}"
    );
}

#[test]
fn short_token_gets_the_hint_right_after_welcome() {
    let srv = server("short", &[]);
    // 5 s left, refresh_ahead defaults to 60 s.
    let mut c = connect(&srv, json!({"sub": "short", "exp": now_secs() + 5}));
    let hint = c.recv();
    assert_eq!(hint["type"], "token_expiring", "{hint}");
    let in_ms = hint["in_ms"].as_u64().expect("in_ms");
    assert!(in_ms > 3000 && in_ms <= 5000, "in_ms {in_ms}");
    c.barrier("after-hint");
}

#[test]
fn refresh_extends_the_session_past_the_old_exp() {
    let srv = server("extend", &["--refresh-ahead-ms", "1500"]);
    let old_exp = now_secs() + 2;
    let mut c = connect(&srv, json!({"sub": "keeper", "exp": old_exp}));
    let hint = c.recv();
    assert_eq!(hint["type"], "token_expiring", "{hint}");
    let new_exp = now_secs() + 600;
    let fresh = token_with(json!({"sub": "keeper", "exp": new_exp}));
    let answer = refresh(&mut c, &fresh, "r1");
    assert_eq!(
        answer,
        json!({"type": "refreshed", "exp": new_exp, "ref": "r1"})
    );
    // Past the old exp (plus a margin for the whole-second rounding): no 4001 and no
    // second hint, since the new token has ten minutes.
    let past_old = Duration::from_millis((old_exp + 1).saturating_sub(now_secs()) * 1000 + 300);
    c.expect_silence(past_old);
    assert!(now_secs() > old_exp);
    srv.push(json!({"user": "keeper", "data": {"still": "here"}}));
    let push = c.recv();
    assert_eq!(push["type"], "push", "{push}");
    assert_eq!(push["data"], json!({"still": "here"}));
}

#[test]
fn refresh_for_another_user_is_wrong_user_and_keeps_the_old_grants() {
    let srv = TestServer::start(&[]);
    let exp = now_secs() + 3600;
    let mut c = connect(&srv, json!({"sub": "alice", "exp": exp, "topics": ["a:*"]}));
    assert_eq!(subscribe(&mut c, "a:1")["type"], "subscribed");
    let bob = token_with(json!({"sub": "bob", "exp": exp + 60, "topics": ["b:*"]}));
    let answer = refresh(&mut c, &bob, "w");
    assert_error(&answer, "wrong_user", "w");
    // Old grants: a:* still allowed, b:* still not; the subscription stays.
    assert_eq!(subscribe(&mut c, "a:2")["type"], "subscribed");
    assert_error(&subscribe(&mut c, "b:1"), "forbidden_topic", "b:1");
    srv.push(json!({"topic": "a:1", "data": 1}));
    let push = c.recv();
    assert_eq!(
        (push["topic"].clone(), push["data"].clone()),
        (json!("a:1"), json!(1))
    );
}

#[test]
fn expired_refresh_token_is_token_expired() {
    let srv = TestServer::start(&[]);
    let mut c = connect(&srv, json!({"sub": "late", "exp": now_secs() + 3600}));
    // Well past the default 30 s leeway.
    let stale = token_with(json!({"sub": "late", "exp": now_secs() - 120}));
    assert_error(&refresh(&mut c, &stale, "e"), "token_expired", "e");
    c.barrier("open");
}

#[test]
fn bad_refresh_tokens_are_invalid_token_in_plain_words() {
    let srv = TestServer::start(&[]);
    let exp = now_secs() + 3600;
    let mut c = connect(&srv, json!({"sub": "carol", "exp": exp}));
    let answer = refresh(&mut c, "garbage", "g");
    assert_error(&answer, "invalid_token", "g");
    assert!(
        answer["message"].as_str().unwrap().contains("not a JWT"),
        "{answer}"
    );
    let forged = sign(
        jsonwebtoken::Algorithm::HS256,
        "another-secret-0123456789abcdef012",
        json!({"sub": "carol", "exp": exp}),
    );
    let answer = refresh(&mut c, &forged, "f");
    assert_error(&answer, "invalid_token", "f");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("bad signature"),
        "{answer}"
    );
    c.send(json!({"type": "refresh", "ref": "m"}));
    assert_error(&c.recv(), "invalid_token", "m");
    // A valid token that ends earlier than the current one would shorten nothing but
    // could replay older grants: refused.
    let earlier = token_with(json!({"sub": "carol", "exp": exp - 600}));
    assert_error(&refresh(&mut c, &earlier, "x"), "invalid_token", "x");
    c.barrier("open");
}

#[test]
fn refused_refreshes_count_toward_the_refused_in_a_row_close() {
    let srv = TestServer::start(&[]);
    let mut c = connect(&srv, json!({"sub": "spam", "exp": now_secs() + 3600}));
    for i in 0..10 {
        assert_error(
            &refresh(&mut c, "garbage", &i.to_string()),
            "invalid_token",
            &i.to_string(),
        );
    }
    c.send(json!({"type": "refresh", "token": "garbage"}));
    assert_eq!(c.expect_close(), Closed::Code(Some(1008)));
}

#[test]
fn narrowed_grants_drop_subscriptions_with_reason_forbidden() {
    let srv = TestServer::start(&["--public-topics", "pub:*"]);
    let exp = now_secs() + 3600;
    let mut c = connect(
        &srv,
        json!({"sub": "dora", "exp": exp, "topics": ["room:*", "news"]}),
    );
    for t in ["room:1", "room:2", "news", "pub:x"] {
        assert_eq!(subscribe(&mut c, t)["type"], "subscribed", "{t}");
    }
    let narrower = token_with(json!({"sub": "dora", "exp": exp + 60, "topics": ["room:1"]}));
    c.send(json!({"type": "refresh", "token": narrower, "ref": "n"}));
    let mut dropped = Vec::new();
    let answer = loop {
        let m = c.recv();
        if m["type"] != "unsubscribed" {
            break m;
        }
        assert_eq!(m["reason"], "forbidden", "{m}");
        dropped.push(m["topic"].as_str().unwrap().to_string());
    };
    dropped.sort();
    assert_eq!(dropped, ["news", "room:2"]);
    assert_eq!(
        answer,
        json!({"type": "refreshed", "exp": exp + 60, "ref": "n"})
    );
    // Dropped topics no longer reach the connection; kept ones (granted, public) do.
    for t in ["room:2", "news"] {
        let r = srv.push_wait(json!({"topic": t, "data": t}));
        assert_eq!(r["delivered"], 0, "{t}: {r}");
    }
    for t in ["room:1", "pub:x"] {
        srv.push(json!({"topic": t, "data": t}));
        let push = c.recv();
        assert_eq!(push["topic"], t, "{push}");
    }
    // A token without `topics` leaves only what is public.
    let bare = token_with(json!({"sub": "dora", "exp": exp + 120}));
    c.send(json!({"type": "refresh", "token": bare, "ref": "b"}));
    assert_eq!(
        c.recv(),
        json!({"type": "unsubscribed", "topic": "room:1", "reason": "forbidden"})
    );
    assert_eq!(c.recv()["type"], "refreshed");
    assert_error(&subscribe(&mut c, "room:1"), "forbidden_topic", "room:1");
    srv.push(json!({"topic": "pub:x", "data": "still"}));
    assert_eq!(c.recv()["data"], "still");
}

#[test]
fn widened_grants_allow_a_previously_forbidden_subscribe() {
    let srv = TestServer::start(&[]);
    let exp = now_secs() + 3600;
    let mut c = connect(&srv, json!({"sub": "eve", "exp": exp, "topics": ["a"]}));
    assert_error(&subscribe(&mut c, "b"), "forbidden_topic", "b");
    let wider = token_with(json!({"sub": "eve", "exp": exp, "topics": ["a", "b"]}));
    assert_eq!(
        refresh(&mut c, &wider, "w"),
        json!({"type": "refreshed", "exp": exp, "ref": "w"})
    );
    assert_eq!(subscribe(&mut c, "b")["type"], "subscribed");
    srv.push(json!({"topic": "b", "data": "now"}));
    let push = c.recv();
    assert_eq!(
        (push["topic"].clone(), push["data"].clone()),
        (json!("b"), json!("now"))
    );
}

#[test]
fn a_refresh_costs_a_token_per_signature_check_it_may_need() {
    // With one key, a refresh takes its message's token and one for its check: a bucket
    // of four tokens answers two refreshes, then refuses for the rate. (Before, a refresh
    // cost one token whatever its checks: with many keys and tokens without a `kid`, a
    // client could keep the shard verifying about 90 signatures a second per key.)
    let srv = server("checks", &["--client-rate", "4"]);
    let mut ws = RawWs::connect(srv.ws, &token("alice"));
    // In one write, so the shard reads them in one turn (no refill between them).
    let frames: Vec<u8> = (0..4)
        .flat_map(|i| {
            let m = json!({"type": "refresh", "token": "not.a.token", "ref": format!("r{i}")});
            encode_frame(
                true,
                0,
                OP_TEXT,
                m.to_string().as_bytes(),
                Some([1, 2, 3, 4]),
            )
        })
        .collect();
    ws.send_bytes(&frames);
    let codes: Vec<Value> = (0..4).map(|_| ws.read_json()["code"].clone()).collect();
    assert_eq!(
        codes,
        [
            json!("invalid_token"),
            json!("invalid_token"),
            json!("rate_limited"),
            json!("rate_limited")
        ]
    );
}
