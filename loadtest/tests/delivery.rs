//! The `resume` and `deploy` scenarios against real servers: delivery across abrupt
//! reconnects with `since`/`epoch`, the gate on what went missing (not on what a
//! `resumed:false` said would not be replayed), and a drain whose
//! clients follow their hints to a second server.

mod common;

use common::proxy::Proxy;
use common::{strings, wait_until, Load, Report, TestServer, RUN_LIMIT};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// `resume` flags: 200 connections, 30% dropping abruptly and staying away 300 ms, user
/// pushes and two topics.
fn resume_args(srv: &TestServer) -> Vec<String> {
    let mut a = strings(&[
        "resume",
        "--churn-fraction",
        "0.3",
        "--churn-rate",
        "60",
        "--offline-ms",
        "300",
        "--rate",
        "400",
        "--duration-secs",
        "2",
        "--topics",
        "room:1,room:2",
        "--topic-rate",
        "20",
        "--drain-secs",
        "10",
    ]);
    a.extend(srv.push_args(200));
    a
}

/// Asserts a stream section shows every expected push delivered exactly once, in order.
fn assert_exact(r: &Report, kind: &str) {
    let expected = r.u(&format!("{kind}/expected"));
    r.check(expected > 0, &format!("{kind}: nothing was expected"));
    r.eq(&format!("{kind}/delivered"), expected);
    r.eq(&format!("{kind}/missing"), 0);
    r.eq(&format!("{kind}/not_replayed"), 0);
    r.eq(&format!("{kind}/duplicated"), 0);
    r.eq(&format!("{kind}/out_of_order"), 0);
    r.eq(&format!("{kind}/unexpected"), 0);
}

#[test]
fn resume_loses_nothing_across_abrupt_reconnects() {
    let srv = TestServer::start(&[]);
    let r = common::run_load(resume_args(&srv));
    assert_eq!(r.str("mode"), "resume");
    r.eq("connections_opened", 200);
    r.map_eq("connect_errors", &[]);
    r.map_eq("disconnects", &[]);
    r.map_eq("churn_reconnect_errors", &[]);
    let drops = r.u("churn_disconnects");
    r.check(drops > 0, "no connection was dropped");
    r.eq("churn_reconnects", drops);
    assert_exact(&r, "user_stream");
    assert_exact(&r, "topic_stream");
    r.eq("user_stream/streams", 200);
    r.eq("topic_stream/streams", 400);
    // Every reconnect resumed its user stream and both topics.
    r.eq("user_stream/resumed_true", drops);
    r.eq("user_stream/resumed_false", 0);
    // A topic resume is answered after the welcome, so a drop right after a welcome can
    // beat it (that socket's `subscribed` never comes): at most two per drop, never false.
    let topic_resumes = r.u("topic_stream/resumed_true");
    r.check(
        topic_resumes > 0 && topic_resumes <= 2 * drops,
        "topic resumes must be 1..=2 per drop",
    );
    r.eq("topic_stream/resumed_false", 0);
    // Pushes really were missed while offline and came back by replay.
    r.check(
        r.u("topic_stream/replayed") > 0,
        "no resume owed a replay: the scenario did not test replay",
    );
    r.check(r.get("delivery_ok").as_bool() == Some(true), "delivery_ok");
    r.eq("pushes_stray", 0);
}

#[test]
fn resume_counts_resumed_false_as_not_replayed_and_passes_its_gate() {
    // One push of history: a client away for 500 ms while its user gets 10 pushes a second
    // cannot resume. The server says so (`resumed:false`): what it did not replay shows
    // as not replayed, by cause, not as missing, and the run passes (review s17f 6).
    let srv = TestServer::start(&["--history-size", "1"]);
    let mut a = strings(&[
        "resume",
        "--churn-fraction",
        "0.5",
        "--churn-rate",
        "20",
        "--offline-ms",
        "500",
        "--rate",
        "200",
        "--duration-secs",
        "2",
        "--drain-secs",
        "5",
    ]);
    a.extend(srv.push_args(20));
    let r = common::run_load(a);
    r.check(r.get("delivery_ok").as_bool() == Some(true), "delivery_ok");
    let lost = r.u("user_stream/resumed_false");
    r.check(lost > 0, "no resumed:false with a history of one push");
    r.map_eq(
        "user_stream/resumed_false_because",
        &[("history_not_held", lost)],
    );
    let not_replayed = r.u("user_stream/not_replayed");
    r.check(not_replayed > 0, "resumed:false skipped nothing?");
    r.eq("user_stream/missing", 0);
    r.eq(
        "user_stream/delivered",
        r.u("user_stream/expected") - not_replayed,
    );
    r.eq("user_stream/duplicated", 0);
    r.check(
        r.output
            .contains("pushes not replayed: a resume was answered resumed:false"),
        "the summary names what was not replayed",
    );
}

