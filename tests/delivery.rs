//! docs/protocol.md 2.1 and 4: direct pushes, numbering, shards, broadcast.

mod common;

use common::*;
use serde_json::json;

#[test]
fn direct_push_reaches_every_session_with_same_seq() {
    let srv = TestServer::start(&[]);
    let mut a = srv.connect("alice");
    let mut b = srv.connect("alice");
    let mut other = srv.connect("bob");
    srv.wait_connections(3);

    let before = now_ms();
    srv.push(json!({"user": "alice", "data": {"n": 1}, "id": "msg-1"}));
    let pa = a.recv();
    let pb = b.recv();
    let after = now_ms();
    assert_eq!(pa["type"], "push");
    assert_eq!(pa["data"], json!({"n": 1}));
    assert_eq!(pa["seq"], json!(1));
    assert_eq!(pa["id"], "msg-1");
    assert!(pa.get("topic").is_none(), "direct push has no topic: {pa}");
    let ts = pa["ts"].as_u64().expect("ts is a u64");
    assert!(
        ts + 1000 >= before && ts <= after + 1000,
        "ts {ts} not within [{before}, {after}]"
    );
    assert_eq!(pa, pb, "both sessions get the same push");

    srv.push(json!({"user": "alice", "data": "two"}));
    let pa = a.recv();
    let pb = b.recv();
    assert_eq!(pa["seq"], json!(2));
    assert_eq!(pb["seq"], json!(2));
    assert_eq!(pa["data"], "two");
    assert!(
        pa.get("id").is_none() || pa["id"].is_null(),
        "no id given: {pa}"
    );

    // Bob got nothing, and his own numbering starts at 1.
    other.barrier("b0");
    srv.push(json!({"user": "bob", "data": null}));
    let p = other.recv();
    assert_eq!(p["seq"], json!(1));
    assert_eq!(p["data"], json!(null));
    a.barrier("a1");
    b.barrier("b1");
}

#[test]
fn pushes_arrive_in_order() {
    let srv = TestServer::start(&[]);
    let mut a = srv.connect("ord");
    let mut conn = srv.api_conn();
    for i in 0..200 {
        let body = json!({"user": "ord", "data": i}).to_string();
        let r = conn.request("POST", "/v1/push", Some(API_KEY), Some(&body));
        assert_eq!(r.status, 202, "{}", r.text());
    }
    for i in 0..200u64 {
        let p = a.recv();
        assert_eq!(p["data"], json!(i));
        assert_eq!(p["seq"], json!(i + 1));
    }
}

#[test]
fn multi_user_push_across_shards() {
    let srv = TestServer::start(&["--shards", "4"]);
    let users: Vec<String> = (0..16).map(|i| format!("user-{i}")).collect();
    let mut clients: Vec<Client> = users.iter().map(|u| srv.connect(u)).collect();
    let stats = srv.wait_online(16, 16);
    let shards = stats["shards"].as_array().expect("shards array");
    assert_eq!(shards.len(), 4, "{stats}");
    let used = shards
        .iter()
        .filter(|s| s["connections"].as_u64().unwrap_or(0) > 0)
        .count();
    assert!(used >= 2, "16 users all on one shard? {stats}");
    let per_shard: u64 = shards
        .iter()
        .map(|s| s["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(per_shard, 16);
    assert_eq!(stats["users_online"], 16);

    let r = srv.push_wait(json!({"users": users, "data": "hello all"}));
    assert_eq!(r["delivered"], 16, "{r}");
    assert_eq!(r["users_online"], 16, "{r}");
    for c in clients.iter_mut() {
        let p = c.recv();
        assert_eq!(p["data"], "hello all");
        assert_eq!(p["seq"], json!(1), "each user numbered separately: {p}");
        assert!(p.get("topic").is_none());
    }
    // A subset, with one offline user.
    let r = srv.push_wait(json!({"users": ["user-3", "user-7", "nobody"], "data": 2}));
    assert_eq!(r["delivered"], 2, "{r}");
    assert_eq!(r["users_online"], 2, "{r}");
    assert_eq!(clients[3].recv()["seq"], json!(2));
    assert_eq!(clients[7].recv()["seq"], json!(2));
    clients[4].barrier("x");
}

#[test]
fn all_sessions_of_a_user_share_a_shard() {
    let srv = TestServer::start(&["--shards", "4"]);
    let _c: Vec<Client> = (0..4).map(|_| srv.connect("same-user")).collect();
    let stats = srv.wait_online(4, 1);
    let on: Vec<u64> = stats["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["connections"].as_u64().unwrap())
        .collect();
    assert!(
        on.contains(&4),
        "all sessions of one user on one shard: {stats}"
    );
    assert_eq!(stats["users_online"], 1);
}

#[test]
fn broadcast_reaches_everyone_without_seq_or_topic() {
    let srv = TestServer::start(&["--shards", "3"]);
    let mut cs: Vec<Client> = ["a", "b", "c", "d", "d"]
        .iter()
        .map(|u| srv.connect(u))
        .collect();
    srv.wait_connections(5);
    srv.push(json!({"broadcast": true, "data": {"msg": "all"}, "id": "b-1"}));
    for c in cs.iter_mut() {
        let p = c.recv();
        assert_eq!(p["type"], "push");
        assert_eq!(p["data"], json!({"msg": "all"}));
        assert_eq!(p["id"], "b-1");
        assert!(p["ts"].is_u64(), "{p}");
        assert!(p.get("seq").is_none(), "broadcast has no seq: {p}");
        assert!(p.get("topic").is_none(), "broadcast has no topic: {p}");
    }
    // Broadcasts do not consume the per-user numbering.
    srv.push(json!({"user": "a", "data": 1}));
    assert_eq!(cs[0].recv()["seq"], json!(1));
}
