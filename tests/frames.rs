//! docs/protocol.md 3: frame rules and close codes, with hand-made frames.

mod common;

use common::*;
use serde_json::json;

fn raw(srv: &TestServer, user: &str) -> RawWs {
    RawWs::connect(srv.ws, &token(user))
}

fn assert_closed_with(ws: &mut RawWs, code: u16) {
    let c = ws.read_until_close();
    assert_eq!(c, Closed::Code(Some(code)), "expected close {code}");
}

#[test]
fn unmasked_frame_closes_1002() {
    let srv = TestServer::start(&[]);
    let mut ws = raw(&srv, "a");
    let f = encode_frame(true, 0, OP_TEXT, br#"{"type":"ping"}"#, None);
    ws.send_bytes(&f);
    assert_closed_with(&mut ws, 1002);
}

#[test]
fn reserved_bits_close_1002() {
    for rsv in [4u8, 2, 1] {
        let srv = TestServer::start(&[]);
        let mut ws = raw(&srv, "a");
        let f = encode_frame(
            true,
            rsv,
            OP_TEXT,
            br#"{"type":"ping"}"#,
            Some([1, 2, 3, 4]),
        );
        ws.send_bytes(&f);
        assert_closed_with(&mut ws, 1002);
    }
}

#[test]
fn reserved_opcode_closes_1002() {
    for op in [0x3u8, 0xB] {
        let srv = TestServer::start(&[]);
        let mut ws = raw(&srv, "a");
        ws.send_frame(true, op, b"x");
        assert_closed_with(&mut ws, 1002);
    }
}

#[test]
fn continuation_without_start_closes_1002() {
    let srv = TestServer::start(&[]);
    let mut ws = raw(&srv, "a");
    ws.send_frame(true, OP_CONT, b"x");
    assert_closed_with(&mut ws, 1002);
}

#[test]
fn binary_message_closes_1003() {
    let srv = TestServer::start(&[]);
    let mut ws = raw(&srv, "a");
    ws.send_frame(true, OP_BINARY, b"\x00\x01\x02");
    assert_closed_with(&mut ws, 1003);
}

#[test]
fn invalid_utf8_closes_1007() {
    let srv = TestServer::start(&[]);
    let mut ws = raw(&srv, "a");
    ws.send_frame(true, OP_TEXT, b"{\"type\":\"ping\",\"ref\":\"\xff\xfe\"}");
    assert_closed_with(&mut ws, 1007);
}

#[test]
fn invalid_utf8_across_fragments_closes_1007() {
    let srv = TestServer::start(&[]);
    let mut ws = raw(&srv, "a");
    // "é" is C3 A9; split it, then end the message with a bad continuation byte.
    ws.send_frame(false, OP_TEXT, b"{\"ref\":\"\xC3");
    ws.send_frame(true, OP_CONT, b"\x28\"}");
    assert_closed_with(&mut ws, 1007);
}

#[test]
fn oversized_message_closes_1009() {
    let srv = TestServer::start(&["--max-message-size", "1024"]);
    let mut ws = raw(&srv, "a");
    // Within the limit is fine.
    let ok = json!({"type": "ping", "ref": "p".repeat(900)});
    ws.send_json(ok);
    assert_eq!(ws.read_json()["type"], "pong");
    let big = json!({"type": "ping", "ref": "x".repeat(2000)});
    ws.send_json(big);
    assert_closed_with(&mut ws, 1009);
}

#[test]
fn oversized_fragmented_message_closes_1009() {
    let srv = TestServer::start(&["--max-message-size", "1024"]);
    let mut ws = raw(&srv, "a");
    let chunk = vec![b'x'; 600];
    ws.send_frame(false, OP_TEXT, &chunk);
    ws.send_frame(false, OP_CONT, &chunk);
    ws.send_frame(true, OP_CONT, &chunk);
    assert_closed_with(&mut ws, 1009);
}

#[test]
fn fragmented_message_is_reassembled() {
    let srv = TestServer::start(&[]);
    let mut ws = raw(&srv, "a");
    ws.send_frame(false, OP_TEXT, br#"{"type":"pi"#);
    ws.send_frame(false, OP_CONT, br#"ng","ref":"#);
    // A control frame may be interleaved between fragments.
    ws.send_frame(true, OP_PING, b"mid");
    ws.send_frame(true, OP_CONT, br#""frag-1"}"#);
    let mut got_pong_frame = false;
    let msg = loop {
        let f = ws.read_frame().expect("answer to fragmented message");
        match f.opcode {
            OP_PONG => {
                assert_eq!(f.payload, b"mid");
                got_pong_frame = true;
            }
            OP_TEXT => break f.json(),
            OP_PING => {}
            _ => panic!("unexpected frame {f:?}"),
        }
    };
    assert_eq!(msg, json!({"type": "pong", "ref": "frag-1"}));
    assert!(got_pong_frame, "interleaved ping must be answered");
}

#[test]
fn ping_answered_with_same_payload() {
    let srv = TestServer::start(&[]);
    let mut ws = raw(&srv, "a");
    ws.send_frame(true, OP_PING, b"hello-ping");
    let f = loop {
        let f = ws.read_frame().expect("pong");
        if f.opcode != OP_PING {
            break f;
        }
    };
    assert_eq!(f.opcode, OP_PONG, "expected a Pong, got {f:?}");
    assert!(f.fin);
    assert_eq!(f.payload, b"hello-ping");
}

#[test]
fn unsolicited_pong_is_ignored() {
    let srv = TestServer::start(&[]);
    let mut ws = raw(&srv, "a");
    ws.send_frame(true, OP_PONG, b"whatever");
    ws.send_json(json!({"type": "ping", "ref": 7}));
    assert_eq!(ws.read_json(), json!({"type": "pong", "ref": 7}));
}

#[test]
fn close_handshake_is_echoed() {
    let srv = TestServer::start(&[]);
    let mut ws = raw(&srv, "a");
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    ws.send_frame(true, OP_CLOSE, &payload);
    let f = loop {
        let f = ws.read_frame().expect("close reply");
        if f.opcode == OP_CLOSE {
            break f;
        }
    };
    assert_eq!(f.close_code(), Some(1000), "close reply {f:?}");
    ws.expect_eof();
    srv.wait_connections(0);
}

#[test]
fn tungstenite_close_handshake() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("a");
    c.ws.close(None).unwrap();
    // The server answers the close; tungstenite then reports ConnectionClosed.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        match c.ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake failed: {e}"),
        }
        assert!(std::time::Instant::now() < deadline);
    }
    srv.wait_connections(0);
}

#[test]
fn json_ping_answered_by_pong_with_ref() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("a");
    c.send(json!({"type": "ping", "ref": "abc"}));
    assert_eq!(c.recv(), json!({"type": "pong", "ref": "abc"}));
    c.send(json!({"type": "ping", "ref": 42}));
    assert_eq!(c.recv(), json!({"type": "pong", "ref": 42}));
    c.send(json!({"type": "ping"}));
    let m = c.recv();
    assert_eq!(m["type"], "pong");
    assert!(
        m.get("ref").is_none() || m["ref"].is_null(),
        "no ref given, none echoed: {m}"
    );
}

