//! The client listener's TLS bounds against what no TLS library sends (review s15d): key
//! updates in bulk or sharing a record, plaintext past 2^14, records without data in
//! bulk, handshakes that never end; and what conforming clients do that the server must
//! follow: key updates before the upgrade request, close_notify both ways, an alert that
//! says why a record was refused. Real servers on loopback; the clients are rustls (by
//! hand where records are made by hand, `common::hand_tls`) and Python's `ssl`.

mod common;

use std::io::Write;

use common::hand_tls::*;
use common::tls::*;
use common::*;
use serde_json::json;

/// RFC 8446 section 6.2 alert descriptions.
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;

const MASK: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

fn tok(user: &str) -> String {
    token(user)
}

fn record_errors(srv: &TestServer) -> u64 {
    metric(srv.api, "throng_tls_record_errors_total")
}

/// A masked JSON ping whose frame is `len` bytes long.
fn ping_frame_of(len: usize, r: &str) -> Vec<u8> {
    let bare = json!({"type": "ping", "ref": r}).to_string();
    // A frame of 126..65535 bytes of payload has an 8-byte header with its mask.
    let pad = len - 8 - bare.len();
    let text = json!({"type": "ping", "ref": format!("{r}{}", "x".repeat(pad))}).to_string();
    let frame = encode_frame(true, 0, OP_TEXT, text.as_bytes(), MASK);
    assert_eq!(frame.len(), len);
    frame
}

// ---- Key updates -----------------------------------------------------------------------

#[test]
fn key_updates_past_32_without_data_between_close_the_connection() {
    let dir = TlsDir::new("ku-flood");
    let srv = dir.server(&[]);
    let cfg = dir.client(Some(Version::Tls13));
    // 32 in a row (each asking for ours), then data: fine, and the count starts again.
    let mut c = RawTls::upgraded(srv.ws, &cfg, &tok("updater"));
    for round in 0..2 {
        for _ in 0..32 {
            c.conn.refresh_traffic_keys().expect("key update");
        }
        let ping = json!({"type": "ping", "ref": round}).to_string();
        c.send(&encode_frame(true, 0, OP_TEXT, ping.as_bytes(), MASK));
        assert_eq!(c.read_json(), json!({"type": "pong", "ref": round}));
    }
    // 33 in a row: the connection is refused with unexpected_message.
    let mut flood = RawTls::upgraded(srv.ws, &cfg, &tok("flooder"));
    for _ in 0..33 {
        flood.conn.refresh_traffic_keys().expect("key update");
    }
    let ping = json!({"type": "ping", "ref": "late"}).to_string();
    flood.send(&encode_frame(true, 0, OP_TEXT, ping.as_bytes(), MASK));
    match flood.expect_end_without_data() {
        TlsEnd::Abrupt(e) if e.contains("UnexpectedMessage") => {}
        other => panic!("expected unexpected_message: {other:?}"),
    }
    wait_metric(srv.api, "throng_tls_record_errors_total", 1, WAIT);
    srv.wait_connections(1);
    // The other connection on the server is untouched.
    let ping = json!({"type": "ping", "ref": "still"}).to_string();
    c.send(&encode_frame(true, 0, OP_TEXT, ping.as_bytes(), MASK));
    assert_eq!(c.read_json(), json!({"type": "pong", "ref": "still"}));
}

