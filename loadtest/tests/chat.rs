//! The `chat` scenario against a real, in-process server: members publish to their own
//! rooms, and every member (the publisher too) must get every accepted message exactly
//! once; the gate fails (exit status 1) when nothing may be published.

mod common;

use common::{strings, wait_until, Load, Report, TestServer, RUN_LIMIT};
use std::process::Command;
use std::time::Duration;

/// `chat` flags for `rooms` rooms of `members` against `srv`, then `extra` (flags and
/// values separated by spaces).
fn chat_args(srv: &TestServer, rooms: u64, members: u64, extra: &str) -> Vec<String> {
    let (rooms, members) = (rooms.to_string(), members.to_string());
    let mut a = strings(&["chat", "--url", &srv.url(), "--jwt-secret", common::SECRET]);
    a.extend(strings(&["--rooms", &rooms, "--members", &members]));
    a.extend(extra.split_whitespace().map(String::from));
    a
}

/// Runs `chat` with these flags to its end; its exit status and report.
fn run_chat(srv: &TestServer, rooms: u64, members: u64, extra: &str) -> (Option<i32>, Report) {
    Load::spawn(chat_args(srv, rooms, members, extra)).wait_code(RUN_LIMIT)
}

/// The delivery figures that must be 0 when nothing went wrong.
const FAULTS: [&str; 6] = [
    "missing",
    "duplicated",
    "out_of_order",
    "unexpected",
    "mismatched",
    "foreign",
];

/// Asserts a run where every member joined and got every published message once, in
/// order, and returns how many messages were published.
fn assert_complete(r: &Report, rooms: u64, members: u64) -> u64 {
    assert_eq!(r.str("mode"), "chat");
    let n = rooms * members;
    r.all_eq("", &["connections_opened", "closed_clean"], n);
    r.map_eq("connect_errors", &[]);
    r.map_eq("disconnects", &[]);
    r.eq("chat/members_joined", n);
    let published = r.u("chat/published");
    r.check(published > 0, "nothing was published");
    r.all_eq("chat", &["publishes_sent", "publishes_planned"], published);
    r.map_eq("chat/publish_errors", &[]);
    r.all_eq("chat", &["publishes_unanswered", "publishes_not_sent"], 0);
    // Every member, the publisher included, gets every message once.
    let fan_out = [
        "expected",
        "delivered",
        "received",
        "fanout_latency_us/count",
    ];
    r.all_eq("chat", &fan_out, published * members);
    r.all_eq("chat", &FAULTS, 0);
    r.eq("chat/rooms_failed", 0);
    r.eq("chat/publish_latency_us/count", published);
    r.check(
        r.u("chat/fanout_latency_us/p50") <= r.u("chat/fanout_latency_us/max"),
        "fan-out p50 above max",
    );
    r.check(r.f("chat/deliveries_per_sec") > 0.0, "deliveries_per_sec");
    r.check(
        r.get("chat/delivery_ok").as_bool() == Some(true),
        "delivery_ok",
    );
    let per_room = r
        .get("chat/per_room")
        .as_array()
        .unwrap_or_else(|| r.fail("per_room is not a list"));
    r.check(
        per_room.len() as u64 == rooms,
        "one per_room entry per room",
    );
    let mut sum = 0;
    for (i, room) in per_room.iter().enumerate() {
        let n = |k: &str| room[k].as_u64().unwrap_or(u64::MAX);
        r.check(n("published") > 0, &format!("room {i} published nothing"));
        r.check(
            n("expected") == n("published") * members && n("delivered") == n("expected"),
            &format!("room {i} incomplete"),
        );
        r.check(
            n("missing") + n("duplicated") + n("out_of_order") == 0,
            &format!("room {i} lost, doubled or reordered messages"),
        );
        sum += n("published");
    }
    r.eq("chat/published", sum);
    r.check(
        r.output.contains("chat delivery: all"),
        "the summary does not say the rooms were complete",
    );
    r.check(r.get("passed").as_bool() == Some(true), "passed");
    r.check(r.output.contains("result: OK"), "no `result: OK` line");
    published
}

#[test]
fn chat_every_member_gets_every_message_once() {
    let srv = TestServer::start(&[]);
    let args = chat_args(&srv, 3, 4, "--rate 5 --duration-secs 2 --payload-bytes 100");
    let r = Load::spawn(args).wait(RUN_LIMIT);
    let published = assert_complete(&r, 3, 4);
    // 12 members, 5/s each for 2 s: 10 each.
    assert_eq!(published, 120);
    assert_eq!(r.str("chat/per_room/0/topic"), "room:0");
    assert_eq!(r.str("chat/per_room/2/topic"), "room:2");
}

#[test]
fn chat_over_two_workers_bounded_by_count() {
    let srv = TestServer::start(&[]);
    let flags = "--procs 2 --total-rate 60 --count 50 --duration-secs 0 \
                 --room-prefix team/ --room-offset 7";
    let r = Load::spawn(chat_args(&srv, 4, 3, flags)).wait(RUN_LIMIT);
    r.eq("procs", 2);
    assert_eq!(assert_complete(&r, 4, 3), 50);
    assert_eq!(r.str("chat/per_room/0/topic"), "team/7");
    assert_eq!(r.str("chat/per_room/3/topic"), "team/10");
}

