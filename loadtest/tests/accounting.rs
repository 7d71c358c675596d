//! What the report says when the run is not clean: a stalled API (latency from the
//! schedule, review s16b 1) and deliveries after the drain (late, not missing, 2).

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
    let flowing = wait_until(Duration::from_secs(15), || {
        srv.counter("pushes_accepted") >= 20
    });
    assert!(flowing, "no pushes within 15 s:\n{}", load.stderr());
    proxy.paused.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    proxy.paused.store(false, Ordering::Relaxed);
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
