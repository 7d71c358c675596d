//! The Kafka ingress (docs/protocol.md 7) against a real Kafka-protocol broker (tansu):
//! records become pushes in order per key, offsets are committed only after delivery (a
//! restart neither loses nor repeats), invalid records go to `<topic>.dlq` without
//! blocking the rest (nor other partitions, however many), full shard queues pause
//! partitions instead of dropping, a partition paused when revoked reads again when it
//! comes back, and a broker outage neither holds up shutdown nor leaves `up` at 0.

mod common;

use std::time::{Duration, Instant};

use common::process::ServerProcess;
use common::redis_server::RedisServer;
use common::tansu::Tansu;
use common::*;
use serde_json::{json, Value};

/// How long a Kafka group may take to assign partitions after a member joins.
const REBALANCE_WAIT: Duration = Duration::from_secs(30);

/// The broker with the push topic (`partitions` of them) and its DLQ.
fn broker(partitions: u32) -> Tansu {
    let t = Tansu::start();
    t.create_topic("throng.push", partitions);
    t.create_topic("throng.push.dlq", 1);
    t
}

fn serve(t: &Tansu, extra: &[&str]) -> TestServer {
    let mut args = vec!["--kafka", t.addr.as_str()];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

/// Waits for `n` pushes on `c`; returns their `data`.
fn pushes(c: &mut Client, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let m = c
                .try_recv(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("closed after {i} pushes: {e:?}"))
                .unwrap_or_else(|| panic!("only {i} of {n} pushes came"));
            assert_eq!(m["type"], "push", "{m}");
            m["data"].clone()
        })
        .collect()
}

/// Waits for the pushes whose `data` are `range`'s numbers, in order, on `c`.
fn assert_pushes(c: &mut Client, range: std::ops::Range<u32>) {
    let want: Vec<Value> = range.clone().map(|i| json!(i)).collect();
    assert_eq!(pushes(c, range.len()), want);
}

fn user_records(user: &str, range: std::ops::Range<u32>) -> Vec<(String, String)> {
    range
        .map(|i| {
            (
                user.to_string(),
                json!({"user": user, "id": format!("{user}-{i}"), "data": i}).to_string(),
            )
        })
        .collect()
}

fn produce_to(t: &Tansu, partition: i32, records: &[(String, String)]) {
    let r: Vec<(&str, String)> = records
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    t.produce_to("throng.push", partition, &r);
}

fn kafka_ready(srv: &TestServer) -> Value {
    srv.api("GET", "/readyz", None).json()["kafka"].clone()
}

fn produce(t: &Tansu, records: &[(String, String)]) {
    let r: Vec<(&str, String)> = records
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    t.produce("throng.push", &r);
}

#[test]
fn records_become_pushes_in_order_per_key_and_are_committed() {
    let t = broker(3);
    let srv = serve(&t, &[]);
    let mut alice = srv.connect("alice");
    let mut bob = srv.connect("bob");
    let mut records = Vec::new();
    for (a, b) in user_records("alice", 0..100)
        .into_iter()
        .zip(user_records("bob", 0..100))
    {
        records.push(a);
        records.push(b);
    }
    produce(&t, &records);
    assert_pushes(&mut alice, 0..100);
    assert_pushes(&mut bob, 0..100);
    let s = srv.wait_stats("delivered and committed", |s| {
        s["kafka"]["delivered"] == 200 && s["kafka"]["commits"].as_u64() >= Some(1)
    });
    assert_eq!(s["kafka"]["up"], 1, "{s}");
    assert_eq!(s["kafka"]["dlq"], 0, "{s}");
    let m = srv.api("GET", "/metrics", None).text();
    assert!(m.contains("throng_kafka_delivered_total 200"), "{m}");
    // Nothing is left read and not taken once all is delivered.
    srv.wait_stats("no records pending", |s| s["kafka"]["pending_bytes"] == 0);
    let m = srv.api("GET", "/metrics", None).text();
    assert!(m.contains("throng_kafka_pending_bytes 0"), "{m}");
}

