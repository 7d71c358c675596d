//! What the report and the exit status say when the run is not clean: a stalled API
//! (latency from the schedule), deliveries after the drain (late, not missing), and the
//! exit status of failed or empty runs, and a timed-out push re-sent with --push-ids and
//! deduplicated by the server (review s16b 1, 2, 3, 4); an API stall that reaches the
//! end of the run (review s23 B1).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::proxy::Proxy;
use common::*;

/// `push` with `--api` swapped for `api`.
fn with_api(mut args: Vec<String>, api: &str) -> Vec<String> {
    let i = args.iter().position(|a| a == "--api").unwrap();
    args[i + 1] = api.to_string();
    args
}

/// Once the server accepted `pushes`, holds the push API behind `proxy` for `hold`.
fn hold_api_once_flowing(
    srv: &TestServer,
    load: &Load,
    proxy: &Proxy,
    pushes: u64,
    hold: Duration,
) {
    let flowing = wait_until(Duration::from_secs(15), || {
        srv.counter("pushes_accepted") >= pushes
    });
    assert!(flowing, "no pushes within 15 s:\n{}", load.stderr());
    proxy.paused.store(true, Ordering::Relaxed);
    std::thread::sleep(hold);
    proxy.paused.store(false, Ordering::Relaxed);
}

/// `args` with `--url` swapped for `url`.
fn with_url(mut args: Vec<String>, url: &str) -> Vec<String> {
    let i = args.iter().position(|a| a == "--url").unwrap();
    args[i + 1] = url.to_string();
    args
}

/// A 2 s stall of the push API in a 4 s run at 50/s: the ~100 pushes due meanwhile wait,
/// and push-to-client latency, counted from each push's schedule slot, shows it (review
/// s16b 1). Counted from the send, only the 4 requests in flight would, and p90 would be
/// a few milliseconds.
#[test]
fn a_stalled_api_moves_the_latency_percentiles() {
    let srv = TestServer::start(&[]);
    let proxy = Proxy::start(srv.api, Duration::ZERO);
    let mut args = strings(&[
        "push",
        "--target",
        "user",
        "--rate",
        "50",
        "--duration-secs",
        "4",
        "--drain-secs",
        "5",
    ]);
    args.extend(with_api(srv.push_args(20), &proxy.http_url()));
    let load = Load::spawn(args);
    hold_api_once_flowing(&srv, &load, &proxy, 20, Duration::from_secs(2));
    let r = load.wait(RUN_LIMIT);
    assert_eq!(r.str("latency_from"), "schedule");
    r.eq("messages_missing", 0);
    r.eq("messages_duplicated", 0);
    let sent = r.u("pushes_sent");
    r.check(
        (150..=201).contains(&sent),
        "about 200 pushes in 4 s at 50/s",
    );
    r.check(
        r.u("latency_us/p90") >= 1_000_000,
        "p90 of push-to-client latency must show the 2 s stall (>= 1 s)",
    );
    r.check(
        r.u("api_latency_us/p90") >= 1_000_000,
        "p90 of API latency must show the 2 s stall (>= 1 s)",
    );
    r.check(
        r.u("pushes_sent_late") >= 50,
        "the pushes due during the stall were sent late",
    );
    r.check(
        r.u("push_max_send_lag_us") >= 1_500_000,
        "the longest send lag is about the stall",
    );
    r.check(
        r.output.contains("from each push's slot at --rate"),
        "the summary says where latency counts from",
    );
}

/// Every frame arrives, 1.5 s late (a delaying proxy between client and server), and the
/// drain gives up after 0.3 s: the frames that come during the close are `late`, never
/// `missing`, and the counts agree with each other (review s16b 2).
#[test]
fn frames_after_the_drain_are_late_not_missing() {
    let srv = TestServer::start(&[]);
    let proxy = Proxy::start(srv.ws, Duration::from_millis(1500));
    let mut args = strings(&[
        "push",
        "--target",
        "user",
        "--rate",
        "200",
        "--count",
        "100",
        "--drain-secs",
        "0.3",
    ]);
    args.extend(with_url(srv.push_args(10), &proxy.ws_url()));
    let r = Load::spawn(args).wait(RUN_LIMIT);
    r.eq("pushes_sent", 100);
    r.eq("messages_expected", 100);
    r.eq("messages_received", 100);
    r.eq("messages_missing", 0);
    r.eq("messages_duplicated", 0);
    r.eq("messages_unexpected", 0);
    r.check(
        r.u("messages_late") > 0,
        "frames held 1.5 s by the proxy arrive after a 0.3 s drain: late",
    );
    r.check(r.u("messages_late") <= 100, "late is a part of received");
    r.eq("latency_us/count", 100);
    r.eq("compression/deliveries", 100);
    r.eq("closed_clean", 10);
}

