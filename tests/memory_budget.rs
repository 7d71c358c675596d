//! The process-wide memory budget (`max_outbound_total_bytes`): queued outbound and partial
//! inbound bytes of every connection count; past the budget the largest holders are closed
//! with 4008, and the `outbound_bytes` / `partial_bytes` gauges are exact.

mod common;

use std::net::{SocketAddr, TcpStream};

use common::*;
use serde_json::{json, Value};
use throng::route::shard_of;

/// A TCP connection with a small receive buffer, so the server's writes block early.
fn small_buffer_stream(addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// A client that does not read until told to, with a small receive buffer.
fn slow_client(srv: &TestServer, user: &str) -> RawWs {
    RawWs::upgrade(small_buffer_stream(srv.ws), srv.ws, &token(user))
}

/// `n` user ids with `prefix` that live on `shard` of `shards`.
fn users_on(shard: usize, shards: usize, prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|u| shard_of(u, shards) == shard)
        .take(n)
        .collect()
}

fn gauge(s: &Value, name: &str) -> u64 {
    s[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in stats {s}"))
}

/// A final text frame head announcing `len` payload bytes (16-bit length form), masked
/// with a zero key so the payload can be sent as is.
fn text_head(len: u16) -> Vec<u8> {
    let mut h = vec![0x81, 0x80 | 126];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

const HEAD_LEN: u64 = 8;

#[test]
fn budget_closes_largest_queues_and_spares_the_rest() {
    const BUDGET: u64 = 2 * 1024 * 1024;
    // The per-connection cap is above the budget, so only the budget can close anyone.
    let srv = TestServer::start(&[
        "--shards",
        "2",
        "--max-outbound-total-bytes",
        "2097152",
        "--max-outbound-bytes",
        "4194304",
    ]);
    // Everyone on the reader's shard, so "largest first" is about one shard's queues.
    let shard = shard_of("reader", 2);
    let big_users = users_on(shard, 2, "big-", 2);
    let small_users = users_on(shard, 2, "small-", 2);
    let mut reader = srv.connect("reader");
    let mut bigs: Vec<RawWs> = big_users.iter().map(|u| slow_client(&srv, u)).collect();
    let mut smalls: Vec<RawWs> = small_users.iter().map(|u| slow_client(&srv, u)).collect();
    srv.wait_connections(5);

    // The smalls first: pushes until the kernel holds all it will and the server queues
    // something for each, so they hold bytes the budget could take.
    let chunk = "x".repeat(128 * 1024);
    let mut small_sent = Vec::new();
    let mut queued = 0;
    for u in &small_users {
        let mut sent = 0;
        loop {
            assert!(sent < 200, "{u}: nothing queued after {sent} pushes");
            let r = srv.push_wait(json!({"user": u, "data": format!("{sent}-{chunk}")}));
            assert_eq!(r["delivered"], 1, "{r}");
            sent += 1;
            let now = gauge(&srv.stats(), "outbound_bytes");
            if now > queued {
                queued = now;
                break;
            }
        }
        small_sent.push(sent);
    }
    let mut api = srv.api_conn();
    let mut push = |user: &str, data: String| {
        let body = json!({"user": user, "data": data}).to_string();
        let r = api.request("POST", "/v1/push", Some(API_KEY), Some(&body));
        assert_eq!(r.status, 202, "push to {user}: {}", r.text());
    };
    // Then the bigs grow, a push each per round, past the smalls and past the budget; the
    // reader on the same shard gets one per round.
    let mut rounds = 0u64;
    let mut peak = 0;
    loop {
        rounds += 1;
        assert!(rounds <= 100, "no budget closes after {rounds} rounds");
        for u in &big_users {
            push(u, format!("{rounds}-{chunk}"));
        }
        push("reader", format!("{rounds}-{chunk}"));
        let m = reader.recv();
        assert_eq!(m["type"], "push", "{m}");
        let data = m["data"].as_str().unwrap_or_default();
        assert!(
            data.starts_with(&format!("{rounds}-")),
            "reader missed a push: round {rounds}, got {}",
            &data[..data.len().min(20)]
        );
        let s = srv.stats();
        peak = peak.max(gauge(&s, "outbound_bytes"));
        if s["counters"]["budget_closes"].as_u64() >= Some(2) {
            break;
        }
    }
    let s = srv.wait_connections(3);
    assert_eq!(s["counters"]["budget_closes"], 2, "{s}");
    assert_eq!(s["counters"]["slow_consumer_closes"], 2, "{s}");
    assert!(peak > 0, "outbound_bytes never rose");
    // Stats are published after each turn's enforcement: what is left over the budget is
    // at most the started frames of the connections being closed.
    assert!(
        peak <= BUDGET + 1024 * 1024,
        "outbound_bytes peaked at {peak}, budget {BUDGET}"
    );
    for big in &mut bigs {
        let closed = big.read_until_close();
        assert!(
            closed == Closed::Code(Some(4008)) || closed == Closed::Eof,
            "big: {closed:?}"
        );
    }
    // The smalls stayed open and lost nothing: every push sent to them arrives in order.
    for (small, sent) in smalls.iter_mut().zip(small_sent) {
        for i in 0..sent {
            let m = small.read_json();
            let data = m["data"].as_str().unwrap_or_default();
            assert!(
                data.starts_with(&format!("{i}-")),
                "small lost a push: expected {i}, got {}",
                &data[..data.len().min(20)]
            );
        }
    }
    reader.barrier("after");
    srv.wait_stats("queues drained", |s| {
        s["outbound_bytes"] == 0 && s["partial_bytes"] == 0
    });
}

#[test]
fn bytes_queued_on_closing_connections_do_not_make_the_budget_close_healthy_ones() {
    // A connection the API disconnects keeps its queue through the close linger: closing
    // others cannot free it, so it stays out of the budget (before, every shard holding
    // anything closed its largest holder on every turn while it lingered).
    let srv = TestServer::start(&[
        "--shards",
        "2",
        "--max-outbound-total-bytes",
        "2097152",
        "--max-outbound-bytes",
        "8388608",
    ]);
    let slow_user = users_on(0, 2, "slow", 1).remove(0);
    let uploaders = users_on(1, 2, "up", 5);
    let slow = slow_client(&srv, &slow_user);
    let mut ups: Vec<RawWs> = uploaders
        .iter()
        .map(|u| RawWs::connect(srv.ws, &token(u)))
        .collect();
    srv.wait_connections(6);
    // 1.9 to 2 MB queued for the slow client (beyond what its socket took): under the
    // budget.
    let chunk = "x".repeat(128 * 1024);
    let mut queued = 0;
    for i in 0.. {
        assert!(i < 200, "nothing queued after {i} pushes");
        let r = srv.push_wait(json!({"user": slow_user, "data": format!("{i}-{chunk}")}));
        assert_eq!(r["delivered"], 1, "{r}");
        queued = gauge(&srv.stats(), "outbound_bytes");
        if queued >= 1_900_000 {
            break;
        }
    }
    assert!(queued < 2_097_152, "{queued}");
    let r = srv.api(
        "POST",
        "/v1/disconnect",
        Some(&json!({"user": slow_user}).to_string()),
    );
    assert_eq!(r.json()["closed"], 1, "{}", r.text());
    srv.wait_stats("closing", |s| s["connections"] == 5);
    // Five uploaders part-way through a message: 250 KB, over the budget only together
    // with the closing queue.
    let msg = format!(r#"{{"type":"ping","ref":"{}"}}"#, "a".repeat(60_000 - 24));
    assert_eq!(msg.len(), 60_000);
    for up in &mut ups {
        let mut bytes = text_head(60_000);
        bytes.extend_from_slice(&msg.as_bytes()[..50_000]);
        up.send_bytes(&bytes);
    }
    let s = srv.wait_stats("the uploaders' partial bytes", |s| {
        // Counted by buffer capacity: at least what was sent.
        s["partial_bytes"].as_u64() >= Some(5 * (HEAD_LEN + 50_000))
    });
    assert!(
        gauge(&s, "outbound_bytes") + gauge(&s, "partial_bytes") > 2_097_152,
        "{s}"
    );
    // They finish their messages and are answered: none was closed.
    for up in &mut ups {
        up.send_bytes(&msg.as_bytes()[50_000..]);
        assert_eq!(up.read_json()["type"], "pong");
    }
    assert_eq!(srv.stats()["counters"]["budget_closes"], 0);
    drop(slow);
}

/// How far past its bytes a kept partial frame's buffer may have grown (the shard's
/// `LEFTOVER_SLACK`).
const SLACK: u64 = 16 * 1024;

#[test]
fn partial_inbound_bytes_count_toward_the_budget() {
    // 128 KiB budget; five clients each start a 60 KB frame and send only part of it.
    let srv = TestServer::start(&["--shards", "2", "--max-outbound-total-bytes", "131072"]);
    let sizes: [u64; 5] = [50_000, 40_000, 30_000, 20_000, 10_000];
    // Everyone on one shard, so "largest first" is about one shard's holders: across two,
    // each shard frees its share of the excess, and one that sees the crossing before the
    // other's close is published closes its own largest too.
    let users = users_on(0, 2, "p", sizes.len());
    let mut clients: Vec<RawWs> = users
        .iter()
        .map(|u| RawWs::connect(srv.ws, &token(u)))
        .collect();
    srv.wait_connections(sizes.len() as u64);
    let mut held = 0;
    // Largest first: the budget is crossed while the fourth is sending, and the largest
    // holder then is the first, whatever pieces the fourth's bytes arrive in.
    for (i, &n) in sizes.iter().enumerate() {
        let mut bytes = text_head(60_000);
        bytes.extend(std::iter::repeat_n(b'a', n as usize));
        clients[i].send_bytes(&bytes);
        if i < 3 {
            held += HEAD_LEN + n;
            // A frame read in pieces (a loaded machine) holds a buffer grown past its
            // bytes, by up to `SLACK`, and counts it: the budget may then be crossed one
            // client early, with the same holder closed.
            srv.wait_stats(&format!("{held} partial bytes"), |s| {
                s["partial_bytes"].as_u64().is_some_and(|p| p >= held)
                    || s["counters"]["budget_closes"] == 1
            });
        }
    }
    assert_eq!(
        clients[0].read_until_close(),
        Closed::Code(Some(4008)),
        "the largest partial holder is closed as over budget"
    );
    let rest: u64 = sizes[1..].iter().map(|n| HEAD_LEN + n).sum();
    let s = srv.wait_stats("the others' partial bytes", |s| {
        s["partial_bytes"]
            .as_u64()
            .is_some_and(|p| (rest..=rest + 4 * SLACK).contains(&p))
            && s["connections"] == 4
    });
    assert_eq!(s["counters"]["budget_closes"], 1, "{s}");
    drop(clients);
    srv.wait_stats("everyone gone", |s| {
        s["connections"] == 0 && s["partial_bytes"] == 0 && s["outbound_bytes"] == 0
    });
}

#[test]
fn memory_gauges_are_exact() {
    let srv = TestServer::start(&["--shards", "2", "--max-outbound-bytes", "16777216"]);
    let s = srv.stats();
    assert_eq!(
        (s["outbound_bytes"].clone(), s["partial_bytes"].clone()),
        (json!(0), json!(0))
    );

    // Partial inbound: an incomplete frame counts its bytes so far, head included.
    let mut raw = RawWs::connect(srv.ws, &token("frag"));
    let ping = br#"{"type":"ping","ref":"p"}"#;
    let mut payload = vec![b' '; 2000 - ping.len()];
    payload.extend_from_slice(ping);
    let mut bytes = text_head(2000);
    bytes.extend_from_slice(&payload[..1000]);
    raw.send_bytes(&bytes);
    srv.wait_stats("1008 partial bytes", |s| s["partial_bytes"] == 1008);
    raw.send_bytes(&payload[1000..]);
    assert_eq!(raw.read_json(), json!({"type": "pong", "ref": "p"}));
    srv.wait_stats("no partial bytes", |s| s["partial_bytes"] == 0);

    // A fragmented message being assembled counts its payload so far.
    let first = r#"{"type":"ping","#;
    raw.send_frame(false, OP_TEXT, first.as_bytes());
    srv.wait_stats("first fragment held", |s| {
        s["partial_bytes"].as_u64() == Some(first.len() as u64)
    });
    raw.send_frame(true, OP_CONT, br#""ref":"f"}"#);
    assert_eq!(raw.read_json(), json!({"type": "pong", "ref": "f"}));
    srv.wait_stats("message done", |s| s["partial_bytes"] == 0);

    // Outbound: a client that does not read holds queued bytes until it reads them all.
    let mut slow = slow_client(&srv, "slow");
    srv.wait_connections(2);
    let chunk = "y".repeat(64 * 1024);
    // Until the kernel's buffers are full and the server itself holds bytes.
    let fill = |srv: &TestServer| {
        let mut sent = 0;
        loop {
            assert!(sent < 200, "nothing queued after {sent} pushes of 64 KiB");
            let push = json!({"user": "slow", "data": format!("{sent}-{chunk}")});
            assert_eq!(srv.push_wait(push)["delivered"], 1);
            sent += 1;
            if srv.stats()["outbound_bytes"].as_u64() > Some(0) {
                return sent;
            }
        }
    };
    let sent = fill(&srv);
    for i in 0..sent {
        let data = slow.read_json()["data"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(data.starts_with(&format!("{i}-")), "push {i} out of order");
    }
    srv.wait_stats("queue drained", |s| s["outbound_bytes"] == 0);

    // A client that goes away with bytes queued and a partial frame leaves nothing counted.
    fill(&srv);
    raw.send_bytes(&text_head(2000));
    srv.wait_stats("both held", |s| {
        s["outbound_bytes"].as_u64() > Some(0) && s["partial_bytes"] == HEAD_LEN
    });
    drop(slow);
    drop(raw);
    srv.wait_stats("all gone, nothing counted", |s| {
        s["connections"] == 0 && s["outbound_bytes"] == 0 && s["partial_bytes"] == 0
    });
}

/// Pushes waiting in shard queues are counted by bytes (`command_bytes`) and released
/// exactly as the shards take them; a push larger than the whole budget still goes
/// through when nothing else waits (slow, never refused forever).
#[test]
fn queued_push_bytes_are_counted_and_released_exactly() {
    let srv = TestServer::start(&["--shards", "3", "--max-outbound-total-bytes", "65536"]);
    let mut a = srv.connect_topics("alice", &["room:*"]);
    a.send(json!({"type": "subscribe", "topic": "room:1", "ref": 1}));
    assert_eq!(a.recv()["type"], "subscribed");
    let big = "x".repeat(100_000);
    let bodies = [
        json!({"user": "alice", "data": big}),
        json!({"users": ["alice", "bob", "carol", "dave", "erin"], "data": "u", "id": "i1"}),
        json!({"topic": "room:1", "data": "t"}),
        json!({"broadcast": true, "data": "b"}),
    ];
    for body in &bodies {
        srv.push(body.clone());
        // Each waits for the one before: the 100 KB push alone is over the budget, so
        // anything sent while it is still queued would (rightly) get 503.
        srv.wait_stats("command bytes back to 0", |s| {
            gauge(s, "command_bytes") == 0
        });
    }
    for want in [json!(big), json!("u"), json!("t"), json!("b")] {
        assert_eq!(a.recv()["data"], want);
    }
    // A batch: every line is accepted or refused as overloaded, never lost silently.
    let line = json!({"broadcast": true, "data": "y".repeat(30_000)}).to_string();
    let batch = vec![line; 20].join("\n");
    let r = srv.api("POST", "/v1/push/batch", Some(&batch));
    assert_eq!(r.status, 200, "{}", r.text());
    let accepted = r.json()["accepted"].as_u64().unwrap();
    let rejected = r.json()["rejected"].as_array().unwrap().clone();
    assert_eq!(accepted + rejected.len() as u64, 20, "{}", r.text());
    for rej in &rejected {
        assert!(
            rej["error"].as_str().unwrap().starts_with("overloaded"),
            "{rej}"
        );
    }
    for _ in 0..accepted {
        assert_eq!(a.recv()["data"].as_str().map(str::len), Some(30_000));
    }
    srv.wait_stats("command bytes back to 0", |s| {
        gauge(s, "command_bytes") == 0
    });
}

#[test]
fn a_slow_clients_backlog_waits_in_throngs_queue_not_the_kernels() {
    // Without TCP_NOTSENT_LOWAT the socket of a client that does not read took up to
    // tcp_wmem's max (4 MiB on this host) of kernel memory, outside the outbound bounds:
    // 720 KB pushed to it left Throng's queue empty. With the default 128 KiB the kernel
    // takes that plus what the client's receive window holds, and the rest waits in
    // Throng's queue, where `max_outbound_bytes` and the budget count it.
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("sloane");
    let data = "x".repeat(60_000);
    for _ in 0..12 {
        srv.push(json!({"user": "sloane", "data": data}));
    }
    srv.wait_stats("most of 720 KB queued in Throng", |s| {
        gauge(s, "outbound_bytes") >= 300_000
    });
    // Nothing lost: the client reads all twelve, and the queue empties.
    for _ in 0..12 {
        assert_eq!(c.recv()["data"].as_str().map(str::len), Some(60_000));
    }
    srv.wait_stats("queue drained", |s| gauge(s, "outbound_bytes") == 0);
}
