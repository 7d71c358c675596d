//! Property-based fuzzing of the client-facing parsers (bounded case counts so the suite
//! stays fast): the frame decoder and the upgrade parser never panic on arbitrary bytes,
//! agree with reference encoders and models, and a real server shrugs off random blobs.

mod common;

use std::io::Write;

use common::*;
use proptest::prelude::*;
use serde_json::json;
use throng::frame::{parse_close, parse_head, unmask, FrameError, Head, Kind};
use throng::handshake::{self, Refusal};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- frames ----------------------------------------------------------------------------

/// Reference client-frame encoder (RFC 6455 5.2), minimal length encoding.
fn encode(b0: u8, len: u64, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xFFFF {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// What RFC 6455 and docs/protocol.md 3.1 say a header with these fields decodes to.
fn model(
    b0: u8,
    len: u64,
    masked: bool,
    max: usize,
    deflate: bool,
) -> Result<(bool, Kind), FrameError> {
    // RSV2 and RSV3 never; RSV1 only with permessage-deflate.
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !deflate) {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let kind = match b0 & 0x0F {
        0 => Kind::Continue,
        1 => Kind::Text,
        2 => return Err(FrameError::Binary),
        8 => Kind::Close,
        9 => Kind::Ping,
        10 => Kind::Pong,
        _ => return Err(FrameError::ReservedOpcode),
    };
    if !masked {
        return Err(FrameError::Unmasked);
    }
    let control = matches!(kind, Kind::Close | Kind::Ping | Kind::Pong);
    if control && (!fin || len > 125) {
        return Err(FrameError::BadControl);
    }
    // RSV1 belongs on the first frame of a data message, never on control or continuation.
    if rsv1 && kind != Kind::Text {
        return Err(FrameError::ReservedBits);
    }
    if !control && len > max as u64 {
        return Err(FrameError::TooBig);
    }
    Ok((fin, kind))
}

fn header_len(len: u64) -> usize {
    match len {
        0..=125 => 6,
        126..=0xFFFF => 8,
        _ => 14,
    }
}

/// Payload lengths in each encoding form, including the edges.
fn payload_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=130,
        Just(125u64),
        Just(126u64),
        Just(0xFFFFu64),
        Just(0x1_0000u64),
        126u64..=0x1_0010,
        0x1_0000u64..(1u64 << 63),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_head_never_panics(
        buf in proptest::collection::vec(any::<u8>(), 0..64),
        max in any::<usize>(),
        deflate in any::<bool>(),
    ) {
        if let Ok(Some(h)) = parse_head(&buf, max, deflate) {
            prop_assert!(h.header_len <= buf.len());
            prop_assert!([6, 8, 14].contains(&h.header_len));
        }
    }

    #[test]
    fn parse_head_matches_the_model(
        b0 in any::<u8>(),
        len in payload_len(),
        mask in proptest::option::of(any::<[u8; 4]>()),
        max in prop_oneof![Just(0usize), 0usize..70_000, Just(usize::MAX)],
        deflate in any::<bool>(),
    ) {
        // Header only: the decoder judges a frame before its payload arrives.
        let bytes = encode(b0, len, mask, &[]);
        let got = parse_head(&bytes, max, deflate);
        match model(b0, len, mask.is_some(), max, deflate) {
            Err(e) => prop_assert_eq!(got, Err(e)),
            Ok((fin, kind)) => {
                let want = Head {
                    fin,
                    kind,
                    mask: mask.unwrap_or_default(),
                    header_len: header_len(len),
                    payload_len: len as usize,
                    compressed: b0 & 0x40 != 0,
                };
                prop_assert_eq!(got, Ok(Some(want)));
                // Any shorter prefix is incomplete, never an error or a different head.
                for cut in 0..bytes.len() {
                    prop_assert_eq!(parse_head(&bytes[..cut], max, deflate), Ok(None));
                }
            }
        }
    }

    #[test]
    fn frames_round_trip(
        opcode in prop_oneof![Just(0u8), Just(1), Just(8), Just(9), Just(10)],
        fin in any::<bool>(),
        seed in any::<u8>(),
        len in prop_oneof![0usize..=125, 126usize..=300, Just(0xFFFF), 0x1_0000usize..0x1_0100],
        mask in any::<[u8; 4]>(),
        trailing in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let control = opcode >= 8;
        let (fin, len) = if control { (true, len % 126) } else { (fin, len) };
        let payload: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
        let b0 = ((fin as u8) << 7) | opcode;
        let mut bytes = encode(b0, len as u64, Some(mask), &payload);
        let total = bytes.len();
        bytes.extend_from_slice(&trailing);
        let h = parse_head(&bytes, len, false).unwrap().unwrap();
        prop_assert_eq!(h.fin, fin);
        prop_assert_eq!(h.payload_len, len);
        prop_assert_eq!(h.total_len(), total);
        let body = &mut bytes[h.header_len..h.total_len()];
        unmask(body, h.mask);
        prop_assert_eq!(&body[..], &payload[..]);
        // One byte under the message limit refuses a data frame.
        if !control && len > 0 {
            prop_assert_eq!(parse_head(&bytes, len - 1, false), Err(FrameError::TooBig));
        }
    }

    #[test]
    fn unmask_is_bytewise_xor_and_its_own_inverse(
        data in proptest::collection::vec(any::<u8>(), 0..200),
        mask in any::<[u8; 4]>(),
    ) {
        let mut fast = data.clone();
        unmask(&mut fast, mask);
        let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        prop_assert_eq!(&fast, &slow);
        unmask(&mut fast, mask);
        prop_assert_eq!(fast, data);
    }

    #[test]
    fn parse_close_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..130)) {
        if let Ok(Some((code, reason))) = parse_close(&payload) {
            prop_assert_eq!(code, u16::from_be_bytes([payload[0], payload[1]]));
            prop_assert_eq!(reason.as_bytes(), &payload[2..]);
            prop_assert!((1000..5000).contains(&code));
        }
    }

    #[test]
    fn close_payloads_round_trip(
        code in prop_oneof![1000u16..=1003, 1007u16..=1011, 3000u16..5000],
        reason in "\\PC{0,30}",
    ) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        prop_assert_eq!(parse_close(&payload), Ok(Some((code, reason.as_str()))));
    }
}

