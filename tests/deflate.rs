//! permessage-deflate (RFC 7692), black box: real servers on ephemeral ports, and real
//! clients over loopback: Python `websockets` (which offers the extension by default and
//! compresses what it sends), and raw sockets with hand-made offers and frames compressed
//! with flate2. Negotiation (the answer, declined offers, `server_max_window_bits`,
//! `--compression off`), which frames go compressed (`compression_min_bytes`, the window),
//! the RSV rules (1002), inflation (fragments, a zip bomb: 1009, bad data: 1007), one
//! compression per push shared by every recipient on every shard, and resuming (replays
//! go plain, live pushes after them compressed).
//!
//! The Python test needs `python3` with the `websockets` package: where it is missing that
//! test fails saying what to install.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::deflate::*;
use common::tls::{metric, PyClient};
use common::*;
use serde_json::{json, Value};

/// A server whose `room:*` topics anyone may join, plus `extra` flags.
fn server(extra: &[&str]) -> TestServer {
    let mut args = vec!["--public-topics", "room:*"];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

fn assert_closed_with(ws: &mut DeflateWs, code: u16, what: &str) {
    let c = ws.read_until_close();
    assert_eq!(c, Closed::Code(Some(code)), "{what}: expected close {code}");
}

/// The server still serves: a new compressing client gets a pong and a compressed push.
/// Reads `rate_limited` errors until the close: ten, then 1008 (the 11th refusal).
fn assert_refused_ten_times_then_closed(ws: &mut DeflateWs) {
    let mut refused = 0;
    let closed = loop {
        let f = ws.read_frame().expect("neither closed nor answered");
        match f.opcode {
            OP_CLOSE => break f.close_code(),
            OP_TEXT => {
                let e: Value = serde_json::from_slice(&f.payload).expect("plain JSON");
                assert_eq!(e["code"], "rate_limited", "{e}");
                refused += 1;
            }
            _ => {}
        }
    };
    assert_eq!(closed, Some(1008));
    assert_eq!(refused, 10);
}

fn assert_server_fine(srv: &TestServer, user: &str) {
    let mut ws = DeflateWs::offering(srv, user);
    ws.barrier("still-fine");
    let data = orders(2000);
    srv.push_wait(json!({"user": user, "data": data}));
    let m = ws.expect("push");
    assert!(m.compressed(), "a 2 KB push to a compressing client: {m:?}");
    assert_eq!(m.json()["data"], data);
    ws.close();
}

/// Per-shard sample of a deflate counter family.
fn shard_metric(srv: &TestServer, family: &str, shard: usize) -> u64 {
    metric(srv.api, &format!("{family}{{shard=\"{shard}\"}}"))
}

// ---- 1. Python websockets --------------------------------------------------------------

#[test]
fn python_websockets_negotiates_and_both_sides_compress() {
    let srv = server(&[]);
    let before = Deflate::of(&srv);
    let port = srv.ws.port().to_string();
    let tok = token("py");
    let mut py = PyClient::fixture(
        "deflate_client.py",
        &[
            "--port", &port, "--token", &tok, "--topic", "room:1", "--pad", "2000", "--pushes", "3",
        ],
    );
    let open = py.expect("open");
    assert!(
        open["offer"]
            .as_str()
            .is_some_and(|o| o.starts_with("permessage-deflate")),
        "websockets offers permessage-deflate by default: {open}"
    );
    assert_eq!(open["answer"], AGREED, "the 101's extension: {open}");
    assert_eq!(open["answers"], 1, "one Sec-WebSocket-Extensions: {open}");
    let w = py.expect("welcome");
    assert_eq!(w["msg"]["type"], "welcome", "{w}");
    assert_eq!(w["msg"]["user"], "py", "{w}");
    assert_eq!(w["frame"]["rsv1"], false, "the welcome is short: {w}");

    // The subscribe went compressed (websockets compresses what it sends) and was
    // inflated and handled.
    let s = py.expect("subscribed");
    assert_eq!(s["msg"]["topic"], "room:1", "{s}");
    assert_eq!(s["msg"]["ref"], "s1", "{s}");
    let sent = s["sent"].as_array().expect("sent frames");
    assert_eq!(sent.len(), 1, "{s}");
    assert_eq!(
        sent[0]["rsv1"], true,
        "websockets sent the subscribe compressed: {s}"
    );
    assert!(
        sent[0]["wire_len"].as_u64().unwrap() * 4 < sent[0]["plain_len"].as_u64().unwrap(),
        "2 KB of padding compresses well: {s}"
    );
    srv.wait_stats("the compressed subscribe inflated", |st| {
        st["counters"]["inflated_messages"].as_u64() == Some(before.inflated + 1)
    });

    let pushes = [
        json!({"topic": "room:1", "id": "p1", "data": orders(2000)}),
        json!({"topic": "room:1", "id": "p2", "data": "small"}),
        json!({"topic": "room:1", "id": "p3", "data": orders(200_000)}),
    ];
    for p in &pushes {
        let r = srv.push_wait(p.clone());
        assert_eq!(r["delivered"], 1, "{r}");
    }
    let mut frames = Vec::new();
    for (i, p) in pushes.iter().enumerate() {
        let e = py.expect("push");
        let m = &e["msg"];
        assert_eq!(m["id"], p["id"], "in order: {}", e["frame"]);
        assert_eq!(m["seq"], i as u64 + 1);
        assert!(m["data"] == p["data"], "push {} arrived altered", p["id"]);
        frames.push((e["frame"].clone(), e["raw_len"].as_u64().unwrap()));
    }
    let (f1, raw1) = &frames[0];
    assert!(raw1 > &2000, "{raw1}");
    assert_eq!(f1["rsv1"], true, "a 2 KB push goes compressed: {f1}");
    assert!(
        f1["wire_len"].as_u64().unwrap() * 2 < *raw1,
        "and smaller by half at least: {f1}, {raw1} plain"
    );
    let (f2, raw2) = &frames[1];
    assert!(*raw2 < 256, "{raw2}");
    assert_eq!(f2["rsv1"], false, "a push under 256 bytes goes plain: {f2}");
    assert_eq!(f2["wire_len"].as_u64(), Some(*raw2), "{f2}");
    let (f3, raw3) = &frames[2];
    assert!(*raw3 > 200_000, "{raw3}");
    assert_eq!(f3["rsv1"], true, "a 200 KB push goes compressed: {f3}");
    assert!(f3["wire_len"].as_u64().unwrap() * 2 < *raw3, "{f3}");

    let d = Deflate::of(&srv).since(before);
    assert_eq!(d.compressions, 2, "the 2 KB and the 200 KB push: {d:?}");
    assert_eq!(d.sends, 2, "{d:?}");

    // The client closes with 1000; the server echoes it.
    let c = py.expect("closed");
    assert_eq!(c["sent"], 1000, "{c}");
    assert_eq!(
        c["rcvd"], 1000,
        "the server answers the close with 1000: {c}"
    );
    assert_eq!(c["close_code"], 1000, "{c}");
    assert_eq!(c["recv_exc"], "ConnectionClosedOK", "{c}");
    assert_eq!(
        c["log_warnings"],
        json!([]),
        "websockets logged problems: {c}"
    );
    assert!(c["close_secs"].as_f64().unwrap() < 4.0, "{c}");
    let sent_frames = c["sent_frames"].as_array().unwrap().len() as u64;
    py.finish();
    srv.wait_connections(0);
    // Every message websockets sent (all compressed) was inflated by the server.
    assert_eq!(Deflate::of(&srv).since(before).inflated, sent_frames);
}

// ---- 2. Raw sockets: RSV rules ---------------------------------------------------------

#[test]
fn rsv1_on_control_frames_and_continuations_closes_1002() {
    let srv = server(&[]);
    let z = compress(
        json!({"type": "ping", "ref": "x".repeat(300)})
            .to_string()
            .as_bytes(),
    );
    let half = z.len() / 2;
    type Act = Box<dyn Fn(&mut DeflateWs)>;
    let z1 = z.clone();
    let z2 = z.clone();
    let cases: Vec<(&str, Act)> = vec![
        (
            "RSV1 on a ping",
            Box::new(|ws| ws.send_frame(FIN | RSV1, OP_PING, b"hi")),
        ),
        (
            "RSV1 on a pong",
            Box::new(|ws| ws.send_frame(FIN | RSV1, OP_PONG, b"hi")),
        ),
        (
            "RSV1 on a close",
            Box::new(|ws| ws.send_frame(FIN | RSV1, OP_CLOSE, &1000u16.to_be_bytes())),
        ),
        (
            "RSV1 on the continuation of a compressed message",
            Box::new(move |ws| {
                ws.send_frame(RSV1, OP_TEXT, &z1[..half]);
                ws.send_frame(FIN | RSV1, OP_CONT, &z1[half..]);
            }),
        ),
        (
            "RSV1 on the middle continuation of a compressed message",
            Box::new(move |ws| {
                ws.send_frame(RSV1, OP_TEXT, &z2[..half]);
                ws.send_frame(RSV1, OP_CONT, &z2[half..half + 1]);
                ws.send_frame(FIN, OP_CONT, &z2[half + 1..]);
            }),
        ),
        (
            "RSV1 on the continuation of a plain message",
            Box::new(|ws| {
                ws.send_frame(0, OP_TEXT, br#"{"type":"pi"#);
                ws.send_frame(FIN | RSV1, OP_CONT, br#"ng"}"#);
            }),
        ),
        (
            "RSV1 on a binary message",
            Box::new(|ws| ws.send_frame(FIN | RSV1, OP_BINARY, &compress(b"\x00\x01\x02"))),
        ),
    ];
    for (what, send) in &cases {
        let mut ws = DeflateWs::offering(&srv, "a");
        send(&mut ws);
        let c = ws.read_until_close();
        // RFC 7692 allows a compressed binary message; the server refuses binary
        // messages whatever their form, with 1003 (docs/protocol.md 2).
        let want = if *what == "RSV1 on a binary message" {
            1003
        } else {
            1002
        };
        assert_eq!(c, Closed::Code(Some(want)), "{what}");
    }
    assert_server_fine(&srv, "after");
}

#[test]
fn rsv1_without_the_extension_closes_1002() {
    let srv = server(&[]);
    // No offer at all.
    let mut ws = DeflateWs::plain(&srv, "a");
    ws.barrier("open");
    ws.send_compressed(&json!({"type": "ping", "ref": "z"}).to_string());
    assert_closed_with(&mut ws, 1002, "RSV1 without an offer");
    // An offer the server declined.
    let mut ws = DeflateWs::connect(
        srv.ws,
        "/ws",
        &token("b"),
        &["permessage-deflate; no_such_parameter"],
    );
    assert_eq!(ws.extensions, None, "{}", ws.head);
    ws.send_compressed(&json!({"type": "ping", "ref": "z"}).to_string());
    assert_closed_with(&mut ws, 1002, "RSV1 after a declined offer");
    assert_eq!(Deflate::of(&srv).inflated, 0);
    assert_server_fine(&srv, "after");
}

#[test]
fn rsv2_and_rsv3_close_1002_negotiated_or_not() {
    let srv = server(&[]);
    let text = json!({"type": "ping", "ref": "r"}).to_string();
    for negotiated in [true, false] {
        for (bits, what) in [
            (RSV2, "RSV2"),
            (RSV3, "RSV3"),
            (RSV2 | RSV3, "RSV2 and RSV3"),
            (RSV1 | RSV2, "RSV1 and RSV2"),
            (RSV1 | RSV3, "RSV1 and RSV3"),
        ] {
            let mut ws = if negotiated {
                DeflateWs::offering(&srv, "a")
            } else {
                DeflateWs::plain(&srv, "a")
            };
            let payload = if bits & RSV1 != 0 {
                compress(text.as_bytes())
            } else {
                text.clone().into_bytes()
            };
            ws.send_frame(FIN | bits, OP_TEXT, &payload);
            assert_closed_with(&mut ws, 1002, &format!("{what}, negotiated {negotiated}"));
        }
        // On a control frame too.
        let mut ws = if negotiated {
            DeflateWs::offering(&srv, "a")
        } else {
            DeflateWs::plain(&srv, "a")
        };
        ws.send_frame(FIN | RSV2, OP_PING, b"x");
        assert_closed_with(
            &mut ws,
            1002,
            &format!("RSV2 on a ping, negotiated {negotiated}"),
        );
    }
    assert_server_fine(&srv, "after");
}

// ---- 2. Raw sockets: inflating client messages -----------------------------------------

#[test]
fn a_compressed_message_in_three_fragments_is_inflated() {
    let srv = server(&[]);
    let mut ws = DeflateWs::offering(&srv, "a");
    let before = Deflate::of(&srv);
    let r = format!("frag-{}", "0123456789".repeat(300));
    let z = compress(json!({"type": "ping", "ref": r}).to_string().as_bytes());
    assert!(z.len() > 10, "{}", z.len());
    let (a, b) = (z.len() / 3, 2 * z.len() / 3);
    ws.send_frame(RSV1, OP_TEXT, &z[..a]);
    // A control frame between fragments, as RFC 6455 allows.
    ws.send_frame(FIN, OP_PING, b"mid");
    ws.send_frame(0, OP_CONT, &z[a..b]);
    ws.send_frame(FIN, OP_CONT, &z[b..]);
    let pong = ws.read_frame().expect("the pong of the ping");
    assert_eq!(
        (pong.opcode, pong.rsv, &pong.payload[..]),
        (OP_PONG, 0, &b"mid"[..])
    );
    let m = ws.expect("pong");
    assert_eq!(m.json()["ref"], r.as_str());
    // Only pushes go compressed: other server messages stay plain, however long (README,
    // "Compression").
    assert!(!m.compressed(), "a 3 KB pong message: {:?}", m.frame.rsv);
    assert_eq!(Deflate::of(&srv).since(before).inflated, 1);

    // An empty first fragment, the whole deflate data in the continuation.
    let z = compress(
        json!({"type": "ping", "ref": "empty-first"})
            .to_string()
            .as_bytes(),
    );
    ws.send_frame(RSV1, OP_TEXT, &[]);
    ws.send_frame(FIN, OP_CONT, &z);
    let m = ws.expect("pong");
    assert_eq!(m.json()["ref"], "empty-first");
    assert!(!m.compressed(), "a short pong goes plain");

    // The next fragmented message is plain: it is not inflated.
    ws.send_frame(0, OP_TEXT, br#"{"type":"ping","#);
    ws.send_frame(FIN, OP_CONT, br#""ref":"plain-after"}"#);
    assert_eq!(ws.expect("pong").json()["ref"], "plain-after");
    // Compressed and plain one-frame messages alternate freely.
    ws.send_compressed(r#"{"type":"ping","ref":"one-frame"}"#);
    assert_eq!(ws.expect("pong").json()["ref"], "one-frame");
    ws.barrier("plain");
    // A compressed subscribe is handled like a plain one.
    ws.send_compressed(&json!({"type": "subscribe", "topic": "room:z", "ref": 5}).to_string());
    let s = ws.expect("subscribed").json();
    assert_eq!(
        (s["topic"].as_str(), s["ref"].as_u64()),
        (Some("room:z"), Some(5))
    );
    assert_eq!(Deflate::of(&srv).since(before).inflated, 4);
    ws.close();
}

/// `data` as raw deflate ending with a final block (BFINAL set), as RFC 7692 7.2.3.3
/// allows a sender to produce.
fn compress_final(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    let status = c
        .compress_vec(data, &mut out, flate2::FlushCompress::Finish)
        .expect("deflate");
    assert_eq!(status, flate2::Status::StreamEnd);
    out
}

#[test]
fn the_deflate_forms_rfc_7692_allows_are_inflated() {
    let srv = server(&[]);
    let mut ws = DeflateWs::offering(&srv, "a");
    let before = Deflate::of(&srv);
    let ping = |r: &str| json!({"type": "ping", "ref": r}).to_string();
    // 7.2.3.3: a final block (the receiver still appends 00 00 ff ff after it).
    ws.send_frame(
        FIN | RSV1,
        OP_TEXT,
        &compress_final(ping("final").as_bytes()),
    );
    assert_eq!(ws.expect("pong").json()["ref"], "final");
    // 7.2.3.4: two blocks in one message.
    let text = ping("two-blocks");
    let (x, y) = text.as_bytes().split_at(text.len() / 2);
    let mut two = compress(x);
    two.extend_from_slice(&[0, 0, 0xff, 0xff]);
    two.extend(compress(y));
    ws.send_frame(FIN | RSV1, OP_TEXT, &two);
    assert_eq!(ws.expect("pong").json()["ref"], "two-blocks");
    // 7.2.3.5: a stored (uncompressed) block.
    ws.send_frame(
        FIN | RSV1,
        OP_TEXT,
        &compress_level(ping("stored").as_bytes(), 0),
    );
    assert_eq!(ws.expect("pong").json()["ref"], "stored");
    // 7.2.3.6: an empty message is one 0x00 byte: empty text, not JSON, so an error.
    ws.send_frame(FIN | RSV1, OP_TEXT, &[0x00]);
    let e = ws.expect("error").json();
    assert_eq!(e["code"], "bad_json", "{e}");
    ws.barrier("after");
    assert_eq!(Deflate::of(&srv).since(before).inflated, 4);
    ws.close();
}

#[test]
fn frames_pipelined_after_the_upgrade_are_inflated() {
    let srv = server(&[]);
    let mut early = encode_frame(
        true,
        4,
        OP_TEXT,
        &compress(br#"{"type":"ping","ref":"early"}"#),
        Some(MASK),
    );
    early.extend(encode_frame(
        true,
        0,
        OP_TEXT,
        br#"{"type":"ping","ref":"early-plain"}"#,
        Some(MASK),
    ));
    let mut ws = DeflateWs::connect_early(srv.ws, "/ws", &token("a"), &[BROWSER_OFFER], &early);
    assert_eq!(ws.extensions.as_deref(), Some(AGREED));
    assert_eq!(ws.expect("pong").json()["ref"], "early");
    assert_eq!(ws.expect("pong").json()["ref"], "early-plain");
    assert_eq!(Deflate::of(&srv).inflated, 1);
    ws.close();
}

#[test]
fn a_zip_bomb_closes_1009_and_spares_everyone_else() {
    let srv = server(&["--max-message-size", "65536"]);
    let mut bystander = DeflateWs::offering(&srv, "bystander");
    bystander.subscribe("room:1");
    let mut plain = DeflateWs::plain(&srv, "plain");
    plain.subscribe("room:1");

    // 10 MiB of JSON in under 64 KiB of deflate.
    let bomb = format!(r#"{{"type":"ping","ref":"{}"}}"#, " ".repeat(10 << 20));
    let z = compress_level(bomb.as_bytes(), 9);
    assert!(z.len() < 16 * 1024, "{} bytes of deflate", z.len());
    let mut ws = DeflateWs::offering(&srv, "bomber");
    let started = Instant::now();
    ws.send_frame(FIN | RSV1, OP_TEXT, &z);
    assert_closed_with(&mut ws, 1009, "a zip bomb");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The same bomb in fragments.
    let mut ws = DeflateWs::offering(&srv, "bomber");
    let third = z.len() / 3;
    ws.send_frame(RSV1, OP_TEXT, &z[..third]);
    ws.send_frame(0, OP_CONT, &z[third..2 * third]);
    ws.send_frame(FIN, OP_CONT, &z[2 * third..]);
    assert_closed_with(&mut ws, 1009, "a fragmented zip bomb");

    // The bound is the inflated size: exactly max_message_size inflates, one more byte
    // does not.
    let at = |n: usize| {
        let head = r#"{"type":"ping","ref":""#;
        let s = format!("{head}{}\"}}", "a".repeat(n - head.len() - 2));
        assert_eq!(s.len(), n);
        s
    };
    let mut ws = DeflateWs::offering(&srv, "edge");
    ws.send_compressed(&at(65536));
    let m = ws.expect("pong");
    assert_eq!(m.json()["ref"].as_str().map(str::len), Some(65536 - 24));
    ws.send_compressed(&at(65537));
    assert_closed_with(
        &mut ws,
        1009,
        "one byte over max_message_size once inflated",
    );

    // Nobody else noticed.
    bystander.barrier("after-bomb");
    plain.barrier("after-bomb");
    let data = orders(3000);
    let r = srv.push_wait(json!({"topic": "room:1", "data": data}));
    assert_eq!(r["delivered"], 2, "{r}");
    let m = bystander.expect("push");
    assert!(m.compressed());
    assert_eq!(m.json()["data"], data);
    let m = plain.expect("push");
    assert!(!m.compressed());
    assert_eq!(m.json()["data"], data);
    srv.wait_connections(2);
    assert_server_fine(&srv, "after");
}

#[test]
fn padded_compressed_acks_are_paid_for_by_their_inflated_size() {
    // A compressed ack of about 100 bytes can hold 64 KiB of spaces, which the shard
    // inflates and parses: every message pays a token per 4 KiB of its text, acks too, so
    // such a flood is refused and closed like any other (before, acks were free and never
    // refused: one connection pinned its shard).
    let srv = server(&["--max-message-size", "65536", "--client-rate", "100"]);
    let mut bystander = DeflateWs::offering(&srv, "bystander");
    let padded = format!(r#"{{"type":"ack","seq":0{}}}"#, " ".repeat(65_000));
    let z = compress_level(padded.as_bytes(), 9);
    assert!(z.len() < 200, "{} bytes of deflate", z.len());
    let mut ws = DeflateWs::offering(&srv, "padder");
    for _ in 0..40 {
        ws.send_frame(FIN | RSV1, OP_TEXT, &z);
    }
    // 100 tokens pay for 25 (4 each, their text taken as a debt); then ten are refused
    // and the eleventh closes.
    assert_refused_ten_times_then_closed(&mut ws);
    // The same text uncompressed is paid for alike; the bystander was never held up.
    bystander.send_json(&json!({"type": "ping", "ref": "b"}));
    bystander.expect("pong");
    assert_server_fine(&srv, "after");
}

#[test]
fn small_padded_compressed_acks_are_not_read_a_whole_bucket_in_debt() {
    // Acks padded to 4 KiB, 54 bytes each once compressed: under the size still read while
    // in debt. Once the bucket was a whole bucket in debt, their charges cost nothing, so
    // they were inflated and parsed without end and never refused (review s20b: 525,314 in
    // 4 s with --shards 1, 320 times the rate's bound, a bystander's round trip 0.16 ms to
    // 39 ms). Now, at the floor, they are refused unread, and the refusals end in 1008.
    let srv = server(&["--client-rate", "100", "--shards", "1"]);
    let padded = format!(r#"{{"type":"ack","seq":0{}}}"#, " ".repeat(4000));
    let z = compress_level(padded.as_bytes(), 9);
    assert!(z.len() < 64, "{} bytes of deflate", z.len());
    let frame = encode_frame(true, 4, OP_TEXT, &z, Some(MASK));
    let burst: Vec<u8> = frame.repeat(5_000);
    let acks_before = srv.stats()["counters"]["acks"].as_u64().unwrap();
    let mut ws = DeflateWs::offering(&srv, "padder");
    // The server closes partway; what it has not read then it drains and drops.
    let _ = ws.stream.write_all(&burst);
    assert_refused_ten_times_then_closed(&mut ws);
    // 100 tokens and a bucket of debt pay for about 800 such acks (0.25 tokens of text
    // each), plus the refill meanwhile; the rest of the 5,000 was never read.
    let acks = srv.stats()["counters"]["acks"].as_u64().unwrap() - acks_before;
    assert!(acks < 2_000, "{acks} acks read");
    assert_server_fine(&srv, "after");
}

#[test]
fn garbage_marked_compressed_closes_1007() {
    let srv = server(&[]);
    let cases: [(&str, Vec<u8>); 3] = [
        // BFINAL with the reserved block type 11.
        ("a reserved block type", vec![0xff, 0xff, 0xff, 0xff, 0x12]),
        (
            "random bytes",
            (0..200u32).map(|i| (i * 97 + 13) as u8 | 0x06).collect(),
        ),
        // Valid deflate whose text is not UTF-8.
        (
            "deflate of invalid UTF-8",
            compress(b"{\"type\":\"ping\",\"ref\":\"\xff\xfe\"}"),
        ),
    ];
    for (what, payload) in &cases {
        let mut ws = DeflateWs::offering(&srv, "a");
        ws.send_frame(FIN | RSV1, OP_TEXT, payload);
        assert_closed_with(&mut ws, 1007, what);
    }
    // Split over fragments as well.
    let mut ws = DeflateWs::offering(&srv, "a");
    ws.send_frame(RSV1, OP_TEXT, &[0xff, 0xff]);
    ws.send_frame(FIN, OP_CONT, &[0xff, 0xff, 0x12]);
    assert_closed_with(&mut ws, 1007, "fragmented garbage");
    assert_server_fine(&srv, "after");
}

// ---- 2. Raw sockets: negotiation -------------------------------------------------------

#[test]
fn compression_off_answers_no_extension_and_rsv1_is_1002() {
    let srv = server(&["--compression", "off"]);
    let mut ws = DeflateWs::connect(srv.ws, "/ws", &token("a"), &[BROWSER_OFFER]);
    assert_eq!(ws.extensions, None, "{}", ws.head);
    ws.subscribe("room:1");
    let data = orders(4000);
    srv.push_wait(json!({"topic": "room:1", "data": data}));
    let m = ws.expect("push");
    assert!(!m.compressed());
    assert_eq!(m.json()["data"], data);
    ws.send_compressed(r#"{"type":"ping","ref":"z"}"#);
    assert_closed_with(&mut ws, 1002, "RSV1 with compression off");
    assert_eq!(
        Deflate::of(&srv),
        Deflate {
            compressions: 0,
            sends: 0,
            inflated: 0
        }
    );
}

#[test]
fn server_max_window_bits_9_compresses_only_what_fits_the_window() {
    let srv = server(&[]);
    let mut w9 = DeflateWs::connect(
        srv.ws,
        "/ws",
        &token("w9"),
        &["permessage-deflate; server_max_window_bits=9; client_max_window_bits"],
    );
    assert_eq!(
        w9.extensions.as_deref(),
        Some(format!("{AGREED}; server_max_window_bits=9").as_str()),
        "{}",
        w9.head
    );
    let mut full = DeflateWs::offering(&srv, "full");
    w9.subscribe("room:w");
    full.subscribe("room:w");
    let sizes = [250, 700, 2000];
    let before = Deflate::of(&srv);
    for n in sizes {
        let r = srv.push_wait(json!({"topic": "room:w", "data": orders(n)}));
        assert_eq!(r["delivered"], 2, "{r}");
    }
    let mut lens = Vec::new();
    for n in sizes {
        let m9 = w9.expect("push");
        let mf = full.expect("push");
        assert_eq!(m9.json(), mf.json(), "the same push");
        let len = m9.plain_frame_len();
        lens.push(len);
        assert!(len >= 256, "{n}: {len}");
        assert!(mf.compressed(), "{len}-byte frame to a 15-bit window");
        if len <= 512 {
            assert!(
                m9.compressed(),
                "a {len}-byte frame fits a 512-byte window: compressed"
            );
            assert!(m9.wire_len() < m9.text.len());
        } else {
            assert!(
                !m9.compressed(),
                "a {len}-byte frame does not fit a 512-byte window: plain"
            );
            assert_eq!(m9.wire_len(), m9.text.len());
        }
    }
    // The sizes cover both sides of the window.
    assert!(lens[0] <= 512 && lens[1] > 512, "{lens:?}");
    let d = Deflate::of(&srv).since(before);
    assert_eq!(d.compressions, 3, "{d:?}");
    assert_eq!(d.sends, 3 + 1, "{d:?}");
}

#[test]
fn invalid_offers_are_declined_and_a_valid_one_after_them_is_taken() {
    let srv = server(&[]);
    let data = orders(2000);
    let declined = [
        "permessage-deflate; unknown_param",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=20",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover=1",
        "x-webkit-deflate-frame",
        "deflate-frame",
    ];
    for offer in declined {
        let mut ws = DeflateWs::connect(srv.ws, "/ws", &token("d"), &[offer]);
        assert_eq!(
            ws.extensions, None,
            "{offer:?} must be declined: {}",
            ws.head
        );
        ws.subscribe("room:d");
        srv.push_wait(json!({"topic": "room:d", "data": data}));
        let m = ws.expect("push");
        assert!(!m.compressed(), "{offer:?}");
        assert_eq!(m.json()["data"], data);
        ws.barrier("plain");
        ws.close();
    }
    let accepted: [(&[&str], String); 5] = [
        (
            &["permessage-deflate; server_max_window_bits=7, permessage-deflate; client_max_window_bits"],
            AGREED.to_string(),
        ),
        (
            &["permessage-deflate; unknown, permessage-deflate"],
            AGREED.to_string(),
        ),
        (
            &["permessage-deflate; foo", "permessage-deflate; server_max_window_bits=10"],
            format!("{AGREED}; server_max_window_bits=10"),
        ),
        (
            &["x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=12, permessage-deflate"],
            format!("{AGREED}; server_max_window_bits=12"),
        ),
        (
            &["Permessage-Deflate; Server_No_Context_Takeover; client_max_window_bits=12"],
            AGREED.to_string(),
        ),
    ];
    // A frame that fits the smallest window asked for (10 bits: 1 KiB).
    let small = orders(500);
    for (offers, answer) in accepted {
        let mut ws = DeflateWs::connect(srv.ws, "/ws", &token("v"), offers);
        assert_eq!(
            ws.extensions.as_deref(),
            Some(answer.as_str()),
            "{offers:?}: {}",
            ws.head
        );
        ws.subscribe("room:v");
        srv.push_wait(json!({"topic": "room:v", "data": small}));
        let m = ws.expect("push");
        assert!(m.plain_frame_len() <= 1024, "{}", m.plain_frame_len());
        assert!(m.compressed(), "{offers:?}");
        assert_eq!(m.json()["data"], small);
        ws.send_compressed(r#"{"type":"ping","ref":"z"}"#);
        assert_eq!(ws.expect("pong").json()["ref"], "z");
        ws.close();
    }
}

#[test]
fn compression_min_bytes_sets_the_smallest_compressed_frame() {
    let srv = server(&["--compression-min-bytes", "1000"]);
    let mut ws = DeflateWs::offering(&srv, "a");
    ws.subscribe("room:m");
    for (n, compressed) in [(520, false), (1900, true)] {
        srv.push_wait(json!({"topic": "room:m", "data": orders(n)}));
        let m = ws.expect("push");
        let len = m.plain_frame_len();
        assert_eq!(m.compressed(), compressed, "a {len}-byte frame, min 1000");
        assert!(
            if compressed {
                len >= 1900
            } else {
                (550..1000).contains(&len)
            },
            "{len}"
        );
    }
    let d = Deflate::of(&srv);
    assert_eq!((d.compressions, d.sends), (1, 1), "{d:?}");
}

// ---- 3. One compression per push -------------------------------------------------------

#[test]
fn each_push_is_compressed_once_for_every_recipient_on_every_shard() {
    let srv = server(&["--shards", "2"]);
    let zipped: Vec<String> = (0..20).map(|i| format!("z{i}")).collect();
    let on = |s| {
        zipped
            .iter()
            .filter(|u| throng::route::shard_of(u, 2) == s)
            .count()
    };
    assert!(
        on(0) >= 3 && on(1) >= 3,
        "both shards have compressing clients"
    );
    let mut z: Vec<DeflateWs> = zipped
        .iter()
        .map(|u| DeflateWs::offering(&srv, u))
        .collect();
    let mut p: Vec<DeflateWs> = (0..5)
        .map(|i| DeflateWs::plain(&srv, &format!("p{i}")))
        .collect();
    for ws in z.iter_mut().chain(p.iter_mut()) {
        ws.subscribe("room:all");
    }
    let families = [
        "throng_deflate_compressions_total",
        "throng_deflated_sends_total",
    ];
    let per_shard = |srv: &TestServer| -> Vec<[u64; 2]> {
        families
            .iter()
            .map(|f| [shard_metric(srv, f, 0), shard_metric(srv, f, 1)])
            .collect()
    };

    let check = |z: &mut Vec<DeflateWs>, p: &mut Vec<DeflateWs>, push: Value, what: &str| {
        let before = Deflate::of(&srv);
        let shards_before = per_shard(&srv);
        let r = srv.push_wait(push.clone());
        assert_eq!(r["delivered"], 25, "{what}: {r}");
        let mut first: Option<Value> = None;
        for ws in z.iter_mut() {
            let m = ws.expect("push");
            assert!(m.compressed(), "{what}: RSV1 to a compressing client");
            assert!(m.wire_len() * 2 < m.text.len(), "{what}");
            let v = m.json();
            assert_eq!(v["data"], push["data"], "{what}");
            assert_eq!(first.get_or_insert_with(|| v.clone()), &v, "{what}");
        }
        for ws in p.iter_mut() {
            let m = ws.expect("push");
            assert!(!m.compressed(), "{what}: plain to a plain client");
            assert_eq!(first.as_ref(), Some(&m.json()), "{what}: the same message");
        }
        let d = Deflate::of(&srv).since(before);
        assert_eq!(d.compressions, 1, "{what}: compressed once in all: {d:?}");
        assert_eq!(d.sends, 20, "{what}: {d:?}");
        let shards_after = per_shard(&srv);
        let rose = |f: usize, s: usize| shards_after[f][s] - shards_before[f][s];
        assert_eq!(rose(0, 0) + rose(0, 1), 1, "{what}: {shards_after:?}");
        assert_eq!(
            rose(1, 0),
            on(0) as u64,
            "{what}: compressed sends on shard 0"
        );
        assert_eq!(
            rose(1, 1),
            on(1) as u64,
            "{what}: compressed sends on shard 1"
        );
    };
    check(
        &mut z,
        &mut p,
        json!({"topic": "room:all", "data": orders(2000)}),
        "a topic push",
    );
    check(
        &mut z,
        &mut p,
        json!({"broadcast": true, "data": orders(2000)}),
        "a broadcast",
    );

    // A direct push to a user with three compressing sessions and a plain one.
    let mut sessions: Vec<DeflateWs> = (0..3).map(|_| DeflateWs::offering(&srv, "multi")).collect();
    let mut plain = DeflateWs::plain(&srv, "multi");
    let before = Deflate::of(&srv);
    let data = orders(2000);
    let r = srv.push_wait(json!({"user": "multi", "data": data}));
    assert_eq!(r["delivered"], 4, "{r}");
    for ws in &mut sessions {
        let m = ws.expect("push");
        assert!(m.compressed());
        assert_eq!(m.json()["data"], data);
    }
    let m = plain.expect("push");
    assert!(!m.compressed());
    assert_eq!(m.json()["data"], data);
    let d = Deflate::of(&srv).since(before);
    assert_eq!((d.compressions, d.sends), (1, 3), "{d:?}");
    for ws in z.iter_mut().chain(p.iter_mut()) {
        ws.barrier("nothing-else");
    }
}

// ---- 4. Resuming with compression --------------------------------------------------

/// History keeps plain frames, so pushes replayed on a resume go plain (RFC 7692 lets a
/// sender compress or not per message; README, "Compression"); a compressing client reads
/// both forms, and the live pushes after the replay come compressed again.
#[test]
fn a_compressing_client_resumes_its_user_stream() {
    let srv = server(&[]);
    let mut a = DeflateWs::offering(&srv, "u");
    let epoch = a.welcome["epoch"].as_str().expect("epoch").to_string();
    let data: Vec<Value> = (0..5)
        .map(|i| {
            if i == 4 {
                json!("small")
            } else {
                orders(1500 + 300 * i)
            }
        })
        .collect();
    let before = Deflate::of(&srv);
    // Two live (compressed as they go), then three while away.
    for d in &data[..2] {
        srv.push_wait(json!({"user": "u", "data": d}));
        let m = a.expect("push");
        assert!(m.compressed());
        assert_eq!(&m.json()["data"], d);
    }
    a.close();
    srv.wait_online(0, 0);
    for d in &data[2..] {
        let r = srv.push_wait(json!({"user": "u", "data": d}));
        assert_eq!(r["delivered"], 0, "{r}");
    }
    let d = Deflate::of(&srv).since(before);
    assert_eq!(
        (d.compressions, d.sends),
        (2, 2),
        "nothing compressed for nobody: {d:?}"
    );

    let mut b = DeflateWs::connect(
        srv.ws,
        &format!("/ws?since=0&epoch={epoch}"),
        &token("u"),
        &[BROWSER_OFFER],
    );
    assert_eq!(b.extensions.as_deref(), Some(AGREED));
    assert_eq!(b.welcome["resumed"], true, "{}", b.welcome);
    assert_eq!(b.welcome["seq"], 5, "{}", b.welcome);
    for (i, d) in data.iter().enumerate() {
        let m = b.expect("push");
        let v = m.json();
        assert_eq!(v["seq"], i as u64 + 1, "{v}");
        assert_eq!(&v["data"], d, "replayed push {} intact", i + 1);
        assert!(!m.compressed(), "replayed push {} goes plain", i + 1);
    }
    // Live again: compressed.
    let live = orders(2500);
    srv.push_wait(json!({"user": "u", "data": live}));
    let m = b.expect("push");
    assert!(m.compressed(), "a live push after the replay");
    assert_eq!(m.json()["seq"], 6);
    assert_eq!(m.json()["data"], live);
    b.barrier("after-replay");
    let d = Deflate::of(&srv).since(before);
    assert_eq!((d.compressions, d.sends), (3, 3), "{d:?}");

    // A plain client resuming the same stream gets the same pushes.
    let mut c = DeflateWs::connect(
        srv.ws,
        &format!("/ws?since=2&epoch={epoch}"),
        &token("u"),
        &[],
    );
    assert_eq!(c.welcome["resumed"], true, "{}", c.welcome);
    for (i, d) in data.iter().chain([&live]).enumerate().skip(2) {
        let m = c.expect("push");
        assert!(!m.compressed());
        assert_eq!(m.json()["seq"], i as u64 + 1);
        assert_eq!(&m.json()["data"], d);
    }
    c.barrier("plain-replay");
}

#[test]
fn a_compressing_client_resumes_a_topic_with_a_compressed_subscribe() {
    let srv = server(&[]);
    let mut a = DeflateWs::offering(&srv, "a");
    a.subscribe("room:r");
    let data: Vec<Value> = (0..4).map(|i| orders(1000 + 500 * i)).collect();
    srv.push_wait(json!({"topic": "room:r", "data": data[0]}));
    let first = a.expect("push");
    assert!(first.compressed());
    let epoch = first.json()["epoch"]
        .as_str()
        .expect("the first push's epoch")
        .to_string();
    a.close();
    for d in &data[1..] {
        srv.push_wait(json!({"topic": "room:r", "data": d}));
    }
    let before = Deflate::of(&srv);
    let mut b = DeflateWs::offering(&srv, "b");
    b.send_compressed(
        &json!({"type": "subscribe", "topic": "room:r", "since": 1, "epoch": epoch}).to_string(),
    );
    let s = b.expect("subscribed").json();
    assert_eq!(s["resumed"], true, "{s}");
    for (i, d) in data.iter().enumerate().skip(1) {
        let m = b.expect("push");
        assert!(
            !m.compressed(),
            "replayed topic push {} (history is plain)",
            i + 1
        );
        let v = m.json();
        assert_eq!(v["seq"], i as u64 + 1, "{v}");
        assert_eq!(&v["data"], d);
    }
    let live = orders(2000);
    srv.push_wait(json!({"topic": "room:r", "data": live}));
    let m = b.expect("push");
    assert!(m.compressed(), "a live topic push after the replay");
    assert_eq!(m.json()["seq"], 5);
    assert_eq!(m.json()["data"], live);
    b.barrier("after-replay");
    let d = Deflate::of(&srv).since(before);
    assert_eq!((d.compressions, d.sends, d.inflated), (1, 1, 1), "{d:?}");
}
