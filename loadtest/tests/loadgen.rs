//! throng-load against a real, in-process Throng server: the JSON report's counters must
//! match what the setup makes certain.

mod common;

use std::time::Duration;

use common::*;

/// Waits until the server has no connections left (the load generator closed them all).
fn wait_server_empty(srv: &TestServer, r: &Report) {
    let mut last = serde_json::Value::Null;
    let ok = wait_until(Duration::from_secs(5), || {
        last = srv.stats();
        last["connections"].as_u64() == Some(0)
    });
    r.check(
        ok,
        &format!("server still has connections after the run: {last}"),
    );
}

#[test]
fn connect_opens_all_and_closes_cleanly() {
    let srv = TestServer::start(&[]);
    let r = run_load([strings(&["connect"]), srv.connect_args(50)].concat());
    assert_eq!(r.str("mode"), "connect");
    r.eq("procs", 1);
    r.eq("connections_target", 50);
    r.eq("connections_opened", 50);
    r.eq("connections_open_at_close", 50);
    r.map_eq("connect_errors", &[]);
    r.map_eq("disconnects", &[]);
    r.map_eq("close_errors", &[]);
    r.eq("closed_clean", 50);
    r.eq("handshake_latency_us/count", 50);
    r.check(
        r.u("handshake_latency_us/p50") <= r.u("handshake_latency_us/max"),
        "handshake p50 above max",
    );
    r.check(
        r.f("connect_rate_per_sec") > 0.0,
        "connect_rate_per_sec must be positive with 50 connections opened",
    );
    r.check(
        r.v.get("pushes_sent").is_none(),
        "connect mode must not report pushes",
    );
    r.check(r.v.get("tls").is_none(), "a ws:// run has no TLS section");
    wait_server_empty(&srv, &r);
    r.eq("connections_opened", srv.counter("handshakes_accepted"));
}

#[test]
fn connect_with_wrong_secret_is_refused_401() {
    let srv = TestServer::start(&[]);
    let mut args = strings(&["connect"]);
    args.extend(srv.connect_args(20));
    let i = args.iter().position(|a| a == "--jwt-secret").unwrap();
    args[i + 1] = "not-the-secret".into();
    let r = Load::spawn(args).wait_failed(RUN_LIMIT);
    r.eq("connections_target", 20);
    r.eq("connections_opened", 0);
    r.map_eq("connect_errors", &[("http_401_invalid_token", 20)]);
    r.eq("closed_clean", 0);
    r.eq("handshake_latency_us/count", 0);
    // Cross-check with the server: every attempt reached it and was refused.
    r.eq(
        "connect_errors/http_401_invalid_token",
        srv.counter("handshakes_refused"),
    );
    r.eq("connections_opened", srv.counter("handshakes_accepted"));
}

#[test]
fn connect_past_max_connections_gets_503() {
    let srv = TestServer::start(&["--max-connections", "10"]);
    // Unpaced: the server answers 503 both at max connections and when more handshakes
    // are pending than --max-connections allows; either way exactly 20 are refused.
    let mut args = strings(&["connect", "--connect-rate", "0"]);
    args.extend(srv.connect_args(30));
    let r = Load::spawn(args).wait_failed(RUN_LIMIT);
    r.check(
        r.output
            .contains("result: FAILED (exit status 1): 20 of 30 connections never opened"),
        "the verdict says why",
    );
    r.eq("connections_target", 30);
    r.eq("connections_opened", 10);
    r.map_eq("connect_errors", &[("http_503_over_capacity", 20)]);
    r.eq("closed_clean", 10);
    r.eq("handshake_latency_us/count", 10);
    r.map_eq("disconnects", &[]);
    wait_server_empty(&srv, &r);
}

/// 200 pushes to users with 2 sessions each over 20 connections, in `procs` processes.
fn user_push_args(srv: &TestServer, procs: usize) -> Vec<String> {
    let mut args = strings(&[
        "push",
        "--procs",
        &procs.to_string(),
        "--target",
        "user",
        "--count",
        "200",
        "--sessions-per-user",
        "2",
    ]);
    args.extend(srv.push_args(20));
    args
}

