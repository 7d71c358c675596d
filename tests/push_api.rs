//! docs/protocol.md 4: the push API.

mod common;

use std::io::Write;

use common::*;
use serde_json::{json, Value};

#[test]
fn push_accepted_202() {
    let srv = TestServer::start(&[]);
    let r = srv.api("POST", "/v1/push", Some(r#"{"user":"x","data":1}"#));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json(), json!({"accepted": true}));
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
}

/// Asserts 400 `bad_request` whose message mentions `needle`.
fn bad_push_mentioning(srv: &TestServer, body: &str, needle: &str) {
    let r = srv.api("POST", "/v1/push", Some(body));
    r.assert_error(400, "bad_request");
    let m = r.json()["message"].as_str().unwrap().to_ascii_lowercase();
    assert!(
        m.contains(needle),
        "message for {body:?} should name {needle:?}: {m:?}"
    );
}

fn bad_push(srv: &TestServer, body: &str) {
    let r = srv.api("POST", "/v1/push", Some(body));
    assert_eq!(r.status, 400, "body {body:?} -> {} {}", r.status, r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "{ct:?}");
    let j = r.json();
    assert_eq!(j["error"], "bad_request", "{j}");
    assert!(
        j["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message names the problem: {j}"
    );
}

#[test]
fn push_errors_400() {
    let srv = TestServer::start(&[]);
    bad_push(&srv, "{not json");
    bad_push(&srv, "");
    bad_push(&srv, "[1]");
    bad_push_mentioning(&srv, r#"{"data":1}"#, "target"); // no target
    bad_push_mentioning(&srv, r#"{"user":"a","topic":"t","data":1}"#, "target"); // two targets
    bad_push_mentioning(&srv, r#"{"user":"a","broadcast":true,"data":1}"#, "target");
    bad_push_mentioning(&srv, r#"{"user":"a"}"#, "data"); // no data
    bad_push_mentioning(
        &srv,
        &json!({"user": "a", "data": 1, "id": "i".repeat(129)}).to_string(),
        "id",
    );
    bad_push_mentioning(&srv, r#"{"topic":"a b","data":1}"#, "topic");
    bad_push_mentioning(&srv, r#"{"user":"","data":1}"#, "user");
    // Review s21c: named for what it is. Review s22b: a whole-number float literal inside
    // the u64 range reads the same, so the message names both.
    for id in ["18446744073709551616", "9.3e18", "1e19", "-1e19"] {
        bad_push_mentioning(
            &srv,
            &format!(r#"{{"user":{id},"data":1}}"#),
            "an integer-valued float or an integer beyond the 64-bit range; send the id as a \
             string",
        );
    }
    bad_push_mentioning(&srv, r#"{"users":[1.5],"data":1}"#, "strings or integers");
    bad_push_mentioning(
        &srv,
        "\u{FEFF}{\"user\":\"a\",\"data\":1}",
        "byte-order mark",
    );

    // The API still works afterwards.
    let r = srv.api(
        "POST",
        "/v1/push",
        Some(r#"{"user":"a","data":1,"id":"ok"}"#),
    );
    assert_eq!(r.status, 202);
}

#[test]
fn body_over_1_mib_is_413() {
    let srv = TestServer::start(&[]);
    let big = json!({"user": "a", "data": "x".repeat(1024 * 1024 + 100)}).to_string();
    let mut conn = srv.api_conn();
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    conn.stream.write_all(head.as_bytes()).unwrap();
    // The server may answer before reading the body; a failed write is fine.
    let _ = conn.stream.write_all(big.as_bytes());
    let r = conn.read();
    assert_eq!(r.status, 413, "{}", r.text());
    let j = r.json();
    assert!(j["error"].as_str().is_some_and(|e| !e.is_empty()), "{j}");
    assert!(j["message"].is_string(), "{j}");
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
}

#[test]
fn body_just_under_1_mib_is_accepted() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("a");
    let data = "y".repeat(1024 * 1024 - 100);
    let body = json!({"user": "a", "data": data}).to_string();
    assert!(body.len() <= 1024 * 1024);
    let r = srv.api("POST", "/v1/push", Some(&body));
    assert_eq!(r.status, 202, "{}", r.text());
    let p = c.recv();
    assert_eq!(p["data"].as_str().map(str::len), Some(1024 * 1024 - 100));
}

#[test]
fn api_key_required() {
    let srv = TestServer::start(&[]);
    let mut conn = srv.api_conn();
    let r = conn.request("POST", "/v1/push", None, Some(r#"{"user":"a","data":1}"#));
    assert_eq!(r.status, 401, "{}", r.text());
    let j = r.json();
    assert!(j["error"].is_string() && j["message"].is_string(), "{j}");
    let r = srv.api_conn().request(
        "POST",
        "/v1/push",
        Some("wrong-key"),
        Some(r#"{"user":"a","data":1}"#),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.json()["error"].is_string());
    let r = srv.api_conn().request("GET", "/v1/stats", None, None);
    assert_eq!(r.status, 401);
    let r = srv
        .api_conn()
        .request("GET", "/v1/stats", Some("test-ke"), None);
    assert_eq!(r.status, 401);
    let r = raw_http(
        srv.api,
        format!("GET /v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {API_KEY}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 401, "Basic is not Bearer");
    // It says the scheme is wrong, not that the header is missing.
    let m = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(m.contains("must be \"Bearer <api key>\""), "{m}");
}

#[test]
fn unknown_path_404() {
    let srv = TestServer::start(&[]);
    let r = srv.api("GET", "/v1/nothing", None);
    r.assert_error(404, "not_found");
    let r = srv.api("POST", "/v2/push", Some("{}"));
    assert_eq!(r.status, 404);
    // A known path with the wrong method is 405, the parametrised ones too (review s21c),
    // with the methods it takes in `Allow` (review s22b, RFC 9110 15.5.6).
    for (method, path, allow) in [
        ("POST", "/v1/presence/alice", "GET, HEAD"),
        ("POST", "/v1/topics/room:1", "GET, HEAD"),
        ("DELETE", "/v1/stats", "GET, HEAD"),
        ("PUT", "/metrics", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("POST", "/readyz", "GET, HEAD"),
        ("GET", "/v1/push", "POST"),
        ("GET", "/v1/push/batch", "POST"),
        ("PUT", "/v1/disconnect", "POST"),
        ("GET", "/v1/drain", "POST"),
    ] {
        let r = srv.api(method, path, Some("{}"));
        r.assert_error(405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}: {r:?}");
        let needs = allow.replace(", ", " or ");
        assert!(r.text().contains(&format!("needs {needs}")), "{}", r.text());
    }
    // A HEAD that gets 405 carries it too.
    let mut s = tcp(srv.api);
    s.write_all(
        format!("HEAD /v1/push HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\n\r\n").as_bytes(),
    )
    .expect("write");
    let head = String::from_utf8_lossy(&read_head(&mut s)).to_string();
    assert!(head.starts_with("HTTP/1.1 405 "), "{head:?}");
    assert!(head.contains("\r\nAllow: POST\r\n"), "{head:?}");
}

#[test]
fn wait_counts() {
    let srv = TestServer::start(&["--shards", "3", "--public-topics", "room"]);
    let mut a1 = srv.connect("alice");
    let mut a2 = srv.connect("alice");
    let mut b = srv.connect("bob");

    let r = srv.push_wait(json!({"user": "alice", "data": 1}));
    assert_eq!(r, json!({"delivered": 2, "users_online": 1}));
    let r = srv.push_wait(json!({"user": "nobody", "data": 1}));
    assert_eq!(r, json!({"delivered": 0, "users_online": 0}));
    let r = srv.push_wait(json!({"users": ["alice", "bob", "nobody"], "data": 1}));
    assert_eq!(r, json!({"delivered": 3, "users_online": 2}));

    a1.send(json!({"type": "subscribe", "topic": "room"}));
    assert_eq!(a1.recv()["type"], "push");
    assert_eq!(a1.recv()["type"], "push");
    assert_eq!(a1.recv()["type"], "subscribed");
    b.send(json!({"type": "subscribe", "topic": "room"}));
    assert_eq!(b.recv()["type"], "push");
    assert_eq!(b.recv()["type"], "subscribed");
    let r = srv.push_wait(json!({"topic": "room", "data": 1}));
    assert_eq!(
        r,
        json!({"delivered": 2, "users_online": 2}),
        "topic reaches 2 users"
    );

    let r = srv.push_wait(json!({"broadcast": true, "data": 1}));
    assert_eq!(
        r,
        json!({"delivered": 3, "users_online": 2}),
        "broadcast reaches 2 users"
    );

    // Everything promised was delivered.
    assert_eq!(a2.recv()["seq"], 1);
    assert_eq!(a2.recv()["seq"], 2);
    assert_eq!(a2.recv().get("seq"), None);
}

#[test]
fn batch_with_bad_lines() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("bat");
    let lines = [
        r#"{"user":"bat","data":"one"}"#,
        r#"{this is not json"#,
        r#"{"user":"bat","data":"two"}"#,
        r#"{"data":"no target"}"#,
        r#"{"user":"bat","topic":"t","data":"two targets"}"#,
        r#"{"user":"bat","data":"three"}"#,
    ];
    let body = lines.join("\n") + "\n";
    let r = srv.api("POST", "/v1/push/batch", Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["accepted"], 3, "{j}");
    let rejected = j["rejected"].as_array().expect("rejected array");
    let bad_lines: Vec<u64> = rejected
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(bad_lines, vec![2, 4, 5], "{j}");
    for e in rejected {
        assert!(e["error"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
    }
    for (i, d) in ["one", "two", "three"].iter().enumerate() {
        let p = c.recv();
        assert_eq!(p["data"], *d);
        assert_eq!(p["seq"], json!(i as u64 + 1));
    }
    c.barrier("end");
}

#[test]
fn batch_all_good_without_trailing_newline() {
    let srv = TestServer::start(&[]);
    let body = (0..50)
        .map(|i| json!({"user": "u", "data": i}).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let r = srv.api("POST", "/v1/push/batch", Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["accepted"], 50);
    assert_eq!(j["rejected"], json!([]));
}

#[test]
fn disconnect_closes_sessions_with_4003() {
    let srv = TestServer::start(&[]);
    let mut a = srv.connect("gone");
    let mut b = srv.connect("gone");
    let mut other = srv.connect("stays");
    srv.wait_connections(3);
    let r = srv.api(
        "POST",
        "/v1/disconnect",
        Some(r#"{"user":"gone","code":4003,"reason":"kicked"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"closed": 2}));
    assert_eq!(a.expect_close(), Closed::Code(Some(4003)));
    assert_eq!(b.expect_close(), Closed::Code(Some(4003)));
    other.barrier("still-here");
    srv.wait_connections(1);
    let r = srv.api(
        "POST",
        "/v1/disconnect",
        Some(r#"{"user":"gone","code":4003}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["closed"], 0);
}

#[test]
fn presence() {
    let srv = TestServer::start(&["--shards", "4"]);
    let presence = |u: &str| -> Value {
        let r = srv.api("GET", &format!("/v1/presence/{u}"), None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    assert_eq!(
        presence("pat"),
        json!({"user": "pat", "online": false, "sessions": 0, "details": []})
    );
    let a = srv.connect("pat");
    let _b = srv.connect("pat");
    assert!(wait_until(WAIT, || presence("pat")["sessions"] == 2));
    let p = presence("pat");
    assert_eq!(
        (&p["user"], &p["online"], &p["sessions"]),
        (&json!("pat"), &json!(true), &json!(2)),
        "{p}"
    );
    assert_eq!(p["details"].as_array().map(Vec::len), Some(2), "{p}");
    drop(a);
    assert!(wait_until(WAIT, || presence("pat")["sessions"] == 1));
    assert_eq!(presence("pat")["online"], true);
}

#[test]
fn health_and_readiness() {
    let srv = TestServer::start(&[]);
    let r = srv.api("GET", "/healthz", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = srv.api("GET", "/readyz", None);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Probes carry no key: `/healthz` and `/readyz` answer without one; `/metrics` and the
/// rest still need it unless `--metrics-public`.
#[test]
fn health_needs_no_key_metrics_does_unless_public() {
    let srv = TestServer::start(&[]);
    for path in ["/healthz", "/readyz"] {
        let r = srv.api_conn().request("GET", path, None, None);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    for path in ["/metrics", "/v1/stats"] {
        srv.api_conn()
            .request("GET", path, None, None)
            .assert_error(401, "unauthorized");
    }
    let open = TestServer::start(&["--metrics-public"]);
    let r = open.api_conn().request("GET", "/metrics", None, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("throng_connections"));
    open.api_conn()
        .request("GET", "/v1/stats", None, None)
        .assert_error(401, "unauthorized");
}

#[test]
fn head_is_answered_without_a_body_and_the_connection_stays_in_step() {
    let srv = TestServer::start(&[]);
    let mut s = tcp(srv.api);
    // Every read-only endpoint answers HEAD as GET (review s22b: topics and presence,
    // whose answers wait on the shards, too).
    for (path, status) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/v1/stats", 200),
        ("/v1/topics/room:1", 200),
        ("/v1/topics/room:1?members=1", 200),
        ("/v1/presence/alice", 200),
        ("/v1/push", 405),
        ("/nope", 404),
    ] {
        s.write_all(
            format!(
                "HEAD {path} HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\n\r\n\
                 GET /healthz HTTP/1.1\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("write");
        let head = String::from_utf8_lossy(&read_head(&mut s)).to_string();
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "HEAD {path}: {head:?}"
        );
        assert!(head.contains("Content-Length: "), "{head:?}");
        // The next answer follows the head at once: no body came between.
        let (r, rest) = read_response(&mut s, Vec::new()).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.status, 200, "GET after HEAD {path}: {}", r.text());
        assert_eq!(r.json()["status"], "ok");
        assert!(rest.is_empty());
    }
}

#[test]
fn push_bodies_must_be_objects_with_real_targets() {
    let srv = TestServer::start(&[]);
    let t = token_with(json!({"sub": -5, "exp": now_secs() + 600}));
    let mut neg = Client::connect(srv.ws, &t).expect("sub -5");
    assert_eq!(neg.welcome["user"], "-5");
    srv.wait_online(1, 1);
    let r = srv.push_wait(json!({"user": -5, "data": "negative"}));
    assert_eq!(r["delivered"], 1, "{r}");
    assert_eq!(neg.recv()["data"], "negative");
    for (body, needle) in [
        (
            r#"[1,null,"alice",null,null,null]"#,
            "a push must be a JSON object",
        ),
        (r#"{"user":null,"topic":"t","data":1}"#, "user"),
        (
            r#"{"user":1.5,"data":1}"#,
            "user must be a string or an integer",
        ),
        (
            r#"{"user":{"a":1},"data":1}"#,
            "user must be a string or an integer",
        ),
        (r#"{"topic":null,"data":1}"#, "topic"),
    ] {
        let r = srv.api("POST", "/v1/push?wait=1", Some(body));
        r.assert_error(400, "bad_request");
        let m = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(m.contains(needle), "{body}: {m}");
        assert!(!m.contains("untagged"), "{body}: {m}");
    }
    let r = srv.api("POST", "/v1/disconnect", Some(r#"["a",4003,"x"]"#));
    r.assert_error(400, "bad_request");
    assert!(r.text().contains("JSON object"), "{}", r.text());
    let r = srv.api(
        "POST",
        "/v1/push/batch",
        Some("[{\"x\":1},\"id1\",null,null,\"room:1\",null]\n"),
    );
    assert_eq!(r.json()["accepted"], 0, "{}", r.text());
}

#[test]
fn stats_shape() {
    let srv = TestServer::start(&["--shards", "3"]);
    let _c = srv.connect("s");
    let s = srv.wait_online(1, 1);
    assert!(s["topics"].is_u64());
    assert_eq!(s["draining"], false);
    let shards = s["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3);
    for (i, sh) in shards.iter().enumerate() {
        assert_eq!(sh["shard"], i as u64);
        for k in ["connections", "users", "topics"] {
            assert!(sh[k].is_u64(), "{k} in {sh}");
        }
    }
    for k in [
        "handshakes_accepted",
        "handshakes_refused",
        "pushes_accepted",
        "pushes_delivered",
        "slow_consumer_closes",
        "heartbeat_closes",
        "queue_full_refusals",
    ] {
        assert!(s["counters"][k].is_u64(), "counter {k} in {s}");
    }
    srv.push_wait(json!({"user": "s", "data": 1}));
    let s = srv.wait_stats("push counted", |s| {
        s["counters"]["pushes_delivered"].as_u64() >= Some(1)
    });
    assert!(s["counters"]["pushes_accepted"].as_u64() >= Some(1), "{s}");
}

#[test]
fn metrics_exposition() {
    let srv = TestServer::start(&[]);
    let _c = srv.connect("m");
    srv.wait_connections(1);
    srv.push_wait(json!({"user": "m", "data": 1}));
    let r = srv.api("GET", "/metrics", None);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!families.is_empty(), "no # TYPE lines:\n{text}");
    for f in &families {
        assert!(
            f.starts_with("throng_"),
            "metric {f} lacks the throng_ prefix"
        );
    }
    for needle in [
        "connections",
        "users_online",
        "topics",
        "handshakes",
        "pushes_accepted",
        "pushes_delivered",
        "slow_consumer",
        "heartbeat",
    ] {
        assert!(
            families.iter().any(|f| f.contains(needle)),
            "no metric family about {needle}: {families:?}"
        );
    }
    // The connections gauge shows the one client (summed over any per-shard labels).
    let conns: f64 = text
        .lines()
        .filter(|l| l.starts_with("throng_connections ") || l.starts_with("throng_connections{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(conns, 1.0, "throng_connections in:\n{text}");
    // Every sample line is `name{labels} value`.
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = l.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {l:?}");
        assert!(l.starts_with("throng_"), "sample {l:?}");
    }
}

#[test]
fn push_latency_counts_only_pushes_that_reached_a_socket() {
    use common::tls::metric;
    const COUNT: &str = "throng_push_latency_seconds_count";
    let srv = TestServer::start(&[]);
    // No client at all: an offline user, an empty topic and a broadcast reach no socket
    // on either shard, so there is no push-to-socket time to record.
    for i in 0..5 {
        srv.push_wait(json!({"user": "nobody", "data": i}));
        srv.push_wait(json!({"topic": "empty", "data": i}));
        srv.push_wait(json!({"broadcast": true, "data": i}));
    }
    // Shards merge their histograms into /metrics every 100 ms.
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(
        metric(srv.api, COUNT),
        0,
        "pushes that reached no socket were timed"
    );
    let mut c = srv.connect("m");
    srv.wait_connections(1);
    srv.push_wait(json!({"user": "m", "data": "x"}));
    assert_eq!(c.recv()["data"], json!("x"));
    let seen = wait_until(WAIT, || metric(srv.api, COUNT) >= 1);
    assert!(seen, "the delivered push was not timed");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(metric(srv.api, COUNT), 1);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let srv = TestServer::start(&[]);
    let mut c = srv.connect("ka");
    let mut conn = srv.api_conn();
    for i in 0..5 {
        let r = conn.request("GET", "/healthz", Some(API_KEY), None);
        assert_eq!(r.status, 200, "request {i}");
        let body = json!({"user": "ka", "data": i}).to_string();
        let r = conn.request("POST", "/v1/push?wait=1", Some(API_KEY), Some(&body));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.json()["delivered"], 1);
        let r = conn.request("GET", "/v1/presence/ka", Some(API_KEY), None);
        assert_eq!(r.json()["sessions"], 1);
        let r = conn.request("GET", "/v1/stats", Some(API_KEY), None);
        assert_eq!(r.status, 200);
        // An error keeps the connection too.
        let r = conn.request("POST", "/v1/push", Some(API_KEY), Some("{bad"));
        assert_eq!(r.status, 400);
    }
    for i in 0..5 {
        assert_eq!(c.recv()["data"], i);
    }
}

#[test]
fn pipelined_requests() {
    let srv = TestServer::start(&[]);
    let mut conn = srv.api_conn();
    let mut bytes = Vec::new();
    for i in 0..3 {
        let body = json!({"user": "p", "data": i}).to_string();
        bytes.extend(
            format!(
                "POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        );
    }
    bytes.extend(
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\r\n")
            .into_bytes(),
    );
    conn.stream.write_all(&bytes).unwrap();
    for _ in 0..3 {
        assert_eq!(conn.read().status, 202);
    }
    assert_eq!(conn.read().status, 200);
}

#[test]
fn presence_of_user_id_needing_percent_encoding() {
    let srv = TestServer::start(&[]);
    let user = "ann smith/42";
    let _c = srv.connect(user);
    srv.wait_online(1, 1);
    let r = srv.api("GET", "/v1/presence/ann%20smith%2F42", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (&v["user"], &v["online"], &v["sessions"]),
        (&json!(user), &json!(true), &json!(1)),
        "{v}"
    );
    let p = srv.push_wait(json!({"user": user, "data": 1}));
    assert_eq!(p["delivered"], 1);
}

#[test]
fn stats_return_to_zero_when_everyone_leaves() {
    let srv = TestServer::start(&["--shards", "4", "--public-topics", "t"]);
    let mut cs: Vec<Client> = (0..6)
        .map(|i| srv.connect(&format!("z{}", i % 3)))
        .collect();
    for c in cs.iter_mut() {
        c.send(json!({"type": "subscribe", "topic": "t"}));
        assert_eq!(c.recv()["type"], "subscribed");
    }
    srv.wait_online(6, 3);
    drop(cs);
    let s = srv.wait_stats("all gone", |s| {
        s["connections"] == 0 && s["users_online"] == 0 && s["topics"] == 0
    });
    for sh in s["shards"].as_array().unwrap() {
        assert_eq!(sh["connections"], 0, "{s}");
        assert_eq!(sh["users"], 0, "{s}");
        assert_eq!(sh["topics"], 0, "{s}");
    }
}

#[test]
fn overloaded_batch_lines_are_reported_never_dropped() {
    // With a one-slot shard queue a big batch may overrun it: each line is then either
    // accepted (and delivered, numbered without gaps) or rejected as overloaded.
    let srv = TestServer::start(&["--shard-queue-capacity", "1", "--shards", "1"]);
    let mut c = srv.connect("u");
    let n = 3000;
    let body = (0..n)
        .map(|i| json!({"user": "u", "data": i}).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let r = srv.api("POST", "/v1/push/batch", Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let accepted = j["accepted"].as_u64().unwrap();
    let rejected = j["rejected"].as_array().unwrap();
    assert_eq!(
        accepted + rejected.len() as u64,
        n,
        "every line accounted for"
    );
    let mut rejected_lines = std::collections::HashSet::new();
    for e in rejected {
        assert!(
            e["error"].as_str().unwrap().contains("overloaded"),
            "only overload rejections expected: {e}"
        );
        rejected_lines.insert(e["line"].as_u64().unwrap());
    }
    let s = srv.stats();
    assert_eq!(
        s["counters"]["queue_full_refusals"].as_u64().unwrap(),
        rejected.len() as u64,
        "{s}"
    );
    let expected: Vec<u64> = (0..n)
        .filter(|i| !rejected_lines.contains(&(i + 1)))
        .collect();
    for (k, want) in expected.iter().enumerate() {
        let p = c.recv();
        assert_eq!(p["data"], json!(want), "push {k}");
        assert_eq!(p["seq"], json!(k as u64 + 1), "seq without gaps");
    }
    c.barrier("end");
}
