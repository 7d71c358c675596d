//! The TLS plumbing against an in-process rustls peer: a [`WsConn`] of a wss:// URL driven
//! on its own mio poll until `welcome`, a TLS failure, or a bound.

#[path = "../../tests/common/tls_peer.rs"]
mod tls_peer;

use super::{Done, Tickets, TlsDial, Trust};
use crate::tls;
use crate::util;
use crate::ws_conn::{self, End, Handler, State, WsConn};
use mio::{Events, Interest, Poll, Token};
use rustls::HandshakeKind;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tls_peer::{self_signed, Peer, Pki};

/// Marks `welcome` and keeps the handshake's end.
#[derive(Default)]
struct Probe {
    done: Option<Done>,
    welcomed: bool,
}

impl Handler<WsConn> for Probe {
    fn on_text(&mut self, c: &mut WsConn, text: &[u8]) -> Result<(), End> {
        if text.windows(9).any(|w| w == b"\"welcome\"") {
            c.state = State::Open;
            self.welcomed = true;
        }
        Ok(())
    }
    fn on_binary(&mut self) {}
    fn on_ping(&mut self) {}
    fn on_tls(&mut self, done: &tls::Done) {
        assert!(self.done.is_none(), "a handshake reported twice");
        self.done = Some(*done);
    }
}

/// A connection started (its ClientHello built, so its ticket taken) but not driven.
struct Started {
    ws: WsConn,
    poll: Poll,
}

/// Starts one connection to `url` with `dial`.
fn start(dial: &TlsDial, url: &str) -> Started {
    let url = util::parse_ws_url(url).unwrap();
    let mut stream = ws_conn::connect(url.addr, None).unwrap();
    let poll = Poll::new().unwrap();
    poll.registry()
        .register(
            &mut stream,
            Token(0),
            Interest::READABLE | Interest::WRITABLE,
        )
        .unwrap();
    let tls = dial.connect(&url.host).unwrap();
    let ws = WsConn::upgrading(
        stream,
        Instant::now(),
        &url.path,
        &url.authority,
        "t",
        Some(tls),
        false,
    );
    Started { ws, poll }
}