#[test]
fn push_to_users_delivers_everything() {
    let srv = TestServer::start(&[]);
    let r = run_load(user_push_args(&srv, 1));
    assert_eq!(r.str("mode"), "push");
    r.eq("procs", 1);
    assert_eq!(r.str("target"), "user");
    assert_eq!(r.str("push_via"), "api");
    r.eq("connections_opened", 20);
    r.map_eq("connect_errors", &[]);
    assert_complete(&r, 200, 400);
    r.eq("closed_clean", 20);
    wait_server_empty(&srv, &r);
    r.eq("pushes_sent", srv.counter("pushes_accepted"));
    r.eq("messages_received", srv.counter("pushes_delivered"));
}

#[test]
fn push_to_topic_reaches_every_subscriber() {
    let srv = TestServer::start(&[]);
    let mut args = strings(&[
        "push",
        "--target",
        "topic",
        "--topics",
        "news,sport",
        "--count",
        "30",
    ]);
    args.extend(srv.push_args(10));
    let r = run_load(args);
    assert_eq!(r.str("target"), "topic");
    r.eq("connections_opened", 10);
    r.eq("subscriptions_confirmed", 20);
    assert_complete(&r, 30, 300);
    r.eq("closed_clean", 10);
}

#[test]
fn push_broadcast_reaches_every_connection() {
    let srv = TestServer::start(&[]);
    let mut args = strings(&["push", "--target", "broadcast", "--count", "25"]);
    args.extend(srv.push_args(12));
    let r = run_load(args);
    assert_eq!(r.str("target"), "broadcast");
    r.eq("connections_opened", 12);
    assert_complete(&r, 25, 300);
    r.eq("closed_clean", 12);
}

#[test]
fn push_batched_to_user_lists_delivers_everything() {
    let srv = TestServer::start(&[]);
    let mut args = strings(&[
        "push",
        "--target",
        "users",
        "--users-per-push",
        "5",
        "--batch",
        "10",
        "--count",
        "60",
    ]);
    args.extend(srv.push_args(20));
    let r = run_load(args);
    assert_eq!(r.str("target"), "users");
    r.eq("connections_opened", 20);
    // 60 pushes, each to 5 distinct users of one session each, in requests of 10.
    assert_complete(&r, 60, 300);
    r.eq("push_requests", 6);
    r.eq("closed_clean", 20);
    wait_server_empty(&srv, &r);
    r.eq("pushes_sent", srv.counter("pushes_accepted"));
}

#[test]
fn push_with_two_procs_merges_to_the_same_counters() {
    let srv = TestServer::start(&[]);
    let r = run_load(user_push_args(&srv, 2));
    r.eq("procs", 2);
    // The same counters as `push_to_users_delivers_everything` (the same run in one
    // process): workers' users are disjoint and their reports add up.
    r.eq("connections_target", 20);
    r.eq("connections_opened", 20);
    r.map_eq("connect_errors", &[]);
    r.eq("handshake_latency_us/count", 20);
    assert_complete(&r, 200, 400);
    r.eq("closed_clean", 20);
    wait_server_empty(&srv, &r);
    r.eq("pushes_sent", srv.counter("pushes_accepted"));
}

#[test]
fn server_disconnect_mid_run_shows_missing_messages() {
    let srv = TestServer::start(&[]);
    let mut args = strings(&[
        "push",
        "--target",
        "user",
        "--rate",
        "100",
        "--count",
        "300",
        "--drain-secs",
        "2",
    ]);
    args.extend(srv.push_args(20));
    let load = Load::spawn(args);
    // Once deliveries flow (about 1/5 s into 3 s of pushing), the server closes u0.
    let flowing = wait_until(Duration::from_secs(15), || {
        srv.counter("pushes_delivered") >= 20
    });
    assert!(
        flowing,
        "no deliveries within 15 s; stats {}\nstderr so far:\n{}",
        srv.stats(),
        load.stderr()
    );
    let closed = srv.disconnect("u0", 4003);
    let accepted_then = srv.counter("pushes_accepted");
    assert_eq!(closed, 1, "u0 should have had one session");
    assert!(
        accepted_then < 300,
        "all pushes were accepted before the disconnect; the run cannot show a loss"
    );
    let r = load.wait_failed(RUN_LIMIT);
    r.eq("pushes_sent", 300);
    r.eq("connections_opened", 20);
    r.map_eq("disconnects", &[("close_4003", 1)]);
    r.check(
        r.u("receivers_lost") >= 1,
        "receivers_lost must count the connection the server closed",
    );
    r.check(
        r.u("messages_missing") > 0,
        "messages_missing must count the pushes u0 did not get after the server closed it",
    );
    // The closed connection is judged against the final count: 300 pushes, 15 per user,
    // and only u0's 15 can be missing.
    r.eq("messages_expected", 300);
    r.check(
        r.u("messages_missing") <= 15,
        "only u0 (15 pushes) was disconnected, yet more than 15 messages are missing",
    );
    r.eq(
        "messages_received",
        r.u("messages_expected") - r.u("messages_missing"),
    );
    r.eq("messages_duplicated", 0);
    r.eq("messages_out_of_order", 0);
    r.eq("closed_clean", 19);
}