#[test]
fn many_frames_in_one_write() {
    let srv = TestServer::start(&[]);
    let mut ws = raw(&srv, "a");
    let mut bytes = Vec::new();
    for i in 0..20 {
        bytes.extend(encode_frame(
            true,
            0,
            OP_TEXT,
            json!({"type": "ping", "ref": i}).to_string().as_bytes(),
            Some([9, 8, 7, i as u8]),
        ));
    }
    ws.send_bytes(&bytes);
    for i in 0..20 {
        assert_eq!(ws.read_json(), json!({"type": "pong", "ref": i}));
    }
}

#[test]
fn frame_split_byte_by_byte() {
    let srv = TestServer::start(&[]);
    let mut ws = raw(&srv, "a");
    let f = encode_frame(
        true,
        0,
        OP_TEXT,
        br#"{"type":"ping","ref":"slow"}"#,
        Some([5, 6, 7, 8]),
    );
    for b in f {
        ws.send_bytes(&[b]);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(ws.read_json(), json!({"type": "pong", "ref": "slow"}));
}

#[test]
fn long_length_forms_within_limit() {
    let srv = TestServer::start(&["--max-message-size", "200000"]);
    let mut ws = raw(&srv, "a");
    // 16-bit length form.
    let r16 = "m".repeat(1000);
    ws.send_json(json!({"type": "ping", "ref": r16}));
    assert_eq!(ws.read_json()["ref"], r16);
    // 64-bit length form.
    let r64 = "n".repeat(100_000);
    ws.send_json(json!({"type": "ping", "ref": r64}));
    assert_eq!(ws.read_json()["ref"], r64);
}

#[test]
fn oversized_control_frame_closes_1002() {
    let srv = TestServer::start(&[]);
    let mut ws = raw(&srv, "a");
    ws.send_frame(true, OP_PING, &[b'p'; 126]);
    assert_closed_with(&mut ws, 1002);
}

#[test]
fn fragmented_control_frame_closes_1002() {
    let srv = TestServer::start(&[]);
    let mut ws = raw(&srv, "a");
    ws.send_frame(false, OP_PING, b"half");
    assert_closed_with(&mut ws, 1002);
}

#[test]
fn new_message_inside_a_fragmented_one_closes_1002() {
    let srv = TestServer::start(&[]);
    let mut ws = raw(&srv, "a");
    ws.send_frame(false, OP_TEXT, br#"{"type":"#);
    ws.send_frame(true, OP_TEXT, br#"{"type":"ping"}"#);
    assert_closed_with(&mut ws, 1002);
}

#[test]
fn pings_faster_than_the_client_reads_hold_one_pong_for_the_latest() {
    // A client that pings and does not read: each Ping used to queue its own Pong, 2
    // bytes against the outbound bounds and about 40 held (review s20b: RSS grew 21 times
    // what the bounds counted, and the connection stayed open). Now a Pong still waiting
    // unsent takes the latest Ping's payload instead (RFC 6455 5.5.3).
    let srv = TestServer::start(&["--shards", "1"]);
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&srv.ws.into()).expect("connect");
    let stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut ws = RawWs::upgrade(stream, srv.ws, &token("pinger"));
    let pings = 100_000u32;
    let mut burst = Vec::new();
    for i in 0..pings {
        burst.extend(encode_frame(
            true,
            0,
            OP_PING,
            &i.to_be_bytes(),
            Some([1, 2, 3, 4]),
        ));
    }
    burst.extend(encode_frame(true, 0, OP_PING, b"last", Some([1, 2, 3, 4])));
    ws.send_bytes(&burst);
    // Now read: the Pongs the kernel's buffers took before the queue began, then the one
    // queued, for the last Ping.
    let mut pongs = 0u32;
    loop {
        let f = ws.read_frame().expect("the last Pong never came");
        assert_eq!(f.opcode, OP_PONG, "{f:?}");
        pongs += 1;
        if f.payload == b"last" {
            break;
        }
    }
    assert!(pongs < pings / 2, "{pongs} Pongs for {pings} Pings");
    let s = srv.wait_stats("the queue drained", |s| s["outbound_bytes"] == 0);
    assert_eq!(s["connections"], 1, "{s}");
}