#[test]
fn a_key_update_must_end_its_record() {
    let dir = TlsDir::new("ku-record");
    let srv = dir.server(&[]);
    let root = dir.pair.der.clone();
    let ku = key_update_msg(false);
    // Two KeyUpdates in one record, and a KeyUpdate followed by the start of another
    // handshake message: each refused, with unexpected_message.
    let mut two = ku.to_vec();
    two.extend_from_slice(&ku);
    let mut trailing = ku.to_vec();
    trailing.push(1);
    for (i, payload) in [two, trailing].into_iter().enumerate() {
        let mut c = HandTls::upgraded(srv.ws, &root, Version::Tls13, &tok("one-record"));
        let rec = c.record(CT_HANDSHAKE, &payload);
        c.send_raw(&rec);
        assert_eq!(
            c.expect_end(),
            HandEnd::Alert(UNEXPECTED_MESSAGE),
            "case {i}"
        );
        wait_metric(
            srv.api,
            "throng_tls_record_errors_total",
            i as u64 + 1,
            WAIT,
        );
    }
    // A KeyUpdate split across two records (RFC 8446 allows handshake messages to be
    // fragmented) is followed.
    let mut c = HandTls::upgraded(srv.ws, &root, Version::Tls13, &tok("split"));
    let mut bytes = c.record(CT_HANDSHAKE, &ku[..3]);
    bytes.extend(c.record(CT_HANDSHAKE, &ku[3..]));
    c.update_tx();
    c.send_raw(&bytes);
    c.expect_pong(b"after a split key update");
    // But nothing may come between its fragments.
    let mut bytes = c.record(CT_HANDSHAKE, &ku[..2]);
    bytes.extend(c.ping_record(b"between"));
    c.send_raw(&bytes);
    assert_eq!(c.expect_end(), HandEnd::Alert(UNEXPECTED_MESSAGE));
    assert_eq!(record_errors(&srv), 3);
}

#[test]
fn key_updates_before_or_with_the_upgrade_request_are_followed() {
    let dir = TlsDir::new("ku-early");
    let srv = dir.server(&[]);
    let cfg = dir.client(Some(Version::Tls13));
    let ping = |r: &str| {
        let text = json!({"type": "ping", "ref": r}).to_string();
        encode_frame(true, 0, OP_TEXT, text.as_bytes(), MASK)
    };
    let mut kept = Vec::new();
    for (i, (before, with)) in [(1, 0), (3, 0), (0, 1), (2, 2)].into_iter().enumerate() {
        // The handshake is over; the client updates its keys (asking for ours) before
        // its request, or right behind it in the same write.
        let user = format!("early-{i}");
        let mut c = RawTls::connect(srv.ws, &cfg);
        for _ in 0..before {
            c.conn.refresh_traffic_keys().expect("key update");
        }
        let mut bytes = c.seal(&RawTls::request(srv.ws, &tok(&user)));
        for _ in 0..with {
            c.conn.refresh_traffic_keys().expect("key update");
        }
        bytes.extend(c.seal(b""));
        c.send_raw(&bytes);
        let w = c.read_upgrade();
        assert_eq!(w["user"], user.as_str(), "{before} before, {with} with");
        c.send(&ping("after"));
        assert_eq!(c.read_json(), json!({"type": "pong", "ref": "after"}));
        kept.push(c);
    }
    srv.wait_connections(kept.len() as u64);
    // Pushes reach them under the keys the server moved to.
    let r = srv.push_wait(json!({"broadcast": true, "data": "to all"}));
    assert_eq!(r["delivered"], kept.len() as u64, "{r}");
    for c in &mut kept {
        assert_eq!(c.read_json()["data"], "to all");
    }
    assert_eq!(handshakes_outcome(&srv, "tls_failed"), 0);
    assert_eq!(metric(srv.api, "throng_tls_handshakes_failed_total"), 0);
    assert_eq!(record_errors(&srv), 0);
}

fn handshakes_outcome(srv: &TestServer, outcome: &str) -> u64 {
    metric(
        srv.api,
        &format!("throng_handshakes_total{{outcome=\"{outcome}\"}}"),
    )
}

// ---- Record sizes ----------------------------------------------------------------------