#[test]
fn invalid_records_go_to_the_dlq_with_the_error_and_the_rest_goes_on() {
    let t = broker(1);
    let srv = serve(&t, &[]);
    let mut alice = srv.connect("alice");
    produce(
        &t,
        &[
            (
                "alice".into(),
                json!({"user": "alice", "data": 1}).to_string(),
            ),
            ("alice".into(), "not json".into()),
            ("alice".into(), json!({"data": 2}).to_string()),
            (
                "alice".into(),
                json!({"user": "alice", "data": 3}).to_string(),
            ),
        ],
    );
    assert_eq!(pushes(&mut alice, 2), vec![json!(1), json!(3)]);
    let dlq = t.read_all("throng.push.dlq", 2);
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].value, "not json");
    assert_eq!(dlq[0].key.as_deref(), Some("alice"), "the original key");
    assert!(
        dlq[0].header("error").contains("must be a JSON object"),
        "{}",
        dlq[0].header("error")
    );
    assert!(
        dlq[1].header("error").contains("exactly one target"),
        "{}",
        dlq[1].header("error")
    );
    assert_eq!(dlq[0].header("partition"), "0");
    srv.wait_stats("dlq counted", |s| {
        s["kafka"]["dlq"] == 2 && s["kafka"]["delivered"] == 2
    });
}

#[test]
fn a_restart_neither_loses_nor_repeats_records() {
    let t = broker(2);
    {
        let srv = serve(&t, &[]);
        let mut alice = srv.connect("alice");
        produce(&t, &user_records("alice", 0..50));
        assert_eq!(pushes(&mut alice, 50).len(), 50);
        srv.wait_stats("delivered", |s| s["kafka"]["delivered"] == 50);
        // Dropped here: a graceful stop commits what was delivered.
    }
    produce(&t, &user_records("alice", 50..80));
    let srv = serve(&t, &[]);
    let mut alice = srv.connect("alice");
    let want: Vec<Value> = (50..80).map(|i| json!(i)).collect();
    assert_eq!(
        pushes(&mut alice, 30),
        want,
        "only what the first server did not deliver"
    );
    alice.expect_silence(Duration::from_millis(500));
}

#[test]
fn a_draining_server_leaves_its_partitions_to_the_next_one_at_once() {
    let t = broker(2);
    let old = serve(&t, &["--drain-ms", "60000"]);
    let mut alice = old.connect("alice");
    produce(&t, &user_records("alice", 0..20));
    assert_eq!(pushes(&mut alice, 20).len(), 20);
    old.wait_stats("delivered", |s| s["kafka"]["delivered"] == 20);
    // A deploy: the old server drains (its sessions go over a minute), the new one
    // joins the group. Records from now on must reach the new server, where the
    // sessions go, not the old one, about to exit.
    old.shutdown();
    old.wait_stats("the old server left the group", |s| {
        s["kafka"]["assigned_partitions"] == 0
    });
    let new = serve(&t, &[]);
    let mut alice_new = new.connect("alice");
    new.wait_stats_within("partitions assigned", REBALANCE_WAIT, |s| {
        s["kafka"]["assigned_partitions"] == 2
    });
    produce(&t, &user_records("alice", 20..30));
    assert_pushes(&mut alice_new, 20..30);
    old.wait_stats("the old server took none of them", |s| {
        s["kafka"]["delivered"] == 20
    });
}

#[test]
fn full_shard_queues_pause_the_partition_and_nothing_is_dropped() {
    let t = broker(1);
    // Shard queues of 2 commands: the API refuses most of each batch, so the partition
    // pauses and retries, in order.
    let srv = serve(&t, &["--shard-queue-capacity", "2", "--shards", "1"]);
    let mut alice = srv.connect("alice");
    produce(&t, &user_records("alice", 0..2000));
    // Records wait while the shard refuses them (each refusal pauses the partition for
    // 50 ms): the gauge shows them.
    srv.wait_stats("records read and not taken", |s| {
        s["kafka"]["pending_bytes"].as_u64() > Some(0)
    });
    assert_pushes(&mut alice, 0..2000);
    let s = srv.wait_stats("delivered", |s| s["kafka"]["delivered"] == 2000);
    assert!(
        s["kafka"]["refused"].as_u64() >= Some(1),
        "no backpressure happened: {s}"
    );
    srv.wait_stats("nothing waiting", |s| s["kafka"]["pending_bytes"] == 0);
}

