//! Graceful shutdown: `Server::shutdown()` (what SIGTERM does) closes clients with 1001.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;

#[test]
fn shutdown_closes_clients_with_1001_and_wait_returns() {
    let mut srv = TestServer::start(&["--shards", "2", "--shutdown-grace-ms", "500"]);
    let mut a = srv.connect("a");
    let mut b = srv.connect("b");
    let mut c = srv.connect("b");
    srv.wait_connections(3);
    srv.shutdown();
    for cl in [&mut a, &mut b, &mut c] {
        assert_eq!(cl.expect_close(), Closed::Code(Some(1001)));
    }
    let server = srv.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        server.wait();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("wait() did not return within 5 s of shutdown()");
}

#[test]
fn shutdown_with_no_clients_returns_quickly() {
    let mut srv = TestServer::start(&[]);
    srv.shutdown();
    let server = srv.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        server.wait();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("wait() did not return within 5 s");
}

#[test]
fn dropping_the_server_closes_clients() {
    let mut srv = TestServer::start(&["--shutdown-grace-ms", "300"]);
    let mut a = srv.connect("a");
    srv.wait_connections(1);
    let server = srv.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        drop(server);
        let _ = tx.send(());
    });
    assert_eq!(a.expect_close(), Closed::Code(Some(1001)));
    rx.recv_timeout(Duration::from_secs(5))
        .expect("drop did not return within 5 s");
}

#[test]
fn new_connections_refused_or_unreachable_while_draining() {
    let srv = TestServer::start(&["--shutdown-grace-ms", "1000"]);
    let mut a = srv.connect("a");
    srv.wait_connections(1);
    srv.shutdown();
    assert_eq!(a.expect_close(), Closed::Code(Some(1001)));
    // A new upgrade is either refused with 503 draining or cannot connect at all.
    let auth = format!("Authorization: Bearer {}", token("late"));
    if let Ok(mut s) = std::net::TcpStream::connect_timeout(&srv.ws, Duration::from_secs(1)) {
        use std::io::{Read, Write};
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        if s.write_all(&upgrade_request(srv.ws, "/ws", &[&auth], &[]))
            .is_ok()
        {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let text = String::from_utf8_lossy(&buf);
            assert!(
                buf.is_empty() || text.starts_with("HTTP/1.1 503"),
                "upgrade while draining must not succeed: {text:?}"
            );
            if !buf.is_empty() {
                assert!(text.contains("draining"), "{text:?}");
            }
        }
    }
}