#[test]
fn chat_without_a_publish_grant_fails_its_gate() {
    let srv = TestServer::start(&[]);
    let flags = "--no-publish-claim --rate 2 --duration-secs 1 --drain-secs 2";
    let (code, r) = run_chat(&srv, 2, 2, flags);
    r.check(
        code == Some(1),
        &format!("exit status {code:?}, expected 1"),
    );
    let sent = r.u("chat/publishes_sent");
    r.check(sent > 0, "nothing was sent");
    r.map_eq("chat/publish_errors", &[("forbidden_topic", sent)]);
    r.eq("chat/published", 0);
    r.check(
        r.get("chat/delivery_ok").as_bool() == Some(false),
        "delivery_ok",
    );
    r.check(
        r.output
            .contains("result: FAILED (exit status 1): chat delivery: no message was published"),
        "no `result: FAILED` line naming the chat gate",
    );
    r.check(
        r.output.contains("--public-publish"),
        "no hint about --public-publish",
    );
}

#[test]
fn chat_fails_when_members_never_connect() {
    // 10 members against a server that admits 6: the 6 members that did connect
    // get everything, but the run must still fail and say why.
    let srv = TestServer::start(&["--max-connections", "6"]);
    let flags = "--rate 2 --duration-secs 1 --drain-secs 1";
    let r = Load::spawn(chat_args(&srv, 2, 5, flags)).wait_failed(RUN_LIMIT);
    r.eq("connections_opened", 6);
    r.check(r.get("passed").as_bool() == Some(false), "passed");
    let failures = r.get("failures").to_string();
    r.check(
        failures.contains("4 of 10 connections never opened"),
        "failures do not name the refused connections",
    );
    r.check(
        r.output
            .contains("result: FAILED (exit status 1): 4 of 10 connections never opened"),
        "no `result: FAILED` line",
    );
}

#[test]
fn chat_with_public_publish_needs_no_claim() {
    let srv = TestServer::start(&["--public-publish", "room:*"]);
    let flags = "--no-publish-claim --rate 4 --duration-secs 1";
    let r = Load::spawn(chat_args(&srv, 2, 3, flags)).wait(RUN_LIMIT);
    assert_eq!(assert_complete(&r, 2, 3), 24);
}

#[test]
fn chat_names_the_client_rate_when_rate_limited() {
    // 5 messages a second per connection, and members that try 40.
    let srv = TestServer::start(&["--client-rate", "5"]);
    let (_, r) = run_chat(&srv, 1, 2, "--rate 40 --duration-secs 1 --drain-secs 2");
    let limited = r
        .map("chat/publish_errors")
        .into_iter()
        .find(|(k, _)| k == "rate_limited")
        .map_or(0, |(_, n)| n);
    r.check(limited > 0, "no publish was refused with rate_limited");
    r.check(
        r.output.contains("higher --client-rate"),
        "no hint about --client-rate",
    );
    // What the server accepted still reached both members exactly once.
    r.all_eq("chat", &FAULTS[1..5], 0);
}

/// Sends `sig` (STOP or CONT) to process `pid`.
fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

#[test]
fn a_stalled_load_generator_moves_the_latency_percentiles() {
    // 10 members publish 100/s in all for 4 s. The load generator itself is stopped
    // for 1.5 s early in that: the ~150 publishes due meanwhile go out late, all at
    // once. Counted from the send they would look instant (p90 a few ms); counted from
    // their slots, a quarter of the fan-out samples wait 0.5 to 1.5 s.
    let srv = TestServer::start(&[]);
    let load = Load::spawn(chat_args(&srv, 2, 5, "--rate 10 --duration-secs 4"));
    let started = wait_until(Duration::from_secs(10), || {
        load.stderr().contains("throng-load chat:")
    });
    assert!(started, "no start line: {}", load.stderr());
    // Joining 10 members takes milliseconds; publishing is under way after 1 s.
    std::thread::sleep(Duration::from_millis(1000));
    signal(load.pid(), "STOP");
    std::thread::sleep(Duration::from_millis(1500));
    signal(load.pid(), "CONT");
    let (code, r) = load.wait_code(RUN_LIMIT);
    assert_eq!(code, Some(0), "the run should pass: nothing is lost");
    r.check(
        r.str("chat/latency_from") == "schedule",
        "latency_from is not schedule",
    );
    let late = r.u("chat/publishes_sent_late");
    r.check(
        (80..=200).contains(&late),
        &format!("{late} publishes sent late"),
    );
    let lag = r.u("chat/publish_max_send_lag_us");
    r.check(lag >= 1_000_000, &format!("longest lag {lag} us"));
    for h in ["chat/fanout_latency_us", "chat/publish_latency_us"] {
        let p90 = r.u(&format!("{h}/p90"));
        r.check(p90 >= 500_000, &format!("{h} p90 {p90} us"));
    }
}