#[test]
fn churn_reconnects_without_losing_stable_messages() {
    let srv = TestServer::start(&[]);
    let mut args = strings(&[
        "churn",
        "--churn-fraction",
        "0.3",
        "--churn-rate",
        "50",
        "--target",
        "user",
        "--rate",
        "100",
        "--count",
        "200",
        "--drain-secs",
        "5",
    ]);
    args.extend(srv.push_args(100));
    let r = run_load(args);
    assert_eq!(r.str("mode"), "churn");
    r.eq("connections_opened", 100);
    r.map_eq("connect_errors", &[]);
    r.map_eq("disconnects", &[]);
    r.map_eq("churn_reconnect_errors", &[]);
    r.eq("pushes_sent", 200);
    r.check(r.u("churn_reconnects") > 0, "no churn cycle completed");
    r.check(
        r.u("churn_disconnects") >= r.u("churn_reconnects"),
        "more reconnects than churn disconnects",
    );
    // 30 of the 100 connection numbers churn; only those may be excluded.
    r.check(
        (1..=30).contains(&r.u("churned_receivers")),
        "churned_receivers must be 1..=30 with --churn-fraction 0.3 of 100",
    );
    let expected = r.u("messages_expected");
    r.check(expected > 0, "the stable connections expected nothing");
    r.eq("messages_received", expected);
    r.eq("messages_missing", 0);
    r.eq("messages_duplicated", 0);
    r.eq("messages_out_of_order", 0);
    r.eq("receivers_lost", 0);
    wait_server_empty(&srv, &r);
}

#[test]
fn churn_storm_reconnects_never_time_out_spuriously() {
    // Fast cycles on few connections with a 1 s handshake deadline: a deadline set for an
    // earlier socket must not expire the reconnect that took its slab slot and number
    // (it did once: about 1% of storm reconnects were reported as timeouts).
    let srv = TestServer::start(&[]);
    let mut args = strings(&[
        "churn",
        "--churn-fraction",
        "1",
        "--churn-rate",
        "1000",
        "--handshake-timeout-secs",
        "1",
        "--target",
        "user",
        "--rate",
        "10",
        "--count",
        "30",
        "--drain-secs",
        "2",
    ]);
    args.extend(srv.push_args(40));
    let r = run_load(args);
    r.eq("connections_opened", 40);
    r.map_eq("connect_errors", &[]);
    r.map_eq("churn_reconnect_errors", &[]);
    r.check(
        r.u("churn_reconnects") > 1000,
        "the storm must cycle for well over the 1 s deadline",
    );
    wait_server_empty(&srv, &r);
}

/// `throng-load capacity` flags against this server, probe short and settle brief.
fn capacity_args(srv: &TestServer, target: u64, step: u64) -> Vec<String> {
    strings(&[
        "capacity",
        "--url",
        &srv.url(),
        "--jwt-secret",
        SECRET,
        "--api",
        &srv.api_url(),
        "--api-key",
        API_KEY,
        "--target",
        &target.to_string(),
        "--step",
        &step.to_string(),
        "--probe-rate",
        "100",
        "--probe-secs",
        "0.5",
        "--settle-secs",
        "0.2",
        "--max-secs",
        "60",
    ])
}