#[test]
fn deploy_moves_every_client_to_the_second_server() {
    let a = TestServer::start(&["--drain-ms", "1000"]);
    let b = TestServer::start(&[]);
    let mut args = strings(&[
        "deploy",
        "--reconnect-url",
        &b.url(),
        "--reconnect-api",
        &b.api_url(),
        "--jitter-ms",
        "50",
        "--topics",
        "room:1",
        "--rate",
        "200",
        "--duration-secs",
        "1",
        "--topic-rate",
        "10",
        "--move-timeout-secs",
        "20",
    ]);
    args.extend(a.push_args(100));
    let r = common::run_load(args);
    assert_eq!(r.str("mode"), "deploy");
    r.eq("connections_opened", 100);
    r.eq("deploy/drain_ms", 1000);
    r.eq("deploy/connections", 100);
    // Every client got its hint before its close, and ended up on B.
    r.eq("deploy/hints", 100);
    r.eq("deploy/closes_after_hint", 100);
    r.eq("deploy/closes_without_hint", 0);
    r.eq("deploy/moved", 100);
    r.eq("deploy/not_moved", 0);
    r.check(
        r.u("deploy/hint_after_ms_max") <= 1000,
        "a hint beyond the drain window",
    );
    let curve: u64 = r
        .get("deploy/reconnects_per_100ms")
        .as_array()
        .unwrap_or_else(|| r.fail("no curve"))
        .iter()
        .filter_map(|v| v.as_u64())
        .sum();
    r.eq("deploy/moved", curve);
    r.map_eq("churn_reconnect_errors", &[]);
    r.eq("connections_open_at_close", 100);
    // Standalone servers share no history: B has another epoch, so no resume, and says so.
    r.eq("user_stream/resumed_false", 100);
    r.map_eq(
        "user_stream/resumed_false_because",
        &[("epoch_changed", 100)],
    );
    r.map_eq(
        "topic_stream/resumed_false_because",
        &[("epoch_changed", 100)],
    );
    // Pushes to B after the move: all delivered once.
    assert_exact(&r, "user_stream");
    assert_exact(&r, "topic_stream");
    r.check(r.get("delivery_ok").as_bool() == Some(true), "delivery_ok");
}

/// Review s23 B2: in `resume`, a client that never came back failed nothing unless a push
/// reached its user after it left. Here none does (9 pushes, to u0..u8): the churners
/// (u9, u19, u29, u39) find every reconnect refused, and the server ends u20's open
/// connection. Both must fail the run.
#[test]
fn resume_fails_when_clients_never_come_back() {
    let srv = TestServer::start(&[]);
    // The run's 40 connections pass; every reconnect after them is refused.
    let proxy = Proxy::start(srv.ws, Duration::ZERO);
    proxy.refuse_after.store(40, Relaxed);
    let mut args = strings(&[
        "resume",
        "--churn-fraction",
        "0.1",
        "--churn-rate",
        "10",
        "--offline-ms",
        "200",
        "--rate",
        "3",
        "--duration-secs",
        "3",
        "--topic-rate",
        "0",
        "--drain-secs",
        "2",
    ]);
    args.extend(srv.push_args(40));
    let i = args.iter().position(|a| a == "--url").unwrap();
    args[i + 1] = proxy.ws_url();
    let load = Load::spawn(args);
    let up = wait_until(Duration::from_secs(15), || {
        srv.counter("handshakes_accepted") >= 40
    });
    assert!(up, "40 connections did not open:\n{}", load.stderr());
    assert_eq!(srv.disconnect("u20", 4003), 1, "u20 has one session");
    let r = load.wait_failed(RUN_LIMIT);
    r.eq("connections_opened", 40);
    r.eq("pushes_sent", 9);
    // Nothing any stream expected went missing: the delivery gate alone passes.
    r.check(r.get("delivery_ok").as_bool() == Some(true), "delivery_ok");
    let refused = proxy.refused.load(Relaxed) as u64;
    let failed: u64 = r.map("churn_reconnect_errors").iter().map(|(_, n)| n).sum();
    r.check(
        failed > 0 && refused > 0,
        &format!("{failed} reconnect errors, {refused} reconnects refused"),
    );
    r.map_eq("disconnects", &[("close_4003", 1)]);
    r.check(
        r.output
            .contains(&format!("{failed} churn reconnects failed")),
        "the verdict names the reconnects that failed",
    );
    r.check(
        r.output
            .contains("1 open connections were ended by the server or the network (close_4003=1)"),
        "the verdict names the connection the server ended",
    );
}
