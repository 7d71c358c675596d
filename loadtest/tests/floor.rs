//! `throng-load floor`: the minimal epoll server and its clients' process measure a
//! heartbeat round trip, a broadcast delivery, a handshake and a unicast push through an
//! HTTP API, judge whether the host kept
//! up, and refuse flags they cannot use. Real sockets over loopback; no Throng server.

mod common;

use common::{strings, Load};
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn a_heartbeat_floor_counts_every_round_trip_and_its_cpu() {
    let r = Load::spawn(strings(&[
        "floor",
        "--connections",
        "300",
        "--interval-ms",
        "200",
        "--window-secs",
        "1.5",
        "--source-ips",
        "127.0.0.2-127.0.0.3",
    ]))
    .wait(LIMIT);
    assert_eq!(r.str("workload"), "heartbeat");
    assert_eq!(r.str("result"), "OK");
    // 300 connections pinged every 200 ms for 1.5 s: about 2,250 pings, each answered.
    let (ops, asked) = (r.u("operations"), r.u("asked"));
    r.check((2000..=2500).contains(&asked), "pings asked in the window");
    r.check(ops * 100 >= asked * 99, "every ping answered");
    r.check(r.f("us_per_op") > 0.0, "CPU per round trip measured");
    let projected = r.f("projected_cores_1m_25s");
    let want = 40_000.0 * r.f("us_per_op") / 1e6;
    r.check(
        (projected - want).abs() < 1e-9,
        "projection is 40,000 round trips/s",
    );
    r.eq("short_writes", 0);
}

#[test]
fn a_broadcast_floor_writes_every_frame_to_every_connection() {
    let r = Load::spawn(strings(&[
        "floor",
        "--workload",
        "broadcast",
        "--connections",
        "200",
        "--rate",
        "10",
        "--frame-bytes",
        "300",
        "--window-secs",
        "1",
    ]))
    .wait(LIMIT);
    assert_eq!(r.str("workload"), "broadcast");
    let rounds = r.u("broadcasts");
    r.check(
        rounds * 10 >= r.u("broadcasts_due") * 9,
        "the broadcasts due went out",
    );
    r.eq("operations", rounds * 200);
    r.eq("short_writes", 0);
    r.eq("frame_bytes", 300);
    r.check(
        r.get("projected_cores_1m_25s").is_null(),
        "no heartbeat projection",
    );
}

#[test]
fn a_broadcast_the_host_cannot_keep_up_with_fails_the_run() {
    // 2,000 writes a millisecond from one thread: no host keeps that up.
    let (code, r) = Load::spawn(strings(&[
        "floor",
        "--workload",
        "broadcast",
        "--connections",
        "2000",
        "--rate",
        "1000",
        "--window-secs",
        "1",
    ]))
    .wait_code(LIMIT);
    r.check(
        code == Some(1),
        &format!("exit status {code:?}, expected 1"),
    );
    assert_eq!(r.str("result"), "FAILED");
    let failures = r.get("failures").to_string();
    r.check(
        failures.contains("broadcasts went out"),
        "names the shortfall",
    );
}

#[test]
fn a_handshake_floor_answers_every_connection() {
    let r = Load::spawn(strings(&[
        "floor",
        "--workload",
        "handshake",
        "--connections",
        "600",
        "--source-ips",
        "127.0.0.2-127.0.0.3",
    ]))
    .wait(LIMIT);
    assert_eq!(r.str("workload"), "handshake");
    r.eq("operations", 600);
    r.eq("asked", 600);
    r.check(r.f("operations_per_sec") > 0.0, "a handshake rate");
    r.check(r.f("us_per_op") > 0.0, "CPU per handshake measured");
    r.check(
        r.get("projected_cores_1m_25s").is_null() && r.get("broadcasts").is_null(),
        "no heartbeat or broadcast figures",
    );
}

#[test]
fn a_unicast_floor_answers_every_push_and_writes_its_frame() {
    let r = Load::spawn(strings(&[
        "floor",
        "--workload",
        "unicast",
        "--connections",
        "100",
        "--in-flight",
        "4",
        "--frame-bytes",
        "200",
        "--window-secs",
        "1",
    ]))
    .wait(LIMIT);
    assert_eq!(r.str("workload"), "unicast");
    assert_eq!(r.str("result"), "OK");
    r.check(r.u("operations") > 100, "pushes answered in the window");
    r.eq("asked", r.u("operations"));
    // Every 202 and every frame was taken whole by its socket.
    r.eq("short_writes", 0);
    r.eq("in_flight", 4);
    r.eq("frame_bytes", 200);
    r.check(r.f("us_per_op") > 0.0, "CPU per push measured");
    r.check(r.get("interval_ms").is_null(), "no heartbeat figures");
}

#[test]
fn flags_a_floor_cannot_use_are_refused_before_it_starts() {
    for (args, want) in [
        (&["--connections", "0"][..], "--connections must be 1"),
        (&["--interval-ms", "5"][..], "--interval-ms must be 10"),
        (&["--rate", "0"][..], "--rate must be"),
        (&["--frame-bytes", "1"][..], "--frame-bytes must be 2"),
        (&["--window-secs", "0"][..], "--window-secs must be above 0"),
        (&["--in-flight", "0"][..], "--in-flight must be 1"),
        (&["--source-ips", "::1"][..], "::1 is not IPv4"),
        (
            &["--source-ips", "127.0.0.x"][..],
            "--source-ips: bad IP address",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_throng-load"))
            .arg("floor")
            .args(args)
            .output()
            .expect("run throng-load");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