#[test]
fn capacity_ramps_to_the_target() {
    let srv = TestServer::start(&[]);
    let plot = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("capacity-{}.svg", std::process::id()));
    let _ = std::fs::remove_file(&plot);
    let mut args = capacity_args(&srv, 300, 100);
    // The server runs in this test process.
    args.extend(strings(&[
        "--server-pid",
        &std::process::id().to_string(),
        "--plot",
        &plot.display().to_string(),
    ]));
    let r = run_load(args);
    assert_eq!(r.str("mode"), "capacity");
    r.eq("max_connections_held", 300);
    r.eq("connections_target", 300);
    r.eq("connections_opened", 300);
    r.map_eq("connect_errors", &[]);
    r.eq("handshake_latency_us/count", 300);
    r.eq("closed_clean", 300);
    r.eq("messages_missing", 0);
    r.eq("messages_duplicated", 0);
    let steps = r
        .get("steps")
        .as_array()
        .unwrap_or_else(|| r.fail("`steps` is not an array"));
    r.check(steps.len() == 3, "expected 3 steps of 100");
    for (i, want) in [100u64, 200, 300].into_iter().enumerate() {
        r.eq(&format!("steps/{i}/connections"), want);
        r.map_eq(&format!("steps/{i}/connect_errors"), &[]);
        r.check(
            r.get(&format!("steps/{i}/server_rss_bytes")).is_u64(),
            &format!("step {i} has no server_rss_bytes"),
        );
        r.check(
            r.get(&format!("steps/{i}/server_rss_bytes_per_conn"))
                .is_number(),
            &format!("step {i} has no server_rss_bytes_per_conn"),
        );
        r.check(
            r.u(&format!("steps/{i}/latency_us/count")) > 0,
            &format!("step {i}'s probe measured no latency"),
        );
        r.check(
            r.u(&format!("steps/{i}/probe_pushes")) > 0,
            &format!("step {i}'s probe pushed nothing"),
        );
    }
    let probed: u64 = (0..3)
        .map(|i| r.u(&format!("steps/{i}/probe_pushes")))
        .sum();
    r.eq("pushes_sent", probed);
    let why = r.str("stopped_because");
    r.check(
        why.contains("target") && why.contains("300"),
        "stopped_because must name the target of 300",
    );
    let svg = std::fs::read_to_string(&plot)
        .unwrap_or_else(|e| r.fail(&format!("--plot {}: {e}", plot.display())));
    let _ = std::fs::remove_file(&plot);
    r.check(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        &format!(
            "the plot is not SVG: {:?}",
            svg.chars().take(80).collect::<String>()
        ),
    );
    wait_server_empty(&srv, &r);
}

#[test]
fn capacity_stops_at_the_first_connect_error() {
    let srv = TestServer::start(&["--max-connections", "150"]);
    let r = run_load(capacity_args(&srv, 300, 100));
    r.eq("max_connections_held", 150);
    r.eq("connections_opened", 150);
    r.map_eq("connect_errors", &[("http_503_over_capacity", 50)]);
    r.eq("closed_clean", 150);
    let steps = r
        .get("steps")
        .as_array()
        .unwrap_or_else(|| r.fail("`steps` is not an array"));
    r.check(
        steps.len() == 2,
        "expected the ramp to stop at its second step",
    );
    r.eq("steps/0/connections", 100);
    r.map_eq("steps/0/connect_errors", &[]);
    r.eq("steps/1/connections", 150);
    r.map_eq("steps/1/connect_errors", &[("http_503_over_capacity", 50)]);
    let why = r.str("stopped_because");
    r.check(
        why.contains("http_503_over_capacity"),
        "stopped_because must name the 503 cause",
    );
    wait_server_empty(&srv, &r);
}

