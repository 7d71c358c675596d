//! Client messages that once crashed the process (issue 7): deeply nested JSON, and
//! property-based fuzzing of the client message parser.

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::json;

/// 10 KB of nesting from an authenticated client used to overflow the shard's stack and
/// abort the process; now it is one refused message and the connection stays open.
#[test]
fn deeply_nested_messages_are_refused_and_nobody_drops() {
    let srv = TestServer::start(&["--shards", "1"]);
    let mut attacker = srv.connect("mallory");
    let mut bystander = srv.connect("bob");
    let bombs = [
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
        format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000)),
        format!(
            "{{\"type\":\"subscribe\",\"topic\":\"t\",\"ref\":{}1{}}}",
            "[".repeat(30_000),
            "]".repeat(30_000)
        ),
        // Unbalanced: only openers.
        "{".repeat(60_000),
    ];
    for bomb in &bombs {
        attacker.send_text(bomb);
        let e = attacker.recv();
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["code"], "bad_json", "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("nested deeper than"),
            "{e}"
        );
    }
    attacker.barrier("still-open");
    srv.push(json!({"user": "bob", "data": "fine"}));
    assert_eq!(bystander.recv()["data"], "fine");
}

/// Review s21c: simd-json read a lone high surrogate escape as U+0000, so a publish of
/// `"a\ud800b"` reached subscribers as `"a\u0000b"` (and a `ref` came back altered); the
/// push API passed it on verbatim to clients whose parsers refuse it. Both refuse it now.
#[test]
fn lone_surrogate_escapes_are_refused_not_turned_into_nul() {
    let srv = TestServer::start(&[]);
    let token = token_with(json!({
        "sub": "pat", "exp": now_secs() + 3600, "topics": ["room:*"], "publish": ["room:*"]
    }));
    let mut pat = Client::connect(srv.ws, &token).expect("connect");
    pat.send(json!({"type": "subscribe", "topic": "room:s"}));
    assert_eq!(pat.recv()["type"], "subscribed");
    for text in [
        r#"{"type":"publish","topic":"room:s","data":"a\ud800b"}"#,
        r#"{"type":"publish","topic":"room:s","data":"\udc00"}"#,
        r#"{"type":"ping","ref":"\ud800zz"}"#,
    ] {
        pat.send_text(text);
        let e = pat.recv();
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("bad_json")),
            "{text}: {e}"
        );
        assert!(
            e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("lone UTF-16 surrogate"),
            "{e}"
        );
    }
    // A pair is a character: it goes through unchanged.
    pat.send_text(r#"{"type":"publish","topic":"room:s","data":"\ud83d\ude00","ref":"ok"}"#);
    let got = [pat.recv(), pat.recv()];
    let push = got.iter().find(|m| m["type"] == "push").expect("the push");
    assert_eq!(push["data"], "\u{1F600}", "{got:?}");
    // The push API: a 400 that says why.
    let r = srv.api(
        "POST",
        "/v1/push",
        Some(r#"{"topic":"room:s","data":["\ud800"]}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("lone UTF-16 surrogate"), "{}", r.text());
    pat.barrier("still-open");
}

fn arb_json(depth: u32) -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z:*\\\\\" ]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(depth, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type".to_string()),
                    Just("topic".to_string()),
                    Just("ref".to_string()),
                    Just("seq".to_string()),
                    "[a-z]{1,4}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the parser; whatever it says is an answer.
    #[test]
    fn parser_never_panics_on_bytes(mut bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut buffers = simd_json::Buffers::default();
        let parsed = throng::messages::parse(&mut bytes, &mut buffers);
        if let Err(r) = parsed.msg {
            prop_assert!(!r.message.is_empty());
        }
    }

    /// Structured JSON (any shape, any depth proptest makes) parses or is refused with a
    /// known error code, and a `ref` is echoed as valid JSON.
    #[test]
    fn parser_answers_structured_json(
        v in arb_json(8),
        kind in prop_oneof![Just("subscribe"), Just("unsubscribe"), Just("ping"), Just("ack"), Just("x")],
    ) {
        let mut msg = json!({"type": kind, "topic": "room:1", "seq": 3});
        msg["ref"] = v.clone();
        for text in [v.to_string(), msg.to_string()] {
            let mut bytes = text.into_bytes();
            let mut buffers = simd_json::Buffers::default();
            let parsed = throng::messages::parse(&mut bytes, &mut buffers);
            if let Some(r) = &parsed.reference {
                prop_assert!(serde_json::from_str::<serde_json::Value>(r).is_ok(), "{}", r);
            }
            if let Err(e) = parsed.msg {
                prop_assert!(
                    ["bad_json", "unknown_type", "bad_topic"].contains(&e.code),
                    "{:?}", e
                );
            }
        }
    }

    /// Nesting right at and past the limit: accepted up to it, refused past it, never a
    /// stack overflow whatever the depth.
    #[test]
    fn nesting_limit_is_exact(depth in 0usize..20_000) {
        let text = format!(
            "{{\"type\":\"ping\",\"ref\":{}0{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let mut bytes = text.into_bytes();
        let mut buffers = simd_json::Buffers::default();
        let parsed = throng::messages::parse(&mut bytes, &mut buffers);
        // The outer object is one level.
        if depth < throng::messages::MAX_CLIENT_DEPTH {
            prop_assert!(parsed.msg.is_ok());
        } else {
            prop_assert_eq!(parsed.msg.unwrap_err().code, "bad_json");
        }
    }
}