/// Pushes to an API nobody listens on: every push fails, and the run fails (exit 1).
#[test]
fn push_with_every_push_refused_exits_1() {
    let srv = TestServer::start(&[]);
    let mut args = strings(&["push", "--count", "20", "--rate", "100"]);
    args.extend(with_api(srv.push_args(5), "http://127.0.0.1:1"));
    let r = Load::spawn(args).wait_failed(RUN_LIMIT);
    r.eq("pushes_sent", 0);
    r.check(
        r.output.contains("FAILED"),
        "the summary ends with a FAILED verdict",
    );
}

/// Connections to a port nobody listens on: nothing opens, and the run fails (exit 1).
#[test]
fn connect_with_every_connection_refused_exits_1() {
    let srv = TestServer::start(&[]);
    let mut args = strings(&["connect"]);
    args.extend(with_url(srv.connect_args(5), "ws://127.0.0.1:1/ws"));
    let r = Load::spawn(args).wait_failed(RUN_LIMIT);
    r.eq("connections_opened", 0);
}

/// No connection open (review s23-load N6): `push` neither holds nor pushes, in one
/// process or over workers; it fails on the connect errors and says why it stopped.
/// (With the push phase run, `--duration-secs 120` would take past `RUN_LIMIT`.)
#[test]
fn a_push_run_with_no_connection_open_skips_the_hold_and_the_pushes() {
    let srv = TestServer::start(&[]);
    for procs in ["1", "2"] {
        let mut args = strings(&[
            "push",
            "--rate",
            "10",
            "--duration-secs",
            "120",
            "--procs",
            procs,
        ]);
        args.extend(with_url(srv.push_args(4), "ws://127.0.0.1:1/ws"));
        let r = Load::spawn(args).wait_failed(RUN_LIMIT);
        r.eq("connections_opened", 0);
        r.check(
            r.output.contains("no connection is open; skipping"),
            "says why it skipped the phases",
        );
        r.check(
            r.v.get("pushes_sent").is_none(),
            "no push phase ran: pushes_sent is not reported",
        );
    }
}

/// A clean push run still exits 0 and says so.
#[test]
fn a_clean_push_run_exits_0_with_a_verdict() {
    let srv = TestServer::start(&[]);
    let mut args = strings(&["push", "--count", "20", "--rate", "100"]);
    args.extend(srv.push_args(5));
    let r = run_load(args);
    assert_complete(&r, 20, 20);
    r.check(
        r.output.contains("result: OK"),
        "the summary says the run passed",
    );
}

/// `resume` whose pushes are all refused tested nothing: it must not say "nothing
/// missing" and exit 0 (review s16b 4).
#[test]
fn resume_with_no_push_accepted_exits_1() {
    let srv = TestServer::start(&[]);
    let mut args = strings(&[
        "resume",
        "--rate",
        "50",
        "--duration-secs",
        "1",
        "--topic-rate",
        "0",
        "--churn-rate",
        "5",
        "--drain-secs",
        "1",
    ]);
    args.extend(with_api(srv.push_args(5), "http://127.0.0.1:1"));
    let r = Load::spawn(args).wait_failed(RUN_LIMIT);
    r.check(
        !r.output.contains("nothing missing, nothing duplicated"),
        "a run with no push accepted proved nothing",
    );
}