#[test]
fn without_kafka_the_api_works_readyz_says_so_and_the_consumer_connects_later() {
    let port = common::redis_server::free_port();
    let addr = format!("127.0.0.1:{port}");
    let srv = TestServer::start(&["--kafka", &addr]);
    let mut alice = srv.connect("alice");
    srv.push(json!({"user": "alice", "data": "through the API"}));
    assert_eq!(pushes(&mut alice, 1), vec![json!("through the API")]);
    let ready = srv.api("GET", "/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["kafka"], "down");
    // The broker comes: the consumer finds it by itself.
    let t = Tansu::start_on(port);
    t.create_topic("throng.push", 1);
    t.create_topic("throng.push.dlq", 1);
    produce(&t, &user_records("alice", 0..3));
    assert_eq!(pushes(&mut alice, 3), vec![json!(0), json!(1), json!(2)]);
    assert_eq!(srv.api("GET", "/readyz", None).json()["kafka"], "up");
}

#[test]
fn bad_kafka_settings_are_refused_by_name() {
    assert_config_refused(&[
        (&["--kafka", ""], "kafka"),
        (&["--kafka", "localhost"], "not host:port"),
        (&["--kafka", "a:1,b:x"], "\"b:x\""),
        (
            &["--kafka", "a:1", "--kafka-topic", "a topic"],
            "kafka_topic",
        ),
        (&["--kafka", "a:1", "--kafka-group", ""], "kafka_group"),
        (
            &["--kafka", "a:1", "--kafka-max-buffered-bytes", "1000"],
            "kafka_max_buffered_bytes",
        ),
        (
            &["--kafka", "a:1", "--kafka-session-timeout-ms", "999"],
            "kafka_session_timeout_ms (--kafka-session-timeout-ms): must be between 1000",
        ),
        (
            &["--kafka-session-timeout-ms", "10000"],
            "kafka_session_timeout_ms",
        ),
    ]);
}

#[test]
fn two_cluster_nodes_in_one_group_split_the_partitions_and_deliver_through_redis() {
    let t = broker(4);
    let redis = RedisServer::start();
    let url = redis.url();
    let node = |id: &str| {
        let srv = serve(&t, &["--redis", &url, "--node-id", id]);
        assert!(
            wait_until(WAIT, || srv.api("GET", "/readyz", None).status == 200),
            "node {id} not ready"
        );
        srv
    };
    let a = node("a");
    let b = node("b");
    // Each user on one node: whichever node reads a record, Redis takes the push to the
    // user's node.
    let mut alice = a.connect("alice");
    let mut bob = b.connect("bob");
    // The second member's join makes the group rebalance, which takes librdkafka a few
    // heartbeats (3 s each): more than `WAIT` on a loaded machine.
    for srv in [&a, &b] {
        srv.wait_stats_within("partitions assigned", REBALANCE_WAIT, |s| {
            s["kafka"]["assigned_partitions"].as_u64() >= Some(1)
        });
    }
    let mut records = Vec::new();
    for (x, y) in user_records("alice", 0..60)
        .into_iter()
        .zip(user_records("bob", 0..60))
    {
        records.push(x);
        records.push(y);
    }
    // Other keys too, so records land on every partition.
    for i in 0..40 {
        let user = format!("u{i}");
        records.push((user.clone(), json!({"user": user, "data": i}).to_string()));
    }
    produce(&t, &records);
    assert_pushes(&mut alice, 0..60);
    assert_pushes(&mut bob, 0..60);
    let delivered = |s: &TestServer| s.stats()["kafka"]["delivered"].as_u64().unwrap_or(0);
    assert!(
        wait_until(WAIT, || delivered(&a) + delivered(&b) == 160),
        "delivered {} + {}",
        delivered(&a),
        delivered(&b)
    );
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(
        sa["kafka"]["assigned_partitions"].as_u64().unwrap_or(0)
            + sb["kafka"]["assigned_partitions"].as_u64().unwrap_or(0),
        4,
        "the four partitions split between the nodes: {} / {}",
        sa["kafka"],
        sb["kafka"]
    );
}

#[test]
fn records_over_a_mib_reach_the_dlq_cut_to_a_mib_and_the_rest_goes_on() {
    let t = broker(1);
    let srv = serve(&t, &[]);
    let mut alice = srv.connect("alice");
    let push = |i: u32| json!({"user": "alice", "data": i}).to_string();
    produce(
        &t,
        &[
            ("alice".into(), push(1)),
            // The documented "over 1 MiB" case, then an invalid one just under 1 MiB (with
            // its headers, over librdkafka's default record size of 1,000,000 bytes).
            ("alice".into(), "x".repeat(1_100_000)),
            ("alice".into(), "y".repeat(1_000_100)),
            ("alice".into(), push(2)),
        ],
    );
    assert_eq!(pushes(&mut alice, 2), vec![json!(1), json!(2)]);
    let dlq = t.read_all("throng.push.dlq", 2);
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].value.len(), 1 << 20, "the first MiB is kept");
    assert!(dlq[0].value.bytes().all(|b| b == b'x'));
    assert_eq!(dlq[0].header("size"), "1100000", "the original size");
    assert!(
        dlq[0].header("error").contains("1100000 bytes"),
        "{}",
        dlq[0].header("error")
    );
    assert_eq!(dlq[1].value.len(), 1_000_100, "kept whole");
    assert_eq!(dlq[1].header("size"), "", "not cut");
    assert_eq!(dlq[1].header("offset"), "2");
    srv.wait_stats("done", |s| {
        s["kafka"]["dlq"] == 2 && s["kafka"]["delivered"] == 2 && s["kafka"]["pending_bytes"] == 0
    });
}

