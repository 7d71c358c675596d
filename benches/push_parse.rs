//! Parsing JSON on the two ingress paths.
//!
//! Push objects (HTTP API): the real path, `throng::api::parse_push` (serde_json, `data`
//! kept verbatim as a `RawValue`), against simd-json building a borrowed tree of the same
//! body and extracting the same fields (its `data` has to be serialised again), and
//! simd-json building the tree alone.
//!
//! Client messages (WebSocket): the real path, `throng::messages::parse` (simd-json in
//! place with reused `Buffers`), against `serde_json::from_slice::<Value>`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use serde_json::json;
use simd_json::prelude::*;
use simd_json::BorrowedValue;
use throng::api::{parse_push, Target};
use throng::messages::{self, ClientMsg};

fn small_push() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "user": "user-123456",
        "id": "msg-0001",
        "data": {"kind": "chat", "text": "hello there", "n": 1}
    }))
    .unwrap()
}

/// A topic push whose `data` brings the body to about 4 KiB.
fn large_push() -> Vec<u8> {
    let mut items = Vec::new();
    let mut body = Vec::new();
    for i in 0.. {
        items.push(json!({
            "id": i,
            "title": format!("Headline number {i} with a few words"),
            "score": 0.5 + i as f64,
            "tags": ["sports", "football", "live"],
            "published": true
        }));
        body = serde_json::to_vec(&json!({
            "topic": "news.sports",
            "id": "msg-0002",
            "data": {"items": items, "next": null}
        }))
        .unwrap();
        if body.len() >= 4000 {
            break;
        }
    }
    body
}

/// What `parse_push` yields, built from a simd-json borrowed tree, with the same checks.
fn simd_parse_push(body: &mut [u8]) -> Result<(Target, String, Option<String>), String> {
    let v = simd_json::to_borrowed_value(body).map_err(|e| format!("invalid push: {e}"))?;
    let data = v.get("data").ok_or("missing field `data`")?.encode();
    let id = match v.get("id") {
        None => None,
        Some(id) => Some(id.as_str().ok_or("id must be a string")?.to_string()),
    };
    let user_id = |u: &BorrowedValue<'_>| -> Result<String, String> {
        let s = match (u.as_str(), u.as_u64()) {
            (Some(s), _) => s.to_string(),
            (None, Some(n)) => n.to_string(),
            _ => return Err("user must be a string or an integer".into()),
        };
        throng::auth::validate_user(&s).map_err(|e| format!("user: {e}"))?;
        Ok(s)
    };
    let target = if let Some(u) = v.get("user") {
        Target::User(user_id(u)?)
    } else if let Some(list) = v.get("users") {
        let list = list.as_array().ok_or("users must be an array")?;
        Target::Users(list.iter().map(user_id).collect::<Result<_, _>>()?)
    } else if let Some(t) = v.get("topic") {
        let t = t.as_str().ok_or("topic must be a string")?;
        throng::topic::validate(t).map_err(|e| format!("topic: {e}"))?;
        Target::Topic(t.to_string())
    } else if v.get("broadcast").and_then(|b| b.as_bool()) == Some(true) {
        Target::Broadcast
    } else {
        return Err("a push needs exactly one target".into());
    };
    Ok((target, data, id))
}

fn push(c: &mut Criterion) {
    let mut g = c.benchmark_group("push_parse");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, body) in [("small", small_push()), ("4KiB", large_push())] {
        // Sanity: both paths agree on what the push is.
        let real = parse_push(&body).unwrap();
        let (target, data, id) = simd_parse_push(&mut body.clone()).unwrap();
        assert_eq!(real.target, target);
        assert_eq!(real.id, id);
        let reparsed: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(
            reparsed,
            serde_json::from_str::<serde_json::Value>(&real.data).unwrap()
        );

        let label = format!("{name}_{}B", body.len());
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("serde_json_rawvalue", &label),
            &body,
            |b, body| b.iter(|| parse_push(black_box(body)).unwrap()),
        );
        // simd-json parses in place; the copy it needs is made outside the measurement.
        g.bench_with_input(
            BenchmarkId::new("simd_json_borrowed", &label),
            &body,
            |b, body| {
                b.iter_batched_ref(
                    || body.clone(),
                    |buf| simd_parse_push(black_box(buf)).unwrap(),
                    BatchSize::SmallInput,
                )
            },
        );
        // Just the tree, no field extraction and no re-encoding of `data`.
        g.bench_with_input(
            BenchmarkId::new("simd_json_tree_only", &label),
            &body,
            |b, body| {
                b.iter_batched_ref(
                    || body.clone(),
                    |buf| simd_json::to_borrowed_value(black_box(buf)).is_ok(),
                    BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

fn client_message(c: &mut Criterion) {
    let msg = br#"{"type":"subscribe","topic":"news.sports","ref":42}"#.to_vec();
    let mut buffers = simd_json::Buffers::default();
    {
        let mut m = msg.clone();
        let parsed = messages::parse(&mut m, &mut buffers);
        assert!(matches!(parsed.msg, Ok(ClientMsg::Subscribe { .. })));
        assert_eq!(parsed.reference.as_deref(), Some("42"));
    }

    let mut g = c.benchmark_group("client_message_parse");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(msg.len() as u64));
    // The payload is parsed in place (it is the unmasked frame); a fresh copy per
    // iteration is made outside the measurement.
    g.bench_function("simd_json_messages_parse", |b| {
        b.iter_batched_ref(
            || msg.clone(),
            |m| {
                let parsed = messages::parse(black_box(m), &mut buffers);
                parsed.msg.is_ok()
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("serde_json_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&msg)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, push, client_message);
criterion_main!(benches);