/// Drives a started connection until `welcome` (Ok, with the handshake) or its end (Err,
/// the cause), at most 10 s.
fn finish(s: Started) -> Result<(Done, WsConn), String> {
    let Started { mut ws, mut poll } = s;
    let mut probe = Probe::default();
    let mut events = Events::with_capacity(8);
    let mut inbound = ws_conn::Inbound::new(64 * 1024, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe.welcomed {
        assert!(Instant::now() < deadline, "no welcome and no end in 10 s");
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        if let Some(end) = ws_conn::drive(&mut ws, &mut inbound, &mut probe) {
            return Err(end.unwrap_or_else(|| "clean end".into()));
        }
    }
    let done = probe.done.expect("welcome before the TLS handshake ended");
    Ok((done, ws))
}

/// Opens one connection and drives it to `welcome` or its end.
fn open(dial: &TlsDial, url: &str) -> Result<(Done, WsConn), String> {
    finish(start(dial, url))
}

/// Resumption on, with room for more tickets than rustls's own store keeps (8).
const RESUME: Option<Tickets> = Some(Tickets {
    names: 1,
    depth: 64,
});

/// A certificate for 127.0.0.1 and localhost, its PEM file, and a peer presenting it.
fn setup(tag: &str) -> (Pki, PathBuf, Peer) {
    let pki = self_signed(&["127.0.0.1", "localhost"]);
    let path = pki.write_cert(&std::env::temp_dir(), tag);
    let peer = Peer::start(&pki);
    (pki, path, peer)
}

#[test]
fn a_second_connection_resumes_only_with_resumption_on() {
    let (_pki, ca, peer) = setup("resume");
    let on = TlsDial::new(&Trust::Ca(ca.clone()), RESUME, None).unwrap();
    let (first, _a) = open(&on, &peer.url()).unwrap();
    assert_eq!(first.kind, HandshakeKind::Full);
    assert!(first.version.is_some() && first.suite.is_some());
    // The first connection is welcomed, so its tickets are in the shared store.
    let (second, _b) = open(&on, &peer.url()).unwrap();
    assert_eq!(second.kind, HandshakeKind::Resumed);

    let off = TlsDial::new(&Trust::Ca(ca.clone()), None, None).unwrap();
    for _ in 0..2 {
        let (d, _c) = open(&off, &peer.url()).unwrap();
        assert_eq!(d.kind, HandshakeKind::Full, "--tls-resume off");
    }
    let _ = std::fs::remove_file(ca);
}

#[test]
fn the_ticket_pool_holds_more_than_rustls_eight() {
    let (_pki, ca, peer) = setup("deep");
    let dial = TlsDial::new(&Trust::Ca(ca.clone()), RESUME, None).unwrap();
    // One after the other: each handshake takes a ticket and leaves two (the peer sends
    // rustls's default of two), so 12 of them leave 13.
    for i in 0..12 {
        let (d, _c) = open(&dial, &peer.url()).unwrap();
        let want = if i == 0 {
            HandshakeKind::Full
        } else {
            HandshakeKind::Resumed
        };
        assert_eq!(d.kind, want, "sequential connection {i}");
    }
    // Twelve at once, every ClientHello built before any answer: each finds a ticket,
    // where rustls's store (8 per name) would leave four of them full.
    let started: Vec<Started> = (0..12).map(|_| start(&dial, &peer.url())).collect();
    for (i, s) in started.into_iter().enumerate() {
        let (d, _c) = finish(s).unwrap();
        assert_eq!(d.kind, HandshakeKind::Resumed, "concurrent connection {i}");
    }
    let _ = std::fs::remove_file(ca);
}

#[test]
fn insecure_accepts_a_certificate_for_another_name_and_ca_does_not() {
    let pki = self_signed(&["other.example"]);
    let ca = pki.write_cert(&std::env::temp_dir(), "other-name");
    let peer = Peer::start(&pki);
    let insecure = TlsDial::new(&Trust::Insecure, RESUME, None).unwrap();
    let (d, _c) = open(&insecure, &peer.url()).unwrap();
    assert_eq!(d.kind, HandshakeKind::Full);
    let strict = TlsDial::new(&Trust::Ca(ca.clone()), RESUME, None).unwrap();
    let e = open(&strict, &peer.url()).err().unwrap();
    assert!(
        e.starts_with("tls: invalid peer certificate") && e.contains("not valid for name"),
        "{e}"
    );
    let _ = std::fs::remove_file(ca);
}

#[test]
fn a_wrong_ca_is_a_tls_error_not_a_panic() {
    let (_pki, _ca, peer) = setup("wrong-peer");
    let other = self_signed(&["127.0.0.1"]);
    let wrong = other.write_cert(&std::env::temp_dir(), "wrong-ca");
    let dial = TlsDial::new(&Trust::Ca(wrong.clone()), RESUME, None).unwrap();
    let e = open(&dial, &peer.url()).err().unwrap();
    assert!(e.starts_with("tls: invalid peer certificate"), "{e}");
    let _ = std::fs::remove_file(wrong);
}

#[test]
fn a_plain_server_on_the_port_is_a_tls_error() {
    // Answers the ClientHello the way a plain HTTP server answers a bad request.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 1024];
        let _ = s.read(&mut b);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    });
    let dial = TlsDial::new(&Trust::Insecure, RESUME, None).unwrap();
    let e = open(&dial, &format!("wss://{addr}/ws")).err().unwrap();
    assert!(e.starts_with("tls: received corrupt message"), "{e}");
    t.join().unwrap();
}

#[test]
fn ca_files_are_checked() {
    let dir = std::env::temp_dir();
    let empty = dir.join(format!("tls-empty-{}.pem", std::process::id()));
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let e = TlsDial::new(&Trust::Ca(empty.clone()), RESUME, None).unwrap_err();
    assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
    let missing = dir.join("tls-no-such-file.pem");
    let e = TlsDial::new(&Trust::Ca(missing), RESUME, None).unwrap_err();
    assert!(e.to_string().starts_with("--ca "), "{e}");
    let _ = std::fs::remove_file(empty);
    assert!(super::config::server_name("127.0.0.1").is_ok());
    assert!(super::config::server_name("::1").is_ok());
    assert!(super::config::server_name("bad host").is_err());
}