#[test]
fn a_burst_of_invalid_records_does_not_hold_up_other_partitions() {
    let t = broker(2);
    let srv = serve(&t, &[]);
    let mut alice = srv.connect("alice");
    srv.wait_stats_within("partitions assigned", REBALANCE_WAIT, |s| {
        s["kafka"]["assigned_partitions"] == 2
    });
    let bad: Vec<(String, String)> = (0..1000)
        .map(|i| ("bad".to_string(), format!("not json {i}")))
        .collect();
    produce_to(&t, 0, &bad);
    srv.wait_stats_within("the burst read", REBALANCE_WAIT, |s| {
        s["kafka"]["consumed"].as_u64() >= Some(1000)
    });
    // Each DLQ write used to hold the whole ingress thread for 100 ms or more.
    let start = Instant::now();
    produce_to(&t, 1, &user_records("alice", 0..5));
    assert_pushes(&mut alice, 0..5);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the other partition waited {took:?}"
    );
    srv.wait_stats_within("all in the DLQ", REBALANCE_WAIT, |s| {
        s["kafka"]["dlq"] == 1000 && s["kafka"]["dlq_in_flight"] == 0
    });
    let dlq = t.read_all("throng.push.dlq", 1000);
    let offsets: Vec<String> = dlq.iter().map(|r| r.header("offset").to_string()).collect();
    let want: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    assert_eq!(offsets, want, "in order, each once");
}

#[test]
fn a_missing_dlq_holds_its_partition_and_a_partition_paused_when_revoked_reads_again() {
    // No DLQ topic: an invalid record at the front of each partition waits for it, and its
    // partition is paused in the consumer meanwhile.
    let t = Tansu::start();
    t.create_topic("throng.push", 2);
    let a = serve(&t, &[]);
    let mut alice = a.connect("alice");
    let mut bob = a.connect("bob");
    let bad = |user: &str| (user.to_string(), "not json".to_string());
    let good = |user: &str| {
        let push = json!({"user": user, "data": "after"}).to_string();
        (user.to_string(), push)
    };
    produce_to(&t, 0, &[bad("alice"), good("alice")]);
    produce_to(&t, 1, &[bad("bob"), good("bob")]);
    let s = a.wait_stats_within("both partitions waiting for the DLQ", REBALANCE_WAIT, |s| {
        s["kafka"]["paused_partitions"] == 2 && s["kafka"]["dlq_failures"].as_u64() >= Some(2)
    });
    assert_eq!(s["kafka"]["delivered"], 0, "{s}");
    // A second member joins: every partition is revoked while paused, and one comes back
    // to this node; the second member leaves: both come back.
    {
        let b = serve(&t, &[]);
        b.wait_stats_within("the second member assigned", REBALANCE_WAIT, |s| {
            s["kafka"]["assigned_partitions"] == 1
        });
    }
    a.wait_stats_within("both partitions back", REBALANCE_WAIT, |s| {
        s["kafka"]["assigned_partitions"] == 2
    });
    // The DLQ comes: the records wait no longer, if the partitions are read at all.
    t.create_topic("throng.push.dlq", 1);
    assert_eq!(pushes(&mut alice, 1), vec![json!("after")]);
    assert_eq!(pushes(&mut bob, 1), vec![json!("after")]);
    // The counters move after the pushes reach the sessions (a flake once read
    // `delivered` 1 here), so they are waited for, together.
    a.wait_stats_within("both in the DLQ, both delivered", REBALANCE_WAIT, |s| {
        s["kafka"]["dlq"] == 2
            && s["kafka"]["paused_partitions"] == 0
            && s["kafka"]["delivered"] == 2
    });
    let m = a.api("GET", "/metrics", None).text();
    assert!(m.contains("throng_kafka_dlq_failures_total "), "{m}");
}

