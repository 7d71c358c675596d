//! Property-based fuzzing of the push API's input paths: request framing and push
//! parsing (bounded case counts), plus random byte blobs against a real server.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Map, Value};
use throng::api::chunked::{decode, ChunkScan, Scanned};
use throng::api::request::{frame, FrameError, Framed, MAX_HEAD};
use throng::api::{parse_push, Target, MAX_DATA_DEPTH, MAX_ID_BYTES, MAX_USERS};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Request framing

/// A request as bytes; mostly valid, sometimes with a head past the limit.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]);
    let path = "/[a-z0-9/]{0,20}(\\?[a-z0-9=&]{0,12})?";
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]);
    let headers = prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,15}", "[!-~][ -~]{0,30}"), 0..12);
    let body = prop::collection::vec(any::<u8>(), 0..300);
    let pad = prop::sample::select(vec![0usize, 0, 0, MAX_HEAD - 200, MAX_HEAD + 100]);
    (method, path, version, headers, body, any::<bool>(), pad).prop_map(
        |(method, path, version, headers, body, always_length, pad)| {
            let mut raw = format!("{method} {path} {version}\r\n");
            for (name, value) in headers {
                let lower = name.to_ascii_lowercase();
                if lower == "content-length" || lower == "transfer-encoding" {
                    continue;
                }
                raw.push_str(&format!("{name}: {value}\r\n"));
            }
            if pad > 0 {
                raw.push_str(&format!("X-Pad: {}\r\n", "p".repeat(pad)));
            }
            if always_length || !body.is_empty() {
                raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            raw.push_str("\r\n");
            let mut raw = raw.into_bytes();
            raw.extend_from_slice(&body);
            raw
        },
    )
}