#[test]
fn plaintext_past_2_14_is_refused_with_record_overflow() {
    let dir = TlsDir::new("overflow");
    let srv = dir.server(&[]);
    let root = dir.pair.der.clone();
    let mut refused = 0;
    for version in [Version::Tls13, Version::Tls12] {
        // Exactly 2^14 bytes of data in a record: fine (a frame that goes on in the next).
        let mut c = HandTls::upgraded(srv.ws, &root, version, &tok("full"));
        let frame = ping_frame_of(20_000, "full");
        let mut bytes = c.record(CT_DATA, &frame[..16_384]);
        bytes.extend(c.record(CT_DATA, &frame[16_384..]));
        c.send_raw(&bytes);
        let pong = c.read_frame().expect("the pong");
        assert!(
            pong.json()["ref"]
                .as_str()
                .is_some_and(|r| r.len() > 16_000),
            "{version:?}"
        );
        // One byte more: record_overflow.
        let rec = c.record(CT_DATA, &vec![0x89; 16_385]);
        c.send_raw(&rec);
        assert_eq!(
            c.expect_end(),
            HandEnd::Alert(RECORD_OVERFLOW),
            "{version:?}"
        );
        refused += 1;
        wait_metric(srv.api, "throng_tls_record_errors_total", refused, WAIT);
    }
    // TLS 1.3 counts the content type and padding too: 2^14 + 1 bytes in all is the most.
    let mut c = HandTls::upgraded(srv.ws, &root, Version::Tls13, &tok("padded"));
    let ping = encode_frame(true, 0, OP_PING, b"padded", MASK);
    let rec = c.padded(CT_DATA, &ping, 16_385 - ping.len() - 1);
    c.send_raw(&rec);
    assert_eq!(c.read_frame().expect("pong").payload, b"padded");
    let rec = c.padded(CT_DATA, &ping, 16_385 - ping.len());
    c.send_raw(&rec);
    assert_eq!(c.expect_end(), HandEnd::Alert(RECORD_OVERFLOW));
    assert_eq!(record_errors(&srv), 3);
}

// ---- Records without data --------------------------------------------------------------

#[test]
fn records_without_data_are_bounded() {
    let dir = TlsDir::new("idle-records");
    let srv = dir.server(&[]);
    let root = dir.pair.der.clone();
    let mut refused = 0;
    // Each refusal is counted once it is seen.
    let counted = |refused: &mut u64| {
        *refused += 1;
        wait_metric(srv.api, "throng_tls_record_errors_total", *refused, WAIT);
    };
    for version in [Version::Tls13, Version::Tls12] {
        // 32 empty records in a row, then data: fine, twice; 33: refused.
        let mut c = HandTls::upgraded(srv.ws, &root, version, &tok("empty"));
        for round in 0..2 {
            let mut bytes = Vec::new();
            for _ in 0..32 {
                bytes.extend(c.record(CT_DATA, b""));
            }
            c.send_raw(&bytes);
            c.expect_pong(format!("round {round}").as_bytes());
        }
        let mut bytes = Vec::new();
        for _ in 0..33 {
            bytes.extend(c.record(CT_DATA, b""));
        }
        c.send_raw(&bytes);
        let end = c.expect_end();
        assert_eq!(
            end,
            HandEnd::Alert(UNEXPECTED_MESSAGE),
            "{version:?}: 33 empty"
        );
        counted(&mut refused);

        // Warning alerts (user_canceled): four in a connection's life, data or not
        // between them; the fifth is refused.
        let mut c = HandTls::upgraded(srv.ws, &root, version, &tok("canceler"));
        for i in 0..4 {
            let rec = c.record(CT_ALERT, &[1, 90]);
            c.send_raw(&rec);
            c.expect_pong(format!("warning {i}").as_bytes());
        }
        let rec = c.record(CT_ALERT, &[1, 90]);
        c.send_raw(&rec);
        let end = c.expect_end();
        assert_eq!(
            end,
            HandEnd::Alert(UNEXPECTED_MESSAGE),
            "{version:?}: a fifth"
        );
        counted(&mut refused);

        // user_canceled at the fatal level is the client's fatal alert: the end, and no
        // alert of ours after it.
        let mut c = HandTls::upgraded(srv.ws, &root, version, &tok("fatal"));
        let rec = c.record(CT_ALERT, &[2, 90]);
        c.send_raw(&rec);
        match c.expect_end() {
            HandEnd::Abrupt(_) => {}
            other => panic!("{version:?}: {other:?}"),
        }
        counted(&mut refused);
    }
    // TLS 1.3: a zero-length handshake record (RFC 8446 section 5.1 forbids them).
    let mut c = HandTls::upgraded(srv.ws, &root, Version::Tls13, &tok("zero"));
    let rec = c.record(CT_HANDSHAKE, b"");
    c.send_raw(&rec);
    let end = c.expect_end();
    assert_eq!(
        end,
        HandEnd::Alert(UNEXPECTED_MESSAGE),
        "zero-length handshake"
    );
    counted(&mut refused);
    srv.wait_connections(0);
}