#[test]
fn a_stop_with_the_broker_gone_takes_the_grace_not_the_session_timeout() {
    let t = broker(1);
    let mut srv = serve(&t, &["--shutdown-grace-ms", "2000"]);
    let mut alice = srv.connect("alice");
    produce(&t, &user_records("alice", 0..3));
    assert_eq!(pushes(&mut alice, 3).len(), 3);
    srv.wait_stats("delivered", |s| s["kafka"]["delivered"] == 3);
    drop(t);
    drop(alice);
    let server = srv.take();
    let start = Instant::now();
    server.shutdown();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.wait_checked());
    });
    // The commit before the partitions' revoke used to wait for the group coordinator
    // until session.timeout.ms (45 s). Now: the drain (0.1 s), then at most the grace.
    let stopped = rx.recv_timeout(Duration::from_secs(30));
    let took = start.elapsed();
    assert_eq!(stopped, Ok(Ok(())), "not stopped after {took:?}");
    assert!(took < Duration::from_secs(6), "the stop took {took:?}");
}

#[test]
fn kafka_is_up_again_after_a_broker_outage_with_no_record_to_read() {
    let mut t = broker(1);
    let srv = serve(&t, &[]);
    assert!(
        wait_until(REBALANCE_WAIT, || kafka_ready(&srv) == "up"),
        "never up: {}",
        kafka_ready(&srv)
    );
    t.kill();
    assert!(
        wait_until(REBALANCE_WAIT, || kafka_ready(&srv) == "down"),
        "never down: {}",
        kafka_ready(&srv)
    );
    // The broker returns with its storage: the group and its member are still there, so
    // no rebalance and no record say so; librdkafka's statistics do.
    t.restart();
    assert!(
        wait_until(REBALANCE_WAIT, || kafka_ready(&srv) == "up"),
        "still down: {}",
        srv.stats()["kafka"]
    );
    let m = srv.api("GET", "/metrics", None).text();
    assert!(m.contains("throng_kafka_up 1"), "{m}");
}

#[test]
fn a_crashed_server_s_partitions_go_to_the_next_one_within_the_session_timeout() {
    let t = broker(2);
    let mut crashed = ServerProcess::start(&["--kafka", &t.addr]);
    crashed.wait_stats("partitions assigned", REBALANCE_WAIT, |s| {
        s["kafka"]["assigned_partitions"] == 2
    });
    // A crash: no commit, no leaving the group. The group hands the partitions on once
    // the crashed member's session times out: 10 s by default (librdkafka's own 45 s
    // would outlast this wait).
    crashed.kill9();
    let next = serve(&t, &[]);
    let mut alice = next.connect("alice");
    next.wait_stats_within("the crashed server's partitions", REBALANCE_WAIT, |s| {
        s["kafka"]["assigned_partitions"] == 2
    });
    produce(&t, &user_records("alice", 0..10));
    assert_pushes(&mut alice, 0..10);
}

