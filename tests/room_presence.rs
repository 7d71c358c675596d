//! Room presence (docs/protocol.md 4.5, issue 12 item 4): `GET /v1/topics/<t>` counts a
//! topic's subscribers on every shard, and with `?members=1` lists its users, sorted,
//! each once, in pages (`limit`, `after` = the previous page's `next`).

mod common;

use common::*;
use serde_json::{json, Value};

fn subscribe(c: &mut Client, topic: &str) {
    c.send(json!({"type": "subscribe", "topic": topic}));
    assert_eq!(c.recv()["type"], "subscribed");
}

fn topic(srv: &TestServer, query: &str) -> Value {
    let r = srv.api("GET", &format!("/v1/topics/room:1{query}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn members_are_listed_sorted_once_each_in_pages() {
    let srv = TestServer::start(&["--shards", "4", "--public-topics", "room:*"]);
    let names = ["erin", "bob", "alice", "dave", "carol"];
    let mut clients: Vec<Client> = names.iter().map(|u| srv.connect(u)).collect();
    // A second session of alice, and a user in another room only.
    clients.push(srv.connect("alice"));
    let mut other = srv.connect("zed");
    for c in &mut clients {
        subscribe(c, "room:1");
    }
    subscribe(&mut other, "room:2");

    let all = topic(&srv, "?members=1");
    assert_eq!(all["subscribers"], 6, "{all}");
    assert_eq!(
        all["members"],
        json!(["alice", "bob", "carol", "dave", "erin"])
    );
    assert_eq!(all["next"], Value::Null);
    // Without members=1 only the counts.
    let plain = topic(&srv, "");
    assert!(plain.get("members").is_none(), "{plain}");
    assert_eq!(plain["subscribers"], 6);

    let mut pages = Vec::new();
    let mut after = String::new();
    loop {
        let q = if after.is_empty() {
            "?members=1&limit=2".to_string()
        } else {
            format!("?members=1&limit=2&after={after}")
        };
        let p = topic(&srv, &q);
        pages.push(p["members"].clone());
        match p["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    assert_eq!(
        pages,
        vec![
            json!(["alice", "bob"]),
            json!(["carol", "dave"]),
            json!(["erin"])
        ]
    );

    // Leaving shows: bob unsubscribes; one of alice's two sessions goes, which keeps her
    // listed; erin's only session goes, which does not.
    clients[1].send(json!({"type": "unsubscribe", "topic": "room:1"}));
    assert_eq!(clients[1].recv()["type"], "unsubscribed");
    drop(clients.remove(2));
    let after_leave = srv_wait_members(&srv, json!(["alice", "carol", "dave", "erin"]));
    assert_eq!(after_leave["subscribers"], 4, "{after_leave}");
    drop(clients.remove(0));
    let p = srv_wait_subscribers(&srv, 3);
    assert_eq!(p["members"], json!(["alice", "carol", "dave"]));
}

fn srv_wait_members(srv: &TestServer, want: Value) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(WAIT, || {
        last = topic(srv, "?members=1");
        last["members"] == want
    });
    assert!(ok, "members never became {want}: {last}");
    last
}

fn srv_wait_subscribers(srv: &TestServer, n: u64) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(WAIT, || {
        last = topic(srv, "?members=1");
        last["subscribers"] == n
    });
    assert!(ok, "subscribers never became {n}: {last}");
    last
}

#[test]
fn bad_member_queries_are_refused_by_name() {
    let srv = TestServer::start(&[]);
    for (q, needle) in [
        ("?members=1&limit=0", "limit"),
        ("?members=1&limit=1001", "limit"),
        ("?members=1&limit=x", "limit"),
        ("?members=1&after=", "after"),
    ] {
        let r = srv.api("GET", &format!("/v1/topics/room:1{q}"), None);
        r.assert_error(400, "bad_request");
        assert!(r.text().contains(needle), "{q}: {}", r.text());
    }
    let empty = topic(&srv, "?members=1");
    assert_eq!(
        (
            empty["subscribers"].clone(),
            empty["members"].clone(),
            empty["next"].clone()
        ),
        (json!(0), json!([]), Value::Null)
    );
}