// ---- Ending ----------------------------------------------------------------------------

#[test]
fn close_notify_from_the_client_is_answered_with_ours() {
    let dir = TlsDir::new("unwrap");
    let srv = dir.server(&[]);
    let port = srv.ws.port().to_string();
    // Python's ssl: SSL_shutdown sends close_notify and waits for the server's.
    for version in ["1.3", "1.2"] {
        let token = tok(&format!("unwrap-{version}"));
        let mut py = PyClient::connect("unwrap", &port, dir.cert_path(), &token, version, &[]);
        let u = py.expect("unwrapped");
        assert_eq!(u["clean"], true, "TLS {version}: {u}");
        py.finish();
    }
    // By hand: close_notify alone, and after data in the same write.
    let root = dir.pair.der.clone();
    for version in [Version::Tls13, Version::Tls12] {
        let mut c = HandTls::upgraded(srv.ws, &root, version, &tok("notifier"));
        let mut bytes = c.ping_record(b"last words");
        bytes.extend(c.record(CT_ALERT, &[1, 0]));
        c.send_raw(&bytes);
        assert_eq!(c.expect_end(), HandEnd::CloseNotify, "{version:?}");
    }
    srv.wait_connections(0);
    assert_eq!(record_errors(&srv), 0);
}

#[test]
fn a_record_that_fails_to_decrypt_gets_bad_record_mac() {
    let dir = TlsDir::new("bad-mac");
    let srv = dir.server(&[]);
    let root = dir.pair.der.clone();
    for (i, version) in [Version::Tls13, Version::Tls12].into_iter().enumerate() {
        let mut c = HandTls::upgraded(srv.ws, &root, version, &tok("tamperer"));
        c.expect_pong(b"fine");
        let mut rec = c.ping_record(b"tampered");
        let at = rec.len() - 20;
        rec[at] ^= 0x40;
        c.send_raw(&rec);
        assert_eq!(
            c.expect_end(),
            HandEnd::Alert(BAD_RECORD_MAC),
            "{version:?}"
        );
        wait_metric(
            srv.api,
            "throng_tls_record_errors_total",
            i as u64 + 1,
            WAIT,
        );
    }
}

// ---- Handshakes that never end ---------------------------------------------------------

/// A ClientHello record of `len` bytes that says it is 65,000 bytes long.
fn endless_hello(len: usize) -> Vec<u8> {
    let mut r = vec![22, 3, 1];
    r.extend_from_slice(&(len as u16).to_be_bytes());
    r.extend_from_slice(&[1, 0, 0xfd, 0xe8, 3, 3]);
    r.resize(5 + len, b'A');
    r
}

#[test]
fn a_handshake_past_16_kib_is_refused_at_once() {
    let dir = TlsDir::new("endless");
    // A deadline far beyond the test: a close at all comes from the bound.
    let srv = dir.server(&["--handshake-timeout-ms", "60000"]);
    // Records of a ClientHello that never ends, 20 KiB of them; and a record header
    // longer than a handshake record may be.
    let mut endless = Vec::new();
    for _ in 0..5 {
        endless.extend(endless_hello(4096));
    }
    let long_record = vec![22, 3, 3, 0x41, 0x01];
    for (i, bytes) in [endless, long_record].into_iter().enumerate() {
        let mut s = tcp(srv.ws);
        s.write_all(&bytes).unwrap();
        let got = read_to_close(&mut s);
        assert!(
            got.is_empty() || got[0] == 21,
            "case {i}: closed, at most with an alert: {got:?}"
        );
        wait_metric(
            srv.api,
            "throng_tls_handshakes_failed_total",
            i as u64 + 1,
            WAIT,
        );
    }
    srv.wait_stats("no pending handshake", |s| s["pending_handshakes"] == 0);
    // A real client still gets in.
    TlsClient::connect(srv.ws, &dir.client(None), &tok("after")).expect("a client after");
}