/// `--push-ids` against the real server's deduplication (review s16b 3). The push API is
/// held for 11 s, past the load generator's 10 s API timeout: the request in flight times
/// out and is sent again, with the same id, on a new connection. When the proxy lets go,
/// both copies reach the server, which accepts the second as a duplicate and delivers
/// the push once: nothing duplicated, unexpected or missing, the re-send counted as a
/// retry, and the run passes.
#[test]
fn a_timed_out_push_with_an_id_is_deduplicated_by_the_server() {
    let srv = TestServer::start(&[]);
    let proxy = Proxy::start(srv.api, Duration::ZERO);
    // One API connection, so the request in flight is on a kept-alive one (a fresh
    // connection's first request is never re-sent); the run outlasts the hold plus the
    // timeout, so the retry comes before its end.
    let mut args = strings(&[
        "push",
        "--target",
        "user",
        "--rate",
        "10",
        "--duration-secs",
        "15",
        "--drain-secs",
        "5",
        "--api-concurrency",
        "1",
        "--push-ids",
    ]);
    args.extend(with_api(srv.push_args(10), &proxy.http_url()));
    let load = Load::spawn(args);
    hold_api_once_flowing(&srv, &load, &proxy, 5, Duration::from_secs(11));
    let (code, r) = load.wait_code(RUN_LIMIT);
    let dups = srv.counter("pushes_duplicate");
    r.check(
        dups >= 1,
        &format!("the server saw no second copy (pushes_duplicate {dups})"),
    );
    r.check(
        r.u("push_retries") >= 1,
        "the timed-out request was re-sent and counted",
    );
    r.map_eq("push_errors", &[]);
    r.eq("messages_missing", 0);
    r.eq("messages_duplicated", 0);
    r.eq("messages_unexpected", 0);
    r.check(code == Some(0), &format!("exit status {code:?}"));
}

/// Review s23 B1: a stall of the push API that reaches the end of a paced run. The
/// driver stopped at the end once the stall was over, so the pushes due during it were
/// neither sent nor counted anywhere, and the run passed. Now every slot before the end
/// is pushed (late) within the grace after it, the report counts them, and the run fails.
#[test]
fn a_stall_into_the_end_of_the_run_is_counted_and_fails_it() {
    let srv = TestServer::start(&[]);
    let proxy = Proxy::start(srv.api, Duration::ZERO);
    // 400 slots at 200/s over 2 s.
    let (rate, secs, slots) = (200u64, 2u64, 400u64);
    let mut args = strings(&[
        "push",
        "--target",
        "user",
        "--rate",
        &rate.to_string(),
        "--duration-secs",
        &secs.to_string(),
        "--drain-secs",
        "5",
    ]);
    args.extend(with_api(srv.push_args(20), &proxy.http_url()));
    let load = Load::spawn(args);
    let flowing = wait_until(Duration::from_secs(15), || {
        srv.counter("pushes_accepted") >= 100
    });
    assert!(flowing, "no pushes within 15 s:\n{}", load.stderr());
    let seen = std::time::Instant::now();
    proxy.paused.store(true, Ordering::Relaxed);
    let before = srv.counter("pushes_accepted");
    // The 100th push was due 0.495 s after the driver began, so it began at least that
    // long before `seen`, and its end is at most `secs - 0.495` s after `seen`. Hold the
    // API until that end has surely passed, then let the stalled requests through.
    let end = seen + Duration::from_millis(secs * 1000 - 495);
    let passed = wait_until(Duration::from_secs(10), || {
        std::time::Instant::now() > end + Duration::from_millis(300)
    });
    assert!(passed);
    proxy.paused.store(false, Ordering::Relaxed);
    let r = load.wait_failed(RUN_LIMIT);
    r.eq("pushes_scheduled", slots);
    r.eq("pushes_accepted", slots);
    r.eq("pushes_sent", slots);
    r.eq("pushes_not_sent", 0);
    r.map_eq("push_errors", &[]);
    r.eq("messages_missing", 0);
    // Every push left was sent after the end, but for two per API connection (4): its
    // request in flight when the API was held, and the next one, sent on time into it.
    let after_end = r.u("pushes_sent_after_end");
    r.check(
        after_end + before + 2 * 4 >= slots,
        &format!("{after_end} pushes sent after the end, {before} accepted before the stall"),
    );
    r.check(
        r.u("pushes_sent_late") >= after_end,
        "those sent after the end are late too",
    );
    r.check(
        r.output.contains(&format!(
            "{after_end} of {slots} scheduled pushes were sent after the end of the run"
        )),
        "the verdict names the pushes sent after the end",
    );
    r.check(
        r.output.contains(&format!(
            "pushes via api: {slots} accepted of {slots} scheduled"
        )),
        "the summary gives the schedule",
    );
}