#[test]
fn a_one_mib_buffer_bound_is_passed_by_at_most_one_record_and_delivers_in_order() {
    let t = broker(2);
    // 1 MiB for all partitions and shards that refuse most of each batch; 4.8 MB of
    // records, which pile up against the bound while reading goes on and off. Reading
    // used to go on for a whole loop turn (up to 4,096 records) past the bound.
    let srv = serve(
        &t,
        &[
            "--kafka-max-buffered-bytes",
            "1048576",
            "--shard-queue-capacity",
            "2",
            "--shards",
            "1",
        ],
    );
    let mut alice = srv.connect("alice");
    let pad = "x".repeat(60_000);
    let records: Vec<(String, String)> = (0..80)
        .map(|i| {
            let push = json!({"user": "alice", "data": {"i": i, "pad": pad}});
            ("alice".to_string(), push.to_string())
        })
        .collect();
    let record_bytes = records
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .max()
        .unwrap();
    // The gauge is set at the end of each read, before anything is handed on: sampled
    // all along.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (api, done) = (srv.api, std::sync::Arc::clone(&done));
        std::thread::spawn(move || {
            let mut conn = HttpConn::connect(api);
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let s = conn.request("GET", "/v1/stats", Some(API_KEY), None).json();
                peak = peak.max(s["kafka"]["pending_bytes"].as_u64().unwrap_or(0));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    produce(&t, &records);
    let got: Vec<Value> = pushes(&mut alice, 80)
        .into_iter()
        .map(|d| d["i"].clone())
        .collect();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert_eq!(got, (0..80).map(|i| json!(i)).collect::<Vec<_>>());
    assert!(peak > 0, "no record was ever seen waiting");
    assert!(
        peak <= (1 << 20) + record_bytes as u64,
        "{peak} bytes held against a bound of 1 MiB and records of {record_bytes}"
    );
}

#[test]
fn a_broker_outage_is_logged_once_and_its_end_once() {
    let mut t = broker(1);
    let srv = ServerProcess::start(&["--kafka", &t.addr]);
    srv.wait_stats("partitions assigned", REBALANCE_WAIT, |s| {
        s["kafka"]["assigned_partitions"] == 1
    });
    let before = srv.output().lines().count();
    t.kill();
    let unreachable = "Kafka brokers unreachable";
    assert!(
        wait_until(REBALANCE_WAIT, || srv.logged(unreachable) == 1),
        "the outage was not logged:\n{}",
        srv.output()
    );
    t.restart();
    let back = "Kafka consumer reaches its brokers";
    assert!(
        wait_until(REBALANCE_WAIT, || srv.logged(back) == 2),
        "the outage's end was not logged:\n{}",
        srv.output()
    );
    // librdkafka said the same about every connection attempt, on three channels.
    let out = srv.output();
    let loud: Vec<&str> = out
        .lines()
        .skip(before)
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .collect();
    assert_eq!(loud.len(), 1, "{}", loud.join("\n"));
    assert!(loud[0].contains(unreachable), "{}", loud[0]);
}

#[test]
fn a_missing_dlq_topic_is_named_in_the_write_failures() {
    let t = Tansu::start();
    t.create_topic("throng.push", 1);
    let srv = ServerProcess::start(&["--kafka", &t.addr]);
    srv.wait_stats("partition assigned", REBALANCE_WAIT, |s| {
        s["kafka"]["assigned_partitions"] == 1
    });
    produce(&t, &[("alice".to_string(), "not json".to_string())]);
    // librdkafka used to wait 30 s for the topic to appear, so each write timed out
    // first (10 s) and the log said only `MessageTimedOut`.
    let missing = "throng.push.dlq does not exist; create it";
    assert!(
        wait_until(REBALANCE_WAIT, || srv.logged(missing) >= 1),
        "{}",
        srv.output()
    );
}

#[test]
fn brokers_unreachable_from_the_start_are_logged_and_the_longest_session_timeout_starts() {
    // Nothing listens on the port; the host does not resolve. The outage used to be said
    // only when the consumer went from up to down, so a server that never reached its
    // brokers said nothing. The longest session timeout accepted must start too
    // (librdkafka refuses one longer than its poll interval, 5 minutes by default).
    let refused = format!("127.0.0.1:{}", common::redis_server::free_port());
    for brokers in [refused.as_str(), "no-such-host.invalid:9092"] {
        let srv =
            ServerProcess::start(&["--kafka", brokers, "--kafka-session-timeout-ms", "3600000"]);
        assert!(
            wait_until(REBALANCE_WAIT, || srv.logged("Kafka brokers unreachable")
                == 1),
            "{brokers}: {}",
            srv.output()
        );
        assert_eq!(srv.stats()["kafka"]["up"], 0, "{brokers}");
    }
}
