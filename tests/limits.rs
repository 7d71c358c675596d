//! Per-connection and per-user bounds: 4008 slow consumer, 4009 too many sessions.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A TCP connection with a small receive buffer, so the server's writes block early.
fn small_buffer_stream(addr: std::net::SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

#[test]
fn slow_consumer_closed_with_4008() {
    let srv = TestServer::start(&["--max-outbound-bytes", "131072"]);
    let mut slow = RawWs::upgrade(small_buffer_stream(srv.ws), srv.ws, &token("slow"));
    // A healthy client of another user on the same server keeps working.
    let mut healthy = srv.connect("healthy");
    srv.wait_connections(2);

    let data = "z".repeat(64 * 1024);
    let body = json!({"user": "slow", "data": data}).to_string();
    let mut api = srv.api_conn();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut sent = 0;
    loop {
        let r = api.request("POST", "/v1/push", Some(API_KEY), Some(&body));
        assert!(
            r.status == 202 || r.status == 503,
            "push {sent}: {} {}",
            r.status,
            r.text()
        );
        sent += 1;
        if sent % 8 == 0 && srv.counter("slow_consumer_closes") >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slow-consumer close after {sent} pushes of 64 KiB; stats {}",
            srv.stats()
        );
    }
    // The reader now sees the pushes that made it, then 4008 (or the socket just ends).
    let closed = slow.read_until_close();
    assert!(
        closed == Closed::Code(Some(4008)) || closed == Closed::Eof,
        "slow consumer: {closed:?}"
    );
    srv.wait_stats("slow consumer gone", |s| {
        s["connections"].as_u64() == Some(1)
    });
    srv.push(json!({"user": "healthy", "data": "fine"}));
    assert_eq!(healthy.recv()["data"], "fine");
}

#[test]
fn too_many_sessions_closes_oldest_with_4009() {
    let srv = TestServer::start(&["--max-sessions-per-user", "2"]);
    let mut first = srv.connect("many");
    let mut second = srv.connect("many");
    srv.wait_connections(2);
    let mut third = srv.connect("many");
    assert_eq!(first.expect_close(), Closed::Code(Some(4009)));
    second.barrier("second");
    third.barrier("third");
    srv.wait_online(2, 1);
    let r = srv.push_wait(json!({"user": "many", "data": 1}));
    assert_eq!(r["delivered"], 2);
    assert_eq!(second.recv()["seq"], 1);
    assert_eq!(third.recv()["seq"], 1);
    // Other users are unaffected by this user's limit.
    let _o1 = srv.connect("other");
    let _o2 = srv.connect("other");
    srv.wait_connections(4);
    // A fourth session of "many" closes the now-oldest, `second`.
    let _fourth = srv.connect("many");
    assert_eq!(second.expect_close(), Closed::Code(Some(4009)));
    third.barrier("third-again");
}
