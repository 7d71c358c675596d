//! Running out of file descriptors: the acceptor answers 503 over_capacity (using its
//! spare descriptor) instead of leaving clients hanging, and recovers when one frees.
//!
//! This file is its own test process because it lowers the process-wide RLIMIT_NOFILE.

mod common;

use common::*;
use std::time::Duration;

enum Attempt {
    /// 101: the socket is held open.
    Upgraded(std::net::TcpStream),
    /// Any other answer: the response head and body.
    Refused(String),
    /// This test process had no descriptor for the client socket.
    ClientOutOfFiles,
}

/// One upgrade attempt by hand, reading the whole answer.
fn attempt(addr: std::net::SocketAddr, user: &str) -> Attempt {
    use std::io::{Read, Write};
    let mut s = match std::net::TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return Attempt::ClientOutOfFiles,
        Err(e) => panic!("connect: {e}"),
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let auth = format!("Authorization: Bearer {}", token(user));
    s.write_all(&upgrade_request(addr, "/ws", &[&auth], &[]))
        .expect("write upgrade request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buf.starts_with(b"HTTP/1.1 101") && find(&buf, b"\r\n\r\n").is_some() {
            return Attempt::Upgraded(s);
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "reading the answer: {e} after {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    Attempt::Refused(String::from_utf8_lossy(&buf).into_owned())
}

#[test]
fn out_of_descriptors_answers_503_and_recovers() {
    let srv = TestServer::start(&[]);
    // Let every server thread open what it opens at start before counting.
    let _ = srv.stats();
    let (mut placeholders, open) = squeeze_descriptors(40);

    let mut held = Vec::new();
    let mut refusal = None;
    for i in 0..2000 {
        match attempt(srv.ws, &format!("u{i}")) {
            Attempt::Upgraded(s) => held.push(s),
            Attempt::Refused(r) => {
                refusal = Some(r);
                break;
            }
            Attempt::ClientOutOfFiles => {
                assert!(placeholders.pop().is_some(), "ran out of placeholders");
            }
        }
    }
    let refusal = refusal.expect("the descriptor limit was never reached");
    assert!(
        refusal.starts_with("HTTP/1.1 503") && refusal.contains("over_capacity"),
        "out of descriptors must be answered 503 over_capacity, got: {refusal}"
    );
    assert!(
        refusal.contains("file descriptors"),
        "the refusal should say why: {refusal}"
    );
    assert!(!held.is_empty(), "connections before the limit must work");

    // Clients leave: once the server has closed their ends, a new client gets in.
    held.truncate(held.len().saturating_sub(2));
    let mut again = None;
    let ok = wait_until(Duration::from_secs(5), || match attempt(srv.ws, "late") {
        Attempt::Upgraded(s) => {
            again = Some(s);
            true
        }
        _ => false,
    });
    assert!(ok, "freed descriptors must let a new client in");

    drop(again);
    drop(held);
    drop(placeholders);
    set_soft_nofile(open + 1000);
    let refused = srv.counter("handshakes_refused");
    assert!(refused >= 1, "refusals are counted: {refused}");
}
