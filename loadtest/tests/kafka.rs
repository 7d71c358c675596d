//! throng-load push --kafka against a server that reads its pushes from a real
//! Kafka-protocol broker (`tansu`, started per test; the test fails saying how to install
//! it when it is missing): every record produced becomes a push delivered exactly once,
//! and none goes through the push API.

mod common;

use std::time::Duration;

use common::tansu::Tansu;
use common::*;

/// Partitions of the push topic: more than one, so that order rests on the record keys.
const PARTITIONS: u64 = 4;

/// A broker with the push topic and its DLQ, and a server reading the topic, its
/// consumer already holding every partition (so no run waits for the group to form).
fn kafka_server() -> (Tansu, TestServer) {
    let t = Tansu::start();
    t.create_topic("throng.push", PARTITIONS as u32);
    t.create_topic("throng.push.dlq", 1);
    let srv = TestServer::start(&["--kafka", &t.addr]);
    let mut last = serde_json::Value::Null;
    let assigned = wait_until(Duration::from_secs(30), || {
        last = srv.stats();
        last["kafka"]["assigned_partitions"].as_u64() == Some(PARTITIONS)
    });
    assert!(assigned, "the consumer never got its partitions: {last}");
    (t, srv)
}

/// `push --kafka` at `t` plus `extra`, to `connections` connections of `srv`.
fn kafka_push_args(t: &Tansu, srv: &TestServer, connections: u64, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&["push", "--kafka", &t.addr, "--kafka-topic", "throng.push"]);
    args.extend(strings(extra));
    args.extend(srv.push_args(connections));
    args
}

/// Waits until the server's Kafka ingress has delivered `n` records, and checks that
/// it sent none to the DLQ and that the server took no other push.
fn assert_all_through_kafka(srv: &TestServer, n: u64, r: &Report) {
    let mut last = serde_json::Value::Null;
    let ok = wait_until(Duration::from_secs(10), || {
        last = srv.stats();
        last["kafka"]["delivered"].as_u64() == Some(n)
    });
    r.check(
        ok,
        &format!("the ingress did not deliver {n} records: {last}"),
    );
    r.check(
        last["kafka"]["dlq"] == 0,
        &format!("records in the DLQ: {last}"),
    );
    r.eq("pushes_sent", n);
    r.eq(
        "pushes_sent",
        last["counters"]["pushes_accepted"].as_u64().unwrap_or(0),
    );
}

#[test]
fn user_pushes_produced_to_kafka_arrive_exactly_once() {
    let (t, srv) = kafka_server();
    // Two worker processes, each with its own producer; 10 users of 2 sessions each.
    let r = run_load(kafka_push_args(
        &t,
        &srv,
        20,
        &[
            "--procs",
            "2",
            "--target",
            "user",
            "--sessions-per-user",
            "2",
            "--count",
            "300",
            "--rate",
            "300",
            "--duration-secs",
            "0",
        ],
    ));
    assert_eq!(r.str("push_via"), "kafka");
    r.eq("connections_opened", 20);
    r.map_eq("connect_errors", &[]);
    assert_complete(&r, 300, 600);
    // One record per push, each acknowledged by the broker.
    r.eq("push_requests", 300);
    r.eq("api_latency_us/count", 300);
    assert_all_through_kafka(&srv, 300, &r);
}

#[test]
fn topic_pushes_produced_to_kafka_keep_their_order() {
    let (t, srv) = kafka_server();
    // Two driver threads: each numbers its own pushes, and a topic's records share a
    // partition, so every subscriber gets each thread's numbers in order.
    let r = run_load(kafka_push_args(
        &t,
        &srv,
        10,
        &[
            "--target",
            "topic",
            "--topics",
            "news,sport,tv",
            "--api-concurrency",
            "2",
            "--count",
            "150",
            "--rate",
            "300",
            "--duration-secs",
            "0",
        ],
    ));
    r.eq("subscriptions_confirmed", 30);
    assert_complete(&r, 150, 1500);
    assert_all_through_kafka(&srv, 150, &r);
}