/// Review s23 B3: a capacity probe whose pushes are all refused has nothing missing, and
/// the ramp went on to "reached the target" and passed. It must stop at the first probe
/// that cannot push, and fail saying why.
#[test]
fn capacity_with_a_wrong_api_key_fails_and_says_why() {
    let srv = TestServer::start(&[]);
    let mut args = capacity_args(&srv, 300, 100);
    let i = args.iter().position(|a| a == "--api-key").unwrap();
    args[i + 1] = "not-the-key".into();
    let r = Load::spawn(args).wait_failed(RUN_LIMIT);
    let steps = r
        .get("steps")
        .as_array()
        .unwrap_or_else(|| r.fail("`steps` is not an array"));
    r.check(steps.len() == 1, "the ramp must stop at its first probe");
    r.eq("steps/0/connections", 100);
    r.eq("steps/0/probe_pushes", 0);
    // 100/s for 0.5 s: 50 pushes, each refused.
    r.map_eq(
        "steps/0/probe_push_errors",
        &[("http_401_unauthorized", 50)],
    );
    r.map_eq("push_errors", &[("http_401_unauthorized", 50)]);
    r.eq("pushes_sent", 0);
    r.eq("pushes_scheduled", 50);
    assert_eq!(r.str("push_via"), "api");
    assert_eq!(
        r.str("stopped_because"),
        "probe failed at 100 connections: 0 pushes accepted, given up: \
         http_401_unauthorized=50"
    );
    r.check(
        r.output
            .contains("50 pushes failed (push_errors: http_401_unauthorized=50)"),
        "the verdict names the refusals",
    );
    wait_server_empty(&srv, &r);
}

/// A push API in front of the real one that records each push's `user`, for the probe
/// test: every request is sent on to `api` (one connection each) and its answer back.
struct RecordingApi {
    url: String,
    users: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RecordingApi {
    fn start(api: std::net::SocketAddr) -> RecordingApi {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering::Relaxed;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let users = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, st) = (users.clone(), stop.clone());
        std::thread::spawn(move || {
            let born = std::time::Instant::now();
            while !st.load(Relaxed) && born.elapsed() < Duration::from_secs(120) {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let mut buf: Vec<u8> = Vec::new();
                    let mut chunk = [0u8; 16384];
                    loop {
                        // One request: the head, then Content-Length bytes of body.
                        let (path, key, body) = loop {
                            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&buf[..at]).to_string();
                                let field = |name: &str| {
                                    head.lines().find_map(|l| {
                                        let (k, v) = l.split_once(':')?;
                                        k.trim()
                                            .eq_ignore_ascii_case(name)
                                            .then(|| v.trim().to_string())
                                    })
                                };
                                let len: usize = field("content-length")
                                    .and_then(|v| v.parse().ok())
                                    .unwrap_or(0);
                                if buf.len() >= at + 4 + len {
                                    let body = String::from_utf8_lossy(&buf[at + 4..at + 4 + len])
                                        .to_string();
                                    let path =
                                        head.split_whitespace().nth(1).unwrap_or("/").to_string();
                                    let key = field("authorization")
                                        .and_then(|v| v.strip_prefix("Bearer ").map(String::from));
                                    buf.drain(..at + 4 + len);
                                    break (path, key, body);
                                }
                            }
                            match c.read(&mut chunk) {
                                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                _ => return,
                            }
                        };
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                            if let Some(u) = v["user"].as_str() {
                                seen.lock().unwrap().push(u.to_string());
                            }
                        }
                        let (status, answer) =
                            http(api, "POST", &path, key.as_deref(), Some(&body));
                        let resp = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        if c.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RecordingApi { url, users, stop }
    }
}

impl Drop for RecordingApi {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Review s23 R1: every probe pushed to users 0.. again (so connections added by later
/// steps were never probed), and pushes past the users connected fell on user 0. Three
/// steps of 20 connections, each probed with 20 pushes: each probe carries on from the
/// last over the users connected now, so each of the 60 users is probed exactly once.
#[test]
fn capacity_probes_reach_the_users_of_every_step() {
    let srv = TestServer::start(&[]);
    let api = RecordingApi::start(srv.api);
    let mut args = capacity_args(&srv, 60, 20);
    for (flag, value) in [
        ("--api", api.url.as_str()),
        ("--probe-rate", "20"),
        ("--probe-secs", "1"),
    ] {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value.into();
    }
    let r = run_load(args);
    r.eq("max_connections_held", 60);
    for i in 0..3 {
        r.eq(&format!("steps/{i}/probe_pushes"), 20);
    }
    let mut users = api.users.lock().unwrap().clone();
    users.sort_by_key(|u| u[1..].parse::<u64>().unwrap_or(u64::MAX));
    let want: Vec<String> = (0..60).map(|u| format!("u{u}")).collect();
    r.check(users == want, &format!("probed users: {users:?}"));
}