/// An owned copy of a framing result, to compare results over different buffers.
fn owned(f: Framed<'_>) -> String {
    format!("{f:?}")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn framing_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = frame(&bytes);
    }

    #[test]
    fn framing_never_panics_after_a_request_line(
        line in prop::sample::select(vec![
            "GET / HTTP/1.1\r\n",
            "POST /v1/push HTTP/1.1\r\nContent-Length: ",
            "POST /v1/push HTTP/1.1\r\nContent-Length: 5\r\nContent-Length",
            "GET / HTTP/1.1\r\nTransfer-Encoding",
        ]),
        rest in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut raw = line.as_bytes().to_vec();
        raw.extend_from_slice(&rest);
        match frame(&raw) {
            Framed::Complete(h) => {
                prop_assert!(h.body.end <= raw.len());
                prop_assert!(h.body.start <= h.body.end);
            }
            Framed::HeadOnly(h) => {
                prop_assert!(h.body.start <= raw.len() && raw.len() < h.body.end);
            }
            _ => {}
        }
    }

    #[test]
    fn framing_does_not_depend_on_how_bytes_arrive(
        raw in request(),
        next in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let whole = owned(frame(&raw));
        prop_assert!(!matches!(frame(&raw), Framed::Incomplete), "a whole request is never incomplete");
        // What follows (the next pipelined request) changes nothing.
        let mut with_next = raw.clone();
        with_next.extend_from_slice(&next);
        prop_assert_eq!(owned(frame(&with_next)), whole.clone());
        // Every prefix is either "need more" or, for a refusal, already that refusal.
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(raw.len())).collect();
        cuts.sort_unstable();
        for cut in cuts {
            let part = frame(&raw[..cut]);
            match (&part, frame(&raw)) {
                (Framed::Incomplete, _) => {}
                (Framed::Error(e), Framed::Error(w)) => prop_assert_eq!(e, &w),
                // The head alone already says what the whole request will: its key, its
                // length and where it goes.
                (Framed::HeadOnly(h), Framed::Complete(w)) => {
                    prop_assert_eq!(
                        (h.method, h.path, h.query, h.authorization, h.keep_alive, &h.body),
                        (w.method, w.path, w.query, w.authorization, w.keep_alive, &w.body)
                    );
                }
                _ => prop_assert!(false, "prefix of {} bytes gave {:?}, whole gave {}", cut, part, whole),
            }
        }
        if let Framed::Error(e) = frame(&raw) {
            // The only refusal these requests can earn is the head limit.
            prop_assert_eq!(e, FrameError::HeadTooLarge);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Chunked bodies

/// A chunked body: its data (None when a byte of it was changed), and its bytes.
fn chunked_body() -> impl Strategy<Value = (Option<Vec<u8>>, Vec<u8>)> {
    let chunk = (
        prop::collection::vec(any::<u8>(), 1..40),
        any::<bool>(),
        any::<bool>(),
    );
    let trailers = prop::collection::vec("[A-Za-z][A-Za-z0-9-]{0,8}: [ -~]{0,10}", 0..3);
    let mutate = prop::option::weighted(0.3, (any::<Index>(), any::<u8>()));
    (prop::collection::vec(chunk, 0..8), trailers, mutate).prop_map(|(chunks, trailers, mutate)| {
        let mut data = Vec::new();
        let mut raw = Vec::new();
        for (bytes, ext, upper) in chunks {
            let size = if upper {
                format!("{:X}", bytes.len())
            } else {
                format!("{:x}", bytes.len())
            };
            raw.extend_from_slice(size.as_bytes());
            if ext {
                raw.extend_from_slice(b";name=\"v\"");
            }
            raw.extend_from_slice(b"\r\n");
            raw.extend_from_slice(&bytes);
            raw.extend_from_slice(b"\r\n");
            data.extend_from_slice(&bytes);
        }
        raw.extend_from_slice(b"0\r\n");
        for t in trailers {
            raw.extend_from_slice(t.as_bytes());
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        if let Some((at, byte)) = mutate {
            let i = at.index(raw.len());
            if raw[i] != byte {
                raw[i] = byte;
                return (None, raw);
            }
        }
        (Some(data), raw)
    })
}

/// The scan's answer once `raw` arrived in the pieces `cuts` make.
fn scan_in_pieces(raw: &[u8], cuts: &[usize]) -> Result<Scanned, FrameError> {
    let mut scan = ChunkScan::new(0);
    for &cut in cuts {
        let found = scan.advance(&raw[..cut]);
        if !matches!(found, Ok(Scanned::More { .. })) {
            return found;
        }
    }
    scan.advance(raw)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn chunk_scans_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(Scanned::Done { end }) = ChunkScan::new(0).advance(&bytes) {
            prop_assert!(end <= bytes.len());
        }
    }

    #[test]
    fn chunk_scans_do_not_depend_on_how_bytes_arrive(
        (data, raw) in chunked_body(),
        next in prop::collection::vec(any::<u8>(), 0..32),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let whole = scan_in_pieces(&raw, &[]);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(raw.len())).collect();
        cuts.sort_unstable();
        // The same answer, except that a bad line may be found only once it ends (a
        // later line end, or the framing bound): in pieces it may still wait for that.
        match (scan_in_pieces(&raw, &cuts), &whole) {
            (Ok(Scanned::More { .. }), Err(_)) => {}
            (pieces, whole) => prop_assert_eq!(&pieces, whole),
        }
        // A whole body: what follows it changes nothing, and it decodes to its data.
        if let Ok(Scanned::Done { end }) = whole {
            let mut with_next = raw.clone();
            with_next.extend_from_slice(&next);
            prop_assert_eq!(scan_in_pieces(&with_next, &cuts), Ok(Scanned::Done { end }));
            let body = decode(&raw[..end], 0, 0);
            prop_assert!(body.is_ok());
            if let Some(data) = data {
                prop_assert_eq!((end, body.ok()), (raw.len(), Some(data)));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Push parsing

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e9f64..1e9).prop_map(|f| json!(f)),
        "[a-z]{0,8}".prop_map(Value::String),
        "\\PC{0,12}".prop_map(Value::String),
        "[\\x00-\\x1f a]{0,4}".prop_map(Value::String),
        "[!-~]{120,140}".prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A push-like object: each known field absent or with a random value, valid ones often
/// enough that accepted pushes (including repeated user ids) are common.
fn push_object() -> impl Strategy<Value = Value> {
    let field = |p: f64, v: BoxedStrategy<Value>| prop::option::weighted(p, v);
    let user_id = || {
        prop_oneof![
            6 => "[a-c]{1,2}".prop_map(Value::String),
            2 => (0u64..5).prop_map(|n| json!(n)),
            1 => leaf(),
        ]
    };
    let ids = prop::collection::vec(user_id(), 0..8).prop_map(Value::Array);
    (
        field(0.9, value().boxed()),
        field(
            0.4,
            prop_oneof![3 => "[a-z]{0,5}".prop_map(Value::String), 1 => leaf()].boxed(),
        ),
        field(0.3, user_id().boxed()),
        field(0.4, prop_oneof![4 => ids, 1 => value()].boxed()),
        field(
            0.3,
            prop_oneof!["[a-z.]{1,8}".prop_map(Value::String), leaf()].boxed(),
        ),
        field(0.3, prop_oneof![Just(json!(true)), leaf()].boxed()),
        field(0.3, value().boxed()),
    )
        .prop_map(|(data, id, user, users, topic, broadcast, extra)| {
            let mut m = Map::new();
            for (k, v) in [
                ("data", data),
                ("id", id),
                ("user", user),
                ("users", users),
                ("topic", topic),
                ("broadcast", broadcast),
                ("extra", extra),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            Value::Object(m)
        })
}

fn valid_user(u: &str) -> bool {
    throng::auth::validate_user(u).is_ok()
}

/// Whatever `parse_push` accepts is one well-formed push that matches the input.
fn check_accepted(body: &[u8]) -> Result<(), TestCaseError> {
    let Ok(p) = parse_push(body) else {
        return Ok(());
    };

    prop_assert!(p.id.as_ref().is_none_or(|id| id.len() <= MAX_ID_BYTES));
    let data: Value = serde_json::from_str(&p.data)
        .map_err(|e| TestCaseError::fail(format!("accepted data is not JSON: {e}")))?;
    match &p.target {
        Target::User(u) => prop_assert!(valid_user(u), "{:?}", u),
        Target::Users(list) => {
            prop_assert!(!list.is_empty() && list.len() <= MAX_USERS);
            let mut seen = std::collections::HashSet::new();
            for u in list {
                prop_assert!(valid_user(u), "{:?}", u);
                prop_assert!(seen.insert(u), "{:?} twice", u);
            }
        }
        Target::Topic(t) => prop_assert!(throng::topic::validate(t).is_ok(), "{:?}", t),
        Target::Broadcast => {}
    }
    // The input is a JSON object (never an array read field by field), and it named
    // exactly this one target, none of them null.
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        return Err(TestCaseError::fail(format!(
            "accepted {:?}, which is not a JSON object",
            String::from_utf8_lossy(body)
        )));
    };
    for k in ["user", "users", "topic", "broadcast"] {
        prop_assert!(m.get(k) != Some(&Value::Null), "{} null in {:?}", k, m);
    }
    let present = |k: &str| m.contains_key(k);
    let targets = usize::from(present("user"))
        + usize::from(present("users"))
        + usize::from(present("topic"))
        + usize::from(m.get("broadcast") == Some(&json!(true)));
    prop_assert_eq!(targets, 1, "{:?} for {:?}", p.target, m);
    prop_assert_eq!(Some(&data), m.get("data"));
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn push_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        check_accepted(&bytes)?;
    }

    #[test]
    fn push_parser_never_panics_on_strings(s in "\\PC{0,200}") {
        check_accepted(s.as_bytes())?;
    }

    #[test]
    fn push_parser_accepts_only_one_valid_target(obj in push_object()) {
        check_accepted(obj.to_string().as_bytes())?;
    }

    #[test]
    fn push_parser_refuses_deep_data(depth in MAX_DATA_DEPTH + 1..MAX_DATA_DEPTH * 20, open in "[\\[{]") {
        let inner = if open == "[" {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        } else {
            format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
        };
        let body = format!(r#"{{"user":"a","data":{inner}}}"#);
        let e = parse_push(body.as_bytes()).expect_err("too deep");
        prop_assert!(e.contains("too deep"), "{}", e);
    }
}

// ---------------------------------------------------------------------------------------
// Random blobs against a real server

/// Random bytes, or a real request with random damage.
fn blob(rng: &mut Xorshift) -> Vec<u8> {
    let valid = format!(
        "POST /v1/push?wait=1 HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: 25\r\n\r\n{{\"user\":\"blob\",\"data\":[1]}}GET /healthz HTTP/1.1\r\n\r\n"
    )
    .into_bytes();
    match rng.below(4) {
        0 => (0..rng.below(4096)).map(|_| rng.next() as u8).collect(),
        1 => {
            let mut b = valid;
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            b
        }
        2 => {
            let cut = rng.below(valid.len());
            valid[..cut].to_vec()
        }
        _ => {
            let mut b = valid;
            let at = rng.below(b.len());
            let junk: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            b.splice(at..at, junk);
            b
        }
    }
}

#[test]
fn random_blobs_do_not_hurt_the_api() {
    let srv = TestServer::start(&[
        "--api-request-timeout-ms",
        "1000",
        "--api-idle-timeout-ms",
        "1000",
    ]);
    let mut blob_user = srv.connect("blob");
    let mut c = srv.connect("victim");
    srv.wait_online(2, 2);
    let api = srv.api;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
                for _ in 0..25 {
                    let mut s = tcp(api);
                    // How long to listen for an answer, not a condition of the test.
                    s.set_read_timeout(Some(Duration::from_millis(100)))
                        .expect("timeout");
                    let b = blob(&mut rng);
                    if s.write_all(&b).is_err() {
                        continue;
                    }
                    let mut sink = [0u8; 4096];
                    while let Ok(n) = s.read(&mut sink) {
                        if n == 0 {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("blob thread");
    }
    assert_eq!(srv.api("GET", "/healthz", None).status, 200);
    let r = srv.push_wait(json!({"user": "victim", "data": "still here"}));
    assert_eq!(r["delivered"], 1, "{r}");
    assert_eq!(c.recv()["data"], "still here");
    // Every blob connection is gone again: the gauge counts only the one asking.
    srv.wait_stats("blob connections closed", |s| s["api_connections"] == 1);
    // The user that damaged pushes were aimed at is still connected and served.
    srv.push_wait(json!({"user": "blob", "data": "last"}));
    while let Ok(Some(m)) = blob_user.try_recv(IO_TIMEOUT) {
        if m["data"] == "last" {
            return;
        }
    }
    panic!("the blob user never got the last push");
}