// ---- the upgrade parser ----------------------------------------------------------------

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A valid upgrade request head built from generated choices.
fn valid_request(
    token_in_header: bool,
    origin: Option<&str>,
    extra: &[(String, String)],
    lower: bool,
) -> String {
    let name = |n: &str| {
        if lower {
            n.to_ascii_lowercase()
        } else {
            n.to_string()
        }
    };
    let path = if token_in_header {
        "/ws".to_string()
    } else {
        "/ws?since=3&epoch=e1&token=tok.en".to_string()
    };
    let mut r = format!("GET {path} HTTP/1.1\r\n");
    r.push_str(&format!("{}: example\r\n", name("Host")));
    r.push_str(&format!("{}: websocket\r\n", name("Upgrade")));
    r.push_str(&format!("{}: keep-alive, Upgrade\r\n", name("Connection")));
    r.push_str(&format!("{}: {KEY}\r\n", name("Sec-WebSocket-Key")));
    r.push_str(&format!("{}: 13\r\n", name("Sec-WebSocket-Version")));
    if token_in_header {
        r.push_str(&format!("{}: Bearer tok.en\r\n", name("Authorization")));
    }
    if let Some(o) = origin {
        r.push_str(&format!("Origin: {o}\r\n"));
    }
    for (k, v) in extra {
        r.push_str(&format!("X-{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r
}

fn header_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(("[A-Za-z0-9-]{1,12}", "[ -~]{0,40}"), 0..20).prop_map(|v| {
        // A value's leading or trailing spaces are not part of it (RFC 9110 5.5).
        v.into_iter()
            .map(|(k, val)| (k, val.trim().to_string()))
            .collect()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn upgrade_parser_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..10_000)) {
        if let Ok(Some(u)) = handshake::parse(&buf) {
            prop_assert!(u.head_len <= buf.len());
        }
    }

    #[test]
    fn upgrade_parser_survives_mutated_requests(
        token_in_header in any::<bool>(),
        extra in header_pairs(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut buf = valid_request(token_in_header, None, &extra, false).into_bytes();
        for (at, b) in edits {
            let i = at.index(buf.len());
            buf[i] = b;
        }
        let buf = &buf[..cut.index(buf.len() + 1)];
        match handshake::parse(buf) {
            Ok(Some(u)) => prop_assert!(u.head_len <= buf.len()),
            Ok(None) => {}
            // Every refusal renders as an HTTP response.
            Err(r) => prop_assert!(r.response().starts_with(b"HTTP/1.1 4")),
        }
    }

}

proptest! {
    // Quadratic in the request length (every prefix is parsed): fewer cases.
    #![proptest_config(ProptestConfig { cases: 64, ..config() })]

    #[test]
    fn valid_request_split_anywhere_parses_the_same(
        token_in_header in any::<bool>(),
        origin in proptest::option::of("https://[a-z]{1,10}\\.example"),
        extra in header_pairs(),
        lower in any::<bool>(),
        trailing in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let head = valid_request(token_in_header, origin.as_deref(), &extra, lower);
        let mut buf = head.clone().into_bytes();
        buf.extend_from_slice(&trailing);
        let whole = handshake::parse(&buf);
        let u = match &whole {
            Ok(Some(u)) => u.clone(),
            other => return Err(TestCaseError::fail(format!("{other:?} for {head:?}"))),
        };
        prop_assert_eq!(u.head_len, head.len());
        prop_assert_eq!(u.token.as_deref(), Some("tok.en"));
        prop_assert_eq!(u.origin.as_deref(), origin.as_deref());
        prop_assert_eq!(&u.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        // Every prefix short of the head is incomplete; from the head on it is the same.
        for k in 0..=buf.len() {
            let got = handshake::parse(&buf[..k]);
            if k < head.len() {
                prop_assert_eq!(got, Ok(None), "prefix of {} bytes", k);
            } else {
                prop_assert_eq!(&got, &whole, "prefix of {} bytes", k);
            }
        }
    }
}

#[test]
fn refusal_of_too_many_fields_names_the_limit() {
    let fields: Vec<(String, String)> = (0..handshake::MAX_HEADERS)
        .map(|i| (format!("F{i}"), "v".into()))
        .collect();
    let r = handshake::parse(valid_request(true, None, &fields, false).as_bytes());
    assert_eq!(
        r,
        Err(Refusal::HeaderTooLarge(handshake::HeadLimit::Fields))
    );
}

// ---- a real server under random input --------------------------------------------------

/// Random bytes, or a valid request or frame with a few bytes changed.
fn blob(rng: &mut Xorshift, valid: &[u8]) -> Vec<u8> {
    if rng.below(2) == 0 {
        let n = rng.below(3000);
        rng.bytes(n)
    } else {
        let mut b = valid.to_vec();
        for _ in 0..1 + rng.below(6) {
            let i = rng.below(b.len());
            b[i] = rng.next() as u8;
        }
        b.truncate(1 + rng.below(b.len()));
        b
    }
}

#[test]
fn server_survives_random_upgrades_and_frames() {
    let srv = TestServer::start(&["--handshake-timeout-ms", "500", "--shards", "2"]);
    let valid_upgrade = {
        let auth = format!("Authorization: Bearer {}", token("fuzz"));
        upgrade_request(srv.ws, "/ws", &[&auth], &[])
    };
    let valid_frame = encode_frame(
        true,
        0,
        OP_TEXT,
        br#"{"type":"ping","ref":"r"}"#,
        Some([1, 2, 3, 4]),
    );
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let (ws, up, fr) = (srv.ws, valid_upgrade.clone(), valid_frame.clone());
            std::thread::spawn(move || {
                let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15 ^ (w + 1));
                for round in 0..25 {
                    // Random bytes as the upgrade request.
                    let mut s = tcp(ws);
                    let _ = s.write_all(&blob(&mut rng, &up));
                    if round % 2 == 0 {
                        let _ = s.shutdown(std::net::Shutdown::Write);
                    }
                    // Random bytes as frames after a good upgrade.
                    let mut c = RawWs::connect(ws, &token(&format!("fuzz{w}")));
                    for _ in 0..3 {
                        let _ = c.stream.write_all(&blob(&mut rng, &fr));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("fuzz worker");
    }
    // The server still upgrades a good client and delivers to it, and every fuzzed
    // handshake ended (the gauge is back to zero once the stragglers time out).
    let mut good = srv.connect("good");
    let r = srv.push_wait(json!({"user": "good", "data": "after the storm"}));
    assert_eq!(r["delivered"], 1, "{r}");
    assert_eq!(good.recv()["data"], "after the storm");
    good.barrier("b");
    srv.wait_stats("no pending handshakes", |s| {
        s["pending_handshakes"].as_u64() == Some(0)
    });
}
